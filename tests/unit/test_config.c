/* Unit tests for engine/config.c and engine/relay.c: value parsers, FILE:LINE
 * errors, most-specific connector selection and the relay decision. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "relay.h"
#include "smtp_reply.h"

static void test_sizes(void **state)
{
	static const struct {
		const char *in;
		bool ok;
		uint64_t want;
	} cases[] = {
		{"36MB", true, 36ULL << 20}, {"256KB", true, 256 << 10},
		{"1GB", true, 1ULL << 30},   {"100", true, 100},
		{"100B", true, 100},         {"unlimited", true, 0},
		{"12XB", false, 0},          {"-1", false, 0},
		{"", false, 0},              {"99999999999999999999GB", false, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t v = 12345;
		bool ok = conf_parse_size(cases[i].in, &v);
		if (ok != cases[i].ok)
			fail_msg("size %s: ok=%d", cases[i].in, ok);
		if (ok)
			assert_int_equal(v, cases[i].want);
	}
}

static void test_durations(void **state)
{
	static const struct {
		const char *in;
		bool ok;
		uint64_t want;
	} cases[] = {
		{"10m", true, 600000}, {"5s", true, 5000}, {"2d", true, 172800000},
		{"4h", true, 14400000}, {"250ms", true, 250}, {"7", true, 7000},
		{"5x", false, 0},      {"", false, 0},      {"-5s", false, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t v = 0;
		bool ok = conf_parse_duration_ms(cases[i].in, &v);
		if (ok != cases[i].ok)
			fail_msg("duration %s: ok=%d", cases[i].in, ok);
		if (ok)
			assert_int_equal(v, cases[i].want);
	}
}

static void test_ranges(void **state)
{
	static const struct {
		const char *in;
		bool ok;
		int family;
		u128 lo, hi;
	} cases[] = {
		{"192.168.5.10", true, 4, 0xc0a8050a, 0xc0a8050a},
		{"192.168.5.20-192.168.5.29", true, 4, 0xc0a80514, 0xc0a8051d},
		{"10.1.0.0/16", true, 4, 0x0a010000, 0x0a01ffff},
		{"10.1.2.3/16", true, 4, 0x0a010000, 0x0a01ffff},
		{"0.0.0.0/0", true, 4, 0, 0xffffffff},
		{"0.0.0.0-255.255.255.255", true, 4, 0, 0xffffffff},
		{"::/0", true, 6, 0, ~(u128)0},
		{"::1", true, 6, 1, 1},
		{"::ffff:10.0.0.1", true, 4, 0x0a000001, 0x0a000001},
		{"10.0.0.300", false, 0, 0, 0},
		{"10.0.0.9-10.0.0.1", false, 0, 0, 0},
		{"10.0.0.0/33", false, 0, 0, 0},
		{"10.0.0.1-::1", false, 0, 0, 0},
		{"2001:db8::/129", false, 0, 0, 0},
		{"garbage", false, 0, 0, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct ip_range r;
		bool ok = conf_parse_range(cases[i].in, &r);
		if (ok != cases[i].ok)
			fail_msg("range %s: ok=%d", cases[i].in, ok);
		if (!ok)
			continue;
		assert_int_equal(r.family, cases[i].family);
		assert_true(r.lo == cases[i].lo);
		assert_true(r.hi == cases[i].hi);
	}
	struct ip_range r;
	assert_true(conf_parse_range("2001:db8::/32", &r));
	assert_true(r.lo == (u128)0x20010db8 << 96);
	assert_true(r.hi == (((u128)0x20010db8 << 96) | (((u128)1 << 96) - 1)));
}

static void test_bindings(void **state)
{
	struct binding b;
	assert_true(conf_parse_binding("127.0.0.1:2525", &b));
	assert_int_equal(b.addr.ss_family, AF_INET);
	assert_int_equal(ntohs(((struct sockaddr_in *)&b.addr)->sin_port), 2525);
	assert_true(conf_parse_binding("[::]:25", &b));
	assert_int_equal(b.addr.ss_family, AF_INET6);
	assert_false(conf_parse_binding("::1:25", &b));
	assert_false(conf_parse_binding("127.0.0.1", &b));
	assert_false(conf_parse_binding("127.0.0.1:0", &b));
	assert_false(conf_parse_binding("127.0.0.1:65536", &b));
	assert_false(conf_parse_binding("host.example:25", &b));
}

static char *write_conf(const char *text)
{
	static char path[64];
	snprintf(path, sizeof(path), "/tmp/postern-test-%d.conf", (int)getpid());
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return path;
}

static const char good_conf[] =
	"server = { hostname = \"relay.corp.example\"; workers = 2; spool_dir = \"/tmp/x\"; };\n"
	"accepted_domains = ( { domain = \"corp.example\"; type = \"authoritative\"; },\n"
	"  { domain = \"*.sub.example\"; type = \"internal_relay\"; } );\n"
	"receive_connectors = (\n"
	"  { name = \"Default Frontend\"; bindings = [ \"127.0.0.1:2525\", \"[::1]:2525\" ];\n"
	"    remote_ip_ranges = [ \"0.0.0.0-255.255.255.255\", \"::/0\" ];\n"
	"    permission_groups = [ \"anonymous\" ]; },\n"
	"  { name = \"Anonymous Relay\"; bindings = [ \"127.0.0.1:2525\" ];\n"
	"    remote_ip_ranges = [ \"127.0.0.10\", \"127.0.0.20-127.0.0.29\", \"127.0.1.0/24\" ];\n"
	"    permission_groups = [ \"anonymous_relay\" ]; max_message_size = \"10MB\";\n"
	"    connection_timeout = \"1m\"; },\n"
	"  { name = \"Wide Relay\"; bindings = [ \"127.0.0.1:2525\" ];\n"
	"    remote_ip_ranges = [ \"127.0.0.0/8\" ]; permission_groups = [ ]; }\n"
	");\n"
	"send_connectors = (\n"
	"  { name = \"Internet\"; address_spaces = [ \"*\" ]; port = 2526; },\n"
	"  { name = \"Corp\"; address_spaces = [ \"*.corp.example\" ];\n"
	"    smart_hosts = [ \"127.0.0.1:2527\", \"[::1]:2528\" ]; max_connections = 3; },\n"
	"  { name = \"Exact\"; address_spaces = [ \"mail.corp.example\", \"*.a.corp.example\" ];\n"
	"    drop_directory = \"/tmp/drop\"; }\n"
	");\n"
	"queue = { retry_interval = \"1m\"; message_expiration = \"1d\"; };\n";

static const struct rconn *match_ip(const struct conf *c, unsigned b, const char *ip,
				    const char **range)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	if (strchr(ip, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		s6->sin6_family = AF_INET6;
		inet_pton(AF_INET6, ip, &s6->sin6_addr);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		s4->sin_family = AF_INET;
		inet_pton(AF_INET, ip, &s4->sin_addr);
	}
	const struct ip_range *why = NULL;
	const struct rconn *rc = conf_match(c, b, (struct sockaddr *)&ss, &why);
	*range = why ? why->text : NULL;
	return rc;
}

static void test_load_and_match(void **state)
{
	char err[512] = "";
	struct conf *c = conf_load(write_conf(good_conf), err, sizeof(err));
	if (!c)
		fail_msg("load failed: %s", err);
	assert_int_equal(c->nrc, 3);
	assert_int_equal(c->nbindings, 2);
	assert_int_equal(c->workers, 2);
	assert_int_equal(c->io_backend, 0); /* auto unless set */
	assert_int_equal(c->rc[1].max_message_size, 10 << 20);
	assert_int_equal(c->rc[0].max_message_size, 36 << 20);
	assert_int_equal(c->rc[1].connection_timeout_ms, 60000);
	assert_int_equal(c->rc[0].max_recipients, 200);
	assert_int_equal(c->rc[2].perms, 0);
	assert_false(c->rc[2].smtp.may_submit);

	static const struct {
		unsigned binding;
		const char *ip;
		const char *want;   /* connector name or NULL */
		const char *range;
	} cases[] = {
		{0, "127.0.0.10", "Anonymous Relay", "127.0.0.10"},
		{0, "127.0.0.25", "Anonymous Relay", "127.0.0.20-127.0.0.29"},
		{0, "127.0.1.7", "Anonymous Relay", "127.0.1.0/24"},
		{0, "127.0.0.11", "Wide Relay", "127.0.0.0/8"},
		{0, "10.9.9.9", "Default Frontend", "0.0.0.0-255.255.255.255"},
		{0, "::ffff:127.0.0.10", "Anonymous Relay", "127.0.0.10"},
		{0, "2001:db8::1", "Default Frontend", "::/0"},
		{1, "127.0.0.10", "Default Frontend", "0.0.0.0-255.255.255.255"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *range;
		const struct rconn *rc = match_ip(c, cases[i].binding, cases[i].ip, &range);
		if (!rc)
			fail_msg("%s: no connector", cases[i].ip);
		assert_string_equal(rc->name, cases[i].want);
		assert_string_equal(range, cases[i].range);
	}
	conf_free(c);
}

