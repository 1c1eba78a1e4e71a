/* Micro-benchmark of engine/throttle.c: the per-message check
 * (throttle_take_message() on one source, from one thread and from two
 * threads hitting the same source: the shared-cache-line worst case), and
 * the per-connection lookup in a table of the default size: a known
 * source, a new one taking an idle entry's slot, a new one refused by a
 * full table, from one thread and two. Prints one JSON line. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "throttle.h"

#define N 20000000
#define LOOKUPS 2000000
#define LIVE 100000   /* sources connected during the lookup cases */

static struct throttle t;
static struct throttle_entry *e;
static struct rconn rc;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *loop(void *arg)
{
	double left;
	long ok = 0;
	(void)arg;
	for (long i = 0; i < N; i++)
		ok += throttle_take_message(&t, e, 60000, (uint64_t)i / 1000, &left);
	return (void *)ok;
}

/* n as a dotted quad, without snprintf's cost in the figures. */
static void source(char *buf, unsigned n)
{
	for (int shift = 24; shift >= 0; shift -= 8) {
		unsigned o = n >> shift & 255;
		if (o >= 100)
			*buf++ = (char)('0' + o / 100);
		if (o >= 10)
			*buf++ = (char)('0' + o / 10 % 10);
		*buf++ = (char)('0' + o % 10);
		*buf++ = shift ? '.' : '\0';
	}
}

struct lookups {
	unsigned first, stride;  /* sources first, first + stride, ... */
	unsigned span;           /* modulo this many (0: all new) */
	long n, admitted;
};

/* Connects and disconnects sources, as a connection's begin and end do. */
static void *connect_loop(void *arg)
{
	struct lookups *l = arg;
	char buf[32];
	for (long i = 0; i < l->n; i++) {
		unsigned k = l->first + (unsigned)i * l->stride;
		source(buf, l->span ? k % l->span : k);
		struct throttle_entry *x;
		int32_t fig, lim;
		if (throttle_connect(&t, &rc, buf, 0, &x, &fig, &lim) == THROTTLE_ADMIT) {
			l->admitted++;
			throttle_disconnect(&t, &rc, x);
		}
	}
	return NULL;
}

static double per_op(struct lookups *l, int threads)
{
	pthread_t th[2];
	double t0 = now_s();
	for (int i = 0; i < threads; i++)
		pthread_create(&th[i], NULL, connect_loop, &l[i]);
	for (int i = 0; i < threads; i++)
		pthread_join(th[i], NULL);
	return (now_s() - t0) * 1e9 / (double)l[0].n;
}

int main(void)
{
	if (throttle_init(&t, 0, 0) < 0)
		return 1;
	rc.stats_id = 1;
	e = throttle_entry(&t, 1, "10.1.2.3");
	double t0 = now_s();
	loop(NULL);
	double one = (now_s() - t0) * 1e9 / N;
	pthread_t a, b;
	t0 = now_s();
	pthread_create(&a, NULL, loop, NULL);
	pthread_create(&b, NULL, loop, NULL);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
	double two = (now_s() - t0) * 1e9 / N;
	throttle_free(&t);

	/* LIVE sources stay connected; lookups of them, then of new ones
	 * (every slot outside the live ones idle after the first pass). */
	if (throttle_init(&t, 0, 0) < 0)
		return 1;
	char buf[32];
	for (unsigned i = 0; i < LIVE; i++) {
		struct throttle_entry *x;
		int32_t fig, lim;
		source(buf, i);
		if (throttle_connect(&t, &rc, buf, 0, &x, &fig, &lim) != THROTTLE_ADMIT)
			return 1;
	}
	struct lookups known[2] = {{0, 7919, LIVE, LOOKUPS, 0}, {1, 7919, LIVE, LOOKUPS, 0}};
	double hit1 = per_op(known, 1);
	double hit2 = per_op(known, 2);
	/* New sources: first into free slots, then (the table seen full
	 * once) into idle entries' slots. */
	struct lookups fresh[2] = {{1u << 24, 2, 0, LOOKUPS, 0}, {(1u << 24) + 1, 2, 0, LOOKUPS, 0}};
	per_op(fresh, 1);
	fresh[0].first = 1u << 25;
	double new1 = per_op(fresh, 1);
	fresh[0].first = 3u << 24;
	fresh[1].first = (3u << 24) + 1;
	double new2 = per_op(fresh, 2);
	throttle_free(&t);

	/* A table held full: how much is usable, and what a refusal costs. */
	if (throttle_init(&t, 0, 0) < 0)
		return 1;
	unsigned filled = 0;
	for (;; filled++) {
		struct throttle_entry *x;
		int32_t fig, lim;
		source(buf, filled);
		if (throttle_connect(&t, &rc, buf, 0, &x, &fig, &lim) != THROTTLE_ADMIT)
			break;
	}
	unsigned more = filled;
	for (unsigned i = 0; i < 1000000; i++) {
		struct throttle_entry *x;
		int32_t fig, lim;
		source(buf, filled + 1 + i);
		more += throttle_connect(&t, &rc, buf, 0, &x, &fig, &lim) == THROTTLE_ADMIT;
	}
	struct lookups refused[1] = {{1u << 25, 1, 0, LOOKUPS / 4, 0}};
	double full1 = per_op(refused, 1);
	printf("{\"ns_per_check_one_thread\": %.1f, \"ns_per_check_two_threads_same_source\": %.1f, "
	       "\"table_slots\": %u, \"table_mib\": %.1f, "
	       "\"ns_per_connect_known_source\": %.1f, \"ns_per_connect_known_source_two_threads\": %.1f, "
	       "\"ns_per_connect_new_source_reusing_idle\": %.1f, "
	       "\"ns_per_connect_new_source_two_threads\": %.1f, "
	       "\"ns_per_refusal_full_table\": %.1f, "
	       "\"first_refusal_at_slots_pct\": %.1f, \"held_after_1M_more_tries_pct\": %.1f}\n",
	       one, two, t.size, (double)throttle_table_bytes(t.size) / (1 << 20), hit1, hit2, new1,
	       new2, full1, 100.0 * filled / t.size, 100.0 * more / t.size);
	throttle_free(&t);
	return 0;
}
