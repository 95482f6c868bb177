/*
 * The messaging service (see messaging.h and docs/PROTOCOL.md).
 *
 * Everything a handler wants to say goes into the outbox; one deferred
 * callback per loop iteration commits the store's batch and then works
 * through the outbox in order: acknowledgements, broadcasts, Socket.IO
 * room changes, notifications, HTTP answers, and finally sync answers.
 * Entries made while the batch was open are `dep`: when the commit fails
 * they turn into `internal` errors (acknowledgements, HTTP) or are
 * dropped (broadcasts, room changes), so nothing unstored is ever
 * announced.
 *
 * Live delivery uses Socket.IO rooms of the namespace: "u:<user>" holds
 * the live sockets of a user (direct messages, and all devices of a
 * sender), "c:room:<name>" the live sockets of a room's members. A socket
 * joins them when its sync completes, after the iteration's broadcasts,
 * so a message committed before the sync read is in the sync answer and
 * one committed after it arrives live: never both, never neither.
 * Low-priority broadcasts wait in a queue (at most low_delay_ms); every
 * other broadcast and every sync flushes that queue first, which keeps
 * the order within a conversation and the exactly-once rule above.
 *
 * Presence uses rooms of its own, joined at connection (sync is not
 * needed): "pu:<user>" the user's sockets, "ps:<user>" the sockets
 * subscribed to the user, "pr:<room>" the sockets of the room's members.
 * One update is one broadcast to pu:, ps: and the pr: rooms of the
 * user's rooms, so the server's de-duplication gives each socket at most
 * one copy. Changes only mark the user dirty; after the commit the dirty
 * users are compared with what was last sent and sent at once, unless a
 * send happened less than presence_interval_ms ago: then the window's
 * timer sends the latest state when it ends, if it differs.
 */
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
#include "services/server/msg_store.h"
#include "services/server/push.h"
#include "services/tz.h"

#define ROOM_NAME_MAX   (2 + MSG_CONV_MAX + 1) /* "u:" + user, "c:" + conversation id */
#define SYNC_PAGE_BYTES (256 << 10)            /* soft limit of one sync answer */
#define OUTBOX_FREE_MAX 256                    /* recycled outbox entries kept */
#define OUTBOX_KEEP_CAP 4096                   /* bytes a recycled entry keeps */
#define PROOM_MAX       (3 + MSG_USER_MAX + 1) /* "pu:"/"ps:" + user, "pr:" + room name */

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
};

enum { OB_ACK, OB_BCAST, OB_JOIN, OB_LEAVE, OB_SYNC, OB_NOTIFY, OB_HTTP, OB_NPUSH };

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
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void msg_service_opts_init(msg_service_opts *o)
{
    memset(o, 0, sizeof *o);
    o->data_dir = "./data";
    o->jwt_leeway_ms = 30000;
    o->max_media_bytes = 8u << 20;
    msg_limits_init(&o->limits);
    o->typing_timeout_ms = 5000;
    o->typing_throttle_ms = 500;
    o->low_delay_ms = 500;
    o->away_after_ms = 300000;
    o->presence_interval_ms = 1000;
    mquota_opts_init(&o->quota);
}

void msg_service_stats_get(const msg_service *m, msg_service_stats *st)
{
    *st = m->stats;
    st->commits = m->store ? mstore_commits(m->store) : 0;
}

/* ---- sessions and users ---- */

static void ms_release(msess *ms)
{
    if (--ms->refs == 0 && !ms->sock) free(ms);
}

static muser *user_get(msg_service *svc, const char *id, bool create)
{
    size_t len = strlen(id);
    muser *u = pmap_get(&svc->users, id, len);
    if (u || !create) return u;
    u = pcalloc(1, sizeof *u);
    if (!u) return NULL;
    memcpy(u->id, id, len + 1);
    u->len = len;
    if (pmap_put(&svc->users, u->id, u->len, u) != 0) {
        free(u);
        return NULL;
    }
    return u;
}

static bool user_online(msg_service *svc, const char *id)
{
    muser *u = user_get(svc, id, false);
    for (msess *ms = u ? u->socks : NULL; ms; ms = ms->next)
        if (ms->live) return true;
    return false;
}

static void prefixed(char out[ROOM_NAME_MAX], char tag, const char *name)
{
    size_t n = strnlen(name, ROOM_NAME_MAX - 3);
    out[0] = tag;
    out[1] = ':';
    memcpy(out + 2, name, n);
    out[2 + n] = 0;
}

static void room_of_user(char out[ROOM_NAME_MAX], const char *user)
{
    prefixed(out, 'u', user);
}

static void room_of_conv(char out[ROOM_NAME_MAX], const char *conv)
{
    prefixed(out, 'c', conv);
}

/* Presence rooms: "pu:<user>", "ps:<user>", "pr:<room name>". */
static void proom(char out[PROOM_MAX], char tag, const char *name)
{
    size_t n = strnlen(name, PROOM_MAX - 4);
    out[0] = 'p';
    out[1] = tag;
    out[2] = ':';
    memcpy(out + 3, name, n);
    out[3 + n] = 0;
}

/* ---- outbox ---- */

static void schedule(msg_service *svc)
{
    ploop_defer(svc->loop, &svc->flush);
}

/* The push webhook wrote to the batch: commit it soon. */
static void push_commit(void *user)
{
    schedule(user);
}

static obx *obx_new(msg_service *svc, int kind, msess *ms, bool dep)
{
    obx *e = svc->free_list;
    if (e) {
        svc->free_list = e->next;
        svc->nfree--;
        pbuf keep = e->json;
        memset(e, 0, sizeof *e);
        e->json = keep;
        e->json.len = 0;
    } else if (!(e = pcalloc(1, sizeof *e))) {
        return NULL;
    }
    e->kind = (uint8_t)kind;
    e->dep = dep;
    e->ms = ms;
    e->ack_id = -1;
    e->send_ok = kind == OB_ACK && svc->mx.cur_send && !svc->mx.cur_err;
    e->t0 = svc->mx.cur_t0;
    if (ms) ms->refs++;
    return e;
}

static void obx_push(msg_service *svc, obx *e)
{
    e->next = NULL;
    if (svc->out_tail)
        svc->out_tail->next = e;
    else
        svc->out_head = e;
    svc->out_tail = e;
    schedule(svc);
}

static void obx_release(msg_service *svc, obx *e)
{
    if (e->ms) ms_release(e->ms);
    e->ms = NULL;
    free(e->origin);
    e->origin = NULL;
    if (svc->nfree < OUTBOX_FREE_MAX) {
        pbuf_reset(&e->json, OUTBOX_KEEP_CAP);
        e->next = svc->free_list;
        svc->free_list = e;
        svc->nfree++;
    } else {
        pbuf_free(&e->json);
        free(e);
    }
}

/* Terminates json and reports whether everything fitted in memory. */
static bool json_done(pbuf *b, int rc)
{
    return rc == 0 && pbuf_append(b, "", 1) == 0 && b->len-- > 0;
}

/* Queues the acknowledgement [<obj>] where obj is already in e->json. */
static void queue_ack_json(msg_service *svc, msess *ms, int64_t ack_id, const char *obj, size_t len,
                           bool dep)
{
    if (ack_id < 0) return;
    obx *e = obx_new(svc, OB_ACK, ms, dep);
    if (!e) return;
    e->ack_id = ack_id;
    int rc = pbuf_append(&e->json, "[", 1);
    if (rc == 0) rc = pbuf_append(&e->json, obj, len);
    if (rc == 0) rc = pbuf_append(&e->json, "]", 1);
    if (!json_done(&e->json, rc)) {
        obx_release(svc, e);
        return;
    }
    obx_push(svc, e);
}

static void reply_error(msg_service *svc, msess *ms, int64_t ack_id, const msg_error *err)
{
    if ((unsigned)err->code < MSG_E_COUNT) {
        svc->mx.errors[err->code]++;
        if (svc->mx.cur_send) svc->mx.send_failed[err->code]++;
    }
    if (ack_id < 0) return;
    pbuf *b = &svc->scratch2;
    b->len = 0;
    svc->mx.cur_err = true;
    if (msg_encode_error(b, err) == 0)
        queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, false);
    svc->mx.cur_err = false;
}

static void reply_fail(msg_service *svc, msess *ms, int64_t ack_id, msg_errcode code,
                       const char *field, const char *message)
{
    msg_error err;
    msg_fail(&err, code, field, "%s", message);
    reply_error(svc, ms, ack_id, &err);
}

static void reply_internal(msg_service *svc, msess *ms, int64_t ack_id)
{
    reply_fail(svc, ms, ack_id, MSG_E_INTERNAL, NULL, "storage failure: nothing was changed");
}

/* A broadcast of event [obj] to the live sockets of a conversation. */
/* ---- limits ---- */

#define LOG_EVERY_MS    10000
#define STRIKE_GRACE_MS 1000 /* refusals this soon after a run began are not strikes */
#define STRIKE_GAP_MS   2000 /* without a refusal for this long, a run ends */

/* Refuses a request over a limit or quota: the error acknowledgement with
 * its retry hint, and for rate limits a strike against the socket; a
 * socket whose strikes run out (it keeps sending after being told) is
 * disconnected at the end of the event (ms->kick). */
static void refuse_limit(msg_service *svc, msess *ms, int64_t ack_id, msg_errcode code,
                         uint64_t retry_ms, const char *field, const char *what)
{
    msg_error err;
    msg_fail(&err, code, field, "%s", what);
    err.retry_after_ms = (int64_t)retry_ms;
    reply_error(svc, ms, ack_id, &err);
    uint64_t now = ploop_now(svc->loop), held;
    if (code == MSG_E_RATE_LIMITED)
        svc->stats.rate_limited++;
    else if (code == MSG_E_QUOTA_EXCEEDED)
        svc->stats.quota_exceeded++;
    else
        svc->stats.storage_full++;
    if (plog_limit_ok(&svc->log_refused, now, LOG_EVERY_MS, &held))
        plog_info("messaging: %s for %s: %s (%llu more refusals since the last line)",
                  msg_errcode_name(code), ms->user ? ms->user->id : "?", what,
                  (unsigned long long)held);
    if (code != MSG_E_RATE_LIMITED) return;
    /* Hammering is sending on and on after being told to wait. Refusals
     * come in runs (a run ends after STRIKE_GAP_MS without one); the first
     * STRIKE_GRACE_MS of a run are free — what was already on the wire
     * when the first refusal left, a queue replayed at once — and after
     * that each refusal takes a strike from a bucket that refills faster
     * than a client that waits for each hint can be refused (about one
     * refusal per message it gets through), so only floods empty it. */
    if (!ms->last_refusal || now - ms->last_refusal > STRIKE_GAP_MS) ms->streak_since = now;
    ms->last_refusal = now;
    if (now > ms->streak_since + STRIKE_GRACE_MS && !ms->kick &&
        !prate_take(&ms->strikes, &mquota_opts_of(svc->quota)->strikes, now, 1, NULL)) {
        ms->kick = true;
        ms->refs++; /* until the kick is done */
        ms->next_kick = svc->kicks;
        svc->kicks = ms;
        schedule(svc);
    }
}

/* The socket kept sending over its limits: once the iteration's answers
 * are out, it is told why, then disconnected ("io server disconnect" for
 * Socket.IO clients). */
static void kick(msg_service *svc, msess *ms)
{
    if (!ms->sock) return;
    svc->stats.kicked++;
    uint64_t held;
    if (plog_limit_ok(&svc->log_kicked, ploop_now(svc->loop), LOG_EVERY_MS, &held))
        plog_warn("messaging: socket %s of %s kept sending over its limits: disconnected (%llu "
                  "more since the last line)",
                  parley_socket_id(ms->sock), ms->user->id, (unsigned long long)held);
    static const char why[] = "[{\"code\":\"rate_limited\",\"message\":\"kept sending over "
                              "the rate limits after being told: disconnected\"}]";
    parley_emit(ms->sock, MSG_EV_DISCONNECT_REASON, why, NULL, 0);
    parley_disconnect(ms->sock, 0); /* ms may be freed here */
}

/* True when free disk space is below the reserve (checked at most once a
 * second): writes that add data are then refused with storage_full,
 * reads go on. */
static bool disk_low(msg_service *svc)
{
    uint64_t reserve = mquota_opts_of(svc->quota)->disk_reserve;
    if (!reserve || !svc->data_dir) return false;
    uint64_t now = ploop_now(svc->loop);
    if (svc->disk_checked && now - svc->disk_checked < 1000) return svc->disk_low;
    svc->disk_checked = now;
    struct statvfs v;
    bool low = statvfs(svc->data_dir, &v) == 0 && (uint64_t)v.f_bavail * v.f_frsize < reserve;
    uint64_t held;
    if (low != svc->disk_low || (low && plog_limit_ok(&svc->log_disk, now, 60000, &held))) {
        if (low)
            plog_error("messaging: free space in %s is below the reserve of %llu bytes: writes "
                       "are refused (storage_full) until there is room",
                       svc->data_dir, (unsigned long long)reserve);
        else
            plog_warn("messaging: free space in %s is back above the reserve: writes accepted",
                      svc->data_dir);
    }
    svc->disk_low = low;
    return low;
}

/* Refuses a write when the disk is low; true when refused. */
static bool refuse_if_disk_low(msg_service *svc, msess *ms, int64_t ack_id)
{
    if (!disk_low(svc)) return false;
    refuse_limit(svc, ms, ack_id, MSG_E_STORAGE_FULL, 60000, NULL,
                 "the server is low on storage: writes are refused for now, reads work");
    return true;
}

/* A per-user rate: true when the request may go on, otherwise refused. */
static bool user_rate_ok(msg_service *svc, msess *ms, int64_t ack_id, mquota_user_kind kind,
                         uint64_t cost, const char *what)
{
    uint64_t retry = 0;
    if (mquota_user_take(svc->quota, ms->user->id, kind, cost, &retry)) return true;
    refuse_limit(svc, ms, ack_id, MSG_E_RATE_LIMITED, retry, NULL, what);
    return false;
}

static obx *queue_bcast(msg_service *svc, msess *sender, const msg_conv *c, const char *event,
                        const char *obj, size_t len, bool dep)
{
    obx *e = obx_new(svc, OB_BCAST, sender, dep);
    if (!e) return NULL;
    e->event = event;
    e->prio = MSG_PRIO_NORMAL;
    if (c->kind == MSG_CONV_DM) {
        room_of_user(e->rooms[0], c->a);
        room_of_user(e->rooms[1], c->b);
        e->nrooms = 2;
    } else {
        room_of_conv(e->rooms[0], c->id);
        e->nrooms = 1;
    }
    int rc = pbuf_append(&e->json, "[", 1);
    if (rc == 0) rc = pbuf_append(&e->json, obj, len);
    if (rc == 0) rc = pbuf_append(&e->json, "]", 1);
    if (!json_done(&e->json, rc)) {
        obx_release(svc, e);
        return NULL;
    }
    obx_push(svc, e);
    return e;
}

static void queue_room_change(msg_service *svc, int kind, const char *user, const char *conv,
                              bool dep)
{
    obx *e = obx_new(svc, kind, NULL, dep);
    if (!e) return;
    snprintf(e->user, sizeof e->user, "%s", user);
    room_of_conv(e->rooms[0], conv);
    obx_push(svc, e);
}

static void do_bcast(msg_service *svc, obx *e)
{
    const char *rooms[2] = {e->rooms[0], e->rooms[1]};
    const char *except = e->except_room;
    parley_target t = {.rooms = rooms, .nrooms = e->nrooms};
    if (except[0]) {
        t.except = &except;
        t.nexcept = 1;
    }
    if (e->ms && e->ms->sock) t.except_socket = e->ms->sock;
    int rc = parley_broadcast(svc->nsp, &t, e->event, (const char *)e->json.ptr, NULL, 0);
    if (rc < 0) plog_error("messaging: broadcast of %s failed: %s", e->event, parley_strerror(rc));
}

static void flush_low(msg_service *svc)
{
    ploop_timer_stop(svc->loop, &svc->low_timer);
    obx *e = svc->low_head;
    svc->low_head = svc->low_tail = NULL;
    while (e) {
        obx *next = e->next;
        do_bcast(svc, e);
        obx_release(svc, e);
        e = next;
    }
}

static void on_low_timer(ptimer *t)
{
    flush_low(PARLEY_CONTAINER_OF(t, msg_service, low_timer));
}

static void hold_low(msg_service *svc, obx *e)
{
    e->next = NULL;
    if (svc->low_tail)
        svc->low_tail->next = e;
    else {
        svc->low_head = e;
        ploop_timer_start(svc->loop, &svc->low_timer, svc->o.low_delay_ms);
    }
    svc->low_tail = e;
}

static void apply_room_change(msg_service *svc, obx *e)
{
    muser *u = user_get(svc, e->user, false);
    /* rooms[0] is "c:room:<name>"; presence follows every socket of the
     * user, messages only the live ones. */
    char pr[PROOM_MAX];
    proom(pr, 'r', e->rooms[0] + 7);
    for (msess *ms = u ? u->socks : NULL; ms; ms = ms->next) {
        if (e->kind == OB_JOIN)
            parley_join(ms->sock, pr);
        else
            parley_leave(ms->sock, pr);
        if (!ms->live) continue;
        if (e->kind == OB_JOIN)
            parley_join(ms->sock, e->rooms[0]);
        else
            parley_leave(ms->sock, e->rooms[0]);
    }
}

static void do_npush(msg_service *svc, obx *e);
static void unread_flush(msg_service *svc);
static void notif_from_message(msg_service *svc, const obx *e, const char *recipient,
                               msg_priority prio);

typedef struct notify_ctx {
    msg_service *svc;
    obx *e;
    char (*users)[MSG_USER_MAX + 1];
    size_t n, cap;
} notify_ctx;

/* Recipients are gathered first: the notifications they get are written
 * while no read of the store is in progress. */
static int notify_collect(const char *user, int64_t d, int64_t r, void *arg)
{
    (void)d;
    (void)r;
    notify_ctx *n = arg;
    if (strcmp(user, n->e->user) == 0) return 0;
    if (n->n == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 8;
        void *v = realloc(n->users, cap * sizeof *n->users);
        if (!v) return PARLEY_ENOMEM;
        n->users = v;
        n->cap = cap;
    }
    snprintf(n->users[n->n++], MSG_USER_MAX + 1, "%s", user);
    return 0;
}

static void notify_one(notify_ctx *n, const char *user)
{
    msg_notice notice = {.recipient = user,
                         .online = user_online(n->svc, user),
                         .message = &n->e->meta,
                         .message_json = (const char *)n->e->json.ptr + 1,
                         .message_len = n->e->json.len - 2};
    notif_from_message(n->svc, n->e, user, MSG_PRIO_URGENT);
    if (n->svc->o.notifier.urgent) n->svc->o.notifier.urgent(&notice, n->svc->o.notifier.user);
}

static void do_mentions(msg_service *svc, obx *e, const msg_conv *c);

