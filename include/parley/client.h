/*
 * libparley Socket.IO client (Engine.IO v4 / Socket.IO v5), for parleyd and
 * any Socket.IO 4.x server.
 *
 *     parley_client_opts o;
 *     parley_client_opts_init(&o);
 *     o.url = "https://chat.example.com";
 *     parley_client *c;
 *     parley_client_new(&o, &c);            // own loop thread, connects
 *     parley_sock_opts so;
 *     parley_sock_opts_init(&so);
 *     so.auto_connect = 0;                  // register handlers first
 *     parley_sock *s = parley_client_socket(c, "/", &so);
 *     parley_sock_on(s, "new_message", on_message, app);
 *     parley_sock_connect(s);
 *     parley_sock_emit(s, "hello", "[\"world\"]", NULL, 0);
 *
 * A parley_client is what socket.io-client calls a Manager: one Engine.IO
 * connection (HTTP long-polling, WebSocket, or polling upgraded to
 * WebSocket), reconnecting by its policy. A parley_sock is one namespace
 * on it; several share the connection.
 *
 * Threads: by default the client runs its own loop on a thread of its own
 * (opts.loop == NULL); with opts.loop it runs on that loop. Every function
 * here may be called from any thread: a call made off the loop thread runs
 * on it and returns when done (it blocks until the loop gets to it; do not
 * call from a thread the loop waits on). Every callback runs on the loop
 * thread; pointers passed to callbacks are valid only during the call.
 * Callbacks may call any function here, including the free functions
 * (freeing then happens after the callback returns).
 *
 * Arguments are JSON text, as in server.h: one JSON array per event, binary
 * values written {"_placeholder":true,"num":N} referring to bins[N].
 */
#ifndef PARLEY_CLIENT_H
#define PARLEY_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "parley/parley.h"
#include "parley/server.h" /* parley_args, parley_bin */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct parley_client parley_client;
typedef struct parley_sock parley_sock;

enum parley_transport {
    PARLEY_TRANSPORT_POLLING = 1,
    PARLEY_TRANSPORT_WEBSOCKET = 2,
};

/* Connection events of a client (the Manager's events). */
typedef enum parley_client_event_type {
    PARLEY_CLIENT_CONNECTING = 1,   /* an attempt starts */
    PARLEY_CLIENT_OPEN,             /* the Engine.IO session is open */
    PARLEY_CLIENT_UPGRADE,          /* now on WebSocket (after polling) */
    PARLEY_CLIENT_CLOSE,            /* the session ended: reason */
    PARLEY_CLIENT_RECONNECTING,     /* attempt `attempt` in delay_ms */
    PARLEY_CLIENT_RECONNECTED,      /* open again after `attempt` attempts */
    PARLEY_CLIENT_RECONNECT_FAILED, /* reconnection_attempts exhausted, or a
                                       non-retryable answer (HTTP 401, 403,
                                       404, 407): no more attempts until
                                       parley_client_connect */
    PARLEY_CLIENT_ERROR,            /* err, http_status, message */
} parley_client_event_type;

typedef struct parley_client_event {
    parley_client_event_type type;
    const char *reason; /* CLOSE: "transport close", "ping timeout", ...;
                           "forced close" when the last namespace was left
                           (by either side; reported before that socket's
                           on_disconnect, as socket.io-client's Manager) */
    int err;            /* a parley_err, for ERROR and failed attempts */
    int http_status;    /* when the server answered an HTTP error */
    unsigned attempt;
    uint32_t delay_ms;
    const char *transport; /* "polling" or "websocket" (OPEN, UPGRADE) */
} parley_client_event;

