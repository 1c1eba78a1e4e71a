/* Stats socket (see stats.h). Blocking I/O on a thread of its own: a few
 * operator commands per minute do not belong on the workers' rings. */
#include "stats.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <unistd.h>

#include "connectors.h"
#include "dirs.h"
#include "envelope.h"
#include "listener.h"
#include "log.h"
#include "track.h"
#include "wctx.h"

#define STATS_LINE_MAX 512

static const char *const commands_help =
	"commands: show info [json] | show stat [json] | "
	"show connectors [json] | show throttle | show metrics | match <ip>[:<port>] [json] | "
	"flush | reload | drain | help | "
	"show queue [sender=S] [rcpt=R] [domain=D] [client=IP] [state=active|deferred|held] "
	"[limit=N] [offset=N] [json] | show destinations [filters] [json] | "
	"hold|release|delete|bounce|retry ID|all [filters] [json] | "
	"track [id=ID] [sender=S] [rcpt=R] [message_id=M] [since=TIME] [until=TIME] [limit=N] [json]";

/* track runs on a thread of its own (stats_task), so that /readyz and
 * /metrics never wait for it; after this it answers with what it found. */
#define TRACK_BUDGET_MS 3000

/* Queued messages and their bytes (message and envelope), read from the
 * segments as recovery would. */
/* The queue as the workers hold it: counters, not a scan of the spool, so
 * a scrape costs the same whatever the queue's size. */
static void spool_usage_of(const struct stats_host *h, struct spool_usage *u)
{
	u->messages = 0;
	u->bytes = 0;
	for (unsigned i = 0; i < h->nworkers; i++) {
		u->messages += (long)metric_get(&h->metrics[i]->queue_messages);
		u->bytes += metric_get(&h->metrics[i]->queue_bytes);
	}
}

/* /readyz (B.10): accepting, and the spool can take a message: its
 * directory is writable and there is room for a new segment. why says
 * what is not. */
static bool node_ready(const struct stats_host *h, struct spool_usage *u, char *why, size_t cap)
{
	struct statvfs v;
	u->free_bytes = 0;
	bool fs = h->spool_dir && statvfs(h->spool_dir, &v) == 0;
	if (fs)
		u->free_bytes = (uint64_t)v.f_bavail * v.f_frsize;
	if (h->accepting && !h->accepting(h->arg))
		snprintf(why, cap, "draining");
	else if (!fs)
		snprintf(why, cap, "spool %s: cannot stat", h->spool_dir ? h->spool_dir : "-");
	else if ((v.f_flag & ST_RDONLY) || access(h->spool_dir, W_OK) < 0)
		snprintf(why, cap, "spool %s: not writable", h->spool_dir);
	else if (u->free_bytes < h->spool_room)
		snprintf(why, cap, "spool %s: %llu bytes free, a segment needs %llu", h->spool_dir,
			 (unsigned long long)u->free_bytes, (unsigned long long)h->spool_room);
	else
		return (u->ready = true);
	return (u->ready = false);
}

static void show_info(const struct stats_host *h, const struct conf *c,
		      FILE *out, bool json)
{
	struct metrics_totals t;
	metrics_totals(h->metrics, h->nworkers, &t);
	size_t tbytes, prefixes, intervals;
	connectors_stats(c, &tbytes, &prefixes, &intervals);
	struct spool_usage sp;
	spool_usage_of(h, &sp);
	uint64_t refused = 0;
	for (int k = 0; k < REFUSE_COUNT; k++)
		refused += t.refused[k];
	const char *fmt = json
		? "{\"version\": \"0.1.0\", \"uptime_s\": %llu, \"workers\": %u, \"io_backend\": \"%s\", "
		  "\"connectors\": %u, \"bindings\": %u, \"connector_table_prefixes\": %zu, "
		  "\"connector_table_intervals\": %zu, "
		  "\"connector_table_bytes\": %zu, \"connections_total\": %llu, "
		  "\"connections_active\": %llu, \"connections_refused\": %llu, "
		  "\"messages_received\": %llu, \"messages_rejected\": %llu, "
		  "\"bytes_received\": %llu, \"queue_messages\": %ld, \"spool_bytes\": %llu, "
		  "\"fsyncs\": %llu, \"flushes\": %llu, \"flushed_messages\": %llu}\n"
		: "version: 0.1.0\nuptime_s: %llu\nworkers: %u\nio_backend: %s\nconnectors: %u\nbindings: %u\n"
		  "connector_table_prefixes: %zu\nconnector_table_intervals: %zu\n"
		  "connector_table_bytes: %zu\n"
		  "connections_total: %llu\nconnections_active: %llu\n"
		  "connections_refused: %llu\nmessages_received: %llu\n"
		  "messages_rejected: %llu\nbytes_received: %llu\nqueue_messages: %ld\n"
		  "spool_bytes: %llu\nfsyncs: %llu\nflushes: %llu\nflushed_messages: %llu\n";
	fprintf(out, fmt, (unsigned long long)((wctx_clock_ms() - h->start_ms) / 1000),
		h->nworkers, h->io_backend, c->nrc, c->nbindings, prefixes, intervals, tbytes,
		(unsigned long long)t.connections, (unsigned long long)t.active,
		(unsigned long long)refused, (unsigned long long)t.messages,
		(unsigned long long)t.rejected, (unsigned long long)t.bytes, sp.messages,
		(unsigned long long)sp.bytes, (unsigned long long)t.fsyncs,
		(unsigned long long)t.dirsyncs, (unsigned long long)t.flushed_messages);
}