static void do_notify(msg_service *svc, obx *e)
{
    notify_ctx n = {svc, e, NULL, 0, 0};
    msg_conv c;
    if (!msg_conv_parse(&c, e->meta.conversation, strlen(e->meta.conversation))) return;
    if (e->meta.priority != MSG_PRIO_URGENT) {
        do_mentions(svc, e, &c);
        return;
    }
    if (c.kind == MSG_CONV_DM) {
        notify_one(&n, msg_conv_peer(&c, e->user));
        return;
    }
    if (mstore_participants(svc->store, c.id, notify_collect, &n) < 0)
        plog_error("messaging: cannot list the recipients of urgent message %lld",
                   (long long)e->meta.id);
    for (size_t i = 0; i < n.n; i++) notify_one(&n, n.users[i]);
    free(n.users);
}

static void do_http(obx *e, bool failed)
{
    if (!e->http) return;
    static const char fail[] = "{\"code\":\"internal\",\"message\":\"storage failure\"}";
    http_header h[2] = {
        {"Access-Control-Allow-Origin", 27, e->origin, e->origin ? strlen(e->origin) : 0},
        {"Vary", 4, "Origin", 6}};
    size_t n = e->origin ? 2 : 0;
    if (failed)
        phttpd_deferred_respond(e->http, 500, "application/json", h, n, fail, sizeof fail - 1);
    else
        phttpd_deferred_respond(e->http, e->http_status, "application/json", h, n, e->json.ptr,
                                e->json.len);
    e->http = NULL;
}

static void on_http_abort(phttpd_deferred *d, void *user)
{
    (void)d;
    obx *e = user;
    e->http = NULL;
}

/* An HTTP request answered like an acknowledgement: after the commit of
 * the batch it joined (status when the commit succeeds). */
static bool req_origin(const phttpd_req *req, const char **o, size_t *n);

static void obx_push_http(msg_service *svc, obx *e, phttpd_req *req, int status)
{
    e->http_status = status;
    const char *o = NULL;
    size_t on = 0;
    if (svc->origins && req_origin(req, &o, &on) && engine_origin_allowed(svc->origins, o, on))
        e->origin = pmemdup_str(o, on); /* without it the answer lacks CORS: no harm */
    e->http = phttpd_defer(req, on_http_abort, e);
    if (!e->http) {
        obx_release(svc, e);
        return;
    }
    obx_push(svc, e);
}

static void do_sync(msg_service *svc, obx *e);
static void pres_flush(msg_service *svc);

/* Fan-out order: the broadcasts of each run between two membership
 * changes (which must apply between the deliveries queued before and
 * after them) are put in the order of fanout.h: across conversations
 * urgent and high ones first, low ones last; within a conversation as
 * queued (seq order). The outbox's other entries keep their places. On
 * failure to grow a buffer the queued order stays, which is valid. No
 * allocation once the buffers fit the largest batch. */
static void fan_reorder(msg_service *svc)
{
    size_t n = 0;
    for (obx *e = svc->out_head; e; e = e->next) n++;
    if (n < 2) return;
    if (n > svc->fan_cap) {
        size_t cap = svc->fan_cap ? svc->fan_cap : 64;
        while (cap < n) cap *= 2;
        obx **a = realloc(svc->fan_all, cap * sizeof *a);
        if (!a) return;
        svc->fan_all = a;
        svc->fan_cap = cap;
    }
    obx **all = svc->fan_all;
    n = 0;
    for (obx *e = svc->out_head; e; e = e->next) all[n++] = e;
    for (size_t seg = 0; seg < n;) {
        size_t end = seg;
        while (end < n && all[end]->kind != OB_JOIN && all[end]->kind != OB_LEAVE) end++;
        fanout_reset(&svc->fan);
        bool ok = true;
        for (size_t i = seg; ok && i < end; i++) {
            obx *e = all[i];
            if (e->kind != OB_BCAST) continue;
            uint64_t key = fanout_key(e->rooms[0], strlen(e->rooms[0]), FANOUT_KEY_SEED);
            if (e->nrooms > 1) {
                key = fanout_key("\n", 1, key);
                key = fanout_key(e->rooms[1], strlen(e->rooms[1]), key);
            }
            ok = fanout_push(&svc->fan, e, key, e->prio) == 0;
        }
        if (ok && svc->fan.n > 1 && fanout_sort(&svc->fan) == 0) {
            size_t k = 0;
            for (size_t i = seg; i < end; i++)
                if (all[i]->kind == OB_BCAST) all[i] = svc->fan.items[k++].ptr;
        }
        seg = end + 1;
    }
    for (size_t i = 0; i + 1 < n; i++) all[i]->next = all[i + 1];
    all[n - 1]->next = NULL;
    svc->out_head = all[0];
    svc->out_tail = all[n - 1];
}

static void on_flush(pdefer *d)
{
    msg_service *svc = PARLEY_CONTAINER_OF(d, msg_service, flush);
    bool failed = false;
    uint32_t writes = mstore_batch_writes(svc->store);
    uint64_t t0 = writes ? uv_hrtime() : 0;
    if (mstore_in_batch(svc->store) && mstore_commit(svc->store) != 0) {
        failed = true;
        svc->stats.commit_failures++;
        uint64_t held;
        if (plog_limit_ok(&svc->log_commit, ploop_now(svc->loop), LOG_EVERY_MS, &held))
            plog_error("messaging: commit failed: the batch's requests get `internal` errors "
                       "(%llu more failed commits since the last line)",
                       (unsigned long long)held);
    }
    if (writes) {
        pmx_hist_observe(&svc->mx.commit_latency, uv_hrtime() - t0);
        pmx_hist_observe(&svc->mx.batch_writes, writes);
    }
    if (svc->fan_mixed) {
        svc->fan_mixed = false;
        fan_reorder(svc);
    }
    obx *e = svc->out_head, *syncs = NULL, **sync_tail = &syncs;
    svc->out_head = svc->out_tail = NULL;
    while (e) {
        obx *next = e->next;
        bool bad = e->dep && failed;
        switch (e->kind) {
        case OB_ACK:
            if (e->send_ok && bad) svc->mx.send_failed[MSG_E_INTERNAL]++;
            if (e->send_ok && !bad) pmx_hist_observe(&svc->mx.ack_latency, uv_hrtime() - e->t0);
            if (e->ms->sock) {
                if (bad)
                    reply_internal(svc, e->ms, e->ack_id);
                else if (parley_ack(e->ms->sock, e->ack_id, (const char *)e->json.ptr, NULL, 0) ==
                         PARLEY_EINVAL)
                    plog_error("messaging: bad acknowledgement: %s", (const char *)e->json.ptr);
            }
            break;
        case OB_BCAST:
            if (bad) break;
            if (e->low) {
                hold_low(svc, e);
                e = next;
                continue;
            }
            flush_low(svc);
            do_bcast(svc, e);
            break;
        case OB_JOIN:
        case OB_LEAVE:
            /* Held broadcasts go to the members of the time they were sent. */
            flush_low(svc);
            if (!bad) apply_room_change(svc, e);
            break;
        case OB_NOTIFY:
            if (!bad) do_notify(svc, e);
            break;
        case OB_HTTP:
            do_http(e, bad);
            break;
        case OB_NPUSH:
            if (!bad) do_npush(svc, e);
            break;
        case OB_SYNC:
            *sync_tail = e;
            sync_tail = &e->next;
            e->next = NULL;
            e = next;
            continue;
        }
        obx_release(svc, e);
        e = next;
    }
    if (syncs) flush_low(svc);
    while (syncs) {
        obx *next = syncs->next;
        do_sync(svc, syncs);
        obx_release(svc, syncs);
        syncs = next;
    }
    pres_flush(svc);
    unread_flush(svc);
    /* Kicks last: the acknowledgements (and refusals) above reached them. */
    while (svc->kicks) {
        msess *ms = svc->kicks;
        svc->kicks = ms->next_kick;
        kick(svc, ms);
        ms_release(ms);
    }
    /* The push webhook sends what this commit queued (or retries). */
    if (svc->push) push_after_commit(svc->push, !failed);
}

/* ---- sync ---- */

typedef struct convlist {
    char (*id)[MSG_CONV_MAX + 1];
    size_t n, cap, max;
    const char *from; /* ids before this one are skipped */
} convlist;

#define CONVS_ENOUGH 2 /* collect_conv's "stop": not an error */

static int collect_conv(const char *conv, void *arg)
{
    convlist *l = arg;
    if (l->from[0] && strcmp(conv, l->from) < 0) return 0;
    if (l->n == l->max) return CONVS_ENOUGH;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        void *v = realloc(l->id, cap * sizeof *l->id);
        if (!v) return PARLEY_ENOMEM;
        l->id = v;
        l->cap = cap;
    }
    memcpy(l->id[l->n++], conv, strlen(conv) + 1);
    return 0;
}

typedef struct page {
    pbuf *out;
    unsigned left;
    bool first;
    int64_t last_sent;
} page;

static int page_add(const mstore_msg *m, void *arg)
{
    page *p = arg;
    if (!p->first && p->out->len > SYNC_PAGE_BYTES) return 1;
    int rc = p->first ? 0 : pbuf_append(p->out, ",", 1);
    if (rc == 0) rc = msg_encode_message(p->out, &m->m, m->content_json, m->content_len);
    if (rc) return rc;
    p->first = false;
    p->left--;
    p->last_sent = m->m.seq;
    return 0;
}

typedef struct rcpt {
    pbuf *out;
    unsigned n;
} rcpt;

static int receipt_add(const char *user, int64_t d, int64_t r, void *arg)
{
    rcpt *rc_ = arg;
    if (rc_->n == MSG_SYNC_MAX_RECEIPTS) return CONVS_ENOUGH;
    pbuf *out = rc_->out;
    int rc = rc_->n++ ? pbuf_append(out, ",", 1) : 0;
    if (rc == 0) rc = pbuf_append_str(out, "{\"user\":");
    if (rc == 0) rc = json_append_string(out, user, strlen(user));
    if (rc == 0)
        rc = pbuf_appendf(out, ",\"delivered\":%lld,\"read\":%lld}", (long long)d, (long long)r);
    return rc;
}

static int join_conv_room(const char *conv, void *arg)
{
    msess *ms = arg;
    if (strncmp(conv, "room:", 5) != 0) return 0;
    char room[ROOM_NAME_MAX];
    room_of_conv(room, conv);
    parley_join(ms->sock, room);
    return 0;
}

/* The last page of a sync was answered: the socket receives live events
 * from now on (its user's room, and the rooms of its room conversations). */
static int go_live(msg_service *svc, msess *ms)
{
    char room[ROOM_NAME_MAX];
    room_of_user(room, ms->user->id);
    parley_join(ms->sock, room);
    int rc = mstore_user_convs(svc->store, ms->user->id, join_conv_room, ms);
    if (rc == 0) ms->live = true;
    return rc;
}

/* New messages of every conversation of the user, in conversation id
 * order, until the page is full. */
typedef struct msgscan {
    msg_service *svc;
    const pmap *since;
    page pg;
    bool cut; /* some conversation has messages that did not fit */
    int err;
} msgscan;

static int scan_conv(const char *id, void *arg)
{
    msgscan *sc = arg;
    int64_t *sp = pmap_get(sc->since, id, strlen(id));
    int64_t after = sp ? *sp : 0, last = mstore_last_seq(sc->svc->store, id);
    if (last < 0) return (int)last;
    if (last <= after) return 0;
    if (sc->pg.left == 0 || sc->pg.out->len > SYNC_PAGE_BYTES) {
        sc->cut = true;
        return CONVS_ENOUGH;
    }
    sc->pg.last_sent = after;
    int rc = mstore_messages_after(sc->svc->store, id, after, sc->pg.left, page_add, &sc->pg);
    if (rc == 1) rc = 0; /* the page is full */
    if (rc) return rc;
    if (sc->pg.last_sent < last) {
        sc->cut = true;
        return CONVS_ENOUGH;
    }
    return 0;
}

/* A sync answer has two parts. `messages`: what is new in every
 * conversation of the user after `since`, in conversation id order, at
 * most `limit` and about SYNC_PAGE_BYTES (cut: `more`). `conversations`:
 * a page of the user's conversations from `from` in id order, at most
 * MSG_SYNC_MAX_CONVS, with their last seq and receipts (at most
 * MSG_SYNC_MAX_RECEIPTS each). While either part is incomplete, `more` is
 * true and `next` is the `from` of the next request. Live delivery
 * starts with the answer that completes both: that one looked at every
 * conversation for messages in the same loop iteration, so nothing
 * committed earlier is missing and nothing later arrives twice. */
static void do_sync(msg_service *svc, obx *e)
{
    msess *ms = e->ms;
    if (!ms->sock) return;
    json_val obj;
    msg_sync req;
    msg_error err;
    if (json_parse((const char *)e->json.ptr, e->json.len, svc->o.limits.max_depth, &obj, NULL) !=
            0 ||
        msg_parse_sync(&obj, &req, &err) != MSG_OK) {
        reply_internal(svc, ms, e->ack_id);
        return;
    }
    convlist convs = {.max = MSG_SYNC_MAX_CONVS + 1, .from = req.cursor};
    char(*since_ids)[MSG_CONV_MAX + 1] = NULL;
    int64_t *since_seq = NULL;
    pmap since = {0};
    pbuf *out = &svc->scratch;
    out->len = 0;
    int rc = 0;
    if (req.nsince) {
        since_ids = pcalloc(req.nsince, sizeof *since_ids);
        since_seq = pcalloc(req.nsince, sizeof *since_seq);
        if (!since_ids || !since_seq) rc = PARLEY_ENOMEM;
        json_iter it;
        msg_sync_iter_init(&req, &it);
        for (size_t i = 0; rc == 0 && i < req.nsince; i++) {
            if (!msg_sync_iter_next(&it, since_ids[i], &since_seq[i])) break;
            size_t len = strlen(since_ids[i]);
            if (pmap_get(&since, since_ids[i], len)) {
                msg_fail(&err, MSG_E_INVALID_FIELD, "since", "since names %s twice", since_ids[i]);
                rc = 1;
            } else if (pmap_put(&since, since_ids[i], len, &since_seq[i]) != 0) {
                rc = PARLEY_ENOMEM;
            }
        }
    }
    if (rc == 0) rc = pbuf_append_str(out, "[{\"ok\":true,\"messages\":[");
    msgscan ms_scan = {
        .svc = svc, .since = &since, .pg = {.out = out, .left = req.limit, .first = true}};
    if (rc == 0) rc = mstore_user_convs(svc->store, ms->user->id, scan_conv, &ms_scan);
    if (rc == CONVS_ENOUGH) rc = 0;
    if (rc == 0) rc = mstore_user_convs(svc->store, ms->user->id, collect_conv, &convs);
    if (rc == CONVS_ENOUGH) rc = 0;
    size_t end = PARLEY_MIN(convs.n, (size_t)MSG_SYNC_MAX_CONVS);
    /* Where the conversations part goes on; NULL when it is complete. */
    const char *list_next = convs.n > MSG_SYNC_MAX_CONVS ? convs.id[MSG_SYNC_MAX_CONVS] : NULL;
    if (rc == 0) rc = pbuf_append_str(out, "],\"conversations\":[");
    for (size_t i = 0; rc == 0 && i < end; i++) {
        int64_t last = mstore_last_seq(svc->store, convs.id[i]);
        if (last < 0) rc = (int)last;
        if (rc == 0 && i) rc = pbuf_append(out, ",", 1);
        if (rc == 0) rc = pbuf_append_str(out, "{\"id\":");
        if (rc == 0) rc = json_append_string(out, convs.id[i], strlen(convs.id[i]));
        if (rc == 0) rc = pbuf_appendf(out, ",\"last_seq\":%lld,\"receipts\":[", (long long)last);
        rcpt rr = {.out = out};
        if (rc == 0) rc = mstore_participants(svc->store, convs.id[i], receipt_add, &rr);
        if (rc == CONVS_ENOUGH) rc = 0;
        if (rc == 0) rc = pbuf_append_str(out, "]}");
        if (rc == 0 && i + 1 < end && out->len > 2 * SYNC_PAGE_BYTES) {
            /* Large rooms' receipts: the rest in the next answer. */
            end = i + 1;
            list_next = convs.id[end];
        }
    }
    /* Messages cut with the list complete: the next request lists the
     * same page again (it is the last one). */
    const char *next = list_next ? list_next : ms_scan.cut ? req.cursor : NULL;
    if (rc == 0) rc = pbuf_appendf(out, "],\"more\":%s", next ? "true" : "false");
    if (rc == 0 && next) {
        rc = pbuf_append_str(out, ",\"next\":");
        if (rc == 0) rc = json_append_string(out, next, strlen(next));
    }
    if (rc == 0) rc = pbuf_append_str(out, "}]");
    if (rc == 1) {
        reply_error(svc, ms, e->ack_id, &err);
    } else if (!json_done(out, rc)) {
        reply_internal(svc, ms, e->ack_id);
    } else {
        if (e->ack_id >= 0) parley_ack(ms->sock, e->ack_id, (const char *)out->ptr, NULL, 0);
        if (!next && !ms->live && go_live(svc, ms) != 0)
            plog_error("messaging: cannot list the conversations of %s", ms->user->id);
    }
    pmap_free(&since);
    free(since_ids);
    free(since_seq);
    free(convs.id);
}

/* ---- typing ---- */

static void typing_maybe_free(mtyping *t)
{
    if (t->typing || t->shown || ptimer_armed(&t->expire) || ptimer_armed(&t->throttle)) return;
    pmap_del(&t->svc->typing, t->key, t->klen);
    free(t);
}

static void typing_relay(mtyping *t)
{
    msg_service *svc = t->svc;
    msg_typing mt;
    memset(&mt, 0, sizeof mt);
    memcpy(mt.conversation, t->conv.id, sizeof mt.conversation);
    memcpy(mt.user, t->user, sizeof mt.user);
    mt.start = t->typing;
    pbuf *b = &svc->scratch2;
    b->len = 0;
    int rc = pbuf_append(b, "[", 1);
    if (rc == 0) rc = msg_encode_typing(b, &mt);
    if (rc == 0) rc = pbuf_append(b, "]", 1);
    if (!json_done(b, rc)) return;
    char rooms[2][ROOM_NAME_MAX], except[ROOM_NAME_MAX];
    const char *r[1] = {rooms[0]}, *x = except;
    parley_target to = {.rooms = r, .nrooms = 1};
    if (t->conv.kind == MSG_CONV_DM) {
        room_of_user(rooms[0], msg_conv_peer(&t->conv, t->user));
    } else {
        room_of_conv(rooms[0], t->conv.id);
        room_of_user(except, t->user);
        to.except = &x;
        to.nexcept = 1;
    }
    /* Not volatile: a dropped stop would leave others seeing a typist
     * (polling clients between two GETs cannot take anything at once). */
    parley_broadcast(svc->nsp, &to, MSG_EV_TYPING_OUT, (const char *)b->ptr, NULL, 0);
    svc->mx.typing_relayed++;
    t->shown = t->typing;
    t->relayed = true;
    t->last_relay = ploop_now(svc->loop);
}

/* Brings what others see in line with t->typing, at most one change per
 * throttle interval; frees t when there is nothing left to do. */
static void typing_update(mtyping *t)
{
    msg_service *svc = t->svc;
    if (t->typing != t->shown && !ptimer_armed(&t->throttle)) {
        uint64_t now = ploop_now(svc->loop);
        uint64_t next = t->relayed ? t->last_relay + svc->o.typing_throttle_ms : now;
        if (next <= now)
            typing_relay(t);
        else
            ploop_timer_start(svc->loop, &t->throttle, next - now);
    }
    typing_maybe_free(t);
}

