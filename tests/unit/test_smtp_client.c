/* Unit tests for the SMTP client state machine (proto/smtp_client.c).
 * Scripted dialogues: server bytes in, the exact commands and events out
 * ("[BODY]", "[DONE]", "[READY]", "[CLOSE]", "[STARTTLS]" in the transcript), results per
 * recipient. With credentials, no result, session error or AUTH reply may
 * ever hold the secret. Every dialogue also runs with the server's bytes split at each
 * position and fed one byte at a time; the transcript must not change. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_client.h"

#define HELO_NAME "out.example"
#define GREET "220 mx.example ESMTP Postfix\r\n"
#define EHLO "EHLO " HELO_NAME "\r\n"
#define HELO "HELO " HELO_NAME "\r\n"
/* PIPELINING SIZE DSN 8BITMIME ENHANCEDSTATUSCODES */
#define EHLO_FULL                                                           \
	"250-mx.example\r\n"                                                \
	"250-PIPELINING\r\n"                                                \
	"250-SIZE 10240000\r\n"                                             \
	"250-DSN\r\n"                                                       \
	"250-8BITMIME\r\n"                                                  \
	"250 ENHANCEDSTATUSCODES\r\n"
#define EXT_FULL                                                            \
	(SMTPC_EXT_PIPELINING | SMTPC_EXT_SIZE | SMTPC_EXT_DSN |            \
	 SMTPC_EXT_8BITMIME | SMTPC_EXT_ENHANCEDSTATUSCODES)
/* the same without PIPELINING, SIZE without a limit */
#define EHLO_NOPIPE                                                         \
	"250-mx.example Hello out.example [192.0.2.1]\r\n"                  \
	"250-SIZE\r\n"                                                      \
	"250-8BITMIME\r\n"                                                  \
	"250 DSN\r\n"

#define MAX_RCPT 8

/* ---- messages ----------------------------------------------------------- */

static const struct smtp_client_rcpt rcpt_full[] = {
	{"bob@example.com", SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE,
	 "rfc822;bob@example.com"},
	{"carol@example.com", SMTP_NOTIFY_NEVER, NULL},
	{"dave@example.com", 0, NULL},
	{"erin@example.com", SMTP_NOTIFY_DELAY | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_SUCCESS,
	 "rfc822;erin+2Bx@example.com"},
};

static const struct smtp_client_msg msg_full = {
	.from = "alice@example.org",
	.size = 12345,
	.body = SMTP_BODY_8BITMIME,
	.ret = SMTP_RET_HDRS,
	.envid = "QQ314159",
	.rcpt = rcpt_full,
	.nrcpt = 4,
};

#define BATCH_FULL                                                          \
	"MAIL FROM:<alice@example.org> SIZE=12345 BODY=8BITMIME RET=HDRS ENVID=QQ314159\r\n" \
	"RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com\r\n" \
	"RCPT TO:<carol@example.com> NOTIFY=NEVER\r\n"                      \
	"RCPT TO:<dave@example.com>\r\n"                                    \
	"RCPT TO:<erin@example.com> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;erin+2Bx@example.com\r\n" \
	"DATA\r\n"

static const struct smtp_client_rcpt rcpt_two[] = {
	{"x@example.net", 0, NULL},
	{"y@example.net", SMTP_NOTIFY_DELAY, NULL},
};

static const struct smtp_client_msg msg_two = {
	.from = "",
	.size = 100,
	.body = SMTP_BODY_7BIT,
	.ret = SMTP_RET_FULL,
	.rcpt = rcpt_two,
	.nrcpt = 2,
};

/* msg_two to a server with DSN, SIZE and 8BITMIME */
#define MAIL_TWO "MAIL FROM:<> SIZE=100 BODY=7BIT RET=FULL\r\n"
#define RCPT_X "RCPT TO:<x@example.net>\r\n"
#define RCPT_Y "RCPT TO:<y@example.net> NOTIFY=DELAY\r\n"
#define BATCH_TWO MAIL_TWO RCPT_X RCPT_Y "DATA\r\n"

static const struct smtp_client_rcpt rcpt_one[] = {{"z@example.net", 0, NULL}};

static const struct smtp_client_msg msg_one = {
	.from = "a@example.org",
	.size = 10,
	.rcpt = rcpt_one,
	.nrcpt = 1,
};

static const struct smtp_client_rcpt rcpt_utf8[] = {
	{"j\xc3\xb6rg@example.de", SMTP_NOTIFY_FAILURE, "utf-8;j\\x{00F6}rg@example.de"},
};

static const struct smtp_client_msg msg_utf8 = {
	.from = "b\xc3\xa4r@example.org",
	.size = 2000,
	.body = SMTP_BODY_8BITMIME,
	.smtputf8 = true,
	.rcpt = rcpt_utf8,
	.nrcpt = 1,
};

static const struct smtp_client_msg msg_big = {
	.from = "a@example.org",
	.size = 10240001,
	.rcpt = rcpt_two,
	.nrcpt = 2,
};

static const struct smtp_client_msg msg_limit = {
	.from = "a@example.org",
	.size = 10240000,
	.rcpt = rcpt_one,
	.nrcpt = 1,
};

static const struct smtp_client_rcpt rcpt_crlf[] = {
	{"ok@example.net", 0, NULL},
	{"evil@example.net>\r\nRSET", 0, NULL},
};

static const struct smtp_client_msg msg_crlf = {
	.from = "a@example.org",
	.rcpt = rcpt_crlf,
	.nrcpt = 2,
};

static const struct smtp_client_rcpt rcpt_orcpt_crlf[] = {
	{"ok@example.net", 0, "rfc822;ok@example.net\nDATA"},
};

static const struct smtp_client_msg msg_orcpt_crlf = {
	.from = "a@example.org",
	.rcpt = rcpt_orcpt_crlf,
	.nrcpt = 1,
};

static const struct smtp_client_msg msg_none = {
	.from = "a@example.org",
};

/* ---- dialogues ------------------------------------------------------------ */

enum op {
	OP_END,
	OP_S,     /* the server sends s */
	OP_C,     /* the transcript since the last OP_C is exactly s */
	OP_START, /* smtp_client_start(msg) */
	OP_QUIT,
	OP_SENT,  /* manual mode: the outstanding send completed */
	OP_RES,   /* result of recipient i */
	OP_SESS,  /* session_error */
	OP_TMO,   /* smtp_client_timeout_ms() == n */
	OP_FAIL,  /* smtp_client_fail(code, status, s) returns i */
	OP_EXT,   /* ext == n, max_size == n2 */
	OP_TLS,   /* the handshake is done: smtp_client_tls_started() */
	OP_TLSST, /* smtp_client_tls_state() == n */
	OP_AUTHST, /* smtp_client_auth_state() == n */
	OP_AUTHREPLY, /* auth_code == code, auth_status, auth_reply == s */
	OP_REPLIES, /* smtp_client_replies() == n */
	OP_STAGE,   /* smtp_client_stage() == stage */
	OP_LOOP,    /* smtp_client_loop() == n */
	OP_NEXT,    /* smtp_client_start_next(msg) into res2 returns i */
	OP_RES2,    /* result of recipient i of the message queued by OP_NEXT */
	OP_CUR,     /* smtp_client_current() is msg (NULL: none) */
};

struct step {
	enum op op;
	const char *s;
	const struct smtp_client_msg *msg;
	int i;
	int code;
	const char *status;
	enum smtp_client_stage stage;
	uint64_t n, n2;
};

