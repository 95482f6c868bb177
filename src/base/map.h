/* A hash map from byte-string keys to pointers. The map does not own the
 * keys: each key must stay valid (and unchanged) while its entry exists,
 * which is natural when the key lives in the value (a session's id, a
 * room's name). Open addressing with linear probing and backward-shift
 * deletion: no tombstones, no allocation per entry. */
#ifndef PARLEY_BASE_MAP_H
#define PARLEY_BASE_MAP_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct pmap_entry {
    const char *key;
    size_t klen;
    uint64_t hash;
    void *val;
} pmap_entry;

typedef struct pmap {
    pmap_entry *slots;
    size_t cap; /* power of two, 0 when empty */
    size_t n;
    uint64_t k0, k1; /* SipHash key, drawn from the CSPRNG on first use */
} pmap;

/* SipHash-1-3 of key under (k0, k1). Keys often come from clients (room
 * names), so the hash is keyed per map to defeat collision flooding. */
uint64_t pmap_hash(uint64_t k0, uint64_t k1, const char *key, size_t klen);

/* The value for key, or NULL. */
void *pmap_get(const pmap *m, const char *key, size_t klen);

/* Inserts or replaces. 0 or PARLEY_ENOMEM. */
int pmap_put(pmap *m, const char *key, size_t klen, void *val);

/* Removes key; returns its value or NULL when absent. */
void *pmap_del(pmap *m, const char *key, size_t klen);

/* Iteration: *pos starts at 0; returns the next entry or NULL. Do not
 * insert or delete while iterating. */
pmap_entry *pmap_next(const pmap *m, size_t *pos);

void pmap_free(pmap *m);

#endif