static void on_typing_expire(ptimer *p)
{
    mtyping *t = PARLEY_CONTAINER_OF(p, mtyping, expire);
    t->typing = false;
    typing_update(t);
}

static void on_typing_throttle(ptimer *p)
{
    typing_update(PARLEY_CONTAINER_OF(p, mtyping, throttle));
}

static void typing_set(msg_service *svc, const msg_conv *c, const char *user, bool start)
{
    char key[MSG_CONV_MAX + MSG_USER_MAX + 2];
    int klen = snprintf(key, sizeof key, "%s\n%s", c->id, user);
    mtyping *t = pmap_get(&svc->typing, key, (size_t)klen);
    if (!t) {
        if (!start) return; /* nothing shown, nothing to stop */
        t = pcalloc(1, sizeof *t);
        if (!t) return;
        t->svc = svc;
        memcpy(t->key, key, (size_t)klen + 1);
        t->klen = (size_t)klen;
        t->conv = *c;
        snprintf(t->user, sizeof t->user, "%s", user);
        ptimer_init(&t->expire, on_typing_expire);
        ptimer_init(&t->throttle, on_typing_throttle);
        if (pmap_put(&svc->typing, t->key, t->klen, t) != 0) {
            free(t);
            return;
        }
    }
    t->typing = start;
    if (start)
        ploop_timer_start(svc->loop, &t->expire, svc->o.typing_timeout_ms);
    else
        ploop_timer_stop(svc->loop, &t->expire);
    typing_update(t);
}

/* ---- presence ---- */

static void on_pres_window(ptimer *t);

/* The user's presence record, created (from the store) when asked to.
 * NULL when absent and not created, or on failure. */
static mpres *pres_get(msg_service *svc, const char *id, bool create)
{
    size_t len = strlen(id);
    mpres *p = pmap_get(&svc->pres, id, len);
    if (p || !create) return p;
    p = pcalloc(1, sizeof *p);
    if (!p) return NULL;
    p->svc = svc;
    memcpy(p->id, id, len + 1);
    p->len = len;
    int inv = mstore_presence_invisible(svc->store, id);
    if (inv < 0 || mstore_presence_get(svc->store, id, &p->last_seen, p->text) < 0 ||
        pmap_put(&svc->pres, p->id, p->len, p) != 0) {
        free(p);
        return NULL;
    }
    p->invisible = p->self_invisible = inv == 1;
    p->sent_status = p->self_status = MSG_PS_OFFLINE;
    memcpy(p->sent_text, p->text, sizeof p->text);
    ptimer_init(&p->window, on_pres_window);
    return p;
}

static msg_pstatus ms_status(const msess *ms)
{
    return ms->pstatus == MSG_PS_ONLINE && ms->idle ? MSG_PS_AWAY : (msg_pstatus)ms->pstatus;
}

/* The user's presence now, as the user's own devices see it (self) or as
 * everyone else does. 0, or negative when the store fails. */
static int pres_compute(msg_service *svc, const char *id, msg_presence *out, bool self)
{
    memset(out, 0, sizeof *out);
    snprintf(out->user, sizeof out->user, "%s", id);
    mpres *p = pres_get(svc, id, false);
    if (p) {
        memcpy(out->text, p->text, sizeof out->text);
        out->last_seen = p->last_seen;
    } else if (mstore_presence_get(svc->store, id, &out->last_seen, out->text) < 0) {
        return PARLEY_EIO;
    }
    muser *u = user_get(svc, id, false);
    out->status = MSG_PS_OFFLINE;
    if (!u || u->n == 0) return 0;
    /* Connected: the record exists unless it could not be made. */
    int inv = p ? p->invisible : mstore_presence_invisible(svc->store, id);
    if (inv < 0) return PARLEY_EIO;
    if (inv && !self) return 0; /* offline, last seen as frozen */
    out->invisible = inv;
    for (msess *ms = u->socks; ms; ms = ms->next)
        if (ms_status(ms) > out->status) out->status = ms_status(ms);
    out->devices = u->n;
    out->last_seen = wall_ms(); /* online: seen now */
    return 0;
}

static void pres_maybe_free(msg_service *svc, mpres *p)
{
    muser *u = user_get(svc, p->id, false);
    if (p->dirty || ptimer_armed(&p->window) || (u && u->n)) return;
    pmap_del(&svc->pres, p->id, p->len);
    free(p);
}

/* Marks the user's presence for the end of the iteration. trigger: the
 * socket whose own action (connecting, presence_set, activity after
 * idleness) is the change; an update sent at once leaves it out, since
 * it knows (presence_set has it in the acknowledgement). An update held
 * by the window goes to every socket: it may carry other changes. */
static void pres_mark(msg_service *svc, mpres *p, msess *trigger)
{
    if (!p->dirty) {
        p->dirty = true;
        p->trigger = trigger;
        p->next_dirty = svc->dirty;
        svc->dirty = p;
        schedule(svc);
    } else if (p->trigger != trigger) {
        p->trigger = NULL; /* several causes: everyone hears of it */
    }
}

static int add_target(msg_service *svc, const char *name)
{
    if (svc->bn == svc->bcap) {
        size_t cap = svc->bcap ? svc->bcap * 2 : 16;
        void *n = realloc(svc->bnames, cap * sizeof *svc->bnames);
        if (!n) return PARLEY_ENOMEM;
        svc->bnames = n;
        void *q = realloc(svc->bptrs, cap * sizeof *svc->bptrs);
        if (!q) return PARLEY_ENOMEM;
        svc->bptrs = q;
        svc->bcap = cap;
    }
    snprintf(svc->bnames[svc->bn++], PROOM_MAX, "%s", name);
    return 0;
}

static int add_room_target(const char *conv, void *arg)
{
    msg_service *svc = arg;
    if (strncmp(conv, "room:", 5) != 0) return 0;
    char r[PROOM_MAX];
    proom(r, 'r', conv + 5);
    return add_target(svc, r);
}

/* Who hears of a change: everyone (the user's devices, subscribers,
 * fellow room members), everyone but the user's own devices, or only
 * those (while the user appears offline). */
enum { PB_ALL, PB_OTHERS, PB_SELF };

static void pres_broadcast(msg_service *svc, const msg_presence *cur, msess *except, int who)
{
    char r[PROOM_MAX], own[PROOM_MAX];
    svc->bn = 0;
    proom(own, 'u', cur->user);
    int rc = who == PB_OTHERS ? 0 : add_target(svc, own);
    proom(r, 's', cur->user);
    if (rc == 0 && who != PB_SELF) rc = add_target(svc, r);
    if (rc == 0 && who != PB_SELF)
        rc = mstore_user_convs(svc->store, cur->user, add_room_target, svc);
    pbuf *b = &svc->pjson;
    b->len = 0;
    if (rc == 0) rc = pbuf_append(b, "[", 1);
    if (rc == 0) rc = msg_encode_presence(b, cur);
    if (rc == 0) rc = pbuf_append(b, "]", 1);
    if (!json_done(b, rc)) {
        plog_error("messaging: presence of %s not sent: %s", cur->user, parley_strerror(rc));
        return;
    }
    /* The names moved while the array grew: pointers are taken last. */
    for (size_t i = 0; i < svc->bn; i++) svc->bptrs[i] = svc->bnames[i];
    parley_target t = {.rooms = svc->bptrs, .nrooms = svc->bn};
    const char *x = own;
    if (who == PB_OTHERS) { /* the user's devices are in the rooms too */
        t.except = &x;
        t.nexcept = 1;
    }
    if (except && except->sock) t.except_socket = except->sock;
    rc = parley_broadcast(svc->nsp, &t, MSG_EV_PRESENCE, (const char *)b->ptr, NULL, 0);
    if (rc < 0) plog_error("messaging: presence broadcast failed: %s", parley_strerror(rc));
    svc->stats.presence_updates++;
}

/* Sends the user's presence if it differs from what was last sent, and
 * opens a coalescing window when it did. While the user appears offline
 * others and the user's own devices hear of different changes. */
static void pres_send_if_changed(msg_service *svc, mpres *p, msess *except)
{
    msg_presence self, pub;
    if (pres_compute(svc, p->id, &self, true) != 0) return;
    pub = self;
    /* p->invisible, not self.invisible: the last device leaving an
     * invisible user changes nothing for others. */
    if (p->invisible) {
        pub.status = MSG_PS_OFFLINE;
        pub.devices = 0;
        pub.last_seen = p->last_seen;
        pub.invisible = false;
    }
    /* last_seen moves by itself while online: it is not a change. */
    bool text = strcmp(self.text, p->sent_text) != 0;
    bool pub_changed = text || pub.status != p->sent_status || pub.devices != p->sent_devices;
    bool self_changed = text || self.status != p->self_status || self.devices != p->self_devices ||
                        self.invisible != p->self_invisible;
    if (!pub_changed && !self_changed) return;
    if (!p->invisible) {
        pres_broadcast(svc, &self, except, PB_ALL);
    } else {
        if (pub_changed) pres_broadcast(svc, &pub, except, PB_OTHERS);
        if (self_changed) pres_broadcast(svc, &self, except, PB_SELF);
    }
    p->sent_status = (uint8_t)pub.status;
    p->sent_devices = pub.devices;
    memcpy(p->sent_text, pub.text, sizeof p->sent_text);
    p->self_status = (uint8_t)self.status;
    p->self_devices = self.devices;
    p->self_invisible = self.invisible;
    if (svc->o.presence_interval_ms)
        ploop_timer_start(svc->loop, &p->window, svc->o.presence_interval_ms);
}

static void on_pres_window(ptimer *t)
{
    mpres *p = PARLEY_CONTAINER_OF(t, mpres, window);
    msg_service *svc = p->svc;
    /* Only the latest state, and only if it differs from the last sent:
     * a connect and disconnect inside the window send nothing. */
    pres_send_if_changed(svc, p, NULL);
    pres_maybe_free(svc, p);
}

/* After the commit: every user whose presence may have changed. */
static void pres_flush(msg_service *svc)
{
    mpres *p = svc->dirty;
    svc->dirty = NULL;
    while (p) {
        mpres *next = p->next_dirty;
        msess *trigger = p->trigger;
        p->dirty = false;
        p->trigger = NULL;
        if (!ptimer_armed(&p->window)) pres_send_if_changed(svc, p, trigger);
        pres_maybe_free(svc, p);
        p = next;
    }
}

static void on_idle(ptimer *t)
{
    msess *ms = PARLEY_CONTAINER_OF(t, msess, idle_timer);
    msg_service *svc = ms->svc;
    if (!ms->sock) return;
    uint64_t idle_for = ploop_now(svc->loop) - ms->last_act;
    if (idle_for < svc->o.away_after_ms) {
        ploop_timer_start(svc->loop, &ms->idle_timer, svc->o.away_after_ms - idle_for);
        return;
    }
    ms->idle = true;
    mpres *p = pres_get(svc, ms->user->id, true);
    if (p && ms->pstatus == MSG_PS_ONLINE) pres_mark(svc, p, NULL);
}

/* Any event from a device is activity. Cheap on the hot path: a store of
 * the time, and timer work only when the device was idle. */
static void pres_activity(msg_service *svc, msess *ms)
{
    ms->last_act = ploop_now(svc->loop);
    if (!ms->idle) return;
    ms->idle = false;
    ploop_timer_start(svc->loop, &ms->idle_timer, svc->o.away_after_ms);
    mpres *p = pres_get(svc, ms->user->id, true);
    if (p && ms->pstatus == MSG_PS_ONLINE) pres_mark(svc, p, ms);
}

static int join_room_presence(const char *conv, void *arg)
{
    msess *ms = arg;
    if (strncmp(conv, "room:", 5) != 0) return 0;
    char r[PROOM_MAX];
    proom(r, 'r', conv + 5);
    parley_join(ms->sock, r);
    return 0;
}

/* A device connected (the user's sockets list has it already). */
static void pres_connected(msg_service *svc, msess *ms)
{
    ms->pstatus = MSG_PS_ONLINE;
    ms->last_act = ploop_now(svc->loop);
    ptimer_init(&ms->idle_timer, on_idle);
    if (svc->o.away_after_ms) ploop_timer_start(svc->loop, &ms->idle_timer, svc->o.away_after_ms);
    char r[PROOM_MAX];
    proom(r, 'u', ms->user->id);
    parley_join(ms->sock, r);
    if (mstore_user_convs(svc->store, ms->user->id, join_room_presence, ms) < 0)
        plog_error("messaging: cannot list the rooms of %s for presence", ms->user->id);
    mpres *p = pres_get(svc, ms->user->id, true);
    if (!p) return;
    /* Recorded at connection too, so that a server killed while the user
     * is connected still knows roughly when they were last there. */
    if (ms->user->n == 1 && !p->invisible) { /* frozen while invisible */
        p->last_seen = wall_ms();
        if (mstore_presence_seen(svc->store, p->id, p->last_seen) != 0)
            plog_error("messaging: cannot store when %s was last seen", p->id);
    }
    pres_mark(svc, p, ms);
}

static void subs_free(msess *ms)
{
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&ms->subs, &pos))) free(e->val);
    pmap_free(&ms->subs);
    memset(&ms->subs, 0, sizeof ms->subs);
    ms->nsubs = 0;
}

/* A device is gone: `user` is its user, `left` how many devices the user
 * still has (ms is already off the user's list). */
static void pres_disconnected(msg_service *svc, msess *ms, const char *user, unsigned left)
{
    ploop_timer_stop(svc->loop, &ms->idle_timer);
    subs_free(ms);
    mpres *p = pres_get(svc, user, true);
    if (!p) return;
    if (p->trigger == ms) p->trigger = NULL;
    if (left == 0 && !p->invisible) { /* frozen while invisible */
        p->last_seen = wall_ms();
        if (mstore_presence_seen(svc->store, p->id, p->last_seen) != 0)
            plog_error("messaging: cannot store when %s was last seen", p->id);
    }
    pres_mark(svc, p, NULL);
}

/* ---- request helpers ---- */

/* Is the user part of conversation c? DMs by their id, rooms by the
 * store. Answers not_member (or internal) itself when not. */
static bool check_member(msg_service *svc, msess *ms, int64_t ack_id, const msg_conv *c)
{
    const char *user = ms->user->id;
    if (c->kind == MSG_CONV_DM) {
        if (msg_conv_peer(c, user)) return true;
        reply_fail(svc, ms, ack_id, MSG_E_NOT_MEMBER, "conversation",
                   "you are not a participant of this conversation");
        return false;
    }
    int p = mstore_is_participant(svc->store, c->id, user);
    if (p == 1) return true;
    if (p < 0)
        reply_internal(svc, ms, ack_id);
    else {
        msg_error err;
        msg_fail(&err, MSG_E_NOT_MEMBER, "room", "you are not a member of room %s", c->a);
        reply_error(svc, ms, ack_id, &err);
    }
    return false;
}

static const char *media_family(msg_type t)
{
    switch (t) {
    case MSG_IMAGE:
        return "image/";
    case MSG_AUDIO:
        return "audio/";
    case MSG_VIDEO:
        return "video/";
    default:
        return NULL;
    }
}

/* ---- requests ---- */

typedef void (*req_fn)(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                       int64_t ack_id);

/* A resend: the stored message answers it, whatever the resend says.
 * True when answered (the duplicate, or a storage error). */
static bool answer_duplicate(msg_service *svc, msess *ms, int64_t ack_id, const char *user,
                             const char *client_id)
{
    mstore_msg stored;
    int found = mstore_find(svc->store, user, client_id, &stored);
    if (found < 0) reply_internal(svc, ms, ack_id);
    if (found <= 0) return found < 0;
    svc->stats.duplicates++;
    pbuf *ack = &svc->scratch2;
    ack->len = 0;
    int rc = pbuf_append_str(ack, "{\"ok\":true,\"duplicate\":true,\"message\":");
    if (rc == 0) rc = msg_encode_message(ack, &stored.m, stored.content_json, stored.content_len);
    if (rc == 0) rc = pbuf_append(ack, "}", 1);
    /* The original may be in the open batch: then the answer waits for it. */
    if (rc == 0)
        queue_ack_json(svc, ms, ack_id, (char *)ack->ptr, ack->len, mstore_in_batch(svc->store));
    else
        reply_internal(svc, ms, ack_id);
    return true;
}

/* Refusals that depend on the server's state (membership, media) are
 * not given to a resend of a message stored while they did not hold. */
static void refuse_send(msg_service *svc, msess *ms, int64_t ack_id, const msg_send *m,
                        const msg_error *err)
{
    if (!answer_duplicate(svc, ms, ack_id, ms->user->id, m->client_id))
        reply_error(svc, ms, ack_id, err);
}

