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
 * Threads: a parley_ws runs on one loop: the one given to parley_ws_new,
 * or, with NULL, a loop of its own on a thread of its own. Every function
 * here may be called from any thread: on the loop's thread it runs in
 * place; from another thread it runs on the loop and returns when done (it
 * blocks until the loop gets to it, so do not call it from a thread the
 * loop waits on). Every callback runs on the loop's thread, and no
 * callback ever runs inside a call of this API (status changes a call
 * causes are reported from the loop afterwards), so a caller may hold its
 * own locks across calls. Callbacks may call any function of this API on
 * the same handle, including parley_ws_free (the memory is released after
 * the callback returns).
 *
 * Resilience (all optional): a heartbeat (ping_interval_ms), automatic
 * reconnection with exponential backoff and full jitter (reconnect), and an
 * outbound queue (parley_ws_send_queued) that holds messages while the
 * connection is down, in priority order, optionally persisted in SQLite,
 * until the application acknowledges them (parley_ws_ack) or, with
 * ack_on_write, until they were written to the socket.
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

/* Connection events (opts.on_event), in the order they happen:
 *   CONNECTING, then CONNECTED or ERROR;
 *   after CONNECTED: MESSAGE..., DISCONNECTED;
 *   after ERROR or DISCONNECTED, with reconnect on: RECONNECTING (then
 *   CONNECTING when the delay is over) or RECONNECT_FAILED. */
typedef enum parley_ws_event_type {
    /* An attempt starts (attempt). */
    PARLEY_WS_EV_CONNECTING = 1,
    /* The handshake completed (attempt, protocol). */
    PARLEY_WS_EV_CONNECTED,
    /* An open connection ended (reason, err, code, close_reason,
     * will_retry). */
    PARLEY_WS_EV_DISCONNECTED,
    /* Attempt `attempt` starts in delay_ms. */
    PARLEY_WS_EV_RECONNECTING,
    /* No more automatic attempts: reconnect_attempts are used up, or the
     * server answered HTTP 401, 403 or 404 (http_status). parley_ws_connect
     * starts again. */
    PARLEY_WS_EV_RECONNECT_FAILED,
    /* A whole message (msg_type, data, len). */
    PARLEY_WS_EV_MESSAGE,
    /* An attempt failed before opening (reason, err, http_status,
     * will_retry). */
    PARLEY_WS_EV_ERROR,
} parley_ws_event_type;

/* Pointers in an event are valid only during the callback. */
typedef struct parley_ws_event {
    parley_ws_event_type type;
    /* 0 for an attempt started by parley_ws_connect, n for the n-th
     * automatic attempt since the last open connection. */
    unsigned attempt;
    /* RECONNECTING: the delay before the attempt. */
    uint32_t delay_ms;
    /* DISCONNECTED, ERROR: what happened, one of "closed" (the application
     * closed), "server closed" (closing handshake from the server), "ping
     * timeout", "connection lost", "protocol error", "output full",
     * "connect failed", "connect timeout", "handshake refused". */
    const char *reason;
    /* DISCONNECTED, ERROR: a parley_err as for on_close (0: clean close). */
    int err;
    /* ERROR, RECONNECT_FAILED: the status of a refused handshake, else 0. */
    int http_status;
    /* DISCONNECTED: the close code and text, as for on_close. */
    int code;
    const char *close_reason;
    size_t close_reason_len;
    /* DISCONNECTED, ERROR: 1 when RECONNECTING follows (unless the callback
     * calls parley_ws_close or parley_ws_connect). */
    int will_retry;
    /* CONNECTED: the server's subprotocol or NULL. */
    const char *protocol;
    /* MESSAGE. */
    parley_ws_type msg_type;
    const void *data;
    size_t len;
} parley_ws_event;

/* Priorities of queued messages (same values as enum parley_priority). */
typedef enum parley_ws_priority {
    PARLEY_WS_PRIORITY_LOW = 0,
    PARLEY_WS_PRIORITY_NORMAL = 1,
    PARLEY_WS_PRIORITY_HIGH = 2,
    PARLEY_WS_PRIORITY_URGENT = 3,
} parley_ws_priority;

/* Status changes of queued messages (opts.on_send_status). */
typedef enum parley_ws_send_status {
    /* Back in the queue: the connection dropped before the message was
     * acknowledged; it is sent again. (Not reported for the push itself:
     * parley_ws_send_queued's 0 says so.) */
    PARLEY_WS_SEND_QUEUED = 1,
    /* Written to the connection (reported for every attempt). */
    PARLEY_WS_SEND_SENT,
    /* Left the queue: parley_ws_ack, or written to the socket with
     * ack_on_write. */
    PARLEY_WS_SEND_ACKED,
    /* Left the queue unsent or unacknowledged: err PARLEY_ETIMEDOUT (its
     * time to live passed; if it had been sent, it may have arrived) or
     * PARLEY_EINVAL (an unusable entry in the queue file). */
    PARLEY_WS_SEND_FAILED,
} parley_ws_send_status;

