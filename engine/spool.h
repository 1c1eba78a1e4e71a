/* The spool: per-worker append-only log segments holding every accepted
 * message in wire form, with group commit (one fdatasync covers every
 * message whose writes completed before it) and crash recovery by scanning
 * checksummed records. Message bytes are written from the receive buffers
 * as they are (zero copy). Delivery state records arrive with delivery. */
#ifndef POSTERN_SPOOL_H
#define POSTERN_SPOOL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define SPOOL_SEGMENT_BYTES (64ull << 20)
#define SPOOL_MAGIC 0x31505350u /* "PSP1" */
#define SPOOL_SEG_PREFIX "seg-"
#define SPOOL_SEG_SUFFIX ".log"
/* A segment being deleted by the reaper (spool_reaper_start): never read. */
#define SPOOL_SEG_GONE ".deleting"

/* A segment's file name in the spool directory. */
void spool_seg_name(char *buf, size_t cap, uint64_t seq);

enum spool_rec_type { SPOOL_REC_CHUNK = 1, SPOOL_REC_COMMIT = 2, SPOOL_REC_STATE = 3 };

/* On disk, little-endian. crc covers type, len, msg and the payload. */
struct spool_rec_hdr {
	uint32_t magic;
	uint8_t type;
	uint8_t pad[3];
	uint32_t len;
	uint32_t crc;
	uint64_t msg;
};

/* COMMIT payload: this, then the envelope block ("POSTERN/1\r\n...\r\n\r\n"). */
struct spool_commit_hdr {
	uint64_t bytes;    /* message bytes in all chunks */
	uint32_t chunks;
	uint32_t envlen;
};

/* STATE payload: this, then text (the reply or reason) of textlen bytes.
 * Written into the segment of the message it is about, so a segment is
 * self-contained and recovery sees a state only if every record before it
 * survived: a bounce written ahead of the FAILED records it answers is
 * never lost while they survive. */
enum spool_state_kind {
	SPOOL_ST_DELIVERED = 1,   /* recipient: done, next hop took it */
	SPOOL_ST_FAILED = 2,      /* recipient: done, failed (DSN written if owed) */
	SPOOL_ST_DEFERRED = 3,    /* message: attempts, next attempt, last error */
	SPOOL_ST_DELAY_NOTIFIED = 4, /* message: the delay DSN was written */
	SPOOL_ST_MOVED = 5,       /* message: a durable copy is in a later segment;
				   * this one is finished, whatever becomes of that */
	SPOOL_ST_REMOVED = 6,     /* message: deleted by an operator: finished */
	SPOOL_ST_HELD = 7,        /* message: held by an operator (text: why) */
	SPOOL_ST_RELEASED = 8,    /* message: released (or retried): due at next_ms */
};
#define SPOOL_STATE_MSG 0xffffffffu

struct spool_state_rec {
	uint32_t rcpt;           /* recipient index, or SPOOL_STATE_MSG */
	uint8_t kind;            /* enum spool_state_kind */
	uint8_t pad;
	uint16_t textlen;
	uint32_t attempts;
	uint32_t pad2;
	int64_t time_ms;         /* wall clock */
	int64_t next_ms;         /* DEFERRED: next attempt, wall clock */
};

enum { SPOOL_RCPT_PENDING, SPOOL_RCPT_DELIVERED, SPOOL_RCPT_FAILED };

/* A message's delivery state, summed over its STATE records. */
struct spool_msg_state {
	unsigned nrcpt;
	unsigned pending;
	uint32_t attempts;
	int64_t last_ms, next_ms;
	bool delay_notified;
	bool moved;              /* SPOOL_ST_MOVED: superseded by a later copy */
	bool removed;            /* SPOOL_ST_REMOVED */
	int8_t hold;             /* the last of HELD (1) and RELEASED (-1); 0: neither,
				  * the envelope's held: line decides */
	char last_error[256];
	char last_held[64];      /* the HELD record's reason */
	uint8_t *rcpt;           /* SPOOL_RCPT_* per recipient (nrcpt) */
};

uint32_t spool_crc32c(uint32_t crc, const void *p, size_t n);
/* The same without the CPU's instruction (for tests and other CPUs). */
uint32_t spool_crc32c_sw(uint32_t crc, const void *p, size_t n);
uint32_t spool_rec_crc(const struct spool_rec_hdr *h, const void *payload, size_t len);

/* Shared by all workers; set up by main. */
/* Which segment holds the copy of a message recovery must use: after a
 * compaction moved it, and before the old segment was deleted, there are
 * two; the later segment is the newer copy. Built by spool_open(). */
struct spool_owner {
	uint64_t id;
	uint64_t seq;
};

