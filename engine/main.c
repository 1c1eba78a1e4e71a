/* postern: command line, startup, signals. The only file with process-wide
 * state: the loaded configuration, the message store and the workers. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "dirs.h"
#include "io.h"
#include "listener.h"
#include "log.h"
#include "notify.h"
#include "pickup.h"
#include "privilege.h"
#include "spool.h"
#include "stats.h"
#include "tls.h"
#include "auth.h"
#include "throttle.h"
#include "resolver.h"
#include "worker.h"

#define POSTERN_VERSION "0.1.0"

/* What the stats thread may ask of main: the configuration in force, and a
 * reload (run here, on the signal thread, as for SIGHUP). */
struct app {
	struct metrics_registry registry;
	struct metrics_registry send_registry;
	struct metrics_registry rule_registry;  /* content rules, by name */
	uint64_t content_gen;     /* per load: which per-worker scratch fits */
	pthread_mutex_t mu;
	pthread_cond_t reloaded;
	struct conf *conf;        /* current; swapped by reload() under mu */
	uint64_t reload_gen;
	int reload_status;
	char reload_result[1024];
	struct worker *workers;   /* set once they run */
	unsigned nworkers;
	atomic_bool drain_asked;  /* posternctl drain: main takes it on SIGUSR2 */
	atomic_bool inbound_closed; /* draining or stopping: /readyz 503 */
};

static struct conf *app_current(void *arg);

/* posternctl drain (B.10): answered at once; the signal thread does it. */
static int app_drain(void *arg, char *result, size_t cap)
{
	struct app *a = arg;
	struct conf *c = app_current(a);
	long queued = 0;
	for (unsigned i = 0; i < a->nworkers; i++)
		queued += (long)metric_get(&a->workers[i].m.queue_messages);
	bool again = atomic_exchange(&a->drain_asked, true);
	atomic_store(&a->inbound_closed, true);
	snprintf(result, cap,
		 "%s: listeners closed, %ld message%s queued; postern exits once the queue is empty or in %llus (server.drain_timeout)",
		 again ? "draining already" : "draining", queued, queued == 1 ? "" : "s",
		 (unsigned long long)(c->drain_timeout_ms / 1000));
	conf_unref(c);
	if (!again)
		kill(getpid(), SIGUSR2);
	/* "listeners closed" is true when it is said: the workers close them
	 * on their next turn, a few milliseconds from now. */
	for (int tries = 0; tries < 200; tries++) {
		unsigned open = 0;
		for (unsigned i = 0; i < a->nworkers; i++)
			open += !atomic_load(&a->workers[i].inbound_closed) &&
				atomic_load(&a->workers[i].state) == 1;
		if (!open)
			break;
		usleep(10000);
	}
	return 0;
}

static bool app_accepting(void *arg)
{
	struct app *a = arg;
	return !atomic_load(&a->inbound_closed);
}

/* posternctl flush: every worker's queue is due now. */
static void app_flush(void *arg)
{
	struct app *a = arg;
	for (unsigned i = 0; i < a->nworkers; i++)
		worker_flush_queue(&a->workers[i]);
}

/* An operator's queue request: a part for each worker; one that is not
 * running (drained and gone) answers at once with nothing. */
static void app_queue_ctl(void *arg, struct qctl_req *r)
{
	struct app *a = arg;
	for (unsigned i = 0; i < a->nworkers && i < r->nparts; i++) {
		if (atomic_load(&a->workers[i].state) == 1)
			worker_queue_ctl(&a->workers[i], &r->part[i]);
		else
			qctl_part_done(&r->part[i]);
	}
	for (unsigned i = a->nworkers; i < r->nparts; i++)
		qctl_part_done(&r->part[i]);
}

static struct conf *app_current(void *arg)
{
	struct app *a = arg;
	pthread_mutex_lock(&a->mu);
	struct conf *c = a->conf;
	conf_ref(c);
	pthread_mutex_unlock(&a->mu);
	return c;
}

