/* Unit tests for the delivery status notification composer (proto/dsn.c):
 * a whole failure report byte for byte, the returned original (stuffed
 * lines kept, split at any byte, size limit, repairs), delayed and success
 * reports, the Subject, the return-size protocol, boundary choice, and
 * xtext decoding. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsn.h"

#define T_NOW 1795442520     /* Mon, 23 Nov 2026 14:02:00 +0000 */
#define T_ARRIVAL 1795010400 /* Wed, 18 Nov 2026 14:00:00 +0000 */
/* FNV-1a of the Message-ID below, as hex */
#define BND "=_postern_9250abe2dfdd3149_"

static const char orig_msg[] =
	"Received: from client.example ([192.0.2.1])\r\n"
	"\tby relay.example (Postern) with ESMTP id 0123456789ABCDEF;\r\n"
	"\tMon, 18 Nov 2026 14:00:00 +0000\r\n"
	"From: Alice <alice@example.com>\r\n"
	"To: bob@example.net, carol@example.org\r\n"
	"Subject: Quarterly\r\n"
	" report\r\n"
	"Message-ID: <orig@example.com>\r\n"
	"\r\n"
	"Hello.\r\n"
	"..signature\r\n"
	"..\r\n"
	"...three\r\n";

#define ORIG_HEADERS                                                        \
	"Received: from client.example ([192.0.2.1])\r\n"                   \
	"\tby relay.example (Postern) with ESMTP id 0123456789ABCDEF;\r\n"  \
	"\tMon, 18 Nov 2026 14:00:00 +0000\r\n"                             \
	"From: Alice <alice@example.com>\r\n"                               \
	"To: bob@example.net, carol@example.org\r\n"                        \
	"Subject: Quarterly\r\n"                                            \
	" report\r\n"                                                       \
	"Message-ID: <orig@example.com>\r\n"                                \
	"\r\n"

static const struct dsn_rcpt failed_rcpts[] = {
	{
		.addr = "bob@example.net",
		.orcpt = "rfc822;Bob+2Bx@example.net",
		.action = DSN_FAILED,
		.status = "5.1.1",
		.remote_mta = "mx.example.net",
		.diagnostic = "550 5.1.1 <bob@example.net>: Recipient address "
			      "rejected: User unknown in virtual mailbox table",
		.last_attempt = 1795442400,
	},
	{
		.addr = "carol@example.org",
		.action = DSN_FAILED,
		.status = "4.4.7",
		.last_attempt = 1795442000,
	},
};

static struct iovec orig_iov = {(void *)orig_msg, sizeof(orig_msg) - 1};

static struct dsn_msg base_msg(void)
{
	struct dsn_msg m = {
		.reporting_mta = "relay.example",
		.postmaster = "postmaster@relay.example",
		.to = "alice@example.com",
		.envid = "QQ+2B1",
		.queue_id = "0123456789ABCDEF",
		.received_from = "[192.0.2.1]",
		.arrival = T_ARRIVAL,
		.now = T_NOW,
		.message_id = "dsn.0123456789ABCDEF@relay.example",
		.full = false,
		.rcpt = failed_rcpts,
		.nrcpt = N_ELEMS(failed_rcpts),
		.orig = &orig_iov,
		.norig = 1,
		.max_return = 0,
	};
	return m;
}

/* The report through the documented protocol: ask, then compose. */
static char *compose(const struct dsn_msg *m, size_t *len)
{
	size_t need = dsn_compose(NULL, 0, m);
	char *buf = malloc(need + 1);
	assert_non_null(buf);
	size_t n = dsn_compose(buf, need + 1, m);
	assert_int_equal(n, need);
	assert_int_equal(strlen(buf), need); /* NUL-terminated, no NUL inside */
	if (len)
		*len = n;
	return buf;
}

/* Wire form: CR LF line ends only, lines within 998 octets, no lone "." */
static void check_wire(const char *name, const char *buf, size_t n)
{
	if (n < 2 || memcmp(buf + n - 2, "\r\n", 2) != 0)
		fail_msg("%s: does not end with CR LF", name);
	size_t start = 0;
	for (size_t i = 0; i < n; i++) {
		if (buf[i] == '\r' && (i + 1 == n || buf[i + 1] != '\n'))
			fail_msg("%s: bare CR at %zu", name, i);
		if (buf[i] == '\n') {
			if (i == 0 || buf[i - 1] != '\r')
				fail_msg("%s: bare LF at %zu", name, i);
			size_t line = i - 1 - start;
			if (line > 998)
				fail_msg("%s: line of %zu octets at %zu", name, line, start);
			if (line == 1 && buf[start] == '.')
				fail_msg("%s: lone dot at %zu", name, start);
			start = i + 1;
		}
	}
}

static char *part3_of(const char *report, const char *boundary, size_t *len);

/* ---- a whole report --------------------------------------------------- */

