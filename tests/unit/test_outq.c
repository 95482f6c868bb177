/* Unit tests for the client's outbound queue: order against a reference
 * model, limits, expiry, ids, persistence, crashes, foreign files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/util.h"
#include "chop.h"
#include "client/outq.h"
#include "parley/parley.h"

/* ---- scratch directory ---- */

typedef struct scratch {
    char dir[64];
    char path[96];
} scratch;

static void scratch_init(scratch *s)
{
    snprintf(s->dir, sizeof s->dir, "/tmp/outq-test-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    snprintf(s->path, sizeof s->path, "%s/q.db", s->dir);
}

static void scratch_rm(const scratch *s, const char *suffix)
{
    char p[128];
    snprintf(p, sizeof p, "%s%s", s->path, suffix);
    unlink(p);
}

static void scratch_free(const scratch *s)
{
    scratch_rm(s, "");
    scratch_rm(s, "-wal");
    scratch_rm(s, "-shm");
    scratch_rm(s, "-journal");
    assert_int_equal(rmdir(s->dir), 0);
}

static outq *open_q(const char *path, size_t max_count, size_t max_bytes)
{
    outq_opts o;
    outq_opts_init(&o);
    o.max_count = max_count;
    o.max_bytes = max_bytes;
    o.path = path;
    outq *q = NULL;
    assert_int_equal(outq_open(&o, &q), 0);
    assert_non_null(q);
    return q;
}

static int try_open(const char *path)
{
    outq_opts o;
    outq_opts_init(&o);
    o.path = path;
    outq *q = (outq *)(uintptr_t)1;
    int rc = outq_open(&o, &q);
    if (rc == 0)
        outq_close(q);
    else
        assert_null(q);
    return rc;
}

/* ---- snapshots of a queue (outq_foreach) ---- */

typedef struct snap {
    const outq_entry *ptr;
    uint64_t seq;
    char id[OUTQ_ID_LEN + 1];
    int priority;
    uint64_t created_ms, expires_ms;
    char event[32];
    uint8_t data[256];
    size_t len;
    uint32_t attempts;
    bool in_flight;
} snap;

typedef struct snaps {
    snap *v;
    size_t n, cap;
} snaps;

static void snap_cb(const outq_entry *e, void *user)
{
    snaps *s = user;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->v = realloc(s->v, s->cap * sizeof *s->v);
        assert_non_null(s->v);
    }
    snap *x = &s->v[s->n++];
    memset(x, 0, sizeof *x);
    x->ptr = e;
    x->seq = e->seq;
    assert_int_equal(strlen(e->id), OUTQ_ID_LEN);
    memcpy(x->id, e->id, sizeof x->id);
    x->priority = e->priority;
    x->created_ms = e->created_ms;
    x->expires_ms = e->expires_ms;
    assert_true(strlen(e->event) < sizeof x->event);
    strcpy(x->event, e->event);
    assert_true(e->len <= sizeof x->data);
    if (e->len) memcpy(x->data, e->data, e->len);
    x->len = e->len;
    x->attempts = e->attempts;
    x->in_flight = e->in_flight;
}

static snaps take(const outq *q)
{
    snaps s = {0};
    outq_foreach(q, snap_cb, &s);
    return s;
}

static void snaps_equal(const snaps *a, const snaps *b, bool same_ptrs)
{
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        const snap *x = &a->v[i], *y = &b->v[i];
        if (same_ptrs) assert_ptr_equal(x->ptr, y->ptr);
        assert_int_equal(x->seq, y->seq);
        assert_string_equal(x->id, y->id);
        assert_int_equal(x->priority, y->priority);
        assert_int_equal(x->created_ms, y->created_ms);
        assert_int_equal(x->expires_ms, y->expires_ms);
        assert_string_equal(x->event, y->event);
        assert_int_equal(x->len, y->len);
        assert_memory_equal(x->data, y->data, x->len);
        assert_int_equal(x->attempts, y->attempts);
        assert_int_equal(x->in_flight, y->in_flight);
    }
}

/* ---- the reference model ---- */

typedef struct ment {
    uint64_t seq;
    char id[OUTQ_ID_LEN + 1];
    int priority;
    uint64_t created_ms, expires_ms;
    char event[16];
    uint8_t data[64];
    size_t len;
    uint32_t attempts;
    bool in_flight;
    bool parked; /* in flight past its deadline: off the expiry heap */
} ment;

/* Live entries in push order; the send order is derived from it, which is
 * the obviously-right way the real queue must agree with. */
typedef struct model {
    ment *v;
    size_t n, cap;
    uint64_t next_seq;
    size_t max_count, max_bytes;
} model;

static void model_init(model *m, size_t max_count, size_t max_bytes)
{
    memset(m, 0, sizeof *m);
    m->next_seq = 1;
    m->max_count = max_count;
    m->max_bytes = max_bytes;
}

static void model_copy(model *dst, const model *src)
{
    *dst = *src;
    dst->v = malloc((src->cap ? src->cap : 1) * sizeof *dst->v);
    assert_non_null(dst->v);
    if (src->n) memcpy(dst->v, src->v, src->n * sizeof *src->v);
}

static size_t model_bytes(const model *m)
{
    size_t b = 0;
    for (size_t i = 0; i < m->n; i++) b += m->v[i].len + strlen(m->v[i].event);
    return b;
}

static size_t model_in_flight(const model *m)
{
    size_t k = 0;
    for (size_t i = 0; i < m->n; i++) k += m->v[i].in_flight;
    return k;
}

static long model_find(const model *m, const char *id)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->v[i].id, id) == 0) return (long)i;
    return -1;
}

/* Indices of the live entries in send order. */
static size_t model_order(const model *m, size_t *idx)
{
    size_t k = 0;
    for (int p = OUTQ_URGENT; p >= OUTQ_LOW; p--)
        for (size_t i = 0; i < m->n; i++)
            if (m->v[i].priority == p) idx[k++] = i;
    return k;
}

static long model_next(const model *m, uint64_t now)
{
    size_t *idx = malloc((m->n + 1) * sizeof *idx);
    assert_non_null(idx);
    size_t k = model_order(m, idx);
    long r = -1;
    for (size_t i = 0; i < k && r < 0; i++) {
        const ment *e = &m->v[idx[i]];
        if (!e->in_flight && !(e->expires_ms && e->expires_ms <= now)) r = (long)idx[i];
    }
    free(idx);
    return r;
}

static uint64_t model_next_expiry(const model *m)
{
    uint64_t t = 0;
    for (size_t i = 0; i < m->n; i++)
        if (m->v[i].expires_ms && !m->v[i].parked && (t == 0 || m->v[i].expires_ms < t))
            t = m->v[i].expires_ms;
    return t;
}

/* What outq_push must answer, given a valid id or none. */
static int model_push_rc(const model *m, const char *id, const char *event, size_t len)
{
    if (id && model_find(m, id) >= 0) return PARLEY_EINVAL;
    if (m->n >= m->max_count) return PARLEY_EFULL;
    if (model_bytes(m) + len + strlen(event) > m->max_bytes) return PARLEY_EFULL;
    return 0;
}

static void model_append(model *m, const char *id, int priority, const char *event,
                         const uint8_t *data, size_t len, uint64_t ttl, uint64_t now)
{
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 64;
        m->v = realloc(m->v, m->cap * sizeof *m->v);
        assert_non_null(m->v);
    }
    ment *e = &m->v[m->n++];
    memset(e, 0, sizeof *e);
    e->seq = m->next_seq++;
    strcpy(e->id, id);
    e->priority = priority;
    e->created_ms = now;
    e->expires_ms = ttl ? now + ttl : 0;
    strcpy(e->event, event);
    memcpy(e->data, data, len);
    e->len = len;
}

