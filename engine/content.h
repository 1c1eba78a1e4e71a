/* Content rules (DESIGN B.9): every rule's pattern compiled into one
 * Hyperscan streaming database per configuration, a scratch per worker, and
 * the scan of one message as its bytes pass (body, header block, single
 * fields, envelope addresses) ending in a verdict at the end of data.
 * Knows nothing of sessions or the spool: session.c feeds it and acts. */
#ifndef POSTERN_CONTENT_H
#define POSTERN_CONTENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mime.h"

enum content_where { CONTENT_BODY, CONTENT_HEADERS, CONTENT_HEADER, CONTENT_SENDER,
		     CONTENT_RECIPIENT, CONTENT_WHERE_COUNT };
/* In precedence order: reject wins over hold over route; every matching
 * add_header applies. */
enum content_action { CONTENT_REJECT, CONTENT_HOLD, CONTENT_ROUTE, CONTENT_ADD_HEADER,
		      CONTENT_ACTION_COUNT };

extern const char *const content_action_names[CONTENT_ACTION_COUNT];
extern const char *const content_where_names[CONTENT_WHERE_COUNT];

struct content_rule {
	char *name;
	int line;
	enum content_where where;
	char *field;              /* CONTENT_HEADER: the field name ("Subject") */
	char *pattern;
	enum content_action action;
	char *header;             /* add_header: "Name: value" (no line break) */
	char *send_connector;     /* route: the send connector's name */
	unsigned stats_id;        /* hit counters' slot (metrics.h), by name across reloads */
};

struct hs_database;

struct content_rules {
	struct content_rule *rule;
	unsigned n;
	struct hs_database *db;   /* NULL without rules */
	unsigned wheres;          /* 1 << enum content_where present */
	uint64_t gen;             /* set by main per load: which scratch fits */
};

/* Compiles every rule into cr->db. false: *bad is the rule at fault and
 * msg Hyperscan's message. */
bool content_compile(struct content_rules *cr, unsigned *bad, char *msg, size_t cap);
void content_rules_free(struct content_rules *cr);

/* One per worker: the Hyperscan scratch, grown for each database it is
 * used with (a reload's new one, while sessions still use the old). */
struct hs_scratch;
struct content_worker {
	struct hs_scratch *scratch;
	uint64_t gen;             /* the rules it was last grown for */
};

void content_worker_free(struct content_worker *cw);

/* The outcome of a message's scan. */
struct content_verdict {
	const struct content_rule *reject, *hold, *route;
	unsigned nhits;
	bool failed;              /* Hyperscan failed: the message is not judged */
};

struct content_scan;

/* Starts the scan of a message (NULL: out of memory). */
struct content_scan *content_scan_begin(const struct content_rules *cr,
					struct content_worker *cw);
/* The client's message bytes, in order: DATA's wire form (stuffed) or
 * BDAT's raw octets. No copy is kept. */
void content_scan_data(struct content_scan *s, const char *p, size_t n, bool stuffed);
/* The end of data: the envelope's sender and recipients are scanned, the
 * streams closed, and the verdict given. hit(ctx, rule, where) is called
 * for each rule that matched, once. */
struct smtp_rcpt;
void content_scan_end(struct content_scan *s, const char *sender,
		      const struct smtp_rcpt *rcpt, unsigned nrcpt, struct content_verdict *v,
		      void (*hit)(void *ctx, const struct content_rule *r, enum content_where w),
		      void *ctx);
/* After content_scan_end: did rule i match? */
bool content_scan_hit(const struct content_scan *s, unsigned i);

struct smtp_envelope;
struct worker_metrics;
/* After a verdict that neither failed nor rejected: its marks into the
 * envelope: held (the holding rule's name), route (its send connector,
 * when nothing holds) and the field of every matching add_header rule, in
 * the order of the rules. false: out of memory. */
bool content_mark(const struct content_rules *cr, const struct content_scan *s,
		  const struct content_verdict *v, struct smtp_envelope *e);
/* " held=<rule>" or " route=<send connector>" (quoted for the log) for
 * the receive line of a message with those marks, else "". */
const char *content_marks_log(char *buf, size_t cap, const char *held, const char *route);
/* One hit, whichever action wins: counted in m (worker's) and logged
 * event=content_rule with the message id and the client. */
void content_hit_note(struct worker_metrics *m, unsigned worker, const char *id,
		      const char *client, const struct content_rule *r, enum content_where where);
void content_scan_free(struct content_scan *s);

#endif
