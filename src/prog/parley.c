/* parley: command-line client. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "parley/parley.h"
#include "parley/ws.h"
#include "prog/bench.h"

#define MAX_LIST 32

typedef struct cli {
    parley_loop *loop;
    parley_ws *ws;
    bool echo; /* ws-echo mode */
    int exit_code;
    uv_pipe_t in_pipe;
    uv_tty_t in_tty;
    uv_stream_t *in;
    char line[65536];
    size_t line_len;
    bool open;
} cli;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: parley COMMAND [options] URL\n"
            "\n"
            "commands:\n"
            "  ws-echo URL   connect and echo every message back until the peer closes;\n"
            "                exit 0 after a clean close, 1 otherwise\n"
            "  ws URL        send each line of stdin as a text message, print what arrives;\n"
            "                end of input closes the connection (code 1000)\n"
            "  bench SCENARIO [options]\n"
            "                load generator (parley bench --help)\n"
            "\n"
            "options:\n"
            "  --header 'Name: value'   extra request header (repeatable)\n"
            "  --protocol NAME          offer a subprotocol (repeatable)\n"
            "  --no-deflate             do not offer permessage-deflate\n"
            "  --ca-file FILE           trust this CA bundle for wss:// (default: system store)\n"
            "  --insecure               do not verify the server certificate\n"
            "  --timeout MS             connect deadline (default 10000)\n"
            "  --max-message BYTES      largest message accepted (default 16777216)\n"
            "  --verbose                log connection details to stderr\n");
}

static int start_stdin(cli *c);

static void on_open(parley_ws *ws, const char *protocol, void *user)
{
    (void)ws;
    cli *c = user;
    c->open = true;
    if (c->echo) return;
    fprintf(stderr, "connected%s%s\n", protocol ? ", protocol " : "", protocol ? protocol : "");
    /* Lines are read only once they can be sent. */
    if (start_stdin(c) != 0) {
        fprintf(stderr, "parley: cannot read stdin\n");
        parley_ws_close(ws, 1000, NULL);
    }
}

static void on_message(parley_ws *ws, parley_ws_type type, const void *data, size_t len,
                       void *user)
{
    cli *c = user;
    if (c->echo) {
        int rc = parley_ws_send(ws, type, data, len);
        if (rc) fprintf(stderr, "parley: echo failed: %s\n", parley_strerror(rc));
        return;
    }
    if (type == PARLEY_WS_TEXT) {
        fwrite(data, 1, len, stdout);
        fputc('\n', stdout);
    } else {
        printf("[binary, %zu bytes]\n", len);
    }
    fflush(stdout);
}

static void on_close(parley_ws *ws, int code, const char *reason, size_t reason_len, int err,
                     void *user)
{
    (void)ws;
    cli *c = user;
    if (err) {
        int status = parley_ws_http_status(ws);
        if (status)
            fprintf(stderr, "parley: handshake refused: HTTP %d\n", status);
        else
            fprintf(stderr, "parley: connection ended: %s (code %d)\n", parley_strerror(err), code);
        c->exit_code = 1;
    } else {
        if (!c->echo)
            fprintf(stderr, "closed: %d %.*s\n", code, (int)reason_len, reason);
        c->exit_code = 0;
    }
    if (c->in && !uv_is_closing((uv_handle_t *)c->in)) uv_close((uv_handle_t *)c->in, NULL);
}

/* stdin for `parley ws`. */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    cli *c = h->data;
    *buf = uv_buf_init(c->line + c->line_len, (unsigned)(sizeof c->line - c->line_len));
}

static void on_stdin(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    cli *c = s->data;
    if (n < 0) {
        uv_close((uv_handle_t *)s, NULL);
        c->in = NULL;
        parley_ws_close(c->ws, 1000, "end of input");
        return;
    }
    c->line_len += (size_t)n;
    char *start = c->line, *nl;
    while ((nl = memchr(start, '\n', c->line_len - (size_t)(start - c->line)))) {
        size_t len = (size_t)(nl - start);
        if (len && start[len - 1] == '\r') len--;
        if (c->open) {
            int rc = parley_ws_send(c->ws, PARLEY_WS_TEXT, start, len);
            if (rc) fprintf(stderr, "parley: send: %s\n", parley_strerror(rc));
        } else {
            fprintf(stderr, "parley: not connected; line dropped\n");
        }
        start = nl + 1;
    }
    c->line_len -= (size_t)(start - c->line);
    memmove(c->line, start, c->line_len);
    if (c->line_len == sizeof c->line) {
        fprintf(stderr, "parley: line longer than %zu bytes dropped\n", sizeof c->line);
        c->line_len = 0;
    }
}

