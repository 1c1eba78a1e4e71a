/* Throttling shared by all workers: per-source connection counts and
 * message-rate token buckets, in a fixed lock-free table. A source's
 * connections may land on different workers; every update is one atomic
 * (CAS for the bucket), so limits hold across workers with no lock on the
 * per-message path. */
#ifndef POSTERN_THROTTLE_H
#define POSTERN_THROTTLE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

#define THROTTLE_SLOTS (1u << 16)

/* Token bucket in one word: tokens in sixty-thousandths (high 32 bits,
 * so rates up to 60,000/min) and the time of the last update in ms since
 * the table was made (low 32 bits). */
struct throttle_entry {
	_Atomic uint64_t key;        /* 0: free */
	_Atomic int32_t connections;
	_Atomic uint64_t bucket;
	/* Send connectors: until when (worker clock ms, << 8) a worker (low
	 * byte: its id + 1) has jobs waiting for a connection; the others
	 * then close idle ones. */
	_Atomic uint64_t wanted_until;
	char source[46];             /* for show throttle; written once */
	uint32_t connector;          /* stats id */
};

struct throttle {
	struct throttle_entry *slot;
	_Atomic int32_t connector_conns[256]; /* per connector stats id */
	uint64_t start_ms;
};

int throttle_init(struct throttle *t, uint64_t now_ms);
void throttle_free(struct throttle *t);

/* The entry for a source on a connector (created on first use); NULL when
 * the table is full (then nothing is limited for that source). */
struct throttle_entry *throttle_entry(struct throttle *t, unsigned connector,
				      const char *source);

/* Pure bucket arithmetic, exposed for tests: takes one token from *word
 * (refilled at rate_per_min per minute, burst rate_per_min) at now_ms.
 * Returns true when a token was taken. */
bool throttle_bucket_take(uint64_t *word, uint32_t rate_per_min, uint32_t now_ms);

/* Takes a message token for this entry; true when allowed. */
bool throttle_take_message(struct throttle *t, struct throttle_entry *e,
			   uint32_t rate_per_min, uint64_t now_ms, double *tokens_left);

/* Counts a connection in; returns 0 when allowed, or which limit said no:
 * 1 connector total, 2 per source, 3 percentage of the connector. */
int throttle_connect(struct throttle *t, const struct rconn *rc,
		     struct throttle_entry *e, int32_t *figure, int32_t *limit);
void throttle_disconnect(struct throttle *t, const struct rconn *rc,
			 struct throttle_entry *e);

/* Sources throttled or near a limit (>= 80%), one line each. */
void throttle_print(struct throttle *t, const struct conf *c, uint64_t now_ms,
		    FILE *out);

#endif
