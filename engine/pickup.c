/* The pickup directory (see pickup.h). The thread owns the directory: it
 * lists it at start, then takes each *.eml renamed into it (IN_MOVED_TO;
 * a file written in place under its final name is never read half
 * written, since only a rename announces one), at most max_parallel at a
 * time. A file is deleted only after the worker's group commit has made
 * its message durable and the queue has it: a crash in between delivers
 * it twice at worst, never loses it. Policy is the Pickup connector's:
 * size and recipient limits, the rights of anonymous_relay (it may relay,
 * as Exchange's pickup directory may), routing by the send connectors. */
#include "pickup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "content.h"
#include "header_value.h"
#include "log.h"
#include "pickup_file.h"
#include "queue.h"
#include "received.h"
#include "smtp_server.h"

#define NAME_MAX_BYTES 255
#define ENVELOPE_SLACK (64 * 1024)   /* X-Sender/X-Receiver lines on top of the message */
#define RETRY_MS 5000                /* a file a worker could not spool: again then */

struct pickup_job {
	struct mailbox_node node;   /* first: the mailboxes */
	struct pickup *p;
	char name[NAME_MAX_BYTES + 1];
	dev_t dev;                  /* the file read: a new one renamed over the */
	ino_t ino;                  /* name meanwhile is not deleted for it */
	char *wire;                 /* the message, wire form (the spool takes it) */
	size_t wire_len;
	char *from;
	struct smtp_rcpt *rcpt;
	unsigned nrcpt;
	bool eightbit;
	bool has_message_id;
	char message_id[HEADER_VALUE_MAX + 1];
	/* content rules' marks (B.9): NULL when none */
	char *held, *route, *headers;
	/* filled in by the worker */
	struct spool_msg *sm;
	char idtxt[WCTX_MSGID_LEN];
	int64_t arrival;
	bool ok;
	char error[160];
	const char *bad_reason;     /* set: the file goes to *.bad, error says why */
};

/* A file waiting to be read. */
struct pending {
	struct pending *next;
	uint64_t due_ms;
	bool listed;            /* found by listing the directory, not by a rename */
	char name[NAME_MAX_BYTES + 1];
};

/* A listed file (not announced by a rename: there at start, or after the
 * kernel's event queue overflowed) is taken once it has not changed for
 * this long, so that one still being written in place is not read half
 * written at least while its writer keeps writing. */
#define LISTED_QUIET_MS 2000

struct pickup {
	char dir[4096];
	int dirfd;
	int inotify_fd;
	int wake_fd;                /* eventfd: a result came back, or stop */
	unsigned max_parallel;
	uint64_t max_size;
	unsigned max_rcpt;
	unsigned stats_id;
	char hostname[256];
	struct wctx **workers;
	unsigned nworkers;
	unsigned next_worker;
	struct mailbox done;        /* jobs back from the workers */
	atomic_bool stop;
	bool started;
	pthread_t thread;
	/* the thread's own */
	struct pending *pending;
	char (*inflight)[NAME_MAX_BYTES + 1]; /* names being spooled ("" free) */
	unsigned ninflight;
	_Atomic uint64_t *bad;      /* worker 0's pickup_bad: this thread writes it */
};

static bool eml_name(const char *n)
{
	size_t l = strlen(n);
	return l > 4 && l <= NAME_MAX_BYTES && strcmp(n + l - 4, ".eml") == 0 && n[0] != '.';
}

static void job_free(struct pickup_job *j)
{
	if (!j)
		return;
	free(j->wire);
	free(j->from);
	for (unsigned i = 0; i < j->nrcpt; i++)
		free(j->rcpt[i].addr);
	free(j->rcpt);
	free(j->held);
	free(j->route);
	free(j->headers);
	free(j);
}

/* ---- the thread ---------------------------------------------------------- */

static bool known(const struct pickup *p, const char *name)
{
	for (const struct pending *q = p->pending; q; q = q->next)
		if (strcmp(q->name, name) == 0)
			return true;
	for (unsigned i = 0; i < p->max_parallel; i++)
		if (strcmp(p->inflight[i], name) == 0)
			return true;
	return false;
}

