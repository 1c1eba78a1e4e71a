/* One outbound SMTP connection (see outconn.h). Every socket operation goes
 * through the I/O interface, at most one each way at a time; a connection
 * that changes target or closes first lets its operations drain, so no
 * completion ever reaches a socket it was not meant for. After STARTTLS
 * the same operations carry ciphertext: commands and body pieces go in by
 * tls_write, what tls_output holds goes out, received bytes go to
 * tls_input and replies come from tls_read. AUTH is the client machine's;
 * here its outcome is logged and counted once per connection, and a next
 * hop that refuses our credentials or asks us to go away is not walked
 * past into the next one blindly. A deadline is armed when a wait begins
 * and never moved by a partial reply. */
#include "outconn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "listener.h"
#include "log.h"
#include "secret.h"
#include "spool.h"

#define BODY_TIMEOUT_MS 180000  /* RFC 5321 4.5.3.2.5: each send of the body */
#define TLS_PIECE (64 * 1024)   /* body bytes read and encrypted at a time */
#define TLS_CIN 16384           /* ciphertext per recv: one full record */

enum { SUB_CONNECT, SUB_SEND, SUB_RECV, SUB_SENDFILE, SUB_READ };

const char *const oc_state_names[OC_STATES_] = {
	[OC_CONNECTING] = "connecting", [OC_SESSION] = "session", [OC_IDLE] = "idle",
	[OC_SWITCHING] = "switching", [OC_CLOSING] = "closing",
};

static void run(struct oconn *oc);
static void next_target(struct oconn *oc, const char *status, const char *why);
static void tls_failed(struct oconn *oc, enum tls_out_result res, const char *reason);
static void auth_note_outcome(struct oconn *oc);

static uint64_t tag(const struct oconn *oc, unsigned sub)
{
	return io_tag_ptr(IO_OP_OUT, oc, sub);
}

static void set_deadline(struct oconn *oc, uint64_t ms)
{
	oc->deadline = !ms ? 0 : ms > UINT64_MAX - oc->w->now_ms ? UINT64_MAX : oc->w->now_ms + ms;
	oc->deadline_ms = ms;
}

/* A wait for the next hop begins (a command went out, or the reply before
 * in a pipelined group is complete): all of the reply must be in by the
 * deadline, whatever arrives meanwhile. In a message, from its body to
 * its final reply, the message's own deadline holds. */
static void arm_wait(struct oconn *oc)
{
	oc->replies_armed = smtp_client_replies(&oc->cl);
	if (oc->txn_deadline) {
		oc->deadline = oc->txn_deadline;
		oc->deadline_ms = oc->txn_ms;
		return;
	}
	set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
}

/* A piece of the body is under way: it may wait BODY_TIMEOUT_MS for the
 * socket, and all of them together no longer than the message's deadline. */
static void arm_body(struct oconn *oc)
{
	set_deadline(oc, BODY_TIMEOUT_MS);
	if (oc->txn_deadline && oc->deadline > oc->txn_deadline)
		oc->deadline = oc->txn_deadline;
}

/* Every state change goes through here: the deadline each state has, and
 * one debug line per transition. */
static void enter(struct oconn *oc, enum oc_state s)
{
	if (log_enabled(LOG_DEBUG)) {
		char qr[LOG_QUOTE_CAP(sizeof(oc->remote))];
		log_msg(LOG_DEBUG, "event=outconn relay=%s from=%s to=%s",
			log_quote(qr, sizeof(qr), oc->remote), oc_state_names[oc->state],
			oc_state_names[s]);
	}
	oc->state = s;
	switch (s) {
	case OC_CONNECTING:
		set_deadline(oc, oc->p.connect_timeout_ms);
		break;
	case OC_SESSION:
		if (oc->client_ready)
			arm_wait(oc);
		else
			set_deadline(oc, 0);
		break;
	case OC_IDLE:
		set_deadline(oc, oc->p.idle_timeout_ms);
		break;
	case OC_SWITCHING:
	case OC_CLOSING:
	case OC_STATES_:
		oc->deadline = 0;
		break;
	}
}

static void describe_target(struct oconn *oc)
{
	const struct resolver_target *t = &oc->t[oc->target];
	char ip[INET6_ADDRSTRLEN] = "?";
	peer_text(&t->addr, ip, sizeof(ip));
	unsigned port = t->addr.ss_family == AF_INET
				? ntohs(((const struct sockaddr_in *)&t->addr)->sin_port)
				: ntohs(((const struct sockaddr_in6 *)&t->addr)->sin6_port);
	if (oc->p.mx)
		snprintf(oc->remote, sizeof(oc->remote), "%.200s[%s]:%u", t->host, ip, port);
	else
		snprintf(oc->remote, sizeof(oc->remote), "[%s]:%u", ip, port);
}

/* Cancels what is in flight and wakes anything blocked on the socket. */
static void quiesce(struct oconn *oc)
{
	if (oc->fd < 0)
		return;
	if (oc->out_busy)
		io_cancel(oc->w->io, tag(oc, oc->out_sub));
	if (oc->in_busy)
		io_cancel(oc->w->io, tag(oc, SUB_RECV));
	if (!oc->shut) {
		shutdown(oc->fd, SHUT_RDWR);
		oc->shut = true;
	}
}

static void drop_socket(struct oconn *oc)
{
	if (oc->fd >= 0)
		close(oc->fd);
	oc->fd = -1;
	oc->shut = false;
	if (oc->client_ready) {
		auth_note_outcome(oc);
		smtp_client_free(&oc->cl);
		oc->client_ready = false;
	}
	oc->in_off = oc->in_len = 0;
	oc->out_len = 0;
	oc->body = false;
	oc->sent_wait = false;
	oc->txn_deadline = 0;
	tls_free(oc->tls);
	oc->tls = NULL;
	oc->tls_phase = OC_TLS_OFF;
	oc->rlen = 0;
}

static void oc_free(struct oconn *oc)
{
	if (oc->p.conf)
		conf_unref(oc->p.conf);
	secret_free_copy(oc->secret);
	free(oc->cin);
	free(oc->rbuf);
	free(oc->t);
	free(oc);
}

static void finalize(struct oconn *oc)
{
	drop_socket(oc);
	oc->ops->closed(oc);
	oc_free(oc);
}

/* The job queued behind the current one goes back untouched: none of
 * it reached the next hop's queue. */
static void next_give_back(struct oconn *oc)
{
	struct djob *j = oc->job_next;
	if (!j)
		return;
	oc->job_next = NULL;
	oc->next_queued = false;
	j->not_attempted = true;
	oc->ops->job_done(oc, j);
}

static void job_give_back(struct oconn *oc)
{
	struct djob *j = oc->job;
	if (!j)
		return;
	oc->job = NULL;
	oc->job_started = false;
	oc->ops->job_done(oc, j);
}

