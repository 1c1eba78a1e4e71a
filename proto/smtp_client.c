/* SMTP client state machine for delivery (see smtp_client.h). Reply bytes are
 * assembled into lines and lines into one reply; the state then decides the
 * next command. Commands are written into the out buffer only when they are
 * handed out, so a send still in flight is never overwritten.
 * No I/O, no clock, no logging here: the engine does all of that. */
#include "smtp_client.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base64.h"

enum client_state {
	ST_GREETING,    /* connected, waiting for the 220 */
	ST_EHLO,
	ST_HELO,
	ST_STARTTLS,    /* STARTTLS sent, its reply is next */
	ST_TLS,         /* 220 to it: the engine's handshake, nothing read */
	ST_AUTH,        /* AUTH or a response to its challenge sent */
	ST_READY,       /* idle between messages */
	ST_TXN,         /* replies to MAIL, RCPT and DATA */
	ST_BODY,        /* body handed out; the reply to the dot is next */
	ST_DISCARD_DOT, /* "." after a 354 no recipient needed; reply ignored */
	ST_RSET,
	ST_QUIT,
	ST_CLOSED,
};

enum client_cmd {
	CMD_NONE,
	CMD_EHLO,
	CMD_HELO,
	CMD_STARTTLS,
	CMD_AUTH,       /* AUTH <mechanism> [initial response] */
	CMD_AUTH_RESP,  /* the response numbered auth_step */
	CMD_BATCH,      /* MAIL, every RCPT and DATA (RFC 2920) */
	CMD_NEXT,       /* ... of next_msg, behind the current body */
	CMD_MAIL,
	CMD_RCPT,       /* the one numbered rcpt_sent */
	CMD_DATA,
	CMD_BODY,
	CMD_BDAT,       /* "BDAT <size> LAST", its chunk (the body) queued behind */
	CMD_DOT,
	CMD_RSET,
	CMD_QUIT,
};

/* RFC 5321 4.5.3.2: the defaults of command_timeout_ms, data_timeout_ms */
#define T_COMMAND_MS (5 * 60 * 1000)
#define T_DATA_DONE_MS (10 * 60 * 1000)

/* RFC 4954 4: the longest AUTH command line; an initial response that
 * does not fit is sent after the server's 334 instead. */
#define AUTH_LINE_MAX 12288

static const char *const stage_names[] = {
	[SMTPC_STAGE_CONNECT] = "connect",
	[SMTPC_STAGE_GREETING] = "greeting",
	[SMTPC_STAGE_EHLO] = "ehlo",
	[SMTPC_STAGE_AUTH] = "auth",
	[SMTPC_STAGE_MAIL] = "mail",
	[SMTPC_STAGE_RCPT] = "rcpt",
	[SMTPC_STAGE_DATA] = "data",
	[SMTPC_STAGE_DOT] = "dot",
	[SMTPC_STAGE_LOCAL] = "local",
};

static const char *const auth_names[] = {
	[SMTPC_AUTH_NONE] = "NONE",
	[SMTPC_AUTH_PLAIN] = "PLAIN",
	[SMTPC_AUTH_LOGIN] = "LOGIN",
	[SMTPC_AUTH_XOAUTH2] = "XOAUTH2",
};

const char *smtp_client_auth_name(enum smtp_client_auth m)
{
	if ((unsigned)m < sizeof(auth_names) / sizeof(auth_names[0]))
		return auth_names[m];
	return "unknown";
}

const char *smtp_client_stage_name(enum smtp_client_stage s)
{
	if ((unsigned)s < sizeof(stage_names) / sizeof(stage_names[0]))
		return stage_names[s];
	return "unknown";
}

