/*
 * Parley: real-time communication in C.
 *
 * This header holds what every part of the public API shares: the export
 * macro, the error codes, logging, and the event loop handle.
 *
 * Thread rules: unless a function says otherwise, it must be called on the
 * thread that runs the loop it belongs to. Functions that take no loop
 * (parley_strerror, parley_version, parley_version_number, parley_log_set,
 * parley_alloc, parley_strdup, parley_free) are safe from any thread.
 */
#ifndef PARLEY_PARLEY_H
#define PARLEY_PARLEY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && defined(PARLEY_BUILDING)
#define PARLEY_API __attribute__((visibility("default")))
#else
#define PARLEY_API
#endif

#define PARLEY_VERSION_MAJOR 0
#define PARLEY_VERSION_MINOR 1
#define PARLEY_VERSION_PATCH 0
/* MAJOR*10000 + MINOR*100 + PATCH: 0.1.0 is 100. */
#define PARLEY_VERSION_NUMBER                                                                      \
    (PARLEY_VERSION_MAJOR * 10000 + PARLEY_VERSION_MINOR * 100 + PARLEY_VERSION_PATCH)

/* Error codes. Every fallible function returns 0 on success or one of these
 * (negative) values. New codes may be added; treat unknown ones as generic
 * failures and print them with parley_strerror(). */
typedef enum parley_err {
    PARLEY_OK = 0,
    PARLEY_ENOMEM = -1,       /* out of memory */
    PARLEY_EINVAL = -2,       /* invalid argument */
    PARLEY_EPROTO = -3,       /* the peer violated the protocol */
    PARLEY_ELIMIT = -4,       /* a configured limit was exceeded */
    PARLEY_EAGAIN = -5,       /* more input needed, or try again later */
    PARLEY_ECLOSED = -6,      /* the connection is closed or closing */
    PARLEY_ETIMEDOUT = -7,    /* a deadline passed */
    PARLEY_ECONNREFUSED = -8, /* the peer refused the TCP connection */
    PARLEY_EDNS = -9,         /* the host name did not resolve */
    PARLEY_ETLS = -10,        /* TLS failed (handshake, certificate, record) */
    PARLEY_EHANDSHAKE = -11,  /* the peer rejected or botched the handshake */
    PARLEY_EIO = -12,         /* an operating-system I/O error */
    PARLEY_ESTATE = -13,      /* the call is not valid in the current state */
    PARLEY_EFULL = -14,       /* a queue or output buffer is full */
    PARLEY_EURL = -15,        /* the URL is malformed or has an unsupported scheme */
    PARLEY_EPROXY = -16,      /* the HTTP proxy refused the tunnel (or failed) */
    PARLEY_EPROXYAUTH = -17,  /* the HTTP proxy wants credentials (407) */
} parley_err;

/* Human-readable text for an error code; never NULL, static storage. */
PARLEY_API const char *parley_strerror(int err);

/* Library version as "MAJOR.MINOR.PATCH"; static storage. */
PARLEY_API const char *parley_version(void);

/* The library's version as a number, PARLEY_VERSION_NUMBER of the headers
 * it was built with (compare it with yours to detect a mismatch at run
 * time). */
PARLEY_API int parley_version_number(void);

/* Memory that crosses the API. Strings the library takes ownership of (the
 * auth callback of parley_sock_opts, the token callback of
 * parley_chat_opts) must come from parley_alloc or parley_strdup (or
 * malloc: these are malloc and free), and the library releases them with
 * parley_free. A binding from another language, whose runtime has its own
 * allocator, uses these rather than guessing which C library's malloc the
 * library was linked with. Strings the library hands out for the caller
 * to free (parley_store_get) are freed with parley_free. parley_alloc(0) returns a unique pointer;
 * parley_strdup(NULL) returns NULL; parley_free(NULL) does nothing. */
PARLEY_API void *parley_alloc(size_t size);
PARLEY_API char *parley_strdup(const char *s);
PARLEY_API void parley_free(void *p);

