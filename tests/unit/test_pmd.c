/* Unit tests for permessage-deflate: negotiation in both roles (grammar,
 * multiple offers, every response rule) and the streams (window sizes,
 * context takeover, bounded inflation, corrupt input). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "base/buf.h"
#include "base/util.h"
#include "chop.h"
#include "codec/pmd.h"
#include "parley/parley.h"

/* Server side: result and, when accepted, the exact response. */
static void expect_server(const pmd_config *cfg, const char *offer, int want, const char *resp)
{
    pmd_params p;
    memset(&p, 0x5a, sizeof p);
    pbuf out = {0};
    int rc = pmd_server_negotiate(cfg, offer, strlen(offer), &p, &out);
    if (rc != want) fail_msg("offer [%s]: got %d, want %d", offer, rc, want);
    if (want == 1) {
        if (out.len != strlen(resp) || memcmp(out.ptr, resp, out.len) != 0)
            fail_msg("offer [%s]: response [%.*s], want [%s]", offer, (int)out.len,
                     out.ptr ? (const char *)out.ptr : "", resp);
    } else {
        assert_int_equal(out.len, 0);
    }
    pbuf_free(&out);
}

static void test_server_basic(void **state)
{
    (void)state;
    pmd_config cfg;
    pmd_config_init(&cfg);
    assert_true(cfg.enabled);
    assert_int_equal(cfg.server_max_window_bits, 15);
    assert_int_equal(cfg.client_max_window_bits, 15);
    assert_int_equal(cfg.level, 1);
    assert_int_equal(cfg.threshold, 64);

    pmd_params p;
    pbuf out = {0};
    assert_int_equal(pbuf_append_str(&out, "X: "), 0);
    const char *o = "permessage-deflate";
    assert_int_equal(pmd_server_negotiate(&cfg, o, strlen(o), &p, &out), 1);
    assert_int_equal(out.len, 3 + strlen(o));
    assert_memory_equal(out.ptr, "X: permessage-deflate", out.len); /* appended */
    assert_false(p.server_no_context_takeover);
    assert_false(p.client_no_context_takeover);
    assert_int_equal(p.server_max_window_bits, 15);
    assert_int_equal(p.client_max_window_bits, 15);
    pbuf_free(&out);

    /* Browsers' usual offer. */
    o = "permessage-deflate; client_max_window_bits";
    assert_int_equal(pmd_server_negotiate(&cfg, o, strlen(o), &p, &out), 1);
    assert_int_equal(p.client_max_window_bits, 15);
    pbuf_free(&out);
    expect_server(&cfg, o, 1, "permessage-deflate; client_max_window_bits=15");

    expect_server(&cfg, "", 0, NULL);
    expect_server(&cfg, "   ", 0, NULL);
    expect_server(&cfg, " , ,, ", 0, NULL);
    expect_server(&cfg, "x-webkit-deflate-frame", 0, NULL);
    expect_server(&cfg, "x-webkit-deflate-frame, permessage-deflate", 1, "permessage-deflate");
    expect_server(&cfg, "PerMessage-Deflate; Server_No_Context_Takeover", 1,
                  "permessage-deflate; server_no_context_takeover");
    /* NULL with length 0 is an absent header. */
    assert_int_equal(pmd_server_negotiate(&cfg, NULL, 0, &p, &out), 0);

    cfg.enabled = false;
    expect_server(&cfg, "permessage-deflate", 0, NULL);
    expect_server(&cfg, "permessage-deflate;", PARLEY_EPROTO, NULL);
}

