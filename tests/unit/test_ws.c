/* Unit tests for the WebSocket frame codec: every rule of ws.h with its
 * close code, in both roles, each input fed whole, byte by byte and in
 * random pieces through a simulated caller that keeps unconsumed bytes
 * and appends new ones, as ws_parse's contract asks. */
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
#include "base/util.h"
#include "chop.h"
#include "codec/pmd.h"
#include "codec/utf8.h"
#include "codec/ws.h"
#include "parley/parley.h"

static const uint8_t KEY[4] = {0x37, 0xfa, 0x21, 0x3d};

/* How a test parser is set up. */
typedef struct pconf {
    bool server;
    uint64_t max_frame;   /* 0: default */
    uint64_t max_message; /* 0: default */
    bool pmd;
    pmd_params prm;
} pconf;

typedef struct got_ev {
    ws_event_type type;
    int opcode;
    uint8_t *data; /* copy */
    size_t len;
    uint16_t close_code;
    bool compressed;
    bool in_place; /* data pointed into the caller's bytes */
} got_ev;

typedef struct run_result {
    got_ev ev[64];
    size_t n;
    long err;
    uint16_t close_code;
    size_t leftover; /* bytes the caller still held at the end */
} run_result;

static void result_free(run_result *r)
{
    for (size_t i = 0; i < r->n; i++) free(r->ev[i].data);
    memset(r, 0, sizeof *r);
}

/* The caller: holds unconsumed bytes, appends what "arrives", parses until
 * the parser wants more, stops at an error or the peer's close. */
static void run(const pconf *pc, const uint8_t *in, size_t len, chopper *c, run_result *r)
{
    memset(r, 0, sizeof *r);
    ws_parser p;
    ws_parser_init(&p, pc->server);
    if (pc->max_frame) p.max_frame = pc->max_frame;
    if (pc->max_message) p.max_message = pc->max_message;
    pmd_stream *inf = NULL;
    if (pc->pmd) {
        inf = pmd_inflater_new(&pc->prm, pc->server);
        assert_non_null(inf);
        p.inflater = inf;
    }
    pbuf buf = {0};
    size_t fed = 0;
    for (;;) {
        for (;;) {
            ws_event ev;
            long n = ws_parse(&p, buf.ptr, buf.len, &ev);
            if (n < 0) {
                r->err = n;
                r->close_code = p.close_code;
                assert_non_null(ws_parser_error(&p));
                /* Failure is sticky. */
                assert_int_equal(ws_parse(&p, buf.ptr, buf.len, &ev), n);
                goto out;
            }
            assert_true((size_t)n <= buf.len);
            if (ev.type != WS_EV_NONE) {
                assert_true(r->n < PARLEY_ARRAY_LEN(r->ev));
                got_ev *g = &r->ev[r->n++];
                g->type = ev.type;
                g->opcode = ev.opcode;
                g->len = ev.len;
                g->close_code = ev.close_code;
                g->compressed = ev.was_compressed;
                assert_non_null(ev.data);
                g->in_place =
                    buf.ptr && ev.data >= buf.ptr && ev.data + ev.len <= buf.ptr + buf.len;
                g->data = malloc(ev.len + 1);
                memcpy(g->data, ev.data, ev.len);
            }
            pbuf_consume(&buf, (size_t)n);
            if (ev.type == WS_EV_CLOSE) {
                /* Nothing more comes out after the close. */
                ws_event ev2;
                assert_int_equal(ws_parse(&p, buf.ptr, buf.len, &ev2), 0);
                assert_int_equal(ev2.type, WS_EV_NONE);
                goto out;
            }
            if (ev.type == WS_EV_NONE) break;
        }
        if (fed == len) break;
        size_t k = chop_next(c, len - fed);
        assert_int_equal(pbuf_append(&buf, in + fed, k), 0);
        fed += k;
    }
out:
    r->leftover = buf.len;
    pbuf_free(&buf);
    ws_parser_free(&p);
    pmd_stream_free(inf);
}

typedef struct want_ev {
    ws_event_type type;
    int opcode;
    const void *data;
    size_t len;
    uint16_t close_code;
    int in_place;   /* 1, 0, or -1 (either) */
    int compressed; /* 1, 0, or -1 */
} want_ev;

/* Runs the input in all three feeding modes and checks the events and
 * the final error (0 for none) with its close code. */
static void expect(const pconf *pc, const pbuf *in, const want_ev *want, size_t nwant, long err,
                   uint16_t code)
{
    for (int mode = CHOP_WHOLE; mode <= CHOP_RANDOM; mode++) {
        for (int rep = 0; rep < (mode == CHOP_RANDOM ? 3 : 1); rep++) {
            chopper c;
            chop_init(&c, (chop_mode)mode, chop_seed() + (uint64_t)rep * 7919 + in->len);
            run_result r;
            run(pc, in->ptr, in->len, &c, &r);
            if (r.err != err || r.close_code != code)
                fail_msg("mode %d: result %ld/%u, want %ld/%u", mode, r.err, r.close_code, err,
                         code);
            if (r.n != nwant) fail_msg("mode %d: %zu events, want %zu", mode, r.n, nwant);
            for (size_t i = 0; i < nwant; i++) {
                const got_ev *g = &r.ev[i];
                const want_ev *w = &want[i];
                if (g->type != w->type) fail_msg("mode %d ev %zu: type %d", mode, i, g->type);
                if (w->type == WS_EV_MESSAGE) assert_int_equal(g->opcode, w->opcode);
                if (w->type == WS_EV_CLOSE) assert_int_equal(g->close_code, w->close_code);
                if (g->len != w->len) fail_msg("mode %d ev %zu: len %zu", mode, i, g->len);
                if (w->len) assert_memory_equal(g->data, w->data, w->len);
                if (w->in_place >= 0 && g->in_place != (bool)w->in_place)
                    fail_msg("mode %d ev %zu: in_place %d", mode, i, g->in_place);
                if (w->compressed >= 0) assert_int_equal(g->compressed, (bool)w->compressed);
            }
            result_free(&r);
        }
    }
}

static void expect_error(const pconf *pc, const pbuf *in, long err, uint16_t code)
{
    expect(pc, in, NULL, 0, err, code);
}

/* Frame builders. A server parses masked frames, a client unmasked. */
static void frame(pbuf *b, const pconf *pc, int opcode, bool fin, bool rsv1, const void *pl,
                  size_t n)
{
    assert_int_equal(ws_frame_append(b, opcode, fin, rsv1, pl, n, pc->server ? KEY : NULL), 0);
}

static void raw(pbuf *b, const char *bytes, size_t n)
{
    assert_int_equal(pbuf_append(b, bytes, n), 0);
}