/* Connects to the current target, moving on while socket() fails at once.
 * false when none is left. */
static bool connect_next(struct oconn *oc)
{
	for (; oc->target < oc->nt; oc->target++, oc->plain_only = false) {
		const struct resolver_target *t = &oc->t[oc->target];
		/* RFC 5321 5.1: we are one of the MX hosts; none of our
		 * preference or a worse one may be tried. */
		if (oc->looped && oc->p.mx && t->pref >= oc->loop_pref) {
			oc->target = oc->nt;
			return false;
		}
		describe_target(oc);
		/* Blocking: the backend decides (io_uring waits in the kernel,
		 * epoll sets O_NONBLOCK itself). */
		int fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			snprintf(oc->last_error, sizeof(oc->last_error), "%.200s: %s", oc->remote,
				 strerror(errno));
			continue;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		oc->fd = fd;
		enter(oc, OC_CONNECTING);
		oc->out_busy = true;
		oc->out_sub = SUB_CONNECT;
		oc->inflight++;
		io_connect(oc->w->io, fd, (const struct sockaddr *)&t->addr, t->addrlen,
			   tag(oc, SUB_CONNECT));
		return true;
	}
	return false;
}

/* Every target failed: the job gets the last error, the owner is told,
 * and the connection goes. */
static void give_up(struct oconn *oc)
{
	char text[480];
	/* Every target tried was ourselves: the jobs get the loop's results. */
	bool loop = oc->looped && !oc->other_failure && !oc->final_text[0];
	/* A TLS requirement (4.7.5, 4.7.10 for credentials) or credentials no
	 * next hop took are named as such. */
	const char *status = loop ? "4.4.6"
			     : strncmp(oc->last_status, "4.7.", 4) == 0 ? oc->last_status
									 : "4.4.1";
	const char *what = strcmp(status, "4.4.1") == 0	   ? "No next hop answered"
			   : strcmp(status, "4.4.6") == 0  ? "Every next hop is ourselves"
			   : strcmp(status, "4.7.5") == 0  ? "No next hop could be reached with TLS"
			   : strcmp(status, "4.7.10") == 0 ? "No next hop could be reached with TLS "
							     "for our credentials"
							   : "No next hop accepted our credentials";
	if (oc->final_text[0]) {
		status = oc->final_status;
		snprintf(text, sizeof(text), "%s", oc->final_text);
	} else {
		snprintf(text, sizeof(text), "451 %s %s; last error: %.360s", status, what,
			 oc->last_error[0] ? oc->last_error : "none reachable");
	}
	if (oc->backoff_reply[0] && oc->ops->backoff)
		oc->ops->backoff(oc, oc->backoff_reply, oc->backoff_credentials);
	struct djob *j = oc->job;
	oc->job = NULL;
	if (j) {
		snprintf(j->remote, sizeof(j->remote), "%s", oc->remote);
		if (loop)
			outconn_loop_results(j, oc->p.helo);
		else
			djob_result_all(j, 451, status, text);
		oc->ops->job_done(oc, j);
	}
	oc->ops->unreachable(oc, 451, status, text);
	enter(oc, OC_CLOSING);
	finalize(oc);
}

/* Once the old socket is drained: the next target, or the same one again
 * in plaintext after an opportunistic handshake failed. */
static void switch_target(struct oconn *oc)
{
	drop_socket(oc);
	if (oc->final_text[0]) {
		give_up(oc);
		return;
	}
	if (oc->retry_plain) {
		oc->retry_plain = false;
		oc->plain_only = true;
	} else {
		oc->plain_only = false;
		oc->target++;
	}
	if (!connect_next(oc))
		give_up(oc);
}

/* The current target is of no use (refused, timed out, greeting or EHLO
 * refused, TLS required and not to be had): on to the next one, as RFC
 * 5321 5.1 asks, or give up. status: 4.4.1, or 4.7.5 for TLS. */
static void next_target(struct oconn *oc, const char *status, const char *why)
{
	snprintf(oc->last_error, sizeof(oc->last_error), "%s", why);
	snprintf(oc->last_status, sizeof(oc->last_status), "%s", status);
	if (strcmp(status, "4.4.6") != 0)
		oc->other_failure = true;
	char q[400], qc[200], qr[LOG_QUOTE_CAP(sizeof(oc->remote))];
	log_msg(LOG_INFO, "event=connect_failed send_connector=%s relay=%s error=%s%s",
		log_quote_always(qc, sizeof(qc), oc->p.connector),
		log_quote(qr, sizeof(qr), oc->remote), log_quote(q, sizeof(q), why),
		oc->retry_plain ? " retry=plaintext" : "");
	quiesce(oc);
	enter(oc, OC_SWITCHING);
	if (oc->inflight)
		return; /* resumed from the last completion */
	switch_target(oc);
}

bool outconn_open(struct wctx *w, const struct outconn_ops *ops, void *owner,
		  const struct oconn_params *p, struct djob *j)
{
	struct oconn *oc = calloc(1, sizeof(*oc));
	struct resolver_target *t = calloc(p->ntargets ? p->ntargets : 1, sizeof(*t));
	if (!oc || !t) {
		free(oc);
		free(t);
		return false;
	}
	memcpy(t, p->targets, p->ntargets * sizeof(*t));
	oc->w = w;
	oc->ops = ops;
	oc->owner = owner;
	oc->fd = -1;
	oc->t = t;
	oc->nt = p->ntargets;
	oc->p = *p;
	oc->p.targets = NULL;
	/* Credentials need TLS unless "none" was said; a connector without a
	 * context (tests) has no TLS, and so sends none. */
	oc->auth_needs_tls = p->tls_mode != TLS_MODE_NONE;
	if (!oc->p.tls_ctx)
		oc->p.tls_mode = TLS_MODE_NONE;
	if (p->auth_mech != SCONN_AUTH_NONE) {
		oc->secret = strdup(p->auth_secret ? p->auth_secret : "");
		if (!oc->secret) {
			free(oc);
			free(t);
			return false;
		}
	}
	oc->p.auth_secret = oc->secret;
	if (oc->p.conf)
		conf_ref(oc->p.conf);
	oc->job = j;
	oc->state = OC_CONNECTING;
	snprintf(oc->remote, sizeof(oc->remote), "%s", "none");
	ops->opened(oc);
	if (!connect_next(oc))
		give_up(oc);
	return true;
}

/* While a body goes out: the next job of the destination, its commands
 * to follow the body (the client queues them when it can, else it starts
 * after the reply). */
static void take_next(struct oconn *oc)
{
	if (oc->job_next || oc->w->stopping || !smtp_client_next_wanted(&oc->cl))
		return;
	struct djob *j = oc->ops->next_job(oc);
	if (!j)
		return;
	oc->job_next = j;
	/* One the client refuses (too big for the next hop, BDAT-able)
	 * starts after the reply; job_start counts it then. */
	oc->next_queued = smtp_client_start_next(&oc->cl, &j->cmsg, j->res);
	if (oc->next_queued)
		oc->msgs++;
}

