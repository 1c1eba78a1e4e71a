/* Delivery queue (see queue.h): schedule, routing into jobs, retries,
 * expiry and DSNs. Every state change goes into the message's own spool
 * segment before it counts: a bounce is written ahead of the FAILED records
 * it answers, so recovery never sees a failure whose bounce was lost. */
#include "queue.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "deliver.h"
#include "dsn.h"
#include "envelope.h"
#include "log.h"
#include "wctx.h"

/* ---- schedule: a binary heap on next_ms -------------------------------- */

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
	m->next_ms = at;
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
	return m;
}

/* ---- messages ---------------------------------------------------------- */

static void qmsg_free(struct queue *q, struct qmsg *m)
{
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
	bool ok = m->off && m->len && m->r && m->from && m->client && m->connector &&
		  (!env->envid || m->envid);
	for (uint32_t i = 0; ok && i < nchunks; i++)
		m->bytes += len[i];
	m->body = (uint8_t)env->body;
	m->ret = (uint8_t)env->ret;
	m->smtputf8 = env->smtputf8;
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
	spool_seg_hold(seg, m->bytes);
	metric_add(&q->w->m->queue_messages, 1);
	metric_add(&q->w->m->queue_bytes, m->bytes);
	if (!ok) {
		qmsg_free(q, m);
		return NULL;
	}
	return m;
}

void queue_init(struct queue *q, struct wctx *w)
{
	memset(q, 0, sizeof(*q));
	q->w = w;
}

static void move_finish(struct queue *q, struct qmove *mv, bool ok);

