/* The epoll backend of the I/O interface (io.h), where io_uring cannot be
 * had: level-triggered socket readiness, timers in a min-heap, and whatever
 * may wait on the disk (file I/O, sendfile) on one helper thread. Hands out
 * completions only from io_wait, as io_uring does; knows nothing of tags. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "io_backend.h"
#include "log.h"

/* Connections taken per listener wake-up: enough to drain a burst, few
 * enough that the other sockets of the loop are not kept waiting. */
#define EP_ACCEPT_BATCH 64
#define EP_EVENTS 256
/* The fd table grows by pages that never move: io_cancel's index points
 * into them. */
#define EP_PAGE_SHIFT 8
#define EP_PAGE (1u << EP_PAGE_SHIFT)
/* What the kernel moves at most in one read or write: keeps res an int. */
#define EP_MAX_RW 0x7ffff000u

enum ep_kind {
	EP_NONE,
	/* input side of an fd */
	EP_ACCEPT,
	EP_RECV,
	EP_RECV_ONCE,
	EP_RECV_INTO,
	/* output side */
	EP_SEND,
	EP_CONNECT,
	EP_SENDFILE_WAIT,  /* the socket was full: waits for EPOLLOUT */
	EP_SENDFILE_BUSY,  /* the helper has it */
	EP_TIMER,
};

/* A pending operation io_cancel can find by its tag. */
struct ep_pending {
	uint64_t tag;
	struct ep_pending *hnext;
	enum ep_kind kind;
	int fd;                 /* its fd-table entry; -1 for a timer */
};

struct ep_job;

struct ep_fdent {
	struct ep_pending in, out;
	uint32_t events;        /* what epoll watches; 0: not in the set */
	void *in_buf;           /* recv_into */
	size_t in_len;
	const void *out_buf;    /* send */
	size_t out_len;
	struct ep_job *out_job; /* sendfile */
};

struct ep_timer {
	struct ep_pending p;    /* first: a found pending record is its timer */
	uint64_t due_ns;
	uint64_t seq;           /* equal deadlines fire in submission order */
	unsigned heap_at;
};

enum ep_job_kind { EP_JOB_WRITEV, EP_JOB_READ, EP_JOB_FSYNC, EP_JOB_SENDFILE };

/* Work for the helper thread. Only the loop thread touches a job while
 * it is not on the helper's list, and cancelled never leaves the loop. */
struct ep_job {
	struct ep_job *next;
	enum ep_job_kind kind;
	int fd;                 /* the file, or sendfile's socket */
	int file;               /* sendfile's file */
	const struct iovec *iov;
	unsigned niov;
	void *buf;
	size_t len;
	uint64_t off;
	bool datasync;
	bool cancelled;         /* sendfile: io_cancel came while the helper had it */
	uint64_t tag;
	int res;
};

struct ep_cqe {
	uint64_t tag;
	int res;
	int bid;
	bool more;
};

struct io_ep {
	struct io io;
	int epfd, wake_fd, done_fd;
	/* fd table */
	struct ep_fdent **pages;
	unsigned npages;
	/* io_cancel's index: tag -> pending operation */
	struct ep_pending **hash;
	unsigned hash_bits, hash_count;
	/* timers */
	struct ep_timer **heap;
	unsigned nheap, heap_cap;
	uint64_t timer_seq;
	/* provided receive buffers */
	char *bufs;
	unsigned nbufs, bufsz;
	unsigned *free_bids;    /* a stack */
	unsigned nfree;
	/* completions not yet handed out: a ring, capacity a power of two */
	struct ep_cqe *q;
	unsigned q_head, q_len, q_cap;
	/* the helper thread */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t helper;
	bool helper_started;
	bool stop;
	struct ep_job *todo, **todo_tail;
	struct ep_job *done, **done_tail;
};

static struct io_ep *ep(struct io *io)
{
	return (struct io_ep *)io;
}

static uint64_t ep_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* --- completions --- */

static bool ep_post(struct io_ep *e, uint64_t tag, int res, bool more, int bid)
{
	if (e->q_len == e->q_cap) {
		unsigned cap = e->q_cap ? e->q_cap * 2 : 64;
		struct ep_cqe *q = malloc(cap * sizeof(*q));
		if (!q) {
			log_msg(LOG_ERROR, "event=io_error error=\"out of memory: a completion is lost\"");
			return false;
		}
		for (unsigned i = 0; i < e->q_len; i++)
			q[i] = e->q[(e->q_head + i) & (e->q_cap - 1)];
		free(e->q);
		e->q = q;
		e->q_cap = cap;
		e->q_head = 0;
	}
	e->q[(e->q_head + e->q_len++) & (e->q_cap - 1)] =
		(struct ep_cqe){.tag = tag, .res = res, .bid = bid, .more = more};
	return true;
}