typedef struct parley_ws_opts {
    size_t size; /* sizeof the struct, set by parley_ws_opts_init (see parley.h) */
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
    /* HTTP proxy: as parley_client_opts.proxy (a CONNECT tunnel, TLS inside
     * it for wss; NULL = https_proxy/HTTPS_PROXY for wss, http_proxy/
     * HTTP_PROXY for ws, minus no_proxy/NO_PROXY; "" = none). A refusal
     * ends the attempt with reason "proxy refused", err PARLEY_EPROXY or
     * PARLEY_EPROXYAUTH (407), parley_ws_http_status the proxy's status;
     * 403 and 407 are not retried. */
    const char *proxy;
    /* Deadline for DNS + TCP + TLS + upgrade, in ms (default 10000). */
    uint32_t connect_timeout_ms;
    /* Largest accepted message and frame, in bytes (default 16 MiB). */
    uint64_t max_message;
    /* Heartbeat: a ping every ping_interval_ms (default 0 = off); when no
     * pong has come ping_timeout_ms (default 10000) after a ping, and
     * nothing else arrived in that time either, the connection is declared
     * dead (reason "ping timeout", err PARLEY_ETIMEDOUT), so a dead link is
     * noticed within interval + timeout. Pongs give the round-trip time
     * (parley_ws_stats.last_rtt_us). */
    uint32_t ping_interval_ms;
    uint32_t ping_timeout_ms;
    /* Unsent output above this closes the connection (default 8 MiB). */
    size_t max_output;

    /* Automatic reconnection (default 0 = off: one attempt per
     * parley_ws_connect). With it, a failed attempt or a lost connection is
     * followed by attempt n after a delay drawn uniformly from
     * [0, min(reconnect_delay_ms * 2^(n-1), reconnect_delay_max_ms)]
     * ("full jitter"), until a connection opens (which starts the count
     * again), reconnect_attempts attempts failed (0 = unlimited, default),
     * the server answers HTTP 401, 403 or 404 (retrying would not change
     * that answer), or the application calls parley_ws_close. */
    int reconnect;
    uint32_t reconnect_delay_ms;     /* default 1000 */
    uint32_t reconnect_delay_max_ms; /* default 30000 */
    unsigned reconnect_attempts;     /* default 0 = unlimited */
    /* Random numbers in [0, 1) for the jitter (called on the loop thread
     * with `user`); NULL = the CSPRNG (default). Lets tests fix delays. */
    double (*reconnect_random)(void *user);

    /* Outbound queue (parley_ws_send_queued). Limits: a push that would
     * exceed queue_max_count messages or queue_max_bytes (payload bytes
     * plus one per message) is refused with PARLEY_EFULL. queue_path: a
     * SQLite file the queue is kept in (created when missing), so that a
     * process restarted with the same file sends what it had queued; NULL
     * = memory only (default). ack_on_write = 1: a message leaves the
     * queue once it was written to the socket (the kernel took it) instead
     * of when the application calls parley_ws_ack (default 0). */
    size_t queue_max_count; /* default 1000 */
    size_t queue_max_bytes; /* default 8 MiB */
    const char *queue_path;
    int ack_on_write;

    /* Callbacks (all optional) and their user pointer. */
    /* The handshake completed. protocol: the server's choice or NULL. */
    void (*on_open)(parley_ws *ws, const char *protocol, void *user);
    /* A whole message. */
    void (*on_message)(parley_ws *ws, parley_ws_type type, const void *data, size_t len,
                       void *user);
    /* A pong arrived (answers to parley_ws_ping, or unsolicited). */
    void (*on_pong)(parley_ws *ws, const void *data, size_t len, void *user);
    /* The connection is over (or never opened), exactly once per attempt
     * (without reconnect: once per parley_ws_connect). code: the peer's
     * close code when the closing handshake happened (1005 if it sent none), 1006 otherwise. err: 0
     * after a clean close, else why: PARLEY_EDNS, PARLEY_ECONNREFUSED,
     * PARLEY_ETIMEDOUT, PARLEY_ETLS, PARLEY_EHANDSHAKE (see
     * parley_ws_http_status), PARLEY_EPROTO (the peer broke the protocol),
     * PARLEY_ECLOSED (the link dropped), PARLEY_EFULL. */
    void (*on_close)(parley_ws *ws, int code, const char *reason, size_t reason_len, int err,
                     void *user);
    /* Connection events (see parley_ws_event); runs before the matching
     * on_open / on_message / on_close. */
    void (*on_event)(parley_ws *ws, const parley_ws_event *ev, void *user);
    /* Status changes of queued messages; id is the message's id. */
    void (*on_send_status)(parley_ws *ws, const char *id, parley_ws_send_status status, int err,
                           void *user);
    void *user;
} parley_ws_opts;

/* Fills in the defaults documented above. */
/* Defaults into the first `size` bytes of *o, o->size = min(size,
 * sizeof); call it as parley_ws_opts_init(&o) (see parley.h). */