#define RAW(b, lit) raw(b, lit, sizeof(lit) - 1)

static const pconf SERVER = {.server = true};
static const pconf CLIENT = {.server = false};

static void pattern(uint8_t *buf, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)((i * 31 + seed) ^ (i >> 8));
}

static void test_close_code_valid(void **state)
{
    (void)state;
    static const unsigned ok[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                                  1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999};
    static const unsigned bad[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(ok); i++) assert_true(ws_close_code_valid(ok[i]));
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++) assert_false(ws_close_code_valid(bad[i]));
}

static void test_init_defaults(void **state)
{
    (void)state;
    ws_parser p;
    memset(&p, 0xab, sizeof p);
    ws_parser_init(&p, true);
    assert_true(p.server);
    assert_int_equal(p.max_frame, 16u << 20);
    assert_int_equal(p.max_message, 16u << 20);
    assert_null(p.inflater);
    assert_null(p.msg.ptr);
    assert_int_equal(p.close_code, 0);
    assert_null(ws_parser_error(&p));
    ws_parser_free(&p);
    ws_parser_init(&p, false);
    assert_false(p.server);
    ws_parser_free(&p);
}

static void test_header_writer(void **state)
{
    (void)state;
    uint8_t h[WS_MAX_HEADER];
    assert_int_equal(ws_frame_header(h, WS_OP_TEXT, true, false, 0, NULL), 2);
    assert_memory_equal(h, "\x81\x00", 2);
    assert_int_equal(ws_frame_header(h, WS_OP_BINARY, false, true, 125, NULL), 2);
    assert_memory_equal(h, "\x42\x7d", 2);
    assert_int_equal(ws_frame_header(h, WS_OP_TEXT, true, false, 126, NULL), 4);
    assert_memory_equal(h, "\x81\x7e\x00\x7e", 4);
    assert_int_equal(ws_frame_header(h, WS_OP_TEXT, true, false, 65535, NULL), 4);
    assert_memory_equal(h, "\x81\x7e\xff\xff", 4);
    assert_int_equal(ws_frame_header(h, WS_OP_TEXT, true, false, 65536, NULL), 10);
    assert_memory_equal(h, "\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10);
    assert_int_equal(ws_frame_header(h, WS_OP_CONT, true, false, 0x0123456789abULL, KEY), 14);
    assert_memory_equal(h, "\x80\xff\x00\x00\x01\x23\x45\x67\x89\xab\x37\xfa\x21\x3d", 14);
    assert_int_equal(ws_frame_header(h, WS_OP_PING, true, false, 5, KEY), 6);
    assert_memory_equal(h, "\x89\x85\x37\xfa\x21\x3d", 6);

    /* RFC 6455 5.7 examples. */
    pbuf b = {0};
    assert_int_equal(ws_frame_append(&b, WS_OP_TEXT, true, false, "Hello", 5, NULL), 0);
    assert_int_equal(b.len, 7);
    assert_memory_equal(b.ptr, "\x81\x05\x48\x65\x6c\x6c\x6f", 7);
    b.len = 0;
    assert_int_equal(ws_frame_append(&b, WS_OP_TEXT, true, false, "Hello", 5, KEY), 0);
    assert_int_equal(b.len, 11);
    assert_memory_equal(b.ptr, "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", 11);
    b.len = 0;
    assert_int_equal(ws_frame_append(&b, WS_OP_TEXT, false, false, "Hel", 3, NULL), 0);
    assert_int_equal(ws_frame_append(&b, WS_OP_CONT, true, false, "lo", 2, NULL), 0);
    assert_memory_equal(b.ptr, "\x01\x03\x48\x65\x6c\x80\x02\x6c\x6f", 9);
    pbuf_free(&b);
}

static void test_mask(void **state)
{
    (void)state;
    uint8_t buf[300], ref[300];
    memset(buf, 0x5c, sizeof buf); /* the guard bytes around each run */
    uint64_t rng = chop_seed();
    for (size_t start = 0; start < 8; start++)
        for (size_t len = 0; len < 100; len++)
            for (size_t off = 0; off < 6; off++) {
                uint8_t key[4];
                for (int i = 0; i < 4; i++) key[i] = (uint8_t)test_rand(&rng);
                for (size_t i = 0; i < len; i++) ref[i] = buf[start + i] = (uint8_t)test_rand(&rng);
                uint8_t guard_lo = buf[start ? start - 1 : 0], guard_hi = buf[start + len];
                ws_mask(buf + start, len, key, off);
                for (size_t i = 0; i < len; i++)
                    assert_int_equal(buf[start + i], ref[i] ^ key[(off + i) % 4]);
                if (start) assert_int_equal(buf[start - 1], guard_lo);
                assert_int_equal(buf[start + len], guard_hi);
                /* Masking twice restores; and split masking equals whole. */
                size_t cut = len / 3;
                ws_mask(buf + start, cut, key, off);
                ws_mask(buf + start + cut, len - cut, key, off + cut);
                assert_memory_equal(buf + start, ref, len);
            }
}

/* Payload lengths on both sides of every length encoding, both roles. */
static void test_lengths(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 70001};
    uint8_t *pl = malloc(70001);
    for (int role = 0; role < 2; role++) {
        const pconf *pc = role ? &SERVER : &CLIENT;
        for (size_t i = 0; i < PARLEY_ARRAY_LEN(lens); i++) {
            pattern(pl, lens[i], (uint32_t)i);
            pbuf in = {0};
            frame(&in, pc, WS_OP_BINARY, true, false, pl, lens[i]);
            size_t hl = lens[i] <= 125 ? 2 : lens[i] <= 65535 ? 4 : 10;
            assert_int_equal(in.len, hl + (pc->server ? 4 : 0) + lens[i]);
            want_ev w = {WS_EV_MESSAGE, WS_OP_BINARY, pl, lens[i], 0, 1, 0};
            expect(pc, &in, &w, 1, 0, 0);
            pbuf_free(&in);
        }
    }
    /* A 64-bit length beyond 32 bits is read whole (and refused by size). */
    pbuf in = {0};
    RAW(&in, "\x82\x7f\x00\x00\x00\x01\x00\x00\x00\x00");
    expect_error(&CLIENT, &in, PARLEY_ELIMIT, WS_CLOSE_TOO_BIG);
    pbuf_free(&in);
    free(pl);
}

