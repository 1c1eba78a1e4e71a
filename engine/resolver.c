/* Mail exchanger resolution (see resolver.h): one c-ares channel per
 * resolver and the thread that alone touches it, the answer cache and the
 * coalescing of lookups in flight. Requests come in through a locked queue
 * and an eventfd; it knows nothing of SMTP or of the workers. */
#include "resolver.h"

#include <arpa/inet.h>
#include <ares.h>
#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#ifndef T_MX
#define T_MX 15
#endif
#ifndef T_A
#define T_A 1
#endif
#ifndef T_AAAA
#define T_AAAA 28
#endif
#ifndef C_IN
#define C_IN 1
#endif

#define MAX_MX_HOSTS      16    /* lowest preferences kept */
#define MAX_ADDRS_FAMILY  5     /* per host and address family */
#define MAX_TARGETS       20    /* handed to one caller */
#define CACHE_MAX         10000
#define CACHE_BUCKETS     8192  /* power of two, also for lookups in flight */
#define TTL_MAX_S         3600
#define TTL_NEGATIVE_S    60
#define TTL_NONE          UINT32_MAX

/* A queued lookup: its result is allocated up front so that, once
 * accepted, every lookup can be answered even when memory runs out. */
struct request {
	struct request *next;
	resolver_cb cb;
	void *arg;
	struct resolver_result *res;
	char domain[256];          /* lower-cased, no trailing dot */
};

/* Intrusive chained hash keyed by domain; the node comes first in its
 * owner so a node pointer is the owner's pointer. */
struct hnode {
	struct hnode *next;
	uint32_t hash;
	char key[256];
};

struct htable {
	struct hnode *b[CACHE_BUCKETS];
};

/* A final answer for a domain, before the per-caller shuffle and cap. */
struct answer {
	enum resolver_status status;
	char error[160];
	unsigned n;
	struct resolver_target *t;
};

struct cache_entry {
	struct hnode node;
	struct cache_entry *older, *newer;   /* insertion order, for eviction */
	uint64_t expires_ms;
	struct answer a;
};

struct lookup;

struct addr_query {
	struct lookup *lk;
	unsigned host;
	int type;                  /* T_A or T_AAAA */
};

struct mx_host {
	char name[256];
	unsigned pref;
	bool tempfail;
	unsigned n4, n6;
	struct in_addr a4[MAX_ADDRS_FAMILY];
	struct in6_addr a6[MAX_ADDRS_FAMILY];
	struct addr_query q[2];
};

/* One domain being resolved; every request for it waits here. */
struct lookup {
	struct hnode node;
	struct resolver *r;
	struct request *waiters;
	bool decided;              /* status settled by the MX answer */
	bool implicit;             /* no MX: the domain is its own host */
	enum resolver_status status;
	char error[160];           /* first failure, for a TEMPFAIL */
	unsigned pending;          /* c-ares queries outstanding */
	uint32_t ttl_s;
	unsigned nhosts;
	struct mx_host *hosts;
};

struct resolver {
	pthread_t thread;
	int wake_fd;

	pthread_mutex_t lock;      /* guards queue and stop */
	struct request *queue, **queue_tail;
	bool stop;

	/* Resolver thread only from here on. */
	ares_channel ch;
	bool closing;              /* ares_destroy running: no callbacks */
	uint64_t rng;
	struct htable inflight;
	struct htable cache;
	unsigned ncache;
	struct cache_entry *oldest, *newest;
};

