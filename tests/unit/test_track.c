/* Unit tests for engine/track.c over log files written here: the query
 * words, every outcome a message can have, rotations (read oldest first,
 * skipped by time, compressed ones listed), since= inside a large file,
 * and the bounds (limit, events per message, the time budget). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "check.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "track.h"

#define NOW 1796219659123LL /* 2026-12-02T13:54:19.123Z */
#define T0 "2026-12-02T13:"  /* the minute and second follow */

static char dir[256];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/postern-test-track-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void write_file(const char *name, const char *text, time_t mtime)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	if (mtime) {
		struct timeval tv[2] = {{mtime, 0}, {mtime, 0}};
		utimes(path, tv);
	}
}

static char *run(const char *args, int *ret)
{
	struct track_query q;
	char err[300];
	if (!track_parse(args, NOW, &q, err, sizeof(err)))
		fail_msg("%s: %s", args, err);
	char path[512], *out = NULL;
	size_t len;
	snprintf(path, sizeof(path), "%s/postern.log", dir);
	FILE *f = open_memstream(&out, &len);
	*ret = track_run(path, &q, 2000, f);
	fclose(f);
	return out;
}

static void must_have(const char *name, const char *out, const char *want)
{
	if (!strstr(out, want))
		fail_msg("%s: no %s in\n%s", name, want, out);
}

static void must_not_have(const char *name, const char *out, const char *want)
{
	if (strstr(out, want))
		fail_msg("%s: %s in\n%s", name, want, out);
}

static void test_parse(void **state)
{
	(void)state;
	static const struct {
		const char *args;
		bool ok;
		const char *err;
	} cases[] = {
		{"", true, NULL},
		{" id=ABC sender=<a@b> rcpt=c@d message_id=<m@x> since=1h until=now limit=5 json", true, NULL},
		{"rcpt=@corp.example", true, NULL},
		{"sender=<>", true, NULL},
		{"id=", false, "unknown or empty filter \"id=\""},
		{"color=red", false, "unknown or empty filter \"color=red\""},
		{"alice", false, "\"alice\" is not key=value"},
		{"since=tomorrow", false, "since=tomorrow: not a time"},
		{"until=5x", false, "until=5x: not a time"},
		{"limit=1001", false, "limit=1001: a number from 1 to 1000"},
		{"limit=abc", false, "limit=abc: a number"},
		{"since=now until=1h", false, "since= is later than until="},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		struct track_query q;
		char err[300] = "";
		bool ok = track_parse(cases[i].args, NOW, &q, err, sizeof(err));
		CHECK_INT(cases[i].args, ok, cases[i].ok);
		if (!ok && !strstr(err, cases[i].err))
			fail_msg("%s: %s, want %s", cases[i].args, err, cases[i].err);
	}
	struct track_query q;
	char err[300];
	assert_true(track_parse("sender=<A@B> rcpt=<c@d> message_id=<m@x> since=1h limit=7 json",
				NOW, &q, err, sizeof(err)));
	CHECK_STR("sender", q.sender, "A@B");
	CHECK_STR("rcpt", q.rcpt, "c@d");
	CHECK_STR("message_id", q.message_id, "m@x");
	CHECK_INT("since", q.since_ms, NOW - 3600000);
	CHECK_INT("until", q.until_ms, INT64_MAX);
	CHECK_INT("limit", q.limit, 7);
	CHECK_INT("json", q.json, true);
	assert_true(track_parse("sender=<>", NOW, &q, err, sizeof(err)));
	CHECK_INT("null sender", q.has_sender, true);
	CHECK_STR("null sender", q.sender, "");
}

