/* libFuzzer target for proto/base64.c: decoding never writes past its
 * buffer, and whatever decodes encodes back to the same text (canonical
 * form only). The MIME stream decoder gives the same bytes in one piece
 * and in data-chosen pieces, within its stated room, and agrees with the
 * strict decoder on canonical input. */
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
	/* Stream: room len / 4 * 3 + 3 per call. */
	unsigned char *one = malloc(size / 4 * 3 + 3), *two = malloc(size / 4 * 3 + 3 * size + 3);
	if (!one || !two)
		abort();
	struct base64_stream s;
	base64_stream_init(&s);
	size_t n1 = base64_stream_decode(&s, (const char *)data, size, one);
	size_t step = size ? (size_t)data[0] % 7 + 1 : 1, n2 = 0;
	base64_stream_init(&s);
	for (size_t i = 0; i < size; i += step)
		n2 += base64_stream_decode(&s, (const char *)data + i, size - i < step ? size - i : step,
					   two + n2);
	if (n1 > size / 4 * 3 + 3 || n1 != n2 || memcmp(one, two, n1) != 0)
		abort();
	if (base64_decode((const char *)data, size, out, cap, &n) && (n != n1 || memcmp(out, one, n)))
		abort();
	free(one);
	free(two);
	free(out);
	free(back);
	return 0;
}
