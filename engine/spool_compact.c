/* Spool compaction (see spool_compact.h): a move reads a message's bytes,
 * writes them with its envelope and delivery state into the current
 * segment, and lets go of the old segment once the copy is durable. Calls
 * nothing in queue.c by name: the queue's part comes through ops. */
#include "spool_compact.h"

#include <assert.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "smtp_server.h"
#include "wctx.h"

/* A segment is deleted once its last queued message is finished; one that
 * keeps a few long-deferred messages would stay forever. Compaction copies
 * those into the current segment (bytes, envelope and delivery state), and
 * once the copies are durable the messages let go of the old segment. A
 * crash in between leaves two copies: recovery takes the newer one
 * (spool_owner_seq). */

#define COMPACT_INTERVAL_MS 5000
#define COMPACT_MAX_BYTES (16u << 20)   /* per round */

enum compact_stage {
	COMPACT_READING,   /* the original's bytes are being read */
	COMPACT_WRITING,   /* the copy's records are being written */
	COMPACT_WRITTEN,   /* written, waiting for a flush that covers it */
	COMPACT_COVERED,   /* covered by the flush under way */
};

static const char *const stage_names[] = {"reading", "writing", "written", "covered"};

/* A message being copied out of a mostly finished segment. */
struct qmove {
	struct spool_compact *c;
	struct qmsg *m;
	enum compact_stage stage;
	struct spool_seg *to;     /* held from COMPACT_WRITING on */
	uint32_t nchunks;         /* the copy's chunk records in the new segment */
	uint64_t *off;
	uint32_t *len;
	uint64_t end;             /* just past its COMMIT record */
	bool failed;
	struct qmove *next;
};

/* Stages only go forward, one at a time. */
static void move_enter(struct qmove *mv, enum compact_stage to)
{
	assert(to == mv->stage + 1);
	log_msg(LOG_DEBUG, "event=compact_move id=%s from=%s to=%s", mv->m->idtxt,
		stage_names[mv->stage], stage_names[to]);
	mv->stage = to;
}

void spool_compact_init(struct spool_compact *c, struct wctx *w,
			const struct spool_compact_ops *ops)
{
	memset(c, 0, sizeof(*c));
	c->w = w;
	c->ops = *ops;
}

static void unlink_move(struct spool_compact *c, struct qmove *mv)
{
	struct qmove **pp = &c->moves;
	while (*pp != mv)
		pp = &(*pp)->next;
	*pp = mv->next;
}

/* The move is over (unlinked already): the message keeps the copy when ok,
 * else the original, and goes back to the schedule. */
static void move_finish(struct spool_compact *c, struct qmove *mv, bool ok)
{
	struct qmsg *m = mv->m;
	struct spool_worker *sw = c->w->spool;
	if (mv->stage == COMPACT_READING) {
		/* Nothing written: nothing to let go of. */
	} else if (ok) {
		struct spool_seg *old = m->seg;
		/* The copy is durable: the original is finished by record, not
		 * only by the owner table (which cannot see a copy whose segment
		 * was deleted once everything in it was delivered). */
		struct spool_state_rec r = {.rcpt = SPOOL_STATE_MSG, .kind = SPOOL_ST_MOVED,
					    .time_ms = c->w->wall_ms};
		spool_state_write(sw, old, m->id, &r, NULL);
		m->seg = mv->to;
		free(m->off);
		free(m->len);
		m->nchunks = mv->nchunks;
		m->off = mv->off;
		m->len = mv->len;
		mv->off = NULL;
		mv->len = NULL;
		spool_seg_put(sw, old, m->bytes);
	} else {
		spool_seg_put(sw, mv->to, m->bytes);
	}
	free(mv->off);
	free(mv->len);
	free(mv);
	c->ops.put_back(c->ops.arg, m);
}

void spool_compact_free(struct spool_compact *c)
{
	while (c->moves) {
		struct qmove *mv = c->moves;
		c->moves = mv->next;
		move_finish(c, mv, false);
	}
}

/* The copy's delivery state, written between its bytes and its COMMIT:
 * recovery applies it when the COMMIT comes, and a scan stops at the first
 * torn record, so a committed copy always has its state (a copy that wins
 * without it would deliver again what was delivered). */
