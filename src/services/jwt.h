/*
 * JSON Web Tokens (RFC 7519) signed as JWS (RFC 7515, compact
 * serialization): the identity of messaging clients.
 *
 * Algorithms: HS256 (HMAC-SHA256 under a shared secret), RS256 (RSASSA
 * PKCS#1 v1.5 with SHA-256, RSA keys of 2048 to 8192 bits) and ES256
 * (ECDSA on P-256 with SHA-256, the signature being exactly the raw
 * 64-byte r||s of RFC 7518 section 3.4, not DER). The token's `alg` must match the type of the
 * key it is checked against exactly: HS256 only against the secret, RS256
 * only against RSA public keys, ES256 only against P-256 public keys. So
 * an HS256 token "signed" with a public key's bytes as the HMAC secret is
 * never accepted, and `none` and every other value are refused; an
 * algorithm the server has no key for is refused too. The `jwk`, `jku`,
 * `x5c` and `x5u` header members are ignored: keys come only from the
 * server. A `crit` header is refused (no extension is understood).
 *
 * Key selection: with a `kid` header, the public key with that kid is
 * used; when no key has it, the keys without a kid (keys from PEM files,
 * JWKS entries without kid) of the token's type are tried, and when there
 * are none the token is refused ("unknown key id"). Without a `kid`,
 * every key of the token's type is tried (at most JWT_MAX_KEYS; an RSA
 * key only when the signature has its modulus' length). HS256 ignores
 * `kid`. The signature is checked (HS256 in constant time) before any
 * claim is read.
 *
 * Strictness: a header or claims object with a repeated member (any
 * name, compared after unescaping) is refused, so no two parsers can
 * disagree about which one counts. base64url is strict (no padding, no
 * other alphabet, canonical trailing bits).
 *
 * Claims: `sub` (required) is the user id and must be a valid messaging
 * user id; `exp` (required), `nbf` and `iat` (optional) are NumericDates
 * that must be finite numbers within years 0001 to 9999
 * (-62135596800 to 253402300799), else the token is invalid; exp and nbf
 * are checked against the caller's clock with a leeway. With a maximum
 * lifetime set (key sets only), a token whose exp lies more than the maximum (plus the
 * leeway) after now is refused, and so is one whose exp - iat exceeds the
 * maximum (exactly: both come from the issuer's clock). `role` "admin"
 * marks an administrator, "notifier" a sender of notifications. Other
 * claims, and members of nested objects, are ignored.
 *
 * Verification is sans-I/O (the clock is passed in; only the *_file
 * loaders read files) and keeps no state of its own (OpenSSL allocates
 * while it checks a signature). Limits: a token is at most JWT_MAX_TOKEN
 * bytes, its decoded header JWT_MAX_HEADER.
 */
#ifndef PARLEY_SERVICES_JWT_H
#define PARLEY_SERVICES_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/types.h>

#include "base/buf.h"
#include "services/msg_schema.h"

#define JWT_MAX_TOKEN    4096
#define JWT_MAX_HEADER   1024
#define JWT_MAX_KEYS     64        /* public keys in a key set */
#define JWT_MAX_KID      256       /* bytes of a key id */
#define JWT_MAX_FILE     (1 << 20) /* bytes of a PEM or JWKS file */
#define JWT_RSA_MIN_BITS 2048
#define JWT_RSA_MAX_BITS 8192

/* A single HS256 secret, for jwt_verify(). No maximum lifetime: that is
 * a key set's (a field here would break callers' positional
 * initializers). */
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

/* Verifies token[0, len) with an HS256 secret at wall-clock time now_ms
 * (ms since the epoch). Returns MSG_OK and fills *c, or one of
 * MSG_E_INVALID_TOKEN (malformed, repeated member, wrong alg, crit, bad
 * signature, exp missing, exp/nbf/iat not a NumericDate in range; with a
 * key set also lifetime over the maximum), MSG_E_TOKEN_EXPIRED,
 * MSG_E_TOKEN_NOT_YET_VALID, MSG_E_INVALID_USER (sub missing or invalid),
 * with err filled. */
msg_errcode jwt_verify(const jwt_key *k, const char *token, size_t len, int64_t now_ms,
                       jwt_claims *c, msg_error *err);

/* ---- key sets: an HS256 secret and/or public keys ---- */

