/* Shared body of fuzz_ws_server and fuzz_ws_client.
 *
 * Input: byte 0 selects options, bytes 1-2 seed the chunk sizes, the rest
 * is the peer's byte stream. It is parsed twice, whole and in chunks, the
 * way a caller would (unconsumed bytes kept, new bytes appended); both
 * runs must give the same events and the same final error. Every event is
 * checked against the rules (text is UTF-8, sizes within limits). Then the
 * writers are run on the same bytes as a payload and parsed back. */
#ifndef PARLEY_WS_FUZZ_H
#define PARLEY_WS_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "codec/pmd.h"
#include "codec/utf8.h"
#include "codec/ws.h"
#include "parley/parley.h"

#define WF_CHECK(c)                                                                                \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

typedef struct wf_opts {
    bool server;
    bool pmd;
    pmd_params prm;
    uint64_t max_frame;
    uint64_t max_message;
    unsigned max_chunk;
    uint32_t seed;
} wf_opts;

typedef struct wf_ev {
    int type;
    int opcode;
    size_t len;
    uint64_t hash;
    uint16_t close_code;
    bool compressed;
} wf_ev;

typedef struct wf_run {
    wf_ev *ev;
    size_t n, cap;
    long err;
    uint16_t close_code;
} wf_run;

static uint64_t wf_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static uint32_t wf_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static void wf_record(wf_run *r, const wf_opts *o, const ws_event *ev)
{
    WF_CHECK(ev->data != NULL);
    switch (ev->type) {
    case WS_EV_MESSAGE:
        WF_CHECK(ev->opcode == WS_OP_TEXT || ev->opcode == WS_OP_BINARY);
        WF_CHECK(ev->len <= o->max_message);
        if (ev->opcode == WS_OP_TEXT) WF_CHECK(utf8_valid(ev->data, ev->len));
        if (ev->was_compressed) WF_CHECK(o->pmd);
        break;
    case WS_EV_PING:
    case WS_EV_PONG:
        WF_CHECK(ev->len <= 125);
        break;
    case WS_EV_CLOSE:
        WF_CHECK(ev->len <= 123);
        WF_CHECK(utf8_valid(ev->data, ev->len));
        WF_CHECK(ev->close_code == WS_CLOSE_NO_STATUS || ws_close_code_valid(ev->close_code));
        break;
    default:
        WF_CHECK(0);
    }
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 16;
        r->ev = realloc(r->ev, r->cap * sizeof *r->ev);
        WF_CHECK(r->ev != NULL);
    }
    r->ev[r->n++] = (wf_ev){ev->type,       ev->opcode,        ev->len, wf_hash(ev->data, ev->len),
                            ev->close_code, ev->was_compressed};
}

/* max_chunk == 0: everything at once. */
static void wf_parse(const wf_opts *o, const uint8_t *in, size_t len, unsigned max_chunk, wf_run *r)
{
    memset(r, 0, sizeof *r);
    ws_parser p;
    ws_parser_init(&p, o->server);
    p.max_frame = o->max_frame;
    p.max_message = o->max_message;
    pmd_stream *inf = NULL;
    if (o->pmd) {
        inf = pmd_inflater_new(&o->prm, o->server);
        WF_CHECK(inf != NULL);
        p.inflater = inf;
    }
    pbuf buf = {0};
    size_t fed = 0;
    uint32_t rng = o->seed | 1;
    for (;;) {
        for (;;) {
            ws_event ev;
            long n = ws_parse(&p, buf.ptr, buf.len, &ev);
            if (n < 0) {
                WF_CHECK(n == PARLEY_EPROTO || n == PARLEY_ELIMIT);
                WF_CHECK(ws_parser_error(&p) != NULL);
                WF_CHECK(p.close_code == WS_CLOSE_PROTOCOL || p.close_code == WS_CLOSE_TOO_BIG ||
                         p.close_code == WS_CLOSE_INVALID_DATA);
                WF_CHECK((n == PARLEY_ELIMIT) == (p.close_code == WS_CLOSE_TOO_BIG));
                r->err = n;
                r->close_code = p.close_code;
                goto out;
            }
            WF_CHECK((size_t)n <= buf.len);
            uint64_t need = ws_parser_frame_need(&p);
            WF_CHECK(need == 0 || need <= (uint64_t)WS_MAX_HEADER + o->max_frame);
            if (ev.type != WS_EV_NONE) wf_record(r, o, &ev);
            pbuf_consume(&buf, (size_t)n);
            if (ev.type == WS_EV_CLOSE) goto out;
            if (ev.type == WS_EV_NONE) break;
        }
        if ((rng & 7) == 0) ws_parser_trim(&p, 64);
        if (fed == len) break;
        size_t k = len - fed;
        if (max_chunk) {
            size_t c = 1 + wf_rand(&rng) % max_chunk;
            if (c < k) k = c;
        }
        WF_CHECK(pbuf_append(&buf, in + fed, k) == 0);
        fed += k;
    }
out:
    pbuf_free(&buf);
    ws_parser_free(&p);
    pmd_stream_free(inf);
}