static void move_write_state(struct spool_worker *sw, struct spool_seg *to, const struct qmsg *m,
			     int64_t now)
{
	for (unsigned i = 0; i < m->nrcpt; i++)
		if (m->r[i].state != SPOOL_RCPT_PENDING) {
			struct spool_state_rec r = {
				.rcpt = i, .kind = m->r[i].state == SPOOL_RCPT_DELIVERED
							   ? SPOOL_ST_DELIVERED : SPOOL_ST_FAILED,
				.attempts = m->attempts, .time_ms = now};
			spool_state_write(sw, to, m->id, &r, m->r[i].reply);
		}
	if (m->attempts) {
		/* A held message waits at INT64_MAX: its HELD record says so. */
		struct spool_state_rec r = {.rcpt = SPOOL_STATE_MSG, .kind = SPOOL_ST_DEFERRED,
					    .attempts = m->attempts, .time_ms = now,
					    .next_ms = m->next_ms == INT64_MAX ? 0 : m->next_ms};
		spool_state_write(sw, to, m->id, &r, m->last_error);
	}
	if (m->held) {
		/* The copy's envelope has no held: line; held (by a rule or an
		 * operator) it stays by record. */
		struct spool_state_rec r = {.rcpt = SPOOL_STATE_MSG, .kind = SPOOL_ST_HELD,
					    .attempts = m->attempts, .time_ms = now};
		spool_state_write(sw, to, m->id, &r, m->held_reason);
	}
	if (m->delay_notified) {
		struct spool_state_rec r = {.rcpt = SPOOL_STATE_MSG,
					    .kind = SPOOL_ST_DELAY_NOTIFIED, .time_ms = now};
		spool_state_write(sw, to, m->id, &r, NULL);
	}
}

/* Writes the copy: bytes (taken over), the delivery state so far, then the
 * envelope as it was received (the COMMIT). false when nothing usable was
 * written (what was is an orphan recovery ignores). */
static bool move_write(struct spool_compact *c, struct qmove *mv, char *bytes, size_t len)
{
	struct wctx *w = c->w;
	struct spool_worker *sw = w->spool;
	struct qmsg *m = mv->m;
	int err = 0;
	struct spool_msg *sm = spool_msg_begin(sw, m->id, &err);
	if (!sm) {
		free(bytes);
		return false;
	}
	if (!spool_msg_append_owned(sw, sm, bytes, len)) {
		spool_msg_release(sw, sm);
		return false;
	}
	/* The envelope as it was received, from what the queue kept. */
	struct smtp_rcpt *rc = calloc(m->nrcpt, sizeof(*rc));
	bool committed = false;
	if (rc) {
		for (unsigned i = 0; i < m->nrcpt; i++)
			rc[i] = (struct smtp_rcpt){.addr = m->r[i].addr, .orcpt = m->r[i].orcpt,
						   .notify = m->r[i].notify};
		struct smtp_envelope env = {
			.from = m->from, .body = m->body, .ret = m->ret, .envid = m->envid,
			.smtputf8 = m->smtputf8, .rcpt = rc, .nrcpt = m->nrcpt,
			/* Content rules' marks as they stand now. */
			.held = m->held ? m->held_reason : NULL, .route = m->route,
			.headers = m->prefix};
		mv->nchunks = sm->chunks;
		mv->off = malloc(sm->chunks * sizeof(*mv->off));
		mv->len = malloc(sm->chunks * sizeof(*mv->len));
		if (mv->off && mv->len && sm->chunks) {
			memcpy(mv->off, sm->off, sm->chunks * sizeof(*mv->off));
			memcpy(mv->len, sm->len, sm->chunks * sizeof(*mv->len));
			move_write_state(sw, sm->seg, m, w->wall_ms);
			committed = spool_msg_commit_envelope(sw, sm, m->idtxt, &env, m->connector,
							      m->client, "", m->arrival);
		}
	}
	free(rc);
	if (!committed) {
		free(mv->off);
		free(mv->len);
		mv->off = NULL;
		mv->len = NULL;
		spool_msg_release(sw, sm);
		return false;
	}
	move_enter(mv, COMPACT_WRITING);
	mv->to = sm->seg;
	spool_seg_hold(mv->to, m->bytes);
	mv->end = sm->end;
	sm->owner = mv;
	sm->internal = true;
	sm->move = true;
	if (spool_msg_written(sm))
		spool_compact_written(c, sm);
	return true;
}

