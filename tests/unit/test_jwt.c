/* Unit tests for JWT verification: HS256 accepted tokens, every refusal
 * with its code, base64url strictness, tampering (every single-byte change
 * of a valid token is refused), repeated members and date bounds; key sets
 * with RS256 and ES256 (keys made at test time, written as PEM and JWKS
 * files), algorithm confusion, kid selection, rotation, loader errors and
 * limits, the maximum lifetime, and signing. The loaders take whole files
 * (there is nothing to chop): each input is given in an exact-size buffer
 * so that ASan sees any read past its end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/buf.h"
#include "chop.h"
#include "parley/parley.h"
#include "services/jwt.h"

#define SECRET "0123456789abcdef0123456789abcdef"
#define NOW    1767225600000LL /* 2026-01-01T00:00:00Z */

static const jwt_key key = {(const uint8_t *)SECRET, sizeof SECRET - 1, 30000};

/* A signed token for claims (and header, NULL for the default), as a
 * NUL-terminated string the caller frees. */
static char *make(const char *header, const char *claims, const char *secret)
{
    pbuf out = {0};
    assert_int_equal(jwt_sign(&out, header, claims, (const uint8_t *)secret, strlen(secret)), 0);
    pbuf_append(&out, "", 1);
    return (char *)out.ptr;
}

/* Builds header.claims.sig with a raw signature part. */
static char *make_raw(const char *header, const char *claims, const char *sig)
{
    pbuf out = {0};
    b64url_append(&out, (const uint8_t *)header, strlen(header));
    pbuf_append(&out, ".", 1);
    b64url_append(&out, (const uint8_t *)claims, strlen(claims));
    pbuf_append(&out, ".", 1);
    pbuf_append_str(&out, sig);
    pbuf_append(&out, "", 1);
    return (char *)out.ptr;
}

static msg_errcode verify(const char *tok, jwt_claims *c, msg_error *e)
{
    memset(e, 0, sizeof *e);
    msg_errcode rc = jwt_verify(&key, tok, strlen(tok), NOW, c, e);
    assert_int_equal(rc, e->code);
    if (rc) {
        assert_true(e->message[0] != 0);
        assert_string_equal(c->sub, "");
    }
    return rc;
}

static void expect(const char *tok, msg_errcode want)
{
    jwt_claims c;
    msg_error e;
    msg_errcode rc = verify(tok, &c, &e);
    if (rc != want)
        fail_msg("%s: got %s (%s), want %s", tok, msg_errcode_name(rc), e.message,
                 msg_errcode_name(want));
}

static void expect_claims(const char *claims, msg_errcode want)
{
    char *t = make(NULL, claims, SECRET);
    expect(t, want);
    free(t);
}

static void test_valid(void **state)
{
    (void)state;
    char *t = make(NULL, "{\"sub\":\"alice\",\"exp\":1767229200,\"iat\":1767225600}", SECRET);
    jwt_claims c;
    msg_error e;
    assert_int_equal(verify(t, &c, &e), MSG_OK);
    assert_string_equal(c.sub, "alice");
    assert_false(c.admin);
    assert_int_equal(c.exp_ms, 1767229200000LL);
    free(t);

    t = make("{\"typ\":\"jwt\",\"kid\":\"k1\",\"alg\":\"HS256\"}",
             "{\"sub\":\"ops@example.com\",\"exp\":1767229200.5,\"nbf\":1767225600,\"role\":"
             "\"admin\",\"extra\":[1,{}]}",
             SECRET);
    assert_int_equal(verify(t, &c, &e), MSG_OK);
    assert_string_equal(c.sub, "ops@example.com");
    assert_true(c.admin);
    assert_int_equal(c.exp_ms, 1767229200500LL);
    free(t);
    /* role must be exactly "admin" */
    t = make(NULL, "{\"sub\":\"a\",\"exp\":1767229200,\"role\":[\"admin\"]}", SECRET);
    assert_int_equal(verify(t, &c, &e), MSG_OK);
    assert_false(c.admin);
    free(t);
    t = make(NULL, "{\"sub\":\"a\\u0062\",\"exp\":1767229200}", SECRET);
    assert_int_equal(verify(t, &c, &e), MSG_OK);
    assert_string_equal(c.sub, "ab");
    free(t);
}

static void test_times(void **state)
{
    (void)state;
    /* exp: the leeway is 30 s either way around now. */
    expect_claims("{\"sub\":\"a\",\"exp\":1767225600}", MSG_OK);
    expect_claims("{\"sub\":\"a\",\"exp\":1767225570}", MSG_OK);
    expect_claims("{\"sub\":\"a\",\"exp\":1767225569.9}", MSG_E_TOKEN_EXPIRED);
    expect_claims("{\"sub\":\"a\",\"exp\":1000}", MSG_E_TOKEN_EXPIRED);
    /* NumericDates beyond years 0001..9999 are invalid, not "never"
     * expiring (or long expired). */
    expect_claims("{\"sub\":\"a\",\"exp\":-1e300}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":1e300}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":1e20}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":1e400}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":9223372036854775807}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":253402300799}", MSG_OK);
    expect_claims("{\"sub\":\"a\",\"exp\":253402300799.5}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":253402300800}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":-62135596800}", MSG_E_TOKEN_EXPIRED);
    expect_claims("{\"sub\":\"a\",\"exp\":-62135596801}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":1767229200,\"nbf\":1e300}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":1767229200,\"nbf\":-1e20}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":1767229200,\"nbf\":0}", MSG_OK);
    /* iat, when present, is a NumericDate too. */
    expect_claims("{\"sub\":\"a\",\"exp\":1767229200,\"iat\":1e300}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":1767229200,\"iat\":\"1767225600\"}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":1767229200,\"iat\":1767225600.25}", MSG_OK);
    expect_claims("{\"sub\":\"a\"}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":\"1767229200\"}", MSG_E_INVALID_TOKEN);
    expect_claims("{\"sub\":\"a\",\"exp\":null}", MSG_E_INVALID_TOKEN);
    /* nbf */
    expect_claims("{\"sub\":\"a\",\"exp\":1767229200,\"nbf\":1767225630}", MSG_OK);
    expect_claims("{\"sub\":\"a\",\"exp\":1767229200,\"nbf\":1767225630.1}",
                  MSG_E_TOKEN_NOT_YET_VALID);
    expect_claims("{\"sub\":\"a\",\"exp\":1767229200,\"nbf\":1767300000}",
                  MSG_E_TOKEN_NOT_YET_VALID);
    expect_claims("{\"sub\":\"a\",\"exp\":1767229200,\"nbf\":true}", MSG_E_INVALID_TOKEN);
    /* Extreme clocks and leeways cannot overflow the arithmetic (UBSan
     * watches): a clock beyond any date is after exp or before nbf, even
     * with the largest leeway. */
    char *x = make(NULL, "{\"sub\":\"a\",\"exp\":253402300799,\"nbf\":-62135596800}", SECRET);
    jwt_claims xc;
    msg_error xe;
    jwt_key wide = {key.secret, key.len, INT64_MAX};
    assert_int_equal(jwt_verify(&wide, x, strlen(x), INT64_MAX, &xc, &xe), MSG_E_TOKEN_EXPIRED);
    assert_int_equal(jwt_verify(&wide, x, strlen(x), INT64_MIN, &xc, &xe),
                     MSG_E_TOKEN_NOT_YET_VALID);
    assert_int_equal(jwt_verify(&wide, x, strlen(x), NOW, &xc, &xe), MSG_OK);
    wide.leeway_ms = INT64_MIN; /* taken as 0 */
    assert_int_equal(jwt_verify(&wide, x, strlen(x), INT64_MAX, &xc, &xe), MSG_E_TOKEN_EXPIRED);
    assert_int_equal(jwt_verify(&wide, x, strlen(x), INT64_MIN, &xc, &xe),
                     MSG_E_TOKEN_NOT_YET_VALID);
    free(x);
    /* A zero leeway is exact. */
    jwt_key strict = key;
    strict.leeway_ms = 0;
    char *t = make(NULL, "{\"sub\":\"a\",\"exp\":1767225599.999}", SECRET);
    jwt_claims c;
    msg_error e;
    assert_int_equal(jwt_verify(&strict, t, strlen(t), NOW, &c, &e), MSG_E_TOKEN_EXPIRED);
    assert_int_equal(jwt_verify(&strict, t, strlen(t), NOW - 1, &c, &e), MSG_OK);
    free(t);
}

static void test_subject(void **state)
{
    (void)state;
    expect_claims("{\"exp\":1767229200}", MSG_E_INVALID_USER);
    expect_claims("{\"sub\":\"\",\"exp\":1767229200}", MSG_E_INVALID_USER);
    expect_claims("{\"sub\":\"a b\",\"exp\":1767229200}", MSG_E_INVALID_USER);
    expect_claims("{\"sub\":\"a:b\",\"exp\":1767229200}", MSG_E_INVALID_USER);
    expect_claims("{\"sub\":\"a\\u0000\",\"exp\":1767229200}", MSG_E_INVALID_USER);
    expect_claims("{\"sub\":42,\"exp\":1767229200}", MSG_E_INVALID_USER);
    expect_claims("{\"sub\":null,\"exp\":1767229200}", MSG_E_INVALID_USER);
    char claims[256];
    char u[70];
    memset(u, 'u', 65);
    u[65] = 0;
    snprintf(claims, sizeof claims, "{\"sub\":\"%s\",\"exp\":1767229200}", u);
    expect_claims(claims, MSG_E_INVALID_USER);
    u[64] = 0;
    snprintf(claims, sizeof claims, "{\"sub\":\"%s\",\"exp\":1767229200}", u);
    expect_claims(claims, MSG_OK);
}

static void test_algorithms(void **state)
{
    (void)state;
    const char *claims = "{\"sub\":\"alice\",\"exp\":1767229200}";
    /* alg none, with and without a signature part. */
    char *t = make_raw("{\"alg\":\"none\",\"typ\":\"JWT\"}", claims, "");
    expect(t, MSG_E_INVALID_TOKEN);
    free(t);
    t = make("{\"alg\":\"none\"}", claims, SECRET);
    expect(t, MSG_E_INVALID_TOKEN);
    free(t);
    static const char *const headers[] = {
        "{\"alg\":\"HS512\"}",
        "{\"alg\":\"hs256\"}",
        "{\"alg\":\"RS256\"}",
        "{\"alg\":\"HS256 \"}",
        "{\"typ\":\"JWT\"}",
        "{\"alg\":256}",
        "{\"alg\":\"HS256\",\"typ\":\"JWS\"}",
        "{\"alg\":\"HS256\",\"typ\":1}",
        "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}",
        "{\"alg\":\"HS256\",\"b64\":false,\"crit\":[\"b64\"]}",
        "[\"alg\",\"HS256\"]",
        "\"HS256\"",
        "{\"alg\":\"HS256\"",
    };
    for (size_t i = 0; i < sizeof headers / sizeof *headers; i++) {
        t = make(headers[i], claims, SECRET);
        expect(t, MSG_E_INVALID_TOKEN);
        free(t);
    }
    /* The right algorithm with the wrong key. */
    t = make(NULL, claims, "another secret of thirty-two byte");
    expect(t, MSG_E_INVALID_TOKEN);
    free(t);
    t = make(NULL, claims, "");
    expect(t, MSG_E_INVALID_TOKEN);
    free(t);
    /* The claims are not looked at when the signature is wrong. */
    t = make(NULL, "{\"exp\":1}", "wrong");
    expect(t, MSG_E_INVALID_TOKEN);
    free(t);
    /* Claims that are not an object, signed correctly. */
    t = make(NULL, "[1]", SECRET);
    expect(t, MSG_E_INVALID_TOKEN);
    free(t);
    t = make(NULL, "{\"sub\":\"a\",", SECRET);
    expect(t, MSG_E_INVALID_TOKEN);
    free(t);
}

