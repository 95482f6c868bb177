/*
 * The Redis cluster adapter (see adapter.h). Wire format: read from
 * @socket.io/redis-adapter 8.3.0 dist/index.js (RedisAdapter: channels,
 * onmessage, onrequest, broadcast, serverCount) and @socket.io/redis-emitter
 * 5.1.0 dist/index.js; nothing copied.
 */
#include "cluster/adapter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/map.h"
#include "base/ratelimit.h"
#include "base/util.h"
#include "cluster/redis_conn.h"
#include "codec/json.h"
#include "server/adapter.h"
#include "server/sio_internal.h"

/* The adapter's request types (RequestType in dist/index.js). */
enum {
    REQ_SOCKETS = 0,
    REQ_ALL_ROOMS = 1,
    REQ_REMOTE_JOIN = 2,
    REQ_REMOTE_LEAVE = 3,
    REQ_REMOTE_DISCONNECT = 4,
    REQ_REMOTE_FETCH = 5,
    REQ_SERVER_SIDE_EMIT = 6,
    REQ_BROADCAST = 7,
};

#define NODES_INTERVAL_MS 2000
#define MAX_REQ_ROOMS     64

struct parley_cluster {
    parley_server *srv;
    parley_loop *loop;
    pcluster_opts o;
    char *prefix;
    char uid[16];
    predis *pub, *sub;
    ptls_ctx *tls; /* rediss:// */
    penv_dec dec;
    pbuf msg;     /* outgoing message */
    pbuf chan;    /* outgoing channel name */
    pbuf scratch; /* string decoding */
    pbuf rooms;   /* request rooms, NUL-separated */
    parley_socket **sel;
    size_t sel_cap;
    ptimer nodes_timer;
    pcluster_stats st;
    plog_limit log_bad;
    pbuf sse; /* an inbound serverSideEmit's arguments, during its callback */
    /* serverSideEmit with acknowledgements we wait for. */
    struct sse_wait *waits;
    uint64_t next_wait;
    /* PUBSUB NUMSUB replies due, in order: 0 for the periodic count, else
     * the id of the sse_wait it is for. */
    uint64_t numsub_q[64];
    unsigned numsub_head, numsub_n;
    unsigned depth; /* inside an application callback */
    bool leave_pending;
    struct bcast_ack *backs; /* broadcasts with acknowledgements in flight */
    struct {
        char *chan; /* NULL: a free slot */
        pcluster_private_fn fn;
        void *user;
    } priv[PCLUSTER_PRIVATE_MAX];
};

/* A broadcast with acknowledgements from another node: one reference per
 * socket it went to (each socket's ack callback runs exactly once); c is
 * NULL once the adapter is gone. */
typedef struct bcast_ack {
    struct bcast_ack *next;
    pcluster *c;
    unsigned refs;
    char request_id[PENV_MAX_UID + 1];
    char nsp[PENV_MAX_ROOM_LEN + 1];
} bcast_ack;

typedef struct sse_wait {
    struct sse_wait *next;
    pcluster *c;
    uint64_t id;
    char request_id[24];
    char *nsp;
    pbuf request;   /* the JSON request, published once the count is known */
    pbuf responses; /* "[a,b" (closed when handed over) */
    unsigned want, got;
    int type;      /* REQ_SERVER_SIDE_EMIT or REQ_REMOTE_FETCH */
    size_t items;  /* elements in responses so far */
    ptimer timer;
    parley_cluster_ack_fn fn;
    void *user;
} sse_wait;

static void wait_done(pcluster *c, sse_wait *w, int err);
static void really_free(pcluster *c);

void pcluster_opts_init(pcluster_opts *o)
{
    memset(o, 0, sizeof *o);
    o->prefix = "socket.io";
    penv_limits_init(&o->lim);
}

const char *pcluster_uid(const pcluster *c)
{
    return c->uid;
}

void pcluster_get_stats(const pcluster *c, pcluster_stats *out)
{
    *out = c->st;
    out->pub_up = predis_ready(c->pub);
    out->sub_up = predis_ready(c->sub);
}

/* ---- channels ---- */

/* prefix + kind + "#" + nsp + "#" into c->chan (NUL-terminated). */
static int channel(pcluster *c, const char *kind, const char *nsp, const char *room)
{
    c->chan.len = 0;
    int rc = pbuf_append_str(&c->chan, c->prefix);
    if (rc == 0) rc = pbuf_append_str(&c->chan, kind);
    if (rc == 0) rc = pbuf_append_str(&c->chan, "#");
    if (rc == 0) rc = pbuf_append_str(&c->chan, nsp);
    if (rc == 0) rc = pbuf_append_str(&c->chan, "#");
    if (rc == 0 && room) {
        rc = pbuf_append_str(&c->chan, room);
        if (rc == 0) rc = pbuf_append_str(&c->chan, "#");
    }
    if (rc == 0) rc = pbuf_append(&c->chan, "", 1);
    if (rc == 0) c->chan.len--;
    return rc;
}

static void subscribe_nsp(pcluster *c, const char *nsp)
{
    if (!predis_ready(c->sub)) return; /* on_ready subscribes every namespace */
    /* The pattern: glob characters of the name escaped (Node's adapter
     * does not escape; for names without them it is the same pattern). */
    c->scratch.len = 0;
    int rc = pbuf_append_str(&c->scratch, c->prefix);
    if (rc == 0) rc = pbuf_append(&c->scratch, "#", 1);
    for (const char *p = nsp; rc == 0 && *p; p++) {
        if (strchr("*?[]\\", *p)) rc = pbuf_append(&c->scratch, "\\", 1);
        if (rc == 0) rc = pbuf_append(&c->scratch, p, 1);
    }
    if (rc == 0) rc = pbuf_append(&c->scratch, "#*", 2);
    if (rc == 0) {
        const char *argv[2] = {"PSUBSCRIBE", (const char *)c->scratch.ptr};
        size_t lens[2] = {10, c->scratch.len};
        rc = predis_command(c->sub, 2, argv, lens);
    }
    static const char *const kinds[] = {"-request", "-response"};
    for (int i = 0; rc == 0 && i < 3; i++) {
        rc = channel(c, kinds[i ? 1 : 0], nsp, i == 2 ? c->uid : NULL);
        if (rc == 0) {
            const char *argv[2] = {"SUBSCRIBE", (const char *)c->chan.ptr};
            size_t lens[2] = {9, c->chan.len};
            rc = predis_command(c->sub, 2, argv, lens);
        }
    }
    if (rc) predis_drop(c->sub, rc);
}

static void on_nsp(parley_nsp *n, void *user)
{
    subscribe_nsp(user, parley_nsp_name(n));
}

/* ---- publishing ---- */

static int publish(pcluster *c)
{
    if (!predis_ready(c->pub)) return PARLEY_ECLOSED;
    const char *argv[3] = {"PUBLISH", (const char *)c->chan.ptr, (const char *)c->msg.ptr};
    size_t lens[3] = {7, c->chan.len, c->msg.len};
    return predis_command(c->pub, 3, argv, lens);
}

/* Keeps the reused buffers from holding on to one huge message. */
static void trim(pbuf *b)
{
    if (b->cap > 256 * 1024) pbuf_reset(b, 4096);
}

static void on_broadcast(parley_nsp *n, const parley_target *to, const char *event,
                         const json_val *args, const parley_bin *bins, size_t nbins, void *user)
{
    pcluster *c = user;
    penv_out m = {
        .uid = c->uid,
        .nsp = parley_nsp_name(n),
        .event = event,
        .args = args,
        .bins = bins,
        .nbins = nbins,
        .rooms = to ? to->rooms : NULL,
        .nrooms = to ? to->nrooms : 0,
        .except = to ? to->except : NULL,
        .nexcept = to ? to->nexcept : 0,
        .except_id = to && to->except_socket ? parley_socket_id(to->except_socket) : NULL,
        .volatile_ = to && to->volatile_,
    };
    c->msg.len = 0;
    int rc = penv_encode(&c->msg, &c->scratch, &m, c->o.lim.max_depth);
    /* The adapter's rule: exactly one room goes to that room's channel. */
    if (rc == 0) rc = channel(c, "", m.nsp, m.nrooms == 1 ? m.rooms[0] : NULL);
    if (rc == 0) rc = publish(c);
    if (rc)
        c->st.publish_failures++;
    else
        c->st.published++;
    trim(&c->msg);
    trim(&c->scratch);
}

