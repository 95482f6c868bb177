/*
 * MessagePack envelope of the Socket.IO Redis adapter (see envelope.h).
 * The format: https://github.com/msgpack/msgpack/blob/master/spec.md; the
 * forms notepack.io 3.0.1 writes: lib/encode.js (read, not copied).
 */
#include "cluster/envelope.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "base/util.h"
#include "codec/utf8.h"
#include "parley/parley.h"

void penv_limits_init(penv_limits *l)
{
    l->max_message = 1000000;
    l->max_rooms = 64;
    l->max_depth = 32;
    l->max_bins = 10;
    l->max_items = 100000;
}

int penv_dec_init(penv_dec *d, const penv_limits *lim)
{
    memset(d, 0, sizeof *d);
    if (lim)
        d->lim = *lim;
    else
        penv_limits_init(&d->lim);
    if (d->lim.max_rooms > PENV_HARD_MAX_ROOMS) d->lim.max_rooms = PENV_HARD_MAX_ROOMS;
    if (d->lim.max_bins > PENV_HARD_MAX_BINS) d->lim.max_bins = PENV_HARD_MAX_BINS;
    size_t n = d->lim.max_rooms ? d->lim.max_rooms : 1;
    d->room_off = pcalloc(n, sizeof *d->room_off);
    d->except_off = pcalloc(n, sizeof *d->except_off);
    d->room_ptr = pcalloc(n, sizeof *d->room_ptr);
    d->except_ptr = pcalloc(n, sizeof *d->except_ptr);
    if (!d->room_off || !d->except_off || !d->room_ptr || !d->except_ptr) {
        penv_dec_free(d);
        return PARLEY_ENOMEM;
    }
    return 0;
}

void penv_dec_free(penv_dec *d)
{
    pbuf_free(&d->json);
    pbuf_free(&d->strs);
    free(d->room_off);
    free(d->except_off);
    free(d->room_ptr);
    free(d->except_ptr);
    memset(d, 0, sizeof *d);
}

/* ---- reading ---- */

enum { MP_NIL, MP_BOOL, MP_INT, MP_UINT, MP_FLOAT, MP_STR, MP_BIN, MP_ARRAY, MP_MAP, MP_EXT };

typedef struct mp_val {
    int kind;
    bool b;
    int64_t i;
    uint64_t u;
    double f;
    const uint8_t *p; /* str, bin, ext payload */
    uint32_t n;       /* its length, or the array / map count */
} mp_val;

typedef struct rd {
    const uint8_t *p, *end;
    unsigned items;
    const penv_limits *lim;
    const char *why;
} rd;

static uint64_t be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

static int fail(rd *r, int err, const char *why)
{
    if (!r->why) r->why = why;
    return err;
}

/* Takes n bytes: NULL when fewer are left. */
static const uint8_t *take(rd *r, size_t n)
{
    if ((size_t)(r->end - r->p) < n) return NULL;
    const uint8_t *q = r->p;
    r->p += n;
    return q;
}

