/* Unit tests for proto/qp.c: escapes, soft line breaks, trailing white
 * space, and malformed escapes kept as they are. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdbool.h>
#include <string.h>

#include "qp.h"

static void test_lines(void **state)
{
	static const struct {
		const char *name, *in, *want;
		bool soft;
	} cases[] = {
		{"plain", "hello world", "hello world", false},
		{"escape", "caf=C3=A9", "caf\xc3\xa9", false},
		{"lower hex", "=3d=3D", "==", false},
		{"soft break", "4111 1111 =", "4111 1111 ", true},
		{"trailing space dropped", "text  \t", "text", false},
		{"space before soft kept", "a=20 =", "a  ", true},
		{"bad escape kept", "=ZZ=4", "=ZZ=4", false},
		{"lone equals is soft", "=", "", true},
		{"cr dropped", "line\r", "line", false},
		{"empty", "", "", false},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		char out[64];
		bool soft = !cases[i].soft;
		size_t n = qp_decode_line(cases[i].in, strlen(cases[i].in), out, &soft);
		out[n] = '\0';
		CHECK_STR(cases[i].name, out, cases[i].want);
		CHECK_INT(cases[i].name, soft, cases[i].soft);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lines),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
