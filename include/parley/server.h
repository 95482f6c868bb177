/*
 * Embedding the Parley Socket.IO server (Engine.IO v4 / Socket.IO v5).
 *
 *     parley_server_opts o;
 *     parley_server_opts_init(&o);
 *     parley_server *srv;
 *     parley_server_new(loop, &o, &srv);
 *     parley_nsp_handlers h = {.on_connection = on_conn, .on_event = on_event};
 *     parley_nsp_set_handlers(parley_server_of(srv, "/"), &h);
 *     parley_server_listen(srv, "0.0.0.0", 8080, NULL);
 *
 * Official Socket.IO clients (4.x: browser, Node, Dart, Swift, Java)
 * connect unchanged over HTTP long-polling, WebSocket, or polling upgraded
 * to WebSocket.
 *
 * Arguments travel as JSON text: the arguments of an event (without its
 * name) are one JSON array, compact, with object keys in the order they
 * were sent. A binary value is written {"_placeholder":true,"num":N} and
 * refers to bins[N] (the Socket.IO wire convention); received arguments
 * come the same way.
 *
 * Threads: everything runs on the loop's thread; call these functions
 * there (from handlers, timers or other loop callbacks). Pointers passed to
 * handlers are valid only during the call unless said otherwise. A socket
 * stays valid until its on_disconnect handler has returned.
 */
#ifndef PARLEY_SERVER_H
#define PARLEY_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "parley/parley.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct parley_server parley_server;
typedef struct parley_nsp parley_nsp;
typedef struct parley_socket parley_socket;

typedef struct parley_server_opts {
    size_t size; /* sizeof the struct, set by parley_server_opts_init (see parley.h) */
    const char *path;            /* default "/socket.io/" */
    uint32_t ping_interval_ms;   /* default 25000 */
    uint32_t ping_timeout_ms;    /* default 20000 */
    uint32_t upgrade_timeout_ms; /* default 10000 */
    uint32_t connect_timeout_ms; /* CONNECT to a namespace within; default 45000 */
    size_t max_payload;          /* bytes per HTTP body or WebSocket message; default 1000000 */
    int polling;                 /* allow HTTP long-polling (default 1) */
    int websocket;               /* allow WebSocket (default 1) */
    /* CORS: NULL = no CORS headers (default); "*" = any origin; otherwise a
     * comma-separated list of allowed origins. */
    const char *cors_origin;
    int cors_credentials; /* Access-Control-Allow-Credentials: true */
    /* Connection-state recovery (Socket.IO 4.6+): default 0 = off. */
    int recovery;
    uint32_t max_disconnection_ms; /* how long a session can be recovered; default 120000 */
    unsigned max_attachments;      /* binary attachments per packet; default 10 */
    /* WebSocket compression (RFC 7692 permessage-deflate) on the Engine.IO
     * websocket transport; default 0 (as the reference's perMessageDeflate:
     * false). Inflated messages are bounded by max_payload (close 1009).
     * Messages shorter than compression_threshold bytes (default 1024, as
     * the reference) go uncompressed. Each compressing connection deflates
     * its own copy of a broadcast (context takeover makes the output
     * depend on the connection's history); sub-threshold broadcasts stay
     * encoded once and shared. */
    int permessage_deflate;
    size_t compression_threshold;
    /* TLS: certificate chain and key (PEM) for listeners; NULL = plain. */
    const char *tls_cert;
    const char *tls_key;
    /* Binary packets wait for their attachments in memory. What one
     * session holds for its packet in progress (its text and the
     * attachments received so far) may not exceed max_attachment_bytes
     * (0, the default: 4 x max_payload, i.e. 4000000, room for four
     * full-size attachments: larger uploads belong in HTTP), and what all
     * sessions hold together may not exceed max_pending_attachment_bytes
     * (0, the default: 64 MiB). A message that would exceed either closes
     * that session ("parse error"), no other. SIZE_MAX: no limit. A binary
     * packet for a namespace the client has not joined closes the session
     * when its text arrives, before any attachment is held. */
    size_t max_attachment_bytes;
    size_t max_pending_attachment_bytes;
    /* Authentication deadline. With require_auth set (default 0: the
     * reference's behaviour, where any CONNECT stops the connect timeout),
     * connect_timeout_ms, counted from the session's open, keeps applying
     * until the client has a socket in an authenticated namespace: one
     * whose handlers had an on_connect_check when the socket connected
     * (so the check accepted it; a socket restored by connection-state
     * recovery, which skips checks as the reference does, counts too). A
     * socket in a namespace without a check, such as an open "/", does not
     * stop the deadline. When the client's last authenticated socket goes
     * away while the session lives, the deadline starts again,
     * connect_timeout_ms from then. A session the deadline closes: reason
     * "auth timeout" for its sockets, an info log line "socket.io <sid>: no
     * authenticated namespace within <ms> ms", and a counter. */
    int require_auth;
    /* Origin allow-list, checked on every Engine.IO request (handshake,
     * polling, WebSocket upgrade): NULL = no check (default); otherwise a
     * comma-separated list of origins ("https://app.example,http://
     * localhost:8080"; "null" only if listed; scheme and host compared
     * case-insensitively, the port is significant, "*" allows all). A
     * request whose Origin header is present and not listed gets 403;
     * requests without Origin (native clients) pass. Independent of
     * cors_origin, except that a refused origin never gets CORS headers. */
    const char *allowed_origins;
} parley_server_opts;

