/* Unit tests for the stored envelope block (engine/envelope.c): the exact
 * text envelope_write produces, envelope_read giving every field back, and
 * envelope_read refusing blocks that are not whole (truncated, bare line
 * ends, no "POSTERN/1" line, no final empty line, paths over the limits). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "envelope.h"

#define MAX_RCPT 4

struct rcpt_in {
	const char *addr;
	unsigned notify;
	const char *orcpt;
};

struct env_case {
	const char *name;
	const char *id;
	int64_t arrival;
	const char *connector, *client, *helo;
	const char *from;
	enum smtp_body body;
	enum smtp_ret ret;
	const char *envid;
	bool smtputf8;
	bool anonymous, dotless;
	const char *held;
	unsigned nrcpt;
	struct rcpt_in rcpt[MAX_RCPT];
	const char *want;
	/* What envelope_read gives back where the writer had to change the
	 * value (line breaks inside it); NULL: the value itself. */
	const char *back_connector;
	const char *back_held;
};

static const struct env_case write_cases[] = {
	{
		.name = "plain", .id = "0000018C2F3A0001", .arrival = 1700000000,
		.connector = "Default Frontend", .client = "192.0.2.7", .helo = "web1.corp.example",
		.from = "app@corp.example", .nrcpt = 1, .rcpt = {{"ops@corp.example"}},
		.want = "POSTERN/1\r\n"
			"id: 0000018C2F3A0001\r\n"
			"arrival: 1700000000\r\n"
			"connector: Default Frontend\r\n"
			"client: 192.0.2.7\r\n"
			"helo: web1.corp.example\r\n"
			"from: <app@corp.example>\r\n"
			"rcpt: <ops@corp.example>\r\n"
			"\r\n",
	},
	{
		.name = "anonymous origin, no dot lines (B.9)", .id = "9", .arrival = 1, .connector = "c",
		.client = "10.0.0.2", .helo = "h", .from = "a@b.example", .anonymous = true,
		.dotless = true, .nrcpt = 1, .rcpt = {{"x@corp.example"}},
		.want = "POSTERN/1\r\nid: 9\r\narrival: 1\r\nconnector: c\r\nclient: 10.0.0.2\r\nhelo: h\r\n"
			"origin: anonymous\r\ndot-lines: none\r\n"
			"from: <a@b.example>\r\nrcpt: <x@corp.example>\r\n\r\n",
	},
	{
		.name = "null sender", .id = "1", .arrival = 0, .connector = "c", .client = "::1",
		.helo = "h", .from = "", .nrcpt = 1, .rcpt = {{"postmaster@corp.example"}},
		.want = "POSTERN/1\r\nid: 1\r\narrival: 0\r\nconnector: c\r\nclient: ::1\r\nhelo: h\r\n"
			"from: <>\r\n"
			"rcpt: <postmaster@corp.example>\r\n\r\n",
	},
	{
		.name = "BODY=8BITMIME RET=HDRS ENVID SMTPUTF8", .id = "2", .arrival = 5,
		.connector = "c", .client = "10.0.0.1", .helo = "h", .from = "j\xc3\xb6rg@b\xc3\xbc.example",
		.body = SMTP_BODY_8BITMIME, .ret = SMTP_RET_HDRS, .envid = "QQ314159+2B1",
		.smtputf8 = true, .nrcpt = 1, .rcpt = {{"x@y.example"}},
		.want = "POSTERN/1\r\nid: 2\r\narrival: 5\r\nconnector: c\r\nclient: 10.0.0.1\r\nhelo: h\r\n"
			"from: <j\xc3\xb6rg@b\xc3\xbc.example> BODY=8BITMIME RET=HDRS ENVID=QQ314159+2B1 SMTPUTF8\r\n"
			"rcpt: <x@y.example>\r\n\r\n",
	},
	{
		.name = "BODY=7BIT RET=FULL", .id = "3", .arrival = 6, .connector = "c",
		.client = "10.0.0.1", .helo = "h", .from = "a@b.example", .body = SMTP_BODY_7BIT,
		.ret = SMTP_RET_FULL, .nrcpt = 1, .rcpt = {{"x@y.example"}},
		.want = "POSTERN/1\r\nid: 3\r\narrival: 6\r\nconnector: c\r\nclient: 10.0.0.1\r\nhelo: h\r\n"
			"from: <a@b.example> BODY=7BIT RET=FULL\r\n"
			"rcpt: <x@y.example>\r\n\r\n",
	},
	{
		.name = "NOTIFY and ORCPT", .id = "4", .arrival = 7, .connector = "c",
		.client = "10.0.0.1", .helo = "h", .from = "a@b.example", .nrcpt = 3,
		.rcpt = {
			{"s@y.example", SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY,
			 "rfc822;s@y.example"},
			{"n@y.example", SMTP_NOTIFY_NEVER, NULL},
			{"o@y.example", 0, "rfc822;o+2Bx@y.example"},
		},
		.want = "POSTERN/1\r\nid: 4\r\narrival: 7\r\nconnector: c\r\nclient: 10.0.0.1\r\nhelo: h\r\n"
			"from: <a@b.example>\r\n"
			"rcpt: <s@y.example> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;s@y.example\r\n"
			"rcpt: <n@y.example> NOTIFY=NEVER\r\n"
			"rcpt: <o@y.example> ORCPT=rfc822;o+2Bx@y.example\r\n\r\n",
	},
	{
		.name = "several recipients, quoted local part, postmaster", .id = "0000018C2F3A00FF",
		.arrival = 1712345678, .connector = "Anonymous Relay", .client = "2001:db8::25",
		.helo = "[192.0.2.9]", .from = "\"john doe\"@corp.example", .body = SMTP_BODY_8BITMIME,
		.nrcpt = 4,
		.rcpt = {
			{"a@one.example", SMTP_NOTIFY_FAILURE, NULL},
			{"\"x> y\"@two.example", 0, NULL},
			{"Postmaster", 0, NULL},
			{"d@[192.0.2.1]", SMTP_NOTIFY_DELAY, "rfc822;d@[192.0.2.1]"},
		},
		.want = "POSTERN/1\r\nid: 0000018C2F3A00FF\r\narrival: 1712345678\r\n"
			"connector: Anonymous Relay\r\nclient: 2001:db8::25\r\nhelo: [192.0.2.9]\r\n"
			"from: <\"john doe\"@corp.example> BODY=8BITMIME\r\n"
			"rcpt: <a@one.example> NOTIFY=FAILURE\r\n"
			"rcpt: <\"x> y\"@two.example>\r\n"
			"rcpt: <Postmaster>\r\n"
			"rcpt: <d@[192.0.2.1]> NOTIFY=DELAY ORCPT=rfc822;d@[192.0.2.1]\r\n\r\n",
	},
	{
		.name = "line breaks in values become spaces", .id = "5", .arrival = -1,
		.connector = "evil\r\nrcpt: <x@evil.example>", .client = "10.0.0.1", .helo = "h\ri",
		.from = "a@b.example", .nrcpt = 1, .rcpt = {{"x@y.example"}},
		.want = "POSTERN/1\r\nid: 5\r\narrival: -1\r\n"
			"connector: evil  rcpt: <x@evil.example>\r\nclient: 10.0.0.1\r\nhelo: h i\r\n"
			"from: <a@b.example>\r\n"
			"rcpt: <x@y.example>\r\n\r\n",
		.back_connector = "evil  rcpt: <x@evil.example>",
	},
	{
		.name = "held by a content rule", .id = "7", .arrival = 9, .connector = "c",
		.client = "10.0.0.1", .helo = "h", .from = "a@b.example", .held = "card-numbers",
		.nrcpt = 1, .rcpt = {{"x@y.example"}},
		.want = "POSTERN/1\r\nid: 7\r\narrival: 9\r\nconnector: c\r\nclient: 10.0.0.1\r\nhelo: h\r\n"
			"held: card-numbers\r\n"
			"from: <a@b.example>\r\n"
			"rcpt: <x@y.example>\r\n\r\n",
	},
	{
		.name = "a held reason with a line break cannot add a recipient", .id = "8",
		.arrival = 9, .connector = "c", .client = "10.0.0.1", .helo = "h",
		.from = "a@b.example", .held = "rule\r\nrcpt: <evil@x.example>", .nrcpt = 1,
		.rcpt = {{"x@y.example"}},
		.want = "POSTERN/1\r\nid: 8\r\narrival: 9\r\nconnector: c\r\nclient: 10.0.0.1\r\nhelo: h\r\n"
			"held: rule  rcpt: <evil@x.example>\r\n"
			"from: <a@b.example>\r\n"
			"rcpt: <x@y.example>\r\n\r\n",
		.back_held = "rule  rcpt: <evil@x.example>",
	},
	{
		.name = "no recipients", .id = "6", .arrival = 8, .connector = "c", .client = "c",
		.helo = "h", .from = "a@b.example", .nrcpt = 0,
		.want = "POSTERN/1\r\nid: 6\r\narrival: 8\r\nconnector: c\r\nclient: c\r\nhelo: h\r\n"
			"from: <a@b.example>\r\n\r\n",
	},
};

