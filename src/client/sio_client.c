/*
 * The Socket.IO v5 client (include/parley/client.h): socket.io-client's
 * Manager and Socket on top of the Engine.IO client session.
 *
 * Threads: every public function runs its body on the loop thread through
 * ploop_call (in place when already there). State is touched only there.
 *
 * Re-entrancy: user callbacks run with c->depth raised; parley_client_free
 * from inside one tears everything down at once (no callback runs after
 * it) but releases the memory when the outermost callback returns. Every
 * path that calls out re-checks c->free_pending afterwards.
 *
 * Reliable sends: each socket owns an outq. An entry goes out as an EVENT
 * with an ack id when the socket is connected; the server's ACK removes it
 * (outq_ack); a disconnect puts in-flight entries back (outq_requeue) so
 * they are sent again, in their place, on the next connection.
 *
 * Waits (send_retry): an answer the callback turns into a delay puts its
 * entry back in its place (outq_requeue_entry) and pauses the socket's
 * queue until a deadline on the precise monotonic clock (the loop's clock
 * is cached and may run a little behind it: a resend a millisecond early
 * would only be refused again). The deadline belongs to the socket, not
 * the connection, so a replay after a reconnection waits for it too.
 * After a wait the queue is "probing": entries go out one at a time, each
 * after the previous one's answer, until the queue has drained, so that a
 * server at its limit gets requests at the pace it accepts them rather
 * than the whole queue again after every wait (which a server may take
 * for hammering).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"
#include "base/map.h"
#include "base/url.h"
#include "base/util.h"
#include "client/backoff.h"
#include "client/proxy.h"
#include "client/eio_client.h"
#include "client/outq.h"
#include "client/sio_internal.h"
#include "codec/json.h"
#include "codec/sio.h"
#include "codec/utf8.h"
#include "net/net.h"
#include "parley/client.h"

#define SIO_MAX_ATTACH    10
#define SIO_MAX_NSP       256
#define SIO_MAX_HEADERS   64
#define SIO_MAX_EVENT_LEN 4096
#define SIO_MAX_RETRY_MS  86400000u /* send_retry's longest wait: a day */

enum { CL_CLOSED = 0, CL_OPENING, CL_OPEN };

typedef struct handler {
    int id;
    char *event; /* NULL: any event */
    parley_event_fn fn;
    void *user;
    bool once;
    bool dead;
} handler;

typedef struct pending_ack {
    struct pending_ack *next;
    int64_t id;
    parley_sock *s;
    parley_ack_result_fn fn;
    void *user;
    ptimer timer;
    bool buffered; /* still in the send buffer */
    uint64_t sent_at;
    bool reliable;
    char qid[OUTQ_ID_LEN + 1];
} pending_ack;

/* A packet waiting in the send buffer, or a received one waiting for
 * the CONNECT reply (connection-state recovery replays before it). */
typedef struct pkt {
    struct pkt *next;
    pbuf text;
    pbuf bins[SIO_MAX_ATTACH];
    unsigned nbins;
    int64_t ack_id;
    char *event; /* for the counts (send buffer) */
} pkt;

typedef struct evcount {
    char *name;
    uint64_t in, out;
} evcount;

typedef struct send_status {
    char id[OUTQ_ID_LEN + 1];
    parley_send_status_fn fn;
    void *user;
} send_status;

struct parley_sock {
    parley_client *c;
    char *nsp;
    size_t nsp_len;
    parley_sock_opts o;
    bool active; /* connects whenever the client is open */
    bool connected;
    bool connect_sent; /* CONNECT on the wire, no answer yet */
    bool recovered;
    char id[32];
    char *pid;
    char *offset;
    handler *h;
    size_t nh, caph;
    int next_hid;
    pkt *sb_head, **sb_tail; /* send buffer */
    pkt *rb_head, **rb_tail; /* receive buffer */
    pending_ack *acks;
    size_t nacks; /* in acks: at most PARLEY_CLIENT_MAX_PENDING_ACKS from emits */
    int64_t next_ack;
    outq *q;
    ptimer expiry;
    ptimer pause;                /* send_retry's wait */
    uint64_t pause_until;        /* ptime_ms deadline of the wait; 0: none */
    bool probing;                /* after a wait: one entry at a time */
    char probe[OUTQ_ID_LEN + 1]; /* that entry, while on the wire; "" */
    pmap statuses;               /* id -> send_status */
    evcount *counts;
    size_t ncounts, capcounts;
};

struct parley_client {
    parley_loop *loop;
    bool own_loop;
    parley_client_opts o;
    char *path, *query, *ca_file, *url_text;
    http_header *hdrs;
    char *hdr_text;
    purl url;
    ptls_ctx *tls;
    eio_client *eio;
    int state;
    const char *transport;
    bool skip_reconnect;
    bool reconnecting;
    backoff bo;
    ptimer reconnect_timer;
    const char *reason_override;
    /* The socket whose leaving closes the connection: eio_on_close leaves
     * it to sock_leave, which tells it its own reason afterwards. */
    parley_sock *leaving;
    parley_sock **socks;
    size_t nsocks;
    /* A binary packet waiting for its attachments. */
    pbuf pend_text;
    pbuf pend_bins[SIO_MAX_ATTACH];
    unsigned pend_want, pend_have;
    bool pend;
    sio_limits lim;
    pbuf scratch;
    parley_client_stats st;
    uint64_t open_at;
    int depth;
    bool free_pending;
    bool handlers_dirty;
};

static void sock_onclose(parley_sock *s, const char *reason);
static void send_connect(parley_sock *s);
static void pump_queue(parley_sock *s);
static void arm_expiry(parley_sock *s);
static void destroy_client(parley_client *c);
static double rand01(parley_client *c);

/* ---- helpers ---- */

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void enter(parley_client *c)
{
    c->depth++;
}

/* True when the client is being freed: callers must stop. */
static void compact_all(parley_client *c);

static bool leave(parley_client *c)
{
    c->depth--;
    if (c->free_pending && c->depth == 0) {
        destroy_client(c);
        return true;
    }
    if (c->depth == 0 && c->handlers_dirty) compact_all(c);
    return c->free_pending;
}

static void emit_client_event(parley_client *c, parley_client_event *ev)
{
    if (ev->type == PARLEY_CLIENT_ERROR) c->st.errors++;
    if (!c->o.on_event || c->free_pending) return;
    enter(c);
    c->o.on_event(c, ev, c->o.user);
    c->depth--;
}

static evcount *count_for(parley_sock *s, const char *name)
{
    for (size_t i = 0; i < s->ncounts; i++)
        if (!strcmp(s->counts[i].name, name)) return &s->counts[i];
    if (s->ncounts == s->capcounts) {
        size_t cap = s->capcounts ? s->capcounts * 2 : 8;
        evcount *v = realloc(s->counts, cap * sizeof *v);
        if (!v) return NULL;
        s->counts = v;
        s->capcounts = cap;
    }
    evcount *e = &s->counts[s->ncounts];
    e->name = strdup(name);
    if (!e->name) return NULL;
    e->in = e->out = 0;
    s->ncounts++;
    return e;
}

static void pkt_free(pkt *p)
{
    if (!p) return;
    pbuf_free(&p->text);
    for (unsigned i = 0; i < p->nbins; i++) pbuf_free(&p->bins[i]);
    free(p->event);
    free(p);
}

/* ---- sending ---- */

/* Hands one encoded packet (and its attachments) to Engine.IO. */
static int send_raw(parley_client *c, const void *text, size_t len, const parley_bin *bins,
                    size_t nbins)
{
    if (c->state != CL_OPEN) return PARLEY_ECLOSED;
    int rc = eio_client_send(c->eio, false, text, len);
    if (rc) return rc;
    c->st.packets_out++;
    c->st.bytes_out += len;
    for (size_t i = 0; i < nbins; i++) {
        rc = eio_client_send(c->eio, true, bins[i].data, bins[i].len);
        if (rc) return rc;
        c->st.packets_out++;
        c->st.bytes_out += bins[i].len;
    }
    return 0;
}

static int send_pkt(parley_client *c, const pkt *p)
{
    parley_bin b[SIO_MAX_ATTACH];
    for (unsigned i = 0; i < p->nbins; i++) b[i] = (parley_bin){p->bins[i].ptr, p->bins[i].len};
    return send_raw(c, p->text.ptr, p->text.len, b, p->nbins);
}

/* Checks args (a JSON array or NULL) against nbins and appends its
 * elements, each preceded by a comma when `comma`. */
static int append_args(pbuf *out, const char *args_json, size_t nbins, bool comma, size_t *count)
{
    *count = 0;
    if (!args_json) return nbins ? PARLEY_EINVAL : 0;
    json_val arr;
    if (json_parse(args_json, strlen(args_json), JSON_DEFAULT_MAX_DEPTH, &arr, NULL) != 0 ||
        arr.type != JSON_ARRAY)
        return PARLEY_EINVAL;
    const char *why;
    if (sio_check_placeholders(&arr, (unsigned)nbins, JSON_DEFAULT_MAX_DEPTH, NULL, NULL, &why) !=
        0)
        return PARLEY_EINVAL;
    json_iter it;
    json_val e;
    json_iter_init(&it, &arr);
    int rc = 0;
    while (rc == 0 && json_array_next(&it, &e)) {
        if (comma) rc = pbuf_append(out, ",", 1);
        if (rc == 0) rc = json_compact(out, &e);
        comma = true;
        (*count)++;
    }
    return rc;
}

