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

static void fuzz_resp(const uint8_t *p, size_t n)
{
    size_t off = 0;
    while (off < n) {
        presp_reply r;
        size_t need = 0;
        long took = presp_parse(p + off, n - off, 4096, &r, &need);
        if (took <= 0) break;
        CHECK((size_t)took <= n - off);
        if (r.type == '*') {
            CHECK(r.n <= PRESP_MAX_ELEMS);
            for (size_t i = 0; i < r.n; i++)
                if (r.el[i].p)
                    CHECK(r.el[i].p >= p + off && r.el[i].p + r.el[i].len <= p + off + took);
        }
        off += (size_t)took;
    }
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
