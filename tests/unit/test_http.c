/* Unit tests for the HTTP/1.1 codec: head parsing (requests and
 * responses), body decoding, writers and request-target helpers. Every
 * parser input is fed whole, byte by byte and in random pieces. */
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
#include "parley/parley.h"

/* A string literal and its length (embedded NULs allowed). */
#define S(lit) (lit), (sizeof(lit) - 1)
#define MAXH   64

/* Feeding schedules: whole, byte by byte, several random seeds, or two
 * pieces split at a given offset. */
#define NSCHED 6
typedef struct feeder {
    chopper c;
    bool use_split;
    size_t split;
} feeder;

static void feeder_init(feeder *f, int sched)
{
    memset(f, 0, sizeof *f);
    chop_mode m = sched == 0 ? CHOP_WHOLE : sched == 1 ? CHOP_BYTES : CHOP_RANDOM;
    chop_init(&f->c, m, chop_seed() + (uint64_t)sched);
}

static void feeder_split(feeder *f, size_t split)
{
    memset(f, 0, sizeof *f);
    f->use_split = true;
    f->split = split;
}

static size_t feeder_next(feeder *f, size_t fed, size_t remaining)
{
    if (!f->use_split) return chop_next(&f->c, remaining);
    if (fed < f->split && f->split - fed < remaining) return f->split - fed;
    return remaining;
}

typedef struct parsed {
    uint8_t *buf; /* exactly the bytes fed so far, so ASan sees over-reads */
    size_t len;
    long rc;
    int status;
    http_parser p;
    http_head h;
    http_header hdrs[MAXH];
} parsed;

static void feed_head(parsed *r, feeder *f, bool response, bool head_req, const http_limits *lim,
                      const void *msg, size_t len)
{
    memset(r, 0, sizeof *r);
    http_parser_init(&r->p, response, lim);
    http_parser_reset(&r->p, head_req);
    size_t fed = 0;
    while (fed < len) {
        size_t n = feeder_next(f, fed, len - fed);
        assert_true(n > 0 && n <= len - fed);
        uint8_t *nb = malloc(fed + n);
        assert_non_null(nb);
        if (fed) memcpy(nb, r->buf, fed);
        memcpy(nb + fed, (const uint8_t *)msg + fed, n);
        free(r->buf);
        r->buf = nb;
        fed += n;
        r->rc = http_parse_head(&r->p, r->buf, fed, &r->h, r->hdrs, MAXH);
        if (r->rc != 0) break;
        /* Incomplete: everything received so far has been looked at once. */
        assert_int_equal(r->p.scanned, fed);
    }
    r->len = fed;
    r->status = r->p.error_status;
}

static void parsed_free(parsed *r)
{
    free(r->buf);
    r->buf = NULL;
}

/* Asserts the outcome of parsing msg under every feeding schedule. */
static void expect_head_ex(bool response, bool head_req, const http_limits *lim, const void *msg,
                           size_t len, long rc, int status)
{
    for (int s = 0; s < NSCHED; s++) {
        feeder f;
        feeder_init(&f, s);
        parsed r;
        feed_head(&r, &f, response, head_req, lim, msg, len);
        if (r.rc != rc || r.status != status)
            print_error("schedule %d: rc %ld status %d (%s), expected rc %ld status %d\n", s, r.rc,
                        r.status, r.p.error ? r.p.error : "-", rc, status);
        assert_int_equal(r.rc, rc);
        assert_int_equal(r.status, status);
        if (rc < 0) {
            assert_non_null(r.p.error);
            /* Errors are sticky: asking again gives the same answer. */
            assert_int_equal(http_parse_head(&r.p, r.buf, r.len, &r.h, r.hdrs, MAXH), rc);
            assert_int_equal(r.p.error_status, status);
        }
        parsed_free(&r);
    }
}

static void expect_req(const void *msg, size_t len, long rc, int status)
{
    expect_head_ex(false, false, NULL, msg, len, rc, status);
}

static void expect_resp(const void *msg, size_t len, long rc, int status)
{
    expect_head_ex(true, false, NULL, msg, len, rc, status);
}

static bool hdr_is(const http_header *f, const char *name, const char *value)
{
    return f->name_len == strlen(name) && memcmp(f->name, name, f->name_len) == 0 &&
           f->value_len == strlen(value) && memcmp(f->value, value, f->value_len) == 0;
}

static bool span_is(const char *p, size_t n, const char *want)
{
    return n == strlen(want) && memcmp(p, want, n) == 0;
}

/* ---- request heads ---- */