#define S(x) {.op = OP_S, .s = (x)}
#define C(x) {.op = OP_C, .s = (x)}
#define START(m) {.op = OP_START, .msg = (m)}
/* without asking for the next event afterwards */
#define START_QUIET(m) {.op = OP_START, .msg = (m), .i = 1}
#define QUIT {.op = OP_QUIT}
#define SENT {.op = OP_SENT}
#define RES(idx, c, st, stg, t)                                             \
	{.op = OP_RES, .i = (idx), .code = (c), .status = (st),             \
	 .stage = SMTPC_STAGE_##stg, .s = (t)}
#define SESS(c, st, stg, t)                                                 \
	{.op = OP_SESS, .code = (c), .status = (st), .stage = SMTPC_STAGE_##stg, .s = (t)}
#define NO_SESS SESS(0, "", CONNECT, "")
#define TMO(ms) {.op = OP_TMO, .n = (ms)}
#define FAIL(c, st, t, ret) {.op = OP_FAIL, .code = (c), .status = (st), .s = (t), .i = (ret)}
#define EXT(e, sz) {.op = OP_EXT, .n = (e), .n2 = (sz)}
#define TLS_UP {.op = OP_TLS}
#define TLSST(st) {.op = OP_TLSST, .n = SMTPC_TLSST_##st}
#define AUTHST(st) {.op = OP_AUTHST, .n = SMTPC_AUTHST_##st}
#define AUTHREPLY(c, st, t) {.op = OP_AUTHREPLY, .code = (c), .status = (st), .s = (t)}
#define REPLIES(k) {.op = OP_REPLIES, .n = (k)}
#define STAGE(stg) {.op = OP_STAGE, .stage = SMTPC_STAGE_##stg}
#define LOOP(b) {.op = OP_LOOP, .n = (b)}
#define NEXT(m, ret) {.op = OP_NEXT, .msg = (m), .i = (ret)}
#define RES2(idx, c, st, stg, t)                                            \
	{.op = OP_RES2, .i = (idx), .code = (c), .status = (st),            \
	 .stage = SMTPC_STAGE_##stg, .s = (t)}
#define CUR(m) {.op = OP_CUR, .msg = (m)}
#define END {.op = OP_END}

/* Greeting and EHLO: the machine is READY afterwards. */
#define SESSION(ehlo_reply) S(GREET), C(EHLO), S(ehlo_reply), C("[READY]")

struct dialogue {
	const char *name;
	bool no_pipelining;
	bool manual;         /* the test acknowledges sends with OP_SENT */
	const char *helo;    /* NULL: HELO_NAME */
	enum smtp_client_tls tls;
	enum smtp_client_auth auth; /* with AUTH_USER and AUTH_PASS (or AUTH_TOKEN) */
	bool auth_tls;       /* auth_needs_tls */
	uint64_t command_ms, data_ms, rate; /* the timeout parameters (0: default) */
	const struct step *steps;
};

#define AUTH_USER "relay@corp.example"
#define AUTH_PASS "s3cret pw"
#define AUTH_TOKEN "eyJ0eXAi.tok-en_1"

#define STEPS(...) ((const struct step[]){__VA_ARGS__, END})

/* ---- harness -------------------------------------------------------------- */

#define SPLIT_WHOLE 0
#define SPLIT_BYTES ((size_t)-1)

struct h {
	struct smtp_client c;
	struct smtp_client_params p;
	struct smtp_client_result res[MAX_RCPT];
	unsigned nrcpt;
	struct smtp_client_result res2[MAX_RCPT]; /* OP_NEXT's message */
	unsigned nrcpt2;
	const struct smtp_client_msg *next; /* queued by OP_NEXT, not yet current */
	bool on_res2;        /* the current message is OP_NEXT's */
	char log[16384];
	size_t log_len;
	bool manual, outstanding, closed;
	bool ready;          /* READY reported, no other event since */
	bool tls_wait;       /* STARTTLS reported: the engine's handshake; what
	                      * the server sends meanwhile is dropped unread */
	unsigned dones;
	const char *name;
	size_t split, step;
};

static void log_clear(struct h *h)
{
	h->log_len = 0;
	h->log[0] = '\0';
}

static void log_add(struct h *h, const char *s, size_t n)
{
	if (h->log_len + n >= sizeof(h->log))
		fail_msg("%s: transcript too long", h->name);
	memcpy(h->log + h->log_len, s, n);
	h->log_len += n;
	h->log[h->log_len] = '\0';
}

/* Every command line ends in CRLF; no CR or LF anywhere else. */
static void check_commands(struct h *h, const char *p, size_t n)
{
	if (n < 2 || p[n - 2] != '\r' || p[n - 1] != '\n')
		fail_msg("%s: send does not end in CRLF", h->name);
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\r' && (i + 1 == n || p[i + 1] != '\n'))
			fail_msg("%s: bare CR in a command", h->name);
		if (p[i] == '\n' && (i == 0 || p[i - 1] != '\r'))
			fail_msg("%s: bare LF in a command", h->name);
	}
}

static void check_results_complete(struct h *h)
{
	unsigned n = h->on_res2 ? h->nrcpt2 : h->nrcpt;
	for (unsigned i = 0; i < n; i++) {
		const struct smtp_client_result *r = h->on_res2 ? &h->res2[i] : &h->res[i];
		if (r->code < 200 || r->code > 599 || r->code / 100 == 3 ||
		    (r->stage == SMTPC_STAGE_RCPT && r->code / 100 == 2))
			fail_msg("%s (split %zu, step %zu): recipient %u unfinished at "
				 "MSG_DONE: %d %s", h->name, h->split, h->step, i,
				 r->code, smtp_client_stage_name(r->stage));
		if (r->status[0] != r->code / 100 + '0')
			fail_msg("%s: recipient %u status %s for code %d", h->name, i,
				 r->status, r->code);
	}
}

/* Runs the machine over in[0..n) the way the engine does. */
static void h_run(struct h *h, const char *in, size_t n)
{
	size_t off = 0;
	for (unsigned iter = 0;; iter++) {
		if (iter > 100000)
			fail_msg("%s: no progress", h->name);
		struct smtp_client_event ev;
		memset(&ev, 0, sizeof(ev));
		ev.type = (enum smtp_client_event_type)-1;
		size_t used = smtp_client_feed(&h->c, in + off, n - off, &ev);
		if (used > n - off)
			fail_msg("%s: consumed %zu of %zu", h->name, used, n - off);
		off += used;
		if (ev.type != SMTPC_EV_READY && ev.type != SMTPC_EV_NEED_INPUT)
			h->ready = false;
		switch (ev.type) {
		case SMTPC_EV_SEND:
		case SMTPC_EV_SEND_BODY:
			if (h->outstanding)
				fail_msg("%s (split %zu, step %zu): send while one is "
					 "outstanding", h->name, h->split, h->step);
			if (ev.type == SMTPC_EV_SEND) {
				assert_non_null(ev.data);
				check_commands(h, ev.data, ev.len);
				log_add(h, ev.data, ev.len);
			} else if (ev.bdat) {
				log_add(h, "[CHUNK]", 7);
			} else {
				log_add(h, "[BODY]", 6);
			}
			if (h->manual)
				h->outstanding = true;
			else
				smtp_client_sent(&h->c);
			break;
		case SMTPC_EV_NEED_INPUT:
			if (off != n)
				fail_msg("%s: NEED_INPUT with %zu bytes left", h->name, n - off);
			return;
		case SMTPC_EV_READY:
			if (off != n)
				fail_msg("%s: READY with %zu bytes left", h->name, n - off);
			/* Fed a partial line while idle, the machine is still
			 * ready: report READY once per idle period. */
			if (!h->ready)
				log_add(h, "[READY]", 7);
			h->ready = true;
			return;
		case SMTPC_EV_MSG_DONE:
			check_results_complete(h);
			if (h->next) {
				/* OP_NEXT's message is current now, or was dropped */
				h->on_res2 = smtp_client_current(&h->c) == h->next;
				h->next = NULL;
			} else {
				h->on_res2 = false;
			}
			h->dones++;
			log_add(h, "[DONE]", 6);
			break;
		case SMTPC_EV_CLOSE:
			log_add(h, "[CLOSE]", 7);
			h->closed = true;
			return;
		case SMTPC_EV_STARTTLS:
			/* Returned until the handshake is done; the rest of this
			 * read is discarded, as the engine does. */
			if (used != 0 && h->tls_wait)
				fail_msg("%s: consumed bytes while waiting for TLS", h->name);
			if (!h->tls_wait)
				log_add(h, "[STARTTLS]", 10);
			h->tls_wait = true;
			return;
		default:
			fail_msg("%s: bad event %d", h->name, (int)ev.type);
		}
	}
}

static void h_poll(struct h *h)
{
	if (!h->closed)
		h_run(h, "", 0);
}

static void h_server(struct h *h, const char *s)
{
	size_t n = strlen(s);
	if (h->split == SPLIT_WHOLE || (h->split != SPLIT_BYTES && h->split >= n)) {
		if (!h->closed && !h->tls_wait)
			h_run(h, s, n);
		return;
	}
	size_t k = h->split == SPLIT_BYTES ? 1 : h->split;
	for (size_t off = 0; off < n && !h->closed && !h->tls_wait;) {
		size_t len = n - off < k ? n - off : k;
		h_run(h, s + off, len);
		off += len;
		if (h->split != SPLIT_BYTES)
			k = n; /* two pieces */
	}
}

static void h_init(struct h *h, const char *name, const struct smtp_client_params *p)
{
	memset(h, 0, sizeof(*h));
	h->name = name;
	h->p = *p;
	smtp_client_init(&h->c, &h->p);
	/* The engine asks what to do first: wait for the greeting. */
	h_poll(h);
}

static void check_result(const struct h *h, const char *what,
			 const struct smtp_client_result *got, int code,
			 const char *status, enum smtp_client_stage stage,
			 const char *text)
{
	char name[256];
	snprintf(name, sizeof(name), "%s (split %zu, step %zu) %s", h->name,
		 h->split, h->step, what);
	CHECK_INT(name, got->code, code);
	CHECK_STR(name, got->status, status);
	CHECK_STR(name, smtp_client_stage_name(got->stage),
		  smtp_client_stage_name(stage));
	CHECK_STR(name, got->text, text);
}

static void run_dialogue(const struct dialogue *d, size_t split)
{
	struct h *h = malloc(sizeof(*h));
	assert_non_null(h);
	struct smtp_client_params p = {
		.helo_name = d->helo ? d->helo : HELO_NAME,
		.no_pipelining = d->no_pipelining,
		.tls = d->tls,
		.auth = d->auth,
		.auth_user = d->auth ? AUTH_USER : NULL,
		.auth_secret = d->auth == SMTPC_AUTH_XOAUTH2 ? AUTH_TOKEN
			       : d->auth			  ? AUTH_PASS
								  : NULL,
		.auth_needs_tls = d->auth_tls,
		.command_timeout_ms = d->command_ms,
		.data_timeout_ms = d->data_ms,
		.min_data_rate = d->rate,
	};
	h_init(h, d->name, &p);
	h->manual = d->manual;
	h->split = split;
	for (const struct step *s = d->steps; s->op != OP_END; s++) {
		h->step = (size_t)(s - d->steps);
		switch (s->op) {
		case OP_S:
			h_server(h, s->s);
			break;
		case OP_C:
			if (strcmp(h->log, s->s) != 0)
				fail_msg("%s (split %zu, step %zu): transcript\n--- got ---\n"
					 "%s\n--- want ---\n%s", d->name, split, h->step,
					 h->log, s->s);
			log_clear(h);
			break;
		case OP_START:
			assert_true(s->msg->nrcpt <= MAX_RCPT);
			memset(h->res, 0x5a, sizeof(h->res));
			h->nrcpt = s->msg->nrcpt;
			h->ready = false;
			smtp_client_start(&h->c, s->msg, h->res);
			if (!s->i)
				h_poll(h);
			break;
		case OP_QUIT:
			smtp_client_quit(&h->c);
			h_poll(h);
			break;
		case OP_SENT:
			if (!h->outstanding)
				fail_msg("%s step %zu: nothing outstanding", d->name, h->step);
			h->outstanding = false;
			smtp_client_sent(&h->c);
			h_poll(h);
			break;
		case OP_RES: {
			char what[32];
			snprintf(what, sizeof(what), "rcpt %d", s->i);
			check_result(h, what, &h->res[s->i], s->code, s->status,
				     s->stage, s->s);
			break;
		}
		case OP_SESS:
			check_result(h, "session_error", &h->c.session_error, s->code,
				     s->status, s->stage, s->s);
			break;
		case OP_TMO: {
			char name[128];
			snprintf(name, sizeof(name), "%s (split %zu, step %zu)", d->name,
				 split, h->step);
			CHECK_INT(name, smtp_client_timeout_ms(&h->c), s->n);
			break;
		}
		case OP_FAIL: {
			bool r = smtp_client_fail(&h->c, s->code, s->status, s->s);
			CHECK_INT(d->name, r, s->i);
			h_poll(h);
			break;
		}
		case OP_EXT:
			CHECK_INT(d->name, h->c.ext, s->n);
			CHECK_INT(d->name, h->c.max_size, s->n2);
			break;
		case OP_TLS:
			if (!h->tls_wait)
				fail_msg("%s step %zu: no STARTTLS event", d->name, h->step);
			h->tls_wait = false;
			smtp_client_tls_started(&h->c);
			h_poll(h);
			break;
		case OP_TLSST:
			CHECK_INT(d->name, smtp_client_tls_state(&h->c), s->n);
			break;
		case OP_AUTHST:
			CHECK_INT(d->name, smtp_client_auth_state(&h->c), s->n);
			break;
		case OP_AUTHREPLY:
			CHECK_INT(d->name, h->c.auth_code, s->code);
			CHECK_STR(d->name, h->c.auth_status, s->status);
			CHECK_STR(d->name, h->c.auth_reply, s->s);
			break;
		case OP_REPLIES:
			CHECK_INT(d->name, smtp_client_replies(&h->c), s->n);
			break;
		case OP_STAGE:
			CHECK_STR(d->name, smtp_client_stage_name(smtp_client_stage(&h->c)),
				  smtp_client_stage_name(s->stage));
			break;
		case OP_LOOP:
			CHECK_INT(d->name, smtp_client_loop(&h->c), s->n);
			break;
		case OP_NEXT: {
			assert_true(s->msg->nrcpt <= MAX_RCPT);
			memset(h->res2, 0x5a, sizeof(h->res2));
			bool r = smtp_client_start_next(&h->c, s->msg, h->res2);
			CHECK_INT(d->name, r, s->i);
			if (r) {
				h->nrcpt2 = s->msg->nrcpt;
				h->next = s->msg;
			}
			break;
		}
		case OP_RES2: {
			char what[32];
			snprintf(what, sizeof(what), "next rcpt %d", s->i);
			check_result(h, what, &h->res2[s->i], s->code, s->status, s->stage, s->s);
			break;
		}
		case OP_CUR:
			if (smtp_client_current(&h->c) != s->msg)
				fail_msg("%s step %zu: another current message", d->name, h->step);
			break;
		default:
			fail_msg("bad step");
		}
	}
	if (h->log_len)
		fail_msg("%s (split %zu): unchecked transcript at the end:\n%s",
			 d->name, split, h->log);
	if (p.auth_secret) {
		bool leak = strstr(h->c.session_error.text, p.auth_secret) ||
			    strstr(h->c.auth_reply, p.auth_secret);
		for (unsigned i = 0; i < h->nrcpt; i++)
			leak = leak || strstr(h->res[i].text, p.auth_secret);
		if (leak)
			fail_msg("%s: the secret is in a result", d->name);
	}
	smtp_client_free(&h->c);
	free(h);
}

/* Whole, split in two at every position of every server chunk, and one
 * byte at a time. */
static void run_dialogues(const struct dialogue *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		size_t longest = 0;
		for (const struct step *s = d[i].steps; s->op != OP_END; s++)
			if (s->op == OP_S && strlen(s->s) > longest)
				longest = strlen(s->s);
		run_dialogue(&d[i], SPLIT_WHOLE);
		for (size_t k = 1; k < longest; k++)
			run_dialogue(&d[i], k);
		run_dialogue(&d[i], SPLIT_BYTES);
	}
}

/* ---- transactions ----------------------------------------------------------- */

static const struct dialogue transactions[] = {
	{"pipelined transaction", .steps = STEPS(
		TMO(300000),
		S(GREET), C(EHLO), TMO(300000),
		S(EHLO_FULL), C("[READY]"), EXT(EXT_FULL, 10240000), TMO(0),
		START(&msg_full), C(BATCH_FULL), TMO(300000),
		S("250 2.1.0 Ok\r\n"), C(""), TMO(300000),
		S("250 2.1.5 Ok\r\n"
		  "550 5.1.1 <carol@example.com>: Recipient address rejected: User unknown\r\n"),
		C(""),
		S("250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"), C(""), TMO(300000),
		S("354 End data with <CR><LF>.<CR><LF>\r\n"), C("[BODY]"), TMO(600000),
		S("250 2.0.0 Ok: queued as 4XyZ1\r\n"), C("[DONE][READY]"), TMO(0),
		RES(0, 250, "2.0.0", DOT, "250 2.0.0 Ok: queued as 4XyZ1"),
		RES(1, 550, "5.1.1", RCPT,
		    "550 5.1.1 <carol@example.com>: Recipient address rejected: User unknown"),
		RES(2, 250, "2.0.0", DOT, "250 2.0.0 Ok: queued as 4XyZ1"),
		RES(3, 250, "2.0.0", DOT, "250 2.0.0 Ok: queued as 4XyZ1"),
		QUIT, C("QUIT\r\n"), TMO(300000),
		S("221 2.0.0 Bye\r\n"), C("[CLOSE]"), TMO(0), NO_SESS)},
	{"one command at a time without PIPELINING", .steps = STEPS(
		SESSION(EHLO_NOPIPE), EXT(SMTPC_EXT_SIZE | SMTPC_EXT_8BITMIME | SMTPC_EXT_DSN, 0),
		START(&msg_two), C(MAIL_TWO), TMO(300000),
		S("250 Ok\r\n"), C(RCPT_X), TMO(300000),
		S("250 Ok\r\n"), C(RCPT_Y), TMO(300000),
		S("250 Ok\r\n"), C("DATA\r\n"), TMO(300000),
		S("354 go ahead\r\n"), C("[BODY]"), TMO(600000),
		S("250 Ok: queued\r\n"), C("[DONE][READY]"),
		RES(0, 250, "2.0.0", DOT, "250 Ok: queued"),
		RES(1, 250, "2.0.0", DOT, "250 Ok: queued"))},
	{"no_pipelining although offered", .no_pipelining = true, .steps = STEPS(
		SESSION(EHLO_FULL),
		START(&msg_two), C(MAIL_TWO),
		S("250 2.1.0 Ok\r\n"), C(RCPT_X),
		S("250 2.1.5 Ok\r\n"), C(RCPT_Y),
		S("250 2.1.5 Ok\r\n"), C("DATA\r\n"),
		S("354 go\r\n"), C("[BODY]"),
		S("250 2.0.0 queued\r\n"), C("[DONE][READY]"))},
	{"one recipient refused, others accepted (not pipelined)", .steps = STEPS(
		SESSION(EHLO_NOPIPE),
		START(&msg_two), C(MAIL_TWO),
		S("250 Ok\r\n"), C(RCPT_X),
		S("550 5.1.1 No such user\r\n"), C(RCPT_Y),
		S("250 Ok\r\n"), C("DATA\r\n"),
		S("354 go\r\n"), C("[BODY]"),
		S("250 Ok\r\n"), C("[DONE][READY]"),
		RES(0, 550, "5.1.1", RCPT, "550 5.1.1 No such user"),
		RES(1, 250, "2.0.0", DOT, "250 Ok"))},
	{"two messages on one connection", .steps = STEPS(
		SESSION(EHLO_FULL),
		START(&msg_full), C(BATCH_FULL),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
		  "452 4.2.2 Mailbox full\r\n354 go\r\n"),
		C("[BODY]"),
		S("250 2.0.0 Ok: queued as A1\r\n"), C("[DONE][READY]"),
		RES(3, 452, "4.2.2", RCPT, "452 4.2.2 Mailbox full"),
		RES(2, 250, "2.0.0", DOT, "250 2.0.0 Ok: queued as A1"),
		START(&msg_two), C(BATCH_TWO),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"), C("[BODY]"),
		S("250 2.0.0 Ok: queued as B2\r\n"), C("[DONE][READY]"),
		RES(0, 250, "2.0.0", DOT, "250 2.0.0 Ok: queued as B2"),
		RES(1, 250, "2.0.0", DOT, "250 2.0.0 Ok: queued as B2"),
		START(&msg_one), C("MAIL FROM:<a@example.org> SIZE=10\r\n"
				   "RCPT TO:<z@example.net>\r\nDATA\r\n"),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"), C("[BODY]"),
		S("250 2.0.0 Ok: queued as C3\r\n"), C("[DONE][READY]"),
		RES(0, 250, "2.0.0", DOT, "250 2.0.0 Ok: queued as C3"),
		QUIT, C("QUIT\r\n"), S("221 Bye\r\n"), C("[CLOSE]"))},
	{"SMTPUTF8 offered", .steps = STEPS(
		SESSION("250-mx.example\r\n250-SMTPUTF8\r\n250-8BITMIME\r\n250 DSN\r\n"),
		START(&msg_utf8),
		C("MAIL FROM:<b\xc3\xa4r@example.org> BODY=8BITMIME SMTPUTF8\r\n"),
		S("250 Ok\r\n"),
		C("RCPT TO:<j\xc3\xb6rg@example.de> NOTIFY=FAILURE "
		  "ORCPT=utf-8;j\\x{00F6}rg@example.de\r\n"),
		S("250 Ok\r\n"), C("DATA\r\n"), S("354 go\r\n"), C("[BODY]"),
		S("250 Ok\r\n"), C("[DONE][READY]"))},
	{"no recipients", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_none), C("[DONE][READY]"))},
	{"multi-line replies", .steps = STEPS(
		S("220-mx.example ESMTP\r\n220-No UCE\r\n220 \r\n"), C(EHLO),
		S(EHLO_FULL), C("[READY]"),
		START(&msg_two), C(BATCH_TWO),
		S("250-2.1.0 Sender\r\n250 2.1.0 ok\r\n"
		  "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
		  "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
		  "550 5.1.1 unnecessary spaces. https://support.example/?p=NoSuchUser x1\r\n"
		  "250-Recipient\r\n250-\r\n250 ok\r\n"
		  "354-Go\r\n354 ahead\r\n"),
		C("[BODY]"),
		S("250-2.0.0 Ok\r\n250-2.0.0 queued as 99\r\n250 2.0.0 thanks\r\n"),
		C("[DONE][READY]"),
		RES(0, 550, "5.1.1", RCPT,
		    "550 5.1.1 The email account that you tried to reach does not exist. "
		    "Please try double-checking the recipient's email address for typos "
		    "or unnecessary spaces. https://support.example/?p=NoSuchUser x1"),
		RES(1, 250, "2.0.0", DOT, "250 2.0.0 Ok queued as 99 thanks"))},
	{"bare LF line ends", .steps = STEPS(
		S("220 mx.example\n"), C(EHLO),
		S("250-mx.example\n250-PIPELINING\n250 DSN\n"), C("[READY]"),
		EXT(SMTPC_EXT_PIPELINING | SMTPC_EXT_DSN, 0),
		START(&msg_one), C("MAIL FROM:<a@example.org>\r\nRCPT TO:<z@example.net>\r\nDATA\r\n"),
		S("250 ok\n250 ok\r\n354 go\n"), C("[BODY]"),
		S("250 2.0.0 ok\n"), C("[DONE][READY]"),
		RES(0, 250, "2.0.0", DOT, "250 2.0.0 ok"))},
};

