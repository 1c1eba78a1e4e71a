/* The I/O interface's front (see io.h): picks a backend and forwards each
 * call to it. Owns no I/O of its own. */
#include "io.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "io_backend.h"

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

void io_writev(struct io *io, int fd, const struct iovec *iov, unsigned n, uint64_t off,
	       uint64_t tag)
{
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
