#include "codec/json.h"

#include <assert.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/utf8.h"
#include "parley/parley.h"

/* The container stack is one bit per level (object or array), kept on the
 * C stack. Callers ask for far less (Socket.IO uses 32); a larger request
 * is treated as this cap rather than failing. */
#define JSON_DEPTH_CAP 1024

/* Strings are skipped a word at a time while they hold only "plain"
 * bytes: printable ASCII (and DEL) other than '"' (0x22) and '\\' (0x5c).
 * Control characters are invalid raw; bytes >= 0x80 (zero here) are
 * validated as UTF-8. A table beats the range compares by ~15%. */
/* clang-format off */
static const uint8_t str_plain[256] = {
    /* 0x00 */ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* 0x10 */ 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    /* 0x20 */ 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x30 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x40 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x50 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    /* 0x60 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    /* 0x70 */ 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};
/* clang-format on */

#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* Nonzero when some byte of w is zero (exact as a yes/no answer). */
static inline uint64_t has_zero(uint64_t w)
{
    return (w - ONES) & ~w & HIGHS;
}

static inline uint64_t has_byte(uint64_t w, uint8_t b)
{
    return has_zero(w ^ (ONES * b));
}

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* True when all 8 bytes are plain string bytes. */
static inline bool word_plain(uint64_t w)
{
    /* A byte < 0x20 has (b - 0x20) borrow into bit 7 while its own bit 7 is
     * clear; bytes >= 0x80 are caught by the HIGHS test anyway. */
    uint64_t ctl = (w - ONES * 0x20) & ~w & HIGHS;
    return !((w & HIGHS) | ctl | has_byte(w, '"') | has_byte(w, '\\'));
}

static inline bool is_ws(uint8_t c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static inline const uint8_t *skip_ws(const uint8_t *p, const uint8_t *e)
{
    while (p < e && is_ws(*p)) p++;
    return p;
}

static inline bool is_digit(uint8_t c)
{
    return c >= '0' && c <= '9';
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Reads 4 hex digits at p (bounds checked by the caller); -1 if not hex. */
static long hex4(const uint8_t *p)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0) return -1;
        v = v << 4 | h;
    }
    return v;
}

/* Validates the string body starting after the opening quote. Returns the
 * position after the closing quote, or NULL with *bad at the offending
 * byte. */
static const uint8_t *scan_string(const uint8_t *p, const uint8_t *e, const uint8_t **bad)
{
    for (;;) {
        while (e - p >= 8 && word_plain(load64(p))) p += 8;
        while (p < e && str_plain[*p]) p++;
        if (p == e) goto fail;
        uint8_t c = *p;
        if (c == '"') return p + 1;
        if (c == '\\') {
            if (e - p < 2) goto fail;
            switch (p[1]) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't':
                p += 2;
                continue;
            case 'u':
                break;
            default:
                p++;
                goto fail;
            }
            if (e - p < 6) goto fail_at_end;
            long cp = hex4(p + 2);
            if (cp < 0) goto fail;
            if (cp >= 0xDC00 && cp <= 0xDFFF) goto fail; /* low surrogate alone */
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                /* A high surrogate must be followed at once by an escaped
                 * low surrogate: together they are one code point. */
                if (e - p < 12 || p[6] != '\\' || p[7] != 'u') goto fail;
                long lo = hex4(p + 8);
                if (lo < 0xDC00 || lo > 0xDFFF) goto fail;
                p += 12;
            } else {
                p += 6;
            }
            continue;
        }
        if (c < 0x20) goto fail;
        /* A run of bytes >= 0x80 is whole UTF-8 sequences when valid: a
         * sequence never contains ASCII, and ASCII never continues one. */
        const uint8_t *q = p + 1;
        while (q < e && *q >= 0x80) q++;
        if (utf8_step(UTF8_OK, p, (size_t)(q - p)) != UTF8_OK) {
            uint32_t st = UTF8_OK;
            while (p < q) {
                st = utf8_step(st, p, 1);
                if (st == UTF8_REJECT) break;
                p++;
            }
            goto fail;
        }
        p = q;
    }
fail_at_end:
    p = e;
fail:
    *bad = p;
    return NULL;
}

/* Validates a number at p (RFC 8259 section 6). The caller checks that it
 * is followed by a delimiter. */
