/* Stats socket (DESIGN B.4): a unix stream socket, one command per
 * connection, reply then close. Runs on its own thread; it reads worker
 * counters (relaxed atomics) and the current configuration (by reference),
 * and asks main for reloads. Never touches a worker's connections. */
#ifndef POSTERN_STATS_H
#define POSTERN_STATS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "metrics.h"
#include "queue_ctl.h"
#include "spool.h"
#include "throttle.h"

struct stats_host {
	struct metrics_registry *registry;
	struct metrics_registry *send_registry;
	struct metrics_registry *rule_registry;  /* content rules */
	struct throttle *throttle;
	const struct spool *store;
	struct worker_metrics **metrics;  /* one per worker */
	unsigned nworkers;
	const char *io_backend;   /* io_uring | epoll */
	uint64_t start_ms;        /* wctx_clock_ms() at start */
	/* Every queued message is due now (posternctl flush). */
	void (*flush)(void *arg);
	/* Hands each worker its part of an operator's queue request (one
	 * part per worker, r->nparts == nworkers). */
	void (*queue_ctl)(void *arg, struct qctl_req *r);
	/* The configuration in force, with a reference for the caller. */
	struct conf *(*current)(void *arg);
	/* Reloads like SIGHUP; writes the outcome. 0 on success. */
	int (*reload)(void *arg, char *result, size_t cap);
	/* posternctl drain (B.10): starts it, writes what it does. 0 on success. */
	int (*drain)(void *arg, char *result, size_t cap);
	/* False once a drain or a stop has begun (GET /readyz says 503). */
	bool (*accepting)(void *arg);
	const char *spool_dir;    /* for /readyz: is it writable, is there room */
	uint64_t spool_room;      /* bytes a new segment needs */
	void *arg;
};

struct stats_client;
struct stats_task;

#define STATS_TASKS_MAX 2   /* track queries running at once, off this thread */

struct stats_server {
	const struct stats_host *host;
	int fd;
	int metrics_fd;           /* HTTP GET /metrics, or -1 */
	int stop_pipe[2];
	struct stats_client *clients; /* served side by side (stats.c) */
	int task_pipe[2];         /* finished tasks come back through it */
	struct stats_task *tasks[STATS_TASKS_MAX];
	uint64_t next_serial;     /* tells a client from the next one in its slot */
	pthread_t thread;
	bool running;
	char path[108];
};

/* Binds path (mode 0660; a stale socket file is replaced; NULL for none)
 * and metrics_listen ("ip:port"; NULL for none) and starts serving.
 * Returns 0, or -1 with err filled. */
int stats_start(struct stats_server *s, const struct stats_host *h,
		const char *path, const char *metrics_listen, char *err,
		size_t errlen);
void stats_stop(struct stats_server *s);

/* Runs one command line and writes the reply to out. Returns 0 for a
 * command that succeeded, -1 when the reply is an error. */
int stats_command(const struct stats_host *h, const char *line, FILE *out);

#endif