/* Reads one value's head (and the payload of a str, bin or ext). */
static int rd_val(rd *r, mp_val *v)
{
    if (++r->items > r->lim->max_items) return fail(r, PARLEY_ELIMIT, "too many values");
    const uint8_t *q = take(r, 1);
    if (!q) return fail(r, PARLEY_EPROTO, "truncated");
    uint8_t t = *q;
    unsigned lenb = 0; /* width of a length field */
    memset(v, 0, sizeof *v);
    if (t <= 0x7f) {
        v->kind = MP_INT;
        v->i = t;
        return 0;
    }
    if (t >= 0xe0) {
        v->kind = MP_INT;
        v->i = (int8_t)t;
        return 0;
    }
    if ((t & 0xe0) == 0xa0) {
        v->kind = MP_STR;
        v->n = t & 0x1f;
        goto payload;
    }
    if ((t & 0xf0) == 0x90 || (t & 0xf0) == 0x80) {
        v->kind = (t & 0xf0) == 0x90 ? MP_ARRAY : MP_MAP;
        v->n = t & 0x0f;
        goto count;
    }
    switch (t) {
    case 0xc0:
        v->kind = MP_NIL;
        return 0;
    case 0xc2:
    case 0xc3:
        v->kind = MP_BOOL;
        v->b = t == 0xc3;
        return 0;
    case 0xc4:
    case 0xc5:
    case 0xc6:
        v->kind = MP_BIN;
        lenb = 1u << (t - 0xc4);
        break;
    case 0xd9:
    case 0xda:
    case 0xdb:
        v->kind = MP_STR;
        lenb = 1u << (t - 0xd9);
        break;
    case 0xdc:
    case 0xdd:
        v->kind = MP_ARRAY;
        lenb = t == 0xdc ? 2 : 4;
        break;
    case 0xde:
    case 0xdf:
        v->kind = MP_MAP;
        lenb = t == 0xde ? 2 : 4;
        break;
    case 0xc7:
    case 0xc8:
    case 0xc9: {
        v->kind = MP_EXT;
        unsigned w = 1u << (t - 0xc7);
        const uint8_t *l = take(r, w);
        if (!l) return fail(r, PARLEY_EPROTO, "truncated");
        uint64_t n = be(l, w);
        if (!take(r, 1) || n > (uint64_t)(r->end - r->p))
            return fail(r, PARLEY_EPROTO, "truncated");
        v->n = (uint32_t)n;
        v->p = take(r, v->n);
        return 0;
    }
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8: {
        v->kind = MP_EXT;
        v->n = 1u << (t - 0xd4);
        if (!take(r, 1)) return fail(r, PARLEY_EPROTO, "truncated");
        v->p = take(r, v->n);
        if (!v->p) return fail(r, PARLEY_EPROTO, "truncated");
        return 0;
    }
    case 0xca:
    case 0xcb: {
        unsigned w = t == 0xca ? 4 : 8;
        const uint8_t *b = take(r, w);
        if (!b) return fail(r, PARLEY_EPROTO, "truncated");
        v->kind = MP_FLOAT;
        uint64_t bits = be(b, w);
        if (w == 4) {
            uint32_t b32 = (uint32_t)bits;
            float f;
            memcpy(&f, &b32, 4);
            v->f = f;
        } else {
            memcpy(&v->f, &bits, 8);
        }
        return 0;
    }
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf: {
        unsigned w = 1u << (t - 0xcc);
        const uint8_t *b = take(r, w);
        if (!b) return fail(r, PARLEY_EPROTO, "truncated");
        v->u = be(b, w);
        if (v->u <= INT64_MAX) {
            v->kind = MP_INT;
            v->i = (int64_t)v->u;
        } else {
            v->kind = MP_UINT;
        }
        return 0;
    }
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: {
        unsigned w = 1u << (t - 0xd0);
        const uint8_t *b = take(r, w);
        if (!b) return fail(r, PARLEY_EPROTO, "truncated");
        uint64_t u = be(b, w);
        /* Sign-extend from w bytes. */
        if (w < 8 && (u >> (w * 8 - 1)) & 1) u |= ~0ull << (w * 8);
        v->kind = MP_INT;
        memcpy(&v->i, &u, 8);
        return 0;
    }
    default:
        return fail(r, PARLEY_EPROTO, "reserved type byte");
    }
    {
        const uint8_t *l = take(r, lenb);
        if (!l) return fail(r, PARLEY_EPROTO, "truncated");
        uint64_t n = be(l, lenb);
        if (n > UINT32_MAX) return fail(r, PARLEY_EPROTO, "length");
        v->n = (uint32_t)n;
        if (v->kind == MP_ARRAY || v->kind == MP_MAP) goto count;
    }
payload:
    v->p = take(r, v->n);
    if (!v->p) return fail(r, PARLEY_EPROTO, "truncated");
    return 0;
count:
    /* Every element takes at least a byte: a count the rest of the input
     * cannot hold is refused before anything is done with it. */
    {
        uint64_t need = (uint64_t)v->n * (v->kind == MP_MAP ? 2 : 1);
        if (need > (uint64_t)(r->end - r->p)) return fail(r, PARLEY_EPROTO, "count past the end");
    }
    return 0;
}