static void job_start(struct oconn *oc, struct djob *j)
{
	oc->job = j;
	oc->job_started = true;
	oc->msgs++;
	smtp_client_start(&oc->cl, &j->cmsg, j->res);
}

bool outconn_take(struct oconn *oc, struct djob *j)
{
	if (oc->state != OC_IDLE)
		return false;
	enter(oc, OC_SESSION);
	job_start(oc, j);
	run(oc);
	return true;
}

void outconn_quit(struct oconn *oc)
{
	if (oc->state != OC_IDLE && oc->state != OC_SESSION)
		return;
	enter(oc, OC_SESSION);
	smtp_client_quit(&oc->cl);
	run(oc);
}

void outconn_close(struct oconn *oc)
{
	if (oc->state == OC_CLOSING)
		return;
	/* Never started on this connection: back, untouched. */
	if (oc->job && !oc->job_started)
		oc->job->not_attempted = true;
	job_give_back(oc);
	next_give_back(oc);
	quiesce(oc);
	enter(oc, OC_CLOSING);
	if (!oc->inflight)
		finalize(oc);
}

static void job_finished(struct oconn *oc)
{
	struct djob *j = oc->job;
	j->dsn_passed = smtp_client_dsn_passed(&oc->cl);
	snprintf(j->remote, sizeof(j->remote), "%s", oc->remote);
	/* The delivery log line's tls= and cipher= ("" in plaintext). */
	if (oc->tls_phase == OC_TLS_ON)
		snprintf(j->tls, sizeof(j->tls), "%s %s", tls_version(oc->tls), tls_cipher(oc->tls));
	else
		j->tls[0] = '\0';
	job_give_back(oc);
}

/* The connection broke or timed out. A job that has not started yet
 * tries the next target instead; during the handshake it is a TLS
 * failure (a peer that drops the connection at our ClientHello is the
 * common case of a broken TLS stack). */
static void lost(struct oconn *oc, const char *why)
{
	if (oc->state == OC_CLOSING || oc->state == OC_SWITCHING)
		return;
	if (oc->tls_phase == OC_TLS_HANDSHAKE) {
		char reason[300];
		snprintf(reason, sizeof(reason), "handshake failed: %.250s", why);
		tls_failed(oc, TLS_OUT_FAILED, reason);
		return;
	}
	if (oc->job && !oc->job_started) {
		next_target(oc, "4.4.1", why);
		return;
	}
	char text[400];
	snprintf(text, sizeof(text), "451 4.4.2 %.100s: %.280s", oc->remote, why);
	if (oc->job && oc->client_ready && smtp_client_fail(&oc->cl, 451, "4.4.2", text)) {
		job_finished(oc);
	} else if (oc->job) {
		djob_result_all(oc->job, 451, "4.4.2", text);
		job_give_back(oc);
	}
	next_give_back(oc);
	outconn_close(oc);
}

void outconn_lost(struct oconn *oc, const char *why)
{
	if (oc->state == OC_CLOSING)
		return;
	/* The owner gives up on it (we stop): no next target. A job not
	 * started goes back untouched. */
	if (!oc->job || !oc->job_started) {
		outconn_close(oc);
		return;
	}
	lost(oc, why);
}

/* A recv stays armed for the whole session, not only when the client
 * machine asks for input: replies are there as soon as they arrive, one
 * loop turn earlier than a recv submitted after the send completed. The
 * buffer is compacted only here, with no recv in flight into it. Under
 * TLS the ciphertext goes to cin, which tls_input empties at once. false:
 * a reply line fills the whole buffer. */
static bool arm_recv(struct oconn *oc)
{
	if (oc->in_busy || oc->fd < 0)
		return true;
	if (oc->tls) {
		oc->in_busy = true;
		oc->inflight++;
		oc->recv_at = oc->cin;
		io_recv_into(oc->w->io, oc->fd, oc->cin, TLS_CIN, tag(oc, SUB_RECV));
		return true;
	}
	if (oc->in_off) {
		memmove(oc->in, oc->in + oc->in_off, oc->in_len - oc->in_off);
		oc->in_len -= oc->in_off;
		oc->in_off = 0;
	}
	if (oc->in_len == sizeof(oc->in))
		return false;
	oc->in_busy = true;
	oc->inflight++;
	oc->recv_at = oc->in + oc->in_len;
	io_recv_into(oc->w->io, oc->fd, oc->recv_at, sizeof(oc->in) - oc->in_len,
		     tag(oc, SUB_RECV));
	return true;
}

/* Sends what is pending at once when the socket takes it (the next hop
 * waits for it, and the message for the next hop); true when all of it
 * went. Otherwise a send is submitted, or the connection was lost. */
static bool send_now(struct oconn *oc)
{
	while (oc->out_off < oc->out_len) {
		long n = io_try_send(oc->w->io, oc->fd, oc->out + oc->out_off,
				     oc->out_len - oc->out_off);
		if (n == -EAGAIN)
			break;
		if (n <= 0) {
			lost(oc, n == 0 ? "connection closed by the next hop" : strerror((int)-n));
			return false;
		}
		oc->out_off += (size_t)n;
	}
	if (oc->out_off == oc->out_len)
		return true;
	oc->out_busy = true;
	oc->out_sub = SUB_SEND;
	oc->inflight++;
	io_send(oc->w->io, oc->fd, oc->out + oc->out_off, oc->out_len - oc->out_off,
		tag(oc, SUB_SEND));
	return false;
}

/* out[0..out_len) is on the wire. Under TLS it was tls_output()'s, which
 * is told only now: its buffer had to stay put while the send was in
 * flight. */
static void wire_sent(struct oconn *oc)
{
	if (oc->tls)
		tls_output_done(oc->tls, oc->out_len);
	oc->out_len = 0;
}

/* Ciphertext waiting to go (handshake records, encrypted commands and
 * body): it becomes the pending send. */
static bool take_tls_output(struct oconn *oc)
{
	const char *p;
	size_t n = tls_output(oc->tls, &p);
	if (!n)
		return false;
	oc->out = p;
	oc->out_len = n;
	oc->out_off = 0;
	return true;
}

/* The body's bytes went out: n of them from the current piece on, the
 * end-of-data line's last. */
static void body_sent(struct oconn *oc, uint64_t n)
{
	const struct qmsg *m = oc->job->m;
	while (n && oc->ext < m->nchunks) {
		uint64_t left = m->len[oc->ext] - oc->ext_off;
		uint64_t k = n < left ? n : left;
		oc->ext_off += k;
		n -= k;
		if (oc->ext_off < m->len[oc->ext])
			break;
		oc->ext++;
		oc->ext_off = 0;
	}
	if (n)
		oc->dot_off += (size_t)n;
	arm_body(oc);
}

