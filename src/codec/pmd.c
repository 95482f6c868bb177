#include "pmd.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "base/util.h"
#include "parley/parley.h"

#define PMD_NAME "permessage-deflate"

/* Output is produced at most this many bytes at a time, so a bounded
 * inflate never reserves much more than its limit. */
#define PMD_INFLATE_STEP 16384

void pmd_config_init(pmd_config *c)
{
    memset(c, 0, sizeof *c);
    c->enabled = true;
    c->server_max_window_bits = 15;
    c->client_max_window_bits = 15;
    c->level = 1;
    c->mem_level = 8;
    c->threshold = 64;
}

/* A configured window size as something zlib's raw deflate can produce. */
static int clamp_bits(int v)
{
    if (v < 9) return 9;
    if (v > 15) return 15;
    return v;
}

/*
 * Sec-WebSocket-Extensions grammar (RFC 6455 section 9.1, list and
 * quoted-string rules of RFC 7230):
 *
 *   extension-list = 1#( token *( OWS ";" OWS extension-param ) )
 *   extension-param = token [ OWS "=" OWS ( token / quoted-string ) ]
 *
 * Empty list elements are tolerated as RFC 7230 section 7 asks. A quoted
 * value must unescape to a token. The iterator walks extensions and their
 * parameters in place; the value of a parameter is unescaped into a small
 * buffer because no value we care about is longer than two characters.
 */

typedef struct ext_iter {
    const char *s;
    size_t len;
    size_t pos;
    bool in_ext; /* params of the current extension may follow */
} ext_iter;

typedef struct ext_param {
    const char *name;
    size_t name_len;
    bool has_value;
    bool value_long; /* value did not fit in `value`: never one we accept */
    char value[8];
    size_t value_len;
} ext_param;

static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void skip_ows(ext_iter *it)
{
    while (it->pos < it->len && (it->s[it->pos] == ' ' || it->s[it->pos] == '\t')) it->pos++;
}

static size_t scan_token(ext_iter *it)
{
    size_t start = it->pos;
    while (it->pos < it->len && is_tchar((unsigned char)it->s[it->pos])) it->pos++;
    return it->pos - start;
}

static void value_push(ext_param *p, char c)
{
    if (p->value_len < sizeof p->value)
        p->value[p->value_len] = c;
    else
        p->value_long = true;
    p->value_len++;
}

/* Reads a token or quoted-string value. 0 or -1 (malformed). */
static int scan_value(ext_iter *it, ext_param *p)
{
    p->has_value = true;
    if (it->pos < it->len && it->s[it->pos] == '"') {
        it->pos++;
        for (;;) {
            if (it->pos >= it->len) return -1; /* unterminated */
            unsigned char c = (unsigned char)it->s[it->pos++];
            if (c == '"') break;
            if (c == '\\') {
                if (it->pos >= it->len) return -1;
                c = (unsigned char)it->s[it->pos++];
            }
            /* Whatever the escaping, RFC 6455 wants a token inside. */
            if (!is_tchar(c)) return -1;
            value_push(p, (char)c);
        }
        return p->value_len ? 0 : -1;
    }
    size_t start = it->pos;
    size_t n = scan_token(it);
    if (n == 0) return -1;
    for (size_t i = 0; i < n; i++) value_push(p, it->s[start + i]);
    return 0;
}

/* Next parameter of the current extension: 1 (filled), 0 (no more), -1
 * (malformed). */
static int param_next(ext_iter *it, ext_param *p)
{
    if (!it->in_ext) return 0;
    skip_ows(it);
    if (it->pos >= it->len || it->s[it->pos] == ',') {
        it->in_ext = false;
        return 0;
    }
    if (it->s[it->pos] != ';') return -1;
    it->pos++;
    skip_ows(it);
    memset(p, 0, sizeof *p);
    p->name = it->s + it->pos;
    p->name_len = scan_token(it);
    if (p->name_len == 0) return -1;
    skip_ows(it);
    if (it->pos < it->len && it->s[it->pos] == '=') {
        it->pos++;
        skip_ows(it);
        if (scan_value(it, p) < 0) return -1;
    }
    return 1;
}

/* Next extension: 1 (name set), 0 (end of list), -1 (malformed). Skips
 * parameters of the previous extension that the caller did not read. */
