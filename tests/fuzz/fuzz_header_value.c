/* libFuzzer target for proto/header_value.c: any bytes, fed whole and in
 * two pieces split where the first input byte says, give the same answer,
 * and the value stays within its cap. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "header_value.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t split = data[0] % size;
	const char *p = (const char *)data + 1;
	size_t n = size - 1;
	if (split > n)
		split = n;
	struct header_value a, b;
	header_value_init(&a, "Message-ID");
	header_value_init(&b, "Message-ID");
	bool da = header_value_feed(&a, p, n);
	bool db = header_value_feed(&b, p, split);
	if (!db)
		db = header_value_feed(&b, p + split, n - split);
	char va[HEADER_VALUE_MAX + 1], vb[HEADER_VALUE_MAX + 1];
	bool fa = header_value_get(&a, va, sizeof(va));
	bool fb = header_value_get(&b, vb, sizeof(vb));
	if (da != db || fa != fb || a.len > HEADER_VALUE_MAX)
		abort();
	if (fa && (strlen(va) > HEADER_VALUE_MAX || strcmp(va, vb) != 0))
		abort();
	return 0;
}
