/* Fuzzes token verification with a fixed clock: jwt_verify with an HS256
 * key, and jwt_verify_set with a key set holding the same secret and the
 * public keys below (an RSA and a P-256 key with kids, from a JWKS; the
 * seeds rs256_kid, es256_kid and es256_admin are signed by their private
 * halves, which are not kept). Beyond not crashing: an accepted token has
 * a valid user id; re-signing an HS256 token's decoded parts with the key
 * reproduces it byte for byte (the encoding is canonical, so no second
 * spelling of a token verifies); what jwt_verify accepts the set accepts
 * too, and the set accepts HS256 only when jwt_verify does. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/json.h"
#include "parley/parley.h"
#include "services/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

static const char secret[] = "fuzzing-secret-fuzzing-secret-32";

static const char jwks[] =
    "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"fuzz-rsa\",\"use\":\"sig\",\"alg\":\"RS256\",\"n\":"
    "\"0G4mflp8XCfyeiXqI3TCb3QBa4LwHovA6rziOyElj9QxZPn1t92vruSSN0_K6NETxPW9IbXoBjblTbgYGIswZbk8"
    "Bie2lIbMt6e21K379rc-ZTzzdCqp5yv91Kaj8ykm1WHojCfWGmo1SnkTCAQnwpwcq3cdSsa9WsE4Z10qRUXszeTzAB"
    "PfoKbyhg1D7NxVuKoTkvk0zjXImsVjS0NV37siyGUuyJ05by8_ytspLwPj4j_Ps6aBij8AH8einseWbyeGmS2dFa8U"
    "q2SvOPUXeRpKCFgnSHj2Pwd2BslZV-MNzdEsyHNmjNMJsTHzQ_mtTFrvCZSSzgruzP4NmAEJ7w\",\"e\":\"AQAB"
    "\"},{\"kty\":\"EC\",\"kid\":\"fuzz-ec\",\"crv\":\"P-256\",\"x\":\"h686rQO-NVRfPpMg9SxVwL1w"
    "oBcd0ae09Y4OgLNbtKA\",\"y\":\"m3KEjzrfxCEcQu-Vo6j9cSuwO-RUtxDnxQW4BQVvL5Y\"}]}";

static jwt_keyset *fixed_set(void)
{
    static jwt_keyset *ks;
    if (ks) return ks;
    char err[256];
    CHECK(jwt_keyset_new(NULL, &ks) == 0);
    CHECK(jwt_keyset_set_secret(ks, (const uint8_t *)secret, sizeof secret - 1) == 0);
    CHECK(jwt_keyset_add_jwks(ks, jwks, sizeof jwks - 1, err, sizeof err) == 0);
    CHECK(jwt_keyset_count(ks) == 2);
    return ks;
}

/* The token's header says alg HS256 (called for accepted tokens, whose
 * header is a valid object without repeated members). */
static bool is_hs256(const char *tok, size_t size)
{
    const char *d1 = memchr(tok, '.', size);
    char header[JWT_MAX_HEADER];
    long hl = d1 ? b64url_decode(tok, (size_t)(d1 - tok), (uint8_t *)header, sizeof header) : -1;
    json_val h, alg;
    return hl > 0 && json_parse(header, (size_t)hl, 4, &h, NULL) == 0 &&
           json_object_get(&h, "alg", &alg) && json_string_eq(&alg, "HS256");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    jwt_key k = {(const uint8_t *)secret, sizeof secret - 1, 30000};
    jwt_claims c;
    msg_error err;
    char *tok = malloc(size ? size : 1);
    CHECK(tok);
    if (size) memcpy(tok, data, size);
    msg_errcode rc = jwt_verify(&k, tok, size, 1767225600000LL, &c, &err);
    jwt_claims cs;
    msg_error es;
    msg_errcode rs = jwt_verify_set(fixed_set(), tok, size, 1767225600000LL, &cs, &es);
    if (rs != MSG_OK) {
        CHECK(rs == es.code && es.message[0]);
        CHECK(rs == MSG_E_INVALID_TOKEN || rs == MSG_E_TOKEN_EXPIRED ||
              rs == MSG_E_TOKEN_NOT_YET_VALID || rs == MSG_E_INVALID_USER);
        CHECK(cs.sub[0] == 0);
    } else {
        CHECK(msg_valid_user(cs.sub, strlen(cs.sub)));
    }
    if (rc == MSG_OK) CHECK(rs == MSG_OK && strcmp(c.sub, cs.sub) == 0 && c.exp_ms == cs.exp_ms);
    if (rs == MSG_OK && is_hs256(tok, size)) CHECK(rc == MSG_OK);
    if (rc != MSG_OK) {
        CHECK(rc == err.code && err.message[0]);
        CHECK(rc == MSG_E_INVALID_TOKEN || rc == MSG_E_TOKEN_EXPIRED ||
              rc == MSG_E_TOKEN_NOT_YET_VALID || rc == MSG_E_INVALID_USER);
        free(tok);
        return 0;
    }
    CHECK(msg_valid_user(c.sub, strlen(c.sub)));
    const char *d1 = memchr(tok, '.', size);
    const char *d2 = memchr(d1 + 1, '.', size - (size_t)(d1 + 1 - tok));
    char header[JWT_MAX_TOKEN + 1], claims[JWT_MAX_TOKEN + 1];
    long hl = b64url_decode(tok, (size_t)(d1 - tok), (uint8_t *)header, JWT_MAX_TOKEN);
    long cl = b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), (uint8_t *)claims, JWT_MAX_TOKEN);
    CHECK(hl > 0 && cl > 0);
    header[hl] = claims[cl] = 0;
    if (!memchr(header, 0, (size_t)hl) && !memchr(claims, 0, (size_t)cl)) {
        pbuf again = {0};
        CHECK(jwt_sign(&again, header, claims, (const uint8_t *)secret, sizeof secret - 1) == 0);
        CHECK(again.len == size && memcmp(again.ptr, tok, size) == 0);
        pbuf_free(&again);
    }
    free(tok);
    return 0;
}
