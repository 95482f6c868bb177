/* Unit tests for the Admin UI namespace's encoders (src/server/admin_ui.h):
 * the lossy JSON string writer, the secret header and query names, the
 * handshake object (fields, redaction, decoding, first-of-repeated, bounds)
 * and the ISO time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "codec/json.h"
#include "codec/utf8.h"
#include "parley/parley.h"
#include "server/admin_ui.h"

#define H(n, v) {n, sizeof n - 1, v, sizeof v - 1}

static const char *str(pbuf *b)
{
    pbuf_append(b, "", 1);
    b->len--;
    return (const char *)b->ptr;
}

/* The handshake text for target and headers, checked to be one valid
 * JSON object within the bound. */
static void handshake(pbuf *out, const char *target, const http_header *h, size_t n, json_val *v)
{
    out->len = 0;
    assert_int_equal(admin_handshake_json(out, target, strlen(target), h, n, "127.0.0.1", false,
                                          1796672868468LL),
                     0);
    assert_true(out->len <= ADMIN_HS_MAX);
    assert_int_equal(json_parse((const char *)out->ptr, out->len, 32, v, NULL), 0);
    assert_int_equal(v->type, JSON_OBJECT);
}

/* The string member path a.b of v decoded into buf ("" when absent; NULL
 * when not a string). */
static const char *get(const json_val *v, const char *a, const char *b, char *buf, size_t cap)
{
    json_val x, y;
    if (!json_object_get(v, a, &x)) return "";
    if (b) {
        if (!json_object_get(&x, b, &y)) return "";
        x = y;
    }
    if (x.type != JSON_STRING) return NULL;
    long n = json_string_decode(&x, buf, cap - 1);
    assert_true(n >= 0);
    buf[n] = 0;
    return buf;
}

static void test_json_lossy(void **state)
{
    (void)state;
    pbuf b = {0};
    assert_int_equal(admin_json_lossy(&b, "h\xc3\xa9\"\\\n", 6), 0);
    assert_string_equal(str(&b), "\"h\xc3\xa9\\\"\\\\\\n\"");
    b.len = 0;
    /* Not UTF-8: bytes >= 0x80 become '?', the rest is kept and escaped. */
    assert_int_equal(admin_json_lossy(&b, "a\xff\xc3\x01z\xc3\xa9", 7), 0);
    assert_string_equal(str(&b), "\"a??\\u0001z??\"");
    b.len = 0;
    assert_int_equal(admin_json_lossy(&b, "", 0), 0);
    assert_string_equal(str(&b), "\"\"");
    pbuf_free(&b);
}

static void test_secret_names(void **state)
{
    (void)state;
    const char *hs[] = {"authorization", "Authorization", "PROXY-AUTHORIZATION", "cookie",
                        "Cookie", "x-api-key", "X-Auth-Token"};
    for (size_t i = 0; i < sizeof hs / sizeof *hs; i++)
        assert_true(admin_header_secret(hs[i], strlen(hs[i])));
    const char *ok[] = {"host", "user-agent", "cookies", "authorizatio", "origin", ""};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++)
        assert_false(admin_header_secret(ok[i], strlen(ok[i])));
    const char *qs[] = {"token", "TOKEN", "access_token", "auth", "jwt", "key", "apikey", "api_key",
                        "password", "sid"};
    for (size_t i = 0; i < sizeof qs / sizeof *qs; i++)
        assert_true(admin_query_secret(qs[i], strlen(qs[i])));
    const char *qok[] = {"EIO", "transport", "t", "tokens", "keys", "room", ""};
    for (size_t i = 0; i < sizeof qok / sizeof *qok; i++)
        assert_false(admin_query_secret(qok[i], strlen(qok[i])));
}