/* Option structs (parley_ws_opts, parley_client_opts, parley_sock_opts,
 * parley_server_opts, parley_chat_opts, parley_chat_send_opts,
 * parley_store_opts) begin with `size_t size`, which their _opts_init sets
 * to sizeof the struct. X_opts_init(&o) is a macro for
 * X_opts_init_size(&o, sizeof o): the exported function writes no more
 * than the caller's struct (the defaults of the fields it has), so a
 * program built against an older header may call a newer library's. The
 * library reads only the first `size` bytes and
 * takes the defaults for the rest, so a program compiled against an older
 * header (a smaller struct) keeps working with a newer library, and a
 * binding in another language may declare a prefix of the struct. A size of
 * 0, or one smaller than the size member plus the struct's first field, is
 * refused with PARLEY_EINVAL: always call the _opts_init. */

/* Logging. The library logs through one process-wide sink: by default,
 * messages at PARLEY_LOG_WARN and above go to stderr. This is the only
 * process-wide setting in the library; set it before starting loops. */
typedef enum parley_log_level {
    PARLEY_LOG_DEBUG = 0,
    PARLEY_LOG_INFO = 1,
    PARLEY_LOG_WARN = 2,
    PARLEY_LOG_ERROR = 3,
    PARLEY_LOG_OFF = 4,
} parley_log_level;

/* A log sink. `msg` is one line without a trailing newline, valid only
 * during the call. May be called from any thread that runs a loop. */
typedef void (*parley_log_fn)(parley_log_level level, const char *msg, void *user);

/* Sets the minimum level and the sink (NULL = stderr). */
PARLEY_API void parley_log_set(parley_log_level min_level, parley_log_fn fn, void *user);

/* An event loop. A loop is either owned (created by parley_loop_new, run by
 * parley_loop_run) or wraps a libuv loop the application drives itself
 * (parley_loop_wrap_uv). Every connection, server and client belongs to one
 * loop and its callbacks run on the thread that runs that loop. Loops share
 * no state: two loops in one process are independent. */
typedef struct parley_loop parley_loop;

/* Creates a loop that owns its libuv loop. Returns NULL when out of memory. */
PARLEY_API parley_loop *parley_loop_new(void);

/* Wraps an existing `uv_loop_t *` (passed as void * so that this header does
 * not require uv.h). The application keeps running that loop. */
PARLEY_API parley_loop *parley_loop_wrap_uv(void *uv_loop);

/* Returns the underlying `uv_loop_t *`. */
PARLEY_API void *parley_loop_uv(parley_loop *loop);

/* Runs the loop until nothing is left to do or parley_loop_stop is called.
 * Returns 0, or PARLEY_EINVAL for a wrapped loop (drive it yourself).
 * The calling thread does the loop's socket writes: a write to a peer that
 * has gone raises SIGPIPE there, so ignore or block SIGPIPE on that thread
 * (as for any socket program) or the process ends. */
PARLEY_API int parley_loop_run(parley_loop *loop);

/* Makes parley_loop_run return after the current iteration. Loop thread only. */
PARLEY_API void parley_loop_stop(parley_loop *loop);

/* Runs an owned loop on a thread of its own, until parley_loop_join. All
 * callbacks of objects on this loop then run on that thread; the clients'
 * public calls may be made from any thread. That thread blocks SIGPIPE
 * (a peer that goes away fails the write with EPIPE instead of ending the
 * process); the process's signal dispositions are not changed.
 * 0, PARLEY_EINVAL (a wrapped loop), PARLEY_ESTATE (already started),
 * PARLEY_ENOMEM. */
PARLEY_API int parley_loop_start(parley_loop *loop);

/* Stops a loop started with parley_loop_start and waits for its thread to
 * end. Call from another thread, after freeing (or closing) what runs on
 * the loop. */
PARLEY_API void parley_loop_join(parley_loop *loop);

/* Frees the loop. Every object created on it must have been freed and the
 * loop run until their handles closed. For a wrapped loop the libuv loop is
 * left alone (but this call runs it briefly to close the loop's own handles). */
PARLEY_API void parley_loop_free(parley_loop *loop);

#ifdef __cplusplus
}
#endif
#endif
