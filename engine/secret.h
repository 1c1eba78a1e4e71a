/* A credential read from a file (a send connector's password_file or
 * token_file): the content without one trailing line end, cached, and read
 * again once stat() says the file is another (an external refresher
 * rewrites tokens). Owns the bytes and wipes them when they go; decides
 * nothing about where the secret is sent. */
#ifndef POSTERN_SECRET_H
#define POSTERN_SECRET_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#define SECRET_PASSWORD_MAX 1024   /* a longer password file is the wrong file */
#define SECRET_TOKEN_MAX 16384     /* OAuth bearer tokens run to a few KiB */

struct secret {
	char *path;                 /* owned */
	size_t max;                 /* bytes the file may hold */
	char *value;                /* NUL-terminated; NULL until read */
	size_t len;
	/* the file the value came from */
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtim, ctim;
};

/* false: out of memory. */
bool secret_init(struct secret *s, const char *path, size_t max);
void secret_free(struct secret *s);

/* Brings the value up to date: one stat(), and a read when the file is not
 * the one read last (inode, size, mtime or ctime differ). 0: s->value is
 * current; *changed (may be NULL) says whether it was read now. -1: err
 * holds "PATH: reason" and the old value is gone (a file that cannot be
 * read is not silently replaced by what it used to say). */
int secret_refresh(struct secret *s, bool *changed, char *err, size_t errlen);

/* Would secret_refresh read the file? (Cheap: one stat().) */
bool secret_stale(const struct secret *s);

/* Overwrites n bytes so that the compiler cannot drop it. */
void secret_wipe(void *p, size_t n);

/* A wiped copy's counterpart: frees a NUL-terminated copy after wiping it. */
void secret_free_copy(char *p);

#endif