/* Encodes an EVENT (or BINARY_EVENT) into out. */
static int encode_event(parley_sock *s, pbuf *out, const char *event, const char *args_json,
                        size_t nbins, int64_t ack_id)
{
    if (!event || !*event || strlen(event) > SIO_MAX_EVENT_LEN ||
        sio_reserved_event(event, strlen(event)) || nbins > SIO_MAX_ATTACH)
        return PARLEY_EINVAL;
    out->len = 0;
    int rc = sio_write_head(out, nbins ? SIO_BINARY_EVENT : SIO_EVENT, (unsigned)nbins, s->nsp,
                            s->nsp_len, ack_id);
    if (rc == 0) rc = pbuf_append(out, "[", 1);
    if (rc == 0) rc = json_append_string(out, event, strlen(event));
    size_t n;
    if (rc == 0) rc = append_args(out, args_json, nbins, true, &n);
    if (rc == 0) rc = pbuf_append(out, "]", 1);
    return rc;
}

static pkt *pkt_copy(const pbuf *text, const parley_bin *bins, size_t nbins)
{
    pkt *p = pcalloc(1, sizeof *p);
    if (!p) return NULL;
    int rc = pbuf_append(&p->text, text->ptr, text->len);
    for (size_t i = 0; rc == 0 && i < nbins; i++) {
        rc = pbuf_append(&p->bins[i], bins[i].data, bins[i].len);
        if (bins[i].len == 0) rc = pbuf_reserve(&p->bins[i], 1);
        p->nbins = (unsigned)i + 1;
    }
    if (rc) {
        pkt_free(p);
        return NULL;
    }
    return p;
}

/* ---- acknowledgements ---- */

static void ack_unlink(parley_sock *s, pending_ack *a)
{
    for (pending_ack **pp = &s->acks; *pp; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            s->nacks--;
            break;
        }
    }
    ploop_timer_stop(s->c->loop, &a->timer);
}

static pending_ack *ack_find(parley_sock *s, int64_t id)
{
    for (pending_ack *a = s->acks; a; a = a->next)
        if (a->id == id) return a;
    return NULL;
}

/* Calls an ack callback; false when the client went away. */
static bool ack_call(parley_sock *s, pending_ack *a, int err, const parley_args *args)
{
    parley_client *c = s->c;
    bool gone = false;
    if (a->fn && !c->free_pending) {
        enter(c);
        a->fn(s, err, args, a->user);
        gone = leave(c);
    }
    free(a);
    return !gone;
}

static void on_ack_timeout_in(ptimer *t)
{
    pending_ack *a = PARLEY_CONTAINER_OF(t, pending_ack, timer);
    parley_sock *s = a->s;
    ack_unlink(s, a);
    if (a->buffered) {
        /* Never sent: it leaves the send buffer too. */
        for (pkt **pp = &s->sb_head; *pp; pp = &(*pp)->next) {
            pkt *p = *pp;
            if (p->ack_id == a->id) {
                *pp = p->next;
                if (s->sb_tail == &p->next) s->sb_tail = pp;
                pkt_free(p);
                break;
            }
        }
    }
    ack_call(s, a, PARLEY_ETIMEDOUT, NULL);
}

static void on_ack_timeout(ptimer *t)
{
    parley_client *c = PARLEY_CONTAINER_OF(t, pending_ack, timer)->s->c;
    enter(c);
    on_ack_timeout_in(t);
    leave(c);
}

/* ---- reliable sends ---- */

static send_status *status_of(parley_sock *s, const char *id)
{
    return pmap_get(&s->statuses, id, OUTQ_ID_LEN);
}

/* The user pointer of a socket's callbacks: its own (parley_sock_opts.user
 * or parley_sock_set_user), else the client's. */
static void *sock_user(parley_sock *s)
{
    return s->o.user ? s->o.user : s->c->o.user;
}

void parley_sock_set_user(parley_sock *s, void *user)
{
    if (s) s->o.user = user;
}

void *parley_sock_user(parley_sock *s)
{
    return s ? sock_user(s) : NULL;
}

/* Reports a step of a reliable send; false when the client went away. */
static bool report(parley_sock *s, const char *id, int status, int err, const parley_args *args)
{
    parley_client *c = s->c;
    send_status *ss = status_of(s, id);
    /* Sends without a callback of their own (those restored from the queue
     * file too) report to the socket's. */
    parley_send_status_fn fn = ss ? ss->fn : s->o.on_send_status;
    void *user = ss ? ss->user : sock_user(s);
    char idcopy[OUTQ_ID_LEN + 1];
    memcpy(idcopy, id, sizeof idcopy);
    if (ss && (status == PARLEY_SEND_ACKED || status == PARLEY_SEND_FAILED)) {
        pmap_del(&s->statuses, ss->id, OUTQ_ID_LEN);
        free(ss);
    }
    if (!fn || c->free_pending) return !c->free_pending;
    enter(c);
    fn(s, idcopy, status, err, args, user);
    return !leave(c);
}

typedef struct expired_list {
    char (*ids)[OUTQ_ID_LEN + 1];
    size_t n, cap;
} expired_list;

static void collect_expired(const outq_entry *e, void *user)
{
    expired_list *l = user;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        void *v = realloc(l->ids, cap * sizeof *l->ids);
        if (!v) return;
        l->ids = v;
        l->cap = cap;
    }
    memcpy(l->ids[l->n++], e->id, OUTQ_ID_LEN + 1);
}

static void on_expiry_in(ptimer *t)
{
    parley_sock *s = PARLEY_CONTAINER_OF(t, parley_sock, expiry);
    expired_list l = {0};
    outq_expire(s->q, wall_ms(), collect_expired, &l);
    bool alive = true;
    for (size_t i = 0; i < l.n && alive; i++) {
        for (pending_ack *a = s->acks; a; a = a->next) {
            if (a->reliable && !strcmp(a->qid, l.ids[i])) {
                ack_unlink(s, a);
                free(a);
                break;
            }
        }
        alive = report(s, l.ids[i], PARLEY_SEND_FAILED, PARLEY_ETIMEDOUT, NULL);
    }
    free(l.ids);
    if (alive) arm_expiry(s);
}

static void on_expiry(ptimer *t)
{
    parley_client *c = PARLEY_CONTAINER_OF(t, parley_sock, expiry)->c;
    enter(c);
    on_expiry_in(t);
    leave(c);
}

static void arm_expiry(parley_sock *s)
{
    if (!s->q) return;
    uint64_t due = outq_next_expiry(s->q);
    if (!due) {
        ploop_timer_stop(s->c->loop, &s->expiry);
        return;
    }
    uint64_t now = wall_ms();
    ploop_timer_start(s->c->loop, &s->expiry, due > now ? due - now : 0);
}

static void on_pause_in(ptimer *t)
{
    pump_queue(PARLEY_CONTAINER_OF(t, parley_sock, pause));
}

static void on_pause(ptimer *t)
{
    parley_client *c = PARLEY_CONTAINER_OF(t, parley_sock, pause)->c;
    enter(c);
    on_pause_in(t);
    leave(c);
}

/* True while send_retry's wait runs (its timer armed for the rest). */
static bool paused(parley_sock *s)
{
    if (!s->pause_until) return false;
    uint64_t now = ptime_ms();
    if (now >= s->pause_until) {
        s->pause_until = 0;
        return false;
    }
    ploop_timer_start(s->c->loop, &s->pause, s->pause_until - now);
    return true;
}

/* Sends every pending queue entry (connected sockets only); after a wait,
 * the first one alone. */
static void pump_queue(parley_sock *s)
{
    parley_client *c = s->c;
    if (!s->q || !s->connected || c->state != CL_OPEN || c->free_pending || paused(s)) return;
    while (s->q && s->connected && c->state == CL_OPEN && !c->free_pending && !s->probe[0]) {
        outq_entry *e = outq_next(s->q, wall_ms());
        if (!e) break;
        int64_t id = s->next_ack++;
        pbuf *out = &c->scratch;
        char *args = pmemdup_str(e->data, e->len);
        int rc = args ? encode_event(s, out, e->event, args, 0, id) : PARLEY_ENOMEM;
        free(args);
        pending_ack *a = rc == 0 ? pcalloc(1, sizeof *a) : NULL;
        if (rc == 0 && !a) rc = PARLEY_ENOMEM;
        if (rc == 0) rc = send_raw(c, out->ptr, out->len, NULL, 0);
        if (rc == PARLEY_ECLOSED || rc == PARLEY_ENOMEM) {
            free(a);
            break;
        }
        if (rc) {
            /* It can never be sent (too large, bad text): fail it. */
            free(a);
            char id36[OUTQ_ID_LEN + 1];
            memcpy(id36, e->id, sizeof id36);
            outq_ack(s->q, id36);
            if (!report(s, id36, PARLEY_SEND_FAILED, rc, NULL)) return;
            continue;
        }
        a->id = id;
        a->s = s;
        a->reliable = true;
        a->sent_at = ploop_now(c->loop);
        memcpy(a->qid, e->id, sizeof a->qid);
        ptimer_init(&a->timer, on_ack_timeout);
        a->next = s->acks;
        s->acks = a;
        s->nacks++;
        outq_sent(s->q, e);
        if (s->probing) memcpy(s->probe, e->id, sizeof s->probe);
        evcount *ec = count_for(s, e->event);
        if (ec) ec->out++;
        if (!report(s, a->qid, PARLEY_SEND_SENT, 0, NULL)) return;
    }
}

/* ---- socket lifecycle ---- */

static bool any_active(parley_client *c)
{
    for (size_t i = 0; i < c->nsocks; i++)
        if (c->socks[i]->active) return true;
    return false;
}

static void close_engine(parley_client *c, const char *reason);

/* The last socket left: the connection goes too (as socket.io-client). */
static void maybe_close_manager(parley_client *c)
{
    if (c->free_pending || any_active(c)) return;
    c->skip_reconnect = true;
    if (c->reconnecting) {
        ploop_timer_stop(c->loop, &c->reconnect_timer);
        c->reconnecting = false;
    }
    /* socket.io-client's Manager._close(): the connection's reason is
     * "forced close", whichever side ended the last namespace. */
    if (c->state != CL_CLOSED) close_engine(c, "forced close");
}

