/* Delivery queue (see queue.h). State changes go into the message's own
 * segment before they count, and what follows a DSN waits for it (the
 * original is read back asynchronously): a bounce precedes the FAILED
 * records it answers, so recovery never sees a failure whose bounce was lost. */
#include "queue.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "deliver.h"
#include "dsn.h"
#include "envelope.h"
#include "log.h"
#include "wctx.h"

/* ---- schedule: a binary heap on next_ms -------------------------------- */

/* A message is in the heap or in the out list, never both or neither. */
static void out_link(struct queue *q, struct qmsg *m)
{
	m->out_prev = NULL;
	m->out_next = q->out;
	if (q->out)
		q->out->out_prev = m;
	q->out = m;
	q->nout++;
}

static void out_unlink(struct queue *q, struct qmsg *m)
{
	if (m->out_prev)
		m->out_prev->out_next = m->out_next;
	else
		q->out = m->out_next;
	if (m->out_next)
		m->out_next->out_prev = m->out_prev;
	m->out_prev = m->out_next = NULL;
	q->nout--;
}

static void heap_swap(struct queue *q, size_t a, size_t b)
{
	struct qmsg *t = q->heap[a];
	q->heap[a] = q->heap[b];
	q->heap[b] = t;
	q->heap[a]->heap = a;
	q->heap[b]->heap = b;
}

static void heap_up(struct queue *q, size_t i)
{
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (q->heap[p]->next_ms <= q->heap[i]->next_ms)
			break;
		heap_swap(q, i, p);
		i = p;
	}
}

static void heap_down(struct queue *q, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < q->n && q->heap[l]->next_ms < q->heap[m]->next_ms)
			m = l;
		if (r < q->n && q->heap[r]->next_ms < q->heap[m]->next_ms)
			m = r;
		if (m == i)
			return;
		heap_swap(q, i, m);
		i = m;
	}
}

static void schedule(struct queue *q, struct qmsg *m, int64_t at)
{
	m->next_ms = m->held ? INT64_MAX : at;
	if (q->n == q->cap) {
		size_t nc = q->cap ? q->cap * 2 : 256;
		struct qmsg **nh = realloc(q->heap, nc * sizeof(*nh));
		if (!nh) {
			/* Stays queued on disk; the next start delivers it. */
			log_msg(LOG_ERROR, "event=queue_error id=%s error=\"out of memory\"", m->idtxt);
			return;
		}
		q->heap = nh;
		q->cap = nc;
	}
	out_unlink(q, m);
	m->heap = q->n;
	q->heap[q->n++] = m;
	heap_up(q, m->heap);
}

static void heap_remove(struct queue *q, struct qmsg *m)
{
	size_t i = m->heap;
	q->n--;
	if (i != q->n) {
		q->heap[i] = q->heap[q->n];
		q->heap[i]->heap = i;
		heap_down(q, i);
		heap_up(q, i);
	}
	m->heap = SIZE_MAX;
	out_link(q, m);
}

static struct qmsg *heap_pop(struct queue *q)
{
	struct qmsg *m = q->heap[0];
	q->n--;
	if (q->n) {
		q->heap[0] = q->heap[q->n];
		q->heap[0]->heap = 0;
		heap_down(q, 0);
	}
	m->heap = SIZE_MAX;
	out_link(q, m);
	return m;
}

/* ---- messages ---------------------------------------------------------- */

/* The id list: new messages have the largest ids (wctx_next_msgid), so
 * they go at the end; recovery appends in segment order and sorts once
 * (id_sort). A smaller id (a clock set back across a restart) walks back. */
static void id_link(struct queue *q, struct qmsg *m, bool append)
{
	struct qmsg *after = q->id_tail;
	while (!append && after && after->id > m->id)
		after = after->id_prev;
	m->id_prev = after;
	m->id_next = after ? after->id_next : q->id_head;
	if (m->id_next)
		m->id_next->id_prev = m;
	else
		q->id_tail = m;
	if (after)
		after->id_next = m;
	else
		q->id_head = m;
}

static void id_unlink(struct queue *q, struct qmsg *m)
{
	if (m->id_prev)
		m->id_prev->id_next = m->id_next;
	else
		q->id_head = m->id_next;
	if (m->id_next)
		m->id_next->id_prev = m->id_prev;
	else
		q->id_tail = m->id_prev;
	m->id_prev = m->id_next = NULL;
}

static int id_cmp(const void *a, const void *b)
{
	const struct qmsg *x = *(struct qmsg *const *)a, *y = *(struct qmsg *const *)b;
	return x->id < y->id ? -1 : x->id > y->id;
}

static void id_sort(struct queue *q)
{
	size_t n = 0, cap = q->n + q->nout;
	struct qmsg **v = malloc((cap ? cap : 1) * sizeof(*v));
	if (!v) {
		/* Stays in segment order: show queue's fast page may then be
		 * out of order, never wrong in what it counts. */
		log_msg(LOG_WARN, "event=queue_error error=\"out of memory sorting the queue by id\"");
		return;
	}
	for (struct qmsg *m = q->id_head; m && n < cap; m = m->id_next)
		v[n++] = m;
	qsort(v, n, sizeof(*v), id_cmp);
	q->id_head = q->id_tail = NULL;
	for (size_t i = 0; i < n; i++)
		id_link(q, v[i], true);
	free(v);
}

/* held, with the queue's count of them kept (a drain ends when only
 * held messages are left). */
static void set_held(struct queue *q, struct qmsg *m, bool held)
{
	if (m->held != held)
		q->nheld += held ? 1 : (size_t)-1;
	m->held = held;
}

static void ctl_note(struct queue *q, struct qctl_part *p, struct spool_seg *seg);
static void ctl_settle(struct queue *q, struct qctl_part *p);
static void ctl_finish(struct queue *q, struct qctl_part *p);

static void qmsg_free(struct queue *q, struct qmsg *m)
{
	if (m->ctl) {
		/* An operator's bounce: its records are written (or lost with
		 * the exit); the part waits for their flush. */
		struct qctl_part *p = m->ctl;
		m->ctl = NULL;
		ctl_note(q, p, m->seg);
		p->inflight--;
		ctl_settle(q, p);
	}
	if (m->heap != SIZE_MAX)
		heap_remove(q, m);
	out_unlink(q, m);
	id_unlink(q, m);
	set_held(q, m, false);
	for (unsigned i = 0; i < m->nrcpt; i++) {
		free(m->r[i].addr);
		free(m->r[i].orcpt);
		free(m->r[i].reply);
		free(m->r[i].remote);
	}
	if (m->seg)
		spool_seg_put(q->w->spool, m->seg, m->bytes);
	metric_add(&q->w->m->queue_messages, (uint64_t)-1);
	metric_add(&q->w->m->queue_bytes, (uint64_t)0 - m->bytes);
	free(m->r);
	free(m->off);
	free(m->len);
	free(m->from);
	free(m->envid);
	free(m->client);
	free(m->connector);
	free(m->last_error);
	free(m->held_reason);
	free(m->route);
	free(m->prefix);
	free(m);
}

static char *xdup(const char *s)
{
	return s ? strdup(s) : NULL;
}

/* A message from its envelope; off and len (malloc'd, nchunks each) are
 * taken over. NULL when out of memory. */
static struct qmsg *qmsg_new(struct queue *q, uint64_t id, struct spool_seg *seg,
			     uint32_t nchunks, uint64_t *off, uint32_t *len,
			     const struct smtp_envelope *env, const char *client,
			     const char *connector, int64_t arrival)
{
	struct qmsg *m = calloc(1, sizeof(*m));
	if (!m) {
		free(off);
		free(len);
		return NULL;
	}
	m->id = id;
	wctx_msgid_text(id, m->idtxt);
	m->nchunks = nchunks;
	m->off = off;
	m->len = len;
	m->r = calloc(env->nrcpt ? env->nrcpt : 1, sizeof(*m->r));
	m->from = xdup(env->from ? env->from : "");
	m->envid = xdup(env->envid);
	m->client = xdup(client);
	m->connector = xdup(connector);
	m->heap = SIZE_MAX;
	m->route = xdup(env->route);
	m->prefix = xdup(env->headers);
	m->prefix_len = m->prefix ? (uint32_t)strlen(m->prefix) : 0;
	bool ok = m->off && m->len && m->r && m->from && m->client && m->connector &&
		  (!env->envid || m->envid) &&
		  (!env->route || m->route) && (!env->headers || m->prefix);
	for (uint32_t i = 0; ok && i < nchunks; i++)
		m->bytes += len[i];
	m->body = (uint8_t)env->body;
	m->ret = (uint8_t)env->ret;
	m->smtputf8 = env->smtputf8;
	m->anonymous = env->anonymous;
	m->dotless = env->dotless;
	m->arrival = arrival;
	/* Envelopes keep seconds; a fresh message knows better. */
	int64_t now = q->w->wall_ms;
	m->arrival_ms = now / 1000 == arrival ? now : arrival * 1000;
	m->nrcpt = m->pending = env->nrcpt;
	for (unsigned i = 0; ok && i < env->nrcpt; i++) {
		m->r[i].addr = xdup(env->rcpt[i].addr);
		m->r[i].orcpt = xdup(env->rcpt[i].orcpt);
		m->r[i].notify = (uint8_t)env->rcpt[i].notify;
		ok = m->r[i].addr && (!env->rcpt[i].orcpt || m->r[i].orcpt);
	}
	m->seg = seg;
	out_link(q, m);
	id_link(q, m, q->recovering);
	spool_seg_hold(seg, m->bytes);
	metric_add(&q->w->m->queue_messages, 1);
	metric_add(&q->w->m->queue_bytes, m->bytes);
	if (!ok) {
		qmsg_free(q, m);
		return NULL;
	}
	return m;
}