static void copy_str(char *dst, size_t cap, const char *src)
{
	size_t n = strlen(src);
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static void set_result(struct smtp_client_result *r, int code, const char *status,
		       const char *text, enum smtp_client_stage stage)
{
	r->code = code;
	copy_str(r->status, sizeof(r->status), status);
	copy_str(r->text, sizeof(r->text), text);
	r->stage = stage;
}

/* An accepted recipient holds its provisional RCPT 2xx until the message's
 * final reply; code 0 means no reply yet. */
static bool rcpt_open(const struct smtp_client_result *r)
{
	return r->code == 0 || (r->stage == SMTPC_STAGE_RCPT && r->code / 100 == 2);
}

static void fail_open(struct smtp_client *c, int code, const char *status,
		      const char *text, enum smtp_client_stage stage)
{
	if (!c->msg)
		return;
	for (unsigned i = 0; i < c->msg->nrcpt; i++)
		if (rcpt_open(&c->res[i]))
			set_result(&c->res[i], code, status, text, stage);
}

static void reply_result(struct smtp_client *c, struct smtp_client_result *r,
			 enum smtp_client_stage stage)
{
	set_result(r, c->reply_code, c->reply_status, c->reply, stage);
}

static void fail_open_with_reply(struct smtp_client *c, enum smtp_client_stage stage)
{
	fail_open(c, c->reply_code, c->reply_status, c->reply, stage);
}

static enum smtp_client_stage txn_stage(const struct smtp_client *c)
{
	if (!c->mail_replied)
		return SMTPC_STAGE_MAIL;
	if (c->rcpt_replied < c->msg->nrcpt)
		return SMTPC_STAGE_RCPT;
	return SMTPC_STAGE_DATA;
}

/* Which command the reply being read answers (RSET counts as MAIL: it
 * belongs to the transaction, and the stages have no slot of its own). */
static enum smtp_client_stage current_stage(const struct smtp_client *c)
{
	switch (c->state) {
	case ST_GREETING:
		return SMTPC_STAGE_GREETING;
	case ST_EHLO:
	case ST_HELO:
	case ST_STARTTLS:
	case ST_TLS:
		return SMTPC_STAGE_EHLO;
	case ST_AUTH:
		return SMTPC_STAGE_AUTH;
	case ST_TXN:
		return txn_stage(c);
	case ST_BODY:
	case ST_DISCARD_DOT:
		return SMTPC_STAGE_DOT;
	case ST_RSET:
		return SMTPC_STAGE_MAIL;
	default:
		return SMTPC_STAGE_CONNECT;
	}
}

/* The session cannot go on: the message's open recipients get this result,
 * MSG_DONE (if a message was under way) and then CLOSE are returned. */
static void end_session(struct smtp_client *c, int code, const char *status,
			const char *text, enum smtp_client_stage stage)
{
	if (c->session_error.code == 0)
		set_result(&c->session_error, code, status, text, stage);
	fail_open(c, code, status, text, stage);
	if (c->msg)
		c->done_pending = true;
	c->queued = CMD_NONE;
	c->state = ST_CLOSED;
}

static void end_session_with_reply(struct smtp_client *c)
{
	end_session(c, c->reply_code, c->reply_status, c->reply, current_stage(c));
}

/* A reply we cannot make sense of leaves the dialogue out of step: nothing
 * after it can be trusted, so the session ends (451: try again later). */
static void protocol_error(struct smtp_client *c, const char *what,
			   const char *detail, size_t detail_len)
{
	char text[sizeof(c->reply)];
	int n = snprintf(text, sizeof(text), "451 4.5.0 %s", what);
	size_t len = n < 0 ? 0 : (size_t)n;
	if (detail_len && len + 2 < sizeof(text)) {
		memcpy(text + len, ": ", 2);
		len += 2;
		for (size_t i = 0; i < detail_len && len + 1 < sizeof(text); i++) {
			unsigned char ch = (unsigned char)detail[i];
			text[len++] = ch < 0x20 || ch == 0x7f ? ' ' : (char)ch;
		}
		text[len] = '\0';
	}
	end_session(c, 451, "4.5.0", text, current_stage(c));
}

/* ---- building commands -------------------------------------------------- */

static bool out_room(struct smtp_client *c, size_t n)
{
	if (c->out_oom)
		return false;
	if (c->out_len + n <= c->out_cap)
		return true;
	size_t cap = c->out_cap ? c->out_cap : 512;
	while (cap < c->out_len + n)
		cap *= 2;
	char *p = realloc(c->out, cap);
	if (!p) {
		c->out_oom = true;
		return false;
	}
	c->out = p;
	c->out_cap = cap;
	return true;
}

static void out_put(struct smtp_client *c, const char *s, size_t n)
{
	if (!out_room(c, n))
		return;
	/* No CR or LF may ever reach the middle of a command line. */
	for (size_t i = 0; i < n; i++)
		c->out[c->out_len++] = s[i] == '\r' || s[i] == '\n' ? ' ' : s[i];
}

static void out_str(struct smtp_client *c, const char *s)
{
	out_put(c, s, strlen(s));
}

static void out_end(struct smtp_client *c)
{
	if (!out_room(c, 2))
		return;
	c->out[c->out_len++] = '\r';
	c->out[c->out_len++] = '\n';
}

static void put_mail(struct smtp_client *c, const struct smtp_client_msg *m)
{
	out_str(c, "MAIL FROM:<");
	out_str(c, m->from);
	out_str(c, ">");
	if (c->ext & SMTPC_EXT_SIZE) {
		char num[32];
		snprintf(num, sizeof(num), " SIZE=%" PRIu64, m->size);
		out_str(c, num);
	}
	if (c->ext & SMTPC_EXT_8BITMIME) {
		if (m->body == SMTP_BODY_8BITMIME)
			out_str(c, " BODY=8BITMIME");
		else if (m->body == SMTP_BODY_7BIT)
			out_str(c, " BODY=7BIT");
	}
	if (m->smtputf8 && (c->ext & SMTPC_EXT_SMTPUTF8))
		out_str(c, " SMTPUTF8");
	if (c->ext & SMTPC_EXT_DSN) {
		if (m->ret == SMTP_RET_FULL)
			out_str(c, " RET=FULL");
		else if (m->ret == SMTP_RET_HDRS)
			out_str(c, " RET=HDRS");
		if (m->envid) {
			out_str(c, " ENVID=");
			out_str(c, m->envid);
		}
	}
	out_end(c);
}

static void put_rcpt(struct smtp_client *c, const struct smtp_client_msg *m, unsigned i)
{
	const struct smtp_client_rcpt *r = &m->rcpt[i];
	out_str(c, "RCPT TO:<");
	out_str(c, r->addr);
	/* <Postmaster> was ours; unqualified, the next hop would take it
	 * for its own. */
	if (!strchr(r->addr, '@') && c->p.helo_name && *c->p.helo_name) {
		out_str(c, "@");
		out_str(c, c->p.helo_name);
	}
	out_str(c, ">");
	if ((c->ext & SMTPC_EXT_DSN) && r->notify) {
		static const struct {
			unsigned bit;
			const char *name;
		} words[] = {
			{SMTP_NOTIFY_SUCCESS, "SUCCESS"},
			{SMTP_NOTIFY_FAILURE, "FAILURE"},
			{SMTP_NOTIFY_DELAY, "DELAY"},
		};
		out_str(c, " NOTIFY=");
		if (r->notify & SMTP_NOTIFY_NEVER) {
			out_str(c, "NEVER");
		} else {
			const char *sep = "";
			for (size_t k = 0; k < sizeof(words) / sizeof(words[0]); k++) {
				if (r->notify & words[k].bit) {
					out_str(c, sep);
					out_str(c, words[k].name);
					sep = ",";
				}
			}
		}
	}
	if ((c->ext & SMTPC_EXT_DSN) && r->orcpt) {
		out_str(c, " ORCPT=");
		out_str(c, r->orcpt);
	}
	out_end(c);
}

static void put_line(struct smtp_client *c, const char *verb, const char *arg)
{
	out_str(c, verb);
	if (arg) {
		out_str(c, " ");
		out_str(c, arg);
	}
	out_end(c);
}

/* ---- AUTH (RFC 4954) ------------------------------------------------------ */

/* Client responses a mechanism sends, in order: PLAIN one, LOGIN the user
 * and the password, XOAUTH2 its credentials and, after the 334 that
 * carries the server's error, an empty one (the server then sends the
 * final 5xx). */
#define XO_USER "user="
#define XO_AUTH "\001auth=Bearer "
#define XO_END "\001\001"

static unsigned auth_responses(enum smtp_client_auth m)
{
	return m == SMTPC_AUTH_PLAIN ? 1 : 2;
}

/* The raw bytes of response k (malloc'd, the caller wipes and frees), or
 * NULL when out of memory. */
static unsigned char *auth_raw(const struct smtp_client *c, unsigned k, size_t *len)
{
	const char *u = c->p.auth_user ? c->p.auth_user : "";
	const char *pw = c->p.auth_secret ? c->p.auth_secret : "";
	size_t ul = strlen(u), pl = strlen(pw);
	size_t n = 0;
	unsigned char *b = malloc(ul + pl + 32);
	if (!b)
		return NULL;
#define PUT(p, l)                                                           \
	do {                                                                \
		memcpy(b + n, (p), (l));                                    \
		n += (l);                                                   \
	} while (0)
	switch (c->p.auth) {
	case SMTPC_AUTH_PLAIN:
		/* authzid (empty) NUL authcid NUL passwd (RFC 4616 2) */
		PUT("", 1);
		PUT(u, ul);
		PUT("", 1);
		PUT(pw, pl);
		break;
	case SMTPC_AUTH_LOGIN:
		if (k == 0)
			PUT(u, ul);
		else
			PUT(pw, pl);
		break;
	case SMTPC_AUTH_XOAUTH2:
		if (k == 0) {
			PUT(XO_USER, strlen(XO_USER));
			PUT(u, ul);
			PUT(XO_AUTH, strlen(XO_AUTH));
			PUT(pw, pl);
			PUT(XO_END, strlen(XO_END));
		}
		break;
	default:
		break;
	}
#undef PUT
	*len = n;
	return b;
}

/* Response k in base64 onto the command being built. */
static void put_auth_response(struct smtp_client *c, unsigned k)
{
	size_t n;
	unsigned char *raw = auth_raw(c, k, &n);
	if (!raw) {
		c->out_oom = true;
		return;
	}
	if (out_room(c, BASE64_ENCODED_LEN(n)))
		c->out_len += base64_encode(raw, n, c->out + c->out_len);
	explicit_bzero(raw, n);
	free(raw);
}

/* Whether the first response rides on the AUTH line (LOGIN's never does:
 * the user name waits for its 334, as servers expect). */
static bool auth_initial(const struct smtp_client *c)
{
	if (c->p.auth == SMTPC_AUTH_LOGIN)
		return false;
	size_t ul = c->p.auth_user ? strlen(c->p.auth_user) : 0;
	size_t pl = c->p.auth_secret ? strlen(c->p.auth_secret) : 0;
	size_t raw = c->p.auth == SMTPC_AUTH_PLAIN
			     ? 2 + ul + pl
			     : strlen(XO_USER) + ul + strlen(XO_AUTH) + pl + strlen(XO_END);
	size_t line = strlen("AUTH ") + strlen(smtp_client_auth_name(c->p.auth)) + 1 +
		      (BASE64_ENCODED_LEN(raw) - 1) + 2;
	return line <= AUTH_LINE_MAX;
}

static void put_auth(struct smtp_client *c)
{
	out_str(c, "AUTH ");
	out_str(c, smtp_client_auth_name(c->p.auth));
	if (auth_initial(c)) {
		out_str(c, " ");
		put_auth_response(c, 0);
		c->auth_step = 1;
	}
	out_end(c);
}

/* Credentials leave no copy in out once they are on the wire. */
static void out_wipe(struct smtp_client *c)
{
	if (!c->out_secret)
		return;
	if (c->out)
		explicit_bzero(c->out, c->out_cap);
	c->out_secret = false;
}

/* Hands out the queued command. False when it could not be built. */
static bool emit(struct smtp_client *c, struct smtp_client_event *ev)
{
	int cmd = c->queued;
	c->queued = CMD_NONE;
	if (cmd == CMD_BODY) {
		ev->type = SMTPC_EV_SEND_BODY;
		ev->bdat = c->chunking;
		c->sent_pending = true;
		return true;
	}
	out_wipe(c);
	c->out_len = 0;
	c->out_oom = false;
	switch (cmd) {
	case CMD_AUTH:
		c->out_secret = true;
		put_auth(c);
		break;
	case CMD_AUTH_RESP:
		c->out_secret = true;
		put_auth_response(c, c->auth_step++);
		out_end(c);
		break;
	case CMD_EHLO:
		put_line(c, "EHLO", c->p.helo_name);
		break;
	case CMD_HELO:
		put_line(c, "HELO", c->p.helo_name);
		break;
	case CMD_STARTTLS:
		put_line(c, "STARTTLS", NULL);
		break;
	case CMD_NEXT:
		/* The next transaction, while the reply to this body's dot
		 * is awaited (RFC 2920 3.1: the message content may begin a
		 * group, so what follows it may ride with it). */
		put_mail(c, c->next_msg);
		for (unsigned i = 0; i < c->next_msg->nrcpt; i++)
			put_rcpt(c, c->next_msg, i);
		put_line(c, "DATA", NULL);
		c->next_sent = true;
		break;
	case CMD_BATCH:
		put_mail(c, c->msg);
		for (unsigned i = 0; i < c->msg->nrcpt; i++)
			put_rcpt(c, c->msg, i);
		/* With CHUNKING the chunk waits for the RCPT replies: octets
		 * sent after a refused envelope would be read for nothing. */
		if (!c->chunking)
			put_line(c, "DATA", NULL);
		c->rcpt_sent = c->msg->nrcpt;
		break;
	case CMD_BDAT: {
		char num[48];
		snprintf(num, sizeof(num), "%" PRIu64 " LAST", c->msg->size);
		put_line(c, "BDAT", num);
		c->queued = CMD_BODY; /* handed out once the line is sent */
		break;
	}
	case CMD_MAIL:
		put_mail(c, c->msg);
		break;
	case CMD_RCPT:
		put_rcpt(c, c->msg, c->rcpt_sent++);
		break;
	case CMD_DATA:
		put_line(c, "DATA", NULL);
		break;
	case CMD_DOT:
		put_line(c, ".", NULL);
		break;
	case CMD_RSET:
		put_line(c, "RSET", NULL);
		break;
	case CMD_QUIT:
		put_line(c, "QUIT", NULL);
		break;
	default:
		assert(!"no command queued");
		return false;
	}
	if (c->out_oom) {
		end_session(c, 451, "4.3.0", "451 4.3.0 Out of memory", SMTPC_STAGE_LOCAL);
		return false;
	}
	ev->type = SMTPC_EV_SEND;
	ev->data = c->out;
	ev->len = c->out_len;
	c->sent_pending = true;
	return true;
}

static void queue(struct smtp_client *c, enum client_cmd cmd, enum client_state st)
{
	c->queued = cmd;
	c->state = st;
}

/* ---- replies -------------------------------------------------------------- */

static bool is_digit(char ch)
{
	return ch >= '0' && ch <= '9';
}

/* "N.N.N" (RFC 3463: class, 1-3 digit subject and detail) of class cls at
 * the start of s, followed by a space or the end. Returns its length. */
static size_t enhanced_status_len(const char *s, size_t n, char cls)
{
	if (n < 5 || s[0] != cls || s[1] != '.')
		return 0;
	size_t i = 2;
	for (int part = 0; part < 2; part++) {
		size_t start = i;
		while (i < n && is_digit(s[i]) && i - start < 4)
			i++;
		if (i == start || i - start > 3)
			return 0;
		if (part == 0) {
			if (i >= n || s[i] != '.')
				return 0;
			i++;
		}
	}
	if (i < n && s[i] != ' ')
		return 0;
	return i;
}

static void reply_append(struct smtp_client *c, const char *s, size_t n)
{
	for (size_t i = 0; i < n && c->reply_len + 1 < sizeof(c->reply); i++) {
		unsigned char ch = (unsigned char)s[i];
		c->reply[c->reply_len++] = ch < 0x20 || ch == 0x7f ? ' ' : (char)ch;
	}
	c->reply[c->reply_len] = '\0';
}

static void reply_begin(struct smtp_client *c, int code, const char *line,
			const char *text, size_t tlen)
{
	c->reply_code = code;
	c->reply_len = 0;
	reply_append(c, line, 3);
	if (tlen) {
		reply_append(c, " ", 1);
		reply_append(c, text, tlen);
	}
	size_t st = enhanced_status_len(text, tlen, line[0]);
	c->reply_has_status = st > 0;
	if (st) {
		memcpy(c->reply_status, text, st);
		c->reply_status[st] = '\0';
	} else {
		snprintf(c->reply_status, sizeof(c->reply_status), "%c.0.0",
			 line[0] == '2' || line[0] == '4' ? line[0] : '5');
	}
}

/* Continuation lines join the text with a single space, without their code
 * and without a repeat of the first line's enhanced status. */
static void reply_continue(struct smtp_client *c, const char *text, size_t tlen)
{
	if (c->reply_has_status) {
		size_t sl = strlen(c->reply_status);
		if (tlen >= sl && memcmp(text, c->reply_status, sl) == 0 &&
		    (tlen == sl || text[sl] == ' ')) {
			text += sl;
			tlen -= sl;
			while (tlen && *text == ' ') {
				text++;
				tlen--;
			}
		}
	}
	if (!tlen)
		return;
	reply_append(c, " ", 1);
	reply_append(c, text, tlen);
}

static const struct {
	const char *name;
	unsigned bit;
} ehlo_keywords[] = {
	{"PIPELINING", SMTPC_EXT_PIPELINING},
	{"SIZE", SMTPC_EXT_SIZE},
	{"8BITMIME", SMTPC_EXT_8BITMIME},
	{"DSN", SMTPC_EXT_DSN},
	{"SMTPUTF8", SMTPC_EXT_SMTPUTF8},
	{"ENHANCEDSTATUSCODES", SMTPC_EXT_ENHANCEDSTATUSCODES},
	{"STARTTLS", SMTPC_EXT_STARTTLS},
	{"CHUNKING", SMTPC_EXT_CHUNKING},
};

/* "AUTH PLAIN LOGIN ..." (RFC 4954), or "AUTH=LOGIN PLAIN" as servers
 * written for pre-standard clients still send it: the mechanisms we know. */
static bool ehlo_auth(struct smtp_client *c, const char *s, size_t n)
{
	if (n < 4 || strncasecmp(s, "AUTH", 4) != 0 || (n > 4 && s[4] != ' ' && s[4] != '='))
		return false;
	c->ehlo_ext |= SMTPC_EXT_AUTH;
	for (size_t i = 4; i < n;) {
		while (i < n && (s[i] == ' ' || s[i] == '='))
			i++;
		size_t start = i;
		while (i < n && s[i] != ' ')
			i++;
		for (unsigned m = SMTPC_AUTH_PLAIN; m <= SMTPC_AUTH_XOAUTH2; m++) {
			const char *name = auth_names[m];
			if (i - start == strlen(name) && strncasecmp(s + start, name, i - start) == 0)
				c->ehlo_auth |= 1u << m;
		}
	}
	return true;
}

/* One EHLO extension line: "KEYWORD [params]". */
static void ehlo_keyword(struct smtp_client *c, const char *s, size_t n)
{
	if (ehlo_auth(c, s, n))
		return;
	size_t kw = 0;
	while (kw < n && s[kw] != ' ')
		kw++;
	for (size_t k = 0; k < sizeof(ehlo_keywords) / sizeof(ehlo_keywords[0]); k++) {
		const char *name = ehlo_keywords[k].name;
		if (strlen(name) == kw && strncasecmp(s, name, kw) == 0) {
			c->ehlo_ext |= ehlo_keywords[k].bit;
			break;
		}
	}
	if (kw != 4 || strncasecmp(s, "SIZE", 4) != 0)
		return;
	size_t i = kw;
	while (i < n && s[i] == ' ')
		i++;
	uint64_t v = 0;
	for (; i < n && is_digit(s[i]); i++) {
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10) {
			v = 0; /* absurd: as good as no limit */
			break;
		}
		v = v * 10 + d;
	}
	c->ehlo_size = v;
}

