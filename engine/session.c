/* Session glue: drives one connection's SMTP state machine (proto/) from
 * I/O completions, writes accepted messages to the store and sends 250 only
 * once the message is durable. Owns no policy: that is proto/ and relay.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "content.h"
#include "envelope.h"
#include "listener.h"
#include "log.h"
#include "proxy.h"
#include "queue.h"
#include "session.h"
#include "spool.h"
#include "throttle.h"
#include "tls.h"

/* Input backlog (pipelined commands or the next message while one is being
 * stored) above which we stop reading from the socket. */
#define IN_PAUSE (256 * 1024)
#define IN_MIN_CAP 4096
/* The time a loop turn may spend feeding sessions their input, and as
 * much again for what earlier turns left over. A client that pipelines
 * commands without end (or sends megabytes of junk) gets its share of a
 * turn, not the whole turn: without it, a hundred such clients made every
 * turn tens of milliseconds long, and every other client's reply waited
 * for it (bench/floods). A turn's first step always runs. An accepted
 * message's 250 waits for about three turn ends (its writes, the group
 * commit's fdatasync, the send), so the slice is short: every turn of a
 * flood adds up to a slice or two to each of them. */
#define SESSION_SLICE_US 250

/* A session that keeps up with its client reads with a multishot recv. One
 * that falls behind (input left over, deferred to the next turn, or a
 * receive buffer filled whole: the socket holds more) reads one buffer a
 * turn with io_recv_once until it has caught up: a multishot recv posts
 * all its socket holds in one turn (megabytes on io_uring, copied into the
 * backlog), and every other client waits for that turn to end. A new
 * session reads so too until a few reads show that it keeps up. */
static void arm_recv(struct wctx *w, struct conn *c)
{
	if (c->recv_armed || c->recv_pacing || c->closing || c->read_eof ||
	    c->close_after_send)
		return;
	c->recv_armed = true;
	c->recv_paused = false;
	c->recv_multishot = !c->recv_once;
	c->inflight++;
	if (c->recv_once)
		io_recv_once(w->io, c->fd, conn_tag(IO_OP_RECV, c));
	else
		io_recv(w->io, c->fd, conn_tag(IO_OP_RECV, c));
}

/* After a recv completion: is the session behind its client (or caught
 * up again)? A multishot recv still armed is cancelled on falling behind:
 * its last completion (more=false) arms the single one. Caught up means
 * a few small reads in a row, each consumed at once: a client that sends
 * without pause is read as fast as it arrives now and then, and must not
 * get a multishot recv (and its burst) back for that. */
#define RECV_CALM_READS 4
static void recv_one_a_turn(struct wctx *w, struct conn *c)
{
	c->recv_calm = 0;
	if (!c->recv_once) {
		c->recv_once = true;
		if (c->recv_armed && c->recv_multishot)
			io_cancel(w->io, conn_tag(IO_OP_RECV, c));
	}
}

static void recv_pace(struct wctx *w, struct conn *c, int res)
{
	bool full = res > 0 && (unsigned)res >= w->buf_size;
	bool behind = full || c->in_len > c->in_off || c->runnable;
	if (behind) {
		c->behind = true;
		recv_one_a_turn(w, c);
	} else if (c->recv_once && res > 0 && (unsigned)res < w->buf_size / 2 &&
		   ++c->recv_calm >= RECV_CALM_READS) {
		c->recv_once = false;
		c->behind = false;
	}
}

/* Input read only to be thrown away (the rest of a command line over
 * 2048 octets, the body of a message already refused for a long line or
 * its size, a dropped BDAT chunk) is read at most DISCARD_RATE octets a
 * second a session: after each such read the next recv waits in
 * proportion to it, and TCP makes the client wait with it. Without it ten
 * clients looping on 1 MiB lines had Postern read (and the kernel copy)
 * 2.7 GB/s, and every other client's replies waited on the two cores for
 * it (bench/floods: p99 2.3x of idle). A refused 36 MB message still
 * gets its reply in about two seconds. */
#define DISCARD_RATE (16ull << 20)

static void maybe_free(struct wctx *w, struct conn *c);

static bool discard_pace(struct wctx *w, struct conn *c, int res)
{
	if (res <= 0 || !smtp_server_discarding(&c->smtp))
		return false;
	recv_one_a_turn(w, c); /* a multishot recv would post all the socket holds */
	if (c->recv_armed || c->recv_pacing)
		return true;
	uint64_t ms = ((uint64_t)res * 1000 + DISCARD_RATE - 1) / DISCARD_RATE;
	c->recv_pacing = true;
	c->inflight++;
	io_timeout(w->io, ms, conn_tag(IO_OP_PACE, c));
	return true;
}

void session_on_pace(struct wctx *w, struct conn *c)
{
	c->inflight--;
	c->recv_pacing = false;
	if (c->closing) {
		maybe_free(w, c);
		return;
	}
	if (!c->recv_paused && !c->recv_starved)
		arm_recv(w, c);
}

static void process_input(struct wctx *w, struct conn *c, const char *direct,
			  size_t dlen, int bid);
static void message_append(struct wctx *w, struct conn *c, const char *p, size_t n,
			   int bid);

static bool content_verdict(struct wctx *w, struct conn *c);
static void hold(struct conn *c);
static void release(struct wctx *w, struct conn *c);
static void on_reject(void *ctx, enum smtp_reject why, const char *reply,
		      const char *rcpt);
static void on_command(void *ctx, const char *line, size_t len);
static bool admit_message(void *ctx);
static bool on_starttls(void *ctx);
static void auth_start(struct wctx *w, struct conn *c);
static void tls_recv(struct wctx *w, struct conn *c, const char *p, size_t n);
static bool in_append(struct conn *c, const char *p, size_t n);

static void process(struct wctx *w, struct conn *c)
{
	process_input(w, c, NULL, 0, -1);
}

/* Sessions that are behind their clients get the turn's first slice;
 * those that keep up may go on for a second one, so that a client that
 * sends a command now and then is answered in this turn even when a
 * hundred others pipeline without end. */
static bool slice_spent(struct wctx *w, const struct conn *c)
{
	if (w->slice_units++ == 0)
		return false;
	uint64_t limit = c->behind ? SESSION_SLICE_US : 2 * SESSION_SLICE_US;
	return wctx_clock_us() - w->slice_start_us > limit;
}

/* The rest of c's input waits for the next turn. */
static void defer(struct wctx *w, struct conn *c)
{
	if (c->runnable)
		return;
	c->runnable = true;
	c->run_next = NULL;
	c->inflight++; /* the list's hold: the connection stays until it ran */
	struct conn_table *t = w->conns;
	if (t->run_tail)
		t->run_tail->run_next = c;
	else
		t->run_head = c;
	t->run_tail = c;
}

