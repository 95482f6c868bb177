/* Unit tests for the WebSocket opening handshake (RFC 6455 section 4).
 * Requests and responses go through the HTTP parser, fed whole, byte by
 * byte and in random pieces. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/util.h"
#include "chop.h"
#include "codec/http.h"
#include "codec/ws_handshake.h"
#include "parley/parley.h"

#define RFC_KEY    "dGhlIHNhbXBsZSBub25jZQ=="
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#define MAXH       32

typedef struct head_buf {
    uint8_t *buf;
    http_head h;
    http_header hdrs[MAXH];
} head_buf;

/* Parses a complete head fed according to mode; fails the test when the
 * head does not parse. */
static void parse_head(head_buf *r, bool response, const char *msg, chop_mode mode)
{
    size_t len = strlen(msg);
    http_parser p;
    http_parser_init(&p, response, NULL);
    chopper c;
    chop_init(&c, mode, chop_seed());
    r->buf = malloc(len);
    assert_non_null(r->buf);
    size_t fed = 0;
    long rc = 0;
    while (fed < len && rc == 0) {
        size_t n = chop_next(&c, len - fed);
        memcpy(r->buf + fed, msg + fed, n);
        fed += n;
        rc = http_parse_head(&p, r->buf, fed, &r->h, r->hdrs, MAXH);
    }
    if (rc != (long)len) print_error("parse: %ld %s\n", rc, p.error ? p.error : "");
    assert_int_equal(rc, (long)len);
}

static const chop_mode modes[] = {CHOP_WHOLE, CHOP_BYTES, CHOP_RANDOM};

static void test_accept_key(void **state)
{
    (void)state;
    char out[29];
    memset(out, 'x', sizeof out);
    ws_accept_key(RFC_KEY, strlen(RFC_KEY), out);
    assert_string_equal(out, RFC_ACCEPT);
    ws_accept_key("", 0, out);
    assert_int_equal(strlen(out), 28);
    assert_string_not_equal(out, RFC_ACCEPT);

    char k1[25], k2[25];
    assert_int_equal(ws_client_key(k1), 0);
    assert_int_equal(ws_client_key(k2), 0);
    assert_int_equal(strlen(k1), 24);
    assert_string_not_equal(k1, k2);
    uint8_t raw[18];
    assert_int_equal(base64_decode(k1, 24, raw, sizeof raw), 16);
}

static const char good_req[] = "GET /chat HTTP/1.1\r\n"
                               "Host: server.example.com\r\n"
                               "Upgrade: websocket\r\n"
                               "Connection: Upgrade\r\n"
                               "Sec-WebSocket-Key: " RFC_KEY "\r\n"
                               "Origin: http://example.com\r\n"
                               "Sec-WebSocket-Protocol: chat, superchat\r\n"
                               "Sec-WebSocket-Version: 13\r\n"
                               "\r\n";

static void test_check_upgrade_ok(void **state)
{
    (void)state;
    for (size_t m = 0; m < 3; m++) {
        head_buf r;
        parse_head(&r, false, good_req, modes[m]);
        ws_upgrade up;
        const char *why = "unset";
        assert_int_equal(ws_check_upgrade(&r.h, &up, &why), 0);
        assert_null(why);
        assert_int_equal(up.key_len, 24);
        assert_memory_equal(up.key, RFC_KEY, 24);
        assert_int_equal(up.origin_len, strlen("http://example.com"));
        assert_memory_equal(up.origin, "http://example.com", up.origin_len);
        assert_int_equal(up.host_len, strlen("server.example.com"));
        assert_memory_equal(up.host, "server.example.com", up.host_len);
        assert_true(up.has_protocols);
        assert_false(up.has_extensions);
        free(r.buf);
    }
    /* Tokens in lists, any case; no Origin. */
    head_buf r;
    parse_head(&r, false,
               "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c, WebSocket\r\n"
               "Connection: keep-alive, UPGRADE\r\nSec-WebSocket-Key: " RFC_KEY "\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
               CHOP_RANDOM);
    ws_upgrade up;
    const char *why;
    assert_int_equal(ws_check_upgrade(&r.h, &up, &why), 0);
    assert_null(up.origin);
    assert_false(up.has_protocols);
    assert_true(up.has_extensions);
    free(r.buf);
}

