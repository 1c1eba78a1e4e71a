/* One outbound SMTP connection (see outconn.h). Every socket operation goes
 * through the I/O interface, at most one each way at a time; a connection
 * that changes target or closes first lets its operations drain, so no
 * completion ever reaches a socket it was not meant for. */
#include "outconn.h"

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
#include "spool.h"

#define BODY_TIMEOUT_MS 180000  /* RFC 5321 4.5.3.2.5 (data block) */

enum { SUB_CONNECT, SUB_SEND, SUB_RECV, SUB_SENDFILE };

const char *const oc_state_names[OC_STATES_] = {
	[OC_CONNECTING] = "connecting", [OC_SESSION] = "session", [OC_IDLE] = "idle",
	[OC_SWITCHING] = "switching", [OC_CLOSING] = "closing",
};

static void run(struct oconn *oc);
static void next_target(struct oconn *oc, const char *why);

static uint64_t tag(const struct oconn *oc, unsigned sub)
{
	return io_tag_ptr(IO_OP_OUT, oc, sub);
}

static void set_deadline(struct oconn *oc, uint64_t ms)
{
	oc->deadline = ms ? oc->w->now_ms + ms : 0;
}

/* Every state change goes through here: the deadline each state has, and
 * one debug line per transition. */
static void enter(struct oconn *oc, enum oc_state s)
{
	log_msg(LOG_DEBUG, "event=outconn relay=%s from=%s to=%s", oc->remote,
		oc_state_names[oc->state], oc_state_names[s]);
	oc->state = s;
	switch (s) {
	case OC_CONNECTING:
		set_deadline(oc, oc->p.connect_timeout_ms);
		break;
	case OC_SESSION:
		set_deadline(oc, oc->client_ready ? smtp_client_timeout_ms(&oc->cl) : 0);
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
		smtp_client_free(&oc->cl);
		oc->client_ready = false;
	}
	oc->in_off = oc->in_len = 0;
	oc->out_len = 0;
	oc->body = false;
}

