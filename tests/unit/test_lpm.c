/* Unit tests for engine/lpm.c: range decomposition and longest-prefix
 * lookups, cross-checked against a brute-force scan on random tables. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "lpm.h"

typedef lpm_u128 u128;

static u128 ones(unsigned bits)
{
	return bits >= 128 ? ~(u128)0 : (((u128)1 << bits) - 1);
}

static void test_decompose_table(void **state)
{
	static const struct {
		unsigned width;
		uint32_t lo, hi;
		size_t n;
		struct { uint32_t addr; unsigned len; } want[8];
	} cases[] = {
		{32, 0xc0a8050a, 0xc0a8050a, 1, {{0xc0a8050a, 32}}},
		/* 192.168.5.20-192.168.5.29 = .20/30 .24/30 .28/31 */
		{32, 0xc0a80514, 0xc0a8051d, 3,
		 {{0xc0a80514, 30}, {0xc0a80518, 30}, {0xc0a8051c, 31}}},
		{32, 0, 0xffffffff, 1, {{0, 0}}},
		{32, 0x0a010000, 0x0a01ffff, 1, {{0x0a010000, 16}}},
		{32, 1, 6, 4, {{1, 32}, {2, 31}, {4, 31}, {6, 32}}},
		{32, 0xfffffffe, 0xffffffff, 1, {{0xfffffffe, 31}}},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct lpm_prefix out[256];
		size_t n = lpm_range_to_prefixes(cases[i].width, cases[i].lo, cases[i].hi, out);
		assert_int_equal(n, cases[i].n);
		for (size_t k = 0; k < n; k++) {
			assert_true(out[k].addr == cases[i].want[k].addr);
			assert_int_equal(out[k].len, cases[i].want[k].len);
		}
	}
	struct lpm_prefix out[256];
	size_t n = lpm_range_to_prefixes(128, 0, ~(u128)0, out);
	assert_int_equal(n, 1);
	assert_int_equal(out[0].len, 0);
}

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static u128 rnd128(void)
{
	return ((u128)rnd() << 64) | rnd();
}

/* Random ranges decompose into prefixes that exactly tile the range. */
static void test_decompose_random(void **state)
{
	for (int iter = 0; iter < 20000; iter++) {
		unsigned width = iter % 2 ? 128 : 32;
		u128 a = rnd128() & ones(width), b = rnd128() & ones(width);
		if (iter % 3 == 0)
			b = a + (rnd() % 5000);
		b &= ones(width);
		if (a > b) {
			u128 t = a;
			a = b;
			b = t;
		}
		struct lpm_prefix out[260];
		size_t n = lpm_range_to_prefixes(width, a, b, out);
		assert_true(n >= 1 && n <= 2 * width);
		u128 next = a;
		for (size_t k = 0; k < n; k++) {
			assert_true(out[k].addr == next);
			u128 host = ones(width - out[k].len);
			assert_true((out[k].addr & host) == 0);
			next = out[k].addr + host + 1;
		}
		assert_true(next - 1 == b);
	}
}

struct range {
	int family;
	u128 lo, hi;
	uint32_t value;
};

/* What the configuration promises: the narrowest range containing x. */
static uint32_t brute(const struct range *r, size_t n, int family, u128 x)
{
	uint32_t best = LPM_NONE;
	u128 best_size = 0;
	for (size_t i = 0; i < n; i++) {
		if (r[i].family != family || x < r[i].lo || x > r[i].hi)
			continue;
		u128 size = r[i].hi - r[i].lo;
		if (best == LPM_NONE || size < best_size) {
			best = r[i].value;
			best_size = size;
		}
	}
	return best;
}

static struct lpm *build_from_ranges(const struct range *r, size_t n)
{
	struct lpm_entry *e = malloc(n * 256 * sizeof(*e));
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		struct lpm_prefix p[256];
		size_t k = lpm_range_to_prefixes(r[i].family == 4 ? 32 : 128, r[i].lo, r[i].hi, p);
		for (size_t j = 0; j < k; j++)
			e[m++] = (struct lpm_entry){r[i].family, p[j], r[i].hi - r[i].lo, r[i].value};
	}
	struct lpm *t = lpm_build(e, m);
	free(e);
	return t;
}

