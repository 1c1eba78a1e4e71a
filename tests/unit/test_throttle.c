/* Unit tests for engine/throttle.c with a fake clock: the message-rate
 * token bucket (burst, refill, slow rates, lowered limits), the names
 * sources are counted under (IPv6 /64), and the bounded table: filling it,
 * reuse of idle entries only, failing closed when full, the rate-limited
 * report, and threads racing on it. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- source names --------------------------------------------------------- */

static struct sockaddr_storage addr(const char *text)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	if (strchr(text, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		s6->sin6_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, text, &s6->sin6_addr), 1);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		s4->sin_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, text, &s4->sin_addr), 1);
	}
	return ss;
}

static void test_source_names(void **state)
{
	static const struct {
		const char *name, *client, *range, *want;
	} cases[] = {
		{"IPv4: the address", "10.1.2.3", "0.0.0.0/0", "10.1.2.3"},
		{"IPv4, no range", "192.0.2.200", NULL, "192.0.2.200"},
		{"IPv4-mapped: as IPv4", "::ffff:10.1.2.3", "10.0.0.0/8", "10.1.2.3"},
		{"IPv6: its /64", "2001:db8:1:2:aaaa:bbbb:cccc:dddd", "::/0", "2001:db8:1:2::/64"},
		{"IPv6, another host of that /64", "2001:db8:1:2::1", "::/0", "2001:db8:1:2::/64"},
		{"IPv6, the next /64", "2001:db8:1:3::1", "::/0", "2001:db8:1:3::/64"},
		{"IPv6, no range", "2001:db8::5", NULL, "2001:db8::/64"},
		{"IPv6, a /48 range", "2001:db8:7:9::5", "2001:db8:7::/48", "2001:db8:7:9::/64"},
		{"IPv6, the range is that /64", "2001:db8:1:2::7", "2001:db8:1:2::/64",
		 "2001:db8:1:2::/64"},
		{"IPv6, narrower than a /64: the host", "2001:db8:1:2::7", "2001:db8:1:2::/80",
		 "2001:db8:1:2::7"},
		{"IPv6, a listed host", "2001:db8::10", "2001:db8::10", "2001:db8::10"},
		{"IPv6, a short range of hosts", "2001:db8::15", "2001:db8::10-2001:db8::20",
		 "2001:db8::15"},
		{"IPv6, the longest /64", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::/0",
		 "ffff:ffff:ffff:ffff::/64"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct sockaddr_storage ss = addr(cases[i].client);
		struct ip_range r;
		if (cases[i].range && !conf_parse_range(cases[i].range, &r))
			fail_msg("%s: bad range %s", cases[i].name, cases[i].range);
		char out[THROTTLE_SOURCE_MAX];
		throttle_source_name(&ss, cases[i].range ? &r : NULL, out, sizeof(out));
		CHECK_STR(cases[i].name, out, cases[i].want);
	}
}

/* ---- the table -------------------------------------------------------------- */

#define T0 100000ull   /* the fake clock at throttle_init */

static struct rconn conn_rc(unsigned id, uint64_t per_source)
{
	struct rconn rc;
	memset(&rc, 0, sizeof(rc));
	rc.stats_id = id;
	rc.name = "Relay";
	rc.max_inbound_connection_per_source = per_source;
	return rc;
}

static const char *ip(unsigned n)
{
	static char buf[8][32];
	static unsigned k;
	char *b = buf[k++ % 8];
	snprintf(b, 32, "10.%u.%u.%u", n >> 16 & 255, n >> 8 & 255, n & 255);
	return b;
}

static struct throttle_entry *connect_ok(struct throttle *t, const struct rconn *rc,
					 const char *source, uint64_t now)
{
	struct throttle_entry *e = (void *)1;
	int32_t fig = 0, lim = 0;
	enum throttle_verdict v = throttle_connect(t, rc, source, now, &e, &fig, &lim);
	if (v != THROTTLE_ADMIT)
		fail_msg("%s: verdict %d, want admitted", source, v);
	assert_non_null(e);
	CHECK_STR(source, e->source, source);
	return e;
}

static enum throttle_verdict connect_v(struct throttle *t, const struct rconn *rc,
				       const char *source, uint64_t now)
{
	struct throttle_entry *e = (void *)1;
	int32_t fig = 0, lim = 0;
	enum throttle_verdict v = throttle_connect(t, rc, source, now, &e, &fig, &lim);
	if (v != THROTTLE_ADMIT)
		assert_null(e);
	else
		throttle_disconnect(t, rc, e);
	if (v == THROTTLE_FULL)
		assert_int_equal(lim, (int32_t)t->size);
	return v;
}

static void test_size_bounds(void **state)
{
	struct throttle t;
	assert_int_equal(throttle_init(&t, THROTTLE_SIZE_MIN - 1, T0), -1);
	assert_int_equal(throttle_init(&t, THROTTLE_SIZE_MAX + 1, T0), -1);
	assert_int_equal(throttle_init(&t, 0, T0), 0);
	assert_int_equal(t.size, THROTTLE_SIZE_DEFAULT);
	throttle_free(&t);
	assert_int_equal(sizeof(struct throttle_entry), 64);
	/* 64 + 8 bytes a slot, 16 a bucket of 32 slots: 18.1 MiB */
	assert_int_equal(throttle_table_bytes(THROTTLE_SIZE_DEFAULT), 19005440);
}

/* Every slot held: a new source is refused, sources already in keep
 * working, and the refusal counts nothing in. */
static void test_full_table_fails_closed(void **state)
{
	struct throttle t;
	assert_int_equal(throttle_init(&t, 16, T0), 0);
	struct rconn rc = conn_rc(1, 5);
	struct throttle_entry *held[16];
	for (unsigned i = 0; i < 16; i++)
		held[i] = connect_ok(&t, &rc, ip(i), T0);
	for (unsigned i = 0; i < 16; i++)
		for (unsigned j = 0; j < i; j++)
			assert_ptr_not_equal(held[i], held[j]);
	assert_int_equal(atomic_load(&t.connector_conns[1]), 16);
	assert_int_equal(connect_v(&t, &rc, ip(100), T0), THROTTLE_FULL);
	assert_int_equal(connect_v(&t, &rc, ip(101), T0 + 3600000), THROTTLE_FULL);
	assert_int_equal(atomic_load(&t.connector_conns[1]), 16);
	/* An existing source: its own entry, its own count. */
	struct throttle_entry *again = connect_ok(&t, &rc, ip(7), T0);
	assert_ptr_equal(again, held[7]);
	assert_int_equal(atomic_load(&again->connections), 2);
	throttle_disconnect(&t, &rc, again);
	/* The per-source limit still holds for it. */
	for (int k = 0; k < 4; k++)
		connect_ok(&t, &rc, ip(3), T0);
	assert_int_equal(connect_v(&t, &rc, ip(3), T0), THROTTLE_OVER_SOURCE);
	/* Kept entries cannot be had either, nor made: NULL, never unlimited. */
	assert_null(throttle_entry(&t, THROTTLE_SEND_CONNECTOR, "send:Smart hosts"));
	assert_null(throttle_entry(&t, 1, ""));
	/* One source closes all its connections: room for exactly one new. */
	for (int k = 0; k < 5; k++)
		throttle_disconnect(&t, &rc, held[3]);
	assert_int_equal(atomic_load(&held[3]->connections), 0);
	connect_ok(&t, &rc, ip(200), T0);
	assert_int_equal(connect_v(&t, &rc, ip(201), T0), THROTTLE_FULL);
	assert_int_equal(connect_v(&t, &rc, ip(3), T0), THROTTLE_FULL); /* it was reused */
	throttle_free(&t);
}

/* Idle entries (no connection, bucket full or never used) are reused, as
 * many times over as sources come. */
static void test_idle_entries_are_reused(void **state)
{
	struct throttle t;
	assert_int_equal(throttle_init(&t, 16, T0), 0);
	struct rconn rc = conn_rc(2, 0);
	for (unsigned i = 0; i < 100000; i++) {
		struct throttle_entry *e = connect_ok(&t, &rc, ip(i), T0 + i);
		throttle_disconnect(&t, &rc, e);
	}
	/* Then 16 at once, held, then nothing more. */
	struct throttle_entry *held[16];
	for (unsigned i = 0; i < 16; i++)
		held[i] = connect_ok(&t, &rc, ip(500000 + i), T0 + 200000);
	assert_int_equal(connect_v(&t, &rc, ip(1), T0 + 200000), THROTTLE_FULL);
	for (unsigned i = 0; i < 16; i++) {
		assert_ptr_equal(connect_ok(&t, &rc, ip(500000 + i), T0 + 200000), held[i]);
		assert_int_equal(atomic_load(&held[i]->connections), 2);
	}
	throttle_free(&t);
}

/* A bucket is kept until it is full again: exactly when one minute's
 * share of what was taken has come back, at the bucket's own rate. */
static void test_refilling_buckets_are_kept(void **state)
{
	static const struct {
		const char *name;
		uint32_t rate;
		int taken;
		uint64_t kept_until;   /* ms after the last take: full again then */
	} cases[] = {
		{"60/min, one taken", 60, 1, 1000},
		{"60/min, all taken: at its limit", 60, 61, 60000},
		{"6000/min, ten taken", 6000, 10, 100},
		{"7/min, one taken", 7, 1, 8572}, /* 60000/7 = 8571.4 ms */
	};
	for (size_t c = 0; c < N_ELEMS(cases); c++) {
		struct throttle t;
		assert_int_equal(throttle_init(&t, 16, T0), 0);
		struct rconn rc = conn_rc(3, 0);
		uint64_t at = T0 + 5000;
		for (unsigned i = 0; i < 16; i++) {
			struct throttle_entry *e = connect_ok(&t, &rc, ip(i), at);
			double left;
			for (int k = 0; k < cases[c].taken; k++)
				throttle_take_message(&t, e, cases[c].rate, at, &left);
			throttle_disconnect(&t, &rc, e);
		}
		uint64_t due = at + cases[c].kept_until;
		CHECK_INT(cases[c].name, connect_v(&t, &rc, "192.0.2.1", due - 1), THROTTLE_FULL);
		CHECK_INT(cases[c].name, connect_v(&t, &rc, "192.0.2.1", due), THROTTLE_ADMIT);
		/* The source whose slot went is a new source: its bucket starts
		 * full; the others still remember theirs. */
		throttle_free(&t);
	}
}

/* Held entries (a connection open) and kept ones (made by throttle_entry:
 * send connectors, users, whole connectors) survive any churn. */
static void test_held_and_kept_entries_survive(void **state)
{
	struct throttle t;
	assert_int_equal(throttle_init(&t, 64, T0), 0);
	struct rconn rc = conn_rc(4, 0);
	struct throttle_entry *a = connect_ok(&t, &rc, "198.51.100.7", T0);
	double left;
	throttle_take_message(&t, a, 60, T0, &left);
	struct throttle_entry *send = throttle_entry(&t, THROTTLE_SEND_CONNECTOR, "send:Internet");
	struct throttle_entry *user = throttle_entry(&t, 4, "user:alice");
	struct throttle_entry *all = throttle_entry(&t, 4, "");
	assert_non_null(send);
	assert_non_null(user);
	assert_non_null(all);
	assert_ptr_not_equal(user, all);
	atomic_fetch_add(&send->connections, 3); /* deliver.c counts its own */
	for (unsigned i = 0; i < 20000; i++) {
		struct throttle_entry *e = connect_ok(&t, &rc, ip(i), T0 + 120000 + i);
		throttle_disconnect(&t, &rc, e);
	}
	uint64_t later = T0 + 3600000;
	assert_ptr_equal(connect_ok(&t, &rc, "198.51.100.7", later), a);
	assert_int_equal(atomic_load(&a->connections), 2);
	assert_ptr_equal(throttle_entry(&t, THROTTLE_SEND_CONNECTOR, "send:Internet"), send);
	assert_int_equal(atomic_load(&send->connections), 3);
	assert_ptr_equal(throttle_entry(&t, 4, "user:alice"), user);
	assert_ptr_equal(throttle_entry(&t, 4, ""), all);
	/* A connector's "" is not another connector's. */
	assert_ptr_not_equal(throttle_entry(&t, 5, ""), all);
	CHECK_STR("kept", user->source, "user:alice");
	throttle_free(&t);
}

/* A table of kept entries only: full for good, and says so. */
static void test_kept_entries_fill_the_table(void **state)
{
	struct throttle t;
	assert_int_equal(throttle_init(&t, 16, T0), 0);
	struct throttle_entry *k[16];
	for (unsigned i = 0; i < 16; i++) {
		char name[32];
		snprintf(name, sizeof(name), "user:u%u", i);
		assert_non_null(k[i] = throttle_entry(&t, 1, name));
	}
	assert_null(throttle_entry(&t, 1, "user:one-more"));
	struct rconn rc = conn_rc(1, 0);
	assert_int_equal(connect_v(&t, &rc, "10.0.0.1", T0 + 86400000), THROTTLE_FULL);
	assert_ptr_equal(throttle_entry(&t, 1, "user:u9"), k[9]);
	throttle_free(&t);
}

/* How full a big table gets before some pair of buckets is all taken:
 * the capacity one can count on (one bucket per key: ~47%; the old 64-slot
 * linear probe: ~65%). */
static void test_usable_share_of_a_big_table(void **state)
{
	struct throttle t;
	assert_int_equal(throttle_init(&t, 1u << 16, T0), 0);
	struct rconn rc = conn_rc(1, 0);
	unsigned n = 0;
	for (;; n++) {
		struct throttle_entry *e;
		int32_t fig, lim;
		if (throttle_connect(&t, &rc, ip(n), T0, &e, &fig, &lim) != THROTTLE_ADMIT)
			break;
	}
	print_message("first refusal at %u of %u slots (%.1f%%)\n", n, t.size, 100.0 * n / t.size);
	assert_true(n >= t.size * 90 / 100);
	throttle_free(&t);
}

static void test_full_note_once_a_second(void **state)
{
	struct throttle t;
	assert_int_equal(throttle_init(&t, 16, T0), 0);
	static const struct {
		uint64_t at;
		uint64_t want;
	} steps[] = {
		{5000, 1}, {5001, 0}, {5500, 0}, {5999, 0}, {6000, 4}, {6000, 0}, {9000, 2},
	};
	for (size_t i = 0; i < N_ELEMS(steps); i++) {
		char name[32];
		snprintf(name, sizeof(name), "step %zu", i);
		CHECK_INT(name, throttle_full_note(&t, THROTTLE_FULL_REFUSED, 1, steps[i].at),
			  steps[i].want);
	}
	/* Deferred deliveries are counted and reported apart. */
	CHECK_INT("deferred", throttle_full_note(&t, THROTTLE_FULL_DEFERRED, 3, 9001), 3);
	CHECK_INT("deferred", throttle_full_note(&t, THROTTLE_FULL_DEFERRED, 2, 9002), 0);
	CHECK_INT("refused", throttle_full_note(&t, THROTTLE_FULL_REFUSED, 1, 10000), 1);
	CHECK_INT("deferred", throttle_full_note(&t, THROTTLE_FULL_DEFERRED, 1, 10001), 3);
	throttle_free(&t);
}

static void test_print_names_the_64(void **state)
{
	struct throttle t;
	assert_int_equal(throttle_init(&t, 64, T0), 0);
	struct rconn rc = conn_rc(1, 2);
	struct conf c;
	memset(&c, 0, sizeof(c));
	c.rc = &rc;
	c.nrc = 1;
	struct sockaddr_storage ss = addr("2001:db8:1:2::99");
	char src[THROTTLE_SOURCE_MAX];
	throttle_source_name(&ss, NULL, src, sizeof(src));
	connect_ok(&t, &rc, src, T0);
	connect_ok(&t, &rc, src, T0);
	connect_ok(&t, &rc, "192.0.2.9", T0);
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	throttle_print(&t, &c, T0, out);
	fclose(out);
	assert_non_null(strstr(text, " 2001:db8:1:2::/64 "));
	assert_null(strstr(text, "192.0.2.9"));  /* 1 of 2: not near the limit */
	assert_non_null(strstr(text, "table: 64 slots (0 MiB), 2 in use: 2 with connections, "
				     "0 refilling, 0 kept"));
	free(text);
	throttle_free(&t);
}

/* ---- threads -------------------------------------------------------------- */

#define THREADS 4
#define ROUNDS 200000
#define HOT 4          /* sources every thread hits */
#define PER_SOURCE 2   /* their connection limit */

struct race {
	struct throttle t;
	struct rconn rc;
	_Atomic int inside[HOT];    /* admitted and not yet gone, by our count */
	_Atomic int worst[HOT];
	_Atomic long admitted, full, over;
	_Atomic int bad;
};

static void *racer(void *arg)
{
	struct race *r = arg;
	static _Atomic unsigned seed_next = 1;
	unsigned seed = atomic_fetch_add(&seed_next, 7919);
	struct throttle_entry *keep[8] = {0};
	const char *keep_src[8] = {0};
	char keep_buf[8][32];
	for (long i = 0; i < ROUNDS; i++) {
		seed = seed * 1103515245u + 12345u;
		unsigned pick = seed >> 8;
		bool hot = pick % 4 == 0;
		char source[32];
		if (hot)
			snprintf(source, sizeof(source), "hot-%u", pick % HOT);
		else
			snprintf(source, sizeof(source), "10.9.%u.%u", (pick >> 8) % 8, pick % 256);
		struct throttle_entry *e;
		int32_t fig, lim;
		enum throttle_verdict v =
			throttle_connect(&r->t, &r->rc, source, T0 + (uint64_t)i, &e, &fig, &lim);
		if (v == THROTTLE_FULL) {
			atomic_fetch_add(&r->full, 1);
			continue;
		}
		if (v != THROTTLE_ADMIT) {
			atomic_fetch_add(&r->over, 1);
			continue;
		}
		atomic_fetch_add(&r->admitted, 1);
		/* Held: it must stay this source's. */
		if (strcmp(e->source, source) != 0)
			atomic_store(&r->bad, 1);
		if (hot) {
			unsigned h = pick % HOT;
			int now = atomic_fetch_add(&r->inside[h], 1) + 1;
			int w = atomic_load(&r->worst[h]);
			while (now > w && !atomic_compare_exchange_weak(&r->worst[h], &w, now))
				;
			if (strcmp(e->source, source) != 0)
				atomic_store(&r->bad, 1);
			atomic_fetch_sub(&r->inside[h], 1);
			throttle_disconnect(&r->t, &r->rc, e);
			continue;
		}
		/* Cold sources: some stay a while, so the table stays busy. */
		unsigned slot = pick % 8;
		if (keep[slot]) {
			if (strcmp(keep[slot]->source, keep_src[slot]) != 0)
				atomic_store(&r->bad, 1);
			throttle_disconnect(&r->t, &r->rc, keep[slot]);
		}
		keep[slot] = e;
		snprintf(keep_buf[slot], sizeof(keep_buf[slot]), "%s", source);
		keep_src[slot] = keep_buf[slot];
	}
	for (unsigned s = 0; s < 8; s++)
		if (keep[s])
			throttle_disconnect(&r->t, &r->rc, keep[s]);
	return NULL;
}

/* Threads connect and disconnect hot and cold sources on a table small
 * enough to be reused all the time: a held entry never changes hands, a
 * source never gets two entries (its limit would split: seen as more than
 * PER_SOURCE inside at once), and every count comes back to zero. */
static void test_threads_race(void **state)
{
	struct race *r = calloc(1, sizeof(*r));
	assert_non_null(r);
	assert_int_equal(throttle_init(&r->t, 48, T0), 0);
	r->rc = conn_rc(9, PER_SOURCE);
	pthread_t th[THREADS];
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, racer, r), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(atomic_load(&r->bad), 0);
	for (int h = 0; h < HOT; h++)
		assert_true(atomic_load(&r->worst[h]) <= PER_SOURCE);
	assert_true(atomic_load(&r->admitted) > ROUNDS / 2);
	assert_true(atomic_load(&r->over) > 0);  /* the hot ones met their limit */
	assert_int_equal(atomic_load(&r->t.connector_conns[9]), 0);
	for (uint32_t i = 0; i < r->t.size; i++) {
		assert_int_equal(atomic_load(&r->t.slot[i].connections), 0);
		uint64_t k = atomic_load(&r->t.key[i]);
		assert_true(k != 1);
		for (uint32_t j = 0; k && j < i; j++)
			assert_true(atomic_load(&r->t.key[j]) != k);
	}
	print_message("admitted %ld, over the limit %ld, table full %ld\n",
		      (long)r->admitted, (long)r->over, (long)r->full);
	throttle_free(&r->t);
	free(r);
}