/* How long an operator's queue request may take: a million messages are
 * scanned in well under a second; the rest is one group commit. */
#define QCTL_TIMEOUT_MS 20000

/* show queue, show destinations, hold, release, delete, bounce, retry
 * (B.11): every worker answers for its own messages, changes once they
 * are durable; logged as one event=admin line besides each message's. */
static int queue_control(const struct stats_host *h, enum qctl_op op, const char *args,
			 bool json, FILE *out)
{
	struct qctl_cmd c;
	char err[256];
	if (qctl_parse(op, args, &c, err, sizeof(err)) < 0) {
		fprintf(out, "%s\n", err);
		return -1;
	}
	c.json = json;
	struct qctl_req *r = qctl_req_new(&c, h->nworkers);
	if (!r) {
		fprintf(out, "error: out of memory\n");
		return -1;
	}
	uint64_t t0 = wctx_clock_us();
	bool two = op == QCTL_SHOW && c.offset + c.limit > QCTL_ONE_ROUND;
	r->ids_only = two;
	h->queue_ctl(h->arg, r);
	bool complete = qctl_req_wait(r, QCTL_TIMEOUT_MS);
	uint64_t lo = 0, hi = 0, total = 0;
	if (two && complete && qctl_page(r, &lo, &hi, &total)) {
		/* The page is known: its rows, and only those, are made. */
		qctl_req_put(r);
		if (!(r = qctl_req_new(&c, h->nworkers))) {
			fprintf(out, "error: out of memory\n");
			return -1;
		}
		r->render = true;
		r->render_lo = lo;
		r->render_hi = hi;
		r->total = total;
		h->queue_ctl(h->arg, r);
		complete = qctl_req_wait(r, QCTL_TIMEOUT_MS);
	} else if (two && complete) {
		/* Nothing from offset on: the first round's rows are none to
		 * show, and it counted the total. */
		r->ids_only = false;
	}
	int ret = qctl_answer(out, r, complete);
	if (op != QCTL_SHOW && op != QCTL_DESTINATIONS) {
		uint64_t matched = 0, touched = 0, busy = 0;
		for (unsigned i = 0; complete && i < r->nparts; i++) {
			matched += r->part[i].matched;
			touched += r->part[i].touched;
			busy += r->part[i].busy;
		}
		char ft[600], qf[LOG_QUOTE_CAP(600)];
		qctl_filter_text(&c, ft, sizeof(ft));
		log_msg(ret ? LOG_WARN : LOG_INFO,
			"event=admin action=%s filter=%s by=stats matched=%llu touched=%llu busy=%llu result=%s ms=%.1f",
			qctl_op_name(op), log_quote(qf, sizeof(qf), ft), (unsigned long long)matched,
			(unsigned long long)touched, (unsigned long long)busy,
			!complete ? "timeout" : ret ? "error" : "ok",
			(double)(wctx_clock_us() - t0) / 1000.0);
	}
	qctl_req_put(r);
	return ret;
}

/* "show queue", "show queue sender=x": the arguments after name, or NULL
 * when cmd is not that command. */
static const char *command_args(const char *cmd, const char *name)
{
	size_t n = strlen(name);
	if (strncmp(cmd, name, n) != 0 || (cmd[n] && cmd[n] != ' '))
		return NULL;
	return cmd + n;
}

