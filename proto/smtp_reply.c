/* Reply buffer (see smtp_reply.h). */
#include "smtp_reply.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

size_t smtp_reply_room(const struct smtp_reply_buf *b)
{
	return b->cap - b->len;
}

bool smtp_reply_add(struct smtp_reply_buf *b, const char *text)
{
	size_t n = strlen(text);
	if (n + 2 > smtp_reply_room(b))
		return false;
	memcpy(b->p + b->len, text, n);
	b->p[b->len + n] = '\r';
	b->p[b->len + n + 1] = '\n';
	b->len += n + 2;
	return true;
}

bool smtp_reply_addf(struct smtp_reply_buf *b, const char *fmt, ...)
{
	char line[SMTP_REPLY_LINE_MAX - 1];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	return smtp_reply_add(b, line);
}
