/* Throttling table (see throttle.h): fixed arrays of keys, entries and
 * bucket hints, made once; sources come and go by reusing idle entries in
 * place. Knows nothing of sessions or delivery, only counts and buckets. */
#include "throttle.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>

#define KEY_FREE 0
#define KEY_BUSY 1   /* claimed by a thread that is making or reusing the slot */

/* Tokens are counted in sixty-thousandths, so a rate of R per minute earns
 * exactly R units per millisecond: no rounding, no drift. */
#define UNIT 60000ull

static uint32_t buckets(uint32_t size)
{
	return (size + THROTTLE_BUCKET - 1) / THROTTLE_BUCKET;
}

uint64_t throttle_table_bytes(uint32_t size)
{
	return (uint64_t)size * (sizeof(struct throttle_entry) + sizeof(uint64_t)) +
	       (uint64_t)buckets(size) * sizeof(struct throttle_hint);
}

int throttle_init(struct throttle *t, uint32_t size, uint64_t now_ms)
{
	memset(t, 0, sizeof(*t));
	if (!size)
		size = THROTTLE_SIZE_DEFAULT;
	if (size < THROTTLE_SIZE_MIN || size > THROTTLE_SIZE_MAX)
		return -1;
	t->size = size;
	t->start_ms = now_ms;
	if (getrandom(t->seed, sizeof(t->seed), 0) != (ssize_t)sizeof(t->seed)) {
		/* No entropy yet: filling one bucket pair on purpose gets easier. */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		t->seed[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)t;
		t->seed[1] = (uint64_t)ts.tv_sec * 0xc2b2ae3d27d4eb4full;
	}
	for (unsigned i = 0; i < THROTTLE_STRIPES; i++)
		pthread_mutex_init(&t->make[i], NULL);
	/* Zeroed pages, page-aligned, taken from the system as they are
	 * first touched: an idle relay does not pay for the whole table. */
	void *k = mmap(NULL, (size_t)size * sizeof(*t->key), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *s = mmap(NULL, (size_t)size * sizeof(*t->slot), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *h = mmap(NULL, (size_t)buckets(size) * sizeof(*t->hint), PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	t->key = k == MAP_FAILED ? NULL : k;
	t->slot = s == MAP_FAILED ? NULL : s;
	t->hint = h == MAP_FAILED ? NULL : h;
	if (!t->key || !t->slot || !t->hint) {
		throttle_free(t);
		return -1;
	}
	return 0;
}

void throttle_free(struct throttle *t)
{
	if (t->key)
		munmap((void *)t->key, (size_t)t->size * sizeof(*t->key));
	if (t->slot)
		munmap(t->slot, (size_t)t->size * sizeof(*t->slot));
	if (t->hint)
		munmap(t->hint, (size_t)buckets(t->size) * sizeof(*t->hint));
	t->key = NULL;
	t->slot = NULL;
	t->hint = NULL;
	if (t->size)
		for (unsigned i = 0; i < THROTTLE_STRIPES; i++)
			pthread_mutex_destroy(&t->make[i]);
	t->size = 0;
}

/* ---- keys and where they live -------------------------------------------
 * A key lives in one of two buckets of THROTTLE_BUCKET slots picked by its
 * hash, made in the emptier one: two choices keep buckets even, so ~94% of
 * the slots can be live before some pair is full (one choice: ~47%).
 * Within a bucket the used slots are a prefix: a slot once used never
 * becomes free again, as a lookup stops at the first free one and a hole
 * would hide the keys behind it; an idle entry is reused in place instead.
 * Entries never move: sessions and destinations hold pointers to them. */

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                             \
	do {                                                                 \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);    \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                       \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                       \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);    \
	} while (0)

/* SipHash-1-3 of the connector (one 8-byte block) and the source: keyed,
 * so that nobody can pick addresses that all land in one pair of buckets
 * and fill it for the sources that live there. 0 and 1 are slot states,
 * not keys. */
static uint64_t hash_key(const struct throttle *t, unsigned connector, const char *source)
{
	uint64_t v0 = t->seed[0] ^ 0x736f6d6570736575ull;
	uint64_t v1 = t->seed[1] ^ 0x646f72616e646f6dull;
	uint64_t v2 = t->seed[0] ^ 0x6c7967656e657261ull;
	uint64_t v3 = t->seed[1] ^ 0x7465646279746573ull;
	uint64_t m = connector;
	v3 ^= m;
	SIPROUND;
	v0 ^= m;
	size_t len = strlen(source), n = len;
	const unsigned char *p = (const unsigned char *)source;
	for (; n >= 8; n -= 8, p += 8) {
		memcpy(&m, p, 8);
		v3 ^= m;
		SIPROUND;
		v0 ^= m;
	}
	m = (uint64_t)(len + 8) << 56;
	for (size_t i = 0; i < n; i++)
		m |= (uint64_t)p[i] << (8 * i);
	v3 ^= m;
	SIPROUND;
	v0 ^= m;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	uint64_t h = v0 ^ v1 ^ v2 ^ v3;
	return h > KEY_BUSY ? h : h + 2;
}

/* The two buckets of a key (maybe one and the same); the last bucket may
 * be short. */
static void buckets_of(const struct throttle *t, uint64_t key, uint32_t b[2])
{
	uint32_t n = buckets(t->size);
	b[0] = (uint32_t)(((key >> 32) * (uint64_t)n) >> 32);
	b[1] = (uint32_t)(((key & 0xffffffffu) * (uint64_t)n) >> 32);
}

static uint32_t bucket_end(const struct throttle *t, uint32_t b)
{
	uint32_t end = (b + 1) * THROTTLE_BUCKET;
	return end < t->size ? end : t->size;
}

void throttle_source_name(const struct sockaddr_storage *ss, const struct ip_range *matched,
			  char *out, size_t cap)
{
	int family;
	u128 v;
	if (!conf_sockaddr_value((const struct sockaddr *)ss, &family, &v)) {
		snprintf(out, cap, "unknown");
		return;
	}
	if (family == 4) {
		struct in_addr a = {htonl((uint32_t)v)};
		if (!inet_ntop(AF_INET, &a, out, (socklen_t)cap))
			snprintf(out, cap, "unknown");
		return;
	}
	bool whole = matched && matched->hi - matched->lo < (((u128)1 << 64) - 1);
	if (!whole)
		v = v >> 64 << 64;
	struct in6_addr a;
	for (int i = 15; i >= 0; i--, v >>= 8)
		a.s6_addr[i] = (uint8_t)v;
	char text[INET6_ADDRSTRLEN];
	if (!inet_ntop(AF_INET6, &a, text, sizeof(text)))
		snprintf(out, cap, "unknown");
	else
		snprintf(out, cap, "%s%s", text, whole ? "" : "/64");
}

/* ---- holds and reuse ------------------------------------------------------
 * A slot is reused only by a thread that first swaps its key for KEY_BUSY
 * and then finds no hold on it; a holder first counts itself in and then
 * checks the key is still the one it looked up. Both steps are
 * sequentially consistent, so of a reuse and a hold racing on one slot at
 * least one sees the other: the holder backs out (its count comes and
 * goes), or the reuse is called off and the key put back. A key put back
 * was missing for a moment: that is why a lookup that met KEY_BUSY is never
 * taken as "absent" (make_entry() waits it out). */

/* Bucket full again: the entry no longer remembers anything a new one
 * would not (a new bucket starts full). */
static bool bucket_full(uint64_t w, uint32_t rate, uint32_t now)
{
	if (!w || !rate)
		return true;
	uint64_t tokens = (w >> 32) - 1;
	uint32_t idle = now - (uint32_t)w;
	return tokens + (uint64_t)idle * rate >= (uint64_t)rate * UNIT;
}

static bool reusable(const struct throttle_entry *e, uint32_t now)
{
	return !atomic_load(&e->pinned) && atomic_load(&e->connections) == 0 &&
	       bucket_full(atomic_load(&e->bucket), atomic_load(&e->rate), now);
}

/* For throttle_entry(), whose callers pass no time: the same clock as the
 * workers' (wctx_clock_ms). */
static uint32_t clock_now(const struct throttle *t)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	return (uint32_t)(ms - t->start_ms);
}