typedef struct parley_client_opts {
    size_t size; /* sizeof the struct, set by parley_client_opts_init (see parley.h) */
    /* http://, https://, ws:// or wss:// host[:port], optional query (its
     * path is ignored: the endpoint is `path`; namespaces are sockets). */
    const char *url;
    const char *path;           /* default "/socket.io/" */
    const char *query;          /* extra query parameters, "a=1&b=2" */
    const char *const *headers; /* extra request headers "Name: value" */
    size_t nheaders;
    unsigned transports; /* PARLEY_TRANSPORT_* bits; default both */
    int upgrade;         /* polling -> websocket upgrade (default 1) */
    int websocket_first; /* with both transports: try WebSocket first,
                            falling back to polling when its handshake
                            is refused (default 0: polling, then
                            upgrade) */
    /* An HTTP proxy to tunnel through (CONNECT, for polling and WebSocket
     * alike; for https/wss targets TLS runs inside the tunnel):
     * "http://[user:password@]host[:port]" (port default 80; credentials
     * percent-decoded, sent as Basic Proxy-Authorization), or "" for none.
     * NULL (default): the environment, as curl reads it: https_proxy or
     * HTTPS_PROXY for https/wss URLs, http_proxy or HTTP_PROXY for
     * http/ws, except for hosts in no_proxy/NO_PROXY (comma-separated;
     * an entry matches the host and its subdomains; "*" every host). A
     * refusal is reported as an ERROR with err PARLEY_EPROXY (or
     * PARLEY_EPROXYAUTH for 407) and http_status the proxy's status; 403
     * and 407 stop reconnecting, as the server's 401/403/404 do.
     * Errors of parley_client_new: PARLEY_EURL for a malformed proxy URL. */
    const char *proxy;
    const char *ca_file; /* TLS trust (default: the system store) */
    int insecure;        /* skip certificate checks (tests only) */
    uint32_t timeout_ms; /* each connection attempt (default 20000) */
    /* WebSocket transport: offer permessage-deflate (RFC 7692), as
     * socket.io-client in Node does (perMessageDeflate: {threshold: 1024}).
     * Default 1. Messages shorter than compression_threshold bytes are
     * sent uncompressed (default 1024); compressed messages from the
     * server are inflated with a bound of 16 MiB (the largest message the
     * client accepts; past it the connection is failed with 1009). */
    int permessage_deflate;
    size_t compression_threshold;
    /* Reconnection, with socket.io-client's names and defaults. */
    int reconnection;                   /* default 1 */
    unsigned reconnection_attempts;     /* 0 = unlimited (default) */
    uint32_t reconnection_delay_ms;     /* default 1000 */
    uint32_t reconnection_delay_max_ms; /* default 5000 */
    double randomization_factor;        /* default 0.5 */
    int auto_connect;                   /* default 1 */
    /* The loop to run on; NULL = a loop of its own on a thread of its own. */
    parley_loop *loop;
    void (*on_event)(parley_client *c, const parley_client_event *ev, void *user);
    void *user;
} parley_client_opts;

/* Defaults into the first `size` bytes of *o, o->size = min(size,
 * sizeof); call it as parley_client_opts_init(&o) (see parley.h). */
PARLEY_API void parley_client_opts_init_size(parley_client_opts *o, size_t size);
#define parley_client_opts_init(o) parley_client_opts_init_size((o), sizeof *(o))

/* Creates a client (copies the options) and, with auto_connect, starts
 * connecting. Errors: PARLEY_EINVAL, PARLEY_EURL, PARLEY_ETLS (CA file),
 * PARLEY_ENOMEM. */
PARLEY_API int parley_client_new(const parley_client_opts *o, parley_client **out);

/* Connects (again): also after RECONNECT_FAILED or parley_client_close. */
PARLEY_API int parley_client_connect(parley_client *c);

/* Closes the connection and stops reconnecting; sockets stay and connect
 * again on parley_client_connect. */
PARLEY_API int parley_client_close(parley_client *c);

/* Closes, frees the sockets and the client, and stops its own thread. No
 * callbacks after it returns (when called off the loop thread). */
PARLEY_API void parley_client_free(parley_client *c);

/* The current transport ("polling", "websocket") or NULL when not open. */
PARLEY_API const char *parley_client_transport(parley_client *c);

