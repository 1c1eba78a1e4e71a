/* Unit tests for the spool's record format and recovery scan: complete
 * messages are found with their bytes in order; partial messages, torn
 * tails, bad checksums and inconsistent commits are not. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>

#include "check.h"
#include "io.h"
#include "spool.h"

struct seg_builder {
	uint8_t buf[1 << 16];
	size_t len;
};

static void put(struct seg_builder *b, uint8_t type, uint64_t msg, const void *p, size_t n)
{
	struct spool_rec_hdr h = {.magic = SPOOL_MAGIC, .type = type, .len = (uint32_t)n,
				  .msg = msg};
	h.crc = spool_rec_crc(&h, p, n);
	memcpy(b->buf + b->len, &h, sizeof(h));
	memcpy(b->buf + b->len + sizeof(h), p, n);
	b->len += sizeof(h) + n;
}

static void chunk(struct seg_builder *b, uint64_t msg, const char *s)
{
	put(b, SPOOL_REC_CHUNK, msg, s, strlen(s));
}

static void commit(struct seg_builder *b, uint64_t msg, uint64_t bytes, uint32_t chunks,
		   const char *env)
{
	uint8_t tmp[512];
	struct spool_commit_hdr ch = {.bytes = bytes, .chunks = chunks,
				      .envlen = (uint32_t)strlen(env)};
	memcpy(tmp, &ch, sizeof(ch));
	memcpy(tmp + sizeof(ch), env, strlen(env));
	put(b, SPOOL_REC_COMMIT, msg, tmp, sizeof(ch) + strlen(env));
}

static char dir[64];
static int dirfd_;

static void write_seg(uint64_t seq, const struct seg_builder *b, size_t pad_zeros)
{
	char name[128];
	snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, (unsigned long long)seq);
	FILE *f = fopen(name, "w");
	assert_non_null(f);
	fwrite(b->buf, 1, b->len, f);
	for (size_t i = 0; i < pad_zeros; i++)
		fputc(0, f);
	fclose(f);
}

struct found {
	int n;
	uint64_t id[16];
	char bytes[16][256];
	char env[16][128];
};

static void collect(void *arg, const struct spool_found *m)
{
	struct found *f = arg;
	size_t off = 0;
	for (uint32_t i = 0; i < m->chunks; i++) {
		memcpy(f->bytes[f->n] + off, m->chunk[i].iov_base, m->chunk[i].iov_len);
		off += m->chunk[i].iov_len;
	}
	f->bytes[f->n][off] = '\0';
	memcpy(f->env[f->n], m->env, m->envlen);
	f->env[f->n][m->envlen] = '\0';
	f->id[f->n++] = m->id;
}

static int setup(void **state)
{
	snprintf(dir, sizeof(dir), "/tmp/postern-spool-test-XXXXXX");
	assert_non_null(mkdtemp(dir));
	dirfd_ = open(dir, O_RDONLY | O_DIRECTORY);
	return dirfd_ < 0;
}

static int teardown(void **state)
{
	char cmd[128];
	close(dirfd_);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) != 0;
}

static void test_interleaved_messages_and_partials(void **state)
{
	static struct seg_builder b;
	b.len = 0;
	chunk(&b, 1, "Received: x\r\n");
	chunk(&b, 2, "Received: y\r\n");      /* message 2 never commits */
	chunk(&b, 1, "Subject: one\r\n\r\nbody\r\n");
	chunk(&b, 3, "three\r\n");
	commit(&b, 1, 13 + 22, 2, "POSTERN/1\r\nid: 1\r\nrcpt: <a@b.example>\r\n\r\n");
	commit(&b, 3, 7, 1, "POSTERN/1\r\nid: 3\r\nrcpt: <a@b.example>\r\n\r\n");
	write_seg(1, &b, 4096);               /* preallocated zeros after */
	struct found f = {0};
	struct spool_scan_stats st;
	assert_int_equal(spool_scan(dirfd_, collect, &f, &st), 0);
	assert_int_equal(f.n, 2);
	assert_true(f.id[0] == 1 && f.id[1] == 3);
	assert_string_equal(f.bytes[0], "Received: x\r\nSubject: one\r\n\r\nbody\r\n");
	assert_string_equal(f.bytes[1], "three\r\n");
	assert_string_equal(f.env[0], "POSTERN/1\r\nid: 1\r\nrcpt: <a@b.example>\r\n\r\n");
	CHECK_INT("stats", st.messages, 2);
	CHECK_INT("stats", st.orphans, 1);
	CHECK_INT("stats", st.torn, 0);
	CHECK_INT("stats", st.segments, 1);
}

/* A crash leaves a record half written: the scan stops there, keeps what
 * came before, and a message whose commit is cut off is not a message. */
static void test_torn_tails(void **state)
{
	static const struct {
		const char *name;
		size_t cut;        /* bytes removed from the end */
		int corrupt;       /* offset from the end to flip, or 0 */
		int want;          /* messages found */
		int torn;
	} cases[] = {
		{"intact", 0, 0, 2, 0},
		{"commit cut in its payload", 5, 0, 1, 1},
		{"commit cut in its header", 0 + 38, 0, 1, 1},
		{"bad checksum in last commit", 0, 3, 1, 1},
	};
	for (size_t i = 0; i < N_ELEMS(cases); i++) {
		static struct seg_builder b;
		b.len = 0;
		chunk(&b, 10, "a\r\n");
		commit(&b, 10, 3, 1, "E\r\nrcpt: <a@b>\r\n\r\n");
		chunk(&b, 11, "bb\r\n");
		size_t before_commit = b.len;
		commit(&b, 11, 4, 1, "F\r\nrcpt: <a@b>\r\n\r\n");
		(void)before_commit;
		b.len -= cases[i].cut;
		if (cases[i].corrupt)
			b.buf[b.len - (size_t)cases[i].corrupt] ^= 0x40;
		char name[128];
		snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, 5ULL);
		unlink(name);
		write_seg(5, &b, cases[i].cut ? 0 : 100);
		struct found f = {0};
		struct spool_scan_stats st;
		spool_scan(dirfd_, collect, &f, &st);
		CHECK_INT(cases[i].name, f.n, cases[i].want);
		CHECK_INT(cases[i].name, st.torn, cases[i].torn);
		assert_true(f.id[0] == 10);
		unlink(name);
	}
}

