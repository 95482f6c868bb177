/* JWT key sets: lifetime, and public keys from EVP_PKEYs, PEM and JWKS
 * (see jwt.h). */
#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "base/util.h"
#include "codec/json.h"
#include "parley/parley.h"
#include "services/jwt_internal.h"

#define MAX_SPAN       ((int64_t)1 << 40) /* leeway and lifetime: about 35 years */
#define JWKS_MAX_DEPTH 8
#define RSA_MAX_BYTES  (JWT_RSA_MAX_BITS / 8)
#define RSA_E_MAX      8  /* bytes of a public exponent */
#define P256_COORD     32 /* bytes of an x or y coordinate */

static int fail(char *err, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Writes the message and returns rc; OpenSSL's error queue is cleared so
 * that what a refused key left there is not blamed on a later failure. */
static int fail(char *err, size_t cap, int rc, const char *fmt, ...)
{
    ERR_clear_error();
    if (err && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* s[0, n) for a message: printable ASCII, at most 40 characters. */
static void printable(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < cap; i++) {
        if (i == 40) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char ch = (unsigned char)s[i];
        out[o++] = ch >= 0x20 && ch < 0x7f && ch != '"' ? (char)ch : '?';
    }
    out[o] = 0;
}

/* ---- lifetime ---- */

void jwt_keyset_opts_init(jwt_keyset_opts *o)
{
    o->leeway_ms = 30000;
    o->max_lifetime_ms = 0;
}

int jwt_keyset_new(const jwt_keyset_opts *o, jwt_keyset **out)
{
    *out = NULL;
    jwt_keyset_opts d;
    if (!o) {
        jwt_keyset_opts_init(&d);
        o = &d;
    }
    if (o->leeway_ms < 0 || o->leeway_ms > MAX_SPAN || o->max_lifetime_ms < 0 ||
        o->max_lifetime_ms > MAX_SPAN)
        return PARLEY_EINVAL;
    jwt_keyset *ks = pcalloc(1, sizeof *ks);
    if (!ks) return PARLEY_ENOMEM;
    ks->refs = 1;
    ks->leeway_ms = o->leeway_ms;
    ks->max_lifetime_ms = o->max_lifetime_ms;
    *out = ks;
    return 0;
}

jwt_keyset *jwt_keyset_ref(jwt_keyset *ks)
{
    if (ks) {
        assert(ks->refs > 0);
        ks->refs++;
    }
    return ks;
}

/* Drops the keys from index `from` on (a load that failed half-way). */
static void truncate_keys(jwt_keyset *ks, size_t from)
{
    while (ks->n > from) {
        ks->n--;
        EVP_PKEY_free(ks->keys[ks->n].pkey);
        memset(&ks->keys[ks->n], 0, sizeof ks->keys[ks->n]);
    }
}

void jwt_keyset_unref(jwt_keyset *ks)
{
    if (!ks) return;
    assert(ks->refs > 0);
    if (--ks->refs > 0) return;
    truncate_keys(ks, 0);
    OPENSSL_clear_free(ks->secret, ks->secret_len);
    free(ks);
}

int jwt_keyset_set_secret(jwt_keyset *ks, const uint8_t *secret, size_t len)
{
    assert(ks->refs == 1); /* filled before it is shared */
    if (!len) return PARLEY_EINVAL;
    uint8_t *copy = malloc(len);
    if (!copy) return PARLEY_ENOMEM;
    memcpy(copy, secret, len);
    OPENSSL_clear_free(ks->secret, ks->secret_len);
    ks->secret = copy;
    ks->secret_len = len;
    return 0;
}

size_t jwt_keyset_count(const jwt_keyset *ks)
{
    return ks->n;
}

bool jwt_keyset_has_secret(const jwt_keyset *ks)
{
    return ks->secret != NULL;
}

/* ---- adding a key ---- */

bool jwt__is_p256(EVP_PKEY *pk)
{
    char name[64];
    if (!EVP_PKEY_is_a(pk, "EC")) return false;
    if (EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, name, sizeof name, NULL) !=
        1) {
        ERR_clear_error(); /* explicit curve parameters: no name */
        return false;
    }
    return strcmp(name, "prime256v1") == 0 || strcmp(name, "P-256") == 0;
}

/* An RSA public exponent worth having: odd and above 1 (n is checked by
 * the caller). */
static bool rsa_e_ok(const BIGNUM *e)
{
    return BN_is_odd(e) && !BN_is_one(e) && BN_num_bytes(e) <= RSA_E_MAX;
}

/* The key's type and the length of the signatures it makes, or an error
 * naming `where`. */
static int classify(EVP_PKEY *pk, jwt_ktype *type, size_t *sig_len, const char *where, char *err,
                    size_t cap)
{
    if (EVP_PKEY_is_a(pk, "RSA")) {
        int bits = EVP_PKEY_get_bits(pk);
        if (bits < JWT_RSA_MIN_BITS || bits > JWT_RSA_MAX_BITS)
            return fail(err, cap, PARLEY_ELIMIT, "%s: RSA key of %d bits (%d to %d accepted)",
                        where, bits, JWT_RSA_MIN_BITS, JWT_RSA_MAX_BITS);
        BIGNUM *n = NULL, *e = NULL;
        bool ok = EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &n) == 1 &&
                  EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_E, &e) == 1 && BN_is_odd(n) &&
                  rsa_e_ok(e);
        BN_free(n);
        BN_free(e);
        if (!ok)
            return fail(err, cap, PARLEY_EINVAL, "%s: not a valid RSA public key (n or e)", where);
        *type = JWT_KT_RSA;
        *sig_len = (size_t)EVP_PKEY_get_size(pk);
        return 0;
    }
    if (jwt__is_p256(pk)) {
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
        bool ok = c && EVP_PKEY_public_check(c) == 1;
        EVP_PKEY_CTX_free(c);
        if (!ok) return fail(err, cap, PARLEY_EINVAL, "%s: not a valid P-256 public key", where);
        *type = JWT_KT_P256;
        *sig_len = 64;
        return 0;
    }
    if (EVP_PKEY_is_a(pk, "EC"))
        return fail(err, cap, PARLEY_EINVAL,
                    "%s: EC key on a curve other than P-256 (ES256 needs P-256)", where);
    const char *name = EVP_PKEY_get0_type_name(pk);
    return fail(err, cap, PARLEY_EINVAL,
                "%s: key type %s is not supported (RSA for RS256, EC P-256 for ES256)", where,
                name ? name : "(unknown)");
}