/* ---- inbound broadcasts ---- */

static void bad(pcluster *c, const char *what, const char *why)
{
    c->st.malformed++;
    uint64_t held = 0;
    if (plog_limit_ok(&c->log_bad, ploop_now(c->loop), 10000, &held))
        plog_warn("cluster: ignored a %s from Redis: %s (%llu more ignored since the last such "
                  "line; counted in parley_cluster_malformed_total)",
                  what, why, (unsigned long long)held);
}

static void on_channel_message(pcluster *c, const presp_val *chan, const presp_val *msg)
{
    if (!msg->p || !chan->p) {
        bad(c, "message", "no payload");
        return;
    }
    penv_msg m;
    const char *why = NULL;
    int rc = penv_decode(&c->dec, msg->p, msg->len, &m, &why);
    if (rc) {
        bad(c, "broadcast", why);
        return;
    }
    if (!strcmp(m.uid, c->uid)) {
        c->st.own++;
        return;
    }
    /* The channel must be the packet's namespace's (as the adapter's
     * "ignore different namespace"). */
    size_t plen = strlen(c->prefix), nlen = strlen(m.nsp);
    if (chan->len < plen + nlen + 2 || memcmp(chan->p, c->prefix, plen) != 0 ||
        chan->p[plen] != '#' || memcmp(chan->p + plen + 1, m.nsp, nlen) != 0 ||
        chan->p[plen + 1 + nlen] != '#') {
        bad(c, "broadcast", "channel and namespace differ");
        return;
    }
    parley_nsp *n = parley_server__nsp_find(c->srv, m.nsp, nlen);
    if (!n) return; /* not served here */
    parley_target to = {.rooms = m.rooms,
                        .nrooms = m.nrooms,
                        .except = m.except,
                        .nexcept = m.nexcept,
                        .volatile_ = m.volatile_};
    rc = parley_broadcast__local(n, &to, m.event, m.args, m.bins, m.nbins);
    if (rc < 0) {
        bad(c, "broadcast", parley_strerror(rc));
        return;
    }
    c->st.received++;
}

/* ---- requests ---- */

/* Decodes a JSON array of room names into c->rooms; *n their count. */
static int req_rooms(pcluster *c, const json_val *arr, size_t *n)
{
    c->rooms.len = 0;
    *n = 0;
    if (arr->type != JSON_ARRAY) return PARLEY_EPROTO;
    json_iter it;
    json_iter_init(&it, arr);
    json_val e;
    char name[PENV_MAX_ROOM_LEN + 1];
    while (json_array_next(&it, &e)) {
        if (*n >= MAX_REQ_ROOMS) return PARLEY_ELIMIT;
        long len;
        if (e.type == JSON_STRING) {
            len = json_string_decode(&e, name, sizeof name);
            if (len <= 0 || (size_t)len > PENV_MAX_ROOM_LEN || memchr(name, 0, (size_t)len))
                return PARLEY_EPROTO;
        } else if (e.type == JSON_NUMBER && e.len <= 24) {
            memcpy(name, e.p, e.len);
            len = (long)e.len;
        } else {
            return PARLEY_EPROTO;
        }
        int rc = pbuf_append(&c->rooms, name, (size_t)len);
        if (rc == 0) rc = pbuf_append(&c->rooms, "", 1);
        if (rc) return rc;
        (*n)++;
    }
    return 0;
}

/* In room r (NUL-terminated): the socket's id or one of its rooms. */
static bool socket_in(const parley_socket *s, const char *r)
{
    size_t rl = strlen(r);
    if (!strcmp(parley_socket_id(s), r)) return true;
    size_t nr = parley_socket__nrooms(s);
    for (size_t i = 0; i < nr; i++) {
        size_t len;
        const char *name = parley_socket__room(s, i, &len);
        if (len == rl && memcmp(name, r, rl) == 0) return true;
    }
    return false;
}

static bool in_any(const parley_socket *s, const char *list, size_t n)
{
    for (size_t i = 0; i < n; i++, list += strlen(list) + 1)
        if (socket_in(s, list)) return true;
    return false;
}

/* The sockets of n selected by opts {rooms, except} (the base adapter's
 * rule: in one of the rooms, or every socket when none; in none of the
 * except rooms) into c->sel. The count, or a negative error. */
static long select_sockets(pcluster *c, parley_nsp *n, const json_val *opts)
{
    json_val rooms = {0}, except = {0};
    size_t nrooms = 0, nexcept = 0;
    if (opts->type != JSON_OBJECT) return PARLEY_EPROTO;
    /* Both lists live in c->rooms one after the other. */
    pbuf keep = {0};
    int rc = 0;
    if (json_object_get(opts, "except", &except) && except.type != JSON_NULL) {
        rc = req_rooms(c, &except, &nexcept);
        if (rc) return rc;
        rc = pbuf_append(&keep, c->rooms.ptr, c->rooms.len);
        if (rc) return rc;
    }
    if (json_object_get(opts, "rooms", &rooms) && rooms.type != JSON_NULL) {
        rc = req_rooms(c, &rooms, &nrooms);
        if (rc) {
            pbuf_free(&keep);
            return rc;
        }
    } else {
        c->rooms.len = 0;
    }
    size_t total = parley_nsp__count(n);
    if (total > c->sel_cap) {
        parley_socket **v = realloc(c->sel, total * sizeof *v);
        if (!v) {
            pbuf_free(&keep);
            return PARLEY_ENOMEM;
        }
        c->sel = v;
        c->sel_cap = total;
    }
    size_t pos = 0, k = 0;
    parley_socket *s;
    while ((s = parley_nsp__socket_next(n, &pos)) && k < total) {
        if (nrooms && !in_any(s, (const char *)c->rooms.ptr, nrooms)) continue;
        if (nexcept && in_any(s, (const char *)keep.ptr, nexcept)) continue;
        c->sel[k++] = s;
    }
    pbuf_free(&keep);
    return (long)k;
}

/* Publishes c->msg on <prefix><kind>#<nsp># ("-request", "-response");
 * a failure is counted. c->msg is trimmed either way. */
static int publish_to(pcluster *c, const char *kind, const char *nsp)
{
    int rc = channel(c, kind, nsp, NULL);
    if (rc == 0) rc = publish(c);
    if (rc) c->st.publish_failures++;
    trim(&c->msg);
    return rc;
}

/* A message that could not be built: counted as not published. */
static int publish_failed(pcluster *c, int rc)
{
    c->st.publish_failures++;
    trim(&c->msg);
    return rc;
}

static void respond(pcluster *c, const char *nsp)
{
    publish_to(c, "-response", nsp);
}

static int put_socket(pbuf *b, parley_socket *s)
{
    int rc = pbuf_append_str(b, "{\"id\":");
    const char *id = parley_socket_id(s);
    if (rc == 0) rc = json_append_string(b, id, strlen(id));
    /* The handshake Node's RemoteSocket carries; what the server keeps of
     * it: the peer address. */
    if (rc == 0)
        rc = pbuf_append_str(b, ",\"handshake\":{\"headers\":{},\"time\":\"\",\"address\":");
    const char *ip = parley_socket__peer_ip(s);
    if (rc == 0) rc = json_append_string(b, ip, strlen(ip));
    if (rc == 0)
        rc = pbuf_append_str(b, ",\"xdomain\":false,\"secure\":false,\"issued\":0,\"url\":\"\","
                                "\"query\":{},\"auth\":{}},\"rooms\":[");
    if (rc == 0) rc = json_append_string(b, id, strlen(id));
    size_t nr = parley_socket__nrooms(s);
    for (size_t i = 0; rc == 0 && i < nr; i++) {
        size_t len;
        const char *r = parley_socket__room(s, i, &len);
        rc = pbuf_append(b, ",", 1);
        if (rc == 0) rc = json_append_string(b, r, len);
    }
    if (rc == 0) rc = pbuf_append_str(b, "],\"data\":{}}");
    return rc;
}

