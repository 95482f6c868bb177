/* parleyd's operator side: metrics, readiness, dashboard (prog/ops.h). */
#include "prog/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "base/log.h"
#include "base/util.h"
#include "parley/parley.h"

/* The dashboard's files, embedded at build time (cmake/embed.cmake). */
typedef struct ops_asset {
    const char *name; /* file name, e.g. "index.html" */
    const unsigned char *data;
    size_t len;
} ops_asset;
extern const ops_asset parley_dashboard_assets[];
extern const size_t parley_dashboard_nassets;

#define SSE_INTERVAL_MS 1000
#define FORM_KEY_MAX    4096
/* The login form's body: the key field percent-encoded, with room to
 * spare. Anyone may POST it, so it is small (413 past it, on the head). */
#define LOGIN_BODY_MAX  (3 * FORM_KEY_MAX + 1024)

static const uint64_t lag_bounds_ns[] = {100000,    250000,    500000,    1000000,  2500000,
                                         5000000,   10000000,  25000000,  50000000, 100000000,
                                         250000000, 500000000, 1000000000};

typedef struct sse_client {
    phttpd_stream *st;
} sse_client;

struct ops {
    parley_server *srv;
    phttpd *http;
    parley_loop *loop;
    msg_service *msg;
    padmin *admin;
    ops_opts o;
    pmx_registry reg;
    pbuf scratch;
    bool stopping;
    /* event-loop lag */
    ptimer lag_timer;
    uint64_t lag_due_ns; /* when the timer should fire (uv_hrtime) */
    uint64_t lag_last_ns;
    pmx_hist lag;
    /* Server-Sent Events */
    ptimer sse_timer;
    phttpd_stream *streams[64];
    unsigned nstreams;
    plog_limit log_login;
};

/* ---- collectors ---- */

static void collect_build(pmx_out *o, void *user)
{
    ops *x = user;
    pmx_family(o, "parley_build_info", PMX_GAUGE, "Always 1; the version is in the label.");
    pmx_label l = {"version", parley_version()};
    pmx_sample_u64(o, "parley_build_info", NULL, &l, 1, 1);
    if (!x->o.cluster)
        pmx_gauge(o, "parley_cluster_nodes",
                  "Nodes this server knows of (1: no cluster adapter; single node).", 1);
}

static void collect_http(pmx_out *o, void *user)
{
    ops *x = user;
    phttpd_stats st;
    phttpd_stats_get(x->http, &st);
    pmx_gauge(o, "parley_http_connections",
              "Open TCP connections of the HTTP server (every transport).",
              phttpd_connections(x->http));
    pmx_gauge(o, "parley_http_client_addresses", "Client addresses tracked for per-address limits.",
              st.addresses);
    pmx_family(o, "parley_http_responses_total", PMX_COUNTER,
               "HTTP responses by status class (101 for WebSocket upgrades).");
    static const char *const classes[] = {"", "1xx", "2xx", "3xx", "4xx", "5xx"};
    for (int c = 1; c <= 5; c++) {
        pmx_label l = {"class", classes[c]};
        pmx_sample_u64(o, "parley_http_responses_total", NULL, &l, 1, st.responses[c]);
    }
    pmx_family(o, "parley_http_refusals_total", PMX_COUNTER,
               "Connections and requests refused by the HTTP server's limits, by reason.");
    pmx_label l = {"reason", "conns_per_ip"};
    pmx_sample_u64(o, "parley_http_refusals_total", NULL, &l, 1, st.refused_conns_ip);
    l.val = "handshake_rate";
    pmx_sample_u64(o, "parley_http_refusals_total", NULL, &l, 1, st.refused_rate_ip);
    l.val = "body_budget";
    pmx_sample_u64(o, "parley_http_refusals_total", NULL, &l, 1, st.refused_budget);
    pmx_gauge(o, "parley_http_body_inflight_bytes", "Buffered request body bytes now.",
              (double)st.body_inflight);
    pmx_gauge(o, "parley_websocket_connections",
              "Open sessions of the plain WebSocket endpoints (e.g. --ws-echo).", st.ws_open);
    pmx_counter(o, "parley_websocket_connections_opened_total",
                "Sessions opened on the plain WebSocket endpoints.", st.ws_upgrades);
    pmx_gauge(o, "parley_http_streams", "Open streamed responses (dashboard event streams).",
              st.streams);
    pmx_counter(o, "parley_http_streams_dropped_total",
                "Streamed responses dropped because the client did not read.", st.streams_dropped);
    pmx_counter(o, "parley_http_streams_refused_total",
                "Streamed responses refused (503) because the maximum were open.",
                st.streams_refused);
}

