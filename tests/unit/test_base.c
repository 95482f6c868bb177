/* Unit tests for the base layer: buffers, base64, timer heap, errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/map.h"
#include "client/backoff.h"
#include "base/theap.h"
#include "base/util.h"
#include "chop.h"
#include "parley/parley.h"

static void test_pbuf(void **state)
{
    (void)state;
    pbuf b = {0};
    assert_int_equal(pbuf_append_str(&b, "hello"), 0);
    assert_int_equal(pbuf_appendf(&b, " %d %s", 42, "x"), 0);
    assert_int_equal(b.len, 10);
    assert_memory_equal(b.ptr, "hello 42 x", 10);
    pbuf_consume(&b, 6);
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.ptr, "42 x", 4);
    /* A long formatted string goes through the slow path. */
    char big[600];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(pbuf_appendf(&b, "%s!", big), 0);
    assert_int_equal(b.len, 4 + 599 + 1);
    assert_int_equal(b.ptr[b.len - 1], '!');
    /* Overflowing reservations fail instead of wrapping. */
    assert_int_equal(pbuf_reserve(&b, SIZE_MAX), PARLEY_ENOMEM);
    pbuf_reset(&b, 16);
    assert_null(b.ptr);
    pbuf_free(&b);

    pshared *s = pshared_from("abc", 3);
    assert_non_null(s);
    pshared_ref(s);
    assert_int_equal(s->refs, 2);
    pshared_unref(s);
    pshared_unref(s);
}

static void test_base64(void **state)
{
    (void)state;
    static const struct {
        const char *raw, *enc;
    } v[] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},      {"foo", "Zm9v"},
             {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        char out[32];
        size_t n = base64_encode((const uint8_t *)v[i].raw, strlen(v[i].raw), out);
        assert_int_equal(n, strlen(v[i].enc));
        assert_string_equal(out, v[i].enc);
        assert_int_equal(base64_encoded_len(strlen(v[i].raw)), n);
        uint8_t dec[32];
        long d = base64_decode(v[i].enc, n, dec, sizeof dec);
        assert_int_equal(d, (long)strlen(v[i].raw));
        assert_memory_equal(dec, v[i].raw, (size_t)d);
    }
    uint8_t dec[8];
    assert_int_equal(base64_decode("Zg=", 3, dec, sizeof dec), -1);      /* length */
    assert_int_equal(base64_decode("Zh==", 4, dec, sizeof dec), -1);     /* stray bits */
    assert_int_equal(base64_decode("Z===", 4, dec, sizeof dec), -1);     /* too much padding */
    assert_int_equal(base64_decode("Zg==Zg==", 8, dec, sizeof dec), -1); /* padding inside */
    assert_int_equal(base64_decode("Zm9v", 4, dec, 2), -1);              /* output too small */
    assert_int_equal(base64_decode("Zm 9", 4, dec, sizeof dec), -1);     /* bad character */
}

static int fired_order[64];
static int fired_n;
typedef struct tt {
    ptimer t;
    int id;
    ptimer_heap *h;
    ptimer *victim;
} tt;

static void tt_cb(ptimer *t)
{
    tt *x = PARLEY_CONTAINER_OF(t, tt, t);
    fired_order[fired_n++] = x->id;
    if (x->victim) ptimer_heap_remove(x->h, x->victim);
}

static void test_theap(void **state)
{
    (void)state;
    ptimer_heap h = {0};
    tt t[40];
    uint64_t rng = chop_seed();
    for (int i = 0; i < 40; i++) {
        ptimer_init(&t[i].t, tt_cb);
        t[i].id = i;
        t[i].h = &h;
        t[i].victim = NULL;
        assert_int_equal(ptimer_heap_add(&h, &t[i].t, 100 + test_rand(&rng) % 50), 0);
    }
    /* Remove a few, re-arm one, and let timer 0 cancel timer 1 when it fires. */
    ptimer_heap_remove(&h, &t[5].t);
    ptimer_heap_remove(&h, &t[6].t);
    assert_false(ptimer_armed(&t[5].t));
    assert_int_equal(ptimer_heap_add(&h, &t[7].t, 10), 0);
    assert_int_equal(ptimer_heap_add(&h, &t[0].t, 11), 0);
    assert_int_equal(ptimer_heap_add(&h, &t[1].t, 12), 0);
    t[0].victim = &t[1].t;

    fired_n = 0;
    assert_int_equal(ptimer_heap_run(&h, 9), 0);
    assert_int_equal(ptimer_heap_run(&h, 11), 2);
    assert_int_equal(fired_order[0], 7);
    assert_int_equal(fired_order[1], 0);
    assert_false(ptimer_armed(&t[1].t));
    unsigned rest = ptimer_heap_run(&h, 1000);
    assert_int_equal(rest, 40 - 2 - 3);
    /* Deadlines never go backwards. */
    for (int i = 3; i < fired_n; i++)
        assert_true(t[fired_order[i - 1]].t.deadline <= t[fired_order[i]].t.deadline);
    assert_null(ptimer_heap_peek(&h));
    ptimer_heap_free(&h);
}

