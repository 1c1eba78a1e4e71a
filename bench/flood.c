/* postern-flood: the floods of bench/floods (issue 17), and the allowed
 * clients measured beside them. One thread, one epoll set; every mode is
 * bounded by --duration (and per-session deadlines) and prints one JSON
 * object on stdout. It measures; it never decides pass/fail.
 *
 * Floods:
 *   idle       open --connections N (round-robin over --sources), read the
 *              greeting, EHLO (unless --no-ehlo), hold them until --duration
 *              s after the start; tallies greetings (220, 421 4.3.2 ...) and
 *              what the server closes meanwhile, and when
 *   slowloris  the same, then one byte of "EHLO slowloris.example\r\n" every
 *              --interval s on each connection (phases spread over the
 *              interval): never a whole command line in a minute
 *   longline   N sessions, each in a loop: a --line-size (1 MiB) command line
 *              (NOOP xxx...), then MAIL, RCPT, DATA and a message with one
 *              --line-size line; a session the server closes is opened again
 *              (next source); tallies the replies, times each long line's
 *              reply (its last byte written -> the reply)
 *   pipeline   N sessions write EHLO and then 1 KiB transactions (MAIL, RCPT,
 *              DATA, body, "."; --noop: NOOP lines) as fast as the socket
 *              takes them and never read, for --duration s or --max-bytes a
 *              session; then each finishes the transaction under way, writes
 *              QUIT and reads every reply, checking their order. Reports what
 *              was written, when writing stopped making progress (the
 *              server's back-pressure) and the 250s to DATA (acknowledged);
 *              a session the server ends meanwhile (its writes fail: a junk
 *              command limit) is opened again, its replies never read
 *   storm      --rate new connections/s for --duration s (at most
 *              --max-inflight at once): connect, greeting, QUIT, 221;
 *              connect -> greeting latency
 * Allowed clients (their figures are kept per phase: SIGUSR1 starts the next
 * phase, so one process measures before / during / after a flood):
 *   steady     --connections N kept open, --rate messages/s in all (paced),
 *              MAIL, RCPT, DATA pipelined then a 1 KiB message; end of data
 *              -> 250 latency; a session the server closes is opened again
 *   probe      a new connection per message at --rate: connect, greeting,
 *              EHLO, MAIL, RCPT, DATA, 1 KiB, 250, QUIT; connect -> 250 and
 *              end of data -> 250 latency, and how sessions failed */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum mode { M_IDLE, M_SLOW, M_LONG, M_PIPE, M_STORM, M_STEADY, M_PROBE, M_COUNT };
static const char *const mode_names[] = {"idle", "slowloris", "longline", "pipeline",
					 "storm", "steady", "probe"};

enum st {
	S_FREE, S_CONNECTING, S_GREETING, S_EHLO, S_HOLD, S_READY,
	S_LONGCMD, S_MAIL, S_RCPT, S_DATA, S_BODY,
	S_PIPE_WRITE, S_PIPE_DRAIN, S_QUIT
};

struct conn {
	int fd;
	int idx;
	/* from here on, cleared at every (re)open */
	enum st st;
	bool out_armed, in_armed, mark_on_flush, got221, pipe_full;
	double t_open, t_mark, t_next, t_last_write;
	char rbuf[8192];
	size_t rlen;
	struct iovec iov[4];
	int niov;
	unsigned slow_pos;
	size_t pipe_off;
	uint64_t written;
	long units, replies, acks, order_errors;
	int expect;     /* pipeline: index into the unit's reply sequence, -1: EHLO */
	int phase;      /* the phase it was opened in */
	char last[16];  /* the last reply's key, for the tally of closes */
};

static struct {
	enum mode mode;
	struct sockaddr_in server;
	struct in_addr *src;
	unsigned nsrc;
	int conns;
	double duration, interval, rate, timeout;
	size_t line_size;
	uint64_t max_bytes;
	int max_inflight;
	int rcvbuf, sndbuf;
	bool ehlo, noop;
	const char *ready_file;
} opt = {.conns = 100, .duration = 10, .interval = 10, .rate = 1000, .timeout = 30,
	 .line_size = 1024 * 1024, .max_inflight = 4000, .ehlo = true};

struct tally {
	char key[16];
	long n;
};
#define NTALLY 48

struct samples {
	double *v;
	size_t n, cap;
};

#define NPHASE 3
struct phase {
	double t0, t1;
	struct samples a, b;
	long ok, failed, attempts;
	struct tally greet[NTALLY], replies[NTALLY];
};

static struct {
	double t0, t_end;
	int ep;
	struct conn *c;
	int nconn, live;
	long scheduled, attempts, connected, connect_errors, established, refused,
		server_closed, write_errors, timeouts, behind, reopened, open_at_end;
	long long bytes_written;
	struct tally greet[NTALLY], replies[NTALLY], closes[NTALLY];
	struct samples close_age; /* idle, slowloris: s from open to the server's close */
	struct phase ph[NPHASE];
	int phase;
	/* pipeline */
	long acks, order_errors;
	long long units, replies_read, written_in_phase;
	double last_progress;
	long stalled, capped, ended_writing;
	bool ready_written, ending;
	volatile sig_atomic_t stop, phase_req;
} g;