/* The name a greeting or EHLO reply starts with. */
static void first_word(char *dst, size_t cap, const char *s, size_t n)
{
	size_t k = 0;
	while (k < n && k + 1 < cap && (unsigned char)s[k] > ' ' && s[k] != 0x7f) {
		dst[k] = s[k];
		k++;
	}
	dst[k] = '\0';
}

/* A next hop calling itself by our name is us, or hands the mail straight
 * back (DESIGN B.6): nothing more is said to it. */
static bool names_us(const struct smtp_client *c, const char *name)
{
	return c->p.helo_name && *c->p.helo_name && strcasecmp(name, c->p.helo_name) == 0;
}

static void loop_found(struct smtp_client *c, const char *where, enum smtp_client_stage stage)
{
	char text[sizeof(c->reply)];
	snprintf(text, sizeof(text), "451 4.4.6 The next hop's %s names our own hostname %.256s",
		 where, c->p.helo_name);
	c->loop = true;
	end_session(c, 451, "4.4.6", text, stage);
}

/* The transaction failed before the body: report, then clear it. */
static void txn_abandon(struct smtp_client *c)
{
	c->done_pending = true;
	queue(c, CMD_RSET, ST_RSET);
}

static void unexpected_reply(struct smtp_client *c)
{
	protocol_error(c, "Unexpected reply from server", c->reply, c->reply_len);
}