static void test_golden_failed_hdrs(void **state)
{
	static const char want[] =
		"From: Mail Delivery System <postmaster@relay.example>\r\n"
		"To: <alice@example.com>\r\n"
		"Subject: Undeliverable: Quarterly report\r\n"
		"Date: Mon, 23 Nov 2026 14:02:00 +0000\r\n"
		"Message-ID: <dsn.0123456789ABCDEF@relay.example>\r\n"
		"Auto-Submitted: auto-replied\r\n"
		"MIME-Version: 1.0\r\n"
		"Content-Type: multipart/report; report-type=delivery-status;\r\n"
		"\tboundary=\"" BND "00\"\r\n"
		"\r\n"
		"This is a MIME-encapsulated message.\r\n"
		"\r\n"
		"--" BND "00\r\n"
		"Content-Type: text/plain; charset=us-ascii\r\n"
		"\r\n"
		"This is the mail system at host relay.example.\r\n"
		"\r\n"
		"Your message could not be delivered to one or more recipients.\r\n"
		"\r\n"
		"<bob@example.net>: failed, status 5.1.1 (bad destination mailbox address)\r\n"
		"    mx.example.net said: 550 5.1.1 <bob@example.net>: Recipient address\r\n"
		"    rejected: User unknown in virtual mailbox table\r\n"
		"\r\n"
		"<carol@example.org>: failed, status 4.4.7 (delivery time expired)\r\n"
		"\r\n"
		"The headers of the original message are attached.\r\n"
		"\r\n"
		"--" BND "00\r\n"
		"Content-Type: message/delivery-status\r\n"
		"\r\n"
		"Original-Envelope-Id: QQ+2B1\r\n"
		"Reporting-MTA: dns; relay.example\r\n"
		"Received-From-MTA: dns; [192.0.2.1]\r\n"
		"Arrival-Date: Wed, 18 Nov 2026 14:00:00 +0000\r\n"
		"X-Postern-Queue-ID: 0123456789ABCDEF\r\n"
		"\r\n"
		"Original-Recipient: rfc822;Bob+2Bx@example.net\r\n"
		"Final-Recipient: rfc822; bob@example.net\r\n"
		"Action: failed\r\n"
		"Status: 5.1.1\r\n"
		"Remote-MTA: dns; mx.example.net\r\n"
		"Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: Recipient address\r\n"
		" rejected: User unknown in virtual mailbox table\r\n"
		"Last-Attempt-Date: Mon, 23 Nov 2026 14:00:00 +0000\r\n"
		"\r\n"
		"Final-Recipient: rfc822; carol@example.org\r\n"
		"Action: failed\r\n"
		"Status: 4.4.7\r\n"
		"Last-Attempt-Date: Mon, 23 Nov 2026 13:53:20 +0000\r\n"
		"\r\n"
		"--" BND "00\r\n"
		"Content-Type: text/rfc822-headers\r\n"
		"\r\n"
		ORIG_HEADERS
		"\r\n"
		"--" BND "00--\r\n";
	struct dsn_msg m = base_msg();
	size_t n;
	char *got = compose(&m, &n);
	CHECK_STR("golden", got, want);
	check_wire("golden", got, n);
	free(got);
}

/* ---- the returned original -------------------------------------------- */

/* The body of the third part: between its blank line and the closing
 * delimiter (whose CR LF is not part of it). */
static char *part3_of(const char *report, const char *boundary, size_t *len)
{
	char delim[64], close[64];
	snprintf(delim, sizeof(delim), "\r\n--%s\r\n", boundary);
	snprintf(close, sizeof(close), "\r\n--%s--\r\n", boundary);
	const char *p = report;
	for (int k = 0; k < 3; k++) {
		p = strstr(p, delim);
		assert_non_null(p);
		p += strlen(delim);
	}
	p = strstr(p, "\r\n\r\n");
	assert_non_null(p);
	p += 4;
	size_t rl = strlen(report), cl = strlen(close);
	assert_true(rl >= cl && strcmp(report + rl - cl, close) == 0);
	*len = (size_t)(report + rl - cl - p);
	char *s = malloc(*len + 1);
	assert_non_null(s);
	memcpy(s, p, *len);
	s[*len] = '\0';
	return s;
}

static void boundary_of(const char *report, char *out, size_t cap)
{
	const char *p = strstr(report, "\tboundary=\"");
	assert_non_null(p);
	p += strlen("\tboundary=\"");
	const char *q = strchr(p, '"');
	assert_non_null(q);
	assert_true((size_t)(q - p) < cap);
	memcpy(out, p, (size_t)(q - p));
	out[q - p] = '\0';
}

static void test_full_keeps_stuffing(void **state)
{
	/* The original is in wire form: "..signature", ".." and "...three"
	 * are already stuffed and must come back exactly once-stuffed. */
	struct dsn_msg m = base_msg();
	m.full = true;
	size_t n, plen;
	char *got = compose(&m, &n);
	check_wire("full", got, n);
	assert_non_null(strstr(got, "\r\nContent-Type: message/rfc822\r\n\r\n"));
	assert_non_null(strstr(got, "\r\nThe original message is attached.\r\n"));
	char *p3 = part3_of(got, BND "00", &plen);
	CHECK_STR("full part", p3, orig_msg);
	assert_non_null(strstr(got, "\r\nHello.\r\n..signature\r\n..\r\n...three\r\n"
				    "\r\n--" BND "00--\r\n"));
	free(p3);
	free(got);
}

