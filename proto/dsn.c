/* Delivery status notifications (see dsn.h): builds the RFC 3464
 * multipart/report in wire form from facts the caller passes and the stored
 * original. No I/O, no clock, no allocation. Caller strings are sanitised so
 * none can end a line, and the original is copied already stuffed. */
#include "dsn.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "received.h"
#include "smtp_path.h"

#define DSN_LINE_MAX 998  /* octets before CR LF (RFC 5322 2.1.1) */
#define DSN_FOLD_AT 78    /* preferred width of the lines we generate */
#define DSN_VALUE_MAX 900 /* octets of one field value; the rest is cut */
#define DSN_HEAD_MAX 64   /* head + DSN_VALUE_MAX stays under DSN_LINE_MAX */
#define DSN_DATE_MAX 64

#define BOUNDARY_PREFIX "=_postern_"
/* BOUNDARY_PREFIX, 16 hex digits of the hash, "_", 2 hex digits. */
#define BOUNDARY_LEN (sizeof(BOUNDARY_PREFIX) - 1 + 16 + 1 + 2)

/* ---- sinks ------------------------------------------------------------ */

/* The report buffer and the scans of the original (subject, boundary) all
 * take bytes through this, so the scans see exactly what the report holds. */
struct sink {
	void (*put)(struct sink *s, const char *p, size_t n);
	bool done; /* wants no more bytes */
};

struct out {
	struct sink sink;
	char *buf;
	size_t cap, len;
};

static void out_put(struct sink *s, const char *p, size_t n)
{
	struct out *o = (struct out *)s;
	if (o->len < o->cap)
		memcpy(o->buf + o->len, p, n < o->cap - o->len ? n : o->cap - o->len);
	o->len += n;
}

static void out_str(struct out *o, const char *s)
{
	out_put(&o->sink, s, strlen(s));
}

/* ---- generated lines -------------------------------------------------- */

static bool given(const char *s)
{
	return s && *s;
}

/* A field value being built: printable US-ASCII only, so nothing a caller
 * passes can start a line, and bounded so no line passes DSN_LINE_MAX. */
struct value {
	char s[DSN_VALUE_MAX + 1];
	size_t n;
};

static void value_add(struct value *v, const char *s)
{
	for (; s && *s && v->n < DSN_VALUE_MAX; s++) {
		unsigned char c = (unsigned char)*s;
		v->s[v->n++] = c < 0x20 || c == 0x7f ? ' ' : c >= 0x80 ? '?' : (char)c;
	}
	v->s[v->n] = '\0';
}

/* Writes head and then the words of v, one space apart, moving a word that
 * would pass DSN_FOLD_AT to a new line starting with indent; the first word
 * stays with head. With indent " " this is RFC 5322 folding. Lines start
 * with head or indent, never with '.', so none needs stuffing. */
static void put_folded(struct out *o, const char *head, const struct value *v,
		       const char *indent)
{
	size_t hl = strlen(head), il = strlen(indent);
	assert(hl > 0 && hl <= DSN_HEAD_MAX && head[0] != '.');
	assert(il > 0 && il <= DSN_HEAD_MAX && (indent[0] == ' ' || indent[0] == '\t'));
	out_put(&o->sink, head, hl);
	size_t col = hl;
	bool first = true;
	for (size_t i = 0; i < v->n;) {
		if (v->s[i] == ' ') {
			i++;
			continue;
		}
		size_t end = i;
		while (end < v->n && v->s[end] != ' ')
			end++;
		size_t wl = end - i;
		if (!first && col + 1 + wl > DSN_FOLD_AT) {
			out_put(&o->sink, "\r\n", 2);
			out_put(&o->sink, indent, il);
			col = il;
		} else if (!first) {
			out_put(&o->sink, " ", 1);
			col++;
		}
		out_put(&o->sink, v->s + i, wl);
		col += wl;
		first = false;
		i = end;
	}
	out_put(&o->sink, "\r\n", 2);
}

