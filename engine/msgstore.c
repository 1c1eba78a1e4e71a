/* Per-message file store (see msgstore.h). Writes go to the page cache
 * synchronously; the fdatasync that makes them durable is the caller's,
 * submitted through the ring so the worker does not wait on the disk. */
#include "msgstore.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define MSGFILE_BUF (64 * 1024)

static int mkdir_p(const char *dir)
{
	char path[4096];
	size_t n = strlen(dir);
	if (n == 0 || n >= sizeof(path))
		return -ENAMETOOLONG;
	memcpy(path, dir, n + 1);
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0750) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(path, 0750) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static bool has_suffix(const char *name, const char *suffix)
{
	size_t n = strlen(name), s = strlen(suffix);
	return n > s && strcmp(name + n - s, suffix) == 0;
}

int msgstore_open(struct msgstore *ms, const char *dir, char *err, size_t errlen)
{
	ms->dirfd = ms->lockfd = -1;
	int ret = mkdir_p(dir);
	if (ret < 0) {
		snprintf(err, errlen, "spool_dir %s: %s", dir, strerror(-ret));
		return -1;
	}
	ms->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (ms->dirfd < 0) {
		snprintf(err, errlen, "spool_dir %s: %s", dir, strerror(errno));
		return -1;
	}
	ms->lockfd = openat(ms->dirfd, "postern.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (ms->lockfd < 0 || flock(ms->lockfd, LOCK_EX | LOCK_NB) < 0) {
		snprintf(err, errlen, "spool_dir %s: %s", dir,
			 errno == EWOULDBLOCK ? "locked by another postern" : strerror(errno));
		msgstore_close(ms);
		return -1;
	}
	int dfd = dup(ms->dirfd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		snprintf(err, errlen, "spool_dir %s: %s", dir, strerror(errno));
		msgstore_close(ms);
		return -1;
	}
	struct dirent *e;
	while ((e = readdir(d)))
		if (has_suffix(e->d_name, ".tmp"))
			unlinkat(ms->dirfd, e->d_name, 0);
	closedir(d);
	return 0;
}

void msgstore_close(struct msgstore *ms)
{
	if (ms->lockfd >= 0)
		close(ms->lockfd);
	if (ms->dirfd >= 0)
		close(ms->dirfd);
	ms->dirfd = ms->lockfd = -1;
}

void msgfile_init(struct msgfile *f)
{
	memset(f, 0, sizeof(*f));
	f->fd = -1;
}