static bool hold_if(struct throttle *t, uint32_t i, uint64_t key, int32_t *count)
{
	struct throttle_entry *e = &t->slot[i];
	int32_t n = atomic_fetch_add(&e->connections, 1) + 1;
	if (atomic_load(&t->key[i]) == key) {
		*count = n;
		return true;
	}
	atomic_fetch_sub(&e->connections, 1);
	return false;
}

#define NOT_FOUND UINT32_MAX

/* The slot holding key, or NOT_FOUND; *unsure when a KEY_BUSY slot was met
 * before the search ended (the key may be there in a moment). *used: how
 * many slots of each bucket are used (up to the first free one). */
static uint32_t find(const struct throttle *t, uint64_t key, bool *unsure, uint32_t used[2])
{
	uint32_t b[2];
	buckets_of(t, key, b);
	*unsure = false;
	for (int k = 0; k < 2; k++) {
		uint32_t first = b[k] * THROTTLE_BUCKET, end = bucket_end(t, b[k]), i = first;
		if (k && b[1] == b[0]) {
			used[1] = used[0];
			break;
		}
		for (; i < end; i++) {
			uint64_t v = atomic_load_explicit(&t->key[i], memory_order_acquire);
			if (v == key)
				return i;
			if (v == KEY_FREE)
				break;
			if (v == KEY_BUSY)
				*unsure = true;
		}
		used[k] = i - first;
	}
	return NOT_FOUND;
}