static void req_send(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                     int64_t ack_id)
{
    (void)a;
    const char *user = ms->user->id;
    msg_send m;
    msg_error err;
    msg_conv c;
    if (msg_parse_send(obj, &svc->o.limits, &m, &err) || msg_send_resolve(&m, user, &c, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    if (m.type == MSG_SYSTEM && !ms->admin) {
        reply_fail(svc, ms, ack_id, MSG_E_FORBIDDEN, "type",
                   "system messages need a token with the admin role");
        return;
    }
    /* Limits before any store work; the request's size stands for the
     * message's bytes. After one refusal every send of this socket is
     * refused until the hint has passed, so that a client resending in
     * order cannot have a later message stored before an earlier one. */
    uint64_t now = ploop_now(svc->loop), retry = 0;
    if (ms->send_hold > now) {
        refuse_limit(svc, ms, ack_id, MSG_E_RATE_LIMITED, ms->send_hold - now, NULL,
                     "too many messages: slow down");
        return;
    }
    bool ok = mquota_user_take(svc->quota, user, MQ_MESSAGES, 1, &retry);
    if (ok && !mquota_user_take(svc->quota, user, MQ_BYTES, obj->len, &retry)) {
        mquota_user_refund(svc->quota, user, MQ_MESSAGES, 1);
        ok = false;
    }
    if (!ok) {
        ms->send_hold = now + retry;
        refuse_limit(svc, ms, ack_id, MSG_E_RATE_LIMITED, retry, NULL,
                     "too many messages: slow down");
        return;
    }
    if (refuse_if_disk_low(svc, ms, ack_id)) return;
    uint64_t quota = mquota_opts_of(svc->quota)->storage_per_user;
    int64_t used = 0;
    if (quota && mstore_storage_bytes(svc->store, user, &used) == 0 &&
        (uint64_t)used + obj->len > quota) {
        refuse_limit(svc, ms, ack_id, MSG_E_QUOTA_EXCEEDED, 0, NULL,
                     "your storage quota is used up");
        return;
    }
    if (m.priority == MSG_PRIO_URGENT) {
        /* Urgent is what a recipient cannot easily tune out: few per
         * sender and recipient (per room for rooms); beyond that the
         * message goes on as high (stored so, said in the answer). */
        char to[MSG_CONV_MAX + 2];
        const char *peer = c.kind == MSG_CONV_DM ? msg_conv_peer(&c, user) : NULL;
        snprintf(to, sizeof to, "%s%s", peer ? "@" : "#", peer ? peer : c.id);
        if (!mquota_pair_take(svc->quota, user, to, MQ_URGENT, &retry)) {
            m.priority = MSG_PRIO_HIGH;
            svc->stats.urgent_downgraded++;
        }
    }
    if (c.kind == MSG_CONV_ROOM) {
        int p = mstore_is_participant(svc->store, c.id, user);
        if (p != 1) {
            if (p < 0) {
                reply_internal(svc, ms, ack_id);
                return;
            }
            msg_fail(&err, MSG_E_NOT_MEMBER, "room", "you are not a member of room %s", c.a);
            refuse_send(svc, ms, ack_id, &m, &err);
            return;
        }
    }
    const char *media = NULL;
    if (msg_type_has_media(m.type)) {
        media = m.content.media;
        int64_t size = 0;
        /* The type this user knows the media by (their upload's, or the
         * one of the conversation they saw it in): never another user's.
         * Absent and not visible are one answer. */
        int r = mstore_media_for(svc->store, media, user, &size, m.content.mime);
        if (r < 0) {
            reply_internal(svc, ms, ack_id);
            return;
        }
        if (r == 0) {
            msg_fail(&err, MSG_E_NOT_FOUND, "content.media",
                     "no media with this id: upload it first");
            refuse_send(svc, ms, ack_id, &m, &err);
            return;
        }
        const char *fam = media_family(m.type);
        if (fam && strncmp(m.content.mime, fam, strlen(fam)) != 0) {
            msg_fail(&err, MSG_E_INVALID_FIELD, "content.media",
                     "%s message needs %s* media, not %s", msg_type_with_article(m.type), fam,
                     m.content.mime);
            reply_error(svc, ms, ack_id, &err);
            return;
        }
        m.content.size = size;
    }
    pbuf *msg = &svc->scratch, *content = &svc->scratch2;
    msg->len = content->len = 0;
    if (msg_encode_content(content, m.type, &m.content) != 0) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    /* Insert first: a resend is rare, and the unique index finds it. */
    mstore_msg stored;
    int rc = mstore_insert(svc->store, &c, user, m.client_id, m.type, m.priority,
                           (const char *)content->ptr, content->len, media, m.content.mime,
                           wall_ms(), &stored);
    if (rc == MSTORE_DUPLICATE) {
        if (!answer_duplicate(svc, ms, ack_id, user, m.client_id)) reply_internal(svc, ms, ack_id);
        return;
    }
    if (rc == PARLEY_ESTATE) {
        reply_fail(svc, ms, ack_id, MSG_E_NOT_MEMBER, "room", "no such room");
        return;
    }
    if (rc == 0) rc = msg_encode_message(msg, &stored.m, stored.content_json, stored.content_len);
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    svc->stats.messages++;
    pbuf *ack = content;
    ack->len = 0;
    rc = pbuf_append_str(ack, "{\"ok\":true,\"duplicate\":false,\"message\":");
    if (rc == 0) rc = pbuf_append(ack, msg->ptr, msg->len);
    if (rc == 0) rc = pbuf_append(ack, "}", 1);
    if (rc == 0) queue_ack_json(svc, ms, ack_id, (char *)ack->ptr, ack->len, true);
    obx *b = queue_bcast(svc, ms, &c, MSG_EV_NEW_MESSAGE, (char *)msg->ptr, msg->len, true);
    if (b) {
        b->low = m.priority == MSG_PRIO_LOW && svc->o.low_delay_ms > 0;
        b->prio = (uint8_t)m.priority;
        if (m.priority != MSG_PRIO_NORMAL) svc->fan_mixed = true;
    }
    /* Urgent messages notify every recipient; a room text naming members
     * with @user notifies them (do_mentions). */
    bool mentions = c.kind == MSG_CONV_ROOM && m.type == MSG_TEXT &&
                    memchr(msg->ptr, '@', msg->len) != NULL;
    /* ... and a high one notifies the recipients without a live device. */
    if (m.priority == MSG_PRIO_URGENT || m.priority == MSG_PRIO_HIGH || mentions) {
        obx *n = obx_new(svc, OB_NOTIFY, NULL, true);
        if (!n) return;
        n->meta = stored.m;
        snprintf(n->user, sizeof n->user, "%s", user);
        rc = pbuf_append(&n->json, "[", 1);
        if (rc == 0) rc = pbuf_append(&n->json, msg->ptr, msg->len);
        if (rc == 0) rc = pbuf_append(&n->json, "]", 1);
        if (!json_done(&n->json, rc)) {
            obx_release(svc, n);
            return;
        }
        obx_push(svc, n);
    }
}

static void req_receipt(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                        int64_t ack_id)
{
    (void)a;
    const char *user = ms->user->id;
    msg_receipt r;
    msg_error err;
    msg_conv c;
    if (msg_parse_receipt(obj, &r, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    msg_conv_parse(&c, r.conversation, strlen(r.conversation));
    if (!check_member(svc, ms, ack_id, &c)) return;
    int64_t last = mstore_last_seq(svc->store, c.id);
    if (last < 0) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    if (r.seq > last) {
        msg_fail(&err, MSG_E_INVALID_FIELD, "seq", "seq %lld is beyond the last message (%lld)",
                 (long long)r.seq, (long long)last);
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    int64_t d, rd;
    bool changed;
    int rc = mstore_receipt(svc->store, c.id, user, r.status == MSG_DELIVERED ? r.seq : 0,
                            r.status == MSG_READ ? r.seq : 0, &d, &rd, &changed);
    if (rc == PARLEY_ESTATE) {
        reply_fail(svc, ms, ack_id, MSG_E_NOT_MEMBER, "conversation",
                   "you are not a participant of this conversation");
        return;
    }
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    if (changed) svc->mx.receipts[r.status == MSG_READ]++;
    msg_status st = {.delivered = d, .read = rd};
    memcpy(st.conversation, c.id, sizeof st.conversation);
    snprintf(st.user, sizeof st.user, "%s", user);
    pbuf *st_json = &svc->scratch, *b = &svc->scratch2;
    st_json->len = b->len = 0;
    rc = msg_encode_status(st_json, &st);
    /* The acknowledgement is the status object with "ok" in front. */
    if (rc == 0) rc = pbuf_append_str(b, "{\"ok\":true,");
    if (rc == 0) rc = pbuf_append(b, st_json->ptr + 1, st_json->len - 1);
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, changed || mstore_in_batch(svc->store));
    if (changed) queue_bcast(svc, ms, &c, MSG_EV_STATUS, (char *)st_json->ptr, st_json->len, true);
}

static void req_typing(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                       int64_t ack_id)
{
    (void)a;
    msg_typing t;
    msg_error err;
    msg_conv c;
    if (msg_parse_typing(obj, false, &t, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    msg_conv_parse(&c, t.conversation, strlen(t.conversation));
    if (!check_member(svc, ms, ack_id, &c)) return;
    /* Typing would give away a user who appears offline: a start is not
     * relayed then (a stop is, for an indicator shown before). */
    mpres *p = t.start ? pres_get(svc, ms->user->id, false) : NULL;
    if (!p || !p->invisible) typing_set(svc, &c, ms->user->id, t.start);
    svc->mx.typing_in++;
    static const char ok[] = "{\"ok\":true}";
    queue_ack_json(svc, ms, ack_id, ok, sizeof ok - 1, false);
}

static void req_sync(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                     int64_t ack_id)
{
    (void)a;
    msg_sync s;
    msg_error err;
    if (msg_parse_sync(obj, &s, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    /* Answered after the iteration's commit and broadcasts (see the top). */
    obx *e = obx_new(svc, OB_SYNC, ms, false);
    if (!e) return;
    e->ack_id = ack_id;
    if (!json_done(&e->json, pbuf_append(&e->json, obj->p, obj->len))) {
        obx_release(svc, e);
        return;
    }
    obx_push(svc, e);
}

typedef struct hist_page {
    pbuf *out;
    int64_t first_seq; /* 0 while empty */
} hist_page;

static int append_msg(const mstore_msg *m, void *arg)
{
    hist_page *h = arg;
    int rc = h->first_seq ? pbuf_append(h->out, ",", 1) : 0;
    if (!h->first_seq) h->first_seq = m->m.seq;
    return rc ? rc : msg_encode_message(h->out, &m->m, m->content_json, m->content_len);
}

static void req_history(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                        int64_t ack_id)
{
    (void)a;
    msg_history h;
    msg_error err;
    msg_conv c;
    if (msg_parse_history(obj, &h, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    msg_conv_parse(&c, h.conversation, strlen(h.conversation));
    if (!check_member(svc, ms, ack_id, &c)) return;
    pbuf *b = &svc->scratch;
    b->len = 0;
    int rc = pbuf_append_str(b, "{\"ok\":true,\"conversation\":");
    if (rc == 0) rc = json_append_string(b, c.id, strlen(c.id));
    if (rc == 0) rc = pbuf_append_str(b, ",\"messages\":[");
    hist_page hp = {b, 0};
    if (rc == 0) rc = mstore_messages_before(svc->store, c.id, h.before, h.limit, append_msg, &hp);
    /* Seqs have no gaps: older messages exist when the first one is not 1. */
    bool more = hp.first_seq > 1;
    if (rc == 0) rc = pbuf_appendf(b, "],\"more\":%s}", more ? "true" : "false");
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, mstore_in_batch(svc->store));
}

static int append_user(const char *user, int64_t d, int64_t r, void *arg)
{
    (void)d;
    (void)r;
    pbuf *out = arg;
    int rc = out->ptr[out->len - 1] == '[' ? 0 : pbuf_append(out, ",", 1);
    return rc ? rc : json_append_string(out, user, strlen(user));
}

static void req_room(msg_service *svc, msess *ms, const json_val *obj, int64_t ack_id, int which)
{
    const char *user = ms->user->id;
    char room[MSG_ROOM_MAX + 1];
    msg_error err;
    if (msg_parse_room_req(obj, room, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    msg_conv c;
    msg_conv_room(&c, room);
    bool added = false;
    int rc = 0;
    if (which == OB_JOIN) {
        if (!user_rate_ok(svc, ms, ack_id, MQ_JOINS, 1, "too many rooms joined: slow down") ||
            refuse_if_disk_low(svc, ms, ack_id))
            return;
        uint32_t max = mquota_opts_of(svc->quota)->max_rooms;
        if (max && mstore_is_participant(svc->store, c.id, user) != 1) {
            int64_t n = mstore_user_rooms(svc->store, user);
            if (n < 0) {
                reply_internal(svc, ms, ack_id);
                return;
            }
            if ((uint64_t)n >= max) {
                char why[96];
                snprintf(why, sizeof why, "you are a member of %lld rooms, the most there may be",
                         (long long)n);
                refuse_limit(svc, ms, ack_id, MSG_E_QUOTA_EXCEEDED, 0, "room", why);
                return;
            }
        }
        rc = mstore_join(svc->store, room, user, wall_ms(), &added);
    } else if (which == OB_LEAVE) {
        rc = mstore_leave(svc->store, room, user);
        if (rc == PARLEY_ESTATE) {
            msg_fail(&err, MSG_E_NOT_MEMBER, "room", "you are not a member of room %s", room);
            reply_error(svc, ms, ack_id, &err);
            return;
        }
    } else if (!check_member(svc, ms, ack_id, &c)) {
        return;
    }
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    pbuf *b = &svc->scratch;
    b->len = 0;
    rc = pbuf_append_str(b, "{\"ok\":true,\"room\":");
    if (rc == 0) rc = json_append_string(b, room, strlen(room));
    if (which == OB_JOIN) {
        int64_t last = mstore_last_seq(svc->store, c.id);
        if (rc == 0) rc = last < 0 ? (int)last : 0;
        if (rc == 0) rc = pbuf_append_str(b, ",\"conversation\":");
        if (rc == 0) rc = json_append_string(b, c.id, strlen(c.id));
        if (rc == 0) rc = pbuf_appendf(b, ",\"last_seq\":%lld", (long long)last);
    }
    if (which != OB_LEAVE) {
        if (rc == 0) rc = pbuf_append_str(b, ",\"members\":[");
        if (rc == 0) rc = mstore_participants(svc->store, c.id, append_user, b);
        if (rc == 0) rc = pbuf_append(b, "]", 1);
    }
    if (rc == 0) rc = pbuf_append(b, "}", 1);
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, mstore_in_batch(svc->store));
    if (which == OB_JOIN && !added) return;
    if (which == OB_JOIN || which == OB_LEAVE) {
        pbuf *ev = &svc->scratch2;
        ev->len = 0;
        rc = pbuf_append_str(ev, "{\"room\":");
        if (rc == 0) rc = json_append_string(ev, room, strlen(room));
        if (rc == 0) rc = pbuf_append_str(ev, ",\"conversation\":");
        if (rc == 0) rc = json_append_string(ev, c.id, strlen(c.id));
        if (rc == 0) rc = pbuf_append_str(ev, ",\"user\":");
        if (rc == 0) rc = json_append_string(ev, user, strlen(user));
        if (rc == 0) rc = pbuf_append(ev, "}", 1);
        if (rc) return;
        /* Joining: the user's live sockets enter first, so that their other
         * devices hear of it; leaving: they hear of it, then leave. */
        if (which == OB_JOIN) queue_room_change(svc, OB_JOIN, user, c.id, true);
        queue_bcast(svc, ms, &c, which == OB_JOIN ? MSG_EV_MEMBER_JOINED : MSG_EV_MEMBER_LEFT,
                    (char *)ev->ptr, ev->len, true);
        if (which == OB_LEAVE) queue_room_change(svc, OB_LEAVE, user, c.id, true);
    }
}

static void req_join(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                     int64_t ack_id)
{
    (void)a;
    req_room(svc, ms, obj, ack_id, OB_JOIN);
}

static void req_leave(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                      int64_t ack_id)
{
    (void)a;
    req_room(svc, ms, obj, ack_id, OB_LEAVE);
}

static void req_members(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                        int64_t ack_id)
{
    (void)a;
    req_room(svc, ms, obj, ack_id, -1);
}

/* The upload quotas of `user` for `bytes` more: 0, or the error code
 * with err filled (quota_exceeded; daily ones with the time until the UTC
 * day ends as the retry hint). */
static msg_errcode upload_quota(msg_service *svc, const char *user, uint64_t bytes, msg_error *err)
{
    const mquota_opts *q = mquota_opts_of(svc->quota);
    int64_t now = wall_ms(), day = mstore_utc_day(now), uploads = 0, today = 0, used = 0;
    if ((q->uploads_per_day || q->upload_bytes_per_day) &&
        mstore_usage_day(svc->store, user, day, &uploads, &today) != 0)
        return msg_fail(err, MSG_E_INTERNAL, NULL, "storage failure");
    if ((q->uploads_per_day && (uint64_t)uploads >= q->uploads_per_day) ||
        (q->upload_bytes_per_day && (uint64_t)today + bytes > q->upload_bytes_per_day)) {
        msg_fail(err, MSG_E_QUOTA_EXCEEDED, NULL,
                 "your uploads for today are used up (%u uploads, %llu bytes a day)",
                 q->uploads_per_day, (unsigned long long)q->upload_bytes_per_day);
        err->retry_after_ms = (day + 1) * 86400000 - now;
        return MSG_E_QUOTA_EXCEEDED;
    }
    if (q->storage_per_user && mstore_storage_bytes(svc->store, user, &used) == 0 &&
        (uint64_t)used + bytes > q->storage_per_user)
        return msg_fail(err, MSG_E_QUOTA_EXCEEDED, NULL, "your storage quota is used up");
    return MSG_OK;
}

/* Records an upload stored as `id` (its usage counted); fills the media
 * object {"id","mime","size"} with the type this user gave. */
static int record_upload(msg_service *svc, const char *user, const char *id, size_t len,
                         const char *mime, pbuf *out, bool *existed)
{
    int rc = mstore_media_put(svc->store, id, (int64_t)len, mime, user, wall_ms(), existed);
    if (rc == 0)
        rc = mstore_usage_add_upload(svc->store, user, mstore_utc_day(wall_ms()), (int64_t)len);
    if (rc == 0) rc = pbuf_append_str(out, "{\"id\":");
    if (rc == 0) rc = json_append_string(out, id, strlen(id));
    if (rc == 0) rc = pbuf_append_str(out, ",\"mime\":");
    if (rc == 0) rc = json_append_string(out, mime, strlen(mime));
    if (rc == 0) rc = pbuf_appendf(out, ",\"size\":%lld}", (long long)len);
    return rc;
}

/* Stores uploaded bytes; fills the media object. */
static int store_media(msg_service *svc, const char *user, const void *data, size_t len,
                       const char *mime, pbuf *out, bool *existed)
{
    char id[MSG_MEDIA_ID_LEN + 1];
    int rc = media_put(svc->media, data, len, id);
    if (rc == 0) rc = record_upload(svc, user, id, len, mime, out, existed);
    return rc;
}

static void req_upload(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                       int64_t ack_id)
{
    char mime[MSG_MIME_MAX + 1];
    unsigned num;
    msg_error err;
    if (msg_parse_upload(obj, mime, &num, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    if (refuse_if_disk_low(svc, ms, ack_id)) return;
    if (num >= a->nbins || a->bins[num].len == 0) {
        reply_fail(svc, ms, ack_id, MSG_E_INVALID_FIELD, "data",
                   "data must be a non-empty binary attachment");
        return;
    }
    if (a->bins[num].len > svc->o.max_media_bytes) {
        msg_fail(&err, MSG_E_TOO_LARGE, "data", "%zu bytes, the limit is %zu", a->bins[num].len,
                 svc->o.max_media_bytes);
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    msg_errcode q = upload_quota(svc, ms->user->id, a->bins[num].len, &err);
    if (q == MSG_E_QUOTA_EXCEEDED) {
        refuse_limit(svc, ms, ack_id, q, (uint64_t)err.retry_after_ms, NULL, err.message);
        return;
    }
    if (q) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    pbuf *b = &svc->scratch;
    b->len = 0;
    bool existed;
    int rc = pbuf_append_str(b, "{\"ok\":true,\"media\":");
    if (rc == 0)
        rc = store_media(svc, ms->user->id, a->bins[num].data, a->bins[num].len, mime, b, &existed);
    if (rc == 0) rc = pbuf_append(b, "}", 1);
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, true);
}

/* ---- presence requests ---- */

static void req_presence_set(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                             int64_t ack_id)
{
    (void)a;
    msg_pstatus st;
    bool has_text;
    char text[MSG_PRESENCE_TEXT_MAX + 1];
    msg_error err;
    int inv;
    if (msg_parse_presence_set(obj, &st, &has_text, text, &inv, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    if (!user_rate_ok(svc, ms, ack_id, MQ_PRESENCE, 1, "too many presence changes: slow down"))
        return;
    if ((has_text || inv >= 0) && refuse_if_disk_low(svc, ms, ack_id)) return;
    mpres *p = pres_get(svc, ms->user->id, true);
    if (!p) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    if (has_text && strcmp(text, p->text) != 0) {
        if (mstore_presence_text(svc->store, p->id, text) != 0) {
            reply_internal(svc, ms, ack_id);
            return;
        }
        memcpy(p->text, text, sizeof p->text);
    }
    if (inv >= 0 && (bool)inv != p->invisible) {
        /* Last seen freezes at the moment it turns on (what others are
         * told from now on) and resumes from now when it turns off. */
        int64_t now = wall_ms();
        if (mstore_presence_set_invisible(svc->store, p->id, inv, now) != 0 ||
            mstore_presence_seen(svc->store, p->id, now) != 0) {
            reply_internal(svc, ms, ack_id);
            return;
        }
        p->invisible = inv;
        p->last_seen = now;
    }
    if (st != MSG_PS_OFFLINE) ms->pstatus = (uint8_t)st; /* not given: kept */
    pres_mark(svc, p, ms);
    msg_presence cur;
    pbuf *b = &svc->scratch;
    b->len = 0;
    int rc = pres_compute(svc, p->id, &cur, true);
    if (rc == 0) rc = pbuf_append_str(b, "{\"ok\":true,\"presence\":");
    if (rc == 0) rc = msg_encode_presence(b, &cur);
    if (rc == 0) rc = pbuf_append(b, "}", 1);
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    /* A new text or invisibility is acknowledged once it is stored. */
    queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, mstore_in_batch(svc->store));
}

/* Appends the Presence objects of users[] (comma-separated), as `self`
 * (the asking user) sees them. */
static int append_presences(msg_service *svc, pbuf *b, char users[][MSG_USER_MAX + 1], size_t n,
                            const char *self)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        msg_presence cur;
        rc = pres_compute(svc, users[i], &cur, strcmp(users[i], self) == 0);
        if (rc == 0 && i) rc = pbuf_append(b, ",", 1);
        if (rc == 0) rc = msg_encode_presence(b, &cur);
    }
    return rc;
}

static void req_presence_sub(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                             int64_t ack_id)
{
    (void)a;
    char users[MSG_PRESENCE_USERS_MAX][MSG_USER_MAX + 1];
    size_t n;
    msg_error err;
    if (msg_parse_presence_users(obj, users, &n, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    /* The limit first, so that a refused request changes nothing. */
    size_t fresh = 0;
    for (size_t i = 0; i < n; i++) {
        bool seen = pmap_get(&ms->subs, users[i], strlen(users[i])) != NULL;
        for (size_t j = 0; j < i && !seen; j++) seen = strcmp(users[i], users[j]) == 0;
        fresh += !seen;
    }
    if (ms->nsubs + fresh > MSG_PRESENCE_SUBS_MAX) {
        msg_fail(&err, MSG_E_TOO_LARGE, "users",
                 "a socket may subscribe to at most %d users (%u now)", MSG_PRESENCE_SUBS_MAX,
                 ms->nsubs);
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(users[i]);
        if (pmap_get(&ms->subs, users[i], len)) continue;
        psub *sub = pcalloc(1, sizeof *sub);
        if (!sub) break;
        memcpy(sub->id, users[i], len + 1);
        if (pmap_put(&ms->subs, sub->id, len, sub) != 0) {
            free(sub);
            break;
        }
        ms->nsubs++;
        char r[PROOM_MAX];
        proom(r, 's', sub->id);
        parley_join(ms->sock, r);
    }
    pbuf *b = &svc->scratch;
    b->len = 0;
    int rc = pbuf_append_str(b, "{\"ok\":true,\"presences\":[");
    if (rc == 0) rc = append_presences(svc, b, users, n, ms->user->id);
    if (rc == 0) rc = pbuf_append_str(b, "]}");
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, false);
}

static void req_presence_unsub(msg_service *svc, msess *ms, const json_val *obj,
                               const parley_args *a, int64_t ack_id)
{
    (void)a;
    char users[MSG_PRESENCE_USERS_MAX][MSG_USER_MAX + 1];
    size_t n;
    msg_error err;
    if (msg_parse_presence_users(obj, users, &n, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        psub *sub = pmap_del(&ms->subs, users[i], strlen(users[i]));
        if (!sub) continue;
        char r[PROOM_MAX];
        proom(r, 's', sub->id);
        parley_leave(ms->sock, r);
        free(sub);
        ms->nsubs--;
    }
    static const char ok[] = "{\"ok\":true}";
    queue_ack_json(svc, ms, ack_id, ok, sizeof ok - 1, false);
}

typedef struct pres_list {
    msg_service *svc;
    pbuf *out;
    bool first;
    const char *self; /* the asking user */
} pres_list;

static int append_member_presence(const char *user, int64_t d, int64_t r, void *arg)
{
    (void)d;
    (void)r;
    pres_list *l = arg;
    msg_presence cur;
    int rc = pres_compute(l->svc, user, &cur, strcmp(user, l->self) == 0);
    if (rc == 0 && !l->first) rc = pbuf_append(l->out, ",", 1);
    if (rc == 0) rc = msg_encode_presence(l->out, &cur);
    l->first = false;
    return rc;
}

static void req_presence_room(msg_service *svc, msess *ms, const json_val *obj,
                              const parley_args *a, int64_t ack_id)
{
    (void)a;
    char room[MSG_ROOM_MAX + 1];
    msg_error err;
    if (msg_parse_room_req(obj, room, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    msg_conv c;
    msg_conv_room(&c, room);
    if (!check_member(svc, ms, ack_id, &c)) return;
    pbuf *b = &svc->scratch;
    b->len = 0;
    int rc = pbuf_append_str(b, "{\"ok\":true,\"room\":");
    if (rc == 0) rc = json_append_string(b, room, strlen(room));
    if (rc == 0) rc = pbuf_append_str(b, ",\"presences\":[");
    pres_list l = {svc, b, true, ms->user->id};
    if (rc == 0) rc = mstore_participants(svc->store, c.id, append_member_presence, &l);
    if (rc == 0) rc = pbuf_append_str(b, "]}");
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, mstore_in_batch(svc->store));
}

/* ---- notifications ---- */

#define NOTIF_ACK_TIMEOUT_MS                                                                       \
    60000                           /* a device that never acknowledges: delivered comes from sync \
                                     */
#define NOTIF_SWEEP_MAX_MS  3600000 /* the expiry timer re-checks at least hourly (clock jumps) */
#define NOTIF_HTTP_MAX_BODY 65536
#define NOTIF_BODY_CUT      256 /* urgent message text in a notification body */

/* A user whose unread count may have changed in this iteration. */
typedef struct nuser {
    struct nuser *next;
    char id[MSG_USER_MAX + 1];
} nuser;

static void unread_mark(msg_service *svc, const char *user)
{
    size_t len = strlen(user);
    if (pmap_get(&svc->nunread, user, len)) return;
    nuser *u = pcalloc(1, sizeof *u);
    if (!u) return;
    memcpy(u->id, user, len + 1);
    if (pmap_put(&svc->nunread, u->id, len, u) != 0) {
        free(u);
        return;
    }
    u->next = svc->nunread_head;
    svc->nunread_head = u;
    schedule(svc);
}

/* After the commit: `unread` to every socket of each marked user (the
 * presence room pu:<user> holds all of them, synced or not). */
static void unread_flush(msg_service *svc)
{
    int64_t now = wall_ms();
    nuser *u;
    while ((u = svc->nunread_head)) {
        svc->nunread_head = u->next;
        pmap_del(&svc->nunread, u->id, strlen(u->id));
        int64_t n = user_get(svc, u->id, false) ? mstore_notif_unread(svc->store, u->id, now) : -1;
        if (n >= 0) {
            char args[48], r[PROOM_MAX];
            snprintf(args, sizeof args, "[{\"count\":%lld}]", (long long)n);
            proom(r, 'u', u->id);
            const char *rooms[1] = {r};
            parley_target t = {.rooms = rooms, .nrooms = 1};
            if (parley_broadcast(svc->nsp, &t, MSG_EV_UNREAD, args, NULL, 0) < 0)
                plog_error("messaging: unread count for %s not sent", u->id);
        }
        free(u);
    }
}

typedef struct nack {
    msg_service *svc;
    int64_t id;
    char user[MSG_USER_MAX + 1];
} nack;

/* The first acknowledgement from any device marks the notification
 * delivered (later ones find it delivered and change nothing). */
static void on_notif_ack(parley_socket *s, int err, const parley_args *a, void *user)
{
    (void)s;
    (void)a;
    nack *k = user;
    /* err != 0 also comes while the server shuts down: touch nothing. */
    if (err == 0) {
        if (mstore_notif_delivered(k->svc->store, k->user, k->id - 1, k->id) == 0)
            schedule(k->svc);
        else
            plog_error("messaging: cannot mark notification %lld delivered", (long long)k->id);
    }
    free(k);
}

static void do_npush(msg_service *svc, obx *e)
{
    muser *u = user_get(svc, e->user, false);
    for (msess *ms = u ? u->socks : NULL; ms; ms = ms->next) {
        nack *k = pcalloc(1, sizeof *k);
        if (!k) return;
        k->svc = svc;
        k->id = e->meta.id;
        memcpy(k->user, e->user, sizeof k->user);
        parley_emit_opts o = {
            .size = sizeof o,
            .ack = on_notif_ack, .ack_user = k, .timeout_ms = NOTIF_ACK_TIMEOUT_MS};
        if (parley_emit_opts_send(ms->sock, &o, MSG_EV_NOTIFICATION, (const char *)e->json.ptr,
                                  NULL, 0) != 0)
            free(k);
        else
            svc->stats.notif_pushed++;
    }
}

/* The user's preferences; the muted lists point into buf. 1 stored, 0
 * defaults, negative on error (defaults in *p). */
static int nprefs_load(msg_service *svc, const char *user, pbuf *buf, msg_nprefs *p)
{
    msg_nprefs_default(p);
    int r = mstore_nprefs_get(svc->store, user, buf);
    if (r <= 0) return r;
    json_val obj;
    unsigned given;
    msg_error err;
    if (json_parse((const char *)buf->ptr, buf->len, 4, &obj, NULL) != 0 ||
        msg_parse_nprefs(&obj, p, &given, &err) != MSG_OK) {
        plog_error("messaging: bad stored notification preferences of %s", user);
        msg_nprefs_default(p);
        return PARLEY_EIO;
    }
    return 1;
}

static bool notif_quiet_now(msg_service *svc, const msg_nprefs *p, int64_t now);

/* The suppression rule of docs/PROTOCOL.md ("Notifications"): the
 * recipient stays in control. Suppressed when the sender is muted, a
 * message/mention came from a muted room, in_app is off or the type is
 * off; otherwise pushed, except inside quiet hours — which only urgent
 * notifications pass (and an urgent message from someone who is not a
 * contact is made high before it gets here). */
static int notif_suppressed(msg_service *svc, const msg_notification *n, const char *room,
                            int64_t now, bool *push_it)
{
    msg_nprefs p;
    /* Unreadable preferences push (defaults): losing a notification is
     * worse than an unwanted one. */
    nprefs_load(svc, n->to, &svc->nprefs_buf, &p);
    /* The push webhook's rule (push_eligible): a recipient with no /chat
     * socket at all when the notification is stored (a socket, synced or
     * not, gets the live `notification` event after the commit). */
    if (svc->push && p.push) {
        muser *u = user_get(svc, n->to, false);
        bool quiet = n->priority < p.q_min && p.quiet && notif_quiet_now(svc, &p, now);
        *push_it = push_eligible(&p, n, room, quiet, u && u->socks, now);
    }
    if (n->from[0] && msg_nprefs_has(&p.muted_users, n->from)) return NS_MUTED_USER;
    if (room && (n->type == MSG_NT_MESSAGE || n->type == MSG_NT_MENTION) &&
        msg_nprefs_has(&p.muted_rooms, room))
        return NS_MUTED_ROOM;
    if (!p.in_app) return NS_IN_APP_OFF;
    if (p.types_off & (1u << n->type)) return NS_TYPE_OFF;
    if (n->priority >= p.q_min) return NS_NONE;
    return p.quiet && notif_quiet_now(svc, &p, now) ? NS_QUIET : NS_NONE;
}

static void nexp_arm(msg_service *svc, int64_t at)
{
    if (ptimer_armed(&svc->nexp_timer) && svc->nexp_at <= at) return;
    ploop_timer_stop(svc->loop, &svc->nexp_timer);
    svc->nexp_at = at;
    int64_t d = at - wall_ms() + 1; /* expired means expires <= now */
    if (d < 1) d = 1;
    if (d > NOTIF_SWEEP_MAX_MS) d = NOTIF_SWEEP_MAX_MS;
    ploop_timer_start(svc->loop, &svc->nexp_timer, (uint64_t)d);
}

static int sweep_user(const char *user, void *arg)
{
    unread_mark(arg, user);
    return 0;
}

static void on_nexp(ptimer *t)
{
    msg_service *svc = PARLEY_CONTAINER_OF(t, msg_service, nexp_timer);
    int64_t now = wall_ms();
    if (mstore_notif_sweep(svc->store, now, sweep_user, svc) != 0) {
        plog_error("messaging: notification sweep failed; retrying in a minute");
        svc->nexp_at = now + 60000;
        ploop_timer_start(svc->loop, &svc->nexp_timer, 60000);
        return;
    }
    schedule(svc);
    int64_t next = mstore_notif_next_expiry(svc->store);
    if (next >= 0) nexp_arm(svc, next);
}

/* Stores n (a parsed request: recipient, fields, from) and queues its
 * consequences: the live push unless suppressed, the unread update, the
 * expiry. *dup: n was a dedupe hit and is now the stored notification. */
static int notif_create(msg_service *svc, msg_notification *n, const char *room, bool *dup)
{
    int64_t now = wall_ms();
    *dup = false;
    int rc = mstore_notif_insert(svc->store, n, now);
    if (rc == MSTORE_DUPLICATE) {
        *dup = true;
        svc->stats.notif_duplicates++;
        return 0;
    }
    if (rc) return rc;
    svc->stats.notifications++;
    unread_mark(svc, n->to);
    if (n->expires >= 0) nexp_arm(svc, n->expires);
    bool push_it = false;
    int why = notif_suppressed(svc, n, room, now, &push_it);
    /* Same batch as the notification: committed, or lost, together (no
     * acknowledgement says stored without its push queued). */
    if (push_it && (rc = push_enqueue(svc->push, n, now)) != 0) {
        plog_error("messaging: cannot queue the push of notification %lld", (long long)n->id);
        return rc;
    }
    if (why != NS_NONE) {
        svc->stats.notif_suppressed++;
        svc->mx.notif_suppressed[why]++;
        return 0;
    }
    obx *e = obx_new(svc, OB_NPUSH, NULL, true);
    if (!e) return 0; /* stored; it arrives with the next sync */
    snprintf(e->user, sizeof e->user, "%s", n->to);
    e->meta.id = n->id;
    rc = pbuf_append(&e->json, "[", 1);
    if (rc == 0) rc = msg_encode_notification(&e->json, n);
    if (rc == 0) rc = pbuf_append(&e->json, "]", 1);
    if (!json_done(&e->json, rc)) {
        obx_release(svc, e);
        return 0;
    }
    obx_push(svc, e);
    return 0;
}

static void req_notify(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                       int64_t ack_id)
{
    (void)a;
    msg_error err;
    if (!ms->notifier) {
        reply_fail(svc, ms, ack_id, MSG_E_FORBIDDEN, NULL,
                   "notify needs a token with the notifier or admin role");
        return;
    }
    msg_notification *n = malloc(sizeof *n);
    if (!n) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    bool dup;
    uint64_t retry = 0;
    if (msg_parse_notify(obj, wall_ms(), n, &err)) {
        reply_error(svc, ms, ack_id, &err);
    } else if (!mquota_pair_take(svc->quota, ms->user->id, n->to, MQ_NOTIFY, &retry)) {
        refuse_limit(svc, ms, ack_id, MSG_E_RATE_LIMITED, retry, "to",
                     "too many notifications to this recipient: slow down");
    } else if (refuse_if_disk_low(svc, ms, ack_id)) {
        /* refused */
    } else {
        snprintf(n->from, sizeof n->from, "%s", ms->user->id);
        pbuf *b = &svc->scratch;
        b->len = 0;
        int rc = notif_create(svc, n, NULL, &dup);
        if (rc == 0)
            rc = pbuf_append_str(b, dup ? "{\"ok\":true,\"duplicate\":true,\"notification\":"
                                        : "{\"ok\":true,\"duplicate\":false,\"notification\":");
        if (rc == 0) rc = msg_encode_notification(b, n);
        if (rc == 0) rc = pbuf_append(b, "}", 1);
        if (rc)
            reply_internal(svc, ms, ack_id);
        else
            queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, mstore_in_batch(svc->store));
    }
    free(n);
}

typedef struct npage {
    pbuf *b;
    unsigned n, limit;
    int64_t last;
    bool more;
} npage;

static int npage_add(const msg_notification *n, void *arg)
{
    npage *p = arg;
    if (p->n == p->limit) {
        p->more = true;
        return 1;
    }
    /* What the answer carries is delivered by this very answer. */
    msg_notification *m = (msg_notification *)n;
    m->delivered = true;
    int rc = p->n ? pbuf_append(p->b, ",", 1) : 0;
    if (rc == 0) rc = msg_encode_notification(p->b, m);
    p->n++;
    p->last = n->id;
    return rc;
}

static void req_nsync(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                      int64_t ack_id)
{
    (void)a;
    msg_error err;
    int64_t since;
    unsigned limit;
    if (msg_parse_nsync(obj, &since, &limit, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    const char *user = ms->user->id;
    int64_t now = wall_ms();
    pbuf *b = &svc->scratch;
    b->len = 0;
    npage p = {b, 0, limit, since, false};
    int rc = pbuf_append_str(b, "{\"ok\":true,\"notifications\":[");
    if (rc == 0) rc = mstore_notif_list(svc->store, user, since, limit + 1, now, npage_add, &p);
    if (rc == 1) rc = 0;
    if (rc == 0 && p.last > since) rc = mstore_notif_delivered(svc->store, user, since, p.last);
    int64_t unread = rc == 0 ? mstore_notif_unread(svc->store, user, now) : -1;
    char tail[64];
    snprintf(tail, sizeof tail, "],\"more\":%s,\"unread\":%lld}", p.more ? "true" : "false",
             (long long)unread);
    if (rc == 0 && unread >= 0) rc = pbuf_append_str(b, tail);
    if (rc || unread < 0) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, mstore_in_batch(svc->store));
}

static void req_nread(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                      int64_t ack_id)
{
    (void)a;
    msg_error err;
    int64_t *ids = malloc(MSG_NOTIF_READ_MAX * sizeof *ids);
    size_t n = 0;
    bool all;
    if (!ids) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    if (msg_parse_nread(obj, ids, &n, &all, &err)) {
        free(ids);
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    const char *user = ms->user->id;
    int64_t now = wall_ms();
    unsigned changed = 0;
    int rc = mstore_notif_read(svc->store, user, ids, n, all, now, &changed);
    free(ids);
    int64_t unread = rc == 0 ? mstore_notif_unread(svc->store, user, now) : -1;
    if (unread < 0) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    if (changed) unread_mark(svc, user);
    svc->mx.notif_read += changed;
    char out[64];
    int len = snprintf(out, sizeof out, "{\"ok\":true,\"unread\":%lld}", (long long)unread);
    queue_ack_json(svc, ms, ack_id, out, (size_t)len, mstore_in_batch(svc->store));
}

static void reply_prefs(msg_service *svc, msess *ms, int64_t ack_id, const msg_nprefs *p, bool dep)
{
    pbuf *b = &svc->scratch;
    b->len = 0;
    int rc = pbuf_append_str(b, "{\"ok\":true,\"prefs\":");
    if (rc == 0) rc = msg_encode_nprefs(b, p);
    if (rc == 0) rc = pbuf_append(b, "}", 1);
    if (rc)
        reply_internal(svc, ms, ack_id);
    else
        queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, dep);
}

static void req_nprefs_get(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                           int64_t ack_id)
{
    (void)a;
    msg_error err;
    msg_nprefs p;
    /* {} only. */
    if (obj->type != JSON_OBJECT || json_count(obj) != 0) {
        if (obj->type != JSON_OBJECT)
            msg_fail(&err, MSG_E_BAD_REQUEST, NULL, "the argument must be a JSON object");
        else
            msg_fail(&err, MSG_E_UNKNOWN_FIELD, NULL,
                     "notification_prefs_get takes an empty object");
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    if (nprefs_load(svc, ms->user->id, &svc->nprefs_buf, &p) < 0) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    reply_prefs(svc, ms, ack_id, &p, mstore_in_batch(svc->store));
}

static bool tz_known(msg_service *svc, const char *name);
static void tz_cache_free(msg_service *svc);

static void req_nprefs_set(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                           int64_t ack_id)
{
    (void)a;
    msg_error err;
    msg_nprefs p;
    unsigned given;
    pbuf cur = {0}, enc = {0};
    if (refuse_if_disk_low(svc, ms, ack_id)) {
        /* refused */
    } else if (nprefs_load(svc, ms->user->id, &cur, &p) < 0) {
        reply_internal(svc, ms, ack_id);
    } else if (msg_parse_nprefs(obj, &p, &given, &err)) {
        reply_error(svc, ms, ack_id, &err);
    } else if ((given & MSG_NP_QUIET) && p.quiet && !tz_known(svc, p.tz)) {
        reply_fail(svc, ms, ack_id, MSG_E_INVALID_FIELD, "quiet_hours.tz",
                   "quiet_hours.tz is not a time zone of this server's IANA database");
    } else if (msg_encode_nprefs(&enc, &p) != 0 ||
               mstore_nprefs_set(svc->store, ms->user->id, (const char *)enc.ptr, enc.len) != 0) {
        reply_internal(svc, ms, ack_id);
    } else {
        reply_prefs(svc, ms, ack_id, &p, true);
    }
    pbuf_free(&cur);
    pbuf_free(&enc);
}

/* The content.text of the message in e->json ([<Message>]), decoded and
 * NUL-terminated (cut at a U+0000, which a C string cannot hold);
 * malloc'ed, NULL when it has none. */
static char *obx_message_text(msg_service *svc, const obx *e)
{
    json_val arr, msg, content, text;
    json_iter it;
    if (json_parse((const char *)e->json.ptr, e->json.len, svc->o.limits.max_depth + 2, &arr,
                   NULL) != 0 ||
        arr.type != JSON_ARRAY || (json_iter_init(&it, &arr), !json_array_next(&it, &msg)) ||
        !json_object_get(&msg, "content", &content) || content.type != JSON_OBJECT ||
        !json_object_get(&content, "text", &text) || text.type != JSON_STRING)
        return NULL;
    char *buf = malloc(text.len + 1);
    long len = buf ? json_string_decode(&text, buf, text.len) : -1;
    if (len < 0) {
        free(buf);
        return NULL;
    }
    buf[len] = 0;
    return buf;
}

/* body: the message's text cut at a character boundary. */
static void notif_body_text(msg_service *svc, const obx *e, char *body)
{
    char *buf = obx_message_text(svc, e);
    if (!buf) return;
    size_t k = strlen(buf);
    if (k > NOTIF_BODY_CUT) {
        k = NOTIF_BODY_CUT;
        while (k > 0 && ((unsigned char)buf[k] & 0xc0) == 0x80) k--;
    }
    memcpy(body, buf, k);
    body[k] = 0;
    free(buf);
}

/* The built-in half of the msg_notifier seam: an urgent message raises a
 * notification for the recipient (after the message's commit; stored in
 * the next batch, deduplicated by message id). */
static void notif_from_message(msg_service *svc, const obx *e, const char *recipient,
                               msg_priority prio)
{
    msg_notification *n = calloc(1, sizeof *n);
    if (!n) return;
    snprintf(n->to, sizeof n->to, "%s", recipient);
    n->type = MSG_NT_MESSAGE;
    n->priority = prio;
    n->expires = -1;
    snprintf(n->title, sizeof n->title, "%s", e->user);
    snprintf(n->from, sizeof n->from, "%s", e->user);
    snprintf(n->dedupe, sizeof n->dedupe, "message:%lld", (long long)e->meta.id);
    const char *tag = NULL;
    switch (e->meta.type) {
    case MSG_IMAGE:
        tag = "[image]";
        break;
    case MSG_FILE:
        tag = "[file]";
        break;
    case MSG_AUDIO:
        tag = "[audio]";
        break;
    case MSG_VIDEO:
        tag = "[video]";
        break;
    case MSG_LOCATION:
        tag = "[location]";
        break;
    default:
        break;
    }
    if (tag)
        snprintf(n->body, sizeof n->body, "%s", tag);
    else
        notif_body_text(svc, e, n->body);
    const char *conv = e->meta.conversation;
    const char *room = strncmp(conv, "room:", 5) == 0 ? conv + 5 : NULL;
    /* Urgent comes through quiet hours only from a contact: someone the
     * recipient wrote to, or shares a room with (a room's members do). A
     * stranger's urgent DM is high. */
    if (prio == MSG_PRIO_URGENT && !room && mstore_contact(svc->store, recipient, e->user) != 1) {
        n->priority = MSG_PRIO_HIGH;
        svc->stats.urgent_downgraded++;
    }
    bool dup;
    if (notif_create(svc, n, room, &dup) != 0)
        plog_error("messaging: cannot store the notification of message %lld for %s",
                   (long long)e->meta.id, recipient);
    free(n);
}

/* ---- mentions ---- */

#define MENTION_MAX 20 /* distinct @names of one message that may notify */

static bool user_char(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '_' || ch == '@' || ch == '-';
}

static void mention_add(char (*names)[MSG_USER_MAX + 1], size_t *n, const char *p, size_t len)
{
    if (len == 0 || len > MSG_USER_MAX || *n == MENTION_MAX) return;
    for (size_t i = 0; i < *n; i++)
        if (strlen(names[i]) == len && memcmp(names[i], p, len) == 0) return;
    memcpy(names[*n], p, len);
    names[*n][len] = 0;
    (*n)++;
}

/* The @names of a text (docs/PROTOCOL.md, "Mentions"): an '@' at the start
 * or after a character that cannot be in a user id, then the longest run
 * of user-id characters; that run with its trailing '.' and '-' dropped is
 * a candidate too ("@bob." ends a sentence). At most MENTION_MAX. */
static size_t mention_names(const char *t, char (*names)[MSG_USER_MAX + 1])
{
    size_t n = 0;
    for (size_t i = 0; t[i] && n < MENTION_MAX; i++) {
        if (t[i] != '@' || (i > 0 && user_char((unsigned char)t[i - 1]))) continue;
        size_t j = i + 1;
        while (user_char((unsigned char)t[j])) j++;
        size_t len = j - i - 1;
        mention_add(names, &n, t + i + 1, len);
        while (len > 0 && (t[i + len] == '.' || t[i + len] == '-')) len--;
        mention_add(names, &n, t + i + 1, len);
        i = j - 1;
    }
    return n;
}

static void notif_mention(msg_service *svc, const obx *e, const char *recipient, const char *room)
{
    msg_notification *n = calloc(1, sizeof *n);
    if (!n) return;
    snprintf(n->to, sizeof n->to, "%s", recipient);
    n->type = MSG_NT_MENTION;
    n->priority = e->meta.priority;
    n->expires = -1;
    snprintf(n->title, sizeof n->title, "%s in %s", e->user, room);
    snprintf(n->from, sizeof n->from, "%s", e->user);
    snprintf(n->dedupe, sizeof n->dedupe, "mention:%lld", (long long)e->meta.id);
    notif_body_text(svc, e, n->body);
    bool dup;
    if (notif_create(svc, n, room, &dup) != 0)
        plog_error("messaging: cannot store the mention notification of message %lld for %s",
                   (long long)e->meta.id, recipient);
    else
        svc->stats.mentions++;
    free(n);
}

/* A message that is not urgent: a room text that names members with
 * @user raises a `mention` notification for each of them (not the
 * sender), with the message's priority; a high message raises a
 * `message` notification (high) for every other recipient with no live
 * device (not for one a mention reached). The suppression rule then
 * applies (muted_rooms included). */
static void do_mentions(msg_service *svc, obx *e, const msg_conv *c)
{
    char names[MENTION_MAX][MSG_USER_MAX + 1];
    size_t k = 0;
    if (c->kind == MSG_CONV_ROOM && e->meta.type == MSG_TEXT) {
        char *text = obx_message_text(svc, e);
        if (text) k = mention_names(text, names);
        free(text);
    }
    bool high = e->meta.priority == MSG_PRIO_HIGH;
    if (k == 0 && !high) return;
    if (c->kind == MSG_CONV_DM) {
        const char *peer = msg_conv_peer(c, e->user);
        if (high && !user_online(svc, peer)) notif_from_message(svc, e, peer, MSG_PRIO_HIGH);
        return;
    }
    notify_ctx n = {svc, e, NULL, 0, 0};
    if (mstore_participants(svc->store, c->id, notify_collect, &n) < 0)
        plog_error("messaging: cannot list the members of %s for notifications", c->id);
    for (size_t i = 0; i < n.n; i++) {
        bool named = false;
        for (size_t j = 0; j < k && !named; j++) named = strcmp(n.users[i], names[j]) == 0;
        if (named)
            notif_mention(svc, e, n.users[i], c->a);
        else if (high && !user_online(svc, n.users[i]))
            notif_from_message(svc, e, n.users[i], MSG_PRIO_HIGH);
    }
    free(n.users);
}

/* ---- quiet hours ---- */

#define TZ_CACHE_MAX 1024 /* the IANA database has about 600 names */

typedef struct tzent {
    char name[MSG_TZ_MAX + 1];
    tz_zone *z;
} tzent;

static void tz_cache_free(msg_service *svc)
{
    size_t pos = 0;
    pmap_entry *pe;
    while ((pe = pmap_next(&svc->tzs, &pos))) {
        tzent *t = pe->val;
        tz_free(t->z);
        free(t);
    }
    pmap_free(&svc->tzs);
}

/* Zones are loaded (a file read) when preferences name them, or on first
 * use after a restart, and kept per name: never per notification. */
static const tz_zone *tz_get(msg_service *svc, const char *name)
{
    size_t len = strlen(name);
    tzent *t = pmap_get(&svc->tzs, name, len);
    if (t) return t->z;
    if (len > MSG_TZ_MAX || svc->tzs.n >= TZ_CACHE_MAX) return NULL;
    tz_zone *z = NULL;
    char why[256];
    int rc = tz_load_why(svc->tz_dir, name, &z, why, sizeof why);
    if (rc) {
        uint64_t held;
        if (plog_limit_ok(&svc->log_tz, ploop_now(svc->loop), LOG_EVERY_MS, &held))
            plog_warn("messaging: time zone %s: %s (%llu more unknown zones since the last line)",
                      name, why, (unsigned long long)held);
        return NULL;
    }
    if (!(t = pcalloc(1, sizeof *t))) {
        tz_free(z);
        return NULL;
    }
    memcpy(t->name, name, len + 1);
    t->z = z;
    if (pmap_put(&svc->tzs, t->name, len, t) != 0) {
        tz_free(z);
        free(t);
        return NULL;
    }
    return z;
}

static bool tz_known(msg_service *svc, const char *name)
{
    return tz_get(svc, name) != NULL;
}

/* A zone that cannot be loaded any more (the database changed under a
 * running server) means no quiet hours: pushing is the safe side. */
static bool notif_quiet_now(msg_service *svc, const msg_nprefs *p, int64_t now)
{
    const tz_zone *z = tz_get(svc, p->tz);
    return z && tz_in_quiet_hours(z, p->q_start, p->q_end, now);
}

static const struct {
    const char *name;
    req_fn fn;
} requests[] = {
    {MSG_EV_SEND, req_send},
    {MSG_EV_RECEIPT, req_receipt},
    {MSG_EV_TYPING, req_typing},
    {MSG_EV_SYNC, req_sync},
    {MSG_EV_HISTORY, req_history},
    {MSG_EV_JOIN_ROOM, req_join},
    {MSG_EV_LEAVE_ROOM, req_leave},
    {MSG_EV_ROOM_MEMBERS, req_members},
    {MSG_EV_UPLOAD_MEDIA, req_upload},
    {MSG_EV_PRESENCE_SET, req_presence_set},
    {MSG_EV_PRESENCE_SUB, req_presence_sub},
    {MSG_EV_PRESENCE_UNSUB, req_presence_unsub},
    {MSG_EV_PRESENCE_ROOM, req_presence_room},
    {MSG_EV_NOTIFY, req_notify},
    {MSG_EV_NOTIF_SYNC, req_nsync},
    {MSG_EV_NOTIF_READ, req_nread},
    {MSG_EV_NOTIF_PREFS_GET, req_nprefs_get},
    {MSG_EV_NOTIF_PREFS_SET, req_nprefs_set},
};

/* ---- namespace handlers ---- */

static void handle_event(msg_service *svc, msess *ms, const char *event, size_t event_len,
                         const parley_args *a, int64_t ack_id, req_fn fn)
{
    pres_activity(svc, ms);
    uint64_t retry = 0;
    if (!prate_take(&ms->events, &mquota_opts_of(svc->quota)->events, ploop_now(svc->loop), 1,
                    &retry)) {
        refuse_limit(svc, ms, ack_id, MSG_E_RATE_LIMITED, retry, NULL,
                     "too many events from this connection: slow down");
        return;
    }
    msg_error err;
    if (!fn) {
        char shown[40];
        size_t n = PARLEY_MIN(event_len, sizeof shown - 1);
        for (size_t i = 0; i < n; i++)
            shown[i] =
                (unsigned char)event[i] < 0x20 || (unsigned char)event[i] >= 0x7f ? '?' : event[i];
        shown[n] = 0;
        msg_fail(&err, MSG_E_UNKNOWN_EVENT, NULL, "unknown event %s", shown);
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    json_val obj;
    if (msg_args_object(a->json, a->json_len, &svc->o.limits, &obj, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    fn(svc, ms, &obj, a, ack_id);
}

static void on_event(parley_socket *s, const char *event, size_t event_len, const parley_args *a,
                     int64_t ack_id, void *user)
{
    msg_service *svc = user;
    msess *ms = parley_socket_data(s);
    if (!ms) return;
    req_fn fn = NULL;
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(requests) && !fn; i++)
        if (strlen(requests[i].name) == event_len &&
            memcmp(requests[i].name, event, event_len) == 0)
            fn = requests[i].fn;
    /* What the metrics need to know about the event being handled. */
    svc->mx.cur_send = fn == req_send;
    if (svc->mx.cur_send) svc->mx.cur_t0 = uv_hrtime();
    handle_event(svc, ms, event, event_len, a, ack_id, fn);
    svc->mx.cur_send = false;
}

/* Identity from the CONNECT auth payload. */
static msg_errcode authenticate(msg_service *svc, const char *auth, size_t len, jwt_claims *c,
                                bool *dev, msg_error *err)
{
    *dev = false;
    memset(c, 0, sizeof *c);
    json_val obj, tok, u, role;
    bool has_obj = auth && json_parse(auth, len, 4, &obj, NULL) == 0 && obj.type == JSON_OBJECT;
    if (has_obj && json_object_get(&obj, "token", &tok)) {
        if (!svc->keys)
            return msg_fail(err, MSG_E_AUTH_UNAVAILABLE, NULL,
                            "this server has no JWT keys configured");
        char buf[JWT_MAX_TOKEN + 1];
        long n = tok.type == JSON_STRING ? json_string_decode(&tok, buf, JWT_MAX_TOKEN + 1) : -1;
        if (tok.type != JSON_STRING)
            return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token must be a string");
        if (n < 0)
            return msg_fail(err, MSG_E_INVALID_TOKEN, NULL, "token longer than %d bytes",
                            JWT_MAX_TOKEN);
        return jwt_verify_set(svc->keys, buf, (size_t)n, wall_ms(), c, err);
    }
    if (svc->o.dev_auth && has_obj && json_object_get(&obj, "user", &u)) {
        long n = u.type == JSON_STRING ? json_string_decode(&u, c->sub, sizeof c->sub - 1) : -1;
        if (n < 0 || !msg_valid_user(c->sub, (size_t)n)) {
            c->sub[0] = 0;
            return msg_fail(err, MSG_E_INVALID_USER, NULL, "user is not a valid user id");
        }
        c->sub[n] = 0;
        c->admin = json_object_get(&obj, "role", &role) && json_string_eq(&role, "admin");
        c->notifier = json_object_get(&obj, "role", &role) && json_string_eq(&role, "notifier");
        *dev = true;
        return MSG_OK;
    }
    if (!svc->keys && !svc->o.dev_auth)
        return msg_fail(err, MSG_E_AUTH_UNAVAILABLE, NULL,
                        "this server has no JWT keys configured");
    return msg_fail(err, MSG_E_AUTH_REQUIRED, NULL, "a token is required: auth {\"token\": JWT}");
}

static int on_connect_check(parley_socket *s, const char *auth, size_t len,
                            parley_connect_error *ce, void *user)
{
    msg_service *svc = user;
    msg_error err;
    memset(&err, 0, sizeof err);
    jwt_claims c;
    bool dev;
    if (authenticate(svc, auth, len, &c, &dev, &err) == MSG_OK) {
        svc->pending_sock = s;
        svc->pending = c;
        svc->pending_dev = dev;
        return 0;
    }
    if ((unsigned)err.code < MSG_E_COUNT) svc->mx.connect_refused[err.code]++;
    snprintf(svc->cerr_message, sizeof svc->cerr_message, "%s", err.message);
    svc->cerr_data.len = 0;
    ce->message = svc->cerr_message;
    ce->data_json = NULL;
    if (json_done(&svc->cerr_data, msg_encode_connect_error(&svc->cerr_data, &err)))
        ce->data_json = (const char *)svc->cerr_data.ptr;
    uint64_t held;
    if (plog_limit_ok(&svc->log_connect, ploop_now(svc->loop), LOG_EVERY_MS, &held))
        plog_info("messaging: refused a connection: %s (%s); %llu more refused since the last line",
                  msg_errcode_name(err.code), err.message, (unsigned long long)held);
    return 1;
}

/* Another namespace behind the same tokens (parleyd --root-namespace
 * auth): the check only, nothing of the service runs there. */
static int guard_check(parley_socket *s, const char *auth, size_t len, parley_connect_error *ce,
                       void *user)
{
    msg_service *svc = user;
    int rc = on_connect_check(s, auth, len, ce, user);
    if (rc == 0 && svc->pending_sock == s) svc->pending_sock = NULL;
    return rc;
}

int msg_service_guard(msg_service *svc, parley_nsp *nsp)
{
    if (!svc || !nsp || nsp == svc->nsp) return PARLEY_EINVAL;
    parley_nsp_handlers h = {.on_connect_check = guard_check, .user = svc};
    parley_nsp_set_handlers(nsp, &h);
    return 0;
}

static void on_token_expired(ptimer *t)
{
    msess *ms = PARLEY_CONTAINER_OF(t, msess, expiry);
    if (!ms->sock) return;
    plog_info("messaging: token of %s expired: disconnecting socket %s", ms->user->id,
              parley_socket_id(ms->sock));
    parley_disconnect(ms->sock, 0); /* ms may be freed here */
}

static void on_connection(parley_socket *s, void *user)
{
    msg_service *svc = user;
    if (svc->pending_sock != s) {
        /* Connection-state recovery skips the connect check: such a socket
         * has no identity here and must connect again. */
        plog_warn("messaging: socket %s arrived without authentication: disconnected",
                  parley_socket_id(s));
        parley_disconnect(s, 0);
        return;
    }
    svc->pending_sock = NULL;
    msess *ms = pcalloc(1, sizeof *ms);
    muser *u = ms ? user_get(svc, svc->pending.sub, true) : NULL;
    if (!u) {
        free(ms);
        parley_disconnect(s, 1);
        return;
    }
    ms->svc = svc;
    ms->sock = s;
    ms->user = u;
    ms->admin = svc->pending.admin;
    ms->notifier = svc->pending.admin || svc->pending.notifier;
    ms->dev = svc->pending_dev;
    ms->next = u->socks;
    u->socks = ms;
    u->n++;
    ptimer_init(&ms->expiry, on_token_expired);
    parley_socket_set_data(s, ms);
    svc->stats.sockets++;
    pres_connected(svc, ms);
    if (ms->dev) {
        plog_warn("messaging: INSECURE --dev-auth: socket %s is user %s%s without a token",
                  parley_socket_id(s), u->id, ms->admin ? " (admin)" : "");
    } else {
        int64_t left = svc->pending.exp_ms + svc->o.jwt_leeway_ms - wall_ms();
        ploop_timer_start(svc->loop, &ms->expiry, left > 0 ? (uint64_t)left : 1);
    }
}

static void on_disconnect(parley_socket *s, const char *reason, void *user)
{
    (void)reason;
    msg_service *svc = user;
    msess *ms = parley_socket_data(s);
    if (!ms) return;
    parley_socket_set_data(s, NULL);
    ploop_timer_stop(svc->loop, &ms->expiry);
    muser *u = ms->user;
    for (msess **pp = &u->socks; *pp; pp = &(*pp)->next) {
        if (*pp == ms) {
            *pp = ms->next;
            break;
        }
    }
    pres_disconnected(svc, ms, u->id, --u->n);
    if (u->n == 0) {
        pmap_del(&svc->users, u->id, u->len);
        free(u);
    }
    svc->stats.sockets--;
    ms->sock = NULL;
    ms->user = NULL;
    ms->live = false;
    if (ms->refs == 0) free(ms);
}

/* ---- HTTP: POST /media, GET /media/<id>, POST /api/notifications ---- */

/* The request's Origin header, when there is one. */
static bool req_origin(const phttpd_req *req, const char **o, size_t *n)
{
    const http_header *h = http_find_header(req->head, "origin");
    if (!h) return false;
    *o = h->value;
    *n = h->value_len;
    return true;
}

/* Answers with a JSON body: CORS for an allowed Origin, WWW-Authenticate
 * on 401, Retry-After when there is a hint. */
static void http_answer(msg_service *svc, phttpd_req *req, int status, const void *body, size_t len,
                        int64_t retry_ms)
{
    http_header h[4];
    size_t n = 0;
    const char *o = NULL;
    size_t on = 0;
    char ra[24];
    if (svc->origins && req_origin(req, &o, &on) && engine_origin_allowed(svc->origins, o, on)) {
        h[n++] = (http_header){"Access-Control-Allow-Origin", 27, o, on};
        h[n++] = (http_header){"Vary", 4, "Origin", 6};
    }
    if (status == 401) h[n++] = (http_header){"WWW-Authenticate", 16, "Bearer", 6};
    if (retry_ms > 0) {
        int rl = snprintf(ra, sizeof ra, "%lld", (long long)((retry_ms + 999) / 1000));
        h[n++] = (http_header){"Retry-After", 11, ra, (size_t)rl};
    }
    phttpd_respond(req, status, "application/json", h, n, body, len);
}

/* {"code","message"[,"field"][,"retry_after_ms"]} with the HTTP status. */
static void http_err(msg_service *svc, phttpd_req *req, int status, const msg_error *err)
{
    pbuf b = {0};
    if (msg_encode_connect_error(&b, err) == 0)
        http_answer(svc, req, status, b.ptr, b.len, err->retry_after_ms);
    else
        phttpd_respond(req, 500, NULL, NULL, 0, NULL, 0);
    pbuf_free(&b);
}

static void http_error(msg_service *svc, phttpd_req *req, int status, msg_errcode code,
                       const char *message)
{
    msg_error err;
    msg_fail(&err, code, NULL, "%s", message);
    http_err(svc, req, status, &err);
}

/* For codes that are not the protocol's (`unavailable`). */
static void http_error_code(msg_service *svc, phttpd_req *req, int status, const char *code,
                            const char *message)
{
    pbuf b = {0};
    int rc = pbuf_append_str(&b, "{\"code\":");
    if (rc == 0) rc = json_append_string(&b, code, strlen(code));
    if (rc == 0) rc = pbuf_append_str(&b, ",\"message\":");
    if (rc == 0) rc = json_append_string(&b, message, strlen(message));
    if (rc == 0) rc = pbuf_append(&b, "}", 1);
    if (rc == 0)
        http_answer(svc, req, status, b.ptr, b.len, 0);
    else
        phttpd_respond(req, 500, NULL, NULL, 0, NULL, 0);
    pbuf_free(&b);
}

/* The HTTP status of a refusal over a limit. */
static int limit_status(msg_errcode code)
{
    return code == MSG_E_STORAGE_FULL ? 507 : 429;
}

/* Browsers from allowed origins may call these routes: a present Origin
 * that is not allowed is refused (403), and a preflight (OPTIONS) from
 * an allowed one is answered here. True when the request was answered. */
static bool cors_gate(msg_service *svc, phttpd_req *req, const char *methods)
{
    const char *o = NULL;
    size_t n = 0;
    bool has = req_origin(req, &o, &n);
    if (has && svc->origins && !engine_origin_allowed(svc->origins, o, n)) {
        http_error(svc, req, 403, MSG_E_FORBIDDEN, "this origin is not allowed");
        return true;
    }
    const http_head *h = req->head;
    if (h->method_len != 7 || memcmp(h->method, "OPTIONS", 7) != 0) return false;
    if (!svc->origins || !has) {
        http_header allow = {"Allow", 5, methods, strlen(methods)};
        phttpd_respond(req, 405, "text/plain; charset=utf-8", &allow, 1, "method not allowed\n",
                       19);
        return true;
    }
    http_header hd[5] = {
        {"Access-Control-Allow-Origin", 27, o, n},
        {"Access-Control-Allow-Methods", 28, methods, strlen(methods)},
        {"Access-Control-Allow-Headers", 28, "Authorization, Content-Type", 27},
        {"Access-Control-Max-Age", 22, "600", 3},
        {"Vary", 4, "Origin", 6},
    };
    phttpd_respond(req, 204, NULL, hd, 5, NULL, 0);
    return true;
}

/* The user of an HTTP request (Authorization: Bearer <JWT>, or Dev <user>
 * with --dev-auth). Answers 401 itself and returns false when there is
 * none. */
static bool http_user(msg_service *svc, phttpd_req *req, char user[MSG_USER_MAX + 1])
{
    const http_header *h = http_find_header(req->head, "authorization");
    if (svc->disabled) {
        http_error(svc, req, 401, MSG_E_AUTH_UNAVAILABLE, "this server has no JWT keys configured");
        return false;
    }
    if (!h) {
        http_error(svc, req, 401, MSG_E_AUTH_REQUIRED, "Authorization: Bearer <token> is required");
        return false;
    }
    const char *v = h->value;
    size_t n = h->value_len;
    if (svc->o.dev_auth && n > 4 && pstr_ieq(v, 4, "Dev ", 4)) {
        if (!msg_valid_user(v + 4, n - 4)) {
            http_error(svc, req, 401, MSG_E_INVALID_USER, "not a valid user id");
            return false;
        }
        memcpy(user, v + 4, n - 4);
        user[n - 4] = 0;
        return true;
    }
    if (n < 7 || !pstr_ieq(v, 7, "Bearer ", 7)) {
        http_error(svc, req, 401, MSG_E_AUTH_REQUIRED, "Authorization: Bearer <token> is required");
        return false;
    }
    if (!svc->keys) {
        http_error(svc, req, 401, MSG_E_AUTH_UNAVAILABLE, "this server has no JWT keys configured");
        return false;
    }
    jwt_claims c;
    msg_error err;
    size_t off = 7;
    while (off < n && v[off] == ' ') off++;
    if (jwt_verify_set(svc->keys, v + off, n - off, wall_ms(), &c, &err) != MSG_OK) {
        http_err(svc, req, 401, &err);
        return false;
    }
    memcpy(user, c.sub, sizeof c.sub);
    return true;
}

/* The request's Content-Type without its parameters (NULL: none). */
static const http_header *media_type_of(const http_head *hd, size_t *len)
{
    const http_header *ct = http_find_header(hd, "content-type");
    if (!ct) return NULL;
    const char *semi = memchr(ct->value, ';', ct->value_len);
    size_t n = semi ? (size_t)(semi - ct->value) : ct->value_len;
    while (n && (ct->value[n - 1] == ' ' || ct->value[n - 1] == '\t')) n--;
    *len = n;
    return ct;
}

/* An upload being streamed to a temporary file. */
typedef struct upload {
    media_writer *w;
    char user[MSG_USER_MAX + 1];
    char mime[MSG_MIME_MAX + 1];
    uint64_t bytes;
    int error; /* 413: over --max-media-bytes; 500: the file could not be written */
} upload;

/* Everything that can be said on the head is said before a byte of the
 * body is read: origin, method, identity, type, size, disk and quotas. */
static void upload_head(phttpd_req *req, void *arg)
{
    msg_service *svc = arg;
    if (cors_gate(svc, req, "POST") || !phttpd_allow(req, "POST")) return;
    char user[MSG_USER_MAX + 1];
    if (!http_user(svc, req, user)) return;
    const http_head *hd = req->head;
    size_t ml = 0;
    const http_header *ct = media_type_of(hd, &ml);
    if (!ct || !msg_valid_mime(ct->value, ml)) {
        http_error(svc, req, 415, MSG_E_INVALID_FIELD, "Content-Type must name the media type");
        return;
    }
    bool sized = hd->body_kind == HTTP_BODY_LENGTH;
    if (hd->body_kind == HTTP_BODY_NONE || (sized && hd->content_length == 0)) {
        http_error(svc, req, 400, MSG_E_INVALID_FIELD, "the body is empty");
        return;
    }
    if (sized && hd->content_length > svc->o.max_media_bytes) {
        http_error(svc, req, 413, MSG_E_TOO_LARGE, "larger than --max-media-bytes");
        return;
    }
    msg_error err;
    if (disk_low(svc)) {
        msg_fail(&err, MSG_E_STORAGE_FULL, NULL,
                 "the server is low on storage: uploads are refused for now");
        err.retry_after_ms = 60000;
        svc->stats.storage_full++;
        http_err(svc, req, 507, &err);
        return;
    }
    msg_errcode q = upload_quota(svc, user, sized ? hd->content_length : 0, &err);
    if (q) {
        if (q == MSG_E_QUOTA_EXCEEDED) svc->stats.quota_exceeded++;
        http_err(svc, req, q == MSG_E_QUOTA_EXCEEDED ? limit_status(q) : 500, &err);
        return;
    }
    upload *u = pcalloc(1, sizeof *u);
    if (!u || media_begin(svc->media, svc->o.max_media_bytes, &u->w) != 0) {
        free(u);
        http_error(svc, req, 500, MSG_E_INTERNAL, "storage failure");
        return;
    }
    memcpy(u->user, user, sizeof u->user);
    memcpy(u->mime, ct->value, ml);
    u->mime[ml] = 0;
    for (size_t i = 0; i < ml; i++)
        if (u->mime[i] >= 'A' && u->mime[i] <= 'Z') u->mime[i] = (char)(u->mime[i] - 'A' + 'a');
    req->stream = true;
    req->state = u;
}

static int upload_body(void *state, const uint8_t *data, size_t len, void *arg)
{
    (void)arg;
    upload *u = state;
    int rc = media_write(u->w, data, len);
    if (rc) {
        u->error = rc == PARLEY_ELIMIT ? 413 : 500;
        return 1;
    }
    u->bytes += len;
    return 0;
}

static void upload_abort(void *state, void *arg)
{
    (void)arg;
    upload *u = state;
    media_abort(u->w);
    free(u);
}

static void upload_done(phttpd_req *req, void *arg)
{
    msg_service *svc = arg;
    upload *u = req->state;
    msg_error err;
    if (u->error || req->body_error || u->bytes == 0) {
        if (u->error == 413)
            http_error(svc, req, 413, MSG_E_TOO_LARGE, "larger than --max-media-bytes");
        else if (u->bytes == 0 && !u->error)
            http_error(svc, req, 400, MSG_E_INVALID_FIELD, "the body is empty");
        else
            http_error(svc, req, 500, MSG_E_INTERNAL, "cannot write the media");
        upload_abort(u, arg);
        return;
    }
    /* A chunked body's size is known only now. */
    msg_errcode q = req->head->body_kind == HTTP_BODY_CHUNKED
                        ? upload_quota(svc, u->user, u->bytes, &err)
                        : MSG_OK;
    if (q) {
        http_err(svc, req, q == MSG_E_QUOTA_EXCEEDED ? limit_status(q) : 500, &err);
        upload_abort(u, arg);
        return;
    }
    char id[MSG_MEDIA_ID_LEN + 1];
    bool file_existed = false, existed = false;
    int rc = media_finish(u->w, id, &file_existed);
    u->w = NULL;
    obx *e = rc == 0 ? obx_new(svc, OB_HTTP, NULL, true) : NULL;
    if (!e || !json_done(&e->json,
                         record_upload(svc, u->user, id, u->bytes, u->mime, &e->json, &existed))) {
        if (e) obx_release(svc, e);
        http_error(svc, req, 500, MSG_E_INTERNAL, "storage failure");
        free(u);
        return;
    }
    free(u);
    obx_push_http(svc, e, req, existed ? 200 : 201);
}

static void route_download(phttpd_req *req, void *arg)
{
    msg_service *svc = arg;
    if (cors_gate(svc, req, "GET, HEAD") || !phttpd_allow(req, "GET, HEAD")) return;
    char user[MSG_USER_MAX + 1];
    if (!http_user(svc, req, user)) return;
    static const char prefix[] = "/media/";
    char id[MSG_MEDIA_ID_LEN + 1];
    size_t idlen = req->path_len - (sizeof prefix - 1);
    int64_t size = 0;
    char mime[MSG_MIME_MAX + 1];
    int r = 0;
    if (idlen == MSG_MEDIA_ID_LEN && msg_valid_media_id(req->path + sizeof prefix - 1, idlen)) {
        memcpy(id, req->path + sizeof prefix - 1, idlen);
        id[idlen] = 0;
        /* Absent and not visible to this user are one answer (no oracle),
         * and the type is the one this user knows it by. */
        r = mstore_media_for(svc->store, id, user, &size, mime);
    }
    if (r < 0) {
        http_error(svc, req, 500, MSG_E_INTERNAL, "storage failure");
        return;
    }
    if (r == 0) {
        http_error(svc, req, 404, MSG_E_NOT_FOUND, "no such media");
        return;
    }
    pbuf body = {0};
    int rc = media_get(svc->media, id, svc->o.max_media_bytes, &body);
    if (rc) {
        pbuf_free(&body);
        if (rc == PARLEY_EAGAIN)
            http_error(svc, req, 404, MSG_E_NOT_FOUND, "no such media");
        else
            http_error(svc, req, 500, MSG_E_INTERNAL, "cannot read the media");
        return;
    }
    char etag[MSG_MEDIA_ID_LEN + 3];
    snprintf(etag, sizeof etag, "\"%s\"", id);
    /* Uploaded content is served as data, never as a page of this origin. */
    http_header h[6] = {
        {"ETag", 4, etag, strlen(etag)},
        {"Cache-Control", 13, "private, max-age=31536000, immutable", 36},
        {"X-Content-Type-Options", 22, "nosniff", 7},
        {"Content-Security-Policy", 23, "sandbox", 7},
    };
    size_t nh = 4;
    const char *o = NULL;
    size_t on = 0;
    if (svc->origins && req_origin(req, &o, &on)) {
        h[nh++] = (http_header){"Access-Control-Allow-Origin", 27, o, on};
        h[nh++] = (http_header){"Vary", 4, "Origin", 6};
    }
    phttpd_respond(req, 200, mime, h, nh, body.ptr, body.len);
    pbuf_free(&body);
}

static bool api_key_ok(msg_service *svc, const char *key, size_t len)
{
    uint8_t d[32];
    SHA256((const unsigned char *)key, len, d);
    bool ok = false;
    /* Every key is compared, in constant time: no early exit. */
    for (size_t i = 0; i < svc->n_api_keys; i++) ok |= CRYPTO_memcmp(d, svc->api_keys[i], 32) == 0;
    return ok;
}

/* POST /api/notifications: keys, type and size are checked on the head. */
static void api_head(phttpd_req *req, void *arg)
{
    msg_service *svc = arg;
    if (cors_gate(svc, req, "POST") || !phttpd_allow(req, "POST")) return;
    if (svc->disabled || svc->n_api_keys == 0) {
        http_error_code(svc, req, 503, "unavailable", "no API key is configured (--api-key-file)");
        return;
    }
    const http_head *hd = req->head;
    const http_header *h = http_find_header(hd, "authorization");
    size_t off = 7;
    if (h && h->value_len > 7 && pstr_ieq(h->value, 7, "Bearer ", 7))
        while (off < h->value_len && h->value[off] == ' ') off++;
    if (!h || h->value_len <= 7 || !pstr_ieq(h->value, 7, "Bearer ", 7) ||
        !api_key_ok(svc, h->value + off, h->value_len - off)) {
        http_error(svc, req, 401, h ? MSG_E_INVALID_TOKEN : MSG_E_AUTH_REQUIRED,
                   "Authorization: Bearer <API key> is required");
        return;
    }
    if (hd->body_kind == HTTP_BODY_LENGTH && hd->content_length > NOTIF_HTTP_MAX_BODY) {
        http_error(svc, req, 413, MSG_E_TOO_LARGE, "the body is over 65536 bytes");
        return;
    }
    size_t ml = 0;
    const http_header *ct = media_type_of(hd, &ml);
    if (!ct || !pstr_ieq(ct->value, ml, "application/json", 16)) {
        http_error(svc, req, 415, MSG_E_INVALID_FIELD, "Content-Type must be application/json");
        return;
    }
    if (disk_low(svc)) {
        msg_error err;
        msg_fail(&err, MSG_E_STORAGE_FULL, NULL, "the server is low on storage: writes refused");
        err.retry_after_ms = 60000;
        svc->stats.storage_full++;
        http_err(svc, req, 507, &err);
    }
}

static void route_api_notify(phttpd_req *req, void *arg)
{
    msg_service *svc = arg;
    json_val obj;
    if (json_parse((const char *)req->body, req->body_len, svc->o.limits.max_depth, &obj, NULL) !=
        0) {
        http_error(svc, req, 400, MSG_E_BAD_REQUEST, "the body is not JSON");
        return;
    }
    msg_notification *n = malloc(sizeof *n);
    if (!n) {
        http_error(svc, req, 500, MSG_E_INTERNAL, "out of memory");
        return;
    }
    msg_error err;
    if (msg_parse_notify(&obj, wall_ms(), n, &err)) {
        http_err(svc, req, 400, &err);
        free(n);
        return;
    }
    uint64_t retry = 0;
    /* The API's notifications count as one sender ('#' is no user id). */
    if (!mquota_pair_take(svc->quota, "#api", n->to, MQ_NOTIFY, &retry)) {
        msg_fail(&err, MSG_E_RATE_LIMITED, "to", "too many notifications to this recipient");
        err.retry_after_ms = (int64_t)retry;
        svc->stats.rate_limited++;
        http_err(svc, req, 429, &err);
        free(n);
        return;
    }
    bool dup;
    obx *e = NULL;
    int rc = notif_create(svc, n, NULL, &dup);
    if (rc == 0 && !(e = obx_new(svc, OB_HTTP, NULL, mstore_in_batch(svc->store)))) rc = -1;
    if (rc == 0) rc = pbuf_append_str(&e->json, "{\"notification\":");
    if (rc == 0) rc = msg_encode_notification(&e->json, n);
    if (rc == 0)
        rc = pbuf_append_str(&e->json, dup ? ",\"duplicate\":true}" : ",\"duplicate\":false}");
    free(n);
    if (!e || !json_done(&e->json, rc)) {
        if (e) obx_release(svc, e);
        http_error(svc, req, 500, MSG_E_INTERNAL, "storage failure");
        return;
    }
    obx_push_http(svc, e, req, dup ? 200 : 201);
}

/* ---- lifetime ---- */

static int make_data_dir(const char *dir)
{
    char p[4096];
    if (strlen(dir) >= sizeof p - 32) return PARLEY_EINVAL;
    snprintf(p, sizeof p, "%s", dir);
    /* mkdir -p */
    for (char *q = p + 1; *q; q++) {
        if (*q != '/') continue;
        *q = 0;
        mkdir(p, 0750);
        *q = '/';
    }
    if (mkdir(p, 0750) != 0) {
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
            plog_error("messaging: cannot use data directory %s", dir);
            return PARLEY_EIO;
        }
    }
    return 0;
}

int msg_service_new(parley_server *srv, const msg_service_opts *o, msg_service **out)
{
    *out = NULL;
    if (!srv || !o || !o->data_dir || !*o->data_dir || o->max_media_bytes == 0 ||
        o->max_media_bytes >= PBUF_MAX || (o->jwt_secret && o->jwt_secret_len == 0) ||
        o->limits.max_text == 0 || o->typing_timeout_ms == 0)
        return PARLEY_EINVAL;
    msg_service *svc = pcalloc(1, sizeof *svc);
    if (!svc) return PARLEY_ENOMEM;
    svc->srv = srv;
    svc->o = *o;
    svc->loop = phttpd_loop(parley_server__http(srv));
    svc->flush.cb = on_flush;
    ptimer_init(&svc->low_timer, on_low_timer);
    ptimer_init(&svc->nexp_timer, on_nexp);
    pmx_hist_init(&svc->mx.ack_latency, ack_bounds_ns, PARLEY_ARRAY_LEN(ack_bounds_ns), 1e9);
    pmx_hist_init(&svc->mx.commit_latency, ack_bounds_ns, PARLEY_ARRAY_LEN(ack_bounds_ns), 1e9);
    pmx_hist_init(&svc->mx.batch_writes, batch_bounds, PARLEY_ARRAY_LEN(batch_bounds), 1);
    int rc = 0;
    if (o->n_api_keys) {
        svc->api_keys = calloc(o->n_api_keys, sizeof *svc->api_keys);
        if (!svc->api_keys) rc = PARLEY_ENOMEM;
        for (size_t i = 0; rc == 0 && i < o->n_api_keys; i++)
            SHA256((const unsigned char *)o->api_keys[i], strlen(o->api_keys[i]), svc->api_keys[i]);
        if (rc == 0) svc->n_api_keys = o->n_api_keys;
    }
    if (rc == 0 && o->tz_dir && !(svc->tz_dir = strdup(o->tz_dir))) rc = PARLEY_ENOMEM;
    if (rc == 0) rc = mquota_new(svc->loop, &o->quota, &svc->quota);
    if (rc == 0 && o->allowed_origins && !(svc->origins = strdup(o->allowed_origins)))
        rc = PARLEY_ENOMEM;
    svc->o.allowed_origins = NULL; /* svc->origins is the copy */
    svc->o.tz_dir = NULL;          /* svc->tz_dir is the copy */
    svc->o.api_keys = NULL;        /* svc->api_keys holds their digests */
    svc->o.n_api_keys = 0;
    svc->data_dir = strdup(o->data_dir);
    svc->o.data_dir = svc->data_dir;
    if (!svc->data_dir) rc = PARLEY_ENOMEM;
    if (rc == 0 && o->jwt_keys) {
        svc->keys = jwt_keyset_ref(o->jwt_keys);
    } else if (rc == 0 && o->jwt_secret) {
        jwt_keyset_opts ko;
        jwt_keyset_opts_init(&ko);
        ko.leeway_ms = o->jwt_leeway_ms;
        ko.max_lifetime_ms = (int64_t)o->jwt_max_lifetime_s * 1000;
        rc = jwt_keyset_new(&ko, &svc->keys);
        if (rc == 0) rc = jwt_keyset_set_secret(svc->keys, o->jwt_secret, o->jwt_secret_len);
    }
    svc->o.jwt_secret = NULL; /* the key set holds its copy */
    svc->o.jwt_keys = NULL;
    /* Without a way to tell who anyone is, nobody gets in: the data
     * directory is not even opened. */
    svc->disabled = !svc->keys && !o->dev_auth;
    if (rc == 0 && !svc->disabled) rc = make_data_dir(svc->data_dir);
    char path[4200];
    if (rc == 0 && !svc->disabled) {
        snprintf(path, sizeof path, "%s/messages.db", svc->data_dir);
        rc = mstore_open(path, o->full_sync, &svc->store);
    }
    if (rc == 0 && !svc->disabled) {
        snprintf(path, sizeof path, "%s/media", svc->data_dir);
        rc = media_open(path, o->full_sync, &svc->media);
    }
    if (rc == 0 && !svc->disabled) {
        int64_t next = mstore_notif_next_expiry(svc->store);
        if (next >= 0) nexp_arm(svc, next);
    }
    if (rc == 0 && o->push) {
        if (svc->disabled) {
            plog_error("messaging: --push-webhook needs token keys (or --dev-auth)");
            rc = PARLEY_EINVAL;
        } else {
            push_opts po = *o->push;
            po.commit = push_commit;
            po.user = svc;
            rc = push_new(svc->loop, svc->store, &po, &svc->push);
        }
    }
    svc->o.push = NULL; /* push_new copied what it keeps */
    if (rc == 0) {
        svc->nsp = parley_server_of(srv, MSG_NAMESPACE);
        phttpd *http = parley_server__http(srv);
        /* Uploads stream to a file: the server's body budget does not
         * hold them. */
        phttpd_route_opts up = {.handler = upload_done,
                                .max_body = svc->o.max_media_bytes,
                                .on_head = upload_head,
                                .on_body = upload_body,
                                .on_abort = upload_abort,
                                .user = svc};
        phttpd_route_opts api = {.handler = route_api_notify,
                                 .max_body = NOTIF_HTTP_MAX_BODY,
                                 .on_head = api_head,
                                 .user = svc};
        if (!svc->nsp || phttpd_route_ex(http, "/media", false, &up) != 0 ||
            phttpd_route_prefix(http, "/media/", route_download, svc) != 0 ||
            phttpd_route_ex(http, "/api/notifications", false, &api) != 0)
            rc = PARLEY_ENOMEM;
    }
    if (rc) {
        msg_service_free(svc);
        return rc;
    }
    parley_nsp_handlers h = {.on_connect_check = on_connect_check,
                             .on_connection = on_connection,
                             .on_event = on_event,
                             .on_disconnect = on_disconnect,
                             .user = svc};
    parley_nsp_set_handlers(svc->nsp, &h);
    if (o->dev_auth)
        plog_warn("messaging: INSECURE --dev-auth is on: anyone can connect as any user with "
                  "{\"user\": id}; never use it in production");
    if (svc->disabled)
        plog_warn("messaging: no --jwt-secret (and no --dev-auth): every connection to %s is "
                  "refused",
                  MSG_NAMESPACE);
    else if (!svc->keys)
        plog_warn("messaging: no --jwt-secret: connections with tokens are refused");
    else if (o->jwt_secret && o->jwt_secret_len < 32)
        plog_warn("messaging: the JWT secret is %zu bytes; HS256 wants at least 32",
                  o->jwt_secret_len);
    *out = svc;
    return 0;
}

/* ---- metrics and readiness ---- */

/* One labelled counter family over an array indexed by msg_errcode;
 * codes never seen are left out (absent means zero). */
static void collect_codes(pmx_out *o, const char *name, const char *help, const uint64_t *v)
{
    pmx_family(o, name, PMX_COUNTER, help);
    for (int c = 1; c < MSG_E_COUNT; c++) {
        if (!v[c]) continue;
        pmx_label l = {"code", msg_errcode_name((msg_errcode)c)};
        pmx_sample_u64(o, name, NULL, &l, 1, v[c]);
    }
}

void msg_service_collect(pmx_out *o, void *user)
{
    msg_service *svc = user;
    const msg_service_stats *st = &svc->stats;
    const msg_metrics *mx = &svc->mx;
    pmx_gauge(o, "parley_chat_sockets", "Authenticated sockets on the /chat namespace.",
              st->sockets);
    pmx_gauge(o, "parley_chat_users", "Users with at least one socket on /chat.",
              (double)svc->users.n);
    collect_codes(o, "parley_chat_connect_refused_total",
                  "CONNECTs to /chat refused by authentication, by reason.", mx->connect_refused);
    collect_codes(o, "parley_chat_errors_total",
                  "Error answers to /chat requests (every event), by error code.", mx->errors);
    pmx_family(o, "parley_chat_refusals_total", PMX_COUNTER,
               "Requests refused over a rate limit, a quota or the disk reserve, by code.");
    pmx_label l = {"code", "rate_limited"};
    pmx_sample_u64(o, "parley_chat_refusals_total", NULL, &l, 1, st->rate_limited);
    l.val = "quota_exceeded";
    pmx_sample_u64(o, "parley_chat_refusals_total", NULL, &l, 1, st->quota_exceeded);
    l.val = "storage_full";
    pmx_sample_u64(o, "parley_chat_refusals_total", NULL, &l, 1, st->storage_full);
    pmx_counter(o, "parley_chat_kicked_total",
                "Sockets disconnected for sending on over their limits.", st->kicked);
    pmx_counter(o, "parley_messages_stored_total", "Messages stored (send_message accepted).",
                st->messages);
    pmx_counter(o, "parley_messages_duplicates_total", "Resent messages answered from the store.",
                st->duplicates);
    pmx_family(o, "parley_messages_receipts_total", PMX_COUNTER,
               "Receipts that advanced a user's delivered or read position, by status.");
    l.val = "delivered";
    l.key = "status";
    pmx_sample_u64(o, "parley_messages_receipts_total", NULL, &l, 1, mx->receipts[0]);
    l.val = "read";
    pmx_sample_u64(o, "parley_messages_receipts_total", NULL, &l, 1, mx->receipts[1]);
    collect_codes(o, "parley_messages_failed_total",
                  "send_message requests answered with an error, by error code.", mx->send_failed);
    pmx_family(o, "parley_messages_ack_seconds", PMX_HISTOGRAM,
               "Time from receiving a send_message to acknowledging it (its commit included).");
    pmx_hist_write(o, "parley_messages_ack_seconds", NULL, 0, &mx->ack_latency);
    pmx_counter(o, "parley_typing_events_total", "typing requests accepted.", mx->typing_in);
    pmx_counter(o, "parley_typing_relayed_total",
                "typing changes relayed to other users (after throttling).", mx->typing_relayed);
    /* Users by the status others see (max over their devices). */
    unsigned by[4] = {0};
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&svc->users, &pos))) {
        const muser *u = e->val;
        msg_pstatus best = MSG_PS_OFFLINE;
        for (const msess *ms = u->socks; ms; ms = ms->next)
            if (ms_status(ms) > best) best = ms_status(ms);
        by[best]++;
    }
    pmx_family(o, "parley_presence_users", PMX_GAUGE,
               "Connected users by presence status (offline users are not counted).");
    l.key = "status";
    for (int k = MSG_PS_BUSY; k <= MSG_PS_ONLINE; k++) {
        l.val = msg_pstatus_name((msg_pstatus)k);
        pmx_sample_u64(o, "parley_presence_users", NULL, &l, 1, by[k]);
    }
    pmx_counter(o, "parley_presence_updates_total", "Presence updates broadcast (one per user).",
                st->presence_updates);
    pmx_counter(o, "parley_notifications_created_total", "Notifications stored.",
                st->notifications);
    pmx_counter(o, "parley_notifications_duplicates_total",
                "Notifications answered by deduplication.", st->notif_duplicates);
    pmx_counter(o, "parley_notifications_pushed_total",
                "Notifications pushed live (one per socket).", st->notif_pushed);
    pmx_family(o, "parley_notifications_suppressed_total", PMX_COUNTER,
               "Notifications stored but not pushed, by the preference that held them.");
    l.key = "reason";
    for (int k = 1; k < NS_COUNT; k++) {
        l.val = ns_names[k];
        pmx_sample_u64(o, "parley_notifications_suppressed_total", NULL, &l, 1,
                       mx->notif_suppressed[k]);
    }
    pmx_counter(o, "parley_notifications_read_total", "Notifications marked read.", mx->notif_read);
    push_metrics(svc->push, o);
    pmx_counter(o, "parley_store_commits_total", "Store batches committed.",
                svc->store ? mstore_commits(svc->store) : 0);
    pmx_counter(o, "parley_store_commit_failures_total", "Store batches that failed to commit.",
                st->commit_failures);
    pmx_family(o, "parley_store_commit_seconds", PMX_HISTOGRAM,
               "Time to commit one batch (the group commit of one loop iteration).");
    pmx_hist_write(o, "parley_store_commit_seconds", NULL, 0, &mx->commit_latency);
    pmx_family(o, "parley_store_batch_writes", PMX_HISTOGRAM,
               "Store writes (statements) per committed batch.");
    pmx_hist_write(o, "parley_store_batch_writes", NULL, 0, &mx->batch_writes);
}

int msg_service_ready(msg_service *svc, char *why, size_t cap)
{
    if (!svc->store) {
        snprintf(why, cap, "ok (messaging without a store: no token keys and no --dev-auth)");
        return 0;
    }
    if (mstore_ping(svc->store) != 0) {
        snprintf(why, cap, "store: the database does not answer");
        return 1;
    }
    svc->disk_checked = 0; /* a fresh look */
    if (disk_low(svc)) {
        snprintf(why, cap, "storage_full: free space in the data directory is below the reserve");
        return 1;
    }
    snprintf(why, cap, "ok");
    return 0;
}

void msg_service_set_keys(msg_service *svc, jwt_keyset *keys)
{
    if (svc->disabled || !keys) return;
    jwt_keyset *old = svc->keys;
    svc->keys = jwt_keyset_ref(keys);
    jwt_keyset_unref(old);
}

void msg_service_free(msg_service *svc)
{
    if (!svc) return;
    if (svc->nsp) parley_nsp_set_handlers(svc->nsp, NULL);
    ploop_defer_cancel(svc->loop, &svc->flush);
    push_free(svc->push); /* rows in flight stay queued: sent again next start */
    svc->push = NULL;
    if (svc->store) {
        /* What was stored stays stored: a client that got no acknowledgement
         * resends and is answered from the store. */
        if (mstore_commit(svc->store) != 0) plog_error("messaging: final commit failed");
        plog_info("messaging: %llu messages stored (%llu resends answered) in %llu commits, "
                  "%llu failed",
                  (unsigned long long)svc->stats.messages,
                  (unsigned long long)svc->stats.duplicates,
                  (unsigned long long)mstore_commits(svc->store),
                  (unsigned long long)svc->stats.commit_failures);
    }
    ploop_timer_stop(svc->loop, &svc->low_timer);
    ploop_timer_stop(svc->loop, &svc->nexp_timer);
    while (svc->nunread_head) {
        struct nuser *u = svc->nunread_head;
        svc->nunread_head = u->next;
        free(u);
    }
    pmap_free(&svc->nunread);
    tz_cache_free(svc);
    free(svc->tz_dir);
    mquota_free(svc->quota);
    free(svc->origins);
    pbuf_free(&svc->nprefs_buf);
    if (svc->api_keys) OPENSSL_cleanse(svc->api_keys, svc->n_api_keys * sizeof *svc->api_keys);
    free(svc->api_keys);
    obx *lists[2] = {svc->out_head, svc->low_head};
    for (int i = 0; i < 2; i++) {
        for (obx *e = lists[i]; e;) {
            obx *next = e->next;
            if (e->kind == OB_HTTP) do_http(e, true);
            if (e->ms) ms_release(e->ms);
            free(e->origin);
            pbuf_free(&e->json);
            free(e);
            e = next;
        }
    }
    while (svc->free_list) {
        obx *e = svc->free_list;
        svc->free_list = e->next;
        pbuf_free(&e->json);
        free(e);
    }
    while (svc->kicks) {
        msess *ms = svc->kicks;
        svc->kicks = ms->next_kick;
        ms_release(ms);
    }
    size_t pos = 0;
    pmap_entry *pe;
    while ((pe = pmap_next(&svc->typing, &pos))) {
        mtyping *t = pe->val;
        ploop_timer_stop(svc->loop, &t->expire);
        ploop_timer_stop(svc->loop, &t->throttle);
        free(t);
    }
    pmap_free(&svc->typing);
    pos = 0;
    while ((pe = pmap_next(&svc->pres, &pos))) {
        mpres *p = pe->val;
        ploop_timer_stop(svc->loop, &p->window);
        free(p);
    }
    pmap_free(&svc->pres);
    free(svc->bnames);
    fanout_free(&svc->fan);
    free(svc->fan_all);
    free(svc->bptrs);
    pbuf_free(&svc->pjson);
    pos = 0;
    while ((pe = pmap_next(&svc->users, &pos))) {
        muser *u = pe->val;
        for (msess *ms = u->socks; ms;) {
            msess *next = ms->next;
            ploop_timer_stop(svc->loop, &ms->expiry);
            ploop_timer_stop(svc->loop, &ms->idle_timer);
            subs_free(ms);
            if (ms->sock) parley_socket_set_data(ms->sock, NULL);
            free(ms);
            ms = next;
        }
        free(u);
    }
    pmap_free(&svc->users);
    media_close(svc->media);
    mstore_close(svc->store);
    pbuf_free(&svc->scratch);
    pbuf_free(&svc->scratch2);
    pbuf_free(&svc->cerr_data);
    jwt_keyset_unref(svc->keys);
    free(svc->data_dir);
    free(svc);
}
