/* MIME walker (see mime.h). Line-driven: each line is classified by the
 * state (header, part header, content, preamble/epilogue) and by whether it
 * is a boundary in force; content is handed on in place, in runs of whole
 * lines (identity parts without being copied, encoded ones decoded from
 * there), so that a sink sees few, large pieces. */
#include "mime.h"

#include <string.h>
#include <strings.h>

#include "qp.h"

void mime_init(struct mime_walker *m, mime_sink_fn *sink, void *ctx)
{
	memset(m, 0, sizeof(*m));
	m->sink = sink;
	m->ctx = ctx;
	m->state = MIME_S_HEADERS;
	m->bol = true;
	base64_stream_init(&m->b64);
}

static void flush_out(struct mime_walker *m)
{
	if (!m->out_len)
		return;
	m->body_bytes += m->out_len;
	m->sink(m->ctx, MIME_BODY, m->out, m->out_len);
	m->out_len = 0;
}

/* Body text in the caller's buffer: handed on as it is, after what was
 * decoded before it. */
static void body_direct(struct mime_walker *m, const char *p, size_t n)
{
	if (!n)
		return;
	flush_out(m);
	m->body_bytes += n;
	m->sink(m->ctx, MIME_BODY, p, n);
}

static void body_copy(struct mime_walker *m, const char *p, size_t n)
{
	if (m->out_len + n > sizeof(m->out)) {
		body_direct(m, p, n);
		return;
	}
	memcpy(m->out + m->out_len, p, n);
	m->out_len += n;
}

/* Bytes of a line without its line break. */
static size_t text_len(const char *p, size_t n, bool whole)
{
	if (whole && n && p[n - 1] == '\n')
		n--;
	if (whole && n && p[n - 1] == '\r')
		n--;
	return n;
}

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

static void keep_add(struct mime_walker *m, const char *p, size_t n)
{
	size_t room = sizeof(m->keep_buf) - m->keep_len;
	if (n > room)
		n = room;
	memcpy(m->keep_buf + m->keep_len, p, n);
	m->keep_len += n;
}

/* boundary=value in a Content-Type value (p[0..n)): quoted or a token. */
static void find_boundary(struct mime_walker *m, const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (p[i] != ';')
			continue;
		size_t k = i + 1;
		while (k < n && is_wsp(p[k]))
			k++;
		if (n - k < 9 || strncasecmp(p + k, "boundary", 8) != 0)
			continue;
		k += 8;
		while (k < n && is_wsp(p[k]))
			k++;
		if (k >= n || p[k] != '=')
			continue;
		k++;
		while (k < n && is_wsp(p[k]))
			k++;
		size_t b = 0;
		if (k < n && p[k] == '"') {
			for (k++; k < n && p[k] != '"' && b < MIME_BOUNDARY_MAX; k++)
				m->ent_boundary[b++] = p[k];
		} else {
			for (; k < n && p[k] != ';' && !is_wsp(p[k]) && b < MIME_BOUNDARY_MAX; k++)
				m->ent_boundary[b++] = p[k];
		}
		m->ent_boundary[b] = '\0';
		return;
	}
}

/* The kept field (Content-Type or Content-Transfer-Encoding) is whole. */
static void keep_done(struct mime_walker *m)
{
	const char *p = m->keep_buf;
	size_t n = m->keep_len;
	while (n && is_wsp(*p)) {
		p++;
		n--;
	}
	if (m->keep == 1) {
		m->ent_multipart = n >= 10 && strncasecmp(p, "multipart/", 10) == 0;
		m->ent_boundary[0] = '\0';
		if (m->ent_multipart)
			find_boundary(m, p, n);
	} else if (m->keep == 2) {
		size_t w = 0;
		while (w < n && !is_wsp(p[w]) && p[w] != ';' && p[w] != '(')
			w++;
		m->ent_cte = w == 6 && strncasecmp(p, "base64", 6) == 0 ? MIME_CTE_BASE64
			     : w == 16 && strncasecmp(p, "quoted-printable", 16) == 0 ? MIME_CTE_QP
			     : MIME_CTE_IDENTITY;
	}
	m->keep = 0;
	m->keep_len = 0;
}

static void field_close(struct mime_walker *m)
{
	if (m->field_open) {
		m->field_open = false;
		m->sink(m->ctx, MIME_FIELD_END, "", 0);
	}
	keep_done(m);
}

