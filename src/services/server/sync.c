/* The messaging service: sync: the answer to sync (conversations, pages, receipts) (see
 * messaging.c). */
#include "services/server/msg_internal.h"

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
void do_sync(msg_service *svc, obx *e)
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
    } else if (!msvc_json_done(out, rc)) {
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
