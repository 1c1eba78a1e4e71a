/* Unit tests for the SMTP server session state machine
 * (proto/smtp_server.c), driven through smtp_server_feed() by a small
 * harness that loops over events the way the engine does. Replies are
 * compared byte for byte with the texts of DESIGN B.3 / smtp_reply.h. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_server.h"

#define HOST "relay.corp.example"
#define IP "192.0.2.10"
#define CONNECTOR "Anonymous Relay"
#define T_FIXED 1795442520 /* Mon, 23 Nov 2026 14:02:00 +0000 */

#define BANNER "220 " HOST " Postern ESMTP service ready\r\n"
#define EHLO_REPLY(size_line)                                               \
	"250-" HOST " Hello [" IP "]\r\n"                                   \
	"250-PIPELINING\r\n"                                                \
	size_line "\r\n"                                                    \
	"250-8BITMIME\r\n"                                                  \
	"250-ENHANCEDSTATUSCODES\r\n"                                       \
	"250-DSN\r\n"                                                       \
	"250-CHUNKING\r\n"                                                  \
	"250 SMTPUTF8\r\n"
#define EHLO_OK EHLO_REPLY("250-SIZE 36700160")
#define HELO_OK "250 " HOST " Hello [" IP "]\r\n"
#define CRLF "\r\n"

/* ---- the engine-like harness ----------------------------------------- */

struct buf {
	char *p;
	size_t len, cap;
};