/* Checks pk and appends it with its kid (kid_len 0: none). pk is the set's
 * from now on (freed on error). */
static int push_key(jwt_keyset *ks, EVP_PKEY *pk, const char *kid, size_t kid_len,
                    const char *where, char *err, size_t cap)
{
    jwt_ktype type = JWT_KT_RSA;
    size_t sig_len = 0;
    int rc = classify(pk, &type, &sig_len, where, err, cap);
    if (rc) {
        EVP_PKEY_free(pk);
        return rc;
    }
    for (size_t i = 0; kid_len && i < ks->n; i++)
        if (ks->keys[i].has_kid && ks->keys[i].kid_len == kid_len &&
            memcmp(ks->keys[i].kid, kid, kid_len) == 0) {
            EVP_PKEY_free(pk);
            return fail(err, cap, PARLEY_EINVAL, "%s: kid used by another key", where);
        }
    if (ks->n == JWT_MAX_KEYS) {
        EVP_PKEY_free(pk);
        return fail(err, cap, PARLEY_ELIMIT, "%s: more than %d public keys", where, JWT_MAX_KEYS);
    }
    jwt_pubkey *k = &ks->keys[ks->n++];
    k->type = type;
    k->sig_len = sig_len;
    k->pkey = pk;
    k->has_kid = kid_len > 0;
    k->kid_len = kid_len;
    if (kid_len) memcpy(k->kid, kid, kid_len);
    return 0;
}

