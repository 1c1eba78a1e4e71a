/* libFuzzer target for the SMTP client state machine (proto/smtp_client.c):
 * arbitrary bytes as the server's replies, the machine driven the way the
 * engine drives it (start a message on READY, QUIT when none is left). The
 * first bytes pick the messages, the chunking, whether sends are
 * acknowledged late, and a fail() or quit() half way. Checks: bounded
 * consumption, no send while one is outstanding, well-formed commands,
 * complete results at MSG_DONE, a MSG_DONE for every message started, and a
 * dead machine after CLOSE, a BDAT chunk only for a dotless message. With credentials (picked by the first bytes
 * too): AUTH only after EHLO, its responses base64 lines, the secret
 * never in clear on the wire, never outside TLS when TLS was asked for
 * them, no MAIL before a 2xx to AUTH, and an AUTH failure always a 4xx.
 * Timeouts are the parameters' (or the defaults), and a next hop that
 * greets with our name (helo_name picked to match "mx.example" sometimes)
 * gets nothing more: the session ends with a 451 4.4.6. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_client.h"

#define MAX_RCPT 5

struct ctx {
	struct smtp_client c;
	struct smtp_client_msg msg;
	struct smtp_client_rcpt rcpt[MAX_RCPT];
	struct smtp_client_result res[MAX_RCPT];
	/* the message queued behind a body (smtp_client_start_next) */
	struct smtp_client_msg msg2;
	struct smtp_client_result res2[MAX_RCPT];
	bool next_behind, next_queued, on_res2;
	bool next_dropped;            /* CLOSE must follow */
	unsigned messages_left;
	bool in_msg, outstanding, late_ack, closed, quit_called;
	bool tls_done;                /* STARTTLS reported once */
};

#define SECRET "s3cret-fuzz"

static const char *const verbs[] = {"EHLO ", "HELO ", "MAIL FROM:<", "RCPT TO:<",
				    "DATA\r", "RSET\r", "QUIT\r", ".\r", "STARTTLS\r",
				    "AUTH ", "BDAT "};

/* A response to an AUTH challenge: base64, or empty. */
static bool is_b64_line(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char ch = p[i];
		if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
		      (ch >= '0' && ch <= '9') || ch == '+' || ch == '/' || ch == '='))
			return false;
	}
	return true;
}

/* Lines end in CRLF, carry no other CR or LF and start with a verb (or
 * answer an AUTH challenge). */
static void check_commands(const struct smtp_client *c, const char *p, size_t n)
{
	if (!p || n < 2 || p[n - 2] != '\r' || p[n - 1] != '\n')
		abort();
	size_t i = 0;
	while (i < n) {
		const char *lf = memchr(p + i, '\n', n - i);
		size_t end = (size_t)(lf - p);
		if (end == i || p[end - 1] != '\r' || memchr(p + i, '\r', end - 1 - i))
			abort();
		bool known = false;
		for (size_t k = 0; k < sizeof(verbs) / sizeof(verbs[0]); k++)
			if (end + 1 - i >= strlen(verbs[k]) &&
			    memcmp(p + i, verbs[k], strlen(verbs[k])) == 0)
				known = true;
		bool auth = end + 1 - i >= 5 && memcmp(p + i, "AUTH ", 5) == 0;
		if (auth && (c->p.auth == SMTPC_AUTH_NONE || !c->esmtp ||
			     (c->p.auth_needs_tls && smtp_client_tls_state(c) != SMTPC_TLSST_ACTIVE)))
			abort();
		if (!known && !(c->auth_state == SMTPC_AUTHST_SENT && is_b64_line(p + i, end - 1 - i)))
			abort();
		if (memmem(p + i, end - i, SECRET, strlen(SECRET)))
			abort(); /* never in clear */
		i = end + 1;
	}
}

static void check_result(const struct smtp_client_result *r)
{
	if (r->code < 200 || r->code > 599 || r->code / 100 == 3)
		abort();
	if (r->stage == SMTPC_STAGE_RCPT && r->code / 100 == 2)
		abort(); /* provisional acceptance left behind */
	if ((unsigned)r->stage > SMTPC_STAGE_LOCAL)
		abort();
	if (!memchr(r->status, '\0', sizeof(r->status)) ||
	    !memchr(r->text, '\0', sizeof(r->text)))
		abort();
	if (r->status[0] != '0' + r->code / 100 || r->status[1] != '.')
		abort();
	for (const char *t = r->text; *t; t++)
		if ((unsigned char)*t < 0x20)
			abort();
}

