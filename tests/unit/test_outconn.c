/* Unit tests for one outbound SMTP connection (engine/outconn.c) against
 * scripted SMTP peers on loopback. A peer is a thread that runs a script
 * of reads and replies and keeps every byte it received; the test thread
 * plays the worker: a hand-built struct wctx, the message in a real spool
 * segment, owner callbacks that record what they are told, and a loop
 * handing IO_OP_OUT completions to outconn_on_io. Every scenario runs on
 * epoll and, where this process may set up a ring, on io_uring. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "io.h"
#include "job.h"
#include "log.h"
#include "metrics.h"
#include "outconn.h"
#include "spool.h"
#include "wctx.h"

#define TEST_ALARM_S 30        /* a hang ends the run, not the CI job */
#define PEER_WAIT_MS 10000     /* one step of a peer's script */
#define PEER_CONNS 4
#define DRIVE_TURNS 200000     /* io_wait calls one drive() may take */
#define WAIT_MS 5000           /* how long one drive() may take */
#define GUARD_SLOT 0xfffffe
#define RIG_PEERS 3
#define RIG_JOBS 4
#define RIG_SOCKS 6
#define TJOB_RCPTS 3
#define STATS_ID 3

static enum io_backend kind_epoll = IO_BACKEND_EPOLL;
static enum io_backend kind_uring = IO_BACKEND_URING;
static char log_path[128];

/* ---- scripted peers ------------------------------------------------- */

enum peer_op {
	P_END,
	P_ACCEPT,   /* take the next connection */
	P_SEND,     /* arg: bytes to send */
	P_UNTIL,    /* read until arg has arrived (after what was matched before) */
	P_EOF,      /* read until the client closes */
	P_SHUT_WR,  /* half-close: the client reads end of stream */
	P_RESET,    /* close with RST */
	P_WAIT_GO,  /* until the test calls peer_go() */
};

static const char *const peer_op_names[] = {
	[P_END] = "end", [P_ACCEPT] = "accept", [P_SEND] = "send", [P_UNTIL] = "until",
	[P_EOF] = "eof", [P_SHUT_WR] = "shut_wr", [P_RESET] = "reset", [P_WAIT_GO] = "wait_go",
};

struct step {
	enum peer_op op;
	const char *arg;
};

/* What one connection brought, NUL-terminated; mark: how far P_UNTIL
 * has matched. */
struct transcript {
	char *p;
	size_t len, cap, mark;
};

struct peer {
	pthread_t thread;
	bool joined;
	int lfd, cfd;
	uint16_t port;
	const struct step *script;
	int go[2], stop[2];
	struct transcript t[PEER_CONNS];
	unsigned nconn;
	char err[400];
};