typedef struct nsp_walk {
    pmx_out *o;
    int pass; /* 0 sockets, 1 rooms */
    unsigned count;
} nsp_walk;

static void nsp_visit(const char *name, unsigned sockets, unsigned rooms, void *arg)
{
    nsp_walk *w = arg;
    w->count++;
    pmx_label l = {"namespace", name};
    if (w->pass == 0) pmx_sample_u64(w->o, "parley_sio_sockets", NULL, &l, 1, sockets);
    if (w->pass == 1) pmx_sample_u64(w->o, "parley_sio_rooms", NULL, &l, 1, rooms);
}

static void collect_sio(pmx_out *o, void *user)
{
    ops *x = user;
    parley_server_stats st;
    parley_server__stats(x->srv, &st);
    static const char *const tr[2] = {"polling", "websocket"};
    pmx_family(o, "parley_engine_sessions", PMX_GAUGE,
               "Open Engine.IO sessions (Socket.IO connections) by their transport now.");
    for (int i = 0; i < 2; i++) {
        pmx_label l = {"transport", tr[i]};
        pmx_sample_u64(o, "parley_engine_sessions", NULL, &l, 1, st.eng.open[i]);
    }
    pmx_family(o, "parley_engine_sessions_opened_total", PMX_COUNTER,
               "Engine.IO sessions opened, by the transport of their handshake.");
    for (int i = 0; i < 2; i++) {
        pmx_label l = {"transport", tr[i]};
        pmx_sample_u64(o, "parley_engine_sessions_opened_total", NULL, &l, 1, st.eng.opened[i]);
    }
    pmx_counter(o, "parley_engine_upgrades_total", "Polling sessions upgraded to WebSocket.",
                st.eng.upgrades);
    pmx_counter(o, "parley_engine_relayed_total",
                "Polling requests relayed to the node that owns their session (--peer).",
                st.eng.forwarded);
    pmx_counter(o, "parley_engine_relay_failures_total",
                "Relayed polling requests whose owner node did not answer (502/504).",
                st.eng.forward_failures);
    pmx_counter(o, "parley_engine_relay_refused_total",
                "Polling requests not relayed: unknown node tag, or too many relays at once.",
                st.eng.forward_refused);
    pmx_counter(o, "parley_engine_messages_received_total", "Engine.IO message packets received.",
                st.eng.messages_in);
    pmx_counter(o, "parley_engine_received_bytes_total",
                "Payload bytes of the Engine.IO message packets received.", st.eng.bytes_in);
    pmx_counter(o, "parley_engine_messages_sent_total",
                "Engine.IO message packets sent (a broadcast counts once per recipient).",
                st.eng.messages_out);
    pmx_counter(o, "parley_engine_sent_bytes_total",
                "Payload bytes of the Engine.IO message packets sent.", st.eng.bytes_out);
    nsp_walk w = {.o = o};
    pmx_family(o, "parley_sio_sockets", PMX_GAUGE, "Connected Socket.IO sockets by namespace.");
    parley_server__nsps(x->srv, nsp_visit, &w);
    unsigned nsps = w.count;
    w.pass = 1;
    pmx_family(o, "parley_sio_rooms", PMX_GAUGE,
               "Socket.IO rooms by namespace (a socket's own room is not counted).");
    parley_server__nsps(x->srv, nsp_visit, &w);
    pmx_gauge(o, "parley_sio_namespaces", "Socket.IO namespaces.", nsps);
    pmx_counter(o, "parley_sio_events_received_total", "Socket.IO events received.", st.events_in);
    pmx_counter(o, "parley_sio_events_sent_total",
                "Socket.IO events sent (a broadcast counts once per recipient).", st.events_out);
    pmx_counter(o, "parley_sio_acks_received_total",
                "Socket.IO acknowledgements received for the server's emits.", st.acks_in);
    pmx_counter(o, "parley_sio_acks_sent_total", "Socket.IO acknowledgements sent.", st.acks_out);
    pmx_counter(o, "parley_sio_broadcasts_total", "Socket.IO broadcasts.", st.broadcasts);
    pmx_counter(o, "parley_sio_origin_refused_total",
                "Engine.IO requests refused for their Origin (403).", st.origin_refused);
    pmx_counter(o, "parley_sio_auth_timeout_closes_total",
                "Sessions closed for not joining an authenticated namespace in time.",
                st.auth_timeout_closes);
    pmx_counter(o, "parley_sio_attachment_limit_closes_total",
                "Sessions closed for holding too many binary attachment bytes.",
                st.attachment_limit_closes);
    pmx_gauge(o, "parley_sio_pending_attachment_bytes",
              "Bytes held for binary packets awaiting their attachments.",
              (double)st.pending_attachment_bytes);
}

