/* Private to jwt.c and jwt_keys.c: the key set's layout. */
#ifndef PARLEY_SERVICES_JWT_INTERNAL_H
#define PARLEY_SERVICES_JWT_INTERNAL_H

#include "codec/json.h"
#include "services/jwt.h"

typedef enum jwt_ktype {
    JWT_KT_RSA = 1, /* RS256 */
    JWT_KT_P256,    /* ES256 */
} jwt_ktype;

typedef struct jwt_pubkey {
    jwt_ktype type;
    bool has_kid;
    size_t kid_len;
    size_t sig_len; /* the only signature length this key can verify */
    EVP_PKEY *pkey; /* public only */
    char kid[JWT_MAX_KID];
} jwt_pubkey;

struct jwt_keyset {
    int refs;
    int64_t leeway_ms;
    int64_t max_lifetime_ms;
    uint8_t *secret; /* NULL: no HS256 */
    size_t secret_len;
    size_t n;
    jwt_pubkey keys[JWT_MAX_KEYS];
};

/* Whether the members of a JSON object have distinct names (compared
 * unescaped). scratch must hold obj->len bytes (names never unescape to
 * more than their text), spans one entry per member (obj->len / 4 + 1 is
 * always enough). Also false when either is too small. */
typedef struct jwt_span {
    const char *p;
    size_t n;
} jwt_span;
bool jwt__members_unique(const json_val *obj, char *scratch, size_t scratch_cap, jwt_span *spans,
                         size_t max_spans);

/* pkey is an EC key on P-256. */
bool jwt__is_p256(EVP_PKEY *pkey);

#endif
