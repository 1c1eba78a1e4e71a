/* Unit tests for the I/O interface (engine/io.h): the same scenarios run
 * against each backend (epoll always, io_uring where this process may set
 * up a ring) over loopback TCP and an unlinked temporary file. Every wait
 * is bounded by a guard timer, and each test by alarm(). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "io.h"

#define RIG_FDS 16
#define RIG_STASH 256
#define RIG_WAITS 1000         /* io_wait calls one expectation may take */
#define RIG_GUARD_MS 3000      /* how long one expectation may take */
#define RIG_GUARD_SLOT 0xffffff
#define RIG_NBUFS 8
#define RIG_BUFSZ 4096

/* Reads want bytes from a peer socket on its own thread, so that the
 * sender under test can fill the socket buffers and wait for room. */
struct reader {
	pthread_t thread;
	int fd;
	char *buf;
	size_t want, got;
	int err;
};

struct rig {
	enum io_backend kind;
	struct io *io;
	int fds[RIG_FDS];
	unsigned nfds;
	struct io_cqe stash[RIG_STASH]; /* completions nobody asked for yet */
	unsigned nstash;
	uint32_t guard_gen;
	struct reader *reader;
	pthread_t waker;
	bool waker_started;
};

static enum io_backend kind_epoll = IO_BACKEND_EPOLL;
static enum io_backend kind_uring = IO_BACKEND_URING;

static struct io *rig_open_io(enum io_backend kind, unsigned nbufs, unsigned bufsz)
{
	struct io_params p = {.entries = 64, .nbufs = nbufs, .bufsz = bufsz};
	char err[256] = "";
	struct io *io = io_open(kind, &p, err, sizeof(err));
	if (!io)
		print_error("io_open(%s): %s\n", io_backend_name(kind), err);
	return io;
}

static int rig_setup(void **state)
{
	alarm(20); /* a hang in a backend ends the run instead of the CI job */
	struct rig *r = calloc(1, sizeof(*r));
	if (!r)
		return -1;
	r->kind = *(enum io_backend *)*state;
	r->io = rig_open_io(r->kind, RIG_NBUFS, RIG_BUFSZ);
	if (!r->io) {
		free(r);
		return -1;
	}
	*state = r;
	return 0;
}

static int rig_teardown(void **state)
{
	struct rig *r = *state;
	/* shutdown wakes a reader blocked in recv on any of them */
	for (unsigned i = 0; i < r->nfds; i++)
		shutdown(r->fds[i], SHUT_RDWR);
	if (r->reader) {
		pthread_join(r->reader->thread, NULL);
		free(r->reader->buf);
		free(r->reader);
	}
	if (r->waker_started)
		pthread_join(r->waker, NULL);
	if (r->io)
		io_close(r->io);
	for (unsigned i = 0; i < r->nfds; i++)
		close(r->fds[i]);
	free(r);
	alarm(0);
	return 0;
}

static int rig_track(struct rig *r, int fd)
{
	assert_true(fd >= 0);
	assert_true(r->nfds < RIG_FDS);
	r->fds[r->nfds++] = fd;
	return fd;
}

/* --- waiting for completions --- */

static bool rig_take(struct rig *r, bool by_op, uint64_t want, struct io_cqe *out)
{
	for (unsigned i = 0; i < r->nstash; i++) {
		if (by_op ? r->stash[i].op != want : r->stash[i].tag != want)
			continue;
		*out = r->stash[i];
		memmove(&r->stash[i], &r->stash[i + 1], (r->nstash - i - 1) * sizeof(*out));
		r->nstash--;
		return true;
	}
	return false;
}

/* The next completion with tag want (or op want): others wait in the
 * stash for their turn. */