bool session_run_deferred(struct wctx *w)
{
	struct conn_table *t = w->conns;
	struct conn *c = t->run_head, *last = t->run_tail;
	t->run_head = t->run_tail = NULL;
	w->slice_start_us = wctx_clock_us();
	w->slice_units = 0;
	while (c) {
		if (w->slice_units && wctx_clock_us() - w->slice_start_us > SESSION_SLICE_US) {
			/* Those not reached go first next time, ahead of those
			 * that ran and were deferred again: else the list's
			 * head would take every slice. They keep their hold. */
			last->run_next = t->run_head;
			t->run_head = c;
			if (!t->run_tail)
				t->run_tail = last;
			break;
		}
		struct conn *next = c->run_next;
		c->runnable = false;
		c->run_next = NULL;
		if (!c->closing)
			process(w, c);
		c->inflight--;
		maybe_free(w, c);
		c = next;
	}
	return t->run_head != NULL;
}

/* Refusal before any session exists: one best-effort line, then close. */
static void refuse(int fd, const char *line)
{
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "%s\r\n", line);
	ssize_t r = send(fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
	(void)r;
	close(fd);
}

/* Refused once the connection is ours (after a PROXY header): the same
 * best-effort line, then the connection goes as any other. */
static void refuse_conn(struct wctx *w, struct conn *c, const char *line)
{
	char buf[256];
	int n = snprintf(buf, sizeof(buf), "%s\r\n", line);
	ssize_t r = send(c->fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
	(void)r;
	session_close(w, c);
}

/* The session proper, from the client's address: the socket's peer, or the
 * source a trusted proxy's header gave (c already holds the connection
 * then, and its leftover input is the client's first SMTP bytes). */
static void session_begin(struct wctx *w, struct conn *c, int fd, unsigned binding,
			  const struct sockaddr_storage *ss)
{
	char ip[64] = "unknown";
	peer_text(ss, ip, sizeof(ip));
	const struct ip_range *why = NULL;
	const struct rconn *rc = conf_match(w->conf, binding, (const struct sockaddr *)ss, &why);
	if (!rc) {
		metric_add(&w->m->refused[REFUSE_NO_CONNECTOR], 1);
		log_msg(LOG_WARN, "event=refuse client=%s binding=%s reason=no_connector",
			ip, binding < w->conf->nbindings ? w->conf->bindings[binding].text : "-");
		static const char no[] = "554 5.7.1 No receive connector accepts connections from this address";
		if (c)
			refuse_conn(w, c, no);
		else
			refuse(fd, no);
		return;
	}
	/* Connection limits, counted across workers (throttle.c), on the
	 * client's address (an IPv6 client's /64). */
	char source[THROTTLE_SOURCE_MAX];
	throttle_source_name(ss, why, source, sizeof(source));
	struct throttle_entry *src, *all = NULL;
	int32_t figure = 0, limit = 0;
	enum throttle_verdict why_th =
		throttle_connect(w->throttle, rc, source, w->now_ms, &src, &figure, &limit);
	/* A connector-wide bucket that cannot be had must not mean no limit. */
	if (!why_th && rc->message_rate_limit && rc->message_rate_source == RATE_SOURCE_ALL &&
	    !(all = throttle_entry(w->throttle, rc->stats_id, ""))) {
		throttle_disconnect(w->throttle, rc, src);
		why_th = THROTTLE_FULL;
	}
	if (why_th == THROTTLE_FULL) {
		/* Fails closed for new sources; one line a second, with a count. */
		char q[160];
		metric_add(&w->m->conn[rc->stats_id].throttled[THROTTLE_TABLE_FULL], 1);
		uint64_t n = throttle_full_note(w->throttle, THROTTLE_FULL_REFUSED, 1, w->now_ms);
		if (n)
			log_msg(LOG_WARN,
				"event=throttle reason=table_full connector=%s client=%s source=%s count=%llu size=%d note=\"no slot for a new source: refused\"",
				log_quote(q, sizeof(q), rc->name), ip, source,
				(unsigned long long)n, limit);
		if (c)
			refuse_conn(w, c, R_CONN_LIMIT);
		else
			refuse(fd, R_CONN_LIMIT);
		return;
	}
	if (why_th) {
		static const enum throttle_reason reasons[] = {
			[THROTTLE_OVER_TOTAL] = THROTTLE_CONNECTIONS,
			[THROTTLE_OVER_SOURCE] = THROTTLE_CONNECTIONS_PER_SOURCE,
			[THROTTLE_OVER_PERCENTAGE] = THROTTLE_CONNECTIONS_PERCENTAGE};
		enum throttle_reason r = reasons[why_th];
		char q[160];
		metric_add(&w->m->conn[rc->stats_id].throttled[r], 1);
		log_msg(LOG_INFO, "event=throttle reason=%s connector=%s client=%s limit=%d current=%d%s%s",
			throttle_reason_names[r], log_quote(q, sizeof(q), rc->name), ip, limit,
			figure, strcmp(source, ip) ? " source=" : "", strcmp(source, ip) ? source : "");
		if (c)
			refuse_conn(w, c, R_CONN_LIMIT);
		else
			refuse(fd, R_CONN_LIMIT);
		return;
	}
	if (!c) {
		c = conn_alloc(w->conns);
		if (!c) {
			throttle_disconnect(w->throttle, rc, src);
			metric_add(&w->m->refused[REFUSE_WORKER_FULL], 1);
			log_msg(LOG_WARN, "event=refuse client=%s reason=worker_full", ip);
			refuse(fd, R_CONN_LIMIT);
			return;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c->fd = fd;
		c->recv_once = true; /* until a few reads show it keeps up */
		c->binding = binding;
		c->conf = w->conf;
		conf_ref(c->conf);
		c->started_ms = w->now_ms;
		c->w = w;
	}
	c->active_ms = w->now_ms;
	c->th_source = src;
	c->th_rate = NULL;
	/* "user" keys unauthenticated sessions on their address (Exchange's
	 * MessageRateSource): without AUTH, every session is one of those. */
	if (rc->message_rate_limit && (rc->message_rate_source == RATE_SOURCE_IP ||
				       rc->message_rate_source == RATE_SOURCE_USER))
		c->th_rate = src;
	else if (rc->message_rate_limit && rc->message_rate_source == RATE_SOURCE_ALL)
		c->th_rate = all;
	c->rc = rc;
	snprintf(c->peer, sizeof(c->peer), "%s", ip);
	smtp_server_init(&c->smtp, &rc->smtp, ip, c->out, sizeof(c->out));
	c->smtp.hooks = (struct smtp_server_hooks){
		.reject = on_reject,
		.command = rc->protocol_log ? on_command : NULL,
		.admit_message = c->th_rate ? admit_message : NULL,
		.starttls = rc->tls ? on_starttls : NULL,
		.ctx = c,
	};
	struct connector_counters *cc = &w->m->conn[rc->stats_id];
	metric_add(&cc->connections, 1);
	metric_add(&cc->active, 1);
	char q[160];
	log_msg(LOG_INFO, "event=connect client=%s connector=%s range=%s worker=%u%s%s",
		ip, log_quote(q, sizeof(q), rc->name), why ? why->text : "-", w->id,
		*c->proxy_peer ? " proxy=" : "", c->proxy_peer);
	hold(c);
	process(w, c); /* sends the banner, then runs what came with the header */
	arm_recv(w, c);
	release(w, c);
}

#define PROXY_HEADER_MS 10000   /* B.10: a trusted proxy's header is due by then */

/* A connection that must begin with a PROXY header ends without a word:
 * the balancer (or whoever it is) gets nothing to learn from. */
static void proxy_reject(struct wctx *w, const struct conf *conf, unsigned binding,
			 const char *client, const char *reason, const char *detail)
{
	char q[200];
	metric_add(&w->m->proxy_rejected, 1);
	log_msg(LOG_WARN, "event=proxy_reject client=%s binding=%s reason=%s%s%s worker=%u", client,
		binding < conf->nbindings ? conf->bindings[binding].text : "-", reason,
		detail ? " detail=" : "", detail ? log_quote(q, sizeof(q), detail) : "", w->id);
}

/* Bytes of a connection waiting for its PROXY header: once the header is
 * whole, the session begins with the address it names. */
static void proxy_input(struct wctx *w, struct conn *c, const char *p, size_t n)
{
	if (n && !in_append(c, p, n)) {
		session_close(w, c);
		return;
	}
	struct proxy_header h;
	const char *why = NULL;
	size_t at = 0;
	int r = proxy_parse(c->in + c->in_off, c->in_len - c->in_off, &h, &why, &at);
	if (r == 0 && !c->read_eof)
		return;
	if (r <= 0) {
		char detail[96];
		snprintf(detail, sizeof(detail), "%s at byte %zu", r < 0 && why ? why : "incomplete",
			 r < 0 ? at : c->in_len - c->in_off);
		proxy_reject(w, c->conf, c->binding, c->proxy_peer, r < 0 ? "garbled" : "missing",
			     detail);
		session_close(w, c);
		return;
	}
	c->in_off += (size_t)r;
	c->proxy_wait = false;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (h.kind == PROXY_PROXIED) {
		ss = h.src;
	} else if (getpeername(c->fd, (struct sockaddr *)&ss, &sl) < 0) {
		session_close(w, c); /* LOCAL/UNKNOWN: the proxy itself is the client */
		return;
	}
	session_begin(w, c, c->fd, c->binding, &ss);
}

void session_accept(struct wctx *w, unsigned binding, int fd)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (w->stopping || w->draining) {
		metric_add(&w->m->refused[REFUSE_SHUTDOWN], 1);
		refuse(fd, R_SHUTTING_DOWN);
		return;
	}
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0) {
		close(fd);
		return;
	}
	if (binding >= w->conf->nbindings || !w->conf->bindings[binding].proxy) {
		session_begin(w, NULL, fd, binding, &ss);
		return;
	}
	char ip[64];
	peer_text(&ss, ip, sizeof(ip));
	if (!conf_trusted_proxy(w->conf, (const struct sockaddr *)&ss, NULL)) {
		proxy_reject(w, w->conf, binding, ip, "untrusted", NULL);
		close(fd);
		return;
	}
	/* Nothing is sent before the header has arrived (B.10). */
	struct conn *c = conn_alloc(w->conns);
	if (!c) {
		metric_add(&w->m->refused[REFUSE_WORKER_FULL], 1);
		log_msg(LOG_WARN, "event=refuse client=%s reason=worker_full", ip);
		close(fd);
		return;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	c->recv_once = true; /* until a few reads show it keeps up */
	c->binding = binding;
	c->proxy_wait = true;
	c->conf = w->conf;
	conf_ref(c->conf);
	c->started_ms = c->active_ms = w->now_ms;
	c->w = w;
	snprintf(c->peer, sizeof(c->peer), "%s", ip);
	snprintf(c->proxy_peer, sizeof(c->proxy_peer), "%s", ip);
	arm_recv(w, c);
}

/* proto hook: every refusal is counted and logged with its reply. */
static void on_reject(void *ctx, enum smtp_reject why, const char *reply,
		      const char *rcpt)
{
	struct conn *c = ctx;
	struct wctx *w = c->w;
	metric_add(&w->m->conn[c->rc->stats_id].rejected[why], 1);
	char qc[160], qr[600], qf[600], qt[600], from[300], to[300];
	const struct smtp_envelope *e = &c->smtp.env;
	snprintf(from, sizeof(from), "<%s>", e->from ? e->from : "");
	snprintf(to, sizeof(to), "<%s>", rcpt ? rcpt : "");
	log_msg(LOG_INFO,
		"event=reject reason=%s from=%s to=%s connector=%s client=%s reply=%s worker=%u",
		smtp_reject_name(why), e->from ? log_quote(qf, sizeof(qf), from) : "-",
		rcpt ? log_quote(qt, sizeof(qt), to) : "-", log_quote(qc, sizeof(qc), c->rc->name),
		c->peer, log_quote(qr, sizeof(qr), reply), w->id);
}

/* proto hook, for connectors with protocol_log: commands as received,
 * with AUTH arguments masked. */
static void on_command(void *ctx, const char *line, size_t len)
{
	struct conn *c = ctx;
	char text[600], q[1300], qc[160];
	if (len > 512)
		len = 512;
	memcpy(text, line, len);
	text[len] = '\0';
	if (len >= 4 && strncasecmp(text, "AUTH", 4) == 0) {
		char *sp = strchr(text + 5 > text + len ? text + len : text + 5, ' ');
		if (sp)
			snprintf(sp, sizeof(text) - (size_t)(sp - text), " ****");
	}
	log_msg(LOG_INFO, "event=smtp dir=in client=%s connector=%s line=%s", c->peer,
		log_quote(qc, sizeof(qc), c->rc->name), log_quote(q, sizeof(q), text));
}

static void log_replies(const struct conn *c)
{
	char qc[160];
	log_quote(qc, sizeof(qc), c->rc->name);
	const char *p = c->smtp.out.p, *end = p + c->smtp.out.len;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = (size_t)((nl ? nl : end) - p);
		char line[600], q[1300];
		size_t k = n && p[n - 1] == '\r' ? n - 1 : n;
		if (k > 512)
			k = 512;
		memcpy(line, p, k);
		line[k] = '\0';
		log_msg(LOG_INFO, "event=smtp dir=out client=%s connector=%s line=%s", c->peer,
			qc, log_quote(q, sizeof(q), line));
		p += n + 1;
	}
}

