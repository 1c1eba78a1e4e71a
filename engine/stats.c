/* Stats socket (see stats.h). Blocking I/O on a thread of its own: a few
 * operator commands per minute do not belong on the workers' rings. */
#include "stats.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "connectors.h"
#include "log.h"

#define STATS_LINE_MAX 512

static const char *const commands_help =
	"commands: show info | show connectors | match <ip>[:<port>] | reload | help";

static void show_info(const struct stats_host *h, const struct conf *c, FILE *out)
{
	uint64_t conns = 0, active = 0, refused = 0, msgs = 0, rejected = 0,
		 bytes = 0, fsyncs = 0, dirsyncs = 0;
	for (unsigned i = 0; i < h->nworkers; i++) {
		struct worker *w = &h->workers[i];
		conns += STAT_GET(w, connections);
		active += STAT_GET(w, active);
		refused += STAT_GET(w, refused);
		msgs += STAT_GET(w, messages);
		rejected += STAT_GET(w, rejected);
		bytes += STAT_GET(w, bytes);
		fsyncs += STAT_GET(w, fsyncs);
		dirsyncs += STAT_GET(w, dirsyncs);
	}
	size_t tbytes, prefixes, intervals;
	connectors_stats(c, &tbytes, &prefixes, &intervals);
	fprintf(out,
		"version: 0.1.0\nuptime_s: %llu\nworkers: %u\nhostname: %s\n"
		"connectors: %u\nbindings: %u\nconnector_table_prefixes: %zu\n"
		"connector_table_bytes: %zu\nconnections_total: %llu\n"
		"connections_active: %llu\nconnections_refused: %llu\n"
		"messages_received: %llu\nmessages_rejected: %llu\nbytes_received: %llu\n"
		"fsyncs: %llu\ndirsyncs: %llu\n",
		(unsigned long long)((worker_clock_ms() - h->start_ms) / 1000),
		h->nworkers, c->hostname, c->nrc, c->nbindings, prefixes, tbytes,
		(unsigned long long)conns, (unsigned long long)active,
		(unsigned long long)refused, (unsigned long long)msgs,
		(unsigned long long)rejected, (unsigned long long)bytes,
		(unsigned long long)fsyncs, (unsigned long long)dirsyncs);
	(void)intervals;
}

static const char *perm_names(unsigned perms, char *buf, size_t cap)
{
	static const char *const pn[] = {"anonymous", "anonymous_relay",
					 "externally_secured", "authenticated"};
	buf[0] = '\0';
	for (int p = 0; p < 4; p++)
		if (perms & (1u << p))
			snprintf(buf + strlen(buf), cap - strlen(buf), "%s%s",
				 buf[0] ? "," : "", pn[p]);
	return buf[0] ? buf : "none";
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
static int match(const struct conf *c, const char *arg, FILE *out)
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
		shown++;
		const struct ip_range *why;
		const struct rconn *rc = conf_match(c, b, (const struct sockaddr *)&ss, &why);
		if (!rc) {
			fprintf(out, "binding %s: no connector: refused at connect with 554 5.7.1\n",
				c->bindings[b].text);
			continue;
		}
		char perms[96];
		fprintf(out, "binding %s: connector \"%s\" range %s permissions=%s%s\n",
			c->bindings[b].text, rc->name, why->text,
			perm_names(rc->perms, perms, sizeof(perms)),
			rc->smtp.may_submit ? "" : " (MAIL refused: 530 5.7.1)");
	}
	if (!shown) {
		fprintf(out, "error: no binding on port %u\n", port);
		return -1;
	}
	return 0;
}

int stats_command(const struct stats_host *h, const char *line, FILE *out)
{
	char cmd[STATS_LINE_MAX];
	snprintf(cmd, sizeof(cmd), "%s", line);
	size_t n = strlen(cmd);
	while (n && (cmd[n - 1] == '\n' || cmd[n - 1] == '\r' || cmd[n - 1] == ' '))
		cmd[--n] = '\0';
	int ret = 0;
	if (strcmp(cmd, "reload") == 0) {
		char result[1024];
		ret = h->reload(h->arg, result, sizeof(result));
		fprintf(out, "%s%s\n", ret ? "error: " : "", result);
		return ret;
	}
	struct conf *c = h->current(h->arg);
	if (strcmp(cmd, "show info") == 0) {
		show_info(h, c, out);
	} else if (strcmp(cmd, "show connectors") == 0) {
		conf_print(c, out);
	} else if (strncmp(cmd, "match ", 6) == 0) {
		ret = match(c, cmd + 6, out);
	} else if (strcmp(cmd, "help") == 0) {
		fprintf(out, "%s\n", commands_help);
	} else {
		fprintf(out, "error: unknown command \"%s\"; %s\n", cmd, commands_help);
		ret = -1;
	}
	conf_unref(c);
	return ret;
}

static void serve_client(struct stats_server *s, int fd)
{
	struct timeval tv = {.tv_sec = 5};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	char line[STATS_LINE_MAX];
	size_t n = 0;
	while (n < sizeof(line) - 1) {
		ssize_t r = read(fd, line + n, sizeof(line) - 1 - n);
		if (r <= 0)
			break;
		n += (size_t)r;
		if (memchr(line, '\n', n))
			break;
	}
	line[n] = '\0';
	char *nl = strchr(line, '\n');
	if (nl)
		*nl = '\0';
	char *reply = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&reply, &len);
	if (!out)
		return;
	if (n == sizeof(line) - 1 && !nl)
		fprintf(out, "error: command too long\n");
	else
		stats_command(s->host, line, out);
	fclose(out);
	for (size_t off = 0; off < len;) {
		ssize_t w = write(fd, reply + off, len - off);
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	free(reply);
}

static void *stats_main(void *arg)
{
	struct stats_server *s = arg;
	struct pollfd pf[2] = {{s->fd, POLLIN, 0}, {s->stop_pipe[0], POLLIN, 0}};
	for (;;) {
		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[1].revents)
			break;
		int fd = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve_client(s, fd);
		close(fd);
	}
	return NULL;
}

int stats_start(struct stats_server *s, const struct stats_host *h,
		const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	memset(s, 0, sizeof(*s));
	s->host = h;
	s->fd = -1;
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
		mkdir(dir, 0750);
	}
	s->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s->fd < 0) {
		snprintf(err, errlen, "stats_socket %s: %s", path, strerror(errno));
		return -1;
	}
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
			close(s->fd);
			return -1;
		}
		unlink(path);
		if (bind(s->fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
			goto fail;
	}
	chmod(path, 0660);
	if (listen(s->fd, 64) < 0 || pipe2(s->stop_pipe, O_CLOEXEC) < 0)
		goto fail;
	int ret = pthread_create(&s->thread, NULL, stats_main, s);
	if (ret) {
		errno = ret;
		goto fail;
	}
	return 0;
fail:
	snprintf(err, errlen, "stats_socket %s: %s", path, strerror(errno));
	close(s->fd);
	s->fd = -1;
	return -1;
}

void stats_stop(struct stats_server *s)
{
	if (s->fd < 0)
		return;
	ssize_t w = write(s->stop_pipe[1], "x", 1);
	(void)w;
	pthread_join(s->thread, NULL);
	close(s->fd);
	close(s->stop_pipe[0]);
	close(s->stop_pipe[1]);
	unlink(s->path);
	s->fd = -1;
}
