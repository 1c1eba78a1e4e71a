/* Unit tests for proto/logfmt.c: lines as engine/log.c writes them (bare
 * and quoted values, escapes), lines that are not logfmt, and the times
 * `track` accepts (absolute forms, offsets, ages). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "logfmt.h"

static void test_parse(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		const char *line;
		int n;              /* fields, -1: not logfmt */
		const char *key;    /* a field to look at */
		const char *want;   /* its value, unescaped */
	} cases[] = {
		{"bare", "ts=2026-12-02T13:54:19.123Z level=info event=receive id=abc", 4, "id", "abc"},
		{"quoted", "a=1 connector=\"Default Frontend\" b=2", 3, "connector", "Default Frontend"},
		{"escaped quote", "reply=\"250 \\\"ok\\\"\"", 1, "reply", "250 \"ok\""},
		{"escaped backslash", "x=\"a\\\\b\"", 1, "x", "a\\b"},
		{"hex escape", "x=\"\\xc3\\xa9t\\xe9\"", 1, "x", "\xc3\xa9t\xe9"},
		{"empty quoted", "x=\"\" y=1", 2, "x", ""},
		{"empty bare", "x= y=1", 2, "x", ""},
		{"equals in quotes", "to=\"<a=b@c>\"", 1, "to", "<a=b@c>"},
		{"spaces around", "  a=1   b=2  ", 2, "b", "2"},
		{"empty line", "", 0, NULL, NULL},
		{"no equals", "hello world", -1, NULL, NULL},
		{"unterminated quote", "a=\"abc", -1, NULL, NULL},
		{"quote then junk", "a=\"abc\"def", -1, NULL, NULL},
		{"bare quote in value", "a=ab\"c", -1, NULL, NULL},
		{"control byte", "a=ab\x01", -1, NULL, NULL},
		{"8-bit bare", "a=\xc3\xa9", -1, NULL, NULL},
		{"trailing backslash", "a=\"ab\\", -1, NULL, NULL},
		{"empty key", "=1", -1, NULL, NULL},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct logfmt_field f[16];
		size_t at = 0;
		int n = logfmt_parse(cases[i].line, strlen(cases[i].line), f, 16, &at);
		CHECK_INT(cases[i].name, n, cases[i].n);
		if (!cases[i].key)
			continue;
		const struct logfmt_field *k = logfmt_find(f, n, cases[i].key);
		if (!k)
			fail_msg("%s: no field %s", cases[i].name, cases[i].key);
		char v[256];
		logfmt_value(k, v, sizeof(v));
		CHECK_STR(cases[i].name, v, cases[i].want);
	}
}

/* What log_quote writes, logfmt_value reads back. */
static void test_round_trip(void **state)
{
	(void)state;
	static const char *const values[] = {
		"plain", "two words", "\"quoted\"", "back\\slash", "a=b", "\x01\x7f\xff tail", "",
		"<user@example.com>", "tab\there",
	};
	for (size_t i = 0; i < N_ELEMS(values); i++) {
		char q[LOG_QUOTE_CAP(64)], line[512], back[128];
		snprintf(line, sizeof(line), "k=%s z=1", log_quote(q, sizeof(q), values[i]));
		struct logfmt_field f[4];
		size_t at;
		int n = logfmt_parse(line, strlen(line), f, 4, &at);
		CHECK_INT(values[i], n, 2);
		logfmt_value(&f[0], back, sizeof(back));
		CHECK_STR(values[i], back, values[i]);
	}
}

static void test_max_fields_and_small_dst(void **state)
{
	(void)state;
	struct logfmt_field f[2];
	size_t at;
	static const char line[] = "a=1 b=2 c=3 d=\"x y\"";
	CHECK_INT("max", logfmt_parse(line, strlen(line), f, 2, &at), 2);
	char v[3];
	struct logfmt_field g = {.key = "k", .klen = 1, .val = "abcdef", .vlen = 6};
	CHECK_INT("cut", logfmt_value(&g, v, sizeof(v)), 2);
	CHECK_STR("cut", v, "ab");
}

#define NOW 1796219659123LL /* 2026-12-02T13:54:19.123Z */

static void test_time(void **state)
{
	(void)state;
	static const struct {
		const char *name;
		const char *in;
		bool ok;
		int64_t want;
	} cases[] = {
		{"log form", "2026-12-02T13:54:19.123Z", true, NOW},
		{"seconds", "2026-12-02T13:54:19Z", true, NOW - 123},
		{"no zone", "2026-12-02T13:54:19", true, NOW - 123},
		{"space, minutes", "2026-12-02 13:54", true, NOW - 19123},
		{"date", "2026-12-02", true, NOW - (13 * 3600 + 54 * 60 + 19) * 1000LL - 123},
		{"offset", "2026-12-02T14:54:19+01:00", true, NOW - 123},
		{"negative offset", "2026-12-02T08:54:19-0500", true, NOW - 123},
		{"micro", "2026-12-02T13:54:19.123456Z", true, NOW},
		{"epoch", "1970-01-01T00:00:00Z", true, 0},
		{"leap day", "2024-02-29", true, 1709164800000LL},
		{"seconds ago", "30s", true, NOW - 30000},
		{"minutes ago", "15m", true, NOW - 900000},
		{"hours ago", "1h", true, NOW - 3600000},
		{"days ago", "2d", true, NOW - 172800000},
		{"weeks ago", "1w", true, NOW - 604800000},
		{"now", "now", true, NOW},
		{"bad unit", "5y", false, 0},
		{"unit only", "h", false, 0},
		{"bad month", "2026-13-01", false, 0},
		{"bad hour", "2026-12-02T25:00", false, 0},
		{"junk after", "2026-12-02T13:54:19Zx", false, 0},
		{"short year", "26-12-02", false, 0},
		{"empty", "", false, 0},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		int64_t got = -1;
		bool ok = logfmt_time(cases[i].in, strlen(cases[i].in), NOW, &got);
		CHECK_INT(cases[i].name, ok, cases[i].ok);
		if (ok)
			CHECK_INT(cases[i].name, got, cases[i].want);
	}
}

static void test_line_time(void **state)
{
	(void)state;
	static const char a[] = "ts=2026-12-02T13:54:19.123Z level=info event=start";
	int64_t t;
	CHECK_INT("line", logfmt_line_time(a, strlen(a), &t), true);
	CHECK_INT("line", t, NOW);
	static const char b[] = "level=info ts=2026-12-02T13:54:19.123Z";
	CHECK_INT("not first", logfmt_line_time(b, strlen(b), &t), false);
	static const char c[] = "ts=garbage level=info";
	CHECK_INT("garbage", logfmt_line_time(c, strlen(c), &t), false);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_max_fields_and_small_dst),
		cmocka_unit_test(test_time),
		cmocka_unit_test(test_line_time),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
