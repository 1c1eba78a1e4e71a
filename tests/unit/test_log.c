/* Unit tests for the log (engine/log.c): log_quote() turns any string into
 * one logfmt value (table, every byte value, random strings decoded back,
 * cuts at small capacities), and log_msg() keeps every line one parseable
 * line (stray control bytes, lines longer than its buffer). */
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
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static int hex_digit(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* A strict logfmt value decoder: a bare value (printable ASCII without
 * '"', '\' and '=') or "..." with \" \\ and \xHH escapes only. Returns the
 * bytes consumed (0: malformed), the decoded bytes in out. */
static size_t decode_value(const char *p, char *out, size_t *outlen)
{
	size_t i = 0, n = 0;
	if (p[0] != '"') {
		while (p[i] && p[i] != ' ' && p[i] != '\n') {
			unsigned char c = (unsigned char)p[i];
			if (c <= ' ' || c >= 127 || c == '"' || c == '\\' || c == '=')
				return 0;
			out[n++] = p[i++];
		}
		*outlen = n;
		return i;
	}
	for (i = 1;; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '"')
			break;
		if (c < ' ' || c >= 127)
			return 0;
		if (c != '\\') {
			out[n++] = (char)c;
			continue;
		}
		if (p[i + 1] == '"' || p[i + 1] == '\\') {
			out[n++] = p[++i];
		} else if (p[i + 1] == 'x') {
			int hi = hex_digit(p[i + 2]), lo = hi < 0 ? -1 : hex_digit(p[i + 3]);
			if (lo < 0)
				return 0;
			out[n++] = (char)(hi << 4 | lo);
			i += 3;
		} else {
			return 0;
		}
	}
	*outlen = n;
	return i + 1;
}

/* q is exactly one value, and it decodes to want (want_len bytes). */
static void check_round_trip(const char *name, const char *q, const char *want,
			     size_t want_len, bool prefix_ok)
{
	char out[8192];
	size_t outlen = 0;
	size_t used = decode_value(q, out, &outlen);
	if (used == 0 || used != strlen(q))
		fail_msg("%s: %s is not one logfmt value", name, q);
	if (prefix_ok ? outlen > want_len : outlen != want_len)
		fail_msg("%s: %s decodes to %zu bytes, want %s%zu", name, q, outlen,
			 prefix_ok ? "at most " : "", want_len);
	if (memcmp(out, want, outlen) != 0)
		fail_msg("%s: %s does not decode to the input", name, q);
}

static const struct {
	const char *name;
	const char *in;
	unsigned cap;
	const char *want;
} quote_cases[] = {
	{"plain address", "a@b.example", 64, "a@b.example"},
	{"angle brackets stay bare", "<a@b.example>", 64, "<a@b.example>"},
	{"empty", "", 64, "\"\""},
	{"space", "Default Frontend", 64, "\"Default Frontend\""},
	{"equals", "a=b", 64, "\"a=b\""},
	{"quote", "a\"b", 64, "\"a\\\"b\""},
	{"backslash", "a\\b", 64, "\"a\\\\b\""},
	{"CR LF", "a\r\nb", 64, "\"a\\x0d\\x0ab\""},
	{"tab, ESC, DEL, 0x01", "\t\x1b\x7f\x01", 64, "\"\\x09\\x1b\\x7f\\x01\""},
	{"8-bit bytes", "\xc3\xa9t\xff\x80", 64, "\"\\xc3\\xa9t\\xff\\x80\""},
	{"a forged field", "<\"x> status=2.0.0 to=y\"@a.test>", 64,
	 "\"<\\\"x> status=2.0.0 to=y\\\"@a.test>\""},
	{"a forged line", "x\nts=2026-01-01T00:00:00.000Z level=error event=forged", 128,
	 "\"x\\x0ats=2026-01-01T00:00:00.000Z level=error event=forged\""},
	{"a quote that would end the value", "x\" event=forged", 64, "\"x\\\" event=forged\""},
	{"a trailing backslash", "x\\", 64, "\"x\\\\\""},
	/* cut to fit, never inside an escape, always closed */
	{"plain cut", "abcdefghij", 8, "abcdefg"},
	{"quoted cut", "a b c d e", 8, "\"a b c\""},
	{"escape fits exactly", "a\nb", 8, "\"a\\x0a\""},
	{"escape does not fit", "a\nb", 7, "\"a\""},
	{"quote escape does not fit", "ab\"", 5, "\"ab\""},
	{"smallest cap", "x y", 3, "\"\""},
	{"smallest cap, plain", "abc", 3, "ab"},
};

static void test_quote_table(void **state)
{
	for (size_t i = 0; i < N_ELEMS(quote_cases); i++) {
		char dst[256];
		memset(dst, 'Z', sizeof(dst));
		const char *r = log_quote(dst, quote_cases[i].cap, quote_cases[i].in);
		assert_ptr_equal(r, dst);
		CHECK_STR(quote_cases[i].name, dst, quote_cases[i].want);
		/* nothing written past cap */
		for (size_t k = quote_cases[i].cap; k < sizeof(dst); k++)
			if (dst[k] != 'Z')
				fail_msg("%s: wrote byte %zu of cap %u", quote_cases[i].name, k,
					 quote_cases[i].cap);
	}
}

static void test_quote_every_byte(void **state)
{
	/* Each byte value alone, first, last and in the middle of a value. */
	for (unsigned c = 1; c < 256; c++) {
		char in[8], name[64], dst[LOG_QUOTE_CAP(8)];
		const char *const forms[] = {"%c", "%cab", "ab%c", "a%cb"};
		for (size_t f = 0; f < N_ELEMS(forms); f++) {
			snprintf(in, sizeof(in), forms[f], (char)c);
			snprintf(name, sizeof(name), "byte 0x%02x, form %zu", c, f);
			log_quote(dst, sizeof(dst), in);
			check_round_trip(name, dst, in, strlen(in), false);
			bool plain = c > ' ' && c < 127 && c != '"' && c != '\\' && c != '=';
			CHECK_INT(name, dst[0] == '"', !plain);
			for (const char *p = dst; *p; p++)
				if ((unsigned char)*p < ' ' || (unsigned char)*p >= 127)
					fail_msg("%s: raw byte 0x%02x in %s", name,
						 (unsigned char)*p, dst);
		}
	}
}

static void test_quote_random_strings(void **state)
{
	/* Any string fits LOG_QUOTE_CAP(its length) whole; at any smaller
	 * capacity the value is a closed value holding a prefix of it. */
	unsigned seed = 5321;
	for (unsigned round = 0; round < 20000; round++) {
		char in[48];
		size_t len = (size_t)(rand_r(&seed) % 40);
		for (size_t k = 0; k < len; k++) {
			/* biased towards the bytes that matter */
			static const char hot[] = "\"\\= \r\n\t\x7f\x80\xff";
			int r = rand_r(&seed);
			in[k] = r % 3 ? (char)(1 + r % 255) : hot[r % (sizeof(hot) - 1)];
		}
		in[len] = '\0';
		char dst[LOG_QUOTE_CAP(48)], name[64];
		snprintf(name, sizeof(name), "round %u", round);
		log_quote(dst, LOG_QUOTE_CAP((unsigned)len), in);
		check_round_trip(name, dst, in, len, false);
		unsigned cap = 3 + (unsigned)rand_r(&seed) % (LOG_QUOTE_CAP((unsigned)len) - 2);
		log_quote(dst, cap, in);
		assert_true(strlen(dst) < cap);
		check_round_trip(name, dst, in, len, true);
	}
}

/* ---- log_msg: whole lines ------------------------------------------ */

static char *read_log(const char *path)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	static char buf[65536];
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return buf;
}

