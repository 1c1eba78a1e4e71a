/* Unit tests for the DATA scanner (proto/smtp_data.c): end of data, wire form
 * kept, the end marker split across calls at every offset, SMTP smuggling
 * sequences (bare CR/LF, NUL), line, size and header limits, Received: hop
 * counting, and the same rules for octets without an end marker (BDAT). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "smtp_data.h"

static const struct smtp_data_limits no_limits = {0, 0, 0};

/* What a caller ends up with after presenting a message to the scanner. */
struct outcome {
	bool end;
	char *body;           /* message bytes handed out, concatenated */
	size_t body_len;
	char *rest;           /* bytes after the end marker, never consumed */
	size_t rest_len;
	size_t held;          /* without end: bytes the caller still holds */
	unsigned errors;
	unsigned hops;
	uint64_t size;
	uint64_t header_size;
	unsigned calls;
};

static void outcome_free(struct outcome *o)
{
	free(o->body);
	free(o->rest);
}

/* Feeds msg in pieces cut at cuts[0..ncuts) (increasing offsets) the way a
 * caller does: unconsumed bytes stay at the front of its buffer and are
 * presented again with the next piece. */
static struct outcome scan_pieces(const char *msg, size_t len,
				  const size_t *cuts, size_t ncuts,
				  const struct smtp_data_limits *lim)
{
	struct outcome o;
	memset(&o, 0, sizeof(o));
	o.body = malloc(len + 1);
	o.rest = malloc(len + 1);
	char *pending = malloc(len + 1);
	assert_non_null(o.body);
	assert_non_null(o.rest);
	assert_non_null(pending);
	size_t plen = 0, off = 0;
	struct smtp_data_scan s;
	smtp_data_scan_init(&s, lim);
	for (size_t k = 0; k <= ncuts && !o.end; k++) {
		size_t to = k < ncuts ? cuts[k] : len;
		memcpy(pending + plen, msg + off, to - off);
		plen += to - off;
		off = to;
		size_t body = 99999;
		bool end = true;
		size_t n = smtp_data_scan(&s, pending, plen, &body, &end);
		o.calls++;
		assert_true(n <= plen);
		assert_true(body <= n);
		if (end)
			assert_true(body + 3 == n);
		else
			assert_true(body == n);
		memcpy(o.body + o.body_len, pending, body);
		o.body_len += body;
		memmove(pending, pending + n, plen - n);
		plen -= n;
		o.end = end;
		if (!end)
			assert_true(plen <= 2);
	}
	if (o.end) {
		memcpy(o.rest, pending, plen);
		memcpy(o.rest + plen, msg + off, len - off);
		o.rest_len = plen + len - off;
	} else {
		o.held = plen;
	}
	o.errors = s.errors;
	o.hops = s.hops;
	o.size = s.size;
	o.header_size = s.header_size;
	free(pending);
	return o;
}

static struct outcome scan_whole(const char *msg, size_t len,
				 const struct smtp_data_limits *lim)
{
	return scan_pieces(msg, len, NULL, 0, lim);
}

static void check_same(const char *name, const struct outcome *a,
		       const struct outcome *b)
{
	CHECK_INT(name, b->end, a->end);
	CHECK_INT(name, b->body_len, a->body_len);
	if (memcmp(a->body, b->body, a->body_len) != 0)
		fail_msg("%s: body differs", name);
	CHECK_INT(name, b->rest_len, a->rest_len);
	if (memcmp(a->rest, b->rest, a->rest_len) != 0)
		fail_msg("%s: rest differs", name);
	CHECK_INT(name, b->held, a->held);
	CHECK_INT(name, b->errors, a->errors);
	CHECK_INT(name, b->hops, a->hops);
	CHECK_INT(name, b->size, a->size);
	CHECK_INT(name, b->header_size, a->header_size);
}

/* ---- table: whole-buffer results -------------------------------------- */

#define BARE SMTP_DATA_BARE_CR_LF
#define NUL SMTP_DATA_NUL

/* A string literal and its length, NULs included. */
#define S(x) x, sizeof(x) - 1