/* Gives slot i, claimed (KEY_BUSY), to key, held once or pinned. */
static void fill_slot(struct throttle *t, uint32_t i, uint64_t key, unsigned connector,
		      const char *source, bool pin, int32_t *count)
{
	struct throttle_entry *e = &t->slot[i];
	atomic_store(&e->bucket, 0);
	atomic_store(&e->rate, 0);
	atomic_store(&e->wanted_until, 0);
	atomic_store(&e->pinned, pin);
	e->connector = (uint16_t)connector;
	snprintf(e->source, sizeof(e->source), "%s", source);
	/* Not set to 0: a holder that met the old key may still be backing out. */
	if (!pin)
		*count = atomic_fetch_add(&e->connections, 1) + 1;
	atomic_store_explicit(&t->key[i], key, memory_order_release);
}

/* A free slot of bucket b, claimed, or NOT_FOUND. */
static uint32_t claim_free(struct throttle *t, uint32_t b)
{
	for (uint32_t i = b * THROTTLE_BUCKET, end = bucket_end(t, b); i < end; i++) {
		uint64_t v = atomic_load_explicit(&t->key[i], memory_order_relaxed);
		if (v == KEY_FREE && atomic_compare_exchange_strong(&t->key[i], &v, KEY_BUSY))
			return i;
	}
	return NOT_FOUND;
}

/* Milliseconds until a bucket word is full again (0: it is). */
static uint32_t until_full(uint64_t w, uint32_t rate, uint32_t now)
{
	if (bucket_full(w, rate, now))
		return 0;
	uint64_t short_by = (uint64_t)rate * UNIT - ((w >> 32) - 1);
	uint32_t idle = now - (uint32_t)w;
	return (uint32_t)((short_by + rate - 1) / rate) - idle;
}

/* An idle entry's slot of bucket b, claimed, or NOT_FOUND. A search that
 * finds none leaves a hint (until the first refilling bucket is full, a
 * second at most), cleared by any throttle_disconnect() in the bucket, so
 * that a full table refuses at the cost of reading keys, not entries. */
static uint32_t claim_idle(struct throttle *t, uint32_t b, uint32_t now)
{
	struct throttle_hint *h = &t->hint[b];
	uint32_t gen = atomic_load(&h->gen);
	uint64_t none = atomic_load(&h->none_until);
	if (none >> 32 == gen && (int32_t)((uint32_t)none - now) > 0)
		return NOT_FOUND;
	uint32_t soonest = 1000;
	for (uint32_t i = b * THROTTLE_BUCKET, end = bucket_end(t, b); i < end; i++) {
		uint64_t v = atomic_load(&t->key[i]);
		const struct throttle_entry *e = &t->slot[i];
		if (v <= KEY_BUSY || atomic_load(&e->pinned) || atomic_load(&e->connections))
			continue;
		uint32_t wait = until_full(atomic_load(&e->bucket), atomic_load(&e->rate), now);
		if (wait) {
			soonest = wait < soonest ? wait : soonest;
			continue;
		}
		if (!atomic_compare_exchange_strong(&t->key[i], &v, KEY_BUSY))
			continue;
		if (reusable(e, now))
			return i;
		atomic_store(&t->key[i], v); /* held or pinned in the meantime */
	}
	uint32_t until = now + soonest;
	atomic_store(&h->none_until, (uint64_t)gen << 32 | (until ? until : 1));
	return NOT_FOUND;
}

/* A slot for key: a free one, in the emptier bucket first, else the slot
 * of an idle entry. */
