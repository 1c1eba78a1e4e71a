/* Unit tests for engine/queue.c and the compaction it drives, on a real
 * spool and I/O backend in a temporary directory with a fake clock and a
 * fake delivery: backoff, expiry, bounces, delay and success notices,
 * NOTIFY, failed reads, and a notice's place before the records after it. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "config.h"
#include "io.h"
#include "log.h"
#include "metrics.h"
#include "queue.h"
#include "spool.h"
#include "wctx.h"

#define T0 1700000000000LL      /* the fake wall clock's start, ms */
#define MIN (60 * 1000LL)

static const char head_text[] =
	"Received: from client.example\r\nSubject: quarterly report\r\n\r\n";
static const char body_text[] = "The numbers are in.\r\n";

/* ---- the fake delivery ---------------------------------------------------- */

static struct djob *jobs[64];
static unsigned njobs;

static void fake_submit(struct deliver *dl, struct djob *j)
{
	assert_null(dl);
	assert_true(njobs < N_ELEMS(jobs));
	jobs[njobs++] = j;
}

static struct djob *next_job(void)
{
	if (njobs == 0)
		fail_msg("no job was submitted");
	struct djob *j = jobs[0];
	memmove(jobs, jobs + 1, --njobs * sizeof(jobs[0]));
	return j;
}

/* The job submitted for m, taken off the list; NULL when there is none. */
static struct djob *job_for(const struct qmsg *m)
{
	for (unsigned i = 0; i < njobs; i++)
		if (jobs[i]->m == m) {
			struct djob *j = jobs[i];
			memmove(jobs + i, jobs + i + 1, (--njobs - i) * sizeof(jobs[0]));
			return j;
		}
	return NULL;
}

/* One scripted reply, for the recipient addr (NULL: every recipient). */
struct reply {
	const char *addr;
	int code;
	const char *status;
	const char *text;
};

static void set_reply(struct djob *j, unsigned k, const struct reply *r)
{
	j->res[k].code = r->code;
	snprintf(j->res[k].status, sizeof(j->res[k].status), "%s", r->status);
	snprintf(j->res[k].text, sizeof(j->res[k].text), "%s", r->text);
}

/* ---- the rig: a spool, a backend, a worker context and its queue --------- */

static enum io_backend backend_now = IO_BACKEND_URING;

struct rig {
	char dir[64];
	int dirfd;
	struct io *io;
	struct spool sp;
	struct spool_worker sw;
	struct worker_metrics *m;
	struct wctx w;
	struct queue q;
	int read_fault;     /* reads complete with this instead (0: as they do) */
};

/* What a session keeps of a message until its group commit is done. */
struct inbound {
	struct smtp_envelope env;
	struct smtp_rcpt rcpt[4];
	int64_t arrival;
	uint64_t id;
	bool durable;
};

static void hook_durable(void *arg, struct spool_msg *sm, bool ok)
{
	struct rig *g = arg;
	struct inbound *in = sm->owner;
	assert_true(ok);
	queue_add_received(&g->q, sm, &in->env, "[127.0.0.1]", "In", in->arrival);
	in->durable = true;
	spool_msg_release(&g->sw, sm);
}

static void hook_flush_started(void *arg)
{
	struct rig *g = arg;
	queue_flush_started(&g->q);
}

static void hook_flush_done(void *arg, bool ok)
{
	struct rig *g = arg;
	queue_flush_done(&g->q, ok);
}

static const char conf_text[] =
	"server = { hostname = \"relay.test.example\"; spool_dir = \"%s\"; };\n"
	"receive_connectors = ( { name = \"In\"; bindings = [ \"127.0.0.1:2525\" ];\n"
	"  remote_ip_ranges = [ \"127.0.0.0/8\" ];\n"
	"  permission_groups = [ \"anonymous_relay\" ]; } );\n"
	"send_connectors = ( { name = \"Out\"; address_spaces = [ \"*\" ];\n"
	"  smart_hosts = [ \"127.0.0.1:2526\" ]; } );\n"
	"queue = { %s };\n";

/* Finished segments deleted by the spool's reaper thread (as postern
 * runs) instead of on the worker: the checks of what is left wait for it. */
static bool with_reaper;

static size_t segments_now(struct rig *g)
{
	size_t n = 0;
	spool_reaper_wait(&g->sp);
	free(spool_segments(g->dirfd, &n));
	/* and nothing half deleted is left (the reaper's ".deleting" names) */
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "ls %s | grep -q '\\" SPOOL_SEG_GONE "$'", g->dir);
	assert_int_not_equal(system(cmd), 0);
	return n;
}

/* queue_settings: the body of the queue group. false: no such backend.
 * reuse: the directory of a rig closed with rig_close_keep (a restart:
 * the queue recovers what is there). */
static bool rig_open_in(struct rig *g, const char *queue_settings, uint64_t segment_bytes,
			const char *reuse)
{
	memset(g, 0, sizeof(*g));
	njobs = 0;
	if (reuse) {
		snprintf(g->dir, sizeof(g->dir), "%s", reuse);
	} else {
		snprintf(g->dir, sizeof(g->dir), "/tmp/postern-queue-test-XXXXXX");
		assert_non_null(mkdtemp(g->dir));
	}
	g->dirfd = open(g->dir, O_RDONLY | O_DIRECTORY);
	assert_true(g->dirfd >= 0);
	char err[512], path[128];
	struct io_params p = {.entries = 256, .nbufs = 4, .bufsz = 4096};
	g->io = io_open(backend_now, &p, err, sizeof(err));
	if (!g->io)
		return false;
	snprintf(path, sizeof(path), "%s/postern.conf", g->dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, conf_text, g->dir, queue_settings);
	fclose(f);
	struct conf *c = conf_load(path, err, sizeof(err));
	if (!c)
		fail_msg("conf_load: %s", err);
	assert_int_equal(spool_open(&g->sp, g->dir, segment_bytes, err, sizeof(err)), 0);
	if (with_reaper)
		assert_int_equal(spool_reaper_start(&g->sp), 0);
	g->m = calloc(1, sizeof(*g->m));
	assert_non_null(g->m);
	struct spool_hooks h = {.durable = hook_durable, .flush_started = hook_flush_started,
				.flush_done = hook_flush_done, .arg = g};
	spool_worker_init(&g->sw, &g->sp, g->io, &h, g->m);
	g->w = (struct wctx){.id = 0, .nworkers = 1, .io = g->io, .conf = c,
			     .now_ms = 1000, .wall_ms = T0, .spool = &g->sw, .queue = &g->q,
			     .m = g->m};
	queue_init(&g->q, &g->w, fake_submit, NULL);
	if (reuse)
		queue_recover(&g->q, 1);
	return true;
}

static bool rig_open(struct rig *g, const char *queue_settings, uint64_t segment_bytes)
{
	return rig_open_in(g, queue_settings, segment_bytes, NULL);
}