static void test_inconsistent_commit_is_ignored(void **state)
{
	static struct seg_builder b;
	b.len = 0;
	chunk(&b, 7, "x\r\n");
	commit(&b, 7, 3, 2, "E\r\nrcpt: <a@b>\r\n\r\n"); /* claims two chunks */
	chunk(&b, 8, "y\r\n");
	commit(&b, 8, 99, 1, "E\r\nrcpt: <a@b>\r\n\r\n");    /* claims 99 bytes */
	chunk(&b, 9, "z\r\n");
	commit(&b, 9, 3, 1, "E\r\nrcpt: <a@b>\r\n\r\n");
	write_seg(9, &b, 0);
	struct found f = {0};
	struct spool_scan_stats st;
	spool_scan(dirfd_, collect, &f, &st);
	assert_int_equal(f.n, 1);
	assert_true(f.id[0] == 9);
	char name[128];
	snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, 9ULL);
	unlink(name);
}

static void state(struct seg_builder *b, uint64_t msg, uint32_t rcpt, uint8_t kind,
		  uint32_t attempts, int64_t next_ms, const char *text)
{
	uint8_t tmp[512];
	struct spool_state_rec r = {.rcpt = rcpt, .kind = kind, .attempts = attempts,
				    .time_ms = 1000, .next_ms = next_ms,
				    .textlen = (uint16_t)strlen(text)};
	memcpy(tmp, &r, sizeof(r));
	memcpy(tmp + sizeof(r), text, strlen(text));
	put(b, SPOOL_REC_STATE, msg, tmp, sizeof(r) + strlen(text));
}

struct state_found {
	int n;
	uint64_t id[8];
	unsigned pending[8];
	uint32_t attempts[8];
	int64_t next_ms[8];
	char error[8][64];
	uint8_t rcpt[8][4];
	uint64_t off0[8];
	bool delay[8];
	int8_t hold[8];
	char held[8][64];
};

static void collect_state(void *arg, const struct spool_found *m)
{
	struct state_found *f = arg;
	int i = f->n++;
	f->id[i] = m->id;
	f->pending[i] = m->state->pending;
	f->attempts[i] = m->state->attempts;
	f->next_ms[i] = m->state->next_ms;
	f->delay[i] = m->state->delay_notified;
	f->hold[i] = m->state->hold;
	snprintf(f->held[i], sizeof(f->held[i]), "%.60s", m->state->last_held);
	snprintf(f->error[i], sizeof(f->error[i]), "%.60s", m->state->last_error);
	for (unsigned k = 0; k < m->state->nrcpt && k < 4; k++)
		f->rcpt[i][k] = m->state->rcpt[k];
	f->off0[i] = m->chunk_off[0];
}

static void collect_big(void *arg, const struct spool_found *m)
{
	struct {
		int n;
		uint32_t chunks;
		uint64_t bytes;
		uint32_t crc;
	} *f = arg;
	f->n++;
	f->chunks = m->chunks;
	for (uint32_t i = 0; i < m->chunks; i++) {
		f->crc = spool_crc32c(f->crc, m->chunk[i].iov_base, m->chunk[i].iov_len);
		f->bytes += m->chunk[i].iov_len;
	}
}

/* Delivery states follow their message in its segment: finished messages
 * drop out of the queue, partly delivered ones keep only what is left, a
 * deferral carries its attempts and error, and states behind a torn record
 * never count. */
static void test_state_records(void **state_)
{
	static struct seg_builder b;
	b.len = 0;
	chunk(&b, 1, "one\r\n");
	size_t off_msg1 = sizeof(struct spool_rec_hdr);
	commit(&b, 1, 5, 1, "POSTERN/1\r\nrcpt: <a@x>\r\nrcpt: <b@x>\r\nrcpt: <c@x>\r\n\r\n");
	chunk(&b, 2, "two\r\n");
	commit(&b, 2, 5, 1, "POSTERN/1\r\nrcpt: <a@x>\r\n\r\n");
	state(&b, 1, 0, SPOOL_ST_DELIVERED, 0, 0, "250 ok");
	state(&b, 2, 0, SPOOL_ST_FAILED, 0, 0, "550 no");     /* 2 is finished */
	state(&b, 1, 2, SPOOL_ST_FAILED, 0, 0, "550 no");
	state(&b, 1, 2, SPOOL_ST_DELIVERED, 0, 0, "250 late"); /* a final state stays */
	state(&b, 1, SPOOL_STATE_MSG, SPOOL_ST_DEFERRED, 3, 123456, "451 4.4.1 refused");
	state(&b, 1, SPOOL_STATE_MSG, SPOOL_ST_DELAY_NOTIFIED, 3, 0, "");
	state(&b, 99, 0, SPOOL_ST_DELIVERED, 0, 0, "");      /* unknown message: ignored */
	chunk(&b, 3, "three\r\n");
	commit(&b, 3, 7, 1, "POSTERN/1\r\nrcpt: <a@x>\r\n\r\n");
	size_t good = b.len;
	state(&b, 3, 0, SPOOL_ST_DELIVERED, 0, 0, "250 ok");
	b.buf[b.len - 2] ^= 1;                                /* torn */
	state(&b, 3, 0, SPOOL_ST_DELIVERED, 0, 0, "250 ok");  /* behind the tear */
	write_seg(4, &b, 64);

	struct state_found f = {0};
	struct spool_scan_stats st;
	assert_int_equal(spool_scan(dirfd_, collect_state, &f, &st), 0);
	CHECK_INT("live", f.n, 2);
	CHECK_INT("finished", st.finished, 1);
	CHECK_INT("torn", st.torn, 1);
	assert_true(f.id[0] == 1 && f.id[1] == 3);
	CHECK_INT("pending 1", f.pending[0], 1);
	CHECK_INT("rcpt 0", f.rcpt[0][0], SPOOL_RCPT_DELIVERED);
	CHECK_INT("rcpt 1", f.rcpt[0][1], SPOOL_RCPT_PENDING);
	CHECK_INT("rcpt 2", f.rcpt[0][2], SPOOL_RCPT_FAILED);
	CHECK_INT("attempts", f.attempts[0], 3);
	CHECK_INT("next", f.next_ms[0], 123456);
	CHECK_STR("error", f.error[0], "451 4.4.1 refused");
	assert_true(f.delay[0]);
	CHECK_INT("chunk offset", f.off0[0], off_msg1);
	CHECK_INT("pending 3", f.pending[1], 1);

	struct state_found all = {0};
	assert_int_equal(spool_scan_all(dirfd_, collect_state, &all, &st, true), 0);
	CHECK_INT("all", all.n, 3);
	uint64_t tail;
	assert_int_equal(spool_scan_segment(dirfd_, 4, NULL, NULL, &st, false, &tail), 0);
	CHECK_INT("tail", tail, good);
	char name[128];
	snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, 4ULL);
	unlink(name);
}

