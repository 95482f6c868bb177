/*
 * Who may see the operator's pages (/dashboard, /metrics): the admin
 * access rule of docs/OPERATIONS.md.
 *
 *   1. A loopback client (127.0.0.0/8, ::1, and IPv4-mapped 127.x) is
 *      admitted without credentials while `loopback` is on (the default;
 *      turn it off behind a reverse proxy on the same host, whose
 *      requests all come from loopback).
 *   2. Anyone else needs the admin key: `Authorization: Bearer KEY`, or
 *      the session cookie the login form (/dashboard/login) sets after
 *      the key was typed there. Keys are compared in constant time.
 *   3. Without a configured key nobody else gets in (403, never open).
 *
 * Sessions: a random 32-byte token (hex) in the cookie `parley_admin`
 * (HttpOnly; SameSite=Strict; Path=/; Secure on TLS), looked up in a
 * bounded table (PADMIN_SESSIONS_MAX; the entry closest to expiry makes
 * room) and expiring after session_ttl_ms. The key itself is never put
 * in a cookie.
 *
 * Loop thread only.
 */
#ifndef PARLEY_SERVER_ADMIN_AUTH_H
#define PARLEY_SERVER_ADMIN_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "server/httpd.h"

#define PADMIN_SESSIONS_MAX 64
#define PADMIN_COOKIE       "parley_admin"
#define PADMIN_TOKEN_HEX    64

typedef struct padmin padmin;

typedef struct padmin_opts {
    bool loopback;           /* loopback clients need no credentials (default true) */
    const char *key;         /* the admin key (copied); NULL or "": none */
    size_t key_len;          /* 0: strlen(key) */
    bool tls;                /* cookies get Secure */
    uint64_t session_ttl_ms; /* default 12 hours */
} padmin_opts;

void padmin_opts_init(padmin_opts *o);

/* 0 or PARLEY_ENOMEM. */
int padmin_new(parley_loop *loop, const padmin_opts *o, padmin **out);
void padmin_free(padmin *a);

/* True when key (len bytes) is the admin key (constant time in the
 * key's length); false when no key is configured. */
bool padmin_check_key(const padmin *a, const char *key, size_t len);

/* True when the address is loopback and loopback clients are trusted
 * (opts.loopback). */
bool padmin_is_loopback(const padmin *a, const struct sockaddr *sa);

/* True for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104, whatever the
 * options say. */
bool padmin_addr_is_loopback(const struct sockaddr *sa);

/* padmin_is_loopback for an address in text ("127.0.0.1", "::1",
 * "::ffff:127.0.0.1"), as the Socket.IO layer reports a peer; false for
 * text that is not an address. */
bool padmin_ip_is_loopback(const padmin *a, const char *ip);

bool padmin_has_key(const padmin *a);

/* The decision for an HTTP request: PADMIN_ALLOW, or the refusal. */
enum {
    PADMIN_ALLOW = 0,
    PADMIN_NO_KEY = 1,  /* not loopback and no key configured: 403 */
    PADMIN_UNAUTH = 2,  /* no or wrong credentials: 401 */
    PADMIN_REFUSALS = 3 /* size of the refusal counters' array */
};
int padmin_check_request(padmin *a, const phttpd_req *req);

/* Answers a refused request: 403 or 401 (with WWW-Authenticate) and a
 * plain-text body that says what is needed. */
void padmin_refuse(padmin *a, phttpd_req *req, int why);

/* Sessions (for the login form). padmin_session_new writes a new token
 * (PADMIN_TOKEN_HEX characters and a NUL) into token. */
int padmin_session_new(padmin *a, char token[PADMIN_TOKEN_HEX + 1]);
/* True when the token names a live session. */
bool padmin_session_ok(padmin *a, const char *token, size_t len);
void padmin_session_end(padmin *a, const char *token, size_t len);
unsigned padmin_sessions(padmin *a);

/* The Set-Cookie value for a token (or, with NULL, one that deletes the
 * cookie). 0 or PARLEY_EINVAL when cap is too small. */
int padmin_cookie(const padmin *a, const char *token, char *out, size_t cap);

/* The value of cookie `name` in the request's Cookie headers. */
bool padmin_find_cookie(const http_head *h, const char *name, const char **val, size_t *len);

/* Counters, for metrics. */
typedef struct padmin_stats {
    uint64_t refused[PADMIN_REFUSALS]; /* by PADMIN_NO_KEY / PADMIN_UNAUTH */
    uint64_t logins, login_failures;   /* counted by the login form's handler */
    unsigned sessions;
} padmin_stats;

void padmin_stats_get(padmin *a, padmin_stats *st);
/* The login handler's bookkeeping. */
void padmin_count_login(padmin *a, bool ok);

#endif
