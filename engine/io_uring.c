/* The io_uring backend of the I/O interface (io.h): the only file that
 * includes liburing. One ring per worker (SINGLE_ISSUER|DEFER_TASKRUN where
 * the kernel has them), a provided-buffer ring for multishot recv, the
 * wake-up eventfd read on the ring, and sendfile as a ring read into a
 * staging buffer and a ring send (a cold page is read by the kernel's
 * workers, never by the loop). Knows nothing of what the tags mean. */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "io_backend.h"
#include "log.h"

/* Tags the backend keeps for itself: never handed to the caller. */
#define OP_INTERNAL_WAKE 0xf0u
#define OP_INTERNAL_FILE_SEND 0xf1u /* pointer: struct file_send */
#define OP_INTERNAL_QUIET 0xf2u     /* cancels: nobody waits for their result */

/* A piece of a file on its way to a socket: read into a staging buffer,
 * then sent. Both usually complete inline (the segment was written a
 * moment ago and is in the page cache); a cold page is read by the
 * kernel's workers, never by the loop. */
#define FILE_SEND_MAX (64u * 1024)

struct file_send {
	uint64_t tag;             /* the caller's */
	int sock, file;
	uint64_t off;
	size_t want;              /* bytes asked of the file */
	size_t len;               /* the whole range asked for */
	char tail[IO_TAIL_MAX];   /* sent behind it when all of it fits */
	size_t taillen;
	size_t got;               /* read into buf */
	size_t sent;
	bool sending;             /* stage: buf -> socket */
	struct file_send *next;   /* free list, or the active list */
	struct file_send *prev;
	char buf[FILE_SEND_MAX];
};

struct io_ur {
	struct io io;
	struct io_uring ring;
	/* provided buffers */
	struct io_uring_buf_ring *br;
	size_t br_bytes;
	char *mem;
	unsigned nbufs, bufsz;
	/* timeouts: the kernel reads a timespec when the SQE is submitted */
	struct __kernel_timespec *ts;
	unsigned nts, ts_next;
	/* wake-ups */
	int wake_fd;
	uint64_t wake_buf;
	/* sendfile */
	struct file_send *fs_free;
	struct file_send *fs_active;
	/* completions decided without the kernel (out of memory) */
	struct io_cqe *early;
	unsigned nearly, early_cap;
};

static struct io_ur *ur(struct io *io)
{
	return (struct io_ur *)io;
}

static uint64_t internal_tag(unsigned op, const void *p)
{
	return (uint64_t)op << 56 | (uint64_t)(uintptr_t)p;
}

static struct io_uring_sqe *get_sqe(struct io_ur *u)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
	while (!sqe) {
		/* Submission queue full: hand it to the kernel and retry. */
		io_uring_submit(&u->ring);
		sqe = io_uring_get_sqe(&u->ring);
	}
	return sqe;
}

static int ring_setup(struct io_ur *u, unsigned entries, char *err, size_t errlen)
{
	static const unsigned tries[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_COOP_TASKRUN,
		0,
	};
	int ret = -EINVAL;
	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE |
			  (tries[i] ? tries[i] | IORING_SETUP_SUBMIT_ALL : 0);
		p.cq_entries = entries * 4;
		ret = io_uring_queue_init_params(entries, &u->ring, &p);
		if (ret == 0) {
			if (i > 0)
				log_msg(LOG_INFO, "event=ring_setup flags=0x%x note=\"kernel lacks DEFER_TASKRUN\"",
					tries[i]);
			return 0;
		}
		if (ret != -EINVAL)
			break;
	}
	snprintf(err, errlen, "io_uring_setup: %s", strerror(-ret));
	return ret;
}

/* liburing 2.3 has no io_uring_setup_buf_ring(): the ring memory is
 * mmap'd here. */