static unsigned ep_deliver(struct io_ep *e, struct io_cqe *out, unsigned max)
{
	unsigned n = 0;
	for (; n < max && e->q_len; n++, e->q_len--) {
		const struct ep_cqe *c = &e->q[e->q_head];
		io_cqe_decode(&out[n], c->tag, c->res, c->more, c->bid);
		e->q_head = (e->q_head + 1) & (e->q_cap - 1);
	}
	return n;
}

/* --- io_cancel's index --- */

static unsigned ep_hash_slot(unsigned bits, uint64_t tag)
{
	return (unsigned)((tag * 0x9e3779b97f4a7c15ull) >> (64 - bits));
}

static void ep_hash_grow(struct io_ep *e)
{
	unsigned bits = e->hash_bits + 1;
	struct ep_pending **h = calloc((size_t)1 << bits, sizeof(*h));
	if (!h)
		return; /* longer chains, still correct */
	for (unsigned i = 0; i < 1u << e->hash_bits; i++)
		for (struct ep_pending *p = e->hash[i], *next; p; p = next) {
			next = p->hnext;
			unsigned s = ep_hash_slot(bits, p->tag);
			p->hnext = h[s];
			h[s] = p;
		}
	free(e->hash);
	e->hash = h;
	e->hash_bits = bits;
}

static void ep_hash_add(struct io_ep *e, struct ep_pending *p)
{
	if (e->hash_count >= 1u << e->hash_bits && e->hash_bits < 30)
		ep_hash_grow(e);
	unsigned s = ep_hash_slot(e->hash_bits, p->tag);
	p->hnext = e->hash[s];
	e->hash[s] = p;
	e->hash_count++;
}

static void ep_hash_del(struct io_ep *e, struct ep_pending *p)
{
	struct ep_pending **pp = &e->hash[ep_hash_slot(e->hash_bits, p->tag)];
	while (*pp != p)
		pp = &(*pp)->hnext;
	*pp = p->hnext;
	p->hnext = NULL;
	e->hash_count--;
}

static struct ep_pending *ep_hash_find(struct io_ep *e, uint64_t tag)
{
	struct ep_pending *p = e->hash[ep_hash_slot(e->hash_bits, tag)];
	while (p && p->tag != tag)
		p = p->hnext;
	return p;
}

/* --- the fd table --- */

static struct ep_fdent *ep_fd(struct io_ep *e, int fd, bool create)
{
	unsigned pg = (unsigned)fd >> EP_PAGE_SHIFT;
	if (pg >= e->npages) {
		if (!create)
			return NULL;
		unsigned n = e->npages ? e->npages : 4;
		while (n <= pg)
			n *= 2;
		struct ep_fdent **pages = realloc(e->pages, n * sizeof(*pages));
		if (!pages)
			return NULL;
		memset(pages + e->npages, 0, (n - e->npages) * sizeof(*pages));
		e->pages = pages;
		e->npages = n;
	}
	if (!e->pages[pg]) {
		if (!create)
			return NULL;
		struct ep_fdent *page = calloc(EP_PAGE, sizeof(*page));
		if (!page)
			return NULL;
		for (unsigned i = 0; i < EP_PAGE; i++)
			page[i].in.fd = page[i].out.fd = (int)(pg << EP_PAGE_SHIFT | i);
		e->pages[pg] = page;
	}
	return &e->pages[pg][fd & (EP_PAGE - 1)];
}

/* Claims a side of fd for an operation; NULL (with a completion posted)
 * when it cannot be had. */
static struct ep_fdent *ep_claim(struct io_ep *e, int fd, bool input, enum ep_kind kind,
				 uint64_t tag)
{
	struct ep_fdent *f = fd >= 0 ? ep_fd(e, fd, true) : NULL;
	if (!f) {
		ep_post(e, tag, fd < 0 ? -EBADF : -ENOMEM, false, -1);
		return NULL;
	}
	struct ep_pending *p = input ? &f->in : &f->out;
	if (p->kind != EP_NONE) {
		/* The table holds one operation per side: a caller that queues
		 * a second is wrong, as its bytes could overtake the first's. */
		assert(!"two operations pending on one side of an fd");
		ep_post(e, tag, -EBUSY, false, -1);
		return NULL;
	}
	p->kind = kind;
	p->tag = tag;
	ep_hash_add(e, p);
	return f;
}