static void collect_loop(pmx_out *o, void *user)
{
    ops *x = user;
    pmx_gauge(o, "parley_event_loop_lag_seconds",
              "How late the last lag probe's timer fired (event-loop lag).",
              (double)x->lag_last_ns / 1e9);
    pmx_family(o, "parley_event_loop_delay_seconds", PMX_HISTOGRAM,
               "Event-loop lag probes: how late a repeating timer fired.");
    pmx_hist_write(o, "parley_event_loop_delay_seconds", NULL, 0, &x->lag);
}

static void collect_admin(pmx_out *o, void *user)
{
    ops *x = user;
    padmin_stats st;
    padmin_stats_get(x->admin, &st);
    pmx_family(o, "parley_admin_refusals_total", PMX_COUNTER,
               "Requests to admin pages refused, by reason.");
    pmx_label l = {"reason", "no_key"};
    pmx_sample_u64(o, "parley_admin_refusals_total", NULL, &l, 1, st.refused[PADMIN_NO_KEY]);
    l.val = "unauthorized";
    pmx_sample_u64(o, "parley_admin_refusals_total", NULL, &l, 1, st.refused[PADMIN_UNAUTH]);
    pmx_family(o, "parley_admin_logins_total", PMX_COUNTER,
               "Logins through the dashboard's form, by result.");
    l = (pmx_label){"result", "ok"};
    pmx_sample_u64(o, "parley_admin_logins_total", NULL, &l, 1, st.logins);
    l.val = "failed";
    pmx_sample_u64(o, "parley_admin_logins_total", NULL, &l, 1, st.login_failures);
    pmx_gauge(o, "parley_admin_sessions", "Live dashboard login sessions.", st.sessions);
}

static void collect_msg(pmx_out *o, void *user)
{
    ops *x = user;
    if (x->msg) msg_service_collect(o, x->msg);
}

/* ---- event-loop lag ---- */

static void on_lag(ptimer *t)
{
    ops *x = PARLEY_CONTAINER_OF(t, ops, lag_timer);
    uint64_t now = uv_hrtime();
    uint64_t late = now > x->lag_due_ns ? now - x->lag_due_ns : 0;
    x->lag_last_ns = late;
    pmx_hist_observe(&x->lag, late);
    x->lag_due_ns = now + (uint64_t)x->o.lag_interval_ms * 1000000;
    ploop_timer_start(x->loop, &x->lag_timer, x->o.lag_interval_ms);
}

/* ---- HTTP ---- */

static const ops_asset *asset(const char *name)
{
    for (size_t i = 0; i < parley_dashboard_nassets; i++)
        if (!strcmp(parley_dashboard_assets[i].name, name)) return &parley_dashboard_assets[i];
    return NULL;
}