/* ---- compaction's view of the queue (spool_compact.c moves) ------------- */

static bool read_original(struct queue *q, struct qmsg *m, bool want_all,
			  void (*done)(void *ctx, char *buf, size_t len), void *ctx, bool notice);

static void compact_take(void *arg, struct qmsg *m)
{
	heap_remove(arg, m);
}

static void compact_put_back(void *arg, struct qmsg *m)
{
	assert(m->heap == SIZE_MAX);
	schedule(arg, m, m->next_ms);
}

static bool compact_read(void *arg, struct qmsg *m,
			 void (*done)(void *ctx, char *buf, size_t len), void *ctx)
{
	return read_original(arg, m, true, done, ctx, false);
}

void queue_init(struct queue *q, struct wctx *w, queue_submit_fn *submit, struct deliver *dl)
{
	memset(q, 0, sizeof(*q));
	q->w = w;
	q->submit = submit;
	q->dl = dl;
	q->active_max = QUEUE_ACTIVE_MAX;
	struct spool_compact_ops ops = {.take = compact_take, .put_back = compact_put_back,
					.read = compact_read, .arg = q};
	spool_compact_init(&q->compact, w, &ops);
}

static void abandon_reads(struct queue *q);

void queue_free(struct queue *q)
{
	abandon_reads(q);
	spool_compact_free(&q->compact);
	while (q->n)
		qmsg_free(q, heap_pop(q));
	free(q->heap);
	q->heap = NULL;
	/* Changes not known durable at exit: answered as such. */
	while (q->ctl_wait) {
		struct qctl_part *p = q->ctl_wait;
		q->ctl_wait = p->next;
		p->failed = true;
		ctl_finish(q, p);
	}
}

/* The queue takes over the chunk table the spool built while writing. */
static struct qmsg *qmsg_from_spool(struct queue *q, struct spool_msg *sm,
				    const struct smtp_envelope *env, const char *client,
				    const char *connector, int64_t arrival)
{
	uint64_t *off = sm->off;
	uint32_t *len = sm->len;
	sm->off = NULL;
	sm->len = NULL;
	sm->off_cap = 0;
	return qmsg_new(q, sm->id, sm->seg, sm->chunks, off, len, env, client, connector,
			arrival);
}

void queue_add_received(struct queue *q, struct spool_msg *sm,
			const struct smtp_envelope *env, const char *client,
			const char *connector, int64_t arrival)
{
	struct qmsg *m = qmsg_from_spool(q, sm, env, client, connector, arrival);
	if (!m) {
		char id[WCTX_MSGID_LEN];
		wctx_msgid_text(sm->id, id);
		log_msg(LOG_ERROR, "event=queue_error id=%s error=\"out of memory\"", id);
		return;
	}
	if (env->held) {
		/* A content rule's hold: the envelope says so, recovery too. */
		set_held(q, m, true);
		m->held_reason = strdup(env->held);
		char qr[LOG_QUOTE_CAP(100)];
		log_msg(LOG_INFO, "event=held id=%s reason=%s", m->idtxt,
			log_quote(qr, sizeof(qr), env->held));
	}
	schedule(q, m, 0);
}

/* ---- recovery ---------------------------------------------------------- */

struct recover_ctx {
	struct queue *q;
	struct spool_seg *seg;     /* adopted at its first live message */
	const uint64_t *tail;      /* where its valid records end */
	bool adopt_failed;
	uint64_t messages, recipients;
};

/* Takes over the segment being scanned: new records go where its valid
 * ones end (the scan knows that before it reports any message). */
static void recover_adopt(struct recover_ctx *rc, uint64_t seq)
{
	if (rc->seg || rc->adopt_failed)
		return;
	rc->seg = spool_seg_adopt(rc->q->w->spool, seq, *rc->tail);
	if (!rc->seg) {
		rc->adopt_failed = true;
		log_msg(LOG_ERROR, "event=recover_error segment=%016" PRIx64 " error=\"%s\"", seq,
			strerror(errno));
		return;
	}
	spool_seg_hold(rc->seg, 0);
}

static void recover_one(void *arg, const struct spool_found *f)
{
	struct recover_ctx *rc = arg;
	recover_adopt(rc, f->seq);
	struct envelope_full e;
	if (envelope_read(f->env, f->envlen, &e) < 0 || e.env.nrcpt != f->state->nrcpt) {
		char id[WCTX_MSGID_LEN];
		wctx_msgid_text(f->id, id);
		log_msg(LOG_ERROR, "event=recover_error id=%s error=\"unreadable envelope\"", id);
		envelope_full_free(&e);
		return;
	}
	uint64_t owner = spool_owner_seq(rc->q->w->spool->sp, f->id);
	if (!rc->seg || (owner && owner != f->seq)) {
		/* The older copy of a message compaction moved, from a crash
		 * before the original was marked: marked now, so that it stays
		 * finished after the copy's segment is gone. */
		if (rc->seg) {
			struct spool_state_rec r = {.rcpt = SPOOL_STATE_MSG, .kind = SPOOL_ST_MOVED,
						    .time_ms = rc->q->w->wall_ms};
			spool_state_write(rc->q->w->spool, rc->seg, f->id, &r, NULL);
		}
		envelope_full_free(&e);
		return;
	}
	uint32_t nc = f->chunks ? f->chunks : 1;
	uint64_t *off = malloc(nc * sizeof(*off));
	uint32_t *len = malloc(nc * sizeof(*len));
	for (uint32_t i = 0; off && len && i < f->chunks; i++) {
		off[i] = f->chunk_off[i];
		len[i] = (uint32_t)f->chunk[i].iov_len;
	}
	struct qmsg *m = qmsg_new(rc->q, f->id, rc->seg, f->chunks, off, len, &e.env, e.client,
				  e.connector, e.arrival);
	const struct spool_msg_state *st = f->state;
	/* Held by the envelope (a content rule) unless released since, or
	 * by an operator's record. */
	if (m && (st->hold > 0 || (st->hold == 0 && e.env.held))) {
		set_held(rc->q, m, true);
		m->held_reason = strdup(st->hold > 0 ? st->last_held : e.env.held);
	}
	envelope_full_free(&e);
	if (!m)
		return;
	for (unsigned i = 0; i < m->nrcpt; i++)
		if (st->rcpt[i] != SPOOL_RCPT_PENDING) {
			m->r[i].state = st->rcpt[i];
			m->pending--;
		}
	m->attempts = st->attempts;
	m->delay_notified = st->delay_notified;
	if (st->last_error[0])
		m->last_error = strdup(st->last_error);
	rc->messages++;
	rc->recipients += m->pending;
	/* Retry when it was due; a crash does not reset the backoff. */
	schedule(rc->q, m, st->next_ms);  /* a held one waits at INT64_MAX */
}

void queue_recover(struct queue *q, unsigned nworkers)
{
	struct wctx *w = q->w;
	/* Only what was there at start: the other workers are creating
	 * segments already, and those are theirs. */
	size_t n = w->spool->sp->nrecover;
	const uint64_t *seqs = w->spool->sp->recover;
	struct recover_ctx rc = {.q = q};
	struct spool_scan_stats st;
	q->recovering = true;
	memset(&st, 0, sizeof(st));
	unsigned segs = 0;
	for (size_t i = 0; i < n; i++) {
		if (seqs[i] % nworkers != w->id)
			continue;
		uint64_t tail = 0;
		rc.seg = NULL;
		rc.tail = &tail;
		rc.adopt_failed = false;
		if (spool_scan_segment(w->spool->sp->dirfd, seqs[i], recover_one, &rc, &st, false,
				       &tail) < 0)
			continue;
		/* A segment with nothing live is adopted too, so that it goes. */
		recover_adopt(&rc, seqs[i]);
		if (!rc.seg)
			continue;
		spool_seg_put(w->spool, rc.seg, 0);
		segs++;
	}
	q->recovering = false;
	id_sort(q);
	log_msg(LOG_INFO,
		"event=queue_recovered worker=%u segments=%u messages=%llu recipients=%llu finished=%llu",
		w->id, segs, (unsigned long long)rc.messages, (unsigned long long)rc.recipients,
		(unsigned long long)st.finished);
}