/* The content rules' names, and the action each has in c. */
static const struct metrics_rules *rules_of(const struct stats_host *h, const struct conf *c,
					    struct metrics_rules *mr)
{
	if (!h->rule_registry)
		return NULL;
	mr->reg = h->rule_registry;
	memset(mr->action, -1, sizeof(mr->action));
	for (unsigned i = 0; c && i < c->content.n; i++)
		if (c->content.rule[i].stats_id < METRIC_CONNECTORS_MAX)
			mr->action[c->content.rule[i].stats_id] = (int8_t)c->content.rule[i].action;
	return mr;
}

static void show_metrics(const struct stats_host *h, FILE *out)
{
	struct spool_usage sp;
	char why[160];
	spool_usage_of(h, &sp);
	node_ready(h, &sp, why, sizeof(why));
	struct conf *c = h->current ? h->current(h->arg) : NULL;
	struct metrics_rules mr;
	metrics_print_prometheus(out, h->registry, h->send_registry, h->metrics, h->nworkers, &sp,
				 h->io_backend, rules_of(h, c, &mr));
	conf_unref(c);
}

static bool binding_port(const struct binding *b, unsigned *port)
{
	if (b->addr.ss_family == AF_INET)
		*port = ntohs(((const struct sockaddr_in *)&b->addr)->sin_port);
	else
		*port = ntohs(((const struct sockaddr_in6 *)&b->addr)->sin6_port);
	return true;
}

/* "10.1.2.3", "10.1.2.3:25", "2001:db8::1", "[2001:db8::1]:25" */
static int parse_match_arg(const char *arg, struct sockaddr_storage *ss,
			   unsigned *port)
{
	char host[INET6_ADDRSTRLEN + 1];
	const char *p = NULL;
	*port = 0;
	memset(ss, 0, sizeof(*ss));
	if (arg[0] == '[') {
		const char *close = strchr(arg, ']');
		if (!close || (size_t)(close - arg - 1) >= sizeof(host))
			return -1;
		memcpy(host, arg + 1, (size_t)(close - arg - 1));
		host[close - arg - 1] = '\0';
		if (close[1] == ':')
			p = close + 2;
		else if (close[1])
			return -1;
	} else {
		const char *colon = strchr(arg, ':');
		bool v4port = colon && !strchr(colon + 1, ':');
		size_t n = v4port ? (size_t)(colon - arg) : strlen(arg);
		if (n >= sizeof(host))
			return -1;
		memcpy(host, arg, n);
		host[n] = '\0';
		if (v4port)
			p = colon + 1;
	}
	if (p) {
		char *end;
		long v = strtol(p, &end, 10);
		if (end == p || *end || v < 1 || v > 65535)
			return -1;
		*port = (unsigned)v;
	}
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		return 0;
	}
	return -1;
}

/* What a real connection from that address would get, per binding. */
static int match(const struct conf *c, const char *arg, FILE *out, bool json)
{
	struct sockaddr_storage ss;
	unsigned port;
	if (parse_match_arg(arg, &ss, &port) < 0) {
		fprintf(out, "error: bad address \"%s\" (want ip, ip:port or [ipv6]:port)\n", arg);
		return -1;
	}
	unsigned shown = 0;
	for (unsigned b = 0; b < c->nbindings; b++) {
		unsigned bp;
		binding_port(&c->bindings[b], &bp);
		if (port && bp != port)
			continue;
		if (json && shown == 0)
			fputs("{\"matches\": [", out);
		shown++;
		const struct ip_range *why;
		const struct rconn *rc = conf_match(c, b, (const struct sockaddr *)&ss, &why);
		char perms[96];
		if (json) {
			fputs(shown > 1 ? ", {\"binding\": " : "{\"binding\": ", out);
			json_write_string(out, c->bindings[b].text);
			if (!rc) {
				fputs(", \"connector\": null, \"reply\": \"554 5.7.1\"}", out);
				continue;
			}
			fputs(", \"connector\": ", out);
			json_write_string(out, rc->name);
			fputs(", \"range\": ", out);
			json_write_string(out, why->text);
			fputs(", \"permission_groups\": ", out);
			json_write_string(out, conf_perm_names(rc->perms, perms, sizeof(perms)));
			fprintf(out, ", \"may_submit\": %s}", rc->smtp.may_submit ? "true" : "false");
			continue;
		}
		if (!rc) {
			fprintf(out, "binding %s: no connector: refused at connect with 554 5.7.1\n",
				c->bindings[b].text);
			continue;
		}
		fprintf(out, "binding %s: connector \"%s\" range %s permissions=%s%s%s\n",
			c->bindings[b].text, rc->name, why->text,
			conf_perm_names(rc->perms, perms, sizeof(perms)),
			rc->smtp.may_submit ? "" : " (MAIL refused: 530 5.7.1)",
			c->bindings[b].proxy ? " (PROXY protocol: when a trusted proxy's header names this address)" : "");
	}
	const struct ip_range *tp;
	if (!json && conf_trusted_proxy(c, (const struct sockaddr *)&ss, &tp))
		fprintf(out, "note: %s is a trusted proxy (%s): on PROXY protocol bindings its connections get the connector of the address in their header, and this one only for a LOCAL or UNKNOWN header\n",
			arg, tp->text);
	if (!shown) {
		fprintf(out, "error: no binding on port %u\n", port);
		return -1;
	}
	if (json)
		fputs("]}\n", out);
	return 0;
}