static struct io_cqe rig_await_any(struct rig *r, bool by_op, uint64_t want, const char *what)
{
	struct io_cqe c;
	memset(&c, 0, sizeof(c));
	if (rig_take(r, by_op, want, &c))
		return c;
	uint64_t guard = io_tag(IO_OP_TICK, RIG_GUARD_SLOT, ++r->guard_gen);
	io_timeout(r->io, RIG_GUARD_MS, guard);
	for (int i = 0; i < RIG_WAITS; i++) {
		struct io_cqe got[16];
		int n = io_wait(r->io, got, 16);
		if (n < 0) {
			fail_msg("%s: io_wait: %s", what, strerror(-n));
			return c;
		}
		for (int k = 0; k < n; k++) {
			if (got[k].tag == guard) {
				fail_msg("%s: nothing in %d ms", what, RIG_GUARD_MS);
				return c;
			}
			/* earlier guards */
			if (got[k].op == IO_OP_TICK && got[k].slot == RIG_GUARD_SLOT)
				continue;
			if (r->nstash == RIG_STASH) {
				fail_msg("%s: more than %d completions unclaimed", what, RIG_STASH);
				return c;
			}
			r->stash[r->nstash++] = got[k];
		}
		if (rig_take(r, by_op, want, &c)) {
			io_cancel(r->io, guard);
			return c;
		}
	}
	fail_msg("%s: not there after %d io_wait calls", what, RIG_WAITS);
	return c;
}

static struct io_cqe rig_await(struct rig *r, uint64_t tag, const char *what)
{
	return rig_await_any(r, false, tag, what);
}

/* --- sockets and files --- */

static int rig_listener(struct rig *r, struct sockaddr_in *addr)
{
	int fd = rig_track(r, socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 16), 0);
	socklen_t len = sizeof(*addr);
	assert_int_equal(getsockname(fd, (struct sockaddr *)addr, &len), 0);
	return fd;
}

