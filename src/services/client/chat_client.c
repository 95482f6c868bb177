/*
 * The messaging service, client half (include/parley/chat.h): the
 * protocol of docs/PROTOCOL.md ("Messaging") on a parley_client, with the
 * wire schema shared with the server (msg_schema.h).
 *
 * Everything here runs on the client's loop thread: public calls hop onto
 * it with ploop_call, and the Socket.IO client's callbacks already run
 * there, so the state below has no lock.
 *
 * State: per conversation the last seq received (what sync starts from),
 * the delivered watermark asked for and sent, the other participants'
 * highest watermarks, and this client's own stored messages not yet read
 * (ascending seq), which move to DELIVERED/READ as watermarks arrive.
 * Messages being sent are keyed by client id (which is also the outbound
 * queue's idempotency id) until they are READ or FAILED.
 *
 * Presence: the server keeps a device's chosen status and its
 * subscriptions per socket, so the chat keeps what the application asked
 * for (the status, a text not yet acknowledged, the subscribed users) and
 * sends it again on every connection.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/log.h"
#include "base/map.h"
#include "base/ratelimit.h"
#include "base/util.h"
#include "client/sio_internal.h"
#include "codec/json.h"
#include "net/net.h"
#include "parley/chat.h"
#include "parley/json.h"
#include "services/msg_schema.h"

#define SYNC_TIMEOUT_MS    30000
#define KICK_WAIT_MS       30000 /* before reconnecting after a disconnect for abuse */
#define REQUEST_TIMEOUT_MS 30000
#define RECEIPT_PREFIX     "rcpt-" /* queue ids of receipts: never a UUID */
#define ID_LEN             36

/* The notifications protocol (docs/PROTOCOL.md, "Notifications"); event
 * names from msg_schema.h. */
#define NOTIF_SYNC_LIMIT MSG_NOTIF_SYNC_DEF
#define NOTIF_LIVE_MAX   1000 /* live ids remembered until a sync passes them */

/* A request waiting for its answer (the first member of sync_ctx and
 * req): listed so that parley_chat_free can let go of those the Socket.IO
 * client will never answer (it calls no callback once freed). */
typedef struct pending {
    struct pending *next, **pprev;
} pending;

typedef struct sent_msg {
    char client_id[ID_LEN + 1];
    parley_msg_status status;
    struct conv *conv; /* once SENT */
    int64_t seq, id;
    parley_chat_status_fn fn;
    void *user;
} sent_msg;

typedef struct conv {
    char id[MSG_CONV_MAX + 1];
    int64_t last_seq;       /* received, in order */
    int64_t delivered_want; /* our delivered watermark to send */
    int64_t delivered_sent;
    int64_t read_sent;
    int64_t peer_delivered; /* highest of the other participants */
    int64_t peer_read;
    sent_msg **mine; /* SENT, not READ, ascending seq */
    size_t nmine, capmine;
    size_t ndelivered; /* mine[0, ndelivered) are DELIVERED */
    bool dirty;        /* on the receipt list */
    struct conv *next_dirty;
    bool typing;
    ptimer typing_timer;
    parley_chat *chat;
} conv;

struct parley_chat {
    plog_limit log_bad; /* malformed server data: one log line per 5 s */
    parley_chat_opts o;
    char *url, *path, *user, *queue_path, *ca_file;
    parley_client *client;
    parley_sock *sock;
    parley_loop *loop;
    parley_chat_state state;
    unsigned sync_gen; /* bumps per connection: stale answers are dropped */
    bool syncing;
    char sync_from[MSG_CONV_MAX + 1]; /* the server's `next`: where the next page starts */
    ptimer sync_timer;                /* a sync the server refused with a retry hint goes again */
    ptimer kick_timer;                /* reconnection after the server disconnected us for abuse */
    bool kicked;                      /* the server said why it disconnects (disconnect_reason) */
    bool freeing;                     /* parley_chat_free has begun: queue no deferred work */
    pmap convs;                       /* id -> conv */
    pmap sent;                        /* client id -> sent_msg */
    size_t ntracked;
    conv *dirty;
    pdefer receipts;
    pending *pending;       /* requests not answered yet */
    msg_limits limits;      /* reading the server's objects */
    msg_limits send_limits; /* checking ours as the server will */

    /* presence */
    bool pres_chosen; /* the application called parley_chat_presence_set */
    msg_pstatus pres_status;
    char pres_text[MSG_PRESENCE_TEXT_MAX + 1];
    bool pres_text_pending; /* not acknowledged yet: sent with every set */
    bool pres_invisible;    /* the application's last parley_chat_presence_invisible */
    bool pres_inv_pending;  /* ... not acknowledged yet: sent with every set */
    unsigned pres_gen;      /* bumps per parley_chat_presence_set */
    pmap subs;              /* user id -> its malloc'ed copy (also the key) */

    /* notifications */
    int64_t notif_since; /* the highest id a sync returned: the next sync's since */
    int64_t *notif_live; /* ids reported live above notif_since, ascending */
    size_t nlive, caplive;
    bool notif_syncing; /* a sync is out on this connection */
    bool notif_again;   /* asked for while one was out: another after it */
    bool notif_off;     /* the server has no notifications (unknown_event) */
    bool unread_known;
    int64_t unread;
};

/* ---- small helpers ---- */

