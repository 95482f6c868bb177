/*
 * The static node table (server/peers.h): tags derived from node ids,
 * --peer parsing and its errors, and the route lookup the engine uses to
 * relay a polling request to the node that owns its session.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "server/peers.h"

static void test_tag(void **state)
{
    (void)state;
    char a[5], b[5], c[5];
    ppeers_tag("node-a", a);
    ppeers_tag("node-a", b);
    ppeers_tag("node-b", c);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_int_equal(strlen(a), 4);
    /* SHA-256("abc") starts ba 78 16: 101110 100111 100000 010110. */
    ppeers_tag("abc", a);
    assert_string_equal(a, "ungW");
    for (int i = 0; i < 4; i++)
        assert_non_null(
            strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", c[i]));
}

static void test_parse(void **state)
{
    (void)state;
    static ppeers t;
    memset(&t, 0, sizeof t);
    assert_null(ppeers_set_self(&t, "node-a"));
    assert_null(ppeers_add(&t, "node-b=127.0.0.1:8081"));
    assert_null(ppeers_add(&t, "node-c=[::1]:8082"));
    assert_null(ppeers_add(&t, "node-d=parley-4.internal:80"));
    assert_int_equal(t.n, 3);
    assert_string_equal(t.p[1].host, "::1");
    assert_int_equal(t.p[1].port, 8082);

    assert_non_null(ppeers_add(&t, "node-b=127.0.0.1:9")); /* repeated id */
    assert_non_null(ppeers_add(&t, "node-a=127.0.0.1:9")); /* our own id */
    assert_non_null(ppeers_add(&t, "node-e"));             /* no address */
    assert_non_null(ppeers_add(&t, "node-e=127.0.0.1"));   /* no port */
    assert_non_null(ppeers_add(&t, "node-e=127.0.0.1:0")); /* port 0 */
    assert_non_null(ppeers_add(&t, "node-e=127.0.0.1:70000"));
    assert_non_null(ppeers_add(&t, "node-e=:80"));         /* no host */
    assert_non_null(ppeers_add(&t, "=127.0.0.1:80"));      /* no id */
    assert_non_null(ppeers_add(&t, "no de=127.0.0.1:80")); /* bad id character */
    assert_non_null(ppeers_add(&t, "node-e=a b:80"));      /* bad host */
    assert_non_null(ppeers_set_self(&t, ""));
    assert_non_null(ppeers_set_self(&t, "node-b")); /* a peer's id */
    assert_int_equal(t.n, 3);
    assert_string_equal(t.self_id, "node-a");
    char id[70];
    memset(id, 'x', sizeof id);
    id[65] = 0;
    assert_non_null(ppeers_set_self(&t, id));
}

static void test_route(void **state)
{
    (void)state;
    static ppeers t;
    memset(&t, 0, sizeof t);
    assert_null(ppeers_set_self(&t, "a"));
    assert_null(ppeers_add(&t, "b=10.0.0.2:3000"));
    char host[64];
    unsigned port = 0;
    char tag[5];
    ppeers_tag("b", tag);
    assert_int_equal(ppeers_route(&t, tag, host, sizeof host, &port), 0);
    assert_string_equal(host, "10.0.0.2");
    assert_int_equal(port, 3000);
    ppeers_tag("a", tag); /* our own tag is never a route */
    assert_int_equal(ppeers_route(&t, tag, host, sizeof host, &port), -1);
    assert_int_equal(ppeers_route(&t, "zzzz", host, sizeof host, &port), -1);
    ppeers_tag("b", tag);
    assert_int_equal(ppeers_route(&t, tag, host, 4, &port), -1); /* does not fit */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tag),
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_route),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