/* Reply classes that make sense where the dialogue stands; anything else
 * (a 3xx to MAIL, a 2xx to DATA, a reply while idle) ends the session. */
static bool class_expected(const struct smtp_client *c, int cls)
{
	switch (c->state) {
	case ST_READY:
		return false;
	case ST_TXN:
		/* After a failed pipelined MAIL the rest only gets 503s. */
		if (c->mail_failed)
			return true;
		return txn_stage(c) == SMTPC_STAGE_DATA ? cls != 2 : cls != 3;
	case ST_DISCARD_DOT:
	case ST_AUTH:
		return true;
	default:
		return cls != 3;
	}
}

static void mail_reply(struct smtp_client *c, int cls)
{
	c->mail_replied = true;
	if (cls == 2) {
		if (!c->pipelined)
			c->queued = CMD_RCPT;
		return;
	}
	c->mail_failed = true;
	fail_open_with_reply(c, SMTPC_STAGE_MAIL);
	if (!c->pipelined)
		txn_abandon(c);
}

static void rcpt_reply(struct smtp_client *c, int cls)
{
	if (!c->mail_failed) {
		reply_result(c, &c->res[c->rcpt_replied], SMTPC_STAGE_RCPT);
		if (cls == 2)
			c->rcpt_accepted++;
	}
	c->rcpt_replied++;
	if (c->chunking && c->rcpt_replied == c->msg->nrcpt) {
		/* RFC 3030: the whole message is one LAST chunk; its reply is
		 * the message's, read as the reply to DATA's dot is. */
		if (c->rcpt_accepted && !c->mail_failed)
			queue(c, CMD_BDAT, ST_BODY);
		else
			txn_abandon(c);
		return;
	}
	if (c->pipelined)
		return;
	if (c->rcpt_replied < c->msg->nrcpt)
		c->queued = CMD_RCPT;
	else if (c->rcpt_accepted)
		c->queued = CMD_DATA;
	else
		txn_abandon(c);
}