static const struct data_case {
	const char *name;
	const char *in;
	size_t in_len;
	bool end;
	const char *body;     /* bytes handed out as message */
	size_t body_len;
	const char *rest;     /* bytes left after the end marker */
	size_t held;          /* without end: bytes still held by the caller */
	unsigned errors;
} data_cases[] = {
	{"empty message", S(".\r\n"), true, S(""), "", 0, 0},
	{"one line", S("hello\r\n.\r\n"), true, S("hello\r\n"), "", 0, 0},
	{"header and body", S("Subject: x\r\n\r\nhello\r\n.\r\n"), true,
	 S("Subject: x\r\n\r\nhello\r\n"), "", 0, 0},
	{"empty lines", S("\r\n\r\n.\r\n"), true, S("\r\n\r\n"), "", 0, 0},
	{"dot-stuffed line kept", S("..hidden\r\n.\r\n"), true, S("..hidden\r\n"), "", 0, 0},
	{"dot-stuffed lone dot kept", S("a\r\n..\r\n.\r\n"), true, S("a\r\n..\r\n"), "", 0, 0},
	{"dot then text is not the end", S(".x\r\n.\r\n"), true, S(".x\r\n"), "", 0, 0},
	{"dot space is not the end", S("a\r\n. \r\n.\r\n"), true, S("a\r\n. \r\n"), "", 0, 0},
	{"dot not at line start", S("a.\r\n.\r\n"), true, S("a.\r\n"), "", 0, 0},
	{"commands after the end stay", S("a\r\n.\r\nQUIT\r\n"), true, S("a\r\n"),
	 "QUIT\r\n", 0, 0},
	{"second message after the end stays", S(".\r\n.\r\n"), true, S(""), ".\r\n", 0, 0},
	{"no end yet", S("hello\r\n"), false, S("hello\r\n"), "", 0, 0},
	{"no end, mid line", S("hel"), false, S("hel"), "", 0, 0},
	{"held dot at start", S("."), false, S(""), "", 1, 0},
	{"held dot CR at start", S(".\r"), false, S(""), "", 2, 0},
	{"held dot", S("hello\r\n."), false, S("hello\r\n"), "", 1, 0},
	{"held dot CR", S("hello\r\n.\r"), false, S("hello\r\n"), "", 2, 0},
	{"CR at end not held", S("hello\r"), false, S("hello\r"), "", 0, 0},
	/* SMTP smuggling: none of these end the data */
	{"LF.LF", S("a\n.\nb\r\n.\r\n"), true, S("a\n.\nb\r\n"), "", 0, BARE},
	{"CR.CR", S("a\r.\rb\r\n.\r\n"), true, S("a\r.\rb\r\n"), "", 0, BARE},
	{"LF.CRLF", S("a\n.\r\nb\r\n.\r\n"), true, S("a\n.\r\nb\r\n"), "", 0, BARE},
	{"CRLF.LF", S("a\r\n.\nb\r\n.\r\n"), true, S("a\r\n.\nb\r\n"), "", 0, BARE},
	{"CR.CRLF", S("a\r.\r\nb\r\n.\r\n"), true, S("a\r.\r\nb\r\n"), "", 0, BARE},
	{"CRLF.CR then text", S("a\r\n.\rb\r\n.\r\n"), true, S("a\r\n.\rb\r\n"), "", 0, BARE},
	{"CRLF.CRCRLF", S("a\r\n.\r\r\n.\r\n"), true, S("a\r\n.\r\r\n"), "", 0, BARE},
	{"LF.LF alone", S("a\n.\n"), false, S("a\n.\n"), "", 0, BARE},
	{"CR.CR alone", S("a\r.\r"), false, S("a\r.\r"), "", 0, BARE},
	{"LF.CRLF alone", S("a\n.\r\n"), false, S("a\n.\r\n"), "", 0, BARE},
	{"CRLF.LF alone", S("a\r\n.\n"), false, S("a\r\n.\n"), "", 0, BARE},
	{"CR.CRLF alone", S("a\r.\r\n"), false, S("a\r.\r\n"), "", 0, BARE},
	{".LF at start", S(".\n"), false, S(".\n"), "", 0, BARE},
	{"LF.LF at start", S("\n.\n"), false, S("\n.\n"), "", 0, BARE},
	{"CR.CR at start", S("\r.\r"), false, S("\r.\r"), "", 0, BARE},
	{"smuggled command then real end",
	 S("x\n.\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<v@y.example>\r\nDATA\r\n"
	   "forged\r\n.\r\nQUIT\r\n"),
	 true,
	 S("x\n.\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<v@y.example>\r\nDATA\r\n"
	   "forged\r\n"),
	 "QUIT\r\n", 0, BARE},
	{"bare LF in text", S("a\nb\r\n.\r\n"), true, S("a\nb\r\n"), "", 0, BARE},
	{"bare CR in text", S("a\rb\r\n.\r\n"), true, S("a\rb\r\n"), "", 0, BARE},
	{"CR CR LF", S("a\r\r\n.\r\n"), true, S("a\r\r\n"), "", 0, BARE},
	{"8bit passes", S("\xc3\xa9z\xff\x80\r\n.\r\n"), true, S("\xc3\xa9z\xff\x80\r\n"),
	 "", 0, 0},
	/* NUL (RFC 6152: only BINARYMIME may carry it): flagged wherever it
	 * is, and never part of an end marker */
	{"NUL first byte of data", S("\x00hello\r\n.\r\n"), true, S("\x00hello\r\n"), "", 0,
	 NUL},
	{"NUL first byte of the body", S("Subject: x\r\n\r\n\x00" "body\r\n.\r\n"), true,
	 S("Subject: x\r\n\r\n\x00" "body\r\n"), "", 0, NUL},
	{"NUL in a header", S("Subject: a\x00" "b\r\n\r\nx\r\n.\r\n"), true,
	 S("Subject: a\x00" "b\r\n\r\nx\r\n"), "", 0, NUL},
	{"NUL right before CRLF.CRLF", S("x\x00\r\n.\r\n"), true, S("x\x00\r\n"), "", 0, NUL},
	{"NUL CRLF.CRLF", S("\x00\r\n.\r\n"), true, S("\x00\r\n"), "", 0, NUL},
	{"CRLF NUL.CRLF is not the end", S("a\r\n\x00.\r\nb\r\n.\r\n"), true,
	 S("a\r\n\x00.\r\nb\r\n"), "", 0, NUL},
	{"CRLF NUL.CRLF alone", S("a\r\n\x00.\r\n"), false, S("a\r\n\x00.\r\n"), "", 0, NUL},
	{"NUL.CRLF at start", S("\x00.\r\nMAIL FROM:<e@x.example>\r\n.\r\nQUIT\r\n"), true,
	 S("\x00.\r\nMAIL FROM:<e@x.example>\r\n"), "QUIT\r\n", 0, NUL},
	{"CRLF.NUL CRLF is not the end", S("a\r\n.\x00\r\n.\r\n"), true,
	 S("a\r\n.\x00\r\n"), "", 0, NUL},
	{"CRLF.CR NUL", S("a\r\n.\r\x00\r\n.\r\n"), true, S("a\r\n.\r\x00\r\n"), "", 0,
	 NUL | BARE},
	{"CR NUL LF", S("a\r\x00\n.\r\n"), false, S("a\r\x00\n.\r\n"), "", 0, NUL | BARE},
	{"dot-stuffed NUL", S("..\x00\r\n.\r\n"), true, S("..\x00\r\n"), "", 0, NUL},
	{"only NULs", S("\x00\x00\x00"), false, S("\x00\x00\x00"), "", 0, NUL},
};