/* Two threads share one source, connecting and disconnecting, so its
 * entry is idle half the time, while two others churn new sources through
 * a one-bucket table and so try to take that entry's slot all the time:
 * the sharers must always get one and the same entry, never one that
 * changes hands while held. */
struct share {
	struct throttle t;
	struct rconn rc;
	pthread_mutex_t mu;
	struct throttle_entry *cur;  /* the sharers' entry while any holds it */
	int inside;
	_Atomic int stop, bad;
	_Atomic long shared, churned;
};

static void *sharer(void *arg)
{
	struct share *s = arg;
	while (!atomic_load(&s->stop)) {
		struct throttle_entry *e;
		int32_t fig, lim;
		if (throttle_connect(&s->t, &s->rc, "shared", T0, &e, &fig, &lim) != THROTTLE_ADMIT)
			continue;
		pthread_mutex_lock(&s->mu);
		if (s->inside && s->cur != e)
			atomic_store(&s->bad, 1);  /* two entries for one source */
		s->cur = e;
		s->inside++;
		pthread_mutex_unlock(&s->mu);
		for (int k = 0; k < 50; k++)
			if (strcmp(e->source, "shared") != 0 || atomic_load(&e->connections) < 1)
				atomic_store(&s->bad, 2);  /* taken while held */
		pthread_mutex_lock(&s->mu);
		s->inside--;
		pthread_mutex_unlock(&s->mu);
		throttle_disconnect(&s->t, &s->rc, e);
		atomic_fetch_add(&s->shared, 1);
	}
	return NULL;
}

