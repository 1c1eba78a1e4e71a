/* postern-bench: SMTP load generator for the benchmark harness (bench/).
 * One thread, one epoll set, N concurrent client sessions; every load is
 * bounded by a message count and a duration. Each message carries X-Bench-Id
 * and X-Bench-Sum so postern-sink can check it arrived whole and once.
 * It measures; it never decides pass/fail (bench/compare does that).
 * With --starttls every session upgrades to TLS (BoringSSL, SSL_set_fd on
 * the non-blocking socket) after the first EHLO and says EHLO again;
 * --resume offers the last session (ticket) seen from the same source
 * address on each new connection. Built without BoringSSL (the plain gcc
 * fallback of bench/compare), --starttls is refused.
 * With --proxy v1|v2 every connection begins with a PROXY protocol header
 * (what a load balancer such as HAProxy puts in front, DESIGN B.10) naming
 * the connection's own source address and the server as destination, so the
 * header's cost can be measured against one node directly. It is written by
 * proto/proxy.c (CMake links postern_proto); the plain gcc build has no
 * --proxy. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
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

/* BoringSSL only (openssl/is_boringssl.h does not exist in OpenSSL): CMake
 * adds /usr/include/android; a plain `gcc bench/postern_bench.c` builds
 * without TLS. */
#if defined(__has_include)
#if __has_include(<openssl/is_boringssl.h>)
#define HAVE_TLS 1
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif
#endif
#ifndef HAVE_TLS
#define HAVE_TLS 0
typedef struct ssl_st SSL;
#endif

/* proto/proxy.h: CMake puts proto/ on the include path of postern-bench. */
#if defined(__has_include)
#if __has_include("proxy.h")
#define HAVE_PROXY 1
#include "proxy.h"
#endif
#endif
#ifndef HAVE_PROXY
#define HAVE_PROXY 0
#endif

#define MAX_SIZES 16
#define MAX_SOURCES 1024
#define IN_CAP 4096
#define EXPECT_CAP 512
#define GRACE_S 5.0
#define MAX_CONNECTING 512

/* kind | txslot << 4 in exq: at most 16 kinds */
enum expect { E_GREET, E_EHLO, E_STARTTLS, E_MAIL, E_RCPT, E_DATA, E_DOT, E_QUIT, E_RSET };

enum slot_state { S_CLOSED, S_CONNECTING, S_OPEN, S_DONE };

struct tx {
	bool active;
	uint64_t seq;
	int size_idx;
	int fail_code;     /* first failing reply of MAIL/RCPT */
	int rcpt_sent, rcpt_ok;
	double t_dot;
};

struct conn {
	int fd;
	int idx;
	enum slot_state st;
	bool parked, reserved, quitting, ready, writable;
	int ntx;            /* transactions started on this connection */
	struct tx tx[2];    /* two may be in flight: one awaiting ".", the next chained */
	int cur;            /* tx slot that the next MAIL/RCPT/DATA reply belongs to */
	uint8_t exq[EXPECT_CAP];
	unsigned exh, ext;
	char in[IN_CAP];
	size_t in_len;
	char *out;
	size_t out_len, out_off, out_cap;
	struct conn *next_parked;
	int src;            /* index into opt.sources (0 without --sources) */
	SSL *ssl;           /* after 220 to STARTTLS */
	bool hs, tls_up;    /* handshake in progress / done */
	bool saw_starttls;  /* the last EHLO reply listed STARTTLS */
	double t_hs;        /* handshake start */
};

struct size_class {
	size_t size;
	unsigned weight;
	char *body;          /* wire form (dot-stuffed), ends with CRLF */
	size_t body_len;
	uint64_t sum;        /* FNV-1a 64 of the unstuffed body */
};

static struct {
	struct sockaddr_in server;
	char server_str[64];
	int connections;
	long long messages;
	double duration;
	double idle;
	const char *ready_file;
	const char *latency_log;  /* --latency-log: one line per 2xx after DATA */
	struct size_class sizes[MAX_SIZES];
	int nsizes;
	unsigned weight_total;
	int rcpts;
	bool pipelining, reuse, json, busy_poll;
	struct in_addr sources[MAX_SOURCES];
	int nsources;
	int per_conn;        /* --per-connection: messages per connection, 0 = no limit */
	int domains;         /* --domains: recipient domains to rotate over, 0 = one */
	double rate;
	const char *from, *to;
	const char *helo;
	bool starttls, resume;
	int proxy;          /* 0: no PROXY header; 1 or 2: that version first */
	int tls_version;    /* 0: 1.2 or 1.3 negotiated; 12 or 13: only that */
	const char *tls_groups, *sni;
} opt;

static struct {
	int ep;
	struct conn *conns;
	double t0, deadline, hard_deadline, t_end;
	long long claimed, started;
	bool stopping;
	struct conn *park_head, *park_tail;
	int connecting;
	unsigned src_rr;
	char run_id[32];
	/* results */
	long long ok, r4xx, r5xx, errors, other;
	long long codes[600];
	long long connects, connect_errors, established;
	uint32_t *lat;      /* latency samples in units of 100 ns */
	size_t nlat, lat_cap;
	uint32_t *lat_at;   /* --latency-log: each sample's end of data, 100 ns after t0 */
	size_t nlat_at, lat_at_cap;
	long long bytes_sent;
	int open_slots, ready_count;
	volatile sig_atomic_t interrupted;
	/* TLS */
#if HAVE_TLS
	SSL_CTX *ctx;
	SSL_SESSION *sess[MAX_SOURCES];  /* the last session per source */
#endif
	long long hs_full, hs_resumed, tls_errors, starttls_refused, starttls_missing;
	long long sessions_offered;
	long long proxy_headers, proxy_bytes;  /* --proxy: headers sent, their bytes */
	uint32_t *hs_lat;   /* handshake durations, 100 ns units */
	size_t nhs_lat, hs_lat_cap;
	char tls_version[32], tls_cipher[64], tls_group[32], tls_sigalg[48];
	char tls_last_error[160];
	struct rusage ru0;  /* this process's CPU time, at the start of the run */
	/* steady state (--reuse on): from the moment every session is up */
	double t_ready;
	long long ok_ready;
} g;

/* ceil() without libm, for non-negative values */
static long ceil_pos(double x)
{
	long i = (long)x;
	return (double)i < x ? i + 1 : i;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "postern-bench: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(2);
}

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n);
	if (!q)
		die("out of memory");
	return q;
}


static uint64_t rng_state = 0x243F6A8885A308D3ULL;
static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* Body of about `want` bytes: 76-character lines, every 17th starting with a
 * dot so the dot-stuffing path of the server and the sink is exercised. */
static void make_body(struct size_class *sc)
{
	static const char alpha[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 ";
	size_t want = sc->size > 300 ? sc->size - 300 : 2;
	size_t cap = want + want / 70 + 128;
	char *wire = xrealloc(NULL, cap);
	size_t w = 0, raw = 0;
	uint64_t sum = FNV_INIT;
	int line = 0;
	while (raw < want) {
		char l[80];
		size_t n = 0;
		if (++line % 17 == 0)
			l[n++] = '.';
		while (n < 76)
			l[n++] = alpha[rnd() % (sizeof(alpha) - 1)];
		l[n++] = '\r';
		l[n++] = '\n';
		sum = fnv1a(sum, l, n);
		raw += n;
		if (w + n + 2 > cap)
			cap *= 2, wire = xrealloc(wire, cap);
		if (l[0] == '.')
			wire[w++] = '.';
		memcpy(wire + w, l, n);
		w += n;
	}
	sc->body = wire;
	sc->body_len = w;
	sc->sum = sum;
}

/* ---- output ---------------------------------------------------------- */

static void out_append(struct conn *c, const char *p, size_t n)
{
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (c->out_len + n > c->out_cap) {
		size_t cap = c->out_cap ? c->out_cap : 1024;
		while (cap < c->out_len + n)
			cap *= 2;
		c->out = xrealloc(c->out, cap);
		c->out_cap = cap;
	}
	memcpy(c->out + c->out_len, p, n);
	c->out_len += n;
}

static void out_printf(struct conn *c, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof buf)
		die("line too long");
	out_append(c, buf, (size_t)n);
}

