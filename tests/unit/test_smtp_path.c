/* Unit tests for the RFC 5321 path and ESMTP parameter parser
 * (proto/smtp_path.c): paths, address literals, length limits, MAIL and RCPT
 * parameters, HELO arguments and xtext. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_path.h"

/* A span compared with a C string; want NULL means "no span" (p == NULL). */
static void check_span(const char *name, const char *what,
		       struct smtp_span got, const char *want)
{
	if (!want) {
		if (got.p)
			fail_msg("%s: %s = \"%.*s\", want none", name, what,
				 (int)got.len, got.p);
		return;
	}
	if (!got.p || got.len != strlen(want) || memcmp(got.p, want, got.len) != 0)
		fail_msg("%s: %s = \"%.*s\", want \"%s\"", name, what,
			 got.p ? (int)got.len : 0, got.p ? got.p : "", want);
}

/* ---- smtp_path_parse -------------------------------------------------- */

#define NUL SMTP_PATH_ALLOW_NULL
#define PM SMTP_PATH_ALLOW_POSTMASTER
#define U8 SMTP_PATH_ALLOW_UTF8

struct path_case {
	const char *name;
	const char *in;
	unsigned flags;
	enum smtp_arg_err err;
	/* for SMTP_ARG_OK: */
	const char *mailbox, *local, *domain;
	enum smtp_domain_kind kind;
	bool is_null, quoted;
	size_t consumed;       /* 0: strlen(in) */
};

