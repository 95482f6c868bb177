#include "ws.h"

#include <string.h>

#include "codec/pmd.h"
#include "codec/utf8.h"
#include "parley/parley.h"

#define WS_DEFAULT_LIMIT ((uint64_t)16 << 20)

enum {
    ST_HEADER = 0, /* the next frame's header starts the input */
    ST_PAYLOAD,    /* header accepted; payload arriving */
    ST_FAILED,     /* an error was returned; it is returned again */
    ST_CLOSED,     /* the peer's close frame was delivered */
};

bool ws_close_code_valid(unsigned code)
{
    if (code >= 1000 && code <= 1003) return true;
    if (code >= 1007 && code <= 1014) return true;
    return code >= 3000 && code <= 4999;
}

void ws_parser_init(ws_parser *p, bool server)
{
    memset(p, 0, sizeof *p);
    p->server = server;
    p->max_frame = WS_DEFAULT_LIMIT;
    p->max_message = WS_DEFAULT_LIMIT;
}

void ws_parser_free(ws_parser *p)
{
    pbuf_free(&p->msg);
}

void ws_parser_trim(ws_parser *p, size_t keep)
{
    if (!p->msg_assembling && p->msg.cap > keep) pbuf_free(&p->msg);
}

uint64_t ws_parser_frame_need(const ws_parser *p)
{
    if (p->state != ST_PAYLOAD) return 0;
    return p->hdr_len + p->frame_len;
}

/* Failure reasons are kept as an index into this table (one byte in the
 * parser instead of a pointer). */
static const char *const reasons[] = {
    "protocol error",
    "RSV1 on a continuation frame",
    "RSV1 on a control frame",
    "RSV1 without a negotiated extension",
    "RSV2/RSV3 set",
    "close frame of 1 byte",
    "continuation without a message",
    "control frame over 125 bytes",
    "corrupt deflate stream",
    "fragmented control frame",
    "frame length top bit set",
    "frame too big",
    "inflate failed",
    "invalid UTF-8 in close reason",
    "invalid UTF-8 in text message",
    "invalid close code",
    "message too big",
    "new message inside a fragmented message",
    "non-minimal frame length",
    "out of memory",
    "reserved opcode",
    "truncated UTF-8 in text message",
};

const char *ws_parser_error(const ws_parser *p)
{
    return p->state == ST_FAILED ? reasons[p->error_id] : NULL;
}

static long fail(ws_parser *p, int err, uint16_t code, const char *why)
{
    p->state = ST_FAILED;
    p->fail_rc = (int8_t)err;
    p->close_code = code;
    p->error_id = 0;
    for (size_t i = 1; i < sizeof reasons / sizeof reasons[0]; i++)
        if (strcmp(reasons[i], why) == 0) p->error_id = (uint8_t)i;
    return err;
}

static long proto(ws_parser *p, const char *why)
{
    return fail(p, PARLEY_EPROTO, WS_CLOSE_PROTOCOL, why);
}

static bool opcode_known(int op)
{
    switch (op) {
    case WS_OP_CONT:
    case WS_OP_TEXT:
    case WS_OP_BINARY:
    case WS_OP_CLOSE:
    case WS_OP_PING:
    case WS_OP_PONG:
        return true;
    default:
        return false;
    }
}

/* Checks the frame header at d[0, len) field by field as its bytes arrive,
 * so a bad header fails before the rest of it is even sent. Returns the
 * header length once the whole header is present and acceptable (and
 * records it in p), 0 when more bytes are needed, or an error. Nothing is
 * recorded before the whole header is there: the caller presents these
 * bytes again. */
