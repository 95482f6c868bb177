/*
 * Network layer: the loop context, byte-stream connections over TCP with
 * optional TLS (OpenSSL memory BIOs), listeners and outbound connects.
 *
 * Reads: the loop owns one 64 KiB read buffer that every connection reads
 * into; only bytes a consumer leaves unconsumed (a partial frame) are copied
 * into the connection's own input buffer, and further reads then land there
 * directly. An idle connection holds no buffers.
 *
 * Writes: pconn_write() appends to the connection's output buffer and puts
 * the connection on the loop's flush list; the list is flushed once per loop
 * iteration (after I/O callbacks and again before the loop blocks), so
 * everything a connection produced during one iteration leaves in one
 * uv_try_write (or one uv_write when the socket is full). A connection
 * whose unsent output exceeds its limit when a new write arrives (a peer
 * that does not read) is closed with a logged reason; a single write may
 * exceed the limit, so memory stays below the limit plus one message.
 *
 * Lifetime: pconn_close() marks the connection; the handle is closed at a
 * safe point and on_close runs from libuv's close callback, after which the
 * owner frees the memory. Calling pconn_write/pconn_close from inside any
 * callback, including on the same connection, is safe.
 */
#ifndef PARLEY_NET_NET_H
#define PARLEY_NET_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "base/buf.h"
#include "base/ratelimit.h"
#include "base/theap.h"
#include "parley/parley.h"

#define PNET_READ_BUF_SIZE (64 * 1024)

typedef struct pconn pconn;
typedef struct pdefer pdefer;
typedef struct ptls_ctx ptls_ctx;
typedef struct ptls ptls;

struct parley_loop {
    uv_loop_t *uv;
    uv_loop_t own;
    bool owned;
    uv_timer_t timer;     /* drives `timers` */
    uint64_t timer_due;   /* deadline the uv timer is armed for; UINT64_MAX = idle */
    uv_prepare_t prepare; /* flush before blocking in poll */
    uv_check_t check;     /* flush after I/O callbacks */
    ptimer_heap timers;
    uint8_t *rbuf; /* shared read buffer (ciphertext or plaintext) */
    uint8_t *pbuf; /* shared TLS plaintext buffer */
    pconn *flush_head;
    pdefer *defer_head;
    unsigned nconns;  /* live connections (for diagnostics and shutdown) */
    uint8_t rnd[256]; /* CSPRNG bytes, handed out from the end */
    unsigned rnd_left;
    /* Calls from other threads (ploop_call). */
    uv_async_t async;
    uv_mutex_t mu;
    uv_cond_t cond;
    struct pcall *calls;
    uv_thread_t loop_thread; /* the thread that runs the loop */
    uv_thread_t own_thread;  /* parley_loop_start */
    bool started;
    bool stopping;
    /* Lines a peer can cause (TLS errors, output limits, WebSocket
     * failures, accept errors such as EMFILE): summaries. */
    plog_limit log_tls, log_out, log_ws, log_accept;
};

/* True on the thread that runs the loop. */
bool ploop_on_thread(parley_loop *l);

/* Runs fn(arg) on the loop's thread and returns when it has run: directly
 * when called on that thread, else through the loop's async handle (the
 * caller blocks until the loop gets to it). 0, or PARLEY_ECLOSED when the
 * loop is shutting down (fn not run). */
int ploop_call(parley_loop *l, void (*fn)(void *arg), void *arg);

/* Milliseconds on the loop clock (libuv's cached time). */
static inline uint64_t ploop_now(parley_loop *l)
{
    return uv_now(l->uv);
}

/* n (<= 64) bytes from the CSPRNG through a per-loop pool (masking keys:
 * one RAND_bytes call per 256 bytes instead of one per frame). The bytes
 * are valid until the next call. NULL if the CSPRNG fails. */
const uint8_t *ploop_random(parley_loop *l, unsigned n);

/* Arms t to fire `delay_ms` from now on the loop's timer heap. */
int ploop_timer_start(parley_loop *l, ptimer *t, uint64_t delay_ms);
void ploop_timer_stop(parley_loop *l, ptimer *t);

/* Work to run once at the end of the current loop iteration, before the
 * output of the iteration is flushed (e.g. answer a long-poll with
 * everything queued during the iteration). A pdefer is embedded in its
 * owner; queuing it twice is a no-op. */
struct pdefer {
    pdefer *next;
    void (*cb)(pdefer *d);
    bool queued;
};
void ploop_defer(parley_loop *l, pdefer *d);
void ploop_defer_cancel(parley_loop *l, pdefer *d);

/* Runs deferred work and every pending flush now. */
void ploop_flush(parley_loop *l);

