/*
 * sio_guard_server: a parley_server embedding for tests/interop/
 * sio_guard.test.mjs, with flags for the guards parleyd does not expose
 * (yet): the authentication deadline, closed namespaces, the Origin
 * allow-list and the attachment caps.
 *
 * Namespaces: "/" (open), "/other" (open) and "/auth" (a connect check:
 * auth.token must be "ok"). On each, `message` is echoed as `message-back`
 * (attachments included), `message-with-ack` is acknowledged with its
 * arguments, and `disconnect-me` disconnects the socket from the server
 * side. HTTP: GET /stats answers the server's guard counters and the
 * disconnect reasons handlers saw, as JSON; GET /nsp?name=/x&closed=0|1
 * turns a namespace off or on.
 *
 * Prints "sio_guard_server listening on HOST:PORT" when ready; SIGTERM
 * shuts down cleanly (every byte released, for the leak checkers).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/buf.h"
#include "base/util.h"
#include "codec/json.h"
#include "parley/parley.h"
#include "parley/server.h"
#include "server/engine.h"
#include "server/httpd.h"

#define MAX_REASONS 16

static parley_server *srv;
static uv_signal_t sigterm, sigint;
static struct {
    const char *reason;
    unsigned n;
} reasons[MAX_REASONS];

static void on_event(parley_socket *s, const char *event, size_t event_len, const parley_args *a,
                     int64_t ack_id, void *user)
{
    (void)event_len;
    (void)user;
    char *json = pmemdup_str(a->json, a->json_len);
    if (!json) return;
    if (!strcmp(event, "message"))
        parley_emit(s, "message-back", json, a->bins, a->nbins);
    else if (!strcmp(event, "message-with-ack") && ack_id >= 0)
        parley_ack(s, ack_id, json, a->bins, a->nbins);
    else if (!strcmp(event, "disconnect-me"))
        parley_disconnect(s, 0);
    free(json);
}

static void on_disconnect(parley_socket *s, const char *reason, void *user)
{
    (void)s;
    (void)user;
    for (int i = 0; i < MAX_REASONS; i++) {
        if (!reasons[i].reason || !strcmp(reasons[i].reason, reason)) {
            reasons[i].reason = reason; /* static strings */
            reasons[i].n++;
            return;
        }
    }
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
    return 1;
}

static void route_stats(phttpd_req *req, void *user)
{
    (void)user;
    parley_server_stats st;
    parley_server__stats(srv, &st);
    pbuf b = {0};
    pbuf_appendf(&b,
                 "{\"origin_refused\":%llu,\"auth_timeout_closes\":%llu,"
                 "\"attachment_limit_closes\":%llu,\"pending_attachment_bytes\":%zu,"
                 "\"pending_attachment_peak\":%zu,\"reasons\":{",
                 (unsigned long long)st.origin_refused, (unsigned long long)st.auth_timeout_closes,
                 (unsigned long long)st.attachment_limit_closes, st.pending_attachment_bytes,
                 st.pending_attachment_peak);
    for (int i = 0; i < MAX_REASONS && reasons[i].reason; i++)
        pbuf_appendf(&b, "%s\"%s\":%u", i ? "," : "", reasons[i].reason, reasons[i].n);
    pbuf_append_str(&b, "}}");
    phttpd_respond(req, 200, "application/json", NULL, 0, b.ptr, b.len);
    pbuf_free(&b);
}

static void route_nsp(phttpd_req *req, void *user)
{
    (void)user;
    const char *v, *c;
    size_t vl, cl;
    const http_head *h = req->head;
    char name[257];
    if (!http_query_get(h->target, h->target_len, "name", &v, &vl) || vl == 0 ||
        vl >= sizeof name || !http_query_get(h->target, h->target_len, "closed", &c, &cl)) {
        phttpd_respond(req, 400, NULL, NULL, 0, NULL, 0);
        return;
    }
    /* A '/' may stand as it is in a query. */
    memcpy(name, v, vl);
    name[vl] = 0;
    parley_nsp *nsp = parley_server_of(srv, name);
    if (!nsp) {
        phttpd_respond(req, 404, NULL, NULL, 0, NULL, 0);
        return;
    }
    parley_nsp_set_closed(nsp, cl == 1 && c[0] == '1');
    phttpd_respond(req, 200, "text/plain", NULL, 0, "ok", 2);
}

