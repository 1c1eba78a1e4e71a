/* Provided-buffer ring for multishot recv: the kernel picks a buffer per
 * completion, so an idle connection owns no receive buffer. liburing 2.3 has
 * no io_uring_setup_buf_ring(), so the ring memory is mmap'd here. */
#ifndef POSTERN_BUFRING_H
#define POSTERN_BUFRING_H

#include <liburing.h>
#include <stddef.h>
#include <stdint.h>

struct bufring {
	struct io_uring_buf_ring *br;
	size_t ring_bytes;
	char *mem;
	unsigned entries;     /* power of two */
	unsigned bufsz;
	uint16_t bgid;
};

int bufring_init(struct bufring *b, struct io_uring *ring, uint16_t bgid,
		 unsigned entries, unsigned bufsz);
void bufring_free(struct bufring *b, struct io_uring *ring);

static inline char *bufring_buf(const struct bufring *b, unsigned bid)
{
	return b->mem + (size_t)bid * b->bufsz;
}

/* Gives buffer bid back to the kernel. */
void bufring_recycle(struct bufring *b, unsigned bid);

#endif
