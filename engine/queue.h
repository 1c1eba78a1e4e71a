/* The delivery queue of one worker: every message it accepted or recovered
 * that still has recipients, scheduled by next attempt, and the policy:
 * routing to send connectors, retries with backoff, expiry, DSNs and their
 * spool records. Not the SMTP dialogue (deliver.c) nor moves (spool_compact.c). */
#ifndef POSTERN_QUEUE_H
#define POSTERN_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "io.h"
#include "job.h"
#include "queue_ctl.h"
#include "spool.h"
#include "spool_compact.h"

struct deliver;
struct qread;
struct wctx;

/* How a job reaches delivery: deliver_submit in the worker, a fake in
 * tests. Every job submitted comes back through queue_job_done. */
typedef void queue_submit_fn(struct deliver *dl, struct djob *j);

/* Messages a worker has out of its schedule at once (being attempted:
 * delivery jobs, notices, reads of the stored message). Each holds its
 * jobs' recipient and result arrays, about 3 KB; Postfix's active queue
 * limit is 20,000 messages (qmgr_message_active_limit). */
#define QUEUE_ACTIVE_MAX 10000

struct queue {
	struct wctx *w;
	queue_submit_fn *submit;
	struct deliver *dl;       /* submit's first argument */
	struct spool_compact compact;
	struct qread *reads;      /* reads of stored messages in flight */
	unsigned nreads;
	struct qmsg **heap;       /* waiting messages, earliest next_ms first */
	size_t n, cap;
	struct qmsg *out;         /* the messages not in heap (show queue sees
	                           * both: every message is in one of them) */
	size_t nout;
	size_t nheld;             /* messages held (of n + nout) */
	size_t active_max;        /* at most this many in nout: a flush or a burst
	                           * of retries of many thousands of messages
	                           * starts them as earlier ones finish, not all
	                           * in one turn (QUEUE_ACTIVE_MAX) */
	struct qmsg *id_head, *id_tail; /* every message by id: show queue without
	                           * filters reads its first page, no scan */
	bool recovering;          /* queue_recover: appended now, sorted after */
	struct qctl_part *ctl_wait; /* operator changes waiting to be durable */
};

void queue_init(struct queue *q, struct wctx *w, queue_submit_fn *submit, struct deliver *dl);
/* At exit; a read still in flight (the loop ended on an error) keeps its
 * buffer, which the kernel may still write into. */
void queue_free(struct queue *q);

/* Takes a message the session just stored (after its group commit). */
void queue_add_received(struct queue *q, struct spool_msg *sm,
			const struct smtp_envelope *env, const char *client,
			const char *connector, int64_t arrival);

/* Rebuilds this worker's share of the spool at start (segments with
 * seq % nworkers == worker id); logs what it found. */
void queue_recover(struct queue *q, unsigned nworkers);

/* Every waiting message becomes due now (posternctl flush); held ones
 * stay held. */
void queue_flush_all(struct queue *q);

/* An operator's request (queue_ctl.h): this worker's part is answered
 * with qctl_part_done once every change it made is durable. */
void queue_ctl(struct queue *q, struct qctl_part *p);

/* Starts every attempt that is due (once per loop turn). */
void queue_run(struct queue *q);

/* deliver.c hands a finished (or not attempted) job back; the _cb form is
 * the callback handed to deliver_new (arg: the queue). */
void queue_job_done(struct queue *q, struct djob *j);
void queue_job_done_cb(void *arg, struct djob *j);

/* A generated message's bytes are on disk (worker, IO_OP_SPOOL_WRITE). */
void queue_internal_written(struct queue *q, struct spool_msg *sm);

/* An IO_OP_READ completion: a chunk of a stored message read back for a
 * DSN or a compaction move. */
void queue_on_read(struct queue *q, const struct io_cqe *e);

/* Nothing the queue started is still in flight: no read, no move waiting
 * for its read or its writes. A stopping worker waits for it. */
bool queue_idle(const struct queue *q);

/* Compaction: the tick looks for a segment worth emptying; the group
 * commit tells which moved copies are durable. */
void queue_tick(struct queue *q);
void queue_flush_started(struct queue *q);
void queue_flush_done(struct queue *q, bool ok);

#endif