static int app_reload(void *arg, char *result, size_t cap)
{
	struct app *a = arg;
	pthread_mutex_lock(&a->mu);
	uint64_t gen = a->reload_gen;
	kill(getpid(), SIGHUP);
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 30;
	int ret = 0;
	while (a->reload_gen == gen && ret == 0)
		ret = pthread_cond_timedwait(&a->reloaded, &a->mu, &until);
	int status = a->reload_gen == gen ? -1 : a->reload_status;
	snprintf(result, cap, "%s", a->reload_gen == gen ? "reload timed out" : a->reload_result);
	pthread_mutex_unlock(&a->mu);
	return status;
}

static void app_reloaded(struct app *a, int status, const char *result)
{
	pthread_mutex_lock(&a->mu);
	a->reload_gen++;
	a->reload_status = status;
	snprintf(a->reload_result, sizeof(a->reload_result), "%.1000s", result);
	pthread_cond_broadcast(&a->reloaded);
	pthread_mutex_unlock(&a->mu);
}

/* Gives each connector its counter slot: the same name keeps the same slot
 * across reloads. */
static void assign_stats_ids(struct app *a, struct conf *c)
{
	for (unsigned i = 0; i < c->nrc; i++)
		c->rc[i].stats_id = metrics_registry_id(&a->registry, c->rc[i].name);
	for (unsigned i = 0; i < c->nsc; i++)
		c->sc[i].stats_id = metrics_registry_id(&a->send_registry, c->sc[i].name);
	for (unsigned i = 0; i < c->content.n; i++)
		c->content.rule[i].stats_id =
			metrics_registry_id(&a->rule_registry, c->content.rule[i].name);
	c->content.gen = ++a->content_gen;
}

static bool same_binding(const struct binding *a, const struct binding *b)
{
	return a->addrlen == b->addrlen && memcmp(&a->addr, &b->addr, a->addrlen) == 0;
}

static void free_reloads(struct worker_reload **rs, unsigned nw)
{
	for (unsigned i = 0; i < nw; i++) {
		if (!rs[i])
			continue;
		for (unsigned b = 0; b < rs[i]->nlisten; b++)
			if (rs[i]->new_fd && rs[i]->new_fd[b] >= 0)
				close(rs[i]->new_fd[b]);
		free(rs[i]->keep_from);
		free(rs[i]->new_fd);
		free(rs[i]);
	}
	free(rs);
}

/* SIGHUP: load the file again and hand it to every worker. A bad file
 * changes nothing. Sessions in progress keep the configuration they began
 * with; new connections get the new one. */