static void buf_add(struct buf *b, const char *p, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		b->cap = (b->len + n + 1) * 2;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void buf_clear(struct buf *b)
{
	b->len = 0;
	if (b->p)
		b->p[0] = '\0';
}

#define OUT_MAX 8192
#define IN_MAX (1 << 20)

struct h {
	struct smtp_server s;
	struct smtp_server_params p;
	char out[OUT_MAX];
	size_t outcap;
	char *in;               /* input not yet consumed */
	size_t inlen, in_max;   /* in_max: the most it ever held */
	struct buf log;         /* replies "sent" since the last take */
	struct buf msg;         /* message being received */
	struct buf stored;      /* last message handed to storage */
	struct buf at_begin;    /* reply buffer when DATA_BEGIN came */
	char hdr[1024];
	size_t hdrlen;
	char env_from[300];
	char env_rcpts[4096];   /* "a,b,c" at DATA_END */
	unsigned env_nrcpt;
	unsigned sends, flushes, begins, ends, rejects, closes, waits, starttls;
	unsigned forms;         /* 1 << smtp_chunk_form of every chunk seen */
	bool tls_refuse;        /* the starttls hook fails (454) */
	unsigned auth_events;
	char auth_user[300], auth_pass[300];
	int auth_answer;        /* 0 ok, 1 wrong, 2 temporary */
	char commands[2048];    /* what the command hook saw, "|"-joined */
	unsigned starttls_hook_calls;
	size_t max_out;
	bool closed, storing;
	bool defer_store, store_ok, store_full;
	unsigned msgno;
	/* rcpt_policy bookkeeping */
	unsigned policy_calls;
	char policy_last[300];
	/* reject hook bookkeeping (hook_reject) */
	unsigned reject_hooks;
	enum smtp_reject reject_why;
	char reject_reply[SMTP_REPLY_LINE_MAX];
	bool reject_rcpt;
};

static void h_send(struct h *h)
{
	buf_add(&h->log, h->s.out.p, h->s.out.len);
	h->sends++;
	smtp_server_sent(&h->s);
}

static void h_params_default(struct smtp_server_params *p)
{
	memset(p, 0, sizeof(*p));
	p->hostname = HOST;
	p->connector = CONNECTOR;
	p->max_message_size = 36700160;
	p->max_header_size = 0;
	p->max_recipients = 0;
	p->max_hop_count = 30;
	p->max_protocol_errors = 0;
	p->may_submit = true;
}

/* Starts a session; the engine sends the banner at once. */
static struct h *h_new_with(const struct smtp_server_params *p, size_t outcap)
{
	struct h *h = calloc(1, sizeof(*h));
	assert_non_null(h);
	h->p = *p;
	h->outcap = outcap;
	h->in = malloc(IN_MAX);
	assert_non_null(h->in);
	h->store_ok = true;
	smtp_server_init(&h->s, &h->p, IP, h->out, outcap);
	h_send(h);
	return h;
}

static struct h *h_new(void)
{
	struct smtp_server_params p;
	h_params_default(&p);
	return h_new_with(&p, OUT_MAX);
}

static void h_free(struct h *h)
{
	smtp_server_free(&h->s);
	free(h->in);
	free(h->log.p);
	free(h->msg.p);
	free(h->stored.p);
	free(h->at_begin.p);
	free(h);
}

static void snapshot_envelope(struct h *h)
{
	const struct smtp_envelope *e = &h->s.env;
	snprintf(h->env_from, sizeof(h->env_from), "%s", e->from ? e->from : "(null)");
	h->env_rcpts[0] = '\0';
	for (unsigned i = 0; i < e->nrcpt; i++) {
		if (i)
			strcat(h->env_rcpts, ",");
		strcat(h->env_rcpts, e->rcpt[i].addr);
	}
	h->env_nrcpt = e->nrcpt;
}

/* Runs the session over the pending input until it needs more, waits for
 * storage or closes: what the engine's completion handler does. */
static void h_run(struct h *h)
{
	for (unsigned iter = 0;; iter++) {
		if (iter > 10000000)
			fail_msg("session makes no progress");
		if (h->closed || h->storing)
			return;
		struct smtp_event ev;
		ev.type = (enum smtp_ev)-1;
		size_t n = smtp_server_feed(&h->s, h->in, h->inlen, &ev);
		assert_true(n <= h->inlen);
		assert_true(h->s.out.len <= h->outcap);
		if (h->s.out.len > h->max_out)
			h->max_out = h->s.out.len;
		switch (ev.type) {
		case SMTP_EV_NEED_INPUT:
			break;
		case SMTP_EV_FLUSH:
			h->flushes++;
			break;
		case SMTP_EV_DATA_BEGIN: {
			char id[32];
			h->begins++;
			buf_clear(&h->at_begin);
			buf_add(&h->at_begin, h->s.out.p, h->s.out.len);
			buf_clear(&h->msg);
			snprintf(id, sizeof(id), "MSG%u", ++h->msgno);
			h->hdrlen = smtp_server_begin_message(&h->s, id, T_FIXED,
							      h->hdr, sizeof(h->hdr));
			assert_int_not_equal(h->hdrlen, 0);
			break;
		}
		case SMTP_EV_DATA_CHUNK:
			/* The chunk lies in the consumed part of our input,
			 * unless it is the state machine's own stuffing. */
			if (ev.form == SMTP_CHUNK_STUFFING)
				assert_true(ev.data < h->in || ev.data >= h->in + IN_MAX);
			else
				assert_true(ev.data >= h->in && ev.data + ev.len <= h->in + n);
			assert_true(ev.len > 0);
			h->forms |= 1u << ev.form;
			buf_add(&h->msg, ev.data, ev.len);
			break;
		case SMTP_EV_DATA_END:
			h->ends++;
			buf_clear(&h->stored);
			buf_add(&h->stored, h->msg.p, h->msg.len);
			snapshot_envelope(h);
			break;
		case SMTP_EV_DATA_REJECT:
			h->rejects++;
			buf_clear(&h->msg);
			break;
		case SMTP_EV_CLOSE:
			h->closes++;
			break;
		case SMTP_EV_WAIT:
			h->waits++;
			break;
		case SMTP_EV_STARTTLS:
			h->starttls++;
			break;
		case SMTP_EV_AUTH:
			h->auth_events++;
			snprintf(h->auth_user, sizeof(h->auth_user), "%s", h->s.auth_user);
			snprintf(h->auth_pass, sizeof(h->auth_pass), "%s", h->s.auth_pass);
			assert_int_equal(h->s.state, SMTP_S_AUTH_CHECK);
			break;
		default:
			fail_msg("unknown event %d", (int)ev.type);
		}
		memmove(h->in, h->in + n, h->inlen - n);
		h->inlen -= n;
		switch (ev.type) {
		case SMTP_EV_NEED_INPUT:
			h_send(h);
			return;
		case SMTP_EV_FLUSH:
			h_send(h);
			break;
		case SMTP_EV_DATA_END:
			if (h->defer_store) {
				h->storing = true;
				h_send(h);
				return;
			}
			smtp_server_stored(&h->s, h->store_ok, h->store_full);
			break;
		case SMTP_EV_CLOSE:
			h_send(h);
			h->closed = true;
			return;
		case SMTP_EV_WAIT:
			h_send(h);
			return;
		case SMTP_EV_STARTTLS:
			/* As the engine does: the rest of the read is dropped. */
			h->inlen = 0;
			h_send(h);
			return;
		case SMTP_EV_AUTH: {
			/* Until the answer, feeding changes nothing. */
			struct smtp_event w;
			assert_int_equal(smtp_server_feed(&h->s, h->in, h->inlen, &w), 0);
			assert_int_equal(w.type, SMTP_EV_WAIT);
			smtp_server_auth_result(&h->s, h->auth_answer == 0, h->auth_answer == 2);
			assert_int_equal(h->s.auth_pass[0], 0);
			if (h->s.state == SMTP_S_CLOSING) {
				h_send(h);
				h->closed = true;
				return;
			}
			break;
		}
		default:
			break;
		}
	}
}

static void h_feed_n(struct h *h, const char *p, size_t n)
{
	if (h->closed)
		return;
	assert_true(h->inlen + n <= IN_MAX);
	memcpy(h->in + h->inlen, p, n);
	h->inlen += n;
	if (h->inlen > h->in_max)
		h->in_max = h->inlen;
	h_run(h);
}

static void h_feed(struct h *h, const char *s)
{
	h_feed_n(h, s, strlen(s));
}

static void h_feed_chunked(struct h *h, const char *p, size_t n, size_t chunk)
{
	for (size_t off = 0; off < n; off += chunk)
		h_feed_n(h, p + off, n - off < chunk ? n - off : chunk);
}

/* Storage finished (after defer_store). */
static void h_store_done(struct h *h, bool ok, bool full)
{
	assert_true(h->storing);
	h->storing = false;
	smtp_server_stored(&h->s, ok, full);
	h_run(h);
}

/* Compares and clears the replies sent since the last call. */
#define EXPECT(h, want)                                                     \
	do {                                                                \
		const char *w_ = (want);                                    \
		const char *g_ = (h)->log.p ? (h)->log.p : "";              \
		if (strcmp(g_, w_) != 0)                                    \
			fail_msg("line %d: replies\n--- got ---\n%s--- want ---\n%s", \
				 __LINE__, g_, w_);                         \
		buf_clear(&(h)->log);                                       \
	} while (0)

static struct h *h_ehlo(void)
{
	struct h *h = h_new();
	EXPECT(h, BANNER);
	h_feed(h, "EHLO client.example\r\n");
	EXPECT(h, EHLO_OK);
	return h;
}

/* ---- greeting, EHLO, HELO -------------------------------------------- */

static void test_banner(void **state)
{
	struct h *h = h_new();
	EXPECT(h, "220 relay.corp.example Postern ESMTP service ready\r\n");
	assert_int_equal(h->s.state, SMTP_S_GREETED);
	h_free(h);
}

static void test_ehlo(void **state)
{
	struct h *h = h_new();
	EXPECT(h, BANNER);
	h_feed(h, "EHLO client.example\r\n");
	EXPECT(h, "250-relay.corp.example Hello [192.0.2.10]\r\n"
		  "250-PIPELINING\r\n"
		  "250-SIZE 36700160\r\n"
		  "250-8BITMIME\r\n"
		  "250-ENHANCEDSTATUSCODES\r\n"
		  "250-DSN\r\n"
		  "250-CHUNKING\r\n"
		  "250 SMTPUTF8\r\n");
	assert_int_equal(h->s.state, SMTP_S_READY);
	assert_true(h->s.esmtp);
	assert_string_equal(h->s.helo, "client.example");
	h_free(h);
}

static void test_ehlo_size_variants(void **state)
{
	static const struct {
		const char *name;
		uint64_t max;
		bool bypass;
		const char *want;
	} cases[] = {
		{"limit", 1000, false, EHLO_REPLY("250-SIZE 1000")},
		{"no limit", 0, false, EHLO_REPLY("250-SIZE")},
		{"externally secured", 1000, true, EHLO_REPLY("250-SIZE")},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct smtp_server_params p;
		h_params_default(&p);
		p.max_message_size = cases[i].max;
		p.bypass_size_limit = cases[i].bypass;
		struct h *h = h_new_with(&p, OUT_MAX);
		buf_clear(&h->log);
		h_feed(h, "ehlo [192.0.2.10]\r\n");
		EXPECT(h, cases[i].want);
		h_free(h);
	}
}

static void test_helo(void **state)
{
	struct h *h = h_new();
	EXPECT(h, BANNER);
	h_feed(h, "HELO client.example\r\n");
	EXPECT(h, "250 relay.corp.example Hello [192.0.2.10]\r\n");
	assert_false(h->s.esmtp);
	/* HELO sessions get no ESMTP parameters. */
	h_feed(h, "MAIL FROM:<a@b.example> SIZE=10\r\n");
	EXPECT(h, "555 5.5.4 Unsupported parameter\r\n");
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example> NOTIFY=NEVER\r\n");
	EXPECT(h, "250 2.1.0 Sender OK\r\n555 5.5.4 Unsupported parameter\r\n");
	h_free(h);
}

static void test_bad_hello_argument(void **state)
{
	static const char *const cases[] = {
		"HELO\r\n", "EHLO\r\n", "EHLO   \r\n", "EHLO bad..name\r\n",
		"HELO -x.example\r\n", "EHLO a b\r\n", "EHLO [1.2.3.256]\r\n",
		"HELO .\r\n", "EHLO b\303\274cher.example\r\n",
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct h *h = h_new();
		buf_clear(&h->log);
		h_feed(h, cases[i]);
		if (strcmp(h->log.p, "501 5.5.4 Invalid domain name\r\n") != 0)
			fail_msg("%s: got %s", cases[i], h->log.p);
		buf_clear(&h->log);
		assert_int_equal(h->s.state, SMTP_S_GREETED);
		h_feed(h, "MAIL FROM:<a@b.example>\r\n");
		EXPECT(h, "503 5.5.1 Bad sequence of commands\r\n");
		h_free(h);
	}
}

/* ---- sequencing and simple commands ----------------------------------- */

static void test_sequence_errors(void **state)
{
	static const struct {
		const char *name;
		const char *setup;   /* after the banner */
		const char *cmd;
		const char *want;
	} cases[] = {
		{"MAIL before EHLO", "", "MAIL FROM:<a@b.example>\r\n",
		 "503 5.5.1 Bad sequence of commands\r\n"},
		{"RCPT before EHLO", "", "RCPT TO:<a@b.example>\r\n",
		 "503 5.5.1 Bad sequence of commands\r\n"},
		{"DATA before EHLO", "", "DATA\r\n", "503 5.5.1 Bad sequence of commands\r\n"},
		{"RCPT before MAIL", "EHLO c.example\r\n", "RCPT TO:<a@b.example>\r\n",
		 "503 5.5.1 Bad sequence of commands\r\n"},
		{"DATA before MAIL", "EHLO c.example\r\n", "DATA\r\n",
		 "503 5.5.1 Bad sequence of commands\r\n"},
		{"DATA before RCPT", "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n",
		 "DATA\r\n", "503 5.5.1 Bad sequence of commands\r\n"},
		{"second MAIL", "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n",
		 "MAIL FROM:<c@b.example>\r\n", "503 5.5.1 Bad sequence of commands\r\n"},
		{"DATA with argument", "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n"
		 "RCPT TO:<x@corp.example>\r\n", "DATA now\r\n",
		 "501 5.5.4 Syntax error in parameters or arguments\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct h *h = h_new();
		h_feed(h, cases[i].setup);
		buf_clear(&h->log);
		h_feed(h, cases[i].cmd);
		if (strcmp(h->log.p, cases[i].want) != 0)
			fail_msg("%s: got %s", cases[i].name, h->log.p);
		assert_int_equal(h->begins, 0);
		h_free(h);
	}
}

static void test_simple_commands(void **state)
{
	static const struct {
		const char *name;
		const char *cmd;
		const char *want;
	} cases[] = {
		{"NOOP", "NOOP\r\n", "250 2.0.0 OK\r\n"},
		{"NOOP with argument", "noop anything\r\n", "250 2.0.0 OK\r\n"},
		{"RSET", "RSET\r\n", "250 2.0.0 Resetting\r\n"},
		{"RSET with argument", "RSET x\r\n",
		 "501 5.5.4 Syntax error in parameters or arguments\r\n"},
		{"VRFY", "VRFY postmaster\r\n",
		 "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"},
		{"VRFY without argument", "VRFY\r\n",
		 "501 5.5.4 Syntax error in parameters or arguments\r\n"},
		{"EXPN", "EXPN staff\r\n", "502 5.5.1 Command not implemented\r\n"},
		{"HELP", "HELP\r\n",
		 "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n"},
		{"unknown", "FOO bar\r\n", "500 5.3.3 Unrecognized command\r\n"},
		{"HELOX", "HELOX c.example\r\n", "500 5.3.3 Unrecognized command\r\n"},
		{"empty line", "\r\n", "500 5.3.3 Unrecognized command\r\n"},
		{"STARTTLS not offered", "STARTTLS\r\n", "500 5.3.3 Unrecognized command\r\n"},
		{"AUTH not offered", "AUTH PLAIN\r\n", "500 5.3.3 Unrecognized command\r\n"},
		{"BDAT outside a transaction", "BDAT 10 LAST\r\n0123456789NOOP\r\n",
		 "503 5.5.1 Bad sequence of commands\r\n250 2.0.0 OK\r\n"},
		{"bare LF line end", "NOOP\n", "250 2.0.0 OK\r\n"},
	};
	for (int before_ehlo = 0; before_ehlo < 2; before_ehlo++) {
		for (size_t i = 0; i < N_ELEMS(cases); i++) {
			struct h *h = h_new();
			if (!before_ehlo)
				h_feed(h, "EHLO c.example\r\n");
			buf_clear(&h->log);
			h_feed(h, cases[i].cmd);
			if (strcmp(h->log.p, cases[i].want) != 0)
				fail_msg("%s (%s EHLO): got %s", cases[i].name,
					 before_ehlo ? "before" : "after", h->log.p);
			assert_false(h->closed);
			h_free(h);
		}
	}
}

static void test_quit(void **state)
{
	struct h *h = h_ehlo();
	h_feed(h, "NOOP\r\nQUIT\r\nNOOP\r\n");
	EXPECT(h, "250 2.0.0 OK\r\n221 2.0.0 Service closing transmission channel\r\n");
	assert_true(h->closed);
	assert_int_equal(h->closes, 1);
	assert_int_equal(h->s.state, SMTP_S_CLOSING);
	/* Closing: nothing more is consumed. */
	struct smtp_event ev;
	assert_int_equal(smtp_server_feed(&h->s, "NOOP\r\n", 6, &ev), 0);
	assert_int_equal(ev.type, SMTP_EV_CLOSE);
	assert_int_equal(h->s.out.len, 0);
	h_free(h);
}

static void test_quit_before_ehlo(void **state)
{
	struct h *h = h_new();
	buf_clear(&h->log);
	h_feed(h, "QUIT\r\n");
	EXPECT(h, "221 2.0.0 Service closing transmission channel\r\n");
	assert_true(h->closed);
	h_free(h);
}

/* ---- a whole transaction --------------------------------------------- */

#define BODY                                                                \
	"From: a@b.example\r\n"                                             \
	"Subject: test\r\n"                                                 \
	"\r\n"                                                              \
	"line one\r\n"                                                      \
	"..leading dot, stuffed\r\n"                                        \
	"..\r\n"                                                            \
	"last line\r\n"

static void test_transaction(void **state)
{
	struct h *h = h_ehlo();
	h_feed(h, "MAIL FROM:<a@b.example>\r\n");
	EXPECT(h, "250 2.1.0 Sender OK\r\n");
	assert_int_equal(h->s.state, SMTP_S_MAIL);
	assert_true(smtp_server_in_transaction(&h->s));
	h_feed(h, "RCPT TO:<x@corp.example>\r\n");
	EXPECT(h, "250 2.1.5 Recipient OK\r\n");
	assert_int_equal(h->s.state, SMTP_S_RCPT);
	h_feed(h, "DATA\r\n");
	EXPECT(h, "354 Start mail input; end with <CRLF>.<CRLF>\r\n");
	assert_int_equal(h->begins, 1);
	assert_int_equal(h->s.state, SMTP_S_DATA);
	h_feed(h, BODY);
	EXPECT(h, "");
	assert_int_equal(h->ends, 0);
	h_feed(h, ".\r\n");
	EXPECT(h, "250 2.6.0 <MSG1> Queued mail for delivery\r\n");
	assert_int_equal(h->ends, 1);
	assert_int_equal(h->stored.len, strlen(BODY));
	assert_string_equal(h->stored.p, BODY);
	assert_string_equal(h->env_from, "a@b.example");
	assert_string_equal(h->env_rcpts, "x@corp.example");
	assert_int_equal(h->s.state, SMTP_S_READY);
	assert_false(smtp_server_in_transaction(&h->s));
	assert_int_equal(h->s.messages, 1);
	assert_int_equal(h->s.env.nrcpt, 0);

	/* A second message on the same session. */
	h_feed(h, "MAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<y@corp.example>\r\n"
		  "DATA\r\n.\r\n");
	EXPECT(h, "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
		  "250 2.1.5 Recipient OK\r\n"
		  "354 Start mail input; end with <CRLF>.<CRLF>\r\n"
		  "250 2.6.0 <MSG2> Queued mail for delivery\r\n");
	assert_int_equal(h->stored.len, 0);
	assert_string_equal(h->env_from, "");
	assert_string_equal(h->env_rcpts, "Postmaster,y@corp.example");
	assert_int_equal(h->s.messages, 2);
	h_free(h);
}

static void test_envelope_details(void **state)
{
	struct h *h = h_ehlo();
	h->defer_store = true;
	h_feed(h, "MAIL FROM:<@r.example:a@b.example> SIZE=100 BODY=8BITMIME RET=HDRS "
		  "ENVID=QQ314159\r\n"
		  "RCPT TO:<x@corp.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@corp.example\r\n"
		  "RCPT TO:<y@corp.example>\r\nDATA\r\nhi\r\n.\r\n");
	assert_true(h->storing);
	const struct smtp_envelope *e = &h->s.env;
	assert_string_equal(e->from, "a@b.example");
	assert_int_equal(e->size, 100);
	assert_int_equal(e->body, SMTP_BODY_8BITMIME);
	assert_int_equal(e->ret, SMTP_RET_HDRS);
	assert_string_equal(e->envid, "QQ314159");
	assert_false(e->smtputf8);
	assert_int_equal(e->nrcpt, 2);
	assert_string_equal(e->rcpt[0].addr, "x@corp.example");
	assert_string_equal(e->rcpt[0].orcpt, "rfc822;x@corp.example");
	assert_int_equal(e->rcpt[0].notify, SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE);
	assert_string_equal(e->rcpt[1].addr, "y@corp.example");
	assert_null(e->rcpt[1].orcpt);
	assert_int_equal(e->rcpt[1].notify, 0);
	h_store_done(h, true, false);
	h_free(h);
}

static void test_rset_and_helo_reset_transaction(void **state)
{
	struct h *h = h_ehlo();
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nRSET\r\n"
		  "RCPT TO:<x@corp.example>\r\nDATA\r\n");
	EXPECT(h, "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
		  "250 2.0.0 Resetting\r\n"
		  "503 5.5.1 Bad sequence of commands\r\n"
		  "503 5.5.1 Bad sequence of commands\r\n");
	assert_int_equal(h->s.env.nrcpt, 0);
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\n"
		  "EHLO again.example\r\nRCPT TO:<x@corp.example>\r\n");
	EXPECT(h, "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n" EHLO_OK
		  "503 5.5.1 Bad sequence of commands\r\n");
	assert_string_equal(h->s.helo, "again.example");
	assert_int_equal(h->begins, 0);
	h_free(h);
}

/* ---- MAIL / RCPT refusals -------------------------------------------- */