/* A header or delivery-status field: head, then the caller strings a and b. */
static void put_field(struct out *o, const char *head, const char *a, const char *b)
{
	struct value v = {.n = 0};
	value_add(&v, a);
	value_add(&v, b);
	put_folded(o, head, &v, " ");
}

static void format_date(char buf[DSN_DATE_MAX], int64_t t)
{
	/* Only a year beyond int fails; the epoch keeps the field well-formed. */
	if (!smtp_date_format(buf, DSN_DATE_MAX, t))
		smtp_date_format(buf, DSN_DATE_MAX, 0);
}

static void put_date_field(struct out *o, const char *head, int64_t t)
{
	char date[DSN_DATE_MAX];
	format_date(date, t);
	put_field(o, head, date, NULL);
}

/* ---- recipients ------------------------------------------------------- */

static const char *action_name(enum dsn_action a)
{
	switch (a) {
	case DSN_FAILED: return "failed";
	case DSN_DELAYED: return "delayed";
	case DSN_DELIVERED: return "delivered";
	case DSN_RELAYED: return "relayed";
	}
	return "failed";
}

static const char *rcpt_status(const struct dsn_rcpt *r)
{
	if (given(r->status))
		return r->status;
	switch (r->action) {
	case DSN_FAILED: return "5.0.0";
	case DSN_DELAYED: return "4.0.0";
	case DSN_DELIVERED:
	case DSN_RELAYED: return "2.0.0";
	}
	return "5.0.0";
}

/* Words for the text part (RFC 3463), when no remote reply says more. */
static const char *status_reason(const char *status)
{
	static const struct {
		const char *detail; /* subject.detail */
		const char *text;
	} details[] = {
		{"1.1", "bad destination mailbox address"},
		{"1.2", "bad destination system address"},
		{"1.3", "bad destination mailbox address syntax"},
		{"2.1", "mailbox disabled"},
		{"2.2", "mailbox full"},
		{"2.3", "message too long for the mailbox"},
		{"3.4", "message too big for the system"},
		{"4.1", "no answer from host"},
		{"4.2", "bad connection"},
		{"4.3", "routing server failure"},
		{"4.4", "unable to route"},
		{"4.6", "routing loop detected"},
		{"4.7", "delivery time expired"},
		{"7.1", "delivery not authorized, message refused"},
	};
	char class = status[0];
	if ((class != '2' && class != '4' && class != '5') || status[1] != '.')
		return NULL;
	if (class == '2')
		return "success";
	for (size_t i = 0; i < sizeof(details) / sizeof(details[0]); i++)
		if (strcmp(status + 2, details[i].detail) == 0)
			return details[i].text;
	return class == '4' ? "temporary failure" : "permanent failure";
}

/* The kind of report: any failure makes it a failure report, and so on. */
static enum dsn_action report_kind(const struct dsn_msg *m)
{
	static const enum dsn_action rank[] = {DSN_FAILED, DSN_DELAYED,
					       DSN_RELAYED, DSN_DELIVERED};
	for (size_t k = 0; k < sizeof(rank) / sizeof(rank[0]); k++)
		for (unsigned i = 0; i < m->nrcpt; i++)
			if (m->rcpt[i].action == rank[k])
				return rank[k];
	return DSN_FAILED;
}

/* ---- the original ----------------------------------------------------- */

/* Copies the stored original to a sink as wire form. Its lines are already
 * stuffed, so a leading '.' is copied as is; only what a valid spool file
 * never holds is repaired: bare CR or LF become CR LF, a line over
 * DSN_LINE_MAX is broken (stuffing the new line), a lone "." (which would
 * end DATA) is doubled, and a missing final CR LF is added. */
struct walk {
	struct sink *s;
	bool headers_only;
	bool cr;    /* a CR is pending */
	bool stop;  /* the header section has ended */
	char first; /* first octet of the current output line */
	size_t col; /* octets of the current output line */
};

