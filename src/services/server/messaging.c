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
#include "services/server/msg_internal.h"

int64_t msvc_wall_ms(void)
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

void ms_release(msess *ms)
{
    if (--ms->refs == 0 && !ms->sock) free(ms);
}

muser *user_get(msg_service *svc, const char *id, bool create)
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

bool user_online(msg_service *svc, const char *id)
{
    muser *u = user_get(svc, id, false);
    for (msess *ms = u ? u->socks : NULL; ms; ms = ms->next)
        if (ms->live) return true;
    return user_devices_elsewhere(svc, id);
}

bool user_devices_elsewhere(msg_service *svc, const char *id)
{
    if (!svc->pc) return false;
    pc_remote r;
    pc_remote_get(svc, id, &r);
    return r.devices > 0;
}

static void prefixed(char out[ROOM_NAME_MAX], char tag, const char *name)
{
    size_t n = strnlen(name, ROOM_NAME_MAX - 3);
    out[0] = tag;
    out[1] = ':';
    memcpy(out + 2, name, n);
    out[2 + n] = 0;
}

void room_of_user(char out[ROOM_NAME_MAX], const char *user)
{
    prefixed(out, 'u', user);
}

void room_of_conv(char out[ROOM_NAME_MAX], const char *conv)
{
    prefixed(out, 'c', conv);
}

/* Presence rooms: "pu:<user>", "ps:<user>", "pr:<room name>". */
void proom(char out[PROOM_MAX], char tag, const char *name)
{
    size_t n = strnlen(name, PROOM_MAX - 4);
    out[0] = 'p';
    out[1] = tag;
    out[2] = ':';
    memcpy(out + 3, name, n);
    out[3 + n] = 0;
}

/* ---- request helpers ---- */

/* Is the user part of conversation c? DMs by their id, rooms by the
 * store. Answers not_member (or internal) itself when not. */
bool check_member(msg_service *svc, msess *ms, int64_t ack_id, const msg_conv *c)
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

/* The insert of a send_message is answered: keep the result in its hold
 * (no store call, no outbox change: this may run inside another store
 * call). */
static void on_stored(void *arg, int rc, const mstore_msg *stored)
{
    obx *h = arg;
    h->stored = true;
    h->rc = rc;
    if (rc != 0) return;
    h->meta = stored->m;
    h->json.len = 0;
    if (msg_encode_message(&h->json, &stored->m, stored->content_json, stored->content_len) != 0)
        h->rc = PARLEY_ENOMEM;
}

static void expand_receipt(msg_service *svc, obx *h);

/* What follows a send_message's insert, once its batch is committed:
 * the acknowledgement, the broadcast, notifications; queued on h's
 * sub-list (svc->capture), which takes h's place in the outbox. A
 * receipt's hold goes to expand_receipt. */
