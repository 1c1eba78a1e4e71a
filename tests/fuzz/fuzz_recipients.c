/* libFuzzer target for the recipients_file parser (engine/recipients.c),
 * which reads an operator's export at every reload. Whatever it accepts
 * must answer lookups consistently: every listed address is known under
 * any case, and the set never claims more entries than lines. */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "recipients.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256];
	struct recipient_set *s = recipients_parse((const char *)data, size, err, sizeof(err));
	if (!s)
		return 0;
	size_t lines = 1;
	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	if (recipients_count(s) > lines)
		abort();
	/* Every accepted line, upper-cased, must be found again. */
	const char *p = (const char *)data, *end = p + size;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *e = nl ? nl : end;
		const char *a = p, *b = e;
		while (a < b && (*a == ' ' || *a == '\t'))
			a++;
		while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\r'))
			b--;
		const char *at = a < b && *a != '#' ? memrchr(a, '@', (size_t)(b - a)) : NULL;
		if (at && at - a <= 64 && b - at <= 256) {
			char up[330];
			size_t n = (size_t)(b - a);
			for (size_t i = 0; i < n; i++)
				up[i] = (char)toupper((unsigned char)a[i]);
			size_t ll = (size_t)(at - a);
			bool wild = ll == 1 && a[0] == '*';
			if (!wild && !recipients_known(s, up, ll, up + ll + 1, n - ll - 1))
				abort();
			if (wild && !recipients_known(s, "anyone", 6, up + 2, n - 2))
				abort();
		}
		p = nl ? nl + 1 : end;
	}
	recipients_free(s);
	return 0;
}
