/* Spool, the writing side (see spool.h): segments, the append path from
 * receive buffers, state records and the group commit. A segment is a
 * preallocated file of records; a message's chunks and its COMMIT record
 * live in one segment, so recovery (spool_recover.c) validates each
 * segment on its own. */
#include "spool.h"

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dirs.h"
#include "log.h"
#include "envelope.h"
#include "io.h"
#include "metrics.h"


struct spool_seg {
	int fd;
	uint64_t seq;
	uint64_t tail;           /* next write offset */
	unsigned users;          /* open messages pinned here */
	unsigned writes;         /* writes in flight */
	bool dirty;              /* written since the last fsync was submitted */
	bool syncing;
	bool zeroed;             /* made ahead by the reaper: see ZERO_STEP */
	bool left_early;         /* left for a zeroed spare before it was full */
	unsigned holds;          /* queued messages stored here */
	struct spool_write *inflight_head, *inflight_tail; /* by offset */
	uint64_t live_bytes;     /* their message bytes */
	uint64_t durable;        /* covered by a completed fdatasync up to here */
	uint64_t sync_upto;      /* what the fdatasync in flight covers */
	uint64_t lost_from;      /* a write from here on failed (NO_LOSS: none) */
	struct spool_seg *next;
};

#define NO_LOSS UINT64_MAX

/* ---- CRC32C (Castagnoli) ------------------------------------------------ */

/* Every byte received is checksummed once on its way to disk: with a table
 * a byte at a time that was a tenth of the receive path's CPU. x86-64 has
 * the instruction (SSE4.2), eight bytes a step; elsewhere, or on a CPU
 * without it, slicing-by-8 tables. Both give the same values (test_spool). */
static uint32_t crc_table[8][256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc_table[0][i] = c;
	}
	for (uint32_t i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^
					  crc_table[0][crc_table[t - 1][i] & 0xff];
}