/* Bound to 127.0.0.1 on a port of the kernel's choosing. */
static int tcp_bound(uint16_t *port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sin = {.sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	socklen_t sl = sizeof(sin);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	*port = ntohs(sin.sin_port);
	return fd;
}

/* NULL when fd is ready, else why not. */
static const char *peer_wait(struct peer *p, int fd, short events)
{
	struct pollfd pf[2] = {{.fd = fd, .events = events}, {.fd = p->stop[0], .events = POLLIN}};
	int n;
	do
		n = poll(pf, 2, PEER_WAIT_MS);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return strerror(errno);
	if (n == 0)
		return "timed out";
	if (pf[1].revents)
		return "stopped by the test";
	return NULL;
}

static struct transcript *cur(struct peer *p)
{
	return &p->t[p->nconn - 1];
}

/* One recv into the current transcript; *got = 0 at end of stream. */
static const char *peer_read(struct peer *p, size_t *got)
{
	struct transcript *t = cur(p);
	if (t->cap - t->len < 65536 + 1) {
		size_t cap = t->cap * 2 > t->len + 65536 + 1 ? t->cap * 2 : t->len + 65536 + 1;
		char *np = realloc(t->p, cap);
		if (!np)
			return "out of memory";
		t->p = np;
		t->cap = cap;
	}
	const char *e = peer_wait(p, p->cfd, POLLIN);
	if (e)
		return e;
	ssize_t n = recv(p->cfd, t->p + t->len, t->cap - t->len - 1, 0);
	if (n < 0)
		return strerror(errno);
	t->len += (size_t)n;
	t->p[t->len] = '\0';
	*got = (size_t)n;
	return NULL;
}

static const char *peer_step(struct peer *p, const struct step *s)
{
	if (s->op != P_ACCEPT && s->op != P_WAIT_GO && p->cfd < 0)
		return "no connection";
	const char *e;
	size_t got;
	switch (s->op) {
	case P_END:
		return NULL;
	case P_ACCEPT: {
		if (p->nconn == PEER_CONNS)
			return "too many connections";
		if ((e = peer_wait(p, p->lfd, POLLIN)))
			return e;
		int fd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			return strerror(errno);
		if (p->cfd >= 0)
			close(p->cfd);
		p->cfd = fd;
		struct transcript *t = &p->t[p->nconn++];
		t->cap = 4096;
		t->p = calloc(1, t->cap);
		return t->p ? NULL : "out of memory";
	}
	case P_SEND:
		for (size_t off = 0, n = strlen(s->arg); off < n;) {
			ssize_t w = send(p->cfd, s->arg + off, n - off, MSG_NOSIGNAL);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0)
				return strerror(errno);
			off += (size_t)w;
		}
		return NULL;
	case P_UNTIL: {
		struct transcript *t = cur(p);
		size_t alen = strlen(s->arg), from = t->mark;
		for (;;) {
			const char *hit = t->len - from >= alen
						  ? memmem(t->p + from, t->len - from, s->arg, alen)
						  : NULL;
			if (hit) {
				t->mark = (size_t)(hit - t->p) + alen;
				return NULL;
			}
			/* a match may straddle what is here and what comes */
			if (t->len + 1 > from + alen)
				from = t->len + 1 - alen;
			if ((e = peer_read(p, &got)))
				return e;
			if (!got)
				return "end of stream";
		}
	}
	case P_EOF:
		do
			if ((e = peer_read(p, &got)))
				return e;
		while (got);
		cur(p)->mark = cur(p)->len;
		return NULL;
	case P_SHUT_WR:
		return shutdown(p->cfd, SHUT_WR) < 0 ? strerror(errno) : NULL;
	case P_RESET: {
		struct linger lg = {.l_onoff = 1, .l_linger = 0};
		setsockopt(p->cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(p->cfd);
		p->cfd = -1;
		return NULL;
	}
	case P_WAIT_GO: {
		if ((e = peer_wait(p, p->go[0], POLLIN)))
			return e;
		char c;
		return read(p->go[0], &c, 1) == 1 ? NULL : "go pipe";
	}
	}
	return "unknown step";
}

/* Line ends made visible, for messages. */
static const char *visible(char *dst, size_t cap, const char *s)
{
	size_t n = 0;
	for (; s && *s && n + 5 < cap; s++) {
		if (*s == '\r' || *s == '\n') {
			dst[n++] = '\\';
			dst[n++] = *s == '\r' ? 'r' : 'n';
		} else {
			dst[n++] = *s;
		}
	}
	dst[n] = '\0';
	return dst;
}

static void *peer_main(void *arg)
{
	struct peer *p = arg;
	for (unsigned i = 0; p->script[i].op != P_END; i++) {
		const char *e = peer_step(p, &p->script[i]);
		if (e) {
			char a[120];
			snprintf(p->err, sizeof(p->err), "step %u (%s %s): %s", i,
				 peer_op_names[p->script[i].op], visible(a, sizeof(a), p->script[i].arg),
				 e);
			break;
		}
	}
	if (p->cfd >= 0)
		close(p->cfd);
	p->cfd = -1;
	return NULL;
}

/* What connection i brought ("" when there was none). */
static const char *peer_got(const struct peer *p, unsigned i)
{
	return i < p->nconn ? p->t[i].p : "";
}

static void peer_go(struct peer *p)
{
	assert_int_equal(write(p->go[1], "g", 1), 1);
}

/* Waits for the script's end (each of its steps is bounded). */
static void peer_join(struct peer *p)
{
	if (!p->joined)
		pthread_join(p->thread, NULL);
	p->joined = true;
}

static void peer_free(struct peer *p)
{
	ssize_t w = write(p->stop[1], "s", 1);
	(void)w;
	peer_join(p);
	close(p->lfd);
	for (int i = 0; i < 2; i++) {
		close(p->go[i]);
		close(p->stop[i]);
	}
	for (unsigned i = 0; i < p->nconn; i++)
		free(p->t[i].p);
	free(p);
}

/* ---- the rig: one worker's worth of context ------------------------- */

struct tjob;

struct rig {
	enum io_backend kind;
	struct io *io;
	struct wctx w;
	struct worker_metrics *m;
	uint64_t offset;              /* added to the clock: time a test lets pass */
	char dir[64];
	struct spool sp;
	bool sp_open;
	struct spool_worker sw;
	struct tjob *jobs[RIG_JOBS];
	unsigned njobs;
	struct peer *peers[RIG_PEERS];
	unsigned npeers;
	int socks[RIG_SOCKS];
	unsigned nsocks;
	char **strs;                  /* rig_str()'s, freed at teardown */
	unsigned nstrs;
	off_t log_from;
	uint32_t guard_gen;
	unsigned nout;                /* IO_OP_OUT completions */
	/* the owner, as the connection sees it */
	struct oconn *oc;             /* from opened() until closed() */
	char calls[512];              /* every callback, in order */
	struct djob *queue[RIG_JOBS]; /* next_job() hands these out in turn */
	unsigned nqueue, qnext;
	bool may_idle;
	unsigned ndone, nclosed, nunreachable, nestablished;
	int un_code;
	char un_status[12], un_text[512];
	enum oc_state closed_state;
	/* what a drive() waits for */
	struct spool_msg *wait_msg;
	/* a test's hook after each completion of the connection */
	void (*after_out)(struct rig *r);
	void (*before_out)(struct rig *r, const struct io_cqe *e);
	unsigned body_steps;          /* sendfile completions seen */
	unsigned hook_seen;           /* ... by the hook */
	bool go_given;                /* the hook let the peer read the body */
	struct peer *hook_peer;
	unsigned want_replies, want_lines; /* for reply_seen() */
};

static void rig_clock(struct rig *r)
{
	r->w.now_ms = wctx_clock_ms() + r->offset;
	r->w.wall_ms = wctx_wall_ms() + (int64_t)r->offset;
}

static const char *rig_str(struct rig *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static const char *rig_str(struct rig *r, const char *fmt, ...)
{
	char **ns = realloc(r->strs, (r->nstrs + 1) * sizeof(*ns));
	assert_non_null(ns);
	r->strs = ns;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&r->strs[r->nstrs], fmt, ap);
	va_end(ap);
	assert_true(n >= 0);
	return r->strs[r->nstrs++];
}

static int rig_sock(struct rig *r, int fd)
{
	assert_true(fd >= 0 && r->nsocks < RIG_SOCKS);
	r->socks[r->nsocks++] = fd;
	return fd;
}

static struct peer *peer_start(struct rig *r, const struct step *script)
{
	assert_true(r->npeers < RIG_PEERS);
	struct peer *p = calloc(1, sizeof(*p));
	assert_non_null(p);
	p->cfd = -1;
	p->script = script;
	p->lfd = tcp_bound(&p->port);
	assert_int_equal(listen(p->lfd, 16), 0);
	assert_int_equal(pipe2(p->go, O_CLOEXEC), 0);
	assert_int_equal(pipe2(p->stop, O_CLOEXEC), 0);
	assert_int_equal(pthread_create(&p->thread, NULL, peer_main, p), 0);
	r->peers[r->npeers++] = p;
	return p;
}

/* A port where nobody listens: connecting is refused. It stays bound, so
 * nothing else takes it while the test runs. */
static uint16_t refusing_port(struct rig *r)
{
	uint16_t port;
	rig_sock(r, tcp_bound(&port));
	return port;
}

/* A listener whose accept queue is full: the kernel drops further SYNs,
 * so a connect to it stays in flight. */
static uint16_t hanging_port(struct rig *r)
{
	uint16_t port;
	int lfd = rig_sock(r, tcp_bound(&port));
	assert_int_equal(listen(lfd, 0), 0);
	int filler = rig_sock(r, socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int ret = connect(filler, (struct sockaddr *)&sin, sizeof(sin));
	assert_true(ret == 0 || errno == EINPROGRESS);
	struct pollfd pf = {.fd = filler, .events = POLLOUT};
	assert_int_equal(poll(&pf, 1, 2000), 1);
	return port;
}

/* A listener nobody accepts from: tells whether anyone connected. */
static int quiet_listener(struct rig *r, uint16_t *port)
{
	int fd = rig_sock(r, tcp_bound(port));
	assert_int_equal(listen(fd, 4), 0);
	return fd;
}

static bool someone_connected(int lfd)
{
	struct pollfd pf = {.fd = lfd, .events = POLLIN};
	if (poll(&pf, 1, 0) != 1)
		return false;
	int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0)
		return false;
	close(c);
	return true;
}

static struct resolver_target target(uint16_t port)
{
	struct resolver_target t;
	memset(&t, 0, sizeof(t));
	snprintf(t.host, sizeof(t.host), "peer.test");
	struct sockaddr_in *sin = (struct sockaddr_in *)&t.addr;
	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	t.addrlen = sizeof(*sin);
	return t;
}

/* ---- the owner's callbacks: each one recorded ------------------------ */

static void note(struct rig *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void note(struct rig *r, const char *fmt, ...)
{
	size_t n = strlen(r->calls);
	if (n && n + 1 < sizeof(r->calls))
		r->calls[n++] = ' ';
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->calls + n, sizeof(r->calls) - n, fmt, ap);
	va_end(ap);
}

struct tjob {
	struct qmsg m;
	struct qrcpt qr[TJOB_RCPTS];
	struct djob j;
	unsigned idx[TJOB_RCPTS];
	struct smtp_client_rcpt crcpt[TJOB_RCPTS];
	struct smtp_client_result res[TJOB_RCPTS];
	struct spool_msg *sm;
	char *bytes;               /* the message as stored, to compare with */
	size_t nbytes;
};

static unsigned job_no(const struct rig *r, const struct djob *j)
{
	for (unsigned i = 0; i < r->njobs; i++)
		if (&r->jobs[i]->j == j)
			return i + 1;
	return 0;
}

static struct rig *rig_of(struct oconn *oc)
{
	return oc->owner;
}

static void cb_opened(struct oconn *oc)
{
	struct rig *r = rig_of(oc);
	r->oc = oc;
	note(r, "opened");
}

static struct djob *cb_next_job(struct oconn *oc)
{
	struct rig *r = rig_of(oc);
	struct djob *j = r->qnext < r->nqueue ? r->queue[r->qnext++] : NULL;
	if (j)
		note(r, "next(%u)", job_no(r, j));
	else
		note(r, "next(-)");
	return j;
}

static bool cb_may_idle(struct oconn *oc)
{
	struct rig *r = rig_of(oc);
	note(r, "idle?%d", r->may_idle);
	return r->may_idle;
}

static void cb_job_done(struct oconn *oc, struct djob *j)
{
	struct rig *r = rig_of(oc);
	r->ndone++;
	note(r, "done(%u)", job_no(r, j));
}

static void cb_unreachable(struct oconn *oc, int code, const char *status, const char *text)
{
	struct rig *r = rig_of(oc);
	r->nunreachable++;
	r->un_code = code;
	snprintf(r->un_status, sizeof(r->un_status), "%s", status);
	snprintf(r->un_text, sizeof(r->un_text), "%s", text);
	note(r, "unreachable(%d %s)", code, status);
}

static void cb_backoff(struct oconn *oc, const char *reply, bool credentials)
{
	note(rig_of(oc), "backoff(%s%s)", credentials ? "credentials: " : "", reply);
}

/* Counted, not noted: every session that gets to MAIL has one. */
static void cb_established(struct oconn *oc)
{
	rig_of(oc)->nestablished++;
}

static void cb_closed(struct oconn *oc)
{
	struct rig *r = rig_of(oc);
	r->closed_state = oc->state;
	r->oc = NULL;
	r->nclosed++;
	note(r, "closed");
}

static const struct outconn_ops test_ops = {
	.opened = cb_opened, .next_job = cb_next_job, .may_idle = cb_may_idle,
	.job_done = cb_job_done, .unreachable = cb_unreachable, .closed = cb_closed,
	.backoff = cb_backoff, .established = cb_established,
};

/* ---- the loop ----------------------------------------------------------- */

/* One completion, as worker.c routes it. true: it was the guard. */
static bool dispatch(struct rig *r, const struct io_cqe *e, uint64_t guard)
{
	switch (e->op) {
	case IO_OP_OUT: {
		struct oconn *oc = io_cqe_ptr(e);
		if (oc != r->oc)
			fail_msg("a completion for a connection that is gone (%p, live %p)", (void *)oc,
				 (void *)r->oc);
		bool body = oc->body;
		uint32_t ext = oc->ext;
		uint64_t ext_off = oc->ext_off;
		r->nout++;
		if (r->before_out)
			r->before_out(r, e);
		outconn_on_io(oc, e);
		if (body && r->oc == oc && (oc->ext != ext || oc->ext_off != ext_off))
			r->body_steps++;
		if (r->after_out)
			r->after_out(r);
		return false;
	}
	case IO_OP_SPOOL_WRITE: {
		int bid;
		spool_write_done(&r->sw, io_cqe_ptr(e), e->res, &bid);
		assert_int_equal(bid, -1);
		return false;
	}
	case IO_OP_TICK:
		return e->tag == guard;
	default:
		return false;
	}
}

typedef bool (*rig_cond)(struct rig *r);

/* Runs the loop until cond holds (true) or limit_ms have passed (false). */
static bool drive(struct rig *r, rig_cond cond, uint64_t limit_ms)
{
	if (cond(r))
		return true;
	uint64_t guard = io_tag(IO_OP_TICK, GUARD_SLOT, ++r->guard_gen);
	io_timeout(r->io, limit_ms, guard);
	bool expired = false;
	for (unsigned turn = 0; turn < DRIVE_TURNS && !expired; turn++) {
		struct io_cqe ev[32];
		int n = io_wait(r->io, ev, 32);
		if (n < 0)
			fail_msg("io_wait: %s", strerror(-n));
		rig_clock(r);
		for (int k = 0; k < n; k++)
			expired |= dispatch(r, &ev[k], guard);
		if (cond(r)) {
			if (!expired)
				io_cancel(r->io, guard);
			return true;
		}
	}
	if (!expired)
		io_cancel(r->io, guard);
	return false;
}

/* A tick at a given time: deadlines are tested at their edge, whatever
 * the real clock did meanwhile. */
static void tick_at(struct rig *r, uint64_t now_ms)
{
	r->w.now_ms = now_ms;
	outconn_tick(r->oc);
}

static bool is_closed(struct rig *r)
{
	return r->nclosed > 0;
}

static bool is_idle(struct rig *r)
{
	return r->oc && r->oc->state == OC_IDLE;
}

static bool is_session(struct rig *r)
{
	return r->oc && r->oc->state == OC_SESSION;
}

static bool is_written(struct rig *r)
{
	return spool_msg_written(r->wait_msg);
}

static bool never(struct rig *r)
{
	(void)r;
	return false;
}

/* ---- messages and jobs ------------------------------------------------ */

struct rcpt_spec {
	const char *addr;
	unsigned notify;
	const char *orcpt;
};

struct msg_spec {
	const char *from;
	enum smtp_body body;
	enum smtp_ret ret;
	const char *envid;
	unsigned nrcpt;
	struct rcpt_spec rcpt[TJOB_RCPTS];
};

/* The message's bytes go into the spool as a session would put them
 * (wire form, in chunks); the queued message and the delivery attempt are
 * then built as queue.c's job_new/job_add/start_attempt build them. */
static struct tjob *job_new(struct rig *r, const struct msg_spec *s, const struct iovec *chunks,
			    unsigned nchunks)
{
	assert_true(r->njobs < RIG_JOBS && s->nrcpt <= TJOB_RCPTS);
	struct tjob *t = calloc(1, sizeof(*t));
	assert_non_null(t);
	r->jobs[r->njobs++] = t;
	uint64_t id = wctx_next_msgid(&r->w);
	int err = 0;
	t->sm = spool_msg_begin(&r->sw, id, &err);
	if (!t->sm)
		fail_msg("spool_msg_begin: %s", strerror(err));
	size_t total = 0;
	for (unsigned i = 0; i < nchunks; i++)
		total += chunks[i].iov_len;
	t->bytes = malloc(total + 1);
	assert_non_null(t->bytes);
	for (unsigned i = 0; i < nchunks; i++) {
		assert_true(spool_msg_append(&r->sw, t->sm, chunks[i].iov_base, chunks[i].iov_len, -1));
		memcpy(t->bytes + t->nbytes, chunks[i].iov_base, chunks[i].iov_len);
		t->nbytes += chunks[i].iov_len;
	}
	t->bytes[t->nbytes] = '\0';
	struct smtp_rcpt er[TJOB_RCPTS];
	for (unsigned i = 0; i < s->nrcpt; i++)
		er[i] = (struct smtp_rcpt){.addr = (char *)s->rcpt[i].addr,
					   .orcpt = (char *)s->rcpt[i].orcpt,
					   .notify = s->rcpt[i].notify};
	struct smtp_envelope env = {.from = (char *)s->from, .body = s->body, .ret = s->ret,
				    .envid = (char *)s->envid, .rcpt = er, .nrcpt = s->nrcpt,
				    .rcpt_cap = s->nrcpt};
	wctx_msgid_text(id, t->m.idtxt);
	assert_true(spool_msg_commit_envelope(&r->sw, t->sm, t->m.idtxt, &env, "test-rc",
					      "127.0.0.1", "client.test", r->w.wall_ms / 1000));
	r->wait_msg = t->sm;
	if (!drive(r, is_written, WAIT_MS))
		fail_msg("the spool writes of message %s did not complete", t->m.idtxt);
	CHECK_INT("spool", spool_msg_error(t->sm), 0);
	CHECK_INT("spool", t->sm->bytes, total);

	struct qmsg *m = &t->m;
	m->id = id;
	m->seg = t->sm->seg;
	m->nchunks = t->sm->chunks;
	m->off = t->sm->off;
	m->len = t->sm->len;
	m->bytes = t->sm->bytes;
	m->from = (char *)s->from;
	m->envid = (char *)s->envid;
	m->body = (uint8_t)s->body;
	m->ret = (uint8_t)s->ret;
	m->arrival_ms = r->w.wall_ms;
	m->arrival = m->arrival_ms / 1000;
	m->nrcpt = m->pending = s->nrcpt;
	m->r = t->qr;
	m->heap = SIZE_MAX;
	for (unsigned i = 0; i < s->nrcpt; i++)
		t->qr[i] = (struct qrcpt){.addr = (char *)s->rcpt[i].addr,
					  .orcpt = (char *)s->rcpt[i].orcpt,
					  .notify = (uint8_t)s->rcpt[i].notify,
					  .state = SPOOL_RCPT_PENDING};

	struct djob *j = &t->j;
	j->m = m;
	j->n = j->cap = s->nrcpt;
	j->idx = t->idx;
	j->crcpt = t->crcpt;
	j->res = t->res;
	for (unsigned i = 0; i < s->nrcpt; i++) {
		t->idx[i] = i;
		t->crcpt[i] = (struct smtp_client_rcpt){
			.addr = t->qr[i].addr, .notify = t->qr[i].notify, .orcpt = t->qr[i].orcpt};
	}
	j->cmsg = (struct smtp_client_msg){
		.from = m->from, .size = m->bytes, .body = m->body, .ret = m->ret,
		.envid = m->envid, .smtputf8 = m->smtputf8, .rcpt = j->crcpt, .nrcpt = j->n,
	};
	return t;
}

/* Wire form as stored: dot-stuffed lines (".." for a line that began with
 * a dot), in three chunks so the body crosses record headers. */
static const char *const body_parts[] = {
	"Received: from client.test\r\nSubject: outconn test\r\n\r\n",
	"..a line that began with a dot\r\n...\r\n",
	"last line\r\n",
};

static const struct msg_spec two_rcpts = {
	.from = "sender@src.test", .body = SMTP_BODY_8BITMIME, .nrcpt = 2,
	.rcpt = {{"a@dst.test"}, {"b@dst.test"}},
};

static struct tjob *job_std(struct rig *r, const struct msg_spec *s)
{
	struct iovec iov[N_ELEMS(body_parts)];
	for (size_t i = 0; i < N_ELEMS(body_parts); i++)
		iov[i] = (struct iovec){(void *)body_parts[i], strlen(body_parts[i])};
	return job_new(r, s, iov, N_ELEMS(body_parts));
}

/* n bytes of text lines, none beginning with a dot. */
static struct tjob *job_big(struct rig *r, const struct msg_spec *s, size_t n)
{
	char *buf = malloc(n);
	assert_non_null(buf);
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)('a' + i % 26);
	for (size_t i = 78; i + 1 < n; i += 80) {
		buf[i] = '\r';
		buf[i + 1] = '\n';
	}
	buf[n - 2] = '\r';
	buf[n - 1] = '\n';
	struct iovec iov[8];
	size_t piece = n / 8;
	for (unsigned i = 0; i < 8; i++)
		iov[i] = (struct iovec){buf + i * piece, i == 7 ? n - 7 * piece : piece};
	struct tjob *t = job_new(r, s, iov, 8);
	free(buf);
	return t;
}

