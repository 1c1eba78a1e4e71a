/* Spool compaction: copies the few messages still queued in a mostly
 * finished segment into the current one, so the old segment can go. Owns
 * the moves and their stages; knows nothing of the schedule: the queue
 * lends it messages and reads their bytes (struct spool_compact_ops). */
#ifndef POSTERN_SPOOL_COMPACT_H
#define POSTERN_SPOOL_COMPACT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "job.h"
#include "spool.h"

struct wctx;
struct qmove;

/* What compaction needs of the owner of the messages (the queue). */
struct spool_compact_ops {
	/* m leaves the schedule while it moves. */
	void (*take)(void *arg, struct qmsg *m);
	/* The move is over, copied or not: m is scheduled again (m->next_ms). */
	void (*put_back)(void *arg, struct qmsg *m);
	/* Reads all of m's stored bytes, then done(ctx, buf, len) with buf
	 * malloc'd for the callee, or NULL when the read failed. false: not
	 * started, and done will not be called. */
	bool (*read)(void *arg, struct qmsg *m,
		     void (*done)(void *ctx, char *buf, size_t len), void *ctx);
	void *arg;
};

struct spool_compact {
	struct wctx *w;
	struct spool_compact_ops ops;
	struct qmove *moves;      /* under way */
	uint64_t next_ms;         /* monotonic: the next look for a candidate */
};

void spool_compact_init(struct spool_compact *c, struct wctx *w,
			const struct spool_compact_ops *ops);
/* At exit: moves not finished are given up, their messages put back. */
void spool_compact_free(struct spool_compact *c);

/* Every few seconds (from the worker's tick): picks a segment worth
 * emptying and starts moving its queued messages, chosen from the n
 * messages in queued (the schedule, read only). */
void spool_compact_tick(struct spool_compact *c, struct qmsg *const *queued, size_t n);

/* A copy's writes are done: sm is a spool_msg with move set. */
void spool_compact_written(struct spool_compact *c, struct spool_msg *sm);
/* The group commit: which copies a flush covers, and its outcome. */
void spool_compact_flush_started(struct spool_compact *c);
void spool_compact_flush_done(struct spool_compact *c, bool ok);

/* No move waits for its read or its writes (the rest only waits for a
 * flush, which the spool's own state tells). */
bool spool_compact_idle(const struct spool_compact *c);

#endif
