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
 * log_msg(LOG_INFO, "event=connect client=%s", ip). */
void log_msg(enum log_level l, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* From log_batch_begin() on, the calling thread's lines are kept and
 * written together by log_batch_flush() (errors and warnings at once). */
void log_batch_begin(void);
void log_batch_flush(void);

/* Copies s into dst as a logfmt value: quoted when it holds spaces, quotes,
 * '=' or control characters, with those escaped. */
const char *log_quote(char *dst, unsigned cap, const char *s);

/* s as a JSON string literal, escaped. */
void json_write_string(FILE *out, const char *s);

#endif