/* Every way to cut the original into two or three iovecs (empty ones
 * included) gives the same report, for both RET values. */
static void test_split_positions(void **state)
{
	static const char orig[] =
		"Subject: Split\r\n\ttest\r\n"
		"X: \xc3\xa9t\xc3\xa9\r\n"
		"\r\n"
		"..a\r\n"
		"..\r\n"
		"--" BND "00\r\n"
		"b\r\n"
		".\r\n"
		"c\rd\ne";
	const size_t len = sizeof(orig) - 1;
	for (int full = 0; full < 2; full++) {
		struct iovec one = {(void *)orig, len};
		struct dsn_msg m = base_msg();
		m.full = full;
		m.orig = &one;
		m.norig = 1;
		size_t want_len;
		char *want = compose(&m, &want_len);
		check_wire("split reference", want, want_len);
		char *got = malloc(want_len + 1);
		assert_non_null(got);
		for (size_t i = 0; i <= len; i++) {
			for (size_t j = i; j <= len; j++) {
				struct iovec v[3] = {
					{(void *)orig, i},
					{(void *)(orig + i), j - i},
					{(void *)(orig + j), len - j},
				};
				m.orig = v;
				m.norig = 3;
				size_t n = dsn_compose(got, want_len + 1, &m);
				if (n != want_len || memcmp(got, want, n) != 0)
					fail_msg("full=%d split at %zu,%zu differs", full, i, j);
			}
		}
		free(got);
		free(want);
	}
}

static void test_max_return(void **state)
{
	const uint64_t size = sizeof(orig_msg) - 1;
	static const char note_full[] = "The original message is attached.\r\n";
	static const char note_big[] =
		"The original message is too large to return in full;\r\n"
		"only its headers are attached.\r\n";
	static const char note_hdrs[] =
		"The headers of the original message are attached.\r\n";
	const struct {
		const char *name;
		bool full;
		uint64_t max_return;
		bool whole;
		const char *note;
	} cases[] = {
		{"full, no limit", true, 0, true, note_full},
		{"full, limit is size", true, size, true, note_full},
		{"full, limit above", true, size + 1, true, note_full},
		{"full, limit one short", true, size - 1, false, note_big},
		{"full, tiny limit", true, 1, false, note_big},
		{"hdrs, no limit", false, 0, false, note_hdrs},
		{"hdrs, big limit", false, size * 2, false, note_hdrs},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct dsn_msg m = base_msg();
		m.full = cases[i].full;
		m.max_return = cases[i].max_return;
		size_t n, plen;
		char *got = compose(&m, &n);
		check_wire(cases[i].name, got, n);
		const char *type = cases[i].whole ? "Content-Type: message/rfc822\r\n\r\n"
						  : "Content-Type: text/rfc822-headers\r\n\r\n";
		if (!strstr(got, type))
			fail_msg("%s: no %s", cases[i].name, type);
		if (!strstr(got, cases[i].note))
			fail_msg("%s: no note %s", cases[i].name, cases[i].note);
		char *p3 = part3_of(got, BND "00", &plen);
		CHECK_STR(cases[i].name, p3, cases[i].whole ? orig_msg : ORIG_HEADERS);
		free(p3);
		free(got);
	}
}

