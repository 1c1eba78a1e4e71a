/* io_uring backend of the engine I/O interface (see ring.h). */
#include "ring.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

int ring_init(struct ring *r, unsigned entries, char *err, size_t errlen)
{
	static const unsigned tries[] = {
		IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_COOP_TASKRUN,
		0,
	};
	int ret = -EINVAL;
	memset(r, 0, sizeof(*r));
	for (size_t i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE |
			  (tries[i] ? tries[i] | IORING_SETUP_SUBMIT_ALL : 0);
		p.cq_entries = entries * 4;
		ret = io_uring_queue_init_params(entries, &r->uring, &p);
		if (ret == 0) {
			r->defer_taskrun = (tries[i] & IORING_SETUP_DEFER_TASKRUN) != 0;
			if (i > 0)
				log_msg(LOG_INFO, "event=ring_setup flags=0x%x note=\"kernel lacks DEFER_TASKRUN\"",
					tries[i]);
			return 0;
		}
		if (ret != -EINVAL)
			break;
	}
	snprintf(err, errlen,
		 "io_uring unavailable (%s): Postern needs io_uring; check kernel.io_uring_disabled and the container's seccomp profile",
		 strerror(-ret));
	return ret;
}

void ring_exit(struct ring *r)
{
	io_uring_queue_exit(&r->uring);
}

static struct io_uring_sqe *get_sqe(struct ring *r)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->uring);
	while (!sqe) {
		/* Submission queue full: hand it to the kernel and retry. */
		io_uring_submit(&r->uring);
		sqe = io_uring_get_sqe(&r->uring);
	}
	return sqe;
}

void ring_accept_multishot(struct ring *r, int fd, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(r);
	io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, tag);
}

void ring_recv_multishot(struct ring *r, int fd, uint16_t bgid, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(r);
	io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = bgid;
	io_uring_sqe_set_data64(sqe, tag);
}

void ring_send(struct ring *r, int fd, const void *buf, size_t len, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(r);
	io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, tag);
}

void ring_fsync(struct ring *r, int fd, bool datasync, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(r);
	io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
	io_uring_sqe_set_data64(sqe, tag);
}

void ring_timeout(struct ring *r, struct __kernel_timespec *ts, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(r);
	io_uring_prep_timeout(sqe, ts, 0, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

void ring_cancel(struct ring *r, uint64_t target)
{
	struct io_uring_sqe *sqe = get_sqe(r);
	io_uring_prep_cancel64(sqe, target, 0);
	io_uring_sqe_set_data64(sqe, ring_tag(OP_CANCEL, 0, 0));
}

void ring_poll(struct ring *r, int fd, unsigned mask, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(r);
	io_uring_prep_poll_add(sqe, fd, mask);
	io_uring_sqe_set_data64(sqe, tag);
}

void ring_read(struct ring *r, int fd, void *buf, unsigned len, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(r);
	io_uring_prep_read(sqe, fd, buf, len, 0);
	io_uring_sqe_set_data64(sqe, tag);
}

void ring_writev(struct ring *r, int fd, const struct iovec *iov, unsigned n,
		 uint64_t off, uint64_t tag)
{
	struct io_uring_sqe *sqe = get_sqe(r);
	io_uring_prep_writev(sqe, fd, iov, n, off);
	io_uring_sqe_set_data64(sqe, tag);
}

int ring_submit_wait(struct ring *r)
{
	int ret;
	do
		ret = io_uring_submit_and_wait(&r->uring, 1);
	while (ret == -EINTR);
	return ret < 0 ? ret : 0;
}
