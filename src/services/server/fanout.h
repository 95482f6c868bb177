/*
 * The order of a commit batch's live deliveries (the messaging service's fan-out, outbox.c).
 *
 * Rule: across conversations, higher priority first; within a
 * conversation, the order the deliveries were queued in (seq order for
 * messages), whatever their priorities. A delivery's effective priority
 * is therefore the highest priority of itself and of every later delivery
 * of the same conversation in the batch: a high message pulls the
 * earlier messages of its conversation ahead with it, and never passes
 * them. Deliveries are then stably sorted by effective priority, highest
 * first, so that equal ones keep their queue order.
 *
 * Pure and allocation-free in steady state: the buffers grow to the
 * largest batch seen and are reused.
 */
#ifndef PARLEY_SERVICES_FANOUT_H
#define PARLEY_SERVICES_FANOUT_H

#include <stddef.h>
#include <stdint.h>

#define FANOUT_LEVELS 4 /* priorities 0 (low) .. 3 (urgent) */

typedef struct fanout_item {
    void *ptr;    /* the caller's delivery */
    uint64_t key; /* its conversation; equal keys keep their relative order */
    uint8_t prio; /* 0 .. FANOUT_LEVELS - 1 (larger values count as the top) */
    uint8_t eff;  /* effective priority, set by fanout_sort */
} fanout_item;

typedef struct fanout_slot fanout_slot;

typedef struct fanout {
    fanout_item *items; /* [0, n): pushed order; after fanout_sort, delivery order */
    size_t n, cap;
    fanout_item *tmp;
    fanout_slot *slots; /* per-conversation maxima: open addressing */
    size_t slot_cap;
} fanout;

/* Forgets the items (keeps the buffers). */
void fanout_reset(fanout *f);

/* Appends an item. 0, or PARLEY_ENOMEM (growing); nothing is allocated
 * once the buffers hold as many items as the largest batch so far. */
int fanout_push(fanout *f, void *ptr, uint64_t key, int prio);

/* Puts items[0, n) in delivery order (the rule above). 0, or
 * PARLEY_ENOMEM when the conversation table cannot grow (items then keep
 * their pushed order, which is always a valid order). */
int fanout_sort(fanout *f);

void fanout_free(fanout *f);

/* A conversation key from its name (FNV-1a, 64 bits). Two conversations
 * whose keys collide are only kept in their relative order: still valid. */
uint64_t fanout_key(const char *s, size_t len, uint64_t seed);
#define FANOUT_KEY_SEED 0xcbf29ce484222325ull

#endif
