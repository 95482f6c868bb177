/* Unit tests for the clients' HTTP proxy selection (src/client/proxy.c):
 * proxy URLs, credentials, no_proxy matching, the environment. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "client/proxy.h"
#include "parley/parley.h"

static void test_parse_ok(void **state)
{
    (void)state;
    pproxy p;
    assert_int_equal(pproxy_parse("http://proxy.corp:3128", &p), 0);
    assert_string_equal(p.host, "proxy.corp");
    assert_int_equal(p.port, 3128);
    assert_string_equal(p.auth, "");
    assert_int_equal(pproxy_parse("HTTP://proxy.corp/", &p), 0);
    assert_int_equal(p.port, 80);
    assert_int_equal(pproxy_parse("10.0.0.1:8080", &p), 0);
    assert_string_equal(p.host, "10.0.0.1");
    assert_int_equal(p.port, 8080);
    assert_int_equal(pproxy_parse("http://[::1]:8080", &p), 0);
    assert_string_equal(p.host, "::1");
    assert_int_equal(p.port, 8080);
    /* "Aladdin:open sesame" */
    assert_int_equal(pproxy_parse("http://Aladdin:open%20sesame@p:1", &p), 0);
    assert_string_equal(p.auth, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    assert_string_equal(p.host, "p");
    /* The last @ ends the credentials; a user alone has an empty password. */
    assert_int_equal(pproxy_parse("http://u@x:p@host:2", &p), 0);
    assert_string_equal(p.host, "host");
    assert_int_equal(pproxy_parse("http://user@h:3", &p), 0);
    assert_string_equal(p.auth, "Basic dXNlcjo=");
}

static void test_parse_bad(void **state)
{
    (void)state;
    pproxy p;
    static const char *const bad[] = {
        "https://proxy:443", "socks5://p:1080", "http://", "http://:80", "http://p:", "http://p:0",
        "http://p:65536", "http://p:8x", "http://p:80/path", "http://[::1", "http://u:%zz@p:1",
        "http://u:%0d%0a@p:1", "http://p q:1", "ftp://p",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (pproxy_parse(bad[i], &p) != PARLEY_EURL) fail_msg("accepted %s", bad[i]);
    }
    assert_int_equal(pproxy_parse(NULL, &p), PARLEY_EURL);
    char big[400];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(pproxy_parse(big, &p), PARLEY_EURL);
}

static void test_bypass(void **state)
{
    (void)state;
    assert_true(pproxy_bypass("*", "anything.example"));
    assert_true(pproxy_bypass("example.com", "example.com"));
    assert_true(pproxy_bypass("example.com", "api.example.com"));
    assert_true(pproxy_bypass(".example.com", "api.example.com"));
    assert_true(pproxy_bypass(".example.com", "example.com"));
    assert_true(pproxy_bypass("*.example.com", "a.b.example.com"));
    assert_true(pproxy_bypass("EXAMPLE.com", "Api.Example.COM"));
    assert_true(pproxy_bypass("a.org, b.org,c.org", "x.b.org"));
    assert_true(pproxy_bypass("localhost:8080", "localhost"));
    assert_true(pproxy_bypass("127.0.0.1", "127.0.0.1"));
    assert_true(pproxy_bypass("[::1]:80", "::1"));
    assert_false(pproxy_bypass("example.com", "badexample.com"));
    assert_false(pproxy_bypass("example.com", "example.com.evil"));
    assert_false(pproxy_bypass("a.org,b.org", "c.org"));
    assert_false(pproxy_bypass("", "x"));
    assert_false(pproxy_bypass(NULL, "x"));
    assert_false(pproxy_bypass("*x", "x"));
}

static void test_pick(void **state)
{
    (void)state;
    pproxy p;
    bool use;
    setenv("http_proxy", "http://h1:1", 1);
    setenv("HTTPS_PROXY", "http://h2:2", 1);
    unsetenv("https_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("no_proxy");
    setenv("NO_PROXY", "internal.corp", 1);
    assert_int_equal(pproxy_pick(NULL, false, "example.com", &p, &use), 0);
    assert_true(use);
    assert_string_equal(p.host, "h1");
    assert_int_equal(pproxy_pick(NULL, true, "example.com", &p, &use), 0);
    assert_true(use);
    assert_string_equal(p.host, "h2");
    assert_int_equal(pproxy_pick(NULL, true, "git.internal.corp", &p, &use), 0);
    assert_false(use);
    /* The option wins: a proxy, or "" for none; no_proxy is for the
     * environment only. */
    assert_int_equal(pproxy_pick("http://h3:3", true, "git.internal.corp", &p, &use), 0);
    assert_true(use);
    assert_string_equal(p.host, "h3");
    assert_int_equal(pproxy_pick("", false, "example.com", &p, &use), 0);
    assert_false(use);
    setenv("http_proxy", "socks5://nope", 1);
    assert_int_equal(pproxy_pick(NULL, false, "example.com", &p, &use), PARLEY_EURL);
    unsetenv("http_proxy");
    unsetenv("HTTPS_PROXY");
    unsetenv("NO_PROXY");
    assert_int_equal(pproxy_pick(NULL, false, "example.com", &p, &use), 0);
    assert_false(use);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_ok),
        cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_bypass),
        cmocka_unit_test(test_pick),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