static struct smtp_envelope env_of(const struct env_case *c, struct smtp_rcpt *r)
{
	for (unsigned i = 0; i < c->nrcpt; i++)
		r[i] = (struct smtp_rcpt){.addr = (char *)c->rcpt[i].addr,
					  .orcpt = (char *)c->rcpt[i].orcpt,
					  .notify = c->rcpt[i].notify};
	return (struct smtp_envelope){
		.from = (char *)c->from, .body = c->body, .ret = c->ret,
		.envid = (char *)c->envid, .smtputf8 = c->smtputf8, .held = (char *)c->held,
		.anonymous = c->anonymous, .dotless = c->dotless,
		.rcpt = r, .nrcpt = c->nrcpt, .rcpt_cap = c->nrcpt,
	};
}

/* envelope_write's output for c (malloc'd, NUL-terminated). */
static char *written(const struct env_case *c, size_t *len)
{
	struct smtp_rcpt r[MAX_RCPT];
	struct smtp_envelope env = env_of(c, r);
	char *buf = NULL;
	FILE *f = open_memstream(&buf, len);
	assert_non_null(f);
	envelope_write(f, c->id, &env, c->connector, c->client, c->helo, c->arrival);
	assert_int_equal(fclose(f), 0);
	return buf;
}

static void test_write(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(write_cases); i++) {
		const struct env_case *c = &write_cases[i];
		size_t len;
		char *got = written(c, &len);
		CHECK_STR(c->name, got, c->want);
		CHECK_INT(c->name, len, strlen(c->want));
		free(got);
	}
}

