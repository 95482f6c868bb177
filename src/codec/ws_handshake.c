#include "codec/ws_handshake.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "base/util.h"
#include "parley/parley.h"

static size_t count_headers(const http_head *h, const char *name)
{
    size_t c = 0;
    for (size_t k = 0; k < h->num_headers; k++)
        if (pstr_ieqz(h->headers[k].name, h->headers[k].name_len, name)) c++;
    return c;
}

int ws_check_upgrade(const http_head *req, ws_upgrade *out, const char **why)
{
    memset(out, 0, sizeof *out);
    *why = NULL;
    /* Methods are case-sensitive (RFC 9110 section 9.1). */
    if (!req->method || req->method_len != 3 || memcmp(req->method, "GET", 3) != 0) {
        *why = "WebSocket upgrade needs GET";
        return 405;
    }
    if (req->version_minor != 1) {
        *why = "WebSocket upgrade needs HTTP/1.1";
        return 400;
    }
    const http_header *host = http_find_header(req, "Host");
    if (!host) {
        *why = "missing Host";
        return 400;
    }
    if (!http_header_has_token(req, "Upgrade", "websocket")) {
        *why = "Upgrade header does not name websocket";
        return 400;
    }
    if (!http_header_has_token(req, "Connection", "upgrade")) {
        *why = "Connection header does not list upgrade";
        return 400;
    }
    if (count_headers(req, "Sec-WebSocket-Key") != 1) {
        *why = "need exactly one Sec-WebSocket-Key";
        return 400;
    }
    const http_header *key = http_find_header(req, "Sec-WebSocket-Key");
    uint8_t nonce[18];
    if (key->value_len != 24 ||
        base64_decode(key->value, key->value_len, nonce, sizeof nonce) != 16) {
        *why = "Sec-WebSocket-Key is not 16 bytes in base64";
        return 400;
    }
    /* One field holding exactly "13": a list such as "13, 8" or a repeated
     * field is a version negotiation we do not take part in. */
    const http_header *ver = http_find_header(req, "Sec-WebSocket-Version");
    if (!ver || count_headers(req, "Sec-WebSocket-Version") != 1 || ver->value_len != 2 ||
        memcmp(ver->value, "13", 2) != 0) {
        *why = "unsupported WebSocket version";
        return 426;
    }
    out->key = key->value;
    out->key_len = key->value_len;
    const http_header *origin = http_find_header(req, "Origin");
    if (origin) {
        out->origin = origin->value;
        out->origin_len = origin->value_len;
    }
    out->host = host->value;
    out->host_len = host->value_len;
    out->has_protocols = count_headers(req, "Sec-WebSocket-Protocol") > 0;
    out->has_extensions = count_headers(req, "Sec-WebSocket-Extensions") > 0;
    return 0;
}

bool ws_header_items(const http_head *h, const char *name, size_t *pos, const char **item,
                     size_t *item_len)
{
    /* *pos is an offset into the virtual concatenation of every header
     * value (each followed by one separator byte), so that it stays a plain
     * number the caller can keep without knowing about headers. */
    size_t base = 0;
    for (size_t k = 0; k < h->num_headers; k++) {
        const http_header *f = &h->headers[k];
        size_t span = f->value_len + 1;
        if (*pos >= base + span || !pstr_ieqz(f->name, f->name_len, name)) {
            base += span;
            continue;
        }
        size_t i = *pos > base ? *pos - base : 0;
        while (i < f->value_len) {
            while (i < f->value_len &&
                   (f->value[i] == ',' || f->value[i] == ' ' || f->value[i] == '\t'))
                i++;
            if (i >= f->value_len) break;
            size_t b = i;
            while (i < f->value_len && f->value[i] != ',') i++;
            size_t e = i;
            while (e > b && (f->value[e - 1] == ' ' || f->value[e - 1] == '\t')) e--;
            *item = f->value + b;
            *item_len = e - b;
            *pos = base + i;
            return true;
        }
        base += span;
        *pos = base;
    }
    *pos = base;
    return false;
}

