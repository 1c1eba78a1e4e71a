/* Connector selection tables (see connectors.h). Every range is decomposed
 * into CIDR prefixes; a prefix shared by two ranges goes to the narrower
 * one, so the longest match is also the narrowest range. */
#include "connectors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lpm.h"

struct match {
	const struct rconn *rc;
	const struct ip_range *range;
};

struct binding_table {
	struct lpm *lpm;
	struct match *matches;
	size_t nmatches;
	size_t prefixes;
};

struct span {
	int family;
	u128 lo, hi;
	const struct rconn *rc;
	const struct ip_range *range;
};

static int cmp_conn_lo(const void *a, const void *b)
{
	const struct span *x = a, *y = b;
	if (x->family != y->family)
		return x->family - y->family;
	if (x->rc != y->rc)
		return x->rc < y->rc ? -1 : 1;
	return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static int cmp_lo_hi(const void *a, const void *b)
{
	const struct span *x = a, *y = b;
	if (x->family != y->family)
		return x->family - y->family;
	if (x->lo != y->lo)
		return x->lo < y->lo ? -1 : 1;
	return x->hi > y->hi ? -1 : x->hi < y->hi;
}

/* One connector may list overlapping ranges of its own: merge them first,
 * then require nesting or disjointness across connectors. */
static int check_binding(const struct conf *c, unsigned b, struct span *s, size_t n,
			 char *why, size_t whylen, int *line)
{
	qsort(s, n, sizeof(*s), cmp_conn_lo);
	size_t m = 0;
	for (size_t i = 0; i < n; i++) {
		if (m && s[m - 1].family == s[i].family && s[m - 1].rc == s[i].rc &&
		    s[i].lo <= s[m - 1].hi + 1 && s[m - 1].hi + 1 != 0) {
			if (s[i].hi > s[m - 1].hi)
				s[m - 1].hi = s[i].hi;
			continue;
		}
		s[m++] = s[i];
	}
	qsort(s, m, sizeof(*s), cmp_lo_hi);
	struct span **stack = malloc((m + 1) * sizeof(*stack));
	size_t depth = 0;
	int ret = 0;
	for (size_t i = 0; i < m && ret == 0; i++) {
		if (depth && stack[depth - 1]->family != s[i].family)
			depth = 0;
		while (depth && stack[depth - 1]->hi < s[i].lo)
			depth--;
		const struct span *top = depth ? stack[depth - 1] : NULL;
		if (top && top->lo == s[i].lo && top->hi == s[i].hi) {
			snprintf(why, whylen, "connectors \"%s\" and \"%s\" both claim %s on %s",
				 top->rc->name, s[i].rc->name, s[i].range->text,
				 c->bindings[b].text);
			*line = s[i].rc->line > top->rc->line ? s[i].rc->line : top->rc->line;
			ret = -1;
		} else if (top && s[i].hi > top->hi) {
			snprintf(why, whylen,
				 "connectors \"%s\" and \"%s\" on %s: ranges %s and %s overlap without one containing the other",
				 top->rc->name, s[i].rc->name, c->bindings[b].text,
				 top->range->text, s[i].range->text);
			*line = s[i].rc->line > top->rc->line ? s[i].rc->line : top->rc->line;
			ret = -1;
		}
		stack[depth++] = &s[i];
	}
	free(stack);
	return ret;
}

static int build_binding(const struct conf *c, unsigned b, struct binding_table *t)
{
	size_t nranges = 0;
	for (unsigned i = 0; i < c->nrc; i++)
		if (rconn_on_binding(&c->rc[i], b))
			nranges += c->rc[i].nranges;
	t->matches = calloc(nranges ? nranges : 1, sizeof(*t->matches));
	size_t cap = nranges * 8 + 1, n = 0;
	struct lpm_entry *e = malloc(cap * sizeof(*e));
	if (!t->matches || !e) {
		free(e);
		return -1;
	}
	for (unsigned i = 0; i < c->nrc; i++) {
		const struct rconn *rc = &c->rc[i];
		if (!rconn_on_binding(rc, b))
			continue;
		for (unsigned r = 0; r < rc->nranges; r++) {
			const struct ip_range *ir = &rc->ranges[r];
			uint32_t v = (uint32_t)t->nmatches;
			t->matches[t->nmatches++] = (struct match){rc, ir};
			struct lpm_prefix p[256];
			size_t k = lpm_range_to_prefixes(ir->family == 4 ? 32 : 128, ir->lo, ir->hi, p);
			if (n + k > cap) {
				cap = (n + k) * 2;
				struct lpm_entry *ne = realloc(e, cap * sizeof(*e));
				if (!ne) {
					free(e);
					return -1;
				}
				e = ne;
			}
			for (size_t j = 0; j < k; j++)
				e[n++] = (struct lpm_entry){ir->family, p[j], ir->hi - ir->lo, v};
		}
	}
	t->prefixes = n;
	t->lpm = lpm_build(e, n);
	free(e);
	return t->lpm ? 0 : -1;
}

int connectors_build(struct conf *c, char *why, size_t whylen, int *line)
{
	*line = 1;
	c->tables = calloc(c->nbindings ? c->nbindings : 1, sizeof(*c->tables));
	if (!c->tables) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	for (unsigned b = 0; b < c->nbindings; b++) {
		size_t n = 0;
		for (unsigned i = 0; i < c->nrc; i++)
			if (rconn_on_binding(&c->rc[i], b))
				n += c->rc[i].nranges;
		struct span *s = malloc((n ? n : 1) * sizeof(*s));
		if (!s) {
			snprintf(why, whylen, "out of memory");
			return -1;
		}
		n = 0;
		for (unsigned i = 0; i < c->nrc; i++) {
			if (!rconn_on_binding(&c->rc[i], b))
				continue;
			for (unsigned r = 0; r < c->rc[i].nranges; r++) {
				const struct ip_range *ir = &c->rc[i].ranges[r];
				s[n++] = (struct span){ir->family, ir->lo, ir->hi, &c->rc[i], ir};
			}
		}
		int ret = check_binding(c, b, s, n, why, whylen, line);
		free(s);
		if (ret < 0)
			return -1;
		if (build_binding(c, b, &c->tables[b]) < 0) {
			snprintf(why, whylen, "out of memory building the connector table");
			return -1;
		}
	}
	return 0;
}

void connectors_free(struct conf *c)
{
	if (!c->tables)
		return;
	for (unsigned b = 0; b < c->nbindings; b++) {
		lpm_free(c->tables[b].lpm);
		free(c->tables[b].matches);
	}
	free(c->tables);
	c->tables = NULL;
}

void connectors_stats(const struct conf *c, size_t *bytes, size_t *prefixes,
		      size_t *intervals)
{
	*bytes = *prefixes = *intervals = 0;
	for (unsigned b = 0; c->tables && b < c->nbindings; b++) {
		*bytes += lpm_memory(c->tables[b].lpm) +
			  c->tables[b].nmatches * sizeof(struct match);
		*prefixes += c->tables[b].prefixes;
		*intervals += lpm_intervals(c->tables[b].lpm);
	}
}

const struct rconn *conf_match(const struct conf *c, unsigned b,
			       const struct sockaddr *sa,
			       const struct ip_range **why)
{
	int family;
	u128 v;
	if (why)
		*why = NULL;
	if (b >= c->nbindings || !conf_sockaddr_value(sa, &family, &v))
		return NULL;
	const struct binding_table *t = &c->tables[b];
	uint32_t m = lpm_lookup(t->lpm, family, v);
	if (m == LPM_NONE)
		return NULL;
	if (why)
		*why = t->matches[m].range;
	return t->matches[m].rc;
}