static const char dot[] = ".\r\n";

/* Pieces of the stored message one send takes from the page cache. */
#define BODY_RANGES 8

/* Sends the stored message, the end-of-data line riding with its last
 * piece: at once while the socket and the page cache allow, several
 * pieces in one send, then by a submitted io_sendfile. false once all of
 * it is sent; true when an operation is under way or the connection was
 * lost. */
static bool send_body(struct oconn *oc)
{
	const struct qmsg *m = oc->job->m;
	int seg = spool_seg_fd(m->seg);
	for (;;) {
		while (oc->ext < m->nchunks && m->len[oc->ext] == oc->ext_off) {
			oc->ext++;
			oc->ext_off = 0;
		}
		if (oc->ext == m->nchunks)
			return false;
		struct io_range r[BODY_RANGES];
		unsigned n = 0;
		uint32_t i = oc->ext;
		for (; i < m->nchunks && n < BODY_RANGES; i++) {
			uint64_t skip = i == oc->ext ? oc->ext_off : 0;
			if (m->len[i] > skip)
				r[n++] = (struct io_range){m->off[i] + skip, m->len[i] - skip};
		}
		bool last = i == m->nchunks; /* every piece left is in r */
		/* a BDAT chunk has no end-of-data line (dot_off 3) */
		const char *tail = last && oc->dot_off < 3 ? dot + oc->dot_off : NULL;
		size_t taillen = tail ? 3 - oc->dot_off : 0;
		long sent = io_try_sendfile(oc->w->io, oc->fd, seg, r, n, tail, taillen);
		if (sent > 0) {
			body_sent(oc, (uint64_t)sent);
			continue;
		}
		if (sent != -EAGAIN) {
			lost(oc, sent == 0 ? "connection closed by the next hop" : strerror((int)-sent));
			return true;
		}
		/* One piece by the ring (the file is read off the loop), the
		 * end-of-data line with it when it is the last. */
		bool only = n == 1;
		oc->out_busy = true;
		oc->out_sub = SUB_SENDFILE;
		oc->inflight++;
		io_sendfile(oc->w->io, oc->fd, seg, r[0].off, (size_t)r[0].len, only ? tail : NULL,
			    only ? taillen : 0, tag(oc, SUB_SENDFILE));
		return true;
	}
}

/* The stored message under TLS: no sendfile (the bytes must pass through
 * the cipher), so pieces of it are read from the segment by io_read, off
 * the loop, and encrypted. The next piece is read while the ciphertext of
 * this one is sent; a piece read while a send is in flight waits in rbuf,
 * so at most one piece of ciphertext and one of plaintext are held.
 * 1: ciphertext to send, 0: all of it (and the dot) encrypted, -1: an
 * operation is under way or the connection was lost. */
static int tls_body(struct oconn *oc)
{
	const struct qmsg *m = oc->job->m;
	bool wrote = false;
	if (oc->rlen) {
		if (!tls_write(oc->tls, oc->rbuf, oc->rlen)) {
			lost(oc, tls_error(oc->tls));
			return -1;
		}
		oc->ext_off += oc->rlen;
		oc->rlen = 0;
		wrote = true;
		arm_body(oc);
	}
	if (oc->read_busy)
		return wrote ? 1 : -1;
	while (oc->ext < m->nchunks && oc->ext_off == m->len[oc->ext]) {
		oc->ext++;
		oc->ext_off = 0;
	}
	if (oc->ext == m->nchunks) {
		if (oc->dot_off < 3 && !tls_write(oc->tls, dot, 3)) {
			lost(oc, tls_error(oc->tls));
			return -1;
		}
		return 0;
	}
	if (!oc->rbuf && !(oc->rbuf = malloc(TLS_PIECE))) {
		lost(oc, strerror(ENOMEM));
		return -1;
	}
	uint64_t left = m->len[oc->ext] - oc->ext_off;
	oc->rwant = left < TLS_PIECE ? (size_t)left : TLS_PIECE;
	oc->read_busy = true;
	oc->inflight++;
	io_read(oc->w->io, spool_seg_fd(m->seg), oc->rbuf, oc->rwant,
		m->off[oc->ext] + oc->ext_off, tag(oc, SUB_READ));
	return wrote ? 1 : -1;
}

/* ---- STARTTLS ------------------------------------------------------------ */

/* The target's host name: the MX name, or the smart host's host part
 * ("host:port", "[v6]:port"). *ip: an address literal. */
static void target_host(const struct oconn *oc, char *out, size_t cap, bool *ip)
{
	const char *h = oc->t[oc->target].host;
	size_t n = strlen(h);
	if (!oc->p.mx) {
		if (h[0] == '[') {
			const char *e = strchr(h, ']');
			h++;
			n = e ? (size_t)(e - h) : strlen(h);
		} else {
			const char *c = strrchr(h, ':');
			if (c)
				n = (size_t)(c - h);
		}
	}
	snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), h);
	struct in6_addr a;
	*ip = inet_pton(AF_INET, out, &a) == 1 || inet_pton(AF_INET6, out, &a) == 1;
}

/* HOST[IP]:PORT for the tls and auth lines; an address literal is named
 * once. */
static const char *remote_text(const struct oconn *oc, char *out, size_t cap)
{
	char host[256];
	bool ip;
	target_host(oc, host, sizeof(host), &ip);
	if (oc->p.mx || ip)
		snprintf(out, cap, "%s", oc->remote);
	else
		snprintf(out, cap, "%s%s", host, oc->remote);
	return out;
}

/* One event=tls line and one count per connection that got past EHLO. */
static void tls_report(struct oconn *oc, enum tls_out_result res, const char *reason)
{
	if (oc->tls_reported)
		return;
	oc->tls_reported = true;
	metric_add(&oc->w->m->send[oc->p.stats_id].tls[res], 1);
	char remote[600], qc[200], qr[400];
	remote_text(oc, remote, sizeof(remote));
	log_quote(qc, sizeof(qc), oc->p.connector);
	if (res == TLS_OUT_OK) {
		log_msg(LOG_INFO,
			"event=tls dir=out send_connector=%s remote=%s result=ok tls=%s cipher=%s resumed=%s verified=%s",
			qc, log_quote(qr, sizeof(qr), remote), tls_version(oc->tls), tls_cipher(oc->tls),
			tls_resumed(oc->tls) ? "yes" : "no", tls_peer_verified(oc->tls) ? "yes" : "no");
		return;
	}
	char qw[400];
	log_msg(oc->p.tls_mode >= TLS_MODE_REQUIRED ? LOG_WARN : LOG_INFO,
		"event=tls dir=out send_connector=%s remote=%s result=%s reason=%s", qc,
		log_quote(qr, sizeof(qr), remote), tls_out_names[res],
		log_quote(qw, sizeof(qw), reason));
}

