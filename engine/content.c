/* Content rules (see content.h). One streaming database holds every rule;
 * a message has up to four streams on it (decoded body, encoded parts as
 * sent, header block, one field at a time: reset between fields and used
 * for the envelope addresses), and
 * a match counts only for the rules of the stream's kind. Streaming keeps
 * no copy of the message: each piece is scanned as it passes. */
#include "content.h"

#include <hs/hs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "metrics.h"
#include "smtp_server.h"

const char *const content_action_names[CONTENT_ACTION_COUNT] = {"reject", "hold", "route",
								 "add_header"};
const char *const content_where_names[CONTENT_WHERE_COUNT] = {"body", "headers", "header",
							       "sender", "recipient"};

bool content_compile(struct content_rules *cr, unsigned *bad, char *msg, size_t cap)
{
	cr->db = NULL;
	cr->wheres = 0;
	if (!cr->n)
		return true;
	const char **pat = calloc(cr->n, sizeof(*pat));
	unsigned *flags = calloc(cr->n, sizeof(*flags));
	unsigned *ids = calloc(cr->n, sizeof(*ids));
	if (!pat || !flags || !ids) {
		free(pat);
		free(flags);
		free(ids);
		*bad = 0;
		snprintf(msg, cap, "out of memory");
		return false;
	}
	for (unsigned i = 0; i < cr->n; i++) {
		pat[i] = cr->rule[i].pattern;
		/* One report per rule and stream is all a verdict needs. */
		flags[i] = HS_FLAG_SINGLEMATCH | HS_FLAG_MULTILINE;
		ids[i] = i;
		cr->wheres |= 1u << cr->rule[i].where;
	}
	hs_database_t *db = NULL;
	hs_compile_error_t *ce = NULL;
	hs_error_t r = hs_compile_multi(pat, flags, ids, cr->n, HS_MODE_STREAM, NULL, &db, &ce);
	free(pat);
	free(flags);
	free(ids);
	if (r != HS_SUCCESS) {
		*bad = ce && ce->expression >= 0 ? (unsigned)ce->expression : 0;
		snprintf(msg, cap, "%s", ce && ce->message ? ce->message : "cannot compile");
		hs_free_compile_error(ce);
		return false;
	}
	cr->db = (struct hs_database *)db;
	return true;
}

void content_rules_free(struct content_rules *cr)
{
	for (unsigned i = 0; i < cr->n; i++) {
		free(cr->rule[i].name);
		free(cr->rule[i].field);
		free(cr->rule[i].pattern);
		free(cr->rule[i].header);
		free(cr->rule[i].send_connector);
	}
	free(cr->rule);
	hs_free_database((hs_database_t *)cr->db);
	memset(cr, 0, sizeof(*cr));
}

void content_worker_free(struct content_worker *cw)
{
	hs_free_scratch((hs_scratch_t *)cw->scratch);
	cw->scratch = NULL;
	cw->gen = 0;
}

struct content_scan {
	const struct content_rules *cr;
	/* The worker's scratch is looked up at each call, never kept: another
	 * message's scan may grow (move) it while this one is under way. */
	struct content_worker *cw;
	hs_stream_t *body, *raw, *headers, *field; /* raw: encoded parts as sent */
	enum content_where now;    /* what the stream being scanned is */
	bool field_wanted;         /* a header: rule names the current field */
	bool field_dirty;          /* the field stream has data since its reset */
	bool failed;
	char field_name[80];
	uint8_t *hit;              /* per rule */
	struct mime_walker mime;
};

static int on_match(unsigned id, unsigned long long from, unsigned long long to,
		    unsigned flags, void *ctx)
{
	struct content_scan *s = ctx;
	const struct content_rule *r = &s->cr->rule[id];
	if (r->where != s->now)
		return 0;
	if (r->where == CONTENT_HEADER && strcasecmp(r->field, s->field_name) != 0)
		return 0;
	s->hit[id] = 1;
	return 0;
}

/* Hyperscan 5.4.0 as Debian builds it, on a CPU with AVX512VBMI, loads 32
 * bytes from a point short of a piece's end (fat Teddy; vectorscan issue
 * 322, fixed there in 2025): a piece that ends within 31 bytes of the end
 * of a mapping faults (a receive buffer, a pickup file's bytes, an
 * address). Mappings end at page ends, and no page is smaller than 4 KiB:
 * a piece whose last byte has SCAN_SLACK bytes after it in its 4 KiB page
 * goes to Hyperscan as it lies; of any other, the last SCAN_SLACK bytes go
 * through a copy with room behind it. A stream cannot tell one call from
 * two, so no rule sees the split. */
#define SCAN_SLACK 64
#define SCAN_PAGE 4096