/* Fills in the defaults documented above. */
/* Defaults into the first `size` bytes of *o, o->size = min(size,
 * sizeof); call it as parley_server_opts_init(&o) (see parley.h). */
PARLEY_API void parley_server_opts_init_size(parley_server_opts *o, size_t size);
#define parley_server_opts_init(o) parley_server_opts_init_size((o), sizeof *(o))

/* Creates a server on `loop` (options are copied). Errors: PARLEY_EINVAL,
 * PARLEY_ETLS (certificate or key unusable), PARLEY_ENOMEM. */
PARLEY_API int parley_server_new(parley_loop *loop, const parley_server_opts *o,
                                 parley_server **out);

/* Listens on host:port (port 0 picks one; *bound receives it, may be
 * NULL). May be called several times. */
PARLEY_API int parley_server_listen(parley_server *s, const char *host, unsigned port,
                                    unsigned *bound);

/* Stops listening and disconnects every client ("server shutting down");
 * `done` runs when all connections are gone. */
PARLEY_API void parley_server_shutdown(parley_server *s, void (*done)(parley_server *s, void *user),
                                       void *user);

/* Frees the server; after shutdown completed (or before listening). */
PARLEY_API void parley_server_free(parley_server *s);

/* Binary attachment. */
typedef struct parley_bin {
    const void *data;
    size_t len;
} parley_bin;

/* Event or acknowledgement arguments. */
typedef struct parley_args {
    /* A JSON array, e.g. [1,"a",{"_placeholder":true,"num":0}], compact,
     * json_len bytes: NOT guaranteed to be NUL-terminated (the server's
     * handlers get text followed by other bytes), so always use json_len,
     * e.g. parley_json_parse(a->json, a->json_len, ...) (parley/json.h).
     * Valid during the callback only. On the client with connection-state
     * recovery, see parley_sock_offsets for an extra last element. */
    const char *json;
    size_t json_len;
    const parley_bin *bins;
    size_t nbins;
} parley_args;

/* Filled by a connect check to refuse a client: the client gets
 * connect_error with this message and, when data_json is set, err.data. */
typedef struct parley_connect_error {
    const char *message;   /* static or valid until the check returns */
    const char *data_json; /* NULL or a JSON value */
} parley_connect_error;

typedef struct parley_nsp_handlers {
    /* Optional middleware: 0 accepts the CONNECT; anything else refuses it
     * with *err. auth is the CONNECT payload (a JSON object) or NULL. */
    int (*on_connect_check)(parley_socket *s, const char *auth, size_t auth_len,
                            parley_connect_error *err, void *user);
    /* A socket connected (or was recovered: parley_socket_recovered). */
    void (*on_connection)(parley_socket *s, void *user);
    /* An event. ack_id >= 0 when the client wants an acknowledgement:
     * answer with parley_ack (now or later, while the socket lives). */
    void (*on_event)(parley_socket *s, const char *event, size_t event_len, const parley_args *args,
                     int64_t ack_id, void *user);
    /* The socket is gone. reason: "client namespace disconnect", "server
     * namespace disconnect", "transport close", "transport error", "ping
     * timeout", "parse error", "forced close", "auth timeout" (see
     * require_auth), "server shutting down". */
    void (*on_disconnect)(parley_socket *s, const char *reason, void *user);
    void *user;
} parley_nsp_handlers;

