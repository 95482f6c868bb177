/*
 * A WebSocket session over a pconn, after the opening handshake, for both
 * roles: frame parsing and writing, permessage-deflate, automatic pongs,
 * keepalive pings, and the closing handshake.
 *
 * The owner (server connection or client) feeds received bytes with
 * wsconn_feed() from its pconn on_data callback and frees the memory after
 * the pconn's on_close. Callbacks may call wsconn_send/close re-entrantly.
 *
 * Closing (RFC 6455 section 7): when the peer's close frame arrives we
 * answer it (echoing its code, or an empty frame when it had none); a
 * server then closes TCP once the answer is flushed, a client waits for the
 * server to close TCP (at most close_timeout_ms). When we start the close,
 * we wait for the peer's answer for at most close_timeout_ms. A protocol
 * violation sends a close frame with the error's code and drops TCP at
 * once. on_closed runs exactly once in every case.
 */
#ifndef PARLEY_WS_WSCONN_H
#define PARLEY_WS_WSCONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/theap.h"
#include "codec/pmd.h"
#include "codec/ws.h"
#include "net/net.h"

typedef struct wsconn wsconn;

typedef struct wsconn_cbs {
    /* A whole text (valid UTF-8) or binary message; data is writable and
     * valid only during the call. */
    void (*on_message)(wsconn *w, int opcode, uint8_t *data, size_t len);
    /* Optional: a ping arrived (the pong has already been queued). */
    void (*on_ping)(wsconn *w, const uint8_t *data, size_t len);
    /* Optional: a pong arrived. */
    void (*on_pong)(wsconn *w, const uint8_t *data, size_t len);
    /* The session is over. code/reason: the peer's close frame when the
     * closing handshake happened (1005 when it carried no code), the code
     * we sent when we failed the connection, else 1006. err: 0 after a
     * clean close, else the local reason (PARLEY_EPROTO, PARLEY_ETIMEDOUT,
     * PARLEY_ECLOSED for a dropped link, ...). */
    void (*on_closed)(wsconn *w, uint16_t code, const uint8_t *reason, size_t reason_len, int err);
} wsconn_cbs;

typedef struct wsconn_opts {
    const wsconn_cbs *cbs;      /* the session's callbacks (required) */
    uint64_t max_frame;         /* default 16 MiB */
    uint64_t max_message;       /* default 16 MiB */
    uint32_t ping_interval_ms;  /* 0 = no keepalive pings (default) */
    uint32_t ping_timeout_ms;   /* no pong within this after a ping: drop (default 10000) */
    uint32_t close_timeout_ms;  /* wait for the peer's side of the close (default 5000) */
    size_t deflate_threshold;   /* smaller messages are sent uncompressed (default 64) */
} wsconn_opts;

void wsconn_opts_init(wsconn_opts *o);

enum wsconn_state {
    WSCONN_OPEN = 0,
    WSCONN_CLOSE_SENT,    /* we sent close, waiting for the peer's */
    WSCONN_CLOSED,        /* handshake done or failed: waiting for TCP to end */
};

/* 128 bytes: every WebSocket connection holds one. */
struct wsconn {
    pconn *conn;
    void *user;
    const wsconn_opts *opts; /* shared, with the callbacks; must outlive the session */
    ws_parser parser;        /* its inflater is ours (permessage-deflate) */
    pmd_stream *deflater;
    ptimer timer; /* keepalive and close deadlines */
    uint8_t state;
    bool client; /* we mask our frames (keys from the loop's random pool) */
    bool awaiting_pong;
    bool reported; /* on_closed has run */
};

/* Starts a session on an established connection. pmd: negotiated
 * permessage-deflate parameters or NULL. cfg: our deflate config (level,
 * memory) when pmd != NULL. 0 or PARLEY_ENOMEM. */
int wsconn_init(wsconn *w, pconn *c, bool client, const wsconn_opts *opts, const pmd_params *pmd,
                const pmd_config *cfg, void *user);

/* Consumes received bytes; returns how many (see pconn_cbs.on_data). */
size_t wsconn_feed(wsconn *w, uint8_t *data, size_t len);

/* Sends a text (must be valid UTF-8; not checked here) or binary message.
 * 0, PARLEY_ECLOSED when closing, PARLEY_EFULL (the peer is not reading:
 * the connection is being dropped), PARLEY_ENOMEM. */
int wsconn_send(wsconn *w, int opcode, const void *data, size_t len);

/* Sends one message whose payload is a followed by b (e.g. a one-byte
 * type prefix and a body), without joining them first. */
int wsconn_send2(wsconn *w, int opcode, const void *a, size_t alen, const void *b, size_t blen);

/* Sends a frame of a fragmented message yourself (opcode TEXT/BINARY for
 * the first, CONT after; fin on the last). Never compressed. */
int wsconn_send_frame(wsconn *w, int opcode, bool fin, const void *data, size_t len);

/* Sends a ping (payload <= 125 bytes, else PARLEY_EINVAL). */
int wsconn_ping(wsconn *w, const void *data, size_t len);

/* Starts the closing handshake with code (0 = none) and reason (cut to
 * fit 123 bytes at a character boundary). */
int wsconn_close(wsconn *w, uint16_t code, const char *reason);

/* Reports an abnormal end (the pconn closed under us). Called by owners
 * from their pconn on_close; a no-op when already reported. */
void wsconn_lost(wsconn *w, int err);

/* Releases the session's memory (parser buffers, zlib state). */
void wsconn_free(wsconn *w);

#endif