static void test_data_table(void **state)
{
	for (size_t i = 0; i < N_ELEMS(data_cases); i++) {
		const struct data_case *c = &data_cases[i];
		struct outcome o = scan_whole(c->in, c->in_len, &no_limits);
		CHECK_INT(c->name, o.end, c->end);
		CHECK_INT(c->name, o.body_len, c->body_len);
		if (memcmp(o.body, c->body, c->body_len) != 0)
			fail_msg("%s: body \"%.*s\", want \"%s\"", c->name,
				 (int)o.body_len, o.body, c->body);
		CHECK_INT(c->name, o.rest_len, strlen(c->rest));
		if (memcmp(o.rest, c->rest, o.rest_len) != 0)
			fail_msg("%s: rest differs", c->name);
		CHECK_INT(c->name, o.held, c->held);
		CHECK_INT(c->name, o.errors, c->errors);
		/* Size counts the message octets handed out (wire form). */
		CHECK_INT(c->name, o.size, o.body_len);
		outcome_free(&o);
	}
}

/* ---- the end marker split at every offset ----------------------------- */

static void test_data_split_everywhere(void **state)
{
	for (size_t i = 0; i < N_ELEMS(data_cases); i++) {
		const struct data_case *c = &data_cases[i];
		size_t n = c->in_len;
		struct outcome whole = scan_whole(c->in, n, &no_limits);
		/* one cut */
		for (size_t k = 0; k <= n; k++) {
			char name[160];
			snprintf(name, sizeof(name), "%s, cut at %zu", c->name, k);
			struct outcome o = scan_pieces(c->in, n, &k, 1, &no_limits);
			check_same(name, &whole, &o);
			outcome_free(&o);
		}
		/* two cuts */
		for (size_t a = 0; a <= n; a++) {
			for (size_t b = a; b <= n; b++) {
				char name[160];
				snprintf(name, sizeof(name), "%s, cuts at %zu,%zu",
					 c->name, a, b);
				size_t cuts[2] = {a, b};
				struct outcome o = scan_pieces(c->in, n, cuts, 2, &no_limits);
				check_same(name, &whole, &o);
				outcome_free(&o);
			}
		}
		/* byte by byte */
		size_t *cuts = malloc((n + 1) * sizeof(*cuts));
		assert_non_null(cuts);
		for (size_t k = 0; k < n; k++)
			cuts[k] = k + 1;
		struct outcome o = scan_pieces(c->in, n, cuts, n, &no_limits);
		check_same(c->name, &whole, &o);
		outcome_free(&o);
		free(cuts);
		outcome_free(&whole);
	}
}