static void test_server_params(void **state)
{
    (void)state;
    pmd_config cfg;
    pmd_config_init(&cfg);
    expect_server(&cfg, "permessage-deflate; server_no_context_takeover", 1,
                  "permessage-deflate; server_no_context_takeover");
    expect_server(&cfg, "permessage-deflate; client_no_context_takeover", 1,
                  "permessage-deflate; client_no_context_takeover");
    expect_server(&cfg, "permessage-deflate; server_max_window_bits=10", 1,
                  "permessage-deflate; server_max_window_bits=10");
    expect_server(&cfg, "permessage-deflate; server_max_window_bits=15", 1,
                  "permessage-deflate; server_max_window_bits=15");
    expect_server(&cfg, "permessage-deflate; server_max_window_bits=9", 1,
                  "permessage-deflate; server_max_window_bits=9");
    expect_server(&cfg, "permessage-deflate; client_max_window_bits=12", 1,
                  "permessage-deflate; client_max_window_bits=12");
    expect_server(&cfg, "permessage-deflate; client_max_window_bits=8", 1,
                  "permessage-deflate; client_max_window_bits=8");
    /* 8 for our own deflater is declined, not answered with 9. */
    expect_server(&cfg, "permessage-deflate; server_max_window_bits=8", 0, NULL);
    expect_server(&cfg, "permessage-deflate; server_max_window_bits=8, permessage-deflate", 1,
                  "permessage-deflate");

    /* Our config demands and caps. */
    cfg.server_no_context_takeover = true;
    cfg.client_no_context_takeover = true;
    cfg.server_max_window_bits = 11;
    cfg.client_max_window_bits = 10;
    expect_server(&cfg, "permessage-deflate", 1,
                  "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                  "server_max_window_bits=11");
    expect_server(&cfg, "permessage-deflate; server_max_window_bits=13; client_max_window_bits", 1,
                  "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                  "server_max_window_bits=11; client_max_window_bits=10");
    expect_server(&cfg, "permessage-deflate; server_max_window_bits=9; client_max_window_bits=9", 1,
                  "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                  "server_max_window_bits=9; client_max_window_bits=9");

    pmd_params p;
    pbuf out = {0};
    const char *o = "permessage-deflate; server_max_window_bits=13; client_max_window_bits=12";
    assert_int_equal(pmd_server_negotiate(&cfg, o, strlen(o), &p, &out), 1);
    assert_true(p.server_no_context_takeover);
    assert_true(p.client_no_context_takeover);
    assert_int_equal(p.server_max_window_bits, 11);
    assert_int_equal(p.client_max_window_bits, 10);
    pbuf_free(&out);
}

static void test_server_declines(void **state)
{
    (void)state;
    pmd_config cfg;
    pmd_config_init(&cfg);
    static const char *bad[] = {
        "permessage-deflate; foo",
        "permessage-deflate; foo=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover; Client_No_Context_Takeover",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=true",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_max_window_bits=+9",
        "permessage-deflate; server_max_window_bits=1a",
        "permessage-deflate; server_max_window_bits=100000000000000009",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=09",
        "permessage-deflate; client_max_window_bits=\"016\"",
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++) {
        expect_server(&cfg, bad[i], 0, NULL);
        /* Declining one offer leaves the next one standing. */
        char two[256];
        snprintf(two, sizeof two, "%s, permessage-deflate; client_no_context_takeover", bad[i]);
        expect_server(&cfg, two, 1, "permessage-deflate; client_no_context_takeover");
    }
    /* The first acceptable offer wins, not the best one. */
    expect_server(&cfg,
                  "permessage-deflate; server_max_window_bits=12, permessage-deflate; "
                  "server_no_context_takeover",
                  1, "permessage-deflate; server_max_window_bits=12");
}

static void test_server_grammar(void **state)
{
    (void)state;
    pmd_config cfg;
    pmd_config_init(&cfg);
    /* OWS around separators, empty elements, tabs. */
    expect_server(&cfg, " \tpermessage-deflate \t;\t client_max_window_bits = 10 , foo ", 1,
                  "permessage-deflate; client_max_window_bits=10");
    expect_server(&cfg, ",, ,permessage-deflate,,", 1, "permessage-deflate");
    expect_server(&cfg, "foo; a=b; c=\"d\", permessage-deflate", 1, "permessage-deflate");
    /* Quoted values unescape to tokens. */
    expect_server(&cfg, "permessage-deflate; server_max_window_bits=\"10\"", 1,
                  "permessage-deflate; server_max_window_bits=10");
    expect_server(&cfg, "permessage-deflate; server_max_window_bits=\"1\\1\"", 1,
                  "permessage-deflate; server_max_window_bits=11");
    expect_server(&cfg, "permessage-deflate; client_max_window_bits=\"9\"", 1,
                  "permessage-deflate; client_max_window_bits=9");
    expect_server(&cfg, "foo; bar=\"a\\\"b\"", PARLEY_EPROTO, NULL); /* '"' is no tchar */

    static const char *malformed[] = {
        ";",
        "=",
        "\"permessage-deflate\"",
        "permessage-deflate;",
        "permessage-deflate; ",
        "permessage-deflate;;",
        "permessage-deflate; =10",
        "permessage-deflate; server_max_window_bits=",
        "permessage-deflate; server_max_window_bits= ",
        "permessage-deflate; server_max_window_bits==10",
        "permessage-deflate; server_max_window_bits=10 11",
        "permessage-deflate x",
        "permessage-deflate; a b",
        "permessage-deflate; a=\"10",
        "permessage-deflate; a=\"\"",
        "permessage-deflate; a=\"1 0\"",
        "permessage-deflate; a=\"1\\",
        "permessage-deflate; a=\"10\"x",
        "permessage-deflate; a/b",
        "permessage-deflate@",
        "perm\x01essage-deflate",
        "permessage-deflate\r\n",
        "permessage-deflate, @@",
        "permessage-deflate, foo;",
        "permessage-deflate; client_max_window_bits, ;",
        "@, permessage-deflate",
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(malformed); i++)
        expect_server(&cfg, malformed[i], PARLEY_EPROTO, NULL);

    /* Length is honoured: bytes past it are not read. */
    pmd_params p;
    pbuf out = {0};
    const char *o = "permessage-deflate; foo";
    assert_int_equal(pmd_server_negotiate(&cfg, o, 18, &p, &out), 1);
    pbuf_free(&out);
}

static void expect_offer(const pmd_config *cfg, const char *want)
{
    pbuf out = {0};
    assert_int_equal(pmd_client_offer(cfg, &out), 0);
    if (out.len != strlen(want) || (out.len && memcmp(out.ptr, want, out.len) != 0))
        fail_msg("offer [%.*s], want [%s]", (int)out.len, out.ptr ? (const char *)out.ptr : "",
                 want);
    pbuf_free(&out);
}

static void test_client_offer(void **state)
{
    (void)state;
    pmd_config cfg;
    pmd_config_init(&cfg);
    expect_offer(&cfg, "permessage-deflate; client_max_window_bits");
    cfg.client_max_window_bits = 12;
    expect_offer(&cfg, "permessage-deflate; client_max_window_bits=12");
    cfg.client_max_window_bits = 0;
    expect_offer(&cfg, "permessage-deflate");
    cfg.server_no_context_takeover = true;
    cfg.client_no_context_takeover = true;
    cfg.server_max_window_bits = 10;
    cfg.client_max_window_bits = 9;
    expect_offer(&cfg, "permessage-deflate; server_no_context_takeover; "
                       "client_no_context_takeover; server_max_window_bits=10; "
                       "client_max_window_bits=9");
    cfg.enabled = false;
    expect_offer(&cfg, "");
}

static int accept_str(const pmd_config *cfg, const char *resp, pmd_params *p)
{
    return pmd_client_accept(cfg, resp, strlen(resp), p);
}

static void test_client_accept(void **state)
{
    (void)state;
    pmd_config cfg;
    pmd_config_init(&cfg);
    pmd_params p;

    assert_int_equal(accept_str(&cfg, "", &p), 0);
    assert_int_equal(accept_str(&cfg, "  ", &p), 0);
    assert_int_equal(accept_str(&cfg, "permessage-deflate", &p), 1);
    assert_false(p.server_no_context_takeover);
    assert_false(p.client_no_context_takeover);
    assert_int_equal(p.server_max_window_bits, 15);
    assert_int_equal(p.client_max_window_bits, 15);

    assert_int_equal(accept_str(&cfg,
                                "permessage-deflate; server_no_context_takeover; "
                                "client_no_context_takeover; server_max_window_bits=9; "
                                "client_max_window_bits=11",
                                &p),
                     1);
    assert_true(p.server_no_context_takeover);
    assert_true(p.client_no_context_takeover);
    assert_int_equal(p.server_max_window_bits, 9);
    assert_int_equal(p.client_max_window_bits, 11);
    /* The server's own deflater may use 8: our inflater reads any size. */
    assert_int_equal(accept_str(&cfg, "permessage-deflate; server_max_window_bits=8", &p), 1);
    assert_int_equal(p.server_max_window_bits, 8);
    assert_int_equal(accept_str(&cfg, "permessage-deflate; client_max_window_bits=\"10\"", &p), 1);
    assert_int_equal(p.client_max_window_bits, 10);

    static const char *bad[] = {
        "x-webkit-deflate-frame",                 /* not offered */
        "permessage-deflate, permessage-deflate", /* twice */
        "permessage-deflate, foo",                /* extra */
        "permessage-deflate; foo",                /* unknown param */
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits=10; client_max_window_bits=10",
        "permessage-deflate; server_no_context_takeover=1", /* value on a flag */
        "permessage-deflate; server_max_window_bits",       /* value required */
        "permessage-deflate; server_max_window_bits=16",    /* out of range */
        "permessage-deflate; server_max_window_bits=09",    /* leading zero */
        "permessage-deflate; client_max_window_bits",       /* value required here */
        "permessage-deflate; client_max_window_bits=8",     /* our deflater cannot */
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate;",      /* malformed */
        "permessage-deflate; a=\"", /* malformed */
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++)
        if (accept_str(&cfg, bad[i], &p) != PARLEY_EPROTO) fail_msg("accepted [%s]", bad[i]);

    /* What we asked for bounds what the server may answer. */
    cfg.server_max_window_bits = 10;
    cfg.client_max_window_bits = 12;
    assert_int_equal(accept_str(&cfg, "permessage-deflate; server_max_window_bits=11", &p),
                     PARLEY_EPROTO);
    assert_int_equal(accept_str(&cfg, "permessage-deflate; server_max_window_bits=10", &p), 1);
    assert_int_equal(accept_str(&cfg, "permessage-deflate; client_max_window_bits=13", &p),
                     PARLEY_EPROTO);
    assert_int_equal(accept_str(&cfg, "permessage-deflate; client_max_window_bits=12", &p), 1);
    assert_int_equal(p.client_max_window_bits, 12);
    /* Without an answer we still keep to the size we offered. */
    assert_int_equal(accept_str(&cfg, "permessage-deflate", &p), 1);
    assert_int_equal(p.client_max_window_bits, 12);
    assert_int_equal(p.server_max_window_bits, 15);

    /* client_max_window_bits only when we offered it. */
    cfg.client_max_window_bits = 0;
    assert_int_equal(accept_str(&cfg, "permessage-deflate; client_max_window_bits=12", &p),
                     PARLEY_EPROTO);
    assert_int_equal(accept_str(&cfg, "permessage-deflate", &p), 1);
    assert_int_equal(p.client_max_window_bits, 15);

    /* Having offered no context takeover we keep to it unconfirmed. */
    pmd_config_init(&cfg);
    cfg.client_no_context_takeover = true;
    assert_int_equal(accept_str(&cfg, "permessage-deflate", &p), 1);
    assert_true(p.client_no_context_takeover);

    /* Nothing was offered: any extension is a violation. */
    cfg.enabled = false;
    assert_int_equal(accept_str(&cfg, "permessage-deflate", &p), PARLEY_EPROTO);
    assert_int_equal(accept_str(&cfg, "", &p), 0);
}

/* Offer -> negotiate -> accept: both sides must agree on the parameters. */
static void test_negotiation_round_trip(void **state)
{
    (void)state;
    static const int cbits[] = {0, 9, 12, 15};
    for (int mask = 0; mask < 16; mask++)
        for (int sb = 9; sb <= 15; sb += 3)
            for (size_t ci = 0; ci < PARLEY_ARRAY_LEN(cbits); ci++)
                for (int srv = 9; srv <= 15; srv += 2) {
                    pmd_config cc, sc;
                    pmd_config_init(&cc);
                    pmd_config_init(&sc);
                    cc.server_no_context_takeover = mask & 1;
                    cc.client_no_context_takeover = mask & 2;
                    sc.server_no_context_takeover = mask & 4;
                    sc.client_no_context_takeover = mask & 8;
                    cc.server_max_window_bits = sb;
                    cc.client_max_window_bits = cbits[ci];
                    sc.server_max_window_bits = srv;
                    sc.client_max_window_bits = 24 - srv;
                    pbuf offer = {0}, resp = {0};
                    assert_int_equal(pmd_client_offer(&cc, &offer), 0);
                    pmd_params ps, pc;
                    assert_int_equal(
                        pmd_server_negotiate(&sc, (const char *)offer.ptr, offer.len, &ps, &resp),
                        1);
                    assert_int_equal(pmd_client_accept(&cc, (const char *)resp.ptr, resp.len, &pc),
                                     1);
                    assert_int_equal(ps.server_no_context_takeover, pc.server_no_context_takeover);
                    assert_int_equal(ps.client_no_context_takeover, pc.client_no_context_takeover);
                    assert_int_equal(ps.server_max_window_bits, pc.server_max_window_bits);
                    assert_int_equal(ps.client_max_window_bits, pc.client_max_window_bits);
                    assert_int_equal(ps.server_no_context_takeover, (mask & 5) != 0);
                    assert_int_equal(ps.client_no_context_takeover, (mask & 10) != 0);
                    assert_true(ps.server_max_window_bits <= sb &&
                                ps.server_max_window_bits <= srv);
                    pbuf_free(&offer);
                    pbuf_free(&resp);
                }
}

/* Streams. */

static void fill_text(uint8_t *buf, size_t n, uint64_t *rng)
{
    static const char *words[] = {"alpha ", "beta ", "gamma ", "delta ", "parley ", "frame "};
    size_t i = 0;
    while (i < n) {
        const char *w = words[test_rand(rng) % PARLEY_ARRAY_LEN(words)];
        size_t k = strlen(w);
        if (k > n - i) k = n - i;
        memcpy(buf + i, w, k);
        i += k;
    }
}

/* Inflates raw deflate messages (each plus the sync tail) with a window
 * of exactly `bits`, to prove the deflater stayed within it. */
static bool inflates_with_window(const pbuf *comp, uint8_t *const *want, const size_t *want_len,
                                 size_t count, int bits)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -bits) != Z_OK) return false;
    bool ok = true;
    for (size_t m = 0; m < count && ok; m++) {
        uint8_t tail[4] = {0, 0, 0xff, 0xff};
        size_t cap = want_len[m] + 16;
        uint8_t *out = malloc(cap);
        z.next_out = out;
        z.avail_out = (uInt)cap;
        z.next_in = comp[m].ptr;
        z.avail_in = (uInt)comp[m].len;
        int rc = inflate(&z, Z_SYNC_FLUSH);
        if (rc != Z_OK && rc != Z_BUF_ERROR) ok = false;
        z.next_in = tail;
        z.avail_in = 4;
        rc = inflate(&z, Z_SYNC_FLUSH);
        if (rc != Z_OK && rc != Z_BUF_ERROR) ok = false;
        size_t got = cap - z.avail_out;
        if (got != want_len[m] || memcmp(out, want[m], got) != 0) ok = false;
        free(out);
    }
    inflateEnd(&z);
    return ok;
}