static void expect_push(struct conn *c, int kind, int txslot)
{
	if (c->ext - c->exh >= EXPECT_CAP)
		die("too many outstanding replies (lower --rcpts)");
	c->exq[c->ext++ % EXPECT_CAP] = (uint8_t)(kind | (txslot << 4));
}

static void conn_fail(struct conn *c, const char *why);

/* Level-triggered: EPOLLOUT is armed only while a send is blocked, so an
 * idle or fast connection costs no extra wakeups. */
static void conn_want_write(struct conn *c, bool want)
{
	if (c->writable == !want)
		return;
	c->writable = !want;
	struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0u), .data.ptr = c};
	epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void lat_push(uint32_t **a, size_t *n, size_t *cap, double seconds)
{
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 65536;
		*a = xrealloc(*a, *cap * sizeof **a);
	}
	double d = seconds * 1e7;
	(*a)[(*n)++] = d > 4e9 ? 4000000000u : (uint32_t)(d < 0 ? 0 : d);
}

#if HAVE_TLS
static void tls_note_error(const char *what, int ret, int err)
{
	unsigned long e = ERR_peek_last_error();
	char buf[120] = "";
	if (e)
		ERR_error_string_n(e, buf, sizeof buf);
	snprintf(g.tls_last_error, sizeof g.tls_last_error, "%s: ret %d, SSL_get_error %d%s%s%s",
		 what, ret, err, e ? " (" : "", buf, e ? ")" : "");
	if (err == SSL_ERROR_SYSCALL && !e && errno)
		snprintf(g.tls_last_error + strlen(g.tls_last_error),
			 sizeof g.tls_last_error - strlen(g.tls_last_error), ": %s", strerror(errno));
	ERR_clear_error();
}

/* Ciphertext flush of the plaintext out buffer. */
static bool tls_flush(struct conn *c)
{
	while (c->out_off < c->out_len) {
		size_t len = c->out_len - c->out_off;
		int n = SSL_write(c->ssl, c->out + c->out_off, len > 1 << 30 ? 1 << 30 : (int)len);
		if (n <= 0) {
			int err = SSL_get_error(c->ssl, n);
			if (err == SSL_ERROR_WANT_WRITE) {
				conn_want_write(c, true);
				return true;
			}
			if (err == SSL_ERROR_WANT_READ)  /* EPOLLIN is always armed */
				return true;
			g.tls_errors++;
			tls_note_error("SSL_write", n, err);
			conn_fail(c, "SSL_write");
			return false;
		}
		c->out_off += (size_t)n;
		g.bytes_sent += n;
	}
	c->out_off = c->out_len = 0;
	if (!c->writable)
		conn_want_write(c, false);
	return true;
}
#endif

/* Returns false when the connection failed. */
static bool conn_flush(struct conn *c)
{
#if HAVE_TLS
	if (c->tls_up)
		return tls_flush(c);
#endif
	while (c->out_off < c->out_len) {
		ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
				 MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR) {
				conn_want_write(c, true);
				return true;
			}
			conn_fail(c, strerror(errno));
			return false;
		}
		c->out_off += (size_t)n;
		g.bytes_sent += n;
	}
	c->out_off = c->out_len = 0;
	if (!c->writable)
		conn_want_write(c, false);
	return true;
}

/* ---- message claims (count, duration and rate bound) ------------------ */

static bool more_possible(void)
{
	return !g.stopping && g.claimed < opt.messages;
}

static bool claim(double t)
{
	if (!more_possible())
		return false;
	if (opt.rate > 0 && t < g.t0 + (double)g.claimed / opt.rate)
		return false;
	g.claimed++;
	return true;
}

static void park(struct conn *c)
{
	if (c->parked)
		return;
	c->parked = true;
	c->next_parked = NULL;
	if (g.park_tail)
		g.park_tail->next_parked = c;
	else
		g.park_head = c;
	g.park_tail = c;
}

static struct conn *unpark(void)
{
	struct conn *c = g.park_head;
	if (!c)
		return NULL;
	g.park_head = c->next_parked;
	if (!g.park_head)
		g.park_tail = NULL;
	c->parked = false;
	return c;
}

/* ---- transactions ------------------------------------------------------- */

static int pick_size(void)
{
	if (opt.nsizes == 1)
		return 0;
	unsigned r = (unsigned)(rnd() % opt.weight_total);
	for (int i = 0; i < opt.nsizes; i++) {
		if (r < opt.sizes[i].weight)
			return i;
		r -= opt.sizes[i].weight;
	}
	return opt.nsizes - 1;
}

/* The i-th recipient of message seq; with --domains N the domain is
 * d<seq mod N>.<the domain of --to>, so the messages rotate over N
 * destinations. */
static const char *rcpt_addr(int i, uint64_t seq, char *buf, size_t n)
{
	char dom[16] = "";
	if (opt.domains > 0)
		snprintf(dom, sizeof dom, "d%u.", (unsigned)(seq % (unsigned)opt.domains));
	if (strchr(opt.to, '@')) {
		const char *at = strchr(opt.to, '@');
		if (opt.rcpts == 1 && !dom[0])
			return opt.to;
		if (opt.rcpts == 1)
			snprintf(buf, n, "%.*s@%s%s", (int)(at - opt.to), opt.to, dom, at + 1);
		else
			snprintf(buf, n, "%.*s%d@%s%s", (int)(at - opt.to), opt.to, i, dom, at + 1);
	} else {
		snprintf(buf, n, "user%d@%s%s", i, dom, opt.to);
	}
	return buf;
}

static void send_rcpt(struct conn *c, int slot)
{
	char a[320];
	struct tx *t = &c->tx[slot];
	out_printf(c, "RCPT TO:<%s>\r\n", rcpt_addr(t->rcpt_sent, t->seq, a, sizeof a));
	t->rcpt_sent++;
	expect_push(c, E_RCPT, slot);
}

/* Queues MAIL (and with pipelining RCPT... DATA) of a new transaction. */
static void tx_begin(struct conn *c)
{
	int slot = c->tx[0].active ? 1 : 0;
	if (c->tx[slot].active)
		die("internal: no free transaction slot");
	struct tx *t = &c->tx[slot];
	memset(t, 0, sizeof *t);
	t->active = true;
	t->seq = (uint64_t)g.started++;
	t->size_idx = pick_size();
	c->ntx++;
	c->cur = slot;
	out_printf(c, "MAIL FROM:<%s>\r\n", opt.from);
	expect_push(c, E_MAIL, slot);
	if (opt.pipelining) {
		for (int i = 0; i < opt.rcpts; i++)
			send_rcpt(c, slot);
		out_append(c, "DATA\r\n", 6);
		expect_push(c, E_DATA, slot);
	}
}

