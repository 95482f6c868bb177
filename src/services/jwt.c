/* JSON Web Tokens: HS256, RS256 and ES256 verification, and signing (see
 * jwt.h). The key set and its loaders are in jwt_keys.c. */
#include "services/jwt.h"

#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "codec/json.h"
#include "parley/parley.h"
#include "services/jwt_internal.h"

#define SIG_LEN     32 /* HS256 */
#define ES_SIG_LEN  64 /* ES256: r||s */
#define MAX_SIG_LEN (JWT_RSA_MAX_BITS / 8)

/* NumericDates outside years 0001..9999 are refused: such a value is a
 * bug or an attack (exp 1e300 would never expire), and within these
 * bounds a date in ms fits an int64 with room to spare. */
#define DATE_MIN (-62135596800.0)
#define DATE_MAX 253402300799.0
/* The caller's clock and durations are clamped so that no sum or
 * difference below can overflow (dates are below 2^48 ms). */
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
        mlen != SIG_LEN) {
        ERR_clear_error();
        return PARLEY_EIO;
    }
    return 0;
}

static int span_cmp(const void *a, const void *b)
{
    const jwt_span *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = n ? memcmp(x->p, y->p, n) : 0;
    if (c) return c;
    return (x->n > y->n) - (x->n < y->n);
}