/* ---- state records and DSNs --------------------------------------------- */

static void record(struct queue *q, struct qmsg *m, uint32_t rcpt, uint8_t kind,
		   const char *text)
{
	struct spool_state_rec r = {.rcpt = rcpt, .kind = kind, .attempts = m->attempts,
				    .time_ms = q->w->wall_ms, .next_ms = m->next_ms};
	if (!spool_state_write(q->w->spool, m->seg, m->id, &r, text))
		log_msg(LOG_ERROR, "event=store_error id=%s error=\"cannot record state\"",
			m->idtxt);
}

/* ---- reading stored messages back ----------------------------------------- */

/* One chunk's read; its address is the completion's tag. */
struct qread_piece {
	struct qread *rd;
	uint32_t want;
};

/* A read of a stored message, one io_read per chunk, all in flight at
 * once. Its message is out of the schedule meanwhile (or held by a job),
 * so neither it nor its segment goes, and nothing else starts on it. */
struct qread {
	struct queue *q;
	char idtxt[WCTX_MSGID_LEN];
	char *buf;
	size_t len;
	unsigned left;            /* chunk reads not completed */
	int err;                  /* the first failure: errno, -1 for a short read */
	void (*done)(void *ctx, char *buf, size_t len);
	void *ctx;
	bool notice;              /* ctx is a struct qnotice */
	struct qread *prev, *next;
	struct qread_piece piece[];
};

static void read_unlink(struct queue *q, struct qread *rd)
{
	if (rd->prev)
		rd->prev->next = rd->next;
	else
		q->reads = rd->next;
	if (rd->next)
		rd->next->prev = rd->prev;
	q->nreads--;
}

static void read_finish(struct qread *rd)
{
	struct queue *q = rd->q;
	read_unlink(q, rd);
	char *buf = rd->buf;
	if (rd->err) {
		log_msg(LOG_ERROR, "event=store_error op=read id=%s error=\"%s\"", rd->idtxt,
			rd->err < 0 ? "short read" : strerror(rd->err));
		free(buf);
		buf = NULL;
	}
	void (*done)(void *, char *, size_t) = rd->done;
	void *ctx = rd->ctx;
	size_t len = rd->len;
	free(rd);
	done(ctx, buf, len);
}

/* Reads the original of m as stored: the whole message when want_all,
 * else enough to hold its header. done(ctx, buf, len) follows, from
 * queue_on_read (or at once when there is nothing to read), with buf
 * malloc'd for the callee, or NULL when the read failed. false: not
 * started (out of memory), done will not be called. */
static bool read_original(struct queue *q, struct qmsg *m, bool want_all,
			  void (*done)(void *ctx, char *buf, size_t len), void *ctx, bool notice)
{
	uint64_t cap = want_all ? m->bytes : (m->bytes < 65536 ? m->bytes : 65536);
	uint32_t np = 0;
	for (uint64_t n = 0; np < m->nchunks && n < cap; np++)
		n += m->len[np] < cap - n ? m->len[np] : cap - n;
	struct qread *rd = calloc(1, sizeof(*rd) + np * sizeof(rd->piece[0]));
	char *buf = malloc(cap ? cap : 1);
	if (!rd || !buf) {
		free(rd);
		free(buf);
		return false;
	}
	rd->q = q;
	memcpy(rd->idtxt, m->idtxt, sizeof(rd->idtxt));
	rd->buf = buf;
	rd->len = cap;
	rd->left = np;
	rd->done = done;
	rd->ctx = ctx;
	rd->notice = notice;
	rd->next = q->reads;
	if (q->reads)
		q->reads->prev = rd;
	q->reads = rd;
	q->nreads++;
	if (np == 0) {
		read_finish(rd);
		return true;
	}
	int fd = spool_seg_fd(m->seg);
	uint64_t n = 0;
	for (uint32_t i = 0; i < np; i++) {
		uint32_t want = m->len[i] < cap - n ? m->len[i] : (uint32_t)(cap - n);
		rd->piece[i] = (struct qread_piece){.rd = rd, .want = want};
		io_read(q->w->io, fd, buf + n, want, m->off[i],
			io_tag_ptr(IO_OP_READ, &rd->piece[i], 0));
		n += want;
	}
	return true;
}

void queue_on_read(struct queue *q, const struct io_cqe *e)
{
	struct qread_piece *p = io_cqe_ptr(e);
	struct qread *rd = p->rd;
	assert(rd->q == q && rd->left > 0);
	/* Segments are preallocated and the chunk was written: a short read
	 * is as bad as an error. */
	if (e->res != (int)p->want && !rd->err)
		rd->err = e->res < 0 ? -e->res : -1;
	if (--rd->left == 0)
		read_finish(rd);
}

/* Writes a generated message (a DSN) into the segment of m, ahead of the
 * records that follow, and queues it once its bytes are on disk. text is
 * malloc'd and taken over. */
static bool inject(struct queue *q, struct qmsg *m, const char *to, char *text,
		   size_t len, char *idout)
{
	/* A returned original may carry 8-bit text (dsn.h labels it 8bit). */
	enum smtp_body body = SMTP_BODY_NONE;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)text[i] >= 0x80) {
			body = SMTP_BODY_8BITMIME;
			break;
		}
	struct wctx *w = q->w;
	uint64_t id = wctx_next_msgid(w);
	char idtxt[20];
	wctx_msgid_text(id, idtxt);
	int err = 0;
	struct spool_msg *sm = spool_msg_begin_in(w->spool, m->seg, id, &err);
	if (!sm) {
		free(text);
		return false;
	}
	if (!spool_msg_append_owned(w->spool, sm, text, len)) {
		spool_msg_release(w->spool, sm);
		return false;
	}
	struct smtp_rcpt rc = {.addr = (char *)to};
	struct smtp_envelope env = {.from = "", .body = body, .rcpt = &rc, .nrcpt = 1};
	int64_t now = w->wall_ms / 1000;
	if (!spool_msg_commit_envelope(w->spool, sm, idtxt, &env, "postern", "127.0.0.1",
				       w->conf->hostname, now)) {
		spool_msg_release(w->spool, sm);
		return false;
	}
	struct qmsg *dm = qmsg_from_spool(q, sm, &env, "127.0.0.1", "postern", now);
	if (!dm) {
		spool_msg_release(w->spool, sm);
		return false;
	}
	/* Delivery reads the bytes from the file: not before they are there. */
	sm->owner = dm;
	sm->internal = true;
	if (spool_msg_written(sm))
		queue_internal_written(q, sm);
	snprintf(idout, 20, "%s", idtxt);
	return true;
}

void queue_internal_written(struct queue *q, struct spool_msg *sm)
{
	if (sm->move) {
		spool_compact_written(&q->compact, sm);
		return;
	}
	struct qmsg *dm = sm->owner;
	int err = sm->err;
	spool_msg_release(q->w->spool, sm);
	if (err) {
		/* Its bytes are not in the file: nothing to deliver. The state
		 * records that owed it are lost with it or redo it at recovery. */
		log_msg(LOG_ERROR, "event=store_error id=%s error=\"%s\"", dm->idtxt,
			strerror(err));
		qmsg_free(q, dm);
		return;
	}
	schedule(q, dm, 0);
}

static const char *default_status(int code)
{
	return code / 100 == 2 ? "2.0.0" : code / 100 == 4 ? "4.0.0" : "5.0.0";
}

/* ---- notices: a DSN, then what waited for it ------------------------------ */

/* What follows a notice, once it is out or could not be sent. */
enum notice_then {
	NOTICE_THEN_FINISH,   /* a bounce: the round's FAILED records, after it */
	NOTICE_THEN_ATTEMPT,  /* a delay notice: its record, then the attempt */
	NOTICE_THEN_RELEASE,  /* a success notice: its job's hold on m ends */
};

/* A notice waiting for the original it returns. */
struct qnotice {
	struct queue *q;
	struct qmsg *m;
	enum dsn_action action;
	enum notice_then then;
	bool attempted;           /* NOTICE_THEN_FINISH: the round reached a next hop */
	bool full;                /* returns the whole original */
	int64_t now_ms;
	unsigned n;
	unsigned idx[];           /* the recipients it is about */
};

