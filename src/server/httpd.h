/*
 * HTTP/1.1 server with WebSocket endpoints: the front door of parleyd.
 *
 * Routes are exact paths or path prefixes. A plain route gets a request
 * (head and the whole decoded body) and answers it with phttpd_respond()
 * before returning, or defers the answer (long-polling) with phttpd_defer(),
 * or turns the connection into a WebSocket with phttpd_upgrade(). A
 * WebSocket route does the upgrade itself: it validates the request,
 * negotiates permessage-deflate and subprotocols, and turns the connection
 * into a wsconn.
 *
 * Deadlines: a connection must deliver a complete request (head and body)
 * within head_timeout_ms of its first byte (or of accept), and an idle
 * keep-alive connection is closed after keepalive_timeout_ms. Errors in a
 * request get their HTTP status (400, 404, 405, 413, 414, 426, 431, 501,
 * 505) with `Connection: close`, and the connection is closed after the
 * response is flushed; other connections are not affected.
 *
 * Bodies: a route sees the head before any body byte is read (on_head) and
 * may answer at once (401, 413, 415, ...): the body is then read and
 * dropped (up to max_discard bytes, else the connection closes) and never
 * stored, and `100 Continue` is sent only to requests that go on. A
 * route's body limit is checked against Content-Length on the head. Bodies
 * are either buffered whole (counted against a server-wide in-flight
 * budget: a request that does not fit gets 503) or streamed to the route
 * piece by piece (uploads to files).
 *
 * HEAD requests are answered with the head a GET would get and no body.
 * Methods are case-sensitive (RFC 9110): `get` is not GET.
 *
 * Per client address (IPv4 address, or IPv6 /64): at most
 * max_conns_per_ip open connections (more are closed at accept, before any
 * TLS work), and a token bucket that session-creating requests draw from
 * (phttpd_ip_take; WebSocket routes draw one per upgrade).
 */
#ifndef PARLEY_SERVER_HTTPD_H
#define PARLEY_SERVER_HTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/ratelimit.h"
#include "codec/http.h"
#include "codec/pmd.h"
#include "codec/ws_handshake.h"
#include "net/net.h"
#include "ws/wsconn.h"

typedef struct phttpd phttpd;

typedef struct phttpd_opts {
    http_limits limits;            /* header bytes/count, body size (routes may say other) */
    uint32_t head_timeout_ms;      /* complete request within this (default 10000) */
    uint32_t keepalive_timeout_ms; /* idle keep-alive connections (default 60000) */
    size_t max_output;             /* per-connection unsent output (default 8 MiB) */
    uint64_t
        max_body_inflight;     /* buffered body bytes, all connections (default 64 MiB; 0 = none) */
    uint64_t max_discard;      /* body bytes dropped after an early answer (default 256 KiB) */
    uint32_t max_conns_per_ip; /* open connections per address (default 0 = no limit) */
    prate_cfg ip_rate;         /* phttpd_ip_take's bucket per address (default: no limit) */
    unsigned max_streams;      /* long-lived streamed responses at once (default 16) */
    size_t max_stream_queue;   /* unsent bytes per stream before it is dropped (default 256 KiB) */
} phttpd_opts;

typedef struct phttpd_stats {
    uint64_t refused_conns_ip; /* connections closed at accept: over max_conns_per_ip */
    uint64_t refused_rate_ip;  /* phttpd_ip_take refusals */
    uint64_t refused_budget;   /* 503: the body did not fit max_body_inflight */
    uint64_t early_answers;    /* requests answered before their body was read */
    uint64_t body_inflight;    /* buffered body bytes now */
    unsigned addresses;        /* client addresses tracked now */
    uint64_t responses[6];     /* answers by status class: [2] = 2xx, ... ([0] unused) */
    uint64_t ws_upgrades;      /* WebSocket routes' sessions opened (not Engine.IO's) */
    unsigned ws_open;          /* ... open now */
    unsigned streams;          /* streamed responses open now */
    uint64_t streams_dropped;  /* streams closed because the client did not read */
    uint64_t streams_refused;  /* 503: max_streams were open */
} phttpd_stats;