static char *pipe_buf; /* pipeline: K copies of the unit */
static size_t unit_len, pipe_buf_len;
static const char *const seq_tx[] = {"250 2.1.0", "250 2.1.5", "354", "250 2.6.0"};
static const char *const seq_noop[] = {"250 2.0.0"};
static const char *const *unit_seq = seq_tx;
static int unit_seq_len = 4;
static char *long_cmd, *long_data;
static size_t long_cmd_len, long_data_len;
static char body_1k[1100];
static size_t body_1k_len;

static const char TX_HEAD[] =
	"MAIL FROM:<flood@flood.example>\r\nRCPT TO:<user@corp.example>\r\nDATA\r\n";
static const char EHLO_LINE[] = "EHLO flood.example\r\n";
static const char QUIT_LINE[] = "QUIT\r\n";
static const char NOOP_LINE[] = "NOOP\r\n";
static const char SLOW_LINE[] = "EHLO slowloris.example\r\n";

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("postern-flood: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(2);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void push(struct samples *s, double v)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 1024;
		s->v = realloc(s->v, s->cap * sizeof(*s->v));
		if (!s->v)
			die("out of memory");
	}
	s->v[s->n++] = v;
}

static void tally(struct tally *t, const char *key)
{
	for (int i = 0; i < NTALLY; i++) {
		if (t[i].key[0] == 0) {
			snprintf(t[i].key, sizeof(t[i].key), "%s", key);
			t[i].n = 1;
			return;
		}
		if (strcmp(t[i].key, key) == 0) {
			t[i].n++;
			return;
		}
	}
}

/* "421 4.3.2 The maximum..." -> "421 4.3.2"; "220 host ..." -> "220" */
static void reply_key(const char *line, size_t len, char *key)
{
	size_t k = 3;
	if (len >= 9 && line[4] >= '2' && line[4] <= '5' && line[5] == '.') {
		k = 4;
		while (k < len && k < 13 && line[k] != ' ')
			k++;
	}
	if (k > len)
		k = len;
	memcpy(key, line, k);
	key[k] = 0;
}

static struct phase *cur(void)
{
	return &g.ph[g.phase];
}

/* A probe's session counts in the phase it began in; everything else in
 * the phase it happens in. */
static struct phase *phase_of(const struct conn *c)
{
	return opt.mode == M_PROBE ? &g.ph[c->phase] : cur();
}

/* ---- connections -------------------------------------------------------- */

static void arm(struct conn *c)
{
	bool want_in = c->st != S_PIPE_WRITE && c->st != S_CONNECTING;
	bool want_out = c->niov > 0 || c->st == S_CONNECTING ||
			(c->st == S_PIPE_WRITE && !c->pipe_full);
	if (want_in == c->in_armed && want_out == c->out_armed)
		return;
	struct epoll_event ev = {.events = (want_in ? EPOLLIN : 0) | (want_out ? EPOLLOUT : 0),
				 .data.ptr = c};
	epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev);
	c->in_armed = want_in;
	c->out_armed = want_out;
}

static void conn_close(struct conn *c, const char *why)
{
	if (c->fd < 0)
		return;
	if (why)
		tally(g.closes, why);
	if (opt.mode == M_PIPE) {
		/* the slot may be opened again: its session's figures go */
		g.acks += c->acks;
		g.order_errors += c->order_errors;
		g.units += c->units;
		g.replies_read += c->replies;
		c->acks = c->order_errors = c->units = c->replies = 0;
		if (c->st == S_PIPE_WRITE)
			g.ended_writing++;
	}
	close(c->fd);
	c->fd = -1;
	c->st = S_FREE;
	g.live--;
}

static bool conn_open(struct conn *c)
{
	unsigned s = opt.nsrc ? (unsigned)(g.attempts % opt.nsrc) : 0;
	g.attempts++;
	cur()->attempts++;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		g.connect_errors++;
		return false;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
	if (opt.rcvbuf)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &opt.rcvbuf, sizeof(opt.rcvbuf));
	if (opt.sndbuf)
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &opt.sndbuf, sizeof(opt.sndbuf));
	if (opt.nsrc) {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr = opt.src[s]};
		if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
			close(fd);
			g.connect_errors++;
			return false;
		}
	}
	if (connect(fd, (struct sockaddr *)&opt.server, sizeof(opt.server)) < 0 &&
	    errno != EINPROGRESS) {
		close(fd);
		g.connect_errors++;
		return false;
	}
	memset((char *)c + offsetof(struct conn, st), 0, sizeof(*c) - offsetof(struct conn, st));
	c->fd = fd;
	c->st = S_CONNECTING;
	c->t_open = now_s();
	c->expect = -1;
	c->phase = g.phase;
	struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
	epoll_ctl(g.ep, EPOLL_CTL_ADD, fd, &ev);
	c->out_armed = true;
	g.live++;
	return true;
}