typedef struct parley_client_stats {
    uint64_t connects;   /* sessions opened */
    uint64_t reconnects; /* of which after a loss */
    uint64_t errors;
    uint64_t packets_in, packets_out; /* Engine.IO messages */
    uint64_t bytes_in, bytes_out;     /* payload bytes */
    uint64_t uptime_ms;               /* of the current session, 0 when down */
    uint64_t total_uptime_ms;         /* all sessions */
    uint32_t last_rtt_ms;             /* the last acknowledgement's round trip */
    uint64_t send_retries;            /* reliable sends whose answer send_retry
                                         turned into a wait (every socket) */
} parley_client_stats;

PARLEY_API void parley_client_get_stats(parley_client *c, parley_client_stats *out);

/* Sockets. */

typedef struct parley_sock_opts {
    size_t size; /* sizeof the struct, set by parley_sock_opts_init (see parley.h) */
    /* The CONNECT auth payload (a JSON object), asked for on every
     * (re)connection so that a token can be refreshed: return a string
     * from parley_alloc or parley_strdup (or malloc), which the library
     * frees with parley_free, or NULL for none. */
    char *(*auth)(parley_sock *s, void *user);
    void (*on_connect)(parley_sock *s, int recovered, void *user);
    void (*on_disconnect)(parley_sock *s, const char *reason, void *user);
    /* The server refused the CONNECT (middleware): message and optional
     * data (JSON). */
    void (*on_connect_error)(parley_sock *s, const char *message, const char *data_json,
                             void *user);
    /* The user argument of this socket's callbacks (auth, on_connect,
     * on_disconnect, on_connect_error, on_send_status, send_retry); NULL:
     * the client's (parley_client_opts.user). Events registered with
     * parley_sock_on carry their own. */
    void *user;
    /* Reliable sends (parley_sock_send): the outbound queue's limits and
     * optional SQLite file (a process restarted with the same file sends
     * what it had queued). */
    size_t queue_max_count; /* default 1000 */
    size_t queue_max_bytes; /* default 8 MiB */
    const char *queue_path; /* NULL = memory only */
    /* Status of reliable sends made without a callback of their own,
     * including those a restarted process finds in queue_path (user is
     * the user above). */
    void (*on_send_status)(parley_sock *s, const char *id, int status, int err,
                           const struct parley_args *ack_args, void *user);
    /* 1 (default): connect to the namespace as soon as the client is
     * connected. 0: wait for parley_sock_connect — the way to register
     * handlers first when the client already runs on its own thread,
     * since events the server sends right after CONNECT (a greeting, say)
     * could otherwise arrive before the handlers exist. */
    int auto_connect;
    /* Reliable sends that the server answers "not now" (a rate limit, a
     * quota that frees up): called with every acknowledgement of a
     * reliable send, before anything is reported, with the send's id and
     * the acknowledgement's arguments (valid during the call; user is the
     * user above). Return 0 to take the answer as final (ACKED, as when
     * this is NULL, the default), or a delay in ms (> 0; at most a day
     * counts) to keep the send: it goes back to its place in the queue
     * (reported QUEUED again, with these arguments) and the socket's
     * queue sends nothing for that delay plus up to 10% of random
     * jitter, so that everything behind it waits too and the order
     * holds. Then the queue resumes with that entry alone (the first in
     * the order), and sends the rest once the server answers it, so that
     * a server that is still refusing gets one request per wait, not the
     * whole queue. The wait is kept across a reconnection (the replay
     * waits for it), entries keep expiring by their ttl_ms while it runs,
     * and parley_client_stats.send_retries counts the kept answers. Sends
     * that were already on the wire when the answer came are answered on
     * their own. Any function here may be called from it. */
    int (*send_retry)(parley_sock *s, const char *id, const struct parley_args *ack_args,
                      void *user);
} parley_sock_opts;

