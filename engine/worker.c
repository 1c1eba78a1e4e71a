/* Worker thread (see worker.h): opens its I/O backend, runs the loop that
 * hands each decoded completion to its handler (the op -> handler table
 * below), owns the listening sockets, reloads and the periodic tick
 * (timeouts, graceful stop). The only file that knows struct worker. */
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "deliver.h"
#include "log.h"
#include "pickup.h"
#include "session.h"
#include "smtp_reply.h"

#define IO_ENTRIES 4096
#define MAX_CONNS_PER_WORKER 65536
#define BUF_COUNT 512           /* provided receive buffers per worker */
#define BUF_SIZE (16 * 1024)
#define TICK_MS 250
#define CQE_BATCH 1024

/* Listeners stay closed once a stop or a drain has begun. */
static bool inbound_closed(const struct worker *w)
{
	return w->ctx.stopping || w->ctx.draining;
}

static void arm_accept(struct worker *w, unsigned b)
{
	io_accept(w->ctx.io, w->listen_fds[b], io_tag(IO_OP_ACCEPT, b, w->conf_gen));
}

/* The binding an accepted socket came in on, from its local address: for an
 * accept that raced with a reload and carries the old numbering. */
static unsigned binding_of(const struct conf *c, int fd)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0)
		return UINT32_MAX;
	for (int exact = 1; exact >= 0; exact--) {
		for (unsigned b = 0; b < c->nbindings; b++) {
			const struct sockaddr_storage *ba = &c->bindings[b].addr;
			if (ba->ss_family == AF_INET && ss.ss_family == AF_INET) {
				const struct sockaddr_in *x = (const void *)ba, *y = (const void *)&ss;
				if (x->sin_port == y->sin_port &&
				    (exact ? x->sin_addr.s_addr == y->sin_addr.s_addr
					   : x->sin_addr.s_addr == htonl(INADDR_ANY)))
					return b;
			} else if (ba->ss_family == AF_INET6) {
				const struct sockaddr_in6 *x = (const void *)ba;
				in_port_t port = ss.ss_family == AF_INET6
					? ((const struct sockaddr_in6 *)&ss)->sin6_port
					: ((const struct sockaddr_in *)&ss)->sin_port;
				bool any = IN6_IS_ADDR_UNSPECIFIED(&x->sin6_addr);
				bool same = ss.ss_family == AF_INET6 &&
					    memcmp(&x->sin6_addr, &((const struct sockaddr_in6 *)&ss)->sin6_addr, 16) == 0;
				if (x->sin6_port == port && (exact ? same : any))
					return b;
			}
		}
	}
	return UINT32_MAX;
}

/* The pending multishot accept keeps the socket alive past close(), even
 * past exit while the ring is torn down; shutdown() takes it out of the
 * SO_REUSEPORT group now, so a restarted postern gets every connection. */
static void close_listener(int fd)
{
	shutdown(fd, SHUT_RDWR);
	close(fd);
}

static void close_listeners(struct worker *w)
{
	for (unsigned b = 0; b < w->nlisten; b++) {
		if (w->listen_fds[b] < 0)
			continue;
		io_cancel(w->ctx.io, io_tag(IO_OP_ACCEPT, b, w->conf_gen));
		close_listener(w->listen_fds[b]);
		w->listen_fds[b] = -1;
	}
	atomic_store(&w->inbound_closed, true);
}

static void free_reload(struct worker_reload *r, bool close_new)
{
	for (unsigned b = 0; close_new && b < r->nlisten; b++)
		if (r->new_fd[b] >= 0)
			close(r->new_fd[b]);
	free(r->keep_from);
	free(r->new_fd);
	free(r);
}