static int ext_next(ext_iter *it, const char **name, size_t *name_len)
{
    ext_param p;
    int r;
    while ((r = param_next(it, &p)) > 0) {
    }
    if (r < 0) return -1;
    for (;;) {
        skip_ows(it);
        if (it->pos >= it->len) return 0;
        if (it->s[it->pos] != ',') break;
        it->pos++;
    }
    *name = it->s + it->pos;
    *name_len = scan_token(it);
    if (*name_len == 0) return -1;
    it->in_ext = true;
    return 1;
}

static void iter_init(ext_iter *it, const char *s, size_t len)
{
    it->s = s;
    it->len = s ? len : 0;
    it->pos = 0;
    it->in_ext = false;
}

/* Whole-header syntax check: 0, or -1 when malformed anywhere (a
 * malformed header is refused outright, even after an acceptable offer). */
static int check_syntax(const char *s, size_t len, size_t *count)
{
    ext_iter it;
    iter_init(&it, s, len);
    const char *name;
    size_t name_len;
    int r;
    *count = 0;
    while ((r = ext_next(&it, &name, &name_len)) > 0) (*count)++;
    return r;
}

/* permessage-deflate parameters as written by one side. */
typedef struct pmd_req {
    bool snct, cnct; /* server_/client_no_context_takeover present */
    bool smwb, cmwb; /* server_/client_max_window_bits present */
    int smwb_val;    /* -1 when given without a value */
    int cmwb_val;
    bool bad; /* unknown, duplicate or ill-valued parameter */
} pmd_req;

/* "8".."15" exactly: no sign, no leading zeros. -1 otherwise. */
static int parse_wbits(const ext_param *p)
{
    if (!p->has_value || p->value_long) return -1;
    if (p->value_len == 1 && p->value[0] >= '8' && p->value[0] <= '9') return p->value[0] - '0';
    if (p->value_len == 2 && p->value[0] == '1' && p->value[1] >= '0' && p->value[1] <= '5')
        return 10 + p->value[1] - '0';
    return -1;
}

static void read_params(ext_iter *it, pmd_req *r)
{
    memset(r, 0, sizeof *r);
    r->smwb_val = r->cmwb_val = -1;
    ext_param p;
    while (param_next(it, &p) > 0) {
        if (pstr_ieqz(p.name, p.name_len, "server_no_context_takeover")) {
            if (r->snct || p.has_value) r->bad = true;
            r->snct = true;
        } else if (pstr_ieqz(p.name, p.name_len, "client_no_context_takeover")) {
            if (r->cnct || p.has_value) r->bad = true;
            r->cnct = true;
        } else if (pstr_ieqz(p.name, p.name_len, "server_max_window_bits")) {
            if (r->smwb) r->bad = true;
            r->smwb = true;
            r->smwb_val = parse_wbits(&p);
            if (r->smwb_val < 0) r->bad = true; /* a value is required */
        } else if (pstr_ieqz(p.name, p.name_len, "client_max_window_bits")) {
            if (r->cmwb) r->bad = true;
            r->cmwb = true;
            if (p.has_value) {
                r->cmwb_val = parse_wbits(&p);
                if (r->cmwb_val < 0) r->bad = true;
            }
        } else {
            r->bad = true;
        }
    }
}