static int reload_config(const char *path, struct app *app, struct worker *workers,
			 unsigned nw, char *result, size_t cap)
{
	struct conf **cur = &app->conf;
	char err[1024], q[1100];
	for (int tries = 0; tries < 200; tries++) {
		bool pending = false;
		for (unsigned i = 0; i < nw; i++)
			pending |= worker_reload_pending(&workers[i]);
		if (!pending)
			break;
		if (tries == 199) {
			snprintf(result, cap, "previous reload not yet applied");
			log_msg(LOG_ERROR, "event=reload status=failed error=\"%s\"", result);
			return -1;
		}
		usleep(10000);
	}
	struct conf *n = conf_load(path, err, sizeof(err));
	if (!n) {
		snprintf(result, cap, "%.900s (keeping the running configuration)", err);
		log_msg(LOG_ERROR, "event=reload status=failed error=%s note=\"keeping the running configuration\"",
			log_quote(q, sizeof(q), err));
		return -1;
	}
	const struct conf *old = *cur;
	assign_stats_ids(app, n);
	if (n->io_backend != old->io_backend) {
		log_msg(LOG_WARN, "event=reload note=\"io_backend change needs a restart\"");
		n->io_backend = old->io_backend;
	}
	if (n->workers != old->workers) {
		log_msg(LOG_WARN, "event=reload note=\"workers change needs a restart\"");
		n->workers = old->workers;
	}
	if (strcmp(n->spool_dir, old->spool_dir) != 0) {
		log_msg(LOG_WARN, "event=reload note=\"spool_dir change needs a restart\"");
		char *keep = strdup(old->spool_dir);
		if (keep) {
			free(n->spool_dir);
			n->spool_dir = keep;
		}
	}
	bool same_pickup = (!n->pickup_dir && !old->pickup_dir) ||
		(n->pickup_dir && old->pickup_dir && strcmp(n->pickup_dir, old->pickup_dir) == 0 &&
		 n->pickup_max_parallel == old->pickup_max_parallel &&
		 n->pickup_max_message_size == old->pickup_max_message_size &&
		 n->pickup_max_recipients == old->pickup_max_recipients);
	if (!same_pickup) {
		log_msg(LOG_WARN, "event=reload note=\"pickup change needs a restart\"");
		free(n->pickup_dir);
		n->pickup_dir = old->pickup_dir ? strdup(old->pickup_dir) : NULL;
		n->pickup_max_parallel = old->pickup_max_parallel;
		n->pickup_max_message_size = old->pickup_max_message_size;
		n->pickup_max_recipients = old->pickup_max_recipients;
	}
	struct worker_reload **rs = calloc(nw, sizeof(*rs));
	bool ok = rs != NULL;
	for (unsigned i = 0; ok && i < nw; i++) {
		rs[i] = calloc(1, sizeof(**rs));
		if (!rs[i])
			break;
		rs[i]->conf = n;
		rs[i]->nlisten = n->nbindings;
		rs[i]->keep_from = malloc((n->nbindings + 1) * sizeof(int));
		rs[i]->new_fd = malloc((n->nbindings + 1) * sizeof(int));
		ok = rs[i]->keep_from && rs[i]->new_fd;
		for (unsigned b = 0; ok && b < n->nbindings; b++) {
			rs[i]->keep_from[b] = rs[i]->new_fd[b] = -1;
			for (unsigned ob = 0; ob < old->nbindings; ob++)
				if (same_binding(&n->bindings[b], &old->bindings[ob]))
					rs[i]->keep_from[b] = (int)ob;
			if (rs[i]->keep_from[b] >= 0)
				continue;
			rs[i]->new_fd[b] = listener_open(&n->bindings[b], err, sizeof(err));
			if (rs[i]->new_fd[b] < 0) {
				snprintf(result, cap, "%.900s (keeping the running configuration)", err);
				log_msg(LOG_ERROR, "event=reload status=failed error=%s note=\"keeping the running configuration\"",
					log_quote(q, sizeof(q), err));
				ok = false;
			}
		}
	}
	if (!ok) {
		if (rs)
			free_reloads(rs, nw);
		conf_unref(n);
		if (!rs)
			snprintf(result, cap, "out of memory");
		return -1;
	}
	for (unsigned i = 0; i < nw; i++) {
		conf_ref(n);
		worker_reload(&workers[i], rs[i]);
	}
	free(rs);
	pthread_mutex_lock(&app->mu);
	struct conf *prev = *cur;
	*cur = n;
	pthread_mutex_unlock(&app->mu);
	conf_unref(prev);
	log_set_level((enum log_level)n->log_level);
	/* Reopen (or switch) the log file: logrotate sends SIGHUP after a move. */
	if (n->log_file && log_open_file(n->log_file) < 0)
		log_msg(LOG_ERROR, "event=reload note=\"cannot open log_file %s\"", n->log_file);
	/* "ok" means applied: every worker has taken the new configuration
	 * (a connection accepted after this line gets the new connectors and
	 * certificates). Workers take it on their next loop turn. */
	bool pending = true;
	for (int tries = 0; pending && tries < 200; tries++) {
		pending = false;
		for (unsigned i = 0; i < nw; i++)
			pending |= worker_reload_pending(&workers[i]);
		if (pending)
			usleep(10000);
	}
	snprintf(result, cap, "reloaded: %u connectors, %u bindings%s", n->nrc, n->nbindings,
		 pending ? " (not yet applied by every worker)" : "");
	log_msg(LOG_INFO, "event=reload status=ok connectors=%u bindings=%u applied=%s", n->nrc,
		n->nbindings, pending ? "pending" : "all");
	return 0;
}