static void tx_final(struct conn *c, struct tx *t, int code, bool have_latency, double t_reply)
{
	if (code < 0) {
		g.errors++;
	} else {
		if (code >= 200 && code < 300)
			g.ok++;
		else if (code >= 400 && code < 500)
			g.r4xx++;
		else if (code >= 500 && code < 600)
			g.r5xx++;
		else
			g.other++;
		if (code >= 0 && code < 600)
			g.codes[code]++;
	}
	if (have_latency && code >= 200 && code < 300) {
		lat_push(&g.lat, &g.nlat, &g.lat_cap, t_reply - t->t_dot);
		if (opt.latency_log)
			lat_push(&g.lat_at, &g.nlat_at, &g.lat_at_cap, t->t_dot - g.t0);
	}
	g.t_end = t_reply;
	t->active = false;
	(void)c;
}

static void conn_quit(struct conn *c)
{
	if (c->quitting)
		return;
	c->quitting = true;
	out_append(c, "QUIT\r\n", 6);
	expect_push(c, E_QUIT, 0);
}

/* The connection has nothing in flight: start the next message, wait for
 * the pacer, or say goodbye. */
static void conn_next(struct conn *c, double t)
{
	if (opt.idle > 0) {
		c->ready = true;
		g.ready_count++;
		return;
	}
	if ((!opt.reuse && c->ntx >= 1) || (opt.per_conn > 0 && c->ntx >= opt.per_conn)) {
		conn_quit(c);
		return;
	}
	if (c->reserved || claim(t)) {
		c->reserved = false;
		tx_begin(c);
	} else if (more_possible()) {
		park(c);
	} else {
		conn_quit(c);
	}
}

static void send_body(struct conn *c, int slot, double t)
{
	struct tx *t_ = &c->tx[slot];
	struct size_class *sc = &opt.sizes[t_->size_idx];
	char hdr[768];
	char a[320];
	int n = snprintf(hdr, sizeof hdr,
			 "From: <%s>\r\nTo: <%s>\r\nSubject: postern-bench %s.%llu\r\n"
			 "Message-ID: <%s.%llu@postern-bench.invalid>\r\n"
			 "X-Bench-Id: %s.%llu\r\nX-Bench-Sum: %016llx\r\n\r\n",
			 opt.from, rcpt_addr(0, t_->seq, a, sizeof a), g.run_id,
			 (unsigned long long)t_->seq, g.run_id,
			 (unsigned long long)t_->seq, g.run_id,
			 (unsigned long long)t_->seq, (unsigned long long)sc->sum);
	out_append(c, hdr, (size_t)n);
	out_append(c, sc->body, sc->body_len);
	out_append(c, ".\r\n", 3);
	expect_push(c, E_DOT, slot);
	t_->t_dot = t;
	/* RFC 2920: message content may open a pipelined group, so the next
	 * envelope rides in the same write as the end of this message. */
	if (opt.pipelining && opt.reuse && opt.idle <= 0 &&
	    (opt.per_conn <= 0 || c->ntx < opt.per_conn) && claim(t))
		tx_begin(c);
}

/* ---- connections -------------------------------------------------------- */

static void conn_close(struct conn *c)
{
#if HAVE_TLS
	if (c->ssl) {
		if (c->tls_up && c->quitting)
			SSL_shutdown(c->ssl);  /* close_notify, once; the answer is not awaited */
		SSL_free(c->ssl);
		ERR_clear_error();
	}
#endif
	c->ssl = NULL;
	c->hs = c->tls_up = c->saw_starttls = false;
	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	if (c->st == S_CONNECTING)
		g.connecting--;
	if (c->st == S_OPEN || c->st == S_CONNECTING)
		g.open_slots--;
	c->st = S_CLOSED;
	c->exh = c->ext = 0;
	c->in_len = 0;
	c->out_len = c->out_off = 0;
	c->quitting = false;
	if (c->ready)
		g.ready_count--;
	c->ready = false;
	c->ntx = 0;
}

static void conn_open(struct conn *c);
static bool proxy_header(struct conn *c);

/* After a close: reconnect for the next message, wait, or retire. */
static void slot_after_close(struct conn *c, double t)
{
	if (opt.idle > 0) {
		c->st = S_DONE;
		return;
	}
	if (c->reserved || claim(t)) {
		c->reserved = true;
		conn_open(c);
	} else if (more_possible()) {
		park(c);
	} else {
		c->st = S_DONE;
	}
}

static void conn_fail(struct conn *c, const char *why)
{
	double t = now_s();
	(void)why;
	for (int i = 0; i < 2; i++)
		if (c->tx[i].active)
			tx_final(c, &c->tx[i], -1, false, t);
	if (c->reserved) {  /* the message it was opened for never started */
		g.errors++;
		c->reserved = false;
	}
	if (c->st == S_CONNECTING)
		g.connect_errors++;
	conn_close(c);
	slot_after_close(c, t);
}

static void conn_open(struct conn *c)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		g.connect_errors++;
		if (c->reserved)
			g.errors++, c->reserved = false;
		c->st = S_DONE;
		fprintf(stderr, "postern-bench: socket: %s\n", strerror(errno));
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (opt.nsources) {
		struct sockaddr_in sa = {.sin_family = AF_INET};
		c->src = (int)(g.src_rr++ % (unsigned)opt.nsources);
		sa.sin_addr = opt.sources[c->src];
		/* pick the port at connect time, per 4-tuple: far more ports */
		setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
		if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
			die("bind %s: %s", inet_ntoa(sa.sin_addr), strerror(errno));
	}
	c->fd = fd;
	c->st = S_CONNECTING;
	c->writable = false;
	g.connecting++;
	g.open_slots++;
	g.connects++;
	struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
	if (epoll_ctl(g.ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		die("epoll_ctl: %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&opt.server, sizeof opt.server) < 0 &&
	    errno != EINPROGRESS)
		conn_fail(c, strerror(errno));
}

/* ---- TLS ---------------------------------------------------------------- */

#if HAVE_TLS
/* The client cache is ours: the newest session of each source address. */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
	struct conn *c = SSL_get_app_data(ssl);
	if (!opt.resume || !c)
		return 0;
	if (g.sess[c->src])
		SSL_SESSION_free(g.sess[c->src]);
	g.sess[c->src] = sess;
	return 1;  /* we keep the reference */
}

