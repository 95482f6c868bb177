/* parleyd: the Parley server. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/util.h"
#include "net/net.h"
#include "parley/parley.h"
#include "server/httpd.h"
#include "ws/wsconn.h"

typedef struct options {
    char host[256];
    unsigned port;
    const char *ws_echo;
    const char *tls_cert, *tls_key;
    bool deflate;
} options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: parleyd [options]\n"
            "\n"
            "  --listen HOST:PORT        address to serve on (default 127.0.0.1:8080; port 0 = any)\n"
            "  --ws-echo PATH            serve a WebSocket echo endpoint at PATH\n"
            "  --tls-cert FILE           serve TLS (https/wss) with this PEM certificate chain\n"
            "  --tls-key FILE            ... and this PEM private key\n"
            "  --no-deflate              do not accept permessage-deflate\n"
            "  --max-message BYTES       largest WebSocket message (default 16777216)\n"
            "  --max-frame BYTES         largest WebSocket frame (default 16777216)\n"
            "  --max-header-bytes N      largest HTTP request head (default 8192)\n"
            "  --max-headers N           most HTTP header fields (default 64)\n"
            "  --max-body BYTES          largest HTTP request body (default 1048576)\n"
            "  --max-output BYTES        unsent output per connection before it is dropped\n"
            "                            (default 8388608)\n"
            "  --handshake-timeout MS    complete HTTP request/upgrade within (default 10000)\n"
            "  --ping-interval MS        WebSocket keepalive ping interval (default 30000, 0 = off)\n"
            "  --ping-timeout MS         drop when no pong within (default 10000)\n"
            "  --log-level LEVEL         debug, info, warn, error (default info)\n"
            "  --version, --help\n"
            "\n"
            "When ready, prints 'parleyd listening on HOST:PORT' on stdout.\n"
            "SIGINT/SIGTERM: graceful shutdown (WebSocket sessions closed with 1001).\n");
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out)
{
    if (!s || !*s) return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-' || v > max) return -1;
    *out = v;
    return 0;
}

static int parse_listen(const char *s, options *o)
{
    const char *colon = strrchr(s, ':');
    if (!colon) return -1;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof o->host) return -1;
    uint64_t port;
    if (parse_u64(colon + 1, 65535, &port) != 0) return -1;
    memcpy(o->host, h, hl);
    o->host[hl] = 0;
    o->port = (unsigned)port;
    return 0;
}

/* The echo endpoint. */
static void echo_message(wsconn *w, int opcode, uint8_t *data, size_t len)
{
    wsconn_send(w, opcode, data, len);
}

static const wsconn_cbs echo_cbs = {.on_message = echo_message};

/* Plain HTTP routes. */
static void route_root(phttpd_req *req, void *user)
{
    (void)user;
    char body[512];
    int n = snprintf(body, sizeof body,
                     "<!doctype html><meta charset=utf-8><title>parleyd</title>"
                     "<h1>parleyd %s</h1><p>Running. Health: <a href=\"/healthz\">/healthz</a></p>\n",
                     parley_version());
    phttpd_respond(req, 200, "text/html; charset=utf-8", NULL, 0, body, (size_t)n);
}

static void route_health(phttpd_req *req, void *user)
{
    (void)user;
    phttpd_respond(req, 200, "text/plain; charset=utf-8", NULL, 0, "ok\n", 3);
}

typedef struct app {
    parley_loop *loop;
    phttpd *srv;
    uv_signal_t sigint, sigterm;
    bool stopping;
} app;