static char *dupstr(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void set_error(parley_chat_error *e, const char *code, const char *field, const char *msg)
{
    if (!e) return;
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    snprintf(e->field, sizeof e->field, "%s", field ? field : "");
    snprintf(e->message, sizeof e->message, "%s", msg ? msg : "");
    e->retry_after_ms = 0;
}

static void from_msg_error(parley_chat_error *e, const msg_error *me)
{
    const char *code = msg_errcode_name(me->code);
    set_error(e, code ? code : "unknown", me->field, me->message);
    if (e) e->retry_after_ms = me->retry_after_ms;
}

static void set_state(parley_chat *c, parley_chat_state st, const parley_chat_error *why)
{
    if (c->state == st && !why) return;
    c->state = st;
    if (c->o.on_state) c->o.on_state(c, st, why, c->o.user);
}

static void on_typing_timer(ptimer *t);

static void pending_add(parley_chat *c, pending *p)
{
    p->next = c->pending;
    if (p->next) p->next->pprev = &p->next;
    p->pprev = &c->pending;
    c->pending = p;
}

static void pending_del(pending *p)
{
    *p->pprev = p->next;
    if (p->next) p->next->pprev = p->pprev;
}

static conv *conv_get(parley_chat *c, const char *id, bool create)
{
    size_t len = strlen(id);
    conv *v = pmap_get(&c->convs, id, len);
    if (v || !create) return v;
    msg_conv parsed;
    if (!msg_conv_parse(&parsed, id, len)) return NULL;
    v = pcalloc(1, sizeof *v);
    if (!v) return NULL;
    memcpy(v->id, id, len + 1);
    v->chat = c;
    ptimer_init(&v->typing_timer, on_typing_timer);
    if (pmap_put(&c->convs, v->id, len, v) != 0) {
        free(v);
        return NULL;
    }
    return v;
}

static void report(parley_chat *c, sent_msg *m, const parley_chat_error *err, bool duplicate)
{
    parley_chat_status st = {
        .client_id = m->client_id,
        .status = m->status,
        .conversation = m->conv ? m->conv->id : "",
        .seq = m->seq,
        .id = m->id,
        .duplicate = duplicate,
        .error = err,
    };
    if (m->fn) m->fn(c, &st, m->user);
    if (c->o.on_status) c->o.on_status(c, &st, c->o.user);
}

static void sent_forget(parley_chat *c, sent_msg *m)
{
    pmap_del(&c->sent, m->client_id, ID_LEN);
    if (m->conv) c->ntracked--;
    free(m);
}

/* Moves the conversation's own messages to DELIVERED / READ as far as the
 * other participants' watermarks go (mine[0, ndelivered) are DELIVERED). */
static void conv_advance(parley_chat *c, conv *v)
{
    while (v->ndelivered < v->nmine && v->mine[v->ndelivered]->seq <= v->peer_delivered) {
        sent_msg *m = v->mine[v->ndelivered++];
        if (m->status < PARLEY_MSG_DELIVERED) {
            m->status = PARLEY_MSG_DELIVERED;
            report(c, m, NULL, false);
        }
    }
    size_t drop = 0;
    while (drop < v->nmine && v->mine[drop]->seq <= v->peer_read) {
        sent_msg *m = v->mine[drop++];
        m->status = PARLEY_MSG_READ; /* DELIVERED was reported: read implies delivered */
        report(c, m, NULL, false);
        sent_forget(c, m);
    }
    if (drop) {
        memmove(v->mine, v->mine + drop, (v->nmine - drop) * sizeof *v->mine);
        v->nmine -= drop;
        v->ndelivered = v->ndelivered > drop ? v->ndelivered - drop : 0;
    }
}

static void peer_watermarks(parley_chat *c, conv *v, int64_t delivered, int64_t read)
{
    if (read > delivered) delivered = read;
    if (delivered > v->peer_delivered) v->peer_delivered = delivered;
    if (read > v->peer_read) v->peer_read = read;
    conv_advance(c, v);
}

/* A message of ours is stored: SENT, then followed until READ. */
static void mark_sent(parley_chat *c, sent_msg *m, conv *v, int64_t seq, int64_t id, bool dup)
{
    if (m->status != PARLEY_MSG_SENDING) return;
    m->status = PARLEY_MSG_SENT;
    m->seq = seq;
    m->id = id;
    m->conv = v;
    report(c, m, NULL, dup);
    /* Follow it: ascending seq (acks come in commit order, so appending
     * is nearly always right; insert otherwise). */
    if (v->nmine == v->capmine) {
        size_t cap = v->capmine ? v->capmine * 2 : 8;
        sent_msg **p = realloc(v->mine, cap * sizeof *p);
        if (!p) {
            sent_forget(c, m);
            return;
        }
        v->mine = p;
        v->capmine = cap;
    }
    size_t at = v->nmine;
    while (at > 0 && v->mine[at - 1]->seq > seq) at--;
    memmove(v->mine + at + 1, v->mine + at, (v->nmine - at) * sizeof *v->mine);
    v->mine[at] = m;
    v->nmine++;
    if (at < v->ndelivered) v->ndelivered = at; /* rescanned; reported once */
    c->ntracked++;
    if (c->ntracked > c->o.max_tracked && v->nmine > 1) {
        /* Too many followed: stop following this conversation's oldest. */
        sent_msg *old = v->mine[0];
        memmove(v->mine, v->mine + 1, (v->nmine - 1) * sizeof *v->mine);
        v->nmine--;
        if (v->ndelivered) v->ndelivered--;
        sent_forget(c, old);
    }
    conv_advance(c, v);
}

/* ---- receipts (coalesced per loop iteration, sent through the queue) ---- */

static void receipt_id(char out[ID_LEN + 1])
{
    char uuid[37];
    if (parley_new_id(uuid) != 0) memset(uuid, '0', 36);
    memcpy(out, RECEIPT_PREFIX, 5);
    size_t o = 5;
    for (size_t i = 0; i < 36 && o < ID_LEN; i++)
        if (uuid[i] != '-') out[o++] = uuid[i];
    out[ID_LEN] = 0;
}

static int send_receipt(parley_chat *c, const char *conv_id, msg_receipt_kind kind, int64_t seq)
{
    msg_receipt r;
    memset(&r, 0, sizeof r);
    snprintf(r.conversation, sizeof r.conversation, "%s", conv_id);
    r.status = kind;
    r.seq = seq;
    pbuf b = {0};
    int rc = pbuf_append(&b, "[", 1);
    if (rc == 0) rc = msg_encode_receipt(&b, &r);
    if (rc == 0) rc = pbuf_append(&b, "]\0", 2);
    char id[ID_LEN + 1];
    receipt_id(id);
    if (rc == 0)
        rc = parley_sock_send(c->sock, MSG_EV_RECEIPT, (const char *)b.ptr, PARLEY_PRIORITY_NORMAL,
                              0, id, NULL, NULL);
    pbuf_free(&b);
    return rc;
}

static void flush_receipts(pdefer *d)
{
    parley_chat *c = PARLEY_CONTAINER_OF(d, parley_chat, receipts);
    conv *v = c->dirty;
    c->dirty = NULL;
    while (v) {
        conv *next = v->next_dirty;
        v->dirty = false;
        v->next_dirty = NULL;
        if (v->delivered_want > v->delivered_sent &&
            send_receipt(c, v->id, MSG_DELIVERED, v->delivered_want) == 0)
            v->delivered_sent = v->delivered_want;
        v = next;
    }
}

static void want_delivered(parley_chat *c, conv *v, int64_t seq)
{
    if (seq <= v->delivered_want) return;
    v->delivered_want = seq;
    if (!v->dirty) {
        v->dirty = true;
        v->next_dirty = c->dirty;
        c->dirty = v;
    }
    /* Not once parley_chat_free cancelled it: until the client is gone its
     * events still come, and a flush queued then would run after c and
     * the client are freed. */
    if (!c->freeing) ploop_defer(c->loop, &c->receipts);
}

/* ---- incoming messages ---- */

static void start_sync(parley_chat *c);

/* Fills a view of m for the application; text gets the decoded text. */
static void message_view(parley_chat *c, const msg_message *m, const json_val *obj,
                         parley_chat_message *out, char *text, size_t textcap)
{
    memset(out, 0, sizeof *out);
    out->id = m->id;
    out->seq = m->seq;
    out->ts = m->ts;
    out->conversation = m->conversation;
    out->from = m->from;
    out->client_id = m->client_id;
    out->type = msg_type_name(m->type);
    out->priority = msg_priority_name(m->priority);
    json_val content;
    if (json_object_get(obj, "content", &content)) {
        out->content_json = content.p;
        out->content_len = content.len;
    } else {
        out->content_json = "{}";
        out->content_len = 2;
    }
    const json_val *t = m->content.text.type == JSON_STRING      ? &m->content.text
                        : m->content.caption.type == JSON_STRING ? &m->content.caption
                        : m->content.name.type == JSON_STRING    ? &m->content.name
                        : m->content.label.type == JSON_STRING   ? &m->content.label
                                                                 : NULL;
    text[0] = 0;
    if (t) {
        long n = json_string_decode(t, text, textcap - 1);
        text[n > 0 ? n : 0] = 0;
    }
    out->text = text;
    out->mine = strcmp(m->from, c->user) == 0;
}

/* What a server sends that does not parse is dropped; a hostile or broken
 * server could send it at line rate, so it is logged at most once per
 * 5 s with the count of the lines held back. */
static void log_bad(parley_chat *c, const char *what, const char *why)
{
    uint64_t held;
    if (!plog_limit_ok(&c->log_bad, ptime_ms(), 5000, &held)) return;
    plog_warn("chat: a malformed %s from the server%s%s%s: ignored (%llu more not logged)", what,
              why ? " (" : "", why ? why : "", why ? ")" : "", (unsigned long long)held);
}

/* A message from new_message or a sync answer; false when it does not
 * follow what the client has (a gap: sync instead). */
static bool take_message(parley_chat *c, const json_val *obj, bool live)
{
    msg_message m;
    msg_error me;
    if (msg_parse_message(obj, &c->limits, &m, &me) != MSG_OK) {
        log_bad(c, "message", me.message);
        return true;
    }
    conv *v = conv_get(c, m.conversation, true);
    if (!v) return true;
    if (m.seq <= v->last_seq) return true; /* had it */
    if (m.seq != v->last_seq + 1 && live) {
        /* Live events follow the sync without gaps; one missing means the
         * client's idea of the conversation is off: catch up. */
        start_sync(c);
        return false;
    }
    v->last_seq = m.seq;
    bool mine = strcmp(m.from, c->user) == 0;
    sent_msg *s = NULL;
    if (mine) {
        /* Ours, from another device, or this one's whose answer was lost
         * or came before the sync that brings it. */
        s = strlen(m.client_id) == ID_LEN ? pmap_get(&c->sent, m.client_id, ID_LEN) : NULL;
        if (s) mark_sent(c, s, v, m.seq, m.id, false);
    }
    /* What this client sent is the application's through on_status; live,
     * the server never hands it back, so a sync must not either. */
    if (c->o.on_message && !s) {
        size_t cap = m.content.text.len + m.content.caption.len + m.content.name.len +
                     m.content.label.len + 1;
        char stackbuf[1024];
        char *text = cap <= sizeof stackbuf ? stackbuf : malloc(cap);
        if (text) {
            parley_chat_message view;
            message_view(c, &m, obj, &view, text, cap <= sizeof stackbuf ? sizeof stackbuf : cap);
            c->o.on_message(c, &view, c->o.user);
            if (text != stackbuf) free(text);
        }
    }
    if (!mine && c->o.auto_delivered) want_delivered(c, v, m.seq);
    return true;
}

/* ---- sync ---- */

typedef struct sync_ctx {
    pending link; /* first: chat_destroy frees it through the list */
    parley_chat *c;
    unsigned gen;
} sync_ctx;

static void on_sync_answer(parley_sock *s, int err, const parley_args *args, void *user);

static void send_sync(parley_chat *c)
{
    pbuf b = {0};
    int rc = pbuf_append_str(&b, "[{\"since\":{");
    size_t pos = 0;
    bool first = true;
    pmap_entry *e;
    unsigned n = 0;
    while (rc == 0 && (e = pmap_next(&c->convs, &pos)) && n < MSG_SYNC_MAX_SINCE) {
        conv *v = e->val;
        if (v->last_seq <= 0) continue;
        if (!first) rc = pbuf_append(&b, ",", 1);
        first = false;
        if (rc == 0) rc = json_append_string(&b, v->id, strlen(v->id));
        if (rc == 0) rc = pbuf_appendf(&b, ":%lld", (long long)v->last_seq);
        n++;
    }
    if (rc == 0) rc = pbuf_appendf(&b, "},\"limit\":%u", MSG_SYNC_MAX_LIMIT);
    if (rc == 0 && c->sync_from[0]) {
        rc = pbuf_append_str(&b, ",\"cursor\":");
        if (rc == 0) rc = json_append_string(&b, c->sync_from, strlen(c->sync_from));
    }
    if (rc == 0) rc = pbuf_append_str(&b, "}]");
    if (rc == 0) rc = pbuf_append(&b, "", 1);
    sync_ctx *x = rc == 0 ? pcalloc(1, sizeof *x) : NULL;
    if (rc == 0 && !x) rc = PARLEY_ENOMEM;
    if (x) {
        x->c = c;
        x->gen = c->sync_gen;
        pending_add(c, &x->link);
        rc = parley_sock_emit_ack(c->sock, MSG_EV_SYNC, (const char *)b.ptr, NULL, 0,
                                  SYNC_TIMEOUT_MS, on_sync_answer, x);
        if (rc != 0) {
            pending_del(&x->link);
            free(x);
        }
    }
    if (rc != 0) plog_warn("chat: cannot send sync (%d)", rc);
    c->syncing = rc == 0;
    pbuf_free(&b);
}

static void start_sync(parley_chat *c)
{
    if (c->syncing || !parley_sock_connected(c->sock)) return;
    ploop_timer_stop(c->loop, &c->sync_timer);
    c->sync_from[0] = 0; /* a walk over every conversation, from the start */
    set_state(c, PARLEY_CHAT_SYNCING, NULL);
    send_sync(c);
}

/* The retry hint of a refused sync has passed: the walk goes on. */
static void on_sync_timer(ptimer *t)
{
    parley_chat *c = PARLEY_CONTAINER_OF(t, parley_chat, sync_timer);
    if (c->freeing || c->syncing || !parley_sock_connected(c->sock)) return;
    send_sync(c);
}

static void on_kick_timer(ptimer *t)
{
    parley_chat *c = PARLEY_CONTAINER_OF(t, parley_chat, kick_timer);
    if (!c->freeing) parley_sock_connect(c->sock);
}

static void apply_conversations(parley_chat *c, const json_val *list)
{
    json_iter it;
    json_val cv;
    json_iter_init(&it, list);
    while (json_array_next(&it, &cv)) {
        json_val idv, receipts;
        char id[MSG_CONV_MAX + 1];
        if (cv.type != JSON_OBJECT || !json_object_get(&cv, "id", &idv) || idv.type != JSON_STRING)
            continue;
        long n = json_string_decode(&idv, id, sizeof id - 1);
        if (n <= 0) continue;
        id[n] = 0;
        conv *v = conv_get(c, id, true);
        if (!v || !json_object_get(&cv, "receipts", &receipts) || receipts.type != JSON_ARRAY)
            continue;
        json_iter rit;
        json_val r;
        json_iter_init(&rit, &receipts);
        while (json_array_next(&rit, &r)) {
            json_val uv, dv, rv;
            char u[MSG_USER_MAX + 1];
            int64_t d = 0, rd = 0;
            if (r.type != JSON_OBJECT || !json_object_get(&r, "user", &uv) ||
                uv.type != JSON_STRING)
                continue;
            long un = json_string_decode(&uv, u, sizeof u - 1);
            if (un <= 0) continue;
            u[un] = 0;
            if (json_object_get(&r, "delivered", &dv)) json_int(&dv, &d);
            if (json_object_get(&r, "read", &rv)) json_int(&rv, &rd);
            if (strcmp(u, c->user) == 0) {
                /* Our own devices' watermarks: nothing to send again. */
                if (d > v->delivered_sent) v->delivered_sent = d;
                if (rd > v->read_sent) v->read_sent = rd;
                continue;
            }
            peer_watermarks(c, v, d, rd);
            if (c->o.on_receipt) c->o.on_receipt(c, v->id, u, d, rd, c->o.user);
        }
    }
}

static void on_sync_answer(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    sync_ctx *x = user;
    parley_chat *c = x->c;
    unsigned gen = x->gen;
    pending_del(&x->link);
    free(x);
    if (gen != c->sync_gen) return; /* an earlier connection's */
    c->syncing = false;
    if (err == PARLEY_ETIMEDOUT) {
        start_sync(c);
        return;
    }
    if (err) return; /* disconnected: the next connection syncs */
    json_val obj, v;
    msg_error me;
    bool ok = false;
    if (msg_args_object(args->json, args->json_len, &c->limits, &obj, &me) != MSG_OK ||
        !msg_parse_ack(&obj, &ok, &me) || !ok) {
        if (!ok && me.retry_after_ms > 0) {
            /* Over a limit: the same page again once the hint has passed. */
            ploop_timer_start(c->loop, &c->sync_timer, (uint64_t)me.retry_after_ms);
            return;
        }
        plog_warn("chat: sync refused or malformed: %s", ok ? "" : me.message);
        return;
    }
    if (json_object_get(&obj, "messages", &v) && v.type == JSON_ARRAY) {
        json_iter it;
        json_val m;
        json_iter_init(&it, &v);
        while (json_array_next(&it, &m)) take_message(c, &m, false);
    }
    if (json_object_get(&obj, "conversations", &v) && v.type == JSON_ARRAY)
        apply_conversations(c, &v);
    bool more = json_object_get(&obj, "more", &v) && v.type == JSON_TRUE;
    if (more) {
        /* The next page starts where the server says (an older server says
         * nothing: from the start, with `since` moved on). */
        long n = json_object_get(&obj, "next", &v) && v.type == JSON_STRING
                     ? json_string_decode(&v, c->sync_from, sizeof c->sync_from - 1)
                     : -1;
        c->sync_from[n > 0 ? n : 0] = 0;
        c->syncing = true;
        send_sync(c);
        return;
    }
    set_state(c, PARLEY_CHAT_ONLINE, NULL);
}

/* ---- Socket.IO callbacks ---- */

static char *auth_payload(parley_sock *s, void *user)
{
    (void)s;
    parley_chat *c = user;
    pbuf b = {0};
    int rc = 0;
    char *tok = c->o.token ? c->o.token(c, c->o.user) : NULL;
    if (tok) {
        rc = pbuf_append_str(&b, "{\"token\":");
        if (rc == 0) rc = json_append_string(&b, tok, strlen(tok));
        parley_free(tok);
    } else if (c->o.dev_auth) {
        rc = pbuf_append_str(&b, "{\"user\":");
        if (rc == 0) rc = json_append_string(&b, c->user, strlen(c->user));
    } else {
        return NULL;
    }
    if (rc == 0) rc = pbuf_append(&b, "}", 2);
    if (rc != 0) {
        pbuf_free(&b);
        return NULL;
    }
    return (char *)b.ptr;
}

static void presence_on_connect(parley_chat *c);
static void notif_on_connect(parley_chat *c);

static void on_connect(parley_sock *s, int recovered, void *user)
{
    (void)s;
    (void)recovered;
    parley_chat *c = user;
    c->sync_gen++;
    c->syncing = false;
    c->kicked = false;
    /* The new socket is online and subscribed to nobody (even when the
     * Socket.IO session was recovered, presence state is the socket's). */
    presence_on_connect(c);
    notif_on_connect(c);
    /* Receipts asked for and not yet acknowledged are in the queue; what
     * was only wanted goes now. */
    start_sync(c);
}

static void on_disconnect(parley_sock *s, const char *reason, void *user)
{
    parley_chat *c = user;
    c->sync_gen++;
    c->syncing = false;
    set_state(c, PARLEY_CHAT_OFFLINE, NULL);
    ploop_timer_stop(c->loop, &c->sync_timer);
    /* The server ends the session when the token expires: connect again
     * at once with a fresh one (a refusal then stops it). One that kept
     * sending over its limits was told why first: it waits a while. */
    if (reason && !strcmp(reason, "io server disconnect")) {
        if (c->kicked)
            ploop_timer_start(c->loop, &c->kick_timer, KICK_WAIT_MS);
        else
            parley_sock_connect(s);
    }
}

static void on_connect_error(parley_sock *s, const char *message, const char *data_json, void *user)
{
    (void)s;
    parley_chat *c = user;
    parley_chat_error e;
    set_error(&e, "refused", "", message);
    json_val d, code, msg;
    if (data_json && json_parse(data_json, strlen(data_json), 4, &d, NULL) == 0 &&
        d.type == JSON_OBJECT) {
        if (json_object_get(&d, "code", &code) && code.type == JSON_STRING) {
            long n = json_string_decode(&code, e.code, sizeof e.code - 1);
            e.code[n > 0 ? n : 0] = 0;
        }
        if (json_object_get(&d, "message", &msg) && msg.type == JSON_STRING) {
            long n = json_string_decode(&msg, e.message, sizeof e.message - 1);
            e.message[n > 0 ? n : 0] = 0;
        }
    }
    set_state(c, PARLEY_CHAT_REFUSED, &e);
}

static void on_client_event(parley_client *cl, const parley_client_event *ev, void *user)
{
    (void)cl;
    parley_chat *c = user;
    if (c->state == PARLEY_CHAT_REFUSED) return;
    if (ev->type == PARLEY_CLIENT_CONNECTING)
        set_state(c, PARLEY_CHAT_CONNECTING, NULL);
    else if (ev->type == PARLEY_CLIENT_CLOSE || ev->type == PARLEY_CLIENT_RECONNECT_FAILED)
        set_state(c, PARLEY_CHAT_OFFLINE, NULL);
}

/* The outbound queue's reports: send_message answers and expiries. */
static void on_send_status(parley_sock *s, const char *id, int status, int err,
                           const parley_args *ack, void *user)
{
    (void)s;
    parley_chat *c = user;
    if (!strncmp(id, RECEIPT_PREFIX, 5)) return; /* receipts are watermarks: nothing to tell */
    sent_msg *m = pmap_get(&c->sent, id, ID_LEN);
    if (status == PARLEY_SEND_FAILED) {
        /* One inherited from an earlier run (the queue file) is unknown
         * here but reported all the same: on_status promises those too. */
        sent_msg inherited;
        if (!m) {
            memset(&inherited, 0, sizeof inherited);
            memcpy(inherited.client_id, id, ID_LEN);
            inherited.status = PARLEY_MSG_SENDING;
        }
        sent_msg *f = m ? m : &inherited;
        if (f->status != PARLEY_MSG_SENDING) return;
        parley_chat_error e;
        set_error(&e, err == PARLEY_ETIMEDOUT ? "expired" : "failed", "",
                  err == PARLEY_ETIMEDOUT ? "the message's time to live passed before it was stored"
                                          : "the message could not be sent");
        f->status = PARLEY_MSG_FAILED;
        report(c, f, &e, false);
        if (m) sent_forget(c, m);
        return;
    }
    if (status != PARLEY_SEND_ACKED || !ack) return;
    json_val obj, mv;
    msg_error me;
    bool ok = false;
    if (msg_args_object(ack->json, ack->json_len, &c->limits, &obj, &me) != MSG_OK ||
        !msg_parse_ack(&obj, &ok, &me)) {
        me.code = MSG_E_BAD_REQUEST;
        snprintf(me.message, sizeof me.message, "the server's answer is not an acknowledgement");
        me.field[0] = 0;
        ok = false;
    }
    if (!m) {
        /* Sent by an earlier run of the process (the queue file): follow it
         * from here. */
        m = pcalloc(1, sizeof *m);
        if (!m) return;
        memcpy(m->client_id, id, ID_LEN);
        m->status = PARLEY_MSG_SENDING;
        if (pmap_put(&c->sent, m->client_id, ID_LEN, m) != 0) {
            free(m);
            return;
        }
    }
    if (!ok) {
        if (m->status != PARLEY_MSG_SENDING) return;
        parley_chat_error e;
        from_msg_error(&e, &me);
        m->status = PARLEY_MSG_FAILED;
        report(c, m, &e, false);
        sent_forget(c, m);
        return;
    }
    msg_message msg;
    json_val dup;
    bool duplicate = json_object_get(&obj, "duplicate", &dup) && dup.type == JSON_TRUE;
    conv *v = NULL;
    if (json_object_get(&obj, "message", &mv) &&
        msg_parse_message(&mv, &c->limits, &msg, &me) == MSG_OK)
        v = conv_get(c, msg.conversation, true);
    if (!v) {
        plog_warn("chat: send_message answer without a usable message");
        sent_forget(c, m);
        return;
    }
    /* Our own message is part of the conversation: it extends what we
     * have when it is the next one (otherwise the next sync brings it). */
    if (msg.seq == v->last_seq + 1) v->last_seq = msg.seq;
    mark_sent(c, m, v, msg.seq, msg.id, duplicate);
}

/* The outbound queue asks whether an answer is final. A refusal that says
 * when to try again (rate_limited, quota_exceeded, storage_full with
 * retry_after_ms) is not: the entry waits in its place, the message stays
 * SENDING, and the queue resends it (the same client id: never stored
 * twice). Receipts take the same path. Every other answer is final, and
 * on_send_status turns a refusal into FAILED. */
static int on_send_retry(parley_sock *s, const char *id, const parley_args *ack, void *user)
{
    (void)s;
    (void)id;
    parley_chat *c = user;
    json_val obj;
    msg_error me;
    bool ok = false;
    if (msg_args_object(ack->json, ack->json_len, &c->limits, &obj, &me) != MSG_OK ||
        !msg_parse_ack(&obj, &ok, &me) || ok || me.retry_after_ms <= 0)
        return 0;
    switch (me.code) {
    case MSG_E_RATE_LIMITED:
    case MSG_E_QUOTA_EXCEEDED:
    case MSG_E_STORAGE_FULL:
        /* msg_parse_ack bounds it to a day. */
        return (int)me.retry_after_ms;
    default:
        return 0;
    }
}

static void take_presence(parley_chat *c, const json_val *obj);
static void take_live_notification(parley_chat *c, const json_val *obj);
static void report_unread(parley_chat *c, int64_t count);

static bool first_object(const parley_args *args, const msg_limits *l, json_val *obj)
{
    msg_error me;
    return msg_args_object(args->json, args->json_len, l, obj, &me) == MSG_OK;
}

static void on_event(parley_sock *s, const char *event, const parley_args *args, int64_t ack_id,
                     void *user)
{
    parley_chat *c = user;
    json_val obj;
    bool ok = first_object(args, &c->limits, &obj);
    if (!strcmp(event, MSG_EV_NOTIFICATION)) {
        if (ok) take_live_notification(c, &obj);
        /* Acknowledged once the application has it (and even when it is
         * malformed: asking again would bring the same bytes): the server
         * marks it delivered. */
        if (ack_id >= 0) parley_sock_ack(s, ack_id, "[]", NULL, 0);
        return;
    }
    if (!ok) return;
    msg_error me;
    if (!strcmp(event, MSG_EV_DISCONNECT_REASON)) {
        /* The disconnect that follows is not to be answered at once. */
        c->kicked = true;
        json_val m;
        char text[160] = "";
        if (json_object_get(&obj, "message", &m) && m.type == JSON_STRING) {
            long n = json_string_decode(&m, text, sizeof text - 1);
            text[n > 0 ? n : 0] = 0;
        }
        plog_warn("chat: the server is disconnecting us: %s", text);
        return;
    }
    if (!strcmp(event, MSG_EV_NEW_MESSAGE)) {
        take_message(c, &obj, true);
    } else if (!strcmp(event, MSG_EV_STATUS)) {
        msg_status st;
        if (msg_parse_status(&obj, &st, &me) != MSG_OK) return;
        conv *v = conv_get(c, st.conversation, true);
        if (!v) return;
        if (strcmp(st.user, c->user) != 0) peer_watermarks(c, v, st.delivered, st.read);
        if (c->o.on_receipt)
            c->o.on_receipt(c, st.conversation, st.user, st.delivered, st.read, c->o.user);
    } else if (!strcmp(event, MSG_EV_TYPING_OUT)) {
        msg_typing t;
        if (msg_parse_typing(&obj, true, &t, &me) != MSG_OK) return;
        if (c->o.on_typing) c->o.on_typing(c, t.conversation, t.user, t.start, c->o.user);
    } else if (!strcmp(event, MSG_EV_MEMBER_JOINED) || !strcmp(event, MSG_EV_MEMBER_LEFT)) {
        json_val rv, uv;
        char room[MSG_ROOM_MAX + 1], u[MSG_USER_MAX + 1];
        if (!json_object_get(&obj, "room", &rv) || !json_object_get(&obj, "user", &uv) ||
            rv.type != JSON_STRING || uv.type != JSON_STRING)
            return;
        long rn = json_string_decode(&rv, room, sizeof room - 1);
        long un = json_string_decode(&uv, u, sizeof u - 1);
        if (rn <= 0 || un <= 0) return;
        room[rn] = 0;
        u[un] = 0;
        if (c->o.on_member)
            c->o.on_member(c, room, u, !strcmp(event, MSG_EV_MEMBER_JOINED), c->o.user);
    } else if (!strcmp(event, MSG_EV_PRESENCE)) {
        take_presence(c, &obj);
    } else if (!strcmp(event, MSG_EV_UNREAD)) {
        json_val cv;
        int64_t n;
        if (json_object_get(&obj, "count", &cv) && json_int(&cv, &n) && n >= 0) report_unread(c, n);
    }
}

/* ---- life cycle ---- */

void parley_chat_opts_init_size(parley_chat_opts *out, size_t size)
{
    parley_chat_opts defaults, *o = &defaults;
    memset(o, 0, sizeof *o);
    o->size = sizeof *o;
    o->queue_max_count = 1000;
    o->queue_max_bytes = 8u << 20;
    o->auto_delivered = 1;
    o->typing_refresh_ms = 3000;
    o->max_tracked = 10000;
    o->reconnection_delay_ms = 1000;
    o->reconnection_delay_max_ms = 5000;
    o->auto_connect = 1;
    popts_give(out, size, o, sizeof *o);
}

static void chat_destroy(parley_chat *c)
{
    /* The client is gone: nothing will answer these any more. */
    while (c->pending) {
        pending *p = c->pending;
        pending_del(p);
        free(p);
    }
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&c->sent, &pos))) free(e->val);
    pmap_free(&c->sent);
    pos = 0;
    while ((e = pmap_next(&c->convs, &pos))) {
        conv *v = e->val;
        free(v->mine);
        free(v);
    }
    pmap_free(&c->convs);
    pos = 0;
    while ((e = pmap_next(&c->subs, &pos))) free(e->val);
    pmap_free(&c->subs);
    free(c->notif_live);
    free(c->url);
    free(c->path);
    free(c->user);
    free(c->queue_path);
    free(c->ca_file);
    free(c);
}

