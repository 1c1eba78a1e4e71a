/* A pickup-directory file (DESIGN B.11): X-Sender: and X-Receiver: lines
 * first (the drop directory's own format, Exchange's pickup and replay
 * files; the address with or without <>), then the message as plain text
 * (LF or CRLF lines, no dot-stuffing). Checks it and writes the message's
 * wire form (CRLF, dot-stuffed) for the spool. Pure: bytes in, spans out. */
#ifndef POSTERN_PICKUP_FILE_H
#define POSTERN_PICKUP_FILE_H

#include <stdbool.h>
#include <stddef.h>

#include "smtp_path.h"

enum pickup_file_error {
	PICKUP_FILE_OK,
	PICKUP_FILE_NO_SENDER,          /* no X-Sender: line */
	PICKUP_FILE_NO_RECEIVER,        /* no X-Receiver: line */
	PICKUP_FILE_TWO_SENDERS,
	PICKUP_FILE_BAD_SENDER,         /* not an address (or <>) */
	PICKUP_FILE_BAD_RECEIVER,
	PICKUP_FILE_TOO_MANY_RECEIVERS, /* more than max_rcpt */
	PICKUP_FILE_NUL,                /* a NUL byte anywhere */
	PICKUP_FILE_BARE_CR,            /* a CR not followed by LF */
	PICKUP_FILE_LINE_TOO_LONG,      /* a message line over 998 octets */
	PICKUP_FILE_NO_MESSAGE,         /* nothing after the envelope lines */
};

/* "no_sender", "bad_receiver", ...: the reason= of event=pickup_bad. */
const char *pickup_file_error_name(enum pickup_file_error e);

struct pickup_file {
	struct smtp_span sender;     /* mailbox, "" for <> */
	struct smtp_span *rcpt;      /* the caller's array of max_rcpt */
	unsigned nrcpt, max_rcpt;
	size_t body;                 /* offset of the message */
	size_t wire_len;             /* bytes of its wire form */
	bool eightbit;               /* a byte >= 0x80 in the message */
	size_t err_at;               /* where a failure was found */
};

/* rcpt/max_rcpt set by the caller. Spans point into buf. */
enum pickup_file_error pickup_file_parse(const char *buf, size_t len, struct pickup_file *f);

/* The message (buf from f->body, parsed OK) in wire form: every line ends
 * in CRLF (a missing last one is added) and a line starting with '.' gets
 * another. Writes exactly f->wire_len bytes to out. */
void pickup_file_wire(const char *buf, size_t len, const struct pickup_file *f, char *out);

#endif
