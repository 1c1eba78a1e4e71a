/* libFuzzer target for the configuration loader (engine/config.c): the input
 * is the file conf_load() reads (a memfd, or a temp file where there is
 * none). Checks: a refusal is one "FILE:LINE: ..." message, an accepted
 * configuration prints (--check, text and JSON) and frees cleanly.
 * Inputs that would make the loader read the host's files are skipped:
 * @include, and any string value that is an absolute path or climbs out
 * with "..", so relative paths stay in the (empty) working directory.
 * libconfig 1.5 leaks a string token on a syntax error at it (`r={""`);
 * what it leaves behind on text it refuses is freed here, or libFuzzer
 * would stop looking for our leaks after its first thousand. */
#include <ctype.h>
#include <libconfig.h>
#include <pthread.h>
#include <sanitizer/allocator_interface.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

static int conf_fd = -1;
static char conf_path[64];
static char tmp_path[64];

static void remove_tmp(void)
{
	unlink(tmp_path);
}

static void open_conf_file(void)
{
	conf_fd = memfd_create("postern.conf", MFD_CLOEXEC);
	if (conf_fd >= 0) {
		snprintf(conf_path, sizeof(conf_path), "/proc/self/fd/%d", conf_fd);
		/* memfds are created 0777, and a world-writable file is refused */
		if (fchmod(conf_fd, 0600) == 0 && access(conf_path, R_OK) == 0)
			return;
		close(conf_fd);
	}
	const char *dir = getenv("TMPDIR");
	snprintf(tmp_path, sizeof(tmp_path), "%s/postern-fuzz-conf.XXXXXX",
		 dir && strlen(dir) < 32 ? dir : "/tmp");
	conf_fd = mkstemp(tmp_path);
	if (conf_fd < 0) {
		perror("fuzz_config: no file to load from");
		abort();
	}
	atexit(remove_tmp);
	snprintf(conf_path, sizeof(conf_path), "%s", tmp_path);
}

/* Blocks this thread allocates from track_begin() to track_end_*(). The
 * hooks run inside malloc and free: a fixed table, no allocation. */
#define TRACK_MAX 4096
static const volatile void *tracked[TRACK_MAX];
static size_t ntracked;
static bool tracking, track_overflow;
static pthread_t fuzz_thread;

static void on_malloc(const volatile void *p, size_t n)
{
	if (!tracking || !pthread_equal(pthread_self(), fuzz_thread))
		return;
	if (ntracked < TRACK_MAX)
		tracked[ntracked++] = p;
	else
		track_overflow = true;
}

static void on_free(const volatile void *p)
{
	if (!tracking || !pthread_equal(pthread_self(), fuzz_thread))
		return;
	for (size_t i = ntracked; i-- > 0;)
		if (tracked[i] == p) {
			tracked[i] = tracked[--ntracked];
			return;
		}
}

static void track_begin(void)
{
	ntracked = 0;
	track_overflow = false;
	tracking = true;
}

/* Ends tracking and frees what is still allocated, when that is at most
 * max blocks (else LeakSanitizer gets to report them); returns how many. */
static size_t track_end_free_leftovers_upto(size_t max)
{
	tracking = false;
	size_t n = ntracked;
	ntracked = 0;
	if (track_overflow || n > max)
		return n;
	for (size_t i = 0; i < n; i++)
		free((void *)tracked[i]);
	return n;
}

/* For spans in which every allocation is libconfig's and nothing is meant
 * to outlive them. */
static size_t track_end_free_leftovers(void)
{
	return track_end_free_leftovers_upto(TRACK_MAX);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	log_set_level(LOG_ERROR); /* config warnings would flood the output */
	open_conf_file();
	fuzz_thread = pthread_self();
	if (!__sanitizer_install_malloc_and_free_hooks(on_malloc, on_free)) {
		fputs("fuzz_config: cannot install malloc hooks\n", stderr);
		abort();
	}
	return 0;
}

static bool has_include(const uint8_t *d, size_t n)
{
	static const char word[] = "@include";
	for (size_t i = 0; i + sizeof(word) - 1 <= n; i++) {
		size_t k = 0;
		while (k < sizeof(word) - 1 && tolower(d[i + k]) == word[k])
			k++;
		if (k == sizeof(word) - 1)
			return true;
	}
	return false;
}

static bool stays_local(const config_setting_t *s)
{
	if (config_setting_type(s) == CONFIG_TYPE_STRING) {
		const char *v = config_setting_get_string(s);
		return v[0] != '/' && !strstr(v, "..");
	}
	if (!config_setting_is_aggregate(s))
		return true;
	for (int i = 0; i < config_setting_length(s); i++)
		if (!stays_local(config_setting_get_elem(s, (unsigned)i)))
			return false;
	return true;
}

enum text { TEXT_REFUSED, TEXT_LOCAL, TEXT_REACHES_OUT };

/* Parses the input as conf_load() will, with libconfig's FILE reader;
 * *leaked is how many blocks libconfig left behind (freed since). */
static enum text classify(const uint8_t *data, size_t size, size_t *leaked)
{
	*leaked = 0;
	if (has_include(data, size))
		return TEXT_REACHES_OUT;
	if (size == 0)
		return TEXT_LOCAL;
	track_begin();
	FILE *f = fmemopen((void *)data, size, "r");
	if (!f)
		abort();
	config_t cf;
	config_init(&cf);
	enum text t = config_read(&cf, f) != CONFIG_TRUE     ? TEXT_REFUSED
		      : stays_local(config_root_setting(&cf)) ? TEXT_LOCAL
							       : TEXT_REACHES_OUT;
	config_destroy(&cf);
	fclose(f);
	*leaked = track_end_free_leftovers();
	return t;
}

/* "FILE:LINE: what", the form every startup error takes. */
static bool file_line_message(const char *err)
{
	for (const char *p = strchr(err, ':'); p; p = strchr(p + 1, ':')) {
		const char *q = p + 1;
		while (isdigit((unsigned char)*q))
			q++;
		if (q > p + 1 && q[0] == ':' && q[1] == ' ' && q[2])
			return p > err;
	}
	return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t leaked;
	enum text t = classify(data, size, &leaked);
	if (t == TEXT_REACHES_OUT)
		return -1;
	if (ftruncate(conf_fd, 0) != 0 || pwrite(conf_fd, data, size, 0) != (ssize_t)size)
		abort();

	char err[1024];
	memset(err, 0, sizeof(err));
	/* On text libconfig refuses, conf_load() stops at the parse: what it
	 * leaves is libconfig's, unless it is more than libconfig alone left. */
	if (t == TEXT_REFUSED)
		track_begin();
	struct conf *c = conf_load(conf_path, err, sizeof(err));
	if (t == TEXT_REFUSED)
		track_end_free_leftovers_upto(leaked);
	if (!c) {
		if (!memchr(err, '\0', sizeof(err)) || !file_line_message(err))
			abort();
		return 0;
	}
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);
	if (!f)
		abort();
	conf_print(c, f);
	conf_print_json(c, f);
	fclose(f);
	free(out);
	conf_free(c);
	return 0;
}
