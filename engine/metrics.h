/* Counters and their presentation. Each worker owns its counters (relaxed
 * atomics written only by that worker, so the hot path has no shared cache
 * line); readers sum them. Connector counters are keyed by a stable id per
 * connector name, so they survive reloads. Renders `show stat`, `show info`
 * and the Prometheus text format (DESIGN B.4). */
#ifndef POSTERN_METRICS_H
#define POSTERN_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "content.h"
#include "smtp_server.h"

#define METRIC_CONNECTORS_MAX 256
#define METRIC_NAME_MAX 65

enum throttle_reason { THROTTLE_MESSAGE_RATE, THROTTLE_CONNECTIONS,
		       THROTTLE_CONNECTIONS_PER_SOURCE, THROTTLE_CONNECTIONS_PERCENTAGE,
		       THROTTLE_TABLE_FULL, /* a new source, no slot in throttle.c's table */
		       THROTTLE_REASONS };
extern const char *const throttle_reason_names[THROTTLE_REASONS];

struct connector_counters {
	_Atomic uint64_t throttled[THROTTLE_REASONS];
	_Atomic uint64_t connections;
	_Atomic uint64_t active;
	_Atomic uint64_t messages;
	_Atomic uint64_t bytes;
	_Atomic uint64_t rejected[SMTP_REJECT_COUNT];
	_Atomic uint64_t tls_ok;          /* STARTTLS handshakes completed */
	_Atomic uint64_t tls_failed;
	_Atomic uint64_t auth[3];         /* AUTH outcomes: enum auth_result */
};

enum auth_result { AUTH_RESULT_OK, AUTH_RESULT_FAILED, AUTH_RESULT_TEMPORARY, AUTH_RESULTS };
extern const char *const auth_result_names[AUTH_RESULTS];

/* Upper bounds, in microseconds, of postern_accept_latency_seconds. */
#define LATENCY_BUCKETS 14
extern const uint64_t latency_bounds_us[LATENCY_BUCKETS];

struct latency_hist {
	_Atomic uint64_t bucket[LATENCY_BUCKETS + 1]; /* last: +Inf */
	_Atomic uint64_t count;
	_Atomic uint64_t sum_us;
};

enum refuse_reason { REFUSE_NO_CONNECTOR, REFUSE_WORKER_FULL, REFUSE_SHUTDOWN,
		     REFUSE_DESCRIPTORS, REFUSE_COUNT };

/* Outcome of TLS towards a next hop, per session (DESIGN B.7). */
enum tls_out_result { TLS_OUT_OK, TLS_OUT_NOT_OFFERED, TLS_OUT_FAILED, TLS_OUT_UNTRUSTED,
		      TLS_OUT_NAME_MISMATCH, TLS_OUT_RESULTS };
extern const char *const tls_out_names[TLS_OUT_RESULTS];

struct send_counters {
	_Atomic uint64_t delivered;       /* recipients */
	_Atomic uint64_t deferred;
	_Atomic uint64_t bounced;
	_Atomic uint64_t throttled;
	_Atomic uint64_t table_full;      /* attempts not made: no throttle entry for the caps */
	_Atomic uint64_t connections;
	_Atomic uint64_t tls[TLS_OUT_RESULTS];
	_Atomic uint64_t auth[AUTH_RESULTS];  /* AUTH to the next hop, per session */
};

struct worker_metrics {
	struct connector_counters conn[METRIC_CONNECTORS_MAX];
	struct send_counters send[METRIC_CONNECTORS_MAX];
	_Atomic uint64_t expired;
	_Atomic uint64_t queue_messages;  /* gauges: messages queued now */
	_Atomic uint64_t queue_bytes;
	struct latency_hist latency;
	_Atomic uint64_t refused[REFUSE_COUNT];
	_Atomic uint64_t proxy_rejected;  /* PROXY header missing, garbled, late or untrusted */
	_Atomic uint64_t fsyncs;          /* fdatasync calls of the spool */
	_Atomic uint64_t dirsyncs;        /* group-commit flushes */
	_Atomic uint64_t flushed_messages;/* messages made durable by them */
	/* Content rule hits, by rule (registry id) and action. */
	_Atomic uint64_t rule_hits[METRIC_CONNECTORS_MAX][CONTENT_ACTION_COUNT];
	_Atomic uint64_t pickup_accepted; /* pickup files spooled */
	/* pickup files renamed *.bad: worker 0's only, written by the pickup
	 * thread (the one exception to "written by this worker only") */
	_Atomic uint64_t pickup_bad;
};

static inline void metric_add(_Atomic uint64_t *m, uint64_t n)
{
	atomic_store_explicit(m, atomic_load_explicit(m, memory_order_relaxed) + n,
			      memory_order_relaxed);
}

static inline uint64_t metric_get(_Atomic uint64_t *m)
{
	return atomic_load_explicit(m, memory_order_relaxed);
}

void metric_latency(struct latency_hist *h, uint64_t us);

/* Connector names seen since start, each with a stable id. Written by the
 * main thread only; read by the stats thread. */
struct metrics_registry {
	atomic_uint n;
	char names[METRIC_CONNECTORS_MAX][METRIC_NAME_MAX];
};

/* The id of name, registering it; past the capacity every new name shares
 * the last id. */
unsigned metrics_registry_id(struct metrics_registry *r, const char *name);

/* Sums over workers. */
struct metrics_totals {
	uint64_t connections, active, messages, bytes, rejected;
	uint64_t refused[REFUSE_COUNT];
	uint64_t proxy_rejected;
	uint64_t fsyncs, dirsyncs, flushed_messages;
};

/* w: one counter set per worker. */
void metrics_totals(struct worker_metrics **w, unsigned nw, struct metrics_totals *t);

struct spool_usage {
	long messages;
	uint64_t bytes;
	uint64_t free_bytes;      /* available to us on the spool's file system */
	bool ready;               /* what GET /readyz answers (B.10) */
};

/* Content rules as shown: the names by counter id, and the action each
 * has in the configuration in force (-1: a rule of an earlier one). */
struct metrics_rules {
	struct metrics_registry *reg;
	int8_t action[METRIC_CONNECTORS_MAX];
};

/* `show stat`: one row per receive connector, then per send connector,
 * then per content rule (rules may be NULL). */
void metrics_print_stat(FILE *out, struct metrics_registry *r, struct metrics_registry *sr,
			struct worker_metrics **w, unsigned nw, bool json,
			const struct metrics_rules *rules);
/* Prometheus text exposition format 0.0.4; io_backend names the I/O
 * backend the workers run on. */
void metrics_print_prometheus(FILE *out, struct metrics_registry *r,
			      struct metrics_registry *sr, struct worker_metrics **w, unsigned nw,
			      const struct spool_usage *spool, const char *io_backend,
			      const struct metrics_rules *rules);

extern const char *const refuse_names[REFUSE_COUNT];

#endif
