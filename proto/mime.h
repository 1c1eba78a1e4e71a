/* MIME walker for content rules: takes a message's bytes as they arrive
 * (wire form with dot-stuffing from DATA, or raw from BDAT), undoes the
 * stuffing, and hands out what rules look at: the top-level header lines,
 * each top-level field's unfolded value, and the body with base64 and
 * quoted-printable parts decoded (RFC 2045/2046). Pure: no allocation, no
 * I/O; every byte passes once, and only a line split between two calls,
 * or decoded text, is copied (into the walker's small buffers). */
#ifndef POSTERN_MIME_H
#define POSTERN_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base64.h"

#define MIME_LINE_MAX 1024      /* longer lines are handed on in pieces */
#define MIME_DEPTH_MAX 8        /* nested multiparts followed */
#define MIME_BOUNDARY_MAX 70    /* RFC 2046 5.1.1 */
#define MIME_OUT_MAX 4096       /* decoded body text, handed on when full */
#define MIME_FIELD_KEEP 512     /* Content-Type / -Transfer-Encoding kept to parse */

enum mime_event {
	MIME_HEADER_LINE, /* a top-level header line, raw, line break included */
	MIME_FIELD_NAME,  /* a top-level field begins: its name */
	MIME_FIELD_VALUE, /* a piece of its value, unfolded (line breaks removed) */
	MIME_FIELD_END,   /* the field is complete (n = 0) */
	MIME_BODY,        /* body text: parts decoded, part headers as they are */
	MIME_BODY_RAW,    /* a line of a base64 or quoted-printable part, as it is
	                   * (unstuffed): rules written for the encoded text */
};

typedef void mime_sink_fn(void *ctx, enum mime_event ev, const char *p, size_t n);

enum mime_cte { MIME_CTE_IDENTITY, MIME_CTE_BASE64, MIME_CTE_QP };

enum mime_state {
	MIME_S_HEADERS,      /* the message's own header */
	MIME_S_PART_HEADERS, /* a body part's header */
	MIME_S_BODY,         /* content of a leaf entity */
	MIME_S_SKIP,         /* preamble or epilogue of a multipart */
};

struct mime_walker {
	mime_sink_fn *sink;
	void *ctx;
	enum mime_state state;
	enum mime_cte cte;           /* of the entity whose content this is */
	bool bol;                    /* at the start of a line */
	bool mid;                    /* the line buffered is a piece of a longer one */
	bool field_open;             /* a top-level field is being handed out */
	bool qp_soft;                /* the last QP line ended in "=" */
	/* The entity whose header is being read. */
	bool ent_multipart;
	enum mime_cte ent_cte;
	char ent_boundary[MIME_BOUNDARY_MAX + 1];
	int keep;                    /* 0 none, 1 Content-Type, 2 -Transfer-Encoding */
	size_t keep_len;
	char keep_buf[MIME_FIELD_KEEP];
	unsigned depth;              /* boundaries in force */
	char boundary[MIME_DEPTH_MAX][MIME_BOUNDARY_MAX + 1];
	uint8_t blen[MIME_DEPTH_MAX];
	struct base64_stream b64;
	size_t line_len;
	char line[MIME_LINE_MAX];
	size_t out_len;
	char out[MIME_OUT_MAX];
	uint64_t body_bytes;         /* MIME_BODY bytes handed out */
};

void mime_init(struct mime_walker *m, mime_sink_fn *sink, void *ctx);

/* The next bytes of the message. stuffed: they are DATA's wire form (a
 * line's leading "." was doubled by the client); BDAT's are not. */
void mime_feed(struct mime_walker *m, const char *p, size_t n, bool stuffed);

/* The message is complete: the last line (without a line break) and the
 * text decoded so far are handed out. */
void mime_finish(struct mime_walker *m);

#endif