/* Builds the good request with one line replaced or removed and checks
 * the answer. `from` is a line of good_req (without CRLF); `to` replaces
 * it (NULL removes it, "" keeps it and is used with `add`). */
static void expect_reject(const char *from, const char *to, const char *add, int status)
{
    char msg[1024];
    const char *at = strstr(good_req, from);
    assert_non_null(at);
    size_t pre = (size_t)(at - good_req);
    const char *post = at + strlen(from) + 2;
    int n;
    if (to && !*to)
        n = snprintf(msg, sizeof msg, "%.*s%s\r\n%s\r\n%s", (int)pre, good_req, from, add, post);
    else if (to)
        n = snprintf(msg, sizeof msg, "%.*s%s\r\n%s", (int)pre, good_req, to, post);
    else
        n = snprintf(msg, sizeof msg, "%.*s%s", (int)pre, good_req, post);
    assert_true(n > 0 && (size_t)n < sizeof msg);
    for (size_t m = 0; m < 3; m++) {
        head_buf r;
        parse_head(&r, false, msg, modes[m]);
        ws_upgrade up;
        const char *why = NULL;
        int got = ws_check_upgrade(&r.h, &up, &why);
        if (got != status) print_error("%s -> %d, expected %d\n", msg, got, status);
        assert_int_equal(got, status);
        if (status)
            assert_non_null(why);
        else
            assert_null(why);
        free(r.buf);
    }
}

