/* Unit tests for the SMTP command-line tokenizer (proto/smtp_cmd.c): verb
 * classification, argument spans, line ends, resumption across partial input
 * and the bounded handling of over-long lines. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_cmd.h"

/* ---- smtp_cmd_verb / smtp_verb_name ---------------------------------- */

static void test_verb_table(void **state)
{
	static const struct {
		const char *name;
		const char *line;
		enum smtp_verb want;
		size_t want_len;
	} cases[] = {
		{"HELO upper", "HELO x.example", SMTP_VERB_HELO, 4},
		{"helo lower", "helo x.example", SMTP_VERB_HELO, 4},
		{"HeLo mixed", "HeLo", SMTP_VERB_HELO, 4},
		{"EHLO", "EHLO x", SMTP_VERB_EHLO, 4},
		{"MAIL", "MAIL FROM:<a@b>", SMTP_VERB_MAIL, 4},
		{"mail lower", "mail from:<a@b>", SMTP_VERB_MAIL, 4},
		{"RCPT", "RCPT TO:<a@b>", SMTP_VERB_RCPT, 4},
		{"DATA", "DATA", SMTP_VERB_DATA, 4},
		{"RSET", "rset", SMTP_VERB_RSET, 4},
		{"NOOP", "NOOP", SMTP_VERB_NOOP, 4},
		{"QUIT", "Quit", SMTP_VERB_QUIT, 4},
		{"VRFY", "VRFY user", SMTP_VERB_VRFY, 4},
		{"EXPN", "EXPN list", SMTP_VERB_EXPN, 4},
		{"HELP", "HELP", SMTP_VERB_HELP, 4},
		{"STARTTLS", "starttls", SMTP_VERB_STARTTLS, 8},
		{"AUTH", "AUTH PLAIN", SMTP_VERB_AUTH, 4},
		{"BDAT", "BDAT 100 LAST", SMTP_VERB_BDAT, 4},
		{"HELOX is unknown", "HELOX x", SMTP_VERB_UNKNOWN, 5},
		{"HEL prefix is unknown", "HEL", SMTP_VERB_UNKNOWN, 3},
		{"DATAX", "DATAX", SMTP_VERB_UNKNOWN, 5},
		{"STARTTLSX", "STARTTLSX", SMTP_VERB_UNKNOWN, 9},
		{"empty", "", SMTP_VERB_UNKNOWN, 0},
		{"leading space", " HELO x", SMTP_VERB_UNKNOWN, 0},
		{"tab is not a separator", "QUIT\tnow", SMTP_VERB_UNKNOWN, 8},
		{"garbage", "\x01\x02\xff", SMTP_VERB_UNKNOWN, 3},
		{"verb then two spaces", "NOOP  x", SMTP_VERB_NOOP, 4},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t vlen = 12345;
		enum smtp_verb v = smtp_cmd_verb(cases[i].line,
						 strlen(cases[i].line), &vlen);
		CHECK_INT(cases[i].name, v, cases[i].want);
		CHECK_INT(cases[i].name, vlen, cases[i].want_len);
	}
}

static void test_verb_respects_len(void **state)
{
	/* Only the first len bytes count: "NOOPX" cut to 4 is NOOP. */
	size_t vlen;
	assert_int_equal(smtp_cmd_verb("NOOPX", 4, &vlen), SMTP_VERB_NOOP);
	assert_int_equal(vlen, 4);
	assert_int_equal(smtp_cmd_verb("NOOP", 3, &vlen), SMTP_VERB_UNKNOWN);
	assert_int_equal(vlen, 3);
}

