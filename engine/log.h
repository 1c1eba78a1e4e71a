/* Structured log lines (logfmt) to stderr: one write() per line so lines
 * from different workers never interleave. Holds no state beyond the level
 * chosen at startup. */
#ifndef POSTERN_LOG_H
#define POSTERN_LOG_H

#include <stdio.h>

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_set_level(enum log_level l);

/* Sends log lines to path (appended) instead of stderr. Called again, it
 * reopens the file: what logrotate needs after moving it. 0 or -errno. */
int log_open_file(const char *path);
int log_enabled(enum log_level l);

/* fmt holds the logfmt fields after ts= and level=, e.g.
 * log_msg(LOG_INFO, "event=connect client=%s", ip); a string from outside
 * goes in through log_quote(). As a last defence a control or 8-bit byte
 * that reaches the line anyway becomes '?', and a line too long for the
 * buffer loses its last fields whole and ends in truncated=yes. */
void log_msg(enum log_level l, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* From log_batch_begin() on, the calling thread's lines are kept and
 * written together by log_batch_flush() (errors and warnings at once). */
void log_batch_begin(void);
void log_batch_flush(void);

/* Copies s into dst as a logfmt value: bare when it is only printable ASCII
 * other than '"', '\\' and '=', else quoted, with '"' and '\\' escaped by a
 * backslash and every control or 8-bit byte as \xHH. Whatever s holds, the
 * value is one field on one line; an empty s is "". A value longer than cap
 * allows is cut (never inside an escape) and still closed. cap >= 3. Every
 * string a client or a next hop controls, and every name from the
 * configuration, goes into a line through this. */
const char *log_quote(char *dst, unsigned cap, const char *s);
/* The same, quoted even when it could be bare: for fields that have
 * always been written "..." (send_connector= of some lines). */
const char *log_quote_always(char *dst, unsigned cap, const char *s);

/* Room for the quoted form of any string of n bytes, NUL included. */
#define LOG_QUOTE_CAP(n) (4 * (n) + 3)

/* s as a JSON string literal, escaped. */
void json_write_string(FILE *out, const char *s);

#endif
