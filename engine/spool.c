/* Spool (see spool.h). A segment is a preallocated file of records; a
 * message's chunks and its COMMIT record live in one segment, so recovery
 * validates each segment on its own. A scan stops at the first record whose
 * magic, length or checksum is wrong: that is the torn tail of a crash. */
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
#include <unistd.h>

#include "log.h"
#include "ring.h"

#define SEG_PREFIX "seg-"
#define SEG_SUFFIX ".log"
/* A record larger than this is corruption, not data. */
#define REC_MAX (64u << 20)

struct spool_seg {
	int fd;
	uint64_t seq;
	uint64_t tail;           /* next write offset */
	unsigned users;          /* open messages pinned here */
	unsigned writes;         /* writes in flight */
	bool dirty;              /* written since the last fsync was submitted */
	bool syncing;
	struct spool_seg *next;
};

/* ---- CRC32C (Castagnoli), table-driven ----------------------------------- */

static uint32_t crc_table[256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc_table[i] = c;
	}
}

uint32_t spool_crc32c(uint32_t crc, const void *p, size_t n)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, crc_init);
	const uint8_t *b = p;
	crc = ~crc;
	while (n--)
		crc = crc_table[(crc ^ *b++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

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

/* ---- directory and recovery ------------------------------------------- */

static bool seg_name_seq(const char *name, uint64_t *seq)
{
	size_t n = strlen(name);
	if (n != strlen(SEG_PREFIX) + 16 + strlen(SEG_SUFFIX) ||
	    strncmp(name, SEG_PREFIX, strlen(SEG_PREFIX)) != 0 ||
	    strcmp(name + n - strlen(SEG_SUFFIX), SEG_SUFFIX) != 0)
		return false;
	char *end;
	*seq = strtoull(name + strlen(SEG_PREFIX), &end, 16);
	return end == name + strlen(SEG_PREFIX) + 16;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Segment numbers present in the directory, sorted. */
static uint64_t *list_segments(int dirfd, size_t *count)
{
	*count = 0;
	int dfd = dup(dirfd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		if (dfd >= 0)
			close(dfd);
		return NULL;
	}
	rewinddir(d);
	size_t cap = 16;
	uint64_t *v = malloc(cap * sizeof(*v));
	struct dirent *e;
	while (v && (e = readdir(d))) {
		uint64_t seq;
		if (!seg_name_seq(e->d_name, &seq))
			continue;
		if (*count == cap) {
			uint64_t *nv = realloc(v, (cap *= 2) * sizeof(*v));
			if (!nv) {
				free(v);
				v = NULL;
				break;
			}
			v = nv;
		}
		v[(*count)++] = seq;
	}
	closedir(d);
	if (v)
		qsort(v, *count, sizeof(*v), cmp_u64);
	return v;
}

/* Chunks seen so far in one segment, per message id (open addressing). */
struct pending_msg {
	uint64_t id;             /* 0: empty slot */
	uint32_t chunks;
	uint32_t cap;
	uint64_t bytes;
	struct iovec *iov;
};

struct msg_table {
	struct pending_msg *slot;
	size_t cap, used;
};

static struct pending_msg *table_get(struct msg_table *t, uint64_t id, bool create)
{
	if (create && (t->used + 1) * 2 > t->cap) {
		size_t ncap = t->cap ? t->cap * 2 : 256;
		struct pending_msg *ns = calloc(ncap, sizeof(*ns));
		if (!ns)
			return NULL;
		for (size_t i = 0; i < t->cap; i++) {
			if (!t->slot[i].id)
				continue;
			size_t k = t->slot[i].id * 0x9E3779B97F4A7C15ull % ncap;
			while (ns[k].id)
				k = (k + 1) % ncap;
			ns[k] = t->slot[i];
		}
		free(t->slot);
		t->slot = ns;
		t->cap = ncap;
	}
	if (!t->cap)
		return NULL;
	size_t k = id * 0x9E3779B97F4A7C15ull % t->cap;
	while (t->slot[k].id && t->slot[k].id != id)
		k = (k + 1) % t->cap;
	if (t->slot[k].id == id)
		return &t->slot[k];
	if (!create)
		return NULL;
	t->slot[k].id = id;
	t->used++;
	return &t->slot[k];
}

static void table_free(struct msg_table *t, uint64_t *orphans)
{
	for (size_t i = 0; i < t->cap; i++) {
		if (t->slot[i].id && t->slot[i].iov)
			(*orphans)++;
		free(t->slot[i].iov);
	}
	free(t->slot);
}

static void scan_segment(int dirfd, uint64_t seq,
			 void (*fn)(void *arg, const struct spool_found *m), void *arg,
			 struct spool_scan_stats *st)
{
	char name[64];
	snprintf(name, sizeof(name), SEG_PREFIX "%016" PRIx64 SEG_SUFFIX, seq);
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	struct stat sb;
	if (fstat(fd, &sb) < 0 || sb.st_size == 0) {
		close(fd);
		return;
	}
	size_t size = (size_t)sb.st_size;
	const uint8_t *base = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (base == MAP_FAILED)
		return;
	st->segments++;
	struct msg_table t = {0};
	size_t off = 0;
	for (;;) {
		if (off + sizeof(struct spool_rec_hdr) > size) {
			/* Not even a header left: zeros end a segment, anything else
			 * is a header cut short. */
			for (size_t k = off; k < size; k++)
				if (base[k]) {
					st->torn++;
					break;
				}
			break;
		}
		struct spool_rec_hdr h;
		memcpy(&h, base + off, sizeof(h));
		if (h.magic != SPOOL_MAGIC) {
			if (h.magic != 0)
				st->torn++;
			break; /* preallocated zeros: the end */
		}
		const uint8_t *payload = base + off + sizeof(h);
		if (h.len > REC_MAX || h.len > size - off - sizeof(h) ||
		    spool_rec_crc(&h, payload, h.len) != h.crc) {
			st->torn++;
			break;
		}
		struct pending_msg *pm = table_get(&t, h.msg, true);
		if (!pm)
			break;
		if (h.type == SPOOL_REC_CHUNK) {
			if (pm->chunks == pm->cap) {
				uint32_t ncap = pm->cap ? pm->cap * 2 : 4;
				struct iovec *ni = realloc(pm->iov, ncap * sizeof(*ni));
				if (!ni)
					break;
				pm->iov = ni;
				pm->cap = ncap;
			}
			pm->iov[pm->chunks++] = (struct iovec){(void *)payload, h.len};
			pm->bytes += h.len;
		} else if (h.type == SPOOL_REC_COMMIT && h.len >= sizeof(struct spool_commit_hdr)) {
			struct spool_commit_hdr ch;
			memcpy(&ch, payload, sizeof(ch));
			if (ch.chunks == pm->chunks && ch.bytes == pm->bytes &&
			    ch.envlen <= h.len - sizeof(ch)) {
				struct spool_found f = {
					.id = h.msg, .seq = seq, .bytes = pm->bytes,
					.chunks = pm->chunks,
					.env = (const char *)payload + sizeof(ch),
					.envlen = ch.envlen, .chunk = pm->iov,
				};
				st->messages++;
				st->bytes += pm->bytes;
				if (fn)
					fn(arg, &f);
			}
			free(pm->iov);
			pm->iov = NULL;
			pm->chunks = pm->cap = 0;
			pm->bytes = 0;
		}
		off += sizeof(h) + h.len;
	}
	table_free(&t, &st->orphans);
	munmap((void *)base, size);
}

int spool_scan(int dirfd, void (*fn)(void *arg, const struct spool_found *m),
	       void *arg, struct spool_scan_stats *st)
{
	memset(st, 0, sizeof(*st));
	size_t n;
	uint64_t *seqs = list_segments(dirfd, &n);
	if (!seqs)
		return -1;
	for (size_t i = 0; i < n; i++)
		scan_segment(dirfd, seqs[i], fn, arg, st);
	free(seqs);
	return 0;
}

static int mkdir_p(const char *dir)
{
	char path[4096];
	size_t n = strlen(dir);
	if (n == 0 || n >= sizeof(path))
		return -ENAMETOOLONG;
	memcpy(path, dir, n + 1);
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0750) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(path, 0750) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int spool_open(struct spool *sp, const char *dir, uint64_t segment_bytes, char *err,
	       size_t errlen)
{
	sp->dirfd = sp->lockfd = -1;
	sp->segment_bytes = segment_bytes ? segment_bytes : SPOOL_SEGMENT_BYTES;
	int ret = mkdir_p(dir);
	if (ret < 0) {
		snprintf(err, errlen, "spool_dir %s: %s", dir, strerror(-ret));
		return -1;
	}
	sp->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sp->dirfd < 0) {
		snprintf(err, errlen, "spool_dir %s: %s", dir, strerror(errno));
		return -1;
	}
	sp->lockfd = openat(sp->dirfd, "postern.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (sp->lockfd < 0 || flock(sp->lockfd, LOCK_EX | LOCK_NB) < 0) {
		snprintf(err, errlen, "spool_dir %s: %s", dir,
			 errno == EWOULDBLOCK ? "locked by another postern" : strerror(errno));
		spool_close(sp);
		return -1;
	}
	size_t n;
	uint64_t *seqs = list_segments(sp->dirfd, &n);
	if (!seqs) {
		snprintf(err, errlen, "spool_dir %s: cannot list: %s", dir, strerror(errno));
		spool_close(sp);
		return -1;
	}
	atomic_init(&sp->next_seq, n ? seqs[n - 1] + 1 : 1);
	free(seqs);
	struct spool_scan_stats st;
	spool_scan(sp->dirfd, NULL, NULL, &st);
	log_msg(LOG_INFO,
		"event=recover segments=%llu messages=%llu bytes=%llu torn_tails=%llu discarded_partial=%llu",
		(unsigned long long)st.segments, (unsigned long long)st.messages,
		(unsigned long long)st.bytes, (unsigned long long)st.torn,
		(unsigned long long)st.orphans);
	return 0;
}

void spool_close(struct spool *sp)
{
	if (sp->lockfd >= 0)
		close(sp->lockfd);
	if (sp->dirfd >= 0)
		close(sp->dirfd);
	sp->dirfd = sp->lockfd = -1;
}

/* ---- writing ------------------------------------------------------------- */

void spool_worker_init(struct spool_worker *sw, struct spool *sp, struct ring *r)
{
	memset(sw, 0, sizeof(*sw));
	sw->sp = sp;
	sw->ring = r;
}

static void seg_maybe_close(struct spool_worker *sw, struct spool_seg *s)
{
	if (s == sw->cur || s->users || s->writes || s->dirty || s->syncing)
		return;
	struct spool_seg **pp = &sw->segs;
	while (*pp != s)
		pp = &(*pp)->next;
	*pp = s->next;
	close(s->fd);
	free(s);
}

void spool_worker_free(struct spool_worker *sw)
{
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
}

static struct spool_seg *new_segment(struct spool_worker *sw, int *err)
{
	uint64_t seq = atomic_fetch_add(&sw->sp->next_seq, 1);
	char name[64];
	snprintf(name, sizeof(name), SEG_PREFIX "%016" PRIx64 SEG_SUFFIX, seq);
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
	struct spool_seg *s = calloc(1, sizeof(*s));
	if (!s) {
		*err = ENOMEM;
		close(fd);
		unlinkat(sw->sp->dirfd, name, 0);
		return NULL;
	}
	s->fd = fd;
	s->seq = seq;
	s->next = sw->segs;
	sw->segs = s;
	sw->dir_dirty = true;
	return s;
}

struct spool_msg *spool_msg_begin(struct spool_worker *sw, uint64_t id, int *err)
{
	/* A message stays in the segment it starts in (it may run past the
	 * preallocated end); new messages move on once one is 7/8 full. */
	if (!sw->cur || sw->cur->tail >= sw->sp->segment_bytes / 8 * 7) {
		struct spool_seg *s = new_segment(sw, err);
		if (!s)
			return NULL;
		struct spool_seg *old = sw->cur;
		sw->cur = s;
		if (old)
			seg_maybe_close(sw, old);
	}
	struct spool_msg *m = calloc(1, sizeof(*m));
	if (!m) {
		*err = ENOMEM;
		return NULL;
	}
	m->seg = sw->cur;
	m->id = id;
	m->open = true;
	sw->cur->users++;
	return m;
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

static void submit(struct spool_worker *sw, struct spool_msg *m, struct spool_write *w,
		   uint8_t type, const void *payload, size_t n)
{
	w->hdr = (struct spool_rec_hdr){.magic = SPOOL_MAGIC, .type = type,
					.len = (uint32_t)n, .msg = m->id};
	w->hdr.crc = spool_rec_crc(&w->hdr, payload, n);
	w->iov[0] = (struct iovec){&w->hdr, sizeof(w->hdr)};
	w->iov[1] = (struct iovec){(void *)payload, n};
	w->msg = m;
	w->expect = (uint32_t)(sizeof(w->hdr) + n);
	struct spool_seg *s = m->seg;
	uint64_t off = s->tail;
	s->tail += w->expect;
	s->writes++;
	m->pending++;
	sw->pending_writes++;
	ring_writev(sw->ring, s->fd, w->iov, 2, off, ring_tag_ptr(OP_SPOOL_WRITE, w));
}

bool spool_msg_append(struct spool_worker *sw, struct spool_msg *m, const void *p,
		      size_t n, int bid)
{
	if (m->err || n == 0)
		return false;
	struct spool_write *w = write_alloc(sw);
	void *copy = NULL;
	if (w && bid < 0) {
		copy = malloc(n);
		if (copy)
			memcpy(copy, p, n);
	}
	if (!w || (bid < 0 && !copy)) {
		free(w);
		m->err = ENOMEM;
		return false;
	}
	w->owned = copy;
	w->bid = bid;
	m->chunks++;
	m->bytes += n;
	submit(sw, m, w, SPOOL_REC_CHUNK, copy ? copy : p, n);
	return true;
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
	w->bid = -1;
	submit(sw, m, w, SPOOL_REC_COMMIT, rec, len);
}

static void msg_free(struct spool_worker *sw, struct spool_msg *m)
{
	struct spool_seg *s = m->seg;
	s->users--;
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
	struct spool_seg *s = m->seg;
	*bid = wr->bid;
	if (res != (int)wr->expect) {
		if (!m->err)
			m->err = res < 0 ? -res : EIO;
		log_msg(LOG_ERROR, "event=store_error op=write segment=%016" PRIx64 " error=\"%s\"",
			s->seq, res < 0 ? strerror(-res) : "short write");
	} else {
		s->dirty = true;
	}
	s->writes--;
	m->pending--;
	sw->pending_writes--;
	free(wr->owned);
	wr->next_free = sw->free_writes;
	sw->free_writes = wr;
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
		s->syncing = true;
		ring_fsync(sw->ring, s->fd, true, tag);
		n++;
	}
	if (sw->dir_dirty) {
		/* New segment files become durable with their directory entry. */
		sw->dir_dirty = false;
		ring_fsync(sw->ring, sw->sp->dirfd, false, tag);
		n++;
	}
	sw->sync_inflight = n;
	return n;
}

bool spool_sync_done(struct spool_worker *sw, int res, bool *ok)
{
	if (res < 0) {
		sw->sync_ok = false;
		log_msg(LOG_ERROR, "event=store_error op=fdatasync error=\"%s\"", strerror(-res));
	}
	if (--sw->sync_inflight)
		return false;
	/* The batch is over: segments may close now. */
	for (struct spool_seg *s = sw->segs, *next; s; s = next) {
		next = s->next;
		s->syncing = false;
		seg_maybe_close(sw, s);
	}
	*ok = sw->sync_ok;
	return true;
}