/* server.max_open_files (DESIGN B.6): the soft RLIMIT_NOFILE is raised to
 * it, up to the hard limit (with a warning when that is lower). */
static void raise_nofile(uint64_t want)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	rlim_t target = (rlim_t)want;
	if (rl.rlim_max != RLIM_INFINITY && target > rl.rlim_max) {
		log_msg(LOG_WARN, "event=max_open_files wanted=%llu limit=%llu note=\"the hard RLIMIT_NOFILE is lower: raise it (systemd LimitNOFILE=)\"",
			(unsigned long long)want, (unsigned long long)rl.rlim_max);
		target = rl.rlim_max;
	}
	if (rl.rlim_cur >= target)
		return;
	rlim_t was = rl.rlim_cur;
	rl.rlim_cur = target;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		log_msg(LOG_WARN, "event=max_open_files wanted=%llu error=\"%s\"",
			(unsigned long long)target, strerror(errno));
	else
		log_msg(LOG_INFO, "event=max_open_files from=%llu to=%llu", (unsigned long long)was,
			(unsigned long long)target);
}

/* --hash-password: a password on stdin (one trailing newline is not part
 * of it), its yescrypt hash on stdout: the part after "name:" in an
 * auth_users_file line. */
static int hash_password(void)
{
	char pw[1024], hash[256];
	size_t n = fread(pw, 1, sizeof(pw) - 1, stdin);
	if (n == sizeof(pw) - 1 && !feof(stdin)) {
		fprintf(stderr, "postern: password longer than %zu bytes\n", sizeof(pw) - 2);
		return 1;
	}
	pw[n] = '\0';
	if (n && pw[n - 1] == '\n')
		pw[--n] = '\0';
	if (n && pw[n - 1] == '\r')
		pw[--n] = '\0';
	if (!n || strlen(pw) != n || n > SMTP_AUTH_NAME_MAX) {
		fprintf(stderr, "postern: the password must be 1 to %d bytes, without NUL\n",
			SMTP_AUTH_NAME_MAX);
		auth_wipe(pw, sizeof(pw));
		return 1;
	}
	bool ok = auth_hash_password(pw, hash, sizeof(hash));
	auth_wipe(pw, sizeof(pw));
	if (!ok) {
		fprintf(stderr, "postern: crypt failed\n");
		return 1;
	}
	printf("%s\n", hash);
	return 0;
}

/* server.user (B.6). Started as root: the spool, the stats socket and the
 * log file go to the user, then postern becomes it, keeping only
 * CAP_NET_BIND_SERVICE (a reload may bind a new port below 1024). Started
 * as anyone else, it stays who it is. */
static int become_user(const struct conf *c, char *err,
		       size_t cap)
{
	if (!c->user)
		return 0;
	uid_t uid;
	gid_t gid;
	if (privilege_lookup(c->user, &uid, &gid, err, cap) < 0)
		return -1;
	if (geteuid() != 0) {
		if (geteuid() != uid)
			log_msg(LOG_WARN, "event=privileges user=%s note=\"not started as root: staying uid %u\"",
				c->user, (unsigned)geteuid());
		return 0;
	}
	/* The spool is opened after the drop: it must be the user's. One that
	 * is already is left alone (root may not even be able to look in). */
	struct stat sb;
	int mk = stat(c->spool_dir, &sb) == 0 ? 0 : dirs_make(c->spool_dir);
	if (mk < 0) {
		snprintf(err, cap, "spool_dir %s: %s", c->spool_dir, strerror(-mk));
		return -1;
	}
	if ((mk == 0 && stat(c->spool_dir, &sb) < 0) ||
	    ((sb.st_uid != uid || sb.st_gid != gid) &&
	     privilege_give(c->spool_dir, uid, gid, err, cap) < 0))
		return -1;
	if (c->stats_socket && privilege_give(c->stats_socket, uid, gid, err, cap) < 0)
		return -1;
	/* Opened as root: it goes with us. (One root cannot reach is opened
	 * after the drop.) */
	if (c->log_file && access(c->log_file, F_OK) == 0 &&
	    privilege_give(c->log_file, uid, gid, err, cap) < 0)
		return -1;
	if (privilege_drop(uid, gid, true, err, cap) < 0)
		return -1;
	log_msg(LOG_INFO, "event=privileges user=%s uid=%u gid=%u capabilities=net_bind_service",
		c->user, (unsigned)uid, (unsigned)gid);
	for (unsigned i = 0; i < c->nsc; i++)
		if (c->sc[i].drop_dir && access(c->sc[i].drop_dir, W_OK | X_OK) < 0)
			log_msg(LOG_WARN, "event=privileges user=%s drop_directory=%s error=\"%s\" note=\"the send connector cannot deliver\"",
				c->user, c->sc[i].drop_dir, strerror(errno));
	return 0;
}

