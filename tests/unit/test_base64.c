/* Unit tests for proto/base64.c: RFC 4648 test vectors both ways, and
 * every kind of non-canonical input refused. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdio.h>
#include <string.h>

#include "base64.h"

static void test_vectors(void **state)
{
	static const struct {
		const char *plain, *coded;
	} cases[] = {
		{"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="},
		{"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"},
		{"Username:", "VXNlcm5hbWU6"}, {"Password:", "UGFzc3dvcmQ6"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char enc[64];
		size_t n = base64_encode((const unsigned char *)cases[i].plain, strlen(cases[i].plain),
					 enc);
		CHECK_STR(cases[i].plain, enc, cases[i].coded);
		CHECK_INT(cases[i].plain, n, strlen(cases[i].coded));
		unsigned char dec[64];
		size_t dl = 99;
		if (!base64_decode(cases[i].coded, strlen(cases[i].coded), dec, sizeof(dec), &dl))
			fail_msg("%s: not decoded", cases[i].coded);
		CHECK_INT(cases[i].coded, dl, strlen(cases[i].plain));
		assert_memory_equal(dec, cases[i].plain, dl);
	}
	/* Binary with NULs (AUTH PLAIN) survives the round trip. */
	const unsigned char plain[] = "\0alice\0s3cr\xc3\xa9t";
	char enc[64];
	base64_encode(plain, sizeof(plain) - 1, enc);
	CHECK_STR("plain", enc, "AGFsaWNlAHMzY3LDqXQ=");
	unsigned char dec[64];
	size_t dl;
	assert_true(base64_decode(enc, strlen(enc), dec, sizeof(dec), &dl));
	assert_int_equal(dl, sizeof(plain) - 1);
	assert_memory_equal(dec, plain, dl);
}

static void test_refused(void **state)
{
	static const char *const bad[] = {
		"Zg", "Zg=", "Zm9", "Z===", "====", "Zg==Zg==", "Zm=v", "Zh==", "Zm9=", "Zm9v\r\n",
		"Zm 9v", "Zm9v ", "Zm9-", "Zm9_", "Zm\09v",
	};
	for (size_t i = 0; i < N_ELEMS(bad); i++) {
		unsigned char out[32];
		size_t n = 7;
		size_t len = strlen(bad[i]);
		if (i == N_ELEMS(bad) - 1)
			len = 5; /* with the NUL inside */
		if (base64_decode(bad[i], len, out, sizeof(out), &n))
			fail_msg("\"%s\" decoded", bad[i]);
		CHECK_INT(bad[i], n, 0);
	}
	/* Room is checked: "foobar" needs 6 bytes. */
	unsigned char small[5];
	size_t n;
	assert_false(base64_decode("Zm9vYmFy", 8, small, sizeof(small), &n));
	assert_true(base64_decode("Zm9vYg==", 8, small, 4, &n));
	assert_int_equal(n, 4);
}

/* MIME base64: any split of the input gives the same bytes; line breaks
 * and stray characters are skipped; '=' ends the data. */
static void test_stream(void **state)
{
	static const struct {
		const char *name, *in, *want;
	} cases[] = {
		{"plain", "Zm9vYmFy", "foobar"},
		{"lines", "Zm9v\r\nYmFy\r\n", "foobar"},
		{"pad1", "Zm9vYmE=", "fooba"},
		{"pad2", "Zm9vYg==\r\n", "foob"},
		{"after pad ignored", "Zg==Zm9v", "f"},
		{"stray", "Zm 9v*Ym\tFy", "foobar"},
		{"partial dropped", "Zm9vY", "foo"},
		{"empty", "", ""},
		{"MZ header", "TVqQAAMAAAAEAAAA", "MZ\x90\0\x03\0\0\0\x04\0\0\0"},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		size_t len = strlen(cases[i].in);
		size_t wl = i == N_ELEMS(cases) - 1 ? 12 : strlen(cases[i].want);
		for (size_t cut = 0; cut <= len; cut++) {
			struct base64_stream s;
			base64_stream_init(&s);
			unsigned char out[64];
			size_t n = base64_stream_decode(&s, cases[i].in, cut, out);
			n += base64_stream_decode(&s, cases[i].in + cut, len - cut, out + n);
			CHECK_INT(cases[i].name, n, wl);
			if (memcmp(out, cases[i].want, wl) != 0)
				fail_msg("%s: cut %zu: wrong bytes", cases[i].name, cut);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vectors),
		cmocka_unit_test(test_refused),
		cmocka_unit_test(test_stream),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