static void finalize(struct oconn *oc)
{
	drop_socket(oc);
	oc->ops->closed(oc);
	free(oc->t);
	free(oc);
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
	for (; oc->target < oc->nt; oc->target++) {
		const struct resolver_target *t = &oc->t[oc->target];
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
	snprintf(text, sizeof(text), "451 4.4.1 No next hop answered; last error: %.400s",
		 oc->last_error[0] ? oc->last_error : "none reachable");
	struct djob *j = oc->job;
	oc->job = NULL;
	if (j) {
		snprintf(j->remote, sizeof(j->remote), "%s", oc->remote);
		djob_result_all(j, 451, "4.4.1", text);
		oc->ops->job_done(oc, j);
	}
	oc->ops->unreachable(oc, 451, "4.4.1", text);
	enter(oc, OC_CLOSING);
	finalize(oc);
}

/* The current target is of no use (refused, timed out, greeting or EHLO
 * refused): on to the next one, as RFC 5321 5.1 asks, or give up. */
static void next_target(struct oconn *oc, const char *why)
{
	snprintf(oc->last_error, sizeof(oc->last_error), "%s", why);
	log_msg(LOG_INFO, "event=connect_failed send_connector=\"%s\" relay=%s error=\"%s\"",
		oc->p.connector, oc->remote, why);
	quiesce(oc);
	enter(oc, OC_SWITCHING);
	if (oc->inflight)
		return; /* resumed from the last completion */
	drop_socket(oc);
	oc->target++;
	if (!connect_next(oc))
		give_up(oc);
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
	oc->job = j;
	oc->state = OC_CONNECTING;
	snprintf(oc->remote, sizeof(oc->remote), "%s", "none");
	ops->opened(oc);
	if (!connect_next(oc))
		give_up(oc);
	return true;
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
	job_give_back(oc);
}

/* The connection broke or timed out. A job that has not started yet
 * tries the next target instead. */
static void lost(struct oconn *oc, const char *why)
{
	if (oc->state == OC_CLOSING || oc->state == OC_SWITCHING)
		return;
	if (oc->job && !oc->job_started) {
		next_target(oc, why);
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
 * buffer is compacted only here, with no recv in flight into it. false:
 * a reply line fills the whole buffer. */
static bool arm_recv(struct oconn *oc)
{
	if (oc->in_busy || oc->fd < 0)
		return true;
	if (oc->in_off) {
		memmove(oc->in, oc->in + oc->in_off, oc->in_len - oc->in_off);
		oc->in_len -= oc->in_off;
		oc->in_off = 0;
	}
	if (oc->in_len == sizeof(oc->in))
		return false;
	oc->in_busy = true;
	oc->inflight++;
	io_recv_into(oc->w->io, oc->fd, oc->in + oc->in_len, sizeof(oc->in) - oc->in_len,
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

/* The body's bytes went out: n of them, the end-of-data line's last. */
static void body_sent(struct oconn *oc, uint64_t n)
{
	uint64_t left = oc->job->m->len[oc->ext] - oc->ext_off;
	oc->ext_off += n < left ? n : left;
	if (n > left)
		oc->dot_off += (size_t)(n - left);
	/* RFC 5321 4.5.3.2.5: the timeout is per send of data, not for the
	 * whole body. */
	set_deadline(oc, BODY_TIMEOUT_MS);
}

static const char dot[] = ".\r\n";

/* Sends the stored message, the end-of-data line riding with its last
 * piece: at once while the socket and the page cache allow, then by a
 * submitted io_sendfile. false once all of it is sent; true when an
 * operation is under way or the connection was lost. */
static bool send_body(struct oconn *oc)
{
	const struct qmsg *m = oc->job->m;
	while (oc->ext < m->nchunks) {
		uint64_t left = m->len[oc->ext] - oc->ext_off;
		if (left == 0) {
			oc->ext++;
			oc->ext_off = 0;
			continue;
		}
		bool last = oc->ext + 1 == m->nchunks;
		const char *tail = last ? dot + oc->dot_off : NULL;
		size_t taillen = last ? 3 - oc->dot_off : 0;
		int seg = spool_seg_fd(m->seg);
		uint64_t off = m->off[oc->ext] + oc->ext_off;
		long n = io_try_sendfile(oc->w->io, oc->fd, seg, off, (size_t)left, tail, taillen);
		if (n > 0) {
			body_sent(oc, (uint64_t)n);
			continue;
		}
		if (n != -EAGAIN) {
			lost(oc, n == 0 ? "connection closed by the next hop" : strerror((int)-n));
			return true;
		}
		oc->out_busy = true;
		oc->out_sub = SUB_SENDFILE;
		oc->inflight++;
		io_sendfile(oc->w->io, oc->fd, seg, off, (size_t)left, tail, taillen,
			    tag(oc, SUB_SENDFILE));
		return true;
	}
	return false;
}

static void run(struct oconn *oc)
{
	for (;;) {
		if (oc->state != OC_SESSION || oc->out_busy)
			return;
		if (oc->out_len) {
			if (!send_now(oc))
				return;
			oc->out_len = 0;
			smtp_client_sent(&oc->cl);
			set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
			continue;
		}
		if (oc->body) {
			if (send_body(oc))
				return;
			oc->body = false;
			if (oc->dot_off < 3) {
				/* What did not ride with the body (an empty one, or
				 * a short send), like any command line. */
				oc->out = dot + oc->dot_off;
				oc->out_len = 3 - oc->dot_off;
				oc->out_off = 0;
				continue;
			}
			smtp_client_sent(&oc->cl);
			set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
			continue;
		}
		struct smtp_client_event ev;
		size_t used = smtp_client_feed(&oc->cl, oc->in + oc->in_off,
					       oc->in_len - oc->in_off, &ev);
		oc->in_off += used;
		switch (ev.type) {
		case SMTPC_EV_SEND:
			oc->out = ev.data;
			oc->out_len = ev.len;
			oc->out_off = 0;
			set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
			continue;
		case SMTPC_EV_SEND_BODY:
			oc->body = true;
			oc->ext = 0;
			oc->ext_off = 0;
			oc->dot_off = 0;
			set_deadline(oc, BODY_TIMEOUT_MS);
			continue;
		case SMTPC_EV_NEED_INPUT:
			set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
			if (!arm_recv(oc))
				lost(oc, "reply line too long");
			return;
		case SMTPC_EV_READY: {
			if (oc->job && !oc->job_started) {
				/* The job this connection was opened for. */
				job_start(oc, oc->job);
				continue;
			}
			struct djob *j = oc->ops->next_job(oc);
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
			job_finished(oc);
			continue;
		case SMTPC_EV_CLOSE:
			if (oc->job && !oc->job_started) {
				char why[600];
				snprintf(why, sizeof(why), "%s", oc->cl.session_error.text[0]
					 ? oc->cl.session_error.text : "session refused");
				next_target(oc, why);
				return;
			}
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
		next_target(oc, why);
		return;
	}
	struct smtp_client_params cp = {.helo_name = oc->p.helo};
	smtp_client_init(&oc->cl, &cp);
	oc->client_ready = true;
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
	if (!oc->inflight) {
		drop_socket(oc);
		oc->target++;
		if (!connect_next(oc))
			give_up(oc);
	}
	return true;
}

void outconn_on_io(struct oconn *oc, const struct io_cqe *e)
{
	unsigned sub = io_cqe_sub(e);
	char why[200];
	oc->inflight--;
	if (sub == SUB_RECV)
		oc->in_busy = false;
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
		if (oc->out_off == oc->out_len) {
			oc->out_len = 0;
			smtp_client_sent(&oc->cl);
			set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
		}
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
		oc->in_len += (size_t)e->res;
		/* Held while it runs: the session may close it under our feet,
		 * and the recv is re-armed after what it consumed. */
		oc->inflight++;
		run(oc);
		oc->inflight--;
		if (!settle(oc) && oc->state == OC_SESSION && !arm_recv(oc))
			lost(oc, "reply line too long");
		return;
	}
}

void outconn_tick(struct oconn *oc)
{
	if (!oc->deadline || oc->w->now_ms < oc->deadline)
		return;
	switch (oc->state) {
	case OC_CONNECTING: {
		char why[400];
		snprintf(why, sizeof(why), "%s: connection timed out", oc->remote);
		next_target(oc, why);
		break;
	}
	case OC_IDLE:
		outconn_close(oc);
		break;
	case OC_SESSION:
		lost(oc, "timed out waiting for the next hop");
		break;
	case OC_SWITCHING:
	case OC_CLOSING:
	case OC_STATES_:
		break;
	}
}

void outconn_discard(struct oconn *oc)
{
	drop_socket(oc);
	free(oc->t);
	free(oc);
}