static void test_data_held_bytes_contract(void **state)
{
	/* The scanner gives back "." / ".CR" at a line start; the caller must
	 * present them again. Exact return values of each call. */
	struct smtp_data_scan s;
	size_t body;
	bool end;
	smtp_data_scan_init(&s, &no_limits);
	assert_int_equal(smtp_data_scan(&s, "ab\r\n.", 5, &body, &end), 4);
	assert_int_equal(body, 4);
	assert_false(end);
	assert_int_equal(smtp_data_scan(&s, ".", 1, &body, &end), 0);
	assert_int_equal(body, 0);
	assert_false(end);
	assert_int_equal(smtp_data_scan(&s, ".\r", 2, &body, &end), 0);
	assert_int_equal(body, 0);
	assert_false(end);
	assert_int_equal(smtp_data_scan(&s, ".\r\nNOOP\r\n", 9, &body, &end), 3);
	assert_int_equal(body, 0);
	assert_true(end);
	assert_int_equal(s.size, 4);
	assert_int_equal(s.errors, 0);

	/* A held "." that turns out to be dot-stuffing is handed out whole. */
	smtp_data_scan_init(&s, &no_limits);
	assert_int_equal(smtp_data_scan(&s, ".", 1, &body, &end), 0);
	assert_int_equal(smtp_data_scan(&s, "..x\r\n", 5, &body, &end), 5);
	assert_int_equal(body, 5);
	assert_false(end);
	assert_int_equal(s.size, 5);
}

static void test_data_only_real_end_after_smuggling(void **state)
{
	/* After each fake marker the scanner is still in the message; the
	 * first real CRLF.CRLF ends it and the error is sticky. */
	static const char *const fakes[] = {"\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n",
					    "\r.\r\n"};
	for (size_t i = 0; i < N_ELEMS(fakes); i++) {
		char msg[128];
		snprintf(msg, sizeof(msg), "line%s", fakes[i]);
		struct smtp_data_scan s;
		size_t body;
		bool end;
		smtp_data_scan_init(&s, &no_limits);
		size_t n = smtp_data_scan(&s, msg, strlen(msg), &body, &end);
		CHECK_INT(fakes[i], end, false);
		CHECK_INT(fakes[i], n, strlen(msg));
		CHECK_INT(fakes[i], s.errors, SMTP_DATA_BARE_CR_LF);
		static const char tail[] = "more\r\n.\r\n";
		n = smtp_data_scan(&s, tail, sizeof(tail) - 1, &body, &end);
		CHECK_INT(fakes[i], end, true);
		CHECK_INT(fakes[i], n, sizeof(tail) - 1);
		CHECK_INT(fakes[i], body, 6);
		CHECK_INT(fakes[i], s.errors, SMTP_DATA_BARE_CR_LF);
	}
}

/* ---- limits ----------------------------------------------------------- */

static char *line_of(size_t n, char fill, const char *prefix, const char *suffix)
{
	size_t pl = strlen(prefix), sl = strlen(suffix);
	char *p = malloc(pl + n + sl + 1);
	assert_non_null(p);
	memcpy(p, prefix, pl);
	memset(p + pl, fill, n);
	memcpy(p + pl + n, suffix, sl + 1);
	return p;
}

static void test_data_line_limit(void **state)
{
	/* 1000 octets including CR LF (RFC 5321 4.5.3.1.6), counted in wire
	 * form, so a dot-stuffed line counts its extra dot. */
	static const struct {
		const char *name;
		const char *prefix;
		size_t fill;
		unsigned want;
	} cases[] = {
		{"998 + CRLF", "", 998, 0},
		{"999 + CRLF", "", 999, SMTP_DATA_LINE_TOO_LONG},
		{"2000 + CRLF", "", 2000, SMTP_DATA_LINE_TOO_LONG},
		{"dot-stuffed 1000", "..", 996, 0},
		{"dot-stuffed 1001", "..", 997, SMTP_DATA_LINE_TOO_LONG},
		{"after a short line 1000", "ok\r\n", 998, 0},
		{"after a short line 1001", "ok\r\n", 999, SMTP_DATA_LINE_TOO_LONG},
		/* in the body, where a line and its CR LF are counted at once */
		{"body 998 + CRLF", "S: x\r\n\r\nok\r\n", 998, 0},
		{"body 999 + CRLF", "S: x\r\n\r\nok\r\n", 999, SMTP_DATA_LINE_TOO_LONG},
		{"body, dot-stuffed 1001", "S: x\r\n\r\n..", 997, SMTP_DATA_LINE_TOO_LONG},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char *msg = line_of(cases[i].fill, 'x', cases[i].prefix, "\r\nend\r\n.\r\n");
		size_t n = strlen(msg);
		struct outcome o = scan_whole(msg, n, &no_limits);
		CHECK_INT(cases[i].name, o.end, true);
		CHECK_INT(cases[i].name, o.errors, cases[i].want);
		CHECK_INT(cases[i].name, o.body_len, n - 3);
		outcome_free(&o);
		/* byte by byte gives the same */
		size_t *cuts = malloc(n * sizeof(*cuts));
		assert_non_null(cuts);
		for (size_t k = 0; k < n; k++)
			cuts[k] = k + 1;
		o = scan_pieces(msg, n, cuts, n, &no_limits);
		CHECK_INT(cases[i].name, o.errors, cases[i].want);
		outcome_free(&o);
		free(cuts);
		free(msg);
	}
}