struct spool {
	int dirfd;
	int lockfd;
	_Atomic uint64_t next_seq;   /* segment numbers, never reused */
	uint64_t segment_bytes;      /* preallocated size of a segment */
	struct spool_owner *owner;   /* open addressing on id; freed after recovery */
	size_t owner_cap;
	size_t used;
	uint64_t *recover;           /* segments present at open, for recovery */
	size_t nrecover;
	struct spool_reaper *reaper; /* NULL: finished segments go on the worker */
};

/* Finished segments are deleted by a thread of their own once it runs:
 * the last close of a written 64 MiB segment frees its blocks and page
 * cache, 13 ms on ext4 (measured), a stall of every session on the worker
 * that did it. Deferring a deletion is what a crash before it does, which
 * recovery handles already (the segment's messages are all finished and
 * that is durable). 0, or -1 (errno) and deletions stay on the workers.
 * spool_close() deletes what is queued and stops the thread. */
int spool_reaper_start(struct spool *sp);
/* Returns once every deletion queued so far is done (tests). */
void spool_reaper_wait(struct spool *sp);
void spool_reaper_stop(struct spool *sp);

/* The segment whose copy of message id recovery uses (0: unknown).
 * spool_owner_free() also drops the list of segments to recover. */
uint64_t spool_owner_seq(const struct spool *sp, uint64_t id);
void spool_owner_free(struct spool *sp);

/* Locks the directory, scans what is there (logging what recovery found)
 * and prepares new segment numbers. 0, or -1 with err filled. */
int spool_open(struct spool *sp, const char *dir, uint64_t segment_bytes, char *err,
	       size_t errlen);
void spool_close(struct spool *sp);

/* A complete message found by a scan. Pointers are valid during the
 * callback only. */
struct spool_found {
	uint64_t id;
	uint64_t seq;              /* segment */
	uint64_t bytes;            /* message bytes */
	uint32_t chunks;
	const char *env;           /* envelope block */
	size_t envlen;
	const struct iovec *chunk; /* the message bytes, in order */
	const uint64_t *chunk_off; /* where each chunk's bytes are in the segment */
	const struct spool_msg_state *state;
};

struct spool_scan_stats {
	uint64_t segments, messages, bytes;
	uint64_t finished;         /* complete messages with nothing left to deliver */
	uint64_t torn;             /* segments ending in a bad record */
	uint64_t orphans;          /* messages with chunks but no commit */
};

/* Reads every segment in dir (read-only) and calls fn for every complete
 * message that still has recipients to deliver (all of them when all is
 * set). Safe to run while workers append. */
int spool_scan(int dirfd, void (*fn)(void *arg, const struct spool_found *m),
	       void *arg, struct spool_scan_stats *st);
int spool_scan_all(int dirfd, void (*fn)(void *arg, const struct spool_found *m),
		   void *arg, struct spool_scan_stats *st, bool all);
/* One segment; *tail is where its valid records end (new records go
 * there). -1 when it cannot be read. */
int spool_scan_segment(int dirfd, uint64_t seq,
		       void (*fn)(void *arg, const struct spool_found *m), void *arg,
		       struct spool_scan_stats *st, bool all, uint64_t *tail);
/* Segment numbers in the directory, sorted (malloc'd; NULL on error). */
uint64_t *spool_segments(int dirfd, size_t *count);

/* ---- per worker ------------------------------------------------------- */

struct io;
struct spool_msg;
struct spool_seg;
struct worker_metrics;

/* What the group commit tells the layers above. */
struct spool_hooks {
	/* A message handed to spool_commit_add() is durable (ok) or failed. */
	void (*durable)(void *arg, struct spool_msg *m, bool ok);
	/* A flush starts / ended: compaction learns which copies it covers. */
	void (*flush_started)(void *arg);
	void (*flush_done)(void *arg, bool ok);
	void *arg;
};

/* One message being received; lives until its writes are done and the
 * session has finished with it. */
struct spool_msg {
	struct spool_seg *seg;
	uint64_t id;
	uint64_t bytes;
	uint32_t chunks;
	uint32_t off_cap;
	uint64_t *off;             /* segment offset of each chunk's bytes */
	uint32_t *len;
	unsigned pending;          /* writes in flight */
	int err;                   /* first error (errno) */
	bool open;                 /* the session still holds it */
	void *owner;               /* the session, or the queued notice (internal) */
	bool internal;             /* generated by the queue (a DSN) */
	bool move;                 /* a copy made by compaction (owner: struct qmove) */
	bool pickup;               /* from the pickup directory (owner: its job) */
	bool committed;            /* COMMIT record submitted */
	uint64_t end;              /* segment offset just past its COMMIT record */
};