static void clear_rbuf(parley_sock *s)
{
    while (s->rb_head) {
        pkt *p = s->rb_head;
        s->rb_head = p->next;
        pkt_free(p);
    }
    s->rb_tail = &s->rb_head;
}

/* The socket lost its namespace connection. */
static void sock_onclose(parley_sock *s, const char *reason)
{
    parley_client *c = s->c;
    bool was = s->connected;
    s->connected = false;
    s->connect_sent = false;
    s->id[0] = 0;
    clear_rbuf(s);
    if (s->q) {
        outq_requeue(s->q);
        arm_expiry(s); /* deadlines that passed in flight apply now */
    }
    /* Still probing: the next connection sends one entry first again. */
    s->probe[0] = 0;
    /* Sent and unanswered: ECLOSED; still buffered ones wait. */
    pending_ack **pp = &s->acks;
    pending_ack *failed = NULL;
    while (*pp) {
        pending_ack *a = *pp;
        if (!a->buffered) {
            *pp = a->next;
            s->nacks--;
            ploop_timer_stop(c->loop, &a->timer);
            if (a->reliable) {
                free(a);
            } else {
                a->next = failed;
                failed = a;
            }
        } else {
            pp = &a->next;
        }
    }
    /* Oldest first: the list was built newest first twice over. */
    while (failed) {
        pending_ack *a = failed;
        failed = a->next;
        if (!ack_call(s, a, PARLEY_ECLOSED, NULL)) {
            while (failed) {
                pending_ack *n = failed->next;
                free(failed);
                failed = n;
            }
            return;
        }
    }
    if (was && s->o.on_disconnect && !c->free_pending) {
        enter(c);
        s->o.on_disconnect(s, reason, sock_user(s));
        leave(c);
    }
}

/* s left its namespace (reason: "io server disconnect" or "io client
 * disconnect"). As socket.io-client's Socket.destroy() then onclose(): when
 * it was the last active one, the connection closes first (CLOSE "forced
 * close"), then the socket hears its own reason. */
static void sock_leave(parley_sock *s, const char *reason)
{
    parley_client *c = s->c;
    s->active = false;
    if (!(s->connected || s->connect_sent)) {
        maybe_close_manager(c);
        return;
    }
    if (!any_active(c)) {
        c->leaving = s;
        maybe_close_manager(c);
        c->leaving = NULL;
        if (c->free_pending) return;
    }
    sock_onclose(s, reason);
}

static void deliver_event(parley_sock *s, const sio_packet *pk, const parley_bin *bins,
                          size_t nbins);

static void onconnect(parley_sock *s, const char *sid, size_t sid_len, const char *pid,
                      size_t pid_len)
{
    parley_client *c = s->c;
    memcpy(s->id, sid, sid_len);
    s->id[sid_len] = 0;
    s->recovered = pid && s->pid && strlen(s->pid) == pid_len && !memcmp(s->pid, pid, pid_len);
    free(s->pid);
    s->pid = pid ? pmemdup_str(pid, pid_len) : NULL;
    if (!s->recovered) {
        free(s->offset);
        s->offset = NULL;
    }
    s->connected = true;
    s->connect_sent = false;
    /* Events replayed before the CONNECT reply, in order. */
    while (s->rb_head && s->connected && !c->free_pending) {
        pkt *p = s->rb_head;
        s->rb_head = p->next;
        if (!s->rb_head) s->rb_tail = &s->rb_head;
        sio_packet pk;
        const char *why;
        parley_bin b[SIO_MAX_ATTACH];
        for (unsigned i = 0; i < p->nbins; i++) b[i] = (parley_bin){p->bins[i].ptr, p->bins[i].len};
        if (sio_parse((const char *)p->text.ptr, p->text.len, &c->lim, &pk, &why) == 0)
            deliver_event(s, &pk, b, p->nbins);
        pkt_free(p);
    }
    if (!s->connected || c->free_pending) return;
    /* The send buffer, in order. */
    while (s->sb_head && s->connected && c->state == CL_OPEN) {
        pkt *p = s->sb_head;
        s->sb_head = p->next;
        if (!s->sb_head) s->sb_tail = &s->sb_head;
        if (p->ack_id >= 0) {
            pending_ack *a = ack_find(s, p->ack_id);
            if (a) {
                a->buffered = false;
                a->sent_at = ploop_now(c->loop);
            }
        }
        send_pkt(c, p);
        pkt_free(p);
    }
    if (s->o.on_connect && !c->free_pending) {
        enter(c);
        s->o.on_connect(s, s->recovered, sock_user(s));
        if (leave(c)) return;
    }
    pump_queue(s);
}

/* Sends CONNECT with the auth payload (and {pid, offset} to recover). */
static void send_connect(parley_sock *s)
{
    parley_client *c = s->c;
    if (c->state != CL_OPEN || s->connect_sent || s->connected) return;
    char *auth = NULL;
    if (s->o.auth) {
        enter(c);
        auth = s->o.auth(s, sock_user(s));
        if (leave(c)) {
            parley_free(auth); /* parley_alloc/parley_strdup/malloc */
            return;
        }
        if (c->state != CL_OPEN || s->connect_sent || s->connected || !s->active) {
            parley_free(auth); /* parley_alloc/parley_strdup/malloc */
            return;
        }
    }
    json_val av = {0};
    if (auth && (json_parse(auth, strlen(auth), JSON_DEFAULT_MAX_DEPTH, &av, NULL) != 0 ||
                 av.type != JSON_OBJECT)) {
        plog_warn("socket.io %s: the auth callback returned no JSON object; sending none", s->nsp);
        av.type = JSON_INVALID;
    }
    pbuf *out = &c->scratch;
    out->len = 0;
    int rc = sio_write_head(out, SIO_CONNECT, 0, s->nsp, s->nsp_len, -1);
    if (rc == 0 && s->pid) {
        rc = pbuf_append_str(out, "{\"pid\":");
        if (rc == 0) rc = json_append_string(out, s->pid, strlen(s->pid));
        if (rc == 0 && s->offset) {
            rc = pbuf_append_str(out, ",\"offset\":");
            if (rc == 0) rc = json_append_string(out, s->offset, strlen(s->offset));
        }
        if (av.type == JSON_OBJECT) {
            json_iter it;
            json_val k, v;
            json_iter_init(&it, &av);
            while (rc == 0 && json_object_next(&it, &k, &v)) {
                if (json_string_eq(&k, "pid") || json_string_eq(&k, "offset")) continue;
                rc = pbuf_append(out, ",", 1);
                if (rc == 0) rc = json_compact(out, &k);
                if (rc == 0) rc = pbuf_append(out, ":", 1);
                if (rc == 0) rc = json_compact(out, &v);
            }
        }
        if (rc == 0) rc = pbuf_append(out, "}", 1);
    } else if (rc == 0 && av.type == JSON_OBJECT) {
        rc = json_compact(out, &av);
    }
    parley_free(auth); /* parley_alloc/parley_strdup/malloc */
    if (rc == 0) rc = send_raw(c, out->ptr, out->len, NULL, 0);
    if (rc == 0) s->connect_sent = true;
}

/* ---- packets from the server ---- */

static parley_sock *sock_by_nsp(parley_client *c, const char *nsp, size_t len)
{
    for (size_t i = 0; i < c->nsocks; i++)
        if (c->socks[i]->nsp_len == len && !memcmp(c->socks[i]->nsp, nsp, len)) return c->socks[i];
    return NULL;
}

/* The arguments of an EVENT or ACK as one JSON array, skipping `skip`
 * leading elements; sets *last to the last element. */
static int build_args(pbuf *out, const json_val *arr, size_t skip, json_val *last, size_t *n)
{
    out->len = 0;
    *n = 0;
    last->type = JSON_INVALID;
    int rc = pbuf_append(out, "[", 1);
    if (arr->type == JSON_ARRAY) {
        json_iter it;
        json_val e;
        json_iter_init(&it, arr);
        size_t i = 0;
        while (rc == 0 && json_array_next(&it, &e)) {
            if (i++ < skip) continue;
            if (*n) rc = pbuf_append(out, ",", 1);
            if (rc == 0) rc = json_compact(out, &e);
            *last = e;
            (*n)++;
        }
    }
    if (rc == 0) rc = pbuf_append(out, "]", 1);
    if (rc == 0) rc = pbuf_append(out, "", 1); /* a NUL, not counted */
    if (rc == 0) out->len--;
    return rc;
}

static void compact_handlers(parley_sock *s)
{
    size_t j = 0;
    for (size_t i = 0; i < s->nh; i++) {
        if (s->h[i].dead) {
            free(s->h[i].event);
            continue;
        }
        s->h[j++] = s->h[i];
    }
    s->nh = j;
}

static void compact_all(parley_client *c)
{
    c->handlers_dirty = false;
    for (size_t i = 0; i < c->nsocks; i++) compact_handlers(c->socks[i]);
}

