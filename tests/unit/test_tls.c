/* Unit tests for engine/tls.c: a server and a client struct tls wired
 * back to back in memory (what one hands out, the other takes in), with
 * certificates made by the openssl command at run time in a temporary
 * directory. Handshakes, resumption across contexts (workers, reloads),
 * SNI, verification failures, client certificates, bad files. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tls.h"

static char dir[64];

static void sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (system(cmd) != 0)
		fail_msg("command failed: %s", cmd);
}

static const char *path(const char *name)
{
	static char bufs[8][128];
	static int k;
	char *b = bufs[k++ % 8];
	snprintf(b, 128, "%s/%s", dir, name);
	return b;
}

/* name: files NAME.pem/NAME.key, a leaf for cn signed by the test CA,
 * ECDSA or RSA. */
static void make_leaf(const char *name, const char *cn, bool rsa)
{
	sh("cd %s && openssl req -new -newkey %s -nodes -keyout %s.key -out %s.csr -subj /CN=%s "
	   ">/dev/null 2>&1",
	   dir, rsa ? "rsa:2048" : "ec -pkeyopt ec_paramgen_curve:P-256", name, name, cn);
	sh("cd %s && printf 'subjectAltName=DNS:%s\\n' > %s.ext && openssl x509 -req -in %s.csr "
	   "-days 2 -CA ca.pem -CAkey ca.key -CAcreateserial -extfile %s.ext -out %s.pem "
	   ">/dev/null 2>&1",
	   dir, cn, name, name, name, name);
}

static int setup(void **state)
{
	snprintf(dir, sizeof(dir), "/tmp/test_tls.XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	sh("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
	   "-keyout ca.key -out ca.pem -days 2 -subj /CN=Test-CA >/dev/null 2>&1", dir);
	make_leaf("relay", "relay.test", false);
	make_leaf("other", "other.test", true);
	make_leaf("client", "app1.corp.test", false);
	/* self-signed, with the good one's name */
	sh("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
	   "-keyout rogue.key -out rogue.pem -days 2 -subj /CN=relay.test "
	   "-addext subjectAltName=DNS:relay.test >/dev/null 2>&1", dir);
	sh("chmod 600 %s/*.key", dir);
	return tls_global_init() ? 0 : -1;
}

static int teardown(void **state)
{
	sh("rm -rf %s", dir);
	return 0;
}

static struct tls_server *server_new(const char *const *names, unsigned n, const char *ca,
				     const char *id)
{
	const char *certs[4], *keys[4];
	static char cb[4][128], kb[4][128];
	for (unsigned i = 0; i < n; i++) {
		snprintf(cb[i], sizeof(cb[i]), "%s/%s.pem", dir, names[i]);
		snprintf(kb[i], sizeof(kb[i]), "%s/%s.key", dir, names[i]);
		certs[i] = cb[i];
		keys[i] = kb[i];
	}
	struct tls_server_conf c = {.certs = certs, .keys = keys, .ncerts = n, .min_version = 12,
				    .client_ca_file = ca, .id = id};
	char err[600];
	struct tls_server *s = tls_server_new(&c, err, sizeof(err), NULL, NULL);
	if (!s)
		fail_msg("tls_server_new: %s", err);
	return s;
}

static struct tls_client *client_new(enum tls_mode mode, const char *cert)
{
	char cp[128], kp[128];
	if (cert) {
		snprintf(cp, sizeof(cp), "%s/%s.pem", dir, cert);
		snprintf(kp, sizeof(kp), "%s/%s.key", dir, cert);
	}
	struct tls_client_conf c = {.mode = mode, .ca_file = mode == TLS_MODE_VERIFY ? path("ca.pem") : NULL,
				    .cert = cert ? cp : NULL, .key = cert ? kp : NULL};
	char err[600];
	struct tls_client *t = tls_client_new(&c, err, sizeof(err), NULL, NULL);
	if (!t)
		fail_msg("tls_client_new: %s", err);
	return t;
}

/* Moves pending ciphertext from a to b. */
static bool move(struct tls *a, struct tls *b)
{
	const char *p;
	size_t n = tls_output(a, &p);
	if (!n)
		return false;
	assert_true(tls_input(b, p, n));
	tls_output_done(a, n);
	return true;
}