/* Inputs a valid spool file never holds still give valid wire form. */
static void test_original_repairs(void **state)
{
	static const struct {
		const char *name;
		const char *orig;
		const char *want;
	} cases[] = {
		{"valid", "A: b\r\n\r\nx\r\n", "A: b\r\n\r\nx\r\n"},
		{"empty", "", ""},
		{"no final CR LF", "A: b\r\n\r\nx", "A: b\r\n\r\nx\r\n"},
		{"final CR", "A: b\r\n\r\nx\r", "A: b\r\n\r\nx\r\n"},
		{"bare LF", "A: b\n\nx\ny\r\n", "A: b\r\n\r\nx\r\ny\r\n"},
		{"bare CR", "A: b\r\n\r\nx\ry\r\n", "A: b\r\n\r\nx\r\ny\r\n"},
		{"lone dot", "A: b\r\n\r\nx\r\n.\r\ny\r\n", "A: b\r\n\r\nx\r\n..\r\ny\r\n"},
		{"lone dot at end", "A: b\r\n\r\n.", "A: b\r\n\r\n..\r\n"},
		{"stuffed dots kept", "A: b\r\n\r\n..\r\n..x\r\n", "A: b\r\n\r\n..\r\n..x\r\n"},
		{"no header section", "\r\nbody\r\n", "\r\nbody\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct iovec v = {(void *)cases[i].orig, strlen(cases[i].orig)};
		struct dsn_msg m = base_msg();
		m.full = true;
		m.orig = &v;
		size_t n, plen;
		char *got = compose(&m, &n);
		check_wire(cases[i].name, got, n);
		char *p3 = part3_of(got, BND "00", &plen);
		CHECK_STR(cases[i].name, p3, cases[i].want);
		free(p3);
		free(got);
	}
}

static void test_original_long_lines(void **state)
{
	static const struct {
		const char *name;
		size_t before;     /* 'x' octets before tail */
		const char *tail;
		size_t want_first; /* octets of the first output line */
		const char *want_second;
	} cases[] = {
		{"998 fits", 998, "", 998, NULL},
		{"999 breaks", 999, "", 998, "x"},
		{"dot at the break is stuffed", 998, ".y", 998, "..y"},
		{"lone dot at the break", 998, ".", 998, ".."},
		{"2000", 2000, "", 998, NULL},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		size_t tl = strlen(cases[i].tail);
		size_t len = 4 + cases[i].before + tl + 2;
		char *orig = malloc(len + 1);
		assert_non_null(orig);
		memcpy(orig, "\r\n\r\n", 4); /* empty header section, empty line */
		memset(orig + 4, 'x', cases[i].before);
		memcpy(orig + 4 + cases[i].before, cases[i].tail, tl);
		memcpy(orig + len - 2, "\r\n", 2);
		orig[len] = '\0';
		struct iovec v = {orig, len};
		struct dsn_msg m = base_msg();
		m.full = true;
		m.orig = &v;
		size_t n, plen;
		char *got = compose(&m, &n);
		check_wire(cases[i].name, got, n);
		char *p3 = part3_of(got, BND "00", &plen);
		const char *line = p3 + 4;
		const char *eol = strstr(line, "\r\n");
		assert_non_null(eol);
		CHECK_INT(cases[i].name, eol - line, cases[i].want_first);
		if (cases[i].want_second) {
			char want[16];
			snprintf(want, sizeof(want), "%s\r\n", cases[i].want_second);
			CHECK_STR(cases[i].name, eol + 2, want);
		}
		/* Nothing but inserted line breaks and stuffing dots changed. */
		size_t kept = 0;
		for (size_t k = 4; k < plen; k++)
			kept += p3[k] == 'x';
		CHECK_INT(cases[i].name, kept, cases[i].before);
		free(p3);
		free(got);
		free(orig);
	}
}

static void test_no_blank_line(void **state)
{
	static const struct {
		const char *name;
		const char *orig;
		const char *want_part;
		const char *want_subject;
	} cases[] = {
		{"headers only", "From: a@b\r\nSubject: hi\r\nX: y\r\n",
		 "From: a@b\r\nSubject: hi\r\nX: y\r\n", "Subject: Undeliverable: hi\r\n"},
		{"no final CR LF", "From: a@b\r\nSubject: hi",
		 "From: a@b\r\nSubject: hi\r\n", "Subject: Undeliverable: hi\r\n"},
		{"blank line first", "\r\nSubject: body\r\n", "\r\n",
		 "Subject: Delivery Status Notification (Failure)\r\n"},
		{"blank line last", "From: a@b\r\n\r\n", "From: a@b\r\n\r\n",
		 "Subject: Delivery Status Notification (Failure)\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct iovec v = {(void *)cases[i].orig, strlen(cases[i].orig)};
		struct dsn_msg m = base_msg();
		m.orig = &v;
		size_t n, plen;
		char *got = compose(&m, &n);
		check_wire(cases[i].name, got, n);
		char *p3 = part3_of(got, BND "00", &plen);
		CHECK_STR(cases[i].name, p3, cases[i].want_part);
		if (!strstr(got, cases[i].want_subject))
			fail_msg("%s: no %s", cases[i].name, cases[i].want_subject);
		free(p3);
		free(got);
	}
}

static void test_eight_bit(void **state)
{
	static const char cte[] = "Content-Transfer-Encoding: 8bit\r\n";
	static const struct {
		const char *name;
		const char *orig;
		bool full;
		int want_cte; /* top level and part 3, or neither */
	} cases[] = {
		{"7bit full", "S: a\r\n\r\nb\r\n", true, 0},
		{"8bit body full", "S: a\r\n\r\n\xc3\xa9\r\n", true, 2},
		{"8bit body, headers returned", "S: a\r\n\r\n\xc3\xa9\r\n", false, 0},
		{"8bit header", "S: \xc3\xa9\r\n\r\nb\r\n", false, 2},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct iovec v = {(void *)cases[i].orig, strlen(cases[i].orig)};
		struct dsn_msg m = base_msg();
		m.orig = &v;
		m.full = cases[i].full;
		char *got = compose(&m, NULL);
		int count = 0;
		for (const char *p = got; (p = strstr(p, cte)); p++)
			count++;
		CHECK_INT(cases[i].name, count, cases[i].want_cte);
		if (cases[i].want_cte) {
			if (!strstr(got, "\tboundary=\"" BND "00\"\r\n"
					 "Content-Transfer-Encoding: 8bit\r\n\r\n"))
				fail_msg("%s: no top-level 8bit", cases[i].name);
		}
		free(got);
	}
}

/* ---- kinds of report -------------------------------------------------- */

static void test_delayed(void **state)
{
	static const struct {
		const char *name;
		const char *status;
		int64_t last_attempt, retry_until;
		const char *want_fields;
		const char *want_text;
	} cases[] = {
		{"with dates", "4.4.1", T_NOW - 60, T_NOW + 5 * 86400,
		 "\r\nFinal-Recipient: rfc822; bob@example.net\r\n"
		 "Action: delayed\r\n"
		 "Status: 4.4.1\r\n"
		 "Remote-MTA: dns; mx.example.net\r\n"
		 "Diagnostic-Code: smtp; 421 4.4.1 try later\r\n"
		 "Last-Attempt-Date: Mon, 23 Nov 2026 14:01:00 +0000\r\n"
		 "Will-Retry-Until: Sat, 28 Nov 2026 14:02:00 +0000\r\n"
		 "\r\n--",
		 "\r\n<bob@example.net>: delayed, status 4.4.1 (no answer from host)\r\n"
		 "    mx.example.net said: 421 4.4.1 try later\r\n"
		 "    Delivery will be retried until Sat, 28 Nov 2026 14:02:00 +0000.\r\n"
		 "\r\n"},
		{"no dates, default status", NULL, 0, 0,
		 "\r\nFinal-Recipient: rfc822; bob@example.net\r\n"
		 "Action: delayed\r\n"
		 "Status: 4.0.0\r\n"
		 "Remote-MTA: dns; mx.example.net\r\n"
		 "Diagnostic-Code: smtp; 421 4.4.1 try later\r\n"
		 "\r\n--",
		 "\r\n<bob@example.net>: delayed, status 4.0.0 (temporary failure)\r\n"
		 "    mx.example.net said: 421 4.4.1 try later\r\n"
		 "    Delivery will be retried.\r\n"
		 "\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct dsn_rcpt r = {
			.addr = "bob@example.net",
			.action = DSN_DELAYED,
			.status = cases[i].status,
			.remote_mta = "mx.example.net",
			.diagnostic = "421 4.4.1 try later",
			.last_attempt = cases[i].last_attempt,
			.will_retry_until = cases[i].retry_until,
		};
		struct dsn_msg m = base_msg();
		m.rcpt = &r;
		m.nrcpt = 1;
		size_t n;
		char *got = compose(&m, &n);
		check_wire(cases[i].name, got, n);
		if (!strstr(got, "\r\nSubject: Delivery Status Notification (Delay)\r\n"))
			fail_msg("%s: subject", cases[i].name);
		if (!strstr(got, "\r\nYour message has not yet been delivered to one or more recipients.\r\n"
				 "The mail system will keep trying; you do not need to send it again.\r\n"))
			fail_msg("%s: intro", cases[i].name);
		if (!strstr(got, cases[i].want_fields))
			fail_msg("%s: fields\n%s", cases[i].name, got);
		if (!strstr(got, cases[i].want_text))
			fail_msg("%s: text\n%s", cases[i].name, got);
		free(got);
	}
}

static void test_success(void **state)
{
	static const char intro_delivered[] =
		"\r\nYour message was delivered to the recipients listed below.\r\n";
	static const char intro_relayed[] =
		"\r\nYour message was relayed to the recipients listed below. The next mail\r\n"
		"system does not report on delivery, so you may hear no more about them.\r\n";
	static const struct {
		const char *name;
		enum dsn_action a, b;
		const char *want_subject;
		const char *want_intro;
	} cases[] = {
		{"relayed", DSN_RELAYED, DSN_RELAYED,
		 "Subject: Delivery Status Notification (Success)\r\n", intro_relayed},
		{"delivered", DSN_DELIVERED, DSN_DELIVERED,
		 "Subject: Delivery Status Notification (Success)\r\n", intro_delivered},
		{"delivered and relayed", DSN_DELIVERED, DSN_RELAYED,
		 "Subject: Delivery Status Notification (Success)\r\n", intro_relayed},
		{"a failure makes it a failure report", DSN_RELAYED, DSN_FAILED,
		 "Subject: Undeliverable: Quarterly report\r\n",
		 "\r\nYour message could not be delivered to one or more recipients.\r\n"},
		{"a delay makes it a delay report", DSN_DELAYED, DSN_DELIVERED,
		 "Subject: Delivery Status Notification (Delay)\r\n",
		 "\r\nYour message has not yet been delivered"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		const struct dsn_rcpt r[2] = {
			{.addr = "bob@example.net", .action = cases[i].a,
			 .status = "2.0.0", .remote_mta = "mx.example.net",
			 .diagnostic = "250 2.0.0 Ok: queued as 4XyZ",
			 .last_attempt = T_NOW - 1,
			 .will_retry_until = T_NOW + 86400}, /* ignored: not delayed */
			{.addr = "dan@example.net", .action = cases[i].b},
		};
		struct dsn_msg m = base_msg();
		m.rcpt = r;
		m.nrcpt = 2;
		m.envid = NULL;
		m.received_from = NULL;
		m.queue_id = NULL;
		size_t n;
		char *got = compose(&m, &n);
		check_wire(cases[i].name, got, n);
		if (!strstr(got, cases[i].want_subject))
			fail_msg("%s: subject\n%s", cases[i].name, got);
		if (!strstr(got, cases[i].want_intro))
			fail_msg("%s: intro\n%s", cases[i].name, got);
		char want[512];
		snprintf(want, sizeof(want),
			 "\r\nFinal-Recipient: rfc822; bob@example.net\r\n"
			 "Action: %s\r\n"
			 "Status: 2.0.0\r\n"
			 "Remote-MTA: dns; mx.example.net\r\n"
			 "Diagnostic-Code: smtp; 250 2.0.0 Ok: queued as 4XyZ\r\n"
			 "Last-Attempt-Date: Mon, 23 Nov 2026 14:01:59 +0000\r\n"
			 "\r\n",
			 cases[i].a == DSN_RELAYED ? "relayed"
			 : cases[i].a == DSN_DELAYED ? "delayed" : "delivered");
		if (cases[i].a != DSN_DELAYED && !strstr(got, want))
			fail_msg("%s: fields\n%s", cases[i].name, got);
		if (cases[i].a != DSN_DELAYED && cases[i].b != DSN_DELAYED &&
		    strstr(got, "Will-Retry-Until"))
			fail_msg("%s: Will-Retry-Until outside a delay", cases[i].name);
		/* Optional per-message fields absent when not given. */
		if (strstr(got, "Original-Envelope-Id") ||
		    strstr(got, "Received-From-MTA") || strstr(got, "X-Postern-Queue-ID"))
			fail_msg("%s: optional field present", cases[i].name);
		if (!strstr(got, "\r\nReporting-MTA: dns; relay.example\r\n"
				 "Arrival-Date: Wed, 18 Nov 2026 14:00:00 +0000\r\n\r\n"))
			fail_msg("%s: per-message fields\n%s", cases[i].name, got);
		free(got);
	}
}

static void test_subject(void **state)
{
	static const struct {
		const char *name;
		const char *orig;
		const char *want;
	} cases[] = {
		{"simple", "Subject: Hello\r\n\r\nb\r\n", "Subject: Undeliverable: Hello\r\n"},
		{"folded", "From: a\r\nSubject: Hello\r\n there\r\n\tworld\r\nTo: b\r\n\r\n",
		 "Subject: Undeliverable: Hello there world\r\n"},
		{"folded last header", "Subject: Hello\r\n there\r\n\r\nbody\r\n",
		 "Subject: Undeliverable: Hello there\r\n"},
		{"case", "SUBJECT: Loud\r\n\r\n", "Subject: Undeliverable: Loud\r\n"},
		{"space before colon", "subject  : Old\r\n\r\n", "Subject: Undeliverable: Old\r\n"},
		{"no space after colon", "Subject:Tight\r\n\r\n", "Subject: Undeliverable: Tight\r\n"},
		{"first one wins", "Subject: One\r\nSubject: Two\r\n\r\n",
		 "Subject: Undeliverable: One\r\n"},
		{"encoded word kept", "Subject: =?UTF-8?B?w6l0w6k=?=\r\n\r\n",
		 "Subject: Undeliverable: =?UTF-8?B?w6l0w6k=?=\r\n"},
		{"8bit replaced", "Subject: \xc3\xa9t\xc3\xa9\r\n\r\n",
		 "Subject: Undeliverable: ??t??\r\n"},
		{"tabs and runs collapsed", "Subject: \ta\t\t b  \r\n\r\n",
		 "Subject: Undeliverable: a b\r\n"},
		{"missing", "From: a\r\n\r\nb\r\n",
		 "Subject: Delivery Status Notification (Failure)\r\n"},
		{"empty", "Subject:\r\n\r\n",
		 "Subject: Delivery Status Notification (Failure)\r\n"},
		{"blank", "Subject: \t \r\n \r\n\r\n",
		 "Subject: Delivery Status Notification (Failure)\r\n"},
		{"only in the body", "From: a\r\n\r\nSubject: no\r\n",
		 "Subject: Delivery Status Notification (Failure)\r\n"},
		{"not a prefix", "Subjects: no\r\nX-Subject: no\r\n\r\n",
		 "Subject: Delivery Status Notification (Failure)\r\n"},
		{"continuation of another field", "X: a\r\n Subject: no\r\n\r\n",
		 "Subject: Delivery Status Notification (Failure)\r\n"},
		{"long one is refolded",
		 "Subject: aaaaaaaaa bbbbbbbbb ccccccccc ddddddddd eeeeeeeee fffffffff "
		 "ggggggggg hhhhhhhhh\r\n\r\n",
		 "Subject: Undeliverable: aaaaaaaaa bbbbbbbbb ccccccccc ddddddddd eeeeeeeee\r\n"
		 " fffffffff ggggggggg hhhhhhhhh\r\n"},
		{"header injection", "Subject: a\rBcc: x\r\n\r\n", "Subject: Undeliverable: a\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct iovec v = {(void *)cases[i].orig, strlen(cases[i].orig)};
		struct dsn_msg m = base_msg();
		m.orig = &v;
		size_t n;
		char *got = compose(&m, &n);
		check_wire(cases[i].name, got, n);
		const char *s = strstr(got, "\r\nSubject: ");
		assert_non_null(s);
		s += 2;
		const char *e = strstr(s, "\r\nDate: ");
		assert_non_null(e);
		char subj[1024];
		assert_true((size_t)(e - s) + 2 < sizeof(subj));
		memcpy(subj, s, (size_t)(e - s) + 2);
		subj[e - s + 2] = '\0';
		CHECK_STR(cases[i].name, subj, cases[i].want);
		free(got);
	}
}

/* Caller strings cannot add lines, and every line stays bounded. */
static void test_caller_strings(void **state)
{
	char longword[2000], words[3000];
	memset(longword, 'w', sizeof(longword) - 1);
	longword[sizeof(longword) - 1] = '\0';
	size_t wl = 0;
	while (wl + 8 < sizeof(words)) {
		memcpy(words + wl, "word567 ", 8);
		wl += 8;
	}
	words[wl] = '\0';
	const struct {
		const char *name;
		const char *diagnostic;
		size_t max_line; /* generated lines, CR LF excluded */
	} cases[] = {
		{"CR LF injection", "550 no\r\nX-Injected: 1\r\n.\r\n", 78},
		{"control and 8bit", "550 \x01\x7f\xff" "a", 78},
		{"many words", words, 78},
		{"one long word", longword, 998},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct dsn_rcpt r = failed_rcpts[0];
		r.diagnostic = cases[i].diagnostic;
		r.addr = "x\r\n.@example.net";
		struct dsn_msg m = base_msg();
		m.rcpt = &r;
		m.nrcpt = 1;
		m.to = "a\r\nBcc: victim@example.com";
		size_t n;
		char *got = compose(&m, &n);
		check_wire(cases[i].name, got, n);
		if (strstr(got, "\nX-Injected") || strstr(got, "\nBcc") ||
		    strstr(got, "\n.@"))
			fail_msg("%s: injected line", cases[i].name);
		/* Lines of parts 1 and 2 (the original is not ours to fold). */
		const char *end = strstr(got, "Content-Type: text/rfc822-headers");
		assert_non_null(end);
		size_t longest = 0;
		for (const char *p = got; p < end;) {
			const char *eol = strstr(p, "\r\n");
			if ((size_t)(eol - p) > longest)
				longest = (size_t)(eol - p);
			p = eol + 2;
		}
		if (longest > cases[i].max_line)
			fail_msg("%s: line of %zu", cases[i].name, longest);
		if (!strstr(got, "\r\nTo: <a  Bcc: victim@example.com>\r\n") &&
		    !strstr(got, "\r\nTo: <a Bcc: victim@example.com>\r\n"))
			fail_msg("%s: To\n%s", cases[i].name, got);
		free(got);
	}
	/* The long word is cut at 900 octets. */
	struct dsn_rcpt r = failed_rcpts[0];
	r.diagnostic = longword;
	struct dsn_msg m = base_msg();
	m.rcpt = &r;
	m.nrcpt = 1;
	char *got = compose(&m, NULL);
	char want[1000] = "\r\nDiagnostic-Code: smtp; ";
	size_t hl = strlen(want);
	memset(want + hl, 'w', 900);
	strcpy(want + hl + 900, "\r\n");
	assert_non_null(strstr(got, want));
	free(got);
}

/* ---- the size protocol ------------------------------------------------ */

static void test_return_size(void **state)
{
	struct dsn_msg m = base_msg();
	m.full = true;
	size_t need;
	char *full = compose(&m, &need);
	CHECK_INT("NULL, 0", dsn_compose(NULL, 0, &m), need);
	const struct {
		const char *name;
		size_t cap;
		bool fits;
	} cases[] = {
		{"zero", 0, false},
		{"one", 1, false},
		{"half", need / 2, false},
		{"one short", need - 1, false},
		{"no room for NUL", need, false},
		{"exact fit with NUL", need + 1, true},
		{"roomy", need + 100, true},
	};
	char *buf = malloc(need + 200);
	assert_non_null(buf);
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		memset(buf, 'Z', need + 200);
		size_t n = dsn_compose(buf, cases[i].cap, &m);
		CHECK_INT(cases[i].name, n, need);
		CHECK_INT(cases[i].name, n >= cases[i].cap, !cases[i].fits);
		/* Never writes past cap. */
		CHECK_INT(cases[i].name, buf[cases[i].cap], 'Z');
		if (cases[i].fits)
			CHECK_STR(cases[i].name, buf, full);
	}
	free(buf);
	free(full);
}

/* ---- boundary --------------------------------------------------------- */

static void test_boundary(void **state)
{
	static const struct {
		const char *name;
		const char *body;
		bool full;
		const char *want;
	} cases[] = {
		{"no collision", "x\r\n", true, BND "00"},
		{"delimiter line", "--" BND "00\r\n", true, BND "01"},
		{"close delimiter", "--" BND "00--\r\n", true, BND "01"},
		{"prefix of a longer line", "--" BND "00 and more\r\n", true, BND "01"},
		{"stuffed", ".--" BND "00\r\n", true, BND "01"},
		{"upper case", "--=_POSTERN_9250ABE2DFDD3149_00\r\n", true, BND "01"},
		{"two taken", "--" BND "01\r\n--" BND "00\r\n", true, BND "02"},
		{"not at line start", "x--" BND "00\r\n", true, BND "00"},
		{"shorter line", "--" BND "0\r\n", true, BND "00"},
		{"without dashes", BND "00\r\n", true, BND "00"},
		{"body not returned", "--" BND "00\r\n", false, BND "00"},
		{"last line, no CR LF", "--" BND "00", true, BND "01"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char orig[256];
		snprintf(orig, sizeof(orig), "Subject: b\r\n\r\n%s", cases[i].body);
		struct iovec v = {orig, strlen(orig)};
		struct dsn_msg m = base_msg();
		m.full = cases[i].full;
		m.orig = &v;
		char *got = compose(&m, NULL);
		char b[64];
		boundary_of(got, b, sizeof(b));
		CHECK_STR(cases[i].name, b, cases[i].want);
		free(got);
	}

	/* All 256 candidates taken: another hash, still no collision. */
	size_t cap = 256 * 40 + 64, len = 0;
	char *orig = malloc(cap);
	assert_non_null(orig);
	len += (size_t)snprintf(orig, cap, "Subject: b\r\n\r\n");
	for (unsigned k = 0; k < 256; k++)
		len += (size_t)snprintf(orig + len, cap - len, "--" BND "%02x\r\n", k);
	struct iovec v = {orig, len};
	struct dsn_msg m = base_msg();
	m.full = true;
	m.orig = &v;
	size_t n;
	char *got = compose(&m, &n);
	check_wire("all taken", got, n);
	char b[64], delim[80];
	boundary_of(got, b, sizeof(b));
	assert_int_equal(strlen(b), strlen(BND "00"));
	assert_memory_not_equal(b, BND, strlen(BND));
	snprintf(delim, sizeof(delim), "\n--%s", b);
	unsigned delims = 0;
	for (const char *p = got; (p = strstr(p, delim)); p++)
		delims++;
	CHECK_INT("all taken", delims, 4);
	free(got);
	free(orig);
}

/* ---- xtext ------------------------------------------------------------ */

static void test_xtext_decode(void **state)
{
	static const struct {
		const char *name;
		const char *in;
		size_t cap;
		bool ok;
		const char *want;
	} cases[] = {
		{"empty", "", 1, true, ""},
		{"plain", "abc", 16, true, "abc"},
		{"plus", "a+2Bb", 16, true, "a+b"},
		{"equals", "+3D", 16, true, "="},
		{"space and DEL", "+20+7F", 16, true, " \x7f"},
		{"8bit", "+C3+A9", 16, true, "\xc3\xa9"},
		{"orcpt", "rfc822;Bob+2Bx@example.net", 64, true, "rfc822;Bob+x@example.net"},
		{"exact fit", "ab+41", 4, true, "abA"},
		{"one short", "ab+41", 3, false, ""},
		{"no room at all", "", 0, false, NULL},
		{"lone plus", "a+", 16, false, ""},
		{"one digit", "+4", 16, false, ""},
		{"one digit then more", "+4x", 16, false, ""},
		{"not hex", "+zz", 16, false, ""},
		{"lower-case hex", "+2b", 16, false, ""},
		{"lower-case second digit", "+Cf", 16, false, ""},
		{"NUL", "a+00b", 16, false, ""},
		{"raw equals", "a=b", 16, false, ""},
		{"raw space", "a b", 16, false, ""},
		{"raw control", "a\x01", 16, false, ""},
		{"raw 8bit", "a\xc3\xa9", 16, false, ""},
		{"NULL in", NULL, 16, false, ""},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char out[80];
		memset(out, 'Z', sizeof(out));
		bool ok = dsn_xtext_decode(cases[i].in, out, cases[i].cap);
		CHECK_INT(cases[i].name, ok, cases[i].ok);
		if (cases[i].want)
			CHECK_STR(cases[i].name, out, cases[i].want);
		CHECK_INT(cases[i].name, out[cases[i].cap], 'Z');
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_golden_failed_hdrs),
		cmocka_unit_test(test_full_keeps_stuffing),
		cmocka_unit_test(test_split_positions),
		cmocka_unit_test(test_max_return),
		cmocka_unit_test(test_original_repairs),
		cmocka_unit_test(test_original_long_lines),
		cmocka_unit_test(test_no_blank_line),
		cmocka_unit_test(test_eight_bit),
		cmocka_unit_test(test_delayed),
		cmocka_unit_test(test_success),
		cmocka_unit_test(test_subject),
		cmocka_unit_test(test_caller_strings),
		cmocka_unit_test(test_return_size),
		cmocka_unit_test(test_boundary),
		cmocka_unit_test(test_xtext_decode),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
