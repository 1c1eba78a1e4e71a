/* Delivery (see deliver.h). Outbound sockets are non-blocking: the worker
 * sends and receives with plain syscalls and waits for readiness with ring
 * polls, so a connection costs no thread and no buffer beyond its reply
 * buffer. The message body goes from the spool segment to the socket with
 * sendfile(): it is stored in wire form, so it is sent as it lies. */
#include "deliver.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dirs.h"
#include "log.h"
#include "queue.h"
#include "resolver.h"
#include "worker.h"

#define DEST_BUCKETS 1024
#define DEST_KEEP_MS 60000     /* an unused destination is forgotten after this */
#define MX_REUSE_MS 60000      /* resolver answers kept by a destination */

struct oconn;

struct dest {
	struct dest *hnext;
	char domain[256];          /* "" unless MX delivery */
	struct conf *conf;         /* held: sc points into it */
	const struct sconn *sc;    /* the send connector, by name: from the
	                            * newest conf it was seen in */
	struct throttle_entry *th; /* connections and rate, across workers */
	bool resolving;
	int64_t resolved_until;    /* monotonic ms */
	struct resolver_target *t;
	unsigned nt;
	struct djob *head, *tail;  /* jobs waiting for a connection */
	unsigned nconns;
	struct oconn *idle;
	uint64_t last_used;
	bool throttled;            /* waiting for the send rate limit */
};

struct oconn {
	struct worker *w;
	struct dest *d;
	int fd;
	unsigned inflight;         /* polls in flight */
	bool armed_in, armed_out;
	bool closing;
	bool counted;              /* holds one of the connector's connections */
	bool connecting;
	bool client_ready;         /* smtp_client initialised */
	unsigned target;
	char last_error[300];      /* why the last target failed */
	struct smtp_client cl;
	struct djob *job;
	bool job_started;
	unsigned msgs;
	char in[4096];
	size_t in_off, in_len;
	const char *out;
	size_t out_len, out_off;
	bool body;
	uint32_t ext;
	uint64_t ext_off;
	size_t dot_off;
	uint64_t deadline;         /* monotonic ms, 0 = none */
	bool idle;
	struct oconn *idle_next;
	struct oconn *next, *prev; /* every connection of the worker */
	char remote[300];
};

enum inbox_kind { INBOX_RESOLVED, INBOX_DROPPED };

struct inbox_item {
	struct inbox_item *next;
	enum inbox_kind kind;
	struct worker *w;
	struct dest *d;
	struct resolver_result *res;
	struct djob *job;
	int code;
	char status[12];
	char text[480];
};

struct deliver {
	struct dest *bucket[DEST_BUCKETS];
	struct oconn *conns;
	unsigned nconns;
	unsigned resolving;
	unsigned dropping;
	pthread_mutex_t lock;      /* inbox, drop queue */
	pthread_cond_t drop_cond;
	struct inbox_item *inbox;
	struct inbox_item *drops, **drops_tail;
	bool drop_stop;
	bool drop_started;
	pthread_t drop_thread;
};

static void conn_run(struct oconn *oc);
static void conn_close(struct oconn *oc);
static void dest_pump(struct worker *w, struct dest *d);

/* ---- jobs ------------------------------------------------------------- */

static void job_result_all(struct djob *j, int code, const char *status, const char *text)
{
	for (unsigned k = 0; k < j->n; k++) {
		struct smtp_client_result *r = &j->res[k];
		r->code = code;
		snprintf(r->status, sizeof(r->status), "%s", status);
		snprintf(r->text, sizeof(r->text), "%s", text);
		r->stage = SMTPC_STAGE_CONNECT;
	}
}

static void job_fail(struct worker *w, struct djob *j, int code, const char *status,
		     const char *text)
{
	job_result_all(j, code, status, text);
	queue_job_done(&w->queue, j);
}

/* Not attempted (stopping, our own rate limit): back to the queue as is. */
static void job_return(struct worker *w, struct djob *j)
{
	j->not_attempted = true;
	queue_job_done(&w->queue, j);
}

/* ---- destinations ----------------------------------------------------- */

static unsigned dest_hash(const char *name, const char *domain)
{
	uint32_t h = resolver_hash_name(RESOLVER_HASH_INIT, name);
	h = resolver_hash_name(h, "|");
	h = resolver_hash_name(h, domain);
	return h % DEST_BUCKETS;
}