static void test_relay_policy(void **state)
{
	char err[512] = "";
	struct conf *c = conf_load(write_conf(good_conf), err, sizeof(err));
	assert_non_null(c);
	static const struct {
		const char *rcpt;
		unsigned connector;
		bool accept;
	} cases[] = {
		{"<x@corp.example>", 0, true},
		{"<x@CORP.Example>", 0, true},
		{"<x@other.example>", 0, false},
		{"<x@a.sub.example>", 0, true},
		{"<x@sub.example>", 0, true},
		{"<x@notsub.example>", 0, false},
		{"<user%other.example@corp.example>", 0, false},
		{"<other!user@corp.example>", 0, false},
		{"<\"user@other.example\"@corp.example>", 0, false},
		{"<@corp.example:user@other.example>", 0, false},
		{"<@other.example:user@corp.example>", 0, true},
		{"<user@[10.1.2.3]>", 0, false},
		{"<Postmaster>", 0, true},
		{"<x@corp.example.evil.example>", 0, false},
		{"<x@other.example>", 1, true},
		{"<user@[10.1.2.3]>", 1, true},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct smtp_path p;
		size_t used;
		const char *s = cases[i].rcpt;
		enum smtp_arg_err e = smtp_path_parse(s, strlen(s), SMTP_PATH_ALLOW_POSTMASTER,
						      &p, &used);
		if (e != SMTP_ARG_OK)
			fail_msg("%s: parse error %d", s, e);
		const char *r = relay_rcpt_policy(&c->rc[cases[i].connector], &p, false);
		if (cases[i].accept && r)
			fail_msg("%s via %u: refused with %s", s, cases[i].connector, r);
		if (!cases[i].accept) {
			if (!r)
				fail_msg("%s via %u: accepted", s, cases[i].connector);
			assert_string_equal(r, R_UNABLE_TO_RELAY);
		}
	}
	conf_free(c);
}

