/* libFuzzer target for proto/base64.c: decoding never writes past its
 * buffer, and whatever decodes encodes back to the same text (canonical
 * form only). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t cap = size / 4 * 3;
	unsigned char *out = malloc(cap + 1);
	char *back = malloc(BASE64_ENCODED_LEN(cap));
	if (!out || !back)
		abort();
	size_t n;
	if (base64_decode((const char *)data, size, out, cap, &n)) {
		if (n > cap)
			abort();
		size_t m = base64_encode(out, n, back);
		if (m != size || memcmp(back, data, size) != 0)
			abort();
	}
	free(out);
	free(back);
	return 0;
}