static int skip_val(rd *r, const mp_val *v, unsigned depth)
{
    if (v->kind != MP_ARRAY && v->kind != MP_MAP) return 0;
    if (depth >= r->lim->max_depth) return fail(r, PARLEY_ELIMIT, "nesting");
    uint64_t n = (uint64_t)v->n * (v->kind == MP_MAP ? 2 : 1);
    for (uint64_t i = 0; i < n; i++) {
        mp_val e;
        int rc = rd_val(r, &e);
        if (rc == 0) rc = skip_val(r, &e, depth + 1);
        if (rc) return rc;
    }
    return 0;
}

/* ---- MessagePack to JSON ---- */

typedef struct conv {
    rd *r;
    pbuf *out;
    parley_bin *bins;
    size_t nbins;
} conv;

static int put_json_str(conv *c, const uint8_t *p, size_t n)
{
    if (!utf8_valid(p, n)) return fail(c->r, PARLEY_EPROTO, "invalid UTF-8");
    return json_append_string(c->out, (const char *)p, n);
}

static int to_json(conv *c, const mp_val *v, unsigned depth)
{
    char num[40];
    int rc;
    switch (v->kind) {
    case MP_NIL:
    case MP_EXT: /* notepack: Date as ext -1 and the like; no JSON form */
        return pbuf_append(c->out, "null", 4);
    case MP_BOOL:
        return v->b ? pbuf_append(c->out, "true", 4) : pbuf_append(c->out, "false", 5);
    case MP_INT:
        snprintf(num, sizeof num, "%lld", (long long)v->i);
        return pbuf_append_str(c->out, num);
    case MP_UINT:
        snprintf(num, sizeof num, "%llu", (unsigned long long)v->u);
        return pbuf_append_str(c->out, num);
    case MP_FLOAT:
        if (!isfinite(v->f)) return pbuf_append(c->out, "null", 4); /* as JSON.stringify */
        snprintf(num, sizeof num, "%.17g", v->f);
        return pbuf_append_str(c->out, num);
    case MP_STR:
        return put_json_str(c, v->p, v->n);
    case MP_BIN:
        if (c->nbins >= c->r->lim->max_bins) return fail(c->r, PARLEY_ELIMIT, "too many binaries");
        c->bins[c->nbins] = (parley_bin){v->p, v->n};
        snprintf(num, sizeof num, "{\"_placeholder\":true,\"num\":%zu}", c->nbins);
        c->nbins++;
        return pbuf_append_str(c->out, num);
    case MP_ARRAY:
    case MP_MAP:
        break;
    default:
        return fail(c->r, PARLEY_EPROTO, "type");
    }
    if (depth >= c->r->lim->max_depth) return fail(c->r, PARLEY_ELIMIT, "nesting");
    bool map = v->kind == MP_MAP;
    rc = pbuf_append(c->out, map ? "{" : "[", 1);
    for (uint32_t i = 0; rc == 0 && i < v->n; i++) {
        if (i) rc = pbuf_append(c->out, ",", 1);
        mp_val e;
        if (rc == 0) rc = rd_val(c->r, &e);
        if (rc == 0 && map) {
            /* JSON keys are strings: numbers become their text, as in JS. */
            if (e.kind == MP_STR) {
                rc = put_json_str(c, e.p, e.n);
            } else if (e.kind == MP_INT) {
                snprintf(num, sizeof num, "\"%lld\"", (long long)e.i);
                rc = pbuf_append_str(c->out, num);
            } else {
                rc = fail(c->r, PARLEY_EPROTO, "map key");
            }
            if (rc == 0) rc = pbuf_append(c->out, ":", 1);
            if (rc == 0) rc = rd_val(c->r, &e);
        }
        if (rc == 0) rc = to_json(c, &e, depth + 1);
    }
    if (rc == 0) rc = pbuf_append(c->out, map ? "}" : "]", 1);
    return rc;
}

/* ---- the envelope ---- */

static bool key_is(const mp_val *k, const char *lit)
{
    size_t n = strlen(lit);
    return k->kind == MP_STR && k->n == n && memcmp(k->p, lit, n) == 0;
}

/* Appends a NUL-terminated string (validated) to d->strs; *off gets its
 * offset. */