static void test_mail_replies(void **state)
{
	static const struct {
		const char *name;
		const char *cmd;
		const char *want;
	} cases[] = {
		{"ok", "MAIL FROM:<a@b.example>\r\n", "250 2.1.0 Sender OK\r\n"},
		{"null sender", "MAIL FROM:<>\r\n", "250 2.1.0 Sender OK\r\n"},
		{"bad path", "MAIL FROM:<a@b..example>\r\n", "550 5.1.7 Invalid address\r\n"},
		{"unterminated", "MAIL FROM:<a@b.example\r\n", "550 5.1.7 Invalid address\r\n"},
		{"postmaster", "MAIL FROM:<Postmaster>\r\n", "550 5.1.7 Invalid address\r\n"},
		{"too long", "MAIL FROM:<aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@b>\r\n",
		 "550 5.1.7 Invalid address\r\n"},
		{"utf8 without SMTPUTF8", "MAIL FROM:<j\xc3\xb6rg@b.example>\r\n",
		 "550 5.1.7 Invalid address\r\n"},
		{"utf8 with SMTPUTF8", "MAIL FROM:<j\xc3\xb6rg@b.example> SMTPUTF8\r\n",
		 "250 2.1.0 Sender OK\r\n"},
		{"missing FROM:", "MAIL TO:<a@b.example>\r\n",
		 "501 5.5.4 Syntax error in parameters or arguments\r\n"},
		{"no argument", "MAIL\r\n", "501 5.5.4 Syntax error in parameters or arguments\r\n"},
		{"unknown param", "MAIL FROM:<a@b.example> XFOO=1\r\n",
		 "555 5.5.4 Unsupported parameter\r\n"},
		{"AUTH param", "MAIL FROM:<a@b.example> AUTH=<>\r\n",
		 "555 5.5.4 Unsupported parameter\r\n"},
		{"bad param value", "MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n",
		 "501 5.5.4 Invalid parameter value\r\n"},
		{"duplicate param", "MAIL FROM:<a@b.example> SIZE=1 SIZE=1\r\n",
		 "501 5.5.4 Invalid parameter value\r\n"},
		{"SIZE at limit", "MAIL FROM:<a@b.example> SIZE=36700160\r\n",
		 "250 2.1.0 Sender OK\r\n"},
		{"SIZE too big", "MAIL FROM:<a@b.example> SIZE=36700161\r\n",
		 "552 5.3.4 Message size exceeds fixed maximum message size\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct h *h = h_ehlo();
		h_feed(h, cases[i].cmd);
		if (strcmp(h->log.p, cases[i].want) != 0)
			fail_msg("%s: got %s", cases[i].name, h->log.p);
		bool ok = strncmp(cases[i].want, "250", 3) == 0;
		assert_int_equal(h->s.state, ok ? SMTP_S_MAIL : SMTP_S_READY);
		h_free(h);
	}
}

static void test_size_bypass(void **state)
{
	struct smtp_server_params p;
	h_params_default(&p);
	p.max_message_size = 1000;
	p.bypass_size_limit = true;
	struct h *h = h_new_with(&p, OUT_MAX);
	h_feed(h, "EHLO c.example\r\n");
	buf_clear(&h->log);
	h_feed(h, "MAIL FROM:<a@b.example> SIZE=5000\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n");
	buf_clear(&h->log);
	char body[3000];
	memset(body, 'x', sizeof(body));
	for (size_t k = 70; k < sizeof(body); k += 72) {
		body[k] = '\r';
		body[k + 1] = '\n';
	}
	memcpy(body + sizeof(body) - 5, "\r\n.\r\n", 5);
	h_feed_n(h, body, sizeof(body));
	EXPECT(h, "250 2.6.0 <MSG1> Queued mail for delivery\r\n");
	assert_int_equal(h->stored.len, sizeof(body) - 3);
	h_free(h);
}

static void test_rcpt_replies(void **state)
{
	static const struct {
		const char *name;
		const char *cmd;
		const char *want;
	} cases[] = {
		{"ok", "RCPT TO:<x@corp.example>\r\n", "250 2.1.5 Recipient OK\r\n"},
		{"postmaster", "RCPT TO:<Postmaster>\r\n", "250 2.1.5 Recipient OK\r\n"},
		{"bad path", "RCPT TO:<x@corp..example>\r\n", "501 5.1.3 Invalid address\r\n"},
		{"null path", "RCPT TO:<>\r\n", "501 5.1.3 Invalid address\r\n"},
		{"missing TO:", "RCPT FROM:<x@corp.example>\r\n",
		 "501 5.5.4 Syntax error in parameters or arguments\r\n"},
		{"SIZE is unknown for RCPT", "RCPT TO:<x@corp.example> SIZE=1\r\n",
		 "555 5.5.4 Unsupported parameter\r\n"},
		{"NOTIFY", "RCPT TO:<x@corp.example> NOTIFY=NEVER\r\n",
		 "250 2.1.5 Recipient OK\r\n"},
		{"NOTIFY NEVER not alone", "RCPT TO:<x@corp.example> NOTIFY=NEVER,DELAY\r\n",
		 "501 5.5.4 Invalid parameter value\r\n"},
		{"utf8 without SMTPUTF8 on MAIL", "RCPT TO:<\xc3\xbc@corp.example>\r\n",
		 "501 5.1.3 Invalid address\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct h *h = h_ehlo();
		h_feed(h, "MAIL FROM:<a@b.example>\r\n");
		buf_clear(&h->log);
		h_feed(h, cases[i].cmd);
		if (strcmp(h->log.p, cases[i].want) != 0)
			fail_msg("%s: got %s", cases[i].name, h->log.p);
		h_free(h);
	}
}

static void test_smtputf8_transaction(void **state)
{
	struct h *h = h_ehlo();
	h_feed(h, "MAIL FROM:<j\xc3\xb6rg@b.example> SMTPUTF8\r\n"
		  "RCPT TO:<\xc3\xbc@corp.example>\r\nDATA\r\n");
	EXPECT(h, "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
		  "354 Start mail input; end with <CRLF>.<CRLF>\r\n");
	assert_non_null(strstr(h->hdr, " with UTF8SMTP id MSG1\r\n"));
	h_feed(h, "x\r\n.\r\n");
	EXPECT(h, "250 2.6.0 <MSG1> Queued mail for delivery\r\n");
	h_free(h);
}

static void test_too_many_recipients(void **state)
{
	struct smtp_server_params p;
	h_params_default(&p);
	p.max_recipients = 2;
	struct h *h = h_new_with(&p, OUT_MAX);
	h_feed(h, "EHLO c.example\r\n");
	buf_clear(&h->log);
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<r1@corp.example>\r\n"
		  "RCPT TO:<r2@corp.example>\r\nRCPT TO:<r3@corp.example>\r\n"
		  "RCPT TO:<r4@corp.example>\r\nDATA\r\nbody\r\n.\r\n");
	EXPECT(h, "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
		  "250 2.1.5 Recipient OK\r\n452 4.5.3 Too many recipients\r\n"
		  "452 4.5.3 Too many recipients\r\n"
		  "354 Start mail input; end with <CRLF>.<CRLF>\r\n"
		  "250 2.6.0 <MSG1> Queued mail for delivery\r\n");
	assert_string_equal(h->env_rcpts, "r1@corp.example,r2@corp.example");
	/* The limit is per transaction. */
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<r5@corp.example>\r\n");
	EXPECT(h, "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n");
	assert_int_equal(h->s.errors, 0);
	h_free(h);
}

static const char *relay_policy(void *ctx, const struct smtp_path *rcpt, bool authenticated)
{
	struct h *h = ctx;
	h->policy_calls++;
	snprintf(h->policy_last, sizeof(h->policy_last), "%.*s",
		 (int)rcpt->mailbox.len, rcpt->mailbox.p);
	static const char dom[] = "corp.example";
	if (authenticated)
		return NULL; /* the authenticated group relays */
	if (rcpt->domain.len == 0) /* <Postmaster> */
		return NULL;
	if (rcpt->domain.len == sizeof(dom) - 1 &&
	    strncasecmp(rcpt->domain.p, dom, sizeof(dom) - 1) == 0)
		return NULL;
	return "550 5.7.1 Unable to relay";
}

static void test_rcpt_policy(void **state)
{
	struct smtp_server_params p;
	h_params_default(&p);
	p.rcpt_policy = relay_policy;
	struct h *h = h_new_with(&p, OUT_MAX);
	h->p.policy_ctx = h;
	h_feed(h, "EHLO c.example\r\n");
	buf_clear(&h->log);
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<v@elsewhere.example>\r\n");
	EXPECT(h, "250 2.1.0 Sender OK\r\n550 5.7.1 Unable to relay\r\n");
	assert_int_equal(h->policy_calls, 1);
	assert_string_equal(h->policy_last, "v@elsewhere.example");
	/* Only refused recipients: DATA is out of sequence. */
	h_feed(h, "DATA\r\n");
	EXPECT(h, "503 5.5.1 Bad sequence of commands\r\n");
	h_feed(h, "RCPT TO:<@hop.example:x@CORP.example>\r\nRCPT TO:<Postmaster>\r\n"
		  "RCPT TO:<w@corp.example.evil>\r\nDATA\r\nm\r\n.\r\n");
	EXPECT(h, "250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n"
		  "550 5.7.1 Unable to relay\r\n"
		  "354 Start mail input; end with <CRLF>.<CRLF>\r\n"
		  "250 2.6.0 <MSG1> Queued mail for delivery\r\n");
	assert_int_equal(h->policy_calls, 4);
	assert_string_equal(h->env_rcpts, "x@CORP.example,Postmaster");
	/* A policy refusal is not a protocol error. */
	assert_int_equal(h->s.errors, 1); /* the DATA above */
	h_free(h);
}

static void test_may_not_submit(void **state)
{
	struct smtp_server_params p;
	h_params_default(&p);
	p.may_submit = false;
	struct h *h = h_new_with(&p, OUT_MAX);
	h_feed(h, "EHLO c.example\r\n");
	buf_clear(&h->log);
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n");
	EXPECT(h, "530 5.7.1 Client was not authenticated\r\n"
		  "503 5.5.1 Bad sequence of commands\r\n"
		  "503 5.5.1 Bad sequence of commands\r\n");
	assert_int_equal(h->begins, 0);
	assert_int_equal(h->s.state, SMTP_S_READY);
	h_free(h);
}

/* ---- protocol error limit --------------------------------------------- */

static void test_max_protocol_errors(void **state)
{
	struct smtp_server_params p;
	h_params_default(&p);
	p.max_protocol_errors = 3;
	struct h *h = h_new_with(&p, OUT_MAX);
	buf_clear(&h->log);
	h_feed(h, "FOO\r\nMAIL FROM:<a@b.example>\r\nEHLO c.example\r\nNOOP\r\n"
		  "EHLO ..\r\nBAR\r\nNOOP\r\n");
	EXPECT(h, "500 5.3.3 Unrecognized command\r\n"
		  "503 5.5.1 Bad sequence of commands\r\n" EHLO_OK
		  "250 2.0.0 OK\r\n"
		  "501 5.5.4 Invalid domain name\r\n"
		  "421 4.7.0 Too many errors on this connection, closing transmission channel\r\n");
	assert_true(h->closed);
	assert_int_equal(h->closes, 1);
	assert_true(smtp_server_ended_for_errors(&h->s));
	h_free(h);

	/* errors below the limit, then QUIT: not ended for them */
	h = h_new_with(&p, OUT_MAX);
	h_feed(h, "FOO\r\nBAR\r\n");
	assert_false(smtp_server_ended_for_errors(&h->s));
	h_feed(h, "QUIT\r\n");
	assert_true(h->closed);
	assert_false(smtp_server_ended_for_errors(&h->s));
	h_free(h);

	/* 0 means unlimited */
	h_params_default(&p);
	h = h_new_with(&p, OUT_MAX);
	buf_clear(&h->log);
	for (int i = 0; i < 200; i++)
		h_feed(h, "FOO\r\n");
	assert_false(h->closed);
	assert_int_equal(h->s.errors, 200);
	h_free(h);
}

/* ---- junk commands ---------------------------------------------------- */

/* Past max_junk_commands since the last accepted message, NOOP, RSET, VRFY,
 * EXPN and HELP each count as a protocol error too; an accepted message
 * starts the count again. */
static void test_max_junk_commands(void **state)
{
	(void)state;
	struct smtp_server_params p;
	h_params_default(&p);
	p.max_junk_commands = 4;
	p.max_protocol_errors = 2;
	struct h *h = h_new_with(&p, OUT_MAX);
	h_feed(h, "EHLO c.example\r\n");
	buf_clear(&h->log);
	/* four allowed, each kind of junk counts */
	h_feed(h, "NOOP\r\nRSET\r\nVRFY x\r\nHELP\r\n");
	assert_int_equal(h->s.errors, 0);
	buf_clear(&h->log);
	/* a message accepted: the count starts again */
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n"
		  "Subject: s\r\n\r\nbody\r\n.\r\n");
	assert_int_equal(h->s.messages, 1);
	buf_clear(&h->log);
	h_feed(h, "NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n");
	assert_int_equal(h->s.errors, 0);
	/* the fifth and sixth are answered and counted, the seventh ends it */
	buf_clear(&h->log);
	h_feed(h, "EXPN list\r\nNOOP\r\nNOOP\r\nNOOP\r\n");
	EXPECT(h, "502 5.5.1 Command not implemented\r\n"
		  "250 2.0.0 OK\r\n"
		  "421 4.7.0 Too many errors on this connection, closing transmission channel\r\n");
	assert_true(h->closed);
	assert_int_equal(h->s.errors, 3);
	h_free(h);

	/* without max_protocol_errors the count goes on, the session too */
	h_params_default(&p);
	p.max_junk_commands = 2;
	h = h_new_with(&p, OUT_MAX);
	for (int i = 0; i < 50; i++)
		h_feed(h, "NOOP\r\n");
	assert_false(h->closed);
	assert_int_equal(h->s.errors, 48);
	h_free(h);

	/* 0: unlimited */
	h_params_default(&p);
	p.max_protocol_errors = 1;
	h = h_new_with(&p, OUT_MAX);
	for (int i = 0; i < 500; i++)
		h_feed(h, "RSET\r\n");
	assert_false(h->closed);
	assert_int_equal(h->s.errors, 0);
	h_free(h);
}