/* Message bytes go to disk in records of at most this much: a buffer the
 * spool is handed whole (a compaction copy, a bounce with the original
 * attached) is written as several records over one shared allocation.
 * Recovery accepts any record that fits its segment; keeping them small
 * keeps a torn tail's damage and a scan's checksum work per record small. */
#define SPOOL_CHUNK_MAX (1u << 20)

/* One malloc'd buffer behind several chunk records: freed with the last. */
struct spool_shared {
	void *buf;
	unsigned refs;
};

/* A write in flight; its address is the completion tag. */
struct spool_write {
	struct spool_rec_hdr hdr;
	struct iovec iov[2];
	struct spool_msg *msg;     /* NULL for a STATE record */
	struct spool_seg *seg;
	uint64_t off;              /* where the record starts */
	struct spool_write *prev, *next; /* the segment's writes in flight, by offset */
	void *owned;               /* payload copy to free, or NULL */
	struct spool_shared *shared; /* or a share of one, or NULL */
	int bid;                   /* provided buffer to give back, or -1 */
	uint32_t expect;
	struct spool_write *next_free;
};

struct spool_worker {
	struct spool *sp;
	struct io *io;
	struct spool_hooks hooks;
	struct worker_metrics *m;  /* fsync and flush counters */
	struct spool_msg **ready;  /* written, waiting for the next flush */
	unsigned nready, ready_cap;
	struct spool_msg **batch;  /* covered by the flush in flight */
	unsigned nbatch, batch_cap;
	bool flushing;
	struct spool_seg *cur;     /* where new messages go */
	struct spool_seg *segs;    /* every open segment */
	struct spool_write *free_writes;
	bool dir_dirty;            /* a segment was created since the last sync */
	unsigned sync_inflight;    /* fsyncs of the current batch not yet done */
	unsigned ndirty;           /* segments with s->dirty set */
	unsigned pending_writes;   /* all writes in flight */
	uint64_t dirt_since_ms;    /* written bytes no message waits for, since (0: none) */
	bool dirt_timer;           /* a timeout is armed for them */
	struct spool_spare *spare; /* the next segment, being zeroed ahead (or NULL) */
	unsigned cur_flushes;      /* fdatasyncs of the current segment */
	bool sync_ok;
	bool stopping;             /* closing down: segments are kept */
};

/* m (may be NULL in tests) receives the fsync and flush counters. */
void spool_worker_init(struct spool_worker *sw, struct spool *sp, struct io *io,
		       const struct spool_hooks *h, struct worker_metrics *m);
void spool_worker_free(struct spool_worker *sw);

/* Starts a message in the current segment (a new one when it is full).
 * NULL with *err set (ENOSPC when the disk is full). */
struct spool_msg *spool_msg_begin(struct spool_worker *sw, uint64_t id, int *err);
/* Appends message bytes. bid >= 0: p lies in that provided buffer and is
 * written in place; spool_write_done() hands bid back when the write is
 * done. bid < 0: p is copied. Returns false when nothing was written (the
 * message has failed already): the caller keeps its buffer. */
bool spool_msg_append(struct spool_worker *sw, struct spool_msg *m, const void *p,
		      size_t n, int bid);
/* Appends n bytes at p, a malloc'd buffer the spool takes over (and frees,
 * whatever the outcome): no copy. */
bool spool_msg_append_owned(struct spool_worker *sw, struct spool_msg *m, void *p, size_t n);
/* Writes the COMMIT record. rec (malloc'd, len bytes) starts with room for
 * a struct spool_commit_hdr, which this fills in, followed by the envelope
 * block; the spool owns rec from here on. */
void spool_msg_commit(struct spool_worker *sw, struct spool_msg *m, char *rec,
		      size_t len);
/* The one way a message's COMMIT record is made: its envelope block
 * (envelope_write's fields) behind the commit header. false when memory
 * is short: nothing was written, the caller releases m. */
struct smtp_envelope;
bool spool_msg_commit_envelope(struct spool_worker *sw, struct spool_msg *m, const char *id,
			       const struct smtp_envelope *env, const char *connector,
			       const char *client, const char *helo, int64_t arrival);
/* The session lets go: after the sync that covered it, or when the message
 * will not be committed (its chunks stay as an orphan recovery ignores). */
void spool_msg_release(struct spool_worker *sw, struct spool_msg *m);

/* Segments pinned by queued messages: a segment is deleted once nothing
 * pins it, no message is being written into it, and its last records are
 * durable (every message in it is finished). */
