/* Delivery (see deliver.h): destinations keyed by send connector and
 * domain, their targets, the jobs waiting for a connection, connection
 * reuse, the connectors' connection and rate limits across workers (and
 * per recipient domain), the credentials each new connection presents,
 * backing off a next hop that asked us to, and never connecting to
 * ourselves (DESIGN B.6). */
#include "deliver.h"

#include <ifaddrs.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drop.h"
#include "listener.h"
#include "log.h"
#include "mailbox.h"
#include "outconn.h"
#include "resolver.h"
#include "secret.h"
#include "throttle.h"
#include "tls.h"

#define DEST_BUCKETS 1024
#define DEST_KEEP_MS 60000     /* an unused destination is forgotten after this */
#define MX_REUSE_MS 60000      /* resolver answers kept by a destination */
#define BACKOFF_MIN_MS 60000   /* a next hop that asked us to go away ... */
#define BACKOFF_MAX_MS 600000  /* ... doubling while it keeps asking */
#define LOCAL_ADDRS_MS 10000   /* this machine's addresses are re-read after this */
#define DOMAIN_PROBES 32       /* slots a domain's count may live in */

struct dest {
	struct dest *hnext;
	struct deliver *dl;
	char domain[256];          /* "" unless MX delivery */
	struct conf *conf;         /* held: sc points into it */
	const struct sconn *sc;    /* the send connector, by name: from the
	                            * newest conf it was seen in */
	struct throttle_entry *th; /* connections and rate, across workers */
	bool resolving;
	int64_t resolved_until;    /* monotonic ms */
	struct resolver_target *t;
	unsigned nt;
	struct djob *head, *tail;  /* jobs waiting for a connection */
	unsigned nconns;
	struct oconn *idle;
	uint64_t last_used;
	bool throttled;            /* waiting for the send rate limit */
	bool starved;              /* jobs wait for a connection held by another worker */
	SSL_SESSION *tls_session;  /* the newest from the next hop, to resume with;
	                            * made with sc->tls (another context: dropped) */
	/* No new connection before backoff_until (monotonic ms): the next
	 * hop said 421 / 4.3.2 before MAIL, or refused our credentials. Jobs
	 * wait meanwhile; backoff_ms doubles while it repeats and is
	 * forgotten once a session gets to MAIL. */
	uint64_t backoff_until, backoff_ms;
	bool backoff_credentials;  /* lifted early when the secret file changes */
	bool self_loop;            /* every target is ourselves (DESIGN B.6) */
	char loop_relay[300];      /* ... the first of them, for logs and DSNs */
	bool domain_capped;        /* at max_connections_per_domain (logged once) */
	_Atomic uint64_t *pending_slot; /* the domain count of the connection
	                            * being opened, for oc_opened */
};

/* A credential file, read at most once per change for all destinations
 * of this worker. */
struct secret_entry {
	struct secret_entry *next;
	struct secret s;
	uint64_t last_used;
};

/* An MX answer, from the resolver thread. */
struct answer {
	struct mailbox_node node;  /* first */
	struct deliver *dl;
	struct dest *d;
	struct resolver_result *res;
};

struct deliver {
	struct wctx *w;
	void (*done)(void *arg, struct djob *j);
	void *done_arg;
	struct dest *bucket[DEST_BUCKETS];
	struct oconn *conns;       /* every connection */
	unsigned nconns;
	unsigned resolving;
	unsigned nstarved;         /* dests with d->starved set */
	struct drop_writer *drop;
	struct mailbox answers;    /* from the resolver thread */
	struct secret_entry *secrets;
	struct sockaddr_storage *local; /* this machine's addresses (getifaddrs) */
	unsigned nlocal;
	uint64_t local_until;
};

static void dest_pump(struct deliver *dl, struct dest *d);
static bool wanted_elsewhere(const struct oconn *oc);
static bool peer_wants(const struct dest *d, const struct wctx *w);

/* ---- jobs ------------------------------------------------------------- */

static void job_fail(struct deliver *dl, struct djob *j, int code, const char *status,
		     const char *text)
{
	djob_result_all(j, code, status, text);
	dl->done(dl->done_arg, j);
}

/* Not attempted (stopping, our own rate limit): back to the queue as is. */
static void job_return(struct deliver *dl, struct djob *j)
{
	j->not_attempted = true;
	dl->done(dl->done_arg, j);
}

/* ---- credentials ------------------------------------------------------ */

#define SECRET_KEEP_MS 600000  /* an unused credential file is forgotten after this */

static struct secret_entry *secret_entry_get(struct deliver *dl, const struct sconn *sc)
{
	bool token = sc->auth_mech == SCONN_AUTH_XOAUTH2;
	const char *path = token ? sc->auth_token_file : sc->auth_password_file;
	size_t max = token ? SECRET_TOKEN_MAX : SECRET_PASSWORD_MAX;
	if (!path)
		return NULL;
	struct secret_entry *e = dl->secrets;
	while (e && (strcmp(e->s.path, path) != 0 || e->s.max != max))
		e = e->next;
	if (!e) {
		e = calloc(1, sizeof(*e));
		if (!e)
			return NULL;
		if (!secret_init(&e->s, path, max)) {
			free(e);
			return NULL;
		}
		e->next = dl->secrets;
		dl->secrets = e;
	}
	e->last_used = dl->w->now_ms;
	return e;
}