static void move_read_done(void *ctx, char *buf, size_t len)
{
	struct qmove *mv = ctx;
	struct spool_compact *c = mv->c;
	/* Stopping: a copy not begun is not worth beginning. */
	bool go = buf && len == mv->m->bytes && !c->w->stopping;
	if (!go)
		free(buf);
	if (go && move_write(c, mv, buf, len))
		return;
	unlink_move(c, mv);
	move_finish(c, mv, false);
}

/* m has left the schedule; false when its move could not start. */
static bool move_start(struct spool_compact *c, struct qmsg *m)
{
	struct qmove *mv = calloc(1, sizeof(*mv));
	if (!mv)
		return false;
	mv->c = c;
	mv->m = m;
	mv->stage = COMPACT_READING;
	/* Linked first: the read may be done before it returns. */
	mv->next = c->moves;
	c->moves = mv;
	if (c->ops.read(c->ops.arg, m, move_read_done, mv))
		return true;
	unlink_move(c, mv);
	free(mv);
	return false;
}

void spool_compact_tick(struct spool_compact *c, struct qmsg *const *queued, size_t n)
{
	struct wctx *w = c->w;
	if (w->stopping || c->moves || w->now_ms < c->next_ms)
		return;
	c->next_ms = w->now_ms + COMPACT_INTERVAL_MS;
	struct spool_seg *s = spool_compact_candidate(w->spool);
	if (!s || !n)
		return;
	/* Chosen first, taken after: taking one reorders the schedule.
	 * Messages in a delivery attempt move next round. */
	struct qmsg **pick = malloc(n * sizeof(*pick));
	if (!pick)
		return;
	size_t npick = 0;
	uint64_t bytes = 0;
	for (size_t i = 0; i < n && bytes < COMPACT_MAX_BYTES; i++) {
		struct qmsg *m = queued[i];
		if (m->seg != s || m->busy)
			continue;
		pick[npick++] = m;
		bytes += m->bytes;
	}
	bytes = 0;
	unsigned moved = 0;
	for (size_t i = 0; i < npick; i++) {
		struct qmsg *m = pick[i];
		c->ops.take(c->ops.arg, m);
		if (!move_start(c, m)) {
			c->ops.put_back(c->ops.arg, m);
			break;
		}
		bytes += m->bytes;
		moved++;
	}
	free(pick);
	if (moved)
		log_msg(LOG_INFO, "event=compact worker=%u segment=%016" PRIx64 " messages=%u bytes=%llu",
			w->id, spool_seg_seq(s), moved, (unsigned long long)bytes);
}

void spool_compact_written(struct spool_compact *c, struct spool_msg *sm)
{
	struct qmove *mv = sm->owner;
	move_enter(mv, COMPACT_WRITTEN);
	mv->failed = sm->err != 0;
	spool_msg_release(c->w->spool, sm);
}

void spool_compact_flush_started(struct spool_compact *c)
{
	for (struct qmove *mv = c->moves; mv; mv = mv->next)
		if (mv->stage == COMPACT_WRITTEN && mv->end <= spool_seg_written_prefix(mv->to)) {
			move_enter(mv, COMPACT_COVERED);
			mv->failed |= spool_seg_lost_before(mv->to, mv->end);
		}
}

void spool_compact_flush_done(struct spool_compact *c, bool ok)
{
	struct qmove **pp = &c->moves;
	while (*pp) {
		struct qmove *mv = *pp;
		if (mv->stage != COMPACT_COVERED) {
			pp = &mv->next;
			continue;
		}
		*pp = mv->next;
		move_finish(c, mv, ok && !mv->failed);
	}
}

bool spool_compact_idle(const struct spool_compact *c)
{
	for (const struct qmove *mv = c->moves; mv; mv = mv->next)
		if (mv->stage == COMPACT_READING || mv->stage == COMPACT_WRITING)
			return false;
	return true;
}
