/* What the modules of a worker (session, queue, delivery, spool) may ask of
 * their worker: the clock of this loop turn, message ids, the I/O
 * interface, shared services, provided-buffer references and wake-ups.
 * worker.c fills it in and is the only file that knows struct worker;
 * nothing here calls up into the worker. */
#ifndef POSTERN_WCTX_H
#define POSTERN_WCTX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "io.h"
#include "mailbox.h"
#include "metrics.h"

struct authd;
struct conn_table;
struct deliver;
struct queue;
struct resolver;
struct spool_worker;
struct throttle;

struct content_worker;

struct wctx {
	unsigned id;              /* worker number */
	unsigned nworkers;
	struct io *io;
	struct conf *conf;        /* current; the worker holds one reference */
	uint64_t now_ms;          /* monotonic, refreshed per loop turn */
	/* The sessions' share of a loop turn (session.c): input is fed to
	 * the state machines until SESSION_SLICE_US have passed since
	 * slice_start_us, then the rest waits for the next turn. */
	uint64_t slice_start_us;
	unsigned slice_units;     /* feed steps run in this slice */
	int64_t wall_ms;          /* wall clock, refreshed with now_ms */
	bool stopping;            /* graceful stop under way */
	bool draining;            /* posternctl drain: inbound closes, delivery goes on */
	uint64_t stop_deadline_ms;
	struct throttle *throttle;     /* shared, across workers */
	struct resolver *resolver;     /* shared, owned by main */
	struct authd *authd;           /* shared AUTH verifiers, owned by main */
	struct mailbox auth_done;      /* their answers (struct auth_req) */
	struct mailbox pickup_in;      /* pickup files to spool (pickup.c) */
	unsigned pickup_inflight;      /* ... of them in the spool, not yet durable */
	struct spool_worker *spool;
	struct queue *queue;
	struct deliver *dl;
	struct conn_table *conns;      /* inbound connections */
	struct content_worker *content; /* Hyperscan scratch for content rules */
	struct worker_metrics *m;      /* written by this worker only */
	/* provided receive buffers: holders per buffer (recv, spool writes) */
	uint16_t *buf_refs;
	unsigned buf_size;        /* bytes each */
	/* called when a buffer went back to the kernel while a connection
	 * waits for one (set by the worker) */
	void (*buf_returned)(struct wctx *w);
	unsigned buf_waiters;
	/* every worker's I/O, by worker id (NULL until it runs): a worker
	 * that needs a connection another one holds wakes it */
	struct io *_Atomic *peers;
	/* message ids */
	uint64_t id_base_ms;
	uint32_t id_counter;
};

uint64_t wctx_clock_ms(void);   /* monotonic */
uint64_t wctx_clock_us(void);
int64_t wctx_wall_ms(void);     /* wall clock */

/* A new message id, unique across workers (ids 0..WCTX_MSGID_MAX_WORKERS-1)
 * and restarts, and larger than the worker's previous one. */
#define WCTX_MSGID_MAX_WORKERS 1024
uint64_t wctx_next_msgid(struct wctx *w);
/* The same with the wall clock given (ms since 1970): what tests drive. */
uint64_t wctx_next_msgid_at(struct wctx *w, int64_t wall_ms);
/* The one text form of a message id (16 hex digits). */
#define WCTX_MSGID_LEN 20
void wctx_msgid_text(uint64_t id, char out[WCTX_MSGID_LEN]);

/* Provided buffers: a recv completion's buffer is held by whoever keeps
 * pointing into it (the spool writes it in place); the last holder gives
 * it back. */
static inline void wctx_buf_hold(struct wctx *w, int bid)
{
	w->buf_refs[bid]++;
}
void wctx_buf_put(struct wctx *w, int bid);

/* Wakes the worker from another thread: it answers with an IO_OP_WAKE. */
static inline void wctx_wake(struct wctx *w)
{
	io_wake(w->io);
}

/* Wakes every other worker (they look at what they could give back). */
void wctx_wake_peers(struct wctx *w);

#endif