/* ---- CHUNKING (RFC 3030) ------------------------------------------------ */

static const struct smtp_client_msg msg_two_dotless = {
	.from = "",
	.size = 100,
	.body = SMTP_BODY_7BIT,
	.ret = SMTP_RET_FULL,
	.dotless = true,
	.rcpt = rcpt_two,
	.nrcpt = 2,
};

#define EHLO_CHUNKING                                                       \
	"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-CHUNKING\r\n" \
	"250-DSN\r\n250 8BITMIME\r\n"

static const struct dialogue chunkings[] = {
	{"pipelined envelope, then one BDAT LAST", .steps = STEPS(
		SESSION(EHLO_CHUNKING),
		START(&msg_two_dotless), C(MAIL_TWO RCPT_X RCPT_Y),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n"),
		C("BDAT 100 LAST\r\n[CHUNK]"),
		S("250 2.0.0 Ok: queued as D4\r\n"), C("[DONE][READY]"),
		RES(0, 250, "2.0.0", DOT, "250 2.0.0 Ok: queued as D4"),
		RES(1, 550, "5.1.1", RCPT, "550 5.1.1 No such user"))},
	{"the chunk refused", .steps = STEPS(
		SESSION(EHLO_CHUNKING),
		START(&msg_two_dotless), C(MAIL_TWO RCPT_X RCPT_Y),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"),
		C("BDAT 100 LAST\r\n[CHUNK]"),
		S("554 5.6.0 Content refused\r\n"), C("[DONE][READY]"),
		RES(0, 554, "5.6.0", DOT, "554 5.6.0 Content refused"),
		RES(1, 554, "5.6.0", DOT, "554 5.6.0 Content refused"),
		QUIT, C("QUIT\r\n"), S("221 Bye\r\n"), C("[CLOSE]"))},
	{"nobody accepted: no chunk is sent", .steps = STEPS(
		SESSION(EHLO_CHUNKING),
		START(&msg_two_dotless), C(MAIL_TWO RCPT_X RCPT_Y),
		S("250 2.1.0 Ok\r\n550 5.1.1 No\r\n450 4.2.1 Later\r\n"),
		C("[DONE]RSET\r\n"), S("250 Ok\r\n"), C("[READY]"),
		RES(0, 550, "5.1.1", RCPT, "550 5.1.1 No"),
		RES(1, 450, "4.2.1", RCPT, "450 4.2.1 Later"))},
	{"MAIL refused in the pipelined batch", .steps = STEPS(
		SESSION(EHLO_CHUNKING),
		START(&msg_two_dotless), C(MAIL_TWO RCPT_X RCPT_Y),
		S("452 4.3.1 Full\r\n503 5.5.1 No MAIL\r\n503 5.5.1 No MAIL\r\n"),
		C("[DONE]RSET\r\n"), S("250 Ok\r\n"), C("[READY]"),
		RES(0, 452, "4.3.1", MAIL, "452 4.3.1 Full"),
		RES(1, 452, "4.3.1", MAIL, "452 4.3.1 Full"))},
	{"without PIPELINING, one command at a time", .steps = STEPS(
		SESSION("250-mx.example\r\n250-CHUNKING\r\n250 SIZE\r\n"),
		START(&msg_two_dotless), C("MAIL FROM:<> SIZE=100\r\n"), S("250 Ok\r\n"),
		C(RCPT_X), S("250 Ok\r\n"), C("RCPT TO:<y@example.net>\r\n"), S("250 Ok\r\n"),
		C("BDAT 100 LAST\r\n[CHUNK]"), S("250 Ok\r\n"), C("[DONE][READY]"),
		RES(0, 250, "2.0.0", DOT, "250 Ok"), RES(1, 250, "2.0.0", DOT, "250 Ok"))},
	{"a stored form with dot lines goes by DATA", .steps = STEPS(
		SESSION(EHLO_CHUNKING),
		START(&msg_two), C(BATCH_TWO),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"), C("[BODY]"),
		S("250 2.0.0 Ok\r\n"), C("[DONE][READY]"))},
	{"CHUNKING not offered: DATA", .steps = STEPS(
		SESSION(EHLO_FULL),
		START(&msg_two_dotless), C(BATCH_TWO),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"), C("[BODY]"),
		S("250 2.0.0 Ok\r\n"), C("[DONE][READY]"))},
};

static void test_chunking(void **state)
{
	run_dialogues(chunkings, N_ELEMS(chunkings));
}

static void test_transactions(void **state)
{
	run_dialogues(transactions, N_ELEMS(transactions));
}

/* ---- the next transaction behind the body (RFC 2920 3.1) ------------------------ */

#define BATCH_ONE "MAIL FROM:<a@example.org> SIZE=10\r\nRCPT TO:<z@example.net>\r\nDATA\r\n"
/* msg_two's envelope accepted, its body handed out */
#define TWO_IN_BODY                                                         \
	S(GREET), C(EHLO), SENT, S(EHLO_FULL), C("[READY]"),                \
	START(&msg_two), C(BATCH_TWO), SENT,                                \
	S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"), C("[BODY]")

static const struct dialogue nexts[] = {
	{"the next message's commands follow the body", .manual = true, .steps = STEPS(
		TWO_IN_BODY,
		NEXT(&msg_one, true), C(""), CUR(&msg_two),
		/* the body is sent: the next batch goes at once */
		SENT, C(BATCH_ONE), TMO(600000), STAGE(DOT), SENT, C(""),
		/* one read: the dot's reply and the next envelope's */
		S("250 2.0.0 Ok: queued as B2\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"),
		C("[DONE][BODY]"), CUR(&msg_one),
		RES(0, 250, "2.0.0", DOT, "250 2.0.0 Ok: queued as B2"),
		RES(1, 250, "2.0.0", DOT, "250 2.0.0 Ok: queued as B2"),
		SENT, S("250 2.0.0 Ok: queued as C3\r\n"), C("[DONE][READY]"), CUR(NULL),
		RES2(0, 250, "2.0.0", DOT, "250 2.0.0 Ok: queued as C3"),
		QUIT, C("QUIT\r\n"), SENT, S("221 Bye\r\n"), C("[CLOSE]"))},
	{"the dot refused: the next message goes on", .manual = true, .steps = STEPS(
		TWO_IN_BODY, NEXT(&msg_one, true), SENT, C(BATCH_ONE), SENT,
		S("554 5.7.1 Message refused\r\n250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n"
		  "554 5.5.1 No valid recipients\r\n"),
		C("[DONE][DONE]RSET\r\n"),
		RES(0, 554, "5.7.1", DOT, "554 5.7.1 Message refused"),
		RES2(0, 550, "5.1.1", RCPT, "550 5.1.1 No such user"),
		SENT, S("250 Ok\r\n"), C("[READY]"))},
	{"a 421 to the dot: the next message was never started", .manual = true,
	 .steps = STEPS(
		TWO_IN_BODY, NEXT(&msg_one, true), SENT, C(BATCH_ONE), SENT,
		S("421 4.3.2 Shutting down\r\n"), C("[DONE][CLOSE]"), CUR(NULL),
		RES(0, 421, "4.3.2", DOT, "421 4.3.2 Shutting down"),
		SESS(421, "4.3.2", DOT, "421 4.3.2 Shutting down"))},
	{"the dot's reply before the body is acknowledged", .manual = true, .steps = STEPS(
		TWO_IN_BODY, NEXT(&msg_one, true),
		S("250 2.0.0 Ok\r\n"), C("[DONE]"), CUR(&msg_one),
		/* not sent yet: it goes as this message's own batch */
		SENT, C(BATCH_ONE), SENT,
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"), C("[BODY]"),
		SENT, S("250 2.0.0 Ok\r\n"), C("[DONE][READY]"),
		RES2(0, 250, "2.0.0", DOT, "250 2.0.0 Ok"))},
	{"fail() while the body is sent, a next message queued", .manual = true,
	 .steps = STEPS(
		TWO_IN_BODY, NEXT(&msg_one, true),
		FAIL(451, "4.4.2", "451 4.4.2 lost", true), C("[CLOSE]"), CUR(NULL),
		RES(0, 451, "4.4.2", CONNECT, "451 4.4.2 lost"))},
	{"no next without PIPELINING", .manual = true, .steps = STEPS(
		S(GREET), C(EHLO), SENT, S(EHLO_NOPIPE), C("[READY]"),
		START(&msg_one), C("MAIL FROM:<a@example.org> SIZE=10\r\n"), SENT,
		S("250 ok\r\n"), C("RCPT TO:<z@example.net>\r\n"), SENT,
		S("250 ok\r\n"), C("DATA\r\n"), SENT,
		S("354 go\r\n"), C("[BODY]"), NEXT(&msg_two, false), SENT,
		S("250 ok\r\n"), C("[DONE][READY]"))},
	{"no next the next hop would refuse, none twice, none before the body",
	 .manual = true, .steps = STEPS(
		S(GREET), C(EHLO), SENT, S(EHLO_FULL), C("[READY]"),
		START(&msg_two), C(BATCH_TWO), NEXT(&msg_one, false), SENT,
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"), C("[BODY]"),
		NEXT(&msg_big, false), NEXT(&msg_none, false), NEXT(&msg_one, true),
		NEXT(&msg_one, false), SENT, C(BATCH_ONE), SENT,
		S("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"), C("[DONE][BODY]"), SENT,
		S("250 ok\r\n"), C("[DONE][READY]"))},
};

static void test_next_behind_body(void **state)
{
	(void)state;
	run_dialogues(nexts, N_ELEMS(nexts));
}

/* ---- greeting, EHLO, HELO ------------------------------------------------------ */

static const struct dialogue hellos[] = {
	{"HELO after EHLO refused", .steps = STEPS(
		S(GREET), C(EHLO),
		S("502 5.5.2 Error: command not recognized\r\n"), C(HELO), TMO(300000),
		S("250 mx.example\r\n"), C("[READY]"), EXT(0, 0),
		START(&msg_full), C("MAIL FROM:<alice@example.org>\r\n"),
		S("250 ok\r\n"), C("RCPT TO:<bob@example.com>\r\n"),
		S("250 ok\r\n"), C("RCPT TO:<carol@example.com>\r\n"),
		S("250 ok\r\n"), C("RCPT TO:<dave@example.com>\r\n"),
		S("250 ok\r\n"), C("RCPT TO:<erin@example.com>\r\n"),
		S("250 ok\r\n"), C("DATA\r\n"),
		S("354 go\r\n"), C("[BODY]"),
		S("250 ok\r\n"), C("[DONE][READY]"),
		RES(3, 250, "2.0.0", DOT, "250 ok"))},
	{"HELO after EHLO 500, multi-line", .steps = STEPS(
		S(GREET), C(EHLO),
		S("500-what\r\n500 5.5.1 unknown\r\n"), C(HELO),
		S("250 mx.example\r\n"), C("[READY]"), EXT(0, 0))},
	{"HELO refused", .steps = STEPS(
		S(GREET), C(EHLO), S("500 unknown command\r\n"), C(HELO),
		S("550 go away\r\n"), C("[CLOSE]"),
		SESS(550, "5.0.0", EHLO, "550 go away"))},
	{"EHLO 4xx: no HELO, close", .steps = STEPS(
		S(GREET), C(EHLO), S("451 4.3.0 try later\r\n"), C("[CLOSE]"),
		SESS(451, "4.3.0", EHLO, "451 4.3.0 try later"))},
	{"EHLO 421", .steps = STEPS(
		S(GREET), C(EHLO), S("421 4.3.2 too busy\r\n"), C("[CLOSE]"),
		SESS(421, "4.3.2", EHLO, "421 4.3.2 too busy"))},
	{"greeting 554", .steps = STEPS(
		S("554 5.7.1 No SMTP service here\r\n"), C("[CLOSE]"), TMO(0),
		SESS(554, "5.7.1", GREETING, "554 5.7.1 No SMTP service here"))},
	{"greeting 421 multi-line", .steps = STEPS(
		S("421-mx.example busy\r\n421 try later\r\n"), C("[CLOSE]"),
		SESS(421, "4.0.0", GREETING, "421 mx.example busy try later"))},
	{"greeting 450", .steps = STEPS(
		S("450 4.3.2 not now\r\n"), C("[CLOSE]"),
		SESS(450, "4.3.2", GREETING, "450 4.3.2 not now"))},
	{"helo_name with a line break is not a second command",
	 .helo = "out.example\r\nRSET", .steps = STEPS(
		S(GREET), C("EHLO out.example  RSET\r\n"))},
};

static void test_hellos(void **state)
{
	run_dialogues(hellos, N_ELEMS(hellos));
}

/* ---- failed transactions ------------------------------------------------------- */