static void *churner(void *arg)
{
	struct share *s = arg;
	static _Atomic unsigned next;
	while (!atomic_load(&s->stop)) {
		char name[32];
		snprintf(name, sizeof(name), "churn-%u", atomic_fetch_add(&next, 1));
		if (connect_v(&s->t, &s->rc, name, T0) == THROTTLE_ADMIT)
			atomic_fetch_add(&s->churned, 1);
	}
	return NULL;
}

static void test_threads_share_while_slots_churn(void **state)
{
	struct share *s = calloc(1, sizeof(*s));
	assert_non_null(s);
	assert_int_equal(throttle_init(&s->t, 16, T0), 0);
	s->rc = conn_rc(2, 0);
	pthread_mutex_init(&s->mu, NULL);
	pthread_t th[4];
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&th[i], NULL, i < 2 ? sharer : churner, s), 0);
	while (atomic_load(&s->shared) < 300000 || atomic_load(&s->churned) < 300000)
		sched_yield();
	atomic_store(&s->stop, 1);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(atomic_load(&s->bad), 0);
	for (uint32_t i = 0; i < s->t.size; i++)
		assert_int_equal(atomic_load(&s->t.slot[i].connections), 0);
	throttle_free(&s->t);
	free(s);
}

/* Threads make the same new sources at the same moment (a barrier each
 * round), in a table small enough that every round reuses slots: one
 * entry per source, whoever makes it. */
