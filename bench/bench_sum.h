/* The X-Bench-Sum checksum postern-bench embeds and postern-sink verifies:
 * FNV-1a 64 over the body bytes. One definition, so both always agree. */
#ifndef POSTERN_BENCH_SUM_H
#define POSTERN_BENCH_SUM_H

#include <stddef.h>
#include <stdint.h>

#define FNV_INIT 0xcbf29ce484222325ULL

static inline uint64_t fnv1a(uint64_t h, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

#endif
