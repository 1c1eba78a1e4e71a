/* Unit tests for engine/auth.c: the users file (lines, errors with their
 * line), hashing and verification (yescrypt and SHA-512), the decoy, and
 * the verifier threads answering through a mailbox. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "io.h"

static char path[64];

static void write_file(const char *text)
{
	snprintf(path, sizeof(path), "/tmp/postern-users-%d", (int)getpid());
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void test_hash_and_verify(void **state)
{
	char h[256];
	assert_true(auth_hash_password("s3cret", h, sizeof(h)));
	assert_true(strncmp(h, "$y$", 3) == 0);
	assert_true(auth_verify(h, "s3cret"));
	assert_false(auth_verify(h, "s3cre"));
	assert_false(auth_verify(h, "s3cret "));
	assert_false(auth_verify(h, ""));
	/* SHA-512 crypt, made by libxcrypt itself */
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	assert_non_null(crypt_gensalt_rn("$6$", 0, NULL, 0, salt, sizeof(salt)));
	struct crypt_data cd;
	memset(&cd, 0, sizeof(cd));
	const char *h6 = crypt_rn("pässword", salt, &cd, sizeof(cd));
	assert_non_null(h6);
	char keep[256];
	snprintf(keep, sizeof(keep), "%s", h6);
	assert_true(auth_verify(keep, "pässword"));
	assert_false(auth_verify(keep, "password"));
	/* A malformed stored hash never verifies. */
	assert_false(auth_verify("$y$broken", "s3cret"));
	assert_false(auth_verify("*", ""));
	/* The decoy is a real hash that nothing is known to match. */
	const char *d = auth_decoy_hash();
	assert_true(strncmp(d, "$y$", 3) == 0);
	assert_false(auth_verify(d, ""));
}

static void test_users_file(void **state)
{
	char h[256], line[2048];
	assert_true(auth_hash_password("pw1", h, sizeof(h)));
	snprintf(line, sizeof(line), "# relay users\n\nalice:%s\n  # indented comment\nprinter-3@corp.example:%s\r\n",
		 h, h);
	write_file(line);
	char err[300];
	struct auth_users *u = auth_users_load(path, err, sizeof(err));
	if (!u)
		fail_msg("%s", err);
	assert_int_equal(auth_users_count(u), 2);
	assert_string_equal(auth_users_hash(u, "alice"), h);
	assert_string_equal(auth_users_hash(u, "printer-3@corp.example"), h);
	assert_null(auth_users_hash(u, "Alice")); /* names are exact */
	assert_null(auth_users_hash(u, "bob"));
	auth_users_free(u);

	static const struct {
		const char *text;
		const char *want;
	} bad[] = {
		{"alice\n", ":1: expected name:hash"},
		{"# ok\n:$y$x\n", ":2: expected name:hash"},
		{"alice:plaintext\n", ":1: unsupported hash"},
		{"alice:$1$md5isold\n", ":1: unsupported hash"},
		{"alice:$6$a$b\nbob:$6$a$b\nalice:$6$c$d\n", "user \"alice\" appears twice"},
	};
	for (size_t i = 0; i < N_ELEMS(bad); i++) {
		write_file(bad[i].text);
		err[0] = '\0';
		u = auth_users_load(path, err, sizeof(err));
		if (u)
			fail_msg("case %zu loaded", i);
		if (!strstr(err, bad[i].want) || strncmp(err, path, strlen(path)) != 0)
			fail_msg("case %zu: \"%s\", want \"%s\"", i, err, bad[i].want);
	}
	unlink(path);
	assert_null(auth_users_load(path, err, sizeof(err)));
	assert_non_null(strstr(err, "No such file or directory"));
}

/* The verifier threads answer through the mailbox, with a wake-up. */
static void test_verifier(void **state)
{
	char err[200];
	struct io_params p = {.entries = 64, .nbufs = 8, .bufsz = 4096};
	struct io *io = io_open(IO_BACKEND_EPOLL, &p, err, sizeof(err));
	if (!io)
		fail_msg("io_open: %s", err);
	struct mailbox mb;
	mailbox_init(&mb);
	struct authd *d = authd_start(2, 2);
	assert_non_null(d);
	char h[256];
	assert_true(auth_hash_password("right", h, sizeof(h)));
	struct auth_req r[3];
	memset(r, 0, sizeof(r));
	const char *pw[3] = {"right", "wrong", "right"};
	bool known[3] = {true, true, false};
	for (int i = 0; i < 3; i++) {
		r[i].reply_to = &mb;
		r[i].wake = io;
		r[i].tag = (uint64_t)i;
		r[i].known = known[i];
		snprintf(r[i].hash, sizeof(r[i].hash), "%s", h);
		snprintf(r[i].pass, sizeof(r[i].pass), "%s", pw[i]);
	}
	unsigned submitted = 0;
	for (int i = 0; i < 3; i++)
		submitted += authd_submit(d, &r[i]);
	assert_true(submitted >= 2); /* the queue holds 2; a third may be taken already */
	unsigned got = 0;
	bool seen[3] = {false, false, false};
	for (int spin = 0; spin < 500 && got < submitted; spin++) {
		usleep(10000);
		for (struct mailbox_node *n = mailbox_take(&mb); n; n = n->next) {
			struct auth_req *q = (struct auth_req *)n;
			seen[q->tag] = true;
			got++;
			assert_int_equal(q->pass[0], 0); /* wiped */
			assert_true(q->cost_us > 0);
			/* only the known user with the right password passes */
			assert_int_equal(q->ok, q->tag == 0);
		}
	}
	assert_int_equal(got, submitted);
	assert_true(seen[0] && seen[1]);
	authd_forget(d, &mb);
	authd_stop(d);
	mailbox_destroy(&mb);
	io_close(io);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hash_and_verify),
		cmocka_unit_test(test_users_file),
		cmocka_unit_test(test_verifier),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
