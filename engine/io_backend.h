/* Private to the I/O interface (io_select.c) and its backends: the table of
 * operations each backend fills in. Nothing else includes this. */
#ifndef POSTERN_IO_BACKEND_H
#define POSTERN_IO_BACKEND_H

#include "io.h"

struct io_ops {
	void (*close)(struct io *io);
	void (*accept)(struct io *io, int fd, uint64_t tag);
	void (*recv)(struct io *io, int fd, uint64_t tag);
	void (*recv_once)(struct io *io, int fd, uint64_t tag);
	void (*recv_into)(struct io *io, int fd, void *buf, size_t len, uint64_t tag);
	void (*send)(struct io *io, int fd, const void *buf, size_t len, uint64_t tag);
	void (*sendfile)(struct io *io, int sock, int file, uint64_t off, size_t len,
			 const void *tail, size_t taillen, uint64_t tag);
	void (*connect)(struct io *io, int fd, const struct sockaddr *sa, socklen_t len,
			uint64_t tag);
	void (*writev)(struct io *io, int fd, const struct iovec *iov, unsigned n,
		       uint64_t off, uint64_t tag);
	void (*read)(struct io *io, int fd, void *buf, size_t len, uint64_t off, uint64_t tag);
	void (*fsync)(struct io *io, int fd, bool datasync, uint64_t tag);
	void (*timeout)(struct io *io, uint64_t ms, uint64_t tag);
	void (*cancel)(struct io *io, uint64_t target);
	char *(*buf)(struct io *io, unsigned bid);
	void (*buf_recycle)(struct io *io, unsigned bid);
	void (*wake)(struct io *io);
	int (*wait)(struct io *io, struct io_cqe *out, unsigned max);
	/* A completion decided without the kernel (a write done on the
	 * calling thread): handed out by the next wait, never by this call. */
	void (*post)(struct io *io, uint64_t tag, int res);
};

/* io_writev's small writes on a filesystem that cannot do them without
 * waiting (see io_select.c). */
enum io_inline { IO_INLINE_UNKNOWN, IO_INLINE_NO, IO_INLINE_YES };

/* Every backend's state begins with this. */
struct io {
	const struct io_ops *ops;
	enum io_backend kind;
	char *stage;              /* IO_STAGE bytes for io_try_sendfile */
	enum io_inline inline_writes;
	uint64_t inline_paused_until_ns; /* a slow one: the backend's until then */
	uint64_t inline_stalls;   /* how often that happened */
};

#define IO_STAGE (64u * 1024)

static inline void io_cqe_decode(struct io_cqe *c, uint64_t tag, int res, bool more,
				 int bid)
{
	c->tag = tag;
	c->op = (unsigned)(tag >> 56);
	c->slot = (uint32_t)(tag >> 32) & 0xffffff;
	c->gen = (uint32_t)tag;
	c->res = res;
	c->more = more;
	c->bid = bid;
}

/* The backends' constructors (NULL with err). */
struct io *io_uring_backend_open(const struct io_params *p, char *err, size_t errlen);
struct io *io_epoll_backend_open(const struct io_params *p, char *err, size_t errlen);
/* 0 when this process can set up what a worker's io_uring backend needs;
 * else -1 with why filled in. */
int io_uring_backend_probe(char *why, size_t whylen);

#endif
