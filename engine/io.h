/* The engine's I/O interface: every socket and disk operation of a worker
 * is submitted here and comes back as a decoded completion. Two backends
 * implement it (io_uring.c, io_epoll.c); nothing above this header knows
 * which one runs. Nothing here blocks the calling thread on the disk or on
 * the network: the epoll backend does disk I/O on a helper thread.
 *
 * Every operation carries a 64-bit tag chosen by the caller, packing
 * op | slot | generation (or op | pointer); its completion hands the tag
 * back, so a completion for a closed and reused slot is recognised. */
#ifndef POSTERN_IO_H
#define POSTERN_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* Tags' op numbers; worker.c routes completions by them. IO_OP_WAKE is
 * produced by the interface itself. */
enum io_op {
	IO_OP_ACCEPT = 1, /* slot = listener index, gen = configuration */
	IO_OP_RECV,       /* slot/gen = inbound connection */
	IO_OP_SEND,
	IO_OP_TICK,       /* periodic timer */
	IO_OP_WAKE,       /* io_wake() from another thread */
	IO_OP_SPOOL_WRITE,/* pointer: struct spool_write */
	IO_OP_SPOOL_SYNC, /* fdatasync of a spool segment or directory */
	IO_OP_TARPIT,     /* slot/gen: a connection's delayed 5xx reply is due */
	IO_OP_OUT,        /* pointer: outbound connection, low 3 bits: its op */
	IO_OP_READ,       /* pointer: a file read (queue: DSN originals) */
	IO_OP_PACE,       /* slot/gen: a session reading discarded input may read again */
	IO_OP_MAX_
};

static inline uint64_t io_tag(unsigned op, uint32_t slot, uint32_t gen)
{
	return (uint64_t)op << 56 | (uint64_t)(slot & 0xffffff) << 32 | gen;
}
/* Tags that carry a pointer (user space addresses fit in 56 bits); the
 * pointer's low 3 bits (alignment) are free for the caller's sub-op. */
static inline uint64_t io_tag_ptr(unsigned op, const void *p, unsigned sub)
{
	return (uint64_t)op << 56 | (uint64_t)(uintptr_t)p | (sub & 7);
}

/* A completion, decoded. */
struct io_cqe {
	uint64_t tag;
	unsigned op;      /* tag >> 56 */
	uint32_t slot;    /* tag bits 32..55 */
	uint32_t gen;     /* tag bits 0..31 */
	int res;          /* bytes, a new fd (accept), 0, or -errno */
	bool more;        /* a multishot operation stays armed */
	int bid;          /* recv: the provided buffer holding the bytes, or -1 */
};

static inline void *io_cqe_ptr(const struct io_cqe *c)
{
	return (void *)(uintptr_t)(c->tag & ((1ull << 56) - 8));
}
static inline unsigned io_cqe_sub(const struct io_cqe *c)
{
	return (unsigned)(c->tag & 7);
}

enum io_backend { IO_BACKEND_AUTO, IO_BACKEND_URING, IO_BACKEND_EPOLL };

const char *io_backend_name(enum io_backend b);

/* Which backend a worker should open for want: AUTO becomes io_uring when
 * the kernel lets this process set up a ring, else epoll, with why (the
 * reason io_uring failed) filled in. Returns AUTO (with why) when io_uring
 * was asked for explicitly and cannot be had. */
enum io_backend io_probe(enum io_backend want, char *why, size_t whylen);

struct io_params {
	unsigned entries;     /* submission queue size (io_uring) */
	unsigned nbufs;       /* provided receive buffers, a power of two */
	unsigned bufsz;       /* bytes each */
};

struct io;

/* Opens a backend on the calling thread (io_uring: SINGLE_ISSUER, every
 * call below must come from this thread except io_wake). NULL with err. */
struct io *io_open(enum io_backend b, const struct io_params *p, char *err,
		   size_t errlen);
void io_close(struct io *io);
enum io_backend io_kind(const struct io *io);

/* Sockets. Socket fds may be blocking or not: the backend sets what it
 * needs. Accepted sockets are close-on-exec. At most one operation may be
 * pending on each side of a socket: one of accept/recv/recv_into, and one
 * of send/sendfile/connect. Before closing a socket, cancel what is
 * pending and wait for its completions (a cancelled sendfile already
 * under way may still complete with the bytes it sent). */

/* Multishot accept: one completion per connection (res = fd), more=false
 * when it ended (error or cancel): the caller re-arms. */