static void rig_close_keep(struct rig *g, bool keep)
{
	while (njobs) {
		struct djob *j = next_job();
		j->not_attempted = true;
		queue_job_done(&g->q, j);
	}
	g->sw.stopping = true;
	queue_free(&g->q);
	spool_worker_free(&g->sw);
	io_close(g->io);
	spool_close(&g->sp);
	conf_unref(g->w.conf);
	free(g->m);
	close(g->dirfd);
	if (keep)
		return;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", g->dir);
	assert_int_equal(system(cmd), 0);
}

static void rig_close(struct rig *g)
{
	rig_close_keep(g, false);
}

/* The fake clock: wall time, and the monotonic clock with it. */
static void set_time(struct rig *g, int64_t wall_ms)
{
	g->w.wall_ms = wall_ms;
	g->w.now_ms = (uint64_t)(wall_ms - T0) + 1000;
}

/* One completion, handed on as worker.c does. */
static void dispatch(struct rig *g, const struct io_cqe *e)
{
	switch (e->op) {
	case IO_OP_SPOOL_WRITE: {
		int bid;
		struct spool_msg *m = spool_write_done(&g->sw, io_cqe_ptr(e), e->res, &bid);
		assert_true(bid < 0);
		if (!m || !spool_msg_written(m))
			return;
		if (m->internal)
			queue_internal_written(&g->q, m);
		else
			assert_true(spool_commit_add(&g->sw, m)); /* the session's part */
		return;
	}
	case IO_OP_SPOOL_SYNC:
		spool_commit_on_sync(&g->sw, e->res, e->tag);
		return;
	case IO_OP_READ: {
		struct io_cqe f = *e;
		if (g->read_fault)
			f.res = g->read_fault > 0 ? e->res - g->read_fault : g->read_fault;
		queue_on_read(&g->q, &f);
		return;
	}
	case IO_OP_WAKE:
		return;
	default:
		fail_msg("completion with op %u", e->op);
	}
}

/* Loop turns until nothing is in flight: every write done, flushed (state
 * records after their SPOOL_DIRT_WAIT_MS), and every read back. */
static void pump(struct rig *g)
{
	for (;;) {
		spool_commit_start(&g->sw, wctx_clock_ms(), false);
		if (!g->sw.pending_writes && !g->sw.flushing && !spool_dirty(&g->sw) &&
		    g->q.nreads == 0)
			break;
		struct io_cqe cqe[32];
		int n = io_wait(g->io, cqe, N_ELEMS(cqe));
		assert_true(n > 0);
		for (int i = 0; i < n; i++)
			dispatch(g, &cqe[i]);
	}
	assert_true(queue_idle(&g->q));
	CHECK_INT("waiting for a flush", g->sw.nready, 0);
}

/* A content rule's hold for the next message stored (NULL: none). */
static const char *next_held;

/* Stores a message as a session does (two chunks), without waiting. */
static void store(struct rig *g, struct inbound *in, const char *from,
		  const char *const *rcpt, const unsigned *notify, unsigned n, enum smtp_ret ret)
{
	memset(in, 0, sizeof(*in));
	assert_true(n <= N_ELEMS(in->rcpt));
	for (unsigned i = 0; i < n; i++)
		in->rcpt[i] = (struct smtp_rcpt){.addr = (char *)rcpt[i],
						 .notify = notify ? notify[i] : 0};
	in->env = (struct smtp_envelope){.from = (char *)from, .ret = ret, .rcpt = in->rcpt,
					 .nrcpt = n, .held = (char *)next_held};
	in->arrival = g->w.wall_ms / 1000;
	in->id = wctx_next_msgid(&g->w);
	char idtxt[WCTX_MSGID_LEN];
	wctx_msgid_text(in->id, idtxt);
	int err = 0;
	struct spool_msg *sm = spool_msg_begin(&g->sw, in->id, &err);
	assert_non_null(sm);
	sm->owner = in;
	assert_true(spool_msg_append(&g->sw, sm, head_text, strlen(head_text), -1));
	assert_true(spool_msg_append(&g->sw, sm, body_text, strlen(body_text), -1));
	assert_true(spool_msg_commit_envelope(&g->sw, sm, idtxt, &in->env, "In", "[127.0.0.1]",
					      "client.example", in->arrival));
}

static struct qmsg *queued(struct rig *g, uint64_t id)
{
	for (size_t i = 0; i < g->q.n; i++)
		if (g->q.heap[i]->id == id)
			return g->q.heap[i];
	return NULL;
}

/* An operator's request on the rig's one queue, as the stats thread
 * makes it; answered (r->left 0) once its changes are durable. */
static struct qctl_req *control(struct rig *g, enum qctl_op op, const char *args)
{
	struct qctl_cmd c;
	char err[256];
	if (qctl_parse(op, args, &c, err, sizeof(err)) < 0)
		fail_msg("qctl_parse(%s): %s", args, err);
	struct qctl_req *r = qctl_req_new(&c, 1);
	assert_non_null(r);
	queue_ctl(&g->q, &r->part[0]);
	return r;
}

/* The id list holds every message once, ascending (show queue's page). */
static void check_id_order(struct rig *g)
{
	size_t n = 0;
	for (struct qmsg *m = g->q.id_head; m; m = m->id_next, n++)
		if (m->id_next)
			assert_true(m->id < m->id_next->id);
	CHECK_INT("id list", n, g->q.n + g->q.nout);
}

static bool answered(struct qctl_req *r)
{
	return qctl_req_wait(r, 0);
}

static char *answer_text(struct qctl_req *r, char *buf, size_t cap)
{
	FILE *f = fmemopen(buf, cap, "w");
	assert_non_null(f);
	qctl_answer(f, r, true);
	fclose(f);
	return buf;
}

/* A message received now, durable and queued. */
static struct qmsg *receive(struct rig *g, const char *from, const char *const *rcpt,
			    const unsigned *notify, unsigned n, enum smtp_ret ret)
{
	struct inbound in;
	store(g, &in, from, rcpt, notify, n, ret);
	pump(g);
	assert_true(in.durable);
	struct qmsg *m = queued(g, in.id);
	assert_non_null(m);
	return m;
}

/* The generated messages (null sender) in the schedule. */
static unsigned notices(struct rig *g, struct qmsg **out, unsigned cap)
{
	unsigned k = 0;
	for (size_t i = 0; i < g->q.n; i++)
		if (g->q.heap[i]->from[0] == '\0' && k < cap)
			out[k++] = g->q.heap[i];
	return k;
}

/* Answers job j: each recipient gets the first reply scripted for it. */
static void answer_job(struct rig *g, struct djob *j, const struct reply *r, unsigned nr)
{
	snprintf(j->remote, sizeof(j->remote), "[127.0.0.1]:2526");
	for (unsigned k = 0; k < j->n; k++) {
		unsigned i = 0;
		while (i < nr && r[i].addr && strcmp(r[i].addr, j->crcpt[k].addr) != 0)
			i++;
		if (i == nr)
			fail_msg("no reply scripted for <%s>", j->crcpt[k].addr);
		set_reply(j, k, &r[i]);
	}
	queue_job_done(&g->q, j);
}

