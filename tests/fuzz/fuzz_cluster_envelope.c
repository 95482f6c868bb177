/* Fuzzes what arrives on the cluster adapter's Redis channels: the RESP
 * reader (first input byte even: the bytes are a stream of replies), the
 * MessagePack envelope decoder (low bits 01) and the broadcast-with-ack
 * request decoder (11). What the decoder accepts must be
 * well-formed (JSON arguments, bounded rooms and attachments inside the
 * input) and encode again to an envelope that decodes to the same event,
 * arguments, rooms and flags. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/envelope.h"
#include "cluster/resp.h"
#include "codec/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

/* The RESP reader (hiredis' with our reply objects): fed whole and fed
 * in pieces of 1..16 bytes (the size from the first byte), one reader
 * each, reused across inputs; both must give the same replies and end
 * the same way, and every reply must be within the limits. */
typedef struct resp_run {
    size_t replies;
    uint64_t hash;
    int rc;
} resp_run;

static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_val(uint64_t h, const presp_reader *rd, const presp_val *v)
{
    CHECK(v->type == '+' || v->type == '-' || v->type == ':' || v->type == '$');
    h = mix(h, &v->type, 1);
    if (v->type == ':') return mix(h, &v->i, sizeof v->i);
    if (!v->p) {
        CHECK(v->type == '$' && v->len == 0);
        return mix(h, "nil", 3);
    }
    CHECK(v->len <= rd->cap);
    if (v->len) CHECK(v->p >= rd->arena.ptr && v->p + v->len <= rd->arena.ptr + rd->arena.len);
    if (v->type == '$') CHECK(v->len <= rd->max_bulk);
    return mix(h, v->p, v->len);
}

static void resp_feed(presp_reader *rd, const uint8_t *p, size_t n, size_t piece, resp_run *out)
{
    memset(out, 0, sizeof *out);
    CHECK(presp_reader_reset(rd) == 0);
    for (size_t off = 0; off < n && out->rc == 0;) {
        size_t k = n - off < piece ? n - off : piece;
        out->rc = presp_feed(rd, p + off, k);
        off += k;
        const presp_reply *r;
        while (out->rc == 0 && (out->rc = presp_next(rd, &r)) > 0) {
            out->rc = 0;
            out->replies++;
            out->hash = mix(out->hash, &r->type, 1);
            out->hash = mix(out->hash, &r->nil, sizeof r->nil);
            if (r->type == '*') {
                CHECK(r->n <= PRESP_MAX_ELEMS);
                CHECK(!r->nil || r->n == 0);
                for (size_t i = 0; i < r->n; i++) out->hash = hash_val(out->hash, rd, &r->el[i]);
            } else if (!r->nil) {
                out->hash = hash_val(out->hash, rd, &r->v);
            }
        }
        CHECK(rd->arena.len <= rd->cap);
    }
}

static void fuzz_resp(const uint8_t *p, size_t n)
{
    static presp_reader whole, pieces;
    static int init;
    if (!init) {
        CHECK(presp_reader_init(&whole, 4096) == 0 && presp_reader_init(&pieces, 4096) == 0);
        init = 1;
    }
    if (n < 1) return;
    size_t piece = 1 + (p[0] & 15);
    resp_run a, b;
    resp_feed(&whole, p + 1, n - 1, n, &a);
    resp_feed(&pieces, p + 1, n - 1, piece, &b);
    CHECK(a.replies == b.replies && a.hash == b.hash && a.rc == b.rc);
}

static void fuzz_envelope(const uint8_t *p, size_t n)
{
    static penv_dec d, d2;
    static int init;
    if (!init) {
        CHECK(penv_dec_init(&d, NULL) == 0 && penv_dec_init(&d2, NULL) == 0);
        init = 1;
    }
    penv_msg m;
    if (penv_decode(&d, p, n, &m, NULL) != 0) return;
    json_val args;
    CHECK(json_parse(m.args, m.args_len, 64, &args, NULL) == 0 && args.type == JSON_ARRAY);
    CHECK(m.nbins <= d.lim.max_bins && m.nrooms <= d.lim.max_rooms && m.nexcept <= d.lim.max_rooms);
    for (size_t i = 0; i < m.nbins; i++)
        CHECK((const uint8_t *)m.bins[i].data >= p &&
              (const uint8_t *)m.bins[i].data + m.bins[i].len <= p + n);
    for (size_t i = 0; i < m.nrooms; i++) CHECK(strlen(m.rooms[i]) <= PENV_MAX_ROOM_LEN);
    /* Encode again and decode: the same message. */
    pbuf out = {0}, scratch = {0};
    penv_out o = {.uid = m.uid,
                  .nsp = m.nsp,
                  .event = m.event,
                  .args = &args,
                  .bins = m.bins,
                  .nbins = m.nbins,
                  .rooms = m.rooms,
                  .nrooms = m.nrooms,
                  .except = m.except,
                  .nexcept = m.nexcept,
                  .volatile_ = m.volatile_};
    int rc = penv_encode(&out, &scratch, &o, 64);
    CHECK(rc == 0);
    penv_msg m2;
    /* A literal {"_placeholder":true,"num":N} map next to N+1 binaries
     * becomes one more binary (which may then be over the limit). */
    rc = penv_decode(&d2, out.ptr, out.len, &m2, NULL);
    CHECK(rc == 0 || rc == -4);
    if (rc == 0) {
        CHECK(!strcmp(m.event, m2.event) && !strcmp(m.nsp, m2.nsp) && !strcmp(m.uid, m2.uid));
        CHECK(m.nrooms == m2.nrooms && m.nexcept == m2.nexcept && m.volatile_ == m2.volatile_);
        CHECK(m2.nbins >= m.nbins);
    }
    pbuf_free(&out);
    pbuf_free(&scratch);
}

/* Broadcasts with acknowledgements ({uid, requestId, type: 7, packet, opts}). */
static void fuzz_request(const uint8_t *p, size_t n)
{
    static penv_dec d;
    static int init;
    if (!init) {
        CHECK(penv_dec_init(&d, NULL) == 0);
        init = 1;
    }
    penv_msg m;
    if (penv_decode_request(&d, p, n, &m, NULL) != 0) return;
    json_val args;
    CHECK(json_parse(m.args, m.args_len, 64, &args, NULL) == 0 && args.type == JSON_ARRAY);
    CHECK(m.request_id && m.request_id[0] && strlen(m.request_id) <= PENV_MAX_UID);
    CHECK(m.uid[0] && m.event[0] && m.nsp[0] == '/');
    CHECK(m.nbins <= d.lim.max_bins && m.nrooms <= d.lim.max_rooms);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536) return 0;
    if ((data[0] & 3) == 3)
        fuzz_request(data + 1, size - 1);
    else if (data[0] & 1)
        fuzz_envelope(data + 1, size - 1);
    else
        fuzz_resp(data + 1, size - 1);
    return 0;
}