static void bcast_unref(bcast_ack *b)
{
    if (--b->refs) return;
    if (b->c)
        for (bcast_ack **pp = &b->c->backs; *pp; pp = &(*pp)->next)
            if (*pp == b) {
                *pp = b->next;
                break;
            }
    free(b);
}

/* A client's acknowledgement: {type: 9, requestId, packet: first arg}
 * (MessagePack, as the adapter's BROADCAST_ACK response). */
static void on_client_ack(parley_socket *s, int err, const parley_args *args, void *user)
{
    (void)s;
    bcast_ack *b = user;
    pcluster *c = b->c;
    json_val arr, first;
    if (err == 0 && c &&
        json_parse(args->json, args->json_len, c->o.lim.max_depth, &arr, NULL) == 0 &&
        arr.type == JSON_ARRAY) {
        json_iter it;
        json_iter_init(&it, &arr);
        bool has = json_array_next(&it, &first);
        c->msg.len = 0;
        int rc = penv_put_map(&c->msg, 3);
        if (rc == 0) rc = penv_put_str(&c->msg, "type", 4);
        if (rc == 0) rc = penv_put_int(&c->msg, 9);
        if (rc == 0) rc = penv_put_str(&c->msg, "requestId", 9);
        if (rc == 0) rc = penv_put_str(&c->msg, b->request_id, strlen(b->request_id));
        if (rc == 0) rc = penv_put_str(&c->msg, "packet", 6);
        if (rc == 0 && has)
            rc = penv_put_json(&c->msg, &c->scratch, &first, args->bins, args->nbins,
                               c->o.lim.max_depth);
        else if (rc == 0)
            rc = pbuf_append(&c->msg, "\xc0", 1);
        if (rc == 0) rc = channel(c, "-response", b->nsp, NULL);
        if (rc == 0) rc = publish(c);
        if (rc) c->st.publish_failures++;
        trim(&c->msg);
    }
    bcast_unref(b);
}

/* The selection rule of the base adapter for C string lists. */
static bool in_list(const parley_socket *s, const char *const *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (socket_in(s, v[i])) return true;
    return false;
}

/* BROADCAST (type 7, MessagePack): Node's io.timeout(ms).emit(ev, cb). */
static void on_broadcast_request(pcluster *c, parley_nsp *n, const presp_val *msg)
{
    penv_msg m;
    const char *why = NULL;
    if (penv_decode_request(&c->dec, msg->p, msg->len, &m, &why) != 0) {
        bad(c, "request", why);
        return;
    }
    if (!strcmp(m.uid, c->uid)) return;
    if (strcmp(m.nsp, parley_nsp_name(n)) != 0) {
        bad(c, "request", "namespace");
        return;
    }
    size_t total = parley_nsp__count(n);
    if (total > c->sel_cap) {
        parley_socket **v = realloc(c->sel, total * sizeof *v);
        if (!v) return;
        c->sel = v;
        c->sel_cap = total;
    }
    size_t pos = 0, k = 0;
    parley_socket *s;
    while ((s = parley_nsp__socket_next(n, &pos)) && k < total) {
        if (m.nrooms && !in_list(s, m.rooms, m.nrooms)) continue;
        if (m.nexcept && in_list(s, m.except, m.nexcept)) continue;
        c->sel[k++] = s;
    }
    bcast_ack *b = pcalloc(1, sizeof *b);
    if (!b) return;
    b->c = c;
    b->refs = 1; /* ours, until every socket has been sent to */
    snprintf(b->request_id, sizeof b->request_id, "%s", m.request_id);
    snprintf(b->nsp, sizeof b->nsp, "%s", m.nsp);
    b->next = c->backs;
    c->backs = b;
    /* Not volatile: a dropped packet would never call its ack back. */
    parley_emit_opts eo = {
        .size = sizeof eo,
        .ack = on_client_ack,
        .ack_user = b,
        .timeout_ms = m.timeout_ms > 0 && m.timeout_ms < 3600000 ? (uint32_t)m.timeout_ms : 60000};
    unsigned count = 0;
    for (size_t i = 0; i < k; i++) {
        b->refs++;
        if (parley_emit_opts_send(c->sel[i], &eo, m.event, m.args, m.bins, m.nbins) == 0)
            count++;
        else
            b->refs--;
    }
    c->st.requests++;
    /* {type: 8, requestId, clientCount} (JSON) */
    c->msg.len = 0;
    if (pbuf_appendf(&c->msg, "{\"type\":8,\"requestId\":") == 0 &&
        json_append_string(&c->msg, b->request_id, strlen(b->request_id)) == 0 &&
        pbuf_appendf(&c->msg, ",\"clientCount\":%u}", count) == 0)
        respond(c, b->nsp);
    bcast_unref(b);
}

/* A response: only serverSideEmit acknowledgements are waited for. */
static void on_response(pcluster *c, const presp_val *msg)
{
    if (!c->waits || !msg->p || msg->len == 0 || msg->p[0] != '{') return;
    if (msg->len > c->o.lim.max_message) {
        bad(c, "response", "too large");
        return;
    }
    json_val r, v, rid, data;
    if (json_parse((const char *)msg->p, msg->len, c->o.lim.max_depth, &r, NULL) != 0 ||
        r.type != JSON_OBJECT) {
        bad(c, "response", "not a JSON object");
        return;
    }
    if (!json_object_get(&r, "requestId", &rid) || rid.type != JSON_STRING) return;
    sse_wait *w = c->waits;
    while (w && !(rid.len == strlen(w->request_id) + 2 &&
                  memcmp(rid.p + 1, w->request_id, rid.len - 2) == 0))
        w = w->next;
    if (!w || w->got >= w->want) return; /* another node's traffic */
    int rc = 0;
    if (w->type == REQ_SERVER_SIDE_EMIT) {
        int64_t type;
        if (!json_object_get(&r, "type", &v) || !json_int(&v, &type) ||
            type != REQ_SERVER_SIDE_EMIT)
            return;
        /* `data` may be absent (an acknowledgement without argument). */
        rc = pbuf_append(&w->responses, w->items ? "," : "", w->items ? 1 : 0);
        if (rc == 0) {
            if (json_object_get(&r, "data", &data))
                rc = json_compact(&w->responses, &data);
            else
                rc = pbuf_append(&w->responses, "null", 4);
        }
        w->items++;
    } else {
        /* fetchSockets: {requestId, sockets: [...]}, appended flat. A
         * response without the array still counts (as the adapter). */
        json_val socks, e;
        if (json_object_get(&r, "sockets", &socks) && socks.type == JSON_ARRAY) {
            json_iter it;
            json_iter_init(&it, &socks);
            while (rc == 0 && json_array_next(&it, &e)) {
                if (e.type != JSON_OBJECT) continue;
                rc = pbuf_append(&w->responses, w->items ? "," : "", w->items ? 1 : 0);
                if (rc == 0) rc = json_compact(&w->responses, &e);
                w->items++;
            }
        }
    }
    if (rc) {
        wait_done(c, w, rc);
        return;
    }
    if (++w->got == w->want) wait_done(c, w, 0);
}