static void on_shutdown_done(phttpd *s, void *user)
{
    (void)s;
    app *a = user;
    uv_close((uv_handle_t *)&a->sigint, NULL);
    uv_close((uv_handle_t *)&a->sigterm, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    app *a = h->data;
    if (a->stopping) {
        plog_warn("second signal: exiting now");
        exit(1);
    }
    a->stopping = true;
    plog_info("signal %d: shutting down (%u connections)", signum, phttpd_connections(a->srv));
    phttpd_shutdown(a->srv, on_shutdown_done, a);
}

int main(int argc, char **argv)
{
    options o = {.host = "127.0.0.1", .port = 8080, .deflate = true};
    phttpd_opts hopts;
    phttpd_opts_init(&hopts);
    wsconn_opts wopts;
    wsconn_opts_init(&wopts);
    wopts.ping_interval_ms = 30000;
    parley_log_level level = PARLEY_LOG_INFO;

    enum {
        OPT_LISTEN = 256, OPT_WS_ECHO, OPT_CERT, OPT_KEY, OPT_NO_DEFLATE, OPT_MAX_MSG,
        OPT_MAX_FRAME, OPT_MAX_HDR_BYTES, OPT_MAX_HDRS, OPT_MAX_BODY, OPT_MAX_OUT,
        OPT_HS_TIMEOUT, OPT_PING_INT, OPT_PING_TO, OPT_LOG, OPT_VERSION, OPT_HELP
    };
    static const struct option longopts[] = {
        {"listen", required_argument, 0, OPT_LISTEN},
        {"ws-echo", required_argument, 0, OPT_WS_ECHO},
        {"tls-cert", required_argument, 0, OPT_CERT},
        {"tls-key", required_argument, 0, OPT_KEY},
        {"no-deflate", no_argument, 0, OPT_NO_DEFLATE},
        {"max-message", required_argument, 0, OPT_MAX_MSG},
        {"max-frame", required_argument, 0, OPT_MAX_FRAME},
        {"max-header-bytes", required_argument, 0, OPT_MAX_HDR_BYTES},
        {"max-headers", required_argument, 0, OPT_MAX_HDRS},
        {"max-body", required_argument, 0, OPT_MAX_BODY},
        {"max-output", required_argument, 0, OPT_MAX_OUT},
        {"handshake-timeout", required_argument, 0, OPT_HS_TIMEOUT},
        {"ping-interval", required_argument, 0, OPT_PING_INT},
        {"ping-timeout", required_argument, 0, OPT_PING_TO},
        {"log-level", required_argument, 0, OPT_LOG},
        {"version", no_argument, 0, OPT_VERSION},
        {"help", no_argument, 0, OPT_HELP},
        {0, 0, 0, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        uint64_t v = 0;
        const char *bad = NULL;
        switch (ch) {
        case OPT_LISTEN:
            if (parse_listen(optarg, &o) != 0) bad = "--listen wants HOST:PORT";
            break;
        case OPT_WS_ECHO:
            if (optarg[0] != '/') bad = "--ws-echo wants a path starting with /";
            o.ws_echo = optarg;
            break;
        case OPT_CERT: o.tls_cert = optarg; break;
        case OPT_KEY: o.tls_key = optarg; break;
        case OPT_NO_DEFLATE: o.deflate = false; break;
        case OPT_MAX_MSG:
            if (parse_u64(optarg, UINT32_MAX, &v) || v == 0) bad = "bad --max-message";
            wopts.max_message = v;
            break;
        case OPT_MAX_FRAME:
            if (parse_u64(optarg, UINT32_MAX, &v) || v == 0) bad = "bad --max-frame";
            wopts.max_frame = v;
            break;
        case OPT_MAX_HDR_BYTES:
            if (parse_u64(optarg, 1u << 20, &v) || v < 64) bad = "bad --max-header-bytes";
            hopts.limits.max_header_bytes = (size_t)v;
            break;
        case OPT_MAX_HDRS:
            if (parse_u64(optarg, 1000, &v) || v == 0) bad = "bad --max-headers";
            hopts.limits.max_headers = (size_t)v;
            break;
        case OPT_MAX_BODY:
            if (parse_u64(optarg, UINT32_MAX, &v)) bad = "bad --max-body";
            hopts.limits.max_body = v;
            break;
        case OPT_MAX_OUT:
            if (parse_u64(optarg, UINT32_MAX, &v) || v < 1024) bad = "bad --max-output";
            hopts.max_output = (size_t)v;
            break;
        case OPT_HS_TIMEOUT:
            if (parse_u64(optarg, 3600000, &v) || v == 0) bad = "bad --handshake-timeout";
            hopts.head_timeout_ms = (uint32_t)v;
            break;
        case OPT_PING_INT:
            if (parse_u64(optarg, 3600000, &v)) bad = "bad --ping-interval";
            wopts.ping_interval_ms = (uint32_t)v;
            break;
        case OPT_PING_TO:
            if (parse_u64(optarg, 3600000, &v) || v == 0) bad = "bad --ping-timeout";
            wopts.ping_timeout_ms = (uint32_t)v;
            break;
        case OPT_LOG:
            if (!strcmp(optarg, "debug")) level = PARLEY_LOG_DEBUG;
            else if (!strcmp(optarg, "info")) level = PARLEY_LOG_INFO;
            else if (!strcmp(optarg, "warn")) level = PARLEY_LOG_WARN;
            else if (!strcmp(optarg, "error")) level = PARLEY_LOG_ERROR;
            else bad = "--log-level wants debug, info, warn or error";
            break;
        case OPT_VERSION: printf("parleyd %s\n", parley_version()); return 0;
        case OPT_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) {
            fprintf(stderr, "parleyd: %s\n", bad);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "parleyd: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o.tls_cert != !o.tls_key) {
        fprintf(stderr, "parleyd: --tls-cert and --tls-key go together\n");
        return 2;
    }
    parley_log_set(level, NULL, NULL);
    signal(SIGPIPE, SIG_IGN);

    ptls_ctx *tls = NULL;
    if (o.tls_cert) {
        char err[256];
        tls = ptls_ctx_server(o.tls_cert, o.tls_key, err, sizeof err);
        if (!tls) {
            fprintf(stderr, "parleyd: TLS: %s\n", err);
            return 1;
        }
    }
    pmd_config pmd;
    pmd_config_init(&pmd);
    pmd.enabled = o.deflate;

    app a = {0};
    a.loop = parley_loop_new();
    if (!a.loop || phttpd_new(a.loop, &hopts, &a.srv) != 0) {
        fprintf(stderr, "parleyd: out of memory\n");
        return 1;
    }
    phttpd_ws_endpoint echo = {.ws_opts = &wopts, .pmd = &pmd, .cbs = &echo_cbs};
    if ((o.ws_echo && phttpd_route_ws(a.srv, o.ws_echo, &echo) != 0) ||
        phttpd_route(a.srv, "/", route_root, NULL) != 0 ||
        phttpd_route(a.srv, "/healthz", route_health, NULL) != 0) {
        fprintf(stderr, "parleyd: cannot set up routes\n");
        return 1;
    }
    unsigned port = 0;
    int rc = phttpd_listen(a.srv, o.host, o.port, tls, &port);
    if (rc) {
        fprintf(stderr, "parleyd: cannot listen on %s:%u: %s\n", o.host, o.port,
                parley_strerror(rc));
        return 1;
    }
    uv_signal_init(a.loop->uv, &a.sigint);
    uv_signal_init(a.loop->uv, &a.sigterm);
    a.sigint.data = a.sigterm.data = &a;
    uv_signal_start(&a.sigint, on_signal, SIGINT);
    uv_signal_start(&a.sigterm, on_signal, SIGTERM);

    printf(strchr(o.host, ':') ? "parleyd listening on [%s]:%u\n" : "parleyd listening on %s:%u\n",
           o.host, port);
    fflush(stdout);
    plog_info("parleyd %s: %s%s%s", parley_version(), tls ? "TLS, " : "",
              o.ws_echo ? "ws echo at " : "no ws echo", o.ws_echo ? o.ws_echo : "");

    parley_loop_run(a.loop);
    phttpd_free(a.srv);
    parley_loop_free(a.loop);
    ptls_ctx_free(tls);
    plog_info("parleyd: stopped");
    return 0;
}