/* A session the next hop handed out goes to the owner's cache. */
static void tls_keep_session(struct oconn *oc)
{
	SSL_SESSION *s = tls_session_get(oc->tls);
	if (!s)
		return;
	if (oc->ops->tls_session)
		oc->ops->tls_session(oc, s);
	else
		tls_session_free(s);
}

/* TLS could not be had with this target (handshake, certificate, or the
 * connection dropped meanwhile). required/verify: the target failed, like
 * a refused connection. opportunistic: once more to the same target on a
 * fresh connection, in plaintext (no plaintext may follow a 220 to
 * STARTTLS on this one). */
static void tls_failed(struct oconn *oc, enum tls_out_result res, const char *reason)
{
	tls_report(oc, res, reason);
	char why[400];
	snprintf(why, sizeof(why), "%.100s: TLS %s: %.250s", oc->remote, tls_out_names[res],
		 reason);
	if (oc->p.tls_mode >= TLS_MODE_REQUIRED) {
		next_target(oc, "4.7.5", why);
		return;
	}
	oc->retry_plain = true;
	next_target(oc, "4.4.1", why);
}

/* 220 to STARTTLS: whatever else the server sent in that read is dropped
 * unread (CVE-2011-0411), and the handshake starts. */
static void tls_begin(struct oconn *oc)
{
	oc->in_off = oc->in_len = 0;
	char name[256];
	bool ip;
	if (oc->p.tls_server_name) {
		snprintf(name, sizeof(name), "%s", oc->p.tls_server_name);
		struct in6_addr a;
		ip = inet_pton(AF_INET, name, &a) == 1 || inet_pton(AF_INET6, name, &a) == 1;
	} else {
		target_host(oc, name, sizeof(name), &ip);
	}
	SSL_SESSION *resume = oc->ops->tls_resume ? oc->ops->tls_resume(oc) : NULL;
	if (!oc->cin)
		oc->cin = malloc(TLS_CIN);
	if (oc->cin && oc->p.tls_ctx)
		oc->tls = tls_client_start(oc->p.tls_ctx, ip ? NULL : name, name, resume);
	if (!oc->tls) {
		tls_failed(oc, TLS_OUT_FAILED, oc->p.tls_ctx ? strerror(ENOMEM) : "no TLS context");
		return;
	}
	oc->tls_phase = OC_TLS_HANDSHAKE;
	/* The whole handshake is bounded like one command (5 min, as
	 * Postfix's smtp_starttls_timeout). */
	set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
	if (tls_handshake(oc->tls) == TLS_FAILED)
		tls_failed(oc, TLS_OUT_FAILED, tls_error(oc->tls));
}

/* Ciphertext arrived during the handshake. */
static void tls_step(struct oconn *oc)
{
	enum tls_result r = tls_handshake(oc->tls);
	if (r == TLS_AGAIN)
		return;
	if (r != TLS_DONE) {
		enum tls_failure k = tls_failure_kind(oc->tls);
		tls_failed(oc, k == TLS_FAIL_UNTRUSTED       ? TLS_OUT_UNTRUSTED
			       : k == TLS_FAIL_NAME_MISMATCH ? TLS_OUT_NAME_MISMATCH
							     : TLS_OUT_FAILED,
			   tls_error(oc->tls));
		return;
	}
	oc->tls_phase = OC_TLS_ON;
	snprintf(oc->tls_ver, sizeof(oc->tls_ver), "%s", tls_version(oc->tls));
	tls_report(oc, TLS_OUT_OK, NULL);
	tls_keep_session(oc);
	smtp_client_tls_started(&oc->cl);
	set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
}

/* Plaintext replies out of the TLS layer into in. 1: some arrived, 0:
 * none is there yet, -1: the connection was lost. */
static int tls_pull(struct oconn *oc)
{
	if (oc->in_off == oc->in_len) {
		oc->in_off = oc->in_len = 0;
	} else if (oc->in_off) {
		memmove(oc->in, oc->in + oc->in_off, oc->in_len - oc->in_off);
		oc->in_len -= oc->in_off;
		oc->in_off = 0;
	}
	if (oc->in_len == sizeof(oc->in)) {
		lost(oc, "reply line too long");
		return -1;
	}
	long n = tls_read(oc->tls, oc->in + oc->in_len, sizeof(oc->in) - oc->in_len);
	/* TLS 1.3 tickets come after the handshake, with the reads. */
	tls_keep_session(oc);
	if (n > 0) {
		oc->in_len += (size_t)n;
		return 1;
	}
	if (n == TLS_AGAIN)
		return 0;
	lost(oc, n == TLS_EOF ? "connection closed by the next hop (TLS close_notify)"
			      : tls_error(oc->tls));
	return -1;
}

/* What STARTTLS came to when the session went on (or ended) without a
 * handshake: counted and logged once. */
static void tls_note_outcome(struct oconn *oc)
{
	if (oc->tls_reported)
		return;
	char reason[200];
	switch (smtp_client_tls_state(&oc->cl)) {
	case SMTPC_TLSST_NOT_OFFERED:
		tls_report(oc, TLS_OUT_NOT_OFFERED, "STARTTLS not offered");
		break;
	case SMTPC_TLSST_REFUSED:
		snprintf(reason, sizeof(reason), "STARTTLS refused: %.160s", oc->cl.tls_reply);
		tls_report(oc, TLS_OUT_FAILED, reason);
		break;
	default:
		break;
	}
}

/* ---- AUTH ------------------------------------------------------------------ */

/* One event=auth line and one count per connection that had credentials
 * to present (never the secret: the user, the mechanism, the next hop's
 * reply). ok and temporary (4xx, the connection lost) are INFO; failed
 * (5xx, not offered, withheld for want of TLS) is the operator's: WARN. */