static void test_check_upgrade_reject(void **state)
{
    (void)state;
    expect_reject("GET /chat HTTP/1.1", "POST /chat HTTP/1.1", NULL, 405);
    expect_reject("GET /chat HTTP/1.1", "get /chat HTTP/1.1", NULL, 405);
    expect_reject("GET /chat HTTP/1.1", "GET /chat HTTP/1.0", NULL, 400);
    expect_reject("Upgrade: websocket", NULL, NULL, 400);
    expect_reject("Upgrade: websocket", "Upgrade: h2c", NULL, 400);
    expect_reject("Upgrade: websocket", "Upgrade: websockets", NULL, 400);
    expect_reject("Connection: Upgrade", NULL, NULL, 400);
    expect_reject("Connection: Upgrade", "Connection: keep-alive", NULL, 400);
    expect_reject("Connection: Upgrade", "Connection: upgraded", NULL, 400);
    expect_reject("Sec-WebSocket-Key: " RFC_KEY, NULL, NULL, 400);
    expect_reject("Sec-WebSocket-Key: " RFC_KEY, "", "Sec-WebSocket-Key: " RFC_KEY, 400);
    expect_reject("Sec-WebSocket-Key: " RFC_KEY, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ", NULL,
                  400);
    expect_reject("Sec-WebSocket-Key: " RFC_KEY,
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZXg=", NULL, 400); /* 17 bytes */
    expect_reject("Sec-WebSocket-Key: " RFC_KEY, "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j", NULL,
                  400); /* 15 bytes */
    expect_reject("Sec-WebSocket-Key: " RFC_KEY,
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==", NULL, 400); /* stray bits */
    expect_reject("Sec-WebSocket-Key: " RFC_KEY,
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ!==", NULL, 400);
    expect_reject("Sec-WebSocket-Key: " RFC_KEY, "Sec-WebSocket-Key:", NULL, 400);
    expect_reject("Sec-WebSocket-Version: 13", NULL, NULL, 426);
    expect_reject("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8", NULL, 426);
    expect_reject("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 12", NULL, 426);
    expect_reject("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 1", NULL, 426);
    expect_reject("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13, 8", NULL, 426);
    expect_reject("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 013", NULL, 426);
    expect_reject("Sec-WebSocket-Version: 13", "", "Sec-WebSocket-Version: 13", 426);
    /* Whitespace around the values is not part of them. */
    expect_reject("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version:  13 ", NULL, 0);

    /* A head that never had a Host (HTTP/1.0 parses without one). */
    head_buf r;
    parse_head(&r, false,
               "GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
               "Sec-WebSocket-Key: " RFC_KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n",
               CHOP_WHOLE);
    ws_upgrade up;
    const char *why;
    assert_int_equal(ws_check_upgrade(&r.h, &up, &why), 400);
    free(r.buf);
    /* Built by hand: HTTP/1.1 without Host. */
    http_header hs[] = {
        {"Upgrade", 7, "websocket", 9},
        {"Connection", 10, "Upgrade", 7},
        {"Sec-WebSocket-Key", 17, RFC_KEY, 24},
        {"Sec-WebSocket-Version", 21, "13", 2},
    };
    http_head h = {0};
    h.method = "GET";
    h.method_len = 3;
    h.version_minor = 1;
    h.headers = hs;
    h.num_headers = 4;
    why = NULL;
    assert_int_equal(ws_check_upgrade(&h, &up, &why), 400);
    assert_string_equal(why, "missing Host");
}

static void test_write_accept(void **state)
{
    (void)state;
    pbuf out = {0};
    assert_int_equal(ws_write_accept(&out, RFC_KEY, 24, NULL, NULL, NULL, 0), 0);
    static const char w1[] = "HTTP/1.1 101 Switching Protocols\r\n"
                             "Upgrade: websocket\r\n"
                             "Connection: Upgrade\r\n"
                             "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n"
                             "\r\n";
    assert_int_equal(out.len, strlen(w1));
    assert_memory_equal(out.ptr, w1, out.len);

    out.len = 0;
    http_header extra[] = {{"Set-Cookie", 10, "io=abc; Path=/", 14}};
    assert_int_equal(ws_write_accept(&out, RFC_KEY, 24, "chat", "permessage-deflate", extra, 1), 0);
    static const char w2[] = "HTTP/1.1 101 Switching Protocols\r\n"
                             "Upgrade: websocket\r\n"
                             "Connection: Upgrade\r\n"
                             "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n"
                             "Sec-WebSocket-Protocol: chat\r\n"
                             "Sec-WebSocket-Extensions: permessage-deflate\r\n"
                             "Set-Cookie: io=abc; Path=/\r\n"
                             "\r\n";
    assert_int_equal(out.len, strlen(w2));
    assert_memory_equal(out.ptr, w2, out.len);

    /* Many extra headers (beyond the writer's stack array). */
    out.len = 0;
    http_header many[40];
    for (size_t i = 0; i < 40; i++) many[i] = (http_header){"X-N", 3, "v", 1};
    assert_int_equal(ws_write_accept(&out, RFC_KEY, 24, NULL, NULL, many, 40), 0);
    assert_int_equal(out.len, strlen(w1) + 40 * strlen("X-N: v\r\n"));

    /* Refusals append nothing. */
    out.len = 0;
    http_header bad[] = {{"X", 1, "a\r\nb", 4}};
    assert_int_equal(ws_write_accept(&out, RFC_KEY, 24, NULL, NULL, bad, 1), PARLEY_EINVAL);
    assert_int_equal(ws_write_accept(&out, RFC_KEY, 24, "a\r\nb", NULL, NULL, 0), PARLEY_EINVAL);
    assert_int_equal(ws_write_accept(&out, RFC_KEY, 24, NULL, "x\n", NULL, 0), PARLEY_EINVAL);
    assert_int_equal(out.len, 0);
    pbuf_free(&out);
}

static void test_write_reject(void **state)
{
    (void)state;
    pbuf out = {0};
    assert_int_equal(ws_write_reject(&out, 400, "missing Host"), 0);
    static const char w1[] = "HTTP/1.1 400 Bad Request\r\n"
                             "Content-Type: text/plain\r\n"
                             "Connection: close\r\n"
                             "Content-Length: 13\r\n"
                             "\r\n"
                             "missing Host\n";
    assert_int_equal(out.len, strlen(w1));
    assert_memory_equal(out.ptr, w1, out.len);

    out.len = 0;
    assert_int_equal(ws_write_reject(&out, 426, "unsupported WebSocket version"), 0);
    static const char w2[] = "HTTP/1.1 426 Upgrade Required\r\n"
                             "Content-Type: text/plain\r\n"
                             "Connection: close\r\n"
                             "Sec-WebSocket-Version: 13\r\n"
                             "Content-Length: 30\r\n"
                             "\r\n"
                             "unsupported WebSocket version\n";
    assert_int_equal(out.len, strlen(w2));
    assert_memory_equal(out.ptr, w2, out.len);

    out.len = 0;
    assert_int_equal(ws_write_reject(&out, 405, NULL), 0);
    static const char w3[] = "HTTP/1.1 405 Method Not Allowed\r\n"
                             "Content-Type: text/plain\r\n"
                             "Connection: close\r\n"
                             "Allow: GET\r\n"
                             "Content-Length: 19\r\n"
                             "\r\n"
                             "Method Not Allowed\n";
    assert_int_equal(out.len, strlen(w3));
    assert_memory_equal(out.ptr, w3, out.len);

    /* It parses as a response that closes the connection. */
    head_buf r;
    char *copy = malloc(out.len - 19 + 1);
    memcpy(copy, out.ptr, out.len - 19);
    copy[out.len - 19] = '\0';
    parse_head(&r, true, copy, CHOP_BYTES);
    assert_int_equal(r.h.status, 405);
    assert_false(r.h.keep_alive);
    assert_int_equal(r.h.content_length, 19);
    free(r.buf);
    free(copy);

    out.len = 0;
    assert_int_equal(ws_write_reject(&out, 42, "x"), PARLEY_EINVAL);
    assert_int_equal(out.len, 0);
    pbuf_free(&out);
}

static void test_client_request(void **state)
{
    (void)state;
    pbuf out = {0};
    const char *protos[] = {"chat", "superchat"};
    http_header extra[] = {{"Origin", 6, "http://example.com", 18}};
    assert_int_equal(ws_write_client_request(&out, "server.example.com", "/chat", RFC_KEY, protos,
                                             2, "permessage-deflate; client_max_window_bits", extra,
                                             1),
                     0);
    static const char w1[] =
        "GET /chat HTTP/1.1\r\n"
        "Host: server.example.com\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Key: " RFC_KEY "\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: chat, superchat\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        "Origin: http://example.com\r\n"
        "\r\n";
    assert_int_equal(out.len, strlen(w1));
    assert_memory_equal(out.ptr, w1, out.len);

    /* The server side accepts what the client side writes. */
    char *copy = malloc(out.len + 1);
    memcpy(copy, out.ptr, out.len);
    copy[out.len] = '\0';
    for (size_t m = 0; m < 3; m++) {
        head_buf r;
        parse_head(&r, false, copy, modes[m]);
        ws_upgrade up;
        const char *why;
        assert_int_equal(ws_check_upgrade(&r.h, &up, &why), 0);
        assert_true(up.has_protocols && up.has_extensions);
        free(r.buf);
    }
    free(copy);

    out.len = 0;
    assert_int_equal(ws_write_client_request(&out, "h:81", "/", RFC_KEY, NULL, 0, NULL, NULL, 0),
                     0);
    static const char w2[] = "GET / HTTP/1.1\r\nHost: h:81\r\nUpgrade: websocket\r\n"
                             "Connection: Upgrade\r\nSec-WebSocket-Key: " RFC_KEY "\r\n"
                             "Sec-WebSocket-Version: 13\r\n\r\n";
    assert_int_equal(out.len, strlen(w2));
    assert_memory_equal(out.ptr, w2, out.len);

    /* Refusals append nothing. */
    out.len = 0;
    const char *bad_protos[] = {"chat", "bad proto"};
    const char *empty_proto[] = {""};
    const char *comma_proto[] = {"a,b"};
    http_header bad[] = {{"X Y", 3, "v", 1}};
    assert_int_equal(ws_write_client_request(&out, "h", "/", RFC_KEY, bad_protos, 2, NULL, NULL, 0),
                     PARLEY_EINVAL);
    assert_int_equal(
        ws_write_client_request(&out, "h", "/", RFC_KEY, empty_proto, 1, NULL, NULL, 0),
        PARLEY_EINVAL);
    assert_int_equal(
        ws_write_client_request(&out, "h", "/", RFC_KEY, comma_proto, 1, NULL, NULL, 0),
        PARLEY_EINVAL);
    assert_int_equal(ws_write_client_request(&out, "h", "/", RFC_KEY, NULL, 0, NULL, bad, 1),
                     PARLEY_EINVAL);
    assert_int_equal(ws_write_client_request(&out, "h", "/a b", RFC_KEY, NULL, 0, NULL, NULL, 0),
                     PARLEY_EINVAL);
    assert_int_equal(ws_write_client_request(&out, "h\r\n", "/", RFC_KEY, NULL, 0, NULL, NULL, 0),
                     PARLEY_EINVAL);
    assert_int_equal(ws_write_client_request(&out, "h", "/", "short", NULL, 0, NULL, NULL, 0),
                     PARLEY_EINVAL);
    assert_int_equal(ws_write_client_request(&out, "h", "/", RFC_KEY, NULL, 0, "a\nb", NULL, 0),
                     PARLEY_EINVAL);
    assert_int_equal(out.len, 0);
    pbuf_free(&out);
}

static int verify(const char *resp, const char *const *protos, size_t nprotos, chop_mode mode,
                  ws_client_result *res, const char **why, head_buf *keep)
{
    head_buf r;
    parse_head(&r, true, resp, mode);
    int rc = ws_verify_response(&r.h, RFC_KEY, protos, nprotos, res, why);
    if (keep)
        *keep = r;
    else
        free(r.buf);
    return rc;
}

#define RESP_101    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
#define ACCEPT_LINE "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n"

static void test_verify_response(void **state)
{
    (void)state;
    const char *protos[] = {"chat", "superchat"};
    for (size_t m = 0; m < 3; m++) {
        ws_client_result res;
        const char *why = "unset";
        head_buf keep;
        assert_int_equal(verify(RESP_101 ACCEPT_LINE "\r\n", protos, 2, modes[m], &res, &why, NULL),
                         0);
        assert_null(why);
        assert_null(res.protocol);
        assert_null(res.extensions);

        assert_int_equal(verify(RESP_101 ACCEPT_LINE
                                "Sec-WebSocket-Protocol: superchat\r\n"
                                "Sec-WebSocket-Extensions: permessage-deflate; "
                                "server_no_context_takeover\r\n\r\n",
                                protos, 2, modes[m], &res, &why, &keep),
                         0);
        assert_int_equal(res.protocol_len, 9);
        assert_memory_equal(res.protocol, "superchat", 9);
        assert_int_equal(res.extensions_len,
                         strlen("permessage-deflate; server_no_context_takeover"));
        assert_memory_equal(res.extensions, "permessage-deflate; server_no_context_takeover",
                            res.extensions_len);
        free(keep.buf);

        /* Tokens in any case, in lists. */
        assert_int_equal(verify("HTTP/1.1 101 OK\r\nUpgrade: WebSocket\r\nConnection: keep-alive, "
                                "UPGRADE\r\n" ACCEPT_LINE "\r\n",
                                NULL, 0, modes[m], &res, &why, NULL),
                         0);
    }

    static const struct {
        const char *resp;
        size_t nprotos;
        int want_status;
    } bad[] = {
        {"HTTP/1.1 200 OK\r\n" ACCEPT_LINE "\r\n", 2, 200},
        {"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 2, 403},
        {"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n" ACCEPT_LINE "\r\n", 2, 101},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n" ACCEPT_LINE
         "\r\n",
         2, 101},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" ACCEPT_LINE "\r\n", 2, 101},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: "
         "close\r\n" ACCEPT_LINE "\r\n",
         2, 101},
        {RESP_101 "\r\n", 2, 101},
        {RESP_101 "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo\r\n\r\n", 2, 101},
        {RESP_101 "Sec-WebSocket-Accept: S3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n", 2, 101},
        {RESP_101 "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=x\r\n\r\n", 2, 101},
        {RESP_101 ACCEPT_LINE ACCEPT_LINE "\r\n", 2, 101},
        {RESP_101 ACCEPT_LINE "Sec-WebSocket-Protocol: other\r\n\r\n", 2, 101},
        {RESP_101 ACCEPT_LINE "Sec-WebSocket-Protocol: Chat\r\n\r\n", 2, 101},
        {RESP_101 ACCEPT_LINE "Sec-WebSocket-Protocol: chat, superchat\r\n\r\n", 2, 101},
        {RESP_101 ACCEPT_LINE "Sec-WebSocket-Protocol: chat\r\n\r\n", 0, 101},
        {RESP_101 ACCEPT_LINE
         "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
         2, 101},
        {RESP_101 ACCEPT_LINE "Sec-WebSocket-Extensions: a\r\nSec-WebSocket-Extensions: b\r\n\r\n",
         2, 101},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++) {
        for (size_t m = 0; m < 3; m++) {
            ws_client_result res;
            const char *why = NULL;
            head_buf keep;
            int rc = verify(bad[i].resp, protos, bad[i].nprotos, modes[m], &res, &why, &keep);
            if (rc != PARLEY_EHANDSHAKE) print_error("accepted case %zu\n", i);
            assert_int_equal(rc, PARLEY_EHANDSHAKE);
            assert_non_null(why);
            assert_int_equal(keep.h.status, bad[i].want_status);
            free(keep.buf);
        }
    }
}

static void test_header_items(void **state)
{
    (void)state;
    http_header hs[] = {
        {"Sec-WebSocket-Protocol", 22, "chat, , superchat ", 18},
        {"X", 1, "ignored, items", 14},
        {"sec-websocket-protocol", 22, "", 0},
        {"SEC-WEBSOCKET-PROTOCOL", 22, ",\tv2\t,", 6},
    };
    http_head h = {0};
    h.headers = hs;
    h.num_headers = 4;
    static const char *const want[] = {"chat", "superchat", "v2"};
    size_t pos = 0, k = 0;
    const char *item;
    size_t n;
    while (ws_header_items(&h, "Sec-WebSocket-Protocol", &pos, &item, &n)) {
        assert_true(k < 3);
        assert_int_equal(n, strlen(want[k]));
        assert_memory_equal(item, want[k], n);
        k++;
    }
    assert_int_equal(k, 3);
    /* Exhausted stays exhausted. */
    assert_false(ws_header_items(&h, "Sec-WebSocket-Protocol", &pos, &item, &n));
    pos = 0;
    assert_false(ws_header_items(&h, "Missing", &pos, &item, &n));

    pbuf out = {0};
    assert_int_equal(ws_header_join(&h, "sec-websocket-protocol", &out), 0);
    static const char joined[] = "chat, , superchat , ,\tv2\t,";
    assert_int_equal(out.len, strlen(joined));
    assert_memory_equal(out.ptr, joined, out.len);
    out.len = 0;
    assert_int_equal(ws_header_join(&h, "Missing", &out), 0);
    assert_int_equal(out.len, 0);
    pbuf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accept_key),           cmocka_unit_test(test_check_upgrade_ok),
        cmocka_unit_test(test_check_upgrade_reject), cmocka_unit_test(test_write_accept),
        cmocka_unit_test(test_write_reject),         cmocka_unit_test(test_client_request),
        cmocka_unit_test(test_verify_response),      cmocka_unit_test(test_header_items),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
