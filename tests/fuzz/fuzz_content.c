/* libFuzzer target for engine/content.c: a message (first byte: piece size
 * and stuffing) through the rules' scan whole and in pieces must give the
 * same hits and never fail; the scratch is shared by every input, as a
 * worker's is. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "content.h"
#include "smtp_server.h"

static struct content_rules rules;
static struct content_worker worker;

static const struct {
	const char *pattern, *field;
	enum content_where where;
} defs[] = {
	{"TVqQAAMAAAAEAAAA", NULL, CONTENT_BODY},
	{"^MZ", NULL, CONTENT_BODY},
	{"\\b4[0-9]{12}(?:[0-9]{3})?\\b", NULL, CONTENT_BODY},
	{"(?i)confidential", "Subject", CONTENT_HEADER},
	{"@legal\\.example$", "To", CONTENT_HEADER},
	{"^X-[A-Z]", NULL, CONTENT_HEADERS},
	{"^bad@", NULL, CONTENT_SENDER},
	{"^audit@", NULL, CONTENT_RECIPIENT},
};
#define NDEFS (sizeof(defs) / sizeof(defs[0]))

static void setup(void)
{
	rules.n = NDEFS;
	rules.rule = calloc(NDEFS, sizeof(*rules.rule));
	for (unsigned i = 0; i < NDEFS; i++) {
		rules.rule[i].name = strdup("r");
		rules.rule[i].pattern = strdup(defs[i].pattern);
		rules.rule[i].field = defs[i].field ? strdup(defs[i].field) : NULL;
		rules.rule[i].where = defs[i].where;
		rules.rule[i].action = (enum content_action)(i % CONTENT_ACTION_COUNT);
	}
	unsigned bad;
	char msg[256];
	if (!content_compile(&rules, &bad, msg, sizeof(msg)))
		abort();
	rules.gen = 1;
}

static uint32_t scan(const uint8_t *d, size_t n, size_t step, bool stuffed)
{
	struct content_scan *s = content_scan_begin(&rules, &worker);
	if (!s)
		abort();
	for (size_t i = 0; i < n; i += step)
		content_scan_data(s, (const char *)d + i, n - i < step ? n - i : step, stuffed);
	struct smtp_rcpt rc[2] = {{.addr = (char *)"audit@x"}, {.addr = (char *)"y@z"}};
	struct content_verdict v;
	content_scan_end(s, "bad@corp", rc, 2, &v, NULL, NULL);
	if (v.failed)
		abort();
	uint32_t hits = 0;
	for (unsigned i = 0; i < NDEFS; i++)
		hits |= (uint32_t)content_scan_hit(s, i) << i;
	content_scan_free(s);
	return hits;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!rules.db)
		setup();
	if (size < 1)
		return 0;
	bool stuffed = data[0] & 1;
	size_t step = (size_t)(data[0] >> 1) + 1;
	uint32_t whole = scan(data + 1, size - 1, size, stuffed);
	if (scan(data + 1, size - 1, step, stuffed) != whole)
		abort();
	/* Sender and recipient rules always hit here. */
	if (!(whole & (1u << 6)) || !(whole & (1u << 7)))
		abort();
	return 0;
}