static void enqueue(struct pickup *p, const char *name, uint64_t due_ms, bool listed)
{
	if (!eml_name(name) || known(p, name))
		return;
	struct pending *q = calloc(1, sizeof(*q));
	if (!q) {
		log_msg(LOG_ERROR, "event=pickup_error error=\"out of memory\"");
		return;
	}
	snprintf(q->name, sizeof(q->name), "%s", name);
	q->due_ms = due_ms;
	q->listed = listed;
	struct pending **t = &p->pending;
	while (*t)
		t = &(*t)->next;
	*t = q;
}

/* Every *.eml there now (at start, and after the kernel's event queue
 * overflowed). */
static void scan(struct pickup *p)
{
	int fd = openat(p->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		log_msg(LOG_ERROR, "event=pickup_error directory=%s error=\"%s\"", p->dir,
			strerror(errno));
		return;
	}
	struct dirent *e;
	while ((e = readdir(d)))
		enqueue(p, e->d_name, 0, true);
	closedir(d);
}

/* A bad file becomes NAME.bad (NAME without .eml), its reason logged. */
static void bad(struct pickup *p, const char *name, const char *reason, const char *detail)
{
	char to[NAME_MAX_BYTES + 8], qf[LOG_QUOTE_CAP(NAME_MAX_BYTES)], qt[LOG_QUOTE_CAP(NAME_MAX_BYTES + 8)];
	char qd[LOG_QUOTE_CAP(200)];
	size_t l = strlen(name);
	snprintf(to, sizeof(to), "%.*s.bad", (int)(l - 4), name);
	metric_add(p->bad, 1);
	if (renameat(p->dirfd, name, p->dirfd, to) != 0) {
		log_msg(LOG_ERROR,
			"event=pickup_bad file=%s reason=%s detail=%s error=\"cannot rename: %s\"",
			log_quote(qf, sizeof(qf), name), reason, log_quote(qd, sizeof(qd), detail),
			strerror(errno));
		return;
	}
	log_msg(LOG_WARN, "event=pickup_bad file=%s reason=%s detail=%s renamed=%s",
		log_quote(qf, sizeof(qf), name), reason, log_quote(qd, sizeof(qd), detail),
		log_quote(qt, sizeof(qt), to));
}