static void on_request(pcluster *c, const presp_val *chan, const presp_val *msg)
{
    size_t plen = strlen(c->prefix);
    static const char req[] = "-request#";
    /* The namespace from the channel: <prefix>-request#<nsp># */
    if (!msg->p || chan->len < plen + sizeof req || memcmp(chan->p, c->prefix, plen) ||
        memcmp(chan->p + plen, req, sizeof req - 1) || chan->p[chan->len - 1] != '#') {
        on_response(c, msg);
        return;
    }
    const char *nsp = (const char *)chan->p + plen + sizeof req - 1;
    size_t nsp_len = chan->len - plen - (sizeof req - 1) - 1;
    parley_nsp *n = parley_server__nsp_find(c->srv, nsp, nsp_len);
    if (!n) return;
    if (msg->len == 0 || msg->p[0] != '{') {
        /* MessagePack requests: broadcasts with acknowledgements. */
        {
            on_broadcast_request(c, n, msg);
            return;
        }
    }
    if (msg->len > c->o.lim.max_message) {
        bad(c, "request", "too large");
        return;
    }
    json_val r, v;
    if (json_parse((const char *)msg->p, msg->len, c->o.lim.max_depth, &r, NULL) != 0 ||
        r.type != JSON_OBJECT) {
        bad(c, "request", "not a JSON object");
        return;
    }
    int64_t type;
    if (!json_object_get(&r, "type", &v) || !json_int(&v, &type)) {
        bad(c, "request", "no type");
        return;
    }
    json_val uid, rid, opts;
    bool has_uid = json_object_get(&r, "uid", &uid) && uid.type == JSON_STRING;
    bool has_rid = json_object_get(&r, "requestId", &rid) && rid.type == JSON_STRING;
    bool has_opts = json_object_get(&r, "opts", &opts) && opts.type == JSON_OBJECT;
    if (has_uid && uid.len == strlen(c->uid) + 2 && !memcmp(uid.p + 1, c->uid, uid.len - 2))
        return; /* our own */
    long k;
    size_t nr = 0;
    json_val rooms;
    switch (type) {
    case REQ_REMOTE_JOIN:
    case REQ_REMOTE_LEAVE:
        if (!has_opts) {
            /* The one-socket form ({sid, room}, 7.x) with a response. */
            json_val sid, room;
            char sbuf[32], rbuf[PENV_MAX_ROOM_LEN + 1];
            if (!json_object_get(&r, "sid", &sid) || !json_object_get(&r, "room", &room)) {
                bad(c, "request", "no opts");
                return;
            }
            long sl = json_string_decode(&sid, sbuf, sizeof sbuf - 1);
            long rl = json_string_decode(&room, rbuf, sizeof rbuf - 1);
            if (sl <= 0 || rl <= 0) {
                bad(c, "request", "sid or room");
                return;
            }
            sbuf[sl] = 0;
            parley_socket *s = NULL;
            size_t pos = 0;
            while ((s = parley_nsp__socket_next(n, &pos)) && strcmp(parley_socket_id(s), sbuf)) {
            }
            if (!s) return;
            if (type == REQ_REMOTE_JOIN)
                parley_join_n(s, rbuf, (size_t)rl);
            else
                parley_leave_n(s, rbuf, (size_t)rl);
            c->st.requests++;
            if (!has_rid) return;
            c->msg.len = 0;
            if (pbuf_append_str(&c->msg, "{\"requestId\":") || json_compact(&c->msg, &rid) ||
                pbuf_append_str(&c->msg, "}"))
                return;
            {
                respond(c, parley_nsp_name(n));
                return;
            }
        }
        if (!json_object_get(&r, "rooms", &rooms)) {
            bad(c, "request", "no rooms");
            return;
        }
        k = select_sockets(c, n, &opts);
        if (k < 0) {
            bad(c, "request", parley_strerror((int)k));
            return;
        }
        if (req_rooms(c, &rooms, &nr) != 0) {
            bad(c, "request", "rooms");
            return;
        }
        for (long i = 0; i < k; i++) {
            const char *name = (const char *)c->rooms.ptr;
            for (size_t j = 0; j < nr; j++, name += strlen(name) + 1) {
                if (type == REQ_REMOTE_JOIN)
                    parley_join_n(c->sel[i], name, strlen(name));
                else
                    parley_leave_n(c->sel[i], name, strlen(name));
            }
        }
        c->st.requests++;
        return;
    case REQ_REMOTE_DISCONNECT: {
        json_val close;
        int close_transport = json_object_get(&r, "close", &close) && close.type == JSON_TRUE;
        if (!has_opts) {
            bad(c, "request", "no opts");
            return;
        }
        k = select_sockets(c, n, &opts);
        if (k < 0) {
            bad(c, "request", parley_strerror((int)k));
            return;
        }
        for (long i = 0; i < k; i++) parley_disconnect(c->sel[i], close_transport);
        c->st.requests++;
        return;
    }
    case REQ_SOCKETS:
    case REQ_REMOTE_FETCH: {
        if (!has_rid) {
            bad(c, "request", "no requestId");
            return;
        }
        json_val none = {.type = JSON_OBJECT, .p = "{}", .len = 2};
        /* SOCKETS has {rooms} at the top level; FETCH has opts. */
        k = select_sockets(c, n, type == REQ_SOCKETS ? &r : has_opts ? &opts : &none);
        if (k < 0) {
            bad(c, "request", parley_strerror((int)k));
            return;
        }
        c->msg.len = 0;
        int rc = pbuf_append_str(&c->msg, "{\"requestId\":");
        if (rc == 0) rc = json_compact(&c->msg, &rid);
        if (rc == 0) rc = pbuf_append_str(&c->msg, ",\"sockets\":[");
        for (long i = 0; rc == 0 && i < k; i++) {
            if (i) rc = pbuf_append(&c->msg, ",", 1);
            if (rc) break;
            if (type == REQ_SOCKETS) {
                const char *id = parley_socket_id(c->sel[i]);
                rc = json_append_string(&c->msg, id, strlen(id));
            } else {
                rc = put_socket(&c->msg, c->sel[i]);
            }
        }
        if (rc == 0) rc = pbuf_append_str(&c->msg, "]}");
        if (rc) return;
        c->st.requests++;
        {
            respond(c, parley_nsp_name(n));
            return;
        }
    }
    case REQ_SERVER_SIDE_EMIT: {
        json_val data, ev, e;
        if (!json_object_get(&r, "data", &data) || data.type != JSON_ARRAY) {
            bad(c, "request", "no data");
            return;
        }
        char ack_id[PENV_MAX_UID + 1] = "";
        if (has_rid) {
            /* With an acknowledgement: the id goes to the application,
             * which answers with parley_cluster_ack. */
            long il = json_string_decode(&rid, ack_id, sizeof ack_id - 1);
            if (il <= 0) {
                bad(c, "request", "requestId");
                return;
            }
            for (long i = 0; i < il; i++)
                if (!(ack_id[i] == '-' || ack_id[i] == '_' ||
                      (ack_id[i] >= '0' && ack_id[i] <= '9') ||
                      ((ack_id[i] | 0x20) >= 'a' && (ack_id[i] | 0x20) <= 'z'))) {
                    bad(c, "request", "requestId");
                    return;
                }
            ack_id[il] = 0;
        }
        json_iter it;
        json_iter_init(&it, &data);
        if (!json_array_next(&it, &ev) || ev.type != JSON_STRING) {
            bad(c, "request", "no event name");
            return;
        }
        char name[257];
        long nl = json_string_decode(&ev, name, sizeof name - 1);
        if (nl <= 0 || memchr(name, 0, (size_t)nl)) {
            bad(c, "request", "event name");
            return;
        }
        name[nl] = 0;
        /* Its own buffer: the callback may broadcast or emit, which use
         * the others. */
        c->sse.len = 0;
        int rc = pbuf_append(&c->sse, "[", 1);
        bool first = true;
        while (rc == 0 && json_array_next(&it, &e)) {
            if (!first) rc = pbuf_append(&c->sse, ",", 1);
            first = false;
            if (rc == 0) rc = json_compact(&c->sse, &e);
        }
        if (rc == 0) rc = pbuf_append(&c->sse, "]", 2);
        if (rc) return;
        c->st.requests++;
        if (c->o.on_server_side_emit) {
            c->depth++;
            c->o.on_server_side_emit(n, name, (const char *)c->sse.ptr, c->sse.len - 1,
                                     has_rid ? ack_id : NULL, c->o.user);
            if (--c->depth == 0 && c->leave_pending) {
                really_free(c);
                return;
            }
        }
        trim(&c->sse);
        return;
    }
    case REQ_ALL_ROOMS: {
        /* Every room of the namespace here, socket-id rooms included (as
         * the adapter's rooms map). */
        if (!has_rid) {
            bad(c, "request", "no requestId");
            return;
        }
        pmap seen = {0};
        c->msg.len = 0;
        int rc = pbuf_append_str(&c->msg, "{\"requestId\":");
        if (rc == 0) rc = json_compact(&c->msg, &rid);
        if (rc == 0) rc = pbuf_append_str(&c->msg, ",\"rooms\":[");
        bool first = true;
        size_t pos = 0;
        parley_socket *s;
        while (rc == 0 && (s = parley_nsp__socket_next(n, &pos))) {
            const char *id = parley_socket_id(s);
            if (!first) rc = pbuf_append(&c->msg, ",", 1);
            first = false;
            if (rc == 0) rc = json_append_string(&c->msg, id, strlen(id));
            size_t nrs = parley_socket__nrooms(s);
            for (size_t i = 0; rc == 0 && i < nrs; i++) {
                size_t len;
                const char *name = parley_socket__room(s, i, &len);
                if (pmap_get(&seen, name, len)) continue;
                rc = pmap_put(&seen, name, len, s);
                if (rc == 0) rc = pbuf_append(&c->msg, ",", 1);
                if (rc == 0) rc = json_append_string(&c->msg, name, len);
            }
        }
        pmap_free(&seen);
        if (rc == 0) rc = pbuf_append_str(&c->msg, "]}");
        if (rc) return;
        c->st.requests++;
        {
            respond(c, parley_nsp_name(n));
            return;
        }
    }
    default:
        /* Kinds after BROADCAST (7 arrives as MessagePack, above). */
        c->st.unsupported++;
        return;
    }
}

