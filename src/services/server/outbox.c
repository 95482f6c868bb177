/* The messaging service: the outbox: acknowledgements, broadcasts, room changes, HTTP answers,
 * committed and sent once per loop iteration (see messaging.c). */
#include "services/server/msg_internal.h"

/* ---- outbox ---- */

void msvc_schedule(msg_service *svc)
{
    ploop_defer(svc->loop, &svc->flush);
}

/* The push webhook wrote to the batch: commit it soon. */
void push_commit(void *user)
{
    msvc_schedule(user);
}

obx *obx_new(msg_service *svc, int kind, msess *ms, bool dep)
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

void obx_push(msg_service *svc, obx *e)
{
    e->next = NULL;
    if (svc->capture) { /* expand_hold: in the place of the hold */
        obx *h = svc->capture;
        if (h->sub_tail)
            h->sub_tail->next = e;
        else
            h->sub_head = e;
        h->sub_tail = e;
        return;
    }
    if (svc->out_tail)
        svc->out_tail->next = e;
    else
        svc->out_head = e;
    svc->out_tail = e;
    msvc_schedule(svc);
}

void obx_release(msg_service *svc, obx *e)
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
bool msvc_json_done(pbuf *b, int rc)
{
    return rc == 0 && pbuf_append(b, "", 1) == 0 && b->len-- > 0;
}

/* Queues the acknowledgement [<obj>] where obj is already in e->json. */
void queue_ack_json(msg_service *svc, msess *ms, int64_t ack_id, const char *obj, size_t len,
                    bool dep)
{
    if (ack_id < 0) return;
    obx *e = obx_new(svc, OB_ACK, ms, dep);
    if (!e) return;
    e->ack_id = ack_id;
    int rc = pbuf_append(&e->json, "[", 1);
    if (rc == 0) rc = pbuf_append(&e->json, obj, len);
    if (rc == 0) rc = pbuf_append(&e->json, "]", 1);
    if (!msvc_json_done(&e->json, rc)) {
        obx_release(svc, e);
        return;
    }
    obx_push(svc, e);
}

void reply_error(msg_service *svc, msess *ms, int64_t ack_id, const msg_error *err)
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

void reply_fail(msg_service *svc, msess *ms, int64_t ack_id, msg_errcode code, const char *field,
                const char *message)
{
    msg_error err;
    msg_fail(&err, code, field, "%s", message);
    reply_error(svc, ms, ack_id, &err);
}

void reply_internal(msg_service *svc, msess *ms, int64_t ack_id)
{
    if (!mstore_up(svc->store)) {
        /* The database is down (PostgreSQL): a clear, retryable refusal
         * (libparley keeps the message queued and sends it again). */
        msg_error err;
        msg_fail(&err, MSG_E_UNAVAILABLE, NULL,
                 "the database cannot be reached: nothing was changed, try again");
        err.retry_after_ms = STORE_RETRY_MS;
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    reply_fail(svc, ms, ack_id, MSG_E_INTERNAL, NULL, "storage failure: nothing was changed");
}

/* A broadcast of event [obj] to the live sockets of a conversation. */
obx *queue_bcast(msg_service *svc, msess *sender, const msg_conv *c, const char *event,
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
    if (!msvc_json_done(&e->json, rc)) {
        obx_release(svc, e);
        return NULL;
    }
    obx_push(svc, e);
    return e;
}

void queue_room_change(msg_service *svc, int kind, const char *user, const char *conv, bool dep)
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

void on_low_timer(ptimer *t)
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
    if (!svc->cluster) return;
    /* The user's sockets on the other nodes, through the adapter (which
     * applies the change here too: joins and leaves are idempotent).
     * Published on the connection the messages go out on, so a node sees
     * the join before the room's next message. */
    char ur[ROOM_NAME_MAX], all[PROOM_MAX];
    room_of_user(ur, e->user);
    proom(all, 'u', e->user);
    const char *live[1] = {ur}, *every[1] = {all}, *conv[1] = {e->rooms[0]}, *pres[1] = {pr};
    int rc;
    if (e->kind == OB_JOIN)
        rc = parley_cluster_sockets_join(svc->cluster, svc->nsp, every, 1, NULL, 0, pres, 1) ||
             parley_cluster_sockets_join(svc->cluster, svc->nsp, live, 1, NULL, 0, conv, 1);
    else
        rc = parley_cluster_sockets_leave(svc->cluster, svc->nsp, every, 1, NULL, 0, pres, 1) ||
             parley_cluster_sockets_leave(svc->cluster, svc->nsp, live, 1, NULL, 0, conv, 1);
    if (rc) svc->stats.cluster_room_failures++;
}

/* Recipients are gathered first: the notifications they get are written
 * while no read of the store is in progress. */
int notify_collect(const char *user, int64_t d, int64_t r, void *arg)
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