static void test_shape(void **state)
{
    (void)state;
    char *good = make(NULL, "{\"sub\":\"alice\",\"exp\":1767229200}", SECRET);
    size_t n = strlen(good);
    expect("", MSG_E_INVALID_TOKEN);
    expect("a.b", MSG_E_INVALID_TOKEN);
    expect("..", MSG_E_INVALID_TOKEN);
    expect("a.b.c.d", MSG_E_INVALID_TOKEN);
    char buf[512];
    snprintf(buf, sizeof buf, "%s.", good);
    expect(buf, MSG_E_INVALID_TOKEN);
    snprintf(buf, sizeof buf, " %s", good);
    expect(buf, MSG_E_INVALID_TOKEN);
    snprintf(buf, sizeof buf, "%s=", good);
    expect(buf, MSG_E_INVALID_TOKEN);
    /* The signature part without its last character. */
    snprintf(buf, sizeof buf, "%.*s", (int)n - 1, good);
    expect(buf, MSG_E_INVALID_TOKEN);
    /* Standard base64 characters are not base64url. */
    char *t = strdup(good);
    for (char *p = t; *p; p++)
        if (*p == '-') *p = '+';
    if (strcmp(t, good) != 0) expect(t, MSG_E_INVALID_TOKEN);
    free(t);

    /* Every change of a single byte is refused (signature, or a now
     * malformed part). */
    jwt_claims c;
    msg_error e;
    for (size_t i = 0; i < n; i++) {
        char orig = good[i];
        for (int d = 1; d < 256; d += 37) {
            good[i] = (char)(orig ^ d);
            assert_int_not_equal(jwt_verify(&key, good, n, NOW, &c, &e), MSG_OK);
        }
        good[i] = orig;
    }
    assert_int_equal(jwt_verify(&key, good, n, NOW, &c, &e), MSG_OK);
    free(good);

    /* The size limit applies before anything is decoded. */
    pbuf big = {0};
    pbuf_append_str(&big, "{\"sub\":\"alice\",\"exp\":1767229200,\"pad\":\"");
    for (int i = 0; i < 3100; i++) pbuf_append(&big, "x", 1);
    pbuf_append(&big, "\"}", 3);
    t = make(NULL, (char *)big.ptr, SECRET);
    assert_true(strlen(t) > JWT_MAX_TOKEN);
    assert_int_equal(verify(t, &c, &e), MSG_E_INVALID_TOKEN);
    assert_non_null(strstr(e.message, "longer than"));
    free(t);
    big.len = 0;
    pbuf_append_str(&big, "{\"sub\":\"alice\",\"exp\":1767229200,\"pad\":\"");
    for (int i = 0; i < 2900; i++) pbuf_append(&big, "x", 1);
    pbuf_append(&big, "\"}", 3);
    t = make(NULL, (char *)big.ptr, SECRET);
    assert_true(strlen(t) <= JWT_MAX_TOKEN);
    expect(t, MSG_OK);
    free(t);
    pbuf_free(&big);
}

static void test_base64url(void **state)
{
    (void)state;
    uint8_t out[16];
    assert_int_equal(b64url_decode("", 0, out, sizeof out), 0);
    assert_int_equal(b64url_decode("YQ", 2, out, sizeof out), 1);
    assert_int_equal(out[0], 'a');
    assert_int_equal(b64url_decode("YR", 2, out, sizeof out), -1); /* non-canonical */
    assert_int_equal(b64url_decode("YQ==", 4, out, sizeof out), -1);
    assert_int_equal(b64url_decode("Y", 1, out, sizeof out), -1);
    assert_int_equal(b64url_decode("YWI", 3, out, sizeof out), 2);
    assert_int_equal(b64url_decode("YWJj", 4, out, sizeof out), 3);
    assert_int_equal(b64url_decode("-_8", 3, out, sizeof out), 2);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(out[1], 0xff);
    assert_int_equal(b64url_decode("+/8", 3, out, sizeof out), -1);
    assert_int_equal(b64url_decode("YWJj", 4, out, 2), -1);
    /* Round trips of every length, byte by byte. */
    uint64_t rng = chop_seed();
    for (size_t len = 0; len < 64; len++) {
        uint8_t in[64], back[64];
        for (size_t i = 0; i < len; i++) in[i] = (uint8_t)test_rand(&rng);
        pbuf enc = {0};
        assert_int_equal(b64url_append(&enc, in, len), 0);
        if (enc.len) assert_null(memchr(enc.ptr, '=', enc.len));
        assert_int_equal(b64url_decode((char *)enc.ptr, enc.len, back, sizeof back), (long)len);
        assert_memory_equal(in, back, len);
        pbuf_free(&enc);
    }
}

/* The signature is the RFC 7515 HMAC over "header.claims", checked here
 * against OpenSSL directly rather than through jwt_sign. */
static void test_signature_is_hmac(void **state)
{
    (void)state;
    char *t = make_raw("{\"alg\":\"HS256\"}", "{\"sub\":\"x\",\"exp\":1767229200}", "");
    size_t n = strlen(t) - 1; /* without the final '.' */
    uint8_t mac[32];
    unsigned int ml = 0;
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (const uint8_t *)t, n, mac, &ml);
    pbuf tok = {0};
    pbuf_append(&tok, t, n + 1);
    b64url_append(&tok, mac, ml);
    pbuf_append(&tok, "", 1);
    expect((char *)tok.ptr, MSG_OK);
    pbuf_free(&tok);
    free(t);
}

/* ---- repeated members ---- */

static void test_repeated_members(void **state)
{
    (void)state;
    const char *claims = "{\"sub\":\"alice\",\"exp\":1767229200}";
    static const char *const headers[] = {
        "{\"alg\":\"HS256\",\"alg\":\"HS256\"}",
        "{\"alg\":\"HS256\",\"alg\":\"none\"}",
        "{\"alg\":\"none\",\"alg\":\"HS256\"}",
        "{\"alg\":\"HS256\",\"\\u0061lg\":\"HS256\"}",
        "{\"typ\":\"JWT\",\"alg\":\"HS256\",\"typ\":\"JWT\"}",
        "{\"alg\":\"HS256\",\"x\":1,\"y\":2,\"x\":3}",
        "{\"alg\":\"HS256\",\"\":1,\"\":2}",
    };
    for (size_t i = 0; i < sizeof headers / sizeof *headers; i++) {
        char *t = make(headers[i], claims, SECRET);
        jwt_claims c;
        msg_error e;
        assert_int_equal(verify(t, &c, &e), MSG_E_INVALID_TOKEN);
        if (!strstr(e.message, "repeated")) fail_msg("%s: %s", headers[i], e.message);
        free(t);
    }
    static const char *const bad[] = {
        "{\"sub\":\"alice\",\"sub\":\"admin\",\"exp\":1767229200}",
        "{\"sub\":\"alice\",\"exp\":1767229200,\"exp\":1}",
        "{\"sub\":\"alice\",\"exp\":1,\"exp\":1767229200}",
        "{\"sub\":\"alice\",\"exp\":1767229200,\"role\":\"x\",\"role\":\"admin\"}",
        "{\"sub\":\"alice\",\"exp\":1767229200,\"nbf\":0,\"n\\u0062f\":9e9}",
        "{\"sub\":\"alice\",\"exp\":1767229200,\"custom\":1,\"custom\":1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *t = make(NULL, bad[i], SECRET);
        jwt_claims c;
        msg_error e;
        assert_int_equal(verify(t, &c, &e), MSG_E_INVALID_TOKEN);
        if (!strstr(e.message, "repeated")) fail_msg("%s: %s", bad[i], e.message);
        free(t);
    }
    /* Names that only look alike, and repeats inside nested values, are
     * fine. */
    expect_claims("{\"sub\":\"a\",\"exp\":1767229200,\"Sub\":1,\"sub \":2,\"x\":{\"k\":1,\"k\":2}}",
                  MSG_OK);
    expect_claims("{\"sub\":\"a\",\"exp\":1767229200,\"l\":[{\"a\":1},{\"a\":1}]}", MSG_OK);
    /* Many members, none repeated (the sort sees them all). */
    pbuf big = {0};
    pbuf_append_str(&big, "{\"sub\":\"a\",\"exp\":1767229200");
    for (int i = 0; i < 250; i++) {
        char m[24];
        snprintf(m, sizeof m, ",\"%d\":0", i);
        pbuf_append_str(&big, m);
    }
    pbuf_append(&big, "}", 2);
    expect_claims((char *)big.ptr, MSG_OK);
    big.len -= 2;
    pbuf_append(&big, ",\"217\":1}", 10);
    expect_claims((char *)big.ptr, MSG_E_INVALID_TOKEN);
    pbuf_free(&big);
}

/* ---- key sets: fixtures ---- */

typedef struct keys {
    EVP_PKEY *rsa1, *rsa2, *rsa1024, *ec1, *ec2, *ec384, *ed;
    char dir[64];
    int nfiles;
} keys;

static keys K;

static int keys_setup(void **state)
{
    (void)state;
    K.rsa1 = EVP_RSA_gen(2048);
    K.rsa2 = EVP_RSA_gen(2048);
    K.rsa1024 = EVP_RSA_gen(1024);
    K.ec1 = EVP_EC_gen("P-256");
    K.ec2 = EVP_EC_gen("P-256");
    K.ec384 = EVP_EC_gen("P-384");
    K.ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    snprintf(K.dir, sizeof K.dir, "/tmp/parley-jwt-XXXXXX");
    if (!K.rsa1 || !K.rsa2 || !K.rsa1024 || !K.ec1 || !K.ec2 || !K.ec384 || !K.ed ||
        !mkdtemp(K.dir))
        return -1;
    return 0;
}

static int keys_teardown(void **state)
{
    (void)state;
    EVP_PKEY_free(K.rsa1);
    EVP_PKEY_free(K.rsa2);
    EVP_PKEY_free(K.rsa1024);
    EVP_PKEY_free(K.ec1);
    EVP_PKEY_free(K.ec2);
    EVP_PKEY_free(K.ec384);
    EVP_PKEY_free(K.ed);
    char path[128];
    for (int i = 0; i < K.nfiles; i++) {
        snprintf(path, sizeof path, "%s/f%d", K.dir, i);
        unlink(path);
    }
    rmdir(K.dir);
    return 0;
}