static void walk_eol(struct walk *w)
{
	if (w->col == 1 && w->first == '.')
		w->s->put(w->s, ".", 1);
	w->s->put(w->s, "\r\n", 2);
	if (w->headers_only && w->col == 0)
		w->stop = true;
	w->col = 0;
}

static void copy_original(const struct dsn_msg *m, bool headers_only,
			  struct sink *s)
{
	struct walk w = {.s = s, .headers_only = headers_only};
	for (unsigned k = 0; k < m->norig && !w.stop && !s->done; k++) {
		const char *p = m->orig[k].iov_base;
		size_t len = m->orig[k].iov_len;
		size_t i = 0;
		while (i < len && !w.stop && !s->done) {
			char c = p[i];
			if (w.cr) {
				w.cr = false;
				walk_eol(&w);
				if (c == '\n')
					i++;
				continue;
			}
			if (c == '\r') {
				w.cr = true;
				i++;
				continue;
			}
			if (c == '\n') {
				walk_eol(&w);
				i++;
				continue;
			}
			if (w.col >= DSN_LINE_MAX) {
				s->put(s, "\r\n", 2);
				w.col = 0;
				if (c == '.') {
					s->put(s, ".", 1);
					w.first = '.';
					w.col = 1;
				}
			}
			size_t lim = len - i < DSN_LINE_MAX - w.col ? len - i
								      : DSN_LINE_MAX - w.col;
			size_t n = 1;
			while (n < lim && p[i + n] != '\r' && p[i + n] != '\n')
				n++;
			if (w.col == 0)
				w.first = c;
			s->put(s, p + i, n);
			w.col += n;
			i += n;
		}
	}
	if (!w.stop && !s->done && (w.cr || w.col > 0))
		walk_eol(&w);
}

static uint64_t original_size(const struct dsn_msg *m)
{
	uint64_t n = 0;
	for (unsigned k = 0; k < m->norig; k++)
		n += m->orig[k].iov_len;
	return n;
}

/* The first Subject field of the header section, unfolded. */
struct subject_scan {
	struct sink sink;
	enum { SUBJ_NAME, SUBJ_COLON, SUBJ_SKIP, SUBJ_VALUE, SUBJ_NEXT } state;
	size_t matched;
	bool found;
	size_t n;
	char s[DSN_VALUE_MAX + 1];
};

static void subject_put(struct sink *sk, const char *p, size_t len)
{
	struct subject_scan *s = (struct subject_scan *)sk;
	for (size_t i = 0; i < len && !sk->done; i++) {
		char c = p[i];
		switch (s->state) {
		case SUBJ_NAME:
			if (c == "subject"[s->matched] ||
			    c == "SUBJECT"[s->matched]) {
				if (++s->matched == 7)
					s->state = SUBJ_COLON;
			} else {
				s->matched = 0;
				s->state = c == '\n' ? SUBJ_NAME : SUBJ_SKIP;
			}
			break;
		case SUBJ_COLON: /* RFC 5322 obs-optional: WSP before ':' */
			if (c == ':') {
				s->found = true;
				s->state = SUBJ_VALUE;
			} else if (c != ' ' && c != '\t') {
				s->matched = 0;
				s->state = c == '\n' ? SUBJ_NAME : SUBJ_SKIP;
			}
			break;
		case SUBJ_SKIP:
			if (c == '\n') {
				s->matched = 0;
				s->state = SUBJ_NAME;
			}
			break;
		case SUBJ_NEXT:
			if (c != ' ' && c != '\t') {
				sk->done = true;
				break;
			}
			s->state = SUBJ_VALUE;
			/* fall through */
		case SUBJ_VALUE:
			if (c == '\n')
				s->state = SUBJ_NEXT;
			else if (c != '\r' && s->n < DSN_VALUE_MAX)
				s->s[s->n++] = c;
			break;
		}
	}
	s->s[s->n] = '\0';
}