static const char *or_empty(const char *s)
{
	return s ? s : "(null)";
}

static void test_read_round_trip(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(write_cases); i++) {
		const struct env_case *c = &write_cases[i];
		size_t len;
		char *buf = written(c, &len);
		struct envelope_full e;
		int ret = envelope_read(buf, len, &e);
		CHECK_INT(c->name, ret, 0);
		CHECK_STR(c->name, e.id, c->id);
		CHECK_INT(c->name, e.arrival, c->arrival);
		CHECK_STR(c->name, e.connector, c->back_connector ? c->back_connector : c->connector);
		CHECK_STR(c->name, e.client, c->client);
		CHECK_STR(c->name, or_empty(e.env.from), c->from);
		CHECK_INT(c->name, e.env.body, c->body);
		CHECK_INT(c->name, e.env.ret, c->ret);
		CHECK_STR(c->name, or_empty(e.env.envid), or_empty(c->envid));
		CHECK_INT(c->name, e.env.smtputf8, c->smtputf8);
		CHECK_INT(c->name, e.env.anonymous, c->anonymous);
		CHECK_INT(c->name, e.env.dotless, c->dotless);
		CHECK_STR(c->name, or_empty(e.env.held),
			  or_empty(c->back_held ? c->back_held : c->held));
		CHECK_INT(c->name, e.env.nrcpt, c->nrcpt);
		for (unsigned k = 0; k < c->nrcpt && k < e.env.nrcpt; k++) {
			char what[160];
			snprintf(what, sizeof(what), "%s, rcpt %u", c->name, k);
			CHECK_STR(what, e.env.rcpt[k].addr, c->rcpt[k].addr);
			CHECK_INT(what, e.env.rcpt[k].notify, c->rcpt[k].notify);
			CHECK_STR(what, or_empty(e.env.rcpt[k].orcpt), or_empty(c->rcpt[k].orcpt));
		}
		envelope_full_free(&e);
		free(buf);
	}
}