void io_accept(struct io *io, int fd, uint64_t tag);
/* Multishot recv into the provided buffers: res > 0 bytes in buffer bid,
 * res = 0 end of stream, -ENOBUFS when every buffer is held (ends it: re-arm
 * once a buffer came back), more=false when it ended. */
void io_recv(struct io *io, int fd, uint64_t tag);
/* One recv into a provided buffer: a single completion (more=false) with
 * what io_recv's would hold. A session that falls behind its client reads
 * one buffer a loop turn this way: a multishot recv on io_uring posts all
 * the socket holds (megabytes) before a cancel reaches the kernel. */
void io_recv_once(struct io *io, int fd, uint64_t tag);
/* One recv into the caller's buffer: res bytes, 0 at end of stream. */
void io_recv_into(struct io *io, int fd, void *buf, size_t len, uint64_t tag);
/* One send; res may be short: the caller sends the rest. */
void io_send(struct io *io, int fd, const void *buf, size_t len, uint64_t tag);
/* Sends that do not wait, for a peer that waits for them before it
 * answers (an outbound SMTP step): done now, as a plain send() would be,
 * instead of with the loop's next batch. They return the bytes sent, or
 * -EAGAIN when they would have to wait (the socket is full, or the file
 * range is not in the page cache): then the caller submits io_send or
 * io_sendfile. No completion follows either way. */
long io_try_send(struct io *io, int fd, const void *buf, size_t len);
/* A stretch of a file. */
struct io_range {
	uint64_t off, len;
};
/* io_try_sendfile sends the n ranges of file in order, and tail behind
 * them when all of them go in this one send (see io_sendfile): one send,
 * one segment on the wire, for a message stored in several pieces (the
 * Received field and the body), so the next hop is woken once. res counts
 * the ranges' bytes first, then the tail's. */
long io_try_sendfile(struct io *io, int sock, int file, const struct io_range *r, unsigned n,
		     const void *tail, size_t taillen);
/* Up to len bytes of file at off to the socket, then tail (at most
 * IO_TAIL_MAX bytes, copied; NULL for none) when the whole range goes out
 * in this operation and the backend can add it: res counts both and may
 * be short, and res <= len means none of the tail went. The end-of-data
 * line rides with the last piece of a message this way. */
#define IO_TAIL_MAX 16
void io_sendfile(struct io *io, int sock, int file, uint64_t off, size_t len,
		 const void *tail, size_t taillen, uint64_t tag);
/* Connects a new socket: res 0 or -errno. sa is copied. */
void io_connect(struct io *io, int fd, const struct sockaddr *sa, socklen_t len,
		uint64_t tag);

/* Files (on a helper thread with epoll). iov and buf must stay valid until
 * the completion; res is bytes or -errno, short at end of file (a read may
 * also come back short on io_uring: callers treat short as an error).
 * A write of up to 128 KiB on a filesystem that cannot write to its
 * page cache without waiting (RWF_NOWAIT refused, as ext4 does) is made on
 * the calling thread instead of a woken one: a copy that waits for memory,
 * not for the disk (one that took over 5 ms, for the kernel's dirty page
 * throttling, sends writes to the backend for a second). Its
 * completion still comes from io_wait. */
void io_writev(struct io *io, int fd, const struct iovec *iov, unsigned n, uint64_t off,
	       uint64_t tag);
/* Small writes are made on the calling thread (learnt at the first one). */
bool io_writes_inline(const struct io *io);
void io_read(struct io *io, int fd, void *buf, size_t len, uint64_t off, uint64_t tag);
void io_fsync(struct io *io, int fd, bool datasync, uint64_t tag);

/* A timer: res -ETIME after ms. */
void io_timeout(struct io *io, uint64_t ms, uint64_t tag);
/* Cancels the pending operation with this tag: it completes with
 * -ECANCELED (or with its result, when it was done already). A file
 * operation under way is not cancelled. */
void io_cancel(struct io *io, uint64_t target);

/* Provided receive buffers: the bytes of a recv completion, and giving the
 * buffer back once nobody holds it. */
char *io_buf(struct io *io, unsigned bid);
void io_buf_recycle(struct io *io, unsigned bid);

/* Any thread: makes the worker's io_wait return an IO_OP_WAKE completion
 * with res 0 (wake-ups coalesce: one completion may answer several calls). */
void io_wake(struct io *io);

/* Submits what is queued, waits for at least one completion and decodes
 * up to max of them into out. Returns how many, or -errno. */
int io_wait(struct io *io, struct io_cqe *out, unsigned max);

#endif