static void test_handshake_fields(void **state)
{
    (void)state;
    pbuf b = {0};
    json_val v;
    char buf[512];
    http_header h[] = {H("Host", "example:8080"), H("Authorization", "Bearer secret-1"),
                       H("Cookie", "sid=secret-2"), H("X-Custom", "one"), H("x-custom", "two"),
                       H("Origin", "https://app.example"), H("User-Agent", "t\xc3\xa9st")};
    handshake(&b, "/socket.io/?EIO=4&transport=polling&token=secret-3&room=a+b%20c&t=x&t=y&flag",
              h, sizeof h / sizeof *h, &v);
    const char *text = str(&b);
    assert_null(strstr(text, "secret-1"));
    assert_null(strstr(text, "secret-2"));
    assert_null(strstr(text, "secret-3"));
    /* The reference's members, in its order. */
    json_iter it;
    json_iter_init(&it, &v);
    json_val k, x;
    const char *order[] = {"address", "headers", "query", "issued", "secure", "time", "url",
                           "xdomain"};
    size_t i = 0;
    while (json_object_next(&it, &k, &x)) {
        assert_true(i < 8);
        assert_true(json_string_eq(&k, order[i]));
        i++;
    }
    assert_int_equal(i, 8);
    assert_string_equal(get(&v, "address", NULL, buf, sizeof buf), "127.0.0.1");
    assert_string_equal(get(&v, "headers", "host", buf, sizeof buf), "example:8080");
    assert_string_equal(get(&v, "headers", "authorization", buf, sizeof buf), "[redacted]");
    assert_string_equal(get(&v, "headers", "cookie", buf, sizeof buf), "[redacted]");
    assert_string_equal(get(&v, "headers", "x-custom", buf, sizeof buf), "one");
    assert_string_equal(get(&v, "headers", "user-agent", buf, sizeof buf), "t\xc3\xa9st");
    assert_string_equal(get(&v, "query", "EIO", buf, sizeof buf), "4");
    assert_string_equal(get(&v, "query", "token", buf, sizeof buf), "[redacted]");
    assert_string_equal(get(&v, "query", "room", buf, sizeof buf), "a b c");
    assert_string_equal(get(&v, "query", "t", buf, sizeof buf), "x");
    assert_string_equal(get(&v, "query", "flag", buf, sizeof buf), "");
    assert_string_equal(get(&v, "url", NULL, buf, sizeof buf),
                        "/socket.io/?EIO=4&transport=polling&token=[redacted]&room=a+b%20c&t=x&t=y&"
                        "flag");
    assert_string_equal(get(&v, "time", NULL, buf, sizeof buf),
                        "Mon Dec 07 2026 19:47:48 GMT+0000 (Coordinated Universal Time)");
    json_object_get(&v, "issued", &x);
    int64_t issued;
    assert_true(json_int(&x, &issued));
    assert_int_equal(issued, 1796672868468LL);
    json_object_get(&v, "xdomain", &x);
    assert_int_equal(x.type, JSON_TRUE);
    json_object_get(&v, "secure", &x);
    assert_int_equal(x.type, JSON_FALSE);
    /* A header with one repeated key only once. */
    assert_non_null(strstr(text, "\"x-custom\":\"one\""));
    assert_null(strstr(text, "\"two\""));
    pbuf_free(&b);
}

static void test_handshake_odd_input(void **state)
{
    (void)state;
    pbuf b = {0};
    json_val v;
    char buf[512];
    /* No query, an empty one, malformed escapes, a secret name spelt with
     * escapes, invalid UTF-8 after decoding, empty segments. */
    handshake(&b, "/socket.io/", NULL, 0, &v);
    assert_string_equal(get(&v, "url", NULL, buf, sizeof buf), "/socket.io/");
    handshake(&b, "/socket.io/?", NULL, 0, &v);
    handshake(&b, "/x?a=%zz&b=%4&c=%&&&=v&%74oken=s3cret&d=%ff%c3", NULL, 0, &v);
    const char *text = str(&b);
    assert_null(strstr(text, "s3cret"));
    assert_string_equal(get(&v, "query", "a", buf, sizeof buf), "%zz");
    assert_string_equal(get(&v, "query", "b", buf, sizeof buf), "%4");
    assert_string_equal(get(&v, "query", "c", buf, sizeof buf), "%");
    assert_string_equal(get(&v, "query", "token", buf, sizeof buf), "[redacted]");
    assert_string_equal(get(&v, "query", "d", buf, sizeof buf), "??");
    assert_string_equal(get(&v, "query", "", buf, sizeof buf), "v");
    /* A header value that is not UTF-8. */
    http_header h[] = {H("X-Bin", "\x80\xfe")};
    handshake(&b, "/", h, 1, &v);
    assert_string_equal(get(&v, "headers", "x-bin", buf, sizeof buf), "??");
    pbuf_free(&b);
}

