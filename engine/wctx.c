/* The worker context (wctx.h): clocks, message ids and provided-buffer
 * references. Holds no state of its own beyond what struct wctx carries. */
#include "wctx.h"

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

/* Ids: 40 bits of milliseconds since 2020, 8 bits of worker, 16 bits of
 * counter; the base moves forward whenever the counter wraps, so ids stay
 * unique across workers and restarts. */
#define ID_EPOCH_MS 1577836800000ull

uint64_t wctx_next_msgid(struct wctx *w)
{
	if (w->id_counter > 0xffff || w->id_base_ms == 0) {
		uint64_t now = (uint64_t)wctx_wall_ms();
		w->id_base_ms = now > w->id_base_ms ? now : w->id_base_ms + 1;
		w->id_counter = 0;
	}
	uint64_t ms = (w->id_base_ms - ID_EPOCH_MS) & ((1ull << 40) - 1);
	return ms << 24 | (uint64_t)(w->id & 0xff) << 16 | w->id_counter++;
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
