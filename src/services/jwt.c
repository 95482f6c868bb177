/* HS256 JSON Web Tokens (see jwt.h). */
#include "services/jwt.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "codec/json.h"
#include "parley/parley.h"

#define JWT_MAX_HEADER 1024 /* decoded header bytes */
#define SIG_LEN        32

/* NumericDates outside years 0001..9999 are refused: such a value is a
 * bug or an attack (exp 1e300 would never expire), and within these
 * bounds a date in ms fits an int64 with room to spare. */
#define DATE_MIN (-62135596800.0)
#define DATE_MAX 253402300799.0
/* The caller's clock and leeway are clamped so that no sum or difference
 * below can overflow (dates are below 2^48 ms). */
#define CLOCK_CLAMP ((int64_t)1 << 52)
#define SPAN_CLAMP  ((int64_t)1 << 50)

static const char b64url_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

long b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap)
{
    if (n % 4 == 1) return -1;
    size_t want = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
    if (want > cap) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_val((unsigned char)in[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Leftover bits must be zero, so that each byte string has exactly
     * one encoding (a token cannot be altered into another valid one). */
    if (acc != 0) return -1;
    return (long)o;
}

int b64url_append(pbuf *out, const uint8_t *in, size_t n)
{
    if (pbuf_reserve(out, (n + 2) / 3 * 4) != 0) return PARLEY_ENOMEM;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out->ptr[out->len++] = (uint8_t)b64url_chars[(acc >> bits) & 63];
        }
        acc &= (1u << bits) - 1;
    }
    if (bits) out->ptr[out->len++] = (uint8_t)b64url_chars[(acc << (6 - bits)) & 63];
    return 0;
}

static int hmac256(const uint8_t *key, size_t klen, const char *data, size_t len,
                   uint8_t mac[SIG_LEN])
{
    unsigned int mlen = 0;
    /* HMAC() refuses a NULL key even when its length is 0. */
    static const uint8_t empty[1];
    if (!HMAC(EVP_sha256(), klen ? key : empty, (int)klen, (const unsigned char *)data, len, mac,
              &mlen) ||
        mlen != SIG_LEN)
        return PARLEY_EIO;
    return 0;
}

typedef struct span {
    const char *p;
    size_t n;
} span;

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = n ? memcmp(x->p, y->p, n) : 0;
    if (c) return c;
    return (x->n > y->n) - (x->n < y->n);
}

/* Whether the members of a JSON object have distinct names (compared
 * unescaped): a repeat is refused, so that no two parsers can disagree
 * about which one counts. scratch must hold obj->len bytes (names never
 * unescape to more than their text), spans one entry per member. Also
 * false when either is too small. */
static bool members_unique(const json_val *obj, char *scratch, size_t scratch_cap, span *spans,
                           size_t max_spans)
{
    size_t count = 0, used = 0;
    json_iter it;
    json_val k, v;
    json_iter_init(&it, obj);
    while (json_object_next(&it, &k, &v)) {
        long n =
            count < max_spans ? json_string_decode(&k, scratch + used, scratch_cap - used) : -1;
        if (n < 0) return false; /* refuse rather than miss a repeat */
        spans[count].p = scratch + used;
        spans[count].n = (size_t)n;
        count++;
        used += (size_t)n;
    }
    if (count < 2) return true;
    qsort(spans, count, sizeof *spans, span_cmp);
    for (size_t i = 1; i < count; i++)
        if (span_cmp(&spans[i - 1], &spans[i]) == 0) return false;
    return true;
}

/* A NumericDate member as milliseconds: false when present but not a
 * number within DATE_MIN..DATE_MAX (NaN fails both comparisons). */