static void entity_reset(struct mime_walker *m)
{
	m->ent_multipart = false;
	m->ent_cte = MIME_CTE_IDENTITY;
	m->ent_boundary[0] = '\0';
	m->keep = 0;
	m->keep_len = 0;
}

/* The empty line after a header: the entity's content begins. */
static void header_done(struct mime_walker *m)
{
	field_close(m);
	if (m->ent_multipart && m->ent_boundary[0] && m->depth < MIME_DEPTH_MAX) {
		size_t bl = strlen(m->ent_boundary);
		memcpy(m->boundary[m->depth], m->ent_boundary, bl + 1);
		m->blen[m->depth] = (uint8_t)bl;
		m->depth++;
		m->state = MIME_S_SKIP;
	} else {
		m->state = MIME_S_BODY;
		m->cte = m->ent_cte;
		base64_stream_init(&m->b64);
		m->qp_soft = false;
	}
	entity_reset(m);
}

/* Is the line (t[0..tl), no line break) a boundary in force? Then the
 * entity it ends is finished and the walker moves on. */
static bool boundary_line(struct mime_walker *m, const char *t, size_t tl)
{
	if (!m->depth || tl < 2 || t[0] != '-' || t[1] != '-')
		return false;
	for (unsigned i = m->depth; i-- > 0;) {
		size_t bl = m->blen[i];
		if (tl < 2 + bl || memcmp(t + 2, m->boundary[i], bl) != 0)
			continue;
		const char *r = t + 2 + bl;
		size_t rl = tl - 2 - bl;
		bool close = rl >= 2 && r[0] == '-' && r[1] == '-';
		if (close) {
			r += 2;
			rl -= 2;
		}
		bool ws = true;
		for (size_t k = 0; k < rl; k++)
			ws &= is_wsp(r[k]);
		if (!ws)
			continue;
		/* Parts are kept apart: no pattern matches across two. */
		if (m->state != MIME_S_PART_HEADERS)
			body_copy(m, "\r\n", 2);
		field_close(m);
		entity_reset(m);
		if (close) {
			m->depth = i;
			m->state = MIME_S_SKIP;
		} else {
			m->depth = i + 1;
			m->state = MIME_S_PART_HEADERS;
		}
		return true;
	}
	return false;
}

static void header_line(struct mime_walker *m, const char *p, size_t n, bool mid, bool whole,
			bool top)
{
	size_t tl = text_len(p, n, whole);
	if (!mid && tl == 0 && whole) {
		if (!top)
			body_copy(m, p, n);
		header_done(m);
		return;
	}
	if (top)
		m->sink(m->ctx, MIME_HEADER_LINE, p, n);
	else
		body_copy(m, p, n);
	if (mid || is_wsp(p[0])) {
		/* Folded (or the rest of a long line): more of the same value. */
		if (top && m->field_open && tl)
			m->sink(m->ctx, MIME_FIELD_VALUE, p, tl);
		if (m->keep)
			keep_add(m, p, tl);
		return;
	}
	field_close(m);
	const char *colon = memchr(p, ':', tl);
	if (!colon)
		return; /* not a field: nothing to hand on */
	size_t nl = (size_t)(colon - p);
	while (nl && is_wsp(p[nl - 1]))
		nl--;
	const char *v = colon + 1;
	size_t vl = tl - (size_t)(v - p);
	while (vl && is_wsp(*v)) {
		v++;
		vl--;
	}
	if (top) {
		m->field_open = true;
		m->sink(m->ctx, MIME_FIELD_NAME, p, nl);
		if (vl)
			m->sink(m->ctx, MIME_FIELD_VALUE, v, vl);
	}
	if (nl == 12 && strncasecmp(p, "content-type", 12) == 0)
		m->keep = 1;
	else if (nl == 25 && strncasecmp(p, "content-transfer-encoding", 25) == 0)
		m->keep = 2;
	if (m->keep)
		keep_add(m, v, vl);
}

/* Encoded content (base64: any number of lines; QP: one line) decoded
 * into the output buffer. */
static void decode(struct mime_walker *m, const char *p, size_t n, bool whole)
{
	if (m->cte == MIME_CTE_BASE64) {
		while (n) {
			if (sizeof(m->out) - m->out_len < 64)
				flush_out(m);
			size_t take = (sizeof(m->out) - m->out_len - 3) / 3 * 4;
			if (take > n)
				take = n;
			m->out_len += base64_stream_decode(&m->b64, p, take,
							   (unsigned char *)m->out + m->out_len);
			p += take;
			n -= take;
		}
		return;
	}
	size_t tl = text_len(p, n, whole);
	if (m->out_len + tl + 2 > sizeof(m->out))
		flush_out(m);
	bool soft;
	m->out_len += qp_decode_line(p, tl, m->out + m->out_len, &soft);
	if (whole && !soft) {
		m->out[m->out_len++] = '\r';
		m->out[m->out_len++] = '\n';
	}
}