static void deliver_event(parley_sock *s, const sio_packet *pk, const parley_bin *bins,
                          size_t nbins)
{
    parley_client *c = s->c;
    json_iter it;
    json_val name;
    json_iter_init(&it, &pk->data);
    if (!json_array_next(&it, &name) || name.type != JSON_STRING) return;
    char *ev = malloc(name.len);
    if (!ev) return;
    long nl = json_string_decode(&name, ev, name.len - 1);
    if (nl < 0) {
        free(ev);
        return;
    }
    ev[nl] = 0;
    pbuf args = {0};
    json_val last;
    size_t n;
    if (build_args(&args, &pk->data, 1, &last, &n) != 0) {
        pbuf_free(&args);
        free(ev);
        return;
    }
    /* Recovery: the offset is the last argument of plain events; it stays
     * in the arguments (socket.io-client hands it to the application). */
    if (s->pid && n > 0 && last.type == JSON_STRING && pk->id < 0) {
        char *off = malloc(last.len);
        long ol = off ? json_string_decode(&last, off, last.len - 1) : -1;
        if (ol >= 0) {
            off[ol] = 0;
            free(s->offset);
            s->offset = off;
        } else {
            free(off);
        }
    }
    evcount *ec = count_for(s, ev);
    if (ec) ec->in++;
    parley_args a = {(const char *)args.ptr, args.len, bins, nbins};
    /* Catch-all handlers first, then the event's own (socket.io-client's
     * order). Handlers added during delivery wait for the next event. */
    size_t count = s->nh;
    enter(c);
    for (int pass = 0; pass < 2 && !c->free_pending; pass++) {
        for (size_t i = 0; i < count && i < s->nh && !c->free_pending; i++) {
            handler *h = &s->h[i];
            if (h->dead) continue;
            if (pass == 0 ? h->event != NULL : (!h->event || strcmp(h->event, ev) != 0)) continue;
            if (h->once) {
                h->dead = true;
                c->handlers_dirty = true;
            }
            h->fn(s, ev, &a, pk->id, h->user);
        }
    }
    leave(c);
    pbuf_free(&args);
    free(ev);
}

static void parse_error(parley_client *c, const char *why)
{
    plog_info("socket.io %s: malformed packet from the server: %s", c->url.host_header, why);
    parley_client_event ev = {.type = PARLEY_CLIENT_ERROR, .err = PARLEY_EPROTO};
    emit_client_event(c, &ev);
    if (c->free_pending) return;
    if (c->state != CL_CLOSED) close_engine(c, "parse error");
}

/* Keeps an answered entry for a resend after delay_ms (send_retry). */
static void wait_and_resend(parley_sock *s, const char *qid, int delay_ms, const parley_args *pa)
{
    parley_client *c = s->c;
    uint64_t delay = (uint64_t)delay_ms > SIO_MAX_RETRY_MS ? SIO_MAX_RETRY_MS : (uint64_t)delay_ms;
    /* Jitter, so that clients refused together do not return together. */
    delay += (uint64_t)((double)(delay / 10) * rand01(c));
    uint64_t until = ptime_ms() + delay;
    if (until > s->pause_until) s->pause_until = until;
    /* The entry sent alone after the last wait (this one or another still
     * on the wire) no longer ends the probing: after this wait, another
     * goes alone first. */
    s->probing = true;
    s->probe[0] = 0;
    c->st.send_retries++;
    outq_requeue_entry(s->q, outq_find(s->q, qid));
    arm_expiry(s); /* a deadline passed on the wire applies now */
    if (!report(s, qid, PARLEY_SEND_QUEUED, 0, pa)) return;
    pump_queue(s); /* arms the wait's timer */
}

/* The answer to a reliable send: final (the entry leaves the queue), or
 * a wait when send_retry says so. */
static void reliable_answer(parley_sock *s, const char *qid, const parley_args *pa)
{
    parley_client *c = s->c;
    if (!outq_find(s->q, qid)) return; /* expired meanwhile, or a duplicate answer */
    int delay = 0;
    if (s->o.send_retry) {
        enter(c);
        delay = s->o.send_retry(s, qid, pa, sock_user(s));
        if (leave(c)) return;
        if (!outq_find(s->q, qid)) return;
    }
    if (delay > 0) {
        wait_and_resend(s, qid, delay, pa);
        return;
    }
    bool probe = !strcmp(s->probe, qid);
    if (outq_ack(s->q, qid) != 0) return;
    if (probe) {
        /* The server took the entry sent alone: the next one goes alone
         * too, until nothing is left (then sends go out together again). */
        s->probe[0] = 0;
        if (outq_count(s->q) == 0) s->probing = false;
    }
    arm_expiry(s);
    if (!report(s, qid, PARLEY_SEND_ACKED, 0, pa)) return;
    if (probe) pump_queue(s);
}

static void on_ack_packet(parley_sock *s, const sio_packet *pk, const parley_bin *bins,
                          size_t nbins)
{
    parley_client *c = s->c;
    if (pk->id < 0) return;
    pending_ack *a = ack_find(s, pk->id);
    if (!a) return;
    ack_unlink(s, a);
    uint64_t now = ploop_now(c->loop);
    c->st.last_rtt_ms = (uint32_t)(now - a->sent_at);
    pbuf args = {0};
    json_val last;
    size_t n;
    build_args(&args, &pk->data, 0, &last, &n);
    parley_args pa = {(const char *)args.ptr, args.len, bins, nbins};
    if (a->reliable) {
        char qid[OUTQ_ID_LEN + 1];
        memcpy(qid, a->qid, sizeof qid);
        free(a);
        reliable_answer(s, qid, &pa);
    } else {
        ack_call(s, a, 0, &pa);
    }
    pbuf_free(&args);
}

/* A complete packet (attachments gathered). */
static void dispatch(parley_client *c, const sio_packet *pk, const parley_bin *bins, size_t nbins)
{
    parley_sock *s = sock_by_nsp(c, pk->nsp, pk->nsp_len);
    if (!s) return; /* a namespace we are not in: ignored, as the reference */
    switch (pk->type) {
    case SIO_CONNECT: {
        json_val sid, pid;
        char sidb[32], pidb[64];
        long sl = -1, pl = -1;
        if (pk->data.type == JSON_OBJECT && json_object_get(&pk->data, "sid", &sid) &&
            sid.type == JSON_STRING)
            sl = json_string_decode(&sid, sidb, sizeof sidb - 1);
        if (sl <= 0) {
            parse_error(c, "CONNECT without a sid");
            return;
        }
        bool has_pid = json_object_get(&pk->data, "pid", &pid) && pid.type == JSON_STRING &&
                       (pl = json_string_decode(&pid, pidb, sizeof pidb - 1)) > 0;
        if (!s->active) return;
        onconnect(s, sidb, (size_t)sl, has_pid ? pidb : NULL, has_pid ? (size_t)pl : 0);
        return;
    }
    case SIO_CONNECT_ERROR: {
        json_val msg, data;
        char *m = NULL, *d = NULL;
        if (pk->data.type == JSON_OBJECT && json_object_get(&pk->data, "message", &msg) &&
            msg.type == JSON_STRING) {
            m = malloc(msg.len);
            long ml = m ? json_string_decode(&msg, m, msg.len - 1) : -1;
            if (ml >= 0)
                m[ml] = 0;
            else {
                free(m);
                m = NULL;
            }
        }
        if (pk->data.type == JSON_OBJECT && json_object_get(&pk->data, "data", &data)) {
            pbuf b = {0};
            if (json_compact(&b, &data) == 0 && pbuf_append(&b, "", 1) == 0)
                d = (char *)b.ptr;
            else
                pbuf_free(&b);
        }
        s->active = false;
        s->connect_sent = false;
        bool gone = false;
        if (s->o.on_connect_error && !c->free_pending) {
            enter(c);
            s->o.on_connect_error(s, m ? m : "", d, sock_user(s));
            gone = leave(c);
        }
        free(m);
        free(d);
        if (!gone) maybe_close_manager(c);
        return;
    }
    case SIO_EVENT:
    case SIO_BINARY_EVENT:
        if (pk->data.type != JSON_ARRAY) return;
        if (!s->connected) {
            /* Replayed before the CONNECT reply: held until it comes. */
            pbuf text = {0};
            pkt *p = NULL;
            if (sio_write_head(&text, pk->type, (unsigned)nbins, pk->nsp, pk->nsp_len, pk->id) ==
                    0 &&
                json_compact(&text, &pk->data) == 0)
                p = pkt_copy(&text, bins, nbins);
            pbuf_free(&text);
            if (p) {
                *s->rb_tail = p;
                s->rb_tail = &p->next;
            }
            return;
        }
        deliver_event(s, pk, bins, nbins);
        return;
    case SIO_ACK:
    case SIO_BINARY_ACK:
        on_ack_packet(s, pk, bins, nbins);
        return;
    case SIO_DISCONNECT:
        sock_leave(s, "io server disconnect");
        return;
    default:
        return;
    }
}

static void pend_reset(parley_client *c)
{
    c->pend = false;
    c->pend_want = c->pend_have = 0;
    pbuf_reset(&c->pend_text, 4096);
    for (unsigned i = 0; i < SIO_MAX_ATTACH; i++) pbuf_free(&c->pend_bins[i]);
}

static void pend_complete(parley_client *c)
{
    sio_packet pk;
    const char *why = NULL;
    parley_bin b[SIO_MAX_ATTACH];
    for (unsigned i = 0; i < c->pend_have; i++)
        b[i] = (parley_bin){c->pend_bins[i].ptr, c->pend_bins[i].len};
    /* Copies: a handler may start a new attempt that resets them. */
    pbuf text = c->pend_text;
    pbuf bins[SIO_MAX_ATTACH];
    unsigned nb = c->pend_have;
    memcpy(bins, c->pend_bins, sizeof bins);
    memset(&c->pend_text, 0, sizeof c->pend_text);
    memset(c->pend_bins, 0, sizeof c->pend_bins);
    c->pend = false;
    c->pend_want = c->pend_have = 0;
    if (sio_parse((const char *)text.ptr, text.len, &c->lim, &pk, &why) != 0 ||
        sio_check_placeholders(&pk.data, pk.attachments, c->lim.max_depth, NULL, NULL, &why) != 0)
        parse_error(c, why ? why : "bad binary packet");
    else
        dispatch(c, &pk, b, nb);
    pbuf_free(&text);
    for (unsigned i = 0; i < nb; i++) pbuf_free(&bins[i]);
}