static uint32_t claim_slot(struct throttle *t, uint64_t key, const uint32_t used[2],
			   uint32_t now)
{
	uint32_t b[2];
	buckets_of(t, key, b);
	int first = used[1] < used[0];
	uint32_t i = claim_free(t, b[first]);
	if (i == NOT_FOUND && b[1] != b[0])
		i = claim_free(t, b[!first]);
	if (i == NOT_FOUND)
		i = claim_idle(t, b[0], now);
	if (i == NOT_FOUND && b[1] != b[0])
		i = claim_idle(t, b[1], now);
	return i;
}

/* The lookup's slow path, one stripe lock per key, so two threads making
 * the same key make one entry. NOT_FOUND: every slot of the key's two
 * buckets is live. */
static uint32_t make_entry(struct throttle *t, uint64_t key, unsigned connector,
			   const char *source, bool pin, uint32_t now, int32_t *count)
{
	pthread_mutex_t *mu = &t->make[key % THROTTLE_STRIPES];
	pthread_mutex_lock(mu);
	uint32_t i;
	for (unsigned spins = 0;; spins++) {
		bool unsure;
		uint32_t used[2];
		i = find(t, key, &unsure, used);
		if (i != NOT_FOUND) {
			if (pin) {
				struct throttle_entry *e = &t->slot[i];
				int32_t held;
				if (!hold_if(t, i, key, &held))
					continue; /* reused meanwhile: look again */
				atomic_store(&e->pinned, 1);
				atomic_fetch_sub(&e->connections, 1);
			} else if (!hold_if(t, i, key, count)) {
				continue;
			}
			break;
		}
		if (!unsure) {
			i = claim_slot(t, key, used, now);
			if (i != NOT_FOUND)
				fill_slot(t, i, key, connector, source, pin, count);
			break;
		}
		/* Another thread is between two stores on a slot: a few
		 * instructions, unless it was preempted. */
		if (spins > 64)
			sched_yield();
	}
	pthread_mutex_unlock(mu);
	return i;
}

struct throttle_entry *throttle_entry(struct throttle *t, unsigned connector,
				      const char *source)
{
	uint64_t key = hash_key(t, connector, source);
	bool unsure;
	uint32_t used[2];
	uint32_t i = find(t, key, &unsure, used);
	/* Pinned entries are never reused: seen pinned under its key, it is
	 * this key's for good. */
	if (i != NOT_FOUND && atomic_load(&t->slot[i].pinned) && atomic_load(&t->key[i]) == key)
		return &t->slot[i];
	i = make_entry(t, key, connector, source, true, clock_now(t), NULL);
	return i == NOT_FOUND ? NULL : &t->slot[i];
}

/* ---- buckets and counts --------------------------------------------------- */

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
	/* For reuse: when the bucket is full again depends on its rate. */
	uint16_t r = rate_per_min > UINT16_MAX ? UINT16_MAX : (uint16_t)rate_per_min;
	if (atomic_load_explicit(&e->rate, memory_order_relaxed) != r)
		atomic_store_explicit(&e->rate, r, memory_order_relaxed);
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

/* The source's entry, counted in once; NULL when the table has no slot. */
static struct throttle_entry *source_hold(struct throttle *t, unsigned connector,
					  const char *source, uint32_t now, int32_t *count)
{
	uint64_t key = hash_key(t, connector, source);
	bool unsure;
	uint32_t used[2];
	uint32_t i = find(t, key, &unsure, used);
	if (i == NOT_FOUND || !hold_if(t, i, key, count))
		i = make_entry(t, key, connector, source, false, now, count);
	return i == NOT_FOUND ? NULL : &t->slot[i];
}

enum throttle_verdict throttle_connect(struct throttle *t, const struct rconn *rc,
				       const char *source, uint64_t now_ms,
				       struct throttle_entry **e, int32_t *figure, int32_t *limit)
{
	int32_t now_src = 0;
	*e = source_hold(t, rc->stats_id, source, (uint32_t)(now_ms - t->start_ms), &now_src);
	if (!*e) {
		*figure = (int32_t)t->size;
		*limit = (int32_t)t->size;
		return THROTTLE_FULL;
	}
	_Atomic int32_t *total = &t->connector_conns[rc->stats_id & 255];
	int32_t now_total = atomic_fetch_add(total, 1) + 1;
	enum throttle_verdict why = THROTTLE_ADMIT;
	int32_t pct_limit = (int32_t)(rc->max_inbound_connection *
				      rc->max_inbound_connection_percentage_per_source / 100);
	if (rc->max_inbound_connection && now_total > (int32_t)rc->max_inbound_connection) {
		why = THROTTLE_OVER_TOTAL;
		*figure = now_total;
		*limit = (int32_t)rc->max_inbound_connection;
	} else if (rc->max_inbound_connection_per_source &&
		   now_src > (int32_t)rc->max_inbound_connection_per_source) {
		why = THROTTLE_OVER_SOURCE;
		*figure = now_src;
		*limit = (int32_t)rc->max_inbound_connection_per_source;
	} else if (rc->max_inbound_connection &&
		   rc->max_inbound_connection_percentage_per_source && pct_limit > 0 &&
		   now_src > pct_limit) {
		why = THROTTLE_OVER_PERCENTAGE;
		*figure = now_src;
		*limit = pct_limit;
	}
	if (why) {
		throttle_disconnect(t, rc, *e);
		*e = NULL;
	}
	return why;
}