/* The message handed out in place really is the caller's bytes. */
static void test_zero_copy(void **state)
{
    (void)state;
    for (int role = 0; role < 2; role++) {
        const pconf *pc = role ? &SERVER : &CLIENT;
        pbuf in = {0};
        frame(&in, pc, WS_OP_TEXT, true, false, "first", 5);
        frame(&in, pc, WS_OP_PING, true, false, "pp", 2);
        frame(&in, pc, WS_OP_BINARY, true, false, "second!", 7);
        ws_parser p;
        ws_parser_init(&p, pc->server);
        ws_event ev;
        size_t hl = pc->server ? 6 : 2;
        long n = ws_parse(&p, in.ptr, in.len, &ev);
        assert_int_equal(n, hl + 5);
        assert_int_equal(ev.type, WS_EV_MESSAGE);
        assert_int_equal(ev.opcode, WS_OP_TEXT);
        assert_ptr_equal(ev.data, in.ptr + hl);
        assert_int_equal(ev.len, 5);
        assert_memory_equal(in.ptr + hl, "first", 5); /* unmasked in place */
        assert_false(ev.was_compressed);
        size_t off = (size_t)n;
        n = ws_parse(&p, in.ptr + off, in.len - off, &ev);
        assert_int_equal(n, hl + 2);
        assert_int_equal(ev.type, WS_EV_PING);
        assert_ptr_equal(ev.data, in.ptr + off + hl);
        assert_memory_equal(ev.data, "pp", 2);
        off += (size_t)n;
        n = ws_parse(&p, in.ptr + off, in.len - off, &ev);
        assert_int_equal(n, hl + 7);
        assert_int_equal(ev.opcode, WS_OP_BINARY);
        assert_ptr_equal(ev.data, in.ptr + off + hl);
        off += (size_t)n;
        assert_int_equal(off, in.len);
        n = ws_parse(&p, in.ptr + off, 0, &ev);
        assert_int_equal(n, 0);
        assert_int_equal(ev.type, WS_EV_NONE);
        /* Nothing was assembled. */
        assert_null(p.msg.ptr);
        ws_parser_free(&p);
        pbuf_free(&in);
    }
}