static const uint8_t *scan_number(const uint8_t *p, const uint8_t *e, const uint8_t **bad)
{
    if (p < e && *p == '-') p++;
    if (p == e) goto fail;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        p++;
        while (p < e && is_digit(*p)) p++;
    } else {
        goto fail;
    }
    if (p < e && *p == '.') {
        p++;
        if (p == e || !is_digit(*p)) goto fail;
        while (p < e && is_digit(*p)) p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (p == e || !is_digit(*p)) goto fail;
        while (p < e && is_digit(*p)) p++;
    }
    return p;
fail:
    *bad = p;
    return NULL;
}

static const uint8_t *scan_literal(const uint8_t *p, const uint8_t *e, const char *lit, size_t n,
                                   const uint8_t **bad)
{
    for (size_t i = 0; i < n; i++) {
        if (p + i == e || p[i] != (uint8_t)lit[i]) {
            *bad = p + i;
            return NULL;
        }
    }
    return p + n;
}

static json_type type_of(uint8_t c)
{
    switch (c) {
    case '{':
        return JSON_OBJECT;
    case '[':
        return JSON_ARRAY;
    case '"':
        return JSON_STRING;
    case 't':
        return JSON_TRUE;
    case 'f':
        return JSON_FALSE;
    case 'n':
        return JSON_NULL;
    default:
        return JSON_NUMBER;
    }
}

int json_parse(const char *s, size_t len, unsigned max_depth, json_val *v, size_t *err_off)
{
    const uint8_t *const base = (const uint8_t *)s;
    const uint8_t *p = base, *e = base + len;
    const uint8_t *bad = NULL;
    uint64_t is_obj[JSON_DEPTH_CAP / 64];
    unsigned depth = 0;

    if (max_depth > JSON_DEPTH_CAP) max_depth = JSON_DEPTH_CAP;
    p = skip_ws(p, e);
    const uint8_t *start = p;

    /* A state machine with three states (value, key, after a value); the
     * only memory is the object/array bit per open container. */
value:
    if (p == e) goto fail_at_p;
    switch (*p) {
    case '{':
    case '[': {
        bool obj = *p == '{';
        if (depth >= max_depth) goto fail_at_p;
        if (obj)
            is_obj[depth / 64] |= 1ull << (depth % 64);
        else
            is_obj[depth / 64] &= ~(1ull << (depth % 64));
        depth++;
        p = skip_ws(p + 1, e);
        if (p < e && *p == (obj ? '}' : ']')) {
            p++;
            depth--;
            goto after;
        }
        if (obj) goto key;
        goto value;
    }
    case '"':
        p = scan_string(p + 1, e, &bad);
        if (!p) goto fail;
        goto after;
    case 't':
        p = scan_literal(p, e, "true", 4, &bad);
        break;
    case 'f':
        p = scan_literal(p, e, "false", 5, &bad);
        break;
    case 'n':
        p = scan_literal(p, e, "null", 4, &bad);
        break;
    default:
        p = scan_number(p, e, &bad);
        break;
    }
    if (!p) goto fail;
    goto after;

key:
    if (p == e || *p != '"') goto fail_at_p;
    p = scan_string(p + 1, e, &bad);
    if (!p) goto fail;
    p = skip_ws(p, e);
    if (p == e || *p != ':') goto fail_at_p;
    p = skip_ws(p + 1, e);
    goto value;

after:
    if (depth == 0) goto done;
    p = skip_ws(p, e);
    if (p == e) goto fail_at_p;
    {
        bool obj = (is_obj[(depth - 1) / 64] >> ((depth - 1) % 64)) & 1;
        if (*p == ',') {
            p = skip_ws(p + 1, e);
            if (obj) goto key;
            goto value;
        }
        if (*p == (obj ? '}' : ']')) {
            p++;
            depth--;
            goto after;
        }
    }
    goto fail_at_p;

done : {
    const uint8_t *end = p;
    p = skip_ws(p, e);
    if (p != e) goto fail_at_p;
    if (v) {
        v->type = type_of(*start);
        v->p = (const char *)start;
        v->len = (size_t)(end - start);
    }
    return 0;
}

fail_at_p:
    bad = p;
fail:
    if (err_off) *err_off = (size_t)(bad - base);
    if (v) {
        v->type = JSON_INVALID;
        v->p = NULL;
        v->len = 0;
    }
    return PARLEY_EPROTO;
}

/* ---- Navigation over validated text: no checks are repeated, but every
 * loop is still bounded by the end pointer so that misuse cannot read out
 * of bounds. */