/* The send connector's secret as its file says now, for a new
 * connection (the connection copies it). One stat() per connection; the
 * file is read only when it changed: a small read on the worker thread,
 * as rare as the changes (a token refresher: hourly). NULL: it could not
 * be had, logged. */
static const char *dest_secret(struct deliver *dl, struct dest *d)
{
	const struct sconn *sc = d->sc;
	struct secret_entry *e = secret_entry_get(dl, sc);
	char err[600];
	if (!e)
		snprintf(err, sizeof(err), "%s", "no credential file, or out of memory");
	else if (secret_refresh(&e->s, NULL, err, sizeof(err)) == 0)
		return e->s.value;
	char qc[200], qu[300], qe[700];
	log_msg(LOG_ERROR,
		"event=auth dir=out send_connector=%s user=%s mechanism=%s result=unavailable reason=%s",
		log_quote(qc, sizeof(qc), sc->name),
		log_quote(qu, sizeof(qu), sc->auth_username ? sc->auth_username : ""),
		sconn_auth_names[sc->auth_mech < 4 ? sc->auth_mech : 0], log_quote(qe, sizeof(qe), err));
	return NULL;
}

static void secrets_expire(struct deliver *dl, bool all)
{
	for (struct secret_entry **pp = &dl->secrets; *pp;) {
		struct secret_entry *e = *pp;
		if (!all && dl->w->now_ms - e->last_used < SECRET_KEEP_MS) {
			pp = &e->next;
			continue;
		}
		*pp = e->next;
		secret_free(&e->s);
		free(e);
	}
}

/* ---- ourselves (DESIGN B.6) -------------------------------------------- */

static unsigned addr_port(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)ss)->sin_port);
	if (ss->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
	return 0;
}

static void local_addrs_refresh(struct deliver *dl)
{
	if (dl->local && dl->w->now_ms < dl->local_until)
		return;
	dl->local_until = dl->w->now_ms + LOCAL_ADDRS_MS;
	struct ifaddrs *ifa;
	if (getifaddrs(&ifa) != 0)
		return; /* the last list stands */
	unsigned n = 0;
	for (struct ifaddrs *p = ifa; p; p = p->ifa_next)
		n += p->ifa_addr && (p->ifa_addr->sa_family == AF_INET ||
				     p->ifa_addr->sa_family == AF_INET6);
	struct sockaddr_storage *a = calloc(n ? n : 1, sizeof(*a));
	if (a) {
		unsigned k = 0;
		for (struct ifaddrs *p = ifa; p; p = p->ifa_next) {
			if (!p->ifa_addr || k == n)
				continue;
			if (p->ifa_addr->sa_family == AF_INET)
				memcpy(&a[k++], p->ifa_addr, sizeof(struct sockaddr_in));
			else if (p->ifa_addr->sa_family == AF_INET6)
				memcpy(&a[k++], p->ifa_addr, sizeof(struct sockaddr_in6));
		}
		free(dl->local);
		dl->local = a;
		dl->nlocal = k;
	}
	freeifaddrs(ifa);
}

/* An address that reaches this machine: the unspecified one, 127/8 (all
 * of it is lo's), or one of its interfaces'. */
static bool addr_is_local(struct deliver *dl, int family, u128 v)
{
	if (v == 0 || (family == 4 && v >> 24 == 127))
		return true;
	local_addrs_refresh(dl);
	for (unsigned i = 0; i < dl->nlocal; i++) {
		int f;
		u128 x;
		if (conf_sockaddr_value((const struct sockaddr *)&dl->local[i], &f, &x) &&
		    f == family && x == v)
			return true;
	}
	return false;
}

/* Would a connection to ss reach one of our own listeners: a binding's
 * address and port, or any address of this machine on the port of a
 * wildcard binding (0.0.0.0 takes IPv4, [::] both: listener.c clears
 * IPV6_V6ONLY)? */
static bool addr_is_ours(struct deliver *dl, const struct conf *c,
			 const struct sockaddr_storage *ss)
{
	int family;
	u128 v;
	if (!conf_sockaddr_value((const struct sockaddr *)ss, &family, &v))
		return false;
	unsigned port = addr_port(ss);
	for (unsigned b = 0; b < c->nbindings; b++) {
		const struct sockaddr_storage *ba = &c->bindings[b].addr;
		int bf;
		u128 bv;
		if (addr_port(ba) != port ||
		    !conf_sockaddr_value((const struct sockaddr *)ba, &bf, &bv))
			continue;
		if (bv != 0) {
			if (bf == family && bv == v)
				return true;
			continue;
		}
		if ((ba->ss_family == AF_INET6 || family == 4) && addr_is_local(dl, family, v))
			return true;
	}
	return false;
}

/* Targets that are ourselves are never tried: smart hosts that are drop
 * out of the list; with MX, so does every host of their preference or a
 * worse one (RFC 5321 5.1: we are one of the exchangers, and no better
 * one than them). Nothing left: the destination loops. */