uint32_t spool_crc32c_sw(uint32_t crc, const void *p, size_t n)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, crc_init);
	const uint8_t *b = p;
	crc = ~crc;
	for (; n && ((uintptr_t)b & 7); n--)
		crc = crc_table[0][(crc ^ *b++) & 0xff] ^ (crc >> 8);
	for (; n >= 8; n -= 8, b += 8) {
		uint64_t w;
		memcpy(&w, b, 8);
		w ^= crc; /* little-endian: the low word meets the running crc */
		crc = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
		      crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
		      crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
		      crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
	}
	while (n--)
		crc = crc_table[0][(crc ^ *b++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *p, size_t n)
{
	const uint8_t *b = p;
	uint64_t c = ~crc;
	for (; n && ((uintptr_t)b & 7); n--)
		c = __builtin_ia32_crc32qi((uint32_t)c, *b++);
	for (; n >= 8; n -= 8, b += 8) {
		uint64_t w;
		memcpy(&w, b, 8);
		c = __builtin_ia32_crc32di(c, w);
	}
	while (n--)
		c = __builtin_ia32_crc32qi((uint32_t)c, *b++);
	return ~(uint32_t)c;
}

static int crc_hw = -1;  /* unknown until the first call: then 0 or 1 */

uint32_t spool_crc32c(uint32_t crc, const void *p, size_t n)
{
	int hw = __atomic_load_n(&crc_hw, __ATOMIC_RELAXED);
	if (hw < 0) {
		__builtin_cpu_init();
		hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
		__atomic_store_n(&crc_hw, hw, __ATOMIC_RELAXED);
	}
	return hw ? crc32c_hw(crc, p, n) : spool_crc32c_sw(crc, p, n);
}
#else
uint32_t spool_crc32c(uint32_t crc, const void *p, size_t n)
{
	return spool_crc32c_sw(crc, p, n);
}
#endif

uint32_t spool_rec_crc(const struct spool_rec_hdr *h, const void *payload, size_t len)
{
	uint8_t head[16];
	head[0] = h->type;
	memcpy(head + 4, &h->len, 4);
	memcpy(head + 8, &h->msg, 8);
	head[1] = head[2] = head[3] = 0;
	uint32_t crc = spool_crc32c(0, head, sizeof(head));
	return spool_crc32c(crc, payload, len);
}

void spool_seg_name(char *buf, size_t cap, uint64_t seq)
{
	snprintf(buf, cap, SPOOL_SEG_PREFIX "%016" PRIx64 SPOOL_SEG_SUFFIX, seq);
}

/* ---- writing ------------------------------------------------------------- */

void spool_worker_init(struct spool_worker *sw, struct spool *sp, struct io *io,
		       const struct spool_hooks *h, struct worker_metrics *m)
{
	memset(sw, 0, sizeof(*sw));
	sw->sp = sp;
	sw->io = io;
	if (h)
		sw->hooks = *h;
	sw->m = m;
}


/* A segment the reaper makes ahead for a worker (see maybe_ask_spare).
 * Its state leaves SPARE_WAIT once, by a compare-and-swap: to READY or
 * FAILED by the reaper, or to ABANDONED by the worker; whoever loses the
 * race knows who owns it (fd and seq are set before READY). */
enum spare_state {
	SPARE_WAIT,      /* queued or being made */
	SPARE_READY,     /* fd and seq: zeroed and durable, directory entry too */
	SPARE_FAILED,    /* the reaper gave up (logged); nothing is left on disk */
	SPARE_ABANDONED, /* the worker no longer wants it: the reaper deletes and frees it */
};

struct spool_spare {
	_Atomic int state;        /* enum spare_state */
	int fd;
	uint64_t seq;
};

struct reap_item {
	struct reap_item *next;
	int fd;
	uint64_t seq;
	struct spool_spare *spare; /* a segment to make, not one to delete */
};

struct spool_reaper {
	pthread_mutex_t mu;
	pthread_cond_t more, done;
	struct reap_item *head, *tail;
	bool stop, busy;
	int dirfd;
	struct spool *sp;
	pthread_t thread;
};

/* name: the segment's file name (as spool_seg_name, or the reaper's). */
static void seg_unlink(int dirfd, int fd, uint64_t seq, const char *name)
{
	if (unlinkat(dirfd, name, 0) == 0)
		log_msg(LOG_DEBUG, "event=segment_deleted segment=%016" PRIx64, seq);
	else
		log_msg(LOG_WARN, "event=store_error op=unlink segment=%016" PRIx64 " error=\"%s\"",
			seq, strerror(errno));
	close(fd);
}

static void seg_delete(int dirfd, int fd, uint64_t seq)
{
	char name[64];
	spool_seg_name(name, sizeof(name), seq);
	seg_unlink(dirfd, fd, seq, name);
}

/* The reaper's way: a segment's blocks freed all at once hold the ext4
 * journal so long that every fdatasync meanwhile waits for it (a 64 MiB
 * segment: 13 ms; a concurrent fdatasync's p99.9 went from 0.9 to 10.7
 * ms, measured), so they go a few MiB at a time. The file is first
 * renamed out of recovery's sight, durably (the directory's fsync), so a
 * crash part way never leaves a shortened segment for recovery to read:
 * spool_open() removes what such a crash left. Anything failing: the
 * whole file at once, as on a worker. */
#define REAP_STEP (2ull << 20)

static void seg_delete_gradually(struct spool_reaper *r, int fd, uint64_t seq)
{
	char name[64], gone[64 + sizeof(SPOOL_SEG_GONE)];
	spool_seg_name(name, sizeof(name), seq);
	snprintf(gone, sizeof(gone), "%s" SPOOL_SEG_GONE, name);
	struct stat st;
	if (fstat(fd, &st) < 0 || renameat(r->dirfd, name, r->dirfd, gone) < 0) {
		seg_delete(r->dirfd, fd, seq);
		return;
	}
	if (fsync(r->dirfd) == 0) {
		uint64_t size = (uint64_t)st.st_size; /* preallocated: every block within it */
		while (size > REAP_STEP) {
			size -= REAP_STEP;
			if (ftruncate(fd, (off_t)size) < 0)
				break;
			pthread_mutex_lock(&r->mu);
			bool behind = r->head && r->head->next; /* two more wait */
			pthread_mutex_unlock(&r->mu);
			if (!behind)
				nanosleep(&(struct timespec){0, 1000000}, NULL);
		}
	}
	seg_unlink(r->dirfd, fd, seq, gone);
}

/* ---- spare segments, zeroed ahead ------------------------------------ */

/* A fallocated segment's blocks are unwritten extents: the first write to
 * each turns it into a written one, and every fdatasync then also writes
 * the inode (the extent tree) and waits for that write, a third request
 * to the disk beside the data and the cache flush. With small messages,
 * flushes come a few kilobytes apart and that is most of what they cost:
 * an fdatasync of 3.5 KiB appended took 232 us (p50) in a fallocated
 * file and 140 us in a zeroed one, and relaying at 12,000 msg/s for 20 s
 * the client's p50 went from 0.83 to 0.67 ms, p99 from 2.85 to 2.52
 * (medians of three pairs on the Xeon of BENCHMARKS.md, ext4). It costs
 * one more segment of disk per worker. So while a worker's flushes carry
 * little (under SPOOL_ZERO_BELOW a flush), the reaper makes its next
 * segment ahead: created, zeroed and synced ZERO_STEP at a time with a
 * pause between (a worker's flush queued behind a step waits for it: 1
 * MiB steps 1 ms apart put the client's p99 at 4-6 ms in the seconds they
 * ran), its directory entry synced. Large messages would pay a second
 * write of every byte for nothing, so they get none. A worker's first
 * segment is not zeroed: it asks at once and leaves it when the spare is
 * ready. */
#define ZERO_STEP (256ull << 10)
#define SPOOL_ZERO_BELOW (64u << 10)
/* Flushes of a segment before its bytes per flush count. */
#define SPARE_FLUSHES 32
static const char zeros[ZERO_STEP];

static bool spare_abandoned(const struct spool_spare *sp)
{
	return atomic_load(&sp->state) == SPARE_ABANDONED;
}

/* SPARE_WAIT -> to; false when the other side moved it first. */
static bool spare_settle(struct spool_spare *sp, int to)
{
	int wait = SPARE_WAIT;
	return atomic_compare_exchange_strong(&sp->state, &wait, to);
}

static bool write_zeros(int fd, uint64_t off, size_t len)
{
	while (len) {
		ssize_t n = pwrite(fd, zeros, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			return false;
		}
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return true;
}

static void spare_make(struct spool_reaper *r, struct spool_spare *sp)
{
	if (spare_abandoned(sp)) {
		free(sp);
		return;
	}
	uint64_t bytes = r->sp->segment_bytes;
	uint64_t seq = atomic_fetch_add(&r->sp->next_seq, 1);
	char name[64];
	spool_seg_name(name, sizeof(name), seq);
	const char *op = "create";
	int fd = openat(r->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	bool ok = fd >= 0, gone = false;
	if (ok && fallocate(fd, 0, 0, (off_t)bytes) < 0 && errno != EOPNOTSUPP) {
		op = "fallocate";
		ok = false;
	}
	for (uint64_t off = 0; ok && off < bytes; off += ZERO_STEP) {
		size_t len = bytes - off < ZERO_STEP ? (size_t)(bytes - off) : ZERO_STEP;
		op = "zero";
		ok = write_zeros(fd, off, len) && fdatasync(fd) == 0;
		if (ok && spare_abandoned(sp)) {
			gone = true;
			break;
		}
		if (ok)
			nanosleep(&(struct timespec){0, 4000000}, NULL);
	}
	if (ok && !gone) {
		op = "dirsync";
		ok = fsync(r->dirfd) == 0;
	}
	int e = errno;
	if (ok && !gone) {
		sp->fd = fd;
		sp->seq = seq;
	}
	gone = !spare_settle(sp, ok && !gone ? SPARE_READY : SPARE_FAILED);
	if (ok && !gone) {
		log_msg(LOG_DEBUG, "event=segment_zeroed segment=%016" PRIx64, seq);
		return;
	}
	if (!ok)
		log_msg(LOG_WARN, "event=store_error op=%s segment=%016" PRIx64 " error=\"%s\" "
			"note=\"the next segment is made when needed, not zeroed\"", op, seq, strerror(e));
	if (fd >= 0)
		seg_delete_gradually(r, fd, seq);
	if (gone)
		free(sp);
}

static void *reaper_main(void *arg)
{
	struct spool_reaper *r = arg;
	pthread_mutex_lock(&r->mu);
	for (;;) {
		while (!r->head && !r->stop)
			pthread_cond_wait(&r->more, &r->mu);
		struct reap_item *it = r->head;
		if (!it)
			break; /* stopping, and nothing left */
		r->head = it->next;
		if (!r->head)
			r->tail = NULL;
		r->busy = true;
		pthread_mutex_unlock(&r->mu);
		if (it->spare)
			spare_make(r, it->spare);
		else
			seg_delete_gradually(r, it->fd, it->seq);
		free(it);
		pthread_mutex_lock(&r->mu);
		r->busy = false;
		if (!r->head)
			pthread_cond_broadcast(&r->done);
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

int spool_reaper_start(struct spool *sp)
{
	struct spool_reaper *r = calloc(1, sizeof(*r));
	if (!r)
		return -1;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->more, NULL);
	pthread_cond_init(&r->done, NULL);
	r->dirfd = sp->dirfd;
	r->sp = sp;
	int e = pthread_create(&r->thread, NULL, reaper_main, r);
	if (e) {
		pthread_cond_destroy(&r->done);
		pthread_cond_destroy(&r->more);
		pthread_mutex_destroy(&r->mu);
		free(r);
		errno = e;
		return -1;
	}
	sp->reaper = r;
	return 0;
}

void spool_reaper_wait(struct spool *sp)
{
	struct spool_reaper *r = sp->reaper;
	if (!r)
		return;
	pthread_mutex_lock(&r->mu);
	while (r->head || r->busy)
		pthread_cond_wait(&r->done, &r->mu);
	pthread_mutex_unlock(&r->mu);
}

void spool_reaper_stop(struct spool *sp)
{
	struct spool_reaper *r = sp->reaper;
	if (!r)
		return;
	pthread_mutex_lock(&r->mu);
	r->stop = true;
	pthread_cond_signal(&r->more);
	pthread_mutex_unlock(&r->mu);
	pthread_join(r->thread, NULL);
	pthread_cond_destroy(&r->done);
	pthread_cond_destroy(&r->more);
	pthread_mutex_destroy(&r->mu);
	free(r);
	sp->reaper = NULL;
}

/* Queued for the reaper when there is one (and memory for the item). */
static bool reap_queue(struct spool *sp, int fd, uint64_t seq, struct spool_spare *spare)
{
	struct spool_reaper *r = sp->reaper;
	struct reap_item *it = r ? malloc(sizeof(*it)) : NULL;
	if (!it)
		return false;
	it->next = NULL;
	it->fd = fd;
	it->seq = seq;
	it->spare = spare;
	pthread_mutex_lock(&r->mu);
	if (r->tail)
		r->tail->next = it;
	else
		r->head = it;
	r->tail = it;
	pthread_cond_signal(&r->more);
	pthread_mutex_unlock(&r->mu);
	return true;
}

static bool reap_later(struct spool *sp, int fd, uint64_t seq)
{
	return reap_queue(sp, fd, seq, NULL);
}

/* Once nothing pins a segment that is no longer written to, every message
 * in it is finished and that is durable: it goes. */
static void seg_maybe_close(struct spool_worker *sw, struct spool_seg *s)
{
	if (s == sw->cur || s->users || s->holds || s->writes || s->dirty || s->syncing)
		return;
	struct spool_seg **pp = &sw->segs;
	while (*pp != s)
		pp = &(*pp)->next;
	*pp = s->next;
	if (sw->stopping)
		close(s->fd);
	else if (!reap_later(sw->sp, s->fd, s->seq))
		seg_delete(sw->sp->dirfd, s->fd, s->seq);
	free(s);
}

void spool_seg_hold(struct spool_seg *s, uint64_t bytes)
{
	s->holds++;
	s->live_bytes += bytes;
}

void spool_seg_put(struct spool_worker *sw, struct spool_seg *s, uint64_t bytes)
{
	s->holds--;
	s->live_bytes -= bytes;
	seg_maybe_close(sw, s);
}

struct spool_seg *spool_compact_candidate(struct spool_worker *sw)
{
	struct spool_seg *best = NULL;
	for (struct spool_seg *s = sw->segs; s; s = s->next) {
		if (s == sw->cur || s->users || s->writes || s->dirty || s->syncing ||
		    !s->holds || (s->tail < sw->sp->segment_bytes / 2 && !s->left_early) ||
		    s->live_bytes * 4 >= s->tail)
			continue;
		if (!best || s->live_bytes * best->tail < best->live_bytes * s->tail)
			best = s;
	}
	return best;
}

uint64_t spool_seg_written_prefix(const struct spool_seg *s)
{
	return s->inflight_head ? s->inflight_head->off : s->tail;
}

bool spool_seg_lost_before(const struct spool_seg *s, uint64_t end)
{
	return end > s->lost_from;
}

int spool_msg_error(const struct spool_msg *m)
{
	if (m->err)
		return m->err;
	return m->committed && spool_seg_lost_before(m->seg, m->end) ? EIO : 0;
}

int spool_seg_fd(const struct spool_seg *s)
{
	return s->fd;
}

uint64_t spool_seg_tail(const struct spool_seg *s)
{
	return s->tail;
}

uint64_t spool_seg_seq(const struct spool_seg *s)
{
	return s->seq;
}

bool spool_dirty(const struct spool_worker *sw)
{
	return sw->dir_dirty || sw->ndirty;
}

static struct spool_seg *seg_link(struct spool_worker *sw, int fd, uint64_t seq)
{
	struct spool_seg *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->fd = fd;
	s->seq = seq;
	s->lost_from = NO_LOSS;
	s->next = sw->segs;
	sw->segs = s;
	return s;
}

struct spool_seg *spool_seg_adopt(struct spool_worker *sw, uint64_t seq, uint64_t tail)
{
	char name[64];
	spool_seg_name(name, sizeof(name), seq);
	int fd = openat(sw->sp->dirfd, name, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	struct spool_seg *s = seg_link(sw, fd, seq);
	if (!s) {
		close(fd);
		errno = ENOMEM;
		return NULL;
	}
	s->tail = tail;
	s->durable = tail;
	return s;
}


static void spare_drop(struct spool_worker *sw);

void spool_worker_free(struct spool_worker *sw)
{
	spare_drop(sw);
	sw->stopping = true;
	while (sw->segs) {
		struct spool_seg *s = sw->segs;
		sw->segs = s->next;
		close(s->fd);
		free(s);
	}
	while (sw->free_writes) {
		struct spool_write *w = sw->free_writes;
		sw->free_writes = w->next_free;
		free(w);
	}
	sw->cur = NULL;
	free(sw->ready);
	free(sw->batch);
	sw->ready = sw->batch = NULL;
	sw->nready = sw->nbatch = 0;
}

static struct spool_seg *new_segment(struct spool_worker *sw, int *err)
{
	uint64_t seq = atomic_fetch_add(&sw->sp->next_seq, 1);
	char name[64];
	spool_seg_name(name, sizeof(name), seq);
	int fd = openat(sw->sp->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd < 0) {
		*err = errno;
		return NULL;
	}
	/* Preallocated: appends never allocate blocks, and a full disk shows
	 * here, before any message is accepted into the segment. */
	int r = fallocate(fd, 0, 0, (off_t)sw->sp->segment_bytes);
	if (r < 0 && errno != EOPNOTSUPP) {
		*err = errno;
		close(fd);
		unlinkat(sw->sp->dirfd, name, 0);
		return NULL;
	}
	struct spool_seg *s = seg_link(sw, fd, seq);
	if (!s) {
		*err = ENOMEM;
		close(fd);
		unlinkat(sw->sp->dirfd, name, 0);
		return NULL;
	}
	sw->dir_dirty = true;
	return s;
}

/* The spare, taken from the reaper: NULL when there is none, or when it
 * was still being made (it is abandoned: the reaper deletes it). */
static struct spool_spare *spare_claim(struct spool_worker *sw)
{
	struct spool_spare *sp = sw->spare;
	if (!sp)
		return NULL;
	sw->spare = NULL;
	return spare_settle(sp, SPARE_ABANDONED) ? NULL : sp;
}

/* The spare as the new segment, if it is ready. One still being made is
 * given up: it holds a number from before the segment that replaces it,
 * and a worker's segments must be numbered in the order it writes them
 * (the later copy of a moved message wins). */
static struct spool_seg *take_spare(struct spool_worker *sw)
{
	struct spool_spare *sp = spare_claim(sw);
	if (!sp)
		return NULL;
	struct spool_seg *s = NULL;
	if (atomic_load(&sp->state) == SPARE_READY) {
		s = seg_link(sw, sp->fd, sp->seq);
		if (s)
			s->zeroed = true;
		else
			seg_delete(sw->sp->dirfd, sp->fd, sp->seq);
	}
	free(sp);
	return s;
}

/* Asks the reaper for the next segment, zeroed, once the current one's
 * flushes have carried under SPOOL_ZERO_BELOW each (see ZERO_STEP): once
 * it is a quarter full, or at once when it was not zeroed itself (a
 * worker's first segment), which then gives way as soon as the spare is
 * ready (spare_ready). Once per segment: a spare that failed stays until
 * the next rollover. */
static void maybe_ask_spare(struct spool_worker *sw)
{
	struct spool_seg *c = sw->cur;
	if (sw->spare || !sw->sp->reaper || sw->stopping ||
	    sw->cur_flushes < SPARE_FLUSHES || (c->zeroed && c->tail < sw->sp->segment_bytes / 4) ||
	    c->tail >= (uint64_t)sw->cur_flushes * SPOOL_ZERO_BELOW)
		return;
	struct spool_spare *sp = calloc(1, sizeof(*sp));
	if (!sp)
		return;
	sp->fd = -1;
	atomic_init(&sp->state, SPARE_WAIT);
	if (!reap_queue(sw->sp, -1, 0, sp)) {
		free(sp);
		return;
	}
	sw->spare = sp;
}

/* Whether the spare is made; a segment that was not zeroed is left for it
 * then, full or not: with small messages each flush into it costs a
 * third more. What it holds finishes as anywhere else (compaction takes
 * it as if full: it holds the whole preallocation). */
static bool spare_ready(const struct spool_worker *sw)
{
	return sw->spare && atomic_load(&sw->spare->state) == SPARE_READY;
}

static void spare_drop(struct spool_worker *sw)
{
	struct spool_spare *sp = spare_claim(sw);
	if (sp && atomic_load(&sp->state) == SPARE_READY)
		seg_delete(sw->sp->dirfd, sp->fd, sp->seq);
	free(sp);
}

struct spool_msg *spool_msg_begin_in(struct spool_worker *sw, struct spool_seg *s,
				     uint64_t id, int *err)
{
	struct spool_msg *m = calloc(1, sizeof(*m));
	if (!m) {
		*err = ENOMEM;
		return NULL;
	}
	m->seg = s;
	m->id = id;
	m->open = true;
	s->users++;
	return m;
}

struct spool_msg *spool_msg_begin(struct spool_worker *sw, uint64_t id, int *err)
{
	/* A message stays in the segment it starts in (it may run past the
	 * preallocated end); new messages move on once one is 7/8 full, or
	 * once a write to it failed. */
	bool early = sw->cur && !sw->cur->zeroed && spare_ready(sw);
	if (!sw->cur || sw->cur->tail >= sw->sp->segment_bytes / 8 * 7 ||
	    sw->cur->lost_from != NO_LOSS || early) {
		struct spool_seg *s = take_spare(sw);
		if (!s)
			s = new_segment(sw, err);
		if (!s)
			return NULL;
		struct spool_seg *old = sw->cur;
		sw->cur = s;
		sw->cur_flushes = 0;
		if (old) {
			old->left_early = early;
			seg_maybe_close(sw, old);
		}
	}
	maybe_ask_spare(sw);
	return spool_msg_begin_in(sw, sw->cur, id, err);
}

static struct spool_write *write_alloc(struct spool_worker *sw)
{
	struct spool_write *w = sw->free_writes;
	if (w) {
		sw->free_writes = w->next_free;
		return w;
	}
	return malloc(sizeof(*w));
}

static uint64_t submit_to(struct spool_worker *sw, struct spool_seg *s, uint64_t msgid,
			  struct spool_write *w, uint8_t type, const void *payload, size_t n)
{
	w->hdr = (struct spool_rec_hdr){.magic = SPOOL_MAGIC, .type = type,
					.len = (uint32_t)n, .msg = msgid};
	w->hdr.crc = spool_rec_crc(&w->hdr, payload, n);
	w->iov[0] = (struct iovec){&w->hdr, sizeof(w->hdr)};
	w->iov[1] = (struct iovec){(void *)payload, n};
	w->seg = s;
	w->expect = (uint32_t)(sizeof(w->hdr) + n);
	uint64_t off = s->tail;
	s->tail += w->expect;
	/* Offsets only grow, so appending keeps the list in offset order. */
	w->off = off;
	w->next = NULL;
	w->prev = s->inflight_tail;
	if (s->inflight_tail)
		s->inflight_tail->next = w;
	else
		s->inflight_head = w;
	s->inflight_tail = w;
	s->writes++;
	sw->pending_writes++;
	io_writev(sw->io, s->fd, w->iov, 2, off, io_tag_ptr(IO_OP_SPOOL_WRITE, w, 0));
	return off + sizeof(w->hdr);
}

static uint64_t submit(struct spool_worker *sw, struct spool_msg *m, struct spool_write *w,
		       uint8_t type, const void *payload, size_t n)
{
	w->msg = m;
	m->pending++;
	return submit_to(sw, m->seg, m->id, w, type, payload, n);
}

bool spool_state_write(struct spool_worker *sw, struct spool_seg *s, uint64_t msg,
		       const struct spool_state_rec *rec, const char *text)
{
	size_t tl = text ? strlen(text) : 0;
	if (tl > 1000)
		tl = 1000;
	struct spool_write *w = write_alloc(sw);
	char *buf = malloc(sizeof(*rec) + tl);
	if (!w || !buf) {
		free(w);
		free(buf);
		return false;
	}
	struct spool_state_rec r = *rec;
	r.textlen = (uint16_t)tl;
	memcpy(buf, &r, sizeof(r));
	if (tl)
		memcpy(buf + sizeof(r), text, tl);
	w->owned = buf;
	w->shared = NULL;
	w->bid = -1;
	w->msg = NULL;
	submit_to(sw, s, msg, w, SPOOL_REC_STATE, buf, sizeof(r) + tl);
	return true;
}

static void shared_put(struct spool_shared *sh)
{
	if (sh && --sh->refs == 0) {
		free(sh->buf);
		free(sh);
	}
}

/* p is written from where it lies; owned (p itself, malloc'd, or NULL) is
 * freed once the write is done, or now when nothing is written; a share
 * of sh (when set) is held by the write instead. */
static bool append_one(struct spool_worker *sw, struct spool_msg *m, const void *p, size_t n,
		       int bid, void *owned, struct spool_shared *sh)
{
	struct spool_write *w = m->err || n == 0 ? NULL : write_alloc(sw);
	if (w && m->chunks == m->off_cap) {
		uint32_t ncap = m->off_cap ? m->off_cap * 2 : 4;
		uint64_t *no = realloc(m->off, ncap * sizeof(*no));
		if (no)
			m->off = no;
		uint32_t *nl = no ? realloc(m->len, ncap * sizeof(*nl)) : NULL;
		if (nl)
			m->len = nl;
		if (nl) {
			m->off_cap = ncap;
		} else {
			free(w);
			w = NULL;
		}
	}
	if (!w) {
		if (!m->err && n)
			m->err = ENOMEM;
		free(owned);
		return false;
	}
	w->owned = owned;
	w->shared = sh;
	if (sh)
		sh->refs++;
	w->bid = bid;
	m->len[m->chunks] = (uint32_t)n;
	m->off[m->chunks++] = submit(sw, m, w, SPOOL_REC_CHUNK, p, n);
	m->bytes += n;
	return true;
}

/* Bytes beyond SPOOL_CHUNK_MAX become several records sharing owned. */
static bool append(struct spool_worker *sw, struct spool_msg *m, const void *p, size_t n,
		   int bid, void *owned)
{
	if (n <= SPOOL_CHUNK_MAX)
		return append_one(sw, m, p, n, bid, owned, NULL);
	struct spool_shared *sh = NULL;
	if (owned) {
		sh = malloc(sizeof(*sh));
		if (!sh) {
			free(owned);
			if (!m->err)
				m->err = ENOMEM;
			return false;
		}
		*sh = (struct spool_shared){.buf = owned, .refs = 1}; /* ours until the end */
	}
	bool ok = true;
	for (size_t o = 0; ok && o < n; o += SPOOL_CHUNK_MAX) {
		size_t k = n - o < SPOOL_CHUNK_MAX ? n - o : SPOOL_CHUNK_MAX;
		ok = append_one(sw, m, (const char *)p + o, k, bid, NULL, sh);
	}
	shared_put(sh);
	return ok;
}

bool spool_msg_append(struct spool_worker *sw, struct spool_msg *m, const void *p,
		      size_t n, int bid)
{
	if (m->err || n == 0)
		return false;
	if (bid >= 0)
		return append(sw, m, p, n, bid, NULL);
	void *copy = malloc(n);
	if (!copy) {
		m->err = ENOMEM;
		return false;
	}
	memcpy(copy, p, n);
	return append(sw, m, copy, n, -1, copy);
}

bool spool_msg_append_owned(struct spool_worker *sw, struct spool_msg *m, void *p, size_t n)
{
	return append(sw, m, p, n, -1, p);
}

void spool_msg_commit(struct spool_worker *sw, struct spool_msg *m, char *rec,
		      size_t len)
{
	m->committed = true;
	struct spool_write *w = m->err ? NULL : write_alloc(sw);
	if (!w) {
		free(rec);
		if (!m->err)
			m->err = ENOMEM;
		return;
	}
	struct spool_commit_hdr ch = {.bytes = m->bytes, .chunks = m->chunks,
				      .envlen = (uint32_t)(len - sizeof(ch))};
	memcpy(rec, &ch, sizeof(ch));
	w->owned = rec;
	w->shared = NULL;
	w->bid = -1;
	submit(sw, m, w, SPOOL_REC_COMMIT, rec, len);
	m->end = m->seg->tail;
}

bool spool_msg_commit_envelope(struct spool_worker *sw, struct spool_msg *m, const char *id,
			       const struct smtp_envelope *env, const char *connector,
			       const char *client, const char *helo, int64_t arrival)
{
	/* The envelope is written straight into the record's buffer, behind
	 * room for its header. */
	char *rec = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&rec, &len);
	if (!f)
		return false;
	static const struct spool_commit_hdr room;
	fwrite(&room, sizeof(room), 1, f);
	envelope_write(f, id, env, connector, client, helo, arrival);
	if (fclose(f) != 0 || !rec) {
		free(rec);
		return false;
	}
	spool_msg_commit(sw, m, rec, len);
	return true;
}

static void msg_free(struct spool_worker *sw, struct spool_msg *m)
{
	struct spool_seg *s = m->seg;
	s->users--;
	free(m->off);
	free(m->len);
	free(m);
	seg_maybe_close(sw, s);
}

void spool_msg_release(struct spool_worker *sw, struct spool_msg *m)
{
	m->open = false;
	if (m->pending == 0)
		msg_free(sw, m);
}

struct spool_msg *spool_write_done(struct spool_worker *sw, struct spool_write *wr,
				   int res, int *bid)
{
	struct spool_msg *m = wr->msg;
	struct spool_seg *s = wr->seg;
	*bid = wr->bid;
	if (res != (int)wr->expect) {
		if (m && !m->err)
			m->err = res < 0 ? -res : EIO;
		if (wr->off < s->lost_from)
			s->lost_from = wr->off;
		log_msg(LOG_ERROR, "event=store_error op=write segment=%016" PRIx64 " error=\"%s\"",
			s->seq, res < 0 ? strerror(-res) : "short write");
	} else {
		if (!s->dirty)
			sw->ndirty++;
		s->dirty = true;
	}
	s->writes--;
	sw->pending_writes--;
	if (wr->prev)
		wr->prev->next = wr->next;
	else
		s->inflight_head = wr->next;
	if (wr->next)
		wr->next->prev = wr->prev;
	else
		s->inflight_tail = wr->prev;
	free(wr->owned);
	shared_put(wr->shared);
	wr->shared = NULL;
	wr->next_free = sw->free_writes;
	sw->free_writes = wr;
	if (!m) {
		seg_maybe_close(sw, s);
		return NULL;
	}
	m->pending--;
	if (!m->open) {
		if (m->pending == 0)
			msg_free(sw, m);
		else
			seg_maybe_close(sw, s);
		return NULL;
	}
	return m;
}

unsigned spool_sync_start(struct spool_worker *sw, uint64_t tag)
{
	unsigned n = 0;
	sw->sync_ok = true;
	for (struct spool_seg *s = sw->segs; s; s = s->next) {
		if (!s->dirty)
			continue;
		s->dirty = false;
		sw->ndirty--;
		s->syncing = true;
		s->sync_upto = spool_seg_written_prefix(s);
		if (s == sw->cur)
			sw->cur_flushes++;
		io_fsync(sw->io, s->fd, true, tag);
		n++;
	}
	if (sw->dir_dirty) {
		/* New segment files become durable with their directory entry. */
		sw->dir_dirty = false;
		io_fsync(sw->io, sw->sp->dirfd, false, tag | SPOOL_SYNC_DIR);
		n++;
	}
	sw->sync_inflight = n;
	return n;
}

bool spool_sync_done(struct spool_worker *sw, int res, bool dir, bool *ok)
{
	if (res < 0) {
		sw->sync_ok = false;
		/* The directory entries are not known durable: the next flush
		 * syncs the directory again (nothing new may need it to). */
		if (dir)
			sw->dir_dirty = true;
		log_msg(LOG_ERROR, "event=store_error op=%s error=\"%s\"%s", dir ? "dirsync" : "fdatasync",
			strerror(-res), dir ? " note=\"retried with the next flush\"" : "");
	}
	if (--sw->sync_inflight)
		return false;
	/* The batch is over: segments may close now. After a failed
	 * fdatasync the kernel may have dropped the pages it could not write,
	 * and a later one succeeds without them: what it covered counts as
	 * lost. */
	for (struct spool_seg *s = sw->segs, *next; s; s = next) {
		next = s->next;
		if (s->syncing && sw->sync_ok)
			s->durable = s->sync_upto;
		else if (s->syncing && s->durable < s->lost_from)
			s->lost_from = s->durable;
		s->syncing = false;
		seg_maybe_close(sw, s);
	}
	*ok = sw->sync_ok;
	return true;
}

/* ---- group commit --------------------------------------------------------- */

static bool push_msg(struct spool_msg ***v, unsigned *n, unsigned *cap, struct spool_msg *m)
{
	if (*n == *cap) {
		unsigned nc = *cap ? *cap * 2 : 64;
		struct spool_msg **nv = realloc(*v, nc * sizeof(*nv));
		if (!nv)
			return false;
		*v = nv;
		*cap = nc;
	}
	(*v)[(*n)++] = m;
	return true;
}

bool spool_commit_add(struct spool_worker *sw, struct spool_msg *m)
{
	return push_msg(&sw->ready, &sw->nready, &sw->ready_cap, m);
}

static void commit_done(struct spool_worker *sw, bool ok)
{
	unsigned n = sw->nbatch;
	sw->nbatch = 0;
	sw->flushing = false;
	if (sw->m)
		metric_add(&sw->m->flushed_messages, n);
	for (unsigned i = 0; i < n; i++) {
		struct spool_msg *m = sw->batch[i];
		sw->hooks.durable(sw->hooks.arg, m, ok && !spool_msg_error(m));
	}
	if (sw->hooks.flush_done)
		sw->hooks.flush_done(sw->hooks.arg, ok);
}

/* Bytes no message waits for (a delivery's STATE record, a notice, a
 * move, a new segment's directory entry) wait up to SPOOL_DIRT_WAIT_MS for
 * a message's flush, which covers every dirty segment, instead of getting
 * an fdatasync of their own at once: such a flush in flight made the next
 * message wait for it and then for its own (holding every message: 1.67
 * flushes a message at 1,000 msg/s, p50 end of data -> 250 0.50 ms). A
 * timeout wakes the loop when the wait is over. */
static bool dirt_due(struct spool_worker *sw, uint64_t now_ms, bool at_once)
{
	if (!spool_dirty(sw))
		return false;
	if (at_once)
		return true;
	if (!sw->dirt_since_ms)
		sw->dirt_since_ms = now_ms;
	uint64_t waited = now_ms - sw->dirt_since_ms;
	if (waited >= SPOOL_DIRT_WAIT_MS)
		return true;
	if (!sw->dirt_timer) {
		sw->dirt_timer = true;
		io_timeout(sw->io, SPOOL_DIRT_WAIT_MS - waited,
			   io_tag(IO_OP_SPOOL_SYNC, 0, 0) | SPOOL_SYNC_TIMER);
	}
	return false;
}

/* One fdatasync covers everything written since the last one. A message
 * joins a flush only once every write before it in its segment is done
 * (spool_msg_flushable): recovery stops at the first hole, so an earlier
 * message's write still in flight would hide this one. */
void spool_commit_start(struct spool_worker *sw, uint64_t now_ms, bool at_once)
{
	if (sw->flushing)
		return;
	bool dirt = dirt_due(sw, now_ms, at_once);
	if (!sw->nready && !dirt)
		return;
	unsigned keep = 0;
	sw->nbatch = 0;
	for (unsigned i = 0; i < sw->nready; i++) {
		struct spool_msg *m = sw->ready[i];
		if (!spool_msg_flushable(m) ||
		    !push_msg(&sw->batch, &sw->nbatch, &sw->batch_cap, m))
			sw->ready[keep++] = m;
	}
	sw->nready = keep;
	if (sw->nbatch == 0 && !dirt)
		return; /* the next loop turn tries again */
	sw->flushing = true;
	sw->dirt_since_ms = 0;
	if (sw->hooks.flush_started)
		sw->hooks.flush_started(sw->hooks.arg);
	unsigned n = spool_sync_start(sw, io_tag(IO_OP_SPOOL_SYNC, 0, 0));
	if (sw->m) {
		metric_add(&sw->m->fsyncs, n);
		metric_add(&sw->m->dirsyncs, 1);
	}
	if (n == 0)
		commit_done(sw, true);
}

void spool_commit_on_sync(struct spool_worker *sw, int res, uint64_t tag)
{
	bool ok;
	if (tag & SPOOL_SYNC_TIMER) {
		sw->dirt_timer = false; /* the loop's next spool_commit_start looks */
		return;
	}
	if (spool_sync_done(sw, res, (tag & SPOOL_SYNC_DIR) != 0, &ok))
		commit_done(sw, ok);
}