static int rig_dial(struct rig *r, const struct sockaddr_in *addr)
{
	int fd = rig_track(r, socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
	assert_int_equal(connect(fd, (const struct sockaddr *)addr, sizeof(*addr)), 0);
	return fd;
}

/* A connected loopback pair made with plain syscalls: srv is the side
 * handed to the backend, cli the test's peer. */
static void rig_pair(struct rig *r, int *srv, int *cli)
{
	struct sockaddr_in addr;
	int l = rig_listener(r, &addr);
	*cli = rig_dial(r, &addr);
	*srv = rig_track(r, accept4(l, NULL, NULL, SOCK_CLOEXEC));
}

/* Small socket buffers: a big transfer comes back short and waits for
 * room more than once. */
static void rig_narrow(int srv, int cli)
{
	int sz = 16384;
	assert_int_equal(setsockopt(srv, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
	assert_int_equal(setsockopt(cli, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)), 0);
}

static void peer_send(int fd, const void *buf, size_t len)
{
	assert_int_equal(send(fd, buf, len, MSG_NOSIGNAL), (ssize_t)len);
}

/* Bytes that differ at every offset a test could get wrong. */
static void fill_pattern(char *p, size_t len, uint32_t seed)
{
	uint32_t x = seed | 1;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = (char)x;
	}
}

static int rig_tmpfile(struct rig *r)
{
	char path[] = "/tmp/test_io.XXXXXX";
	int fd = rig_track(r, mkstemp(path));
	unlink(path);
	return fd;
}

static void *reader_main(void *arg)
{
	struct reader *rd = arg;
	/* a late start: the sender finds the socket full and must wait */
	struct timespec ts = {.tv_nsec = 30 * 1000000};
	nanosleep(&ts, NULL);
	while (rd->got < rd->want) {
		ssize_t n = recv(rd->fd, rd->buf + rd->got, rd->want - rd->got, 0);
		if (n <= 0) {
			rd->err = n < 0 ? errno : 0;
			break;
		}
		rd->got += (size_t)n;
	}
	return NULL;
}

static struct reader *rig_reader_start(struct rig *r, int fd, size_t want)
{
	struct reader *rd = calloc(1, sizeof(*rd));
	assert_non_null(rd);
	rd->fd = fd;
	rd->want = want;
	rd->buf = malloc(want);
	assert_non_null(rd->buf);
	r->reader = rd;
	assert_int_equal(pthread_create(&rd->thread, NULL, reader_main, rd), 0);
	return rd;
}

static struct reader *rig_reader_join(struct rig *r)
{
	struct reader *rd = r->reader;
	pthread_join(rd->thread, NULL);
	r->reader = NULL;
	return rd;
}

static void reader_free(struct reader *rd)
{
	free(rd->buf);
	free(rd);
}

/* --- the scenarios --- */

static void test_accept_two(void **state)
{
	struct rig *r = *state;
	struct sockaddr_in addr;
	int l = rig_listener(r, &addr);
	uint64_t tag = io_tag(IO_OP_ACCEPT, 3, 7);
	io_accept(r->io, l, tag);
	int cli[2] = {rig_dial(r, &addr), rig_dial(r, &addr)};
	struct sockaddr_in local[2];
	for (int i = 0; i < 2; i++) {
		socklen_t len = sizeof(local[i]);
		assert_int_equal(getsockname(cli[i], (struct sockaddr *)&local[i], &len), 0);
	}
	bool seen[2] = {false, false};
	for (int i = 0; i < 2; i++) {
		struct io_cqe c = rig_await(r, tag, "accept");
		CHECK_INT("accept", c.op, IO_OP_ACCEPT);
		CHECK_INT("accept", c.slot, 3);
		CHECK_INT("accept", c.gen, 7);
		CHECK_INT("accept", c.more, true);
		CHECK_INT("accept", c.bid, -1);
		assert_true(c.res >= 0);
		int fd = rig_track(r, c.res);
		assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
		struct sockaddr_in peer;
		socklen_t len = sizeof(peer);
		assert_int_equal(getpeername(fd, (struct sockaddr *)&peer, &len), 0);
		int which = peer.sin_port == local[0].sin_port ? 0
			  : peer.sin_port == local[1].sin_port ? 1 : -1;
		assert_true(which >= 0 && !seen[which]);
		seen[which] = true;
	}
	io_cancel(r->io, tag);
	struct io_cqe c = rig_await(r, tag, "accept cancelled");
	CHECK_INT("accept cancelled", c.res, -ECANCELED);
	CHECK_INT("accept cancelled", c.more, false);
}

static void test_recv_multishot(void **state)
{
	struct rig *r = *state;
	int srv, cli;
	rig_pair(r, &srv, &cli);
	uint64_t tag = io_tag(IO_OP_RECV, 11, 2);
	io_recv(r->io, srv, tag);
	enum { N = 10000 };
	char want[N], got[N];
	fill_pattern(want, N, 1);
	peer_send(cli, want, N);
	size_t total = 0;
	while (total < N) {
		struct io_cqe c = rig_await(r, tag, "recv");
		CHECK_INT("recv", c.more, true);
		assert_true(c.res > 0 && total + (size_t)c.res <= N);
		assert_true(c.bid >= 0 && c.bid < RIG_NBUFS);
		memcpy(got + total, io_buf(r->io, (unsigned)c.bid), (size_t)c.res);
		io_buf_recycle(r->io, (unsigned)c.bid);
		total += (size_t)c.res;
	}
	assert_memory_equal(got, want, N);
	shutdown(cli, SHUT_WR);
	struct io_cqe c = rig_await(r, tag, "recv at end of stream");
	CHECK_INT("recv at end of stream", c.res, 0);
	CHECK_INT("recv at end of stream", c.more, false);
}

/* io_recv_once: one buffer and one completion (more=false), however much
 * the socket holds; nothing more comes until it is armed again. */
static void test_recv_once(void **state)
{
	struct rig *r = *state;
	int srv, cli;
	rig_pair(r, &srv, &cli);
	enum { N = 4 * RIG_BUFSZ };
	static char want[N], got[N];
	fill_pattern(want, N, 3);
	peer_send(cli, want, N);
	uint64_t tag = io_tag(IO_OP_RECV, 12, 4);
	size_t total = 0;
	for (int i = 0; total < N && i < 100; i++) {
		io_recv_once(r->io, srv, tag);
		struct io_cqe c = rig_await(r, tag, "recv once");
		CHECK_INT("recv once", c.more, false);
		assert_true(c.res > 0 && c.res <= RIG_BUFSZ && total + (size_t)c.res <= N);
		assert_true(c.bid >= 0 && c.bid < RIG_NBUFS);
		memcpy(got + total, io_buf(r->io, (unsigned)c.bid), (size_t)c.res);
		io_buf_recycle(r->io, (unsigned)c.bid);
		total += (size_t)c.res;
		if (i == 0) {
			/* the socket still holds the rest: nothing more is posted */
			uint64_t t = io_tag(IO_OP_TICK, 1, 1);
			io_timeout(r->io, 50, t);
			rig_await(r, t, "quiet after one recv");
			struct io_cqe extra;
			assert_false(rig_take(r, false, tag, &extra));
		}
	}
	CHECK_INT("recv once", total, N);
	assert_memory_equal(got, want, N);
	/* cancelled while it waits; then the end of the stream */
	io_recv_once(r->io, srv, tag);
	io_cancel(r->io, tag);
	struct io_cqe c = rig_await(r, tag, "recv once cancelled");
	CHECK_INT("recv once cancelled", c.res, -ECANCELED);
	CHECK_INT("recv once cancelled", c.more, false);
	shutdown(cli, SHUT_WR);
	io_recv_once(r->io, srv, tag);
	c = rig_await(r, tag, "recv once at end of stream");
	CHECK_INT("recv once at end of stream", c.res, 0);
	CHECK_INT("recv once at end of stream", c.more, false);
}

static void test_send(void **state)
{
	struct rig *r = *state;
	int srv, cli;
	rig_pair(r, &srv, &cli);
	rig_narrow(srv, cli);
	size_t n = 4u << 20;
	char *buf = malloc(n);
	assert_non_null(buf);
	fill_pattern(buf, n, 2);
	struct reader *rd = rig_reader_start(r, cli, n);
	uint64_t tag = io_tag(IO_OP_SEND, 5, 9);
	size_t sent = 0;
	for (int i = 0; sent < n && i < 10000; i++) {
		io_send(r->io, srv, buf + sent, n - sent, tag);
		struct io_cqe c = rig_await(r, tag, "send");
		CHECK_INT("send", c.more, false);
		CHECK_INT("send", c.bid, -1);
		assert_true(c.res > 0 && (size_t)c.res <= n - sent);
		sent += (size_t)c.res;
	}
	CHECK_INT("send", sent, n);
	rd = rig_reader_join(r);
	CHECK_INT("peer", rd->got, n);
	assert_memory_equal(rd->buf, buf, n);
	reader_free(rd);
	free(buf);
}

static void test_recv_enobufs(void **state)
{
	struct rig *r = *state;
	io_close(r->io);
	r->io = rig_open_io(r->kind, 2, RIG_BUFSZ);
	assert_non_null(r->io);
	int srv, cli;
	rig_pair(r, &srv, &cli);
	uint64_t tag = io_tag(IO_OP_RECV, 1, 1);
	io_recv(r->io, srv, tag);
	int held[2];
	for (int i = 0; i < 2; i++) {
		char b = (char)('a' + i);
		peer_send(cli, &b, 1);
		struct io_cqe c = rig_await(r, tag, "recv into a free buffer");
		CHECK_INT("recv into a free buffer", c.res, 1);
		CHECK_INT("recv into a free buffer", c.more, true);
		assert_true(c.bid >= 0 && c.bid < 2);
		CHECK_INT("recv into a free buffer", io_buf(r->io, (unsigned)c.bid)[0], b);
		held[i] = c.bid;
	}
	assert_int_not_equal(held[0], held[1]);
	peer_send(cli, "c", 1);
	struct io_cqe c = rig_await(r, tag, "recv with every buffer held");
	CHECK_INT("recv with every buffer held", c.res, -ENOBUFS);
	CHECK_INT("recv with every buffer held", c.more, false);

	io_buf_recycle(r->io, (unsigned)held[0]);
	io_buf_recycle(r->io, (unsigned)held[1]);
	io_recv(r->io, srv, tag);
	c = rig_await(r, tag, "recv re-armed");
	CHECK_INT("recv re-armed", c.res, 1);
	CHECK_INT("recv re-armed", c.more, true);
	assert_true(c.bid >= 0 && c.bid < 2);
	CHECK_INT("recv re-armed", io_buf(r->io, (unsigned)c.bid)[0], 'c');
	io_buf_recycle(r->io, (unsigned)c.bid);
}

static void test_recv_into(void **state)
{
	struct rig *r = *state;
	int srv, cli;
	rig_pair(r, &srv, &cli);
	char buf[100];
	uint64_t tag = io_tag(IO_OP_RECV, 4, 4);
	io_recv_into(r->io, srv, buf, sizeof(buf), tag);
	peer_send(cli, "hello", 5);
	struct io_cqe c = rig_await(r, tag, "recv_into");
	CHECK_INT("recv_into", c.res, 5);
	CHECK_INT("recv_into", c.more, false);
	CHECK_INT("recv_into", c.bid, -1);
	assert_memory_equal(buf, "hello", 5);
	/* end of stream already there when submitted */
	shutdown(cli, SHUT_WR);
	io_recv_into(r->io, srv, buf, sizeof(buf), tag);
	c = rig_await(r, tag, "recv_into at end of stream");
	CHECK_INT("recv_into at end of stream", c.res, 0);
	CHECK_INT("recv_into at end of stream", c.more, false);
}

static void test_connect(void **state)
{
	struct rig *r = *state;
	struct sockaddr_in addr;
	int l = rig_listener(r, &addr);
	/* blocking on purpose: the backend makes it what it needs */
	int s = rig_track(r, socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
	uint64_t tag = io_tag(IO_OP_OUT, 2, 3);
	struct sockaddr_in copy = addr;
	io_connect(r->io, s, (struct sockaddr *)&copy, sizeof(copy), tag);
	memset(&copy, 0, sizeof(copy)); /* the backend kept its own */
	struct io_cqe c = rig_await(r, tag, "connect");
	CHECK_INT("connect", c.res, 0);
	CHECK_INT("connect", c.more, false);
	CHECK_INT("connect", c.bid, -1);
	struct sockaddr_in peer;
	socklen_t len = sizeof(peer);
	assert_int_equal(getpeername(s, (struct sockaddr *)&peer, &len), 0);
	CHECK_INT("connect", peer.sin_port, addr.sin_port);
	rig_track(r, accept4(l, NULL, NULL, SOCK_CLOEXEC));

	/* a port nobody listens on: bound, then closed */
	int gone = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(gone, (struct sockaddr *)&a, sizeof(a)), 0);
	len = sizeof(a);
	assert_int_equal(getsockname(gone, (struct sockaddr *)&a, &len), 0);
	close(gone);
	s = rig_track(r, socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
	io_connect(r->io, s, (struct sockaddr *)&a, sizeof(a), tag + 1);
	c = rig_await(r, tag + 1, "connect refused");
	CHECK_INT("connect refused", c.res, -ECONNREFUSED);
	CHECK_INT("connect refused", c.more, false);
}

static void test_sendfile(void **state)
{
	struct rig *r = *state;
	int srv, cli;
	rig_pair(r, &srv, &cli);
	rig_narrow(srv, cli);
	size_t size = 3u << 20, off = 12345, len = size - off - 54321;
	char *data = malloc(size);
	assert_non_null(data);
	fill_pattern(data, size, 3);
	int file = rig_tmpfile(r);
	assert_int_equal(pwrite(file, data, size, 0), (ssize_t)size);
	struct reader *rd = rig_reader_start(r, cli, len + 3);
	uint64_t tag = io_tag_ptr(IO_OP_OUT, data, 5);
	size_t done = 0;
	/* The range, then a tail: the tail goes only behind the whole range,
	 * and what of it a short send left is sent like any buffer. */
	static const char tail[] = ".\r\n";
	size_t tail_done = 0;
	for (int i = 0; done < len && i < 10000; i++) {
		io_sendfile(r->io, srv, file, off + done, len - done, tail, 3, tag);
		struct io_cqe c = rig_await(r, tag, "sendfile");
		CHECK_INT("sendfile", c.more, false);
		CHECK_INT("sendfile", c.bid, -1);
		assert_true(c.res > 0 && (size_t)c.res <= len - done + 3);
		size_t n = (size_t)c.res;
		if (n > len - done) {
			tail_done = n - (len - done);
			n = len - done;
		}
		done += n;
	}
	CHECK_INT("sendfile", done, len);
	while (tail_done < 3) {
		io_send(r->io, srv, tail + tail_done, 3 - tail_done, tag);
		struct io_cqe c = rig_await(r, tag, "tail");
		assert_true(c.res > 0);
		tail_done += (size_t)c.res;
	}
	rd = rig_reader_join(r);
	CHECK_INT("peer", rd->got, len + 3);
	assert_memory_equal(rd->buf, data + off, len);
	assert_memory_equal(rd->buf + len, tail, 3);
	reader_free(rd);
	free(data);
}

/* io_try_sendfile: several ranges of a file in one send, the tail behind
 * them only when all of them went; a stretch longer than the stage goes
 * in parts, and the caller goes on from what was sent. */
static void test_try_sendfile_ranges(void **state)
{
	struct rig *r = *state;
	int srv, cli;
	rig_pair(r, &srv, &cli);
	size_t size = 256u << 10;
	char *data = malloc(size);
	assert_non_null(data);
	fill_pattern(data, size, 4);
	int file = rig_tmpfile(r);
	assert_int_equal(pwrite(file, data, size, 0), (ssize_t)size);
	static const char tail[] = ".\r\n";
	/* small: a Received field and a body, an empty piece between */
	struct io_range small[] = {{10, 194}, {500, 0}, {700, 1163}};
	long n = io_try_sendfile(r->io, srv, file, small, 3, tail, 3);
	CHECK_INT("small", n, 194 + 1163 + 3);
	char got[194 + 1163 + 3];
	size_t have = 0;
	while (have < sizeof(got)) {
		ssize_t k = recv(cli, got + have, sizeof(got) - have, 0);
		assert_true(k > 0);
		have += (size_t)k;
	}
	assert_memory_equal(got, data + 10, 194);
	assert_memory_equal(got + 194, data + 700, 1163);
	assert_memory_equal(got + 194 + 1163, tail, 3);
	/* large: 40 KiB + 150 KiB + 7 bytes, more than one stage holds */
	struct io_range big[] = {{1000, 40u << 10}, {60000, 150u << 10}, {250000, 7}};
	size_t want = (40u << 10) + (150u << 10) + 7;
	char *expect = malloc(want + 3);
	assert_non_null(expect);
	memcpy(expect, data + 1000, 40u << 10);
	memcpy(expect + (40u << 10), data + 60000, 150u << 10);
	memcpy(expect + (190u << 10), data + 250000, 7);
	memcpy(expect + want, tail, 3);
	struct reader *rd = rig_reader_start(r, cli, want + 3);
	size_t done = 0, calls = 0;
	bool tail_went = false;
	while (done < want && calls < 100000) {
		/* the ranges from done on, as outconn's send_body builds them */
		struct io_range left[3];
		unsigned nl = 0;
		uint64_t skip = done;
		for (unsigned i = 0; i < 3; i++) {
			if (skip >= big[i].len) {
				skip -= big[i].len;
				continue;
			}
			left[nl++] = (struct io_range){big[i].off + skip, big[i].len - skip};
			skip = 0;
		}
		calls++;
		n = io_try_sendfile(r->io, srv, file, left, nl, tail, 3);
		if (n == -EAGAIN) {
			struct timespec ts = {.tv_nsec = 1000000};
			nanosleep(&ts, NULL);
			continue;
		}
		assert_true(n > 0);
		/* never more than the stage, and the tail only behind all */
		assert_true((size_t)n <= 64u << 10);
		if ((size_t)n > want - done) {
			CHECK_INT("tail", (size_t)n - (want - done), 3);
			tail_went = true;
			n = (long)(want - done);
		}
		done += (size_t)n;
	}
	CHECK_INT("large", done, want);
	assert_true(calls >= 3);
	if (!tail_went)
		assert_int_equal(send(srv, tail, 3, MSG_NOSIGNAL), 3);
	rd = rig_reader_join(r);
	CHECK_INT("peer", rd->got, want + 3);
	assert_memory_equal(rd->buf, expect, want + 3);
	reader_free(rd);
	free(expect);
	free(data);
}

static void test_file_write_sync_read(void **state)
{
	struct rig *r = *state;
	int fd = rig_tmpfile(r);
	char big[1000];
	fill_pattern(big, sizeof(big), 4);
	struct iovec iov[3] = {
		{.iov_base = "abc", .iov_len = 3},
		{.iov_base = "defgh", .iov_len = 5},
		{.iov_base = big, .iov_len = sizeof(big)},
	};
	size_t total = 3 + 5 + sizeof(big);
	uint64_t tag = io_tag(IO_OP_SPOOL_WRITE, 0, 1);
	io_writev(r->io, fd, iov, 3, 4096, tag);
	struct io_cqe c = rig_await(r, tag, "writev");
	CHECK_INT("writev", c.res, total);
	CHECK_INT("writev", c.more, false);
	CHECK_INT("writev", c.bid, -1);

	io_fsync(r->io, fd, true, tag + 1);
	c = rig_await(r, tag + 1, "fdatasync");
	CHECK_INT("fdatasync", c.res, 0);
	io_fsync(r->io, fd, false, tag + 2);
	c = rig_await(r, tag + 2, "fsync");
	CHECK_INT("fsync", c.res, 0);

	char want[3 + 5 + sizeof(big)], got[sizeof(want) + 100];
	memcpy(want, "abcdefgh", 8);
	memcpy(want + 8, big, sizeof(big));
	io_read(r->io, fd, got, total, 4096, tag + 3);
	c = rig_await(r, tag + 3, "read");
	CHECK_INT("read", c.res, total);
	CHECK_INT("read", c.bid, -1);
	assert_memory_equal(got, want, total);

	/* short only at end of file */
	io_read(r->io, fd, got, 100, 4096 + total - 10, tag + 4);
	c = rig_await(r, tag + 4, "read past the end");
	CHECK_INT("read past the end", c.res, 10);
	assert_memory_equal(got, want + total - 10, 10);
}

/* Small writes on a filesystem that cannot write without waiting are
 * made on the calling thread (whether this one can, the test asks it as
 * io_writev does); either way the completion comes from io_wait with the
 * bytes, a large write goes to the backend, and an error is the
 * completion's. */
static void test_file_write_inline(void **state)
{
	struct rig *r = *state;
	int fd = rig_tmpfile(r);
	struct iovec one = {.iov_base = "x", .iov_len = 1};
	ssize_t w = pwritev2(fd, &one, 1, 0, RWF_NOWAIT);
	bool expect_inline = w < 0 && errno == EOPNOTSUPP;
	print_message("filesystem of /tmp %s write without waiting\n",
		      expect_inline ? "cannot" : "can");

	char small[100];
	fill_pattern(small, sizeof(small), 7);
	struct iovec iov[3] = {
		{.iov_base = small, .iov_len = 10},
		{.iov_base = small + 10, .iov_len = 0},
		{.iov_base = small + 10, .iov_len = 90},
	};
	uint64_t tag = io_tag(IO_OP_SPOOL_WRITE, 0, 11);
	io_writev(r->io, fd, iov, 3, 8192, tag);
	struct io_cqe c = rig_await(r, tag, "small writev");
	CHECK_INT("small writev", c.res, 100);
	CHECK_INT("small writev", c.more, false);
	CHECK_INT("small writev", c.bid, -1);
	assert_int_equal(io_writes_inline(r->io), expect_inline);
	static char got[160 * 1024];
	assert_int_equal(pread(fd, got, 100, 8192), 100);
	assert_memory_equal(got, small, 100);

	/* A second one, and one over the limit (128 KiB), both in flight at
	 * once. */
	static char large[160 * 1024];
	fill_pattern(large, sizeof(large), 8);
	struct iovec l = {.iov_base = large, .iov_len = sizeof(large)};
	struct iovec s2 = {.iov_base = small, .iov_len = 50};
	io_writev(r->io, fd, &l, 1, 16384, tag + 1);
	io_writev(r->io, fd, &s2, 1, 400000, tag + 2);
	bool seen1 = false, seen2 = false;
	while (!seen1 || !seen2) {
		struct io_cqe cs[4];
		int n = io_wait(r->io, cs, 4);
		assert_true(n > 0);
		for (int i = 0; i < n; i++) {
			if (cs[i].tag == tag + 1) {
				CHECK_INT("large writev", cs[i].res, sizeof(large));
				seen1 = true;
			} else if (cs[i].tag == tag + 2) {
				CHECK_INT("second small writev", cs[i].res, 50);
				seen2 = true;
			}
		}
	}
	assert_int_equal(pread(fd, got, sizeof(large), 16384), (ssize_t)sizeof(large));
	assert_memory_equal(got, large, sizeof(large));
	assert_int_equal(pread(fd, got, 50, 400000), 50);
	assert_memory_equal(got, small, 50);

	/* A descriptor that cannot be written: the completion says so. */
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int ro = rig_track(r, open(path, O_RDONLY));
	assert_true(ro >= 0);
	io_writev(r->io, ro, &s2, 1, 0, tag + 3);
	c = rig_await(r, tag + 3, "read-only writev");
	CHECK_INT("read-only writev", c.res, -EBADF);
}

static void test_timeout(void **state)
{
	struct rig *r = *state;
	uint64_t tag = io_tag(IO_OP_TARPIT, 8, 1);
	io_timeout(r->io, 50, tag);
	struct io_cqe c = rig_await(r, tag, "timeout");
	CHECK_INT("timeout", c.res, -ETIME);
	CHECK_INT("timeout", c.more, false);
	CHECK_INT("timeout", c.bid, -1);

	/* a cancelled timer ends at once */
	io_timeout(r->io, 60000, tag + 1);
	io_cancel(r->io, tag + 1);
	c = rig_await(r, tag + 1, "timeout cancelled");
	CHECK_INT("timeout cancelled", c.res, -ECANCELED);
	CHECK_INT("timeout cancelled", c.more, false);
}

static void test_cancel_recv(void **state)
{
	struct rig *r = *state;
	int srv, cli;
	rig_pair(r, &srv, &cli);
	uint64_t tag = io_tag(IO_OP_RECV, 6, 1);
	io_recv(r->io, srv, tag);
	io_cancel(r->io, tag);
	struct io_cqe c = rig_await(r, tag, "recv cancelled");
	CHECK_INT("recv cancelled", c.res, -ECANCELED);
	CHECK_INT("recv cancelled", c.more, false);
	CHECK_INT("recv cancelled", c.bid, -1);

	/* the socket is as good as before */
	io_recv(r->io, srv, tag + 1);
	peer_send(cli, "x", 1);
	c = rig_await(r, tag + 1, "recv after cancel");
	CHECK_INT("recv after cancel", c.res, 1);
	CHECK_INT("recv after cancel", c.more, true);
	assert_true(c.bid >= 0 && c.bid < RIG_NBUFS);
	CHECK_INT("recv after cancel", io_buf(r->io, (unsigned)c.bid)[0], 'x');
	io_buf_recycle(r->io, (unsigned)c.bid);
}

static void *waker_main(void *arg)
{
	struct io *io = arg;
	struct timespec ts = {.tv_nsec = 20 * 1000000};
	nanosleep(&ts, NULL);
	io_wake(io);
	return NULL;
}

static void test_wake(void **state)
{
	struct rig *r = *state;
	assert_int_equal(pthread_create(&r->waker, NULL, waker_main, r->io), 0);
	r->waker_started = true;
	struct io_cqe c = rig_await_any(r, true, IO_OP_WAKE, "wake");
	CHECK_INT("wake", c.tag, io_tag(IO_OP_WAKE, 0, 0));
	CHECK_INT("wake", c.more, false);
	CHECK_INT("wake", c.bid, -1);
}

#define RIG_TEST(f, kind) \
	cmocka_unit_test_prestate_setup_teardown(f, rig_setup, rig_teardown, kind)
#define RIG_TESTS(kind)                                   \
	RIG_TEST(test_accept_two, kind),                  \
	RIG_TEST(test_recv_multishot, kind),              \
	RIG_TEST(test_recv_once, kind),                   \
	RIG_TEST(test_send, kind),                        \
	RIG_TEST(test_recv_enobufs, kind),                \
	RIG_TEST(test_recv_into, kind),                   \
	RIG_TEST(test_connect, kind),                     \
	RIG_TEST(test_sendfile, kind),                    \
	RIG_TEST(test_try_sendfile_ranges, kind),         \
	RIG_TEST(test_file_write_sync_read, kind),        \
	RIG_TEST(test_file_write_inline, kind),           \
	RIG_TEST(test_timeout, kind),                     \
	RIG_TEST(test_cancel_recv, kind),                 \
	RIG_TEST(test_wake, kind)

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest epoll_tests[] = {RIG_TESTS(&kind_epoll)};
	printf("[==========] backend: epoll\n");
	int failed = cmocka_run_group_tests_name("io_epoll", epoll_tests, NULL, NULL);
	char why[256];
	if (io_probe(IO_BACKEND_URING, why, sizeof(why)) == IO_BACKEND_URING) {
		const struct CMUnitTest uring_tests[] = {RIG_TESTS(&kind_uring)};
		printf("[==========] backend: io_uring\n");
		failed += cmocka_run_group_tests_name("io_uring", uring_tests, NULL, NULL);
	} else {
		printf("[  SKIPPED ] io_uring: %s\n", why);
	}
	return failed;
}
