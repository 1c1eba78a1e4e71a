/* The I/O interface's front (see io.h): picks a backend and forwards each
 * call to it. Owns no I/O of its own. */
#include "io.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include "io_backend.h"
#include "log.h"

#define IO_INLINE_IOV 8

const char *io_backend_name(enum io_backend b)
{
	switch (b) {
	case IO_BACKEND_URING:
		return "io_uring";
	case IO_BACKEND_EPOLL:
		return "epoll";
	default:
		return "auto";
	}
}

enum io_backend io_probe(enum io_backend want, char *why, size_t whylen)
{
	if (whylen)
		why[0] = '\0';
	if (want == IO_BACKEND_EPOLL)
		return IO_BACKEND_EPOLL;
	if (io_uring_backend_probe(why, whylen) == 0)
		return IO_BACKEND_URING;
	return want == IO_BACKEND_URING ? IO_BACKEND_AUTO : IO_BACKEND_EPOLL;
}

struct io *io_open(enum io_backend b, const struct io_params *p, char *err, size_t errlen)
{
	struct io *io = b == IO_BACKEND_EPOLL ? io_epoll_backend_open(p, err, errlen)
		      : b == IO_BACKEND_URING ? io_uring_backend_open(p, err, errlen)
					      : NULL;
	if (!io) {
		if (b != IO_BACKEND_EPOLL && b != IO_BACKEND_URING)
			snprintf(err, errlen, "no I/O backend chosen");
		return NULL;
	}
	io->kind = b;
	io->stage = malloc(IO_STAGE);
	if (!io->stage) {
		snprintf(err, errlen, "out of memory");
		io_close(io);
		return NULL;
	}
	return io;
}

void io_close(struct io *io)
{
	free(io->stage);
	io->stage = NULL;
	io->ops->close(io);
}
enum io_backend io_kind(const struct io *io) { return io->kind; }
void io_accept(struct io *io, int fd, uint64_t tag) { io->ops->accept(io, fd, tag); }
void io_recv(struct io *io, int fd, uint64_t tag) { io->ops->recv(io, fd, tag); }
void io_recv_once(struct io *io, int fd, uint64_t tag) { io->ops->recv_once(io, fd, tag); }

void io_recv_into(struct io *io, int fd, void *buf, size_t len, uint64_t tag)
{
	io->ops->recv_into(io, fd, buf, len, tag);
}

void io_send(struct io *io, int fd, const void *buf, size_t len, uint64_t tag)
{
	io->ops->send(io, fd, buf, len, tag);
}

void io_sendfile(struct io *io, int sock, int file, uint64_t off, size_t len,
		 const void *tail, size_t taillen, uint64_t tag)
{
	if (!tail || taillen > IO_TAIL_MAX)
		taillen = 0;
	io->ops->sendfile(io, sock, file, off, len, tail, taillen, tag);
}

void io_connect(struct io *io, int fd, const struct sockaddr *sa, socklen_t len,
		uint64_t tag)
{
	io->ops->connect(io, fd, sa, len, tag);
}

/* Small writes on the calling thread. A buffered write the filesystem
 * cannot do without waiting (ext4 refuses RWF_NOWAIT for them:
 * EOPNOTSUPP) goes from io_uring to an io-wq thread (serialised per file),
 * from epoll to the helper: a thread woken for a copy into the page cache
 * of about a microsecond. At 10,000 msg/s that wait was 64-108 us at the
 * median and 0.6-0.8 ms at p99 of the 250's latency. On such a
 * filesystem a write of up to IO_INLINE_MAX bytes is done here, and its
 * completion comes with the next io_wait. Where the filesystem can do
 * them without waiting, io_uring does so itself, and nothing changes. A
 * copy into the page cache waits only for memory or for the kernel's dirty
 * page throttling; one that took longer than IO_INLINE_STALL_NS (the
 * throttling, memory reclaim) sends the writes to the backend again for
 * IO_INLINE_PAUSE_NS, so that a stalled disk stalls the spool's writes,
 * not the loop. The bound is wall time, so a thread that lost its core
 * meanwhile counts too: at 1 ms, two such in a 1.5 s run on two busy
 * cores (1.2 and 1.3 ms); the throttling's pauses are 10 ms and more.
 * The limit covers a large message's body written as it arrives (pieces of
 * up to about 100 KiB): a 100 KiB copy takes about 30 us here, and 100 KiB
 * messages accepted at 8 s a round, 3 pairs against a 16 KiB limit: 6,469 ->
 * 7,020, 6,778 -> 7,377 and 7,153 -> 7,456 msg/s. */
#define IO_INLINE_MAX (128u * 1024)
#define IO_INLINE_STALL_NS (5 * 1000 * 1000ull)
#define IO_INLINE_PAUSE_NS (1000 * 1000 * 1000ull)

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* pwritev until all of it is written (a regular file writes all but at
 * an error or a full disk): the bytes written, or -errno when none were. */
static long write_all(int fd, const struct iovec *iov, unsigned n, uint64_t off,
		      size_t total, size_t done)
{
	while (done < total) {
		struct iovec rest[IO_INLINE_IOV];
		unsigned k = 0;
		size_t skip = done;
		for (unsigned i = 0; i < n; i++) {
			if (skip >= iov[i].iov_len) {
				skip -= iov[i].iov_len;
				continue;
			}
			rest[k++] = (struct iovec){(char *)iov[i].iov_base + skip,
						   iov[i].iov_len - skip};
			skip = 0;
		}
		ssize_t w = pwritev(fd, rest, (int)k, (off_t)(off + done));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return done ? (long)done : w < 0 ? -errno : -EIO;
		done += (size_t)w;
	}
	return (long)done;
}

