/* The drop-directory writer: jobs of send connectors with a
 * drop_directory become one .eml file each, written and fsynced on a
 * thread of its own (the worker's loop never waits on the disk). Results
 * come back on the worker's thread through drop_collect(). */
#ifndef POSTERN_DROP_H
#define POSTERN_DROP_H

#include "job.h"
#include "wctx.h"

struct drop_writer;

/* NULL when memory is short. The thread starts with the first job. */
struct drop_writer *drop_new(struct wctx *w);
/* Stops the thread (after the file it is writing); jobs not written are
 * dropped with it: the caller is exiting. */
void drop_free(struct drop_writer *d);
/* Queues j; false when the thread cannot be started (j is untouched). */
bool drop_submit(struct drop_writer *d, struct djob *j);
/* Hands every finished job to fn (on the worker's thread, after a wake);
 * its results are filled in and j->remote names the directory. */
void drop_collect(struct drop_writer *d, void (*fn)(void *arg, struct djob *j), void *arg);
/* Jobs queued or being written. */
unsigned drop_pending(const struct drop_writer *d);

#endif