static void flush_out(struct conn *c)
{
	while (c->niov > 0) {
		ssize_t n = writev(c->fd, c->iov, c->niov);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				break;
			g.write_errors++;
			conn_close(c, "write error");
			return;
		}
		g.bytes_written += n;
		c->written += (uint64_t)n;
		c->t_last_write = now_s();
		while (n > 0) {
			if ((size_t)n >= c->iov[0].iov_len) {
				n -= (ssize_t)c->iov[0].iov_len;
				memmove(c->iov, c->iov + 1, sizeof(c->iov[0]) * (size_t)(c->niov - 1));
				c->niov--;
			} else {
				c->iov[0].iov_base = (char *)c->iov[0].iov_base + n;
				c->iov[0].iov_len -= (size_t)n;
				n = 0;
			}
		}
	}
	if (c->niov == 0 && c->mark_on_flush) {
		c->mark_on_flush = false;
		c->t_mark = now_s();
	}
	arm(c);
}

static void out(struct conn *c, const void *p, size_t n)
{
	if (c->niov == 4)
		die("internal: output queue full");
	c->iov[c->niov].iov_base = (void *)p;
	c->iov[c->niov].iov_len = n;
	c->niov++;
}

static void send_now(struct conn *c, const void *p, size_t n)
{
	out(c, p, n);
	flush_out(c);
}

/* p is sent; its reply is timed from the write of its last byte */
static void send_timed(struct conn *c, const void *p, size_t n)
{
	c->mark_on_flush = true;
	send_now(c, p, n);
}

static void quit(struct conn *c)
{
	c->st = S_QUIT;
	send_now(c, QUIT_LINE, sizeof(QUIT_LINE) - 1);
}

/* ---- per mode ------------------------------------------------------------ */

static void write_ready_file(void)
{
	if (g.ready_written || !opt.ready_file)
		return;
	g.ready_written = true;
	FILE *f = fopen(opt.ready_file, "w");
	if (f) {
		fprintf(f, "%ld\n", g.established);
		fclose(f);
	}
}

/* Every first attempt has had its answer (a greeting or a failure). */
static void maybe_ready(void)
{
	if (g.established + g.refused + g.connect_errors + g.timeouts >= opt.conns)
		write_ready_file();
}

static void pipe_write(struct conn *c)
{
	/* From the endless stream of units, as much as the socket takes. */
	while (!c->pipe_full) {
		size_t want = pipe_buf_len - c->pipe_off;
		if (opt.max_bytes) {
			uint64_t room = opt.max_bytes > c->written ? opt.max_bytes - c->written : 0;
			if (room < want)
				want = (size_t)room;
			if (want == 0) {
				c->pipe_full = true;
				break;
			}
		}
		ssize_t n = write(c->fd, pipe_buf + c->pipe_off, want);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			g.write_errors++;
			conn_close(c, "write error");
			return;
		}
		g.bytes_written += n;
		c->written += (uint64_t)n;
		c->t_last_write = now_s();
		size_t at = c->pipe_off + (size_t)n;
		c->units += (long)(at / unit_len) - (long)(c->pipe_off / unit_len);
		c->pipe_off = at % unit_len;
	}
	arm(c);
}

static void pipe_finish(struct conn *c)
{
	/* The unit under way is finished, then QUIT; from now on we read. */
	c->st = S_PIPE_DRAIN;
	c->t_mark = now_s();
	if (c->pipe_off) {
		out(c, pipe_buf + c->pipe_off, unit_len - c->pipe_off);
		c->units++;
		c->pipe_off = 0;
	}
	out(c, QUIT_LINE, sizeof(QUIT_LINE) - 1);
	flush_out(c);
}

static void start_transaction(struct conn *c)
{
	c->st = S_MAIL;
	send_now(c, TX_HEAD, sizeof(TX_HEAD) - 1);
}

static void longline_next(struct conn *c)
{
	c->st = S_LONGCMD;
	send_timed(c, long_cmd, long_cmd_len);
}

static void on_greeting(struct conn *c, const char *key, int code, double t)
{
	tally(g.greet, key);
	tally(phase_of(c)->greet, key);
	if (opt.mode == M_STORM)
		push(&phase_of(c)->a, (t - c->t_open) * 1000);
	if (code != 220) {
		g.refused++;
		if (opt.mode == M_PROBE)
			phase_of(c)->failed++;
		maybe_ready();
		return; /* the server closes it */
	}
	switch (opt.mode) {
	case M_STORM:
		quit(c);
		return;
	case M_PIPE:
		g.established++;
		maybe_ready();
		c->st = S_PIPE_WRITE;
		/* a fresh socket takes these few bytes whole */
		if (write(c->fd, EHLO_LINE, sizeof(EHLO_LINE) - 1) != sizeof(EHLO_LINE) - 1) {
			g.write_errors++;
			conn_close(c, "write error");
			return;
		}
		pipe_write(c);
		return;
	case M_SLOW:
		g.established++;
		maybe_ready();
		c->st = S_HOLD;
		c->t_next = t + opt.interval * (double)(c->idx % 1000) / 1000.0;
		return;
	case M_IDLE:
		if (!opt.ehlo) {
			g.established++;
			maybe_ready();
			c->st = S_HOLD;
			return;
		}
		break;
	default:
		break;
	}
	c->st = S_EHLO;
	send_now(c, EHLO_LINE, sizeof(EHLO_LINE) - 1);
}