/* B.9: recipients_file, domain types and the sender policy. */
static const char policy_conf_fmt[] =
	"server = { hostname = \"relay.corp.example\"; workers = 1; spool_dir = \"/tmp/x\"; };\n"
	"accepted_domains = (\n"
	"  { domain = \"corp.example\"; recipients_file = \"%s\"; },\n"
	"  { domain = \"*.corp.example\"; type = \"authoritative\"; },\n"
	"  { domain = \"open.example\"; },\n"
	"  { domain = \"partner.example\"; type = \"internal_relay\"; },\n"
	"  { domain = \"*.outside.example\"; type = \"external_relay\"; } );\n"
	"receive_connectors = (\n"
	"  { name = \"Anon\"; bindings = [ \"127.0.0.1:2525\" ]; permission_groups = [ \"anonymous\" ]; },\n"
	"  { name = \"Relay\"; bindings = [ \"127.0.0.1:2525\" ]; remote_ip_ranges = [ \"127.0.0.10\" ];\n"
	"    permission_groups = [ \"anonymous\", \"anonymous_relay\" ]; },\n"
	"  { name = \"Trusted\"; bindings = [ \"127.0.0.1:2525\" ]; remote_ip_ranges = [ \"127.0.0.11\" ];\n"
	"    permission_groups = [ \"externally_secured\" ]; } );\n"
	"send_connectors = ( { name = \"Internet\"; address_spaces = [ \"*\" ]; port = 2526; },\n"
	"  { name = \"Partner\"; address_spaces = [ \"partner.example\" ]; smart_hosts = [ \"127.0.0.1:2529\" ]; } );\n";

