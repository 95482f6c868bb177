/*
 * The messaging service, server half: the protocol of docs/PROTOCOL.md
 * ("Messaging") on a parley_server, over the namespace MSG_NAMESPACE, with
 * the store (services/store/mstore.h), JWT identities (jwt.h) and media files
 * (media.h), plus the HTTP routes POST /media and GET /media/<id>.
 *
 * Request handling: every handler validates, reads and writes the store
 * (the writes of one loop iteration share one transaction) and queues its
 * answers; at the end of the iteration the batch is committed and then
 * the queued acknowledgements and broadcasts go out in order. A failed
 * commit turns the acknowledgements of that batch into `internal` errors
 * and drops its broadcasts. After the broadcasts, sync requests are
 * answered and their sockets start receiving live events, so that every
 * message reaches a socket exactly once (see "Live delivery starts with
 * sync" in the protocol).
 *
 * Presence (docs/PROTOCOL.md, "Presence") lives in the same service: every
 * authenticated socket is a device of its user; per-user aggregates are
 * broadcast after the iteration's commit, coalesced per user.
 *
 * Threads: the loop's thread only, like the server it is attached to.
 */
#ifndef PARLEY_SERVICES_MESSAGING_H
#define PARLEY_SERVICES_MESSAGING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/metrics.h"
#include "parley/server.h"
#include "services/msg_schema.h"
#include "services/server/quota.h"

typedef struct msg_service msg_service;

/* A seam for urgent messages, called for
 * every recipient of an urgent message once the message is committed,
 * whether or not the recipient is online (live delivery happens anyway;
 * the notifier decides whether to push). On the loop thread: it must not
 * block (queue the work). Pointers are valid during the call. */
typedef struct msg_notice {
    const char *recipient; /* user id */
    bool online;           /* the recipient has a socket that receives live events */
    const msg_message
        *message;             /* id, seq, ts, conversation, from, type, priority (content unset) */
    const char *message_json; /* the Message object as sent in new_message */
    size_t message_len;
} msg_notice;

typedef struct msg_notifier {
    void (*urgent)(const msg_notice *n, void *user); /* NULL: urgent is like high */
    void *user;
} msg_notifier;

typedef struct msg_service_opts {
    const char *data_dir;      /* database and media; default "./data" (created) */
    /* The store (services/store/mstore.h): NULL = "sqlite:<data_dir>/messages.db";
     * "postgresql://..." = one database shared by every node of a cluster
     * (docs/CLUSTER.md). */
    const char *store;
    /* Media files: NULL = <data_dir>/media. With a PostgreSQL store every
     * node must see the same directory, and it is opened as shared. */
    const char *media_dir;
    const uint8_t *jwt_secret; /* HS256 key; NULL: tokens cannot be checked */
    size_t jwt_secret_len;
    uint32_t jwt_leeway_ms;      /* clock skew allowed for exp/nbf; default 30000 */
    /* Tokens verified with this key set (RS256/ES256 public keys, an
     * HS256 secret; services/jwt.h) instead of jwt_secret: the service
     * takes a reference. Its own leeway and maximum lifetime apply. */
    struct jwt_keyset *jwt_keys;
    uint32_t jwt_max_lifetime_s; /* with jwt_secret: longest token lifetime; 0 = none */
    bool dev_auth;               /* INSECURE: accept {"user": id} without a token */
    bool full_sync;              /* fsync commits and media (power-loss safe); default off */
    size_t max_media_bytes;      /* largest upload; default 8 MiB */
    msg_limits limits;           /* text and field limits (msg_limits_init) */
    uint32_t typing_timeout_ms;  /* typing expires without a refresh; default 5000 */
    uint32_t typing_throttle_ms; /* relayed typing changes per user and conversation; default 500 */
    uint32_t low_delay_ms;       /* live delivery of low-priority messages batched; default 500 */
    uint32_t away_after_ms;      /* an idle online device counts as away; default 300000, 0 off */
    uint32_t presence_interval_ms; /* presence updates per user at most this often; default 1000 */
    /* Called in addition to the built-in notifications (an urgent message
     * always raises a notification for each recipient; see "Notifications"
     * in docs/PROTOCOL.md). */
    msg_notifier notifier;
    /* POST /api/notifications: accepted API keys (copied as digests);
     * none: the route answers 503. */
    const char *const *api_keys;
    size_t n_api_keys;
    const char *tz_dir; /* zoneinfo for quiet hours; NULL: /usr/share/zoneinfo */
    mquota_opts quota;  /* rate limits and quotas (mquota_opts_init's defaults) */
    /* Origins allowed to use /media and /api/notifications from a browser
     * (CORS preflight, and a foreign Origin refused with 403): "*", or a
     * comma-separated list; NULL = no CORS, and no Origin check. */
    const char *allowed_origins;
    /* The push webhook (services/server/push.h; commit/user are the service's):
     * NULL = off. Copied. */
    const struct push_opts *push;
    /* Presence across nodes (msg_service_set_cluster; docs/CLUSTER.md,
     * "Presence across nodes"): each node says it is alive every
     * presence_heartbeat_ms (0: 1000); a node not heard from for
     * presence_node_timeout_ms (0: 3000) is dead and its devices are
     * dropped. presence_remote_users: the most (node, user) entries kept
     * for the other nodes in all (0: 200000, some 50 MB with the records
     * they make; beyond, reports of new users are ignored and counted). */
    uint32_t presence_heartbeat_ms;
    uint32_t presence_node_timeout_ms;
    uint32_t presence_remote_users;
} msg_service_opts;