int jwt_keyset_add_key(jwt_keyset *ks, EVP_PKEY *pkey, const char *kid, char *err, size_t errcap)
{
    assert(ks->refs == 1);
    size_t kl = kid ? strlen(kid) : 0;
    if (kid && (kl == 0 || kl > JWT_MAX_KID))
        return fail(err, errcap, PARLEY_EINVAL, "kid must be 1 to %d bytes", JWT_MAX_KID);
    /* A public-only copy: the set never holds private key material. */
    unsigned char *der = NULL;
    int dl = i2d_PUBKEY(pkey, &der);
    const unsigned char *p = der;
    EVP_PKEY *pub = dl > 0 ? d2i_PUBKEY(NULL, &p, dl) : NULL;
    OPENSSL_free(der);
    if (!pub) return fail(err, errcap, PARLEY_EINVAL, "key: cannot take its public key");
    return push_key(ks, pub, kid, kl, "key", err, errcap);
}

/* ---- files ---- */

/* The whole file, at most JWT_MAX_FILE bytes, in a buffer the caller
 * frees. */
static int read_file(const char *path, char **out, size_t *len, char *err, size_t cap)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, cap, PARLEY_EIO, "%s: %s", path, strerror(errno));
    char *buf = malloc(JWT_MAX_FILE + 1);
    if (!buf) {
        fclose(f);
        return fail(err, cap, PARLEY_ENOMEM, "%s: out of memory", path);
    }
    errno = 0;
    size_t n = fread(buf, 1, JWT_MAX_FILE + 1, f);
    bool bad = ferror(f) != 0;
    int e = errno ? errno : EIO;
    fclose(f);
    if (bad || n > JWT_MAX_FILE) {
        free(buf);
        if (bad) return fail(err, cap, PARLEY_EIO, "%s: %s", path, strerror(e));
        return fail(err, cap, PARLEY_ELIMIT, "%s: larger than %d bytes", path, JWT_MAX_FILE);
    }
    *out = buf;
    *len = n;
    return 0;
}

typedef int (*add_fn)(jwt_keyset *ks, const char *text, size_t len, char *err, size_t cap);

static int add_file(jwt_keyset *ks, const char *path, add_fn add, char *err, size_t cap)
{
    char *text = NULL;
    size_t len = 0;
    int rc = read_file(path, &text, &len, err, cap);
    if (rc) return rc;
    char why[256];
    rc = add(ks, text, len, why, sizeof why);
    free(text);
    if (rc) return fail(err, cap, rc, "%s: %s", path, why);
    return 0;
}

/* ---- PEM ---- */

/* The public key of one PEM block, or an error. */
static int pem_block_key(const char *name, const unsigned char *data, long dlen, const char *where,
                         EVP_PKEY **out, char *err, size_t cap)
{
    const unsigned char *p = data;
    *out = NULL;
    if (strcmp(name, "PUBLIC KEY") == 0) {
        *out = d2i_PUBKEY(NULL, &p, dlen);
    } else if (strcmp(name, "CERTIFICATE") == 0) {
        X509 *x = d2i_X509(NULL, &p, dlen);
        if (x) *out = X509_get_pubkey(x);
        X509_free(x);
    } else if (strstr(name, "PRIVATE KEY")) {
        return fail(err, cap, PARLEY_EINVAL,
                    "%s is a private key (%s): give the public key (openssl pkey -pubout) or a "
                    "certificate",
                    where, name);
    } else {
        char shown[48];
        printable(name, strlen(name), shown, sizeof shown);
        return fail(err, cap, PARLEY_EINVAL, "%s is a %s, not a PUBLIC KEY or CERTIFICATE", where,
                    shown);
    }
    if (*out && p != data + dlen) { /* bytes after the structure */
        EVP_PKEY_free(*out);
        *out = NULL;
    }
    if (!*out) return fail(err, cap, PARLEY_EINVAL, "%s (%s) does not decode", where, name);
    return 0;
}