/* proto hook at MAIL: one token of the connector's message rate for this
 * source (or for the connector as a whole). */
static bool admit_message(void *ctx)
{
	struct conn *c = ctx;
	struct wctx *w = c->w;
	double left;
	uint32_t rate = (uint32_t)c->rc->message_rate_limit;
	if (throttle_take_message(w->throttle, c->th_rate, rate, w->now_ms, &left))
		return true;
	char q[160];
	metric_add(&w->m->conn[c->rc->stats_id].throttled[THROTTLE_MESSAGE_RATE], 1);
	log_msg(LOG_INFO,
		"event=throttle reason=message_rate connector=%s client=%s source=%s limit=%u/min tokens=%.2f",
		log_quote(q, sizeof(q), c->rc->name), c->peer,
		c->rc->message_rate_source == RATE_SOURCE_ALL ? "all"
		: c->smtp.authenticated && c->rc->message_rate_source == RATE_SOURCE_USER ? "user"
		: "ip", rate, left);
	return false;
}

static void maybe_free(struct wctx *w, struct conn *c)
{
	if (!c->closing || c->inflight)
		return;
	if (!c->rc) {
		/* Never became a session: its PROXY header did not come. */
		close(c->fd);
		free(c->in);
		conf_unref(c->conf);
		conn_release(w->conns, c);
		return;
	}
	char q[160];
	log_msg(LOG_INFO,
		"event=disconnect client=%s connector=%s messages=%llu rejects=%llu duration_ms=%llu worker=%u",
		c->peer, log_quote(q, sizeof(q), c->rc->name),
		(unsigned long long)c->smtp.messages, (unsigned long long)c->smtp.rejects,
		(unsigned long long)(w->now_ms - c->started_ms), w->id);
	metric_add(&w->m->conn[c->rc->stats_id].active, (uint64_t)-1);
	throttle_disconnect(w->throttle, c->rc, c->th_source);
	if (c->recv_starved)
		w->buf_waiters--;
	if (c->smsg)
		spool_msg_release(w->spool, c->smsg);
	content_scan_free(c->scan);
	smtp_server_free(&c->smtp);
	tls_free(c->tls);
	tls_free(c->tls_next);
	close(c->fd);
	free(c->in);
	conf_unref(c->conf);
	conn_release(w->conns, c);
}

