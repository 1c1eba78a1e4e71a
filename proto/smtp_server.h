/* SMTP server session state machine: bytes in, replies and events out.
 * Holds the session state and the envelope of the current transaction; knows
 * nothing of sockets, files or clocks (the engine passes time in). Every
 * command of one received batch is processed before the caller sends the
 * collected replies (RFC 2920 PIPELINING). */
#ifndef POSTERN_SMTP_SERVER_H
#define POSTERN_SMTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp_cmd.h"
#include "smtp_data.h"
#include "smtp_path.h"
#include "smtp_reply.h"

/* Why a command or a message was refused: for counters and logs. */
enum smtp_reject {
	SMTP_REJECT_RELAY,          /* recipient refused by the relay policy */
	SMTP_REJECT_NO_ROUTE,       /* no send connector for the recipient */
	SMTP_REJECT_NOT_AUTHENTICATED,
	SMTP_REJECT_RECIPIENTS,     /* 452: max_recipients_per_message */
	SMTP_REJECT_SIZE,           /* 552: SIZE= or the data itself */
	SMTP_REJECT_HEADER_SIZE,
	SMTP_REJECT_HOP_COUNT,
	SMTP_REJECT_BARE_LF,
	SMTP_REJECT_NUL,            /* 550 5.6.0: NUL in message content */
	SMTP_REJECT_LINE_LENGTH,
	SMTP_REJECT_STORAGE,        /* 451/452 after DATA */
	SMTP_REJECT_PROTOCOL,       /* syntax, sequence, unknown command */
	SMTP_REJECT_TOO_MANY_ERRORS,/* 421 4.7.0 */
	SMTP_REJECT_TLS_REQUIRED,   /* 530 5.7.0: MAIL before STARTTLS */
	SMTP_REJECT_CLIENT_CERT,    /* 530 5.7.1: no verified client certificate */
	SMTP_REJECT_AUTH_TLS,       /* 538 5.7.11: AUTH before STARTTLS */
	SMTP_REJECT_SENDER,         /* 550 5.7.1: anonymous sender in our domain */
	SMTP_REJECT_UNKNOWN_RECIPIENT, /* 550 5.1.10: not in recipients_file */
	SMTP_REJECT_CONTENT_RULE,   /* 550 5.7.1: a content rule's reject */
	SMTP_REJECT_COUNT
};

const char *smtp_reject_name(enum smtp_reject r);

/* Optional observers, called synchronously from smtp_server_feed(). */
struct smtp_server_hooks {
	/* A refusal: the reply text and, for RCPT, the recipient. */
	void (*reject)(void *ctx, enum smtp_reject why, const char *reply,
		       const char *rcpt);
	/* Every command line the client sent (never message data). */
	void (*command)(void *ctx, const char *line, size_t len);
	/* May this client start one more message (rate limits)? false ends
	 * the session with 421 4.4.2. */
	bool (*admit_message)(void *ctx);
	/* STARTTLS accepted: prepare the handshake. false answers 454 (TLS
	 * cannot start now). */
	bool (*starttls)(void *ctx);
	void *ctx;
};

enum { SMTP_AUTH_PLAIN = 1 << 0, SMTP_AUTH_LOGIN = 1 << 1 };

#define SMTP_AUTH_NAME_MAX 255   /* user names and passwords, in bytes */

/* What one receive connector allows; owned by the caller, must outlive the
 * session. */
struct smtp_server_params {
	const char *hostname;
	const char *connector;        /* name, for Received: */
	uint64_t max_message_size;    /* 0 = unlimited */
	uint64_t max_header_size;     /* 0 = unlimited */
	unsigned max_recipients;      /* 0 = unlimited */
	unsigned max_hop_count;       /* 0 = unlimited */
	unsigned max_protocol_errors; /* 0 = unlimited */
	unsigned max_junk_commands;   /* NOOP RSET VRFY EXPN HELP per message; 0 = unlimited */
	bool may_submit;              /* the connector has a permission group */
	bool bypass_size_limit;       /* externally secured */
	bool starttls;                /* offered: the connector has a certificate */
	bool require_tls;             /* MAIL before STARTTLS: 530 5.7.0 */
	bool require_client_cert;     /* MAIL without a verified one: 530 5.7.1 */
	/* SMTP AUTH (RFC 4954): the mechanisms offered (0: AUTH is not), before
	 * STARTTLS too or only after it, logon failures before 421 (0: no
	 * limit). A successful AUTH lets the client submit and relay. */
	unsigned auth_mechs;          /* SMTP_AUTH_* */
	bool auth_without_tls;
	unsigned max_logon_failures;
	/* Decides one recipient: NULL accepts, else the reply text to send.
	 * authenticated: the session passed AUTH. */
	const char *(*rcpt_policy)(void *ctx, const struct smtp_path *rcpt, bool authenticated);
	/* Decides the sender at MAIL the same way (NULL: any sender). */
	const char *(*mail_policy)(void *ctx, const struct smtp_path *from, bool authenticated);
	void *policy_ctx;
	/* The connector's groups are only "anonymous" (before AUTH, when it
	 * also has "authenticated"): its messages are marked so (bounces to
	 * such a sender carry headers only). */
	bool anonymous_only;
};