static void test_data_max_size(void **state)
{
	/* Size is the wire form message octets, without the final ".CRLF". */
	static const char msg[] = "Subject: s\r\n\r\nbody\r\n.\r\n"; /* 20 octets */
	static const struct {
		const char *name;
		uint64_t max;
		unsigned want;
	} cases[] = {
		{"unlimited", 0, 0},
		{"exact", 20, 0},
		{"one over", 19, SMTP_DATA_TOO_BIG},
		{"far over", 1, SMTP_DATA_TOO_BIG},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct smtp_data_limits lim = {.max_size = cases[i].max};
		struct outcome o = scan_whole(msg, sizeof(msg) - 1, &lim);
		CHECK_INT(cases[i].name, o.end, true);
		CHECK_INT(cases[i].name, o.size, 20);
		CHECK_INT(cases[i].name, o.errors, cases[i].want);
		outcome_free(&o);
	}
	/* Over the limit before the end: the error shows at once, so the
	 * caller can stop storing. */
	struct smtp_data_limits lim = {.max_size = 10};
	struct smtp_data_scan s;
	size_t body;
	bool end;
	smtp_data_scan_init(&s, &lim);
	smtp_data_scan(&s, "0123456789abc", 13, &body, &end);
	assert_false(end);
	assert_int_equal(s.errors, SMTP_DATA_TOO_BIG);
}

#define BODY_LINE "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n"
#define HDR_LINE "X-H: hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh\r\n"

static char *repeat_lines(const char *prefix, const char *line, unsigned count,
			  const char *suffix)
{
	size_t pl = strlen(prefix), ll = strlen(line), sl = strlen(suffix);
	char *p = malloc(pl + ll * count + sl + 1);
	assert_non_null(p);
	memcpy(p, prefix, pl);
	for (unsigned i = 0; i < count; i++)
		memcpy(p + pl + i * ll, line, ll);
	memcpy(p + pl + ll * count, suffix, sl + 1);
	return p;
}

static void test_data_header_size(void **state)
{
	/* The header section ends at the first empty line; body octets never
	 * count towards it. */
	char *body = repeat_lines("H: 1\r\nH: 2\r\n\r\n", BODY_LINE, 100, ".\r\n");
	char *big_header = repeat_lines("", HDR_LINE, 100, "\r\nbody\r\n.\r\n");
	char *no_blank = repeat_lines("", HDR_LINE, 100, ".\r\n");
	char *late_blank = repeat_lines("H: 1\r\nbody-like line\r\n\r\n", BODY_LINE,
					100, ".\r\n");
	static const struct {
		const char *name;
		int msg;
		uint64_t max;
		unsigned want;
	} cases[] = {
		{"small header, big body", 0, 100, 0},
		{"small header, tiny limit", 0, 5, SMTP_DATA_HEADER_TOO_BIG},
		{"big header", 1, 4096, SMTP_DATA_HEADER_TOO_BIG},
		{"big header, limit above", 1, 6000, 0},
		{"no empty line: all header", 2, 4096, SMTP_DATA_HEADER_TOO_BIG},
		{"non-field line does not end header", 3, 100, 0},
		{"unlimited", 1, 0, 0},
	};
	const char *msgs[] = {body, big_header, no_blank, late_blank};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct smtp_data_limits lim = {.max_header_size = cases[i].max};
		const char *m = msgs[cases[i].msg];
		struct outcome o = scan_whole(m, strlen(m), &lim);
		CHECK_INT(cases[i].name, o.end, true);
		CHECK_INT(cases[i].name, o.errors, cases[i].want);
		if (cases[i].msg == 0 && o.header_size > 14)
			fail_msg("%s: header_size %llu counts body octets", cases[i].name,
				 (unsigned long long)o.header_size);
		if (cases[i].msg == 2 && o.header_size != o.size)
			fail_msg("%s: header_size %llu, want %llu", cases[i].name,
				 (unsigned long long)o.header_size,
				 (unsigned long long)o.size);
		outcome_free(&o);
	}
	free(body);
	free(big_header);
	free(no_blank);
	free(late_blank);
}