/* Every field of the line (up to its newline) is key=value, keys are
 * unique; returns the number of fields and the value of key want_key. */
static unsigned parse_line(const char *line, const char *want_key, char *val, size_t *vlen)
{
	const char *p = line;
	unsigned n = 0;
	char keys[64][32];
	while (*p && *p != '\n') {
		const char *eq = strchr(p, '=');
		assert_non_null(eq);
		size_t kl = (size_t)(eq - p);
		assert_true(kl > 0 && kl < 32);
		for (size_t k = 0; k < kl; k++)
			if (!(p[k] == '_' || (p[k] >= 'a' && p[k] <= 'z') || (p[k] >= '0' && p[k] <= '9')))
				fail_msg("bad key in %s", line);
		assert_true(n < 64);
		memcpy(keys[n], p, kl);
		keys[n][kl] = '\0';
		for (unsigned j = 0; j < n; j++)
			if (strcmp(keys[j], keys[n]) == 0)
				fail_msg("key %s twice in %s", keys[n], line);
		char out[8192];
		size_t ol;
		size_t used = decode_value(eq + 1, out, &ol);
		if (!used)
			fail_msg("bad value for %s in %s", keys[n], line);
		if (want_key && strcmp(keys[n], want_key) == 0) {
			memcpy(val, out, ol);
			*vlen = ol;
		}
		n++;
		p = eq + 1 + used;
		if (*p == ' ')
			p++;
		else if (*p != '\n')
			fail_msg("no space after %s in %s", keys[n - 1], line);
	}
	assert_int_equal(*p, '\n');
	assert_int_equal(p[1], '\0');
	return n;
}