/* Defaults into the first `size` bytes of *o, o->size = min(size,
 * sizeof); call it as parley_sock_opts_init(&o) (see parley.h). */
PARLEY_API void parley_sock_opts_init_size(parley_sock_opts *o, size_t size);
#define parley_sock_opts_init(o) parley_sock_opts_init_size((o), sizeof *(o))

/* The socket for namespace nsp ("/" when NULL), created on first call (with
 * o, or defaults when NULL), connected when the client is. Returns NULL on
 * PARLEY_ENOMEM/EINVAL or when the queue file cannot be opened. */
PARLEY_API parley_sock *parley_client_socket(parley_client *c, const char *nsp,
                                             const parley_sock_opts *o);

/* Replaces the socket's user pointer (NULL: the client's again); set it
 * before the socket connects, or on the loop thread. parley_sock_user
 * returns the pointer its callbacks get. */
PARLEY_API void parley_sock_set_user(parley_sock *s, void *user);
PARLEY_API void *parley_sock_user(parley_sock *s);

PARLEY_API int parley_sock_connect(parley_sock *s);
/* Leaves the namespace (DISCONNECT); the connection stays for others. */
PARLEY_API int parley_sock_disconnect(parley_sock *s);

/* 1 when connected to its namespace. */
PARLEY_API int parley_sock_connected(parley_sock *s);
/* 1 when the last connection was a connection-state recovery. */
PARLEY_API int parley_sock_recovered(parley_sock *s);
/* 1 when the server of the last connection has connection-state recovery
 * on (its CONNECT reply carried a session pid; parleyd --recovery). Then,
 * as with socket.io-client, every event received without an
 * acknowledgement request (the handler's ack_id < 0) has one argument more
 * than the server emitted: its last element is the server's offset, a
 * string (the client sends the latest one back to recover). To get the
 * arguments as emitted, drop that last element (parley/json.h:
 * parley_json_count(args) - 1 elements). Events with ack_id >= 0 carry no
 * offset. 0 without recovery: the arguments are exactly as emitted. */
PARLEY_API int parley_sock_offsets(parley_sock *s);
/* The socket id given by the server (copied into out, 32 bytes), or "". */
PARLEY_API void parley_sock_id(parley_sock *s, char out[32]);

/* An event from the server. ack_id >= 0: the server wants an
 * acknowledgement (parley_sock_ack). */
typedef void (*parley_event_fn)(parley_sock *s, const char *event, const parley_args *args,
                                int64_t ack_id, void *user);

/* Handlers: on (every time), once (next time only), any (every event).
 * Return a handler id (> 0) for parley_sock_off, or a negative error. */
PARLEY_API int parley_sock_on(parley_sock *s, const char *event, parley_event_fn fn, void *user);
PARLEY_API int parley_sock_once(parley_sock *s, const char *event, parley_event_fn fn, void *user);
PARLEY_API int parley_sock_on_any(parley_sock *s, parley_event_fn fn, void *user);
PARLEY_API int parley_sock_off(parley_sock *s, int handler_id);

PARLEY_API int parley_sock_ack(parley_sock *s, int64_t ack_id, const char *args_json,
                               const parley_bin *bins, size_t nbins);

/* Emits. While the socket is not connected, emits are buffered and sent in
 * order once it is (as socket.io-client's sendBuffer); volatile emits are
 * dropped instead. Errors: PARLEY_EINVAL (args, reserved event name),
 * PARLEY_ENOMEM. */
PARLEY_API int parley_sock_emit(parley_sock *s, const char *event, const char *args_json,
                                const parley_bin *bins, size_t nbins);
PARLEY_API int parley_sock_emit_volatile(parley_sock *s, const char *event, const char *args_json,
                                         const parley_bin *bins, size_t nbins);

