/* Worker thread (see worker.h): ring setup, the completion loop, connection
 * slots with generations, the directory-fsync batch and the periodic tick
 * (timeouts, graceful stop). */
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "deliver.h"
#include "log.h"

#define RING_ENTRIES 4096
#define MAX_CONNS_PER_WORKER 65536
#define BUF_COUNT 512           /* provided receive buffers per worker */
#define BUF_SIZE (16 * 1024)
#define TICK_MS 250

uint64_t worker_clock_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t worker_clock_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Ids: 40 bits of milliseconds since 2020, 8 bits of worker, 16 bits of
 * counter; the base moves forward whenever the counter wraps, so ids stay
 * unique across workers and restarts. */
#define ID_EPOCH_MS 1577836800000ull

uint64_t worker_next_msgid(struct worker *w)
{
	if (w->id_counter > 0xffff) {
		uint64_t now = (uint64_t)queue_now_ms();
		w->id_base_ms = now > w->id_base_ms ? now : w->id_base_ms + 1;
		w->id_counter = 0;
	}
	uint64_t ms = (w->id_base_ms - ID_EPOCH_MS) & ((1ull << 40) - 1);
	return ms << 24 | (uint64_t)(w->id & 0xff) << 16 | w->id_counter++;
}

void worker_buf_hold(struct worker *w, int bid)
{
	w->buf_refs[bid]++;
}

/* The last holder gives the buffer back to the kernel; connections that
 * ran out of buffers resume. */
void worker_buf_put(struct worker *w, int bid)
{
	if (--w->buf_refs[bid])
		return;
	bufring_recycle(&w->br, (unsigned)bid);
	if (!w->nstarved)
		return;
	for (uint32_t i = 0; i < w->high_water && w->nstarved; i++) {
		struct conn *c = w->slots[i];
		if (c && c->recv_starved) {
			w->nstarved--;
			session_resume_recv(w, c);
		}
	}
}

struct conn *worker_conn_alloc(struct worker *w)
{
	if (w->nfree == 0)
		return NULL;
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	uint32_t slot = w->free_slots[--w->nfree];
	if (slot + 1 > w->high_water)
		w->high_water = slot + 1;
	c->slot = slot;
	c->gen = ++w->gens[slot];
	c->fd = -1;
	w->slots[slot] = c;
	w->nconns++;
	return c;
}

void worker_conn_release(struct worker *w, struct conn *c)
{
	w->slots[c->slot] = NULL;
	w->free_slots[w->nfree++] = c->slot;
	w->nconns--;
	free(c);
}

static struct conn *lookup(struct worker *w, uint64_t tag)
{
	uint32_t slot = ring_tag_slot(tag);
	if (slot >= w->nslots)
		return NULL;
	struct conn *c = w->slots[slot];
	return c && c->gen == ring_tag_gen(tag) ? c : NULL;
}

static bool push_ref(struct slotref **v, uint32_t *n, uint32_t *cap, struct slotref r)
{
	if (*n == *cap) {
		uint32_t nc = *cap ? *cap * 2 : 64;
		struct slotref *nv = realloc(*v, nc * sizeof(*nv));
		if (!nv)
			return false;
		*v = nv;
		*cap = nc;
	}
	(*v)[(*n)++] = r;
	return true;
}

static void commit_done(struct worker *w, bool ok);

/* Group commit: everything written since the last flush becomes durable
 * with this one; the next flush starts as soon as this one completes. */
/* A stored message joins a flush only once every write before it in its
 * segment is done (spool_msg_flushable): recovery stops at the first hole,
 * so an earlier message's write still in flight would hide this one. */
static bool ready_flushable(struct worker *w, struct slotref r)
{
	struct conn *c = r.slot < w->nslots ? w->slots[r.slot] : NULL;
	return !c || c->gen != r.gen || !c->smsg || spool_msg_flushable(c->smsg);
}

static void commit_start(struct worker *w)
{
	/* The batch gets what is flushable now; the rest waits in ready. */
	uint32_t keep = 0;
	w->nbatch = 0;
	for (uint32_t i = 0; i < w->nready; i++) {
		struct slotref r = w->commit_ready[i];
		if (ready_flushable(w, r)) {
			if (!push_ref(&w->commit_batch, &w->nbatch, &w->batch_cap, r))
				w->commit_ready[keep++] = r;
		} else {
			w->commit_ready[keep++] = r;
		}
	}
	w->nready = keep;
	if (w->nbatch == 0 && !spool_dirty(&w->spool))
		return; /* the next loop turn tries again */
	w->flushing = true;
	queue_flush_started(&w->queue);
	unsigned n = spool_sync_start(&w->spool, ring_tag(OP_SPOOL_SYNC, 0, 0));
	metric_add(&w->m.fsyncs, n);
	metric_add(&w->m.dirsyncs, 1);
	if (n == 0)
		commit_done(w, true);
}