static void test_verb_names(void **state)
{
	static const struct {
		enum smtp_verb v;
		const char *want;
	} cases[] = {
		{SMTP_VERB_UNKNOWN, ""},    {SMTP_VERB_HELO, "HELO"},
		{SMTP_VERB_EHLO, "EHLO"},   {SMTP_VERB_MAIL, "MAIL"},
		{SMTP_VERB_RCPT, "RCPT"},   {SMTP_VERB_DATA, "DATA"},
		{SMTP_VERB_RSET, "RSET"},   {SMTP_VERB_NOOP, "NOOP"},
		{SMTP_VERB_QUIT, "QUIT"},   {SMTP_VERB_VRFY, "VRFY"},
		{SMTP_VERB_EXPN, "EXPN"},   {SMTP_VERB_HELP, "HELP"},
		{SMTP_VERB_STARTTLS, "STARTTLS"}, {SMTP_VERB_AUTH, "AUTH"},
		{SMTP_VERB_BDAT, "BDAT"},   {SMTP_VERB_COUNT, ""},
		{(enum smtp_verb)1000, ""},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		CHECK_STR(cases[i].want, smtp_verb_name(cases[i].v), cases[i].want);
	/* Every named verb classifies back to itself. */
	for (int v = 1; v < SMTP_VERB_COUNT; v++) {
		const char *n = smtp_verb_name((enum smtp_verb)v);
		size_t vlen;
		assert_int_equal(smtp_cmd_verb(n, strlen(n), &vlen), v);
	}
}

/* ---- smtp_cmd_next, driven like a caller with a receive buffer -------- */

#define FEED_BUF_CAP (SMTP_CMD_LINE_MAX * 3 + 8192)

struct feeder {
	struct smtp_cmd_reader r;
	char buf[FEED_BUF_CAP];
	size_t len;
	size_t max_len;     /* largest the caller's buffer ever got */
	char *out;          /* one record per result, see record() */
	size_t out_len, out_cap;
	unsigned lines, too_long;
};

static void out_append(struct feeder *f, const char *p, size_t n)
{
	if (f->out_len + n + 1 > f->out_cap) {
		f->out_cap = (f->out_len + n + 1) * 2;
		f->out = realloc(f->out, f->out_cap);
		assert_non_null(f->out);
	}
	memcpy(f->out + f->out_len, p, n);
	f->out_len += n;
	f->out[f->out_len] = '\0';
}

static void feeder_init(struct feeder *f)
{
	memset(f, 0, sizeof(*f));
	smtp_cmd_reader_init(&f->r);
	out_append(f, "", 0);
}

static void feeder_free(struct feeder *f)
{
	free(f->out);
}

/* A result is recorded as "VERB|line|arg\n" ("?" for an unknown verb), an
 * over-long line as "TOO_LONG\n". */
static void record(struct feeder *f, const struct smtp_cmd *c)
{
	/* The spans must lie in the caller's buffer, arg inside line. */
	assert_ptr_equal(c->line, f->buf);
	assert_true(c->line_len < f->len);
	assert_true(c->arg >= c->line);
	assert_true(c->arg + c->arg_len <= c->line + c->line_len);
	const char *vn = c->verb == SMTP_VERB_UNKNOWN ? "?" : smtp_verb_name(c->verb);
	out_append(f, vn, strlen(vn));
	out_append(f, "|", 1);
	out_append(f, c->line, c->line_len);
	out_append(f, "|", 1);
	out_append(f, c->arg, c->arg_len);
	out_append(f, "\n", 1);
}

static void feeder_push(struct feeder *f, const char *p, size_t n)
{
	assert_true(f->len + n <= FEED_BUF_CAP);
	memcpy(f->buf + f->len, p, n);
	f->len += n;
	if (f->len > f->max_len)
		f->max_len = f->len;
	for (;;) {
		struct smtp_cmd c;
		size_t used = 99999;
		enum smtp_cmd_result r = smtp_cmd_next(&f->r, f->buf, f->len, &c, &used);
		assert_true(used <= f->len);
		if (r == SMTP_CMD_LINE) {
			assert_true(used > 0);
			f->lines++;
			record(f, &c);
		} else if (r == SMTP_CMD_TOO_LONG) {
			assert_true(used > 0);
			f->too_long++;
			out_append(f, "TOO_LONG\n", 9);
		} else {
			assert_int_equal(r, SMTP_CMD_AGAIN);
		}
		memmove(f->buf, f->buf + used, f->len - used);
		f->len -= used;
		if (r == SMTP_CMD_AGAIN)
			break;
	}
}

static void feed_chunked(struct feeder *f, const char *p, size_t n, size_t chunk)
{
	for (size_t off = 0; off < n; off += chunk)
		feeder_push(f, p + off, n - off < chunk ? n - off : chunk);
}

static const struct {
	const char *name;
	const char *input;
	const char *want;     /* records, see record() */
	size_t want_left;     /* bytes the caller still holds at the end */
} next_cases[] = {
	{"NOOP CRLF", "NOOP\r\n", "NOOP|NOOP|\n", 0},
	{"NOOP bare LF", "NOOP\n", "NOOP|NOOP|\n", 0},
	{"lower case verb", "noop\r\n", "NOOP|noop|\n", 0},
	{"arg", "MAIL FROM:<a@b.example>\r\n",
	 "MAIL|MAIL FROM:<a@b.example>|FROM:<a@b.example>\n", 0},
	{"leading spaces of arg skipped", "MAIL    FROM:<a@b>\r\n",
	 "MAIL|MAIL    FROM:<a@b>|FROM:<a@b>\n", 0},
	{"trailing spaces trimmed", "RCPT TO:<a@b>   \r\n",
	 "RCPT|RCPT TO:<a@b>   |TO:<a@b>\n", 0},
	{"trailing tab and space trimmed", "HELO x.example\t \r\n",
	 "HELO|HELO x.example\t |x.example\n", 0},
	{"inner spaces kept", "VRFY  a  b  \n", "VRFY|VRFY  a  b  |a  b\n", 0},
	{"only spaces after verb", "NOOP    \r\n", "NOOP|NOOP    |\n", 0},
	{"HELOX unknown", "HELOX a.example\r\n", "?|HELOX a.example|a.example\n", 0},
	{"empty line", "\r\n", "?||\n", 0},
	{"empty line bare LF", "\n", "?||\n", 0},
	{"only one CR removed", "RSET\r\r\n", "?|RSET\r|\n", 0},
	{"CR inside line kept", "NO\rOP\r\n", "?|NO\rOP|\n", 0},
	{"two commands", "EHLO c.example\r\nQUIT\r\n",
	 "EHLO|EHLO c.example|c.example\nQUIT|QUIT|\n", 0},
	{"mixed line ends", "NOOP\nRSET\r\nHELP\n",
	 "NOOP|NOOP|\nRSET|RSET|\nHELP|HELP|\n", 0},
	{"partial line kept", "NOOP", "", 4},
	{"complete then partial", "DATA\r\nQUI", "DATA|DATA|\n", 3},
	{"CR waiting for LF", "QUIT\r", "", 5},
};

static void check_next_case(size_t i, size_t chunk)
{
	char name[128];
	snprintf(name, sizeof(name), "%s (chunk %zu)", next_cases[i].name, chunk);
	const char *in = next_cases[i].input;
	struct feeder f;
	feeder_init(&f);
	feed_chunked(&f, in, strlen(in), chunk);
	CHECK_STR(name, f.out, next_cases[i].want);
	CHECK_INT(name, f.len, next_cases[i].want_left);
	CHECK_INT(name, f.too_long, 0);
	feeder_free(&f);
}

static void test_next_whole(void **state)
{
	for (size_t i = 0; i < sizeof(next_cases) / sizeof(next_cases[0]); i++)
		check_next_case(i, 1 << 20);
}

static void test_next_byte_by_byte(void **state)
{
	for (size_t i = 0; i < sizeof(next_cases) / sizeof(next_cases[0]); i++)
		check_next_case(i, 1);
}

static void test_next_odd_chunks(void **state)
{
	static const size_t chunks[] = {2, 3, 5, 7};
	for (size_t i = 0; i < sizeof(next_cases) / sizeof(next_cases[0]); i++)
		for (size_t k = 0; k < sizeof(chunks) / sizeof(chunks[0]); k++)
			check_next_case(i, chunks[k]);
}

static void test_next_nul_in_line(void **state)
{
	/* NUL is just another byte: the line and its length survive. */
	static const char in[] = "NO\0P x\0y\r\nNOOP\r\n";
	static const char want[] = "?|NO\0P x\0y|x\0y\nNOOP|NOOP|\n";
	struct feeder f;
	feeder_init(&f);
	feeder_push(&f, in, sizeof(in) - 1);
	assert_int_equal(f.out_len, sizeof(want) - 1);
	assert_memory_equal(f.out, want, sizeof(want) - 1);
	feeder_free(&f);
}

static void test_next_again_consumes_nothing(void **state)
{
	/* Resumption contract: AGAIN on a short partial line consumes 0 and
	 * the same bytes plus more then yield the line. */
	struct smtp_cmd_reader r;
	struct smtp_cmd c;
	size_t used = 99;
	smtp_cmd_reader_init(&r);
	const char *buf = "MAIL FROM:<a@b>\r\n";
	assert_int_equal(smtp_cmd_next(&r, buf, 4, &c, &used), SMTP_CMD_AGAIN);
	assert_int_equal(used, 0);
	assert_int_equal(smtp_cmd_next(&r, buf, 16, &c, &used), SMTP_CMD_AGAIN);
	assert_int_equal(used, 0);
	assert_int_equal(smtp_cmd_next(&r, buf, 17, &c, &used), SMTP_CMD_LINE);
	assert_int_equal(used, 17);
	assert_int_equal(c.verb, SMTP_VERB_MAIL);
	assert_ptr_equal(c.line, buf);
	assert_int_equal(c.line_len, 15);
	assert_ptr_equal(c.arg, buf + 5);
	assert_int_equal(c.arg_len, 10);
	/* Nothing pending afterwards. */
	assert_int_equal(smtp_cmd_next(&r, "", 0, &c, &used), SMTP_CMD_AGAIN);
	assert_int_equal(used, 0);
}

static void test_next_stale_scanned_is_reset(void **state)
{
	/* A caller that hands a shorter buffer than was scanned must not make
	 * the reader read out of bounds. */
	struct smtp_cmd_reader r;
	struct smtp_cmd c;
	size_t used;
	smtp_cmd_reader_init(&r);
	assert_int_equal(smtp_cmd_next(&r, "NOOP NOOP", 9, &c, &used), SMTP_CMD_AGAIN);
	assert_int_equal(smtp_cmd_next(&r, "QUIT\n", 5, &c, &used), SMTP_CMD_LINE);
	assert_int_equal(used, 5);
	assert_int_equal(c.verb, SMTP_VERB_QUIT);
}

/* ---- over-long lines -------------------------------------------------- */

static char *make_line(size_t body, const char *verb, const char *eol)
{
	size_t vl = strlen(verb), el = strlen(eol);
	assert_true(body >= vl);
	char *p = malloc(body + el + 1);
	assert_non_null(p);
	memcpy(p, verb, vl);
	memset(p + vl, 'x', body - vl);
	memcpy(p + body, eol, el);
	p[body + el] = '\0';
	return p;
}

static void test_line_length_boundary(void **state)
{
	/* SMTP_CMD_LINE_MAX counts the whole line including its line end. */
	static const struct {
		const char *name;
		size_t body;
		const char *eol;
		bool too_long;
	} cases[] = {
		{"max with LF", SMTP_CMD_LINE_MAX - 1, "\n", false},
		{"max with CRLF", SMTP_CMD_LINE_MAX - 2, "\r\n", false},
		{"max+1 with LF", SMTP_CMD_LINE_MAX, "\n", true},
		{"max+1 with CRLF", SMTP_CMD_LINE_MAX - 1, "\r\n", true},
		{"short", 100, "\r\n", false},
	};
	static const size_t chunks[] = {1, 13, 512, 1 << 20};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (size_t k = 0; k < sizeof(chunks) / sizeof(chunks[0]); k++) {
			char name[128];
			snprintf(name, sizeof(name), "%s (chunk %zu)", cases[i].name,
				 chunks[k]);
			char *line = make_line(cases[i].body, "VRFY ", cases[i].eol);
			struct feeder f;
			feeder_init(&f);
			feed_chunked(&f, line, strlen(line), chunks[k]);
			feeder_push(&f, "NOOP\r\n", 6);
			CHECK_INT(name, f.too_long, cases[i].too_long ? 1 : 0);
			CHECK_INT(name, f.lines, cases[i].too_long ? 1 : 2);
			if (cases[i].too_long) {
				CHECK_STR(name, f.out, "TOO_LONG\nNOOP|NOOP|\n");
			} else {
				/* VRFY|<line>|<arg>\nNOOP|NOOP|\n */
				size_t ll = cases[i].body;
				CHECK_INT(name, f.out_len, 5 + ll + 1 + (ll - 5) + 1 + 11);
				if (memcmp(f.out + 5, line, ll) != 0)
					fail_msg("%s: line content differs", name);
			}
			CHECK_INT(name, f.len, 0);
			feeder_free(&f);
			free(line);
		}
	}
}