int pmd_server_negotiate(const pmd_config *cfg, const char *offer, size_t len, pmd_params *out,
                         pbuf *response)
{
    size_t count;
    if (check_syntax(offer, len, &count) < 0) return PARLEY_EPROTO;
    if (!cfg->enabled || count == 0) return 0;

    ext_iter it;
    iter_init(&it, offer, len);
    const char *name;
    size_t name_len;
    while (ext_next(&it, &name, &name_len) > 0) {
        if (!pstr_ieqz(name, name_len, PMD_NAME)) continue;
        pmd_req r;
        read_params(&it, &r);
        /* zlib cannot deflate with a 256-byte window: decline, see pmd.h. */
        if (r.bad || r.smwb_val == 8) continue;

        int sbits = clamp_bits(cfg->server_max_window_bits);
        if (r.smwb && r.smwb_val < sbits) sbits = r.smwb_val;
        int cbits = 15;
        if (r.cmwb) {
            cbits = clamp_bits(cfg->client_max_window_bits);
            if (r.cmwb_val > 0 && r.cmwb_val < cbits) cbits = r.cmwb_val;
        }
        pmd_params p = {
            .server_no_context_takeover = r.snct || cfg->server_no_context_takeover,
            .client_no_context_takeover = r.cnct || cfg->client_no_context_takeover,
            .server_max_window_bits = sbits,
            .client_max_window_bits = cbits,
        };
        size_t mark = response->len;
        int rc = pbuf_append_str(response, PMD_NAME);
        if (!rc && p.server_no_context_takeover)
            rc = pbuf_append_str(response, "; server_no_context_takeover");
        if (!rc && p.client_no_context_takeover)
            rc = pbuf_append_str(response, "; client_no_context_takeover");
        /* Announcing our own cap unasked is allowed (RFC 7692 7.1.2.1) and
         * lets the client inflate with a smaller window. */
        if (!rc && (r.smwb || sbits < 15))
            rc = pbuf_appendf(response, "; server_max_window_bits=%d", sbits);
        /* Never unasked: the client may not understand it (7.1.2.2). */
        if (!rc && r.cmwb) rc = pbuf_appendf(response, "; client_max_window_bits=%d", cbits);
        if (rc) {
            response->len = mark;
            return rc;
        }
        *out = p;
        return 1;
    }
    return 0;
}

int pmd_client_offer(const pmd_config *cfg, pbuf *out)
{
    if (!cfg->enabled) return 0;
    size_t mark = out->len;
    int rc = pbuf_append_str(out, PMD_NAME);
    if (!rc && cfg->server_no_context_takeover)
        rc = pbuf_append_str(out, "; server_no_context_takeover");
    if (!rc && cfg->client_no_context_takeover)
        rc = pbuf_append_str(out, "; client_no_context_takeover");
    int sbits = clamp_bits(cfg->server_max_window_bits);
    if (!rc && sbits < 15) rc = pbuf_appendf(out, "; server_max_window_bits=%d", sbits);
    if (!rc && cfg->client_max_window_bits != 0) {
        int cbits = clamp_bits(cfg->client_max_window_bits);
        if (cbits < 15)
            rc = pbuf_appendf(out, "; client_max_window_bits=%d", cbits);
        else
            rc = pbuf_append_str(out, "; client_max_window_bits");
    }
    if (rc) out->len = mark;
    return rc;
}

int pmd_client_accept(const pmd_config *cfg, const char *resp, size_t len, pmd_params *out)
{
    size_t count;
    if (check_syntax(resp, len, &count) < 0) return PARLEY_EPROTO;
    if (count == 0) return 0;
    /* We offered exactly one extension, once: anything else was not asked
     * for. */
    if (!cfg->enabled || count != 1) return PARLEY_EPROTO;

    ext_iter it;
    iter_init(&it, resp, len);
    const char *name;
    size_t name_len;
    if (ext_next(&it, &name, &name_len) <= 0) return PARLEY_EPROTO;
    if (!pstr_ieqz(name, name_len, PMD_NAME)) return PARLEY_EPROTO;
    pmd_req r;
    read_params(&it, &r);
    if (r.bad) return PARLEY_EPROTO;

    /* A server that leaves out a server_max_window_bits we asked for has
     * not honoured it, but our inflater always has a 15-bit window, so
     * that costs us nothing: tolerate it (params say 15). */
    int asked_sbits = clamp_bits(cfg->server_max_window_bits);
    if (r.smwb && r.smwb_val > asked_sbits) return PARLEY_EPROTO;

    int cbits = 15;
    if (cfg->client_max_window_bits != 0) cbits = clamp_bits(cfg->client_max_window_bits);
    if (r.cmwb) {
        /* Not offered, no value (mandatory in a response), above what we
         * offered, or 8, which our deflater cannot honour. */
        if (cfg->client_max_window_bits == 0 || r.cmwb_val < 0 || r.cmwb_val > cbits ||
            r.cmwb_val == 8)
            return PARLEY_EPROTO;
        cbits = r.cmwb_val;
    }
    out->server_no_context_takeover = r.snct;
    /* Having offered not to keep our context, we keep our word even when
     * the server does not repeat it. */
    out->client_no_context_takeover = r.cnct || cfg->client_no_context_takeover;
    out->server_max_window_bits = r.smwb ? r.smwb_val : 15;
    out->client_max_window_bits = cbits;
    return 1;
}

