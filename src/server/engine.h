/*
 * Engine.IO v4 server: sessions over HTTP long-polling and WebSocket, the
 * polling -> websocket upgrade, heartbeats, CORS, and the error answers of
 * the reference implementation (npm engine.io 6.x), so that official
 * clients cannot tell the difference.
 *
 * An engine is attached to a phttpd under a path prefix (e.g.
 * "/socket.io/"). Each session has one live transport at a time. Messages
 * sent while a polling session has no pending GET are queued and answered
 * in one payload; everything a session is sent during one loop iteration
 * leaves together.
 *
 * Lifetime: on_close runs once per session; the session memory is freed at
 * the end of that loop iteration, so pointers held up the stack stay valid
 * until then (sends after on_close are refused with PARLEY_ECLOSED).
 */
#ifndef PARLEY_SERVER_ENGINE_H
#define PARLEY_SERVER_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "codec/pmd.h"
#include "server/httpd.h"

typedef struct engine engine;
typedef struct esession esession;

enum { ENGINE_POLLING = 1, ENGINE_WEBSOCKET = 2 };

typedef struct engine_opts {
    uint32_t ping_interval_ms;   /* default 25000 */
    uint32_t ping_timeout_ms;    /* default 20000 */
    uint32_t upgrade_timeout_ms; /* default 10000 */
    size_t max_payload;          /* bytes per POST body / WebSocket message; default 1000000 */
    unsigned transports;         /* ENGINE_POLLING | ENGINE_WEBSOCKET (default both) */
    bool allow_upgrades;         /* default true */
    /* CORS: NULL = no CORS headers; "*" = any origin; otherwise a comma-
     * separated list of allowed origins (reflected when they match). */
    const char *cors_origin;
    bool cors_credentials;
    /* WebSocket permessage-deflate; NULL = off (the reference's default). */
    const pmd_config *pmd;
} engine_opts;

void engine_opts_init(engine_opts *o);

typedef struct engine_cbs {
    /* A session opened; req is the handshake request (valid during the
     * call). The open packet is already queued. */
    void (*on_open)(esession *s, const phttpd_req *req);
    /* A message; text is not validated here beyond the transport's rules.
     * data is writable and valid during the call. */
    void (*on_message)(esession *s, bool binary, uint8_t *data, size_t len);
    /* The session ended. reason: "transport close", "transport error",
     * "ping timeout", "parse error", "forced close", "server shutting
     * down". No sends after this. */
    void (*on_close)(esession *s, const char *reason);
} engine_cbs;

/* Attaches an engine to `path` (a prefix, e.g. "/engine.io/"). The options
 * are copied (cors_origin too); cbs must outlive the engine. */
int engine_attach(phttpd *http, const char *path, const engine_opts *o, const engine_cbs *cbs,
                  void *user, engine **out);

void *engine_user(const engine *e);
parley_loop *engine_loop(const engine *e);
unsigned engine_sessions(const engine *e);

/* Closes every session ("server shutting down") and frees the engine once
 * they are gone (at the end of the loop iteration). */
void engine_free(engine *e);

/* Internal to Parley's programs (declared here, defined by the Socket.IO
 * server): the HTTP server under a parley_server, and a plain Engine.IO
 * endpoint on it at `path` with the server's Engine.IO options. */
typedef struct parley_server parley_server;
phttpd *parley_server__http(parley_server *s);
/* Its TLS context (NULL without TLS): parleyd reloads it on SIGHUP. */
ptls_ctx *parley_server__tls(parley_server *s);
int parley_server__engine(parley_server *s, const char *path, const engine_cbs *cbs, void *user,
                          engine **out);

/* Sends a message. 0, PARLEY_ECLOSED (session over), PARLEY_EFULL (the
 * client is not reading; the session is being dropped), PARLEY_ENOMEM. */
int esession_send(esession *s, bool binary, const void *data, size_t len);

/* A message encoded once for many sessions (a broadcast): the WebSocket
 * frame is built once and shared by reference between WebSocket sessions;
 * polling sessions copy the same bytes into their payload. */
typedef struct eframe {
    pshared *blk;   /* WebSocket frame: header, then the Engine.IO packet */
    size_t hdr_len; /* frame header length; the packet follows */
    bool binary;
} eframe;

int eframe_init(eframe *f, bool binary, const void *data, size_t len);
void eframe_release(eframe *f);
int esession_send_frame(esession *s, const eframe *f);

/* Ends the session from the server side ("forced close"): queued messages
 * are delivered first, polling clients get a close packet. */
void esession_close(esession *s);

/* True when a message sent now would leave at once (no backlog on a
 * WebSocket, a pending long-poll on polling): the test for volatile
 * packets. */
bool esession_writable(const esession *s);

const char *esession_id(const esession *s); /* 20 characters */
int esession_transport(const esession *s);
bool esession_closed(const esession *s);
void esession_set_user(esession *s, void *user);
void *esession_user(const esession *s);
engine *esession_engine(const esession *s);

#endif