int stats_command(const struct stats_host *h, const char *line, FILE *out)
{
	char cmd[STATS_LINE_MAX];
	snprintf(cmd, sizeof(cmd), "%s", line);
	size_t n = strlen(cmd);
	while (n && (cmd[n - 1] == '\n' || cmd[n - 1] == '\r' || cmd[n - 1] == ' '))
		cmd[--n] = '\0';
	bool json = n > 5 && strcmp(cmd + n - 5, " json") == 0;
	if (json)
		cmd[n - 5] = '\0';
	int ret = 0;
	if (strcmp(cmd, "reload") == 0) {
		char result[1024];
		ret = h->reload(h->arg, result, sizeof(result));
		fprintf(out, "%s%s\n", ret ? "error: " : "", result);
		return ret;
	}
	if (strcmp(cmd, "drain") == 0 && !json && h->drain) {
		char result[512];
		ret = h->drain(h->arg, result, sizeof(result));
		fprintf(out, "%s%s\n", ret ? "error: " : "", result);
		return ret;
	}
	const char *args;
	enum qctl_op op;
	char word[16];
	size_t wl = strcspn(cmd, " ");
	snprintf(word, sizeof(word), "%.*s", (int)(wl < sizeof(word) - 1 ? wl : sizeof(word) - 1),
		 cmd);
	if ((args = command_args(cmd, "show queue")))
		return queue_control(h, QCTL_SHOW, args, json, out);
	if ((args = command_args(cmd, "show destinations")))
		return queue_control(h, QCTL_DESTINATIONS, args, json, out);
	if (wl < sizeof(word) && qctl_op_of(word, &op))
		return queue_control(h, op, cmd + wl, json, out);
	if (strcmp(cmd, "flush") == 0 && !json) {
		/* Every queued message is due now (after a next hop came back). */
		h->flush(h->arg);
		fprintf(out, "flushing: every queued message is due now\n");
		return 0;
	}
	struct conf *c = h->current(h->arg);
	if (strcmp(cmd, "show info") == 0) {
		show_info(h, c, out, json);
	} else if (strcmp(cmd, "show stat") == 0) {
		struct metrics_rules mr;
		metrics_print_stat(out, h->registry, h->send_registry, h->metrics, h->nworkers, json,
				   rules_of(h, c, &mr));
	} else if (strcmp(cmd, "show throttle") == 0 && !json) {
		throttle_print(h->throttle, c, wctx_clock_ms(), out);
	} else if (strcmp(cmd, "show metrics") == 0 && !json) {
		show_metrics(h, out);
	} else if (strcmp(cmd, "show connectors") == 0) {
		if (json)
			conf_print_json(c, out);
		else
			conf_print(c, out);
	} else if (strncmp(cmd, "match ", 6) == 0) {
		ret = match(c, cmd + 6, out, json);
	} else if (strcmp(cmd, "track") == 0 || strncmp(cmd, "track ", 6) == 0) {
		struct track_query q;
		char err[300];
		if (!track_parse(cmd + 5, wctx_wall_ms(), &q, err, sizeof(err))) {
			fprintf(out, "error: %s\n", err);
			ret = -1;
		} else {
			q.json = q.json || json;
			ret = track_run(c->log_file, &q, TRACK_BUDGET_MS, out);
		}
	} else if (strcmp(cmd, "help") == 0) {
		fprintf(out, "%s\n", commands_help);
	} else {
		fprintf(out, "error: unknown command \"%s%s\"; %s\n", cmd, json ? " json" : "",
			commands_help);
		ret = -1;
	}
	conf_unref(c);
	return ret;
}

