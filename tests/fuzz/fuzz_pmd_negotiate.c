/* libFuzzer target: permessage-deflate negotiation. Byte 0 picks the
 * configurations, the rest is a Sec-WebSocket-Extensions value given to
 * the server as an offer and to the client as a response. Whatever the
 * server accepts, a client that offered everything must accept with the
 * same parameters, and the streams built from them must round-trip. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "base/buf.h"
#include "codec/pmd.h"
#include "parley/parley.h"

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) __builtin_trap();                                                                \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool params_sane(const pmd_params *p)
{
    return p->server_max_window_bits >= 8 && p->server_max_window_bits <= 15 &&
           p->client_max_window_bits >= 8 && p->client_max_window_bits <= 15;
}

static bool same_params(const pmd_params *a, const pmd_params *b)
{
    return a->server_no_context_takeover == b->server_no_context_takeover &&
           a->client_no_context_takeover == b->client_no_context_takeover &&
           a->server_max_window_bits == b->server_max_window_bits &&
           a->client_max_window_bits == b->client_max_window_bits;
}

static void streams_round_trip(const pmd_params *p, const uint8_t *msg, size_t len)
{
    pmd_config cfg;
    pmd_config_init(&cfg);
    for (int server = 0; server < 2; server++) {
        pmd_stream *d = pmd_deflater_new(p, &cfg, server);
        pmd_stream *inf = pmd_inflater_new(p, !server);
        CHECK(d && inf);
        for (int m = 0; m < 2; m++) {
            pbuf c = {0}, out = {0};
            CHECK(pmd_deflate_message(d, msg, len, &c) == 0);
            CHECK(pmd_inflate(inf, c.ptr, c.len, true, &out, len) == 0);
            CHECK(out.len == len && (len == 0 || memcmp(out.ptr, msg, len) == 0));
            pbuf_free(&c);
            pbuf_free(&out);
            pmd_stream_trim(d);
            pmd_stream_trim(inf);
        }
        pmd_stream_free(d);
        pmd_stream_free(inf);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t opt = data[0];
    const char *hdr = (const char *)data + 1;
    size_t n = size - 1;

    pmd_config sc;
    pmd_config_init(&sc);
    sc.server_no_context_takeover = opt & 1;
    sc.client_no_context_takeover = opt & 2;
    sc.server_max_window_bits = (opt & 4) ? 10 : 15;
    sc.client_max_window_bits = (opt & 8) ? 11 : 15;

    /* Server side. */
    pmd_params sp;
    pbuf resp = {0};
    int rc = pmd_server_negotiate(&sc, hdr, n, &sp, &resp);
    CHECK(rc == 1 || rc == 0 || rc == PARLEY_EPROTO);
    if (rc == 1) {
        CHECK(params_sane(&sp));
        CHECK(sp.server_max_window_bits >= 9 && sp.server_max_window_bits <= 10 + 5 * !(opt & 4));
        if (opt & 1) CHECK(sp.server_no_context_takeover);
        if (opt & 2) CHECK(sp.client_no_context_takeover);
        /* A client that offered every parameter bare accepts the answer,
         * unless it would have to deflate with an 8-bit window. */
        pmd_config cc;
        pmd_config_init(&cc);
        pmd_params cp;
        int ca = pmd_client_accept(&cc, (const char *)resp.ptr, resp.len, &cp);
        if (sp.client_max_window_bits == 8) {
            CHECK(ca == PARLEY_EPROTO);
        } else {
            CHECK(ca == 1);
            CHECK(same_params(&cp, &sp));
            streams_round_trip(&sp, data, size < 3000 ? size : 3000);
        }
        /* Our response is itself a well-formed, acceptable offer. */
        pmd_params again;
        pbuf r2 = {0};
        CHECK(pmd_server_negotiate(&sc, (const char *)resp.ptr, resp.len, &again, &r2) == 1);
        pbuf_free(&r2);
    } else {
        CHECK(resp.len == 0);
    }
    pbuf_free(&resp);

    /* Client side, the input as the server's answer. */
    pmd_config cc;
    pmd_config_init(&cc);
    cc.server_no_context_takeover = opt & 16;
    cc.client_no_context_takeover = opt & 32;
    cc.server_max_window_bits = (opt & 64) ? 12 : 15;
    cc.client_max_window_bits = (opt & 128) ? 0 : 13;
    pmd_params cp;
    rc = pmd_client_accept(&cc, hdr, n, &cp);
    CHECK(rc == 1 || rc == 0 || rc == PARLEY_EPROTO);
    if (rc == 1) {
        CHECK(params_sane(&cp));
        CHECK(cp.client_max_window_bits >= 9);
        /* 15 when the server left it out: tolerated, see pmd.c. */
        CHECK(cp.server_max_window_bits <= cc.server_max_window_bits ||
              cp.server_max_window_bits == 15);
        if (opt & 128)
            CHECK(cp.client_max_window_bits == 15);
        else
            CHECK(cp.client_max_window_bits <= 13);
        if (opt & 32) CHECK(cp.client_no_context_takeover);
    }

    /* The configured offer is accepted by a configured server. */
    pbuf offer = {0};
    CHECK(pmd_client_offer(&cc, &offer) == 0);
    pbuf r3 = {0};
    CHECK(pmd_server_negotiate(&sc, (const char *)offer.ptr, offer.len, &sp, &r3) == 1);
    CHECK(pmd_client_accept(&cc, (const char *)r3.ptr, r3.len, &cp) == 1);
    CHECK(same_params(&sp, &cp));
    pbuf_free(&offer);
    pbuf_free(&r3);
    return 0;
}
