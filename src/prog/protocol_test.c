/*
 * parleyd --protocol-test: the behaviour of the reference test servers
 * used to check Socket.IO implementations, plus hooks for rooms,
 * broadcasts, volatile emits, server-side acknowledgements and
 * disconnects, so that every feature can be exercised from a client.
 */
#include "prog/protocol_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/util.h"
#include "codec/json.h"
#include "server/adapter.h"
#include "server/engine.h"
#include "server/sio_internal.h"

static pcluster *cluster;

void protocol_test_set_cluster(pcluster *c)
{
    cluster = c;
}

void protocol_test_server_side_emit(parley_nsp *n, const char *event, const char *args_json,
                                    size_t len, const char *ack_id, void *user)
{
    (void)user;
    pbuf out = {0};
    int rc = pbuf_append(&out, "[", 1);
    if (rc == 0) rc = json_append_string(&out, event, strlen(event));
    if (rc == 0 && len > 2) {
        rc = pbuf_append(&out, ",", 1);
        if (rc == 0) rc = pbuf_append(&out, args_json + 1, len - 2);
    }
    if (rc == 0) rc = pbuf_append(&out, "]", 2);
    if (rc == 0) parley_broadcast__local(n, NULL, "server-side-emit", (const char *)out.ptr, NULL, 0);
    if (rc == 0 && ack_id && cluster) {
        pbuf v = {0};
        rc = pbuf_append_str(&v, "{\"echo\":");
        if (rc == 0) rc = pbuf_append(&v, out.ptr, out.len - 1);
        if (rc == 0) rc = pbuf_append(&v, "}", 2);
        if (rc == 0) parley_cluster_ack(cluster, n, ack_id, (const char *)v.ptr);
        pbuf_free(&v);
    }
    pbuf_free(&out);
}

/* Who asked: found again by id when the answers are in (it may be gone). */
typedef struct sse_req {
    parley_nsp *n;
    char id[21];
    int64_t ack_id;
} sse_req;

static void sse_acked(parley_cluster *c, int err, const char *responses, size_t len, void *user)
{
    (void)c;
    sse_req *r = user;
    pbuf out = {0};
    int rc = pbuf_append_str(&out, "[");
    if (rc == 0) rc = json_append_string(&out, err ? parley_strerror(err) : "", err ? strlen(parley_strerror(err)) : 0);
    if (rc == 0) rc = pbuf_append(&out, ",", 1);
    if (rc == 0) rc = pbuf_append(&out, responses, len);
    if (rc == 0) rc = pbuf_append(&out, "]", 2);
    parley_socket *s = NULL;
    if (rc == 0 && parley_nsp__select(r->n, r->id, strlen(r->id), &s, 1) == 1 && s)
        parley_ack(s, r->ack_id, (const char *)out.ptr, NULL, 0);
    pbuf_free(&out);
    free(r);
}

/* Up to 16 room names of a JSON array, decoded into names[] (257 bytes
 * each) with ptrs[] pointing at them. */
static size_t room_list(const json_val *obj, const char *key, char names[][257],
                        const char **ptrs)
{
    json_val arr, e;
    size_t n = 0;
    if (!json_object_get(obj, key, &arr) || arr.type != JSON_ARRAY) return 0;
    json_iter it;
    json_iter_init(&it, &arr);
    while (n < 16 && json_array_next(&it, &e)) {
        long l = e.type == JSON_STRING ? json_string_decode(&e, names[n], 256) : -1;
        if (l <= 0) continue;
        names[n][l] = 0;
        ptrs[n] = names[n];
        n++;
    }
    return n;
}

/* "cluster-fetch" [opts] (acked [error or "", sockets]),
 * "cluster-sockets-join"/"-leave" [opts, room...] and "cluster-disconnect"
 * [opts, close] (acked [error or ""]): the cluster-wide operations,
 * started here (opts {rooms, except}). */