/* The request target is path, with or without a query. */
static bool http_path_is(const char *target, const char *path)
{
	size_t n = strlen(path);
	return strncmp(target, path, n) == 0 && (target[n] == ' ' || target[n] == '?');
}

/* One HTTP/1.1 request (GET /metrics, /healthz or /readyz, else 404, 405,
 * or 403 for /metrics from outside server.metrics_allow): the whole
 * response, written to out. */
static void respond_http(struct stats_server *s, const char *req,
			 const struct sockaddr_storage *peer, FILE *out)
{
	char *body = NULL;
	size_t blen = 0;
	FILE *b = open_memstream(&body, &blen);
	if (!b)
		return;
	const char *status = "200 OK", *ctype = "text/plain; version=0.0.4; charset=utf-8";
	bool head = strncmp(req, "HEAD ", 5) == 0;
	const char *target = req + (head ? 5 : 4);
	if (strncmp(req, "GET ", 4) != 0 && !head) {
		status = "405 Method Not Allowed";
		ctype = "text/plain";
		fputs("only GET /metrics, /healthz, /readyz\n", b);
	} else if (http_path_is(target, "/healthz")) {
		/* Alive: this thread answers, so the process is not wedged. */
		ctype = "text/plain";
		fputs("ok\n", b);
	} else if (http_path_is(target, "/readyz")) {
		struct spool_usage u;
		char why[160];
		ctype = "text/plain";
		if (node_ready(s->host, &u, why, sizeof(why))) {
			fputs("ready\n", b);
		} else {
			status = "503 Service Unavailable";
			fprintf(b, "not ready: %s\n", why);
		}
	} else if (!http_path_is(target, "/metrics")) {
		status = "404 Not Found";
		ctype = "text/plain";
		fputs("not found: try /metrics, /healthz or /readyz\n", b);
	} else {
		/* Health answers anyone (balancers, kubelets); the counters only
		 * the node itself and the scrapers the configuration names. */
		struct conf *c = s->host->current(s->host->arg);
		bool allowed = conf_metrics_allowed(c, (const struct sockaddr *)peer);
		conf_unref(c);
		if (allowed) {
			show_metrics(s->host, b);
		} else {
			char ip[64];
			peer_text(peer, ip, sizeof(ip));
			status = "403 Forbidden";
			ctype = "text/plain";
			fprintf(b, "forbidden: %s is not in server.metrics_allow\n", ip);
		}
	}
	fclose(b);
	fprintf(out, "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
		     "Connection: close\r\n\r\n", status, ctype, blen);
	if (!head && body)
		fwrite(body, 1, blen, out);
	free(body);
}

/* Clients are served side by side, each with its own deadline, so a slow
 * or stuck one (a scraper that never reads, a socat left open) costs a
 * slot, never the others' answers. */
#define STATS_CLIENTS 64
#define STATS_DEADLINE_MS 5000  /* the request in and the reply out by then */
#define STATS_REQ_MAX 8192

struct stats_client {
	int fd;                   /* -1: a free slot */
	bool http;
	bool writing;
	uint64_t deadline_ms;
	uint64_t serial;
	bool waiting;             /* its reply is being made by a task */
	struct sockaddr_storage peer;
	size_t inlen;
	char in[STATS_REQ_MAX];
	char *out;
	size_t outlen, outoff;
};

static void client_close(struct stats_client *k)
{
	close(k->fd);
	free(k->out);
	k->fd = -1;
	k->out = NULL;
	k->waiting = false;
}

/* A command that may take long (track), run off the stats thread: the
 * client waits for it, every other client is served meanwhile. */
struct stats_task {
	struct stats_server *s;
	unsigned slot;
	uint64_t serial;
	pthread_t thread;
	char cmd[STATS_LINE_MAX];
	char *out;
	size_t outlen;
};

static void *task_main(void *arg)
{
	struct stats_task *t = arg;
	FILE *out = open_memstream(&t->out, &t->outlen);
	if (out) {
		stats_command(t->s->host, t->cmd, out);
		fclose(out);
	}
	ssize_t w = write(t->s->task_pipe[1], &t, sizeof(t));
	(void)w; /* a pipe write this small is whole */
	return NULL;
}

