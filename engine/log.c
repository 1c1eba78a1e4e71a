/* logfmt lines to stderr (see log.h). */
#include "log.h"

#include <assert.h>
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

/* Where the last whole field before len ends, for a line cut short: at a
 * space outside quotes (inside them a backslash escapes the next byte).
 * line[from] is the space before the first field. */
static size_t last_field_end(const char *line, size_t from, size_t len)
{
	size_t end = from;
	bool quoted = false;
	for (size_t i = from; i < len; i++) {
		if (quoted && line[i] == '\\')
			i++;
		else if (line[i] == '"')
			quoted = !quoted;
		else if (!quoted && line[i] == ' ')
			end = i;
	}
	return end;
}

void log_msg(enum log_level l, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warn", "info", "debug"};
	static const char cut[] = " truncated=yes";
	if (l > max_level)
		return;
	/* The date and time to the second, formatted once a second per
	 * thread (a worker logs two lines a message). */
	static __thread time_t sec = -1;
	static __thread char stamp[40];
	static __thread int stamp_len;
	char line[4096];
	struct timeval tv;
	gettimeofday(&tv, NULL);
	if (tv.tv_sec != sec) {
		struct tm tm;
		gmtime_r(&tv.tv_sec, &tm);
		stamp_len = snprintf(stamp, sizeof(stamp), "ts=%04d-%02d-%02dT%02d:%02d:%02d.",
				     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
				     tm.tm_min, tm.tm_sec);
		sec = tv.tv_sec;
	}
	memcpy(line, stamp, (size_t)stamp_len);
	int n = stamp_len;
	unsigned ms = (unsigned)(tv.tv_usec / 1000);
	line[n++] = (char)('0' + ms / 100);
	line[n++] = (char)('0' + ms / 10 % 10);
	line[n++] = (char)('0' + ms % 10);
	memcpy(line + n, "Z level=", 8);
	n += 8;
	size_t nl = strlen(names[l]);
	memcpy(line + n, names[l], nl);
	n += (int)nl;
	line[n++] = ' ';
	/* Room kept for the marker and the newline. */
	size_t room = sizeof(line) - (size_t)n - sizeof(cut) - 1;
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, room, fmt, ap);
	va_end(ap);
	size_t len = (size_t)n - 1; /* nothing formatted: no trailing space */
	if (m > 0 && (size_t)m < room) {
		len = (size_t)n + (size_t)m;
	} else if (m > 0) {
		len = last_field_end(line, (size_t)n - 1, (size_t)n + room - 1);
		memcpy(line + len, cut, sizeof(cut) - 1);
		len += sizeof(cut) - 1;
	}
	for (size_t i = (size_t)n; i < len; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c < ' ' || c >= 127)
			line[i] = '?';
	}
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

static bool plain_byte(unsigned char c)
{
	return c > ' ' && c < 127 && c != '"' && c != '=' && c != '\\';
}

static const char *quote(char *dst, unsigned cap, const char *s, bool always)
{
	assert(cap >= 3);
	bool plain = *s != '\0' && !always;
	for (const char *p = s; *p && plain; p++)
		plain = plain_byte((unsigned char)*p);
	if (plain) {
		snprintf(dst, cap, "%s", s);
		return dst;
	}
	static const char hex[] = "0123456789abcdef";
	unsigned n = 0;
	dst[n++] = '"';
	for (const char *p = s; *p; p++) {
		unsigned char c = (unsigned char)*p;
		bool esc = c < ' ' || c >= 127;
		unsigned need = esc ? 4 : c == '"' || c == '\\' ? 2 : 1;
		if (n + need + 2 > cap) /* and the closing quote, and the NUL */
			break;
		if (esc) {
			dst[n++] = '\\';
			dst[n++] = 'x';
			dst[n++] = hex[c >> 4];
			dst[n++] = hex[c & 15];
		} else {
			if (need == 2)
				dst[n++] = '\\';
			dst[n++] = (char)c;
		}
	}
	dst[n++] = '"';
	dst[n] = '\0';
	return dst;
}

const char *log_quote(char *dst, unsigned cap, const char *s)
{
	return quote(dst, cap, s, false);
}

const char *log_quote_always(char *dst, unsigned cap, const char *s)
{
	return quote(dst, cap, s, true);
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