static void data_reply(struct smtp_client *c, int cls)
{
	if (cls == 3 && c->rcpt_accepted) {
		queue(c, CMD_BODY, ST_BODY);
	} else if (cls == 3) {
		/* Pipelined DATA went through although nobody was accepted:
		 * end the empty message rather than send the body. */
		c->done_pending = true;
		queue(c, CMD_DOT, ST_DISCARD_DOT);
	} else {
		fail_open_with_reply(c, SMTPC_STAGE_DATA);
		txn_abandon(c);
	}
}

static void txn_reply(struct smtp_client *c, int cls)
{
	switch (txn_stage(c)) {
	case SMTPC_STAGE_MAIL:
		mail_reply(c, cls);
		break;
	case SMTPC_STAGE_RCPT:
		rcpt_reply(c, cls);
		break;
	default:
		data_reply(c, cls);
		break;
	}
}

/* After a successful EHLO or HELO: STARTTLS when asked for and offered,
 * once per connection. A requirement that cannot be met ends the session
 * with a 4xx: a TLS problem is the next hop's state, never a bounce. */
static void tls_decide(struct smtp_client *c)
{
	if (c->p.tls == SMTPC_TLS_NONE || c->tls_state != SMTPC_TLSST_UNTRIED)
		return;
	if (c->ext & SMTPC_EXT_STARTTLS) {
		queue(c, CMD_STARTTLS, ST_STARTTLS);
		return;
	}
	c->tls_state = SMTPC_TLSST_NOT_OFFERED;
	if (c->p.tls == SMTPC_TLS_REQUIRE)
		end_session(c, 451, "4.7.5",
			    "451 4.7.5 TLS is required, but was not offered by the next hop",
			    SMTPC_STAGE_EHLO);
}

/* After the last EHLO (inside TLS when STARTTLS ran): AUTH when we have
 * credentials. Each way it cannot be done ends the session with a 4xx:
 * the next hop's settings or ours, never the message's fault. */
static void auth_decide(struct smtp_client *c)
{
	if (c->p.auth == SMTPC_AUTH_NONE || c->auth_state != SMTPC_AUTHST_UNTRIED ||
	    c->state != ST_READY || c->queued != CMD_NONE || c->quit_wanted)
		return;
	if (c->p.auth_needs_tls && c->tls_state != SMTPC_TLSST_ACTIVE) {
		c->auth_state = SMTPC_AUTHST_WITHHELD;
		end_session(c, 451, "4.7.10",
			    "451 4.7.10 Credentials withheld: no TLS to the next hop",
			    SMTPC_STAGE_AUTH);
		return;
	}
	if (!(c->auth_mechs & (1u << c->p.auth))) {
		char text[80];
		snprintf(text, sizeof(text), "451 4.7.0 Next hop does not offer AUTH%s%s",
			 c->ext & SMTPC_EXT_AUTH ? " " : "",
			 c->ext & SMTPC_EXT_AUTH ? smtp_client_auth_name(c->p.auth) : "");
		c->auth_state = SMTPC_AUTHST_NOT_OFFERED;
		end_session(c, 451, "4.7.0", text, SMTPC_STAGE_AUTH);
		return;
	}
	c->auth_state = SMTPC_AUTHST_SENT;
	c->auth_step = 0;
	queue(c, CMD_AUTH, ST_AUTH);
}