static const char *mime_of(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (dot && !strcmp(dot, ".html")) return "text/html; charset=utf-8";
    if (dot && !strcmp(dot, ".js")) return "text/javascript; charset=utf-8";
    if (dot && !strcmp(dot, ".css")) return "text/css; charset=utf-8";
    if (dot && !strcmp(dot, ".svg")) return "image/svg+xml";
    return "application/octet-stream";
}

/* A header from two string literals. */
#define HDR(n, v)                                                                                  \
    {                                                                                              \
        n, sizeof n - 1, v, sizeof v - 1                                                           \
    }
#define SEC_HEADERS                                                                                \
    HDR("Content-Security-Policy",                                                                 \
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),        \
        HDR("X-Content-Type-Options", "nosniff"), HDR("Cache-Control", "no-store"),                \
        HDR("Referrer-Policy", "no-referrer"), HDR("X-Frame-Options", "DENY")

static const http_header sec_headers[] = {SEC_HEADERS};

static void send_asset(phttpd_req *req, int status, const char *name)
{
    const ops_asset *a = asset(name);
    if (!a) {
        phttpd_respond(req, 500, "text/plain; charset=utf-8", NULL, 0, "asset missing\n", 14);
        return;
    }
    phttpd_respond(req, status, mime_of(name), sec_headers, PARLEY_ARRAY_LEN(sec_headers), a->data,
                   a->len);
}

/* True when the request may see admin pages; otherwise it was answered
 * (browsers asking for the page itself are sent to the login form). */
static bool admitted(ops *x, phttpd_req *req, bool page)
{
    int why = padmin_check_request(x->admin, req);
    if (why == PADMIN_ALLOW) return true;
    if (page && why == PADMIN_UNAUTH) {
        http_header h[] = {{"Location", 8, "/dashboard/login", 16}, SEC_HEADERS};
        phttpd_respond(req, 303, "text/plain; charset=utf-8", h, PARLEY_ARRAY_LEN(h),
                       "log in at /dashboard/login\n", 27);
        return false;
    }
    padmin_refuse(x->admin, req, why);
    return false;
}

static void route_metrics(phttpd_req *req, void *user)
{
    ops *x = user;
    if (!phttpd_allow(req, "GET, HEAD")) return;
    if (!x->o.metrics_public && !admitted(x, req, false)) return;
    x->scratch.len = 0;
    if (pmx_render(&x->reg, PMX_TEXT, &x->scratch) != 0) {
        phttpd_respond(req, 500, "text/plain; charset=utf-8", NULL, 0, "out of memory\n", 14);
        return;
    }
    phttpd_respond(req, 200, PMX_CONTENT_TYPE, NULL, 0, x->scratch.ptr, x->scratch.len);
    pbuf_reset(&x->scratch, 256 << 10);
}

static void route_readyz(phttpd_req *req, void *user)
{
    ops *x = user;
    if (!phttpd_allow(req, "GET, HEAD")) return;
    char why[160];
    int bad = 0;
    if (x->stopping) {
        snprintf(why, sizeof why, "shutting down");
        bad = 1;
    } else if (x->msg) {
        bad = msg_service_ready(x->msg, why, sizeof why);
    } else {
        snprintf(why, sizeof why, "ok");
    }
    size_t n = strlen(why);
    why[n++] = '\n';
    phttpd_respond(req, bad ? 503 : 200, "text/plain; charset=utf-8", NULL, 0, why, n);
}

static void route_dashboard(phttpd_req *req, void *user)
{
    ops *x = user;
    if (!phttpd_allow(req, "GET, HEAD")) return;
    if (!admitted(x, req, true)) return;
    send_asset(req, 200, "index.html");
}