static void test_megabyte_line(void **state)
{
	/* A 1 MB line in chunks: memory stays bounded, TOO_LONG comes exactly
	 * once when the line ends, and the next command parses. */
	static const size_t chunks[] = {1, 100, 1000, 4096, 8192};
	const size_t big = 1u << 20;
	char *line = make_line(big, "MAIL FROM:<", "\r\nNOOP\r\nRSET\r\n");
	size_t n = strlen(line);
	for (size_t k = 0; k < sizeof(chunks) / sizeof(chunks[0]); k++) {
		char name[64];
		snprintf(name, sizeof(name), "1MB line, chunk %zu", chunks[k]);
		struct feeder f;
		feeder_init(&f);
		feed_chunked(&f, line, n, chunks[k]);
		CHECK_STR(name, f.out, "TOO_LONG\nNOOP|NOOP|\nRSET|RSET|\n");
		CHECK_INT(name, f.too_long, 1);
		if (f.max_len > SMTP_CMD_LINE_MAX + chunks[k])
			fail_msg("%s: caller buffer grew to %zu", name, f.max_len);
		CHECK_INT(name, f.len, 0);
		feeder_free(&f);
	}
	free(line);
}

static void test_consecutive_long_lines(void **state)
{
	char *a = make_line(SMTP_CMD_LINE_MAX * 2, "X", "\n");
	char *b = make_line(SMTP_CMD_LINE_MAX + 5, "Y", "\r\n");
	static const size_t chunks[] = {1, 7, 3000, SMTP_CMD_LINE_MAX * 2};
	for (size_t k = 0; k < sizeof(chunks) / sizeof(chunks[0]); k++) {
		char name[64];
		snprintf(name, sizeof(name), "two long lines, chunk %zu", chunks[k]);
		struct feeder f;
		feeder_init(&f);
		size_t la = strlen(a), lb = strlen(b);
		char *all = malloc(la + lb + 7);
		assert_non_null(all);
		memcpy(all, a, la);
		memcpy(all + la, b, lb);
		memcpy(all + la + lb, "QUIT\r\n", 7);
		feed_chunked(&f, all, la + lb + 6, chunks[k]);
		CHECK_STR(name, f.out, "TOO_LONG\nTOO_LONG\nQUIT|QUIT|\n");
		free(all);
		feeder_free(&f);
	}
	free(a);
	free(b);
}

