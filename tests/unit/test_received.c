/* Unit tests for the Received: trace header and the RFC 5322 date
 * (proto/received.c): exact output, IPv6 literals, sanitising of client and
 * configuration strings, the optional "for" clause and short buffers. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "received.h"

#define T_FIXED 1795442520 /* Mon, 23 Nov 2026 14:02:00 +0000 */

/* ---- smtp_date_format ------------------------------------------------- */

static void test_date_format(void **state)
{
	static const struct {
		const char *name;
		int64_t t;
		const char *want;
	} cases[] = {
		{"fixed", T_FIXED, "Mon, 23 Nov 2026 14:02:00 +0000"},
		{"epoch", 0, "Thu, 1 Jan 1970 00:00:00 +0000"},
		{"leap day", 951782400, "Tue, 29 Feb 2000 00:00:00 +0000"},
		{"before epoch", -1, "Wed, 31 Dec 1969 23:59:59 +0000"},
		{"end of year", 1798761599, "Thu, 31 Dec 2026 23:59:59 +0000"},
		{"2038", 2147483648LL, "Tue, 19 Jan 2038 03:14:08 +0000"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char buf[64];
		memset(buf, 'Z', sizeof(buf));
		size_t n = smtp_date_format(buf, sizeof(buf), cases[i].t);
		CHECK_INT(cases[i].name, n, strlen(cases[i].want));
		CHECK_STR(cases[i].name, buf, cases[i].want);
	}
}

static void test_date_format_small_buffer(void **state)
{
	static const char want[] = "Mon, 23 Nov 2026 14:02:00 +0000";
	static const struct {
		const char *name;
		size_t cap;
		size_t want_len;
	} cases[] = {
		{"exact fit with NUL", sizeof(want), sizeof(want) - 1},
		{"no room for NUL", sizeof(want) - 1, 0},
		{"tiny", 4, 0},
		{"one", 1, 0},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char buf[64];
		memset(buf, 'Z', sizeof(buf));
		CHECK_INT(cases[i].name, smtp_date_format(buf, cases[i].cap, T_FIXED),
			  cases[i].want_len);
		/* Never writes past cap. */
		CHECK_INT(cases[i].name, buf[cases[i].cap], 'Z');
	}
}

/* ---- smtp_received_format --------------------------------------------- */

static const struct smtp_received base = {
	.helo = "client.example",
	.client_ip = "192.0.2.10",
	.hostname = "relay.corp.example",
	.connector = "Anonymous Relay",
	.protocol = "ESMTP",
	.id = "0123456789ABCDEF",
	.for_rcpt = NULL,
	.time = T_FIXED,
};

#define LINE1(helo, ip) "Received: from " helo " ([" ip "])\r\n"
#define LINE2(host, proto, id) "\tby " host " (Postern) with " proto " id " id "\r\n"
#define DATE "Mon, 23 Nov 2026 14:02:00 +0000"

enum field { F_NONE, F_HELO, F_IP, F_HOST, F_CONN, F_PROTO, F_ID, F_RCPT };

static void test_received_format(void **state)
{
	static const struct {
		const char *name;
		enum field field;   /* which field of base to replace */
		const char *value;
		const char *want;
	} cases[] = {
		{"base", F_NONE, NULL,
		 LINE1("client.example", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\"); " DATE "\r\n"},
		{"ipv6 gets IPv6: prefix", F_IP, "2001:db8::25",
		 LINE1("client.example", "IPv6:2001:db8::25")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\"); " DATE "\r\n"},
		{"ipv4-mapped ipv6", F_IP, "::ffff:192.0.2.1",
		 LINE1("client.example", "IPv6:::ffff:192.0.2.1")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\"); " DATE "\r\n"},
		{"for clause when given", F_RCPT, "user@corp.example",
		 LINE1("client.example", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\")\r\n\tfor <user@corp.example>; " DATE "\r\n"},
		{"SMTP protocol", F_PROTO, "SMTP",
		 LINE1("client.example", "192.0.2.10")
		 LINE2("relay.corp.example", "SMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\"); " DATE "\r\n"},
		{"no protocol means ESMTP", F_PROTO, NULL,
		 LINE1("client.example", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\"); " DATE "\r\n"},
		{"no helo", F_HELO, NULL,
		 LINE1("unknown", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\"); " DATE "\r\n"},
		{"empty helo", F_HELO, "",
		 LINE1("unknown", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\"); " DATE "\r\n"},
		{"helo literal", F_HELO, "[192.0.2.10]",
		 LINE1("[192.0.2.10]", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\"); " DATE "\r\n"},
		{"helo comment breakers", F_HELO, "evil(x)\"y\\z;w",
		 LINE1("evil_x__y_z_w", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\"); " DATE "\r\n"},
		{"helo control chars", F_HELO, "a\r\nX-Injected: 1\tb\x7f" "c\x01",
		 LINE1("a__X-Injected: 1_b_c_", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\"); " DATE "\r\n"},
		{"helo 8bit", F_HELO, "b\xc3\xbc" "cher",
		 LINE1("b__cher", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\"); " DATE "\r\n"},
		{"connector comment breakers", F_CONN, "Conn (x) \"y\"\\z;",
		 LINE1("client.example", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Conn _x_ _y__z_\"); " DATE "\r\n"},
		{"connector control chars", F_CONN, "A\r\nB\x1b[0m",
		 LINE1("client.example", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"A__B_[0m\"); " DATE "\r\n"},
		{"rcpt sanitised", F_RCPT, "a\r\nb@c(d)",
		 LINE1("client.example", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "0123456789ABCDEF")
		 "\t(connector \"Anonymous Relay\")\r\n\tfor <a__b@c_d_>; " DATE "\r\n"},
		{"id sanitised", F_ID, "ID;1(2)",
		 LINE1("client.example", "192.0.2.10")
		 LINE2("relay.corp.example", "ESMTP", "ID_1_2_")
		 "\t(connector \"Anonymous Relay\"); " DATE "\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct smtp_received r = base;
		switch (cases[i].field) {
		case F_NONE: break;
		case F_HELO: r.helo = cases[i].value; break;
		case F_IP: r.client_ip = cases[i].value; break;
		case F_HOST: r.hostname = cases[i].value; break;
		case F_CONN: r.connector = cases[i].value; break;
		case F_PROTO: r.protocol = cases[i].value; break;
		case F_ID: r.id = cases[i].value; break;
		case F_RCPT: r.for_rcpt = cases[i].value; break;
		}
		char buf[1024];
		size_t n = smtp_received_format(buf, sizeof(buf), &r);
		CHECK_INT(cases[i].name, n, strlen(cases[i].want));
		CHECK_STR(cases[i].name, buf, cases[i].want);
	}
}

static size_t check_lines(const char *buf, size_t n)
{
	/* Each physical line stays under the 998-octet limit. */
	size_t line = 0, longest = 0;
	for (size_t k = 0; k < n; k++) {
		if (buf[k] == '\n')
			line = 0;
		else if (++line > longest)
			longest = line;
	}
	return longest;
}

static void test_received_long_fields(void **state)
{
	/* Longest client-controlled input: HELO of 255, recipient of 254
	 * (a 256-octet path), the longest textual IPv6 address, a full id. */
	char helo[600], rcpt[600], id[41];
	memset(helo, 'h', sizeof(helo) - 1);
	helo[255] = '\0';
	memset(rcpt, 'r', sizeof(rcpt) - 1);
	rcpt[254] = '\0';
	memset(id, 'I', 40);
	id[40] = '\0';
	struct smtp_received r = base;
	r.helo = helo;
	r.for_rcpt = rcpt;
	r.id = id;
	r.client_ip = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
	char buf[1024];
	size_t n = smtp_received_format(buf, sizeof(buf), &r);
	assert_int_not_equal(n, 0);
	assert_int_equal(n, strlen(buf));
	assert_true(check_lines(buf, n) <= 998);

	/* Longer strings are cut at 255 octets. */
	helo[255] = 'h';
	helo[sizeof(helo) - 1] = '\0';
	n = smtp_received_format(buf, sizeof(buf), &r);
	assert_int_not_equal(n, 0);
	char want_start[300] = "Received: from ";
	memset(want_start + 15, 'h', 255);
	want_start[270] = '\0';
	strcat(want_start, " ([IPv6:ffff:");
	assert_memory_equal(buf, want_start, strlen(want_start));

	/* Every field at its cut-off: still one valid, bounded header. */
	char big[2048];
	r.hostname = helo;
	r.connector = helo;
	rcpt[sizeof(rcpt) - 1] = '\0';
	memset(rcpt, 'r', sizeof(rcpt) - 1);
	n = smtp_received_format(big, sizeof(big), &r);
	assert_int_not_equal(n, 0);
	assert_true(check_lines(big, n) <= 998);
}

static void test_received_small_buffer(void **state)
{
	struct smtp_received r = base;
	r.for_rcpt = "user@corp.example";
	char full[1024];
	size_t need = smtp_received_format(full, sizeof(full), &r);
	assert_int_not_equal(need, 0);
	const struct {
		const char *name;
		size_t cap;
		bool fits;
	} cases[] = {
		{"exact fit with NUL", need + 1, true},
		{"no room for NUL", need, false},
		{"half", need / 2, false},
		{"one", 1, false},
		{"zero", 0, false},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char buf[1024];
		memset(buf, 'Z', sizeof(buf));
		size_t n = smtp_received_format(buf, cases[i].cap, &r);
		CHECK_INT(cases[i].name, n, cases[i].fits ? need : 0);
		if (cases[i].fits)
			CHECK_STR(cases[i].name, buf, full);
		CHECK_INT(cases[i].name, buf[cases[i].cap], 'Z');
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_date_format),
		cmocka_unit_test(test_date_format_small_buffer),
		cmocka_unit_test(test_received_format),
		cmocka_unit_test(test_received_long_fields),
		cmocka_unit_test(test_received_small_buffer),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