static const char *path_policy(const char *path, bool mail, const struct rconn *rc)
{
	struct smtp_path p;
	size_t used;
	unsigned flags = mail ? SMTP_PATH_ALLOW_NULL : SMTP_PATH_ALLOW_POSTMASTER;
	if (smtp_path_parse(path, strlen(path), flags, &p, &used) != SMTP_ARG_OK)
		fail_msg("%s: does not parse", path);
	return mail ? relay_mail_policy((void *)rc, &p, false) : relay_rcpt_policy((void *)rc, &p, false);
}

static void test_domain_policy(void **state)
{
	char rpath[64];
	snprintf(rpath, sizeof(rpath), "/tmp/postern-test-rcpts-%d", (int)getpid());
	FILE *f = fopen(rpath, "w");
	assert_non_null(f);
	fputs("# exported from the directory\nCEO@corp.example\n  alice@Corp.Example \r\n\n"
	      "*@sales.corp.example\nbob@x.corp.example\n", f);
	fclose(f);
	char text[4096], err[512] = "";
	snprintf(text, sizeof(text), policy_conf_fmt, rpath);
	struct conf *c = conf_load(write_conf(text), err, sizeof(err));
	if (!c)
		fail_msg("load failed: %s", err);
	assert_true(c->rc[0].smtp.anonymous_only);
	assert_false(c->rc[1].smtp.anonymous_only);
	assert_false(c->rc[2].smtp.anonymous_only);
	static const struct {
		bool mail;
		const char *path;
		unsigned connector;
		const char *want;   /* NULL: accepted */
	} cases[] = {
		/* the sender policy: anonymous only, authoritative domains only */
		{true, "<ceo@corp.example>", 0, R_SENDER_DENIED},
		{true, "<CEO@CORP.EXAMPLE>", 0, R_SENDER_DENIED},
		{true, "<x@sales.corp.example>", 0, R_SENDER_DENIED},
		{true, "<x@open.example>", 0, R_SENDER_DENIED},
		{true, "<x@partner.example>", 0, NULL},
		{true, "<x@a.outside.example>", 0, NULL},
		{true, "<x@other.example>", 0, NULL},
		{true, "<x@[127.0.0.1]>", 0, NULL},
		{true, "<>", 0, NULL},
		{true, "<ceo@corp.example>", 1, NULL},
		{true, "<ceo@corp.example>", 2, NULL},
		/* recipients_file: listed, any case; wildcards; for everyone */
		{false, "<ceo@corp.example>", 0, NULL},
		{false, "<Ceo@Corp.Example>", 0, NULL},
		{false, "<alice@corp.example>", 0, NULL},
		{false, "<mallory@corp.example>", 0, R_RECIPIENT_NOT_FOUND},
		{false, "<mallory@corp.example>", 1, R_RECIPIENT_NOT_FOUND},
		{false, "<mallory@corp.example>", 2, R_RECIPIENT_NOT_FOUND},
		{false, "<anyone@sales.corp.example>", 0, NULL},
		{false, "<anyone@SALES.corp.example>", 0, NULL},
		{false, "<anyone@eu.sales.corp.example>", 0, NULL}, /* *.corp.example: no list */
		{false, "<bob@x.corp.example>", 0, NULL},
		{false, "<ceo@x.corp.example>", 0, NULL},
		{false, "<anyone@open.example>", 0, NULL},
		{false, "<anyone@partner.example>", 0, NULL},
		{false, "<anyone@b.outside.example>", 0, NULL},
		{false, "<anyone@other.example>", 0, R_UNABLE_TO_RELAY},
		{false, "<anyone@other.example>", 1, NULL},
		{false, "<Postmaster>", 0, NULL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *r = path_policy(cases[i].path, cases[i].mail, &c->rc[cases[i].connector]);
		if (!cases[i].want && r)
			fail_msg("%s via %u: refused with %s", cases[i].path, cases[i].connector, r);
		if (cases[i].want && (!r || strcmp(r, cases[i].want) != 0))
			fail_msg("%s via %u: got %s, want %s", cases[i].path, cases[i].connector,
				 r ? r : "accepted", cases[i].want);
	}
	/* The most specific accepted domain decides. */
	const struct accepted_domain *ad = relay_domain_find(c, "corp.example", 12);
	assert_non_null(ad);
	assert_false(ad->subdomains);
	ad = relay_domain_find(c, "x.corp.example", 14);
	assert_non_null(ad);
	assert_true(ad->subdomains);
	conf_free(c);

	/* The file is part of the configuration: errors stop the load. */
	static const struct {
		const char *body;    /* NULL: no such file */
		const char *needle;
	} bad[] = {
		{NULL, "No such file"},
		{"ok@corp.example\nnot an address\n", ":2: one address a line"},
		{"ok@corp.example\n\nlocal@\n", ":3: not a domain name"},
		{"nobody\n", ":1: not an address"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		unlink(rpath);
		if (bad[i].body) {
			f = fopen(rpath, "w");
			assert_non_null(f);
			fputs(bad[i].body, f);
			fclose(f);
		}
		err[0] = '\0';
		c = conf_load(write_conf(text), err, sizeof(err));
		if (c)
			fail_msg("case %zu: loaded", i);
		if (!strstr(err, bad[i].needle) || !strstr(err, "recipients_file") ||
		    !strstr(err, ".conf:3:"))
			fail_msg("case %zu: %s", i, err);
	}
	unlink(rpath);
}

static void test_send_routing(void **state)
{
	char err[512] = "";
	struct conf *c = conf_load(write_conf(good_conf), err, sizeof(err));
	if (!c)
		fail_msg("%s", err);
	static const struct {
		const char *domain;
		const char *want;
	} cases[] = {
		{"other.example", "Internet"},
		{"corp.example", "Corp"},            /* "*.x" covers x itself */
		{"CORP.example", "Corp"},
		{"x.corp.example", "Corp"},
		{"mail.corp.example", "Exact"},      /* "domain" beats "*.domain" */
		{"x.mail.corp.example", "Corp"},     /* "mail.corp.example" has no subdomains */
		{"a.corp.example", "Exact"},         /* longer "*.domain" wins */
		{"b.a.corp.example", "Exact"},
		{"xcorp.example", "Internet"},
		{"[10.1.2.3]", "Internet"},          /* literals match "*" only */
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		const struct sconn *sc = conf_route(c, cases[i].domain, strlen(cases[i].domain));
		if (!sc)
			fail_msg("%s: no route", cases[i].domain);
		CHECK_STR(cases[i].domain, sc->name, cases[i].want);
	}
	const struct sconn *corp = conf_route(c, "corp.example", 12);
	CHECK_INT("hosts", corp->nhosts, 2);
	CHECK_INT("max_connections", corp->max_connections, 3);
	CHECK_INT("port default", corp->port, 25);
	CHECK_INT("internet port", conf_route(c, "x.org", 5)->port, 2526);
	CHECK_INT("retry", c->queue.retry_interval_ms, 60000);
	CHECK_INT("expiration", c->queue.message_expiration_ms, 86400000);
	CHECK_INT("delay default", c->queue.delay_notification_ms, 4 * 3600000);

	/* Without a "*" connector, an unknown domain has no route and RCPT
	 * says so; a domain that routes is accepted. */
	static const char only_drop[] =
		"receive_connectors = ( { name = \"r\"; bindings = [ \"127.0.0.1:2525\" ];\n"
		"  permission_groups = [ \"anonymous_relay\" ]; } );\n"
		"send_connectors = ( { name = \"d\"; address_spaces = [ \"drop.example\" ];\n"
		"  drop_directory = \"/tmp/d\"; } );\n";
	struct conf *d = conf_load(write_conf(only_drop), err, sizeof(err));
	if (!d)
		fail_msg("%s", err);
	struct smtp_path p;
	size_t used;
	assert_int_equal(smtp_path_parse("<a@other.example>", 17, 0, &p, &used), SMTP_ARG_OK);
	CHECK_STR("unroutable", relay_rcpt_policy(&d->rc[0], &p, false), R_UNABLE_TO_ROUTE);
	assert_int_equal(smtp_path_parse("<a@drop.example>", 16, 0, &p, &used), SMTP_ARG_OK);
	assert_null(relay_rcpt_policy(&d->rc[0], &p, false));
	conf_free(d);
	conf_free(c);
}

static void test_errors(void **state)
{
	static const struct {
		const char *text;
		int line;
		const char *needle;
	} cases[] = {
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"];\n  bogus = 1; }\n);\n",
		 3, "unknown setting \"bogus\""},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"];\n  remote_ip_ranges = [\"10.0.0.300\"]; }\n);\n",
		 3, "10.0.0.300"},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"];\n  max_message_size = \"12XB\"; }\n);\n",
		 3, "max_message_size"},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"];\n  remote_ip_ranges = [\"10.0.0.0/8\"]; },\n"
		 " { name = \"b\"; bindings = [\"127.0.0.1:25\"];\n  remote_ip_ranges = [\"10.0.0.0/8\"]; }\n);\n",
		 4, "both claim 10.0.0.0/8"},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"];\n  remote_ip_ranges = [\"10.0.0.0-10.0.0.20\"]; },\n"
		 " { name = \"b\"; bindings = [\"127.0.0.1:25\"];\n  remote_ip_ranges = [\"10.0.0.16/28\"]; }\n);\n",
		 4, "overlap without one containing the other"},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"];\n  permission_groups = [\"root\"]; }\n);\n",
		 3, "unknown group \"root\""},
		{"server = { hostname = \"relay\"; };\nreceive_connectors = (\n { name = ; }\n);\n",
		 3, "syntax error"},
		{"server = { workers = 1; };\n", 1, "no receive_connectors"},
		{"accepted_domains = (\n { domain = \"p.example\"; type = \"internal_relay\";\n   recipients_file = \"/dev/null\"; }\n);\n"
		 "receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = ( { name = \"s\"; address_spaces = [\"*\"]; } );\n",
		 3, "recipients_file: only for authoritative domains"},
		{"accepted_domains = (\n { domain = \"p.example\"; type = \"external_relay\"; }\n);\n"
		 "receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = ( { name = \"s\"; address_spaces = [\"q.example\"]; } );\n",
		 2, "is external_relay: no send connector covers it"},
		{"server = {\n  io_backend = \"kqueue\"; };\nreceive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n",
		 2, "io_backend: expected auto, io_uring or epoll"},
		{"server = {\n  max_open_files = 10; };\nreceive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n",
		 2, "max_open_files: a number from 64 to 16777216"},
		{"server = { wrkers = 1; };\nreceive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n",
		 1, "unknown setting \"wrkers\""},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"localhost:25\"]; }\n);\n",
		 2, "bindings"},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\";\n  address_spaces = [ \"*\", \"bad domain\" ]; }\n);\n",
		 4, "address_spaces: \"bad domain\""},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\"; address_spaces = [ \"*\" ];\n  smart_hosts = [ \"10.0.0.1:0\" ]; }\n);\n",
		 4, "bad port"},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\"; address_spaces = [ \"*\" ];\n  smart_hosts = [ \"10.0.0.1\" ];\n  drop_directory = \"/x\"; }\n);\n",
		 5, "exclude each other"},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\"; address_spaces = [ \"x.example\" ]; },\n"
		 " { name = \"t\";\n  address_spaces = [ \"X.example\" ]; }\n);\n",
		 5, "also on send connector \"s\""},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\"; address_spaces = [ \"*\" ];\n  max_message_rate = \"fast\"; }\n);\n",
		 4, "max_message_rate"},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "queue = {\n retry_interval = \"15m\";\n retry = 1; };\n",
		 4, "unknown setting \"retry\""},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "server = { dns_servers = [\n \"127.0.0.1:53\",\n \"dns.example\" ]; };\n",
		 4, "dns_servers: \"dns.example\""},
		/* TLS keys never parse without acting (B.7). */
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"];\n  require_tls = true; }\n);\n",
		 3, "require_tls: needs tls_certificate"},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"];\n  tls_client_ca_file = \"/x\"; }\n);\n",
		 3, "tls_client_ca_file: needs tls_certificate"},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"];\n  tls_certificate = [ \"/a.pem\", \"/b.pem\" ];\n tls_key = \"/a.key\"; }\n);\n",
		 3, "2 certificate(s) but 1 key(s)"},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"];\n  tls_certificate = \"/a.pem\"; tls_key = \"/a.key\";\n tls_min_version = \"1.1\"; }\n);\n",
		 4, "tls_min_version: expected \"1.2\" or \"1.3\""},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"];\n  tls_certificate = \"/nonexistent/a.pem\"; tls_key = \"/a.key\"; }\n);\n",
		 3, "/nonexistent/a.pem: No such file or directory"},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\"; address_spaces = [ \"*\" ];\n  tls = \"maybe\"; }\n);\n",
		 4, "tls: expected none, opportunistic, required or verify"},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\"; address_spaces = [ \"*\" ];\n  tls_ca_file = \"/etc/ssl/certs/ca-certificates.crt\"; }\n);\n",
		 4, "tls_ca_file: only used with tls = \"verify\""},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\"; address_spaces = [ \"*\" ]; tls = \"none\";\n  tls_server_name = \"x.example\"; }\n);\n",
		 4, "tls_server_name: does nothing with tls = \"none\""},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\"; address_spaces = [ \"*\" ]; drop_directory = \"/x\";\n  tls = \"required\"; }\n);\n",
		 4, "tls: does not apply to a drop_directory connector"},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\"; address_spaces = [ \"*\" ];\n  tls_certificate = \"/c.pem\"; }\n);\n",
		 4, "tls_certificate and tls_key go together"},
		/* AUTH keys (B.8) */
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"];\n  max_logon_failures = 2; }\n);\n",
		 3, "max_logon_failures: needs auth_users_file"},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"]; permission_groups = [\"anonymous\"];\n  auth_users_file = \"/x\"; allow_auth_without_tls = true; }\n);\n",
		 3, "no \"authenticated\" permission group"},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"]; permission_groups = [\"authenticated\"];\n  auth_users_file = \"/x\"; }\n);\n",
		 3, "AUTH is offered only after STARTTLS"},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"]; permission_groups = [\"authenticated\"];\n  allow_auth_without_tls = true; auth_users_file = \"/x\";\n  auth_mechanisms = [ \"CRAM-MD5\" ]; }\n);\n",
		 4, "auth_mechanisms: \"CRAM-MD5\" is not PLAIN or LOGIN"},
		{"receive_connectors = (\n { name = \"a\"; bindings = [\"127.0.0.1:25\"]; permission_groups = [\"authenticated\"];\n  allow_auth_without_tls = true; auth_users_file = \"/nonexistent/users\"; }\n);\n",
		 3, "auth_users_file: /nonexistent/users: No such file or directory"},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\"; address_spaces = [ \"*\" ];\n  auth = { mechanism = \"ntlm\"; username = \"u\"; password_file = \"/x\"; }; }\n);\n",
		 4, "auth.mechanism: expected plain, login or xoauth2"},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\"; address_spaces = [ \"*\" ];\n  auth = { mechanism = \"xoauth2\"; username = \"u\"; password_file = \"/x\"; }; }\n);\n",
		 4, "auth: xoauth2 takes token_file"},
		{"receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n"
		 "send_connectors = (\n { name = \"s\"; address_spaces = [ \"*\" ];\n  auth = { mechanism = \"login\"; username = \"u\"; password_file = \"/nonexistent/pw\"; }; }\n);\n",
		 4, "auth.password_file: /nonexistent/pw: No such file or directory"},
		/* The pickup directory (B.11) */
		{"server = {\n pickup = \"/p\"; };\nreceive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n",
		 2, "pickup: expected { directory"},
		{"server = {\n pickup = { max_parallel = 2; }; };\nreceive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n",
		 2, "directory"},
		{"server = {\n pickup = { directory = \"/p\";\n  max_parallel = 0; }; };\nreceive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n",
		 3, "pickup: max_parallel: a number from 1 to 256"},
		{"server = {\n pickup = { directory = \"/p\";\n  max_message_size = \"12XB\"; }; };\nreceive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n",
		 3, "pickup: max_message_size: \"12XB\" is not a size of at least 1KB"},
		{"server = {\n pickup = { directory = \"/p\";\n  max_recipients_per_message = -1; }; };\nreceive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n",
		 3, "pickup: max_recipients_per_message: a number from 1 to 100000"},
		{"server = {\n pickup = { directory = \"/p\";\n  connector = \"x\"; }; };\nreceive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n",
		 3, "unknown setting \"connector\""},
		{"server = { pickup_directory = \"/a\";\n pickup = { directory = \"/b\"; }; };\nreceive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n",
		 2, "pickup: directory \"/b\" and pickup_directory \"/a\" differ: set one"},
		{"server = {\n pickup_directory = \"\"; };\nreceive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n",
		 2, "pickup_directory: empty"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char err[512] = "";
		const char *path = write_conf(cases[i].text);
		struct conf *c = conf_load(path, err, sizeof(err));
		if (c)
			fail_msg("case %zu loaded", i);
		char prefix[128];
		snprintf(prefix, sizeof(prefix), "%s:%d: ", path, cases[i].line);
		if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, cases[i].needle))
			fail_msg("case %zu: got \"%s\", want prefix \"%s\" and \"%s\"", i, err,
				 prefix, cases[i].needle);
	}
	char err[512];
	assert_null(conf_load("/nonexistent/postern.conf", err, sizeof(err)));
	assert_true(strncmp(err, "/nonexistent/postern.conf:0: ", 29) == 0);
}