/* The reply that ended AUTH, kept for the engine's log line. */
static void auth_keep_reply(struct smtp_client *c)
{
	c->auth_state = SMTPC_AUTHST_REFUSED;
	c->auth_code = c->reply_code;
	copy_str(c->auth_status, sizeof(c->auth_status), c->reply_status);
	copy_str(c->auth_reply, sizeof(c->auth_reply), c->reply);
}

static void auth_reply(struct smtp_client *c, int cls)
{
	if (cls == 2) {
		c->auth_state = SMTPC_AUTHST_OK;
		c->state = ST_READY;
		return;
	}
	if (cls == 3 && c->auth_step < auth_responses(c->p.auth)) {
		queue(c, CMD_AUTH_RESP, ST_AUTH);
		return;
	}
	auth_keep_reply(c);
	const char *fmt = cls == 5   ? "451 4.7.8 Next hop refused our credentials: %s"
			  : cls == 4 ? "451 4.7.0 Next hop could not authenticate us: %s"
				     : "451 4.7.0 Unexpected AUTH challenge from the next hop: %s";
	char text[sizeof(c->reply) + 64];
	snprintf(text, sizeof(text), fmt, c->reply);
	end_session(c, 451, cls == 5 ? "4.7.8" : "4.7.0", text, SMTPC_STAGE_AUTH);
}

static void starttls_reply(struct smtp_client *c, int cls)
{
	if (cls == 2) {
		c->tls_state = SMTPC_TLSST_HANDSHAKE;
		c->state = ST_TLS;
		return;
	}
	c->tls_state = SMTPC_TLSST_REFUSED;
	copy_str(c->tls_reply, sizeof(c->tls_reply), c->reply);
	if (c->p.tls != SMTPC_TLS_REQUIRE) {
		/* Plaintext, with what the first EHLO offered. */
		c->state = ST_READY;
		auth_decide(c);
		return;
	}
	char text[sizeof(c->reply) + 80];
	snprintf(text, sizeof(text), "451 4.7.5 TLS is required, but the next hop refused STARTTLS: %s",
		 c->reply);
	end_session(c, 451, "4.7.5", text, SMTPC_STAGE_EHLO);
}

static void hello_reply(struct smtp_client *c, int cls)
{
	if (cls == 2 && names_us(c, c->hello_name)) {
		loop_found(c, c->state == ST_EHLO ? "EHLO reply" : "HELO reply", SMTPC_STAGE_EHLO);
	} else if (cls == 2) {
		bool esmtp = c->state == ST_EHLO;
		c->ext = esmtp ? c->ehlo_ext : 0;
		c->auth_mechs = esmtp ? c->ehlo_auth : 0;
		c->max_size = (c->ext & SMTPC_EXT_SIZE) ? c->ehlo_size : 0;
		c->esmtp = esmtp;
		c->state = ST_READY;
		tls_decide(c);
		auth_decide(c);
	} else if (cls == 5 && c->state == ST_EHLO) {
		/* RFC 5321 4.1.4 / 3.2: an old server refusing EHLO. */
		queue(c, CMD_HELO, ST_HELO);
	} else {
		end_session_with_reply(c);
	}
}

static void handle_reply(struct smtp_client *c)
{
	int cls = c->reply_code / 100;
	if (c->state == ST_QUIT && c->queued == CMD_NONE) {
		c->state = ST_CLOSED;
		return;
	}
	if (c->reply_code == 421) {
		if (c->state == ST_AUTH)
			auth_keep_reply(c);
		end_session_with_reply(c);
		return;
	}
	/* queued: a reply to a command not even handed out yet (the next
	 * transaction waits for this body to be sent: the reply is its dot's). */
	if ((c->queued != CMD_NONE && c->queued != CMD_NEXT) || !class_expected(c, cls)) {
		unexpected_reply(c);
		return;
	}
	switch (c->state) {
	case ST_GREETING:
		if (cls != 2) {
			end_session_with_reply(c);
		} else if (names_us(c, c->greeting_name)) {
			loop_found(c, "greeting", SMTPC_STAGE_GREETING);
		} else if (c->quit_wanted) {
			queue(c, CMD_QUIT, ST_QUIT);
		} else {
			c->ehlo_ext = 0;
			c->ehlo_auth = 0;
			c->ehlo_size = 0;
			queue(c, CMD_EHLO, ST_EHLO);
		}
		break;
	case ST_EHLO:
	case ST_HELO:
		hello_reply(c, cls);
		break;
	case ST_STARTTLS:
		starttls_reply(c, cls);
		break;
	case ST_AUTH:
		auth_reply(c, cls);
		break;
	case ST_TXN:
		txn_reply(c, cls);
		break;
	case ST_BODY:
		fail_open_with_reply(c, SMTPC_STAGE_DOT);
		c->done_pending = true;
		c->state = ST_READY;
		break;
	case ST_DISCARD_DOT:
		c->state = ST_READY;
		break;
	case ST_RSET:
		/* A server that cannot reset is not one to reuse. */
		if (cls == 2)
			c->state = ST_READY;
		else
			end_session_with_reply(c);
		break;
	default:
		unexpected_reply(c);
		break;
	}
}

/* A reply beyond SMTPC_REPLY_*_MAX (text says which): after QUIT the
 * connection just closes, else the session ends. */
static void reply_capped(struct smtp_client *c, const char *text)
{
	c->line_len = c->line_octets = 0;
	c->line_overflow = false;
	c->reply_lines = 0;
	c->reply_octets = 0;
	if (c->state == ST_QUIT && c->queued == CMD_NONE) {
		c->state = ST_CLOSED;
		return;
	}
	end_session(c, 451, "4.4.2", text, current_stage(c));
}

/* After take_line: true when the line or the reply got too long. */
static bool reply_too_long(struct smtp_client *c)
{
	char text[100];
	if (c->line_octets > SMTPC_REPLY_LINE_MAX)
		snprintf(text, sizeof(text), "451 4.4.2 Reply line from the next hop longer than %u octets",
			 SMTPC_REPLY_LINE_MAX);
	else if (c->reply_octets > SMTPC_REPLY_OCTETS_MAX)
		snprintf(text, sizeof(text), "451 4.4.2 Reply from the next hop longer than %u octets",
			 SMTPC_REPLY_OCTETS_MAX);
	else
		return false;
	reply_capped(c, text);
	return true;
}