void phttpd_opts_init(phttpd_opts *o);

typedef struct phttpd_req {
    const http_head *head; /* valid during the handler call only */
    const char *path;      /* path part of the target, not decoded */
    size_t path_len;
    const uint8_t *body; /* decoded body (chunked framing removed); NULL when streamed */
    size_t body_len;     /* bytes of the body (streamed ones too) */
    pconn *conn;
    bool responded;
    /* Set in on_head: `state` is the route's, kept from on_head to the
     * handler, or given to on_abort when the request ends before its
     * handler runs (client gone, deadline, bad framing, a limit); `stream`
     * receives the body through on_body instead of whole. body_error is
     * on_body's non-zero return when it stopped the body (the handler then
     * answers at once). */
    bool stream;
    void *state;
    int body_error;
} phttpd_req;

typedef void (*phttpd_handler)(phttpd_req *req, void *user);

typedef struct phttpd_route_opts {
    phttpd_handler handler; /* the whole request (required) */
    uint64_t max_body;      /* 0: the server's limits.max_body */
    /* Optional: the head is complete and no body byte was read. Answer
     * req here to refuse early; set req->stream (and req->state) to stream
     * the body. The head is valid during the call only. */
    void (*on_head)(phttpd_req *req, void *user);
    /* Streaming: decoded body bytes as they arrive. 0 goes on; anything
     * else stops reading the body and runs the handler with body_error. */
    int (*on_body)(void *state, const uint8_t *data, size_t len, void *user);
    /* The request ended before the handler ran (client gone, deadline,
     * bad framing, a limit): release the state on_head set. */
    void (*on_abort)(void *state, void *user);
    void *user;
} phttpd_route_opts;

typedef struct phttpd_ws_endpoint {
    const wsconn_opts *ws_opts; /* with the session callbacks; must outlive the server */
    const pmd_config *pmd;      /* NULL or !enabled: no permessage-deflate */
    /* Optional: accept (return 0, optionally choosing one of the offered
     * subprotocols into *protocol) or refuse with an HTTP status (e.g. 403
     * for a bad Origin). */
    int (*on_upgrade)(phttpd_req *req, const ws_upgrade *up, const char **protocol, void *user);
    /* Optional: the session is open; set w->user here if needed. */
    void (*on_open)(wsconn *w, void *user);
    void *user;
} phttpd_ws_endpoint;

int phttpd_new(parley_loop *loop, const phttpd_opts *opts, phttpd **out);

/* Replaces the options (before listening). The body limit never drops
 * below what routes were promised at creation. 0 or PARLEY_ENOMEM. */
int phttpd_set_opts(phttpd *s, const phttpd_opts *opts);

/* Adds a route; the path is copied, the endpoint must outlive the server.
 * Exact routes win over prefix routes; the longest prefix wins. */
int phttpd_route(phttpd *s, const char *path, phttpd_handler h, void *user);
int phttpd_route_prefix(phttpd *s, const char *prefix, phttpd_handler h, void *user);
int phttpd_route_ws(phttpd *s, const char *path, const phttpd_ws_endpoint *ep);
/* A route with options (copied). */
int phttpd_route_ex(phttpd *s, const char *path, bool prefix, const phttpd_route_opts *o);

/* True when the request's method is one of `allowed` (exact, e.g.
 * "GET, HEAD"); otherwise answers 405 with that Allow header and returns
 * false. */
bool phttpd_allow(phttpd_req *req, const char *allowed);

/* Takes one token from the bucket of the connection's client address
 * (opts.ip_rate). False when it is empty, with *retry_ms; true when there
 * is no limit. */
bool phttpd_ip_take(phttpd *s, pconn *c, uint64_t *retry_ms);