static void round_trip(int bits, bool no_context, bool server, uint64_t *rng)
{
    pmd_params prm = {
        .server_no_context_takeover = no_context,
        .client_no_context_takeover = no_context,
        .server_max_window_bits = bits,
        .client_max_window_bits = bits,
    };
    pmd_config cfg;
    pmd_config_init(&cfg);
    cfg.level = 6;
    pmd_stream *d = pmd_deflater_new(&prm, &cfg, server);
    pmd_stream *inf = pmd_inflater_new(&prm, !server);
    assert_non_null(d);
    assert_non_null(inf);

    /* Big messages repeat a random block every 400 bytes: out of reach of
     * a 512-byte window (zlib keeps 262 bytes of it for lookahead), in
     * reach of 1024. Small messages are 200 random bytes sent twice: the
     * second copy is in reach of the first whatever the window. */
    enum { BIG = 6000, SMALL = 200, COUNT = 5 };
    uint8_t *big = malloc(BIG);
    uint8_t block[400];
    for (size_t i = 0; i < sizeof block; i++) block[i] = (uint8_t)test_rand(rng);
    for (size_t i = 0; i < BIG; i++) big[i] = block[i % sizeof block];
    uint8_t small[SMALL];
    for (size_t i = 0; i < SMALL; i++) small[i] = (uint8_t)test_rand(rng);
    uint8_t *const msgs[COUNT] = {big, big, small, small, big};
    const size_t lens[COUNT] = {BIG, BIG, SMALL, SMALL, BIG};

    pbuf comp[COUNT] = {{0}};
    for (int m = 0; m < COUNT; m++) {
        assert_int_equal(pmd_deflate_message(d, msgs[m], lens[m], &comp[m]), 0);
        assert_true(comp[m].len > 0);
        pbuf out = {0};
        chopper c;
        chop_init(&c, CHOP_RANDOM, test_rand(rng));
        size_t off = 0;
        do {
            size_t k = chop_next(&c, comp[m].len - off);
            bool fin = off + k == comp[m].len;
            assert_int_equal(pmd_inflate(inf, comp[m].ptr + off, k, fin, &out, lens[m]), 0);
            off += k;
        } while (off < comp[m].len);
        assert_int_equal(out.len, lens[m]);
        assert_memory_equal(out.ptr, msgs[m], lens[m]);
        pbuf_free(&out);
        /* Once only: trimming restarts a stream, which would hide a
         * missing reset between messages. */
        if (m == 2) {
            pmd_stream_trim(d);
            pmd_stream_trim(inf);
        }
    }
    if (no_context) {
        /* Each message stands alone. */
        assert_int_equal(comp[3].len, comp[2].len);
        assert_memory_equal(comp[3].ptr, comp[2].ptr, comp[2].len);
        assert_int_equal(comp[1].len, comp[0].len);
    } else {
        /* The second copy refers back into the first. */
        assert_true(comp[3].len < comp[2].len / 4);
    }
    assert_true(inflates_with_window(comp, msgs, lens, COUNT, bits));
    if (bits == 9)
        assert_true(comp[0].len > BIG / 2);
    else
        assert_true(comp[0].len < BIG / 2);
    for (int m = 0; m < COUNT; m++) pbuf_free(&comp[m]);
    free(big);
    pmd_stream_free(d);
    pmd_stream_free(inf);
}