/* The pickup keys: the shorthand, the group, their defaults. */
static void test_pickup_keys(void **state)
{
	(void)state;
	static const char rc[] = "receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n";
	static const struct {
		const char *server;
		const char *dir;
		unsigned parallel;
		unsigned long long size;
		unsigned rcpts;
	} cases[] = {
		{"", NULL, 0, 0, 0},
		{"pickup_directory = \"/var/spool/postern-pickup\";", "/var/spool/postern-pickup", 4,
		 36ull << 20, 200},
		{"pickup = { directory = \"/p\"; max_parallel = 16; max_message_size = \"10MB\"; max_recipients_per_message = 5; };",
		 "/p", 16, 10ull << 20, 5},
		{"pickup_directory = \"/p\"; pickup = { directory = \"/p\"; };", "/p", 4, 36ull << 20, 200},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char text[1024], err[1024];
		snprintf(text, sizeof(text), "server = { %s };\n%s", cases[i].server, rc);
		struct conf *c = conf_load(write_conf(text), err, sizeof(err));
		if (!c)
			fail_msg("%s: %s", cases[i].server, err);
		if (!cases[i].dir) {
			assert_null(c->pickup_dir);
		} else {
			CHECK_STR(cases[i].server, c->pickup_dir, cases[i].dir);
			CHECK_INT(cases[i].server, c->pickup_max_parallel, cases[i].parallel);
			CHECK_INT(cases[i].server, c->pickup_max_message_size, cases[i].size);
			CHECK_INT(cases[i].server, c->pickup_max_recipients, cases[i].rcpts);
		}
		conf_free(c);
	}
}