/* ---- small helpers ---- */

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t rng_next(uint64_t *s)
{
	/* splitmix64: tiny, and good enough to spread load across hosts */
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static struct hnode *ht_find(struct htable *t, const char *key, uint32_t h)
{
	for (struct hnode *n = t->b[h & (CACHE_BUCKETS - 1)]; n; n = n->next)
		if (n->hash == h && strcmp(n->key, key) == 0)
			return n;
	return NULL;
}

static void ht_insert(struct htable *t, struct hnode *n)
{
	struct hnode **b = &t->b[n->hash & (CACHE_BUCKETS - 1)];
	n->next = *b;
	*b = n;
}

static void ht_remove(struct htable *t, struct hnode *n)
{
	for (struct hnode **p = &t->b[n->hash & (CACHE_BUCKETS - 1)]; *p; p = &(*p)->next)
		if (*p == n) {
			*p = n->next;
			return;
		}
	assert(!"hash node not in its table");
}

static bool ares_tempfail(int status)
{
	return status != ARES_SUCCESS && status != ARES_ENODATA &&
	       status != ARES_ENOTFOUND && status != ARES_EBADNAME;
}

/* ---- answers to callers ---- */

/* The caller's copy of an answer: hosts of equal preference shuffled as
 * groups (a host's addresses stay together, in order), then capped. */
static int answer_copy(struct resolver_result *res, const struct answer *a, uint64_t *rng)
{
	res->status = a->status;
	snprintf(res->error, sizeof(res->error), "%s", a->error);
	res->n = 0;
	res->t = NULL;
	if (!a->n)
		return 0;
	/* Hosts are distinct (collect_mx), so a group is one host. */
	unsigned start[MAX_MX_HOSTS + 1], ng = 0;
	for (unsigned i = 0; i < a->n; i++)
		if (i == 0 || strcmp(a->t[i].host, a->t[i - 1].host) != 0) {
			assert(ng < MAX_MX_HOSTS);
			start[ng++] = i;
		}
	start[ng] = a->n;
	unsigned order[MAX_MX_HOSTS];
	for (unsigned g = 0; g < ng; g++)
		order[g] = g;
	if (rng) {
		for (unsigned lo = 0, hi; lo < ng; lo = hi) {
			unsigned pref = a->t[start[lo]].pref;
			for (hi = lo + 1; hi < ng && a->t[start[hi]].pref == pref; hi++)
				;
			for (unsigned i = hi - 1; i > lo; i--) {
				unsigned j = lo + (unsigned)(rng_next(rng) % (i - lo + 1));
				unsigned tmp = order[i];
				order[i] = order[j];
				order[j] = tmp;
			}
		}
	}
	unsigned cap = a->n < MAX_TARGETS ? a->n : MAX_TARGETS;
	res->t = malloc(cap * sizeof(*res->t));
	if (!res->t) {
		res->status = RESOLVER_TEMPFAIL;
		snprintf(res->error, sizeof(res->error), "resolver: out of memory");
		return -1;
	}
	for (unsigned g = 0; g < ng && res->n < cap; g++)
		for (unsigned i = start[order[g]]; i < start[order[g] + 1] && res->n < cap; i++)
			res->t[res->n++] = a->t[i];
	return 0;
}

static void answer_request(struct resolver *r, struct request *q, const struct answer *a)
{
	answer_copy(q->res, a, &r->rng);
	q->cb(q->arg, q->res);
	free(q);
}

static void request_drop(struct request *q)
{
	resolver_result_free(q->res);
	free(q);
}

void resolver_result_free(struct resolver_result *res)
{
	if (!res)
		return;
	free(res->t);
	free(res);
}

/* ---- cache ---- */

static void cache_unlink(struct resolver *r, struct cache_entry *e)
{
	ht_remove(&r->cache, &e->node);
	if (e->older)
		e->older->newer = e->newer;
	else
		r->oldest = e->newer;
	if (e->newer)
		e->newer->older = e->older;
	else
		r->newest = e->older;
	r->ncache--;
	free(e->a.t);
	free(e);
}

static const struct answer *cache_get(struct resolver *r, const char *domain, uint32_t h)
{
	struct cache_entry *e = (struct cache_entry *)ht_find(&r->cache, domain, h);
	if (!e)
		return NULL;
	if (now_ms() >= e->expires_ms) {
		cache_unlink(r, e);
		return NULL;
	}
	return &e->a;
}

/* Takes over a->t whether or not it keeps the answer. */
static void cache_put(struct resolver *r, const char *domain, struct answer *a, uint32_t ttl_s)
{
	uint32_t h = resolver_hash_name(RESOLVER_HASH_INIT, domain);
	struct cache_entry *old = (struct cache_entry *)ht_find(&r->cache, domain, h);
	if (old)
		cache_unlink(r, old);
	if (ttl_s == 0) {
		free(a->t);
		return;
	}
	uint64_t now = now_ms();
	/* Expired entries leave first; when none has, the oldest goes. */
	while (r->ncache >= CACHE_MAX && r->oldest && r->oldest->expires_ms <= now)
		cache_unlink(r, r->oldest);
	if (r->ncache >= CACHE_MAX)
		cache_unlink(r, r->oldest);
	struct cache_entry *e = calloc(1, sizeof(*e));
	if (!e) {
		free(a->t);
		return;
	}
	snprintf(e->node.key, sizeof(e->node.key), "%s", domain);
	e->node.hash = h;
	e->expires_ms = now + (uint64_t)ttl_s * 1000;
	e->a = *a;
	ht_insert(&r->cache, &e->node);
	e->older = r->newest;
	if (r->newest)
		r->newest->newer = e;
	else
		r->oldest = e;
	r->newest = e;
	r->ncache++;
}

static void cache_clear(struct resolver *r)
{
	while (r->oldest)
		cache_unlink(r, r->oldest);
}

/* ---- a lookup's life ---- */

/* The smallest TTL in the answer section; ares_parse_mx_reply keeps the
 * TTLs to itself. TTL_NONE when the answer holds no record. */
static uint32_t answer_min_ttl(const unsigned char *abuf, int alen)
{
	if (alen < 12)
		return TTL_NONE;
	unsigned qd = (unsigned)abuf[4] << 8 | abuf[5];
	unsigned an = (unsigned)abuf[6] << 8 | abuf[7];
	const unsigned char *p = abuf + 12, *end = abuf + alen;
	uint32_t ttl = TTL_NONE;
	for (unsigned i = 0; i < qd + an; i++) {
		char *name;
		long len;
		if (ares_expand_name(p, abuf, alen, &name, &len) != ARES_SUCCESS)
			return ttl;
		ares_free_string(name);
		p += len;
		if (i < qd) {
			if (end - p < 4)
				return ttl;
			p += 4;
			continue;
		}
		if (end - p < 10)
			return ttl;
		uint32_t t = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 |
			     (uint32_t)p[6] << 8 | p[7];
		unsigned rdlen = (unsigned)p[8] << 8 | p[9];
		if (t < ttl)
			ttl = t;
		p += 10;
		if ((size_t)(end - p) < rdlen)
			return ttl;
		p += rdlen;
	}
	return ttl;
}

static void lookup_ttl(struct lookup *lk, uint32_t ttl)
{
	if (ttl < lk->ttl_s)
		lk->ttl_s = ttl;
}

/* The MX answer alone settles the status. */
static void lookup_decide(struct lookup *lk, enum resolver_status st, const char *why)
{
	lk->decided = true;
	lk->status = st;
	snprintf(lk->error, sizeof(lk->error), "MX lookup for %.100s: %s", lk->node.key, why);
}

static void lookup_free(struct lookup *lk)
{
	free(lk->hosts);
	free(lk);
}

/* Every query answered: settle the status, cache it, answer the waiters. */
static void lookup_finish(struct lookup *lk)
{
	struct resolver *r = lk->r;
	ht_remove(&r->inflight, &lk->node);
	if (r->closing) {
		while (lk->waiters) {
			struct request *q = lk->waiters;
			lk->waiters = q->next;
			request_drop(q);
		}
		lookup_free(lk);
		return;
	}

	struct answer a = {.status = lk->status};
	bool cacheable = true;
	if (!lk->decided) {
		bool tempfail = false;
		unsigned n = 0;
		for (unsigned i = 0; i < lk->nhosts; i++) {
			n += lk->hosts[i].n4 + lk->hosts[i].n6;
			tempfail |= lk->hosts[i].tempfail;
		}
		/* A host whose lookup failed for now may answer later: keep
		 * what the others gave, but do not remember it. */
		cacheable = !tempfail;
		if (n)
			a.t = calloc(n, sizeof(*a.t));
		if (n && !a.t) {
			a.status = RESOLVER_TEMPFAIL;
			snprintf(a.error, sizeof(a.error), "resolver: out of memory");
			cacheable = false;
		} else if (n) {
			a.status = RESOLVER_OK;
			for (unsigned i = 0; i < lk->nhosts; i++) {
				const struct mx_host *h = &lk->hosts[i];
				for (unsigned k = 0; k < h->n6 + h->n4; k++) {
					struct resolver_target *t = &a.t[a.n++];
					snprintf(t->host, sizeof(t->host), "%s", h->name);
					t->pref = h->pref;
					if (k < h->n6) {
						struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&t->addr;
						s6->sin6_family = AF_INET6;
						s6->sin6_addr = h->a6[k];
						t->addrlen = sizeof(*s6);
					} else {
						struct sockaddr_in *s4 = (struct sockaddr_in *)&t->addr;
						s4->sin_family = AF_INET;
						s4->sin_addr = h->a4[k - h->n6];
						t->addrlen = sizeof(*s4);
					}
				}
			}
		} else if (tempfail) {
			a.status = RESOLVER_TEMPFAIL;
			snprintf(a.error, sizeof(a.error), "%s", lk->error);
		} else {
			a.status = RESOLVER_NO_ADDRESS;
			if (lk->implicit)
				snprintf(a.error, sizeof(a.error), "%.100s has no MX and no A/AAAA records",
					 lk->node.key);
			else
				snprintf(a.error, sizeof(a.error), "no MX host of %.100s has an address",
					 lk->node.key);
		}
	} else {
		snprintf(a.error, sizeof(a.error), "%s", lk->error);
	}

	while (lk->waiters) {
		struct request *q = lk->waiters;
		lk->waiters = q->next;
		answer_request(r, q, &a);
	}

	uint32_t ttl = 0;
	if (!cacheable || a.status == RESOLVER_TEMPFAIL)
		ttl = 0;
	else if (a.status == RESOLVER_OK)
		ttl = lk->ttl_s < TTL_MAX_S ? lk->ttl_s : TTL_MAX_S;
	else
		ttl = TTL_NEGATIVE_S;
	cache_put(r, lk->node.key, &a, ttl);
	lookup_free(lk);
}

static void lookup_done_one(struct lookup *lk)
{
	assert(lk->pending > 0);
	if (--lk->pending == 0)
		lookup_finish(lk);
}

static void on_addr(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct addr_query *q = arg;
	struct lookup *lk = q->lk;
	struct mx_host *h = &lk->hosts[q->host];
	if (status == ARES_SUCCESS && !lk->r->closing) {
		int n = MAX_ADDRS_FAMILY;
		if (q->type == T_AAAA) {
			struct ares_addr6ttl at[MAX_ADDRS_FAMILY];
			status = ares_parse_aaaa_reply(abuf, alen, NULL, at, &n);
			for (int i = 0; status == ARES_SUCCESS && i < n; i++) {
				memcpy(&h->a6[h->n6++], &at[i].ip6addr, sizeof(struct in6_addr));
				lookup_ttl(lk, at[i].ttl > 0 ? (uint32_t)at[i].ttl : 0);
			}
		} else {
			struct ares_addrttl at[MAX_ADDRS_FAMILY];
			status = ares_parse_a_reply(abuf, alen, NULL, at, &n);
			for (int i = 0; status == ARES_SUCCESS && i < n; i++) {
				h->a4[h->n4++] = at[i].ipaddr;
				lookup_ttl(lk, at[i].ttl > 0 ? (uint32_t)at[i].ttl : 0);
			}
		}
	}
	if (ares_tempfail(status)) {
		h->tempfail = true;
		if (!lk->error[0])
			snprintf(lk->error, sizeof(lk->error), "%s lookup for %.100s: %s",
				 q->type == T_AAAA ? "AAAA" : "A", h->name, ares_strerror(status));
	}
	lookup_done_one(lk);
}

static int mx_by_pref(const void *a, const void *b)
{
	const struct mx_host *x = a, *y = b;
	return (x->pref > y->pref) - (x->pref < y->pref);
}

/* The MX hosts, deduplicated and by preference; 0 hosts for a null MX. */
static int collect_mx(struct lookup *lk, const struct ares_mx_reply *mx, bool *null_mx)
{
	unsigned n = 0, nulls = 0;
	for (const struct ares_mx_reply *m = mx; m; m = m->next)
		n++;
	lk->hosts = calloc(n ? n : 1, sizeof(*lk->hosts));
	if (!lk->hosts)
		return -1;
	for (const struct ares_mx_reply *m = mx; m; m = m->next) {
		size_t len = strlen(m->host);
		if (len && m->host[len - 1] == '.')
			len--;
		nulls += len == 0;
		if (len == 0 || len >= sizeof(lk->hosts[0].name))
			continue;
		unsigned i;
		for (i = 0; i < lk->nhosts; i++)
			if (strncasecmp(lk->hosts[i].name, m->host, len) == 0 &&
			    lk->hosts[i].name[len] == '\0')
				break;
		struct mx_host *h = &lk->hosts[i];
		if (i == lk->nhosts) {
			memcpy(h->name, m->host, len);
			h->name[len] = '\0';
			for (char *c = h->name; *c; c++)
				if (*c >= 'A' && *c <= 'Z')
					*c += 'a' - 'A';
			h->pref = m->priority;
			lk->nhosts++;
		} else if (m->priority < h->pref) {
			h->pref = m->priority;
		}
	}
	*null_mx = lk->nhosts == 0 && nulls > 0;
	qsort(lk->hosts, lk->nhosts, sizeof(*lk->hosts), mx_by_pref);
	if (lk->nhosts > MAX_MX_HOSTS)
		lk->nhosts = MAX_MX_HOSTS;
	return 0;
}

static void start_addr_queries(struct lookup *lk)
{
	struct resolver *r = lk->r;
	/* A query may fail at once, calling back from inside ares_query; the
	 * MX query's own count keeps the lookup alive through this loop. */
	for (unsigned i = 0; i < lk->nhosts; i++) {
		for (int k = 0; k < 2; k++) {
			struct addr_query *q = &lk->hosts[i].q[k];
			q->lk = lk;
			q->host = i;
			q->type = k == 0 ? T_AAAA : T_A;
			lk->pending++;
			ares_query(r->ch, lk->hosts[i].name, C_IN, q->type, on_addr, q);
		}
	}
}

static void on_mx(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct lookup *lk = arg;
	const char *domain = lk->node.key;
	if (lk->r->closing) {
		lookup_done_one(lk);
		return;
	}
	struct ares_mx_reply *mx = NULL;
	if (status == ARES_SUCCESS) {
		status = ares_parse_mx_reply(abuf, alen, &mx);
		if (status == ARES_SUCCESS)
			lookup_ttl(lk, answer_min_ttl(abuf, alen));
	}
	bool null_mx = false;
	switch (status) {
	case ARES_SUCCESS:
		if (collect_mx(lk, mx, &null_mx) < 0)
			lookup_decide(lk, RESOLVER_TEMPFAIL, "out of memory");
		else if (null_mx)
			lookup_decide(lk, RESOLVER_NULL_MX,
				      "null MX, accepts no mail (RFC 7505)");
		break;
	case ARES_ENODATA:
		/* RFC 5321 5.1: no MX, so the domain is its own mail host */
		lk->implicit = true;
		lk->hosts = calloc(1, sizeof(*lk->hosts));
		if (!lk->hosts) {
			lookup_decide(lk, RESOLVER_TEMPFAIL, "out of memory");
			break;
		}
		snprintf(lk->hosts[0].name, sizeof(lk->hosts[0].name), "%s", domain);
		lk->nhosts = 1;
		break;
	case ARES_ENOTFOUND:
		lookup_decide(lk, RESOLVER_NXDOMAIN, ares_strerror(status));
		break;
	case ARES_EBADNAME:
		lookup_decide(lk, RESOLVER_NO_ADDRESS, ares_strerror(status));
		break;
	default:
		lookup_decide(lk, RESOLVER_TEMPFAIL, ares_strerror(status));
		break;
	}
	if (mx)
		ares_free_data(mx);
	if (!lk->decided)
		start_addr_queries(lk);
	lookup_done_one(lk);
}

static void lookup_start(struct resolver *r, struct request *q, uint32_t h)
{
	struct lookup *lk = calloc(1, sizeof(*lk));
	if (!lk) {
		struct answer a = {.status = RESOLVER_TEMPFAIL};
		snprintf(a.error, sizeof(a.error), "resolver: out of memory");
		answer_request(r, q, &a);
		return;
	}
	lk->r = r;
	lk->node.hash = h;
	snprintf(lk->node.key, sizeof(lk->node.key), "%s", q->domain);
	lk->ttl_s = TTL_NONE;
	lk->waiters = q;
	q->next = NULL;
	ht_insert(&r->inflight, &lk->node);
	lk->pending = 1;
	ares_query(r->ch, lk->node.key, C_IN, T_MX, on_mx, lk);
}

static void request_run(struct resolver *r, struct request *q)
{
	uint32_t h = resolver_hash_name(RESOLVER_HASH_INIT, q->domain);
	const struct answer *a = cache_get(r, q->domain, h);
	if (a) {
		answer_request(r, q, a);
		return;
	}
	struct lookup *lk = (struct lookup *)ht_find(&r->inflight, q->domain, h);
	if (lk) {
		q->next = lk->waiters;
		lk->waiters = q;
		return;
	}
	lookup_start(r, q, h);
}

/* ---- the thread ---- */

static void *resolver_main(void *arg)
{
	struct resolver *r = arg;
	for (;;) {
		pthread_mutex_lock(&r->lock);
		if (r->stop) {
			/* resolver_free drops what is still queued */
			pthread_mutex_unlock(&r->lock);
			break;
		}
		struct request *q = r->queue;
		r->queue = NULL;
		r->queue_tail = &r->queue;
		pthread_mutex_unlock(&r->lock);
		while (q) {
			struct request *next = q->next;
			request_run(r, q);
			q = next;
		}

		struct pollfd pfd[1 + ARES_GETSOCK_MAXNUM];
		ares_socket_t socks[ARES_GETSOCK_MAXNUM];
		/* ARES_GETSOCK_WRITABLE shifts a signed 1 into the sign bit
		 * for the last socket: test the bits unsigned instead. */
		unsigned bits = (unsigned)ares_getsock(r->ch, socks, ARES_GETSOCK_MAXNUM);
		nfds_t n = 1;
		pfd[0] = (struct pollfd){.fd = r->wake_fd, .events = POLLIN};
		for (unsigned i = 0; i < ARES_GETSOCK_MAXNUM; i++) {
			short ev = 0;
			if (bits & 1u << i)
				ev |= POLLIN;
			if (bits & 1u << (i + ARES_GETSOCK_MAXNUM))
				ev |= POLLOUT;
			if (ev)
				pfd[n++] = (struct pollfd){.fd = socks[i], .events = ev};
		}
		struct timeval tv, *tvp = ares_timeout(r->ch, NULL, &tv);
		int timeout = -1;
		if (tvp)
			timeout = (int)(tvp->tv_sec * 1000 + (tvp->tv_usec + 999) / 1000);
		/* On error no revents are set: c-ares then looks at its timeouts. */
		poll(pfd, n, timeout);
		if (pfd[0].revents & POLLIN) {
			uint64_t v;
			ssize_t rd = read(r->wake_fd, &v, sizeof(v));
			(void)rd;
		}
		bool any = false;
		for (nfds_t i = 1; i < n; i++) {
			short re = pfd[i].revents;
			if (!re)
				continue;
			any = true;
			ares_socket_t rfd = re & (POLLIN | POLLERR | POLLHUP) ? pfd[i].fd : ARES_SOCKET_BAD;
			ares_socket_t wfd = re & (POLLOUT | POLLERR | POLLHUP) ? pfd[i].fd : ARES_SOCKET_BAD;
			ares_process_fd(r->ch, rfd, wfd);
		}
		if (!any)
			ares_process_fd(r->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	}
	r->closing = true;
	ares_destroy(r->ch);   /* lookups in flight end with ARES_EDESTRUCTION */
	r->ch = NULL;
	return NULL;
}

/* ---- public ---- */

static pthread_once_t library_once = PTHREAD_ONCE_INIT;
static int library_status;

static void library_init(void)
{
	library_status = ares_library_init(ARES_LIB_INIT_ALL);
}

struct resolver *resolver_new(const char *servers, char *err, size_t errlen)
{
	pthread_once(&library_once, library_init);
	if (library_status != ARES_SUCCESS) {
		snprintf(err, errlen, "resolver: ares_library_init: %s", ares_strerror(library_status));
		return NULL;
	}
	struct resolver *r = calloc(1, sizeof(*r));
	if (!r) {
		snprintf(err, errlen, "resolver: out of memory");
		return NULL;
	}
	r->queue_tail = &r->queue;
	r->wake_fd = -1;

	struct ares_options opt = {.timeout = 2000, .tries = 2};
	int st = ares_init_options(&r->ch, &opt, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
	if (st != ARES_SUCCESS) {
		snprintf(err, errlen, "resolver: ares_init: %s", ares_strerror(st));
		free(r);
		return NULL;
	}
	if (servers && *servers &&
	    (st = ares_set_servers_ports_csv(r->ch, servers)) != ARES_SUCCESS) {
		snprintf(err, errlen, "resolver: DNS servers \"%s\": %s", servers, ares_strerror(st));
		goto fail;
	}
	if (getrandom(&r->rng, sizeof(r->rng), GRND_NONBLOCK) != sizeof(r->rng))
		r->rng = now_ms() ^ (uint64_t)(uintptr_t)r;
	r->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (r->wake_fd < 0) {
		snprintf(err, errlen, "resolver: eventfd: %s", strerror(errno));
		goto fail;
	}
	pthread_mutex_init(&r->lock, NULL);

	/* Signals belong to the main thread (engine/main.c). */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int ret = pthread_create(&r->thread, NULL, resolver_main, r);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (ret) {
		snprintf(err, errlen, "resolver: pthread_create: %s", strerror(ret));
		pthread_mutex_destroy(&r->lock);
		goto fail;
	}
	return r;
fail:
	if (r->wake_fd >= 0)
		close(r->wake_fd);
	ares_destroy(r->ch);
	free(r);
	return NULL;
}

static void wake(struct resolver *r)
{
	uint64_t one = 1;
	ssize_t w = write(r->wake_fd, &one, sizeof(one));
	(void)w;   /* EAGAIN: the counter is already non-zero, a wake is due */
}

void resolver_free(struct resolver *r)
{
	if (!r)
		return;
	/* From a callback this would join its own thread. */
	assert(!pthread_equal(pthread_self(), r->thread));
	pthread_mutex_lock(&r->lock);
	r->stop = true;
	pthread_mutex_unlock(&r->lock);
	wake(r);
	pthread_join(r->thread, NULL);
	while (r->queue) {
		struct request *q = r->queue;
		r->queue = q->next;
		request_drop(q);
	}
	cache_clear(r);
	close(r->wake_fd);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

/* "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 4.1.3), answered here. */
static int answer_literal(const char *domain, resolver_cb cb, void *arg)
{
	struct resolver_result *res = calloc(1, sizeof(*res));
	if (!res)
		return -1;
	size_t len = strlen(domain);
	char inner[64];
	struct resolver_target t = {.pref = 0};
	bool ok = false;
	if (len >= 3 && domain[len - 1] == ']' && len - 2 < sizeof(inner)) {
		memcpy(inner, domain + 1, len - 2);
		inner[len - 2] = '\0';
		struct sockaddr_in *s4 = (struct sockaddr_in *)&t.addr;
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&t.addr;
		if (strncasecmp(inner, "IPv6:", 5) == 0) {
			ok = inet_pton(AF_INET6, inner + 5, &s6->sin6_addr) == 1;
			s6->sin6_family = AF_INET6;
			t.addrlen = sizeof(*s6);
		} else {
			ok = inet_pton(AF_INET, inner, &s4->sin_addr) == 1;
			s4->sin_family = AF_INET;
			t.addrlen = sizeof(*s4);
		}
	}
	if (ok) {
		res->t = malloc(sizeof(*res->t));
		if (!res->t) {
			free(res);
			return -1;
		}
		snprintf(t.host, sizeof(t.host), "%s", domain);
		res->t[0] = t;
		res->n = 1;
		res->status = RESOLVER_OK;
	} else {
		res->status = RESOLVER_NO_ADDRESS;
		snprintf(res->error, sizeof(res->error), "malformed address literal %.100s", domain);
	}
	cb(arg, res);
	return 0;
}

int resolver_lookup(struct resolver *r, const char *domain, resolver_cb cb, void *arg)
{
	if (domain[0] == '[')
		return answer_literal(domain, cb, arg);
	struct request *q = calloc(1, sizeof(*q));
	struct resolver_result *res = calloc(1, sizeof(*res));
	if (!q || !res) {
		free(q);
		free(res);
		return -1;
	}
	q->cb = cb;
	q->arg = arg;
	q->res = res;
	size_t len = strlen(domain);
	if (len && domain[len - 1] == '.')
		len--;   /* the name is absolute either way */
	if (len == 0 || len > 253) {
		free(q);
		res->status = RESOLVER_NO_ADDRESS;
		snprintf(res->error, sizeof(res->error), "bad domain name \"%.100s\"", domain);
		cb(arg, res);
		return 0;
	}
	for (size_t i = 0; i < len; i++) {
		char c = domain[i];
		q->domain[i] = c >= 'A' && c <= 'Z' ? (char)(c + 'a' - 'A') : c;
	}
	q->domain[len] = '\0';

	pthread_mutex_lock(&r->lock);
	*r->queue_tail = q;
	r->queue_tail = &q->next;
	pthread_mutex_unlock(&r->lock);
	wake(r);
	return 0;
}