int ws_header_join(const http_head *h, const char *name, pbuf *out)
{
    size_t mark = out->len;
    bool first = true;
    int rc = 0;
    for (size_t k = 0; k < h->num_headers && !rc; k++) {
        const http_header *f = &h->headers[k];
        if (!pstr_ieqz(f->name, f->name_len, name) || f->value_len == 0) continue;
        if (!first) rc = pbuf_append(out, ", ", 2);
        if (!rc) rc = pbuf_append(out, f->value, f->value_len);
        first = false;
    }
    if (rc) out->len = mark;
    return rc;
}

void ws_accept_key(const char *key, size_t key_len, char out[29])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) == 1 &&
              EVP_DigestUpdate(ctx, key, key_len) == 1 &&
              EVP_DigestUpdate(ctx, WS_GUID, sizeof WS_GUID - 1) == 1 &&
              EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 20;
    EVP_MD_CTX_free(ctx);
    if (!ok) {
        /* An empty accept value matches nothing, so failure is safe. */
        out[0] = '\0';
        return;
    }
    base64_encode(md, 20, out);
}

/* Appends the fixed headers and then the caller's extra ones, through the
 * validating writer, without allocating for the common case. */
#define WS_FIXED_MAX 8

static int write_with_extra(pbuf *out, bool request, const char *target, const char *host,
                            const http_header *fixed, size_t nfixed, const http_header *extra,
                            size_t nextra)
{
    http_header local[WS_FIXED_MAX + 8];
    http_header *all = local;
    if (nextra > PARLEY_ARRAY_LEN(local) - nfixed) {
        all = pcalloc(nfixed + nextra, sizeof *all);
        if (!all) return PARLEY_ENOMEM;
    }
    memcpy(all, fixed, nfixed * sizeof *all);
    if (nextra) memcpy(all + nfixed, extra, nextra * sizeof *all);
    int rc = request ? http_write_request_head(out, "GET", target, host, all, nfixed + nextra, -1)
                     : http_write_response_head(out, 101, NULL, all, nfixed + nextra, -1);
    if (all != local) free(all);
    return rc;
}

static http_header hdr(const char *name, const char *value, size_t value_len)
{
    http_header f = {name, strlen(name), value, value_len};
    return f;
}

int ws_write_accept(pbuf *out, const char *key, size_t key_len, const char *protocol,
                    const char *extensions, const http_header *extra, size_t nextra)
{
    char accept[29];
    ws_accept_key(key, key_len, accept);
    if (!accept[0]) return PARLEY_ENOMEM;
    http_header f[WS_FIXED_MAX];
    size_t n = 0;
    f[n++] = hdr("Upgrade", "websocket", 9);
    f[n++] = hdr("Connection", "Upgrade", 7);
    f[n++] = hdr("Sec-WebSocket-Accept", accept, 28);
    if (protocol) f[n++] = hdr("Sec-WebSocket-Protocol", protocol, strlen(protocol));
    if (extensions) f[n++] = hdr("Sec-WebSocket-Extensions", extensions, strlen(extensions));
    return write_with_extra(out, false, NULL, NULL, f, n, extra, nextra);
}

int ws_write_reject(pbuf *out, int status, const char *why)
{
    if (!why) why = http_status_text(status);
    http_header f[3];
    size_t n = 0;
    f[n++] = hdr("Content-Type", "text/plain", 10);
    f[n++] = hdr("Connection", "close", 5);
    if (status == 426) f[n++] = hdr("Sec-WebSocket-Version", "13", 2);
    if (status == 405) f[n++] = hdr("Allow", "GET", 3); /* RFC 9110 15.5.6 */
    size_t wlen = strlen(why);
    size_t mark = out->len;
    int rc = http_write_response_head(out, status, NULL, f, n, (int64_t)wlen + 1);
    if (rc) return rc;
    rc = pbuf_append(out, why, wlen);
    if (!rc) rc = pbuf_append(out, "\n", 1);
    if (rc) out->len = mark;
    return rc;
}

int ws_client_key(char out[25])
{
    uint8_t nonce[16];
    int rc = prand_bytes(nonce, sizeof nonce);
    if (rc) return rc;
    base64_encode(nonce, sizeof nonce, out);
    return 0;
}