static void dest_drop_ourselves(struct deliver *dl, struct dest *d)
{
	d->self_loop = false;
	unsigned first = 0;
	while (first < d->nt && !addr_is_ours(dl, d->conf, &d->t[first].addr))
		first++;
	if (first == d->nt)
		return;
	char ip[INET6_ADDRSTRLEN] = "?", *relay = d->loop_relay;
	peer_text(&d->t[first].addr, ip, sizeof(ip));
	/* As outconn.c names a target: the MX host, or a smart host's address. */
	snprintf(relay, sizeof(d->loop_relay), "%.250s[%s]:%u", d->domain[0] ? d->t[first].host : "",
		 ip, addr_port(&d->t[first].addr));
	unsigned pref = d->t[first].pref, keep = 0;
	for (unsigned i = 0; i < d->nt; i++) {
		bool drop = d->domain[0] ? d->t[i].pref >= pref
			    : i == first || (i > first && addr_is_ours(dl, d->conf, &d->t[i].addr));
		if (!drop)
			d->t[keep++] = d->t[i];
	}
	d->nt = keep;
	d->self_loop = keep == 0;
	char qc[LOG_QUOTE_CAP(64)], qd[LOG_QUOTE_CAP(sizeof(d->domain))];
	char qr[LOG_QUOTE_CAP(sizeof(d->loop_relay))];
	log_msg(LOG_WARN,
		"event=loop send_connector=%s domain=%s relay=%s reason=\"one of our own listening addresses\" targets_left=%u",
		log_quote_always(qc, sizeof(qc), d->sc->name), log_quote(qd, sizeof(qd), d->domain),
		log_quote(qr, sizeof(qr), relay), keep);
}

/* Jobs for a destination that is ourselves: deferred, then bounced. */
static void dest_loop_waiting(struct dest *d, const char *remote)
{
	while (d->head) {
		struct djob *j = d->head;
		d->head = j->next;
		j->next = NULL;
		snprintf(j->remote, sizeof(j->remote), "%s", remote);
		outconn_loop_results(j, d->conf->hostname);
		d->dl->done(d->dl->done_arg, j);
	}
	d->tail = NULL;
}

/* ---- connections per recipient domain, across workers ------------------ */

/* The send connector's table (struct sconn's domain_conns): a slot holds a
 * domain's hash (high half, never 0) and its open connections (low half);
 * one whose count is 0 is free for any domain. Every change is one CAS.
 * Two workers counting a new domain in at once may each take a slot for
 * it, and the limit then holds for each: a rare and brief excess. So is
 * a reload: a connection counts in the table of the configuration it was
 * opened with (it holds that configuration), new ones in the new table. */
static uint32_t domain_key(const char *domain)
{
	uint32_t h = resolver_hash_name(RESOLVER_HASH_INIT, domain);
	return h ? h : 1;
}

/* Counts a connection to domain in. NULL with *over: max is reached. NULL
 * otherwise: no slot for it (the table is full of other domains), and so
 * no limit either. */
static _Atomic uint64_t *domain_take(const struct sconn *sc, const char *domain, uint64_t max,
				     bool *over)
{
	*over = false;
	if (!sc->domain_conns || !sc->ndomain_slots)
		return NULL;
	uint32_t key = domain_key(domain), mask = sc->ndomain_slots - 1;
	for (;;) {
		_Atomic uint64_t *mine = NULL, *free_slot = NULL;
		for (unsigned i = 0; i < DOMAIN_PROBES && !mine; i++) {
			_Atomic uint64_t *s = &sc->domain_conns[(key + i) & mask];
			uint64_t w = atomic_load(s);
			if ((uint32_t)w == 0)
				free_slot = free_slot ? free_slot : s;
			else if (w >> 32 == key)
				mine = s;
		}
		if (mine) {
			uint64_t w = atomic_load(mine);
			while (w >> 32 == key && (uint32_t)w != 0) {
				if ((uint32_t)w >= max) {
					*over = true;
					return NULL;
				}
				if (atomic_compare_exchange_weak(mine, &w, w + 1))
					return mine;
			}
			continue; /* freed meanwhile: look again */
		}
		if (!free_slot)
			return NULL;
		uint64_t w = atomic_load(free_slot);
		if ((uint32_t)w == 0 &&
		    atomic_compare_exchange_strong(free_slot, &w, (uint64_t)key << 32 | 1))
			return free_slot;
	}
}

static void domain_put(_Atomic uint64_t *slot)
{
	if (slot)
		atomic_fetch_sub(slot, 1);
}

/* ---- destinations ----------------------------------------------------- */

static unsigned dest_hash(const char *name, const char *domain)
{
	uint32_t h = resolver_hash_name(RESOLVER_HASH_INIT, name);
	h = resolver_hash_name(h, "|");
	h = resolver_hash_name(h, domain);
	return h % DEST_BUCKETS;
}

bool deliver_throttled(const struct deliver *dl, const char *sc_name, const char *domain)
{
	if (!dl)
		return false;
	unsigned h = dest_hash(sc_name, domain);
	for (const struct dest *d = dl->bucket[h]; d; d = d->hnext)
		if (d->sc && strcmp(d->sc->name, sc_name) == 0 && strcmp(d->domain, domain) == 0)
			return d->throttled || d->domain_capped || d->starved ||
			       d->backoff_until > dl->w->now_ms;
	return false;
}

/* The connector's connections and rate across workers (throttle.h); NULL
 * when the throttle table has no slot: see dest_capped(). */