static void ep_unclaim(struct io_ep *e, struct ep_pending *p)
{
	ep_hash_del(e, p);
	p->kind = EP_NONE;
}

static void ep_finish(struct io_ep *e, struct ep_pending *p, int res)
{
	uint64_t tag = p->tag;
	ep_unclaim(e, p);
	ep_post(e, tag, res, false, -1);
}

static uint32_t ep_wanted(const struct ep_fdent *f)
{
	uint32_t ev = f->in.kind != EP_NONE ? EPOLLIN : 0;
	if (f->out.kind == EP_SEND || f->out.kind == EP_CONNECT ||
	    f->out.kind == EP_SENDFILE_WAIT)
		ev |= EPOLLOUT;
	return ev;
}

/* Makes epoll watch what fd's pending operations wait for, and nothing
 * else: a readable fd nobody reads must not keep epoll_wait returning. */
static void ep_watch(struct io_ep *e, int fd, struct ep_fdent *f)
{
	uint32_t want = ep_wanted(f);
	if (want == f->events)
		return;
	struct epoll_event ev = {.events = want, .data.fd = fd};
	if (!want) {
		/* Fails only when the fd was closed, which left the set. */
		epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, &ev);
		f->events = 0;
		return;
	}
	int ret = epoll_ctl(e->epfd, f->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
	/* The fd was closed and its number reused behind the table's back. */
	if (ret < 0 && errno == ENOENT)
		ret = epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev);
	else if (ret < 0 && errno == EEXIST)
		ret = epoll_ctl(e->epfd, EPOLL_CTL_MOD, fd, &ev);
	if (ret == 0) {
		f->events = want;
		return;
	}
	/* Not pollable (closed, not a socket): what waits on it fails now
	 * rather than never. */
	int err = -errno;
	f->events = 0;
	if (f->in.kind != EP_NONE)
		ep_finish(e, &f->in, err);
	if (f->out.kind == EP_SENDFILE_WAIT) {
		free(f->out_job);
		f->out_job = NULL;
	}
	if (f->out.kind != EP_NONE && f->out.kind != EP_SENDFILE_BUSY)
		ep_finish(e, &f->out, err);
}

/* accept, connect and sendfile need a non-blocking socket (send and recv
 * say MSG_DONTWAIT). Checked on each of those calls rather than once per
 * fd: a closed fd's number comes back as another socket. */
static int ep_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

static bool ep_again(int err)
{
	return err == EAGAIN || err == EWOULDBLOCK || err == EINTR;
}

/* --- timers: a binary min-heap on (due, seq) --- */

static bool ep_timer_before(const struct ep_timer *a, const struct ep_timer *b)
{
	return a->due_ns != b->due_ns ? a->due_ns < b->due_ns : a->seq < b->seq;
}

static void ep_heap_set(struct io_ep *e, unsigned i, struct ep_timer *t)
{
	e->heap[i] = t;
	t->heap_at = i;
}