static int start_stdin(cli *c)
{
    uv_loop_t *uv = parley_loop_uv(c->loop);
    if (uv_guess_handle(0) == UV_TTY) {
        if (uv_tty_init(uv, &c->in_tty, 0, 1) != 0) return -1;
        c->in = (uv_stream_t *)&c->in_tty;
    } else {
        if (uv_pipe_init(uv, &c->in_pipe, 0) != 0 || uv_pipe_open(&c->in_pipe, 0) != 0) return -1;
        c->in = (uv_stream_t *)&c->in_pipe;
    }
    c->in->data = c;
    return uv_read_start(c->in, on_alloc, on_stdin);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("parley %s\n", parley_version());
        return 0;
    }
    if (!strcmp(cmd, "bench")) return bench_main(argc - 1, argv + 1);
    cli c = {.exit_code = 1};
    if (!strcmp(cmd, "ws-echo")) {
        c.echo = true;
    } else if (strcmp(cmd, "ws") != 0) {
        fprintf(stderr, "parley: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }
    parley_ws_opts o;
    parley_ws_opts_init(&o);
    const char *headers[MAX_LIST], *protocols[MAX_LIST];
    enum { OPT_HEADER = 256, OPT_PROTO, OPT_NO_DEFLATE, OPT_CA, OPT_INSECURE, OPT_TIMEOUT,
           OPT_MAX_MSG, OPT_VERBOSE };
    static const struct option longopts[] = {
        {"header", required_argument, 0, OPT_HEADER},
        {"protocol", required_argument, 0, OPT_PROTO},
        {"no-deflate", no_argument, 0, OPT_NO_DEFLATE},
        {"ca-file", required_argument, 0, OPT_CA},
        {"insecure", no_argument, 0, OPT_INSECURE},
        {"timeout", required_argument, 0, OPT_TIMEOUT},
        {"max-message", required_argument, 0, OPT_MAX_MSG},
        {"verbose", no_argument, 0, OPT_VERBOSE},
        {0, 0, 0, 0},
    };
    parley_log_set(PARLEY_LOG_WARN, NULL, NULL);
    optind = 2;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        char *end;
        switch (ch) {
        case OPT_HEADER:
            if (o.nheaders == MAX_LIST) {
                fprintf(stderr, "parley: too many headers\n");
                return 2;
            }
            headers[o.nheaders++] = optarg;
            break;
        case OPT_PROTO:
            if (o.nprotocols == MAX_LIST) {
                fprintf(stderr, "parley: too many protocols\n");
                return 2;
            }
            protocols[o.nprotocols++] = optarg;
            break;
        case OPT_NO_DEFLATE: o.permessage_deflate = 0; break;
        case OPT_CA: o.ca_file = optarg; break;
        case OPT_INSECURE: o.insecure = 1; break;
        case OPT_TIMEOUT:
            errno = 0;
            o.connect_timeout_ms = (uint32_t)strtoul(optarg, &end, 10);
            if (errno || *end || !*optarg) {
                fprintf(stderr, "parley: bad --timeout\n");
                return 2;
            }
            break;
        case OPT_MAX_MSG:
            errno = 0;
            o.max_message = strtoull(optarg, &end, 10);
            if (errno || *end || !*optarg || o.max_message == 0) {
                fprintf(stderr, "parley: bad --max-message\n");
                return 2;
            }
            break;
        case OPT_VERBOSE: parley_log_set(PARLEY_LOG_DEBUG, NULL, NULL); break;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    o.url = argv[optind];
    o.headers = headers;
    o.protocols = protocols;
    o.on_open = on_open;
    o.on_message = on_message;
    o.on_close = on_close;
    o.user = &c;
    signal(SIGPIPE, SIG_IGN);

    c.loop = parley_loop_new();
    if (!c.loop) return 1;
    int rc = parley_ws_new(c.loop, &o, &c.ws);
    if (rc) {
        fprintf(stderr, "parley: %s: %s\n", o.url, parley_strerror(rc));
        parley_loop_free(c.loop);
        return rc == PARLEY_EURL || rc == PARLEY_EINVAL ? 2 : 1;
    }
    parley_ws_connect(c.ws);
    parley_loop_run(c.loop);
    parley_ws_free(c.ws);
    parley_loop_free(c.loop);
    return c.exit_code;
}