#define MAKERS 4
#define MAKE_ROUNDS 20000

struct makers {
	struct throttle t;
	struct rconn rc;
	pthread_barrier_t bar;
	struct throttle_entry *got[MAKERS][2];
	_Atomic int bad;
	_Atomic unsigned id;
};

static void *maker(void *arg)
{
	struct makers *m = arg;
	unsigned me = atomic_fetch_add(&m->id, 1);
	for (unsigned r = 0; r < MAKE_ROUNDS; r++) {
		char a[32], b[32];
		snprintf(a, sizeof(a), "r%u-a", r);
		snprintf(b, sizeof(b), "r%u-b", r);
		pthread_barrier_wait(&m->bar);
		/* Half start with a, half with b: both made in a race. */
		m->got[me][me & 1] = connect_ok(&m->t, &m->rc, me & 1 ? b : a, T0);
		m->got[me][!(me & 1)] = connect_ok(&m->t, &m->rc, me & 1 ? a : b, T0);
		pthread_barrier_wait(&m->bar);
		for (unsigned o = 0; o < MAKERS; o++)
			if (m->got[o][0] != m->got[me][0] || m->got[o][1] != m->got[me][1])
				atomic_store(&m->bad, 1);
		pthread_barrier_wait(&m->bar);
		throttle_disconnect(&m->t, &m->rc, m->got[me][0]);
		throttle_disconnect(&m->t, &m->rc, m->got[me][1]);
	}
	return NULL;
}