/* Streams. */

struct pmd_stream {
    z_stream z;
    bool deflate;
    bool live;       /* z holds initialised zlib state */
    bool no_context; /* reset after every message */
    bool in_message; /* inflater: part of a message has been fed */
    int window_bits;
    int level;
    int mem_level;
};

pmd_stream *pmd_deflater_new(const pmd_params *p, const pmd_config *cfg, bool server)
{
    pmd_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->deflate = true;
    s->window_bits = clamp_bits(server ? p->server_max_window_bits : p->client_max_window_bits);
    s->no_context = server ? p->server_no_context_takeover : p->client_no_context_takeover;
    s->level = 1;
    s->mem_level = 8;
    if (cfg) {
        if (cfg->level >= 1 && cfg->level <= 9) s->level = cfg->level;
        if (cfg->mem_level >= 1 && cfg->mem_level <= 9) s->mem_level = cfg->mem_level;
    }
    return s;
}

pmd_stream *pmd_inflater_new(const pmd_params *p, bool server)
{
    pmd_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->window_bits = 15;
    s->no_context = server ? p->client_no_context_takeover : p->server_no_context_takeover;
    return s;
}

static void stream_end(pmd_stream *s)
{
    if (!s->live) return;
    if (s->deflate)
        deflateEnd(&s->z);
    else
        inflateEnd(&s->z);
    s->live = false;
    s->in_message = false;
}

void pmd_stream_free(pmd_stream *s)
{
    if (!s) return;
    stream_end(s);
    free(s);
}

void pmd_stream_trim(pmd_stream *s)
{
    if (s && s->no_context && !s->in_message) stream_end(s);
}

static int stream_start(pmd_stream *s)
{
    if (s->live) return 0;
    memset(&s->z, 0, sizeof s->z);
    int rc;
    if (s->deflate)
        rc = deflateInit2(&s->z, s->level, Z_DEFLATED, -s->window_bits, s->mem_level,
                          Z_DEFAULT_STRATEGY);
    else
        rc = inflateInit2(&s->z, -s->window_bits);
    if (rc == Z_MEM_ERROR) return PARLEY_ENOMEM;
    if (rc != Z_OK) return PARLEY_EIO;
    s->live = true;
    return 0;
}

int pmd_deflate_message(pmd_stream *s, const uint8_t *in, size_t len, pbuf *out)
{
    if (!s || !s->deflate) return PARLEY_EINVAL;
    int rc = stream_start(s);
    if (rc) return rc;
    size_t mark = out->len;
    size_t left = len;
    s->z.next_in = (Bytef *)(uintptr_t)in;
    s->z.avail_in = 0;
    for (;;) {
        if (s->z.avail_in == 0 && left) {
            uInt n = left > UINT_MAX ? UINT_MAX : (uInt)left;
            s->z.next_in = (Bytef *)(uintptr_t)in;
            s->z.avail_in = n;
            in += n;
            left -= n;
        }
        int flush = left ? Z_NO_FLUSH : Z_SYNC_FLUSH;
        /* Compressed output is rarely larger than the input plus a little
         * framing; reserving that much usually means one deflate call. */
        size_t want = PARLEY_MIN((size_t)s->z.avail_in + left, (size_t)1 << 20) + 64;
        rc = pbuf_reserve(out, want);
        if (rc) goto fail;
        size_t room = PARLEY_MIN(out->cap - out->len, (size_t)UINT_MAX);
        s->z.next_out = out->ptr + out->len;
        s->z.avail_out = (uInt)room;
        int zr = deflate(&s->z, flush);
        out->len += room - s->z.avail_out;
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            rc = PARLEY_EIO;
            goto fail;
        }
        if (flush == Z_SYNC_FLUSH && s->z.avail_out != 0) break;
    }
    static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
    if (out->len - mark < 4 || memcmp(out->ptr + out->len - 4, tail, 4) != 0) {
        rc = PARLEY_EIO;
        goto fail;
    }
    out->len -= 4;
    s->z.next_in = NULL;
    s->z.next_out = NULL;
    if (s->no_context) deflateReset(&s->z);
    return 0;