void session_close(struct wctx *w, struct conn *c)
{
	if (!c->closing) {
		c->closing = true;
		/* Wakes every operation still pending on the socket. */
		shutdown(c->fd, SHUT_RDWR);
		if (c->recv_armed)
			io_cancel(w->io, conn_tag(IO_OP_RECV, c));
	}
	maybe_free(w, c);
}

static void tls_failed(struct wctx *w, struct conn *c, const char *stage, const char *why);

/* Under TLS: sends the ciphertext that is pending, one send at a time. */
static void tls_flush(struct wctx *w, struct conn *c)
{
	if (c->sending || c->closing)
		return;
	const char *p;
	size_t n = tls_output(c->tls, &p);
	if (!n)
		return;
	c->sending = true;
	c->sent = 0;
	c->tx = p;
	c->tx_len = n;
	c->inflight++;
	io_send(w->io, c->fd, p, n, conn_tag(IO_OP_SEND, c));
}

static void send_out(struct wctx *w, struct conn *c)
{
	if (c->rc->protocol_log)
		log_replies(c);
	if (c->tls) {
		/* The replies become ciphertext at once; the send of that
		 * keeps the session busy as a plaintext send would. */
		bool ok = tls_write(c->tls, c->smtp.out.p, c->smtp.out.len);
		smtp_server_sent(&c->smtp);
		if (!ok) {
			tls_failed(w, c, "write", NULL);
			return;
		}
		tls_flush(w, c);
		return;
	}
	c->sending = true;
	c->sent = 0;
	c->inflight++;
	io_send(w->io, c->fd, c->smtp.out.p, c->smtp.out.len, conn_tag(IO_OP_SEND, c));
}

/* Exchange's tarpit: 5xx replies to clients without relay rights wait
 * tarpit_interval, which slows down address harvesting and spam runs. */
static bool tarpit_due(const struct conn *c)
{
	const struct rconn *rc = c->rc;
	if (!rc->tarpit_interval_ms)
		return false;
	/* A refused AUTH always waits (password guessing), whatever the
	 * connector's rights; other refusals only without relay rights. The
	 * 421 that ends a session for its errors always waits too, and
	 * nothing is read meanwhile: a client that loops on junk (NOOPs
	 * pipelined without end, 1 MiB lines) and connects again at once
	 * had Postern set up and close ten thousand sessions a second. */
	if (smtp_server_ended_for_errors(&c->smtp))
		return true;
	bool trusted = (rc->perms & (PERM_ANONYMOUS_RELAY | PERM_EXTERNALLY_SECURED)) != 0;
	const char *p = c->smtp.out.p, *end = p + c->smtp.out.len;
	for (; p < end; p = memchr(p, '\n', (size_t)(end - p)) + 1) {
		if (*p == '5' && (!trusted || (end - p >= 4 && memcmp(p, "535 ", 4) == 0)))
			return true;
		if (!memchr(p, '\n', (size_t)(end - p)))
			break;
	}
	return false;
}

static void flush_out(struct wctx *w, struct conn *c)
{
	if (c->sending || c->closing || c->smtp.out.len == 0)
		return;
	if (!tarpit_due(c)) {
		send_out(w, c);
		return;
	}
	/* Hold the replies (sending keeps the session from adding to them). */
	c->sending = true;
	c->inflight++;
	io_timeout(w->io, c->rc->tarpit_interval_ms, conn_tag(IO_OP_TARPIT, c));
}

void session_on_tarpit(struct wctx *w, struct conn *c)
{
	c->inflight--;
	c->sending = false;
	if (c->closing) {
		maybe_free(w, c);
		return;
	}
	send_out(w, c);
}

static void message_begin(struct wctx *w, struct conn *c)
{
	char hdr[2048];
	uint64_t id = wctx_next_msgid(w);
	wctx_msgid_text(id, c->msgid);
	c->msg_err = 0;
	c->msg_size = 0;
	header_value_init(&c->message_id, "Message-ID");
	c->arrival = (int64_t)time(NULL);
	c->smsg = spool_msg_begin(w->spool, id, &c->msg_err);
	if (c->smsg)
		c->smsg->owner = c;
	size_t n = smtp_server_begin_message(&c->smtp, c->msgid, c->arrival, hdr,
					     sizeof(hdr));
	message_append(w, c, hdr, n, -1);
	/* Content rules see the client's bytes only, not our Received:;
	 * externally secured connectors bypass them (B.2). */
	content_scan_free(c->scan);
	c->scan = NULL;
	c->scan_lost = false;
	if (c->conf->content.n && !(c->rc->perms & PERM_EXTERNALLY_SECURED)) {
		c->scan = content_scan_begin(&c->conf->content, w->content);
		c->scan_lost = !c->scan;
	}
}