static void on_pipe_reply(struct conn *c, const char *key, int code)
{
	/* EHLO's, then each unit's replies in order; 221 last */
	c->replies++;
	if (c->expect < 0) {
		if (code != 250)
			c->order_errors++;
		c->expect = 0;
		return;
	}
	if (code == 221) {
		c->got221 = true;
		tally(g.replies, key);
		return;
	}
	if (strcmp(key, unit_seq[c->expect]) != 0) {
		c->order_errors++;
		tally(g.replies, key);
	}
	if (strcmp(key, "250 2.6.0") == 0)
		c->acks++;
	c->expect = (c->expect + 1) % unit_seq_len;
}

/* A complete reply; line is its last line. */
static void on_reply(struct conn *c, const char *line, size_t len)
{
	char key[16];
	reply_key(line, len, key);
	snprintf(c->last, sizeof(c->last), "%s", key);
	int code = atoi(key);
	double t = now_s();
	if (c->st == S_GREETING) {
		on_greeting(c, key, code, t);
		return;
	}
	if (c->st == S_PIPE_WRITE || c->st == S_PIPE_DRAIN) {
		on_pipe_reply(c, key, code);
		return;
	}
	tally(g.replies, key);
	tally(phase_of(c)->replies, key);
	switch (c->st) {
	case S_EHLO:
		if (opt.mode == M_IDLE) {
			g.established++;
			maybe_ready();
			c->st = S_HOLD;
		} else if (opt.mode == M_LONG) {
			g.established++;
			maybe_ready();
			longline_next(c);
		} else if (opt.mode == M_STEADY) {
			g.established++;
			c->st = S_READY;
		} else {
			start_transaction(c);
		}
		break;
	case S_LONGCMD:
		push(&phase_of(c)->a, (t - c->t_mark) * 1000);
		if (code / 100 != 4)
			start_transaction(c);
		break; /* 421: it closes */
	case S_MAIL: /* MAIL, RCPT and DATA went in one write: three replies come */
		c->st = S_RCPT;
		break;
	case S_RCPT:
		c->st = S_DATA;
		break;
	case S_DATA:
		if (code != 354) {
			if (opt.mode == M_PROBE || opt.mode == M_STEADY)
				phase_of(c)->failed++;
			if (opt.mode != M_STEADY)
				quit(c);
			else if (g.ending)
				conn_close(c, NULL);
			else
				c->st = S_READY;
			break;
		}
		c->st = S_BODY;
		if (opt.mode == M_LONG)
			send_timed(c, long_data, long_data_len);
		else
			send_timed(c, body_1k, body_1k_len);
		break;
	case S_BODY:
		if (opt.mode == M_LONG) {
			push(&phase_of(c)->b, (t - c->t_mark) * 1000);
			if (code / 100 != 4)
				longline_next(c);
			break;
		}
		if (code == 250) {
			phase_of(c)->ok++;
			if (opt.mode == M_PROBE) {
				push(&phase_of(c)->a, (t - c->t_open) * 1000);
				push(&phase_of(c)->b, (t - c->t_mark) * 1000);
			} else {
				push(&phase_of(c)->a, (t - c->t_mark) * 1000);
			}
		} else {
			phase_of(c)->failed++;
		}
		if (opt.mode != M_STEADY)
			quit(c);
		else if (g.ending)
			conn_close(c, NULL); /* its last transaction is done */
		else
			c->st = S_READY;
		break;
	case S_QUIT:
		if (code == 221) {
			if (opt.mode == M_STORM)
				g.established++;
			conn_close(c, NULL);
		}
		break;
	default:
		break;
	}
}

static void on_closed(struct conn *c)
{
	/* by the server (or reset) */
	bool in_session = c->st == S_HOLD || c->st == S_READY || c->st == S_LONGCMD ||
			  c->st == S_MAIL || c->st == S_RCPT || c->st == S_DATA ||
			  c->st == S_BODY || c->st == S_EHLO;
	if (in_session) {
		g.server_closed++;
		push(&g.close_age, now_s() - c->t_open);
	}
	if ((opt.mode == M_PROBE || opt.mode == M_STEADY) &&
	    (c->st == S_MAIL || c->st == S_RCPT || c->st == S_DATA || c->st == S_BODY ||
	     c->st == S_EHLO))
		phase_of(c)->failed++;
	if (c->st == S_GREETING && !c->last[0]) {
		g.refused++; /* closed without a greeting */
		if (opt.mode == M_PROBE)
			phase_of(c)->failed++;
		maybe_ready();
	}
	char why[40];
	snprintf(why, sizeof(why), "%s", c->last[0] ? c->last : "no reply");
	bool expected = c->st == S_QUIT || (c->st == S_PIPE_DRAIN && c->got221);
	if (c->st == S_PIPE_DRAIN && !c->got221)
		snprintf(why, sizeof(why), "closed before 221");
	conn_close(c, expected ? NULL : why);
}

static void on_readable(struct conn *c)
{
	for (;;) {
		ssize_t n = recv(c->fd, c->rbuf + c->rlen, sizeof(c->rbuf) - c->rlen, 0);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n <= 0) {
			on_closed(c);
			return;
		}
		c->rlen += (size_t)n;
		size_t start = 0;
		for (size_t i = 0; i + 1 < c->rlen; i++) {
			if (c->rbuf[i] != '\r' || c->rbuf[i + 1] != '\n')
				continue;
			const char *ln = c->rbuf + start;
			size_t len = i - start;
			start = i + 2;
			i++;
			if (len >= 4 && ln[3] == '-')
				continue;
			on_reply(c, ln, len);
			if (c->fd < 0)
				return;
		}
		if (start < c->rlen)
			memmove(c->rbuf, c->rbuf + start, c->rlen - start);
		c->rlen -= start;
		if (c->rlen == sizeof(c->rbuf))
			c->rlen = 0; /* a line longer than the buffer: not SMTP */
	}
}

