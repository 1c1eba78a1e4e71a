/* One header field's value from a streamed message (see header_value.h).
 * A byte-driven state machine: the state and the name matched so far are
 * all it keeps between feeds, so a split anywhere is the same as none. */
#include "header_value.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

enum {
	HV_BOL,        /* at the start of a line */
	HV_BLANK_CR,   /* a CR at the start of a line: the empty line? */
	HV_NAME,       /* matching the field name */
	HV_NAME_WS,    /* the name matched, white space before the colon */
	HV_VALUE,      /* in our field's value */
	HV_SKIP,       /* in some other line */
};

static char lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

void header_value_init(struct header_value *h, const char *name)
{
	memset(h, 0, sizeof(*h));
	snprintf(h->name, sizeof(h->name), "%s", name);
	h->namelen = (unsigned)strlen(h->name);
	assert(h->namelen > 0);
	h->state = HV_BOL;
}

static void add(struct header_value *h, char c)
{
	if (h->len == 0 && (c == ' ' || c == '\t'))
		return; /* leading white space is not part of the value */
	if (h->len >= HEADER_VALUE_MAX) {
		h->cut = true;
		return;
	}
	h->value[h->len++] = c;
}

/* A byte at the start of a line (after the CR of a non-empty line too). */
static void line_start(struct header_value *h, char c)
{
	if (c == ' ' || c == '\t') {
		/* A folded continuation: of our field, or of another. */
		if (h->found) {
			add(h, c);
			h->state = HV_VALUE;
		} else {
			h->state = HV_SKIP;
		}
		return;
	}
	if (h->found) {
		h->done = true; /* a new field: ours is complete */
		return;
	}
	if (c == '\n') {
		h->done = true; /* a bare LF empty line ends the header section too */
		return;
	}
	if (c == '\r') {
		h->state = HV_BLANK_CR;
		return;
	}
	h->pos = 1;
	h->state = lower(c) == lower(h->name[0]) ? HV_NAME : HV_SKIP;
}

bool header_value_feed(struct header_value *h, const char *p, size_t n)
{
	for (size_t i = 0; i < n && !h->done; i++) {
		char c = p[i];
		switch (h->state) {
		case HV_BOL:
			line_start(h, c);
			break;
		case HV_BLANK_CR:
			if (c == '\n')
				h->done = true; /* the empty line: end of the header section */
			else
				line_start(h, c); /* a stray CR: treated as nothing */
			break;
		case HV_NAME:
			if (h->pos < h->namelen && lower(c) == lower(h->name[h->pos])) {
				h->pos++;
			} else if (h->pos == h->namelen && c == ':') {
				h->found = true;
				h->state = HV_VALUE;
			} else if (h->pos == h->namelen && (c == ' ' || c == '\t')) {
				h->state = HV_NAME_WS; /* obsolete syntax: "Name :" */
			} else {
				h->state = c == '\n' ? HV_BOL : HV_SKIP;
			}
			break;
		case HV_NAME_WS:
			if (c == ':') {
				h->found = true;
				h->state = HV_VALUE;
			} else if (c != ' ' && c != '\t') {
				h->state = c == '\n' ? HV_BOL : HV_SKIP;
			}
			break;
		case HV_VALUE:
			if (c == '\n')
				h->state = HV_BOL;
			else if (c != '\r')
				add(h, c);
			break;
		case HV_SKIP:
			if (c == '\n')
				h->state = HV_BOL;
			break;
		}
	}
	return h->done;
}

bool header_value_get(const struct header_value *h, char *dst, size_t cap)
{
	if (!h->found || cap == 0)
		return false;
	size_t n = h->len;
	while (n && (h->value[n - 1] == ' ' || h->value[n - 1] == '\t'))
		n--;
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, h->value, n);
	dst[n] = '\0';
	return true;
}