static void check_timeout(const struct ctx *x)
{
	const struct smtp_client_params *p = &x->c.p;
	uint64_t t = smtp_client_timeout_ms(&x->c);
	uint64_t cmd = p->command_timeout_ms ? p->command_timeout_ms : 300000;
	uint64_t data = p->data_timeout_ms ? p->data_timeout_ms : 600000;
	uint64_t body = data + (p->min_data_rate ? x->msg.size * 1000 / p->min_data_rate : 0);
	if (t != 0 && t != cmd && t != data && t != body)
		abort();
}

static void run(struct ctx *x, const char *in, size_t len)
{
	size_t off = 0;
	for (unsigned iter = 0;; iter++) {
		if (iter > 100000)
			abort(); /* no progress */
		if (x->closed) {
			struct smtp_client_event ev;
			if (smtp_client_feed(&x->c, in + off, len - off, &ev) != 0 ||
			    ev.type != SMTPC_EV_CLOSE)
				abort();
			return;
		}
		struct smtp_client_event ev;
		size_t n = smtp_client_feed(&x->c, in + off, len - off, &ev);
		if (n > len - off)
			abort();
		off += n;
		check_timeout(x);
		switch (ev.type) {
		case SMTPC_EV_SEND:
		case SMTPC_EV_SEND_BODY:
			if (x->outstanding || smtp_client_loop(&x->c))
				abort();
			if (ev.type == SMTPC_EV_SEND)
				check_commands(&x->c, ev.data, ev.len);
			else if (!x->in_msg || (ev.bdat && !x->msg.dotless))
				abort();
			if (ev.type == SMTPC_EV_SEND_BODY && x->next_behind && x->messages_left &&
			    !x->next_queued && smtp_client_start_next(&x->c, &x->msg2, x->res2)) {
				if (ev.bdat)
					abort(); /* never behind a BDAT chunk */
				x->next_queued = true;
				x->messages_left--;
			}
			if (x->late_ack)
				x->outstanding = true;
			else
				smtp_client_sent(&x->c);
			break;
		case SMTPC_EV_NEED_INPUT:
			if (off != len)
				abort();
			return;
		case SMTPC_EV_READY:
			if (off != len || x->in_msg || x->outstanding || x->next_dropped)
				abort();
			if (x->c.p.auth && x->c.auth_state != SMTPC_AUTHST_OK)
				abort(); /* no MAIL before AUTH succeeded */
			if (x->messages_left) {
				x->messages_left--;
				x->in_msg = true;
				x->on_res2 = false;
				smtp_client_start(&x->c, &x->msg, x->res);
			} else if (!x->quit_called) {
				x->quit_called = true;
				smtp_client_quit(&x->c);
			} else {
				return;
			}
			break;
		case SMTPC_EV_MSG_DONE:
			if (!x->in_msg)
				abort();
			for (unsigned i = 0; i < x->msg.nrcpt; i++)
				check_result(x->on_res2 ? &x->res2[i] : &x->res[i]);
			x->in_msg = false;
			if (x->next_queued) {
				/* current now, or dropped with the session */
				x->next_queued = false;
				x->on_res2 = smtp_client_current(&x->c) == &x->msg2;
				x->in_msg = x->on_res2;
				/* dropped only when the session ended */
				x->next_dropped = !x->in_msg;
			}
			break;
		case SMTPC_EV_CLOSE:
			if (x->in_msg)
				abort(); /* a message without MSG_DONE */
			if (x->c.session_error.code)
				check_result(&x->c.session_error);
			if (x->c.p.auth && x->c.session_error.stage == SMTPC_STAGE_AUTH &&
			    x->c.session_error.code / 100 != 4)
				abort(); /* credentials never bounce */
			if (smtp_client_loop(&x->c) && (x->c.session_error.code != 451 ||
							strcmp(x->c.session_error.status, "4.4.6") != 0))
				abort(); /* a loop is deferred */
			x->closed = true;
			break;
		case SMTPC_EV_STARTTLS:
			/* Once per connection, never in a transaction; the rest of
			 * this read is dropped and the handshake "succeeds". */
			if (x->tls_done || x->in_msg || x->c.p.tls == SMTPC_TLS_NONE)
				abort();
			x->tls_done = true;
			if (x->outstanding) {
				x->outstanding = false;
				smtp_client_sent(&x->c);
			}
			smtp_client_tls_started(&x->c);
			run(x, "", 0);
			return;
		default:
			abort();
		}
	}
}

