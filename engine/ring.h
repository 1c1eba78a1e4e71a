/* The engine's I/O interface: submit accept/recv/send/fsync/timeout/cancel,
 * reap completions. io_uring today; kept small so an epoll backend can be
 * added without touching session or store code. Every operation carries a
 * 64-bit tag packing op | slot | generation. */
#ifndef POSTERN_RING_H
#define POSTERN_RING_H

#include <liburing.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ring_op {
	OP_ACCEPT = 1, /* slot = listener index */
	OP_RECV,       /* slot/gen = connection */
	OP_SEND,
	OP_TICK,       /* periodic timer */
	OP_CANCEL,     /* result of a cancel request: ignored */
	OP_WAKE,       /* read on the worker's eventfd */
	OP_SPOOL_WRITE,/* low 56 bits: struct spool_write * */
	OP_SPOOL_SYNC, /* fdatasync of a spool segment or directory */
	OP_TARPIT,     /* a connection's delayed 5xx reply is due */
	OP_OUT_POLL,   /* low 56 bits: struct oconn * (deliver.c) */
};

static inline uint64_t ring_tag(unsigned op, uint32_t slot, uint32_t gen)
{
	return (uint64_t)op << 56 | (uint64_t)(slot & 0xffffff) << 32 | gen;
}
static inline unsigned ring_tag_op(uint64_t t) { return (unsigned)(t >> 56); }
static inline uint32_t ring_tag_slot(uint64_t t) { return (uint32_t)(t >> 32) & 0xffffff; }
static inline uint32_t ring_tag_gen(uint64_t t) { return (uint32_t)t; }

struct ring {
	struct io_uring uring;
	bool defer_taskrun;   /* kernel took SINGLE_ISSUER|DEFER_TASKRUN */
};

/* Must be called on the thread that will submit (SINGLE_ISSUER). Falls back
 * to plainer setups on older kernels; err says why when it fails. */
int ring_init(struct ring *r, unsigned entries, char *err, size_t errlen);
void ring_exit(struct ring *r);

void ring_accept_multishot(struct ring *r, int fd, uint64_t tag);
void ring_recv_multishot(struct ring *r, int fd, uint16_t bgid, uint64_t tag);
void ring_send(struct ring *r, int fd, const void *buf, size_t len, uint64_t tag);
void ring_fsync(struct ring *r, int fd, bool datasync, uint64_t tag);
void ring_timeout(struct ring *r, struct __kernel_timespec *ts, uint64_t tag);
void ring_cancel(struct ring *r, uint64_t target);
void ring_poll(struct ring *r, int fd, unsigned mask, uint64_t tag);
void ring_read(struct ring *r, int fd, void *buf, unsigned len, uint64_t tag);
void ring_writev(struct ring *r, int fd, const struct iovec *iov, unsigned n,
		 uint64_t off, uint64_t tag);

/* Tags that carry a pointer (user space addresses fit in 56 bits). */
static inline uint64_t ring_tag_ptr(unsigned op, const void *p)
{
	return (uint64_t)op << 56 | (uint64_t)(uintptr_t)p;
}
static inline void *ring_tag_to_ptr(uint64_t t)
{
	return (void *)(uintptr_t)(t & ((1ull << 56) - 1));
}

/* Submits what is queued and waits for at least one completion. */
int ring_submit_wait(struct ring *r);

#endif