static int keep_str(penv_dec *d, rd *r, const uint8_t *p, size_t n, size_t *off)
{
    if (!utf8_valid(p, n) || memchr(p, 0, n)) return fail(r, PARLEY_EPROTO, "string");
    *off = d->strs.len;
    int rc = pbuf_append(&d->strs, p, n);
    if (rc == 0) rc = pbuf_append(&d->strs, "", 1);
    return rc;
}

/* A room name: a string, or a number (rooms may be numbers in JS). */
static int read_room(penv_dec *d, rd *r, size_t *off)
{
    mp_val v;
    int rc = rd_val(r, &v);
    if (rc) return rc;
    if (v.kind == MP_STR) {
        if (v.n == 0 || v.n > PENV_MAX_ROOM_LEN) return fail(r, PARLEY_ELIMIT, "room name");
        return keep_str(d, r, v.p, v.n, off);
    }
    if (v.kind == MP_INT || v.kind == MP_UINT) {
        char num[32];
        int n = v.kind == MP_INT ? snprintf(num, sizeof num, "%lld", (long long)v.i)
                                 : snprintf(num, sizeof num, "%llu", (unsigned long long)v.u);
        return keep_str(d, r, (const uint8_t *)num, (size_t)n, off);
    }
    return fail(r, PARLEY_EPROTO, "room");
}

static int read_rooms(penv_dec *d, rd *r, size_t *offs, size_t *count)
{
    mp_val v;
    int rc = rd_val(r, &v);
    if (rc) return rc;
    if (v.kind == MP_NIL) return 0;
    if (v.kind != MP_ARRAY) return fail(r, PARLEY_EPROTO, "rooms");
    if (v.n > d->lim.max_rooms) return fail(r, PARLEY_ELIMIT, "too many rooms");
    for (uint32_t i = 0; i < v.n; i++) {
        rc = read_room(d, r, &offs[i]);
        if (rc) return rc;
    }
    *count = v.n;
    return 0;
}

static int read_packet(penv_dec *d, rd *r, conv *c, size_t *nsp_off, size_t *ev_off, bool *have)
{
    mp_val m;
    int rc = rd_val(r, &m);
    if (rc) return rc;
    if (m.kind != MP_MAP) return fail(r, PARLEY_EPROTO, "packet is not a map");
    bool typed = false, data = false;
    for (uint32_t i = 0; i < m.n; i++) {
        mp_val k, v;
        rc = rd_val(r, &k);
        if (rc) return rc;
        if (key_is(&k, "data")) {
            if (data) return fail(r, PARLEY_EPROTO, "two data");
            rc = rd_val(r, &v);
            if (rc) return rc;
            if (v.kind != MP_ARRAY || v.n < 1) return fail(r, PARLEY_EPROTO, "data");
            mp_val ev;
            rc = rd_val(r, &ev);
            if (rc) return rc;
            if (ev.kind != MP_STR || ev.n == 0 || ev.n > 1024)
                return fail(r, PARLEY_EPROTO, "event name");
            rc = keep_str(d, r, ev.p, ev.n, ev_off);
            if (rc == 0) rc = pbuf_append(&d->json, "[", 1);
            for (uint32_t j = 1; rc == 0 && j < v.n; j++) {
                mp_val e;
                if (j > 1) rc = pbuf_append(&d->json, ",", 1);
                if (rc == 0) rc = rd_val(r, &e);
                if (rc == 0) rc = to_json(c, &e, 2);
            }
            if (rc == 0) rc = pbuf_append(&d->json, "]", 2); /* with its NUL */
            if (rc) return rc;
            data = true;
            continue;
        }
        rc = rd_val(r, &v);
        if (rc) return rc;
        if (key_is(&k, "type")) {
            /* EVENT, or BINARY_EVENT from an encoder that marks it. */
            if (v.kind != MP_INT || (v.i != 2 && v.i != 5)) return fail(r, PARLEY_EPROTO, "type");
            typed = true;
        } else if (key_is(&k, "nsp")) {
            if (v.kind != MP_STR || v.n == 0 || v.n > PENV_MAX_ROOM_LEN || v.p[0] != '/')
                return fail(r, PARLEY_EPROTO, "nsp");
            rc = keep_str(d, r, v.p, v.n, nsp_off);
            if (rc) return rc;
            *have = true;
        } else {
            rc = skip_val(r, &v, 1);
            if (rc) return rc;
        }
    }
    if (!typed || !data) return fail(r, PARLEY_EPROTO, "not an event");
    return 0;
}