/* One message per outcome, in one file. */
static const char outcomes[] =
	"ts=" T0 "00:00.000Z level=info event=start version=0.1.0\n"
	"ts=" T0 "00:01.000Z level=info event=receive id=A1 from=<s@corp.example> to=<r@remote.example> nrcpt=1 connector=Relay client=127.0.0.10 size=100 message_id=<a1@x> reply=\"250 2.6.0 <A1> Queued mail for delivery\" worker=0\n"
	"ts=" T0 "00:01.500Z level=info event=connect client=127.0.0.10 connector=Relay range=127.0.0.0/8 worker=0\n"
	"ts=" T0 "00:02.000Z level=info event=deliver id=A1 from=<s@corp.example> to=r@remote.example send_connector=\"Smart\" relay=[127.0.0.1]:25 tls=- status=2.0.0 reply=\"250 ok\" delay=1.0 attempts=1\n"
	"ts=" T0 "00:03.000Z level=info event=receive id=B2 from=<s@corp.example> to=<r@remote.example>,<q@remote.example> nrcpt=2 connector=Relay client=127.0.0.10 size=100 reply=\"250\" worker=1\n"
	"ts=" T0 "00:04.000Z level=info event=bounce id=B2 from=<s@corp.example> to=r@remote.example send_connector=\"Smart\" relay=[127.0.0.1]:25 status=5.1.1 reply=\"550 no\" delay=1.0 attempts=1\n"
	"ts=" T0 "00:04.000Z level=info event=deliver id=B2 from=<s@corp.example> to=q@remote.example send_connector=\"Smart\" relay=[127.0.0.1]:25 status=2.0.0 reply=\"250 ok\" delay=1.0 attempts=1\n"
	"ts=" T0 "00:05.000Z level=info event=dsn kind=bounce id=B2 dsn_id=C3 to=<s@corp.example> recipients=1\n"
	"ts=" T0 "00:06.000Z level=info event=receive id=D4 from=<t@corp.example> to=<r@remote.example> nrcpt=1 connector=Relay client=127.0.0.11 size=50 tls=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256 auth=joe reply=\"250\" worker=0\n"
	"ts=" T0 "00:07.000Z level=info event=defer id=D4 from=<t@corp.example> to=r@remote.example send_connector=\"Smart\" relay=[127.0.0.1]:25 status=4.0.0 reply=\"451 later\" delay=1.0 attempts=1\n"
	"ts=" T0 "00:08.000Z level=info event=receive id=E5 from=<t@corp.example> to=<r@remote.example> nrcpt=1 connector=Relay client=127.0.0.11 size=50 reply=\"250\" worker=0\n"
	"ts=" T0 "00:09.000Z level=info event=admin action=hold id=E5\n"
	"ts=" T0 "00:10.000Z level=info event=receive id=F6 from=<t@corp.example> to=<r@remote.example> nrcpt=1 connector=Relay client=127.0.0.11 size=50 reply=\"250\" worker=0\n"
	"ts=" T0 "00:11.000Z level=info event=admin action=delete id=F6\n"
	"ts=" T0 "00:12.000Z level=info event=receive id=G7 from=<t@corp.example> to=<r@remote.example> nrcpt=1 connector=Relay client=127.0.0.11 size=50 reply=\"250\" worker=0\n"
	"ts=" T0 "00:13.000Z level=info event=expire id=G7 from=<t@corp.example> to=r@remote.example send_connector=\"none\" relay=none status=4.4.7 reply=\"expired\" delay=9.0 attempts=3\n"
	"garbage line that is not logfmt id=X\n"
	"ts=" T0 "00:14.000Z level=info event=receive id=H8 from=<u@corp.example> to=<r@remote.example> nrcpt=1 connector=Relay client=127.0.0.12 size=50 reply=\"250\" worker=0\n";