static const char *const notice_kind[] = {"bounce", "delay", "success", "relayed"};

static void round_close(struct queue *q, struct qmsg *m, bool attempted, int64_t now_ms);
static void start_attempt(struct queue *q, struct qmsg *m, int64_t now_ms);
static void job_release(struct queue *q, struct qmsg *m, int64_t now_ms);

static void notice_continue(struct queue *q, struct qmsg *m, enum notice_then then,
			    bool attempted, int64_t now_ms, bool sent)
{
	switch (then) {
	case NOTICE_THEN_FINISH:
		if (!sent)
			log_msg(LOG_ERROR, "event=bounce_error id=%s", m->idtxt);
		round_close(q, m, attempted, now_ms);
		return;
	case NOTICE_THEN_ATTEMPT:
		if (sent)
			record(q, m, SPOOL_STATE_MSG, SPOOL_ST_DELAY_NOTIFIED, NULL);
		/* A stop or a hold may have come while the original was read. */
		if (q->w->stopping || q->w->conf->queue.hold || m->held)
			schedule(q, m, m->next_ms);
		else
			start_attempt(q, m, now_ms);
		return;
	case NOTICE_THEN_RELEASE:
		job_release(q, m, now_ms);
		return;
	}
}

/* Composes the notice around the original and injects it. */
static bool notice_compose(struct qnotice *nt, char *orig, size_t olen)
{
	struct queue *q = nt->q;
	struct qmsg *m = nt->m;
	struct wctx *w = q->w;
	const struct queue_conf *qc = &w->conf->queue;
	struct dsn_rcpt *dr = calloc(nt->n, sizeof(*dr));
	if (!dr) {
		log_msg(LOG_ERROR, "event=dsn_error kind=%s id=%s error=\"out of memory\"",
			notice_kind[nt->action], m->idtxt);
		return false;
	}
	for (unsigned k = 0; k < nt->n; k++) {
		struct qrcpt *r = &m->r[nt->idx[k]];
		dr[k] = (struct dsn_rcpt){
			.addr = r->addr, .orcpt = r->orcpt, .action = nt->action,
			.status = r->status[0] ? r->status
				: nt->action == DSN_DELAYED ? "4.0.0" : "5.0.0",
			.remote_mta = r->remote, .diagnostic = r->reply,
			.last_attempt = nt->now_ms / 1000,
			.will_retry_until = nt->action == DSN_DELAYED
				? (m->arrival_ms + (int64_t)qc->message_expiration_ms) / 1000 : 0,
		};
	}
	struct iovec iov = {orig, olen};
	char pm[300], msgid[80], rid[WCTX_MSGID_LEN];
	snprintf(pm, sizeof(pm), "postmaster@%s", w->conf->hostname);
	char did[WCTX_MSGID_LEN];
	wctx_msgid_text(wctx_next_msgid(w), did);
	snprintf(msgid, sizeof(msgid), "%s.dsn@%.40s", did, w->conf->hostname);
	struct dsn_msg dm = {
		.reporting_mta = w->conf->hostname, .postmaster = pm, .to = m->from,
		.envid = m->envid, .queue_id = m->idtxt, .received_from = m->client,
		.arrival = m->arrival, .now = nt->now_ms / 1000, .message_id = msgid,
		.full = nt->full, .rcpt = dr, .nrcpt = nt->n, .orig = &iov,
		.norig = 1, .max_return = qc->max_return_size,
	};
	/* Usually fits the first time; dsn_compose says how much when not. */
	size_t cap = olen + 8192;
	char *out = malloc(cap);
	size_t need = out ? dsn_compose(out, cap, &dm) : 0;
	if (out && need >= cap) {
		free(out);
		cap = need + 1;
		out = malloc(cap);
		if (out && dsn_compose(out, cap, &dm) >= cap) {
			free(out);
			out = NULL;
		}
	}
	bool ok = out && inject(q, m, m->from, out, need, rid);
	if (ok) {
		char to[SMTP_PATH_MAX + 3], qt[LOG_QUOTE_CAP(SMTP_PATH_MAX + 2)];
		snprintf(to, sizeof(to), "<%s>", m->from);
		log_msg(LOG_INFO, "event=dsn kind=%s id=%s dsn_id=%s to=%s recipients=%u",
			notice_kind[nt->action], m->idtxt, rid, log_quote(qt, sizeof(qt), to), nt->n);
	} else {
		log_msg(LOG_ERROR, "event=dsn_error kind=%s id=%s", notice_kind[nt->action],
			m->idtxt);
	}
	free(dr);
	return ok;
}

static void notice_read_done(void *ctx, char *orig, size_t olen)
{
	struct qnotice *nt = ctx;
	bool sent = false;
	if (orig)
		sent = notice_compose(nt, orig, olen);
	else
		log_msg(LOG_ERROR,
			"event=dsn_error kind=%s id=%s error=\"cannot read the original\"",
			notice_kind[nt->action], nt->m->idtxt);
	free(orig);
	struct queue *q = nt->q;
	struct qmsg *m = nt->m;
	enum notice_then then = nt->then;
	bool attempted = nt->attempted;
	int64_t now_ms = nt->now_ms;
	free(nt);
	notice_continue(q, m, then, attempted, now_ms, sent);
}

/* Sends one notice about the recipients idx of m (one DSN action for all):
 * a bounce, a delay notice or a success notice; then goes on with then,
 * at once or once the original has been read. The caller lets go of m
 * here: the continuation may free it. */
static void notice_send(struct queue *q, struct qmsg *m, enum dsn_action action,
			const unsigned *idx, unsigned n, int64_t now_ms,
			enum notice_then then, bool attempted)
{
	if (!n || !*m->from) {
		/* the null sender never gets a DSN */
		notice_continue(q, m, then, attempted, now_ms, true);
		return;
	}
	const struct queue_conf *qc = &q->w->conf->queue;
	struct qnotice *nt = malloc(sizeof(*nt) + n * sizeof(nt->idx[0]));
	if (nt) {
		*nt = (struct qnotice){.q = q, .m = m, .action = action, .then = then,
				       .attempted = attempted, .now_ms = now_ms, .n = n};
		memcpy(nt->idx, idx, n * sizeof(nt->idx[0]));
		/* RET=FULL returns the whole message only up to
		 * max_return_size; a larger one comes back as headers, and is
		 * read as such. */
		nt->full = m->ret == SMTP_RET_FULL && action == DSN_FAILED &&
			   (!qc->max_return_size || m->bytes <= qc->max_return_size);
		/* Backscatter: a sender nobody vouched for (anonymous
		 * session) may be forged; the bounce carries no content of
		 * what was sent in its name, whatever RET says. */
		if (m->anonymous)
			nt->full = false;
		if (read_original(q, m, nt->full, notice_read_done, nt, true))
			return;
		free(nt);
	}
	log_msg(LOG_ERROR, "event=dsn_error kind=%s id=%s error=\"out of memory\"",
		notice_kind[action], m->idtxt);
	notice_continue(q, m, then, attempted, now_ms, false);
}

/* Exit with reads in flight: their buffers are left to the kernel. */
static void abandon_reads(struct queue *q)
{
	while (q->reads) {
		struct qread *rd = q->reads;
		read_unlink(q, rd);
		log_msg(LOG_WARN, "event=queue_error id=%s error=\"read in flight at exit\"",
			rd->idtxt);
		if (rd->notice) {
			struct qnotice *nt = rd->ctx;
			/* A success notice holds m like a job; the others own it. */
			if (nt->then != NOTICE_THEN_RELEASE || --nt->m->busy == 0)
				qmsg_free(q, nt->m);
			free(nt);
		}
		free(rd);
	}
}

static bool wants(const struct qrcpt *r, unsigned bit, bool by_default)
{
	if (r->notify & SMTP_NOTIFY_NEVER)
		return false;
	return r->notify ? (r->notify & bit) != 0 : by_default;
}

static uint64_t backoff_ms(const struct queue_conf *qc, uint32_t attempts)
{
	uint64_t d = qc->retry_interval_ms;
	for (uint32_t i = 1; i < attempts && d < qc->max_retry_interval_ms; i++)
		d *= 2;
	return d < qc->max_retry_interval_ms ? d : qc->max_retry_interval_ms;
}

/* tls: the attempt's "VERSION CIPHER", "" in plaintext, NULL when no
 * session was involved (expiry, no route). */
