/* LPM table (see lpm.h). CIDR blocks are either nested or disjoint, so a
 * sweep over prefixes sorted by (start, length) with a stack of open blocks
 * yields the disjoint intervals where one prefix is the longest match. */
#include "lpm.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define BUCKET_BITS_MAX 16

struct lpm_family {
	unsigned width;
	lpm_u128 *keys;        /* interval starts, keys[0] == 0 */
	uint32_t *vals;
	size_t n;
	unsigned common_bits;  /* top bits shared by keys[1..n) */
	lpm_u128 common;       /* those bits */
	unsigned bucket_bits;
	uint32_t *bucket;      /* (1 << bucket_bits) + 1 first-key indices */
};

struct lpm {
	struct lpm_family f4, f6;
	size_t bytes;
};

static lpm_u128 ones(unsigned bits)
{
	return bits >= 128 ? ~(lpm_u128)0 : (((lpm_u128)1 << bits) - 1);
}

size_t lpm_range_to_prefixes(unsigned width, lpm_u128 lo, lpm_u128 hi,
			     struct lpm_prefix *out)
{
	size_t n = 0;
	lpm_u128 max = ones(width);
	for (;;) {
		/* Largest aligned block starting at lo that stays within hi. */
		unsigned host = 0;
		while (host < width) {
			lpm_u128 mask = ones(host + 1);
			if ((lo & mask) != 0 || (lo | mask) > hi)
				break;
			host++;
		}
		out[n].addr = lo;
		out[n].len = width - host;
		n++;
		lpm_u128 end = lo | ones(host);
		if (end >= hi || end == max)
			return n;
		lo = end + 1;
	}
}

static int cmp_entry(const void *a, const void *b)
{
	const struct lpm_entry *x = a, *y = b;
	if (x->p.addr != y->p.addr)
		return x->p.addr < y->p.addr ? -1 : 1;
	if (x->p.len != y->p.len)
		return x->p.len < y->p.len ? -1 : 1;
	/* Same block: wider original range first, so the narrower one,
	 * applied later, wins. */
	if (x->range_size != y->range_size)
		return x->range_size > y->range_size ? -1 : 1;
	return x->value < y->value ? -1 : x->value > y->value;
}

struct builder {
	lpm_u128 *keys;
	uint32_t *vals;
	size_t n, cap;
};

static bool emit(struct builder *b, lpm_u128 start, uint32_t val)
{
	if (b->n && b->keys[b->n - 1] == start) {
		b->vals[b->n - 1] = val;
		/* Overwriting may make it equal to its predecessor: merge. */
		if (b->n > 1 && b->vals[b->n - 2] == val)
			b->n--;
		return true;
	}
	if (b->n && b->vals[b->n - 1] == val)
		return true;
	if (b->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 64;
		lpm_u128 *k = realloc(b->keys, cap * sizeof(*k));
		if (!k)
			return false;
		b->keys = k;
		uint32_t *v = realloc(b->vals, cap * sizeof(*v));
		if (!v)
			return false;
		b->vals = v;
		b->cap = cap;
	}
	b->keys[b->n] = start;
	b->vals[b->n] = val;
	b->n++;
	return true;
}

struct open_block {
	lpm_u128 hi;
	uint32_t val;
};