static struct throttle_entry *dest_throttle(struct wctx *w, const struct sconn *sc)
{
	char key[80];
	snprintf(key, sizeof(key), "send:%s", sc->name);
	return throttle_entry(w->throttle, THROTTLE_SEND_CONNECTOR, key);
}

static struct dest *dest_get(struct deliver *dl, struct djob *j)
{
	struct wctx *w = dl->w;
	unsigned h = dest_hash(j->sc->name, j->domain);
	struct dest *d = dl->bucket[h];
	for (; d; d = d->hnext)
		if (strcmp(d->sc->name, j->sc->name) == 0 && strcmp(d->domain, j->domain) == 0)
			break;
	if (!d) {
		d = calloc(1, sizeof(*d));
		if (!d)
			return NULL;
		d->dl = dl;
		snprintf(d->domain, sizeof(d->domain), "%s", j->domain);
		d->th = dest_throttle(w, j->sc);
		d->hnext = dl->bucket[h];
		dl->bucket[h] = d;
	}
	if (d->conf != j->conf) {
		/* A reload builds new TLS contexts: sessions of the old one are
		 * not offered with the new one. */
		if (!d->sc || d->sc->tls != j->sc->tls) {
			tls_session_free(d->tls_session);
			d->tls_session = NULL;
		}
		/* The newest configuration the connector has been seen in. */
		conf_ref(j->conf);
		conf_unref(d->conf);
		d->conf = j->conf;
		d->sc = j->sc;
		if (!d->domain[0])
			d->resolved_until = 0; /* smart hosts may have changed */
	}
	d->last_used = w->now_ms;
	return d;
}

static void dest_fail_waiting(struct dest *d, int code, const char *status,
			      const char *text)
{
	while (d->head) {
		struct djob *j = d->head;
		d->head = j->next;
		j->next = NULL;
		job_fail(d->dl, j, code, status, text);
	}
	d->tail = NULL;
}

static void dest_set_smart_hosts(struct dest *d)
{
	free(d->t);
	d->nt = d->sc->nhosts;
	d->t = calloc(d->nt ? d->nt : 1, sizeof(*d->t));
	for (unsigned i = 0; d->t && i < d->nt; i++) {
		snprintf(d->t[i].host, sizeof(d->t[i].host), "%s", d->sc->hosts[i].text);
		memcpy(&d->t[i].addr, &d->sc->hosts[i].addr, d->sc->hosts[i].addrlen);
		d->t[i].addrlen = d->sc->hosts[i].addrlen;
	}
	if (!d->t)
		d->nt = 0;
	d->resolved_until = INT64_MAX;
	dest_drop_ourselves(d->dl, d);
}

/* ---- MX answers from the resolver thread -------------------------------- */

static void resolved_cb(void *arg, struct resolver_result *res)
{
	struct answer *it = arg;
	struct deliver *dl = it->dl;
	it->res = res;
	mailbox_post(&dl->answers, &it->node);
	wctx_wake(dl->w);
}

static void dest_resolve(struct deliver *dl, struct dest *d)
{
	struct answer *it = calloc(1, sizeof(*it));
	if (!it || !dl->w->resolver) {
		free(it);
		dest_fail_waiting(d, 451, "4.4.3", "451 4.4.3 MX lookup unavailable");
		return;
	}
	it->dl = dl;
	it->d = d;
	d->resolving = true;
	dl->resolving++;
	if (resolver_lookup(dl->w->resolver, d->domain, resolved_cb, it) < 0) {
		d->resolving = false;
		dl->resolving--;
		free(it);
		dest_fail_waiting(d, 451, "4.4.3", "451 4.4.3 MX lookup failed: out of memory");
	}
}

static void on_resolved(struct deliver *dl, struct dest *d, struct resolver_result *res)
{
	d->resolving = false;
	dl->resolving--;
	char text[400];
	switch (res->status) {
	case RESOLVER_OK:
		free(d->t);
		d->t = res->t;
		d->nt = res->n;
		res->t = NULL;
		for (unsigned i = 0; i < d->nt; i++) {
			struct sockaddr_storage *ss = &d->t[i].addr;
			in_port_t port = htons((uint16_t)d->sc->port);
			if (ss->ss_family == AF_INET)
				((struct sockaddr_in *)ss)->sin_port = port;
			else
				((struct sockaddr_in6 *)ss)->sin6_port = port;
		}
		d->resolved_until = (int64_t)dl->w->now_ms + MX_REUSE_MS;
		dest_drop_ourselves(dl, d);
		break;
	case RESOLVER_TEMPFAIL:
		snprintf(text, sizeof(text), "451 4.4.3 %s", res->error);
		dest_fail_waiting(d, 451, "4.4.3", text);
		break;
	case RESOLVER_NULL_MX:
		snprintf(text, sizeof(text), "556 5.1.10 %s", res->error);
		dest_fail_waiting(d, 556, "5.1.10", text);
		break;
	case RESOLVER_NXDOMAIN:
	case RESOLVER_NO_ADDRESS:
		snprintf(text, sizeof(text), "550 5.1.2 %s", res->error);
		dest_fail_waiting(d, 550, "5.1.2", text);
		break;
	}
	resolver_result_free(res);
	dest_pump(dl, d);
}

/* ---- the connections' word back ----------------------------------------- */

static struct dest *dest_of(const struct oconn *oc)
{
	return oc->owner;
}