static void log_result(const char *event, const struct qmsg *m, const struct qrcpt *r,
		       const char *sc, const char *tls, int64_t now_ms)
{
	char q1[LOG_QUOTE_CAP(SMTP_PATH_MAX)], q2[200], q3[1100], q4[400], t[120] = "";
	char from[SMTP_PATH_MAX + 3], qf[LOG_QUOTE_CAP(SMTP_PATH_MAX + 2)];
	snprintf(from, sizeof(from), "<%s>", m->from);
	if (tls) {
		const char *sp = strchr(tls, ' ');
		if (sp)
			snprintf(t, sizeof(t), " tls=%.*s cipher=%s", (int)(sp - tls), tls, sp + 1);
		else
			snprintf(t, sizeof(t), " tls=-");
	}
	log_msg(LOG_INFO,
		"event=%s id=%s from=%s to=%s send_connector=%s relay=%s%s status=%s reply=%s delay=%.1f attempts=%u",
		event, m->idtxt, log_quote(qf, sizeof(qf), from), log_quote(q1, sizeof(q1), r->addr),
		log_quote(q2, sizeof(q2), sc ? sc : "none"),
		log_quote(q4, sizeof(q4), r->remote ? r->remote : "none"), t, r->status,
		log_quote(q3, sizeof(q3), r->reply ? r->reply : ""),
		(double)(now_ms - m->arrival_ms) / 1000.0, m->attempts + 1);
}

static void set_result(struct qrcpt *r, const char *status, const char *reply,
		       const char *remote)
{
	/* reply or remote may be r's own strings: copy before freeing. */
	char *nr = xdup(reply);
	char *nm = remote && *remote ? strdup(remote) : NULL;
	snprintf(r->status, sizeof(r->status), "%s", status);
	free(r->reply);
	free(r->remote);
	r->reply = nr;
	r->remote = nm;
}

/* The end of a round of attempts for m: the bounce for what failed, then
 * round_close once it is out. */
static void finish_round(struct queue *q, struct qmsg *m, bool attempted, int64_t now_ms)
{
	/* The bounce's recipient list is allocated only when one is owed. */
	unsigned *idx = NULL, nbounce = 0;
	bool owed = false;
	for (unsigned i = 0; i < m->nrcpt; i++)
		if (m->r[i].failed_now && wants(&m->r[i], SMTP_NOTIFY_FAILURE, true)) {
			owed = true;
			if (!idx)
				idx = calloc(m->nrcpt, sizeof(*idx));
			if (idx)
				idx[nbounce++] = i;
		}
	if (owed && idx) {
		notice_send(q, m, DSN_FAILED, idx, nbounce, now_ms, NOTICE_THEN_FINISH, attempted);
	} else {
		if (owed)
			log_msg(LOG_ERROR, "event=bounce_error id=%s", m->idtxt);
		round_close(q, m, attempted, now_ms);
	}
	free(idx);
}

/* After the bounce, when one was owed: the FAILED records it answers, then
 * the deferral record for what is left, or the end of the message. */
static void round_close(struct queue *q, struct qmsg *m, bool attempted, int64_t now_ms)
{
	const struct queue_conf *qc = &q->w->conf->queue;
	for (unsigned i = 0; i < m->nrcpt; i++) {
		struct qrcpt *r = &m->r[i];
		if (!r->failed_now)
			continue;
		r->failed_now = false;
		r->state = SPOOL_RCPT_FAILED;
		m->pending--;
		record(q, m, i, SPOOL_ST_FAILED, r->reply);
	}
	if (m->pending == 0) {
		qmsg_free(q, m);
		return;
	}
	if (!attempted) {
		schedule(q, m, now_ms + 1000);
		return;
	}
	m->attempts++;
	int64_t next = now_ms + (int64_t)backoff_ms(qc, m->attempts);
	m->next_ms = next;
	record(q, m, SPOOL_STATE_MSG, SPOOL_ST_DEFERRED, m->last_error);
	schedule(q, m, next);
}

/* Every pending recipient fails now (expiry). */
static void expire(struct queue *q, struct qmsg *m, int64_t now_ms)
{
	char why[400];
	snprintf(why, sizeof(why), "4.4.7 Message expired after %u attempts%s%.300s",
		 m->attempts, m->last_error ? "; last error: " : "",
		 m->last_error ? m->last_error : "");
	for (unsigned i = 0; i < m->nrcpt; i++) {
		struct qrcpt *r = &m->r[i];
		if (r->state != SPOOL_RCPT_PENDING)
			continue;
		set_result(r, "4.4.7", why, r->remote);
		r->failed_now = true;
		log_result("expire", m, r, NULL, NULL, now_ms);
	}
	metric_add(&q->w->m->expired, 1);
	finish_round(q, m, false, now_ms);
}

/* m is due: its attempt starts, behind a delay notice when one is owed
 * (its DELAY_NOTIFIED record follows the notice). */
static void attempt_due(struct queue *q, struct qmsg *m, int64_t now_ms)
{
	const struct queue_conf *qc = &q->w->conf->queue;
	if (m->delay_notified || !qc->delay_notification_ms || !*m->from ||
	    now_ms - m->arrival_ms < (int64_t)qc->delay_notification_ms) {
		start_attempt(q, m, now_ms);
		return;
	}
	unsigned *idx = calloc(m->nrcpt, sizeof(*idx));
	unsigned n = 0;
	for (unsigned i = 0; idx && i < m->nrcpt; i++)
		if (m->r[i].state == SPOOL_RCPT_PENDING &&
		    wants(&m->r[i], SMTP_NOTIFY_DELAY, true))
			idx[n++] = i;
	m->delay_notified = true;
	if (n)
		notice_send(q, m, DSN_DELAYED, idx, n, now_ms, NOTICE_THEN_ATTEMPT, false);
	else
		start_attempt(q, m, now_ms);
	free(idx);
}

/* ---- jobs ------------------------------------------------------------- */

static const char *rcpt_domain(const struct queue *q, const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at ? at + 1 : q->w->conf->hostname; /* <Postmaster> */
}

static struct djob *job_new(struct queue *q, struct qmsg *m, const struct sconn *sc,
			    const char *domain)
{
	struct djob *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->m = m;
	j->conf = q->w->conf;
	conf_ref(j->conf);
	j->sc = sc;
	snprintf(j->domain, sizeof(j->domain), "%s", sc->nhosts || sc->drop_dir ? "" : domain);
	for (char *p = j->domain; *p; p++)
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	j->cmsg = (struct smtp_client_msg){
		.from = m->from, .size = m->bytes + m->prefix_len, .body = m->body, .ret = m->ret,
		.envid = m->envid, .smtputf8 = m->smtputf8, .dotless = m->dotless,
	};
	return j;
}

/* Recipient i joins the job. The arrays grow as recipients come: a message
 * to many domains makes many jobs of one recipient each. */
static bool job_add(struct djob *j, unsigned i, const struct qrcpt *r)
{
	if (j->n == j->cap) {
		unsigned nc = j->cap ? j->cap * 2 : 4;
		unsigned *ni = realloc(j->idx, nc * sizeof(*ni));
		if (ni)
			j->idx = ni;
		struct smtp_client_rcpt *nr = ni ? realloc(j->crcpt, nc * sizeof(*nr)) : NULL;
		if (nr)
			j->crcpt = nr;
		struct smtp_client_result *ns = nr ? realloc(j->res, nc * sizeof(*ns)) : NULL;
		if (!ns)
			return false;
		memset(ns + j->cap, 0, (nc - j->cap) * sizeof(*ns));
		j->res = ns;
		j->cap = nc;
	}
	j->idx[j->n] = i;
	j->crcpt[j->n] = (struct smtp_client_rcpt){
		.addr = r->addr, .notify = r->notify, .orcpt = r->orcpt};
	j->n++;
	return true;
}

static void job_free(struct djob *j)
{
	conf_unref(j->conf);
	free(j->idx);
	free(j->crcpt);
	free(j->res);
	free(j);
}

/* Splits the pending recipients of m into jobs, one per destination (and
 * per max_recipients_per_message), and hands them to delivery. */
