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
#include "smtp_client.h"
#include "spool.h"

struct worker;

struct qrcpt {
	char *addr;               /* mailbox */
	char *orcpt;              /* ORCPT as received, or NULL */
	uint8_t notify;           /* SMTP_NOTIFY_* (0: not given) */
	uint8_t state;            /* SPOOL_RCPT_* */
	bool failed_now;          /* failed in this round: goes into its bounce */
	char status[12];          /* last result */
	char *reply;              /* last reply or reason */
	char *remote;             /* next hop that gave it, or NULL */
};

struct qmsg {
	uint64_t id;
	char idtxt[20];
	struct spool_seg *seg;    /* held while queued */
	uint32_t nchunks;
	uint64_t *off;            /* message bytes: chunks in the segment */
	uint32_t *len;
	uint64_t bytes;
	char *from;               /* "" for the null sender */
	char *envid;
	char *client;
	char *connector;
	uint8_t body, ret;        /* enum smtp_body, enum smtp_ret */
	bool smtputf8;
	int64_t arrival;          /* unix seconds */
	int64_t arrival_ms;       /* wall clock ms (seconds * 1000 after a restart) */
	unsigned nrcpt, pending;  /* pending: recipients not finished */
	unsigned busy;            /* delivery jobs in flight */
	struct qrcpt *r;
	uint32_t attempts;
	int64_t next_ms;          /* wall clock of the next attempt */
	char *last_error;
	bool delay_notified;
	bool attempted_round;     /* a job of this round reached a next hop */
	size_t heap;              /* index in the schedule, or SIZE_MAX */
};

/* One delivery attempt: recipients of one message for one destination. */
struct djob {
	struct qmsg *m;
	struct conf *conf;        /* held: sc points into it */
	const struct sconn *sc;
	char domain[256];         /* MX delivery: the recipients' domain */
	unsigned n, cap;
	unsigned *idx;            /* recipient indices in m->r */
	struct smtp_client_rcpt *crcpt;
	struct smtp_client_result *res;
	struct smtp_client_msg cmsg;
	bool not_attempted;       /* stopping: back to the queue as is */
	bool delayed;             /* waited for the send connector's rate limit */
	bool dsn_passed;          /* next hop took over DSN duty */
	char remote[300];         /* next hop, for logs and DSNs */
	struct djob *next;
};

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
	struct worker *w;
	struct qmove *moves;      /* compaction in progress */
	uint64_t next_compact_ms; /* monotonic */
	struct qmsg **heap;       /* waiting messages, earliest next_ms first */
	size_t n, cap;
};

void queue_init(struct queue *q, struct worker *w);
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

/* Starts every attempt that is due (called from the worker's tick). */
void queue_run(struct queue *q, int64_t now_ms);

/* deliver.c hands a finished (or not attempted) job back. */
void queue_job_done(struct queue *q, struct djob *j);

/* A generated message's bytes are on disk (worker, OP_SPOOL_WRITE). */
void queue_internal_written(struct queue *q, struct spool_msg *sm);

/* Compaction: the tick looks for a segment worth emptying; the group
 * commit tells which moved copies are durable. */
void queue_tick(struct queue *q);
void queue_flush_started(struct queue *q);
void queue_flush_done(struct queue *q, bool ok);

/* Wall clock in ms. */
int64_t queue_now_ms(void);

#endif