/* Message bytes from the client: to the spool as they are, and through
 * the content rules' scan on the way. stuffed: DATA's wire form. */
static void message_data(struct wctx *w, struct conn *c, const char *p, size_t n, int bid,
			 bool stuffed)
{
	if (c->scan)
		content_scan_data(c->scan, p, n, stuffed);
	message_append(w, c, p, n, bid);
}

static void message_append(struct wctx *w, struct conn *c, const char *p, size_t n,
			   int bid)
{
	c->msg_size += n;
	if (c->smsg && spool_msg_append(w->spool, c->smsg, p, n, bid) && bid >= 0)
		wctx_buf_hold(w, bid);
}

static void message_abandon(struct wctx *w, struct conn *c)
{
	if (c->smsg)
		spool_msg_release(w->spool, c->smsg);
	c->smsg = NULL;
	content_scan_free(c->scan);
	c->scan = NULL;
}

static bool storage_full(int err)
{
	return err == ENOSPC || err == EDQUOT;
}

static void message_end(struct wctx *w, struct conn *c)
{
	int err = c->smsg ? c->smsg->err : (c->msg_err ? c->msg_err : EIO);
	if (err) {
		log_msg(LOG_ERROR, "event=store_error id=%s client=%s error=\"%s\"",
			c->msgid, c->peer, strerror(err));
		message_abandon(w, c);
		smtp_server_stored(&c->smtp, false, storage_full(err));
		return;
	}
	if (!content_verdict(w, c))
		return;
	if (!spool_msg_commit_envelope(w->spool, c->smsg, c->msgid, &c->smtp.env, c->rc->name,
				       c->peer, c->smtp.helo, c->arrival)) {
		message_abandon(w, c);
		smtp_server_stored(&c->smtp, false, false);
		return;
	}
	c->storing = true;
	c->data_end_us = wctx_clock_us();
	/* Usually the writes are still in flight; when they are done the
	 * message joins the next group commit (session_on_written). */
	if (spool_msg_written(c->smsg))
		session_on_written(w, c->smsg);
}

struct rule_hit_ctx {
	struct wctx *w;
	struct conn *c;
};

/* Every hit is counted and logged, whichever action wins. */
static void on_rule_hit(void *arg, const struct content_rule *r, enum content_where where)
{
	struct rule_hit_ctx *h = arg;
	content_hit_note(h->w->m, h->w->id, h->c->msgid, h->c->peer, r, where);
}

/* At the end of data, before the envelope is committed: the rules'
 * verdict. false when the message is refused (reply queued). Marks for
 * hold, route and added header fields go into the envelope. */
static bool content_verdict(struct wctx *w, struct conn *c)
{
	if (!c->scan && !c->scan_lost)
		return true;
	struct content_verdict v = {.failed = true};
	const char *why = "out of memory";
	if (c->scan) {
		struct smtp_envelope *e = &c->smtp.env;
		struct rule_hit_ctx h = {w, c};
		content_scan_end(c->scan, e->from ? e->from : "", e->rcpt, e->nrcpt, &v,
				 on_rule_hit, &h);
		if (v.failed)
			why = "scan failed";
		else if (!v.reject && !content_mark(&c->conf->content, c->scan, &v, e))
			v.failed = true;
	}
	if (v.failed) {
		/* Unjudged mail is not let through: the client retries. */
		log_msg(LOG_ERROR, "event=content_error id=%s client=%s error=\"%s\"", c->msgid,
			c->peer, why);
		message_abandon(w, c);  /* frees the scan */
		smtp_server_stored(&c->smtp, false, false);
		return false;
	}
	if (v.reject) {
		char reply[160];
		snprintf(reply, sizeof(reply), "550 5.7.1 Message rejected by content rule %s",
			 v.reject->name);
		message_abandon(w, c);
		smtp_server_refuse_message(&c->smtp, reply);
		return false;
	}
	content_scan_free(c->scan);
	c->scan = NULL;
	return true;
}

static void log_received(struct wctx *w, struct conn *c)
{
	char q1[160], q2[600], q3[1400], q4[200];
	const struct smtp_envelope *e = &c->smtp.env;
	char from[300], to[1024] = "", reply[120];
	snprintf(from, sizeof(from), "<%s>", e->from);
	size_t tl = 0;
	for (unsigned i = 0; i < e->nrcpt && tl + 4 < sizeof(to); i++) {
		int k = snprintf(to + tl, sizeof(to) - tl, "%s<%s>", i ? "," : "", e->rcpt[i].addr);
		if (k < 0 || (tl += (size_t)k) >= sizeof(to))
			break; /* full: snprintf cut it short */
	}
	snprintf(reply, sizeof(reply), "250 2.6.0 <%s> Queued mail for delivery", c->msgid);
	char tls[120] = "", au[SMTP_AUTH_NAME_MAX * 2 + 16] = "", qa[SMTP_AUTH_NAME_MAX * 2 + 8];
	if (c->tls)
		snprintf(tls, sizeof(tls), " tls=%s cipher=%s", tls_version(c->tls),
			 tls_cipher(c->tls));
	if (c->smtp.authenticated)
		snprintf(au, sizeof(au), " auth=%s", log_quote(qa, sizeof(qa), c->smtp.auth_user));
	char marks[200];
	content_marks_log(marks, sizeof(marks), e->held, e->route);
	/* The Message-ID header (capped), for track message_id=. */
	char mid[HEADER_VALUE_MAX + 1], qm[LOG_QUOTE_CAP(HEADER_VALUE_MAX) + 16] = "";
	if (header_value_get(&c->message_id, mid, sizeof(mid))) {
		memcpy(qm, " message_id=", 12);
		log_quote(qm + 12, sizeof(qm) - 12, mid);
	}
	log_msg(LOG_INFO,
		"event=receive id=%s from=%s to=%s nrcpt=%u connector=%s client=%s size=%llu%s%s%s%s reply=%s worker=%u",
		c->msgid, log_quote(q2, sizeof(q2), from), log_quote(q3, sizeof(q3), to),
		e->nrcpt, log_quote(q1, sizeof(q1), c->rc->name), c->peer,
		(unsigned long long)c->msg_size, tls, au, marks, qm, log_quote(q4, sizeof(q4), reply),
		w->id);
}

