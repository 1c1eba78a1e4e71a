/* Assertions shared by the table-driven unit tests: each failure names the
 * table row and shows got and want. */
#ifndef POSTERN_TEST_CHECK_H
#define POSTERN_TEST_CHECK_H

#include <string.h>

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

#define CHECK_INT(name, got, want)                                          \
	do {                                                                \
		long long g_ = (long long)(got), w_ = (long long)(want);    \
		if (g_ != w_)                                               \
			fail_msg("%s: %s = %lld, want %lld", (name), #got,  \
				 g_, w_);                                   \
	} while (0)

#define CHECK_STR(name, got, want)                                          \
	do {                                                                \
		const char *g_ = (got), *w_ = (want);                       \
		if (strcmp(g_, w_) != 0)                                    \
			fail_msg("%s: %s\n  got  \"%s\"\n  want \"%s\"",      \
				 (name), #got, g_, w_);                     \
	} while (0)

#endif