/* Reads the file whole; 0, or the errno. */
static int read_all(int fd, size_t size, char **out)
{
	char *b = malloc(size ? size : 1);
	if (!b)
		return ENOMEM;
	size_t got = 0;
	while (got < size) {
		ssize_t r = pread(fd, b + got, size - got, (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? errno : EIO;
			free(b);
			return e;
		}
		got += (size_t)r;
	}
	*out = b;
	return 0;
}

/* The file checked and made a job; NULL when it went to *.bad (or away). */
static struct pickup_job *load(struct pickup *p, const char *name)
{
	char detail[200];
	int fd = openat(p->dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return NULL; /* taken away meanwhile: nothing to do */
		snprintf(detail, sizeof(detail), "%s", strerror(errno));
		bad(p, name, errno == ELOOP ? "not_a_file" : "unreadable", detail);
		return NULL;
	}
	struct stat sb;
	if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		bad(p, name, "not_a_file", "not a regular file");
		return NULL;
	}
	if ((uint64_t)sb.st_size > p->max_size + ENVELOPE_SLACK) {
		close(fd);
		snprintf(detail, sizeof(detail), "%llu bytes, max_message_size %llu",
			 (unsigned long long)sb.st_size, (unsigned long long)p->max_size);
		bad(p, name, "too_big", detail);
		return NULL;
	}
	char *buf = NULL;
	size_t len = (size_t)sb.st_size;
	int e = read_all(fd, len, &buf);
	close(fd);
	if (e) {
		snprintf(detail, sizeof(detail), "%s", strerror(e));
		bad(p, name, "unreadable", detail);
		return NULL;
	}
	struct smtp_span *spans = calloc(p->max_rcpt, sizeof(*spans));
	struct pickup_job *j = calloc(1, sizeof(*j));
	if (!spans || !j) {
		free(spans);
		free(j);
		free(buf);
		log_msg(LOG_ERROR, "event=pickup_error error=\"out of memory\"");
		return NULL;
	}
	struct pickup_file f = {.rcpt = spans, .max_rcpt = p->max_rcpt};
	enum pickup_file_error pe = pickup_file_parse(buf, len, &f);
	if (pe == PICKUP_FILE_OK && f.wire_len > p->max_size)
		snprintf(detail, sizeof(detail), "message of %zu bytes, max_message_size %llu",
			 f.wire_len, (unsigned long long)p->max_size);
	else if (pe == PICKUP_FILE_TOO_MANY_RECEIVERS)
		snprintf(detail, sizeof(detail), "more than max_recipients_per_message %u",
			 p->max_rcpt);
	else if (pe != PICKUP_FILE_OK)
		snprintf(detail, sizeof(detail), "at byte %zu", f.err_at);
	if (pe != PICKUP_FILE_OK || f.wire_len > p->max_size) {
		free(spans);
		free(j);
		free(buf);
		bad(p, name, pe == PICKUP_FILE_OK ? "too_big" : pickup_file_error_name(pe), detail);
		return NULL;
	}
	j->p = p;
	snprintf(j->name, sizeof(j->name), "%s", name);
	j->dev = sb.st_dev;
	j->ino = sb.st_ino;
	j->wire = malloc(f.wire_len);
	j->from = strndup(f.sender.p, f.sender.len);
	j->rcpt = calloc(f.nrcpt, sizeof(*j->rcpt));
	bool ok = j->wire && j->from && j->rcpt;
	for (unsigned i = 0; ok && i < f.nrcpt; i++) {
		j->rcpt[i].addr = strndup(spans[i].p, spans[i].len);
		j->rcpt[i].notify = 0;
		ok = j->rcpt[i].addr != NULL;
		j->nrcpt += ok;
	}
	if (ok) {
		pickup_file_wire(buf, len, &f, j->wire);
		j->wire_len = f.wire_len;
		j->eightbit = f.eightbit;
		struct header_value hv;
		header_value_init(&hv, "Message-ID");
		header_value_feed(&hv, buf + f.body, len - f.body);
		j->has_message_id = header_value_get(&hv, j->message_id, sizeof(j->message_id));
	}
	free(spans);
	free(buf);
	if (!ok) {
		job_free(j);
		log_msg(LOG_ERROR, "event=pickup_error error=\"out of memory\"");
		return NULL;
	}
	return j;
}

static void hand_over(struct pickup *p, struct pickup_job *j)
{
	struct wctx *w = p->workers[p->next_worker++ % p->nworkers];
	mailbox_post(&w->pickup_in, &j->node);
	io_wake(w->io);
}

