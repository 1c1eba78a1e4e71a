/* The worker context (wctx.h): clocks, message ids and provided-buffer
 * references. Holds no state of its own beyond what struct wctx carries. */
#include "wctx.h"

#include <assert.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/time.h>
#include <time.h>

uint64_t wctx_clock_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

uint64_t wctx_clock_ms(void)
{
	return wctx_clock_us() / 1000;
}

int64_t wctx_wall_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* Ids: 40 bits of milliseconds since 2020 (until 2054), 10 bits of worker
 * (server.workers allows 1024), 14 bits of counter. The base follows the
 * clock and never goes back; when the counter wraps within one millisecond
 * it moves one ahead. So a worker's ids increase, no two workers share one,
 * and after a restart (a later clock) every id is above the old ones. */
#define ID_EPOCH_MS 1577836800000ull
#define ID_WORKER_BITS 10
#define ID_COUNTER_BITS 14
_Static_assert(WCTX_MSGID_MAX_WORKERS == 1u << ID_WORKER_BITS, "worker bits");

uint64_t wctx_next_msgid_at(struct wctx *w, int64_t wall_ms)
{
	assert(w->id < WCTX_MSGID_MAX_WORKERS);
	uint64_t now = wall_ms > (int64_t)ID_EPOCH_MS ? (uint64_t)wall_ms : ID_EPOCH_MS + 1;
	if (now > w->id_base_ms) {
		w->id_base_ms = now;
		w->id_counter = 0;
	} else if (w->id_counter >> ID_COUNTER_BITS) {
		w->id_base_ms++;
		w->id_counter = 0;
	}
	uint64_t ms = (w->id_base_ms - ID_EPOCH_MS) & ((1ull << 40) - 1);
	return ms << (ID_WORKER_BITS + ID_COUNTER_BITS) |
	       (uint64_t)(w->id & (WCTX_MSGID_MAX_WORKERS - 1)) << ID_COUNTER_BITS |
	       w->id_counter++;
}

uint64_t wctx_next_msgid(struct wctx *w)
{
	return wctx_next_msgid_at(w, wctx_wall_ms());
}

void wctx_msgid_text(uint64_t id, char out[WCTX_MSGID_LEN])
{
	snprintf(out, WCTX_MSGID_LEN, "%016" PRIX64, id);
}

void wctx_buf_put(struct wctx *w, int bid)
{
	if (--w->buf_refs[bid])
		return;
	io_buf_recycle(w->io, (unsigned)bid);
	if (w->buf_waiters && w->buf_returned)
		w->buf_returned(w);
}

void wctx_wake_peers(struct wctx *w)
{
	for (unsigned i = 0; w->peers && i < w->nworkers; i++) {
		struct io *io = atomic_load(&w->peers[i]);
		if (i != w->id && io)
			io_wake(io);
	}
}