/* One complete line in c->line (without its line end). */
static void process_line(struct smtp_client *c)
{
	const char *l = c->line;
	size_t n = c->line_len;
	if (!c->line_overflow && n && l[n - 1] == '\r')
		n--;
	c->line_len = 0;
	c->line_octets = 0;
	c->line_overflow = false;
	bool ok = n >= 3 && l[0] >= '2' && l[0] <= '5' && is_digit(l[1]) &&
		  is_digit(l[2]) && (n == 3 || l[3] == ' ' || l[3] == '-');
	if (!ok) {
		if (c->state == ST_QUIT && c->queued == CMD_NONE) {
			c->state = ST_CLOSED;
			return;
		}
		c->reply_lines = 0;
		c->reply_octets = 0;
		protocol_error(c, "Malformed reply from server", l, n);
		return;
	}
	if (c->reply_lines == SMTPC_REPLY_LINES_MAX) {
		char text[80];
		snprintf(text, sizeof(text), "451 4.4.2 Reply from the next hop longer than %u lines",
			 SMTPC_REPLY_LINES_MAX);
		reply_capped(c, text);
		return;
	}
	const char *text = n > 4 ? l + 4 : "";
	size_t tlen = n > 4 ? n - 4 : 0;
	if (c->reply_lines == 0) {
		int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
		reply_begin(c, code, l, text, tlen);
		if (c->state == ST_GREETING)
			first_word(c->greeting_name, sizeof(c->greeting_name), text, tlen);
		if (c->state == ST_EHLO || c->state == ST_HELO)
			first_word(c->hello_name, sizeof(c->hello_name), text, tlen);
	} else {
		/* The code of the first line counts (RFC 5321 4.2.1 wants them
		 * all equal; being lenient costs nothing here). */
		reply_continue(c, text, tlen);
		if (c->state == ST_EHLO)
			ehlo_keyword(c, text, tlen);
	}
	c->reply_lines++;
	if (n == 3 || l[3] == ' ') {
		c->reply_lines = 0;
		c->reply_octets = 0;
		c->replies++;
		handle_reply(c);
	}
}

/* Takes bytes up to and including the next LF. What does not fit line[]
 * is counted but not kept (the reply text is shorter still). */
static size_t take_line(struct smtp_client *c, const char *in, size_t len,
			bool *complete)
{
	const char *lf = memchr(in, '\n', len);
	size_t n = lf ? (size_t)(lf - in) : len;
	size_t room = sizeof(c->line) - c->line_len;
	size_t k = n < room ? n : room;
	memcpy(c->line + c->line_len, in, k);
	c->line_len += k;
	if (k < n)
		c->line_overflow = true;
	*complete = lf != NULL;
	size_t used = lf ? n + 1 : n;
	c->line_octets += used;
	c->reply_octets += used;
	return used;
}

/* ---- public ----------------------------------------------------------- */

void smtp_client_init(struct smtp_client *c, const struct smtp_client_params *p)
{
	memset(c, 0, sizeof(*c));
	c->p = *p;
	c->state = ST_GREETING;
	c->queued = CMD_NONE;
}

void smtp_client_free(struct smtp_client *c)
{
	out_wipe(c);
	free(c->out);
	c->out = NULL;
	c->out_len = c->out_cap = 0;
}

/* The message queued behind the body becomes the current one, its
 * MAIL, RCPT and DATA already sent (or, if not yet, about to be). */
static void promote_next(struct smtp_client *c)
{
	c->msg = c->next_msg;
	c->res = c->next_res;
	c->mail_replied = c->mail_failed = false;
	c->rcpt_replied = c->rcpt_accepted = 0;
	c->rcpt_sent = c->next_sent ? c->msg->nrcpt : 0;
	c->pipelined = true;
	c->chunking = false;
	queue(c, c->next_sent ? CMD_NONE : CMD_BATCH, ST_TXN);
}

/* Events that need no input: in the order MSG_DONE, CLOSE, STARTTLS, SEND. */
static bool next_event(struct smtp_client *c, struct smtp_client_event *ev)
{
	if (c->done_pending) {
		c->done_pending = false;
		c->msg = NULL;
		c->res = NULL;
		if (c->next_msg && c->state != ST_CLOSED)
			promote_next(c);
		c->next_msg = NULL;
		c->next_res = NULL;
		c->next_sent = false;
		ev->type = SMTPC_EV_MSG_DONE;
		return true;
	}
	if (c->state == ST_CLOSED) {
		ev->type = SMTPC_EV_CLOSE;
		return true;
	}
	/* Not a byte more is read in plaintext after the 220. */
	if (c->state == ST_TLS) {
		ev->type = SMTPC_EV_STARTTLS;
		return true;
	}
	if (c->queued != CMD_NONE && !c->sent_pending)
		return emit(c, ev) || next_event(c, ev);
	return false;
}

size_t smtp_client_feed(struct smtp_client *c, const char *in, size_t len,
			struct smtp_client_event *ev)
{
	size_t used = 0;
	ev->data = NULL;
	ev->len = 0;
	ev->bdat = false;
	for (;;) {
		if (next_event(c, ev))
			return used;
		if (used == len) {
			ev->type = SMTPC_EV_NEED_INPUT;
			if (c->state == ST_READY && !c->sent_pending) {
				if (c->quit_wanted) {
					queue(c, CMD_QUIT, ST_QUIT);
					continue;
				}
				ev->type = SMTPC_EV_READY;
			}
			return used;
		}
		bool complete;
		used += take_line(c, in + used, len - used, &complete);
		if (!reply_too_long(c) && complete)
			process_line(c);
	}
}

void smtp_client_sent(struct smtp_client *c)
{
	c->sent_pending = false;
	out_wipe(c);
}