void worker_commit_add(struct worker *w, struct conn *c)
{
	c->inflight++;
	if (!push_ref(&w->commit_ready, &w->nready, &w->ready_cap,
		      (struct slotref){c->slot, c->gen})) {
		session_on_stored(w, c, false);
		return;
	}
}

static void commit_done(struct worker *w, bool ok)
{
	uint32_t n = w->nbatch;
	w->nbatch = 0;
	w->flushing = false;
	metric_add(&w->m.flushed_messages, n);
	for (uint32_t i = 0; i < n; i++) {
		struct slotref r = w->commit_batch[i];
		struct conn *c = r.slot < w->nslots ? w->slots[r.slot] : NULL;
		if (c && c->gen == r.gen)
			session_on_stored(w, c, ok && !spool_msg_error(c->smsg));
	}
	queue_flush_done(&w->queue, ok);
}

static void arm_accept(struct worker *w, unsigned b)
{
	ring_accept_multishot(&w->ring, w->listen_fds[b],
			      ring_tag(OP_ACCEPT, b, w->conf_gen));
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
		ring_cancel(&w->ring, ring_tag(OP_ACCEPT, b, w->conf_gen));
		close_listener(w->listen_fds[b]);
		w->listen_fds[b] = -1;
	}
}

static void apply_reload(struct worker *w, struct worker_reload *r)
{
	int *fds = malloc((r->nlisten ? r->nlisten : 1) * sizeof(*fds));
	if (!fds) {
		log_msg(LOG_ERROR, "event=reload worker=%u status=failed error=\"out of memory\"", w->id);
		for (unsigned b = 0; b < r->nlisten; b++)
			if (r->new_fd[b] >= 0)
				close(r->new_fd[b]);
		conf_unref(r->conf);
		goto out;
	}
	for (unsigned b = 0; b < r->nlisten; b++) {
		int k = r->keep_from[b];
		fds[b] = k >= 0 && (unsigned)k < w->nlisten ? w->listen_fds[k] : r->new_fd[b];
		if (k >= 0 && (unsigned)k < w->nlisten)
			w->listen_fds[k] = -2; /* moved: neither close nor re-arm */
	}
	for (unsigned b = 0; b < w->nlisten; b++) {
		if (w->listen_fds[b] >= 0) {
			ring_cancel(&w->ring, ring_tag(OP_ACCEPT, b, w->conf_gen));
			close_listener(w->listen_fds[b]);
		} else if (w->listen_fds[b] == -2) {
			ring_cancel(&w->ring, ring_tag(OP_ACCEPT, b, w->conf_gen));
		}
	}
	free(w->listen_fds);
	w->listen_fds = fds;
	w->nlisten = r->nlisten;
	conf_unref(w->conf);
	w->conf = r->conf;
	w->conf_gen++;
	if (w->stopping)
		close_listeners(w);
	else
		for (unsigned b = 0; b < w->nlisten; b++)
			if (w->listen_fds[b] >= 0)
				arm_accept(w, b);
out:
	free(r->keep_from);
	free(r->new_fd);
	free(r);
}

static void arm_wake(struct worker *w)
{
	ring_read(&w->ring, w->wake_fd, &w->wake_buf, sizeof(w->wake_buf),
		  ring_tag(OP_WAKE, 0, 0));
}

void worker_poke(struct worker *w)
{
	uint64_t one = 1;
	ssize_t n = write(w->wake_fd, &one, sizeof(one));
	(void)n;
}

void worker_reload(struct worker *w, struct worker_reload *r)
{
	atomic_store(&w->reload, r);
	worker_poke(w);
}

void worker_flush_queue(struct worker *w)
{
	atomic_store(&w->flush_requested, true);
	worker_poke(w);
}

bool worker_reload_pending(struct worker *w)
{
	return atomic_load(&w->reload) != NULL;
}

static void arm_tick(struct worker *w)
{
	w->tick.tv_sec = 0;
	w->tick.tv_nsec = TICK_MS * 1000000LL;
	ring_timeout(&w->ring, &w->tick, ring_tag(OP_TICK, 0, 0));
}