static void cluster_op(parley_socket *s, const char *event, const parley_args *a, int64_t ack_id)
{
    json_val arr, opts, e;
    int rc = PARLEY_EINVAL;
    static char rooms[16][257], except[16][257], names[16][257];
    const char *rp[16], *ep[16], *np[16];
    size_t nr = 0, ne = 0, nn = 0;
    json_iter it;
    if (cluster && json_parse(a->json, a->json_len, JSON_DEFAULT_MAX_DEPTH, &arr, NULL) == 0) {
        json_iter_init(&it, &arr);
        if (json_array_next(&it, &opts) && opts.type == JSON_OBJECT) {
            nr = room_list(&opts, "rooms", rooms, rp);
            ne = room_list(&opts, "except", except, ep);
            rc = 0;
        }
    }
    parley_nsp *n = parley_socket_nsp(s);
    if (rc == 0 && !strcmp(event, "cluster-fetch")) {
        sse_req *r = ack_id >= 0 ? malloc(sizeof *r) : NULL;
        if (!r) return;
        r->n = n;
        snprintf(r->id, sizeof r->id, "%s", parley_socket_id(s));
        r->ack_id = ack_id;
        rc = parley_cluster_fetch_sockets(cluster, n, rp, nr, ep, ne, 3000, sse_acked, r);
        if (rc == 0) return;
        free(r);
    } else if (rc == 0 && !strcmp(event, "cluster-disconnect")) {
        bool close = json_array_next(&it, &e) && e.type == JSON_TRUE;
        rc = parley_cluster_disconnect_sockets(cluster, n, rp, nr, ep, ne, close);
    } else if (rc == 0) {
        while (nn < 16 && json_array_next(&it, &e)) {
            long l = e.type == JSON_STRING ? json_string_decode(&e, names[nn], 256) : -1;
            if (l <= 0) continue;
            names[nn][l] = 0;
            np[nn] = names[nn];
            nn++;
        }
        rc = !strcmp(event, "cluster-sockets-join")
                 ? parley_cluster_sockets_join(cluster, n, rp, nr, ep, ne, np, nn)
                 : parley_cluster_sockets_leave(cluster, n, rp, nr, ep, ne, np, nn);
    }
    if (ack_id < 0) return;
    char out[96];
    snprintf(out, sizeof out, "[\"%s\"]", rc ? parley_strerror(rc) : "");
    parley_ack(s, ack_id, out, NULL, 0);
}

/* "cluster-broadcast" [opts, event, ...args]: opts {rooms, except,
 * exceptMe, volatile, local}; a broadcast as the application makes it
 * (published to the cluster unless local). */
static void cluster_broadcast(parley_socket *s, const parley_args *a)
{
    json_val arr, opts, ev, e, flag;
    if (json_parse(a->json, a->json_len, JSON_DEFAULT_MAX_DEPTH, &arr, NULL) != 0) return;
    json_iter it;
    json_iter_init(&it, &arr);
    if (!json_array_next(&it, &opts) || opts.type != JSON_OBJECT ||
        !json_array_next(&it, &ev) || ev.type != JSON_STRING)
        return;
    char event[257];
    long el = json_string_decode(&ev, event, sizeof event - 1);
    if (el <= 0) return;
    event[el] = 0;
    static char rooms[16][257], except[16][257];
    const char *rp[16], *ep[16];
    parley_target to = {.rooms = rp, .except = ep};
    to.nrooms = room_list(&opts, "rooms", rooms, rp);
    to.nexcept = room_list(&opts, "except", except, ep);
    if (json_object_get(&opts, "exceptMe", &flag) && flag.type == JSON_TRUE) to.except_socket = s;
    if (json_object_get(&opts, "volatile", &flag) && flag.type == JSON_TRUE) to.volatile_ = 1;
    bool local = json_object_get(&opts, "local", &flag) && flag.type == JSON_TRUE;
    pbuf rest = {0};
    pbuf_append(&rest, "[", 1);
    bool first = true;
    while (json_array_next(&it, &e)) {
        if (!first) pbuf_append(&rest, ",", 1);
        first = false;
        json_compact(&rest, &e);
    }
    if (pbuf_append(&rest, "]", 2) == 0) {
        if (local)
            parley_broadcast__local(parley_socket_nsp(s), &to, event, (const char *)rest.ptr,
                                    a->bins, a->nbins);
        else
            parley_broadcast(parley_socket_nsp(s), &to, event, (const char *)rest.ptr, a->bins,
                             a->nbins);
    }
    pbuf_free(&rest);
}

/* "my-rooms": acknowledged with [id, rooms...]. */
static void my_rooms(parley_socket *s, int64_t ack_id)
{
    if (ack_id < 0) return;
    pbuf out = {0};
    const char *id = parley_socket_id(s);
    pbuf_append(&out, "[", 1);
    json_append_string(&out, id, strlen(id));
    size_t n = parley_socket__nrooms(s);
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *r = parley_socket__room(s, i, &len);
        pbuf_append(&out, ",", 1);
        json_append_string(&out, r, len);
    }
    if (pbuf_append(&out, "]", 2) == 0) parley_ack(s, ack_id, (const char *)out.ptr, NULL, 0);
    pbuf_free(&out);
}