/* ---- DATA content checks ---------------------------------------------- */

static void test_data_rejections(void **state)
{
	static const struct {
		const char *name;
		uint64_t max_size, max_header;
		unsigned max_hops;
		const char *body;
		const char *want;
	} cases[] = {
		{"bare LF", 0, 0, 0, "a\nb\r\n.\r\n",
		 "550 5.6.11 Bare line feed or carriage return not allowed\r\n"},
		{"bare CR", 0, 0, 0, "a\rb\r\n.\r\n",
		 "550 5.6.11 Bare line feed or carriage return not allowed\r\n"},
		{"LF.LF smuggling", 0, 0, 0,
		 "a\n.\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<v@corp.example>\r\nDATA\r\n"
		 "forged\r\n.\r\n",
		 "550 5.6.11 Bare line feed or carriage return not allowed\r\n"},
		{"CR.CR smuggling", 0, 0, 0, "a\r.\rQUIT\r\n.\r\n",
		 "550 5.6.11 Bare line feed or carriage return not allowed\r\n"},
		{"too big", 20, 0, 0, "0123456789\r\n0123456789\r\n.\r\n",
		 "552 5.3.4 Message size exceeds fixed maximum message size\r\n"},
		{"header too big", 0, 10, 0, "Subject: 0123456789\r\n\r\nx\r\n.\r\n",
		 "552 5.3.4 Header size exceeds fixed maximum size\r\n"},
		{"hop count", 0, 0, 2, "Received: a\r\nReceived: b\r\nReceived: c\r\n\r\nx\r\n.\r\n",
		 "554 5.4.6 Hop count exceeded - possible mail loop\r\n"},
		{"bare LF wins over size", 5, 0, 0, "0123456789\n\r\n.\r\n",
		 "550 5.6.11 Bare line feed or carriage return not allowed\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		for (size_t chunk = 1; chunk <= 4096; chunk *= 4096) {
			struct smtp_server_params p;
			h_params_default(&p);
			p.max_message_size = cases[i].max_size;
			p.max_header_size = cases[i].max_header;
			p.max_hop_count = cases[i].max_hops;
			struct h *h = h_new_with(&p, OUT_MAX);
			h_feed(h, "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n"
				  "RCPT TO:<x@corp.example>\r\nDATA\r\n");
			buf_clear(&h->log);
			h_feed_chunked(h, cases[i].body, strlen(cases[i].body), chunk);
			if (strcmp(h->log.p, cases[i].want) != 0)
				fail_msg("%s (chunk %zu): got %s", cases[i].name, chunk,
					 h->log.p);
			buf_clear(&h->log);
			assert_int_equal(h->rejects, 1);
			assert_int_equal(h->ends, 0);
			assert_int_equal(h->s.state, SMTP_S_READY);
			assert_int_equal(h->s.env.nrcpt, 0);
			/* The session goes on after the refusal. */
			h_feed(h, "MAIL FROM:<a@b.example>\r\n");
			EXPECT(h, "250 2.1.0 Sender OK\r\n");
			h_free(h);
		}
	}
}

static void test_data_line_too_long(void **state)
{
	struct h *h = h_ehlo();
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n");
	buf_clear(&h->log);
	char line[1200];
	memset(line, 'x', sizeof(line));
	memcpy(line + 999, "\r\n", 2); /* 1001 octets */
	memcpy(line + sizeof(line) - 5, "\r\n.\r\n", 5);
	h_feed_n(h, line, sizeof(line));
	EXPECT(h, "550 5.6.0 Message line longer than 1000 octets\r\n");
	assert_int_equal(h->rejects, 1);
	/* 1000 octets exactly is fine */
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n");
	buf_clear(&h->log);
	memcpy(line + 998, "\r\n", 2);
	line[1000] = 'x';
	h_feed_n(h, line, sizeof(line));
	EXPECT(h, "250 2.6.0 <MSG2> Queued mail for delivery\r\n");
	h_free(h);
}

static void hook_reject(void *ctx, enum smtp_reject why, const char *reply, const char *rcpt)
{
	struct h *h = ctx;
	h->reject_hooks++;
	h->reject_why = why;
	snprintf(h->reject_reply, sizeof(h->reject_reply), "%s", reply);
	h->reject_rcpt = rcpt != NULL;
}

#define R_NUL_LINE "550 5.6.0 NUL character not allowed in message content\r\n"
#define TXN "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n"
#define TXN_REPLIES                                                         \
	"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"                  \
	"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
#define CLEAN "Subject: clean\r\n\r\nhello\r\n"

/* An S()-like literal with its length, NULs included. */
#define LIT(x) {x, sizeof(x) - 1}

static const struct {
	const char *name;
	struct {
		const char *p;
		size_t n;
	} body; /* the message up to and including the real CRLF.CRLF */
} nul_cases[] = {
	{"first byte of the data", LIT("\x00Subject: x\r\n\r\nhi\r\n.\r\n")},
	{"first byte of the body", LIT("Subject: x\r\n\r\n\x00" "body\r\n.\r\n")},
	{"in a header", LIT("Subject: a\x00" "b\r\n\r\nhi\r\n.\r\n")},
	{"right before CRLF.CRLF", LIT("Subject: x\r\n\r\nhi\x00\r\n.\r\n")},
	{"CRLF NUL . CRLF smuggling",
	 LIT("Subject: x\r\n\r\nhi\r\n\x00.\r\nMAIL FROM:<evil@x.example>\r\n"
	     "RCPT TO:<victim@corp.example>\r\nDATA\r\nforged\r\n.\r\n")},
	{"NUL CRLF . CRLF", LIT("\x00\r\n.\r\n")},
	{"dot NUL at a line start", LIT("hi\r\n.\x00\r\n.\r\n")},
};

/* After the refusal the session is where it was before MAIL, and a clean
 * message goes through. */
static void nul_check_refused(struct h *h, const char *name)
{
	if (strcmp(h->log.p ? h->log.p : "", R_NUL_LINE) != 0)
		fail_msg("%s: replies %s", name, h->log.p ? h->log.p : "(none)");
	buf_clear(&h->log);
	CHECK_INT(name, h->rejects, 1);
	CHECK_INT(name, h->ends, 0);
	CHECK_INT(name, h->reject_hooks, 1);
	CHECK_INT(name, h->reject_why, SMTP_REJECT_NUL);
	CHECK_STR(name, h->reject_reply, "550 5.6.0 NUL character not allowed in message content");
	CHECK_INT(name, h->reject_rcpt, false);
	CHECK_INT(name, h->s.state, SMTP_S_READY);
	CHECK_INT(name, h->s.env.nrcpt, 0);
	CHECK_INT(name, h->s.rejects, 1);
	h_feed(h, TXN CLEAN ".\r\n");
	char want[256];
	snprintf(want, sizeof(want), TXN_REPLIES "250 2.6.0 <MSG%u> Queued mail for delivery\r\n",
		 h->msgno);
	if (strcmp(h->log.p ? h->log.p : "", want) != 0)
		fail_msg("%s: after the refusal: %s", name, h->log.p ? h->log.p : "(none)");
	buf_clear(&h->log);
	CHECK_INT(name, h->ends, 1);
	CHECK_INT(name, h->stored.len, strlen(CLEAN));
	if (memcmp(h->stored.p, CLEAN, strlen(CLEAN)) != 0)
		fail_msg("%s: stored %s", name, h->stored.p);
}

static struct h *nul_session(void)
{
	struct h *h = h_ehlo();
	h->s.hooks.reject = hook_reject;
	h->s.hooks.ctx = h;
	h_feed(h, TXN);
	EXPECT(h, TXN_REPLIES);
	return h;
}

static void test_data_nul_rejected(void **state)
{
	for (size_t i = 0; i < N_ELEMS(nul_cases); i++) {
		const char *body = nul_cases[i].body.p;
		size_t n = nul_cases[i].body.n;
		char name[160];
		/* split across two feeds at every byte */
		for (size_t cut = 0; cut <= n; cut++) {
			snprintf(name, sizeof(name), "%s, cut at %zu", nul_cases[i].name, cut);
			struct h *h = nul_session();
			h_feed_n(h, body, cut);
			h_feed_n(h, body + cut, n - cut);
			nul_check_refused(h, name);
			h_free(h);
		}
		/* byte by byte */
		snprintf(name, sizeof(name), "%s, byte by byte", nul_cases[i].name);
		struct h *h = nul_session();
		h_feed_chunked(h, body, n, 1);
		nul_check_refused(h, name);
		h_free(h);
		/* pipelined with what follows: replies in order, nothing of the
		 * refused message runs as a command */
		snprintf(name, sizeof(name), "%s, pipelined", nul_cases[i].name);
		h = nul_session();
		char in[512];
		assert_true(n + 16 < sizeof(in));
		memcpy(in, body, n);
		memcpy(in + n, "NOOP\r\n", 6);
		h_feed_n(h, in, n + 6);
		if (strcmp(h->log.p, R_NUL_LINE "250 2.0.0 OK\r\n") != 0)
			fail_msg("%s: replies %s", name, h->log.p);
		CHECK_INT(name, h->begins, 1);
		CHECK_INT(name, h->ends, 0);
		h_free(h);
	}
}

static void test_data_nul_with_other_errors(void **state)
{
	/* message: prefix, pad times 'x', then CRLF.CRLF */
	static const struct {
		const char *name;
		struct {
			const char *p;
			size_t n;
		} prefix;
		size_t pad;
		uint64_t max_size;
		const char *want;
		enum smtp_reject why;
	} cases[] = {
		{"bare LF wins over NUL", LIT("a\x00\nb"), 0, 0,
		 "550 5.6.11 Bare line feed or carriage return not allowed\r\n", SMTP_REJECT_BARE_LF},
		{"NUL wins over size", LIT("0123456789\x00"), 0, 5, R_NUL_LINE, SMTP_REJECT_NUL},
		{"NUL wins over line length", LIT("\x00"), 1100, 0, R_NUL_LINE, SMTP_REJECT_NUL},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct smtp_server_params p;
		h_params_default(&p);
		p.max_message_size = cases[i].max_size;
		struct h *h = h_new_with(&p, OUT_MAX);
		h->s.hooks.reject = hook_reject;
		h->s.hooks.ctx = h;
		h_feed(h, "EHLO c.example\r\n" TXN);
		buf_clear(&h->log);
		size_t n = cases[i].prefix.n;
		char *msg = malloc(n + cases[i].pad + 5);
		assert_non_null(msg);
		memcpy(msg, cases[i].prefix.p, n);
		memset(msg + n, 'x', cases[i].pad);
		memcpy(msg + n + cases[i].pad, "\r\n.\r\n", 5);
		h_feed_n(h, msg, n + cases[i].pad + 5);
		CHECK_STR(cases[i].name, h->log.p, cases[i].want);
		CHECK_INT(cases[i].name, h->reject_hooks, 1);
		CHECK_INT(cases[i].name, h->reject_why, cases[i].why);
		CHECK_INT(cases[i].name, h->ends, 0);
		free(msg);
		h_free(h);
	}
}