static void eio_on_message_in(eio_client *e, bool binary, const uint8_t *data, size_t len)
{
    parley_client *c = eio_client_user(e);
    c->st.packets_in++;
    c->st.bytes_in += len;
    if (binary) {
        if (!c->pend) {
            parse_error(c, "unexpected binary message");
            return;
        }
        pbuf *b = &c->pend_bins[c->pend_have];
        if (pbuf_append(b, data, len) != 0 || (len == 0 && pbuf_reserve(b, 1) != 0)) {
            parse_error(c, "out of memory");
            return;
        }
        if (++c->pend_have == c->pend_want) pend_complete(c);
        return;
    }
    if (c->pend) {
        parse_error(c, "text message while attachments were expected");
        return;
    }
    sio_packet pk;
    const char *why = NULL;
    if (sio_parse((const char *)data, len, &c->lim, &pk, &why) != 0) {
        parse_error(c, why ? why : "malformed packet");
        return;
    }
    if ((pk.type == SIO_BINARY_EVENT || pk.type == SIO_BINARY_ACK) && pk.attachments > 0) {
        if (pbuf_append(&c->pend_text, data, len) != 0) {
            parse_error(c, "out of memory");
            return;
        }
        c->pend = true;
        c->pend_want = pk.attachments;
        c->pend_have = 0;
        return;
    }
    if (pk.type == SIO_BINARY_EVENT || pk.type == SIO_BINARY_ACK) {
        if (sio_check_placeholders(&pk.data, 0, c->lim.max_depth, NULL, NULL, &why) != 0) {
            parse_error(c, why ? why : "bad placeholder");
            return;
        }
    }
    dispatch(c, &pk, NULL, 0);
}

static void eio_on_message(eio_client *e, bool binary, const uint8_t *data, size_t len)
{
    parley_client *c = eio_client_user(e);
    enter(c);
    eio_on_message_in(e, binary, data, len);
    leave(c);
}

/* ---- the Manager ---- */

static void open_engine(parley_client *c);

static void on_reconnect_timer_in(ptimer *t)
{
    parley_client *c = PARLEY_CONTAINER_OF(t, parley_client, reconnect_timer);
    if (c->skip_reconnect || c->state != CL_CLOSED) {
        c->reconnecting = false;
        return;
    }
    open_engine(c);
}

static void on_reconnect_timer(ptimer *t)
{
    parley_client *c = PARLEY_CONTAINER_OF(t, parley_client, reconnect_timer);
    enter(c);
    on_reconnect_timer_in(t);
    leave(c);
}

static double rand01(parley_client *c)
{
    const uint8_t *r = ploop_random(c->loop, 4);
    if (!r) return 0.5;
    uint32_t x = (uint32_t)r[0] << 24 | (uint32_t)r[1] << 16 | (uint32_t)r[2] << 8 | r[3];
    return x / 4294967296.0;
}

static void schedule_reconnect(parley_client *c)
{
    if (c->reconnecting || c->skip_reconnect || !c->o.reconnection || c->free_pending) return;
    if (c->o.reconnection_attempts && c->bo.attempts >= c->o.reconnection_attempts) {
        backoff_reset(&c->bo);
        parley_client_event ev = {.type = PARLEY_CLIENT_RECONNECT_FAILED,
                                  .attempt = c->o.reconnection_attempts};
        emit_client_event(c, &ev);
        return;
    }
    uint32_t delay = backoff_next(&c->bo, rand01(c));
    c->reconnecting = true;
    ploop_timer_start(c->loop, &c->reconnect_timer, delay);
    parley_client_event ev = {
        .type = PARLEY_CLIENT_RECONNECTING, .attempt = c->bo.attempts, .delay_ms = delay};
    emit_client_event(c, &ev);
}

static void open_engine(parley_client *c)
{
    if (c->state != CL_CLOSED || c->free_pending) return;
    c->state = CL_OPENING;
    pend_reset(c);
    parley_client_event ev = {.type = PARLEY_CLIENT_CONNECTING, .attempt = c->bo.attempts};
    emit_client_event(c, &ev);
    if (c->free_pending || c->state != CL_OPENING) return;
    int rc = eio_client_open(c->eio);
    if (rc) {
        c->state = CL_CLOSED;
        plog_warn("socket.io: cannot start an attempt: %s", parley_strerror(rc));
    }
}

static void close_engine(parley_client *c, const char *reason)
{
    c->reason_override = reason;
    eio_client_close(c->eio); /* eio_on_close runs inside */
    c->reason_override = NULL;
}

static void eio_on_open_in(eio_client *e, const char *transport)
{
    parley_client *c = eio_client_user(e);
    bool reconnected = c->reconnecting || c->bo.attempts > 0;
    unsigned attempts = c->bo.attempts;
    c->state = CL_OPEN;
    c->transport = !strcmp(transport, "websocket") ? "websocket" : "polling";
    c->reconnecting = false;
    c->st.connects++;
    c->open_at = ploop_now(c->loop);
    parley_client_event ev = {.type = PARLEY_CLIENT_OPEN, .transport = c->transport};
    emit_client_event(c, &ev);
    if (c->free_pending || c->state != CL_OPEN) return;
    for (size_t i = 0; i < c->nsocks && c->state == CL_OPEN && !c->free_pending; i++)
        if (c->socks[i]->active) send_connect(c->socks[i]);
    if (c->free_pending || c->state != CL_OPEN) return;
    backoff_reset(&c->bo);
    if (reconnected) {
        c->st.reconnects++;
        parley_client_event rev = {
            .type = PARLEY_CLIENT_RECONNECTED, .attempt = attempts, .transport = c->transport};
        emit_client_event(c, &rev);
    }
}

static void eio_on_open(eio_client *e, const char *transport)
{
    parley_client *c = eio_client_user(e);
    enter(c);
    eio_on_open_in(e, transport);
    leave(c);
}

static void eio_on_upgrade_in(eio_client *e)
{
    parley_client *c = eio_client_user(e);
    c->transport = "websocket";
    parley_client_event ev = {.type = PARLEY_CLIENT_UPGRADE, .transport = c->transport};
    emit_client_event(c, &ev);
}

static void eio_on_upgrade(eio_client *e)
{
    parley_client *c = eio_client_user(e);
    enter(c);
    eio_on_upgrade_in(e);
    leave(c);
}

static bool non_retryable(int status)
{
    return status == 401 || status == 403 || status == 404 || status == 407;
}

static void eio_on_close_in(eio_client *e, const char *reason, int err, int http_status)
{
    parley_client *c = eio_client_user(e);
    bool was_open = c->state == CL_OPEN;
    c->state = CL_CLOSED;
    c->transport = NULL;
    pend_reset(c);
    if (c->reason_override) reason = c->reason_override;
    enter(c);
    if (was_open) {
        uint64_t now = ploop_now(c->loop);
        c->st.total_uptime_ms += now - c->open_at;
        c->open_at = 0;
        if (err && err != PARLEY_ECLOSED && strcmp(reason, "ping timeout") != 0) {
            parley_client_event eev = {.type = PARLEY_CLIENT_ERROR,
                                       .err = err,
                                       .http_status = http_status,
                                       .reason = reason};
            emit_client_event(c, &eev);
        }
        parley_client_event ev = {
            .type = PARLEY_CLIENT_CLOSE, .reason = reason, .err = err, .http_status = http_status};
        emit_client_event(c, &ev);
        for (size_t i = 0; i < c->nsocks && !c->free_pending; i++) {
            parley_sock *s = c->socks[i];
            if ((s->connected || s->connect_sent) && s != c->leaving) sock_onclose(s, reason);
        }
    } else {
        parley_client_event ev = {
            .type = PARLEY_CLIENT_ERROR, .err = err, .http_status = http_status, .reason = reason};
        emit_client_event(c, &ev);
        if (!c->free_pending && non_retryable(http_status)) {
            /* The server said no: retrying would only hammer it. */
            c->skip_reconnect = true;
            c->reconnecting = false;
            ploop_timer_stop(c->loop, &c->reconnect_timer);
            backoff_reset(&c->bo);
            parley_client_event fev = {
                .type = PARLEY_CLIENT_RECONNECT_FAILED, .http_status = http_status, .err = err};
            emit_client_event(c, &fev);
        }
    }
    if (leave(c)) return;
    c->reconnecting = false;
    schedule_reconnect(c);
}

static void eio_on_close(eio_client *e, const char *reason, int err, int http_status)
{
    parley_client *c = eio_client_user(e);
    enter(c);
    eio_on_close_in(e, reason, err, http_status);
    leave(c);
}

static const eio_client_cbs eio_cbs = {.on_open = eio_on_open,
                                       .on_upgrade = eio_on_upgrade,
                                       .on_message = eio_on_message,
                                       .on_close = eio_on_close};

/* ---- creation and destruction ---- */

void parley_client_opts_init_size(parley_client_opts *out, size_t size)
{
    parley_client_opts defaults, *o = &defaults;
    memset(o, 0, sizeof *o);
    o->size = sizeof *o;
    o->path = "/socket.io/";
    o->transports = PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET;
    o->upgrade = 1;
    o->timeout_ms = 20000;
    o->permessage_deflate = 1;
    o->compression_threshold = 1024;
    o->reconnection = 1;
    o->reconnection_delay_ms = 1000;
    o->reconnection_delay_max_ms = 5000;
    o->randomization_factor = 0.5;
    o->auto_connect = 1;
    popts_give(out, size, o, sizeof *o);
}

void parley_sock_opts_init_size(parley_sock_opts *out, size_t size)
{
    parley_sock_opts defaults, *o = &defaults;
    memset(o, 0, sizeof *o);
    o->size = sizeof *o;
    o->queue_max_count = 1000;
    o->queue_max_bytes = 8u << 20;
    o->auto_connect = 1;
    popts_give(out, size, o, sizeof *o);
}