static void test_stream_round_trips(void **state)
{
    (void)state;
    uint64_t rng = chop_seed();
    for (int bits = 9; bits <= 15; bits++) {
        round_trip(bits, false, true, &rng);
        round_trip(bits, true, true, &rng);
        round_trip(bits, false, false, &rng);
        round_trip(bits, true, false, &rng);
    }
}

static void test_stream_small_messages(void **state)
{
    (void)state;
    pmd_params prm = {false, false, 15, 15};
    pmd_stream *d = pmd_deflater_new(&prm, NULL, true);
    pmd_stream *inf = pmd_inflater_new(&prm, false);
    uint64_t rng = 7;
    for (size_t n = 0; n < 300; n += 1 + n / 3) {
        uint8_t buf[300];
        fill_text(buf, n, &rng);
        pbuf c = {0}, out = {0};
        assert_int_equal(pmd_deflate_message(d, buf, n, &c), 0);
        if (n == 0) {
            /* RFC 7692 7.2.3.6: an empty message may be a single 00. */
            assert_true(c.len >= 1);
        }
        /* The 00 00 ff ff tail is stripped. */
        assert_false(c.len >= 4 && memcmp(c.ptr + c.len - 4, "\x00\x00\xff\xff", 4) == 0);
        assert_int_equal(pmd_inflate(inf, c.ptr, c.len, true, &out, 300), 0);
        assert_int_equal(out.len, n);
        if (n) assert_memory_equal(out.ptr, buf, n);
        pbuf_free(&c);
        pbuf_free(&out);
    }
    /* RFC 7692 7.2.3.1's "Hello" with context takeover, twice. */
    static const uint8_t hello1[] = {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};
    static const uint8_t hello2[] = {0xf2, 0x00, 0x11, 0x00, 0x00};
    pmd_stream *i2 = pmd_inflater_new(&prm, true);
    pbuf out = {0};
    assert_int_equal(pmd_inflate(i2, hello1, sizeof hello1, true, &out, 100), 0);
    assert_int_equal(out.len, 5);
    assert_memory_equal(out.ptr, "Hello", 5);
    out.len = 0;
    assert_int_equal(pmd_inflate(i2, hello2, sizeof hello2, true, &out, 100), 0);
    assert_int_equal(out.len, 5);
    assert_memory_equal(out.ptr, "Hello", 5);
    /* Stored (uncompressed) block from RFC 7692 7.2.3.3. */
    static const uint8_t stored[] = {0x00, 0x05, 0x00, 0xfa, 0xff, 0x48,
                                     0x65, 0x6c, 0x6c, 0x6f, 0x00};
    out.len = 0;
    assert_int_equal(pmd_inflate(i2, stored, sizeof stored, true, &out, 100), 0);
    assert_memory_equal(out.ptr, "Hello", 5);
    assert_int_equal(out.len, 5);
    /* A block with BFINAL set (7.2.3.4), then more messages that still
     * refer back into the window. */
    static const uint8_t final[] = {0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00};
    out.len = 0;
    assert_int_equal(pmd_inflate(i2, final, sizeof final, true, &out, 100), 0);
    assert_int_equal(out.len, 5);
    assert_memory_equal(out.ptr, "Hello", 5);
    out.len = 0;
    assert_int_equal(pmd_inflate(i2, hello2, sizeof hello2, true, &out, 100), 0);
    assert_memory_equal(out.ptr, "Hello", 5);
    /* Many final blocks in one message: each restarts the stream, the
     * window survives them all. */
    pbuf many = {0};
    assert_int_equal(pbuf_append(&many, final, 7), 0);
    for (int k = 0; k < 5000; k++) assert_int_equal(pbuf_append(&many, "\x03\x00", 2), 0);
    assert_int_equal(pbuf_append(&many, hello2, sizeof hello2), 0);
    out.len = 0;
    assert_int_equal(pmd_inflate(i2, many.ptr, many.len, true, &out, 100), 0);
    assert_int_equal(out.len, 10);
    assert_memory_equal(out.ptr, "HelloHello", 10);
    pbuf_free(&many);
    pbuf_free(&out);
    pmd_stream_free(i2);

    /* With no context takeover agreed for the peer, a message that
     * refers back into the previous one is corrupt. */
    pmd_params nct = {false, true, 15, 15};
    i2 = pmd_inflater_new(&nct, true);
    out.len = 0;
    assert_int_equal(pmd_inflate(i2, hello1, sizeof hello1, true, &out, 100), 0);
    assert_int_equal(pmd_inflate(i2, hello2, sizeof hello2, true, &out, 100), PARLEY_EPROTO);
    pbuf_free(&out);
    pmd_stream_free(i2);

    /* Wrong direction. */
    pbuf tmp = {0};
    assert_int_equal(pmd_inflate(d, hello1, sizeof hello1, true, &tmp, 100), PARLEY_EINVAL);
    assert_int_equal(pmd_deflate_message(inf, hello1, 2, &tmp), PARLEY_EINVAL);
    assert_int_equal(tmp.len, 0);
    pmd_stream_free(d);
    pmd_stream_free(inf);
    pmd_stream_free(NULL);
    pmd_stream_trim(NULL);
}