struct read_case {
	const char *name;
	const char *input;
	int want;
};

/* RFC 5321 4.5.3.1.1: 64 octets at most in a local part. */
#define LOCAL64 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define LOCAL65 LOCAL64 "a"
#define LABEL63 "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
/* A 255-octet domain: RFC 5321 4.5.3.1.2's limit exactly. */
#define DOMAIN255 LABEL63 "." LABEL63 "." LABEL63 "." LABEL63
#define DOMAIN189 LABEL63 "." LABEL63 "." \
	"ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"

#define HEAD "POSTERN/1\r\nid: 7\r\narrival: 1\r\nconnector: c\r\nclient: 10.0.0.1\r\nhelo: h\r\n"

static const struct read_case reject_cases[] = {
	{"empty", "", -1},
	{"magic without its line end", "POSTERN/1", -1},
	{"no POSTERN/1 line", "id: 7\r\nfrom: <a@b.example>\r\nrcpt: <c@d.example>\r\n\r\n", -1},
	{"another version", "POSTERN/2\r\nfrom: <a@b.example>\r\nrcpt: <c@d.example>\r\n\r\n", -1},
	{"magic in lower case", "postern/1\r\nfrom: <a@b.example>\r\n\r\n", -1},
	{"bare LF ends a line", HEAD "from: <a@b.example>\nrcpt: <c@d.example>\r\n\r\n", -1},
	{"bare LF as the final line", HEAD "from: <a@b.example>\r\n\n", -1},
	{"LF first", "\nPOSTERN/1\r\nfrom: <a@b.example>\r\n\r\n", -1},
	{"no final empty line", HEAD "from: <a@b.example>\r\nrcpt: <c@d.example>\r\n", -1},
	{"last line without CRLF", HEAD "from: <a@b.example>\r\nrcpt: <c@d.example>", -1},
	{"cut in the middle of a path", HEAD "from: <a@b.example>\r\nrcpt: <c@d.ex", -1},
	{"no from line", HEAD "rcpt: <c@d.example>\r\n\r\n", -1},
	{"from without angle brackets", HEAD "from: a@b.example\r\n\r\n", -1},
	{"rcpt without angle brackets", HEAD "from: <a@b.example>\r\nrcpt: c@d.example\r\n\r\n", -1},
	/* A recipient is never the null path. */
	{"empty rcpt path", HEAD "from: <a@b.example>\r\nrcpt: <>\r\n\r\n", -1},
	{"local part over 64", HEAD "from: <" LOCAL65 "@b.example>\r\n\r\n", -1},
	{"rcpt local part over 64",
	 HEAD "from: <a@b.example>\r\nrcpt: <" LOCAL65 "@d.example>\r\n\r\n", -1},
	{"domain over 255", HEAD "from: <a@" DOMAIN255 ".c>\r\n\r\n", -1},
	{"path over 256", HEAD "from: <a@b.example>\r\nrcpt: <cc@" DOMAIN255 ">\r\n\r\n", -1},
	/* Every line ends in CRLF: a bare CR must not end a line (the next
	 * would look empty, the block would "end" there and later recipients
	 * would be dropped). */
	{"bare CR inside a line",
	 HEAD "from: <a@b.example>\r\nconnector: x\ry\r\nrcpt: <c@d.example>\r\n\r\n", -1},
	{"CR CR LF", HEAD "from: <a@b.example>\r\r\nrcpt: <c@d.example>\r\n\r\n", -1},
	/* A block cut one byte short is not whole. */
	{"final empty line without its LF", HEAD "from: <a@b.example>\r\nrcpt: <c@d.example>\r\n\r",
	 -1},
};

/* Each row is checked, the wrong ones all named, before the test fails. */
static unsigned mismatch(const char *what, int got, int want)
{
	if (got == want)
		return 0;
	print_error("%s: envelope_read = %d, want %d\n", what, got, want);
	return 1;
}