/* Writes data to a new file of the temporary directory; returns its path
 * (static storage, valid until the next call). */
static const char *write_file(const void *data, size_t len)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/f%d", K.dir, K.nfiles++);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len) assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    return path;
}

/* PEM of the public key (pub) or the private key, appended to out. */
static void pem_append(pbuf *out, EVP_PKEY *pk, bool pub)
{
    BIO *b = BIO_new(BIO_s_mem());
    assert_true(pub ? PEM_write_bio_PUBKEY(b, pk)
                    : PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL));
    char *p;
    long n = BIO_get_mem_data(b, &p);
    pbuf_append(out, p, (size_t)n);
    BIO_free(b);
}

/* A self-signed certificate for pk, as PEM. */
static void cert_append(pbuf *out, EVP_PKEY *pk)
{
    X509 *x = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_gmtime_adj(X509_getm_notBefore(x), -86400 * 400); /* dates are not checked */
    X509_gmtime_adj(X509_getm_notAfter(x), -86400 * 300);
    X509_set_pubkey(x, pk);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"issuer", -1, -1,
                               0);
    X509_set_issuer_name(x, name);
    assert_true(X509_sign(x, pk, EVP_sha256()) > 0);
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    char *p;
    long n = BIO_get_mem_data(b, &p);
    pbuf_append(out, p, (size_t)n);
    BIO_free(b);
    X509_free(x);
}

static void bn_b64(pbuf *out, EVP_PKEY *pk, const char *param, int pad)
{
    BIGNUM *bn = NULL;
    assert_int_equal(EVP_PKEY_get_bn_param(pk, param, &bn), 1);
    uint8_t buf[1024];
    int n = pad ? BN_bn2binpad(bn, buf, pad) : BN_bn2bin(bn, buf);
    assert_true(n > 0);
    b64url_append(out, buf, (size_t)n);
    BN_free(bn);
}

/* A JWK for pk's public key: kid (NULL: none) and extra members (text
 * starting with ',' or ""). */
static void jwk_append(pbuf *out, EVP_PKEY *pk, const char *kid, const char *extra)
{
    if (EVP_PKEY_is_a(pk, "RSA")) {
        pbuf_append_str(out, "{\"kty\":\"RSA\",\"n\":\"");
        bn_b64(out, pk, OSSL_PKEY_PARAM_RSA_N, 0);
        pbuf_append_str(out, "\",\"e\":\"");
        bn_b64(out, pk, OSSL_PKEY_PARAM_RSA_E, 0);
    } else {
        char group[32];
        assert_int_equal(EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group,
                                                        sizeof group, NULL),
                         1);
        int size = strcmp(group, "prime256v1") == 0 ? 32 : 48;
        pbuf_append_str(out, "{\"kty\":\"EC\",\"crv\":\"");
        pbuf_append_str(out, size == 32 ? "P-256" : "P-384");
        pbuf_append_str(out, "\",\"x\":\"");
        bn_b64(out, pk, OSSL_PKEY_PARAM_EC_PUB_X, size);
        pbuf_append_str(out, "\",\"y\":\"");
        bn_b64(out, pk, OSSL_PKEY_PARAM_EC_PUB_Y, size);
    }
    pbuf_append_str(out, "\"");
    if (kid) {
        pbuf_append_str(out, ",\"kid\":\"");
        pbuf_append_str(out, kid);
        pbuf_append_str(out, "\"");
    }
    pbuf_append_str(out, extra);
    pbuf_append_str(out, "}");
}

/* A set with the options' defaults, filled by the caller. */
static jwt_keyset *set_new(void)
{
    jwt_keyset *ks = NULL;
    assert_int_equal(jwt_keyset_new(NULL, &ks), 0);
    return ks;
}

/* Loads text as a JWKS through an exact-size copy (so that any read past
 * the end shows under ASan). */
static int add_jwks(jwt_keyset *ks, const char *text, size_t len, char *err, size_t cap)
{
    char *copy = malloc(len ? len : 1);
    if (len) memcpy(copy, text, len);
    int rc = jwt_keyset_add_jwks(ks, copy, len, err, cap);
    free(copy);
    return rc;
}

static int add_pem(jwt_keyset *ks, const char *text, size_t len, char *err, size_t cap)
{
    char *copy = malloc(len ? len : 1);
    if (len) memcpy(copy, text, len);
    int rc = jwt_keyset_add_pem(ks, copy, len, err, cap);
    free(copy);
    return rc;
}

static char *make_pk(const char *header, const char *claims, EVP_PKEY *pk)
{
    pbuf out = {0};
    assert_int_equal(jwt_sign_pkey(&out, header, claims, pk), 0);
    pbuf_append(&out, "", 1);
    return (char *)out.ptr;
}

static msg_errcode verify_set(const jwt_keyset *ks, const char *tok, msg_error *e)
{
    jwt_claims c;
    memset(e, 0, sizeof *e);
    msg_errcode rc = jwt_verify_set(ks, tok, strlen(tok), NOW, &c, e);
    assert_int_equal(rc, e->code);
    if (rc) {
        assert_true(e->message[0] != 0);
        assert_string_equal(c.sub, "");
    } else {
        assert_string_equal(c.sub, "alice");
    }
    return rc;
}

/* Token signed by pk with header, verified against ks: want code and,
 * on failure, a message containing msg (NULL: any). */
static void expect_pk(const jwt_keyset *ks, const char *header, EVP_PKEY *pk, msg_errcode want,
                      const char *msg)
{
    char *t = make_pk(header, "{\"sub\":\"alice\",\"exp\":1767229200}", pk);
    msg_error e;
    msg_errcode rc = verify_set(ks, t, &e);
    if (rc != want || (msg && !strstr(e.message, msg)))
        fail_msg("%s: got %s (%s), want %s (%s)", header ? header : "default", msg_errcode_name(rc),
                 e.message, msg_errcode_name(want), msg ? msg : "");
    free(t);
}

#define CLAIMS "{\"sub\":\"alice\",\"exp\":1767229200}"
#define RS     "{\"alg\":\"RS256\"}"
#define ES     "{\"alg\":\"ES256\"}"

/* ---- RS256 and ES256 ---- */

static void test_public_keys(void **state)
{
    (void)state;
    pbuf pem = {0};
    pem_append(&pem, K.rsa1, true);
    pbuf_append_str(&pem, "text between blocks is ignored\n");
    pem_append(&pem, K.ec1, true);
    char err[256] = "";
    jwt_keyset *ks = set_new();
    assert_int_equal(jwt_keyset_add_pem_file(ks, write_file(pem.ptr, pem.len), err, sizeof err), 0);
    assert_int_equal(jwt_keyset_count(ks), 2);
    assert_false(jwt_keyset_has_secret(ks));

    expect_pk(ks, NULL, K.rsa1, MSG_OK, NULL);
    expect_pk(ks, NULL, K.ec1, MSG_OK, NULL);
    expect_pk(ks, "{\"alg\":\"RS256\",\"typ\":\"JWT\",\"kid\":\"any\"}", K.rsa1, MSG_OK, NULL);
    expect_pk(ks, "{\"typ\":\"jwt\",\"alg\":\"ES256\",\"x5u\":\"https://evil/\"}", K.ec1, MSG_OK,
              NULL);
    /* Claims are checked as for HS256. */
    char *t = make_pk(NULL, "{\"sub\":\"alice\",\"exp\":1000}", K.ec1);
    msg_error e;
    assert_int_equal(verify_set(ks, t, &e), MSG_E_TOKEN_EXPIRED);
    free(t);
    t = make_pk(NULL, "{\"sub\":\"a b\",\"exp\":1767229200}", K.rsa1);
    assert_int_equal(verify_set(ks, t, &e), MSG_E_INVALID_USER);
    free(t);
    t = make_pk(RS, "{\"sub\":\"alice\",\"sub\":\"bob\",\"exp\":1767229200}", K.rsa1);
    assert_int_equal(verify_set(ks, t, &e), MSG_E_INVALID_TOKEN);
    free(t);

    /* Other keys of the right type. */
    expect_pk(ks, NULL, K.rsa2, MSG_E_INVALID_TOKEN, "bad token signature");
    expect_pk(ks, NULL, K.ec2, MSG_E_INVALID_TOKEN, "bad token signature");

    /* Certificates carry keys too (their dates are not looked at). */
    pbuf certs = {0};
    cert_append(&certs, K.rsa2);
    cert_append(&certs, K.ec2);
    assert_int_equal(add_pem(ks, (char *)certs.ptr, certs.len, err, sizeof err), 0);
    assert_int_equal(jwt_keyset_count(ks), 4);
    expect_pk(ks, NULL, K.rsa2, MSG_OK, NULL);
    expect_pk(ks, NULL, K.ec2, MSG_OK, NULL);
    pbuf_free(&certs);
    pbuf_free(&pem);
    jwt_keyset_unref(ks);
}

static void test_bad_signatures(void **state)
{
    (void)state;
    jwt_keyset *ks = set_new();
    char err[256];
    assert_int_equal(jwt_keyset_add_key(ks, K.rsa1, NULL, err, sizeof err), 0);
    assert_int_equal(jwt_keyset_add_key(ks, K.ec1, NULL, err, sizeof err), 0);
    msg_error e;
    jwt_claims c;

    /* Every byte change of a signed token is refused. */
    EVP_PKEY *both[2] = {K.rsa1, K.ec1};
    for (int k = 0; k < 2; k++) {
        char *t = make_pk(NULL, CLAIMS, both[k]);
        size_t n = strlen(t);
        for (size_t i = 0; i < n; i += (i > 40 && i < n - 40) ? 7 : 1) {
            char orig = t[i];
            t[i] = (char)(orig ^ 1);
            assert_int_not_equal(jwt_verify_set(ks, t, n, NOW, &c, &e), MSG_OK);
            t[i] = orig;
        }
        assert_int_equal(jwt_verify_set(ks, t, n, NOW, &c, &e), MSG_OK);
        free(t);
    }

    /* ES256 signatures are exactly 64 bytes of r||s: no DER, no other
     * length. */
    char *t = make_pk(NULL, CLAIMS, K.ec1);
    char *sig = strrchr(t, '.') + 1;
    uint8_t raw[64];
    assert_int_equal(b64url_decode(sig, strlen(sig), raw, sizeof raw), 64);
    static const size_t lens[] = {0, 1, 32, 63, 65, 66, 72, 128};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++) {
        uint8_t buf[128] = {0};
        memcpy(buf, raw, lens[i] < 64 ? lens[i] : 64);
        pbuf tok = {0};
        pbuf_append(&tok, t, (size_t)(sig - t));
        b64url_append(&tok, buf, lens[i]);
        pbuf_append(&tok, "", 1);
        assert_int_equal(verify_set(ks, (char *)tok.ptr, &e), MSG_E_INVALID_TOKEN);
        assert_non_null(strstr(e.message, "signature"));
        pbuf_free(&tok);
    }
    /* The DER form OpenSSL produces is not a JWS signature. */
    {
        ECDSA_SIG *es = ECDSA_SIG_new();
        ECDSA_SIG_set0(es, BN_bin2bn(raw, 32, NULL), BN_bin2bn(raw + 32, 32, NULL));
        uint8_t der[80], *p = der;
        int dl = i2d_ECDSA_SIG(es, &p);
        ECDSA_SIG_free(es);
        pbuf tok = {0};
        pbuf_append(&tok, t, (size_t)(sig - t));
        b64url_append(&tok, der, (size_t)dl);
        pbuf_append(&tok, "", 1);
        assert_int_equal(verify_set(ks, (char *)tok.ptr, &e), MSG_E_INVALID_TOKEN);
        pbuf_free(&tok);
    }
    /* r or s zero, or all ones (>= the group order). */
    for (int v = 0; v < 4; v++) {
        uint8_t buf[64];
        memcpy(buf, raw, 64);
        memset(buf + (v & 1) * 32, (v & 2) ? 0xff : 0, 32);
        pbuf tok = {0};
        pbuf_append(&tok, t, (size_t)(sig - t));
        b64url_append(&tok, buf, 64);
        pbuf_append(&tok, "", 1);
        assert_int_equal(verify_set(ks, (char *)tok.ptr, &e), MSG_E_INVALID_TOKEN);
        pbuf_free(&tok);
    }
    free(t);

    /* RS256: a signature of another length than the modulus. */
    t = make_pk(NULL, CLAIMS, K.rsa1);
    sig = strrchr(t, '.') + 1;
    uint8_t rs[256];
    assert_int_equal(b64url_decode(sig, strlen(sig), rs, sizeof rs), 256);
    for (size_t l = 0; l <= 257; l += 255) {
        uint8_t buf[257] = {0};
        memcpy(buf + (l == 257), rs, l ? 256 : 0);
        pbuf tok = {0};
        pbuf_append(&tok, t, (size_t)(sig - t));
        b64url_append(&tok, buf, l);
        pbuf_append(&tok, "", 1);
        assert_int_equal(verify_set(ks, (char *)tok.ptr, &e), MSG_E_INVALID_TOKEN);
        pbuf_free(&tok);
    }
    free(t);
    jwt_keyset_unref(ks);
}