int jwt_keyset_add_pem(jwt_keyset *ks, const char *pem, size_t len, char *err, size_t errcap)
{
    assert(ks->refs == 1);
    if (len > JWT_MAX_FILE)
        return fail(err, errcap, PARLEY_ELIMIT, "larger than %d bytes", JWT_MAX_FILE);
    if (len == 0) return fail(err, errcap, PARLEY_EINVAL, "empty: no PEM block");
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    if (!b) return fail(err, errcap, PARLEY_ENOMEM, "out of memory");
    size_t mark = ks->n;
    int rc = 0;
    for (unsigned block = 1;; block++) {
        char *name = NULL, *hdr = NULL;
        unsigned char *data = NULL;
        long dlen = 0;
        char where[32];
        snprintf(where, sizeof where, "PEM block %u", block);
        ERR_clear_error();
        if (PEM_read_bio(b, &name, &hdr, &data, &dlen) != 1) {
            unsigned long e = ERR_peek_last_error();
            bool none = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
            if (none && block > 1) break; /* the end */
            rc = none ? fail(err, errcap, PARLEY_EINVAL,
                             "no PEM block (-----BEGIN PUBLIC KEY----- or CERTIFICATE)")
                      : fail(err, errcap, PARLEY_EINVAL, "%s is malformed", where);
            break;
        }
        EVP_PKEY *pk = NULL;
        rc = pem_block_key(name, data, dlen, where, &pk, err, errcap);
        OPENSSL_free(name);
        OPENSSL_free(hdr);
        OPENSSL_free(data);
        if (rc == 0) rc = push_key(ks, pk, NULL, 0, where, err, errcap);
        if (rc) break;
    }
    BIO_free(b);
    ERR_clear_error();
    if (rc) truncate_keys(ks, mark);
    return rc;
}

int jwt_keyset_add_pem_file(jwt_keyset *ks, const char *path, char *err, size_t errcap)
{
    return add_file(ks, path, jwt_keyset_add_pem, err, errcap);
}

/* ---- JWKS ---- */

/* Refuses an object with a repeated member (allocates for the check: a
 * JWKS object may be as large as the file). */
static int unique_members(const json_val *obj, const char *where, char *err, size_t cap)
{
    size_t count = json_count(obj);
    char *scratch = malloc(obj->len);
    jwt_span *spans = pcalloc(count ? count : 1, sizeof *spans);
    int rc = 0;
    if (!scratch || !spans)
        rc = fail(err, cap, PARLEY_ENOMEM, "out of memory");
    else if (!jwt__members_unique(obj, scratch, obj->len, spans, count))
        rc = fail(err, cap, PARLEY_EINVAL, "%s has a repeated member", where);
    free(scratch);
    free(spans);
    return rc;
}

/* A base64url member of key k into out[0, cap): its length, or -1 with
 * err filled. */
static long b64_member(const json_val *k, const char *name, uint8_t *out, size_t cap,
                       const char *where, char *err, size_t ecap)
{
    json_val v;
    if (!json_object_get(k, name, &v) || v.type != JSON_STRING) {
        fail(err, ecap, PARLEY_EINVAL, "%s: \"%s\" is missing or not a string", where, name);
        return -1;
    }
    long n = b64url_decode(v.p + 1, v.len - 2, out, cap);
    if (n <= 0) {
        /* The JSON text of the value is its base64url (no escapes are
         * allowed in it: '\' is not in the alphabet). */
        fail(err, ecap, PARLEY_EINVAL, "%s: \"%s\" is not base64url of 1 to %zu bytes", where, name,
             cap);
        return -1;
    }
    return n;
}

static EVP_PKEY *from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pk = NULL;
    if (params && pc && EVP_PKEY_fromdata_init(pc) == 1)
        if (EVP_PKEY_fromdata(pc, &pk, EVP_PKEY_PUBLIC_KEY, params) != 1) pk = NULL;
    OSSL_PARAM_free(params);
    EVP_PKEY_CTX_free(pc);
    ERR_clear_error();
    return pk;
}