static void test_outcomes(void **state)
{
	(void)state;
	write_file("postern.log", outcomes, 0);
	static const struct {
		const char *args;
		const char *want;   /* in the answer */
		const char *not;    /* not in it */
	} cases[] = {
		{"id=A1 json", "\"id\":\"A1\",\"status\":\"delivered\"", "\"B2\""},
		{"id=a1 json", "\"id\":\"A1\"", NULL},
		{"message_id=a1@x json", "\"message_id\":\"<a1@x>\"", "\"B2\""},
		{"id=B2 json", "\"status\":\"partially delivered\"", NULL},
		{"id=B2 json", "{\"ts\":\"2026-12-02T13:00:05.000Z\",\"event\":\"dsn\",\"kind\":\"bounce\",\"id\":\"B2\",\"dsn_id\":\"C3\"", NULL},
		{"id=D4 json", "\"status\":\"deferred\"", NULL},
		{"id=D4 json", "\"tls\":\"TLSv1.3\",\"cipher\":\"TLS_AES_128_GCM_SHA256\",\"auth\":\"joe\",\"size\":50,\"attempts\":1", NULL},
		{"id=E5 json", "\"status\":\"held\"", NULL},
		{"id=F6 json", "\"status\":\"deleted\"", NULL},
		{"id=G7 json", "\"status\":\"bounced\"", NULL},
		{"id=H8 json", "\"status\":\"received\",\"received\":\"2026-12-02T13:00:14.000Z\"", NULL},
		{"rcpt=q@remote.example json", "\"count\":1,", "\"A1\""},
		{"sender=t@corp.example json", "\"count\":4,", "\"A1\""},
		{"sender=t@corp.example limit=2 json", "\"count\":2,\"truncated\":\"limit\"", "\"F6\""},
		{"since=2026-12-02T13:00:06Z until=2026-12-02T13:00:09Z json", "\"count\":2,", "\"A1\""},
		{"rcpt=@REMOTE.example json", "\"count\":7,", NULL},
		{"rcpt=@corp.example json", "\"count\":0,", NULL},
		{"id=A1", "message A1 status=delivered message_id=<a1@x> attempts=1\n  2026-12-02T13:00:01.000Z event=receive id=A1 ", NULL},
		{"id=A1", "\n1 message; files: ", "(skipped"},
		{"id=ZZ", "0 messages; files: ", NULL},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		int ret;
		char *out = run(cases[i].args, &ret);
		CHECK_INT(cases[i].args, ret, 0);
		must_have(cases[i].args, out, cases[i].want);
		if (cases[i].not)
			must_not_have(cases[i].args, out, cases[i].not);
		free(out);
	}
}

static void test_rotations(void **state)
{
	(void)state;
	/* .2 is the oldest; its last write long before since=. */
	write_file("postern.log.2",
		   "ts=2026-12-01T10:00:00.000Z level=info event=receive id=OLD from=<a@b> to=<c@d> nrcpt=1 connector=R client=1.2.3.4 size=1 worker=0\n",
		   (time_t)(NOW / 1000 - 86400));
	write_file("postern.log.1",
		   "ts=2026-12-02T13:00:00.000Z level=info event=receive id=MID from=<a@b> to=<c@d> nrcpt=1 connector=R client=1.2.3.4 size=1 worker=0\n"
		   "ts=2026-12-02T13:00:01.000Z level=info event=defer id=MID from=<a@b> to=c@d send_connector=S relay=x status=4.0.0 reply=r delay=1 attempts=1\n",
		   (time_t)(NOW / 1000 - 3000));
	write_file("postern.log",
		   "ts=2026-12-02T13:50:00.000Z level=info event=deliver id=MID from=<a@b> to=c@d send_connector=S relay=x status=2.0.0 reply=ok delay=1 attempts=2\n"
		   "ts=2026-12-02T13:51:00.000Z level=info event=receive id=NEW from=<a@b> to=<c@d> nrcpt=1 connector=R client=1.2.3.4 size=1 worker=0\n",
		   0);
	write_file("postern.log.3.gz", "\x1f\x8b", 0);
	int ret;
	char *out = run("sender=a@b json", &ret);
	CHECK_INT("all", ret, 0);
	const char *o = strstr(out, "\"id\":\"OLD\""), *m = strstr(out, "\"id\":\"MID\""),
		   *n = strstr(out, "\"id\":\"NEW\"");
	if (!o || !m || !n || !(o < m && m < n))
		fail_msg("oldest first across files: %s", out);
	must_have("all", out, "\"id\":\"MID\",\"status\":\"delivered\"");
	must_have("all", out, "postern.log.3.gz\",\"read\":false,\"skipped\":\"compressed");
	free(out);
	out = run("sender=a@b since=2026-12-02T12:00:00Z json", &ret);
	must_have("since", out, "postern.log.2\",\"read\":false,\"skipped\":\"outside the time range\"");
	must_have("since", out, "postern.log.1\",\"read\":true");
	must_not_have("since", out, "\"OLD\"");
	free(out);
	out = run("sender=a@b until=2026-12-02T13:00:30Z json", &ret);
	must_have("until", out, "{\"path\":\"");
	must_have("until", out, "/postern.log\",\"read\":false,\"skipped\":\"outside the time range\"");
	must_have("until", out, "\"id\":\"MID\",\"status\":\"deferred\"");
	free(out);
	char path[512];
	snprintf(path, sizeof(path), "%s/postern.log.3.gz", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/postern.log.2", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/postern.log.1", dir);
	unlink(path);
}

