/* Unit tests for HS256 JWT verification: accepted tokens, every refusal
 * with its code, base64url strictness, and tampering (every single-byte
 * change of a valid token is refused). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "chop.h"
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
