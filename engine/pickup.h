/* The pickup directory (DESIGN B.11): a thread of its own watches it
 * (inotify), reads each complete *.eml file (renamed in, or there at
 * start), checks it (proto/pickup_file) with the Pickup connector's
 * limits, and hands the message to a worker, which spools it as a session
 * would; the file is deleted once the message is durable and queued. A bad
 * file is renamed *.bad and its reason logged. Not the drop directory
 * (drop.c writes those files). */
#ifndef POSTERN_PICKUP_H
#define POSTERN_PICKUP_H

#include <stdbool.h>
#include <stddef.h>

#include "spool.h"
#include "wctx.h"

#define PICKUP_CONNECTOR "Pickup"

struct pickup;

/* Watches conf's pickup directory (it must exist and be readable and
 * writable by us) and takes the *.eml files there now. stats_id: the
 * Pickup connector's counter slot. workers: every worker's context,
 * running. NULL with err filled. */
struct pickup *pickup_start(const struct conf *conf, unsigned stats_id, struct wctx **workers,
			    unsigned nworkers, char *err, size_t errlen);
/* Stops taking files (the thread ends); messages the workers still hold
 * go on. */
void pickup_stop(struct pickup *p);
/* After the workers are joined: deletes the files whose messages became
 * durable meanwhile, frees everything. */
void pickup_free(struct pickup *p);

/* ---- the worker's side ---- */

/* On the worker's wake: spools every file handed to it. */
void pickup_take(struct wctx *w);
/* The message's writes are done (IO_OP_SPOOL_WRITE). */
void pickup_on_written(struct wctx *w, struct spool_msg *m);
/* The group commit answered for it. */
void pickup_on_durable(struct wctx *w, struct spool_msg *m, bool ok);
/* At worker exit: files handed over and never taken go back untouched. */
void pickup_discard(struct wctx *w);

#endif