bool jwt__members_unique(const json_val *obj, char *scratch, size_t scratch_cap, jwt_span *spans,
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

enum alg { ALG_NONE, ALG_HS256, ALG_RS256, ALG_ES256 };

/* What a verification may use: a view of a jwt_key or of a key set. */
typedef struct verifier {
    const uint8_t *secret;
    size_t secret_len;
    bool hs; /* HS256 accepted */
    const jwt_pubkey *keys;
    size_t nkeys;
    int64_t leeway_ms;
    int64_t max_lifetime_ms;
} verifier;

static bool has_type(const verifier *vf, jwt_ktype t)
{
    for (size_t i = 0; i < vf->nkeys; i++)
        if (vf->keys[i].type == t) return true;
    return false;
}

/* "HS256", "RS256 or ES256", ...: the algorithms the verifier has keys for. */
static void alg_list(const verifier *vf, char *out, size_t cap)
{
    const char *names[3];
    size_t n = 0;
    if (vf->hs) names[n++] = "HS256";
    if (has_type(vf, JWT_KT_RSA)) names[n++] = "RS256";
    if (has_type(vf, JWT_KT_P256)) names[n++] = "ES256";
    if (n == 1) snprintf(out, cap, "%s", names[0]);
    if (n == 2) snprintf(out, cap, "%s or %s", names[0], names[1]);
    if (n == 3) snprintf(out, cap, "%s, %s or %s", names[0], names[1], names[2]);
}

/* The key's kid is kid[0, kl) (kl < 0: no kid given). */
static bool kid_is(const jwt_pubkey *k, const char *kid, long kl)
{
    return kl >= 0 && k->has_kid && k->kid_len == (size_t)kl &&
           memcmp(k->kid, kid, k->kid_len) == 0;
}

static bool digest_verify(EVP_PKEY *pk, const char *data, size_t len, const uint8_t *sig, size_t sl)
{
    EVP_MD_CTX *m = EVP_MD_CTX_new();
    bool ok = m && EVP_DigestVerifyInit(m, NULL, EVP_sha256(), NULL, pk) == 1 &&
              EVP_DigestVerify(m, sig, sl, (const unsigned char *)data, len) == 1;
    EVP_MD_CTX_free(m);
    /* A refused signature leaves errors queued; left there they would be
     * reported as the cause of the next unrelated failure (TLS). */
    ERR_clear_error();
    return ok;
}

/* ES256: the JWS signature is r||s; OpenSSL verifies DER ECDSA-Sig-Value. */
static bool es256_verify(EVP_PKEY *pk, const char *data, size_t len, const uint8_t rs[ES_SIG_LEN])
{
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(rs, ES_SIG_LEN / 2, NULL);
    BIGNUM *s = BN_bin2bn(rs + ES_SIG_LEN / 2, ES_SIG_LEN / 2, NULL);
    if (!es || !r || !s || ECDSA_SIG_set0(es, r, s) != 1) {
        ECDSA_SIG_free(es);
        BN_free(r);
        BN_free(s);
        ERR_clear_error();
        return false;
    }
    uint8_t der[80]; /* two 33-byte INTEGERs and the headers: at most 72 */
    uint8_t *p = der;
    int dl = i2d_ECDSA_SIG(es, NULL);
    bool ok = dl > 0 && (size_t)dl <= sizeof der && i2d_ECDSA_SIG(es, &p) == dl;
    ECDSA_SIG_free(es);
    if (!ok) {
        ERR_clear_error();
        return false;
    }
    return digest_verify(pk, data, len, der, (size_t)dl);
}

static msg_errcode verify(const verifier *vf, const char *token, size_t len, int64_t now_ms,
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
    jwt_span spans[JWT_MAX_TOKEN / 4 + 1];

    /* Header: the algorithm and the key. */
    char header[JWT_MAX_HEADER];
    long n = b64url_decode(token, hl, (uint8_t *)header, sizeof header);
    json_val h, v;
    if (n <= 0 || json_parse(header, (size_t)n, 4, &h, NULL) != 0 || h.type != JSON_OBJECT)
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "malformed token header");
    if (!jwt__members_unique(&h, scratch, sizeof scratch, spans, PARLEY_ARRAY_LEN(spans)))
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token header has a repeated member");
    enum alg alg = ALG_NONE;
    if (json_object_get(&h, "alg", &v)) {
        if (json_string_eq(&v, "HS256") && vf->hs) alg = ALG_HS256;
        if (json_string_eq(&v, "RS256") && has_type(vf, JWT_KT_RSA)) alg = ALG_RS256;
        if (json_string_eq(&v, "ES256") && has_type(vf, JWT_KT_P256)) alg = ALG_ES256;
    }
    if (alg == ALG_NONE) {
        char algs[32] = "";
        alg_list(vf, algs, sizeof algs);
        if (!algs[0])
            return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "the server has no token keys");
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token algorithm must be %s", algs);
    }
    if (json_object_get(&h, "crit", &v))
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token header has unsupported crit");
    if (json_object_get(&h, "typ", &v)) {
        char typ[8];
        long tl = v.type == JSON_STRING ? json_string_decode(&v, typ, sizeof typ) : -1;
        if (tl != 3 || !pstr_ieq(typ, 3, "JWT", 3))
            return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token typ must be JWT");
    }
    /* kid: kl < 0 for none; longer than any key's kid matches none. */
    char kid[JWT_MAX_KID];
    long kl = -1;
    if (alg != ALG_HS256 && json_object_get(&h, "kid", &v)) {
        if (v.type != JSON_STRING)
            return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token kid must be a string");
        kl = json_string_decode(&v, kid, sizeof kid);
        if (kl < 0) kl = JWT_MAX_KID + 1;
    }

    uint8_t sig[MAX_SIG_LEN];
    long sn = b64url_decode(d2 + 1, sl, sig, sizeof sig);
    const char *signed_part = token;
    size_t signed_len = hl + 1 + pl;
    if (alg == ALG_HS256) {
        uint8_t mac[SIG_LEN];
        if (sn != SIG_LEN)
            return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "malformed token signature");
        if (hmac256(vf->secret, vf->secret_len, signed_part, signed_len, mac) != 0)
            return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "cannot compute the signature");
        if (CRYPTO_memcmp(sig, mac, SIG_LEN) != 0)
            return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "bad token signature");
    } else {
        jwt_ktype want = alg == ALG_RS256 ? JWT_KT_RSA : JWT_KT_P256;
        if (sn < 0 || (alg == ALG_ES256 && sn != ES_SIG_LEN))
            return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "malformed token signature");
        /* Candidates: the key named by kid, else the keys without kid. */
        bool by_kid = false;
        for (size_t i = 0; kl >= 0 && i < vf->nkeys && !by_kid; i++)
            by_kid = vf->keys[i].type == want && kid_is(&vf->keys[i], kid, kl);
        size_t tried = 0, fitting = 0;
        bool ok = false;
        for (size_t i = 0; i < vf->nkeys && !ok; i++) {
            const jwt_pubkey *k = &vf->keys[i];
            if (k->type != want) continue;
            if (by_kid ? !kid_is(k, kid, kl) : kl >= 0 && k->has_kid) continue;
            fitting++;
            if (k->sig_len != (size_t)sn) continue;
            tried++;
            ok = alg == ALG_ES256
                     ? es256_verify(k->pkey, signed_part, signed_len, sig)
                     : digest_verify(k->pkey, signed_part, signed_len, sig, (size_t)sn);
        }
        if (!fitting) return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "unknown key id");
        if (!tried)
            return msg_fail(err, MSG_E_INVALID_TOKEN, NULL,
                            "token signature length does not fit the key");
        if (!ok) return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "bad token signature");
    }

    /* Claims, now that they are known to come from a key holder. */
    char claims[JWT_MAX_TOKEN];
    n = b64url_decode(d1 + 1, pl, (uint8_t *)claims, sizeof claims);
    json_val p;
    if (n <= 0 || json_parse(claims, (size_t)n, 8, &p, NULL) != 0 || p.type != JSON_OBJECT)
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "malformed token claims");
    if (!jwt__members_unique(&p, scratch, sizeof scratch, spans, PARLEY_ARRAY_LEN(spans)))
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token claims have a repeated member");
    bool has_exp, has_nbf, has_iat;
    int64_t exp = 0, nbf = 0, iat = 0;
    if (!numeric_date(&p, "exp", &has_exp, &exp) || !numeric_date(&p, "nbf", &has_nbf, &nbf) ||
        !numeric_date(&p, "iat", &has_iat, &iat))
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL,
                        "exp, nbf and iat must be numbers within years 0001 to 9999");
    if (!has_exp) return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "the token has no exp");
    int64_t now = clamp64(now_ms, -CLOCK_CLAMP, CLOCK_CLAMP);
    int64_t leeway = clamp64(vf->leeway_ms, 0, SPAN_CLAMP);
    int64_t max_life = clamp64(vf->max_lifetime_ms, 0, SPAN_CLAMP);
    if (now > exp + leeway) return msg_fail(err, MSG_E_TOKEN_EXPIRED, NULL, "token expired");
    if (has_nbf && nbf > now + leeway)
        return msg_fail(err, MSG_E_TOKEN_NOT_YET_VALID, NULL, "token not valid yet (nbf)");
    if (max_life > 0 && (exp > now + max_life + leeway || (has_iat && exp - iat > max_life)))
        return msg_fail(err, MSG_E_INVALID_TOKEN, NULL,
                        "token lifetime exceeds the server's maximum (%lld s)",
                        (long long)(max_life / 1000));
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