static void auth_note_outcome(struct oconn *oc)
{
	if (oc->auth_reported || !oc->client_ready || oc->p.auth_mech == SCONN_AUTH_NONE)
		return;
	const struct smtp_client *c = &oc->cl;
	enum auth_result res;
	const char *key = "reply", *val;
	char why[sizeof(c->session_error.text) + 8];
	switch (smtp_client_auth_state(c)) {
	case SMTPC_AUTHST_OK:
		res = AUTH_RESULT_OK;
		val = NULL;
		break;
	case SMTPC_AUTHST_REFUSED:
		res = c->auth_code / 100 == 5 ? AUTH_RESULT_FAILED : AUTH_RESULT_TEMPORARY;
		val = c->auth_reply;
		break;
	case SMTPC_AUTHST_WITHHELD:
		res = AUTH_RESULT_FAILED;
		key = "reason";
		val = "credentials withheld: no TLS to the next hop";
		break;
	case SMTPC_AUTHST_NOT_OFFERED:
		res = AUTH_RESULT_FAILED;
		key = "reason";
		snprintf(why, sizeof(why), "next hop does not offer AUTH %s",
			 smtp_client_auth_name(oc->cl.p.auth));
		val = why;
		break;
	case SMTPC_AUTHST_SENT:
		/* Lost half way: a protocol error, a timeout, the peer gone. */
		res = AUTH_RESULT_TEMPORARY;
		key = "reason";
		snprintf(why, sizeof(why), "%s",
			 c->session_error.text[0] ? c->session_error.text
			 : oc->last_error[0]	  ? oc->last_error
						  : "connection lost");
		val = why;
		break;
	default:
		return; /* never got as far as AUTH */
	}
	oc->auth_reported = true;
	metric_add(&oc->w->m->send[oc->p.stats_id].auth[res], 1);
	char remote[600], qc[200], qr[400], qu[300], qv[600], tail[620] = "";
	remote_text(oc, remote, sizeof(remote));
	if (val)
		snprintf(tail, sizeof(tail), " %s=%s", key, log_quote(qv, sizeof(qv), val));
	log_msg(res == AUTH_RESULT_FAILED ? LOG_WARN : LOG_INFO,
		"event=auth dir=out send_connector=%s remote=%s user=%s mechanism=%s result=%s%s",
		log_quote(qc, sizeof(qc), oc->p.connector), log_quote(qr, sizeof(qr), remote),
		log_quote(qu, sizeof(qu), oc->p.auth_user ? oc->p.auth_user : ""),
		sconn_auth_names[oc->p.auth_mech < 4 ? oc->p.auth_mech : 0], auth_result_names[res],
		tail);
}

/* The next hop's own reply that ended a session before MAIL, and whether
 * it asks us to back off: 421 anywhere, 432 or x.3.2 to AUTH (Microsoft
 * 365's "4.3.2 Concurrent connections limit exceeded"). A 5xx to AUTH
 * asks it too: more attempts with refused credentials only get an
 * account locked. */
static void note_backoff(struct oconn *oc)
{
	const struct smtp_client *c = &oc->cl;
	bool auth = smtp_client_auth_state(c) == SMTPC_AUTHST_REFUSED;
	int code = auth ? c->auth_code : c->session_error.code;
	const char *status = auth ? c->auth_status : c->session_error.status;
	const char *reply = auth ? c->auth_reply : c->session_error.text;
	bool credentials = auth && code / 100 == 5;
	if (code != 421 && code != 432 && !(code / 100 == 4 && strcmp(status, "4.3.2") == 0) &&
	    !credentials)
		return;
	snprintf(oc->backoff_reply, sizeof(oc->backoff_reply), "%.290s", reply);
	oc->backoff_credentials = credentials;
}

/* The target greeted us with our own name: it is us (DESIGN B.6), never
 * delivered to. A smart host list goes on to its next one; with MX, so
 * does RFC 5321 5.1, but only to better ones (connect_next). */
static void target_is_us(struct oconn *oc)
{
	const char *text = oc->cl.session_error.text;
	const char *why = strncmp(text, "451 4.4.6 ", 10) == 0 ? text + 10 : text;
	char qc[LOG_QUOTE_CAP(64)], qr[LOG_QUOTE_CAP(sizeof(oc->remote))], line[600];
	char qw[LOG_QUOTE_CAP(sizeof(oc->cl.session_error.text))];
	log_msg(LOG_WARN, "event=loop send_connector=%s relay=%s reason=%s",
		log_quote_always(qc, sizeof(qc), oc->p.connector), log_quote(qr, sizeof(qr), oc->remote),
		log_quote(qw, sizeof(qw), why));
	oc->looped = true;
	oc->loop_pref = oc->t[oc->target].pref;
	snprintf(line, sizeof(line), "%.200s: %.380s", oc->remote, why);
	next_target(oc, "4.4.6", line);
}

/* The session ended before its first job: on to the next target. A TLS
 * requirement that was not met, or credentials that could not be used
 * there, say so in the status. Refused credentials end the walk: every
 * next hop of a destination checks them against the same accounts. */
static void session_refused(struct oconn *oc)
{
	tls_note_outcome(oc);
	auth_note_outcome(oc);
	if (smtp_client_loop(&oc->cl)) {
		target_is_us(oc);
		return;
	}
	note_backoff(oc);
	const struct smtp_client_result *se = &oc->cl.session_error;
	enum smtp_client_tls_state ts = smtp_client_tls_state(&oc->cl);
	bool tls = oc->p.tls_mode >= TLS_MODE_REQUIRED &&
		   (ts == SMTPC_TLSST_NOT_OFFERED || ts == SMTPC_TLSST_REFUSED);
	bool auth = se->stage == SMTPC_STAGE_AUTH && se->code != 421;
	if (auth && oc->cl.auth_state == SMTPC_AUTHST_REFUSED && oc->cl.auth_code / 100 == 5) {
		snprintf(oc->final_text, sizeof(oc->final_text), "%.470s", se->text);
		snprintf(oc->final_status, sizeof(oc->final_status), "%s", se->status);
		snprintf(oc->last_error, sizeof(oc->last_error), "%.100s: %.190s", oc->remote,
			 se->text);
		snprintf(oc->last_status, sizeof(oc->last_status), "%.7s", se->status);
		quiesce(oc);
		enter(oc, OC_SWITCHING); /* to give_up once drained */
		if (!oc->inflight)
			switch_target(oc);
		return;
	}
	bool named = tls || auth;
	char why[sizeof(oc->remote) + sizeof(se->text) + 2];
	snprintf(why, sizeof(why), "%s%s%s", named ? oc->remote : "", named ? ": " : "",
		 se->text[0] ? se->text : "session refused");
	next_target(oc, tls ? "4.7.5" : auth ? se->status : "4.4.1", why);
}

/* ---- the session ----------------------------------------------------------- */