static void test_read_rejects(void **state)
{
	(void)state;
	unsigned bad = 0;
	for (size_t i = 0; i < N_ELEMS(reject_cases); i++) {
		const struct read_case *c = &reject_cases[i];
		struct envelope_full e;
		int ret = envelope_read(c->input, strlen(c->input), &e);
		char what[200];
		snprintf(what, sizeof(what), "%s (%u recipients read)", c->name, e.env.nrcpt);
		envelope_full_free(&e);
		bad += mismatch(what, ret, c->want);
	}
	if (bad)
		fail_msg("%u of %zu rows wrong", bad, N_ELEMS(reject_cases));
}

/* Every proper prefix of a whole block is refused: a commit record whose
 * envelope length is short must never be taken for a message. */
static void test_read_truncated(void **state)
{
	(void)state;
	const struct env_case *c = &write_cases[5]; /* several recipients */
	size_t len;
	char *buf = written(c, &len);
	struct envelope_full e;
	CHECK_INT("whole block", envelope_read(buf, len, &e), 0);
	envelope_full_free(&e);
	unsigned bad = 0;
	for (size_t cut = 0; cut < len; cut++) {
		int ret = envelope_read(buf, cut, &e);
		char what[120];
		snprintf(what, sizeof(what), "cut to %zu of %zu bytes (%u recipients read)", cut, len,
			 e.env.nrcpt);
		envelope_full_free(&e);
		bad += mismatch(what, ret, -1);
	}
	free(buf);
	if (bad)
		fail_msg("%u of %zu prefixes taken for whole blocks", bad, len);
}

struct lenient_case {
	const char *name;
	const char *input;
	const char *id, *connector, *client, *from, *envid;
	int64_t arrival;
	enum smtp_body body;
	enum smtp_ret ret;
	unsigned nrcpt;
	const char *rcpt0;
	unsigned notify0;
};

#define ID40 "0123456789ABCDEF0123456789ABCDEF01234567"
#define N10 "nnnnnnnnnn"
#define NAME100 N10 N10 N10 N10 N10 N10 N10 N10 N10 N10
#define NAME79 N10 N10 N10 N10 N10 N10 N10 "nnnnnnnnn"
#define NAME63 N10 N10 N10 N10 N10 N10 "nnn"

/* Blocks envelope_read takes although envelope_write would not have
 * written them so: what it makes of each, exactly. Fields longer than
 * their buffers are cut, not refused: the configuration limits connector
 * names to 64 octets, ids are 16 hex digits and client texts at most 45,
 * so only a damaged block has longer ones, and refusing it would lose an
 * acknowledged message at recovery. */
static const struct lenient_case lenient_cases[] = {
	{"unknown line ignored", "POSTERN/1\r\nx-future: 1\r\nfrom: <a@b.example>\r\n\r\n",
	 "", "", "", "a@b.example", NULL, 0, SMTP_BODY_NONE, SMTP_RET_NONE, 0, NULL, 0},
	{"second from ignored",
	 "POSTERN/1\r\nfrom: <a@b.example>\r\nfrom: <z@b.example>\r\nrcpt: <c@d.example>\r\n\r\n",
	 "", "", "", "a@b.example", NULL, 0, SMTP_BODY_NONE, SMTP_RET_NONE, 1, "c@d.example", 0},
	{"keywords in lower case, extra spaces",
	 "POSTERN/1\r\nfrom: <a@b.example>  body=8bitmime  ret=full envid=E1\r\n"
	 "rcpt: <c@d.example>  notify=DELAY,FAILURE\r\n\r\n",
	 "", "", "", "a@b.example", "E1", 0, SMTP_BODY_8BITMIME, SMTP_RET_FULL, 1, "c@d.example",
	 SMTP_NOTIFY_DELAY | SMTP_NOTIFY_FAILURE},
	{"bytes after the final empty line ignored",
	 "POSTERN/1\r\narrival: 42\r\nfrom: <a@b.example>\r\n\r\ngarbage", "", "", "",
	 "a@b.example", NULL, 42, SMTP_BODY_NONE, SMTP_RET_NONE, 0, NULL, 0},
	{"paths at the limits", "POSTERN/1\r\nfrom: <" LOCAL64 "@" DOMAIN189 ">\r\n"
	 "rcpt: <" LOCAL64 "@" DOMAIN189 "> NOTIFY=NEVER\r\n\r\n",
	 "", "", "", LOCAL64 "@" DOMAIN189, NULL, 0, SMTP_BODY_NONE, SMTP_RET_NONE, 1,
	 LOCAL64 "@" DOMAIN189, SMTP_NOTIFY_NEVER},
	{"overlong id, connector and client are cut",
	 "POSTERN/1\r\nid: " ID40 "\r\nconnector: " NAME100 "\r\nclient: " NAME100 "\r\n"
	 "from: <a@b.example>\r\n\r\n",
	 "0123456789ABCDEF0123456789ABCDE", NAME79, NAME63, "a@b.example", NULL, 0,
	 SMTP_BODY_NONE, SMTP_RET_NONE, 0, NULL, 0},
};