/* The arguments of an event, split: the first `skip` elements decoded as
 * strings, the rest re-assembled as a JSON array. */
typedef struct split {
    char head[2][257];
    pbuf rest;
} split;

static bool split_args(const parley_args *a, int skip, split *sp)
{
    json_val arr;
    if (json_parse(a->json, a->json_len, JSON_DEFAULT_MAX_DEPTH, &arr, NULL) != 0) return false;
    json_iter it;
    json_iter_init(&it, &arr);
    json_val e;
    for (int i = 0; i < skip; i++) {
        if (!json_array_next(&it, &e)) return false;
        long n;
        if (e.type == JSON_STRING) {
            n = json_string_decode(&e, sp->head[i], sizeof sp->head[i] - 1);
        } else if (e.type == JSON_NUMBER && e.len < sizeof sp->head[i]) {
            memcpy(sp->head[i], e.p, e.len);
            n = (long)e.len;
        } else {
            return false;
        }
        if (n < 0) return false;
        sp->head[i][n] = 0;
    }
    memset(&sp->rest, 0, sizeof sp->rest);
    if (pbuf_append(&sp->rest, "[", 1) != 0) return false;
    bool first = true;
    while (json_array_next(&it, &e)) {
        if (!first) pbuf_append(&sp->rest, ",", 1);
        first = false;
        json_compact(&sp->rest, &e);
    }
    return pbuf_append(&sp->rest, "]", 2) == 0; /* with the NUL */
}

static void emit_auth(parley_socket *s)
{
    size_t len;
    const char *auth = parley_socket_auth(s, &len);
    pbuf args = {0};
    pbuf_append(&args, "[", 1);
    if (auth)
        pbuf_append(&args, auth, len);
    else
        pbuf_append(&args, "{}", 2);
    pbuf_append(&args, "]", 2);
    parley_emit(s, "auth", (const char *)args.ptr, NULL, 0);
    pbuf_free(&args);
}

static void on_connection(parley_socket *s, void *user)
{
    (void)user;
    emit_auth(s);
}

static void ack_empty(parley_socket *s, int64_t ack_id)
{
    if (ack_id >= 0) parley_ack(s, ack_id, "[]", NULL, 0);
}

static void server_ack_result(parley_socket *s, int err, const parley_args *args, void *user)
{
    (void)user;
    if (err == PARLEY_ECLOSED) return;
    pbuf out = {0};
    if (err == 0) {
        pbuf_append_str(&out, "[{\"ok\":true,\"args\":");
        pbuf_append(&out, args->json, args->json_len);
        pbuf_append(&out, "}]", 3);
        parley_emit(s, "server-ack-result", (const char *)out.ptr, args->bins, args->nbins);
    } else {
        parley_emit(s, "server-ack-result", "[{\"ok\":false,\"error\":\"timeout\"}]", NULL, 0);
    }
    pbuf_free(&out);
}

