/* postern-sink: counting SMTP next hop for the benchmark harness (bench/).
 * One thread, one epoll set, any number of PIPELINING clients. It stores
 * nothing: it un-dot-stuffs each message as it streams past (or, with
 * --chunking, takes RFC 3030 BDAT chunks as they are), checks X-Bench-Sum
 * against the body and X-Bench-Id for duplicates, and counts. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench_sum.h"

#define IN_CAP 65536
#define LINE_MAX_CMD 2048

enum mode { M_CMD, M_DATA, M_BDAT };

struct conn {
	int fd;
	enum mode mode;
	bool closing, in_header, at_line_start, have_sum, have_id, data_ok;
	int rcpts_ok;
	bool mail;
	uint64_t sum_want, sum, id_hash;
	uint64_t msg_bytes;
	uint64_t bdat_left;  /* M_BDAT: octets of the chunk still to come */
	uint64_t bdat_size;  /* ... of the whole chunk */
	bool bdat_last, bdat_open;
	char *in;
	size_t in_len;
	char *out;
	size_t out_len, out_off, out_cap;
};

static struct {
	struct sockaddr_in listen;
	int reply_data, reply_rcpt;
	int tempfail_rcpt;  /* --tempfail-rcpt: this many RCPTs in every 100 get 451 */
	double duration;
	const char *report;
	bool chunking;      /* offer CHUNKING */
} opt;

static struct {
	int ep, lfd;
	double t_start_mono, first_msg, last_msg;  /* realtime seconds */
	long long messages, accepted, rejected, bytes, corrupted, no_sum, no_id,
		duplicates, connections, connections_now, rcpts, tempfailed;
	uint64_t *ids;   /* open addressing set of id hashes (0 = empty) */
	size_t ids_cap, ids_n;
	volatile sig_atomic_t stop, dump;
} g;

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double realtime(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n);
	if (!q) {
		fprintf(stderr, "postern-sink: out of memory\n");
		exit(2);
	}
	return q;
}


/* Returns true if the id hash was new. */
static bool ids_insert(uint64_t h)
{
	if (!h)
		h = 1;
	if ((g.ids_n + 1) * 2 > g.ids_cap) {
		size_t cap = g.ids_cap ? g.ids_cap * 2 : 1 << 16;
		uint64_t *n = calloc(cap, sizeof *n);
		if (!n) {
			fprintf(stderr, "postern-sink: out of memory\n");
			exit(2);
		}
		for (size_t i = 0; i < g.ids_cap; i++)
			if (g.ids[i]) {
				size_t j = g.ids[i] & (cap - 1);
				while (n[j])
					j = (j + 1) & (cap - 1);
				n[j] = g.ids[i];
			}
		free(g.ids);
		g.ids = n;
		g.ids_cap = cap;
	}
	size_t j = h & (g.ids_cap - 1);
	while (g.ids[j]) {
		if (g.ids[j] == h)
			return false;
		j = (j + 1) & (g.ids_cap - 1);
	}
	g.ids[j] = h;
	g.ids_n++;
	return true;
}

static void out_str(struct conn *c, const char *s)
{
	size_t n = strlen(s);
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (c->out_len + n > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 512;
		while (cap < c->out_len + n)
			cap *= 2;
		c->out = xrealloc(c->out, cap);
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, s, n);
	c->out_len += n;
}

static void reply_code(struct conn *c, int code, const char *ok_text)
{
	char buf[128];
	if (code / 100 == 2)
		snprintf(buf, sizeof buf, "%d %s\r\n", code, ok_text);
	else
		snprintf(buf, sizeof buf, "%d %s postern-sink simulated failure\r\n", code,
			 code / 100 == 4 ? "4.3.0" : "5.3.0");
	out_str(c, buf);
}

static void conn_free(struct conn *c)
{
	close(c->fd);
	free(c->in);
	free(c->out);
	free(c);
	g.connections_now--;
}