/* The algorithm comes from the key, never from the token: every pairing
 * of a token's alg with a key of another type is refused. */
static void test_algorithm_confusion(void **state)
{
    (void)state;
    char err[256];
    msg_error e;
    pbuf pem = {0};
    pem_append(&pem, K.rsa1, true);
    pbuf_append(&pem, "", 1);

    /* The classic: HS256 "signed" with the RSA public key's PEM as the
     * HMAC secret, against a set holding that public key. */
    jwt_keyset *pub = set_new();
    assert_int_equal(add_pem(pub, (char *)pem.ptr, pem.len - 1, err, sizeof err), 0);
    char *t = make(NULL, CLAIMS, (char *)pem.ptr);
    assert_int_equal(verify_set(pub, t, &e), MSG_E_INVALID_TOKEN);
    assert_non_null(strstr(e.message, "must be RS256"));
    /* ... and against a set that also has an HS256 secret. */
    jwt_keyset *mixed = set_new();
    assert_int_equal(jwt_keyset_set_secret(mixed, (const uint8_t *)SECRET, strlen(SECRET)), 0);
    assert_int_equal(add_pem(mixed, (char *)pem.ptr, pem.len - 1, err, sizeof err), 0);
    assert_int_equal(verify_set(mixed, t, &e), MSG_E_INVALID_TOKEN);
    assert_non_null(strstr(e.message, "bad token signature"));
    free(t);
    /* Same with the DER bytes of the key. */
    uint8_t *der = NULL;
    int dl = i2d_PUBKEY(K.rsa1, &der);
    pbuf tok = {0};
    assert_int_equal(jwt_sign(&tok, NULL, CLAIMS, der, (size_t)dl), 0);
    pbuf_append(&tok, "", 1);
    assert_int_equal(verify_set(mixed, (char *)tok.ptr, &e), MSG_E_INVALID_TOKEN);
    pbuf_free(&tok);
    OPENSSL_free(der);
    /* The secret still works in the mixed set. */
    t = make(NULL, CLAIMS, SECRET);
    assert_int_equal(verify_set(mixed, t, &e), MSG_OK);
    /* An HS256 token against public keys only. */
    assert_int_equal(verify_set(pub, t, &e), MSG_E_INVALID_TOKEN);
    free(t);

    /* RS256 header, EC key; ES256 header, RSA key: with and without a key
     * of the header's type in the set. */
    jwt_keyset *ec_only = set_new();
    assert_int_equal(jwt_keyset_add_key(ec_only, K.ec1, NULL, err, sizeof err), 0);
    expect_pk(ec_only, RS, K.ec1, MSG_E_INVALID_TOKEN, "must be ES256");
    expect_pk(pub, ES, K.rsa1, MSG_E_INVALID_TOKEN, "must be RS256");
    jwt_keyset *both = set_new();
    assert_int_equal(jwt_keyset_add_key(both, K.ec1, NULL, err, sizeof err), 0);
    assert_int_equal(jwt_keyset_add_key(both, K.rsa1, NULL, err, sizeof err), 0);
    expect_pk(both, RS, K.ec1, MSG_E_INVALID_TOKEN, NULL);
    expect_pk(both, ES, K.rsa1, MSG_E_INVALID_TOKEN, NULL);
    expect_pk(both, RS, K.rsa1, MSG_OK, NULL);
    expect_pk(both, ES, K.ec1, MSG_OK, NULL);
    expect_pk(both, "{\"alg\":\"HS256\"}", K.rsa1, MSG_E_INVALID_TOKEN, "must be RS256 or ES256");

    /* Secret only: public-key algorithms are refused as before. */
    jwt_keyset *sec = set_new();
    assert_int_equal(jwt_keyset_set_secret(sec, (const uint8_t *)SECRET, strlen(SECRET)), 0);
    expect_pk(sec, NULL, K.rsa1, MSG_E_INVALID_TOKEN, "must be HS256");
    expect_pk(sec, NULL, K.ec1, MSG_E_INVALID_TOKEN, "must be HS256");

    /* Other algorithms, whatever the set holds. */
    static const char *const algs[] = {
        "{\"alg\":\"none\"}",  "{\"alg\":\"RS384\"}",   "{\"alg\":\"PS256\"}",
        "{\"alg\":\"ES384\"}", "{\"alg\":\"rs256\"}",   "{\"alg\":\"ES256K\"}",
        "{\"alg\":\"EdDSA\"}", "{\"alg\":[\"RS256\"]}", "{}",
    };
    for (size_t i = 0; i < sizeof algs / sizeof *algs; i++) {
        expect_pk(both, algs[i], K.rsa1, MSG_E_INVALID_TOKEN, "algorithm");
        expect_pk(both, algs[i], K.ec1, MSG_E_INVALID_TOKEN, "algorithm");
    }
    t = make_raw("{\"alg\":\"none\"}", CLAIMS, "");
    assert_int_equal(verify_set(both, t, &e), MSG_E_INVALID_TOKEN);
    free(t);
    /* crit and typ rules hold for every algorithm. */
    expect_pk(both, "{\"alg\":\"ES256\",\"crit\":[\"b64\"],\"b64\":false}", K.ec1,
              MSG_E_INVALID_TOKEN, "crit");
    expect_pk(both, "{\"alg\":\"RS256\",\"typ\":\"JOSE\"}", K.rsa1, MSG_E_INVALID_TOKEN, "typ");
    expect_pk(both, "{\"alg\":\"RS256\",\"alg\":\"RS256\"}", K.rsa1, MSG_E_INVALID_TOKEN,
              "repeated");
    /* An embedded key is never trusted. */
    pbuf h = {0};
    pbuf_append_str(&h, "{\"alg\":\"ES256\",\"jwk\":");
    jwk_append(&h, K.ec2, NULL, "");
    pbuf_append(&h, "}", 2);
    expect_pk(both, (char *)h.ptr, K.ec2, MSG_E_INVALID_TOKEN, "bad token signature");
    pbuf_free(&h);

    /* An empty set refuses everything. */
    jwt_keyset *none = set_new();
    expect_pk(none, NULL, K.rsa1, MSG_E_INVALID_TOKEN, "no token keys");
    t = make(NULL, CLAIMS, SECRET);
    assert_int_equal(verify_set(none, t, &e), MSG_E_INVALID_TOKEN);
    free(t);

    jwt_keyset_unref(none);
    jwt_keyset_unref(sec);
    jwt_keyset_unref(both);
    jwt_keyset_unref(ec_only);
    jwt_keyset_unref(mixed);
    jwt_keyset_unref(pub);
    pbuf_free(&pem);
}

