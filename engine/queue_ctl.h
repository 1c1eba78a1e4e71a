/* Queue control (DESIGN B.11): the operator's requests on the queue
 * (show queue, show destinations, hold, release, delete, bounce, retry),
 * their filters, the one request every worker answers a part of, and
 * the text and JSON the answers are written in. Owns no message: each
 * worker's queue (queue.c) applies a part to its own; postern-spool
 * formats what it reads from a stopped node's spool the same way. */
#ifndef POSTERN_QUEUE_CTL_H
#define POSTERN_QUEUE_CTL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "mailbox.h"

enum qctl_op {
	QCTL_SHOW, QCTL_DESTINATIONS, QCTL_HOLD, QCTL_RELEASE, QCTL_DELETE, QCTL_BOUNCE,
	QCTL_RETRY,
};

enum qctl_state { QCTL_ANY, QCTL_ACTIVE, QCTL_DEFERRED, QCTL_HELD };

#define QCTL_DEFAULT_LIMIT 100
#define QCTL_MAX_LIMIT 10000
#define QCTL_MAX_OFFSET 1000000
#define QCTL_PATTERN_MAX 300

/* Which messages: by id, or all that match every filter given. Values
 * are addresses with or without <>, '*' matching any run of characters. */
struct qctl_filter {
	bool by_id;
	uint64_t id;
	char sender[QCTL_PATTERN_MAX];   /* "" not given; "<>" the null sender */
	bool has_sender;
	char rcpt[QCTL_PATTERN_MAX];
	char domain[QCTL_PATTERN_MAX];
	char client[64];
	enum qctl_state state;
};

struct qctl_cmd {
	enum qctl_op op;
	struct qctl_filter f;
	bool json;
	unsigned limit;
	uint64_t offset;
};

/* Parses the words after the command's name ("ID", or "all" and
 * filters; for show queue filters and limit=/offset=). 0, or -1 with err
 * filled (a line for the operator). */
int qctl_parse(enum qctl_op op, const char *args, struct qctl_cmd *c, char *err, size_t cap);
/* "hold" -> QCTL_HOLD...; false for anything else. */
bool qctl_op_of(const char *word, enum qctl_op *op);
const char *qctl_op_name(enum qctl_op op);    /* "hold" */
const char *qctl_op_done(enum qctl_op op);    /* "held" */

/* ---- one message as the filters and the listings see it ----------------- */

enum qctl_rstate { QCTL_R_PENDING, QCTL_R_DELIVERED, QCTL_R_FAILED };

struct qctl_rview {
	const char *addr;
	enum qctl_rstate state;
	const char *status;       /* "" none yet */
	const char *reply;        /* NULL none */
};

struct qctl_view {
	uint64_t id;
	int64_t arrival;          /* unix seconds */
	uint64_t size;
	const char *from;         /* "" for the null sender */
	const char *client, *connector;
	enum qctl_state state;
	const char *held_reason;  /* when held */
	uint32_t attempts;
	int64_t next_ms;          /* wall clock; 0 due now */
	const char *last_error;   /* or NULL */
	unsigned nrcpt, pending;
	const struct qctl_rview *r;
};

bool qctl_match(const struct qctl_filter *f, const struct qctl_view *v);
/* The filter looks at recipients (a view without them, r NULL, is enough
 * otherwise: a scan of a million messages builds none). */
bool qctl_filter_needs_rcpts(const struct qctl_filter *f);
/* No filter at all: every message matches. */
bool qctl_filter_empty(const struct qctl_filter *f);
/* The message's row for show queue, text or JSON (one element of
 * "messages"), now in unix seconds. */
void qctl_write_row(FILE *out, const struct qctl_view *v, bool json, int64_t now);

/* ---- show destinations ---------------------------------------------------- */

struct qctl_dest {
	char *name;               /* a send connector's name, or a domain (MX) */
	uint64_t messages, recipients;
	int64_t oldest;           /* arrival of the oldest, unix seconds */
	int64_t next_ms;          /* earliest next attempt of one not held; INT64_MAX none */
	int64_t error_ms;         /* when last_error was seen (its message's last attempt) */
	char *last_error;
	uint64_t held;            /* of messages, held */
	bool throttled;
	uint64_t last_msg;        /* the last message counted (internal) */
};