PARLEY_API void parley_ws_opts_init_size(parley_ws_opts *o, size_t size);
#define parley_ws_opts_init(o) parley_ws_opts_init_size((o), sizeof *(o))

/* Creates a client on loop, or, with loop NULL, on a loop of its own that
 * runs on a thread of its own until parley_ws_free. A queue file
 * (queue_path) is opened here, and what it holds is sent after the next
 * connection opens. Errors: PARLEY_EINVAL (missing url or bad option),
 * PARLEY_EURL (malformed or not ws/wss), PARLEY_ETLS (CA file unreadable),
 * PARLEY_EIO (the queue file cannot be opened, is not a queue, or is in use
 * by another client), PARLEY_ENOMEM. */
PARLEY_API int parley_ws_new(parley_loop *loop, const parley_ws_opts *o, parley_ws **out);

/* Starts connecting; also during a reconnection delay (the attempt starts
 * now) and after RECONNECT_FAILED. The attempt count and backoff start
 * again. PARLEY_ESTATE if already connecting or open. */
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
 * with err PARLEY_ECLOSED). Stops automatic reconnection (also during a
 * reconnection delay, which then returns 0 with no callback); queued
 * messages stay queued. PARLEY_ECLOSED when there is nothing to close. */
PARLEY_API int parley_ws_close(parley_ws *ws, int code, const char *reason);

/* HTTP status of a refused handshake (e.g. 401, 404), 0 otherwise. */
PARLEY_API int parley_ws_http_status(const parley_ws *ws);

/* Sends a message through the outbound queue: it is sent now when the
 * connection is open and nothing of the same or higher priority waits,
 * else when it is (after a reconnection: in priority order, urgent > high
 * > normal > low, first in first out within one). It stays queued until
 * parley_ws_ack(id) (or, with ack_on_write, until written to the socket);
 * after a connection loss unacknowledged messages are sent again, so a
 * server may see one twice: put the id in the message if it must drop
 * duplicates. ttl_ms 0 = no expiry; a message whose time to live passes
 * while it waits is reported FAILED and never sent (again); one sent and
 * not yet acknowledged at that moment waits for parley_ws_ack, and fails
 * only if the connection drops first. Queued and direct
 * (parley_ws_send) messages are not ordered with respect to each other.
 * priority: a parley_ws_priority. id_out: NULL, or 37 bytes receiving the
 * generated id (a UUID v4, NUL-terminated). Errors: PARLEY_EINVAL (bad
 * type, priority or data; text not valid UTF-8), PARLEY_EFULL (queue
 * limits; nothing is dropped silently), PARLEY_EIO (the queue file),
 * PARLEY_ENOMEM. */
PARLEY_API int parley_ws_send_queued(parley_ws *ws, parley_ws_type type, const void *data,
                                     size_t len, int priority, uint32_t ttl_ms, char *id_out);

/* The same with the application's own id: 36 characters of A-Z, a-z, 0-9,
 * '-' and '_' (a UUID's text fits), e.g. one it already put in the
 * message for the server to echo. PARLEY_EINVAL also for a malformed id or
 * one already in the queue. */
PARLEY_API int parley_ws_send_queued_id(parley_ws *ws, parley_ws_type type, const void *data,
                                        size_t len, int priority, uint32_t ttl_ms, const char *id);

/* The server confirmed message id: it leaves the queue (ACKED is reported
 * from the loop). PARLEY_EINVAL when no such message is queued (e.g. a
 * duplicate confirmation: harmless). */
PARLEY_API int parley_ws_ack(parley_ws *ws, const char *id);

/* Messages in the queue (waiting or sent and not yet acknowledged). */
PARLEY_API size_t parley_ws_queued(parley_ws *ws);

typedef struct parley_ws_stats {
    /* Connections opened (handshake completed), and of those the ones an
     * automatic attempt opened; attempts started. */
    uint64_t connections, reconnects, attempts;
    /* Failed attempts, and connections that ended with err != 0. */
    uint64_t errors;
    /* Whole messages and their payload bytes; a queued message counts
     * each time it is sent. */
    uint64_t messages_in, messages_out;
    uint64_t bytes_in, bytes_out;
    /* Time open: the current connection (0 when none) and every
     * connection, the current one included. */
    uint64_t uptime_ms, total_uptime_ms;
    /* The last heartbeat round trip in microseconds, 0 until measured. */
    uint64_t last_rtt_us;
    /* Messages in the outbound queue. */
    uint64_t queued;
} parley_ws_stats;

/* Fills *out with the counters since parley_ws_new. */
PARLEY_API void parley_ws_get_stats(parley_ws *ws, parley_ws_stats *out);

/* Frees the client, dropping the connection without a closing handshake
 * (no callback after this call; a queue file keeps what was not
 * acknowledged). Safe inside callbacks. With a loop of its own, the loop's
 * thread is stopped too (joined when called from another thread). */
PARLEY_API void parley_ws_free(parley_ws *ws);

#ifdef __cplusplus
}
#endif
#endif
