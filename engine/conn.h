/* Inbound connections: struct conn (one SMTP client on one worker) and the
 * worker's table of connection slots with generations, so a completion for
 * a closed and reused slot is recognised. Knows nothing of SMTP beyond
 * holding the session state machine. */
#ifndef POSTERN_CONN_H
#define POSTERN_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "header_value.h"
#include "smtp_server.h"
#include "wctx.h"

#define CONN_OUT_BUF 2048

struct spool_msg;
struct throttle_entry;
struct tls;

enum { STORE_NONE, STORE_OK, STORE_FULL, STORE_FAILED };

struct conn {
	struct wctx *w;
	uint32_t slot;
	uint32_t gen;
	int fd;
	unsigned inflight;        /* I/O operations not yet completed, and holds */
	bool recv_armed;
	bool recv_multishot;      /* the armed recv is io_recv, not io_recv_once */
	bool recv_once;           /* one buffer a loop turn (new, or behind) */
	bool behind;              /* fell behind its client: a turn's first slice only */
	uint8_t recv_calm;        /* small reads in a row, all consumed, since */
	bool recv_paused;         /* input backlog: recv cancelled until drained */
	bool recv_pacing;         /* discarding input: the next recv waits for IO_OP_PACE */
	bool read_eof;            /* client closed its side */
	bool sending;
	bool closing;             /* shut down; freed when inflight reaches 0 */
	bool close_after_send;
	bool storing;             /* message durability in progress */
	bool drained;
	bool recv_starved;        /* recv ended with ENOBUFS: re-armed on a buffer's return */
	bool tls_starting;        /* 220 to STARTTLS being sent: TLS begins after it */
	bool proxy_wait;          /* PROXY header not yet in: no session, no rc yet */
	bool runnable;            /* input left for the next turn: on the run list */
	struct conn *run_next;
	unsigned binding;         /* the listener it came in on */
	int store_result;         /* STORE_* once storing finished */
	struct conf *conf;        /* the configuration the session started with */
	const struct rconn *rc;
	uint64_t started_ms;
	uint64_t active_ms;
	uint64_t data_end_us;     /* end of DATA, for the accept latency */
	size_t sent;              /* bytes of the send in flight handed to the socket */
	struct tls *tls;          /* after STARTTLS: every byte goes through it */
	struct tls *tls_next;     /* prepared at STARTTLS, in use once 220 is sent */
	const char *tx;           /* under TLS: the ciphertext being sent */
	size_t tx_len;
	char *in;                 /* received, not yet consumed bytes */
	size_t in_off, in_len, in_cap;
	struct spool_msg *smsg;   /* message being received or stored */
	struct content_scan *scan; /* its content rules' scan, or NULL */
	bool scan_lost;           /* rules apply but the scan could not start */
	char msgid[WCTX_MSGID_LEN];
	int msg_err;              /* why the spool could not take it */
	uint64_t msg_size;
	struct header_value message_id; /* the Message-ID header, for the log */
	int64_t arrival;
	struct throttle_entry *th_source;  /* this client's address on this connector */
	struct throttle_entry *th_rate;    /* the message-rate bucket it draws on */
	struct smtp_server smtp;
	char peer[64];            /* the client: the PROXY header's source, else the socket's */
	char proxy_peer[64];      /* the balancer that sent a PROXY header, or "" */
	char auth_name[SMTP_AUTH_NAME_MAX + 1]; /* the name of the AUTH in progress (logs) */
	char out[CONN_OUT_BUF];
};

struct conn_table {
	struct conn **slots;
	uint32_t *gens;
	uint32_t *free_slots;
	uint32_t nfree;
	uint32_t nslots;
	uint32_t high_water;      /* slots below this were ever used */
	unsigned nconns;
	/* Connections whose input waits for the next loop turn (the turn's
	 * time for sessions was spent), oldest first. */
	struct conn *run_head, *run_tail;
};

int conn_table_init(struct conn_table *t, uint32_t nslots);
void conn_table_free(struct conn_table *t);
/* A zeroed connection in a free slot with a new generation; NULL when the
 * table is full or memory is short. */
struct conn *conn_alloc(struct conn_table *t);
void conn_release(struct conn_table *t, struct conn *c);
/* The connection a completion's slot and generation name, if still there. */
struct conn *conn_lookup(const struct conn_table *t, uint32_t slot, uint32_t gen);

static inline uint64_t conn_tag(unsigned op, const struct conn *c)
{
	return io_tag(op, c->slot, c->gen);
}

#endif
