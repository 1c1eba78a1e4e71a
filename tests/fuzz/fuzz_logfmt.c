/* libFuzzer target for proto/logfmt.c: any line parses or fails without
 * reading past it; every field lies inside the line and unescapes within
 * its buffer; the time parsers take any bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "logfmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *line = (const char *)data;
	struct logfmt_field f[32];
	size_t at = 0;
	int n = logfmt_parse(line, size, f, 32, &at);
	if (n < 0 && at > size)
		abort();
	for (int i = 0; i < n; i++) {
		if (f[i].key < line || f[i].key + f[i].klen > line + size || f[i].val < line ||
		    f[i].val + f[i].vlen > line + size || f[i].klen == 0)
			abort();
		char v[64];
		size_t k = logfmt_value(&f[i], v, sizeof(v));
		if (k >= sizeof(v) || k > f[i].vlen)
			abort();
	}
	int64_t t;
	logfmt_time(line, size, 1796219659123LL, &t);
	logfmt_line_time(line, size, &t);
	return 0;
}