static const struct dialogue failures[] = {
	{"all recipients refused, pipelined: no body, RSET", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_two), C(BATCH_TWO),
		S("250 2.1.0 Ok\r\n550 5.1.1 no x\r\n450 4.2.1 y later\r\n"
		  "554 5.5.1 Error: no valid recipients\r\n"),
		C("[DONE]RSET\r\n"), TMO(300000),
		RES(0, 550, "5.1.1", RCPT, "550 5.1.1 no x"),
		RES(1, 450, "4.2.1", RCPT, "450 4.2.1 y later"),
		S("250 2.0.0 Ok\r\n"), C("[READY]"), TMO(0),
		START(&msg_one), C("MAIL FROM:<a@example.org> SIZE=10\r\n"
				   "RCPT TO:<z@example.net>\r\nDATA\r\n"))},
	{"all recipients refused, pipelined DATA got 354 anyway", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_two), C(BATCH_TWO),
		S("250 2.1.0 Ok\r\n550 5.1.1 no x\r\n550 5.1.1 no y\r\n354 go ahead\r\n"),
		C("[DONE].\r\n"), TMO(600000),
		RES(0, 550, "5.1.1", RCPT, "550 5.1.1 no x"),
		RES(1, 550, "5.1.1", RCPT, "550 5.1.1 no y"),
		S("554 5.5.1 no valid recipients\r\n"), C("[READY]"),
		QUIT, C("QUIT\r\n"), S("221 bye\r\n"), C("[CLOSE]"), NO_SESS)},
	{"all recipients refused, one at a time: no DATA, RSET", .steps = STEPS(
		SESSION(EHLO_NOPIPE), START(&msg_two), C(MAIL_TWO),
		S("250 Ok\r\n"), C(RCPT_X),
		S("550 5.7.1 relay denied\r\n"), C(RCPT_Y),
		S("551 5.1.6 user has moved\r\n"), C("[DONE]RSET\r\n"),
		RES(0, 550, "5.7.1", RCPT, "550 5.7.1 relay denied"),
		RES(1, 551, "5.1.6", RCPT, "551 5.1.6 user has moved"),
		S("250 Ok\r\n"), C("[READY]"))},
	{"MAIL refused, pipelined", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_two), C(BATCH_TWO),
		S("553 5.7.1 <>: Sender address rejected\r\n"), C(""),
		S("503 5.5.1 Error: need MAIL command\r\n"
		  "503 5.5.1 Error: need MAIL command\r\n"),
		C(""),
		S("554 5.5.1 Error: no valid recipients\r\n"), C("[DONE]RSET\r\n"),
		RES(0, 553, "5.7.1", MAIL, "553 5.7.1 <>: Sender address rejected"),
		RES(1, 553, "5.7.1", MAIL, "553 5.7.1 <>: Sender address rejected"),
		S("250 2.0.0 Ok\r\n"), C("[READY]"))},
	{"MAIL refused, pipelined, DATA 354 anyway", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_two), C(BATCH_TWO),
		S("451 4.3.0 try later\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
		C("[DONE].\r\n"),
		RES(0, 451, "4.3.0", MAIL, "451 4.3.0 try later"),
		RES(1, 451, "4.3.0", MAIL, "451 4.3.0 try later"),
		S("250 2.0.0 empty message taken\r\n"), C("[READY]"))},
	{"MAIL refused, one at a time", .steps = STEPS(
		SESSION(EHLO_NOPIPE), START(&msg_two), C(MAIL_TWO),
		S("452 4.3.1 Insufficient system storage\r\n"), C("[DONE]RSET\r\n"),
		RES(0, 452, "4.3.1", MAIL, "452 4.3.1 Insufficient system storage"),
		RES(1, 452, "4.3.1", MAIL, "452 4.3.1 Insufficient system storage"),
		S("250 Ok\r\n"), C("[READY]"))},
	{"DATA refused", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_two), C(BATCH_TWO),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no y\r\n451 4.3.0 DATA later\r\n"),
		C("[DONE]RSET\r\n"),
		RES(0, 451, "4.3.0", DATA, "451 4.3.0 DATA later"),
		RES(1, 550, "5.1.1", RCPT, "550 5.1.1 no y"),
		S("250 Ok\r\n"), C("[READY]"))},
	{"DATA refused, one at a time", .steps = STEPS(
		SESSION(EHLO_NOPIPE), START(&msg_one),
		C("MAIL FROM:<a@example.org> SIZE=10\r\n"),
		S("250 Ok\r\n"), C("RCPT TO:<z@example.net>\r\n"),
		S("250 Ok\r\n"), C("DATA\r\n"), TMO(300000),
		S("554 5.7.1 no\r\n"), C("[DONE]RSET\r\n"),
		RES(0, 554, "5.7.1", DATA, "554 5.7.1 no"),
		S("250 Ok\r\n"), C("[READY]"))},
	{"message refused after the dot", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_two), C(BATCH_TWO),
		S("250 2.1.0 Ok\r\n452 4.5.3 Too many recipients\r\n250 2.1.5 Ok\r\n354 go\r\n"),
		C("[BODY]"),
		S("554 5.7.1 Message rejected as spam\r\n"), C("[DONE][READY]"),
		RES(0, 452, "4.5.3", RCPT, "452 4.5.3 Too many recipients"),
		RES(1, 554, "5.7.1", DOT, "554 5.7.1 Message rejected as spam"))},
	{"RSET refused ends the session", .steps = STEPS(
		SESSION(EHLO_NOPIPE), START(&msg_one),
		C("MAIL FROM:<a@example.org> SIZE=10\r\n"),
		S("550 5.7.1 no\r\n"), C("[DONE]RSET\r\n"),
		S("502 5.5.1 RSET not implemented\r\n"), C("[CLOSE]"),
		SESS(502, "5.5.1", MAIL, "502 5.5.1 RSET not implemented"))},
};

static void test_failures(void **state)
{
	run_dialogues(failures, N_ELEMS(failures));
}

/* ---- 421, malformed and unexpected replies --------------------------------------- */

static const struct dialogue aborts[] = {
	{"421 on a pipelined RCPT", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_full), C(BATCH_FULL),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no carol\r\n"
		  "421 4.4.2 mx.example Error: timeout exceeded\r\n"),
		C("[DONE][CLOSE]"),
		RES(0, 421, "4.4.2", RCPT, "421 4.4.2 mx.example Error: timeout exceeded"),
		RES(1, 550, "5.1.1", RCPT, "550 5.1.1 no carol"),
		RES(2, 421, "4.4.2", RCPT, "421 4.4.2 mx.example Error: timeout exceeded"),
		RES(3, 421, "4.4.2", RCPT, "421 4.4.2 mx.example Error: timeout exceeded"),
		SESS(421, "4.4.2", RCPT, "421 4.4.2 mx.example Error: timeout exceeded"),
		S("250 late\r\n"), FAIL(451, "4.4.2", "451 4.4.2 lost", false),
		SESS(421, "4.4.2", RCPT, "421 4.4.2 mx.example Error: timeout exceeded"))},
	{"421 to MAIL, one at a time", .steps = STEPS(
		SESSION(EHLO_NOPIPE), START(&msg_two), C(MAIL_TWO),
		S("421 4.3.2 shutting down\r\n"), C("[DONE][CLOSE]"), TMO(0),
		RES(0, 421, "4.3.2", MAIL, "421 4.3.2 shutting down"),
		RES(1, 421, "4.3.2", MAIL, "421 4.3.2 shutting down"))},
	{"421 to DATA", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_two), C(BATCH_TWO),
		S("250 ok\r\n250 ok\r\n550 no\r\n421 bye\r\n"), C("[DONE][CLOSE]"),
		RES(0, 421, "4.0.0", DATA, "421 bye"),
		RES(1, 550, "5.0.0", RCPT, "550 no"))},
	{"421 instead of the reply to the dot", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_two), C(BATCH_TWO),
		S("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"), C("[BODY]"),
		S("421 4.4.2 timeout\r\n"), C("[DONE][CLOSE]"),
		RES(0, 421, "4.4.2", DOT, "421 4.4.2 timeout"),
		RES(1, 421, "4.4.2", DOT, "421 4.4.2 timeout"))},
	{"421 to RSET", .steps = STEPS(
		SESSION(EHLO_NOPIPE), START(&msg_one),
		C("MAIL FROM:<a@example.org> SIZE=10\r\n"),
		S("550 no\r\n"), C("[DONE]RSET\r\n"),
		S("421 4.4.2 bye\r\n"), C("[CLOSE]"),
		RES(0, 550, "5.0.0", MAIL, "550 no"),
		SESS(421, "4.4.2", MAIL, "421 4.4.2 bye"))},
	{"421 while idle", .steps = STEPS(
		SESSION(EHLO_FULL),
		S("421 4.4.2 mx.example idle timeout\r\n"), C("[CLOSE]"),
		SESS(421, "4.4.2", CONNECT, "421 4.4.2 mx.example idle timeout"))},
	{"malformed reply in a transaction", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_two), C(BATCH_TWO),
		S("250 ok\r\nhello there\r\n250 ok\r\n"), C("[DONE][CLOSE]"),
		RES(0, 451, "4.5.0", RCPT, "451 4.5.0 Malformed reply from server: hello there"),
		RES(1, 451, "4.5.0", RCPT, "451 4.5.0 Malformed reply from server: hello there"),
		SESS(451, "4.5.0", RCPT, "451 4.5.0 Malformed reply from server: hello there"))},
	{"malformed greeting", .steps = STEPS(
		S("SSH-2.0-OpenSSH_9.6\r\n"), C("[CLOSE]"),
		SESS(451, "4.5.0", GREETING,
		     "451 4.5.0 Malformed reply from server: SSH-2.0-OpenSSH_9.6"))},
	{"malformed: empty line", .steps = STEPS(
		S(GREET), C(EHLO), S("250-mx.example\r\n\r\n"), C("[CLOSE]"),
		SESS(451, "4.5.0", EHLO, "451 4.5.0 Malformed reply from server"))},
	{"malformed: code with junk after it", .steps = STEPS(
		SESSION(EHLO_NOPIPE), START(&msg_one),
		C("MAIL FROM:<a@example.org> SIZE=10\r\n"),
		S("250ok\r\n"), C("[DONE][CLOSE]"),
		RES(0, 451, "4.5.0", MAIL, "451 4.5.0 Malformed reply from server: 250ok"))},
	{"malformed: code 199", .steps = STEPS(
		SESSION(EHLO_NOPIPE), START(&msg_one),
		C("MAIL FROM:<a@example.org> SIZE=10\r\n"),
		S("199 hmm\r\n"), C("[DONE][CLOSE]"),
		RES(0, 451, "4.5.0", MAIL, "451 4.5.0 Malformed reply from server: 199 hmm"))},
	{"malformed: code 25", .steps = STEPS(
		S("25\r\n"), C("[CLOSE]"),
		SESS(451, "4.5.0", GREETING, "451 4.5.0 Malformed reply from server: 25"))},
	{"354 to MAIL is not a reply to MAIL", .steps = STEPS(
		SESSION(EHLO_NOPIPE), START(&msg_one),
		C("MAIL FROM:<a@example.org> SIZE=10\r\n"),
		S("354 what\r\n"), C("[DONE][CLOSE]"),
		RES(0, 451, "4.5.0", MAIL, "451 4.5.0 Unexpected reply from server: 354 what"))},
	{"250 to DATA is not a 354", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_one),
		C("MAIL FROM:<a@example.org> SIZE=10\r\nRCPT TO:<z@example.net>\r\nDATA\r\n"),
		S("250 ok\r\n250 ok\r\n250 ok\r\n"), C("[DONE][CLOSE]"),
		RES(0, 451, "4.5.0", DATA, "451 4.5.0 Unexpected reply from server: 250 ok"))},
	{"reply while idle", .steps = STEPS(
		SESSION(EHLO_FULL), S("250 hi\r\n"), C("[CLOSE]"),
		SESS(451, "4.5.0", CONNECT, "451 4.5.0 Unexpected reply from server: 250 hi"))},
	{"a reply too many after the dot", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_one),
		C("MAIL FROM:<a@example.org> SIZE=10\r\nRCPT TO:<z@example.net>\r\nDATA\r\n"),
		S("250 ok\r\n250 ok\r\n354 go\r\n"), C("[BODY]"),
		S("250 ok\r\n"), C("[DONE][READY]"),
		S("250 again\r\n"), C("[CLOSE]"),
		RES(0, 250, "2.0.0", DOT, "250 ok"),
		SESS(451, "4.5.0", CONNECT, "451 4.5.0 Unexpected reply from server: 250 again"))},
};

static void test_aborts(void **state)
{
	run_dialogues(aborts, N_ELEMS(aborts));
}

/* ---- local refusals ------------------------------------------------------------ */

static const struct dialogue locals[] = {
	{"SIZE limit", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_big), C("[DONE][READY]"),
		RES(0, 552, "5.3.4", LOCAL,
		    "552 5.3.4 Message size exceeds the next hop's limit of 10240000"),
		RES(1, 552, "5.3.4", LOCAL,
		    "552 5.3.4 Message size exceeds the next hop's limit of 10240000"),
		START(&msg_limit),
		C("MAIL FROM:<a@example.org> SIZE=10240000\r\nRCPT TO:<z@example.net>\r\nDATA\r\n"))},
	{"SIZE without a limit", .steps = STEPS(
		SESSION(EHLO_NOPIPE), START(&msg_big),
		C("MAIL FROM:<a@example.org> SIZE=10240001\r\n"))},
	{"SMTPUTF8 not offered", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_utf8), C("[DONE][READY]"),
		RES(0, 553, "5.6.7", LOCAL,
		    "553 5.6.7 SMTPUTF8 is required but the next hop does not offer it"),
		QUIT, C("QUIT\r\n"))},
	{"SMTPUTF8 after HELO", .steps = STEPS(
		S(GREET), C(EHLO), S("500 no\r\n"), C(HELO), S("250 ok\r\n"), C("[READY]"),
		START(&msg_utf8), C("[DONE][READY]"),
		RES(0, 553, "5.6.7", LOCAL,
		    "553 5.6.7 SMTPUTF8 is required but the next hop does not offer it"))},
	{"line break in an address", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_crlf), C("[DONE][READY]"),
		RES(0, 501, "5.5.4", LOCAL, "501 5.5.4 Line break in an address or parameter"),
		RES(1, 501, "5.5.4", LOCAL, "501 5.5.4 Line break in an address or parameter"))},
	{"line break in ORCPT", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_orcpt_crlf), C("[DONE][READY]"),
		RES(0, 501, "5.5.4", LOCAL, "501 5.5.4 Line break in an address or parameter"))},
};

static void test_local_refusals(void **state)
{
	run_dialogues(locals, N_ELEMS(locals));
}

/* ---- fail(), quit(), timeouts, sends not yet acknowledged ------------------------- */