typedef struct pconn_cbs {
    /* Plaintext arrived in data[0, len) (writable). Returns how many bytes
     * were consumed; the rest is kept and presented again, at the start,
     * with what arrives next. */
    size_t (*on_data)(pconn *c, uint8_t *data, size_t len);
    /* Outbound connections: TCP (and TLS) established (status 0) or failed
     * (negative parley_err). After a failure the connection closes. */
    void (*on_connect)(pconn *c, int status);
    /* The peer finished sending (EOF or TLS close_notify). Optional: when
     * NULL the connection is closed. */
    void (*on_eof)(pconn *c);
    /* The handle is closed: no more callbacks; the owner may free `c`.
     * `err` is 0 for a close we asked for, else why the connection died. */
    void (*on_close)(pconn *c, int err);
} pconn_cbs;

enum {
    PCONN_CLOSING = 1u << 0,    /* pconn_close called */
    PCONN_CLOSED = 1u << 1,     /* uv_close issued */
    PCONN_FLUSH_LIST = 1u << 2, /* on the loop's flush list */
    PCONN_WRITING = 1u << 3,    /* a uv_write is in flight */
    PCONN_LINGER = 1u << 4,     /* close once output is flushed */
    PCONN_CONNECTED = 1u << 5,  /* TCP (and TLS) established */
    PCONN_READING = 1u << 6,
    PCONN_IN_DATA = 1u << 7,    /* inside on_data */
    PCONN_EOF = 1u << 8,
    PCONN_HAS_TCP = 1u << 9,    /* tcp handle initialised */
    PCONN_REOPENING = 1u << 10, /* connect: old socket closing before the next address */
    PCONN_SHUT_SENT = 1u << 11, /* lingering: FIN sent, draining input until EOF */
    PCONN_REDELIVER = 1u << 12, /* hand buffered input to on_data again */
    PCONN_OWNER1 = 1u << 24,    /* bits 24-31 belong to the owner */
};

/* 328 bytes, 248 of them libuv's uv_tcp_t: an idle connection holds no
 * buffers, and what only some connections need (TLS, shared output, an
 * in-flight write, connect state, a timer) lives in `x`, allocated on
 * first use. */
struct pconn {
    uv_tcp_t tcp;
    parley_loop *loop;
    const pconn_cbs *cbs; /* owners find themselves with PARLEY_CONTAINER_OF */
    struct pconn_ext *x;
    pbuf in;  /* unconsumed plaintext input */
    pbuf out; /* output not yet handed to the kernel (plaintext when TLS) */
    pconn *flush_next;
    uint32_t max_out; /* limit on unsent output bytes */
    uint32_t in_hint; /* capacity the next read should have (large frames) */
    uint32_t flags;
    int close_err;
};

/* Initialises c on loop (memory owned by the caller, often embedded in a
 * bigger struct). max_out 0 = default (8 MiB). */
void pconn_init(pconn *c, parley_loop *loop, const pconn_cbs *cbs, size_t max_out);

/* Queues bytes for sending. PARLEY_ECLOSED after close, PARLEY_ENOMEM, or
 * PARLEY_EFULL when the unsent backlog is already over the limit (the
 * connection is then being closed and the reason logged). */
int pconn_write(pconn *c, const void *data, size_t len);

/* Queues bytes of a shared block (a broadcast encoded once for many
 * connections): the connection takes a reference, no copy is made, and
 * the block goes out in order with the rest in one writev. Errors as for
 * pconn_write. */
int pconn_write_shared(pconn *c, pshared *blk, size_t off, size_t len);

/* Reserves room for n bytes at the end of the output buffer and returns a
 * pointer to it (NULL on error, as for pconn_write); commit with
 * pconn_commit. Lets encoders write frames in place. */
uint8_t *pconn_reserve(pconn *c, size_t n);
void pconn_commit(pconn *c, size_t n);

/* Direct access to the output buffer for encoders that append in place
 * (frames, compressed payloads): returns NULL when the connection is
 * closing or its backlog is over the limit (it is then being closed).
 * After appending, call pconn_wrote(). */
pbuf *pconn_out(pconn *c);
/* Schedules the flush of what was appended through pconn_out(). */
int pconn_wrote(pconn *c);

/* Unsent output in bytes (queued and in flight). */
size_t pconn_pending(const pconn *c);

/* Hints that the next read should have room for `total` bytes of input in
 * all (a large frame whose header has been seen). */
void pconn_expect(pconn *c, size_t total);

/* Closes. graceful: send what is queued first (and TLS close_notify), then
 * FIN, and read and drop input until the peer closes too (so no RST
 * destroys what was sent); at most 5 s later the socket is closed anyway.
 * Otherwise close at once, dropping output. err is reported to on_close. */
void pconn_close(pconn *c, bool graceful, int err);

/* Hands the buffered, unconsumed input to on_data again at the end of the
 * loop iteration (a consumer that returned 0 while it waited for
 * something else, e.g. a deferred HTTP response, calls this when ready). */
void pconn_redeliver(pconn *c);

/* Stops / resumes reading (backpressure on the input side). */
void pconn_pause(pconn *c);
void pconn_resume(pconn *c);