/* Answers the job submitted for m. */
static void answer(struct rig *g, const struct qmsg *m, const struct reply *r, unsigned nr)
{
	struct djob *j = job_for(m);
	if (!j) {
		fail_msg("no job for message %s", m->idtxt);
		return;
	}
	answer_job(g, j, r, nr);
}

static const struct reply defer = {NULL, 451, "4.4.1", "451 4.4.1 Try again later"};
static const struct reply accept_ = {NULL, 250, "2.0.0", "250 2.0.0 Ok"};

/* ---- what is on disk -------------------------------------------------------- */

struct rec {
	uint64_t seq, off;
	uint8_t type;
	uint64_t msg;
	uint8_t kind;       /* STATE */
	uint32_t rcpt;      /* STATE */
	bool notice;        /* COMMIT: from the null sender */
};

static char seg_bytes[1 << 20];

static size_t read_segment(struct rig *g, uint64_t seq)
{
	char name[64];
	snprintf(name, sizeof(name), "seg-%016llx.log", (unsigned long long)seq);
	int fd = openat(g->dirfd, name, O_RDONLY);
	assert_true(fd >= 0);
	ssize_t n = read(fd, seg_bytes, sizeof(seg_bytes));
	assert_true(n >= 0);
	close(fd);
	return (size_t)n;
}

/* Every record of every segment, in segment and file order; the bytes of
 * message id (its CHUNK payloads) into text when asked. */
static unsigned records(struct rig *g, struct rec *out, unsigned cap, uint64_t id, char *text,
			size_t textcap)
{
	size_t nseg = 0, tl = 0;
	uint64_t *seqs = spool_segments(g->dirfd, &nseg);
	assert_non_null(seqs);
	unsigned n = 0;
	for (size_t s = 0; s < nseg; s++) {
		size_t len = read_segment(g, seqs[s]);
		size_t off = 0;
		struct spool_rec_hdr h;
		while (off + sizeof(h) <= len) {
			memcpy(&h, seg_bytes + off, sizeof(h));
			if (h.magic != SPOOL_MAGIC || off + sizeof(h) + h.len > len)
				break;
			const char *p = seg_bytes + off + sizeof(h);
			struct rec r = {.seq = seqs[s], .off = off, .type = h.type, .msg = h.msg};
			if (h.type == SPOOL_REC_STATE) {
				struct spool_state_rec st;
				memcpy(&st, p, sizeof(st));
				r.kind = st.kind;
				r.rcpt = st.rcpt;
			}
			if (h.type == SPOOL_REC_COMMIT) {
				size_t el = h.len - sizeof(struct spool_commit_hdr);
				char env[1024];
				assert_true(el < sizeof(env));
				memcpy(env, p + sizeof(struct spool_commit_hdr), el);
				env[el] = '\0';
				r.notice = strstr(env, "\r\nfrom: <>") != NULL;
			}
			if (h.type == SPOOL_REC_CHUNK && h.msg == id && text) {
				assert_true(tl + h.len < textcap);
				memcpy(text + tl, p, h.len);
				tl += h.len;
			}
			assert_true(n < cap);
			out[n++] = r;
			off += sizeof(h) + h.len;
		}
	}
	if (text)
		text[tl] = '\0';
	free(seqs);
	return n;
}

/* Index of the first record matching, or -1. kind 0: any. */
static int find_rec(const struct rec *r, unsigned n, uint8_t type, uint64_t msg, uint8_t kind,
		    uint32_t rcpt)
{
	for (unsigned i = 0; i < n; i++)
		if (r[i].type == type && r[i].msg == msg &&
		    (type != SPOOL_REC_STATE || (r[i].kind == kind && r[i].rcpt == rcpt)))
			return (int)i;
	return -1;
}

static unsigned count_rec(const struct rec *r, unsigned n, uint8_t type, uint64_t msg,
			  uint8_t kind)
{
	unsigned c = 0;
	for (unsigned i = 0; i < n; i++)
		c += r[i].type == type && r[i].msg == msg &&
		     (type != SPOOL_REC_STATE || r[i].kind == kind);
	return c;
}

/* Notices on disk; the id of the last one into *id. */
static unsigned disk_notices(const struct rec *r, unsigned n, uint64_t *id)
{
	unsigned c = 0;
	for (unsigned i = 0; i < n; i++)
		if (r[i].type == SPOOL_REC_COMMIT && r[i].notice) {
			c++;
			*id = r[i].msg;
		}
	return c;
}

/* The notice's COMMIT record lies before record `after` in the same
 * segment: recovery cannot see the second without the first. */
static void assert_written_before(const struct rec *r, int notice_commit, int after)
{
	assert_true(notice_commit >= 0);
	assert_true(after >= 0);
	CHECK_INT("same segment", r[notice_commit].seq, r[after].seq);
	if (r[notice_commit].off >= r[after].off)
		fail_msg("notice at %llu, not before the record at %llu",
			 (unsigned long long)r[notice_commit].off,
			 (unsigned long long)r[after].off);
}

