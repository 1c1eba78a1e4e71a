/* Micro-benchmark of the per-message throttle check (engine/throttle.c):
 * throttle_take_message() on one source, from one thread and from two
 * threads hitting the same source (the shared-cache-line worst case).
 * Prints one JSON line. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "throttle.h"

#define N 20000000

static struct throttle t;
static struct throttle_entry *e;

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

int main(void)
{
	if (throttle_init(&t, 0) < 0)
		return 1;
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
	printf("{\"ns_per_check_one_thread\": %.1f, \"ns_per_check_two_threads_same_source\": %.1f}\n",
	       one, two);
	throttle_free(&t);
	return 0;
}