static struct dest *dest_get(struct worker *w, struct djob *j)
{
	struct deliver *dl = w->dl;
	unsigned h = dest_hash(j->sc->name, j->domain);
	struct dest *d = dl->bucket[h];
	for (; d; d = d->hnext)
		if (strcmp(d->sc->name, j->sc->name) == 0 && strcmp(d->domain, j->domain) == 0)
			break;
	if (!d) {
		d = calloc(1, sizeof(*d));
		if (!d)
			return NULL;
		snprintf(d->domain, sizeof(d->domain), "%s", j->domain);
		char key[80];
		snprintf(key, sizeof(key), "send:%s", j->sc->name);
		d->th = throttle_entry(w->throttle, 0xffff, key);
		d->hnext = dl->bucket[h];
		dl->bucket[h] = d;
	}
	if (d->conf != j->conf) {
		/* The newest configuration the connector has been seen in. */
		conf_ref(j->conf);
		conf_unref(d->conf);
		d->conf = j->conf;
		d->sc = j->sc;
		if (!d->domain[0])
			d->resolved_until = 0; /* smart hosts may have changed */
	}
	d->last_used = w->now_ms;
	return d;
}

static void dest_fail_waiting(struct worker *w, struct dest *d, int code, const char *status,
			      const char *text)
{
	while (d->head) {
		struct djob *j = d->head;
		d->head = j->next;
		j->next = NULL;
		job_fail(w, j, code, status, text);
	}
	d->tail = NULL;
}

static void dest_set_smart_hosts(struct dest *d)
{
	free(d->t);
	d->nt = d->sc->nhosts;
	d->t = calloc(d->nt ? d->nt : 1, sizeof(*d->t));
	for (unsigned i = 0; d->t && i < d->nt; i++) {
		snprintf(d->t[i].host, sizeof(d->t[i].host), "%s", d->sc->hosts[i].text);
		memcpy(&d->t[i].addr, &d->sc->hosts[i].addr, d->sc->hosts[i].addrlen);
		d->t[i].addrlen = d->sc->hosts[i].addrlen;
	}
	if (!d->t)
		d->nt = 0;
	d->resolved_until = INT64_MAX;
}

/* ---- the inbox: answers from other threads ---------------------------- */

static void inbox_post(struct inbox_item *it)
{
	struct deliver *dl = it->w->dl;
	pthread_mutex_lock(&dl->lock);
	it->next = dl->inbox;
	dl->inbox = it;
	pthread_mutex_unlock(&dl->lock);
	worker_poke(it->w);
}

static void resolved_cb(void *arg, struct resolver_result *res)
{
	struct inbox_item *it = arg;
	it->res = res;
	inbox_post(it);
}

static void dest_resolve(struct worker *w, struct dest *d)
{
	struct inbox_item *it = calloc(1, sizeof(*it));
	if (!it || !w->resolver) {
		free(it);
		dest_fail_waiting(w, d, 451, "4.4.3", "451 4.4.3 MX lookup unavailable");
		return;
	}
	it->kind = INBOX_RESOLVED;
	it->w = w;
	it->d = d;
	d->resolving = true;
	w->dl->resolving++;
	if (resolver_lookup(w->resolver, d->domain, resolved_cb, it) < 0) {
		d->resolving = false;
		w->dl->resolving--;
		free(it);
		dest_fail_waiting(w, d, 451, "4.4.3", "451 4.4.3 MX lookup failed: out of memory");
	}
}

static void on_resolved(struct worker *w, struct dest *d, struct resolver_result *res)
{
	d->resolving = false;
	w->dl->resolving--;
	char text[400];
	switch (res->status) {
	case RESOLVER_OK:
		free(d->t);
		d->t = res->t;
		d->nt = res->n;
		res->t = NULL;
		for (unsigned i = 0; i < d->nt; i++) {
			struct sockaddr_storage *ss = &d->t[i].addr;
			in_port_t port = htons((uint16_t)d->sc->port);
			if (ss->ss_family == AF_INET)
				((struct sockaddr_in *)ss)->sin_port = port;
			else
				((struct sockaddr_in6 *)ss)->sin6_port = port;
		}
		d->resolved_until = (int64_t)w->now_ms + MX_REUSE_MS;
		break;
	case RESOLVER_TEMPFAIL:
		snprintf(text, sizeof(text), "451 4.4.3 %s", res->error);
		dest_fail_waiting(w, d, 451, "4.4.3", text);
		break;
	case RESOLVER_NULL_MX:
		snprintf(text, sizeof(text), "556 5.1.10 %s", res->error);
		dest_fail_waiting(w, d, 556, "5.1.10", text);
		break;
	case RESOLVER_NXDOMAIN:
	case RESOLVER_NO_ADDRESS:
		snprintf(text, sizeof(text), "550 5.1.2 %s", res->error);
		dest_fail_waiting(w, d, 550, "5.1.2", text);
		break;
	}
	resolver_result_free(res);
	dest_pump(w, d);
}

/* ---- drop directory --------------------------------------------------- */

/* Writes the message as a .eml file: X-Sender/X-Receiver lines carry the
 * envelope (as Exchange's pickup/replay files do), then the message with
 * the SMTP dot-stuffing undone. Atomic: a temporary name, fsync, rename,
 * fsync of the directory. The name is the message id and its first
 * recipient's index, so a retry after a crash replaces rather than
 * duplicates. */
