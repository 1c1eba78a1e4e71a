/* The inbound session: glue between one client's socket (through the I/O
 * interface), its SMTP state machine (proto/smtp_server), its receive
 * connector and the spool. worker.c calls these from its completion
 * handlers; a session calls down only (queue, spool, throttle, I/O). */
#ifndef POSTERN_SESSION_H
#define POSTERN_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "conn.h"
#include "wctx.h"

struct spool_msg;

/* A new connection on binding (fd from accept). */
void session_accept(struct wctx *w, unsigned binding, int fd);
/* IO_OP_RECV: res bytes in buffer bid (or -errno / 0), more: still armed. */
void session_on_recv(struct wctx *w, struct conn *c, int res, bool more, int bid);
void session_on_send(struct wctx *w, struct conn *c, int res);
void session_on_tarpit(struct wctx *w, struct conn *c);
/* IO_OP_PACE: the pause after discarded input is over. */
void session_on_pace(struct wctx *w, struct conn *c);
/* A message's spool writes are all done (its COMMIT included). */
void session_on_written(struct wctx *w, struct spool_msg *m);
/* The group commit covering the message finished (spool hook). */
void session_on_durable(struct wctx *w, struct spool_msg *m, bool ok);
/* A provided buffer came back: connections that ran out resume. */
void session_buffers_returned(struct wctx *w);
/* Timeouts and the graceful stop; called per connection each tick. */
void session_tick(struct wctx *w, struct conn *c);
/* AUTH verifier answers in w->auth_done (after a wake). */
void session_auth_results(struct wctx *w);
/* At worker exit: answers nobody waits for any more are freed. */
void session_auth_discard(struct wctx *w);
void session_close(struct wctx *w, struct conn *c);
/* Once a loop turn's completions are handled: feeds the connections whose
 * input was left over, oldest first, in a slice of their own; true when
 * some is left for the next turn still (then the loop must not sleep). */
bool session_run_deferred(struct wctx *w);

#endif