static void test_inflate_bounded(void **state)
{
    (void)state;
    /* 10 MB of zeros compresses to about 10 KB. */
    size_t big = 10u << 20;
    uint8_t *zeros = calloc(1, big);
    pmd_params prm = {false, false, 15, 15};
    pmd_config cfg;
    pmd_config_init(&cfg);
    cfg.level = 9;
    pmd_stream *d = pmd_deflater_new(&prm, &cfg, false);
    pbuf bomb = {0};
    assert_int_equal(pmd_deflate_message(d, zeros, big, &bomb), 0);
    assert_true(bomb.len < 64 * 1024);

    size_t max = 1u << 20;
    pmd_stream *inf = pmd_inflater_new(&prm, true);
    pbuf out = {0};
    assert_int_equal(pmd_inflate(inf, bomb.ptr, bomb.len, true, &out, max), PARLEY_ELIMIT);
    assert_true(out.len <= max + 1);
    assert_true(out.cap <= max + 16384 + 1);
    pbuf_free(&out);

    /* Fed in frames, the limit applies to the whole message. */
    pmd_stream_free(inf);
    inf = pmd_inflater_new(&prm, true);
    size_t half = bomb.len / 2;
    int rc = pmd_inflate(inf, bomb.ptr, half, false, &out, max);
    if (rc == 0) rc = pmd_inflate(inf, bomb.ptr + half, bomb.len - half, true, &out, max);
    assert_int_equal(rc, PARLEY_ELIMIT);
    assert_true(out.cap <= max + 16384 + 1);
    pbuf_free(&out);
    pmd_stream_free(inf);

    /* Exactly at the limit is fine; one byte over is not. A new deflater:
     * the old one's context refers back into the bomb. */
    pmd_stream_free(d);
    d = pmd_deflater_new(&prm, &cfg, false);
    pbuf c = {0};
    assert_int_equal(pmd_deflate_message(d, zeros, 100000, &c), 0);
    inf = pmd_inflater_new(&prm, true);
    assert_int_equal(pmd_inflate(inf, c.ptr, c.len, true, &out, 100000), 0);
    assert_int_equal(out.len, 100000);
    pbuf_free(&out);
    pmd_stream_free(inf);
    inf = pmd_inflater_new(&prm, true);
    assert_int_equal(pmd_inflate(inf, c.ptr, c.len, true, &out, 99999), PARLEY_ELIMIT);
    assert_true(out.len <= 100000);
    pbuf_free(&out);
    pmd_stream_free(inf);
    pbuf_free(&c);

    pbuf_free(&bomb);
    pmd_stream_free(d);
    free(zeros);
}

