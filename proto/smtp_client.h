/* SMTP client state machine for delivery: reply bytes in, commands and
 * events out. Knows nothing of sockets, files or clocks: the engine connects,
 * sends what it is told, sends the stored message body itself (from the
 * spool, unchanged) and enforces the timeout this module names per stage.
 * One connection carries any number of messages (connection reuse). A
 * reply that oversteps the caps below, or a next hop that greets us with
 * our own name (a mail loop), ends the session. */
#ifndef POSTERN_SMTP_CLIENT_H
#define POSTERN_SMTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp_path.h"

/* What the server announced in its EHLO reply. */
enum smtp_client_ext {
	SMTPC_EXT_PIPELINING = 1 << 0,
	SMTPC_EXT_SIZE = 1 << 1,
	SMTPC_EXT_8BITMIME = 1 << 2,
	SMTPC_EXT_DSN = 1 << 3,
	SMTPC_EXT_SMTPUTF8 = 1 << 4,
	SMTPC_EXT_ENHANCEDSTATUSCODES = 1 << 5,
	SMTPC_EXT_STARTTLS = 1 << 6,
	SMTPC_EXT_CHUNKING = 1 << 7,
	SMTPC_EXT_AUTH = 1 << 8,
};

/* Where in the dialogue a reply (or a failure) came from. */
enum smtp_client_stage {
	SMTPC_STAGE_CONNECT,  /* set by the engine: connect failed, timeout, EOF */
	SMTPC_STAGE_GREETING,
	SMTPC_STAGE_EHLO,     /* EHLO, or HELO after EHLO was refused */
	SMTPC_STAGE_AUTH,     /* AUTH and its challenges (RFC 4954) */
	SMTPC_STAGE_MAIL,
	SMTPC_STAGE_RCPT,
	SMTPC_STAGE_DATA,     /* the reply to DATA (354 expected) */
	SMTPC_STAGE_DOT,      /* the reply after the message body */
	SMTPC_STAGE_LOCAL,    /* refused before sending: SIZE, SMTPUTF8 */
};

const char *smtp_client_stage_name(enum smtp_client_stage s);

/* What one reply may be: longer lines, more lines or more octets end the
 * session with a 451 4.4.2 (a next hop trickling or flooding a reply must
 * not hold the connection). A line counts its line end. 512 is RFC 5321
 * 4.5.3.1.5's limit; real servers overstep it with URLs in their 5xx
 * texts, so a line may have four times that, as Postfix's
 * line_length_limit. */
#define SMTPC_REPLY_LINE_MAX 2048
#define SMTPC_REPLY_LINES_MAX 100
#define SMTPC_REPLY_OCTETS_MAX 16384

struct smtp_client_rcpt {
	const char *addr;             /* mailbox, without <>; one without a
	                               * domain (<Postmaster>, ours: RFC 5321
	                               * 4.5.1) goes out as Postmaster@helo_name */
	unsigned notify;              /* SMTP_NOTIFY_* bits, 0 when absent */
	const char *orcpt;            /* "rfc822;xtext" as received, or NULL */
};

/* One message to send. Everything must stay valid until SMTPC_EV_MSG_DONE. */
struct smtp_client_msg {
	const char *from;             /* "" for the null sender */
	uint64_t size;                /* stored (wire form) octets, for SIZE= */
	enum smtp_body body;
	enum smtp_ret ret;
	const char *envid;            /* xtext as received, or NULL */
	bool smtputf8;
	/* No line of the stored form begins with "." (it is the message
	 * itself): with a next hop that offers CHUNKING it goes as one
	 * "BDAT <size> LAST" (RFC 3030), sent as it lies, instead of DATA. */
	bool dotless;
	const struct smtp_client_rcpt *rcpt;
	unsigned nrcpt;
};

/* Per recipient, filled in by the time SMTPC_EV_MSG_DONE is returned. */
struct smtp_client_result {
	int code;                     /* 250, 451, 550, ... */
	char status[12];              /* enhanced status "5.1.1"; derived from
	                               * the code ("4.0.0"/"5.0.0"/"2.0.0") when
	                               * the server sent none */
	char text[512];               /* the reply, lines joined by a space,
	                               * truncated; e.g. "550 5.1.1 No such user" */
	enum smtp_client_stage stage;
};