fail:
    out->len = mark;
    /* The peer can no longer follow our context: start over. */
    stream_end(s);
    return rc;
}

/* Makes room for `step` more bytes, growing geometrically but never past
 * `limit` bytes of capacity. */
static int reserve_capped(pbuf *b, size_t step, size_t limit)
{
    if (b->cap - b->len >= step) return 0;
    size_t need = b->len + step;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need && cap <= SIZE_MAX / 2) cap *= 2;
    if (cap > limit) cap = limit;
    if (cap < need) cap = need;
    uint8_t *p = realloc(b->ptr, cap);
    if (!p) return PARLEY_ENOMEM;
    b->ptr = p;
    b->cap = cap;
    return 0;
}

/* After a final block (BFINAL=1) the peer may go on with a new stream
 * (RFC 7692 7.2.3.4) whose distances still reach into the window.
 * inflateResetKeep (exported and declared by zlib.h, though undocumented)
 * restarts the stream but keeps the window in place. Saving and restoring
 * it with inflateGetDictionary/inflateSetDictionary would copy 64 KiB per
 * final block, which a peer could send every three bytes. */
static int restart_after_final(pmd_stream *s)
{
    return inflateResetKeep(&s->z) == Z_OK ? 0 : PARLEY_EPROTO;
}

static int inflate_feed(pmd_stream *s, const uint8_t *in, size_t len, pbuf *out, size_t max_out)
{
    size_t left = len;
    s->z.next_in = (Bytef *)(uintptr_t)in;
    s->z.avail_in = 0;
    /* One byte of room past the limit tells "exactly at the limit" from
     * "over it" without inflating further. */
    size_t limit = max_out == SIZE_MAX ? SIZE_MAX : max_out + 1;
    for (;;) {
        if (s->z.avail_in == 0 && left) {
            uInt n = left > UINT_MAX ? UINT_MAX : (uInt)left;
            s->z.next_in = (Bytef *)(uintptr_t)in;
            s->z.avail_in = n;
            in += n;
            left -= n;
        }
        if (out->len >= limit) return PARLEY_ELIMIT;
        size_t step = PARLEY_MIN((size_t)PMD_INFLATE_STEP, limit - out->len);
        int rc = reserve_capped(out, step, limit);
        if (rc) return rc;
        uInt in_before = s->z.avail_in;
        s->z.next_out = out->ptr + out->len;
        s->z.avail_out = (uInt)step;
        int zr = inflate(&s->z, Z_SYNC_FLUSH);
        size_t produced = step - s->z.avail_out;
        out->len += produced;
        if (zr == Z_MEM_ERROR) return PARLEY_ENOMEM;
        /* Over the limit wins over a corrupt stream found in the same call:
         * fed in small pieces, the limit would have been hit first, and the
         * verdict must not depend on how the input was chopped. */
        if (out->len > max_out) return PARLEY_ELIMIT;
        if (zr != Z_OK && zr != Z_BUF_ERROR && zr != Z_STREAM_END) return PARLEY_EPROTO;
        if (zr == Z_STREAM_END) {
            rc = restart_after_final(s);
            if (rc) return rc;
            continue;
        }
        if (s->z.avail_in == 0 && left == 0 && (s->z.avail_out != 0 || produced == 0)) return 0;
        if (produced == 0 && s->z.avail_in == in_before) return PARLEY_EPROTO; /* stuck */
    }
}

int pmd_inflate(pmd_stream *s, const uint8_t *in, size_t len, bool fin, pbuf *out, size_t max_out)
{
    if (!s || s->deflate) return PARLEY_EINVAL;
    int rc = stream_start(s);
    if (rc) return rc;
    s->in_message = true;
    rc = inflate_feed(s, in, len, out, max_out);
    if (!rc && fin) {
        static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
        rc = inflate_feed(s, tail, sizeof tail, out, max_out);
    }
    s->z.next_in = NULL;
    s->z.next_out = NULL;
    if (rc) {
        /* The message is lost and the connection with it; leave the stream
         * clean rather than half-way through a block. */
        inflateReset(&s->z);
        s->in_message = false;
        return rc;
    }
    if (fin) {
        s->in_message = false;
        if (s->no_context) inflateReset(&s->z);
    }
    return 0;
}