void msg_service_opts_init(msg_service_opts *o);

/* Attaches the service to srv: namespace MSG_NAMESPACE and the /media
 * routes. Opens (creating) the store under o->data_dir. Options and the
 * secret are copied. Errors: PARLEY_EINVAL, PARLEY_EIO (data directory or
 * database unusable, e.g. locked by another server), PARLEY_ENOMEM. */
int msg_service_new(parley_server *srv, const msg_service_opts *o, msg_service **out);

/* Commits what is pending and frees the service; after the server has
 * shut down (its sockets are gone) and before it is freed. */
void msg_service_free(msg_service *m);
/* parley_cluster_opts.on_server_side_emit for a server running the
 * service (user: the msg_service): the service's own events between
 * nodes; others are ignored. */
void msg_service_on_server_side_emit(parley_nsp *n, const char *event, const char *args_json,
                                     size_t args_len, const char *ack_id, void *user);

/* Replaces the key set tokens are verified with (a reload, e.g. on
 * SIGHUP): new connections and HTTP requests use `keys` (the service
 * takes a reference); sockets already connected keep their identity. A
 * service started without any way to check tokens stays so. */
void msg_service_set_keys(msg_service *m, struct jwt_keyset *keys);

/* Puts namespace nsp behind the service's authentication (the same CONNECT
 * auth and errors as MSG_NAMESPACE); nothing else of the service runs
 * there. Its sockets' tokens are not watched for expiry. 0 or
 * PARLEY_EINVAL. */
int msg_service_guard(msg_service *m, parley_nsp *nsp);

/* Joins the service to a Redis cluster (cluster/adapter.h); NULL leaves
 * (before pcluster_free). With c: room membership changes and
 * notifications reach the user's sockets on every node, and this node's
 * devices count for the users' presence on every node and theirs here
 * (docs/CLUSTER.md, "Messaging across nodes", "Presence across nodes").
 * Without it everything is this process's alone.
 * 0, PARLEY_EINVAL, PARLEY_ENOMEM. */
struct parley_cluster;
int msg_service_set_cluster(msg_service *m, struct parley_cluster *c);

/* A metrics collector for presence across nodes (user: the msg_service):
 * the parley_presence_cluster_* families. */
void msg_service_cluster_collect(pmx_out *o, void *user);

/* Counters, for tests and metrics. */
typedef struct msg_service_stats {
    uint64_t messages;   /* stored */
    uint64_t duplicates; /* resends answered from the store */
    uint64_t commits;    /* batches committed */
    uint64_t commit_failures;
    unsigned sockets;          /* connected */
    uint64_t presence_updates; /* presence events broadcast (one per user update) */
    uint64_t notifications;    /* stored */
    uint64_t notif_duplicates; /* dedupe hits */
    uint64_t notif_suppressed; /* stored but not pushed (preferences) */
    uint64_t notif_pushed;     /* `notification` emits (one per socket) */
    uint64_t rate_limited;     /* requests refused over a rate limit */
    uint64_t quota_exceeded;   /* requests refused over a quota */
    uint64_t storage_full;     /* writes refused below the disk reserve */
    uint64_t kicked;           /* sockets disconnected for hammering over the limits */
    uint64_t urgent_downgraded; /* urgent notifications from non-contacts treated as high */
    uint64_t mentions;          /* mention notifications raised by room messages (@user) */
    uint64_t cluster_room_failures; /* room changes not published to the other nodes */
    uint64_t cluster_npush_failures; /* notifications not published to the other nodes */
    uint64_t cluster_bad;            /* malformed messages from other nodes, dropped */
} msg_service_stats;

void msg_service_stats_get(const msg_service *m, msg_service_stats *st);

/* A metrics collector (base/metrics.h; user is the msg_service): the
 * parley_chat_*, parley_messages_*, parley_presence_*,
 * parley_notifications_* and parley_store_* families of
 * docs/OPERATIONS.md. */
void msg_service_collect(pmx_out *o, void *user);

/* Readiness: 0 when the store answers a query and the data directory
 * has room (writes are accepted); otherwise non-zero with the reason in
 * why. A service running without a store (no way to authenticate) is
 * ready: it refuses connections by design. */
int msg_service_ready(msg_service *m, char *why, size_t cap);

#endif