/* An operator's records (B.11): HELD and RELEASED, the last one wins and
 * RELEASED carries when it is due; REMOVED finishes the message. */
static void test_operator_records(void **state_)
{
	(void)state_;
	static struct seg_builder b;
	b.len = 0;
	static const char env[] = "POSTERN/1\r\nrcpt: <a@x>\r\n\r\n";
	for (uint64_t id = 1; id <= 4; id++) {
		chunk(&b, id, "msg\r\n");
		commit(&b, id, 5, 1, env);
	}
	state(&b, 1, SPOOL_STATE_MSG, SPOOL_ST_HELD, 0, 0, "operator");
	state(&b, 2, SPOOL_STATE_MSG, SPOOL_ST_HELD, 0, 0, "operator");
	state(&b, 2, SPOOL_STATE_MSG, SPOOL_ST_RELEASED, 0, 777, "");
	state(&b, 3, SPOOL_STATE_MSG, SPOOL_ST_REMOVED, 0, 0, "deleted by an operator");
	state(&b, 4, SPOOL_STATE_MSG, SPOOL_ST_RELEASED, 0, 555, "");
	state(&b, 4, SPOOL_STATE_MSG, SPOOL_ST_HELD, 0, 0, "again");
	write_seg(5, &b, 64);
	struct state_found f = {0};
	struct spool_scan_stats st;
	assert_int_equal(spool_scan(dirfd_, collect_state, &f, &st), 0);
	CHECK_INT("live", f.n, 3);
	CHECK_INT("removed is finished", st.finished, 1);
	assert_true(f.id[0] == 1 && f.id[1] == 2 && f.id[2] == 4);
	CHECK_INT("1 held", f.hold[0], 1);
	CHECK_STR("1 why", f.held[0], "operator");
	CHECK_INT("2 released", f.hold[1], -1);
	CHECK_INT("2 due", f.next_ms[1], 777);
	CHECK_INT("4 held again", f.hold[2], 1);
	CHECK_STR("4 why", f.held[2], "again");
	char name[128];
	snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, 5ULL);
	unlink(name);
}

/* Compaction copies a message into a later segment; until the old segment
 * goes, both copies exist and only the newer one counts. */
static void test_moved_copy_wins(void **state_)
{
	static struct seg_builder old, newer;
	old.len = newer.len = 0;
	chunk(&old, 5, "five\r\n");
	commit(&old, 5, 6, 1, "POSTERN/1\r\nrcpt: <a@x>\r\nrcpt: <b@x>\r\n\r\n");
	chunk(&old, 6, "six\r\n");
	commit(&old, 6, 5, 1, "POSTERN/1\r\nrcpt: <a@x>\r\n\r\n");
	chunk(&newer, 5, "five\r\n");
	commit(&newer, 5, 6, 1, "POSTERN/1\r\nrcpt: <a@x>\r\nrcpt: <b@x>\r\n\r\n");
	state(&newer, 5, 0, SPOOL_ST_DELIVERED, 0, 0, "250 ok");
	write_seg(20, &old, 0);
	write_seg(21, &newer, 0);
	struct state_found f = {0};
	struct spool_scan_stats st;
	assert_int_equal(spool_scan(dirfd_, collect_state, &f, &st), 0);
	CHECK_INT("messages", f.n, 2);
	assert_true(f.id[0] == 6 && f.id[1] == 5);
	CHECK_INT("newer copy's state", f.pending[1], 1);
	CHECK_INT("newer copy's state", f.rcpt[1][0], SPOOL_RCPT_DELIVERED);
	char name[128];
	snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, 20ULL);
	unlink(name);
	snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, 21ULL);
	unlink(name);
}

/* The duplicate after compaction: the moved copy was delivered (its state
 * is in the newer segment), the old segment still holds the original with
 * nothing delivered. The finished copy must win, for the scan (show queue,
 * the spool tool) and for recovery's owner table. */
static void test_finished_moved_copy_wins(void **state_)
{
	static struct seg_builder old, newer;
	old.len = newer.len = 0;
	chunk(&old, 7, "seven\r\n");
	commit(&old, 7, 7, 1, "POSTERN/1\r\nrcpt: <a@x>\r\n\r\n");
	chunk(&newer, 7, "seven\r\n");
	commit(&newer, 7, 7, 1, "POSTERN/1\r\nrcpt: <a@x>\r\n\r\n");
	state(&newer, 7, 0, SPOOL_ST_DELIVERED, 0, 0, "250 ok");
	write_seg(30, &old, 0);
	write_seg(31, &newer, 0);
	struct state_found f = {0};
	struct spool_scan_stats st;
	assert_int_equal(spool_scan(dirfd_, collect_state, &f, &st), 0);
	CHECK_INT("nothing to deliver", f.n, 0);
	close(dirfd_);
	struct spool sp;
	char err[256];
	assert_int_equal(spool_open(&sp, dir, 1 << 20, err, sizeof(err)), 0);
	CHECK_INT("owner: the newer copy", spool_owner_seq(&sp, 7), 31);
	spool_close(&sp);
	dirfd_ = open(dir, O_RDONLY | O_DIRECTORY);
	char name[128];
	snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, 30ULL);
	unlink(name);
	snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, 31ULL);
	unlink(name);
	unlink(strcat(strcpy(name, dir), "/postern.lock"));
}

/* A copy's state is written before its COMMIT: the COMMIT applies it, and
 * a copy whose state (or COMMIT) was torn off is no copy at all, so the
 * original, with its own state, is what recovery takes. */