/* Boundary candidates share BOUNDARY_PREFIX and a hash of the Message-ID
 * and differ in the last two hex digits; one pass over the returned part
 * marks the candidates that start one of its lines (ignoring case and a
 * stuffing dot, as lenient MIME parsers would), and notes 8-bit octets. */
struct boundary_scan {
	struct sink sink;
	char base[2 + BOUNDARY_LEN - 2 + 1]; /* "--" and the candidate without its digits */
	size_t base_len;
	char line[1 + 2 + BOUNDARY_LEN];     /* start of the current line */
	size_t have;
	bool checked;
	bool eight_bit;
	uint64_t used[4];
};

static void boundary_check_line(struct boundary_scan *b)
{
	const char *p = b->line;
	size_t n = b->have;
	if (n && p[0] == '.') {
		p++;
		n--;
	}
	if (n < b->base_len + 2 || strncasecmp(p, b->base, b->base_len) != 0)
		return;
	int hi = smtp_hexval(p[b->base_len]), lo = smtp_hexval(p[b->base_len + 1]);
	if (hi >= 0 && lo >= 0)
		b->used[hi >> 2] |= UINT64_C(1) << ((hi & 3) * 16 + lo);
}

static void boundary_put(struct sink *sk, const char *p, size_t len)
{
	struct boundary_scan *b = (struct boundary_scan *)sk;
	for (size_t i = 0; i < len; i++) {
		char c = p[i];
		if ((unsigned char)c >= 0x80)
			b->eight_bit = true;
		if (c == '\n') {
			if (!b->checked)
				boundary_check_line(b);
			b->have = 0;
			b->checked = false;
		} else if (b->have < sizeof(b->line)) {
			b->line[b->have++] = c;
			if (b->have == sizeof(b->line)) {
				boundary_check_line(b);
				b->checked = true;
			}
		}
	}
}

static uint64_t boundary_hash(const char *id, uint32_t salt)
{
	uint64_t h = UINT64_C(14695981039346656037); /* FNV-1a */
	for (; id && *id; id++) {
		h ^= (unsigned char)*id;
		h *= UINT64_C(1099511628211);
	}
	for (int i = 0; salt && i < 4; i++) {
		h ^= (salt >> (8 * i)) & 0xff;
		h *= UINT64_C(1099511628211);
	}
	return h;
}

/* Picks the boundary: the same for the same Message-ID unless the returned
 * part holds a line starting with it. Parts 1 and 2 cannot: every line we
 * generate starts with a letter, '<' or white space. */
static void pick_boundary(const struct dsn_msg *m, bool headers_only,
			  char out[BOUNDARY_LEN + 1], bool *eight_bit)
{
	for (uint32_t salt = 0;; salt++) {
		struct boundary_scan b = {.sink.put = boundary_put};
		uint64_t h = boundary_hash(m->message_id, salt);
		b.base_len = (size_t)snprintf(b.base, sizeof(b.base),
					      "--" BOUNDARY_PREFIX "%016llx_",
					      (unsigned long long)h);
		copy_original(m, headers_only, &b.sink);
		*eight_bit = b.eight_bit;
		for (unsigned k = 0; k < 256; k++) {
			if (!(b.used[k / 64] >> (k % 64) & 1)) {
				snprintf(out, BOUNDARY_LEN + 1,
					 BOUNDARY_PREFIX "%016llx_%02x",
					 (unsigned long long)h, k);
				return;
			}
		}
	}
}

/* ---- the report ------------------------------------------------------- */