static void test_masking_rules(void **state)
{
    (void)state;
    pbuf in = {0};
    /* Server: client frames must be masked. */
    frame(&in, &CLIENT, WS_OP_TEXT, true, false, "hi", 2);
    expect_error(&SERVER, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    /* Client: server frames must not be. */
    in.len = 0;
    frame(&in, &SERVER, WS_OP_TEXT, true, false, "hi", 2);
    expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    /* Control frames too. */
    in.len = 0;
    frame(&in, &CLIENT, WS_OP_PING, true, false, "", 0);
    expect_error(&SERVER, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    pbuf_free(&in);
}

static void test_reserved_bits_and_opcodes(void **state)
{
    (void)state;
    pbuf in = {0};
    static const int reserved[] = {3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(reserved); i++) {
        in.len = 0;
        frame(&in, &CLIENT, reserved[i], true, false, "x", 1);
        expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    }
    /* RSV2 and RSV3 always; RSV1 without an extension. */
    static const char *bits[] = {"\xa1\x00", "\x91\x00", "\xc1\x00", "\xf1\x00"};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bits); i++) {
        in.len = 0;
        raw(&in, bits[i], 2);
        expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    }
    /* With permessage-deflate: RSV2/3 still refused, RSV1 only on the
     * first frame of a data message. */
    pconf pmd = CLIENT;
    pmd.pmd = true;
    pmd.prm = (pmd_params){false, false, 15, 15};
    in.len = 0;
    RAW(&in, "\xa1\x00");
    expect_error(&pmd, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    in.len = 0;
    RAW(&in, "\xc9\x00"); /* ping with RSV1 */
    expect_error(&pmd, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    in.len = 0;
    RAW(&in, "\xc8\x00"); /* close with RSV1 */
    expect_error(&pmd, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    in.len = 0;
    RAW(&in, "\x01\x01"
             "a"
             "\xc0\x01"
             "b"); /* continuation with RSV1 */
    expect_error(&pmd, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    /* The checks fire on the first byte, before the rest arrives. */
    ws_parser p;
    ws_parser_init(&p, false);
    ws_event ev;
    uint8_t b0 = 0x83;
    assert_int_equal(ws_parse(&p, &b0, 1, &ev), PARLEY_EPROTO);
    assert_int_equal(p.close_code, WS_CLOSE_PROTOCOL);
    ws_parser_free(&p);
    pbuf_free(&in);
}

static void test_length_encoding_rules(void **state)
{
    (void)state;
    pbuf in = {0};
    /* 16-bit length for a value that fits in 7 bits. */
    RAW(&in, "\x82\x7e\x00\x7d");
    expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    in.len = 0;
    RAW(&in, "\x82\x7e\x00\x00");
    expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    /* 64-bit length for a value that fits in 16 bits. */
    in.len = 0;
    RAW(&in, "\x82\x7f\x00\x00\x00\x00\x00\x00\xff\xff");
    expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    in.len = 0;
    RAW(&in, "\x82\x7f\x00\x00\x00\x00\x00\x00\x00\x00");
    expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    /* Top bit of the 64-bit length. */
    in.len = 0;
    RAW(&in, "\x82\x7f\x80\x00\x00\x00\x00\x00\x00\x00");
    expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    in.len = 0;
    RAW(&in, "\x82\x7f\xff\xff\xff\xff\xff\xff\xff\xff");
    expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    /* Minimal 16-bit (126) and 64-bit (65536) lengths are accepted: see
     * test_lengths. Masked variant of a non-minimal length. */
    in.len = 0;
    RAW(&in, "\x82\xfe\x00\x05\x37\xfa\x21\x3d");
    expect_error(&SERVER, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    pbuf_free(&in);
}

static void test_control_rules(void **state)
{
    (void)state;
    pbuf in = {0};
    uint8_t big[126];
    memset(big, 'p', sizeof big);
    /* Over 125 bytes, in any encoding. */
    RAW(&in, "\x89\x7e\x00\x7e");
    raw(&in, (const char *)big, 126);
    expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    in.len = 0;
    RAW(&in, "\x8a\x7e");
    expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    in.len = 0;
    RAW(&in, "\x88\x7f");
    expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    /* Fragmented control frames. */
    in.len = 0;
    frame(&in, &SERVER, WS_OP_PING, false, false, "a", 1);
    expect_error(&SERVER, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    in.len = 0;
    RAW(&in, "\x08\x00");
    expect_error(&CLIENT, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    /* 125 bytes is the most, and ping/pong payloads come out unchanged. */
    for (int role = 0; role < 2; role++) {
        const pconf *pc = role ? &SERVER : &CLIENT;
        in.len = 0;
        frame(&in, pc, WS_OP_PING, true, false, big, 125);
        frame(&in, pc, WS_OP_PONG, true, false, "", 0);
        frame(&in, pc, WS_OP_PONG, true, false, "\xff\x00", 2); /* any bytes */
        want_ev w[] = {
            {WS_EV_PING, WS_OP_PING, big, 125, 0, 1, 0},
            {WS_EV_PONG, WS_OP_PONG, "", 0, 0, -1, 0},
            {WS_EV_PONG, WS_OP_PONG, "\xff\x00", 2, 0, 1, 0},
        };
        expect(pc, &in, w, 3, 0, 0);
    }
    pbuf_free(&in);
}

static void test_fragmentation(void **state)
{
    (void)state;
    for (int role = 0; role < 2; role++) {
        const pconf *pc = role ? &SERVER : &CLIENT;
        pbuf in = {0};
        /* RFC 6455 5.4: control frames between fragments. */
        frame(&in, pc, WS_OP_TEXT, false, false, "Hel", 3);
        frame(&in, pc, WS_OP_PING, true, false, "p1", 2);
        frame(&in, pc, WS_OP_CONT, false, false, "", 0);
        frame(&in, pc, WS_OP_PONG, true, false, "p2", 2);
        frame(&in, pc, WS_OP_CONT, true, false, "lo \xe2\x82\xac", 6);
        frame(&in, pc, WS_OP_BINARY, false, false, "\xac", 1);
        frame(&in, pc, WS_OP_CONT, true, false, "\x00\xff", 2);
        frame(&in, pc, WS_OP_TEXT, false, false, "\xe2\x82", 2); /* character split */
        frame(&in, pc, WS_OP_CONT, true, false, "\xac", 1);
        frame(&in, pc, WS_OP_TEXT, true, false, "after", 5);
        frame(&in, pc, WS_OP_TEXT, false, false, "", 0);
        frame(&in, pc, WS_OP_CONT, true, false, "", 0);
        want_ev w[] = {
            {WS_EV_PING, WS_OP_PING, "p1", 2, 0, 1, 0},
            {WS_EV_PONG, WS_OP_PONG, "p2", 2, 0, 1, 0},
            {WS_EV_MESSAGE, WS_OP_TEXT, "Hello \xe2\x82\xac", 9, 0, 0, 0},
            {WS_EV_MESSAGE, WS_OP_BINARY, "\xac\x00\xff", 3, 0, 0, 0},
            {WS_EV_MESSAGE, WS_OP_TEXT, "\xe2\x82\xac", 3, 0, 0, 0},
            {WS_EV_MESSAGE, WS_OP_TEXT, "after", 5, 0, 1, 0},
            {WS_EV_MESSAGE, WS_OP_TEXT, "", 0, 0, -1, 0},
        };
        expect(pc, &in, w, PARLEY_ARRAY_LEN(w), 0, 0);

        /* The message ends inside a character: the pings still come out,
         * then the message fails. */
        in.len = 0;
        frame(&in, pc, WS_OP_TEXT, false, false, "Hel", 3);
        frame(&in, pc, WS_OP_PING, true, false, "p1", 2);
        frame(&in, pc, WS_OP_CONT, false, false, "", 0);
        frame(&in, pc, WS_OP_PONG, true, false, "p2", 2);
        frame(&in, pc, WS_OP_CONT, true, false, "lo \xe2\x82", 5);
        expect(pc, &in, w, 2, PARLEY_EPROTO, WS_CLOSE_INVALID_DATA);
        pbuf_free(&in);
    }
}

static void test_fragmentation_rules(void **state)
{
    (void)state;
    pbuf in = {0};
    /* Continuation without a message. */
    frame(&in, &SERVER, WS_OP_CONT, true, false, "x", 1);
    expect_error(&SERVER, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    /* ... also right after a complete message. */
    in.len = 0;
    frame(&in, &SERVER, WS_OP_TEXT, true, false, "a", 1);
    frame(&in, &SERVER, WS_OP_CONT, true, false, "x", 1);
    want_ev a = {WS_EV_MESSAGE, WS_OP_TEXT, "a", 1, 0, 1, 0};
    expect(&SERVER, &in, &a, 1, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    /* A new data frame inside a fragmented message. */
    in.len = 0;
    frame(&in, &SERVER, WS_OP_TEXT, false, false, "a", 1);
    frame(&in, &SERVER, WS_OP_BINARY, true, false, "b", 1);
    expect_error(&SERVER, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    in.len = 0;
    frame(&in, &SERVER, WS_OP_BINARY, false, false, "a", 1);
    frame(&in, &SERVER, WS_OP_PING, true, false, "", 0);
    frame(&in, &SERVER, WS_OP_TEXT, false, false, "b", 1);
    want_ev ping = {WS_EV_PING, WS_OP_PING, "", 0, 0, -1, 0};
    expect(&SERVER, &in, &ping, 1, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
    pbuf_free(&in);
}

static void test_limits(void **state)
{
    (void)state;
    uint8_t pl[300];
    pattern(pl, sizeof pl, 3);
    pconf pc = SERVER;
    pc.max_frame = 100;
    pc.max_message = 250;
    pbuf in = {0};
    /* At the frame limit, and one over. */
    frame(&in, &pc, WS_OP_BINARY, true, false, pl, 100);
    want_ev w = {WS_EV_MESSAGE, WS_OP_BINARY, pl, 100, 0, 1, 0};
    expect(&pc, &in, &w, 1, 0, 0);
    in.len = 0;
    frame(&in, &pc, WS_OP_BINARY, true, false, pl, 101);
    expect_error(&pc, &in, PARLEY_ELIMIT, WS_CLOSE_TOO_BIG);
    /* Fragments adding up to the message limit, and one over. */
    in.len = 0;
    frame(&in, &pc, WS_OP_BINARY, false, false, pl, 100);
    frame(&in, &pc, WS_OP_CONT, false, false, pl + 100, 100);
    frame(&in, &pc, WS_OP_CONT, true, false, pl + 200, 50);
    w.data = pl;
    w.len = 250;
    w.in_place = 0;
    expect(&pc, &in, &w, 1, 0, 0);
    in.len = 0;
    frame(&in, &pc, WS_OP_BINARY, false, false, pl, 100);
    frame(&in, &pc, WS_OP_CONT, false, false, pl + 100, 100);
    frame(&in, &pc, WS_OP_CONT, true, false, pl + 200, 51);
    expect_error(&pc, &in, PARLEY_ELIMIT, WS_CLOSE_TOO_BIG);
    /* A single frame over the message limit. */
    pc.max_frame = 1000;
    in.len = 0;
    frame(&in, &pc, WS_OP_TEXT, true, false, pl, 251);
    expect_error(&pc, &in, PARLEY_ELIMIT, WS_CLOSE_TOO_BIG);

    /* From the header alone: no payload sent, nothing allocated. */
    ws_parser p;
    ws_parser_init(&p, false);
    p.max_frame = 1u << 20;
    uint8_t hdr[] = {0x02, 0x7f, 0, 0, 0, 0x01, 0, 0, 0, 0}; /* 4 GiB fragment */
    ws_event ev;
    assert_int_equal(ws_parse(&p, hdr, sizeof hdr, &ev), PARLEY_ELIMIT);
    assert_int_equal(p.close_code, WS_CLOSE_TOO_BIG);
    assert_int_equal(p.msg.cap, 0);
    ws_parser_free(&p);

    /* Continuation checked against what is already assembled. */
    ws_parser_init(&p, false);
    p.max_message = 1000;
    uint8_t f1[2 + 126 + 600];
    size_t h = ws_frame_header(f1, WS_OP_TEXT, false, false, 600, NULL);
    memset(f1 + h, 'a', 600);
    assert_int_equal(ws_parse(&p, f1, h + 600, &ev), (long)(h + 600));
    assert_int_equal(ev.type, WS_EV_NONE);
    size_t cap = p.msg.cap;
    uint8_t f2[4] = {0x80, 0x7e, 0x01, 0x91}; /* 401 more bytes, header only */
    assert_int_equal(ws_parse(&p, f2, sizeof f2, &ev), PARLEY_ELIMIT);
    assert_int_equal(p.close_code, WS_CLOSE_TOO_BIG);
    assert_int_equal(p.msg.cap, cap);
    ws_parser_free(&p);
    pbuf_free(&in);
}

static void test_text_utf8(void **state)
{
    (void)state;
    for (int role = 0; role < 2; role++) {
        const pconf *pc = role ? &SERVER : &CLIENT;
        pbuf in = {0};
        frame(&in, pc, WS_OP_TEXT, true, false, "ok \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5",
              14);
        want_ev w = {WS_EV_MESSAGE,
                     WS_OP_TEXT,
                     "ok \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5",
                     14,
                     0,
                     1,
                     0};
        expect(pc, &in, &w, 1, 0, 0);
        static const char *bad[] = {"\xff", "a\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                                    "abc\xe2\x82" /* truncated at the end */};
        for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++) {
            in.len = 0;
            frame(&in, pc, WS_OP_TEXT, true, false, bad[i], strlen(bad[i]));
            expect_error(pc, &in, PARLEY_EPROTO, WS_CLOSE_INVALID_DATA);
            /* The same bytes as binary are fine. */
            in.len = 0;
            frame(&in, pc, WS_OP_BINARY, true, false, bad[i], strlen(bad[i]));
            want_ev b = {WS_EV_MESSAGE, WS_OP_BINARY, bad[i], strlen(bad[i]), 0, 1, 0};
            expect(pc, &in, &b, 1, 0, 0);
        }
        /* Invalid in a later fragment. */
        in.len = 0;
        frame(&in, pc, WS_OP_TEXT, false, false, "fine", 4);
        frame(&in, pc, WS_OP_CONT, true, false, "\x80", 1);
        expect_error(pc, &in, PARLEY_EPROTO, WS_CLOSE_INVALID_DATA);
        /* Truncated at the end of a fragmented message. */
        in.len = 0;
        frame(&in, pc, WS_OP_TEXT, false, false, "fine", 4);
        frame(&in, pc, WS_OP_CONT, true, false, "\xf0\x9f", 2);
        expect_error(pc, &in, PARLEY_EPROTO, WS_CLOSE_INVALID_DATA);
        pbuf_free(&in);
    }
}

/* An invalid byte early in a huge text frame fails as soon as it arrives,
 * not when the frame is complete. */
static void test_utf8_fail_fast(void **state)
{
    (void)state;
    for (int role = 0; role < 2; role++) {
        bool server = role;
        size_t total = 1u << 20;
        uint8_t *buf = malloc(WS_MAX_HEADER + 16);
        size_t h = ws_frame_header(buf, WS_OP_TEXT, true, false, total, server ? KEY : NULL);
        uint8_t first[10] = {'a', 'b', 'c', 'd', 'e', 0xff, 'g', 'h', 'i', 'j'};
        memcpy(buf + h, first, 10);
        if (server) ws_mask(buf + h, 10, KEY, 0);

        /* Byte by byte: fine up to the bad byte, fails at it. */
        ws_parser p;
        ws_parser_init(&p, server);
        ws_event ev;
        for (size_t n = 0; n <= h + 5; n++) {
            assert_int_equal(ws_parse(&p, buf, n, &ev), 0);
            assert_int_equal(ev.type, WS_EV_NONE);
            if (n < h)
                assert_int_equal(ws_parser_frame_need(&p), 0);
            else
                assert_int_equal(ws_parser_frame_need(&p), h + total);
        }
        assert_int_equal(ws_parse(&p, buf, h + 6, &ev), PARLEY_EPROTO);
        assert_int_equal(p.close_code, WS_CLOSE_INVALID_DATA);
        ws_parser_free(&p);

        /* All ten at once. */
        memcpy(buf + h, first, 10);
        if (server) ws_mask(buf + h, 10, KEY, 0);
        ws_parser_init(&p, server);
        assert_int_equal(ws_parse(&p, buf, h + 10, &ev), PARLEY_EPROTO);
        assert_int_equal(p.close_code, WS_CLOSE_INVALID_DATA);
        ws_parser_free(&p);

        /* The same inside a continuation frame, with the character split
         * across the fragments. */
        ws_parser_init(&p, server);
        pbuf in = {0};
        assert_int_equal(
            ws_frame_append(&in, WS_OP_TEXT, false, false, "ab\xe2", 3, server ? KEY : NULL), 0);
        size_t f1 = in.len;
        uint8_t h2[WS_MAX_HEADER];
        size_t hl2 = ws_frame_header(h2, WS_OP_CONT, true, false, total, server ? KEY : NULL);
        pbuf_append(&in, h2, hl2);
        uint8_t rest[3] = {0x82, 0x41, 0x42}; /* E2 82 41: bad at 41 */
        if (server) ws_mask(rest, 3, KEY, 0);
        pbuf_append(&in, rest, 3);
        assert_int_equal(ws_parse(&p, in.ptr, f1 + hl2 + 1, &ev), (long)f1);
        assert_int_equal(ev.type, WS_EV_NONE);
        /* The caller drops the consumed frame and presents the rest. */
        pbuf_consume(&in, f1);
        assert_int_equal(ws_parse(&p, in.ptr, hl2 + 1, &ev), 0);
        assert_int_equal(ws_parse(&p, in.ptr, hl2 + 2, &ev), PARLEY_EPROTO);
        assert_int_equal(p.close_code, WS_CLOSE_INVALID_DATA);
        ws_parser_free(&p);
        pbuf_free(&in);
        free(buf);
    }
}

static void test_close_frames(void **state)
{
    (void)state;
    for (int role = 0; role < 2; role++) {
        const pconf *pc = role ? &SERVER : &CLIENT;
        pbuf in = {0};
        frame(&in, pc, WS_OP_CLOSE, true, false, "", 0);
        frame(&in, pc, WS_OP_TEXT, true, false, "ignored", 7);
        want_ev w = {WS_EV_CLOSE, WS_OP_CLOSE, "", 0, WS_CLOSE_NO_STATUS, -1, 0};
        expect(pc, &in, &w, 1, 0, 0);

        in.len = 0;
        frame(&in, pc, WS_OP_CLOSE, true, false,
              "\x03\xe8"
              "bye \xc3\xa9",
              8);
        w = (want_ev){WS_EV_CLOSE, WS_OP_CLOSE, "bye \xc3\xa9", 6, 1000, 1, 0};
        expect(pc, &in, &w, 1, 0, 0);

        static const struct {
            const char *pl;
            size_t len;
            uint16_t code;
        } cases[] = {
            {"\x03", 1, WS_CLOSE_PROTOCOL},                     /* 1 byte */
            {"\x03\xe7", 2, WS_CLOSE_PROTOCOL},                 /* 999 */
            {"\x03\xec", 2, WS_CLOSE_PROTOCOL},                 /* 1004 */
            {"\x03\xed", 2, WS_CLOSE_PROTOCOL},                 /* 1005 */
            {"\x03\xee", 2, WS_CLOSE_PROTOCOL},                 /* 1006 */
            {"\x03\xf7", 2, WS_CLOSE_PROTOCOL},                 /* 1015 */
            {"\x0b\xb7", 2, WS_CLOSE_PROTOCOL},                 /* 2999 */
            {"\x13\x88", 2, WS_CLOSE_PROTOCOL},                 /* 5000 */
            {"\x00\x00", 2, WS_CLOSE_PROTOCOL},                 /* 0 */
            {"\x03\xe8\xff", 3, WS_CLOSE_INVALID_DATA},         /* bad reason */
            {"\x03\xe8\xed\xa0\x80", 5, WS_CLOSE_INVALID_DATA}, /* surrogate */
            {"\x03\xe8\xc3", 3, WS_CLOSE_INVALID_DATA},         /* truncated */
        };
        for (size_t i = 0; i < PARLEY_ARRAY_LEN(cases); i++) {
            in.len = 0;
            frame(&in, pc, WS_OP_CLOSE, true, false, cases[i].pl, cases[i].len);
            expect_error(pc, &in, PARLEY_EPROTO, cases[i].code);
        }
        /* A 1-byte close followed by a byte that would complete a valid
         * code if the parser read past the payload. */
        in.len = 0;
        frame(&in, pc, WS_OP_CLOSE, true, false, "\x03", 1);
        RAW(&in, "\xe8");
        expect_error(pc, &in, PARLEY_EPROTO, WS_CLOSE_PROTOCOL);
        static const uint16_t good[] = {1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999};
        for (size_t i = 0; i < PARLEY_ARRAY_LEN(good); i++) {
            uint8_t pl[2] = {(uint8_t)(good[i] >> 8), (uint8_t)good[i]};
            in.len = 0;
            frame(&in, pc, WS_OP_CLOSE, true, false, pl, 2);
            w = (want_ev){WS_EV_CLOSE, WS_OP_CLOSE, "", 0, good[i], -1, 0};
            expect(pc, &in, &w, 1, 0, 0);
        }
        /* A close between fragments is delivered like any control. */
        in.len = 0;
        frame(&in, pc, WS_OP_TEXT, false, false, "part", 4);
        frame(&in, pc, WS_OP_CLOSE, true, false, "\x03\xe9", 2);
        w = (want_ev){WS_EV_CLOSE, WS_OP_CLOSE, "", 0, 1001, -1, 0};
        expect(pc, &in, &w, 1, 0, 0);
        pbuf_free(&in);
    }
}

static void test_close_payload_writer(void **state)
{
    (void)state;
    uint8_t out[125];
    assert_int_equal(ws_close_payload(out, 0, "ignored", 7), 0);
    assert_int_equal(ws_close_payload(out, 1000, NULL, 0), 2);
    assert_memory_equal(out, "\x03\xe8", 2);
    assert_int_equal(ws_close_payload(out, 1001, "bye", 3), 5);
    assert_memory_equal(out,
                        "\x03\xe9"
                        "bye",
                        5);
    /* 122 ASCII bytes and a 2-byte character: 124 bytes do not fit in
     * 123, and the cut falls back before the character. */
    char reason[200];
    memset(reason, 'r', 122);
    memcpy(reason + 122, "\xc3\xa9tail", 6);
    assert_int_equal(ws_close_payload(out, 4000, reason, 128), 2 + 122);
    assert_true(utf8_valid(out + 2, 122));
    /* 121 + the character fits exactly. */
    assert_int_equal(ws_close_payload(out, 4000, reason + 1, 123), 2 + 123);
    assert_memory_equal(out + 2 + 121, "\xc3\xa9", 2);
    /* A 4-byte character straddling the end. */
    memset(reason, 'x', 120);
    memcpy(reason + 120, "\xf0\x9f\x98\x80", 4);
    assert_int_equal(ws_close_payload(out, 1000, reason, 124), 2 + 120);
    /* Invalid reasons are left out rather than sent. */
    assert_int_equal(ws_close_payload(out, 1000, "\xff", 1), 2);
    /* What we write, we accept. */
    assert_int_equal(ws_close_payload(out, 4000, reason, 124), 122);
    pbuf in = {0};
    frame(&in, &CLIENT, WS_OP_CLOSE, true, false, out, 122);
    want_ev w = {WS_EV_CLOSE, WS_OP_CLOSE, reason, 120, 4000, 1, 0};
    expect(&CLIENT, &in, &w, 1, 0, 0);
    pbuf_free(&in);
}

static void test_frame_need_and_trim(void **state)
{
    (void)state;
    ws_parser p;
    ws_parser_init(&p, false);
    assert_int_equal(ws_parser_frame_need(&p), 0);
    uint8_t hdr[WS_MAX_HEADER];
    size_t h = ws_frame_header(hdr, WS_OP_BINARY, false, false, 100000, NULL);
    ws_event ev;
    assert_int_equal(ws_parse(&p, hdr, h - 1, &ev), 0);
    assert_int_equal(ws_parser_frame_need(&p), 0); /* header incomplete */
    uint8_t *buf = malloc(h + 100000);
    memcpy(buf, hdr, h);
    memset(buf + h, 'z', 100000);
    assert_int_equal(ws_parse(&p, buf, h + 10, &ev), 0);
    assert_int_equal(ws_parser_frame_need(&p), h + 100000);
    /* A fragment in progress keeps its buffer. */
    assert_int_equal(ws_parse(&p, buf, h + 100000, &ev), (long)(h + 100000));
    assert_int_equal(ev.type, WS_EV_NONE);
    assert_int_equal(ws_parser_frame_need(&p), 0);
    ws_parser_trim(&p, 0);
    assert_non_null(p.msg.ptr);
    assert_int_equal(p.msg.len, 100000);
    uint8_t last[2] = {0x80, 0x00};
    assert_int_equal(ws_parse(&p, last, 2, &ev), 2);
    assert_int_equal(ev.type, WS_EV_MESSAGE);
    assert_int_equal(ev.len, 100000);
    assert_ptr_equal(ev.data, p.msg.ptr);
    /* Idle now: a big buffer goes, a small one stays. */
    ws_parser_trim(&p, 1u << 20);
    assert_non_null(p.msg.ptr);
    ws_parser_trim(&p, 4096);
    assert_null(p.msg.ptr);
    assert_int_equal(p.msg.cap, 0);
    /* And the parser goes on working. */
    uint8_t msg2[] = {0x01, 0x02, 'h', 'i', 0x80, 0x01, '!'};
    assert_int_equal(ws_parse(&p, msg2, sizeof msg2, &ev), (long)sizeof msg2);
    assert_int_equal(ev.len, 3);
    assert_memory_equal(ev.data, "hi!", 3);
    ws_parser_free(&p);
    free(buf);
}

/* Several frames in one buffer: one event per call. */
static void test_one_event_per_call(void **state)
{
    (void)state;
    pbuf in = {0};
    frame(&in, &CLIENT, WS_OP_TEXT, true, false, "a", 1);
    frame(&in, &CLIENT, WS_OP_TEXT, false, false, "b", 1);
    frame(&in, &CLIENT, WS_OP_CONT, true, false, "c", 1);
    frame(&in, &CLIENT, WS_OP_PING, true, false, "", 0);
    ws_parser p;
    ws_parser_init(&p, false);
    ws_event ev;
    assert_int_equal(ws_parse(&p, in.ptr, in.len, &ev), 3);
    assert_int_equal(ev.type, WS_EV_MESSAGE);
    /* Fragments without an event are consumed in the same call. */
    assert_int_equal(ws_parse(&p, in.ptr + 3, in.len - 3, &ev), 6);
    assert_int_equal(ev.type, WS_EV_MESSAGE);
    assert_int_equal(ev.len, 2);
    assert_int_equal(ws_parse(&p, in.ptr + 9, in.len - 9, &ev), 2);
    assert_int_equal(ev.type, WS_EV_PING);
    /* A lone first fragment is consumed with no event. */
    uint8_t frag[] = {0x02, 0x01, 'x', 0x80};
    assert_int_equal(ws_parse(&p, frag, sizeof frag, &ev), 3);
    assert_int_equal(ev.type, WS_EV_NONE);
    ws_parser_free(&p);
    pbuf_free(&in);
}

/* Compression. */

static pconf pmd_conf(bool server, bool no_context)
{
    pconf pc = {.server = server, .pmd = true};
    pc.prm = (pmd_params){no_context, no_context, 15, 15};
    return pc;
}

/* Writer -> parser round trips with permessage-deflate, context takeover
 * on and off, over several messages. */
#define KOSME "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"

static void test_compressed_round_trip(void **state)
{
    (void)state;
    static const char *texts[] = {
        "The quick brown fox jumps over the lazy dog. The quick brown fox jumps.",
        "short",
        "",
        "The quick brown fox jumps over the lazy dog. The quick brown fox jumps.",
        KOSME " " KOSME " " KOSME " " KOSME,
    };
    uint8_t *big = malloc(200000);
    pattern(big, 200000, 5);
    for (int role = 0; role < 2; role++)
        for (int nc = 0; nc < 2; nc++) {
            bool server_parses = role;
            pconf pc = pmd_conf(server_parses, nc);
            pmd_config cfg;
            pmd_config_init(&cfg);
            /* The writer is the peer of the parser. */
            pmd_stream *d = pmd_deflater_new(&pc.prm, &cfg, !server_parses);
            const uint8_t *mask = server_parses ? KEY : NULL;
            pbuf in = {0};
            want_ev w[8];
            size_t nw = 0;
            for (size_t i = 0; i < PARLEY_ARRAY_LEN(texts); i++) {
                size_t n = strlen(texts[i]);
                assert_int_equal(ws_message_append(&in, d, 10, WS_OP_TEXT, texts[i], n, mask), 0);
                w[nw++] =
                    (want_ev){WS_EV_MESSAGE, WS_OP_TEXT, texts[i], n, 0, n < 10 ? 1 : 0, n >= 10};
            }
            assert_int_equal(ws_message_append(&in, d, 10, WS_OP_BINARY, big, 200000, mask), 0);
            w[nw++] = (want_ev){WS_EV_MESSAGE, WS_OP_BINARY, big, 200000, 0, 0, 1};
            /* A message below the threshold goes out plain. */
            assert_int_equal(ws_message_append(&in, d, 10, WS_OP_BINARY, "tiny", 4, mask), 0);
            w[nw++] = (want_ev){WS_EV_MESSAGE, WS_OP_BINARY, "tiny", 4, 0, 1, 0};
            assert_int_equal(
                ws_message_append(&in, d, 10, WS_OP_TEXT, texts[0], strlen(texts[0]), mask), 0);
            w[nw++] = (want_ev){WS_EV_MESSAGE, WS_OP_TEXT, texts[0], strlen(texts[0]), 0, 0, 1};
            expect(&pc, &in, w, nw, 0, 0);
            pbuf_free(&in);
            pmd_stream_free(d);
        }
    /* No deflater: a plain frame whatever the size. */
    pbuf a = {0}, b = {0};
    assert_int_equal(ws_message_append(&a, NULL, 0, WS_OP_BINARY, big, 1000, KEY), 0);
    assert_int_equal(ws_frame_append(&b, WS_OP_BINARY, true, false, big, 1000, KEY), 0);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.ptr, b.ptr, a.len);
    pbuf_free(&a);
    pbuf_free(&b);
    free(big);
}

/* A compressed message split over several frames (RSV1 on the first
 * only), with a ping in between. */
static void test_compressed_fragmented(void **state)
{
    (void)state;
    for (int role = 0; role < 2; role++)
        for (int nc = 0; nc < 2; nc++) {
            pconf pc = pmd_conf(role, nc);
            pmd_stream *d = pmd_deflater_new(&pc.prm, NULL, !pc.server);
            pbuf in = {0};
            want_ev w[10];
            size_t nw = 0;
            static char text[3000];
            for (size_t i = 0; i < sizeof text - 1; i++) text[i] = "lorem ipsum \xc3\xa9 "[i % 15];
            text[sizeof text - 1] = 0;
            for (int m = 0; m < 3; m++) {
                pbuf c = {0};
                assert_int_equal(pmd_deflate_message(d, (const uint8_t *)text, strlen(text), &c),
                                 0);
                size_t parts = (size_t)m + 2, off = 0;
                for (size_t k = 0; k < parts; k++) {
                    size_t n = k + 1 == parts ? c.len - off : c.len / parts;
                    frame(&in, &pc, k == 0 ? WS_OP_TEXT : WS_OP_CONT, k + 1 == parts, k == 0,
                          c.ptr + off, n);
                    off += n;
                    if (k == 0) {
                        frame(&in, &pc, WS_OP_PING, true, false, "mid", 3);
                        w[nw++] = (want_ev){WS_EV_PING, WS_OP_PING, "mid", 3, 0, 1, 0};
                    }
                }
                w[nw++] = (want_ev){WS_EV_MESSAGE, WS_OP_TEXT, text, strlen(text), 0, 0, 1};
                pbuf_free(&c);
            }
            /* An empty compressed message ("00") and an all-empty one. */
            frame(&in, &pc, WS_OP_BINARY, true, true, "\x00", 1);
            w[nw++] = (want_ev){WS_EV_MESSAGE, WS_OP_BINARY, "", 0, 0, -1, 1};
            expect(&pc, &in, w, nw, 0, 0);
            pbuf_free(&in);
            pmd_stream_free(d);
        }
}

static void test_compressed_errors(void **state)
{
    (void)state;
    pconf pc = pmd_conf(false, false);
    pbuf in = {0};
    /* Corrupt stream. */
    frame(&in, &pc, WS_OP_BINARY, true, true, "\xff\xff\xff", 3);
    expect_error(&pc, &in, PARLEY_EPROTO, WS_CLOSE_INVALID_DATA);
    /* Inflated text that is not UTF-8 (the stored block holds FF). */
    in.len = 0;
    frame(&in, &pc, WS_OP_TEXT, true, true, "\x00\x01\x00\xfe\xff\xff", 6);
    expect_error(&pc, &in, PARLEY_EPROTO, WS_CLOSE_INVALID_DATA);
    /* ... and the same as binary is fine. */
    in.len = 0;
    frame(&in, &pc, WS_OP_BINARY, true, true, "\x00\x01\x00\xfe\xff\xff", 6);
    want_ev w = {WS_EV_MESSAGE, WS_OP_BINARY, "\xff", 1, 0, 0, 1};
    expect(&pc, &in, &w, 1, 0, 0);
    /* Inflated text ending inside a character. */
    in.len = 0;
    frame(&in, &pc, WS_OP_TEXT, true, true, "\x00\x01\x00\xfe\xff\xc3", 6);
    expect_error(&pc, &in, PARLEY_EPROTO, WS_CLOSE_INVALID_DATA);

    /* Over max_message once inflated, though small on the wire. */
    uint8_t *zeros = calloc(1, 1u << 20);
    pmd_stream *d = pmd_deflater_new(&pc.prm, NULL, true);
    pbuf c = {0};
    assert_int_equal(pmd_deflate_message(d, zeros, 1u << 20, &c), 0);
    assert_true(c.len < 5000);
    in.len = 0;
    frame(&in, &pc, WS_OP_BINARY, true, true, c.ptr, c.len);
    pconf small = pc;
    small.max_message = 100000;
    expect_error(&small, &in, PARLEY_ELIMIT, WS_CLOSE_TOO_BIG);
    /* Exactly at the limit passes. */
    small.max_message = 1u << 20;
    w = (want_ev){WS_EV_MESSAGE, WS_OP_BINARY, zeros, 1u << 20, 0, 0, 1};
    expect(&small, &in, &w, 1, 0, 0);
    /* The wire size of a compressed message is not held against
     * max_message (only max_frame), its inflated size is. */
    small.max_message = (1u << 20) + 1;
    small.max_frame = c.len;
    expect(&small, &in, &w, 1, 0, 0);
    small.max_frame = c.len - 1;
    expect_error(&small, &in, PARLEY_ELIMIT, WS_CLOSE_TOO_BIG);
    pbuf_free(&c);
    pmd_stream_free(d);
    free(zeros);

    /* Compressed text failing fast: the first fragment already inflates
     * to invalid UTF-8. */
    d = pmd_deflater_new(&pc.prm, NULL, true);
    static char text[2000];
    text[0] = (char)0xff;
    for (size_t i = 1; i < sizeof text; i++) text[i] = (char)('a' + i % 26);
    assert_int_equal(pmd_deflate_message(d, (const uint8_t *)text, sizeof text, &c), 0);
    in.len = 0;
    frame(&in, &pc, WS_OP_TEXT, false, true, c.ptr, c.len / 2);
    expect_error(&pc, &in, PARLEY_EPROTO, WS_CLOSE_INVALID_DATA);
    pbuf_free(&c);
    pmd_stream_free(d);
    pbuf_free(&in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_close_code_valid),
        cmocka_unit_test(test_init_defaults),
        cmocka_unit_test(test_header_writer),
        cmocka_unit_test(test_mask),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_zero_copy),
        cmocka_unit_test(test_masking_rules),
        cmocka_unit_test(test_reserved_bits_and_opcodes),
        cmocka_unit_test(test_length_encoding_rules),
        cmocka_unit_test(test_control_rules),
        cmocka_unit_test(test_fragmentation),
        cmocka_unit_test(test_fragmentation_rules),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_text_utf8),
        cmocka_unit_test(test_utf8_fail_fast),
        cmocka_unit_test(test_close_frames),
        cmocka_unit_test(test_close_payload_writer),
        cmocka_unit_test(test_frame_need_and_trim),
        cmocka_unit_test(test_one_event_per_call),
        cmocka_unit_test(test_compressed_round_trip),
        cmocka_unit_test(test_compressed_fragmented),
        cmocka_unit_test(test_compressed_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
