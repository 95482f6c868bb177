/* Unit tests for the server's guards: the Engine.IO Origin allow-list
 * matcher. (The attachment caps, the authentication deadline and closed
 * namespaces are tested against a running server in
 * tests/interop/sio_guard.test.mjs.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/engine.h"

static bool allowed(const char *list, const char *origin)
{
    return engine_origin_allowed(list, origin, strlen(origin));
}

static void test_origin_exact_and_case(void **state)
{
    (void)state;
    const char *list = "https://app.example,http://localhost:8080";
    assert_true(allowed(list, "https://app.example"));
    assert_true(allowed(list, "http://localhost:8080"));
    /* Scheme and host compare case-insensitively. */
    assert_true(allowed(list, "HTTPS://App.Example"));
    assert_true(allowed(list, "http://LOCALHOST:8080"));
    /* Anything else differs. */
    assert_false(allowed(list, "http://app.example"));       /* scheme */
    assert_false(allowed(list, "https://app.example.evil")); /* host suffix */
    assert_false(allowed(list, "https://evil.app.example")); /* subdomain */
    assert_false(allowed(list, "https://app.exampl"));       /* prefix */
    assert_false(allowed(list, "https://xapp.example"));
    assert_false(allowed(list, ""));
}

static void test_origin_ports(void **state)
{
    (void)state;
    /* The port is significant. */
    assert_false(allowed("http://localhost:8080", "http://localhost"));
    assert_false(allowed("http://localhost:8080", "http://localhost:8081"));
    assert_false(allowed("http://localhost:8080", "http://localhost:80800"));
    assert_false(allowed("http://localhost", "http://localhost:8080"));
    assert_true(allowed("http://localhost:8080", "http://localhost:08080"));
    /* A default port written out is the same origin. */
    assert_true(allowed("https://a.example:443", "https://a.example"));
    assert_true(allowed("https://a.example", "https://a.example:443"));
    assert_true(allowed("http://a.example", "http://a.example:80"));
    assert_true(allowed("wss://a.example", "wss://a.example:443"));
    assert_false(allowed("https://a.example", "https://a.example:80"));
    assert_false(allowed("http://a.example", "http://a.example:443"));
    /* A scheme without a known default: a missing port matches only a
     * missing port. */
    assert_true(allowed("app://local", "app://local"));
    assert_false(allowed("app://local", "app://local:80"));
    /* Bad ports never parse, so they match only byte for byte. */
    assert_false(allowed("http://h:80", "http://h:99999"));
    assert_false(allowed("http://h", "http://h:"));
    assert_false(allowed("http://h", "http://h:8x"));
}

static void test_origin_null_and_opaque(void **state)
{
    (void)state;
    assert_false(allowed("https://app.example", "null"));
    /* "*" is every origin (as in a CORS list), "null" included. */
    assert_true(allowed("*", "https://app.example"));
    assert_true(allowed("https://a.example, *", "null"));
    assert_true(allowed("https://app.example,null", "null"));
    assert_false(allowed("https://app.example,null", "NULL"));
    assert_true(allowed("file://", "file://"));
    /* A list entry with a path is not an origin: it matches nothing. */
    assert_false(allowed("https://app.example/", "https://app.example"));
    assert_false(allowed("https://app.example/x", "https://app.example"));
    /* An origin with a path, user info or spaces never matches an entry
     * it is not byte for byte. */
    assert_false(allowed("https://app.example", "https://app.example/"));
    assert_false(allowed("https://app.example", "https://u@app.example"));
    assert_false(allowed("https://app.example", "https://app.example "));
    assert_false(allowed("https://app.example", " https://app.example"));
}

static void test_origin_list_syntax(void **state)
{
    (void)state;
    const char *list = " https://a.example , ,\thttp://b.example:81\t,";
    assert_true(allowed(list, "https://a.example"));
    assert_true(allowed(list, "http://b.example:81"));
    assert_false(allowed(list, "http://b.example"));
    assert_false(allowed("", "https://a.example"));
    assert_false(allowed(",", ""));
    /* IPv6 literals. */
    assert_true(allowed("http://[::1]:3000", "http://[::1]:3000"));
    assert_true(allowed("http://[::1]", "http://[::1]:80"));
    assert_false(allowed("http://[::1]:3000", "http://[::1]:3001"));
    assert_false(allowed("http://[::1]:3000", "http://[::2]:3000"));
    assert_false(allowed("http://[::1", "http://[::1:3000"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_origin_exact_and_case),
        cmocka_unit_test(test_origin_ports),
        cmocka_unit_test(test_origin_null_and_opaque),
        cmocka_unit_test(test_origin_list_syntax),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