void do_http(msg_service *svc, obx *e, bool failed)
{
    if (!e->http) return;
    static const char fail[] = "{\"code\":\"internal\",\"message\":\"storage failure\"}";
    static const char down[] = "{\"code\":\"unavailable\",\"message\":\"the database cannot be "
                               "reached: try again\",\"retry_after_ms\":1000}";
    http_header h[2] = {
        {"Access-Control-Allow-Origin", 27, e->origin, e->origin ? strlen(e->origin) : 0},
        {"Vary", 4, "Origin", 6}};
    size_t n = e->origin ? 2 : 0;
    if (failed && !mstore_up(svc->store))
        phttpd_deferred_respond(e->http, 503, "application/json", h, n, down, sizeof down - 1);
    else if (failed)
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

void obx_push_http(msg_service *svc, obx *e, phttpd_req *req, int status)
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

/* The batch's commit is answered (mstore_commit_async): walk its outbox
 * at the next flush (at once when the commit answered at once). */
static void on_committed(void *arg, int rc)
{
    msg_service *svc = arg;
    svc->cb_done = true;
    svc->cb_rc = rc;
    if (!svc->cb_starting && !svc->closing) msvc_schedule(svc);
}

/* Replaces every hold of the list by what it expands to. */
static obx *expand_holds(msg_service *svc, obx *head, obx **tail)
{
    obx *out = NULL, **link = &out, *last = NULL;
    for (obx *e = head; e;) {
        obx *next = e->next;
        if (e->kind != OB_HOLD) {
            *link = last = e;
            link = &e->next;
            e = next;
            continue;
        }
        e->sub_head = e->sub_tail = NULL;
        expand_hold(svc, e);
        if (e->sub_head) {
            *link = e->sub_head;
            last = e->sub_tail;
            link = &e->sub_tail->next;
        }
        e->sub_head = e->sub_tail = NULL;
        obx_release(svc, e);
        e = next;
    }
    *link = NULL;
    *tail = last;
    return out;
}

static void finish_batch(msg_service *svc);

/* Once per loop iteration with something queued: the batch is committed
 * (asynchronously on PostgreSQL: the requests meanwhile queue the next
 * batch), then its outbox is walked in order: acknowledgements,
 * broadcasts and the rest; then syncs, the presence and unread flushes,
 * kicks, the push webhook. */
void msvc_on_flush(pdefer *d)
{
    msg_service *svc = PARLEY_CONTAINER_OF(d, msg_service, flush);
    if (svc->cb_active) {
        if (!svc->cb_done) return; /* on_committed schedules again */
        finish_batch(svc);
    }
    svc->cb_active = true;
    svc->cb_done = false;
    svc->cb_rc = 0;
    svc->cb_head = svc->out_head;
    svc->out_head = svc->out_tail = NULL;
    svc->cb_kicks = svc->kicks;
    svc->kicks = NULL;
    svc->cb_writes = mstore_batch_writes(svc->store);
    svc->cb_t0 = uv_hrtime();
    svc->cb_committing = mstore_in_batch(svc->store);
    if (svc->cb_committing) {
        svc->cb_starting = true;
        mstore_commit_async(svc->store, on_committed, svc);
        svc->cb_starting = false;
    } else {
        svc->cb_done = true;
    }
    if (svc->cb_done) finish_batch(svc);
}

static void finish_batch(msg_service *svc)
{
    bool failed = svc->cb_committing && svc->cb_rc != 0;
    uint32_t writes = svc->cb_writes;
    svc->cb_active = false;
    if (failed) {
        svc->stats.commit_failures++;
        uint64_t held;
        if (plog_limit_ok(&svc->log_commit, ploop_now(svc->loop), LOG_EVERY_MS, &held))
            plog_error("messaging: commit failed: the batch's requests get `internal` errors "
                       "(%llu more failed commits since the last line)",
                       (unsigned long long)held);
    }
    if (writes) {
        pmx_hist_observe(&svc->mx.commit_latency, uv_hrtime() - svc->cb_t0);
        pmx_hist_observe(&svc->mx.batch_writes, writes);
    }
    /* The batch's list stands in for the outbox while it is put in order;
     * what the walk queues goes to the next batch. */
    obx *keep_head = svc->out_head, *keep_tail = svc->out_tail;
    obx *batch = svc->cb_head;
    svc->cb_head = NULL;
    obx *btail = NULL;
    batch = expand_holds(svc, batch, &btail);
    svc->out_head = batch;
    svc->out_tail = btail;
    if (svc->fan_mixed) {
        svc->fan_mixed = false;
        fan_reorder(svc);
    }
    obx *e = svc->out_head, *syncs = NULL, **sync_tail = &syncs;
    svc->out_head = keep_head;
    svc->out_tail = keep_tail;
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
            do_http(svc, e, bad);
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
    while (svc->cb_kicks) {
        msess *ms = svc->cb_kicks;
        svc->cb_kicks = ms->next_kick;
        msvc_kick(svc, ms);
        ms_release(ms);
    }
    /* The push webhook sends what this commit queued (or retries). */
    if (svc->push) push_after_commit(svc->push, !failed);
}