static void model_remove(model *m, size_t i)
{
    memmove(&m->v[i], &m->v[i + 1], (m->n - i - 1) * sizeof *m->v);
    m->n--;
}

/* After a restart: nothing in flight, seq continues after the largest. */
static void model_reopened(model *m)
{
    for (size_t i = 0; i < m->n; i++) m->v[i].in_flight = m->v[i].parked = false;
    m->next_seq = m->n ? m->v[m->n - 1].seq + 1 : 1;
}

/* The whole queue equals the model: entries, order, fields, counters. */
static void check_model(outq *q, const model *m, uint64_t now)
{
    snaps s = take(q);
    size_t *idx = malloc((m->n + 1) * sizeof *idx);
    assert_non_null(idx);
    size_t k = model_order(m, idx);
    assert_int_equal(s.n, k);
    for (size_t i = 0; i < k; i++) {
        const ment *e = &m->v[idx[i]];
        const snap *x = &s.v[i];
        assert_int_equal(x->seq, e->seq);
        assert_string_equal(x->id, e->id);
        assert_int_equal(x->priority, e->priority);
        assert_int_equal(x->created_ms, e->created_ms);
        assert_int_equal(x->expires_ms, e->expires_ms);
        assert_string_equal(x->event, e->event);
        assert_int_equal(x->len, e->len);
        assert_memory_equal(x->data, e->data, e->len);
        assert_int_equal(x->attempts, e->attempts);
        assert_int_equal(x->in_flight, e->in_flight);
    }
    assert_int_equal(outq_count(q), m->n);
    assert_int_equal(outq_bytes(q), model_bytes(m));
    assert_int_equal(outq_in_flight(q), model_in_flight(m));
    assert_int_equal(outq_next_expiry(q), model_next_expiry(m));
    long want = model_next(m, now);
    outq_entry *got = outq_next(q, now);
    if (want < 0) {
        assert_null(got);
    } else {
        assert_non_null(got);
        assert_string_equal(got->id, m->v[want].id);
    }
    free(idx);
    free(s.v);
}

/* ---- argument checks and defaults ---- */