static bool write_inline(struct io *io, int fd, const struct iovec *iov, unsigned n,
			 uint64_t off, uint64_t tag)
{
	if (io->inline_writes == IO_INLINE_NO || n > IO_INLINE_IOV)
		return false;
	size_t total = 0;
	for (unsigned i = 0; i < n; i++)
		total += iov[i].iov_len;
	if (total > IO_INLINE_MAX || total == 0)
		return false;
	uint64_t t0 = mono_ns();
	if (io->inline_paused_until_ns) {
		if (t0 < io->inline_paused_until_ns)
			return false;
		io->inline_paused_until_ns = 0;
	}
	long res;
	if (io->inline_writes == IO_INLINE_UNKNOWN) {
		/* The first small write asks the filesystem. */
		ssize_t w = pwritev2(fd, iov, (int)n, (off_t)off, RWF_NOWAIT);
		if (w < 0 && errno == EOPNOTSUPP) {
			io->inline_writes = IO_INLINE_YES;
			log_msg(LOG_INFO, "event=io_inline_writes note=\"the spool's filesystem cannot write without waiting (RWF_NOWAIT): writes up to %u bytes are made on the worker's thread\"",
				IO_INLINE_MAX);
			res = write_all(fd, iov, n, off, total, 0);
		} else if (w >= 0) {
			/* It can: io_uring's writes do the same. The rest of
			 * this one here, once. */
			io->inline_writes = IO_INLINE_NO;
			res = write_all(fd, iov, n, off, total, (size_t)w);
		} else if (errno == EAGAIN) {
			io->inline_writes = IO_INLINE_NO;
			return false; /* nothing written: the backend does it */
		} else if (errno == EINTR) {
			return false;
		} else {
			res = -errno; /* this file's error says nothing of the filesystem */
		}
	} else {
		res = write_all(fd, iov, n, off, total, 0);
	}
	uint64_t took = mono_ns() - t0;
	if (took > IO_INLINE_STALL_NS) {
		io->inline_paused_until_ns = t0 + took + IO_INLINE_PAUSE_NS;
		if (io->inline_stalls++ % 1000 == 0)
			log_msg(LOG_WARN, "event=io_inline_stall took_us=%llu stalls=%llu note=\"a write to the page cache took over 5 ms (dirty page throttling, memory reclaim, or the thread lost its core): writes go to the I/O backend for a second\"",
				(unsigned long long)(took / 1000),
				(unsigned long long)io->inline_stalls);
	}
	io->ops->post(io, tag, res > INT_MAX ? INT_MAX : (int)res);
	return true;
}

bool io_writes_inline(const struct io *io) { return io->inline_writes == IO_INLINE_YES; }

void io_writev(struct io *io, int fd, const struct iovec *iov, unsigned n, uint64_t off,
	       uint64_t tag)
{
	if (write_inline(io, fd, iov, n, off, tag))
		return;
	io->ops->writev(io, fd, iov, n, off, tag);
}

void io_read(struct io *io, int fd, void *buf, size_t len, uint64_t off, uint64_t tag)
{
	io->ops->read(io, fd, buf, len, off, tag);
}

void io_fsync(struct io *io, int fd, bool datasync, uint64_t tag)
{
	io->ops->fsync(io, fd, datasync, tag);
}

void io_timeout(struct io *io, uint64_t ms, uint64_t tag) { io->ops->timeout(io, ms, tag); }
void io_cancel(struct io *io, uint64_t target) { io->ops->cancel(io, target); }
char *io_buf(struct io *io, unsigned bid) { return io->ops->buf(io, bid); }
void io_buf_recycle(struct io *io, unsigned bid) { io->ops->buf_recycle(io, bid); }
void io_wake(struct io *io) { io->ops->wake(io); }

long io_try_send(struct io *io, int fd, const void *buf, size_t len)
{
	ssize_t n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
	return n >= 0 ? (long)n : errno == EWOULDBLOCK ? -EAGAIN : -errno;
}

long io_try_sendfile(struct io *io, int sock, int file, const struct io_range *r, unsigned n,
		     const void *tail, size_t taillen)
{
	if (!tail || taillen > IO_TAIL_MAX)
		taillen = 0;
	/* The segment was usually written a moment ago: a read that may not
	 * wait (RWF_NOWAIT) gets the ranges from the page cache; a cold one
	 * is left to io_sendfile, which never reads on the loop. */
	size_t out = 0, cap = IO_STAGE - taillen;
	uint64_t all = 0;
	for (unsigned i = 0; i < n; i++)
		all += r[i].len;
	for (unsigned i = 0; i < n && out < cap; i++) {
		size_t want = r[i].len < cap - out ? (size_t)r[i].len : cap - out;
		struct iovec iov = {io->stage + out, want};
		if (!want)
			continue;
		ssize_t got = preadv2(file, &iov, 1, (off_t)r[i].off, RWF_NOWAIT);
		if (got <= 0)
			break;
		out += (size_t)got;
		if ((size_t)got < r[i].len)
			break;
	}
	if (!out)
		return -EAGAIN;
	bool whole = out == all;
	if (whole && taillen) {
		memcpy(io->stage + out, tail, taillen);
		out += taillen;
	}
	return io_try_send(io, sock, io->stage, out);
}

int io_wait(struct io *io, struct io_cqe *out, unsigned max)
{
	return io->ops->wait(io, out, max);
}
