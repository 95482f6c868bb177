/* A min-heap of deadlines. One libuv timer per loop drives every timer of
 * every connection, so a connection's timers cost 24 bytes, not a uv_timer_t
 * (152 bytes) each. Sans-I/O: the caller passes the clock in. */
#ifndef PARLEY_BASE_THEAP_H
#define PARLEY_BASE_THEAP_H

#include <stdbool.h>
#include <stdint.h>

typedef struct ptimer ptimer;
typedef void (*ptimer_cb)(ptimer *t);

/* 24 bytes: every connection carries one, so size matters. Timers with
 * equal deadlines fire in no particular order. */
struct ptimer {
    uint64_t deadline; /* milliseconds on the caller's clock */
    ptimer_cb cb;
    uint32_t index; /* heap slot; PTIMER_IDLE when not armed */
};

#define PTIMER_IDLE UINT32_MAX

typedef struct ptimer_heap {
    ptimer **v;
    uint32_t n, cap;
} ptimer_heap;

static inline void ptimer_init(ptimer *t, ptimer_cb cb)
{
    t->deadline = 0;
    t->index = PTIMER_IDLE;
    t->cb = cb;
}
static inline bool ptimer_armed(const ptimer *t)
{
    return t->index != PTIMER_IDLE;
}

/* Arms t at `deadline` (re-arms if already armed). 0 or PARLEY_ENOMEM. */
int ptimer_heap_add(ptimer_heap *h, ptimer *t, uint64_t deadline);
/* Disarms t; no-op if not armed. */
void ptimer_heap_remove(ptimer_heap *h, ptimer *t);
/* Earliest armed timer or NULL. */
static inline ptimer *ptimer_heap_peek(const ptimer_heap *h)
{
    return h->n ? h->v[0] : 0;
}
/* Fires, in deadline order, every timer whose deadline <= now. A callback
 * may arm or disarm any timer, including itself. Returns the count fired. */
unsigned ptimer_heap_run(ptimer_heap *h, uint64_t now);
void ptimer_heap_free(ptimer_heap *h);

#endif