static void test_kid(void **state)
{
    (void)state;
    char err[256] = "";
    pbuf j = {0};
    pbuf_append_str(&j, "{\"keys\":[");
    jwk_append(&j, K.rsa1, "a", ",\"alg\":\"RS256\",\"use\":\"sig\"");
    pbuf_append_str(&j, ",");
    jwk_append(&j, K.rsa2, "b", "");
    pbuf_append_str(&j, ",");
    jwk_append(&j, K.ec1, "c\\u00e9", ",\"alg\":\"ES256\",\"key_ops\":[\"verify\"]");
    pbuf_append_str(&j, "],\"extra\":true}");
    jwt_keyset *ks = set_new();
    if (add_jwks(ks, (char *)j.ptr, j.len, err, sizeof err) != 0) fail_msg("%s", err);
    assert_int_equal(jwt_keyset_count(ks), 3);

    expect_pk(ks, "{\"alg\":\"RS256\",\"kid\":\"a\"}", K.rsa1, MSG_OK, NULL);
    expect_pk(ks, "{\"alg\":\"RS256\",\"kid\":\"\\u0061\"}", K.rsa1, MSG_OK, NULL);
    expect_pk(ks, "{\"alg\":\"RS256\",\"kid\":\"b\"}", K.rsa2, MSG_OK, NULL);
    expect_pk(ks, "{\"alg\":\"ES256\",\"kid\":\"c\xc3\xa9\"}", K.ec1, MSG_OK, NULL);
    /* kid selects: the other key is not tried. */
    expect_pk(ks, "{\"alg\":\"RS256\",\"kid\":\"b\"}", K.rsa1, MSG_E_INVALID_TOKEN,
              "bad token signature");
    expect_pk(ks, "{\"alg\":\"RS256\",\"kid\":\"zzz\"}", K.rsa1, MSG_E_INVALID_TOKEN,
              "unknown key id");
    expect_pk(ks, "{\"alg\":\"RS256\",\"kid\":\"A\"}", K.rsa1, MSG_E_INVALID_TOKEN,
              "unknown key id");
    expect_pk(ks, "{\"alg\":\"RS256\",\"kid\":\"\"}", K.rsa1, MSG_E_INVALID_TOKEN,
              "unknown key id");
    /* The kid of a key of another type. */
    expect_pk(ks, "{\"alg\":\"RS256\",\"kid\":\"c\xc3\xa9\"}", K.rsa1, MSG_E_INVALID_TOKEN,
              "unknown key id");
    expect_pk(ks, "{\"alg\":\"ES256\",\"kid\":\"a\"}", K.ec1, MSG_E_INVALID_TOKEN,
              "unknown key id");
    expect_pk(ks, "{\"alg\":\"RS256\",\"kid\":7}", K.rsa1, MSG_E_INVALID_TOKEN, "kid");
    expect_pk(ks, "{\"alg\":\"RS256\",\"kid\":null}", K.rsa1, MSG_E_INVALID_TOKEN, "kid");
    char h[400];
    char longkid[300];
    memset(longkid, 'k', 299);
    longkid[299] = 0;
    snprintf(h, sizeof h, "{\"alg\":\"RS256\",\"kid\":\"%s\"}", longkid);
    expect_pk(ks, h, K.rsa1, MSG_E_INVALID_TOKEN, "unknown key id");
    /* Without kid, every key of the type is tried. */
    expect_pk(ks, RS, K.rsa1, MSG_OK, NULL);
    expect_pk(ks, RS, K.rsa2, MSG_OK, NULL);
    expect_pk(ks, ES, K.ec1, MSG_OK, NULL);
    expect_pk(ks, ES, K.ec2, MSG_E_INVALID_TOKEN, "bad token signature");

    /* Keys without kid (PEM) serve any kid the keys with kids do not
     * claim. */
    pbuf pem = {0};
    pem_append(&pem, K.ec2, true);
    assert_int_equal(add_pem(ks, (char *)pem.ptr, pem.len, err, sizeof err), 0);
    expect_pk(ks, "{\"alg\":\"ES256\",\"kid\":\"whatever\"}", K.ec2, MSG_OK, NULL);
    expect_pk(ks, "{\"alg\":\"ES256\",\"kid\":\"c\xc3\xa9\"}", K.ec2, MSG_E_INVALID_TOKEN,
              "bad token signature");
    expect_pk(ks, "{\"alg\":\"ES256\",\"kid\":\"whatever\"}", K.ec1, MSG_E_INVALID_TOKEN,
              "bad token signature");
    expect_pk(ks, "{\"alg\":\"RS256\",\"kid\":\"whatever\"}", K.rsa1, MSG_E_INVALID_TOKEN,
              "unknown key id");
    /* A kid is unique across the set, whichever file it came from. */
    pbuf j2 = {0};
    pbuf_append_str(&j2, "{\"keys\":[");
    jwk_append(&j2, K.ec2, "b", "");
    pbuf_append_str(&j2, "]}");
    assert_int_equal(add_jwks(ks, (char *)j2.ptr, j2.len, err, sizeof err), PARLEY_EINVAL);
    assert_non_null(strstr(err, "kid"));
    assert_int_equal(jwt_keyset_add_key(ks, K.ec2, "a", err, sizeof err), PARLEY_EINVAL);
    assert_int_equal(jwt_keyset_count(ks), 4);

    pbuf_free(&j2);
    pbuf_free(&pem);
    pbuf_free(&j);
    jwt_keyset_unref(ks);
}

/* A JWKS with the given keys and kids. */
static jwt_keyset *jwks_set(EVP_PKEY *const *pk, const char *const *kids, size_t n)
{
    pbuf j = {0};
    pbuf_append_str(&j, "{\"keys\":[");
    for (size_t i = 0; i < n; i++) {
        if (i) pbuf_append_str(&j, ",");
        jwk_append(&j, pk[i], kids[i], "");
    }
    pbuf_append_str(&j, "]}");
    jwt_keyset *ks = set_new();
    char err[256];
    if (jwt_keyset_add_jwks_file(ks, write_file(j.ptr, j.len), err, sizeof err) != 0)
        fail_msg("%s", err);
    pbuf_free(&j);
    return ks;
}

/* Rotation as the server does it on SIGHUP: old and new keys side by
 * side, then a set without the old key swapped in while a holder of the
 * old set goes on with it. */
static void test_rotation(void **state)
{
    (void)state;
    EVP_PKEY *both[] = {K.rsa1, K.rsa2, K.ec1, K.ec2};
    const char *kids[] = {"2025", "2026", "ec-2025", "ec-2026"};
    jwt_keyset *current = jwks_set(both, kids, 4);
    expect_pk(current, "{\"alg\":\"RS256\",\"kid\":\"2025\"}", K.rsa1, MSG_OK, NULL);
    expect_pk(current, "{\"alg\":\"RS256\",\"kid\":\"2026\"}", K.rsa2, MSG_OK, NULL);
    expect_pk(current, ES, K.ec1, MSG_OK, NULL);
    expect_pk(current, ES, K.ec2, MSG_OK, NULL);

    /* A verification in progress holds the set. */
    jwt_keyset *held = jwt_keyset_ref(current);
    assert_ptr_equal(held, current);
    EVP_PKEY *newer[] = {K.rsa2, K.ec2};
    jwt_keyset *fresh = jwks_set(newer, kids + 1, 1);
    jwt_keyset_unref(fresh);
    const char *kids2[] = {"2026", "ec-2026"};
    fresh = jwks_set(newer, kids2, 2);
    jwt_keyset_unref(current);
    current = fresh;

    expect_pk(current, "{\"alg\":\"RS256\",\"kid\":\"2025\"}", K.rsa1, MSG_E_INVALID_TOKEN,
              "unknown key id");
    expect_pk(current, RS, K.rsa1, MSG_E_INVALID_TOKEN, "bad token signature");
    expect_pk(current, ES, K.ec1, MSG_E_INVALID_TOKEN, "bad token signature");
    expect_pk(current, "{\"alg\":\"RS256\",\"kid\":\"2026\"}", K.rsa2, MSG_OK, NULL);
    expect_pk(current, ES, K.ec2, MSG_OK, NULL);
    /* The holder still has both. */
    expect_pk(held, "{\"alg\":\"RS256\",\"kid\":\"2025\"}", K.rsa1, MSG_OK, NULL);
    expect_pk(held, ES, K.ec1, MSG_OK, NULL);
    jwt_keyset_unref(held); /* the old set is freed here (LeakSanitizer checks) */
    jwt_keyset_unref(current);
    jwt_keyset_unref(NULL);

    /* A reload that fails leaves the running set alone. */
    current = jwks_set(newer, kids2, 2);
    jwt_keyset *next = set_new();
    char err[256];
    assert_int_equal(
        jwt_keyset_add_jwks_file(next, write_file("{\"keys\":[]}", 11), err, sizeof err),
        PARLEY_EINVAL);
    assert_non_null(strstr(err, K.dir)); /* the message names the file */
    jwt_keyset_unref(next);
    expect_pk(current, ES, K.ec2, MSG_OK, NULL);
    jwt_keyset_unref(current);
}

typedef struct jwks_case {
    const char *json; /* with %s for a valid RSA JWK body and %e for a valid EC one */
    int rc;
    const char *msg;
} jwks_case;

/* Expands %r (a valid RSA key's members), %e (a valid P-256 key's) in a
 * template. */
static void expand(pbuf *out, const char *tmpl)
{
    pbuf rsa = {0}, ec = {0};
    jwk_append(&rsa, K.rsa1, NULL, "");
    jwk_append(&ec, K.ec1, NULL, "");
    /* Without the braces: members to put in an object. */
    for (const char *p = tmpl; *p; p++) {
        if (p[0] == '%' && (p[1] == 'r' || p[1] == 'e')) {
            pbuf *b = p[1] == 'r' ? &rsa : &ec;
            pbuf_append(out, b->ptr + 1, b->len - 2);
            p++;
        } else {
            pbuf_append(out, p, 1);
        }
    }
    pbuf_free(&rsa);
    pbuf_free(&ec);
}

