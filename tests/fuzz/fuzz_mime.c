/* libFuzzer target for the MIME walker (proto/mime.c). Differential: the
 * whole input in one piece and in data-chosen pieces must give the same
 * fields and body; events come in order (a value only inside a field);
 * decoded body never exceeds what base64/QP can produce from the input. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mime.h"

struct out {
	unsigned char *fields, *body;
	size_t fl, bl, cap;
	bool open;
};

static void add(unsigned char *b, size_t *l, size_t cap, const char *p, size_t n)
{
	if (*l + n > cap)
		abort(); /* more out than could come from the input */
	memcpy(b + *l, p, n);
	*l += n;
}

static void sink(void *ctx, enum mime_event ev, const char *p, size_t n)
{
	struct out *o = ctx;
	switch (ev) {
	case MIME_HEADER_LINE:
	case MIME_BODY_RAW:
		break;
	case MIME_FIELD_NAME:
		if (o->open)
			abort();
		o->open = true;
		add(o->fields, &o->fl, o->cap, p, n);
		add(o->fields, &o->fl, o->cap, ":", 1);
		break;
	case MIME_FIELD_VALUE:
		if (!o->open)
			abort();
		add(o->fields, &o->fl, o->cap, p, n);
		break;
	case MIME_FIELD_END:
		if (!o->open || n)
			abort();
		o->open = false;
		add(o->fields, &o->fl, o->cap, "|", 1);
		break;
	case MIME_BODY:
		add(o->body, &o->bl, o->cap, p, n);
		break;
	}
}

static struct mime_walker walker;

static void walk(const uint8_t *d, size_t n, bool stuffed, size_t step, struct out *o)
{
	/* Separators and part line breaks add at most 2 bytes a line. */
	o->cap = 3 * n + 64;
	o->fields = malloc(o->cap);
	o->body = malloc(o->cap);
	o->fl = o->bl = 0;
	o->open = false;
	if (!o->fields || !o->body)
		abort();
	mime_init(&walker, sink, o);
	for (size_t i = 0; i < n; i += step)
		mime_feed(&walker, (const char *)d + i, n - i < step ? n - i : step, stuffed);
	mime_finish(&walker);
	if (o->open)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	bool stuffed = data[0] & 1;
	size_t step = (size_t)(data[0] >> 1) + 1;
	data++;
	size--;
	struct out a, b;
	walk(data, size, stuffed, size ? size : 1, &a);
	walk(data, size, stuffed, step, &b);
	if (a.fl != b.fl || memcmp(a.fields, b.fields, a.fl) != 0 || a.bl != b.bl ||
	    memcmp(a.body, b.body, a.bl) != 0)
		abort();
	free(a.fields);
	free(a.body);
	free(b.fields);
	free(b.body);
	return 0;
}
