/* Fuzzes HS256 token verification with a fixed key and clock. Beyond not
 * crashing: an accepted token has a valid user id, and re-signing the
 * decoded parts with the key reproduces it byte for byte (the encoding
 * is canonical, so no second spelling of a token verifies). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "services/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

static const char secret[] = "fuzzing-secret-fuzzing-secret-32";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    jwt_key k = {(const uint8_t *)secret, sizeof secret - 1, 30000};
    jwt_claims c;
    msg_error err;
    char *tok = malloc(size ? size : 1);
    CHECK(tok);
    if (size) memcpy(tok, data, size);
    msg_errcode rc = jwt_verify(&k, tok, size, 1767225600000LL, &c, &err);
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