static long parse_header(ws_parser *p, const uint8_t *d, size_t len)
{
    if (len < 1) return 0;
    bool fin = d[0] & 0x80;
    bool rsv1 = d[0] & 0x40;
    int op = d[0] & 0x0f;
    if (d[0] & 0x30) return proto(p, "RSV2/RSV3 set");
    if (!opcode_known(op)) return proto(p, "reserved opcode");
    bool control = op & 0x8;
    if (control) {
        if (!fin) return proto(p, "fragmented control frame");
        if (rsv1) return proto(p, "RSV1 on a control frame");
    } else if (op == WS_OP_CONT) {
        if (!p->msg_opcode) return proto(p, "continuation without a message");
        if (rsv1) return proto(p, "RSV1 on a continuation frame");
    } else {
        if (p->msg_opcode) return proto(p, "new message inside a fragmented message");
        if (rsv1 && !p->inflater) return proto(p, "RSV1 without a negotiated extension");
    }
    if (len < 2) return 0;
    bool masked = d[1] & 0x80;
    if (masked != p->server)
        return proto(p, p->server ? "unmasked client frame" : "masked server frame");
    uint64_t plen = d[1] & 0x7f;
    size_t hl = 2;
    if (control && plen > 125) return proto(p, "control frame over 125 bytes");
    if (plen == 126) {
        if (len < 4) return 0;
        plen = (uint64_t)d[2] << 8 | d[3];
        if (plen < 126) return proto(p, "non-minimal frame length");
        hl = 4;
    } else if (plen == 127) {
        if (len < 10) return 0;
        plen = 0;
        for (int i = 2; i < 10; i++) plen = plen << 8 | d[i];
        if (plen >> 63) return proto(p, "frame length top bit set");
        if (plen <= 0xffff) return proto(p, "non-minimal frame length");
        hl = 10;
    }
    /* Limits from the header alone, before any payload is buffered. */
    if (plen > p->max_frame || plen > SIZE_MAX - WS_MAX_HEADER)
        return fail(p, PARLEY_ELIMIT, WS_CLOSE_TOO_BIG, "frame too big");
    if (!control) {
        /* Compressed messages are bounded by their inflated size instead. */
        bool compressed = op == WS_OP_CONT ? p->msg_compressed : rsv1;
        uint64_t have = op == WS_OP_CONT ? p->msg.len : 0;
        if (!compressed && (plen > p->max_message || have > p->max_message - plen))
            return fail(p, PARLEY_ELIMIT, WS_CLOSE_TOO_BIG, "message too big");
    }
    if (masked) hl += 4;
    if (len < hl) return 0;

    p->hdr_len = (uint8_t)hl;
    p->frame_opcode = (uint8_t)op;
    p->frame_fin = fin;
    p->frame_rsv1 = rsv1;
    p->frame_masked = masked;
    if (masked) memcpy(p->mask, d + hl - 4, 4);
    p->frame_len = (uint32_t)plen; /* <= max_frame, checked above */
    p->frame_done = 0;
    if (!control && op != WS_OP_CONT) {
        p->msg_opcode = op;
        p->msg_compressed = rsv1;
        /* Only a single uncompressed frame can be handed out in place. */
        p->msg_assembling = !fin || rsv1;
        p->utf8 = UTF8_OK;
        if (p->msg_assembling) p->msg.len = 0;
    }
    return (long)hl;
}

/* Maps a pmd_inflate failure; inflated bytes were validated first, so
 * invalid text wins over a limit hit in the same call, whatever the
 * chunking. */
static long inflate_error(ws_parser *p, int rc)
{
    if (rc == PARLEY_ELIMIT) return fail(p, PARLEY_ELIMIT, WS_CLOSE_TOO_BIG, "message too big");
    if (rc == PARLEY_EPROTO)
        return fail(p, PARLEY_EPROTO, WS_CLOSE_INVALID_DATA, "corrupt deflate stream");
    return fail(p, rc, WS_CLOSE_INTERNAL, "inflate failed");
}

static long check_text(ws_parser *p, const uint8_t *s, size_t n)
{
    if (p->msg_opcode != WS_OP_TEXT) return 0;
    p->utf8 = utf8_step(p->utf8, s, n);
    if (p->utf8 == UTF8_REJECT)
        return fail(p, PARLEY_EPROTO, WS_CLOSE_INVALID_DATA, "invalid UTF-8 in text message");
    return 0;
}

static long inflate_into_msg(ws_parser *p, const uint8_t *in, size_t n, bool fin)
{
    size_t before = p->msg.len;
    int rc = pmd_inflate(p->inflater, in, n, fin, &p->msg, (size_t)p->max_message);
    if (p->msg.len > before) {
        long r = check_text(p, p->msg.ptr + before, p->msg.len - before);
        if (r < 0) return r;
    }
    return rc ? inflate_error(p, rc) : 0;
}

/* Unmasks and checks the payload bytes that arrived since the last call.
 * `avail` payload bytes are present at pl; the first frame_done of them
 * were handled before (and are already unmasked). */