static void put_headers(struct out *o, const struct dsn_msg *m,
			enum dsn_action kind, const char *boundary,
			bool eight_bit)
{
	char date[DSN_DATE_MAX];
	put_field(o, "From: Mail Delivery System <", m->postmaster, ">");
	put_field(o, "To: <", m->to, ">");

	struct value subj = {.n = 0};
	switch (kind) {
	case DSN_FAILED: {
		struct subject_scan s = {.sink.put = subject_put};
		copy_original(m, true, &s.sink);
		size_t i = 0;
		while (i < s.n && (s.s[i] == ' ' || s.s[i] == '\t'))
			i++;
		if (s.found && i < s.n) {
			value_add(&subj, "Undeliverable: ");
			value_add(&subj, s.s + i);
		} else {
			value_add(&subj, "Delivery Status Notification (Failure)");
		}
		break;
	}
	case DSN_DELAYED:
		value_add(&subj, "Delivery Status Notification (Delay)");
		break;
	case DSN_DELIVERED:
	case DSN_RELAYED:
		value_add(&subj, "Delivery Status Notification (Success)");
		break;
	}
	put_folded(o, "Subject: ", &subj, " ");

	format_date(date, m->now);
	put_field(o, "Date: ", date, NULL);
	put_field(o, "Message-ID: <", m->message_id, ">");
	out_str(o, "Auto-Submitted: auto-replied\r\n"
		   "MIME-Version: 1.0\r\n"
		   "Content-Type: multipart/report; report-type=delivery-status;\r\n"
		   "\tboundary=\"");
	out_str(o, boundary);
	out_str(o, "\"\r\n");
	if (eight_bit)
		out_str(o, "Content-Transfer-Encoding: 8bit\r\n");
	out_str(o, "\r\n"
		   "This is a MIME-encapsulated message.\r\n");
}

static void put_boundary(struct out *o, const char *boundary, bool last)
{
	out_str(o, "\r\n--");
	out_str(o, boundary);
	out_str(o, last ? "--\r\n" : "\r\n");
}

static void put_text_part(struct out *o, const struct dsn_msg *m,
			  enum dsn_action kind, bool whole)
{
	static const char *const intro[] = {
		[DSN_FAILED] =
			"Your message could not be delivered to one or more recipients.\r\n",
		[DSN_DELAYED] =
			"Your message has not yet been delivered to one or more recipients.\r\n"
			"The mail system will keep trying; you do not need to send it again.\r\n",
		[DSN_DELIVERED] =
			"Your message was delivered to the recipients listed below.\r\n",
		[DSN_RELAYED] =
			"Your message was relayed to the recipients listed below. The next mail\r\n"
			"system does not report on delivery, so you may hear no more about them.\r\n",
	};
	out_str(o, "Content-Type: text/plain; charset=us-ascii\r\n\r\n");
	put_field(o, "This is the mail system at host ", m->reporting_mta, ".");
	out_str(o, "\r\n");
	out_str(o, intro[kind]);
	for (unsigned i = 0; i < m->nrcpt; i++) {
		const struct dsn_rcpt *r = &m->rcpt[i];
		const char *status = rcpt_status(r);
		const char *reason = status_reason(status);
		struct value v = {.n = 0};
		value_add(&v, r->addr);
		value_add(&v, ">: ");
		value_add(&v, action_name(r->action));
		value_add(&v, ", status ");
		value_add(&v, status);
		if (reason) {
			value_add(&v, " (");
			value_add(&v, reason);
			value_add(&v, ")");
		}
		out_str(o, "\r\n");
		put_folded(o, "<", &v, "    ");
		if (given(r->diagnostic)) {
			v.n = 0;
			if (given(r->remote_mta)) {
				value_add(&v, r->remote_mta);
				value_add(&v, " said: ");
			} else {
				value_add(&v, "The remote server said: ");
			}
			value_add(&v, r->diagnostic);
			put_folded(o, "    ", &v, "    ");
		}
		if (r->action == DSN_DELAYED) {
			char date[DSN_DATE_MAX];
			v.n = 0;
			if (r->will_retry_until) {
				format_date(date, r->will_retry_until);
				value_add(&v, "Delivery will be retried until ");
				value_add(&v, date);
				value_add(&v, ".");
			} else {
				value_add(&v, "Delivery will be retried.");
			}
			put_folded(o, "    ", &v, "    ");
		}
	}
	out_str(o, "\r\n");
	if (whole)
		out_str(o, "The original message is attached.\r\n");
	else if (m->full)
		out_str(o, "The original message is too large to return in full;\r\n"
			   "only its headers are attached.\r\n");
	else
		out_str(o, "The headers of the original message are attached.\r\n");
}

