/* logfmt lines to stderr (see log.h). */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static enum log_level max_level = LOG_INFO;
static int log_fd = STDERR_FILENO;

int log_open_file(const char *path)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	if (log_fd == STDERR_FILENO) {
		log_fd = fd;
		return 0;
	}
	/* Swap the file under the same descriptor: writers never see a gap. */
	int ret = dup3(fd, log_fd, O_CLOEXEC) < 0 ? -errno : 0;
	close(fd);
	return ret;
}

/* Worker threads collect their lines and write them once per loop turn,
 * before the ring submits what those lines describe. */
#define BATCH_CAP 16384
static __thread char batch[BATCH_CAP];
static __thread size_t batch_len;
static __thread bool batching;

void log_batch_begin(void)
{
	batching = true;
	batch_len = 0;
}

void log_batch_flush(void)
{
	if (batch_len) {
		ssize_t w = write(log_fd, batch, batch_len);
		(void)w;
		batch_len = 0;
	}
}

void log_set_level(enum log_level l)
{
	max_level = l;
}

int log_enabled(enum log_level l)
{
	return l <= max_level;
}

void log_msg(enum log_level l, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};
	if (l > max_level)
		return;
	char line[2048];
	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	int n = snprintf(line, sizeof(line),
			 "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
			 tm.tm_min, tm.tm_sec, (long)tv.tv_usec / 1000, names[l]);
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	line[len++] = '\n';
	if (batching) {
		if (batch_len + len > BATCH_CAP)
			log_batch_flush();
		memcpy(batch + batch_len, line, len);
		batch_len += len;
		if (l <= LOG_WARN)
			log_batch_flush();
		return;
	}
	ssize_t w = write(log_fd, line, len);
	(void)w;
}

const char *log_quote(char *dst, unsigned cap, const char *s)
{
	bool plain = *s != '\0';
	for (const char *p = s; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 127)
			plain = false;
	}
	unsigned n = 0;
	if (plain) {
		snprintf(dst, cap, "%s", s);
		return dst;
	}
	dst[n++] = '"';
	for (const char *p = s; *p && n + 5 < cap; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '"' || c == '\\') {
			dst[n++] = '\\';
			dst[n++] = (char)c;
		} else if (c < ' ' || c == 127) {
			n += (unsigned)snprintf(dst + n, cap - n, "\\x%02x", c);
		} else {
			dst[n++] = (char)c;
		}
	}
	dst[n++] = '"';
	dst[n] = '\0';
	return dst;
}

void json_write_string(FILE *out, const char *s)
{
	fputc('"', out);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(out, "\\%c", c);
		else if (c < 0x20)
			fprintf(out, "\\u%04x", c);
		else
			fputc(c, out);
	}
	fputc('"', out);
}