static const struct dialogue endings[] = {
	{"fail() mid-transaction", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_full), C(BATCH_FULL),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 no carol\r\n"), C(""),
		FAIL(451, "4.4.2", "451 4.4.2 Connection lost", true), C("[CLOSE]"), TMO(0),
		RES(0, 451, "4.4.2", CONNECT, "451 4.4.2 Connection lost"),
		RES(1, 550, "5.1.1", RCPT, "550 5.1.1 no carol"),
		RES(2, 451, "4.4.2", CONNECT, "451 4.4.2 Connection lost"),
		RES(3, 451, "4.4.2", CONNECT, "451 4.4.2 Connection lost"),
		SESS(451, "4.4.2", CONNECT, "451 4.4.2 Connection lost"),
		FAIL(451, "4.4.2", "451 4.4.2 again", false),
		SESS(451, "4.4.2", CONNECT, "451 4.4.2 Connection lost"))},
	{"fail() while the body is sent", .manual = true, .steps = STEPS(
		S(GREET), C(EHLO), SENT, S(EHLO_FULL), C("[READY]"),
		START(&msg_two), C(BATCH_TWO), SENT,
		S("250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n"), C("[BODY]"), TMO(600000),
		FAIL(421, "4.4.1", "421 4.4.1 Connection timed out", true), C("[CLOSE]"),
		RES(0, 421, "4.4.1", CONNECT, "421 4.4.1 Connection timed out"),
		RES(1, 550, "5.0.0", RCPT, "550 no"))},
	{"fail() with MSG_DONE not yet returned", .steps = STEPS(
		SESSION(EHLO_FULL), START_QUIET(&msg_big),
		FAIL(451, "4.4.2", "451 4.4.2 lost", true), C("[CLOSE]"),
		RES(0, 552, "5.3.4", LOCAL,
		    "552 5.3.4 Message size exceeds the next hop's limit of 10240000"))},
	{"fail() while idle", .steps = STEPS(
		SESSION(EHLO_FULL), FAIL(451, "4.4.2", "451 4.4.2 lost", false), C("[CLOSE]"),
		SESS(451, "4.4.2", CONNECT, "451 4.4.2 lost"),
		S("250 anything\r\n"), C(""))},
	{"fail() before the greeting", .steps = STEPS(
		TMO(300000), FAIL(421, "4.4.1", "421 4.4.1 no greeting", false), C("[CLOSE]"),
		TMO(0))},
	{"QUIT with a malformed reply", .steps = STEPS(
		SESSION(EHLO_FULL), QUIT, C("QUIT\r\n"), S("bye\r\n"), C("[CLOSE]"), NO_SESS)},
	{"QUIT answered by 421", .steps = STEPS(
		SESSION(EHLO_FULL), QUIT, C("QUIT\r\n"), S("421 bye\r\n"), C("[CLOSE]"), NO_SESS)},
	{"quit() before the greeting", .steps = STEPS(
		QUIT, C(""), S(GREET), C("QUIT\r\n"), S("221 bye\r\n"), C("[CLOSE]"))},
	{"quit() while EHLO is answered", .steps = STEPS(
		S(GREET), C(EHLO), QUIT, C(""), S(EHLO_FULL), C("QUIT\r\n"),
		S("221 bye\r\n"), C("[CLOSE]"))},
	{"quit() during a message waits for it", .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_one),
		C("MAIL FROM:<a@example.org> SIZE=10\r\nRCPT TO:<z@example.net>\r\nDATA\r\n"),
		QUIT, C(""),
		S("250 ok\r\n250 ok\r\n354 go\r\n"), C("[BODY]"),
		S("250 ok\r\n"), C("[DONE]QUIT\r\n"), S("221 bye\r\n"), C("[CLOSE]"))},
	{"timeouts per stage", .manual = true, .steps = STEPS(
		TMO(300000), S(GREET), C(EHLO), TMO(300000), SENT, TMO(300000),
		S(EHLO_FULL), C("[READY]"), TMO(0),
		START(&msg_two), C(BATCH_TWO), TMO(300000), SENT, TMO(300000),
		S("250 ok\r\n"), TMO(300000), S("250 ok\r\n"), TMO(300000),
		S("250 ok\r\n"), TMO(300000),
		S("354 go\r\n"), C("[BODY]"), TMO(600000), SENT, TMO(600000),
		S("250 ok\r\n"), C("[DONE][READY]"), TMO(0),
		QUIT, C("QUIT\r\n"), TMO(300000), SENT,
		S("221 bye\r\n"), C("[CLOSE]"), TMO(0))},
	{"timeouts without pipelining", .manual = true, .steps = STEPS(
		S(GREET), C(EHLO), SENT, S("500 no\r\n"), C(HELO), TMO(300000), SENT,
		S("250 ok\r\n"), C("[READY]"),
		START(&msg_one), C("MAIL FROM:<a@example.org>\r\n"), SENT, TMO(300000),
		S("250 ok\r\n"), C("RCPT TO:<z@example.net>\r\n"), SENT, TMO(300000),
		S("250 ok\r\n"), C("DATA\r\n"), SENT, TMO(300000),
		S("250 ok\r\n"), C("[DONE][CLOSE]"), TMO(0))},
	{"replies before the send is acknowledged", .manual = true, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_NOPIPE), C(""), SENT, C("[READY]"),
		START(&msg_two), C(MAIL_TWO),
		S("250 ok\r\n"), C(""), SENT, C(RCPT_X),
		S("550 no\r\n"), C(""), SENT, C(RCPT_Y),
		S("550 no\r\n"), C("[DONE]"), SENT, C("RSET\r\n"),
		S("250 ok\r\n"), C(""), SENT, C("[READY]"))},
	{"pipelined replies before the batch is acknowledged", .manual = true, .steps = STEPS(
		S(GREET), C(EHLO), SENT, S(EHLO_FULL), C("[READY]"),
		START(&msg_two), C(BATCH_TWO),
		S("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"), C(""), TMO(600000),
		SENT, C("[BODY]"), TMO(600000),
		S("250 early\r\n"), C("[DONE]"), SENT, C("[READY]"),
		RES(0, 250, "2.0.0", DOT, "250 early"))},
	{"a reply to a command not yet sent", .manual = true, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_NOPIPE), C(""), SENT, C("[READY]"),
		START(&msg_one), C("MAIL FROM:<a@example.org> SIZE=10\r\n"),
		S("250 ok\r\n250 ok\r\n"), C("[DONE][CLOSE]"),
		RES(0, 451, "4.5.0", RCPT, "451 4.5.0 Unexpected reply from server: 250 ok"))},
};

static void test_endings(void **state)
{
	run_dialogues(endings, N_ELEMS(endings));
}

/* ---- EHLO keywords --------------------------------------------------------------- */

static void test_ehlo_keywords(void **state)
{
	static const struct {
		const char *name;
		const char *reply;
		unsigned ext;
		uint64_t size;
		unsigned auth;       /* 1 << enum smtp_client_auth */
	} cases[] = {
		{"everything, any case",
		 "250-mx.example Hello\r\n250-pipelining\r\n250-Size 52428800\r\n"
		 "250-8bitmime\r\n250-SMTPUTF8\r\n250-STARTTLS\r\n250-CHUNKING\r\n"
		 "250-AUTH PLAIN LOGIN\r\n250-DSN\r\n250 EnhancedStatusCodes\r\n",
		 0x1ff, 52428800, 1u << SMTPC_AUTH_PLAIN | 1u << SMTPC_AUTH_LOGIN},
		{"AUTH: every mechanism we know, among others, any case",
		 "250-mx\r\n250-AUTH GSSAPI xoauth2 CRAM-MD5 Login PLAIN NTLM\r\n250 8BITMIME\r\n",
		 SMTPC_EXT_AUTH | SMTPC_EXT_8BITMIME, 0,
		 1u << SMTPC_AUTH_PLAIN | 1u << SMTPC_AUTH_LOGIN | 1u << SMTPC_AUTH_XOAUTH2},
		{"AUTH= (pre-RFC 4954 form)", "250-mx\r\n250 AUTH=LOGIN PLAIN\r\n", SMTPC_EXT_AUTH, 0,
		 1u << SMTPC_AUTH_PLAIN | 1u << SMTPC_AUTH_LOGIN},
		{"AUTH and AUTH= both", "250-mx\r\n250-AUTH LOGIN\r\n250 AUTH=XOAUTH2\r\n",
		 SMTPC_EXT_AUTH, 0, 1u << SMTPC_AUTH_LOGIN | 1u << SMTPC_AUTH_XOAUTH2},
		{"AUTH without mechanisms", "250-mx\r\n250 AUTH\r\n", SMTPC_EXT_AUTH, 0, 0},
		{"AUTH of unknown mechanisms only", "250-mx\r\n250 AUTH CRAM-MD5 PLAINX LOGI\r\n",
		 SMTPC_EXT_AUTH, 0, 0},
		{"AUTHX is not AUTH", "250-mx\r\n250 AUTHX PLAIN\r\n", 0, 0, 0},
		{"AUTH in a refused EHLO", "550-mx\r\n550 AUTH PLAIN\r\n", 0, 0, 0},
		{"none", "250 mx.example\r\n", 0, 0, 0},
		{"first line is the domain, not a keyword", "250 PIPELINING\r\n", 0, 0, 0},
		{"SIZE without a number", "250-mx\r\n250 SIZE\r\n", SMTPC_EXT_SIZE, 0, 0},
		{"SIZE 0", "250-mx\r\n250 SIZE 0\r\n", SMTPC_EXT_SIZE, 0, 0},
		{"SIZE junk", "250-mx\r\n250 SIZE abc\r\n", SMTPC_EXT_SIZE, 0, 0},
		{"SIZE overflow", "250-mx\r\n250 SIZE 99999999999999999999999\r\n",
		 SMTPC_EXT_SIZE, 0, 0},
		{"SIZE max", "250-mx\r\n250 SIZE 18446744073709551615\r\n", SMTPC_EXT_SIZE,
		 UINT64_MAX, 0},
		{"prefixes are not keywords",
		 "250-mx\r\n250-PIPELININGX\r\n250-DSNX\r\n250-SIZED 5\r\n250 X-DSN\r\n", 0, 0, 0},
		{"keyword with parameters", "250-mx\r\n250 DSN foo\r\n", SMTPC_EXT_DSN, 0, 0},
		{"bare LF", "250-mx\n250-DSN\n250 CHUNKING\n",
		 SMTPC_EXT_DSN | SMTPC_EXT_CHUNKING, 0, 0},
		{"refused EHLO offers nothing",
		 "550-mx\r\n550-PIPELINING\r\n550 DSN\r\n", 0, 0, 0},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct h *h = malloc(sizeof(*h));
		assert_non_null(h);
		struct smtp_client_params p = {.helo_name = HELO_NAME};
		h_init(h, cases[i].name, &p);
		h_server(h, GREET);
		h_server(h, cases[i].reply);
		if (h->c.esmtp == false) {
			CHECK_STR(cases[i].name, h->log, EHLO HELO);
			h_server(h, "250 ok\r\n");
		}
		CHECK_INT(cases[i].name, h->c.ext, cases[i].ext);
		CHECK_INT(cases[i].name, h->c.max_size, cases[i].size);
		CHECK_INT(cases[i].name, h->c.auth_mechs, cases[i].auth);
		CHECK_STR(cases[i].name, h->c.greeting_name, "mx.example");
		assert_false(h->closed);
		smtp_client_free(&h->c);
		free(h);
	}
}

/* ---- results from replies ------------------------------------------------------------ */

/* The reply to the one RCPT of msg_one becomes the recipient's result. */
static void test_reply_results(void **state)
{
	static const struct {
		const char *name;
		const char *reply;
		int code;
		const char *status, *text;
	} cases[] = {
		{"enhanced", "550 5.1.1 No such user\r\n", 550, "5.1.1", "550 5.1.1 No such user"},
		{"none", "550 No such user\r\n", 550, "5.0.0", "550 No such user"},
		{"4xx none", "450 busy\r\n", 450, "4.0.0", "450 busy"},
		{"4xx", "450 4.2.2 Mailbox full\r\n", 450, "4.2.2", "450 4.2.2 Mailbox full"},
		{"class mismatch", "550 4.1.1 odd\r\n", 550, "5.0.0", "550 4.1.1 odd"},
		{"class mismatch 4xx", "452 5.2.2 full\r\n", 452, "4.0.0", "452 5.2.2 full"},
		{"3-digit detail", "550 5.1.10 Recipient not found\r\n", 550, "5.1.10",
		 "550 5.1.10 Recipient not found"},
		{"3-digit subject", "550 5.123.456 x\r\n", 550, "5.123.456", "550 5.123.456 x"},
		{"4-digit detail", "550 5.1.1000 x\r\n", 550, "5.0.0", "550 5.1.1000 x"},
		{"glued text", "550 5.1.1x y\r\n", 550, "5.0.0", "550 5.1.1x y"},
		{"two parts", "550 5.1 x\r\n", 550, "5.0.0", "550 5.1 x"},
		{"empty subject", "550 5..1 x\r\n", 550, "5.0.0", "550 5..1 x"},
		{"status only", "550 5.7.1\r\n", 550, "5.7.1", "550 5.7.1"},
		{"code only", "550\r\n", 550, "5.0.0", "550"},
		{"code and space", "550 \r\n", 550, "5.0.0", "550"},
		{"multi-line, repeated status",
		 "550-5.1.1 a\r\n550-5.1.1 b\r\n550 5.1.1 c\r\n", 550, "5.1.1", "550 5.1.1 a b c"},
		{"multi-line, empty lines", "550-first\r\n550-\r\n550 \r\n", 550,
		 "5.0.0", "550 first"},
		{"multi-line, other status kept",
		 "550-5.1.1 a\r\n550 5.7.1 b\r\n", 550, "5.1.1", "550 5.1.1 a 5.7.1 b"},
		{"multi-line, code of the first line",
		 "550-5.1.1 a\r\n551 5.1.1 b\r\n", 550, "5.1.1", "550 5.1.1 a b"},
		{"control characters", "550 a\tb\x01" "c\r\n", 550, "5.0.0", "550 a b c"},
		{"CR inside", "550 a\rb\r\n", 550, "5.0.0", "550 a b"},
		{"bare LF", "554 5.7.1 spam\n", 554, "5.7.1", "554 5.7.1 spam"},
		{"8-bit text kept", "550 5.1.1 \xc3\xa9t\xc3\xa9\r\n", 550, "5.1.1",
		 "550 5.1.1 \xc3\xa9t\xc3\xa9"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char name[128];
		snprintf(name, sizeof(name), "%s", cases[i].name);
		struct h *h = malloc(sizeof(*h));
		assert_non_null(h);
		struct smtp_client_params p = {.helo_name = HELO_NAME};
		h_init(h, name, &p);
		h_server(h, GREET);
		h_server(h, "250-mx\r\n250 PIPELINING\r\n");
		h->nrcpt = 1;
		smtp_client_start(&h->c, &msg_one, h->res);
		h_poll(h);
		h_server(h, "250 ok\r\n");
		h_server(h, cases[i].reply);
		h_server(h, "554 5.5.1 no valid recipients\r\n");
		const struct smtp_client_result *r = &h->res[0];
		CHECK_INT(name, r->code, cases[i].code);
		CHECK_STR(name, r->status, cases[i].status);
		CHECK_STR(name, r->text, cases[i].text);
		CHECK_STR(name, smtp_client_stage_name(r->stage), "rcpt");
		smtp_client_free(&h->c);
		free(h);
	}
}

/* ---- reply caps ------------------------------------------------------------------ */

/* A reply of lines lines of octets octets each, line end included: code,
 * "-" on all but the last, then letters. malloc'd. */
static char *make_reply(const char *code, unsigned lines, size_t octets, bool bare_lf)
{
	size_t end = bare_lf ? 1 : 2;
	assert_true(octets >= 4 + end);
	char *r = malloc((size_t)lines * octets + 1), *p = r;
	assert_non_null(r);
	for (unsigned i = 0; i < lines; i++) {
		memcpy(p, code, 3);
		p[3] = i + 1 < lines ? '-' : ' ';
		for (size_t k = 4; k < octets - end; k++)
			p[k] = (char)('a' + (i + k) % 26);
		memcpy(p + octets - end, "\r\n" + (2 - end), end);
		p += octets;
	}
	*p = '\0';
	return r;
}

#define CAP_LINE "451 4.4.2 Reply line from the next hop longer than 2048 octets"
#define CAP_LINES "451 4.4.2 Reply from the next hop longer than 100 lines"
#define CAP_OCTETS "451 4.4.2 Reply from the next hop longer than 16384 octets"

/* The reply to msg_two's first RCPT: within the caps it is cut to the
 * result's size, consumed whole, and the dialogue stays in step (the
 * reply to the dot is as long); beyond them the session ends, the open
 * recipients deferred with 4.4.2. Whole, one byte at a time and split
 * around the limits. */
static void test_reply_caps(void **state)
{
	static const struct {
		const char *name;
		unsigned lines;
		size_t octets;
		bool bare_lf;
		const char *error;   /* NULL: within the caps */
	} cases[] = {
		{"one line at the limit", 1, SMTPC_REPLY_LINE_MAX, false, NULL},
		{"one line at the limit, bare LF", 1, SMTPC_REPLY_LINE_MAX, true, NULL},
		{"one line over", 1, SMTPC_REPLY_LINE_MAX + 1, false, CAP_LINE},
		{"one line over, bare LF", 1, SMTPC_REPLY_LINE_MAX + 1, true, CAP_LINE},
		{"last of three lines over", 3, SMTPC_REPLY_LINE_MAX + 1, false, CAP_LINE},
		{"100 lines", SMTPC_REPLY_LINES_MAX, 20, false, NULL},
		{"101 lines", SMTPC_REPLY_LINES_MAX + 1, 20, false, CAP_LINES},
		{"101 shortest lines", SMTPC_REPLY_LINES_MAX + 1, 6, false, CAP_LINES},
		{"16384 octets", 8, SMTPC_REPLY_OCTETS_MAX / 8, false, NULL},
		{"16389 octets", 9, 1821, false, CAP_OCTETS},
	};
	static const size_t splits[] = {SPLIT_WHOLE, 1, 2047, 2048, 2049, 16384, SPLIT_BYTES};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char *rcpt = make_reply("550", cases[i].lines, cases[i].octets, cases[i].bare_lf);
		char *dot = make_reply("250", cases[i].lines, cases[i].octets, cases[i].bare_lf);
		for (size_t k = 0; k < N_ELEMS(splits); k++) {
			struct h *h = malloc(sizeof(*h));
			assert_non_null(h);
			struct smtp_client_params p = {.helo_name = HELO_NAME};
			h_init(h, cases[i].name, &p);
			h_server(h, GREET);
			h_server(h, EHLO_FULL);
			log_clear(h);
			h->nrcpt = 2;
			smtp_client_start(&h->c, &msg_two, h->res);
			h_poll(h);
			h->split = splits[k];
			h_server(h, "250 ok\r\n");
			h_server(h, rcpt);
			char name[160];
			snprintf(name, sizeof(name), "%s (split %zu)", cases[i].name, splits[k]);
			if (cases[i].error) {
				CHECK_STR(name, h->log, BATCH_TWO "[DONE][CLOSE]");
				for (unsigned r = 0; r < 2; r++)
					check_result(h, "rcpt", &h->res[r], 451, "4.4.2", SMTPC_STAGE_RCPT,
						     cases[i].error);
				check_result(h, "session", &h->c.session_error, 451, "4.4.2",
					     SMTPC_STAGE_RCPT, cases[i].error);
			} else {
				h_server(h, "250 2.1.5 y ok\r\n354 go\r\n");
				CHECK_STR(name, h->log, BATCH_TWO "[BODY]");
				CHECK_INT(name, h->res[0].code, 550);
				CHECK_INT(name, strncmp(h->res[0].text + 4, rcpt + 4, 10), 0);
				h_server(h, dot);
				CHECK_STR(name, h->log, BATCH_TWO "[BODY][DONE][READY]");
				CHECK_INT(name, h->res[1].code, 250);
				CHECK_STR(name, smtp_client_stage_name(h->res[1].stage), "dot");
				CHECK_INT(name, h->c.session_error.code, 0);
				CHECK_INT(name, smtp_client_replies(&h->c), 7);
			}
			smtp_client_free(&h->c);
			free(h);
		}
		free(rcpt);
		free(dot);
	}
}

