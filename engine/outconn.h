/* One outbound SMTP connection: connects to the targets of a destination in
 * turn, drives proto/smtp_client over the I/O interface (the stored body
 * goes from the spool file to the socket by io_sendfile; under STARTTLS it
 * is read in pieces by io_read and encrypted through engine/tls) and runs
 * jobs one after another, authenticating first when the send connector
 * has credentials. Each reply must be whole by its deadline, and a message
 * from its first body byte to its final reply by one of its own; a target
 * that turns out to be ourselves is never delivered to (DESIGN B.6). An
 * enum state with one enter function; no socket syscall of its own beyond
 * socket()/close(). Which job runs next, connection limits and what a
 * failure means for other jobs are the owner's (deliver.c), told through
 * struct outconn_ops. */
#ifndef POSTERN_OUTCONN_H
#define POSTERN_OUTCONN_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"
#include "job.h"
#include "resolver.h"
#include "smtp_client.h"
#include "tls.h"
#include "wctx.h"

enum oc_state {
	OC_CONNECTING,   /* connect in flight to targets[target] */
	OC_SESSION,      /* the SMTP dialogue runs */
	OC_IDLE,         /* connected, no job: a recv notices the server closing */
	OC_SWITCHING,    /* the old socket's operations drain before the next target */
	OC_CLOSING,      /* operations drain; then the owner is told and it is freed */
	OC_STATES_
};

enum oc_tls {
	OC_TLS_OFF,      /* plaintext */
	OC_TLS_HANDSHAKE,/* 220 to STARTTLS seen: the handshake runs */
	OC_TLS_ON,       /* every byte either way goes through the struct tls */
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
	/* Every target failed before a session: text says why (a 4xx reply).
	 * Status 4.4.6: every target tried was ourselves; the jobs waiting
	 * for it get outconn_loop_results(). */
	void (*unreachable)(struct oconn *oc, int code, const char *status, const char *text);
	/* The connection is gone; oc is freed when this returns. */
	void (*closed)(struct oconn *oc);
	/* TLS session resumption (either may be NULL): the session to offer
	 * (borrowed for the call), and a newer one from the next hop (the
	 * owner owns it from then on). */
	SSL_SESSION *(*tls_resume)(struct oconn *oc);
	void (*tls_session)(struct oconn *oc, SSL_SESSION *s);
	/* (May be NULL.) Every target failed and one of them asked us to go
	 * away before MAIL (421, or 432 / x.3.2 to AUTH), or refused our
	 * credentials (credentials: a 5xx to AUTH): reply is the next hop's.
	 * Called before unreachable. */
	void (*backoff)(struct oconn *oc, const char *reply, bool credentials);
	/* (May be NULL.) A session got as far as its first MAIL: the next
	 * hop takes us again. Once per connection. */
	void (*established)(struct oconn *oc);
};

