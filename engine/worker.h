/* A worker: one pinned thread, one ring, its own listening sockets and its
 * own connections. Workers share nothing mutable; main talks to them only
 * through the stop flag. */
#ifndef POSTERN_WORKER_H
#define POSTERN_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "bufring.h"
#include "config.h"
#include "metrics.h"
#include "queue.h"
#include "spool.h"
#include "throttle.h"
#include "ring.h"
#include "smtp_server.h"

#define CONN_OUT_BUF 2048

struct worker;

struct conn {
	struct worker *w;
	uint32_t slot;
	uint32_t gen;
	int fd;
	unsigned inflight;        /* ring operations not yet completed */
	bool recv_armed;
	bool recv_paused;         /* input backlog: recv cancelled until drained */
	bool read_eof;            /* client closed its side */
	bool sending;
	bool closing;             /* shut down; freed when inflight reaches 0 */
	bool close_after_send;
	bool storing;             /* message durability in progress */
	bool drained;
	int store_result;         /* STORE_* once storing finished */
	struct conf *conf;        /* the configuration the session started with */
	const struct rconn *rc;
	uint64_t started_ms;
	uint64_t active_ms;
	uint64_t data_end_us;     /* end of DATA, for the accept latency */
	size_t sent;              /* bytes of smtp.out handed to the socket */
	char *in;                 /* received, not yet consumed bytes */
	size_t in_off, in_len, in_cap;
	struct spool_msg *smsg;   /* message being received or stored */
	char msgid[20];
	int msg_err;              /* why the spool could not take it */
	uint64_t msg_size;
	int64_t arrival;
	bool recv_starved;        /* recv ended with ENOBUFS: re-armed on a buffer's return */
	struct __kernel_timespec tarpit;  /* delay before a 5xx to an anonymous client */
	struct throttle_entry *th_source;  /* this client's address on this connector */
	struct throttle_entry *th_rate;    /* the message-rate bucket it draws on */
	struct smtp_server smtp;
	char peer[64];
	char out[CONN_OUT_BUF];
};

enum { STORE_NONE, STORE_OK, STORE_FULL, STORE_FAILED };

struct slotref {
	uint32_t slot;
	uint32_t gen;
};

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
	unsigned id;
	pthread_t thread;
	struct conf *conf;         /* current; one reference held */
	uint32_t conf_gen;        /* bumped per reload; tags accepts */
	_Atomic(struct worker_reload *) reload;  /* handed over by main */
	int wake_fd;              /* eventfd: main pokes the worker */
	uint64_t wake_buf;
	struct throttle *throttle;
	struct spool *spool_shared;
	struct spool_worker spool;
	struct queue queue;       /* messages to deliver */
	struct deliver *dl;       /* outbound connections (deliver.c) */
	struct resolver *resolver;/* shared, owned by main */
	unsigned nworkers;
	uint16_t *buf_refs;       /* per provided buffer: holders (recv, spool writes) */
	unsigned nstarved;
	int *listen_fds;          /* one per binding, owned */
	unsigned nlisten;
	struct ring ring;
	struct bufring br;
	struct conn **slots;
	uint32_t *gens;
	uint32_t *free_slots;
	uint32_t nfree;
	uint32_t nslots;
	uint32_t high_water;      /* slots below this were ever used */
	unsigned nconns;
	struct slotref *commit_ready;     /* stored, waiting for the next flush */
	uint32_t nready, ready_cap;
	struct slotref *commit_batch;     /* covered by the flush in flight */
	uint32_t nbatch, batch_cap;
	bool flushing;
	bool stopping;
	uint64_t stop_deadline_ms;
	uint64_t now_ms;          /* monotonic, refreshed per completion batch */
	uint64_t id_base_ms;
	uint32_t id_counter;
	struct __kernel_timespec tick;
	struct worker_metrics m;  /* written by this worker only */
	atomic_bool stop_requested;
	atomic_bool flush_requested;  /* posternctl flush: retry everything now */
	atomic_int state;         /* 0 starting, 1 running, -1 failed, 2 exited */
	char err[256];
};

int worker_start(struct worker *w);
void worker_request_stop(struct worker *w);
/* Hands a new configuration to a running worker (applied at its next loop
 * turn). The previous one must have been taken: see worker_reload_pending(). */
void worker_reload(struct worker *w, struct worker_reload *r);
bool worker_reload_pending(struct worker *w);
/* Makes every message queued on the worker due now (any thread). */
void worker_flush_queue(struct worker *w);
void worker_join(struct worker *w);

uint64_t worker_clock_ms(void);
uint64_t worker_clock_us(void);

/* session.c: the connection side of a worker. */
void session_accept(struct worker *w, unsigned binding, int fd);
void session_on_recv(struct worker *w, struct conn *c, int res, unsigned flags);
void session_on_send(struct worker *w, struct conn *c, int res);
void session_on_written(struct worker *w, struct conn *c);
void session_resume_recv(struct worker *w, struct conn *c);
void session_on_tarpit(struct worker *w, struct conn *c);
void session_on_stored(struct worker *w, struct conn *c, bool ok);
void session_tick(struct worker *w, struct conn *c);
void session_close(struct worker *w, struct conn *c);
/* The address of ss as text, without the port; an IPv4-mapped IPv6
 * address as plain IPv4. */
void peer_text(const struct sockaddr_storage *ss, char *buf, size_t cap);

/* worker.c helpers used by session.c */
struct conn *worker_conn_alloc(struct worker *w);
void worker_conn_release(struct worker *w, struct conn *c);
void worker_commit_add(struct worker *w, struct conn *c);
uint64_t worker_next_msgid(struct worker *w);
/* Wakes the worker from another thread (its eventfd). */
void worker_poke(struct worker *w);
void worker_buf_hold(struct worker *w, int bid);
void worker_buf_put(struct worker *w, int bid);

#endif