static const struct path_case path_cases[] = {
	/* plain mailboxes */
	{.name = "simple", .in = "<user@example.com>", .mailbox = "user@example.com",
	 .local = "user", .domain = "example.com", .kind = SMTP_DOMAIN_NAME},
	{.name = "dotted local", .in = "<first.last@sub.example.com>",
	 .mailbox = "first.last@sub.example.com", .local = "first.last",
	 .domain = "sub.example.com", .kind = SMTP_DOMAIN_NAME},
	{.name = "atext specials", .in = "<a!#$%&'*+-/=?^_`{|}~b@x.example>",
	 .mailbox = "a!#$%&'*+-/=?^_`{|}~b@x.example",
	 .local = "a!#$%&'*+-/=?^_`{|}~b", .domain = "x.example",
	 .kind = SMTP_DOMAIN_NAME},
	{.name = "hyphen inside label", .in = "<u@mail-1.ex-ample.org>",
	 .mailbox = "u@mail-1.ex-ample.org", .local = "u",
	 .domain = "mail-1.ex-ample.org", .kind = SMTP_DOMAIN_NAME},
	{.name = "single label domain", .in = "<u@localhost>", .mailbox = "u@localhost",
	 .local = "u", .domain = "localhost", .kind = SMTP_DOMAIN_NAME},
	{.name = "consumed stops at >", .in = "<u@x.org> SIZE=10", .mailbox = "u@x.org",
	 .local = "u", .domain = "x.org", .kind = SMTP_DOMAIN_NAME, .consumed = 9},
	/* null path */
	{.name = "null allowed", .in = "<>", .flags = NUL, .is_null = true,
	 .mailbox = "", .kind = SMTP_DOMAIN_NONE},
	{.name = "null with rest", .in = "<> BODY=7BIT", .flags = NUL,
	 .is_null = true, .mailbox = "", .consumed = 2},
	{.name = "null refused", .in = "<>", .err = SMTP_ARG_BAD_PATH},
	{.name = "null refused for rcpt", .in = "<>", .flags = PM,
	 .err = SMTP_ARG_BAD_PATH},
	/* quoted local parts */
	{.name = "quoted local", .in = "<\"john doe\"@example.com>",
	 .mailbox = "\"john doe\"@example.com", .local = "\"john doe\"",
	 .domain = "example.com", .kind = SMTP_DOMAIN_NAME, .quoted = true},
	{.name = "quoted escapes", .in = "<\"a\\\"b\\\\c\"@x.org>",
	 .mailbox = "\"a\\\"b\\\\c\"@x.org", .local = "\"a\\\"b\\\\c\"",
	 .domain = "x.org", .kind = SMTP_DOMAIN_NAME, .quoted = true},
	{.name = "quoted with @ and >", .in = "<\"a@b>c\"@x.org>",
	 .mailbox = "\"a@b>c\"@x.org", .local = "\"a@b>c\"", .domain = "x.org",
	 .kind = SMTP_DOMAIN_NAME, .quoted = true},
	{.name = "quoted empty", .in = "<\"\"@x.org>", .mailbox = "\"\"@x.org",
	 .local = "\"\"", .domain = "x.org", .kind = SMTP_DOMAIN_NAME, .quoted = true},
	{.name = "quoted unterminated", .in = "<\"abc@x.org>", .err = SMTP_ARG_BAD_PATH},
	{.name = "quoted control char", .in = "<\"a\x01\"@x.org>", .err = SMTP_ARG_BAD_PATH},
	{.name = "quoted escaped control", .in = "<\"a\\\x01\"@x.org>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "quoted then junk", .in = "<\"a\"b@x.org>", .err = SMTP_ARG_BAD_PATH},
	{.name = "quoted 8bit without utf8", .in = "<\"\xc3\xa9\"@x.org>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "quoted 8bit with utf8", .in = "<\"\xc3\xa9\"@x.org>", .flags = U8,
	 .mailbox = "\"\xc3\xa9\"@x.org", .local = "\"\xc3\xa9\"", .domain = "x.org",
	 .kind = SMTP_DOMAIN_NAME, .quoted = true},
	/* source routes: accepted and stripped from the mailbox */
	{.name = "source route two hops", .in = "<@a.example,@b.example:user@c.example>",
	 .mailbox = "user@c.example", .local = "user", .domain = "c.example",
	 .kind = SMTP_DOMAIN_NAME},
	{.name = "source route one hop", .in = "<@a.example:u@c.example>",
	 .mailbox = "u@c.example", .local = "u", .domain = "c.example",
	 .kind = SMTP_DOMAIN_NAME},
	{.name = "source route literal hop", .in = "<@[10.0.0.1]:u@c.example>",
	 .mailbox = "u@c.example", .local = "u", .domain = "c.example",
	 .kind = SMTP_DOMAIN_NAME},
	{.name = "source route missing colon", .in = "<@a.example,user@c.example>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "source route only", .in = "<@a.example>", .err = SMTP_ARG_BAD_PATH},
	{.name = "source route empty hop", .in = "<@:u@c.example>", .err = SMTP_ARG_BAD_PATH},
	{.name = "source route trailing comma", .in = "<@a.example,:u@c.example>",
	 .err = SMTP_ARG_BAD_PATH},
	/* <Postmaster> */
	{.name = "postmaster for rcpt", .in = "<Postmaster>", .flags = PM,
	 .mailbox = "Postmaster", .local = "Postmaster", .domain = NULL,
	 .kind = SMTP_DOMAIN_NONE},
	{.name = "postmaster any case", .in = "<pOSTMASTER>", .flags = PM,
	 .mailbox = "pOSTMASTER", .local = "pOSTMASTER", .kind = SMTP_DOMAIN_NONE},
	{.name = "postmaster for mail", .in = "<Postmaster>", .flags = NUL,
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "postmaster no flags", .in = "<Postmaster>", .err = SMTP_ARG_BAD_PATH},
	{.name = "other bare local", .in = "<abuse>", .flags = PM, .err = SMTP_ARG_BAD_PATH},
	{.name = "postmasterx", .in = "<postmasterx>", .flags = PM, .err = SMTP_ARG_BAD_PATH},
	{.name = "quoted postmaster", .in = "<\"Postmaster\">", .flags = PM,
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "postmaster at domain", .in = "<Postmaster@x.org>",
	 .mailbox = "Postmaster@x.org", .local = "Postmaster", .domain = "x.org",
	 .kind = SMTP_DOMAIN_NAME},
	/* address literals */
	{.name = "ipv4 literal", .in = "<u@[192.0.2.1]>", .mailbox = "u@[192.0.2.1]",
	 .local = "u", .domain = "[192.0.2.1]", .kind = SMTP_DOMAIN_IPV4},
	{.name = "ipv4 0 and 255", .in = "<u@[0.0.0.255]>", .mailbox = "u@[0.0.0.255]",
	 .local = "u", .domain = "[0.0.0.255]", .kind = SMTP_DOMAIN_IPV4},
	{.name = "ipv4 256", .in = "<u@[1.2.3.256]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv4 999", .in = "<u@[999.2.3.4]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv4 leading zero", .in = "<u@[1.2.03.4]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv4 00", .in = "<u@[00.2.3.4]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv4 four digits", .in = "<u@[1.2.3.1000]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv4 three parts", .in = "<u@[1.2.3]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv4 five parts", .in = "<u@[1.2.3.4.5]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv4 empty part", .in = "<u@[1..3.4]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv4 trailing dot", .in = "<u@[1.2.3.4.]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv4 sign", .in = "<u@[+1.2.3.4]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "literal unterminated", .in = "<u@[1.2.3.4>", .err = SMTP_ARG_BAD_PATH},
	{.name = "literal empty", .in = "<u@[]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv6 full", .in = "<u@[IPv6:2001:db8:0:0:0:0:0:1]>",
	 .mailbox = "u@[IPv6:2001:db8:0:0:0:0:0:1]", .local = "u",
	 .domain = "[IPv6:2001:db8:0:0:0:0:0:1]", .kind = SMTP_DOMAIN_IPV6},
	{.name = "ipv6 compressed", .in = "<u@[IPv6:2001:DB8::1]>",
	 .mailbox = "u@[IPv6:2001:DB8::1]", .local = "u",
	 .domain = "[IPv6:2001:DB8::1]", .kind = SMTP_DOMAIN_IPV6},
	{.name = "ipv6 loopback", .in = "<u@[IPv6:::1]>", .mailbox = "u@[IPv6:::1]",
	 .local = "u", .domain = "[IPv6:::1]", .kind = SMTP_DOMAIN_IPV6},
	{.name = "ipv6 unspecified", .in = "<u@[IPv6:::]>", .mailbox = "u@[IPv6:::]",
	 .local = "u", .domain = "[IPv6:::]", .kind = SMTP_DOMAIN_IPV6},
	{.name = "ipv6 trailing ::", .in = "<u@[IPv6:fe80::]>", .mailbox = "u@[IPv6:fe80::]",
	 .local = "u", .domain = "[IPv6:fe80::]", .kind = SMTP_DOMAIN_IPV6},
	{.name = "ipv6 tag any case", .in = "<u@[ipv6:::1]>", .mailbox = "u@[ipv6:::1]",
	 .local = "u", .domain = "[ipv6:::1]", .kind = SMTP_DOMAIN_IPV6},
	{.name = "ipv6 v4 mapped", .in = "<u@[IPv6:::ffff:192.0.2.1]>",
	 .mailbox = "u@[IPv6:::ffff:192.0.2.1]", .local = "u",
	 .domain = "[IPv6:::ffff:192.0.2.1]", .kind = SMTP_DOMAIN_IPV6},
	{.name = "ipv6 full v4 form", .in = "<u@[IPv6:1:2:3:4:5:6:1.2.3.4]>",
	 .mailbox = "u@[IPv6:1:2:3:4:5:6:1.2.3.4]", .local = "u",
	 .domain = "[IPv6:1:2:3:4:5:6:1.2.3.4]", .kind = SMTP_DOMAIN_IPV6},
	{.name = "ipv6 nine groups", .in = "<u@[IPv6:1:2:3:4:5:6:7:8:9]>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv6 seven groups uncompressed", .in = "<u@[IPv6:1:2:3:4:5:6:7]>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv6 eight groups plus ::", .in = "<u@[IPv6:1:2:3:4::5:6:7:8]>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv6 two ::", .in = "<u@[IPv6:1::2::3]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv6 :::", .in = "<u@[IPv6:1:::2]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv6 group of five", .in = "<u@[IPv6:12345::1]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv6 not hex", .in = "<u@[IPv6:g::1]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv6 leading colon", .in = "<u@[IPv6::1:2:3:4:5:6:7]>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv6 trailing colon", .in = "<u@[IPv6:1:2:3:4:5:6:7:8:]>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv6 bad v4", .in = "<u@[IPv6:::ffff:1.2.3.256]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv6 v4 too many groups", .in = "<u@[IPv6:1:2:3:4:5:6:7:1.2.3.4]>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "ipv6 empty", .in = "<u@[IPv6:]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "general literal", .in = "<u@[x-tag:abc]>", .mailbox = "u@[x-tag:abc]",
	 .local = "u", .domain = "[x-tag:abc]", .kind = SMTP_DOMAIN_GENERAL_LITERAL},
	{.name = "general literal no content", .in = "<u@[x-tag:]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "general literal tag ends with -", .in = "<u@[x-:abc]>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "general literal space", .in = "<u@[x:a b]>", .err = SMTP_ARG_BAD_PATH},
	{.name = "bare ipv4 no brackets is a name", .in = "<u@192.0.2.1>",
	 .mailbox = "u@192.0.2.1", .local = "u", .domain = "192.0.2.1",
	 .kind = SMTP_DOMAIN_NAME},
	/* malformed domains */
	{.name = "trailing dot domain", .in = "<u@example.com.>", .err = SMTP_ARG_BAD_PATH},
	{.name = "leading dot domain", .in = "<u@.example.com>", .err = SMTP_ARG_BAD_PATH},
	{.name = "double dot domain", .in = "<u@a..b>", .err = SMTP_ARG_BAD_PATH},
	{.name = "label starts with -", .in = "<u@-a.com>", .err = SMTP_ARG_BAD_PATH},
	{.name = "label ends with -", .in = "<u@a-.com>", .err = SMTP_ARG_BAD_PATH},
	{.name = "underscore in domain", .in = "<u@a_b.com>", .err = SMTP_ARG_BAD_PATH},
	{.name = "no domain", .in = "<u@>", .err = SMTP_ARG_BAD_PATH},
	{.name = "no at", .in = "<u>", .err = SMTP_ARG_BAD_PATH},
	{.name = "two ats", .in = "<u@v@x.org>", .err = SMTP_ARG_BAD_PATH},
	/* malformed local parts and framing */
	{.name = "local trailing dot", .in = "<u.@x.org>", .err = SMTP_ARG_BAD_PATH},
	{.name = "local leading dot", .in = "<.u@x.org>", .err = SMTP_ARG_BAD_PATH},
	{.name = "local double dot", .in = "<u..v@x.org>", .err = SMTP_ARG_BAD_PATH},
	{.name = "empty local", .in = "<@x.org>", .err = SMTP_ARG_BAD_PATH},
	{.name = "space in local", .in = "<u v@x.org>", .err = SMTP_ARG_BAD_PATH},
	{.name = "space before at", .in = "<u @x.org>", .err = SMTP_ARG_BAD_PATH},
	{.name = "no angle brackets", .in = "u@x.org", .err = SMTP_ARG_BAD_PATH},
	{.name = "no closing bracket", .in = "<u@x.org", .err = SMTP_ARG_BAD_PATH},
	{.name = "junk before >", .in = "<u@x.org x>", .err = SMTP_ARG_BAD_PATH},
	{.name = "empty input", .in = "", .err = SMTP_ARG_BAD_PATH},
	{.name = "lone <", .in = "<", .flags = NUL, .err = SMTP_ARG_BAD_PATH},
	{.name = "lone >", .in = ">", .flags = NUL, .err = SMTP_ARG_BAD_PATH},
	/* UTF-8 only with SMTPUTF8 */
	{.name = "utf8 local without flag", .in = "<j\xc3\xb6rg@x.org>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "utf8 local with flag", .in = "<j\xc3\xb6rg@x.org>", .flags = U8,
	 .mailbox = "j\xc3\xb6rg@x.org", .local = "j\xc3\xb6rg", .domain = "x.org",
	 .kind = SMTP_DOMAIN_NAME},
	{.name = "utf8 domain without flag", .in = "<u@b\xc3\xbc" "cher.example>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "utf8 domain with flag", .in = "<u@b\xc3\xbc" "cher.example>", .flags = U8,
	 .mailbox = "u@b\xc3\xbc" "cher.example", .local = "u",
	 .domain = "b\xc3\xbc" "cher.example", .kind = SMTP_DOMAIN_NAME},
};

static void check_path_case(const struct path_case *c)
{
	struct smtp_path p;
	size_t used = 12345;
	size_t n = strlen(c->in);
	enum smtp_arg_err e = smtp_path_parse(c->in, n, c->flags, &p, &used);
	CHECK_INT(c->name, e, c->err);
	assert_true(used <= n);
	if (c->err != SMTP_ARG_OK)
		return;
	CHECK_INT(c->name, used, c->consumed ? c->consumed : n);
	CHECK_INT(c->name, p.is_null, c->is_null);
	CHECK_INT(c->name, p.quoted_local, c->quoted);
	CHECK_INT(c->name, p.domain_kind, c->kind);
	check_span(c->name, "mailbox", p.mailbox, c->mailbox);
	if (!c->is_null) {
		check_span(c->name, "local", p.local, c->local);
		if (c->domain)
			check_span(c->name, "domain", p.domain, c->domain);
		else
			CHECK_INT(c->name, p.domain.len, 0);
	}
}

static void test_path_table(void **state)
{
	for (size_t i = 0; i < N_ELEMS(path_cases); i++)
		check_path_case(&path_cases[i]);
}

static void test_path_error_positions(void **state)
{
	static const struct {
		const char *name;
		const char *in;
		size_t want_pos;
	} cases[] = {
		{"missing <", "u@x.org", 0},
		{"bad local", "<.u@x.org>", 1},
		{"missing at", "<u>", 2},
		{"trailing dot", "<u@x.org.>", 8},
		{"bad domain", "<u@-x>", 3},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct smtp_path p;
		size_t used;
		enum smtp_arg_err e = smtp_path_parse(cases[i].in, strlen(cases[i].in),
						      0, &p, &used);
		CHECK_INT(cases[i].name, e, SMTP_ARG_BAD_PATH);
		CHECK_INT(cases[i].name, used, cases[i].want_pos);
	}
}

/* A domain name of exactly n octets, labels of at most 63. */
static void make_domain(char *dst, size_t n)
{
	size_t rem = n, o = 0;
	while (rem > 63) {
		size_t take = rem - 2 < 63 ? rem - 2 : 63;
		memset(dst + o, 'a', take);
		o += take;
		dst[o++] = '.';
		rem -= take + 1;
	}
	memset(dst + o, 'b', rem);
	o += rem;
	dst[o] = '\0';
	assert_int_equal(o, n);
}

static void test_path_lengths(void **state)
{
	/* RFC 5321 4.5.3.1: local part 64, domain 255, path 256 octets
	 * including the angle brackets. */
	static const struct {
		const char *name;
		size_t local, domain;
		enum smtp_arg_err want;
	} cases[] = {
		{"local 64", 64, 10, SMTP_ARG_OK},
		{"local 65", 65, 10, SMTP_ARG_PATH_TOO_LONG},
		{"path 256 (mailbox 254)", 64, 189, SMTP_ARG_OK},
		{"path 257 (mailbox 255)", 64, 190, SMTP_ARG_PATH_TOO_LONG},
		{"path 256, short local", 1, 252, SMTP_ARG_OK},
		{"path 257, short local", 1, 253, SMTP_ARG_PATH_TOO_LONG},
		{"domain 255", 1, 255, SMTP_ARG_PATH_TOO_LONG},
		{"domain 256", 1, 256, SMTP_ARG_PATH_TOO_LONG},
		{"domain 1000", 1, 1000, SMTP_ARG_PATH_TOO_LONG},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char buf[2048];
		buf[0] = '<';
		memset(buf + 1, 'l', cases[i].local);
		buf[1 + cases[i].local] = '@';
		make_domain(buf + 2 + cases[i].local, cases[i].domain);
		strcat(buf, ">");
		struct smtp_path p;
		size_t used;
		size_t n = strlen(buf);
		enum smtp_arg_err e = smtp_path_parse(buf, n, 0, &p, &used);
		CHECK_INT(cases[i].name, e, cases[i].want);
		CHECK_INT(cases[i].name, used, n);
		if (e == SMTP_ARG_OK) {
			CHECK_INT(cases[i].name, p.mailbox.len, n - 2);
			CHECK_INT(cases[i].name, p.local.len, cases[i].local);
			CHECK_INT(cases[i].name, p.domain.len, cases[i].domain);
		}
	}
}

static void test_path_label_length(void **state)
{
	static const struct {
		const char *name;
		size_t label;
		enum smtp_arg_err want;
	} cases[] = {
		{"label 1", 1, SMTP_ARG_OK},
		{"label 63", 63, SMTP_ARG_OK},
		{"label 64", 64, SMTP_ARG_BAD_PATH},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char buf[128] = "<u@";
		memset(buf + 3, 'a', cases[i].label);
		strcpy(buf + 3 + cases[i].label, ".example>");
		struct smtp_path p;
		size_t used;
		CHECK_INT(cases[i].name,
			  smtp_path_parse(buf, strlen(buf), 0, &p, &used), cases[i].want);
	}
}

static void test_path_does_not_read_past_len(void **state)
{
	/* The path ends at len even if the memory after it would complete it. */
	static const char s[] = "<u@x.org>";
	struct smtp_path p;
	size_t used;
	for (size_t n = 0; n < sizeof(s) - 1; n++) {
		char name[32];
		snprintf(name, sizeof(name), "prefix %zu", n);
		char *copy = malloc(n ? n : 1);
		assert_non_null(copy);
		memcpy(copy, s, n);
		CHECK_INT(name, smtp_path_parse(copy, n, NUL | PM, &p, &used),
			  SMTP_ARG_BAD_PATH);
		free(copy);
	}
	/* "[" literal whose "]" lies past len */
	static const char lit[] = "<u@[1.2.3.4]>";
	char *copy = malloc(11);
	assert_non_null(copy);
	memcpy(copy, lit, 11);
	assert_int_equal(smtp_path_parse(copy, 11, 0, &p, &used), SMTP_ARG_BAD_PATH);
	free(copy);
}

/* ---- MAIL FROM -------------------------------------------------------- */

struct mail_case {
	const char *name;
	const char *in;
	enum smtp_arg_err err;
	/* for SMTP_ARG_OK: */
	const char *mailbox;
	bool is_null;
	bool has_size;
	uint64_t size;
	enum smtp_body body;
	enum smtp_ret ret;
	const char *envid;
	bool smtputf8;
	/* for errors: */
	bool check_pos;
	size_t pos;
};

static const struct mail_case mail_cases[] = {
	{.name = "plain", .in = "FROM:<a@b.example>", .mailbox = "a@b.example"},
	{.name = "lower case from", .in = "from:<a@b.example>", .mailbox = "a@b.example"},
	{.name = "space after colon", .in = "FROM: <a@b.example>", .mailbox = "a@b.example"},
	{.name = "null sender", .in = "FROM:<>", .mailbox = "", .is_null = true},
	{.name = "null sender with size", .in = "FROM:<> SIZE=1000", .mailbox = "",
	 .is_null = true, .has_size = true, .size = 1000},
	{.name = "source route", .in = "FROM:<@r.example:a@b.example>",
	 .mailbox = "a@b.example"},
	{.name = "trailing space", .in = "FROM:<a@b.example> ", .mailbox = "a@b.example"},
	{.name = "two spaces between", .in = "FROM:<a@b.example>  SIZE=5",
	 .mailbox = "a@b.example", .has_size = true, .size = 5},
	/* missing FROM: */
	{.name = "TO instead of FROM", .in = "TO:<a@b.example>", .err = SMTP_ARG_SYNTAX,
	 .check_pos = true, .pos = 0},
	{.name = "no prefix", .in = "<a@b.example>", .err = SMTP_ARG_SYNTAX},
	{.name = "space before colon", .in = "FROM :<a@b.example>", .err = SMTP_ARG_SYNTAX},
	{.name = "FROM without colon", .in = "FROM <a@b.example>", .err = SMTP_ARG_SYNTAX},
	{.name = "empty", .in = "", .err = SMTP_ARG_SYNTAX},
	{.name = "FROM only", .in = "FROM:", .err = SMTP_ARG_BAD_PATH},
	{.name = "no brackets", .in = "FROM:a@b.example", .err = SMTP_ARG_BAD_PATH,
	 .check_pos = true, .pos = 5},
	{.name = "postmaster not for MAIL", .in = "FROM:<Postmaster>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "path too long", .in = "FROM:<aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@b>",
	 .err = SMTP_ARG_PATH_TOO_LONG},
	{.name = "no space before param", .in = "FROM:<a@b.example>SIZE=1",
	 .err = SMTP_ARG_SYNTAX, .check_pos = true, .pos = 18},
	{.name = "param without keyword", .in = "FROM:<a@b.example> =1",
	 .err = SMTP_ARG_SYNTAX},
	{.name = "keyword starts with -", .in = "FROM:<a@b.example> -X",
	 .err = SMTP_ARG_SYNTAX},
	{.name = "keyword bad char", .in = "FROM:<a@b.example> SI_ZE=1",
	 .err = SMTP_ARG_SYNTAX},
	/* SIZE */
	{.name = "SIZE", .in = "FROM:<a@b.example> SIZE=12345", .mailbox = "a@b.example",
	 .has_size = true, .size = 12345},
	{.name = "SIZE=0", .in = "FROM:<a@b.example> SIZE=0", .mailbox = "a@b.example",
	 .has_size = true, .size = 0},
	{.name = "size lower case", .in = "FROM:<a@b.example> size=10",
	 .mailbox = "a@b.example", .has_size = true, .size = 10},
	{.name = "SIZE 19 digits", .in = "FROM:<a@b.example> SIZE=9999999999999999999",
	 .mailbox = "a@b.example", .has_size = true, .size = 9999999999999999999ULL},
	{.name = "SIZE 20 digits", .in = "FROM:<a@b.example> SIZE=10000000000000000000",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "SIZE no value", .in = "FROM:<a@b.example> SIZE", .err = SMTP_ARG_BAD_PARAM},
	{.name = "SIZE empty value", .in = "FROM:<a@b.example> SIZE=", .err = SMTP_ARG_BAD_PARAM},
	{.name = "SIZE not a number", .in = "FROM:<a@b.example> SIZE=12a",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "SIZE negative", .in = "FROM:<a@b.example> SIZE=-1", .err = SMTP_ARG_BAD_PARAM},
	{.name = "SIZE with =", .in = "FROM:<a@b.example> SIZE=1=2", .err = SMTP_ARG_BAD_PARAM},
	{.name = "SIZE twice", .in = "FROM:<a@b.example> SIZE=1 SIZE=2",
	 .err = SMTP_ARG_BAD_PARAM, .check_pos = true, .pos = 26},
	/* BODY */
	{.name = "BODY=7BIT", .in = "FROM:<a@b.example> BODY=7BIT", .mailbox = "a@b.example",
	 .body = SMTP_BODY_7BIT},
	{.name = "BODY=8BITMIME", .in = "FROM:<a@b.example> BODY=8BITMIME",
	 .mailbox = "a@b.example", .body = SMTP_BODY_8BITMIME},
	{.name = "body=8bitmime", .in = "FROM:<a@b.example> body=8bitmime",
	 .mailbox = "a@b.example", .body = SMTP_BODY_8BITMIME},
	{.name = "BODY=BINARYMIME", .in = "FROM:<a@b.example> BODY=BINARYMIME",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "BODY no value", .in = "FROM:<a@b.example> BODY", .err = SMTP_ARG_BAD_PARAM},
	{.name = "BODY twice", .in = "FROM:<a@b.example> BODY=7BIT BODY=7BIT",
	 .err = SMTP_ARG_BAD_PARAM},
	/* RET */
	{.name = "RET=FULL", .in = "FROM:<a@b.example> RET=FULL", .mailbox = "a@b.example",
	 .ret = SMTP_RET_FULL},
	{.name = "RET=hdrs", .in = "FROM:<a@b.example> RET=hdrs", .mailbox = "a@b.example",
	 .ret = SMTP_RET_HDRS},
	{.name = "RET=NONE", .in = "FROM:<a@b.example> RET=NONE", .err = SMTP_ARG_BAD_PARAM},
	{.name = "RET twice", .in = "FROM:<a@b.example> RET=FULL RET=HDRS",
	 .err = SMTP_ARG_BAD_PARAM},
	/* ENVID (xtext) */
	{.name = "ENVID", .in = "FROM:<a@b.example> ENVID=QQ314159",
	 .mailbox = "a@b.example", .envid = "QQ314159"},
	{.name = "ENVID xtext escape", .in = "FROM:<a@b.example> ENVID=a+2Bb+3D",
	 .mailbox = "a@b.example", .envid = "a+2Bb+3D"},
	{.name = "ENVID lower hex", .in = "FROM:<a@b.example> ENVID=a+2b",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "ENVID short escape", .in = "FROM:<a@b.example> ENVID=a+4",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "ENVID lone plus", .in = "FROM:<a@b.example> ENVID=a+",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "ENVID no value", .in = "FROM:<a@b.example> ENVID", .err = SMTP_ARG_BAD_PARAM},
	{.name = "ENVID twice", .in = "FROM:<a@b.example> ENVID=a ENVID=b",
	 .err = SMTP_ARG_BAD_PARAM},
	/* SMTPUTF8 */
	{.name = "SMTPUTF8", .in = "FROM:<a@b.example> SMTPUTF8", .mailbox = "a@b.example",
	 .smtputf8 = true},
	{.name = "smtputf8 lower", .in = "FROM:<a@b.example> smtputf8",
	 .mailbox = "a@b.example", .smtputf8 = true},
	{.name = "SMTPUTF8 with value", .in = "FROM:<a@b.example> SMTPUTF8=yes",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "SMTPUTF8 twice", .in = "FROM:<a@b.example> SMTPUTF8 SMTPUTF8",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "utf8 sender with SMTPUTF8", .in = "FROM:<j\xc3\xb6rg@b.example> SMTPUTF8",
	 .mailbox = "j\xc3\xb6rg@b.example", .smtputf8 = true},
	{.name = "utf8 sender, SMTPUTF8 first of several",
	 .in = "FROM:<j\xc3\xb6rg@b.example> SMTPUTF8 BODY=8BITMIME",
	 .mailbox = "j\xc3\xb6rg@b.example", .smtputf8 = true, .body = SMTP_BODY_8BITMIME},
	{.name = "utf8 sender without SMTPUTF8", .in = "FROM:<j\xc3\xb6rg@b.example>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "utf8 sender, SMTPUTF8 only inside quoted local part",
	 .in = "FROM:<\"\xc3\xa9 SMTPUTF8 \"@b.example>", .err = SMTP_ARG_BAD_PATH},
	{.name = "quoted local naming SMTPUTF8, ascii", .in = "FROM:<\"a SMTPUTF8 \"@b.example>",
	 .mailbox = "\"a SMTPUTF8 \"@b.example"},
	/* everything together */
	{.name = "all params",
	 .in = "FROM:<a@b.example> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=QQ314159 SMTPUTF8",
	 .mailbox = "a@b.example", .has_size = true, .size = 100,
	 .body = SMTP_BODY_8BITMIME, .ret = SMTP_RET_HDRS, .envid = "QQ314159",
	 .smtputf8 = true},
	/* unknown parameters */
	{.name = "AUTH unknown", .in = "FROM:<a@b.example> AUTH=<>",
	 .err = SMTP_ARG_UNKNOWN_PARAM, .check_pos = true, .pos = 19},
	{.name = "XFOO unknown after SIZE", .in = "FROM:<a@b.example> SIZE=1 XFOO",
	 .err = SMTP_ARG_UNKNOWN_PARAM, .check_pos = true, .pos = 26},
	{.name = "X-FOO unknown", .in = "FROM:<a@b.example> X-FOO=bar",
	 .err = SMTP_ARG_UNKNOWN_PARAM},
	{.name = "NOTIFY is RCPT only", .in = "FROM:<a@b.example> NOTIFY=NEVER",
	 .err = SMTP_ARG_UNKNOWN_PARAM},
	{.name = "value with control char", .in = "FROM:<a@b.example> XFOO=a\x01",
	 .err = SMTP_ARG_BAD_PARAM},
};

static void test_mail_table(void **state)
{
	for (size_t i = 0; i < N_ELEMS(mail_cases); i++) {
		const struct mail_case *c = &mail_cases[i];
		struct smtp_mail_arg m;
		size_t pos = 12345;
		enum smtp_arg_err e = smtp_mail_arg_parse(c->in, strlen(c->in), &m, &pos);
		CHECK_INT(c->name, e, c->err);
		if (e != SMTP_ARG_OK) {
			assert_true(pos <= strlen(c->in));
			if (c->check_pos)
				CHECK_INT(c->name, pos, c->pos);
			continue;
		}
		check_span(c->name, "mailbox", m.path.mailbox, c->mailbox);
		CHECK_INT(c->name, m.path.is_null, c->is_null);
		CHECK_INT(c->name, m.has_size, c->has_size);
		CHECK_INT(c->name, m.size, c->size);
		CHECK_INT(c->name, m.body, c->body);
		CHECK_INT(c->name, m.ret, c->ret);
		check_span(c->name, "envid", m.envid, c->envid);
		CHECK_INT(c->name, m.smtputf8, c->smtputf8);
	}
}

static void test_mail_envid_length(void **state)
{
	static const struct {
		const char *name;
		size_t len;
		enum smtp_arg_err want;
	} cases[] = {
		{"ENVID 1", 1, SMTP_ARG_OK},
		{"ENVID 100", SMTP_ENVID_MAX, SMTP_ARG_OK},
		{"ENVID 101", SMTP_ENVID_MAX + 1, SMTP_ARG_BAD_PARAM},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char buf[256] = "FROM:<a@b.example> ENVID=";
		size_t o = strlen(buf);
		memset(buf + o, 'E', cases[i].len);
		buf[o + cases[i].len] = '\0';
		struct smtp_mail_arg m;
		size_t pos;
		CHECK_INT(cases[i].name, smtp_mail_arg_parse(buf, strlen(buf), &m, &pos),
			  cases[i].want);
		if (cases[i].want == SMTP_ARG_OK)
			CHECK_INT(cases[i].name, m.envid.len, cases[i].len);
	}
}

/* ---- RCPT TO ---------------------------------------------------------- */

struct rcpt_case {
	const char *name;
	const char *in;
	bool utf8;
	enum smtp_arg_err err;
	const char *mailbox;
	unsigned notify;
	const char *orcpt;
	bool check_pos;
	size_t pos;
};

#define N_NEVER SMTP_NOTIFY_NEVER
#define N_SUCC SMTP_NOTIFY_SUCCESS
#define N_FAIL SMTP_NOTIFY_FAILURE
#define N_DELAY SMTP_NOTIFY_DELAY

static const struct rcpt_case rcpt_cases[] = {
	{.name = "plain", .in = "TO:<a@b.example>", .mailbox = "a@b.example"},
	{.name = "lower case", .in = "to:<a@b.example>", .mailbox = "a@b.example"},
	{.name = "space after colon", .in = "TO: <a@b.example>", .mailbox = "a@b.example"},
	{.name = "postmaster", .in = "TO:<Postmaster>", .mailbox = "Postmaster"},
	{.name = "source route stripped", .in = "TO:<@a.example,@b.example:u@c.example>",
	 .mailbox = "u@c.example"},
	{.name = "null path", .in = "TO:<>", .err = SMTP_ARG_BAD_PATH},
	{.name = "FROM instead of TO", .in = "FROM:<a@b.example>", .err = SMTP_ARG_SYNTAX,
	 .check_pos = true, .pos = 0},
	{.name = "no prefix", .in = "<a@b.example>", .err = SMTP_ARG_SYNTAX},
	{.name = "T only", .in = "T", .err = SMTP_ARG_SYNTAX},
	{.name = "bad path", .in = "TO:<a@b..example>", .err = SMTP_ARG_BAD_PATH},
	{.name = "utf8 without SMTPUTF8", .in = "TO:<\xc3\xbc@b.example>",
	 .err = SMTP_ARG_BAD_PATH},
	{.name = "utf8 with SMTPUTF8", .in = "TO:<\xc3\xbc@b.example>", .utf8 = true,
	 .mailbox = "\xc3\xbc@b.example"},
	/* NOTIFY */
	{.name = "NOTIFY=NEVER", .in = "TO:<a@b.example> NOTIFY=NEVER",
	 .mailbox = "a@b.example", .notify = N_NEVER},
	{.name = "NOTIFY=SUCCESS", .in = "TO:<a@b.example> NOTIFY=SUCCESS",
	 .mailbox = "a@b.example", .notify = N_SUCC},
	{.name = "NOTIFY list", .in = "TO:<a@b.example> NOTIFY=SUCCESS,FAILURE",
	 .mailbox = "a@b.example", .notify = N_SUCC | N_FAIL},
	{.name = "NOTIFY all three, any case",
	 .in = "TO:<a@b.example> notify=delay,Failure,success",
	 .mailbox = "a@b.example", .notify = N_SUCC | N_FAIL | N_DELAY},
	{.name = "NEVER with SUCCESS", .in = "TO:<a@b.example> NOTIFY=NEVER,SUCCESS",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "SUCCESS with NEVER", .in = "TO:<a@b.example> NOTIFY=SUCCESS,NEVER",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "NOTIFY duplicate", .in = "TO:<a@b.example> NOTIFY=SUCCESS,SUCCESS",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "NOTIFY trailing comma", .in = "TO:<a@b.example> NOTIFY=SUCCESS,",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "NOTIFY leading comma", .in = "TO:<a@b.example> NOTIFY=,SUCCESS",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "NOTIFY empty item", .in = "TO:<a@b.example> NOTIFY=SUCCESS,,DELAY",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "NOTIFY unknown", .in = "TO:<a@b.example> NOTIFY=ALWAYS",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "NOTIFY prefix word", .in = "TO:<a@b.example> NOTIFY=SUCCESSFUL",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "NOTIFY no value", .in = "TO:<a@b.example> NOTIFY", .err = SMTP_ARG_BAD_PARAM},
	{.name = "NOTIFY twice", .in = "TO:<a@b.example> NOTIFY=NEVER NOTIFY=NEVER",
	 .err = SMTP_ARG_BAD_PARAM, .check_pos = true, .pos = 30},
	/* ORCPT */
	{.name = "ORCPT", .in = "TO:<a@b.example> ORCPT=rfc822;a@b.example",
	 .mailbox = "a@b.example", .orcpt = "rfc822;a@b.example"},
	{.name = "ORCPT xtext", .in = "TO:<a@b.example> ORCPT=rfc822;a+2Bb@c.example",
	 .mailbox = "a@b.example", .orcpt = "rfc822;a+2Bb@c.example"},
	{.name = "ORCPT and NOTIFY", .in = "TO:<a@b.example> NOTIFY=FAILURE ORCPT=rfc822;x@y",
	 .mailbox = "a@b.example", .notify = N_FAIL, .orcpt = "rfc822;x@y"},
	{.name = "ORCPT no type", .in = "TO:<a@b.example> ORCPT=;a@b", .err = SMTP_ARG_BAD_PARAM},
	{.name = "ORCPT no semicolon", .in = "TO:<a@b.example> ORCPT=rfc822",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "ORCPT bad xtext", .in = "TO:<a@b.example> ORCPT=rfc822;a+zz",
	 .err = SMTP_ARG_BAD_PARAM},
	{.name = "ORCPT no value", .in = "TO:<a@b.example> ORCPT", .err = SMTP_ARG_BAD_PARAM},
	{.name = "ORCPT twice", .in = "TO:<a@b.example> ORCPT=rfc822;a@b ORCPT=rfc822;a@b",
	 .err = SMTP_ARG_BAD_PARAM},
	/* unknown */
	{.name = "SIZE is MAIL only", .in = "TO:<a@b.example> SIZE=1",
	 .err = SMTP_ARG_UNKNOWN_PARAM, .check_pos = true, .pos = 17},
	{.name = "XFOO", .in = "TO:<a@b.example> NOTIFY=NEVER XFOO",
	 .err = SMTP_ARG_UNKNOWN_PARAM, .check_pos = true, .pos = 30},
	{.name = "no space before param", .in = "TO:<a@b.example>NOTIFY=NEVER",
	 .err = SMTP_ARG_SYNTAX},
};

static void test_rcpt_table(void **state)
{
	for (size_t i = 0; i < N_ELEMS(rcpt_cases); i++) {
		const struct rcpt_case *c = &rcpt_cases[i];
		struct smtp_rcpt_arg r;
		size_t pos = 12345;
		enum smtp_arg_err e = smtp_rcpt_arg_parse(c->in, strlen(c->in), c->utf8,
							  &r, &pos);
		CHECK_INT(c->name, e, c->err);
		if (e != SMTP_ARG_OK) {
			assert_true(pos <= strlen(c->in));
			if (c->check_pos)
				CHECK_INT(c->name, pos, c->pos);
			continue;
		}
		check_span(c->name, "mailbox", r.path.mailbox, c->mailbox);
		CHECK_INT(c->name, r.notify, c->notify);
		check_span(c->name, "orcpt", r.orcpt, c->orcpt);
	}
}

static void test_rcpt_orcpt_length(void **state)
{
	static const struct {
		const char *name;
		size_t len;   /* of the whole value */
		enum smtp_arg_err want;
	} cases[] = {
		{"ORCPT 500", SMTP_ORCPT_MAX, SMTP_ARG_OK},
		{"ORCPT 501", SMTP_ORCPT_MAX + 1, SMTP_ARG_BAD_PARAM},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char buf[1024] = "TO:<a@b.example> ORCPT=rfc822;";
		size_t o = strlen(buf);
		memset(buf + o, 'x', cases[i].len - 7);
		buf[o + cases[i].len - 7] = '\0';
		struct smtp_rcpt_arg r;
		size_t pos;
		CHECK_INT(cases[i].name,
			  smtp_rcpt_arg_parse(buf, strlen(buf), false, &r, &pos),
			  cases[i].want);
		if (cases[i].want == SMTP_ARG_OK)
			CHECK_INT(cases[i].name, r.orcpt.len, cases[i].len);
	}
}

/* ---- HELO/EHLO argument ----------------------------------------------- */

static void test_helo_arg(void **state)
{
	static const struct {
		const char *name;
		const char *in;
		bool want;
	} cases[] = {
		{"domain", "client.example.com", true},
		{"single label", "localhost", true},
		{"one char", "a", true},
		{"hyphen", "mail-1.example.org", true},
		{"trailing dot tolerated", "client.example.com.", true},
		{"ipv4 literal", "[192.0.2.1]", true},
		{"ipv6 literal", "[IPv6:2001:db8::1]", true},
		{"dotted quad as name", "192.0.2.1", true},
		{"empty", "", false},
		{"space", "exa mple.com", false},
		{"two trailing dots", "example.com..", false},
		{"lone dot", ".", false},
		{"leading dot", ".example.com", false},
		{"double dot", "a..b", false},
		{"leading hyphen", "-a.example", false},
		{"underscore", "ex_ample.com", false},
		{"bad ipv4 literal", "[192.0.2.256]", false},
		{"literal then junk", "[192.0.2.1]x", false},
		{"literal with trailing dot", "[192.0.2.1].", false},
		{"unterminated literal", "[192.0.2.1", false},
		{"empty literal", "[]", false},
		{"lone [", "[", false},
		{"utf8", "b\xc3\xbc" "cher.example", false},
		{"CR", "host\r", false},
		{"quote", "\"host\"", false},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++)
		CHECK_INT(cases[i].name,
			  smtp_helo_arg_valid(cases[i].in, strlen(cases[i].in)),
			  cases[i].want);
}

static void test_helo_arg_length(void **state)
{
	static const struct {
		const char *name;
		size_t len;
		bool want;
	} cases[] = {
		{"254", 254, true},
		{"255", 255, true},
		{"256", 256, false},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char buf[512];
		make_domain(buf, cases[i].len);
		CHECK_INT(cases[i].name, smtp_helo_arg_valid(buf, cases[i].len),
			  cases[i].want);
	}
	/* 254 octets plus the tolerated trailing dot is 255: still fine. */
	char buf[512];
	make_domain(buf, 254);
	strcat(buf, ".");
	assert_true(smtp_helo_arg_valid(buf, 255));
}

/* ---- xtext ------------------------------------------------------------ */

static void test_xtext(void **state)
{
	static const struct {
		const char *name;
		const char *in;
		bool want;
	} cases[] = {
		{"empty", "", true},
		{"plain", "abc", true},
		{"escape", "a+2B", true},
		{"two escapes", "+41+42", true},
		{"punctuation", "~!<>", true},
		{"lower hex", "a+2b", false},
		{"short escape", "a+2", false},
		{"lone plus", "+", false},
		{"non hex", "+GG", false},
		{"equals", "a=b", false},
		{"space", "a b", false},
		{"DEL", "\x7f", false},
		{"8bit", "a\x80", false},
		{"control", "a\x01", false},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++)
		CHECK_INT(cases[i].name, smtp_xtext_valid(cases[i].in, strlen(cases[i].in)),
			  cases[i].want);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_path_table),
		cmocka_unit_test(test_path_error_positions),
		cmocka_unit_test(test_path_lengths),
		cmocka_unit_test(test_path_label_length),
		cmocka_unit_test(test_path_does_not_read_past_len),
		cmocka_unit_test(test_mail_table),
		cmocka_unit_test(test_mail_envid_length),
		cmocka_unit_test(test_rcpt_table),
		cmocka_unit_test(test_rcpt_orcpt_length),
		cmocka_unit_test(test_helo_arg),
		cmocka_unit_test(test_helo_arg_length),
		cmocka_unit_test(test_xtext),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