static void run(struct oconn *oc)
{
	for (;;) {
		if (oc->state != OC_SESSION || oc->out_busy)
			return;
		if (oc->out_len) {
			if (!send_now(oc))
				return;
			wire_sent(oc);
			continue;
		}
		if (oc->tls && take_tls_output(oc))
			continue;
		if (oc->body) {
			int r = oc->tls ? tls_body(oc) : send_body(oc) ? -1 : 0;
			if (r < 0)
				return;
			if (r > 0)
				continue;
			oc->body = false;
			if (!oc->tls && oc->dot_off < 3) {
				/* What did not ride with the body (an empty one, or
				 * a short send), like any command line. */
				oc->out = dot + oc->dot_off;
				oc->out_len = 3 - oc->dot_off;
				oc->out_off = 0;
			}
			continue;
		}
		if (oc->sent_wait) {
			oc->sent_wait = false;
			smtp_client_sent(&oc->cl);
			arm_wait(oc);
			continue;
		}
		if (oc->tls_phase == OC_TLS_HANDSHAKE) {
			/* Waits for the server's handshake records. */
			if (!arm_recv(oc))
				lost(oc, "reply line too long");
			return;
		}
		struct smtp_client_event ev;
		size_t used = smtp_client_feed(&oc->cl, oc->in + oc->in_off,
					       oc->in_len - oc->in_off, &ev);
		oc->in_off += used;
		switch (ev.type) {
		case SMTPC_EV_SEND:
			set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
			oc->sent_wait = true;
			if (oc->tls) {
				if (!tls_write(oc->tls, ev.data, ev.len))
					lost(oc, tls_error(oc->tls));
				continue;
			}
			oc->out = ev.data;
			oc->out_len = ev.len;
			oc->out_off = 0;
			continue;
		case SMTPC_EV_SEND_BODY:
			oc->body = true;
			oc->sent_wait = true;
			oc->ext = 0;
			oc->ext_off = 0;
			/* BDAT LAST: the chunk is the body alone, as if its
			 * end-of-data line were sent already */
			oc->dot_off = ev.bdat ? 3 : 0;
			oc->rlen = 0;
			oc->txn_ms = smtp_client_timeout_ms(&oc->cl);
			oc->txn_deadline = oc->txn_ms > UINT64_MAX - oc->w->now_ms
						   ? UINT64_MAX
						   : oc->w->now_ms + oc->txn_ms;
			arm_body(oc);
			take_next(oc);
			if (oc->job->m->prefix_len) {
				/* Header fields content rules added go first, like
				 * a command line; the stored bytes follow. */
				const struct qmsg *m = oc->job->m;
				if (oc->tls) {
					if (!tls_write(oc->tls, m->prefix, m->prefix_len))
						lost(oc, tls_error(oc->tls));
				} else {
					oc->out = m->prefix;
					oc->out_len = m->prefix_len;
					oc->out_off = 0;
				}
			}
			continue;
		case SMTPC_EV_NEED_INPUT:
			/* A partial reply moves no deadline; a complete one
			 * begins the wait for the next. */
			if (smtp_client_replies(&oc->cl) != oc->replies_armed)
				arm_wait(oc);
			if (oc->tls_phase == OC_TLS_ON) {
				int r = tls_pull(oc);
				if (r > 0)
					continue;
				if (r < 0)
					return;
			}
			if (!arm_recv(oc))
				lost(oc, "reply line too long");
			return;
		case SMTPC_EV_STARTTLS:
			tls_begin(oc);
			continue;
		case SMTPC_EV_READY: {
			tls_note_outcome(oc);
			auth_note_outcome(oc);
			if (!oc->established) {
				oc->established = true;
				if (oc->ops->established)
					oc->ops->established(oc);
			}
			if (oc->job && !oc->job_started) {
				/* The job this connection was opened for. */
				job_start(oc, oc->job);
				continue;
			}
			/* one taken behind a body, not queued in the client */
			struct djob *j = oc->job_next;
			oc->job_next = NULL;
			if (!j)
				j = oc->ops->next_job(oc);
			if (j) {
				job_start(oc, j);
				continue;
			}
			if (oc->ops->may_idle(oc)) {
				/* The armed recv notices the server closing. */
				enter(oc, OC_IDLE);
				if (!arm_recv(oc))
					outconn_close(oc);
				return;
			}
			smtp_client_quit(&oc->cl);
			continue;
		}
		case SMTPC_EV_MSG_DONE:
			oc->txn_deadline = 0;
			job_finished(oc);
			if (oc->job_next && oc->next_queued) {
				if (smtp_client_current(&oc->cl) == &oc->job_next->cmsg) {
					/* its replies come next */
					oc->job = oc->job_next;
					oc->job_started = true;
					oc->job_next = NULL;
					oc->next_queued = false;
				} else {
					next_give_back(oc); /* the session ended */
				}
			}
			continue;
		case SMTPC_EV_CLOSE:
			if (oc->job && !oc->job_started) {
				session_refused(oc);
				return;
			}
			tls_note_outcome(oc);
			outconn_close(oc);
			return;
		}
	}
}

static void on_connected(struct oconn *oc, int res)
{
	if (res < 0) {
		char why[400];
		snprintf(why, sizeof(why), "%s: %s", oc->remote, strerror(-res));
		next_target(oc, "4.4.1", why);
		return;
	}
	struct smtp_client_params cp = {
		.helo_name = oc->p.helo, .command_timeout_ms = oc->p.command_timeout_ms,
		.data_timeout_ms = oc->p.data_timeout_ms, .min_data_rate = oc->p.min_data_rate,
	};
	if (!oc->plain_only && oc->p.tls_mode == TLS_MODE_OPPORTUNISTIC)
		cp.tls = SMTPC_TLS_WANT;
	else if (oc->p.tls_mode >= TLS_MODE_REQUIRED)
		cp.tls = SMTPC_TLS_REQUIRE;
	static const enum smtp_client_auth mechs[] = {
		[SCONN_AUTH_NONE] = SMTPC_AUTH_NONE, [SCONN_AUTH_PLAIN] = SMTPC_AUTH_PLAIN,
		[SCONN_AUTH_LOGIN] = SMTPC_AUTH_LOGIN, [SCONN_AUTH_XOAUTH2] = SMTPC_AUTH_XOAUTH2,
	};
	if (oc->p.auth_mech < sizeof(mechs) / sizeof(mechs[0]) && oc->secret) {
		cp.auth = mechs[oc->p.auth_mech];
		cp.auth_user = oc->p.auth_user ? oc->p.auth_user : "";
		cp.auth_secret = oc->secret;
		cp.auth_needs_tls = oc->auth_needs_tls;
	}
	smtp_client_init(&oc->cl, &cp);
	oc->client_ready = true;
	oc->tls_reported = false;
	oc->auth_reported = false;
	oc->tls_ver[0] = '\0';
	metric_add(&oc->w->m->send[oc->p.stats_id].connections, 1);
	enter(oc, OC_SESSION);
	if (!arm_recv(oc)) {
		lost(oc, "reply line too long");
		return;
	}
	run(oc);
}

static const char *why_text(int res, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s", res == 0 ? "connection closed by the next hop" : strerror(-res));
	return buf;
}

/* After an operation or a hold ended: a closing connection goes once
 * nothing is in flight, a switching one then moves to its next target.
 * true: the caller must leave oc alone. */
static bool settle(struct oconn *oc)
{
	if (oc->state == OC_CLOSING) {
		if (!oc->inflight)
			finalize(oc);
		return true;
	}
	if (oc->state != OC_SWITCHING)
		return false;
	if (!oc->inflight)
		switch_target(oc);
	return true;
}

/* Bytes received in the session: plaintext into in, or ciphertext for the
 * TLS layer (handshake records first, then replies read by run). */