int parley_chat_new(const parley_chat_opts *o_in, parley_chat **out)
{
    if (!out) return PARLEY_EINVAL;
    *out = NULL;
    parley_chat_opts o_buf;
    if (!o_in || POPTS_TAKE(parley_chat_opts, parley_chat_opts_init, &o_buf, o_in, url) != 0)
        return PARLEY_EINVAL;
    const parley_chat_opts *o = &o_buf;
    if (!o || !o->url || !o->user_id || !msg_valid_user(o->user_id, strlen(o->user_id)))
        return PARLEY_EINVAL;
    parley_chat *c = pcalloc(1, sizeof *c);
    if (!c) return PARLEY_ENOMEM;
    c->o = *o;
    if (!c->o.max_tracked) c->o.max_tracked = 10000;
    if (!c->o.typing_refresh_ms) c->o.typing_refresh_ms = 3000;
    c->url = dupstr(o->url);
    c->path = dupstr(o->path);
    c->user = dupstr(o->user_id);
    c->queue_path = dupstr(o->queue_path);
    c->ca_file = dupstr(o->ca_file);
    if (!c->url || !c->user || (o->path && !c->path) || (o->queue_path && !c->queue_path) ||
        (o->ca_file && !c->ca_file)) {
        chat_destroy(c);
        return PARLEY_ENOMEM;
    }
    c->state = PARLEY_CHAT_OFFLINE;
    c->receipts.cb = flush_receipts;
    msg_limits_init(&c->limits);
    /* Answers carry whole messages: the server's text limit may be raised. */
    c->limits.max_text = 1u << 20;
    msg_limits_init(&c->send_limits);
    if (o->max_text_bytes) c->send_limits.max_text = o->max_text_bytes;

    parley_client_opts co;
    parley_client_opts_init(&co);
    co.url = c->url;
    if (c->path) co.path = c->path;
    if (o->transports) co.transports = o->transports;
    co.websocket_first = o->websocket_first;
    co.ca_file = c->ca_file;
    co.insecure = o->insecure;
    co.reconnection_delay_ms = o->reconnection_delay_ms;
    co.reconnection_delay_max_ms = o->reconnection_delay_max_ms;
    co.loop = o->loop;
    co.auto_connect = 0;
    co.on_event = on_client_event;
    co.user = c;
    int rc = parley_client_new(&co, &c->client);
    if (rc != 0) {
        chat_destroy(c);
        return rc;
    }
    c->loop = parley_client__loop(c->client);
    ptimer_init(&c->sync_timer, on_sync_timer);
    ptimer_init(&c->kick_timer, on_kick_timer);

    parley_sock_opts so;
    parley_sock_opts_init(&so);
    so.auth = auth_payload;
    so.on_connect = on_connect;
    so.on_disconnect = on_disconnect;
    so.on_connect_error = on_connect_error;
    so.on_send_status = on_send_status;
    so.send_retry = on_send_retry;
    so.user = c;
    so.queue_max_count = o->queue_max_count;
    so.queue_max_bytes = o->queue_max_bytes;
    so.queue_path = c->queue_path;
    so.auto_connect = 0;
    c->sock = parley_client_socket(c->client, MSG_NAMESPACE, &so);
    if (!c->sock) {
        /* Decided before chat_destroy frees c. */
        rc = c->queue_path ? PARLEY_EIO : PARLEY_ENOMEM;
        parley_client_free(c->client);
        chat_destroy(c);
        return rc;
    }
    if (parley_sock_on_any(c->sock, on_event, c) <= 0) {
        parley_client_free(c->client);
        chat_destroy(c);
        return PARLEY_ENOMEM;
    }
    *out = c;
    if (o->auto_connect && (rc = parley_chat_connect(c)) != 0) {
        parley_chat_free(c); /* an error leaves nothing behind */
        *out = NULL;
        return rc;
    }
    return 0;
}

