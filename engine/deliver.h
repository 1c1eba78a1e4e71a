/* Delivery of queued jobs on the worker's ring: destinations (a send
 * connector, and the recipient domain for MX delivery), outbound SMTP
 * connections driven by proto/smtp_client with the body sent from the spool
 * file by sendfile (no user-space copy), connection reuse and concurrency
 * caps, the send connectors' rate limits, MX answers from the resolver
 * thread and drop-directory writes on a thread of their own. Decides
 * nothing about retries or DSNs: results go back to queue.c. */
#ifndef POSTERN_DELIVER_H
#define POSTERN_DELIVER_H

#include <stdbool.h>
#include <stdint.h>

struct worker;
struct djob;

/* 0, or -1 with w->err set. */
int deliver_init(struct worker *w);
void deliver_free(struct worker *w);

void deliver_submit(struct worker *w, struct djob *j);
/* OP_OUT completions (poll on an outbound connection). */
void deliver_on_poll(void *conn);
/* The worker was woken: answers from the resolver and the drop thread. */
void deliver_wake(struct worker *w);
/* Timeouts, idle connections, jobs waiting for a connection. */
void deliver_tick(struct worker *w);
/* Stopping: no new connections; waiting jobs go back to the queue. */
void deliver_stop(struct worker *w);
/* Nothing in flight (connections, lookups, drop writes). */
bool deliver_idle(const struct worker *w);

#endif
