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
#include "server/engine.h"

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