msg_errcode jwt_verify(const jwt_key *k, const char *token, size_t len, int64_t now_ms,
                       jwt_claims *c, msg_error *err)
{
    verifier vf = {
        .secret = k->secret,
        .secret_len = k->len,
        .hs = true,
        .leeway_ms = k->leeway_ms,
    };
    return verify(&vf, token, len, now_ms, c, err);
}

msg_errcode jwt_verify_set(const jwt_keyset *ks, const char *token, size_t len, int64_t now_ms,
                           jwt_claims *c, msg_error *err)
{
    verifier vf = {
        .secret = ks->secret,
        .secret_len = ks->secret_len,
        .hs = ks->secret != NULL,
        .keys = ks->keys,
        .nkeys = ks->n,
        .leeway_ms = ks->leeway_ms,
        .max_lifetime_ms = ks->max_lifetime_ms,
    };
    return verify(&vf, token, len, now_ms, c, err);
}

/* header.claims appended (base64url) to out. */
static int signing_input(pbuf *out, const char *header_json, const char *claims_json)
{
    int rc = b64url_append(out, (const uint8_t *)header_json, strlen(header_json));
    if (rc == 0) rc = pbuf_append(out, ".", 1);
    if (rc == 0) rc = b64url_append(out, (const uint8_t *)claims_json, strlen(claims_json));
    return rc;
}