/* Runs both handshakes to the end; returns the client's result (the
 * server's is in *sr). */
static enum tls_result pump(struct tls *cl, struct tls *sv, enum tls_result *sr)
{
	enum tls_result c = TLS_AGAIN, s = TLS_AGAIN;
	for (int i = 0; i < 20; i++) {
		if (c == TLS_AGAIN)
			c = tls_handshake(cl);
		bool m1 = move(cl, sv);
		if (s == TLS_AGAIN)
			s = tls_handshake(sv);
		bool m2 = move(sv, cl);
		if (c != TLS_AGAIN && s != TLS_AGAIN && !m1 && !m2)
			break;
		if (c == TLS_FAILED || s == TLS_FAILED) {
			if (c == TLS_AGAIN)
				c = tls_handshake(cl);
			break;
		}
	}
	*sr = s;
	return c;
}

/* Sends text from a to b; returns what b read. */
static void exchange(struct tls *a, struct tls *b, const char *text, char *got, size_t cap)
{
	assert_true(tls_write(a, text, strlen(text)));
	move(a, b);
	long n = tls_read(b, got, cap - 1);
	assert_true(n > 0);
	got[n] = '\0';
	move(b, a); /* e.g. tickets the server wrote */
}

static void test_handshake_and_data(void **state)
{
	const char *n[] = {"relay"};
	struct tls_server *s = server_new(n, 1, NULL, "Default");
	struct tls_client *c = client_new(TLS_MODE_OPPORTUNISTIC, NULL);
	struct tls *sv = tls_server_start(s), *cl = tls_client_start(c, "relay.test", NULL, NULL);
	enum tls_result sr;
	assert_int_equal(pump(cl, sv, &sr), TLS_DONE);
	assert_int_equal(sr, TLS_DONE);
	assert_true(tls_established(sv) && tls_established(cl));
	assert_string_equal(tls_version(sv), "TLSv1.3");
	assert_string_equal(tls_cipher(sv), tls_cipher(cl));
	assert_non_null(strstr(tls_cipher(sv), "TLS_"));
	assert_false(tls_resumed(sv));
	assert_false(tls_peer_verified(sv)); /* no client certificate */
	char got[256];
	exchange(cl, sv, "EHLO app1.corp.test\r\n", got, sizeof(got));
	assert_string_equal(got, "EHLO app1.corp.test\r\n");
	exchange(sv, cl, "250 relay.test\r\n", got, sizeof(got));
	assert_string_equal(got, "250 relay.test\r\n");
	/* Nothing more: AGAIN, not EOF. */
	assert_int_equal(tls_read(sv, got, sizeof(got)), TLS_AGAIN);
	tls_free(sv);
	tls_free(cl);
	tls_client_free(c);
	tls_server_free(s);
}

/* A session from one context resumes on another built from the same
 * configuration (another worker shares the context; a reload builds a new
 * one): the ticket keys are process-wide. Another connector's does not. */
static void test_resumption_across_contexts(void **state)
{
	const char *n[] = {"relay"};
	struct tls_server *a = server_new(n, 1, NULL, "Default");
	struct tls_server *b = server_new(n, 1, NULL, "Default");
	struct tls_server *other = server_new(n, 1, NULL, "Partners");
	struct tls_client *c = client_new(TLS_MODE_OPPORTUNISTIC, NULL);
	struct tls *sv = tls_server_start(a), *cl = tls_client_start(c, "relay.test", NULL, NULL);
	enum tls_result sr;
	assert_int_equal(pump(cl, sv, &sr), TLS_DONE);
	char got[64];
	exchange(sv, cl, "220 hi\r\n", got, sizeof(got));
	SSL_SESSION *sess = tls_session_get(cl);
	assert_non_null(sess);
	tls_free(sv);
	tls_free(cl);
	struct {
		struct tls_server *s;
		bool resumed;
	} cases[] = {{b, true}, {a, true}, {other, false}};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		sv = tls_server_start(cases[i].s);
		cl = tls_client_start(c, "relay.test", NULL, sess);
		assert_int_equal(pump(cl, sv, &sr), TLS_DONE);
		assert_int_equal(sr, TLS_DONE);
		if (tls_resumed(sv) != cases[i].resumed || tls_resumed(cl) != cases[i].resumed)
			fail_msg("case %zu: resumed %d, want %d", i, tls_resumed(sv), cases[i].resumed);
		tls_free(sv);
		tls_free(cl);
	}
	tls_session_free(sess);
	tls_client_free(c);
	tls_server_free(a);
	tls_server_free(b);
	tls_server_free(other);
}

