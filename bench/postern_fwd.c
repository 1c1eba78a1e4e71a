/* postern-fwd: a byte forwarder for the benchmark harness (bench/sustained).
 * Each connection to the listening port gets one to the target, and bytes
 * go across both ways as they come: no parsing, no queue, no disk. Put
 * between smtp-source and smtp-sink it is the floor of what any relay can
 * cost on a machine: the relay's two TCP hops and nothing else, measured
 * in the same run as the relay. Threads (default: one per CPU) each
 * listen with SO_REUSEPORT and run their own epoll set.
 *
 * Usage: postern-fwd --listen HOST:PORT --target HOST:PORT [--threads N] */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_CAP 65536

/* One direction's reading end; its peer is the other socket of the pair. */
struct end {
	int fd;
	struct end *peer;
};

static char listener; /* the listening socket's epoll tag */

static struct sockaddr_in listen_addr, target_addr;

static bool parse_addr(const char *s, struct sockaddr_in *a)
{
	char host[64];
	const char *colon = strrchr(s, ':');
	if (!colon || (size_t)(colon - s) >= sizeof(host))
		return false;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET;
	char *end;
	long port = strtol(colon + 1, &end, 10);
	if (*end || port <= 0 || port > 65535 || inet_pton(AF_INET, host, &a->sin_addr) != 1)
		return false;
	a->sin_port = htons((unsigned short)port);
	return true;
}

static void set_opts(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* Writes block (a peer's full buffer is a stall, not a spin) but
	 * not for ever. */
	struct timeval tv = {.tv_sec = 10};
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* Both ends go at once (close takes them out of the epoll set); events for
 * them later in the same batch are dropped by the caller. */
static void close_pair(struct end *e)
{
	struct end *p = e->peer;
	close(e->fd);
	close(p->fd);
	free(p);
	free(e);
}

static void accept_all(int ep, int ls)
{
	for (;;) {
		int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			return;
		int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (t < 0 || connect(t, (struct sockaddr *)&target_addr, sizeof(target_addr)) < 0) {
			fprintf(stderr, "postern-fwd: connect to the target: %s\n", strerror(errno));
			close(c);
			if (t >= 0)
				close(t);
			continue;
		}
		set_opts(c);
		set_opts(t);
		struct end *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
		if (!a || !b) {
			free(a);
			free(b);
			close(c);
			close(t);
			continue;
		}
		a->fd = c;
		a->peer = b;
		b->fd = t;
		b->peer = a;
		struct epoll_event ea = {.events = EPOLLIN, .data.ptr = a};
		struct epoll_event eb = {.events = EPOLLIN, .data.ptr = b};
		epoll_ctl(ep, EPOLL_CTL_ADD, c, &ea);
		epoll_ctl(ep, EPOLL_CTL_ADD, t, &eb);
	}
}

/* Reads what one end has and writes it all to the other; false when the
 * pair is done (either side closed or failed). */
static bool forward(struct end *e, char *buf)
{
	for (;;) {
		ssize_t r = recv(e->fd, buf, BUF_CAP, MSG_DONTWAIT);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return true;
		if (r <= 0)
			return false;
		for (ssize_t off = 0; off < r;) {
			ssize_t w = send(e->peer->fd, buf + off, (size_t)(r - off), MSG_NOSIGNAL);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0)
				return false;
			off += w;
		}
		if (r < BUF_CAP)
			return true;
	}
}

static void *run(void *arg)
{
	(void)arg;
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ls < 0 || bind(ls, (struct sockaddr *)&listen_addr, sizeof(listen_addr)) < 0 ||
	    listen(ls, 4096) < 0) {
		fprintf(stderr, "postern-fwd: listen: %s\n", strerror(errno));
		exit(1);
	}
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &listener};
	epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
	char *buf = malloc(BUF_CAP);
	struct epoll_event evs[256];
	if (!buf || ep < 0)
		exit(1);
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			exit(1);
		for (int i = 0; i < n; i++) {
			struct end *e = evs[i].data.ptr;
			if (!e)
				continue; /* its pair was closed earlier in this batch */
			if (e == (void *)&listener) {
				accept_all(ep, ls);
				continue;
			}
			if (forward(e, buf))
				continue;
			for (int k = i + 1; k < n; k++)
				if (evs[k].data.ptr == e || evs[k].data.ptr == e->peer)
					evs[k].data.ptr = NULL;
			close_pair(e);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {{"listen", required_argument, NULL, 'l'},
					     {"target", required_argument, NULL, 't'},
					     {"threads", required_argument, NULL, 'n'},
					     {NULL, 0, NULL, 0}};
	bool have_l = false, have_t = false;
	long threads = sysconf(_SC_NPROCESSORS_ONLN);
	for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
		if (c == 'l')
			have_l = parse_addr(optarg, &listen_addr);
		else if (c == 't')
			have_t = parse_addr(optarg, &target_addr);
		else if (c == 'n')
			threads = strtol(optarg, NULL, 10);
		else
			have_l = false;
	}
	if (!have_l || !have_t || threads < 1 || threads > 64) {
		fprintf(stderr, "usage: postern-fwd --listen HOST:PORT --target HOST:PORT [--threads N]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	pthread_t th[64];
	for (long i = 0; i < threads; i++)
		if (pthread_create(&th[i], NULL, run, NULL) != 0) {
			fprintf(stderr, "postern-fwd: cannot start a thread\n");
			return 1;
		}
	pthread_join(th[0], NULL);
	return 0;
}