static void tls_init(void)
{
	g.ctx = SSL_CTX_new(TLS_method());
	if (!g.ctx)
		die("SSL_CTX_new failed");
	int lo = TLS1_2_VERSION, hi = TLS1_3_VERSION;
	if (opt.tls_version == 12)
		hi = TLS1_2_VERSION;
	else if (opt.tls_version == 13)
		lo = TLS1_3_VERSION;
	if (!SSL_CTX_set_min_proto_version(g.ctx, (uint16_t)lo) ||
	    !SSL_CTX_set_max_proto_version(g.ctx, (uint16_t)hi))
		die("cannot set the TLS versions");
	SSL_CTX_set_verify(g.ctx, SSL_VERIFY_NONE, NULL);  /* loopback benchmark */
	SSL_CTX_set_mode(g.ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (opt.tls_groups && !SSL_CTX_set1_curves_list(g.ctx, opt.tls_groups))
		die("--tls-groups: '%s' not understood (e.g. X25519:P-256)", opt.tls_groups);
	if (opt.resume) {
		SSL_CTX_set_session_cache_mode(g.ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
		SSL_CTX_sess_set_new_cb(g.ctx, on_new_session);
	} else {
		/* no ticket extension in TLS 1.2; 1.3 servers may still send tickets */
		SSL_CTX_set_options(g.ctx, SSL_OP_NO_TICKET);
		SSL_CTX_set_session_cache_mode(g.ctx, SSL_SESS_CACHE_OFF);
	}
}

/* Drives the handshake; on completion says EHLO again. */
static void tls_step(struct conn *c)
{
	int r = SSL_do_handshake(c->ssl);
	if (r == 1) {
		double t = now_s();
		c->hs = false;
		c->tls_up = true;
		if (SSL_session_reused(c->ssl)) {
			g.hs_resumed++;
		} else {
			g.hs_full++;
			/* the server's signature (says which certificate it used) */
			const char *sn = SSL_get_signature_algorithm_name(
				SSL_get_peer_signature_algorithm(c->ssl), 0);
			snprintf(g.tls_sigalg, sizeof g.tls_sigalg, "%s", sn ? sn : "?");
		}
		lat_push(&g.hs_lat, &g.nhs_lat, &g.hs_lat_cap, t - c->t_hs);
		snprintf(g.tls_version, sizeof g.tls_version, "%s", SSL_get_version(c->ssl));
		const SSL_CIPHER *ci = SSL_get_current_cipher(c->ssl);
		snprintf(g.tls_cipher, sizeof g.tls_cipher, "%s", ci ? SSL_CIPHER_standard_name(ci) : "?");
		uint16_t grp = SSL_get_curve_id(c->ssl);
		const char *gn = grp ? SSL_get_curve_name(grp) : NULL;
		snprintf(g.tls_group, sizeof g.tls_group, "%s", gn ? gn : "none");
		c->writable = true;  /* EPOLLOUT may be armed: force the MOD below */
		conn_want_write(c, false);
		out_printf(c, "EHLO %s\r\n", opt.helo);
		expect_push(c, E_EHLO, 0);
		conn_flush(c);
		return;
	}
	int err = SSL_get_error(c->ssl, r);
	if (err == SSL_ERROR_WANT_READ) {
		conn_want_write(c, false);
		return;
	}
	if (err == SSL_ERROR_WANT_WRITE) {
		conn_want_write(c, true);
		return;
	}
	g.tls_errors++;
	tls_note_error("handshake", r, err);
	conn_fail(c, "TLS handshake failed");
}

/* 220 to STARTTLS: nothing may follow it in the clear. */
static bool tls_start(struct conn *c, double t)
{
	if (c->out_off != c->out_len) {
		conn_fail(c, "STARTTLS accepted before it was sent whole");
		return false;
	}
	c->ssl = SSL_new(g.ctx);
	if (!c->ssl || !SSL_set_fd(c->ssl, c->fd))
		die("SSL_new/SSL_set_fd failed");
	SSL_set_app_data(c->ssl, c);
	SSL_set_connect_state(c->ssl);
	if (opt.sni)
		SSL_set_tlsext_host_name(c->ssl, opt.sni);
	if (opt.resume && g.sess[c->src]) {
		SSL_set_session(c->ssl, g.sess[c->src]);
		g.sessions_offered++;
	}
	c->hs = true;
	c->t_hs = t;
	return true;
}
#else
static void tls_step(struct conn *c) { (void)c; }
static bool tls_start(struct conn *c, double t) { (void)t; conn_fail(c, "no TLS"); return false; }
#endif

static int reply_code(const char *l, size_t n)
{
	if (n < 3 || l[0] < '0' || l[0] > '9' || l[1] < '0' || l[1] > '9' ||
	    l[2] < '0' || l[2] > '9')
		return -1;
	return (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
}

/* One complete reply (last line) arrived. Returns false if c was closed. */
static bool on_reply(struct conn *c, int code, double t)
{
	if (c->exh == c->ext) {
		conn_fail(c, "unexpected reply");
		return false;
	}
	uint8_t e = c->exq[c->exh++ % EXPECT_CAP];
	int kind = e & 15, slot = e >> 4;
	struct tx *tx = &c->tx[slot];
	switch (kind) {
	case E_GREET:
		if (code != 220) {
			conn_fail(c, "bad greeting");
			return false;
		}
		out_printf(c, "EHLO %s\r\n", opt.helo);
		expect_push(c, E_EHLO, 0);
		break;
	case E_EHLO:
		if (code != 250) {
			conn_fail(c, "EHLO refused");
			return false;
		}
		if (opt.starttls && !c->tls_up) {
			if (!c->saw_starttls) {
				g.starttls_missing++;
				conn_fail(c, "STARTTLS not offered");
				return false;
			}
			out_append(c, "STARTTLS\r\n", 10);
			expect_push(c, E_STARTTLS, 0);
			break;
		}
		g.established++;
		if (opt.reuse && opt.idle <= 0 && !g.t_ready && g.established >= opt.connections) {
			g.t_ready = t;
			g.ok_ready = g.ok;
		}
		conn_next(c, t);
		break;
	case E_STARTTLS:
		if (code != 220) {
			g.starttls_refused++;
			conn_fail(c, "STARTTLS refused");
			return false;
		}
		return tls_start(c, t);
	case E_MAIL:
		if (code / 100 != 2 && !tx->fail_code)
			tx->fail_code = code;
		if (!opt.pipelining) {
			if (code / 100 == 2) {
				send_rcpt(c, slot);
			} else {
				tx_final(c, tx, code, false, t);
				conn_next(c, t);
			}
		}
		break;
	case E_RCPT:
		if (code / 100 == 2)
			tx->rcpt_ok++;
		else if (!tx->fail_code)
			tx->fail_code = code;
		if (!opt.pipelining) {
			if (tx->rcpt_sent < opt.rcpts) {
				send_rcpt(c, slot);
			} else if (tx->rcpt_ok > 0) {
				out_append(c, "DATA\r\n", 6);
				expect_push(c, E_DATA, slot);
			} else {
				out_append(c, "RSET\r\n", 6);
				expect_push(c, E_RSET, slot);
				tx_final(c, tx, tx->fail_code, false, t);
			}
		}
		break;
	case E_DATA:
		if (code == 354) {
			send_body(c, slot, t);
		} else {
			tx_final(c, tx, tx->fail_code ? tx->fail_code : code, false, t);
			if (!c->tx[slot ^ 1].active)
				conn_next(c, t);
		}
		break;
	case E_DOT:
		tx_final(c, tx, code, true, t);
		if (!c->tx[slot ^ 1].active)
			conn_next(c, t);
		break;
	case E_QUIT:
		conn_close(c);
		slot_after_close(c, t);
		return false;
	default: /* RSET after a refused envelope */
		conn_next(c, t);
		break;
	}
	return true;
}

/* recv(), or SSL_read() once TLS is up: bytes, 0 at EOF, -1 with errno
 * EAGAIN (nothing yet) or another error (c not yet failed). */
static ssize_t conn_recv(struct conn *c, char *p, size_t room)
{
#if HAVE_TLS
	if (c->tls_up) {
		int n = SSL_read(c->ssl, p, room > 1 << 30 ? 1 << 30 : (int)room);
		if (n > 0)
			return n;
		int err = SSL_get_error(c->ssl, n);
		if (err == SSL_ERROR_WANT_READ) {
			errno = EAGAIN;
			return -1;
		}
		if (err == SSL_ERROR_WANT_WRITE) {
			conn_want_write(c, true);
			errno = EAGAIN;
			return -1;
		}
		if (err == SSL_ERROR_ZERO_RETURN ||
		    (err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && n == 0)) {
			ERR_clear_error();
			return 0;
		}
		g.tls_errors++;
		tls_note_error("SSL_read", n, err);
		errno = EPROTO;
		return -1;
	}
#endif
	return recv(c->fd, p, room, 0);
}

static bool is_starttls_line(const char *l, size_t len)
{
	while (len && (l[len - 1] == '\n' || l[len - 1] == '\r' || l[len - 1] == ' '))
		len--;
	return len == 12 && !strncasecmp(l + 4, "STARTTLS", 8);
}

static void conn_read(struct conn *c)
{
	for (;;) {
		size_t room = IN_CAP - c->in_len;
		ssize_t n = conn_recv(c, c->in + c->in_len, room);
		if (n == 0) {
			if (c->quitting && c->exh + 1 == c->ext) {
				double t = now_s();
				conn_close(c);
				slot_after_close(c, t);
			} else {
				conn_fail(c, "connection closed by server");
			}
			return;
		}
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				break;
			conn_fail(c, strerror(errno));
			return;
		}
		c->in_len += (size_t)n;
		double t = now_s();
		size_t pos = 0;
		for (;;) {
			char *nl = memchr(c->in + pos, '\n', c->in_len - pos);
			if (!nl)
				break;
			size_t len = (size_t)(nl - (c->in + pos)) + 1;
			const char *l = c->in + pos;
			pos += len;
			if (opt.starttls && !c->tls_up && len >= 12 && is_starttls_line(l, len))
				c->saw_starttls = true;
			if (len >= 4 && l[3] == '-')
				continue;
			int code = reply_code(l, len);
			if (code < 0) {
				conn_fail(c, "malformed reply");
				return;
			}
			if (!on_reply(c, code, t))
				return;
			if (c->hs) {  /* 220 to STARTTLS: the rest is ciphertext */
				if (pos != c->in_len) {
					conn_fail(c, "cleartext after 220 to STARTTLS");
					return;
				}
				c->in_len = 0;
				tls_step(c);
				return;
			}
		}
		if (pos == 0 && c->in_len == IN_CAP) {
			conn_fail(c, "reply line too long");
			return;
		}
		memmove(c->in, c->in + pos, c->in_len - pos);
		c->in_len -= pos;
		if (c->out_len > c->out_off && !conn_flush(c))
			return;
		/* level-triggered: no need to read to EAGAIN, except that TLS
		 * may hold decrypted records the socket no longer signals */
		if ((size_t)n < room && !c->tls_up)
			return;
	}
	if (c->out_len > c->out_off)
		conn_flush(c);
}

static void on_event(struct conn *c, uint32_t ev)
{
	if (c->st == S_CONNECTING) {
		if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		int err = 0;
		socklen_t len = sizeof err;
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err) {
			conn_fail(c, strerror(err));
			return;
		}
		c->st = S_OPEN;
		g.connecting--;
		c->writable = false;   /* EPOLLOUT still armed: the flush below drops it */
		expect_push(c, E_GREET, 0);
		conn_want_write(c, false);
		if (opt.proxy && !proxy_header(c))
			return;
	}
	if (c->st != S_OPEN)
		return;
	if (c->hs) {
		tls_step(c);
		return;
	}
	if (ev & EPOLLOUT) {
		if (!conn_flush(c))
			return;
		if (c->tls_up && c->st == S_OPEN)  /* an SSL_read may have wanted to write */
			ev |= EPOLLIN;
	}
	if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
		conn_read(c);
}

/* ---- PROXY protocol (--proxy) ------------------------------------------ */

/* The first bytes of the connection, before the server says anything: our
 * own address as the client's, the server's as the destination. Returns
 * false when c failed. */
static bool proxy_header(struct conn *c)
{
#if HAVE_PROXY
	struct sockaddr_storage src;
	socklen_t sl = sizeof src;
	if (getsockname(c->fd, (struct sockaddr *)&src, &sl) < 0) {
		conn_fail(c, strerror(errno));
		return false;
	}
	char hdr[PROXY_V1_MAX + 64];
	size_t n = opt.proxy == 1
		? proxy_write_v1(hdr, sizeof hdr, (struct sockaddr *)&src,
				 (const struct sockaddr *)&opt.server)
		: proxy_write_v2(hdr, sizeof hdr, (struct sockaddr *)&src,
				 (const struct sockaddr *)&opt.server, NULL, 0);
	if (!n)
		die("internal: cannot write a PROXY v%d header", opt.proxy);
	g.proxy_headers++;
	g.proxy_bytes += (long long)n;
	out_append(c, hdr, n);
	return conn_flush(c);
#else
	conn_fail(c, "no PROXY protocol in this build");
	return false;
#endif
}

/* ---- pacing and the loop ---------------------------------------------- */

static void release_parked(double t)
{
	while (g.park_head) {
		if (!more_possible()) {
			struct conn *c = unpark();
			if (c->st == S_OPEN) {
				conn_quit(c);
				conn_flush(c);
			} else {
				c->st = S_DONE;
			}
			continue;
		}
		if (!claim(t))
			return;
		struct conn *c = unpark();
		c->reserved = true;
		if (c->st == S_OPEN) {
			c->reserved = false;
			tx_begin(c);
			conn_flush(c);
		} else {
			conn_open(c);
		}
	}
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* percentile of sorted samples (100 ns units), in ms */
static double lpct(const uint32_t *a, size_t n, double p)
{
	if (!n)
		return 0;
	size_t i = (size_t)ceil_pos(p / 100.0 * (double)n);
	if (i > 0)
		i--;
	if (i >= n)
		i = n - 1;
	return a[i] / 1e4;
}

static double pct(double p)
{
	return lpct(g.lat, g.nlat, p);
}

static void on_signal(int sig)
{
	(void)sig;
	g.interrupted = 1;
}

static void write_ready(void)
{
	fprintf(stderr, "postern-bench: idle: %lld of %d connections established\n",
		g.established, opt.connections);
	if (opt.ready_file) {
		FILE *f = fopen(opt.ready_file, "w");
		if (f) {
			fprintf(f, "%lld\n", g.established);
			fclose(f);
		}
	}
}

static void run(void)
{
	struct epoll_event evs[256];
	getrusage(RUSAGE_SELF, &g.ru0);
	g.t0 = now_s();
	g.deadline = g.t0 + opt.duration;
	g.hard_deadline = g.deadline + GRACE_S;
	g.t_end = g.t0;
	int next_to_open = 0;
	bool idle_ready = false;
	double idle_until = 0;

	if (opt.idle <= 0) {
		for (int i = 0; i < opt.connections; i++) {
			struct conn *c = &g.conns[i];
			if (opt.reuse) {
				conn_open(c);
			} else if (claim(g.t0)) {
				c->reserved = true;
				conn_open(c);
			} else if (more_possible()) {
				park(c);
			} else {
				c->st = S_DONE;
			}
		}
		next_to_open = opt.connections;
	}
	for (;;) {
		double t = now_s();
		if (g.interrupted && !g.stopping)
			g.stopping = true, g.hard_deadline = t + GRACE_S;
		if (!g.stopping && t >= g.deadline)
			g.stopping = true;
		if (t >= g.hard_deadline)
			break;
		if (opt.idle > 0) {
			while (next_to_open < opt.connections && g.connecting < MAX_CONNECTING)
				conn_open(&g.conns[next_to_open++]);
			if (!idle_ready && next_to_open == opt.connections &&
			    g.connecting == 0 && g.ready_count == g.open_slots) {
				{
					idle_ready = true;
					idle_until = t + opt.idle;
					if (idle_until > g.deadline)
						idle_until = g.deadline;
					write_ready();
				}
			}
			if ((idle_ready && t >= idle_until) || g.stopping) {
				for (int i = 0; i < opt.connections; i++) {
					struct conn *c = &g.conns[i];
					if (c->st == S_OPEN && !c->quitting) {
						conn_quit(c);
						conn_flush(c);
					}
				}
				g.stopping = true;
				if (g.open_slots == 0)
					break;
			}
		} else {
			release_parked(t);
			if (g.open_slots == 0 && !g.park_head)
				break;
		}
		int timeout = 100;
		if (opt.rate > 0 && g.park_head && more_possible()) {
			double due = g.t0 + (double)g.claimed / opt.rate - now_s();
			timeout = due <= 0 ? 0 : (int)ceil_pos(due * 1000);
			if (timeout > 100)
				timeout = 100;
		}
		if (opt.busy_poll && timeout > 0 && !g.stopping)
			timeout = 0;
		int n = epoll_wait(g.ep, evs, 256, timeout);
		if (n == 0 && timeout == 0)
			sched_yield();  /* let a server sharing this core run */
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait: %s", strerror(errno));
		}
		for (int i = 0; i < n; i++)
			on_event(evs[i].data.ptr, evs[i].events);
	}
	/* Whatever is still in flight at the hard deadline did not finish. */
	for (int i = 0; i < opt.connections; i++) {
		struct conn *c = &g.conns[i];
		for (int k = 0; k < 2; k++)
			if (c->tx[k].active)
				g.errors++, c->tx[k].active = false;
		if (c->reserved)
			g.errors++, c->reserved = false;
		if (c->fd >= 0)
			close(c->fd), c->fd = -1;
	}
}

/* ---- options ----------------------------------------------------------- */

static bool parse_onoff(const char *s, const char *name)
{
	if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "1"))
		return true;
	if (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "0"))
		return false;
	die("%s: expected on or off, got '%s'", name, s);
	return false;
}