/* ---- connections ---- */

static int priv_command(pcluster *c, const char *cmd, const char *chan)
{
    const char *argv[2] = {cmd, chan};
    size_t lens[2] = {strlen(cmd), strlen(chan)};
    return predis_command(c->sub, 2, argv, lens);
}

static void sub_ready(predis *r, void *user)
{
    (void)r;
    pcluster *c = user;
    size_t pos = 0;
    parley_nsp *n;
    while ((n = parley_server__nsp_next(c->srv, &pos))) subscribe_nsp(c, parley_nsp_name(n));
    for (size_t i = 0; i < PCLUSTER_PRIVATE_MAX; i++) {
        int rc = c->priv[i].chan ? priv_command(c, "SUBSCRIBE", c->priv[i].chan) : 0;
        if (rc) {
            predis_drop(c->sub, rc);
            return;
        }
    }
}

/* A message on a node-private channel: true when it was one. */
static bool on_private(pcluster *c, const presp_val *chan, const presp_val *msg)
{
    if (!chan->p) return false;
    for (size_t i = 0; i < PCLUSTER_PRIVATE_MAX; i++) {
        const char *name = c->priv[i].chan;
        if (!name || strlen(name) != chan->len || memcmp(name, chan->p, chan->len) != 0) continue;
        if (!msg->p) {
            bad(c, "private message", "no payload");
            return true;
        }
        c->depth++;
        c->priv[i].fn((const char *)msg->p, msg->len, c->priv[i].user);
        if (--c->depth == 0 && c->leave_pending) really_free(c);
        return true;
    }
    return false;
}

static void sub_reply(predis *r, const presp_reply *rep, void *user)
{
    (void)r;
    pcluster *c = user;
    if (rep->type == '-') {
        plog_warn("redis subscriber: %.*s", (int)PARLEY_MIN(rep->v.len, 200),
                  (const char *)rep->v.p);
        return;
    }
    if (rep->type != '*' || rep->n < 3 || !rep->el[0].p) return;
    const presp_val *kind = &rep->el[0];
    if (kind->len == 8 && !memcmp(kind->p, "pmessage", 8) && rep->n == 4)
        on_channel_message(c, &rep->el[2], &rep->el[3]);
    else if (kind->len == 7 && !memcmp(kind->p, "message", 7) &&
             !on_private(c, &rep->el[1], &rep->el[2]))
        on_request(c, &rep->el[1], &rep->el[2]);
    /* subscribe / psubscribe confirmations: nothing to do */
}

/* PUBSUB NUMSUB of nsp's request channel; the reply goes to `id` (0: the
 * periodic count of "/"). */
static int numsub(pcluster *c, const char *nsp, uint64_t id)
{
    if (c->numsub_n == PARLEY_ARRAY_LEN(c->numsub_q)) return PARLEY_EFULL;
    int rc = channel(c, "-request", nsp, NULL);
    if (rc) return rc;
    const char *argv[3] = {"PUBSUB", "NUMSUB", (const char *)c->chan.ptr};
    size_t lens[3] = {6, 6, c->chan.len};
    rc = predis_command(c->pub, 3, argv, lens);
    if (rc) return rc;
    c->numsub_q[(c->numsub_head + c->numsub_n++) % PARLEY_ARRAY_LEN(c->numsub_q)] = id;
    return 0;
}

static void ask_nodes(pcluster *c)
{
    numsub(c, "/", 0);
}

/* The server count for a serverSideEmit with acknowledgements arrived:
 * publish the request, or finish at once when nobody else is there. */
static void wait_counted(pcluster *c, uint64_t id, unsigned count)
{
    sse_wait *w = c->waits;
    while (w && w->id != id) w = w->next;
    if (!w) return;
    w->want = count > 0 ? count - 1 : 0; /* not ourselves */
    if (w->want == 0) {
        wait_done(c, w, 0);
        return;
    }
    c->msg.len = 0;
    int rc = pbuf_append(&c->msg, w->request.ptr, w->request.len);
    if (rc == 0) rc = channel(c, "-request", w->nsp, NULL);
    if (rc == 0) rc = publish(c);
    pbuf_free(&w->request);
    if (rc) {
        c->st.publish_failures++;
        wait_done(c, w, rc);
    }
}

static void on_nodes_timer(ptimer *t)
{
    pcluster *c = PARLEY_CONTAINER_OF(t, pcluster, nodes_timer);
    if (predis_ready(c->pub)) ask_nodes(c);
    ploop_timer_start(c->loop, &c->nodes_timer, NODES_INTERVAL_MS);
}

static void pub_ready(predis *r, void *user)
{
    (void)r;
    ask_nodes(user);
}

static void pub_reply(predis *r, const presp_reply *rep, void *user)
{
    (void)r;
    pcluster *c = user;
    if (rep->type == '-') {
        c->st.publish_failures++;
        uint64_t held = 0;
        if (plog_limit_ok(&c->log_bad, ploop_now(c->loop), 10000, &held))
            plog_warn("redis publisher: %.*s", (int)PARLEY_MIN(rep->v.len, 200),
                      (const char *)rep->v.p);
    } else if (rep->type == '*' && rep->n == 2 && rep->el[1].type == ':' && c->numsub_n) {
        uint64_t id = c->numsub_q[c->numsub_head];
        c->numsub_head = (c->numsub_head + 1) % PARLEY_ARRAY_LEN(c->numsub_q);
        c->numsub_n--;
        unsigned count = rep->el[1].i > 0 ? (unsigned)PARLEY_MIN(rep->el[1].i, 1000000) : 0;
        if (id == 0)
            c->st.nodes = count;
        else
            wait_counted(c, id, count);
    }
}

static void on_down(predis *r, int err, void *user)
{
    (void)err;
    pcluster *c = user;
    c->st.reconnects++;
    if (r != c->pub) return;
    /* The NUMSUB replies due will not come: those waiting for one fail. */
    while (c->numsub_n) {
        uint64_t id = c->numsub_q[c->numsub_head];
        c->numsub_head = (c->numsub_head + 1) % PARLEY_ARRAY_LEN(c->numsub_q);
        c->numsub_n--;
        for (sse_wait *w = c->waits; id && w; w = w->next)
            if (w->id == id) {
                wait_done(c, w, PARLEY_ECLOSED);
                break;
            }
    }
}

static const predis_cbs pub_cbs = {
    .on_ready = pub_ready, .on_reply = pub_reply, .on_down = on_down};
static const predis_cbs sub_cbs = {
    .on_ready = sub_ready, .on_reply = sub_reply, .on_down = on_down};