static void apply_reload(struct worker *w, struct worker_reload *r)
{
	int *fds = malloc((r->nlisten ? r->nlisten : 1) * sizeof(*fds));
	bool *paused = calloc(r->nlisten ? r->nlisten : 1, sizeof(*paused));
	if (!fds || !paused) {
		free(fds);
		free(paused);
		log_msg(LOG_ERROR, "event=reload worker=%u status=failed error=\"out of memory\"",
			w->ctx.id);
		conf_unref(r->conf);
		free_reload(r, true);
		return;
	}
	for (unsigned b = 0; b < r->nlisten; b++) {
		int k = r->keep_from[b];
		fds[b] = k >= 0 && (unsigned)k < w->nlisten ? w->listen_fds[k] : r->new_fd[b];
		if (k >= 0 && (unsigned)k < w->nlisten)
			w->listen_fds[k] = -2; /* moved: neither close nor re-arm */
	}
	for (unsigned b = 0; b < w->nlisten; b++) {
		if (w->listen_fds[b] == -1)
			continue;
		io_cancel(w->ctx.io, io_tag(IO_OP_ACCEPT, b, w->conf_gen));
		if (w->listen_fds[b] >= 0)
			close_listener(w->listen_fds[b]);
	}
	free(w->listen_fds);
	w->listen_fds = fds;
	w->nlisten = r->nlisten;
	free(w->accept_paused);
	w->accept_paused = paused; /* every binding is armed below */
	conf_unref(w->ctx.conf);
	w->ctx.conf = r->conf;
	w->conf_gen++;
	if (inbound_closed(w))
		close_listeners(w);
	else
		for (unsigned b = 0; b < w->nlisten; b++)
			if (w->listen_fds[b] >= 0)
				arm_accept(w, b);
	free_reload(r, false);
}

void worker_reload(struct worker *w, struct worker_reload *r)
{
	atomic_store(&w->reload, r);
	io_wake(w->ctx.io);
}

void worker_flush_queue(struct worker *w)
{
	atomic_store(&w->flush_requested, true);
	io_wake(w->ctx.io);
}

void worker_queue_ctl(struct worker *w, struct qctl_part *p)
{
	mailbox_post(&w->ctl, &p->node);
	io_wake(w->ctx.io);
}

/* Requests that came too late for the loop: answered with nothing done. */
static void refuse_ctl(struct worker *w)
{
	for (struct mailbox_node *n = mailbox_take(&w->ctl), *next; n; n = next) {
		next = n->next;
		struct qctl_part *p = (struct qctl_part *)n;
		p->failed = p->req->cmd.op != QCTL_SHOW && p->req->cmd.op != QCTL_DESTINATIONS;
		qctl_part_done(p);
	}
}

bool worker_reload_pending(struct worker *w)
{
	return atomic_load(&w->reload) != NULL;
}

static void arm_tick(struct worker *w)
{
	io_timeout(w->ctx.io, TICK_MS, io_tag(IO_OP_TICK, 0, 0));
}

static void each_conn(struct worker *w, void (*fn)(struct wctx *, struct conn *))
{
	for (uint32_t i = 0; i < w->conns.high_water; i++)
		if (w->conns.slots[i])
			fn(&w->ctx, w->conns.slots[i]);
}

/* Drain: no new clients; sessions finish as at a stop (their transaction,
 * then 421); every queued message is due now and delivery goes on. */
static void begin_drain(struct worker *w)
{
	w->ctx.draining = true;
	w->ctx.stop_deadline_ms = w->ctx.now_ms + w->ctx.conf->shutdown_grace_ms;
	close_listeners(w);
	queue_flush_all(&w->queue);
	each_conn(w, session_tick);
}

static void begin_stop(struct worker *w)
{
	if (!w->ctx.draining)
		w->ctx.stop_deadline_ms = w->ctx.now_ms + w->ctx.conf->shutdown_grace_ms;
	w->ctx.stopping = true;
	w->ctx.draining = false;
	close_listeners(w);
	deliver_stop(w->ctx.dl);
	/* Idle sessions get their 421 now, not at the next tick. */
	each_conn(w, session_tick);
}

/* ---- completion handlers ---------------------------------------------- */