/* Feeds input to the state machine until it needs more, must wait (send or
 * store in progress) or ends the session. bid >= 0: in lies in that
 * provided buffer, and message bytes are written to the spool from it. */
static size_t feed(struct wctx *w, struct conn *c, const char *in, size_t len,
		   int bid)
{
	size_t used = 0;
	for (;;) {
		if (slice_spent(w, c)) {
			defer(w, c);
			return used;
		}
		struct smtp_event ev;
		used += smtp_server_feed(&c->smtp, in + used, len - used, &ev);
		switch (ev.type) {
		case SMTP_EV_DATA_BEGIN:
			message_begin(w, c);
			break;
		case SMTP_EV_DATA_CHUNK:
			/* WIRE (DATA, dot-stuffed) and RAW (BDAT, as sent) bytes
			 * lie in the input and are scanned as such; STUFFING is
			 * the state machine's own (the stored form's dots and a
			 * last CRLF), copied, and not content. */
			if (ev.form == SMTP_CHUNK_STUFFING) {
				message_append(w, c, ev.data, ev.len, -1);
			} else {
				if (!c->message_id.done)
					header_value_feed(&c->message_id, ev.data, ev.len);
				message_data(w, c, ev.data, ev.len, bid,
					     ev.form == SMTP_CHUNK_WIRE);
			}
			break;
		case SMTP_EV_DATA_REJECT:
			message_abandon(w, c);
			break;
		case SMTP_EV_DATA_END:
			message_end(w, c);
			break;
		case SMTP_EV_CLOSE:
			c->close_after_send = true;
			return used;
		case SMTP_EV_AUTH:
			auth_start(w, c);
			return used;
		case SMTP_EV_STARTTLS:
			/* RFC 3207 (CVE-2011-0411): whatever followed the
			 * STARTTLS line in this read is dropped, never run. */
			c->tls_starting = true;
			return len;
		case SMTP_EV_NEED_INPUT:
		case SMTP_EV_FLUSH:
		case SMTP_EV_WAIT:
			return used;
		}
	}
}

static bool in_append(struct conn *c, const char *p, size_t n);

/* Runs the session over what it has received: the buffered input, then
 * direct (a fresh provided buffer) when given. */
static void process_input(struct wctx *w, struct conn *c, const char *direct,
			  size_t dlen, int bid)
{
	/* During the TLS handshake there is no SMTP to run. */
	bool busy = c->closing || c->sending || c->tls_starting ||
		    (c->tls && !tls_established(c->tls));
	if (direct && (busy || c->in_len > c->in_off)) {
		/* Something is queued ahead: keep order, take a copy. */
		if (!in_append(c, direct, dlen)) {
			session_close(w, c);
			return;
		}
		direct = NULL;
	}
	if (busy)
		return;
	if (c->store_result != STORE_NONE) {
		smtp_server_stored(&c->smtp, c->store_result == STORE_OK,
				   c->store_result == STORE_FULL);
		c->store_result = STORE_NONE;
	}
	if ((w->stopping || w->draining) && !c->drained) {
		c->drained = true;
		smtp_server_drain(&c->smtp);
	}
	if (direct) {
		size_t used = feed(w, c, direct, dlen, bid);
		if (used < dlen && !in_append(c, direct + used, dlen - used)) {
			session_close(w, c);
			return;
		}
	} else {
		c->in_off += feed(w, c, c->in ? c->in + c->in_off : "", c->in_len - c->in_off, -1);
	}
	size_t left = c->in_len - c->in_off;
	if (left == 0) {
		c->in_off = c->in_len = 0;
		if (c->in_cap > IN_MIN_CAP) {
			/* An idle connection keeps no input buffer. */
			free(c->in);
			c->in = NULL;
			c->in_cap = 0;
		}
	} else if (c->in_off > c->in_cap / 2) {
		memmove(c->in, c->in + c->in_off, left);
		c->in_off = 0;
		c->in_len = left;
	}
	if (c->smtp.out.len) {
		flush_out(w, c);
		return;
	}
	if (c->close_after_send || (c->read_eof && !c->storing && !c->runnable)) {
		session_close(w, c);
		return;
	}
	if (c->recv_paused && left < IN_PAUSE / 2)
		arm_recv(w, c);
}

static bool in_append(struct conn *c, const char *p, size_t n)
{
	if (c->in_len + n > c->in_cap) {
		size_t cap = c->in_cap ? c->in_cap : IN_MIN_CAP;
		while (cap < c->in_len + n)
			cap *= 2;
		char *b = realloc(c->in, cap);
		if (!b)
			return false;
		c->in = b;
		c->in_cap = cap;
	}
	memcpy(c->in + c->in_len, p, n);
	c->in_len += n;
	return true;
}

/* proto hook at STARTTLS: the TLS state is made now, so that a failure
 * can still be answered 454 in plaintext. */
static bool on_starttls(void *ctx)
{
	struct conn *c = ctx;
	if (!c->tls_next)
		c->tls_next = tls_server_start(c->rc->tls);
	return c->tls_next != NULL;
}

/* why: NULL for the TLS library's own reason. */
static void tls_failed(struct wctx *w, struct conn *c, const char *stage, const char *why)
{
	char q[160], r[300];
	bool hs = !tls_established(c->tls);
	if (hs)
		metric_add(&w->m->conn[c->rc->stats_id].tls_failed, 1);
	log_msg(LOG_INFO, "event=tls client=%s connector=%s result=failed stage=%s reason=%s worker=%u",
		c->peer, log_quote(q, sizeof(q), c->rc->name), hs ? "handshake" : stage,
		log_quote(r, sizeof(r), why ? why : tls_error(c->tls)),
		w->id);
	/* The alert that says why, best effort, when no send is in flight. */
	const char *p;
	size_t n = c->sending ? 0 : tls_output(c->tls, &p);
	if (n)
		(void)io_try_send(w->io, c->fd, p, n);
	session_close(w, c);
}

static void tls_established_now(struct wctx *w, struct conn *c)
{
	char q[160], peer[128] = "", qp[300];
	bool cert = tls_peer_verified(c->tls);
	tls_peer_name(c->tls, peer, sizeof(peer));
	metric_add(&w->m->conn[c->rc->stats_id].tls_ok, 1);
	log_msg(LOG_INFO,
		"event=tls client=%s connector=%s result=ok tls=%s cipher=%s resumed=%s client_cert=%s%s%s worker=%u",
		c->peer, log_quote(q, sizeof(q), c->rc->name), tls_version(c->tls),
		tls_cipher(c->tls), tls_resumed(c->tls) ? "yes" : "no",
		cert ? "verified" : peer[0] ? "unverified" : "none", peer[0] ? " client_cn=" : "",
		peer[0] ? log_quote(qp, sizeof(qp), peer) : "", w->id);
	smtp_server_tls_started(&c->smtp, tls_version(c->tls), tls_cipher(c->tls), cert);
}