static void test_jwks_errors(void **state)
{
    (void)state;
    static const jwks_case cases[] = {
        {"{\"keys\":[{%r},{%e}]}", 0, NULL},
        {"{\"keys\":[{%r,\"kid\":\"r\",\"use\":\"sig\",\"alg\":\"RS256\",\"x5t\":\"zz\"}]}", 0,
         NULL},
        {"", PARLEY_EINVAL, "not JSON"},
        {"not json", PARLEY_EINVAL, "not JSON"},
        {"{\"keys\":[{%r}]", PARLEY_EINVAL, "not JSON"},
        {"{\"keys\":[{%r},]}", PARLEY_EINVAL, "not JSON"},
        {"[{%r}]", PARLEY_EINVAL, "object"},
        {"{\"kty\":\"RSA\"}", PARLEY_EINVAL, "\"keys\""},
        {"{\"keys\":{}}", PARLEY_EINVAL, "\"keys\""},
        {"{\"keys\":[]}", PARLEY_EINVAL, "no keys"},
        {"{\"keys\":[{%r}],\"keys\":[]}", PARLEY_EINVAL, "repeated"},
        {"{\"keys\":[{%r},42]}", PARLEY_EINVAL, "key 2 is not an object"},
        {"{\"keys\":[{%r,\"kty\":\"RSA\"}]}", PARLEY_EINVAL, "repeated"},
        {"{\"keys\":[{%e,\"x\":\"AA\"}]}", PARLEY_EINVAL, "repeated"},
        {"{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\",\"kid\":\"hmac\"}]}", PARLEY_EINVAL,
         "key 1 (kid \"hmac\"): kty \"oct\" is not supported"},
        {"{\"keys\":[{%r},{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\"}]}", PARLEY_EINVAL,
         "key 2: kty \"OKP\""},
        {"{\"keys\":[{\"n\":\"AQAB\",\"e\":\"AQAB\"}]}", PARLEY_EINVAL, "kty"},
        {"{\"keys\":[{%r,\"kid\":\"x\"},{%e,\"kid\":\"x\"}]}", PARLEY_EINVAL,
         "key 2 (kid \"x\"): kid used by another key"},
        {"{\"keys\":[{%r,\"kid\":\"\"}]}", PARLEY_EINVAL, "kid must be"},
        {"{\"keys\":[{%r,\"kid\":1}]}", PARLEY_EINVAL, "kid must be"},
        {"{\"keys\":[{%r,\"use\":\"enc\"}]}", PARLEY_EINVAL, "use \"enc\""},
        {"{\"keys\":[{%r,\"use\":1}]}", PARLEY_EINVAL, "use"},
        {"{\"keys\":[{%r,\"alg\":\"ES256\"}]}", PARLEY_EINVAL, "alg \"ES256\" does not fit"},
        {"{\"keys\":[{%r,\"alg\":\"PS256\"}]}", PARLEY_EINVAL, "alg \"PS256\""},
        {"{\"keys\":[{%r,\"alg\":\"RSA-OAEP\"}]}", PARLEY_EINVAL, "alg"},
        {"{\"keys\":[{%e,\"alg\":\"RS256\"}]}", PARLEY_EINVAL, "alg \"RS256\" does not fit"},
        {"{\"keys\":[{%e,\"alg\":\"ES384\"}]}", PARLEY_EINVAL, "alg"},
        {"{\"keys\":[{%r,\"d\":\"AQAB\"}]}", PARLEY_EINVAL, "private"},
        {"{\"keys\":[{%e,\"d\":\"AQAB\"}]}", PARLEY_EINVAL, "private"},
        {"{\"keys\":[{\"kty\":\"RSA\",\"e\":\"AQAB\"}]}", PARLEY_EINVAL, "\"n\""},
        {"{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\"}]}", PARLEY_EINVAL, "\"e\" is missing"},
        {"{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}", PARLEY_ELIMIT,
         "RSA modulus of 17 bits"},
        {"{\"keys\":[{\"kty\":\"RSA\",\"n\":\"ab+c\",\"e\":\"AQAB\"}]}", PARLEY_EINVAL,
         "\"n\" is not base64url"},
        {"{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB==\",\"e\":\"AQAB\"}]}", PARLEY_EINVAL,
         "base64url"},
        {"{\"keys\":[{\"kty\":\"RSA\",\"n\":\"\",\"e\":\"AQAB\"}]}", PARLEY_EINVAL, "base64url"},
        {"{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"A\\u0051AB\"}]}", PARLEY_EINVAL,
         "base64url"},
        {"{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-384\",\"x\":\"AA\",\"y\":\"AA\"}]}", PARLEY_EINVAL,
         "curve \"P-384\" is not supported"},
        {"{\"keys\":[{\"kty\":\"EC\",\"crv\":\"secp256k1\",\"x\":\"AA\",\"y\":\"AA\"}]}",
         PARLEY_EINVAL, "curve"},
        {"{\"keys\":[{\"kty\":\"EC\",\"x\":\"AA\",\"y\":\"AA\"}]}", PARLEY_EINVAL, "crv"},
        {"{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AA\"}]}", PARLEY_EINVAL,
         "32 bytes"},
        {"{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"y\":\"AA\"}]}", PARLEY_EINVAL, "\"x\""},
        /* (1, 1) is not on the curve. */
        {"{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\","
         "\"x\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE\","
         "\"y\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE\"}]}",
         PARLEY_EINVAL, "not a point"},
        {"{\"keys\":[[[[[[[[[]]]]]]]]]}", PARLEY_EINVAL, "not JSON"},
    };
    char err[256];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        pbuf j = {0};
        expand(&j, cases[i].json);
        jwt_keyset *ks = set_new();
        /* A key already there stays, whatever the outcome. */
        assert_int_equal(jwt_keyset_add_key(ks, K.ec2, "before", err, sizeof err), 0);
        err[0] = 0;
        int rc = add_jwks(ks, (char *)j.ptr, j.len, err, sizeof err);
        if (rc != cases[i].rc || (cases[i].msg && !strstr(err, cases[i].msg)))
            fail_msg("case %zu %s: got %d (%s), want %d (%s)", i, cases[i].json, rc, err,
                     cases[i].rc, cases[i].msg);
        if (rc) assert_int_equal(jwt_keyset_count(ks), 1);
        jwt_keyset_unref(ks);
        pbuf_free(&j);
    }

    /* RSA moduli: 1024 bits is too small, 8192 the most. */
    jwt_keyset *ks = set_new();
    pbuf j = {0};
    pbuf_append_str(&j, "{\"keys\":[");
    jwk_append(&j, K.rsa1024, "small", "");
    pbuf_append_str(&j, "]}");
    assert_int_equal(add_jwks(ks, (char *)j.ptr, j.len, err, sizeof err), PARLEY_ELIMIT);
    assert_non_null(strstr(err, "1024 bits"));
    /* 16384 zero-padded bits: 8193 significant. */
    j.len = 0;
    uint8_t big[1025] = {1};
    big[1024] = 1;
    pbuf_append_str(&j, "{\"keys\":[{\"kty\":\"RSA\",\"e\":\"AQAB\",\"n\":\"");
    b64url_append(&j, big, sizeof big);
    pbuf_append_str(&j, "\"}]}");
    assert_int_equal(add_jwks(ks, (char *)j.ptr, j.len, err, sizeof err), PARLEY_ELIMIT);
    assert_non_null(strstr(err, "8193 bits"));
    /* Leading zero octets of n are tolerated. */
    j.len = 0;
    BIGNUM *n = NULL;
    EVP_PKEY_get_bn_param(K.rsa1, OSSL_PKEY_PARAM_RSA_N, &n);
    uint8_t nb[258];
    BN_bn2binpad(n, nb, sizeof nb);
    BN_free(n);
    pbuf_append_str(&j, "{\"keys\":[{\"kty\":\"RSA\",\"e\":\"AQAB\",\"n\":\"");
    b64url_append(&j, nb, sizeof nb);
    pbuf_append_str(&j, "\"}]}");
    assert_int_equal(add_jwks(ks, (char *)j.ptr, j.len, err, sizeof err), 0);
    expect_pk(ks, NULL, K.rsa1, MSG_OK, NULL);
    /* e must be odd and above 1. */
    static const char *const bad_e[] = {"AQ", "Ag", "AAE", "AQAAAAAAAAAB"};
    for (size_t i = 0; i < sizeof bad_e / sizeof *bad_e; i++) {
        j.len = 0;
        pbuf_append_str(&j, "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"");
        b64url_append(&j, nb, sizeof nb);
        pbuf_append_str(&j, "\",\"e\":\"");
        pbuf_append_str(&j, bad_e[i]);
        pbuf_append_str(&j, "\"}]}");
        int rc = add_jwks(ks, (char *)j.ptr, j.len, err, sizeof err);
        if (rc != PARLEY_EINVAL) fail_msg("e %s: %d %s", bad_e[i], rc, err);
    }
    assert_int_equal(jwt_keyset_count(ks), 1);
    jwt_keyset_unref(ks);

    /* At most 64 keys in a file and in a set. */
    EVP_PKEY *many[65];
    for (int i = 0; i < 65; i++) {
        many[i] = EVP_EC_gen("P-256");
        assert_non_null(many[i]);
    }
    j.len = 0;
    pbuf_append_str(&j, "{\"keys\":[");
    for (int i = 0; i < 65; i++) {
        char kid[16];
        snprintf(kid, sizeof kid, "k%d", i);
        if (i) pbuf_append_str(&j, ",");
        jwk_append(&j, many[i], kid, "");
    }
    pbuf_append_str(&j, "]}");
    ks = set_new();
    assert_int_equal(add_jwks(ks, (char *)j.ptr, j.len, err, sizeof err), PARLEY_ELIMIT);
    assert_non_null(strstr(err, "65 keys"));
    assert_int_equal(jwt_keyset_count(ks), 0);
    for (int i = 0; i < 64; i++)
        assert_int_equal(jwt_keyset_add_key(ks, many[i], NULL, err, sizeof err), 0);
    assert_int_equal(jwt_keyset_add_key(ks, many[64], NULL, err, sizeof err), PARLEY_ELIMIT);
    assert_int_equal(jwt_keyset_count(ks), 64);
    /* Without kid, all 64 are tried. */
    expect_pk(ks, NULL, many[63], MSG_OK, NULL);
    expect_pk(ks, NULL, many[64], MSG_E_INVALID_TOKEN, "bad token signature");
    jwt_keyset_unref(ks);
    for (int i = 0; i < 65; i++) EVP_PKEY_free(many[i]);

    /* Files: at most 1 MiB (whitespace counts), read whole. */
    ks = set_new();
    j.len = 0;
    expand(&j, "{\"keys\":[{%e}]}");
    size_t body = j.len;
    pbuf_reserve(&j, JWT_MAX_FILE);
    memset(j.ptr + j.len, ' ', JWT_MAX_FILE - body);
    j.len = JWT_MAX_FILE;
    assert_int_equal(jwt_keyset_add_jwks_file(ks, write_file(j.ptr, j.len), err, sizeof err), 0);
    pbuf_append(&j, " ", 1);
    assert_int_equal(jwt_keyset_add_jwks_file(ks, write_file(j.ptr, j.len), err, sizeof err),
                     PARLEY_ELIMIT);
    assert_non_null(strstr(err, "larger than"));
    assert_int_equal(add_jwks(ks, (char *)j.ptr, j.len, err, sizeof err), PARLEY_ELIMIT);
    assert_int_equal(jwt_keyset_add_jwks_file(ks, "/nonexistent/jwks.json", err, sizeof err),
                     PARLEY_EIO);
    assert_non_null(strstr(err, "/nonexistent/jwks.json"));
    assert_int_equal(jwt_keyset_add_jwks_file(ks, K.dir, err, sizeof err), PARLEY_EIO);
    assert_int_equal(jwt_keyset_count(ks), 1);
    jwt_keyset_unref(ks);
    pbuf_free(&j);
}

