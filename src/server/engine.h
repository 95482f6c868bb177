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
    /* Origin allow-list: NULL = no check (default). Otherwise a comma-
     * separated list of origins (e.g. "https://app.example,http://
     * localhost:8080"); every request (handshake, polling GET/POST, the
     * WebSocket upgrade, with or without sid) whose Origin header is
     * present and not listed is refused with 403: {"code":4,"message":
     * "Forbidden"} on polling and handshakes, a plain 403 on an upgrade.
     * Requests without Origin (native clients) pass. See
     * engine_origin_allowed for the matching rule. A refused origin never
     * gets Access-Control-Allow-Origin, whatever cors_origin says. */
    const char *allowed_origins;
    /* NULL, or a counter incremented for every request refused for its
     * Origin (it must outlive the engine). */
    uint64_t *origin_refused;
} engine_opts;

void engine_opts_init(engine_opts *o);

/* True when `origin` (an Origin header value, origin_len bytes) is in the
 * comma-separated `list`. An entry of the form scheme://host[:port]
 * matches an origin of that form with the same scheme and host compared
 * case-insensitively and the same port number (a missing port stands for
 * the scheme's default, 80 for http and ws, 443 for https and wss, so
 * "https://a.example:443" is "https://a.example"; for other schemes a
 * missing port matches only a missing port). Anything else, such as
 * "null", matches only itself, byte for byte; an entry "*" matches every
 * origin. Spaces around entries are ignored; entries with a path never
 * match. */
bool engine_origin_allowed(const char *list, const char *origin, size_t origin_len);

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
    /* Optional: the session moved from polling to WebSocket (the upgrade
     * completed; the session may have been closed meanwhile). */
    void (*on_upgrade)(esession *s);
} engine_cbs;

/* Attaches an engine to `path` (a prefix, e.g. "/engine.io/"). The options
 * are copied (cors_origin too); cbs must outlive the engine. */
int engine_attach(phttpd *http, const char *path, const engine_opts *o, const engine_cbs *cbs,
                  void *user, engine **out);

void *engine_user(const engine *e);
parley_loop *engine_loop(const engine *e);
unsigned engine_sessions(const engine *e);

/* Counters of an engine (read at scrape time; index 0 polling, 1
 * websocket). */
typedef struct engine_stats {
    uint64_t opened[2];    /* sessions opened, by their first transport */
    unsigned open[2];      /* sessions open now, by their transport now */
    uint64_t upgrades;     /* polling -> websocket upgrades completed */
    uint64_t messages_in;  /* Engine.IO message packets received */
    uint64_t bytes_in;     /* ... their payload bytes */
    uint64_t messages_out; /* message packets queued to a session */
    uint64_t bytes_out;    /* ... their payload bytes */
    /* Cluster forwarding (engine_set_cluster). */
    uint64_t forwarded;        /* polling requests relayed to their owner node */
    uint64_t forward_failures; /* ... that failed (owner unreachable): answered 502 */
    uint64_t forward_refused;  /* not relayed: unknown tag, or max_forwards reached */
    unsigned forwarding;       /* relays in progress now */
} engine_stats;

/* No sticky sessions across a cluster. With a tag (4 URL-safe base64
 * characters naming this node), every new sid starts with it. A polling
 * request (GET or POST, not a WebSocket upgrade) whose sid is unknown here
 * and starts with another tag is relayed to the node that route() names
 * for that tag (0 and host/port filled; non-zero: unknown tag, answered as
 * an unknown sid), and its answer relayed back with this node's CORS
 * headers. The relayed request carries `X-Parley-Forwarded`; a request
 * that has it is never relayed again, so a stale route cannot loop. At
 * most max_forwards relays run at once (further ones: 503 with
 * Retry-After); each one is bounded by relay_timeout_ms (then 504).
 * Relays still running when the engine is freed are answered 503. */
typedef int (*engine_route_fn)(void *user, const char *tag, char *host, size_t host_cap,
                               unsigned *port);
int engine_set_cluster(engine *e, const char *tag, engine_route_fn route, void *user,
                       unsigned max_forwards, uint32_t relay_timeout_ms);

/* Counts open sessions by walking them: O(sessions), for scrapes. */
void engine_stats_get(const engine *e, engine_stats *st);

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

/* Counters of a parley_server's guards (internal until the metrics work
 * exports them). */
typedef struct parley_server_stats {
    uint64_t origin_refused;          /* Engine.IO requests refused for their Origin (403) */
    uint64_t auth_timeout_closes;     /* sessions closed by the require_auth deadline */
    uint64_t attachment_limit_closes; /* sessions closed by an attachment byte cap */
    size_t pending_attachment_bytes;  /* held now for binary packets awaiting attachments */
    size_t pending_attachment_peak;   /* the most ever held at once */
    uint64_t events_in;               /* EVENT packets dispatched to a namespace */
    uint64_t acks_in;                 /* ACK packets matched to a pending emit */
    uint64_t events_out;              /* EVENT packets sent (a broadcast: one per recipient) */
    uint64_t acks_out;                /* ACK packets sent */
    uint64_t broadcasts;              /* parley_broadcast calls */
    engine_stats eng;                 /* the server's engine */
} parley_server_stats;

/* Visits every namespace with its connected sockets and its rooms (the
 * rooms sockets joined; a socket's own room is implicit, not counted). */
void parley_server__nsps(const parley_server *s,
                         void (*fn)(const char *nsp, unsigned sockets, unsigned rooms, void *arg),
                         void *arg);

void parley_server__stats(const parley_server *s, parley_server_stats *out);
/* engine_set_cluster on the server's Socket.IO engine. */
int parley_server__cluster(parley_server *s, const char *tag, engine_route_fn route, void *user);

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

/* The same, with the reason on_close reports (a static string). */
void esession_close_why(esession *s, const char *reason);

/* True when a message sent now would leave at once (no backlog on a
 * WebSocket, a pending long-poll on polling): the test for volatile
 * packets. */
bool esession_writable(const esession *s);

/* Bytes sent to the session and not yet taken by the client: the polling
 * queue, or the WebSocket connection's unsent output. */
size_t esession_backlog(const esession *s);

const char *esession_id(const esession *s); /* 20 characters */
int esession_transport(const esession *s);
bool esession_closed(const esession *s);
void esession_set_user(esession *s, void *user);
void *esession_user(const esession *s);
engine *esession_engine(const esession *s);

#endif