void throttle_disconnect(struct throttle *t, const struct rconn *rc,
			 struct throttle_entry *e)
{
	atomic_fetch_sub(&t->connector_conns[rc->stats_id & 255], 1);
	if (e && atomic_fetch_sub(&e->connections, 1) == 1)
		atomic_fetch_add(&t->hint[(uint32_t)(e - t->slot) / THROTTLE_BUCKET].gen, 1);
}

uint64_t throttle_full_note(struct throttle *t, enum throttle_full_what what, uint64_t n,
			    uint64_t now_ms)
{
	atomic_fetch_add(&t->full[what].pending, n);
	uint64_t last = atomic_load(&t->full[what].logged_ms);
	if (last && now_ms - last < 1000)
		return 0;
	if (!atomic_compare_exchange_strong(&t->full[what].logged_ms, &last, now_ms ? now_ms : 1))
		return 0; /* another worker reports them */
	return atomic_exchange(&t->full[what].pending, 0);
}

/* ---- show throttle ---------------------------------------------------------- */

void throttle_print(struct throttle *t, const struct conf *c, uint64_t now_ms,
		    FILE *out)
{
	uint32_t now = (uint32_t)(now_ms - t->start_ms);
	uint64_t used = 0, held = 0, refilling = 0, pinned = 0;
	fprintf(out, "%-32s %-40s %11s %9s %14s %9s\n", "connector", "source",
		"connections", "limit", "message tokens", "per min");
	for (uint32_t i = 0; i < t->size; i++) {
		uint64_t key = atomic_load_explicit(&t->key[i], memory_order_acquire);
		if (key <= KEY_BUSY)
			continue;
		used++;
		/* A copy, good if the key did not change meanwhile (a seqlock:
		 * the text is written only while the slot is KEY_BUSY). */
		struct throttle_entry *e = &t->slot[i];
		char source[sizeof(e->source)];
		memcpy(source, e->source, sizeof(source));
		source[sizeof(source) - 1] = '\0';
		unsigned connector = e->connector;
		int32_t conns = atomic_load(&e->connections);
		uint64_t w = atomic_load(&e->bucket);
		bool pin = atomic_load(&e->pinned);
		bool full = bucket_full(w, atomic_load(&e->rate), now);
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&t->key[i], memory_order_acquire) != key)
			continue;
		pinned += pin;
		held += !pin && conns > 0;
		refilling += !pin && conns <= 0 && !full;
		const struct rconn *rc = NULL;
		for (unsigned k = 0; k < c->nrc; k++)
			if (c->rc[k].stats_id == connector)
				rc = &c->rc[k];
		if (!rc)
			continue;
		uint32_t rate = (uint32_t)rc->message_rate_limit;
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
		bool user = strncmp(source, "user:", 5) == 0;
		if (!near_conn && !near_rate && !user)
			continue;
		char lim[24] = "-", tok[32] = "-";
		if (climit)
			snprintf(lim, sizeof(lim), "%llu", (unsigned long long)climit);
		if (rate)
			snprintf(tok, sizeof(tok), "%.1f", tokens);
		fprintf(out, "%-32.32s %-40s %11d %9s %14s %9u\n", rc->name,
			*source ? source : "(all)", conns, lim, tok, rate);
	}
	fprintf(out,
		"table: %u slots (%llu MiB), %llu in use: %llu with connections, %llu refilling, "
		"%llu kept (send connectors, users, whole connectors); idle ones are reused\n",
		t->size, (unsigned long long)(throttle_table_bytes(t->size) >> 20),
		(unsigned long long)used, (unsigned long long)held,
		(unsigned long long)refilling, (unsigned long long)pinned);
}
