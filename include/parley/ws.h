/*
 * libparley WebSocket client (RFC 6455, with RFC 7692 permessage-deflate).
 *
 *     parley_ws_opts o;
 *     parley_ws_opts_init(&o);
 *     o.url = "wss://example.com/chat";
 *     o.on_message = my_message;  o.on_close = my_close;  o.user = app;
 *     parley_ws *ws;
 *     if (parley_ws_new(loop, &o, &ws) == 0) parley_ws_connect(ws);
 *
 * Threads: a parley_ws belongs to the loop it was created on. Every
 * function must be called on that loop's thread, and every callback runs
 * there. Callbacks may call any function of this API on the same handle,
 * including parley_ws_free (the memory is released after the callback
 * returns).
 *
 * Ownership: pointers passed to callbacks are valid only during the call.
 * Options are copied by parley_ws_new; the caller's strings may be freed
 * afterwards.
 */
#ifndef PARLEY_WS_H
#define PARLEY_WS_H

#include <stddef.h>
#include <stdint.h>

#include "parley/parley.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct parley_ws parley_ws;

typedef enum parley_ws_type {
    PARLEY_WS_TEXT = 1,   /* UTF-8 text */
    PARLEY_WS_BINARY = 2, /* bytes */
} parley_ws_type;

typedef struct parley_ws_opts {
    /* ws://host[:port]/path?query or wss://... (required). */
    const char *url;
    /* Extra request headers as "Name: value" strings. */
    const char *const *headers;
    size_t nheaders;
    /* Offered subprotocols (Sec-WebSocket-Protocol), in preference order. */
    const char *const *protocols;
    size_t nprotocols;
    /* Offer permessage-deflate (default 1). */
    int permessage_deflate;
    /* TLS: CA bundle file (default: the system store); insecure = 1 skips
     * certificate and host name verification (tests only; default 0). */
    const char *ca_file;
    int insecure;
    /* Deadline for DNS + TCP + TLS + upgrade, in ms (default 10000). */
    uint32_t connect_timeout_ms;
    /* Largest accepted message and frame, in bytes (default 16 MiB). */
    uint64_t max_message;
    /* Keepalive: ping every interval, drop the connection when no pong
     * arrives within the timeout (default 0 = off; timeout default 10000). */
    uint32_t ping_interval_ms;
    uint32_t ping_timeout_ms;
    /* Unsent output above this closes the connection (default 8 MiB). */
    size_t max_output;

    /* Callbacks (all optional) and their user pointer. */
    /* The handshake completed. protocol: the server's choice or NULL. */
    void (*on_open)(parley_ws *ws, const char *protocol, void *user);
    /* A whole message. */
    void (*on_message)(parley_ws *ws, parley_ws_type type, const void *data, size_t len,
                       void *user);
    /* A pong arrived (answers to parley_ws_ping, or unsolicited). */
    void (*on_pong)(parley_ws *ws, const void *data, size_t len, void *user);
    /* The connection is over (or never opened), exactly once per
     * parley_ws_connect. code: the peer's close code when the closing
     * handshake happened (1005 if it sent none), 1006 otherwise. err: 0
     * after a clean close, else why: PARLEY_EDNS, PARLEY_ECONNREFUSED,
     * PARLEY_ETIMEDOUT, PARLEY_ETLS, PARLEY_EHANDSHAKE (see
     * parley_ws_http_status), PARLEY_EPROTO (the peer broke the protocol),
     * PARLEY_ECLOSED (the link dropped), PARLEY_EFULL. */
    void (*on_close)(parley_ws *ws, int code, const char *reason, size_t reason_len, int err,
                     void *user);
    void *user;
} parley_ws_opts;

/* Fills in the defaults documented above. */
PARLEY_API void parley_ws_opts_init(parley_ws_opts *o);

/* Creates a client. Errors: PARLEY_EINVAL (missing url or bad option),
 * PARLEY_EURL (malformed or not ws/wss), PARLEY_ETLS (CA file unreadable),
 * PARLEY_ENOMEM. */
PARLEY_API int parley_ws_new(parley_loop *loop, const parley_ws_opts *o, parley_ws **out);

/* Starts connecting. PARLEY_ESTATE if already connecting or open. */
PARLEY_API int parley_ws_connect(parley_ws *ws);

/* Sends a whole message (compressed when deflate was negotiated and the
 * message is not tiny). PARLEY_ESTATE before open, PARLEY_ECLOSED when
 * closing, PARLEY_EFULL when the output limit was hit, PARLEY_EINVAL for a
 * bad type. Text must be valid UTF-8 (PARLEY_EINVAL otherwise). */
PARLEY_API int parley_ws_send(parley_ws *ws, parley_ws_type type, const void *data, size_t len);

/* Sends one frame of a fragmented message: first = 1 on the first frame
 * (type gives the message type), fin = 1 on the last. Never compressed. */
PARLEY_API int parley_ws_send_fragment(parley_ws *ws, parley_ws_type type, int first, int fin,
                                       const void *data, size_t len);

/* Sends a ping with up to 125 bytes of payload. */
PARLEY_API int parley_ws_ping(parley_ws *ws, const void *data, size_t len);

/* Starts the closing handshake. code 0 sends no code; otherwise 1000-1003,
 * 1007-1014 or 3000-4999 (PARLEY_EINVAL else). reason may be NULL. If the
 * connection is not open yet, the attempt is abandoned (on_close follows
 * with err PARLEY_ECLOSED). */
PARLEY_API int parley_ws_close(parley_ws *ws, int code, const char *reason);

/* HTTP status of a refused handshake (e.g. 401, 404), 0 otherwise. */
PARLEY_API int parley_ws_http_status(const parley_ws *ws);

/* Frees the client, dropping the connection without a closing handshake
 * (no on_close callback after this call). Safe inside callbacks. */
PARLEY_API void parley_ws_free(parley_ws *ws);

#ifdef __cplusplus
}
#endif
#endif