static void ack(struct ctx *x)
{
	if (x->outstanding) {
		x->outstanding = false;
		smtp_client_sent(&x->c);
		run(x, "", 0);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const addrs[MAX_RCPT] = {
		"a@example.com", "b@example.com", "\"q u\"@example.net", "postmaster",
		"d\xc3\xbc@example.de",
	};
	if (size < 6)
		return 0;
	struct ctx *x = calloc(1, sizeof(*x));
	if (!x)
		abort();
	struct smtp_client_params p = {
		.helo_name = data[4] & 0x80 ? "mx.example" : "out.example",
		.command_timeout_ms = data[4] & 0x40 ? 3000 : 0,
		.data_timeout_ms = data[4] & 0x40 ? 20000 : 0,
		.min_data_rate = data[2] & 0x04 ? 1000 : 0,
		.no_pipelining = data[0] & 1,
		.tls = (enum smtp_client_tls)((data[0] >> 4) % 3),
		.auth = (enum smtp_client_auth)((data[1] >> 5) & 3),
		.auth_user = "relay@example.org",
		.auth_secret = SECRET,
		.auth_needs_tls = data[1] & 0x80,
	};
	x->late_ack = data[0] & 2;
	bool fail_midway = data[0] & 4, quit_midway = data[0] & 8;
	size_t chunk = 1 + data[1] % 32;
	x->messages_left = data[2] % 4;
	x->msg.from = data[2] & 0x10 ? "" : "sender@example.org";
	x->msg.size = (uint64_t)data[3] << (data[2] >> 5);
	x->msg.body = (enum smtp_body)(data[4] % 3);
	x->msg.ret = (enum smtp_ret)((data[4] >> 2) % 3);
	x->msg.envid = data[4] & 0x10 ? "ID+2B1" : NULL;
	x->msg.smtputf8 = data[4] & 0x20;
	x->msg.dotless = data[2] & 0x08; /* BDAT LAST to a CHUNKING next hop */
	x->msg.nrcpt = data[5] % (MAX_RCPT + 1);
	for (unsigned i = 0; i < MAX_RCPT; i++) {
		x->rcpt[i].addr = addrs[i];
		x->rcpt[i].notify = (data[5] >> 3) & (i % 2 ? 0xe : 0x1);
		x->rcpt[i].orcpt = i % 2 ? "rfc822;x@example.com" : NULL;
	}
	x->msg.rcpt = x->rcpt;
	x->msg2 = x->msg;
	x->next_behind = data[0] & 0x40;
	data += 6;
	size -= 6;

	char *in = malloc(size ? size : 1);
	if (!in)
		abort();
	memcpy(in, data, size);
	smtp_client_init(&x->c, &p);
	run(x, "", 0);
	for (size_t off = 0; off < size && !x->closed;) {
		size_t n = chunk < size - off ? chunk : size - off;
		if (!(off & 1))
			ack(x);
		run(x, in + off, n);
		ack(x);
		off += n;
		if (fail_midway && off >= size / 2) {
			fail_midway = false;
			bool had = smtp_client_fail(&x->c, 451, "4.4.2", "451 4.4.2 lost");
			if (had != x->in_msg)
				abort();
			if (had)
				for (unsigned i = 0; i < x->msg.nrcpt; i++)
					check_result(x->on_res2 ? &x->res2[i] : &x->res[i]);
			x->in_msg = false;
			x->next_queued = false;
			run(x, "", 0);
			if (!x->closed)
				abort();
		}
		if (quit_midway && off >= size / 2 && !x->closed) {
			quit_midway = false;
			x->messages_left = 0;
			x->quit_called = true;
			smtp_client_quit(&x->c);
			run(x, "", 0);
		}
	}
	smtp_client_free(&x->c);
	free(in);
	free(x);
	return 0;
}
