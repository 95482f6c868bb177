/* Fuzzes the Engine.IO polling payload iterator. Packets stay inside the
 * body, and a body it accepts re-encodes to exactly the same bytes (strict
 * base64 has one spelling per byte string). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "codec/eio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536) return 0;
    uint8_t *body = malloc(size ? size : 1);
    CHECK(body);
    memcpy(body, data, size);

    eio_packet p;
    int trc = eio_parse_text(body, size, &p);
    if (trc == 0) CHECK(p.type >= 0 && p.type <= 6 && p.data == body + 1 && p.len == size - 1);

    eio_payload it;
    eio_payload_init(&it, body, size);
    pbuf again = {0};
    size_t expect = 0, count = 0;
    int rc;
    while ((rc = eio_payload_next(&it, &p)) == 1) {
        CHECK(p.data >= body && p.data + p.len <= body + size);
        CHECK(p.type >= 0 && p.type <= 6);
        CHECK(!p.binary || p.type == 4);
        CHECK(++count <= size);
        expect += eio_payload_size(count == 1, p.binary, p.len);
        /* the data lives in the body being iterated: copy it first */
        uint8_t *copy = malloc(p.len ? p.len : 1);
        CHECK(copy);
        memcpy(copy, p.data, p.len);
        CHECK(eio_payload_append(&again, count == 1, p.type, p.binary, copy, p.len) == 0);
        free(copy);
        CHECK(again.len == expect);
    }
    CHECK(rc == 0 || rc == -3);
    CHECK(eio_payload_next(&it, &p) == rc);
    if (rc == 0) {
        CHECK(again.len == size);
        CHECK(memcmp(again.ptr, data, size) == 0);
    }
    pbuf_free(&again);
    free(body);
    return 0;
}