static void idle_remove(struct dest *d, struct oconn *oc)
{
	struct oconn **pp = &d->idle;
	while (*pp && *pp != oc)
		pp = &(*pp)->idle_next;
	if (*pp)
		*pp = oc->idle_next;
	oc->idle_next = NULL;
}

static void oc_opened(struct oconn *oc)
{
	struct dest *d = dest_of(oc);
	struct deliver *dl = d->dl;
	oc->next = dl->conns;
	if (oc->next)
		oc->next->prev = oc;
	dl->conns = oc;
	dl->nconns++;
	d->nconns++;
	oc->domain_slot = d->pending_slot;
	d->pending_slot = NULL;
}

static void oc_closed(struct oconn *oc)
{
	struct dest *d = dest_of(oc);
	struct deliver *dl = d->dl;
	idle_remove(d, oc);
	if (oc->prev)
		oc->prev->next = oc->next;
	else
		dl->conns = oc->next;
	if (oc->next)
		oc->next->prev = oc->prev;
	dl->nconns--;
	d->nconns--;
	domain_put(oc->domain_slot);
	oc->domain_slot = NULL;
	if (d->sc->max_connections && d->th) {
		atomic_fetch_sub(&d->th->connections, 1);
		/* One of the connector's connections is free: a worker waiting
		 * for it takes it now, not at its next tick. */
		if (peer_wants(d, dl->w))
			wctx_wake_peers(dl->w);
	}
	if (!dl->w->stopping)
		dest_pump(dl, d);
}

static void oc_job_done(struct oconn *oc, struct djob *j)
{
	struct deliver *dl = dest_of(oc)->dl;
	dl->done(dl->done_arg, j);
}

/* The next hop asked us to go away (or refused our credentials): no new
 * connection for a while, doubling while it repeats. The jobs that met it
 * are deferred by unreachable, which follows; new ones wait. */
static void oc_backoff(struct oconn *oc, const char *reply, bool credentials)
{
	struct dest *d = dest_of(oc);
	uint64_t now = oc->w->now_ms;
	bool again = d->backoff_ms && now < d->backoff_until + BACKOFF_MAX_MS;
	uint64_t ms = again ? d->backoff_ms * 2 : BACKOFF_MIN_MS;
	if (ms > BACKOFF_MAX_MS)
		ms = BACKOFF_MAX_MS;
	d->backoff_ms = ms;
	d->backoff_until = now + ms;
	d->backoff_credentials = credentials;
	char qc[200], qr[400], qp[400];
	log_msg(LOG_WARN, "event=backoff send_connector=%s remote=%s seconds=%llu reply=%s",
		log_quote(qc, sizeof(qc), d->sc->name), log_quote(qr, sizeof(qr), oc->remote),
		(unsigned long long)(ms / 1000), log_quote(qp, sizeof(qp), reply));
}

static void oc_established(struct oconn *oc)
{
	struct dest *d = dest_of(oc);
	d->backoff_ms = 0;
	d->backoff_until = 0;
	d->backoff_credentials = false;
}

/* While backing off: true once it is over, or when the credentials it was
 * about have been changed (the operator fixed them: try at once). */
static bool backoff_over(struct deliver *dl, struct dest *d)
{
	if (dl->w->now_ms >= d->backoff_until)
		return true;
	if (!d->backoff_credentials || d->sc->auth_mech == SCONN_AUTH_NONE)
		return false;
	struct secret_entry *e = secret_entry_get(dl, d->sc);
	if (!e || !secret_stale(&e->s))
		return false;
	d->backoff_until = 0;
	d->backoff_ms = 0;
	d->backoff_credentials = false;
	char qc[200];
	log_msg(LOG_INFO, "event=backoff_lifted send_connector=%s reason=\"credentials changed\"",
		log_quote(qc, sizeof(qc), d->sc->name));
	return true;
}

static void oc_unreachable(struct oconn *oc, int code, const char *status, const char *text)
{
	/* The jobs behind it would meet the same hosts. */
	if (strcmp(status, "4.4.6") == 0)
		dest_loop_waiting(dest_of(oc), oc->remote);
	else
		dest_fail_waiting(dest_of(oc), code, status, text);
}

/* Another worker waits for one of the connector's connections (the word
 * holds until when, and which worker asked). */
/* This worker's share of the connector's max_connections. */
static uint64_t fair_share(const struct dest *d, const struct wctx *w)
{
	uint64_t fair = d->sc->max_connections / (w->nworkers ? w->nworkers : 1);
	return fair ? fair : 1;
}

/* Another worker, below its share, waits for one of the connector's
 * connections. */
static bool peer_wants(const struct dest *d, const struct wctx *w)
{
	if (!d->th || !d->sc->max_connections)
		return false;
	uint64_t v = atomic_load(&d->th->wanted_until);
	return w->now_ms < v >> 8 && (v & 0xff) != (w->id % 255 + 1);
}

/* ... and this one holds its share or more. */
static bool wanted_by_peer(const struct dest *d, const struct wctx *w)
{
	return d->nconns >= fair_share(d, w) && peer_wants(d, w);
}

/* An idle connection beyond this worker's share goes back to a peer that
 * wants one. Only beyond it: two workers that both hold their share and
 * both want more would otherwise close each other's connections by turns
 * (20,000 messages took 3,370 connections instead of about 1,000). The
 * share rounded down: with fewer connections than workers it is none,
 * and an idle one always goes to the peer that waits. */