void expand_hold(msg_service *svc, obx *h)
{
    if (h->hkind == HOLD_RECEIPT) {
        expand_receipt(svc, h);
        return;
    }
    msess *ms = h->ms;
    int64_t ack_id = h->ack_id;
    const char *user = h->user;
    const msg_conv *c = &h->conv;
    msg_type type = (msg_type)h->mtype;
    msg_priority prio = (msg_priority)h->prio;
    int rc = h->stored ? h->rc : PARLEY_EIO;
    obx *prev = svc->capture;
    bool cur_send = svc->mx.cur_send;
    uint64_t cur_t0 = svc->mx.cur_t0;
    svc->capture = h;
    svc->mx.cur_send = h->send_ok;
    svc->mx.cur_t0 = h->t0;
    if (rc == MSTORE_DUPLICATE) {
        if (!answer_duplicate(svc, ms, ack_id, user, h->meta.client_id))
            reply_internal(svc, ms, ack_id);
        goto out;
    }
    if (rc == PARLEY_ESTATE) {
        reply_fail(svc, ms, ack_id, MSG_E_NOT_MEMBER, "room", "no such room");
        goto out;
    }
    if (rc == MSTORE_NOT_MEMBER) {
        msg_error err;
        msg_fail(&err, MSG_E_NOT_MEMBER, "room", "you are not a member of room %s", c->a);
        if (!answer_duplicate(svc, ms, ack_id, user, h->meta.client_id))
            reply_error(svc, ms, ack_id, &err);
        goto out;
    }
    if (rc == MSTORE_OVER_QUOTA) { /* a resend of a stored one is a duplicate still */
        if (!answer_duplicate(svc, ms, ack_id, user, h->meta.client_id))
            refuse_limit(svc, ms, ack_id, MSG_E_QUOTA_EXCEEDED, 0, NULL,
                         "your storage quota is used up");
        goto out;
    }
    if (rc) {
        reply_internal(svc, ms, ack_id);
        goto out;
    }
    const pbuf *msg = &h->json;
    svc->stats.messages++;
    pbuf *ack = &svc->scratch2;
    ack->len = 0;
    rc = pbuf_append_str(ack, "{\"ok\":true,\"duplicate\":false,\"message\":");
    if (rc == 0) rc = pbuf_append(ack, msg->ptr, msg->len);
    if (rc == 0) rc = pbuf_append(ack, "}", 1);
    if (rc == 0) queue_ack_json(svc, ms, ack_id, (char *)ack->ptr, ack->len, true);
    obx *b = queue_bcast(svc, ms, c, MSG_EV_NEW_MESSAGE, (char *)msg->ptr, msg->len, true);
    if (b) {
        b->low = prio == MSG_PRIO_LOW && svc->o.low_delay_ms > 0;
        b->prio = (uint8_t)prio;
        if (prio != MSG_PRIO_NORMAL) svc->fan_mixed = true;
    }
    /* Urgent messages notify every recipient; a room text naming members
     * with @user notifies them (do_mentions). */
    bool mentions = c->kind == MSG_CONV_ROOM && type == MSG_TEXT &&
                    memchr(msg->ptr, '@', msg->len) != NULL;
    /* ... and a high one notifies the recipients without a live device. */
    if (prio == MSG_PRIO_URGENT || prio == MSG_PRIO_HIGH || mentions) {
        obx *n = obx_new(svc, OB_NOTIFY, NULL, true);
        if (!n) goto out;
        n->meta = h->meta;
        snprintf(n->user, sizeof n->user, "%s", user);
        rc = pbuf_append(&n->json, "[", 1);
        if (rc == 0) rc = pbuf_append(&n->json, msg->ptr, msg->len);
        if (rc == 0) rc = pbuf_append(&n->json, "]", 1);
        if (!msvc_json_done(&n->json, rc)) {
            obx_release(svc, n);
            goto out;
        }
        obx_push(svc, n);
    }
out:
    svc->capture = prev;
    svc->mx.cur_send = cur_send;
    svc->mx.cur_t0 = cur_t0;
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
    /* The storage quota and a room's membership are checked by the insert
     * itself (no store call of their own: on PostgreSQL each would wait for
     * the pipeline); answered in expand_hold. */
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
    const char *media = NULL;
    if (c.kind == MSG_CONV_ROOM && msg_type_has_media(m.type)) {
        /* Before the media lookup: a stranger learns nothing of it. */
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
    pbuf *content = &svc->scratch2;
    content->len = 0;
    if (msg_encode_content(content, m.type, &m.content) != 0) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    /* Insert first: a resend is rare, and the unique index finds it. The
     * insert may be answered later (PostgreSQL's pipeline): the request
     * holds its place in the outbox until then (expand_hold). */
    obx *h = obx_new(svc, OB_HOLD, ms, true);
    if (!h) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    h->svc = svc;
    h->ack_id = ack_id;
    h->conv = c;
    h->mtype = (uint8_t)m.type;
    h->prio = (uint8_t)m.priority;
    h->send_ok = svc->mx.cur_send;
    snprintf(h->user, sizeof h->user, "%s", user);
    snprintf(h->meta.client_id, sizeof h->meta.client_id, "%s", m.client_id);
    obx_push(svc, h);
    mstore_insert_async(svc->store, &c, user, m.client_id, m.type, m.priority,
                        (const char *)content->ptr, content->len, media, m.content.mime,
                        msvc_wall_ms(), on_stored, h);
}

/* A receipt's update is answered: keep the answer in its hold (as
 * on_stored). */
static void on_receipt(void *arg, int rc, const mstore_receipt_res *res)
{
    obx *h = arg;
    h->stored = true;
    h->rc = rc;
    h->rcp = *res;
}

/* What follows a receipt's update once its batch is committed: the
 * acknowledgement (the watermarks) and, when they moved, the status
 * broadcast; or the error. Queued in the hold's place (svc->capture). */
static void expand_receipt(msg_service *svc, obx *h)
{
    msess *ms = h->ms;
    int64_t ack_id = h->ack_id;
    const msg_conv *c = &h->conv;
    const mstore_receipt_res *res = &h->rcp;
    int rc = h->stored ? h->rc : PARLEY_EIO;
    msg_error err;
    obx *prev = svc->capture;
    svc->capture = h;
    /* A DM's parties are known by its id (checked when asked): one without
     * messages yet has no participant rows, and its receipt is beyond. */
    if (rc == PARLEY_ESTATE && c->kind == MSG_CONV_DM && h->rseq > res->last) rc = MSTORE_BEYOND;
    if (rc == MSTORE_BEYOND) {
        msg_fail(&err, MSG_E_INVALID_FIELD, "seq", "seq %lld is beyond the last message (%lld)",
                 (long long)h->rseq, (long long)res->last);
        reply_error(svc, ms, ack_id, &err);
    } else if (rc == PARLEY_ESTATE && c->kind == MSG_CONV_ROOM) {
        msg_fail(&err, MSG_E_NOT_MEMBER, "room", "you are not a member of room %s", c->a);
        reply_error(svc, ms, ack_id, &err);
    } else if (rc == PARLEY_ESTATE) {
        reply_fail(svc, ms, ack_id, MSG_E_NOT_MEMBER, "conversation",
                   "you are not a participant of this conversation");
    } else if (rc) {
        reply_internal(svc, ms, ack_id);
    } else {
        if (res->changed) svc->mx.receipts[h->mtype == MSG_READ]++;
        msg_status st = {.delivered = res->delivered, .read = res->read};
        memcpy(st.conversation, c->id, sizeof st.conversation);
        snprintf(st.user, sizeof st.user, "%s", h->user);
        pbuf *st_json = &svc->scratch, *b = &svc->scratch2;
        st_json->len = b->len = 0;
        rc = msg_encode_status(st_json, &st);
        /* The acknowledgement is the status object with "ok" in front. */
        if (rc == 0) rc = pbuf_append_str(b, "{\"ok\":true,");
        if (rc == 0) rc = pbuf_append(b, st_json->ptr + 1, st_json->len - 1);
        if (rc) {
            reply_internal(svc, ms, ack_id);
        } else {
            queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, true);
            if (res->changed)
                queue_bcast(svc, ms, c, MSG_EV_STATUS, (char *)st_json->ptr, st_json->len, true);
        }
    }
    svc->capture = prev;
}

