/* Unit tests for message ids (engine/wctx.c): unique across every worker
 * count server.workers allows (1..1024), increasing per worker whatever the
 * clock does, unique across a restart with a later clock, and the one text
 * form (16 hex digits). The clock is driven through wctx_next_msgid_at(). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wctx.h"

#define NW WCTX_MSGID_MAX_WORKERS
#define T0 1795442520000ll /* Mon, 23 Nov 2026 14:02:00 UTC, in ms */
#define COUNTER_SPAN (1u << 14) /* ids one worker gets within one ms */

static struct wctx workers[NW];

static void workers_reset(unsigned n)
{
	memset(workers, 0, sizeof(workers));
	for (unsigned i = 0; i < n; i++) {
		workers[i].id = i;
		workers[i].nworkers = n;
	}
}

/* Every id ever issued in one test, and the last one per worker. */
struct ids {
	uint64_t *v;
	size_t n, cap;
	uint64_t last[NW];
	bool any[NW];
};

static void ids_init(struct ids *s, size_t cap)
{
	memset(s, 0, sizeof(*s));
	s->v = malloc(cap * sizeof(*s->v));
	assert_non_null(s->v);
	s->cap = cap;
}

/* One id from worker w at wall clock now: larger than that worker's last. */
static uint64_t take(struct ids *s, unsigned w, int64_t now)
{
	uint64_t id = wctx_next_msgid_at(&workers[w], now);
	if (id == 0)
		fail_msg("worker %u: id 0 (the spool's empty slot)", w);
	if (s->any[w] && id <= s->last[w])
		fail_msg("worker %u: id %016llx after %016llx", w, (unsigned long long)id,
			 (unsigned long long)s->last[w]);
	s->any[w] = true;
	s->last[w] = id;
	assert_true(s->n < s->cap);
	s->v[s->n++] = id;
	return id;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void assert_no_duplicates(const char *name, uint64_t *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	for (size_t i = 1; i < n; i++)
		if (v[i] == v[i - 1])
			fail_msg("%s: id %016llx issued twice", name, (unsigned long long)v[i]);
}

/* Workers 0..n-1 take ids in an order that changes every round, several
 * rounds per millisecond: ids [first, s->n) are the new ones. */
static int64_t interleave(struct ids *s, unsigned n, unsigned rounds, int64_t start)
{
	int64_t now = start;
	for (unsigned r = 0; r < rounds; r++) {
		now = start + r / 4;
		/* forwards or backwards, from a different worker each round */
		for (unsigned k = 0; k < n; k++) {
			unsigned i = r % 2 ? n - 1 - k : k;
			take(s, (i + r * 37) % n, now);
		}
	}
	return now;
}

static void test_unique_for_every_worker_count(void **state)
{
	static const unsigned counts[] = {1, 2, 255, 256, 257, 512, 1000, 1023, 1024};
	for (size_t i = 0; i < N_ELEMS(counts); i++) {
		unsigned n = counts[i];
		unsigned rounds = 64;
		struct ids s;
		ids_init(&s, (size_t)n * rounds);
		workers_reset(n);
		interleave(&s, n, rounds, T0);
		char name[64];
		snprintf(name, sizeof(name), "%u workers", n);
		CHECK_INT(name, s.n, (size_t)n * rounds);
		assert_no_duplicates(name, s.v, s.n);
		free(s.v);
	}
}

static void test_counter_wrap_within_one_ms(void **state)
{
	/* Worker 5 takes more ids in one millisecond than the counter holds,
	 * while its neighbours and the highest worker take theirs. */
	struct ids s;
	size_t heavy = 3 * COUNTER_SPAN + 7;
	ids_init(&s, heavy + 4 * 2000);
	workers_reset(NW);
	static const unsigned others[] = {4, 6, 5 + 256, NW - 1};
	for (size_t k = 0; k < heavy; k++) {
		take(&s, 5, T0);
		if (k % 64 == 0)
			for (size_t j = 0; j < N_ELEMS(others); j++)
				take(&s, others[j], T0 + (int64_t)(k / COUNTER_SPAN));
	}
	/* The clock catches up with the base that ran ahead, then passes it:
	 * still increasing. */
	for (int64_t t = T0; t <= T0 + 5; t++)
		for (unsigned k = 0; k < 100; k++)
			take(&s, 5, t);
	assert_no_duplicates("counter wrap", s.v, s.n);
	free(s.v);
}

static void test_clock_going_back(void **state)
{
	/* A wall clock stepped back (NTP) never makes a worker's ids smaller. */
	static const int64_t clock[] = {T0, T0 + 10, T0 - 60000, T0 - 60000, T0 + 5,
					T0 + 11, 0, -1, T0 + 12};
	struct ids s;
	ids_init(&s, N_ELEMS(clock) * 300 * 2);
	workers_reset(2);
	for (size_t i = 0; i < N_ELEMS(clock); i++)
		for (unsigned k = 0; k < 300; k++) {
			take(&s, 0, clock[i]);
			take(&s, 1, clock[i]);
		}
	assert_no_duplicates("clock back", s.v, s.n);
	free(s.v);
}

static void test_restart_later_clock(void **state)
{
	/* A run with 1024 workers, a restart a millisecond after its last id
	 * with another worker count (and one more with 1024 again): no id of
	 * a later run equals one of an earlier run, and each is larger. */
	static const unsigned runs[] = {NW, 3, NW, 1};
	size_t cap = 0;
	for (size_t r = 0; r < N_ELEMS(runs); r++)
		cap += (size_t)runs[r] * 32;
	uint64_t *all = malloc(cap * sizeof(*all));
	assert_non_null(all);
	size_t nall = 0;
	int64_t now = T0;
	uint64_t prev_max = 0;
	for (size_t r = 0; r < N_ELEMS(runs); r++) {
		struct ids s;
		ids_init(&s, (size_t)runs[r] * 32);
		workers_reset(runs[r]); /* a new process: no state kept */
		now = interleave(&s, runs[r], 32, now + 1);
		uint64_t lo = UINT64_MAX, hi = 0;
		for (size_t i = 0; i < s.n; i++) {
			lo = s.v[i] < lo ? s.v[i] : lo;
			hi = s.v[i] > hi ? s.v[i] : hi;
		}
		char name[64];
		snprintf(name, sizeof(name), "run %zu (%u workers)", r, runs[r]);
		if (lo <= prev_max)
			fail_msg("%s: id %016llx not above the earlier runs' %016llx", name,
				 (unsigned long long)lo, (unsigned long long)prev_max);
		prev_max = hi;
		memcpy(all + nall, s.v, s.n * sizeof(*all));
		nall += s.n;
		free(s.v);
	}
	assert_no_duplicates("all runs", all, nall);
	free(all);
}

static void test_real_clock_and_text(void **state)
{
	/* wctx_next_msgid() reads the wall clock: the top 40 bits are the
	 * milliseconds since 2020; the text is 16 upper-case hex digits. */
	workers_reset(NW);
	int64_t before = wctx_wall_ms();
	uint64_t last = 0;
	for (unsigned k = 0; k < 50000; k++) {
		uint64_t id = wctx_next_msgid(&workers[NW - 1]);
		assert_true(id > last);
		last = id;
	}
	int64_t after = wctx_wall_ms();
	int64_t ms = (int64_t)(last >> 24) + 1577836800000ll;
	assert_true(ms >= before);
	assert_true(ms <= after + 50000 / COUNTER_SPAN + 1);
	CHECK_INT("worker field", (last >> 14) & (NW - 1), NW - 1);

	static const struct {
		uint64_t id;
		const char *want;
	} texts[] = {
		{0x1ull, "0000000000000001"},
		{0x32D717D7F3010000ull, "32D717D7F3010000"},
		{UINT64_MAX, "FFFFFFFFFFFFFFFF"},
	};
	for (size_t i = 0; i < N_ELEMS(texts); i++) {
		char out[WCTX_MSGID_LEN];
		wctx_msgid_text(texts[i].id, out);
		CHECK_STR(texts[i].want, out, texts[i].want);
	}
	char out[WCTX_MSGID_LEN];
	wctx_msgid_text(last, out);
	CHECK_INT("text length", strlen(out), 16);
	for (size_t i = 0; i < 16; i++)
		assert_true(isxdigit((unsigned char)out[i]) && !islower((unsigned char)out[i]));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_unique_for_every_worker_count),
		cmocka_unit_test(test_counter_wrap_within_one_ms),
		cmocka_unit_test(test_clock_going_back),
		cmocka_unit_test(test_restart_later_clock),
		cmocka_unit_test(test_real_clock_and_text),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
