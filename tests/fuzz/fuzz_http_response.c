/* Fuzzes the response side of the HTTP codec: heads (optionally as the
 * answer to HEAD) and every body framing, including until-close, with the
 * result checked to be the same when the input arrives in two pieces. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXH 32

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    size_t len = size - 2;
    size_t split = len ? (size_t)data[0] * len / 255 : 0;
    uint8_t sel = data[1];
    http_limits lim;
    http_limits_init(&lim);
    if (sel & 1) lim.max_header_bytes = 48 + (sel >> 4) * 8;
    if (sel & 2) lim.max_headers = 1 + (sel >> 5);
    uint64_t max_body = (sel & 4) ? (uint64_t)(sel >> 3) : lim.max_body;
    bool head_req = sel & 8;

    uint8_t *buf = malloc(len ? len : 1);
    CHECK(buf);
    if (len) memcpy(buf, data + 2, len);
    http_header hs[MAXH], hs2[MAXH];
    http_head h, h2;
    http_parser p, p2;
    http_parser_init(&p, true, &lim);
    http_parser_reset(&p, head_req);
    long rc = http_parse_head(&p, buf, len, &h, hs, MAXH);
    http_parser_init(&p2, true, &lim);
    http_parser_reset(&p2, head_req);
    long rc2 = http_parse_head(&p2, buf, split, &h2, hs2, MAXH);
    if (rc2 == 0) rc2 = http_parse_head(&p2, buf, len, &h2, hs2, MAXH);
    CHECK(rc == rc2 && p.error_status == p2.error_status);
    if (rc < 0) CHECK(rc == -3 || (rc == -4 && p.error_status == 431));
    if (rc > 0) {
        CHECK(h.status == h2.status && h.body_kind == h2.body_kind &&
              h.content_length == h2.content_length && h.num_headers == h2.num_headers &&
              h.keep_alive == h2.keep_alive && h.reason_len == h2.reason_len);
        CHECK(h.status >= 100 && h.status <= 599);
        if (head_req || h.status < 200 || h.status == 204 || h.status == 304)
            CHECK(h.body_kind == HTTP_BODY_NONE);
        if (h.body_kind == HTTP_BODY_UNTIL_CLOSE) CHECK(!h.keep_alive);

        /* Body: decode in two pieces, then signal the close. */
        size_t off = (size_t)rc, blen = len - off;
        size_t bsplit = blen ? (size_t)data[0] * blen / 255 : 0;
        http_body b;
        http_body_init(&b, &h, max_body);
        size_t c, o;
        int r = http_body_decode(&b, buf + off, bsplit, &c, &o);
        CHECK(c <= bsplit && o <= c);
        size_t total = o;
        if (r == 0) {
            r = http_body_decode(&b, buf + off + c, blen - c, &c, &o);
            total += o;
        }
        CHECK(b.total == total);
        if (r == 0) {
            r = http_body_eof(&b);
            CHECK(r == 1 || r == -3);
            if (r == 1)
                CHECK(h.body_kind == HTTP_BODY_UNTIL_CLOSE || h.body_kind == HTTP_BODY_NONE);
        }
        if (r < 0) CHECK(b.error_status == 400 || b.error_status == 413 || b.error_status == 431);
        CHECK(total <= max_body);
    }
    free(buf);
    return 0;
}
