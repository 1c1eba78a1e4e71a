/* What the queue hands delivery: a queued message (struct qmsg) and one
 * delivery attempt of some of its recipients to one destination (struct
 * djob), with room for the results. Data only; the queue owns both. */
#ifndef POSTERN_JOB_H
#define POSTERN_JOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "smtp_client.h"

struct spool_seg;
struct qctl_part;

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
	bool anonymous;           /* from an anonymous-only session: bounces carry headers only */
	bool dotless;             /* stored form = the message (no "." line start): BDAT-able */
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
	bool held;                /* never attempted until released (B.11) */
	char *held_reason;        /* a content rule's name, "operator"... */
	char *route;              /* a content rule's send connector, or NULL */
	char *prefix;             /* header fields added by content rules, sent
	                           * before the stored bytes; NULL: none */
	uint32_t prefix_len;
	size_t heap;              /* index in the schedule, or SIZE_MAX; a held
	                           * message waits there with next_ms INT64_MAX */
	struct qmsg *out_prev, *out_next; /* out of the schedule (heap SIZE_MAX):
	                           * in delivery, moving, being read, new */
	struct qmsg *id_prev, *id_next; /* every message, by id (arrival order) */
	struct qctl_part *ctl;    /* an operator's bounce under way: told when
	                           * its records are written */
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
	char tls[80];             /* "TLSv1.3 TLS_AES_128_GCM_SHA256" when the session
	                           * ran over TLS, "" in plaintext (logs) */
	struct djob *next;
};

/* The same result for every recipient of the job (a connection that
 * never got as far as its recipients). */
static inline void djob_result_all(struct djob *j, int code, const char *status,
				   const char *text)
{
	for (unsigned k = 0; k < j->n; k++) {
		struct smtp_client_result *r = &j->res[k];
		r->code = code;
		snprintf(r->status, sizeof(r->status), "%s", status);
		snprintf(r->text, sizeof(r->text), "%s", text);
		r->stage = SMTPC_STAGE_CONNECT;
	}
}

#endif