static void test_long_line_reader_state(void **state)
{
	/* Direct API check of the discarding state: once past the limit with
	 * no LF, all bytes are consumed and AGAIN returned. */
	struct smtp_cmd_reader r;
	struct smtp_cmd c;
	size_t used;
	char buf[SMTP_CMD_LINE_MAX + 10];
	memset(buf, 'a', sizeof(buf));
	smtp_cmd_reader_init(&r);
	assert_int_equal(smtp_cmd_next(&r, buf, SMTP_CMD_LINE_MAX - 1, &c, &used),
			 SMTP_CMD_AGAIN);
	assert_int_equal(used, 0);
	assert_false(r.discarding);
	assert_int_equal(smtp_cmd_next(&r, buf, SMTP_CMD_LINE_MAX, &c, &used),
			 SMTP_CMD_AGAIN);
	assert_int_equal(used, SMTP_CMD_LINE_MAX);
	assert_true(r.discarding);
	assert_int_equal(smtp_cmd_next(&r, buf, 10, &c, &used), SMTP_CMD_AGAIN);
	assert_int_equal(used, 10);
	/* Even a tiny tail with its LF ends the over-long line. */
	assert_int_equal(smtp_cmd_next(&r, "z\r\nNOOP\r\n", 9, &c, &used),
			 SMTP_CMD_TOO_LONG);
	assert_int_equal(used, 3);
	assert_false(r.discarding);
	assert_int_equal(smtp_cmd_next(&r, "NOOP\r\n", 6, &c, &used), SMTP_CMD_LINE);
	assert_int_equal(c.verb, SMTP_VERB_NOOP);
	assert_int_equal(used, 6);
}

