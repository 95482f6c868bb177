/* Private to the messaging service (src/services/server/): the state its
 * files share and the functions that cross them. messaging.c has the
 * overview. The files, each a run of whole sections cut from the former
 * single messaging.c in their order:
 *   messaging.c  sessions and users, request helpers, requests, the
 *                request table, namespace handlers, lifetime, metrics
 *   outbox.c     the outbox and its flush (acks, broadcasts, room changes,
 *                fan-out order, HTTP answers)
 *   limits.c     refusals over limits, strikes and kicks, disk space
 *   sync.c       sync answers
 *   typing.c     typing indicators
 *   presence.c   presence, and the presence requests
 *   presence_cluster.c  presence across the nodes of a Redis cluster
 *   notify.c     notifications, mentions, quiet hours
 *   http_api.c   POST /media, GET /media/<id>, POST /api/notifications */
#ifndef PARLEY_SERVICES_SERVER_MSG_INTERNAL_H
#define PARLEY_SERVICES_SERVER_MSG_INTERNAL_H

#include "services/messaging.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

#include "base/log.h"
#include "base/map.h"
#include "base/util.h"
#include "codec/http.h"
#include "net/net.h"
#include "server/engine.h"
#include "server/httpd.h"
#include "services/server/fanout.h"
#include "services/jwt.h"
#include "services/server/media.h"
#include "services/store/mstore.h"
#include "services/server/push.h"
#include "services/tz.h"

#define ROOM_NAME_MAX   (2 + MSG_CONV_MAX + 1) /* "u:" + user, "c:" + conversation id */
#define SYNC_PAGE_BYTES (256 << 10)            /* soft limit of one sync answer */
#define OUTBOX_FREE_MAX 256                    /* recycled outbox entries kept */
#define OUTBOX_KEEP_CAP 4096                   /* bytes a recycled entry keeps */
#define PROOM_MAX       (3 + MSG_USER_MAX + 1) /* "pu:"/"ps:" + user, "pr:" + room name */
/* serverSideEmit between the nodes of a cluster (Node servers on the same
 * Redis ignore events they have no listener for). */
#define MSG_CLUSTER_NPUSH "parley:npush" /* ["<user>", <Notification>] */
#define STORE_RETRY_MS  1000                   /* retry hint of `unavailable` (database down) */

typedef struct msess msess;
typedef struct mpres mpres;

typedef struct muser {
    char id[MSG_USER_MAX + 1];
    size_t len;
    msess *socks;
    unsigned n;
} muser;

struct msess {
    msg_service *svc;
    parley_socket *sock; /* NULL once disconnected */
    muser *user;         /* NULL once disconnected */
    msess *next;         /* in user->socks */
    ptimer expiry;       /* the token's exp */
    uint32_t refs;       /* outbox entries pointing here */
    bool admin, dev, live;
    bool notifier; /* role notifier or admin: may send `notify` */
    /* presence: this device's chosen status, and idleness */
    bool idle;         /* no event for away_after_ms */
    uint8_t pstatus;   /* msg_pstatus chosen by presence_set; online by default */
    uint64_t last_act; /* loop time of its last event */
    ptimer idle_timer; /* may fire early: it checks last_act (no re-arm per event) */
    pmap subs;         /* user id -> psub: presence subscriptions */
    unsigned nsubs;
    prate events;                        /* every event of this socket */
    uint64_t send_hold;                  /* loop ms until which send_message is refused (order) */
    uint64_t streak_since, last_refusal; /* the current run of refusals (strikes) */
    msess *next_kick;                    /* on svc->kicks while kick is set */
    prate strikes;                       /* refusals over limits: empty means hammering */
    bool kick;                           /* disconnect at the end of the current event */
};

typedef struct psub {
    char id[MSG_USER_MAX + 1];
} psub;

/* A user's presence while it matters: connected, or inside a coalescing
 * window, or marked for the end of this iteration. Otherwise the store
 * has everything (last seen, text). */
struct mpres {
    msg_service *svc;
    char id[MSG_USER_MAX + 1];
    size_t len;
    char text[MSG_PRESENCE_TEXT_MAX + 1];
    int64_t last_seen; /* -1: never */
    /* What was last broadcast; at creation, the offline state the store
     * implies (which is what anyone was last told, or would be told). */
    uint8_t sent_status;
    unsigned sent_devices;
    char sent_text[MSG_PRESENCE_TEXT_MAX + 1];
    ptimer window; /* armed for presence_interval_ms after each send */
    /* "Appear offline" (stored): others see the user offline, last seen
     * frozen at the moment it was turned on; the user's own devices see
     * the true state with invisible. The sent_* above are what others were
     * last told; self_* what the user's own devices were last told. */
    bool invisible;
    bool self_invisible;
    uint8_t self_status;
    unsigned self_devices;
    bool dirty;
    mpres *next_dirty;
    msess *trigger; /* the socket whose own action is this iteration's change (pres_mark) */
    /* Across nodes (presence_cluster.c): when the text and invisibility
     * were last set (wall ms; 0 when read from the store; the newest
     * wins on every node), and this node's contribution as last
     * published to the other nodes. */
    int64_t text_at, inv_at;
    uint32_t pc_devices;
    uint8_t pc_status;
    int64_t pc_text_at, pc_inv_at;
};

