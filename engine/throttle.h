/* Throttling shared by all workers: per-source connection counts and
 * message-rate token buckets in one fixed table (server.throttle_table_size),
 * lock-free to look up and count in (one atomic each, CAS for a bucket); a
 * lock, one of THROTTLE_STRIPES, only to make an entry. Full: new sources
 * are refused, never let through unlimited. */
#ifndef POSTERN_THROTTLE_H
#define POSTERN_THROTTLE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "config.h"

#define THROTTLE_SIZE_DEFAULT (1u << 18) /* slots: 72.5 bytes each, 18.1 MiB */
#define THROTTLE_SIZE_MIN 16u
#define THROTTLE_SIZE_MAX (1u << 24)
#define THROTTLE_BUCKET 32u      /* slots; a key may live in one of two buckets */
#define THROTTLE_STRIPES 64u
#define THROTTLE_SEND_CONNECTOR 0xffffu /* "connector" of send-connector entries */
#define THROTTLE_SOURCE_MAX 48   /* throttle_source_name() fits in this */

/* One slot's state, one cache line; its key lives apart (struct throttle)
 * so that a lookup reads eight keys per line.
 * Token bucket in one word: tokens in sixty-thousandths (high 32 bits,
 * so rates up to 60,000/min) and the time of the last update in ms since
 * the table was made (low 32 bits). */
struct throttle_entry {
	/* Open connections of the source; also every other hold that keeps
	 * the entry from being reused (see throttle.c). */
	_Atomic int32_t connections;
	_Atomic uint16_t rate;       /* per minute, of the last take: when it is full again */
	uint16_t connector;          /* stats id, or THROTTLE_SEND_CONNECTOR */
	_Atomic uint64_t bucket;
	/* Send connectors: until when (worker clock ms, << 8) a worker (low
	 * byte: its id + 1) has jobs waiting for a connection; the others
	 * then close idle ones. */
	_Atomic uint64_t wanted_until;
	_Atomic uint8_t pinned;      /* made by throttle_entry(): never reused */
	char source[39];             /* for show throttle; written while the slot is claimed */
} __attribute__((aligned(64)));

/* Per bucket: no idle entry in it before none_until's low half (table
 * ms), if its high half is still gen (bumped when a count drops to 0). */
struct throttle_hint {
	_Atomic uint32_t gen;
	_Atomic uint64_t none_until;
};

struct throttle {
	_Atomic uint64_t *key;       /* per slot: 0 free, 1 being changed, else the key's hash */
	struct throttle_entry *slot;
	struct throttle_hint *hint;  /* per bucket */
	uint32_t size;
	uint64_t seed[2];            /* SipHash key: where a source lands is not guessable */
	pthread_mutex_t make[THROTTLE_STRIPES];
	_Atomic int32_t connector_conns[256]; /* per connector stats id */
	uint64_t start_ms;
	struct {
		_Atomic uint64_t pending;    /* not logged yet */
		_Atomic uint64_t logged_ms;  /* when the last line was (0: never) */
	} full[2];                           /* enum throttle_full_what */
};

/* size: slots, THROTTLE_SIZE_MIN..THROTTLE_SIZE_MAX (0: the default). */
int throttle_init(struct throttle *t, uint32_t size, uint64_t now_ms);
void throttle_free(struct throttle *t);

/* Bytes the table of that many slots takes. */
uint64_t throttle_table_bytes(uint32_t size);

/* The name a client is counted under on a connector: its IPv4 address, or
 * the /64 of its IPv6 address ("2001:db8:1:2::/64": a host has a whole /64
 * to pick addresses from), unless the range it matched (may be NULL) is
 * narrower than a /64: the operator then tells those hosts apart, and so
 * do we (the whole address). */
void throttle_source_name(const struct sockaddr_storage *ss, const struct ip_range *matched,
			  char *out, size_t cap);

/* A bucket held by pointer and not by a connection count: a send
 * connector's (THROTTLE_SEND_CONNECTOR, "send:NAME"), a connector's
 * message_rate_source = "all" one (""), an authenticated user's
 * ("user:NAME"). Made on first use and never reused for anything else
 * (there are as many as connectors and users, not as clients). NULL when
 * the table has no slot for it: the caller must not go unlimited then. */
struct throttle_entry *throttle_entry(struct throttle *t, unsigned connector,
				      const char *source);

/* Pure bucket arithmetic, exposed for tests: takes one token from *word
 * (refilled at rate_per_min per minute, burst rate_per_min) at now_ms.
 * Returns true when a token was taken. */
bool throttle_bucket_take(uint64_t *word, uint32_t rate_per_min, uint32_t now_ms);

/* Takes a message token for this entry; true when allowed. */
bool throttle_take_message(struct throttle *t, struct throttle_entry *e,
			   uint32_t rate_per_min, uint64_t now_ms, double *tokens_left);

enum throttle_verdict {
	THROTTLE_ADMIT,
	THROTTLE_OVER_TOTAL,       /* max_inbound_connection */
	THROTTLE_OVER_SOURCE,      /* max_inbound_connection_per_source */
	THROTTLE_OVER_PERCENTAGE,  /* max_inbound_connection_percentage_per_source */
	THROTTLE_FULL,             /* a new source, and no slot for it: refused */
};

/* Counts a connection of source (throttle_source_name) in on the
 * connector at now_ms (the clock of throttle_init). THROTTLE_ADMIT: *e is the source's entry, held until
 * throttle_disconnect(). Otherwise nothing is counted, *e is NULL and,
 * for the limits, *figure and *limit say how far over it would be. */
enum throttle_verdict throttle_connect(struct throttle *t, const struct rconn *rc,
				       const char *source, uint64_t now_ms,
				       struct throttle_entry **e, int32_t *figure, int32_t *limit);
void throttle_disconnect(struct throttle *t, const struct rconn *rc,
			 struct throttle_entry *e);

enum throttle_full_what {
	THROTTLE_FULL_REFUSED,     /* connections of new sources */
	THROTTLE_FULL_DEFERRED,    /* deliveries of a send connector with no entry */
};

/* Records n of those. Returns how many there were since the last report
 * when one is due (one a second for each kind, for the whole process),
 * else 0. */
uint64_t throttle_full_note(struct throttle *t, enum throttle_full_what what, uint64_t n,
			    uint64_t now_ms);

/* Sources throttled or near a limit (>= 80%), one line each, then a line
 * on how full the table is. */
void throttle_print(struct throttle *t, const struct conf *c, uint64_t now_ms,
		    FILE *out);

#endif