static void test_data_hops(void **state)
{
	static const struct {
		const char *name;
		const char *msg;
		unsigned hops;
	} cases[] = {
		{"none", "Subject: x\r\n\r\nbody\r\n.\r\n", 0},
		{"one", "Received: from a\r\n\r\nbody\r\n.\r\n", 1},
		{"three, any case",
		 "Received: from a\r\nRECEIVED: from b\r\nreceived: from c\r\n\r\n.\r\n", 3},
		{"first line and later lines",
		 "Received: a\r\nSubject: s\r\nReceived: b\r\n\r\n.\r\n", 2},
		{"folded continuation not counted",
		 "Received: from a\r\n Received: x\r\n\tReceived: y\r\n\r\n.\r\n", 1},
		{"not at line start", "X-Received: a\r\nSubject: Received: b\r\n\r\n.\r\n", 0},
		{"space before colon not counted", "Received : a\r\n\r\n.\r\n", 0},
		{"prefix only", "Receive: a\r\nReceived\r\n\r\n.\r\n", 0},
		{"only in header section",
		 "Received: a\r\n\r\nReceived: b\r\nReceived: c\r\n.\r\n", 1},
		{"after smuggled line still header", "Received: a\nReceived: b\r\n\r\n.\r\n", 1},
		{"dot-stuffed line not counted", "..Received: a\r\nReceived: b\r\n\r\n.\r\n", 1},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		const char *m = cases[i].msg;
		size_t n = strlen(m);
		struct outcome whole = scan_whole(m, n, &no_limits);
		CHECK_INT(cases[i].name, whole.end, true);
		CHECK_INT(cases[i].name, whole.hops, cases[i].hops);
		CHECK_INT(cases[i].name, whole.errors & SMTP_DATA_TOO_MANY_HOPS, 0);
		for (size_t k = 0; k <= n; k++) {
			char name[160];
			snprintf(name, sizeof(name), "%s, cut at %zu", cases[i].name, k);
			struct outcome o = scan_pieces(m, n, &k, 1, &no_limits);
			check_same(name, &whole, &o);
			outcome_free(&o);
		}
		outcome_free(&whole);
	}
}

static void test_data_max_hops(void **state)
{
	static const struct {
		const char *name;
		unsigned received;
		unsigned max;
		unsigned want;
	} cases[] = {
		{"30 of 30", 30, 30, 0},
		{"31 of 30", 31, 30, SMTP_DATA_TOO_MANY_HOPS},
		{"3 of 2", 3, 2, SMTP_DATA_TOO_MANY_HOPS},
		{"unlimited", 100, 0, 0},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char msg[8192];
		size_t o = 0;
		for (unsigned k = 0; k < cases[i].received; k++)
			o += (size_t)snprintf(msg + o, sizeof(msg) - o,
					      "Received: from h%u by x; date\r\n", k);
		o += (size_t)snprintf(msg + o, sizeof(msg) - o, "\r\nbody\r\n.\r\n");
		struct smtp_data_limits lim = {.max_hops = cases[i].max};
		struct outcome out = scan_whole(msg, o, &lim);
		CHECK_INT(cases[i].name, out.end, true);
		CHECK_INT(cases[i].name, out.hops, cases[i].received);
		CHECK_INT(cases[i].name, out.errors, cases[i].want);
		outcome_free(&out);
	}
}

static void test_data_errors_combine(void **state)
{
	char *msg = line_of(1200, 'x', "Received: a\r\nReceived: b\r\n", "\n\r\n.\r\n");
	size_t len = strlen(msg);
	msg[30] = '\0'; /* a NUL inside the long line */
	struct smtp_data_limits lim = {.max_size = 100, .max_header_size = 50,
				       .max_hops = 1};
	struct outcome o = scan_whole(msg, len, &lim);
	CHECK_INT("combined", o.end, true);
	CHECK_INT("combined", o.errors,
		  SMTP_DATA_BARE_CR_LF | SMTP_DATA_LINE_TOO_LONG | SMTP_DATA_TOO_BIG |
			  SMTP_DATA_HEADER_TOO_BIG | SMTP_DATA_TOO_MANY_HOPS | SMTP_DATA_NUL);
	outcome_free(&o);
	free(msg);
}

static void test_data_init_resets(void **state)
{
	struct smtp_data_scan s;
	size_t body;
	bool end;
	struct smtp_data_limits lim = {.max_size = 3};
	smtp_data_scan_init(&s, &lim);
	smtp_data_scan(&s, "Received: x\n", 12, &body, &end);
	assert_int_not_equal(s.errors, 0);
	smtp_data_scan_init(&s, &no_limits);
	assert_int_equal(s.errors, 0);
	assert_int_equal(s.size, 0);
	assert_int_equal(s.hops, 0);
	assert_int_equal(s.lim.max_size, 0);
	assert_int_equal(smtp_data_scan(&s, ".\r\n", 3, &body, &end), 3);
	assert_true(end);
	assert_int_equal(body, 0);
}

/* ---- octets without an end marker (BDAT chunks) --------------------- */

static const struct octets_case {
	const char *name;
	const char *in;
	size_t in_len;
	unsigned errors;
	unsigned hops;
	uint64_t header_size;
} octets_cases[] = {
	{"nothing", S(""), 0, 0, 0},
	{"header and body", S("Subject: x\r\n\r\nbody\r\n"), 0, 0, 14},
	{"a lone dot is content", S("a\r\n.\r\nb\r\n"), 0, 0, 9},
	{"no CRLF at the end yet", S("a\r\nb"), 0, 0, 4},
	{"CR at the end waits for its LF", S("a\r"), 0, 0, 2},
	{"8bit passes", S("\xc3\xa9\xff\r\n"), 0, 0, 5},
	{"NUL first", S("\x00" "a\r\n"), NUL, 0, 4},
	{"NUL in a header", S("Subject: a\x00" "b\r\n\r\nx\r\n"), NUL, 0, 16},
	{"NUL in the body", S("S: x\r\n\r\nab\x00\r\n"), NUL, 0, 8},
	{"CRLF NUL.CRLF", S("a\r\n\x00.\r\n"), NUL, 0, 7},
	{"NUL CRLF", S("\x00\r\n"), NUL, 0, 3},
	{"bare LF", S("a\nb\r\n"), BARE, 0, 5},
	{"bare CR", S("a\rb\r\n"), BARE, 0, 5},
	{"CR CR LF", S("a\r\r\n"), BARE, 0, 4},
	{"LF.LF", S("a\n.\n"), BARE, 0, 4},
	{"CR NUL LF", S("a\r\x00\n"), BARE | NUL, 0, 4},
	{"hops counted in the header only",
	 S("Received: a\r\nreceived: b\r\n\r\nReceived: c\r\n"), 0, 2, 28},
};