static void test_pem_errors(void **state)
{
    (void)state;
    char err[256];
    pbuf good = {0}, p = {0};
    pem_append(&good, K.rsa1, true);
    jwt_keyset *ks = set_new();
    assert_int_equal(jwt_keyset_add_key(ks, K.ec1, NULL, err, sizeof err), 0);

    /* file, rc, message */
    struct {
        const char *what;
        pbuf text;
        int rc;
        const char *msg;
    } cases[12];
    size_t n = 0;
#define CASE(w, r, m)                                                                              \
    do {                                                                                           \
        cases[n].what = (w);                                                                       \
        cases[n].text = (pbuf){0};                                                                 \
        cases[n].rc = (r);                                                                         \
        cases[n].msg = (m);                                                                        \
        n++;                                                                                       \
    } while (0)
    CASE("empty", PARLEY_EINVAL, "no PEM block");
    CASE("garbage", PARLEY_EINVAL, "no PEM block");
    pbuf_append_str(&cases[n - 1].text, "this is not a key\n\x01\x02\xff");
    CASE("private pkcs8", PARLEY_EINVAL, "PEM block 1 is a private key (PRIVATE KEY)");
    pem_append(&cases[n - 1].text, K.ec1, false);
    CASE("public then private", PARLEY_EINVAL, "PEM block 2 is a private key");
    pbuf_append(&cases[n - 1].text, good.ptr, good.len);
    pem_append(&cases[n - 1].text, K.rsa2, false);
    CASE("traditional private", PARLEY_EINVAL, "private key (RSA PRIVATE KEY)");
    pbuf_append_str(&cases[n - 1].text, "-----BEGIN RSA PRIVATE KEY-----\nAQAB\n"
                                        "-----END RSA PRIVATE KEY-----\n");
    CASE("other block", PARLEY_EINVAL, "PEM block 1 is a X509 CRL");
    pbuf_append_str(&cases[n - 1].text, "-----BEGIN X509 CRL-----\nAQAB\n-----END X509 CRL-----\n");
    CASE("bad base64", PARLEY_EINVAL, "PEM block 1 is malformed");
    pbuf_append_str(&cases[n - 1].text,
                    "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n");
    CASE("not a key", PARLEY_EINVAL, "does not decode");
    pbuf_append_str(&cases[n - 1].text,
                    "-----BEGIN PUBLIC KEY-----\nAQAB\n-----END PUBLIC KEY-----\n");
    CASE("truncated", PARLEY_EINVAL, "malformed");
    pbuf_append(&cases[n - 1].text, good.ptr, good.len - 30);
    CASE("small rsa", PARLEY_ELIMIT, "PEM block 1: RSA key of 1024 bits");
    pem_append(&cases[n - 1].text, K.rsa1024, true);
    CASE("p-384", PARLEY_EINVAL, "P-256");
    pem_append(&cases[n - 1].text, K.ec384, true);
    CASE("ed25519", PARLEY_EINVAL, "key type ED25519 is not supported");
    pem_append(&cases[n - 1].text, K.ed, true);
#undef CASE
    assert_true(n <= sizeof cases / sizeof *cases);
    for (size_t i = 0; i < n; i++) {
        const char *path = write_file(cases[i].text.ptr, cases[i].text.len);
        err[0] = 0;
        int rc = jwt_keyset_add_pem_file(ks, path, err, sizeof err);
        if (rc != cases[i].rc || !strstr(err, cases[i].msg) || !strstr(err, path))
            fail_msg("%s: got %d (%s), want %d (%s)", cases[i].what, rc, err, cases[i].rc,
                     cases[i].msg);
        rc = add_pem(ks, (char *)cases[i].text.ptr, cases[i].text.len, err, sizeof err);
        assert_int_equal(rc, cases[i].rc);
        assert_int_equal(jwt_keyset_count(ks), 1);
        pbuf_free(&cases[i].text);
    }
    assert_int_equal(jwt_keyset_add_pem_file(ks, "/nonexistent.pem", err, sizeof err), PARLEY_EIO);
    /* Too large. */
    pbuf_append(&p, good.ptr, good.len);
    pbuf_reserve(&p, JWT_MAX_FILE + 1);
    memset(p.ptr + p.len, '\n', JWT_MAX_FILE + 1 - p.len);
    p.len = JWT_MAX_FILE + 1;
    assert_int_equal(jwt_keyset_add_pem_file(ks, write_file(p.ptr, p.len), err, sizeof err),
                     PARLEY_ELIMIT);
    p.len--;
    assert_int_equal(jwt_keyset_add_pem_file(ks, write_file(p.ptr, p.len), err, sizeof err), 0);
    assert_int_equal(jwt_keyset_count(ks), 2);
    /* No error buffer is fine. */
    assert_int_equal(add_pem(ks, "x", 1, NULL, 0), PARLEY_EINVAL);

    /* add_key: the same rules, and a public-only copy. */
    assert_int_equal(jwt_keyset_add_key(ks, K.rsa1024, "k", err, sizeof err), PARLEY_ELIMIT);
    assert_int_equal(jwt_keyset_add_key(ks, K.ec384, "k", err, sizeof err), PARLEY_EINVAL);
    assert_int_equal(jwt_keyset_add_key(ks, K.ed, "k", err, sizeof err), PARLEY_EINVAL);
    assert_int_equal(jwt_keyset_add_key(ks, K.ec2, "", err, sizeof err), PARLEY_EINVAL);
    char longkid[JWT_MAX_KID + 2];
    memset(longkid, 'k', sizeof longkid - 1);
    longkid[sizeof longkid - 1] = 0;
    assert_int_equal(jwt_keyset_add_key(ks, K.ec2, longkid, err, sizeof err), PARLEY_EINVAL);
    longkid[JWT_MAX_KID] = 0;
    assert_int_equal(jwt_keyset_add_key(ks, K.ec2, longkid, err, sizeof err), 0);
    assert_int_equal(jwt_keyset_count(ks), 3);
    pbuf_free(&p);
    pbuf_free(&good);
    jwt_keyset_unref(ks);
}

/* ---- lifetime ---- */