static void test_inflate_corrupt(void **state)
{
    (void)state;
    pmd_params prm = {false, false, 15, 15};
    static const struct {
        const char *bytes;
        size_t len;
    } bad[] = {
        {"\xff\xff\xff\xff", 4},         /* reserved block type 11 */
        {"\x07", 1},                     /* BTYPE 11 with BFINAL */
        {"\x00\x05\x00\x00\x00", 5},     /* stored length without its complement */
        {"\xf2\x00\x11\x00\x00", 5},     /* distance before any output (7.2.3.2's second Hello) */
        {"\xed\xff\xff\xff\xff\xff", 6}, /* dynamic block, oversubscribed lengths */
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++) {
        pmd_stream *inf = pmd_inflater_new(&prm, true);
        pbuf out = {0};
        int rc = pmd_inflate(inf, (const uint8_t *)bad[i].bytes, bad[i].len, true, &out, 1000);
        if (rc != PARLEY_EPROTO) fail_msg("case %zu: %d", i, rc);
        /* The stream is usable for a fresh start afterwards. */
        static const uint8_t hello1[] = {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};
        out.len = 0;
        assert_int_equal(pmd_inflate(inf, hello1, sizeof hello1, true, &out, 1000), 0);
        assert_memory_equal(out.ptr, "Hello", 5);
        pbuf_free(&out);
        pmd_stream_free(inf);
    }
}

