/* The admin access rule (server/admin_auth.h). */
#include "server/admin_auth.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

typedef struct asession {
    uint8_t digest[32]; /* SHA-256 of the token: the table holds no usable secret */
    uint64_t expires;   /* loop ms; 0 = free slot */
} asession;

struct padmin {
    parley_loop *loop;
    padmin_opts o;
    bool has_key;
    uint8_t key_digest[32];
    asession s[PADMIN_SESSIONS_MAX];
    padmin_stats st;
};

void padmin_opts_init(padmin_opts *o)
{
    memset(o, 0, sizeof *o);
    o->loopback = true;
    o->session_ttl_ms = 12ull * 3600 * 1000;
}

int padmin_new(parley_loop *loop, const padmin_opts *o, padmin **out)
{
    padmin *a = pcalloc(1, sizeof *a);
    if (!a) return PARLEY_ENOMEM;
    a->loop = loop;
    a->o = *o;
    if (!a->o.session_ttl_ms) a->o.session_ttl_ms = 12ull * 3600 * 1000;
    size_t len = o->key ? (o->key_len ? o->key_len : strlen(o->key)) : 0;
    if (len) {
        SHA256((const unsigned char *)o->key, len, a->key_digest);
        a->has_key = true;
    }
    a->o.key = NULL; /* only the digest is kept */
    a->o.key_len = 0;
    *out = a;
    return 0;
}

void padmin_free(padmin *a)
{
    if (!a) return;
    OPENSSL_cleanse(a, sizeof *a);
    free(a);
}

bool padmin_has_key(const padmin *a)
{
    return a->has_key;
}

bool padmin_check_key(const padmin *a, const char *key, size_t len)
{
    if (!a || !a->has_key || !key || !len) return false;
    /* Digests of equal length compared in constant time: neither the
     * key's length nor its bytes show in the timing. */
    uint8_t d[32];
    SHA256((const unsigned char *)key, len, d);
    return CRYPTO_memcmp(d, a->key_digest, sizeof d) == 0;
}

/* 127.0.0.0/8 */
static bool v4_loopback(const uint8_t b[4])
{
    return b[0] == 127;
}

/* ::1, or ::ffff:127.0.0.0/104 (IPv4-mapped) */
static bool v6_loopback(const uint8_t b[16])
{
    static const uint8_t one[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(b, one, 16) == 0) return true;
    return memcmp(b, mapped, 12) == 0 && v4_loopback(b + 12);
}

