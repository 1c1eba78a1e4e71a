/* DATA scanner: finds the end of message data (CRLF "." CRLF) in wire form,
 * and on the way enforces the rules a relay must: no bare CR or LF and no
 * NUL (SMTP smuggling defences), 1000-octet lines, size and header-size
 * limits, and the Received: hop count. Does not unstuff: the relay keeps the
 * wire form. */
#ifndef POSTERN_SMTP_DATA_H
#define POSTERN_SMTP_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SMTP_DATA_LINE_MAX 1000 /* octets, CR LF included (RFC 5321 4.5.3.1.6) */

enum smtp_data_error {
	SMTP_DATA_BARE_CR_LF = 1 << 0,
	SMTP_DATA_LINE_TOO_LONG = 1 << 1,
	SMTP_DATA_TOO_BIG = 1 << 2,
	SMTP_DATA_HEADER_TOO_BIG = 1 << 3,
	SMTP_DATA_TOO_MANY_HOPS = 1 << 4,
	/* Only BINARYMIME content may hold NUL (RFC 2045 2.7-2.8, RFC 6152
	 * 3); a next hop that drops NULs would see CRLF . CRLF in
	 * CRLF NUL . CRLF: a second, smuggled message. */
	SMTP_DATA_NUL = 1 << 5,
};

struct smtp_data_limits {
	uint64_t max_size;        /* message octets; 0 = unlimited */
	uint64_t max_header_size; /* header octets; 0 = unlimited */
	unsigned max_hops;        /* Received: fields; 0 = unlimited */
};

struct smtp_data_scan {
	struct smtp_data_limits lim;
	uint8_t state;
	bool in_header;
	int8_t rcvd_match;        /* chars of "received:" matched on this line, -1 none */
	unsigned errors;          /* SMTP_DATA_* bits */
	unsigned hops;
	uint32_t line_len;
	uint64_t size;            /* octets of message so far, wire form */
	uint64_t header_size;
	uint64_t dot_lines;       /* lines of the wire form that begin with "." */
};

void smtp_data_scan_init(struct smtp_data_scan *s,
			 const struct smtp_data_limits *lim);

/* Scans buf. Returns the number of bytes consumed; of those, the first
 * *body_len are message bytes (wire form, with the CR LF that precedes the
 * final dot) and, when *end is set, the final ".CRLF" follows them. Bytes
 * that might start the end marker (a "." or ".CR" at a line start at the end
 * of buf) are not consumed: present them again with more input. */
size_t smtp_data_scan(struct smtp_data_scan *s, const char *buf, size_t len,
		      size_t *body_len, bool *end);

/* Holds octets that come without an end marker (BDAT chunks, RFC 3030) to
 * the content rules of smtp_data_scan(): NUL, bare CR or LF, line length,
 * size, header size and hops. No dot handling; a CR LF may be split across
 * calls. Every octet of a message, whichever command carried it, must pass
 * through one of the two. */
void smtp_data_scan_octets(struct smtp_data_scan *s, const char *buf, size_t len);

/* The octets of smtp_data_scan_octets() end here (BDAT LAST): a CR at the
 * very end is a bare CR. Returns true when the message ends inside a line
 * (not after CR LF, and not empty): its stored wire form needs a CR LF. */
bool smtp_data_scan_octets_end(struct smtp_data_scan *s);

#endif