static void test_copy_state_precedes_commit(void **state_)
{
	static struct seg_builder old, newer;
	old.len = newer.len = 0;
	chunk(&old, 8, "eight\r\n");
	commit(&old, 8, 7, 1, "POSTERN/1\r\nrcpt: <a@x>\r\nrcpt: <b@x>\r\n\r\n");
	state(&old, 8, 0, SPOOL_ST_DELIVERED, 0, 0, "250 ok");
	chunk(&newer, 8, "eight\r\n");
	state(&newer, 8, 0, SPOOL_ST_DELIVERED, 0, 0, "250 ok");
	state(&newer, 8, SPOOL_STATE_MSG, SPOOL_ST_DEFERRED, 2, 777, "451 later");
	size_t before_commit = newer.len;
	commit(&newer, 8, 7, 1, "POSTERN/1\r\nrcpt: <a@x>\r\nrcpt: <b@x>\r\n\r\n");
	write_seg(40, &old, 0);
	write_seg(41, &newer, 0);
	struct state_found f = {0};
	struct spool_scan_stats st;
	assert_int_equal(spool_scan(dirfd_, collect_state, &f, &st), 0);
	CHECK_INT("one copy", f.n, 1);
	CHECK_INT("the copy's state", f.rcpt[0][0], SPOOL_RCPT_DELIVERED);
	CHECK_INT("pending", f.pending[0], 1);
	CHECK_INT("attempts", f.attempts[0], 2);
	CHECK_STR("error", f.error[0], "451 later");
	/* The tear falls on the copy's COMMIT: the original wins. */
	newer.buf[newer.len - 3] ^= 1;
	write_seg(41, &newer, 0);
	memset(&f, 0, sizeof(f));
	assert_int_equal(spool_scan(dirfd_, collect_state, &f, &st), 0);
	CHECK_INT("the original", f.n, 1);
	CHECK_INT("its own state", f.rcpt[0][0], SPOOL_RCPT_DELIVERED);
	CHECK_INT("no attempts of the copy's", f.attempts[0], 0);
	/* And on the copy's state: the same. */
	newer.len = before_commit;
	newer.buf[newer.len - 3] ^= 1;
	commit(&newer, 8, 7, 1, "POSTERN/1\r\nrcpt: <a@x>\r\nrcpt: <b@x>\r\n\r\n");
	write_seg(41, &newer, 0);
	memset(&f, 0, sizeof(f));
	assert_int_equal(spool_scan(dirfd_, collect_state, &f, &st), 0);
	CHECK_INT("the original again", f.n, 1);
	CHECK_INT("attempts", f.attempts[0], 0);
	char name[128];
	snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, 40ULL);
	unlink(name);
	snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, 41ULL);
	unlink(name);
}

/* The original of a moved message is marked once the copy is durable: with
 * the copy's segment deleted (everything in it delivered), the original
 * stays finished instead of coming back at the next start. */
static void test_marked_original_stays_finished(void **state_)
{
	static struct seg_builder old;
	old.len = 0;
	chunk(&old, 11, "eleven\r\n");
	commit(&old, 11, 8, 1, "POSTERN/1\r\nrcpt: <a@x>\r\nrcpt: <b@x>\r\n\r\n");
	chunk(&old, 12, "twelve\r\n");
	commit(&old, 12, 8, 1, "POSTERN/1\r\nrcpt: <a@x>\r\n\r\n");
	state(&old, 11, SPOOL_STATE_MSG, SPOOL_ST_MOVED, 0, 0, "");
	state(&old, 11, 0, SPOOL_ST_DELIVERED, 0, 0, "250 late"); /* never below zero */
	write_seg(60, &old, 0);
	struct state_found f = {0};
	struct spool_scan_stats st;
	assert_int_equal(spool_scan(dirfd_, collect_state, &f, &st), 0);
	CHECK_INT("only the unmoved one", f.n, 1);
	assert_true(f.id[0] == 12);
	CHECK_INT("finished", st.finished, 1);
	char name[128];
	snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, 60ULL);
	unlink(name);
}

/* A valid record bigger than any the writers make (65 MiB) is data, not a
 * torn tail: it and the message after it are found. */
static void test_huge_valid_record_is_data(void **state_)
{
	size_t big = (65u << 20);
	uint8_t *payload = malloc(big);
	assert_non_null(payload);
	for (size_t i = 0; i < big; i++)
		payload[i] = (uint8_t)('a' + i % 26);
	char name[128];
	snprintf(name, sizeof(name), "%s/seg-%016llx.log", dir, 50ULL);
	FILE *f = fopen(name, "w");
	assert_non_null(f);
	struct spool_rec_hdr h = {.magic = SPOOL_MAGIC, .type = SPOOL_REC_CHUNK,
				  .len = (uint32_t)big, .msg = 9};
	h.crc = spool_rec_crc(&h, payload, big);
	fwrite(&h, sizeof(h), 1, f);
	fwrite(payload, 1, big, f);
	static struct seg_builder b;
	b.len = 0;
	commit(&b, 9, big, 1, "POSTERN/1\r\nrcpt: <a@x>\r\n\r\n");
	chunk(&b, 10, "ten\r\n");
	commit(&b, 10, 5, 1, "POSTERN/1\r\nrcpt: <a@x>\r\n\r\n");
	fwrite(b.buf, 1, b.len, f);
	fclose(f);
	free(payload);
	struct state_found sf = {0};
	struct spool_scan_stats st;
	assert_int_equal(spool_scan(dirfd_, collect_state, &sf, &st), 0);
	CHECK_INT("both", sf.n, 2);
	CHECK_INT("torn", st.torn, 0);
	assert_true(sf.id[0] == 9 && sf.id[1] == 10);
	CHECK_INT("bytes", st.bytes, big + 5);
	unlink(name);
}

static void test_crc32c_known_values(void **state)
{
	/* RFC 3720 B.4 check value and an empty input. */
	assert_int_equal(spool_crc32c(0, "123456789", 9), 0xE3069283u);
	assert_int_equal(spool_crc32c(0, "", 0), 0);
	uint8_t zeros[32] = {0};
	assert_int_equal(spool_crc32c(0, zeros, 32), 0x8A9136AAu);
	assert_int_equal(spool_crc32c_sw(0, "123456789", 9), 0xE3069283u);
	assert_int_equal(spool_crc32c_sw(0, zeros, 32), 0x8A9136AAu);
	/* The instruction and the tables agree at every length and alignment,
	 * and in pieces (a running crc) as in one go. */
	static uint8_t buf[4096 + 16];
	uint32_t x = 12345;
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)((x = x * 1103515245u + 12345u) >> 16);
	for (size_t off = 0; off < 16; off++)
		for (size_t n = 0; n < 300; n++)
			assert_int_equal(spool_crc32c(0, buf + off, n), spool_crc32c_sw(0, buf + off, n));
	uint32_t whole = spool_crc32c(0, buf, 4096);
	uint32_t parts = spool_crc32c(spool_crc32c(spool_crc32c(0, buf, 13), buf + 13, 1000),
				      buf + 1013, 4096 - 1013);
	assert_int_equal(whole, parts);
	assert_int_equal(whole, spool_crc32c_sw(0, buf, 4096));
}

