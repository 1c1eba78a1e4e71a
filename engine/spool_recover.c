/* Spool, the reading side (see spool.h): opening and locking the
 * directory, scanning segments for complete messages and their delivery
 * state (recovery after a crash, the spool tool, show queue) and the table
 * of which segment holds a moved message's newer copy. A scan stops at the
 * first record whose magic, length or checksum is wrong: that is the torn
 * tail of a crash. Writes nothing to segments. */
#include "spool.h"

#include <dirent.h>
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

#include "dirs.h"
#include "log.h"

/* ---- directory and recovery ------------------------------------------- */

static bool seg_name_seq(const char *name, uint64_t *seq)
{
	size_t n = strlen(name);
	if (n != strlen(SPOOL_SEG_PREFIX) + 16 + strlen(SPOOL_SEG_SUFFIX) ||
	    strncmp(name, SPOOL_SEG_PREFIX, strlen(SPOOL_SEG_PREFIX)) != 0 ||
	    strcmp(name + n - strlen(SPOOL_SEG_SUFFIX), SPOOL_SEG_SUFFIX) != 0)
		return false;
	char *end;
	*seq = strtoull(name + strlen(SPOOL_SEG_PREFIX), &end, 16);
	return end == name + strlen(SPOOL_SEG_PREFIX) + 16;
}

/* What a crash left of the reaper's deletions (spool.c): segments renamed
 * out of recovery's sight, whole or shortened; they go. */
static void remove_gone(int dirfd)
{
	int dfd = dup(dirfd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		if (dfd >= 0)
			close(dfd);
		return;
	}
	struct dirent *e;
	size_t glen = strlen(SPOOL_SEG_GONE);
	while ((e = readdir(d))) {
		size_t n = strlen(e->d_name);
		char seg[64];
		uint64_t seq;
		if (n <= glen || n - glen >= sizeof(seg) ||
		    strcmp(e->d_name + n - glen, SPOOL_SEG_GONE) != 0)
			continue;
		memcpy(seg, e->d_name, n - glen);
		seg[n - glen] = 0;
		if (!seg_name_seq(seg, &seq))
			continue;
		if (unlinkat(dirfd, e->d_name, 0) == 0)
			log_msg(LOG_INFO, "event=segment_deleted segment=%016" PRIx64 " reason=left_by_a_crash", seq);
		else
			log_msg(LOG_WARN, "event=store_error op=unlink file=%s error=\"%s\"", e->d_name,
				strerror(errno));
	}
	closedir(d);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Segment numbers present in the directory, sorted. */
uint64_t *spool_segments(int dirfd, size_t *count)
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
	uint64_t *off;
	bool committed;
	uint32_t order;          /* commit order within the segment */
	const char *env;
	size_t envlen;
	struct spool_msg_state st;
	/* STATE records before the COMMIT (a compaction copy's state): applied
	 * when the COMMIT comes, so the copy is never seen without them. */
	const uint8_t **pre;
	uint32_t *prelen;
	uint32_t npre, precap;
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
		if (t->slot[i].id && t->slot[i].iov && !t->slot[i].committed)
			(*orphans)++;
		free(t->slot[i].iov);
		free(t->slot[i].off);
		free(t->slot[i].st.rcpt);
		free(t->slot[i].pre);
		free(t->slot[i].prelen);
	}
	free(t->slot);
}

static bool pre_state_add(struct pending_msg *pm, const uint8_t *payload, uint32_t len)
{
	if (pm->npre == pm->precap) {
		uint32_t ncap = pm->precap ? pm->precap * 2 : 4;
		const uint8_t **np = realloc(pm->pre, ncap * sizeof(*np));
		if (np)
			pm->pre = np;
		uint32_t *nl = np ? realloc(pm->prelen, ncap * sizeof(*nl)) : NULL;
		if (nl)
			pm->prelen = nl;
		if (!nl)
			return false;
		pm->precap = ncap;
	}
	pm->pre[pm->npre] = payload;
	pm->prelen[pm->npre++] = len;
	return true;
}

static unsigned count_rcpts(const char *env, size_t len)
{
	unsigned n = 0;
	for (const char *p = env, *end = env + len; p + 8 <= end; p++) {
		p = memmem(p, (size_t)(end - p), "\r\nrcpt: ", 8);
		if (!p)
			break;
		n++;
	}
	return n;
}

