/* Provided-buffer ring (see bufring.h). */
#include "bufring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int bufring_init(struct bufring *b, struct io_uring *ring, uint16_t bgid,
		 unsigned entries, unsigned bufsz)
{
	memset(b, 0, sizeof(*b));
	b->entries = entries;
	b->bufsz = bufsz;
	b->bgid = bgid;
	b->ring_bytes = entries * sizeof(struct io_uring_buf);
	void *m = mmap(NULL, b->ring_bytes, PROT_READ | PROT_WRITE,
		       MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (m == MAP_FAILED)
		return -errno;
	b->br = m;
	b->mem = aligned_alloc(4096, (size_t)entries * bufsz);
	if (!b->mem) {
		munmap(m, b->ring_bytes);
		return -ENOMEM;
	}
	struct io_uring_buf_reg reg = {
		.ring_addr = (uint64_t)(uintptr_t)m,
		.ring_entries = entries,
		.bgid = bgid,
	};
	int ret = io_uring_register_buf_ring(ring, &reg, 0);
	if (ret) {
		free(b->mem);
		munmap(m, b->ring_bytes);
		return ret;
	}
	io_uring_buf_ring_init(b->br);
	int mask = io_uring_buf_ring_mask(entries);
	for (unsigned i = 0; i < entries; i++)
		io_uring_buf_ring_add(b->br, bufring_buf(b, i), bufsz, (unsigned short)i,
				      mask, (int)i);
	io_uring_buf_ring_advance(b->br, (int)entries);
	return 0;
}

void bufring_recycle(struct bufring *b, unsigned bid)
{
	io_uring_buf_ring_add(b->br, bufring_buf(b, bid), b->bufsz,
			      (unsigned short)bid, io_uring_buf_ring_mask(b->entries), 0);
	io_uring_buf_ring_advance(b->br, 1);
}

void bufring_free(struct bufring *b, struct io_uring *ring)
{
	if (!b->br)
		return;
	io_uring_unregister_buf_ring(ring, b->bgid);
	munmap(b->br, b->ring_bytes);
	free(b->mem);
	b->br = NULL;
}
