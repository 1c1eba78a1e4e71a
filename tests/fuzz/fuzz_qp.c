/* libFuzzer target for proto/qp.c: never writes more than it reads, and
 * text without "=" or trailing white space comes back unchanged. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *out = malloc(size + 1);
	if (!out)
		abort();
	bool soft;
	size_t n = qp_decode_line((const char *)data, size, out, &soft);
	if (n > size)
		abort();
	bool plain = !memchr(data, '=', size) &&
		     (!size || (data[size - 1] != ' ' && data[size - 1] != '\t' &&
				data[size - 1] != '\r'));
	if (plain && (soft || n != size || memcmp(out, data, size) != 0))
		abort();
	free(out);
	return 0;
}