static void on_event(struct conn *c, uint32_t ev)
{
	if (c->fd < 0)
		return;
	if (c->st == S_CONNECTING) {
		int err = 0;
		socklen_t l = sizeof(err);
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
		if (err || (ev & (EPOLLERR | EPOLLHUP))) {
			g.connect_errors++;
			if (opt.mode == M_PROBE)
				phase_of(c)->failed++;
			conn_close(c, NULL);
			maybe_ready();
			return;
		}
		g.connected++;
		c->st = S_GREETING;
		arm(c);
		return;
	}
	if (c->st == S_PIPE_WRITE) {
		if (ev & (EPOLLHUP | EPOLLERR)) {
			g.write_errors++;
			conn_close(c, "reset while writing");
			return;
		}
		if (ev & EPOLLOUT)
			pipe_write(c);
		return;
	}
	if (ev & EPOLLOUT) {
		flush_out(c);
		if (c->fd < 0)
			return;
	}
	if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))
		on_readable(c);
}

/* ---- timers and pacing ------------------------------------------------------ */

static void tick(double t)
{
	for (int i = 0; i < g.nconn; i++) {
		struct conn *c = &g.c[i];
		if (c->fd < 0)
			continue;
		if (opt.mode == M_SLOW && c->st == S_HOLD && t >= c->t_next) {
			c->t_next = t + opt.interval;
			if (c->niov == 0)
				send_now(c, &SLOW_LINE[c->slow_pos++ % (sizeof(SLOW_LINE) - 1)], 1);
			continue;
		}
		/* what must finish has a deadline: connecting, the greeting, a
		 * paced session, a transaction, the pipeline's drain */
		bool bounded = c->st == S_CONNECTING || c->st == S_GREETING ||
			       opt.mode == M_STORM || opt.mode == M_PROBE ||
			       c->st == S_PIPE_DRAIN ||
			       (opt.mode == M_STEADY && c->st != S_READY);
		bool from_mark = c->st == S_PIPE_DRAIN || (opt.mode == M_STEADY && c->st >= S_MAIL);
		double since = from_mark ? c->t_mark : c->t_open;
		if (bounded && t - since > opt.timeout) {
			g.timeouts++;
			if (opt.mode == M_PROBE || (opt.mode == M_STEADY && c->st >= S_MAIL))
				phase_of(c)->failed++;
			conn_close(c, "client timeout");
			maybe_ready();
		}
	}
}

/* paced modes reuse slots: a rotating cursor finds a free one */
static struct conn *free_slot(void)
{
	static int cursor;
	if (g.live >= g.nconn)
		return NULL;
	for (int k = 0; k < g.nconn; k++) {
		struct conn *c = &g.c[cursor];
		cursor = (cursor + 1) % g.nconn;
		if (c->fd < 0)
			return c;
	}
	return NULL;
}

static double steady_due; /* steady: when the next message is due */

static void steady_pace(double t)
{
	while (t >= steady_due) {
		struct conn *ready = NULL;
		for (int i = 0; i < g.nconn && !ready; i++)
			if (g.c[i].fd >= 0 && g.c[i].st == S_READY)
				ready = &g.c[i];
		if (!ready) {
			if (t - steady_due > 1.0 / opt.rate) {
				g.behind++; /* late: every session busy (or reconnecting) */
				steady_due = t;
			}
			return;
		}
		ready->t_mark = t;
		start_transaction(ready);
		steady_due += 1.0 / opt.rate;
	}
}

/* ---- report ---------------------------------------------------------------- */

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double pct(const struct samples *s, double p)
{
	if (!s->n)
		return 0;
	double x = p / 100.0 * (double)s->n;
	size_t k = (size_t)x;
	if ((double)k < x)
		k++;
	if (k < 1)
		k = 1;
	return s->v[k - 1];
}

static void print_lat(const char *name, struct samples *s)
{
	qsort(s->v, s->n, sizeof(*s->v), cmp_d);
	printf(",\"%s\":{\"n\":%zu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f}", name,
	       s->n, pct(s, 50), pct(s, 90), pct(s, 99), s->n ? s->v[s->n - 1] : 0.0);
}

static void print_tally(const char *name, const struct tally *t)
{
	printf(",\"%s\":{", name);
	for (int i = 0; i < NTALLY && t[i].key[0]; i++)
		printf("%s\"%s\":%ld", i ? "," : "", t[i].key, t[i].n);
	printf("}");
}

