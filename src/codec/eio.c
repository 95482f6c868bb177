#include "codec/eio.h"

#include <string.h>

#include "base/util.h"
#include "parley/parley.h"

int eio_parse_text(uint8_t *s, size_t len, eio_packet *out)
{
    if (len == 0 || s[0] < '0' || s[0] > '6') return PARLEY_EPROTO;
    out->type = s[0] - '0';
    out->binary = false;
    out->data = s + 1;
    out->len = len - 1;
    return 0;
}

void eio_payload_init(eio_payload *it, uint8_t *body, size_t len)
{
    it->p = body;
    it->end = body + len;
    it->done = false;
}

int eio_payload_next(eio_payload *it, eio_packet *out)
{
    if (it->done) return 0;
    /* Not done but nothing left: the body was empty or ended with a
     * separator. Either way an empty packet, which the reference parser
     * also rejects. The state stays as it is, so the error repeats. */
    uint8_t *p = it->p;
    size_t avail = (size_t)(it->end - p);
    uint8_t *sep = avail ? memchr(p, EIO_SEPARATOR, avail) : NULL;
    size_t n = sep ? (size_t)(sep - p) : avail;
    if (n == 0) return PARLEY_EPROTO;
    if (p[0] == 'b') {
        /* Decoded in place: base64 output is shorter than its input and
         * base64_decode reads each group before writing its bytes. */
        long d = base64_decode((const char *)p + 1, n - 1, p + 1, n - 1);
        if (d < 0) {
            it->p = it->end;
            return PARLEY_EPROTO;
        }
        out->type = EIO_MESSAGE;
        out->binary = true;
        out->data = p + 1;
        out->len = (size_t)d;
    } else if (eio_parse_text(p, n, out)) {
        it->p = it->end;
        return PARLEY_EPROTO;
    }
    if (sep) {
        it->p = sep + 1;
    } else {
        it->p = it->end;
        it->done = true;
    }
    return 1;
}

size_t eio_payload_size(bool first, bool binary, size_t len)
{
    size_t body;
    if (binary) {
        /* base64_encoded_len would wrap for absurd lengths: saturate so a
         * caller comparing against a limit still sees "too big". */
        if (len > (SIZE_MAX - 8) / 4 * 3) return SIZE_MAX;
        body = base64_encoded_len(len);
    } else {
        body = len;
    }
    size_t head = (first ? 0 : 1) + 1;
    if (body > SIZE_MAX - head) return SIZE_MAX;
    return head + body;
}

int eio_payload_append(pbuf *out, bool first, int type, bool binary, const uint8_t *data,
                       size_t len)
{
    if (type < EIO_OPEN || type > EIO_NOOP) return PARLEY_EINVAL;
    if (binary && type != EIO_MESSAGE) return PARLEY_EINVAL;
    /* A separator inside a text packet would split it in two at the
     * receiver: a namespace or a raw message carrying 0x1e could inject
     * packets. JSON never holds a raw 0x1e, so only hostile text is
     * refused. */
    if (!binary && len && memchr(data, EIO_SEPARATOR, len)) return PARLEY_EINVAL;
    size_t need = eio_payload_size(first, binary, len);
    /* +1: base64_encode writes a NUL after its text (not counted in len). */
    if (need >= SIZE_MAX - 1 || pbuf_reserve(out, need + 1)) return PARLEY_ENOMEM;
    uint8_t *o = out->ptr + out->len;
    if (!first) *o++ = EIO_SEPARATOR;
    if (binary) {
        *o++ = 'b';
        o += base64_encode(data, len, (char *)o);
    } else {
        *o++ = (uint8_t)('0' + type);
        if (len) memcpy(o, data, len);
        o += len;
    }
    out->len = (size_t)(o - out->ptr);
    return 0;
}