static int drop_write(const struct djob *j, char *path, size_t pathcap)
{
	const struct qmsg *m = j->m;
	const char *dir = j->sc->drop_dir;
	int ret = dirs_make(dir);
	if (ret < 0)
		return ret;
	char tmp[4200];
	snprintf(path, pathcap, "%s/%s-%u.eml", dir, m->idtxt, j->idx[0]);
	snprintf(tmp, sizeof(tmp), "%s/.%s-%u.tmp", dir, m->idtxt, j->idx[0]);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		return -errno;
	FILE *f = fdopen(fd, "w");
	if (!f) {
		ret = -errno;
		close(fd);
		unlink(tmp);
		return ret;
	}
	fprintf(f, "X-Sender: <%s>\r\n", m->from);
	for (unsigned k = 0; k < j->n; k++)
		fprintf(f, "X-Receiver: <%s>\r\n", m->r[j->idx[k]].addr);
	int seg = spool_seg_fd(m->seg);
	bool bol = true;
	char buf[65536];
	for (uint32_t i = 0; i < m->nchunks && ret == 0; i++) {
		uint64_t off = m->off[i], left = m->len[i];
		while (left && ret == 0) {
			size_t want = left < sizeof(buf) ? (size_t)left : sizeof(buf);
			ssize_t n = pread(seg, buf, want, (off_t)off);
			if (n <= 0) {
				ret = n < 0 ? -errno : -EIO;
				break;
			}
			for (ssize_t k = 0; k < n; k++) {
				/* A line that starts with "." was stuffed by the
				 * client: drop that first dot. */
				if (!(bol && buf[k] == '.'))
					fputc(buf[k], f);
				bol = buf[k] == '\n';
			}
			off += (uint64_t)n;
			left -= (uint64_t)n;
		}
	}
	if (ret == 0 && (fflush(f) != 0 || fsync(fd) != 0))
		ret = -errno;
	if (fclose(f) != 0 && ret == 0)
		ret = -errno;
	if (ret == 0 && rename(tmp, path) != 0)
		ret = -errno;
	if (ret != 0) {
		unlink(tmp);
		return ret;
	}
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd >= 0) {
		if (fsync(dfd) != 0)
			ret = -errno;
		close(dfd);
	}
	return ret;
}

static void *drop_main(void *arg)
{
	struct deliver *dl = arg;
	pthread_mutex_lock(&dl->lock);
	for (;;) {
		while (!dl->drops && !dl->drop_stop)
			pthread_cond_wait(&dl->drop_cond, &dl->lock);
		if (!dl->drops)
			break;
		struct inbox_item *it = dl->drops;
		dl->drops = it->next;
		if (!dl->drops)
			dl->drops_tail = &dl->drops;
		pthread_mutex_unlock(&dl->lock);
		char path[4200];
		int ret = drop_write(it->job, path, sizeof(path));
		if (ret == 0) {
			it->code = 250;
			snprintf(it->status, sizeof(it->status), "2.0.0");
			snprintf(it->text, sizeof(it->text), "250 2.0.0 Written to %.400s", path);
		} else {
			it->code = 451;
			snprintf(it->status, sizeof(it->status), "4.3.0");
			snprintf(it->text, sizeof(it->text), "451 4.3.0 Drop directory %.300s: %s",
				 it->job->sc->drop_dir, strerror(-ret));
		}
		inbox_post(it);
		pthread_mutex_lock(&dl->lock);
	}
	pthread_mutex_unlock(&dl->lock);
	return NULL;
}

static void drop_submit(struct worker *w, struct djob *j)
{
	struct deliver *dl = w->dl;
	struct inbox_item *it = calloc(1, sizeof(*it));
	if (!it) {
		job_fail(w, j, 451, "4.3.0", "451 4.3.0 Out of memory");
		return;
	}
	it->kind = INBOX_DROPPED;
	it->w = w;
	it->job = j;
	if (!dl->drop_started) {
		if (pthread_create(&dl->drop_thread, NULL, drop_main, dl) != 0) {
			free(it);
			job_fail(w, j, 451, "4.3.0", "451 4.3.0 Cannot start the drop directory writer");
			return;
		}
		dl->drop_started = true;
	}
	snprintf(j->remote, sizeof(j->remote), "%s", j->sc->drop_dir);
	dl->dropping++;
	pthread_mutex_lock(&dl->lock);
	it->next = NULL;
	*dl->drops_tail = it;
	dl->drops_tail = &it->next;
	pthread_cond_signal(&dl->drop_cond);
	pthread_mutex_unlock(&dl->lock);
}

/* ---- connections ------------------------------------------------------ */