static void report(double t_flood_end)
{
	double elapsed = (t_flood_end ? t_flood_end : g.t_end) - g.t0;
	printf("{\"mode\":\"%s\",\"connections\":%d,\"sources\":%u,\"duration_s\":%.3f,"
	       "\"attempts\":%ld,\"connected\":%ld,\"connect_errors\":%ld,\"established\":%ld,"
	       "\"refused\":%ld,\"server_closed\":%ld,\"write_errors\":%ld,\"client_timeouts\":%ld,"
	       "\"open_at_end\":%ld,\"reopened\":%ld,\"bytes_written\":%lld,\"rate_target\":%.1f,"
	       "\"attempts_per_s\":%.1f,\"scheduled\":%ld,\"behind\":%ld",
	       mode_names[opt.mode], opt.conns, opt.nsrc, g.t_end - g.t0, g.attempts,
	       g.connected, g.connect_errors, g.established, g.refused, g.server_closed,
	       g.write_errors, g.timeouts, g.open_at_end, g.reopened, g.bytes_written, opt.rate,
	       elapsed > 0 ? (double)g.attempts / elapsed : 0.0, g.scheduled, g.behind);
	print_tally("greetings", g.greet);
	print_tally("replies", g.replies);
	print_tally("closed_after", g.closes);
	switch (opt.mode) {
	case M_IDLE:
	case M_SLOW:
		print_lat("closed_at_s", &g.close_age);
		break;
	case M_PIPE:
		printf(",\"units_written\":%lld,\"replies_read\":%lld,\"acks\":%ld,"
		       "\"order_errors\":%ld,\"written_in_write_phase\":%lld,"
		       "\"last_progress_s\":%.3f,\"stalled_writers\":%ld,\"capped_writers\":%ld,"
		       "\"write_phase_s\":%.3f,\"ended_while_writing\":%ld",
		       g.units, g.replies_read, g.acks, g.order_errors, g.written_in_phase,
		       g.last_progress, g.stalled, g.capped, elapsed, g.ended_writing);
		break;
	default:
		break;
	}
	static const char *const a_name[M_COUNT] = {
		[M_LONG] = "long_command_reply_ms", [M_STORM] = "greeting_ms",
		[M_STEADY] = "data_ms", [M_PROBE] = "session_ms"};
	static const char *const b_name[M_COUNT] = {
		[M_LONG] = "long_data_reply_ms", [M_PROBE] = "data_ms"};
	printf(",\"phases\":[");
	for (int i = 0; i <= g.phase; i++) {
		struct phase *p = &g.ph[i];
		double d = p->t1 - p->t0;
		printf("%s{\"s\":%.3f,\"attempts\":%ld,\"ok\":%ld,\"failed\":%ld,\"ok_per_s\":%.1f",
		       i ? "," : "", d, p->attempts, p->ok, p->failed, d > 0 ? (double)p->ok / d : 0.0);
		if (a_name[opt.mode])
			print_lat(a_name[opt.mode], &p->a);
		if (b_name[opt.mode])
			print_lat(b_name[opt.mode], &p->b);
		print_tally("greetings", p->greet);
		print_tally("replies", p->replies);
		printf("}");
	}
	printf("]}\n");
	fflush(stdout);
}

/* ---- main ------------------------------------------------------------------ */

static void on_signal(int sig)
{
	(void)sig;
	g.stop = 1;
}

static void on_usr1(int sig)
{
	(void)sig;
	if (g.phase_req < NPHASE - 1)
		g.phase_req++;
}

static void add_sources(const char *spec)
{
	char *s = strdup(spec), *save = NULL;
	for (char *tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *dash = strchr(tok, '-');
		struct in_addr a, b;
		if (dash)
			*dash = 0;
		if (inet_pton(AF_INET, tok, &a) != 1 || (dash && inet_pton(AF_INET, dash + 1, &b) != 1))
			die("--sources: bad address in %s", spec);
		if (!dash)
			b = a;
		uint32_t lo = ntohl(a.s_addr), hi = ntohl(b.s_addr);
		if (hi < lo || hi - lo > 1u << 20)
			die("--sources: bad range in %s", spec);
		for (uint64_t x = lo; x <= hi; x++) {
			if ((x >> 24) != 127)
				die("--sources: only loopback (127.0.0.0/8) addresses");
			opt.src = realloc(opt.src, (opt.nsrc + 1) * sizeof(*opt.src));
			if (!opt.src)
				die("out of memory");
			opt.src[opt.nsrc++].s_addr = htonl((uint32_t)x);
		}
	}
	free(s);
}

static double parse_size(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (*end == 'K' || *end == 'k')
		v *= 1024;
	else if (*end == 'M' || *end == 'm')
		v *= 1024 * 1024;
	return v;
}