static void test_read_lenient(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(lenient_cases); i++) {
		const struct lenient_case *c = &lenient_cases[i];
		struct envelope_full e;
		int ret = envelope_read(c->input, strlen(c->input), &e);
		CHECK_INT(c->name, ret, 0);
		CHECK_STR(c->name, e.id, c->id);
		CHECK_STR(c->name, e.connector, c->connector);
		CHECK_STR(c->name, e.client, c->client);
		CHECK_STR(c->name, or_empty(e.env.from), c->from);
		CHECK_STR(c->name, or_empty(e.env.envid), or_empty(c->envid));
		CHECK_INT(c->name, e.arrival, c->arrival);
		CHECK_INT(c->name, e.env.body, c->body);
		CHECK_INT(c->name, e.env.ret, c->ret);
		CHECK_INT(c->name, e.env.nrcpt, c->nrcpt);
		if (c->nrcpt && e.env.nrcpt) {
			CHECK_STR(c->name, e.env.rcpt[0].addr, c->rcpt0);
			CHECK_INT(c->name, e.env.rcpt[0].notify, c->notify0);
		}
		envelope_full_free(&e);
	}
}

/* Content rules' marks (B.9): held, route and added header fields are
 * written as their own lines and read back as they were. */
static void test_content_marks(void **state)
{
	struct smtp_rcpt r = {.addr = "ops@corp.example"};
	struct smtp_envelope env = {.from = "app@corp.example", .rcpt = &r, .nrcpt = 1,
				    .held = "card-numbers", .route = "Legal Archive",
				    .headers = "X-Classification: confidential\r\nX-Two: 2\r\n"};
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	envelope_write(f, "1", &env, "c", "127.0.0.1", "h", 5);
	fclose(f);
	CHECK_STR("text", text,
		  "POSTERN/1\r\nid: 1\r\narrival: 5\r\nconnector: c\r\nclient: 127.0.0.1\r\n"
		  "helo: h\r\nheld: card-numbers\r\nroute: Legal Archive\r\n"
		  "header: X-Classification: confidential\r\nheader: X-Two: 2\r\n"
		  "from: <app@corp.example>\r\nrcpt: <ops@corp.example>\r\n\r\n");
	struct envelope_full e;
	assert_int_equal(envelope_read(text, len, &e), 0);
	CHECK_STR("held", e.env.held, "card-numbers");
	CHECK_STR("route", e.env.route, "Legal Archive");
	CHECK_STR("headers", e.env.headers, "X-Classification: confidential\r\nX-Two: 2\r\n");
	envelope_full_free(&e);
	free(text);
	/* Without them: none is written, none read. */
	env.held = env.route = env.headers = NULL;
	f = open_memstream(&text, &len);
	envelope_write(f, "1", &env, "c", "127.0.0.1", "h", 5);
	fclose(f);
	assert_null(strstr(text, "held:"));
	assert_int_equal(envelope_read(text, len, &e), 0);
	assert_null(e.env.held);
	assert_null(e.env.route);
	assert_null(e.env.headers);
	envelope_full_free(&e);
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_write),
		cmocka_unit_test(test_read_round_trip),
		cmocka_unit_test(test_read_rejects),
		cmocka_unit_test(test_read_truncated),
		cmocka_unit_test(test_read_lenient),
		cmocka_unit_test(test_content_marks),
	};
	return cmocka_run_group_tests_name("envelope", tests, NULL, NULL);
}
