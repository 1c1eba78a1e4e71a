/* postern-spool: reads a spool directory the way recovery does, without
 * locking it (safe while postern runs). For operators and tests:
 *   postern-spool DIR list     one line per queued message: id, bytes
 *   postern-spool DIR cat ID   envelope block and message, as stored
 *   postern-spool DIR stats    segments, messages, torn tails, partials
 *   postern-spool DIR dump     every message: "ID LENGTH\n" then that many bytes */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "spool.h"
#include "wctx.h"

struct cat_arg {
	uint64_t id;
	int found;
};

static void list_one(void *arg, const struct spool_found *m)
{
	(void)arg;
	char id[WCTX_MSGID_LEN];
	wctx_msgid_text(m->id, id);
	printf("%s %llu\n", id, (unsigned long long)(m->bytes + m->envlen));
}

static void dump_one(void *arg, const struct spool_found *m)
{
	(void)arg;
	char id[WCTX_MSGID_LEN];
	wctx_msgid_text(m->id, id);
	printf("%s %llu\n", id, (unsigned long long)(m->bytes + m->envlen));
	fwrite(m->env, 1, m->envlen, stdout);
	for (uint32_t i = 0; i < m->chunks; i++)
		fwrite(m->chunk[i].iov_base, 1, m->chunk[i].iov_len, stdout);
}

static void cat_one(void *arg, const struct spool_found *m)
{
	struct cat_arg *a = arg;
	if (m->id != a->id)
		return;
	a->found++;
	fwrite(m->env, 1, m->envlen, stdout);
	for (uint32_t i = 0; i < m->chunks; i++)
		fwrite(m->chunk[i].iov_base, 1, m->chunk[i].iov_len, stdout);
}

int main(int argc, char **argv)
{
	if (argc < 3 || (strcmp(argv[2], "cat") == 0 && argc != 4)) {
		fprintf(stderr, "usage: postern-spool DIR list|stats|dump|cat ID\n");
		return 2;
	}
	int dirfd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		perror(argv[1]);
		return 1;
	}
	struct spool_scan_stats st;
	if (strcmp(argv[2], "list") == 0) {
		spool_scan(dirfd, list_one, NULL, &st);
	} else if (strcmp(argv[2], "dump") == 0) {
		spool_scan(dirfd, dump_one, NULL, &st);
	} else if (strcmp(argv[2], "stats") == 0) {
		spool_scan(dirfd, NULL, NULL, &st);
		printf("{\"segments\": %llu, \"messages\": %llu, \"bytes\": %llu, "
		       "\"torn_tails\": %llu, \"partial\": %llu}\n",
		       (unsigned long long)st.segments, (unsigned long long)st.messages,
		       (unsigned long long)st.bytes, (unsigned long long)st.torn,
		       (unsigned long long)st.orphans);
	} else if (strcmp(argv[2], "cat") == 0) {
		struct cat_arg a = {.id = strtoull(argv[3], NULL, 16)};
		spool_scan(dirfd, cat_one, &a, &st);
		if (!a.found) {
			fprintf(stderr, "postern-spool: no message %s\n", argv[3]);
			return 1;
		}
	} else {
		fprintf(stderr, "usage: postern-spool DIR list|stats|dump|cat ID\n");
		return 2;
	}
	return 0;
}