static bool build_family(struct lpm_family *f, unsigned width,
			 const struct lpm_entry *e, size_t n)
{
	struct builder b = {0};
	struct open_block *stack = malloc((width + 2) * sizeof(*stack));
	size_t depth = 0;
	bool ok = stack && emit(&b, 0, LPM_NONE);
	lpm_u128 max = ones(width);
	for (size_t i = 0; ok && i < n; i++) {
		lpm_u128 lo = e[i].p.addr, hi = lo | ones(width - e[i].p.len);
		while (ok && depth && stack[depth - 1].hi < lo) {
			lpm_u128 resume = stack[--depth].hi + 1;
			ok = emit(&b, resume, depth ? stack[depth - 1].val : LPM_NONE);
		}
		if (!ok)
			break;
		if (depth && stack[depth - 1].hi == hi && i > 0 &&
		    e[i - 1].p.addr == lo && e[i - 1].p.len == e[i].p.len) {
			stack[depth - 1].val = e[i].value; /* same block, narrower range */
		} else {
			stack[depth].hi = hi;
			stack[depth].val = e[i].value;
			depth++;
		}
		ok = emit(&b, lo, e[i].value);
	}
	while (ok && depth) {
		lpm_u128 hi = stack[--depth].hi;
		if (hi != max)
			ok = emit(&b, hi + 1, depth ? stack[depth - 1].val : LPM_NONE);
	}
	free(stack);
	if (!ok) {
		free(b.keys);
		free(b.vals);
		return false;
	}
	f->width = width;
	f->keys = b.keys;
	f->vals = b.vals;
	f->n = b.n;
	/* Index on the bits right after those every key shares, so clustered
	 * tables (all of 2001:db8::/32, say) still spread over the buckets. */
	f->common_bits = 0;
	f->common = 0;
	if (f->n > 1) {
		lpm_u128 a = f->keys[1], z = f->keys[f->n - 1];
		unsigned c = 0;
		while (c < width && ((a >> (width - 1 - c)) & 1) == ((z >> (width - 1 - c)) & 1))
			c++;
		f->common_bits = c;
		f->common = c ? a >> (width - c) : 0;
	}
	/* About two buckets per key, at most 2^16: small tables stay small. */
	unsigned rest = width - f->common_bits, want = 0;
	while (want < BUCKET_BITS_MAX && ((size_t)1 << want) < 2 * f->n)
		want++;
	f->bucket_bits = rest < want ? rest : want;
	size_t nb = (size_t)1 << f->bucket_bits;
	f->bucket = malloc((nb + 1) * sizeof(*f->bucket));
	if (!f->bucket)
		return false;
	unsigned shift = width - f->common_bits - f->bucket_bits;
	size_t k = 1;
	for (size_t bkt = 0; bkt <= nb; bkt++) {
		while (k < f->n && (size_t)((f->keys[k] >> shift) & ones(f->bucket_bits)) < bkt)
			k++;
		f->bucket[bkt] = (uint32_t)k;
	}
	return true;
}

static void free_family(struct lpm_family *f)
{
	free(f->keys);
	free(f->vals);
	free(f->bucket);
}

struct lpm *lpm_build(const struct lpm_entry *e, size_t n)
{
	struct lpm *t = calloc(1, sizeof(*t));
	struct lpm_entry *s = malloc((n ? n : 1) * sizeof(*s));
	if (!t || !s) {
		free(t);
		free(s);
		return NULL;
	}
	size_t n4 = 0, n6 = 0;
	for (size_t i = 0; i < n; i++)
		if (e[i].family == 4)
			s[n4++] = e[i];
	for (size_t i = 0; i < n; i++)
		if (e[i].family == 6)
			s[n4 + n6++] = e[i];
	qsort(s, n4, sizeof(*s), cmp_entry);
	qsort(s + n4, n6, sizeof(*s), cmp_entry);
	bool ok = build_family(&t->f4, 32, s, n4) && build_family(&t->f6, 128, s + n4, n6);
	free(s);
	if (!ok) {
		lpm_free(t);
		return NULL;
	}
	const struct lpm_family *fs[2] = {&t->f4, &t->f6};
	t->bytes = sizeof(*t);
	for (int i = 0; i < 2; i++)
		t->bytes += fs[i]->n * (sizeof(lpm_u128) + sizeof(uint32_t)) +
			    (((size_t)1 << fs[i]->bucket_bits) + 1) * sizeof(uint32_t);
	return t;
}

void lpm_free(struct lpm *t)
{
	if (!t)
		return;
	free_family(&t->f4);
	free_family(&t->f6);
	free(t);
}

uint32_t lpm_lookup(const struct lpm *t, int family, lpm_u128 addr)
{
	const struct lpm_family *f = family == 4 ? &t->f4 : &t->f6;
	if (f->n <= 1)
		return f->vals[0];
	unsigned w = f->width, c = f->common_bits;
	if (c) {
		lpm_u128 top = addr >> (w - c);
		if (top != f->common)
			return top < f->common ? f->vals[0] : f->vals[f->n - 1];
	}
	unsigned shift = w - c - f->bucket_bits;
	size_t bkt = (size_t)((addr >> shift) & ones(f->bucket_bits));
	size_t lo = f->bucket[bkt], len = f->bucket[bkt + 1] - lo;
	/* Last key <= addr within the bucket; none means the interval that
	 * began before the bucket. */
	const lpm_u128 *k = f->keys + lo;
	if (len == 0 || k[0] > addr)
		return f->vals[lo - 1];
	while (len > 1) {
		size_t half = len / 2;
		k = k[half] <= addr ? k + half : k;
		len -= half;
	}
	return f->vals[k - f->keys];
}

size_t lpm_memory(const struct lpm *t)
{
	return t->bytes;
}

size_t lpm_intervals(const struct lpm *t)
{
	return t->f4.n + t->f6.n;
}