static bool wanted_elsewhere(const struct oconn *oc)
{
	const struct dest *d = dest_of(oc);
	const struct wctx *w = oc->w;
	return peer_wants(d, w) &&
	       d->nconns > d->sc->max_connections / (w->nworkers ? w->nworkers : 1);
}

/* May the job at the head of the queue start now under the connector's
 * rate limit? When not, jobs simply wait in the destination's queue (the
 * tick tries again): nothing is deferred or bounced for our own limit. One
 * log line per throttled stretch, one count per delayed job. */
static bool rate_ok(struct deliver *dl, struct dest *d)
{
	uint64_t rate = d->sc->max_message_rate;
	if (!rate || !d->head)
		return true;
	if (!d->th)
		return false; /* no bucket to count in (dest_capped) */
	double left;
	struct wctx *w = dl->w;
	if (throttle_take_message(w->throttle, d->th, (uint32_t)rate, w->now_ms, &left)) {
		d->throttled = false;
		return true;
	}
	if (!d->head->delayed) {
		d->head->delayed = true;
		metric_add(&w->m->send[d->sc->stats_id].throttled, 1);
	}
	if (!d->throttled) {
		d->throttled = true;
		unsigned waiting = 0;
		for (const struct djob *j = d->head; j; j = j->next)
			waiting++;
		char qc[200];
		log_msg(LOG_INFO,
			"event=throttle reason=send_message_rate send_connector=%s limit=%llu current=%u",
			log_quote_always(qc, sizeof(qc), d->sc->name), (unsigned long long)rate, waiting);
	}
	return false;
}

static struct djob *dest_take(struct dest *d)
{
	struct djob *j = d->head;
	d->head = j->next;
	if (!d->head)
		d->tail = NULL;
	j->next = NULL;
	return j;
}

static struct djob *oc_next_job(struct oconn *oc)
{
	struct dest *d = dest_of(oc);
	struct deliver *dl = d->dl;
	if (!d->head || dl->w->stopping || oc->msgs >= d->sc->max_messages_per_connection ||
	    !rate_ok(dl, d))
		return NULL;
	return dest_take(d);
}

static bool oc_may_idle(struct oconn *oc)
{
	struct dest *d = dest_of(oc);
	if (oc->w->stopping || oc->msgs >= d->sc->max_messages_per_connection ||
	    !d->sc->idle_timeout_ms || wanted_elsewhere(oc))
		return false;
	oc->idle_next = d->idle;
	d->idle = oc;
	return true;
}

/* One session per destination: the next connection resumes the newest. */
static SSL_SESSION *oc_tls_resume(struct oconn *oc)
{
	const struct dest *d = dest_of(oc);
	return d->sc->tls == oc->p.tls_ctx ? d->tls_session : NULL;
}

static void oc_tls_session(struct oconn *oc, SSL_SESSION *s)
{
	struct dest *d = dest_of(oc);
	if (d->sc->tls != oc->p.tls_ctx) {
		tls_session_free(s); /* from a connection of the old configuration */
		return;
	}
	tls_session_free(d->tls_session);
	d->tls_session = s;
}

static const struct outconn_ops oc_ops = {
	.opened = oc_opened, .next_job = oc_next_job, .may_idle = oc_may_idle,
	.job_done = oc_job_done, .unreachable = oc_unreachable, .closed = oc_closed,
	.tls_resume = oc_tls_resume, .tls_session = oc_tls_session,
	.backoff = oc_backoff, .established = oc_established,
};

/* A connector with max_connections or max_message_rate needs its throttle
 * entry to count in; without one (the table is full) its jobs are not
 * attempted, rather than sent uncapped: back to the queue, which offers
 * them again in a second. */
static bool dest_capped(struct deliver *dl, struct dest *d)
{
	struct wctx *w = dl->w;
	if (d->th || (!d->sc->max_connections && !d->sc->max_message_rate) ||
	    (d->th = dest_throttle(w, d->sc)))
		return true;
	unsigned n = 0;
	while (d->head) {
		job_return(dl, dest_take(d));
		n++;
	}
	metric_add(&w->m->send[d->sc->stats_id].table_full, n);
	uint64_t count = throttle_full_note(w->throttle, THROTTLE_FULL_DEFERRED, n, w->now_ms);
	char qc[200];
	if (count)
		log_msg(LOG_WARN,
			"event=throttle reason=table_full send_connector=%s count=%llu note=\"no throttle slot for the connector's caps: deliveries not attempted, offered again in a second\"",
			log_quote(qc, sizeof(qc), d->sc->name), (unsigned long long)count);
	return false;
}

/* At max_connections_per_domain: the jobs wait (the tick looks again);
 * one line per stretch. */
static void domain_capped(struct dest *d, uint64_t max)
{
	if (d->domain_capped)
		return;
	d->domain_capped = true;
	unsigned waiting = 0;
	for (const struct djob *j = d->head; j; j = j->next)
		waiting++;
	char qc[LOG_QUOTE_CAP(64)], qd[LOG_QUOTE_CAP(sizeof(d->domain))];
	log_msg(LOG_INFO,
		"event=throttle reason=max_connections_per_domain send_connector=%s domain=%s limit=%llu current=%u",
		log_quote_always(qc, sizeof(qc), d->sc->name), log_quote(qd, sizeof(qd), d->domain),
		(unsigned long long)max, waiting);
}

