/*
 * A Redis connection on Parley's own loop: RESP (cluster/resp.h) over a
 * Parley connection (net/net.h), so it gets the loop's write batching,
 * output limit, connect timeout and deferred close. AUTH and SELECT from
 * the URL are sent first; replies before the connection is ready are
 * checked here, the rest go to the owner. A lost connection (or one that
 * never came up) is tried again after an exponential backoff with jitter
 * (client/backoff.h), for ever, until predis_free.
 *
 * Replies are handed over in order; the owner matches them to its
 * commands (Pub/Sub pushes on a subscriber connection, integers for
 * PUBLISH, an array for PUBSUB NUMSUB).
 */
#ifndef PARLEY_CLUSTER_REDIS_CONN_H
#define PARLEY_CLUSTER_REDIS_CONN_H

#include <stdbool.h>
#include <stddef.h>

#include "client/backoff.h"
#include "cluster/resp.h"
#include "net/net.h"

typedef struct predis_url {
    char host[256];
    unsigned port;
    char user[128]; /* "" for the default user */
    char pass[256]; /* "" for no AUTH */
    unsigned db;
    bool tls; /* rediss:// */
} predis_url;

/* redis[s]://[[user]:pass@]host[:port][/db] (rediss: TLS, the server's
 * certificate checked against the host name). 0 or PARLEY_EINVAL. */
int predis_url_parse(const char *url, predis_url *out, const char **why);

typedef struct predis predis;

typedef struct predis_cbs {
    /* Connected, AUTH and SELECT done: the owner (re)sends its set-up
     * (e.g. its subscriptions). */
    void (*on_ready)(predis *r, void *user);
    /* A reply (or push) after ready. Valid during the call. */
    void (*on_reply)(predis *r, const presp_reply *rep, void *user);
    /* The connection went down (err why); another attempt is scheduled. */
    void (*on_down)(predis *r, int err, void *user);
} predis_cbs;

typedef struct predis_opts {
    const char *name; /* for logs: "publisher", "subscriber" */
    size_t max_bulk;  /* largest bulk string accepted (default 1 MiB + 64 KiB) */
    size_t max_out;   /* output backlog before the connection is dropped (default 8 MiB) */
    uint32_t connect_timeout_ms; /* default 5000 */
    uint32_t retry_min_ms;       /* default 100 */
    uint32_t retry_max_ms;       /* default 5000 */
    ptls_ctx *tls;               /* client context for rediss:// (borrowed); NULL: plain */
} predis_opts;

/* Starts connecting. The url is copied. 0 or PARLEY_ENOMEM. */
int predis_new(parley_loop *loop, const predis_url *url, const predis_opts *o,
               const predis_cbs *cbs, void *user, predis **out);

/* True when ready (commands can be sent). */
bool predis_ready(const predis *r);

/* Queues a command. PARLEY_ECLOSED when not ready, PARLEY_EFULL when the
 * backlog is over the limit (the connection is then being dropped),
 * PARLEY_ENOMEM. */
int predis_command(predis *r, size_t argc, const char *const *argv, const size_t *lens);

/* Drops the connection now (e.g. a protocol violation in a reply seen by
 * the owner); it is tried again later. */
void predis_drop(predis *r, int err);

/* Attempts made since the last ready connection. */
unsigned predis_attempts(const predis *r);

/* Closes and frees (the memory goes when the handle is closed). Safe from
 * inside the callbacks. */
void predis_free(predis *r);

#endif