/* Nested-or-disjoint random ranges (what the config accepts). */
static size_t random_nested(struct range *r, size_t want, int family, unsigned width,
			    u128 base, unsigned span_bits)
{
	size_t n = 0;
	while (n < want) {
		u128 lo = base + (rnd128() & ones(span_bits));
		u128 len = (rnd() % 4 == 0) ? 0 : (rnd128() & ones(rnd() % (span_bits / 2 + 1)));
		u128 hi = lo + len;
		if (hi < lo || hi > (base | ones(span_bits)) || (width == 32 && hi > ones(32)))
			continue;
		bool ok = true;
		for (size_t i = 0; i < n && ok; i++) {
			if (r[i].family != family)
				continue;
			bool disjoint = hi < r[i].lo || lo > r[i].hi;
			bool nested = (lo >= r[i].lo && hi <= r[i].hi) || (r[i].lo >= lo && r[i].hi <= hi);
			bool same = lo == r[i].lo && hi == r[i].hi;
			ok = (disjoint || nested) && !same;
		}
		if (!ok)
			continue;
		r[n] = (struct range){family, lo, hi, (uint32_t)(rnd() % 7)};
		n++;
	}
	return n;
}

static void check_table(const struct range *r, size_t n, int rounds)
{
	struct lpm *t = build_from_ranges(r, n);
	assert_non_null(t);
	for (int i = 0; i < rounds; i++) {
		const struct range *pick = &r[rnd() % n];
		u128 x;
		switch (rnd() % 4) {
		case 0: x = pick->lo; break;
		case 1: x = pick->hi; break;
		case 2: x = pick->lo + (pick->hi > pick->lo ? rnd128() % (pick->hi - pick->lo + 1) : 0); break;
		default: x = pick->hi + 1; break;
		}
		if (pick->family == 4)
			x &= ones(32);
		uint32_t want = brute(r, n, pick->family, x);
		uint32_t got = lpm_lookup(t, pick->family, x);
		if (want != got)
			fail_msg("family %d x=%llx:%llx want %u got %u", pick->family,
				 (unsigned long long)(x >> 64), (unsigned long long)x, want, got);
	}
	lpm_free(t);
}

static void test_random_cross_check(void **state)
{
	static struct range r[400];
	for (int table = 0; table < 60; table++) {
		size_t n = 0;
		/* v4 over the whole space, over a /16, and v6 clustered in one /32 */
		n += random_nested(r + n, 60, 4, 32, 0, table % 2 ? 32 : 16);
		n += random_nested(r + n, 60, 6, 128, (u128)0x20010db8 << 96, 96);
		if (table % 3 == 0)
			n += random_nested(r + n, 20, 6, 128, 0, 128);
		check_table(r, n, 5000);
	}
}

static void test_specific_wins(void **state)
{
	/* 0/0 frontend, a /16, a range inside it and a single address. */
	struct range r[] = {
		{4, 0, ones(32), 1},
		{4, 0x0a010000, 0x0a01ffff, 2},
		{4, 0x0a010010, 0x0a010020, 3},
		{4, 0x0a010015, 0x0a010015, 4},
		{6, 0, ~(u128)0, 5},
	};
	struct lpm *t = build_from_ranges(r, 5);
	static const struct { int f; uint32_t x; uint32_t want; } cases[] = {
		{4, 0x01020304, 1}, {4, 0x0a010000, 2}, {4, 0x0a01000f, 2},
		{4, 0x0a010010, 3}, {4, 0x0a010014, 3}, {4, 0x0a010015, 4},
		{4, 0x0a010016, 3}, {4, 0x0a010020, 3}, {4, 0x0a010021, 2},
		{4, 0x0a01ffff, 2}, {4, 0x0a020000, 1}, {4, 0xffffffff, 1},
		{6, 1, 5},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		assert_int_equal(lpm_lookup(t, cases[i].f, cases[i].x), cases[i].want);
	lpm_free(t);
	/* Empty table: nothing matches. */
	t = lpm_build(NULL, 0);
	assert_non_null(t);
	assert_int_equal(lpm_lookup(t, 4, 5), LPM_NONE);
	assert_int_equal(lpm_lookup(t, 6, 5), LPM_NONE);
	lpm_free(t);
}

/* A prefix shared by a wider and a narrower range goes to the narrower. */
static void test_identical_prefix_tiebreak(void **state)
{
	struct lpm_entry e[] = {
		{4, {0x0a000000, 24}, 511, 1},   /* from 10.0.0.0-10.0.1.255 */
		{4, {0x0a000100, 24}, 511, 1},
		{4, {0x0a000000, 24}, 255, 2},   /* from 10.0.0.0/24 */
	};
	struct lpm *t = lpm_build(e, 3);
	assert_int_equal(lpm_lookup(t, 4, 0x0a000005), 2);
	assert_int_equal(lpm_lookup(t, 4, 0x0a000105), 1);
	assert_int_equal(lpm_lookup(t, 4, 0x0a000205), LPM_NONE);
	lpm_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_decompose_table),
		cmocka_unit_test(test_decompose_random),
		cmocka_unit_test(test_specific_wins),
		cmocka_unit_test(test_identical_prefix_tiebreak),
		cmocka_unit_test(test_random_cross_check),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