static void test_reject_names(void **state)
{
	static const struct {
		enum smtp_reject r;
		const char *want;
	} cases[] = {
		{SMTP_REJECT_RELAY, "relay"},
		{SMTP_REJECT_NO_ROUTE, "no_route"},
		{SMTP_REJECT_NOT_AUTHENTICATED, "not_authenticated"},
		{SMTP_REJECT_RECIPIENTS, "too_many_recipients"},
		{SMTP_REJECT_SIZE, "size"},
		{SMTP_REJECT_HEADER_SIZE, "header_size"},
		{SMTP_REJECT_HOP_COUNT, "hop_count"},
		{SMTP_REJECT_BARE_LF, "bare_lf"},
		{SMTP_REJECT_NUL, "nul"},
		{SMTP_REJECT_LINE_LENGTH, "line_length"},
		{SMTP_REJECT_STORAGE, "storage"},
		{SMTP_REJECT_PROTOCOL, "protocol"},
		{SMTP_REJECT_TOO_MANY_ERRORS, "too_many_errors"},
		{SMTP_REJECT_TLS_REQUIRED, "tls_required"},
		{SMTP_REJECT_CLIENT_CERT, "client_certificate"},
		{SMTP_REJECT_AUTH_TLS, "auth_without_tls"},
		{SMTP_REJECT_COUNT, "unknown"},
		{(enum smtp_reject)-1, "unknown"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++)
		CHECK_STR(cases[i].want, smtp_reject_name(cases[i].r), cases[i].want);
	/* Every reason has a name, and no two share one (metric labels). */
	for (int a = 0; a < SMTP_REJECT_COUNT; a++) {
		const char *na = smtp_reject_name((enum smtp_reject)a);
		assert_non_null(na);
		assert_string_not_equal(na, "unknown");
		for (int b = a + 1; b < SMTP_REJECT_COUNT; b++)
			assert_string_not_equal(na, smtp_reject_name((enum smtp_reject)b));
	}
}

static void test_smuggled_commands_not_executed(void **state)
{
	/* After a smuggling attempt, everything up to the real CRLF.CRLF is
	 * data: no reply for the smuggled commands, one 550 for the message. */
	struct h *h = h_ehlo();
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n"
		  "Subject: hi\r\n\r\nhello\n.\r\n"
		  "MAIL FROM:<admin@corp.example>\r\nRCPT TO:<victim@corp.example>\r\n"
		  "DATA\r\nforged\r\n.\r\nNOOP\r\n");
	EXPECT(h, "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
		  "354 Start mail input; end with <CRLF>.<CRLF>\r\n"
		  "550 5.6.11 Bare line feed or carriage return not allowed\r\n"
		  "250 2.0.0 OK\r\n");
	assert_int_equal(h->begins, 1);
	assert_int_equal(h->ends, 0);
	assert_int_equal(h->rejects, 1);
	h_free(h);
}

/* ---- pipelining ------------------------------------------------------- */

static void test_pipelined_batch(void **state)
{
	struct h *h = h_new();
	EXPECT(h, BANNER);
	unsigned sends = h->sends;
	h_feed(h, "EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n"
		  "RCPT TO:<x@corp.example>\r\nRCPT TO:<y@corp.example>\r\nDATA\r\n");
	static const char want[] = EHLO_OK "250 2.1.0 Sender OK\r\n"
		"250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n"
		"354 Start mail input; end with <CRLF>.<CRLF>\r\n";
	/* All replies up to the 354 are in the buffer together when DATA
	 * begins, and go out in one send. */
	assert_int_equal(h->begins, 1);
	assert_string_equal(h->at_begin.p, want);
	EXPECT(h, want);
	assert_int_equal(h->sends, sends + 1);
	assert_int_equal(h->flushes, 0);
	h_free(h);
}

static void test_pipelined_everything(void **state)
{
	/* A whole session in one segment, and the same byte by byte and in
	 * odd chunks: identical replies and message. */
	static const char session[] =
		"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\n"
		"RCPT TO:<x@corp.example>\r\nDATA\r\n" BODY ".\r\n"
		"MAIL FROM:<b@b.example>\r\nRCPT TO:<y@corp.example>\r\nDATA\r\n"
		".\r\nRSET\r\nQUIT\r\nNOOP\r\n";
	static const char want[] = BANNER EHLO_OK
		"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
		"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
		"250 2.6.0 <MSG1> Queued mail for delivery\r\n"
		"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
		"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
		"250 2.6.0 <MSG2> Queued mail for delivery\r\n"
		"250 2.0.0 Resetting\r\n"
		"221 2.0.0 Service closing transmission channel\r\n";
	static const size_t chunks[] = {sizeof(session), 1, 2, 3, 5, 7, 11, 64};
	static const size_t outcaps[] = {OUT_MAX, 1024};
	for (size_t c = 0; c < N_ELEMS(outcaps); c++) {
		for (size_t k = 0; k < N_ELEMS(chunks); k++) {
			struct smtp_server_params p;
			h_params_default(&p);
			struct h *h = h_new_with(&p, outcaps[c]);
			h_feed_chunked(h, session, sizeof(session) - 1, chunks[k]);
			if (strcmp(h->log.p, want) != 0)
				fail_msg("chunk %zu outcap %zu: got\n%s", chunks[k],
					 outcaps[c], h->log.p);
			assert_int_equal(h->ends, 2);
			assert_true(h->closed);
			/* The last message was empty; check the first. */
			assert_int_equal(h->begins, 2);
			h_free(h);
		}
	}
	/* and the first message's bytes, byte by byte */
	struct h *h = h_new();
	h->defer_store = true;
	h_feed_chunked(h, session, sizeof(session) - 1, 1);
	assert_true(h->storing);
	assert_string_equal(h->stored.p, BODY);
	h_store_done(h, true, false);
	h_free(h);
}

static void test_many_pipelined_commands(void **state)
{
	/* 10,000 commands in one segment with a small reply buffer: the
	 * session asks for flushes, and every reply comes out, in order. */
	static const struct {
		const char *cmd;
		const char *reply;
	} cycle[] = {
		{"NOOP\r\n", "250 2.0.0 OK\r\n"},
		{"RSET\r\n", "250 2.0.0 Resetting\r\n"},
		{"HELP\r\n",
		 "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP\r\n"},
		{"VRFY x\r\n",
		 "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"},
	};
	const unsigned count = 10000;
	struct buf in = {0}, want = {0};
	for (unsigned i = 0; i < count; i++) {
		buf_add(&in, cycle[i % N_ELEMS(cycle)].cmd,
			strlen(cycle[i % N_ELEMS(cycle)].cmd));
		buf_add(&want, cycle[i % N_ELEMS(cycle)].reply,
			strlen(cycle[i % N_ELEMS(cycle)].reply));
	}
	struct smtp_server_params p;
	h_params_default(&p);
	struct h *h = h_new_with(&p, 2048);
	h_feed(h, "EHLO c.example\r\n");
	buf_clear(&h->log);
	unsigned sends = h->sends;
	h_feed_n(h, in.p, in.len);
	assert_true(h->flushes > 0);
	assert_int_equal(h->sends, sends + h->flushes + 1);
	assert_true(h->max_out <= 2048);
	assert_int_equal(h->log.len, want.len);
	assert_string_equal(h->log.p, want.p);
	assert_int_equal(h->inlen, 0);
	free(in.p);
	free(want.p);
	h_free(h);
}

static void test_flush_does_not_consume(void **state)
{
	/* Direct API check: with the reply buffer nearly full, feed asks for a
	 * flush before taking the next command. */
	/* One octet short of the room reserved for a command's replies. */
	char out[sizeof(BANNER) - 1 + 2 * SMTP_REPLY_LINE_MAX - 1];
	struct smtp_server_params p;
	h_params_default(&p);
	struct smtp_server s;
	struct smtp_event ev;
	smtp_server_init(&s, &p, IP, out, sizeof(out));
	assert_int_equal(s.out.len, strlen(BANNER));
	assert_int_equal(smtp_server_feed(&s, "NOOP\r\n", 6, &ev), 0);
	assert_int_equal(ev.type, SMTP_EV_FLUSH);
	smtp_server_sent(&s);
	assert_int_equal(smtp_server_feed(&s, "NOOP\r\n", 6, &ev), 6);
	assert_int_equal(ev.type, SMTP_EV_NEED_INPUT);
	assert_int_equal(s.out.len, 14);
	assert_memory_equal(s.out.p, "250 2.0.0 OK\r\n", 14);
	smtp_server_free(&s);
}

/* ---- over-long command line ------------------------------------------- */

static void test_long_command_line(void **state)
{
	struct h *h = h_ehlo();
	const size_t big = 1u << 20;
	char *line = malloc(big + 32);
	assert_non_null(line);
	memcpy(line, "MAIL FROM:<", 11);
	memset(line + 11, 'a', big - 11);
	memcpy(line + big, "\r\nNOOP\r\n", 8);
	h_feed_chunked(h, line, big + 8, 4096);
	EXPECT(h, "500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n");
	assert_true(h->in_max <= SMTP_CMD_LINE_MAX + 4096);
	assert_int_equal(h->s.errors, 1);
	assert_int_equal(h->s.state, SMTP_S_READY);
	free(line);
	h_free(h);
}

/* What the engine reads at a slow pace: input that is thrown away. */
static void test_discarding(void **state)
{
	struct h *h = h_ehlo();
	char x[1100];
	memset(x, 'x', sizeof(x));
	assert_false(smtp_server_discarding(&h->s));
	/* inside a command line over 2048 octets, up to its end */
	h_feed(h, "NOOP ");
	h_feed_n(h, x, 1100);
	assert_false(smtp_server_discarding(&h->s));
	h_feed_n(h, x, 1100);
	assert_true(smtp_server_discarding(&h->s));
	h_feed_n(h, x, 1100);
	assert_true(smtp_server_discarding(&h->s));
	h_feed(h, "\r\n");
	EXPECT(h, "500 5.5.2 Line too long\r\n");
	assert_false(smtp_server_discarding(&h->s));
	/* a DATA body: from the first fault to the end of the message */
	h_feed(h, TXN "Subject: a\r\n\r\n");
	EXPECT(h, TXN_REPLIES);
	assert_false(smtp_server_discarding(&h->s));
	h_feed_n(h, x, 999);
	assert_false(smtp_server_discarding(&h->s));
	h_feed_n(h, x, 2);
	assert_true(smtp_server_discarding(&h->s));
	h_feed(h, "\r\nmore\r\n");
	assert_true(smtp_server_discarding(&h->s));
	h_feed(h, ".\r\n");
	EXPECT(h, "550 5.6.0 Message line longer than 1000 octets\r\n");
	assert_false(smtp_server_discarding(&h->s));
	/* a good message is never discarded */
	h_feed(h, TXN "Subject: b\r\n\r\nbody\r\n");
	assert_false(smtp_server_discarding(&h->s));
	h_feed(h, ".\r\n");
	EXPECT(h, TXN_REPLIES "250 2.6.0 <MSG2> Queued mail for delivery\r\n");
	/* a BDAT chunk out of sequence is read and dropped */
	h_feed(h, "BDAT 10\r\nabc");
	assert_true(smtp_server_discarding(&h->s));
	h_feed(h, "defghij");
	assert_false(smtp_server_discarding(&h->s));
	EXPECT(h, "503 5.5.1 Bad sequence of commands\r\n");
	/* a BDAT chunk of a message already refused for a NUL */
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nBDAT 4\r\na");
	h_feed_n(h, "\0", 1);
	assert_true(smtp_server_discarding(&h->s));
	h_feed(h, "bc");
	assert_false(smtp_server_discarding(&h->s));
	h_free(h);
}

/* ---- drain ------------------------------------------------------------ */

static void test_drain_idle(void **state)
{
	static const char *const setups[] = {"", "EHLO c.example\r\n",
					     "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRSET\r\n"};
	for (size_t i = 0; i < N_ELEMS(setups); i++) {
		struct h *h = h_new();
		h_feed(h, setups[i]);
		buf_clear(&h->log);
		assert_true(smtp_server_drain(&h->s));
		assert_int_equal(h->s.state, SMTP_S_CLOSING);
		h_feed(h, "");
		EXPECT(h, "421 4.3.2 Service shutting down, closing transmission channel\r\n");
		assert_true(h->closed);
		h_free(h);
	}
}

static void test_drain_in_transaction(void **state)
{
	struct h *h = h_ehlo();
	h_feed(h, "MAIL FROM:<a@b.example>\r\n");
	buf_clear(&h->log);
	assert_false(smtp_server_drain(&h->s));
	assert_int_equal(h->s.state, SMTP_S_MAIL);
	h_feed(h, "RCPT TO:<x@corp.example>\r\nDATA\r\nhello\r\n.\r\nMAIL FROM:<a@b.example>\r\n"
		  "NOOP\r\n");
	EXPECT(h, "250 2.1.5 Recipient OK\r\n"
		  "354 Start mail input; end with <CRLF>.<CRLF>\r\n"
		  "250 2.6.0 <MSG1> Queued mail for delivery\r\n"
		  "421 4.3.2 Service shutting down, closing transmission channel\r\n");
	assert_int_equal(h->ends, 1);
	assert_true(h->closed);
	h_free(h);
}