static int jwk_rsa(const json_val *k, const char *where, EVP_PKEY **out, char *err, size_t cap)
{
    /* Room for moduli over the limit, so that they are refused by size
     * (and leading zero octets, which are tolerated). */
    uint8_t nb[4 * RSA_MAX_BYTES], eb[RSA_E_MAX];
    long nl = b64_member(k, "n", nb, sizeof nb, where, err, cap);
    if (nl < 0) return PARLEY_EINVAL;
    long el = b64_member(k, "e", eb, sizeof eb, where, err, cap);
    if (el < 0) return PARLEY_EINVAL;
    BIGNUM *n = BN_bin2bn(nb, (int)nl, NULL), *e = BN_bin2bn(eb, (int)el, NULL);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    int rc = 0;
    if (!n || !e || !bld) {
        rc = fail(err, cap, PARLEY_ENOMEM, "out of memory");
    } else if (BN_num_bits(n) < JWT_RSA_MIN_BITS || BN_num_bits(n) > JWT_RSA_MAX_BITS) {
        rc = fail(err, cap, PARLEY_ELIMIT, "%s: RSA modulus of %d bits (%d to %d accepted)", where,
                  BN_num_bits(n), JWT_RSA_MIN_BITS, JWT_RSA_MAX_BITS);
    } else if (!BN_is_odd(n) || !rsa_e_ok(e)) {
        rc = fail(err, cap, PARLEY_EINVAL, "%s: not a valid RSA public key (n or e)", where);
    } else if (OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) != 1 ||
               OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) != 1 ||
               !(*out = from_params("RSA", bld))) {
        rc = fail(err, cap, PARLEY_EINVAL, "%s: OpenSSL refused the RSA key", where);
    }
    BN_free(n);
    BN_free(e);
    OSSL_PARAM_BLD_free(bld);
    return rc;
}

static int jwk_ec(const json_val *k, const char *where, EVP_PKEY **out, char *err, size_t cap)
{
    json_val v;
    if (!json_object_get(k, "crv", &v) || v.type != JSON_STRING)
        return fail(err, cap, PARLEY_EINVAL, "%s: \"crv\" is missing or not a string", where);
    if (!json_string_eq(&v, "P-256")) {
        char shown[48];
        printable(v.p + 1, v.len - 2, shown, sizeof shown);
        return fail(err, cap, PARLEY_EINVAL, "%s: curve \"%s\" is not supported (P-256 only)",
                    where, shown);
    }
    /* The uncompressed point: 0x04, x, y (each exactly 32 bytes). */
    uint8_t pt[1 + 2 * P256_COORD];
    pt[0] = 4;
    long xl = b64_member(k, "x", pt + 1, P256_COORD, where, err, cap);
    if (xl < 0) return PARLEY_EINVAL;
    long yl = b64_member(k, "y", pt + 1 + P256_COORD, P256_COORD, where, err, cap);
    if (yl < 0) return PARLEY_EINVAL;
    if (xl != P256_COORD || yl != P256_COORD)
        return fail(err, cap, PARLEY_EINVAL, "%s: x and y must be %d bytes each", where,
                    P256_COORD);
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (!bld) return fail(err, cap, PARLEY_ENOMEM, "out of memory");
    int rc = 0;
    if (OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) != 1 ||
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof pt) != 1 ||
        !(*out = from_params("EC", bld)))
        rc = fail(err, cap, PARLEY_EINVAL, "%s: x, y is not a point of P-256", where);
    OSSL_PARAM_BLD_free(bld);
    return rc;
}

