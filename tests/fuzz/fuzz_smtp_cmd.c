/* libFuzzer target for the SMTP command tokenizer (proto/smtp_cmd.c).
 * Differential: the input tokenized in one piece and in data-chosen chunks
 * must give the same lines; spans must lie in the caller's buffer and the
 * caller's buffer must stay bounded. BDAT arguments go through their
 * parser (smtp_bdat_arg_parse) too. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_cmd.h"

struct run {
	char *rec;
	size_t len, cap;
};

static void rec_add(struct run *r, const void *p, size_t n)
{
	if (n == 0)
		return;
	if (r->len + n > r->cap) {
		r->cap = (r->len + n) * 2 + 64;
		r->rec = realloc(r->rec, r->cap);
		if (!r->rec)
			abort();
	}
	memcpy(r->rec + r->len, p, n);
	r->len += n;
}

/* BDAT's argument: what parses prints back to an argument that parses
 * the same (the size as decimal, LAST kept). */
static void check_bdat(const char *arg, size_t len)
{
	uint64_t size, size2;
	bool last, last2;
	if (!smtp_bdat_arg_parse(arg, len, &size, &last))
		return;
	if (size > 999999999999999999ull || len > 23)
		abort();
	char back[40];
	int n = snprintf(back, sizeof(back), "%llu%s", (unsigned long long)size, last ? " LAST" : "");
	if (!smtp_bdat_arg_parse(back, (size_t)n, &size2, &last2) || size2 != size || last2 != last)
		abort();
}

/* Tokenizes data, presented chunk bytes at a time (0: all at once). */
static void tokenize(const uint8_t *data, size_t size, size_t chunk, struct run *out)
{
	struct smtp_cmd_reader r;
	smtp_cmd_reader_init(&r);
	char *buf = malloc(size + 1);
	if (!buf)
		abort();
	size_t len = 0, off = 0;
	while (off < size) {
		size_t n = chunk ? chunk : size;
		if (n > size - off)
			n = size - off;
		memcpy(buf + len, data + off, n);
		len += n;
		off += n;
		if (chunk && len > SMTP_CMD_LINE_MAX + chunk)
			abort(); /* the caller's buffer must stay bounded */
		for (;;) {
			struct smtp_cmd c;
			size_t used;
			enum smtp_cmd_result res = smtp_cmd_next(&r, buf, len, &c, &used);
			if (used > len)
				abort();
			if (res == SMTP_CMD_LINE) {
				if (c.line != buf || c.line_len >= used ||
				    c.line_len >= SMTP_CMD_LINE_MAX ||
				    c.arg < c.line ||
				    c.arg + c.arg_len > c.line + c.line_len ||
				    (unsigned)c.verb >= SMTP_VERB_COUNT ||
				    memchr(c.line, '\n', c.line_len))
					abort();
				uint32_t hdr[3] = {1, (uint32_t)c.verb, (uint32_t)c.line_len};
				rec_add(out, hdr, sizeof(hdr));
				rec_add(out, c.line, c.line_len);
				uint32_t a = (uint32_t)(c.arg - c.line);
				rec_add(out, &a, sizeof(a));
				if (c.verb == SMTP_VERB_BDAT)
					check_bdat(c.arg, c.arg_len);
			} else if (res == SMTP_CMD_TOO_LONG) {
				uint32_t hdr = 2;
				rec_add(out, &hdr, sizeof(hdr));
			}
			memmove(buf, buf + used, len - used);
			len -= used;
			if (res == SMTP_CMD_AGAIN)
				break;
		}
	}
	free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t chunk = 1 + data[0] % 64;
	data++;
	size--;
	struct run whole = {0}, split = {0}, bytes = {0};
	tokenize(data, size, 0, &whole);
	tokenize(data, size, chunk, &split);
	tokenize(data, size, 1, &bytes);
	if (whole.len != split.len || whole.len != bytes.len ||
	    (whole.len && (memcmp(whole.rec, split.rec, whole.len) != 0 ||
			   memcmp(whole.rec, bytes.rec, whole.len) != 0)))
		abort();
	free(whole.rec);
	free(split.rec);
	free(bytes.rec);
	return 0;
}