/* The line cap holds without a line end: the session ends at the first
 * octet past it, not when (if ever) the LF comes. The greeting is capped
 * too; after QUIT, an overlong reply just closes. */
static void test_reply_caps_elsewhere(void **state)
{
	char *line = malloc(SMTPC_REPLY_LINE_MAX + 100);
	assert_non_null(line);
	memset(line, 'a', SMTPC_REPLY_LINE_MAX + 99);
	memcpy(line, "220-", 4);
	line[SMTPC_REPLY_LINE_MAX + 99] = '\0';

	struct h *h = malloc(sizeof(*h));
	assert_non_null(h);
	struct smtp_client_params p = {.helo_name = HELO_NAME};
	h_init(h, "no line end", &p);
	struct smtp_client_event ev;
	size_t used = smtp_client_feed(&h->c, line, SMTPC_REPLY_LINE_MAX, &ev);
	CHECK_INT("at the cap", used, SMTPC_REPLY_LINE_MAX);
	CHECK_INT("at the cap", ev.type, SMTPC_EV_NEED_INPUT);
	used = smtp_client_feed(&h->c, line + SMTPC_REPLY_LINE_MAX, 99, &ev);
	CHECK_INT("past the cap", ev.type, SMTPC_EV_CLOSE);
	check_result(h, "greeting", &h->c.session_error, 451, "4.4.2", SMTPC_STAGE_GREETING,
		     CAP_LINE);
	smtp_client_free(&h->c);

	h_init(h, "after QUIT", &p);
	h_server(h, GREET);
	h_server(h, EHLO_FULL);
	log_clear(h);
	smtp_client_quit(&h->c);
	h_poll(h);
	char *bye = make_reply("221", 1, SMTPC_REPLY_LINE_MAX + 1, false);
	h_server(h, bye);
	CHECK_STR("after QUIT", h->log, "QUIT\r\n[CLOSE]");
	CHECK_INT("after QUIT", h->c.session_error.code, 0);
	smtp_client_free(&h->c);

	/* Each reply has its own count: three of 90 lines in a row. */
	h_init(h, "per reply", &p);
	char *greet = make_reply("220", 90, 100, false);
	char *ehlo = make_reply("250", 90, 100, false);
	h_server(h, greet);
	h_server(h, ehlo);
	CHECK_STR("per reply", h->log, EHLO "[READY]");
	CHECK_INT("per reply", smtp_client_replies(&h->c), 2);
	smtp_client_free(&h->c);
	free(greet);
	free(ehlo);
	free(bye);
	free(h);
	free(line);
}

/* ---- STARTTLS ---------------------------------------------------------------- */

#define EHLO_TLS                                                            \
	"250-mx.example\r\n"                                                \
	"250-PIPELINING\r\n"                                                \
	"250-SIZE 5000\r\n"                                                 \
	"250-STARTTLS\r\n"                                                  \
	"250 8BITMIME\r\n"
#define EXT_TLS                                                             \
	(SMTPC_EXT_PIPELINING | SMTPC_EXT_SIZE | SMTPC_EXT_STARTTLS | SMTPC_EXT_8BITMIME)
#define R220 "220 2.0.0 Ready to start TLS\r\n"
#define R454 "454 4.7.0 TLS not available due to temporary reason\r\n"
/* msg_two to a server without DSN */
#define BATCH_TWO_NODSN "MAIL FROM:<> SIZE=100 BODY=7BIT\r\n" \
	"RCPT TO:<x@example.net>\r\nRCPT TO:<y@example.net>\r\nDATA\r\n"

static const struct dialogue starttls[] = {
	{"offered: STARTTLS, EHLO again, pipelining inside TLS", .tls = SMTPC_TLS_WANT,
	 .steps = STEPS(
		S(GREET), C(EHLO), TLSST(UNTRIED),
		S(EHLO_TLS), C("STARTTLS\r\n"), TMO(300000), TLSST(UNTRIED),
		S(R220), C("[STARTTLS]"), TLSST(HANDSHAKE), TMO(300000),
		TLS_UP, C(EHLO), TLSST(ACTIVE), EXT(0, 0),
		S(EHLO_FULL), C("[READY]"), EXT(EXT_FULL, 10240000),
		START(&msg_two), C(BATCH_TWO),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"), C("[BODY]"),
		S("250 2.0.0 Ok: queued\r\n"), C("[DONE][READY]"),
		RES(0, 250, "2.0.0", DOT, "250 2.0.0 Ok: queued"),
		QUIT, C("QUIT\r\n"), S("221 2.0.0 Bye\r\n"), C("[CLOSE]"), NO_SESS)},
	{"required and offered", .tls = SMTPC_TLS_REQUIRE, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_TLS), C("STARTTLS\r\n"),
		S(R220), C("[STARTTLS]"), TLS_UP, C(EHLO),
		S("250-mx.example\r\n250 SIZE 9000\r\n"), C("[READY]"),
		EXT(SMTPC_EXT_SIZE, 9000), TLSST(ACTIVE),
		START(&msg_one), C("MAIL FROM:<a@example.org> SIZE=10\r\n"))},
	{"plaintext after the 220 is never a reply", .tls = SMTPC_TLS_WANT, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_TLS), C("STARTTLS\r\n"),
		S(R220 "250-mx.example\r\n250-PIPELINING\r\n250 DSN\r\n"), C("[STARTTLS]"),
		S("250 2.0.0 injected\r\n"), C(""),
		TLS_UP, C(EHLO),
		S("250-mx.example\r\n250 SIZE 1000\r\n"), C("[READY]"), EXT(SMTPC_EXT_SIZE, 1000),
		START(&msg_one), C("MAIL FROM:<a@example.org> SIZE=10\r\n"))},
	{"never STARTTLS twice", .tls = SMTPC_TLS_REQUIRE, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_TLS), C("STARTTLS\r\n"),
		S(R220), C("[STARTTLS]"), TLS_UP, C(EHLO),
		S(EHLO_TLS), C("[READY]"), EXT(EXT_TLS, 5000), TLSST(ACTIVE),
		START(&msg_two), C(BATCH_TWO_NODSN))},
	{"not offered, wanted: plaintext", .tls = SMTPC_TLS_WANT, .steps = STEPS(
		SESSION(EHLO_FULL), TLSST(NOT_OFFERED), EXT(EXT_FULL, 10240000),
		START(&msg_two), C(BATCH_TWO), NO_SESS)},
	{"not offered, required: 451 4.7.5", .tls = SMTPC_TLS_REQUIRE, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_FULL), C("[CLOSE]"), TLSST(NOT_OFFERED), TMO(0),
		SESS(451, "4.7.5", EHLO,
		     "451 4.7.5 TLS is required, but was not offered by the next hop"))},
	{"HELO server, required: 451 4.7.5", .tls = SMTPC_TLS_REQUIRE, .steps = STEPS(
		S(GREET), C(EHLO), S("502 5.5.2 what\r\n"), C(HELO),
		S("250 mx.example\r\n"), C("[CLOSE]"), TLSST(NOT_OFFERED),
		SESS(451, "4.7.5", EHLO,
		     "451 4.7.5 TLS is required, but was not offered by the next hop"))},
	{"HELO server, wanted: plaintext", .tls = SMTPC_TLS_WANT, .steps = STEPS(
		S(GREET), C(EHLO), S("502 5.5.2 what\r\n"), C(HELO),
		S("250 mx.example\r\n"), C("[READY]"), TLSST(NOT_OFFERED), EXT(0, 0))},
	{"454, wanted: plaintext with the first EHLO's extensions", .tls = SMTPC_TLS_WANT,
	 .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_TLS), C("STARTTLS\r\n"),
		S(R454), C("[READY]"), TLSST(REFUSED), EXT(EXT_TLS, 5000),
		START(&msg_two), C(BATCH_TWO_NODSN),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"), C("[BODY]"),
		S("250 2.0.0 Ok\r\n"), C("[DONE][READY]"), NO_SESS)},
	{"454, required: 451 4.7.5 naming the reply", .tls = SMTPC_TLS_REQUIRE, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_TLS), C("STARTTLS\r\n"),
		S(R454), C("[CLOSE]"), TLSST(REFUSED),
		SESS(451, "4.7.5", EHLO,
		     "451 4.7.5 TLS is required, but the next hop refused STARTTLS: "
		     "454 4.7.0 TLS not available due to temporary reason"))},
	{"554 to STARTTLS, required: still a 4xx", .tls = SMTPC_TLS_REQUIRE, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_TLS), C("STARTTLS\r\n"),
		S("554 5.7.3 no TLS for you\r\n"), C("[CLOSE]"),
		SESS(451, "4.7.5", EHLO,
		     "451 4.7.5 TLS is required, but the next hop refused STARTTLS: "
		     "554 5.7.3 no TLS for you"))},
	{"421 to STARTTLS", .tls = SMTPC_TLS_WANT, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_TLS), C("STARTTLS\r\n"),
		S("421 4.3.2 shutting down\r\n"), C("[CLOSE]"),
		SESS(421, "4.3.2", EHLO, "421 4.3.2 shutting down"))},
	{"not asked: no STARTTLS although offered", .steps = STEPS(
		SESSION(EHLO_TLS), TLSST(UNTRIED), EXT(EXT_TLS, 5000),
		START(&msg_two), C(BATCH_TWO_NODSN))},
	{"acknowledged late: STARTTLS after its send", .tls = SMTPC_TLS_WANT, .manual = true,
	 .steps = STEPS(
		S(GREET), C(EHLO), SENT, S(EHLO_TLS), C("STARTTLS\r\n"), SENT,
		S(R220), C("[STARTTLS]"), TLS_UP, C(EHLO), SENT,
		S(EHLO_FULL), C("[READY]"))},
	{"quit asked during the handshake: after the new EHLO", .tls = SMTPC_TLS_WANT,
	 .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_TLS), C("STARTTLS\r\n"),
		S(R220), C("[STARTTLS]"), QUIT, C(""), TLS_UP, C(EHLO),
		S(EHLO_FULL), C("QUIT\r\n"), S("221 Bye\r\n"), C("[CLOSE]"))},
};

static void test_starttls(void **state)
{
	run_dialogues(starttls, N_ELEMS(starttls));
}

/* A failure while the engine does the handshake ends the session. */
static void test_starttls_fail_during_handshake(void **state)
{
	struct h *h = malloc(sizeof(*h));
	assert_non_null(h);
	struct smtp_client_params p = {.helo_name = HELO_NAME, .tls = SMTPC_TLS_REQUIRE};
	h_init(h, "fail in handshake", &p);
	h_server(h, GREET);
	h_server(h, EHLO_TLS);
	h_server(h, R220);
	CHECK_STR("fail in handshake", h->log, EHLO "STARTTLS\r\n[STARTTLS]");
	assert_false(smtp_client_fail(&h->c, 451, "4.7.5", "451 4.7.5 handshake failed"));
	struct smtp_client_event ev;
	CHECK_INT("fail in handshake", smtp_client_feed(&h->c, "", 0, &ev), 0);
	CHECK_INT("fail in handshake", ev.type, SMTPC_EV_CLOSE);
	CHECK_STR("fail in handshake", h->c.session_error.text, "451 4.7.5 handshake failed");
	smtp_client_free(&h->c);
	free(h);
}