/* The end of BDAT octets: a CR there is bare; a message that stops inside
 * a line needs a CR LF in its stored form. */
static void test_octets_end(void **state)
{
	static const struct {
		const char *name;
		const char *in;
		size_t in_len;
		bool needs_crlf;
		unsigned errors;
	} cases[] = {
		{"empty", S(""), false, 0},
		{"ends with CRLF", S("a\r\n"), false, 0},
		{"ends inside a line", S("a\r\nb"), true, 0},
		{"ends with CR", S("a\r"), true, BARE},
		{"ends with a bare LF", S("a\n"), true, BARE},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct smtp_data_scan sc;
		smtp_data_scan_init(&sc, &no_limits);
		smtp_data_scan_octets(&sc, cases[i].in, cases[i].in_len);
		bool need = smtp_data_scan_octets_end(&sc);
		CHECK_INT(cases[i].name, need, cases[i].needs_crlf);
		CHECK_INT(cases[i].name, sc.errors, cases[i].errors);
	}
}

static void octets_check(const char *name, const struct octets_case *c,
			 const struct smtp_data_scan *s)
{
	CHECK_INT(name, s->errors, c->errors);
	CHECK_INT(name, s->size, c->in_len);
	CHECK_INT(name, s->hops, c->hops);
	CHECK_INT(name, s->header_size, c->header_size);
}

static void test_octets_table(void **state)
{
	for (size_t i = 0; i < N_ELEMS(octets_cases); i++) {
		const struct octets_case *c = &octets_cases[i];
		struct smtp_data_scan s;
		smtp_data_scan_init(&s, &no_limits);
		smtp_data_scan_octets(&s, c->in, c->in_len);
		octets_check(c->name, c, &s);
		/* cut once at every offset */
		for (size_t k = 0; k <= c->in_len; k++) {
			char name[160];
			snprintf(name, sizeof(name), "%s, cut at %zu", c->name, k);
			smtp_data_scan_init(&s, &no_limits);
			smtp_data_scan_octets(&s, c->in, k);
			smtp_data_scan_octets(&s, c->in + k, c->in_len - k);
			octets_check(name, c, &s);
		}
		/* byte by byte */
		smtp_data_scan_init(&s, &no_limits);
		for (size_t k = 0; k < c->in_len; k++)
			smtp_data_scan_octets(&s, c->in + k, 1);
		octets_check(c->name, c, &s);
	}
}

static void test_octets_limits(void **state)
{
	static const struct {
		const char *name;
		size_t line;            /* octets before CR LF */
		struct smtp_data_limits lim;
		unsigned want;
	} cases[] = {
		{"line of 1000 octets", 998, {0, 0, 0}, 0},
		{"line of 1001 octets", 999, {0, 0, 0}, SMTP_DATA_LINE_TOO_LONG},
		{"size at the limit", 98, {100, 0, 0}, 0},
		{"size over the limit", 99, {100, 0, 0}, SMTP_DATA_TOO_BIG},
		{"header at the limit", 98, {0, 100, 0}, 0},
		{"header over the limit", 99, {0, 100, 0}, SMTP_DATA_HEADER_TOO_BIG},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char *msg = line_of(cases[i].line, 'x', "", "\r\n");
		struct smtp_data_scan s;
		smtp_data_scan_init(&s, &cases[i].lim);
		smtp_data_scan_octets(&s, msg, strlen(msg));
		CHECK_INT(cases[i].name, s.errors, cases[i].want);
		free(msg);
	}
	/* Hops past the limit, counted across calls. */
	struct smtp_data_limits lim = {.max_hops = 1};
	struct smtp_data_scan s;
	smtp_data_scan_init(&s, &lim);
	smtp_data_scan_octets(&s, S("Received: a\r\n"));
	CHECK_INT("one hop", s.errors, 0);
	smtp_data_scan_octets(&s, S("Recei"));
	smtp_data_scan_octets(&s, S("ved: b\r\n"));
	CHECK_INT("two hops", s.errors, SMTP_DATA_TOO_MANY_HOPS);
}

/* ---- long runs: counted at once, the same as octet by octet ------------ */