static void route_asset(phttpd_req *req, void *user)
{
    ops *x = user;
    if (!phttpd_allow(req, "GET, HEAD")) return;
    /* The stylesheet and the icon are open (the login form uses them);
     * the rest follows the rule. */
    char name[64];
    size_t plen = req->path_len - strlen("/dashboard/");
    if (plen == 0 || plen >= sizeof name) {
        phttpd_respond(req, 404, "text/plain; charset=utf-8", NULL, 0, "no such path\n", 13);
        return;
    }
    memcpy(name, req->path + strlen("/dashboard/"), plen);
    name[plen] = 0;
    bool open_ = !strcmp(name, "app.css") || !strcmp(name, "icon.svg");
    const ops_asset *a = asset(name);
    if (!a || !strcmp(name, "index.html") || !strcmp(name, "login.html")) {
        phttpd_respond(req, 404, "text/plain; charset=utf-8", NULL, 0, "no such path\n", 13);
        return;
    }
    if (!open_ && !admitted(x, req, false)) return;
    send_asset(req, 200, name);
}

/* ---- Server-Sent Events ---- */

static void stream_gone(phttpd_stream *st, void *user)
{
    ops *x = user;
    for (unsigned i = 0; i < x->nstreams; i++) {
        if (x->streams[i] == st) {
            x->streams[i] = x->streams[--x->nstreams];
            break;
        }
    }
    if (x->nstreams == 0) ploop_timer_stop(x->loop, &x->sse_timer);
}