/* Writes `payload` as frames the way `o`'s peer would and parses it
 * back with o's parser settings: must give the payload back. */
static void wf_round_trip(const wf_opts *o, const uint8_t *payload, size_t len)
{
    static const uint8_t key[4] = {0x12, 0x34, 0x56, 0x78};
    const uint8_t *mask = o->server ? key : NULL; /* the peer's role */
    int op = utf8_valid(payload, len) ? WS_OP_TEXT : WS_OP_BINARY;
    pbuf out = {0};
    pmd_stream *d = NULL;
    if (o->pmd) {
        pmd_config cfg;
        pmd_config_init(&cfg);
        d = pmd_deflater_new(&o->prm, &cfg, !o->server);
        WF_CHECK(d != NULL);
    }
    /* Whole message (compressed when negotiated), twice for the context. */
    WF_CHECK(ws_message_append(&out, d, 16, op, payload, len, mask) == 0);
    WF_CHECK(ws_message_append(&out, d, 16, op, payload, len, mask) == 0);
    /* Fragmented, uncompressed, with a ping in the middle. */
    size_t cut = len / 3;
    WF_CHECK(ws_frame_append(&out, op, false, false, payload, cut, mask) == 0);
    WF_CHECK(ws_frame_append(&out, WS_OP_PING, true, false, "x", 1, mask) == 0);
    WF_CHECK(ws_frame_append(&out, WS_OP_CONT, true, false, payload + cut, len - cut, mask) == 0);
    /* A close with the payload as reason, cut to fit. */
    uint8_t cp[125];
    size_t cn = ws_close_payload(cp, 4321, (const char *)payload, len);
    WF_CHECK(cn >= 2 && cn <= 125);
    WF_CHECK(utf8_valid(cp + 2, cn - 2));
    WF_CHECK(ws_frame_append(&out, WS_OP_CLOSE, true, false, cp, cn, mask) == 0);

    wf_opts big = *o;
    big.max_frame = big.max_message = (uint64_t)len * 2 + 1024; /* deflate may expand */
    wf_run r;
    wf_parse(&big, out.ptr, out.len, 0, &r);
    WF_CHECK(r.err == 0);
    WF_CHECK(r.n == 5);
    uint64_t h = wf_hash(payload, len);
    for (int i = 0; i < 2; i++) {
        WF_CHECK(r.ev[i].type == WS_EV_MESSAGE && r.ev[i].len == len && r.ev[i].hash == h);
        WF_CHECK(r.ev[i].compressed == (d != NULL && len >= 16));
    }
    WF_CHECK(r.ev[2].type == WS_EV_PING);
    WF_CHECK(r.ev[3].type == WS_EV_MESSAGE && r.ev[3].len == len && r.ev[3].hash == h);
    WF_CHECK(r.ev[4].type == WS_EV_CLOSE && r.ev[4].close_code == 4321);
    WF_CHECK(r.ev[4].len == cn - 2 && r.ev[4].hash == wf_hash(cp + 2, cn - 2));
    free(r.ev);
    pbuf_free(&out);
    pmd_stream_free(d);
}

static int wf_main(bool server, const uint8_t *data, size_t size)
{
    if (size < 3) return 0;
    uint8_t opt = data[0];
    wf_opts o;
    memset(&o, 0, sizeof o);
    o.server = server;
    o.pmd = opt & 1;
    o.prm.client_no_context_takeover = opt & 2;
    o.prm.server_no_context_takeover = opt & 4;
    o.prm.server_max_window_bits = 15;
    o.prm.client_max_window_bits = 15;
    if (opt & 8) {
        o.max_frame = 200;
        o.max_message = 600;
    } else {
        o.max_frame = 1u << 16;
        o.max_message = 1u << 18;
    }
    o.max_chunk = (opt & 16) ? 4 : (opt & 32) ? 64 : 1024;
    o.seed = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)opt << 16;
    const uint8_t *body = data + 3;
    size_t n = size - 3;

    /* Parsing unmasks in place: each run gets its own copy. */
    uint8_t *a = malloc(n + 1), *b = malloc(n + 1);
    WF_CHECK(a && b);
    memcpy(a, body, n);
    memcpy(b, body, n);
    wf_run whole, chunked;
    wf_parse(&o, a, n, 0, &whole);
    wf_parse(&o, b, n, o.max_chunk, &chunked);
    WF_CHECK(whole.err == chunked.err);
    WF_CHECK(whole.close_code == chunked.close_code);
    WF_CHECK(whole.n == chunked.n);
    for (size_t i = 0; i < whole.n; i++) {
        const wf_ev *x = &whole.ev[i], *y = &chunked.ev[i];
        WF_CHECK(x->type == y->type && x->opcode == y->opcode && x->len == y->len);
        WF_CHECK(x->hash == y->hash && x->close_code == y->close_code);
        WF_CHECK(x->compressed == y->compressed);
    }
    free(whole.ev);
    free(chunked.ev);
    free(a);
    free(b);

    wf_round_trip(&o, body, n);
    return 0;
}

#endif
