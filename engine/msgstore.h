/* Message store, interim form: one file per message in spool_dir, written
 * as <id>.tmp, made durable by fdatasync (through the ring, by the caller),
 * then renamed to <id>.msg and covered by a directory fsync. A .msg file is
 * therefore always complete; leftover .tmp files are removed at start.
 * The group-committed log spool (DESIGN A.1) replaces this module. */
#ifndef POSTERN_MSGSTORE_H
#define POSTERN_MSGSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "smtp_server.h"

struct msgstore {
	int dirfd;
	int lockfd;
};

struct msgfile {
	int fd;              /* -1 when no message is open */
	int err;             /* first write error (errno), 0 if none */
	char id[32];
	uint64_t size;       /* bytes written or buffered */
	char *buf;
	size_t len;
	size_t cap;
};

/* Creates the directory if needed, takes its lock (one postern per spool),
 * removes incomplete messages. Returns 0 or -1 with err filled. */
int msgstore_open(struct msgstore *ms, const char *dir, char *err, size_t errlen);
void msgstore_close(struct msgstore *ms);

void msgfile_init(struct msgfile *f);
int msgfile_create(const struct msgstore *ms, struct msgfile *f, const char *id);

/* Writes the envelope block that precedes the message bytes. */
void msgfile_envelope(struct msgfile *f, const struct smtp_envelope *env,
		      const char *connector, const char *client,
		      const char *helo, int64_t arrival);
void msgfile_append(struct msgfile *f, const void *p, size_t n);
/* Writes out buffered bytes; returns 0 or the first error (errno). */
int msgfile_flush(struct msgfile *f);
/* After the data is durable: renames .tmp to .msg and closes the file. */
int msgfile_publish(const struct msgstore *ms, struct msgfile *f);
/* Closes and removes an unfinished message. */
void msgfile_discard(const struct msgstore *ms, struct msgfile *f);

/* A queued message as `show queue` lists it (from the envelope block). */
struct queued_msg {
	char id[32];
	int64_t arrival;
	uint64_t size;          /* bytes of the file */
	char from[300];
	char connector[80];
	char client[64];
	const char *rcpt[256];  /* first 256 recipients */
	unsigned nrcpt;         /* all recipients */
};

/* Calls fn for every complete message. Returns the count, or -1. */
long msgstore_scan(const struct msgstore *ms,
		   void (*fn)(void *arg, const struct queued_msg *m), void *arg);
/* Count and total bytes of complete messages. */
void msgstore_usage(const struct msgstore *ms, long *messages, uint64_t *bytes);

#endif