/* One snapshot: `data: {"t":ms,"m":{...}}` and a blank line. */
static int snapshot(ops *x)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    x->scratch.len = 0;
    int rc = pbuf_appendf(&x->scratch, "data: {\"t\":%lld,\"m\":",
                          (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    if (rc == 0) rc = pmx_render(&x->reg, PMX_JSON, &x->scratch);
    if (rc == 0) rc = pbuf_append(&x->scratch, "}\n\n", 3);
    return rc;
}

static void on_sse_tick(ptimer *t)
{
    ops *x = PARLEY_CONTAINER_OF(t, ops, sse_timer);
    if (x->nstreams == 0 || x->stopping) return;
    if (snapshot(x) == 0) {
        /* Rendered once for every stream. A write may drop a stream; its
         * on_close comes later (from the connection's close), so the
         * array does not change under this loop. */
        for (unsigned i = 0; i < x->nstreams; i++)
            phttpd_stream_write(x->streams[i], x->scratch.ptr, x->scratch.len);
    }
    ploop_timer_start(x->loop, &x->sse_timer, SSE_INTERVAL_MS);
}

static void route_events(phttpd_req *req, void *user)
{
    ops *x = user;
    if (!phttpd_allow(req, "GET, HEAD")) return;
    if (!admitted(x, req, false)) return;
    if (x->nstreams == PARLEY_ARRAY_LEN(x->streams) || x->stopping) {
        phttpd_respond(req, 503, "text/plain; charset=utf-8", NULL, 0, "too many streams\n", 17);
        return;
    }
    http_header h[] = {{"Cache-Control", 13, "no-store", 8},
                       {"X-Content-Type-Options", 22, "nosniff", 7}};
    phttpd_stream *st = phttpd_stream_start(req, 200, "text/event-stream", h, 2, stream_gone, x);
    if (!st) return;
    x->streams[x->nstreams++] = st;
    /* The retry hint, and a first snapshot at once. */
    phttpd_stream_write(st, "retry: 2000\n\n", 13);
    if (snapshot(x) == 0) phttpd_stream_write(st, x->scratch.ptr, x->scratch.len);
    if (!ptimer_armed(&x->sse_timer)) ploop_timer_start(x->loop, &x->sse_timer, SSE_INTERVAL_MS);
}

/* ---- login ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The value of `name` in an application/x-www-form-urlencoded body,
 * decoded into out. Length, or -1 when absent, malformed or too long. */
static long form_value(const uint8_t *body, size_t len, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = (const char *)body, *end = p + len;
    while (p < end) {
        const char *item = p;
        while (p < end && *p != '&') p++;
        const char *eq = memchr(item, '=', (size_t)(p - item));
        if (eq && (size_t)(eq - item) == nl && memcmp(item, name, nl) == 0) {
            size_t n = 0;
            for (const char *v = eq + 1; v < p; v++) {
                char c = *v;
                if (c == '+') {
                    c = ' ';
                } else if (c == '%') {
                    if (p - v < 3 || hexval(v[1]) < 0 || hexval(v[2]) < 0) return -1;
                    c = (char)(hexval(v[1]) * 16 + hexval(v[2]));
                    v += 2;
                }
                if (n + 1 >= cap) return -1;
                out[n++] = c;
            }
            out[n] = 0;
            return (long)n;
        }
        if (p < end) p++;
    }
    return -1;
}

static void login_failed(phttpd_req *req, int status, const char *msg)
{
    pbuf b = {0};
    int rc = pbuf_appendf(&b,
                          "<!doctype html><html lang=en><meta charset=utf-8>"
                          "<meta name=viewport content=\"width=device-width,initial-scale=1\">"
                          "<link rel=stylesheet href=\"/dashboard/app.css\">"
                          "<link rel=icon href=\"/dashboard/icon.svg\" type=\"image/svg+xml\">"
                          "<title>parleyd: "
                          "login</title><main class=login><h1>parleyd</h1><p class=err "
                          "id=login-error>%s</p><p><a href=\"/dashboard/login\">Try "
                          "again</a></p></main></html>\n",
                          msg);
    if (rc == 0)
        phttpd_respond(req, status, "text/html; charset=utf-8", sec_headers,
                       PARLEY_ARRAY_LEN(sec_headers), b.ptr, b.len);
    else
        phttpd_respond(req, 500, "text/plain; charset=utf-8", NULL, 0, "out of memory\n", 14);
    pbuf_free(&b);
}

static void route_login(phttpd_req *req, void *user)
{
    ops *x = user;
    if (!phttpd_allow(req, "GET, HEAD, POST")) return;
    if (req->head->method_len != 4 || memcmp(req->head->method, "POST", 4) != 0) {
        send_asset(req, 200, "login.html");
        return;
    }
    uint64_t retry = 0;
    if (!phttpd_ip_take(x->http, req->conn, &retry)) {
        char ra[24];
        int n = snprintf(ra, sizeof ra, "%llu", (unsigned long long)(retry + 999) / 1000);
        http_header h = {"Retry-After", 11, ra, (size_t)n};
        phttpd_respond(req, 429, "text/plain; charset=utf-8", &h, 1,
                       "too many attempts: retry later\n", 31);
        return;
    }
    if (!padmin_has_key(x->admin)) {
        login_failed(req, 403,
                     "This server has no admin key: start parleyd with --admin-key-file FILE.");
        return;
    }
    char *key = malloc(FORM_KEY_MAX);
    long kl = key ? form_value(req->body, req->body_len, "key", key, FORM_KEY_MAX) : -1;
    bool ok = kl > 0 && padmin_check_key(x->admin, key, (size_t)kl);
    if (key) {
        OPENSSL_cleanse(key, FORM_KEY_MAX);
        free(key);
    }
    padmin_count_login(x->admin, ok);
    char token[PADMIN_TOKEN_HEX + 1], cookie[256];
    if (!ok) {
        uint64_t held = 0;
        if (plog_limit_ok(&x->log_login, ploop_now(x->loop), 10000, &held))
            plog_warn("dashboard: a login with a wrong key was refused (%llu more since the "
                      "last line)",
                      (unsigned long long)held);
        login_failed(req, 401, "Wrong key.");
        return;
    }
    if (padmin_session_new(x->admin, token) != 0 ||
        padmin_cookie(x->admin, token, cookie, sizeof cookie) != 0) {
        phttpd_respond(req, 500, "text/plain; charset=utf-8", NULL, 0, "no session\n", 11);
        return;
    }
    http_header h[] = {
        {"Set-Cookie", 10, cookie, strlen(cookie)}, {"Location", 8, "/dashboard", 10}, SEC_HEADERS};
    phttpd_respond(req, 303, "text/plain; charset=utf-8", h, PARLEY_ARRAY_LEN(h),
                   "logged in: /dashboard\n", 22);
    OPENSSL_cleanse(token, sizeof token);
}

static void route_logout(phttpd_req *req, void *user)
{
    ops *x = user;
    if (!phttpd_allow(req, "POST")) return;
    const char *tok;
    size_t tl;
    if (padmin_find_cookie(req->head, PADMIN_COOKIE, &tok, &tl))
        padmin_session_end(x->admin, tok, tl);
    char cookie[160];
    padmin_cookie(x->admin, NULL, cookie, sizeof cookie);
    http_header h[] = {{"Set-Cookie", 10, cookie, strlen(cookie)},
                       {"Location", 8, "/dashboard/login", 16},
                       SEC_HEADERS};
    phttpd_respond(req, 303, "text/plain; charset=utf-8", h, PARLEY_ARRAY_LEN(h), "logged out\n",
                   11);
}

/* ---- lifetime ---- */

int ops_new(parley_server *srv, msg_service *msg, padmin *admin, const ops_opts *o, ops **out)
{
    ops *x = pcalloc(1, sizeof *x);
    if (!x) return PARLEY_ENOMEM;
    x->srv = srv;
    x->http = parley_server__http(srv);
    x->loop = phttpd_loop(x->http);
    x->msg = msg;
    x->admin = admin;
    x->o = *o;
    if (!x->o.lag_interval_ms) x->o.lag_interval_ms = 500;
    pmx_hist_init(&x->lag, lag_bounds_ns, PARLEY_ARRAY_LEN(lag_bounds_ns), 1e9);
    ptimer_init(&x->lag_timer, on_lag);
    ptimer_init(&x->sse_timer, on_sse_tick);
    int rc = 0;
    pmx_registry *r = &x->reg;
    if (pmx_register(r, pmx_collect_process, NULL) || pmx_register(r, collect_build, x) ||
        pmx_register(r, collect_http, x) || pmx_register(r, collect_sio, x) ||
        pmx_register(r, collect_loop, x) || pmx_register(r, collect_admin, x) ||
        pmx_register(r, collect_msg, x))
        rc = PARLEY_ENOMEM;
    if (rc == 0 && (phttpd_route(x->http, "/metrics", route_metrics, x) != 0 ||
                    phttpd_route(x->http, "/readyz", route_readyz, x) != 0 ||
                    phttpd_route(x->http, "/dashboard", route_dashboard, x) != 0 ||
                    phttpd_route(x->http, "/dashboard/", route_dashboard, x) != 0 ||
                    phttpd_route(x->http, "/dashboard/events", route_events, x) != 0 ||
                    phttpd_route_ex(x->http, "/dashboard/login", false,
                                    &(phttpd_route_opts){.handler = route_login,
                                                         .max_body = LOGIN_BODY_MAX,
                                                         .user = x}) != 0 ||
                    phttpd_route(x->http, "/dashboard/logout", route_logout, x) != 0 ||
                    phttpd_route_prefix(x->http, "/dashboard/", route_asset, x) != 0))
        rc = PARLEY_ENOMEM;
    if (rc) {
        free(x);
        return rc;
    }
    x->lag_due_ns = uv_hrtime() + (uint64_t)x->o.lag_interval_ms * 1000000;
    ploop_timer_start(x->loop, &x->lag_timer, x->o.lag_interval_ms);
    *out = x;
    return 0;
}

pmx_registry *ops_registry(ops *x)
{
    return &x->reg;
}

void ops_stop(ops *x)
{
    if (!x) return;
    x->stopping = true;
    x->msg = NULL; /* freed during the shutdown */
    ploop_timer_stop(x->loop, &x->lag_timer);
    ploop_timer_stop(x->loop, &x->sse_timer);
    /* Closing calls stream_gone later (from the connection's close). */
    for (unsigned i = 0; i < x->nstreams; i++) phttpd_stream_close(x->streams[i]);
}

void ops_free(ops *x)
{
    if (!x) return;
    /* The timers were stopped by ops_stop; the loop may be gone. */
    pbuf_free(&x->scratch);
    free(x);
}
