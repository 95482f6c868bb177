/* URL parsing for the client side: ws, wss, http, https. */
#ifndef PARLEY_BASE_URL_H
#define PARLEY_BASE_URL_H

#include <stdbool.h>
#include <stddef.h>

typedef struct purl {
    char scheme[8];  /* "ws", "wss", "http", "https" (lower case) */
    bool tls;        /* wss or https */
    char host[256];  /* without brackets for IPv6 literals */
    bool ipv6;       /* host was a bracketed IPv6 literal */
    unsigned port;   /* explicit, or 80/443 by scheme */
    bool port_explicit;
    char target[2048]; /* path and query ("/" when empty), no fragment */
    char host_header[270]; /* value for the Host header: host[:port], brackets kept */
} purl;

/* Parses an absolute URL. Userinfo, an empty host, a bad port (0 or above
 * 65535, non-digits), control characters or spaces, an unknown scheme, or a
 * component too long for the fields above give PARLEY_EURL. */
int purl_parse(const char *url, purl *out);

#endif
