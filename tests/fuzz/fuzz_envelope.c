/* libFuzzer target for the stored envelope reader (engine/envelope.c),
 * which recovery runs on whatever a segment holds. Anything it accepts must
 * survive a round trip: written back with envelope_write() and read again,
 * the sender, recipients, DSN parameters and a held: reason come out the
 * same. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

static void same(const char *a, const char *b)
{
	if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *p = malloc(size ? size : 1);
	if (!p)
		return 0;
	memcpy(p, data, size);
	struct envelope_full e;
	int r = envelope_read(p, size, &e);
	free(p);
	if (r == 0) {
		char *out = NULL;
		size_t len = 0;
		FILE *f = open_memstream(&out, &len);
		if (f) {
			envelope_write(f, e.id, &e.env, e.connector, e.client, "", e.arrival);
			fclose(f);
			struct envelope_full g;
			if (envelope_read(out, len, &g) != 0)
				abort();
			same(e.env.from, g.env.from);
			same(e.env.held, g.env.held);
			if (e.env.nrcpt != g.env.nrcpt || e.env.body != g.env.body ||
			    e.env.ret != g.env.ret || e.env.smtputf8 != g.env.smtputf8 ||
			    e.env.anonymous != g.env.anonymous || e.env.dotless != g.env.dotless)
				abort();
			for (unsigned i = 0; i < e.env.nrcpt; i++) {
				same(e.env.rcpt[i].addr, g.env.rcpt[i].addr);
				if (e.env.rcpt[i].notify != g.env.rcpt[i].notify)
					abort();
			}
			envelope_full_free(&g);
		}
		free(out);
	}
	envelope_full_free(&e);
	return 0;
}