static void test_sni_picks_certificate(void **state)
{
	const char *n[] = {"relay", "other"};
	struct tls_server *s = server_new(n, 2, NULL, "Default");
	char names[200];
	tls_server_names(s, 1, names, sizeof(names));
	assert_string_equal(names, "other.test");
	struct tls_client *c = client_new(TLS_MODE_OPPORTUNISTIC, NULL);
	static const struct {
		const char *sni, *cn;
	} cases[] = {{"other.test", "other.test"}, {"relay.test", "relay.test"},
		     {"unknown.test", "relay.test"}, {NULL, "relay.test"}};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct tls *sv = tls_server_start(s), *cl = tls_client_start(c, cases[i].sni, NULL, NULL);
		enum tls_result sr;
		assert_int_equal(pump(cl, sv, &sr), TLS_DONE);
		char cn[128];
		tls_peer_name(cl, cn, sizeof(cn));
		CHECK_STR(cases[i].sni ? cases[i].sni : "no sni", cn, cases[i].cn);
		tls_free(sv);
		tls_free(cl);
	}
	tls_client_free(c);
	tls_server_free(s);
}

static void test_verify_outcomes(void **state)
{
	const char *good[] = {"relay"}, *rogue[] = {"rogue"};
	struct tls_server *gs = server_new(good, 1, NULL, "A");
	struct tls_server *rs = server_new(rogue, 1, NULL, "B");
	static const struct {
		const char *name;
		int server;   /* 0 good, 1 rogue */
		enum tls_mode mode;
		const char *vname;
		enum tls_result want;
		enum tls_failure kind;
	} cases[] = {
		{"verified", 0, TLS_MODE_VERIFY, "relay.test", TLS_DONE, TLS_FAIL_NONE},
		{"name mismatch", 0, TLS_MODE_VERIFY, "mail.elsewhere.test", TLS_FAILED,
		 TLS_FAIL_NAME_MISMATCH},
		{"untrusted", 1, TLS_MODE_VERIFY, "relay.test", TLS_FAILED, TLS_FAIL_UNTRUSTED},
		{"required ignores trust", 1, TLS_MODE_REQUIRED, "relay.test", TLS_DONE,
		 TLS_FAIL_NONE},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct tls_client *c = client_new(cases[i].mode, NULL);
		struct tls *sv = tls_server_start(cases[i].server ? rs : gs);
		struct tls *cl = tls_client_start(c, cases[i].vname, cases[i].vname, NULL);
		enum tls_result sr;
		CHECK_INT(cases[i].name, pump(cl, sv, &sr), cases[i].want);
		CHECK_INT(cases[i].name, tls_failure_kind(cl), cases[i].kind);
		if (cases[i].kind == TLS_FAIL_NAME_MISMATCH)
			CHECK_STR(cases[i].name, tls_error(cl), "name mismatch");
		if (cases[i].kind == TLS_FAIL_UNTRUSTED)
			assert_non_null(strstr(tls_error(cl), "untrusted chain"));
		CHECK_INT(cases[i].name, tls_peer_verified(cl), i == 0);
		tls_free(sv);
		tls_free(cl);
		tls_client_free(c);
	}
	tls_server_free(gs);
	tls_server_free(rs);
}

static void test_client_certificates(void **state)
{
	const char *n[] = {"relay"};
	struct tls_server *s = server_new(n, 1, path("ca.pem"), "Partners");
	static const struct {
		const char *cert;
		bool verified;
		const char *cn;
	} cases[] = {{"client", true, "app1.corp.test"}, {NULL, false, ""}, {"rogue", false, "relay.test"}};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct tls_client *c = client_new(TLS_MODE_OPPORTUNISTIC, cases[i].cert);
		struct tls *sv = tls_server_start(s), *cl = tls_client_start(c, "relay.test", NULL, NULL);
		enum tls_result sr;
		/* Asked for, not demanded: the handshake completes either way. */
		assert_int_equal(pump(cl, sv, &sr), TLS_DONE);
		assert_int_equal(sr, TLS_DONE);
		CHECK_INT(cases[i].cert ? cases[i].cert : "none", tls_peer_verified(sv),
			  cases[i].verified);
		char cn[128];
		tls_peer_name(sv, cn, sizeof(cn));
		CHECK_STR("cn", cn, cases[i].cn);
		tls_free(sv);
		tls_free(cl);
		tls_client_free(c);
	}
	tls_server_free(s);
}