/* One entry of "keys" (index i, from 1). */
static int jwk_one(jwt_keyset *ks, const json_val *k, size_t i, char *err, size_t cap)
{
    char where[96];
    snprintf(where, sizeof where, "key %zu", i);
    if (k->type != JSON_OBJECT) return fail(err, cap, PARLEY_EINVAL, "%s is not an object", where);
    json_val v;
    char kid[JWT_MAX_KID];
    long kl = 0;
    if (json_object_get(k, "kid", &v)) {
        kl = v.type == JSON_STRING ? json_string_decode(&v, kid, sizeof kid) : -1;
        if (kl <= 0)
            return fail(err, cap, PARLEY_EINVAL, "%s: kid must be a string of 1 to %d bytes", where,
                        JWT_MAX_KID);
        char shown[48];
        printable(kid, (size_t)kl, shown, sizeof shown);
        snprintf(where, sizeof where, "key %zu (kid \"%s\")", i, shown);
    }
    int rc = unique_members(k, where, err, cap);
    if (rc) return rc;
    if (!json_object_get(k, "kty", &v) || v.type != JSON_STRING)
        return fail(err, cap, PARLEY_EINVAL, "%s: \"kty\" is missing or not a string", where);
    bool rsa = json_string_eq(&v, "RSA");
    if (!rsa && !json_string_eq(&v, "EC")) {
        char shown[48];
        printable(v.p + 1, v.len - 2, shown, sizeof shown);
        return fail(err, cap, PARLEY_EINVAL,
                    "%s: kty \"%s\" is not supported (RSA for RS256, EC for ES256)", where, shown);
    }
    if (json_object_get(k, "d", &v))
        return fail(err, cap, PARLEY_EINVAL,
                    "%s holds private key material (\"d\"): give only public keys", where);
    if (json_object_get(k, "use", &v) && !json_string_eq(&v, "sig")) {
        char shown[48] = "?";
        if (v.type == JSON_STRING) printable(v.p + 1, v.len - 2, shown, sizeof shown);
        return fail(err, cap, PARLEY_EINVAL,
                    "%s: use \"%s\" (only signature keys, use \"sig\", verify tokens)", where,
                    shown);
    }
    if (json_object_get(k, "alg", &v) && !json_string_eq(&v, rsa ? "RS256" : "ES256")) {
        char shown[48] = "?";
        if (v.type == JSON_STRING) printable(v.p + 1, v.len - 2, shown, sizeof shown);
        return fail(err, cap, PARLEY_EINVAL, "%s: alg \"%s\" does not fit kty %s (%s only)", where,
                    shown, rsa ? "RSA" : "EC", rsa ? "RS256" : "ES256");
    }
    EVP_PKEY *pk = NULL;
    rc = rsa ? jwk_rsa(k, where, &pk, err, cap) : jwk_ec(k, where, &pk, err, cap);
    if (rc) return rc;
    return push_key(ks, pk, kid, (size_t)kl, where, err, cap);
}

int jwt_keyset_add_jwks(jwt_keyset *ks, const char *json, size_t len, char *err, size_t errcap)
{
    assert(ks->refs == 1);
    if (len > JWT_MAX_FILE)
        return fail(err, errcap, PARLEY_ELIMIT, "larger than %d bytes", JWT_MAX_FILE);
    json_val root, keys, k;
    size_t off = 0;
    if (json_parse(json, len, JWKS_MAX_DEPTH, &root, &off) != 0)
        return fail(err, errcap, PARLEY_EINVAL, "not JSON (or nested deeper than %d) at byte %zu",
                    JWKS_MAX_DEPTH, off);
    if (root.type != JSON_OBJECT)
        return fail(err, errcap, PARLEY_EINVAL, "a JWK Set is an object {\"keys\":[...]}");
    int rc = unique_members(&root, "the JWK Set", err, errcap);
    if (rc) return rc;
    if (!json_object_get(&root, "keys", &keys) || keys.type != JSON_ARRAY)
        return fail(err, errcap, PARLEY_EINVAL, "a JWK Set has a \"keys\" array");
    size_t count = json_count(&keys);
    if (count == 0) return fail(err, errcap, PARLEY_EINVAL, "the JWK Set has no keys");
    if (count > JWT_MAX_KEYS)
        return fail(err, errcap, PARLEY_ELIMIT, "%zu keys (at most %d)", count, JWT_MAX_KEYS);
    size_t mark = ks->n, i = 0;
    json_iter it;
    json_iter_init(&it, &keys);
    while (rc == 0 && json_array_next(&it, &k)) rc = jwk_one(ks, &k, ++i, err, errcap);
    if (rc) truncate_keys(ks, mark);
    return rc;
}

int jwt_keyset_add_jwks_file(jwt_keyset *ks, const char *path, char *err, size_t errcap)
{
    return add_file(ks, path, jwt_keyset_add_jwks, err, errcap);
}
