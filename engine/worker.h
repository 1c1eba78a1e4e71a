/* A worker: one pinned thread, one I/O backend instance, its own listening
 * sockets, connections, spool segments and delivery queue. Workers share
 * nothing mutable; main talks to them only through the calls below. Only
 * worker.c and main.c include this: the modules a worker runs see their
 * worker through struct wctx (wctx.h). */
#ifndef POSTERN_WORKER_H
#define POSTERN_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "conn.h"
#include "io.h"
#include "metrics.h"
#include "queue.h"
#include "spool.h"
#include "content.h"
#include "wctx.h"

/* A new configuration for a worker: the conf (one reference for the worker)
 * and, per binding, either the worker's socket for an unchanged binding
 * (keep_from = its old index) or a new socket (new_fd). The worker closes
 * the sockets of bindings that are gone. */
struct worker_reload {
	struct conf *conf;
	int *keep_from;
	int *new_fd;
	unsigned nlisten;
};

struct worker {
	struct wctx ctx;          /* what the worker's modules see of it */
	pthread_t thread;
	enum io_backend backend;  /* chosen by main (io_probe) */
	struct io *_Atomic *peers;  /* main's table: this worker writes its own */
	uint32_t conf_gen;        /* bumped per reload; tags accepts */
	_Atomic(struct worker_reload *) reload;  /* handed over by main */
	struct spool *spool_shared;
	struct spool_worker spool;
	struct queue queue;
	struct conn_table conns;
	struct content_worker content;
	struct worker_metrics m;  /* written by this worker only */
	int *listen_fds;          /* one per binding, owned */
	unsigned nlisten;
	/* Out of descriptors (EMFILE/ENFILE): accepting pauses instead of
	 * spinning, a spare descriptor lets waiting clients be told 421. */
	bool *accept_paused;      /* per binding: re-armed by the tick */
	uint64_t accept_resume_ms;
	uint64_t accept_log_ms;   /* last accept_error line (one a second at most) */
	unsigned accept_errors;   /* since that line */
	int spare_fd;
	atomic_bool stop_requested;
	atomic_bool flush_requested;  /* posternctl flush: retry everything now */
	struct mailbox ctl;           /* operators' queue requests (struct qctl_part) */
	atomic_bool drain_requested;  /* posternctl drain (B.10) */
	atomic_bool inbound_closed;   /* its listeners are closed (drain or stop) */
	atomic_int state;         /* 0 starting, 1 running, -1 failed, 2 exited */
	size_t held_left;         /* held messages left in the spool at exit */
	char err[256];
};

int worker_start(struct worker *w);
void worker_request_stop(struct worker *w);
/* posternctl drain: stop accepting, finish the sessions, deliver the queue,
 * then exit (state 2) once it is empty; a stop request still cuts it short. */
void worker_request_drain(struct worker *w);
/* Hands a new configuration to a running worker (applied at its next loop
 * turn). The previous one must have been taken: see worker_reload_pending(). */
void worker_reload(struct worker *w, struct worker_reload *r);
bool worker_reload_pending(struct worker *w);
/* Makes every message queued on the worker due now (any thread). */
void worker_flush_queue(struct worker *w);
/* Hands the worker its part of an operator's queue request (any thread);
 * answered with qctl_part_done, at the latest when it is joined. */
void worker_queue_ctl(struct worker *w, struct qctl_part *p);
void worker_join(struct worker *w);

#endif