/* OB_HOLD: a send_message whose insert is in flight (mstore_insert_async);
 * its place in the outbox, replaced by the acknowledgement, broadcast and
 * notifications once its batch is committed (expand_hold). */
enum { OB_ACK, OB_BCAST, OB_JOIN, OB_LEAVE, OB_SYNC, OB_NOTIFY, OB_HTTP, OB_NPUSH, OB_HOLD };
enum { HOLD_SEND, HOLD_RECEIPT };

typedef struct obx {
    struct obx *next;
    uint8_t kind;
    bool dep;     /* made while the batch was open: fails with it */
    bool low;     /* a broadcast that may wait */
    uint8_t prio; /* OB_BCAST: msg_priority, for the fan-out order */
    msess *ms;    /* acknowledged socket; a broadcast's sender (left out) */
    int64_t ack_id;
    const char *event;
    char rooms[2][ROOM_NAME_MAX];
    unsigned nrooms;
    char except_room[ROOM_NAME_MAX];
    char user[MSG_USER_MAX +
              1];     /* JOIN/LEAVE: whose sockets; NOTIFY: the sender; NPUSH: the recipient */
    msg_message meta; /* NOTIFY; NPUSH: id */
    pbuf json;        /* NUL-terminated: args array, or a request object */
    phttpd_deferred *http;
    int http_status;
    char *origin; /* OB_HTTP: the allowed Origin the answer grants (CORS) */
    bool send_ok; /* OB_ACK: the answer to a send_message that stored (or found) it */
    uint64_t t0;  /* ... and when that send_message arrived (uv_hrtime) */
    /* OB_HOLD: the request and the store's answer: a send_message's
     * insert, or a receipt's update (hkind). */
    struct msg_service *svc;
    msg_conv conv;
    uint8_t mtype;
    uint8_t hkind; /* HOLD_SEND, HOLD_RECEIPT */
    bool stored;   /* the store's callback ran */
    int rc;
    int64_t rseq;           /* HOLD_RECEIPT: the seq asked for (mtype: its status) */
    mstore_receipt_res rcp; /* HOLD_RECEIPT: the answer */
    struct obx *sub_head, *sub_tail; /* what expanding it queued */
} obx;

/* Why a stored notification was not pushed (notif_suppressed). */
enum { NS_NONE, NS_MUTED_USER, NS_MUTED_ROOM, NS_IN_APP_OFF, NS_TYPE_OFF, NS_QUIET, NS_COUNT };
static const char *const ns_names[NS_COUNT] = {"",           "muted_user", "muted_room",
                                               "in_app_off", "type_off",   "quiet_hours"};

/* Counters and histograms beyond msg_service_stats, for metrics. */
static const uint64_t ack_bounds_ns[] = {250000,    500000,     1000000,      2500000,   5000000,
                                         10000000,  25000000,   50000000,     100000000, 250000000,
                                         500000000, 1000000000, 2500000000ull};
static const uint64_t batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};

typedef struct msg_metrics {
    uint64_t errors[MSG_E_COUNT];          /* error answers, every request */
    uint64_t send_failed[MSG_E_COUNT];     /* error answers to send_message */
    uint64_t connect_refused[MSG_E_COUNT]; /* CONNECTs refused, by reason */
    uint64_t receipts[2];                  /* delivered / read receipts that advanced */
    uint64_t typing_in, typing_relayed;
    uint64_t notif_suppressed[NS_COUNT];
    uint64_t notif_read; /* notifications marked read */
    pmx_hist ack_latency;
    pmx_hist commit_latency;
    pmx_hist batch_writes;
    /* The event being handled. */
    bool cur_send, cur_err;
    uint64_t cur_t0;
} msg_metrics;

typedef struct mtyping {
    msg_service *svc;
    char key[MSG_CONV_MAX + MSG_USER_MAX + 2];
    size_t klen;
    msg_conv conv;
    char user[MSG_USER_MAX + 1];
    bool typing;  /* as last said by the user (or expired) */
    bool shown;   /* as last relayed */
    bool relayed; /* something was relayed (last_relay is set) */
    uint64_t last_relay;
    ptimer expire, throttle;
} mtyping;