/* false when the connection has to be dropped */
static bool conn_flush(struct conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
				epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev);
				return true;
			}
			return false;
		}
		c->out_off += (size_t)n;
	}
	c->out_off = c->out_len = 0;
	return !c->closing;
}

static bool hdr_is(const char *l, size_t n, const char *name)
{
	size_t k = strlen(name);
	return n > k && !strncasecmp(l, name, k);
}

static uint64_t parse_hex(const char *p, const char *end)
{
	uint64_t v = 0;
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	for (; p < end; p++) {
		int d;
		if (*p >= '0' && *p <= '9')
			d = *p - '0';
		else if (*p >= 'a' && *p <= 'f')
			d = *p - 'a' + 10;
		else if (*p >= 'A' && *p <= 'F')
			d = *p - 'A' + 10;
		else
			break;
		v = v << 4 | (uint64_t)d;
	}
	return v;
}

static void data_begin(struct conn *c)
{
	c->mode = M_DATA;
	c->in_header = true;
	c->at_line_start = true;
	c->have_sum = c->have_id = false;
	c->sum = FNV_INIT;
	c->msg_bytes = 0;
}

static void data_end(struct conn *c)
{
	double t = realtime();
	g.messages++;
	g.bytes += (long long)c->msg_bytes;
	if (!g.first_msg)
		g.first_msg = t;
	g.last_msg = t;
	if (!c->have_sum)
		g.no_sum++;
	else if (c->sum != c->sum_want)
		g.corrupted++;
	if (!c->have_id)
		g.no_id++;
	else if (!ids_insert(c->id_hash))
		g.duplicates++;
	if (opt.reply_data / 100 == 2)
		g.accepted++;
	else
		g.rejected++;
	reply_code(c, opt.reply_data, "2.0.0 Ok: queued by postern-sink");
	c->mode = M_CMD;
	c->mail = false;
	c->rcpts_ok = 0;
}

/* One line of message content (with its CRLF, already un-stuffed). */
static void data_line(struct conn *c, const char *l, size_t n, bool line_start)
{
	c->msg_bytes += n;
	if (c->in_header && line_start) {
		if ((n == 2 && l[0] == '\r') || (n == 1 && l[0] == '\n')) {
			c->in_header = false;
			return;
		}
		if (hdr_is(l, n, "X-Bench-Sum:")) {
			c->sum_want = parse_hex(l + 12, l + n);
			c->have_sum = true;
		} else if (hdr_is(l, n, "X-Bench-Id:")) {
			const char *p = l + 11, *e = l + n;
			while (p < e && (*p == ' ' || *p == '\t'))
				p++;
			while (e > p && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' '))
				e--;
			c->id_hash = fnv1a(FNV_INIT, p, (size_t)(e - p));
			c->have_id = true;
		}
		return;
	}
	if (!c->in_header)
		c->sum = fnv1a(c->sum, l, n);
}