/* The namespace `name` ("/" always exists), created on first use.
 * Clients can connect only to namespaces created this way. NULL when out
 * of memory or name does not start with '/'. */
PARLEY_API parley_nsp *parley_server_of(parley_server *s, const char *name);

/* Sets the handlers (copied). */
PARLEY_API void parley_nsp_set_handlers(parley_nsp *n, const parley_nsp_handlers *h);

/* Turns a namespace off (closed != 0) or on again (0; namespaces start
 * on). A CONNECT to a closed namespace is answered exactly like one to a
 * namespace that does not exist (connect_error "Invalid namespace"), and
 * the connection stays; sockets already connected are not affected. E.g.
 * parley_nsp_set_closed(parley_server_of(srv, "/"), 1) when only other
 * namespaces are served. */
PARLEY_API void parley_nsp_set_closed(parley_nsp *n, int closed);

/* Sending to one socket. args_json NULL means no arguments. Errors:
 * PARLEY_EINVAL (args not a JSON array, bad placeholder, reserved event
 * name), PARLEY_ECLOSED, PARLEY_ENOMEM, PARLEY_EFULL. */
PARLEY_API int parley_emit(parley_socket *s, const char *event, const char *args_json,
                           const parley_bin *bins, size_t nbins);

/* Called with the client's acknowledgement (err 0, args set), or err
 * PARLEY_ETIMEDOUT, or PARLEY_ECLOSED when the socket went away first. */
typedef void (*parley_ack_fn)(parley_socket *s, int err, const parley_args *args, void *user);

typedef struct parley_emit_opts {
    size_t size;       /* sizeof the struct, set by parley_emit_opts_init (see parley.h) */
    int volatile_;     /* drop rather than queue when the client cannot take it now */
    parley_ack_fn ack; /* ask for an acknowledgement */
    void *ack_user;
    uint32_t timeout_ms; /* for the acknowledgement; 0 = none */
} parley_emit_opts;

/* Defaults (all 0) into the first `size` bytes of *o, o->size = min(size,
 * sizeof); call it as parley_emit_opts_init(&o) (see parley.h). */
PARLEY_API void parley_emit_opts_init_size(parley_emit_opts *o, size_t size);
#define parley_emit_opts_init(o) parley_emit_opts_init_size((o), sizeof *(o))

/* PARLEY_EINVAL also for o->size 0 or smaller than size + volatile_. */
PARLEY_API int parley_emit_opts_send(parley_socket *s, const parley_emit_opts *o, const char *event,
                                     const char *args_json, const parley_bin *bins, size_t nbins);

/* Acknowledges event ack_id of socket s with arguments (a JSON array or
 * NULL). PARLEY_EINVAL for an unknown or already answered id is not
 * detected: each id must be answered at most once. */
PARLEY_API int parley_ack(parley_socket *s, int64_t ack_id, const char *args_json,
                          const parley_bin *bins, size_t nbins);

/* Rooms (per namespace). Every socket is also in the room named by its id.
 * Room names are at most 256 bytes. */
PARLEY_API int parley_join(parley_socket *s, const char *room);
PARLEY_API int parley_leave(parley_socket *s, const char *room);

typedef struct parley_target {
    const char *const *rooms; /* NULL/0: every socket of the namespace */
    size_t nrooms;
    const char *const *except; /* rooms whose members are left out */
    size_t nexcept;
    parley_socket *except_socket; /* e.g. the sender */
    int volatile_;
} parley_target;

/* Sends one event to many sockets: encoded once, the same bytes are
 * shared by every WebSocket recipient. to == NULL: the whole namespace.
 * Returns the number of recipients or a negative error. */
PARLEY_API int parley_broadcast(parley_nsp *n, const parley_target *to, const char *event,
                                const char *args_json, const parley_bin *bins, size_t nbins);

