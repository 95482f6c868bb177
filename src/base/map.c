#include "map.h"

#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "parley/parley.h"

static inline uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = rotl(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = rotl(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = rotl(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = rotl(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = rotl(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = rotl(v2, 32);                                                                         \
    } while (0)

uint64_t pmap_hash(uint64_t k0, uint64_t k1, const char *key, size_t klen)
{
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
    const unsigned char *p = (const unsigned char *)key;
    size_t i = 0;
    for (; i + 8 <= klen; i += 8) {
        uint64_t m;
        memcpy(&m, p + i, 8); /* little-endian hosts; the hash is private */
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t last = (uint64_t)klen << 56;
    for (size_t j = 0; i + j < klen; j++) last |= (uint64_t)p[i + j] << (8 * j);
    v3 ^= last;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static inline bool same(const pmap_entry *e, uint64_t h, const char *key, size_t klen)
{
    return e->key && e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0;
}

void *pmap_get(const pmap *m, const char *key, size_t klen)
{
    if (!m->cap) return NULL;
    uint64_t h = pmap_hash(m->k0, m->k1, key, klen);
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const pmap_entry *e = &m->slots[i];
        if (!e->key) return NULL;
        if (same(e, h, key, klen)) return e->val;
    }
}

static int grow(pmap *m)
{
    if (m->cap == 0 && m->k0 == 0 && m->k1 == 0) {
        uint64_t k[2];
        if (prand_bytes(k, sizeof k) != 0) return PARLEY_EIO;
        m->k0 = k[0];
        m->k1 = k[1] | 1; /* never all-zero: that marks "not drawn" */
    }
    size_t cap = m->cap ? m->cap * 2 : 16;
    pmap_entry *slots = calloc(cap, sizeof *slots);
    if (!slots) return PARLEY_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        pmap_entry *e = &m->slots[i];
        if (!e->key) continue;
        size_t j = e->hash & (cap - 1);
        while (slots[j].key) j = (j + 1) & (cap - 1);
        slots[j] = *e;
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    return 0;
}

int pmap_put(pmap *m, const char *key, size_t klen, void *val)
{
    if ((m->n + 1) * 4 > m->cap * 3) {
        int rc = grow(m);
        if (rc) return rc;
    }
    uint64_t h = pmap_hash(m->k0, m->k1, key, klen);
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        pmap_entry *e = &m->slots[i];
        if (!e->key) {
            *e = (pmap_entry){key, klen, h, val};
            m->n++;
            return 0;
        }
        if (same(e, h, key, klen)) {
            e->key = key; /* the new value owns the key now */
            e->val = val;
            return 0;
        }
    }
}

void *pmap_del(pmap *m, const char *key, size_t klen)
{
    if (!m->cap) return NULL;
    uint64_t h = pmap_hash(m->k0, m->k1, key, klen);
    size_t mask = m->cap - 1;
    size_t i = h & mask;
    for (;; i = (i + 1) & mask) {
        if (!m->slots[i].key) return NULL;
        if (same(&m->slots[i], h, key, klen)) break;
    }
    void *val = m->slots[i].val;
    /* Backward-shift: move later entries of the cluster into the hole when
     * their home slot allows it. */
    size_t hole = i;
    for (size_t j = (i + 1) & mask; m->slots[j].key; j = (j + 1) & mask) {
        size_t home = m->slots[j].hash & mask;
        bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
        if (movable) {
            m->slots[hole] = m->slots[j];
            hole = j;
        }
    }
    m->slots[hole] = (pmap_entry){0};
    m->n--;
    return val;
}

pmap_entry *pmap_next(const pmap *m, size_t *pos)
{
    while (*pos < m->cap) {
        pmap_entry *e = &m->slots[(*pos)++];
        if (e->key) return e;
    }
    return NULL;
}

void pmap_free(pmap *m)
{
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}