static void start_attempt(struct queue *q, struct qmsg *m, int64_t now_ms)
{
	struct djob *jobs = NULL;
	bool unroutable = false;
	for (unsigned i = 0; i < m->nrcpt; i++) {
		struct qrcpt *r = &m->r[i];
		if (r->state != SPOOL_RCPT_PENDING)
			continue;
		const char *dom = rcpt_domain(q, r->addr);
		/* A content rule's route overrides the address spaces. */
		const struct sconn *sc = m->route ? conf_sconn_named(q->w->conf, m->route)
						  : conf_route(q->w->conf, dom, strlen(dom));
		if (!sc && m->route) {
			char why[200];
			snprintf(why, sizeof(why), "451 4.4.4 Send connector %.100s is not configured",
				 m->route);
			set_result(r, "4.4.4", why, NULL);
			free(m->last_error);
			m->last_error = strdup(r->reply);
			unroutable = true;
			continue;
		}
		if (!sc) {
			/* The configuration changed since it was accepted. */
			set_result(r, "4.4.4", "451 4.4.4 No send connector for this recipient", NULL);
			free(m->last_error);
			m->last_error = strdup(r->reply);
			unroutable = true;
			continue;
		}
		struct djob *j = jobs;
		for (; j; j = j->next)
			if (j->sc == sc && j->n < sc->max_recipients_per_message &&
			    (sc->nhosts || sc->drop_dir || strcasecmp(j->domain, dom) == 0))
				break;
		bool fresh = !j;
		if (fresh && !(j = job_new(q, m, sc, dom)))
			continue; /* out of memory: it stays pending */
		if (!job_add(j, i, r)) {
			if (fresh)
				job_free(j);
			continue;
		}
		if (fresh) {
			j->next = jobs;
			jobs = j;
		}
	}
	if (!jobs) {
		finish_round(q, m, unroutable, now_ms);
		return;
	}
	for (struct djob *j = jobs; j; j = j->next) {
		j->cmsg.rcpt = j->crcpt;
		j->cmsg.nrcpt = j->n;
		m->busy++;
	}
	while (jobs) {
		struct djob *j = jobs;
		jobs = j->next;
		j->next = NULL;
		q->submit(q->dl, j);
	}
}

void queue_flush_all(struct queue *q)
{
	/* Every key becomes 0 but the held ones' (INT64_MAX): the held go
	 * to the end, and 0s then INT64_MAXs is a heap. */
	size_t due = 0;
	for (size_t i = 0; i < q->n; i++)
		if (!q->heap[i]->held) {
			q->heap[i]->next_ms = 0;
			heap_swap(q, i, due++);
		}
	log_msg(LOG_INFO, "event=flush worker=%u messages=%zu held=%zu", q->w->id, due,
		q->n - due);
}

void queue_run(struct queue *q)
{
	struct wctx *w = q->w;
	int64_t now_ms = w->wall_ms;
	if (w->stopping || w->conf->queue.hold || !q->n || q->heap[0]->next_ms > now_ms)
		return;
	const struct queue_conf *qc = &w->conf->queue;
	/* What is left due waits for the turn after some finish (completions
	 * are loop events, and the tick runs this again). */
	while (q->n && q->heap[0]->next_ms <= now_ms && q->nout < q->active_max) {
		/* never a held one: schedule() keeps them at INT64_MAX */
		struct qmsg *m = heap_pop(q);
		if (now_ms - m->arrival_ms >= (int64_t)qc->message_expiration_ms) {
			expire(q, m, now_ms);
			continue;
		}
		attempt_due(q, m, now_ms);
	}
}

void queue_job_done_cb(void *arg, struct djob *j)
{
	queue_job_done(arg, j);
}

/* A job (or a success notice standing in for it) lets go of m; the last
 * one ends the round. */
static void job_release(struct queue *q, struct qmsg *m, int64_t now_ms)
{
	assert(m->busy > 0);
	if (--m->busy)
		return;
	bool a = m->attempted_round;
	m->attempted_round = false;
	finish_round(q, m, a, now_ms);
}

void queue_job_done(struct queue *q, struct djob *j)
{
	struct qmsg *m = j->m;
	int64_t now_ms = q->w->wall_ms;
	struct wctx *w = q->w;
	unsigned sid = j->sc->stats_id;
	unsigned nsuccess = 0, *success = NULL; /* rare: allocated when needed */
	for (unsigned k = 0; k < j->n; k++) {
		struct qrcpt *r = &m->r[j->idx[k]];
		const struct smtp_client_result *res = &j->res[k];
		if (j->not_attempted)
			continue;
		set_result(r, res->status[0] ? res->status : default_status(res->code), res->text,
			   j->remote);
		if (res->code / 100 == 2) {
			r->state = SPOOL_RCPT_DELIVERED;
			m->pending--;
			record(q, m, j->idx[k], SPOOL_ST_DELIVERED, res->text);
			log_result("deliver", m, r, j->sc->name, j->tls, now_ms);
			metric_add(&w->m->send[sid].delivered, 1);
			/* RFC 3461 5.2: a next hop without DSN support ends the
			 * chain: "relayed"; a drop directory is final: "delivered". */
			if ((r->notify & SMTP_NOTIFY_SUCCESS) && !j->dsn_passed) {
				if (!success)
					success = calloc(j->n, sizeof(*success));
				if (success)
					success[nsuccess++] = j->idx[k];
			}
		} else if (res->code / 100 == 5) {
			r->failed_now = true;
			log_result("bounce", m, r, j->sc->name, j->tls, now_ms);
			metric_add(&w->m->send[sid].bounced, 1);
		} else {
			free(m->last_error);
			m->last_error = xdup(res->text);
			log_result("defer", m, r, j->sc->name, j->tls, now_ms);
			metric_add(&w->m->send[sid].deferred, 1);
		}
	}
	enum dsn_action done_as = j->sc->drop_dir ? DSN_DELIVERED : DSN_RELAYED;
	if (!j->not_attempted)
		m->attempted_round = true;
	job_free(j);
	/* A success notice keeps the job's hold on m until it is out. */
	if (nsuccess)
		notice_send(q, m, done_as, success, nsuccess, now_ms, NOTICE_THEN_RELEASE, false);
	else
		job_release(q, m, now_ms);
	free(success);
}

bool queue_idle(const struct queue *q)
{
	return q->nreads == 0 && spool_compact_idle(&q->compact);
}

void queue_tick(struct queue *q)
{
	spool_compact_tick(&q->compact, q->heap, q->n);
}

static void ctl_flush_started(struct queue *q);
static void ctl_flush_done(struct queue *q, bool ok);

void queue_flush_started(struct queue *q)
{
	spool_compact_flush_started(&q->compact);
	ctl_flush_started(q);
}

void queue_flush_done(struct queue *q, bool ok)
{
	spool_compact_flush_done(&q->compact, ok);
	ctl_flush_done(q, ok);
}

/* ---- operator requests (B.11) ------------------------------------------------ */

/* A segment an operator's records went into, and where they end. Held
 * until the part is answered, so that it is still there to look at. */
struct qctl_seg {
	struct spool_seg *seg;
	uint64_t end;
};

static void ctl_note(struct queue *q, struct qctl_part *p, struct spool_seg *seg)
{
	(void)q;
	uint64_t end = spool_seg_tail(seg);
	for (unsigned i = p->nsegs; i-- > 0;)
		if (p->segs[i].seg == seg) {
			p->segs[i].end = end;
			return;
		}
	if (p->nsegs == p->segs_cap) {
		unsigned nc = p->segs_cap ? p->segs_cap * 2 : 8;
		struct qctl_seg *ns = realloc(p->segs, nc * sizeof(*ns));
		if (!ns) {
			p->failed = true;
			return;
		}
		p->segs = ns;
		p->segs_cap = nc;
	}
	spool_seg_hold(seg, 0);
	p->segs[p->nsegs++] = (struct qctl_seg){seg, end};
}

static void ctl_finish(struct queue *q, struct qctl_part *p)
{
	for (unsigned i = 0; i < p->nsegs; i++)
		spool_seg_put(q->w->spool, p->segs[i].seg, 0);
	p->nsegs = 0;
	qctl_part_done(p);
}

static void ctl_unlink(struct queue *q, struct qctl_part *p)
{
	for (struct qctl_part **pp = &q->ctl_wait; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			return;
		}
}

/* Nothing was written, or something could not be: answered now. Else it
 * waits for the flush that covers its records (queue_flush_*). */
static void ctl_settle(struct queue *q, struct qctl_part *p)
{
	if (p->inflight || (p->nsegs && !p->failed))
		return;
	ctl_unlink(q, p);
	ctl_finish(q, p);
}

static void ctl_flush_started(struct queue *q)
{
	for (struct qctl_part *p = q->ctl_wait; p; p = p->next) {
		if (p->inflight || p->covered)
			continue;
		bool all = true;
		for (unsigned i = 0; all && i < p->nsegs; i++)
			all = p->segs[i].end <= spool_seg_written_prefix(p->segs[i].seg);
		if (!all)
			continue;
		p->covered = true;
		for (unsigned i = 0; i < p->nsegs; i++)
			p->failed |= spool_seg_lost_before(p->segs[i].seg, p->segs[i].end);
	}
}