struct msg_service {
    parley_server *srv;
    parley_nsp *nsp;
    parley_cluster *cluster; /* the Redis adapter, or NULL (one node) */
    parley_loop *loop;
    msg_service_opts o;
    jwt_keyset *keys; /* NULL: no tokens can be checked */
    char *data_dir;
    mstore *store;
    push *push; /* the push webhook (services/server/push.h); NULL: off */
    media_store *media;
    pmap users;  /* id -> muser */
    pmap typing; /* "conv\nuser" -> mtyping */
    pmap pres;   /* user id -> mpres */
    mpres *dirty;
    char (*bnames)[PROOM_MAX]; /* presence broadcast targets, reused */
    const char **bptrs;
    size_t bn, bcap;
    pbuf pjson;
    obx *out_head, *out_tail;
    /* The batch being committed (mstore_commit_async): its outbox and
     * kicks, cut when the commit started; walked when it is answered. */
    obx *cb_head;
    msess *cb_kicks;
    bool cb_active, cb_done, cb_starting, cb_committing, closing;
    int cb_rc;
    uint32_t cb_writes;
    uint64_t cb_t0;
    obx *capture; /* expand_hold: obx_push appends to its sub-list */
    obx *low_head, *low_tail;
    /* fan-out order of a batch (fan_reorder), buffers reused */
    fanout fan;
    obx **fan_all;
    size_t fan_cap;
    bool fan_mixed; /* the batch has a message broadcast of another priority than normal */
    obx *free_list;
    unsigned nfree;
    pdefer flush;
    ptimer low_timer;
    /* The connect check's verdict, picked up by on_connection (which the
     * server calls right after a successful check, in the same call). */
    parley_socket *pending_sock;
    jwt_claims pending;
    bool pending_dev;
    char cerr_message[160];
    pbuf cerr_data;
    pbuf scratch, scratch2;
    msg_service_stats stats;
    bool disabled; /* no secret and no dev auth: no store, every connection refused */
    /* notifications */
    pmap nunread; /* user id -> nuser: the unread count may have changed */
    struct nuser *nunread_head;
    ptimer nexp_timer;       /* the earliest expiry: sweep */
    int64_t nexp_at;         /* wall ms it is armed for */
    uint8_t (*api_keys)[32]; /* SHA-256 of each API key */
    size_t n_api_keys;
    pbuf nprefs_buf;
    pmap tzs;     /* zone name -> tzent: loaded zones */
    char *tz_dir; /* NULL: the system's */
    /* limits */
    mquota *quota;
    uint64_t disk_checked; /* loop ms of the last statvfs */
    bool disk_low;         /* free space below the reserve at that time */
    plog_limit log_refused, log_kicked, log_connect, log_disk, log_tz, log_commit;
    msess *kicks;  /* sockets to disconnect once this iteration's answers are out */
    char *origins; /* allowed_origins, copied */
    msg_metrics mx;
    struct pres_cluster *pc; /* presence across nodes; NULL without a cluster */
};

#define LOG_EVERY_MS    10000

typedef struct notify_ctx {
    msg_service *svc;
    obx *e;
    char (*users)[MSG_USER_MAX + 1];
    size_t n, cap;
} notify_ctx;

#define NOTIF_HTTP_MAX_BODY 65536

/* A user whose unread count may have changed in this iteration. */
typedef struct nuser {
    struct nuser *next;
    char id[MSG_USER_MAX + 1];
} nuser;

/* messaging.c */
int64_t msvc_wall_ms(void);
void ms_release(msess *ms);
muser *user_get(msg_service *svc, const char *id, bool create);
bool user_online(msg_service *svc, const char *id);
/* The user has devices on other nodes of the cluster (presence_cluster.c;
 * false without a cluster). */
bool user_devices_elsewhere(msg_service *svc, const char *id);
void room_of_user(char out[ROOM_NAME_MAX], const char *user);
void room_of_conv(char out[ROOM_NAME_MAX], const char *conv);
void proom(char out[PROOM_MAX], char tag, const char *name);
bool check_member(msg_service *svc, msess *ms, int64_t ack_id, const msg_conv *c);
msg_errcode upload_quota(msg_service *svc, const char *user, uint64_t bytes, msg_error *err);
int record_upload(msg_service *svc, const char *user, const char *id, size_t len, const char *mime,
                  pbuf *out, bool *existed);

/* outbox.c */
void msvc_schedule(msg_service *svc);
void push_commit(void *user);
obx *obx_new(msg_service *svc, int kind, msess *ms, bool dep);
void obx_push(msg_service *svc, obx *e);
void obx_release(msg_service *svc, obx *e);
bool msvc_json_done(pbuf *b, int rc);
void queue_ack_json(msg_service *svc, msess *ms, int64_t ack_id, const char *obj, size_t len,
                    bool dep);