enum smtp_state {
	SMTP_S_GREETED,     /* banner sent, no HELO/EHLO yet */
	SMTP_S_READY,       /* after HELO/EHLO, no transaction */
	SMTP_S_MAIL,        /* MAIL accepted, no recipient yet */
	SMTP_S_RCPT,        /* at least one recipient accepted */
	SMTP_S_DATA,        /* receiving message data */
	SMTP_S_BDAT,        /* receiving (or discarding) the octets of one BDAT chunk */
	SMTP_S_STORING,     /* waiting for the caller to store the message */
	SMTP_S_CLOSING,     /* last reply queued; close after sending */
	SMTP_S_STARTTLS,    /* 220 to STARTTLS queued: input is discarded until
	                     * smtp_server_tls_started() */
	SMTP_S_AUTH,        /* 334 sent: the next line is an AUTH response */
	SMTP_S_AUTH_CHECK,  /* credentials handed out: wait for smtp_server_auth_result() */
};

enum smtp_ev {
	SMTP_EV_NEED_INPUT, /* everything usable consumed: send replies, read */
	SMTP_EV_FLUSH,      /* reply buffer full: send it, then feed again */
	SMTP_EV_DATA_BEGIN, /* 354 queued (or a first BDAT): open a message, see
	                     * smtp_server_begin_message() */
	SMTP_EV_DATA_CHUNK, /* data/len: message bytes to append, in ev.form */
	SMTP_EV_DATA_END,   /* message complete: store durably, then smtp_server_stored() */
	SMTP_EV_DATA_REJECT,/* message refused (reply queued): discard it */
	SMTP_EV_CLOSE,      /* send the queued replies, then close */
	SMTP_EV_WAIT,       /* storing: do not feed until smtp_server_stored() */
	SMTP_EV_STARTTLS,   /* 220 queued: send it, discard every byte received so
	                     * far (RFC 3207: nothing pipelined after STARTTLS is
	                     * executed), then run the handshake */
	SMTP_EV_AUTH,       /* check auth_user/auth_pass, then smtp_server_auth_result();
	                     * do not feed until then */
};

/* What the bytes of an SMTP_EV_DATA_CHUNK are. Appended in order, all
 * three make the stored form: CRLF lines, dot-stuffed, as DATA carries it
 * (delivery sends it as it lies). A content scanner unstuffs WIRE, takes
 * RAW as it is and skips STUFFING. */
enum smtp_chunk_form {
	SMTP_CHUNK_WIRE,     /* DATA: dot-stuffed wire form, as received */
	SMTP_CHUNK_RAW,      /* BDAT: the message's own octets, as received */
	SMTP_CHUNK_STUFFING, /* added by the server to BDAT octets: a "." before a
	                      * line-start ".", a CR LF after a last line without
	                      * one. data is static, never in the input buffer */
};

struct smtp_event {
	enum smtp_ev type;
	const char *data;
	size_t len;
	enum smtp_chunk_form form; /* SMTP_EV_DATA_CHUNK */
};

struct smtp_rcpt {
	char *addr;         /* mailbox, NUL-terminated */
	char *orcpt;        /* ORCPT value or NULL */
	unsigned notify;    /* SMTP_NOTIFY_* */
};

struct smtp_envelope {
	char *from;         /* "" for the null sender */
	uint64_t size;      /* SIZE= as declared, 0 if none */
	enum smtp_body body;
	enum smtp_ret ret;
	char *envid;        /* or NULL */
	bool smtputf8;
	char *auth;         /* the AUTH user of the session, or NULL */
	bool anonymous;     /* from a session with only the anonymous group */
	bool dotless;       /* no line of the stored form begins with ".": it is
	                     * the message itself too (BDAT may send it as it lies) */
	struct smtp_rcpt *rcpt;
	unsigned nrcpt;
	unsigned rcpt_cap;
	/* Set by content rules (engine) before the message is stored. */
	char *held;         /* held until released: the reason (rule name), or NULL */
	char *route;        /* the send connector a rule routes it to, or NULL */
	char *headers;      /* header fields to add, "Name: value\r\n" each, or NULL */
};

#define SMTP_MSGID_MAX 40
#define SMTP_HELO_MAX 255

