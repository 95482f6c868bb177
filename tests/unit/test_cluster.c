/*
 * Unit tests of the cluster pieces: the MessagePack envelope codec against
 * bytes captured from Redis while @socket.io/redis-adapter 8.3.0 and
 * @socket.io/redis-emitter 5.1.0 (notepack.io 3.0.1) published (socket.io
 * 4.8.4, Node 18+: io.emit, io.to().except().volatile.emit, io.to([..]),
 * new Emitter(redis).to('room1').emit), every truncation of them, random
 * corruption, limits, byte-exact encoding; the RESP reader fed whole, byte
 * by byte and in random pieces; redis:// URLs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chop.h"
#include "client_helpers.h"
#include "cluster/adapter.h"
#include "cluster/envelope.h"
#include "cluster/redis_conn.h"
#include "cluster/resp.h"
#include "codec/json.h"
#include "parley/parley.h"

/* Hex of the captured messages (channel in the comment). */
/* socket.io#/# : io.emit('hello', 1, 'two', Buffer.from([0xde,0xad,0xbe,0xef])) */
static const char V_HELLO[] =
    "93a649716e46414f83a47479706502a46461746194a568656c6c6f01a374776fc404deadbeefa36e7370a12f83a572"
    "6f6f6d7390a665786365707490a5666c61677380";
/* socket.io#/#room1# : io.to('room1').except(['sock-x','r9']).volatile.emit('vol', {...}) */
static const char V_VOL[] =
    "93a649716e46414f83a47479706502a46461746192a3766f6c82a16198cb3ff8000000000000fdc0c3cd012cd1ff38"
    "ce00011170cf000000012a05f200a173a5c3a9e29c93a36e7370a12f83a5726f6f6d7391a5726f6f6d31a665786365"
    "707492a6736f636b2d78a27239a5666c61677381a8766f6c6174696c65c3";
/* socket.io#/# : io.to(['r1','r2']).compress(false).emit('multi', [], {}) */
static const char V_MULTI[] =
    "93a649716e46414f83a47479706502a46461746193a56d756c74699080a36e7370a12f83a5726f6f6d7392a27231a2"
    "7232a665786365707490a5666c61677381a8636f6d7072657373c2";
/* socket.io#/#room1# : emitter.to('room1').emit('from-emitter', Buffer.alloc(300, 1), 'x' * 40);
 * the bin payload is filled in by unhex_emitter. */
static const char V_EMIT_HEAD[] =
    "93a7656d697474657283a47479706502a46461746193ac66726f6d2d656d6974746572c5012c";
static const char V_EMIT_TAIL[] =
    "d92878787878787878787878787878787878787878787878787878787878787878787878787878787878a36e7370a1"
    "2f83a5726f6f6d7391a5726f6f6d31a5666c61677380a665786365707490";

/* socket.io-request#/# : io.to('room1').timeout(100).emit('ask', 1, Buffer.from([7]), cb)
 * (RedisAdapter.broadcastWithAck: a MessagePack map, type 7) */
static const char V_BCAST_ACK[] =
    "85a3756964a66e3961675433a9726571756573744964a66c726a715131a47479706507a67061636b657483a4747970"
    "6502a46461746193a361736b01c40107a36e7370a12fa46f70747383a5726f6f6d7391a5726f6f6d31a66578636570"
    "7490a5666c61677381a774696d656f757464";

/* Allocations by the library and this file (linked with --wrap; see
 * tests/CMakeLists.txt). */
void *__wrap_malloc(size_t n);
void *__real_malloc(size_t n);
void *__wrap_calloc(size_t k, size_t n);
void *__real_calloc(size_t k, size_t n);
void *__wrap_realloc(void *p, size_t n);
void *__real_realloc(void *p, size_t n);
static size_t alloc_calls;
void *__wrap_malloc(size_t n)
{
    alloc_calls++;
    return __real_malloc(n);
}
void *__wrap_calloc(size_t k, size_t n)
{
    alloc_calls++;
    return __real_calloc(k, n);
}
void *__wrap_realloc(void *p, size_t n)
{
    alloc_calls++;
    return __real_realloc(p, n);
}

static size_t unhex(const char *h, uint8_t *out)
{
    size_t n = strlen(h) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    return n;
}

static size_t unhex_emitter(uint8_t *out)
{
    size_t n = unhex(V_EMIT_HEAD, out);
    memset(out + n, 1, 300);
    n += 300;
    return n + unhex(V_EMIT_TAIL, out + n);
}

static uint8_t *find(uint8_t *hay, size_t n, const char *needle, size_t k)
{
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0) return hay + i;
    return NULL;
}

static penv_dec dec;

static int setup(void **state)
{
    (void)state;
    return penv_dec_init(&dec, NULL);
}

