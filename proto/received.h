/* The Received: trace header Postern prepends to every message it accepts
 * (RFC 5321 4.4): client name and address, our host, connector, id, date. */
#ifndef POSTERN_RECEIVED_H
#define POSTERN_RECEIVED_H

#include <stddef.h>
#include <stdint.h>

struct smtp_received {
	const char *helo;       /* as the client announced itself */
	const char *client_ip;  /* textual address, IPv6 without brackets */
	const char *hostname;   /* ours */
	const char *connector;  /* receive connector name */
	const char *protocol;   /* "SMTP", "ESMTP", "UTF8SMTP" ... */
	const char *id;         /* message id */
	const char *for_rcpt;   /* the sole recipient, or NULL */
	const char *tls;        /* "TLSv1.3 with cipher TLS_AES_128_GCM_SHA256", or NULL (RFC 3848) */
	int64_t time;           /* seconds since the epoch, formatted as UTC */
};

/* Writes the header, folded, ending in CR LF. Returns its length, or 0 when
 * cap is too small (a 1 KiB buffer always suffices). */
size_t smtp_received_format(char *buf, size_t cap, const struct smtp_received *r);

/* RFC 5322 date-time for t in UTC, e.g. "Mon, 23 Nov 2026 14:02:00 +0000". */
size_t smtp_date_format(char *buf, size_t cap, int64_t t);

#endif
