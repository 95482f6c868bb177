/* Per-user and per-pair token buckets of the messaging service. */
#include "services/server/quota.h"

#include <stdlib.h>
#include <string.h>

#include "base/map.h"
#include "base/util.h"
#include "services/msg_schema.h"

#define SWEEP_MS 60000
#define PAIR_KEY (MSG_USER_MAX + 1 + MSG_CONV_MAX + 2)

typedef struct quser {
    char id[MSG_USER_MAX + 1];
    size_t len;
    prate b[MQ_USER_KINDS];
} quser;

typedef struct qpair {
    char key[PAIR_KEY];
    size_t len;
    prate b[MQ_PAIR_KINDS];
} qpair;

struct mquota {
    parley_loop *loop;
    mquota_opts o;
    pmap users, pairs;
    ptimer sweep;
    uint64_t pairs_full;
};

void mquota_opts_init(mquota_opts *o)
{
    memset(o, 0, sizeof *o);
    o->events = prate_limit(50, 1000, 100);
    o->messages = prate_limit(20, 1000, 40);
    o->message_bytes = prate_limit(256u << 10, 1000, 1u << 20);
    o->presence = prate_limit(1, 1000, 10);
    o->joins = prate_limit(1, 1000, 20);
    o->notify = prate_limit(30, 60000, 10);
    o->urgent = prate_limit(10, 3600000, 3);
    o->strikes = prate_limit(30, 1000, 300);
    o->max_rooms = 500;
    o->uploads_per_day = 500;
    o->upload_bytes_per_day = 1ull << 30;
    o->storage_per_user = 2ull << 30;
    o->disk_reserve = 256ull << 20;
    o->max_pairs = 100000;
}

void mquota_opts_unlimited(mquota_opts *o)
{
    uint32_t pairs = o->max_pairs ? o->max_pairs : 100000;
    memset(o, 0, sizeof *o);
    o->max_pairs = pairs;
}

static const prate_cfg *user_cfg(const mquota *q, mquota_user_kind k)
{
    switch (k) {
    case MQ_MESSAGES:
        return &q->o.messages;
    case MQ_BYTES:
        return &q->o.message_bytes;
    case MQ_PRESENCE:
        return &q->o.presence;
    default:
        return &q->o.joins;
    }
}

static const prate_cfg *pair_cfg(const mquota *q, mquota_pair_kind k)
{
    return k == MQ_NOTIFY ? &q->o.notify : &q->o.urgent;
}

static void on_sweep(ptimer *t)
{
    mquota *q = PARLEY_CONTAINER_OF(t, mquota, sweep);
    mquota_sweep(q);
    if (q->users.n || q->pairs.n) ploop_timer_start(q->loop, &q->sweep, SWEEP_MS);
}

int mquota_new(parley_loop *loop, const mquota_opts *o, mquota **out)
{
    mquota *q = pcalloc(1, sizeof *q);
    if (!q) return PARLEY_ENOMEM;
    q->loop = loop;
    if (o)
        q->o = *o;
    else
        mquota_opts_init(&q->o);
    ptimer_init(&q->sweep, on_sweep);
    *out = q;
    return 0;
}

void mquota_free(mquota *q)
{
    if (!q) return;
    ploop_timer_stop(q->loop, &q->sweep);
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&q->users, &pos))) free(e->val);
    pos = 0;
    while ((e = pmap_next(&q->pairs, &pos))) free(e->val);
    pmap_free(&q->users);
    pmap_free(&q->pairs);
    free(q);
}

const mquota_opts *mquota_opts_of(const mquota *q)
{
    return &q->o;
}

static void arm(mquota *q)
{
    if (!ptimer_armed(&q->sweep)) ploop_timer_start(q->loop, &q->sweep, SWEEP_MS);
}

static quser *user_entry(mquota *q, const char *user)
{
    size_t len = strnlen(user, MSG_USER_MAX + 1);
    if (len > MSG_USER_MAX) return NULL;
    quser *u = pmap_get(&q->users, user, len);
    if (u) return u;
    u = pcalloc(1, sizeof *u);
    if (!u) return NULL;
    memcpy(u->id, user, len);
    u->len = len;
    if (pmap_put(&q->users, u->id, len, u) != 0) {
        free(u);
        return NULL;
    }
    arm(q);
    return u;
}

bool mquota_user_take(mquota *q, const char *user, mquota_user_kind kind, uint64_t cost,
                      uint64_t *retry_ms)
{
    const prate_cfg *c = user_cfg(q, kind);
    if (c->tokens == 0) return true;
    quser *u = user_entry(q, user);
    if (!u) {
        *retry_ms = 1000;
        return false;
    }
    return prate_take(&u->b[kind], c, ploop_now(q->loop), cost, retry_ms);
}

void mquota_user_refund(mquota *q, const char *user, mquota_user_kind kind, uint64_t cost)
{
    const prate_cfg *c = user_cfg(q, kind);
    quser *u = c->tokens ? pmap_get(&q->users, user, strnlen(user, MSG_USER_MAX + 1)) : NULL;
    if (u) prate_refund(&u->b[kind], c, ploop_now(q->loop), cost);
}

bool mquota_pair_take(mquota *q, const char *from, const char *to, mquota_pair_kind kind,
                      uint64_t *retry_ms)
{
    const prate_cfg *c = pair_cfg(q, kind);
    if (c->tokens == 0) return true;
    char key[PAIR_KEY];
    size_t fl = strnlen(from, MSG_USER_MAX + 1), tl = strnlen(to, MSG_CONV_MAX + 2);
    if (fl > MSG_USER_MAX || tl > MSG_CONV_MAX + 1) {
        *retry_ms = 1000;
        return false;
    }
    memcpy(key, from, fl);
    key[fl] = '\n';
    memcpy(key + fl + 1, to, tl);
    size_t len = fl + 1 + tl;
    qpair *p = pmap_get(&q->pairs, key, len);
    if (!p) {
        if (q->pairs.n >= q->o.max_pairs) mquota_sweep(q);
        if (q->pairs.n >= q->o.max_pairs || !(p = pcalloc(1, sizeof *p))) {
            q->pairs_full++;
            *retry_ms = 60000;
            return false;
        }
        memcpy(p->key, key, len);
        p->len = len;
        if (pmap_put(&q->pairs, p->key, len, p) != 0) {
            free(p);
            *retry_ms = 1000;
            return false;
        }
        arm(q);
    }
    return prate_take(&p->b[kind], c, ploop_now(q->loop), 1, retry_ms);
}

void mquota_sweep(mquota *q)
{
    uint64_t now = ploop_now(q->loop);
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&q->users, &pos))) {
        quser *u = e->val;
        bool full = true;
        for (int k = 0; k < MQ_USER_KINDS && full; k++)
            full = prate_full(&u->b[k], user_cfg(q, (mquota_user_kind)k), now);
        if (!full) continue;
        pmap_del(&q->users, u->id, u->len);
        free(u);
        pos--; /* a later entry may have moved into this slot */
    }
    pos = 0;
    while ((e = pmap_next(&q->pairs, &pos))) {
        qpair *p = e->val;
        bool full = true;
        for (int k = 0; k < MQ_PAIR_KINDS && full; k++)
            full = prate_full(&p->b[k], pair_cfg(q, (mquota_pair_kind)k), now);
        if (!full) continue;
        pmap_del(&q->pairs, p->key, p->len);
        free(p);
        pos--;
    }
}

void mquota_stats_get(const mquota *q, mquota_stats *st)
{
    st->users = (unsigned)q->users.n;
    st->pairs = (unsigned)q->pairs.n;
    st->pairs_full = q->pairs_full;
}