static void begin_stop(struct worker *w)
{
	w->stopping = true;
	w->stop_deadline_ms = w->now_ms + w->conf->shutdown_grace_ms;
	close_listeners(w);
	deliver_stop(w);
	/* Idle sessions get their 421 now, not at the next tick. */
	for (uint32_t i = 0; i < w->high_water; i++)
		if (w->slots[i])
			session_tick(w, w->slots[i]);
}

static void on_tick(struct worker *w)
{
	if (!w->stopping && atomic_load(&w->stop_requested))
		begin_stop(w);
	for (uint32_t i = 0; i < w->high_water; i++)
		if (w->slots[i])
			session_tick(w, w->slots[i]);
	deliver_tick(w);
	queue_tick(&w->queue);
	arm_tick(w);
}

static void dispatch(struct worker *w, struct io_uring_cqe *cqe)
{
	uint64_t tag = io_uring_cqe_get_data64(cqe);
	struct conn *c;
	switch (ring_tag_op(tag)) {
	case OP_ACCEPT: {
		unsigned b = ring_tag_slot(tag);
		bool current = ring_tag_gen(tag) == w->conf_gen;
		if (cqe->res >= 0)
			session_accept(w, current ? b : binding_of(w->conf, cqe->res), cqe->res);
		else if (cqe->res != -ECANCELED && cqe->res != -EBADF)
			log_msg(LOG_WARN, "event=accept_error error=\"%s\"", strerror(-cqe->res));
		if (!(cqe->flags & IORING_CQE_F_MORE) && current && !w->stopping &&
		    w->listen_fds[b] >= 0)
			arm_accept(w, b);
		break;
	}
	case OP_RECV:
		if ((c = lookup(w, tag)))
			session_on_recv(w, c, cqe->res, cqe->flags);
		else if (cqe->flags & IORING_CQE_F_BUFFER)
			bufring_recycle(&w->br, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		/* (A buffer is recycled directly here: nobody else holds it yet.) */
		break;
	case OP_SEND:
		if ((c = lookup(w, tag)))
			session_on_send(w, c, cqe->res);
		break;
	case OP_SPOOL_WRITE: {
		int bid;
		struct spool_msg *m = spool_write_done(&w->spool, ring_tag_to_ptr(tag),
						       cqe->res, &bid);
		if (bid >= 0)
			worker_buf_put(w, bid);
		if (m && spool_msg_written(m)) {
			if (m->internal)
				queue_internal_written(&w->queue, m);
			else if (((struct conn *)m->owner)->storing)
				session_on_written(w, m->owner);
		}
		break;
	}
	case OP_OUT_POLL:
		deliver_on_poll(ring_tag_to_ptr(tag));
		break;
	case OP_TARPIT:
		if ((c = lookup(w, tag)))
			session_on_tarpit(w, c);
		break;
	case OP_SPOOL_SYNC: {
		bool ok;
		if (spool_sync_done(&w->spool, cqe->res, &ok))
			commit_done(w, ok);
		break;
	}
	case OP_TICK:
		on_tick(w);
		break;
	case OP_WAKE:
		if (!w->stopping && atomic_load(&w->stop_requested))
			begin_stop(w);
		deliver_wake(w);
		if (atomic_exchange(&w->flush_requested, false))
			queue_flush_all(&w->queue);
		arm_wake(w);
		break;
	default:
		break;
	}
}

static void pin(struct worker *w)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n <= 0)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(w->id % (unsigned)n, &set);
	if (pthread_setaffinity_np(pthread_self(), sizeof(set), &set) != 0)
		log_msg(LOG_WARN, "event=pin_failed worker=%u", w->id);
}