void spool_state_apply(struct spool_msg_state *st, const void *payload, size_t len)
{
	struct spool_state_rec r;
	if (len < sizeof(r))
		return;
	memcpy(&r, payload, sizeof(r));
	size_t tl = r.textlen <= len - sizeof(r) ? r.textlen : len - sizeof(r);
	switch (r.kind) {
	case SPOOL_ST_DELIVERED:
	case SPOOL_ST_FAILED:
		if (r.rcpt < st->nrcpt && st->rcpt[r.rcpt] == SPOOL_RCPT_PENDING && !st->moved) {
			st->rcpt[r.rcpt] = r.kind == SPOOL_ST_DELIVERED ? SPOOL_RCPT_DELIVERED
									: SPOOL_RCPT_FAILED;
			st->pending--;
		}
		break;
	case SPOOL_ST_DEFERRED:
		st->attempts = r.attempts;
		st->last_ms = r.time_ms;
		st->next_ms = r.next_ms;
		if (tl >= sizeof(st->last_error))
			tl = sizeof(st->last_error) - 1;
		memcpy(st->last_error, (const char *)payload + sizeof(r), tl);
		st->last_error[tl] = '\0';
		break;
	case SPOOL_ST_DELAY_NOTIFIED:
		st->delay_notified = true;
		break;
	case SPOOL_ST_MOVED:
		/* Once the copy was durable the original was marked so: the
		 * copy's segment may go first (all finished) without this one
		 * coming back to life at the next start. */
		st->moved = true;
		st->pending = 0;
		break;
	case SPOOL_ST_REMOVED:
		st->removed = true;
		st->pending = 0;
		break;
	case SPOOL_ST_HELD:
		st->hold = 1;
		if (tl >= sizeof(st->last_held))
			tl = sizeof(st->last_held) - 1;
		memcpy(st->last_held, (const char *)payload + sizeof(r), tl);
		st->last_held[tl] = '\0';
		break;
	case SPOOL_ST_RELEASED:
		st->hold = -1;
		st->next_ms = r.next_ms;
		break;
	}
}

static int cmp_order(const void *a, const void *b)
{
	const struct pending_msg *x = *(struct pending_msg *const *)a;
	const struct pending_msg *y = *(struct pending_msg *const *)b;
	return x->order < y->order ? -1 : x->order > y->order;
}

/* Calls fn for the committed messages of a scanned segment, in commit
 * order, with the states that followed them. */
static void report_committed(struct msg_table *t, uint64_t seq, uint32_t ncommitted,
			     void (*fn)(void *arg, const struct spool_found *m), void *arg,
			     struct spool_scan_stats *st, bool all)
{
	struct pending_msg **v = ncommitted ? malloc(ncommitted * sizeof(*v)) : NULL;
	size_t n = 0;
	for (size_t i = 0; v && i < t->cap; i++)
		if (t->slot[i].id && t->slot[i].committed && n < ncommitted)
			v[n++] = &t->slot[i];
	if (v)
		qsort(v, n, sizeof(*v), cmp_order);
	for (size_t i = 0; i < n; i++) {
		struct pending_msg *pm = v[i];
		if (pm->st.pending == 0)
			st->finished++;
		if (!fn || (!all && pm->st.pending == 0))
			continue;
		struct spool_found f = {
			.id = pm->id, .seq = seq, .bytes = pm->bytes, .chunks = pm->chunks,
			.env = pm->env, .envlen = pm->envlen, .chunk = pm->iov,
			.chunk_off = pm->off, .state = &pm->st,
		};
		fn(arg, &f);
	}
	free(v);
}