static char log_path[64];

static int setup_log(void **state)
{
	snprintf(log_path, sizeof(log_path), "/tmp/postern-test-log-%d", (int)getpid());
	unlink(log_path);
	assert_int_equal(log_open_file(log_path), 0);
	log_set_level(LOG_DEBUG);
	return 0;
}

static int teardown_log(void **state)
{
	unlink(log_path);
	return 0;
}

static void log_clear(void)
{
	assert_int_equal(truncate(log_path, 0), 0);
}

static void test_msg_stray_control_bytes(void **state)
{
	/* A value that missed log_quote still cannot start a line. */
	log_clear();
	log_msg(LOG_INFO, "event=t v=%s w=%s", "a\nts=x level=error", "b\r\x01\xff");
	const char *text = read_log(log_path);
	const char *body = strstr(text, " level=info ");
	assert_non_null(body);
	CHECK_STR("stray bytes", body, " level=info event=t v=a?ts=x level=error w=b???\n");
	CHECK_INT("one line", strchr(text, '\n') + 1 - text, strlen(text));
}

static void test_msg_quoted_values(void **state)
{
	static const char *const values[] = {
		"<\"x> status=2.0.0 to=y\"@a.test>",
		"x\nts=2026-01-01T00:00:00.000Z level=error event=forged",
		"\"\\\"\\",
		"",
		"\xc3\xa9 8-bit",
	};
	for (size_t i = 0; i < N_ELEMS(values); i++) {
		char q[LOG_QUOTE_CAP(80)];
		log_clear();
		log_msg(LOG_INFO, "event=t from=%s n=1", log_quote(q, sizeof(q), values[i]));
		const char *text = read_log(log_path);
		char val[8192];
		size_t vl = 99999;
		CHECK_INT(values[i], parse_line(text, "from", val, &vl), 5);
		CHECK_INT(values[i], vl, strlen(values[i]));
		assert_memory_equal(val, values[i], vl);
	}
}