/* server.io_backend: each word maps to its backend (enum io_backend order). */
static void test_io_backend_values(void **state)
{
	static const struct {
		const char *word;
		unsigned want;
	} cases[] = {{"auto", 0}, {"io_uring", 1}, {"epoll", 2}};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char text[512], err[1024];
		snprintf(text, sizeof(text),
			 "server = { io_backend = \"%s\"; };\n"
			 "receive_connectors = ( { name = \"a\"; bindings = [\"127.0.0.1:25\"]; } );\n",
			 cases[i].word);
		struct conf *c = conf_load(write_conf(text), err, sizeof(err));
		if (!c)
			fail_msg("%s: load failed: %s", cases[i].word, err);
		CHECK_INT(cases[i].word, c->io_backend, cases[i].want);
		conf_free(c);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_io_backend_values),
		cmocka_unit_test(test_pickup_keys),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_durations),
		cmocka_unit_test(test_ranges),
		cmocka_unit_test(test_bindings),
		cmocka_unit_test(test_load_and_match),
		cmocka_unit_test(test_relay_policy),
		cmocka_unit_test(test_domain_policy),
		cmocka_unit_test(test_send_routing),
		cmocka_unit_test(test_errors),
	};
	int r = cmocka_run_group_tests(tests, NULL, NULL);
	char path[64];
	snprintf(path, sizeof(path), "/tmp/postern-test-%d.conf", (int)getpid());
	unlink(path);
	return r;
}