static void test_drain_while_storing(void **state)
{
	struct h *h = h_ehlo();
	h->defer_store = true;
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n"
		  "hello\r\n.\r\nEHLO c.example\r\n");
	buf_clear(&h->log);
	assert_true(h->storing);
	assert_int_equal(h->s.state, SMTP_S_STORING);
	assert_false(smtp_server_drain(&h->s));
	/* While storing, feed consumes nothing and says wait. */
	struct smtp_event ev;
	assert_int_equal(smtp_server_feed(&h->s, h->in, h->inlen, &ev), 0);
	assert_int_equal(ev.type, SMTP_EV_WAIT);
	h_store_done(h, true, false);
	EXPECT(h, "250 2.6.0 <MSG1> Queued mail for delivery\r\n"
		  "421 4.3.2 Service shutting down, closing transmission channel\r\n");
	assert_true(h->closed);
	h_free(h);
}

/* ---- storage outcome -------------------------------------------------- */

static void test_storage_failures(void **state)
{
	static const struct {
		const char *name;
		bool ok, full;
		const char *want;
	} cases[] = {
		{"stored", true, false, "250 2.6.0 <MSG1> Queued mail for delivery\r\n"},
		{"storage full", false, true, "452 4.3.1 Insufficient system storage\r\n"},
		{"storage error", false, false, "451 4.3.0 Local error in processing\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct h *h = h_ehlo();
		h->store_ok = cases[i].ok;
		h->store_full = cases[i].full;
		h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n");
		buf_clear(&h->log);
		h_feed(h, "hello\r\n.\r\n");
		if (strcmp(h->log.p, cases[i].want) != 0)
			fail_msg("%s: got %s", cases[i].name, h->log.p);
		buf_clear(&h->log);
		assert_int_equal(h->s.messages, cases[i].ok ? 1 : 0);
		assert_int_equal(h->s.state, SMTP_S_READY);
		assert_int_equal(h->s.env.nrcpt, 0);
		/* A new transaction can start. */
		h_feed(h, "MAIL FROM:<a@b.example>\r\n");
		EXPECT(h, "250 2.1.0 Sender OK\r\n");
		/* A late or repeated storage outcome changes nothing. */
		smtp_server_stored(&h->s, true, false);
		assert_int_equal(h->s.out.len, 0);
		h_free(h);
	}
}

/* ---- Received: header from smtp_server_begin_message ------------------ */

static void test_received_header(void **state)
{
	static const struct {
		const char *name;
		const char *session;
		const char *want;
	} cases[] = {
		{"ESMTP, one recipient",
		 "EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n",
		 "Received: from client.example ([192.0.2.10])\r\n"
		 "\tby relay.corp.example (Postern) with ESMTP id MSG1\r\n"
		 "\t(connector \"Anonymous Relay\")\r\n"
		 "\tfor <x@corp.example>; Mon, 23 Nov 2026 14:02:00 +0000\r\n"},
		{"SMTP, two recipients",
		 "HELO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\n"
		 "RCPT TO:<y@corp.example>\r\nDATA\r\n",
		 "Received: from client.example ([192.0.2.10])\r\n"
		 "\tby relay.corp.example (Postern) with SMTP id MSG1\r\n"
		 "\t(connector \"Anonymous Relay\"); Mon, 23 Nov 2026 14:02:00 +0000\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct h *h = h_new();
		h_feed(h, cases[i].session);
		assert_int_equal(h->begins, 1);
		if (strcmp(h->hdr, cases[i].want) != 0)
			fail_msg("%s: got\n%s", cases[i].name, h->hdr);
		assert_int_equal(h->hdrlen, strlen(cases[i].want));
		assert_non_null(strstr(h->hdr, "[" IP "]"));
		assert_non_null(strstr(h->hdr, "connector \"" CONNECTOR "\""));
		assert_non_null(strstr(h->hdr, " id MSG1"));
		/* The id is the one the 250 reply names. */
		buf_clear(&h->log);
		h_feed(h, ".\r\n");
		EXPECT(h, "250 2.6.0 <MSG1> Queued mail for delivery\r\n");
		h_free(h);
	}
}

static void test_received_header_ipv6(void **state)
{
	struct smtp_server_params p;
	h_params_default(&p);
	char out[2048];
	struct smtp_server s;
	smtp_server_init(&s, &p, "2001:db8::7", out, sizeof(out));
	struct smtp_event ev;
	static const char in[] = "EHLO [IPv6:2001:db8::7]\r\nMAIL FROM:<a@b.example>\r\n"
				 "RCPT TO:<x@corp.example>\r\nDATA\r\n";
	size_t n = smtp_server_feed(&s, in, sizeof(in) - 1, &ev);
	assert_int_equal(n, sizeof(in) - 1);
	assert_int_equal(ev.type, SMTP_EV_DATA_BEGIN);
	assert_non_null(strstr(out, "250-" HOST " Hello [2001:db8::7]\r\n"));
	char hdr[1024];
	size_t hl = smtp_server_begin_message(&s, "ID-1", T_FIXED, hdr, sizeof(hdr));
	assert_int_equal(hl, strlen(hdr));
	assert_non_null(strstr(hdr, "Received: from [IPv6:2001:db8::7] ([IPv6:2001:db8::7])\r\n"));
	/* A too-small header buffer is reported, not overrun. */
	assert_int_equal(smtp_server_begin_message(&s, "ID-1", T_FIXED, hdr, 20), 0);
	smtp_server_free(&s);
}

/* ---- STARTTLS (RFC 3207) ---------------------------------------------- */

static bool hook_starttls(void *ctx)
{
	struct h *h = ctx;
	h->starttls_hook_calls++;
	return !h->tls_refuse;
}

static struct h *h_tls(bool require_tls, bool require_cert)
{
	struct smtp_server_params p;
	h_params_default(&p);
	p.starttls = true;
	p.require_tls = require_tls;
	p.require_client_cert = require_cert;
	struct h *h = h_new_with(&p, OUT_MAX);
	h->s.hooks.starttls = hook_starttls;
	h->s.hooks.ctx = h;
	EXPECT(h, BANNER);
	return h;
}

#define EHLO_TLS_OFFERED                                                    \
	"250-" HOST " Hello [" IP "]\r\n"                                   \
	"250-PIPELINING\r\n"                                                \
	"250-SIZE 36700160\r\n"                                             \
	"250-8BITMIME\r\n"                                                  \
	"250-ENHANCEDSTATUSCODES\r\n"                                       \
	"250-DSN\r\n"                                                       \
	"250-STARTTLS\r\n"                                                  \
	"250-CHUNKING\r\n"                                                  \
	"250 SMTPUTF8\r\n"

static void test_starttls_offered_and_reset(void **state)
{
	struct h *h = h_tls(false, false);
	h_feed(h, "EHLO client.example\r\n");
	EXPECT(h, EHLO_TLS_OFFERED);
	/* A pipelined MAIL behind STARTTLS is dropped with the rest of the read. */
	h_feed(h, "MAIL FROM:<early@b.example>\r\nSTARTTLS\r\nMAIL FROM:<smuggled@b.example>\r\nRCPT TO:<x@corp.example>\r\n");
	EXPECT(h, "250 2.1.0 Sender OK\r\n"
		  "220 2.0.0 SMTP server ready\r\n");
	assert_int_equal(h->starttls, 1);
	assert_int_equal(h->starttls_hook_calls, 1);
	assert_int_equal(h->s.state, SMTP_S_STARTTLS);
	/* Until the handshake is done nothing is executed. */
	h_feed(h, "RCPT TO:<x@corp.example>\r\nQUIT\r\n");
	EXPECT(h, "");
	assert_false(h->closed);
	smtp_server_tls_started(&h->s, "TLSv1.3", "TLS_AES_128_GCM_SHA256", false);
	assert_true(h->s.tls);
	assert_int_equal(h->s.state, SMTP_S_GREETED);
	assert_null(h->s.env.from); /* the MAIL before STARTTLS is forgotten */
	h_feed(h, "MAIL FROM:<a@b.example>\r\n");
	EXPECT(h, "503 5.5.1 Bad sequence of commands\r\n");
	h_feed(h, "EHLO client.example\r\n");
	EXPECT(h, EHLO_OK); /* no STARTTLS inside TLS */
	h_feed(h, "STARTTLS\r\n");
	EXPECT(h, "503 5.5.1 Bad sequence of commands\r\n");
	assert_int_equal(h->starttls, 1);
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n");
	EXPECT(h, "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
		  "354 Start mail input; end with <CRLF>.<CRLF>\r\n");
	const char *want = "Received: from client.example ([192.0.2.10])\r\n"
			   "\tby relay.corp.example (Postern) with ESMTPS id MSG1\r\n"
			   "\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n"
			   "\t(connector \"Anonymous Relay\")\r\n"
			   "\tfor <x@corp.example>; Mon, 23 Nov 2026 14:02:00 +0000\r\n";
	if (strcmp(h->hdr, want) != 0)
		fail_msg("got\n%s", h->hdr);
	h_free(h);
}

static void test_starttls_partial_line_dropped(void **state)
{
	/* A command line split around STARTTLS does not survive into TLS. */
	struct h *h = h_tls(false, false);
	h_feed(h, "EHLO c.example\r\n");
	buf_clear(&h->log);
	h_feed(h, "STARTTLS\r\nMAIL FR");
	EXPECT(h, "220 2.0.0 SMTP server ready\r\n");
	smtp_server_tls_started(&h->s, "TLSv1.2", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", false);
	h_feed(h, "OM:<a@b.example>\r\n");
	EXPECT(h, "500 5.3.3 Unrecognized command\r\n");
	h_free(h);
}

static void test_starttls_refusals(void **state)
{
	static const struct {
		const char *name;
		bool offered, refuse;
		const char *cmd, *want;
	} cases[] = {
		{"not offered", false, false, "STARTTLS\r\n", "500 5.3.3 Unrecognized command\r\n"},
		{"argument", true, false, "STARTTLS now\r\n",
		 "501 5.5.4 Syntax error in parameters or arguments\r\n"},
		{"cannot start", true, true, "STARTTLS\r\n",
		 "454 4.7.0 TLS not available due to temporary reason\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct h *h = h_tls(false, false);
		h->p.starttls = cases[i].offered;
		h->tls_refuse = cases[i].refuse;
		h_feed(h, "EHLO c.example\r\n");
		buf_clear(&h->log);
		h_feed(h, cases[i].cmd);
		if (strcmp(h->log.p, cases[i].want) != 0)
			fail_msg("%s: got %s", cases[i].name, h->log.p);
		buf_clear(&h->log);
		assert_int_equal(h->starttls, 0);
		assert_false(h->s.tls);
		/* The session goes on in plaintext. */
		h_feed(h, "MAIL FROM:<a@b.example>\r\n");
		EXPECT(h, "250 2.1.0 Sender OK\r\n");
		h_free(h);
	}
}

static void test_require_tls(void **state)
{
	struct h *h = h_tls(true, false);
	h_feed(h, "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\n");
	EXPECT(h, EHLO_TLS_OFFERED "530 5.7.0 Must issue a STARTTLS command first\r\n"
		  "503 5.5.1 Bad sequence of commands\r\n");
	h_feed(h, "STARTTLS\r\n");
	EXPECT(h, "220 2.0.0 SMTP server ready\r\n");
	smtp_server_tls_started(&h->s, "TLSv1.3", "TLS_AES_128_GCM_SHA256", false);
	h_feed(h, "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n");
	EXPECT(h, EHLO_OK "250 2.1.0 Sender OK\r\n");
	h_free(h);
}

static void test_require_client_certificate(void **state)
{
	for (int cert = 0; cert < 2; cert++) {
		struct h *h = h_tls(false, true);
		h_feed(h, "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n");
		EXPECT(h, EHLO_TLS_OFFERED "530 5.7.0 Must issue a STARTTLS command first\r\n");
		h_feed(h, "STARTTLS\r\n");
		EXPECT(h, "220 2.0.0 SMTP server ready\r\n");
		smtp_server_tls_started(&h->s, "TLSv1.3", "TLS_AES_128_GCM_SHA256", cert);
		h_feed(h, "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n");
		EXPECT(h, cert ? EHLO_OK "250 2.1.0 Sender OK\r\n"
			       : EHLO_OK "530 5.7.1 Valid client certificate required\r\n");
		h_free(h);
	}
}

/* ---- AUTH (RFC 4954) ---------------------------------------------------- */

static void hook_command(void *ctx, const char *line, size_t len)
{
	struct h *h = ctx;
	size_t n = strlen(h->commands);
	snprintf(h->commands + n, sizeof(h->commands) - n, "%s%.*s", n ? "|" : "", (int)len, line);
}

/* A connector whose only group is "authenticated": AUTH offered after
 * STARTTLS (or before it with without_tls). */
static struct h *h_auth(bool without_tls, unsigned max_failures, bool in_tls)
{
	struct smtp_server_params p;
	h_params_default(&p);
	p.may_submit = false;
	p.starttls = true;
	p.auth_mechs = SMTP_AUTH_PLAIN | SMTP_AUTH_LOGIN;
	p.auth_without_tls = without_tls;
	p.max_logon_failures = max_failures;
	p.rcpt_policy = relay_policy;
	struct h *h = h_new_with(&p, OUT_MAX);
	h->p.policy_ctx = h;
	h->s.hooks.starttls = hook_starttls;
	h->s.hooks.command = hook_command;
	h->s.hooks.ctx = h;
	buf_clear(&h->log);
	if (in_tls) {
		h_feed(h, "EHLO c.example\r\nSTARTTLS\r\n");
		buf_clear(&h->log);
		smtp_server_tls_started(&h->s, "TLSv1.3", "TLS_AES_128_GCM_SHA256", false);
	}
	h_feed(h, "EHLO c.example\r\n");
	buf_clear(&h->log);
	h->commands[0] = '\0';
	return h;
}

#define AUTH_LINE "250-AUTH PLAIN LOGIN\r\n"

static void test_auth_offered_after_tls(void **state)
{
	struct h *h = h_auth(false, 3, false);
	/* The EHLO had no AUTH line: before TLS it is refused. */
	h_feed(h, "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n");
	EXPECT(h, "538 5.7.11 Encryption required for requested authentication mechanism\r\n");
	assert_int_equal(h->auth_events, 0);
	h_feed(h, "MAIL FROM:<a@b.example>\r\n");
	EXPECT(h, "530 5.7.1 Client was not authenticated\r\n");
	h_free(h);
	h = h_auth(false, 3, true);
	h_feed(h, "EHLO c.example\r\n");
	assert_non_null(strstr(h->log.p, "250-STARTTLS") == NULL ? h->log.p : NULL);
	assert_non_null(strstr(h->log.p, AUTH_LINE));
	buf_clear(&h->log);
	/* allow_auth_without_tls: offered in plaintext */
	h_free(h);
	h = h_auth(true, 3, false);
	h_feed(h, "EHLO c.example\r\n");
	assert_non_null(strstr(h->log.p, AUTH_LINE));
	h_free(h);
}

static void test_auth_plain(void **state)
{
	/* initial response; and the 334 challenge form */
	for (int form = 0; form < 2; form++) {
		struct h *h = h_auth(false, 3, true);
		if (form == 0) {
			h_feed(h, "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n");
		} else {
			h_feed(h, "AUTH PLAIN\r\n");
			EXPECT(h, "334 \r\n");
			h_feed(h, "AGFsaWNlAHMzY3JldA==\r\n");
		}
		EXPECT(h, "235 2.7.0 Authentication successful\r\n");
		assert_int_equal(h->auth_events, 1);
		assert_string_equal(h->auth_user, "alice");
		assert_string_equal(h->auth_pass, "s3cret");
		assert_true(h->s.authenticated);
		assert_string_equal(h->s.auth_user, "alice");
		/* The credentials never reach the command hook. */
		assert_null(strstr(h->commands, "AGFsaWNl"));
		/* Submit and relay; EHLO no longer offers AUTH; AUTH again is 503. */
		h_feed(h, "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\nMAIL FROM:<a@b.example>\r\n"
			  "RCPT TO:<x@elsewhere.example>\r\nDATA\r\n");
		EXPECT(h, "503 5.5.1 Bad sequence of commands\r\n250 2.1.0 Sender OK\r\n"
			  "250 2.1.5 Recipient OK\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n");
		assert_non_null(strstr(h->hdr, " with ESMTPSA id MSG1"));
		assert_string_equal(h->s.env.auth, "alice"); /* recorded in the envelope */
		h_feed(h, ".\r\n");
		assert_null(h->s.env.auth);
		h_free(h);
	}
	/* An authzid that names someone else, or a response without two NULs */
	static const char *const bad[] = {"Ym9iAGFsaWNlAHMzY3JldA==", /* bob\0alice\0s3cret */
					  "YWxpY2UAczNjcmV0"};         /* alice\0s3cret */
	static const char *const want[] = {"535 5.7.8 Authentication credentials invalid\r\n",
					   "501 5.5.2 Cannot decode response\r\n"};
	for (size_t i = 0; i < N_ELEMS(bad); i++) {
		struct h *h = h_auth(false, 3, true);
		char line[128];
		snprintf(line, sizeof(line), "AUTH PLAIN %s\r\n", bad[i]);
		h_feed(h, line);
		EXPECT(h, want[i]);
		assert_int_equal(h->auth_events, 0);
		assert_false(h->s.authenticated);
		h_free(h);
	}
}

static void test_auth_login(void **state)
{
	struct h *h = h_auth(false, 3, true);
	h->auth_answer = 1;
	h_feed(h, "AUTH LOGIN\r\n");
	EXPECT(h, "334 VXNlcm5hbWU6\r\n");
	h_feed(h, "YWxpY2U=\r\n");
	EXPECT(h, "334 UGFzc3dvcmQ6\r\n");
	h_feed(h, "d3Jvbmc=\r\n");
	EXPECT(h, "535 5.7.8 Authentication credentials invalid\r\n");
	assert_string_equal(h->auth_user, "alice");
	assert_string_equal(h->auth_pass, "wrong");
	assert_string_equal(h->commands, "AUTH LOGIN|****|****");
	assert_false(h->s.authenticated);
	/* With the username as initial response, all pipelined in one read */
	h->auth_answer = 0;
	h_feed(h, "AUTH LOGIN YWxpY2U=\r\nczNjcmV0\r\n");
	EXPECT(h, "334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n");
	assert_string_equal(h->auth_pass, "s3cret");
	h_free(h);
	/* "=": an empty initial response (an empty user name) */
	h = h_auth(false, 3, true);
	h->auth_answer = 1;
	h_feed(h, "AUTH LOGIN =\r\n");
	EXPECT(h, "334 UGFzc3dvcmQ6\r\n");
	h_feed(h, "=\r\n");
	EXPECT(h, "535 5.7.8 Authentication credentials invalid\r\n");
	assert_string_equal(h->auth_user, "");
	h_free(h);
}

static void test_auth_replies(void **state)
{
	static const struct {
		const char *name, *in, *want;
	} cases[] = {
		{"cancel", "AUTH LOGIN\r\n*\r\n", "334 VXNlcm5hbWU6\r\n501 5.0.0 Authentication cancelled\r\n"},
		{"cancel plain", "AUTH PLAIN\r\n*\r\n", "334 \r\n501 5.0.0 Authentication cancelled\r\n"},
		{"bad base64", "AUTH PLAIN AGFsaWNl!\r\n", "501 5.5.2 Cannot decode response\r\n"},
		{"bad continuation", "AUTH LOGIN\r\nnot base64\r\n",
		 "334 VXNlcm5hbWU6\r\n501 5.5.2 Cannot decode response\r\n"},
		{"mechanism", "AUTH CRAM-MD5\r\n", "504 5.5.4 Unrecognized authentication type\r\n"},
		{"no mechanism", "AUTH\r\n", "501 5.5.4 Syntax error in parameters or arguments\r\n"},
		{"in a transaction", "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\nMAIL FROM:<a@b.example>\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n",
		 "235 2.7.0 Authentication successful\r\n250 2.1.0 Sender OK\r\n503 5.5.1 Bad sequence of commands\r\n"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct h *h = h_auth(false, 3, true);
		h_feed(h, cases[i].in);
		if (strcmp(h->log.p, cases[i].want) != 0)
			fail_msg("%s: got\n%s", cases[i].name, h->log.p);
		h_free(h);
	}
	/* Not configured: AUTH is an unknown verb; before EHLO: 503. */
	struct h *h = h_ehlo();
	h_feed(h, "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n");
	EXPECT(h, "500 5.3.3 Unrecognized command\r\n");
	h_free(h);
	h = h_auth(true, 3, false);
	h_feed(h, "RSET\r\n");
	smtp_server_free(&h->s);
	h_free(h);
}

static void test_auth_failure_limit_and_temporary(void **state)
{
	struct h *h = h_auth(false, 3, true);
	h->auth_answer = 2;
	h_feed(h, "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n");
	EXPECT(h, "454 4.7.0 Temporary authentication failure\r\n");
	h->auth_answer = 1;
	h_feed(h, "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\nAUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n");
	EXPECT(h, "535 5.7.8 Authentication credentials invalid\r\n"
		  "535 5.7.8 Authentication credentials invalid\r\n");
	assert_false(h->closed);
	assert_false(smtp_server_ended_for_errors(&h->s));
	h_feed(h, "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\nNOOP\r\n");
	EXPECT(h, "421 4.7.0 Too many errors on this connection, closing transmission channel\r\n");
	assert_true(h->closed);
	assert_true(smtp_server_ended_for_errors(&h->s));
	assert_int_equal(h->s.auth_failures, 3);
	h_free(h);
}

/* After STARTTLS, an earlier AUTH is forgotten (RFC 3207 4.2). */
static void test_auth_forgotten_after_starttls(void **state)
{
	struct h *h = h_auth(true, 3, false);
	h_feed(h, "AUTH PLAIN AGFsaWNlAHMzY3JldA==\r\n");
	EXPECT(h, "235 2.7.0 Authentication successful\r\n");
	h_feed(h, "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n");
	assert_non_null(strstr(h->hdr, " with ESMTPA id MSG1"));
	h_feed(h, ".\r\n");
	buf_clear(&h->log);
	h_feed(h, "STARTTLS\r\n");
	EXPECT(h, "220 2.0.0 SMTP server ready\r\n");
	smtp_server_tls_started(&h->s, "TLSv1.3", "TLS_AES_128_GCM_SHA256", false);
	assert_false(h->s.authenticated);
	h_feed(h, "EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n");
	assert_non_null(strstr(h->log.p, "530 5.7.1 Client was not authenticated\r\n"));
	h_free(h);
}

/* ---- abort ------------------------------------------------------------ */

static void test_abort(void **state)
{
	struct h *h = h_ehlo();
	h_feed(h, "MAIL FROM:<a@b.example>\r\n");
	buf_clear(&h->log);
	smtp_server_abort(&h->s, "421 4.4.1 Connection timed out");
	assert_int_equal(h->s.state, SMTP_S_CLOSING);
	h_feed(h, "RCPT TO:<x@corp.example>\r\n");
	EXPECT(h, "421 4.4.1 Connection timed out\r\n");
	assert_true(h->closed);
	/* A second abort adds nothing. */
	smtp_server_abort(&h->s, "421 4.4.1 Connection timed out");
	assert_int_equal(h->s.out.len, 0);
	h_free(h);
}

/* ---- BDAT (RFC 3030) ------------------------------------------------- */

#define MR "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\n"
#define MR_OK "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
#define Q1 "250 2.6.0 <MSG1> Queued mail for delivery\r\n"
#define Q2 "250 2.6.0 <MSG2> Queued mail for delivery\r\n"
#define SEQ "503 5.5.1 Bad sequence of commands\r\n"

static void test_bdat(void **state)
{
	static const struct {
		const char *name;
		const char *in;
		size_t inlen;          /* 0: strlen */
		uint64_t max_size;     /* 0: the default */
		unsigned max_hops;
		const char *want;      /* every reply after EHLO */
		const char *stored;    /* the last stored message, or NULL: none */
		size_t stored_len;
		unsigned ends, rejects;
		bool closed;
		unsigned forms;        /* chunk forms seen, 0: do not check */
	} cases[] = {
		{"two chunks", MR "BDAT 5\r\nHelloBDAT 8 LAST\r\n World\r\n", 0, 0, 0,
		 MR_OK "250 2.0.0 5 bytes received\r\n" Q1, "Hello World\r\n", 13, 1, 0, false,
		 1u << SMTP_CHUNK_RAW},
		{"dot-stuffed on the way in", MR "BDAT 16 LAST\r\n.a\r\n..b\r\nc.\r\n.\r\n", 0, 0, 0,
		 MR_OK Q1, "..a\r\n...b\r\nc.\r\n..\r\n", 19, 1, 0, false,
		 1u << SMTP_CHUNK_RAW | 1u << SMTP_CHUNK_STUFFING},
		{"a line-start dot across chunks", MR "BDAT 4\r\nab\r\nBDAT 4 LAST\r\n.c\r\n", 0, 0, 0,
		 MR_OK "250 2.0.0 4 bytes received\r\n" Q1, "ab\r\n..c\r\n", 9, 1, 0, false, 0},
		{"CRLF across chunks", MR "BDAT 3\r\nab\rBDAT 3 LAST\r\n\nc\n", 0, 0, 0,
		 MR_OK "250 2.0.0 3 bytes received\r\n550 5.6.11 Bare line feed or carriage return not allowed\r\n",
		 NULL, 0, 0, 1, false, 0},
		{"CR LF split between chunks", MR "BDAT 3\r\nab\rBDAT 3 LAST\r\n\ncd", 0, 0, 0,
		 MR_OK "250 2.0.0 3 bytes received\r\n" Q1, "ab\r\ncd\r\n", 8, 1, 0, false, 0},
		{"last line without CRLF gets one", MR "BDAT 3 LAST\r\nabc", 0, 0, 0,
		 MR_OK Q1, "abc\r\n", 5, 1, 0, false,
		 1u << SMTP_CHUNK_RAW | 1u << SMTP_CHUNK_STUFFING},
		{"BDAT 0 LAST alone", MR "BDAT 0 LAST\r\n", 0, 0, 0, MR_OK Q1, "", 0, 1, 0, false, 0},
		{"BDAT 0 then LAST", MR "BDAT 0\r\nBDAT 4 last\r\nab\r\n", 0, 0, 0,
		 MR_OK "250 2.0.0 0 bytes received\r\n" Q1, "ab\r\n", 4, 1, 0, false, 0},
		{"commands in chunk bytes are data", MR "BDAT 6 LAST\r\nQUIT\r\n", 0, 0, 0,
		 MR_OK Q1, "QUIT\r\n", 6, 1, 0, false, 0},
		{"NUL refused at its chunk", MR "BDAT 5\r\na\0b\r\nBDAT 3 LAST\r\nxyzNOOP\r\n", 86, 0, 0,
		 MR_OK "550 5.6.0 NUL character not allowed in message content\r\n" SEQ "250 2.0.0 OK\r\n",
		 NULL, 0, 0, 1, false, 0},
		{"bare LF", MR "BDAT 4 LAST\r\na\nb\n", 0, 0, 0,
		 MR_OK "550 5.6.11 Bare line feed or carriage return not allowed\r\n", NULL, 0, 0, 1, false, 0},
		{"bare CR at the end", MR "BDAT 2 LAST\r\na\r", 0, 0, 0,
		 MR_OK "550 5.6.11 Bare line feed or carriage return not allowed\r\n", NULL, 0, 0, 1, false, 0},
		{"size counted across chunks", MR "BDAT 6\r\n123456BDAT 6 LAST\r\n123456" MR "BDAT 2 LAST\r\nok", 0, 10, 0,
		 MR_OK "250 2.0.0 6 bytes received\r\n"
		 "552 5.3.4 Message size exceeds fixed maximum message size\r\n" MR_OK Q2,
		 "ok\r\n", 4, 1, 1, false, 0},
		{"one chunk over the limit", MR "BDAT 11 LAST\r\n12345678901NOOP\r\n", 0, 10, 0,
		 MR_OK "552 5.3.4 Message size exceeds fixed maximum message size\r\n250 2.0.0 OK\r\n",
		 NULL, 0, 0, 0, false, 0},
		{"hop count", MR "BDAT 39 LAST\r\nReceived: a\r\nReceived: b\r\nReceived: c\r\n", 0, 0, 2,
		 MR_OK "554 5.4.6 Hop count exceeded - possible mail loop\r\n", NULL, 0, 0, 1, false, 0},
		{"DATA after BDAT", MR "BDAT 3\r\nabcDATA\r\nMAIL FROM:<>\r\n", 0, 0, 0,
		 MR_OK "250 2.0.0 3 bytes received\r\n" SEQ "250 2.1.0 Sender OK\r\n", NULL, 0, 0, 1, false, 0},
		{"RCPT after BDAT", MR "BDAT 3\r\nabcRCPT TO:<y@corp.example>\r\nBDAT 2 LAST\r\n\r\n", 0, 0, 0,
		 MR_OK "250 2.0.0 3 bytes received\r\n" SEQ Q1, "abc\r\n", 5, 1, 0, false, 0},
		{"BDAT before RCPT", "MAIL FROM:<a@b.example>\r\nBDAT 3\r\nabcRCPT TO:<x@corp.example>\r\n"
		 "BDAT 3 LAST\r\nabc", 0, 0, 0,
		 "250 2.1.0 Sender OK\r\n" SEQ "250 2.1.5 Recipient OK\r\n" Q1, "abc\r\n", 5, 1, 0, false, 0},
		{"RSET drops the message", MR "BDAT 3\r\nabcRSET\r\n" MR "BDAT 2 LAST\r\nxy", 0, 0, 0,
		 MR_OK "250 2.0.0 3 bytes received\r\n250 2.0.0 Resetting\r\n" MR_OK Q2, "xy\r\n", 4, 1, 1,
		 false, 0},
		{"EHLO drops the message", MR "BDAT 3\r\nabcEHLO c.example\r\nMAIL FROM:<>\r\n", 0, 0, 0,
		 NULL, NULL, 0, 0, 1, false, 0},
		{"size not a number", MR "BDAT x\r\nNOOP\r\n", 0, 0, 0,
		 MR_OK "501 5.5.4 Syntax error in parameters or arguments\r\n", NULL, 0, 0, 0, true, 0},
		{"size too long", MR "BDAT 1234567890123456789 LAST\r\n", 0, 0, 0,
		 MR_OK "501 5.5.4 Syntax error in parameters or arguments\r\n", NULL, 0, 0, 0, true, 0},
		{"DATA still works after", MR "BDAT 2 LAST\r\nab" MR "DATA\r\nc\r\n.\r\n", 0, 0, 0,
		 MR_OK Q1 MR_OK "354 Start mail input; end with <CRLF>.<CRLF>\r\n" Q2, "c\r\n", 3, 2, 0,
		 false, 1u << SMTP_CHUNK_RAW | 1u << SMTP_CHUNK_STUFFING | 1u << SMTP_CHUNK_WIRE},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		size_t len = cases[i].inlen ? cases[i].inlen : strlen(cases[i].in);
		/* whole, then a byte at a time: the same replies and bytes */
		for (size_t chunk = 0; chunk < 2; chunk++) {
			struct smtp_server_params p;
			h_params_default(&p);
			if (cases[i].max_size)
				p.max_message_size = cases[i].max_size;
			if (cases[i].max_hops)
				p.max_hop_count = cases[i].max_hops;
			struct h *h = h_new_with(&p, OUT_MAX);
			h_feed(h, "EHLO c.example\r\n");
			buf_clear(&h->log);
			if (chunk)
				h_feed_chunked(h, cases[i].in, len, 1);
			else
				h_feed_n(h, cases[i].in, len);
			if (cases[i].want && strcmp(h->log.p ? h->log.p : "", cases[i].want) != 0)
				fail_msg("%s (%s): replies\n--- got ---\n%s--- want ---\n%s", cases[i].name,
					 chunk ? "bytewise" : "whole", h->log.p, cases[i].want);
			if (h->ends != cases[i].ends || h->rejects != cases[i].rejects ||
			    h->closed != cases[i].closed)
				fail_msg("%s: ends %u rejects %u closed %d", cases[i].name, h->ends,
					 h->rejects, h->closed);
			if (cases[i].stored && (h->stored.len != cases[i].stored_len ||
						memcmp(h->stored.p, cases[i].stored, h->stored.len) != 0))
				fail_msg("%s: stored %zu bytes: %.*s", cases[i].name, h->stored.len,
					 (int)h->stored.len, h->stored.p);
			if (!chunk && cases[i].forms && h->forms != cases[i].forms)
				fail_msg("%s: forms %#x, want %#x", cases[i].name, h->forms,
					 cases[i].forms);
			h_free(h);
		}
	}
}

/* A HELO session was not offered CHUNKING: BDAT is out of sequence, and
 * its octets are still never run as commands. */
static void test_bdat_after_helo(void **state)
{
	struct h *h = h_new();
	h_feed(h, "HELO c.example\r\n" MR "BDAT 6 LAST\r\nQUIT\r\nDATA\r\nx\r\n.\r\n");
	assert_false(h->closed);
	assert_int_equal(h->ends, 1);
	assert_string_equal(h->stored.p, "x\r\n");
	h_free(h);
}

/* B.9: the sender policy hook decides at MAIL; anonymous_only marks the
 * envelope. */
static const char *deny_corp(void *ctx, const struct smtp_path *from, bool authenticated)
{
	(void)ctx;
	(void)authenticated;
	return from->domain.len == 12 && memcmp(from->domain.p, "corp.example", 12) == 0
		       ? "550 5.7.1 Client does not have permissions to send as this sender"
		       : NULL;
}

static void hook_reject_why(void *ctx, enum smtp_reject why, const char *reply, const char *rcpt)
{
	struct h *h = ctx;
	(void)reply;
	(void)rcpt;
	h->reject_hooks++;
	h->reject_why = why;
}

static void test_mail_policy(void **state)
{
	struct smtp_server_params p;
	h_params_default(&p);
	p.mail_policy = deny_corp;
	p.anonymous_only = true;
	struct h *h = h_new_with(&p, OUT_MAX);
	h->s.hooks.reject = hook_reject_why;
	h->s.hooks.ctx = h;
	h_feed(h, "EHLO c.example\r\nMAIL FROM:<ceo@corp.example>\r\nMAIL FROM:<>\r\n");
	assert_int_equal(h->reject_hooks, 1);
	assert_int_equal(h->reject_why, SMTP_REJECT_SENDER);
	assert_string_equal(smtp_reject_name(SMTP_REJECT_SENDER), "sender_permission");
	assert_string_equal(smtp_reject_name(SMTP_REJECT_UNKNOWN_RECIPIENT), "unknown_recipient");
	assert_true(h->s.env.anonymous);
	assert_non_null(strstr(h->log.p, "550 5.7.1 Client does not have permissions to send as this sender\r\n"
					 "250 2.1.0 Sender OK\r\n"));
	h_free(h);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_banner),
		cmocka_unit_test(test_ehlo),
		cmocka_unit_test(test_ehlo_size_variants),
		cmocka_unit_test(test_helo),
		cmocka_unit_test(test_bad_hello_argument),
		cmocka_unit_test(test_sequence_errors),
		cmocka_unit_test(test_simple_commands),
		cmocka_unit_test(test_quit),
		cmocka_unit_test(test_quit_before_ehlo),
		cmocka_unit_test(test_transaction),
		cmocka_unit_test(test_envelope_details),
		cmocka_unit_test(test_rset_and_helo_reset_transaction),
		cmocka_unit_test(test_mail_replies),
		cmocka_unit_test(test_size_bypass),
		cmocka_unit_test(test_rcpt_replies),
		cmocka_unit_test(test_smtputf8_transaction),
		cmocka_unit_test(test_too_many_recipients),
		cmocka_unit_test(test_rcpt_policy),
		cmocka_unit_test(test_may_not_submit),
		cmocka_unit_test(test_max_protocol_errors),
		cmocka_unit_test(test_max_junk_commands),
		cmocka_unit_test(test_data_rejections),
		cmocka_unit_test(test_data_line_too_long),
		cmocka_unit_test(test_smuggled_commands_not_executed),
		cmocka_unit_test(test_data_nul_rejected),
		cmocka_unit_test(test_data_nul_with_other_errors),
		cmocka_unit_test(test_reject_names),
		cmocka_unit_test(test_pipelined_batch),
		cmocka_unit_test(test_pipelined_everything),
		cmocka_unit_test(test_many_pipelined_commands),
		cmocka_unit_test(test_flush_does_not_consume),
		cmocka_unit_test(test_long_command_line),
		cmocka_unit_test(test_discarding),
		cmocka_unit_test(test_drain_idle),
		cmocka_unit_test(test_drain_in_transaction),
		cmocka_unit_test(test_drain_while_storing),
		cmocka_unit_test(test_storage_failures),
		cmocka_unit_test(test_received_header),
		cmocka_unit_test(test_received_header_ipv6),
		cmocka_unit_test(test_abort),
		cmocka_unit_test(test_starttls_offered_and_reset),
		cmocka_unit_test(test_starttls_partial_line_dropped),
		cmocka_unit_test(test_starttls_refusals),
		cmocka_unit_test(test_require_tls),
		cmocka_unit_test(test_require_client_certificate),
		cmocka_unit_test(test_auth_offered_after_tls),
		cmocka_unit_test(test_auth_plain),
		cmocka_unit_test(test_auth_login),
		cmocka_unit_test(test_auth_replies),
		cmocka_unit_test(test_auth_failure_limit_and_temporary),
		cmocka_unit_test(test_auth_forgotten_after_starttls),
		cmocka_unit_test(test_bdat),
		cmocka_unit_test(test_bdat_after_helo),
		cmocka_unit_test(test_mail_policy),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
