/* track (DESIGN B.11): the life of messages read back from the message log
 * (server.log_file and its rotations): received, each attempt, outcome.
 * Reads files only; never touches the queue or the spool. Bounded: at most
 * a number of messages, and a time budget after which it answers with what
 * it has (truncated). */
#ifndef POSTERN_TRACK_H
#define POSTERN_TRACK_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define TRACK_LIMIT_DEFAULT 100
#define TRACK_LIMIT_MAX 1000
#define TRACK_ROTATIONS_MAX 100  /* file.1 .. file.100 */

struct track_query {
	char id[32];
	char sender[520];        /* without <> */
	char rcpt[520];          /* without <>; "@domain" for a whole domain */
	char message_id[300];    /* without <> */
	bool has_id, has_sender, has_rcpt, has_message_id;
	int64_t since_ms, until_ms; /* INT64_MIN / INT64_MAX when not given */
	unsigned limit;
	bool json;
};

/* The words after "track": id=ID sender=S rcpt=R message_id=M since=TIME
 * until=TIME limit=N, json last. false with the reason in err. */
bool track_parse(const char *args, int64_t now_ms, struct track_query *q, char *err,
		 size_t cap);

/* Answers q from log_path and its rotated siblings (log_path.1, .2, ...:
 * compressed ones are listed as skipped, not read), in budget_ms at most.
 * Returns 0, or -1 after writing "error: ..." (log_path NULL: the log goes
 * to stderr). */
int track_run(const char *log_path, const struct track_query *q, uint64_t budget_ms,
	      FILE *out);

#endif
