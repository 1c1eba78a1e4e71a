/* Unit tests for MX resolution (engine/resolver.c) against a real dnsmasq
 * on 127.0.0.1: MX order and addresses, implicit and null MX, NXDOMAIN,
 * address literals, temporary failures, the cache, coalescing, shuffling
 * of equal preferences. Skipped when dnsmasq is not installed. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "resolver.h"

#ifndef DNSMASQ
#define DNSMASQ "/usr/sbin/dnsmasq"
#endif
#define WAIT_S 10

extern char **environ;

/* ---- dnsmasq ---- */

static const char *const zone[] = {
	"--mx-host=mx.test,mx1.mx.test,10",
	"--mx-host=mx.test,mx2.mx.test,20",
	"--host-record=mx1.mx.test,127.0.0.11",
	"--host-record=mx2.mx.test,127.0.0.12,::1",
	"--host-record=implicit.test,127.0.0.13",
	"--mx-host=nullmx.test,.,0",
	"--mx-host=noaddr.test,nohost.noaddr.test,10",
	"--txt-record=txtonly.test,no mail here",
	"--mx-host=partial.test,nohost.partial.test,5",
	"--mx-host=partial.test,mx1.mx.test,10",
	"--mx-host=coal.test,mx1.mx.test,10",
	"--mx-host=eq.test,first.eq.test,5",
	"--mx-host=eq.test,a.eq.test,10",
	"--mx-host=eq.test,b.eq.test,10",
	"--mx-host=eq.test,c.eq.test,10",
	"--mx-host=eq.test,d.eq.test,10",
	"--mx-host=eq.test,last.eq.test,20",
	"--host-record=first.eq.test,127.0.1.1",
	"--host-record=a.eq.test,127.0.1.2",
	"--host-record=b.eq.test,127.0.1.3",
	"--host-record=c.eq.test,127.0.1.4",
	"--host-record=d.eq.test,127.0.1.5",
	"--host-record=last.eq.test,127.0.1.6",
};

struct dnsmasq {
	pid_t pid;
	int port;
	char log[64];     /* its stderr: one line per query */
};

static struct dnsmasq shared;   /* for the tests that do not kill it */
static struct dnsmasq spawned[8];  /* every one running, for the teardown */