/* As the send connector's defaults have them (command and data
 * timeouts: the client's own defaults, 5 and 10 min). */
static struct oconn_params params(void)
{
	return (struct oconn_params){
		.helo = "relay.test", .connect_timeout_ms = 30000, .idle_timeout_ms = 5000,
		.min_data_rate = 4096, .connector = "test-sc", .stats_id = STATS_ID,
	};
}

/* prefs: MX preferences (then p.mx), or NULL for smart hosts. */
static void conn_open_prefs(struct rig *r, struct oconn_params p, struct tjob *t,
			    const uint16_t *ports, const unsigned *prefs, unsigned n)
{
	struct resolver_target tg[4];
	assert_true(n <= 4);
	for (unsigned i = 0; i < n; i++) {
		tg[i] = target(ports[i]);
		tg[i].pref = prefs ? prefs[i] : 0;
	}
	p.targets = tg;
	p.ntargets = n;
	p.mx = prefs != NULL;
	rig_clock(r);
	assert_true(outconn_open(&r->w, &test_ops, r, &p, t ? &t->j : NULL));
}

static void conn_open(struct rig *r, struct oconn_params p, struct tjob *t, const uint16_t *ports,
		      unsigned n)
{
	conn_open_prefs(r, p, t, ports, NULL, n);
}

/* ---- what the tests compare -------------------------------------------- */

static void check_result(const char *what, const struct tjob *t, unsigned k, int code,
			 const char *status, const char *text, enum smtp_client_stage stage)
{
	char name[200];
	snprintf(name, sizeof(name), "%s: rcpt %u <%s>", what, k, t->crcpt[k].addr);
	CHECK_INT(name, t->res[k].code, code);
	CHECK_STR(name, t->res[k].status, status);
	CHECK_STR(name, t->res[k].text, text);
	CHECK_INT(name, t->res[k].stage, stage);
}

static void check_all(const char *what, const struct tjob *t, int code, const char *status,
		      const char *text, enum smtp_client_stage stage)
{
	for (unsigned k = 0; k < t->j.n; k++)
		check_result(what, t, k, code, status, text, stage);
}

/* This test's log lines of one event, without their ts= and level=. */
static const char *log_lines(struct rig *r, const char *event)
{
	FILE *f = fopen(log_path, "r");
	assert_non_null(f);
	assert_int_equal(fseeko(f, r->log_from, SEEK_SET), 0);
	char *out = NULL;
	size_t outlen = 0;
	FILE *o = open_memstream(&out, &outlen);
	assert_non_null(o);
	char line[4096];
	while (fgets(line, sizeof(line), f)) {
		if (!strstr(line, event))
			continue;
		const char *lv = strstr(line, " level=");
		const char *rest = lv ? strchr(lv + 1, ' ') : NULL;
		fputs(rest ? rest + 1 : line, o);
	}
	fclose(f);
	fclose(o);
	const char *s = rig_str(r, "%s", out);
	free(out);
	return s;
}

static const char *connect_failed(struct rig *r, uint16_t port, const char *error)
{
	return rig_str(r, "event=connect_failed send_connector=\"test-sc\" relay=[127.0.0.1]:%u "
			  "error=\"%s\"\n", port, error);
}

static const char *remote(struct rig *r, uint16_t port)
{
	return rig_str(r, "[127.0.0.1]:%u", port);
}

#define EHLO "EHLO relay.test\r\n"
#define QUIT "QUIT\r\n"

/* MAIL, RCPTs and DATA as sent pipelined to a server offering SIZE and
 * 8BITMIME, then the body as stored and the end of data. */
static const char *wire_txn(struct rig *r, const struct tjob *t)
{
	const char *s = rig_str(r, "MAIL FROM:<%s> SIZE=%llu BODY=8BITMIME\r\n", t->m.from,
				(unsigned long long)t->m.bytes);
	for (unsigned k = 0; k < t->j.n; k++)
		s = rig_str(r, "%sRCPT TO:<%s>\r\n", s, t->crcpt[k].addr);
	return rig_str(r, "%sDATA\r\n%s.\r\n", s, t->bytes);
}

static void peer_ok(struct peer *p)
{
	peer_join(p);
	CHECK_STR("peer script", p->err, "");
}

static uint64_t connections(const struct rig *r)
{
	return metric_get(&r->m->send[STATS_ID].connections);
}

/* The peer's lines. */
#define GREET {P_ACCEPT, NULL}, {P_SEND, "220 peer.test ESMTP\r\n"}
#define EHLO_PIPELINING                                                          \
	{P_UNTIL, "\r\n"},                                                       \
	{P_SEND, "250-peer.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"}
