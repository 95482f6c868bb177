/*
 * WebSocket opening handshake (RFC 6455 section 4), both roles, sans-I/O.
 */
#ifndef PARLEY_CODEC_WS_HANDSHAKE_H
#define PARLEY_CODEC_WS_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>

#include "base/buf.h"
#include "codec/http.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* What a valid upgrade request offers; pointers into the request head. */
typedef struct ws_upgrade {
    const char *key; /* Sec-WebSocket-Key (24 chars, 16 bytes decoded) */
    size_t key_len;
    const char *origin; /* NULL when absent */
    size_t origin_len;
    const char *host;
    size_t host_len;
    bool has_protocols;  /* at least one Sec-WebSocket-Protocol header */
    bool has_extensions; /* at least one Sec-WebSocket-Extensions header */
} ws_upgrade;

/* Server: validates an upgrade request: GET, HTTP/1.1, Host, Upgrade
 * containing the "websocket" token, Connection containing "upgrade", one
 * Sec-WebSocket-Key that is base64 of exactly 16 bytes, and
 * Sec-WebSocket-Version 13. Returns 0, or the HTTP status to answer (400,
 * 405 for a method other than GET, 426 for another version: answer it with
 * ws_write_reject, which adds Sec-WebSocket-Version: 13, or `Allow: GET`
 * for 405) with *why set to a
 * short static text. */
int ws_check_upgrade(const http_head *req, ws_upgrade *out, const char **why);

/* Iterates over the comma-separated items of every occurrence of header
 * `name` (e.g. Sec-WebSocket-Protocol): *pos starts at 0; each call sets
 * item/item_len (OWS trimmed, empty items skipped) and returns true, or
 * returns false when there are no more. */
bool ws_header_items(const http_head *h, const char *name, size_t *pos, const char **item,
                     size_t *item_len);

/* Joins every occurrence of header `name` with ", " into out (for the
 * extensions negotiation). */
int ws_header_join(const http_head *h, const char *name, pbuf *out);

/* Computes Sec-WebSocket-Accept for a key: base64(SHA-1(key + GUID)),
 * 28 characters and a NUL. */
void ws_accept_key(const char *key, size_t key_len, char out[29]);

/* Server: appends the 101 response. protocol / extensions may be NULL.
 * Extra headers (e.g. Set-Cookie) may be given. */
int ws_write_accept(pbuf *out, const char *key, size_t key_len, const char *protocol,
                    const char *extensions, const http_header *extra, size_t nextra);

/* Server: appends a rejection with a short text/plain body; for 426 it
 * adds Sec-WebSocket-Version: 13. The response closes the connection. */
int ws_write_reject(pbuf *out, int status, const char *why);

/* Client: generates a Sec-WebSocket-Key from the CSPRNG (24 chars + NUL).
 * 0 or PARLEY_EIO. */
int ws_client_key(char out[25]);

/* Client: appends the upgrade request. host_header is "host[:port]",
 * target the origin-form path and query. protocols (may be NULL/0) become
 * Sec-WebSocket-Protocol; extensions (may be NULL) Sec-WebSocket-Extensions;
 * extra headers are appended as given (validated like all header writes). */
int ws_write_client_request(pbuf *out, const char *host_header, const char *target,
                            const char *key, const char *const *protocols, size_t nprotocols,
                            const char *extensions, const http_header *extra, size_t nextra);

typedef struct ws_client_result {
    const char *protocol; /* the server's choice (pointer into the head) or NULL */
    size_t protocol_len;
    const char *extensions; /* Sec-WebSocket-Extensions value or NULL */
    size_t extensions_len;
} ws_client_result;

/* Client: verifies the server's response: status 101, Upgrade websocket,
 * Connection upgrade, the Accept value for our key, a protocol only if we
 * offered it (and then exactly one of ours), at most one Extensions header.
 * Returns 0, or PARLEY_EHANDSHAKE with *why set (a status other than 101
 * leaves head->status for the caller to report). */
int ws_verify_response(const http_head *resp, const char *key, const char *const *protocols,
                       size_t nprotocols, ws_client_result *out, const char **why);

#endif
