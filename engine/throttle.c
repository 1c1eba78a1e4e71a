/* Throttling table (see throttle.h). Entries are never freed: a source's
 * slot stays for the life of the process (64K sources per process before
 * new ones go unlimited, with a log line); that keeps lookups lock-free. */
#include "throttle.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"


int throttle_init(struct throttle *t, uint64_t now_ms)
{
	memset(t, 0, sizeof(*t));
	t->slot = calloc(THROTTLE_SLOTS, sizeof(*t->slot));
	t->start_ms = now_ms;
	return t->slot ? 0 : -1;
}

void throttle_free(struct throttle *t)
{
	free(t->slot);
	t->slot = NULL;
}

static uint64_t hash_key(unsigned connector, const char *source)
{
	uint64_t h = 0xcbf29ce484222325ull ^ (connector + 1);
	for (const char *p = source; *p; p++)
		h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
	return h ? h : 1;
}

struct throttle_entry *throttle_entry(struct throttle *t, unsigned connector,
				      const char *source)
{
	uint64_t key = hash_key(connector, source);
	for (unsigned i = 0; i < 64; i++) {
		struct throttle_entry *e = &t->slot[(key + i) & (THROTTLE_SLOTS - 1)];
		uint64_t k = atomic_load_explicit(&e->key, memory_order_acquire);
		if (k == key)
			return e;
		if (k == 0) {
			uint64_t zero = 0;
			if (atomic_compare_exchange_strong(&e->key, &zero, key)) {
				snprintf(e->source, sizeof(e->source), "%s", source);
				e->connector = connector;
				return e;
			}
			if (zero == key)
				return e;
		}
	}
	static _Atomic int warned;
	if (!atomic_exchange(&warned, 1))
		log_msg(LOG_WARN, "event=throttle_table_full note=\"new sources are not limited\"");
	return NULL;
}

/* Tokens are counted in sixty-thousandths, so a rate of R per minute earns
 * exactly R units per millisecond: no rounding, no drift. */
#define UNIT 60000ull

bool throttle_bucket_take(uint64_t *word, uint32_t rate_per_min, uint32_t now_ms)
{
	uint64_t cap = (uint64_t)rate_per_min * UNIT;
	/* The high half holds tokens + 1, so 0 can only mean a new bucket,
	 * which starts full. */
	uint64_t tokens = *word ? (*word >> 32) - 1 : cap;
	uint32_t last = *word ? (uint32_t)*word : now_ms;
	tokens += (uint64_t)(uint32_t)(now_ms - last) * rate_per_min;
	if (tokens > cap)
		tokens = cap;   /* full, or the limit was lowered by a reload */
	bool ok = tokens >= UNIT;
	if (ok)
		tokens -= UNIT;
	*word = (tokens + 1) << 32 | now_ms;
	return ok;
}

bool throttle_take_message(struct throttle *t, struct throttle_entry *e,
			   uint32_t rate_per_min, uint64_t now_ms, double *tokens_left)
{
	uint32_t now = (uint32_t)(now_ms - t->start_ms);
	uint64_t old = atomic_load_explicit(&e->bucket, memory_order_relaxed);
	for (;;) {
		uint64_t w = old;
		bool ok = throttle_bucket_take(&w, rate_per_min, now);
		if (atomic_compare_exchange_weak_explicit(&e->bucket, &old, w,
							  memory_order_relaxed,
							  memory_order_relaxed)) {
			*tokens_left = (double)((w >> 32) - 1) / UNIT;
			return ok;
		}
	}
}

int throttle_connect(struct throttle *t, const struct rconn *rc,
		     struct throttle_entry *e, int32_t *figure, int32_t *limit)
{
	_Atomic int32_t *total = &t->connector_conns[rc->stats_id & 255];
	int32_t now_total = atomic_fetch_add(total, 1) + 1;
	int32_t now_src = e ? atomic_fetch_add(&e->connections, 1) + 1 : 0;
	int why = 0;
	int32_t pct_limit = (int32_t)(rc->max_inbound_connection *
				      rc->max_inbound_connection_percentage_per_source / 100);
	if (rc->max_inbound_connection && now_total > (int32_t)rc->max_inbound_connection) {
		why = 1;
		*figure = now_total;
		*limit = (int32_t)rc->max_inbound_connection;
	} else if (e && rc->max_inbound_connection_per_source &&
		   now_src > (int32_t)rc->max_inbound_connection_per_source) {
		why = 2;
		*figure = now_src;
		*limit = (int32_t)rc->max_inbound_connection_per_source;
	} else if (e && rc->max_inbound_connection &&
		   rc->max_inbound_connection_percentage_per_source && pct_limit > 0 &&
		   now_src > pct_limit) {
		why = 3;
		*figure = now_src;
		*limit = pct_limit;
	}
	if (why)
		throttle_disconnect(t, rc, e);
	return why;
}

void throttle_disconnect(struct throttle *t, const struct rconn *rc,
			 struct throttle_entry *e)
{
	atomic_fetch_sub(&t->connector_conns[rc->stats_id & 255], 1);
	if (e)
		atomic_fetch_sub(&e->connections, 1);
}

void throttle_print(struct throttle *t, const struct conf *c, uint64_t now_ms,
		    FILE *out)
{
	uint32_t now = (uint32_t)(now_ms - t->start_ms);
	fprintf(out, "%-32s %-40s %11s %9s %14s %9s\n", "connector", "source",
		"connections", "limit", "message tokens", "per min");
	for (unsigned i = 0; i < THROTTLE_SLOTS; i++) {
		struct throttle_entry *e = &t->slot[i];
		if (!atomic_load(&e->key))
			continue;
		const struct rconn *rc = NULL;
		for (unsigned k = 0; k < c->nrc; k++)
			if (c->rc[k].stats_id == e->connector)
				rc = &c->rc[k];
		if (!rc)
			continue;
		int32_t conns = atomic_load(&e->connections);
		uint32_t rate = (uint32_t)rc->message_rate_limit;
		uint64_t w = atomic_load(&e->bucket);
		double tokens = 0;
		if (rate) {
			uint64_t tmp = w;
			/* a refill without taking: add a token back after a take */
			bool ok = throttle_bucket_take(&tmp, rate, now);
			tokens = (double)((tmp >> 32) - 1) / UNIT + (ok ? 1.0 : 0.0);
		}
		uint64_t climit = rc->max_inbound_connection_per_source;
		bool near_conn = climit && conns * 10 >= (int64_t)climit * 8;
		bool near_rate = rate && tokens <= rate * 0.2;
		/* Sources near a limit; authenticated users' buckets always
		 * (there are as many as users, and "who sends how much" is the
		 * question asked of them). */
		bool user = strncmp(e->source, "user:", 5) == 0;
		if (!near_conn && !near_rate && !user)
			continue;
		char lim[24] = "-", tok[32] = "-";
		if (climit)
			snprintf(lim, sizeof(lim), "%llu", (unsigned long long)climit);
		if (rate)
			snprintf(tok, sizeof(tok), "%.1f", tokens);
		fprintf(out, "%-32.32s %-40s %11d %9s %14s %9u\n", rc->name, e->source, conns,
			lim, tok, rate);
	}
}
