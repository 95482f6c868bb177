/* Fuzzes the request side of the HTTP codec: parses pipelined heads and
 * decodes their bodies, then checks that feeding the same bytes in two
 * pieces (split where the first input byte says) gives the same results.
 * Byte 1 picks the limits so that the limit paths are reached too. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXH 64

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

typedef struct head_result {
    long rc;
    int status;
    size_t method_len, target_off, target_len, num_headers;
    int version_minor;
    http_body_kind kind;
    uint64_t content_length;
    bool keep_alive, conn_upgrade, expect_continue;
} head_result;

static void pick_limits(uint8_t sel, http_limits *lim)
{
    http_limits_init(lim);
    if (sel & 1) lim->max_header_bytes = 64 + (sel >> 4) * 8;
    if (sel & 2) lim->max_headers = 1 + (sel >> 5);
    if (sel & 4) lim->max_body = sel >> 3;
}

static void snapshot(head_result *r, long rc, const http_parser *p, const http_head *h,
                     const uint8_t *buf)
{
    memset(r, 0, sizeof *r);
    r->rc = rc;
    r->status = p->error_status;
    if (rc <= 0) return;
    r->method_len = h->method_len;
    r->target_off = (size_t)((const uint8_t *)h->target - buf);
    r->target_len = h->target_len;
    r->num_headers = h->num_headers;
    r->version_minor = h->version_minor;
    r->kind = h->body_kind;
    r->content_length = h->content_length;
    r->keep_alive = h->keep_alive;
    r->conn_upgrade = h->conn_upgrade;
    r->expect_continue = h->expect_continue;
}

static void check_head(long rc, const http_parser *p, const http_head *h, const uint8_t *buf,
                       size_t len)
{
    if (rc < 0) {
        CHECK(p->error_status >= 400 && p->error_status <= 505 && p->error);
        return;
    }
    if (rc == 0) return;
    CHECK((size_t)rc <= len && (size_t)rc <= p->limits.max_header_bytes);
    CHECK(h->method_len > 0 && h->target_len > 0);
    CHECK(h->version_minor == 0 || h->version_minor == 1);
    CHECK(h->num_headers <= p->limits.max_headers && h->num_headers <= MAXH);
    for (size_t k = 0; k < h->num_headers; k++) {
        const http_header *f = &h->headers[k];
        CHECK((const uint8_t *)f->name >= buf &&
              (const uint8_t *)f->value + f->value_len <= buf + rc);
        CHECK(f->name_len > 0);
        for (size_t i = 0; i < f->value_len; i++) CHECK(f->value[i] != '\r' && f->value[i] != '\n');
    }
    CHECK(h->body_kind != HTTP_BODY_UNTIL_CLOSE);
    if (h->body_kind == HTTP_BODY_LENGTH) CHECK(h->content_length <= p->limits.max_body);
}

/* Decodes body[0, len) either at once or in two pieces; returns the
 * decoder's answer, the decoded bytes in out and the input used. */
static int decode(const http_head *h, uint64_t max, const uint8_t *body, size_t len, size_t split,
                  uint8_t *out, size_t *out_len, size_t *used, int *status)
{
    uint8_t *b = malloc(len ? len : 1);
    CHECK(b);
    if (len) memcpy(b, body, len);
    http_body d;
    http_body_init(&d, h, max);
    size_t c = 0, o = 0;
    *out_len = 0;
    *used = 0;
    int rc = http_body_decode(&d, b, split, &c, &o);
    CHECK(c <= split && o <= c);
    memcpy(out, b, o);
    *out_len = o;
    *used = c;
    if (rc == 0 && split < len) {
        /* Unused bytes go again, followed by the rest. */
        rc = http_body_decode(&d, b + c, len - c, &c, &o);
        CHECK(c <= len - *used && o <= c);
        memcpy(out + *out_len, b + *used, o);
        *out_len += o;
        *used += c;
    }
    CHECK(d.total == *out_len);
    if (rc == 0) {
        int e = http_body_eof(&d);
        CHECK(e == 1 || e < 0);
    }
    *status = d.error_status;
    free(b);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    size_t len = size - 2;
    size_t split = len ? (size_t)data[0] * len / 255 : 0;
    http_limits lim;
    pick_limits(data[1], &lim);
    uint8_t *buf = malloc(len ? len : 1);
    CHECK(buf);
    if (len) memcpy(buf, data + 2, len);

    http_header hs[MAXH];
    http_head h;
    http_parser p;

    /* The whole input, then the same in two pieces. */
    http_parser_init(&p, false, &lim);
    long rc = http_parse_head(&p, buf, len, &h, hs, MAXH);
    check_head(rc, &p, &h, buf, len);
    head_result whole;
    snapshot(&whole, rc, &p, &h, buf);

    http_parser p2;
    http_head h2;
    http_header hs2[MAXH];
    http_parser_init(&p2, false, &lim);
    long rc2 = http_parse_head(&p2, buf, split, &h2, hs2, MAXH);
    if (rc2 == 0) rc2 = http_parse_head(&p2, buf, len, &h2, hs2, MAXH);
    head_result pieces;
    snapshot(&pieces, rc2, &p2, &h2, buf);
    CHECK(memcmp(&whole, &pieces, sizeof whole) == 0);

    /* Bodies of pipelined requests, each decoded whole and in pieces. */
    size_t off = 0;
    uint8_t *out1 = malloc(len + 1), *out2 = malloc(len + 1);
    CHECK(out1 && out2);
    for (int n = 0; n < 8 && rc > 0; n++) {
        off += (size_t)rc;
        size_t blen = len - off;
        size_t bsplit = blen ? (size_t)data[0] * blen / 255 : 0;
        size_t ol1, ol2, u1, u2;
        int s1, s2;
        int r1 = decode(&h, lim.max_body, buf + off, blen, blen, out1, &ol1, &u1, &s1);
        int r2 = decode(&h, lim.max_body, buf + off, blen, bsplit, out2, &ol2, &u2, &s2);
        CHECK(r1 == r2 && s1 == s2 && ol1 == ol2 && u1 == u2);
        CHECK(ol1 == 0 || memcmp(out1, out2, ol1) == 0);
        if (r1 != 1) break;
        off += u1;
        http_parser_reset(&p, false);
        rc = http_parse_head(&p, buf + off, len - off, &h, hs, MAXH);
        check_head(rc, &p, &h, buf + off, len - off);
    }
    free(out1);
    free(out2);
    free(buf);
    return 0;
}