/* Starts what is due, up to max_parallel in flight. */
static void start_due(struct pickup *p)
{
	uint64_t now = wctx_clock_ms();
	struct pending **q = &p->pending;
	while (*q && p->ninflight < p->max_parallel && !atomic_load(&p->stop)) {
		struct pending *it = *q;
		if (it->due_ms > now) {
			q = &it->next;
			continue;
		}
		struct stat st;
		if (it->listed && fstatat(p->dirfd, it->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		    wctx_wall_ms() - ((int64_t)st.st_mtim.tv_sec * 1000 +
				      st.st_mtim.tv_nsec / 1000000) < LISTED_QUIET_MS) {
			it->due_ms = now + LISTED_QUIET_MS / 2;  /* changed lately: later */
			q = &it->next;
			continue;
		}
		*q = it->next;
		struct pickup_job *j = load(p, it->name);
		if (j) {
			for (unsigned i = 0; i < p->max_parallel; i++)
				if (!p->inflight[i][0]) {
					snprintf(p->inflight[i], sizeof(p->inflight[i]), "%s", j->name);
					break;
				}
			p->ninflight++;
			hand_over(p, j);
		}
		free(it);
	}
}

static void forget_inflight(struct pickup *p, const char *name)
{
	for (unsigned i = 0; i < p->max_parallel; i++)
		if (strcmp(p->inflight[i], name) == 0) {
			p->inflight[i][0] = '\0';
			p->ninflight--;
			return;
		}
}

/* The name still holds the file that was read (not one renamed over it
 * since: that one's event was taken for this one's and it is still to do). */
static bool same_file(const struct pickup *p, const struct pickup_job *j)
{
	struct stat sb;
	return fstatat(p->dirfd, j->name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && sb.st_dev == j->dev &&
	       sb.st_ino == j->ino;
}

/* A durable message's file goes; a failed one is tried again later.
 * Returns true when the name is to be read again (a new file under it). */
static bool finish(struct pickup *p, struct pickup_job *j, bool retry)
{
	char qf[LOG_QUOTE_CAP(NAME_MAX_BYTES)];
	if (j->ok && !same_file(p, j))
		return true;
	if (j->ok) {
		if (unlinkat(p->dirfd, j->name, 0) != 0 && errno != ENOENT)
			log_msg(LOG_ERROR,
				"event=pickup_error file=%s id=%s error=\"spooled, but cannot delete the file: %s\" note=\"it will be delivered again at the next start\"",
				log_quote(qf, sizeof(qf), j->name), j->idtxt, strerror(errno));
		else
			fsync(p->dirfd);
	} else {
		log_msg(LOG_ERROR, "event=pickup_error file=%s error=\"%s\"%s",
			log_quote(qf, sizeof(qf), j->name), j->error,
			retry ? " note=\"tried again in 5s\"" : " note=\"left for the next start\"");
	}
	return false;
}

static void collect(struct pickup *p)
{
	for (struct mailbox_node *n = mailbox_take(&p->done), *next; n; n = next) {
		next = n->next;
		struct pickup_job *j = (struct pickup_job *)n;
		forget_inflight(p, j->name);
		if (j->bad_reason) {
			if (same_file(p, j))
				bad(p, j->name, j->bad_reason, j->error);
			else if (!atomic_load(&p->stop))
				enqueue(p, j->name, 0, false); /* replaced meanwhile: the new one */
			job_free(j);
			continue;
		}
		bool again = finish(p, j, !atomic_load(&p->stop));
		if (again && !atomic_load(&p->stop))
			enqueue(p, j->name, 0, false);
		else if (!j->ok && !atomic_load(&p->stop))
			enqueue(p, j->name, wctx_clock_ms() + RETRY_MS, false);
		job_free(j);
	}
}

static void read_events(struct pickup *p)
{
	char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
	for (;;) {
		ssize_t n = read(p->inotify_fd, buf, sizeof(buf));
		if (n <= 0)
			return;
		for (char *at = buf; at < buf + n;) {
			struct inotify_event *e = (struct inotify_event *)at;
			if (e->mask & IN_Q_OVERFLOW)
				scan(p);
			else if (e->mask & (IN_DELETE_SELF | IN_MOVE_SELF))
				log_msg(LOG_ERROR,
					"event=pickup_error directory=%s error=\"the directory was deleted or moved: no more files are taken until a restart\"",
					p->dir);
			else if ((e->mask & IN_MOVED_TO) && e->len)
				enqueue(p, e->name, 0, false);
			at += sizeof(*e) + e->len;
		}
	}
}

static void *pickup_main(void *arg)
{
	struct pickup *p = arg;
	while (!atomic_load(&p->stop)) {
		collect(p);
		start_due(p);
		struct pollfd fds[2] = {{.fd = p->inotify_fd, .events = POLLIN},
					{.fd = p->wake_fd, .events = POLLIN}};
		/* A retry waiting, or files beyond max_parallel: look again soon. */
		int timeout = p->pending ? 1000 : -1;
		if (poll(fds, 2, timeout) < 0 && errno != EINTR)
			break;
		uint64_t v;
		if (fds[1].revents & POLLIN)
			(void)!read(p->wake_fd, &v, sizeof(v));
		if (fds[0].revents & POLLIN)
			read_events(p);
	}
	return NULL;
}

struct pickup *pickup_start(const struct conf *conf, unsigned stats_id, struct wctx **workers,
			    unsigned nworkers, char *err, size_t errlen)
{
	struct pickup *p = calloc(1, sizeof(*p));
	if (!p) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	p->dirfd = p->inotify_fd = p->wake_fd = -1;
	snprintf(p->dir, sizeof(p->dir), "%s", conf->pickup_dir);
	snprintf(p->hostname, sizeof(p->hostname), "%s", conf->hostname);
	p->max_parallel = conf->pickup_max_parallel ? conf->pickup_max_parallel : 1;
	p->max_size = conf->pickup_max_message_size;
	p->max_rcpt = conf->pickup_max_recipients ? conf->pickup_max_recipients : 1;
	p->stats_id = stats_id;
	p->workers = workers;
	p->nworkers = nworkers;
	p->bad = &workers[0]->m->pickup_bad;
	mailbox_init(&p->done);
	p->inflight = calloc(p->max_parallel, sizeof(*p->inflight));
	p->dirfd = open(p->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (p->dirfd < 0 || access(p->dir, R_OK | W_OK | X_OK) != 0) {
		snprintf(err, errlen,
			 "pickup_directory %s: %s (it must exist and be readable and writable by the user postern runs as)",
			 p->dir, strerror(errno));
		pickup_free(p);
		return NULL;
	}
	p->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (!p->inflight || p->inotify_fd < 0 || p->wake_fd < 0 ||
	    inotify_add_watch(p->inotify_fd, p->dir,
			      IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR) < 0) {
		snprintf(err, errlen, "pickup_directory %s: cannot watch it: %s", p->dir,
			 strerror(errno));
		pickup_free(p);
		return NULL;
	}
	/* Listed once watched (a rename meanwhile is not missed) and before
	 * pickup_start is logged: "there at start" means there by then. */
	scan(p);
	if (pthread_create(&p->thread, NULL, pickup_main, p) != 0) {
		snprintf(err, errlen, "pickup_directory %s: cannot start its thread", p->dir);
		pickup_free(p);
		return NULL;
	}
	p->started = true;
	log_msg(LOG_INFO,
		"event=pickup_start directory=%s connector=%s max_parallel=%u max_message_size=%llu max_recipients_per_message=%u",
		p->dir, PICKUP_CONNECTOR, p->max_parallel, (unsigned long long)p->max_size,
		p->max_rcpt);
	return p;
}

void pickup_stop(struct pickup *p)
{
	if (!p || !p->started)
		return;
	atomic_store(&p->stop, true);
	uint64_t one = 1;
	(void)!write(p->wake_fd, &one, sizeof(one));
	pthread_join(p->thread, NULL);
	p->started = false;
}

void pickup_free(struct pickup *p)
{
	if (!p)
		return;
	pickup_stop(p);
	atomic_store(&p->stop, true);
	for (struct mailbox_node *n = mailbox_take(&p->done), *next; n; n = next) {
		next = n->next;
		struct pickup_job *j = (struct pickup_job *)n;
		if (j->bad_reason)
			bad(p, j->name, j->bad_reason, j->error);
		else
			finish(p, j, false);
		job_free(j);
	}
	for (struct pending *q = p->pending, *next; q; q = next) {
		next = q->next;
		free(q);
	}
	mailbox_destroy(&p->done);
	free(p->inflight);
	if (p->dirfd >= 0)
		close(p->dirfd);
	if (p->inotify_fd >= 0)
		close(p->inotify_fd);
	if (p->wake_fd >= 0)
		close(p->wake_fd);
	free(p);
}

/* ---- the worker's side ----------------------------------------------------- */

static void back(struct wctx *w, struct pickup_job *j, bool ok, const char *why)
{
	if (j->sm) {
		spool_msg_release(w->spool, j->sm);
		j->sm = NULL;
		w->pickup_inflight--;
	}
	j->ok = ok;
	if (why)
		snprintf(j->error, sizeof(j->error), "%s", why);
	mailbox_post(&j->p->done, &j->node);
	uint64_t one = 1;
	(void)!write(j->p->wake_fd, &one, sizeof(one));
}

/* As RCPT TO would have refused it: a recipient no send connector covers
 * (<Postmaster> goes where server.hostname does). */
static const char *unroutable(const struct wctx *w, const struct pickup_job *j)
{
	for (unsigned i = 0; i < j->nrcpt; i++) {
		const char *at = strrchr(j->rcpt[i].addr, '@');
		const char *dom = at ? at + 1 : w->conf->hostname;
		if (!conf_route(w->conf, dom, strlen(dom)))
			return j->rcpt[i].addr;
	}
	return NULL;
}

struct pickup_hit_ctx {
	struct wctx *w;
	const struct pickup_job *j;
};

static void on_rule_hit(void *arg, const struct content_rule *r, enum content_where where)
{
	struct pickup_hit_ctx *h = arg;
	content_hit_note(h->w->m, h->w->id, h->j->idtxt, "127.0.0.1", r, where);
}

/* The content rules, as a receive connector without externally_secured
 * applies them: 1 passed (marks in j), 0 refused (j is bad), -1 not
 * judged (out of memory, a Hyperscan error: tried again later). */
static int judge(struct wctx *w, struct pickup_job *j)
{
	const struct content_rules *cr = &w->conf->content;
	if (!cr->n)
		return 1;
	struct content_scan *s = content_scan_begin(cr, w->content);
	struct content_verdict v = {.failed = true};
	if (s) {
		content_scan_data(s, j->wire, j->wire_len, true);
		struct pickup_hit_ctx h = {w, j};
		content_scan_end(s, j->from, j->rcpt, j->nrcpt, &v, on_rule_hit, &h);
	}
	int res = 1;
	struct smtp_envelope marks = {0};
	if (v.failed) {
		res = -1;
	} else if (v.reject) {
		j->bad_reason = "content_rule";
		snprintf(j->error, sizeof(j->error), "rejected by content rule %s", v.reject->name);
		res = 0;
	} else if (!content_mark(cr, s, &v, &marks)) {
		res = -1;
	}
	content_scan_free(s);
	if (res == 1) {
		j->held = marks.held;
		j->route = marks.route;
		j->headers = marks.headers;
	} else {
		free(marks.held);
		free(marks.route);
		free(marks.headers);
	}
	if (res < 0)
		log_msg(LOG_ERROR, "event=content_error id=%s file=%s error=\"%s\"", j->idtxt,
			j->name, v.failed ? "scan failed" : "out of memory");
	return res;
}

/* The envelope of a job's message: its strings stay the job's. */
static struct smtp_envelope job_envelope(const struct pickup_job *j)
{
	return (struct smtp_envelope){
		.from = j->from,
		.body = j->eightbit ? SMTP_BODY_8BITMIME : SMTP_BODY_NONE,
		.rcpt = j->rcpt,
		.nrcpt = j->nrcpt,
		.held = j->held,
		.route = j->route,
		.headers = j->headers,
	};
}

static void spool_one(struct wctx *w, struct pickup_job *j)
{
	if (w->stopping || w->draining) {
		back(w, j, false, "postern is stopping");
		return;
	}
	const char *nr = unroutable(w, j);
	if (nr) {
		j->bad_reason = "no_route";
		snprintf(j->error, sizeof(j->error), "no send connector for <%.120s>", nr);
		back(w, j, false, NULL);
		return;
	}
	uint64_t id = wctx_next_msgid(w);
	wctx_msgid_text(id, j->idtxt);
	j->arrival = (int64_t)(w->wall_ms / 1000);
	int verdict = judge(w, j);
	if (verdict <= 0) {
		back(w, j, false, verdict < 0 ? "content rules could not judge it" : NULL);
		return;
	}
	int err = 0;
	struct spool_msg *sm = spool_msg_begin(w->spool, id, &err);
	if (!sm) {
		back(w, j, false, strerror(err ? err : EIO));
		return;
	}
	char hdr[1024];
	struct smtp_received r = {
		.helo = "pickup",
		.client_ip = "127.0.0.1",
		.hostname = w->conf->hostname,
		.connector = PICKUP_CONNECTOR,
		.protocol = "local",
		.id = j->idtxt,
		.for_rcpt = j->nrcpt == 1 ? j->rcpt[0].addr : NULL,
		.time = j->arrival,
	};
	size_t hn = smtp_received_format(hdr, sizeof(hdr), &r);
	bool ok = spool_msg_append(w->spool, sm, hdr, hn, -1);
	/* The spool owns the buffer from here, whatever happens. */
	char *wire = j->wire;
	j->wire = NULL;
	ok = ok ? spool_msg_append_owned(w->spool, sm, wire, j->wire_len) : (free(wire), false);
	struct smtp_envelope env = job_envelope(j);
	if (ok)
		ok = spool_msg_commit_envelope(w->spool, sm, j->idtxt, &env, PICKUP_CONNECTOR,
					       "127.0.0.1", "pickup", j->arrival);
	sm->owner = j;
	sm->pickup = true;
	j->sm = sm;
	w->pickup_inflight++;
	if (!ok) {
		back(w, j, false, sm->err ? strerror(sm->err) : "cannot write to the spool");
		return;
	}
	if (spool_msg_written(sm))
		pickup_on_written(w, sm);
}

void pickup_take(struct wctx *w)
{
	for (struct mailbox_node *n = mailbox_take(&w->pickup_in), *next; n; n = next) {
		next = n->next;
		spool_one(w, (struct pickup_job *)n);
	}
}

void pickup_on_written(struct wctx *w, struct spool_msg *m)
{
	struct pickup_job *j = m->owner;
	int err = spool_msg_error(m);
	if (err) {
		back(w, j, false, strerror(err));
		return;
	}
	if (!spool_commit_add(w->spool, m))
		back(w, j, false, "out of memory");
}

static void log_received(struct wctx *w, const struct pickup_job *j, uint64_t size)
{
	char from[SMTP_PATH_MAX + 3], qf[LOG_QUOTE_CAP(SMTP_PATH_MAX + 2)], to[1024] = "";
	char qt[LOG_QUOTE_CAP(1024)], qn[LOG_QUOTE_CAP(NAME_MAX_BYTES)];
	char qm[LOG_QUOTE_CAP(HEADER_VALUE_MAX) + 16] = "";
	snprintf(from, sizeof(from), "<%s>", j->from);
	size_t tl = 0;
	for (unsigned i = 0; i < j->nrcpt && tl + 4 < sizeof(to); i++) {
		int k = snprintf(to + tl, sizeof(to) - tl, "%s<%s>", i ? "," : "", j->rcpt[i].addr);
		if (k < 0 || (tl += (size_t)k) >= sizeof(to))
			break;
	}
	if (j->has_message_id) {
		memcpy(qm, " message_id=", 12);
		log_quote(qm + 12, sizeof(qm) - 12, j->message_id);
	}
	char marks[200];
	content_marks_log(marks, sizeof(marks), j->held, j->route);
	log_msg(LOG_INFO,
		"event=receive id=%s from=%s to=%s nrcpt=%u connector=%s client=127.0.0.1 size=%llu%s%s file=%s worker=%u",
		j->idtxt, log_quote(qf, sizeof(qf), from), log_quote(qt, sizeof(qt), to), j->nrcpt,
		PICKUP_CONNECTOR, (unsigned long long)size, marks, qm,
		log_quote(qn, sizeof(qn), j->name), w->id);
}

void pickup_on_durable(struct wctx *w, struct spool_msg *m, bool ok)
{
	struct pickup_job *j = m->owner;
	if (!ok) {
		back(w, j, false, "the spool's fdatasync failed");
		return;
	}
	struct smtp_envelope env = job_envelope(j);
	struct connector_counters *cc = &w->m->conn[j->p->stats_id];
	metric_add(&cc->messages, 1);
	metric_add(&cc->bytes, m->bytes);
	metric_add(&w->m->pickup_accepted, 1);
	log_received(w, j, m->bytes);
	queue_add_received(w->queue, m, &env, "127.0.0.1", PICKUP_CONNECTOR, j->arrival);
	back(w, j, true, NULL);
}

void pickup_discard(struct wctx *w)
{
	for (struct mailbox_node *n = mailbox_take(&w->pickup_in), *next; n; n = next) {
		next = n->next;
		struct pickup_job *j = (struct pickup_job *)n;
		/* Never spooled: the file stays for the next start. */
		snprintf(j->error, sizeof(j->error), "postern stopped before spooling it");
		mailbox_post(&j->p->done, &j->node);
	}
}