int msgfile_create(const struct msgstore *ms, struct msgfile *f, const char *id)
{
	char name[48];
	msgfile_init(f);
	snprintf(f->id, sizeof(f->id), "%s", id);
	snprintf(name, sizeof(name), "%s.tmp", id);
	f->fd = openat(ms->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (f->fd < 0) {
		f->err = errno;
		return -1;
	}
	f->buf = malloc(MSGFILE_BUF);
	if (!f->buf) {
		f->err = ENOMEM;
		return -1;
	}
	f->cap = MSGFILE_BUF;
	return 0;
}

static void write_all(struct msgfile *f, const char *p, size_t n)
{
	while (n && !f->err) {
		ssize_t w = write(f->fd, p, n);
		if (w < 0) {
			if (errno != EINTR)
				f->err = errno;
			continue;
		}
		p += w;
		n -= (size_t)w;
	}
}

void msgfile_append(struct msgfile *f, const void *p, size_t n)
{
	if (f->err || f->fd < 0)
		return;
	f->size += n;
	if (f->len + n > f->cap) {
		write_all(f, f->buf, f->len);
		f->len = 0;
		if (n >= f->cap) {
			write_all(f, p, n);
			return;
		}
	}
	memcpy(f->buf + f->len, p, n);
	f->len += n;
}

/* Envelope values come from the parser (no CR/LF possible) or from the
 * configuration; still, never let one break the line structure. */
static void append_field(struct msgfile *f, const char *s)
{
	for (; *s; s++) {
		char c = (*s == '\r' || *s == '\n') ? ' ' : *s;
		msgfile_append(f, &c, 1);
	}
}

static void append_kv(struct msgfile *f, const char *k, const char *v)
{
	msgfile_append(f, k, strlen(k));
	append_field(f, v);
	msgfile_append(f, "\r\n", 2);
}

void msgfile_envelope(struct msgfile *f, const struct smtp_envelope *env,
		      const char *connector, const char *client,
		      const char *helo, int64_t arrival)
{
	char num[32];
	static const char *const body[] = {"", " BODY=7BIT", " BODY=8BITMIME"};
	static const char *const ret[] = {"", " RET=FULL", " RET=HDRS"};
	msgfile_append(f, "POSTERN/1\r\n", 11);
	append_kv(f, "id: ", f->id);
	snprintf(num, sizeof(num), "%lld", (long long)arrival);
	append_kv(f, "arrival: ", num);
	append_kv(f, "connector: ", connector);
	append_kv(f, "client: ", client);
	append_kv(f, "helo: ", helo);
	msgfile_append(f, "from: <", 7);
	append_field(f, env->from);
	msgfile_append(f, ">", 1);
	append_field(f, body[env->body]);
	append_field(f, ret[env->ret]);
	if (env->envid) {
		msgfile_append(f, " ENVID=", 7);
		append_field(f, env->envid);
	}
	if (env->smtputf8)
		msgfile_append(f, " SMTPUTF8", 9);
	msgfile_append(f, "\r\n", 2);
	for (unsigned i = 0; i < env->nrcpt; i++) {
		const struct smtp_rcpt *r = &env->rcpt[i];
		msgfile_append(f, "rcpt: <", 7);
		append_field(f, r->addr);
		msgfile_append(f, ">", 1);
		if (r->notify) {
			const char *sep = " NOTIFY=";
			static const char *const nn[] = {"NEVER", "SUCCESS", "FAILURE", "DELAY"};
			for (int b = 0; b < 4; b++)
				if (r->notify & (1u << b)) {
					append_field(f, sep);
					append_field(f, nn[b]);
					sep = ",";
				}
		}
		if (r->orcpt) {
			msgfile_append(f, " ORCPT=", 7);
			append_field(f, r->orcpt);
		}
		msgfile_append(f, "\r\n", 2);
	}
	msgfile_append(f, "\r\n", 2);
}

int msgfile_flush(struct msgfile *f)
{
	if (!f->err && f->len)
		write_all(f, f->buf, f->len);
	f->len = 0;
	return f->err;
}

static void release(struct msgfile *f)
{
	if (f->fd >= 0)
		close(f->fd);
	free(f->buf);
	f->buf = NULL;
	f->fd = -1;
}

int msgfile_publish(const struct msgstore *ms, struct msgfile *f)
{
	char from[48], to[48];
	snprintf(from, sizeof(from), "%s.tmp", f->id);
	snprintf(to, sizeof(to), "%s.msg", f->id);
	int ret = renameat(ms->dirfd, from, ms->dirfd, to) < 0 ? errno : 0;
	release(f);
	if (ret)
		unlinkat(ms->dirfd, from, 0);
	return ret;
}

void msgfile_discard(const struct msgstore *ms, struct msgfile *f)
{
	char name[48];
	if (f->fd < 0 && !f->buf)
		return;
	snprintf(name, sizeof(name), "%s.tmp", f->id);
	release(f);
	unlinkat(ms->dirfd, name, 0);
}

/* Reads the envelope block of one message (bounded: 1 MiB). */
static bool read_envelope(int dirfd, const char *name, struct queued_msg *m,
			  char **buf_out)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		close(fd);
		return false;
	}
	m->size = (uint64_t)st.st_size;
	size_t cap = st.st_size < (1 << 20) ? (size_t)st.st_size : (1 << 20);
	char *buf = malloc(cap + 1);
	ssize_t n = buf ? pread(fd, buf, cap, 0) : -1;
	close(fd);
	if (n <= 0) {
		free(buf);
		return false;
	}
	buf[n] = '\0';
	char *end = strstr(buf, "\r\n\r\n");
	if (!end || strncmp(buf, "POSTERN/1\r\n", 11) != 0) {
		free(buf);
		return false;
	}
	end[2] = '\0';
	for (char *line = buf; *line;) {
		char *eol = strstr(line, "\r\n");
		if (!eol)
			break;
		*eol = '\0';
		if (strncmp(line, "id: ", 4) == 0)
			snprintf(m->id, sizeof(m->id), "%s", line + 4);
		else if (strncmp(line, "arrival: ", 9) == 0)
			m->arrival = strtoll(line + 9, NULL, 10);
		else if (strncmp(line, "connector: ", 11) == 0)
			snprintf(m->connector, sizeof(m->connector), "%s", line + 11);
		else if (strncmp(line, "client: ", 8) == 0)
			snprintf(m->client, sizeof(m->client), "%s", line + 8);
		else if (strncmp(line, "from: ", 6) == 0) {
			char *sp = strchr(line + 6, ' ');
			if (sp)
				*sp = '\0';
			snprintf(m->from, sizeof(m->from), "%s", line + 6);
		} else if (strncmp(line, "rcpt: ", 6) == 0) {
			char *sp = strchr(line + 6, ' ');
			if (sp)
				*sp = '\0';
			if (m->nrcpt < sizeof(m->rcpt) / sizeof(m->rcpt[0]))
				m->rcpt[m->nrcpt] = line + 6;
			m->nrcpt++;
		}
		line = eol + 2;
	}
	*buf_out = buf;
	return true;
}

long msgstore_scan(const struct msgstore *ms,
		   void (*fn)(void *arg, const struct queued_msg *m), void *arg)
{
	int dfd = dup(ms->dirfd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		if (dfd >= 0)
			close(dfd);
		return -1;
	}
	rewinddir(d);
	long n = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!has_suffix(e->d_name, ".msg"))
			continue;
		struct queued_msg m;
		char *buf = NULL;
		memset(&m, 0, sizeof(m));
		if (!read_envelope(ms->dirfd, e->d_name, &m, &buf))
			continue; /* delivered or removed meanwhile */
		fn(arg, &m);
		free(buf);
		n++;
	}
	closedir(d);
	return n;
}

void msgstore_usage(const struct msgstore *ms, long *messages, uint64_t *bytes)
{
	*messages = 0;
	*bytes = 0;
	int dfd = dup(ms->dirfd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		if (dfd >= 0)
			close(dfd);
		return;
	}
	rewinddir(d);
	struct dirent *e;
	while ((e = readdir(d))) {
		struct stat st;
		if (has_suffix(e->d_name, ".msg") &&
		    fstatat(ms->dirfd, e->d_name, &st, 0) == 0) {
			(*messages)++;
			*bytes += (uint64_t)st.st_size;
		}
	}
	closedir(d);
}