static void test_msg_too_long(void **state)
{
	/* Lines longer than the buffer lose whole fields, never half a
	 * quoted value, and say so. */
	static char big[6000], q[LOG_QUOTE_CAP(6000)];
	static const struct {
		const char *name;
		const char *fill;       /* repeated to fill big */
		const char *fmt;
		unsigned want_fields;   /* ts, level, event, ..., truncated */
	} cases[] = {
		{"one long quoted value", "a \"b\" ", "event=t v=%s after=1", 4},
		{"one long plain value", "x", "event=t v=%s after=1", 4},
		{"long value after a short one", "\n\\", "event=t short=1 v=%s", 5},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		size_t fl = strlen(cases[i].fill);
		for (size_t k = 0; k + 1 < sizeof(big); k++)
			big[k] = cases[i].fill[k % fl];
		big[sizeof(big) - 1] = '\0';
		log_clear();
		log_msg(LOG_WARN, cases[i].fmt, log_quote(q, sizeof(q), big));
		const char *text = read_log(log_path);
		CHECK_INT(cases[i].name, strlen(text) <= 4096, 1);
		char val[8192];
		size_t vl = 0;
		CHECK_INT(cases[i].name, parse_line(text, "truncated", val, &vl),
			  cases[i].want_fields);
		CHECK_INT(cases[i].name, vl, 3);
		assert_memory_equal(val, "yes", 3);
		const char *nl = strchr(text, '\n');
		assert_non_null(nl);
		if (strstr(nl - 14, " truncated=yes") != nl - 14)
			fail_msg("%s: %s", cases[i].name, text);
	}
	/* Fits: nothing cut. */
	memset(big, 'x', 3000);
	big[3000] = '\0';
	log_clear();
	log_msg(LOG_INFO, "event=t v=%s after=1", big);
	const char *text = read_log(log_path);
	assert_null(strstr(text, "truncated"));
	assert_non_null(strstr(text, " after=1\n"));
}

/* The time stamp (its date and time formatted once a second per thread):
 * each line's is the clock between the calls around it, to the
 * millisecond, across a change of second. */
static void test_msg_time_stamp(void **state)
{
	struct timeval before, after;
	gettimeofday(&before, NULL);
	time_t start = before.tv_sec;
	unsigned lines = 0;
	/* Until two seconds have passed: at least one change of second. */
	do {
		log_clear();
		gettimeofday(&before, NULL);
		log_msg(LOG_INFO, "event=t n=%u", lines++);
		gettimeofday(&after, NULL);
		const char *text = read_log(log_path);
		struct tm tm;
		int ms = -1;
		char z = 0;
		memset(&tm, 0, sizeof(tm));
		assert_int_equal(sscanf(text, "ts=%4d-%2d-%2dT%2d:%2d:%2d.%3d%c level=info event=t ",
					&tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
					&tm.tm_sec, &ms, &z),
				 8);
		CHECK_INT("zone", z, 'Z');
		CHECK_INT("stamp length", strstr(text, " level=") - text, 27);
		tm.tm_year -= 1900;
		tm.tm_mon -= 1;
		long long t = (long long)timegm(&tm) * 1000 + ms;
		long long lo = (long long)before.tv_sec * 1000 + before.tv_usec / 1000;
		long long hi = (long long)after.tv_sec * 1000 + after.tv_usec / 1000;
		if (t < lo || t > hi)
			fail_msg("stamp %lld ms outside [%lld, %lld]: %s", t, lo, hi, text);
		if (lines % 64 == 0)
			usleep(20000);
	} while (after.tv_sec < start + 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_quote_table),
		cmocka_unit_test(test_quote_every_byte),
		cmocka_unit_test(test_quote_random_strings),
		cmocka_unit_test_setup_teardown(test_msg_stray_control_bytes, setup_log,
						teardown_log),
		cmocka_unit_test_setup_teardown(test_msg_quoted_values, setup_log, teardown_log),
		cmocka_unit_test_setup_teardown(test_msg_too_long, setup_log, teardown_log),
		cmocka_unit_test_setup_teardown(test_msg_time_stamp, setup_log, teardown_log),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