enum smtp_client_event_type {
	SMTPC_EV_SEND,       /* send out[0..len) completely, then smtp_client_sent() */
	SMTPC_EV_SEND_BODY,  /* send the stored message (wire form, CRLF-terminated,
	                      * dot-stuffed) followed by ".\r\n" (none when
	                      * ev.bdat: the chunk of a BDAT LAST), then smtp_client_sent() */
	SMTPC_EV_NEED_INPUT, /* wait for more reply bytes */
	SMTPC_EV_READY,      /* idle, in the initial state: smtp_client_start() or
	                      * smtp_client_quit() */
	SMTPC_EV_MSG_DONE,   /* the message's results are complete (also when the
	                      * connection failed part way: see smtp_client_fail) */
	SMTPC_EV_CLOSE,      /* close the connection: after QUIT, or the session
	                      * cannot continue (greeting/EHLO refused, reply
	                      * syntax, 421, TLS required but not to be had,
	                      * AUTH not offered or refused) */
	SMTPC_EV_STARTTLS,   /* the server said 220 to STARTTLS: do the TLS
	                      * handshake, then smtp_client_tls_started().
	                      * Whatever the server sent after its 220 in
	                      * plaintext must be discarded, never fed in
	                      * (RFC 3207 5); returned again until then. */
};

struct smtp_client_event {
	enum smtp_client_event_type type;
	const char *data;    /* SMTPC_EV_SEND */
	size_t len;
	bool bdat;           /* SMTPC_EV_SEND_BODY: the body alone, no end-of-data line */
};

/* Whether to ask for STARTTLS after EHLO. */
enum smtp_client_tls {
	SMTPC_TLS_NONE,               /* never */
	SMTPC_TLS_WANT,               /* when offered; plaintext otherwise */
	SMTPC_TLS_REQUIRE,            /* not offered or refused: the session
	                               * ends with a 451 4.7.5 */
};

/* How STARTTLS went (smtp_client_tls_state). */
enum smtp_client_tls_state {
	SMTPC_TLSST_UNTRIED,          /* not asked, or EHLO not answered yet */
	SMTPC_TLSST_NOT_OFFERED,      /* no STARTTLS in the EHLO (or HELO) reply */
	SMTPC_TLSST_REFUSED,          /* STARTTLS got no 2xx: tls_reply says what */
	SMTPC_TLSST_HANDSHAKE,        /* 220 received, handshake is the engine's */
	SMTPC_TLSST_ACTIVE,           /* smtp_client_tls_started() was called */
};

/* SASL mechanisms we can authenticate with (RFC 4954). */
enum smtp_client_auth {
	SMTPC_AUTH_NONE,
	SMTPC_AUTH_PLAIN,             /* RFC 4616, as the initial response */
	SMTPC_AUTH_LOGIN,             /* user, then password, each after a 334 */
	SMTPC_AUTH_XOAUTH2,           /* Google/Microsoft: user and bearer token */
};

const char *smtp_client_auth_name(enum smtp_client_auth m); /* "LOGIN" */

/* How AUTH went (smtp_client_auth_state). */
enum smtp_client_auth_state {
	SMTPC_AUTHST_UNTRIED,         /* no credentials, or EHLO not done yet */
	SMTPC_AUTHST_WITHHELD,        /* TLS was required for them and not active */
	SMTPC_AUTHST_NOT_OFFERED,     /* no AUTH, or not our mechanism, in EHLO */
	SMTPC_AUTHST_SENT,            /* AUTH is under way */
	SMTPC_AUTHST_OK,              /* 2xx: authenticated */
	SMTPC_AUTHST_REFUSED,         /* 4xx/5xx (or a challenge we cannot
	                               * answer): auth_reply says what */
};