void smtp_client_tls_started(struct smtp_client *c)
{
	assert(c->state == ST_TLS && !c->sent_pending);
	if (c->state != ST_TLS)
		return;
	c->tls_state = SMTPC_TLSST_ACTIVE;
	c->ext = 0;
	c->max_size = 0;
	c->esmtp = false;
	c->ehlo_ext = 0;
	c->ehlo_auth = 0;
	c->auth_mechs = 0;
	c->ehlo_size = 0;
	c->line_len = c->line_octets = 0;
	c->line_overflow = false;
	c->reply_lines = 0;
	c->reply_octets = 0;
	c->hello_name[0] = '\0';
	queue(c, CMD_EHLO, ST_EHLO);
}

static bool has_line_break(const char *s)
{
	return s && strpbrk(s, "\r\n") != NULL;
}

/* Why the message cannot go to this server at all, or NULL. */
static const char *local_refusal(const struct smtp_client *c,
				 const struct smtp_client_msg *m, int *code,
				 const char **status, char *text, size_t cap)
{
	bool bad = has_line_break(m->from) || has_line_break(m->envid);
	for (unsigned i = 0; i < m->nrcpt && !bad; i++)
		bad = has_line_break(m->rcpt[i].addr) || has_line_break(m->rcpt[i].orcpt);
	if (bad) {
		*code = 501;
		*status = "5.5.4";
		snprintf(text, cap, "501 5.5.4 Line break in an address or parameter");
		return text;
	}
	if ((c->ext & SMTPC_EXT_SIZE) && c->max_size && m->size > c->max_size) {
		*code = 552;
		*status = "5.3.4";
		snprintf(text, cap,
			 "552 5.3.4 Message size exceeds the next hop's limit of %" PRIu64,
			 c->max_size);
		return text;
	}
	if (m->smtputf8 && !(c->ext & SMTPC_EXT_SMTPUTF8)) {
		*code = 553;
		*status = "5.6.7";
		snprintf(text, cap,
			 "553 5.6.7 SMTPUTF8 is required but the next hop does not offer it");
		return text;
	}
	return NULL;
}

void smtp_client_start(struct smtp_client *c, const struct smtp_client_msg *m,
		       struct smtp_client_result *res)
{
	assert(c->state == ST_READY && !c->msg && c->queued == CMD_NONE);
	assert(m->from && (m->nrcpt == 0 || (m->rcpt && res)));
	for (unsigned i = 0; i < m->nrcpt; i++)
		memset(&res[i], 0, sizeof(res[i]));
	c->msg = m;
	c->res = res;
	c->mail_replied = c->mail_failed = false;
	c->rcpt_sent = c->rcpt_replied = c->rcpt_accepted = 0;
	c->pipelined = (c->ext & SMTPC_EXT_PIPELINING) && !c->p.no_pipelining;
	c->chunking = (c->ext & SMTPC_EXT_CHUNKING) && m->dotless;
	int code = 0;
	const char *status = NULL;
	char text[sizeof(res->text)];
	if (m->nrcpt == 0) {
		c->done_pending = true;
		return;
	}
	if (c->state != ST_READY) {
		/* Misuse; asserted above. Answer rather than hang the caller. */
		fail_open(c, 451, "4.3.0", "451 4.3.0 Client not ready", SMTPC_STAGE_LOCAL);
		c->done_pending = true;
		return;
	}
	if (local_refusal(c, m, &code, &status, text, sizeof(text))) {
		fail_open(c, code, status, text, SMTPC_STAGE_LOCAL);
		c->done_pending = true;
		return;
	}
	queue(c, c->pipelined ? CMD_BATCH : CMD_MAIL, ST_TXN);
}

bool smtp_client_next_wanted(const struct smtp_client *c)
{
	return c->state == ST_BODY && c->sent_pending && c->queued == CMD_NONE && c->pipelined &&
	       !c->chunking && !c->next_msg && !c->quit_wanted;
}

bool smtp_client_start_next(struct smtp_client *c, const struct smtp_client_msg *m,
			    struct smtp_client_result *res)
{
	int code = 0;
	const char *status = NULL;
	char text[sizeof(res->text)];
	if (!smtp_client_next_wanted(c) || m->nrcpt == 0 ||
	    ((c->ext & SMTPC_EXT_CHUNKING) && m->dotless) ||
	    local_refusal(c, m, &code, &status, text, sizeof(text)))
		return false;
	for (unsigned i = 0; i < m->nrcpt; i++)
		memset(&res[i], 0, sizeof(res[i]));
	c->next_msg = m;
	c->next_res = res;
	c->next_sent = false;
	c->queued = CMD_NEXT;
	return true;
}

void smtp_client_quit(struct smtp_client *c)
{
	if (c->state == ST_CLOSED)
		return;
	c->quit_wanted = true;
	if (c->state == ST_READY && !c->msg && c->queued == CMD_NONE)
		queue(c, CMD_QUIT, ST_QUIT);
}

bool smtp_client_fail(struct smtp_client *c, int code, const char *status,
		      const char *text)
{
	bool had = c->msg != NULL;
	if (c->state != ST_CLOSED && c->session_error.code == 0)
		set_result(&c->session_error, code, status, text, SMTPC_STAGE_CONNECT);
	fail_open(c, code, status, text, SMTPC_STAGE_CONNECT);
	c->msg = NULL;
	c->res = NULL;
	c->next_msg = NULL;
	c->next_res = NULL;
	c->next_sent = false;
	c->done_pending = false;
	c->queued = CMD_NONE;
	c->state = ST_CLOSED;
	return had;
}

uint64_t smtp_client_timeout_ms(const struct smtp_client *c)
{
	uint64_t done = c->p.data_timeout_ms ? c->p.data_timeout_ms : T_DATA_DONE_MS;
	switch (c->state) {
	case ST_READY:
	case ST_CLOSED:
		return 0;
	case ST_BODY: {
		if (!c->p.min_data_rate || !c->msg)
			return done;
		unsigned __int128 ms =
			(unsigned __int128)c->msg->size * 1000 / c->p.min_data_rate + done;
		return ms > UINT64_MAX ? UINT64_MAX : (uint64_t)ms;
	}
	case ST_DISCARD_DOT:
		return done; /* "." alone */
	default:
		return c->p.command_timeout_ms ? c->p.command_timeout_ms : T_COMMAND_MS;
	}
}

enum smtp_client_stage smtp_client_stage(const struct smtp_client *c)
{
	return current_stage(c);
}