static int read_flags(rd *r, penv_msg *out)
{
    mp_val m;
    int rc = rd_val(r, &m);
    if (rc) return rc;
    if (m.kind == MP_NIL) return 0;
    if (m.kind != MP_MAP) return fail(r, PARLEY_EPROTO, "flags");
    for (uint32_t i = 0; i < m.n; i++) {
        mp_val k, v;
        rc = rd_val(r, &k);
        if (rc == 0) rc = rd_val(r, &v);
        if (rc) return rc;
        if (key_is(&k, "volatile"))
            out->volatile_ = v.kind == MP_BOOL && v.b;
        else if (key_is(&k, "local"))
            out->local = v.kind == MP_BOOL && v.b;
        else if (key_is(&k, "timeout"))
            out->timeout_ms = v.kind == MP_INT && v.i > 0 ? v.i : 0;
        else if ((rc = skip_val(r, &v, 2)) != 0)
            return rc;
    }
    return 0;
}

static int read_opts(penv_dec *d, rd *r, penv_msg *out, size_t *nrooms, size_t *nexcept)
{
    mp_val m;
    int rc = rd_val(r, &m);
    if (rc == 0 && m.kind != MP_MAP && m.kind != MP_NIL) rc = fail(r, PARLEY_EPROTO, "opts");
    for (uint32_t i = 0; rc == 0 && m.kind == MP_MAP && i < m.n; i++) {
        mp_val k;
        rc = rd_val(r, &k);
        if (rc) break;
        if (key_is(&k, "rooms")) {
            rc = read_rooms(d, r, d->room_off, nrooms);
        } else if (key_is(&k, "except")) {
            rc = read_rooms(d, r, d->except_off, nexcept);
        } else if (key_is(&k, "flags")) {
            rc = read_flags(r, out);
        } else {
            mp_val x;
            rc = rd_val(r, &x);
            if (rc == 0) rc = skip_val(r, &x, 1);
        }
    }
    return rc;
}

static int read_uid(penv_dec *d, rd *r, size_t *off, const char *what)
{
    mp_val v;
    int rc = rd_val(r, &v);
    if (rc) return rc;
    if (v.kind != MP_STR || v.n == 0 || v.n > PENV_MAX_UID) return fail(r, PARLEY_EPROTO, what);
    return keep_str(d, r, v.p, v.n, off);
}