/* Position after the closing quote of a string whose body starts at p. */
static const char *skip_string(const char *p, const char *e)
{
    while (p < e) {
        while (e - p >= 8) {
            uint64_t w = load64((const uint8_t *)p);
            if (has_byte(w, '"') | has_byte(w, '\\')) break;
            p += 8;
        }
        while (p < e && *p != '"' && *p != '\\') p++;
        if (p == e) break;
        if (*p == '"') return p + 1;
        p += 2; /* an escape: its second byte is never a bare quote */
    }
    return e;
}

/* Position after the value starting at p. */
static const char *skip_value(const char *p, const char *e)
{
    if (p >= e) return e;
    switch (*p) {
    case '"':
        return skip_string(p + 1, e);
    case '{':
    case '[': {
        size_t depth = 0;
        while (p < e) {
            /* Only quotes and brackets matter here: '[' ']' '{' '}' are
             * 0x5b 0x5d 0x7b 0x7d, so OR-ing in 0x20 folds each pair. */
            while (e - p >= 8) {
                uint64_t w = load64((const uint8_t *)p);
                uint64_t f = w | (ONES * 0x20);
                if (has_byte(w, '"') | has_byte(f, '{') | has_byte(f, '}')) break;
                p += 8;
            }
            char c = *p++;
            if (c == '"') {
                p = skip_string(p, e);
            } else if (c == '[' || c == '{') {
                depth++;
            } else if (c == ']' || c == '}') {
                if (--depth == 0) return p;
            }
        }
        return e;
    }
    default:
        while (p < e && *p != ',' && *p != ']' && *p != '}' && !is_ws((uint8_t)*p)) p++;
        return p;
    }
}

static const char *skip_ws_c(const char *p, const char *e)
{
    return (const char *)skip_ws((const uint8_t *)p, (const uint8_t *)e);
}

void json_iter_init(json_iter *it, const json_val *container)
{
    if (container && (container->type == JSON_ARRAY || container->type == JSON_OBJECT) &&
        container->len >= 2) {
        it->p = container->p + 1;
        it->end = container->p + container->len - 1; /* the closing bracket */
    } else {
        it->p = it->end = NULL;
    }
}

static void take_value(json_iter *it, json_val *out)
{
    const char *p = it->p;
    const char *q = skip_value(p, it->end);
    out->type = type_of((uint8_t)*p);
    out->p = p;
    out->len = (size_t)(q - p);
    q = skip_ws_c(q, it->end);
    if (q < it->end && *q == ',') q++;
    it->p = q;
}

bool json_array_next(json_iter *it, json_val *elem)
{
    it->p = skip_ws_c(it->p, it->end);
    if (it->p >= it->end) return false;
    take_value(it, elem);
    return true;
}

bool json_object_next(json_iter *it, json_val *key, json_val *value)
{
    const char *p = skip_ws_c(it->p, it->end);
    if (p >= it->end || *p != '"') {
        it->p = it->end;
        return false;
    }
    const char *q = skip_string(p + 1, it->end);
    key->type = JSON_STRING;
    key->p = p;
    key->len = (size_t)(q - p);
    q = skip_ws_c(q, it->end);
    if (q < it->end && *q == ':') q++;
    q = skip_ws_c(q, it->end);
    if (q >= it->end) {
        it->p = it->end;
        return false;
    }
    it->p = q;
    take_value(it, value);
    return true;
}

size_t json_count(const json_val *container)
{
    json_iter it;
    json_val k, v;
    size_t n = 0;
    json_iter_init(&it, container);
    if (!it.p) return 0;
    if (container->type == JSON_ARRAY)
        while (json_array_next(&it, &v)) n++;
    else
        while (json_object_next(&it, &k, &v)) n++;
    return n;
}

bool json_object_get(const json_val *obj, const char *name, json_val *out)
{
    if (!obj || obj->type != JSON_OBJECT) return false;
    json_iter it;
    json_val k, v;
    json_iter_init(&it, obj);
    while (json_object_next(&it, &k, &v)) {
        if (json_string_eq(&k, name)) {
            *out = v;
            return true;
        }
    }
    return false;
}

/* ---- String contents ---- */

static size_t put_utf8(uint32_t cp, uint8_t out[4])
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decodes the escape at p (p[0] == '\\') into out; returns the bytes
 * written and advances *pp. The text was validated, but a short or bad
 * escape still decodes to something harmless instead of overrunning. */
