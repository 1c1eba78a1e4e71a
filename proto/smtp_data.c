/* DATA scanner (see smtp_data.h). A byte-at-a-time state machine: only a
 * line start that follows CR LF can begin the end marker, so LF.LF, CR.CR
 * and LF.CRLF never end the data. Inside a line, the run of octets up to
 * the next CR, LF or NUL is counted at once (text_run): a client that sends
 * megabyte lines must not cost a state step per octet. */
#include "smtp_data.h"

#include <ctype.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

enum {
	ST_LINE_START,  /* after CR LF (or at the start of DATA) */
	ST_DOT,         /* "." at line start */
	ST_DOT_CR,      /* ".CR" at line start */
	ST_TEXT,        /* inside a line */
	ST_CR,          /* CR inside a line, LF expected */
};

static const char rcvd[] = "received:";

void smtp_data_scan_init(struct smtp_data_scan *s,
			 const struct smtp_data_limits *lim)
{
	memset(s, 0, sizeof(*s));
	s->lim = *lim;
	s->state = ST_LINE_START;
	s->in_header = true;
}

/* Per-octet accounting for an octet that belongs to the message: the one
 * place where content rules that look at single octets are applied. */
static void count_octet(struct smtp_data_scan *s, unsigned char c)
{
	s->size++;
	if (c == '\0')
		s->errors |= SMTP_DATA_NUL;
	if (++s->line_len > SMTP_DATA_LINE_MAX)
		s->errors |= SMTP_DATA_LINE_TOO_LONG;
	if (s->in_header) {
		s->header_size++;
		if (s->rcvd_match >= 0) {
			if ((size_t)s->rcvd_match < sizeof(rcvd) - 1 &&
			    tolower(c) == rcvd[(size_t)s->rcvd_match]) {
				if (++s->rcvd_match == (int)sizeof(rcvd) - 1) {
					s->hops++;
					s->rcvd_match = -1;
				}
			} else {
				s->rcvd_match = -1;
			}
		}
	}
}

/* Octets before the first CR, LF or NUL of p[0..n). With SSE2 (every
 * x86-64) in one pass, 16 octets a step: three memchr calls, one for each,
 * cost three passes and three calls on every line, 15 % of the CPU of
 * accepting 100 KiB messages of 76-octet lines. Else memchr for each, each
 * one bounded by what the previous found. */
#if defined(__SSE2__)
static size_t text_run(const char *p, size_t n)
{
	const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
	const __m128i nul = _mm_setzero_si128();
	size_t i = 0;
	for (; i + 16 <= n; i += 16) {
		__m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
		__m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)),
					 _mm_cmpeq_epi8(v, nul));
		unsigned bits = (unsigned)_mm_movemask_epi8(m);
		if (bits)
			return i + (size_t)__builtin_ctz(bits);
	}
	for (; i < n; i++) {
		if (p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
			return i;
	}
	return n;
}
#else
static size_t text_run(const char *p, size_t n)
{
	static const char stops[] = {'\r', '\n', '\0'};
	for (size_t i = 0; i < sizeof(stops) && n; i++) {
		const char *q = memchr(p, stops[i], n);
		if (q)
			n = (size_t)(q - p);
	}
	return n;
}
#endif

/* count_octet() for a run of n octets that are none of CR, LF and NUL, on a
 * line where no "Received:" is being matched. */
static void count_run(struct smtp_data_scan *s, size_t n)
{
	s->size += n;
	/* Saturates: a line longer than 4 GiB stays too long. */
	if (s->line_len + n > SMTP_DATA_LINE_MAX) {
		s->errors |= SMTP_DATA_LINE_TOO_LONG;
		s->line_len = SMTP_DATA_LINE_MAX + 1;
	} else {
		s->line_len += (uint32_t)n;
	}
	if (s->in_header)
		s->header_size += n;
}

/* The run that may be counted at once from buf, or 0 when the next octet
 * needs the state machine (a header line start still matching
 * "Received:"). */
static size_t fast_run(const struct smtp_data_scan *s, const char *buf, size_t len)
{
	if (s->in_header && s->rcvd_match >= 0)
		return 0;
	return text_run(buf, len);
}

static void end_line(struct smtp_data_scan *s)
{
	/* An empty line (just CR LF) ends the header section. */
	if (s->in_header && s->line_len == 2)
		s->in_header = false;
	s->line_len = 0;
	s->rcvd_match = 0;
}

