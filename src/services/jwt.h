/*
 * JSON Web Tokens (RFC 7519) signed with HMAC-SHA256 (JWS, RFC 7515,
 * compact serialization): the identity of messaging clients.
 *
 * Only HS256 is accepted: the algorithm is the server's choice, not the
 * token's, so `alg` must be exactly "HS256" ("none", the RS/ES families and
 * every other value are refused, which closes the algorithm-confusion
 * attacks). A `crit` header is refused (no extension is understood). The
 * signature is checked, in constant time, before any claim is read.
 *
 * Strictness: a header or claims object with a repeated member (any
 * name, compared after unescaping) is refused, so no two parsers can
 * disagree about which one counts.
 *
 * Claims: `sub` (required) is the user id and must be a valid messaging
 * user id; `exp` (required), `nbf` and `iat` (optional) are NumericDates
 * that must be finite numbers within years 0001 to 9999
 * (-62135596800 to 253402300799), else the token is invalid; exp and nbf
 * are checked against the caller's clock with a leeway. `role` "admin"
 * marks an administrator, "notifier" a sender of notifications. Other
 * claims, and members of nested objects, are ignored.
 *
 * Sans-I/O: the clock is passed in. Limits: a token is at most
 * JWT_MAX_TOKEN bytes; nothing is allocated.
 */
#ifndef PARLEY_SERVICES_JWT_H
#define PARLEY_SERVICES_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "services/msg_schema.h"

#define JWT_MAX_TOKEN 4096

typedef struct jwt_key {
    const uint8_t *secret;
    size_t len;
    int64_t leeway_ms; /* tolerated clock skew for exp and nbf */
} jwt_key;

typedef struct jwt_claims {
    char sub[MSG_USER_MAX + 1];
    bool admin;
    bool notifier;  /* role "notifier": may send notifications (so may admin) */
    int64_t exp_ms; /* exp as milliseconds since the epoch (truncated) */
} jwt_claims;

/* Verifies token[0, len) at wall-clock time now_ms (ms since the epoch).
 * Returns MSG_OK and fills *c, or one of MSG_E_INVALID_TOKEN (malformed,
 * repeated member, wrong alg, crit, bad signature, exp missing, exp/nbf/iat
 * not a NumericDate in range),
 * MSG_E_TOKEN_EXPIRED, MSG_E_TOKEN_NOT_YET_VALID, MSG_E_INVALID_USER (sub
 * missing or invalid), with err filled. */
msg_errcode jwt_verify(const jwt_key *k, const char *token, size_t len, int64_t now_ms,
                       jwt_claims *c, msg_error *err);

/* Appends a token for the claims object claims_json (a JSON object; not
 * checked) with the header header_json (NULL: {"alg":"HS256","typ":"JWT"}),
 * signed with HS256 under the key. For tests, benchmarks and tools: the
 * server only verifies. 0, PARLEY_ENOMEM, PARLEY_EIO (HMAC failed). */
int jwt_sign(pbuf *out, const char *header_json, const char *claims_json, const uint8_t *secret,
             size_t secret_len);

/* base64url without padding (RFC 4648 section 5), strict: no '=', no
 * other alphabet, canonical trailing bits. Returns the decoded length or
 * -1 (malformed, or more than cap bytes). */
long b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap);
int b64url_append(pbuf *out, const uint8_t *in, size_t n);

#endif