static void on_received(struct oconn *oc, const char *at, size_t n)
{
	if (!oc->tls) {
		oc->in_len += n;
		run(oc);
		return;
	}
	if (!tls_input(oc->tls, at, n)) {
		lost(oc, strerror(ENOMEM));
		return;
	}
	if (oc->tls_phase == OC_TLS_HANDSHAKE)
		tls_step(oc);
	if (oc->state != OC_SESSION)
		return;
	/* A reply already waiting is read out of the TLS layer by run's
	 * NEED_INPUT; one that arrives while a send is in flight waits there
	 * for the send's completion. */
	run(oc);
}

void outconn_on_io(struct oconn *oc, const struct io_cqe *e)
{
	unsigned sub = io_cqe_sub(e);
	char why[200];
	oc->inflight--;
	if (sub == SUB_RECV)
		oc->in_busy = false;
	else if (sub == SUB_READ)
		oc->read_busy = false;
	else
		oc->out_busy = false;
	if (settle(oc))
		return;
	switch (sub) {
	case SUB_CONNECT:
		on_connected(oc, e->res);
		return;
	case SUB_SEND:
		if (e->res <= 0) {
			lost(oc, why_text(e->res, why, sizeof(why)));
			return;
		}
		oc->out_off += (size_t)e->res;
		if (oc->out_off == oc->out_len)
			wire_sent(oc);
		run(oc);
		return;
	case SUB_SENDFILE:
		if (e->res <= 0) {
			/* 0: the segment is shorter than the record said */
			lost(oc, e->res == 0 ? strerror(EIO) : strerror(-e->res));
			return;
		}
		body_sent(oc, (uint64_t)e->res);
		run(oc);
		return;
	case SUB_READ:
		if (e->res < 0 || (size_t)e->res != oc->rwant) {
			snprintf(why, sizeof(why), "spool read failed: %s",
				 e->res < 0 ? strerror(-e->res) : "short read");
			lost(oc, why);
			return;
		}
		oc->rlen = oc->rwant;
		run(oc);
		return;
	case SUB_RECV:
		if (oc->state == OC_IDLE) {
			/* The server spoke or closed while we had nothing to say:
			 * a 421 or an EOF; either way the connection is done. */
			outconn_close(oc);
			return;
		}
		if (e->res <= 0) {
			lost(oc, why_text(e->res, why, sizeof(why)));
			return;
		}
		/* Held while it runs: the session may close it under our feet,
		 * and the recv is re-armed after what it consumed. */
		oc->inflight++;
		on_received(oc, oc->recv_at, (size_t)e->res);
		oc->inflight--;
		if (!settle(oc) && oc->state == OC_SESSION && !arm_recv(oc))
			lost(oc, "reply line too long");
		return;
	}
}

static const char *ms_text(uint64_t ms, char *buf, size_t cap)
{
	if (ms % 60000 == 0)
		snprintf(buf, cap, "%llum", (unsigned long long)(ms / 60000));
	else if (ms % 1000 == 0)
		snprintf(buf, cap, "%llus", (unsigned long long)(ms / 1000));
	else
		snprintf(buf, cap, "%.1fs", (double)ms / 1000.0);
	return buf;
}

/* What the session's deadline was for, for the deferral and the log. */
static const char *timeout_reason(const struct oconn *oc, char *buf, size_t cap)
{
	static const char *const awaited[] = {
		[SMTPC_STAGE_CONNECT] = "reply", [SMTPC_STAGE_GREETING] = "greeting",
		[SMTPC_STAGE_EHLO] = "reply to EHLO", [SMTPC_STAGE_AUTH] = "reply to AUTH",
		[SMTPC_STAGE_MAIL] = "reply to MAIL", [SMTPC_STAGE_RCPT] = "reply to RCPT",
		[SMTPC_STAGE_DATA] = "reply to DATA", [SMTPC_STAGE_DOT] = "reply to the end of data",
		[SMTPC_STAGE_LOCAL] = "reply",
	};
	char d[32];
	bool txn = oc->txn_deadline && oc->w->now_ms >= oc->txn_deadline;
	if (txn && oc->body)
		snprintf(buf, cap,
			 "the message was not taken within %s (data_timeout + size / min_data_rate)",
			 ms_text(oc->txn_ms, d, sizeof(d)));
	else if (oc->body)
		snprintf(buf, cap, "the next hop took no data for %s",
			 ms_text(BODY_TIMEOUT_MS, d, sizeof(d)));
	else if (oc->out_busy && oc->out_sub == SUB_SEND)
		snprintf(buf, cap, "the next hop took no command for %s",
			 ms_text(oc->deadline_ms, d, sizeof(d)));
	else if (txn)
		snprintf(buf, cap,
			 "no complete reply to the end of data within %s of the message's start "
			 "(data_timeout + size / min_data_rate)",
			 ms_text(oc->txn_ms, d, sizeof(d)));
	else {
		unsigned st = (unsigned)smtp_client_stage(&oc->cl);
		snprintf(buf, cap, "no complete %s within %s",
			 awaited[st < sizeof(awaited) / sizeof(awaited[0]) ? st : 0],
			 ms_text(oc->deadline_ms, d, sizeof(d)));
	}
	return buf;
}

void outconn_tick(struct oconn *oc)
{
	if (!oc->deadline || oc->w->now_ms < oc->deadline)
		return;
	switch (oc->state) {
	case OC_CONNECTING: {
		char why[400];
		snprintf(why, sizeof(why), "%s: connection timed out", oc->remote);
		next_target(oc, "4.4.1", why);
		break;
	}
	case OC_IDLE:
		outconn_close(oc);
		break;
	case OC_SESSION: {
		char why[200];
		if (oc->tls_phase == OC_TLS_HANDSHAKE)
			tls_failed(oc, TLS_OUT_FAILED, "handshake timed out");
		else
			lost(oc, timeout_reason(oc, why, sizeof(why)));
		break;
	}
	case OC_SWITCHING:
	case OC_CLOSING:
	case OC_STATES_:
		break;
	}
}

void outconn_discard(struct oconn *oc)
{
	drop_socket(oc);
	oc_free(oc);
}

void outconn_loop_results(struct djob *j, const char *hostname)
{
	bool bounce = j->m && j->m->attempts + 1 >= OUTCONN_LOOP_ATTEMPTS;
	for (unsigned k = 0; k < j->n; k++) {
		const char *addr = j->crcpt ? j->crcpt[k].addr : NULL;
		const char *at = addr ? strrchr(addr, '@') : NULL;
		const char *dom = j->domain[0] ? j->domain : at ? at + 1 : hostname ? hostname : "";
		struct smtp_client_result *r = &j->res[k];
		r->code = bounce ? 554 : 451;
		snprintf(r->status, sizeof(r->status), "%s", bounce ? "5.4.6" : "4.4.6");
		snprintf(r->text, sizeof(r->text), "%d %s mail for %.255s loops back to myself", r->code,
			 r->status, dom);
		r->stage = SMTPC_STAGE_CONNECT;
	}
}