/* A start that failed before any worker ran: everything made so far goes,
 * so that a sanitizer build's exit is clean too. Returns the exit status. */
static int startup_failed(struct worker *workers, unsigned nw, struct worker_metrics **wm,
			  struct io *_Atomic *peers, struct resolver *resolver,
			  struct authd *authd, struct throttle *throttle, struct app *app,
			  struct spool *store)
{
	for (unsigned i = 0; workers && i < nw; i++) {
		for (unsigned b = 0; workers[i].listen_fds && b < workers[i].nlisten; b++)
			if (workers[i].listen_fds[b] >= 0)
				close(workers[i].listen_fds[b]);
		free(workers[i].listen_fds);
		conf_unref(workers[i].ctx.conf);
	}
	free(workers);
	free(wm);
	free(peers);
	if (resolver)
		resolver_free(resolver);
	authd_stop(authd);
	spool_close(store);
	throttle_free(throttle);
	conf_unref(app->conf);
	return 1;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: postern -c FILE [--check]\n"
		"  -c, --config FILE  configuration file (libconfig syntax)\n"
		"      --check        validate FILE, print the resolved connectors, exit\n"
		"  -V, --version      print the version\n"
		"      --hash-password  read a password on stdin, print its hash for auth_users_file\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'},
		{"check", no_argument, NULL, 'k'},
		{"version", no_argument, NULL, 'V'},
		{"hash-password", no_argument, NULL, 'H'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *path = NULL;
	bool check = false;
	int o;
	while ((o = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
		switch (o) {
		case 'c':
			path = optarg;
			break;
		case 'k':
			check = true;
			break;
		case 'V':
			printf("postern %s\n", POSTERN_VERSION);
			return 0;
		case 'H':
			return hash_password();
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!path || optind != argc) {
		usage(stderr);
		return 2;
	}

	/* Signals are taken synchronously by this thread; workers never see them.
	 * They are blocked before anything slow (spool recovery) so that a
	 * SIGTERM during startup waits and ends in a clean stop. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGUSR2);  /* from the stats thread: drain */
	if (!check)
		pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (!tls_global_init()) {
		fprintf(stderr, "postern: cannot make TLS session-ticket keys (no entropy)\n");
		return 1;
	}
	char err[1024];
	struct conf *conf = conf_load(path, err, sizeof(err));
	if (!conf) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (check) {
		conf_print(conf, stdout);
		conf_free(conf);
		return 0;
	}
	log_set_level((enum log_level)conf->log_level);
	int lerr = conf->log_file ? log_open_file(conf->log_file) : 0;
	/* A log directory that belongs to server.user is opened once we are
	 * that user (root may lack CAP_DAC_OVERRIDE under systemd). */
	bool log_later = lerr == -EACCES && conf->user && geteuid() == 0;
	if (lerr < 0 && !log_later) {
		fprintf(stderr, "postern: log_file %s: %s\n", conf->log_file, strerror(-lerr));
		return 1;
	}
	static struct app app;
	static struct throttle throttle;
	app.conf = conf;
	if (throttle_init(&throttle, conf->throttle_table_size, wctx_clock_ms()) < 0) {
		fprintf(stderr, "postern: out of memory\n");
		return 1;
	}
	assign_stats_ids(&app, conf);

	/* One backend for every worker, and one line when it is not the one
	 * asked for. */
	char why[256];
	enum io_backend backend = io_probe((enum io_backend)conf->io_backend, why, sizeof(why));
	if (backend == IO_BACKEND_AUTO) {
		fprintf(stderr, "postern: server.io_backend = \"io_uring\": %s (kernel.io_uring_disabled, or the container's seccomp profile); use \"auto\" or \"epoll\"\n",
			why);
		return 1;
	}
	if (backend == IO_BACKEND_EPOLL && conf->io_backend == IO_BACKEND_AUTO)
		log_msg(LOG_WARN, "event=io_backend backend=epoll reason=\"%s\" note=\"io_uring unavailable: falling back to epoll\"",
			why);

	/* Opened (and recovered) once postern runs as server.user, below. */
	struct spool store = {.dirfd = -1, .lockfd = -1};
	/* spool_dir cannot change on reload; the stats thread keeps its own
	 * copy, since the configuration it came from goes at the first one. */
	static char spool_dir[4096];
	snprintf(spool_dir, sizeof(spool_dir), "%s", conf->spool_dir);


	/* MX lookups for every worker; a changed dns_servers needs a restart. */
	struct resolver *resolver = resolver_new(conf->dns_servers, err, sizeof(err));
	if (!resolver)
		log_msg(LOG_WARN, "event=resolver_unavailable error=\"%s\"", err);
	raise_nofile(conf->max_open_files);
	/* AUTH verifiers: crypt off the workers; two threads at most, so a
	 * flood of AUTH attempts takes at most two cores' worth of time, and
	 * a bounded queue beyond which AUTH answers 454. */
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct authd *authd = authd_start(ncpu > 1 ? 2 : 1, 256);
	if (!authd)
		log_msg(LOG_WARN, "event=auth_unavailable error=\"cannot start verifier threads\"");

	unsigned nw = conf->workers;
	struct worker *workers = calloc(nw, sizeof(*workers));
	struct worker_metrics **wm = calloc(nw, sizeof(*wm));
	struct io *_Atomic *peers = calloc(nw, sizeof(*peers));
	if (!workers || !wm || !peers) {
		fprintf(stderr, "postern: out of memory\n");
		spool_close(&store);
		return 1;
	}
	for (unsigned i = 0; i < nw; i++) {
		struct worker *w = &workers[i];
		w->ctx.id = i;
		w->ctx.conf = conf;
		conf_ref(conf);
		w->spool_shared = &store;
		w->ctx.throttle = &throttle;
		w->ctx.resolver = resolver;
		w->ctx.authd = authd;
		w->spare_fd = -1;
		w->ctx.nworkers = nw;
		w->backend = backend;
		w->peers = peers;
		wm[i] = &w->m;
		w->nlisten = conf->nbindings;
		w->listen_fds = calloc(conf->nbindings ? conf->nbindings : 1, sizeof(int));
		if (!w->listen_fds) {
			fprintf(stderr, "postern: out of memory\n");
			return startup_failed(workers, nw, wm, peers, resolver, authd, &throttle,
					      &app, &store);
		}
		for (unsigned b = 0; b < conf->nbindings; b++)
			w->listen_fds[b] = -1;
		for (unsigned b = 0; b < conf->nbindings; b++) {
			w->listen_fds[b] = listener_open(&conf->bindings[b], err, sizeof(err));
			if (w->listen_fds[b] < 0) {
				fprintf(stderr, "postern: %s\n", err);
				return startup_failed(workers, nw, wm, peers, resolver, authd, &throttle,
						      &app, &store);
			}
		}
	}
	pthread_mutex_init(&app.mu, NULL);
	pthread_cond_init(&app.reloaded, NULL);
	struct stats_host host = {
		.registry = &app.registry,
		.send_registry = &app.send_registry,
		.rule_registry = &app.rule_registry,
		.throttle = &throttle,
		.store = &store,
		.metrics = wm,
		.nworkers = nw,
		.io_backend = io_backend_name(backend),
		.flush = app_flush,
		.queue_ctl = app_queue_ctl,
		.start_ms = wctx_clock_ms(),
		.current = app_current,
		.reload = app_reload,
		.drain = app_drain,
		.accepting = app_accepting,
		.spool_dir = spool_dir,
		.spool_room = conf->spool_segment_bytes,
		.arg = &app,
	};
	struct stats_server stats;
	if (stats_start(&stats, &host, conf->stats_socket, conf->metrics_listen, err,
			sizeof(err)) < 0) {
		fprintf(stderr, "postern: %s\n", err);
		return startup_failed(workers, nw, wm, peers, resolver, authd, &throttle, &app,
				      &store);
	}
	/* Everything is bound and open: from here on, server.user (B.6). The
	 * rings are made after this, so no kernel worker of theirs runs as
	 * root either. */
	if (become_user(conf, err, sizeof(err)) < 0) {
		fprintf(stderr, "postern: %s\n", err);
		log_msg(LOG_ERROR, "event=privileges status=failed error=\"%s\"", err);
		stats_stop(&stats);
		return startup_failed(workers, nw, wm, peers, resolver, authd, &throttle, &app,
				      &store);
	}
	if (log_later && (lerr = log_open_file(conf->log_file)) < 0) {
		fprintf(stderr, "postern: log_file %s: %s\n", conf->log_file, strerror(-lerr));
		stats_stop(&stats);
		return startup_failed(workers, nw, wm, peers, resolver, authd, &throttle, &app,
				      &store);
	}
	/* The pickup directory is ours to read and rename in, as server.user. */
	if (conf->pickup_dir && access(conf->pickup_dir, R_OK | W_OK | X_OK) != 0) {
		fprintf(stderr, "postern: pickup_directory %s: %s (it must exist and be readable and writable by the user postern runs as)\n",
			conf->pickup_dir, strerror(errno));
		stats_stop(&stats);
		return startup_failed(workers, nw, wm, peers, resolver, authd, &throttle, &app,
				      &store);
	}
	if (spool_open(&store, conf->spool_dir, conf->spool_segment_bytes, err, sizeof(err)) < 0) {
		fprintf(stderr, "postern: %s\n", err);
		stats_stop(&stats);
		return startup_failed(workers, nw, wm, peers, resolver, authd, &throttle, &app,
				      &store);
	}
	if (spool_reaper_start(&store) < 0)
		log_msg(LOG_WARN, "event=spool_reaper_unavailable error=\"%s\" (finished segments are deleted on the workers)",
			strerror(errno));
	for (unsigned i = 0; i < nw; i++) {
		if (worker_start(&workers[i]) < 0) {
			fprintf(stderr, "postern: worker %u: %s\n", i, workers[i].err);
			stats_stop(&stats);
			spool_close(&store);
			return 1;
		}
	}
	spool_owner_free(&store); /* every worker has recovered its share */
	app.workers = workers;
	app.nworkers = nw;
	struct pickup *pickup = NULL;
	struct wctx **wx = calloc(nw, sizeof(*wx));
	int exit_status = 0;
	if (conf->pickup_dir) {
		for (unsigned i = 0; wx && i < nw; i++)
			wx[i] = &workers[i].ctx;
		unsigned pid = metrics_registry_id(&app.registry, PICKUP_CONNECTOR);
		pickup = wx ? pickup_start(conf, pid, wx, nw, err, sizeof(err)) : NULL;
		if (!pickup) {
			fprintf(stderr, "postern: %s\n", wx ? err : "out of memory");
			log_msg(LOG_ERROR, "event=pickup_error error=%s", log_quote(why, sizeof(why), wx ? err : "out of memory"));
			exit_status = 1;
		}
	}
	char bl[512] = "";
	for (unsigned b = 0; b < conf->nbindings; b++) {
		size_t n = strlen(bl);
		snprintf(bl + n, sizeof(bl) - n, "%s%s", b ? "," : "", conf->bindings[b].text);
	}
	log_msg(LOG_INFO, "event=start version=%s workers=%u io_backend=%s bindings=%s connectors=%u spool=%s uid=%u",
		POSTERN_VERSION, nw, io_backend_name(backend), bl, conf->nrc, conf->spool_dir,
		(unsigned)geteuid());
	notify_manager("READY=1\nSTATUS=accepting");

	/* The signal loop. A drain ends it when every worker has emptied its
	 * queue and exited, or at server.drain_timeout. */
	bool draining = false;
	uint64_t drain_deadline = 0;
	for (; exit_status == 0;) {
		struct timespec tick = {0, 200 * 1000 * 1000};
		int sig = draining ? sigtimedwait(&sigs, NULL, &tick) : sigwaitinfo(&sigs, NULL);
		if (sig < 0 && errno != EAGAIN) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (sig == SIGHUP && !draining) {
			char result[1024];
			notify_manager("RELOADING=1");
			int status = reload_config(path, &app, workers, nw, result, sizeof(result));
			app_reloaded(&app, status, result);
			notify_manager("READY=1\nSTATUS=accepting");
			continue;
		}
		if (sig == SIGHUP) {
			log_msg(LOG_WARN, "event=reload status=failed error=\"draining: no reload\"");
			app_reloaded(&app, -1, "draining: no reload");
			continue;
		}
		if (sig == SIGUSR2 && !draining && atomic_load(&app.drain_asked)) {
			draining = true;
			drain_deadline = wctx_clock_ms() + app.conf->drain_timeout_ms;
			long queued = 0;
			for (unsigned i = 0; i < nw; i++)
				queued += (long)metric_get(&workers[i].m.queue_messages);
			log_msg(LOG_INFO, "event=drain status=started queued=%ld timeout_ms=%llu", queued,
				(unsigned long long)app.conf->drain_timeout_ms);
			notify_manager("STOPPING=1\nSTATUS=draining");
			pickup_stop(pickup); /* a drain takes no new mail, from files either */
			for (unsigned i = 0; i < nw; i++)
				worker_request_drain(&workers[i]);
			continue;
		}
		if (sig == SIGTERM || sig == SIGINT) {
			log_msg(LOG_INFO, "event=stop signal=%s grace_ms=%llu%s",
				sig == SIGTERM ? "TERM" : "INT",
				(unsigned long long)app.conf->shutdown_grace_ms,
				draining ? " note=\"during a drain\"" : "");
			break;
		}
		if (!draining)
			continue;
		unsigned left = 0;
		for (unsigned i = 0; i < nw; i++)
			left += atomic_load(&workers[i].state) != 2;
		if (!left) {
			/* The workers have exited: their counts no longer move. */
			size_t held = 0;
			for (unsigned i = 0; i < nw; i++)
				held += workers[i].held_left;
			if (held)
				log_msg(LOG_INFO, "event=drain status=done held=%zu note=\"only held messages left: in the spool, held, for the next start\"",
					held);
			else
				log_msg(LOG_INFO, "event=drain status=done note=\"queue empty\"");
			break;
		}
		if (wctx_clock_ms() >= drain_deadline) {
			long queued = 0;
			for (unsigned i = 0; i < nw; i++)
				queued += (long)metric_get(&workers[i].m.queue_messages);
			log_msg(LOG_WARN, "event=drain status=timeout left=%ld note=\"left in the spool for the next start\"",
				queued);
			break;
		}
	}
	atomic_store(&app.inbound_closed, true);
	notify_manager("STOPPING=1");
	stats_stop(&stats);
	pickup_stop(pickup);
	for (unsigned i = 0; i < nw; i++)
		worker_request_stop(&workers[i]);
	for (unsigned i = 0; i < nw; i++)
		worker_join(&workers[i]);
	pickup_free(pickup); /* deletes the files that became durable meanwhile */
	free(wx);
	free(workers);
	free(wm);
	free(peers);
	if (resolver)
		resolver_free(resolver);
	authd_stop(authd);
	spool_close(&store);
	throttle_free(&throttle);
	conf_unref(app.conf);
	log_msg(LOG_INFO, "event=exit status=%d", exit_status);
	return exit_status;
}