static void on_done(parley_server *s, void *user)
{
    (void)s;
    (void)user;
    uv_close((uv_handle_t *)&sigterm, NULL);
    uv_close((uv_handle_t *)&sigint, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    (void)h;
    (void)signum;
    uv_signal_stop(&sigterm);
    uv_signal_stop(&sigint);
    parley_server_shutdown(srv, on_done, NULL);
}

static unsigned long num(const char *flag, const char *v)
{
    char *end;
    unsigned long x = strtoul(v, &end, 10);
    if (!*v || *end) {
        fprintf(stderr, "sio_guard_server: %s wants a number, not '%s'\n", flag, v);
        exit(2);
    }
    return x;
}

int main(int argc, char **argv)
{
    parley_server_opts o;
    parley_server_opts_init(&o);
    o.ping_interval_ms = 300;
    o.ping_timeout_ms = 200;
    o.connect_timeout_ms = 1000;
    const char *close_nsp[8];
    int nclose = 0;
    parley_log_level level = PARLEY_LOG_INFO;
    unsigned port = 0;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(f, "--require-auth")) {
            o.require_auth = 1;
            continue;
        }
        if (!strcmp(f, "--debug")) {
            level = PARLEY_LOG_DEBUG;
            continue;
        }
        if (!v) {
            fprintf(stderr, "sio_guard_server: unknown flag or missing value: %s\n", f);
            return 2;
        }
        i++;
        if (!strcmp(f, "--port"))
            port = (unsigned)num(f, v);
        else if (!strcmp(f, "--close") && nclose < 8)
            close_nsp[nclose++] = v;
        else if (!strcmp(f, "--allowed-origins"))
            o.allowed_origins = v;
        else if (!strcmp(f, "--cors-origin"))
            o.cors_origin = v;
        else if (!strcmp(f, "--connect-timeout"))
            o.connect_timeout_ms = (uint32_t)num(f, v);
        else if (!strcmp(f, "--ping-interval"))
            o.ping_interval_ms = (uint32_t)num(f, v);
        else if (!strcmp(f, "--ping-timeout"))
            o.ping_timeout_ms = (uint32_t)num(f, v);
        else if (!strcmp(f, "--max-attachment-bytes"))
            o.max_attachment_bytes = num(f, v);
        else if (!strcmp(f, "--max-pending-attachment-bytes"))
            o.max_pending_attachment_bytes = num(f, v);
        else {
            fprintf(stderr, "sio_guard_server: unknown flag %s\n", f);
            return 2;
        }
    }
    parley_log_set(level, NULL, NULL);
    signal(SIGPIPE, SIG_IGN);
    parley_loop *loop = parley_loop_new();
    if (!loop || parley_server_new(loop, &o, &srv) != 0) {
        fprintf(stderr, "sio_guard_server: cannot create the server\n");
        return 1;
    }
    parley_nsp_handlers open = {.on_event = on_event, .on_disconnect = on_disconnect};
    parley_nsp_handlers checked = open;
    checked.on_connect_check = check_token;
    parley_nsp *root = parley_server_of(srv, "/");
    parley_nsp *other = parley_server_of(srv, "/other");
    parley_nsp *auth = parley_server_of(srv, "/auth");
    phttpd *http = parley_server__http(srv);
    if (!root || !other || !auth || phttpd_route(http, "/stats", route_stats, NULL) != 0 ||
        phttpd_route(http, "/nsp", route_nsp, NULL) != 0) {
        fprintf(stderr, "sio_guard_server: setup failed\n");
        return 1;
    }
    parley_nsp_set_handlers(root, &open);
    parley_nsp_set_handlers(other, &open);
    parley_nsp_set_handlers(auth, &checked);
    for (int i = 0; i < nclose; i++) {
        parley_nsp *n = parley_server_of(srv, close_nsp[i]);
        if (!n) return 2;
        parley_nsp_set_closed(n, 1);
    }
    unsigned bound = 0;
    if (parley_server_listen(srv, "127.0.0.1", port, &bound) != 0) {
        fprintf(stderr, "sio_guard_server: cannot listen\n");
        return 1;
    }
    uv_loop_t *uv = parley_loop_uv(loop);
    uv_signal_init(uv, &sigterm);
    uv_signal_init(uv, &sigint);
    uv_signal_start(&sigterm, on_signal, SIGTERM);
    uv_signal_start(&sigint, on_signal, SIGINT);
    printf("sio_guard_server listening on 127.0.0.1:%u\n", bound);
    fflush(stdout);
    parley_loop_run(loop);
    parley_server_free(srv);
    parley_loop_free(loop);
    return 0;
}