bool padmin_addr_is_loopback(const struct sockaddr *sa)
{
    if (!sa) return false;
    if (sa->sa_family == AF_INET)
        return v4_loopback((const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr);
    if (sa->sa_family == AF_INET6)
        return v6_loopback(((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr);
    return false;
}

bool padmin_is_loopback(const padmin *a, const struct sockaddr *sa)
{
    return a && a->o.loopback && padmin_addr_is_loopback(sa);
}

bool padmin_ip_is_loopback(const padmin *a, const char *ip)
{
    if (!a || !a->o.loopback || !ip) return false;
    uint8_t b[16];
    if (inet_pton(AF_INET, ip, b) == 1) return v4_loopback(b);
    if (inet_pton(AF_INET6, ip, b) == 1) return v6_loopback(b);
    return false;
}

/* ---- sessions ---- */

static void digest_token(const char *token, size_t len, uint8_t d[32])
{
    SHA256((const unsigned char *)token, len, d);
}

int padmin_session_new(padmin *a, char token[PADMIN_TOKEN_HEX + 1])
{
    uint8_t raw[PADMIN_TOKEN_HEX / 2];
    if (prand_bytes(raw, sizeof raw) != 0) return PARLEY_EIO;
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        token[2 * i] = hex[raw[i] >> 4];
        token[2 * i + 1] = hex[raw[i] & 15];
    }
    token[PADMIN_TOKEN_HEX] = 0;
    OPENSSL_cleanse(raw, sizeof raw);
    uint64_t now = ploop_now(a->loop);
    /* A free or expired slot, else the one closest to expiry. */
    asession *slot = &a->s[0];
    for (size_t i = 0; i < PADMIN_SESSIONS_MAX; i++) {
        asession *e = &a->s[i];
        if (e->expires <= now) {
            slot = e;
            break;
        }
        if (e->expires < slot->expires) slot = e;
    }
    digest_token(token, PADMIN_TOKEN_HEX, slot->digest);
    slot->expires = now + a->o.session_ttl_ms;
    return 0;
}

static asession *session_find(padmin *a, const char *token, size_t len)
{
    if (len != PADMIN_TOKEN_HEX) return NULL;
    uint8_t d[32];
    digest_token(token, len, d);
    uint64_t now = ploop_now(a->loop);
    asession *found = NULL;
    /* Every slot is compared (no early exit on a match). */
    for (size_t i = 0; i < PADMIN_SESSIONS_MAX; i++) {
        asession *e = &a->s[i];
        if (CRYPTO_memcmp(d, e->digest, sizeof d) == 0 && e->expires > now) found = e;
    }
    return found;
}

bool padmin_session_ok(padmin *a, const char *token, size_t len)
{
    return session_find(a, token, len) != NULL;
}

void padmin_session_end(padmin *a, const char *token, size_t len)
{
    asession *e = session_find(a, token, len);
    if (e) memset(e, 0, sizeof *e);
}

unsigned padmin_sessions(padmin *a)
{
    uint64_t now = ploop_now(a->loop);
    unsigned n = 0;
    for (size_t i = 0; i < PADMIN_SESSIONS_MAX; i++) n += a->s[i].expires > now;
    return n;
}

int padmin_cookie(const padmin *a, const char *token, char *out, size_t cap)
{
    int n;
    if (token)
        n = snprintf(out, cap, "%s=%s; Path=/; Max-Age=%llu; HttpOnly; SameSite=Strict%s",
                     PADMIN_COOKIE, token, (unsigned long long)(a->o.session_ttl_ms / 1000),
                     a->o.tls ? "; Secure" : "");
    else
        n = snprintf(out, cap, "%s=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict%s", PADMIN_COOKIE,
                     a->o.tls ? "; Secure" : "");
    return n < 0 || (size_t)n >= cap ? PARLEY_EINVAL : 0;
}

bool padmin_find_cookie(const http_head *h, const char *name, const char **val, size_t *len)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < h->num_headers; i++) {
        const http_header *hd = &h->headers[i];
        if (!pstr_ieqz(hd->name, hd->name_len, "cookie")) continue;
        /* name=value pairs separated by ';' and optional spaces. */
        const char *p = hd->value, *end = hd->value + hd->value_len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == ';')) p++;
            const char *item = p;
            while (p < end && *p != ';') p++;
            const char *eq = memchr(item, '=', (size_t)(p - item));
            if (eq && (size_t)(eq - item) == nl && memcmp(item, name, nl) == 0) {
                const char *v = eq + 1, *ve = p;
                while (ve > v && ve[-1] == ' ') ve--;
                *val = v;
                *len = (size_t)(ve - v);
                return true;
            }
        }
    }
    return false;
}

/* ---- requests ---- */

int padmin_check_request(padmin *a, const phttpd_req *req)
{
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (uv_tcp_getpeername(&req->conn->tcp, (struct sockaddr *)&ss, &sl) == 0 &&
        padmin_is_loopback(a, (const struct sockaddr *)&ss))
        return PADMIN_ALLOW;
    if (!a->has_key) {
        a->st.refused[PADMIN_NO_KEY]++;
        return PADMIN_NO_KEY;
    }
    const http_header *auth = http_find_header(req->head, "authorization");
    if (auth && auth->value_len > 7 && pstr_ieq(auth->value, 7, "Bearer ", 7)) {
        const char *k = auth->value + 7;
        size_t kl = auth->value_len - 7;
        while (kl && *k == ' ') {
            k++;
            kl--;
        }
        if (padmin_check_key(a, k, kl)) return PADMIN_ALLOW;
    }
    const char *tok;
    size_t tl;
    if (padmin_find_cookie(req->head, PADMIN_COOKIE, &tok, &tl) && padmin_session_ok(a, tok, tl))
        return PADMIN_ALLOW;
    a->st.refused[PADMIN_UNAUTH]++;
    return PADMIN_UNAUTH;
}

void padmin_refuse(padmin *a, phttpd_req *req, int why)
{
    (void)a;
    if (why == PADMIN_NO_KEY) {
        static const char msg[] =
            "forbidden: admin pages are open to loopback clients only, and this server has no "
            "admin key (start parleyd with --admin-key-file FILE to allow others)\n";
        phttpd_respond(req, 403, "text/plain; charset=utf-8", NULL, 0, msg, sizeof msg - 1);
        return;
    }
    static const char msg[] = "unauthorized: send the admin key as `Authorization: Bearer KEY`, "
                              "or log in at /dashboard/login\n";
    http_header h = {"WWW-Authenticate", 16, "Bearer realm=\"parleyd\"", 22};
    phttpd_respond(req, 401, "text/plain; charset=utf-8", &h, 1, msg, sizeof msg - 1);
}

void padmin_stats_get(padmin *a, padmin_stats *st)
{
    *st = a->st;
    st->sessions = padmin_sessions(a);
}

void padmin_count_login(padmin *a, bool ok)
{
    if (ok)
        a->st.logins++;
    else
        a->st.login_failures++;
}
