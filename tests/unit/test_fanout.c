/* Unit tests for the fan-out order of a commit batch (services/server/fanout.c):
 * across conversations higher priority first, within a conversation the
 * queue order whatever the priorities, stable among equals; checked on
 * examples and against a brute-force reference on random batches. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/server/fanout.h"

enum { L = 0, N = 1, H = 2, U = 3 };

/* Items named by their index in pushed order; conv and prio per item. */
static void order(fanout *f, size_t n, const int *conv, const int *prio, size_t *out)
{
    fanout_reset(f);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(fanout_push(f, (void *)(uintptr_t)(i + 1), (uint64_t)conv[i], prio[i]), 0);
    assert_int_equal(fanout_sort(f), 0);
    assert_int_equal(f->n, n);
    for (size_t i = 0; i < n; i++) out[i] = (size_t)(uintptr_t)f->items[i].ptr - 1;
}

static void test_examples(void **state)
{
    (void)state;
    fanout f = {0};
    size_t out[8];

    /* Five normal room messages, then a high direct message: it goes first. */
    int c1[] = {1, 1, 1, 1, 1, 2}, p1[] = {N, N, N, N, N, H};
    order(&f, 6, c1, p1, out);
    size_t w1[] = {5, 0, 1, 2, 3, 4};
    assert_memory_equal(out, w1, sizeof w1);

    /* A high message never passes an earlier one of its conversation: it
     * pulls it ahead instead (conversation 1: n0 then h1). */
    int c2[] = {3, 1, 3, 1}, p2[] = {N, N, N, H};
    order(&f, 4, c2, p2, out);
    size_t w2[] = {1, 3, 0, 2};
    assert_memory_equal(out, w2, sizeof w2);

    /* All four levels across conversations; low last. */
    int c3[] = {1, 2, 3, 4, 5}, p3[] = {L, N, H, U, N};
    order(&f, 5, c3, p3, out);
    size_t w3[] = {3, 2, 1, 4, 0};
    assert_memory_equal(out, w3, sizeof w3);

    /* One conversation: nothing moves, whatever the priorities. */
    int c4[] = {7, 7, 7, 7}, p4[] = {L, U, N, H};
    order(&f, 4, c4, p4, out);
    size_t w4[] = {0, 1, 2, 3};
    assert_memory_equal(out, w4, sizeof w4);
    assert_int_equal(f.items[0].eff, U);
    assert_int_equal(f.items[3].eff, H);

    /* Out-of-range priorities are clamped; empty and single batches. */
    int c5[] = {1, 2}, p5[] = {-4, 99};
    order(&f, 2, c5, p5, out);
    size_t w5[] = {1, 0};
    assert_memory_equal(out, w5, sizeof w5);
    order(&f, 0, c5, p5, out);
    order(&f, 1, c5, p5, out);
    assert_int_equal(out[0], 0);
    fanout_free(&f);
}

/* The rule, checked pair by pair against the order f holds. */
static void check_rule(const fanout *f, size_t n, const int *conv, const int *prio)
{
    size_t pos[512];
    bool seen[512] = {false};
    for (size_t k = 0; k < n; k++) {
        size_t i = (size_t)(uintptr_t)f->items[k].ptr - 1;
        assert_true(i < n && !seen[i]);
        seen[i] = true;
        pos[i] = k;
    }
    for (size_t i = 0; i < n; i++) {
        /* effective priority: max over later items of its conversation */
        int eff = prio[i];
        for (size_t j = i + 1; j < n; j++)
            if (conv[j] == conv[i] && prio[j] > eff) eff = prio[j];
        for (size_t j = i + 1; j < n; j++) {
            if (conv[j] == conv[i]) {
                assert_true(pos[i] < pos[j]); /* a conversation keeps its order */
                continue;
            }
            int effj = prio[j];
            for (size_t k = j + 1; k < n; k++)
                if (conv[k] == conv[j] && prio[k] > effj) effj = prio[k];
            /* higher effective priority first; equal ones keep queue order */
            if (eff >= effj)
                assert_true(pos[i] < pos[j]);
            else
                assert_true(pos[j] < pos[i]);
        }
    }
}

static void test_random(void **state)
{
    (void)state;
    fanout f = {0};
    srand(12345);
    int conv[512], prio[512];
    for (int round = 0; round < 300; round++) {
        size_t n = (size_t)(rand() % (round < 200 ? 24 : 512));
        int convs = 1 + rand() % 12;
        fanout_reset(&f);
        for (size_t i = 0; i < n; i++) {
            conv[i] = rand() % convs;
            /* mostly normal, as real traffic */
            int r = rand() % 10;
            prio[i] = r < 6 ? N : r < 8 ? L : r < 9 ? H : U;
            assert_int_equal(
                fanout_push(&f, (void *)(uintptr_t)(i + 1),
                            fanout_key((const char *)&conv[i], sizeof conv[i], FANOUT_KEY_SEED),
                            prio[i]),
                0);
        }
        assert_int_equal(fanout_sort(&f), 0);
        check_rule(&f, n, conv, prio);
    }
    /* Steady state: the buffers are as large as the largest batch. */
    size_t cap = f.cap, slots = f.slot_cap;
    fanout_item *items = f.items, *tmp = f.tmp;
    for (int k = 0; k < 2; k++) {
        fanout_reset(&f);
        for (size_t i = 0; i < 100; i++)
            assert_int_equal(fanout_push(&f, (void *)(uintptr_t)(i + 1), i % 7, (int)(i % 4)), 0);
        assert_int_equal(fanout_sort(&f), 0);
    }
    assert_int_equal(f.cap, cap);
    assert_int_equal(f.slot_cap, slots);
    assert_true((f.items == items && f.tmp == tmp) || (f.items == tmp && f.tmp == items));
    fanout_free(&f);
}

static void test_key(void **state)
{
    (void)state;
    uint64_t a = fanout_key("room:x", 6, FANOUT_KEY_SEED);
    assert_int_equal(a, fanout_key("room:x", 6, FANOUT_KEY_SEED));
    assert_true(a != fanout_key("room:y", 6, FANOUT_KEY_SEED));
    /* Chained: two parts hash as their concatenation. */
    assert_int_equal(fanout_key("x", 1, fanout_key("room:", 5, FANOUT_KEY_SEED)), a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_examples),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
