#include "base/url.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "base/util.h"
#include "parley/parley.h"

static const struct {
    const char *name;
    bool tls;
    unsigned port;
} schemes[] = {
    {"ws", false, 80},
    {"wss", true, 443},
    {"http", false, 80},
    {"https", true, 443},
};

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static char to_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}

/* Characters of a registered name or IPv4 address we accept. Stricter than
 * RFC 3986 reg-name (no sub-delims, no percent-encoding): such hosts cannot
 * be resolved by DNS anyway, and refusing them keeps odd bytes out of the
 * Host header. */
static bool is_host_char(char c)
{
    return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

int purl_parse(const char *url, purl *out)
{
    if (!url || !out) return PARLEY_EURL;
    memset(out, 0, sizeof *out);
    size_t len = strlen(url);
    /* No control characters, spaces or non-ASCII anywhere: a URL that
     * needs them must arrive percent-encoded. */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c >= 0x7f) return PARLEY_EURL;
    }

    const char *p = url;
    const char *colon = strchr(p, ':');
    if (!colon || colon == p || colon - p >= (long)sizeof out->scheme) return PARLEY_EURL;
    size_t slen = (size_t)(colon - p);
    size_t si;
    for (si = 0; si < PARLEY_ARRAY_LEN(schemes); si++)
        if (pstr_ieqz(p, slen, schemes[si].name)) break;
    if (si == PARLEY_ARRAY_LEN(schemes)) return PARLEY_EURL;
    if (colon[1] != '/' || colon[2] != '/') return PARLEY_EURL;
    memcpy(out->scheme, schemes[si].name, strlen(schemes[si].name) + 1);
    out->tls = schemes[si].tls;
    out->port = schemes[si].port;

    const char *auth = colon + 3;
    size_t alen = strcspn(auth, "/?#");
    const char *rest = auth + alen;
    if (memchr(auth, '@', alen)) return PARLEY_EURL; /* userinfo */

    const char *port = NULL;
    size_t hlen;
    if (alen > 0 && auth[0] == '[') {
        const char *close = memchr(auth, ']', alen);
        if (!close) return PARLEY_EURL;
        hlen = (size_t)(close - auth - 1);
        if (hlen == 0 || hlen >= sizeof out->host) return PARLEY_EURL;
        memcpy(out->host, auth + 1, hlen);
        out->host[hlen] = '\0';
        unsigned char addr[16];
        if (inet_pton(AF_INET6, out->host, addr) != 1) return PARLEY_EURL;
        for (size_t i = 0; i < hlen; i++) out->host[i] = to_lower(out->host[i]);
        out->ipv6 = true;
        const char *after = close + 1;
        if (after < auth + alen) {
            if (*after != ':') return PARLEY_EURL;
            port = after + 1;
        }
    } else {
        const char *pc = memchr(auth, ':', alen);
        hlen = pc ? (size_t)(pc - auth) : alen;
        if (hlen == 0 || hlen >= sizeof out->host) return PARLEY_EURL;
        for (size_t i = 0; i < hlen; i++) {
            if (!is_host_char(auth[i])) return PARLEY_EURL;
            out->host[i] = to_lower(auth[i]);
        }
        out->host[hlen] = '\0';
        if (pc) port = pc + 1;
    }

    if (port) {
        size_t plen = (size_t)(auth + alen - port);
        if (plen == 0 || plen > 5) return PARLEY_EURL;
        unsigned v = 0;
        for (size_t i = 0; i < plen; i++) {
            if (!is_digit(port[i])) return PARLEY_EURL;
            v = v * 10 + (unsigned)(port[i] - '0');
        }
        if (v == 0 || v > 65535) return PARLEY_EURL;
        out->port = v;
        out->port_explicit = true;
    }

    /* Target: path and query, fragment dropped, "/" when the path is
     * empty (RFC 9112 section 3.2.1). */
    size_t tlen = strcspn(rest, "#");
    size_t need = tlen + (rest[0] == '/' ? 0 : 1);
    if (need >= sizeof out->target) return PARLEY_EURL;
    size_t o = 0;
    if (rest[0] != '/') out->target[o++] = '/';
    memcpy(out->target + o, rest, tlen);
    out->target[o + tlen] = '\0';

    /* The default port is left out of Host, as browsers do; some servers
     * compare Host with their own name verbatim. */
    bool show_port = out->port != schemes[si].port;
    int n = snprintf(out->host_header, sizeof out->host_header, "%s%s%s", out->ipv6 ? "[" : "",
                     out->host, out->ipv6 ? "]" : "");
    if (n > 0 && show_port)
        n = snprintf(out->host_header + n, sizeof out->host_header - (size_t)n, ":%u", out->port);
    /* host <= 255 chars + brackets + ":65535" always fits in 270. */
    return n < 0 ? PARLEY_EURL : 0;
}