static int decode(penv_dec *d, const uint8_t *msg, size_t len, penv_msg *out, const char **why,
                  bool request)
{
    rd r = {.p = msg, .end = msg + len, .lim = &d->lim};
    memset(out, 0, sizeof *out);
    d->json.len = 0;
    d->strs.len = 0;
    conv c = {.r = &r, .out = &d->json, .bins = d->bins};
    size_t uid_off = 0, nsp_off = 0, ev_off = 0, rid_off = 0, nrooms = 0, nexcept = 0;
    bool have_nsp = false;
    int rc = 0;
    mp_val top, v;
    if (len > d->lim.max_message) {
        rc = fail(&r, PARLEY_ELIMIT, "message too large");
        goto done;
    }
    rc = rd_val(&r, &top);
    if (rc) goto done;
    if (request) {
        /* {uid, requestId, type: 7, packet, opts} (broadcastWithAck) */
        if (top.kind != MP_MAP) {
            rc = fail(&r, PARLEY_EPROTO, "not a request map");
            goto done;
        }
        bool has_uid = false, has_rid = false, has_packet = false, typed = false;
        for (uint32_t i = 0; rc == 0 && i < top.n; i++) {
            mp_val k;
            rc = rd_val(&r, &k);
            if (rc) break;
            if (key_is(&k, "uid")) {
                rc = read_uid(d, &r, &uid_off, "uid");
                has_uid = true;
            } else if (key_is(&k, "requestId")) {
                rc = read_uid(d, &r, &rid_off, "requestId");
                has_rid = true;
            } else if (key_is(&k, "packet") && !has_packet) {
                rc = read_packet(d, &r, &c, &nsp_off, &ev_off, &have_nsp);
                has_packet = true;
            } else if (key_is(&k, "opts")) {
                rc = read_opts(d, &r, out, &nrooms, &nexcept);
            } else if (key_is(&k, "type")) {
                rc = rd_val(&r, &v);
                if (rc == 0 && (v.kind != MP_INT || v.i != 7)) rc = fail(&r, PARLEY_EPROTO, "type");
                typed = true;
            } else {
                rc = rd_val(&r, &v);
                if (rc == 0) rc = skip_val(&r, &v, 1);
            }
        }
        if (rc == 0 && !(has_uid && has_rid && has_packet && typed))
            rc = fail(&r, PARLEY_EPROTO, "incomplete request");
    } else {
        if (top.kind != MP_ARRAY || top.n < 2) {
            rc = fail(&r, PARLEY_EPROTO, "not [uid, packet, opts]");
            goto done;
        }
        rc = rd_val(&r, &v);
        if (rc) goto done;
        if (v.kind != MP_STR || v.n > PENV_MAX_UID) {
            rc = fail(&r, PARLEY_EPROTO, "uid");
            goto done;
        }
        rc = keep_str(d, &r, v.p, v.n, &uid_off);
        if (rc == 0) rc = read_packet(d, &r, &c, &nsp_off, &ev_off, &have_nsp);
        if (rc == 0 && top.n >= 3) rc = read_opts(d, &r, out, &nrooms, &nexcept);
        /* Whatever else the top array holds is skipped, then nothing may
         * follow. */
        for (uint32_t i = 3; rc == 0 && i < top.n; i++) {
            rc = rd_val(&r, &v);
            if (rc == 0) rc = skip_val(&r, &v, 1);
        }
    }
    if (rc == 0 && r.p != r.end) rc = fail(&r, PARLEY_EPROTO, "bytes after the message");
    if (rc == 0 && !have_nsp) rc = keep_str(d, &r, (const uint8_t *)"/", 1, &nsp_off);
    if (rc) goto done;
    /* strs no longer moves: resolve offsets to pointers. */
    const char *base = (const char *)d->strs.ptr;
    for (size_t i = 0; i < nrooms; i++) d->room_ptr[i] = base + d->room_off[i];
    for (size_t i = 0; i < nexcept; i++) d->except_ptr[i] = base + d->except_off[i];
    out->uid = base + uid_off;
    out->nsp = base + nsp_off;
    out->event = base + ev_off;
    out->args = (const char *)d->json.ptr;
    out->args_len = d->json.len - 1;
    out->bins = d->bins;
    out->nbins = c.nbins;
    out->rooms = d->room_ptr;
    out->nrooms = nrooms;
    out->except = d->except_ptr;
    out->nexcept = nexcept;
    out->request_id = request ? base + rid_off : NULL;
done:
    if (rc) memset(out, 0, sizeof *out);
    if (why) *why = rc ? (r.why ? r.why : "out of memory") : NULL;
    return rc;
}

int penv_decode(penv_dec *d, const uint8_t *msg, size_t len, penv_msg *out, const char **why)
{
    return decode(d, msg, len, out, why, false);
}

int penv_decode_request(penv_dec *d, const uint8_t *msg, size_t len, penv_msg *out,
                        const char **why)
{
    return decode(d, msg, len, out, why, true);
}

/* ---- writing ---- */

/* msgpack-c's packer writes through this callback straight into our
 * pbuf: no allocation beyond the buffer's growth (reused from message to
 * message by the callers). Its forms are notepack's: the smallest integer
 * form (unsigned forms for non-negative values), float64, fixstr / str8 /
 * str16 / str32, bin8 / bin16 / bin32, fixarray / array16 / array32 and
 * the same for maps; test_cluster.c's byte-exact vectors check it. */
static int pk_write(void *data, const char *buf, size_t len)
{
    return pbuf_append(data, buf, len) ? -1 : 0;
}

static void pk_init(msgpack_packer *pk, pbuf *out)
{
    msgpack_packer_init(pk, out, pk_write);
}

