/* Connector table: longest-prefix match over IPv4 and IPv6. Ranges are
 * decomposed into CIDR prefixes, then flattened at build time into sorted
 * disjoint intervals with a bucket index, so a lookup is one index read and a
 * short branchless search. Immutable once built: readers need no locks. */
#ifndef POSTERN_LPM_H
#define POSTERN_LPM_H

#include <stddef.h>
#include <stdint.h>

typedef unsigned __int128 lpm_u128;

#define LPM_NONE UINT32_MAX

struct lpm_prefix {
	lpm_u128 addr;     /* host bits zero */
	unsigned len;
};

/* One prefix to insert. Where prefixes are identical, the one with the
 * smaller range_size (the narrower original range) wins. */
struct lpm_entry {
	int family;        /* 4 or 6 */
	struct lpm_prefix p;
	lpm_u128 range_size;
	uint32_t value;
};

/* Writes the minimal CIDR cover of [lo, hi] (width 32 or 128 bits) into out
 * (at most 2*width entries) and returns how many. */
size_t lpm_range_to_prefixes(unsigned width, lpm_u128 lo, lpm_u128 hi,
			     struct lpm_prefix *out);

struct lpm;

struct lpm *lpm_build(const struct lpm_entry *e, size_t n);
void lpm_free(struct lpm *t);

/* The value of the longest matching prefix, or LPM_NONE. */
uint32_t lpm_lookup(const struct lpm *t, int family, lpm_u128 addr);

size_t lpm_memory(const struct lpm *t);
size_t lpm_intervals(const struct lpm *t);

#endif