static void content_line(struct mime_walker *m, const char *p, size_t n, bool whole)
{
	if (m->state == MIME_S_SKIP || m->cte == MIME_CTE_IDENTITY) {
		body_copy(m, p, n);
		return;
	}
	m->sink(m->ctx, MIME_BODY_RAW, p, n);
	decode(m, p, n, whole);
}

/* A run of whole content lines in the caller's buffer, none of them a
 * boundary or stuffed: handed on in one piece (decoded ones line by line
 * for QP, whose line breaks matter). */
static void content_run(struct mime_walker *m, const char *p, size_t n)
{
	if (m->state == MIME_S_SKIP || m->cte == MIME_CTE_IDENTITY) {
		body_direct(m, p, n);
		return;
	}
	m->sink(m->ctx, MIME_BODY_RAW, p, n);
	if (m->cte == MIME_CTE_BASE64) {
		decode(m, p, n, true);
		return;
	}
	while (n) {
		const char *nl = memchr(p, '\n', n);
		size_t k = (size_t)(nl - p) + 1;
		decode(m, p, k, true);
		p += k;
		n -= k;
	}
}

/* One line, or a piece of a long one: mid when it does not start a line,
 * whole when it ends one (line break included). */
static void line(struct mime_walker *m, const char *p, size_t n, bool mid, bool whole)
{
	if (!n)
		return;
	if (!mid && m->state != MIME_S_HEADERS && boundary_line(m, p, text_len(p, n, whole)))
		return;
	switch (m->state) {
	case MIME_S_HEADERS:
		header_line(m, p, n, mid, whole, true);
		break;
	case MIME_S_PART_HEADERS:
		header_line(m, p, n, mid, whole, false);
		break;
	case MIME_S_BODY:
	case MIME_S_SKIP:
		content_line(m, p, n, whole);
		break;
	}
}

static bool in_place(const struct mime_walker *m)
{
	return m->state == MIME_S_SKIP || m->state == MIME_S_BODY;
}

void mime_feed(struct mime_walker *m, const char *p, size_t n, bool stuffed)
{
	while (n) {
		if (m->bol) {
			m->bol = false;
			if (stuffed && *p == '.') {
				p++;
				n--;
				continue;
			}
		}
		if (!m->line_len && !m->mid && in_place(m)) {
			/* Whole plain lines go on as they lie: none can be a
			 * boundary ("-") or carry a stuffed dot. */
			size_t run = 0;
			while (run < n) {
				const char *q = p + run;
				if (run && stuffed && *q == '.')
					break;
				if (m->depth && *q == '-')
					break;
				const char *nl = memchr(q, '\n', n - run);
				if (!nl)
					break;
				run += (size_t)(nl - q) + 1;
			}
			if (run) {
				content_run(m, p, run);
				p += run;
				n -= run;
				m->bol = true;
				continue;
			}
		}
		const char *nl = memchr(p, '\n', n);
		size_t take = nl ? (size_t)(nl - p) + 1 : n;
		if (!m->line_len && nl) {
			line(m, p, take, m->mid, true);
			m->mid = false;
			m->bol = true;
			p += take;
			n -= take;
			continue;
		}
		size_t room = sizeof(m->line) - m->line_len;
		if (take > room) {
			take = room;
			nl = NULL;
		}
		memcpy(m->line + m->line_len, p, take);
		m->line_len += take;
		p += take;
		n -= take;
		if (nl) {
			line(m, m->line, m->line_len, m->mid, true);
			m->line_len = 0;
			m->mid = false;
			m->bol = true;
		} else if (m->line_len == sizeof(m->line)) {
			line(m, m->line, m->line_len, m->mid, false);
			m->line_len = 0;
			m->mid = true;
		}
	}
}

void mime_finish(struct mime_walker *m)
{
	if (m->line_len)
		line(m, m->line, m->line_len, m->mid, false);
	m->line_len = 0;
	m->mid = false;
	if (m->state == MIME_S_HEADERS || m->state == MIME_S_PART_HEADERS)
		field_close(m);
	flush_out(m);
}