/* Disconnects the socket from its namespace ("server namespace
 * disconnect"); close_transport != 0 also ends the client's connection. */
PARLEY_API void parley_disconnect(parley_socket *s, int close_transport);

PARLEY_API const char *parley_socket_id(const parley_socket *s);
PARLEY_API parley_nsp *parley_socket_nsp(const parley_socket *s);
PARLEY_API const char *parley_nsp_name(const parley_nsp *n);
/* 1 when connection-state recovery restored this socket. */
PARLEY_API int parley_socket_recovered(const parley_socket *s);
/* "polling" or "websocket". */
PARLEY_API const char *parley_socket_transport(const parley_socket *s);
PARLEY_API void parley_socket_set_data(parley_socket *s, void *data);
PARLEY_API void *parley_socket_data(const parley_socket *s);
/* The CONNECT auth payload (JSON object text) during on_connect_check and
 * on_connection; NULL elsewhere or when the client sent none. */
PARLEY_API const char *parley_socket_auth(const parley_socket *s, size_t *len);

/* ---- Cluster (docs/CLUSTER.md) ----
 *
 * Joins the server to a cluster of Socket.IO servers that share one Redis
 * the way @socket.io/redis-adapter 8.x (the classic Pub/Sub adapter) and
 * @socket.io/redis-emitter 5.x do: Node socket.io servers with that
 * adapter, other Parley servers and emitters. After parley_cluster_join,
 * every parley_broadcast is delivered to this server's sockets and then
 * published; broadcasts published by the others (rooms, except, binary,
 * volatile) reach this server's sockets; remote socketsJoin, socketsLeave,
 * disconnectSockets and fetchSockets apply to its sockets; serverSideEmit
 * goes both ways. Redis may be down: the server keeps serving its own
 * sockets (what cannot be published is counted) and reconnects with
 * backoff, subscribing again.
 *
 * The parley_cluster_* functions are provided by libparley-server, not
 * libparley: a program that calls them links parley-server
 * (`pkg-config --libs parley-server`, which brings libparley too, and
 * with it hiredis and msgpack-c). Everything else in this header is
 * libparley's.
 */
typedef struct parley_cluster parley_cluster;

typedef struct parley_cluster_opts {
    size_t size;           /* set by parley_cluster_opts_init (see parley.h) */
    const char *redis_url; /* redis://[[user]:pass@]host[:port][/db]; required */
    const char *key;       /* channel prefix, the adapter's `key` option; default "socket.io" */
    size_t max_message;    /* largest message accepted from Redis; default 1000000 */
    /* serverSideEmit from another server: the event and its arguments (a
     * JSON array of args_len bytes). ack_id is NULL, or the sender waits
     * for an acknowledgement: answer once with parley_cluster_ack (now or
     * later; the sender gives up after its timeout, 5 s for Node).
     * Optional; runs on the loop thread; pointers valid during the call.
     * The callback may broadcast, emit and leave the cluster. */
    void (*on_server_side_emit)(parley_nsp *n, const char *event, const char *args_json,
                                size_t args_len, const char *ack_id, void *user);
    void *user;
    /* rediss://: the CA bundle (PEM) the Redis server's certificate must
     * chain to; NULL: the system store. The host name is checked. */
    const char *redis_ca_file;
} parley_cluster_opts;

PARLEY_API void parley_cluster_opts_init_size(parley_cluster_opts *o, size_t size);
#define parley_cluster_opts_init(o) parley_cluster_opts_init_size((o), sizeof *(o))

/* Joins (one cluster per server). Connecting goes on in the background.
 * Errors: PARLEY_EINVAL (no options or URL), PARLEY_EURL (a bad URL, the
 * reason logged), PARLEY_ETLS (rediss://: the CA file cannot be used),
 * PARLEY_ESTATE (already joined), PARLEY_ENOMEM. */
PARLEY_API int parley_cluster_join(parley_server *s, const parley_cluster_opts *o,
                                   parley_cluster **out);

/* serverSideEmit to the other servers' namespace n: event with args_json
 * (a JSON array or NULL; no binary). Errors: PARLEY_EINVAL, PARLEY_ECLOSED
 * (Redis is down now: not sent), PARLEY_ENOMEM. */
