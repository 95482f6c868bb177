/*
 * A Redis cluster adapter for the Socket.IO server, wire-compatible with
 * @socket.io/redis-adapter 8.x (the classic Pub/Sub adapter) and
 * @socket.io/redis-emitter 5.x: Parley nodes and Node socket.io servers
 * share one Redis and deliver each other's broadcasts (docs/CLUSTER.md).
 *
 * Per namespace <nsp> (key prefix "socket.io"):
 *   PSUBSCRIBE socket.io#<nsp>#*          broadcasts (envelope.h)
 *   SUBSCRIBE  socket.io-request#<nsp>#   requests (JSON): remote join,
 *              socket.io-response#<nsp>#  leave, disconnect, fetch,
 *              socket.io-response#<nsp>#<uid>#  serverSideEmit, ...
 * Being subscribed to the request channel is what makes this node count
 * in PUBSUB NUMSUB, the adapters' server count.
 *
 * A broadcast is delivered locally first, then published; what arrives
 * from another node is delivered locally only; our own messages (our uid)
 * are dropped. Without Redis (down, unreachable) the server goes on
 * serving its own clients: broadcasts are delivered locally and counted
 * as publish failures; both connections are tried again with backoff and
 * the subscriptions made again.
 *
 * Everything runs on the server's loop thread.
 */
#ifndef PARLEY_CLUSTER_ADAPTER_H
#define PARLEY_CLUSTER_ADAPTER_H

#include <stdint.h>

#include "base/metrics.h"
#include "cluster/envelope.h"
#include "parley/server.h"

typedef struct parley_cluster pcluster; /* parley_cluster in parley/server.h */

typedef struct pcluster_opts {
    const char *url;    /* redis://[[user]:pass@]host[:port][/db] */
    const char *prefix; /* channel key prefix; default "socket.io" (the adapter's `key`) */
    const char *ca_file; /* rediss://: CA bundle for the server's certificate; NULL: system store */
    penv_limits lim;    /* inbound messages (penv_limits_init by pcluster_opts_init) */
    /* serverSideEmit from another node: event and its arguments (a JSON
     * array, len bytes, NUL-terminated). Optional. */
    void (*on_server_side_emit)(parley_nsp *n, const char *event, const char *args_json, size_t len,
                                const char *ack_id, void *user);
    void *user;
} pcluster_opts;

void pcluster_opts_init(pcluster_opts *o);

typedef struct pcluster_stats {
    uint64_t published;        /* broadcasts published */
    uint64_t publish_failures; /* broadcasts that could not be published (Redis down, errors) */
    uint64_t received;         /* broadcasts from other nodes delivered locally */
    uint64_t own;              /* our own broadcasts coming back (dropped) */
    uint64_t malformed;        /* channel messages refused (malformed, over a limit, foreign) */
    uint64_t requests;         /* requests from other nodes applied */
    uint64_t unsupported;      /* requests of a kind not handled (ignored) */
    uint64_t reconnects;       /* connections to Redis lost or failed */
    unsigned nodes; /* servers subscribed to the "/" request channel (PUBSUB NUMSUB), 0 = unknown */
    bool pub_up, sub_up;
} pcluster_stats;

/* Creates the adapter and installs it on srv (parley_server__set_adapter);
 * connecting starts at once and goes on in the background.
 * PARLEY_EINVAL (*why says why: a bad URL), PARLEY_ENOMEM. */
int pcluster_new(parley_server *srv, const pcluster_opts *o, pcluster **out, const char **why);

/* Uninstalls the adapter and closes the connections. Before freeing the
 * server; the memory goes when the connections' handles are closed. */
void pcluster_free(pcluster *c);

void pcluster_get_stats(const pcluster *c, pcluster_stats *out);

/* A metrics collector (pmx_register(reg, pcluster_collect, c)). */
void pcluster_collect(pmx_out *o, void *user);

/* The node uid in the envelopes (NUL-terminated). */
const char *pcluster_uid(const pcluster *c);

/* serverSideEmit: event with args_json (a JSON array or NULL, no binary)
 * to the other servers of namespace n. 0, PARLEY_EINVAL, PARLEY_ECLOSED
 * (Redis down: counted as a publish failure), PARLEY_ENOMEM. */
int pcluster_server_side_emit(pcluster *c, parley_nsp *n, const char *event, const char *args_json);

/* Node-private channels: Parley nodes talking among themselves (e.g.
 * "parley#presence#/chat#" for presence across nodes) on a channel
 * outside the adapter's prefix, which Node.js socket.io servers sharing
 * the Redis neither subscribe to nor receive. Every message published on
 * one reaches every node subscribed to it, this one included (the
 * callback must drop its own). At most PCLUSTER_PRIVATE_MAX channels;
 * subscribed again after a reconnection. The message is valid during the
 * callback only. */
#define PCLUSTER_PRIVATE_MAX 4
typedef void (*pcluster_private_fn)(const char *msg, size_t len, void *user);

/* 0, PARLEY_EINVAL (no name, under the adapter's prefix, already
 * subscribed), PARLEY_EFULL. Subscribes at once when connected. */
int pcluster_private_subscribe(pcluster *c, const char *channel, pcluster_private_fn fn, void *user);

/* Stops the callbacks for channel (nothing when not subscribed). */
void pcluster_private_unsubscribe(pcluster *c, const char *channel);

/* PUBLISH msg on channel. 0, PARLEY_ECLOSED (Redis down), PARLEY_ENOMEM;
 * a failure is counted as a publish failure. */
int pcluster_private_publish(pcluster *c, const char *channel, const char *msg, size_t len);

#endif