static void free_sock(parley_sock *s)
{
    parley_client *c = s->c;
    while (s->acks) {
        pending_ack *a = s->acks;
        s->acks = a->next;
        ploop_timer_stop(c->loop, &a->timer);
        free(a);
    }
    while (s->sb_head) {
        pkt *p = s->sb_head;
        s->sb_head = p->next;
        pkt_free(p);
    }
    clear_rbuf(s);
    ploop_timer_stop(c->loop, &s->expiry);
    ploop_timer_stop(c->loop, &s->pause);
    if (s->q) outq_close(s->q);
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&s->statuses, &pos))) free(e->val);
    pmap_free(&s->statuses);
    for (size_t i = 0; i < s->nh; i++) free(s->h[i].event);
    free(s->h);
    for (size_t i = 0; i < s->ncounts; i++) free(s->counts[i].name);
    free(s->counts);
    free(s->nsp);
    free(s->pid);
    free(s->offset);
    free((char *)s->o.queue_path);
    free(s);
}

/* Frees the memory (everything was closed before). */
static void destroy_client(parley_client *c)
{
    for (size_t i = 0; i < c->nsocks; i++) free_sock(c->socks[i]);
    free(c->socks);
    pend_reset(c);
    pbuf_free(&c->pend_text);
    pbuf_free(&c->scratch);
    ptls_ctx_free(c->tls);
    free(c->path);
    free(c->query);
    free(c->ca_file);
    free(c->url_text);
    free(c->hdrs);
    free(c->hdr_text);
    free(c);
}

static int copy_headers(parley_client *c, const char *const *h, size_t n)
{
    return http_headers_from_lines(h, n, SIO_MAX_HEADERS, &c->hdr_text, &c->hdrs);
}

typedef struct call_arg {
    parley_client *c;
    parley_sock *s;
    int rc;
} call_arg;

static void do_connect_in(void *arg)
{
    call_arg *a = arg;
    parley_client *c = a->c;
    c->skip_reconnect = false;
    if (c->state != CL_CLOSED) return;
    if (c->reconnecting) {
        ploop_timer_stop(c->loop, &c->reconnect_timer);
        c->reconnecting = false;
    }
    open_engine(c);
}

static void do_connect(void *arg)
{
    parley_client *c = ((call_arg *)arg)->c;
    enter(c);
    do_connect_in(arg);
    leave(c);
}

int parley_client_new(const parley_client_opts *o_in, parley_client **out)
{
    parley_client_opts o_buf;
    if (!o_in || !out ||
        POPTS_TAKE(parley_client_opts, parley_client_opts_init, &o_buf, o_in, url) != 0)
        return PARLEY_EINVAL;
    const parley_client_opts *o = &o_buf;
    if (!o || !out || !o->url) return PARLEY_EINVAL;
    *out = NULL;
    parley_client *c = pcalloc(1, sizeof *c);
    if (!c) return PARLEY_ENOMEM;
    c->o = *o;
    ptimer_init(&c->reconnect_timer, on_reconnect_timer);
    sio_limits_init(&c->lim);
    int rc = purl_parse(o->url, &c->url);
    if (rc == 0 && !(c->o.transports & (PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET)))
        c->o.transports = PARLEY_TRANSPORT_POLLING | PARLEY_TRANSPORT_WEBSOCKET;
    if (rc == 0 && (c->o.randomization_factor < 0 || c->o.randomization_factor > 1))
        rc = PARLEY_EINVAL;
    if (rc == 0) {
        c->path = strdup(o->path && *o->path ? o->path : "/socket.io/");
        c->query = xstrdup(o->query);
        c->ca_file = xstrdup(o->ca_file);
        c->url_text = strdup(o->url);
        if (!c->path || (o->query && !c->query) || (o->ca_file && !c->ca_file) || !c->url_text)
            rc = PARLEY_ENOMEM;
    }
    if (rc == 0 && c->path[0] != '/') rc = PARLEY_EINVAL;
    pproxy px;
    bool use_px = false;
    if (rc == 0) rc = pproxy_pick(o->proxy, c->url.tls, c->url.host, &px, &use_px);
    if (rc == 0) rc = copy_headers(c, o->headers, o->nheaders);
    if (rc == 0 && c->url.tls) {
        ptls_client_opts to = {.ca_file = c->ca_file, .insecure = o->insecure != 0};
        char err[256];
        c->tls = ptls_ctx_client(&to, err, sizeof err);
        if (!c->tls) {
            plog_error("TLS setup: %s", err);
            rc = PARLEY_ETLS;
        }
    }
    c->o.url = c->url_text;
    c->o.path = c->path;
    c->o.query = c->query;
    c->o.ca_file = c->ca_file;
    c->o.headers = NULL;
    c->o.proxy = NULL; /* resolved into the engine's options */
    c->bo.base_ms = c->o.reconnection_delay_ms;
    c->bo.max_ms = c->o.reconnection_delay_max_ms < c->o.reconnection_delay_ms
                       ? c->o.reconnection_delay_ms
                       : c->o.reconnection_delay_max_ms;
    c->bo.jitter = c->o.randomization_factor;
    if (rc == 0) {
        if (o->loop) {
            c->loop = o->loop;
        } else {
            c->loop = parley_loop_new();
            c->own_loop = true;
            if (!c->loop) rc = PARLEY_ENOMEM;
        }
    }
    if (rc == 0) {
        eio_client_opts eo;
        memset(&eo, 0, sizeof eo);
        eo.url = c->url;
        eo.path = c->path;
        eo.query = c->query;
        eo.headers = c->hdrs;
        eo.nheaders = c->hdrs ? o->nheaders : 0;
        eo.transports = c->o.transports;
        eo.upgrade = c->o.upgrade != 0;
        eo.websocket_first = c->o.websocket_first != 0;
        eo.tls = c->tls;
        eo.timeout_ms = c->o.timeout_ms;
        eo.permessage_deflate = c->o.permessage_deflate != 0;
        eo.compression_threshold = c->o.compression_threshold;
        if (use_px) {
            eo.proxy = px;
            eo.use_proxy = true;
        }
        c->eio = eio_client_new(c->loop, &eo, &eio_cbs, c);
        if (!c->eio) rc = PARLEY_ENOMEM;
    }
    if (rc == 0 && c->own_loop) rc = parley_loop_start(c->loop);
    if (rc) {
        if (c->eio) eio_client_free(c->eio);
        if (c->own_loop && c->loop) parley_loop_free(c->loop);
        destroy_client(c);
        return rc;
    }
    *out = c;
    if (c->o.auto_connect) {
        call_arg a = {.c = c};
        ploop_call(c->loop, do_connect, &a);
    }
    return 0;
}

int parley_client_connect(parley_client *c)
{
    if (!c) return PARLEY_EINVAL;
    call_arg a = {.c = c};
    int rc = ploop_call(c->loop, do_connect, &a);
    return rc ? rc : a.rc;
}

static void do_close_in(void *arg)
{
    call_arg *a = arg;
    parley_client *c = a->c;
    c->skip_reconnect = true;
    if (c->reconnecting) {
        ploop_timer_stop(c->loop, &c->reconnect_timer);
        c->reconnecting = false;
    }
    backoff_reset(&c->bo);
    if (c->state == CL_CLOSED) return;
    /* Leave each namespace politely before the transport goes. */
    for (size_t i = 0; i < c->nsocks && c->state == CL_OPEN; i++) {
        parley_sock *s = c->socks[i];
        if (!s->connected) continue;
        pbuf *out = &c->scratch;
        out->len = 0;
        if (sio_write_head(out, SIO_DISCONNECT, 0, s->nsp, s->nsp_len, -1) == 0)
            send_raw(c, out->ptr, out->len, NULL, 0);
    }
    close_engine(c, "io client disconnect");
}

static void do_close(void *arg)
{
    parley_client *c = ((call_arg *)arg)->c;
    enter(c);
    do_close_in(arg);
    leave(c);
}

int parley_client_close(parley_client *c)
{
    if (!c) return PARLEY_EINVAL;
    call_arg a = {.c = c};
    int rc = ploop_call(c->loop, do_close, &a);
    return rc ? rc : a.rc;
}

static void *loop_reaper(void *arg)
{
    parley_loop *l = arg;
    parley_loop_join(l);
    parley_loop_free(l);
    return NULL;
}

/* Tears everything down; memory goes when no callback is running. */
static void do_free_in(void *arg)
{
    call_arg *a = arg;
    parley_client *c = a->c;
    c->free_pending = true;
    c->o.on_event = NULL;
    ploop_timer_stop(c->loop, &c->reconnect_timer);
    for (size_t i = 0; i < c->nsocks; i++) {
        parley_sock *s = c->socks[i];
        ploop_timer_stop(c->loop, &s->expiry);
        for (pending_ack *p = s->acks; p; p = p->next) ploop_timer_stop(c->loop, &p->timer);
    }
    eio_client_free(c->eio);
    c->eio = NULL;
    c->state = CL_CLOSED;
}

static void do_free(void *arg)
{
    parley_client *c = ((call_arg *)arg)->c;
    enter(c);
    do_free_in(arg);
    leave(c);
}

void parley_client_free(parley_client *c)
{
    if (!c) return;
    parley_loop *loop = c->loop;
    bool own = c->own_loop;
    bool on_thread = ploop_on_thread(loop);
    call_arg a = {.c = c};
    ploop_call(loop, do_free, &a);
    if (!own) return;
    if (!on_thread) {
        parley_loop_join(loop);
        parley_loop_free(loop);
        return;
    }
    /* Freed from one of its own callbacks: the loop thread cannot join
     * itself, so a helper thread does once this callback has returned. */
    pthread_t th;
    if (pthread_create(&th, NULL, loop_reaper, loop) == 0) pthread_detach(th);
}

typedef struct str_arg {
    parley_client *c;
    const char *out;
} str_arg;

static void do_transport(void *arg)
{
    str_arg *a = arg;
    a->out = a->c->state == CL_OPEN ? a->c->transport : NULL;
}

const char *parley_client_transport(parley_client *c)
{
    str_arg a = {.c = c};
    if (!c || ploop_call(c->loop, do_transport, &a) != 0) return NULL;
    return a.out;
}