static long feed_payload(ws_parser *p, uint8_t *pl, size_t avail)
{
    if (avail <= p->frame_done) return 0;
    size_t done = (size_t)p->frame_done;
    uint8_t *chunk = pl + done;
    size_t n = avail - done;
    if (p->frame_masked) ws_mask(chunk, n, p->mask, done);
    p->frame_done = avail;
    if (p->frame_opcode & 0x8) return 0; /* control: checked once complete */
    if (!p->msg_assembling) return check_text(p, chunk, n);
    if (p->msg_compressed) return inflate_into_msg(p, chunk, n, false);
    if (pbuf_append(&p->msg, chunk, n))
        return fail(p, PARLEY_ENOMEM, WS_CLOSE_INTERNAL, "out of memory");
    return check_text(p, chunk, n);
}

static long finish_control(ws_parser *p, uint8_t *pl, ws_event *ev)
{
    size_t n = (size_t)p->frame_len;
    ev->opcode = p->frame_opcode;
    ev->data = pl;
    ev->len = n;
    if (p->frame_opcode == WS_OP_PING) {
        ev->type = WS_EV_PING;
        return 0;
    }
    if (p->frame_opcode == WS_OP_PONG) {
        ev->type = WS_EV_PONG;
        return 0;
    }
    if (n == 0) {
        ev->close_code = WS_CLOSE_NO_STATUS;
    } else {
        if (n == 1) return proto(p, "close frame of 1 byte");
        unsigned code = (unsigned)pl[0] << 8 | pl[1];
        if (!ws_close_code_valid(code)) return proto(p, "invalid close code");
        if (!utf8_valid(pl + 2, n - 2))
            return fail(p, PARLEY_EPROTO, WS_CLOSE_INVALID_DATA, "invalid UTF-8 in close reason");
        ev->close_code = (uint16_t)code;
        ev->data = pl + 2;
        ev->len = n - 2;
    }
    ev->type = WS_EV_CLOSE;
    p->state = ST_CLOSED;
    return 0;
}

static long finish_data(ws_parser *p, uint8_t *pl, ws_event *ev)
{
    if (!p->frame_fin) return 0;
    if (p->msg_compressed) {
        long r = inflate_into_msg(p, NULL, 0, true);
        if (r < 0) return r;
    }
    if (p->msg_opcode == WS_OP_TEXT && p->utf8 != UTF8_OK)
        return fail(p, PARLEY_EPROTO, WS_CLOSE_INVALID_DATA, "truncated UTF-8 in text message");
    ev->type = WS_EV_MESSAGE;
    ev->opcode = p->msg_opcode;
    ev->was_compressed = p->msg_compressed;
    if (p->msg_assembling) {
        /* Never NULL, so that callers may pass it to memcpy. */
        ev->data = p->msg.len ? p->msg.ptr : pl;
        ev->len = p->msg.len;
    } else {
        ev->data = pl;
        ev->len = (size_t)p->frame_len;
    }
    p->msg_opcode = 0;
    p->msg_compressed = false;
    p->msg_assembling = false;
    return 0;
}

long ws_parse(ws_parser *p, uint8_t *data, size_t len, ws_event *ev)
{
    memset(ev, 0, sizeof *ev);
    if (p->state == ST_FAILED) return p->fail_rc;
    if (p->state == ST_CLOSED) return 0;
    if (len == 0) return 0; /* no frame is shorter than 2 bytes; data may be NULL */
    size_t off = 0;
    for (;;) {
        uint8_t *d = data + off;
        size_t n = len - off;
        if (p->state == ST_HEADER) {
            long h = parse_header(p, d, n);
            if (h <= 0) return h < 0 ? h : (long)off;
            p->state = ST_PAYLOAD;
        }
        if (n < p->hdr_len) return (long)off; /* caller presented less than before */
        uint64_t avail = n - p->hdr_len;
        if (avail > p->frame_len) avail = p->frame_len;
        uint8_t *pl = d + p->hdr_len;
        long r = feed_payload(p, pl, (size_t)avail);
        if (r < 0) return r;
        if (p->frame_done < p->frame_len) return (long)off;

        if (p->frame_opcode & 0x8)
            r = finish_control(p, pl, ev);
        else
            r = finish_data(p, pl, ev);
        if (r < 0) return r;
        off += p->hdr_len + (size_t)p->frame_len;
        if (p->state == ST_PAYLOAD) p->state = ST_HEADER;
        p->hdr_len = 0;
        p->frame_len = 0;
        p->frame_done = 0;
        if (ev->type != WS_EV_NONE || p->state != ST_HEADER) return (long)off;
    }
}