int jwt_sign(pbuf *out, const char *header_json, const char *claims_json, const uint8_t *secret,
             size_t secret_len)
{
    if (!header_json) header_json = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    size_t start = out->len;
    int rc = signing_input(out, header_json, claims_json);
    uint8_t mac[SIG_LEN];
    if (rc == 0)
        rc = hmac256(secret, secret_len, (const char *)out->ptr + start, out->len - start, mac);
    if (rc == 0) rc = pbuf_append(out, ".", 1);
    if (rc == 0) rc = b64url_append(out, mac, sizeof mac);
    return rc;
}

/* A DER ECDSA-Sig-Value as the raw r||s of JWS. */
static int der_to_raw(const uint8_t *der, size_t len, uint8_t raw[ES_SIG_LEN])
{
    const unsigned char *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)len);
    if (!es) return PARLEY_EIO;
    const BIGNUM *r, *s;
    ECDSA_SIG_get0(es, &r, &s);
    int rc = BN_bn2binpad(r, raw, ES_SIG_LEN / 2) == ES_SIG_LEN / 2 &&
                     BN_bn2binpad(s, raw + ES_SIG_LEN / 2, ES_SIG_LEN / 2) == ES_SIG_LEN / 2
                 ? 0
                 : PARLEY_EIO;
    ECDSA_SIG_free(es);
    return rc;
}

int jwt_sign_pkey(pbuf *out, const char *header_json, const char *claims_json, EVP_PKEY *priv)
{
    bool ec;
    if (EVP_PKEY_is_a(priv, "RSA"))
        ec = false;
    else if (jwt__is_p256(priv))
        ec = true;
    else
        return PARLEY_EINVAL;
    if (!header_json)
        header_json =
            ec ? "{\"alg\":\"ES256\",\"typ\":\"JWT\"}" : "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
    size_t start = out->len;
    int rc = signing_input(out, header_json, claims_json);
    EVP_MD_CTX *m = rc == 0 ? EVP_MD_CTX_new() : NULL;
    uint8_t *sig = NULL;
    size_t sl = 0;
    if (rc == 0 && !m) rc = PARLEY_ENOMEM;
    if (rc == 0 && (EVP_DigestSignInit(m, NULL, EVP_sha256(), NULL, priv) != 1 ||
                    EVP_DigestSign(m, NULL, &sl, out->ptr + start, out->len - start) != 1))
        rc = PARLEY_EIO;
    if (rc == 0 && !(sig = malloc(sl))) rc = PARLEY_ENOMEM;
    if (rc == 0 && EVP_DigestSign(m, sig, &sl, out->ptr + start, out->len - start) != 1)
        rc = PARLEY_EIO;
    uint8_t raw[ES_SIG_LEN];
    if (rc == 0 && ec) rc = der_to_raw(sig, sl, raw);
    if (rc == 0) rc = pbuf_append(out, ".", 1);
    if (rc == 0) rc = ec ? b64url_append(out, raw, sizeof raw) : b64url_append(out, sig, sl);
    free(sig);
    EVP_MD_CTX_free(m);
    if (rc) {
        ERR_clear_error();
        out->len = start;
    }
    return rc;
}

/* ---- minting HS256 tokens ---- */

