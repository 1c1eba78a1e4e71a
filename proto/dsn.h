/* Delivery status notifications (RFC 3464 / RFC 3461): composes the
 * multipart/report message Postern sends to an envelope sender when
 * recipients fail, are delayed, or were delivered/relayed with
 * NOTIFY=SUCCESS. Pure: the caller passes the clock, the ids and the
 * original message; the output is in the spool's wire form. */
#ifndef POSTERN_DSN_H
#define POSTERN_DSN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

enum dsn_action { DSN_FAILED, DSN_DELAYED, DSN_DELIVERED, DSN_RELAYED };

struct dsn_rcpt {
	const char *addr;            /* final recipient mailbox (no <>) */
	const char *orcpt;           /* ORCPT as received ("rfc822;xtext"), or NULL */
	enum dsn_action action;
	const char *status;          /* "5.1.1", "4.4.7", "2.0.0" */
	const char *remote_mta;      /* host name or [ip] of the next hop, or NULL */
	const char *diagnostic;      /* the remote reply, e.g. "550 5.1.1 No such
	                              * user", or NULL; written as "smtp; ..." */
	int64_t last_attempt;        /* unix seconds, 0 = omit */
	int64_t will_retry_until;    /* DSN_DELAYED: unix seconds, 0 = omit */
};

struct dsn_msg {
	const char *reporting_mta;   /* our hostname */
	const char *postmaster;      /* From: of the report, e.g. "postmaster@host" */
	const char *to;              /* the envelope sender being notified */
	const char *envid;           /* ENVID xtext as received, or NULL */
	const char *queue_id;        /* original message's id */
	const char *received_from;   /* client, e.g. "[192.0.2.1]", or NULL */
	int64_t arrival;             /* original arrival, unix seconds */
	int64_t now;                 /* Date: */
	const char *message_id;      /* Message-ID of the report, without <> */
	bool full;                   /* RET=FULL: the whole original, else headers */
	const struct dsn_rcpt *rcpt; /* all with the same kind of action */
	unsigned nrcpt;
	/* The original message exactly as stored: wire form (CRLF lines,
	 * dot-stuffed, ends with CRLF), possibly split across iovecs at any
	 * byte. */
	const struct iovec *orig;
	unsigned norig;
	uint64_t max_return;         /* RET=FULL: bytes of original to include at
	                              * most; beyond it only headers are returned
	                              * (0 = no limit) */
};

/* Writes the report into out (wire form: CRLF lines, dot-stuffed, ending
 * with CRLF, without the final "."). Returns the length it needs; when that
 * is >= cap nothing useful was written: call again with a larger buffer. */
size_t dsn_compose(char *out, size_t cap, const struct dsn_msg *m);

/* RFC 3461 xtext decoding ("+2B" -> "+") into out; false when malformed or
 * too long. */
bool dsn_xtext_decode(const char *in, char *out, size_t cap);

#endif
