/* The messaging service: notifications, mentions and quiet hours (see messaging.c). */
#include "services/server/msg_internal.h"

/* ---- notifications ---- */

#define NOTIF_ACK_TIMEOUT_MS                                                                       \
    60000                           /* a device that never acknowledges: delivered comes from sync \
                                     */
#define NOTIF_SWEEP_MAX_MS  3600000 /* the expiry timer re-checks at least hourly (clock jumps) */
#define NOTIF_BODY_CUT      256 /* urgent message text in a notification body */

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
    msvc_schedule(svc);
}

/* After the commit: `unread` to every socket of each marked user (the
 * presence room pu:<user> holds all of them, synced or not). */
void unread_flush(msg_service *svc)
{
    int64_t now = msvc_wall_ms();
    nuser *u;
    while ((u = svc->nunread_head)) {
        svc->nunread_head = u->next;
        pmap_del(&svc->nunread, u->id, strlen(u->id));
        /* In a cluster the user's sockets may be on other nodes: the
         * broadcast reaches them through the adapter. */
        bool anyone = svc->cluster || user_get(svc, u->id, false);
        int64_t n = anyone ? mstore_notif_unread(svc->store, u->id, now) : -1;
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
            msvc_schedule(k->svc);
        else
            plog_error("messaging: cannot mark notification %lld delivered", (long long)k->id);
    }
    free(k);
}

/* Emits `notification` (args: "[<Notification>]") to every socket of
 * user on this node, each with its acknowledgement request. */
static void npush_local(msg_service *svc, const char *user, int64_t id, const char *args)
{
    muser *u = user_get(svc, user, false);
    for (msess *ms = u ? u->socks : NULL; ms; ms = ms->next) {
        nack *k = pcalloc(1, sizeof *k);
        if (!k) return;
        k->svc = svc;
        k->id = id;
        snprintf(k->user, sizeof k->user, "%s", user);
        parley_emit_opts o = {
            .size = sizeof o,
            .ack = on_notif_ack, .ack_user = k, .timeout_ms = NOTIF_ACK_TIMEOUT_MS};
        if (parley_emit_opts_send(ms->sock, &o, MSG_EV_NOTIFICATION, args, NULL, 0) != 0)
            free(k);
        else
            svc->stats.notif_pushed++;
    }
}

void do_npush(msg_service *svc, obx *e)
{
    npush_local(svc, e->user, e->meta.id, (const char *)e->json.ptr);
    if (!svc->cluster) return;
    /* The recipient's sockets on the other nodes: each node emits to its
     * own (with their acknowledgement requests), as if stored there. */
    pbuf *b = &svc->scratch2;
    b->len = 0;
    int rc = pbuf_append_str(b, "[");
    if (rc == 0) rc = json_append_string(b, e->user, strlen(e->user));
    if (rc == 0) rc = pbuf_append(b, ",", 1);
    if (rc == 0) rc = pbuf_append(b, e->json.ptr + 1, e->json.len - 2); /* the Notification */
    if (rc == 0) rc = pbuf_append(b, "]", 2);
    if (rc != 0 || parley_cluster_server_side_emit(svc->cluster, svc->nsp, MSG_CLUSTER_NPUSH,
                                                   (const char *)b->ptr) != 0)
        svc->stats.cluster_npush_failures++;
}

/* MSG_CLUSTER_NPUSH from another node: ["<user>", <Notification>]. Checked
 * like any input (another process on the Redis may be anything). */
bool npush_remote(msg_service *svc, const char *args, size_t len)
{
    json_val arr, user, n, id;
    json_iter it;
    char who[MSG_USER_MAX + 1];
    int64_t nid;
    if (json_parse(args, len, 8, &arr, NULL) != 0 || arr.type != JSON_ARRAY || json_count(&arr) != 2)
        return false;
    json_iter_init(&it, &arr);
    if (!json_array_next(&it, &user) || !json_array_next(&it, &n) || user.type != JSON_STRING ||
        n.type != JSON_OBJECT)
        return false;
    long ul = json_string_decode(&user, who, sizeof who - 1);
    if (ul > 0) who[ul] = 0;
    if (ul <= 0 || !msg_valid_user(who, (size_t)ul) || !json_object_get(&n, "id", &id) ||
        !json_int(&id, &nid) || nid <= 0)
        return false;
    pbuf *b = &svc->scratch2;
    b->len = 0;
    int rc = pbuf_append(b, "[", 1);
    if (rc == 0) rc = pbuf_append(b, n.p, n.len);
    if (rc == 0) rc = pbuf_append(b, "]", 2);
    if (rc != 0) return false;
    npush_local(svc, who, nid, (const char *)b->ptr);
    return true;
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
int notif_suppressed(msg_service *svc, const msg_notification *n, const char *room, int64_t now,
                     bool *push_it)
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
        bool connected = (u && u->socks) || user_devices_elsewhere(svc, n->to);
        *push_it = push_eligible(&p, n, room, quiet, connected, now);
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

void nexp_arm(msg_service *svc, int64_t at)
{
    if (ptimer_armed(&svc->nexp_timer) && svc->nexp_at <= at) return;
    ploop_timer_stop(svc->loop, &svc->nexp_timer);
    svc->nexp_at = at;
    int64_t d = at - msvc_wall_ms() + 1; /* expired means expires <= now */
    if (d < 1) d = 1;
    if (d > NOTIF_SWEEP_MAX_MS) d = NOTIF_SWEEP_MAX_MS;
    ploop_timer_start(svc->loop, &svc->nexp_timer, (uint64_t)d);
}

static int sweep_user(const char *user, void *arg)
{
    unread_mark(arg, user);
    return 0;
}

void on_nexp(ptimer *t)
{
    msg_service *svc = PARLEY_CONTAINER_OF(t, msg_service, nexp_timer);
    int64_t now = msvc_wall_ms();
    if (mstore_notif_sweep(svc->store, now, sweep_user, svc) != 0) {
        plog_error("messaging: notification sweep failed; retrying in a minute");
        svc->nexp_at = now + 60000;
        ploop_timer_start(svc->loop, &svc->nexp_timer, 60000);
        return;
    }
    msvc_schedule(svc);
    int64_t next = mstore_notif_next_expiry(svc->store);
    if (next >= 0) nexp_arm(svc, next);
}

/* Stores n (a parsed request: recipient, fields, from) and queues its
 * consequences: the live push unless suppressed, the unread update, the
 * expiry. *dup: n was a dedupe hit and is now the stored notification. */
int notif_create(msg_service *svc, msg_notification *n, const char *room, bool *dup)
{
    int64_t now = msvc_wall_ms();
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
    if (!msvc_json_done(&e->json, rc)) {
        obx_release(svc, e);
        return 0;
    }
    obx_push(svc, e);
    return 0;
}

void req_notify(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
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
    if (msg_parse_notify(obj, msvc_wall_ms(), n, &err)) {
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

void req_nsync(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
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
    int64_t now = msvc_wall_ms();
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

void req_nread(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
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
    int64_t now = msvc_wall_ms();
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

void req_nprefs_get(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
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

void req_nprefs_set(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
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
void notif_from_message(msg_service *svc, const obx *e, const char *recipient, msg_priority prio)
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
void do_mentions(msg_service *svc, obx *e, const msg_conv *c)
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

void tz_cache_free(msg_service *svc)
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