static void test_handshake_bounded(void **state)
{
    (void)state;
    /* 64 headers of 1000 bytes, a 7000-byte query: the record stays
     * within ADMIN_HS_MAX, the fixed members are all there, the url is
     * cut, and what fits of headers and query is whole. */
    static char names[64][16];
    static char value[1001];
    memset(value, 'v', 1000);
    http_header h[64];
    for (int i = 0; i < 64; i++) {
        snprintf(names[i], sizeof names[i], "X-H%02d", i);
        h[i] = (http_header){names[i], strlen(names[i]), value, 1000};
    }
    pbuf target = {0};
    pbuf_append_str(&target, "/socket.io/?EIO=4");
    for (int i = 0; i < 700; i++) pbuf_appendf(&target, "&k%03d=%s", i, "\"\\\"");
    pbuf b = {0};
    json_val v;
    handshake(&b, str(&target), h, 64, &v);
    char buf[4096];
    assert_string_equal(get(&v, "query", "EIO", buf, sizeof buf), "4");
    const char *url = get(&v, "url", NULL, buf, sizeof buf);
    assert_non_null(url);
    assert_true(strlen(url) <= 512);
    assert_int_equal(strncmp(url, "/socket.io/?EIO=4&k000=", 23), 0);
    json_val x;
    assert_true(json_object_get(&v, "xdomain", &x));
    assert_true(json_object_get(&v, "time", &x));
    /* 8 KiB of distinct parameters: only the first 64 are looked at. */
    target.len = 0;
    pbuf_append_str(&target, "/?");
    for (int i = 0; i < 2000; i++) pbuf_appendf(&target, "%sp%d", i ? "&" : "", i);
    handshake(&b, str(&target), NULL, 0, &v);
    json_val qv;
    assert_true(json_object_get(&v, "query", &qv));
    assert_int_equal(json_count(&qv), 64);
    assert_string_equal(get(&v, "query", "p63", buf, sizeof buf), "");
    assert_false(json_object_get(&qv, "p64", &x));
    /* A 1 KiB header value beyond HDR_VAL_MAX is never shown. */
    static char big[1100];
    memset(big, 'b', sizeof big);
    http_header hb[] = {{"X-Big", 5, big, sizeof big}, H("X-Small", "s")};
    handshake(&b, "/", hb, 2, &v);
    assert_string_equal(get(&v, "headers", "x-big", buf, sizeof buf), "");
    assert_string_equal(get(&v, "headers", "x-small", buf, sizeof buf), "s");
    pbuf_free(&b);
    pbuf_free(&target);
}

static void test_iso_time(void **state)
{
    (void)state;
    char out[25];
    admin_iso_time(out, 1796672868468LL);
    assert_string_equal(out, "2026-12-07T19:47:48.468Z");
    admin_iso_time(out, 0);
    assert_string_equal(out, "1970-01-01T00:00:00.000Z");
    admin_iso_time(out, 951782400005LL); /* 2000-02-29 */
    assert_string_equal(out, "2000-02-29T00:00:00.005Z");
}

static void test_event_json(void **state)
{
    (void)state;
    pbuf b = {0};
    const int64_t t = 1796672868468LL;
    struct {
        const char *args, *want;
    } cases[] = {
        {"[]", "[\"/chat\",\"ID\",[\"ev\"],\"2026-12-07T19:47:48.468Z\"]"},
        {" [ \n ] ", "[\"/chat\",\"ID\",[\"ev\"],\"2026-12-07T19:47:48.468Z\"]"},
        {"[1,\"two\",{\"a\":[3]}]",
         "[\"/chat\",\"ID\",[\"ev\",1,\"two\",{\"a\":[3]}],\"2026-12-07T19:47:48.468Z\"]"},
        {" [ 1 , null ] ", "[\"/chat\",\"ID\",[\"ev\", 1 , null ],\"2026-12-07T19:47:48.468Z\"]"},
        {"[{\"_placeholder\":true,\"num\":0}]",
         "[\"/chat\",\"ID\",[\"ev\",{\"_placeholder\":true,\"num\":0}],\"2026-12-07T19:47:48.468Z\"]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        b.len = 0;
        assert_int_equal(admin_event_json(&b, "/chat", "ID", "ev", 2, cases[i].args,
                                          strlen(cases[i].args), t),
                         0);
        assert_string_equal(str(&b), cases[i].want);
        json_val v;
        assert_int_equal(json_parse((const char *)b.ptr, b.len, 32, &v, NULL), 0);
    }
    /* Too big: a note instead of the arguments. */
    pbuf big = {0};
    pbuf_append(&big, "[\"", 2);
    for (int i = 0; i < ADMIN_EVENT_MAX; i++) pbuf_append(&big, "x", 1);
    pbuf_append(&big, "\"]", 2);
    b.len = 0;
    assert_int_equal(admin_event_json(&b, "/", "ID", "ev", 2, (const char *)big.ptr, big.len, t), 0);
    char want[160];
    snprintf(want, sizeof want, "[\"/\",\"ID\",[\"ev\",\"[%u bytes not shown]\"],\"2026-12-07T19:47:48.468Z\"]",
             (unsigned)big.len);
    assert_string_equal(str(&b), want);
    /* An event name that is not UTF-8 still makes valid JSON. */
    b.len = 0;
    assert_int_equal(admin_event_json(&b, "/", "ID", "e\xff", 2, "[]", 2, t), 0);
    assert_true(utf8_valid(b.ptr, b.len));
    pbuf_free(&big);
    pbuf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_lossy),          cmocka_unit_test(test_secret_names),
        cmocka_unit_test(test_handshake_fields),    cmocka_unit_test(test_handshake_odd_input),
        cmocka_unit_test(test_handshake_bounded),   cmocka_unit_test(test_iso_time),
        cmocka_unit_test(test_event_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