static bool long_command(const char *line)
{
	return strncmp(line, "track", 5) == 0 &&
	       (line[5] == '\0' || line[5] == ' ' || line[5] == '\r');
}

/* false: not started (busy or out of resources): answered at once. */
static bool task_start(struct stats_server *s, struct stats_client *k, const char *line)
{
	unsigned free_at = STATS_TASKS_MAX;
	for (unsigned i = 0; i < STATS_TASKS_MAX; i++)
		if (!s->tasks[i])
			free_at = i;
	struct stats_task *t = free_at < STATS_TASKS_MAX ? calloc(1, sizeof(*t)) : NULL;
	if (!t)
		return false;
	t->s = s;
	t->slot = (unsigned)(k - s->clients);
	t->serial = k->serial;
	snprintf(t->cmd, sizeof(t->cmd), "%s", line);
	if (pthread_create(&t->thread, NULL, task_main, t) != 0) {
		free(t);
		return false;
	}
	s->tasks[free_at] = t;
	k->waiting = true;
	k->deadline_ms = wctx_clock_ms() + TRACK_BUDGET_MS + STATS_DEADLINE_MS;
	return true;
}

static void task_reap(struct stats_server *s, struct stats_task *t)
{
	pthread_join(t->thread, NULL);
	for (unsigned i = 0; i < STATS_TASKS_MAX; i++)
		if (s->tasks[i] == t)
			s->tasks[i] = NULL;
	struct stats_client *k = &s->clients[t->slot];
	if (k->fd >= 0 && k->serial == t->serial && k->waiting) {
		k->waiting = false;
		k->out = t->out;
		k->outlen = t->outlen;
		k->outoff = 0;
		k->writing = true;
		k->deadline_ms = wctx_clock_ms() + STATS_DEADLINE_MS;
	} else {
		free(t->out); /* its client gave up */
	}
	free(t);
}

static void tasks_done(struct stats_server *s)
{
	struct stats_task *t;
	while (read(s->task_pipe[0], &t, sizeof(t)) == (ssize_t)sizeof(t))
		task_reap(s, t);
}

/* The request is whole (or as whole as it will get): the reply is made
 * now and sent as the client takes it. */
static void client_respond(struct stats_server *s, struct stats_client *k)
{
	k->in[k->inlen] = '\0';
	if (!k->http) {
		char *nl = memchr(k->in, '\n', k->inlen);
		bool whole = nl || k->inlen < STATS_LINE_MAX - 1; /* a line, or all before EOF */
		if (whole && strlen(k->in) < STATS_LINE_MAX && long_command(k->in)) {
			if (nl)
				*nl = '\0';
			if (task_start(s, k, k->in))
				return;
			/* Never on this thread: that would stall the others. */
			free(k->out);
			k->out = NULL;
			FILE *out = open_memstream(&k->out, &k->outlen);
			if (!out) {
				client_close(k);
				return;
			}
			fprintf(out, "error: track: %d queries are running already; try again in a moment\n",
				STATS_TASKS_MAX);
			fclose(out);
			k->writing = true;
			k->outoff = 0;
			k->deadline_ms = wctx_clock_ms() + STATS_DEADLINE_MS;
			return;
		}
	}
	FILE *out = open_memstream(&k->out, &k->outlen);
	if (!out) {
		client_close(k);
		return;
	}
	if (k->http) {
		respond_http(s, k->in, &k->peer, out);
	} else {
		char *nl = memchr(k->in, '\n', k->inlen);
		if (!nl && k->inlen >= STATS_LINE_MAX - 1) {
			fprintf(out, "error: command too long\n");
		} else {
			if (nl)
				*nl = '\0';
			if (strlen(k->in) >= STATS_LINE_MAX)
				fprintf(out, "error: command too long\n");
			else
				stats_command(s->host, k->in, out);
		}
	}
	fclose(out);
	k->writing = true;
	k->outoff = 0;
	/* A queue request may have waited for the workers: the reply gets
	 * its own time to go out. */
	k->deadline_ms = wctx_clock_ms() + STATS_DEADLINE_MS;
}

static bool request_complete(const struct stats_client *k)
{
	if (!k->http)
		return memchr(k->in, '\n', k->inlen) != NULL || k->inlen >= STATS_LINE_MAX - 1;
	return memmem(k->in, k->inlen, "\r\n\r\n", 4) || memmem(k->in, k->inlen, "\n\n", 2) ||
	       k->inlen >= STATS_REQ_MAX - 1;
}

