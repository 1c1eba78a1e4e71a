/* Unit tests for proto/header_value.c: the Message-ID value of a streamed
 * message, fed whole and split at every byte, with folding, odd case,
 * obsolete white space before the colon, a cap, and ends of the header
 * section. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "header_value.h"

static const struct {
	const char *name;
	const char *input;
	const char *want;   /* NULL: not found */
	bool done;          /* header_value_feed's answer after the whole input */
} cases[] = {
	{"plain", "Subject: x\r\nMessage-ID: <a@b>\r\nTo: y\r\n\r\nbody", "<a@b>", true},
	{"first line", "Message-ID: <a@b>\r\n\r\n", "<a@b>", true},
	{"lower case", "message-id:<a@b>\r\n\r\n", "<a@b>", true},
	{"upper case", "MESSAGE-ID:   <a@b>   \r\n\r\n", "<a@b>", true},
	{"folded", "Message-ID:\r\n <a@b>\r\n\r\n", "<a@b>", true},
	{"folded twice", "Message-ID: <a\r\n\t@b\r\n >\r\nX: 1\r\n\r\n", "<a\t@b >", true},
	{"ws before colon", "Message-ID  : <a@b>\r\n\r\n", "<a@b>", true},
	{"LF only", "X: 1\nMessage-ID: <a@b>\n\n", "<a@b>", true},
	{"not in headers", "Subject: x\r\n\r\nMessage-ID: <a@b>\r\n", NULL, true},
	{"absent, end seen", "Subject: x\r\nTo: y\r\n\r\n", NULL, true},
	{"absent, no end yet", "Subject: x\r\n", NULL, false},
	{"longer name", "Message-IDs: <no>\r\nMessage-ID: <yes>\r\n\r\n", "<yes>", true},
	{"shorter name", "Message-I: <no>\r\n\r\n", NULL, true},
	{"resent is another field", "Resent-Message-ID: <no>\r\n\r\n", NULL, true},
	{"folded other field", "Subject: x\r\n Message-ID: <no>\r\n\r\n", NULL, true},
	{"first one wins", "Message-ID: <one>\r\nMessage-ID: <two>\r\n\r\n", "<one>", true},
	{"empty value", "Message-ID:\r\nX: 1\r\n\r\n", "", true},
	{"last line, no end", "Message-ID: <a@b>", "<a@b>", false},
	{"value then end of section", "Message-ID: <a@b>\r\n\r\n", "<a@b>", true},
	{"stray CR at line start", "\rMessage-ID: <a@b>\r\n\r\n", "<a@b>", true},
	{"8-bit kept", "Message-ID: <\xc3\xa9@b>\r\n\r\n", "<\xc3\xa9@b>", true},
};

static void run_split(const char *name, const char *in, size_t split, const char *want,
		      bool want_done)
{
	struct header_value h;
	header_value_init(&h, "Message-ID");
	size_t n = strlen(in);
	bool done = header_value_feed(&h, in, split);
	if (!done)
		done = header_value_feed(&h, in + split, n - split);
	char got[HEADER_VALUE_MAX + 1];
	bool found = header_value_get(&h, got, sizeof(got));
	char label[128];
	snprintf(label, sizeof(label), "%s (split at %zu)", name, split);
	CHECK_INT(label, found, want != NULL);
	if (want)
		CHECK_STR(label, got, want);
	CHECK_INT(label, done, want_done);
}

static void test_cases_every_split(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(cases); i++)
		for (size_t k = 0; k <= strlen(cases[i].input); k++)
			run_split(cases[i].name, cases[i].input, k, cases[i].want, cases[i].done);
}

static void test_byte_by_byte(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct header_value h;
		header_value_init(&h, "Message-ID");
		for (const char *p = cases[i].input; *p; p++)
			header_value_feed(&h, p, 1);
		char got[HEADER_VALUE_MAX + 1];
		bool found = header_value_get(&h, got, sizeof(got));
		CHECK_INT(cases[i].name, found, cases[i].want != NULL);
		if (cases[i].want)
			CHECK_STR(cases[i].name, got, cases[i].want);
	}
}

static void test_cap(void **state)
{
	(void)state;
	char in[2048], want[HEADER_VALUE_MAX + 1];
	int n = snprintf(in, sizeof(in), "Message-ID: <");
	for (int i = 0; i < 600; i++)
		in[n++] = 'x';
	snprintf(in + n, sizeof(in) - (size_t)n, ">\r\n\r\n");
	want[0] = '<';
	memset(want + 1, 'x', HEADER_VALUE_MAX - 1);
	want[HEADER_VALUE_MAX] = '\0';
	struct header_value h;
	header_value_init(&h, "Message-ID");
	CHECK_INT("long", header_value_feed(&h, in, strlen(in)), true);
	char got[HEADER_VALUE_MAX + 1];
	CHECK_INT("long", header_value_get(&h, got, sizeof(got)), true);
	CHECK_STR("long", got, want);
	CHECK_INT("long", h.cut, true);
	/* A small destination cuts the copy, never overruns it. */
	char small[4];
	CHECK_INT("small", header_value_get(&h, small, sizeof(small)), true);
	CHECK_STR("small", small, "<xx");
}

static void test_stops_after_done(void **state)
{
	(void)state;
	struct header_value h;
	header_value_init(&h, "Message-ID");
	static const char a[] = "Message-ID: <a@b>\r\nX: 1\r\n";
	CHECK_INT("done", header_value_feed(&h, a, strlen(a)), true);
	static const char b[] = " folded into X, not into ours\r\n";
	header_value_feed(&h, b, strlen(b));
	char got[64];
	header_value_get(&h, got, sizeof(got));
	CHECK_STR("after done", got, "<a@b>");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cases_every_split),
		cmocka_unit_test(test_byte_by_byte),
		cmocka_unit_test(test_cap),
		cmocka_unit_test(test_stops_after_done),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
