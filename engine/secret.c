/* Credential files (see secret.h). The file is opened once per change and
 * identified by fstat() on that descriptor, so a rewrite racing the read
 * is noticed by the next stat(). Small and synchronous on purpose: a read
 * happens only when the file changed, at a connection's start. */
#include "secret.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void secret_wipe(void *p, size_t n)
{
	if (p && n)
		explicit_bzero(p, n);
}

void secret_free_copy(char *p)
{
	if (!p)
		return;
	secret_wipe(p, strlen(p));
	free(p);
}

static void drop_value(struct secret *s)
{
	if (s->value) {
		secret_wipe(s->value, s->len);
		free(s->value);
	}
	s->value = NULL;
	s->len = 0;
	s->ino = 0;
	s->dev = 0;
	s->size = -1;
}

bool secret_init(struct secret *s, const char *path, size_t max)
{
	memset(s, 0, sizeof(*s));
	s->size = -1;
	s->max = max;
	s->path = strdup(path);
	return s->path != NULL;
}

void secret_free(struct secret *s)
{
	drop_value(s);
	free(s->path);
	s->path = NULL;
}

static bool same_time(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

static bool same_file(const struct secret *s, const struct stat *st)
{
	return s->value && s->dev == st->st_dev && s->ino == st->st_ino &&
	       s->size == st->st_size && same_time(&s->mtim, &st->st_mtim) &&
	       same_time(&s->ctim, &st->st_ctim);
}

bool secret_stale(const struct secret *s)
{
	struct stat st;
	return stat(s->path, &st) != 0 || !same_file(s, &st);
}

static int fail(struct secret *s, char *err, size_t errlen, const char *why)
{
	drop_value(s);
	snprintf(err, errlen, "%s: %s", s->path, why);
	return -1;
}

/* The whole file into a fresh buffer, at most max bytes (one more is
 * asked for, to tell a file that is too long). */
static int read_file(struct secret *s, int fd, char **out, size_t *outlen, char *err,
		     size_t errlen)
{
	char *buf = malloc(s->max + 2);
	if (!buf)
		return fail(s, err, errlen, strerror(ENOMEM));
	size_t n = 0;
	while (n <= s->max) {
		ssize_t r = read(fd, buf + n, s->max + 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			secret_wipe(buf, n);
			free(buf);
			return fail(s, err, errlen, strerror(e));
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (n > s->max) {
		secret_wipe(buf, n);
		free(buf);
		char why[64];
		snprintf(why, sizeof(why), "larger than %zu bytes", s->max);
		return fail(s, err, errlen, why);
	}
	buf[n] = '\0';
	*out = buf;
	*outlen = n;
	return 0;
}

int secret_refresh(struct secret *s, bool *changed, char *err, size_t errlen)
{
	if (changed)
		*changed = false;
	struct stat st;
	if (stat(s->path, &st) != 0)
		return fail(s, err, errlen, strerror(errno));
	if (same_file(s, &st))
		return 0;
	int fd = open(s->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return fail(s, err, errlen, strerror(errno));
	if (fstat(fd, &st) != 0) {
		int e = errno;
		close(fd);
		return fail(s, err, errlen, strerror(e));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return fail(s, err, errlen, "not a regular file");
	}
	char *buf = NULL;
	size_t n = 0;
	int rc = read_file(s, fd, &buf, &n, err, errlen);
	close(fd);
	if (rc < 0)
		return rc;
	/* One line end is the editor's or echo's, not the secret's. */
	if (n && buf[n - 1] == '\n') {
		n--;
		if (n && buf[n - 1] == '\r')
			n--;
	}
	const char *why = n == 0 ? "empty" : memchr(buf, '\0', n) ? "contains a NUL byte" : NULL;
	if (why) {
		secret_wipe(buf, n + 2);
		free(buf);
		return fail(s, err, errlen, why);
	}
	secret_wipe(buf + n, 2); /* the line end, when there was one */
	buf[n] = '\0';
	drop_value(s);
	s->value = buf;
	s->len = n;
	s->dev = st.st_dev;
	s->ino = st.st_ino;
	s->size = st.st_size;
	s->mtim = st.st_mtim;
	s->ctim = st.st_ctim;
	if (changed)
		*changed = true;
	return 0;
}