static int bufs_setup(struct io_ur *u, unsigned n, unsigned sz)
{
	u->nbufs = n;
	u->bufsz = sz;
	u->br_bytes = n * sizeof(struct io_uring_buf);
	void *m = mmap(NULL, u->br_bytes, PROT_READ | PROT_WRITE,
		       MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (m == MAP_FAILED)
		return -errno;
	u->br = m;
	u->mem = aligned_alloc(4096, (size_t)n * sz);
	if (!u->mem)
		return -ENOMEM;
	struct io_uring_buf_reg reg = {
		.ring_addr = (uint64_t)(uintptr_t)m, .ring_entries = n, .bgid = 0,
	};
	int ret = io_uring_register_buf_ring(&u->ring, &reg, 0);
	if (ret)
		return ret;
	io_uring_buf_ring_init(u->br);
	int mask = io_uring_buf_ring_mask(n);
	for (unsigned i = 0; i < n; i++)
		io_uring_buf_ring_add(u->br, u->mem + (size_t)i * sz, sz, (unsigned short)i,
				      mask, (int)i);
	io_uring_buf_ring_advance(u->br, (int)n);
	return 0;
}

static void arm_wake(struct io_ur *u)
{
	struct io_uring_sqe *sqe = get_sqe(u);
	io_uring_prep_read(sqe, u->wake_fd, &u->wake_buf, sizeof(u->wake_buf), 0);
	io_uring_sqe_set_data64(sqe, internal_tag(OP_INTERNAL_WAKE, NULL));
}

static void ur_close(struct io *io)
{
	struct io_ur *u = ur(io);
	if (u->br)
		io_uring_unregister_buf_ring(&u->ring, 0);
	io_uring_queue_exit(&u->ring);
	if (u->br)
		munmap(u->br, u->br_bytes);
	free(u->mem);
	free(u->ts);
	free(u->early);
	if (u->wake_fd >= 0)
		close(u->wake_fd);
	struct file_send *lists[] = {u->fs_free, u->fs_active};
	for (int l = 0; l < 2; l++)
		for (struct file_send *f = lists[l], *n; f; f = n) {
			n = f->next;
			free(f);
		}
	free(u);
}

static void ur_accept(struct io *io, int fd, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(ur(io));
	io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, tag);
}

/* A recv into a provided buffer of group 0 (len 0: as much as the selected
 * buffer holds); multishot: one completion per buffer until it ends. */
