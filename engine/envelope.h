/* The envelope block stored with every message: sender, recipients with
 * their DSN parameters, connector, client, arrival, and "held: <reason>"
 * for a message that starts held (a content rule's hold). Text, CRLF lines,
 * "POSTERN/1" first and an empty line last, so it reads like a header. */
#ifndef POSTERN_ENVELOPE_H
#define POSTERN_ENVELOPE_H

#include <stdint.h>
#include <stdio.h>

#include "smtp_server.h"

void envelope_write(FILE *out, const char *id, const struct smtp_envelope *env,
		    const char *connector, const char *client, const char *helo,
		    int64_t arrival);

/* A stored envelope, read back (recovery, show queue). */
struct envelope_full {
	char id[32];
	int64_t arrival;
	char connector[80];
	char client[64];
	struct smtp_envelope env;  /* strings malloc'd: envelope_full_free() */
};

/* 0, or -1 when it is not a whole envelope block (e is then still freed
 * by envelope_full_free). */
int envelope_read(const char *p, size_t len, struct envelope_full *e);
void envelope_full_free(struct envelope_full *e);

#endif