static void scan(struct content_scan *s, hs_stream_t *st, enum content_where w, const char *p,
		 size_t n)
{
	if (!st || s->failed || !n)
		return;
	s->now = w;
	hs_scratch_t *sc = (hs_scratch_t *)s->cw->scratch;
	size_t direct = n;
	if ((((uintptr_t)p + n - 1) & (SCAN_PAGE - 1)) > SCAN_PAGE - 1 - SCAN_SLACK)
		direct = n > SCAN_SLACK ? n - SCAN_SLACK : 0;
	if (direct && hs_scan_stream(st, p, (unsigned)direct, 0, sc, on_match, s) != HS_SUCCESS) {
		s->failed = true;
		return;
	}
	if (direct == n)
		return;
	char tail[2 * SCAN_SLACK];
	memcpy(tail, p + direct, n - direct);
	if (hs_scan_stream(st, tail, (unsigned)(n - direct), 0, sc, on_match, s) != HS_SUCCESS)
		s->failed = true;
}

/* Ends the field stream's current text (end-anchored matches are
 * reported now) and makes it ready for the next. */
static void field_reset(struct content_scan *s, enum content_where w)
{
	if (!s->field || s->failed || !s->field_dirty)
		return;
	s->now = w;
	s->field_dirty = false;
	hs_scratch_t *sc = (hs_scratch_t *)s->cw->scratch;
	if (hs_reset_stream(s->field, 0, sc, on_match, s) != HS_SUCCESS)
		s->failed = true;
}

static void scan_field(struct content_scan *s, enum content_where w, const char *p, size_t n)
{
	if (!n)
		return;
	s->field_dirty = true;
	scan(s, s->field, w, p, n);
}

static bool field_wanted(const struct content_rules *cr, const char *name)
{
	for (unsigned i = 0; i < cr->n; i++)
		if (cr->rule[i].where == CONTENT_HEADER && strcasecmp(cr->rule[i].field, name) == 0)
			return true;
	return false;
}

static bool open_stream(struct content_scan *s, hs_stream_t **st);

static void on_mime(void *ctx, enum mime_event ev, const char *p, size_t n)
{
	struct content_scan *s = ctx;
	switch (ev) {
	case MIME_HEADER_LINE:
		scan(s, s->headers, CONTENT_HEADERS, p, n);
		break;
	case MIME_FIELD_NAME:
		if (n >= sizeof(s->field_name))
			n = sizeof(s->field_name) - 1;
		memcpy(s->field_name, p, n);
		s->field_name[n] = '\0';
		s->field_wanted = s->field && field_wanted(s->cr, s->field_name);
		break;
	case MIME_FIELD_VALUE:
		if (s->field_wanted)
			scan_field(s, CONTENT_HEADER, p, n);
		break;
	case MIME_FIELD_END:
		if (s->field_wanted)
			field_reset(s, CONTENT_HEADER);
		s->field_wanted = false;
		break;
	case MIME_BODY:
		scan(s, s->body, CONTENT_BODY, p, n);
		break;
	case MIME_BODY_RAW:
		/* Opened at the first encoded line: most mail has none. */
		if (!s->raw && s->body && !s->failed && !open_stream(s, &s->raw))
			s->failed = true;
		scan(s, s->raw, CONTENT_BODY, p, n);
		break;
	}
}

static bool open_stream(struct content_scan *s, hs_stream_t **st)
{
	if (hs_open_stream((const hs_database_t *)s->cr->db, 0, st) == HS_SUCCESS)
		return true;
	*st = NULL;
	return false;
}

struct content_scan *content_scan_begin(const struct content_rules *cr,
					struct content_worker *cw)
{
	if (!cr->db)
		return NULL;
	struct content_scan *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->cr = cr;
	s->hit = calloc(cr->n, 1);
	if (!s->hit) {
		free(s);
		return NULL;
	}
	/* The scratch grows to fit every database it meets (a reload's new
	 * one beside the old that sessions still use); it never shrinks. */
	if (cw->gen != cr->gen || !cw->scratch) {
		hs_scratch_t *sc = (hs_scratch_t *)cw->scratch;
		if (hs_alloc_scratch((const hs_database_t *)cr->db, &sc) == HS_SUCCESS) {
			cw->scratch = (struct hs_scratch *)sc;
			cw->gen = cr->gen;
		} else {
			s->failed = true;
		}
	}
	s->cw = cw;
	unsigned w = cr->wheres;
	if ((w & (1u << CONTENT_BODY)) && !open_stream(s, &s->body))
		s->failed = true;
	if ((w & (1u << CONTENT_HEADERS)) && !open_stream(s, &s->headers))
		s->failed = true;
	if ((w & (1u << CONTENT_HEADER | 1u << CONTENT_SENDER | 1u << CONTENT_RECIPIENT)) &&
	    !open_stream(s, &s->field))
		s->failed = true;
	mime_init(&s->mime, on_mime, s);
	return s;
}

void content_scan_data(struct content_scan *s, const char *p, size_t n, bool stuffed)
{
	if (!s->failed)
		mime_feed(&s->mime, p, n, stuffed);
}

