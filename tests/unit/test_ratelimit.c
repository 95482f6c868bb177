/* Token buckets and the log limiter (base/ratelimit.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "base/ratelimit.h"

static void test_starts_full_then_refuses(void **state)
{
    (void)state;
    prate b = {0};
    prate_cfg c = prate_limit(10, 1000, 20); /* 10/s, burst 20 */
    uint64_t now = 5000, retry = 0;
    for (int i = 0; i < 20; i++) assert_true(prate_take(&b, &c, now, 1, &retry));
    assert_false(prate_take(&b, &c, now, 1, &retry));
    assert_int_equal(retry, 100); /* one token every 100 ms */
    assert_false(prate_take(&b, &c, now + 99, 1, &retry));
    assert_int_equal(retry, 1);
    assert_true(prate_take(&b, &c, now + 100, 1, &retry));
    /* Five tokens need 500 ms. */
    assert_false(prate_take(&b, &c, now + 100, 5, &retry));
    assert_int_equal(retry, 500);
    assert_true(prate_take(&b, &c, now + 600, 5, NULL));
}

static void test_refill_caps_at_burst(void **state)
{
    (void)state;
    prate b = {0};
    prate_cfg c = prate_limit(2, 1000, 4);
    assert_true(prate_take(&b, &c, 1, 4, NULL));
    assert_false(prate_full(&b, &c, 1));
    /* Hours later: full, but never more than the burst. */
    assert_true(prate_full(&b, &c, 1 + 3600000));
    assert_true(prate_take(&b, &c, 1 + 3600000, 4, NULL));
    assert_false(prate_take(&b, &c, 1 + 3600000, 1, NULL));
    /* Very long gaps do not overflow. */
    assert_true(prate_take(&b, &c, UINT64_MAX / 2, 4, NULL));
}

static void test_cost_above_burst_and_refund(void **state)
{
    (void)state;
    prate b = {0};
    prate_cfg c = prate_limit(1000, 1000, 1000); /* bytes: 1000/s */
    uint64_t retry;
    /* 5000 bytes at once pass on a full bucket (clamped to the burst)... */
    assert_true(prate_take(&b, &c, 10, 5000, &retry));
    /* ...and then wait a whole second. */
    assert_false(prate_take(&b, &c, 10, 5000, &retry));
    assert_int_equal(retry, 1000);
    prate_refund(&b, &c, 10, 400);
    assert_true(prate_take(&b, &c, 10, 400, NULL));
    assert_false(prate_take(&b, &c, 10, 1, NULL));
    /* A refund never overfills. */
    prate_refund(&b, &c, 10, 1000000);
    assert_true(prate_full(&b, &c, 10));
}

static void test_unlimited_and_clock(void **state)
{
    (void)state;
    prate b = {0};
    prate_cfg none = prate_limit(0, 1000, 0);
    for (int i = 0; i < 1000; i++) assert_true(prate_take(&b, &none, 1, 1000000, NULL));
    prate_cfg c = prate_limit(1, 1000, 1);
    prate d = {0};
    assert_true(prate_take(&d, &c, 10000, 1, NULL));
    /* A clock that steps back gains nothing. */
    assert_false(prate_take(&d, &c, 5000, 1, NULL));
    assert_false(prate_take(&d, &c, 10999, 1, NULL));
    assert_true(prate_take(&d, &c, 11000, 1, NULL));
}

static void test_per_day(void **state)
{
    (void)state;
    prate b = {0};
    prate_cfg c = prate_limit(100, 86400000, 100); /* 100 a day */
    uint64_t retry;
    assert_true(prate_take(&b, &c, 1, 100, NULL));
    assert_false(prate_take(&b, &c, 1, 1, &retry));
    assert_int_equal(retry, 864000); /* 1/100 of a day */
    assert_false(prate_take(&b, &c, 1, 100, &retry));
    assert_int_equal(retry, 86400000);
}

/* Over any window, what passes is at most the burst plus what the rate
 * allows: checked against a long random sequence. */
static void test_property_bound(void **state)
{
    (void)state;
    srand(42);
    for (int round = 0; round < 20; round++) {
        uint64_t tokens = 1 + (uint64_t)(rand() % 50);
        uint32_t period = 100 + (uint32_t)(rand() % 5000);
        uint64_t burst = 1 + (uint64_t)(rand() % 100);
        prate_cfg c = prate_limit(tokens, period, burst);
        prate b = {0};
        uint64_t start = 1000, now = start, passed = 0;
        for (int i = 0; i < 5000; i++) {
            now += (uint64_t)(rand() % 20);
            uint64_t cost = 1 + (uint64_t)(rand() % 3);
            uint64_t retry = 0;
            if (prate_take(&b, &c, now, cost, &retry)) {
                passed += cost > burst ? burst : cost;
            } else {
                /* The promised time is enough, and not too generous. */
                prate copy = b;
                assert_true(prate_take(&copy, &c, now + retry, cost, NULL));
                if (retry > 1) {
                    copy = b;
                    assert_false(prate_take(&copy, &c, now + retry - 1, cost, NULL));
                }
            }
        }
        uint64_t allowed = burst + (now - start) * tokens / period + 1;
        assert_true(passed <= allowed);
    }
}

static void test_log_limit(void **state)
{
    (void)state;
    plog_limit l = {0};
    uint64_t sup = 99;
    assert_true(plog_limit_ok(&l, 1000, 10000, &sup));
    assert_int_equal(sup, 0);
    for (int i = 0; i < 7; i++) assert_false(plog_limit_ok(&l, 1000 + (uint64_t)i, 10000, &sup));
    assert_false(plog_limit_ok(&l, 10999, 10000, &sup));
    assert_true(plog_limit_ok(&l, 11000, 10000, &sup));
    assert_int_equal(sup, 8);
    assert_true(plog_limit_ok(&l, 30000, 10000, &sup));
    assert_int_equal(sup, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_starts_full_then_refuses),
        cmocka_unit_test(test_refill_caps_at_burst),
        cmocka_unit_test(test_cost_above_burst_and_refund),
        cmocka_unit_test(test_unlimited_and_clock),
        cmocka_unit_test(test_per_day),
        cmocka_unit_test(test_property_bound),
        cmocka_unit_test(test_log_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
