/* Fuzzes the key-set loaders with file content: the input is given whole,
 * in an exact-size buffer, to jwt_keyset_add_jwks (the JWKS loader) and
 * to jwt_keyset_add_pem. Beyond not crashing or leaking: a load is all or
 * nothing (a refusal leaves the set as it was, with a message and a
 * documented code), an accepted JWKS holds 1 to JWT_MAX_KEYS keys, and an
 * accepted set verifies a fixed ES256 token or refuses it as invalid. The
 * seed rsa_and_ec holds the public key that signed the token. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parley/parley.h"
#include "services/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

/* Signed by the EC key of the seed (kid "fuzz-ec"). */
static const char token[] =
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImZ1enotZWMifQ."
    "eyJzdWIiOiJhbGljZSIsImV4cCI6MTc2NzIyOTIwMCwiaWF0IjoxNzY3MjI1NjAwfQ."
    "YmIpmJNrRucoewxhVEgkhNkfXWjOcPTBzQFbYkrAIHw7LMcB6s41OBjY8AGbscD573nCkNqxqIwpkkqHzMP-BA";

static void check_load(int rc, const jwt_keyset *ks, const char *err)
{
    if (rc == 0) {
        CHECK(jwt_keyset_count(ks) >= 1 && jwt_keyset_count(ks) <= JWT_MAX_KEYS);
        jwt_claims c;
        msg_error e;
        msg_errcode v = jwt_verify_set(ks, token, sizeof token - 1, 1767225600000LL, &c, &e);
        CHECK(v == MSG_OK || v == MSG_E_INVALID_TOKEN);
        if (v == MSG_OK) CHECK(strcmp(c.sub, "alice") == 0);
        return;
    }
    CHECK(rc == PARLEY_EINVAL || rc == PARLEY_ELIMIT || rc == PARLEY_ENOMEM);
    CHECK(err[0] != 0);
    CHECK(jwt_keyset_count(ks) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1);
    CHECK(text);
    if (size) memcpy(text, data, size);
    char err[256];
    jwt_keyset *ks = NULL;
    CHECK(jwt_keyset_new(NULL, &ks) == 0);
    err[0] = 0;
    check_load(jwt_keyset_add_jwks(ks, text, size, err, sizeof err), ks, err);
    jwt_keyset_unref(ks);

    CHECK(jwt_keyset_new(NULL, &ks) == 0);
    err[0] = 0;
    check_load(jwt_keyset_add_pem(ks, text, size, err, sizeof err), ks, err);
    jwt_keyset_unref(ks);
    free(text);
    return 0;
}