/* Fields in the order of the RFC 3464 2.1 grammar. */
static void put_status_part(struct out *o, const struct dsn_msg *m)
{
	out_str(o, "Content-Type: message/delivery-status\r\n\r\n");
	if (given(m->envid))
		put_field(o, "Original-Envelope-Id: ", m->envid, NULL);
	put_field(o, "Reporting-MTA: dns; ", m->reporting_mta, NULL);
	if (given(m->received_from))
		put_field(o, "Received-From-MTA: dns; ", m->received_from, NULL);
	put_date_field(o, "Arrival-Date: ", m->arrival);
	if (given(m->queue_id))
		put_field(o, "X-Postern-Queue-ID: ", m->queue_id, NULL);
	for (unsigned i = 0; i < m->nrcpt; i++) {
		const struct dsn_rcpt *r = &m->rcpt[i];
		out_str(o, "\r\n");
		if (given(r->orcpt))
			put_field(o, "Original-Recipient: ", r->orcpt, NULL);
		put_field(o, "Final-Recipient: rfc822; ", r->addr, NULL);
		put_field(o, "Action: ", action_name(r->action), NULL);
		put_field(o, "Status: ", rcpt_status(r), NULL);
		if (given(r->remote_mta))
			put_field(o, "Remote-MTA: dns; ", r->remote_mta, NULL);
		if (given(r->diagnostic))
			put_field(o, "Diagnostic-Code: smtp; ", r->diagnostic, NULL);
		if (r->last_attempt)
			put_date_field(o, "Last-Attempt-Date: ", r->last_attempt);
		if (r->action == DSN_DELAYED && r->will_retry_until)
			put_date_field(o, "Will-Retry-Until: ", r->will_retry_until);
	}
}

size_t dsn_compose(char *out, size_t cap, const struct dsn_msg *m)
{
	struct out o = {.sink.put = out_put, .buf = out, .cap = out ? cap : 0};
	enum dsn_action kind = report_kind(m);
	bool whole = m->full &&
		     (m->max_return == 0 || original_size(m) <= m->max_return);
	char boundary[BOUNDARY_LEN + 1];
	bool eight_bit;
	pick_boundary(m, !whole, boundary, &eight_bit);

	put_headers(&o, m, kind, boundary, eight_bit);
	put_boundary(&o, boundary, false);
	put_text_part(&o, m, kind, whole);
	put_boundary(&o, boundary, false);
	put_status_part(&o, m);
	put_boundary(&o, boundary, false);
	out_str(&o, whole ? "Content-Type: message/rfc822\r\n"
			  : "Content-Type: text/rfc822-headers\r\n");
	if (eight_bit)
		out_str(&o, "Content-Transfer-Encoding: 8bit\r\n");
	out_str(&o, "\r\n");
	copy_original(m, !whole, &o.sink);
	put_boundary(&o, boundary, true);
	if (o.len < o.cap)
		out[o.len] = '\0';
	return o.len;
}

bool dsn_xtext_decode(const char *in, char *out, size_t cap)
{
	size_t n = 0;
	if (cap == 0)
		return false;
	out[0] = '\0';
	if (!in)
		return false;
	size_t len = strlen(in);
	for (size_t i = 0; i < len;) {
		int c = smtp_xtext_char(in, len, &i);
		if (c <= 0 || n + 1 >= cap) { /* "+00" would cut the string */
			out[0] = '\0';
			return false;
		}
		out[n++] = (char)c;
	}
	out[n] = '\0';
	return true;
}