/* ---- loops (DESIGN B.6) ------------------------------------------------------------ */

static const struct smtp_client_rcpt rcpt_pm[] = {
	{"Postmaster", 0, NULL},
	{"postmaster@else.example", 0, NULL},
};

static const struct smtp_client_msg msg_pm = {
	.from = "", .rcpt = rcpt_pm, .nrcpt = 2,
};

static const struct dialogue loops[] = {
	{"greeting names us, any case", .helo = "MX.Example", .steps = STEPS(
		S(GREET), C("[CLOSE]"), LOOP(true),
		SESS(451, "4.4.6", GREETING,
		     "451 4.4.6 The next hop's greeting names our own hostname MX.Example"))},
	{"EHLO reply names us", .steps = STEPS(
		S("220 mx.example ESMTP\r\n"), C(EHLO),
		S("250-out.example Hello [192.0.2.1]\r\n250 PIPELINING\r\n"), C("[CLOSE]"), LOOP(true),
		SESS(451, "4.4.6", EHLO,
		     "451 4.4.6 The next hop's EHLO reply names our own hostname out.example"))},
	{"HELO reply names us", .steps = STEPS(
		S(GREET), C(EHLO), S("502 5.5.2 no\r\n"), C(HELO),
		S("250 OUT.EXAMPLE\r\n"), C("[CLOSE]"), LOOP(true),
		SESS(451, "4.4.6", EHLO,
		     "451 4.4.6 The next hop's HELO reply names our own hostname out.example"))},
	{"EHLO inside TLS names us", .tls = SMTPC_TLS_WANT, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_TLS), C("STARTTLS\r\n"),
		S(R220), C("[STARTTLS]"), TLS_UP, C(EHLO),
		S("250-out.example\r\n250 SIZE 1000\r\n"), C("[CLOSE]"), LOOP(true),
		SESS(451, "4.4.6", EHLO,
		     "451 4.4.6 The next hop's EHLO reply names our own hostname out.example"))},
	{"names that only look like ours", .steps = STEPS(
		S("220 out.example.net ESMTP\r\n"), C(EHLO),
		S("250-out.exampl\r\n250-xout.example\r\n250 PIPELINING\r\n"), C("[READY]"),
		LOOP(false), NO_SESS)},
	{"our name later in the greeting is no loop", .steps = STEPS(
		S("220 mx.example ESMTP for out.example\r\n"), C(EHLO),
		S("250-mx.example Hello out.example\r\n250 DSN\r\n"), C("[READY]"),
		LOOP(false))},
	{"a refusing greeting with our name is a refusal", .steps = STEPS(
		S("554 out.example no service\r\n"), C("[CLOSE]"), LOOP(false),
		SESS(554, "5.0.0", GREETING, "554 out.example no service"))},
	{"multi-line greeting: the first line names it", .steps = STEPS(
		S("220-out.example ESMTP\r\n220 mx.example\r\n"), C("[CLOSE]"), LOOP(true))},
	{"<Postmaster> goes out qualified with our name", .steps = STEPS(
		SESSION(EHLO_NOPIPE), START(&msg_pm), C("MAIL FROM:<> SIZE=0\r\n"),
		S("250 ok\r\n"), C("RCPT TO:<Postmaster@out.example>\r\n"),
		S("250 ok\r\n"), C("RCPT TO:<postmaster@else.example>\r\n"))},
};

static void test_loops(void **state)
{
	run_dialogues(loops, N_ELEMS(loops));
}

/* ---- deadlines from the parameters --------------------------------------------------- */

/* msg_two (100 octets) and msg_big (10240001) at 1000 octets a second. */
static const struct dialogue deadlines[] = {
	{"the parameters' timeouts", .manual = true, .command_ms = 3000, .data_ms = 20000,
	 .rate = 1000, .steps = STEPS(
		TMO(3000), STAGE(GREETING), REPLIES(0),
		S("220-mx.example\r\n"), REPLIES(0), S("220 ESMTP\r\n"), REPLIES(1),
		C(EHLO), SENT, TMO(3000), STAGE(EHLO),
		S("250-mx.example\r\n"), S("250-PIPELINING\r\n250-DSN\r\n"), REPLIES(1),
		S("250 8BITMIME\r\n"), C("[READY]"), REPLIES(2), TMO(0),
		START(&msg_two), C("MAIL FROM:<> BODY=7BIT RET=FULL\r\n" RCPT_X RCPT_Y "DATA\r\n"),
		SENT, TMO(3000), STAGE(MAIL),
		S("250 ok\r\n"), STAGE(RCPT), REPLIES(3), S("250 ok\r\n250 ok\r\n"), STAGE(DATA),
		TMO(3000), S("354 go\r\n"), C("[BODY]"), TMO(20100), STAGE(DOT), SENT, TMO(20100),
		S("250 ok\r\n"), C("[DONE][READY]"), TMO(0), REPLIES(7),
		START(&msg_big), C("MAIL FROM:<a@example.org>\r\nRCPT TO:<x@example.net>\r\n"
				   "RCPT TO:<y@example.net> NOTIFY=DELAY\r\nDATA\r\n"),
		SENT, S("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"), C("[BODY]"),
		TMO(20000 + 10240001), SENT,
		S("250 ok\r\n"), C("[DONE][READY]"),
		QUIT, C("QUIT\r\n"), TMO(3000))},
	{"no rate: data_timeout alone", .data_ms = 5000, .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_big),
		C("[DONE][READY]"),
		START(&msg_two), C(BATCH_TWO),
		S("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n"), C("[BODY]"), TMO(5000))},
	{"all recipients refused, the dot alone: data_timeout", .command_ms = 1000,
	 .data_ms = 7000, .rate = 1, .steps = STEPS(
		SESSION(EHLO_FULL), START(&msg_two), C(BATCH_TWO), TMO(1000),
		S("250 2.1.0 Ok\r\n550 5.1.1 no x\r\n550 5.1.1 no y\r\n354 go ahead\r\n"),
		C("[DONE].\r\n"), TMO(7000))},
};

static void test_deadline_params(void **state)
{
	run_dialogues(deadlines, N_ELEMS(deadlines));
}

/* ---- AUTH ------------------------------------------------------------------------ */

#define EHLO_AUTH                                                           \
	"250-mx.example\r\n"                                                \
	"250-PIPELINING\r\n"                                                \
	"250-AUTH LOGIN PLAIN XOAUTH2\r\n"                                  \
	"250 8BITMIME\r\n"
/* the same with STARTTLS */
#define EHLO_AUTH_TLS                                                       \
	"250-mx.example\r\n"                                                \
	"250-STARTTLS\r\n"                                                  \
	"250-AUTH LOGIN PLAIN XOAUTH2\r\n"                                  \
	"250 8BITMIME\r\n"
/* base64 of NUL AUTH_USER NUL AUTH_PASS */
#define B64_PLAIN "AHJlbGF5QGNvcnAuZXhhbXBsZQBzM2NyZXQgcHc="
#define B64_USER "cmVsYXlAY29ycC5leGFtcGxl"
#define B64_PASS "czNjcmV0IHB3"
/* base64 of "user=" AUTH_USER "^Aauth=Bearer " AUTH_TOKEN "^A^A" */
#define B64_XOAUTH2 "dXNlcj1yZWxheUBjb3JwLmV4YW1wbGUBYXV0aD1CZWFyZXIgZXlKMGVYQWkudG9rLWVuXzEBAQ=="
#define AUTH_PLAIN_LINE "AUTH PLAIN " B64_PLAIN "\r\n"
#define AUTH_XOAUTH2_LINE "AUTH XOAUTH2 " B64_XOAUTH2 "\r\n"
#define R235 "235 2.7.0 Authentication successful\r\n"
#define R334_USER "334 VXNlcm5hbWU6\r\n"
#define R334_PASS "334 UGFzc3dvcmQ6\r\n"
#define R535_TEXT "535 5.7.139 Authentication unsuccessful, the user credentials were incorrect."
#define R535 R535_TEXT "\r\n"
/* Microsoft's XOAUTH2 error challenge */
#define R334_JSON                                                           \
	"334 eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJodHRwczovL291dGxvb2su" \
	"b2ZmaWNlLmNvbS9TTVRQLlNlbmQifQ==\r\n"
#define MAIL_ONE "MAIL FROM:<a@example.org>\r\nRCPT TO:<z@example.net>\r\nDATA\r\n"
#define MAIL_ONE_TLS "MAIL FROM:<a@example.org> SIZE=10\r\n"
#define REFUSED(reply)                                                      \
	SESS(451, "4.7.8", AUTH, "451 4.7.8 Next hop refused our credentials: " reply)