static uint64_t poll_tag(struct oconn *oc, bool out)
{
	return ring_tag_ptr(OP_OUT_POLL, oc) | (out ? 1 : 0);
}

static void arm(struct oconn *oc, bool out)
{
	bool *armed = out ? &oc->armed_out : &oc->armed_in;
	if (*armed)
		return;
	*armed = true;
	oc->inflight++;
	ring_poll(&oc->w->ring, oc->fd, out ? POLLOUT : POLLIN, poll_tag(oc, out));
}

static void set_deadline(struct oconn *oc, uint64_t ms)
{
	oc->deadline = ms ? oc->w->now_ms + ms : 0;
}

static void conn_free_if_done(struct oconn *oc)
{
	if (!oc->closing || oc->inflight)
		return;
	struct deliver *dl = oc->w->dl;
	if (oc->prev)
		oc->prev->next = oc->next;
	else
		dl->conns = oc->next;
	if (oc->next)
		oc->next->prev = oc->prev;
	dl->nconns--;
	free(oc);
}

static void idle_remove(struct oconn *oc)
{
	if (!oc->idle)
		return;
	struct oconn **pp = &oc->d->idle;
	while (*pp && *pp != oc)
		pp = &(*pp)->idle_next;
	if (*pp)
		*pp = oc->idle_next;
	oc->idle = false;
	oc->idle_next = NULL;
}

static void describe_target(struct oconn *oc)
{
	const struct resolver_target *t = &oc->d->t[oc->target];
	char ip[INET6_ADDRSTRLEN] = "?";
	peer_text(&t->addr, ip, sizeof(ip));
	unsigned port = t->addr.ss_family == AF_INET
				? ntohs(((const struct sockaddr_in *)&t->addr)->sin_port)
				: ntohs(((const struct sockaddr_in6 *)&t->addr)->sin6_port);
	if (oc->d->domain[0])
		snprintf(oc->remote, sizeof(oc->remote), "%.200s[%s]:%u", t->host, ip, port);
	else
		snprintf(oc->remote, sizeof(oc->remote), "[%s]:%u", ip, port);
}

/* Connects to the current target, moving on to the next when that fails
 * at once. false when there is none left. */
static bool conn_connect(struct oconn *oc)
{
	struct dest *d = oc->d;
	for (; oc->target < d->nt; oc->target++) {
		const struct resolver_target *t = &d->t[oc->target];
		describe_target(oc);
		int fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			snprintf(oc->last_error, sizeof(oc->last_error), "%.200s: %s", oc->remote,
				 strerror(errno));
			continue;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, (const struct sockaddr *)&t->addr, t->addrlen) < 0 &&
		    errno != EINPROGRESS) {
			snprintf(oc->last_error, sizeof(oc->last_error), "%.200s: %s", oc->remote,
				 strerror(errno));
			close(fd);
			continue;
		}
		oc->fd = fd;
		oc->connecting = true;
		oc->armed_in = oc->armed_out = false;
		set_deadline(oc, d->sc->connect_timeout_ms);
		arm(oc, true);
		return true;
	}
	return false;
}

/* The current target is of no use (refused, timed out, greeting or EHLO
 * refused): on to the next one, as RFC 5321 5.1 asks, or give up. */
static void conn_next_target(struct oconn *oc, const char *why)
{
	snprintf(oc->last_error, sizeof(oc->last_error), "%s", why);
	log_msg(LOG_INFO, "event=connect_failed send_connector=\"%s\" relay=%s error=\"%s\"",
		oc->d->sc->name, oc->remote, why);
	if (oc->fd >= 0) {
		if (oc->armed_out)
			ring_cancel(&oc->w->ring, poll_tag(oc, true));
		if (oc->armed_in)
			ring_cancel(&oc->w->ring, poll_tag(oc, false));
		close(oc->fd);
		oc->fd = -1;
	}
	if (oc->client_ready) {
		smtp_client_free(&oc->cl);
		oc->client_ready = false;
	}
	oc->in_off = oc->in_len = 0;
	oc->out_len = 0;
	oc->target++;
	/* Polls of the old socket still in flight complete as cancelled;
	 * a new socket waits for them so a stale completion never drives it. */
	if (oc->inflight) {
		oc->connecting = true;
		oc->deadline = oc->w->now_ms; /* resumed from the poll completions */
		return;
	}
	if (conn_connect(oc))
		return;
	char text[480];
	snprintf(text, sizeof(text), "451 4.4.1 No next hop answered; last error: %.400s",
		 oc->last_error);
	struct djob *j = oc->job;
	oc->job = NULL;
	if (j) {
		snprintf(j->remote, sizeof(j->remote), "%s", oc->remote);
		job_fail(oc->w, j, 451, "4.4.1", text);
	}
	/* The jobs behind it would meet the same hosts. */
	dest_fail_waiting(oc->w, oc->d, 451, "4.4.1", text);
	conn_close(oc);
}