static void test_args(void **state)
{
    (void)state;
    outq_opts o;
    memset(&o, 0x5a, sizeof o);
    outq_opts_init(&o);
    assert_int_equal(o.max_count, 1000);
    assert_int_equal(o.max_bytes, 8u << 20);
    assert_null(o.path);

    outq *q = NULL;
    assert_int_equal(outq_open(&o, NULL), PARLEY_EINVAL);
    o.max_count = 0;
    assert_int_equal(outq_open(&o, &q), PARLEY_EINVAL);
    assert_null(q);
    outq_opts_init(&o);
    o.max_bytes = 0;
    assert_int_equal(outq_open(&o, &q), PARLEY_EINVAL);
    outq_opts_init(&o);
    o.path = "";
    assert_int_equal(outq_open(&o, &q), PARLEY_EINVAL);
    assert_null(q);

    /* NULL options mean the defaults: 1000 entries. */
    assert_int_equal(outq_open(NULL, &q), 0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(outq_push(q, OUTQ_NORMAL, "e", "x", 1, 0, 0, NULL, NULL), 0);
    assert_int_equal(outq_push(q, OUTQ_NORMAL, "e", "x", 1, 0, 0, NULL, NULL), PARLEY_EFULL);
    outq_close(q);

    q = open_q(NULL, 10, 100);
    outq_entry *e = (outq_entry *)(uintptr_t)1;
    assert_int_equal(outq_push(q, -1, "e", "x", 1, 0, 0, NULL, &e), PARLEY_EINVAL);
    assert_null(e);
    assert_int_equal(outq_push(q, 4, "e", "x", 1, 0, 0, NULL, NULL), PARLEY_EINVAL);
    assert_int_equal(outq_push(q, OUTQ_LOW, NULL, "x", 1, 0, 0, NULL, NULL), PARLEY_EINVAL);
    assert_int_equal(outq_push(q, OUTQ_LOW, "e", NULL, 3, 0, 0, NULL, NULL), PARLEY_EINVAL);
    assert_int_equal(outq_push(NULL, OUTQ_LOW, "e", "x", 1, 0, 0, NULL, NULL), PARLEY_EINVAL);
    assert_int_equal(outq_count(q), 0);
    /* Nothing to send and an empty event are fine. */
    assert_int_equal(outq_push(q, OUTQ_LOW, "", NULL, 0, 0, 0, NULL, &e), 0);
    assert_non_null(e);
    assert_string_equal(e->event, "");
    assert_int_equal(e->len, 0);
    assert_int_equal(outq_bytes(q), 0);
    assert_int_equal(outq_count(q), 1);
    assert_ptr_equal(outq_next(q, 0), e);
    assert_int_equal(outq_ack(q, NULL), PARLEY_EINVAL);
    assert_null(outq_find(q, NULL));
    outq_close(q);
    outq_close(NULL);
    assert_null(outq_next(NULL, 0));
    assert_int_equal(outq_count(NULL), 0);
}

/* ---- order ---- */

static void test_order(void **state)
{
    (void)state;
    uint64_t rng = chop_seed() ^ 0x0dde;
    outq *q = open_q(NULL, 1000, 1 << 20);
    /* Twenty entries per priority, pushed with the priorities shuffled. */
    int prios[80];
    for (int i = 0; i < 80; i++) prios[i] = i % 4;
    for (int i = 79; i > 0; i--) {
        int j = (int)(test_rand(&rng) % (uint64_t)(i + 1));
        int t = prios[i];
        prios[i] = prios[j];
        prios[j] = t;
    }
    outq_entry *pushed[80];
    for (int i = 0; i < 80; i++) {
        char ev[16];
        snprintf(ev, sizeof ev, "m%d", i);
        assert_int_equal(outq_push(q, prios[i], ev, &i, sizeof i, 0, 5, NULL, &pushed[i]), 0);
        assert_int_equal(pushed[i]->seq, (uint64_t)i + 1);
        assert_int_equal(pushed[i]->priority, prios[i]);
        assert_int_equal(pushed[i]->created_ms, 5);
    }
    /* The expected order: priority down, push order within. */
    outq_entry *want[80];
    int k = 0;
    for (int p = OUTQ_URGENT; p >= OUTQ_LOW; p--)
        for (int i = 0; i < 80; i++)
            if (prios[i] == p) want[k++] = pushed[i];
    snaps s = take(q);
    assert_int_equal(s.n, 80);
    for (int i = 0; i < 80; i++) assert_ptr_equal(s.v[i].ptr, want[i]);

    /* Send every third entry out of order (as if found by id), then drain
     * with outq_next: the rest come in order, skipping those in flight. */
    for (int i = 0; i < 80; i += 3) outq_sent(q, want[i]);
    assert_int_equal(outq_in_flight(q), 27);
    int got = 0;
    for (int i = 0; i < 80; i++) {
        if (i % 3 == 0) continue;
        outq_entry *e = outq_next(q, 5);
        assert_ptr_equal(e, want[i]);
        assert_false(e->in_flight);
        outq_sent(q, e);
        assert_true(e->in_flight);
        assert_int_equal(e->attempts, 1);
        got++;
    }
    assert_int_equal(got, 53);
    assert_null(outq_next(q, 5));
    assert_int_equal(outq_in_flight(q), 80);

    /* Requeue: the original order, every entry pending, attempts kept. */
    outq_requeue(q);
    assert_int_equal(outq_in_flight(q), 0);
    snaps r = take(q);
    assert_int_equal(r.n, 80);
    for (int i = 0; i < 80; i++) {
        assert_ptr_equal(r.v[i].ptr, want[i]);
        assert_false(r.v[i].in_flight);
        assert_int_equal(r.v[i].attempts, 1);
    }
    /* A new urgent push goes before all lower priorities but after the
     * urgent ones already queued. */
    outq_entry *late;
    assert_int_equal(outq_push(q, OUTQ_URGENT, "late", NULL, 0, 0, 6, NULL, &late), 0);
    for (int i = 0; i < 20; i++) {
        outq_entry *e = outq_next(q, 6);
        assert_ptr_equal(e, want[i]);
        outq_sent(q, e);
    }
    assert_ptr_equal(outq_next(q, 6), late);
    /* Acking from the middle keeps the rest in order. */
    assert_int_equal(outq_ack(q, want[21]->id), 0);
    outq_sent(q, late);
    assert_ptr_equal(outq_next(q, 6), want[20]);
    outq_sent(q, want[20]);
    assert_ptr_equal(outq_next(q, 6), want[22]);
    outq_requeue(q);
    assert_ptr_equal(outq_next(q, 6), want[0]);
    assert_int_equal(want[0]->attempts, 2);
    free(s.v);
    free(r.v);
    outq_close(q);
}

/* A random mix of every operation, checked against the model after each.
 * With a path, the queue is also closed and reopened at random points. */
static void run_model(const char *path, uint64_t seed, int ops)
{
    uint64_t rng = seed;
    model m;
    model_init(&m, 40, 900);
    outq *q = open_q(path, m.max_count, m.max_bytes);
    uint64_t now = 1000;
    char acked[OUTQ_ID_LEN + 1] = "";
    int counts[9] = {0};
    for (int op = 0; op < ops; op++) {
        uint64_t r = test_rand(&rng) % 100;
        now += test_rand(&rng) % 8;
        if (r < 35) {
            int prio = (int)(test_rand(&rng) % 4);
            char ev[16];
            snprintf(ev, sizeof ev, "ev%u", (unsigned)(test_rand(&rng) % 1000));
            uint8_t data[64];
            size_t len = (size_t)(test_rand(&rng) % 41);
            for (size_t i = 0; i < len; i++) data[i] = (uint8_t)test_rand(&rng);
            uint64_t ttl = test_rand(&rng) % 10 < 6 ? 0 : 1 + test_rand(&rng) % 300;
            char idbuf[OUTQ_ID_LEN + 1];
            const char *id = NULL;
            uint64_t pick = test_rand(&rng) % 10;
            if (pick < 2) {
                snprintf(idbuf, sizeof idbuf, "Caller_%029llu", (unsigned long long)op);
                id = idbuf;
            } else if (pick < 3 && m.n) {
                id = m.v[test_rand(&rng) % m.n].id; /* a duplicate */
                strcpy(idbuf, id);
                id = idbuf;
            }
            int want = model_push_rc(&m, id, ev, len);
            outq_entry *e = NULL;
            int rc = outq_push(q, prio, ev, data, len, ttl, now, id, &e);
            assert_int_equal(rc, want);
            if (rc == 0) {
                assert_non_null(e);
                if (id) assert_string_equal(e->id, id);
                model_append(&m, e->id, prio, ev, data, len, ttl, now);
            } else {
                assert_null(e);
            }
            counts[rc == 0 ? 0 : rc == PARLEY_EFULL ? 1 : 2]++;
        } else if (r < 60) {
            long want = model_next(&m, now);
            outq_entry *e = outq_next(q, now);
            if (want < 0) {
                assert_null(e);
            } else {
                assert_non_null(e);
                assert_string_equal(e->id, m.v[want].id);
                outq_sent(q, e);
                m.v[want].in_flight = true;
                m.v[want].attempts++;
                counts[3]++;
            }
        } else if (r < 67 && m.n) {
            /* Out-of-order send of any entry, pending or already in flight. */
            size_t i = (size_t)(test_rand(&rng) % m.n);
            outq_entry *e = outq_find(q, m.v[i].id);
            assert_non_null(e);
            outq_sent(q, e);
            m.v[i].in_flight = true;
            m.v[i].attempts++;
        } else if (r < 80) {
            if (m.n && test_rand(&rng) % 4) {
                size_t i = (size_t)(test_rand(&rng) % m.n);
                strcpy(acked, m.v[i].id);
                assert_int_equal(outq_ack(q, acked), 0);
                assert_null(outq_find(q, acked));
                model_remove(&m, i);
                counts[4]++;
            } else if (acked[0]) {
                assert_int_equal(outq_ack(q, acked), PARLEY_EINVAL); /* duplicate ack */
                counts[5]++;
            }
        } else if (r < 85) {
            outq_requeue(q);
            for (size_t i = 0; i < m.n; i++) m.v[i].in_flight = m.v[i].parked = false;
            counts[6]++;
        } else if (r < 95) {
            now += test_rand(&rng) % 60;
            /* Expected: everything due and pending, by deadline, then push
             * order; what is due in flight waits for its answer. */
            char want[64][OUTQ_ID_LEN + 1];
            size_t nw = 0;
            for (size_t i = 0; i < m.n; i++)
                if (m.v[i].in_flight && m.v[i].expires_ms && m.v[i].expires_ms <= now)
                    m.v[i].parked = true;
            for (;;) {
                long best = -1;
                for (size_t i = 0; i < m.n; i++) {
                    const ment *e = &m.v[i];
                    if (!e->expires_ms || e->expires_ms > now || e->in_flight) continue;
                    if (best < 0 || e->expires_ms < m.v[best].expires_ms) best = (long)i;
                }
                if (best < 0) break;
                assert_true(nw < 64);
                strcpy(want[nw++], m.v[best].id);
                model_remove(&m, (size_t)best);
            }
            snaps got = {0};
            size_t n = outq_expire(q, now, snap_cb, &got);
            assert_int_equal(n, nw);
            assert_int_equal(got.n, nw);
            for (size_t i = 0; i < nw; i++) {
                assert_string_equal(got.v[i].id, want[i]);
                assert_true(got.v[i].expires_ms <= now);
                assert_null(outq_find(q, want[i]));
            }
            free(got.v);
            counts[7] += (int)nw;
        } else if (path) {
            outq_close(q);
            q = open_q(path, m.max_count, m.max_bytes);
            model_reopened(&m);
            counts[8]++;
        }
        check_model(q, &m, now);
    }
    /* Every kind of operation happened, or the test proved little. */
    for (int i = 0; i < (path ? 9 : 8); i++) assert_true(counts[i] > 0);
    outq_close(q);
    if (path) {
        /* One last restart: the file holds exactly the model. */
        q = open_q(path, m.max_count, m.max_bytes);
        model_reopened(&m);
        check_model(q, &m, now);
        outq_close(q);
    }
    free(m.v);
}

static void test_model_memory(void **state)
{
    (void)state;
    for (uint64_t round = 0; round < 4; round++)
        run_model(NULL, chop_seed() + round * 0x1000193, 5000);
}

static void test_model_file(void **state)
{
    (void)state;
    scratch s;
    scratch_init(&s);
    run_model(s.path, chop_seed() ^ 0xf11e, 4000);
    scratch_free(&s);
}

/* ---- limits ---- */

static void test_limits(void **state)
{
    (void)state;
    outq *q = open_q(NULL, 3, 1000);
    outq_entry *e[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(outq_push(q, OUTQ_HIGH, "e", "abc", 3, 0, 0, NULL, &e[i]), 0);
    snaps before = take(q);
    outq_entry *x = (outq_entry *)(uintptr_t)1;
    assert_int_equal(outq_push(q, OUTQ_URGENT, "e", "abc", 3, 0, 0, NULL, &x), PARLEY_EFULL);
    assert_null(x);
    snaps after = take(q);
    snaps_equal(&before, &after, true);
    assert_int_equal(outq_count(q), 3);
    assert_int_equal(outq_bytes(q), 12);
    assert_ptr_equal(outq_next(q, 0), e[0]);
    /* An ack makes room for exactly one more. */
    outq_sent(q, e[1]);
    assert_int_equal(outq_ack(q, e[1]->id), 0);
    assert_int_equal(outq_push(q, OUTQ_URGENT, "e", "abc", 3, 0, 0, NULL, &x), 0);
    assert_ptr_equal(outq_next(q, 0), x);
    assert_int_equal(outq_push(q, OUTQ_URGENT, "e", "abc", 3, 0, 0, NULL, NULL), PARLEY_EFULL);
    free(before.v);
    free(after.v);
    outq_close(q);

    /* Bytes: payload plus event name, the limit itself allowed. */
    q = open_q(NULL, 100, 10);
    assert_int_equal(outq_push(q, OUTQ_LOW, "ab", "12345", 5, 0, 0, NULL, &e[0]), 0);
    assert_int_equal(outq_bytes(q), 7);
    before = take(q);
    assert_int_equal(outq_push(q, OUTQ_LOW, "c", "123", 3, 0, 0, NULL, NULL), PARLEY_EFULL);
    assert_int_equal(outq_push(q, OUTQ_LOW, "cdef", "", 0, 0, 0, NULL, NULL), PARLEY_EFULL);
    /* Sizes that would wrap around are refused before anything is
     * allocated or read (the data pointer is never dereferenced). */
    assert_int_equal(outq_push(q, OUTQ_LOW, "c", "1", SIZE_MAX, 0, 0, NULL, NULL), PARLEY_EFULL);
    assert_int_equal(outq_push(q, OUTQ_LOW, "cd", "1", SIZE_MAX - 1, 0, 0, NULL, NULL),
                     PARLEY_EFULL);
    assert_int_equal(outq_push(q, OUTQ_LOW, "c", "1", 11, 0, 0, NULL, NULL), PARLEY_EFULL);
    after = take(q);
    snaps_equal(&before, &after, true);
    assert_int_equal(outq_bytes(q), 7);
    assert_int_equal(outq_push(q, OUTQ_LOW, "c", "12", 2, 0, 0, NULL, &e[1]), 0);
    assert_int_equal(outq_bytes(q), 10);
    assert_int_equal(outq_push(q, OUTQ_LOW, "c", "", 0, 0, 0, NULL, NULL), PARLEY_EFULL);
    assert_int_equal(outq_push(q, OUTQ_LOW, "", "", 0, 0, 0, NULL, NULL), 0);
    assert_int_equal(outq_ack(q, e[0]->id), 0);
    assert_int_equal(outq_bytes(q), 3);
    assert_int_equal(outq_push(q, OUTQ_LOW, "ab", "12345", 5, 0, 0, NULL, NULL), 0);
    assert_int_equal(outq_bytes(q), 10);
    free(before.v);
    free(after.v);
    outq_close(q);

    /* A file written under larger limits loads whole; pushes then wait
     * for acks to bring the queue back under the new limits. */
    scratch s;
    scratch_init(&s);
    q = open_q(s.path, 10, 100);
    for (int i = 0; i < 5; i++)
        assert_int_equal(outq_push(q, OUTQ_NORMAL, "e", "0123456789", 10, 0, 0, NULL, NULL), 0);
    before = take(q);
    outq_close(q);
    q = open_q(s.path, 2, 1000);
    after = take(q);
    snaps_equal(&before, &after, false);
    assert_int_equal(outq_push(q, OUTQ_URGENT, "e", "x", 1, 0, 0, NULL, NULL), PARLEY_EFULL);
    for (int i = 0; i < 3; i++) assert_int_equal(outq_ack(q, after.v[i].id), 0);
    assert_int_equal(outq_push(q, OUTQ_URGENT, "e", "x", 1, 0, 0, NULL, NULL), PARLEY_EFULL);
    assert_int_equal(outq_ack(q, after.v[3].id), 0);
    assert_int_equal(outq_push(q, OUTQ_URGENT, "e", "x", 1, 0, 0, NULL, NULL), 0);
    outq_close(q);
    q = open_q(s.path, 5, 11);
    assert_int_equal(outq_bytes(q), 13);
    assert_int_equal(outq_push(q, OUTQ_URGENT, "", NULL, 0, 0, 0, NULL, NULL), PARLEY_EFULL);
    outq_close(q);
    free(before.v);
    free(after.v);
    scratch_free(&s);
}

/* ---- expiry ---- */

typedef struct reentry {
    outq *q;
    int calls;
    char seen[8][OUTQ_ID_LEN + 1];
    const char *ack; /* acked from inside the callback */
} reentry;

static void reenter_cb(const outq_entry *e, void *user)
{
    reentry *r = user;
    assert_true(r->calls < 8);
    strcpy(r->seen[r->calls++], e->id);
    /* The queue is consistent during the callback: the entry is gone. */
    assert_null(outq_find(r->q, e->id));
    if (r->ack) {
        assert_int_equal(outq_ack(r->q, r->ack), 0);
        r->ack = NULL;
        assert_int_equal(outq_push(r->q, OUTQ_LOW, "fresh", NULL, 0, 0, 0, NULL, NULL), 0);
    }
}

static void test_ttl(void **state)
{
    (void)state;
    outq *q = open_q(NULL, 100, 1000);
    assert_int_equal(outq_next_expiry(q), 0);
    outq_entry *a, *b, *c;
    assert_int_equal(outq_push(q, OUTQ_NORMAL, "a", NULL, 0, 100, 1000, NULL, &a), 0);
    assert_int_equal(outq_push(q, OUTQ_NORMAL, "b", NULL, 0, 50, 1000, NULL, &b), 0);
    assert_int_equal(outq_push(q, OUTQ_NORMAL, "c", NULL, 0, 0, 1000, NULL, &c), 0);
    assert_int_equal(a->expires_ms, 1100);
    assert_int_equal(b->expires_ms, 1050);
    assert_int_equal(c->expires_ms, 0);
    assert_int_equal(outq_next_expiry(q), 1050);

    /* outq_next never returns an expired entry, even before outq_expire. */
    assert_ptr_equal(outq_next(q, 1099), a);
    assert_ptr_equal(outq_next(q, 1100), c);
    outq_sent(q, a);
    assert_ptr_equal(outq_next(q, 1049), b);
    assert_ptr_equal(outq_next(q, 1050), c);

    char bid[OUTQ_ID_LEN + 1];
    strcpy(bid, b->id);
    reentry r = {.q = q};
    assert_int_equal(outq_expire(q, 1049, reenter_cb, &r), 0);
    assert_int_equal(r.calls, 0);
    assert_int_equal(outq_expire(q, 1050, reenter_cb, &r), 1);
    assert_int_equal(r.calls, 1);
    assert_string_equal(r.seen[0], bid);
    assert_null(outq_find(q, bid));
    assert_int_equal(outq_count(q), 2);
    assert_int_equal(outq_next_expiry(q), 1100);
    /* Reported once: a second pass at the same time finds nothing. */
    assert_int_equal(outq_expire(q, 1050, reenter_cb, &r), 0);
    assert_int_equal(r.calls, 1);
    /* In-flight entries do not expire: the server's answer decides. */
    assert_int_equal(outq_in_flight(q), 1);
    char aid[OUTQ_ID_LEN + 1];
    strcpy(aid, a->id);
    assert_int_equal(outq_expire(q, 5000, NULL, NULL), 0);
    assert_int_equal(outq_in_flight(q), 1);
    assert_ptr_equal(outq_find(q, aid), a);
    assert_int_equal(outq_next_expiry(q), 0); /* nothing to wake up for */
    /* Back to pending (the connection dropped): the passed deadline applies. */
    outq_requeue(q);
    assert_int_equal(outq_next_expiry(q), 1100);
    assert_ptr_equal(outq_next(q, 5000), c); /* a is never sent again */
    assert_int_equal(outq_expire(q, 5000, NULL, NULL), 1);
    assert_null(outq_find(q, aid));
    assert_int_equal(outq_ack(q, aid), PARLEY_EINVAL);
    assert_int_equal(outq_next_expiry(q), 0);
    /* An in-flight entry past its deadline that is acknowledged just leaves. */
    outq_entry *d;
    assert_int_equal(outq_push(q, OUTQ_URGENT, "ev", "d", 1, 100, 5000, NULL, &d), 0);
    assert_ptr_equal(outq_next(q, 5000), d);
    outq_sent(q, d);
    assert_int_equal(outq_expire(q, 5200, NULL, NULL), 0);
    char did[OUTQ_ID_LEN + 1];
    strcpy(did, d->id);
    assert_int_equal(outq_ack(q, did), 0);
    assert_int_equal(outq_next_expiry(q), 0);
    outq_requeue(q);
    assert_ptr_equal(outq_next(q, UINT64_MAX - 1), c);
    assert_int_equal(outq_count(q), 1);
    outq_close(q);

    /* Callbacks may change the queue; ties expire in push order. */
    q = open_q(NULL, 100, 1000);
    outq_entry *x[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(outq_push(q, i, "t", NULL, 0, i < 3 ? 10 : 0, 0, NULL, &x[i]), 0);
    char ids[4][OUTQ_ID_LEN + 1];
    for (int i = 0; i < 4; i++) strcpy(ids[i], x[i]->id);
    r = (reentry){.q = q, .ack = ids[3]};
    assert_int_equal(outq_expire(q, 10, reenter_cb, &r), 3);
    assert_int_equal(r.calls, 3);
    for (int i = 0; i < 3; i++) assert_string_equal(r.seen[i], ids[i]);
    assert_int_equal(outq_count(q), 1);
    assert_string_equal(outq_next(q, 10)->event, "fresh");
    outq_close(q);

    /* A deadline past the end of the clock saturates instead of wrapping
     * into the past. */
    q = open_q(NULL, 100, 1000);
    assert_int_equal(outq_push(q, OUTQ_LOW, "far", NULL, 0, 10, UINT64_MAX - 5, NULL, &a), 0);
    assert_int_equal(a->expires_ms, UINT64_MAX);
    assert_ptr_equal(outq_next(q, UINT64_MAX - 1), a);
    assert_int_equal(outq_expire(q, UINT64_MAX - 1, NULL, NULL), 0);
    assert_int_equal(outq_expire(q, UINT64_MAX, NULL, NULL), 1);
    outq_close(q);
}

/* ---- ids ---- */

static bool is_hex_lower(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_ids(void **state)
{
    (void)state;
    enum { N = 500 };
    outq *q = open_q(NULL, N + 10, 1 << 20);
    static char ids[N][OUTQ_ID_LEN + 1];
    for (int i = 0; i < N; i++) {
        outq_entry *e;
        assert_int_equal(outq_push(q, OUTQ_NORMAL, "e", NULL, 0, 0, 0, NULL, &e), 0);
        const char *id = e->id;
        assert_int_equal(strlen(id), OUTQ_ID_LEN);
        for (int j = 0; j < OUTQ_ID_LEN; j++) {
            if (j == 8 || j == 13 || j == 18 || j == 23)
                assert_int_equal(id[j], '-');
            else
                assert_true(is_hex_lower(id[j]));
        }
        assert_int_equal(id[14], '4');           /* version 4 */
        assert_non_null(strchr("89ab", id[19])); /* RFC variant */
        assert_ptr_equal(outq_find(q, id), e);
        strcpy(ids[i], id);
    }
    qsort(ids, N, sizeof ids[0], cmp_id);
    for (int i = 1; i < N; i++) assert_true(strcmp(ids[i - 1], ids[i]) != 0);
    /* Random bits vary across the whole id, not only in a counter. */
    int differ = 0;
    for (int j = 0; j < OUTQ_ID_LEN; j++) differ += ids[0][j] != ids[N - 1][j];
    assert_true(differ > 10);

    /* Caller ids: exactly 36 of [0-9a-zA-Z_-]. */
    const char *good = "Msg_0000-AAAA-bbbb-cccc-0123456789zZ";
    assert_int_equal(strlen(good), 36);
    outq_entry *e;
    assert_int_equal(outq_push(q, OUTQ_LOW, "e", NULL, 0, 0, 0, good, &e), 0);
    assert_string_equal(e->id, good);
    snaps before = take(q);
    assert_int_equal(outq_push(q, OUTQ_HIGH, "e", NULL, 0, 0, 0, good, NULL), PARLEY_EINVAL);
    assert_int_equal(outq_push(q, OUTQ_HIGH, "e", NULL, 0, 0, 0, ids[7], NULL), PARLEY_EINVAL);
    static const char *const bad[] = {
        "",
        "Msg_0000-AAAA-bbbb-cccc-0123456789z",   /* 35 */
        "Msg_0000-AAAA-bbbb-cccc-0123456789zZZ", /* 37 */
        "Msg_0000-AAAA-bbbb-cccc-0123456789z.",
        "Msg_0000-AAAA-bbbb-cccc-0123456789z ",
        "Msg_0000-AAAA-bbbb-cccc-0123456789z\xc3",
        "Msg 0000-AAAA-bbbb-cccc-0123456789zZ",
        "Msg/0000-AAAA-bbbb-cccc-0123456789zZ",
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++) {
        assert_int_equal(outq_push(q, OUTQ_HIGH, "e", NULL, 0, 0, 0, bad[i], NULL), PARLEY_EINVAL);
        assert_int_equal(outq_ack(q, bad[i]), PARLEY_EINVAL);
        assert_null(outq_find(q, bad[i]));
    }
    /* The 36-character prefix of a longer string is not that id. */
    char longer[64];
    snprintf(longer, sizeof longer, "%sX", ids[3]);
    assert_int_equal(outq_ack(q, longer), PARLEY_EINVAL);
    assert_null(outq_find(q, longer));
    snaps after = take(q);
    snaps_equal(&before, &after, true);
    free(after.v);

    /* Acks: once; a duplicate changes nothing. */
    assert_int_equal(outq_ack(q, good), 0);
    assert_null(outq_find(q, good));
    free(before.v);
    before = take(q);
    assert_int_equal(outq_ack(q, good), PARLEY_EINVAL);
    assert_int_equal(outq_ack(q, "00000000-0000-4000-8000-000000000000"), PARLEY_EINVAL);
    after = take(q);
    snaps_equal(&before, &after, true);
    assert_int_equal(outq_count(q), N);
    /* An acked id is free again: the application may resend it. */
    assert_int_equal(outq_push(q, OUTQ_LOW, "e", NULL, 0, 0, 0, good, NULL), 0);
    free(before.v);
    free(after.v);
    outq_close(q);
}

/* ---- persistence ---- */

static void test_persist(void **state)
{
    (void)state;
    scratch s;
    scratch_init(&s);
    outq *q = open_q(s.path, 100, 10000);
    outq_entry *e[6];
    static const uint8_t bin[] = {0, 1, 2, 0xff, 0, 0x80};
    assert_int_equal(outq_push(q, OUTQ_LOW, "low", "l", 1, 0, 100, NULL, &e[0]), 0);
    assert_int_equal(outq_push(q, OUTQ_URGENT, "urgent", bin, sizeof bin, 500, 101, NULL, &e[1]),
                     0);
    assert_int_equal(outq_push(q, OUTQ_NORMAL, "", NULL, 0, 0, 102,
                               "Caller-id-0000000000000000000000_end", &e[2]),
                     0);
    assert_int_equal(outq_push(q, OUTQ_URGENT, "u2", "22", 2, 0, 103, NULL, &e[3]), 0);
    assert_int_equal(outq_push(q, OUTQ_HIGH, "h\xc3\xa9", "h", 1, 50, 104, NULL, &e[4]), 0);
    assert_int_equal(outq_push(q, OUTQ_NORMAL, "far", NULL, 0, 10, UINT64_MAX - 1, NULL, &e[5]), 0);
    outq_sent(q, outq_next(q, 105));
    outq_sent(q, outq_next(q, 105));
    outq_requeue(q);
    outq_sent(q, outq_next(q, 105)); /* e[1] twice, e[3] once, in flight */
    assert_int_equal(e[1]->attempts, 2);
    assert_int_equal(e[3]->attempts, 1);
    snaps before = take(q);
    outq_close(q);

    q = open_q(s.path, 100, 10000);
    snaps after = take(q);
    for (size_t i = 0; i < before.n; i++) before.v[i].in_flight = false;
    snaps_equal(&before, &after, false);
    assert_int_equal(after.v[0].attempts, 2);
    assert_int_equal(after.v[4].expires_ms, UINT64_MAX);
    assert_int_equal(outq_in_flight(q), 0);
    assert_int_equal(outq_bytes(q), 1 + 3 + 6 + 6 + 2 + 2 + 1 + 3 + 0 + 3);
    assert_int_equal(outq_next_expiry(q), 154);
    outq_entry *n = outq_next(q, 105);
    assert_string_equal(n->id, before.v[0].id); /* came back pending */

    /* seq continues after the largest one. */
    outq_entry *x;
    assert_int_equal(outq_push(q, OUTQ_URGENT, "new", NULL, 0, 0, 106, NULL, &x), 0);
    assert_int_equal(x->seq, 7);
    /* Ack and expiry are persisted. */
    assert_int_equal(outq_ack(q, before.v[1].id), 0);
    assert_int_equal(outq_expire(q, 154, NULL, NULL), 1); /* "h\xc3\xa9" */
    free(after.v);
    after = take(q);
    outq_close(q);

    q = open_q(s.path, 100, 10000);
    snaps again = take(q);
    snaps_equal(&after, &again, false);
    assert_int_equal(again.n, 5);
    assert_null(outq_find(q, before.v[1].id));
    assert_null(outq_find(q, before.v[2].id));
    assert_int_equal(outq_expire(q, 601, NULL, NULL), 1); /* "urgent" */
    free(again.v);
    again = take(q);
    /* Everything gone: seq starts from the largest left, +1. */
    for (size_t i = 0; i < again.n; i++) assert_int_equal(outq_ack(q, again.v[i].id), 0);
    outq_close(q);
    q = open_q(s.path, 100, 10000);
    assert_int_equal(outq_count(q), 0);
    assert_int_equal(outq_push(q, OUTQ_URGENT, "new", NULL, 0, 0, 106, NULL, &x), 0);
    assert_int_equal(x->seq, 1);
    outq_close(q);
    free(before.v);
    free(after.v);
    free(again.v);
    scratch_free(&s);
}

/* Two queues on one file would hand out the same entries: the second open
 * fails while the first holds the file, and works after it is closed. */
static void test_two_opens(void **state)
{
    (void)state;
    scratch s;
    scratch_init(&s);
    outq *a = open_q(s.path, 10, 1000);
    assert_int_equal(outq_push(a, OUTQ_LOW, "one", NULL, 0, 0, 0, NULL, NULL), 0);
    assert_int_equal(try_open(s.path), PARLEY_EIO);
    /* The first queue is unharmed and still writes. */
    assert_int_equal(outq_push(a, OUTQ_LOW, "two", NULL, 0, 0, 0, NULL, NULL), 0);
    assert_int_equal(outq_count(a), 2);
    outq_close(a);
    outq *b = open_q(s.path, 10, 1000);
    assert_int_equal(outq_count(b), 2);
    assert_string_equal(outq_next(b, 0)->event, "one");
    outq_close(b);
    scratch_free(&s);
}

/* ---- crashes ---- */

enum { CR_PUSH, CR_ACK, CR_SENT };

typedef struct crash_op {
    int kind;
    int priority;
    char id[OUTQ_ID_LEN + 1];
    char event[16];
    uint8_t data[64];
    size_t len;
} crash_op;

typedef struct crash_state {
    model m;
    uint64_t rng;
    uint64_t serial;
} crash_state;

/* The next operation, decided from the state alone, so that the parent
 * can replay what the child did. Applies it to the model. */
static void crash_gen(crash_state *s, crash_op *op)
{
    memset(op, 0, sizeof *op);
    uint64_t r = test_rand(&s->rng) % 10;
    long next = model_next(&s->m, 0);
    if (r >= 7 && s->m.n && (r < 9 || next < 0)) {
        size_t i = (size_t)(test_rand(&s->rng) % s->m.n);
        op->kind = CR_ACK;
        strcpy(op->id, s->m.v[i].id);
        model_remove(&s->m, i);
        return;
    }
    if (r == 9 && next >= 0) {
        op->kind = CR_SENT;
        strcpy(op->id, s->m.v[next].id);
        s->m.v[next].in_flight = true;
        s->m.v[next].attempts++;
        return;
    }
    op->kind = CR_PUSH;
    op->priority = (int)(test_rand(&s->rng) % 4);
    snprintf(op->id, sizeof op->id, "crash-%030llu", (unsigned long long)s->serial);
    snprintf(op->event, sizeof op->event, "c%llu", (unsigned long long)s->serial);
    s->serial++;
    op->len = (size_t)(test_rand(&s->rng) % 65);
    for (size_t i = 0; i < op->len; i++) op->data[i] = (uint8_t)test_rand(&s->rng);
    model_append(&s->m, op->id, op->priority, op->event, op->data, op->len, 0, 0);
}

static void write_all(int fd, const void *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) _exit(90);
        p = (const char *)p + w;
        n -= (size_t)w;
    }
}

/* Runs in the child: applies nops operations, each when a byte arrives on
 * go, reporting each completed one on done_fd, then waits to be killed.
 * Exit codes mean a mismatch. */
static void crash_child(const char *path, crash_state st, int nops, int go, int done_fd)
{
    outq_opts o;
    outq_opts_init(&o);
    o.max_count = 100000;
    o.path = path;
    outq *q;
    if (outq_open(&o, &q) != 0) _exit(80);
    for (int i = 0; i < nops; i++) {
        char c;
        ssize_t n;
        while ((n = read(go, &c, 1)) < 0 && errno == EINTR) continue;
        if (n != 1) _exit(84);
        crash_op op;
        crash_gen(&st, &op);
        if (op.kind == CR_PUSH) {
            if (outq_push(q, op.priority, op.event, op.data, op.len, 0, 0, op.id, NULL) != 0)
                _exit(81);
        } else if (op.kind == CR_ACK) {
            if (outq_ack(q, op.id) != 0) _exit(82);
        } else {
            outq_entry *e = outq_next(q, 0);
            if (!e || strcmp(e->id, op.id) != 0) _exit(83);
            outq_sent(q, e);
        }
        uint32_t done = (uint32_t)i + 1;
        write_all(done_fd, &done, sizeof done);
    }
    for (;;) pause();
}

/* Does the file hold exactly the state of the model (all pending)? */
static bool queue_matches(const snaps *s, const model *m)
{
    size_t *idx = malloc((m->n + 1) * sizeof *idx);
    assert_non_null(idx);
    size_t k = model_order(m, idx);
    bool ok = k == s->n;
    for (size_t i = 0; ok && i < k; i++) {
        const ment *e = &m->v[idx[i]];
        const snap *x = &s->v[i];
        ok = x->seq == e->seq && strcmp(x->id, e->id) == 0 && x->priority == e->priority &&
             strcmp(x->event, e->event) == 0 && x->len == e->len &&
             memcmp(x->data, e->data, e->len) == 0 && x->attempts == e->attempts && !x->in_flight;
    }
    free(idx);
    return ok;
}

static void test_crash(void **state)
{
    (void)state;
    scratch s;
    scratch_init(&s);
    uint64_t rng = chop_seed() ^ 0xc4a54;
    crash_state st = {.rng = rng ^ 0x77};
    model_init(&st.m, 100000, 8u << 20);
    enum { ROUNDS = 30, NOPS = 160 };
    int total_done = 0;
    uint64_t step_ns = 100000;
    static const char go[NOPS] = {0};
    for (int round = 0; round < ROUNDS; round++) {
        int pfd[2], gfd[2];
        assert_int_equal(pipe(pfd), 0);
        assert_int_equal(pipe(gfd), 0);
        /* Kill points: during open, after everything, then random ones.
         * Odd rounds let the child run free, so the kill lands wherever
         * it happens to be; even rounds release one more call after the
         * target and kill a random few microseconds into it. */
        int target = round == 0 ? 0 : round == 1 ? NOPS : (int)(test_rand(&rng) % NOPS);
        bool stepped = round > 1 && round % 2 == 0;
        uint64_t delay_ns = test_rand(&rng) % (2 * step_ns + 1);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(pfd[0]);
            close(gfd[1]);
            crash_child(s.path, st, NOPS, gfd[0], pfd[1]);
            _exit(99);
        }
        close(pfd[1]);
        close(gfd[0]);
        /* Round 1 goes one call at a time to time a call, wake-ups included. */
        size_t ahead = round == 1 ? 1 : stepped ? (size_t)target : NOPS;
        assert_int_equal(write(gfd[1], go, ahead), (ssize_t)ahead);
        uint64_t t0 = ptime_ns();
        int done = 0;
        while (done < target) {
            uint32_t v;
            ssize_t n = read(pfd[0], &v, sizeof v);
            if (n < 0 && errno == EINTR) continue;
            assert_int_equal(n, (ssize_t)sizeof v); /* 4-byte writes are atomic */
            assert_int_equal(v, (uint32_t)done + 1);
            done++;
            if (round == 1 && done < NOPS) assert_int_equal(write(gfd[1], go, 1), 1);
        }
        if (round == 1) step_ns = (ptime_ns() - t0) / NOPS;
        if (stepped) {
            assert_int_equal(write(gfd[1], go, 1), 1);
            uint64_t until = ptime_ns() + delay_ns;
            while (ptime_ns() < until) continue;
        }
        assert_int_equal(kill(pid, SIGKILL), 0);
        close(gfd[1]);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGKILL);
        for (;;) {
            uint32_t v;
            ssize_t n = read(pfd[0], &v, sizeof v);
            if (n < 0 && errno == EINTR) continue;
            if (n == 0) break;
            assert_int_equal(n, (ssize_t)sizeof v);
            assert_int_equal(v, (uint32_t)done + 1);
            done++;
        }
        close(pfd[0]);

        /* Every reported call is in the file; the one in progress when the
         * kill came may or may not be, but nothing else. */
        crash_state k0, k1;
        model_copy(&k0.m, &st.m);
        k0.rng = st.rng;
        k0.serial = st.serial;
        crash_op op;
        for (int i = 0; i < done; i++) crash_gen(&k0, &op);
        model_copy(&k1.m, &k0.m);
        k1.rng = k0.rng;
        k1.serial = k0.serial;
        crash_gen(&k1, &op);
        model_reopened(&k0.m);
        model_reopened(&k1.m);

        outq *q = open_q(s.path, 100000, 8u << 20);
        snaps got = take(q);
        outq_close(q);
        bool m0 = queue_matches(&got, &k0.m);
        bool m1 = done < NOPS && queue_matches(&got, &k1.m);
        assert_true(m0 || m1);
        free(got.v);
        free(st.m.v);
        if (m0) {
            st = k0;
            free(k1.m.v);
        } else {
            st = k1;
            free(k0.m.v);
        }
        total_done += done;
    }
    /* Sanity: the rounds did real work. */
    assert_true(total_done > NOPS * 2);
    assert_true(st.m.n > 0);
    free(st.m.v);
    scratch_free(&s);
}