struct smtp_client_params {
	const char *helo_name;        /* our hostname, for EHLO/HELO */
	bool no_pipelining;           /* never pipeline even when offered */
	enum smtp_client_tls tls;
	/* AUTH after the (last) EHLO, before the first MAIL. The strings stay
	 * valid for the session; they never appear in an event's text, a
	 * result or session_error. A next hop that does not offer the
	 * mechanism or refuses ends the session with a 4xx: credentials are
	 * the operator's business, never a reason to bounce. */
	enum smtp_client_auth auth;
	const char *auth_user;
	const char *auth_secret;      /* password (PLAIN, LOGIN), token (XOAUTH2) */
	bool auth_needs_tls;          /* withheld unless STARTTLS succeeded */
	/* What smtp_client_timeout_ms() says (0: the default). */
	uint64_t command_timeout_ms;  /* each reply, the greeting too: 5 min */
	uint64_t data_timeout_ms;     /* the body and its final reply: 10 min, */
	uint64_t min_data_rate;       /* ... plus size / this (octets a second;
	                               * 0: no more for a larger message) */
};

/* Opaque in spirit; fields are for the implementation. */
struct smtp_client {
	struct smtp_client_params p;
	int state;
	int queued;                   /* command to hand out once nothing is
	                               * outstanding (out is built only then) */
	unsigned ext;                 /* SMTPC_EXT_* once EHLO succeeded */
	uint64_t max_size;            /* SIZE n from EHLO, 0 = none announced */
	unsigned ehlo_ext;            /* collected while the EHLO reply arrives */
	uint64_t ehlo_size;
	bool esmtp;
	bool sent_pending;            /* a SEND/SEND_BODY is outstanding */
	bool done_pending;            /* SMTPC_EV_MSG_DONE still to return */
	bool quit_wanted;             /* smtp_client_quit() seen */
	bool pipelined;               /* this message's MAIL/RCPT/DATA in one SEND */
	bool chunking;                /* ... and BDAT LAST instead of DATA */
	bool mail_replied, mail_failed;
	bool out_oom;
	const struct smtp_client_msg *msg;
	struct smtp_client_result *res;
	const struct smtp_client_msg *next_msg; /* smtp_client_start_next */
	struct smtp_client_result *next_res;
	bool next_sent;               /* its MAIL, RCPT and DATA went out */
	unsigned rcpt_sent, rcpt_replied, rcpt_accepted;
	char *out;                    /* commands to send (owned) */
	size_t out_len, out_cap;
	char line[1024];              /* reply line being assembled */
	size_t line_len;
	bool line_overflow;
	size_t line_octets;           /* of the line so far, beyond line[] too */
	char reply[512];              /* the reply being assembled (joined lines) */
	size_t reply_len;
	int reply_code;
	unsigned reply_lines;         /* lines of it seen so far */
	size_t reply_octets;          /* ... and their octets */
	uint64_t replies;             /* complete replies on this connection */
	char reply_status[12];        /* enhanced status of its first line */
	bool reply_has_status;        /* ... taken from the text, not derived */
	char greeting_name[256];      /* first word of the 220 greeting */
	char hello_name[256];         /* ... of the EHLO (HELO) reply */
	bool loop;                    /* either was helo_name: the session ended */
	enum smtp_client_tls_state tls_state;
	char tls_reply[160];          /* SMTPC_TLSST_REFUSED: the reply to STARTTLS */
	unsigned ehlo_auth, auth_mechs; /* 1 << enum smtp_client_auth offered */
	enum smtp_client_auth_state auth_state;
	unsigned auth_step;           /* client responses sent after AUTH */
	bool out_secret;              /* out holds credentials: wiped when reused */
	int auth_code;                /* SMTPC_AUTHST_REFUSED: the next hop's reply */
	char auth_status[12];
	char auth_reply[256];
	struct smtp_client_result session_error; /* why the session ended */
};

void smtp_client_init(struct smtp_client *c, const struct smtp_client_params *p);
void smtp_client_free(struct smtp_client *c);

/* Drives the machine: feed reply bytes (or len 0 to ask what to do next
 * after smtp_client_sent/start/quit). Returns the bytes consumed; call again
 * with the rest until it returns SMTPC_EV_NEED_INPUT. The connection has
 * just been established when the machine is fresh (it waits for 220). */
size_t smtp_client_feed(struct smtp_client *c, const char *in, size_t len,
			struct smtp_client_event *ev);

/* The last SMTPC_EV_SEND / SMTPC_EV_SEND_BODY has been sent completely. */
void smtp_client_sent(struct smtp_client *c);

