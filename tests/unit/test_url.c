/* Unit tests for the URL parser (ws, wss, http, https). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "base/url.h"
#include "base/util.h"
#include "parley/parley.h"

static void test_url_ok(void **state)
{
    (void)state;
    static const struct {
        const char *url, *scheme;
        bool tls;
        const char *host;
        bool ipv6;
        unsigned port;
        bool port_explicit;
        const char *target, *host_header;
    } v[] = {
        {"ws://example.com", "ws", false, "example.com", false, 80, false, "/", "example.com"},
        {"wss://example.com/", "wss", true, "example.com", false, 443, false, "/", "example.com"},
        {"http://example.com:8080/a/b?c=d&e", "http", false, "example.com", false, 8080, true,
         "/a/b?c=d&e", "example.com:8080"},
        {"https://Example.COM/Path", "https", true, "example.com", false, 443, false, "/Path",
         "example.com"},
        {"WSS://h:443/x", "wss", true, "h", false, 443, true, "/x", "h"},
        {"Ws://h:80", "ws", false, "h", false, 80, true, "/", "h"},
        {"ws://h:443", "ws", false, "h", false, 443, true, "/", "h:443"},
        {"ws://h?q=1", "ws", false, "h", false, 80, false, "/?q=1", "h"},
        {"ws://h/p?q=1#frag", "ws", false, "h", false, 80, false, "/p?q=1", "h"},
        {"ws://h#frag", "ws", false, "h", false, 80, false, "/", "h"},
        {"ws://h:1/", "ws", false, "h", false, 1, true, "/", "h:1"},
        {"ws://h:65535/", "ws", false, "h", false, 65535, true, "/", "h:65535"},
        {"ws://h:00080/", "ws", false, "h", false, 80, true, "/", "h"},
        {"ws://127.0.0.1:9000/socket.io/?EIO=4&transport=websocket", "ws", false, "127.0.0.1",
         false, 9000, true, "/socket.io/?EIO=4&transport=websocket", "127.0.0.1:9000"},
        {"ws://[::1]/", "ws", false, "::1", true, 80, false, "/", "[::1]"},
        {"wss://[2001:DB8::1]:8443/chat", "wss", true, "2001:db8::1", true, 8443, true, "/chat",
         "[2001:db8::1]:8443"},
        {"http://[::ffff:192.0.2.1]", "http", false, "::ffff:192.0.2.1", true, 80, false, "/",
         "[::ffff:192.0.2.1]"},
        {"ws://my_host-1.example~/%7Euser/a%20b", "ws", false, "my_host-1.example~", false, 80,
         false, "/%7Euser/a%20b", "my_host-1.example~"},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        purl u;
        memset(&u, 0xa5, sizeof u);
        int rc = purl_parse(v[i].url, &u);
        if (rc) print_error("%s\n", v[i].url);
        assert_int_equal(rc, 0);
        assert_string_equal(u.scheme, v[i].scheme);
        assert_int_equal(u.tls, v[i].tls);
        assert_string_equal(u.host, v[i].host);
        assert_int_equal(u.ipv6, v[i].ipv6);
        assert_int_equal(u.port, v[i].port);
        assert_int_equal(u.port_explicit, v[i].port_explicit);
        assert_string_equal(u.target, v[i].target);
        assert_string_equal(u.host_header, v[i].host_header);
    }
}

static void test_url_bad(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "example.com",
        "localhost:8080",
        "ftp://h/",
        "wsx://h/",
        "w://h/",
        "verylongscheme://h/",
        "ws:/h/",
        "ws:h",
        "ws://",
        "ws:///path",
        "ws://:80/",
        "ws://user@h/",
        "ws://user:pw@h/",
        "ws://@h/",
        "ws://h:0/",
        "ws://h:65536/",
        "ws://h:99999/",
        "ws://h:123456/",
        "ws://h:/",
        "ws://h:8a/",
        "ws://h:-1/",
        "ws://h:+80/",
        "ws://h:80:81/",
        "ws://h h/",
        "ws://h/a b",
        " ws://h/",
        "ws://h/\t",
        "ws://h/\x01",
        "ws://h/\x7f",
        "ws://h/caf\xc3\xa9",
        "ws://h/#a b",
        "ws://h\r\n/",
        "ws://[::1/",
        "ws://[]/",
        "ws://[::1]x/",
        "ws://[::1]:/",
        "ws://[::1]:0/",
        "ws://[not:ipv6]/",
        "ws://[::1%25eth0]/",
        "ws://[1.2.3.4]/",
        "ws://h%41/",
        "ws://h!/",
        "ws://h\\x/",
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++) {
        purl u;
        int rc = purl_parse(bad[i], &u);
        if (rc != PARLEY_EURL) print_error("accepted: %s\n", bad[i]);
        assert_int_equal(rc, PARLEY_EURL);
    }
    purl u;
    assert_int_equal(purl_parse(NULL, &u), PARLEY_EURL);
}

static void test_url_lengths(void **state)
{
    (void)state;
    purl u;
    char url[4096];

    /* A 255-character host fits; 256 does not. */
    strcpy(url, "ws://");
    memset(url + 5, 'a', 255);
    strcpy(url + 5 + 255, ":65535/x");
    assert_int_equal(purl_parse(url, &u), 0);
    assert_int_equal(strlen(u.host), 255);
    assert_int_equal(strlen(u.host_header), 255 + 6);
    memset(url + 5, 'a', 256);
    strcpy(url + 5 + 256, "/x");
    assert_int_equal(purl_parse(url, &u), PARLEY_EURL);

    /* A 2047-character target fits (with its NUL); 2048 does not, also when
     * the "/" is added for a bare query. */
    strcpy(url, "ws://h/");
    memset(url + 7, 'p', 2046);
    url[7 + 2046] = '\0';
    assert_int_equal(purl_parse(url, &u), 0);
    assert_int_equal(strlen(u.target), 2047);
    strcpy(url + 7 + 2046, "p");
    assert_int_equal(purl_parse(url, &u), PARLEY_EURL);
    /* The fragment does not count. */
    strcpy(url + 7 + 2046, "#fragment");
    assert_int_equal(purl_parse(url, &u), 0);
    strcpy(url, "ws://h?");
    memset(url + 7, 'q', 2045);
    url[7 + 2045] = '\0';
    assert_int_equal(purl_parse(url, &u), 0);
    assert_int_equal(strlen(u.target), 2047);
    assert_memory_equal(u.target, "/?qq", 4);
    strcpy(url + 7 + 2045, "q");
    assert_int_equal(purl_parse(url, &u), PARLEY_EURL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_ok),
        cmocka_unit_test(test_url_bad),
        cmocka_unit_test(test_url_lengths),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