/* Ciphertext from the client (p may be NULL: only drive what is buffered):
 * the handshake, then the plaintext to the session. */
static void tls_recv(struct wctx *w, struct conn *c, const char *p, size_t n)
{
	if (n && !tls_input(c->tls, p, n)) {
		session_close(w, c);
		return;
	}
	if (!tls_established(c->tls)) {
		enum tls_result r = tls_handshake(c->tls);
		if (r == TLS_FAILED) {
			tls_failed(w, c, "handshake", NULL);
			return;
		}
		if (r == TLS_AGAIN && c->read_eof) {
			tls_failed(w, c, "handshake", "connection closed by the client");
			return;
		}
		if (r == TLS_AGAIN) {
			tls_flush(w, c);
			return;
		}
		tls_established_now(w, c);
	}
	for (;;) {
		char plain[16384];
		long k = tls_read(c->tls, plain, sizeof(plain));
		if (k > 0) {
			process_input(w, c, plain, (size_t)k, -1);
			if (c->closing)
				return;
			continue;
		}
		if (k == TLS_AGAIN)
			break;
		if (k == TLS_EOF) {
			/* close_notify: like a plaintext EOF */
			c->read_eof = true;
			process(w, c);
			break;
		}
		tls_failed(w, c, "read", NULL);
		return;
	}
	if (!c->closing && !c->smtp.out.len)
		tls_flush(w, c);
}

/* ---- AUTH ---------------------------------------------------------------- */

static const char *const mech_names[] = {"PLAIN", "LOGIN"};

static void auth_log(struct wctx *w, struct conn *c, enum auth_result res, uint64_t cost_us)
{
	char q[160], qu[600];
	metric_add(&w->m->conn[c->rc->stats_id].auth[res], 1);
	log_msg(res == AUTH_RESULT_OK ? LOG_INFO : LOG_WARN,
		"event=auth client=%s connector=%s user=%s mechanism=%s result=%s failures=%u cost_ms=%.1f worker=%u",
		c->peer, log_quote(q, sizeof(q), c->rc->name),
		log_quote(qu, sizeof(qu), c->auth_name), mech_names[c->smtp.auth_step ? 1 : 0],
		auth_result_names[res], c->smtp.auth_failures + (res == AUTH_RESULT_FAILED),
		(double)cost_us / 1000.0, w->id);
}

/* The state machine's answer, and what it changes for the session. */
static void auth_done(struct wctx *w, struct conn *c, bool ok, bool temp, uint64_t cost_us)
{
	auth_log(w, c, ok ? AUTH_RESULT_OK : temp ? AUTH_RESULT_TEMPORARY : AUTH_RESULT_FAILED,
		 cost_us);
	smtp_server_auth_result(&c->smtp, ok, temp);
	/* message_rate_source = "user": from now on this user's bucket. */
	if (ok && c->th_rate && c->rc->message_rate_source == RATE_SOURCE_USER) {
		char key[SMTP_AUTH_NAME_MAX + 8];
		snprintf(key, sizeof(key), "user:%s", c->smtp.auth_user);
		struct throttle_entry *e = throttle_entry(w->throttle, c->rc->stats_id, key);
		if (e)
			c->th_rate = e;
	}
}

/* SMTP_EV_AUTH: the check goes to a verifier thread (crypt is slow by
 * design); an unknown name is checked against a decoy of the same cost.
 * The session waits in SMTP_S_AUTH_CHECK. */
static void auth_start(struct wctx *w, struct conn *c)
{
	snprintf(c->auth_name, sizeof(c->auth_name), "%s", c->smtp.auth_user);
	const char *hash = auth_users_hash(c->rc->users, c->smtp.auth_user);
	struct auth_req *r = w->authd ? calloc(1, sizeof(*r)) : NULL;
	if (!r) {
		auth_wipe(c->smtp.auth_pass, sizeof(c->smtp.auth_pass));
		auth_done(w, c, false, true, 0);
		return;
	}
	r->known = hash != NULL;
	snprintf(r->hash, sizeof(r->hash), "%s", hash ? hash : auth_decoy_hash());
	memcpy(r->pass, c->smtp.auth_pass, sizeof(r->pass));
	auth_wipe(c->smtp.auth_pass, sizeof(c->smtp.auth_pass));
	r->reply_to = &w->auth_done;
	r->wake = w->io;
	r->tag = conn_tag(IO_OP_RECV, c);
	if (!authd_submit(w->authd, r)) {
		auth_wipe(r->pass, sizeof(r->pass));
		free(r);
		auth_done(w, c, false, true, 0); /* 454: the verifiers are saturated */
	}
}

void session_auth_results(struct wctx *w)
{
	for (struct mailbox_node *n = mailbox_take(&w->auth_done), *next; n; n = next) {
		next = n->next;
		struct auth_req *r = (struct auth_req *)n;
		struct conn *c = conn_lookup(w->conns, (uint32_t)(r->tag >> 32) & 0xffffff,
					     (uint32_t)r->tag);
		if (c && !c->closing && c->smtp.state == SMTP_S_AUTH_CHECK) {
			hold(c);
			auth_done(w, c, r->ok, false, r->cost_us);
			process(w, c);
			release(w, c);
		}
		free(r);
	}
}

void session_auth_discard(struct wctx *w)
{
	for (struct mailbox_node *n = mailbox_take(&w->auth_done), *next; n; n = next) {
		next = n->next;
		free(n);
	}
}

/* Completion handlers hold the connection while they run: processing may
 * close it, and it must not be freed under their feet. */
static void hold(struct conn *c)
{
	c->inflight++;
}

static void release(struct wctx *w, struct conn *c)
{
	c->inflight--;
	maybe_free(w, c);
}

