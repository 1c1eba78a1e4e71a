/* Reading back Postern's own log lines (logfmt, as engine/log.c writes
 * them): fields key=value with bare or "quoted" values (\" \\ and \xHH
 * escapes), and the times `track` takes (the log's ts= form, ISO 8601
 * dates and times, and relative ages such as 90m). Pure: spans into the
 * caller's line, no allocation. */
#ifndef POSTERN_LOGFMT_H
#define POSTERN_LOGFMT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct logfmt_field {
	const char *key;
	size_t klen;
	const char *val;      /* raw: inside the quotes when quoted */
	size_t vlen;
	bool quoted;
};

/* Splits one line (no newline) into at most max fields. Returns how many,
 * or -1 when the line is not logfmt (*err_at: the offending byte). A line
 * with more fields than max keeps the first max. */
int logfmt_parse(const char *line, size_t len, struct logfmt_field *f, unsigned max,
		 size_t *err_at);

/* The value with escapes undone, into dst (NUL terminated, cut to cap-1).
 * Returns its length (as written). */
size_t logfmt_value(const struct logfmt_field *f, char *dst, size_t cap);

/* The field named key, or NULL. */
const struct logfmt_field *logfmt_find(const struct logfmt_field *f, int n, const char *key);

/* A point in time, in ms since the epoch (UTC):
 *   2026-12-02T13:54:19.123Z, 2026-12-02T13:54:19Z, 2026-12-02T13:54:19,
 *   2026-12-02 13:54, 2026-12-02T13:54:19+01:00, 2026-12-02 (midnight);
 *   an age before now_ms: 30s, 15m, 1h, 2d, 1w (a number and a unit);
 *   now. false when s is none of these. */
bool logfmt_time(const char *s, size_t len, int64_t now_ms, int64_t *out_ms);

/* The ts= value at the start of a log line ("ts=2026-...Z "), fast. */
bool logfmt_line_time(const char *line, size_t len, int64_t *out_ms);

#endif