static void command(struct conn *c, char *l, size_t n)
{
	while (n && (l[n - 1] == '\n' || l[n - 1] == '\r'))
		l[--n] = 0;
	char verb[8] = {0};
	for (size_t i = 0; i < 4 && i < n; i++)
		verb[i] = (char)(l[i] & ~0x20);
	if (!strcmp(verb, "EHLO")) {
		c->mail = false;
		c->rcpts_ok = 0;
		out_str(c, "250-postern-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n");
		if (opt.chunking)
			out_str(c, "250-CHUNKING\r\n");
		out_str(c, "250-SIZE 0\r\n250 ENHANCEDSTATUSCODES\r\n");
	} else if (!strcmp(verb, "HELO")) {
		c->mail = false;
		c->rcpts_ok = 0;
		out_str(c, "250 postern-sink\r\n");
	} else if (!strcmp(verb, "MAIL")) {
		c->mail = true;
		c->rcpts_ok = 0;
		out_str(c, "250 2.1.0 Ok\r\n");
	} else if (!strcmp(verb, "RCPT")) {
		if (!c->mail) {
			out_str(c, "503 5.5.1 Error: need MAIL command\r\n");
		} else if (opt.tempfail_rcpt > 0 && g.rcpts++ % 100 < (long long)opt.tempfail_rcpt) {
			/* spread evenly: the first PCT of every 100 */
			g.tempfailed++;
			out_str(c, "451 4.3.0 postern-sink: try again later\r\n");
		} else {
			if (opt.reply_rcpt / 100 == 2)
				c->rcpts_ok++;
			reply_code(c, opt.reply_rcpt, "2.1.5 Ok");
		}
	} else if (!strcmp(verb, "DATA")) {
		if (!c->mail || !c->rcpts_ok) {
			out_str(c, "554 5.5.1 Error: no valid recipients\r\n");
		} else {
			out_str(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
			data_begin(c);
		}
	} else if (opt.chunking && !strcmp(verb, "BDAT")) {
		char *end = NULL;
		unsigned long long size = strtoull(l + 4, &end, 10);
		bool last = end && !strcasecmp(end, " LAST");
		if (!end || end == l + 4 || (*end && !last)) {
			out_str(c, "501 5.5.4 Syntax error\r\n");
			c->closing = true;
			return;
		}
		if (!c->bdat_open)
			data_begin(c);
		c->mode = M_BDAT;
		c->bdat_open = true;
		c->bdat_left = c->bdat_size = size;
		c->bdat_last = last;
		if (size == 0) {
			c->mode = M_CMD;
			c->bdat_open = !last;
			if (last)
				data_end(c);
			else
				out_str(c, "250 2.0.0 0 octets\r\n");
		}
	} else if (!strcmp(verb, "RSET")) {
		c->bdat_open = false;
		c->mail = false;
		c->rcpts_ok = 0;
		out_str(c, "250 2.0.0 Ok\r\n");
	} else if (!strcmp(verb, "NOOP")) {
		out_str(c, "250 2.0.0 Ok\r\n");
	} else if (!strcmp(verb, "QUIT")) {
		out_str(c, "221 2.0.0 Bye\r\n");
		c->closing = true;
	} else {
		out_str(c, "502 5.5.2 Error: command not recognized\r\n");
	}
}

/* Consumes what it can from c->in. */
static void process(struct conn *c)
{
	size_t pos = 0;
	while (pos < c->in_len && !c->closing) {
		char *p = c->in + pos;
		size_t avail = c->in_len - pos;
		char *nl = memchr(p, '\n', avail);
		if (c->mode == M_CMD) {
			if (!nl) {
				if (avail > LINE_MAX_CMD) {  /* garbage: drop it */
					out_str(c, "500 5.5.2 Error: line too long\r\n");
					pos = c->in_len;
				}
				break;
			}
			size_t n = (size_t)(nl - p) + 1;
			pos += n;
			command(c, p, n);
			continue;
		}
		if (c->mode == M_BDAT) {
			/* whole lines while the chunk lasts (headers are read a
			 * line at a time), the chunk's tail as it is */
			size_t take = avail < c->bdat_left ? avail : (size_t)c->bdat_left;
			char *lf = take ? memchr(p, '\n', take) : NULL;
			size_t n = lf ? (size_t)(lf - p) + 1 : take;
			if (!lf && take < c->bdat_left && !(pos == 0 && avail == IN_CAP))
				break;
			if (n)
				data_line(c, p, n, c->at_line_start);
			c->at_line_start = lf != NULL;
			pos += n;
			c->bdat_left -= n;
			if (c->bdat_left == 0) {
				c->mode = M_CMD;
				if (c->bdat_last) {
					c->bdat_open = false;
					data_end(c);
				} else {
					char r[64];
					snprintf(r, sizeof r, "250 2.0.0 %llu octets\r\n",
						 (unsigned long long)c->bdat_size);
					out_str(c, r);
				}
			}
			continue;
		}
		/* DATA: a line at a time; a line longer than the buffer is fed in
		 * pieces (it cannot be the terminator). */
		if (!nl) {
			if (pos == 0 && avail == IN_CAP) {
				bool stuffed = c->at_line_start && p[0] == '.';
				data_line(c, p + stuffed, avail - stuffed, c->at_line_start);
				c->at_line_start = false;
				pos += avail;
			}
			break;
		}
		size_t n = (size_t)(nl - p) + 1;
		pos += n;
		if (c->at_line_start && n == 3 && p[0] == '.' && p[1] == '\r') {
			data_end(c);
			continue;
		}
		bool stuffed = c->at_line_start && p[0] == '.';
		data_line(c, p + stuffed, n - stuffed, c->at_line_start);
		c->at_line_start = true;
	}
	memmove(c->in, c->in + pos, c->in_len - pos);
	c->in_len -= pos;
}

static void on_conn(struct conn *c, uint32_t ev)
{
	if (ev & EPOLLOUT) {
		if (!conn_flush(c)) {
			conn_free(c);
			return;
		}
		if (c->out_len == 0) {
			struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
			epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &e);
		}
	}
	if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR)))
		return;
	size_t room = IN_CAP - c->in_len;
	ssize_t n = recv(c->fd, c->in + c->in_len, room, 0);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		conn_free(c);
		return;
	}
	if (n < 0)
		return;
	c->in_len += (size_t)n;
	process(c);
	/* replies go out once the input at hand is used up: PIPELINING */
	if (c->out_len > c->out_off && !conn_flush(c)) {
		conn_free(c);
		return;
	}
}