static void do_unrefuse(void *arg)
{
    parley_chat *c = arg;
    if (c->state == PARLEY_CHAT_REFUSED) set_state(c, PARLEY_CHAT_CONNECTING, NULL);
}

int parley_chat_connect(parley_chat *c)
{
    if (!c) return PARLEY_EINVAL;
    int rc = ploop_call(c->loop, do_unrefuse, c);
    /* parley_sock_connect opens the connection when it is closed. */
    return rc ? rc : parley_sock_connect(c->sock);
}

int parley_chat_close(parley_chat *c)
{
    if (!c) return PARLEY_EINVAL;
    return parley_client_close(c->client);
}

static void stop_timers(void *arg)
{
    parley_chat *c = arg;
    c->freeing = true;
    ploop_defer_cancel(c->loop, &c->receipts);
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&c->convs, &pos))) {
        conv *v = e->val;
        ploop_timer_stop(c->loop, &v->typing_timer);
    }
    ploop_timer_stop(c->loop, &c->sync_timer);
    ploop_timer_stop(c->loop, &c->kick_timer);
}

void parley_chat_free(parley_chat *c)
{
    if (!c) return;
    ploop_call(c->loop, stop_timers, c);
    parley_client_free(c->client);
    chat_destroy(c);
}

typedef struct state_arg {
    parley_chat *c;
    parley_chat_state st;
} state_arg;

static void do_get_state(void *arg)
{
    state_arg *a = arg;
    a->st = a->c->state;
}

parley_chat_state parley_chat_get_state(parley_chat *c)
{
    state_arg a = {.c = c, .st = PARLEY_CHAT_OFFLINE};
    if (c) ploop_call(c->loop, do_get_state, &a);
    return a.st;
}

parley_client *parley_chat_client(parley_chat *c)
{
    return c ? c->client : NULL;
}

/* ---- sending ---- */

void parley_chat_send_opts_init_size(parley_chat_send_opts *out, size_t size)
{
    parley_chat_send_opts defaults, *o = &defaults;
    memset(o, 0, sizeof *o);
    o->size = sizeof *o;
    o->priority = PARLEY_PRIORITY_NORMAL;
    popts_give(out, size, o, sizeof *o);
}

static bool valid_id(const char *id)
{
    if (strlen(id) != ID_LEN || !strncmp(id, RECEIPT_PREFIX, 5)) return false;
    return msg_valid_client_id(id, ID_LEN);
}

/* The send_message object for o, validated as the server will. */
static int build_send(parley_chat *c, const parley_chat_send_opts *o, const char *client_id,
                      pbuf *out, parley_chat_error *err)
{
    int targets = (o->to != NULL) + (o->room != NULL) + (o->conversation != NULL);
    /* The server's codes (msg_parse_send): none is a missing field, two
     * are an invalid one. */
    if (targets == 0) {
        set_error(err, "missing_field", "to", "one of to, room or conversation is required");
        return PARLEY_EINVAL;
    }
    if (targets > 1) {
        set_error(err, "invalid_field", o->to ? "to" : "room",
                  "give only one of to, room and conversation");
        return PARLEY_EINVAL;
    }
    if (o->priority < PARLEY_PRIORITY_LOW || o->priority > PARLEY_PRIORITY_URGENT) {
        set_error(err, "invalid_field", "priority", "priority must be one of PARLEY_PRIORITY_*");
        return PARLEY_EINVAL;
    }
    const char *type = o->type ? o->type : "text";
    const char *key = o->to ? "to" : o->room ? "room" : "conversation";
    const char *target = o->to ? o->to : o->room ? o->room : o->conversation;
    int rc = pbuf_append_str(out, "[{\"client_id\":");
    if (rc == 0) rc = json_append_string(out, client_id, strlen(client_id));
    if (rc == 0) rc = pbuf_appendf(out, ",\"%s\":", key);
    if (rc == 0) rc = json_append_string(out, target, strlen(target));
    if (rc == 0) rc = pbuf_append_str(out, ",\"type\":");
    if (rc == 0) rc = json_append_string(out, type, strlen(type));
    if (rc == 0)
        rc = pbuf_appendf(
            out, ",\"priority\":\"%s\",\"content\":", msg_priority_name((msg_priority)o->priority));
    if (rc == 0) {
        if (o->content_json) {
            rc = pbuf_append_str(out, o->content_json);
        } else if (o->text) {
            rc = pbuf_append_str(out, "{\"text\":");
            if (rc == 0) rc = json_append_string(out, o->text, strlen(o->text));
            if (rc == 0) rc = pbuf_append(out, "}", 1);
        } else {
            rc = pbuf_append(out, "{}", 2);
        }
    }
    if (rc == 0) rc = pbuf_append(out, "}]", 2);
    if (rc == PARLEY_EINVAL) {
        set_error(err, "invalid_field", "", "a string is not valid UTF-8");
        return rc;
    }
    if (rc != 0) return rc;
    json_val obj;
    msg_error me;
    msg_send ms;
    if (msg_args_object((const char *)out->ptr, out->len, &c->send_limits, &obj, &me) != MSG_OK ||
        msg_parse_send(&obj, &c->send_limits, &ms, &me) != MSG_OK) {
        from_msg_error(err, &me);
        return PARLEY_EINVAL;
    }
    if (ms.target_kind == MSG_CONV_DM && !ms.target_is_conv && !strcmp(ms.target, c->user)) {
        set_error(err, "invalid_field", "to", "a direct message to oneself");
        return PARLEY_EINVAL;
    }
    return pbuf_append(out, "", 1); /* NUL for the C string API */
}

typedef struct send_arg {
    parley_chat *c;
    const parley_chat_send_opts *o;
    char *id_out;
    parley_chat_error *err;
    int rc;
} send_arg;

static void do_send(void *arg)
{
    send_arg *a = arg;
    parley_chat *c = a->c;
    const parley_chat_send_opts *o = a->o;
    char id[ID_LEN + 1];
    if (o->client_id) {
        if (!valid_id(o->client_id)) {
            set_error(a->err, "invalid_field", "client_id",
                      "client_id must be 36 characters of [A-Za-z0-9._:-]");
            a->rc = PARLEY_EINVAL;
            return;
        }
        memcpy(id, o->client_id, ID_LEN + 1);
    } else if (parley_new_id(id) != 0) {
        a->rc = PARLEY_EIO;
        return;
    }
    if (pmap_get(&c->sent, id, ID_LEN)) {
        set_error(a->err, "invalid_field", "client_id", "a message with this id is being sent");
        a->rc = PARLEY_EINVAL;
        return;
    }
    pbuf b = {0};
    int rc = build_send(c, o, id, &b, a->err);
    sent_msg *m = rc == 0 ? pcalloc(1, sizeof *m) : NULL;
    if (rc == 0 && !m) rc = PARLEY_ENOMEM;
    if (rc == 0) {
        memcpy(m->client_id, id, sizeof id);
        m->status = PARLEY_MSG_SENDING;
        m->fn = o->on_status;
        m->user = o->user;
        rc = pmap_put(&c->sent, m->client_id, ID_LEN, m);
        if (rc != 0) free(m);
    }
    if (rc == 0) {
        if (a->id_out) memcpy(a->id_out, id, sizeof id);
        rc = parley_sock_send(c->sock, MSG_EV_SEND, (const char *)b.ptr, o->priority, o->ttl_ms, id,
                              NULL, NULL);
        if (rc != 0) {
            if (rc == PARLEY_EFULL)
                set_error(a->err, "queue_full", "", "the outbound queue is full");
            sent_forget(c, m);
        } else if (m == pmap_get(&c->sent, id, ID_LEN) && m->status == PARLEY_MSG_SENDING) {
            report(c, m, NULL, false); /* SENDING */
        }
    }
    pbuf_free(&b);
    a->rc = rc;
}