/* The server's acknowledgement (err 0, args), or err PARLEY_ETIMEDOUT
 * (timeout_ms passed; 0 = no timeout), or PARLEY_ECLOSED (the socket
 * disconnected before it came). As socket.io-client 4.8's emitWithAck
 * (and its error-first acks, with or without a timeout): an ack whose
 * packet was sent fails at the disconnect, timeout or not, since the
 * server of a new session never answers it; one still buffered (emitted
 * while disconnected) stays pending and is answered after the
 * reconnection. So pending acks are bounded by what is sent in one
 * session plus the send buffer. (socket.io-client drops plain, non
 * error-first callbacks silently instead; a C callback must learn when
 * its user data is no longer needed, hence ECLOSED.) Sends that must
 * survive reconnections (socket.io-client's `retries`) are
 * parley_sock_send. A socket holds at most PARLEY_CLIENT_MAX_PENDING_ACKS
 * pending acks (sent or buffered); beyond, PARLEY_EFULL and nothing is
 * sent. */
#define PARLEY_CLIENT_MAX_PENDING_ACKS 10000
typedef void (*parley_ack_result_fn)(parley_sock *s, int err, const parley_args *args, void *user);
PARLEY_API int parley_sock_emit_ack(parley_sock *s, const char *event, const char *args_json,
                                    const parley_bin *bins, size_t nbins, uint32_t timeout_ms,
                                    parley_ack_result_fn fn, void *user);

/* Reliable sends through the outbound queue. The message is queued (even
 * while offline; persisted when queue_path is set), sent in priority order
 * (PARLEY_PRIORITY_*: urgent > high > normal > low, FIFO within one) with
 * an acknowledgement request, resent after a reconnection until the server
 * acknowledges it, and leaves the queue only then. id: the idempotency id
 * (36 characters, e.g. from parley_new_id, which the application puts in
 * its arguments so that the server can drop duplicates), or NULL to have
 * one generated. ttl_ms 0 = no expiry; a message whose time to live
 * passes while it waits is reported failed and never sent (one on the
 * wire then waits for its acknowledgement, and fails only if the
 * connection drops first or send_retry puts it back). The socket's
 * send_retry option can turn an answer into a wait and a resend.
 * status reports each step. Errors: PARLEY_EFULL
 * (queue limits: nothing is dropped silently), PARLEY_EINVAL, PARLEY_EIO
 * (the queue file), PARLEY_ENOMEM. */
enum parley_priority {
    PARLEY_PRIORITY_LOW = 0,
    PARLEY_PRIORITY_NORMAL = 1,
    PARLEY_PRIORITY_HIGH = 2,
    PARLEY_PRIORITY_URGENT = 3,
};
enum parley_send_status {
    PARLEY_SEND_QUEUED = 1, /* accepted, waiting for the connection; again
                               when send_retry kept an answered send
                               (args: that answer) */
    PARLEY_SEND_SENT,       /* on the wire, waiting for the acknowledgement */
    PARLEY_SEND_ACKED,      /* the server acknowledged (args = its answer) */
    PARLEY_SEND_FAILED,     /* expired (err PARLEY_ETIMEDOUT) */
};
typedef void (*parley_send_status_fn)(parley_sock *s, const char *id, int status, int err,
                                      const parley_args *ack_args, void *user);
PARLEY_API int parley_sock_send(parley_sock *s, const char *event, const char *args_json,
                                int priority, uint32_t ttl_ms, const char *id,
                                parley_send_status_fn status, void *user);

/* Messages still queued (pending or waiting for their acknowledgement). */
PARLEY_API size_t parley_sock_queued(parley_sock *s);

/* A fresh idempotency id (UUID v4 text) into out (37 bytes). 0 or
 * PARLEY_EIO. */
PARLEY_API int parley_new_id(char out[37]);

/* Per-event counts of this socket: cb is called for each event name seen
 * or sent, with the counts in and out. */
PARLEY_API void parley_sock_event_counts(parley_sock *s,
                                         void (*cb)(const char *event, uint64_t in, uint64_t out,
                                                    void *user),
                                         void *user);

#ifdef __cplusplus
}
#endif
#endif