struct smtp_server {
	const struct smtp_server_params *p;
	enum smtp_state state;
	bool esmtp;
	bool draining;
	bool data_end_pending;
	bool tls;           /* the session runs inside TLS */
	bool client_cert;   /* ... with a verified client certificate */
	char tls_info[160]; /* "TLSv1.3 with cipher ...", for Received: */
	bool authenticated;
	unsigned auth_step; /* which response SMTP_S_AUTH waits for */
	unsigned auth_failures;
	char auth_user[SMTP_AUTH_NAME_MAX + 1];  /* the name (once authenticated: who) */
	char auth_pass[SMTP_AUTH_NAME_MAX + 1];  /* only until the result: then wiped */
	unsigned errors;
	unsigned junk;      /* junk commands since the last accepted message */
	char client_ip[64];
	char helo[SMTP_HELO_MAX + 1];
	char msgid[SMTP_MSGID_MAX + 1];
	struct smtp_cmd_reader rd;
	struct smtp_data_scan scan;
	struct smtp_envelope env;
	struct smtp_reply_buf out;
	struct smtp_server_hooks hooks;
	/* BDAT (RFC 3030): the chunk being read, and the message it builds */
	uint64_t bdat_left;     /* octets of the current chunk still to come */
	uint64_t bdat_size;     /* the current chunk's size, for its reply */
	bool bdat_last;         /* the current chunk is the LAST one */
	bool bdat_open;         /* a BDAT message is open (DATA_BEGIN was given) */
	bool bdat_line_start;   /* the next octet begins a line (dot-stuffing) */
	bool bdat_crlf_added;   /* LAST: the closing CR LF was given */
	/* The current chunk is read and dropped, then answered with this
	 * (NULL: taken); why counts it. */
	const char *bdat_refusal;
	enum smtp_reject bdat_why;
	bool bdat_proto;        /* ... and counted as a protocol error */
	enum smtp_state bdat_resume; /* the state after a dropped chunk */
	uint64_t messages;  /* accepted in this session */
	uint64_t rejects;   /* refusals of any kind in this session */
};

/* out/outcap: the buffer replies are collected in (at least 1 KiB). The
 * banner is queued at once. */
void smtp_server_init(struct smtp_server *s, const struct smtp_server_params *p,
		      const char *client_ip, char *out, size_t outcap);
void smtp_server_free(struct smtp_server *s);

/* Processes input; returns the bytes consumed and what the caller must do. */
size_t smtp_server_feed(struct smtp_server *s, const char *in, size_t len,
			struct smtp_event *ev);

/* After SMTP_EV_DATA_BEGIN: records the message id (used in the 250 reply)
 * and writes the Received: header into hdr. Returns its length or 0. */
size_t smtp_server_begin_message(struct smtp_server *s, const char *msgid,
				 int64_t now, char *hdr, size_t cap);

/* After SMTP_EV_DATA_END: the outcome of storing. err is 0 on success (the
 * message is on stable storage), ENOSPC-like when storage is full (full=true),
 * else any failure. Queues the reply. */
void smtp_server_stored(struct smtp_server *s, bool ok, bool full);

/* After SMTP_EV_DATA_END, instead of storing: the message is refused
 * with reply (a policy's 5xx); the session goes on as after RSET. */
void smtp_server_refuse_message(struct smtp_server *s, const char *reply);

/* Ends the session gracefully: idle sessions get 421 now (returns true: send
 * and close), sessions inside a transaction finish it first. */
bool smtp_server_drain(struct smtp_server *s);

/* Queues a final reply (e.g. a timeout) and moves to CLOSING. */
void smtp_server_abort(struct smtp_server *s, const char *reply);

/* The TLS handshake after STARTTLS completed: every state is reset (a new
 * EHLO is required, RFC 3207 4.2) and the session continues inside TLS.
 * client_cert: the client presented a certificate that verified. */
void smtp_server_tls_started(struct smtp_server *s, const char *version, const char *cipher,
			     bool client_cert);

/* After SMTP_EV_AUTH: ok (the credentials are right), or a temporary
 * failure (temp: 454, the client may retry), else 535 (or 421 past
 * max_logon_failures). The password is wiped. */
void smtp_server_auth_result(struct smtp_server *s, bool ok, bool temp);

/* Is AUTH offered right now (EHLO would list it)? */
static inline bool smtp_server_auth_offered(const struct smtp_server *s)
{
	return s->p->auth_mechs && (s->tls || s->p->auth_without_tls) && !s->authenticated;
}

/* Clears sent replies: the caller has handed out.len bytes to the socket. */
void smtp_server_sent(struct smtp_server *s);

static inline bool smtp_server_in_transaction(const struct smtp_server *s)
{
	return s->state >= SMTP_S_MAIL && s->state <= SMTP_S_STORING;
}

/* Is the session ending for its errors (the 421 4.7.0 of max_protocol_errors
 * or max_logon_failures is queued)? */
bool smtp_server_ended_for_errors(const struct smtp_server *s);

/* Is the input that comes next read only to be thrown away? Inside a
 * command line longer than SMTP_CMD_LINE_MAX, the body of a DATA message
 * the scanner has already refused (a long line, a NUL, over the size
 * limit, too many hops), or a BDAT chunk that is dropped. */
static inline bool smtp_server_discarding(const struct smtp_server *s)
{
	switch (s->state) {
	case SMTP_S_DATA:
		return s->scan.errors != 0 && !s->data_end_pending;
	case SMTP_S_BDAT:
		return s->bdat_refusal != NULL || s->scan.errors != 0;
	default:
		return s->rd.discarding;
	}
}

#endif