/* Gives waiting jobs connections: idle ones first, then new ones up to
 * the connector's limits (in all, and per recipient domain for MX). */
static void dest_pump(struct deliver *dl, struct dest *d)
{
	struct wctx *w = dl->w;
	if (w->stopping || !d->head || !dest_capped(dl, d))
		return;
	if (d->domain[0]) {
		if (d->resolving)
			return;
		if ((int64_t)w->now_ms >= d->resolved_until) {
			dest_resolve(dl, d);
			return;
		}
	} else if ((int64_t)w->now_ms >= d->resolved_until) {
		dest_set_smart_hosts(d);
	}
	if (d->self_loop) {
		dest_loop_waiting(d, d->loop_relay);
		return;
	}
	while (d->head) {
		if (d->idle) {
			struct oconn *oc = d->idle;
			idle_remove(d, oc);
			if (oc->msgs >= d->sc->max_messages_per_connection) {
				outconn_quit(oc); /* used up: a fresh one follows */
				continue;
			}
			if (!rate_ok(dl, d)) {
				oc->idle_next = d->idle;
				d->idle = oc;
				return; /* rate limited: jobs wait for the tick */
			}
			outconn_take(oc, dest_take(d));
			continue;
		}
		/* The tick looks again. */
		if (d->backoff_until && !backoff_over(dl, d))
			return;
		uint64_t per_domain = d->domain[0] ? d->sc->max_connections_per_domain : 0;
		_Atomic uint64_t *slot = NULL;
		if (per_domain) {
			bool over;
			slot = domain_take(d->sc, d->domain, per_domain, &over);
			if (over) {
				domain_capped(d, per_domain);
				return;
			}
		}
		uint64_t max = d->sc->max_connections;
		/* A slot freed while a peer below its share waits for one is
		 * the peer's (it was woken for it): taking it at or above our
		 * share would only make us give one back, a connection closed
		 * and another opened for nothing. The tick looks again. */
		if (wanted_by_peer(d, w))
			return;
		if (max && d->th) {
			int32_t now = atomic_fetch_add(&d->th->connections, 1) + 1;
			if (now > (int32_t)max) {
				atomic_fetch_sub(&d->th->connections, 1);
				domain_put(slot);
				/* A worker below its fair share makes the others
				 * give back their idle connections; it retries at
				 * its next tick. */
				if (d->nconns < fair_share(d, w)) {
					uint64_t want = (w->now_ms + 1000) << 8 | (w->id % 255 + 1);
					uint64_t was = atomic_exchange(&d->th->wanted_until, want);
					/* Newly wanted: the others look at their idle
					 * connections now, not at their next tick. */
					if ((was & 0xff) != (want & 0xff) || w->now_ms >= was >> 8)
						wctx_wake_peers(w);
				}
				if (!d->starved) {
					d->starved = true;
					dl->nstarved++;
				}
				return;
			}
		}
		if (!rate_ok(dl, d)) {
			if (max && d->th)
				atomic_fetch_sub(&d->th->connections, 1);
			domain_put(slot);
			return;
		}
		const char *secret = NULL;
		if (d->sc->auth_mech != SCONN_AUTH_NONE && !(secret = dest_secret(dl, d))) {
			if (max && d->th)
				atomic_fetch_sub(&d->th->connections, 1);
			domain_put(slot);
			char text[300];
			snprintf(text, sizeof(text),
				 "451 4.7.0 Credentials of send connector \"%.200s\" unavailable",
				 d->sc->name);
			dest_fail_waiting(d, 451, "4.7.0", text);
			return;
		}
		struct djob *j = dest_take(d);
		d->domain_capped = false;
		struct oconn_params p = {
			.helo = d->conf->hostname, .connect_timeout_ms = d->sc->connect_timeout_ms,
			.idle_timeout_ms = d->sc->idle_timeout_ms,
			.command_timeout_ms = d->sc->command_timeout_ms,
			.data_timeout_ms = d->sc->data_timeout_ms, .min_data_rate = d->sc->min_data_rate,
			.targets = d->t,
			.ntargets = d->nt, .mx = d->domain[0] != 0, .connector = d->sc->name,
			.stats_id = d->sc->stats_id, .conf = d->conf, .tls_mode = d->sc->tls_mode,
			.tls_ctx = d->sc->tls, .tls_server_name = d->sc->tls_server_name,
			.auth_mech = d->sc->auth_mech, .auth_user = d->sc->auth_username,
			.auth_secret = secret,
		};
		d->pending_slot = slot; /* for oc_opened */
		if (!outconn_open(w, &oc_ops, d, &p, j)) {
			if (max && d->th)
				atomic_fetch_sub(&d->th->connections, 1);
			domain_put(d->pending_slot);
			job_fail(dl, j, 451, "4.3.0", "451 4.3.0 Out of memory");
		}
		d->pending_slot = NULL;
	}
}