static void client_input(struct stats_server *s, struct stats_client *k)
{
	ssize_t r = recv(k->fd, k->in + k->inlen, STATS_REQ_MAX - 1 - k->inlen, MSG_DONTWAIT);
	if (r < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (r > 0)
		k->inlen += (size_t)r;
	if (r <= 0 || request_complete(k))
		client_respond(s, k); /* at EOF: what came is the request */
}

static void client_output(struct stats_client *k)
{
	while (k->outoff < k->outlen) {
		ssize_t w = send(k->fd, k->out + k->outoff, k->outlen - k->outoff,
				 MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (w <= 0)
			break;
		k->outoff += (size_t)w;
	}
	client_close(k);
}

static void client_accept(struct stats_server *s, int lfd, bool http)
{
	struct stats_client *k = NULL;
	for (unsigned i = 0; i < STATS_CLIENTS && !k; i++)
		if (s->clients[i].fd < 0)
			k = &s->clients[i];
	struct sockaddr_storage peer;
	socklen_t pl = sizeof(peer);
	int fd = accept4(lfd, (struct sockaddr *)&peer, &pl, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0)
		return;
	if (!k) {
		close(fd); /* every slot busy: the listener is not polled then */
		return;
	}
	k->fd = fd;
	k->http = http;
	k->writing = false;
	k->waiting = false;
	k->serial = ++s->next_serial;
	k->inlen = 0;
	k->peer = peer;
	k->deadline_ms = wctx_clock_ms() + STATS_DEADLINE_MS;
}

static void *stats_main(void *arg)
{
	struct stats_server *s = arg;
	struct pollfd pf[4 + STATS_CLIENTS];
	struct stats_client *who[4 + STATS_CLIENTS];
	for (;;) {
		uint64_t now = wctx_clock_ms();
		int timeout = -1;
		unsigned n = 0, busy = 0;
		pf[n++] = (struct pollfd){s->stop_pipe[0], POLLIN, 0};
		pf[n++] = (struct pollfd){s->task_pipe[0], POLLIN, 0};
		for (unsigned i = 0; i < STATS_CLIENTS; i++) {
			struct stats_client *k = &s->clients[i];
			if (k->fd < 0)
				continue;
			if (now >= k->deadline_ms) {
				client_close(k); /* too slow: its slot goes to the next */
				continue;
			}
			busy++;
			int left = (int)(k->deadline_ms - now);
			if (timeout < 0 || left < timeout)
				timeout = left;
			if (k->waiting)
				continue; /* nothing to read or write until its task is done */
			who[n] = k;
			pf[n++] = (struct pollfd){k->fd, k->writing ? POLLOUT : POLLIN, 0};
		}
		unsigned first_listener = n;
		if (busy < STATS_CLIENTS) {
			if (s->fd >= 0)
				pf[n++] = (struct pollfd){s->fd, POLLIN, 0};
			if (s->metrics_fd >= 0)
				pf[n++] = (struct pollfd){s->metrics_fd, POLLIN, 0};
		}
		if (poll(pf, n, timeout) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[0].revents)
			break;
		if (pf[1].revents)
			tasks_done(s);
		for (unsigned i = 2; i < first_listener; i++) {
			if (!pf[i].revents)
				continue;
			struct stats_client *k = who[i];
			if (k->writing) {
				client_output(k);
				continue;
			}
			client_input(s, k);
			if (k->fd >= 0 && k->writing)
				client_output(k); /* the reply is made: most fit at once */
		}
		for (unsigned i = first_listener; i < n; i++)
			if (pf[i].revents)
				client_accept(s, pf[i].fd, pf[i].fd == s->metrics_fd);
	}
	/* Tasks still running end within their budget; their pipe is open
	 * until they have. */
	for (unsigned i = 0; i < STATS_TASKS_MAX; i++) {
		struct stats_task *t = s->tasks[i];
		if (!t)
			continue;
		pthread_join(t->thread, NULL);
		free(t->out);
		free(t);
		s->tasks[i] = NULL;
	}
	for (unsigned i = 0; i < STATS_CLIENTS; i++)
		if (s->clients[i].fd >= 0)
			client_close(&s->clients[i]);
	return NULL;
}

static int open_unix(struct stats_server *s, const char *path, char *err,
		     size_t errlen)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "stats_socket %s: path too long", path);
		return -1;
	}
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	snprintf(s->path, sizeof(s->path), "%s", path);
	/* Parent directory, e.g. /run/postern. */
	char dir[sizeof(sun.sun_path)];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		int ret = dirs_make(dir);
		if (ret < 0) {
			snprintf(err, errlen, "stats_socket %s: %s", path, strerror(-ret));
			return -1;
		}
	}
	s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->fd < 0)
		goto fail;
	if (bind(s->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		if (errno != EADDRINUSE)
			goto fail;
		/* A socket file left by a dead postern: replace it, but never
		 * steal one a live postern still answers on. */
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		bool live = probe >= 0 &&
			    connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0;
		if (probe >= 0)
			close(probe);
		if (live) {
			snprintf(err, errlen, "stats_socket %s: in use by a running postern", path);
			return -1;
		}
		unlink(path);
		if (bind(s->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
			goto fail;
	}
	chmod(path, 0660);
	if (listen(s->fd, 64) < 0)
		goto fail;
	return 0;
fail:
	snprintf(err, errlen, "stats_socket %s: %s", path, strerror(errno));
	return -1;
}

static int open_metrics(struct stats_server *s, const char *listen_on, char *err,
			size_t errlen)
{
	struct binding b;
	if (!conf_parse_binding(listen_on, &b)) {
		snprintf(err, errlen, "metrics_listen \"%s\": not ip:port", listen_on);
		return -1;
	}
	int one = 1;
	s->metrics_fd = socket(b.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->metrics_fd < 0 ||
	    setsockopt(s->metrics_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(s->metrics_fd, (struct sockaddr *)&b.addr, b.addrlen) < 0 ||
	    listen(s->metrics_fd, 64) < 0) {
		snprintf(err, errlen, "metrics_listen %s: %s", listen_on, strerror(errno));
		return -1;
	}
	return 0;
}

static void close_all(struct stats_server *s)
{
	if (s->fd >= 0)
		close(s->fd);
	if (s->metrics_fd >= 0)
		close(s->metrics_fd);
	s->fd = s->metrics_fd = -1;
}

int stats_start(struct stats_server *s, const struct stats_host *h,
		const char *path, const char *metrics_listen, char *err,
		size_t errlen)
{
	memset(s, 0, sizeof(*s));
	s->host = h;
	s->fd = s->metrics_fd = -1;
	s->stop_pipe[0] = s->stop_pipe[1] = -1;
	s->task_pipe[0] = s->task_pipe[1] = -1;
	s->running = false;
	if (!path && !metrics_listen)
		return 0;
	if ((path && open_unix(s, path, err, errlen) < 0) ||
	    (metrics_listen && open_metrics(s, metrics_listen, err, errlen) < 0)) {
		close_all(s);
		return -1;
	}
	s->clients = calloc(STATS_CLIENTS, sizeof(*s->clients));
	if (!s->clients || pipe2(s->stop_pipe, O_CLOEXEC) < 0 ||
	    pipe2(s->task_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
		snprintf(err, errlen, "stats: %s", s->clients ? strerror(errno) : "out of memory");
		for (int i = 0; i < 2; i++) {
			if (s->stop_pipe[i] >= 0)
				close(s->stop_pipe[i]);
			if (s->task_pipe[i] >= 0)
				close(s->task_pipe[i]);
		}
		free(s->clients);
		s->clients = NULL;
		close_all(s);
		return -1;
	}
	for (unsigned i = 0; i < STATS_CLIENTS; i++)
		s->clients[i].fd = -1;
	int ret = pthread_create(&s->thread, NULL, stats_main, s);
	if (ret) {
		snprintf(err, errlen, "stats: pthread_create: %s", strerror(ret));
		close_all(s);
		return -1;
	}
	s->running = true;
	return 0;
}

void stats_stop(struct stats_server *s)
{
	if (!s->running)
		return;
	ssize_t w = write(s->stop_pipe[1], "x", 1);
	(void)w;
	pthread_join(s->thread, NULL);
	bool had_unix = s->fd >= 0;
	close_all(s);
	close(s->stop_pipe[0]);
	close(s->stop_pipe[1]);
	close(s->task_pipe[0]);
	close(s->task_pipe[1]);
	if (had_unix)
		unlink(s->path);
	free(s->clients);
	s->clients = NULL;
	s->running = false;
}