int parley_chat_send(parley_chat *c, const parley_chat_send_opts *o_in, char client_id_out[37],
                     parley_chat_error *err)
{
    parley_chat_error scratch;
    if (!err) err = &scratch;
    set_error(err, "", "", "");
    parley_chat_send_opts o_buf;
    if (!c || !o_in ||
        POPTS_TAKE(parley_chat_send_opts, parley_chat_send_opts_init, &o_buf, o_in, to) != 0)
        return PARLEY_EINVAL;
    const parley_chat_send_opts *o = &o_buf;
    send_arg a = {.c = c, .o = o, .id_out = client_id_out, .err = err};
    int rc = ploop_call(c->loop, do_send, &a);
    return rc ? rc : a.rc;
}

int parley_chat_send_text(parley_chat *c, const char *to_user, const char *text,
                          char client_id_out[37])
{
    parley_chat_send_opts o;
    parley_chat_send_opts_init(&o);
    o.to = to_user;
    o.text = text;
    return parley_chat_send(c, &o, client_id_out, NULL);
}

/* ---- receipts, typing, seqs ---- */

typedef struct conv_arg {
    parley_chat *c;
    const char *conv;
    int64_t seq;
    int flag;
    int rc;
} conv_arg;

static void do_mark(void *arg)
{
    conv_arg *a = arg;
    parley_chat *c = a->c;
    conv *v = conv_get(c, a->conv, true);
    if (!v || a->seq <= 0) {
        a->rc = PARLEY_EINVAL;
        return;
    }
    if (a->flag) { /* read */
        if (a->seq <= v->read_sent) return;
        a->rc = send_receipt(c, v->id, MSG_READ, a->seq);
        if (a->rc == 0) {
            v->read_sent = a->seq;
            if (a->seq > v->delivered_sent) v->delivered_sent = v->delivered_want = a->seq;
        }
    } else {
        want_delivered(c, v, a->seq);
    }
}

int parley_chat_mark_read(parley_chat *c, const char *conversation, int64_t seq)
{
    if (!c || !conversation) return PARLEY_EINVAL;
    conv_arg a = {.c = c, .conv = conversation, .seq = seq, .flag = 1};
    int rc = ploop_call(c->loop, do_mark, &a);
    return rc ? rc : a.rc;
}

int parley_chat_mark_delivered(parley_chat *c, const char *conversation, int64_t seq)
{
    if (!c || !conversation) return PARLEY_EINVAL;
    conv_arg a = {.c = c, .conv = conversation, .seq = seq, .flag = 0};
    int rc = ploop_call(c->loop, do_mark, &a);
    return rc ? rc : a.rc;
}

static int emit_typing(parley_chat *c, conv *v, bool start)
{
    msg_typing t;
    memset(&t, 0, sizeof t);
    snprintf(t.conversation, sizeof t.conversation, "%s", v->id);
    t.start = start;
    pbuf b = {0};
    int rc = pbuf_append(&b, "[", 1);
    if (rc == 0) rc = msg_encode_typing(&b, &t);
    if (rc == 0) rc = pbuf_append(&b, "]", 2);
    /* Volatile: a typing state is only worth something now. */
    if (rc == 0)
        rc = parley_sock_emit_volatile(c->sock, MSG_EV_TYPING, (const char *)b.ptr, NULL, 0);
    pbuf_free(&b);
    return rc;
}

static void on_typing_timer(ptimer *t)
{
    conv *v = PARLEY_CONTAINER_OF(t, conv, typing_timer);
    parley_chat *c = v->chat;
    if (!v->typing) return;
    emit_typing(c, v, true);
    ploop_timer_start(c->loop, &v->typing_timer, c->o.typing_refresh_ms);
}

static void do_typing(void *arg)
{
    conv_arg *a = arg;
    parley_chat *c = a->c;
    conv *v = conv_get(c, a->conv, true);
    if (!v) {
        a->rc = PARLEY_EINVAL;
        return;
    }
    bool on = a->flag != 0;
    if (on == v->typing) {
        return; /* the timer refreshes it */
    }
    v->typing = on;
    if (on)
        ploop_timer_start(c->loop, &v->typing_timer, c->o.typing_refresh_ms);
    else
        ploop_timer_stop(c->loop, &v->typing_timer);
    a->rc = emit_typing(c, v, on);
}

int parley_chat_typing(parley_chat *c, const char *conversation, int typing)
{
    if (!c || !conversation) return PARLEY_EINVAL;
    conv_arg a = {.c = c, .conv = conversation, .flag = typing};
    int rc = ploop_call(c->loop, do_typing, &a);
    return rc ? rc : a.rc;
}

static void do_last_seq(void *arg)
{
    conv_arg *a = arg;
    conv *v = conv_get(a->c, a->conv, a->flag != 0);
    if (a->flag) {
        if (!v || a->seq < 0)
            a->rc = PARLEY_EINVAL;
        else
            v->last_seq = a->seq;
    } else {
        a->seq = v ? v->last_seq : 0;
    }
}

int64_t parley_chat_last_seq(parley_chat *c, const char *conversation)
{
    if (!c || !conversation) return 0;
    conv_arg a = {.c = c, .conv = conversation};
    if (ploop_call(c->loop, do_last_seq, &a) != 0) return 0;
    return a.seq;
}

int parley_chat_set_last_seq(parley_chat *c, const char *conversation, int64_t seq)
{
    if (!c || !conversation) return PARLEY_EINVAL;
    conv_arg a = {.c = c, .conv = conversation, .seq = seq, .flag = 1};
    int rc = ploop_call(c->loop, do_last_seq, &a);
    return rc ? rc : a.rc;
}

int parley_chat_dm_id(const char *a, const char *b, char out[133])
{
    if (!a || !b || !msg_valid_user(a, strlen(a)) || !msg_valid_user(b, strlen(b)) || !strcmp(a, b))
        return PARLEY_EINVAL;
    msg_conv cv;
    msg_conv_dm(&cv, a, b);
    snprintf(out, 133, "%s", cv.id);
    return 0;
}

/* ---- requests with answers ---- */

typedef struct req {
    pending link; /* first: chat_destroy frees it through the list */
    parley_chat *c;
    parley_chat_history_fn hist;
    parley_chat_room_fn room_fn;
    parley_chat_upload_fn up;
    parley_chat_presence_fn pres_fn;
    void *user;
    char room[MSG_ROOM_MAX + 1];
    unsigned gen;   /* presence_set: c->pres_gen when sent; notifications: c->sync_gen */
    bool with_text; /* presence_set: carried the text */
    bool with_inv;  /* presence_set: carried invisible */
    parley_chat_prefs_fn prefs_fn;
    parley_chat_notify_fn notify_fn;
    int64_t *ids; /* notifications_read: the ids after the struct (NULL: all) */
    size_t nids;
} req;

/* The answer object, or an error in e (err as documented). */
static int answer_object(parley_chat *c, int err, const parley_args *args, json_val *obj,
                         parley_chat_error *e)
{
    set_error(e, "", "", "");
    if (err == PARLEY_ETIMEDOUT) {
        set_error(e, "timeout", "", "no answer from the server in time");
        return err;
    }
    if (err) {
        set_error(e, "disconnected", "", "the connection closed before the answer");
        return err;
    }
    msg_error me;
    bool ok = false;
    if (msg_args_object(args->json, args->json_len, &c->limits, obj, &me) != MSG_OK ||
        !msg_parse_ack(obj, &ok, &me)) {
        set_error(e, "bad_request", "", "the server's answer is not an acknowledgement");
        return PARLEY_EPROTO;
    }
    if (!ok) {
        from_msg_error(e, &me);
        return PARLEY_EPROTO;
    }
    return 0;
}

/* A request's answer arrived (or failed): it is no longer pending. */
static int request_answer(req *r, int err, const parley_args *args, json_val *obj,
                          parley_chat_error *e)
{
    pending_del(&r->link);
    return answer_object(r->c, err, args, obj, e);
}

static void on_history(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    req *r = user;
    parley_chat *c = r->c;
    json_val obj, list, mv;
    parley_chat_error e;
    int rc = request_answer(r, err, args, &obj, &e);
    size_t n = 0;
    msg_message *msgs = NULL;
    parley_chat_message *views = NULL;
    char **texts = NULL;
    bool more = false;
    if (rc == 0 && json_object_get(&obj, "messages", &list) && list.type == JSON_ARRAY) {
        size_t cap = json_count(&list);
        msgs = cap ? calloc(cap, sizeof *msgs) : NULL;
        views = cap ? calloc(cap, sizeof *views) : NULL;
        texts = cap ? calloc(cap, sizeof *texts) : NULL;
        if (cap && (!msgs || !views || !texts)) {
            rc = PARLEY_ENOMEM;
            set_error(&e, "internal", "", "out of memory");
        } else {
            json_iter it;
            json_iter_init(&it, &list);
            msg_error me;
            while (json_array_next(&it, &mv) && n < cap) {
                if (msg_parse_message(&mv, &c->limits, &msgs[n], &me) != MSG_OK) continue;
                msg_content *ct = &msgs[n].content;
                size_t tc = ct->text.len + ct->caption.len + ct->name.len + ct->label.len + 1;
                texts[n] = malloc(tc);
                if (!texts[n]) continue;
                message_view(c, &msgs[n], &mv, &views[n], texts[n], tc);
                n++;
            }
        }
        json_val mo;
        more = json_object_get(&obj, "more", &mo) && mo.type == JSON_TRUE;
    }
    if (r->hist) r->hist(c, rc, rc ? &e : NULL, views, n, more, r->user);
    for (size_t i = 0; texts && i < n; i++) free(texts[i]);
    free(texts);
    free(views);
    free(msgs);
    free(r);
}

typedef struct request_arg {
    parley_chat *c;
    const char *event, *args;
    const parley_bin *bins;
    size_t nbins;
    parley_ack_result_fn fn;
    req *r;
    int rc;
} request_arg;

/* Emits a request whose answer goes to fn(r). On the loop thread: the
 * list of pending requests is the loop's. */
static int emit_request(parley_chat *c, const char *event, const char *args, const parley_bin *bins,
                        size_t nbins, parley_ack_result_fn fn, req *r)
{
    pending_add(c, &r->link);
    int rc = parley_sock_emit_ack(c->sock, event, args, bins, nbins, REQUEST_TIMEOUT_MS, fn, r);
    if (rc != 0) pending_del(&r->link);
    return rc;
}

static void do_request(void *arg)
{
    request_arg *a = arg;
    a->rc = emit_request(a->c, a->event, a->args, a->bins, a->nbins, a->fn, a->r);
}

static int request(parley_chat *c, const char *event, const char *args, const parley_bin *bins,
                   size_t nbins, parley_ack_result_fn fn, req *r)
{
    request_arg a = {
        .c = c, .event = event, .args = args, .bins = bins, .nbins = nbins, .fn = fn, .r = r};
    int rc = ploop_call(c->loop, do_request, &a);
    if (rc == 0) rc = a.rc;
    if (rc != 0) free(r);
    return rc;
}