static void check_limits(struct smtp_data_scan *s)
{
	if (s->lim.max_size && s->size > s->lim.max_size)
		s->errors |= SMTP_DATA_TOO_BIG;
	if (s->lim.max_header_size && s->header_size > s->lim.max_header_size)
		s->errors |= SMTP_DATA_HEADER_TOO_BIG;
	if (s->lim.max_hops && s->hops > s->lim.max_hops)
		s->errors |= SMTP_DATA_TOO_MANY_HOPS;
}

size_t smtp_data_scan(struct smtp_data_scan *s, const char *buf, size_t len,
		      size_t *body_len, bool *end)
{
	size_t i = 0;
	*end = false;
	for (; i < len; i++) {
		unsigned char c = (unsigned char)buf[i];
		switch (s->state) {
		case ST_LINE_START:
			if (c == '.') {
				s->state = ST_DOT;
				continue;
			}
			count_octet(s, c);
			if (c == '\r')
				s->state = ST_CR;
			else if (c == '\n') {
				s->errors |= SMTP_DATA_BARE_CR_LF;
				s->state = ST_TEXT;
			} else
				s->state = ST_TEXT;
			break;
		case ST_DOT:
			if (c == '\r') {
				s->state = ST_DOT_CR;
				continue;
			}
			count_octet(s, '.');
			count_octet(s, c);
			s->dot_lines++;
			if (c == '\n')
				s->errors |= SMTP_DATA_BARE_CR_LF;
			s->state = ST_TEXT;
			break;
		case ST_DOT_CR:
			if (c == '\n') {
				check_limits(s);
				*body_len = i + 1 - 3;
				*end = true;
				s->state = ST_LINE_START;
				return i + 1;
			}
			/* ".CR" then not LF: a bare CR. */
			s->dot_lines++;
			count_octet(s, '.');
			count_octet(s, '\r');
			count_octet(s, c);
			s->errors |= SMTP_DATA_BARE_CR_LF;
			s->state = c == '\r' ? ST_CR : ST_TEXT;
			break;
		case ST_TEXT: {
			size_t k = fast_run(s, buf + i, len - i);
			if (k) {
				count_run(s, k);
				i += k;
				/* The usual line end, CR LF, after the header: what
				 * count_octet and ST_CR would make of it, at once. */
				if (!s->in_header && i + 1 < len && buf[i] == '\r' &&
				    buf[i + 1] == '\n') {
					s->size += 2;
					if (s->line_len + 2 > SMTP_DATA_LINE_MAX)
						s->errors |= SMTP_DATA_LINE_TOO_LONG;
					end_line(s);
					s->state = ST_LINE_START;
					i++;
					continue;
				}
				i--;
				continue;
			}
			count_octet(s, c);
			if (c == '\r')
				s->state = ST_CR;
			else if (c == '\n')
				s->errors |= SMTP_DATA_BARE_CR_LF;
			break;
		}
		case ST_CR:
			count_octet(s, c);
			if (c == '\n') {
				end_line(s);
				s->state = ST_LINE_START;
			} else {
				s->errors |= SMTP_DATA_BARE_CR_LF;
				s->state = c == '\r' ? ST_CR : ST_TEXT;
			}
			break;
		}
	}
	check_limits(s);
	/* Give back a pending "." or ".CR" at a line start: the caller presents
	 * it again, so the end marker is always seen whole in one call. */
	size_t held = s->state == ST_DOT ? 1 : s->state == ST_DOT_CR ? 2 : 0;
	if (held)
		s->state = ST_LINE_START;
	*body_len = len - held;
	return len - held;
}

void smtp_data_scan_octets(struct smtp_data_scan *s, const char *buf, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (s->state != ST_CR) {
			size_t k = fast_run(s, buf + i, len - i);
			if (k) {
				count_run(s, k);
				s->state = ST_TEXT;
				i += k - 1;
				continue;
			}
		}
		unsigned char c = (unsigned char)buf[i];
		count_octet(s, c);
		if (s->state == ST_CR && c == '\n') {
			end_line(s);
			s->state = ST_LINE_START;
		} else if (s->state == ST_CR || c == '\n') {
			/* CR then not LF, or LF without CR */
			s->errors |= SMTP_DATA_BARE_CR_LF;
			s->state = c == '\r' ? ST_CR : ST_TEXT;
		} else {
			s->state = c == '\r' ? ST_CR : ST_TEXT;
		}
	}
	check_limits(s);
}

bool smtp_data_scan_octets_end(struct smtp_data_scan *s)
{
	if (s->state == ST_CR)
		s->errors |= SMTP_DATA_BARE_CR_LF;
	return s->state != ST_LINE_START;
}