PARLEY_API int parley_cluster_server_side_emit(parley_cluster *c, parley_nsp *n,
                                               const char *event, const char *args_json);

/* serverSideEmit with acknowledgements (Node's serverSideEmitWithAck):
 * the servers of the cluster are counted (PUBSUB NUMSUB), the request is
 * published, and fn gets the acknowledgements as one JSON array (one
 * element per answering server, in arrival order) with err 0 when every
 * other server answered, PARLEY_ETIMEDOUT (after timeout_ms, 0 = 5000)
 * with those that did, or PARLEY_ECLOSED (Redis went down, or
 * parley_cluster_leave). fn runs exactly once, never inside this call.
 * Errors: PARLEY_EINVAL, PARLEY_ECLOSED (Redis is down now), PARLEY_EFULL
 * (64 counts pending), PARLEY_ENOMEM. */
typedef void (*parley_cluster_ack_fn)(parley_cluster *c, int err, const char *responses_json,
                                      size_t len, void *user);
PARLEY_API int parley_cluster_server_side_emit_ack(parley_cluster *c, parley_nsp *n,
                                                   const char *event, const char *args_json,
                                                   uint32_t timeout_ms, parley_cluster_ack_fn fn,
                                                   void *user);

/* Answers a serverSideEmit that wants an acknowledgement (ack_id from
 * on_server_side_emit) with one JSON value (NULL: none). Errors as for
 * parley_cluster_server_side_emit. */
PARLEY_API int parley_cluster_ack(parley_cluster *c, parley_nsp *n, const char *ack_id,
                                  const char *value_json);

/* Operations on the sockets of every server of the cluster in namespace
 * n (Node's io.in(rooms).except(except).socketsJoin(...) and friends):
 * the sockets in any of `rooms` (nrooms 0: every socket) and in none of
 * `except` (room names or socket ids, at most 64 each, 1..256 bytes).
 * Applied to this server's sockets at once, then published to the
 * others. Errors: PARLEY_EINVAL (bad arguments), PARLEY_ECLOSED (Redis is
 * down: applied here only), PARLEY_ENOMEM. */
PARLEY_API int parley_cluster_sockets_join(parley_cluster *c, parley_nsp *n,
                                           const char *const *rooms, size_t nrooms,
                                           const char *const *except, size_t nexcept,
                                           const char *const *join, size_t njoin);
PARLEY_API int parley_cluster_sockets_leave(parley_cluster *c, parley_nsp *n,
                                            const char *const *rooms, size_t nrooms,
                                            const char *const *except, size_t nexcept,
                                            const char *const *leave, size_t nleave);
/* close != 0: also close the underlying connections. */
PARLEY_API int parley_cluster_disconnect_sockets(parley_cluster *c, parley_nsp *n,
                                                 const char *const *rooms, size_t nrooms,
                                                 const char *const *except, size_t nexcept,
                                                 int close);

/* fetchSockets across the cluster: fn gets one JSON array of sockets
 * {id, handshake, rooms, data} (this server's first, then each other
 * server's answer as it arrives), with err 0 when every other server
 * answered, PARLEY_ETIMEDOUT (timeout_ms, 0 = 5000) with those that did,
 * or PARLEY_ECLOSED. fn runs exactly once, never inside this call. Errors
 * as parley_cluster_server_side_emit_ack. */
PARLEY_API int parley_cluster_fetch_sockets(parley_cluster *c, parley_nsp *n,
                                            const char *const *rooms, size_t nrooms,
                                            const char *const *except, size_t nexcept,
                                            uint32_t timeout_ms, parley_cluster_ack_fn fn,
                                            void *user);

/* Servers in the cluster, this one included, as Redis last said (PUBSUB
 * NUMSUB of the "/" request channel, refreshed every 2 s); 0 = not known
 * yet. */
PARLEY_API unsigned parley_cluster_nodes(const parley_cluster *c);

/* Leaves the cluster (broadcasts are local again) and frees c. Call
 * before parley_server_free. */
PARLEY_API void parley_cluster_leave(parley_cluster *c);

#ifdef __cplusplus
}
#endif
#endif