/* The packer says only -1: the one way our callback fails is pbuf's. */
static int pk_rc(int rc)
{
    return rc ? PARLEY_ENOMEM : 0;
}

static int pk_str(msgpack_packer *pk, const char *s, size_t len)
{
    if (len > UINT32_MAX) return PARLEY_EINVAL;
    int rc = msgpack_pack_str(pk, len);
    if (rc == 0) rc = msgpack_pack_str_body(pk, s, len);
    return pk_rc(rc);
}

static int pk_bin(msgpack_packer *pk, const void *p, size_t len)
{
    if (len > UINT32_MAX) return PARLEY_EINVAL;
    int rc = msgpack_pack_bin(pk, len);
    if (rc == 0) rc = msgpack_pack_bin_body(pk, p, len);
    return pk_rc(rc);
}

static int pk_double(msgpack_packer *pk, double d)
{
    /* notepack writes integral finite numbers as integers. */
    if (isfinite(d) && floor(d) == d && d >= -9007199254740992.0 && d <= 9007199254740992.0)
        return pk_rc(msgpack_pack_int64(pk, (int64_t)d));
    return pk_rc(msgpack_pack_double(pk, d));
}

int penv_put_str(pbuf *out, const char *s, size_t len)
{
    msgpack_packer pk;
    pk_init(&pk, out);
    return pk_str(&pk, s, len);
}

int penv_put_int(pbuf *out, int64_t v)
{
    msgpack_packer pk;
    pk_init(&pk, out);
    return pk_rc(msgpack_pack_int64(&pk, v));
}

int penv_put_array(pbuf *out, uint32_t n)
{
    msgpack_packer pk;
    pk_init(&pk, out);
    return pk_rc(msgpack_pack_array(&pk, n));
}

int penv_put_map(pbuf *out, uint32_t n)
{
    msgpack_packer pk;
    pk_init(&pk, out);
    return pk_rc(msgpack_pack_map(&pk, n));
}

typedef struct wr {
    msgpack_packer pk;
    pbuf *scratch;
    const parley_bin *bins;
    size_t nbins;
    unsigned max_depth;
} wr;

static int put_json_string(wr *w, const json_val *v)
{
    w->scratch->len = 0;
    int rc = pbuf_reserve(w->scratch, v->len + 1);
    if (rc) return rc;
    long n = json_string_decode(v, (char *)w->scratch->ptr, v->len + 1);
    if (n < 0) return PARLEY_EINVAL;
    return pk_str(&w->pk, (const char *)w->scratch->ptr, (size_t)n);
}

/* {"_placeholder":true,"num":N}: N, else -1. */
static long placeholder(const json_val *v, size_t nbins)
{
    json_val ph, num;
    int64_t n;
    if (json_count(v) != 2 || !json_object_get(v, "_placeholder", &ph) || ph.type != JSON_TRUE ||
        !json_object_get(v, "num", &num) || !json_int(&num, &n) || n < 0 || (uint64_t)n >= nbins)
        return -1;
    return (long)n;
}

static int put_json(wr *w, const json_val *v, unsigned depth);

int penv_put_json(pbuf *out, pbuf *scratch, const json_val *v, const parley_bin *bins, size_t nbins,
                  unsigned max_depth)
{
    wr w = {.scratch = scratch,
            .bins = bins,
            .nbins = nbins,
            .max_depth = max_depth ? max_depth : 32};
    pk_init(&w.pk, out);
    return put_json(&w, v, 0);
}