static bool is_token_str(const char *s)
{
    if (!*s) return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && !strchr("!#$%&'*+-.^_`|~", c)) return false;
    }
    return true;
}

int ws_write_client_request(pbuf *out, const char *host_header, const char *target, const char *key,
                            const char *const *protocols, size_t nprotocols, const char *extensions,
                            const http_header *extra, size_t nextra)
{
    if (!key || strlen(key) != 24) return PARLEY_EINVAL;
    /* Subprotocol names are tokens (RFC 6455 section 4.1); anything else
     * would be split differently by the server. */
    pbuf protos = {0};
    int rc = 0;
    for (size_t i = 0; i < nprotocols && !rc; i++) {
        if (!protocols[i] || !is_token_str(protocols[i])) rc = PARLEY_EINVAL;
        if (!rc && i) rc = pbuf_append(&protos, ", ", 2);
        if (!rc) rc = pbuf_append_str(&protos, protocols[i]);
    }
    if (rc) {
        pbuf_free(&protos);
        return rc;
    }
    http_header f[WS_FIXED_MAX];
    size_t n = 0;
    f[n++] = hdr("Upgrade", "websocket", 9);
    f[n++] = hdr("Connection", "Upgrade", 7);
    f[n++] = hdr("Sec-WebSocket-Key", key, 24);
    f[n++] = hdr("Sec-WebSocket-Version", "13", 2);
    if (nprotocols) f[n++] = hdr("Sec-WebSocket-Protocol", (const char *)protos.ptr, protos.len);
    if (extensions) f[n++] = hdr("Sec-WebSocket-Extensions", extensions, strlen(extensions));
    rc = write_with_extra(out, true, target, host_header, f, n, extra, nextra);
    pbuf_free(&protos);
    return rc;
}

int ws_verify_response(const http_head *resp, const char *key, const char *const *protocols,
                       size_t nprotocols, ws_client_result *out, const char **why)
{
    memset(out, 0, sizeof *out);
    *why = NULL;
    if (resp->status != 101) {
        *why = "server did not switch protocols";
        return PARLEY_EHANDSHAKE;
    }
    if (!http_header_has_token(resp, "Upgrade", "websocket")) {
        *why = "Upgrade header does not name websocket";
        return PARLEY_EHANDSHAKE;
    }
    if (!http_header_has_token(resp, "Connection", "upgrade")) {
        *why = "Connection header does not list upgrade";
        return PARLEY_EHANDSHAKE;
    }
    const http_header *acc = http_find_header(resp, "Sec-WebSocket-Accept");
    char expect[29];
    ws_accept_key(key, strlen(key), expect);
    if (!acc || count_headers(resp, "Sec-WebSocket-Accept") != 1 || !expect[0] ||
        acc->value_len != 28 || memcmp(acc->value, expect, 28) != 0) {
        *why = "wrong Sec-WebSocket-Accept";
        return PARLEY_EHANDSHAKE;
    }
    size_t nproto = count_headers(resp, "Sec-WebSocket-Protocol");
    if (nproto > 1) {
        *why = "repeated Sec-WebSocket-Protocol";
        return PARLEY_EHANDSHAKE;
    }
    if (nproto == 1) {
        const http_header *p = http_find_header(resp, "Sec-WebSocket-Protocol");
        bool ours = false;
        for (size_t i = 0; i < nprotocols && !ours; i++)
            ours = strlen(protocols[i]) == p->value_len &&
                   memcmp(protocols[i], p->value, p->value_len) == 0;
        if (!ours) {
            *why = nprotocols ? "server chose a subprotocol we did not offer"
                              : "server chose a subprotocol but we offered none";
            return PARLEY_EHANDSHAKE;
        }
        out->protocol = p->value;
        out->protocol_len = p->value_len;
    }
    size_t next = count_headers(resp, "Sec-WebSocket-Extensions");
    if (next > 1) {
        *why = "repeated Sec-WebSocket-Extensions";
        return PARLEY_EHANDSHAKE;
    }
    if (next == 1) {
        const http_header *e = http_find_header(resp, "Sec-WebSocket-Extensions");
        out->extensions = e->value;
        out->extensions_len = e->value_len;
    }
    return 0;
}