static void conn_close(struct oconn *oc)
{
	if (oc->closing)
		return;
	struct worker *w = oc->w;
	struct dest *d = oc->d;
	oc->closing = true;
	idle_remove(oc);
	if (oc->job) {
		/* Never started on this connection: back, untouched. */
		struct djob *j = oc->job;
		oc->job = NULL;
		job_return(w, j);
	}
	if (oc->fd >= 0) {
		if (oc->armed_in)
			ring_cancel(&w->ring, poll_tag(oc, false));
		if (oc->armed_out)
			ring_cancel(&w->ring, poll_tag(oc, true));
		close(oc->fd);
		oc->fd = -1;
	}
	if (oc->client_ready) {
		smtp_client_free(&oc->cl);
		oc->client_ready = false;
	}
	if (oc->counted) {
		atomic_fetch_sub(&d->th->connections, 1);
		oc->counted = false;
	}
	d->nconns--;
	conn_free_if_done(oc);
	if (!w->stopping)
		dest_pump(w, d);
}

static void job_finished(struct oconn *oc)
{
	struct djob *j = oc->job;
	oc->job = NULL;
	oc->job_started = false;
	j->dsn_passed = smtp_client_dsn_passed(&oc->cl);
	snprintf(j->remote, sizeof(j->remote), "%s", oc->remote);
	queue_job_done(&oc->w->queue, j);
}

/* The connection broke or timed out. */
static void conn_lost(struct oconn *oc, const char *why)
{
	if (oc->job && !oc->job_started) {
		conn_next_target(oc, why);
		return;
	}
	char text[400];
	snprintf(text, sizeof(text), "451 4.4.2 %.100s: %.280s", oc->remote, why);
	if (oc->job && oc->client_ready && smtp_client_fail(&oc->cl, 451, "4.4.2", text)) {
		job_finished(oc);
	} else if (oc->job) {
		struct djob *j = oc->job;
		oc->job = NULL;
		oc->job_started = false;
		job_fail(oc->w, j, 451, "4.4.2", text);
	}
	conn_close(oc);
}

/* May a job start now under the connector's rate limit? */
/* May the job at the head of the queue start now under the connector's
 * rate limit? When not, jobs simply wait in the destination's queue (the
 * tick tries again): nothing is deferred or bounced for our own limit. One
 * log line per throttled stretch, one count per delayed job. */
static bool rate_ok(struct worker *w, struct dest *d)
{
	uint64_t rate = d->sc->max_message_rate;
	if (!rate || !d->th || !d->head)
		return true;
	double left;
	if (throttle_take_message(w->throttle, d->th, (uint32_t)rate, w->now_ms, &left)) {
		d->throttled = false;
		return true;
	}
	if (!d->head->delayed) {
		d->head->delayed = true;
		metric_add(&w->m.send[d->sc->stats_id].throttled, 1);
	}
	if (!d->throttled) {
		d->throttled = true;
		unsigned waiting = 0;
		for (const struct djob *j = d->head; j; j = j->next)
			waiting++;
		log_msg(LOG_INFO,
			"event=throttle reason=send_message_rate send_connector=\"%s\" limit=%llu current=%u",
			d->sc->name, (unsigned long long)rate, waiting);
	}
	return false;
}

static bool conn_take_job(struct oconn *oc)
{
	struct dest *d = oc->d;
	struct worker *w = oc->w;
	if (!d->head || w->stopping || oc->msgs >= d->sc->max_messages_per_connection ||
	    !rate_ok(w, d))
		return false;
	struct djob *j = d->head;
	d->head = j->next;
	if (!d->head)
		d->tail = NULL;
	j->next = NULL;
	oc->job = j;
	oc->job_started = true;
	oc->msgs++;
	smtp_client_start(&oc->cl, &j->cmsg, j->res);
	return true;
}

/* Sends the stored message from the segment, then ".\r\n". 1 done, 0
 * would block, -1 error. */
static int send_body(struct oconn *oc)
{
	const struct qmsg *m = oc->job->m;
	int seg = spool_seg_fd(m->seg);
	while (oc->ext < m->nchunks) {
		uint64_t left = m->len[oc->ext] - oc->ext_off;
		if (left == 0) {
			oc->ext++;
			oc->ext_off = 0;
			continue;
		}
		off_t off = (off_t)(m->off[oc->ext] + oc->ext_off);
		ssize_t n = sendfile(oc->fd, seg, &off, (size_t)left);
		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		if (n == 0) {
			errno = EIO; /* the segment is shorter than the record said */
			return -1;
		}
		oc->ext_off += (uint64_t)n;
	}
	static const char dot[] = ".\r\n";
	while (oc->dot_off < 3) {
		ssize_t n = send(oc->fd, dot + oc->dot_off, 3 - oc->dot_off,
				 MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n < 0)
			return errno == EAGAIN ? 0 : -1;
		oc->dot_off += (size_t)n;
	}
	return 1;
}

