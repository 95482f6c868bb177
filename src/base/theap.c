#include "theap.h"

#include <stdlib.h>

#include "parley/parley.h"

static inline bool before(const ptimer *a, const ptimer *b)
{
    return a->deadline < b->deadline;
}

static inline void place(ptimer_heap *h, uint32_t i, ptimer *t)
{
    h->v[i] = t;
    t->index = i;
}

static void sift_up(ptimer_heap *h, uint32_t i)
{
    ptimer *t = h->v[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!before(t, h->v[p])) break;
        place(h, i, h->v[p]);
        i = p;
    }
    place(h, i, t);
}

static void sift_down(ptimer_heap *h, uint32_t i)
{
    ptimer *t = h->v[i];
    for (;;) {
        uint32_t l = 2 * i + 1;
        if (l >= h->n) break;
        uint32_t c = l;
        if (l + 1 < h->n && before(h->v[l + 1], h->v[l])) c = l + 1;
        if (!before(h->v[c], t)) break;
        place(h, i, h->v[c]);
        i = c;
    }
    place(h, i, t);
}

int ptimer_heap_add(ptimer_heap *h, ptimer *t, uint64_t deadline)
{
    if (ptimer_armed(t)) ptimer_heap_remove(h, t);
    if (h->n == h->cap) {
        uint32_t cap = h->cap ? h->cap * 2 : 64;
        if (cap <= h->cap) return PARLEY_ENOMEM;
        ptimer **v = realloc(h->v, (size_t)cap * sizeof *v);
        if (!v) return PARLEY_ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    t->deadline = deadline;
    place(h, h->n++, t);
    sift_up(h, t->index);
    return 0;
}

void ptimer_heap_remove(ptimer_heap *h, ptimer *t)
{
    if (!ptimer_armed(t)) return;
    uint32_t i = t->index;
    t->index = PTIMER_IDLE;
    h->n--;
    if (i == h->n) return;
    ptimer *last = h->v[h->n];
    place(h, i, last);
    if (i > 0 && before(last, h->v[(i - 1) / 2]))
        sift_up(h, i);
    else
        sift_down(h, i);
}

unsigned ptimer_heap_run(ptimer_heap *h, uint64_t now)
{
    unsigned fired = 0;
    ptimer *t;
    while ((t = ptimer_heap_peek(h)) && t->deadline <= now) {
        ptimer_heap_remove(h, t);
        fired++;
        t->cb(t);
    }
    return fired;
}

void ptimer_heap_free(ptimer_heap *h)
{
    for (uint32_t i = 0; i < h->n; i++) h->v[i]->index = PTIMER_IDLE;
    free(h->v);
    h->v = NULL;
    h->n = h->cap = 0;
}