/* The membership (a DM's by its id), the seq's range and the update are
 * one store call, answered later on PostgreSQL (its pipeline): the
 * request holds its place in the outbox until then, as a send does. */
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
    if (c.kind == MSG_CONV_DM && !check_member(svc, ms, ack_id, &c)) return;
    obx *h = obx_new(svc, OB_HOLD, ms, true);
    if (!h) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    h->svc = svc;
    h->hkind = HOLD_RECEIPT;
    h->ack_id = ack_id;
    h->conv = c;
    h->mtype = (uint8_t)r.status;
    h->rseq = r.seq;
    snprintf(h->user, sizeof h->user, "%s", user);
    obx_push(svc, h);
    mstore_receipt_async(svc->store, c.id, user, r.status == MSG_DELIVERED ? r.seq : 0,
                         r.status == MSG_READ ? r.seq : 0, on_receipt, h);
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
    if (!msvc_json_done(&e->json, pbuf_append(&e->json, obj->p, obj->len))) {
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
        rc = mstore_join(svc->store, room, user, msvc_wall_ms(), &added);
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
msg_errcode upload_quota(msg_service *svc, const char *user, uint64_t bytes, msg_error *err)
{
    const mquota_opts *q = mquota_opts_of(svc->quota);
    int64_t now = msvc_wall_ms(), day = mstore_utc_day(now), uploads = 0, today = 0, used = 0;
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
int record_upload(msg_service *svc, const char *user, const char *id, size_t len, const char *mime,
                  pbuf *out, bool *existed)
{
    int rc = mstore_media_put(svc->store, id, (int64_t)len, mime, user, msvc_wall_ms(), existed);
    if (rc == 0)
        rc =
            mstore_usage_add_upload(svc->store, user, mstore_utc_day(msvc_wall_ms()), (int64_t)len);
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
        return jwt_verify_set(svc->keys, buf, (size_t)n, msvc_wall_ms(), c, err);
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
    if (msvc_json_done(&svc->cerr_data, msg_encode_connect_error(&svc->cerr_data, &err)))
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
        int64_t left = svc->pending.exp_ms + svc->o.jwt_leeway_ms - msvc_wall_ms();
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
    svc->flush.cb = msvc_on_flush;
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
    svc->o.store = svc->o.media_dir = NULL; /* used while opening only */
    svc->o.jwt_keys = NULL;
    /* Without a way to tell who anyone is, nobody gets in: the data
     * directory is not even opened. */
    svc->disabled = !svc->keys && !o->dev_auth;
    if (rc == 0 && !svc->disabled) rc = make_data_dir(svc->data_dir);
    char path[4200];
    if (rc == 0 && !svc->disabled) {
        mstore_open_opts so = {.full_sync = o->full_sync,
                               .loop = parley_loop_uv(svc->loop)};
        if (o->store) {
            rc = mstore_open_url(o->store, &so, &svc->store);
        } else {
            snprintf(path, sizeof path, "%s/messages.db", svc->data_dir);
            rc = mstore_open(path, o->full_sync, &svc->store);
        }
        if (rc == 0)
            mstore_set_storage_quota(svc->store,
                                     (int64_t)mquota_opts_of(svc->quota)->storage_per_user);
    }
    if (rc == 0 && !svc->disabled) {
        bool shared = strcmp(mstore_backend(svc->store), "sqlite") != 0;
        if (o->media_dir)
            snprintf(path, sizeof path, "%s", o->media_dir);
        else
            snprintf(path, sizeof path, "%s/media", svc->data_dir);
        rc = shared ? media_open_shared(path, o->full_sync, &svc->media)
                    : media_open(path, o->full_sync, &svc->media);
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
    pmx_gauge(o, "parley_store_up",
              "1 while the message store answers (PostgreSQL: 0 from a lost connection until "
              "it is re-established).",
              svc->store && mstore_up(svc->store) ? 1 : 0);
    pmx_counter(o, "parley_chat_cluster_room_failures_total",
                "Room membership changes that could not be published to the other nodes.",
                st->cluster_room_failures);
    pmx_counter(o, "parley_chat_cluster_npush_failures_total",
                "Notifications that could not be published to the other nodes.",
                st->cluster_npush_failures);
    pmx_counter(o, "parley_chat_cluster_bad_total",
                "Malformed messaging events from other nodes, dropped.", st->cluster_bad);
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

void msg_service_on_server_side_emit(parley_nsp *n, const char *event, const char *args_json,
                                     size_t args_len, const char *ack_id, void *user)
{
    (void)ack_id;
    msg_service *svc = user;
    if (!svc || n != svc->nsp) return;
    if (strcmp(event, MSG_CLUSTER_NPUSH) == 0 && !npush_remote(svc, args_json, args_len))
        svc->stats.cluster_bad++;
}

void msg_service_free(msg_service *svc)
{
    if (!svc) return;
    if (svc->nsp) parley_nsp_set_handlers(svc->nsp, NULL);
    svc->closing = true; /* the final commit's callbacks schedule nothing */
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
    obx *lists[3] = {svc->out_head, svc->low_head, svc->cb_head};
    for (int i = 0; i < 3; i++) {
        for (obx *e = lists[i]; e;) {
            obx *next = e->next;
            if (e->kind == OB_HTTP) do_http(svc, e, true);
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
    while (svc->kicks || svc->cb_kicks) {
        if (!svc->kicks) {
            svc->kicks = svc->cb_kicks;
            svc->cb_kicks = NULL;
        }
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