/* A file of 20000 lines: since= near its end finds the lines after it,
 * and reads only a little of the file. */
static void test_since_in_large_file(void **state)
{
	(void)state;
	char path[512];
	snprintf(path, sizeof(path), "%s/postern.log", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	for (int i = 0; i < 20000; i++)
		fprintf(f, "ts=2026-12-02T%02d:%02d:%02d.000Z level=info event=receive id=M%05d from=<a@b> to=<c@d> nrcpt=1 connector=R client=1.2.3.4 size=1 worker=0\n",
			i / 3600 % 24, i / 60 % 60, i % 60, i);
	fclose(f);
	int ret;
	char *out = run("since=2026-12-02T05:30:00Z limit=1000 json", &ret);
	/* 05:30:00 is line 19800: 200 lines from there, and the margin. */
	must_have("since", out, "\"count\":200,");
	must_have("since", out, "\"id\":\"M19800\"");
	must_not_have("since", out, "\"id\":\"M19799\"");
	const char *lr = strstr(out, "\"lines_read\":");
	assert_non_null(lr);
	long read = strtol(lr + 13, NULL, 10);
	if (read > 2000)
		fail_msg("read %ld lines of 20000 for the last 200", read);
	free(out);
	out = run("limit=5 json", &ret);
	must_have("limit", out, "\"count\":5,\"truncated\":\"limit\"");
	free(out);
	/* No time at all: what it found by then, and why it stopped. */
	struct track_query q;
	char err[100];
	assert_true(track_parse("id=NONE json", NOW, &q, err, sizeof(err)));
	size_t len;
	f = open_memstream(&out, &len);
	CHECK_INT("budget", track_run(path, &q, 0, f), 0);
	fclose(f);
	must_have("budget", out, "\"truncated\":\"deadline\"");
	free(out);
}

static void test_events_cap_and_errors(void **state)
{
	(void)state;
	char path[512];
	snprintf(path, sizeof(path), "%s/postern.log", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "ts=2026-12-02T13:00:00.000Z level=info event=receive id=X from=<a@b> to=<c@d> nrcpt=1 connector=R client=1.2.3.4 size=1 worker=0\n");
	for (int i = 0; i < 300; i++)
		fprintf(f, "ts=2026-12-02T13:00:01.000Z level=info event=defer id=X from=<a@b> to=c@d send_connector=S relay=x status=4.0.0 reply=r delay=1 attempts=%d\n", i + 1);
	fclose(f);
	int ret;
	char *out = run("id=X json", &ret);
	must_have("cap", out, "\"attempts\":255,");
	must_have("cap", out, "\"events_not_shown\":45");
	free(out);
	out = run("id=X", &ret);
	must_have("cap", out, "  (45 more events not shown)\n");
	free(out);
	struct track_query q;
	char err[100];
	assert_true(track_parse("", NOW, &q, err, sizeof(err)));
	size_t len;
	f = open_memstream(&out, &len);
	CHECK_INT("stderr", track_run(NULL, &q, 1000, f), -1);
	fclose(f);
	must_have("stderr", out, "error: track reads the message log from server.log_file, and none is set");
	free(out);
	unlink(path);
	out = run("", &ret);
	CHECK_INT("missing", ret, 0);
	must_have("missing", out, "0 messages; files: ");
	must_have("missing", out, "(skipped: missing)");
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_outcomes),
		cmocka_unit_test(test_rotations),
		cmocka_unit_test(test_since_in_large_file),
		cmocka_unit_test(test_events_cap_and_errors),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