/* A port free for both UDP and TCP on 127.0.0.1 (for now). */
static int free_port(void)
{
	for (int attempt = 0; attempt < 20; attempt++) {
		struct sockaddr_in sa = {.sin_family = AF_INET,
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		socklen_t len = sizeof(sa);
		int u = socket(AF_INET, SOCK_DGRAM, 0);
		int t = socket(AF_INET, SOCK_STREAM, 0);
		int port = -1;
		if (u >= 0 && t >= 0 && bind(u, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
		    getsockname(u, (struct sockaddr *)&sa, &len) == 0 &&
		    bind(t, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			port = ntohs(sa.sin_port);
		close(u);
		close(t);
		if (port > 0)
			return port;
	}
	return -1;
}

/* Sends "A? mx1.mx.test" and waits 100 ms for any reply. */
static bool dns_answers(int port)
{
	static const unsigned char query[] = {
		0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
		3, 'm', 'x', '1', 2, 'm', 'x', 4, 't', 'e', 's', 't', 0,
		0, 1, 0, 1,
	};
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		return false;
	bool ok = false;
	if (sendto(fd, query, sizeof(query), 0, (struct sockaddr *)&sa, sizeof(sa)) > 0) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		unsigned char buf[512];
		ok = poll(&p, 1, 100) == 1 && recv(fd, buf, sizeof(buf), 0) > 0;
	}
	close(fd);
	return ok;
}

static void forget(pid_t pid)
{
	for (size_t i = 0; i < N_ELEMS(spawned); i++)
		if (spawned[i].pid == pid)
			spawned[i] = (struct dnsmasq){0};
}

static void dnsmasq_stop(struct dnsmasq *d)
{
	struct dnsmasq s = *d;
	*d = (struct dnsmasq){0};
	if (s.pid > 0) {
		kill(s.pid, SIGTERM);
		waitpid(s.pid, NULL, 0);
		forget(s.pid);
	}
	if (s.log[0])
		unlink(s.log);
}

/* Starts dnsmasq on port (0: a free one) serving zone[] with local_ttl,
 * everything else under .test NXDOMAIN. Skips the test without dnsmasq. */
static void dnsmasq_start(struct dnsmasq *d, int port, int local_ttl)
{
	if (access(DNSMASQ, X_OK) != 0)
		skip();
	memset(d, 0, sizeof(*d));
	d->port = port ? port : free_port();
	assert_true(d->port > 0);
	snprintf(d->log, sizeof(d->log), "/tmp/test_resolver.%d.%d.log", (int)getpid(), d->port);

	char a_port[32], a_ttl[32];
	snprintf(a_port, sizeof(a_port), "--port=%d", d->port);
	snprintf(a_ttl, sizeof(a_ttl), "--local-ttl=%d", local_ttl);
	const char *argv[64] = {
		DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=",
		"--no-resolv", "--no-hosts", "--no-poll", "--listen-address=127.0.0.1",
		"--bind-interfaces", "--log-facility=-", "--log-queries", "--local=/test/",
		a_port, a_ttl,
	};
	size_t argc = 14;
	for (size_t i = 0; i < N_ELEMS(zone); i++)
		argv[argc++] = zone[i];
	argv[argc] = NULL;
	assert_true(argc < N_ELEMS(argv));

	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, d->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	int ret = posix_spawn(&d->pid, DNSMASQ, &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (ret != 0)
		fail_msg("posix_spawn %s: %s", DNSMASQ, strerror(ret));
	for (size_t i = 0; i < N_ELEMS(spawned); i++)
		if (!spawned[i].pid) {
			spawned[i] = *d;
			break;
		}

	for (int i = 0; i < 50; i++) {
		if (dns_answers(d->port))
			return;
		if (waitpid(d->pid, NULL, WNOHANG) == d->pid) {
			forget(d->pid);
			d->pid = 0;
			fail_msg("dnsmasq exited at start; see %s", d->log);
		}
	}
	int p = d->port;
	dnsmasq_stop(d);
	fail_msg("dnsmasq on port %d did not answer within 5 s", p);
}

/* How many lines of d's log hold s. */
static int log_count(const struct dnsmasq *d, const char *s)
{
	FILE *f = fopen(d->log, "r");
	if (!f)
		return -1;
	char line[512];
	int n = 0;
	while (fgets(line, sizeof(line), f))
		n += strstr(line, s) != NULL;
	fclose(f);
	return n;
}

static struct resolver *resolver_at(int port)
{
	char servers[64], err[256] = "";
	snprintf(servers, sizeof(servers), "127.0.0.1:%d", port);
	struct resolver *r = resolver_new(servers, err, sizeof(err));
	if (!r)
		fail_msg("resolver_new(%s): %s", servers, err);
	return r;
}

/* ---- answers ---- */

#define MAX_ANSWERS 64

struct answers {
	pthread_mutex_t m;
	pthread_cond_t c;
	int n;
	struct resolver_result *res[MAX_ANSWERS];
};

static void answers_init(struct answers *a)
{
	memset(a, 0, sizeof(*a));
	pthread_mutex_init(&a->m, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&a->c, &ca);
	pthread_condattr_destroy(&ca);
}

static void answers_free(struct answers *a)
{
	for (int i = 0; i < a->n; i++)
		resolver_result_free(a->res[i]);
	pthread_cond_destroy(&a->c);
	pthread_mutex_destroy(&a->m);
}

static void on_answer(void *arg, struct resolver_result *res)
{
	struct answers *a = arg;
	pthread_mutex_lock(&a->m);
	if (a->n < MAX_ANSWERS)
		a->res[a->n++] = res;
	else
		resolver_result_free(res);
	pthread_cond_broadcast(&a->c);
	pthread_mutex_unlock(&a->m);
}

/* Waits (at most WAIT_S) until a holds n answers; false on timeout. */
static bool answers_wait(struct answers *a, int n)
{
	struct timespec deadline;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += WAIT_S;
	pthread_mutex_lock(&a->m);
	while (a->n < n && pthread_cond_timedwait(&a->c, &a->m, &deadline) != ETIMEDOUT)
		;
	bool ok = a->n >= n;
	pthread_mutex_unlock(&a->m);
	return ok;
}

/* One lookup, waited for; the result stays owned by a. */
static struct resolver_result *lookup(struct resolver *r, struct answers *a, const char *domain)
{
	int before = a->n;
	assert_int_equal(resolver_lookup(r, domain, on_answer, a), 0);
	if (!answers_wait(a, before + 1))
		fail_msg("%s: no answer within %d s", domain, WAIT_S);
	return a->res[before];
}

/* "host pref address" per target, one per line, for comparisons. */
static const char *targets_str(const struct resolver_result *res, char *buf, size_t cap)
{
	size_t off = 0;
	buf[0] = '\0';
	for (unsigned i = 0; i < res->n && off < cap; i++) {
		const struct resolver_target *t = &res->t[i];
		char ip[INET6_ADDRSTRLEN] = "?";
		unsigned port = 1;
		if (t->addr.ss_family == AF_INET && t->addrlen == sizeof(struct sockaddr_in)) {
			const struct sockaddr_in *s4 = (const struct sockaddr_in *)&t->addr;
			inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
			port = ntohs(s4->sin_port);
		} else if (t->addr.ss_family == AF_INET6 &&
			   t->addrlen == sizeof(struct sockaddr_in6)) {
			const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&t->addr;
			inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
			port = ntohs(s6->sin6_port);
		}
		off += (size_t)snprintf(buf + off, cap - off, "%s %u %s%s\n", t->host, t->pref, ip,
					port ? " (port not 0)" : "");
	}
	return buf;
}

static const char *status_name(enum resolver_status s)
{
	static const char *const names[] = {"OK", "TEMPFAIL", "NXDOMAIN", "NULL_MX", "NO_ADDRESS"};
	return (unsigned)s < N_ELEMS(names) ? names[s] : "?";
}

/* ---- tests ---- */

static int group_setup(void **state)
{
	if (access(DNSMASQ, X_OK) == 0)
		dnsmasq_start(&shared, 0, 300);
	return 0;
}

/* Also ends the servers of tests that failed before stopping theirs. */
static int group_teardown(void **state)
{
	dnsmasq_stop(&shared);
	for (size_t i = 0; i < N_ELEMS(spawned); i++)
		dnsmasq_stop(&spawned[i]);
	return 0;
}

static void need_dnsmasq(void)
{
	if (!shared.pid)
		skip();
}

static void test_lookups(void **state)
{
	static const struct {
		const char *name, *domain;
		enum resolver_status status;
		const char *targets;   /* OK: targets_str() */
		const char *error;     /* not OK: a part of the error */
	} cases[] = {
		{"MX by preference, AAAA before A", "mx.test", RESOLVER_OK,
		 "mx1.mx.test 10 127.0.0.11\n"
		 "mx2.mx.test 20 ::1\n"
		 "mx2.mx.test 20 127.0.0.12\n", NULL},
		{"case and trailing dot", "MX.Test.", RESOLVER_OK,
		 "mx1.mx.test 10 127.0.0.11\n"
		 "mx2.mx.test 20 ::1\n"
		 "mx2.mx.test 20 127.0.0.12\n", NULL},
		{"implicit MX", "implicit.test", RESOLVER_OK, "implicit.test 0 127.0.0.13\n", NULL},
		{"MX host without address skipped", "partial.test", RESOLVER_OK,
		 "mx1.mx.test 10 127.0.0.11\n", NULL},
		{"NXDOMAIN", "nx.test", RESOLVER_NXDOMAIN, NULL, "MX lookup for nx.test: "},
		{"NXDOMAIN under an MX host", "nohost.noaddr.test", RESOLVER_NXDOMAIN, NULL,
		 "nohost.noaddr.test"},
		{"null MX", "nullmx.test", RESOLVER_NULL_MX, NULL, "nullmx.test"},
		{"no MX host has an address", "noaddr.test", RESOLVER_NO_ADDRESS, NULL,
		 "noaddr.test"},
		{"no MX, no address", "txtonly.test", RESOLVER_NO_ADDRESS, NULL, "txtonly.test"},
		{"empty", "", RESOLVER_NO_ADDRESS, NULL, "bad domain name"},
	};
	need_dnsmasq();
	struct resolver *r = resolver_at(shared.port);
	struct answers a;
	answers_init(&a);
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct resolver_result *res = lookup(r, &a, cases[i].domain);
		CHECK_STR(cases[i].name, status_name(res->status), status_name(cases[i].status));
		char buf[2048];
		if (cases[i].targets) {
			CHECK_STR(cases[i].name, targets_str(res, buf, sizeof(buf)), cases[i].targets);
		} else {
			CHECK_INT(cases[i].name, res->n, 0);
			if (!strstr(res->error, cases[i].error))
				fail_msg("%s: error \"%s\" lacks \"%s\"", cases[i].name, res->error,
					 cases[i].error);
		}
	}
	resolver_free(r);
	answers_free(&a);
}

/* Literals need no DNS and are answered before resolver_lookup returns. */
static void test_address_literals(void **state)
{
	static const struct {
		const char *domain;
		enum resolver_status status;
		const char *targets;
	} cases[] = {
		{"[192.0.2.1]", RESOLVER_OK, "[192.0.2.1] 0 192.0.2.1\n"},
		{"[IPv6:2001:db8::1]", RESOLVER_OK, "[IPv6:2001:db8::1] 0 2001:db8::1\n"},
		{"[ipv6:2001:DB8::1]", RESOLVER_OK, "[ipv6:2001:DB8::1] 0 2001:db8::1\n"},
		{"[IPv6:::ffff:192.0.2.1]", RESOLVER_OK, "[IPv6:::ffff:192.0.2.1] 0 ::ffff:192.0.2.1\n"},
		{"[300.0.2.1]", RESOLVER_NO_ADDRESS, ""},
		{"[192.0.2]", RESOLVER_NO_ADDRESS, ""},
		{"[2001:db8::1]", RESOLVER_NO_ADDRESS, ""},
		{"[IPv6:192.0.2.1]", RESOLVER_NO_ADDRESS, ""},
		{"[192.0.2.1", RESOLVER_NO_ADDRESS, ""},
		{"[]", RESOLVER_NO_ADDRESS, ""},
		{"[", RESOLVER_NO_ADDRESS, ""},
		{"[tag:content]", RESOLVER_NO_ADDRESS, ""},
	};
	/* No server needed: port 9 on loopback is never asked. */
	struct resolver *r = resolver_at(9);
	struct answers a;
	answers_init(&a);
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		const char *name = cases[i].domain;
		assert_int_equal(resolver_lookup(r, name, on_answer, &a), 0);
		CHECK_INT(name, a.n, i + 1);
		struct resolver_result *res = a.res[i];
		CHECK_STR(name, status_name(res->status), status_name(cases[i].status));
		char buf[512];
		CHECK_STR(name, targets_str(res, buf, sizeof(buf)), cases[i].targets);
		if (res->status != RESOLVER_OK && !strstr(res->error, "address literal"))
			fail_msg("%s: error \"%s\"", name, res->error);
	}
	resolver_free(r);
	answers_free(&a);
}

/* A dead server is a temporary failure, and is not remembered: once the
 * server is up the same resolver gets the answer. */
static void test_tempfail_not_cached(void **state)
{
	need_dnsmasq();
	int port = free_port();
	struct resolver *r = resolver_at(port);
	struct answers a;
	answers_init(&a);
	struct resolver_result *res = lookup(r, &a, "mx.test");
	CHECK_STR("dead server", status_name(res->status), "TEMPFAIL");
	CHECK_INT("dead server", res->n, 0);
	if (strncmp(res->error, "MX lookup for mx.test: ", 23) != 0)
		fail_msg("dead server: error \"%s\"", res->error);

	struct dnsmasq d;
	dnsmasq_start(&d, port, 300);
	res = lookup(r, &a, "mx.test");
	CHECK_STR("server back", status_name(res->status), "OK");
	CHECK_INT("server back", res->n, 3);
	dnsmasq_stop(&d);
	resolver_free(r);
	answers_free(&a);
}

/* Answers outlive the server for their TTL; with TTL 0 they are not kept. */
static void test_cache(void **state)
{
	need_dnsmasq();
	struct dnsmasq d;
	dnsmasq_start(&d, 0, 300);
	struct resolver *r = resolver_at(d.port);
	struct answers a;
	answers_init(&a);
	char want[512], buf[512];
	struct resolver_result *res = lookup(r, &a, "mx.test");
	CHECK_STR("first", status_name(res->status), "OK");
	snprintf(want, sizeof(want), "%s", targets_str(res, buf, sizeof(buf)));
	res = lookup(r, &a, "nx.test");
	CHECK_STR("first", status_name(res->status), "NXDOMAIN");
	res = lookup(r, &a, "nullmx.test");
	CHECK_STR("first", status_name(res->status), "NULL_MX");
	dnsmasq_stop(&d);

	res = lookup(r, &a, "mx.test");
	CHECK_STR("cached", status_name(res->status), "OK");
	CHECK_STR("cached", targets_str(res, buf, sizeof(buf)), want);
	res = lookup(r, &a, "MX.TEST");
	CHECK_STR("cached, other case", status_name(res->status), "OK");
	res = lookup(r, &a, "nx.test");
	CHECK_STR("cached", status_name(res->status), "NXDOMAIN");
	res = lookup(r, &a, "nullmx.test");
	CHECK_STR("cached", status_name(res->status), "NULL_MX");
	res = lookup(r, &a, "implicit.test");
	CHECK_STR("never asked", status_name(res->status), "TEMPFAIL");
	resolver_free(r);

	/* TTL 0: nothing to keep */
	dnsmasq_start(&d, 0, 0);
	r = resolver_at(d.port);
	res = lookup(r, &a, "mx.test");
	CHECK_STR("TTL 0", status_name(res->status), "OK");
	dnsmasq_stop(&d);
	res = lookup(r, &a, "mx.test");
	CHECK_STR("TTL 0, server gone", status_name(res->status), "TEMPFAIL");
	resolver_free(r);
	answers_free(&a);
}

/* Holds the resolver thread inside a callback until released. */
struct gate {
	pthread_mutex_t m;
	pthread_cond_t c;
	bool entered, open;
	struct resolver_result *res;
};

static void on_gate(void *arg, struct resolver_result *res)
{
	struct gate *g = arg;
	pthread_mutex_lock(&g->m);
	g->res = res;
	g->entered = true;
	pthread_cond_broadcast(&g->c);
	while (!g->open)
		pthread_cond_wait(&g->c, &g->m);
	pthread_mutex_unlock(&g->m);
}

/* Two lookups of one domain queued together share one DNS query. */
static void test_coalescing(void **state)
{
	need_dnsmasq();
	struct resolver *r = resolver_at(shared.port);
	struct gate g = {.m = PTHREAD_MUTEX_INITIALIZER, .c = PTHREAD_COND_INITIALIZER};
	assert_int_equal(resolver_lookup(r, "implicit.test", on_gate, &g), 0);
	struct timespec deadline;
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += WAIT_S;
	pthread_mutex_lock(&g.m);
	while (!g.entered && pthread_cond_timedwait(&g.c, &g.m, &deadline) != ETIMEDOUT)
		;
	bool entered = g.entered;
	pthread_mutex_unlock(&g.m);
	assert_true(entered);

	/* the resolver thread is stuck in on_gate: both wait in its queue */
	struct answers a;
	answers_init(&a);
	assert_int_equal(resolver_lookup(r, "coal.test", on_answer, &a), 0);
	assert_int_equal(resolver_lookup(r, "coal.test", on_answer, &a), 0);
	pthread_mutex_lock(&g.m);
	g.open = true;
	pthread_cond_broadcast(&g.c);
	pthread_mutex_unlock(&g.m);

	assert_true(answers_wait(&a, 2));
	char buf0[512];
	for (int i = 0; i < 2; i++) {
		CHECK_STR("coalesced", status_name(a.res[i]->status), "OK");
		CHECK_STR("coalesced", targets_str(a.res[i], buf0, sizeof(buf0)),
			  "mx1.mx.test 10 127.0.0.11\n");
	}
	assert_ptr_not_equal(a.res[0], a.res[1]);
	assert_ptr_not_equal(a.res[0]->t, a.res[1]->t);
	resolver_free(r);
	resolver_result_free(g.res);
	/* dnsmasq logs a query before it answers it */
	CHECK_INT("MX queries for coal.test", log_count(&shared, "query[MX] coal.test "), 1);
	answers_free(&a);
}

/* Equal preferences come in varying order (cached answers too); a host's
 * place among the others never crosses a preference. */
static void test_equal_preference_shuffled(void **state)
{
	need_dnsmasq();
	struct resolver *r = resolver_at(shared.port);
	struct answers a;
	answers_init(&a);
	char first_seen[8] = "";
	unsigned nfirst = 0;
	for (int i = 0; i < 30; i++) {
		struct resolver_result *res = lookup(r, &a, "eq.test");
		CHECK_STR("eq.test", status_name(res->status), "OK");
		CHECK_INT("eq.test", res->n, 6);
		CHECK_STR("eq.test", res->t[0].host, "first.eq.test");
		CHECK_STR("eq.test", res->t[5].host, "last.eq.test");
		unsigned seen = 0;
		for (int k = 1; k <= 4; k++) {
			const char *h = res->t[k].host;
			CHECK_INT(h, res->t[k].pref, 10);
			assert_true(strlen(h) == 9 && h[0] >= 'a' && h[0] <= 'd');
			seen |= 1u << (h[0] - 'a');
		}
		CHECK_INT("each host once", seen, 0xf);
		char c = res->t[1].host[0];
		if (!strchr(first_seen, c)) {
			first_seen[nfirst++] = c;
		}
	}
	if (nfirst < 2)
		fail_msg("30 lookups all started the pref 10 hosts with %s", first_seen);
	resolver_free(r);
	answers_free(&a);
}

/* Several workers at once: every lookup is answered, and correctly. */
static const struct {
	const char *domain;
	const char *want;     /* fingerprint() */
} mixed[] = {
	{"mx.test", "OK 3 mx1.mx.test"},
	{"implicit.test", "OK 1 implicit.test"},
	{"nx.test", "NXDOMAIN 0"},
	{"eq.test", "OK 6 first.eq.test"},
	{"partial.test", "OK 1 mx1.mx.test"},
	{"nullmx.test", "NULL_MX 0"},
	{"[192.0.2.7]", "OK 1 [192.0.2.7]"},
};

static const char *fingerprint(const struct resolver_result *res, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s %u%s%s", status_name(res->status), res->n, res->n ? " " : "",
		 res->n ? res->t[0].host : "");
	return buf;
}

struct worker_arg {
	struct resolver *r;
	struct answers a;
	int n;
};

static void *worker(void *arg)
{
	struct worker_arg *w = arg;
	for (int i = 0; i < w->n; i++)
		if (resolver_lookup(w->r, mixed[i % N_ELEMS(mixed)].domain, on_answer, &w->a) != 0)
			return "resolver_lookup failed";
	return NULL;
}

static void test_concurrent_callers(void **state)
{
	need_dnsmasq();
	struct resolver *r = resolver_at(shared.port);
	struct worker_arg w[4];
	pthread_t th[4];
	for (int i = 0; i < 4; i++) {
		w[i] = (struct worker_arg){.r = r, .n = (int)N_ELEMS(mixed) * 2 * (i + 1)};
		answers_init(&w[i].a);
		assert_int_equal(pthread_create(&th[i], NULL, worker, &w[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		void *ret;
		pthread_join(th[i], &ret);
		assert_null(ret);
	}
	for (int i = 0; i < 4; i++) {
		assert_true(answers_wait(&w[i].a, w[i].n));
		int count[N_ELEMS(mixed)] = {0};
		for (int k = 0; k < w[i].n; k++) {
			char buf[320];
			fingerprint(w[i].a.res[k], buf, sizeof(buf));
			size_t d = 0;
			while (d < N_ELEMS(mixed) && strcmp(buf, mixed[d].want) != 0)
				d++;
			if (d == N_ELEMS(mixed))
				fail_msg("unexpected answer \"%s\"", buf);
			count[d]++;
		}
		for (size_t d = 0; d < N_ELEMS(mixed); d++)
			CHECK_INT(mixed[d].domain, count[d], w[i].n / (int)N_ELEMS(mixed));
		answers_free(&w[i].a);
	}
	resolver_free(r);
}

/* Pending lookups (sent or still queued) get no callback once freed. */
static void on_unexpected(void *arg, struct resolver_result *res)
{
	resolver_result_free(res);
	fail_msg("callback after resolver_free");
}

static void test_free_with_pending(void **state)
{
	/* a server that never answers */
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sa);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	struct resolver *r = resolver_at(ntohs(sa.sin_port));
	assert_int_equal(resolver_lookup(r, "a.test", on_unexpected, NULL), 0);
	assert_int_equal(resolver_lookup(r, "b.test", on_unexpected, NULL), 0);
	assert_int_equal(resolver_lookup(r, "a.test", on_unexpected, NULL), 0);
	struct timespec ts = {.tv_nsec = 50 * 1000 * 1000};
	nanosleep(&ts, NULL);
	assert_int_equal(resolver_lookup(r, "c.test", on_unexpected, NULL), 0);
	resolver_free(r);
	close(fd);
}

static void test_bad_servers(void **state)
{
	static const char *const bad[] = {"not an address", "mx.example.org", "[::1]:x"};
	for (size_t i = 0; i < N_ELEMS(bad); i++) {
		char err[256] = "";
		struct resolver *r = resolver_new(bad[i], err, sizeof(err));
		if (r) {
			resolver_free(r);
			fail_msg("%s: accepted", bad[i]);
		}
		if (!strstr(err, "DNS servers"))
			fail_msg("%s: err \"%s\"", bad[i], err);
	}
	char err[256] = "";
	struct resolver *r = resolver_new(NULL, err, sizeof(err));
	if (!r)
		fail_msg("system resolv.conf: %s", err);
	resolver_free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lookups),
		cmocka_unit_test(test_address_literals),
		cmocka_unit_test(test_tempfail_not_cached),
		cmocka_unit_test(test_cache),
		cmocka_unit_test(test_coalescing),
		cmocka_unit_test(test_equal_preference_shuffled),
		cmocka_unit_test(test_concurrent_callers),
		cmocka_unit_test(test_free_with_pending),
		cmocka_unit_test(test_bad_servers),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