void queue_free(struct queue *q)
{
	while (q->moves) {
		struct qmove *mv = q->moves;
		q->moves = mv->next;
		move_finish(q, mv, false);
	}
	while (q->n)
		qmsg_free(q, heap_pop(q));
	free(q->heap);
	q->heap = NULL;
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
		log_msg(LOG_ERROR, "event=queue_error id=%016" PRIX64 " error=\"out of memory\"",
			sm->id);
		return;
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
		log_msg(LOG_ERROR, "event=recover_error id=%016" PRIX64 " error=\"unreadable envelope\"",
			f->id);
		envelope_full_free(&e);
		return;
	}
	uint64_t owner = spool_owner_seq(rc->q->w->spool->sp, f->id);
	if (!rc->seg || (owner && owner != f->seq)) {
		/* The older copy of a message compaction moved. */
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
	envelope_full_free(&e);
	if (!m)
		return;
	const struct spool_msg_state *st = f->state;
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
	schedule(rc->q, m, st->next_ms);
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

/* The original as stored, read back for a DSN: the whole message when
 * want_all, else enough to hold its header. */
static char *read_original(struct qmsg *m, bool want_all, size_t *got)
{
	uint64_t cap = want_all ? m->bytes : (m->bytes < 65536 ? m->bytes : 65536);
	char *buf = malloc(cap ? cap : 1);
	size_t n = 0;
	int fd = spool_seg_fd(m->seg);
	for (uint32_t i = 0; buf && i < m->nchunks && n < cap; i++) {
		size_t want = m->len[i] < cap - n ? m->len[i] : cap - n;
		ssize_t r = pread(fd, buf + n, want, (off_t)m->off[i]);
		if (r != (ssize_t)want) {
			free(buf);
			return NULL;
		}
		n += want;
	}
	*got = n;
	return buf;
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
		struct qmove *mv = sm->owner;
		mv->stage = 1;
		mv->failed = sm->err != 0;
		spool_msg_release(q->w->spool, sm);
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

/* Sends one notice about the recipients of m selected by want (a DSN
 * action for each): a bounce, a delay notice or a success notice. */
static bool notify(struct queue *q, struct qmsg *m, enum dsn_action action,
		   const unsigned *idx, unsigned n, int64_t now_ms)
{
	if (!n || !*m->from)
		return true; /* the null sender never gets a DSN */
	struct wctx *w = q->w;
	const struct queue_conf *qc = &w->conf->queue;
	struct dsn_rcpt *dr = calloc(n, sizeof(*dr));
	if (!dr)
		return false;
	for (unsigned k = 0; k < n; k++) {
		struct qrcpt *r = &m->r[idx[k]];
		dr[k] = (struct dsn_rcpt){
			.addr = r->addr, .orcpt = r->orcpt, .action = action,
			.status = r->status[0] ? r->status : action == DSN_DELAYED ? "4.0.0" : "5.0.0",
			.remote_mta = r->remote, .diagnostic = r->reply,
			.last_attempt = now_ms / 1000,
			.will_retry_until = action == DSN_DELAYED
				? (m->arrival_ms + (int64_t)qc->message_expiration_ms) / 1000 : 0,
		};
	}
	/* RET=FULL returns the whole message only up to max_return_size;
	 * a larger one comes back as headers, and is read as such. */
	bool full = m->ret == SMTP_RET_FULL && action == DSN_FAILED &&
		    (!qc->max_return_size || m->bytes <= qc->max_return_size);
	size_t olen = 0;
	char *orig = read_original(m, full, &olen);
	if (!orig) {
		free(dr);
		return false;
	}
	struct iovec iov = {orig, olen};
	char pm[300], msgid[64], rid[20];
	snprintf(pm, sizeof(pm), "postmaster@%s", w->conf->hostname);
	uint64_t did = wctx_next_msgid(w);
	snprintf(msgid, sizeof(msgid), "%016" PRIX64 ".dsn@%.40s", did, w->conf->hostname);
	struct dsn_msg dm = {
		.reporting_mta = w->conf->hostname, .postmaster = pm, .to = m->from,
		.envid = m->envid, .queue_id = m->idtxt, .received_from = m->client,
		.arrival = m->arrival, .now = now_ms / 1000, .message_id = msgid,
		.full = full, .rcpt = dr, .nrcpt = n, .orig = &iov,
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
	static const char *const kind[] = {"bounce", "delay", "success", "relayed"};
	if (ok)
		log_msg(LOG_INFO, "event=dsn kind=%s id=%s dsn_id=%s to=<%s> recipients=%u",
			kind[action], m->idtxt, rid, m->from, n);
	else
		log_msg(LOG_ERROR, "event=dsn_error kind=%s id=%s", kind[action], m->idtxt);
	free(orig);
	free(dr);
	return ok;
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

static void log_result(const char *event, const struct qmsg *m, const struct qrcpt *r,
		       const char *sc, int64_t now_ms)
{
	char q1[700], q2[200], q3[1100], q4[400];
	log_msg(LOG_INFO,
		"event=%s id=%s from=<%s> to=%s send_connector=%s relay=%s status=%s reply=%s delay=%.1f attempts=%u",
		event, m->idtxt, m->from, log_quote(q1, sizeof(q1), r->addr),
		log_quote(q2, sizeof(q2), sc ? sc : "none"),
		log_quote(q4, sizeof(q4), r->remote ? r->remote : "none"), r->status,
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

/* The end of a round of attempts for m: bounces for what failed, the
 * deferral record for what is left, or the end of the message. */
static void finish_round(struct queue *q, struct qmsg *m, bool attempted, int64_t now_ms)
{
	const struct queue_conf *qc = &q->w->conf->queue;
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
	if (owed && (!idx || !notify(q, m, DSN_FAILED, idx, nbounce, now_ms)))
		log_msg(LOG_ERROR, "event=bounce_error id=%s", m->idtxt);
	for (unsigned i = 0; i < m->nrcpt; i++) {
		struct qrcpt *r = &m->r[i];
		if (!r->failed_now)
			continue;
		r->failed_now = false;
		r->state = SPOOL_RCPT_FAILED;
		m->pending--;
		record(q, m, i, SPOOL_ST_FAILED, r->reply);
	}
	free(idx);
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
		log_result("expire", m, r, NULL, now_ms);
	}
	metric_add(&q->w->m->expired, 1);
	finish_round(q, m, false, now_ms);
}

static void maybe_delay_notice(struct queue *q, struct qmsg *m, int64_t now_ms)
{
	const struct queue_conf *qc = &q->w->conf->queue;
	if (m->delay_notified || !qc->delay_notification_ms || !*m->from ||
	    now_ms - m->arrival_ms < (int64_t)qc->delay_notification_ms)
		return;
	unsigned *idx = calloc(m->nrcpt, sizeof(*idx));
	unsigned n = 0;
	for (unsigned i = 0; idx && i < m->nrcpt; i++)
		if (m->r[i].state == SPOOL_RCPT_PENDING &&
		    wants(&m->r[i], SMTP_NOTIFY_DELAY, true))
			idx[n++] = i;
	m->delay_notified = true;
	if (n && notify(q, m, DSN_DELAYED, idx, n, now_ms))
		record(q, m, SPOOL_STATE_MSG, SPOOL_ST_DELAY_NOTIFIED, NULL);
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
		.from = m->from, .size = m->bytes, .body = m->body, .ret = m->ret,
		.envid = m->envid, .smtputf8 = m->smtputf8,
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
		const struct sconn *sc = conf_route(q->w->conf, dom, strlen(dom));
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
		deliver_submit(q->w->dl, j);
	}
}

void queue_flush_all(struct queue *q)
{
	/* All keys become 0: any order is a heap. */
	for (size_t i = 0; i < q->n; i++)
		q->heap[i]->next_ms = 0;
	log_msg(LOG_INFO, "event=flush worker=%u messages=%zu", q->w->id, q->n);
}

void queue_run(struct queue *q)
{
	struct wctx *w = q->w;
	int64_t now_ms = w->wall_ms;
	if (w->stopping || w->conf->queue.hold || !q->n || q->heap[0]->next_ms > now_ms)
		return;
	const struct queue_conf *qc = &w->conf->queue;
	while (q->n && q->heap[0]->next_ms <= now_ms) {
		struct qmsg *m = heap_pop(q);
		if (now_ms - m->arrival_ms >= (int64_t)qc->message_expiration_ms) {
			expire(q, m, now_ms);
			continue;
		}
		maybe_delay_notice(q, m, now_ms);
		start_attempt(q, m, now_ms);
	}
}

void queue_job_done_cb(void *arg, struct djob *j)
{
	queue_job_done(arg, j);
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
			log_result("deliver", m, r, j->sc->name, now_ms);
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
			log_result("bounce", m, r, j->sc->name, now_ms);
			metric_add(&w->m->send[sid].bounced, 1);
		} else {
			free(m->last_error);
			m->last_error = xdup(res->text);
			log_result("defer", m, r, j->sc->name, now_ms);
			metric_add(&w->m->send[sid].deferred, 1);
		}
	}
	if (nsuccess)
		notify(q, m, j->sc->drop_dir ? DSN_DELIVERED : DSN_RELAYED, success, nsuccess,
		       now_ms);
	free(success);
	bool attempted = !j->not_attempted;
	m->busy--;
	if (attempted)
		m->attempted_round = true;
	job_free(j);
	if (m->busy == 0) {
		bool a = m->attempted_round;
		m->attempted_round = false;
		finish_round(q, m, a, now_ms);
	}
}

/* ---- compaction ----------------------------------------------------------- */

/* A segment is deleted once its last queued message is finished; one that
 * keeps a few long-deferred messages would stay forever. Compaction copies
 * those into the current segment (bytes, envelope and delivery state), and
 * once the copies are durable the messages let go of the old segment. A
 * crash in between leaves two copies: recovery takes the newer one
 * (spool_owner_seq). */

#define COMPACT_INTERVAL_MS 5000
#define COMPACT_MAX_BYTES (16u << 20)   /* per round */

static void move_finish(struct queue *q, struct qmove *mv, bool ok)
{
	struct qmsg *m = mv->m;
	struct spool_worker *sw = q->w->spool;
	if (ok) {
		struct spool_seg *old = m->seg;
		m->seg = mv->to;
		m->nchunks = 1;
		m->off[0] = mv->off;
		m->len[0] = mv->len;
		spool_seg_put(sw, old, m->bytes);
	} else {
		spool_seg_put(sw, mv->to, m->bytes);
	}
	if (!q->w->stopping || m->heap == SIZE_MAX)
		schedule(q, m, m->next_ms);
	free(mv);
}

void queue_flush_started(struct queue *q)
{
	for (struct qmove *mv = q->moves; mv; mv = mv->next)
		if (mv->stage == 1 && mv->end <= spool_seg_written_prefix(mv->to)) {
			mv->stage = 2;
			mv->failed |= spool_seg_lost_before(mv->to, mv->end);
		}
}

void queue_flush_done(struct queue *q, bool ok)
{
	struct qmove **pp = &q->moves;
	while (*pp) {
		struct qmove *mv = *pp;
		if (mv->stage != 2) {
			pp = &mv->next;
			continue;
		}
		*pp = mv->next;
		move_finish(q, mv, ok && !mv->failed);
	}
}

static bool move_one(struct queue *q, struct qmsg *m)
{
	struct wctx *w = q->w;
	struct spool_worker *sw = w->spool;
	size_t len = 0;
	char *bytes = read_original(m, true, &len);
	if (!bytes || len != m->bytes) {
		free(bytes);
		return false;
	}
	int err = 0;
	struct spool_msg *sm = spool_msg_begin(sw, m->id, &err);
	struct qmove *mv = calloc(1, sizeof(*mv));
	if (!sm || !mv) {
		if (sm)
			spool_msg_release(sw, sm);
		free(mv);
		free(bytes);
		return false;
	}
	if (!spool_msg_append_owned(sw, sm, bytes, len)) {
		spool_msg_release(sw, sm);
		free(mv);
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
			.smtputf8 = m->smtputf8, .rcpt = rc, .nrcpt = m->nrcpt};
		mv->off = sm->off[0];
		mv->len = sm->len[0];
		committed = spool_msg_commit_envelope(sw, sm, m->idtxt, &env, m->connector,
						      m->client, "", m->arrival);
	}
	free(rc);
	if (!committed) {
		spool_msg_release(sw, sm);
		free(mv);
		return false;
	}
	mv->m = m;
	mv->to = sm->seg;
	spool_seg_hold(mv->to, m->bytes);
	mv->end = sm->end;
	/* Its delivery state follows it. */
	for (unsigned i = 0; i < m->nrcpt; i++)
		if (m->r[i].state != SPOOL_RCPT_PENDING) {
			struct spool_state_rec r = {
				.rcpt = i, .kind = m->r[i].state == SPOOL_RCPT_DELIVERED
							   ? SPOOL_ST_DELIVERED : SPOOL_ST_FAILED,
				.attempts = m->attempts, .time_ms = q->w->wall_ms};
			spool_state_write(sw, mv->to, m->id, &r, m->r[i].reply);
		}
	if (m->attempts) {
		struct spool_state_rec r = {.rcpt = SPOOL_STATE_MSG, .kind = SPOOL_ST_DEFERRED,
					    .attempts = m->attempts, .time_ms = q->w->wall_ms,
					    .next_ms = m->next_ms};
		spool_state_write(sw, mv->to, m->id, &r, m->last_error);
	}
	if (m->delay_notified) {
		struct spool_state_rec r = {.rcpt = SPOOL_STATE_MSG,
					    .kind = SPOOL_ST_DELAY_NOTIFIED, .time_ms = q->w->wall_ms};
		spool_state_write(sw, mv->to, m->id, &r, NULL);
	}
	sm->owner = mv;
	sm->internal = true;
	sm->move = true;
	mv->next = q->moves;
	q->moves = mv;
	if (spool_msg_written(sm))
		queue_internal_written(q, sm);
	return true;
}

void queue_tick(struct queue *q)
{
	struct wctx *w = q->w;
	if (w->stopping || q->moves || w->now_ms < q->next_compact_ms)
		return;
	q->next_compact_ms = w->now_ms + COMPACT_INTERVAL_MS;
	struct spool_seg *s = spool_compact_candidate(w->spool);
	if (!s)
		return;
	/* Messages in a delivery attempt move next round. */
	uint64_t bytes = 0;
	unsigned moved = 0;
	for (size_t i = 0; i < q->n && bytes < COMPACT_MAX_BYTES;) {
		struct qmsg *m = q->heap[i];
		if (m->seg != s || m->busy) {
			i++;
			continue;
		}
		heap_remove(q, m); /* heap[i] is another message now */
		if (!move_one(q, m)) {
			schedule(q, m, m->next_ms);
			break;
		}
		bytes += m->bytes;
		moved++;
	}
	if (moved)
		log_msg(LOG_INFO, "event=compact worker=%u segment=%016" PRIx64 " messages=%u bytes=%llu",
			w->id, spool_seg_seq(s), moved, (unsigned long long)bytes);
}