/* Another worker waits for one of the connector's connections (the word
 * holds until when, and which worker asked). */
static bool wanted_elsewhere(const struct oconn *oc)
{
	if (!oc->d->th || !oc->d->sc->max_connections)
		return false;
	uint64_t v = atomic_load(&oc->d->th->wanted_until);
	return oc->w->now_ms < v >> 8 && (v & 0xff) != (oc->w->id % 255 + 1);
}

static void go_idle(struct oconn *oc)
{
	if (oc->idle)
		return;
	oc->idle = true;
	oc->idle_next = oc->d->idle;
	oc->d->idle = oc;
	set_deadline(oc, oc->d->sc->idle_timeout_ms);
	arm(oc, false); /* notices the server closing */
}

static void conn_run(struct oconn *oc)
{
	struct worker *w = oc->w;
	for (;;) {
		if (oc->closing)
			return;
		if (oc->out_len) {
			ssize_t n = send(oc->fd, oc->out + oc->out_off, oc->out_len - oc->out_off,
					 MSG_DONTWAIT | MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EAGAIN) {
					arm(oc, true);
					return;
				}
				conn_lost(oc, strerror(errno));
				return;
			}
			oc->out_off += (size_t)n;
			if (oc->out_off < oc->out_len)
				continue;
			oc->out_len = 0;
			smtp_client_sent(&oc->cl);
			set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
		}
		if (oc->body) {
			int r = send_body(oc);
			if (r == 0) {
				arm(oc, true);
				return;
			}
			if (r < 0) {
				conn_lost(oc, strerror(errno));
				return;
			}
			oc->body = false;
			smtp_client_sent(&oc->cl);
			set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
		}
		struct smtp_client_event ev;
		size_t used = smtp_client_feed(&oc->cl, oc->in + oc->in_off,
					       oc->in_len - oc->in_off, &ev);
		oc->in_off += used;
		switch (ev.type) {
		case SMTPC_EV_SEND:
			oc->out = ev.data;
			oc->out_len = ev.len;
			oc->out_off = 0;
			set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
			continue;
		case SMTPC_EV_SEND_BODY:
			oc->body = true;
			oc->ext = 0;
			oc->ext_off = 0;
			oc->dot_off = 0;
			set_deadline(oc, 180000);
			continue;
		case SMTPC_EV_NEED_INPUT: {
			if (oc->in_off >= oc->in_len)
				oc->in_off = oc->in_len = 0;
			ssize_t n = recv(oc->fd, oc->in + oc->in_len, sizeof(oc->in) - oc->in_len,
					 MSG_DONTWAIT);
			if (n > 0) {
				oc->in_len += (size_t)n;
				continue;
			}
			if (n < 0 && errno == EAGAIN) {
				set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
				arm(oc, false);
				return;
			}
			conn_lost(oc, n == 0 ? "connection closed by the next hop" : strerror(errno));
			return;
		}
		case SMTPC_EV_READY:
			idle_remove(oc);
			if (oc->job && !oc->job_started) {
				/* The job this connection was opened for. */
				oc->job_started = true;
				oc->msgs++;
				smtp_client_start(&oc->cl, &oc->job->cmsg, oc->job->res);
				continue;
			}
			if (conn_take_job(oc))
				continue;
			if (!w->stopping && oc->msgs < oc->d->sc->max_messages_per_connection &&
			    oc->d->sc->idle_timeout_ms && !wanted_elsewhere(oc)) {
				go_idle(oc);
				return;
			}
			smtp_client_quit(&oc->cl);
			continue;
		case SMTPC_EV_MSG_DONE:
			job_finished(oc);
			continue;
		case SMTPC_EV_CLOSE:
			if (oc->job && !oc->job_started) {
				char why[600];
				snprintf(why, sizeof(why), "%s", oc->cl.session_error.text[0]
					 ? oc->cl.session_error.text : "session refused");
				conn_next_target(oc, why);
				return;
			}
			conn_close(oc);
			return;
		}
	}
}

