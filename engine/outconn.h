/* One outbound SMTP connection: connects to the targets of a destination in
 * turn, drives proto/smtp_client over the I/O interface (the stored body
 * goes from the spool file to the socket by io_sendfile) and runs jobs one
 * after another. An enum state with one enter function; no socket syscall
 * of its own beyond socket()/close(). Which job runs next, connection
 * limits and what a failure means for other jobs are the owner's
 * (deliver.c), told through struct outconn_ops. */
#ifndef POSTERN_OUTCONN_H
#define POSTERN_OUTCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"
#include "job.h"
#include "resolver.h"
#include "smtp_client.h"
#include "wctx.h"

enum oc_state {
	OC_CONNECTING,   /* connect in flight to targets[target] */
	OC_SESSION,      /* the SMTP dialogue runs */
	OC_IDLE,         /* connected, no job: a recv notices the server closing */
	OC_SWITCHING,    /* the old socket's operations drain before the next target */
	OC_CLOSING,      /* operations drain; then the owner is told and it is freed */
	OC_STATES_
};

extern const char *const oc_state_names[OC_STATES_];

struct oconn;

struct outconn_ops {
	/* A connection exists (the owner links and counts it). */
	void (*opened)(struct oconn *oc);
	/* The session is ready for another message: a job, or NULL (then the
	 * connection idles when may_idle says so, the owner listing it as
	 * idle, else it quits). */
	struct djob *(*next_job)(struct oconn *oc);
	bool (*may_idle)(struct oconn *oc);
	/* A job is over: its results are filled in (or it is not_attempted). */
	void (*job_done)(struct oconn *oc, struct djob *j);
	/* Every target failed before a session: text says why (a 4xx reply). */
	void (*unreachable)(struct oconn *oc, int code, const char *status, const char *text);
	/* The connection is gone; oc is freed when this returns. */
	void (*closed)(struct oconn *oc);
};

struct oconn_params {
	const char *helo;                 /* our name in EHLO */
	uint64_t connect_timeout_ms;
	uint64_t idle_timeout_ms;
	const struct resolver_target *targets;  /* copied */
	unsigned ntargets;
	bool mx;                          /* targets came from MX: name them */
	const char *connector;            /* send connector, for logs */
	unsigned stats_id;                /* send connector counters */
};

struct oconn {
	struct wctx *w;
	const struct outconn_ops *ops;
	void *owner;                      /* the destination */
	enum oc_state state;
	int fd;
	unsigned inflight;                /* operations in flight */
	bool out_busy, in_busy;           /* one each way at a time */
	unsigned out_sub;                 /* which kind the out one is */
	bool shut;                        /* shutdown() done on fd */
	bool client_ready;                /* smtp_client initialised */
	struct resolver_target *t;
	unsigned nt, target;
	struct oconn_params p;
	char last_error[300];             /* why the last target failed */
	char remote[300];                 /* the current target, for logs */
	struct smtp_client cl;
	struct djob *job;
	bool job_started;
	unsigned msgs;                    /* messages started on it */
	char in[4096];
	size_t in_off, in_len;
	const char *out;
	size_t out_len, out_off;
	bool body;                        /* the body is being sent */
	uint32_t ext;                     /* its chunk */
	uint64_t ext_off;
	size_t dot_off;                   /* of ".\r\n", sent behind the body */
	uint64_t deadline;                /* monotonic ms, 0 = none */
	struct oconn *idle_next;          /* the owner's lists */
	struct oconn *next, *prev;
};

/* Opens a connection for job j, trying the targets in turn. true: it was
 * opened (ops->opened), and may be closed again already (ops->closed)
 * when no target could even be tried. false: out of memory, nothing was
 * opened, and j is still the caller's. */
bool outconn_open(struct wctx *w, const struct outconn_ops *ops, void *owner,
		  const struct oconn_params *p, struct djob *j);
/* An idle connection takes a job (false: not idle). */
bool outconn_take(struct oconn *oc, struct djob *j);
/* QUIT and close (idle, or told to give its connection back). */
void outconn_quit(struct oconn *oc);
/* We stop (the owner gives up on it): a job under way fails with a 4xx,
 * one not started yet goes back untouched; no next target is tried. */
void outconn_lost(struct oconn *oc, const char *why);
/* Closes now; a job not started goes back (not_attempted). */
void outconn_close(struct oconn *oc);
/* Deadlines (called from the owner's tick). */
void outconn_tick(struct oconn *oc);
/* An IO_OP_OUT completion for this connection. */
void outconn_on_io(struct oconn *oc, const struct io_cqe *e);
/* Frees a connection at worker exit, whatever its state. */
void outconn_discard(struct oconn *oc);

#endif