static size_t parse_size(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || v < 0)
		die("bad size '%s'", s);
	if (*end == 'k' || *end == 'K')
		v *= 1024, end++;
	else if (*end == 'm' || *end == 'M')
		v *= 1024 * 1024, end++;
	if (*end && *end != ':' && *end != ',')
		die("bad size '%s'", s);
	return (size_t)v;
}

static void parse_sizes(const char *spec)
{
	char *dup = strdup(spec), *save = NULL;
	opt.nsizes = 0;
	for (char *tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (opt.nsizes == MAX_SIZES)
			die("at most %d sizes", MAX_SIZES);
		struct size_class *sc = &opt.sizes[opt.nsizes++];
		sc->size = parse_size(tok);
		char *colon = strchr(tok, ':');
		sc->weight = colon ? (unsigned)atoi(colon + 1) : 1;
		if (!sc->weight)
			die("weight 0 in '%s'", spec);
	}
	free(dup);
	if (!opt.nsizes)
		die("empty --sizes");
}

static void parse_server(const char *s)
{
	char host[64];
	const char *colon = strrchr(s, ':');
	if (!colon || (size_t)(colon - s) >= sizeof host)
		die("--server: expected HOST:PORT");
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = 0;
	opt.server.sin_family = AF_INET;
	opt.server.sin_port = htons((uint16_t)atoi(colon + 1));
	if (!strcmp(host, "localhost"))
		strcpy(host, "127.0.0.1");
	if (inet_pton(AF_INET, host, &opt.server.sin_addr) != 1)
		die("--server: '%s' is not an IPv4 address", host);
	/* the harness is for loopback only */
	if ((ntohl(opt.server.sin_addr.s_addr) >> 24) != 127)
		die("--server: only loopback (127.0.0.0/8) targets are allowed");
	snprintf(opt.server_str, sizeof opt.server_str, "%s", s);
}