void phttpd_stats_get(const phttpd *s, phttpd_stats *st);

/* Listens on host:port (0 = any; the bound port is stored in *bound). tls
 * may be NULL. May be called several times. */
/* phttpd_listen on a socket made elsewhere (net.h plisten_fd). */
int phttpd_listen_fd(phttpd *s, int fd, ptls_ctx *tls, unsigned *bound);
int phttpd_listen(phttpd *s, const char *host, unsigned port, ptls_ctx *tls, unsigned *bound);

/* Answers a request (once). content_type may be NULL for an empty body.
 * At most 31 extra headers. */
int phttpd_respond(phttpd_req *req, int status, const char *content_type, const http_header *hdrs,
                   size_t n, const void *body, size_t len);

/* Keeps a request open after its handler returns, to be answered later
 * with phttpd_deferred_respond (long-polling). Further requests on the
 * connection wait (they are buffered, within the head and body limits). If
 * the client goes away first, on_abort runs and the handle is invalid
 * afterwards. Returns NULL when out of memory (the request is then answered
 * with 500). */
typedef struct phttpd_deferred phttpd_deferred;
typedef void (*phttpd_abort_fn)(phttpd_deferred *d, void *user);
phttpd_deferred *phttpd_defer(phttpd_req *req, phttpd_abort_fn on_abort, void *user);
int phttpd_deferred_respond(phttpd_deferred *d, int status, const char *content_type,
                            const http_header *hdrs, size_t n, const void *body, size_t len);
/* The connection a deferred request arrived on. */
pconn *phttpd_deferred_conn(phttpd_deferred *d);

/* A long-lived response written piece by piece (Server-Sent Events):
 * phttpd_stream_start answers req with the status and headers, no
 * Content-Length and `Connection: close` (the body ends when the
 * connection does), and keeps the connection. Further input from the
 * client is held within one request's limits, then the stream ends.
 * At most opts.max_streams are open (more are answered 503 and NULL is
 * returned); a write that would leave more than opts.max_stream_queue
 * bytes unsent drops the stream (the client does not read). on_close
 * runs exactly once, whatever ended the stream (the client, a drop,
 * phttpd_stream_close, server shutdown); the handle is invalid after it.
 * Only GET requests; the head of a HEAD request is answered and no
 * stream is made (NULL). */
typedef struct phttpd_stream phttpd_stream;
typedef void (*phttpd_stream_close_fn)(phttpd_stream *st, void *user);
phttpd_stream *phttpd_stream_start(phttpd_req *req, int status, const char *content_type,
                                   const http_header *hdrs, size_t n,
                                   phttpd_stream_close_fn on_close, void *user);
/* 0, or PARLEY_EFULL (dropped: on_close follows) / PARLEY_ECLOSED. */
int phttpd_stream_write(phttpd_stream *st, const void *data, size_t len);
/* Ends the stream once what was written is sent; on_close follows. */
void phttpd_stream_close(phttpd_stream *st);

/* Turns the request's connection into a WebSocket session (from inside a
 * route handler). Validates the upgrade and negotiates as a WebSocket route
 * does (ep->on_upgrade and ep->on_open are not used); the session's user
 * pointer is `user`. Returns the session, or NULL when the request was
 * answered with an error instead (it is then finished). */
wsconn *phttpd_upgrade(phttpd_req *req, const phttpd_ws_endpoint *ep, void *user);

/* Stops listening, closes WebSocket sessions with 1001 and idle HTTP
 * connections; `done` runs once every connection is gone. */
void phttpd_shutdown(phttpd *s, void (*done)(phttpd *s, void *user), void *user);

/* The loop the server runs on. */
parley_loop *phttpd_loop(const phttpd *s);

/* Number of open connections. */
unsigned phttpd_connections(const phttpd *s);

/* Frees the server; only after shutdown completed (or before listening). */
void phttpd_free(phttpd *s);

#endif