struct qctl_dests {
	struct qctl_dest *d;      /* open addressing on name */
	size_t cap, used;
};

/* Counts one pending recipient of v for destination name. false: out of
 * memory. */
bool qctl_dests_add(struct qctl_dests *t, const char *name, const struct qctl_view *v,
		    bool throttled);
/* The same in two steps, for a caller that remembers the entry of a name
 * (valid while t->cap stays what it was: the table grows by rehashing). */
struct qctl_dest *qctl_dests_entry(struct qctl_dests *t, const char *name);
bool qctl_dest_count(struct qctl_dest *d, const struct qctl_view *v, bool throttled);
/* Adds every entry of from into t. */
bool qctl_dests_merge(struct qctl_dests *t, const struct qctl_dests *from);
void qctl_dests_free(struct qctl_dests *t);
void qctl_dests_write(FILE *out, const struct qctl_dests *t, bool json, int64_t now);

/* ---- a request across workers -------------------------------------------- */

struct qctl_req;

struct qctl_row {
	uint64_t id;
	char *text;               /* malloc'd */
};

struct qctl_seg;

/* One worker's share of a request. The worker fills in the results and
 * calls qctl_part_done once its changes are durable. */
struct qctl_part {
	struct mailbox_node node; /* first: posted to the worker */
	struct qctl_req *req;
	/* results */
	uint64_t matched;         /* messages the filters matched */
	uint64_t touched;         /* changed (hold...), or listed */
	uint64_t busy;            /* matched but in delivery or being moved */
	uint64_t skipped;         /* matched but nothing to do (held already...) */
	bool failed;              /* a change could not be made durable */
	struct qctl_row *rows;    /* show queue: ascending ids, at most offset+limit */
	size_t nrows;
	struct qctl_dests dests;
	/* the worker's: where its state records went, before they are durable */
	struct qctl_seg *segs;
	unsigned nsegs, segs_cap;
	unsigned inflight;        /* bounces whose records are not written yet */
	bool covered;             /* the flush in flight covers every record */
	struct qctl_part *next;   /* the queue's parts waiting for durability */
};

/* show queue deep into a large queue goes in two rounds, so that no
 * worker formats rows that are not shown: ids first (ids_only: rows
 * without text), then the rows of the page's id range (render). */
#define QCTL_ONE_ROUND 1000       /* offset + limit up to this: one round */

struct qctl_req {
	struct qctl_cmd cmd;
	int64_t now;              /* unix seconds at the start */
	bool ids_only;
	bool render;
	uint64_t render_lo, render_hi;
	uint64_t total;           /* render: what the first round counted */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned left;            /* parts not done */
	unsigned refs;            /* the asker and each part not done */
	unsigned nparts;
	struct qctl_part part[];
};

struct qctl_req *qctl_req_new(const struct qctl_cmd *c, unsigned nparts);
/* The worker is done with its part (any thread). */
void qctl_part_done(struct qctl_part *p);
/* The asker: waits until every part is done or timeout_ms passed; true
 * when all are done. */
bool qctl_req_wait(struct qctl_req *r, unsigned timeout_ms);
/* The asker lets go (the parts still out keep it alive). */
void qctl_req_put(struct qctl_req *r);

/* The first round's page: the ids from offset, limit of them, as the
 * range [lo, hi]; false when the page is empty. *total: matched. */
bool qctl_page(struct qctl_req *r, uint64_t *lo, uint64_t *hi, uint64_t *total);

/* The whole answer, from the parts: the listing, the destinations or
 * "held: N" with what was busy. 0, or -1 when the reply is an error (an
 * unknown id, a change not durable). */
int qctl_answer(FILE *out, struct qctl_req *r, bool complete);

/* The filter text of a command, for the admin log line ("all sender=..."). */
void qctl_filter_text(const struct qctl_cmd *c, char *buf, size_t cap);

#endif