static void ctl_flush_done(struct queue *q, bool ok)
{
	struct qctl_part **pp = &q->ctl_wait;
	while (*pp) {
		struct qctl_part *p = *pp;
		if (!p->covered) {
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		p->failed |= !ok;
		ctl_finish(q, p);
	}
}

static enum qctl_state msg_state(const struct queue *q, const struct qmsg *m)
{
	if (m->held)
		return QCTL_HELD;
	if (m->heap == SIZE_MAX || m->next_ms <= q->w->wall_ms)
		return QCTL_ACTIVE;
	return QCTL_DEFERRED;
}

/* The view of m the filters and rows take; r has room for m->nrcpt, or
 * is NULL for a view without recipients. */
static void msg_view(const struct queue *q, const struct qmsg *m, struct qctl_view *v,
		     struct qctl_rview *r)
{
	for (unsigned i = 0; r && i < m->nrcpt; i++)
		r[i] = (struct qctl_rview){
			.addr = m->r[i].addr, .status = m->r[i].status, .reply = m->r[i].reply,
			.state = m->r[i].state == SPOOL_RCPT_DELIVERED ? QCTL_R_DELIVERED
				: m->r[i].state == SPOOL_RCPT_FAILED ? QCTL_R_FAILED : QCTL_R_PENDING,
		};
	*v = (struct qctl_view){
		.id = m->id, .arrival = m->arrival, .size = m->bytes, .from = m->from,
		.client = m->client, .connector = m->connector, .state = msg_state(q, m),
		.held_reason = m->held_reason, .attempts = m->attempts,
		.next_ms = m->next_ms == INT64_MAX ? 0 : m->next_ms, .last_error = m->last_error,
		.nrcpt = m->nrcpt, .pending = m->pending, .r = r,
	};
}

/* Every message once, for a scan that changes nothing: the schedule's
 * array (its messages prefetched ahead: a million of them are mostly
 * cache misses, and independent ones overlap), then the out list. */
struct msg_iter {
	size_t i;
	struct qmsg *out;
	bool in_out;
};

#define PREFETCH_AHEAD 16

static struct qmsg *iter_next(const struct queue *q, struct msg_iter *it)
{
	if (!it->in_out) {
		if (it->i < q->n) {
			if (it->i + PREFETCH_AHEAD < q->n)
				__builtin_prefetch(q->heap[it->i + PREFETCH_AHEAD]);
			return q->heap[it->i++];
		}
		it->in_out = true;
		it->out = q->out;
	}
	struct qmsg *m = it->out;
	if (m)
		it->out = m->out_next;
	return m;
}

/* The rview scratch of a scan, grown to the largest message. */
struct ctl_scratch {
	struct qctl_rview *r;
	unsigned cap;
};

static bool scratch_fit(struct ctl_scratch *s, unsigned n)
{
	if (n <= s->cap)
		return true;
	struct qctl_rview *nr = realloc(s->r, n * sizeof(*nr));
	if (!nr)
		return false;
	s->r = nr;
	s->cap = n;
	return true;
}

/* show queue: the offset+limit smallest ids matched, in a max-heap on
 * id, so a listing of a million messages costs one pass and keeps only
 * what can be shown. */
static void pick_push(struct qmsg **h, size_t *n, size_t k, struct qmsg *m)
{
	size_t i;
	if (*n < k) {
		i = (*n)++;
		h[i] = m;
		while (i > 0 && h[(i - 1) / 2]->id < h[i]->id) {
			struct qmsg *t = h[i];
			h[i] = h[(i - 1) / 2];
			h[(i - 1) / 2] = t;
			i = (i - 1) / 2;
		}
		return;
	}
	if (m->id >= h[0]->id)
		return;
	h[0] = m;
	for (i = 0;;) {
		size_t l = 2 * i + 1, r = l + 1, big = i;
		if (l < *n && h[l]->id > h[big]->id)
			big = l;
		if (r < *n && h[r]->id > h[big]->id)
			big = r;
		if (big == i)
			break;
		struct qmsg *t = h[i];
		h[i] = h[big];
		h[big] = t;
		i = big;
	}
}

static int pick_cmp(const void *a, const void *b)
{
	const struct qmsg *x = *(struct qmsg *const *)a, *y = *(struct qmsg *const *)b;
	return x->id < y->id ? -1 : x->id > y->id;
}

static bool row_add(struct qctl_part *p, size_t *cap, uint64_t id, char *text)
{
	if (p->nrows == *cap) {
		size_t nc = *cap ? *cap * 2 : 64;
		struct qctl_row *nr = realloc(p->rows, nc * sizeof(*nr));
		if (!nr) {
			free(text);
			return false;
		}
		p->rows = nr;
		*cap = nc;
	}
	p->rows[p->nrows++] = (struct qctl_row){id, text};
	return true;
}

static char *row_text(struct queue *q, struct qctl_part *p, struct qmsg *m,
		      struct ctl_scratch *sc)
{
	struct qctl_view v;
	if (!scratch_fit(sc, m->nrcpt))
		return NULL;
	msg_view(q, m, &v, sc->r);
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	if (!f)
		return NULL;
	qctl_write_row(f, &v, p->req->cmd.json, p->req->now);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

static void ctl_show(struct queue *q, struct qctl_part *p, struct ctl_scratch *sc)
{
	const struct qctl_req *req = p->req;
	const struct qctl_cmd *c = &req->cmd;
	bool rcpts = qctl_filter_needs_rcpts(&c->f);
	struct qctl_view v;
	size_t cap = 0;
	if (req->render && qctl_filter_empty(&c->f)) {
		/* The page's rows from the id list, up to its last id. */
		for (struct qmsg *m = q->id_head; m && m->id <= req->render_hi; m = m->id_next) {
			if (m->id < req->render_lo)
				continue;
			p->matched++;
			char *text = row_text(q, p, m, sc);
			if (!text || !row_add(p, &cap, m->id, text))
				p->failed = true;
		}
		return;
	}
	if (req->render) {
		/* The second round: the page's rows. */
		struct msg_iter it = {0};
		for (struct qmsg *m; (m = iter_next(q, &it));) {
			if (m->id < req->render_lo || m->id > req->render_hi ||
			    (rcpts && !scratch_fit(sc, m->nrcpt)))
				continue;
			msg_view(q, m, &v, rcpts ? sc->r : NULL);
			if (!qctl_match(&c->f, &v))
				continue;
			p->matched++;
			char *text = row_text(q, p, m, sc);
			if (!text || !row_add(p, &cap, m->id, text))
				p->failed = true;
		}
		return;
	}
	size_t k = (size_t)c->offset + c->limit, n = 0;
	if (k > q->n + q->nout)
		k = q->n + q->nout;
	if (qctl_filter_empty(&c->f)) {
		/* Every message matches: the first k by id are the list's. */
		p->matched = q->n + q->nout;
		p->rows = calloc(k ? k : 1, sizeof(*p->rows));
		struct qmsg *m = q->id_head;
		for (size_t i = 0; p->rows && m && i < k; i++, m = m->id_next) {
			char *text = req->ids_only ? NULL : row_text(q, p, m, sc);
			if (!req->ids_only && !text) {
				p->failed = true;
				continue;
			}
			p->rows[p->nrows++] = (struct qctl_row){m->id, text};
		}
		if (!p->rows)
			p->failed = true;
		return;
	}
	struct qmsg **h = malloc((k ? k : 1) * sizeof(*h));
	if (!h) {
		p->failed = true;
		return;
	}
	struct msg_iter it = {0};
	for (struct qmsg *m; (m = iter_next(q, &it));) {
		if (rcpts && !scratch_fit(sc, m->nrcpt))
			continue;
		msg_view(q, m, &v, rcpts ? sc->r : NULL);
		if (!qctl_match(&c->f, &v))
			continue;
		p->matched++;
		if (k)
			pick_push(h, &n, k, m);
	}
	qsort(h, n, sizeof(*h), pick_cmp);
	p->rows = calloc(n ? n : 1, sizeof(*p->rows));
	cap = n;
	for (size_t i = 0; p->rows && i < n; i++) {
		char *text = req->ids_only ? NULL : row_text(q, p, h[i], sc);
		if (!req->ids_only && !text) {
			p->failed = true;
			continue;
		}
		p->rows[p->nrows++] = (struct qctl_row){h[i]->id, text};
	}
	free(h);
}

/* Where a pending recipient goes: its send connector, or its domain for
 * MX delivery, as start_attempt would split it. */
static const char *dest_of(struct queue *q, const char *addr, char *buf, size_t cap,
			   bool *throttled)
{
	const char *dom = rcpt_domain(q, addr);
	const struct sconn *sc = conf_route(q->w->conf, dom, strlen(dom));
	*throttled = false;
	if (!sc)
		return "(no send connector)";
	if (sc->nhosts || sc->drop_dir) {
		*throttled = deliver_throttled(q->dl, sc->name, "");
		return sc->name;
	}
	snprintf(buf, cap, "%s", dom);
	for (char *t = buf; *t; t++)
		if (*t >= 'A' && *t <= 'Z')
			*t = (char)(*t - 'A' + 'a');
	*throttled = deliver_throttled(q->dl, sc->name, buf);
	return buf;
}

/* Routes of the domains seen in one show destinations: most recipients
 * share a few domains, and routing one is a connector lookup. */
#define ROUTE_CACHE 512
struct route_memo {
	char dom[256];            /* "" empty slot */
	char name[256];
	bool throttled;
	struct qctl_dest *d;      /* its entry in the part's table ... */
	size_t cap;               /* ... while the table has this size */
};

static struct route_memo *dest_cached(struct queue *q, struct route_memo *memo,
				      const char *addr, struct route_memo *spill)
{
	const char *dom = rcpt_domain(q, addr);
	uint64_t h = 1469598103934665603ull;
	for (const char *t = dom; *t; t++)
		h = (h ^ (unsigned char)(*t >= 'A' && *t <= 'Z' ? *t + 32 : *t)) * 1099511628211ull;
	struct route_memo *e = &memo[h % ROUTE_CACHE];
	if (e->dom[0] && strcasecmp(e->dom, dom) == 0)
		return e;
	char buf[256];
	bool th;
	const char *name = dest_of(q, addr, buf, sizeof(buf), &th);
	/* A domain too long to remember is routed every time. */
	if (strlen(dom) >= sizeof(e->dom))
		e = spill;
	snprintf(e->dom, sizeof(e->dom), "%.*s", (int)sizeof(e->dom) - 1, dom);
	snprintf(e->name, sizeof(e->name), "%s", name);
	e->throttled = th;
	e->d = NULL;
	return e;
}

static void ctl_destinations(struct queue *q, struct qctl_part *p, struct ctl_scratch *sc)
{
	const struct qctl_cmd *c = &p->req->cmd;
	bool rcpts = qctl_filter_needs_rcpts(&c->f);
	struct route_memo *memo = calloc(ROUTE_CACHE + 1, sizeof(*memo));
	if (!memo) {
		p->failed = true;
		return;
	}
	struct qctl_view v;
	struct msg_iter it = {0};
	for (struct qmsg *m; (m = iter_next(q, &it));) {
		if (rcpts && !scratch_fit(sc, m->nrcpt))
			continue;
		msg_view(q, m, &v, rcpts ? sc->r : NULL);
		if (!qctl_match(&c->f, &v))
			continue;
		p->matched++;
		for (unsigned i = 0; i < m->nrcpt; i++) {
			if (m->r[i].state != SPOOL_RCPT_PENDING)
				continue;
			struct route_memo *e = dest_cached(q, memo, m->r[i].addr, &memo[ROUTE_CACHE]);
			if (!e->d || e->cap != p->dests.cap) {
				e->d = qctl_dests_entry(&p->dests, e->name);
				e->cap = p->dests.cap;
			}
			if (!e->d || !qctl_dest_count(e->d, &v, e->throttled))
				p->failed = true;
			/* the spill slot is for one recipient only */
			memo[ROUTE_CACHE].d = NULL;
		}
	}
	free(memo);
}

static void ctl_log(struct queue *q, const struct qmsg *m, enum qctl_op op)
{
	(void)q;
	log_msg(LOG_INFO, "event=admin action=%s id=%s by=stats", qctl_op_name(op), m->idtxt);
}

static bool ctl_record(struct queue *q, struct qctl_part *p, struct qmsg *m, uint8_t kind,
		       const char *text)
{
	struct spool_state_rec r = {.rcpt = SPOOL_STATE_MSG, .kind = kind, .attempts = m->attempts,
				    .time_ms = q->w->wall_ms, .next_ms = m->next_ms};
	if (!spool_state_write(q->w->spool, m->seg, m->id, &r, text)) {
		p->failed = true;
		return false;
	}
	ctl_note(q, p, m->seg);
	return true;
}

/* One change to one message the filters matched. */
static void ctl_apply(struct queue *q, struct qctl_part *p, struct qmsg *m, enum qctl_op op)
{
	bool idle = m->heap != SIZE_MAX && !m->ctl;
	int64_t now = q->w->wall_ms;
	switch (op) {
	case QCTL_HOLD: {
		if (m->held) {
			p->skipped++;
			return;
		}
		char *why = strdup("operator");
		if (!why) {
			p->failed = true;
			return;
		}
		set_held(q, m, true);
		free(m->held_reason);
		m->held_reason = why;
		if (!ctl_record(q, p, m, SPOOL_ST_HELD, why)) {
			set_held(q, m, false);
			return;
		}
		if (idle) {
			/* Its key becomes INT64_MAX: down to the end. */
			heap_remove(q, m);
			schedule(q, m, m->next_ms);
		}
		break;
	}
	case QCTL_RELEASE:
	case QCTL_RETRY: {
		if (op == QCTL_RELEASE ? !m->held : m->held) {
			p->skipped++;
			return;
		}
		if (op == QCTL_RETRY && !idle) {
			p->busy++;
			return;
		}
		int64_t was = m->next_ms;
		bool held = m->held;
		m->next_ms = now;
		set_held(q, m, false);
		if (!ctl_record(q, p, m, SPOOL_ST_RELEASED, NULL)) {
			m->next_ms = was;
			set_held(q, m, held);
			return;
		}
		free(m->held_reason);
		m->held_reason = NULL;
		if (idle) {
			heap_remove(q, m);
			schedule(q, m, now);
		}
		break;
	}
	case QCTL_DELETE:
		if (!idle) {
			p->busy++;
			return;
		}
		if (!ctl_record(q, p, m, SPOOL_ST_REMOVED, "deleted by an operator"))
			return;
		ctl_log(q, m, op);
		p->touched++;
		heap_remove(q, m);
		qmsg_free(q, m);
		return;
	case QCTL_BOUNCE:
		if (!idle) {
			p->busy++;
			return;
		}
		ctl_log(q, m, op);
		p->touched++;
		heap_remove(q, m);
		for (unsigned i = 0; i < m->nrcpt; i++) {
			struct qrcpt *r = &m->r[i];
			if (r->state != SPOOL_RCPT_PENDING)
				continue;
			set_result(r, "5.0.0",
				   "550 5.0.0 Message removed from the queue by the relay's administrator",
				   NULL);
			r->failed_now = true;
		}
		/* The notice, then the FAILED records, then the end of m:
		 * qmsg_free tells the part. */
		m->ctl = p;
		p->inflight++;
		finish_round(q, m, false, now);
		return;
	case QCTL_SHOW:
	case QCTL_DESTINATIONS:
		return;
	}
	ctl_log(q, m, op);
	p->touched++;
}

/* hold, release...: the matching messages are picked first, then
 * changed, since a change moves them in the schedule, frees them (delete,
 * bounce) or adds one (a bounce's notice, never picked). */
static void ctl_change(struct queue *q, struct qctl_part *p, struct ctl_scratch *sc)
{
	const struct qctl_cmd *c = &p->req->cmd;
	bool rcpts = qctl_filter_needs_rcpts(&c->f);
	size_t total = q->n + q->nout, n = 0;
	struct qmsg **pick = malloc((total ? total : 1) * sizeof(*pick));
	if (!pick) {
		p->failed = true;
		return;
	}
	struct qctl_view v;
	struct msg_iter it = {0};
	for (struct qmsg *m; (m = iter_next(q, &it));) {
		if (rcpts && !scratch_fit(sc, m->nrcpt)) {
			p->failed = true;
			continue;
		}
		msg_view(q, m, &v, rcpts ? sc->r : NULL);
		if (!qctl_match(&c->f, &v))
			continue;
		pick[n++] = m;
		if (c->f.by_id)
			break;
	}
	/* In arrival order, as show queue lists them. */
	qsort(pick, n, sizeof(*pick), pick_cmp);
	for (size_t i = 0; i < n; i++) {
		p->matched++;
		ctl_apply(q, p, pick[i], c->op);
	}
	free(pick);
}

void queue_ctl(struct queue *q, struct qctl_part *p)
{
	const struct qctl_cmd *c = &p->req->cmd;
	struct ctl_scratch sc = {0};
	p->next = q->ctl_wait;
	q->ctl_wait = p;
	if (c->op == QCTL_SHOW) {
		ctl_show(q, p, &sc);
	} else if (c->op == QCTL_DESTINATIONS) {
		ctl_destinations(q, p, &sc);
	} else {
		ctl_change(q, p, &sc);
	}
	free(sc.r);
	ctl_settle(q, p);
}
