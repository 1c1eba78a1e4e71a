/* Unit tests for credential files (engine/secret.c): which bytes are the
 * secret (one trailing line end is not), when the file is read again
 * (another inode, size, mtime: a same-size rewrite too), and the errors,
 * each naming the file. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "secret.h"

struct dir {
	char path[64];
	char file[128];
};

static int dir_setup(void **state)
{
	struct dir *d = calloc(1, sizeof(*d));
	if (!d)
		return -1;
	snprintf(d->path, sizeof(d->path), "/tmp/postern-secret-XXXXXX");
	if (!mkdtemp(d->path)) {
		free(d);
		return -1;
	}
	snprintf(d->file, sizeof(d->file), "%s/secret", d->path);
	*state = d;
	return 0;
}

static int dir_teardown(void **state)
{
	struct dir *d = *state;
	unlink(d->file);
	char other[160];
	snprintf(other, sizeof(other), "%s/new", d->path);
	unlink(other);
	rmdir(d->path);
	free(d);
	return 0;
}

/* Writes n bytes in place (same inode), then sets the mtime to sec.nsec
 * (0: leave what the write made). */
static void put(const char *path, const char *bytes, size_t n, time_t sec, long nsec)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, bytes, n), (ssize_t)n);
	if (sec) {
		struct timespec ts[2] = {{sec, nsec}, {sec, nsec}};
		assert_int_equal(futimens(fd, ts), 0);
	}
	close(fd);
}

