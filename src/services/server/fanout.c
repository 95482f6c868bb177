/* The order of a commit batch's live deliveries: see fanout.h. */
#include "services/server/fanout.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "parley/parley.h"

struct fanout_slot {
    uint64_t key;
    uint8_t max; /* highest priority of the key's items from here on */
    bool used;
};

void fanout_reset(fanout *f)
{
    f->n = 0;
}

static int grow(fanout *f, size_t want)
{
    if (want <= f->cap) return 0;
    size_t cap = f->cap ? f->cap : 64;
    while (cap < want) cap *= 2;
    fanout_item *a = realloc(f->items, cap * sizeof *a);
    if (!a) return PARLEY_ENOMEM;
    f->items = a;
    fanout_item *b = realloc(f->tmp, cap * sizeof *b);
    if (!b) return PARLEY_ENOMEM;
    f->tmp = b;
    f->cap = cap;
    return 0;
}

int fanout_push(fanout *f, void *ptr, uint64_t key, int prio)
{
    int rc = grow(f, f->n + 1);
    if (rc) return rc;
    if (prio < 0) prio = 0;
    if (prio >= FANOUT_LEVELS) prio = FANOUT_LEVELS - 1;
    f->items[f->n++] = (fanout_item){.ptr = ptr, .key = key, .prio = (uint8_t)prio};
    return 0;
}

static uint64_t mix(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

int fanout_sort(fanout *f)
{
    size_t n = f->n;
    if (n < 2) {
        if (n) f->items[0].eff = f->items[0].prio;
        return 0;
    }
    /* A table of at least twice the items: probes stay short. */
    size_t want = 16;
    while (want < 2 * n) want *= 2;
    if (want > f->slot_cap) {
        fanout_slot *s = realloc(f->slots, want * sizeof *s);
        if (!s) return PARLEY_ENOMEM;
        f->slots = s;
        f->slot_cap = want;
    }
    memset(f->slots, 0, want * sizeof *f->slots);
    size_t mask = want - 1;
    /* Backwards: each item's effective priority is the maximum over
     * itself and the later items of its conversation. */
    size_t count[FANOUT_LEVELS] = {0};
    for (size_t i = n; i-- > 0;) {
        fanout_item *it = &f->items[i];
        size_t h = (size_t)mix(it->key) & mask;
        while (f->slots[h].used && f->slots[h].key != it->key) h = (h + 1) & mask;
        fanout_slot *s = &f->slots[h];
        if (!s->used) {
            s->used = true;
            s->key = it->key;
            s->max = it->prio;
        } else if (it->prio > s->max) {
            s->max = it->prio;
        }
        it->eff = s->max;
        count[it->eff]++;
    }
    /* Stable counting sort, highest first. */
    size_t start[FANOUT_LEVELS], at = 0;
    for (int p = FANOUT_LEVELS - 1; p >= 0; p--) {
        start[p] = at;
        at += count[p];
    }
    for (size_t i = 0; i < n; i++) f->tmp[start[f->items[i].eff]++] = f->items[i];
    fanout_item *t = f->items;
    f->items = f->tmp;
    f->tmp = t;
    return 0;
}

void fanout_free(fanout *f)
{
    free(f->items);
    free(f->tmp);
    free(f->slots);
    memset(f, 0, sizeof *f);
}

uint64_t fanout_key(const char *s, size_t len, uint64_t seed)
{
    uint64_t h = seed;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