/* Starts a message (only after SMTPC_EV_READY). res has m->nrcpt entries. */
void smtp_client_start(struct smtp_client *c, const struct smtp_client_msg *m,
		       struct smtp_client_result *res);

/* Right after SMTPC_EV_SEND_BODY (a DATA body, not BDAT) with the next
 * hop offering PIPELINING: the next message's MAIL, RCPT and DATA are
 * sent behind this body's end-of-data line (an SMTPC_EV_SEND once the
 * body is sent), not a round trip after its reply (RFC 2920 3.1). When
 * this message's SMTPC_EV_MSG_DONE is returned, m is the current message
 * (smtp_client_current) and its replies follow; if the session ended
 * instead (a 421 to the dot, say), m was never started: nothing of it
 * was delivered. false (nothing queued) when it cannot go that way:
 * start it after SMTPC_EV_READY as usual. res has m->nrcpt entries. */
bool smtp_client_start_next(struct smtp_client *c, const struct smtp_client_msg *m,
			    struct smtp_client_result *res);
/* Could a next message go behind the body now (what start_next asks of
 * the session: the body just handed out, a DATA body, PIPELINING, no
 * QUIT asked for, none queued yet)? The engine asks before it takes a
 * job for it, so that none waits behind a body for nothing. */
bool smtp_client_next_wanted(const struct smtp_client *c);

/* The message under way, NULL when none. */
static inline const struct smtp_client_msg *smtp_client_current(const struct smtp_client *c)
{
	return c->msg;
}

/* The TLS handshake after SMTPC_EV_STARTTLS is complete: what EHLO said
 * before is forgotten (RFC 3207 4.2) and EHLO is sent again; STARTTLS is
 * never sent twice on one connection. */
void smtp_client_tls_started(struct smtp_client *c);

static inline enum smtp_client_tls_state smtp_client_tls_state(const struct smtp_client *c)
{
	return c->tls_state;
}

static inline enum smtp_client_auth_state smtp_client_auth_state(const struct smtp_client *c)
{
	return c->auth_state;
}

/* Ends the session politely: QUIT, then SMTPC_EV_CLOSE. */
void smtp_client_quit(struct smtp_client *c);

/* The connection failed (EOF, error, timeout): every recipient of the current
 * message without a final result gets code/text (e.g. 451, "4.4.2",
 * "connection lost") with stage SMTPC_STAGE_CONNECT. Returns true when a
 * message was in progress (its results are then complete). */
bool smtp_client_fail(struct smtp_client *c, int code, const char *status,
		      const char *text);

/* How long the current wait may take in all, in milliseconds, 0 when idle
 * (READY). The engine arms it when a wait begins (the command is sent, or
 * the reply before it in a pipelined group is complete) and never again
 * for a partial reply: a reply must be whole within it. A reply to a
 * command or the greeting: command_timeout_ms (RFC 5321 4.5.3.2: 5 min).
 * From SMTPC_EV_SEND_BODY to the reply to the final dot, one deadline for
 * the whole: data_timeout_ms (RFC 5321's 10 min for the final reply) plus
 * the message's size at min_data_rate (Postfix's smtp_data_done_timeout
 * with smtp_min_data_rate); how long a piece of the body may wait for the
 * socket is the engine's. */
uint64_t smtp_client_timeout_ms(const struct smtp_client *c);

/* Complete replies so far: a wait for the next one begins when it grows. */
static inline uint64_t smtp_client_replies(const struct smtp_client *c)
{
	return c->replies;
}

/* Which command the awaited reply answers (SMTPC_STAGE_CONNECT when idle
 * or closed), for the engine's timeout text. */
enum smtp_client_stage smtp_client_stage(const struct smtp_client *c);

/* The next hop's greeting or EHLO/HELO reply named helo_name: it is us
 * (DESIGN B.6). The session ended with a 451 4.4.6 in session_error, and
 * nothing was sent after the greeting (or EHLO). */
static inline bool smtp_client_loop(const struct smtp_client *c)
{
	return c->loop;
}

/* Did the server that took the message offer DSN? (RFC 3461: it then takes
 * over the NOTIFY duty, so no "relayed" notice is owed.) */
static inline bool smtp_client_dsn_passed(const struct smtp_client *c)
{
	return (c->ext & SMTPC_EXT_DSN) != 0;
}

#endif