static void usage(void)
{
	fprintf(stderr,
"usage: postern-flood MODE --server HOST:PORT [options]\n"
"  MODE: idle | slowloris | longline | pipeline | storm   (floods)\n"
"        steady | probe                                  (allowed clients; SIGUSR1:\n"
"                                                         next phase of figures)\n"
"  --connections N     sessions (idle, slowloris, longline, pipeline, steady) (100)\n"
"  --sources LIST      source addresses, round-robin: A,B,... or A-B ranges (127/8 only)\n"
"  --duration S        how long it lasts (10); SIGTERM ends it early\n"
"  --interval S        slowloris: seconds between bytes (10)\n"
"  --rate R            storm, probe: new connections/s; steady: messages/s (1000)\n"
"  --max-inflight N    storm, probe: sessions at once at most (4000)\n"
"  --line-size B       longline: the long lines' length, K/M suffixes (1M)\n"
"  --no-ehlo           idle: hold after the greeting, without EHLO\n"
"  --noop              pipeline: a stream of NOOPs instead of 1 KiB transactions\n"
"  --max-bytes B       pipeline: write at most this much a session\n"
"  --rcvbuf B          SO_RCVBUF of every client socket (pipeline: fill sooner)\n"
"  --sndbuf B          SO_SNDBUF of every client socket (pipeline: what the kernel holds)\n"
"  --timeout S         deadline of a connect, a greeting, a paced session, a steady\n"
"                      transaction, the pipeline's drain (30)\n"
"  --ready-file F      write the established count to F once every first\n"
"                      connection has had its answer (or at the end)\n"
"Prints one JSON object on stdout.\n");
	exit(2);
}

static void build_payloads(void)
{
	char *p = body_1k;
	p += sprintf(p, "From: flood@flood.example\r\nTo: user@corp.example\r\nSubject: flood\r\n\r\n");
	while ((size_t)(p - body_1k) < 1024 - 80)
		p += sprintf(p, "%.76s\r\n",
			     "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd");
	p += sprintf(p, ".\r\n");
	body_1k_len = (size_t)(p - body_1k);
	if (opt.mode == M_PIPE) {
		size_t k = opt.noop ? 8192 : 64;
		unit_len = opt.noop ? sizeof(NOOP_LINE) - 1 : sizeof(TX_HEAD) - 1 + body_1k_len;
		pipe_buf_len = unit_len * k;
		pipe_buf = malloc(pipe_buf_len);
		if (!pipe_buf)
			die("out of memory");
		for (size_t i = 0; i < k; i++) {
			char *u = pipe_buf + i * unit_len;
			if (opt.noop) {
				memcpy(u, NOOP_LINE, sizeof(NOOP_LINE) - 1);
				continue;
			}
			memcpy(u, TX_HEAD, sizeof(TX_HEAD) - 1);
			memcpy(u + sizeof(TX_HEAD) - 1, body_1k, body_1k_len);
		}
		if (opt.noop) {
			unit_seq = seq_noop;
			unit_seq_len = 1;
		}
	}
	if (opt.mode == M_LONG) {
		long_cmd_len = opt.line_size + 2;
		long_cmd = malloc(long_cmd_len);
		long_data = malloc(opt.line_size + 64);
		if (!long_cmd || !long_data)
			die("out of memory");
		memcpy(long_cmd, "NOOP ", 5);
		memset(long_cmd + 5, 'x', opt.line_size - 5);
		memcpy(long_cmd + opt.line_size, "\r\n", 2);
		int h = sprintf(long_data, "Subject: flood\r\n\r\n");
		memset(long_data + h, 'y', opt.line_size);
		memcpy(long_data + h + opt.line_size, "\r\n.\r\n", 5);
		long_data_len = (size_t)h + opt.line_size + 5;
	}
}

/* The flood is over: what the pipeline wrote, and who still made progress;
 * everyone else lets go of its connections. */