int parley_chat_history(parley_chat *c, const char *conversation, int64_t before, unsigned limit,
                        parley_chat_history_fn fn, void *user)
{
    if (!c || !conversation || before < 0 || limit > MSG_HISTORY_MAX_LIMIT) return PARLEY_EINVAL;
    msg_conv cv;
    if (!msg_conv_parse(&cv, conversation, strlen(conversation))) return PARLEY_EINVAL;
    char args[MSG_CONV_MAX + 96];
    int len = snprintf(args, sizeof args, "[{\"conversation\":\"%s\"", conversation);
    if (before > 0)
        len +=
            snprintf(args + len, sizeof args - (size_t)len, ",\"before\":%lld", (long long)before);
    if (limit > 0) len += snprintf(args + len, sizeof args - (size_t)len, ",\"limit\":%u", limit);
    snprintf(args + len, sizeof args - (size_t)len, "}]");
    req *r = pcalloc(1, sizeof *r);
    if (!r) return PARLEY_ENOMEM;
    r->c = c;
    r->hist = fn;
    r->user = user;
    return request(c, MSG_EV_HISTORY, args, NULL, 0, on_history, r);
}

static void on_room(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    req *r = user;
    parley_chat *c = r->c;
    json_val obj, list, mv;
    parley_chat_error e;
    int rc = request_answer(r, err, args, &obj, &e);
    char **members = NULL;
    size_t n = 0;
    if (rc == 0 && json_object_get(&obj, "members", &list) && list.type == JSON_ARRAY) {
        size_t cap = json_count(&list);
        members = cap ? calloc(cap, sizeof *members) : NULL;
        json_iter it;
        json_iter_init(&it, &list);
        while (members && json_array_next(&it, &mv) && n < cap) {
            if (mv.type != JSON_STRING) continue;
            char *u = malloc(mv.len);
            if (!u) continue;
            long k = json_string_decode(&mv, u, mv.len - 1);
            u[k > 0 ? k : 0] = 0;
            members[n++] = u;
        }
    }
    if (r->room_fn)
        r->room_fn(c, rc, rc ? &e : NULL, r->room, (const char *const *)members, n, r->user);
    for (size_t i = 0; i < n; i++) free(members[i]);
    free(members);
    free(r);
}

/* A request whose one argument is {"room": room}. */
static int room_call(parley_chat *c, const char *event, const char *room,
                     parley_ack_result_fn on_answer, req *r)
{
    if (!c || !room || !msg_valid_room(room, strlen(room))) {
        free(r);
        return PARLEY_EINVAL;
    }
    r->c = c;
    snprintf(r->room, sizeof r->room, "%s", room);
    char args[MSG_ROOM_MAX + 32];
    snprintf(args, sizeof args, "[{\"room\":\"%s\"}]", room);
    return request(c, event, args, NULL, 0, on_answer, r);
}

static int room_request(parley_chat *c, const char *event, const char *room, parley_chat_room_fn fn,
                        void *user)
{
    req *r = pcalloc(1, sizeof *r);
    if (!r) return PARLEY_ENOMEM;
    r->room_fn = fn;
    r->user = user;
    return room_call(c, event, room, on_room, r);
}

int parley_chat_join(parley_chat *c, const char *room, parley_chat_room_fn fn, void *user)
{
    return room_request(c, MSG_EV_JOIN_ROOM, room, fn, user);
}

int parley_chat_leave(parley_chat *c, const char *room, parley_chat_room_fn fn, void *user)
{
    return room_request(c, MSG_EV_LEAVE_ROOM, room, fn, user);
}

int parley_chat_members(parley_chat *c, const char *room, parley_chat_room_fn fn, void *user)
{
    return room_request(c, MSG_EV_ROOM_MEMBERS, room, fn, user);
}

static void on_upload(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    req *r = user;
    parley_chat *c = r->c;
    json_val obj, media, idv, mimev, sizev;
    parley_chat_error e;
    int rc = request_answer(r, err, args, &obj, &e);
    char id[MSG_MEDIA_ID_LEN + 1] = "", mime[MSG_MIME_MAX + 1] = "";
    int64_t size = -1;
    if (rc == 0) {
        if (!json_object_get(&obj, "media", &media) || media.type != JSON_OBJECT ||
            !json_object_get(&media, "id", &idv) || idv.type != JSON_STRING ||
            idv.len != MSG_MEDIA_ID_LEN + 2) {
            rc = PARLEY_EPROTO;
            set_error(&e, "bad_request", "", "the server's answer has no media id");
        } else {
            memcpy(id, idv.p + 1, MSG_MEDIA_ID_LEN);
            if (json_object_get(&media, "mime", &mimev) && mimev.type == JSON_STRING) {
                long k = json_string_decode(&mimev, mime, sizeof mime - 1);
                mime[k > 0 ? k : 0] = 0;
            }
            if (json_object_get(&media, "size", &sizev)) json_int(&sizev, &size);
        }
    }
    if (r->up) r->up(c, rc, rc ? &e : NULL, rc ? NULL : id, mime, size, r->user);
    free(r);
}

int parley_chat_upload(parley_chat *c, const char *mime, const void *data, size_t len,
                       parley_chat_upload_fn fn, void *user)
{
    if (!c || !mime || (!data && len) || !msg_valid_mime(mime, strlen(mime))) return PARLEY_EINVAL;
    char args[MSG_MIME_MAX + 96];
    snprintf(args, sizeof args, "[{\"mime\":\"%s\",\"data\":{\"_placeholder\":true,\"num\":0}}]",
             mime);
    parley_bin bin = {.data = data, .len = len};
    req *r = pcalloc(1, sizeof *r);
    if (!r) return PARLEY_ENOMEM;
    r->c = c;
    r->up = fn;
    r->user = user;
    return request(c, MSG_EV_UPLOAD_MEDIA, args, &bin, 1, on_upload, r);
}

/* ---- presence ---- */

static void presence_view(const msg_presence *mp, parley_chat_presence *out)
{
    out->user = mp->user;
    out->status = (parley_presence)mp->status;
    out->text = mp->text;
    out->last_seen = mp->last_seen;
    out->devices = mp->devices;
    out->invisible = mp->invisible;
}

/* A Presence object from the server (event or answer) to on_presence;
 * false when it is malformed. */
static bool parse_presence(parley_chat *c, const json_val *obj, msg_presence *mp)
{
    msg_error me;
    if (msg_parse_presence(obj, mp, &me) != MSG_OK) {
        log_bad(c, "presence", me.message);
        return false;
    }
    if (c->o.on_presence) {
        parley_chat_presence p;
        presence_view(mp, &p);
        c->o.on_presence(c, &p, c->o.user);
    }
    return true;
}

static void take_presence(parley_chat *c, const json_val *obj)
{
    msg_presence mp;
    parse_presence(c, obj, &mp);
}

/* Every Presence of the answer's "presences" to on_presence; the parsed
 * ones into a malloc'ed array when out is not NULL (*n: how many). */
static int take_presences(parley_chat *c, const json_val *ans, msg_presence **out, size_t *n)
{
    json_val list, pv;
    *n = 0;
    if (out) *out = NULL;
    if (!json_object_get(ans, "presences", &list) || list.type != JSON_ARRAY) return 0;
    size_t cap = json_count(&list);
    msg_presence one, *all = out && cap ? calloc(cap, sizeof *all) : NULL;
    if (out && cap && !all) return PARLEY_ENOMEM;
    json_iter it;
    json_iter_init(&it, &list);
    while (json_array_next(&it, &pv) && *n < cap)
        if (parse_presence(c, &pv, all ? &all[*n] : &one)) (*n)++;
    if (out) *out = all;
    return 0;
}

static void on_presence_set(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    req *r = user;
    parley_chat *c = r->c;
    json_val obj, pv;
    parley_chat_error e;
    int rc = request_answer(r, err, args, &obj, &e);
    if (rc == 0) {
        /* The text is the server's now: a reconnection must not send it
         * again over what another device may set meanwhile. A later set
         * (gen moved on) still carries it until its own answer. */
        if (r->with_text && r->gen == c->pres_gen) c->pres_text_pending = false;
        if (r->with_inv && r->gen == c->pres_gen) c->pres_inv_pending = false;
        if (json_object_get(&obj, "presence", &pv)) take_presence(c, &pv);
    } else if (rc == PARLEY_EPROTO) {
        plog_warn("chat: presence_set refused: %s (%s)", e.code, e.message);
    }
    /* Disconnected or timed out: the next connection sends it again. */
    free(r);
}

static void send_presence_set(parley_chat *c)
{
    /* The status only once the application chose one (the text comes
     * with it); invisible alone is a complete request. */
    pbuf b = {0};
    int rc = pbuf_append_str(&b, "[{");
    if (rc == 0 && c->pres_chosen)
        rc = pbuf_appendf(&b, "\"status\":\"%s\"", msg_pstatus_name(c->pres_status));
    if (rc == 0 && c->pres_chosen && c->pres_text_pending) {
        rc = pbuf_append_str(&b, ",\"text\":");
        if (rc == 0) rc = json_append_string(&b, c->pres_text, strlen(c->pres_text));
    }
    if (rc == 0 && c->pres_inv_pending)
        rc = pbuf_appendf(&b, "%s\"invisible\":%s", c->pres_chosen ? "," : "",
                          c->pres_invisible ? "true" : "false");
    if (rc == 0) rc = pbuf_append(&b, "}]", 3);
    req *r = rc == 0 ? pcalloc(1, sizeof *r) : NULL;
    if (r) {
        r->c = c;
        r->gen = c->pres_gen;
        r->with_text = c->pres_chosen && c->pres_text_pending;
        r->with_inv = c->pres_inv_pending;
        rc = emit_request(c, MSG_EV_PRESENCE_SET, (const char *)b.ptr, NULL, 0, on_presence_set, r);
        if (rc != 0) free(r);
    }
    if (!r || rc != 0) plog_warn("chat: cannot send presence_set (%d)", rc ? rc : PARLEY_ENOMEM);
    pbuf_free(&b);
}

static void on_presence_sub(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    req *r = user;
    json_val obj;
    parley_chat_error e;
    int rc = request_answer(r, err, args, &obj, &e);
    size_t n;
    if (rc == 0)
        take_presences(r->c, &obj, NULL, &n);
    else if (rc == PARLEY_EPROTO)
        plog_warn("chat: presence_subscribe refused: %s (%s)", e.code, e.message);
    free(r);
}

/* presence_subscribe / presence_unsubscribe for users[0, n), in requests
 * of at most MSG_PRESENCE_USERS_MAX (the server's limit per request). */
static int send_presence_users(parley_chat *c, const char *event, const char *const *users,
                               size_t n)
{
    bool sub = !strcmp(event, MSG_EV_PRESENCE_SUB);
    for (size_t at = 0; at < n; at += MSG_PRESENCE_USERS_MAX) {
        size_t k = n - at < MSG_PRESENCE_USERS_MAX ? n - at : MSG_PRESENCE_USERS_MAX;
        pbuf b = {0};
        int rc = pbuf_append_str(&b, "[{\"users\":[");
        for (size_t i = 0; rc == 0 && i < k; i++) {
            if (i) rc = pbuf_append(&b, ",", 1);
            if (rc == 0) rc = json_append_string(&b, users[at + i], strlen(users[at + i]));
        }
        if (rc == 0) rc = pbuf_append(&b, "]}]", 4);
        if (rc == 0 && sub) {
            req *r = pcalloc(1, sizeof *r);
            if (!r) rc = PARLEY_ENOMEM;
            if (r) {
                r->c = c;
                rc = emit_request(c, event, (const char *)b.ptr, NULL, 0, on_presence_sub, r);
                if (rc != 0) free(r);
            }
        } else if (rc == 0) {
            /* Nothing to learn from the answer of an unsubscribe. */
            rc = parley_sock_emit(c->sock, event, (const char *)b.ptr, NULL, 0);
        }
        pbuf_free(&b);
        if (rc != 0) return rc;
    }
    return 0;
}

