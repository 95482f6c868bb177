/*
 * A keep-alive HTTP/1.1 client connection for Engine.IO long-polling: one
 * request at a time to one host, over pconn (TLS optional), reusing the
 * connection while the server keeps it alive and opening a new one when it
 * does not. Responses are read with codec/http.h: Content-Length, chunked
 * and until-close bodies, bounded by max_body.
 *
 * The completion callback runs once per request, on the loop thread, with
 * err 0 and the status and decoded body (writable, valid during the call),
 * or with a negative parley_err when the connection failed first. It may
 * start the next request or close the client.
 */
#ifndef PARLEY_CLIENT_HTTP_CLIENT_H
#define PARLEY_CLIENT_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec/http.h"
#include "net/net.h"

typedef struct hclient hclient;

typedef void (*hclient_cb)(hclient *h, int err, int status, uint8_t *body, size_t len, void *user);

typedef struct hclient_opts {
    const char *host; /* name or IP literal to connect to */
    unsigned port;
    const char *host_header;     /* Host header value */
    ptls_ctx *tls;               /* borrowed; NULL = plain */
    const pproxy *proxy;         /* tunnel through it (copied); NULL = direct */
    uint32_t connect_timeout_ms; /* 0 = none */
    uint64_t max_body;           /* decoded response body limit (0 = 16 MiB) */
} hclient_opts;

/* NULL when out of memory or a string is too long. */
hclient *hclient_new(parley_loop *loop, const hclient_opts *o, hclient_cb cb, void *user);

/* Starts a request; body may be NULL (then no Content-Length is sent
 * unless body_len > 0). PARLEY_ESTATE while one is outstanding,
 * PARLEY_EINVAL for bad header or target characters, PARLEY_ENOMEM. A
 * connection failure is reported through the callback. */
int hclient_request(hclient *h, const char *method, const char *target, const http_header *hdrs,
                    size_t nhdrs, const void *body, size_t body_len);

/* A request is outstanding. */
bool hclient_busy(const hclient *h);

/* Detaches: no callback runs afterwards. An outstanding request may finish
 * for up to linger_ms (so that a last POST reaches the server); then the
 * connection is closed and the memory freed. Safe inside the callback. */
void hclient_close(hclient *h, uint32_t linger_ms);

/* *slot is set to NULL when the client's memory goes (lets an owner keep
 * track of a lingering client it closed). */
void hclient_set_slot(hclient *h, hclient **slot);

/* Closes at once, also a client lingering after hclient_close. */
void hclient_abort(hclient *h);

#endif