void reply_error(msg_service *svc, msess *ms, int64_t ack_id, const msg_error *err);
void reply_fail(msg_service *svc, msess *ms, int64_t ack_id, msg_errcode code, const char *field,
                const char *message);
void reply_internal(msg_service *svc, msess *ms, int64_t ack_id);
obx *queue_bcast(msg_service *svc, msess *sender, const msg_conv *c, const char *event,
                 const char *obj, size_t len, bool dep);
void queue_room_change(msg_service *svc, int kind, const char *user, const char *conv, bool dep);
void on_low_timer(ptimer *t);
int notify_collect(const char *user, int64_t d, int64_t r, void *arg);
void do_http(msg_service *svc, obx *e, bool failed);
bool npush_remote(msg_service *svc, const char *args, size_t len);
void obx_push_http(msg_service *svc, obx *e, phttpd_req *req, int status);
void msvc_on_flush(pdefer *d);
void expand_hold(msg_service *svc, obx *h);

/* limits.c */
void refuse_limit(msg_service *svc, msess *ms, int64_t ack_id, msg_errcode code, uint64_t retry_ms,
                  const char *field, const char *what);
void msvc_kick(msg_service *svc, msess *ms);
bool disk_low(msg_service *svc);
bool refuse_if_disk_low(msg_service *svc, msess *ms, int64_t ack_id);
bool user_rate_ok(msg_service *svc, msess *ms, int64_t ack_id, mquota_user_kind kind, uint64_t cost,
                  const char *what);

/* sync.c */
void do_sync(msg_service *svc, obx *e);

/* typing.c */
void typing_set(msg_service *svc, const msg_conv *c, const char *user, bool start);

/* presence.c */
mpres *pres_get(msg_service *svc, const char *id, bool create);
msg_pstatus ms_status(const msess *ms);
void pres_flush(msg_service *svc);
void pres_activity(msg_service *svc, msess *ms);
void pres_connected(msg_service *svc, msess *ms);
void subs_free(msess *ms);
void pres_disconnected(msg_service *svc, msess *ms, const char *user, unsigned left);
void req_presence_set(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                      int64_t ack_id);
void req_presence_sub(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                      int64_t ack_id);
void req_presence_unsub(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                        int64_t ack_id);
void req_presence_room(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                       int64_t ack_id);
msg_pstatus pres_local_status(const muser *u);
void pres_mark_remote(msg_service *svc, mpres *p);
void pres_maybe_free(msg_service *svc, mpres *p);

/* presence_cluster.c: presence across nodes (docs/CLUSTER.md, "Presence
 * across nodes"). Everything is a no-op without a cluster (svc->pc NULL). */
typedef struct pc_remote {
    uint32_t devices; /* on other live nodes */
    uint8_t status;   /* the most available of theirs (MSG_PS_OFFLINE: none) */
    int64_t text_at;  /* the newest text among them (0: none) */
    const char *text; /* ... and that text (valid until the next event) */
} pc_remote;
void pc_remote_get(msg_service *svc, const char *user, pc_remote *out);
/* This node's contribution of p's user changed? Queued to the others. */
void pc_contrib(msg_service *svc, mpres *p);
/* Publishes what was queued. */
void pc_publish(msg_service *svc);

/* notify.c */
void unread_flush(msg_service *svc);
void do_npush(msg_service *svc, obx *e);
int notif_suppressed(msg_service *svc, const msg_notification *n, const char *room, int64_t now,
                     bool *push_it);
void nexp_arm(msg_service *svc, int64_t at);
void on_nexp(ptimer *t);
int notif_create(msg_service *svc, msg_notification *n, const char *room, bool *dup);
void req_notify(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                int64_t ack_id);
void req_nsync(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
               int64_t ack_id);
void req_nread(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
               int64_t ack_id);
void req_nprefs_get(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                    int64_t ack_id);
void req_nprefs_set(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                    int64_t ack_id);
void notif_from_message(msg_service *svc, const obx *e, const char *recipient, msg_priority prio);
void do_mentions(msg_service *svc, obx *e, const msg_conv *c);
void tz_cache_free(msg_service *svc);

/* http_api.c */
bool req_origin(const phttpd_req *req, const char **o, size_t *n);
void upload_head(phttpd_req *req, void *arg);
int upload_body(void *state, const uint8_t *data, size_t len, void *arg);
void upload_abort(void *state, void *arg);
void upload_done(phttpd_req *req, void *arg);
void route_download(phttpd_req *req, void *arg);
void api_head(phttpd_req *req, void *arg);
void route_api_notify(phttpd_req *req, void *arg);

#endif