static void end_of_flood(double t)
{
	if (opt.mode == M_PIPE) {
		g.written_in_phase = g.bytes_written;
		for (int i = 0; i < g.nconn; i++) {
			struct conn *c = &g.c[i];
			if (c->t_last_write) {
				double last = c->t_last_write - g.t0;
				if (last > g.last_progress)
					g.last_progress = last;
				if (c->pipe_full)
					g.capped++;
				else if (t - c->t_last_write > 1.0)
					g.stalled++;
			}
			if (c->fd >= 0)
				pipe_finish(c);
		}
		return;
	}
	if (opt.mode == M_STORM || opt.mode == M_PROBE)
		return; /* the sessions under way finish */
	for (int i = 0; i < g.nconn; i++)
		if (g.c[i].fd >= 0 && (opt.mode != M_STEADY || g.c[i].st == S_READY)) {
			g.open_at_end++;
			conn_close(&g.c[i], NULL);
		}
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	int m = -1;
	for (int i = 0; i < M_COUNT; i++)
		if (!strcmp(argv[1], mode_names[i]))
			m = i;
	if (m < 0)
		usage();
	opt.mode = (enum mode)m;
	static const struct option lo[] = {
		{"server", 1, 0, 's'}, {"connections", 1, 0, 'c'}, {"sources", 1, 0, 'S'},
		{"duration", 1, 0, 'd'}, {"interval", 1, 0, 'i'}, {"rate", 1, 0, 'r'},
		{"max-inflight", 1, 0, 'm'}, {"line-size", 1, 0, 'l'}, {"no-ehlo", 0, 0, 'E'},
		{"noop", 0, 0, 'N'}, {"max-bytes", 1, 0, 'M'}, {"rcvbuf", 1, 0, 'b'},
		{"sndbuf", 1, 0, 'B'}, {"timeout", 1, 0, 't'}, {"ready-file", 1, 0, 'R'},
		{"help", 0, 0, 'h'}, {0, 0, 0, 0}};
	const char *server = NULL;
	int o;
	optind = 2;
	while ((o = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (o) {
		case 's': server = optarg; break;
		case 'c': opt.conns = atoi(optarg); break;
		case 'S': add_sources(optarg); break;
		case 'd': opt.duration = atof(optarg); break;
		case 'i': opt.interval = atof(optarg); break;
		case 'r': opt.rate = atof(optarg); break;
		case 'm': opt.max_inflight = atoi(optarg); break;
		case 'l': opt.line_size = (size_t)parse_size(optarg); break;
		case 'E': opt.ehlo = false; break;
		case 'N': opt.noop = true; break;
		case 'M': opt.max_bytes = (uint64_t)parse_size(optarg); break;
		case 'b': opt.rcvbuf = (int)parse_size(optarg); break;
		case 'B': opt.sndbuf = (int)parse_size(optarg); break;
		case 't': opt.timeout = atof(optarg); break;
		case 'R': opt.ready_file = optarg; break;
		default: usage();
		}
	}
	if (!server)
		die("--server HOST:PORT is required");
	char host[64];
	const char *colon = strrchr(server, ':');
	if (!colon || (size_t)(colon - server) >= sizeof(host))
		die("--server HOST:PORT");
	memcpy(host, server, (size_t)(colon - server));
	host[colon - server] = 0;
	opt.server.sin_family = AF_INET;
	opt.server.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &opt.server.sin_addr) != 1)
		die("--server: an IPv4 address, e.g. 127.0.0.1:2525");
	if (opt.conns < 1 || opt.duration <= 0 || opt.rate <= 0 || opt.interval <= 0 ||
	    opt.max_inflight < 1 || opt.line_size < 2000 || opt.timeout <= 0)
		die("bad option value");

	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	bool paced = opt.mode == M_STORM || opt.mode == M_PROBE;
	g.nconn = paced ? opt.max_inflight : opt.conns;
	if ((rlim_t)g.nconn + 16 > rl.rlim_cur)
		die("%d sessions exceed the open file limit %llu", g.nconn,
		    (unsigned long long)rl.rlim_cur);
	build_payloads();
	g.c = calloc((size_t)g.nconn, sizeof(*g.c));
	if (!g.c)
		die("out of memory");
	for (int i = 0; i < g.nconn; i++)
		g.c[i].fd = -1, g.c[i].idx = i;
	g.ep = epoll_create1(EPOLL_CLOEXEC);
	if (g.ep < 0)
		die("epoll_create1: %s", strerror(errno));
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	struct sigaction su = {.sa_handler = on_usr1};
	sigaction(SIGUSR1, &su, NULL);
	signal(SIGPIPE, SIG_IGN);

	g.t0 = g.ph[0].t0 = steady_due = now_s();
	double t_stop = g.t0 + opt.duration, t_tick = 0, t_flood_end = 0;
	bool ending = false;
	int opened = 0;
	struct epoll_event evs[512];
	for (;;) {
		double t = now_s();
		if (g.phase_req > g.phase) {
			g.ph[g.phase].t1 = t;
			g.phase = g.phase_req;
			g.ph[g.phase].t0 = t;
		}
		if (!ending && (t >= t_stop || g.stop)) {
			ending = g.ending = true;
			t_flood_end = t;
			end_of_flood(t);
			write_ready_file();
		}
		if (ending && (g.live == 0 || t > t_flood_end + opt.timeout + 1 ||
			       (g.stop && t > t_flood_end + 2)))
			break;
		if (!ending) {
			if (paced) {
				long due = (long)((t - g.t0) * opt.rate) + 1;
				for (int turn = 0; g.scheduled < due && turn < 512; turn++) {
					g.scheduled++;
					struct conn *c = free_slot();
					if (!c) {
						g.behind++; /* every slot busy: this one is skipped */
						continue;
					}
					conn_open(c);
				}
			} else {
				for (int turn = 0; opened < opt.conns && turn < 256; turn++)
					conn_open(&g.c[opened++]);
			}
			/* longline, pipeline, steady: a closed session is opened
			 * again (steady: not more often than twice a second a slot) */
			if ((opt.mode == M_LONG || opt.mode == M_PIPE || opt.mode == M_STEADY) &&
			    opened >= opt.conns)
				for (int i = 0; i < g.nconn; i++)
					if (g.c[i].fd < 0 &&
					    (opt.mode != M_STEADY || t - g.c[i].t_open > 0.5)) {
						g.reopened++;
						conn_open(&g.c[i]);
					}
			if (opt.mode == M_STEADY)
				steady_pace(t);
		}
		int wait_ms = paced || opt.mode == M_STEADY ? 1 : opened < opt.conns ? 0 : 20;
		int n = epoll_wait(g.ep, evs, 512, wait_ms);
		for (int i = 0; i < n; i++)
			on_event(evs[i].data.ptr, evs[i].events);
		t = now_s();
		if (t - t_tick >= 0.02) {
			t_tick = t;
			tick(t);
		}
	}
	g.t_end = now_s();
	g.ph[g.phase].t1 = paced || opt.mode == M_STEADY ? t_flood_end : g.t_end;
	for (int i = 0; i < g.nconn; i++) {
		struct conn *c = &g.c[i];
		if (c->fd >= 0) {
			g.open_at_end++;
			conn_close(c, opt.mode == M_PIPE ? "client timeout" : NULL);
		}
	}
	report(t_flood_end);
	return 0;
}