static void random_uid(char *out, size_t n)
{
    static const char alnum[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    uint8_t raw[16];
    if (prand_bytes(raw, sizeof raw) != 0) memset(raw, 7, sizeof raw);
    for (size_t i = 0; i + 1 < n && i < sizeof raw; i++) out[i] = alnum[raw[i] % 62];
    out[n - 1] = 0;
}

int pcluster_new(parley_server *srv, const pcluster_opts *o, pcluster **out, const char **why)
{
    const char *dummy;
    if (!why) why = &dummy;
    *why = NULL;
    predis_url url;
    if (predis_url_parse(o->url, &url, why) != 0) return PARLEY_EINVAL;
    const char *prefix = o->prefix ? o->prefix : "socket.io";
    if (!*prefix || strlen(prefix) > 64) {
        *why = "bad channel prefix";
        return PARLEY_EINVAL;
    }
    pcluster *c = pcalloc(1, sizeof *c);
    if (!c) return PARLEY_ENOMEM;
    c->srv = srv;
    c->loop = parley_server__loop(srv);
    c->o = *o;
    c->o.url = NULL;
    if (!c->o.lim.max_message) penv_limits_init(&c->o.lim);
    c->prefix = strdup(prefix);
    random_uid(c->uid, 9); /* 8 characters (Node: 6) */
    ptimer_init(&c->nodes_timer, on_nodes_timer);
    int rc = c->prefix ? penv_dec_init(&c->dec, &c->o.lim) : PARLEY_ENOMEM;
    if (rc == 0 && url.tls) {
        char err[256];
        ptls_client_opts to = {.ca_file = o->ca_file};
        c->tls = ptls_ctx_client(&to, err, sizeof err);
        if (!c->tls) {
            plog_error("cluster: rediss:// TLS setup: %s", err);
            rc = PARLEY_ETLS;
        }
    }
    c->o.ca_file = NULL;
    predis_opts po = {.name = "publisher", .max_bulk = 4096, .tls = c->tls};
    if (rc == 0) rc = predis_new(c->loop, &url, &po, &pub_cbs, c, &c->pub);
    po.name = "subscriber";
    /* Messages over max_message are read and refused (counted); only one
     * over this bound costs the connection (then made again). */
    po.max_bulk = PARLEY_MAX(c->o.lim.max_message, (size_t)16 * 1024 * 1024);
    if (rc == 0) rc = predis_new(c->loop, &url, &po, &sub_cbs, c, &c->sub);
    if (rc) {
        predis_free(c->pub);
        ptls_ctx_free(c->tls);
        penv_dec_free(&c->dec);
        free(c->prefix);
        free(c);
        return rc;
    }
    memset(&url, 0, sizeof url); /* the password */
    sio_adapter a = {.nsp_created = on_nsp, .broadcast = on_broadcast, .user = c};
    parley_server__set_adapter(srv, &a);
    ploop_timer_start(c->loop, &c->nodes_timer, NODES_INTERVAL_MS);
    *out = c;
    return 0;
}

void pcluster_free(pcluster *c)
{
    if (!c) return;
    if (c->depth) {
        /* From inside one of our callbacks: when it has returned. */
        c->leave_pending = true;
        parley_server__set_adapter(c->srv, NULL);
        return;
    }
    really_free(c);
}

static void really_free(pcluster *c)
{
    /* Those still waiting learn that no more answers come. */
    c->depth++;
    while (c->waits) wait_done(c, c->waits, PARLEY_ECLOSED);
    c->depth--;
    for (bcast_ack *b = c->backs; b; b = b->next) b->c = NULL; /* freed by their last ack */
    parley_server__set_adapter(c->srv, NULL);
    ploop_timer_stop(c->loop, &c->nodes_timer);
    predis_free(c->pub);
    predis_free(c->sub);
    ptls_ctx_free(c->tls);
    penv_dec_free(&c->dec);
    pbuf_free(&c->msg);
    pbuf_free(&c->chan);
    pbuf_free(&c->scratch);
    pbuf_free(&c->rooms);
    pbuf_free(&c->sse);
    for (size_t i = 0; i < PCLUSTER_PRIVATE_MAX; i++) free(c->priv[i].chan);
    free(c->sel);
    free(c->prefix);
    free(c);
}

int pcluster_server_side_emit(pcluster *c, parley_nsp *n, const char *event, const char *args_json)
{
    json_val args = {0};
    if (!event || (args_json && (json_parse(args_json, strlen(args_json), c->o.lim.max_depth, &args,
                                            NULL) != 0 ||
                                 args.type != JSON_ARRAY)))
        return PARLEY_EINVAL;
    /* {"uid":..,"type":6,"data":[event, ...args]} as the adapter's JSON. */
    c->msg.len = 0;
    int rc = pbuf_append_str(&c->msg, "{\"uid\":");
    if (rc == 0) rc = json_append_string(&c->msg, c->uid, strlen(c->uid));
    if (rc == 0) rc = pbuf_append_str(&c->msg, ",\"type\":6,\"data\":[");
    if (rc == 0) rc = json_append_string(&c->msg, event, strlen(event));
    if (rc == 0 && args_json) {
        json_iter it;
        json_iter_init(&it, &args);
        json_val e;
        while (rc == 0 && json_array_next(&it, &e)) {
            rc = pbuf_append(&c->msg, ",", 1);
            if (rc == 0) rc = json_compact(&c->msg, &e);
        }
    }
    if (rc == 0) rc = pbuf_append_str(&c->msg, "]}");
    return rc ? publish_failed(c, rc) : publish_to(c, "-request", parley_nsp_name(n));
}

/* ---- node-private channels ---- */

int pcluster_private_subscribe(pcluster *c, const char *channel, pcluster_private_fn fn, void *user)
{
    if (!c || !channel || !*channel || !fn || strlen(channel) > 256 ||
        !strncmp(channel, c->prefix, strlen(c->prefix)))
        return PARLEY_EINVAL;
    size_t slot = PCLUSTER_PRIVATE_MAX;
    for (size_t i = 0; i < PCLUSTER_PRIVATE_MAX; i++) {
        if (c->priv[i].chan && !strcmp(c->priv[i].chan, channel)) return PARLEY_EINVAL;
        if (!c->priv[i].chan && slot == PCLUSTER_PRIVATE_MAX) slot = i;
    }
    if (slot == PCLUSTER_PRIVATE_MAX) return PARLEY_EFULL;
    char *name = strdup(channel);
    if (!name) return PARLEY_ENOMEM;
    c->priv[slot].chan = name;
    c->priv[slot].fn = fn;
    c->priv[slot].user = user;
    if (predis_ready(c->sub)) { /* else sub_ready subscribes */
        int rc = priv_command(c, "SUBSCRIBE", name);
        if (rc) predis_drop(c->sub, rc);
    }
    return 0;
}

void pcluster_private_unsubscribe(pcluster *c, const char *channel)
{
    if (!c || !channel) return;
    for (size_t i = 0; i < PCLUSTER_PRIVATE_MAX; i++) {
        if (!c->priv[i].chan || strcmp(c->priv[i].chan, channel) != 0) continue;
        if (predis_ready(c->sub)) {
            int rc = priv_command(c, "UNSUBSCRIBE", channel);
            if (rc) predis_drop(c->sub, rc);
        }
        free(c->priv[i].chan);
        memset(&c->priv[i], 0, sizeof c->priv[i]);
    }
}

int pcluster_private_publish(pcluster *c, const char *channel, const char *msg, size_t len)
{
    if (!c || !channel || !msg) return PARLEY_EINVAL;
    int rc = PARLEY_ECLOSED;
    if (predis_ready(c->pub)) {
        const char *argv[3] = {"PUBLISH", channel, msg};
        size_t lens[3] = {7, strlen(channel), len};
        rc = predis_command(c->pub, 3, argv, lens);
    }
    if (rc) c->st.publish_failures++;
    return rc;
}

/* ---- public API (parley/server.h) ---- */

void parley_cluster_opts_init_size(parley_cluster_opts *out, size_t size)
{
    parley_cluster_opts o;
    memset(&o, 0, sizeof o);
    o.size = sizeof o;
    o.key = "socket.io";
    o.max_message = 1000000;
    popts_give(out, size, &o, sizeof o);
}

int parley_cluster_join(parley_server *s, const parley_cluster_opts *o_in, parley_cluster **out)
{
    parley_cluster_opts o;
    if (!s || !o_in || !out ||
        POPTS_TAKE(parley_cluster_opts, parley_cluster_opts_init, &o, o_in, redis_url) != 0)
        return PARLEY_EINVAL;
    if (!o.redis_url) return PARLEY_EINVAL;
    if (parley_server__has_adapter(s)) return PARLEY_ESTATE;
    pcluster_opts po;
    pcluster_opts_init(&po);
    po.url = o.redis_url;
    if (o.key) po.prefix = o.key;
    if (o.max_message) po.lim.max_message = o.max_message;
    po.on_server_side_emit = o.on_server_side_emit;
    po.user = o.user;
    po.ca_file = o.redis_ca_file;
    const char *why = NULL;
    int rc = pcluster_new(s, &po, out, &why);
    if (rc == PARLEY_EINVAL) plog_error("parley_cluster_join: %s", why ? why : "bad options");
    return rc == PARLEY_EINVAL ? PARLEY_EURL : rc;
}

int parley_cluster_server_side_emit(parley_cluster *c, parley_nsp *n, const char *event,
                                    const char *args_json)
{
    if (!c || !n) return PARLEY_EINVAL;
    return pcluster_server_side_emit(c, n, event, args_json);
}

static void wait_timeout(ptimer *t)
{
    sse_wait *w = PARLEY_CONTAINER_OF(t, sse_wait, timer);
    wait_done(w->c, w, PARLEY_ETIMEDOUT);
}

/* Hands the responses to the application and forgets the wait. */
static void wait_done(pcluster *c, sse_wait *w, int err)
{
    for (sse_wait **pp = &c->waits; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    ploop_timer_stop(c->loop, &w->timer);
    bool ok = pbuf_append(&w->responses, "]", 2) == 0;
    c->depth++;
    w->fn(c, err, ok ? (const char *)w->responses.ptr : "[]", ok ? w->responses.len - 1 : 2,
          w->user);
    c->depth--;
    pbuf_free(&w->responses);
    pbuf_free(&w->request);
    free(w->nsp);
    free(w);
    if (c->depth == 0 && c->leave_pending) really_free(c);
}

/* A request built into w->request (rc: how building went): as the
 * adapter, count the servers first (PUBSUB NUMSUB), then publish
 * (wait_counted); the wait ends with every answer, the timeout or Redis
 * going down. Frees w when it cannot start. */
static int wait_start(pcluster *c, sse_wait *w, int rc, uint32_t timeout_ms)
{
    if (rc == 0) rc = numsub(c, w->nsp, w->id);
    if (rc) {
        pbuf_free(&w->request);
        pbuf_free(&w->responses);
        free(w->nsp);
        free(w);
        return rc;
    }
    w->next = c->waits;
    c->waits = w;
    ploop_timer_start(c->loop, &w->timer, timeout_ms ? timeout_ms : 5000);
    return 0;
}

int parley_cluster_server_side_emit_ack(parley_cluster *c, parley_nsp *n, const char *event,
                                        const char *args_json, uint32_t timeout_ms,
                                        parley_cluster_ack_fn fn, void *user)
{
    if (!c || !n || !event || !fn || c->leave_pending) return PARLEY_EINVAL;
    json_val args = {0};
    if (args_json &&
        (json_parse(args_json, strlen(args_json), c->o.lim.max_depth, &args, NULL) != 0 ||
         args.type != JSON_ARRAY))
        return PARLEY_EINVAL;
    if (!predis_ready(c->pub)) {
        c->st.publish_failures++;
        return PARLEY_ECLOSED;
    }
    sse_wait *w = pcalloc(1, sizeof *w);
    if (!w) return PARLEY_ENOMEM;
    w->c = c;
    w->id = ++c->next_wait;
    random_uid(w->request_id, 13);
    w->nsp = strdup(parley_nsp_name(n));
    w->fn = fn;
    w->user = user;
    w->type = REQ_SERVER_SIDE_EMIT;
    ptimer_init(&w->timer, wait_timeout);
    /* {"uid":..,"requestId":..,"type":6,"data":[event, ...args]} */
    pbuf *b = &w->request;
    int rc = w->nsp ? pbuf_append_str(b, "{\"uid\":") : PARLEY_ENOMEM;
    if (rc == 0) rc = json_append_string(b, c->uid, strlen(c->uid));
    if (rc == 0) rc = pbuf_append_str(b, ",\"requestId\":");
    if (rc == 0) rc = json_append_string(b, w->request_id, strlen(w->request_id));
    if (rc == 0) rc = pbuf_append_str(b, ",\"type\":6,\"data\":[");
    if (rc == 0) rc = json_append_string(b, event, strlen(event));
    if (rc == 0 && args_json) {
        json_iter it;
        json_iter_init(&it, &args);
        json_val e;
        while (rc == 0 && json_array_next(&it, &e)) {
            rc = pbuf_append(b, ",", 1);
            if (rc == 0) rc = json_compact(b, &e);
        }
    }
    if (rc == 0) rc = pbuf_append_str(b, "]}");
    if (rc == 0) rc = pbuf_append(&w->responses, "[", 1);
    return wait_start(c, w, rc, timeout_ms);
}

int parley_cluster_ack(parley_cluster *c, parley_nsp *n, const char *ack_id, const char *value_json)
{
    json_val v;
    if (!c || !n || !ack_id || !*ack_id || strlen(ack_id) > PENV_MAX_UID ||
        (value_json &&
         json_parse(value_json, strlen(value_json), c->o.lim.max_depth, &v, NULL) != 0))
        return PARLEY_EINVAL;
    /* {"type":6,"requestId":..,"data":value} on the response channel. */
    c->msg.len = 0;
    int rc = pbuf_append_str(&c->msg, "{\"type\":6,\"requestId\":");
    if (rc == 0) rc = json_append_string(&c->msg, ack_id, strlen(ack_id));
    if (rc == 0 && value_json) {
        rc = pbuf_append_str(&c->msg, ",\"data\":");
        if (rc == 0) rc = json_compact(&c->msg, &v);
    }
    if (rc == 0) rc = pbuf_append_str(&c->msg, "}");
    return rc ? publish_failed(c, rc) : publish_to(c, "-response", parley_nsp_name(n));
}

/* ---- remote operations started here (socketsJoin, socketsLeave,
 * disconnectSockets, fetchSockets): applied to this server's sockets,
 * then published as the adapter does (dist/index.js addSockets,
 * delSockets, disconnectSockets, fetchSockets). ---- */

static int put_names(pbuf *b, const char *const *v, size_t n)
{
    int rc = pbuf_append(b, "[", 1);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t len = v[i] ? strlen(v[i]) : 0;
        if (!v[i] || len == 0 || len > PENV_MAX_ROOM_LEN) return PARLEY_EINVAL;
        if (i) rc = pbuf_append(b, ",", 1);
        if (rc == 0) rc = json_append_string(b, v[i], len);
    }
    if (rc == 0) rc = pbuf_append(b, "]", 1);
    return rc;
}

/* {"uid":..,[ "requestId":..,] "type":T,"opts":{"rooms":[..],"except":[..]} into
 * b; then selects the local sockets into c->sel (count in *k). */
static int remote_op_start(pcluster *c, parley_nsp *n, pbuf *b, int type, const char *request_id,
                           const char *const *rooms, size_t nrooms, const char *const *except,
                           size_t nexcept, long *k)
{
    if (nrooms > MAX_REQ_ROOMS || nexcept > MAX_REQ_ROOMS || (nrooms && !rooms) ||
        (nexcept && !except))
        return PARLEY_EINVAL;
    b->len = 0;
    int rc = pbuf_append_str(b, "{\"uid\":");
    if (rc == 0) rc = json_append_string(b, c->uid, strlen(c->uid));
    if (rc == 0 && request_id) {
        rc = pbuf_append_str(b, ",\"requestId\":");
        if (rc == 0) rc = json_append_string(b, request_id, strlen(request_id));
    }
    char t[32];
    snprintf(t, sizeof t, ",\"type\":%d,\"opts\":", type);
    if (rc == 0) rc = pbuf_append_str(b, t);
    size_t opts_at = b->len;
    if (rc == 0) rc = pbuf_append_str(b, "{\"rooms\":");
    if (rc == 0) rc = put_names(b, rooms, nrooms);
    if (rc == 0) rc = pbuf_append_str(b, ",\"except\":");
    if (rc == 0) rc = put_names(b, except, nexcept);
    if (rc == 0) rc = pbuf_append(b, "}", 1);
    if (rc) return rc;
    json_val opts;
    if (json_parse((const char *)b->ptr + opts_at, b->len - opts_at, 4, &opts, NULL) != 0)
        return PARLEY_EINVAL;
    *k = select_sockets(c, n, &opts);
    return *k < 0 ? (int)*k : 0;
}

static int remote_op_publish(pcluster *c, parley_nsp *n)
{
    return publish_to(c, "-request", parley_nsp_name(n));
}

static int remote_rooms(parley_cluster *c, parley_nsp *n, int type, const char *const *rooms,
                        size_t nrooms, const char *const *except, size_t nexcept,
                        const char *const *names, size_t nnames)
{
    if (!c || !n || !nnames || !names || nnames > MAX_REQ_ROOMS || c->leave_pending)
        return PARLEY_EINVAL;
    long k = 0;
    int rc = remote_op_start(c, n, &c->msg, type, NULL, rooms, nrooms, except, nexcept, &k);
    if (rc == 0) rc = pbuf_append_str(&c->msg, ",\"rooms\":");
    if (rc == 0) rc = put_names(&c->msg, names, nnames);
    if (rc == 0) rc = pbuf_append(&c->msg, "}", 1);
    if (rc) {
        trim(&c->msg);
        return rc;
    }
    /* Here first (our own request coming back is dropped by its uid). */
    for (long i = 0; i < k; i++)
        for (size_t j = 0; j < nnames; j++) {
            if (type == REQ_REMOTE_JOIN)
                parley_join_n(c->sel[i], names[j], strlen(names[j]));
            else
                parley_leave_n(c->sel[i], names[j], strlen(names[j]));
        }
    if (!predis_ready(c->pub)) {
        c->st.publish_failures++;
        trim(&c->msg);
        return PARLEY_ECLOSED;
    }
    return remote_op_publish(c, n);
}

int parley_cluster_sockets_join(parley_cluster *c, parley_nsp *n, const char *const *rooms,
                                size_t nrooms, const char *const *except, size_t nexcept,
                                const char *const *join, size_t njoin)
{
    return remote_rooms(c, n, REQ_REMOTE_JOIN, rooms, nrooms, except, nexcept, join, njoin);
}

int parley_cluster_sockets_leave(parley_cluster *c, parley_nsp *n, const char *const *rooms,
                                 size_t nrooms, const char *const *except, size_t nexcept,
                                 const char *const *leave, size_t nleave)
{
    return remote_rooms(c, n, REQ_REMOTE_LEAVE, rooms, nrooms, except, nexcept, leave, nleave);
}

int parley_cluster_disconnect_sockets(parley_cluster *c, parley_nsp *n, const char *const *rooms,
                                      size_t nrooms, const char *const *except, size_t nexcept,
                                      int close)
{
    if (!c || !n || c->leave_pending) return PARLEY_EINVAL;
    long k = 0;
    int rc = remote_op_start(c, n, &c->msg, REQ_REMOTE_DISCONNECT, NULL, rooms, nrooms, except,
                             nexcept, &k);
    if (rc == 0) rc = pbuf_append_str(&c->msg, close ? ",\"close\":true}" : ",\"close\":false}");
    if (rc) {
        trim(&c->msg);
        return rc;
    }
    /* The request is built: disconnecting may run application callbacks
     * that broadcast (and use c->msg), so keep a copy. */
    pbuf req = {0};
    rc = pbuf_append(&req, c->msg.ptr, c->msg.len);
    trim(&c->msg);
    if (rc) return rc;
    c->depth++;
    for (long i = 0; i < k; i++) parley_disconnect(c->sel[i], close);
    c->depth--;
    if (c->depth == 0 && c->leave_pending) {
        pbuf_free(&req);
        really_free(c);
        return PARLEY_ECLOSED;
    }
    if (!predis_ready(c->pub)) {
        c->st.publish_failures++;
        pbuf_free(&req);
        return PARLEY_ECLOSED;
    }
    c->msg.len = 0;
    rc = pbuf_append(&c->msg, req.ptr, req.len);
    pbuf_free(&req);
    return rc ? rc : remote_op_publish(c, n);
}

int parley_cluster_fetch_sockets(parley_cluster *c, parley_nsp *n, const char *const *rooms,
                                 size_t nrooms, const char *const *except, size_t nexcept,
                                 uint32_t timeout_ms, parley_cluster_ack_fn fn, void *user)
{
    if (!c || !n || !fn || c->leave_pending) return PARLEY_EINVAL;
    if (!predis_ready(c->pub)) {
        c->st.publish_failures++;
        return PARLEY_ECLOSED;
    }
    sse_wait *w = pcalloc(1, sizeof *w);
    if (!w) return PARLEY_ENOMEM;
    w->c = c;
    w->id = ++c->next_wait;
    w->type = REQ_REMOTE_FETCH;
    random_uid(w->request_id, 13);
    w->nsp = strdup(parley_nsp_name(n));
    w->fn = fn;
    w->user = user;
    ptimer_init(&w->timer, wait_timeout);
    long k = 0;
    int rc = w->nsp ? remote_op_start(c, n, &w->request, REQ_REMOTE_FETCH, w->request_id, rooms,
                                      nrooms, except, nexcept, &k)
                    : PARLEY_ENOMEM;
    if (rc == 0) rc = pbuf_append(&w->request, "}", 1);
    /* This server's sockets first, as the adapter's localSockets. */
    if (rc == 0) rc = pbuf_append(&w->responses, "[", 1);
    for (long i = 0; rc == 0 && i < k; i++) {
        if (w->items++) rc = pbuf_append(&w->responses, ",", 1);
        if (rc == 0) rc = put_socket(&w->responses, c->sel[i]);
    }
    return wait_start(c, w, rc, timeout_ms);
}

unsigned parley_cluster_nodes(const parley_cluster *c)
{
    return c ? c->st.nodes : 0;
}

void parley_cluster_leave(parley_cluster *c)
{
    pcluster_free(c);
}

void pcluster_collect(pmx_out *o, void *user)
{
    pcluster *c = user;
    pcluster_stats st;
    pcluster_get_stats(c, &st);
    pmx_gauge(o, "parley_cluster_nodes",
              "Servers in the cluster: subscribers of the adapter's request channel of \"/\" "
              "(PUBSUB NUMSUB), this one included; 0 while unknown.",
              st.nodes);
    pmx_family(o, "parley_cluster_redis_up", PMX_GAUGE,
               "1 when the Redis connection (publisher, subscriber) is ready.");
    pmx_label l = {"connection", "publisher"};
    pmx_sample_u64(o, "parley_cluster_redis_up", NULL, &l, 1, st.pub_up);
    l.val = "subscriber";
    pmx_sample_u64(o, "parley_cluster_redis_up", NULL, &l, 1, st.sub_up);
    pmx_counter(o, "parley_cluster_published_total", "Broadcasts published to Redis.",
                st.published);
    pmx_counter(o, "parley_cluster_publish_failures_total",
                "Broadcasts and responses not published (Redis down or refusing); they were "
                "delivered to this server's own clients.",
                st.publish_failures);
    pmx_counter(o, "parley_cluster_received_total",
                "Broadcasts from other servers delivered to this server's clients.", st.received);
    pmx_counter(o, "parley_cluster_malformed_total",
                "Messages on the adapter's channels ignored as malformed, over a limit or foreign.",
                st.malformed);
    pmx_counter(o, "parley_cluster_requests_total",
                "Requests from other servers applied (join, leave, disconnect, fetch, "
                "serverSideEmit).",
                st.requests);
    pmx_counter(o, "parley_cluster_unsupported_total",
                "Requests of a kind this server does not handle (ignored).", st.unsupported);
    pmx_counter(o, "parley_cluster_reconnects_total",
                "Redis connections lost or failed to come up.", st.reconnects);
}
