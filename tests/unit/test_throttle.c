/* Unit tests for the message-rate token bucket (engine/throttle.c) with a
 * fake clock: burst, refill, slow rates, lowered limits. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"
#include "throttle.h"

static int take_n(uint64_t *w, uint32_t rate, uint32_t now, int n)
{
	int ok = 0;
	for (int i = 0; i < n; i++)
		ok += throttle_bucket_take(w, rate, now);
	return ok;
}

static void test_burst_then_refill(void **state)
{
	static const struct {
		const char *name;
		uint32_t rate;     /* per minute */
		uint32_t at;       /* ms after the burst */
		int want;          /* tokens available then */
	} cases[] = {
		{"60/min, at once", 60, 0, 0},
		{"60/min, 999 ms", 60, 999, 0},
		{"60/min, 1 s", 60, 1000, 1},
		{"60/min, 10.5 s", 60, 10500, 10},
		{"60/min, 60 s", 60, 60000, 60},
		{"60/min, an hour", 60, 3600000, 60},
		{"600/min, 1 s", 600, 1000, 10},
		{"7/min, 9 s", 7, 9000, 1},
		{"7/min, 8 s", 7, 8000, 0},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		uint64_t w = 0;
		CHECK_INT(cases[i].name, take_n(&w, cases[i].rate, 5000, cases[i].rate + 5),
			  cases[i].rate);
		CHECK_INT(cases[i].name, take_n(&w, cases[i].rate, 5000 + cases[i].at, 1000),
			  cases[i].want);
	}
}

/* Small steps must add up: a slow rate polled every millisecond still
 * refills (the fraction is kept, not dropped at each step). */
static void test_fractions_accumulate(void **state)
{
	uint64_t w = 0;
	assert_int_equal(take_n(&w, 7, 0, 10), 7);
	int got = 0;
	for (uint32_t t = 1; t <= 60000; t++)
		got += throttle_bucket_take(&w, 7, t);
	assert_int_equal(got, 7);
}

static void test_lowered_limit_caps_tokens(void **state)
{
	uint64_t w = 0;
	assert_int_equal(take_n(&w, 600, 0, 1), 1);   /* 599 left */
	/* a reload lowers the limit to 10/min: at most 10 now */
	assert_int_equal(take_n(&w, 10, 1, 100), 10);
}

static void test_clock_wraps(void **state)
{
	uint64_t w = 0;
	uint32_t t0 = 0xFFFFF000u;
	assert_int_equal(take_n(&w, 60, t0, 61), 60);
	assert_int_equal(take_n(&w, 60, t0 + 2000, 5), 2); /* wraps past 2^32 */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_burst_then_refill),
		cmocka_unit_test(test_fractions_accumulate),
		cmocka_unit_test(test_lowered_limit_caps_tokens),
		cmocka_unit_test(test_clock_wraps),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