static void on_event(parley_socket *s, const char *event, size_t event_len, const parley_args *a,
                     int64_t ack_id, void *user)
{
    (void)event_len;
    (void)user;
    /* Re-emitted arguments need a NUL-terminated copy. */
    char *json = pmemdup_str(a->json, a->json_len);
    if (!json) return;
    split sp;
    memset(&sp, 0, sizeof sp);
    if (!strcmp(event, "message")) {
        parley_emit(s, "message-back", json, a->bins, a->nbins);
    } else if (!strcmp(event, "message-with-ack")) {
        if (ack_id >= 0) parley_ack(s, ack_id, json, a->bins, a->nbins);
    } else if (!strcmp(event, "join") && split_args(a, 1, &sp)) {
        parley_join(s, sp.head[0]);
        ack_empty(s, ack_id);
    } else if (!strcmp(event, "leave") && split_args(a, 1, &sp)) {
        parley_leave(s, sp.head[0]);
        ack_empty(s, ack_id);
    } else if ((!strcmp(event, "to-room") || !strcmp(event, "to-room-except-me") ||
                !strcmp(event, "to-socket")) &&
               split_args(a, 2, &sp)) {
        const char *room = sp.head[0];
        parley_target to = {.rooms = &room, .nrooms = 1};
        if (!strcmp(event, "to-room-except-me")) to.except_socket = s;
        parley_broadcast(parley_socket_nsp(s), &to, sp.head[1], (const char *)sp.rest.ptr,
                         a->bins, a->nbins);
        ack_empty(s, ack_id);
    } else if (!strcmp(event, "volatile") && split_args(a, 1, &sp)) {
        parley_emit_opts o = {.size = sizeof o, .volatile_ = 1};
        parley_emit_opts_send(s, &o, sp.head[0], (const char *)sp.rest.ptr, a->bins, a->nbins);
    } else if (!strcmp(event, "server-ack") && split_args(a, 2, &sp)) {
        parley_emit_opts o = {.size = sizeof o,
                              .ack = server_ack_result,
                              .timeout_ms = (uint32_t)strtoul(sp.head[1], NULL, 10)};
        parley_emit_opts_send(s, &o, sp.head[0], (const char *)sp.rest.ptr, a->bins, a->nbins);
    } else if (!strcmp(event, "cluster-broadcast")) {
        cluster_broadcast(s, a);
        ack_empty(s, ack_id);
    } else if (!strcmp(event, "cluster-fetch") || !strcmp(event, "cluster-sockets-join") ||
               !strcmp(event, "cluster-sockets-leave") || !strcmp(event, "cluster-disconnect")) {
        /* cluster-disconnect may disconnect s itself: it goes last. */
        cluster_op(s, event, a, ack_id);
    } else if (!strcmp(event, "cluster-server-side-emit") && split_args(a, 1, &sp)) {
        int rc = cluster ? pcluster_server_side_emit(cluster, parley_socket_nsp(s), sp.head[0],
                                                     (const char *)sp.rest.ptr)
                         : PARLEY_EINVAL;
        if (ack_id >= 0) parley_ack(s, ack_id, rc ? "[false]" : "[true]", NULL, 0);
    } else if (!strcmp(event, "cluster-server-side-emit-ack") && ack_id >= 0 &&
               split_args(a, 1, &sp)) {
        /* Acked with [error or "", [responses...]]. */
        sse_req *r = malloc(sizeof *r);
        int rc = r && cluster ? 0 : PARLEY_EINVAL;
        if (r) {
            r->n = parley_socket_nsp(s);
            snprintf(r->id, sizeof r->id, "%s", parley_socket_id(s));
            r->ack_id = ack_id;
        }
        if (rc == 0)
            rc = parley_cluster_server_side_emit_ack(cluster, parley_socket_nsp(s), sp.head[0],
                                                     (const char *)sp.rest.ptr, 3000, sse_acked, r);
        if (rc) {
            free(r);
            char err[96];
            snprintf(err, sizeof err, "[\"%s\",[]]", parley_strerror(rc));
            parley_ack(s, ack_id, err, NULL, 0);
        }
    } else if (!strcmp(event, "my-rooms")) {
        my_rooms(s, ack_id);
    } else if (!strcmp(event, "disconnect-me")) {
        parley_disconnect(s, 0);
    }
    pbuf_free(&sp.rest);
    free(json);
}

static int check_token(parley_socket *s, const char *auth, size_t len, parley_connect_error *err,
                       void *user)
{
    (void)s;
    (void)user;
    json_val obj, tok;
    if (auth && json_parse(auth, len, JSON_DEFAULT_MAX_DEPTH, &obj, NULL) == 0 &&
        obj.type == JSON_OBJECT && json_object_get(&obj, "token", &tok) &&
        json_string_eq(&tok, "ok"))
        return 0;
    err->message = "unauthorized";
    err->data_json = "{\"reason\":\"bad token\"}";
    return 1;
}

/* Plain Engine.IO echo. */
static void eio_open(esession *s, const phttpd_req *req)
{
    (void)s;
    (void)req;
}

static void eio_message(esession *s, bool binary, uint8_t *data, size_t len)
{
    esession_send(s, binary, data, len);
}

static void eio_close(esession *s, const char *reason)
{
    (void)s;
    (void)reason;
}

static const engine_cbs eio_echo = {.on_open = eio_open, .on_message = eio_message,
                                    .on_close = eio_close};

int protocol_test_setup(parley_server *srv, engine **echo)
{
    parley_nsp_handlers root = {.on_connection = on_connection, .on_event = on_event};
    parley_nsp *n = parley_server_of(srv, "/");
    parley_nsp *custom = parley_server_of(srv, "/custom");
    parley_nsp *mw = parley_server_of(srv, "/middleware");
    if (!n || !custom || !mw) return PARLEY_ENOMEM;
    parley_nsp_set_handlers(n, &root);
    parley_nsp_handlers ch = {.on_connection = on_connection};
    parley_nsp_set_handlers(custom, &ch);
    parley_nsp_handlers mh = {.on_connect_check = check_token, .on_connection = on_connection};
    parley_nsp_set_handlers(mw, &mh);

    return parley_server__engine(srv, "/engine.io/", &eio_echo, NULL, echo);
}