void spool_seg_hold(struct spool_seg *s, uint64_t bytes);
void spool_seg_put(struct spool_worker *sw, struct spool_seg *s, uint64_t bytes);
/* A segment worth compacting: no longer written to, and less than a
 * quarter of what it holds is still queued. NULL when there is none. */
struct spool_seg *spool_compact_candidate(struct spool_worker *sw);
int spool_seg_fd(const struct spool_seg *s);
/* Where the segment's next record goes (the end of the last one). */
uint64_t spool_seg_tail(const struct spool_seg *s);
uint64_t spool_seg_seq(const struct spool_seg *s);

/* Takes over a segment found at start (recovery): new records go at tail.
 * NULL with errno on failure. */
struct spool_seg *spool_seg_adopt(struct spool_worker *sw, uint64_t seq, uint64_t tail);

/* Appends a STATE record to the segment; text is copied. Durable after the
 * next group commit (spool_dirty() tells one is due) that starts once
 * spool_seg_written_prefix() has passed spool_seg_tail() as it was right
 * after the write. */
bool spool_state_write(struct spool_worker *sw, struct spool_seg *s, uint64_t msg,
		       const struct spool_state_rec *rec, const char *text);
/* Starts a message in a given segment (generated notices go into the
 * segment of the message they are about: see spool_state_rec). */
struct spool_msg *spool_msg_begin_in(struct spool_worker *sw, struct spool_seg *s,
				     uint64_t id, int *err);

/* Something written is not yet durable. */
bool spool_dirty(const struct spool_worker *sw);

/* Applies one STATE payload to st (nrcpt, pending and a zeroed rcpt[] set
 * beforehand). */
void spool_state_apply(struct spool_msg_state *st, const void *payload, size_t len);

/* A write completed. Returns its message (NULL if the session has let go
 * of it already) and the provided buffer to give back (or -1). */
struct spool_msg *spool_write_done(struct spool_worker *sw, struct spool_write *wr,
				   int res, int *bid);

static inline bool spool_msg_written(const struct spool_msg *m)
{
	return m->committed && m->pending == 0;
}

/* Everything in the segment before this offset has been written (no write
 * before it is still in flight). Recovery stops at the first hole, so a
 * message is covered by an fdatasync only if it ends before this point
 * when the fdatasync starts: its own writes being done is not enough. */
uint64_t spool_seg_written_prefix(const struct spool_seg *s);

/* A write before this offset failed, or an fdatasync that covered part of
 * what lies before it: recovery, which stops at the first bad record, would
 * not find a record ending there. The segment takes no new messages. */
bool spool_seg_lost_before(const struct spool_seg *s, uint64_t end);

/* The message's first error (errno), EIO when something before its end
 * in the segment was lost; 0 when it can be acknowledged once flushed. */
int spool_msg_error(const struct spool_msg *m);

static inline bool spool_msg_flushable(const struct spool_msg *m)
{
	return spool_msg_written(m) && m->end <= spool_seg_written_prefix(m->seg);
}

/* Group commit. A written message (spool_msg_written) waits for the next
 * flush; hooks.durable answers it once the fdatasync that covers it is
 * done. false: out of memory (not added). */
bool spool_commit_add(struct spool_worker *sw, struct spool_msg *m);
/* Once per loop turn, after that turn's completions: starts a flush when
 * none is in flight and a message waits, or when bytes no message waits
 * for (state records) have waited SPOOL_DIRT_WAIT_MS or at_once (the
 * worker stops or drains). now_ms: the loop's monotonic clock. */
void spool_commit_start(struct spool_worker *sw, uint64_t now_ms, bool at_once);
/* An IO_OP_SPOOL_SYNC completion. */
void spool_commit_on_sync(struct spool_worker *sw, int res, uint64_t tag);

/* The fsyncs under the group commit: every segment written since the last
 * sync (and the directory when a segment was created), tagged tag. Returns
 * how many were submitted; 0 means everything written is durable. */
unsigned spool_sync_start(struct spool_worker *sw, uint64_t tag);
/* The directory's fsync carries this bit in its tag (slot 1). */
#define SPOOL_SYNC_DIR (1ull << 32)
/* The timeout that ends the wait of bytes no message waits for (slot 2):
 * see spool_commit_start. */
#define SPOOL_SYNC_TIMER (2ull << 32)
/* How long bytes no message waits for (state records, notices, moves, a
 * new segment's directory entry) wait for a message's flush to carry them
 * before they get one of their own. */
#define SPOOL_DIRT_WAIT_MS 5
/* One fsync of the batch completed; true when the batch is done, with *ok
 * telling whether every fsync succeeded. */
bool spool_sync_done(struct spool_worker *sw, int res, bool dir, bool *ok);

#endif