/* Writers. */

size_t ws_frame_header(uint8_t *out, int opcode, bool fin, bool rsv1, uint64_t len,
                       const uint8_t *mask)
{
    size_t n = 0;
    out[n++] = (uint8_t)((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (opcode & 0x0f));
    uint8_t m = mask ? 0x80 : 0;
    if (len <= 125) {
        out[n++] = (uint8_t)(m | len);
    } else if (len <= 0xffff) {
        out[n++] = m | 126;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    } else {
        out[n++] = m | 127;
        for (int shift = 56; shift >= 0; shift -= 8) out[n++] = (uint8_t)(len >> shift);
    }
    if (mask) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

void ws_mask(uint8_t *data, size_t len, const uint8_t mask[4], size_t offset)
{
    /* The key rotated to `offset`, spread over a word: payloads are XORed
     * eight bytes at a time, through memcpy so any alignment is fine. */
    uint8_t m[8];
    for (size_t i = 0; i < 8; i++) m[i] = mask[(offset + i) & 3];
    uint64_t w;
    memcpy(&w, m, 8);
    size_t i = 0;
    for (; len - i >= 32; i += 32) {
        uint64_t x[4];
        memcpy(x, data + i, 32);
        x[0] ^= w;
        x[1] ^= w;
        x[2] ^= w;
        x[3] ^= w;
        memcpy(data + i, x, 32);
    }
    for (; len - i >= 8; i += 8) {
        uint64_t x;
        memcpy(&x, data + i, 8);
        x ^= w;
        memcpy(data + i, &x, 8);
    }
    for (; i < len; i++) data[i] ^= m[i & 7];
}

int ws_frame_append(pbuf *out, int opcode, bool fin, bool rsv1, const void *payload, size_t len,
                    const uint8_t *mask)
{
    if (len > SIZE_MAX - WS_MAX_HEADER) return PARLEY_ENOMEM;
    int rc = pbuf_reserve(out, WS_MAX_HEADER + len);
    if (rc) return rc;
    size_t h = ws_frame_header(out->ptr + out->len, opcode, fin, rsv1, len, mask);
    uint8_t *pl = out->ptr + out->len + h;
    if (len) memcpy(pl, payload, len);
    if (mask) ws_mask(pl, len, mask, 0);
    out->len += h + len;
    return 0;
}

int ws_message_append(pbuf *out, pmd_stream *deflater, size_t threshold, int opcode,
                      const void *payload, size_t len, const uint8_t *mask)
{
    if (!deflater || len < threshold)
        return ws_frame_append(out, opcode, true, false, payload, len, mask);
    /* Compress straight into `out` behind room for the largest header,
     * then slide the payload down to the header's real size: no scratch
     * buffer per message. */
    size_t base = out->len;
    int rc = pbuf_reserve(out, WS_MAX_HEADER);
    if (rc) return rc;
    out->len += WS_MAX_HEADER;
    rc = pmd_deflate_message(deflater, payload, len, out);
    if (rc) {
        out->len = base;
        return rc;
    }
    size_t clen = out->len - base - WS_MAX_HEADER;
    uint8_t hdr[WS_MAX_HEADER];
    size_t h = ws_frame_header(hdr, opcode, true, true, clen, mask);
    memmove(out->ptr + base + h, out->ptr + base + WS_MAX_HEADER, clen);
    memcpy(out->ptr + base, hdr, h);
    out->len = base + h + clen;
    if (mask) ws_mask(out->ptr + base + h, clen, mask, 0);
    return 0;
}

size_t ws_close_payload(uint8_t *out, uint16_t code, const char *reason, size_t reason_len)
{
    /* A reason can only follow a code. */
    if (code == 0) return 0;
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    if (!reason) return 2;
    size_t n = reason_len < 123 ? reason_len : 123;
    /* Cutting inside a character would make the peer fail us with 1007. */
    if (n < reason_len)
        while (n > 0 && ((uint8_t)reason[n] & 0xC0) == 0x80) n--;
    if (!utf8_valid((const uint8_t *)reason, n)) return 2;
    memcpy(out + 2, reason, n);
    return 2 + n;
}
