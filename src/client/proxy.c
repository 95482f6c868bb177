/* HTTP proxy selection for the clients (see proxy.h). */
#include "client/proxy.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    return -1;
}

/* Percent-decodes in[0, n) into out (cap bytes with NUL); its length or -1. */
static long pct_decode(const char *in, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)in[i];
        if (ch == '%') {
            if (i + 2 >= n) return -1;
            int a = hexval(in[i + 1]), b = hexval(in[i + 2]);
            if (a < 0 || b < 0) return -1;
            ch = a * 16 + b;
            i += 2;
        }
        if (ch == 0 || ch == '\r' || ch == '\n' || o + 1 >= cap) return -1;
        out[o++] = (char)ch;
    }
    out[o] = 0;
    return (long)o;
}

int pproxy_parse(const char *url, pproxy *out)
{
    memset(out, 0, sizeof *out);
    if (!url) return PARLEY_EURL;
    const char *p = url;
    const char *sep = strstr(p, "://");
    if (sep) {
        if ((size_t)(sep - p) != 4 || strncasecmp(p, "http", 4) != 0) return PARLEY_EURL;
        p = sep + 3;
    }
    size_t alen = strcspn(p, "/?#");
    const char *auth_end = NULL;
    for (size_t i = 0; i < alen; i++)
        if (p[i] == '@') auth_end = p + i;
    if (auth_end) {
        char user[256], pass[256];
        const char *colon = memchr(p, ':', (size_t)(auth_end - p));
        size_t ulen = colon ? (size_t)(colon - p) : (size_t)(auth_end - p);
        if (pct_decode(p, ulen, user, sizeof user) < 0) return PARLEY_EURL;
        pass[0] = 0;
        if (colon && pct_decode(colon + 1, (size_t)(auth_end - colon - 1), pass, sizeof pass) < 0)
            return PARLEY_EURL;
        char cred[520];
        int n = snprintf(cred, sizeof cred, "%s:%s", user, pass);
        if (n < 0 || (size_t)n >= sizeof cred) return PARLEY_EURL;
        char enc[720];
        if (base64_encoded_len((size_t)n) + 1 > sizeof enc) return PARLEY_EURL;
        base64_encode((const uint8_t *)cred, (size_t)n, enc);
        snprintf(out->auth, sizeof out->auth, "Basic %s", enc);
        alen -= (size_t)(auth_end + 1 - p);
        p = auth_end + 1;
    }
    const char *hp = p, *he;
    const char *rest;
    if (*hp == '[') {
        he = memchr(hp, ']', alen);
        if (!he) return PARLEY_EURL;
        hp++;
        rest = he + 1;
    } else {
        he = memchr(hp, ':', alen);
        if (!he) he = hp + alen;
        rest = he;
    }
    size_t hlen = (size_t)(he - hp);
    if (hlen == 0 || hlen >= sizeof out->host) return PARLEY_EURL;
    for (size_t i = 0; i < hlen; i++) {
        unsigned char ch = (unsigned char)hp[i];
        if (ch <= ' ' || ch == '@' || ch == '/' || ch >= 0x7f) return PARLEY_EURL;
    }
    memcpy(out->host, hp, hlen);
    out->host[hlen] = 0;
    out->port = 80;
    const char *end = p + alen;
    if (rest < end) {
        if (*rest != ':' || rest + 1 == end) return PARLEY_EURL;
        unsigned port = 0;
        for (const char *q = rest + 1; q < end; q++) {
            if (*q < '0' || *q > '9') return PARLEY_EURL;
            port = port * 10 + (unsigned)(*q - '0');
            if (port > 65535) return PARLEY_EURL;
        }
        if (port == 0) return PARLEY_EURL;
        out->port = port;
    }
    /* Nothing but an optional "/" after the authority. */
    if (*end && strcmp(end, "/") != 0) return PARLEY_EURL;
    return 0;
}

bool pproxy_bypass(const char *list, const char *host)
{
    if (!list || !host) return false;
    size_t hl = strlen(host);
    const char *p = list;
    while (*p) {
        while (*p == ',' || *p == ' ' || *p == '\t') p++;
        size_t n = strcspn(p, ", \t");
        if (!n) break;
        const char *e = p;
        size_t el = n;
        if (el == 1 && *e == '*') return true;
        if (el >= 2 && e[0] == '*' && e[1] == '.') {
            e++;
            el--;
        }
        if (el && e[0] == '.') {
            e++;
            el--;
        }
        /* host[:port] entries: the port is not compared; [v6] unwrapped. */
        if (el && e[0] == '[') {
            const char *rb = memchr(e, ']', el);
            if (rb) {
                e++;
                el = (size_t)(rb - e);
            }
        } else {
            const char *colon = memchr(e, ':', el);
            if (colon && !memchr(colon + 1, ':', el - (size_t)(colon + 1 - e)))
                el = (size_t)(colon - e);
        }
        if (el && el <= hl && strncasecmp(host + hl - el, e, el) == 0 &&
            (el == hl || host[hl - el - 1] == '.'))
            return true;
        p += n;
    }
    return false;
}

static const char *env2(const char *lower, const char *upper)
{
    const char *v = getenv(lower);
    if (!v || !*v) v = getenv(upper);
    return v && *v ? v : NULL;
}

int pproxy_pick(const char *opt, bool tls, const char *host, pproxy *out, bool *use)
{
    *use = false;
    const char *url = opt;
    if (!url) {
        url = tls ? env2("https_proxy", "HTTPS_PROXY") : env2("http_proxy", "HTTP_PROXY");
        if (!url) return 0;
        if (pproxy_bypass(env2("no_proxy", "NO_PROXY"), host)) return 0;
    }
    if (!*url) return 0;
    int rc = pproxy_parse(url, out);
    if (rc) return rc;
    *use = true;
    return 0;
}