/* The ring-backed tests run once per backend the machine has. */
static enum io_backend backend_now = IO_BACKEND_URING;

static enum io_backend io_backend_under_test(void)
{
	return backend_now;
}

/* A ring, a spool in the test directory and a worker's view of it. */
struct rig {
	struct io *r;
	struct spool sp;
	struct spool_worker sw;
};

static bool rig_open_sized(struct rig *g, uint64_t segment_bytes)
{
	char err[256];
	struct io_params p = {.entries = 64, .nbufs = 4, .bufsz = 4096};
	g->r = io_open(io_backend_under_test(), &p, err, sizeof(err));
	if (!g->r)
		return false;
	assert_int_equal(spool_open(&g->sp, dir, segment_bytes, err, sizeof(err)), 0);
	spool_worker_init(&g->sw, &g->sp, g->r, NULL, NULL);
	return true;
}

static bool rig_open(struct rig *g)
{
	return rig_open_sized(g, 1 << 20);
}

static void rig_close(struct rig *g)
{
	spool_worker_free(&g->sw);
	io_close(g->r);
	spool_close(&g->sp);
}

/* Completions of the writes in flight, in the order the ring gives them. */
static void reap(struct io *r, struct spool_write **done, int *res, unsigned want)
{
	unsigned seen = 0;
	while (seen < want) {
		struct io_cqe cqe[16];
		int n = io_wait(r, cqe, want - seen < 16 ? want - seen : 16);
		assert_true(n > 0);
		for (int i = 0; i < n; i++) {
			/* An fsync (IO_OP_SPOOL_SYNC) carries no write. */
			done[seen] = cqe[i].op == IO_OP_SPOOL_WRITE ? io_cqe_ptr(&cqe[i]) : NULL;
			res[seen++] = cqe[i].res;
		}
	}
}

static void commit_env(struct spool_worker *sw, struct spool_msg *m)
{
	static const char env[] = "POSTERN/1\r\nrcpt: <x@y>\r\n\r\n";
	char *rec = malloc(sizeof(struct spool_commit_hdr) + sizeof(env) - 1);
	memcpy(rec + sizeof(struct spool_commit_hdr), env, sizeof(env) - 1);
	spool_msg_commit(sw, m, rec, sizeof(struct spool_commit_hdr) + sizeof(env) - 1);
}

static struct spool_msg *stored(struct spool_worker *sw, uint64_t id, const char *body)
{
	int e = 0;
	struct spool_msg *m = spool_msg_begin(sw, id, &e);
	assert_non_null(m);
	assert_true(spool_msg_append(sw, m, body, strlen(body), -1));
	commit_env(sw, m);
	return m;
}

/* Writes through a real ring: a message is flushable only when every
 * write before it in its segment is done, however the kernel orders the
 * completions; and the records written are what the scan finds. */
static void test_flushable_waits_for_earlier_writes(void **state_)
{
	struct rig g;
	if (!rig_open(&g))
		skip();
	struct spool_worker *sw = &g.sw;
	int e = 0;
	struct spool_msg *a = spool_msg_begin(sw, 0xA, &e);
	struct spool_msg *b = spool_msg_begin(sw, 0xB, &e);
	assert_non_null(a);
	assert_non_null(b);
	assert_ptr_equal(a->seg, b->seg);
	assert_true(spool_msg_append(sw, a, "aaaa\r\n", 6, -1));
	assert_true(spool_msg_append(sw, b, "bbbb\r\n", 6, -1));
	commit_env(sw, b);
	/* Nothing completed yet: b's own writes are pending, and a's too. */
	assert_false(spool_msg_flushable(b));
	CHECK_INT("prefix", spool_seg_written_prefix(b->seg), 0);
	/* Collect the three completions, then hand them over with a's last:
	 * the order a slow earlier write would give. */
	struct spool_write *done[3];
	int res[3];
	reap(g.r, done, res, 3);
	for (int pass = 0; pass < 2; pass++)
		for (unsigned i = 0; i < 3; i++) {
			bool is_a = done[i]->msg == a;
			if (is_a != (pass == 1))
				continue;
			int bid;
			spool_write_done(sw, done[i], res[i], &bid);
			if (pass == 0) /* b's writes done, a's not: not yet */
				assert_false(spool_msg_flushable(b));
		}
	assert_true(spool_msg_written(b));
	assert_true(spool_msg_flushable(b));
	CHECK_INT("prefix at the tail", spool_seg_written_prefix(b->seg), b->end);
	spool_msg_release(sw, a);
	spool_msg_release(sw, b);
	rig_close(&g);
	struct state_found f = {0};
	struct spool_scan_stats st;
	assert_int_equal(spool_scan(dirfd_, collect_state, &f, &st), 0);
	CHECK_INT("found", f.n, 1);
	assert_true(f.id[0] == 0xB);
	CHECK_INT("a is partial", st.orphans, 1);
}

/* Recovery stops at the first record that is not on disk, so a failed
 * write (or a failed fdatasync) loses everything after it in the segment:
 * a message there must not be acknowledged, however well its own writes
 * went, and new messages go to a new segment. */
/* A buffer handed over whole (a compaction copy, a bounce) bigger than
 * SPOOL_CHUNK_MAX goes out as several chunk records, in order, and comes
 * back byte for byte; the one allocation is freed once (ASan says). */
static void test_large_owned_buffer_is_chunked(void **state_)
{
	struct rig g;
	if (!rig_open(&g))
		skip();
	struct spool_worker *sw = &g.sw;
	size_t n = 3 * SPOOL_CHUNK_MAX + 12345;
	char *buf = malloc(n);
	assert_non_null(buf);
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)('A' + (i * 7) % 26);
	uint32_t sum = spool_crc32c(0, buf, n);
	int e = 0;
	struct spool_msg *m = spool_msg_begin(sw, 0x77, &e);
	assert_non_null(m);
	assert_true(spool_msg_append_owned(sw, m, buf, n));
	CHECK_INT("chunks", m->chunks, 4);
	CHECK_INT("bytes", m->bytes, n);
	for (uint32_t i = 0; i < 3; i++)
		CHECK_INT("chunk size", m->len[i], SPOOL_CHUNK_MAX);
	commit_env(sw, m);
	struct spool_write *done[5];
	int res[5], bid;
	reap(g.r, done, res, 5);
	for (unsigned i = 0; i < 5; i++)
		spool_write_done(sw, done[i], res[i], &bid);
	CHECK_INT("written", spool_msg_error(m), 0);
	spool_msg_release(sw, m);
	rig_close(&g);
	struct big_found {
		int n;
		uint32_t chunks;
		uint64_t bytes;
		uint32_t crc;
	} bf = {0};
	struct spool_scan_stats st;
	assert_int_equal(spool_scan(dirfd_, collect_big, &bf, &st), 0);
	CHECK_INT("found", bf.n, 1);
	CHECK_INT("chunks found", bf.chunks, 4);
	CHECK_INT("bytes found", bf.bytes, n);
	CHECK_INT("same bytes", bf.crc, sum);
}