typedef struct stats_arg {
    parley_client *c;
    parley_client_stats *out;
} stats_arg;

static void do_stats(void *arg)
{
    stats_arg *a = arg;
    parley_client *c = a->c;
    *a->out = c->st;
    if (c->state == CL_OPEN) {
        uint64_t up = ploop_now(c->loop) - c->open_at;
        a->out->uptime_ms = up;
        a->out->total_uptime_ms += up;
    } else {
        a->out->uptime_ms = 0;
    }
}

void parley_client_get_stats(parley_client *c, parley_client_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!c) return;
    stats_arg a = {.c = c, .out = out};
    ploop_call(c->loop, do_stats, &a);
}

/* ---- sockets ---- */

typedef struct sock_arg {
    parley_client *c;
    const char *nsp;
    const parley_sock_opts *o;
    parley_sock *out;
} sock_arg;

static void do_socket_in(void *arg)
{
    sock_arg *a = arg;
    parley_client *c = a->c;
    const char *nsp = a->nsp ? a->nsp : "/";
    size_t len = strlen(nsp);
    if (c->free_pending || nsp[0] != '/' || len > SIO_MAX_NSP || memchr(nsp, ',', len) ||
        !utf8_valid((const uint8_t *)nsp, len))
        return;
    parley_sock *s = sock_by_nsp(c, nsp, len);
    if (s) {
        a->out = s;
        return;
    }
    parley_sock **v = realloc(c->socks, (c->nsocks + 1) * sizeof *v);
    if (!v) return;
    c->socks = v;
    s = pcalloc(1, sizeof *s);
    if (!s) return;
    s->c = c;
    if (a->o)
        s->o = *a->o;
    else
        parley_sock_opts_init(&s->o);
    s->o.queue_path = NULL;
    s->nsp = strdup(nsp);
    s->nsp_len = len;
    s->sb_tail = &s->sb_head;
    s->rb_tail = &s->rb_head;
    ptimer_init(&s->expiry, on_expiry);
    ptimer_init(&s->pause, on_pause);
    outq_opts qo;
    outq_opts_init(&qo);
    if (s->o.queue_max_count) qo.max_count = s->o.queue_max_count;
    if (s->o.queue_max_bytes) qo.max_bytes = s->o.queue_max_bytes;
    qo.path = a->o ? a->o->queue_path : NULL;
    if (qo.path) s->o.queue_path = strdup(qo.path);
    if (!s->nsp || (qo.path && !s->o.queue_path) || outq_open(&qo, &s->q) != 0) {
        s->q = NULL;
        free_sock(s);
        return;
    }
    /* Without auto_connect the socket waits for parley_sock_connect. */
    s->active = s->o.auto_connect != 0;
    c->socks[c->nsocks++] = s;
    a->out = s;
    arm_expiry(s);
    if (s->active && c->state == CL_OPEN) send_connect(s);
}

static void do_socket(void *arg)
{
    parley_client *c = ((sock_arg *)arg)->c;
    enter(c);
    do_socket_in(arg);
    leave(c);
}

parley_sock *parley_client_socket(parley_client *c, const char *nsp, const parley_sock_opts *o_in)
{
    if (!c) return NULL;
    parley_sock_opts o_buf;
    const parley_sock_opts *o = NULL;
    if (o_in) {
        if (POPTS_TAKE(parley_sock_opts, parley_sock_opts_init, &o_buf, o_in, auth) != 0)
            return NULL;
        o = &o_buf;
    }
    sock_arg a = {.c = c, .nsp = nsp, .o = o};
    if (ploop_call(c->loop, do_socket, &a) != 0) return NULL;
    return a.out;
}

static void do_sock_connect_in(void *arg)
{
    call_arg *a = arg;
    parley_sock *s = a->s;
    parley_client *c = s->c;
    if (c->free_pending) {
        a->rc = PARLEY_ECLOSED;
        return;
    }
    s->active = true;
    if (s->connected) return;
    if (c->state == CL_OPEN) {
        send_connect(s);
    } else if (c->state == CL_CLOSED && !c->reconnecting) {
        c->skip_reconnect = false;
        open_engine(c);
    }
}

static void do_sock_connect(void *arg)
{
    parley_client *c = ((call_arg *)arg)->s->c;
    enter(c);
    do_sock_connect_in(arg);
    leave(c);
}

int parley_sock_connect(parley_sock *s)
{
    if (!s) return PARLEY_EINVAL;
    call_arg a = {.s = s};
    int rc = ploop_call(s->c->loop, do_sock_connect, &a);
    return rc ? rc : a.rc;
}

static void do_sock_disconnect_in(void *arg)
{
    call_arg *a = arg;
    parley_sock *s = a->s;
    parley_client *c = s->c;
    if (c->free_pending) return;
    if (s->connected && c->state == CL_OPEN) {
        pbuf *out = &c->scratch;
        out->len = 0;
        if (sio_write_head(out, SIO_DISCONNECT, 0, s->nsp, s->nsp_len, -1) == 0)
            send_raw(c, out->ptr, out->len, NULL, 0);
    }
    sock_leave(s, "io client disconnect");
}

static void do_sock_disconnect(void *arg)
{
    parley_client *c = ((call_arg *)arg)->s->c;
    enter(c);
    do_sock_disconnect_in(arg);
    leave(c);
}

int parley_sock_disconnect(parley_sock *s)
{
    if (!s) return PARLEY_EINVAL;
    call_arg a = {.s = s};
    int rc = ploop_call(s->c->loop, do_sock_disconnect, &a);
    return rc ? rc : a.rc;
}

typedef struct sock_q {
    parley_sock *s;
    int what;
    int r;
    char *out;
    size_t n;
} sock_q;

static void do_sock_query(void *arg)
{
    sock_q *a = arg;
    parley_sock *s = a->s;
    switch (a->what) {
    case 0:
        a->r = s->connected;
        break;
    case 1:
        a->r = s->recovered;
        break;
    case 2:
        snprintf(a->out, 32, "%s", s->connected ? s->id : "");
        break;
    case 3:
        a->n = s->q ? outq_count(s->q) : 0;
        break;
    case 4:
        a->r = s->pid != NULL;
        break;
    default:
        break;
    }
}

int parley_sock_connected(parley_sock *s)
{
    sock_q a = {.s = s, .what = 0};
    if (!s || ploop_call(s->c->loop, do_sock_query, &a) != 0) return 0;
    return a.r;
}

int parley_sock_recovered(parley_sock *s)
{
    sock_q a = {.s = s, .what = 1};
    if (!s || ploop_call(s->c->loop, do_sock_query, &a) != 0) return 0;
    return a.r;
}

int parley_sock_offsets(parley_sock *s)
{
    sock_q a = {.s = s, .what = 4};
    if (!s || ploop_call(s->c->loop, do_sock_query, &a) != 0) return 0;
    return a.r;
}

void parley_sock_id(parley_sock *s, char out[32])
{
    out[0] = 0;
    sock_q a = {.s = s, .what = 2, .out = out};
    if (s) ploop_call(s->c->loop, do_sock_query, &a);
}

size_t parley_sock_queued(parley_sock *s)
{
    sock_q a = {.s = s, .what = 3};
    if (!s || ploop_call(s->c->loop, do_sock_query, &a) != 0) return 0;
    return a.n;
}

/* Handlers. */

typedef struct on_arg {
    parley_sock *s;
    const char *event;
    parley_event_fn fn;
    void *user;
    bool once;
    int id;
} on_arg;

static void do_on(void *arg)
{
    on_arg *a = arg;
    parley_sock *s = a->s;
    if (s->nh == s->caph) {
        size_t cap = s->caph ? s->caph * 2 : 4;
        handler *v = realloc(s->h, cap * sizeof *v);
        if (!v) {
            a->id = PARLEY_ENOMEM;
            return;
        }
        s->h = v;
        s->caph = cap;
    }
    handler *h = &s->h[s->nh];
    memset(h, 0, sizeof *h);
    if (a->event && !(h->event = strdup(a->event))) {
        a->id = PARLEY_ENOMEM;
        return;
    }
    h->fn = a->fn;
    h->user = a->user;
    h->once = a->once;
    h->id = ++s->next_hid;
    s->nh++;
    a->id = h->id;
}

static int add_handler(parley_sock *s, const char *event, parley_event_fn fn, void *user, bool once,
                       bool any)
{
    if (!s || !fn || (!any && (!event || !*event))) return PARLEY_EINVAL;
    on_arg a = {.s = s, .event = any ? NULL : event, .fn = fn, .user = user, .once = once};
    int rc = ploop_call(s->c->loop, do_on, &a);
    return rc ? rc : a.id;
}

int parley_sock_on(parley_sock *s, const char *event, parley_event_fn fn, void *user)
{
    return add_handler(s, event, fn, user, false, false);
}

int parley_sock_once(parley_sock *s, const char *event, parley_event_fn fn, void *user)
{
    return add_handler(s, event, fn, user, true, false);
}

int parley_sock_on_any(parley_sock *s, parley_event_fn fn, void *user)
{
    return add_handler(s, NULL, fn, user, false, true);
}

static void do_off(void *arg)
{
    on_arg *a = arg;
    parley_sock *s = a->s;
    for (size_t i = 0; i < s->nh; i++) {
        if (s->h[i].id == a->id && !s->h[i].dead) {
            s->h[i].dead = true;
            s->c->handlers_dirty = true;
            a->id = 0;
            return;
        }
    }
    a->id = PARLEY_EINVAL;
}

int parley_sock_off(parley_sock *s, int handler_id)
{
    if (!s || handler_id <= 0) return PARLEY_EINVAL;
    on_arg a = {.s = s, .id = handler_id};
    int rc = ploop_call(s->c->loop, do_off, &a);
    return rc ? rc : a.id;
}

