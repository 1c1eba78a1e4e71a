/* libFuzzer target for the SMTP server session (proto/smtp_server.c):
 * arbitrary bytes through a session driven the way the engine drives it
 * (send on NEED_INPUT/FLUSH/CLOSE, store on DATA_END). The first bytes pick
 * the connector limits, the reply buffer size, the chunking and the storage
 * outcome. Checks: bounded reply buffer, progress, well-formed replies, and
 * no stored message with bare CR/LF or an embedded end marker, whether
 * DATA or BDAT (dot-stuffed by the state machine) brought it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_server.h"

#define OUTCAP_MAX 4096

struct ctx {
	struct smtp_server s;
	size_t outcap;
	char *msg;
	size_t msg_len, msg_cap;
	bool in_data, closed, storing;
	bool store_ok, store_full, defer, cert;
	int auth_answer;
	unsigned msgno;
};

static const char *policy(void *c, const struct smtp_path *rcpt, bool authenticated)
{
	(void)c;
	/* refuse anything outside one domain, as an anonymous connector does */
	if (rcpt->domain.len == 0 ||
	    (rcpt->domain.len == 12 && memcmp(rcpt->domain.p, "corp.example", 12) == 0))
		return NULL;
	return "550 5.7.1 Unable to relay";
}

/* Every line the session sends is "ddd" then ' ' or '-', ends in CRLF and
 * has no other CR or LF. */
static void check_replies(const char *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		const char *lf = memchr(p + i, '\n', n - i);
		if (!lf)
			abort();
		size_t end = (size_t)(lf - p);
		size_t ll = end - i;
		if (ll < 5 || ll > SMTP_REPLY_LINE_MAX || p[end - 1] != '\r')
			abort();
		for (int k = 0; k < 3; k++)
			if (p[i + k] < '0' || p[i + k] > '9')
				abort();
		if (p[i + 3] != ' ' && p[i + 3] != '-')
			abort();
		if (memchr(p + i, '\r', ll - 1))
			abort();
		i = end + 1;
	}
}

static void send_out(struct ctx *c)
{
	if (c->s.out.len > c->outcap)
		abort();
	check_replies(c->s.out.p, c->s.out.len);
	smtp_server_sent(&c->s);
}

static void check_message(const char *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (m[i] == '\n' && (i == 0 || m[i - 1] != '\r'))
			abort();
		if (m[i] == '\r' && (i + 1 == n || m[i + 1] != '\n'))
			abort();
	}
	if (n >= 3 && memcmp(m, ".\r\n", 3) == 0)
		abort();
	for (size_t i = 0; i + 5 <= n; i++)
		if (memcmp(m + i, "\r\n.\r\n", 5) == 0)
			abort();
	if (n && (n < 2 || memcmp(m + n - 2, "\r\n", 2) != 0))
		abort();
}