static void parse_sources(const char *s)
{
	char *dup = strdup(s), *save = NULL;
	for (char *tok = strtok_r(dup, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		/* A-B: every address from A to B */
		char *dash = strchr(tok, '-');
		struct in_addr a, b;
		if (dash)
			*dash = '\0';
		if (inet_pton(AF_INET, tok, &a) != 1 ||
		    (dash && inet_pton(AF_INET, dash + 1, &b) != 1))
			die("--sources: bad address '%s'", dash ? dash + 1 : tok);
		uint32_t lo = ntohl(a.s_addr), hi = dash ? ntohl(b.s_addr) : lo;
		if (hi < lo)
			die("--sources: empty range %s-%s", tok, dash + 1);
		for (uint64_t x = lo; x <= hi; x++) {
			if (opt.nsources == MAX_SOURCES)
				die("at most %d sources", MAX_SOURCES);
			opt.sources[opt.nsources++].s_addr = htonl((uint32_t)x);
		}
	}
	free(dup);
}

static void usage(void)
{
	fprintf(stderr,
"usage: postern-bench --server HOST:PORT [options]\n"
"  --connections N        concurrent sessions (100)\n"
"  --messages M           total messages (10000)\n"
"  --duration S           stop starting messages after S seconds (60)\n"
"  --size BYTES           message size (1024); K/M suffixes\n"
"  --sizes B:W,B:W,...    size distribution, e.g. 1024:70,10240:25,102400:5\n"
"  --rcpts K              recipients per message (1)\n"
"  --pipelining on|off    MAIL/RCPT/DATA in one write (on)\n"
"  --reuse on|off         many messages per connection (on) or one (off)\n"
"  --sources A,B,...      bind connections to these addresses, round-robin\n"
"                         (A-B: every address from A to B; 1024 at most)\n"
"  --per-connection K     at most K messages per connection, then QUIT and\n"
"                         connect again (from the next source)\n"
"  --domains N            recipients rotate over N domains: d0.DOMAIN ... \n"
"  --rate R               messages per second, paced (default: as fast as possible)\n"
"  --from ADDR            envelope sender (bench@postern-bench.example)\n"
"  --to ADDR|DOMAIN       recipient address or domain (user@corp.example)\n"
"  --idle S               open --connections sessions, EHLO, hold them idle S s\n"
"  --ready-file F         (idle) write the established count to F when all are up\n"
"  --busy-poll            spin on epoll instead of sleeping (uses a whole core)\n"
"  --starttls             STARTTLS after EHLO, TLS handshake, EHLO again (BoringSSL)\n"
"  --resume               offer the last TLS session of the same source on each\n"
"                         new connection (session tickets / IDs); implies --starttls\n"
"  --tls-version 1.2|1.3  only this version (default: 1.2 or 1.3, as negotiated)\n"
"  --tls-groups LIST      key exchange groups, e.g. X25519 or P-256 (BoringSSL names)\n"
"  --sni NAME             server name to send (default: none)\n"
"  --proxy v1|v2          begin every connection with a PROXY protocol header\n"
"                         naming its own source address (as a load balancer does)\n"
"  --latency-log F        after the run, write each message's end of data (s after\n"
"                         the start) and its latency (ms) to F, in reply order\n"
"  --json                 print one JSON object on stdout\n");
	exit(2);
}

static void parse_args(int argc, char **argv)
{
	static const struct option lo[] = {
		{"server", 1, 0, 's'}, {"connections", 1, 0, 'c'}, {"messages", 1, 0, 'm'},
		{"duration", 1, 0, 'd'}, {"size", 1, 0, 'l'}, {"sizes", 1, 0, 'L'},
		{"rcpts", 1, 0, 'r'}, {"pipelining", 1, 0, 'p'}, {"reuse", 1, 0, 'u'},
		{"sources", 1, 0, 'S'}, {"rate", 1, 0, 'R'}, {"from", 1, 0, 'f'},
		{"to", 1, 0, 't'}, {"json", 0, 0, 'j'}, {"idle", 1, 0, 'i'},
		{"ready-file", 1, 0, 'F'}, {"helo", 1, 0, 'H'}, {"help", 0, 0, 'h'},
		{"busy-poll", 0, 0, 'B'}, {"starttls", 0, 0, 'T'}, {"resume", 0, 0, 'E'},
		{"tls-version", 1, 0, 'V'}, {"tls-groups", 1, 0, 'G'}, {"sni", 1, 0, 'N'},
		{"proxy", 1, 0, 'P'}, {"per-connection", 1, 0, 'K'}, {"domains", 1, 0, 'D'},
		{"latency-log", 1, 0, 'O'}, {0, 0, 0, 0}};
	opt.connections = 100;
	opt.messages = 10000;
	opt.duration = 60;
	opt.rcpts = 1;
	opt.pipelining = opt.reuse = true;
	opt.from = "bench@postern-bench.example";
	opt.to = "user@corp.example";
	opt.helo = "postern-bench.example";
	bool have_server = false, have_size = false;
	int ch;
	while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (ch) {
		case 's': parse_server(optarg); have_server = true; break;
		case 'c': opt.connections = atoi(optarg); break;
		case 'm': opt.messages = atoll(optarg); break;
		case 'd': opt.duration = atof(optarg); break;
		case 'l': opt.sizes[0].size = parse_size(optarg); opt.sizes[0].weight = 1;
			  opt.nsizes = 1; have_size = true; break;
		case 'L': parse_sizes(optarg); have_size = true; break;
		case 'r': opt.rcpts = atoi(optarg); break;
		case 'p': opt.pipelining = parse_onoff(optarg, "--pipelining"); break;
		case 'u': opt.reuse = parse_onoff(optarg, "--reuse"); break;
		case 'S': parse_sources(optarg); break;
		case 'R': opt.rate = atof(optarg); break;
		case 'f': opt.from = optarg; break;
		case 't': opt.to = optarg; break;
		case 'K': opt.per_conn = atoi(optarg); break;
		case 'D': opt.domains = atoi(optarg); break;
		case 'j': opt.json = true; break;
		case 'i': opt.idle = atof(optarg); break;
		case 'F': opt.ready_file = optarg; break;
		case 'O': opt.latency_log = optarg; break;
		case 'H': opt.helo = optarg; break;
		case 'B': opt.busy_poll = true; break;
		case 'T': opt.starttls = true; break;
		case 'E': opt.resume = opt.starttls = true; break;
		case 'V':
			if (!strcmp(optarg, "1.2"))
				opt.tls_version = 12;
			else if (!strcmp(optarg, "1.3"))
				opt.tls_version = 13;
			else if (strcmp(optarg, "any"))
				die("--tls-version: 1.2, 1.3 or any");
			break;
		case 'G': opt.tls_groups = optarg; break;
		case 'N': opt.sni = optarg; break;
		case 'P':
			if (!strcmp(optarg, "v1") || !strcmp(optarg, "1"))
				opt.proxy = 1;
			else if (!strcmp(optarg, "v2") || !strcmp(optarg, "2"))
				opt.proxy = 2;
			else
				die("--proxy: v1 or v2");
			break;
		default: usage();
		}
	}
	if (!have_server || optind != argc)
		usage();
	if (opt.connections < 1 || opt.messages < 0 || opt.rcpts < 1 ||
	    opt.rcpts > 200 || opt.rate < 0)
		die("bad --connections, --messages, --rcpts or --rate");
	if (opt.duration <= 0 || opt.duration > 3600)
		die("--duration must be in (0, 3600]");
	if (opt.idle > 0 && opt.idle > opt.duration)
		opt.duration = opt.idle + 60;
	if (!have_size) {
		opt.sizes[0].size = 1024;
		opt.sizes[0].weight = 1;
		opt.nsizes = 1;
	}
	for (int i = 0; i < opt.nsizes; i++)
		opt.weight_total += opt.sizes[i].weight;
	for (int i = 0; i < opt.nsources; i++)
		if ((ntohl(opt.sources[i].s_addr) >> 24) != 127)
			die("--sources: only loopback (127.0.0.0/8) addresses are allowed");
	if ((opt.tls_version || opt.tls_groups || opt.sni) && !opt.starttls)
		die("--tls-version, --tls-groups and --sni need --starttls");
	if (opt.starttls && !HAVE_TLS)
		die("--starttls: built without BoringSSL (build with CMake: target postern-bench)");
	if (opt.proxy && !HAVE_PROXY)
		die("--proxy: built without proto/proxy.c (build with CMake: target postern-bench)");
}

