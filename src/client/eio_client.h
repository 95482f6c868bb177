/*
 * Engine.IO v4 client session (internal; the Socket.IO client builds on
 * it). One attempt at a time: the layer above decides about reconnecting.
 *
 * Transports: HTTP long-polling over a keep-alive HTTP/1.1 client (one
 * connection for the long-poll GETs, one for the POSTs, as browsers do),
 * WebSocket, polling upgraded to WebSocket (2probe/3probe, pause polling,
 * 5), WebSocket-only, polling-only, and WebSocket first with a fallback to
 * polling when its handshake is refused. Heartbeat per v4: the server
 * pings, we answer; the server is considered gone when no ping arrives
 * within pingInterval + pingTimeout. Outgoing polling payloads are split
 * so that none exceeds the server's maxPayload; a single message larger
 * than maxPayload is refused with PARLEY_ELIMIT.
 *
 * Everything runs on one loop; callbacks may call back into the session.
 */
#ifndef PARLEY_CLIENT_EIO_CLIENT_H
#define PARLEY_CLIENT_EIO_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/url.h"
#include "codec/http.h"
#include "net/net.h"

typedef struct eio_client eio_client;

typedef struct eio_client_opts {
    purl url;                   /* scheme decides TLS; host, port, query */
    const char *path;           /* "/socket.io/" */
    const char *query;          /* extra query parameters or NULL */
    const http_header *headers; /* extra request headers */
    size_t nheaders;
    unsigned transports;        /* PARLEY_TRANSPORT_* bits */
    bool upgrade;
    bool websocket_first;
    ptls_ctx *tls;              /* when the URL is https/wss */
    pproxy proxy;               /* with use_proxy: tunnel every connection */
    bool use_proxy;
    uint32_t timeout_ms;        /* to open the session */
    bool permessage_deflate;    /* websocket: offer RFC 7692 compression */
    size_t compression_threshold; /* shorter messages go uncompressed */
} eio_client_opts;

typedef struct eio_client_cbs {
    /* The session is open on `transport` ("polling" or "websocket"). */
    void (*on_open)(eio_client *c, const char *transport);
    /* Now upgraded to websocket. */
    void (*on_upgrade)(eio_client *c);
    /* A message; data valid during the call. */
    void (*on_message)(eio_client *c, bool binary, const uint8_t *data, size_t len);
    /* The attempt failed or the session ended (once per eio_client_open).
     * reason: "transport close", "transport error", "ping timeout",
     * "parse error", "forced close", "timeout", "handshake refused";
     * err a parley_err; http_status when the server answered one. */
    void (*on_close)(eio_client *c, const char *reason, int err, int http_status);
} eio_client_cbs;

/* Creates a session object (options are copied, the TLS context is
 * borrowed). NULL when out of memory. */
eio_client *eio_client_new(parley_loop *loop, const eio_client_opts *o, const eio_client_cbs *cbs,
                           void *user);

/* Starts an attempt. PARLEY_ESTATE when one is under way. */
int eio_client_open(eio_client *c);

/* Queues a message (in order, on whatever transport is live). PARLEY_ESTATE
 * when not open, PARLEY_ELIMIT over maxPayload, PARLEY_ENOMEM. */
int eio_client_send(eio_client *c, bool binary, const void *data, size_t len);

/* True when a message sent now leaves at once (for volatile emits). */
bool eio_client_writable(const eio_client *c);

/* Ends the session ("forced close": a close packet on polling, a close
 * frame on websocket); on_close follows. */
void eio_client_close(eio_client *c);

/* Frees (no callbacks afterwards; safe inside callbacks). */
void eio_client_free(eio_client *c);

void *eio_client_user(const eio_client *c);
const char *eio_client_sid(const eio_client *c);
uint32_t eio_client_max_payload(const eio_client *c);

#endif
