/* Fuzzes the Socket.IO packet parser. What it accepts must satisfy the
 * per-type rules, have sane placeholders when binary, and re-encode (head
 * + compact data) to a packet that parses the same. The first input byte
 * picks the limits. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "codec/json.h"
#include "codec/sio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

typedef struct ph_ctx {
    const json_val *data;
    unsigned attachments;
    unsigned seen;
} ph_ctx;

static void on_ph(const json_val *ph, unsigned num, void *user)
{
    ph_ctx *c = user;
    CHECK(num < c->attachments);
    CHECK(ph->type == JSON_OBJECT && ph->p >= c->data->p &&
          ph->p + ph->len <= c->data->p + c->data->len);
    json_val t;
    CHECK(json_object_get(ph, "_placeholder", &t));
    c->seen++;
}

static void check_same(const sio_packet *a, const sio_packet *b)
{
    CHECK(a->type == b->type && a->attachments == b->attachments && a->id == b->id);
    CHECK(a->nsp_len == b->nsp_len && memcmp(a->nsp, b->nsp, a->nsp_len) == 0);
    CHECK(a->data.type == b->data.type);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536) return 0;
    sio_limits lim;
    sio_limits_init(&lim);
    lim.max_depth = 1 + data[0] % 40;
    lim.max_attachments = data[0] >> 6 == 3 ? 3 : 10;
    size--;
    char *s = malloc(size ? size : 1);
    CHECK(s);
    memcpy(s, data + 1, size);

    sio_packet p;
    const char *why = NULL;
    int rc = sio_parse(s, size, &lim, &p, &why);
    if (rc != 0) {
        CHECK(rc == -3 && why && why[0]);
        free(s);
        return 0;
    }
    CHECK(p.type >= 0 && p.type <= 6);
    bool binary = p.type == 5 || p.type == 6;
    if (binary)
        CHECK(p.attachments >= 1 && p.attachments <= lim.max_attachments);
    else
        CHECK(p.attachments == 0);
    CHECK(p.nsp_len >= 1 && p.nsp[0] == '/' && !memchr(p.nsp, ',', p.nsp_len));
    CHECK(p.id >= -1 && p.id <= 9007199254740991LL);
    switch (p.type) {
    case 0:
        CHECK(p.data.type == JSON_INVALID || p.data.type == JSON_OBJECT);
        break;
    case 1:
        CHECK(p.data.type == JSON_INVALID);
        break;
    case 4:
        CHECK(p.data.type == JSON_STRING || p.data.type == JSON_OBJECT);
        break;
    case 2:
    case 5: /* an EVENT may come without data (the reference ignores it) */
        CHECK(p.data.type == JSON_INVALID ||
              (p.data.type == JSON_ARRAY && json_count(&p.data) >= 1));
        break;
    default: /* an ACK without data acknowledges with no arguments */
        CHECK(p.data.type == JSON_INVALID || p.data.type == JSON_ARRAY);
    }
    if (p.data.type != JSON_INVALID) CHECK(p.data.p > s && p.data.p + p.data.len <= s + size);

    ph_ctx ctx = {&p.data, p.attachments, 0};
    int prc = sio_check_placeholders(&p.data, p.attachments, lim.max_depth, on_ph, &ctx, &why);
    CHECK(prc == 0 || (prc == -3 && ctx.seen == 0));
    CHECK(sio_check_placeholders(&p.data, p.attachments, lim.max_depth, NULL, NULL, &why) == prc);

    pbuf again = {0};
    CHECK(sio_write_head(&again, p.type, p.attachments, p.nsp, p.nsp_len, p.id) == 0);
    size_t head = again.len;
    if (p.data.type != JSON_INVALID) CHECK(json_compact(&again, &p.data) == 0);
    sio_packet q;
    CHECK(sio_parse((char *)again.ptr, again.len, &lim, &q, &why) == 0);
    check_same(&p, &q);
    if (q.data.type != JSON_INVALID) CHECK(q.data.p == (char *)again.ptr + head);
    ph_ctx ctx2 = {&q.data, q.attachments, 0};
    CHECK(sio_check_placeholders(&q.data, q.attachments, lim.max_depth, on_ph, &ctx2, &why) == prc);
    CHECK(ctx2.seen == ctx.seen);

    /* the re-encoding is a fixed point */
    pbuf third = {0};
    CHECK(sio_write_head(&third, q.type, q.attachments, q.nsp, q.nsp_len, q.id) == 0);
    if (q.data.type != JSON_INVALID) CHECK(json_compact(&third, &q.data) == 0);
    CHECK(third.len == again.len && memcmp(third.ptr, again.ptr, again.len) == 0);

    pbuf_free(&again);
    pbuf_free(&third);
    free(s);
    return 0;
}