static void test_max_lifetime(void **state)
{
    (void)state;
    jwt_keyset_opts o;
    jwt_keyset_opts_init(&o);
    assert_int_equal(o.leeway_ms, 30000);
    assert_int_equal(o.max_lifetime_ms, 0);
    o.max_lifetime_ms = 3600000;
    jwt_keyset *ks = NULL;
    assert_int_equal(jwt_keyset_new(&o, &ks), 0);
    assert_int_equal(jwt_keyset_set_secret(ks, (const uint8_t *)SECRET, strlen(SECRET)), 0);
    char err[256];
    assert_int_equal(jwt_keyset_add_key(ks, K.ec1, NULL, err, sizeof err), 0);

    /* now = 1767225600: exp at most an hour (and the 30 s leeway) ahead. */
    static const struct {
        const char *claims;
        msg_errcode want;
    } cases[] = {
        {"{\"sub\":\"alice\",\"exp\":1767229200}", MSG_OK},
        {"{\"sub\":\"alice\",\"exp\":1767229230}", MSG_OK},
        {"{\"sub\":\"alice\",\"exp\":1767229230.001}", MSG_E_INVALID_TOKEN},
        {"{\"sub\":\"alice\",\"exp\":1767312000}", MSG_E_INVALID_TOKEN},
        {"{\"sub\":\"alice\",\"exp\":253402300799}", MSG_E_INVALID_TOKEN},
        /* With iat: exp - iat is held to the maximum exactly. */
        {"{\"sub\":\"alice\",\"exp\":1767229200,\"iat\":1767225600}", MSG_OK},
        {"{\"sub\":\"alice\",\"exp\":1767229200,\"iat\":1767225599}", MSG_E_INVALID_TOKEN},
        {"{\"sub\":\"alice\",\"exp\":1767225660,\"iat\":1767000000}", MSG_E_INVALID_TOKEN},
        {"{\"sub\":\"alice\",\"exp\":1767225660,\"iat\":1767225000}", MSG_OK},
        {"{\"sub\":\"alice\",\"exp\":1767225660,\"iat\":1767229999}", MSG_OK},
        /* Expiry is reported first. */
        {"{\"sub\":\"alice\",\"exp\":1000,\"iat\":0}", MSG_E_TOKEN_EXPIRED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        for (int k = 0; k < 2; k++) {
            char *t =
                k ? make_pk(NULL, cases[i].claims, K.ec1) : make(NULL, cases[i].claims, SECRET);
            msg_error e;
            msg_errcode rc = verify_set(ks, t, &e);
            if (rc != cases[i].want)
                fail_msg("%s: got %s (%s)", cases[i].claims, msg_errcode_name(rc), e.message);
            if (rc == MSG_E_INVALID_TOKEN)
                assert_non_null(strstr(e.message, "lifetime exceeds the server's maximum"));
            free(t);
        }
    }
    jwt_keyset_unref(ks);

    /* Without a maximum, the same tokens pass. */
    ks = set_new();
    assert_int_equal(jwt_keyset_set_secret(ks, (const uint8_t *)SECRET, strlen(SECRET)), 0);
    char *t = make(NULL, "{\"sub\":\"alice\",\"exp\":253402300799,\"iat\":0}", SECRET);
    msg_error e;
    assert_int_equal(verify_set(ks, t, &e), MSG_OK);
    free(t);
    jwt_keyset_unref(ks);

    /* Options are checked. */
    o.max_lifetime_ms = -1;
    assert_int_equal(jwt_keyset_new(&o, &ks), PARLEY_EINVAL);
    assert_null(ks);
    o.max_lifetime_ms = 0;
    o.leeway_ms = -1;
    assert_int_equal(jwt_keyset_new(&o, &ks), PARLEY_EINVAL);
    o.leeway_ms = INT64_MAX;
    assert_int_equal(jwt_keyset_new(&o, &ks), PARLEY_EINVAL);
    o.leeway_ms = 0;
    assert_int_equal(jwt_keyset_new(&o, &ks), 0);
    assert_int_equal(jwt_keyset_set_secret(ks, (const uint8_t *)"", 0), PARLEY_EINVAL);
    assert_false(jwt_keyset_has_secret(ks));
    assert_int_equal(jwt_keyset_set_secret(ks, (const uint8_t *)"x", 1), 0);
    assert_int_equal(jwt_keyset_set_secret(ks, (const uint8_t *)SECRET, strlen(SECRET)), 0);
    assert_true(jwt_keyset_has_secret(ks));
    /* The leeway of the set is used: 0 here. */
    t = make(NULL, "{\"sub\":\"alice\",\"exp\":1767225599.999}", SECRET);
    assert_int_equal(verify_set(ks, t, &e), MSG_E_TOKEN_EXPIRED);
    free(t);
    jwt_keyset_unref(ks);
}

/* ---- signing ---- */

/* RS256 and ES256 tokens are what RFC 7515/7518 say, checked with OpenSSL
 * directly rather than through the verifier. */
static void test_sign_pkey(void **state)
{
    (void)state;
    EVP_PKEY *pks[] = {K.rsa1, K.ec1};
    for (int k = 0; k < 2; k++) {
        char *t = make_pk(NULL, CLAIMS, pks[k]);
        char *d1 = strchr(t, '.'), *d2 = strrchr(t, '.');
        char header[64];
        long hl = b64url_decode(t, (size_t)(d1 - t), (uint8_t *)header, sizeof header - 1);
        assert_true(hl > 0);
        header[hl] = 0;
        assert_string_equal(header, k ? "{\"alg\":\"ES256\",\"typ\":\"JWT\"}"
                                      : "{\"alg\":\"RS256\",\"typ\":\"JWT\"}");
        uint8_t sig[512];
        long sl = b64url_decode(d2 + 1, strlen(d2 + 1), sig, sizeof sig);
        assert_int_equal(sl, k ? 64 : 256);
        uint8_t der[80];
        const uint8_t *check = sig;
        size_t cl = (size_t)sl;
        if (k) {
            ECDSA_SIG *es = ECDSA_SIG_new();
            ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
            uint8_t *p = der;
            cl = (size_t)i2d_ECDSA_SIG(es, &p);
            ECDSA_SIG_free(es);
            check = der;
        }
        EVP_MD_CTX *m = EVP_MD_CTX_new();
        assert_int_equal(EVP_DigestVerifyInit(m, NULL, EVP_sha256(), NULL, pks[k]), 1);
        assert_int_equal(EVP_DigestVerify(m, check, cl, (uint8_t *)t, (size_t)(d2 - t)), 1);
        EVP_MD_CTX_free(m);
        free(t);
    }
    /* Keys it cannot sign with. */
    pbuf out = {0};
    pbuf_append_str(&out, "kept");
    assert_int_equal(jwt_sign_pkey(&out, NULL, CLAIMS, K.ec384), PARLEY_EINVAL);
    assert_int_equal(jwt_sign_pkey(&out, NULL, CLAIMS, K.ed), PARLEY_EINVAL);
    /* A public key cannot sign; the buffer is left as it was. */
    EVP_PKEY *pub = NULL;
    {
        uint8_t *der = NULL;
        int dl = i2d_PUBKEY(K.ec1, &der);
        const uint8_t *p = der;
        pub = d2i_PUBKEY(NULL, &p, dl);
        OPENSSL_free(der);
    }
    assert_int_equal(jwt_sign_pkey(&out, NULL, CLAIMS, pub), PARLEY_EIO);
    assert_int_equal(out.len, 4);
    EVP_PKEY_free(pub);
    pbuf_free(&out);
}

/* ---- minting (parley token) ---- */

/* A minted token as a NUL-terminated string (caller frees), or NULL with
 * the error in err. */
static char *mint(const jwt_mint_opts *o, const char *secret, int *rc, char *err, size_t cap)
{
    pbuf out = {0};
    *rc = jwt_mint_hs256(&out, o, (const uint8_t *)secret, strlen(secret), err, cap);
    if (*rc) {
        assert_int_equal(out.len, 0);
        pbuf_free(&out);
        return NULL;
    }
    pbuf_append(&out, "", 1);
    return (char *)out.ptr;
}

/* The decoded JSON of part i (0 header, 1 claims) of a token. */
static void part(const char *tok, int i, char *out, size_t cap)
{
    const char *p = tok;
    for (int k = 0; k < i; k++) p = strchr(p, '.') + 1;
    const char *e = strchr(p, '.');
    long n = b64url_decode(p, (size_t)(e - p), (uint8_t *)out, cap - 1);
    assert_true(n > 0);
    out[n] = 0;
}

static void test_mint(void **state)
{
    (void)state;
    char err[256], json[512];
    int rc;
    const int64_t now_s = NOW / 1000;
    jwt_mint_opts o = {.sub = "alice@example.org", .now_s = now_s, .ttl_s = 3600};
    char *t = mint(&o, SECRET, &rc, err, sizeof err);
    assert_non_null(t);
    part(t, 0, json, sizeof json);
    assert_string_equal(json, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}");
    part(t, 1, json, sizeof json);
    assert_string_equal(json,
                        "{\"sub\":\"alice@example.org\",\"iat\":1767225600,\"exp\":1767229200}");
    /* It verifies, with the claims, until exp (+ the leeway), then expires. */
    jwt_key k0 = key;
    k0.leeway_ms = 0;
    jwt_claims c;
    msg_error e;
    assert_int_equal(jwt_verify(&k0, t, strlen(t), NOW, &c, &e), MSG_OK);
    assert_string_equal(c.sub, "alice@example.org");
    assert_false(c.admin);
    assert_false(c.notifier);
    assert_int_equal(c.exp_ms, NOW + 3600 * 1000);
    assert_int_equal(jwt_verify(&k0, t, strlen(t), NOW + 3600 * 1000, &c, &e), MSG_OK);
    assert_int_equal(jwt_verify(&k0, t, strlen(t), NOW + 3600 * 1000 + 1, &c, &e),
                     MSG_E_TOKEN_EXPIRED);
    assert_int_equal(jwt_verify(&key, t, strlen(t), NOW + 3600 * 1000 + 31000, &c, &e),
                     MSG_E_TOKEN_EXPIRED);
    /* Under another secret it is refused. */
    jwt_key other = {(const uint8_t *)"another-secret", 14, 0};
    assert_int_equal(jwt_verify(&other, t, strlen(t), NOW, &c, &e), MSG_E_INVALID_TOKEN);
    /* Byte for byte what jwt_sign makes of the same header and claims. */
    char *same = make(NULL, json, SECRET);
    assert_string_equal(t, same);
    free(same);
    free(t);

    /* Roles, kid, ttl. */
    o.sub = "bob";
    o.role = "notifier";
    o.kid = "key \"2\"";
    o.ttl_s = 1;
    t = mint(&o, SECRET, &rc, err, sizeof err);
    assert_non_null(t);
    part(t, 0, json, sizeof json);
    assert_string_equal(json, "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"key \\\"2\\\"\"}");
    part(t, 1, json, sizeof json);
    assert_string_equal(
        json, "{\"sub\":\"bob\",\"iat\":1767225600,\"exp\":1767225601,\"role\":\"notifier\"}");
    assert_int_equal(jwt_verify(&k0, t, strlen(t), NOW, &c, &e), MSG_OK);
    assert_true(c.notifier);
    assert_false(c.admin);
    assert_int_equal(jwt_verify(&k0, t, strlen(t), NOW + 1001, &c, &e), MSG_E_TOKEN_EXPIRED);
    free(t);
    o.role = "admin";
    o.kid = NULL;
    o.ttl_s = JWT_MINT_TTL_MAX;
    t = mint(&o, SECRET, &rc, err, sizeof err);
    assert_non_null(t);
    assert_int_equal(jwt_verify(&k0, t, strlen(t), NOW, &c, &e), MSG_OK);
    assert_true(c.admin);
    assert_int_equal(c.exp_ms, NOW + (int64_t)JWT_MINT_TTL_MAX * 1000);
    free(t);
}

static void test_mint_errors(void **state)
{
    (void)state;
    char err[256], long_id[MSG_USER_MAX + 2], long_kid[JWT_MAX_KID + 2];
    memset(long_id, 'a', sizeof long_id - 1);
    long_id[sizeof long_id - 1] = 0;
    memset(long_kid, 'k', sizeof long_kid - 1);
    long_kid[sizeof long_kid - 1] = 0;
    const int64_t now_s = NOW / 1000;
    struct {
        jwt_mint_opts o;
        const char *secret;
        const char *msg;
    } cases[] = {
        {{.sub = NULL, .now_s = now_s, .ttl_s = 60}, SECRET, "the user id must not be empty"},
        {{.sub = "", .now_s = now_s, .ttl_s = 60}, SECRET, "the user id must not be empty"},
        {{.sub = long_id, .now_s = now_s, .ttl_s = 60},
         SECRET,
         "the user id is 65 bytes; at most 64 are allowed"},
        {{.sub = "a b", .now_s = now_s, .ttl_s = 60},
         SECRET,
         "the user id may contain only letters, digits and . _ @ -"},
        {{.sub = "a", .role = "root", .now_s = now_s, .ttl_s = 60},
         SECRET,
         "unknown role 'root': the role must be admin or notifier"},
        {{.sub = "a", .role = "", .now_s = now_s, .ttl_s = 60},
         SECRET,
         "unknown role '': the role must be admin or notifier"},
        {{.sub = "a", .kid = "", .now_s = now_s, .ttl_s = 60},
         SECRET,
         "the key id must be 1 to 256 bytes"},
        {{.sub = "a", .kid = long_kid, .now_s = now_s, .ttl_s = 60},
         SECRET,
         "the key id must be 1 to 256 bytes"},
        {{.sub = "a", .kid = "k\n", .now_s = now_s, .ttl_s = 60},
         SECRET,
         "the key id must not contain control characters"},
        {{.sub = "a", .now_s = now_s, .ttl_s = 0},
         SECRET,
         "the lifetime must be 1 to 315360000 seconds (ten years)"},
        {{.sub = "a", .now_s = now_s, .ttl_s = -5},
         SECRET,
         "the lifetime must be 1 to 315360000 seconds (ten years)"},
        {{.sub = "a", .now_s = now_s, .ttl_s = JWT_MINT_TTL_MAX + 1},
         SECRET,
         "the lifetime must be 1 to 315360000 seconds (ten years)"},
        {{.sub = "a", .now_s = -1, .ttl_s = 60}, SECRET, "the clock is out of range"},
        {{.sub = "a", .now_s = now_s, .ttl_s = 60}, "", "the secret must not be empty"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc;
        err[0] = 0;
        char *t = mint(&cases[i].o, cases[i].secret, &rc, err, sizeof err);
        assert_null(t);
        assert_int_equal(rc, PARLEY_EINVAL);
        assert_string_equal(err, cases[i].msg);
    }
}

/* The secret file is read as parleyd's --jwt-secret-file: bytes, trailing
 * line ends dropped, 1 to 4096 bytes. */
static void test_read_secret_file(void **state)
{
    (void)state;
    char err[256];
    uint8_t *s = NULL;
    size_t len = 0;
    static const struct {
        const char *data;
        size_t len;
        const char *secret;
    } ok[] = {
        {"s3cret", 6, "s3cret"},
        {"s3cret\n", 7, "s3cret"},
        {"s3cret\r\n\n\r", 10, "s3cret"},
        {" s3 cret \t\n", 11, " s3 cret \t"}, /* spaces belong to the secret */
        {"a\nb\n", 4, "a\nb"},
        {"x\0y\n", 4, "x\0y"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        const char *path = write_file(ok[i].data, ok[i].len);
        assert_int_equal(jwt_read_secret_file(path, &s, &len, err, sizeof err), 0);
        size_t want = ok[i].len;
        while (want && (ok[i].data[want - 1] == '\n' || ok[i].data[want - 1] == '\r')) want--;
        assert_int_equal(len, want);
        assert_memory_equal(s, ok[i].secret, len);
        free(s);
    }
    /* Exactly 4096 bytes, and 4096 plus a newline, are fine; 4097 are not. */
    char big[JWT_SECRET_MAX + 2];
    memset(big, 'z', sizeof big);
    const char *path = write_file(big, JWT_SECRET_MAX);
    assert_int_equal(jwt_read_secret_file(path, &s, &len, err, sizeof err), 0);
    assert_int_equal(len, JWT_SECRET_MAX);
    free(s);
    big[JWT_SECRET_MAX] = '\n';
    path = write_file(big, JWT_SECRET_MAX + 1);
    assert_int_equal(jwt_read_secret_file(path, &s, &len, err, sizeof err), PARLEY_EINVAL);
    assert_non_null(strstr(err, "the JWT secret is over 4096 bytes"));
    big[JWT_SECRET_MAX] = 'z';
    path = write_file(big, JWT_SECRET_MAX + 2);
    assert_int_equal(jwt_read_secret_file(path, &s, &len, err, sizeof err), PARLEY_EINVAL);
    /* Empty. */
    static const char *const empty[] = {"", "\n", "\r\n\n"};
    for (size_t i = 0; i < 3; i++) {
        path = write_file(empty[i], strlen(empty[i]));
        assert_int_equal(jwt_read_secret_file(path, &s, &len, err, sizeof err), PARLEY_EINVAL);
        char want[256];
        snprintf(want, sizeof want, "%s: the JWT secret file is empty (line ends do not count)",
                 path);
        assert_string_equal(err, want);
    }
    /* Missing, and a directory. */
    char missing[160];
    snprintf(missing, sizeof missing, "%s/nope", K.dir);
    assert_int_equal(jwt_read_secret_file(missing, &s, &len, err, sizeof err), PARLEY_EIO);
    char want[256];
    snprintf(want, sizeof want, "%s: No such file or directory", missing);
    assert_string_equal(err, want);
    assert_int_equal(jwt_read_secret_file(K.dir, &s, &len, err, sizeof err), PARLEY_EIO);
    assert_non_null(strstr(err, "cannot read"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_subject),
        cmocka_unit_test(test_algorithms),
        cmocka_unit_test(test_shape),
        cmocka_unit_test(test_base64url),
        cmocka_unit_test(test_signature_is_hmac),
        cmocka_unit_test(test_repeated_members),
        cmocka_unit_test(test_public_keys),
        cmocka_unit_test(test_bad_signatures),
        cmocka_unit_test(test_algorithm_confusion),
        cmocka_unit_test(test_kid),
        cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_jwks_errors),
        cmocka_unit_test(test_pem_errors),
        cmocka_unit_test(test_max_lifetime),
        cmocka_unit_test(test_sign_pkey),
        cmocka_unit_test(test_mint),
        cmocka_unit_test(test_mint_errors),
        cmocka_unit_test(test_read_secret_file),
    };
    return cmocka_run_group_tests(tests, keys_setup, keys_teardown);
}