/* ---- report ------------------------------------------------------------ */

/* --latency-log: "seconds latency_ms", one line per message in the order
 * the replies came, written after the run (no file I/O during it): where
 * in the run the slow ones were (a tail in bursts or spread out). */
static void write_latency_log(void)
{
	FILE *f = fopen(opt.latency_log, "w");
	if (!f) {
		fprintf(stderr, "postern-bench: %s: %s\n", opt.latency_log, strerror(errno));
		return;
	}
	fprintf(f, "# end of data (s after the start)  end of data -> 2xx (ms)\n");
	for (size_t i = 0; i < g.nlat && i < g.nlat_at; i++)
		fprintf(f, "%.6f %.4f\n", g.lat_at[i] / 1e7, g.lat[i] / 1e4);
	if (fclose(f) != 0)
		fprintf(stderr, "postern-bench: %s: %s\n", opt.latency_log, strerror(errno));
}

static void report(void)
{
	double elapsed = g.t_end - g.t0;
	if (opt.idle > 0 || elapsed <= 0)
		elapsed = now_s() - g.t0;
	double rate = elapsed > 0 ? (double)g.ok / elapsed : 0;
	if (opt.latency_log)
		write_latency_log();
	qsort(g.lat, g.nlat, sizeof *g.lat, cmp_u32);
	double mean = 0;
	for (size_t i = 0; i < g.nlat; i++)
		mean += g.lat[i];
	mean = g.nlat ? mean / (double)g.nlat / 1e4 : 0;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu_user = (double)(ru.ru_utime.tv_sec - g.ru0.ru_utime.tv_sec) +
			  (double)(ru.ru_utime.tv_usec - g.ru0.ru_utime.tv_usec) / 1e6;
	double cpu_sys = (double)(ru.ru_stime.tv_sec - g.ru0.ru_stime.tv_sec) +
			 (double)(ru.ru_stime.tv_usec - g.ru0.ru_stime.tv_usec) / 1e6;
	double wall = now_s() - g.t0;
	double cpu_frac = wall > 0 ? (cpu_user + cpu_sys) / wall : 0;
	/* steady: the rate once all sessions (and their handshakes) are up */
	bool have_steady = g.t_ready > 0 && g.t_end > g.t_ready && g.ok > g.ok_ready;
	double steady_rate = have_steady ? (double)(g.ok - g.ok_ready) / (g.t_end - g.t_ready) : 0;
	double ramp = have_steady ? g.t_ready - g.t0 : 0;
	double avg_size = 0;
	for (int i = 0; i < opt.nsizes; i++)
		avg_size += (double)opt.sizes[i].size * opt.sizes[i].weight / opt.weight_total;

	fprintf(stderr,
		"postern-bench: %s, %d connections, %s, pipelining %s, reuse %s%s\n"
		"  messages: %lld attempted, %lld ok (2xx), %lld 4xx, %lld 5xx, %lld errors\n"
		"  elapsed %.3f s, %.1f messages/s, %.1f MB/s sent\n"
		"  latency end-of-data -> 2xx (ms): p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n"
		"  connections: %lld opened, %lld connect errors, %lld sessions established\n"
		"  client CPU: %.2f s user, %.2f s system, %.0f%% of one core\n",
		opt.server_str, opt.connections,
		opt.idle > 0 ? "idle" : "load", opt.pipelining ? "on" : "off",
		opt.reuse ? "on" : "off", opt.rate > 0 ? " (paced)" : "",
		g.started, g.ok, g.r4xx, g.r5xx, g.errors, elapsed, rate,
		elapsed > 0 ? (double)g.bytes_sent / elapsed / 1e6 : 0,
		pct(50), pct(90), pct(99), pct(99.9), g.nlat ? g.lat[g.nlat - 1] / 1e4 : 0,
		g.connects, g.connect_errors, g.established, cpu_user, cpu_sys, cpu_frac * 100);
	for (int code = 0; code < 600; code++)
		if (g.codes[code])
			fprintf(stderr, "  reply %d: %lld\n", code, g.codes[code]);
	if (opt.proxy)
		fprintf(stderr, "  proxy: %lld PROXY v%d headers sent, %lld bytes\n", g.proxy_headers,
			opt.proxy, g.proxy_bytes);
	if (have_steady)
		fprintf(stderr, "  steady: all %d sessions up after %.3f s; from then %lld ok, %.1f messages/s\n",
			opt.connections, ramp, g.ok - g.ok_ready, steady_rate);
	long long hs = g.hs_full + g.hs_resumed;
	double hs_rate = elapsed > 0 ? (double)hs / elapsed : 0;
	qsort(g.hs_lat, g.nhs_lat, sizeof *g.hs_lat, cmp_u32);
	if (opt.starttls) {
		fprintf(stderr,
			"  tls: %lld handshakes (%lld full, %lld resumed; %lld sessions offered), "
			"%.1f handshakes/s, %s %s %s, server signature %s\n"
			"  tls: handshake (ms): p50 %.3f  p99 %.3f  max %.3f; %lld TLS errors, "
			"%lld STARTTLS not offered, %lld STARTTLS refused\n",
			hs, g.hs_full, g.hs_resumed, g.sessions_offered, hs_rate,
			g.tls_version[0] ? g.tls_version : "-", g.tls_cipher[0] ? g.tls_cipher : "-",
			g.tls_group[0] ? g.tls_group : "-", g.tls_sigalg[0] ? g.tls_sigalg : "-",
			lpct(g.hs_lat, g.nhs_lat, 50), lpct(g.hs_lat, g.nhs_lat, 99),
			g.nhs_lat ? g.hs_lat[g.nhs_lat - 1] / 1e4 : 0, g.tls_errors,
			g.starttls_missing, g.starttls_refused);
		if (g.tls_last_error[0])
			fprintf(stderr, "  tls: last error: %s\n", g.tls_last_error);
	}
	if (!opt.json)
		return;
	printf("{\"server\":\"%s\",\"connections\":%d,\"pipelining\":%s,\"reuse\":%s,"
	       "\"rcpts\":%d,\"rate_target\":%.1f,\"avg_size\":%.0f,\"idle\":%s,"
	       "\"attempted\":%lld,\"ok\":%lld,\"replies\":{\"250\":%lld,\"4xx\":%lld,"
	       "\"5xx\":%lld,\"errors\":%lld,\"other\":%lld},\"codes\":{",
	       opt.server_str, opt.connections, opt.pipelining ? "true" : "false",
	       opt.reuse ? "true" : "false", opt.rcpts, opt.rate, avg_size,
	       opt.idle > 0 ? "true" : "false", g.started, g.ok, g.ok, g.r4xx, g.r5xx,
	       g.errors, g.other);
	bool first = true;
	for (int code = 0; code < 600; code++)
		if (g.codes[code]) {
			printf("%s\"%d\":%lld", first ? "" : ",", code, g.codes[code]);
			first = false;
		}
	printf("},\"elapsed_s\":%.4f,\"msgs_per_s\":%.1f,\"bytes_sent\":%lld,"
	       "\"latency_ms\":{\"samples\":%zu,\"p50\":%.4f,\"p90\":%.4f,\"p99\":%.4f,"
	       "\"p99_9\":%.4f,\"max\":%.4f,\"mean\":%.4f},\"connects\":%lld,"
	       "\"connect_errors\":%lld,\"established\":%lld",
	       elapsed, rate, g.bytes_sent, g.nlat, pct(50), pct(90), pct(99), pct(99.9),
	       g.nlat ? g.lat[g.nlat - 1] / 1e4 : 0, mean, g.connects, g.connect_errors,
	       g.established);
	if (opt.starttls)
		printf(",\"tls\":{\"resume\":%s,\"handshakes\":%lld,\"full\":%lld,\"resumed\":%lld,"
		       "\"sessions_offered\":%lld,\"handshakes_per_s\":%.1f,\"errors\":%lld,"
		       "\"starttls_missing\":%lld,\"starttls_refused\":%lld,\"version\":\"%s\","
		       "\"cipher\":\"%s\",\"group\":\"%s\",\"sigalg\":\"%s\",\"handshake_ms\":{\"p50\":%.4f,"
		       "\"p90\":%.4f,\"p99\":%.4f,\"max\":%.4f}}",
		       opt.resume ? "true" : "false", hs, g.hs_full, g.hs_resumed,
		       g.sessions_offered, hs_rate, g.tls_errors, g.starttls_missing,
		       g.starttls_refused, g.tls_version, g.tls_cipher, g.tls_group, g.tls_sigalg,
		       lpct(g.hs_lat, g.nhs_lat, 50), lpct(g.hs_lat, g.nhs_lat, 90),
		       lpct(g.hs_lat, g.nhs_lat, 99), g.nhs_lat ? g.hs_lat[g.nhs_lat - 1] / 1e4 : 0);
	if (opt.proxy)
		printf(",\"proxy\":{\"version\":%d,\"headers\":%lld,\"bytes\":%lld}", opt.proxy,
		       g.proxy_headers, g.proxy_bytes);
	if (have_steady)
		printf(",\"steady\":{\"ramp_s\":%.4f,\"ok\":%lld,\"msgs_per_s\":%.1f}",
		       ramp, g.ok - g.ok_ready, steady_rate);
	printf(",\"client_cpu\":{\"user_s\":%.3f,\"sys_s\":%.3f,\"of_one_core\":%.3f}}\n",
	       cpu_user, cpu_sys, cpu_frac);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if ((rlim_t)opt.connections + 16 > rl.rlim_cur)
		die("--connections %d exceeds the open file limit %llu (ulimit -n)",
		    opt.connections, (unsigned long long)rl.rlim_cur);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	rng_state ^= (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid();
	if (!rng_state)
		rng_state = 1;
	snprintf(g.run_id, sizeof g.run_id, "%lx%05x", (long)ts.tv_sec,
		 (unsigned)(rnd() & 0xfffff));
	for (int i = 0; i < opt.nsizes; i++)
		make_body(&opt.sizes[i]);
	g.conns = calloc((size_t)opt.connections, sizeof *g.conns);
	if (!g.conns)
		die("out of memory");
	for (int i = 0; i < opt.connections; i++)
		g.conns[i].fd = -1, g.conns[i].idx = i;
	g.ep = epoll_create1(EPOLL_CLOEXEC);
	if (g.ep < 0)
		die("epoll_create1: %s", strerror(errno));
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
#if HAVE_TLS
	if (opt.starttls)
		tls_init();
#endif
	run();
	report();
	if (opt.idle > 0)
		return g.established > 0 ? 0 : 1;
	return g.ok > 0 || opt.messages == 0 ? 0 : 1;
}
