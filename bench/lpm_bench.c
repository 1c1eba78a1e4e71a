/* Micro-benchmark of the connector table (engine/lpm.c): builds a table of
 * about 100,000 prefixes (mixed IPv4/IPv6, single addresses, CIDR blocks and
 * a-b ranges decomposed into prefixes) and measures build time, memory and
 * single-core lookups per second. Prints one JSON line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lpm.h"

typedef lpm_u128 u128;

static uint64_t s = 0x9E3779B97F4A7C15ULL;
static uint64_t rnd(void)
{
	s ^= s << 13;
	s ^= s >> 7;
	s ^= s << 17;
	return s;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	size_t target = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
	size_t lookups = argc > 2 ? strtoul(argv[2], NULL, 10) : 50000000;
	struct lpm_entry *e = malloc((target + 512) * sizeof(*e));
	size_t n = 0;
	uint32_t value = 0;
	/* Frontends: everything. */
	e[n++] = (struct lpm_entry){4, {0, 0}, ~(u128)0, value++};
	e[n++] = (struct lpm_entry){6, {0, 0}, ~(u128)0, value++};
	while (n < target) {
		int kind = (int)(rnd() % 6);
		int v6 = kind >= 3;
		unsigned width = v6 ? 128 : 32;
		u128 base = v6 ? ((u128)0x20010db8 << 96) | ((u128)(rnd() & 0xffffffff) << 64)
			       : (u128)(0x0a000000u | (rnd() & 0x00ffffffu));
		u128 lo = base, hi = base;
		if (kind % 3 == 1) {          /* CIDR block */
			unsigned len = v6 ? 48 + (unsigned)(rnd() % 80) : 16 + (unsigned)(rnd() % 17);
			u128 host = len == width ? 0 : (((u128)1 << (width - len)) - 1);
			lo = base & ~host;
			hi = lo | host;
		} else if (kind % 3 == 2) {   /* a-b range */
			hi = base + rnd() % 300;
			if (!v6 && hi > 0xffffffffu)
				hi = 0xffffffffu;
		}
		struct lpm_prefix p[256];
		size_t k = lpm_range_to_prefixes(width, lo, hi, p);
		for (size_t j = 0; j < k && n < target; j++)
			e[n++] = (struct lpm_entry){v6 ? 6 : 4, p[j], hi - lo, value};
		value++;
	}
	double t0 = now();
	struct lpm *t = lpm_build(e, n);
	double t1 = now();
	if (!t) {
		fprintf(stderr, "build failed\n");
		return 1;
	}
	/* Query addresses: half IPv4, half IPv6, mostly inside the populated
	 * areas so lookups walk real buckets. */
	size_t nq = 1 << 20;
	u128 *q = malloc(nq * sizeof(*q));
	int *fam = malloc(nq * sizeof(*fam));
	for (size_t i = 0; i < nq; i++) {
		fam[i] = (i & 1) ? 6 : 4;
		q[i] = fam[i] == 6 ? ((u128)0x20010db8 << 96) | ((u128)(rnd() & 0xffffffff) << 64) | rnd()
				   : (u128)(0x0a000000u | (rnd() & 0x00ffffffu));
	}
	uint64_t sum = 0;
	double t2 = now();
	for (size_t i = 0; i < lookups; i++) {
		size_t j = i & (nq - 1);
		sum += lpm_lookup(t, fam[j], q[j]);
	}
	double t3 = now();
	printf("{\"prefixes\": %zu, \"ranges\": %u, \"intervals\": %zu, \"build_ms\": %.1f, "
	       "\"memory_bytes\": %zu, \"lookups\": %zu, \"lookups_per_s\": %.0f, \"ns_per_lookup\": %.2f, "
	       "\"checksum\": %llu}\n",
	       n, value, lpm_intervals(t), (t1 - t0) * 1e3, lpm_memory(t), lookups,
	       (double)lookups / (t3 - t2), (t3 - t2) * 1e9 / (double)lookups,
	       (unsigned long long)sum);
	lpm_free(t);
	free(e);
	free(q);
	free(fam);
	return 0;
}