static const struct dialogue auths[] = {
	{"PLAIN: the initial response, 235, then the transaction", .auth = SMTPC_AUTH_PLAIN,
	 .steps = STEPS(
		S(GREET), C(EHLO), AUTHST(UNTRIED),
		S(EHLO_AUTH), C(AUTH_PLAIN_LINE), AUTHST(SENT), TMO(300000),
		S(R235), C("[READY]"), AUTHST(OK),
		EXT(SMTPC_EXT_PIPELINING | SMTPC_EXT_AUTH | SMTPC_EXT_8BITMIME, 0),
		START(&msg_one), C(MAIL_ONE),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"), C("[BODY]"),
		S("250 2.0.0 Ok\r\n"), C("[DONE][READY]"),
		RES(0, 250, "2.0.0", DOT, "250 2.0.0 Ok"), NO_SESS)},
	{"LOGIN: user name and password, each after its 334", .auth = SMTPC_AUTH_LOGIN,
	 .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C("AUTH LOGIN\r\n"),
		S(R334_USER), C(B64_USER "\r\n"), AUTHST(SENT),
		S(R334_PASS), C(B64_PASS "\r\n"),
		S(R235), C("[READY]"), AUTHST(OK), START(&msg_one), C(MAIL_ONE), NO_SESS)},
	{"XOAUTH2: 235", .auth = SMTPC_AUTH_XOAUTH2, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C(AUTH_XOAUTH2_LINE),
		S(R235), C("[READY]"), AUTHST(OK), START(&msg_one), C(MAIL_ONE), NO_SESS)},
	{"PLAIN: 535 ends the session with a 4xx", .auth = SMTPC_AUTH_PLAIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C(AUTH_PLAIN_LINE),
		S(R535), C("[CLOSE]"), AUTHST(REFUSED), TMO(0),
		AUTHREPLY(535, "5.7.139", R535_TEXT), REFUSED(R535_TEXT))},
	{"LOGIN: 535 after the password", .auth = SMTPC_AUTH_LOGIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C("AUTH LOGIN\r\n"),
		S(R334_USER), C(B64_USER "\r\n"), S(R334_PASS), C(B64_PASS "\r\n"),
		S(R535), C("[CLOSE]"), AUTHREPLY(535, "5.7.139", R535_TEXT), REFUSED(R535_TEXT))},
	{"LOGIN: 535 to the user name", .auth = SMTPC_AUTH_LOGIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C("AUTH LOGIN\r\n"),
		S(R334_USER), C(B64_USER "\r\n"),
		S("535 5.7.8 Error: authentication failed\r\n"), C("[CLOSE]"),
		REFUSED("535 5.7.8 Error: authentication failed"))},
	{"LOGIN: 504 to AUTH itself", .auth = SMTPC_AUTH_LOGIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C("AUTH LOGIN\r\n"),
		S("504 5.5.4 Unrecognized authentication type\r\n"), C("[CLOSE]"),
		AUTHST(REFUSED), REFUSED("504 5.5.4 Unrecognized authentication type"))},
	{"LOGIN: a third 334 is not answered", .auth = SMTPC_AUTH_LOGIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C("AUTH LOGIN\r\n"),
		S(R334_USER), C(B64_USER "\r\n"), S(R334_PASS), C(B64_PASS "\r\n"),
		S("334 what\r\n"), C("[CLOSE]"), AUTHST(REFUSED),
		SESS(451, "4.7.0", AUTH,
		     "451 4.7.0 Unexpected AUTH challenge from the next hop: 334 what"))},
	{"XOAUTH2: 334 error challenge, an empty response, then 535",
	 .auth = SMTPC_AUTH_XOAUTH2, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C(AUTH_XOAUTH2_LINE),
		S(R334_JSON), C("\r\n"), AUTHST(SENT), TMO(300000),
		S("535 5.7.3 Authentication unsuccessful\r\n"), C("[CLOSE]"),
		AUTHREPLY(535, "5.7.3", "535 5.7.3 Authentication unsuccessful"),
		REFUSED("535 5.7.3 Authentication unsuccessful"))},
	{"XOAUTH2: a second 334 is not answered", .auth = SMTPC_AUTH_XOAUTH2, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C(AUTH_XOAUTH2_LINE),
		S(R334_JSON), C("\r\n"), S("334 \r\n"), C("[CLOSE]"),
		SESS(451, "4.7.0", AUTH, "451 4.7.0 Unexpected AUTH challenge from the next hop: 334"))},
	{"PLAIN: a 334 after the initial response is not answered", .auth = SMTPC_AUTH_PLAIN,
	 .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C(AUTH_PLAIN_LINE),
		S("334 \r\n"), C("[CLOSE]"),
		SESS(451, "4.7.0", AUTH, "451 4.7.0 Unexpected AUTH challenge from the next hop: 334"))},
	{"multi-line 535 joined", .auth = SMTPC_AUTH_PLAIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C(AUTH_PLAIN_LINE),
		S("535-5.7.8 Username and Password not accepted.\r\n"
		  "535 5.7.8 https://support.example/BadCredentials\r\n"), C("[CLOSE]"),
		REFUSED("535 5.7.8 Username and Password not accepted. "
			"https://support.example/BadCredentials"))},
	{"454 temporary failure: a 4xx naming it", .auth = SMTPC_AUTH_LOGIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C("AUTH LOGIN\r\n"),
		S("454 4.7.0 Temporary authentication failure\r\n"), C("[CLOSE]"),
		AUTHST(REFUSED), AUTHREPLY(454, "4.7.0", "454 4.7.0 Temporary authentication failure"),
		SESS(451, "4.7.0", AUTH, "451 4.7.0 Next hop could not authenticate us: "
					 "454 4.7.0 Temporary authentication failure"))},
	{"432 4.3.2 concurrency limit", .auth = SMTPC_AUTH_LOGIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C("AUTH LOGIN\r\n"), S(R334_USER), C(B64_USER "\r\n"),
		S(R334_PASS), C(B64_PASS "\r\n"),
		S("432 4.3.2 Concurrent connections limit exceeded\r\n"), C("[CLOSE]"),
		AUTHREPLY(432, "4.3.2", "432 4.3.2 Concurrent connections limit exceeded"),
		SESS(451, "4.7.0", AUTH, "451 4.7.0 Next hop could not authenticate us: "
					 "432 4.3.2 Concurrent connections limit exceeded"))},
	{"421 to AUTH: the 421 itself", .auth = SMTPC_AUTH_XOAUTH2, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C(AUTH_XOAUTH2_LINE),
		S("421 4.3.2 Service not available, closing channel\r\n"), C("[CLOSE]"),
		AUTHST(REFUSED), AUTHREPLY(421, "4.3.2", "421 4.3.2 Service not available, closing channel"),
		SESS(421, "4.3.2", AUTH, "421 4.3.2 Service not available, closing channel"))},
	{"no AUTH offered", .auth = SMTPC_AUTH_LOGIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_FULL), C("[CLOSE]"), AUTHST(NOT_OFFERED), TMO(0),
		SESS(451, "4.7.0", AUTH, "451 4.7.0 Next hop does not offer AUTH"))},
	{"another mechanism offered", .auth = SMTPC_AUTH_LOGIN, .steps = STEPS(
		S(GREET), C(EHLO), S("250-mx.example\r\n250 AUTH PLAIN XOAUTH2\r\n"), C("[CLOSE]"),
		AUTHST(NOT_OFFERED),
		SESS(451, "4.7.0", AUTH, "451 4.7.0 Next hop does not offer AUTH LOGIN"))},
	{"AUTH= form is understood", .auth = SMTPC_AUTH_LOGIN, .steps = STEPS(
		S(GREET), C(EHLO), S("250-mx.example\r\n250 AUTH=LOGIN\r\n"), C("AUTH LOGIN\r\n"))},
	{"HELO server: no AUTH", .auth = SMTPC_AUTH_PLAIN, .steps = STEPS(
		S(GREET), C(EHLO), S("502 5.5.2 what\r\n"), C(HELO),
		S("250 mx.example\r\n"), C("[CLOSE]"), AUTHST(NOT_OFFERED),
		SESS(451, "4.7.0", AUTH, "451 4.7.0 Next hop does not offer AUTH"))},
	{"STARTTLS first; AUTH from the second EHLO", .tls = SMTPC_TLS_WANT, .auth_tls = true,
	 .auth = SMTPC_AUTH_PLAIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH_TLS), C("STARTTLS\r\n"), AUTHST(UNTRIED),
		S(R220), C("[STARTTLS]"), TLS_UP, C(EHLO),
		S("250-mx.example\r\n250-SIZE 9000\r\n250 AUTH PLAIN\r\n"), C(AUTH_PLAIN_LINE),
		S(R235), C("[READY]"), AUTHST(OK), START(&msg_one), C(MAIL_ONE_TLS))},
	{"what the first EHLO offered does not count after TLS", .tls = SMTPC_TLS_REQUIRE,
	 .auth_tls = true, .auth = SMTPC_AUTH_LOGIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH_TLS), C("STARTTLS\r\n"),
		S(R220), C("[STARTTLS]"), TLS_UP, C(EHLO),
		S("250-mx.example\r\n250 SIZE 9000\r\n"), C("[CLOSE]"), AUTHST(NOT_OFFERED),
		SESS(451, "4.7.0", AUTH, "451 4.7.0 Next hop does not offer AUTH"))},
	{"withheld: no STARTTLS offered", .tls = SMTPC_TLS_WANT, .auth_tls = true,
	 .auth = SMTPC_AUTH_LOGIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C("[CLOSE]"), AUTHST(WITHHELD), TLSST(NOT_OFFERED),
		SESS(451, "4.7.10", AUTH, "451 4.7.10 Credentials withheld: no TLS to the next hop"))},
	{"withheld: STARTTLS refused", .tls = SMTPC_TLS_WANT, .auth_tls = true,
	 .auth = SMTPC_AUTH_PLAIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH_TLS), C("STARTTLS\r\n"),
		S(R454), C("[CLOSE]"), AUTHST(WITHHELD), TLSST(REFUSED),
		SESS(451, "4.7.10", AUTH, "451 4.7.10 Credentials withheld: no TLS to the next hop"))},
	{"withheld: TLS never asked for", .auth_tls = true, .auth = SMTPC_AUTH_PLAIN,
	 .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH_TLS), C("[CLOSE]"), AUTHST(WITHHELD),
		SESS(451, "4.7.10", AUTH, "451 4.7.10 Credentials withheld: no TLS to the next hop"))},
	{"tls none: AUTH in plaintext", .auth = SMTPC_AUTH_PLAIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH_TLS), C(AUTH_PLAIN_LINE),
		S(R235), C("[READY]"), AUTHST(OK), TLSST(UNTRIED))},
	{"STARTTLS refused, TLS not needed for AUTH: plaintext AUTH", .tls = SMTPC_TLS_WANT,
	 .auth = SMTPC_AUTH_XOAUTH2, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH_TLS), C("STARTTLS\r\n"),
		S(R454), C(AUTH_XOAUTH2_LINE), S(R235), C("[READY]"))},
	{"quit before EHLO's reply: no credentials sent", .auth = SMTPC_AUTH_PLAIN,
	 .steps = STEPS(
		S(GREET), C(EHLO), QUIT, C(""), S(EHLO_AUTH), C("QUIT\r\n"),
		S("221 Bye\r\n"), C("[CLOSE]"), AUTHST(UNTRIED))},
	{"quit during AUTH: after its 235", .auth = SMTPC_AUTH_LOGIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C("AUTH LOGIN\r\n"), QUIT, C(""),
		S(R334_USER), C(B64_USER "\r\n"), S(R334_PASS), C(B64_PASS "\r\n"),
		S(R235), C("QUIT\r\n"), S("221 Bye\r\n"), C("[CLOSE]"), AUTHST(OK))},
	{"acknowledged late: each response after its send", .auth = SMTPC_AUTH_LOGIN,
	 .manual = true, .steps = STEPS(
		S(GREET), C(EHLO), SENT, S(EHLO_AUTH), C("AUTH LOGIN\r\n"), SENT,
		S(R334_USER), C(B64_USER "\r\n"), SENT, S(R334_PASS), C(B64_PASS "\r\n"), SENT,
		S(R235), C("[READY]"))},
	{"a challenge before our response was handed out", .auth = SMTPC_AUTH_LOGIN,
	 .manual = true, .steps = STEPS(
		S(GREET), C(EHLO), SENT, S(EHLO_AUTH), C("AUTH LOGIN\r\n"),
		S(R334_USER), C(""), S(R334_PASS), C("[CLOSE]"), AUTHST(SENT),
		SESS(451, "4.5.0", AUTH, "451 4.5.0 Unexpected reply from server: 334 UGFzc3dvcmQ6"))},
	{"credentials go only once per session", .auth = SMTPC_AUTH_PLAIN, .steps = STEPS(
		S(GREET), C(EHLO), S(EHLO_AUTH), C(AUTH_PLAIN_LINE), S(R235), C("[READY]"),
		START(&msg_one), C(MAIL_ONE),
		S("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"), C("[BODY]"),
		S("250 2.0.0 Ok\r\n"), C("[DONE][READY]"),
		START(&msg_one), C(MAIL_ONE))},
	{"greeting refused: no AUTH state", .auth = SMTPC_AUTH_PLAIN, .steps = STEPS(
		S("554 5.3.2 go away\r\n"), C("[CLOSE]"), AUTHST(UNTRIED),
		SESS(554, "5.3.2", GREETING, "554 5.3.2 go away"))},
	{"421 greeting with credentials", .auth = SMTPC_AUTH_PLAIN, .steps = STEPS(
		S("421 4.3.2 The maximum number of concurrent server connections has exceeded a limit\r\n"),
		C("[CLOSE]"), AUTHST(UNTRIED),
		SESS(421, "4.3.2", GREETING,
		     "421 4.3.2 The maximum number of concurrent server connections has exceeded a limit"))},
};

static void test_auth(void **state)
{
	run_dialogues(auths, N_ELEMS(auths));
}

/* A token that makes the AUTH line longer than RFC 4954 allows goes after
 * the server's 334 instead of as the initial response. */
static void test_auth_long_token(void **state)
{
	enum { TOKEN_LEN = 12000 };
	char *token = malloc(TOKEN_LEN + 1);
	assert_non_null(token);
	for (size_t i = 0; i < TOKEN_LEN; i++)
		token[i] = (char)('A' + i % 26);
	token[TOKEN_LEN] = '\0';
	struct h *h = malloc(sizeof(*h));
	assert_non_null(h);
	struct smtp_client_params p = {.helo_name = HELO_NAME, .auth = SMTPC_AUTH_XOAUTH2,
				       .auth_user = AUTH_USER, .auth_secret = token};
	h_init(h, "long token", &p);
	h_server(h, GREET);
	h_server(h, EHLO_AUTH);
	CHECK_STR("long token", h->log, EHLO "AUTH XOAUTH2\r\n");
	log_clear(h);
	h_server(h, "334 \r\n");
	/* base64 of the whole response, in one line */
	size_t want = ((20 + strlen(AUTH_USER) + TOKEN_LEN + 2) / 3) * 4 + 2;
	CHECK_INT("long token", h->log_len, want);
	CHECK_INT("long token", strchr(h->log, '\r') - h->log, want - 2);
	log_clear(h);
	h_server(h, R334_JSON);
	CHECK_STR("long token", h->log, "\r\n");
	log_clear(h);
	h_server(h, R235);
	CHECK_STR("long token", h->log, "[READY]");
	smtp_client_free(&h->c);
	free(h);
	free(token);
}

/* The command buffer keeps no copy of the credentials once they are sent,
 * and what goes out for the secret never shows in the reply texts. */
static void test_auth_wipes_sent_credentials(void **state)
{
	static const enum smtp_client_auth mechs[] = {SMTPC_AUTH_PLAIN, SMTPC_AUTH_LOGIN,
						      SMTPC_AUTH_XOAUTH2};
	for (size_t i = 0; i < N_ELEMS(mechs); i++) {
		struct h *h = malloc(sizeof(*h));
		assert_non_null(h);
		struct smtp_client_params p = {.helo_name = HELO_NAME, .auth = mechs[i],
					       .auth_user = AUTH_USER, .auth_secret = AUTH_PASS};
		const char *name = smtp_client_auth_name(mechs[i]);
		h_init(h, name, &p);
		h_server(h, GREET);
		h_server(h, EHLO_AUTH);
		if (mechs[i] == SMTPC_AUTH_LOGIN) {
			h_server(h, R334_USER);
			h_server(h, R334_PASS);
		}
		assert_true(h->c.out_cap > 0);
		for (size_t k = 0; k < h->c.out_cap; k++)
			if (h->c.out[k] != 0)
				fail_msg("%s: byte %zu of the command buffer not wiped", name, k);
		h_server(h, R535);
		assert_null(strstr(h->c.session_error.text, AUTH_PASS));
		smtp_client_free(&h->c);
		free(h);
	}
}

static void test_auth_names(void **state)
{
	CHECK_STR("plain", smtp_client_auth_name(SMTPC_AUTH_PLAIN), "PLAIN");
	CHECK_STR("login", smtp_client_auth_name(SMTPC_AUTH_LOGIN), "LOGIN");
	CHECK_STR("xoauth2", smtp_client_auth_name(SMTPC_AUTH_XOAUTH2), "XOAUTH2");
	CHECK_STR("bad", smtp_client_auth_name((enum smtp_client_auth)9), "unknown");
}

/* ---- misc ---------------------------------------------------------------------- */

static void test_stage_names(void **state)
{
	static const struct {
		enum smtp_client_stage s;
		const char *want;
	} cases[] = {
		{SMTPC_STAGE_CONNECT, "connect"}, {SMTPC_STAGE_GREETING, "greeting"},
		{SMTPC_STAGE_EHLO, "ehlo"},       {SMTPC_STAGE_AUTH, "auth"},
		{SMTPC_STAGE_MAIL, "mail"},
		{SMTPC_STAGE_RCPT, "rcpt"},       {SMTPC_STAGE_DATA, "data"},
		{SMTPC_STAGE_DOT, "dot"},         {SMTPC_STAGE_LOCAL, "local"},
		{(enum smtp_client_stage)99, "unknown"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++)
		CHECK_STR(cases[i].want, smtp_client_stage_name(cases[i].s), cases[i].want);
}

/* After CLOSE the machine stays closed and consumes nothing. */
static void test_closed_stays_closed(void **state)
{
	struct smtp_client c;
	struct smtp_client_params p = {.helo_name = HELO_NAME};
	struct smtp_client_event ev;
	smtp_client_init(&c, &p);
	const char *in = "554 no\r\n220 hello\r\n";
	size_t used = smtp_client_feed(&c, in, strlen(in), &ev);
	CHECK_INT("closed", ev.type, SMTPC_EV_CLOSE);
	CHECK_INT("closed", used, 8);
	for (int k = 0; k < 3; k++) {
		used = smtp_client_feed(&c, in + 8, strlen(in) - 8, &ev);
		CHECK_INT("closed", ev.type, SMTPC_EV_CLOSE);
		CHECK_INT("closed", used, 0);
	}
	CHECK_INT("closed", smtp_client_timeout_ms(&c), 0);
	smtp_client_free(&c);
	smtp_client_free(&c); /* harmless twice */
}

/* The DSN duty passes on only when the server offered DSN. */
static void test_dsn_passed(void **state)
{
	static const struct {
		const char *ehlo;
		bool want;
	} cases[] = {
		{EHLO_FULL, true},
		{"250-mx\r\n250 PIPELINING\r\n", false},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct h *h = malloc(sizeof(*h));
		assert_non_null(h);
		struct smtp_client_params p = {.helo_name = HELO_NAME};
		h_init(h, "dsn", &p);
		h_server(h, GREET);
		h_server(h, cases[i].ehlo);
		CHECK_INT(cases[i].ehlo, smtp_client_dsn_passed(&h->c), cases[i].want);
		smtp_client_free(&h->c);
		free(h);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_transactions),
		cmocka_unit_test(test_next_behind_body),
		cmocka_unit_test(test_chunking),
		cmocka_unit_test(test_hellos),
		cmocka_unit_test(test_failures),
		cmocka_unit_test(test_aborts),
		cmocka_unit_test(test_local_refusals),
		cmocka_unit_test(test_endings),
		cmocka_unit_test(test_ehlo_keywords),
		cmocka_unit_test(test_reply_results),
		cmocka_unit_test(test_reply_caps),
		cmocka_unit_test(test_reply_caps_elsewhere),
		cmocka_unit_test(test_loops),
		cmocka_unit_test(test_deadline_params),
		cmocka_unit_test(test_starttls),
		cmocka_unit_test(test_starttls_fail_during_handshake),
		cmocka_unit_test(test_auth),
		cmocka_unit_test(test_auth_long_token),
		cmocka_unit_test(test_auth_wipes_sent_credentials),
		cmocka_unit_test(test_auth_names),
		cmocka_unit_test(test_stage_names),
		cmocka_unit_test(test_closed_stays_closed),
		cmocka_unit_test(test_dsn_passed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