/* Emits and acks. */

typedef struct emit_arg {
    parley_sock *s;
    const char *event;
    const char *args;
    const parley_bin *bins;
    size_t nbins;
    bool volatile_;
    bool is_ack;
    int64_t ack_id;
    uint32_t timeout_ms;
    parley_ack_result_fn fn;
    void *user;
    int rc;
} emit_arg;

static void do_emit_in(void *arg)
{
    emit_arg *a = arg;
    parley_sock *s = a->s;
    parley_client *c = s->c;
    if (c->free_pending) {
        a->rc = PARLEY_ECLOSED;
        return;
    }
    for (size_t i = 0; i < a->nbins; i++)
        if (a->bins[i].len && !a->bins[i].data) {
            a->rc = PARLEY_EINVAL;
            return;
        }
    pbuf *out = &c->scratch;
    if (a->is_ack) {
        if (a->ack_id < 0 || a->nbins > SIO_MAX_ATTACH) {
            a->rc = PARLEY_EINVAL;
            return;
        }
        out->len = 0;
        size_t n;
        int rc = sio_write_head(out, a->nbins ? SIO_BINARY_ACK : SIO_ACK, (unsigned)a->nbins,
                                s->nsp, s->nsp_len, a->ack_id);
        if (rc == 0) rc = pbuf_append(out, "[", 1);
        if (rc == 0) rc = append_args(out, a->args, a->nbins, false, &n);
        if (rc == 0) rc = pbuf_append(out, "]", 1);
        if (rc == 0)
            rc = s->connected ? send_raw(c, out->ptr, out->len, a->bins, a->nbins) : PARLEY_ECLOSED;
        a->rc = rc;
        return;
    }
    bool want_ack = a->fn != NULL;
    int64_t id = want_ack ? s->next_ack : -1;
    int rc = encode_event(s, out, a->event, a->args, a->nbins, id);
    if (rc) {
        a->rc = rc;
        return;
    }
    bool live = s->connected && c->state == CL_OPEN;
    if (a->volatile_ && (!live || !eio_client_writable(c->eio))) return; /* dropped */
    pending_ack *pa = NULL;
    if (want_ack) {
        if (s->nacks >= PARLEY_CLIENT_MAX_PENDING_ACKS) {
            a->rc = PARLEY_EFULL;
            return;
        }
        pa = pcalloc(1, sizeof *pa);
        if (!pa) {
            a->rc = PARLEY_ENOMEM;
            return;
        }
        pa->id = id;
        pa->s = s;
        pa->fn = a->fn;
        pa->user = a->user;
        ptimer_init(&pa->timer, on_ack_timeout);
    }
    if (live) {
        rc = send_raw(c, out->ptr, out->len, a->bins, a->nbins);
        if (rc) {
            free(pa);
            a->rc = rc;
            return;
        }
        if (pa) pa->sent_at = ploop_now(c->loop);
    } else {
        pkt *p = pkt_copy(out, a->bins, a->nbins);
        if (!p) {
            free(pa);
            a->rc = PARLEY_ENOMEM;
            return;
        }
        p->ack_id = id;
        *s->sb_tail = p;
        s->sb_tail = &p->next;
        if (pa) pa->buffered = true;
    }
    if (pa) {
        s->next_ack++;
        pa->next = s->acks;
        s->acks = pa;
        s->nacks++;
        if (a->timeout_ms) ploop_timer_start(c->loop, &pa->timer, a->timeout_ms);
    }
    evcount *ec = count_for(s, a->event);
    if (ec) ec->out++;
}

static void do_emit(void *arg)
{
    parley_client *c = ((emit_arg *)arg)->s->c;
    enter(c);
    do_emit_in(arg);
    leave(c);
}

int parley_sock_emit(parley_sock *s, const char *event, const char *args_json,
                     const parley_bin *bins, size_t nbins)
{
    if (!s || (nbins && !bins)) return PARLEY_EINVAL;
    emit_arg a = {.s = s, .event = event, .args = args_json, .bins = bins, .nbins = nbins};
    int rc = ploop_call(s->c->loop, do_emit, &a);
    return rc ? rc : a.rc;
}

int parley_sock_emit_volatile(parley_sock *s, const char *event, const char *args_json,
                              const parley_bin *bins, size_t nbins)
{
    if (!s || (nbins && !bins)) return PARLEY_EINVAL;
    emit_arg a = {
        .s = s, .event = event, .args = args_json, .bins = bins, .nbins = nbins, .volatile_ = true};
    int rc = ploop_call(s->c->loop, do_emit, &a);
    return rc ? rc : a.rc;
}

int parley_sock_emit_ack(parley_sock *s, const char *event, const char *args_json,
                         const parley_bin *bins, size_t nbins, uint32_t timeout_ms,
                         parley_ack_result_fn fn, void *user)
{
    if (!s || !fn || (nbins && !bins)) return PARLEY_EINVAL;
    emit_arg a = {.s = s,
                  .event = event,
                  .args = args_json,
                  .bins = bins,
                  .nbins = nbins,
                  .timeout_ms = timeout_ms,
                  .fn = fn,
                  .user = user};
    int rc = ploop_call(s->c->loop, do_emit, &a);
    return rc ? rc : a.rc;
}

int parley_sock_ack(parley_sock *s, int64_t ack_id, const char *args_json, const parley_bin *bins,
                    size_t nbins)
{
    if (!s || (nbins && !bins)) return PARLEY_EINVAL;
    emit_arg a = {
        .s = s, .args = args_json, .bins = bins, .nbins = nbins, .is_ack = true, .ack_id = ack_id};
    int rc = ploop_call(s->c->loop, do_emit, &a);
    return rc ? rc : a.rc;
}

/* Reliable sends. */

typedef struct send_arg {
    parley_sock *s;
    const char *event, *args, *id;
    int priority;
    uint32_t ttl_ms;
    parley_send_status_fn fn;
    void *user;
    int rc;
} send_arg;

static void do_send_in(void *arg)
{
    send_arg *a = arg;
    parley_sock *s = a->s;
    parley_client *c = s->c;
    if (c->free_pending || !s->q) {
        a->rc = PARLEY_ECLOSED;
        return;
    }
    if (a->priority < PARLEY_PRIORITY_LOW || a->priority > PARLEY_PRIORITY_URGENT ||
        (a->id && strlen(a->id) != OUTQ_ID_LEN)) {
        a->rc = PARLEY_EINVAL;
        return;
    }
    /* Validate and compact now: what is queued is sent as it is. */
    pbuf probe = {0};
    int rc = encode_event(s, &probe, a->event, a->args, 0, 0);
    pbuf args = {0};
    size_t n;
    if (rc == 0) rc = pbuf_append(&args, "[", 1);
    if (rc == 0) rc = append_args(&args, a->args, 0, false, &n);
    if (rc == 0) rc = pbuf_append(&args, "]", 1);
    pbuf_free(&probe);
    outq_entry *e = NULL;
    if (rc == 0)
        rc = outq_push(s->q, a->priority, a->event, args.ptr, args.len, a->ttl_ms, wall_ms(), a->id,
                       &e);
    pbuf_free(&args);
    if (rc) {
        a->rc = rc;
        return;
    }
    if (a->fn) {
        send_status *ss = pcalloc(1, sizeof *ss);
        if (ss) {
            memcpy(ss->id, e->id, sizeof ss->id);
            ss->fn = a->fn;
            ss->user = a->user;
            if (pmap_put(&s->statuses, ss->id, OUTQ_ID_LEN, ss) != 0) free(ss);
        }
    }
    if (a->fn || s->o.on_send_status) {
        char id[OUTQ_ID_LEN + 1];
        memcpy(id, e->id, sizeof id);
        if (!report(s, id, PARLEY_SEND_QUEUED, 0, NULL)) return;
    }
    arm_expiry(s);
    pump_queue(s);
}

static void do_send(void *arg)
{
    parley_client *c = ((send_arg *)arg)->s->c;
    enter(c);
    do_send_in(arg);
    leave(c);
}

int parley_sock_send(parley_sock *s, const char *event, const char *args_json, int priority,
                     uint32_t ttl_ms, const char *id, parley_send_status_fn status, void *user)
{
    if (!s) return PARLEY_EINVAL;
    send_arg a = {.s = s,
                  .event = event,
                  .args = args_json,
                  .id = id,
                  .priority = priority,
                  .ttl_ms = ttl_ms,
                  .fn = status,
                  .user = user};
    int rc = ploop_call(s->c->loop, do_send, &a);
    return rc ? rc : a.rc;
}

int parley_new_id(char out[37])
{
    uint8_t b[16];
    if (prand_bytes(b, sizeof b) != 0) return PARLEY_EIO;
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = 0;
    return 0;
}

typedef struct counts_arg {
    parley_sock *s;
    void (*cb)(const char *event, uint64_t in, uint64_t out, void *user);
    void *user;
} counts_arg;

static void do_counts(void *arg)
{
    counts_arg *a = arg;
    for (size_t i = 0; i < a->s->ncounts; i++)
        a->cb(a->s->counts[i].name, a->s->counts[i].in, a->s->counts[i].out, a->user);
}

void parley_sock_event_counts(parley_sock *s,
                              void (*cb)(const char *event, uint64_t in, uint64_t out, void *user),
                              void *user)
{
    if (!s || !cb) return;
    counts_arg a = {.s = s, .cb = cb, .user = user};
    ploop_call(s->c->loop, do_counts, &a);
}

parley_loop *parley_client__loop(parley_client *c)
{
    return c->loop;
}

void parley_client__feed(parley_client *c, bool binary, const uint8_t *data, size_t len)
{
    if (c->free_pending) return;
    int state = c->state;
    c->state = CL_OPEN;
    enter(c);
    eio_on_message_in(c->eio, binary, data, len);
    if (!leave(c) && c->state == CL_OPEN) c->state = state;
}