static int setup(struct worker *w)
{
	if (ring_init(&w->ring, RING_ENTRIES, w->err, sizeof(w->err)) < 0)
		return -1;
	int ret = bufring_init(&w->br, &w->ring.uring, 0, BUF_COUNT, BUF_SIZE);
	if (ret < 0) {
		snprintf(w->err, sizeof(w->err),
			 "io_uring provided buffer ring unavailable (%s)", strerror(-ret));
		return -1;
	}
	spool_worker_init(&w->spool, w->spool_shared, &w->ring);
	queue_init(&w->queue, w);
	if (deliver_init(w) < 0)
		return -1;
	w->buf_refs = calloc(BUF_COUNT, sizeof(*w->buf_refs));
	w->nslots = MAX_CONNS_PER_WORKER;
	w->slots = calloc(w->nslots, sizeof(*w->slots));
	w->gens = calloc(w->nslots, sizeof(*w->gens));
	w->free_slots = calloc(w->nslots, sizeof(*w->free_slots));
	if (!w->slots || !w->gens || !w->free_slots || !w->buf_refs) {
		snprintf(w->err, sizeof(w->err), "out of memory");
		return -1;
	}
	/* Hand out low slots first so the tick scan stays short. */
	for (uint32_t i = 0; i < w->nslots; i++)
		w->free_slots[i] = w->nslots - 1 - i;
	w->nfree = w->nslots;
	w->id_base_ms = (uint64_t)queue_now_ms();
	w->now_ms = worker_clock_ms();
	queue_recover(&w->queue, w->nworkers ? w->nworkers : 1);
	for (unsigned b = 0; b < w->nlisten; b++)
		arm_accept(w, b);
	arm_tick(w);
	arm_wake(w);
	return 0;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	pin(w);
	if (setup(w) < 0) {
		atomic_store(&w->state, -1);
		return NULL;
	}
	atomic_store(&w->state, 1);
	log_batch_begin();
	for (;;) {
		log_batch_flush();
		int ret = ring_submit_wait(&w->ring);
		if (ret < 0 && ret != -ETIME && ret != -EBUSY) {
			log_msg(LOG_ERROR, "event=ring_error worker=%u error=\"%s\"", w->id,
				strerror(-ret));
			break;
		}
		w->now_ms = worker_clock_ms();
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&w->ring.uring, head, cqe) {
			dispatch(w, cqe);
			seen++;
		}
		io_uring_cq_advance(&w->ring.uring, seen);
		struct worker_reload *r = atomic_exchange(&w->reload, NULL);
		if (r)
			apply_reload(w, r);
		if (w->queue.n && !w->stopping) {
			int64_t now = queue_now_ms();
			if (w->queue.heap[0]->next_ms <= now)
				queue_run(&w->queue, now);
		}
		/* The next group commit starts once this turn's completions are
		 * all in: the fdatasync is submitted with the loop's next wait, so
		 * starting it earlier would only leave out messages whose writes
		 * complete later in the same turn. It takes the stored messages
		 * that are flushable, and the state records and notices. */
		if (!w->flushing && (w->nready || spool_dirty(&w->spool)))
			commit_start(w);
		if (w->stopping && w->nconns == 0 && !w->flushing && !w->spool.pending_writes &&
		    deliver_idle(w))
			break;
	}
	log_batch_flush();
	struct metrics_totals t;
	metrics_totals(w, 1, &t);
	log_msg(LOG_INFO,
		"event=worker_exit worker=%u connections=%llu messages=%llu rejected=%llu fsyncs=%llu flushes=%llu",
		w->id, (unsigned long long)t.connections, (unsigned long long)t.messages,
		(unsigned long long)t.rejected, (unsigned long long)t.fsyncs,
		(unsigned long long)t.dirsyncs);
	deliver_free(w);
	w->spool.stopping = true;
	queue_free(&w->queue);
	spool_worker_free(&w->spool);
	bufring_free(&w->br, &w->ring.uring);
	ring_exit(&w->ring);
	struct worker_reload *r = atomic_exchange(&w->reload, NULL);
	if (r) {
		for (unsigned b = 0; b < r->nlisten; b++)
			if (r->new_fd[b] >= 0)
				close(r->new_fd[b]);
		conf_unref(r->conf);
		free(r->keep_from);
		free(r->new_fd);
		free(r);
	}
	log_batch_flush();
	atomic_store(&w->state, 2);
	return NULL;
}

int worker_start(struct worker *w)
{
	w->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (w->wake_fd < 0) {
		snprintf(w->err, sizeof(w->err), "eventfd: %s", strerror(errno));
		return -1;
	}
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

void worker_request_stop(struct worker *w)
{
	atomic_store(&w->stop_requested, true);
	worker_poke(w);
}

void worker_join(struct worker *w)
{
	pthread_join(w->thread, NULL);
	for (unsigned b = 0; b < w->nlisten; b++)
		if (w->listen_fds[b] >= 0)
			close(w->listen_fds[b]);
	free(w->slots);
	free(w->gens);
	free(w->free_slots);
	free(w->commit_ready);
	free(w->commit_batch);
	free(w->buf_refs);
	free(w->listen_fds);
	conf_unref(w->conf);
	close(w->wake_fd);
}
