/* Delivery of queued jobs: destinations (a send connector, and the
 * recipient domain for MX delivery), their targets (smart hosts, or MX
 * answers from the resolver thread), the jobs waiting for a connection,
 * connection reuse and concurrency caps across workers, and the send
 * connectors' rate limits. One connection is outconn.c's, drop
 * directories are drop.c's. Decides nothing about retries or DSNs: every
 * job goes back through the done callback. */
#ifndef POSTERN_DELIVER_H
#define POSTERN_DELIVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "io.h"
#include "job.h"
#include "wctx.h"

struct deliver;

/* done(arg, j): a job is finished, failed or not attempted (stopping). */
struct deliver *deliver_new(struct wctx *w, void (*done)(void *arg, struct djob *j),
			    void *arg, char *err, size_t errlen);
void deliver_free(struct deliver *dl);

void deliver_submit(struct deliver *dl, struct djob *j);
/* IO_OP_OUT completions (an outbound connection's operation). */
void deliver_on_io(struct deliver *dl, const struct io_cqe *e);
/* The worker was woken: answers from the resolver and the drop thread. */
void deliver_wake(struct deliver *dl);
/* Timeouts, idle connections, jobs waiting for a connection. */
void deliver_tick(struct deliver *dl);
/* Stopping: no new connections; waiting jobs go back to the queue. */
void deliver_stop(struct deliver *dl);
/* The destination (send connector by name, and the recipient domain for
 * MX delivery, else "") is held back now: by the connector's send rate,
 * a connection cap, connections held elsewhere, or a 421 backoff. For
 * show destinations; false for a NULL dl (tests) or one never used. */
bool deliver_throttled(const struct deliver *dl, const char *sc_name, const char *domain);
/* Nothing in flight (connections, lookups, drop writes). */
bool deliver_idle(const struct deliver *dl);

#endif