static size_t unescape(const char **pp, const char *e, uint8_t out[4])
{
    const uint8_t *p = (const uint8_t *)*pp;
    if (e - (const char *)p < 2) {
        *pp = e;
        return 0;
    }
    uint8_t c = p[1];
    *pp += 2;
    switch (c) {
    case 'b':
        out[0] = '\b';
        return 1;
    case 'f':
        out[0] = '\f';
        return 1;
    case 'n':
        out[0] = '\n';
        return 1;
    case 'r':
        out[0] = '\r';
        return 1;
    case 't':
        out[0] = '\t';
        return 1;
    case 'u':
        break;
    default:
        out[0] = c;
        return 1;
    }
    if (e - (const char *)p < 6) {
        *pp = e;
        return 0;
    }
    long cp = hex4(p + 2);
    if (cp < 0) cp = 0xFFFD;
    *pp = (const char *)p + 6;
    if (cp >= 0xD800 && cp <= 0xDBFF && e - (const char *)p >= 12 && p[6] == '\\' && p[7] == 'u') {
        long lo = hex4(p + 8);
        if (lo >= 0xDC00 && lo <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            *pp = (const char *)p + 12;
        }
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
    return put_utf8((uint32_t)cp, out);
}

bool json_string_eq(const json_val *v, const char *lit)
{
    if (!v || v->type != JSON_STRING || v->len < 2) return false;
    const char *p = v->p + 1, *e = v->p + v->len - 1;
    size_t n = strlen(lit);
    if (!memchr(p, '\\', (size_t)(e - p))) return (size_t)(e - p) == n && !memcmp(p, lit, n);
    const char *l = lit, *le = lit + n;
    while (p < e) {
        const char *bs = memchr(p, '\\', (size_t)(e - p));
        size_t run = bs ? (size_t)(bs - p) : (size_t)(e - p);
        if ((size_t)(le - l) < run || memcmp(p, l, run)) return false;
        p += run;
        l += run;
        if (!bs) break;
        uint8_t u[4];
        size_t k = unescape(&p, e, u);
        if ((size_t)(le - l) < k || memcmp(u, l, k)) return false;
        l += k;
    }
    return l == le;
}

long json_string_decode(const json_val *v, char *out, size_t cap)
{
    if (!v || v->type != JSON_STRING || v->len < 2) return -1;
    const char *p = v->p + 1, *e = v->p + v->len - 1;
    size_t o = 0;
    while (p < e) {
        const char *bs = memchr(p, '\\', (size_t)(e - p));
        size_t run = bs ? (size_t)(bs - p) : (size_t)(e - p);
        if (cap - o < run) return -1;
        memcpy(out + o, p, run);
        o += run;
        p += run;
        if (!bs) break;
        uint8_t u[4];
        size_t k = unescape(&p, e, u);
        if (cap - o < k) return -1;
        memcpy(out + o, u, k);
        o += k;
    }
    return (long)o;
}

/* ---- Numbers ---- */

bool json_int(const json_val *v, int64_t *out)
{
    if (!v || v->type != JSON_NUMBER || v->len == 0) return false;
    const char *p = v->p, *e = v->p + v->len;
    bool neg = *p == '-';
    if (neg) p++;
    if (p == e) return false;
    /* Magnitude limit: 2^63 for negatives, 2^63 - 1 otherwise. */
    uint64_t lim = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    uint64_t x = 0;
    for (; p < e; p++) {
        if (!is_digit((uint8_t)*p)) return false; /* fraction or exponent */
        unsigned d = (unsigned)(*p - '0');
        if (x > (lim - d) / 10) return false;
        x = x * 10 + d;
    }
    if (neg)
        *out = x == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)x;
    else
        *out = (int64_t)x;
    return true;
}

/* Enough significant digits that truncating the rest (with a sticky
 * nonzero digit) cannot change how strtod rounds: a halfway point between
 * two doubles has at most 767 significant digits. */
#define NUM_KEEP_DIGITS 780