static void test_failed_write_fails_what_follows(void **state_)
{
	struct rig g;
	if (!rig_open(&g))
		skip();
	struct spool_worker *sw = &g.sw;
	struct spool_msg *a = stored(sw, 0xA, "aaaa\r\n");
	struct spool_msg *b = stored(sw, 0xB, "bbbb\r\n");
	assert_ptr_equal(a->seg, b->seg);
	struct spool_write *done[4];
	int res[4], bid;
	reap(g.r, done, res, 4);
	for (unsigned i = 0; i < 4; i++) /* the disk refuses a's first record */
		spool_write_done(sw, done[i],
				 done[i]->msg == a && done[i]->off == 0 ? -EIO : res[i], &bid);
	CHECK_INT("a failed", spool_msg_error(a), EIO);
	assert_true(spool_msg_flushable(b));
	CHECK_INT("b lies after the hole", spool_msg_error(b), EIO);

	struct spool_msg *c = stored(sw, 0xC, "cccc\r\n");
	assert_ptr_not_equal(c->seg, a->seg);
	reap(g.r, done, res, 2);
	for (unsigned i = 0; i < 2; i++)
		spool_write_done(sw, done[i], res[i], &bid);
	CHECK_INT("c is fine", spool_msg_error(c), 0);

	/* An fdatasync fails: what it covered may be gone. */
	unsigned n = spool_sync_start(sw, 0);
	assert_true(n > 0);
	bool ok = true;
	for (unsigned i = 0; i < n; i++)
		spool_sync_done(sw, i == 0 ? -EIO : 0, false, &ok);
	assert_false(ok);
	CHECK_INT("c after a failed sync", spool_msg_error(c), EIO);
	struct spool_msg *d = stored(sw, 0xD, "dddd\r\n");
	assert_ptr_not_equal(d->seg, c->seg);
	struct spool_write *rest[8];
	int rres[8];
	reap(g.r, rest, rres, 2 + n); /* the fsyncs (tag 0) and d's writes */
	for (unsigned i = 0; i < 2 + n; i++)
		if (rest[i])
			spool_write_done(sw, rest[i], rres[i], &bid);
	CHECK_INT("d in its new segment", spool_msg_error(d), 0);
	spool_msg_release(sw, a);
	spool_msg_release(sw, b);
	spool_msg_release(sw, c);
	spool_msg_release(sw, d);
	rig_close(&g);
}

/* A new segment's directory entry is made durable by an fsync of the
 * directory; when that fails, the next flush must sync the directory
 * again, not forget it. */
static void test_failed_dirsync_is_retried(void **state_)
{
	struct rig g;
	if (!rig_open(&g))
		skip();
	struct spool_worker *sw = &g.sw;
	struct spool_msg *a = stored(sw, 0xA1, "aaaa\r\n");
	struct spool_write *done[2];
	int res[2], bid;
	reap(g.r, done, res, 2);
	for (unsigned i = 0; i < 2; i++)
		spool_write_done(sw, done[i], res[i], &bid);
	assert_true(sw->dir_dirty);
	unsigned n = spool_sync_start(sw, io_tag(IO_OP_SPOOL_SYNC, 0, 0));
	CHECK_INT("segment and directory", n, 2);
	assert_false(sw->dir_dirty);
	bool ok = true;
	assert_false(spool_sync_done(sw, 0, false, &ok));
	assert_true(spool_sync_done(sw, -EIO, true, &ok));
	assert_false(ok);
	assert_true(sw->dir_dirty);
	/* The next flush has the directory again, even with nothing new. */
	n = spool_sync_start(sw, io_tag(IO_OP_SPOOL_SYNC, 0, 0));
	CHECK_INT("the directory again", n, 1);
	assert_true(spool_sync_done(sw, 0, true, &ok));
	assert_true(ok);
	assert_false(sw->dir_dirty);
	/* Drain the ring: the three fsyncs submitted above. */
	for (unsigned seen = 0; seen < 3;) {
		struct io_cqe cqe[4];
		int k = io_wait(g.r, cqe, 4);
		assert_true(k > 0);
		for (int i = 0; i < k; i++)
			assert_int_equal(cqe[i].op, IO_OP_SPOOL_SYNC);
		seen += (unsigned)k;
	}
	spool_msg_release(sw, a);
	rig_close(&g);
}

/* A crash while the reaper deleted a segment: it was renamed out of sight
 * first, so its shortened rest is never recovered (here it holds a
 * committed message whose DELIVERED record the truncation took), and
 * spool_open removes it; the live segment beside it is kept. */
static void test_half_deleted_segment_is_never_read(void **state_)
{
	(void)state_;
	static struct seg_builder gone, live;
	gone.len = live.len = 0;
	chunk(&gone, 9, "nine\r\n");
	commit(&gone, 9, 6, 1, "POSTERN/1\r\nrcpt: <a@x>\r\n\r\n");
	chunk(&live, 10, "ten\r\n");
	commit(&live, 10, 5, 1, "POSTERN/1\r\nrcpt: <a@x>\r\n\r\n");
	write_seg(40, &gone, 0);
	write_seg(41, &live, 0);
	char from[128], to[160];
	snprintf(from, sizeof(from), "%s/seg-%016llx.log", dir, 40ULL);
	snprintf(to, sizeof(to), "%s" SPOOL_SEG_GONE, from);
	assert_int_equal(rename(from, to), 0);
	struct found f = {0};
	struct spool_scan_stats st;
	assert_int_equal(spool_scan(dirfd_, collect, &f, &st), 0);
	CHECK_INT("only the live segment's message", f.n, 1);
	assert_true(f.id[0] == 10);
	struct spool sp;
	char err[256];
	assert_int_equal(spool_open(&sp, dir, 1 << 20, err, sizeof(err)), 0);
	CHECK_INT("segments to recover", sp.nrecover, 1);
	spool_close(&sp);
	assert_int_equal(access(to, F_OK), -1);
	snprintf(from, sizeof(from), "%s/seg-%016llx.log", dir, 41ULL);
	assert_int_equal(access(from, F_OK), 0);
	unlink(from);
}