static void on_recv(struct wctx *w, struct conn *c, int res, int bid)
{
	if (c->closing)
		return;
	if (c->proxy_wait) {
		if (res > 0 || res == 0) {
			c->read_eof = res == 0;
			proxy_input(w, c, res > 0 ? io_buf(w->io, (unsigned)bid) : NULL,
				    res > 0 ? (size_t)res : 0);
		} else if (res == -ENOBUFS) {
			if (!c->recv_starved) {
				c->recv_starved = true;
				w->buf_waiters++;
			}
			return;
		} else {
			session_close(w, c);
		}
		if (!c->closing && !c->recv_armed && c->proxy_wait)
			arm_recv(w, c);
		return;
	}
	if (res > 0) {
		c->active_ms = w->now_ms;
		if (c->tls)
			tls_recv(w, c, io_buf(w->io, (unsigned)bid), (size_t)res);
		else
			process_input(w, c, io_buf(w->io, (unsigned)bid), (size_t)res, bid);
	} else if (res == 0) {
		c->read_eof = true;
		if (c->tls && !tls_established(c->tls))
			tls_recv(w, c, NULL, 0); /* fails: the handshake cannot end */
		else
			process(w, c);
	} else if (res == -ENOBUFS) {
		/* Every receive buffer is held by spool writes in flight: wait for
		 * one to come back (wctx_buf_put) instead of spinning. */
		if (!c->recv_starved) {
			c->recv_starved = true;
			w->buf_waiters++;
		}
		return;
	} else if (res == -ECANCELED) {
		process(w, c);
	} else {
		session_close(w, c);
		return;
	}
	if (c->closing)
		return;
	recv_pace(w, c, res);
	if (discard_pace(w, c, res))
		return;
	if (c->in_len - c->in_off >= IN_PAUSE) {
		/* A single recv ends by itself; a multishot one is cancelled. */
		if (!c->recv_paused) {
			c->recv_paused = true;
			if (c->recv_armed && c->recv_multishot)
				io_cancel(w->io, conn_tag(IO_OP_RECV, c));
		}
		return;
	}
	if (!c->recv_armed && !c->recv_paused)
		arm_recv(w, c);
}

void session_on_recv(struct wctx *w, struct conn *c, int res, bool more, int bid)
{
	hold(c);
	if (!more) {
		c->recv_armed = false;
		c->inflight--;
	}
	if (bid >= 0)
		wctx_buf_hold(w, bid);
	on_recv(w, c, res, bid);
	if (bid >= 0)
		wctx_buf_put(w, bid);
	release(w, c);
}

void session_on_send(struct wctx *w, struct conn *c, int res)
{
	/* The send's own reference becomes the handler's hold. */
	if (c->closing || res <= 0) {
		if (!c->closing)
			session_close(w, c);
		release(w, c);
		return;
	}
	c->sent += (size_t)res;
	const char *base = c->tls ? c->tx : c->smtp.out.p;
	size_t total = c->tls ? c->tx_len : c->smtp.out.len;
	if (c->sent < total) {
		io_send(w->io, c->fd, base + c->sent, total - c->sent, conn_tag(IO_OP_SEND, c));
		return;
	}
	c->sending = false;
	if (c->tls) {
		tls_output_done(c->tls, total);
		tls_flush(w, c);
		if (c->sending) {
			release(w, c);
			return;
		}
	} else {
		smtp_server_sent(&c->smtp);
	}
	if (c->tls_starting) {
		/* The 220 is out: from here on every byte is TLS. */
		c->tls_starting = false;
		c->tls = c->tls_next;
		c->tls_next = NULL;
		size_t left = c->in_len - c->in_off;
		c->in_off = c->in_len = 0;
		if (left && !tls_input(c->tls, c->in, left)) {
			session_close(w, c);
			release(w, c);
			return;
		}
		tls_recv(w, c, NULL, 0);
		release(w, c);
		return;
	}
	process(w, c);
	release(w, c);
}

void session_on_written(struct wctx *w, struct spool_msg *m)
{
	struct conn *c = m->owner;
	if (!c->storing)
		return;
	int err = spool_msg_error(c->smsg);
	if (err) {
		log_msg(LOG_ERROR, "event=store_error id=%s client=%s error=\"%s\"",
			c->msgid, c->peer, strerror(err));
		message_abandon(w, c);
		c->storing = false;
		c->store_result = storage_full(err) ? STORE_FULL : STORE_FAILED;
		hold(c);
		process(w, c);
		release(w, c);
		return;
	}
	/* The group commit holds the connection until it answers. */
	c->inflight++;
	if (!spool_commit_add(w->spool, c->smsg))
		session_on_durable(w, c->smsg, false);
}

void session_buffers_returned(struct wctx *w)
{
	struct conn_table *t = w->conns;
	for (uint32_t i = 0; i < t->high_water && w->buf_waiters; i++) {
		struct conn *c = t->slots[i];
		if (!c || !c->recv_starved)
			continue;
		w->buf_waiters--;
		c->recv_starved = false;
		if (!c->closing && !c->recv_paused)
			arm_recv(w, c);
	}
}

void session_on_durable(struct wctx *w, struct spool_msg *m, bool ok)
{
	struct conn *c = m->owner;
	/* Takes over the reference the group commit held. */
	c->storing = false;
	if (ok) {
		struct connector_counters *cc = &w->m->conn[c->rc->stats_id];
		metric_add(&cc->messages, 1);
		metric_add(&cc->bytes, c->msg_size);
		metric_latency(&w->m->latency, wctx_clock_us() - c->data_end_us);
		log_received(w, c);
		queue_add_received(w->queue, c->smsg, &c->smtp.env, c->peer, c->rc->name,
				   c->arrival);
	}
	message_abandon(w, c); /* durable now, or failed: the session is done with it */
	c->store_result = ok ? STORE_OK : STORE_FAILED;
	if (!c->closing)
		process(w, c);
	release(w, c);
}

void session_tick(struct wctx *w, struct conn *c)
{
	if (c->closing)
		return;
	if (c->proxy_wait) {
		if (w->stopping || w->draining) {
			session_close(w, c);
		} else if (w->now_ms - c->started_ms >= PROXY_HEADER_MS) {
			proxy_reject(w, c->conf, c->binding, c->proxy_peer, "timeout", NULL);
			session_close(w, c);
		}
		return;
	}
	if (w->stopping || w->draining) {
		if (w->now_ms >= w->stop_deadline_ms) {
			session_close(w, c);
			return;
		}
		if (!c->tls || tls_established(c->tls))
			process(w, c);
		return;
	}
	if (c->storing)
		return; /* waiting on our disk is not the client's fault */
	const struct rconn *rc = c->rc;
	bool idle = rc->connection_inactivity_timeout_ms &&
		    w->now_ms - c->active_ms >= rc->connection_inactivity_timeout_ms;
	bool old = rc->connection_timeout_ms &&
		   w->now_ms - c->started_ms >= rc->connection_timeout_ms;
	if (!idle && !old)
		return;
	log_msg(LOG_INFO, "event=timeout client=%s kind=%s", c->peer,
		idle ? "inactivity" : "connection");
	if (c->tls && !tls_established(c->tls)) {
		tls_failed(w, c, "handshake", "timed out");
		return;
	}
	if (c->sending) {
		session_close(w, c); /* the client does not even read */
		return;
	}
	smtp_server_abort(&c->smtp, R_TIMEOUT);
	c->close_after_send = true;
	flush_out(w, c);
}