/* ---- storage errors ---- */

static void file_size_limit(rlim_t n)
{
    struct rlimit rl;
    getrlimit(RLIMIT_FSIZE, &rl);
    rl.rlim_cur = n;
    if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(70);
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : 0;
}

/* A full disk (here: a file size limit, in a child so the limit stays
 * there): the push fails with PARLEY_EIO and changes nothing. */
static void test_storage_error(void **state)
{
    (void)state;
    scratch s;
    scratch_init(&s);
    static uint8_t big[200000];
    memset(big, 'b', sizeof big);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        outq_opts o;
        outq_opts_init(&o);
        o.path = s.path;
        outq *q;
        if (outq_open(&o, &q) != 0) _exit(1);
        outq_entry *e;
        if (outq_push(q, OUTQ_LOW, "small", "x", 1, 0, 0, NULL, &e) != 0) _exit(2);
        char id[OUTQ_ID_LEN + 1];
        strcpy(id, e->id);
        char wal[128];
        snprintf(wal, sizeof wal, "%s-wal", s.path);
        off_t lim = file_size(wal) > file_size(s.path) ? file_size(wal) : file_size(s.path);
        file_size_limit((rlim_t)lim + 1000);
        e = (outq_entry *)(uintptr_t)1;
        if (outq_push(q, OUTQ_HIGH, "big", big, sizeof big, 0, 0, NULL, &e) != PARLEY_EIO) _exit(3);
        if (e != NULL) _exit(4);
        if (outq_count(q) != 1 || outq_bytes(q) != 6) _exit(5);
        if (strcmp(outq_next(q, 0)->id, id) != 0) _exit(6);
        /* A caller id refused by storage is not taken either. */
        char cid[OUTQ_ID_LEN + 1];
        snprintf(cid, sizeof cid, "retry-%030d", 0);
        if (outq_push(q, OUTQ_HIGH, "big", big, sizeof big, 0, 0, cid, NULL) != PARLEY_EIO)
            _exit(7);
        if (outq_find(q, cid)) _exit(8);
        file_size_limit(RLIM_INFINITY);
        if (outq_push(q, OUTQ_HIGH, "big", big, 10, 0, 0, cid, NULL) != 0) _exit(9);
        outq_close(q);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    outq *q = open_q(s.path, 10, 1000);
    assert_int_equal(outq_count(q), 2);
    assert_string_equal(outq_next(q, 0)->event, "big");
    outq_close(q);
    scratch_free(&s);
}