static int put_json(wr *w, const json_val *v, unsigned depth)
{
    switch (v->type) {
    case JSON_NULL:
        return pk_rc(msgpack_pack_nil(&w->pk));
    case JSON_TRUE:
        return pk_rc(msgpack_pack_true(&w->pk));
    case JSON_FALSE:
        return pk_rc(msgpack_pack_false(&w->pk));
    case JSON_NUMBER: {
        int64_t i;
        double d;
        if (json_int(v, &i)) return pk_rc(msgpack_pack_int64(&w->pk, i));
        if (!json_double(v, &d)) return PARLEY_EINVAL;
        return pk_double(&w->pk, d);
    }
    case JSON_STRING:
        return put_json_string(w, v);
    case JSON_ARRAY:
    case JSON_OBJECT:
        break;
    default:
        return PARLEY_EINVAL;
    }
    if (depth >= w->max_depth) return PARLEY_EINVAL;
    if (v->type == JSON_OBJECT && w->nbins) {
        long n = placeholder(v, w->nbins);
        if (n >= 0) return pk_bin(&w->pk, w->bins[n].data, w->bins[n].len);
    }
    size_t count = json_count(v);
    if (count > UINT32_MAX) return PARLEY_EINVAL;
    json_iter it;
    json_iter_init(&it, v);
    json_val k, e;
    int rc;
    if (v->type == JSON_ARRAY) {
        rc = pk_rc(msgpack_pack_array(&w->pk, (uint32_t)count));
        while (rc == 0 && json_array_next(&it, &e)) rc = put_json(w, &e, depth + 1);
    } else {
        rc = pk_rc(msgpack_pack_map(&w->pk, (uint32_t)count));
        while (rc == 0 && json_object_next(&it, &k, &e)) {
            rc = put_json_string(w, &k);
            if (rc == 0) rc = put_json(w, &e, depth + 1);
        }
    }
    return rc;
}

static int put_cstr(msgpack_packer *pk, const char *s)
{
    return pk_str(pk, s, strlen(s));
}

int penv_encode(pbuf *out, pbuf *scratch, const penv_out *m, unsigned max_depth)
{
    wr w = {.scratch = scratch,
            .bins = m->bins,
            .nbins = m->nbins,
            .max_depth = max_depth ? max_depth : 32};
    size_t nargs = m->args ? json_count(m->args) : 0;
    if (nargs >= UINT32_MAX) return PARLEY_EINVAL;
    pk_init(&w.pk, out);
    msgpack_packer *pk = &w.pk;
    int rc = pk_rc(msgpack_pack_array(pk, 3));
    if (rc == 0) rc = put_cstr(pk, m->uid);
    /* {type: 2, data: [event, ...args], nsp} */
    if (rc == 0) rc = pk_rc(msgpack_pack_map(pk, 3));
    if (rc == 0) rc = put_cstr(pk, "type");
    if (rc == 0) rc = pk_rc(msgpack_pack_int64(pk, 2));
    if (rc == 0) rc = put_cstr(pk, "data");
    if (rc == 0) rc = pk_rc(msgpack_pack_array(pk, (uint32_t)(nargs + 1)));
    if (rc == 0) rc = put_cstr(pk, m->event);
    if (rc == 0 && m->args) {
        json_iter it;
        json_iter_init(&it, m->args);
        json_val e;
        while (rc == 0 && json_array_next(&it, &e)) rc = put_json(&w, &e, 2);
    }
    if (rc == 0) rc = put_cstr(pk, "nsp");
    if (rc == 0) rc = put_cstr(pk, m->nsp);
    /* {rooms: [...], except: [...], flags: {...}} */
    if (rc == 0) rc = pk_rc(msgpack_pack_map(pk, 3));
    if (rc == 0) rc = put_cstr(pk, "rooms");
    if (rc == 0) rc = pk_rc(msgpack_pack_array(pk, (uint32_t)m->nrooms));
    for (size_t i = 0; rc == 0 && i < m->nrooms; i++) rc = put_cstr(pk, m->rooms[i]);
    if (rc == 0) rc = put_cstr(pk, "except");
    if (rc == 0) rc = pk_rc(msgpack_pack_array(pk, (uint32_t)(m->nexcept + (m->except_id ? 1 : 0))));
    for (size_t i = 0; rc == 0 && i < m->nexcept; i++) rc = put_cstr(pk, m->except[i]);
    if (rc == 0 && m->except_id) rc = put_cstr(pk, m->except_id);
    if (rc == 0) rc = put_cstr(pk, "flags");
    if (rc == 0) rc = pk_rc(msgpack_pack_map(pk, m->volatile_ ? 1 : 0));
    if (rc == 0 && m->volatile_) {
        rc = put_cstr(pk, "volatile");
        if (rc == 0) rc = pk_rc(msgpack_pack_true(pk));
    }
    return rc;
}
