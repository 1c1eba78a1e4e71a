/* postern-spool: reads a spool directory the way recovery does, without
 * locking it (safe while postern runs). For operators and tests:
 *   postern-spool DIR list     one line per queued message: id, bytes
 *   postern-spool DIR cat ID   envelope block and message, as stored
 *   postern-spool DIR stats    segments, messages, torn tails, partials
 *   postern-spool DIR dump     every message: "ID LENGTH\n" then that many bytes
 *   postern-spool DIR queue [filters] [limit=N] [offset=N] [json]
 *   postern-spool DIR destinations [filters] [json]
 *                              show queue / show destinations as the stats
 *                              socket gives them, for a stopped node's spool
 *                              (destinations by recipient domain: no config) */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "envelope.h"
#include "queue_ctl.h"
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

/* queue / destinations: every queued message through the filters. */
struct view_arg {
	struct qctl_cmd c;
	int64_t now;
	uint64_t matched;
	struct qctl_row *rows;
	size_t nrows, cap;
	struct qctl_dests dests;
	bool oom;
};

static void view_one(void *arg, const struct spool_found *f)
{
	struct view_arg *a = arg;
	struct envelope_full e;
	if (envelope_read(f->env, f->envlen, &e) < 0 || e.env.nrcpt != f->state->nrcpt) {
		envelope_full_free(&e);
		return;
	}
	const struct spool_msg_state *st = f->state;
	struct qctl_rview *r = calloc(e.env.nrcpt ? e.env.nrcpt : 1, sizeof(*r));
	if (!r) {
		a->oom = true;
		envelope_full_free(&e);
		return;
	}
	for (unsigned i = 0; i < e.env.nrcpt; i++)
		r[i] = (struct qctl_rview){
			.addr = e.env.rcpt[i].addr, .status = "",
			.state = st->rcpt[i] == SPOOL_RCPT_DELIVERED ? QCTL_R_DELIVERED
				: st->rcpt[i] == SPOOL_RCPT_FAILED ? QCTL_R_FAILED : QCTL_R_PENDING,
		};
	bool held = st->hold > 0 || (st->hold == 0 && e.env.held);
	struct qctl_view v = {
		.id = f->id, .arrival = e.arrival, .size = f->bytes, .from = e.env.from,
		.client = e.client, .connector = e.connector,
		.state = held ? QCTL_HELD
			: st->attempts && st->next_ms > a->now * 1000 ? QCTL_DEFERRED : QCTL_ACTIVE,
		.held_reason = st->hold > 0 ? st->last_held : e.env.held, .attempts = st->attempts,
		.next_ms = st->next_ms, .last_error = st->last_error, .nrcpt = e.env.nrcpt,
		.pending = st->pending, .r = r,
	};
	if (qctl_match(&a->c.f, &v)) {
		a->matched++;
		if (a->c.op == QCTL_DESTINATIONS) {
			for (unsigned i = 0; i < v.nrcpt; i++) {
				if (r[i].state != QCTL_R_PENDING)
					continue;
				const char *at = strrchr(r[i].addr, '@');
				a->oom |= !qctl_dests_add(&a->dests, at ? at + 1 : "(local)", &v, false);
			}
		} else {
			char *text = NULL;
			size_t len = 0;
			FILE *out = open_memstream(&text, &len);
			if (a->nrows == a->cap) {
				size_t nc = a->cap ? a->cap * 2 : 256;
				struct qctl_row *nr = realloc(a->rows, nc * sizeof(*nr));
				if (nr) {
					a->rows = nr;
					a->cap = nc;
				}
			}
			if (out) {
				qctl_write_row(out, &v, a->c.json, a->now);
				fclose(out);
			}
			if (text && a->nrows < a->cap)
				a->rows[a->nrows++] = (struct qctl_row){f->id, text};
			else {
				free(text);
				a->oom = true;
			}
		}
	}
	free(r);
	envelope_full_free(&e);
}

/* The same answer the stats socket gives, from one request with one part
 * that holds every row. */
static int views(int dirfd, enum qctl_op op, int argc, char **argv)
{
	char args[1024] = "";
	bool json = false;
	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "json") == 0) {
			json = true;
			continue;
		}
		size_t n = strlen(args);
		snprintf(args + n, sizeof(args) - n, " %s", argv[i]);
	}
	struct view_arg a = {.now = (int64_t)time(NULL)};
	char err[256];
	if (qctl_parse(op, args, &a.c, err, sizeof(err)) < 0) {
		fprintf(stderr, "postern-spool: %s\n", err);
		return 2;
	}
	a.c.json = json;
	struct spool_scan_stats st;
	if (spool_scan(dirfd, view_one, &a, &st) < 0 || a.oom) {
		fprintf(stderr, "postern-spool: cannot read the spool%s\n", a.oom ? " (out of memory)" : "");
		return 1;
	}
	struct qctl_req *r = qctl_req_new(&a.c, 1);
	if (!r)
		return 1;
	r->now = a.now;
	r->part[0].matched = a.matched;
	r->part[0].rows = a.rows;
	r->part[0].nrows = a.nrows;
	r->part[0].dests = a.dests;
	qctl_part_done(&r->part[0]);
	int ret = qctl_answer(stdout, r, true);
	qctl_req_put(r);
	return ret ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc < 3 || (strcmp(argv[2], "cat") == 0 && argc != 4)) {
		fprintf(stderr, "usage: postern-spool DIR list|stats|dump|cat ID|queue [filters] [json]|destinations [filters] [json]\n");
		return 2;
	}
	int dirfd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0) {
		perror(argv[1]);
		return 1;
	}
	struct spool_scan_stats st;
	if (strcmp(argv[2], "queue") == 0)
		return views(dirfd, QCTL_SHOW, argc - 3, argv + 3);
	if (strcmp(argv[2], "destinations") == 0)
		return views(dirfd, QCTL_DESTINATIONS, argc - 3, argv + 3);
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
		fprintf(stderr, "usage: postern-spool DIR list|stats|dump|cat ID|queue [filters] [json]|destinations [filters] [json]\n");
		return 2;
	}
	return 0;
}