/* ---- bytes no message waits for ride a message's flush ----------------- */

struct dirt_rig {
	struct rig g;
	unsigned durable, fsyncs, timers;
	bool at_once;           /* the worker stops */
};

static void dirt_durable(void *arg, struct spool_msg *m, bool ok)
{
	struct dirt_rig *d = arg;
	assert_true(ok);
	d->durable++;
	spool_msg_release(&d->g.sw, m);
}

static uint64_t dirt_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* One loop turn as a worker runs it: completions, then the group commit. */
static void dirt_turn(struct dirt_rig *d)
{
	struct io_cqe cqe[16];
	int n = io_wait(d->g.r, cqe, 16);
	assert_true(n > 0);
	for (int i = 0; i < n; i++) {
		if (cqe[i].op == IO_OP_SPOOL_WRITE) {
			int bid;
			spool_write_done(&d->g.sw, io_cqe_ptr(&cqe[i]), cqe[i].res, &bid);
		} else {
			assert_int_equal(cqe[i].op, IO_OP_SPOOL_SYNC);
			if (cqe[i].tag & SPOOL_SYNC_TIMER)
				d->timers++;
			else
				d->fsyncs++;
			spool_commit_on_sync(&d->g.sw, cqe[i].res, cqe[i].tag);
		}
	}
	spool_commit_start(&d->g.sw, dirt_now_ms(), d->at_once);
}

static void dirt_state(struct dirt_rig *d, struct spool_seg *s, uint64_t id)
{
	struct spool_state_rec r = {.rcpt = 0, .kind = SPOOL_ST_DELIVERED, .time_ms = 1};
	assert_true(spool_state_write(&d->g.sw, s, id, &r, "250 ok"));
	while (d->g.sw.pending_writes)
		dirt_turn(d);
}

/* A message stored as a session stores it, its flush started and done;
 * its segment (the message is released once durable). */
static struct spool_seg *dirt_message(struct dirt_rig *d, uint64_t id, const char *body)
{
	struct spool_worker *sw = &d->g.sw;
	struct spool_msg *m = stored(sw, id, body);
	struct spool_seg *seg = m->seg;
	while (sw->pending_writes)
		dirt_turn(d);
	assert_true(spool_commit_add(sw, m));
	spool_commit_start(sw, dirt_now_ms(), d->at_once);
	assert_true(sw->flushing);
	while (sw->flushing)
		dirt_turn(d);
	return seg;
}

/* A STATE record (a delivery's outcome) gets no fdatasync of its own at
 * once: the next message's flush covers it (one fdatasync for both), and
 * alone it is synced SPOOL_DIRT_WAIT_MS later, or at once when the worker
 * stops (at_once). Before, the record's own flush made the next message
 * wait for it and then for its own. */
static void test_state_records_ride_a_message_flush(void **state_)
{
	(void)state_;
	struct dirt_rig d = {0};
	if (!rig_open(&d.g))
		skip();
	struct spool_worker *sw = &d.g.sw;
	sw->hooks = (struct spool_hooks){.durable = dirt_durable, .arg = &d};
	/* A first message: its segment's directory entry and its records. */
	struct spool_seg *seg = dirt_message(&d, 0xA1, "aaaa\r\n");
	CHECK_INT("a durable", d.durable, 1);
	CHECK_INT("segment and directory", d.fsyncs, 2);
	assert_false(spool_dirty(sw));

	/* A STATE record alone: no flush yet. */
	dirt_state(&d, seg, 0xA1);
	assert_true(spool_dirty(sw));
	assert_false(sw->flushing);
	/* The next message's flush carries it: one fdatasync. */
	assert_ptr_equal(dirt_message(&d, 0xB2, "bbbb\r\n"), seg);
	CHECK_INT("b durable", d.durable, 2);
	CHECK_INT("one more fdatasync for b and the record", d.fsyncs, 3);
	assert_false(spool_dirty(sw));

	/* Alone, it waits SPOOL_DIRT_WAIT_MS; a timeout wakes the loop. */
	uint64_t t0 = dirt_now_ms();
	dirt_state(&d, seg, 0xB2);
	spool_commit_start(sw, dirt_now_ms(), d.at_once);
	assert_false(sw->flushing);
	assert_true(sw->dirt_timer);
	while (spool_dirty(sw) || sw->flushing)
		dirt_turn(&d);
	assert_true(dirt_now_ms() - t0 >= SPOOL_DIRT_WAIT_MS - 1);
	CHECK_INT("the record's own fdatasync", d.fsyncs, 4);
	assert_true(d.timers >= 1);

	/* A stopping worker syncs it at once. */
	d.at_once = true;
	dirt_state(&d, seg, 0xA1);
	spool_commit_start(sw, dirt_now_ms(), d.at_once);
	assert_true(sw->flushing);
	while (sw->flushing)
		dirt_turn(&d);
	CHECK_INT("synced at once", d.fsyncs, 5);
	assert_false(spool_dirty(sw));
	/* A timer still armed comes back before the ring closes. */
	while (sw->dirt_timer)
		dirt_turn(&d);
	rig_close(&d.g);
}

/* ---- small flushes get a zeroed segment ---------------------------------- */

static size_t segments_on_disk(void)
{
	size_t n = 0;
	free(spool_segments(dirfd_, &n));
	return n;
}

/* 1: some of the file's blocks are unwritten extents (FIEMAP); 0: none;
 * -1: the filesystem cannot tell. */
static int unwritten_blocks(int fd, uint64_t len)
{
	enum { N = 64 };
	struct fiemap *fm = calloc(1, sizeof(*fm) + N * sizeof(struct fiemap_extent));
	assert_non_null(fm);
	fm->fm_length = len;
	fm->fm_flags = FIEMAP_FLAG_SYNC;
	fm->fm_extent_count = N;
	int r = ioctl(fd, FS_IOC_FIEMAP, fm) < 0 || fm->fm_mapped_extents == 0 ? -1 : 0;
	for (unsigned i = 0; r == 0 && i < fm->fm_mapped_extents; i++)
		if (fm->fm_extents[i].fe_flags & FIEMAP_EXTENT_UNWRITTEN)
			r = 1;
	free(fm);
	return r;
}