/* A set of verification keys: an optional HS256 secret and up to
 * JWT_MAX_KEYS public keys (RSA for RS256, EC P-256 for ES256), each with
 * an optional kid, plus the time rules. Reference counted, single-
 * threaded (no locking: take and drop references on one thread). A set is
 * filled right after jwt_keyset_new(), before it is shared; once shared
 * (a second reference taken) it is only read.
 *
 * Reload (SIGHUP): build and fill a fresh set; on any error print the
 * message, unref the fresh set and keep the old one; on success drop the
 * server's reference to the old set and keep the fresh one. Whoever took
 * a reference of the old set (a verification in progress) keeps it alive
 * until its own unref. */
typedef struct jwt_keyset jwt_keyset;

typedef struct jwt_keyset_opts {
    int64_t leeway_ms;       /* clock skew tolerated for exp and nbf; default 30000 */
    int64_t max_lifetime_ms; /* longest accepted token lifetime; default 0 = no maximum */
} jwt_keyset_opts;

void jwt_keyset_opts_init(jwt_keyset_opts *o);

/* A new empty set with one reference (o NULL: defaults). 0,
 * PARLEY_EINVAL (a negative value, or one over 2^40 ms), PARLEY_ENOMEM. */
int jwt_keyset_new(const jwt_keyset_opts *o, jwt_keyset **out);

/* Takes a reference; returns ks. */
jwt_keyset *jwt_keyset_ref(jwt_keyset *ks);
/* Drops a reference; the last one frees the set (the secret is wiped).
 * NULL is ignored. */
void jwt_keyset_unref(jwt_keyset *ks);

/* Sets the HS256 secret (copied; replaces an earlier one). 0,
 * PARLEY_EINVAL (empty), PARLEY_ENOMEM. */
int jwt_keyset_set_secret(jwt_keyset *ks, const uint8_t *secret, size_t len);

/* The loaders below add keys all or nothing: on any error the set is left
 * as it was, and a message for the operator (naming the file, and the key
 * by position and kid) is written into err (errcap bytes; 256 is ample).
 * Errors: PARLEY_EINVAL (malformed input, unsupported key type, curve or
 * use, alg inconsistent with the key, private key material, duplicate
 * kid), PARLEY_ELIMIT (file over JWT_MAX_FILE, more than JWT_MAX_KEYS keys
 * in the set, RSA modulus outside 2048..8192 bits), PARLEY_EIO (the file
 * cannot be read), PARLEY_ENOMEM. */

/* Adds the public half of pkey (a public or private RSA or EC P-256 key;
 * the set keeps a public-only copy, the caller keeps pkey) with kid
 * (NUL-terminated, 1 to JWT_MAX_KID bytes; NULL: none). */
int jwt_keyset_add_key(jwt_keyset *ks, EVP_PKEY *pkey, const char *kid, char *err, size_t errcap);

/* PEM text: one or more "PUBLIC KEY" (SubjectPublicKeyInfo) and/or
 * "CERTIFICATE" blocks, text between blocks ignored. A certificate only
 * carries its key: its dates, issuer and extensions are not checked. Keys
 * from PEM have no kid (they serve any kid, see above). Any other block
 * (a private key in particular) refuses the whole input. */
int jwt_keyset_add_pem(jwt_keyset *ks, const char *pem, size_t len, char *err, size_t errcap);
int jwt_keyset_add_pem_file(jwt_keyset *ks, const char *path, char *err, size_t errcap);

/* A JWK Set (RFC 7517): {"keys":[...]} (other top-level members ignored).
 * Each key: "kty" "RSA" with "n" and "e", or "kty" "EC" with "crv"
 * "P-256", "x" and "y" (32 bytes each, a point on the curve); optional
 * "kid" (a string of 1 to JWT_MAX_KID bytes, unique in the set), "alg"
 * (if present "RS256" for RSA, "ES256" for EC), "use" (if present "sig");
 * other members are ignored, except private key members ("d", ...), which
 * are refused. Values are strict base64url; n may carry leading zero
 * octets. Any key that does not fit (another kty or crv, an encryption key,
 * an RSA key for another alg) refuses the whole file, so that an operator
 * notices at once rather than when a token signed with it is refused. A
 * set without keys is refused. */
int jwt_keyset_add_jwks(jwt_keyset *ks, const char *json, size_t len, char *err, size_t errcap);
int jwt_keyset_add_jwks_file(jwt_keyset *ks, const char *path, char *err, size_t errcap);

