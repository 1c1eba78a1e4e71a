/* libFuzzer target for the queue control arguments (engine/queue_ctl.c):
 * whatever an operator types after hold, show queue... The first byte
 * picks the command, the rest is the line. Anything accepted must match
 * and print without harm, and its filter written back (the admin log
 * line's text) must parse to the same filter. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue_ctl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum qctl_op op = (enum qctl_op)(data[0] % (QCTL_RETRY + 1));
	char *args = malloc(size);
	if (!args)
		return 0;
	memcpy(args, data + 1, size - 1);
	args[size - 1] = '\0';
	struct qctl_cmd c;
	char err[256];
	if (qctl_parse(op, args, &c, err, sizeof(err)) == 0) {
		if (c.limit < 1 || c.limit > QCTL_MAX_LIMIT || c.offset > QCTL_MAX_OFFSET)
			abort();
		struct qctl_rview r[2] = {
			{.addr = "bob@far.example", .state = QCTL_R_PENDING, .status = "4.4.1",
			 .reply = "451 4.4.1 later"},
			{.addr = "Postmaster", .state = QCTL_R_DELIVERED, .status = ""},
		};
		struct qctl_view v = {.id = 0x32D8A44F7E000000ull, .arrival = 1700000000,
				      .size = 10, .from = "", .client = "10.0.0.1",
				      .connector = "Relay", .state = QCTL_HELD,
				      .held_reason = "rule", .nrcpt = 2, .pending = 1, .r = r};
		bool m = qctl_match(&c.f, &v);
		FILE *f = fopen("/dev/null", "w");
		if (f) {
			qctl_write_row(f, &v, c.json, 1700000100);
			fclose(f);
		}
		if (op != QCTL_SHOW && op != QCTL_DESTINATIONS) {
			char text[1200];
			qctl_filter_text(&c, text, sizeof(text));
			struct qctl_cmd d;
			/* values with spaces cannot be typed: the text is whole */
			if (qctl_parse(op, text, &d, err, sizeof(err)) != 0 ||
			    memcmp(&c.f, &d.f, sizeof(c.f)) != 0 || qctl_match(&d.f, &v) != m)
				abort();
		}
	}
	free(args);
	return 0;
}