/* Messages of 4 KiB, each flushed alone. The worker's first segment
 * (fallocated) asks the reaper for the next one, zeroed, after
 * SPARE_FLUSHES flushes, and is left for it once it is made: no block of
 * the spare is left unwritten, so an fdatasync into it writes no extent
 * tree. A zeroed segment asks for its own spare only a quarter full, and
 * is left only when full. */
static void test_small_flushes_get_a_zeroed_segment(void **state_)
{
	(void)state_;
	struct dirt_rig d = {0};
	if (!rig_open(&d.g))
		skip();
	assert_int_equal(spool_reaper_start(&d.g.sp), 0);
	struct spool_worker *sw = &d.g.sw;
	sw->hooks = (struct spool_hooks){.durable = dirt_durable, .arg = &d};
	uint64_t bytes = d.g.sp.segment_bytes;
	char body[4096];
	memset(body, 'x', sizeof(body) - 1);
	memcpy(body + sizeof(body) - 3, "\r\n", 3);
	struct spool_seg *first = dirt_message(&d, 0x100, body);
	unsigned n = 1;
	while (!sw->spare && n < 100)
		assert_ptr_equal(dirt_message(&d, 0x100 + n++, body), first);
	CHECK_INT("asked at the 33rd message (32 flushes before it)", n, 33);
	spool_reaper_wait(&d.g.sp);
	CHECK_INT("the spare beside the first segment", segments_on_disk(), 2);
	int before = unwritten_blocks(spool_seg_fd(first), bytes);
	uint64_t first_seq = spool_seg_seq(first);
	/* The next message goes into the spare; the first segment goes as
	 * the worker leaves it (nothing in it is still queued here), on the
	 * reaper. */
	struct spool_seg *next = dirt_message(&d, 0x200, body);
	CHECK_INT("the next number", (int)(spool_seg_seq(next) - first_seq), 1);
	assert_null(sw->spare);
	spool_reaper_wait(&d.g.sp);
	CHECK_INT("only the spare is left", segments_on_disk(), 1);
	if (before >= 0) {
		CHECK_INT("the first segment: fallocated", before, 1);
		CHECK_INT("the spare: zeroed", unwritten_blocks(spool_seg_fd(next), bytes), 0);
	}
	/* In the zeroed segment: no spare below a quarter, one at a quarter,
	 * and the segment is kept until full. */
	uint64_t tail = spool_seg_tail(next);
	for (unsigned i = 1; !sw->spare && i < 200; i++) {
		CHECK_INT("below a quarter, no spare", tail >= bytes / 4, 0);
		tail = spool_seg_tail(next);
		assert_ptr_equal(dirt_message(&d, 0x200 + i, body), next);
	}
	assert_non_null(sw->spare);
	CHECK_INT("asked a quarter full", tail >= bytes / 4, 1);
	spool_reaper_wait(&d.g.sp);
	assert_ptr_equal(dirt_message(&d, 0x400, body), next);
	rig_close(&d.g);
}

/* Flushes of 80 KiB (over 64 KiB, spool.c's SPOOL_ZERO_BELOW) get no spare: zeroing would
 * write every byte twice. A spare the worker never used is deleted when
 * it stops. */
static void test_spare_only_for_small_flushes(void **state_)
{
	(void)state_;
	struct dirt_rig d = {0};
	if (!rig_open_sized(&d.g, 8 << 20))
		skip();
	assert_int_equal(spool_reaper_start(&d.g.sp), 0);
	struct spool_worker *sw = &d.g.sw;
	sw->hooks = (struct spool_hooks){.durable = dirt_durable, .arg = &d};
	size_t big = 80 << 10;
	char *body = malloc(big + 1);
	assert_non_null(body);
	memset(body, 'x', big);
	memcpy(body + big - 2, "\r\n", 3);
	struct spool_seg *first = dirt_message(&d, 0x400, body);
	for (unsigned i = 1; i < 40; i++)
		assert_ptr_equal(dirt_message(&d, 0x400 + i, body), first);
	assert_null(sw->spare);
	/* Small ones now: the segment's average per flush falls under 64
	 * KiB once it has had over 50 flushes. Stop there, before the spare
	 * is ready and the next message would go into it. */
	unsigned small = 0;
	while (!sw->spare && small < 20)
		dirt_message(&d, 0x500 + small++, "small\r\n");
	assert_non_null(sw->spare);
	CHECK_INT("small flushes before the spare is asked", small, 12);
	spool_reaper_wait(&d.g.sp);
	CHECK_INT("the spare beside the first segment", segments_on_disk(), 2);
	rig_close(&d.g);
	CHECK_INT("the unused spare is gone", segments_on_disk(), 1);
	free(body);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_crc32c_known_values),
		cmocka_unit_test_setup_teardown(test_interleaved_messages_and_partials, setup, teardown),
		cmocka_unit_test_setup_teardown(test_torn_tails, setup, teardown),
		cmocka_unit_test_setup_teardown(test_half_deleted_segment_is_never_read, setup, teardown),
		cmocka_unit_test_setup_teardown(test_small_flushes_get_a_zeroed_segment, setup, teardown),
		cmocka_unit_test_setup_teardown(test_spare_only_for_small_flushes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_inconsistent_commit_is_ignored, setup, teardown),
		cmocka_unit_test_setup_teardown(test_state_records, setup, teardown),
		cmocka_unit_test_setup_teardown(test_operator_records, setup, teardown),
		cmocka_unit_test_setup_teardown(test_moved_copy_wins, setup, teardown),
		cmocka_unit_test_setup_teardown(test_finished_moved_copy_wins, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_state_precedes_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_huge_valid_record_is_data, setup, teardown),
		cmocka_unit_test_setup_teardown(test_marked_original_stays_finished, setup, teardown),
		cmocka_unit_test_setup_teardown(test_large_owned_buffer_is_chunked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flushable_waits_for_earlier_writes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_write_fails_what_follows, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_dirsync_is_retried, setup, teardown),
		cmocka_unit_test_setup_teardown(test_state_records_ride_a_message_flush, setup, teardown),
	};
	char why[200];
	int failed = 0;
	if (io_probe(IO_BACKEND_URING, why, sizeof(why)) == IO_BACKEND_URING) {
		backend_now = IO_BACKEND_URING;
		failed += cmocka_run_group_tests_name("spool (io_uring)", tests, NULL, NULL);
	} else {
		printf("io_uring backend skipped: %s\n", why);
	}
	backend_now = IO_BACKEND_EPOLL;
	failed += cmocka_run_group_tests_name("spool (epoll)", tests, NULL, NULL);
	return failed;
}