struct oconn_params {
	const char *helo;                 /* our name in EHLO; a next hop that
	                                   * greets with it is ourselves */
	uint64_t connect_timeout_ms;
	uint64_t idle_timeout_ms;
	uint64_t command_timeout_ms;      /* struct smtp_client_params (0: defaults) */
	uint64_t data_timeout_ms;
	uint64_t min_data_rate;
	const struct resolver_target *targets;  /* copied */
	unsigned ntargets;
	bool mx;                          /* targets came from MX: name them */
	const char *connector;            /* send connector, for logs */
	unsigned stats_id;                /* send connector counters */
	struct conf *conf;                /* held while the connection lives (the
	                                   * strings above point into it), or NULL */
	unsigned tls_mode;                /* enum tls_mode; NONE without tls_ctx */
	struct tls_client *tls_ctx;       /* the send connector's context */
	const char *tls_server_name;      /* NULL: the MX or smart host name */
	/* AUTH (enum sconn_auth_mech; SCONN_AUTH_NONE: none). The user name
	 * is borrowed like the strings above; the secret is copied (and
	 * wiped when the connection goes), so a rotated token file does not
	 * change it under a session. Never sent outside TLS unless tls_mode
	 * is TLS_MODE_NONE. */
	unsigned auth_mech;
	const char *auth_user;
	const char *auth_secret;
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
	char last_status[8];              /* its enhanced status: 4.4.1, 4.7.5 (TLS) */
	char remote[300];                 /* the current target, for logs */
	struct smtp_client cl;
	struct djob *job;
	bool job_started;
	/* The job taken while job's body went out: its MAIL, RCPT and DATA
	 * follow the body (next_queued, smtp_client_start_next), or, when
	 * the client could not queue it, it starts after the reply. */
	struct djob *job_next;
	bool next_queued;
	unsigned msgs;                    /* messages started on it */
	char in[4096];
	size_t in_off, in_len;
	const char *out;
	size_t out_len, out_off;
	bool body;                        /* the body is being sent */
	uint32_t ext;                     /* its chunk */
	uint64_t ext_off;
	size_t dot_off;                   /* of ".\r\n", sent behind the body (3 from
	                                   * the start for a BDAT chunk: none) */
	uint64_t deadline;                /* monotonic ms, 0 = none */
	uint64_t deadline_ms;             /* ... armed for this long (logs) */
	uint64_t txn_deadline;            /* the message's: body to final reply */
	uint64_t txn_ms;
	uint64_t replies_armed;           /* smtp_client_replies() when the wait began */
	bool sent_wait;                   /* the client's last SEND/SEND_BODY is
	                                   * not on the wire completely yet */
	char *recv_at;                    /* where the recv in flight writes */
	/* STARTTLS */
	struct tls *tls;                  /* from the 220 until the socket goes */
	enum oc_tls tls_phase;
	bool plain_only;                  /* this target again without STARTTLS */
	bool retry_plain;                 /* ... wanted for the next attempt */
	bool tls_reported;                /* this connection's outcome counted */
	char tls_ver[16];                 /* "TLSv1.3", "-" in plaintext (logs) */
	/* AUTH */
	char *secret;                     /* p.auth_secret's copy (owned) */
	bool auth_needs_tls;              /* tls_mode was not "none" */
	bool auth_reported;               /* this connection's outcome counted */
	bool established;                 /* ops->established told */
	char backoff_reply[300];          /* a target's reason to back off */
	bool backoff_credentials;         /* ... its refusal of our credentials */
	char final_text[480];             /* no next target: what the jobs get */
	char final_status[12];
	/* Loops (DESIGN B.6) */
	bool looped;                      /* a target greeted us with our name */
	bool other_failure;               /* a target failed for another reason */
	unsigned loop_pref;               /* MX: that target's preference */
	char *cin;                        /* ciphertext received */
	char *rbuf;                       /* a piece of the body read for tls_write */
	size_t rwant, rlen;               /* its size; bytes ready in it (0: none) */
	bool read_busy;                   /* an io_read into rbuf in flight */
	struct oconn *idle_next;          /* the owner's lists */
	struct oconn *next, *prev;
	_Atomic uint64_t *domain_slot;    /* the owner's per-domain count, or NULL */
};

/* A loop is deferred until the message's attempt numbered this, then
 * bounced: a next hop that is ourselves for a moment (DNS, a balancer
 * being changed) does not cost a bounce, a standing one costs no more
 * than a few retry intervals. */
#define OUTCONN_LOOP_ATTEMPTS 3

/* Every recipient of j: "451 4.4.6 mail for <domain> loops back to
 * myself", or 554 5.4.6 from attempt OUTCONN_LOOP_ATTEMPTS on. The
 * domain is the job's (MX) or the recipient's; hostname for <Postmaster>. */
void outconn_loop_results(struct djob *j, const char *hostname);

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
/* "TLSv1.3" while the session runs in TLS, "-" in plaintext. */
static inline const char *outconn_tls_version(const struct oconn *oc)
{
	return oc->tls_ver[0] ? oc->tls_ver : "-";
}
/* An IO_OP_OUT completion for this connection. */
void outconn_on_io(struct oconn *oc, const struct io_cqe *e);
/* Frees a connection at worker exit, whatever its state. */
void outconn_discard(struct oconn *oc);

#endif