int spool_scan_segment(int dirfd, uint64_t seq,
		       void (*fn)(void *arg, const struct spool_found *m), void *arg,
		       struct spool_scan_stats *st, bool all, uint64_t *tail)
{
	char name[64];
	*tail = 0;
	spool_seg_name(name, sizeof(name), seq);
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	struct stat sb;
	if (fstat(fd, &sb) < 0) {
		close(fd);
		return -1;
	}
	if (sb.st_size == 0) {
		close(fd);
		return 0;
	}
	size_t size = (size_t)sb.st_size;
	const uint8_t *base = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (base == MAP_FAILED)
		return -1;
	st->segments++;
	struct msg_table t = {0};
	uint32_t ncommitted = 0;
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
		/* Any record that fits the segment and checks out is data,
		 * whatever its size: stopping at a valid one would lose it and
		 * every acknowledged message after it. */
		if (h.len > size - off - sizeof(h) || spool_rec_crc(&h, payload, h.len) != h.crc) {
			st->torn++;
			break;
		}
		struct pending_msg *pm = table_get(&t, h.msg, h.type != SPOOL_REC_STATE);
		if (!pm) {
			if (h.type != SPOOL_REC_STATE)
				break; /* out of memory */
		} else if (h.type == SPOOL_REC_CHUNK && !pm->committed) {
			if (pm->chunks == pm->cap) {
				uint32_t ncap = pm->cap ? pm->cap * 2 : 4;
				struct iovec *ni = realloc(pm->iov, ncap * sizeof(*ni));
				uint64_t *no = realloc(pm->off, ncap * sizeof(*no));
				if (ni)
					pm->iov = ni;
				if (no)
					pm->off = no;
				if (!ni || !no)
					break;
				pm->cap = ncap;
			}
			pm->off[pm->chunks] = off + sizeof(h);
			pm->iov[pm->chunks++] = (struct iovec){(void *)payload, h.len};
			pm->bytes += h.len;
		} else if (h.type == SPOOL_REC_COMMIT && !pm->committed &&
			   h.len >= sizeof(struct spool_commit_hdr)) {
			struct spool_commit_hdr ch;
			memcpy(&ch, payload, sizeof(ch));
			if (ch.chunks == pm->chunks && ch.bytes == pm->bytes &&
			    ch.envlen <= h.len - sizeof(ch)) {
				pm->committed = true;
				pm->order = ncommitted++;
				pm->env = (const char *)payload + sizeof(ch);
				pm->envlen = ch.envlen;
				pm->st.nrcpt = pm->st.pending = count_rcpts(pm->env, pm->envlen);
				pm->st.rcpt = calloc(pm->st.nrcpt ? pm->st.nrcpt : 1, 1);
				if (!pm->st.rcpt)
					break;
				st->messages++;
				st->bytes += pm->bytes;
				for (uint32_t k = 0; k < pm->npre; k++)
					spool_state_apply(&pm->st, pm->pre[k], pm->prelen[k]);
				pm->npre = 0;
			} else {
				free(pm->iov);
				free(pm->off);
				pm->iov = NULL;
				pm->off = NULL;
				pm->chunks = pm->cap = 0;
				pm->bytes = 0;
				pm->npre = 0;
			}
		} else if (h.type == SPOOL_REC_STATE && pm->committed) {
			spool_state_apply(&pm->st, payload, h.len);
		} else if (h.type == SPOOL_REC_STATE && pm->chunks) {
			if (!pre_state_add(pm, payload, h.len))
				break; /* out of memory */
		}
		off += sizeof(h) + h.len;
	}
	*tail = off;
	report_committed(&t, seq, ncommitted, fn, arg, st, all);
	table_free(&t, &st->orphans);
	munmap((void *)base, size);
	return 0;
}

static void owner_note(void *arg, const struct spool_found *f);

struct dedupe {
	struct spool owners;
	void (*fn)(void *arg, const struct spool_found *m);
	void *arg;
};

static void dedupe_note(void *arg, const struct spool_found *f)
{
	struct dedupe *d = arg;
	if ((d->owners.used + 1) * 2 > d->owners.owner_cap) {
		size_t ncap = d->owners.owner_cap ? d->owners.owner_cap * 2 : 1024;
		struct spool_owner *old = d->owners.owner;
		size_t ocap = d->owners.owner_cap;
		d->owners.owner = calloc(ncap, sizeof(*old));
		d->owners.owner_cap = d->owners.owner ? ncap : 0;
		d->owners.used = 0;
		for (size_t i = 0; i < ocap && d->owners.owner; i++)
			if (old[i].id) {
				struct spool_found g = {.id = old[i].id, .seq = old[i].seq};
				owner_note(&d->owners, &g);
			}
		free(old);
	}
	owner_note(&d->owners, f);
}

static void dedupe_report(void *arg, const struct spool_found *f)
{
	struct dedupe *d = arg;
	uint64_t seq = spool_owner_seq(&d->owners, f->id);
	if (!seq || seq == f->seq)
		d->fn(d->arg, f);
}