static void ep_heap_up(struct io_ep *e, unsigned i)
{
	struct ep_timer *t = e->heap[i];
	while (i > 0 && ep_timer_before(t, e->heap[(i - 1) / 2])) {
		ep_heap_set(e, i, e->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	ep_heap_set(e, i, t);
}

static void ep_heap_down(struct io_ep *e, unsigned i)
{
	struct ep_timer *t = e->heap[i];
	for (;;) {
		unsigned c = 2 * i + 1;
		if (c >= e->nheap)
			break;
		if (c + 1 < e->nheap && ep_timer_before(e->heap[c + 1], e->heap[c]))
			c++;
		if (!ep_timer_before(e->heap[c], t))
			break;
		ep_heap_set(e, i, e->heap[c]);
		i = c;
	}
	ep_heap_set(e, i, t);
}

static void ep_heap_remove(struct io_ep *e, struct ep_timer *t)
{
	unsigned i = t->heap_at;
	struct ep_timer *last = e->heap[--e->nheap];
	if (i == e->nheap)
		return;
	ep_heap_set(e, i, last);
	ep_heap_up(e, i);
	ep_heap_down(e, last->heap_at);
}

static void ep_fire_timers(struct io_ep *e)
{
	if (!e->nheap)
		return;
	uint64_t now = ep_now_ns();
	while (e->nheap && e->heap[0]->due_ns <= now) {
		struct ep_timer *t = e->heap[0];
		ep_heap_remove(e, t);
		ep_hash_del(e, &t->p);
		ep_post(e, t->p.tag, -ETIME, false, -1);
		free(t);
	}
}

/* epoll_wait's timeout: until the earliest timer, rounded up so that
 * a wake-up never comes before it is due. */
static int ep_timer_wait_ms(struct io_ep *e)
{
	if (!e->nheap)
		return -1;
	uint64_t now = ep_now_ns(), due = e->heap[0]->due_ns;
	if (due <= now)
		return 0;
	uint64_t ms = (due - now + 999999) / 1000000;
	return ms > INT_MAX ? INT_MAX : (int)ms;
}

/* --- the helper thread --- */

static int ep_run_writev(const struct ep_job *j)
{
	const struct iovec *iov = j->iov;
	struct iovec *own = NULL; /* a copy, once a write stopped inside an iovec */
	unsigned n = j->niov;
	size_t done = 0;
	int res = 0;
	while (n && done < EP_MAX_RW) {
		ssize_t w = pwritev(j->fd, iov, (int)n, (off_t)(j->off + done));
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && !done)
			res = -errno;
		if (w <= 0)
			break;
		done += (size_t)w;
		size_t left = (size_t)w;
		while (n && left >= iov->iov_len) {
			left -= iov->iov_len;
			iov++;
			n--;
		}
		if (!n || !left)
			continue;
		if (!own) {
			own = malloc(n * sizeof(*own));
			if (!own)
				break; /* short: the caller sees how far it got */
			memcpy(own, iov, n * sizeof(*own));
			iov = own;
		}
		struct iovec *cur = own + (iov - own);
		cur->iov_base = (char *)cur->iov_base + left;
		cur->iov_len -= left;
	}
	free(own);
	return done ? (int)(done < EP_MAX_RW ? done : EP_MAX_RW) : res;
}

static int ep_run_read(const struct ep_job *j)
{
	size_t want = j->len < EP_MAX_RW ? j->len : EP_MAX_RW, done = 0;
	while (done < want) {
		ssize_t r = pread(j->fd, (char *)j->buf + done, want - done, (off_t)(j->off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && !done)
			return -errno;
		if (r <= 0)
			break;
		done += (size_t)r;
	}
	return (int)done;
}

static int ep_run(const struct ep_job *j)
{
	switch (j->kind) {
	case EP_JOB_WRITEV:
		return ep_run_writev(j);
	case EP_JOB_READ:
		return ep_run_read(j);
	case EP_JOB_FSYNC:
		return (j->datasync ? fdatasync(j->fd) : fsync(j->fd)) < 0 ? -errno : 0;
	case EP_JOB_SENDFILE: {
		/* The socket is non-blocking: only the file side may wait. */
		off_t off = (off_t)j->off;
		size_t len = j->len < EP_MAX_RW ? j->len : EP_MAX_RW;
		ssize_t n;
		do
			n = sendfile(j->fd, j->file, &off, len);
		while (n < 0 && errno == EINTR);
		return n >= 0 ? (int)n : errno == EWOULDBLOCK ? -EAGAIN : -errno;
	}
	}
	return -EINVAL;
}

static void *ep_helper_main(void *arg)
{
	struct io_ep *e = arg;
	pthread_mutex_lock(&e->lock);
	for (;;) {
		while (!e->todo && !e->stop)
			pthread_cond_wait(&e->cond, &e->lock);
		if (e->stop)
			break;
		struct ep_job *j = e->todo;
		e->todo = j->next;
		if (!e->todo)
			e->todo_tail = &e->todo;
		pthread_mutex_unlock(&e->lock);
		j->res = ep_run(j);
		j->next = NULL;
		pthread_mutex_lock(&e->lock);
		/* One wake-up per batch: the loop takes the whole list after
		 * reading the eventfd. */
		bool first = !e->done;
		*e->done_tail = j;
		e->done_tail = &j->next;
		if (first) {
			uint64_t one = 1;
			ssize_t w = write(e->done_fd, &one, sizeof(one));
			(void)w;
		}
	}
	pthread_mutex_unlock(&e->lock);
	return NULL;
}

static void ep_helper_push(struct io_ep *e, struct ep_job *j)
{
	j->next = NULL;
	pthread_mutex_lock(&e->lock);
	*e->todo_tail = j;
	e->todo_tail = &j->next;
	pthread_cond_signal(&e->cond);
	pthread_mutex_unlock(&e->lock);
}

static void ep_drain(int fd)
{
	uint64_t v;
	ssize_t r = read(fd, &v, sizeof(v));
	(void)r;
}

static void ep_reap_helper(struct io_ep *e)
{
	ep_drain(e->done_fd);
	pthread_mutex_lock(&e->lock);
	struct ep_job *j = e->done;
	e->done = NULL;
	e->done_tail = &e->done;
	pthread_mutex_unlock(&e->lock);
	for (struct ep_job *next; j; j = next) {
		next = j->next;
		if (j->kind == EP_JOB_SENDFILE) {
			struct ep_fdent *f = ep_fd(e, j->fd, false);
			assert(f && f->out.kind == EP_SENDFILE_BUSY && f->out_job == j);
			if (j->res == -EAGAIN && !j->cancelled) {
				f->out.kind = EP_SENDFILE_WAIT;
				ep_watch(e, j->fd, f);
				continue;
			}
			f->out_job = NULL;
			ep_finish(e, &f->out, j->res == -EAGAIN ? -ECANCELED : j->res);
		} else {
			ep_post(e, j->tag, j->res, false, -1);
		}
		free(j);
	}
}

static struct ep_job *ep_job_new(struct io_ep *e, enum ep_job_kind kind, int fd, uint64_t tag)
{
	struct ep_job *j = calloc(1, sizeof(*j));
	if (!j) {
		ep_post(e, tag, -ENOMEM, false, -1);
		return NULL;
	}
	j->kind = kind;
	j->fd = fd;
	j->tag = tag;
	return j;
}

/* --- readiness --- */

static void ep_input(struct io_ep *e, int fd, struct ep_fdent *f)
{
	switch (f->in.kind) {
	case EP_ACCEPT:
		for (int i = 0; i < EP_ACCEPT_BATCH; i++) {
			int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
			if (c >= 0) {
				if (!ep_post(e, f->in.tag, c, true, -1))
					close(c);
				continue;
			}
			/* A connection reset before it was taken is not the
			 * listener's failure. */
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				ep_finish(e, &f->in, -errno);
			break;
		}
		break;
	case EP_RECV:
	case EP_RECV_ONCE: {
		if (!e->nfree) {
			ep_finish(e, &f->in, -ENOBUFS);
			break;
		}
		/* One recv per wake-up: a fast sender does not starve the rest. */
		unsigned bid = e->free_bids[--e->nfree];
		ssize_t n = recv(fd, e->bufs + (size_t)bid * e->bufsz, e->bufsz, MSG_DONTWAIT);
		if (n > 0 && f->in.kind == EP_RECV_ONCE) {
			uint64_t tag = f->in.tag;
			ep_unclaim(e, &f->in);
			if (ep_post(e, tag, (int)n, false, (int)bid))
				break;
			e->free_bids[e->nfree++] = bid;
			ep_post(e, tag, -ENOMEM, false, -1);
			break;
		}
		if (n > 0 && ep_post(e, f->in.tag, (int)n, true, (int)bid))
			break;
		int err = errno;
		e->free_bids[e->nfree++] = bid;
		if (n == 0)
			ep_finish(e, &f->in, 0);
		else if (n < 0 && !ep_again(err))
			ep_finish(e, &f->in, -err);
		break;
	}
	case EP_RECV_INTO: {
		ssize_t n = recv(fd, f->in_buf, f->in_len, MSG_DONTWAIT);
		if (n < 0 && ep_again(errno))
			break;
		ep_finish(e, &f->in, n < 0 ? -errno : (int)n);
		break;
	}
	default:
		break;
	}
}

static void ep_output(struct io_ep *e, int fd, struct ep_fdent *f)
{
	switch (f->out.kind) {
	case EP_SEND: {
		ssize_t n = send(fd, f->out_buf, f->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0 && ep_again(errno))
			break;
		ep_finish(e, &f->out, n < 0 ? -errno : (int)n);
		break;
	}
	case EP_CONNECT: {
		int soerr = 0;
		socklen_t sl = sizeof(soerr);
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
			soerr = errno;
		ep_finish(e, &f->out, -soerr);
		break;
	}
	case EP_SENDFILE_WAIT:
		f->out.kind = EP_SENDFILE_BUSY;
		ep_helper_push(e, f->out_job);
		break;
	default:
		break;
	}
}

static void ep_event(struct io_ep *e, int fd, uint32_t ev)
{
	if (fd == e->wake_fd) {
		ep_drain(fd);
		ep_post(e, io_tag(IO_OP_WAKE, 0, 0), 0, false, -1);
		return;
	}
	if (fd == e->done_fd) {
		ep_reap_helper(e);
		return;
	}
	struct ep_fdent *f = ep_fd(e, fd, false);
	if (!f)
		return;
	/* Errors and hang-ups go to whichever side waits: its syscall
	 * reports them and ends it. */
	if (f->in.kind != EP_NONE && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)))
		ep_input(e, fd, f);
	if ((ep_wanted(f) & EPOLLOUT) && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
		ep_output(e, fd, f);
	ep_watch(e, fd, f);
}

/* --- the operations --- */

static void ep_close(struct io *io)
{
	struct io_ep *e = ep(io);
	if (e->helper_started) {
		pthread_mutex_lock(&e->lock);
		e->stop = true;
		pthread_cond_signal(&e->cond);
		pthread_mutex_unlock(&e->lock);
		pthread_join(e->helper, NULL);
	}
	/* After the join every job is on a list or waits in the fd table. */
	struct ep_job *lists[] = {e->todo, e->done};
	for (int l = 0; l < 2; l++)
		for (struct ep_job *j = lists[l], *next; j; j = next) {
			next = j->next;
			free(j);
		}
	for (unsigned pg = 0; pg < e->npages; pg++) {
		if (!e->pages[pg])
			continue;
		for (unsigned i = 0; i < EP_PAGE; i++)
			if (e->pages[pg][i].out.kind == EP_SENDFILE_WAIT)
				free(e->pages[pg][i].out_job);
		free(e->pages[pg]);
	}
	for (unsigned i = 0; i < e->nheap; i++)
		free(e->heap[i]);
	int fds[] = {e->epfd, e->wake_fd, e->done_fd};
	for (int i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	pthread_cond_destroy(&e->cond);
	pthread_mutex_destroy(&e->lock);
	free(e->pages);
	free(e->hash);
	free(e->heap);
	free(e->bufs);
	free(e->free_bids);
	free(e->q);
	free(e);
}

static void ep_accept(struct io *io, int fd, uint64_t tag)
{
	struct io_ep *e = ep(io);
	int err = ep_nonblock(fd);
	if (err) {
		ep_post(e, tag, err, false, -1);
		return;
	}
	struct ep_fdent *f = ep_claim(e, fd, true, EP_ACCEPT, tag);
	if (f)
		ep_watch(e, fd, f);
}

static void ep_recv(struct io *io, int fd, uint64_t tag)
{
	struct io_ep *e = ep(io);
	struct ep_fdent *f = ep_claim(e, fd, true, EP_RECV, tag);
	if (f)
		ep_watch(e, fd, f);
}

static void ep_recv_once(struct io *io, int fd, uint64_t tag)
{
	struct io_ep *e = ep(io);
	struct ep_fdent *f = ep_claim(e, fd, true, EP_RECV_ONCE, tag);
	if (f)
		ep_watch(e, fd, f);
}

static void ep_recv_into(struct io *io, int fd, void *buf, size_t len, uint64_t tag)
{
	struct io_ep *e = ep(io);
	struct ep_fdent *f = ep_claim(e, fd, true, EP_RECV_INTO, tag);
	if (!f)
		return;
	f->in_buf = buf;
	f->in_len = len < EP_MAX_RW ? len : EP_MAX_RW;
	ep_watch(e, fd, f);
}

static void ep_send(struct io *io, int fd, const void *buf, size_t len, uint64_t tag)
{
	struct io_ep *e = ep(io);
	if (len > EP_MAX_RW)
		len = EP_MAX_RW;
	/* Most replies fit the socket buffer: try now, and wait on epoll
	 * only when it is full. */
	struct ep_fdent *f = fd >= 0 ? ep_fd(e, fd, false) : NULL;
	if (fd >= 0 && (!f || f->out.kind == EP_NONE)) {
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n >= 0 || !ep_again(errno)) {
			ep_post(e, tag, n >= 0 ? (int)n : -errno, false, -1);
			return;
		}
	}
	f = ep_claim(e, fd, false, EP_SEND, tag);
	if (!f)
		return;
	f->out_buf = buf;
	f->out_len = len;
	ep_watch(e, fd, f);
}

static void ep_sendfile(struct io *io, int sock, int file, uint64_t off, size_t len,
			const void *tail, size_t taillen, uint64_t tag)
{
	struct io_ep *e = ep(io);
	int err = sock >= 0 ? ep_nonblock(sock) : -EBADF;
	if (err) {
		ep_post(e, tag, err, false, -1);
		return;
	}
	/* io_try_sendfile has already sent what the page cache held: what
	 * comes here waits for the disk or for room, on the helper thread. The
	 * tail is left to the caller (res never exceeds len here). */
	(void)tail;
	(void)taillen;
	struct ep_job *j = ep_job_new(e, EP_JOB_SENDFILE, sock, tag);
	if (!j)
		return;
	struct ep_fdent *f = ep_claim(e, sock, false, EP_SENDFILE_BUSY, tag);
	if (!f) {
		free(j);
		return;
	}
	j->file = file;
	j->off = off;
	j->len = len;
	f->out_job = j;
	ep_helper_push(e, j);
}

static void ep_connect(struct io *io, int fd, const struct sockaddr *sa, socklen_t len,
		       uint64_t tag)
{
	struct io_ep *e = ep(io);
	/* connect() takes its own copy of sa: nothing to keep. */
	int err = ep_nonblock(fd);
	if (!err && connect(fd, sa, len) == 0) {
		ep_post(e, tag, 0, false, -1);
		return;
	}
	if (!err)
		err = -errno;
	/* EINTR: the connection goes on in the background, as EINPROGRESS. */
	if (err != -EINPROGRESS && err != -EINTR) {
		ep_post(e, tag, err, false, -1);
		return;
	}
	struct ep_fdent *f = ep_claim(e, fd, false, EP_CONNECT, tag);
	if (f)
		ep_watch(e, fd, f);
}

static void ep_writev(struct io *io, int fd, const struct iovec *iov, unsigned n,
		      uint64_t off, uint64_t tag)
{
	struct io_ep *e = ep(io);
	struct ep_job *j = ep_job_new(e, EP_JOB_WRITEV, fd, tag);
	if (!j)
		return;
	j->iov = iov;
	j->niov = n;
	j->off = off;
	ep_helper_push(e, j);
}

static void ep_read(struct io *io, int fd, void *buf, size_t len, uint64_t off, uint64_t tag)
{
	struct io_ep *e = ep(io);
	struct ep_job *j = ep_job_new(e, EP_JOB_READ, fd, tag);
	if (!j)
		return;
	j->buf = buf;
	j->len = len;
	j->off = off;
	ep_helper_push(e, j);
}

static void ep_fsync(struct io *io, int fd, bool datasync, uint64_t tag)
{
	struct io_ep *e = ep(io);
	struct ep_job *j = ep_job_new(e, EP_JOB_FSYNC, fd, tag);
	if (!j)
		return;
	j->datasync = datasync;
	ep_helper_push(e, j);
}

static void ep_timeout(struct io *io, uint64_t ms, uint64_t tag)
{
	struct io_ep *e = ep(io);
	if (e->nheap == e->heap_cap) {
		unsigned cap = e->heap_cap ? e->heap_cap * 2 : 64;
		struct ep_timer **h = realloc(e->heap, cap * sizeof(*h));
		if (!h) {
			ep_post(e, tag, -ENOMEM, false, -1);
			return;
		}
		e->heap = h;
		e->heap_cap = cap;
	}
	struct ep_timer *t = malloc(sizeof(*t));
	if (!t) {
		ep_post(e, tag, -ENOMEM, false, -1);
		return;
	}
	uint64_t now = ep_now_ns();
	uint64_t delay = ms < (UINT64_MAX - now) / 1000000 ? ms * 1000000 : UINT64_MAX - now;
	*t = (struct ep_timer){
		.p = {.tag = tag, .kind = EP_TIMER, .fd = -1},
		.due_ns = now + delay,
		.seq = e->timer_seq++,
	};
	ep_heap_set(e, e->nheap++, t);
	ep_heap_up(e, t->heap_at);
	ep_hash_add(e, &t->p);
}

static void ep_cancel(struct io *io, uint64_t target)
{
	struct io_ep *e = ep(io);
	struct ep_pending *p = ep_hash_find(e, target);
	if (!p)
		return; /* done already, or a file operation: it completes as it is */
	if (p->kind == EP_TIMER) {
		struct ep_timer *t = (struct ep_timer *)p;
		ep_heap_remove(e, t);
		ep_finish(e, p, -ECANCELED);
		free(t);
		return;
	}
	struct ep_fdent *f = ep_fd(e, p->fd, false);
	if (p->kind == EP_SENDFILE_BUSY) {
		/* The helper has it: it ends with its result, or with
		 * -ECANCELED instead of waiting for room again. */
		f->out_job->cancelled = true;
		return;
	}
	if (p->kind == EP_SENDFILE_WAIT) {
		free(f->out_job);
		f->out_job = NULL;
	}
	ep_finish(e, p, -ECANCELED);
	ep_watch(e, p->fd, f);
}

static char *ep_buf(struct io *io, unsigned bid)
{
	struct io_ep *e = ep(io);
	assert(bid < e->nbufs);
	return e->bufs + (size_t)bid * e->bufsz;
}

static void ep_buf_recycle(struct io *io, unsigned bid)
{
	struct io_ep *e = ep(io);
	assert(bid < e->nbufs && e->nfree < e->nbufs);
	e->free_bids[e->nfree++] = bid;
}

static void ep_wake(struct io *io)
{
	uint64_t one = 1;
	/* EAGAIN (the counter is full) still leaves the eventfd readable. */
	ssize_t w = write(ep(io)->wake_fd, &one, sizeof(one));
	(void)w;
}

static int ep_wait(struct io *io, struct io_cqe *out, unsigned max)
{
	struct io_ep *e = ep(io);
	if (!max)
		return 0;
	struct epoll_event evs[EP_EVENTS];
	/* A caller that takes fewer than are queued gets them without a new
	 * look: level-triggered sockets would add to the queue each time. */
	if (e->q_len >= max)
		return (int)ep_deliver(e, out, max);
	for (;;) {
		/* Completions already queued go out now; only a look at what
		 * else is ready first. */
		int n = epoll_wait(e->epfd, evs, EP_EVENTS, e->q_len ? 0 : ep_timer_wait_ms(e));
		if (n < 0 && errno != EINTR && !e->q_len)
			return -errno;
		for (int i = 0; i < n; i++)
			ep_event(e, evs[i].data.fd, evs[i].events);
		ep_fire_timers(e);
		if (e->q_len)
			return (int)ep_deliver(e, out, max);
	}
}

static void ep_post_op(struct io *io, uint64_t tag, int res)
{
	ep_post(ep(io), tag, res, false, -1);
}

static const struct io_ops ep_ops = {
	.close = ep_close, .accept = ep_accept, .recv = ep_recv, .recv_once = ep_recv_once,
	.recv_into = ep_recv_into,
	.send = ep_send, .sendfile = ep_sendfile, .connect = ep_connect, .writev = ep_writev,
	.read = ep_read, .fsync = ep_fsync, .timeout = ep_timeout, .cancel = ep_cancel,
	.buf = ep_buf, .buf_recycle = ep_buf_recycle, .wake = ep_wake, .wait = ep_wait,
	.post = ep_post_op,
};

static int ep_watch_eventfd(struct io_ep *e, int *fd)
{
	*fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (*fd < 0)
		return -errno;
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = *fd};
	return epoll_ctl(e->epfd, EPOLL_CTL_ADD, *fd, &ev) < 0 ? -errno : 0;
}