static void test_threads_make_one_entry(void **state)
{
	struct makers *m = calloc(1, sizeof(*m));
	assert_non_null(m);
	assert_int_equal(throttle_init(&m->t, 16, T0), 0);
	m->rc = conn_rc(3, 0);
	pthread_barrier_init(&m->bar, NULL, MAKERS);
	pthread_t th[MAKERS];
	for (int i = 0; i < MAKERS; i++)
		assert_int_equal(pthread_create(&th[i], NULL, maker, m), 0);
	for (int i = 0; i < MAKERS; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&m->bar);
	assert_int_equal(atomic_load(&m->bad), 0);
	throttle_free(&m->t);
	free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_burst_then_refill),
		cmocka_unit_test(test_fractions_accumulate),
		cmocka_unit_test(test_lowered_limit_caps_tokens),
		cmocka_unit_test(test_clock_wraps),
		cmocka_unit_test(test_source_names),
		cmocka_unit_test(test_size_bounds),
		cmocka_unit_test(test_full_table_fails_closed),
		cmocka_unit_test(test_idle_entries_are_reused),
		cmocka_unit_test(test_refilling_buckets_are_kept),
		cmocka_unit_test(test_held_and_kept_entries_survive),
		cmocka_unit_test(test_kept_entries_fill_the_table),
		cmocka_unit_test(test_usable_share_of_a_big_table),
		cmocka_unit_test(test_full_note_once_a_second),
		cmocka_unit_test(test_print_names_the_64),
		cmocka_unit_test(test_threads_race),
		cmocka_unit_test(test_threads_share_while_slots_churn),
		cmocka_unit_test(test_threads_make_one_entry),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