/* Peer address as text "ip:port" (buffer of 64 bytes). */
void pconn_peer_name(pconn *c, char *out, size_t cap);

/* TLS. */
typedef struct ptls_client_opts {
    const char *ca_file; /* NULL: system store */
    bool insecure;       /* skip verification (tests/dev only) */
} ptls_client_opts;

/* Server context from PEM certificate (chain) and key files. On failure
 * returns NULL and writes a reason into err (256 bytes). */
ptls_ctx *ptls_ctx_server(const char *cert_file, const char *key_file, char *err, size_t errcap);
/* Replaces the certificate chain and key of a server context (e.g. on
 * SIGHUP): a new OpenSSL context is built from the files and, only when
 * that succeeded, used for the connections accepted from then on;
 * connections already open go on with the old one, which lives until the
 * last of them closes. On failure nothing changes and err (256 bytes)
 * says why. Call on the thread of the loop(s) that accept with ctx. 0,
 * PARLEY_EINVAL (a client context), PARLEY_ETLS (unreadable or invalid
 * files, key not matching the certificate). */
int ptls_ctx_server_reload(ptls_ctx *ctx, const char *cert_file, const char *key_file, char *err,
                           size_t errcap);
ptls_ctx *ptls_ctx_client(const ptls_client_opts *o, char *err, size_t errcap);
void ptls_ctx_free(ptls_ctx *ctx);

/* Listener. */
typedef struct plistener plistener;
/* Accept callback: must return an initialised (pconn_init) connection for
 * the new client, or NULL to refuse it. The listener then accepts into it
 * and starts reading (and the TLS handshake when the listener has TLS). */
typedef pconn *(*plisten_accept_fn)(plistener *l, void *user);

/* Optional admission check after accept, before any read or TLS work:
 * peer is the client's address. Returning false closes the connection at
 * once (its on_close runs with PARLEY_ELIMIT). */
typedef bool (*plisten_admit_fn)(plistener *l, pconn *c, const struct sockaddr *peer, void *user);
void plisten_set_admit(plistener *l, plisten_admit_fn admit);

/* Binds and listens on host:port (port 0 = any). tls may be NULL. */
int plisten(parley_loop *loop, const char *host, unsigned port, ptls_ctx *tls,
            plisten_accept_fn accept, void *user, plistener **out);
/* Listens on a socket made elsewhere (plisten_socket, or inherited from a
 * parent process): fd is a bound TCP socket, listening or not; the
 * listener owns it from here on, also when this fails. */
int plisten_fd(parley_loop *loop, int fd, ptls_ctx *tls, plisten_accept_fn accept, void *user,
               plistener **out);
/* A TCP socket bound to host:port (port 0 = any), not yet listening,
 * close-on-exec, with SO_REUSEADDR and, when reuseport, SO_REUSEPORT (so
 * that several processes can each listen on the same port and the kernel
 * spreads new connections over them). 0 and *fd, or a parley_err. */
int plisten_socket(const char *host, unsigned port, bool reuseport, int *fd);
/* The port a socket is bound to, or 0. */
unsigned psocket_port(int fd);
/* The bound port (useful with port 0). */
unsigned plistener_port(plistener *l);
/* Stops listening and frees the listener (handle closed asynchronously). */
void plistener_close(plistener *l);

/* Binds an outbound connection to a local address before pconn_connect
 * (any port). 0 or PARLEY_EINVAL. */
int pconn_bind_local(pconn *c, const char *ip);

/* Outbound connection: resolves host, connects (trying each address),
 * optionally runs a TLS client handshake with SNI and hostname check, and
 * calls cbs->on_connect. timeout_ms covers all of it (0 = none). c must
 * have been pconn_init'ed. tls may be NULL. */
int pconn_connect(pconn *c, const char *host, unsigned port, ptls_ctx *tls, uint64_t timeout_ms);

/* An HTTP proxy to tunnel through (CONNECT). */
#define PNET_PROXY_HEAD_MAX 8192 /* the proxy's response head, at most */
typedef struct pproxy {
    char host[256];
    unsigned port;
    char auth[768]; /* Proxy-Authorization value ("Basic ...") or "" */
} pproxy;

/* pconn_connect through proxy (NULL = direct): connects to the proxy,
 * sends CONNECT host:port, reads its response head (at most
 * PNET_PROXY_HEAD_MAX bytes), and on a 2xx runs the session (TLS with
 * host's name when tls) inside the tunnel. Failures: PARLEY_EPROXYAUTH
 * (407), PARLEY_EPROXY (any other answer, or none), PARLEY_EPROTO (a head
 * too long or bytes after it); pconn_proxy_status tells the status. */
int pconn_connect_via(pconn *c, const pproxy *proxy, const char *host, unsigned port,
                      ptls_ctx *tls, uint64_t timeout_ms);
/* The proxy's status code for the last connect (0 = none), readable in
 * on_connect. */
int pconn_proxy_status(const pconn *c);

#endif