#define ACCEPT_PAUSE_MS 100   /* out of descriptors: accepting waits this long */
#define SPARE_REFUSALS 32     /* clients told 421 per exhaustion, at most */

/* One accept_error line a second at most, with how many it stands for. */
static void accept_error_log(struct worker *w, int err)
{
	w->accept_errors++;
	if (w->accept_log_ms && w->ctx.now_ms - w->accept_log_ms < 1000)
		return;
	log_msg(LOG_WARN, "event=accept_error error=\"%s\" count=%u worker=%u%s", strerror(err),
		w->accept_errors, w->ctx.id,
		err == EMFILE || err == ENFILE ? " note=\"out of descriptors: accepting paused\"" : "");
	w->accept_log_ms = w->ctx.now_ms;
	w->accept_errors = 0;
}

/* EMFILE/ENFILE: the spare descriptor is given up to accept the waiting
 * clients and tell them 421 at once (instead of leaving them to time out),
 * and accepting on the binding pauses until the tick re-arms it: never a
 * spin. */
static void accept_exhausted(struct worker *w, unsigned b)
{
	if (w->spare_fd >= 0) {
		close(w->spare_fd);
		w->spare_fd = -1;
		static const char msg[] = R_CONN_LIMIT "\r\n";
		/* The listening socket may be a blocking one (io_uring does not
		 * need otherwise): only what is waiting now is taken. */
		int lfd = w->listen_fds[b];
		int fl = fcntl(lfd, F_GETFL);
		if (fl >= 0 && !(fl & O_NONBLOCK))
			fcntl(lfd, F_SETFL, fl | O_NONBLOCK);
		for (int i = 0; fl >= 0 && i < SPARE_REFUSALS; i++) {
			int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
			if (fd < 0)
				break;
			ssize_t r = send(fd, msg, sizeof(msg) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
			(void)r;
			close(fd);
			metric_add(&w->m.refused[REFUSE_DESCRIPTORS], 1);
		}
		if (fl >= 0 && !(fl & O_NONBLOCK))
			fcntl(lfd, F_SETFL, fl);
		w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	}
	w->accept_paused[b] = true;
	w->accept_resume_ms = w->ctx.now_ms + ACCEPT_PAUSE_MS;
}

/* The tick: paused bindings accept again (descriptors may be back; if
 * not, the next EMFILE pauses them again). */
static void accept_resume(struct worker *w)
{
	if (w->ctx.now_ms < w->accept_resume_ms || inbound_closed(w))
		return;
	for (unsigned b = 0; b < w->nlisten; b++)
		if (w->accept_paused[b]) {
			w->accept_paused[b] = false;
			if (w->listen_fds[b] >= 0)
				arm_accept(w, b);
		}
}

static void on_accept(struct worker *w, const struct io_cqe *e)
{
	unsigned b = e->slot;
	bool current = e->gen == w->conf_gen;
	int err = e->res < 0 ? -e->res : 0;
	if (e->res >= 0)
		session_accept(&w->ctx, current ? b : binding_of(w->ctx.conf, e->res), e->res);
	else if (err != ECANCELED && err != EBADF)
		accept_error_log(w, err);
	bool exhausted = err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
	if (exhausted && current && b < w->nlisten && w->listen_fds[b] >= 0) {
		if (e->more)
			io_cancel(w->ctx.io, io_tag(IO_OP_ACCEPT, b, w->conf_gen));
		if (!w->accept_paused[b])
			accept_exhausted(w, b);
		return;
	}
	if (!e->more && current && !inbound_closed(w) && b < w->nlisten && w->listen_fds[b] >= 0 &&
	    !w->accept_paused[b])
		arm_accept(w, b);
}

static void on_recv(struct worker *w, const struct io_cqe *e)
{
	struct conn *c = conn_lookup(&w->conns, e->slot, e->gen);
	if (c)
		session_on_recv(&w->ctx, c, e->res, e->more, e->bid);
	else if (e->bid >= 0)
		io_buf_recycle(w->ctx.io, (unsigned)e->bid); /* nobody else holds it yet */
}

static void on_send(struct worker *w, const struct io_cqe *e)
{
	struct conn *c = conn_lookup(&w->conns, e->slot, e->gen);
	if (c)
		session_on_send(&w->ctx, c, e->res);
}

static void on_tarpit(struct worker *w, const struct io_cqe *e)
{
	struct conn *c = conn_lookup(&w->conns, e->slot, e->gen);
	if (c)
		session_on_tarpit(&w->ctx, c);
}

static void on_pace(struct worker *w, const struct io_cqe *e)
{
	struct conn *c = conn_lookup(&w->conns, e->slot, e->gen);
	if (c)
		session_on_pace(&w->ctx, c);
}

static void on_spool_write(struct worker *w, const struct io_cqe *e)
{
	int bid;
	struct spool_msg *m = spool_write_done(&w->spool, io_cqe_ptr(e), e->res, &bid);
	if (bid >= 0)
		wctx_buf_put(&w->ctx, bid);
	if (!m || !spool_msg_written(m))
		return;
	if (m->internal)
		queue_internal_written(&w->queue, m);
	else if (m->pickup)
		pickup_on_written(&w->ctx, m);
	else
		session_on_written(&w->ctx, m);
}

static void on_spool_sync(struct worker *w, const struct io_cqe *e)
{
	spool_commit_on_sync(&w->spool, e->res, e->tag);
}

static void on_out(struct worker *w, const struct io_cqe *e)
{
	deliver_on_io(w->ctx.dl, e);
}

static void on_read(struct worker *w, const struct io_cqe *e)
{
	queue_on_read(&w->queue, e);
}

static void check_requests(struct worker *w)
{
	if (!w->ctx.stopping && atomic_load(&w->stop_requested))
		begin_stop(w);
	else if (!w->ctx.stopping && !w->ctx.draining && atomic_load(&w->drain_requested))
		begin_drain(w);
}

static void on_tick(struct worker *w, const struct io_cqe *e)
{
	check_requests(w);
	each_conn(w, session_tick);
	deliver_tick(w->ctx.dl);
	queue_tick(&w->queue);
	accept_resume(w);
	arm_tick(w);
}

static void on_wake(struct worker *w, const struct io_cqe *e)
{
	check_requests(w);
	deliver_wake(w->ctx.dl);
	session_auth_results(&w->ctx);
	pickup_take(&w->ctx);
	if (atomic_exchange(&w->flush_requested, false))
		queue_flush_all(&w->queue);
	for (struct mailbox_node *n = mailbox_take(&w->ctl), *next; n; n = next) {
		next = n->next;
		queue_ctl(&w->queue, (struct qctl_part *)n);
	}
}

typedef void (*handler_fn)(struct worker *w, const struct io_cqe *e);

static const handler_fn handlers[IO_OP_MAX_] = {
	[IO_OP_ACCEPT] = on_accept,
	[IO_OP_RECV] = on_recv,
	[IO_OP_SEND] = on_send,
	[IO_OP_TICK] = on_tick,
	[IO_OP_WAKE] = on_wake,
	[IO_OP_SPOOL_WRITE] = on_spool_write,
	[IO_OP_SPOOL_SYNC] = on_spool_sync,
	[IO_OP_TARPIT] = on_tarpit,
	[IO_OP_OUT] = on_out,
	[IO_OP_READ] = on_read,
	[IO_OP_PACE] = on_pace,
};

static void dispatch(struct worker *w, const struct io_cqe *e)
{
	handler_fn h = e->op < IO_OP_MAX_ ? handlers[e->op] : NULL;
	if (h)
		h(w, e);
	else
		log_msg(LOG_ERROR, "event=io_error worker=%u error=\"completion with unknown op %u\"",
			w->ctx.id, e->op);
}

/* ---- the spool's and the buffers' word back ----------------------------- */

static void hook_durable(void *arg, struct spool_msg *m, bool ok)
{
	if (m->pickup)
		pickup_on_durable(arg, m, ok);
	else
		session_on_durable(arg, m, ok);
}

static void hook_flush_started(void *arg)
{
	struct wctx *x = arg;
	queue_flush_started(x->queue);
}

static void hook_flush_done(void *arg, bool ok)
{
	struct wctx *x = arg;
	queue_flush_done(x->queue, ok);
}

static void pin(struct worker *w)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n <= 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(w->ctx.id % (unsigned)n, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
		log_msg(LOG_WARN, "event=pin_failed worker=%u", w->ctx.id);
}

static int setup(struct worker *w)
{
	struct wctx *x = &w->ctx;
	struct io_params p = {.entries = IO_ENTRIES, .nbufs = BUF_COUNT, .bufsz = BUF_SIZE};
	x->io = io_open(w->backend, &p, w->err, sizeof(w->err));
	if (!x->io)
		return -1;
	x->peers = w->peers;
	if (x->peers)
		atomic_store(&x->peers[x->id], x->io);
	x->spool = &w->spool;
	x->queue = &w->queue;
	x->content = &w->content;
	x->conns = &w->conns;
	x->m = &w->m;
	x->buf_returned = session_buffers_returned;
	mailbox_init(&x->auth_done);
	mailbox_init(&x->pickup_in);
	mailbox_init(&w->ctl);
	w->accept_paused = calloc(w->nlisten ? w->nlisten : 1, sizeof(*w->accept_paused));
	/* Kept for the day descriptors run out (accept_exhausted). */
	w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (!w->accept_paused) {
		snprintf(w->err, sizeof(w->err), "out of memory");
		return -1;
	}
	x->buf_refs = calloc(BUF_COUNT, sizeof(*x->buf_refs));
	x->buf_size = BUF_SIZE;
	if (!x->buf_refs || conn_table_init(&w->conns, MAX_CONNS_PER_WORKER) < 0) {
		snprintf(w->err, sizeof(w->err), "out of memory");
		return -1;
	}
	struct spool_hooks h = {.durable = hook_durable, .flush_started = hook_flush_started,
				.flush_done = hook_flush_done, .arg = x};
	spool_worker_init(&w->spool, w->spool_shared, x->io, &h, &w->m);
	x->dl = deliver_new(x, queue_job_done_cb, &w->queue, w->err, sizeof(w->err));
	if (!x->dl)
		return -1;
	queue_init(&w->queue, x, deliver_submit, x->dl);
	x->now_ms = wctx_clock_ms();
	x->wall_ms = wctx_wall_ms();
	queue_recover(&w->queue, x->nworkers ? x->nworkers : 1);
	for (unsigned b = 0; b < w->nlisten; b++)
		arm_accept(w, b);
	arm_tick(w);
	return 0;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct wctx *x = &w->ctx;
	pin(w);
	if (setup(w) < 0) {
		atomic_store(&w->state, -1);
		return NULL;
	}
	atomic_store(&w->state, 1);
	log_batch_begin();
	struct io_cqe cqes[CQE_BATCH];
	for (;;) {
		log_batch_flush();
		int n = io_wait(x->io, cqes, CQE_BATCH);
		if (n < 0) {
			log_msg(LOG_ERROR, "event=io_error worker=%u error=\"%s\"", x->id,
				strerror(-n));
			break;
		}
		x->now_ms = wctx_clock_ms();
		x->wall_ms = wctx_wall_ms();
		x->slice_start_us = wctx_clock_us();
		x->slice_units = 0;
		for (int i = 0; i < n; i++)
			dispatch(w, &cqes[i]);
		/* Input left over by this turn or earlier ones, before the
		 * group commit so that what it completes is in it. The loop
		 * must not sleep while some is left: wake it. */
		if (session_run_deferred(x))
			io_wake(x->io);
		struct worker_reload *r = atomic_exchange(&w->reload, NULL);
		if (r)
			apply_reload(w, r);
		if (!x->stopping)
			queue_run(&w->queue);
		/* The next group commit starts once this turn's completions are
		 * all in: the fdatasync is submitted with the loop's next wait, so
		 * starting it earlier would only leave out messages whose writes
		 * complete later in the same turn. */
		spool_commit_start(&w->spool, x->now_ms, x->stopping || x->draining);
		bool quiet = w->conns.nconns == 0 && !w->spool.flushing &&
			     !spool_dirty(&w->spool) &&
			     !w->spool.pending_writes && !x->pickup_inflight && deliver_idle(x->dl) &&
			     queue_idle(&w->queue);
		/* A drain is over once only held messages are left: they
		 * stay in the spool, held, for the next start. */
		if (quiet && (x->stopping ||
			      (x->draining && metric_get(&w->m.queue_messages) == w->queue.nheld)))
			break;
	}
	log_batch_flush();
	struct metrics_totals t;
	struct worker_metrics *ms = &w->m;
	metrics_totals(&ms, 1, &t);
	log_msg(LOG_INFO,
		"event=worker_exit worker=%u connections=%llu messages=%llu rejected=%llu fsyncs=%llu flushes=%llu",
		x->id, (unsigned long long)t.connections, (unsigned long long)t.messages,
		(unsigned long long)t.rejected, (unsigned long long)t.fsyncs,
		(unsigned long long)t.dirsyncs);
	deliver_free(x->dl);
	x->dl = NULL;
	w->spool.stopping = true;
	w->held_left = w->queue.nheld;
	queue_free(&w->queue);
	refuse_ctl(w);
	spool_worker_free(&w->spool);
	content_worker_free(&w->content);
	struct worker_reload *r = atomic_exchange(&w->reload, NULL);
	if (r) {
		conf_unref(r->conf);
		free_reload(r, true);
	}
	log_batch_flush();
	atomic_store(&w->state, 2);
	return NULL;
}

int worker_start(struct worker *w)
{
	atomic_store(&w->state, 0);
	atomic_store(&w->stop_requested, false);
	int ret = pthread_create(&w->thread, NULL, worker_main, w);
	if (ret) {
		snprintf(w->err, sizeof(w->err), "pthread_create: %s", strerror(ret));
		return -1;
	}
	while (atomic_load(&w->state) == 0)
		usleep(1000);
	return atomic_load(&w->state) == 1 ? 0 : -1;
}

void worker_request_drain(struct worker *w)
{
	atomic_store(&w->drain_requested, true);
	io_wake(w->ctx.io);
}

void worker_request_stop(struct worker *w)
{
	atomic_store(&w->stop_requested, true);
	io_wake(w->ctx.io);
}

void worker_join(struct worker *w)
{
	pthread_join(w->thread, NULL);
	for (unsigned b = 0; b < w->nlisten; b++)
		if (w->listen_fds[b] >= 0)
			close(w->listen_fds[b]);
	/* No verifier answers into this worker any more. */
	authd_forget(w->ctx.authd, &w->ctx.auth_done);
	session_auth_discard(&w->ctx);
	mailbox_destroy(&w->ctx.auth_done);
	pickup_discard(&w->ctx);
	mailbox_destroy(&w->ctx.pickup_in);
	refuse_ctl(w);
	mailbox_destroy(&w->ctl);
	/* Closed here, not on the worker thread: other threads may still
	 * wake it until it is joined. */
	if (w->peers)
		atomic_store(&w->peers[w->ctx.id], NULL);
	if (w->ctx.io)
		io_close(w->ctx.io);
	w->ctx.io = NULL;
	conn_table_free(&w->conns);
	free(w->ctx.buf_refs);
	free(w->listen_fds);
	free(w->accept_paused);
	if (w->spare_fd >= 0)
		close(w->spare_fd);
	conf_unref(w->ctx.conf);
}