/* The helper takes no signals: they belong to the process's signal
 * thread (main.c). */
static int ep_start_helper(struct io_ep *e)
{
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int ret = pthread_create(&e->helper, NULL, ep_helper_main, e);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	e->helper_started = ret == 0;
	return -ret;
}

struct io *io_epoll_backend_open(const struct io_params *p, char *err, size_t errlen)
{
	struct io_ep *e = calloc(1, sizeof(*e));
	if (!e) {
		snprintf(err, errlen, "epoll backend: out of memory");
		return NULL;
	}
	e->io.ops = &ep_ops;
	e->epfd = e->wake_fd = e->done_fd = -1;
	pthread_mutex_init(&e->lock, NULL);
	pthread_cond_init(&e->cond, NULL);
	e->todo_tail = &e->todo;
	e->done_tail = &e->done;
	e->nbufs = p->nbufs;
	e->bufsz = p->bufsz;
	e->hash_bits = 10;
	e->hash = calloc((size_t)1 << e->hash_bits, sizeof(*e->hash));
	e->free_bids = malloc(((size_t)e->nbufs + 1) * sizeof(*e->free_bids));
	e->bufs = malloc((size_t)e->nbufs * e->bufsz + 1);
	int ret = -ENOMEM;
	if (e->hash && e->free_bids && e->bufs) {
		e->epfd = epoll_create1(EPOLL_CLOEXEC);
		ret = e->epfd < 0 ? -errno : 0;
	}
	if (!ret)
		ret = ep_watch_eventfd(e, &e->wake_fd);
	if (!ret)
		ret = ep_watch_eventfd(e, &e->done_fd);
	if (!ret)
		ret = ep_start_helper(e);
	if (ret) {
		snprintf(err, errlen, "epoll backend: %s", strerror(-ret));
		ep_close(&e->io);
		return NULL;
	}
	/* Buffer 0 is taken first: a stack filled from the top. */
	for (unsigned i = e->nbufs; i-- > 0;)
		e->free_bids[e->nfree++] = i;
	return &e->io;
}