static void test_garbage_instead_of_hello(void **state)
{
	const char *n[] = {"relay"};
	struct tls_server *s = server_new(n, 1, NULL, "Default");
	struct tls *sv = tls_server_start(s);
	const char junk[] = "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\n";
	assert_true(tls_input(sv, junk, sizeof(junk) - 1));
	assert_int_equal(tls_handshake(sv), TLS_FAILED);
	assert_int_equal(tls_failure_kind(sv), TLS_FAIL_HANDSHAKE);
	assert_non_null(strstr(tls_error(sv), "handshake failed"));
	assert_false(tls_established(sv));
	tls_free(sv);
	tls_server_free(s);
}

static unsigned warnings;
static char last_warning[600];

static void warn(void *ctx, const char *text)
{
	(void)ctx;
	warnings++;
	snprintf(last_warning, sizeof(last_warning), "%s", text);
}

static void test_bad_files(void **state)
{
	sh("cd %s && printf 'not a certificate\\n' > junk.pem", dir);
	static const struct {
		const char *name, *cert, *key, *want;
	} cases[] = {
		{"missing cert", "missing.pem", "relay.key", "missing.pem: No such file or directory"},
		{"missing key", "relay.pem", "missing.key", "missing.key: No such file or directory"},
		{"garbage cert", "junk.pem", "relay.key", "junk.pem: not a PEM certificate chain"},
		{"garbage key", "relay.pem", "junk.pem", "junk.pem: not a PEM private key"},
		{"mismatch, other type", "relay.pem", "other.key",
		 "other.key: private key does not match the certificate in"},
		{"mismatch, same type", "relay.pem", "client.key",
		 "client.key: private key does not match the certificate in"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char c[128], k[128];
		snprintf(c, sizeof(c), "%s/%s", dir, cases[i].cert);
		snprintf(k, sizeof(k), "%s/%s", dir, cases[i].key);
		const char *certs[] = {c}, *keys[] = {k};
		struct tls_server_conf sc = {.certs = certs, .keys = keys, .ncerts = 1,
					     .min_version = 12, .id = "x"};
		char err[600] = "";
		struct tls_server *s = tls_server_new(&sc, err, sizeof(err), NULL, NULL);
		if (s)
			fail_msg("%s: accepted", cases[i].name);
		if (!strstr(err, cases[i].want))
			fail_msg("%s: error \"%s\", want it to contain \"%s\"", cases[i].name, err,
				 cases[i].want);
	}
	/* A key others can read loads, with a warning naming it. */
	chmod(path("relay.key"), 0644);
	const char *certs[] = {path("relay.pem")}, *keys[] = {path("relay.key")};
	struct tls_server_conf sc = {.certs = certs, .keys = keys, .ncerts = 1, .min_version = 13,
				     .id = "x"};
	char err[600];
	warnings = 0;
	struct tls_server *s = tls_server_new(&sc, err, sizeof(err), warn, NULL);
	assert_non_null(s);
	assert_int_equal(warnings, 1);
	assert_non_null(strstr(last_warning, "relay.key: private key is readable by group or others"));
	tls_server_free(s);
	chmod(path("relay.key"), 0600);
	warnings = 0;
	s = tls_server_new(&sc, err, sizeof(err), warn, NULL);
	assert_non_null(s);
	assert_int_equal(warnings, 0);
	tls_server_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_handshake_and_data),
		cmocka_unit_test(test_resumption_across_contexts),
		cmocka_unit_test(test_sni_picks_certificate),
		cmocka_unit_test(test_verify_outcomes),
		cmocka_unit_test(test_client_certificates),
		cmocka_unit_test(test_garbage_instead_of_hello),
		cmocka_unit_test(test_bad_files),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