void deliver_submit(struct deliver *dl, struct djob *j)
{
	if (j->sc->drop_dir) {
		if (!drop_submit(dl->drop, j))
			job_fail(dl, j, 451, "4.3.0", "451 4.3.0 Cannot start the drop directory writer");
		return;
	}
	if (dl->w->stopping) {
		job_return(dl, j);
		return;
	}
	struct dest *d = dest_get(dl, j);
	if (!d) {
		job_fail(dl, j, 451, "4.3.0", "451 4.3.0 Out of memory");
		return;
	}
	if (d->tail)
		d->tail->next = j;
	else
		d->head = j;
	d->tail = j;
	dest_pump(dl, d);
}

void deliver_on_io(struct deliver *dl, const struct io_cqe *e)
{
	outconn_on_io(io_cqe_ptr(e), e);
}

static void drop_done(void *arg, struct djob *j)
{
	struct deliver *dl = arg;
	dl->done(dl->done_arg, j);
}

void deliver_wake(struct deliver *dl)
{
	for (struct mailbox_node *n = mailbox_take(&dl->answers), *next; n; n = next) {
		next = n->next;
		struct answer *it = (struct answer *)n;
		on_resolved(dl, it->d, it->res);
		free(it);
	}
	drop_collect(dl->drop, drop_done, dl);
	/* A peer may want a connection we hold idle, or have freed one. */
	for (struct oconn *oc = dl->conns, *next; oc; oc = next) {
		next = oc->next;
		if (oc->state == OC_IDLE && wanted_elsewhere(oc)) {
			idle_remove(dest_of(oc), oc);
			outconn_quit(oc);
		}
	}
	if (dl->w->stopping || !dl->nstarved)
		return;
	for (unsigned b = 0; b < DEST_BUCKETS && dl->nstarved; b++)
		for (struct dest *d = dl->bucket[b]; d; d = d->hnext)
			if (d->starved) {
				d->starved = false;
				dl->nstarved--;
				dest_pump(dl, d);
			}
}

void deliver_tick(struct deliver *dl)
{
	struct wctx *w = dl->w;
	for (struct oconn *oc = dl->conns, *next; oc; oc = next) {
		next = oc->next;
		if (oc->state == OC_IDLE && wanted_elsewhere(oc)) {
			idle_remove(dest_of(oc), oc);
			outconn_quit(oc);
			continue;
		}
		outconn_tick(oc);
	}
	if (w->stopping && w->now_ms >= w->stop_deadline_ms)
		for (struct oconn *oc = dl->conns, *next; oc; oc = next) {
			next = oc->next;
			outconn_lost(oc, "shutting down");
		}
	/* Forget destinations unused for a while. */
	for (unsigned b = 0; b < DEST_BUCKETS; b++) {
		struct dest **pp = &dl->bucket[b];
		while (*pp) {
			struct dest *d = *pp;
			/* A next hop's backoff is remembered a while after it ends,
			 * to double if it asks again. */
			if (!d->head && !d->nconns && !d->resolving &&
			    w->now_ms - d->last_used > DEST_KEEP_MS &&
			    (!d->backoff_ms || w->now_ms >= d->backoff_until + BACKOFF_MAX_MS)) {
				*pp = d->hnext;
				if (d->starved)
					dl->nstarved--;
				conf_unref(d->conf);
				tls_session_free(d->tls_session);
				free(d->t);
				free(d);
				continue;
			}
			if (d->head && !w->stopping)
				dest_pump(dl, d);
			pp = &d->hnext;
		}
	}
	secrets_expire(dl, false);
}

void deliver_stop(struct deliver *dl)
{
	for (unsigned b = 0; b < DEST_BUCKETS; b++)
		for (struct dest *d = dl->bucket[b]; d; d = d->hnext) {
			while (d->head)
				job_return(dl, dest_take(d));
			while (d->idle) {
				struct oconn *oc = d->idle;
				idle_remove(d, oc);
				outconn_close(oc);
			}
		}
}

bool deliver_idle(const struct deliver *dl)
{
	return !dl || (!dl->nconns && !dl->resolving && !drop_pending(dl->drop));
}

struct deliver *deliver_new(struct wctx *w, void (*done)(void *arg, struct djob *j),
			    void *arg, char *err, size_t errlen)
{
	struct deliver *dl = calloc(1, sizeof(*dl));
	if (dl)
		dl->drop = drop_new(w);
	if (!dl || !dl->drop) {
		free(dl);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	dl->w = w;
	dl->done = done;
	dl->done_arg = arg;
	mailbox_init(&dl->answers);
	return dl;
}

void deliver_free(struct deliver *dl)
{
	if (!dl)
		return;
	drop_free(dl->drop);
	while (dl->conns) {
		struct oconn *oc = dl->conns;
		dl->conns = oc->next;
		outconn_discard(oc);
	}
	for (unsigned b = 0; b < DEST_BUCKETS; b++)
		while (dl->bucket[b]) {
			struct dest *d = dl->bucket[b];
			dl->bucket[b] = d->hnext;
			conf_unref(d->conf);
			tls_session_free(d->tls_session);
			free(d->t);
			free(d);
		}
	for (struct mailbox_node *n = mailbox_take(&dl->answers), *next; n; n = next) {
		next = n->next;
		struct answer *it = (struct answer *)n;
		if (it->res)
			resolver_result_free(it->res);
		free(it);
	}
	mailbox_destroy(&dl->answers);
	secrets_expire(dl, true);
	free(dl->local);
	free(dl);
}