/* Trimming must free only what can be rebuilt: with context takeover the
 * next message needs the window, so it stays. */
static void test_trim(void **state)
{
    (void)state;
    for (int nc = 0; nc < 2; nc++) {
        pmd_params prm = {nc, nc, 15, 15};
        pmd_stream *d = pmd_deflater_new(&prm, NULL, true);
        pmd_stream *inf = pmd_inflater_new(&prm, false);
        /* Trimming a stream never used is harmless. */
        pmd_stream_trim(d);
        pmd_stream_trim(inf);
        uint8_t msg[2000];
        uint64_t rng = 99;
        fill_text(msg, sizeof msg, &rng);
        for (int m = 0; m < 4; m++) {
            pbuf c = {0}, out = {0};
            assert_int_equal(pmd_deflate_message(d, msg, sizeof msg, &c), 0);
            pmd_stream_trim(d);
            /* Half a message in, the inflater must keep its state. */
            size_t half = c.len / 2;
            assert_int_equal(pmd_inflate(inf, c.ptr, half, false, &out, sizeof msg), 0);
            pmd_stream_trim(inf);
            assert_int_equal(pmd_inflate(inf, c.ptr + half, c.len - half, true, &out, sizeof msg),
                             0);
            pmd_stream_trim(inf);
            assert_int_equal(out.len, sizeof msg);
            assert_memory_equal(out.ptr, msg, sizeof msg);
            pbuf_free(&c);
            pbuf_free(&out);
        }
        pmd_stream_free(d);
        pmd_stream_free(inf);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_basic),           cmocka_unit_test(test_server_params),
        cmocka_unit_test(test_server_declines),        cmocka_unit_test(test_server_grammar),
        cmocka_unit_test(test_client_offer),           cmocka_unit_test(test_client_accept),
        cmocka_unit_test(test_negotiation_round_trip), cmocka_unit_test(test_stream_round_trips),
        cmocka_unit_test(test_stream_small_messages),  cmocka_unit_test(test_inflate_bounded),
        cmocka_unit_test(test_inflate_corrupt),        cmocka_unit_test(test_trim),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