/* Messages of long lines with a CR, LF, NUL, "." or "Received:" here and
 * there: scanned whole and byte by byte, and with random cuts, the scanner
 * hands out the same and counts the same. */
static void test_data_long_runs_same_as_octets(void **state)
{
	static const char *const bits[] = {"\r\n", "\n", "\r", "\0", ".", "\r\n.",
					   "\r\n..", "\r\nReceived: x", "\r\n\r\n", "y"};
	unsigned seed = 17;
	for (int round = 0; round < 40; round++) {
		size_t cap = 64 * 1024, n = 0;
		char *msg = malloc(cap + 64);
		assert_non_null(msg);
		memcpy(msg, "Received: a\r\nSubject: ", 22);
		n = 22;
		while (n < cap - 5000) {
			seed = seed * 1103515245u + 12345u;
			size_t run = (seed >> 8) % (round % 2 ? 3000 : 40);
			memset(msg + n, 'a' + (int)(seed % 26), run);
			n += run;
			const char *b = bits[(seed >> 4) % N_ELEMS(bits)];
			size_t bl = b[0] ? strlen(b) : 1;
			memcpy(msg + n, b, bl);
			n += bl;
		}
		memcpy(msg + n, "\r\n.\r\n", 5);
		n += 5;
		char name[64];
		snprintf(name, sizeof(name), "round %d", round);
		struct outcome whole = scan_whole(msg, n, &no_limits);
		size_t *cuts = malloc(n * sizeof(*cuts));
		assert_non_null(cuts);
		for (size_t k = 0; k < n; k++)
			cuts[k] = k + 1;
		struct outcome o = scan_pieces(msg, n, cuts, n, &no_limits);
		check_same(name, &whole, &o);
		outcome_free(&o);
		size_t ncuts = 0;
		for (size_t at = 0; at < n; at += 1 + (seed >> 8) % 20000) {
			seed = seed * 1103515245u + 12345u;
			cuts[ncuts++] = at;
		}
		o = scan_pieces(msg, n, cuts, ncuts, &no_limits);
		check_same(name, &whole, &o);
		outcome_free(&o);
		/* BDAT's octets count the same */
		struct smtp_data_scan a, b;
		smtp_data_scan_init(&a, &no_limits);
		smtp_data_scan_init(&b, &no_limits);
		smtp_data_scan_octets(&a, msg, n);
		for (size_t k = 0; k < n; k++)
			smtp_data_scan_octets(&b, msg + k, 1);
		CHECK_INT(name, a.errors, b.errors);
		CHECK_INT(name, a.size, b.size);
		CHECK_INT(name, a.hops, b.hops);
		CHECK_INT(name, a.header_size, b.header_size);
		CHECK_INT(name, a.line_len, b.line_len);
		free(cuts);
		outcome_free(&whole);
		free(msg);
	}
}

/* A client that sends megabyte lines (bench/floods "longline"): 256 MiB
 * of one line, in 16 KiB receive buffers, in DATA and in BDAT, is counted
 * to the octet and refused once as too long. How much CPU it costs is
 * bench/floods' to measure (a CPU-time bound here failed under ASan on a
 * slower machine: speed is never asserted by a timed unit test). */
static void test_long_line_counted(void **state)
{
	size_t bufsz = 16 * 1024, total = 256u * 1024 * 1024;
	char *buf = malloc(bufsz);
	assert_non_null(buf);
	memset(buf, 'x', bufsz);
	for (int bdat = 0; bdat < 2; bdat++) {
		struct smtp_data_scan s;
		smtp_data_scan_init(&s, &no_limits);
		for (size_t done = 0; done < total; done += bufsz) {
			if (bdat) {
				smtp_data_scan_octets(&s, buf, bufsz);
			} else {
				size_t body;
				bool end;
				size_t n = smtp_data_scan(&s, buf, bufsz, &body, &end);
				CHECK_INT("DATA consumed", n, bufsz);
				if (end)
					fail_msg("DATA: an end of data in a line of x");
			}
		}
		CHECK_INT(bdat ? "BDAT" : "DATA", s.size, total);
		CHECK_INT(bdat ? "BDAT" : "DATA", s.errors, SMTP_DATA_LINE_TOO_LONG);
	}
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_data_table),
		cmocka_unit_test(test_data_split_everywhere),
		cmocka_unit_test(test_data_held_bytes_contract),
		cmocka_unit_test(test_data_only_real_end_after_smuggling),
		cmocka_unit_test(test_data_line_limit),
		cmocka_unit_test(test_data_max_size),
		cmocka_unit_test(test_data_header_size),
		cmocka_unit_test(test_data_hops),
		cmocka_unit_test(test_data_max_hops),
		cmocka_unit_test(test_data_errors_combine),
		cmocka_unit_test(test_data_init_resets),
		cmocka_unit_test(test_octets_table),
		cmocka_unit_test(test_octets_end),
		cmocka_unit_test(test_octets_limits),
		cmocka_unit_test(test_data_long_runs_same_as_octets),
		cmocka_unit_test(test_long_line_counted),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