static bool numeric_date(const json_val *obj, const char *name, bool *present, int64_t *ms)
{
    json_val v;
    *present = json_object_get(obj, name, &v);
    if (!*present) return true;
    double d;
    if (v.type != JSON_NUMBER || !json_double(&v, &d) || !(d >= DATE_MIN && d <= DATE_MAX))
        return false;
    *ms = (int64_t)(d * 1000.0);
    return true;
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

msg_errcode jwt_verify(const jwt_key *k, const char *token, size_t len, int64_t now_ms,
                       jwt_claims *c, msg_error *err)
{
    memset(c, 0, sizeof *c);
    if (len > JWT_MAX_TOKEN)
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token longer than %d bytes",
                        JWT_MAX_TOKEN);
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)))
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "not a JWS compact token (3 parts)");
    size_t hl = (size_t)(d1 - token), pl = (size_t)(d2 - d1 - 1),
           sl = len - (size_t)(d2 + 1 - token);
    /* For the repeated-member checks: each member takes at least 4 bytes
     * of text ("":0 and a comma or brace). */
    char scratch[JWT_MAX_TOKEN];
    span spans[JWT_MAX_TOKEN / 4 + 1];

    /* Header: only to check that the algorithm is ours. */
    char header[JWT_MAX_HEADER];
    long n = b64url_decode(token, hl, (uint8_t *)header, sizeof header);
    json_val h, v;
    if (n <= 0 || json_parse(header, (size_t)n, 4, &h, NULL) != 0 || h.type != JSON_OBJECT)
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "malformed token header");
    if (!members_unique(&h, scratch, sizeof scratch, spans, PARLEY_ARRAY_LEN(spans)))
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token header has a repeated member");
    if (!json_object_get(&h, "alg", &v) || !json_string_eq(&v, "HS256"))
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token algorithm must be HS256");
    if (json_object_get(&h, "crit", &v))
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token header has unsupported crit");
    if (json_object_get(&h, "typ", &v)) {
        char typ[8];
        long tl = v.type == JSON_STRING ? json_string_decode(&v, typ, sizeof typ) : -1;
        if (tl != 3 || !pstr_ieq(typ, 3, "JWT", 3))
            return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token typ must be JWT");
    }

    uint8_t sig[SIG_LEN], mac[SIG_LEN];
    if (b64url_decode(d2 + 1, sl, sig, sizeof sig) != SIG_LEN)
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "malformed token signature");
    if (hmac256(k->secret, k->len, token, hl + 1 + pl, mac) != 0)
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "cannot compute the signature");
    if (CRYPTO_memcmp(sig, mac, SIG_LEN) != 0)
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "bad token signature");

    /* Claims, now that they are known to come from a key holder. */
    char claims[JWT_MAX_TOKEN];
    n = b64url_decode(d1 + 1, pl, (uint8_t *)claims, sizeof claims);
    json_val p;
    if (n <= 0 || json_parse(claims, (size_t)n, 8, &p, NULL) != 0 || p.type != JSON_OBJECT)
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "malformed token claims");
    if (!members_unique(&p, scratch, sizeof scratch, spans, PARLEY_ARRAY_LEN(spans)))
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token claims have a repeated member");
    bool has_exp, has_nbf, has_iat;
    int64_t exp = 0, nbf = 0, iat = 0;
    if (!numeric_date(&p, "exp", &has_exp, &exp) || !numeric_date(&p, "nbf", &has_nbf, &nbf) ||
        !numeric_date(&p, "iat", &has_iat, &iat))
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL,
                        "exp, nbf and iat must be numbers within years 0001 to 9999");
    if (!has_exp) return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "the token has no exp");
    int64_t now = clamp64(now_ms, -CLOCK_CLAMP, CLOCK_CLAMP);
    int64_t leeway = clamp64(k->leeway_ms, 0, SPAN_CLAMP);
    if (now > exp + leeway) return msg_fail(err, MSG_E_TOKEN_EXPIRED, NULL, "token expired");
    if (has_nbf && nbf > now + leeway)
        return msg_fail(err, MSG_E_TOKEN_NOT_YET_VALID, NULL, "token not valid yet (nbf)");
    if (!json_object_get(&p, "sub", &v) || v.type != JSON_STRING)
        return msg_fail(err, MSG_E_INVALID_USER, NULL, "the token has no sub");
    n = json_string_decode(&v, c->sub, sizeof c->sub - 1);
    if (n < 0 || !msg_valid_user(c->sub, (size_t)n)) {
        c->sub[0] = 0;
        return msg_fail(err, MSG_E_INVALID_USER, NULL,
                        "sub is not a valid user id ([A-Za-z0-9._@-], 1 to 64 bytes)");
    }
    c->sub[n] = 0;
    c->admin = json_object_get(&p, "role", &v) && json_string_eq(&v, "admin");
    c->notifier = json_object_get(&p, "role", &v) && json_string_eq(&v, "notifier");
    c->exp_ms = exp;
    return MSG_OK;
}

int jwt_sign(pbuf *out, const char *header_json, const char *claims_json, const uint8_t *secret,
             size_t secret_len)
{
    if (!header_json) header_json = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    size_t start = out->len;
    int rc = b64url_append(out, (const uint8_t *)header_json, strlen(header_json));
    if (rc == 0) rc = pbuf_append(out, ".", 1);
    if (rc == 0) rc = b64url_append(out, (const uint8_t *)claims_json, strlen(claims_json));
    uint8_t mac[SIG_LEN];
    if (rc == 0)
        rc = hmac256(secret, secret_len, (const char *)out->ptr + start, out->len - start, mac);
    if (rc == 0) rc = pbuf_append(out, ".", 1);
    if (rc == 0) rc = b64url_append(out, mac, sizeof mac);
    return rc;
}