static void test_request_basic(void **state)
{
    (void)state;
    static const char msg[] = "GET /chat?x=1 HTTP/1.1\r\n"
                              "Host: example.com\r\n"
                              "X-Empty:\r\n"
                              "X-Trim: \t padded value \t \r\n"
                              "X-Obs: caf\xc3\xa9\r\n"
                              "X-Tight:v\r\n"
                              "\r\n";
    for (int s = 0; s < NSCHED; s++) {
        feeder f;
        feeder_init(&f, s);
        parsed r;
        feed_head(&r, &f, false, false, NULL, S(msg));
        assert_int_equal(r.rc, (long)strlen(msg));
        assert_true(span_is(r.h.method, r.h.method_len, "GET"));
        assert_true(span_is(r.h.target, r.h.target_len, "/chat?x=1"));
        assert_int_equal(r.h.version_minor, 1);
        assert_int_equal(r.h.num_headers, 5);
        assert_ptr_equal(r.h.headers, r.hdrs);
        assert_true(hdr_is(&r.hdrs[0], "Host", "example.com"));
        assert_true(hdr_is(&r.hdrs[1], "X-Empty", ""));
        assert_true(hdr_is(&r.hdrs[2], "X-Trim", "padded value"));
        assert_true(hdr_is(&r.hdrs[3], "X-Obs", "caf\xc3\xa9"));
        assert_true(hdr_is(&r.hdrs[4], "X-Tight", "v"));
        assert_int_equal(r.h.body_kind, HTTP_BODY_NONE);
        assert_true(r.h.keep_alive);
        assert_false(r.h.conn_upgrade);
        assert_false(r.h.expect_continue);
        /* Results point into the caller's buffer. */
        assert_ptr_equal(r.h.method, (const char *)r.buf);
        assert_ptr_equal(http_find_header(&r.h, "x-trim"), &r.hdrs[2]);
        assert_null(http_find_header(&r.h, "X-Missing"));
        parsed_free(&r);
    }
    /* The body is not part of the head. */
    expect_req(S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"), 47, 0);
}

static void test_request_leading_lines(void **state)
{
    (void)state;
    expect_req(S("\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), 29, 0);
    expect_req(S("\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), 35, 0);
    expect_req(S("\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("\rGET / HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("\r\n\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    /* Incomplete leading lines wait for more. */
    expect_req(S("\r\n\r"), 0, 0);
    /* The skipped lines count towards the head: the parsed request line
     * starts after them. */
    feeder f;
    feeder_init(&f, 0);
    parsed r;
    feed_head(&r, &f, false, false, NULL, S("\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"));
    assert_ptr_equal(r.h.method, (const char *)r.buf + 2);
    parsed_free(&r);
}

static void test_request_line_errors(void **state)
{
    (void)state;
    expect_req(S("GET  / HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET /  HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S(" GET / HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("G@T / HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1 \r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / http/1.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.10\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/a.1\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET /\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 505);
    expect_req(S("GET / HTTP/1.2\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 505);
    expect_req(S("GET / HTTP/0.9\r\nHost: h\r\n\r\n"), PARLEY_EPROTO, 505);
    /* A method is any token; the target any visible ASCII. */
    static const char ok[] = "M-SEARCH! *?a=%20&b=[x] HTTP/1.0\r\n\r\n";
    feeder f;
    feeder_init(&f, 1);
    parsed r;
    feed_head(&r, &f, false, false, NULL, S(ok));
    assert_int_equal(r.rc, (long)strlen(ok));
    assert_true(span_is(r.h.method, r.h.method_len, "M-SEARCH!"));
    assert_true(span_is(r.h.target, r.h.target_len, "*?a=%20&b=[x]"));
    assert_int_equal(r.h.version_minor, 0);
    parsed_free(&r);
}

static void test_line_endings(void **state)
{
    (void)state;
    /* Bare LF and bare CR anywhere in the head; they are caught as soon as
     * they arrive, without waiting for a complete head. */
    expect_req(S("GET / HTTP/1.1\nHost: h\n\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: h\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\n\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\rX"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\n\r\r\n"), PARLEY_EPROTO, 400);
    /* A CR at the very end may still be followed by LF. */
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\n\r"), 0, 0);
    expect_resp(S("HTTP/1.1 200 OK\nContent-Length: 0\n\n"), PARLEY_EPROTO, 400);
}

static void test_header_errors(void **state)
{
    (void)state;
    expect_req(S("GET / HTTP/1.1\r\nHost : h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost\t: h\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\n: empty name\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\nBad(Name): v\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\nX: a\x01\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\nX: a\x1b[0m\r\n\r\n"), PARLEY_EPROTO, 400);
    /* obs-fold, also right after the request line. */
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n  b\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\n Host: h\r\n\r\n"), PARLEY_EPROTO, 400);
    /* HTAB inside a value is fine. */
    expect_req(S("GET / HTTP/1.1\r\nHost: h\r\nX: a\tb\r\n\r\n"), 35, 0);
}

static void test_host_rules(void **state)
{
    (void)state;
    expect_req(S("GET / HTTP/1.1\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nX: y\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_req(S("GET / HTTP/1.0\r\n\r\n"), 18, 0);
    expect_req(S("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), PARLEY_EPROTO, 400);
    /* An empty Host is allowed (RFC 9112 section 3.2). */
    expect_req(S("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 25, 0);
}

static void test_limits(void **state)
{
    (void)state;
    http_limits lim;
    http_limits_init(&lim);
    assert_int_equal(lim.max_header_bytes, 8192);
    assert_int_equal(lim.max_headers, 64);
    assert_int_equal(lim.max_body, 1024 * 1024);

    /* Header count: max is fine, one more is 431. */
    lim.max_headers = 3;
    expect_head_ex(false, false, &lim, S("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n"), 39,
                   0);
    expect_head_ex(false, false, &lim,
                   S("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"), PARLEY_ELIMIT,
                   431);
    expect_head_ex(true, false, &lim, S("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"),
                   PARLEY_ELIMIT, 431);

    /* Head bytes: exactly the limit is fine, one byte more is 431. */
    static const char msg[] = "GET / HTTP/1.1\r\nHost: h\r\nX: 12345\r\n\r\n";
    size_t n = strlen(msg);
    http_limits_init(&lim);
    lim.max_header_bytes = n;
    expect_head_ex(false, false, &lim, S(msg), (long)n, 0);
    lim.max_header_bytes = n - 1;
    expect_head_ex(false, false, &lim, S(msg), PARLEY_ELIMIT, 431);
    expect_head_ex(true, false, &lim, S("HTTP/1.1 200 OK\r\nX: 123456789012345678901\r\n\r\n"),
                   PARLEY_ELIMIT, 431);

    /* Leading empty lines count too. */
    lim.max_header_bytes = n;
    expect_head_ex(false, false, &lim, S("\r\nGET / HTTP/1.1\r\nHost: h\r\nX: 12345\r\n\r\n"),
                   PARLEY_ELIMIT, 431);

    /* The request line alone is over the limit: 414. */
    lim.max_header_bytes = 16;
    expect_head_ex(false, false, &lim, S("GET /0123456789 HTTP/1.1\r\nHost: h\r\n\r\n"),
                   PARLEY_ELIMIT, 414);
    expect_head_ex(false, false, &lim, S("GET /0123456789abc"), PARLEY_ELIMIT, 414);
    expect_head_ex(false, false, &lim, S("GET /0 HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_ELIMIT, 414);
    expect_head_ex(false, false, &lim, S("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), PARLEY_ELIMIT, 431);

    /* Over the limit without a complete head: detected right away, not
     * after waiting for a CRLFCRLF that may never come. */
    http_limits_init(&lim);
    size_t big = lim.max_header_bytes + 1;
    char *junk = malloc(big);
    assert_non_null(junk);
    memcpy(junk, "GET / HTTP/1.1\r\nX: ", 19);
    memset(junk + 19, 'a', big - 19);
    expect_head_ex(false, false, NULL, junk, big, PARLEY_ELIMIT, 431);
    expect_head_ex(false, false, NULL, junk, big - 1, 0, 0);
    memset(junk, 'a', big);
    memcpy(junk, "GET /", 5);
    expect_head_ex(false, false, NULL, junk, big, PARLEY_ELIMIT, 414);
    expect_head_ex(true, false, NULL, junk, big, PARLEY_ELIMIT, 431);
    free(junk);

    /* Caller storage smaller than limits.max_headers wins. */
    parsed r;
    http_parser_init(&r.p, false, NULL);
    static const char two[] = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\n\r\n";
    assert_int_equal(http_parse_head(&r.p, (const uint8_t *)two, strlen(two), &r.h, r.hdrs, 1),
                     PARLEY_ELIMIT);
    assert_int_equal(r.p.error_status, 431);
}

static void test_content_length(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "5", "005", "5, 5", "5,5", "5 ,\t5",
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(ok); i++) {
        char msg[128];
        int n = snprintf(msg, sizeof msg,
                         "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %s\r\n\r\n", ok[i]);
        for (int s = 0; s < NSCHED; s++) {
            feeder f;
            feeder_init(&f, s);
            parsed r;
            feed_head(&r, &f, false, false, NULL, msg, (size_t)n);
            assert_int_equal(r.rc, n);
            assert_int_equal(r.h.body_kind, HTTP_BODY_LENGTH);
            assert_int_equal(r.h.content_length, 5);
            parsed_free(&r);
        }
    }
    static const char *const bad[] = {
        "",
        "+5",
        "-1",
        " ",
        "0x5",
        "5 5",
        "5,",
        ",5",
        "5,,5",
        "5, 6",
        "5a",
        "1.0",
        "9223372036854775808",
        "99999999999999999999999999",
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++) {
        char msg[128];
        int n = snprintf(msg, sizeof msg,
                         "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %s\r\n\r\n", bad[i]);
        expect_req(msg, (size_t)n, PARLEY_EPROTO, 400);
    }
    /* Repeated fields: identical is fine, different is not. */
    expect_req(S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\ncontent-length: 7\r\n\r\n"),
               66, 0);
    expect_req(S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\nContent-Length: 8\r\n\r\n"),
               PARLEY_EPROTO, 400);
    /* The largest value allowed, given a big enough body limit. */
    http_limits lim;
    http_limits_init(&lim);
    lim.max_body = UINT64_MAX;
    static const char max[] =
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9223372036854775807\r\n\r\n";
    feeder f;
    feeder_init(&f, 0);
    parsed r;
    feed_head(&r, &f, false, false, &lim, S(max));
    assert_int_equal(r.rc, (long)strlen(max));
    assert_true(r.h.content_length == (uint64_t)INT64_MAX);
    parsed_free(&r);
    /* Over the body limit: 413 from the head alone. */
    expect_req(S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1048577\r\n\r\n"), PARLEY_ELIMIT,
               413);
    expect_req(S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1048576\r\n\r\n"), 53, 0);
    /* Content-Length with Transfer-Encoding, in either order. */
    expect_req(S("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: "
                 "chunked\r\n\r\n"),
               PARLEY_EPROTO, 400);
    expect_req(S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: "
                 "5\r\n\r\n"),
               PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
                PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"), PARLEY_EPROTO, 400);
}

static void test_transfer_encoding(void **state)
{
    (void)state;
    static const char *const chunked[] = {"chunked", "Chunked", "CHUNKED", " chunked ",
                                          ", chunked"};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(chunked); i++) {
        char msg[128];
        int n = snprintf(msg, sizeof msg,
                         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: %s\r\n\r\n", chunked[i]);
        for (int s = 0; s < NSCHED; s++) {
            feeder f;
            feeder_init(&f, s);
            parsed r;
            feed_head(&r, &f, false, false, NULL, msg, (size_t)n);
            assert_int_equal(r.rc, n);
            assert_int_equal(r.h.body_kind, HTTP_BODY_CHUNKED);
            parsed_free(&r);
        }
    }
    static const struct {
        const char *te;
        int status;
    } bad[] = {
        {"gzip", 501},
        {"gzip, chunked", 501},
        {"deflate;q=1", 501},
        {"chunked, gzip", 501},
        {"chunked, chunked", 400},
        {"chunked;x=1", 400},
        {"", 400},
        {",", 400},
        {"chu nked", 400},
        {"x@y", 400},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++) {
        char msg[128];
        int n = snprintf(msg, sizeof msg,
                         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: %s\r\n\r\n", bad[i].te);
        expect_req(msg, (size_t)n, PARLEY_EPROTO, bad[i].status);
    }
    /* Several fields form one list. */
    expect_req(S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: "
                 "chunked\r\n\r\n"),
               PARLEY_EPROTO, 501);
    expect_req(S("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: "
                 "chunked\r\n\r\n"),
               PARLEY_EPROTO, 400);
    /* Not in HTTP/1.0. */
    expect_req(S("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), PARLEY_EPROTO, 400);
}

static void test_connection_flags(void **state)
{
    (void)state;
    static const struct {
        const char *msg;
        bool keep_alive, upgrade, expect;
    } v[] = {
        {"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true, false, false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false, false, false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, CLOSE\r\n\r\n", false, false, false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n", true, false, false},
        {"GET / HTTP/1.0\r\n\r\n", false, false, false},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true, false, false},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", false, false,
         false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n\r\n", true, true, false},
        {"GET / HTTP/1.1\r\nHost: h\r\nConnection: x\r\nConnection: ,upgrade,\r\n\r\n", true, true,
         false},
        {"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: upgrade\r\n\r\n", true, false, false},
        {"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n", true,
         false, true},
        {"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continuex\r\n\r\n", true, false, false},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        for (int s = 0; s < NSCHED; s++) {
            feeder f;
            feeder_init(&f, s);
            parsed r;
            feed_head(&r, &f, false, false, NULL, v[i].msg, strlen(v[i].msg));
            assert_int_equal(r.rc, (long)strlen(v[i].msg));
            assert_int_equal(r.h.keep_alive, v[i].keep_alive);
            assert_int_equal(r.h.conn_upgrade, v[i].upgrade);
            assert_int_equal(r.h.expect_continue, v[i].expect);
            parsed_free(&r);
        }
    }
}

static void test_header_tokens(void **state)
{
    (void)state;
    http_header hs[] = {
        {"Connection", 10, "keep-alive , ", 13},
        {"X", 1, "upgrade", 7},
        {"connection", 10, ",\t Upgrade\t,", 12},
    };
    http_head h = {0};
    h.headers = hs;
    h.num_headers = 3;
    assert_true(http_header_has_token(&h, "CONNECTION", "upgrade"));
    assert_true(http_header_has_token(&h, "Connection", "Keep-Alive"));
    assert_false(http_header_has_token(&h, "Connection", "keep"));
    assert_false(http_header_has_token(&h, "Connection", "close"));
    assert_false(http_header_has_token(&h, "Upgrade", "upgrade"));
    assert_ptr_equal(http_find_header(&h, "connection"), &hs[0]);
}

/* Two requests back to back in one buffer, then a keep-alive sequence. */
static void test_pipelined(void **state)
{
    (void)state;
    static const char two[] = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
                              "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
                              "GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    http_parser p;
    http_parser_init(&p, false, NULL);
    http_head h;
    http_header hs[8];
    const uint8_t *buf = (const uint8_t *)two;
    size_t len = strlen(two);

    long n = http_parse_head(&p, buf, len, &h, hs, 8);
    assert_int_equal(n, 28);
    assert_true(span_is(h.target, h.target_len, "/a"));
    assert_int_equal(h.body_kind, HTTP_BODY_NONE);
    buf += n;
    len -= (size_t)n;

    http_parser_reset(&p, false);
    assert_int_equal(p.scanned, 0);
    n = http_parse_head(&p, buf, len, &h, hs, 8);
    assert_int_equal(n, 48);
    assert_true(span_is(h.target, h.target_len, "/b"));
    assert_int_equal(h.body_kind, HTTP_BODY_LENGTH);
    http_body b;
    http_body_init(&b, &h, 100);
    size_t consumed, out_len;
    uint8_t tmp[64];
    memcpy(tmp, buf + n, len - (size_t)n);
    assert_int_equal(http_body_decode(&b, tmp, len - (size_t)n, &consumed, &out_len), 1);
    assert_int_equal(consumed, 2);
    assert_int_equal(out_len, 2);
    assert_memory_equal(tmp, "hi", 2);
    buf += (size_t)n + consumed;
    len -= (size_t)n + consumed;

    http_parser_reset(&p, false);
    n = http_parse_head(&p, buf, len, &h, hs, 8);
    assert_int_equal(n, (long)len);
    assert_true(span_is(h.target, h.target_len, "/c"));
    assert_false(h.keep_alive);

    /* Reset clears a previous error. */
    http_parser_reset(&p, false);
    assert_int_equal(http_parse_head(&p, (const uint8_t *)"X\n", 2, &h, hs, 8), PARLEY_EPROTO);
    assert_int_equal(p.error_status, 400);
    http_parser_reset(&p, false);
    assert_int_equal(p.error_status, 0);
    assert_null(p.error);
    assert_int_equal(http_parse_head(&p, (const uint8_t *)"GET / HTTP/1.0\r\n\r\n", 18, &h, hs, 8),
                     18);
}

/* The same request fed in two pieces split at every offset. */
static void test_head_split_everywhere(void **state)
{
    (void)state;
    static const char msg[] = "\r\nPUT /up?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n"
                              "Content-Length: 10\r\nConnection: keep-alive, upgrade\r\n\r\n";
    size_t len = strlen(msg);
    for (size_t split = 0; split <= len; split++) {
        feeder f;
        feeder_split(&f, split);
        parsed r;
        feed_head(&r, &f, false, false, NULL, msg, len);
        assert_int_equal(r.rc, (long)len);
        assert_true(span_is(r.h.method, r.h.method_len, "PUT"));
        assert_int_equal(r.h.num_headers, 3);
        assert_true(hdr_is(&r.hdrs[0], "Host", "example.com:8080"));
        assert_int_equal(r.h.content_length, 10);
        assert_true(r.h.conn_upgrade);
        parsed_free(&r);
    }
}

/* ---- response heads ---- */

static void test_response_heads(void **state)
{
    (void)state;
    static const struct {
        const char *msg;
        bool head_req;
        int status;
        const char *reason;
        http_body_kind kind;
        uint64_t cl;
        bool keep_alive;
    } v[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", false, 200, "OK", HTTP_BODY_LENGTH, 12,
         true},
        {"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false, 200, "", HTTP_BODY_LENGTH, 0, true},
        {"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", false, 200, "", HTTP_BODY_LENGTH, 0, true},
        {"HTTP/1.1 404 Not  Found\t!\r\nContent-Length: 1\r\n\r\n", false, 404, "Not  Found\t!",
         HTTP_BODY_LENGTH, 1, true},
        {"HTTP/1.1 200 OK\r\n\r\n", false, 200, "OK", HTTP_BODY_UNTIL_CLOSE, 0, false},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, 200, "OK",
         HTTP_BODY_CHUNKED, 0, true},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, 200, "OK",
         HTTP_BODY_CHUNKED, 0, true},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false, 200, "OK",
         HTTP_BODY_UNTIL_CLOSE, 0, false},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", false, 200, "OK",
         HTTP_BODY_UNTIL_CLOSE, 0, false},
        {"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", false, 204, "No Content",
         HTTP_BODY_NONE, 0, true},
        {"HTTP/1.1 304 Not Modified\r\n\r\n", false, 304, "Not Modified", HTTP_BODY_NONE, 0, true},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
         false, 101, "Switching Protocols", HTTP_BODY_NONE, 0, true},
        {"HTTP/1.1 100 Continue\r\n\r\n", false, 100, "Continue", HTTP_BODY_NONE, 0, true},
        {"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", true, 200, "OK", HTTP_BODY_NONE, 0, true},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, 200, "OK", HTTP_BODY_NONE,
         0, true},
        {"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, 200, "OK", HTTP_BODY_LENGTH, 1,
         false},
        {"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", false, 200, "OK",
         HTTP_BODY_LENGTH, 1, true},
        {"HTTP/1.1 599 x\xff\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", false, 599,
         "x\xff", HTTP_BODY_LENGTH, 0, false},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        for (int s = 0; s < NSCHED; s++) {
            feeder f;
            feeder_init(&f, s);
            parsed r;
            feed_head(&r, &f, true, v[i].head_req, NULL, v[i].msg, strlen(v[i].msg));
            if (r.rc != (long)strlen(v[i].msg)) print_error("case %zu: %s\n", i, r.p.error);
            assert_int_equal(r.rc, (long)strlen(v[i].msg));
            assert_int_equal(r.h.status, v[i].status);
            assert_true(span_is(r.h.reason, r.h.reason_len, v[i].reason));
            assert_int_equal(r.h.body_kind, v[i].kind);
            assert_int_equal(r.h.content_length, v[i].cl);
            assert_int_equal(r.h.keep_alive, v[i].keep_alive);
            assert_null(r.h.method);
            parsed_free(&r);
        }
    }
    expect_resp(S("HTTP/1.1 20 OK\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1 2000 OK\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1 099 Low\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1 600 High\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1 2x0 OK\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1  200 OK\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1\t200 OK\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1 200\tOK\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1 200 O\x01K\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("http/1.1 200 OK\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/2.0 200 OK\r\n\r\n"), PARLEY_EPROTO, 505);
    expect_resp(S("\r\nHTTP/1.1 200 OK\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1 200 OK\r\nX : y\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n"), PARLEY_EPROTO, 400);
    expect_resp(S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"), PARLEY_EPROTO,
                400);
    /* A response needs no Host. */
    expect_resp(S("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), 38, 0);
}

/* ---- body decoding ---- */

/* Decodes data[0, len) fed in pieces the way a connection would: unused
 * bytes stay at the front of the input buffer, decoded bytes go to out.
 * Each call gets an exactly-sized copy so that ASan catches over-reads. */
static int decode_feed(http_body *b, feeder *f, const void *data, size_t len, pbuf *out,
                       size_t *used)
{
    pbuf in = {0};
    size_t fed = 0;
    int rc = 0;
    *used = 0;
    do {
        size_t n = feeder_next(f, fed, len - fed);
        assert_int_equal(pbuf_append(&in, (const uint8_t *)data + fed, n), 0);
        fed += n;
        uint8_t *tmp = malloc(in.len ? in.len : 1);
        assert_non_null(tmp);
        if (in.len) memcpy(tmp, in.ptr, in.len);
        size_t consumed = 12345, out_len = 12345;
        rc = http_body_decode(b, tmp, in.len, &consumed, &out_len);
        assert_true(consumed <= in.len);
        assert_true(out_len <= consumed);
        assert_int_equal(pbuf_append(out, tmp, out_len), 0);
        free(tmp);
        pbuf_consume(&in, consumed);
        *used += consumed;
        if (rc != 0) break;
    } while (fed < len);
    pbuf_free(&in);
    return rc;
}

static void expect_body(http_body_kind kind, uint64_t cl, uint64_t max, const void *data,
                        size_t len, int rc, int status, const char *out, size_t out_len,
                        size_t used)
{
    http_head h = {0};
    h.body_kind = kind;
    h.content_length = cl;
    for (int s = 0; s < NSCHED; s++) {
        feeder f;
        feeder_init(&f, s);
        http_body b;
        http_body_init(&b, &h, max);
        pbuf o = {0};
        size_t u;
        int r = decode_feed(&b, &f, data, len, &o, &u);
        if (r != rc || b.error_status != status)
            print_error("schedule %d: rc %d status %d (%s)\n", s, r, b.error_status,
                        b.error ? b.error : "-");
        assert_int_equal(r, rc);
        assert_int_equal(b.error_status, status);
        if (rc >= 0) {
            assert_int_equal(o.len, out_len);
            if (out_len) assert_memory_equal(o.ptr, out, out_len);
            assert_int_equal(u, used);
            assert_int_equal(b.total, out_len);
        } else {
            /* Errors are sticky. */
            size_t c, ol;
            uint8_t x = 'x';
            assert_int_equal(http_body_decode(&b, &x, 1, &c, &ol), rc);
            assert_int_equal(c, 0);
            assert_int_equal(http_body_eof(&b), rc);
        }
        pbuf_free(&o);
    }
}

static void test_body_length(void **state)
{
    (void)state;
    expect_body(HTTP_BODY_LENGTH, 5, 100, S("helloGET /"), 1, 0, "hello", 5, 5);
    expect_body(HTTP_BODY_LENGTH, 5, 100, S("hel"), 0, 0, "hel", 3, 3);
    expect_body(HTTP_BODY_LENGTH, 0, 100, S("next"), 1, 0, "", 0, 0);
    expect_body(HTTP_BODY_LENGTH, 0, 0, "", 0, 1, 0, "", 0, 0);
    expect_body(HTTP_BODY_NONE, 0, 100, S("next"), 1, 0, "", 0, 0);
    /* Over the limit: refused before any byte is read. */
    expect_body(HTTP_BODY_LENGTH, 101, 100, "", 0, PARLEY_ELIMIT, 413, NULL, 0, 0);
    expect_body(HTTP_BODY_LENGTH, 100, 100, S("x"), 0, 0, "x", 1, 1);

    /* Split at every offset, with the next message right behind. */
    static const char body[] = "0123456789abcdefghijNEXT";
    for (size_t split = 0; split <= strlen(body); split++) {
        http_head h = {0};
        h.body_kind = HTTP_BODY_LENGTH;
        h.content_length = 20;
        http_body b;
        http_body_init(&b, &h, 20);
        feeder f;
        feeder_split(&f, split);
        pbuf o = {0};
        size_t used;
        assert_int_equal(decode_feed(&b, &f, S(body), &o, &used), 1);
        assert_int_equal(o.len, 20);
        assert_memory_equal(o.ptr, body, 20);
        assert_int_equal(used, 20);
        assert_int_equal(b.remaining, 0);
        pbuf_free(&o);
    }
}

static void test_body_until_close(void **state)
{
    (void)state;
    expect_body(HTTP_BODY_UNTIL_CLOSE, 0, 100, S("all of it"), 0, 0, "all of it", 9, 9);
    expect_body(HTTP_BODY_UNTIL_CLOSE, 0, 5, S("too long"), PARLEY_ELIMIT, 413, NULL, 0, 0);
    http_head h = {0};
    h.body_kind = HTTP_BODY_UNTIL_CLOSE;
    http_body b;
    http_body_init(&b, &h, 100);
    uint8_t d[] = "abc";
    size_t c, o;
    assert_int_equal(http_body_decode(&b, d, 3, &c, &o), 0);
    assert_int_equal(c, 3);
    assert_int_equal(o, 3);
    assert_int_equal(http_body_eof(&b), 1);
    /* After the end, nothing more is taken. */
    assert_int_equal(http_body_decode(&b, d, 3, &c, &o), 1);
    assert_int_equal(c, 0);
}

static void test_body_eof(void **state)
{
    (void)state;
    http_head h = {0};
    http_body b;
    size_t c, o;
    uint8_t d[8] = "abc";

    h.body_kind = HTTP_BODY_NONE;
    http_body_init(&b, &h, 100);
    assert_int_equal(http_body_eof(&b), 1);

    h.body_kind = HTTP_BODY_LENGTH;
    h.content_length = 5;
    http_body_init(&b, &h, 100);
    assert_int_equal(http_body_decode(&b, d, 3, &c, &o), 0);
    assert_int_equal(http_body_eof(&b), PARLEY_EPROTO);
    assert_int_equal(b.error_status, 400);
    assert_non_null(b.error);

    h.content_length = 3;
    http_body_init(&b, &h, 100);
    assert_int_equal(http_body_decode(&b, d, 3, &c, &o), 1);
    assert_int_equal(http_body_eof(&b), 1);

    h.body_kind = HTTP_BODY_CHUNKED;
    http_body_init(&b, &h, 100);
    memcpy(d, "3\r\nabc", 6);
    assert_int_equal(http_body_decode(&b, d, 6, &c, &o), 0);
    assert_int_equal(http_body_eof(&b), PARLEY_EPROTO);
    assert_int_equal(b.error_status, 400);

    http_body_init(&b, &h, 100);
    memcpy(d, "0\r\n\r\n", 5);
    assert_int_equal(http_body_decode(&b, d, 5, &c, &o), 1);
    assert_int_equal(http_body_eof(&b), 1);
}

static void test_body_chunked(void **state)
{
    (void)state;
    /* Extensions, upper and lower case hex, leading zeros, BWS, trailers,
     * and the next message right behind. */
    static const char msg[] = "5;name=value;flag\r\nhello\r\n"
                              "0006 ; q=\"a b\"\r\n world\r\n"
                              "A\r\n0123456789\r\n"
                              "a\t;x\r\nabcdefghij\r\n"
                              "000\r\n"
                              "Expires: never\r\n"
                              "X-Checksum: abc\r\n"
                              "\r\n"
                              "GET / HTTP/1.1\r\n";
    static const char want[] = "hello world0123456789abcdefghij";
    size_t used = strlen(msg) - strlen("GET / HTTP/1.1\r\n");
    expect_body(HTTP_BODY_CHUNKED, 0, 100, S(msg), 1, 0, S(want), used);
    /* No trailers. */
    expect_body(HTTP_BODY_CHUNKED, 0, 100, S("3\r\nabc\r\n0\r\n\r\nX"), 1, 0, "abc", 3, 13);
    expect_body(HTTP_BODY_CHUNKED, 0, 100, S("0\r\n\r\n"), 1, 0, "", 0, 5);
    /* Incomplete. */
    expect_body(HTTP_BODY_CHUNKED, 0, 100, S("3\r\nabc\r\n0\r\n"), 0, 0, "abc", 3, 11);
    /* The limit is exactly the decoded size. */
    expect_body(HTTP_BODY_CHUNKED, 0, 31, S(msg), 1, 0, S(want), used);

    /* Split at every offset. */
    size_t len = strlen(msg);
    for (size_t split = 0; split <= len; split++) {
        http_head h = {0};
        h.body_kind = HTTP_BODY_CHUNKED;
        http_body b;
        http_body_init(&b, &h, 1000);
        feeder f;
        feeder_split(&f, split);
        pbuf o = {0};
        size_t u;
        assert_int_equal(decode_feed(&b, &f, msg, len, &o, &u), 1);
        assert_int_equal(o.len, strlen(want));
        assert_memory_equal(o.ptr, want, o.len);
        assert_int_equal(u, used);
        pbuf_free(&o);
    }
}

static void test_body_chunked_errors(void **state)
{
    (void)state;
    /* Framing errors: 400. */
    static const struct {
        const char *d;
        size_t n;
    } bad[] = {
        {S("\r\n")},                  /* no size */
        {S(";x\r\n")},                /* no size before the extension */
        {S("zz\r\n")},                /* not hex */
        {S("-1\r\n")},                /* sign */
        {S("0x5\r\n")},               /* prefix */
        {S("5 x\r\nhello\r\n")},      /* junk after BWS */
        {S("5\nhello\r\n")},          /* bare LF */
        {S("5\rhello\r\n")},          /* bare CR */
        {S("5\r\nhelloX\r\n")},       /* no CRLF after data */
        {S("5\r\nhello\rX")},         /* CR without LF after data */
        {S("5\r\nhello\n0\r\n\r\n")}, /* LF only after data */
        {S("5;a\x01\r\nhello\r\n")},  /* control character in an extension */
        {S("5;a\nb\r\nhello\r\n")},   /* LF inside an extension */
        {S("0\r\n x: y\r\n\r\n")},    /* obs-fold in the trailer section */
        {S("0\r\n:x\r\n\r\n")},       /* not a field */
        {S("0\r\nX: a\0b\r\n\r\n")},  /* NUL in a trailer */
        {S("0\r\nX: y\n\r\n")},       /* bare LF in a trailer */
        {S("0\r\n\rX")},              /* bare CR ending the trailers */
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++)
        expect_body(HTTP_BODY_CHUNKED, 0, 1000, bad[i].d, bad[i].n, PARLEY_EPROTO, 400, NULL, 0, 0);

    /* Chunk-size line over 256 bytes, extensions included. */
    char line[300];
    memset(line, 'x', sizeof line);
    memcpy(line, "1;", 2);
    expect_body(HTTP_BODY_CHUNKED, 0, 1000, line, sizeof line, PARLEY_EPROTO, 400, NULL, 0, 0);
    memcpy(line + 254, "\r\na\r\n0\r\n\r\n", 11); /* a 256-byte line is fine */
    expect_body(HTTP_BODY_CHUNKED, 0, 1000, line, 265, 1, 0, "a", 1, 264);
    /* A long run of leading zeros is still bounded by the line cap. */
    char zeros[400];
    memset(zeros, '0', sizeof zeros);
    expect_body(HTTP_BODY_CHUNKED, 0, 1000, zeros, sizeof zeros, PARLEY_EPROTO, 400, NULL, 0, 0);

    /* Oversized chunk sizes: 413 from the size alone, before the data. */
    expect_body(HTTP_BODY_CHUNKED, 0, 1048576, S("100001\r\n"), PARLEY_ELIMIT, 413, NULL, 0, 0);
    expect_body(HTTP_BODY_CHUNKED, 0, 1048576, S("FFFFFFFFFFFFFFFFFFFFFFFF"), PARLEY_ELIMIT, 413,
                NULL, 0, 0);
    expect_body(HTTP_BODY_CHUNKED, 0, 5, S("3\r\nabc\r\n3\r\n"), PARLEY_ELIMIT, 413, NULL, 0, 0);
    expect_body(HTTP_BODY_CHUNKED, 0, 0, S("1\r\n"), PARLEY_ELIMIT, 413, NULL, 0, 0);
    /* With no limit to speak of, a size over 64 bits is an overflow. */
    expect_body(HTTP_BODY_CHUNKED, 0, UINT64_MAX, S("FFFFFFFFFFFFFFFF\r\n"), 0, 0, "", 0, 18);
    expect_body(HTTP_BODY_CHUNKED, 0, UINT64_MAX, S("10000000000000000\r\n"), PARLEY_EPROTO, 400,
                NULL, 0, 0);

    /* Trailer section over max_trailer_bytes: 431. */
    http_head h = {0};
    h.body_kind = HTTP_BODY_CHUNKED;
    for (int s = 0; s < NSCHED; s++) {
        static const char tr[] = "0\r\nA: 12345\r\nB: 1\r\n\r\n";
        feeder f;
        feeder_init(&f, s);
        http_body b;
        http_body_init(&b, &h, 100);
        assert_int_equal(b.max_trailer_bytes, 8192);
        b.max_trailer_bytes = 17; /* the trailer section is 18 bytes */
        pbuf o = {0};
        size_t u;
        assert_int_equal(decode_feed(&b, &f, S(tr), &o, &u), PARLEY_ELIMIT);
        assert_int_equal(b.error_status, 431);
        http_body_init(&b, &h, 100);
        b.max_trailer_bytes = 18;
        feeder_init(&f, s);
        assert_int_equal(decode_feed(&b, &f, S(tr), &o, &u), 1);
        assert_int_equal(u, strlen(tr));
        pbuf_free(&o);
    }
    /* The default trailer limit holds against an endless trailer. */
    size_t big = 9000;
    char *junk = malloc(big);
    assert_non_null(junk);
    memset(junk, 'a', big);
    memcpy(junk, "0\r\nX: ", 6);
    expect_body(HTTP_BODY_CHUNKED, 0, 100, junk, big, PARLEY_ELIMIT, 431, NULL, 0, 0);
    free(junk);
}

/* A full request with a chunked body, head and body both chopped, then a
 * second request on the same connection. */
static void test_keep_alive_sequence(void **state)
{
    (void)state;
    static const char stream[] =
        "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"
        "GET /next HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyz"
        "GET /last HTTP/1.0\r\n\r\n";
    static const char *const targets[] = {"/up", "/next", "/last"};
    static const char *const bodies[] = {"Wikipedia", "xyz", ""};
    for (int s = 0; s < NSCHED; s++) {
        feeder f;
        feeder_init(&f, s);
        http_parser p;
        http_parser_init(&p, false, NULL);
        pbuf in = {0};
        size_t fed = 0, len = strlen(stream);
        int msgno = 0;
        bool in_body = false;
        http_head h;
        http_header hs[16];
        http_body b;
        pbuf body = {0};
        while (msgno < 3) {
            if (fed < len) {
                size_t n = feeder_next(&f, fed, len - fed);
                assert_int_equal(pbuf_append(&in, stream + fed, n), 0);
                fed += n;
            }
            for (;;) {
                if (!in_body) {
                    long rc = http_parse_head(&p, in.ptr, in.len, &h, hs, 16);
                    assert_true(rc >= 0);
                    if (rc == 0) break;
                    assert_true(span_is(h.target, h.target_len, targets[msgno]));
                    http_body_init(&b, &h, 1000);
                    pbuf_consume(&in, (size_t)rc);
                    in_body = true;
                }
                size_t c, o;
                int rc = http_body_decode(&b, in.ptr, in.len, &c, &o);
                assert_true(rc >= 0);
                assert_int_equal(pbuf_append(&body, in.ptr, o), 0);
                pbuf_consume(&in, c);
                if (rc == 0) break;
                assert_int_equal(body.len, strlen(bodies[msgno]));
                if (body.len) assert_memory_equal(body.ptr, bodies[msgno], body.len);
                body.len = 0;
                in_body = false;
                http_parser_reset(&p, false);
                if (++msgno == 3) break;
            }
            if (fed == len && msgno < 3 && in.len == 0) break;
        }
        assert_int_equal(msgno, 3);
        assert_int_equal(in.len, 0);
        assert_false(h.keep_alive); /* the last one was HTTP/1.0 */
        pbuf_free(&in);
        pbuf_free(&body);
    }
}

/* ---- writers ---- */

static void test_writers(void **state)
{
    (void)state;
    pbuf out = {0};
    http_header hs[] = {{"X-A", 3, "1", 1}, {"Set-Cookie", 10, "a=b; Path=/", 11}};
    assert_int_equal(http_write_response_head(&out, 200, NULL, hs, 2, 5), 0);
    static const char w1[] = "HTTP/1.1 200 OK\r\nX-A: 1\r\nSet-Cookie: a=b; Path=/\r\n"
                             "Content-Length: 5\r\n\r\n";
    assert_int_equal(out.len, strlen(w1));
    assert_memory_equal(out.ptr, w1, out.len);

    out.len = 0;
    assert_int_equal(http_write_response_head(&out, 101, "Switching", NULL, 0, -1), 0);
    assert_int_equal(out.len, strlen("HTTP/1.1 101 Switching\r\n\r\n"));
    assert_memory_equal(out.ptr, "HTTP/1.1 101 Switching\r\n\r\n", out.len);

    out.len = 0;
    assert_int_equal(http_write_response(&out, 404, "text/plain", NULL, 0, "nope\n", 5), 0);
    static const char w2[] = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                             "Content-Length: 5\r\n\r\nnope\n";
    assert_int_equal(out.len, strlen(w2));
    assert_memory_equal(out.ptr, w2, out.len);

    out.len = 0;
    assert_int_equal(http_write_response(&out, 599, NULL, hs, 1, NULL, 0), 0);
    static const char w3[] = "HTTP/1.1 599 Unknown\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(out.len, strlen(w3));
    assert_memory_equal(out.ptr, w3, out.len);

    out.len = 0;
    assert_int_equal(http_write_request_head(&out, "GET", "/x?y=1", "h:8080", hs, 1, -1), 0);
    static const char w4[] = "GET /x?y=1 HTTP/1.1\r\nHost: h:8080\r\nX-A: 1\r\n\r\n";
    assert_int_equal(out.len, strlen(w4));
    assert_memory_equal(out.ptr, w4, out.len);

    out.len = 0;
    assert_int_equal(http_write_request_head(&out, "POST", "/", "h", NULL, 0, 0), 0);
    static const char w5[] = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(out.len, strlen(w5));
    assert_memory_equal(out.ptr, w5, out.len);

    /* What we write, we parse back. */
    http_parser p;
    http_parser_init(&p, false, NULL);
    http_head h;
    http_header ph[8];
    assert_int_equal(http_parse_head(&p, out.ptr, out.len, &h, ph, 8), (long)out.len);
    assert_int_equal(h.body_kind, HTTP_BODY_LENGTH);

    /* Refusals append nothing. */
    out.len = 0;
    assert_int_equal(pbuf_append_str(&out, "keep"), 0);
    http_header bad[] = {
        {"Bad Name", 8, "v", 1}, {"", 0, "v", 1},     {"X:", 2, "v", 1}, {"X", 1, "a\r\nb", 4},
        {"X", 1, "a\nb", 3},     {"X", 1, "a\0b", 3}, {"X", 1, "\r", 1},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++) {
        http_header two[2] = {hs[0], bad[i]};
        assert_int_equal(http_write_response_head(&out, 200, NULL, two, 2, -1), PARLEY_EINVAL);
        assert_int_equal(http_write_response(&out, 200, "t", two, 2, "b", 1), PARLEY_EINVAL);
        assert_int_equal(http_write_request_head(&out, "GET", "/", "h", two, 2, -1), PARLEY_EINVAL);
        assert_int_equal(out.len, 4);
    }
    assert_int_equal(http_write_response_head(&out, 200, "O\r\nK", NULL, 0, -1), PARLEY_EINVAL);
    assert_int_equal(http_write_response_head(&out, 99, NULL, NULL, 0, -1), PARLEY_EINVAL);
    assert_int_equal(http_write_response_head(&out, 1000, NULL, NULL, 0, -1), PARLEY_EINVAL);
    assert_int_equal(http_write_response_head(&out, 200, NULL, NULL, 0, -2), PARLEY_EINVAL);
    assert_int_equal(http_write_response(&out, 200, "a\nb", NULL, 0, "", 0), PARLEY_EINVAL);
    assert_int_equal(http_write_request_head(&out, "G T", "/", "h", NULL, 0, -1), PARLEY_EINVAL);
    assert_int_equal(http_write_request_head(&out, "", "/", "h", NULL, 0, -1), PARLEY_EINVAL);
    assert_int_equal(http_write_request_head(&out, "GET", "/a b", "h", NULL, 0, -1), PARLEY_EINVAL);
    assert_int_equal(http_write_request_head(&out, "GET", "", "h", NULL, 0, -1), PARLEY_EINVAL);
    assert_int_equal(http_write_request_head(&out, "GET", "/", "h\r\nX: y", NULL, 0, -1),
                     PARLEY_EINVAL);
    assert_int_equal(out.len, 4);
    assert_memory_equal(out.ptr, "keep", 4);
    pbuf_free(&out);

    assert_string_equal(http_status_text(200), "OK");
    assert_string_equal(http_status_text(426), "Upgrade Required");
    assert_string_equal(http_status_text(431), "Request Header Fields Too Large");
    assert_string_equal(http_status_text(505), "HTTP Version Not Supported");
    assert_string_equal(http_status_text(299), "Unknown");
}

/* ---- request-target helpers ---- */

static bool query_is(const char *target, const char *key, const char *want)
{
    const char *v = NULL;
    size_t n = 0;
    bool found = http_query_get(target, strlen(target), key, &v, &n);
    if (!want) return !found;
    return found && span_is(v, n, want);
}

static void test_query(void **state)
{
    (void)state;
    const char *t = "/socket.io/?a=1&b&c=3&a=2&&e=&x%20y=z&=anon";
    assert_true(query_is(t, "a", "1"));
    assert_true(query_is(t, "b", ""));
    assert_true(query_is(t, "c", "3"));
    assert_true(query_is(t, "e", ""));
    assert_true(query_is(t, "x%20y", "z"));
    assert_true(query_is(t, "x y", NULL));
    assert_true(query_is(t, "", "anon"));
    assert_true(query_is(t, "d", NULL));
    assert_true(query_is(t, "A", NULL));
    assert_true(query_is("/p?ab=1", "a", NULL));
    assert_true(query_is("/p?ab=1", "abc", NULL));
    assert_true(query_is("/p", "a", NULL));
    assert_true(query_is("/p?", "a", NULL));
    assert_true(query_is("/p?a=1=2", "a", "1=2"));
    assert_true(query_is("/p?a=1#a=2", "a", "1"));
    assert_true(query_is("/p?b=1#a=2", "a", NULL));
    /* The value is bounded by the given length, not by a NUL. */
    const char *v;
    size_t n;
    assert_true(http_query_get("/p?a=12345", 7, "a", &v, &n));
    assert_int_equal(n, 2);

    const char *path;
    size_t plen;
    http_target_path("/a/b?c=d", 8, &path, &plen);
    assert_true(span_is(path, plen, "/a/b"));
    http_target_path("/a/b", 4, &path, &plen);
    assert_true(span_is(path, plen, "/a/b"));
    http_target_path("/a?b?c", 3, &path, &plen);
    assert_true(span_is(path, plen, "/a"));
}

static void test_pct_decode(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(http_pct_decode(S("a%20b%2Fc%2fd"), out, false), 7);
    assert_memory_equal(out, "a b/c/d", 7);
    assert_int_equal(http_pct_decode(S("a+b%2B"), out, true), 4);
    assert_memory_equal(out, "a b+", 4);
    assert_int_equal(http_pct_decode(S("a+b"), out, false), 3);
    assert_memory_equal(out, "a+b", 3);
    assert_int_equal(http_pct_decode(S("%00%ff"), out, false), 2);
    assert_memory_equal(out, "\0\xff", 2);
    assert_int_equal(http_pct_decode(S(""), out, false), 0);
    assert_int_equal(http_pct_decode(S("%"), out, false), -1);
    assert_int_equal(http_pct_decode(S("a%2"), out, false), -1);
    assert_int_equal(http_pct_decode(S("%zz"), out, false), -1);
    assert_int_equal(http_pct_decode(S("%2g"), out, false), -1);
    assert_int_equal(http_pct_decode(S("%g2"), out, false), -1);
    assert_int_equal(http_pct_decode(S("%%41"), out, false), -1);
    /* Only the given length is read: "%4" then a byte we must not see. */
    assert_int_equal(http_pct_decode("%41%4", 5, out, false), -1);
}

/* Application header lines: trimmed, copied, and refused when malformed. */
static void test_header_lines(void **state)
{
    (void)state;
    char *text;
    http_header *h;
    const char *ok[] = {"X-One:  a b \t", "Authorization:Bearer t"};
    assert_int_equal(http_headers_from_lines(ok, 2, 8, &text, &h), 0);
    assert_int_equal((int)h[0].name_len, 5);
    assert_memory_equal(h[0].name, "X-One", 5);
    assert_int_equal((int)h[0].value_len, 3);
    assert_memory_equal(h[0].value, "a b", 3);
    assert_memory_equal(h[1].value, "Bearer t", 8);
    assert_true(h[0].name >= text && h[0].name < text + 64); /* points into the copy */
    free(text);
    free(h);
    assert_int_equal(http_headers_from_lines(NULL, 0, 8, &text, &h), 0);
    assert_null(text);
    assert_null(h);
    const char *bad[][1] = {
        {"no colon"}, {": empty name"}, {"X-Bad: a\r\nInjected: 1"}, {"Bad Name: x"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(http_headers_from_lines(bad[i], 1, 8, &text, &h), PARLEY_EINVAL);
        assert_null(text);
        assert_null(h);
    }
    const char *null_line[] = {NULL};
    assert_int_equal(http_headers_from_lines(null_line, 1, 8, &text, &h), PARLEY_EINVAL);
    assert_int_equal(http_headers_from_lines(ok, 2, 1, &text, &h), PARLEY_EINVAL); /* over max */
    assert_null(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_basic),
        cmocka_unit_test(test_request_leading_lines),
        cmocka_unit_test(test_request_line_errors),
        cmocka_unit_test(test_line_endings),
        cmocka_unit_test(test_header_errors),
        cmocka_unit_test(test_host_rules),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_transfer_encoding),
        cmocka_unit_test(test_connection_flags),
        cmocka_unit_test(test_header_tokens),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_head_split_everywhere),
        cmocka_unit_test(test_response_heads),
        cmocka_unit_test(test_body_length),
        cmocka_unit_test(test_body_until_close),
        cmocka_unit_test(test_body_eof),
        cmocka_unit_test(test_body_chunked),
        cmocka_unit_test(test_body_chunked_errors),
        cmocka_unit_test(test_keep_alive_sequence),
        cmocka_unit_test(test_writers),
        cmocka_unit_test(test_query),
        cmocka_unit_test(test_pct_decode),
        cmocka_unit_test(test_header_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