static void recv_select(struct io *io, int fd, uint64_t tag, bool multishot)
{
	struct io_uring_sqe *sqe = get_sqe(ur(io));
	if (multishot)
		io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	else
		io_uring_prep_recv(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 0;
	io_uring_sqe_set_data64(sqe, tag);
}

static void ur_recv(struct io *io, int fd, uint64_t tag) { recv_select(io, fd, tag, true); }
static void ur_recv_once(struct io *io, int fd, uint64_t tag) { recv_select(io, fd, tag, false); }

static void ur_recv_into(struct io *io, int fd, void *buf, size_t len, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(ur(io));
	io_uring_prep_recv(sqe, fd, buf, len, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

static void early_post(struct io_ur *u, uint64_t tag, int res)
{
	if (u->nearly == u->early_cap) {
		unsigned cap = u->early_cap ? u->early_cap * 2 : 16;
		struct io_cqe *e = realloc(u->early, cap * sizeof(*e));
		if (!e) {
			log_msg(LOG_ERROR, "event=io_error error=\"out of memory: a completion is lost\"");
			return;
		}
		u->early = e;
		u->early_cap = cap;
	}
	io_cqe_decode(&u->early[u->nearly++], tag, res, false, -1);
}

static void ur_post(struct io *io, uint64_t tag, int res) { early_post(ur(io), tag, res); }

static void ur_send(struct io *io, int fd, const void *buf, size_t len, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(ur(io));
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, tag);
}

static void ur_connect(struct io *io, int fd, const struct sockaddr *sa, socklen_t len,
		       uint64_t tag)
{
	/* The kernel copies the address when the SQE is submitted: submit
	 * now, while the caller's copy is surely there. */
	struct io_ur *u = ur(io);
	struct io_uring_sqe *sqe = get_sqe(u);
	io_uring_prep_connect(sqe, fd, sa, len);
	io_uring_sqe_set_data64(sqe, tag);
	io_uring_submit(&u->ring);
}


static void fs_submit(struct io_ur *u, struct file_send *f)
{
	struct io_uring_sqe *sqe = get_sqe(u);
	if (f->sending)
		io_uring_prep_send(sqe, f->sock, f->buf + f->sent, f->got - f->sent, MSG_NOSIGNAL);
	else
		io_uring_prep_read(sqe, f->file, f->buf, (unsigned)f->want, f->off);
	io_uring_sqe_set_data64(sqe, internal_tag(OP_INTERNAL_FILE_SEND, f));
}

static void fs_unlink(struct io_ur *u, struct file_send *f)
{
	if (f->prev)
		f->prev->next = f->next;
	else
		u->fs_active = f->next;
	if (f->next)
		f->next->prev = f->prev;
	f->next = f->prev = NULL;
}

static void ur_sendfile(struct io *io, int sock, int file, uint64_t off, size_t len,
			const void *tail, size_t taillen, uint64_t tag)
{
	struct io_ur *u = ur(io);
	struct file_send *f = u->fs_free;
	if (f)
		u->fs_free = f->next;
	else if (!(f = malloc(sizeof(*f)))) {
		early_post(u, tag, -ENOMEM);
		return;
	}
	f->tag = tag;
	f->sock = sock;
	f->file = file;
	f->off = off;
	f->len = len;
	f->want = len < FILE_SEND_MAX - taillen ? len : FILE_SEND_MAX - taillen;
	f->taillen = taillen;
	if (taillen)
		memcpy(f->tail, tail, taillen);
	f->got = f->sent = 0;
	f->sending = false;
	f->prev = NULL;
	f->next = u->fs_active;
	if (f->next)
		f->next->prev = f;
	u->fs_active = f;
	fs_submit(u, f);
}

static void ur_writev(struct io *io, int fd, const struct iovec *iov, unsigned n,
		      uint64_t off, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(ur(io));
	io_uring_prep_writev(sqe, fd, iov, n, off);
	io_uring_sqe_set_data64(sqe, tag);
}

static void ur_read(struct io *io, int fd, void *buf, size_t len, uint64_t off, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(ur(io));
	io_uring_prep_read(sqe, fd, buf, (unsigned)len, off);
	io_uring_sqe_set_data64(sqe, tag);
}

static void ur_fsync(struct io *io, int fd, bool datasync, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(ur(io));
	io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
	io_uring_sqe_set_data64(sqe, tag);
}

static void ur_timeout(struct io *io, uint64_t ms, uint64_t tag)
{
	struct io_ur *u = ur(io);
	/* get_sqe first: it may submit, and only then may a timespec slot be
	 * reused (at most nts SQEs are ever unsubmitted). */
	struct io_uring_sqe *sqe = get_sqe(u);
	struct __kernel_timespec *ts = &u->ts[u->ts_next++ % u->nts];
	ts->tv_sec = (long long)(ms / 1000);
	ts->tv_nsec = (long long)(ms % 1000) * 1000000;
	io_uring_prep_timeout(sqe, ts, 0, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

static void ur_cancel(struct io *io, uint64_t target)
{
	struct io_ur *u = ur(io);
	for (struct file_send *f = u->fs_active; f; f = f->next)
		if (f->tag == target) {
			target = internal_tag(OP_INTERNAL_FILE_SEND, f);
			break;
		}
	struct io_uring_sqe *sqe = get_sqe(u);
	io_uring_prep_cancel64(sqe, target, 0);
	io_uring_sqe_set_data64(sqe, internal_tag(OP_INTERNAL_QUIET, NULL));
}

static char *ur_buf(struct io *io, unsigned bid)
{
	return ur(io)->mem + (size_t)bid * ur(io)->bufsz;
}

static void ur_buf_recycle(struct io *io, unsigned bid)
{
	struct io_ur *u = ur(io);
	io_uring_buf_ring_add(u->br, ur_buf(io, bid), u->bufsz, (unsigned short)bid,
			      io_uring_buf_ring_mask(u->nbufs), 0);
	io_uring_buf_ring_advance(u->br, 1);
}

static void ur_wake(struct io *io)
{
	uint64_t one = 1;
	ssize_t n = write(ur(io)->wake_fd, &one, sizeof(one));
	(void)n;
}

/* A step of a file send finished: on to the next, or the caller's
 * completion. Returns true when out got a completion. */
static bool fs_step(struct io_ur *u, struct file_send *f, int res, struct io_cqe *out)
{
	if (res > 0 && !f->sending) {
		f->got = (size_t)res;
		if (f->got == f->len && f->taillen) {
			memcpy(f->buf + f->got, f->tail, f->taillen);
			f->got += f->taillen;
		}
		f->sending = true;
		fs_submit(u, f);
		return false;
	}
	if (res > 0) {
		f->sent += (size_t)res;
		if (f->sent < f->got) {
			fs_submit(u, f);
			return false;
		}
	}
	/* Done, or failed: 0 from the file means it is shorter than asked,
	 * from the socket that it takes no more. What was sent counts. */
	int result = f->sending && f->sent ? (int)f->sent
		   : res < 0 ? res : f->sending ? -EPIPE : 0;
	io_cqe_decode(out, f->tag, result, false, -1);
	fs_unlink(u, f);
	f->next = u->fs_free;
	u->fs_free = f;
	return true;
}

/* Decodes what the ring has completed into out[n..max); returns the new n. */
static unsigned reap(struct io_ur *u, struct io_cqe *out, unsigned n, unsigned max)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;
	io_uring_for_each_cqe(&u->ring, head, cqe) {
		if (n == max)
			break;
		seen++;
		uint64_t tag = io_uring_cqe_get_data64(cqe);
		switch ((unsigned)(tag >> 56)) {
		case OP_INTERNAL_WAKE:
			arm_wake(u);
			io_cqe_decode(&out[n++], io_tag(IO_OP_WAKE, 0, 0), 0, false, -1);
			break;
		case OP_INTERNAL_FILE_SEND:
			if (fs_step(u, (struct file_send *)(uintptr_t)(tag & ((1ull << 56) - 1)),
				    cqe->res, &out[n]))
				n++;
			break;
		case OP_INTERNAL_QUIET:
			break;
		default:
			io_cqe_decode(&out[n++], tag, cqe->res,
				      (cqe->flags & IORING_CQE_F_MORE) != 0,
				      cqe->flags & IORING_CQE_F_BUFFER
					      ? (int)(cqe->flags >> IORING_CQE_BUFFER_SHIFT)
					      : -1);
		}
	}
	io_uring_cq_advance(&u->ring, seen);
	return n;
}

static int ur_wait(struct io *io, struct io_cqe *out, unsigned max)
{
	struct io_ur *u = ur(io);
	unsigned n = 0;
	if (u->nearly) {
		/* Oldest first; what does not fit waits for the next call. The
		 * ring is still submitted and reaped, without sleeping. */
		unsigned k = u->nearly < max ? u->nearly : max;
		memcpy(out, u->early, k * sizeof(*out));
		memmove(u->early, u->early + k, (u->nearly - k) * sizeof(*out));
		u->nearly -= k;
		n = k;
		io_uring_submit_and_get_events(&u->ring);
		return (int)reap(u, out, n, max);
	}
	while (n == 0) {
		int ret = io_uring_submit_and_wait(&u->ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -ETIME && ret != -EBUSY)
			return ret;
		n = reap(u, out, n, max);
	}
	return (int)n;
}

static const struct io_ops ur_ops = {
	.close = ur_close, .accept = ur_accept, .recv = ur_recv, .recv_once = ur_recv_once,
	.recv_into = ur_recv_into,
	.send = ur_send, .sendfile = ur_sendfile, .connect = ur_connect, .writev = ur_writev,
	.read = ur_read, .fsync = ur_fsync, .timeout = ur_timeout, .cancel = ur_cancel,
	.buf = ur_buf, .buf_recycle = ur_buf_recycle, .wake = ur_wake, .wait = ur_wait,
	.post = ur_post,
};

/* The whole setup a worker does (ring, provided buffers), once: a kernel
 * may allow io_uring_setup and still lack what the workers need. */
int io_uring_backend_probe(char *why, size_t whylen)
{
	struct io_params p = {.entries = 8, .nbufs = 2, .bufsz = 4096};
	struct io *io = io_uring_backend_open(&p, why, whylen);
	if (!io)
		return -1;
	ur_close(io);
	return 0;
}

struct io *io_uring_backend_open(const struct io_params *p, char *err, size_t errlen)
{
	struct io_ur *u = calloc(1, sizeof(*u));
	if (!u) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	u->io.ops = &ur_ops;
	u->wake_fd = -1;
	if (ring_setup(u, p->entries, err, errlen) < 0) {
		free(u);
		return NULL;
	}
	int ret = bufs_setup(u, p->nbufs, p->bufsz);
	if (ret < 0) {
		snprintf(err, errlen, "io_uring provided buffer ring unavailable (%s)",
			 strerror(-ret));
		ur_close(&u->io);
		return NULL;
	}
	u->nts = p->entries;
	u->ts = calloc(u->nts, sizeof(*u->ts));
	u->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (!u->ts || u->wake_fd < 0) {
		snprintf(err, errlen, "io_uring backend: %s", u->ts ? strerror(errno) : "out of memory");
		ur_close(&u->io);
		return NULL;
	}
	arm_wake(u);
	return &u->io;
}