static void on_accept(void)
{
	for (;;) {
		int fd = accept4(g.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				fprintf(stderr, "postern-sink: accept: %s\n", strerror(errno));
			return;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		struct conn *c = calloc(1, sizeof *c);
		if (!c || !(c->in = malloc(IN_CAP))) {
			fprintf(stderr, "postern-sink: out of memory\n");
			exit(2);
		}
		c->fd = fd;
		g.connections++;
		g.connections_now++;
		out_str(c, "220 postern-sink ESMTP\r\n");
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		epoll_ctl(g.ep, EPOLL_CTL_ADD, fd, &ev);
		if (!conn_flush(c))
			conn_free(c);
	}
}

static void write_report(bool final)
{
	double elapsed = mono() - g.t_start_mono;
	double span = g.last_msg - g.first_msg;
	double rate = span > 0 ? (double)g.messages / span : 0;
	if (final)
		fprintf(stderr,
			"postern-sink: %lld messages (%lld accepted, %lld rejected), %lld bytes, "
			"%.1f messages/s (first to last message), %.1f MB/s\n"
			"  corrupted (X-Bench-Sum mismatch) %lld, duplicated X-Bench-Id %lld, "
			"without X-Bench-Sum %lld, without X-Bench-Id %lld, connections %lld, "
			"ran %.1f s\n",
			g.messages, g.accepted, g.rejected, g.bytes, rate,
			span > 0 ? (double)g.bytes / span / 1e6 : 0, g.corrupted, g.duplicates,
			g.no_sum, g.no_id, g.connections, elapsed);
	if (!opt.report)
		return;
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", opt.report);
	FILE *f = fopen(tmp, "w");
	if (!f) {
		fprintf(stderr, "postern-sink: %s: %s\n", tmp, strerror(errno));
		return;
	}
	fprintf(f,
		"{\"messages\":%lld,\"accepted\":%lld,\"rejected\":%lld,\"bytes\":%lld,"
		"\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f,\"corrupted\":%lld,\"duplicates\":%lld,"
		"\"missing_sum\":%lld,\"missing_id\":%lld,\"connections\":%lld,"
		"\"connections_now\":%lld,\"rcpts_tempfailed\":%lld,\"first_message_unix\":%.6f,"
		"\"last_message_unix\":%.6f,\"elapsed_s\":%.3f,\"final\":%s}\n",
		g.messages, g.accepted, g.rejected, g.bytes, rate,
		span > 0 ? (double)g.bytes / span / 1e6 : 0, g.corrupted, g.duplicates,
		g.no_sum, g.no_id, g.connections, g.connections_now, g.tempfailed, g.first_msg,
		g.last_msg, elapsed, final ? "true" : "false");
	fclose(f);
	rename(tmp, opt.report);
}

static void on_signal(int sig)
{
	if (sig == SIGUSR1)
		g.dump = 1;
	else
		g.stop = 1;
}

static void usage(void)
{
	fprintf(stderr,
"usage: postern-sink --listen HOST:PORT [--reply-data CODE] [--reply-rcpt CODE]\n"
"                    [--tempfail-rcpt PCT] [--duration S] [--report FILE] [--chunking]\n"
"  --tempfail-rcpt PCT: PCT of every 100 RCPTs get 451 4.3.0 (0..100)\n"
"  runs until SIGTERM/SIGINT (or --duration); SIGUSR1 rewrites --report now\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{"listen", 1, 0, 'l'}, {"reply-data", 1, 0, 'd'}, {"reply-rcpt", 1, 0, 'r'},
		{"duration", 1, 0, 't'}, {"report", 1, 0, 'o'}, {"chunking", 0, 0, 'c'},
		{"help", 0, 0, 'h'}, {"tempfail-rcpt", 1, 0, 'T'},
		{0, 0, 0, 0}};
	opt.reply_data = 250;
	opt.reply_rcpt = 250;
	const char *listen_s = NULL;
	int ch;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 'l': listen_s = optarg; break;
		case 'd': opt.reply_data = atoi(optarg); break;
		case 'r': opt.reply_rcpt = atoi(optarg); break;
		case 't': opt.duration = atof(optarg); break;
		case 'T': opt.tempfail_rcpt = atoi(optarg); break;
		case 'o': opt.report = optarg; break;
		case 'c': opt.chunking = true; break;
		default: usage();
		}
	}
	if (!listen_s || optind != argc)
		usage();
	if (opt.reply_data < 200 || opt.reply_data > 599 || opt.reply_rcpt < 200 ||
	    opt.reply_rcpt > 599 || opt.tempfail_rcpt < 0 || opt.tempfail_rcpt > 100) {
		fprintf(stderr, "postern-sink: reply codes must be 200..599, --tempfail-rcpt 0..100\n");
		return 2;
	}
	char host[64];
	const char *colon = strrchr(listen_s, ':');
	if (!colon || (size_t)(colon - listen_s) >= sizeof host)
		usage();
	memcpy(host, listen_s, (size_t)(colon - listen_s));
	host[colon - listen_s] = 0;
	opt.listen.sin_family = AF_INET;
	opt.listen.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &opt.listen.sin_addr) != 1 ||
	    (ntohl(opt.listen.sin_addr.s_addr) >> 24) != 127) {
		fprintf(stderr, "postern-sink: --listen must be a loopback IPv4 address\n");
		return 2;
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	g.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(g.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(g.lfd, (struct sockaddr *)&opt.listen, sizeof opt.listen) < 0 ||
	    listen(g.lfd, 4096) < 0) {
		fprintf(stderr, "postern-sink: %s: %s\n", listen_s, strerror(errno));
		return 2;
	}
	g.ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
	epoll_ctl(g.ep, EPOLL_CTL_ADD, g.lfd, &lev);
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	g.t_start_mono = mono();
	write_report(false);
	struct epoll_event evs[256];
	while (!g.stop) {
		if (opt.duration > 0 && mono() - g.t_start_mono >= opt.duration)
			break;
		if (g.dump) {
			g.dump = 0;
			write_report(false);
		}
		int n = epoll_wait(g.ep, evs, 256, 200);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		for (int i = 0; i < n; i++) {
			if (!evs[i].data.ptr)
				on_accept();
			else
				on_conn(evs[i].data.ptr, evs[i].events);
		}
	}
	write_report(true);
	return 0;
}