static void presence_on_connect(parley_chat *c)
{
    /* A new socket starts online, so only another status (or a text the
     * server has not acknowledged) needs saying. */
    if ((c->pres_chosen && (c->pres_status != MSG_PS_ONLINE || c->pres_text_pending)) ||
        c->pres_inv_pending)
        send_presence_set(c);
    size_t n = c->subs.n;
    if (!n) return;
    const char **users = malloc(n * sizeof *users);
    if (!users) {
        plog_warn("chat: out of memory renewing presence subscriptions");
        return;
    }
    size_t pos = 0, k = 0;
    pmap_entry *e;
    while ((e = pmap_next(&c->subs, &pos)) && k < n) users[k++] = e->val;
    int rc = send_presence_users(c, MSG_EV_PRESENCE_SUB, users, k);
    if (rc != 0) plog_warn("chat: cannot renew presence subscriptions (%d)", rc);
    free(users);
}

typedef struct pres_arg {
    parley_chat *c;
    msg_pstatus status;
    const char *text;
    const char *const *users;
    size_t n;
    bool sub;
    int rc;
} pres_arg;

static void do_presence_set(void *arg)
{
    pres_arg *a = arg;
    parley_chat *c = a->c;
    c->pres_chosen = true;
    c->pres_status = a->status;
    c->pres_gen++;
    if (a->text) {
        snprintf(c->pres_text, sizeof c->pres_text, "%s", a->text);
        c->pres_text_pending = true;
    }
    if (parley_sock_connected(c->sock)) send_presence_set(c);
}

int parley_chat_presence_set(parley_chat *c, parley_presence status, const char *text)
{
    if (!c || status < PARLEY_PRESENCE_BUSY || status > PARLEY_PRESENCE_ONLINE)
        return PARLEY_EINVAL;
    if (text) {
        /* Checked as the server will (length, UTF-8, control characters),
         * so that a refusal cannot come back on every reconnection. */
        pbuf b = {0};
        int rc = pbuf_append_str(&b, "{\"status\":\"online\",\"text\":");
        if (rc == 0) rc = json_append_string(&b, text, strlen(text));
        if (rc == 0) rc = pbuf_append(&b, "}", 1);
        json_val obj;
        msg_pstatus st;
        bool has_text;
        char decoded[MSG_PRESENCE_TEXT_MAX + 1];
        msg_error me;
        bool ok = rc == 0 && json_parse((const char *)b.ptr, b.len, 4, &obj, NULL) == 0 &&
                  msg_parse_presence_set(&obj, &st, &has_text, decoded, NULL, &me) == MSG_OK;
        pbuf_free(&b);
        if (!ok) return rc == PARLEY_ENOMEM ? rc : PARLEY_EINVAL;
    }
    pres_arg a = {.c = c, .status = (msg_pstatus)status, .text = text};
    return ploop_call(c->loop, do_presence_set, &a);
}

static void do_presence_invisible(void *arg)
{
    pres_arg *a = arg;
    parley_chat *c = a->c;
    c->pres_invisible = a->sub;
    c->pres_inv_pending = true;
    c->pres_gen++;
    if (parley_sock_connected(c->sock)) send_presence_set(c);
}

int parley_chat_presence_invisible(parley_chat *c, int on)
{
    if (!c) return PARLEY_EINVAL;
    pres_arg a = {.c = c, .sub = on != 0};
    return ploop_call(c->loop, do_presence_invisible, &a);
}

static void do_presence_users(void *arg)
{
    pres_arg *a = arg;
    parley_chat *c = a->c;
    if (a->sub) {
        size_t fresh = 0;
        for (size_t i = 0; i < a->n; i++) {
            bool repeat = pmap_get(&c->subs, a->users[i], strlen(a->users[i])) != NULL;
            for (size_t j = 0; j < i && !repeat; j++) repeat = !strcmp(a->users[i], a->users[j]);
            fresh += !repeat;
        }
        if (c->subs.n + fresh > MSG_PRESENCE_SUBS_MAX) {
            a->rc = PARLEY_EFULL;
            return;
        }
        for (size_t i = 0; i < a->n; i++) {
            size_t len = strlen(a->users[i]);
            if (pmap_get(&c->subs, a->users[i], len)) continue;
            char *u = strdup(a->users[i]);
            if (!u || pmap_put(&c->subs, u, len, u) != 0) {
                free(u);
                a->rc = PARLEY_ENOMEM;
                return;
            }
        }
    } else {
        for (size_t i = 0; i < a->n; i++)
            free(pmap_del(&c->subs, a->users[i], strlen(a->users[i])));
    }
    /* Offline, the next connection subscribes to the whole set. */
    if (parley_sock_connected(c->sock))
        a->rc = send_presence_users(c, a->sub ? MSG_EV_PRESENCE_SUB : MSG_EV_PRESENCE_UNSUB,
                                    a->users, a->n);
}

static int presence_users(parley_chat *c, const char *const *users, size_t n, bool sub)
{
    if (!c || !users || n == 0) return PARLEY_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!users[i] || !msg_valid_user(users[i], strlen(users[i]))) return PARLEY_EINVAL;
    pres_arg a = {.c = c, .users = users, .n = n, .sub = sub};
    int rc = ploop_call(c->loop, do_presence_users, &a);
    return rc ? rc : a.rc;
}

int parley_chat_presence_subscribe(parley_chat *c, const char *const *users, size_t n)
{
    return presence_users(c, users, n, true);
}

int parley_chat_presence_unsubscribe(parley_chat *c, const char *const *users, size_t n)
{
    return presence_users(c, users, n, false);
}

static void on_presence_room(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    req *r = user;
    parley_chat *c = r->c;
    json_val obj;
    parley_chat_error e;
    int rc = request_answer(r, err, args, &obj, &e);
    msg_presence *all = NULL;
    parley_chat_presence *views = NULL;
    size_t n = 0;
    if (rc == 0 && take_presences(c, &obj, &all, &n) != 0) {
        rc = PARLEY_ENOMEM;
        set_error(&e, "internal", "", "out of memory");
    }
    if (rc == 0 && n) {
        views = calloc(n, sizeof *views);
        if (!views) {
            rc = PARLEY_ENOMEM;
            set_error(&e, "internal", "", "out of memory");
        }
        for (size_t i = 0; views && i < n; i++) presence_view(&all[i], &views[i]);
    }
    if (r->pres_fn)
        r->pres_fn(c, rc, rc ? &e : NULL, r->room, rc ? NULL : views, rc ? 0 : n, r->user);
    free(views);
    free(all);
    free(r);
}

int parley_chat_presence_room(parley_chat *c, const char *room, parley_chat_presence_fn fn,
                              void *user)
{
    req *r = pcalloc(1, sizeof *r);
    if (!r) return PARLEY_ENOMEM;
    r->pres_fn = fn;
    r->user = user;
    return room_call(c, MSG_EV_PRESENCE_ROOM, room, on_presence_room, r);
}

/* ---- notifications ---- */

static void report_unread(parley_chat *c, int64_t count)
{
    if (c->unread_known && c->unread == count) return;
    c->unread_known = true;
    c->unread = count;
    if (c->o.on_unread) c->o.on_unread(c, count, c->o.user);
}

/* The decoded string member name of obj into the arena at *p; NULL when
 * absent or null (or not a string). */
static const char *arena_string(const json_val *obj, const char *name, char **p)
{
    json_val v;
    if (!json_object_get(obj, name, &v) || v.type != JSON_STRING) return NULL;
    long n = json_string_decode(&v, *p, v.len - 1);
    if (n < 0) return NULL;
    char *out = *p;
    out[n] = 0;
    *p += n + 1;
    return out;
}

/* A Notification object into a view whose strings live in *arena (the
 * caller frees it). Lenient like the other server objects: unknown
 * members are skipped; false when a required one is missing or wrong. */
static bool parse_notification(const json_val *obj, parley_chat_notification *n, char **arena)
{
    memset(n, 0, sizeof *n);
    *arena = NULL;
    if (obj->type != JSON_OBJECT) return false;
    /* Decoded strings are shorter than their JSON (quotes, escapes), so
     * the object's length bounds them all, NULs included. */
    char *p = *arena = malloc(obj->len + 1);
    if (!p) return false;
    json_val v;
    n->type = arena_string(obj, "type", &p);
    n->priority = arena_string(obj, "priority", &p);
    n->title = arena_string(obj, "title", &p);
    n->body = arena_string(obj, "body", &p);
    n->image = arena_string(obj, "image", &p);
    n->from = arena_string(obj, "from", &p);
    n->dedupe_key = arena_string(obj, "dedupe_key", &p);
    if (!n->body) n->body = "";
    n->actions_json = "[]";
    n->actions_len = 2;
    if (json_object_get(obj, "actions", &v) && v.type == JSON_ARRAY) {
        n->actions_json = v.p;
        n->actions_len = v.len;
    }
    if (json_object_get(obj, "expires", &v) && v.type != JSON_NULL && !json_int(&v, &n->expires))
        n->expires = 0;
    n->delivered = json_object_get(obj, "delivered", &v) && v.type == JSON_TRUE;
    n->read = json_object_get(obj, "read", &v) && v.type == JSON_TRUE;
    n->json = obj->p;
    n->json_len = obj->len;
    bool ok = json_object_get(obj, "id", &v) && json_int(&v, &n->id) && n->id > 0 &&
              json_object_get(obj, "created", &v) && json_int(&v, &n->created) && n->type &&
              n->priority && n->title;
    if (!ok) {
        free(*arena);
        *arena = NULL;
    }
    return ok;
}