/* A connect() finished (the socket became writable). */
static void conn_connected(struct oconn *oc)
{
	int err = 0;
	socklen_t el = sizeof(err);
	if (getsockopt(oc->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
		err = errno;
	if (err) {
		char why[400];
		snprintf(why, sizeof(why), "%s: %s", oc->remote, strerror(err));
		conn_next_target(oc, why);
		return;
	}
	oc->connecting = false;
	struct smtp_client_params p = {.helo_name = oc->d->conf->hostname};
	smtp_client_init(&oc->cl, &p);
	oc->client_ready = true;
	metric_add(&oc->w->m.send[oc->d->sc->stats_id].connections, 1);
	set_deadline(oc, smtp_client_timeout_ms(&oc->cl));
	conn_run(oc);
}

void deliver_on_poll(void *p)
{
	struct oconn *oc = (struct oconn *)((uintptr_t)p & ~(uintptr_t)7);
	bool out = ((uintptr_t)p & 1) != 0;
	oc->inflight--;
	if (out)
		oc->armed_out = false;
	else
		oc->armed_in = false;
	if (oc->closing) {
		conn_free_if_done(oc);
		return;
	}
	if (oc->fd < 0) {
		/* Between targets: the old socket's polls are done. */
		if (oc->inflight == 0 && !conn_connect(oc))
			conn_next_target(oc, oc->last_error[0] ? oc->last_error : "no next hop");
		return;
	}
	if (oc->connecting) {
		if (out)
			conn_connected(oc);
		return;
	}
	if (oc->idle) {
		/* The server spoke or closed while we had nothing to say:
		 * a 421 or an EOF; either way the connection is done. */
		char b[512];
		ssize_t n = recv(oc->fd, b, sizeof(b), MSG_DONTWAIT);
		if (n < 0 && errno == EAGAIN) {
			arm(oc, false);
			return;
		}
		conn_close(oc);
		return;
	}
	conn_run(oc);
}

/* Gives waiting jobs connections: idle ones first, then new ones up to
 * the connector's limit. */
static void dest_pump(struct worker *w, struct dest *d)
{
	if (w->stopping || !d->head)
		return;
	if (d->domain[0]) {
		if (d->resolving)
			return;
		if ((int64_t)w->now_ms >= d->resolved_until) {
			dest_resolve(w, d);
			return;
		}
	} else if ((int64_t)w->now_ms >= d->resolved_until) {
		dest_set_smart_hosts(d);
	}
	while (d->head) {
		if (d->idle) {
			struct oconn *oc = d->idle;
			idle_remove(oc);
			if (oc->msgs >= d->sc->max_messages_per_connection) {
				smtp_client_quit(&oc->cl); /* used up: a fresh one follows */
				conn_run(oc);
				continue;
			}
			if (!conn_take_job(oc)) {
				go_idle(oc);
				return; /* rate limited: jobs went back to the queue */
			}
			conn_run(oc);
			continue;
		}
		uint64_t max = d->sc->max_connections;
		if (max && d->th) {
			int32_t now = atomic_fetch_add(&d->th->connections, 1) + 1;
			if (now > (int32_t)max) {
				atomic_fetch_sub(&d->th->connections, 1);
				/* A worker below its fair share makes the others
				 * give back their idle connections; it retries at
				 * its next tick. */
				uint64_t fair = max / (w->nworkers ? w->nworkers : 1);
				if (d->nconns < (fair ? fair : 1))
					atomic_store(&d->th->wanted_until,
						     (w->now_ms + 1000) << 8 | (w->id % 255 + 1));
				return;
			}
		}
		if (!rate_ok(w, d)) {
			if (max && d->th)
				atomic_fetch_sub(&d->th->connections, 1);
			return;
		}
		struct djob *j = d->head;
		d->head = j->next;
		if (!d->head)
			d->tail = NULL;
		j->next = NULL;
		struct oconn *oc = calloc(1, sizeof(*oc));
		if (!oc) {
			if (max && d->th)
				atomic_fetch_sub(&d->th->connections, 1);
			job_fail(w, j, 451, "4.3.0", "451 4.3.0 Out of memory");
			continue;
		}
		oc->w = w;
		oc->d = d;
		oc->fd = -1;
		oc->counted = max && d->th;
		oc->job = j;
		oc->next = w->dl->conns;
		if (oc->next)
			oc->next->prev = oc;
		w->dl->conns = oc;
		w->dl->nconns++;
		d->nconns++;
		if (!conn_connect(oc)) {
			char text[480];
			snprintf(text, sizeof(text), "451 4.4.1 No next hop reachable%s%.400s",
				 oc->last_error[0] ? "; last error: " : "", oc->last_error);
			oc->job = NULL;
			job_fail(w, j, 451, "4.4.1", text);
			dest_fail_waiting(w, d, 451, "4.4.1", text);
			conn_close(oc);
			return;
		}
	}
}

void deliver_submit(struct worker *w, struct djob *j)
{
	if (j->sc->drop_dir) {
		drop_submit(w, j);
		return;
	}
	if (w->stopping) {
		job_return(w, j);
		return;
	}
	struct dest *d = dest_get(w, j);
	if (!d) {
		job_fail(w, j, 451, "4.3.0", "451 4.3.0 Out of memory");
		return;
	}
	if (d->tail)
		d->tail->next = j;
	else
		d->head = j;
	d->tail = j;
	dest_pump(w, d);
}

void deliver_wake(struct worker *w)
{
	struct deliver *dl = w->dl;
	pthread_mutex_lock(&dl->lock);
	struct inbox_item *it = dl->inbox;
	dl->inbox = NULL;
	pthread_mutex_unlock(&dl->lock);
	/* Oldest first. */
	struct inbox_item *rev = NULL;
	while (it) {
		struct inbox_item *n = it->next;
		it->next = rev;
		rev = it;
		it = n;
	}
	while (rev) {
		it = rev;
		rev = it->next;
		if (it->kind == INBOX_RESOLVED) {
			on_resolved(w, it->d, it->res);
		} else {
			dl->dropping--;
			job_result_all(it->job, it->code, it->status, it->text);
			queue_job_done(&w->queue, it->job);
		}
		free(it);
	}
}

void deliver_tick(struct worker *w)
{
	struct deliver *dl = w->dl;
	for (struct oconn *oc = dl->conns, *next; oc; oc = next) {
		next = oc->next;
		if (oc->idle && !oc->closing && wanted_elsewhere(oc)) {
			idle_remove(oc);
			smtp_client_quit(&oc->cl);
			conn_run(oc);
			continue;
		}
		if (oc->closing || !oc->deadline || w->now_ms < oc->deadline)
			continue;
		if (oc->fd < 0)
			continue; /* waiting for old polls between targets */
		if (oc->connecting) {
			char why[400];
			snprintf(why, sizeof(why), "%s: connection timed out", oc->remote);
			conn_next_target(oc, why);
		} else if (oc->idle) {
			conn_close(oc);
		} else {
			conn_lost(oc, "timed out waiting for the next hop");
		}
	}
	if (w->stopping && w->now_ms >= w->stop_deadline_ms)
		for (struct oconn *oc = dl->conns, *next; oc; oc = next) {
			next = oc->next;
			if (!oc->closing)
				conn_lost(oc, "shutting down");
		}
	/* Forget destinations unused for a while. */
	for (unsigned b = 0; b < DEST_BUCKETS; b++) {
		struct dest **pp = &dl->bucket[b];
		while (*pp) {
			struct dest *d = *pp;
			if (!d->head && !d->nconns && !d->resolving &&
			    w->now_ms - d->last_used > DEST_KEEP_MS) {
				*pp = d->hnext;
				conf_unref(d->conf);
				free(d->t);
				free(d);
				continue;
			}
			if (d->head && !w->stopping)
				dest_pump(w, d);
			pp = &d->hnext;
		}
	}
}

void deliver_stop(struct worker *w)
{
	struct deliver *dl = w->dl;
	for (unsigned b = 0; b < DEST_BUCKETS; b++)
		for (struct dest *d = dl->bucket[b]; d; d = d->hnext) {
			while (d->head) {
				struct djob *j = d->head;
				d->head = j->next;
				j->next = NULL;
				job_return(w, j);
			}
			d->tail = NULL;
			while (d->idle)
				conn_close(d->idle);
		}
}

bool deliver_idle(const struct worker *w)
{
	const struct deliver *dl = w->dl;
	return !dl || (!dl->nconns && !dl->resolving && !dl->dropping);
}

int deliver_init(struct worker *w)
{
	struct deliver *dl = calloc(1, sizeof(*dl));
	if (!dl) {
		snprintf(w->err, sizeof(w->err), "out of memory");
		return -1;
	}
	pthread_mutex_init(&dl->lock, NULL);
	pthread_cond_init(&dl->drop_cond, NULL);
	dl->drops_tail = &dl->drops;
	w->dl = dl;
	return 0;
}

void deliver_free(struct worker *w)
{
	struct deliver *dl = w->dl;
	if (!dl)
		return;
	if (dl->drop_started) {
		pthread_mutex_lock(&dl->lock);
		dl->drop_stop = true;
		pthread_cond_signal(&dl->drop_cond);
		pthread_mutex_unlock(&dl->lock);
		pthread_join(dl->drop_thread, NULL);
	}
	while (dl->conns) {
		struct oconn *oc = dl->conns;
		dl->conns = oc->next;
		if (oc->fd >= 0)
			close(oc->fd);
		if (oc->client_ready)
			smtp_client_free(&oc->cl);
		free(oc);
	}
	for (unsigned b = 0; b < DEST_BUCKETS; b++)
		while (dl->bucket[b]) {
			struct dest *d = dl->bucket[b];
			dl->bucket[b] = d->hnext;
			conf_unref(d->conf);
			free(d->t);
			free(d);
		}
	while (dl->inbox) {
		struct inbox_item *it = dl->inbox;
		dl->inbox = it->next;
		if (it->res)
			resolver_result_free(it->res);
		free(it);
	}
	pthread_mutex_destroy(&dl->lock);
	pthread_cond_destroy(&dl->drop_cond);
	free(dl);
	w->dl = NULL;
}