bool json_double(const json_val *v, double *out)
{
    if (!v || v->type != JSON_NUMBER || v->len == 0) return false;
    char buf[NUM_KEEP_DIGITS + 48];
    /* strtod follows LC_NUMERIC: the JSON '.' becomes the locale's decimal
     * point so that an application's setlocale() cannot change the value. */
    const char *dp = localeconv()->decimal_point;
    char point = dp && dp[0] && !dp[1] ? dp[0] : '.';
    const char *p = v->p, *e = v->p + v->len;

    if (v->len < sizeof buf) {
        for (size_t i = 0; i < v->len; i++) buf[i] = p[i] == '.' ? point : p[i];
        buf[v->len] = '\0';
    } else {
        /* Too long to copy: rewrite as 0.<digits>e<exp> with the leading
         * zeros dropped and the tail of the digits folded into one sticky
         * digit. */
        size_t o = 0;
        if (*p == '-') {
            buf[o++] = '-';
            p++;
        }
        buf[o++] = '0';
        buf[o++] = point;
        long long exp10 = 0; /* value = 0.<kept digits> * 10^exp10 */
        size_t kept = 0;
        bool seen_nonzero = false, sticky = false, in_frac = false;
        for (; p < e && *p != 'e' && *p != 'E'; p++) {
            if (*p == '.') {
                in_frac = true;
                continue;
            }
            if (!seen_nonzero) {
                if (*p == '0') {
                    if (in_frac) exp10--;
                    continue;
                }
                seen_nonzero = true;
            }
            if (!in_frac) exp10++;
            if (kept < NUM_KEEP_DIGITS)
                buf[o + kept++] = *p;
            else if (*p != '0')
                sticky = true;
        }
        if (!seen_nonzero) {
            *out = buf[0] == '-' ? -0.0 : 0.0;
            return true;
        }
        o += kept;
        if (sticky) buf[o++] = '1';
        if (p < e) {
            p++;
            bool eneg = *p == '-';
            if (*p == '-' || *p == '+') p++;
            long long ex = 0;
            for (; p < e; p++)
                if (ex < 1000000000) ex = ex * 10 + (*p - '0');
            exp10 += eneg ? -ex : ex;
        }
        if (exp10 > 100000) exp10 = 100000;
        if (exp10 < -100000) exp10 = -100000;
        snprintf(buf + o, sizeof buf - o, "e%lld", exp10);
    }
    *out = strtod(buf, NULL);
    return true;
}

/* ---- Output ---- */

int json_compact(pbuf *out, const json_val *v)
{
    if (!v || v->type == JSON_INVALID) return PARLEY_EINVAL;
    if (pbuf_reserve(out, v->len)) return PARLEY_ENOMEM;
    const char *p = v->p, *e = v->p + v->len;
    uint8_t *o = out->ptr + out->len;
    while (p < e) {
        /* Copy a run that holds no whitespace and no string start in one
         * go; compact input is a single run up to its first string. */
        const char *q = p;
        while (q < e && *q != '"' && !is_ws((uint8_t)*q)) q++;
        memcpy(o, p, (size_t)(q - p));
        o += q - p;
        if (q == e) break;
        if (*q == '"') {
            const char *r = skip_string(q + 1, e);
            memcpy(o, q, (size_t)(r - q));
            o += r - q;
            p = r;
        } else {
            p = skip_ws_c(q, e);
        }
    }
    out->len = (size_t)(o - out->ptr);
    return 0;
}

int json_append_string(pbuf *out, const char *s, size_t len)
{
    const uint8_t *p = (const uint8_t *)s;
    if (!utf8_valid(p, len)) return PARLEY_EINVAL;
    size_t extra = 2;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = p[i];
        if (c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t')
            extra += 1;
        else if (c < 0x20)
            extra += 5;
    }
    if (len > SIZE_MAX - extra) return PARLEY_ENOMEM;
    if (pbuf_reserve(out, len + extra)) return PARLEY_ENOMEM;
    static const char hex[] = "0123456789abcdef";
    uint8_t *const start = out->ptr + out->len;
    uint8_t *o = start;
    *o++ = '"';
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && p[j] >= 0x20 && p[j] != '"' && p[j] != '\\') j++;
        memcpy(o, p + i, j - i);
        o += j - i;
        if (j == len) break;
        uint8_t c = p[j];
        *o++ = '\\';
        switch (c) {
        case '"':
            *o++ = '"';
            break;
        case '\\':
            *o++ = '\\';
            break;
        case '\b':
            *o++ = 'b';
            break;
        case '\f':
            *o++ = 'f';
            break;
        case '\n':
            *o++ = 'n';
            break;
        case '\r':
            *o++ = 'r';
            break;
        case '\t':
            *o++ = 't';
            break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
            break;
        }
        i = j + 1;
    }
    *o++ = '"';
    assert((size_t)(o - start) == len + extra);
    out->len = (size_t)(o - out->ptr);
    return 0;
}