static int teardown(void **state)
{
    (void)state;
    penv_dec_free(&dec);
    return 0;
}

static void test_node_hello(void **state)
{
    (void)state;
    uint8_t m[512];
    size_t n = unhex(V_HELLO, m);
    penv_msg e;
    assert_int_equal(penv_decode(&dec, m, n, &e, NULL), 0);
    assert_string_equal(e.uid, "IqnFAO");
    assert_string_equal(e.nsp, "/");
    assert_string_equal(e.event, "hello");
    assert_string_equal(e.args, "[1,\"two\",{\"_placeholder\":true,\"num\":0}]");
    assert_int_equal(e.args_len, strlen(e.args));
    assert_int_equal(e.nbins, 1);
    assert_int_equal(e.bins[0].len, 4);
    assert_memory_equal(e.bins[0].data, "\xde\xad\xbe\xef", 4);
    assert_int_equal(e.nrooms, 0);
    assert_int_equal(e.nexcept, 0);
    assert_false(e.volatile_);
    assert_false(e.local);
}

static void test_node_volatile_room_except(void **state)
{
    (void)state;
    uint8_t m[512];
    size_t n = unhex(V_VOL, m);
    penv_msg e;
    assert_int_equal(penv_decode(&dec, m, n, &e, NULL), 0);
    assert_string_equal(e.event, "vol");
    assert_string_equal(
        e.args,
        "[{\"a\":[1.5,-3,null,true,300,-200,70000,5000000000],\"s\":\"\xc3\xa9\xe2\x9c\x93\"}]");
    assert_int_equal(e.nrooms, 1);
    assert_string_equal(e.rooms[0], "room1");
    assert_int_equal(e.nexcept, 2);
    assert_string_equal(e.except[0], "sock-x");
    assert_string_equal(e.except[1], "r9");
    assert_true(e.volatile_);
    assert_int_equal(e.nbins, 0);
}

