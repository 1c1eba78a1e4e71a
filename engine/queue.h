/* The delivery queue of one worker: every message it accepted or recovered
 * that still has recipients to deliver, scheduled by next attempt. Owns the
 * queue policy: routing recipients to send connectors, retries with
 * backoff, expiry, and the DSNs (bounces, delay and success notices) with
 * their spool records. Connections and the SMTP dialogue are deliver.c's. */
#ifndef POSTERN_QUEUE_H
#define POSTERN_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "io.h"
#include "job.h"
#include "spool.h"

struct wctx;

/* A message being copied out of a mostly finished segment (compaction). */
struct qmove {
	struct qmsg *m;
	struct spool_seg *to;     /* held */
	uint64_t off;             /* where its bytes are in the new segment */
	uint32_t len;
	uint64_t end;             /* just past its COMMIT record */
	int stage;                /* 0 writing, 1 written, 2 covered by a flush */
	bool failed;
	struct qmove *next;
};

struct queue {
	struct wctx *w;
	struct qmove *moves;      /* compaction in progress */
	uint64_t next_compact_ms; /* monotonic */
	struct qmsg **heap;       /* waiting messages, earliest next_ms first */
	size_t n, cap;
};

void queue_init(struct queue *q, struct wctx *w);
void queue_free(struct queue *q);

/* Takes a message the session just stored (after its group commit). */
void queue_add_received(struct queue *q, struct spool_msg *sm,
			const struct smtp_envelope *env, const char *client,
			const char *connector, int64_t arrival);

/* Rebuilds this worker's share of the spool at start (segments with
 * seq % nworkers == worker id); logs what it found. */
void queue_recover(struct queue *q, unsigned nworkers);

/* Every waiting message becomes due now (posternctl flush). */
void queue_flush_all(struct queue *q);

/* Starts every attempt that is due (once per loop turn). */
void queue_run(struct queue *q);

/* deliver.c hands a finished (or not attempted) job back; the _cb form is
 * the callback handed to deliver_new (arg: the queue). */
void queue_job_done(struct queue *q, struct djob *j);
void queue_job_done_cb(void *arg, struct djob *j);

/* A generated message's bytes are on disk (worker, OP_SPOOL_WRITE). */
void queue_internal_written(struct queue *q, struct spool_msg *sm);

/* Compaction: the tick looks for a segment worth emptying; the group
 * commit tells which moved copies are durable. */
void queue_tick(struct queue *q);
void queue_flush_started(struct queue *q);
void queue_flush_done(struct queue *q, bool ok);

#endif