#define TXN_OK                                                                   \
	{P_UNTIL, "DATA\r\n"},                                                   \
	{P_SEND, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"              \
		 "354 End data with <CR><LF>.<CR><LF>\r\n"},                      \
	{P_UNTIL, "\r\n.\r\n"}, {P_SEND, "250 2.0.0 Ok: queued as 4711\r\n"}
#define QUIT_OK {P_UNTIL, "QUIT\r\n"}, {P_SEND, "221 2.0.0 Bye\r\n"}, {P_EOF, NULL}
#define OK_TEXT "250 2.0.0 Ok: queued as 4711"

static const struct step script_delivery[] = {GREET, EHLO_PIPELINING, TXN_OK, QUIT_OK, {P_END, NULL}};

/* ---- setup ------------------------------------------------------------ */

static int rig_setup(void **state)
{
	alarm(TEST_ALARM_S);
	struct rig *r = calloc(1, sizeof(*r));
	if (!r)
		return -1;
	r->kind = *(enum io_backend *)*state;
	char err[256] = "";
	r->io = io_open(r->kind, &(struct io_params){.entries = 64, .nbufs = 8, .bufsz = 4096},
			err, sizeof(err));
	r->m = calloc(1, sizeof(*r->m));
	snprintf(r->dir, sizeof(r->dir), "/tmp/postern-outconn-XXXXXX");
	if (!r->io || !r->m || !mkdtemp(r->dir)) {
		print_error("setup: %s\n", r->io ? strerror(errno) : err);
		if (r->io)
			io_close(r->io);
		free(r->m);
		free(r);
		return -1;
	}
	if (spool_open(&r->sp, r->dir, 1 << 20, err, sizeof(err)) != 0) {
		print_error("spool_open: %s\n", err);
		return -1;
	}
	r->sp_open = true;
	spool_worker_init(&r->sw, &r->sp, r->io, NULL, NULL);
	r->w = (struct wctx){.id = 1, .nworkers = 1, .io = r->io, .m = r->m,
			     .spool = &r->sw};
	rig_clock(r);
	struct stat st;
	r->log_from = stat(log_path, &st) == 0 ? st.st_size : 0;
	*state = r;
	return 0;
}

static int rig_teardown(void **state)
{
	struct rig *r = *state;
	if (r->oc) {
		/* a test that failed half way: close it as the owner would */
		r->after_out = NULL;
		r->before_out = NULL;
		outconn_close(r->oc);
		drive(r, is_closed, 2000);
	}
	for (unsigned i = 0; i < r->npeers; i++)
		peer_free(r->peers[i]);
	if (r->oc) {
		io_close(r->io);
		r->io = NULL;
		outconn_discard(r->oc);
	}
	for (unsigned i = 0; i < r->njobs; i++) {
		spool_msg_release(&r->sw, r->jobs[i]->sm);
		free(r->jobs[i]->bytes);
		free(r->jobs[i]);
	}
	spool_worker_free(&r->sw);
	if (r->sp_open)
		spool_close(&r->sp);
	if (r->io)
		io_close(r->io);
	for (unsigned i = 0; i < r->nsocks; i++)
		close(r->socks[i]);
	for (unsigned i = 0; i < r->nstrs; i++)
		free(r->strs[i]);
	free(r->strs);
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", r->dir);
	int rc = system(cmd);
	free(r->m);
	free(r);
	alarm(0);
	return rc != 0;
}

/* ---- scenarios -------------------------------------------------------- */

/* (a) Greeting, EHLO with PIPELINING, SIZE and 8BITMIME, one pipelined
 * MAIL/RCPT/DATA, the body byte for byte as stored, 250, then nothing
 * more to do: QUIT. */
static void test_delivery(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	struct peer *p = peer_start(r, script_delivery);
	conn_open(r, params(), t, &p->port, 1);
	CHECK_INT("after open", r->oc->state, OC_CONNECTING);
	CHECK_INT("after open", r->oc->deadline, r->w.now_ms + 30000);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	CHECK_INT("connections", p->nconn, 1);
	CHECK_STR("bytes the peer got", peer_got(p, 0), rig_str(r, EHLO "%s" QUIT, wire_txn(r, t)));
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?0 closed");
	check_all("delivered", t, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
	CHECK_STR("job remote", t->j.remote, remote(r, p->port));
	CHECK_INT("dsn passed", t->j.dsn_passed, false);
	CHECK_INT("not attempted", t->j.not_attempted, false);
	CHECK_INT("state at close", r->closed_state, OC_CLOSING);
	CHECK_INT("connections counted", connections(r), 1);
	CHECK_STR("log", log_lines(r, "event=connect_failed"), "");
}

/* A next hop offering CHUNKING gets a dotless message as one BDAT LAST:
 * the envelope pipelined, then "BDAT <size> LAST" and the stored bytes
 * as they lie, with no end-of-data line; its reply is the message's. */
static void test_delivery_bdat(void **state)
{
	struct rig *r = *state;
	static const char *const parts[] = {
		"Received: from client.test\r\nSubject: chunked\r\n\r\n",
		"a line\r\n", "last line\r\n",
	};
	struct iovec iov[N_ELEMS(parts)];
	for (size_t i = 0; i < N_ELEMS(parts); i++)
		iov[i] = (struct iovec){(void *)parts[i], strlen(parts[i])};
	struct tjob *t = job_new(r, &two_rcpts, iov, N_ELEMS(parts));
	t->j.cmsg.dotless = true;
	static const struct step script[] = {
		GREET, {P_UNTIL, "\r\n"},
		{P_SEND, "250-peer.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n"},
		{P_UNTIL, "RCPT TO:<b@dst.test>\r\n"},
		{P_SEND, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"},
		{P_UNTIL, "last line\r\n"}, {P_SEND, "250 2.0.0 Ok: queued as 4711\r\n"},
		QUIT_OK, {P_END, NULL}};
	struct peer *p = peer_start(r, script);
	conn_open(r, params(), t, &p->port, 1);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	const char *env = rig_str(r, "MAIL FROM:<%s> SIZE=%llu BODY=8BITMIME\r\n"
				  "RCPT TO:<a@dst.test>\r\nRCPT TO:<b@dst.test>\r\n",
				  t->m.from, (unsigned long long)t->m.bytes);
	CHECK_STR("bytes the peer got", peer_got(p, 0),
		  rig_str(r, EHLO "%sBDAT %llu LAST\r\n%s" QUIT, env,
			  (unsigned long long)t->m.bytes, t->bytes));
	check_all("delivered", t, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
}

/* (b) One recipient refused, one taken: per-recipient results, the body
 * still goes. Without PIPELINING (one command at a time), with DSN (so
 * RET, ENVID, NOTIFY and ORCPT go on the wire). */
static void test_rcpt_refused(void **state)
{
	struct rig *r = *state;
	static const struct msg_spec s = {
		.from = "sender@src.test", .ret = SMTP_RET_HDRS, .envid = "ENV+2D1", .nrcpt = 2,
		.rcpt = {{"bad@dst.test", SMTP_NOTIFY_FAILURE, "rfc822;bad@dst.test"},
			 {"good@dst.test", SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_DELAY, NULL}},
	};
	struct tjob *t = job_std(r, &s);
	static const struct step script[] = {
		GREET,
		{P_UNTIL, "\r\n"}, {P_SEND, "250-peer.test\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n"},
		{P_UNTIL, "\r\n"}, {P_SEND, "250 2.1.0 Ok\r\n"},
		{P_UNTIL, "\r\n"}, {P_SEND, "550 5.1.1 <bad@dst.test>: Recipient address rejected\r\n"},
		{P_UNTIL, "\r\n"}, {P_SEND, "250 2.1.5 Ok\r\n"},
		{P_UNTIL, "DATA\r\n"}, {P_SEND, "354 go ahead\r\n"},
		{P_UNTIL, "\r\n.\r\n"}, {P_SEND, "250 2.0.0 Ok: queued as 4712\r\n"},
		QUIT_OK, {P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	conn_open(r, params(), t, &p->port, 1);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	CHECK_STR("bytes the peer got", peer_got(p, 0),
		  rig_str(r, EHLO "MAIL FROM:<sender@src.test> RET=HDRS ENVID=ENV+2D1\r\n"
			     "RCPT TO:<bad@dst.test> NOTIFY=FAILURE ORCPT=rfc822;bad@dst.test\r\n"
			     "RCPT TO:<good@dst.test> NOTIFY=SUCCESS,DELAY\r\n"
			     "DATA\r\n%s.\r\n" QUIT, t->bytes));
	CHECK_STR("callbacks", r->calls, "opened done(1) next(-) idle?0 closed");
	check_result("refused", t, 0, 550, "5.1.1",
		     "550 5.1.1 <bad@dst.test>: Recipient address rejected", SMTPC_STAGE_RCPT);
	check_result("taken", t, 1, 250, "2.0.0", "250 2.0.0 Ok: queued as 4712", SMTPC_STAGE_DOT);
	CHECK_INT("dsn passed", t->j.dsn_passed, true);
}

/* (b) The same over PIPELINING: the replies come in one burst. */
static void test_rcpt_refused_pipelined(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step script[] = {
		GREET, EHLO_PIPELINING,
		{P_UNTIL, "DATA\r\n"},
		{P_SEND, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.7.1 <b@dst.test>: Relay access denied\r\n"
			 "354 go ahead\r\n"},
		{P_UNTIL, "\r\n.\r\n"}, {P_SEND, "250 2.0.0 Ok: queued as 4713\r\n"},
		QUIT_OK, {P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	conn_open(r, params(), t, &p->port, 1);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	CHECK_STR("bytes the peer got", peer_got(p, 0), rig_str(r, EHLO "%s" QUIT, wire_txn(r, t)));
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?0 closed");
	check_result("taken", t, 0, 250, "2.0.0", "250 2.0.0 Ok: queued as 4713", SMTPC_STAGE_DOT);
	check_result("refused", t, 1, 550, "5.7.1", "550 5.7.1 <b@dst.test>: Relay access denied",
		     SMTPC_STAGE_RCPT);
}

/* (c) The first target refuses the connection: logged, and the job goes
 * through the second. */
static void test_refused_then_next(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	struct peer *p = peer_start(r, script_delivery);
	uint16_t ports[2] = {refusing_port(r), p->port};
	conn_open(r, params(), t, ports, 2);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	CHECK_STR("bytes the peer got", peer_got(p, 0), rig_str(r, EHLO "%s" QUIT, wire_txn(r, t)));
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?0 closed");
	check_all("delivered", t, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
	CHECK_STR("job remote", t->j.remote, remote(r, p->port));
	CHECK_STR("log", log_lines(r, "event=connect_failed"),
		  connect_failed(r, ports[0], rig_str(r, "[127.0.0.1]:%u: Connection refused",
						      ports[0])));
	CHECK_INT("connections counted", connections(r), 1);
}

/* (d) Every target refuses: the job gets 451 4.4.1 with the last error,
 * the owner hears the destination is unreachable, the connection goes. */
static void test_all_refused(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	uint16_t ports[2] = {refusing_port(r), refusing_port(r)};
	conn_open(r, params(), t, ports, 2);
	assert_true(drive(r, is_closed, WAIT_MS));
	const char *text = rig_str(r, "451 4.4.1 No next hop answered; last error: "
				      "[127.0.0.1]:%u: Connection refused", ports[1]);
	CHECK_STR("callbacks", r->calls, "opened done(1) unreachable(451 4.4.1) closed");
	check_all("unreachable", t, 451, "4.4.1", text, SMTPC_STAGE_CONNECT);
	CHECK_INT("unreachable", r->un_code, 451);
	CHECK_STR("unreachable", r->un_status, "4.4.1");
	CHECK_STR("unreachable", r->un_text, text);
	CHECK_STR("job remote", t->j.remote, remote(r, ports[1]));
	CHECK_STR("log", log_lines(r, "event=connect_failed"),
		  rig_str(r, "%s%s",
			  connect_failed(r, ports[0], rig_str(r, "[127.0.0.1]:%u: Connection refused",
							      ports[0])),
			  connect_failed(r, ports[1], rig_str(r, "[127.0.0.1]:%u: Connection refused",
							      ports[1]))));
	CHECK_INT("connections counted", connections(r), 0);
}

/* (e) A 554 greeting: that server takes no mail, the next one is tried
 * (RFC 5321 5.1). Nothing is sent to the first: smtp_client ends the
 * session on a refused greeting without QUIT. */
static void test_greeting_554(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step refuser[] = {
		{P_ACCEPT, NULL}, {P_SEND, "554 5.7.1 peer1 takes no mail\r\n"}, {P_EOF, NULL}, {P_END, NULL}};
	struct peer *p1 = peer_start(r, refuser);
	struct peer *p2 = peer_start(r, script_delivery);
	uint16_t ports[2] = {p1->port, p2->port};
	conn_open(r, params(), t, ports, 2);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p1);
	peer_ok(p2);
	CHECK_STR("bytes the first peer got", peer_got(p1, 0), "");
	CHECK_STR("bytes the second peer got", peer_got(p2, 0),
		  rig_str(r, EHLO "%s" QUIT, wire_txn(r, t)));
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?0 closed");
	check_all("delivered", t, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
	CHECK_STR("job remote", t->j.remote, remote(r, p2->port));
	CHECK_STR("log", log_lines(r, "event=connect_failed"),
		  connect_failed(r, p1->port, "554 5.7.1 peer1 takes no mail"));
	CHECK_INT("connections counted", connections(r), 2);
}

/* (f) The peer half-closes right after its 354: sending stops wherever
 * the end of stream is seen, 451 4.4.2 for every recipient (their RCPT
 * 250s were provisional), no QUIT. */
static void test_closed_mid_data(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step script[] = {
		GREET, EHLO_PIPELINING,
		{P_UNTIL, "DATA\r\n"},
		{P_SEND, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n"},
		{P_SHUT_WR, NULL}, {P_EOF, NULL}, {P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	conn_open(r, params(), t, &p->port, 1);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	/* The recv is armed all through the session, so the end of stream
	 * may be seen before, during or after the body (it goes out in three
	 * pieces): the peer got the commands, then a prefix of the rest,
	 * never anything else. */
	const char *got = peer_got(p, 0);
	const char *all = rig_str(r, EHLO "%s", wire_txn(r, t));
	const char *cmds_end = strstr(all, "DATA\r\n");
	assert_non_null(cmds_end);
	size_t cmds = (size_t)(cmds_end - all) + 6;
	if (strlen(got) < cmds || strncmp(got, all, strlen(got)) != 0)
		CHECK_STR("bytes the peer got", got, all);
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) closed");
	check_all("lost", t, 451, "4.4.2",
		  rig_str(r, "451 4.4.2 [127.0.0.1]:%u: connection closed by the next hop", p->port),
		  SMTPC_STAGE_CONNECT);
	CHECK_STR("job remote", t->j.remote, remote(r, p->port));
}

/* (f) The peer resets the connection after its 354 while a 1 MB body is
 * on its way: whichever operation meets the reset, 451 4.4.2. */
static void test_reset_mid_data(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_big(r, &two_rcpts, 1 << 20);
	static const struct step script[] = {
		GREET, EHLO_PIPELINING,
		{P_UNTIL, "DATA\r\n"},
		{P_SEND, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n"},
		{P_RESET, NULL}, {P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	conn_open(r, params(), t, &p->port, 1);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	const char *head = rig_str(r, EHLO "MAIL FROM:<sender@src.test> SIZE=%u BODY=8BITMIME\r\n"
					   "RCPT TO:<a@dst.test>\r\nRCPT TO:<b@dst.test>\r\nDATA\r\n",
				   1u << 20);
	assert_true(p->nconn == 1);
	if (strncmp(peer_got(p, 0), head, strlen(head)) != 0)
		fail_msg("the peer got \"%.300s\"", peer_got(p, 0));
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) closed");
	const char *why[] = {"Connection reset by peer", "Broken pipe",
			     "connection closed by the next hop"};
	for (unsigned k = 0; k < t->j.n; k++) {
		CHECK_INT("reset", t->res[k].code, 451);
		CHECK_STR("reset", t->res[k].status, "4.4.2");
		CHECK_INT("reset", t->res[k].stage, SMTPC_STAGE_CONNECT);
		bool known = false;
		for (size_t i = 0; i < N_ELEMS(why); i++)
			known |= strcmp(t->res[k].text,
					rig_str(r, "451 4.4.2 [127.0.0.1]:%u: %s", p->port, why[i])) == 0;
		if (!known)
			fail_msg("rcpt %u: unexpected text \"%s\"", k, t->res[k].text);
	}
}

/* Runs the peer's script for t1 with t2 queued behind it: both go on one
 * connection, both are delivered (250 ... 4711, then 4714). */
/* The second transaction on the wire, by DATA (dot-stuffed second) or as
 * one BDAT LAST. */
static const char *second_txn(struct rig *r, const char *second, bool bdat)
{
	size_t n = strlen(second);
	return bdat ? rig_str(r, "MAIL FROM:<> SIZE=%zu BODY=7BIT\r\nRCPT TO:<c@dst.test>\r\n"
				 "BDAT %zu LAST\r\n%s", n, n, second)
		    : rig_str(r, "MAIL FROM:<> SIZE=%zu BODY=7BIT\r\nRCPT TO:<c@dst.test>\r\n"
				 "DATA\r\n%s.\r\n", n, second);
}

/* Runs the peer's script for t1 with t2 queued behind it: both go on one
 * connection (the second as txn, the owner's calls as calls), both are
 * delivered (250 ... 4711, then 4714). */
static struct peer *two_on_one(struct rig *r, const struct step *script, struct tjob *t1,
			       struct tjob *t2, const char *txn, const char *calls)
{
	struct peer *p = peer_start(r, script);
	conn_open(r, params(), t1, &p->port, 1);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	CHECK_INT("connections", p->nconn, 1);
	CHECK_STR("bytes the peer got", peer_got(p, 0),
		  rig_str(r, EHLO "%s%s" QUIT, wire_txn(r, t1), txn));
	CHECK_STR("callbacks", r->calls, calls);
	check_all("first", t1, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
	check_all("second", t2, 250, "2.0.0", "250 2.0.0 Ok: queued as 4714", SMTPC_STAGE_DOT);
	return p;
}

#define CALLS_BEHIND "opened next(2) done(1) next(-) done(2) next(-) idle?0 closed"

/* The first message's envelope and body, then the second one's MAIL,
 * RCPT and DATA, all read before the first dot is answered. */
#define BODY_THEN_NEXT_ENVELOPE                                                  \
	GREET, EHLO_PIPELINING, {P_UNTIL, "DATA\r\n"},                            \
	{P_SEND, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"},   \
	{P_UNTIL, "\r\n.\r\n"}, {P_UNTIL, "DATA\r\n"}

/* The first job and, queued behind it, a second one (one recipient). */
static const char second_body[] = "Subject: second\r\n\r\nbye\r\n";
static struct tjob *job_and_second(struct rig *r, struct tjob **t2)
{
	static const struct msg_spec s2 = {
		.from = "", .body = SMTP_BODY_7BIT, .nrcpt = 1, .rcpt = {{"c@dst.test"}},
	};
	struct tjob *t1 = job_std(r, &two_rcpts);
	*t2 = job_new(r, &s2, &(struct iovec){(void *)second_body, strlen(second_body)}, 1);
	r->queue[r->nqueue++] = &(*t2)->j;
	return t1;
}

/* (g2) The next transaction rides behind the body (RFC 2920 3.1): the
 * peer reads the second message's MAIL, RCPT and DATA before it answers
 * the first one's dot (an engine that waited for that reply would stall
 * here until the deadline), and answers both in one write. */
static void test_next_behind_body(void **state)
{
	struct rig *r = *state;
	struct tjob *t2;
	struct tjob *t1 = job_and_second(r, &t2);
	static const struct step script[] = {
		BODY_THEN_NEXT_ENVELOPE,
		{P_SEND, "250 2.0.0 Ok: queued as 4711\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
			 "354 go ahead\r\n"},
		{P_UNTIL, "\r\n.\r\n"}, {P_SEND, "250 2.0.0 Ok: queued as 4714\r\n"},
		QUIT_OK, {P_END, NULL},
	};
	two_on_one(r, script, t1, t2, second_txn(r, second_body, false), CALLS_BEHIND);
}

/* (g3) A 421 to the first dot: the second message, whose commands went
 * behind the body, goes back untouched (not attempted), not deferred
 * with an error it never met. */
static void test_next_behind_body_421(void **state)
{
	struct rig *r = *state;
	struct tjob *t2;
	struct tjob *t1 = job_and_second(r, &t2);
	static const struct step script[] = {
		BODY_THEN_NEXT_ENVELOPE,
		{P_SEND, "421 4.3.2 Shutting down\r\n"}, {P_EOF, NULL},
		{P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	conn_open(r, params(), t1, &p->port, 1);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	check_all("first", t1, 421, "4.3.2", "421 4.3.2 Shutting down", SMTPC_STAGE_DOT);
	CHECK_INT("second not attempted", t2->j.not_attempted, true);
	CHECK_STR("callbacks", r->calls, "opened next(2) done(1) done(2) closed");
}

/* (g4) The connection ends after the second envelope arrived but before
 * the first dot is answered: the first message is deferred (lost), the
 * second goes back untouched. */
static void test_next_behind_body_lost(void **state)
{
	struct rig *r = *state;
	struct tjob *t2;
	struct tjob *t1 = job_and_second(r, &t2);
	static const struct step script[] = {
		BODY_THEN_NEXT_ENVELOPE, {P_SHUT_WR, NULL}, {P_EOF, NULL}, {P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	conn_open(r, params(), t1, &p->port, 1);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	check_all("first", t1, 451, "4.4.2",
		  rig_str(r, "451 4.4.2 [127.0.0.1]:%u: connection closed by the next hop", p->port),
		  SMTPC_STAGE_CONNECT);
	CHECK_INT("first attempted", t1->j.not_attempted, false);
	CHECK_INT("second not attempted", t2->j.not_attempted, true);
	CHECK_STR("callbacks", r->calls, "opened next(2) done(1) done(2) closed");
}

/* (g5) A next job the client will not queue behind the body (dotless,
 * and the next hop offers CHUNKING: it goes as BDAT, whose envelope
 * waits for its replies) is held and started after the first dot's
 * reply, on the same connection, not handed back. */
static void test_next_held_until_the_reply(void **state)
{
	struct rig *r = *state;
	struct tjob *t2;
	struct tjob *t1 = job_and_second(r, &t2);
	t2->j.cmsg.dotless = true;
	static const struct step script[] = {
		GREET,
		{P_UNTIL, "\r\n"},
		{P_SEND, "250-peer.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-CHUNKING\r\n"
			 "250 8BITMIME\r\n"},
		{P_UNTIL, "DATA\r\n"},
		{P_SEND, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"},
		{P_UNTIL, "\r\n.\r\n"}, {P_SEND, "250 2.0.0 Ok: queued as 4711\r\n"},
		{P_UNTIL, "RCPT TO:<c@dst.test>\r\n"}, {P_SEND, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"},
		{P_UNTIL, "bye\r\n"}, {P_SEND, "250 2.0.0 Ok: queued as 4714\r\n"},
		QUIT_OK, {P_END, NULL},
	};
	/* no next(-) after done(1): the held job starts, none is asked for */
	two_on_one(r, script, t1, t2, second_txn(r, second_body, true),
		   "opened next(2) done(1) done(2) next(-) idle?0 closed");
	CHECK_INT("second attempted", t2->j.not_attempted, false);
}

/* (g) Connection reuse: next_job hands over a second message after the
 * first; two transactions on one connection, then QUIT. */
static void test_reuse(void **state)
{
	struct rig *r = *state;
	static const struct msg_spec s2 = {
		.from = "", .body = SMTP_BODY_7BIT, .nrcpt = 1, .rcpt = {{"c@dst.test"}},
	};
	struct tjob *t1 = job_std(r, &two_rcpts);
	static const char second[] = "Subject: second\r\n\r\n..\r\nbye\r\n";
	struct tjob *t2 = job_new(r, &s2, &(struct iovec){(void *)second, strlen(second)}, 1);
	r->queue[r->nqueue++] = &t2->j;
	static const struct step script[] = {
		GREET, EHLO_PIPELINING, TXN_OK,
		{P_UNTIL, "DATA\r\n"},
		{P_SEND, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n"},
		{P_UNTIL, "\r\n.\r\n"}, {P_SEND, "250 2.0.0 Ok: queued as 4714\r\n"},
		QUIT_OK, {P_END, NULL},
	};
	struct peer *p = two_on_one(r, script, t1, t2, second_txn(r, second, false), CALLS_BEHIND);
	CHECK_STR("second job remote", t2->j.remote, remote(r, p->port));
	CHECK_INT("connections counted", connections(r), 1);
}

/* (h) Nothing more to send and the owner lets it idle: no QUIT, a recv
 * stays armed, and when the peer closes the owner hears of it. */
static void test_idle_then_peer_closes(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	r->may_idle = true;
	static const struct step script[] = {
		GREET, EHLO_PIPELINING, TXN_OK, {P_WAIT_GO, NULL}, {P_SHUT_WR, NULL}, {P_EOF, NULL}, {P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	conn_open(r, params(), t, &p->port, 1);
	assert_true(drive(r, is_idle, WAIT_MS));
	CHECK_STR("callbacks when idle", r->calls, "opened next(-) done(1) next(-) idle?1");
	CHECK_INT("idle deadline", r->oc->deadline, r->w.now_ms + 5000);
	CHECK_INT("a recv is armed", r->oc->in_busy, true);
	check_all("delivered", t, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
	/* idle stays idle */
	assert_false(drive(r, never, 200));
	CHECK_INT("still idle", r->oc->state, OC_IDLE);
	peer_go(p);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	CHECK_STR("bytes the peer got", peer_got(p, 0), rig_str(r, EHLO "%s", wire_txn(r, t)));
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?1 closed");
}

/* (h) An idle connection takes another job (outconn_take), then quits. */
static void test_idle_take(void **state)
{
	struct rig *r = *state;
	struct tjob *t1 = job_std(r, &two_rcpts);
	struct tjob *t2 = job_std(r, &two_rcpts);
	r->may_idle = true;
	static const struct step script[] = {
		GREET, EHLO_PIPELINING, TXN_OK, TXN_OK, QUIT_OK, {P_END, NULL}};
	struct peer *p = peer_start(r, script);
	conn_open(r, params(), t1, &p->port, 1);
	assert_true(drive(r, is_idle, WAIT_MS));
	r->may_idle = false;
	assert_true(outconn_take(r->oc, &t2->j));
	CHECK_INT("taken", r->oc->state, OC_SESSION);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	CHECK_STR("bytes the peer got", peer_got(p, 0),
		  rig_str(r, EHLO "%s%s" QUIT, wire_txn(r, t1), wire_txn(r, t2)));
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?1 next(-) done(2) next(-) idle?0 closed");
	check_all("second", t2, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
}

/* (h) The idle timeout closes the connection. NOTE: without QUIT
 * (outconn_tick -> outconn_close), which RFC 5321 4.1.1.10 asks for before
 * a client closes on purpose; outconn_quit exists for that. Asserted as it
 * is: see the report. */
static void test_idle_timeout(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	r->may_idle = true;
	static const struct step script[] = {GREET, EHLO_PIPELINING, TXN_OK, {P_EOF, NULL}, {P_END, NULL}};
	struct peer *p = peer_start(r, script);
	conn_open(r, params(), t, &p->port, 1);
	assert_true(drive(r, is_idle, WAIT_MS));
	uint64_t deadline = r->oc->deadline;
	CHECK_INT("idle deadline", deadline, r->w.now_ms + 5000);
	tick_at(r, deadline - 1);
	CHECK_INT("before the idle timeout", r->oc->state, OC_IDLE);
	tick_at(r, deadline);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	CHECK_STR("bytes the peer got", peer_got(p, 0), rig_str(r, EHLO "%s", wire_txn(r, t)));
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?1 closed");
}

/* (i) A connect that never completes: at connect_timeout the next target
 * is tried. */
static void test_connect_timeout(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	struct peer *p = peer_start(r, script_delivery);
	uint16_t ports[2] = {hanging_port(r), p->port};
	struct oconn_params cp = params();
	cp.connect_timeout_ms = 1000;
	conn_open(r, cp, t, ports, 2);
	uint64_t deadline = r->oc->deadline;
	CHECK_INT("deadline", deadline, r->w.now_ms + 1000);
	assert_false(drive(r, never, 300));
	CHECK_INT("still connecting", r->oc->state, OC_CONNECTING);
	CHECK_INT("no completion", r->nout, 0);
	tick_at(r, deadline - 1);
	CHECK_INT("before the deadline", r->oc->state, OC_CONNECTING);
	tick_at(r, deadline);
	CHECK_INT("at the deadline", r->oc->state, OC_SWITCHING);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	CHECK_STR("bytes the peer got", peer_got(p, 0), rig_str(r, EHLO "%s" QUIT, wire_txn(r, t)));
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?0 closed");
	check_all("delivered", t, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
	CHECK_STR("log", log_lines(r, "event=connect_failed"),
		  connect_failed(r, ports[0],
				 rig_str(r, "[127.0.0.1]:%u: connection timed out", ports[0])));
}

static const struct step script_silent[] = {{P_ACCEPT, NULL}, {P_EOF, NULL}, {P_END, NULL}};

/* (i) A server that accepts and never greets: connect_timeout covers the
 * TCP connect only; the greeting has the 5 minutes of RFC 5321 4.5.3.2.1,
 * then the next target is tried. */
static void test_greeting_timeout(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	struct peer *silent = peer_start(r, script_silent);
	struct peer *p = peer_start(r, script_delivery);
	uint16_t ports[2] = {silent->port, p->port};
	struct oconn_params cp = params();
	cp.connect_timeout_ms = 1000;
	conn_open(r, cp, t, ports, 2);
	assert_true(drive(r, is_session, WAIT_MS));
	uint64_t deadline = r->oc->deadline;
	CHECK_INT("greeting deadline", deadline, r->w.now_ms + 300000);
	tick_at(r, r->w.now_ms + 1001);
	CHECK_INT("past connect_timeout", r->oc->state, OC_SESSION);
	tick_at(r, deadline - 1);
	CHECK_INT("before the greeting deadline", r->oc->state, OC_SESSION);
	tick_at(r, deadline);
	CHECK_INT("past the greeting deadline", r->oc->state, OC_SWITCHING);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(silent);
	peer_ok(p);
	CHECK_STR("bytes the silent peer got", peer_got(silent, 0), "");
	CHECK_STR("bytes the second peer got", peer_got(p, 0),
		  rig_str(r, EHLO "%s" QUIT, wire_txn(r, t)));
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?0 closed");
	check_all("delivered", t, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
	CHECK_STR("log", log_lines(r, "event=connect_failed"),
		  connect_failed(r, silent->port, "no complete greeting within 5m"));
}

/* (i) The only target never greets: at the deadline the job fails with
 * 451 4.4.1 and the destination is unreachable. */
static void test_greeting_timeout_last(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	struct peer *silent = peer_start(r, script_silent);
	conn_open(r, params(), t, &silent->port, 1);
	assert_true(drive(r, is_session, WAIT_MS));
	tick_at(r, r->oc->deadline);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(silent);
	const char *text = "451 4.4.1 No next hop answered; last error: no complete greeting within 5m";
	CHECK_STR("callbacks", r->calls, "opened done(1) unreachable(451 4.4.1) closed");
	check_all("unreachable", t, 451, "4.4.1", text, SMTPC_STAGE_CONNECT);
	CHECK_STR("unreachable", r->un_text, text);
}

/* No targets at all: everything happens inside outconn_open. */
static void test_no_targets(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	conn_open(r, params(), t, NULL, 0);
	const char *text = "451 4.4.1 No next hop answered; last error: none reachable";
	CHECK_STR("callbacks", r->calls, "opened done(1) unreachable(451 4.4.1) closed");
	check_all("unreachable", t, 451, "4.4.1", text, SMTPC_STAGE_CONNECT);
	CHECK_STR("job remote", t->j.remote, "none");
}

/* The owner closes a connection whose job never started: the job goes
 * back untouched (not_attempted). */
static void test_close_before_start(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	struct peer *silent = peer_start(r, script_silent);
	conn_open(r, params(), t, &silent->port, 1);
	assert_true(drive(r, is_session, WAIT_MS));
	outconn_close(r->oc);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(silent);
	CHECK_STR("callbacks", r->calls, "opened done(1) closed");
	CHECK_INT("not attempted", t->j.not_attempted, true);
	check_all("untouched", t, 0, "", "", SMTPC_STAGE_CONNECT);
}

/* The owner's "we stop" (deliver_tick past the stop deadline calls
 * outconn_lost(oc, "shutting down")) on a connection whose job has not
 * started closes it and gives the job back; it must not move on to the
 * next target (it once did, and with the last target reported the whole
 * destination unreachable). */
static void test_lost_while_connecting(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	uint16_t second;
	int lfd = quiet_listener(r, &second);
	uint16_t ports[2] = {hanging_port(r), second};
	conn_open(r, params(), t, ports, 2);
	CHECK_INT("connecting", r->oc->state, OC_CONNECTING);
	outconn_lost(r->oc, "shutting down");
	bool closed = drive(r, is_closed, 1000);
	bool next = someone_connected(lfd);
	if (!closed || next)
		fail_msg("outconn_lost(\"shutting down\") while connecting: closed=%d, a connection "
			 "to the next target=%d, state now %s, callbacks \"%s\"",
			 closed, next, r->oc ? oc_state_names[r->oc->state] : "gone", r->calls);
	CHECK_STR("callbacks", r->calls, "opened done(1) closed");
	if (!t->j.not_attempted)
		check_all("lost", t, 451, "4.4.2",
			  rig_str(r, "451 4.4.2 [127.0.0.1]:%u: shutting down", ports[0]),
			  SMTPC_STAGE_CONNECT);
}

/* Each piece of the body that had to wait for the socket takes 200 s
 * (the clock moves on before its completion is handled): RFC 5321
 * 4.5.3.2.5 gives 3 minutes to each send of the data, and the message as
 * a whole has 10 min + 8 MB at 4 KB/s, so it must go through (a deadline
 * of 3 minutes set once for the whole body failed any body slower than
 * that in all, every time). */
static void body_clock_before(struct rig *r, const struct io_cqe *e)
{
	if (!r->oc || !r->oc->body || !r->oc->out_busy || e->res <= 0)
		return;
	r->offset += 200000;
	rig_clock(r);
}

static void body_clock(struct rig *r)
{
	if (!r->oc)
		return;
	/* The peer starts reading once the body is on its way: what the
	 * socket took at once is sent, the rest waits for room. */
	if (!r->go_given && r->oc->body) {
		peer_go(r->hook_peer);
		r->go_given = true;
	}
	if (r->body_steps == r->hook_seen)
		return;
	r->hook_seen = r->body_steps;
	outconn_tick(r->oc);
}

static void test_body_deadline_per_send(void **state)
{
	struct rig *r = *state;
	size_t size = 8u << 20;
	struct tjob *t = job_big(r, &two_rcpts, size);
	static const struct step script[] = {
		GREET, EHLO_PIPELINING,
		{P_UNTIL, "DATA\r\n"},
		{P_SEND, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n"},
		{P_WAIT_GO, NULL},
		{P_UNTIL, "\r\n.\r\n"}, {P_SEND, "250 2.0.0 Ok: queued as 4711\r\n"},
		QUIT_OK, {P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	r->hook_peer = p;
	r->after_out = body_clock;
	r->before_out = body_clock_before;
	conn_open(r, params(), t, &p->port, 1);
	assert_true(drive(r, is_closed, 20000));
	r->after_out = NULL;
	r->before_out = NULL;
	if (r->body_steps < 1)
		fail_msg("the body went in %u sendfile(s): the test needs partial sends",
			 r->body_steps);
	for (unsigned k = 0; k < t->j.n; k++)
		if (t->res[k].code != 250)
			fail_msg("rcpt %u: %d \"%s\" after %u pieces of 200 s each", k,
				 t->res[k].code, t->res[k].text, r->body_steps);
	/* 200 s per waiting piece: more than 3 minutes in all. */
	peer_ok(p);
	const char *want = rig_str(r, EHLO "%s" QUIT, wire_txn(r, t));
	CHECK_INT("bytes the peer got", p->t[0].len, strlen(want));
	CHECK_INT("bytes the peer got", memcmp(p->t[0].p, want, strlen(want)), 0);
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?0 closed");
}


/* ---- deadlines that partial replies do not move --------------------- */

/* The client has seen want_replies complete replies and want_lines lines
 * of the one after. */
static bool reply_seen(struct rig *r)
{
	return r->oc && r->oc->client_ready &&
	       smtp_client_replies(&r->oc->cl) >= r->want_replies &&
	       r->oc->cl.reply_lines >= r->want_lines;
}

static void wait_reply(struct rig *r, unsigned replies, unsigned lines)
{
	r->want_replies = replies;
	r->want_lines = lines;
	if (!drive(r, reply_seen, WAIT_MS))
		fail_msg("no reply %u, line %u (have %llu replies, %u lines, state %s)", replies + 1,
			 lines, r->oc ? (unsigned long long)smtp_client_replies(&r->oc->cl) : 0ull,
			 r->oc ? r->oc->cl.reply_lines : 0, r->oc ? oc_state_names[r->oc->state] : "gone");
}

/* "3s", "20.1s": as outconn.c writes a duration. */
static const char *ms_text(struct rig *r, uint64_t ms)
{
	if (ms % 60000 == 0)
		return rig_str(r, "%llum", (unsigned long long)(ms / 60000));
	if (ms % 1000 == 0)
		return rig_str(r, "%llus", (unsigned long long)(ms / 1000));
	return rig_str(r, "%.1fs", (double)ms / 1000.0);
}

/* A next hop trickling its reply to MAIL a line at a time, a second
 * apart, with command_timeout 3 s: the deadline armed when the batch went
 * out stays where it is, whatever lines come, and the connection is
 * given up there; a complete reply begins the next wait (RCPT's), which
 * the trickle of its reply does not move either. */
static void test_reply_deadline_whole_reply(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step script[] = {
		GREET, EHLO_PIPELINING,
		{P_UNTIL, "DATA\r\n"},
		{P_SEND, "250-2.1.0 first\r\n"}, {P_WAIT_GO, NULL},
		{P_SEND, "250-2.1.0 second\r\n"}, {P_WAIT_GO, NULL},
		{P_SEND, "250 2.1.0 Ok\r\n"}, {P_WAIT_GO, NULL},
		{P_SEND, "250-2.1.5 a moment\r\n"}, {P_WAIT_GO, NULL},
		{P_SEND, "250-2.1.5 more\r\n"},
		{P_EOF, NULL}, {P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	struct oconn_params cp = params();
	cp.command_timeout_ms = 3000;
	conn_open(r, cp, t, &p->port, 1);
	wait_reply(r, 2, 1); /* greeting, EHLO; the first line of MAIL's */
	uint64_t deadline = r->oc->deadline;
	CHECK_INT("armed for the whole reply", r->oc->deadline_ms, 3000);
	r->offset += 1000;
	peer_go(p);
	wait_reply(r, 2, 2);
	CHECK_INT("a second line a second later", r->oc->deadline, deadline);
	tick_at(r, deadline - 1);
	CHECK_INT("before the deadline", r->oc->state, OC_SESSION);
	r->offset += 1000;
	peer_go(p);
	wait_reply(r, 3, 0);
	uint64_t next = r->oc->deadline;
	if (next <= deadline || r->oc->deadline_ms != 3000)
		fail_msg("the complete reply to MAIL did not begin a new wait: deadline %llu, was %llu",
			 (unsigned long long)next, (unsigned long long)deadline);
	r->offset += 1000;
	peer_go(p);
	wait_reply(r, 3, 1);
	r->offset += 1000;
	peer_go(p);
	wait_reply(r, 3, 2);
	CHECK_INT("RCPT's deadline", r->oc->deadline, next);
	tick_at(r, next - 1);
	CHECK_INT("before RCPT's deadline", r->oc->state, OC_SESSION);
	tick_at(r, next);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	const char *text =
		rig_str(r, "451 4.4.2 [127.0.0.1]:%u: no complete reply to RCPT within 3s", p->port);
	check_all("deferred", t, 451, "4.4.2", text, SMTPC_STAGE_CONNECT);
	CHECK_STR("callbacks", r->calls, "opened done(1) closed");
}

/* A greeting trickled a line at a time: given up at command_timeout after
 * the connect, and the next target is tried. */
static void test_greeting_trickle(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step trickle[] = {
		{P_ACCEPT, NULL}, {P_SEND, "220-peer.test\r\n"}, {P_WAIT_GO, NULL},
		{P_SEND, "220-still here\r\n"}, {P_EOF, NULL}, {P_END, NULL},
	};
	struct peer *slow = peer_start(r, trickle);
	struct peer *p = peer_start(r, script_delivery);
	uint16_t ports[2] = {slow->port, p->port};
	struct oconn_params cp = params();
	cp.command_timeout_ms = 3000;
	conn_open(r, cp, t, ports, 2);
	wait_reply(r, 0, 1);
	uint64_t deadline = r->oc->deadline;
	r->offset += 2500;
	peer_go(slow);
	wait_reply(r, 0, 2);
	CHECK_INT("not moved", r->oc->deadline, deadline);
	tick_at(r, deadline);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(slow);
	peer_ok(p);
	check_all("delivered by the next", t, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
	CHECK_STR("log", log_lines(r, "event=connect_failed"),
		  connect_failed(r, slow->port, "no complete greeting within 3s"));
}

/* The message's deadline runs from the body's first byte to the reply to
 * its dot: data_timeout + size / min_data_rate, set once; a trickled
 * final reply does not move it. */
static void test_txn_deadline(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step script[] = {
		GREET, EHLO_PIPELINING,
		{P_UNTIL, "DATA\r\n"},
		{P_SEND, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n"},
		{P_UNTIL, "\r\n.\r\n"}, {P_SEND, "250-2.0.0 thinking\r\n"}, {P_WAIT_GO, NULL},
		{P_SEND, "250-2.0.0 still thinking\r\n"}, {P_EOF, NULL}, {P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	struct oconn_params cp = params();
	cp.command_timeout_ms = 3000;
	cp.data_timeout_ms = 20000;
	cp.min_data_rate = 1000;
	conn_open(r, cp, t, &p->port, 1);
	wait_reply(r, 6, 1); /* ... 354; the first line of the dot's */
	uint64_t want_ms = 20000 + t->m.bytes; /* at 1000 octets a second */
	CHECK_INT("the message's budget", r->oc->txn_ms, want_ms);
	CHECK_INT("the dot's wait is the message's", r->oc->deadline, r->oc->txn_deadline);
	uint64_t deadline = r->oc->deadline;
	r->offset += 15000;
	peer_go(p);
	wait_reply(r, 6, 2);
	CHECK_INT("not moved", r->oc->deadline, deadline);
	tick_at(r, deadline - 1);
	CHECK_INT("before the deadline", r->oc->state, OC_SESSION);
	tick_at(r, deadline);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	check_all("deferred", t, 451, "4.4.2",
		  rig_str(r, "451 4.4.2 [127.0.0.1]:%u: no complete reply to the end of data within %s "
			     "of the message's start (data_timeout + size / min_data_rate)",
			  p->port, ms_text(r, want_ms)),
		  SMTPC_STAGE_CONNECT);
}

static bool body_blocked(struct rig *r)
{
	return r->oc && r->oc->body && r->oc->out_busy;
}

/* A next hop that stops reading the body: each piece may wait 3 min, but
 * never past the message's deadline when that is sooner. */
static void test_body_within_txn_deadline(void **state)
{
	struct rig *r = *state;
	size_t size = 10000000; /* within EHLO_PIPELINING's SIZE */
	struct tjob *t = job_big(r, &two_rcpts, size);
	static const struct step script[] = {
		GREET, EHLO_PIPELINING,
		{P_UNTIL, "DATA\r\n"},
		{P_SEND, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n"},
		{P_WAIT_GO, NULL}, {P_EOF, NULL}, {P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	struct oconn_params cp = params();
	cp.data_timeout_ms = 1000;
	cp.min_data_rate = 1u << 20;
	conn_open(r, cp, t, &p->port, 1);
	if (!drive(r, body_blocked, WAIT_MS))
		fail_msg("the body never waited for the socket (state %s, body %d, out_busy %d, "
			 "replies %llu, calls %s)",
			 r->oc ? oc_state_names[r->oc->state] : "gone", r->oc ? r->oc->body : -1,
			 r->oc ? r->oc->out_busy : -1,
			 r->oc ? (unsigned long long)smtp_client_replies(&r->oc->cl) : 0ull, r->calls);
	uint64_t want_ms = 1000 + t->m.bytes * 1000 / (1u << 20);
	CHECK_INT("the message's budget", r->oc->txn_ms, want_ms);
	CHECK_INT("the piece's wait ends with the message's", r->oc->deadline, r->oc->txn_deadline);
	tick_at(r, r->oc->deadline - 1);
	CHECK_INT("before the deadline", r->oc->state, OC_SESSION);
	tick_at(r, r->oc->deadline);
	peer_go(p);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	check_all("deferred", t, 451, "4.4.2",
		  rig_str(r, "451 4.4.2 [127.0.0.1]:%u: the message was not taken within %s "
			     "(data_timeout + size / min_data_rate)", p->port, ms_text(r, want_ms)),
		  SMTPC_STAGE_CONNECT);
}

/* ---- loops (DESIGN B.6) ----------------------------------------------- */

#define LOOP_LOG(port, what)                                                   \
	rig_str(r, "event=loop send_connector=\"test-sc\" relay=[127.0.0.1]:%u "     \
		   "reason=\"The next hop's %s names our own hostname relay.test\"\n", \
		(port), (what))

/* The first smart host greets with our own name: nothing is sent to it
 * (not even EHLO), a warning is logged, the next one takes the message. */
static void test_loop_greeting_next(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step us[] = {
		{P_ACCEPT, NULL}, {P_SEND, "220 RELAY.test ESMTP Postern\r\n"}, {P_EOF, NULL},
		{P_END, NULL}};
	struct peer *p1 = peer_start(r, us);
	struct peer *p2 = peer_start(r, script_delivery);
	uint16_t ports[2] = {p1->port, p2->port};
	conn_open(r, params(), t, ports, 2);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p1);
	peer_ok(p2);
	CHECK_STR("bytes the first peer got", peer_got(p1, 0), "");
	check_all("delivered", t, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?0 closed");
	CHECK_STR("log", log_lines(r, "event=loop"), LOOP_LOG(p1->port, "greeting"));
}

/* The only target's EHLO reply names us: every recipient is deferred with
 * the loop's text (its domain), the owner hears 4.4.6; from the message's
 * third attempt on it is a bounce. */
static void test_loop_only_target(void **state)
{
	struct rig *r = *state;
	static const struct step us[] = {
		{P_ACCEPT, NULL}, {P_SEND, "220 peer.test ESMTP\r\n"},
		{P_UNTIL, "\r\n"}, {P_SEND, "250-relay.test Hello\r\n250 PIPELINING\r\n"},
		{P_EOF, NULL}, {P_ACCEPT, NULL}, {P_SEND, "220 peer.test ESMTP\r\n"},
		{P_UNTIL, "\r\n"}, {P_SEND, "250-relay.test Hello\r\n250 PIPELINING\r\n"},
		{P_EOF, NULL}, {P_END, NULL}};
	struct peer *p = peer_start(r, us);
	for (unsigned attempts = 0; attempts <= 2; attempts += 2) {
		struct tjob *t = job_std(r, &two_rcpts);
		t->m.attempts = attempts;
		r->calls[0] = '\0';
		r->nclosed = 0;
		conn_open(r, params(), t, &p->port, 1);
		assert_true(drive(r, is_closed, WAIT_MS));
		if (attempts == 0)
			check_all("deferred", t, 451, "4.4.6",
				  "451 4.4.6 mail for dst.test loops back to myself", SMTPC_STAGE_CONNECT);
		else
			check_all("bounced", t, 554, "5.4.6",
				  "554 5.4.6 mail for dst.test loops back to myself", SMTPC_STAGE_CONNECT);
		CHECK_STR("callbacks", r->calls,
			  rig_str(r, "opened done(%u) unreachable(451 4.4.6) closed", attempts / 2 + 1));
		CHECK_STR("unreachable", r->un_text,
			  rig_str(r, "451 4.4.6 Every next hop is ourselves; last error: [127.0.0.1]:%u: "
				     "The next hop's EHLO reply names our own hostname relay.test",
				  p->port));
	}
	peer_ok(p);
	CHECK_STR("bytes the peer got", peer_got(p, 0), EHLO);
	CHECK_STR("log", log_lines(r, "event=loop"),
		  rig_str(r, "%s%s", LOOP_LOG(p->port, "EHLO reply"), LOOP_LOG(p->port, "EHLO reply")));
}

/* MX (RFC 5321 5.1): the best exchanger is us, so no worse one may be
 * tried: a loop. When a better one fails and the next is us, we are a
 * backup exchanger: deferred as unreachable, not a loop. */
static void test_loop_mx(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step us[] = {
		{P_ACCEPT, NULL}, {P_SEND, "220 relay.test\r\n"}, {P_EOF, NULL},
		{P_ACCEPT, NULL}, {P_SEND, "220 relay.test\r\n"}, {P_EOF, NULL}, {P_END, NULL}};
	struct peer *p = peer_start(r, us);
	uint16_t worse;
	int lfd = quiet_listener(r, &worse);
	uint16_t ports[2] = {p->port, worse};
	static const unsigned prefs[2] = {10, 20};
	conn_open_prefs(r, params(), t, ports, prefs, 2);
	assert_true(drive(r, is_closed, WAIT_MS));
	CHECK_INT("the worse exchanger was not tried", someone_connected(lfd), false);
	check_all("loop", t, 451, "4.4.6", "451 4.4.6 mail for dst.test loops back to myself",
		  SMTPC_STAGE_CONNECT);

	struct tjob *t2 = job_std(r, &two_rcpts);
	uint16_t ports2[2] = {refusing_port(r), p->port};
	r->nclosed = 0;
	r->calls[0] = '\0';
	conn_open_prefs(r, params(), t2, ports2, prefs, 2);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	check_all("backup exchanger", t2, 451, "4.4.1",
		  rig_str(r, "451 4.4.1 No next hop answered; last error: peer.test[127.0.0.1]:%u: "
			     "The next hop's greeting names our own hostname relay.test", p->port),
		  SMTPC_STAGE_CONNECT);
	CHECK_STR("callbacks", r->calls, "opened done(2) unreachable(451 4.4.1) closed");
}

/* ---- AUTH --------------------------------------------------------------- */

#define AUTH_USER "relay@corp.example"
#define AUTH_PASS "s3cret pw"
#define B64_USER "cmVsYXlAY29ycC5leGFtcGxl"
#define B64_PASS "czNjcmV0IHB3"
#define B64_PLAIN "AHJlbGF5QGNvcnAuZXhhbXBsZQBzM2NyZXQgcHc="
#define EHLO_AUTH                                                                \
	{P_UNTIL, "\r\n"},                                                       \
	{P_SEND, "250-peer.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"      \
		 "250-AUTH LOGIN PLAIN\r\n250 8BITMIME\r\n"}
#define R535 "535 5.7.139 Authentication unsuccessful, the user credentials were incorrect."

static struct oconn_params auth_params(unsigned mech)
{
	struct oconn_params p = params();
	p.auth_mech = mech;
	p.auth_user = AUTH_USER;
	p.auth_secret = AUTH_PASS;
	return p;
}

static uint64_t auth_count(const struct rig *r, enum auth_result res)
{
	return metric_get(&r->m->send[STATS_ID].auth[res]);
}

/* Nothing this test logged holds the password, plain or in base64. */
static void check_no_secret_logged(struct rig *r)
{
	const char *all = log_lines(r, "event=");
	if (strstr(all, AUTH_PASS) || strstr(all, B64_PASS) || strstr(all, B64_PLAIN))
		fail_msg("the secret is in the log:\n%s", all);
}

/* LOGIN with tls = "none" (said explicitly, so plaintext is allowed): user
 * and password after their 334s, then the transaction; one ok line, one
 * count. The connection holds its own copy of the secret. */
static void test_auth_login(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step script[] = {
		GREET, EHLO_AUTH,
		{P_UNTIL, "AUTH LOGIN\r\n"}, {P_SEND, "334 VXNlcm5hbWU6\r\n"},
		{P_UNTIL, "\r\n"}, {P_SEND, "334 UGFzc3dvcmQ6\r\n"},
		{P_UNTIL, "\r\n"}, {P_SEND, "235 2.7.0 Authentication successful\r\n"},
		TXN_OK, QUIT_OK, {P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	char secret[] = AUTH_PASS;
	struct oconn_params op = auth_params(SCONN_AUTH_LOGIN);
	op.auth_secret = secret;
	conn_open(r, op, t, &p->port, 1);
	CHECK_INT("a copy", r->oc->p.auth_secret != secret, true);
	memset(secret, 'X', sizeof(secret) - 1); /* a rotated token file, say */
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	CHECK_STR("bytes the peer got", peer_got(p, 0),
		  rig_str(r, EHLO "AUTH LOGIN\r\n" B64_USER "\r\n" B64_PASS "\r\n%s" QUIT,
			  wire_txn(r, t)));
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?0 closed");
	check_all("delivered", t, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
	CHECK_STR("log", log_lines(r, "event=auth"),
		  rig_str(r, "event=auth dir=out send_connector=test-sc remote=peer.test[127.0.0.1]:%u "
			     "user=" AUTH_USER " mechanism=login result=ok\n", p->port));
	CHECK_INT("ok counted", auth_count(r, AUTH_RESULT_OK), 1);
	CHECK_INT("failed counted", auth_count(r, AUTH_RESULT_FAILED), 0);
	CHECK_INT("established", r->nestablished, 1);
	check_no_secret_logged(r);
}

/* 535: the job is deferred with a 4xx naming the reply, the next target
 * is not tried with the same credentials, the owner is asked to back off
 * and hears the destination is unreachable (the jobs behind wait). */
static void test_auth_refused(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step script[] = {
		GREET, EHLO_AUTH,
		{P_UNTIL, "AUTH PLAIN " B64_PLAIN "\r\n"}, {P_SEND, R535 "\r\n"},
		{P_EOF, NULL}, {P_END, NULL},
	};
	struct peer *p = peer_start(r, script);
	uint16_t second;
	int lfd = quiet_listener(r, &second);
	uint16_t ports[2] = {p->port, second};
	conn_open(r, auth_params(SCONN_AUTH_PLAIN), t, ports, 2);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	CHECK_INT("second target tried", someone_connected(lfd), false);
	CHECK_STR("bytes the peer got", peer_got(p, 0), EHLO "AUTH PLAIN " B64_PLAIN "\r\n");
	const char *text = "451 4.7.8 Next hop refused our credentials: " R535;
	CHECK_STR("callbacks", r->calls,
		  "opened backoff(credentials: " R535 ") done(1) unreachable(451 4.7.8) closed");
	check_all("deferred", t, 451, "4.7.8", text, SMTPC_STAGE_CONNECT);
	CHECK_STR("unreachable", r->un_text, text);
	CHECK_STR("log", log_lines(r, "event=auth"),
		  rig_str(r, "event=auth dir=out send_connector=test-sc remote=peer.test[127.0.0.1]:%u "
			     "user=" AUTH_USER " mechanism=plain result=failed reply=\"" R535 "\"\n",
			  p->port));
	CHECK_INT("failed counted", auth_count(r, AUTH_RESULT_FAILED), 1);
	CHECK_INT("established", r->nestablished, 0);
	check_no_secret_logged(r);
}

/* tls = "opportunistic" and no STARTTLS to be had: the credentials are
 * not sent (not even AUTH), the target fails with a 4.7.10, the next one
 * is tried. */
static void test_auth_withheld(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step script[] = {GREET, EHLO_AUTH, {P_EOF, NULL}, {P_END, NULL}};
	struct peer *p1 = peer_start(r, script);
	struct peer *p2 = peer_start(r, script);
	uint16_t ports[2] = {p1->port, p2->port};
	struct oconn_params op = auth_params(SCONN_AUTH_LOGIN);
	op.tls_mode = TLS_MODE_OPPORTUNISTIC; /* no context: no STARTTLS */
	conn_open(r, op, t, ports, 2);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p1);
	peer_ok(p2);
	CHECK_STR("bytes the first peer got", peer_got(p1, 0), EHLO);
	CHECK_STR("bytes the second peer got", peer_got(p2, 0), EHLO);
	CHECK_STR("callbacks", r->calls, "opened done(1) unreachable(451 4.7.10) closed");
	check_all("deferred", t, 451, "4.7.10",
		  rig_str(r, "451 4.7.10 No next hop could be reached with TLS for our credentials; "
			     "last error: [127.0.0.1]:%u: 451 4.7.10 Credentials withheld: no TLS "
			     "to the next hop", p2->port),
		  SMTPC_STAGE_CONNECT);
	const char *line = "event=auth dir=out send_connector=test-sc remote=peer.test[127.0.0.1]:%u "
			   "user=" AUTH_USER " mechanism=login result=failed "
			   "reason=\"credentials withheld: no TLS to the next hop\"\n";
	CHECK_STR("log", log_lines(r, "event=auth"),
		  rig_str(r, "%s%s", rig_str(r, line, p1->port), rig_str(r, line, p2->port)));
	CHECK_INT("failed counted", auth_count(r, AUTH_RESULT_FAILED), 2);
}

/* The mechanism is not offered: a 4.7.0 naming it, never a bounce. */
static void test_auth_not_offered(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step script[] = {GREET, EHLO_PIPELINING, {P_EOF, NULL}, {P_END, NULL}};
	struct peer *p = peer_start(r, script);
	conn_open(r, auth_params(SCONN_AUTH_XOAUTH2), t, &p->port, 1);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p);
	CHECK_STR("bytes the peer got", peer_got(p, 0), EHLO);
	CHECK_STR("callbacks", r->calls, "opened done(1) unreachable(451 4.7.0) closed");
	check_all("deferred", t, 451, "4.7.0",
		  rig_str(r, "451 4.7.0 No next hop accepted our credentials; last error: "
			     "[127.0.0.1]:%u: 451 4.7.0 Next hop does not offer AUTH", p->port),
		  SMTPC_STAGE_CONNECT);
	CHECK_STR("log", log_lines(r, "event=auth"),
		  rig_str(r, "event=auth dir=out send_connector=test-sc remote=peer.test[127.0.0.1]:%u "
			     "user=" AUTH_USER " mechanism=xoauth2 result=failed "
			     "reason=\"next hop does not offer AUTH XOAUTH2\"\n", p->port));
}

/* Microsoft 365's concurrency limit, 432 4.3.2 to AUTH at the first
 * target: the second takes the message, no backoff. */
static void test_auth_432_then_next(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
	static const struct step busy[] = {
		GREET, EHLO_AUTH,
		{P_UNTIL, "AUTH LOGIN\r\n"},
		{P_SEND, "432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information.\r\n"},
		{P_EOF, NULL}, {P_END, NULL},
	};
	static const struct step ok[] = {
		GREET, EHLO_AUTH,
		{P_UNTIL, "AUTH LOGIN\r\n"}, {P_SEND, "334 VXNlcm5hbWU6\r\n"},
		{P_UNTIL, "\r\n"}, {P_SEND, "334 UGFzc3dvcmQ6\r\n"},
		{P_UNTIL, "\r\n"}, {P_SEND, "235 2.7.0 Authentication successful\r\n"},
		TXN_OK, QUIT_OK, {P_END, NULL},
	};
	struct peer *p1 = peer_start(r, busy);
	struct peer *p2 = peer_start(r, ok);
	uint16_t ports[2] = {p1->port, p2->port};
	conn_open(r, auth_params(SCONN_AUTH_LOGIN), t, ports, 2);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p1);
	peer_ok(p2);
	CHECK_STR("callbacks", r->calls, "opened next(-) done(1) next(-) idle?0 closed");
	check_all("delivered", t, 250, "2.0.0", OK_TEXT, SMTPC_STAGE_DOT);
	CHECK_INT("temporary counted", auth_count(r, AUTH_RESULT_TEMPORARY), 1);
	CHECK_INT("ok counted", auth_count(r, AUTH_RESULT_OK), 1);
	CHECK_INT("established", r->nestablished, 1);
}

/* Every target says 421 4.3.2 at the greeting: the owner is asked to back
 * off (with the reply) before hearing the destination is unreachable. */
static void test_421_backoff(void **state)
{
	struct rig *r = *state;
	struct tjob *t = job_std(r, &two_rcpts);
#define R421 "421 4.3.2 The maximum number of concurrent server connections has exceeded a limit, closing transmission channel"
	static const struct step busy[] = {
		{P_ACCEPT, NULL}, {P_SEND, R421 "\r\n"}, {P_EOF, NULL}, {P_END, NULL}};
	struct peer *p1 = peer_start(r, busy);
	struct peer *p2 = peer_start(r, busy);
	uint16_t ports[2] = {p1->port, p2->port};
	conn_open(r, params(), t, ports, 2);
	assert_true(drive(r, is_closed, WAIT_MS));
	peer_ok(p1);
	peer_ok(p2);
	CHECK_STR("callbacks", r->calls,
		  "opened backoff(" R421 ") done(1) unreachable(451 4.4.1) closed");
	check_all("deferred", t, 451, "4.4.1",
		  "451 4.4.1 No next hop answered; last error: " R421, SMTPC_STAGE_CONNECT);
	CHECK_STR("no auth line without credentials", log_lines(r, "event=auth"), "");
#undef R421
}

#define RIG_TEST(f, kind) cmocka_unit_test_prestate_setup_teardown(f, rig_setup, rig_teardown, kind)
#define RIG_TESTS(kind)                                  \
	RIG_TEST(test_delivery, kind),                   \
	RIG_TEST(test_delivery_bdat, kind),              \
	RIG_TEST(test_rcpt_refused, kind),               \
	RIG_TEST(test_rcpt_refused_pipelined, kind),     \
	RIG_TEST(test_refused_then_next, kind),          \
	RIG_TEST(test_all_refused, kind),                \
	RIG_TEST(test_greeting_554, kind),               \
	RIG_TEST(test_closed_mid_data, kind),            \
	RIG_TEST(test_reset_mid_data, kind),             \
	RIG_TEST(test_reuse, kind),                      \
	RIG_TEST(test_next_behind_body, kind),           \
	RIG_TEST(test_next_behind_body_421, kind),       \
	RIG_TEST(test_next_behind_body_lost, kind),      \
	RIG_TEST(test_next_held_until_the_reply, kind),  \
	RIG_TEST(test_idle_then_peer_closes, kind),      \
	RIG_TEST(test_idle_take, kind),                  \
	RIG_TEST(test_idle_timeout, kind),               \
	RIG_TEST(test_connect_timeout, kind),            \
	RIG_TEST(test_greeting_timeout, kind),           \
	RIG_TEST(test_greeting_timeout_last, kind),      \
	RIG_TEST(test_no_targets, kind),                 \
	RIG_TEST(test_close_before_start, kind),         \
	RIG_TEST(test_lost_while_connecting, kind),      \
	RIG_TEST(test_body_deadline_per_send, kind),     \
	RIG_TEST(test_reply_deadline_whole_reply, kind), \
	RIG_TEST(test_greeting_trickle, kind),           \
	RIG_TEST(test_txn_deadline, kind),               \
	RIG_TEST(test_body_within_txn_deadline, kind),   \
	RIG_TEST(test_loop_greeting_next, kind),         \
	RIG_TEST(test_loop_only_target, kind),           \
	RIG_TEST(test_loop_mx, kind),                    \
	RIG_TEST(test_auth_login, kind),                 \
	RIG_TEST(test_auth_refused, kind),               \
	RIG_TEST(test_auth_withheld, kind),              \
	RIG_TEST(test_auth_not_offered, kind),           \
	RIG_TEST(test_auth_432_then_next, kind),         \
	RIG_TEST(test_421_backoff, kind)

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	/* connect_failed lines are part of what the tests check */
	snprintf(log_path, sizeof(log_path), "/tmp/postern-outconn-%d.log", (int)getpid());
	if (log_open_file(log_path) != 0) {
		fprintf(stderr, "cannot open %s\n", log_path);
		return 1;
	}
	log_set_level(LOG_INFO);
	const struct CMUnitTest epoll_tests[] = {RIG_TESTS(&kind_epoll)};
	printf("[==========] backend: epoll\n");
	int failed = cmocka_run_group_tests_name("outconn/epoll", epoll_tests, NULL, NULL);
	char why[256];
	if (io_probe(IO_BACKEND_URING, why, sizeof(why)) == IO_BACKEND_URING) {
		const struct CMUnitTest uring_tests[] = {RIG_TESTS(&kind_uring)};
		printf("[==========] backend: io_uring\n");
		failed += cmocka_run_group_tests_name("outconn/io_uring", uring_tests, NULL, NULL);
	} else {
		printf("[  SKIPPED ] outconn/io_uring: %s\n", why);
	}
	unlink(log_path);
	return failed;
}