/* Number of public keys; whether an HS256 secret is set. */
size_t jwt_keyset_count(const jwt_keyset *ks);
bool jwt_keyset_has_secret(const jwt_keyset *ks);

/* Verifies token[0, len) against the set at now_ms. Results as for
 * jwt_verify(); MSG_E_INVALID_TOKEN also when no key of the set fits the
 * token (alg the set has no key for, unknown kid). */
msg_errcode jwt_verify_set(const jwt_keyset *ks, const char *token, size_t len, int64_t now_ms,
                           jwt_claims *c, msg_error *err);

/* ---- signing, for tests, benchmarks and tools: the server only verifies ---- */

/* Appends a token for the claims object claims_json (a JSON object; not
 * checked) with the header header_json (NULL: {"alg":"HS256","typ":"JWT"}),
 * signed with HS256 under the key. 0, PARLEY_ENOMEM, PARLEY_EIO (HMAC
 * failed). */
int jwt_sign(pbuf *out, const char *header_json, const char *claims_json, const uint8_t *secret,
             size_t secret_len);

/* The same signed with a private key: RS256 for an RSA key, ES256 (raw
 * r||s) for an EC P-256 key, whatever the header says (so tests can make
 * mismatched tokens). header_json NULL: {"alg":"RS256","typ":"JWT"} or
 * {"alg":"ES256","typ":"JWT"}. 0, PARLEY_EINVAL (another key type),
 * PARLEY_ENOMEM, PARLEY_EIO (signing failed). */
int jwt_sign_pkey(pbuf *out, const char *header_json, const char *claims_json, EVP_PKEY *priv);

/* ---- minting HS256 tokens (`parley token`) ---- */

#define JWT_SECRET_MAX   4096               /* bytes of an HS256 secret file */
#define JWT_MINT_TTL_MAX (10 * 365 * 86400) /* seconds: ten years */

/* Reads an HS256 secret file the way parleyd's --jwt-secret-file does:
 * its bytes, with every trailing '\n' and '\r' dropped (nothing else:
 * spaces are part of the secret); the result must be 1 to JWT_SECRET_MAX
 * bytes. *out is malloc'ed (the caller wipes it with OPENSSL_cleanse and
 * frees it). 0, or PARLEY_EIO (cannot open or read), PARLEY_EINVAL (empty
 * after dropping the line ends, or over JWT_SECRET_MAX bytes),
 * PARLEY_ENOMEM, with a message naming the file in err (errcap bytes;
 * 256 is ample for paths up to about 200 bytes). */
int jwt_read_secret_file(const char *path, uint8_t **out, size_t *len, char *err, size_t errcap);

/* The same rule for another key file (parleyd's --admin-key-file): `what`
 * names it in the messages ("the admin key"). */
int jwt_read_key_file(const char *path, const char *what, uint8_t **out, size_t *len, char *err,
                      size_t errcap);

typedef struct jwt_mint_opts {
    const char *sub;  /* the user id: a valid messaging user id */
    const char *role; /* NULL, "admin" or "notifier" */
    const char *kid;  /* NULL, or 1 to JWT_MAX_KID bytes without control characters */
    int64_t now_s;    /* iat, seconds since the epoch */
    int64_t ttl_s;    /* exp = now_s + ttl_s; 1 to JWT_MINT_TTL_MAX */
} jwt_mint_opts;

/* Appends an HS256 token for o signed with the secret: header
 * {"alg":"HS256","typ":"JWT"} (plus "kid"), claims {"sub","iat","exp"}
 * (plus "role"). 0, or PARLEY_EINVAL with a message for the command line
 * in err (sub empty, too long or with characters outside [A-Za-z0-9._@-],
 * unknown role, bad kid, ttl out of range, empty secret), PARLEY_ENOMEM,
 * PARLEY_EIO. */
int jwt_mint_hs256(pbuf *out, const jwt_mint_opts *o, const uint8_t *secret, size_t secret_len,
                   char *err, size_t errcap);

/* base64url without padding (RFC 4648 section 5), strict: no '=', no
 * other alphabet, canonical trailing bits. Returns the decoded length or
 * -1 (malformed, or more than cap bytes). */
long b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap);
int b64url_append(pbuf *out, const uint8_t *in, size_t n);

#endif