static void test_trailing_newline(void **state)
{
	struct dir *d = *state;
	static const struct {
		const char *name;
		const char *content;
		size_t len;
		const char *want;    /* NULL: an error */
		size_t want_len;
		const char *err;     /* after "PATH: " */
	} cases[] = {
		{"no line end", "s3cret", 6, "s3cret", 6, NULL},
		{"LF", "s3cret\n", 7, "s3cret", 6, NULL},
		{"CRLF", "s3cret\r\n", 8, "s3cret", 6, NULL},
		{"only one LF", "s3cret\n\n", 8, "s3cret\n", 7, NULL},
		{"only one CRLF", "s3cret\r\n\r\n", 10, "s3cret\r\n", 8, NULL},
		{"a lone CR stays", "s3cret\r", 7, "s3cret\r", 7, NULL},
		{"spaces are the secret's", " pass word \n", 12, " pass word ", 11, NULL},
		{"inner line ends stay", "a\nb\n", 4, "a\nb", 3, NULL},
		{"empty", "", 0, NULL, 0, "empty"},
		{"only a line end", "\n", 1, NULL, 0, "empty"},
		{"only CRLF", "\r\n", 2, NULL, 0, "empty"},
		{"NUL inside", "ab\0cd\n", 6, NULL, 0, "contains a NUL byte"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		put(d->file, cases[i].content, cases[i].len, 0, 0);
		struct secret s;
		assert_true(secret_init(&s, d->file, SECRET_PASSWORD_MAX));
		char err[256] = "";
		bool changed = false;
		int rc = secret_refresh(&s, &changed, err, sizeof(err));
		if (cases[i].want) {
			CHECK_INT(cases[i].name, rc, 0);
			CHECK_INT(cases[i].name, changed, true);
			CHECK_INT(cases[i].name, s.len, cases[i].want_len);
			assert_memory_equal(s.value, cases[i].want, cases[i].want_len);
			CHECK_INT(cases[i].name, s.value[s.len], 0);
		} else {
			char want[300];
			snprintf(want, sizeof(want), "%s: %s", d->file, cases[i].err);
			CHECK_INT(cases[i].name, rc, -1);
			CHECK_STR(cases[i].name, err, want);
			CHECK_INT(cases[i].name, s.value == NULL, true);
		}
		secret_free(&s);
	}
}

static void test_size_cap(void **state)
{
	struct dir *d = *state;
	char *big = malloc(SECRET_TOKEN_MAX + 2);
	assert_non_null(big);
	memset(big, 'x', SECRET_TOKEN_MAX + 2);
	struct secret s;
	assert_true(secret_init(&s, d->file, SECRET_TOKEN_MAX));
	char err[256], want[300];
	/* exactly the cap, and the cap plus a line end: taken */
	put(d->file, big, SECRET_TOKEN_MAX, 0, 0);
	CHECK_INT("at the cap", secret_refresh(&s, NULL, err, sizeof(err)), 0);
	CHECK_INT("at the cap", s.len, SECRET_TOKEN_MAX);
	/* one more byte: refused, even if it were a line end */
	big[SECRET_TOKEN_MAX] = '\n';
	put(d->file, big, SECRET_TOKEN_MAX + 1, 0, 0);
	CHECK_INT("over the cap", secret_refresh(&s, NULL, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "%s: larger than %d bytes", d->file, SECRET_TOKEN_MAX);
	CHECK_STR("over the cap", err, want);
	CHECK_INT("over the cap", s.value == NULL, true);
	secret_free(&s);
	free(big);
}

static void test_change_detection(void **state)
{
	struct dir *d = *state;
	struct secret s;
	char err[256];
	bool changed;
	assert_true(secret_init(&s, d->file, SECRET_TOKEN_MAX));
	put(d->file, "token-one\n", 10, 1700000000, 100);
	CHECK_INT("first", secret_refresh(&s, &changed, err, sizeof(err)), 0);
	CHECK_INT("first", changed, true);
	CHECK_STR("first", s.value, "token-one");
	CHECK_INT("first", secret_stale(&s), false);

	/* unchanged: the cached value, no read */
	CHECK_INT("again", secret_refresh(&s, &changed, err, sizeof(err)), 0);
	CHECK_INT("again", changed, false);
	CHECK_STR("again", s.value, "token-one");

	/* same size, same inode, another mtime */
	put(d->file, "token-two\n", 10, 1700000000, 200);
	CHECK_INT("same size, mtime", secret_stale(&s), true);
	CHECK_INT("same size, mtime", secret_refresh(&s, &changed, err, sizeof(err)), 0);
	CHECK_INT("same size, mtime", changed, true);
	CHECK_STR("same size, mtime", s.value, "token-two");

	/* another size */
	put(d->file, "token-three\n", 12, 1700000000, 200);
	CHECK_INT("size", secret_refresh(&s, &changed, err, sizeof(err)), 0);
	CHECK_INT("size", changed, true);
	CHECK_STR("size", s.value, "token-three");

	/* renamed into place, as a refresher does it: another inode */
	char tmp[160];
	snprintf(tmp, sizeof(tmp), "%s/new", d->path);
	put(tmp, "token-four\n", 11, 1700000000, 200);
	assert_int_equal(rename(tmp, d->file), 0);
	CHECK_INT("rename", secret_refresh(&s, &changed, err, sizeof(err)), 0);
	CHECK_INT("rename", changed, true);
	CHECK_STR("rename", s.value, "token-four");

	/* gone: an error naming it, the old value dropped */
	assert_int_equal(unlink(d->file), 0);
	CHECK_INT("removed", secret_stale(&s), true);
	CHECK_INT("removed", secret_refresh(&s, &changed, err, sizeof(err)), -1);
	char want[300];
	snprintf(want, sizeof(want), "%s: %s", d->file, strerror(ENOENT));
	CHECK_STR("removed", err, want);
	CHECK_INT("removed", s.value == NULL, true);

	/* back: read again even with the very same stamp as before */
	put(d->file, "token-four\n", 11, 1700000000, 200);
	CHECK_INT("back", secret_refresh(&s, &changed, err, sizeof(err)), 0);
	CHECK_INT("back", changed, true);
	CHECK_STR("back", s.value, "token-four");
	secret_free(&s);
}

static void test_errors(void **state)
{
	struct dir *d = *state;
	struct secret s;
	char err[256], want[300];
	assert_true(secret_init(&s, d->file, SECRET_PASSWORD_MAX));
	CHECK_INT("missing", secret_refresh(&s, NULL, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "%s: %s", d->file, strerror(ENOENT));
	CHECK_STR("missing", err, want);
	secret_free(&s);

	assert_true(secret_init(&s, d->path, SECRET_PASSWORD_MAX));
	CHECK_INT("directory", secret_refresh(&s, NULL, err, sizeof(err)), -1);
	snprintf(want, sizeof(want), "%s: not a regular file", d->path);
	CHECK_STR("directory", err, want);
	secret_free(&s);

	if (geteuid() != 0) {
		/* root reads it anyway */
		put(d->file, "pw\n", 3, 0, 0);
		assert_int_equal(chmod(d->file, 0), 0);
		assert_true(secret_init(&s, d->file, SECRET_PASSWORD_MAX));
		CHECK_INT("unreadable", secret_refresh(&s, NULL, err, sizeof(err)), -1);
		snprintf(want, sizeof(want), "%s: %s", d->file, strerror(EACCES));
		CHECK_STR("unreadable", err, want);
		secret_free(&s);
	}
	secret_free(&s); /* harmless twice */
}

static void test_wipe(void **state)
{
	(void)state;
	char buf[16];
	memset(buf, 'x', sizeof(buf));
	secret_wipe(buf, sizeof(buf));
	for (size_t i = 0; i < sizeof(buf); i++)
		CHECK_INT("wiped", buf[i], 0);
	secret_wipe(NULL, 4);
	char *copy = strdup("s3cret");
	assert_non_null(copy);
	secret_free_copy(copy);
	secret_free_copy(NULL);
}

#define DIR_TEST(f) cmocka_unit_test_setup_teardown(f, dir_setup, dir_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		DIR_TEST(test_trailing_newline), DIR_TEST(test_size_cap),
		DIR_TEST(test_change_detection), DIR_TEST(test_errors),
		cmocka_unit_test(test_wipe),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