/* ---- foreign and corrupt files ---- */

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static void sql(const char *path, const char *stmt)
{
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    int rc = sqlite3_exec(db, stmt, NULL, NULL, &err);
    if (rc != SQLITE_OK) fprintf(stderr, "sql: %s\n", err);
    sqlite3_free(err);
    assert_int_equal(rc, SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static void fresh(const scratch *s)
{
    scratch_rm(s, "");
    scratch_rm(s, "-wal");
    scratch_rm(s, "-shm");
}

/* A healthy queue file with three entries. */
static void make_queue(const scratch *s)
{
    fresh(s);
    outq *q = open_q(s->path, 10, 1000);
    assert_int_equal(outq_push(q, OUTQ_LOW, "a", "1", 1, 0, 0, NULL, NULL), 0);
    assert_int_equal(outq_push(q, OUTQ_HIGH, "b", "2", 1, 0, 0, NULL, NULL), 0);
    assert_int_equal(outq_push(q, OUTQ_NORMAL, "c", "3", 1, 0, 0, NULL, NULL), 0);
    outq_close(q);
    /* A clean close folds the WAL into the file. */
    char wal[128];
    snprintf(wal, sizeof wal, "%s-wal", s->path);
    assert_int_equal(access(wal, F_OK), -1);
}

static void test_foreign(void **state)
{
    (void)state;
    scratch s;
    scratch_init(&s);

    static const char text[] = "this is a text file, not a database, and it is long enough "
                               "to hold a header's worth of bytes: 0123456789abcdef0123456789";
    fresh(&s);
    write_file(s.path, text, sizeof text - 1);
    assert_int_equal(try_open(s.path), PARLEY_EIO);
    /* The file is untouched by the failed open. */
    assert_int_equal(file_size(s.path), (off_t)sizeof text - 1);

    uint8_t noise[8192];
    uint64_t rng = chop_seed() ^ 0x401;
    for (size_t i = 0; i < sizeof noise; i++) noise[i] = (uint8_t)test_rand(&rng);
    fresh(&s);
    write_file(s.path, noise, sizeof noise);
    assert_int_equal(try_open(s.path), PARLEY_EIO);

    /* Another application's database. */
    fresh(&s);
    sql(s.path, "CREATE TABLE notes(x TEXT); INSERT INTO notes VALUES('keep me');");
    assert_int_equal(try_open(s.path), PARLEY_EIO);
    fresh(&s);
    sql(s.path, "PRAGMA user_version = 1;");
    assert_int_equal(try_open(s.path), PARLEY_EIO);
    /* An empty database (or empty file) becomes a queue. */
    fresh(&s);
    write_file(s.path, "", 0);
    assert_int_equal(try_open(s.path), 0);

    /* A queue from a newer version, or with a foreign application id. */
    make_queue(&s);
    sql(s.path, "PRAGMA user_version = 2;");
    assert_int_equal(try_open(s.path), PARLEY_EIO);
    make_queue(&s);
    sql(s.path, "PRAGMA user_version = 0;");
    assert_int_equal(try_open(s.path), PARLEY_EIO);
    make_queue(&s);
    sql(s.path, "PRAGMA application_id = 7;");
    assert_int_equal(try_open(s.path), PARLEY_EIO);
    make_queue(&s);
    sql(s.path, "DROP TABLE outq;");
    assert_int_equal(try_open(s.path), PARLEY_EIO);
    make_queue(&s);
    sql(s.path, "ALTER TABLE outq DROP COLUMN attempts;");
    assert_int_equal(try_open(s.path), PARLEY_EIO);

    /* Rows that no queue writes. */
    static const char *const rows[] = {
        "UPDATE outq SET priority = 4 WHERE seq = 1",
        "UPDATE outq SET priority = -1 WHERE seq = 1",
        "UPDATE outq SET priority = x'02' WHERE seq = 1",
        "UPDATE outq SET id = 'short' WHERE seq = 2",
        "UPDATE outq SET id = substr(id, 1, 35) || '.' WHERE seq = 2",
        "UPDATE outq SET id = CAST(id AS BLOB) WHERE seq = 2",
        "UPDATE outq SET event = CAST(x'610062' AS TEXT) WHERE seq = 3",
        "UPDATE outq SET event = x'61' WHERE seq = 3",
        "UPDATE outq SET data = 'text' WHERE seq = 3",
        "UPDATE outq SET attempts = -1 WHERE seq = 1",
        "UPDATE outq SET attempts = 4294967296 WHERE seq = 1",
        "UPDATE outq SET created_ms = 1.5 WHERE seq = 1",
        "UPDATE outq SET seq = 4611686018427387904 WHERE seq = 3",
        "UPDATE outq SET seq = -5 WHERE seq = 3",
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(rows); i++) {
        make_queue(&s);
        sql(s.path, rows[i]);
        assert_int_equal(try_open(s.path), PARLEY_EIO);
    }
    /* The control: an untouched queue opens. */
    make_queue(&s);
    assert_int_equal(try_open(s.path), 0);

    /* Garbage over the schema page. */
    make_queue(&s);
    int fd = open(s.path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, noise, 1000, 100), 1000);
    close(fd);
    assert_int_equal(try_open(s.path), PARLEY_EIO);
    /* A cut-off file. */
    make_queue(&s);
    assert_int_equal(truncate(s.path, 1000), 0);
    assert_int_equal(try_open(s.path), PARLEY_EIO);

    /* Not a file at all. */
    fresh(&s);
    assert_int_equal(mkdir(s.path, 0700), 0);
    assert_int_equal(try_open(s.path), PARLEY_EIO);
    assert_int_equal(rmdir(s.path), 0);
    char missing[160];
    snprintf(missing, sizeof missing, "%s/no/such/dir/q.db", s.dir);
    assert_int_equal(try_open(missing), PARLEY_EIO);
    scratch_free(&s);
}

int main(void)
{
    /* The failures provoked here are logged; the tests check the codes. */
    parley_log_set(PARLEY_LOG_OFF, NULL, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_args),          cmocka_unit_test(test_order),
        cmocka_unit_test(test_model_memory),  cmocka_unit_test(test_model_file),
        cmocka_unit_test(test_limits),        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_ids),           cmocka_unit_test(test_persist),
        cmocka_unit_test(test_two_opens),     cmocka_unit_test(test_crash),
        cmocka_unit_test(test_storage_error), cmocka_unit_test(test_foreign),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