static void run(struct ctx *c, char *in, size_t *inlen)
{
	for (unsigned iter = 0;; iter++) {
		if (iter > 1000000)
			abort(); /* no progress */
		if (c->closed || c->storing)
			return;
		struct smtp_event ev;
		size_t n = smtp_server_feed(&c->s, in, *inlen, &ev);
		if (n > *inlen)
			abort();
		if (c->s.out.len > c->outcap)
			abort();
		switch (ev.type) {
		case SMTP_EV_DATA_BEGIN: {
			char id[32], hdr[2048];
			snprintf(id, sizeof(id), "ID%u", ++c->msgno);
			if (!smtp_server_begin_message(&c->s, id, 1795442520, hdr, sizeof(hdr)))
				abort();
			c->in_data = true;
			c->msg_len = 0;
			break;
		}
		case SMTP_EV_DATA_CHUNK:
			/* input bytes (DATA's wire form, BDAT's raw octets),
			 * or the state machine's own stuffing for BDAT */
			if (!c->in_data || !ev.len ||
			    (ev.form == SMTP_CHUNK_STUFFING
				     ? (ev.data >= in && ev.data < in + n) ||
					       !(ev.len == 1 ? ev.data[0] == '.'
							     : ev.len == 2 && memcmp(ev.data, "\r\n", 2) == 0)
				     : ev.data < in || ev.data + ev.len > in + n))
				abort();
			if (c->msg_len + ev.len > c->msg_cap) {
				c->msg_cap = (c->msg_len + ev.len) * 2;
				c->msg = realloc(c->msg, c->msg_cap);
				if (!c->msg)
					abort();
			}
			memcpy(c->msg + c->msg_len, ev.data, ev.len);
			c->msg_len += ev.len;
			break;
		case SMTP_EV_DATA_END:
			if (!c->in_data || c->s.env.nrcpt == 0 || !c->s.env.from)
				abort();
			check_message(c->msg, c->msg_len);
			c->in_data = false;
			break;
		case SMTP_EV_DATA_REJECT:
			if (!c->in_data)
				abort();
			c->in_data = false;
			break;
		default:
			break;
		}
		memmove(in, in + n, *inlen - n);
		*inlen -= n;
		switch (ev.type) {
		case SMTP_EV_NEED_INPUT:
		case SMTP_EV_WAIT:
			send_out(c);
			return;
		case SMTP_EV_FLUSH:
			send_out(c);
			break;
		case SMTP_EV_DATA_END:
			if (c->defer) {
				c->storing = true;
				send_out(c);
				return;
			}
			smtp_server_stored(&c->s, c->store_ok, c->store_full);
			break;
		case SMTP_EV_CLOSE:
			send_out(c);
			c->closed = true;
			return;
		case SMTP_EV_AUTH:
			if (c->s.state != SMTP_S_AUTH_CHECK || c->s.authenticated)
				abort();
			smtp_server_auth_result(&c->s, c->auth_answer == 0, c->auth_answer == 2);
			if (c->s.auth_pass[0])
				abort(); /* the password outlives its check */
			if (c->s.state == SMTP_S_CLOSING) {
				send_out(c);
				c->closed = true;
				return;
			}
			break;
		case SMTP_EV_STARTTLS:
			/* The 220 is the last reply; the rest of the read is
			 * dropped, then the "handshake" completes. */
			if (c->s.out.len < 29 ||
			    memcmp(c->s.out.p + c->s.out.len - 29, "220 2.0.0 SMTP server ready\r\n", 29) != 0)
				abort();
			*inlen = 0;
			send_out(c);
			if (c->s.tls)
				abort(); /* STARTTLS twice */
			smtp_server_tls_started(&c->s, "TLSv1.3", "TLS_AES_128_GCM_SHA256", c->cert);
			if (c->s.state != SMTP_S_GREETED || c->s.env.from)
				abort();
			return;
		default:
			break;
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 8)
		return 0;
	struct smtp_server_params p;
	memset(&p, 0, sizeof(p));
	p.hostname = "relay.corp.example";
	p.connector = "Fuzz (\"connector\")";
	p.max_message_size = data[0] & 0x80 ? (uint64_t)(data[0] & 0x7f) * 8 : 0;
	p.max_header_size = data[1] & 0x80 ? (uint64_t)(data[1] & 0x7f) * 4 : 0;
	p.max_recipients = data[2] % 4;
	p.max_hop_count = data[3] % 3;
	p.max_protocol_errors = (data[4] >> 4) % 8;
	p.max_junk_commands = (data[5] >> 6) * 3; /* 0 (unlimited), 3, 6, 9 */
	p.may_submit = !(data[4] & 1);
	p.bypass_size_limit = data[4] & 2;
	p.starttls = data[4] & 8;
	p.require_tls = data[3] & 0x80;
	p.require_client_cert = data[3] & 0x40;
	p.auth_mechs = (data[6] >> 2) & 3;
	p.auth_without_tls = data[6] & 0x10;
	p.max_logon_failures = data[2] & 3;
	if (data[4] & 4)
		p.rcpt_policy = policy;
	if (data[4] & 4) {
		p.mail_policy = policy;   /* senders outside corp.example refused */
		p.anonymous_only = true;
	}
	size_t chunk = 1 + data[5] % 64;
	struct ctx c;
	memset(&c, 0, sizeof(c));
	c.outcap = 1024 + (size_t)(data[6] % 4) * 1024;
	c.store_ok = !(data[7] & 1);
	c.store_full = data[7] & 2;
	c.defer = data[7] & 4;
	c.cert = data[2] & 0x80;
	c.auth_answer = (data[6] >> 5) % 3;
	bool drain_midway = data[7] & 8;
	bool abort_midway = data[7] & 16;
	bool use_v6 = data[7] & 32;
	data += 8;
	size -= 8;

	static char out[OUTCAP_MAX];
	smtp_server_init(&c.s, &p, use_v6 ? "2001:db8::1" : "192.0.2.1", out, c.outcap);
	send_out(&c);
	char *in = malloc(size + 1);
	if (!in)
		abort();
	size_t inlen = 0, off = 0;
	while (off < size && !c.closed) {
		size_t n = chunk < size - off ? chunk : size - off;
		memcpy(in + inlen, data + off, n);
		inlen += n;
		off += n;
		run(&c, in, &inlen);
		if (c.storing) {
			c.storing = false;
			smtp_server_stored(&c.s, c.store_ok, c.store_full);
			run(&c, in, &inlen);
		}
		if (drain_midway && off >= size / 2) {
			drain_midway = false;
			if (smtp_server_drain(&c.s) && !c.closed)
				run(&c, in, &inlen);
		}
		if (abort_midway && off >= size / 2 && !c.closed) {
			abort_midway = false;
			smtp_server_abort(&c.s, "421 4.4.1 Connection timed out");
			run(&c, in, &inlen);
			if (!c.closed)
				abort();
		}
	}
	smtp_server_free(&c.s);
	free(in);
	free(c.msg);
	return 0;
}