/* Index of id in the live list, or where it goes (*found says which). */
static size_t live_slot(const parley_chat *c, int64_t id, bool *found)
{
    size_t lo = 0, hi = c->nlive;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c->notif_live[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < c->nlive && c->notif_live[lo] == id;
    return lo;
}

static void take_live_notification(parley_chat *c, const json_val *obj)
{
    parley_chat_notification n;
    char *arena;
    if (!parse_notification(obj, &n, &arena)) {
        log_bad(c, "notification", NULL);
        return;
    }
    bool found;
    size_t at = live_slot(c, n.id, &found);
    if (n.id > c->notif_since && !found) {
        /* Remembered so that the next sync, which starts below it, does
         * not report it again. */
        if (c->nlive == NOTIF_LIVE_MAX) {
            memmove(c->notif_live, c->notif_live + 1, (c->nlive - 1) * sizeof *c->notif_live);
            c->nlive--;
            at = at ? at - 1 : 0;
        }
        if (c->nlive == c->caplive) {
            size_t cap = c->caplive ? c->caplive * 2 : 16;
            int64_t *p = realloc(c->notif_live, cap * sizeof *p);
            if (p) {
                c->notif_live = p;
                c->caplive = cap;
            }
        }
        if (c->nlive < c->caplive) {
            memmove(c->notif_live + at + 1, c->notif_live + at,
                    (c->nlive - at) * sizeof *c->notif_live);
            c->notif_live[at] = n.id;
            c->nlive++;
        }
        n.live = 1;
        if (c->o.on_notification) c->o.on_notification(c, &n, c->o.user);
    }
    free(arena);
}

static void send_notif_sync(parley_chat *c);

static void on_notif_sync(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    req *r = user;
    parley_chat *c = r->c;
    json_val obj, list, nv;
    parley_chat_error e;
    int rc = request_answer(r, err, args, &obj, &e);
    bool stale = r->gen != c->sync_gen;
    free(r);
    if (stale) return; /* an earlier connection's: this one has its own */
    c->notif_syncing = false;
    if (rc == PARLEY_EPROTO && !strcmp(e.code, "unknown_event")) {
        /* A server without notifications: nothing to sync, not an error. */
        plog_debug("notifications: not offered by the server");
        c->notif_off = true;
        return;
    }
    if (rc == PARLEY_ETIMEDOUT) {
        send_notif_sync(c);
        return;
    }
    if (rc != 0) {
        if (rc == PARLEY_EPROTO)
            plog_warn("chat: notifications_sync refused: %s (%s)", e.code, e.message);
        return; /* disconnected: the next connection syncs */
    }
    int64_t top = c->notif_since;
    if (json_object_get(&obj, "notifications", &list) && list.type == JSON_ARRAY) {
        json_iter it;
        json_iter_init(&it, &list);
        while (json_array_next(&it, &nv)) {
            parley_chat_notification n;
            char *arena;
            if (!parse_notification(&nv, &n, &arena)) {
                log_bad(c, "notification", NULL);
                continue;
            }
            bool found;
            live_slot(c, n.id, &found);
            if (n.id > c->notif_since && !found && c->o.on_notification)
                c->o.on_notification(c, &n, c->o.user);
            if (n.id > top) top = n.id;
            free(arena);
        }
    }
    /* Live ids the sync has passed are never asked for again. */
    c->notif_since = top;
    size_t drop = 0;
    while (drop < c->nlive && c->notif_live[drop] <= top) drop++;
    if (drop) {
        memmove(c->notif_live, c->notif_live + drop, (c->nlive - drop) * sizeof *c->notif_live);
        c->nlive -= drop;
    }
    json_val uv;
    int64_t unread;
    if (json_object_get(&obj, "unread", &uv) && json_int(&uv, &unread) && unread >= 0)
        report_unread(c, unread);
    bool more = json_object_get(&obj, "more", &uv) && uv.type == JSON_TRUE;
    if (more || c->notif_again) {
        c->notif_again = false;
        send_notif_sync(c);
    }
}

static void send_notif_sync(parley_chat *c)
{
    if (c->notif_off || !parley_sock_connected(c->sock)) return;
    if (c->notif_syncing) {
        c->notif_again = true;
        return;
    }
    char args[96];
    snprintf(args, sizeof args, "[{\"since\":%lld,\"limit\":%d}]", (long long)c->notif_since,
             NOTIF_SYNC_LIMIT);
    req *r = pcalloc(1, sizeof *r);
    int rc = r ? 0 : PARLEY_ENOMEM;
    if (r) {
        r->c = c;
        r->gen = c->sync_gen;
        rc = emit_request(c, MSG_EV_NOTIF_SYNC, args, NULL, 0, on_notif_sync, r);
        if (rc != 0) free(r);
    }
    if (rc != 0)
        plog_warn("chat: cannot send notifications_sync (%d)", rc);
    else
        c->notif_syncing = true;
}

static void notif_on_connect(parley_chat *c)
{
    /* A new connection may reach an upgraded server: ask again. */
    c->notif_off = false;
    c->notif_syncing = false;
    c->notif_again = false;
    send_notif_sync(c);
}

static void do_notif_sync(void *arg)
{
    send_notif_sync(arg);
}

int parley_chat_notifications_sync(parley_chat *c)
{
    if (!c) return PARLEY_EINVAL;
    return ploop_call(c->loop, do_notif_sync, c);
}

static void on_notif_read(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    req *r = user;
    parley_chat *c = r->c;
    json_val obj, uv;
    parley_chat_error e;
    int rc = request_answer(r, err, args, &obj, &e);
    int64_t unread;
    if (rc == 0) {
        /* The count first: an application told of the read then finds
         * the count that goes with it (parley chat printed a list with
         * the old count in between, seen in CI). */
        if (json_object_get(&obj, "unread", &uv) && json_int(&uv, &unread) && unread >= 0)
            report_unread(c, unread);
        if (c->o.on_notifications_read)
            c->o.on_notifications_read(c, r->ids, r->nids, r->ids == NULL, c->o.user);
    } else if (rc == PARLEY_EPROTO) {
        plog_warn("chat: notifications_read refused: %s (%s)", e.code, e.message);
    }
    free(r);
}

typedef struct notif_arg {
    parley_chat *c;
    const char *args;
    req *r;
    int rc;
} notif_arg;

static void do_notif_read(void *arg)
{
    notif_arg *a = arg;
    if (!parley_sock_connected(a->c->sock)) {
        a->rc = PARLEY_ESTATE;
        return;
    }
    a->rc = emit_request(a->c, MSG_EV_NOTIF_READ, a->args, NULL, 0, on_notif_read, a->r);
}

static int notif_read(parley_chat *c, const int64_t *ids, size_t n)
{
    pbuf b = {0};
    int rc = 0;
    /* The ids live in the same block as the request: a request still
     * pending at parley_chat_free is freed whole through the list. */
    req *r = pcalloc(1, sizeof *r + n * sizeof *ids);
    if (!r) return PARLEY_ENOMEM;
    r->c = c;
    if (ids) {
        r->ids = (int64_t *)(r + 1);
        memcpy(r->ids, ids, n * sizeof *ids);
        r->nids = n;
        rc = pbuf_append_str(&b, "[{\"ids\":[");
        for (size_t i = 0; rc == 0 && i < n; i++)
            rc = pbuf_appendf(&b, "%s%lld", i ? "," : "", (long long)ids[i]);
        if (rc == 0) rc = pbuf_append(&b, "]}]", 4);
    } else {
        rc = pbuf_append(&b, "[{\"all\":true}]", 15);
    }
    notif_arg a = {.c = c, .args = (const char *)b.ptr, .r = r};
    if (rc == 0) rc = ploop_call(c->loop, do_notif_read, &a);
    if (rc == 0) rc = a.rc;
    if (rc != 0) free(r);
    pbuf_free(&b);
    return rc;
}

int parley_chat_notifications_read(parley_chat *c, const int64_t *ids, size_t n)
{
    if (!c || !ids || n == 0 || n > MSG_NOTIF_READ_MAX) return PARLEY_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (ids[i] <= 0) return PARLEY_EINVAL;
    return notif_read(c, ids, n);
}

int parley_chat_notifications_read_all(parley_chat *c)
{
    if (!c) return PARLEY_EINVAL;
    return notif_read(c, NULL, 0);
}

static void on_prefs(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    req *r = user;
    parley_chat *c = r->c;
    json_val obj, pv;
    parley_chat_error e;
    int rc = request_answer(r, err, args, &obj, &e);
    char *json = NULL;
    if (rc == 0 && (!json_object_get(&obj, "prefs", &pv) || pv.type != JSON_OBJECT)) {
        rc = PARLEY_EPROTO;
        set_error(&e, "bad_request", "prefs", "the server's answer has no prefs object");
    }
    if (rc == 0) {
        json = malloc(pv.len + 1);
        if (!json) {
            rc = PARLEY_ENOMEM;
            set_error(&e, "internal", "", "out of memory");
        } else {
            memcpy(json, pv.p, pv.len);
            json[pv.len] = 0;
        }
    }
    if (r->prefs_fn) r->prefs_fn(c, rc, rc ? &e : NULL, json, json ? pv.len : 0, r->user);
    free(json);
    free(r);
}

static int prefs_request(parley_chat *c, const char *event, const char *args,
                         parley_chat_prefs_fn fn, void *user)
{
    req *r = pcalloc(1, sizeof *r);
    if (!r) return PARLEY_ENOMEM;
    r->c = c;
    r->prefs_fn = fn;
    r->user = user;
    return request(c, event, args, NULL, 0, on_prefs, r);
}

int parley_chat_notification_prefs_get(parley_chat *c, parley_chat_prefs_fn fn, void *user)
{
    if (!c) return PARLEY_EINVAL;
    return prefs_request(c, MSG_EV_NOTIF_PREFS_GET, "[{}]", fn, user);
}

int parley_chat_notification_prefs_set(parley_chat *c, const char *changes_json,
                                       parley_chat_prefs_fn fn, void *user)
{
    json_val v;
    if (!c || !changes_json ||
        json_parse(changes_json, strlen(changes_json), JSON_DEFAULT_MAX_DEPTH, &v, NULL) != 0 ||
        v.type != JSON_OBJECT)
        return PARLEY_EINVAL;
    pbuf b = {0};
    int rc = pbuf_append(&b, "[", 1);
    if (rc == 0) rc = pbuf_append(&b, changes_json, strlen(changes_json));
    if (rc == 0) rc = pbuf_append(&b, "]", 2);
    if (rc == 0) rc = prefs_request(c, MSG_EV_NOTIF_PREFS_SET, (const char *)b.ptr, fn, user);
    pbuf_free(&b);
    return rc;
}

/* ---- sending notifications ---- */

void parley_chat_notify_opts_init_size(parley_chat_notify_opts *out, size_t size)
{
    parley_chat_notify_opts defaults;
    memset(&defaults, 0, sizeof defaults);
    defaults.size = sizeof defaults;
    popts_give(out, size, &defaults, sizeof defaults);
}

static void on_notify(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    req *r = user;
    parley_chat *c = r->c;
    json_val obj, nv, dv;
    parley_chat_error e;
    int rc = request_answer(r, err, args, &obj, &e);
    parley_chat_notification n;
    char *arena = NULL;
    int dup = 0;
    if (rc == 0) {
        dup = json_object_get(&obj, "duplicate", &dv) && dv.type == JSON_TRUE;
        if (!json_object_get(&obj, "notification", &nv) || !parse_notification(&nv, &n, &arena)) {
            rc = PARLEY_EPROTO;
            set_error(&e, "bad_request", "notification",
                      "the server's answer has no valid notification");
        }
    }
    if (r->notify_fn) r->notify_fn(c, rc, rc ? &e : NULL, rc ? NULL : &n, dup, r->user);
    free(arena);
    free(r);
}

static int put_opt_str(parley_json_builder *b, const char *key, const char *v)
{
    if (!v) return 0;
    int rc = parley_json_key(b, key);
    return rc ? rc : parley_json_string(b, v);
}

int parley_chat_notify(parley_chat *c, const parley_chat_notify_opts *o_in,
                       parley_chat_notify_fn fn, void *user)
{
    parley_chat_notify_opts o_buf;
    if (!c || !o_in ||
        POPTS_TAKE(parley_chat_notify_opts, parley_chat_notify_opts_init, &o_buf, o_in, to) != 0)
        return PARLEY_EINVAL;
    const parley_chat_notify_opts *o = &o_buf;
    if (o->expires_at < 0) return PARLEY_EINVAL;
    if (o->actions_json) {
        json_val v;
        if (json_parse(o->actions_json, strlen(o->actions_json), JSON_DEFAULT_MAX_DEPTH, &v,
                       NULL) != 0 ||
            v.type != JSON_ARRAY)
            return PARLEY_EINVAL;
    }
    parley_json_builder *b;
    int rc = parley_json_builder_new(&b);
    if (rc) return rc;
    rc = parley_json_begin_array(b);
    if (rc == 0) rc = parley_json_begin_object(b);
    if (rc == 0) rc = put_opt_str(b, "to", o->to);
    if (rc == 0) rc = put_opt_str(b, "type", o->type);
    if (rc == 0) rc = put_opt_str(b, "priority", o->priority);
    if (rc == 0) rc = put_opt_str(b, "title", o->title);
    if (rc == 0) rc = put_opt_str(b, "body", o->body);
    if (rc == 0) rc = put_opt_str(b, "image", o->image);
    if (rc == 0 && o->actions_json) {
        rc = parley_json_key(b, "actions");
        if (rc == 0) rc = parley_json_raw(b, o->actions_json, strlen(o->actions_json));
    }
    if (rc == 0 && o->expires_at > 0) {
        rc = parley_json_key(b, "expires_at");
        if (rc == 0) rc = parley_json_int64(b, o->expires_at);
    }
    if (rc == 0) rc = put_opt_str(b, "dedupe_key", o->dedupe_key);
    if (rc == 0) rc = parley_json_end_object(b);
    if (rc == 0) rc = parley_json_end_array(b);
    const char *args = rc == 0 ? parley_json_builder_result(b, NULL) : NULL;
    if (rc == 0 && !args) rc = PARLEY_ENOMEM;
    req *r = NULL;
    if (rc == 0) {
        r = pcalloc(1, sizeof *r);
        if (!r) rc = PARLEY_ENOMEM;
    }
    if (rc == 0) {
        r->c = c;
        r->notify_fn = fn;
        r->user = user;
        rc = request(c, MSG_EV_NOTIFY, args, NULL, 0, on_notify, r);
    }
    parley_json_builder_free(b);
    return rc;
}