int spool_scan_all(int dirfd, void (*fn)(void *arg, const struct spool_found *m),
		   void *arg, struct spool_scan_stats *st, bool all)
{
	memset(st, 0, sizeof(*st));
	size_t n;
	uint64_t *seqs = spool_segments(dirfd, &n);
	if (!seqs)
		return -1;
	/* A message compaction moved may be in two segments until the old
	 * one goes: report the newer copy only (as recovery does). */
	struct dedupe d = {.fn = fn, .arg = arg};
	if (fn && n > 1) {
		struct spool_scan_stats ignored;
		memset(&ignored, 0, sizeof(ignored));
		for (size_t i = 0; i < n; i++) {
			uint64_t tail;
			spool_scan_segment(dirfd, seqs[i], dedupe_note, &d, &ignored, true, &tail);
		}
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t tail;
		spool_scan_segment(dirfd, seqs[i], fn ? dedupe_report : NULL, &d, st, all, &tail);
	}
	free(d.owners.owner);
	free(seqs);
	return 0;
}

int spool_scan(int dirfd, void (*fn)(void *arg, const struct spool_found *m),
	       void *arg, struct spool_scan_stats *st)
{
	return spool_scan_all(dirfd, fn, arg, st, false);
}

int spool_open(struct spool *sp, const char *dir, uint64_t segment_bytes, char *err,
	       size_t errlen)
{
	sp->dirfd = sp->lockfd = -1;
	sp->owner = NULL;
	sp->owner_cap = 0;
	sp->recover = NULL;
	sp->nrecover = 0;
	sp->reaper = NULL;
	sp->segment_bytes = segment_bytes ? segment_bytes : SPOOL_SEGMENT_BYTES;
	int ret = dirs_make(dir);
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
	remove_gone(sp->dirfd);
	size_t n;
	uint64_t *seqs = spool_segments(sp->dirfd, &n);
	if (!seqs) {
		snprintf(err, errlen, "spool_dir %s: cannot list: %s", dir, strerror(errno));
		spool_close(sp);
		return -1;
	}
	atomic_init(&sp->next_seq, n ? seqs[n - 1] + 1 : 1);
	sp->recover = seqs;
	sp->nrecover = n;
	/* One pass: the figures for the log, and who owns which message (the
	 * newest segment holding a committed copy: compaction may have left
	 * two). Finished copies count too: a moved copy delivered since must
	 * win over its old, still pending original. */
	struct spool_scan_stats st;
	memset(&st, 0, sizeof(st));
	struct dedupe d = {0};
	for (size_t i = 0; i < n; i++) {
		uint64_t tail;
		spool_scan_segment(sp->dirfd, seqs[i], dedupe_note, &d, &st, true, &tail);
	}
	sp->owner = d.owners.owner;
	sp->owner_cap = d.owners.owner_cap;
	sp->used = d.owners.used;
	log_msg(LOG_INFO,
		"event=recover segments=%llu messages=%llu bytes=%llu torn_tails=%llu discarded_partial=%llu finished=%llu",
		(unsigned long long)st.segments, (unsigned long long)(st.messages - st.finished),
		(unsigned long long)st.bytes, (unsigned long long)st.torn,
		(unsigned long long)st.orphans, (unsigned long long)st.finished);
	return 0;
}

void spool_close(struct spool *sp)
{
	spool_reaper_stop(sp);
	spool_owner_free(sp);
	if (sp->lockfd >= 0)
		close(sp->lockfd);
	if (sp->dirfd >= 0)
		close(sp->dirfd);
	sp->dirfd = sp->lockfd = -1;
}

static size_t owner_slot(const struct spool *sp, uint64_t id)
{
	size_t k = id * 0x9E3779B97F4A7C15ull % sp->owner_cap;
	while (sp->owner[k].id && sp->owner[k].id != id)
		k = (k + 1) % sp->owner_cap;
	return k;
}

uint64_t spool_owner_seq(const struct spool *sp, uint64_t id)
{
	if (!sp->owner_cap)
		return 0;
	size_t k = owner_slot(sp, id);
	return sp->owner[k].id == id ? sp->owner[k].seq : 0;
}

void spool_owner_free(struct spool *sp)
{
	free(sp->owner);
	sp->owner = NULL;
	sp->owner_cap = 0;
	free(sp->recover);
	sp->recover = NULL;
	sp->nrecover = 0;
}

static void owner_note(void *arg, const struct spool_found *f)
{
	struct spool *sp = arg;
	if (!sp->owner_cap)
		return;
	size_t k = owner_slot(sp, f->id);
	if (sp->owner[k].id != f->id)
		sp->used++;
	if (sp->owner[k].id != f->id || sp->owner[k].seq < f->seq)
		sp->owner[k] = (struct spool_owner){f->id, f->seq};
}