static void test_map(void **state)
{
    (void)state;
    enum { N = 5000 };
    static char keys[N][24];
    static bool present[N];
    pmap m = {0};
    assert_null(pmap_get(&m, "x", 1));
    assert_null(pmap_del(&m, "x", 1));
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], "room-%d", i);
        assert_int_equal(pmap_put(&m, keys[i], strlen(keys[i]), &keys[i]), 0);
        present[i] = true;
    }
    assert_int_equal(m.n, N);
    uint64_t rng = chop_seed();
    /* Random deletes and re-inserts, checked against the truth table. */
    for (int round = 0; round < 4 * N; round++) {
        int i = (int)(test_rand(&rng) % N);
        if (present[i]) {
            assert_ptr_equal(pmap_del(&m, keys[i], strlen(keys[i])), &keys[i]);
            present[i] = false;
        } else {
            assert_int_equal(pmap_put(&m, keys[i], strlen(keys[i]), &keys[i]), 0);
            present[i] = true;
        }
    }
    size_t count = 0;
    for (int i = 0; i < N; i++) {
        void *v = pmap_get(&m, keys[i], strlen(keys[i]));
        assert_ptr_equal(v, present[i] ? (void *)&keys[i] : NULL);
        count += present[i];
    }
    assert_int_equal(m.n, count);
    size_t pos = 0, seen = 0;
    while (pmap_next(&m, &pos)) seen++;
    assert_int_equal(seen, count);
    /* Replacing keeps the count. */
    assert_int_equal(pmap_put(&m, "room-1", 6, &keys[2]), 0);
    assert_ptr_equal(pmap_get(&m, "room-1", 6), &keys[2]);
    /* Two maps hash differently (keyed), yet both work. */
    pmap m2 = {0};
    assert_int_equal(pmap_put(&m2, "a", 1, &keys[0]), 0);
    assert_true(m2.k0 != m.k0 || m2.k1 != m.k1);
    assert_ptr_equal(pmap_get(&m2, "a", 1), &keys[0]);
    pmap_free(&m2);
    pmap_free(&m);
}

static void test_backoff(void **state)
{
    (void)state;
    /* socket.io-client's defaults: 1 s growing to 5 s, randomization 0.5. */
    backoff b = {.base_ms = 1000, .max_ms = 5000, .jitter = 0.5};
    assert_int_equal(backoff_next(&b, 0.5), 1000); /* r = 0.5: no deviation */
    assert_int_equal(backoff_next(&b, 0.5), 2000);
    assert_int_equal(backoff_next(&b, 0.5), 4000);
    assert_int_equal(backoff_next(&b, 0.5), 5000); /* capped */
    assert_int_equal(backoff_next(&b, 0.0), 2500); /* 5000 - 50% */
    assert_int_equal(backoff_next(&b, 0.999999), 5000); /* never above max */
    backoff_reset(&b);
    assert_int_equal(backoff_next(&b, 0.0), 500);
    /* Full jitter: uniform in [0, d]. */
    backoff f = {.base_ms = 100, .max_ms = 10000, .full_jitter = true};
    uint64_t rng = 42;
    for (int i = 0; i < 20; i++) {
        double r = (double)(test_rand(&rng) >> 11) / 9007199254740992.0;
        uint32_t d = backoff_next(&f, r);
        uint64_t cap = 100ull << (i < 7 ? i : 7);
        assert_true(d <= (cap < 10000 ? cap : 10000));
    }
    /* Many attempts do not overflow. */
    backoff big = {.base_ms = 1000, .max_ms = 30000, .attempts = 4000000000u};
    assert_int_equal(backoff_next(&big, 0.5), 30000);
}

static void test_strerror(void **state)
{
    (void)state;
    for (int e = 0; e >= PARLEY_EURL; e--) assert_string_not_equal(parley_strerror(e), "unknown error");
    assert_string_equal(parley_strerror(-999), "unknown error");
    assert_true(pstr_ieqz("UpGrade", 7, "upgrade"));
    assert_false(pstr_ieqz("upgrad", 6, "upgrade"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pbuf),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_theap),
        cmocka_unit_test(test_map),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