static int mint_fail(char *err, size_t cap, int rc, const char *fmt, ...)
{
    if (cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return rc;
}

int jwt_read_key_file(const char *path, const char *what, uint8_t **out, size_t *len, char *err,
                      size_t errcap)
{
    FILE *f = fopen(path, "rb");
    if (!f) return mint_fail(err, errcap, PARLEY_EIO, "%s: %s", path, strerror(errno));
    uint8_t *buf = malloc(JWT_SECRET_MAX + 1);
    if (!buf) {
        fclose(f);
        return mint_fail(err, errcap, PARLEY_ENOMEM, "%s: out of memory", path);
    }
    errno = 0;
    size_t n = fread(buf, 1, JWT_SECRET_MAX + 1, f);
    bool failed = ferror(f) != 0;
    int read_errno = errno ? errno : EIO;
    fclose(f);
    int rc = 0;
    if (failed) {
        rc = mint_fail(err, errcap, PARLEY_EIO, "%s: cannot read: %s", path, strerror(read_errno));
    } else if (n > JWT_SECRET_MAX) {
        rc = mint_fail(err, errcap, PARLEY_EINVAL,
                       "%s: %s is over %d bytes (it must be 1 to %d)", path, what,
                       JWT_SECRET_MAX, JWT_SECRET_MAX);
    } else {
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
        if (n == 0)
            rc = mint_fail(err, errcap, PARLEY_EINVAL,
                           "%s: %s file is empty (line ends do not count)", path, what);
    }
    if (rc) {
        OPENSSL_cleanse(buf, JWT_SECRET_MAX + 1);
        free(buf);
        return rc;
    }
    *out = buf;
    *len = n;
    return 0;
}

int jwt_read_secret_file(const char *path, uint8_t **out, size_t *len, char *err, size_t errcap)
{
    return jwt_read_key_file(path, "the JWT secret", out, len, err, errcap);
}

int jwt_mint_hs256(pbuf *out, const jwt_mint_opts *o, const uint8_t *secret, size_t secret_len,
                   char *err, size_t errcap)
{
    size_t sl = o->sub ? strlen(o->sub) : 0;
    if (sl == 0) return mint_fail(err, errcap, PARLEY_EINVAL, "the user id must not be empty");
    if (sl > MSG_USER_MAX)
        return mint_fail(err, errcap, PARLEY_EINVAL,
                         "the user id is %zu bytes; at most %d are allowed", sl, MSG_USER_MAX);
    if (!msg_valid_user(o->sub, sl))
        return mint_fail(err, errcap, PARLEY_EINVAL,
                         "the user id may contain only letters, digits and . _ @ -");
    if (o->role && strcmp(o->role, "admin") != 0 && strcmp(o->role, "notifier") != 0)
        return mint_fail(err, errcap, PARLEY_EINVAL,
                         "unknown role '%.64s': the role must be admin or notifier", o->role);
    if (o->kid) {
        size_t kl = strlen(o->kid);
        if (kl == 0 || kl > JWT_MAX_KID)
            return mint_fail(err, errcap, PARLEY_EINVAL, "the key id must be 1 to %d bytes",
                             JWT_MAX_KID);
        for (size_t i = 0; i < kl; i++)
            if ((unsigned char)o->kid[i] < 0x20 || o->kid[i] == 0x7f)
                return mint_fail(err, errcap, PARLEY_EINVAL,
                                 "the key id must not contain control characters");
    }
    if (o->ttl_s < 1 || o->ttl_s > JWT_MINT_TTL_MAX)
        return mint_fail(err, errcap, PARLEY_EINVAL,
                         "the lifetime must be 1 to %d seconds (ten years)", JWT_MINT_TTL_MAX);
    if (o->now_s < 0 || o->now_s > (int64_t)DATE_MAX - JWT_MINT_TTL_MAX)
        return mint_fail(err, errcap, PARLEY_EINVAL, "the clock is out of range");
    if (!secret || secret_len == 0)
        return mint_fail(err, errcap, PARLEY_EINVAL, "the secret must not be empty");
    pbuf h = {0}, c = {0};
    int rc = pbuf_append_str(&h, "{\"alg\":\"HS256\",\"typ\":\"JWT\"");
    if (rc == 0 && o->kid) {
        rc = pbuf_append_str(&h, ",\"kid\":");
        if (rc == 0) rc = json_append_string(&h, o->kid, strlen(o->kid));
    }
    if (rc == 0) rc = pbuf_append(&h, "}", 2); /* with the NUL */
    if (rc == 0) rc = pbuf_append_str(&c, "{\"sub\":");
    if (rc == 0) rc = json_append_string(&c, o->sub, sl);
    if (rc == 0)
        rc = pbuf_appendf(&c, ",\"iat\":%lld,\"exp\":%lld", (long long)o->now_s,
                          (long long)(o->now_s + o->ttl_s));
    if (rc == 0 && o->role) rc = pbuf_appendf(&c, ",\"role\":\"%s\"", o->role);
    if (rc == 0) rc = pbuf_append(&c, "}", 2);
    if (rc == 0) rc = jwt_sign(out, (const char *)h.ptr, (const char *)c.ptr, secret, secret_len);
    pbuf_free(&h);
    pbuf_free(&c);
    if (rc) return mint_fail(err, errcap, rc, "cannot make the token: %s", parley_strerror(rc));
    return 0;
}