static unsigned occurrences(const char *hay, const char *needle)
{
	unsigned n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

static void assert_contains(const char *text, const char *want)
{
	if (!strstr(text, want))
		fail_msg("\"%s\" not in:\n%s", want, text);
}

static struct rec recs[4096];
static char text[64 << 10];

/* ---- tests ----------------------------------------------------------------- */

/* Each deferral doubles the wait, from retry_interval up to
 * max_retry_interval, and is recorded with its attempt count. */
static void test_retry_backoff_doubles_up_to_the_cap(void **state)
{
	struct rig g;
	if (!rig_open(&g, "retry_interval = \"1m\"; max_retry_interval = \"5m\";"
			  " message_expiration = \"1d\"; delay_notification = \"0\";", 1 << 20))
		skip();
	const char *rc[] = {"bob@far.test"};
	struct qmsg *m = receive(&g, "alice@app.test", rc, NULL, 1, SMTP_RET_NONE);
	static const int64_t want_wait[] = {1 * MIN, 2 * MIN, 4 * MIN, 5 * MIN, 5 * MIN};
	int64_t now = T0;
	for (unsigned a = 0; a < N_ELEMS(want_wait); a++) {
		queue_run(&g.q);
		CHECK_INT("jobs", njobs, 1);
		CHECK_STR("job's recipient", jobs[0]->crcpt[0].addr, "bob@far.test");
		CHECK_INT("busy", m->busy, 1);
		answer(&g, m, &defer, 1);
		pump(&g);
		CHECK_INT("attempts", m->attempts, a + 1);
		CHECK_INT("next attempt", m->next_ms - now, want_wait[a]);
		CHECK_STR("last error", m->last_error, "451 4.4.1 Try again later");
		/* Not a millisecond early. */
		set_time(&g, m->next_ms - 1);
		queue_run(&g.q);
		CHECK_INT("early", njobs, 0);
		now = m->next_ms;
		set_time(&g, now);
	}
	unsigned n = records(&g, recs, N_ELEMS(recs), 0, NULL, 0);
	CHECK_INT("deferral records", count_rec(recs, n, SPOOL_REC_STATE, m->id, SPOOL_ST_DEFERRED),
		  N_ELEMS(want_wait));
	struct qmsg *dsn[4];
	CHECK_INT("no notice", notices(&g, dsn, 4), 0);
	rig_close(&g);
}

/* A flush of more messages than may be active at once (or any burst that
 * comes due together) starts them as earlier ones finish: never more than
 * active_max out of the schedule, and every one delivered in the end. */
static void test_due_messages_wait_for_an_active_slot(void **state)
{
	struct rig g;
	if (!rig_open(&g, "retry_interval = \"1m\"; message_expiration = \"1d\";", 1 << 20))
		skip();
	g.q.active_max = 8;
	const char *rc[] = {"bob@far.test"};
	struct qmsg *m[40];
	for (unsigned i = 0; i < N_ELEMS(m); i++)
		m[i] = receive(&g, "alice@app.test", rc, NULL, 1, SMTP_RET_NONE);
	unsigned turns = 0, delivered = 0;
	while (delivered < N_ELEMS(m)) {
		queue_run(&g.q);
		unsigned want = N_ELEMS(m) - delivered < 8 ? N_ELEMS(m) - delivered : 8;
		CHECK_INT("jobs in flight", njobs, want);
		CHECK_INT("out of the schedule", g.q.nout, want);
		/* Three finish; the rest stay in flight across the turn. */
		for (unsigned k = 0; k < 3 && njobs; k++, delivered++)
			answer_job(&g, next_job(), &accept_, 1);
		pump(&g);
		assert_true(++turns < 100);
	}
	queue_run(&g.q);
	CHECK_INT("nothing left", njobs, 0);
	CHECK_INT("queue empty", g.q.n + g.q.nout, 0);
	rig_close(&g);
}

/* A job that never reached a next hop (stopping, rate limits) comes back
 * in a second, without counting as an attempt. */
static void test_not_attempted_is_retried_without_an_attempt(void **state)
{
	struct rig g;
	if (!rig_open(&g, "retry_interval = \"1m\"; message_expiration = \"1d\";", 1 << 20))
		skip();
	const char *rc[] = {"bob@far.test"};
	struct qmsg *m = receive(&g, "alice@app.test", rc, NULL, 1, SMTP_RET_NONE);
	queue_run(&g.q);
	struct djob *j = job_for(m);
	assert_non_null(j);
	j->not_attempted = true;
	queue_job_done(&g.q, j);
	pump(&g);
	CHECK_INT("attempts", m->attempts, 0);
	CHECK_INT("retry", m->next_ms, T0 + 1000);
	CHECK_INT("pending", m->pending, 1);
	unsigned n = records(&g, recs, N_ELEMS(recs), 0, NULL, 0);
	CHECK_INT("no deferral", count_rec(recs, n, SPOOL_REC_STATE, m->id, SPOOL_ST_DEFERRED), 0);
	set_time(&g, T0 + 999);
	queue_run(&g.q);
	CHECK_INT("early", njobs, 0);
	set_time(&g, T0 + 1000);
	queue_run(&g.q);
	CHECK_INT("again", njobs, 1);
	answer(&g, m, &defer, 1);
	pump(&g);
	CHECK_INT("now it counts", m->attempts, 1);
	CHECK_INT("backoff from the first", m->next_ms, T0 + 1000 + MIN);
	rig_close(&g);
}

/* A 5xx fails its recipient at once: the bounce names it alone, and it is
 * on disk before the FAILED record it answers. The original's other
 * recipient was delivered: the message is done. */
static void test_5xx_bounces_at_once(void **state)
{
	struct rig g;
	if (!rig_open(&g, "retry_interval = \"1m\"; message_expiration = \"1d\";", 1 << 20))
		skip();
	const char *rc[] = {"bob@far.test", "nobody@far.test"};
	struct qmsg *m = receive(&g, "alice@app.test", rc, NULL, 2, SMTP_RET_NONE);
	uint64_t id = m->id;
	queue_run(&g.q);
	static const struct reply r[] = {
		{"bob@far.test", 250, "2.0.0", "250 2.0.0 Ok"},
		{"nobody@far.test", 550, "5.1.1", "550 5.1.1 No such user"},
	};
	answer(&g, m, r, 2);
	/* The bounce's original is being read: nothing after it is written. */
	CHECK_INT("reads in flight", g.q.nreads, 1);
	assert_false(queue_idle(&g.q));
	CHECK_INT("still pending", m->r[1].state, SPOOL_RCPT_PENDING);
	pump(&g);
	assert_null(queued(&g, id));
	struct qmsg *dsn[4];
	CHECK_INT("notices", notices(&g, dsn, 4), 1);
	CHECK_INT("to", dsn[0]->nrcpt, 1);
	CHECK_STR("to", dsn[0]->r[0].addr, "alice@app.test");
	CHECK_INT("due", dsn[0]->next_ms, 0);
	CHECK_INT("queued", metric_get(&g.m->queue_messages), 1);
	unsigned sid = g.w.conf->sc[0].stats_id;
	CHECK_INT("bounced", metric_get(&g.m->send[sid].bounced), 1);
	CHECK_INT("delivered", metric_get(&g.m->send[sid].delivered), 1);
	unsigned n = records(&g, recs, N_ELEMS(recs), dsn[0]->id, text, sizeof(text));
	assert_contains(text, "To: <alice@app.test>\r\n");
	assert_contains(text, "X-Postern-Queue-ID: ");
	assert_contains(text, "Final-Recipient: rfc822; nobody@far.test\r\n");
	assert_contains(text, "Action: failed\r\nStatus: 5.1.1\r\n");
	assert_contains(text, "Diagnostic-Code: smtp; 550 5.1.1 No such user\r\n");
	assert_contains(text, "Subject: quarterly report\r\n");
	CHECK_INT("recipients in the report", occurrences(text, "Final-Recipient:"), 1);
	/* RET not FULL: headers only. */
	if (strstr(text, "The numbers are in."))
		fail_msg("the body came back without RET=FULL");
	int commit = find_rec(recs, n, SPOOL_REC_COMMIT, dsn[0]->id, 0, 0);
	int failed = find_rec(recs, n, SPOOL_REC_STATE, id, SPOOL_ST_FAILED, 1);
	assert_written_before(recs, commit, failed);
	assert_true(find_rec(recs, n, SPOOL_REC_STATE, id, SPOOL_ST_DELIVERED, 0) >= 0);
	/* The bounce itself goes out from the null sender. */
	struct qmsg *bounce = dsn[0];
	queue_run(&g.q);
	CHECK_INT("bounce's job", njobs, 1);
	struct djob *j = job_for(bounce);
	assert_non_null(j);
	CHECK_STR("null sender", j->cmsg.from, "");
	CHECK_STR("bounce's recipient", j->crcpt[0].addr, "alice@app.test");
	j->not_attempted = true;
	queue_job_done(&g.q, j);
	rig_close(&g);
}

/* Expiry fails every pending recipient with 4.4.7; with RET=FULL the whole
 * original (both of its chunks) comes back. */
static void test_expiry_bounces_to_the_sender(void **state)
{
	struct rig g;
	if (!rig_open(&g, "retry_interval = \"10m\"; max_retry_interval = \"10m\";"
			  " message_expiration = \"1h\"; delay_notification = \"0\";", 1 << 20))
		skip();
	const char *rc[] = {"bob@far.test", "carol@far.test"};
	struct qmsg *m = receive(&g, "alice@app.test", rc, NULL, 2, SMTP_RET_FULL);
	uint64_t id = m->id;
	for (int64_t t = T0; t < T0 + 60 * MIN; t += 10 * MIN) {
		set_time(&g, t);
		queue_run(&g.q);
		answer(&g, m, &defer, 1);
		pump(&g);
	}
	CHECK_INT("attempts", m->attempts, 6);
	set_time(&g, T0 + 60 * MIN);
	queue_run(&g.q);
	CHECK_INT("no attempt once expired", njobs, 0);
	CHECK_INT("reads in flight", g.q.nreads, 1);
	pump(&g);
	CHECK_INT("expired", metric_get(&g.m->expired), 1);
	assert_null(queued(&g, id));
	struct qmsg *dsn[4];
	CHECK_INT("notices", notices(&g, dsn, 4), 1);
	CHECK_STR("to", dsn[0]->r[0].addr, "alice@app.test");
	CHECK_STR("from", dsn[0]->from, "");
	unsigned n = records(&g, recs, N_ELEMS(recs), dsn[0]->id, text, sizeof(text));
	CHECK_INT("recipients in the report", occurrences(text, "Final-Recipient:"), 2);
	assert_contains(text, "Final-Recipient: rfc822; bob@far.test\r\nAction: failed\r\n"
			      "Status: 4.4.7\r\n");
	assert_contains(text, "Final-Recipient: rfc822; carol@far.test\r\nAction: failed\r\n"
			      "Status: 4.4.7\r\n");
	assert_contains(text, "said: 4.4.7 Message expired after 6 attempts; last error:\r\n"
			      "    451 4.4.1 Try again later\r\n");
	assert_contains(text, "Subject: quarterly report\r\n\r\nThe numbers are in.\r\n");
	int commit = find_rec(recs, n, SPOOL_REC_COMMIT, dsn[0]->id, 0, 0);
	for (uint32_t i = 0; i < 2; i++)
		assert_written_before(recs, commit,
				      find_rec(recs, n, SPOOL_REC_STATE, id, SPOOL_ST_FAILED, i));
	rig_close(&g);
}

/* Past delay_notification the sender hears once that the message waits;
 * the notice is on disk before its DELAY_NOTIFIED record, and the attempt
 * starts once it is out. */
static void test_delay_notice_once(void **state)
{
	struct rig g;
	if (!rig_open(&g, "retry_interval = \"15m\"; max_retry_interval = \"15m\";"
			  " message_expiration = \"1d\"; delay_notification = \"20m\";", 1 << 20))
		skip();
	const char *rc[] = {"bob@far.test"};
	struct qmsg *m = receive(&g, "alice@app.test", rc, NULL, 1, SMTP_RET_NONE);
	static const struct {
		int64_t at;
		unsigned notices;
	} rounds[] = {{0, 0}, {15 * MIN, 0}, {30 * MIN, 1}, {45 * MIN, 1}, {60 * MIN, 1}};
	uint64_t dsn_id = 0;
	unsigned n = 0;
	for (unsigned i = 0; i < N_ELEMS(rounds); i++) {
		set_time(&g, T0 + rounds[i].at);
		CHECK_INT("due", m->next_ms, i ? T0 + rounds[i].at : 0);
		queue_run(&g.q);
		if (i == 2) {
			/* The attempt waits for the notice. */
			assert_null(job_for(m));
			CHECK_INT("reads in flight", g.q.nreads, 1);
			pump(&g);
		}
		/* The notice's own delivery, once due, is left waiting. */
		answer(&g, m, &defer, 1);
		pump(&g);
		n = records(&g, recs, N_ELEMS(recs), 0, NULL, 0);
		CHECK_INT("notices", disk_notices(recs, n, &dsn_id), rounds[i].notices);
		CHECK_INT("delay_notified", m->delay_notified, rounds[i].notices);
		CHECK_INT("attempts", m->attempts, i + 1);
	}
	n = records(&g, recs, N_ELEMS(recs), dsn_id, text, sizeof(text));
	assert_contains(text, "To: <alice@app.test>\r\n");
	assert_contains(text, "Final-Recipient: rfc822; bob@far.test\r\nAction: delayed\r\n");
	CHECK_INT("one record",
		  count_rec(recs, n, SPOOL_REC_STATE, m->id, SPOOL_ST_DELAY_NOTIFIED), 1);
	int commit = find_rec(recs, n, SPOOL_REC_COMMIT, dsn_id, 0, 0);
	assert_written_before(recs, commit, find_rec(recs, n, SPOOL_REC_STATE, m->id,
						     SPOOL_ST_DELAY_NOTIFIED, SPOOL_STATE_MSG));
	rig_close(&g);
}

/* NOTIFY=NEVER: a failed recipient is recorded as failed, and nobody hears
 * of it; NOTIFY=DELAY alone does not ask for a bounce either. */
static void test_notify_never_suppresses_the_bounce(void **state)
{
	struct rig g;
	if (!rig_open(&g, "retry_interval = \"1m\"; message_expiration = \"1d\";", 1 << 20))
		skip();
	const char *rc[] = {"nobody@far.test", "gone@far.test"};
	static const unsigned notify[] = {SMTP_NOTIFY_NEVER, SMTP_NOTIFY_DELAY};
	struct qmsg *m = receive(&g, "alice@app.test", rc, notify, 2, SMTP_RET_NONE);
	uint64_t id = m->id;
	queue_run(&g.q);
	static const struct reply r = {NULL, 550, "5.1.1", "550 5.1.1 No such user"};
	answer(&g, m, &r, 1);
	CHECK_INT("nothing to read", g.q.nreads, 0);
	pump(&g);
	assert_null(queued(&g, id));
	CHECK_INT("queue", g.q.n, 0);
	CHECK_INT("queued", metric_get(&g.m->queue_messages), 0);
	unsigned n = records(&g, recs, N_ELEMS(recs), 0, NULL, 0);
	assert_true(find_rec(recs, n, SPOOL_REC_STATE, id, SPOOL_ST_FAILED, 0) >= 0);
	assert_true(find_rec(recs, n, SPOOL_REC_STATE, id, SPOOL_ST_FAILED, 1) >= 0);
	CHECK_INT("messages on disk", count_rec(recs, n, SPOOL_REC_COMMIT, id, 0), 1);
	uint64_t dsn_id = 0;
	CHECK_INT("notices", disk_notices(recs, n, &dsn_id), 0);
	rig_close(&g);
}

/* NOTIFY=SUCCESS, and the next hop did not take over DSN duty: the sender
 * gets a "relayed" notice; the message is done once that is out. */
static void test_notify_success_sends_a_relayed_notice(void **state)
{
	struct rig g;
	if (!rig_open(&g, "retry_interval = \"1m\"; message_expiration = \"1d\";", 1 << 20))
		skip();
	const char *rc[] = {"bob@far.test", "carol@far.test"};
	static const unsigned notify[] = {SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE, 0};
	struct qmsg *m = receive(&g, "alice@app.test", rc, notify, 2, SMTP_RET_NONE);
	uint64_t id = m->id;
	queue_run(&g.q);
	answer(&g, m, &accept_, 1);
	/* The notice holds the message like a job until it is out. */
	CHECK_INT("reads in flight", g.q.nreads, 1);
	CHECK_INT("held", m->busy, 1);
	pump(&g);
	assert_null(queued(&g, id));
	struct qmsg *dsn[4];
	CHECK_INT("notices", notices(&g, dsn, 4), 1);
	CHECK_STR("to", dsn[0]->r[0].addr, "alice@app.test");
	records(&g, recs, N_ELEMS(recs), dsn[0]->id, text, sizeof(text));
	CHECK_INT("recipients in the report", occurrences(text, "Final-Recipient:"), 1);
	assert_contains(text, "Final-Recipient: rfc822; bob@far.test\r\nAction: relayed\r\n"
			      "Status: 2.0.0\r\n");
	/* A next hop that passed the DSN request on owes the notice itself. */
	const char *rc2[] = {"dave@far.test"};
	static const unsigned notify2[] = {SMTP_NOTIFY_SUCCESS};
	m = receive(&g, "alice@app.test", rc2, notify2, 1, SMTP_RET_NONE);
	queue_run(&g.q);
	/* The first notice's own delivery is left waiting. */
	CHECK_INT("jobs", njobs, 2);
	struct djob *j = job_for(m);
	assert_non_null(j);
	j->dsn_passed = true;
	set_reply(j, 0, &accept_);
	queue_job_done(&g.q, j);
	CHECK_INT("no read", g.q.nreads, 0);
	pump(&g);
	unsigned n = records(&g, recs, N_ELEMS(recs), 0, NULL, 0);
	uint64_t dsn_id = 0;
	CHECK_INT("still one notice", disk_notices(recs, n, &dsn_id), 1);
	CHECK_INT("the first", dsn_id, dsn[0]->id);
	rig_close(&g);
}

/* A notice whose original cannot be read (an error, a short read) is not
 * sent; what waited for it goes on: the FAILED records of a bounce, the
 * attempt after a delay notice (without its record). */
static void test_failed_read_sends_no_notice(void **state)
{
	static const struct {
		const char *name;
		int fault;
	} cases[] = {{"EIO", -5}, {"short", 1}};
	for (unsigned c = 0; c < N_ELEMS(cases); c++) {
		struct rig g;
		if (!rig_open(&g, "retry_interval = \"30m\"; message_expiration = \"1d\";"
				  " delay_notification = \"20m\";", 1 << 20))
			skip();
		g.read_fault = cases[c].fault;
		const char *rc[] = {"bob@far.test", "nobody@far.test"};
		struct qmsg *m = receive(&g, "alice@app.test", rc, NULL, 2, SMTP_RET_FULL);
		uint64_t id = m->id;
		queue_run(&g.q);
		static const struct reply r[] = {
			{"bob@far.test", 451, "4.4.1", "451 4.4.1 Try again later"},
			{"nobody@far.test", 550, "5.1.1", "550 5.1.1 No such user"},
		};
		answer(&g, m, r, 2);
		CHECK_INT(cases[c].name, g.q.nreads, 1);
		pump(&g);
		CHECK_INT(cases[c].name, m->r[1].state, SPOOL_RCPT_FAILED);
		CHECK_INT(cases[c].name, m->attempts, 1);
		unsigned n = records(&g, recs, N_ELEMS(recs), 0, NULL, 0);
		uint64_t dsn_id = 0;
		CHECK_INT(cases[c].name, disk_notices(recs, n, &dsn_id), 0);
		assert_true(find_rec(recs, n, SPOOL_REC_STATE, id, SPOOL_ST_FAILED, 1) >= 0);
		/* The delay notice fails the same way; the attempt still starts. */
		set_time(&g, T0 + 30 * MIN);
		queue_run(&g.q);
		CHECK_INT(cases[c].name, g.q.nreads, 1);
		pump(&g);
		assert_true(m->delay_notified);
		answer(&g, m, r, 1);
		pump(&g);
		CHECK_INT(cases[c].name, m->attempts, 2);
		n = records(&g, recs, N_ELEMS(recs), 0, NULL, 0);
		CHECK_INT(cases[c].name, disk_notices(recs, n, &dsn_id), 0);
		CHECK_INT(cases[c].name,
			  count_rec(recs, n, SPOOL_REC_STATE, id, SPOOL_ST_DELAY_NOTIFIED), 0);
		rig_close(&g);
	}
}

/* Compaction: a long-deferred message alone in a segment full of finished
 * ones moves into the current segment (bytes read back asynchronously,
 * copied with its state), and the old segment goes. A move whose read
 * fails leaves the message where it was, to move at a later round. */
static void test_compaction_moves_a_deferred_message(void **state)
{
	struct rig g;
	if (!rig_open(&g, "retry_interval = \"1h\"; message_expiration = \"1d\";"
			  " delay_notification = \"0\";", 64 << 10))
		skip();
	const char *keep_rc[] = {"bob@keep.test"};
	struct qmsg *keep = receive(&g, "alice@app.test", keep_rc, NULL, 1, SMTP_RET_NONE);
	queue_run(&g.q);
	answer(&g, keep, &defer, 1);
	pump(&g);
	CHECK_INT("deferred", keep->attempts, 1);
	/* Finished messages fill the segment until a new one begins. */
	const char *go_rc[] = {"carol@go.test"};
	static struct inbound in[400];
	unsigned k = 0;
	for (; k < N_ELEMS(in); k++) {
		store(&g, &in[k], "alice@app.test", go_rc, NULL, 1, SMTP_RET_NONE);
		pump(&g);
		struct qmsg *m = queued(&g, in[k].id);
		assert_non_null(m);
		bool rolled = m->seg != keep->seg;
		queue_run(&g.q);
		answer(&g, m, &accept_, 1);
		pump(&g);
		if (rolled)
			break;
	}
	assert_true(k < N_ELEMS(in));
	size_t nseg = segments_now(&g);
	CHECK_INT("segments", nseg, 2);
	uint64_t next_ms = (uint64_t)keep->next_ms;
	struct spool_seg *old = keep->seg;

	g.read_fault = -5;
	queue_tick(&g.q);
	CHECK_INT("reads in flight", g.q.nreads, 1);
	pump(&g);
	assert_ptr_equal(queued(&g, keep->id), keep);
	assert_ptr_equal(keep->seg, old);
	CHECK_INT("two chunks still", keep->nchunks, 2);
	nseg = segments_now(&g);
	CHECK_INT("segments", nseg, 2);
	g.read_fault = 0;
	queue_tick(&g.q);
	CHECK_INT("not before the interval", g.q.nreads, 0);
	set_time(&g, g.w.wall_ms + 5000);

	queue_tick(&g.q);
	CHECK_INT("reads in flight", g.q.nreads, 1);
	assert_false(queue_idle(&g.q));
	assert_null(queued(&g, keep->id));
	pump(&g);
	assert_ptr_equal(queued(&g, keep->id), keep);
	assert_ptr_not_equal(keep->seg, old);
	CHECK_INT("one chunk", keep->nchunks, 1);
	CHECK_INT("when", keep->next_ms, next_ms);
	nseg = segments_now(&g);
	CHECK_INT("the old segment went", nseg, 1);
	unsigned n = records(&g, recs, N_ELEMS(recs), keep->id, text, sizeof(text));
	char want[256];
	snprintf(want, sizeof(want), "%s%s", head_text, body_text);
	CHECK_STR("moved bytes", text, want);
	CHECK_INT("its state", count_rec(recs, n, SPOOL_REC_STATE, keep->id, SPOOL_ST_DEFERRED), 1);
	/* Not again before the interval. */
	queue_tick(&g.q);
	CHECK_INT("no reads", g.q.nreads, 0);
	rig_close(&g);
}


/* A content rule's hold (env.held, the envelope's held: line): never
 * attempted, not by flush either, held again after a restart; release
 * makes it due now, is answered only once its record is durable, and
 * holds after a restart too. */
static void test_held_at_arrival_until_released(void **state)
{
	struct rig g;
	if (!rig_open(&g, "retry_interval = \"1h\"; message_expiration = \"1d\";", 1 << 20))
		skip();
	const char *rc[] = {"bob@far.test"};
	next_held = "card-numbers";
	struct qmsg *m = receive(&g, "alice@app.test", rc, NULL, 1, SMTP_RET_NONE);
	next_held = NULL;
	uint64_t id = m->id;
	struct qmsg *o = receive(&g, "carol@app.test", rc, NULL, 1, SMTP_RET_NONE);
	uint64_t oid = o->id;
	assert_true(m->held);
	CHECK_STR("reason", m->held_reason, "card-numbers");
	queue_run(&g.q);
	CHECK_INT("only the other one", njobs, 1);
	answer(&g, o, &defer, 1);
	pump(&g);
	queue_flush_all(&g.q);
	queue_run(&g.q);
	CHECK_INT("flush skips the held", njobs, 1);
	CHECK_INT("flushed the other", jobs[0]->m->id, oid);
	answer(&g, o, &defer, 1);
	pump(&g);
	char dir[64];
	snprintf(dir, sizeof(dir), "%s", g.dir);
	rig_close_keep(&g, true);

	assert_true(rig_open_in(&g, "retry_interval = \"1h\"; message_expiration = \"1d\";",
				1 << 20, dir));
	m = queued(&g, id);
	assert_non_null(m);
	assert_true(m->held);
	CHECK_STR("reason after a restart", m->held_reason, "card-numbers");
	check_id_order(&g);
	CHECK_INT("two messages", g.q.n + g.q.nout, 2);
	set_time(&g, T0 + 2 * 3600 * 1000LL);
	queue_run(&g.q);
	CHECK_INT("the other one is due, the held one is not", njobs, 1);
	CHECK_INT("the other", jobs[0]->m->id, oid);
	answer(&g, jobs[0]->m, &defer, 1);
	pump(&g);

	char buf[512];
	struct qctl_req *r = control(&g, QCTL_RELEASE, "all state=held");
	assert_false(answered(r)); /* its record is not durable yet */
	pump(&g);
	assert_true(answered(r));
	CHECK_STR("answer", answer_text(r, buf, sizeof(buf)), "released: 1\n");
	qctl_req_put(r);
	assert_false(m->held);
	unsigned n = records(&g, recs, N_ELEMS(recs), 0, NULL, 0);
	CHECK_INT("release record", count_rec(recs, n, SPOOL_REC_STATE, id, SPOOL_ST_RELEASED), 1);
	queue_run(&g.q);
	CHECK_INT("due now", njobs, 1);
	CHECK_INT("the released one", jobs[0]->m->id, id);
	answer(&g, m, &defer, 1);
	pump(&g);
	rig_close_keep(&g, true);

	assert_true(rig_open_in(&g, "retry_interval = \"1h\"; message_expiration = \"1d\";",
				1 << 20, dir));
	m = queued(&g, id);
	assert_non_null(m);
	assert_false(m->held); /* the record wins over the envelope's line */
	rig_close(&g);
}

/* hold, retry, delete and bounce on the queue itself: what each touches,
 * its records, and that a bounce's FAILED record follows its notice. */
static void test_operator_hold_delete_bounce(void **state)
{
	struct rig g;
	if (!rig_open(&g, "retry_interval = \"1h\"; message_expiration = \"1d\";", 1 << 20))
		skip();
	const char *rc[] = {"bob@far.test", "dave@other.test"};
	struct qmsg *a = receive(&g, "alice@app.test", rc, NULL, 2, SMTP_RET_NONE);
	struct qmsg *b = receive(&g, "mallory@spam.test", rc + 1, NULL, 1, SMTP_RET_NONE);
	struct qmsg *c = receive(&g, "mallory@spam.test", rc, NULL, 1, SMTP_RET_NONE);
	uint64_t aid = a->id, bid = b->id, cid = c->id;
	char buf[512];
	struct qctl_req *r = control(&g, QCTL_HOLD, "all domain=far.test");
	pump(&g);
	assert_true(answered(r));
	CHECK_STR("hold", answer_text(r, buf, sizeof(buf)), "held: 2\n");
	qctl_req_put(r);
	assert_true(a->held && c->held && !b->held);
	queue_run(&g.q);
	CHECK_INT("only b", njobs, 1);
	CHECK_INT("b", jobs[0]->m->id, bid);
	/* b is in delivery: not deleted under its job's feet */
	r = control(&g, QCTL_DELETE, "all sender=mallory@spam.test");
	pump(&g);
	CHECK_STR("delete", answer_text(r, buf, sizeof(buf)),
		  "deleted: 1 (busy: 1 in delivery or being moved; try again)\n");
	qctl_req_put(r);
	assert_null(queued(&g, cid));
	answer(&g, b, &defer, 1);
	pump(&g);
	r = control(&g, QCTL_RETRY, "all");
	pump(&g);
	CHECK_STR("retry", answer_text(r, buf, sizeof(buf)),
		  "retried: 1 (unchanged: 1 held: use release)\n");
	qctl_req_put(r);
	queue_run(&g.q);
	CHECK_INT("b again", njobs, 1);
	answer(&g, b, &accept_, 1);
	pump(&g);
	/* bounce a held message: a failure notice to alice, then FAILED
	 * for both recipients, and it is gone */
	snprintf(buf, sizeof(buf), "%s", a->idtxt);
	r = control(&g, QCTL_BOUNCE, buf);
	pump(&g);
	assert_true(answered(r));
	CHECK_STR("bounce", answer_text(r, buf, sizeof(buf)), "bounced: 1\n");
	qctl_req_put(r);
	assert_null(queued(&g, aid));
	unsigned n = records(&g, recs, N_ELEMS(recs), 0, NULL, 0);
	uint64_t nid = 0;
	CHECK_INT("one notice", disk_notices(recs, n, &nid), 1);
	int commit = find_rec(recs, n, SPOOL_REC_COMMIT, nid, 0, 0);
	assert_written_before(recs, commit, find_rec(recs, n, SPOOL_REC_STATE, aid, SPOOL_ST_FAILED, 0));
	assert_written_before(recs, commit, find_rec(recs, n, SPOOL_REC_STATE, aid, SPOOL_ST_FAILED, 1));
	CHECK_INT("removed record", count_rec(recs, n, SPOOL_REC_STATE, cid, SPOOL_ST_REMOVED), 1);
	CHECK_INT("held records", count_rec(recs, n, SPOOL_REC_STATE, aid, SPOOL_ST_HELD), 1);
	records(&g, recs, N_ELEMS(recs), nid, text, sizeof(text));
	assert_contains(text, "Action: failed");
	assert_contains(text, "Final-Recipient: rfc822; bob@far.test");
	assert_contains(text, "Final-Recipient: rfc822; dave@other.test");
	check_id_order(&g);
	/* an unknown id */
	r = control(&g, QCTL_HOLD, "0123456789ABCDEF");
	assert_true(answered(r));
	CHECK_STR("unknown", answer_text(r, buf, sizeof(buf)),
		  "error: no message 0123456789ABCDEF in the queue\n");
	qctl_req_put(r);
	rig_close(&g);
}

/* Compaction moves a held message: the copy's envelope has no held: line,
 * so its HELD record keeps it held across a restart. */
static void test_compaction_keeps_a_held_message_held(void **state)
{
	struct rig g;
	const char *qs = "retry_interval = \"1h\"; message_expiration = \"1d\"; delay_notification = \"0\";";
	if (!rig_open(&g, qs, 64 << 10))
		skip();
	const char *keep_rc[] = {"bob@keep.test"};
	next_held = "card-numbers";
	struct qmsg *keep = receive(&g, "alice@app.test", keep_rc, NULL, 1, SMTP_RET_NONE);
	next_held = NULL;
	uint64_t id = keep->id;
	const char *go_rc[] = {"carol@go.test"};
	static struct inbound in[400];
	unsigned k = 0;
	for (; k < N_ELEMS(in); k++) {
		store(&g, &in[k], "alice@app.test", go_rc, NULL, 1, SMTP_RET_NONE);
		pump(&g);
		struct qmsg *m = queued(&g, in[k].id);
		assert_non_null(m);
		bool rolled = m->seg != keep->seg;
		queue_run(&g.q);
		answer(&g, m, &accept_, 1);
		pump(&g);
		if (rolled)
			break;
	}
	assert_true(k < N_ELEMS(in));
	struct spool_seg *old = keep->seg;
	set_time(&g, g.w.wall_ms + 5000);
	queue_tick(&g.q);
	pump(&g);
	assert_ptr_equal(queued(&g, id), keep);
	assert_ptr_not_equal(keep->seg, old);
	assert_true(keep->held);
	CHECK_INT("no job", njobs, 0);
	size_t nseg = segments_now(&g);
	CHECK_INT("the old segment went", nseg, 1);
	char dir[64];
	snprintf(dir, sizeof(dir), "%s", g.dir);
	rig_close_keep(&g, true);
	assert_true(rig_open_in(&g, qs, 64 << 10, dir));
	check_id_order(&g);
	keep = queued(&g, id);
	assert_non_null(keep);
	assert_true(keep->held);
	CHECK_STR("reason", keep->held_reason, "card-numbers");
	queue_run(&g.q);
	CHECK_INT("still no job", njobs, 0);
	rig_close(&g);
}

/* The same with the reaper thread deleting finished segments. */
static void test_compaction_with_the_reaper(void **state)
{
	with_reaper = true;
	test_compaction_moves_a_deferred_message(state);
	test_compaction_keeps_a_held_message_held(state);
	with_reaper = false;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_retry_backoff_doubles_up_to_the_cap),
		cmocka_unit_test(test_not_attempted_is_retried_without_an_attempt),
		cmocka_unit_test(test_5xx_bounces_at_once),
		cmocka_unit_test(test_expiry_bounces_to_the_sender),
		cmocka_unit_test(test_delay_notice_once),
		cmocka_unit_test(test_notify_never_suppresses_the_bounce),
		cmocka_unit_test(test_notify_success_sends_a_relayed_notice),
		cmocka_unit_test(test_failed_read_sends_no_notice),
		cmocka_unit_test(test_compaction_moves_a_deferred_message),
		cmocka_unit_test(test_held_at_arrival_until_released),
		cmocka_unit_test(test_operator_hold_delete_bounce),
		cmocka_unit_test(test_compaction_keeps_a_held_message_held),
		cmocka_unit_test(test_compaction_with_the_reaper),
		cmocka_unit_test(test_due_messages_wait_for_an_active_slot),
	};
	log_set_level(LOG_WARN);
	char why[200];
	int failed = 0;
	if (io_probe(IO_BACKEND_URING, why, sizeof(why)) == IO_BACKEND_URING) {
		backend_now = IO_BACKEND_URING;
		failed += cmocka_run_group_tests_name("queue (io_uring)", tests, NULL, NULL);
	} else {
		printf("io_uring backend skipped: %s\n", why);
	}
	backend_now = IO_BACKEND_EPOLL;
	failed += cmocka_run_group_tests_name("queue (epoll)", tests, NULL, NULL);
	return failed;
}