static void close_stream(struct content_scan *s, hs_stream_t **st, enum content_where w)
{
	if (!*st)
		return;
	s->now = w;
	/* Closing reports end-anchored matches; after a failure it only frees. */
	hs_scratch_t *sc = s->failed ? NULL : (hs_scratch_t *)s->cw->scratch;
	if (hs_close_stream(*st, sc, s->failed ? NULL : on_match, s) !=
	    HS_SUCCESS)
		s->failed = true;
	*st = NULL;
}

void content_scan_end(struct content_scan *s, const char *sender,
		      const struct smtp_rcpt *rcpt, unsigned nrcpt, struct content_verdict *v,
		      void (*hit)(void *ctx, const struct content_rule *r, enum content_where w),
		      void *ctx)
{
	memset(v, 0, sizeof(*v));
	if (!s->failed)
		mime_finish(&s->mime);
	if (s->cr->wheres & (1u << CONTENT_SENDER)) {
		field_reset(s, CONTENT_HEADER);
		scan_field(s, CONTENT_SENDER, sender, strlen(sender));
		field_reset(s, CONTENT_SENDER);
	}
	if (s->cr->wheres & (1u << CONTENT_RECIPIENT))
		for (unsigned i = 0; i < nrcpt; i++) {
			field_reset(s, CONTENT_HEADER);
			scan_field(s, CONTENT_RECIPIENT, rcpt[i].addr, strlen(rcpt[i].addr));
			field_reset(s, CONTENT_RECIPIENT);
		}
	close_stream(s, &s->body, CONTENT_BODY);
	close_stream(s, &s->raw, CONTENT_BODY);
	close_stream(s, &s->headers, CONTENT_HEADERS);
	close_stream(s, &s->field, CONTENT_HEADER);
	v->failed = s->failed;
	if (s->failed)
		return;
	for (unsigned i = 0; i < s->cr->n; i++) {
		if (!s->hit[i])
			continue;
		const struct content_rule *r = &s->cr->rule[i];
		v->nhits++;
		if (r->action == CONTENT_REJECT && !v->reject)
			v->reject = r;
		else if (r->action == CONTENT_HOLD && !v->hold)
			v->hold = r;
		else if (r->action == CONTENT_ROUTE && !v->route)
			v->route = r;
		if (hit)
			hit(ctx, r, r->where);
	}
}

bool content_scan_hit(const struct content_scan *s, unsigned i)
{
	return s && i < s->cr->n && s->hit[i];
}

void content_scan_free(struct content_scan *s)
{
	if (!s)
		return;
	/* A scan abandoned midway (the client went away): streams freed. */
	s->failed = true;
	close_stream(s, &s->body, CONTENT_BODY);
	close_stream(s, &s->raw, CONTENT_BODY);
	close_stream(s, &s->headers, CONTENT_HEADERS);
	close_stream(s, &s->field, CONTENT_HEADER);
	free(s->hit);
	free(s);
}

bool content_mark(const struct content_rules *cr, const struct content_scan *s,
		  const struct content_verdict *v, struct smtp_envelope *e)
{
	if (v->hold && !(e->held = strdup(v->hold->name)))
		return false;
	if (!v->hold && v->route && !(e->route = strdup(v->route->send_connector)))
		return false;
	size_t hl = 0;
	for (unsigned i = 0; i < cr->n; i++) {
		const struct content_rule *r = &cr->rule[i];
		if (r->action != CONTENT_ADD_HEADER || !content_scan_hit(s, i))
			continue;
		size_t n = strlen(r->header);
		char *nh = realloc(e->headers, hl + n + 3);
		if (!nh)
			return false;
		memcpy(nh + hl, r->header, n);
		memcpy(nh + hl + n, "\r\n", 3);
		e->headers = nh;
		hl += n + 2;
	}
	return true;
}

const char *content_marks_log(char *buf, size_t cap, const char *held, const char *route)
{
	char q[180];
	buf[0] = '\0';
	if (held)
		snprintf(buf, cap, " held=%s", log_quote(q, sizeof(q), held));
	else if (route)
		snprintf(buf, cap, " route=%s", log_quote(q, sizeof(q), route));
	return buf;
}

void content_hit_note(struct worker_metrics *m, unsigned worker, const char *id,
		      const char *client, const struct content_rule *r, enum content_where where)
{
	char qn[160], qw[200], wh[100];
	metric_add(&m->rule_hits[r->stats_id][r->action], 1);
	snprintf(wh, sizeof(wh), "%s%s%s", content_where_names[where], r->field ? ":" : "",
		 r->field ? r->field : "");
	log_msg(LOG_INFO, "event=content_rule rule=%s action=%s id=%s where=%s client=%s worker=%u",
		log_quote(qn, sizeof(qn), r->name), content_action_names[r->action], id,
		log_quote(qw, sizeof(qw), wh), client, worker);
}