static void test_node_multi_and_emitter(void **state)
{
    (void)state;
    uint8_t m[1024];
    size_t n = unhex(V_MULTI, m);
    penv_msg e;
    assert_int_equal(penv_decode(&dec, m, n, &e, NULL), 0);
    assert_string_equal(e.event, "multi");
    assert_string_equal(e.args, "[[],{}]");
    assert_int_equal(e.nrooms, 2);
    assert_string_equal(e.rooms[1], "r2");
    assert_false(e.volatile_);

    n = unhex_emitter(m);
    assert_int_equal(penv_decode(&dec, m, n, &e, NULL), 0);
    assert_string_equal(e.uid, "emitter");
    assert_string_equal(e.event, "from-emitter");
    assert_int_equal(e.nbins, 1);
    assert_int_equal(e.bins[0].len, 300);
    assert_int_equal(((const uint8_t *)e.bins[0].data)[299], 1);
    assert_int_equal(e.nrooms, 1);
    assert_string_equal(e.rooms[0], "room1");
    char want[128];
    snprintf(want, sizeof want, "[{\"_placeholder\":true,\"num\":0},\"%s\"]",
             "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    assert_string_equal(e.args, want);
}

static void test_node_broadcast_with_ack(void **state)
{
    (void)state;
    uint8_t m[512];
    size_t n = unhex(V_BCAST_ACK, m);
    penv_msg e;
    const char *why = NULL;
    assert_int_equal(penv_decode_request(&dec, m, n, &e, &why), 0);
    assert_string_equal(e.uid, "n9agT3");
    assert_string_equal(e.request_id, "lrjqQ1");
    assert_string_equal(e.event, "ask");
    assert_string_equal(e.args, "[1,{\"_placeholder\":true,\"num\":0}]");
    assert_int_equal(e.nbins, 1);
    assert_int_equal(e.nrooms, 1);
    assert_string_equal(e.rooms[0], "room1");
    assert_int_equal(e.timeout_ms, 100);
    /* Not the plain envelope, and every prefix refused. */
    assert_int_equal(penv_decode(&dec, m, n, &e, &why), PARLEY_EPROTO);
    for (size_t cut = 0; cut < n; cut++) {
        uint8_t *p = malloc(cut ? cut : 1);
        memcpy(p, m, cut);
        assert_true(penv_decode_request(&dec, p, cut, &e, &why) < 0);
        free(p);
    }
    /* A type other than 7. */
    uint8_t *t = find(m, n, "\xa4type\x07", 6);
    assert_non_null(t);
    t[5] = 6;
    assert_int_equal(penv_decode_request(&dec, m, n, &e, &why), PARLEY_EPROTO);
}

/* Every proper prefix is refused; nothing crashes (ASan watches). */
static void test_truncated(void **state)
{
    (void)state;
    const char *v[] = {V_HELLO, V_VOL, V_MULTI, NULL};
    uint8_t m[1024];
    for (int k = 0; k < 4; k++) {
        size_t n = v[k] ? unhex(v[k], m) : unhex_emitter(m);
        for (size_t cut = 0; cut < n; cut++) {
            /* A copy of exactly `cut` bytes so ASan sees any overread. */
            uint8_t *p = malloc(cut ? cut : 1);
            memcpy(p, m, cut);
            penv_msg e;
            const char *why = NULL;
            int rc = penv_decode(&dec, p, cut, &e, &why);
            assert_true(rc < 0);
            assert_non_null(why);
            assert_null(e.event);
            free(p);
        }
    }
}

/* Random corruption: whatever is accepted is well-formed. */
static void test_corrupted(void **state)
{
    (void)state;
    uint64_t rng = chop_seed();
    uint8_t m[1024], c[1024];
    const char *v[] = {V_HELLO, V_VOL, V_MULTI, NULL};
    for (int round = 0; round < 20000; round++) {
        int k = (int)(test_rand(&rng) % 4);
        size_t n = v[k] ? unhex(v[k], m) : unhex_emitter(m);
        memcpy(c, m, n);
        int flips = 1 + (int)(test_rand(&rng) % 4);
        for (int f = 0; f < flips; f++) c[test_rand(&rng) % n] = (uint8_t)test_rand(&rng);
        penv_msg e;
        if (penv_decode(&dec, c, n, &e, NULL) == 0) {
            json_val a;
            assert_int_equal(json_parse(e.args, e.args_len, 64, &a, NULL), 0);
            assert_int_equal(a.type, JSON_ARRAY);
            assert_true(e.nbins <= dec.lim.max_bins);
            assert_true(e.nrooms <= dec.lim.max_rooms);
            assert_true(e.event[0] != 0);
            for (size_t i = 0; i < e.nrooms; i++) assert_true(strlen(e.rooms[i]) <= 256);
        }
    }
}

static void test_garbage_and_limits(void **state)
{
    (void)state;
    penv_msg e;
    const char *why;
    /* Not MessagePack, not an array, wrong types. */
    assert_int_equal(penv_decode(&dec, (const uint8_t *)"hello", 5, &e, &why), PARLEY_EPROTO);
    assert_int_equal(penv_decode(&dec, (const uint8_t *)"", 0, &e, &why), PARLEY_EPROTO);
    static const uint8_t huge_array[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(penv_decode(&dec, huge_array, sizeof huge_array, &e, &why), PARLEY_EPROTO);
    static const uint8_t huge_str[] = {0x93, 0xdb, 0x7f, 0xff, 0xff, 0xff, 'a'};
    assert_int_equal(penv_decode(&dec, huge_str, sizeof huge_str, &e, &why), PARLEY_EPROTO);
    /* Trailing bytes. */
    uint8_t m[1024];
    size_t n = unhex(V_HELLO, m);
    m[n] = 0xc0;
    assert_int_equal(penv_decode(&dec, m, n + 1, &e, &why), PARLEY_EPROTO);
    assert_string_equal(why, "bytes after the message");
    /* Invalid UTF-8 in an argument: "two" -> "t\xff" + "o". */
    n = unhex(V_HELLO, m);
    uint8_t *two = find(m, n, "two", 3);
    assert_non_null(two);
    two[1] = 0xff;
    assert_int_equal(penv_decode(&dec, m, n, &e, &why), PARLEY_EPROTO);
    assert_string_equal(why, "invalid UTF-8");
    /* A packet type other than EVENT (an ACK, 3). */
    n = unhex(V_HELLO, m);
    uint8_t *type = find(m, n, "\xa4type\x02", 6);
    type[5] = 3;
    assert_int_equal(penv_decode(&dec, m, n, &e, &why), PARLEY_EPROTO);

    /* Limits: max_message, rooms, nesting, binaries. */
    penv_limits lim;
    penv_limits_init(&lim);
    lim.max_message = 50;
    lim.max_rooms = 1;
    lim.max_depth = 3;
    lim.max_bins = 0;
    penv_dec small;
    assert_int_equal(penv_dec_init(&small, &lim), 0);
    n = unhex(V_HELLO, m);
    assert_int_equal(penv_decode(&small, m, n, &e, &why), PARLEY_ELIMIT);
    assert_string_equal(why, "message too large");
    small.lim.max_message = 100000;
    assert_int_equal(penv_decode(&small, m, n, &e, &why), PARLEY_ELIMIT);
    assert_string_equal(why, "too many binaries");
    n = unhex(V_MULTI, m);
    assert_int_equal(penv_decode(&small, m, n, &e, &why), PARLEY_ELIMIT);
    assert_string_equal(why, "too many rooms");
    n = unhex(V_VOL, m);
    assert_int_equal(penv_decode(&small, m, n, &e, &why), PARLEY_ELIMIT);
    assert_string_equal(why, "nesting");
    penv_dec_free(&small);

    /* Deep nesting: [uid, {type:2, data:["e", [[[[...]]]]]}] */
    pbuf b = {0};
    penv_put_array(&b, 2);
    penv_put_str(&b, "u", 1);
    penv_put_map(&b, 2);
    penv_put_str(&b, "type", 4);
    penv_put_int(&b, 2);
    penv_put_str(&b, "data", 4);
    penv_put_array(&b, 2);
    penv_put_str(&b, "e", 1);
    for (int i = 0; i < 10000; i++) penv_put_array(&b, 1);
    penv_put_int(&b, 1);
    assert_int_equal(penv_decode(&dec, b.ptr, b.len, &e, &why), PARLEY_ELIMIT);
    assert_string_equal(why, "nesting");
    pbuf_free(&b);
}

/* Element counts that claim far more than the message holds: msgpack-c's
 * unpacker reserves memory for the claimed count before reading the
 * elements (dd 05 f5 e1 00 01, an array32 of 100,000,000 elements, made it
 * reserve ~2.4 GB; dd ff ff ff ff failed with NOMEM), which is why the
 * decoder is our own. Ours refuses them from the count, allocating
 * nothing, at the top and inside the envelope, in both decoders. */
static void test_hostile_counts(void **state)
{
    (void)state;
    static const uint8_t a100m[] = {0xdd, 0x05, 0xf5, 0xe1, 0x00, 0x01};
    static const uint8_t a4g[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    static const uint8_t m4g[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
    /* [uid, {type: 2, data: <array32 of 100,000,000>}] */
    static const uint8_t inner[] = {0x92, 0xa1, 'u',  0x82, 0xa4, 't',  'y',  'p',  'e',  0x02,
                                    0xa4, 'd',  'a',  't',  'a',  0xdd, 0x05, 0xf5, 0xe1, 0x00,
                                    0x01};
    /* The decoder's buffers have grown on a real message first. */
    uint8_t m[512];
    size_t n = unhex(V_HELLO, m);
    penv_msg e;
    assert_int_equal(penv_decode(&dec, m, n, &e, NULL), 0);
    size_t json_cap = dec.json.cap, strs_cap = dec.strs.cap;
    struct {
        const uint8_t *p;
        size_t n;
    } in[] = {{a100m, sizeof a100m}, {a4g, sizeof a4g}, {m4g, sizeof m4g}, {inner, sizeof inner}};
    for (size_t i = 0; i < sizeof in / sizeof *in; i++) {
        const char *why = NULL;
        alloc_calls = 0;
        int rc1 = penv_decode(&dec, in[i].p, in[i].n, &e, &why);
        int rc2 = penv_decode_request(&dec, in[i].p, in[i].n, &e, NULL);
        size_t calls = alloc_calls;
        assert_int_equal(calls, 0);
        assert_int_equal(rc1, PARLEY_EPROTO);
        assert_true(rc2 < 0);
        assert_non_null(why);
        assert_string_equal(why, "count past the end");
        assert_null(e.event);
        assert_int_equal(dec.json.cap, json_cap);
        assert_int_equal(dec.strs.cap, strs_cap);
    }
    /* (The counting works: a decoder's set-up allocates.) */
    penv_dec tmp;
    alloc_calls = 0;
    assert_int_equal(penv_dec_init(&tmp, NULL), 0);
    assert_true(alloc_calls > 0);
    penv_dec_free(&tmp);
    /* And a real message still decodes without allocating. */
    alloc_calls = 0;
    assert_int_equal(penv_decode(&dec, m, n, &e, NULL), 0);
    assert_int_equal(alloc_calls, 0);
}

/* Our encoder writes what the Node adapter wrote, byte for byte. */
static void test_encode_exact(void **state)
{
    (void)state;
    pbuf out = {0}, scratch = {0};
    uint8_t m[1024];
    const char *args1 = "[1,\"two\",{\"_placeholder\":true,\"num\":0}]";
    json_val a;
    assert_int_equal(json_parse(args1, strlen(args1), 32, &a, NULL), 0);
    parley_bin bin = {"\xde\xad\xbe\xef", 4};
    penv_out o = {
        .uid = "IqnFAO", .nsp = "/", .event = "hello", .args = &a, .bins = &bin, .nbins = 1};
    assert_int_equal(penv_encode(&out, &scratch, &o, 32), 0);
    size_t n = unhex(V_HELLO, m);
    assert_int_equal(out.len, n);
    assert_memory_equal(out.ptr, m, n);

    const char *args2 =
        "[{\"a\":[1.5,-3,null,true,300,-200,70000,5e9],\"s\":\"\\u00e9\xe2\x9c\x93\"}]";
    assert_int_equal(json_parse(args2, strlen(args2), 32, &a, NULL), 0);
    const char *rooms[] = {"room1"}, *except[] = {"sock-x"};
    penv_out o2 = {.uid = "IqnFAO",
                   .nsp = "/",
                   .event = "vol",
                   .args = &a,
                   .rooms = rooms,
                   .nrooms = 1,
                   .except = except,
                   .nexcept = 1,
                   .except_id = "r9",
                   .volatile_ = true};
    out.len = 0;
    assert_int_equal(penv_encode(&out, &scratch, &o2, 32), 0);
    n = unhex(V_VOL, m);
    assert_int_equal(out.len, n);
    assert_memory_equal(out.ptr, m, n);

    /* And it decodes back. */
    penv_msg e;
    assert_int_equal(penv_decode(&dec, out.ptr, out.len, &e, NULL), 0);
    assert_string_equal(e.except[1], "r9");
    /* A placeholder without its attachment is sent as the object it is. */
    const char *args3 = "[{\"_placeholder\":true,\"num\":3}]";
    assert_int_equal(json_parse(args3, strlen(args3), 32, &a, NULL), 0);
    penv_out o3 = {.uid = "u", .nsp = "/x", .event = "e", .args = &a};
    out.len = 0;
    assert_int_equal(penv_encode(&out, &scratch, &o3, 32), 0);
    assert_int_equal(penv_decode(&dec, out.ptr, out.len, &e, NULL), 0);
    assert_string_equal(e.nsp, "/x");
    assert_string_equal(e.args, "[{\"_placeholder\":true,\"num\":3}]");
    pbuf_free(&out);
    pbuf_free(&scratch);
}

/* ---- RESP ---- */

/* Feeds in[0..n) to rd in pieces as ch says, checking every reply with
 * check(seen, reply); returns the first error (or 0) and counts replies. */
static int resp_run(presp_reader *rd, chopper *ch, const char *in, size_t n, size_t *seen,
                    void (*check)(size_t, const presp_reply *))
{
    size_t fed = 0;
    while (fed < n) {
        size_t k = chop_next(ch, n - fed);
        int rc = presp_feed(rd, (const uint8_t *)in + fed, k);
        if (rc) return rc;
        fed += k;
        const presp_reply *r;
        while ((rc = presp_next(rd, &r)) > 0) check((*seen)++, r);
        if (rc < 0) return rc;
    }
    return 0;
}

static void check_chopped(size_t seen, const presp_reply *r)
{
    switch (seen) {
    case 0:
        assert_int_equal(r->type, '+');
        assert_int_equal(r->v.len, 2);
        assert_memory_equal(r->v.p, "OK", 2);
        break;
    case 1:
        assert_int_equal(r->type, '*');
        assert_int_equal(r->n, 3);
        assert_int_equal(r->el[0].type, '$');
        assert_memory_equal(r->el[0].p, "subscribe", 9);
        assert_memory_equal(r->el[1].p, "abc", 3);
        assert_int_equal(r->el[2].type, ':');
        assert_int_equal(r->el[2].i, 1);
        break;
    case 2:
        assert_int_equal(r->n, 4);
        assert_memory_equal(r->el[0].p, "pmessage", 8);
        assert_memory_equal(r->el[1].p, "p:*", 3);
        assert_memory_equal(r->el[2].p, "p:x", 3);
        assert_int_equal(r->el[3].len, 5);
        assert_memory_equal(r->el[3].p, "he\r\no", 5);
        break;
    case 3:
        assert_int_equal(r->type, '-');
        assert_int_equal(r->v.len, 9);
        assert_memory_equal(r->v.p, "ERR wrong", 9);
        break;
    case 4:
        assert_int_equal(r->n, 2);
        assert_memory_equal(r->el[0].p, "foo", 3);
        assert_int_equal(r->el[1].i, -12);
        break;
    case 5:
        assert_int_equal(r->type, '$');
        assert_true(r->nil);
        assert_null(r->v.p);
        break;
    case 6:
        assert_int_equal(r->type, '*');
        assert_int_equal(r->n, 0);
        assert_false(r->nil);
        break;
    case 7:
        assert_int_equal(r->type, '*');
        assert_true(r->nil);
        break;
    case 8:
        assert_int_equal(r->type, '$');
        assert_false(r->nil);
        assert_int_equal(r->v.len, 0);
        assert_non_null(r->v.p);
        break;
    case 9:
        assert_int_equal(r->type, ':');
        assert_int_equal(r->v.i, 9223372036854775807LL);
        break;
    default:
        fail();
    }
}

/* Whole, byte by byte and in random pieces, over and over with one
 * reader (its buffers reused): the same replies, string bytes intact. */
static void test_resp_chopped(void **state)
{
    (void)state;
    static const char in[] = "+OK\r\n"
                             "*3\r\n$9\r\nsubscribe\r\n$3\r\nabc\r\n:1\r\n"
                             "*4\r\n$8\r\npmessage\r\n$3\r\np:*\r\n$3\r\np:x\r\n$5\r\nhe\r\no\r\n"
                             "-ERR wrong\r\n"
                             "*2\r\n$3\r\nfoo\r\n:-12\r\n"
                             "$-1\r\n"
                             "*0\r\n"
                             "*-1\r\n"
                             "$0\r\n\r\n"
                             ":9223372036854775807\r\n";
    const size_t total = sizeof in - 1;
    presp_reader rd;
    assert_int_equal(presp_reader_init(&rd, 1024), 0);
    for (chop_mode mode = CHOP_WHOLE; mode <= CHOP_RANDOM; mode++) {
        for (int round = 0; round < 50; round++) {
            chopper ch;
            chop_init(&ch, mode, chop_seed() + (uint64_t)round);
            size_t seen = 0;
            assert_int_equal(resp_run(&rd, &ch, in, total, &seen, check_chopped), 0);
            assert_int_equal(seen, 10);
            const presp_reply *r;
            assert_int_equal(presp_next(&rd, &r), 0); /* nothing left over */
            assert_null(r);
        }
    }
    presp_reader_free(&rd);
}

static void check_none(size_t seen, const presp_reply *r)
{
    (void)seen;
    (void)r;
}

/* A reply must never come from these; the reader ends in an error. */
static int resp_bad(size_t max_bulk, const char *in, size_t n, chop_mode mode)
{
    presp_reader rd;
    assert_int_equal(presp_reader_init(&rd, max_bulk), 0);
    chopper ch;
    chop_init(&ch, mode, chop_seed());
    size_t seen = 0;
    int rc = resp_run(&rd, &ch, in, n, &seen, check_none);
    if (rc == 0) {
        const presp_reply *r;
        rc = presp_next(&rd, &r);
    }
    assert_true(rc < 0);
    assert_non_null(presp_reader_error(&rd));
    /* The error stays. */
    const presp_reply *r;
    assert_int_equal(presp_next(&rd, &r), rc);
    assert_int_equal(presp_feed(&rd, (const uint8_t *)"+OK\r\n", 5), rc);
    /* And a reset gives a fresh reader. */
    assert_int_equal(presp_reader_reset(&rd), 0);
    assert_int_equal(presp_feed(&rd, (const uint8_t *)"+OK\r\n", 5), 0);
    assert_int_equal(presp_next(&rd, &r), 1);
    assert_int_equal(r->type, '+');
    assert_memory_equal(r->v.p, "OK", 2);
    presp_reader_free(&rd);
    return rc;
}

static void test_resp_bad(void **state)
{
    (void)state;
    /* Unknown type byte, an array over 8, nested arrays (also nil or empty
     * ones), a negative count, bytes where a bulk string's CRLF belongs
     * (hiredis takes the string and fails on what follows). */
    const char *bad[] = {"?x\r\n",
                         "*9\r\n",
                         "*1\r\n*1\r\n:1\r\n",
                         "*2\r\n:1\r\n*-1\r\n",
                         "*1\r\n*0\r\n",
                         "*-5\r\n",
                         "*2\r\n$3\r\nabcd\r\n:1\r\n",
                         "$3\r\nabcd\r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        for (chop_mode mode = CHOP_WHOLE; mode <= CHOP_RANDOM; mode++)
            assert_int_equal(resp_bad(1024, bad[i], strlen(bad[i]), mode), PARLEY_EPROTO);
    /* A bulk string over max_bulk, with its bytes: refused. */
    static char big[2100];
    memcpy(big, "$2000\r\n", 7);
    memset(big + 7, 'a', 2000);
    memcpy(big + 2007, "\r\n", 2);
    for (chop_mode mode = CHOP_WHOLE; mode <= CHOP_RANDOM; mode++)
        assert_int_equal(resp_bad(1024, big, 2009, mode), PARLEY_ELIMIT);
    /* Without its bytes, or a line without CRLF: the reader takes no more
     * than max_bulk + PRESP_SLACK unconsumed bytes, then refuses. */
    presp_reader rd;
    assert_int_equal(presp_reader_init(&rd, 1024), 0);
    assert_int_equal(presp_reader_room(&rd), 1024 + PRESP_SLACK);
    assert_int_equal(presp_feed(&rd, (const uint8_t *)"$100000000\r\n", 12), 0);
    const presp_reply *r;
    assert_int_equal(presp_next(&rd, &r), 0);
    /* (hiredis has taken the type byte; the rest waits for the bytes.) */
    assert_in_range(presp_reader_room(&rd), 1024 + PRESP_SLACK - 12, 1024 + PRESP_SLACK - 11);
    static uint8_t chunk[4096];
    memset(chunk, 'a', sizeof chunk);
    int rc = 0;
    size_t fed = 12;
    for (int i = 0; i < 100 && rc == 0; i++) {
        rc = presp_feed(&rd, chunk, sizeof chunk);
        if (rc == 0) {
            fed += sizeof chunk;
            assert_int_equal(presp_next(&rd, &r), 0);
        }
    }
    assert_int_equal(rc, PARLEY_ELIMIT);
    assert_true(fed <= 1024 + PRESP_SLACK);
    assert_int_equal(presp_reader_room(&rd), 0);
    presp_reader_free(&rd);
    char *line = malloc(1024 + PRESP_SLACK + 10);
    memset(line, 'a', 1024 + PRESP_SLACK + 10);
    line[0] = '+';
    assert_int_equal(resp_bad(1024, line, 1024 + PRESP_SLACK + 10, CHOP_RANDOM), PARLEY_ELIMIT);
    free(line);
    /* An array whose strings add up to more than the limit, each under it
     * (fed byte by byte, so the reader's buffer stays small). */
    char *arr = malloc(8 * 16100);
    size_t n = (size_t)sprintf(arr, "*8\r\n");
    for (int i = 0; i < 8; i++) {
        n += (size_t)sprintf(arr + n, "$16000\r\n");
        memset(arr + n, 'b', 16000);
        n += 16000;
        memcpy(arr + n, "\r\n", 2);
        n += 2;
    }
    assert_int_equal(presp_reader_init(&rd, 16384), 0);
    chopper ch;
    chop_init(&ch, CHOP_BYTES, 0);
    size_t seen = 0;
    assert_int_equal(resp_run(&rd, &ch, arr, n, &seen, check_none), PARLEY_ELIMIT);
    assert_int_equal(seen, 0);
    assert_string_equal(presp_reader_error(&rd), "a reply over the size limit");
    assert_true(rd.arena.len <= 16384 + PRESP_SLACK);
    presp_reader_free(&rd);
    free(arr);

    /* Many replies through one reader: its buffers stop growing. */
    assert_int_equal(presp_reader_init(&rd, 1024), 0);
    const char *msg = "*3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$20\r\n01234567890123456789\r\n";
    size_t cap = 0;
    for (int i = 0; i < 10000; i++) {
        assert_int_equal(presp_feed(&rd, (const uint8_t *)msg, strlen(msg)), 0);
        assert_int_equal(presp_next(&rd, &r), 1);
        assert_int_equal(r->el[2].len, 20);
        assert_memory_equal(r->el[2].p, "01234567890123456789", 20);
        if (i == 100) {
            cap = rd.arena.cap;
            alloc_calls = 0;
        }
        if (i > 100) assert_int_equal(rd.arena.cap, cap);
    }
    /* (Ours; hiredis' own buffer is kept too: maxbuf 0.) */
    assert_int_equal(alloc_calls, 0);
    presp_reader_free(&rd);

    pbuf b = {0};
    const char *argv[] = {"PUBLISH", "ch"};
    assert_int_equal(presp_command(&b, 2, argv, NULL), 0);
    assert_int_equal(b.len, strlen("*2\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n"));
    assert_memory_equal(b.ptr, "*2\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n", b.len);
    pbuf_free(&b);
}

static void test_redis_url(void **state)
{
    (void)state;
    predis_url u;
    const char *why;
    assert_int_equal(predis_url_parse("redis://127.0.0.1:6380", &u, &why), 0);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 0);
    assert_string_equal(u.pass, "");
    assert_int_equal(predis_url_parse("redis://bob:s3cr@t@redis.example:7000/3", &u, &why), 0);
    assert_string_equal(u.user, "bob");
    assert_string_equal(u.pass, "s3cr@t");
    assert_string_equal(u.host, "redis.example");
    assert_int_equal(u.port, 7000);
    assert_int_equal(u.db, 3);
    assert_int_equal(predis_url_parse("redis://:pw@h", &u, &why), 0);
    assert_string_equal(u.user, "");
    assert_string_equal(u.pass, "pw");
    assert_int_equal(u.port, 6379);
    assert_int_equal(predis_url_parse("redis://[::1]:6390/", &u, &why), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 6390);
    const char *bad[] = {"http://h",        "redis://",    "redis://h:0",
                         "redis://h:70000", "redis://h:x", "redis://h/abc",
                         "redis://h?x=1",   "rediss:/h",   NULL};
    for (int i = 0; bad[i]; i++) {
        why = NULL;
        assert_int_equal(predis_url_parse(bad[i], &u, &why), PARLEY_EINVAL);
        assert_non_null(why);
    }
    assert_int_equal(predis_url_parse(NULL, &u, &why), PARLEY_EINVAL);
    assert_int_equal(predis_url_parse("rediss://:pw@cache.internal:6380/2", &u, &why), 0);
    assert_true(u.tls);
    assert_string_equal(u.host, "cache.internal");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 2);
    assert_int_equal(predis_url_parse("redis://h", &u, &why), 0);
    assert_false(u.tls);
}

static void server_down(parley_server *s, void *user)
{
    (void)s;
    *(bool *)user = true;
}

/* The public API: options of an older (smaller) layout, bad URLs, a second
 * join, an unreachable Redis (the server goes on; broadcasts stay local
 * and are counted), leaving and freeing with nothing left on the loop. */
static void test_public_api(void **state)
{
    (void)state;
    parley_loop *loop = parley_loop_new();
    assert_non_null(loop);
    parley_server_opts so;
    parley_server_opts_init(&so);
    parley_server *srv = NULL;
    assert_int_equal(parley_server_new(loop, &so, &srv), 0);
    parley_cluster_opts o;
    parley_cluster_opts_init(&o);
    assert_int_equal(o.size, sizeof o);
    assert_string_equal(o.key, "socket.io");
    parley_cluster *c = NULL;
    assert_int_equal(parley_cluster_join(srv, &o, &c), PARLEY_EINVAL); /* no URL */
    o.redis_url = "http://127.0.0.1:1";
    assert_int_equal(parley_cluster_join(srv, &o, &c), PARLEY_EURL);
    o.redis_url = "rediss://127.0.0.1:1";
    o.redis_ca_file = "/nonexistent/ca.pem"; /* a CA that cannot be loaded */
    assert_int_equal(parley_cluster_join(srv, &o, &c), PARLEY_ETLS);
    o.redis_ca_file = NULL;
    /* An application built against a layout that ended at redis_url. */
    o.redis_url = "redis://127.0.0.1:1";
    o.size = offsetof(parley_cluster_opts, key);
    o.key = "never-read";
    assert_int_equal(parley_cluster_join(srv, &o, &c), 0);
    assert_non_null(c);
    parley_cluster *c2 = NULL;
    o.size = sizeof o;
    assert_int_equal(parley_cluster_join(srv, &o, &c2), PARLEY_ESTATE);
    parley_nsp *root = parley_server_of(srv, "/");
    parley_nsp *other = parley_server_of(srv, "/later"); /* created after the join */
    assert_non_null(other);
    assert_int_equal(parley_broadcast(root, NULL, "ev", "[1]", NULL, 0), 0);
    assert_int_equal(parley_cluster_server_side_emit(c, root, "x", "[1]"), PARLEY_ECLOSED);
    assert_int_equal(parley_cluster_server_side_emit(c, root, "x", "{"), PARLEY_EINVAL);
    assert_int_equal(parley_cluster_server_side_emit_ack(c, root, "x", "[1]", 100, NULL, NULL),
                     PARLEY_EINVAL);
    assert_int_equal(parley_cluster_ack(c, root, "", "1"), PARLEY_EINVAL);
    assert_int_equal(parley_cluster_ack(c, root, "abc", "{"), PARLEY_EINVAL);
    assert_int_equal(parley_cluster_ack(c, root, "abc", "1"), PARLEY_ECLOSED);
    th_run_for(loop, 400); /* refused connections, retried with backoff */
    assert_int_equal(parley_cluster_nodes(c), 0);
    pcluster_stats st;
    pcluster_get_stats(c, &st);
    assert_int_equal(st.publish_failures, 3);
    assert_true(st.reconnects >= 2);
    assert_false(st.pub_up);
    parley_cluster_leave(c);
    bool down = false;
    parley_server_shutdown(srv, server_down, &down);
    th_run_until(loop, &down, 5000);
    assert_true(down);
    parley_server_free(srv);
    parley_loop_free(loop);
}

int main(void)
{
    /* As every program using the library must (README, "Using the
     * library"): a write to a connection the peer reset is EPIPE, not
     * a fatal signal. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node_hello),
        cmocka_unit_test(test_node_volatile_room_except),
        cmocka_unit_test(test_node_multi_and_emitter),
        cmocka_unit_test(test_node_broadcast_with_ack),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_corrupted),
        cmocka_unit_test(test_garbage_and_limits),
        cmocka_unit_test(test_hostile_counts),
        cmocka_unit_test(test_encode_exact),
        cmocka_unit_test(test_resp_chopped),
        cmocka_unit_test(test_resp_bad),
        cmocka_unit_test(test_redis_url),
        cmocka_unit_test(test_public_api),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