static void test_bdat_arg(void **state)
{
	static const struct {
		const char *arg;
		bool ok;
		uint64_t size;
		bool last;
	} cases[] = {
		{"0", true, 0, false},
		{"0 LAST", true, 0, true},
		{"100 last", true, 100, true},
		{"00012 LaSt", true, 12, true},
		{"999999999999999999", true, 999999999999999999ull, false},
		{"1000000000000000000", false, 0, false},
		{"", false, 0, false},
		{"LAST", false, 0, false},
		{"-1", false, 0, false},
		{"+1", false, 0, false},
		{"10  LAST", false, 0, false},
		{"10 LASTX", false, 0, false},
		{"10 FIRST", false, 0, false},
		{"10x", false, 0, false},
		{"1 0", false, 0, false},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t size = 7;
		bool last = false;
		bool ok = smtp_bdat_arg_parse(cases[i].arg, strlen(cases[i].arg), &size, &last);
		if (ok != cases[i].ok)
			fail_msg("\"%s\": ok=%d", cases[i].arg, ok);
		if (ok && (size != cases[i].size || last != cases[i].last))
			fail_msg("\"%s\": size %llu last %d", cases[i].arg, (unsigned long long)size, last);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_verb_table),
		cmocka_unit_test(test_verb_respects_len),
		cmocka_unit_test(test_verb_names),
		cmocka_unit_test(test_next_whole),
		cmocka_unit_test(test_next_byte_by_byte),
		cmocka_unit_test(test_next_odd_chunks),
		cmocka_unit_test(test_next_nul_in_line),
		cmocka_unit_test(test_next_again_consumes_nothing),
		cmocka_unit_test(test_next_stale_scanned_is_reset),
		cmocka_unit_test(test_line_length_boundary),
		cmocka_unit_test(test_megabyte_line),
		cmocka_unit_test(test_consecutive_long_lines),
		cmocka_unit_test(test_long_line_reader_state),
		cmocka_unit_test(test_bdat_arg),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
