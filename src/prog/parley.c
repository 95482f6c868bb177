/* parley: command-line client. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <uv.h>

#include "base/buf.h"
#include "base/util.h"
#include "codec/json.h"
#include "parley/parley.h"
#include "parley/ws.h"
#include "prog/bench.h"
#include "prog/chat_cli.h"
#include "services/jwt.h"

#define MAX_LIST 32

typedef struct cli {
    parley_loop *loop;
    parley_ws *ws;
    bool echo;     /* ws-echo mode */
    bool queue;    /* ws-queue mode */
    bool ack_echo; /* ws-queue: an echoed id acknowledges its message */
    uint64_t t0;
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
    fprintf(
        f, "usage: parley COMMAND [options] URL\n"
           "\n"
           "commands:\n"
           "  ws-echo URL   connect and echo every message back until the peer closes;\n"
           "                exit 0 after a clean close, 1 otherwise\n"
           "  ws URL        send each line of stdin as a text message, print what arrives;\n"
           "                end of input closes the connection (code 1000)\n"
           "  ws-queue URL  scriptable client with reconnection and the outbound queue:\n"
           "                commands on stdin, events as JSON lines on stdout (see below)\n"
           "  chat URL --user ID [options]\n"
           "                the messaging client (parley chat --help)\n"
           "  token --secret-file FILE --user ID [--role admin|notifier] [--ttl SECONDS]\n"
           "        [--kid KID]\n"
           "                print a token for parleyd --jwt-secret-file (parley token --help)\n"
           "  bench SCENARIO [options]\n"
           "                load generator (parley bench --help)\n"
           "\n"
           "options:\n"
           "  --header 'Name: value'   extra request header (repeatable)\n"
           "  --protocol NAME          offer a subprotocol (repeatable)\n"
           "  --no-deflate             do not offer permessage-deflate\n"
           "  --ca-file FILE           trust this CA bundle for wss:// (default: system store)\n"
           "  --insecure               do not verify the server certificate\n"
           "  --proxy URL              HTTP proxy (CONNECT), http://[user:pass@]host[:port];\n"
           "                           \"\" = none (default: http_proxy/https_proxy, no_proxy)\n"
           "  --timeout MS             connect deadline (default 10000)\n"
           "  --max-message BYTES      largest message accepted (default 16777216)\n"
           "  --verbose                log connection details to stderr\n"
           "\n"
           "ws-queue options:\n"
           "  --reconnect              reconnect automatically (full-jitter backoff)\n"
           "  --reconnect-delay MS     first delay (default 1000)\n"
           "  --reconnect-delay-max MS largest delay (default 30000)\n"
           "  --reconnect-attempts N   give up after N failed attempts (default 0 = never)\n"
           "  --ping-interval MS       heartbeat ping interval (default 0 = off)\n"
           "  --ping-timeout MS        no pong within this: the link is dead (default 10000)\n"
           "  --queue-file FILE        keep the outbound queue in this SQLite file\n"
           "  --queue-max-count N      queue limit in messages (default 1000)\n"
           "  --queue-max-bytes N      queue limit in bytes (default 8388608)\n"
           "  --ack-on-write           a message leaves the queue once written\n"
           "  --ack-echo               a text message starting with a queued message's id\n"
           "                           acknowledges it (for echo servers)\n"
           "\n"
           "ws-queue commands (one per line):\n"
           "  send PRIORITY TTL_MS ID TEXT  queue TEXT (rest of the line); PRIORITY low,\n"
           "                           normal, high or urgent; TTL_MS 0 = none; ID 36 characters\n"
           "                           [A-Za-z0-9_-] or - for a generated one\n"
           "  ack ID | connect | close [CODE] | stats | quit (also end of input)\n"
           "ws-queue events: {\"ev\":NAME,...} with NAME connecting, connected, disconnected,\n"
           "  reconnecting, reconnect_failed, error, message, status, queued, send_error, stats\n");
}

static int start_stdin(cli *c);

/* ---- parley token ---- */

static void token_usage(FILE *f)
{
    fprintf(f,
            "usage: parley token --secret-file FILE --user ID [--role admin|notifier]\n"
            "                    [--ttl SECONDS] [--kid KID]\n"
            "\n"
            "Prints a JSON Web Token signed with HS256 under the secret in FILE, the file\n"
            "parleyd reads with --jwt-secret-file (read the same way: its bytes, trailing\n"
            "line ends dropped), followed by a newline. Claims: sub (the user id), iat (now),\n"
            "exp (now + SECONDS) and role when given.\n"
            "\n"
            "options:\n"
            "  --secret-file FILE  the HS256 secret (1 to %d bytes)\n"
            "  --user ID           the user id: 1 to 64 bytes of A-Z a-z 0-9 . _ @ -\n"
            "  --role ROLE         admin (may send system messages and notifications) or\n"
            "                      notifier (may send notifications); default: none\n"
            "  --ttl SECONDS       lifetime, 1 to %d (default 3600: one hour)\n"
            "  --kid KID           a key id in the header (parleyd ignores it for HS256)\n"
            "\n"
            "example:\n"
            "  parley chat http://127.0.0.1:8080 --user alice \\\n"
            "      --token \"$(parley token --secret-file var/jwt.secret --user alice)\"\n",
            JWT_SECRET_MAX, JWT_MINT_TTL_MAX);
}

static int token_main(int argc, char **argv)
{
    enum { OPT_SECRET = 256, OPT_USER, OPT_ROLE, OPT_TTL, OPT_KID, OPT_HELP };
    static const struct option longopts[] = {
        {"secret-file", required_argument, 0, OPT_SECRET},
        {"user", required_argument, 0, OPT_USER},
        {"role", required_argument, 0, OPT_ROLE},
        {"ttl", required_argument, 0, OPT_TTL},
        {"kid", required_argument, 0, OPT_KID},
        {"help", no_argument, 0, OPT_HELP},
        {0, 0, 0, 0},
    };
    const char *secret_file = NULL;
    jwt_mint_opts mo = {.ttl_s = 3600};
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (ch) {
        case OPT_SECRET:
            secret_file = optarg;
            break;
        case OPT_USER:
            mo.sub = optarg;
            break;
        case OPT_ROLE:
            mo.role = optarg;
            break;
        case OPT_KID:
            mo.kid = optarg;
            break;
        case OPT_TTL: {
            char *end;
            errno = 0;
            long long v = strtoll(optarg, &end, 10);
            if (errno || *end || !*optarg || *optarg == '+' || *optarg == ' ' || v < 1 ||
                v > JWT_MINT_TTL_MAX) {
                fprintf(stderr,
                        "parley token: --ttl must be a whole number of seconds from 1 to %d, "
                        "not '%s'\n",
                        JWT_MINT_TTL_MAX, optarg);
                return 2;
            }
            mo.ttl_s = v;
            break;
        }
        case OPT_HELP:
            token_usage(stdout);
            return 0;
        case ':':
            fprintf(stderr, "parley token: %s needs a value\n", argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "parley token: unknown option '%s' (parley token --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "parley token: unexpected argument '%s' (parley token --help)\n",
                argv[optind]);
        return 2;
    }
    if (!secret_file || !mo.sub) {
        fprintf(stderr, "parley token: %s is required\n",
                !secret_file ? "--secret-file FILE" : "--user ID");
        token_usage(stderr);
        return 2;
    }
    char err[512];
    uint8_t *secret = NULL;
    size_t len = 0;
    int rc = jwt_read_secret_file(secret_file, &secret, &len, err, sizeof err);
    if (rc) {
        fprintf(stderr, "parley token: %s\n", err);
        return rc == PARLEY_EINVAL ? 2 : 1;
    }
    mo.now_s = (int64_t)time(NULL);
    pbuf tok = {0};
    rc = jwt_mint_hs256(&tok, &mo, secret, len, err, sizeof err);
    OPENSSL_cleanse(secret, len);
    free(secret);
    if (rc) {
        fprintf(stderr, "parley token: %s\n", err);
        pbuf_free(&tok);
        return rc == PARLEY_EINVAL ? 2 : 1;
    }
    printf("%.*s\n", (int)tok.len, (const char *)tok.ptr);
    pbuf_free(&tok);
    return fflush(stdout) == 0 ? 0 : 1;
}

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

static void on_message(parley_ws *ws, parley_ws_type type, const void *data, size_t len, void *user)
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
        if (status && (err == PARLEY_EPROXY || err == PARLEY_EPROXYAUTH))
            fprintf(stderr, "parley: %s: HTTP %d\n", parley_strerror(err), status);
        else if (status)
            fprintf(stderr, "parley: handshake refused: HTTP %d\n", status);
        else
            fprintf(stderr, "parley: connection ended: %s (code %d)\n", parley_strerror(err), code);
        c->exit_code = 1;
    } else {
        if (!c->echo) fprintf(stderr, "closed: %d %.*s\n", code, (int)reason_len, reason);
        c->exit_code = 0;
    }
    if (c->in && !uv_is_closing((uv_handle_t *)c->in)) uv_close((uv_handle_t *)c->in, NULL);
}

/* ---- ws-queue ---- */

/* Writes one JSON line: {"ev":NAME,"t":MS<fields>}. fields is JSON text
 * starting with a comma, or "". */
static void emit_line(cli *c, const char *name, pbuf *fields)
{
    pbuf b = {0};
    pbuf_appendf(&b, "{\"ev\":\"%s\",\"t\":%llu", name, (unsigned long long)(ptime_ms() - c->t0));
    if (fields && fields->len) pbuf_append(&b, fields->ptr, fields->len);
    pbuf_append(&b, "}\n", 2);
    fwrite(b.ptr, 1, b.len, stdout);
    fflush(stdout);
    pbuf_free(&b);
    if (fields) pbuf_free(fields);
}

static void add_str(pbuf *b, const char *key, const char *s, size_t len)
{
    pbuf_appendf(b, ",\"%s\":", key);
    if (json_append_string(b, s, len) != 0) pbuf_append_str(b, "null");
}

static const char *const ev_names[] = {
    [PARLEY_WS_EV_CONNECTING] = "connecting",
    [PARLEY_WS_EV_CONNECTED] = "connected",
    [PARLEY_WS_EV_DISCONNECTED] = "disconnected",
    [PARLEY_WS_EV_RECONNECTING] = "reconnecting",
    [PARLEY_WS_EV_RECONNECT_FAILED] = "reconnect_failed",
    [PARLEY_WS_EV_MESSAGE] = "message",
    [PARLEY_WS_EV_ERROR] = "error",
};

static void q_event(parley_ws *ws, const parley_ws_event *ev, void *user)
{
    cli *c = user;
    pbuf f = {0};
    if (ev->type != PARLEY_WS_EV_MESSAGE) pbuf_appendf(&f, ",\"attempt\":%u", ev->attempt);
    switch (ev->type) {
    case PARLEY_WS_EV_RECONNECTING:
        pbuf_appendf(&f, ",\"delay\":%u", ev->delay_ms);
        break;
    case PARLEY_WS_EV_DISCONNECTED:
    case PARLEY_WS_EV_ERROR:
        add_str(&f, "reason", ev->reason, strlen(ev->reason));
        pbuf_appendf(&f, ",\"err\":\"%s\",\"code\":%d,\"status\":%d,\"will_retry\":%s",
                     ev->err ? parley_strerror(ev->err) : "", ev->code, ev->http_status,
                     ev->will_retry ? "true" : "false");
        break;
    case PARLEY_WS_EV_RECONNECT_FAILED:
        pbuf_appendf(&f, ",\"status\":%d", ev->http_status);
        break;
    case PARLEY_WS_EV_MESSAGE:
        if (ev->msg_type == PARLEY_WS_TEXT) {
            add_str(&f, "data", ev->data, ev->len);
        } else {
            pbuf_appendf(&f, ",\"binary\":%zu", ev->len);
        }
        break;
    default:
        break;
    }
    emit_line(c, ev_names[ev->type], &f);
    if (ev->type == PARLEY_WS_EV_MESSAGE && c->ack_echo && ev->msg_type == PARLEY_WS_TEXT &&
        ev->len >= 36) {
        char id[37];
        memcpy(id, ev->data, 36);
        id[36] = 0;
        parley_ws_ack(ws, id); /* a duplicate echo is refused: harmless */
    }
}

static void q_status(parley_ws *ws, const char *id, parley_ws_send_status status, int err,
                     void *user)
{
    (void)ws;
    static const char *const names[] = {"", "queued", "sent", "acked", "failed"};
    pbuf f = {0};
    add_str(&f, "id", id, strlen(id));
    pbuf_appendf(&f, ",\"status\":\"%s\",\"err\":\"%s\"", names[status],
                 err ? parley_strerror(err) : "");
    emit_line(user, "status", &f);
}

static int parse_priority(const char *s)
{
    static const char *const names[] = {"low", "normal", "high", "urgent"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) return i;
    if (s[0] >= '0' && s[0] <= '3' && !s[1]) return s[0] - '0';
    return -1;
}

/* Splits the next space-separated word off *p (NUL-terminating it). */
static char *word(char **p)
{
    char *s = *p;
    while (*s == ' ') s++;
    if (!*s) return NULL;
    char *e = strchr(s, ' ');
    if (e) {
        *e = 0;
        *p = e + 1;
    } else {
        *p = s + strlen(s);
    }
    return s;
}

static void q_stop(cli *c)
{
    if (c->in && !uv_is_closing((uv_handle_t *)c->in)) uv_close((uv_handle_t *)c->in, NULL);
    c->in = NULL;
    if (c->ws) parley_ws_free(c->ws);
    c->ws = NULL;
    c->exit_code = 0;
}

static void q_command(cli *c, char *line)
{
    char *p = line;
    char *cmd = word(&p);
    if (!cmd || !c->ws) return;
    pbuf f = {0};
    if (!strcmp(cmd, "send")) {
        char *prio = word(&p), *ttl = word(&p), *id = word(&p);
        char *text = p, *end;
        int pr = prio ? parse_priority(prio) : -1;
        unsigned long t = ttl ? strtoul(ttl, &end, 10) : 0;
        char out[37] = "";
        int rc = PARLEY_EINVAL;
        if (pr >= 0 && ttl && !*end && t <= UINT32_MAX && id) {
            if (!strcmp(id, "-"))
                rc = parley_ws_send_queued(c->ws, PARLEY_WS_TEXT, text, strlen(text), pr,
                                           (uint32_t)t, out);
            else
                rc = parley_ws_send_queued_id(c->ws, PARLEY_WS_TEXT, text, strlen(text), pr,
                                              (uint32_t)t, id);
            if (rc == 0 && !out[0]) snprintf(out, sizeof out, "%s", id);
        }
        if (rc == 0) {
            add_str(&f, "id", out, strlen(out));
            emit_line(c, "queued", &f);
        } else {
            if (id) add_str(&f, "id", id, strlen(id));
            pbuf_appendf(&f, ",\"err\":\"%s\"", parley_strerror(rc));
            emit_line(c, "send_error", &f);
        }
    } else if (!strcmp(cmd, "ack")) {
        char *id = word(&p);
        int rc = id ? parley_ws_ack(c->ws, id) : PARLEY_EINVAL;
        if (rc) {
            pbuf_appendf(&f, ",\"err\":\"%s\"", parley_strerror(rc));
            emit_line(c, "ack_error", &f);
        }
    } else if (!strcmp(cmd, "connect")) {
        parley_ws_connect(c->ws);
    } else if (!strcmp(cmd, "close")) {
        char *code = word(&p);
        parley_ws_close(c->ws, code ? atoi(code) : 1000, NULL);
    } else if (!strcmp(cmd, "stats")) {
        parley_ws_stats st;
        parley_ws_get_stats(c->ws, &st);
        pbuf_appendf(&f,
                     ",\"connections\":%llu,\"reconnects\":%llu,\"attempts\":%llu,\"errors\":%llu,"
                     "\"messages_in\":%llu,\"messages_out\":%llu,\"bytes_in\":%llu,"
                     "\"bytes_out\":%llu,\"uptime_ms\":%llu,\"total_uptime_ms\":%llu,"
                     "\"last_rtt_us\":%llu,\"queued\":%llu",
                     (unsigned long long)st.connections, (unsigned long long)st.reconnects,
                     (unsigned long long)st.attempts, (unsigned long long)st.errors,
                     (unsigned long long)st.messages_in, (unsigned long long)st.messages_out,
                     (unsigned long long)st.bytes_in, (unsigned long long)st.bytes_out,
                     (unsigned long long)st.uptime_ms, (unsigned long long)st.total_uptime_ms,
                     (unsigned long long)st.last_rtt_us, (unsigned long long)st.queued);
        emit_line(c, "stats", &f);
    } else if (!strcmp(cmd, "quit")) {
        q_stop(c);
    } else {
        add_str(&f, "command", cmd, strlen(cmd));
        emit_line(c, "unknown_command", &f);
    }
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
        if (c->queue) {
            q_stop(c);
            return;
        }
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
        if (c->queue) {
            start[len] = 0;
            q_command(c, start);
            if (!c->in) return; /* quit */
        } else if (c->open) {
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
    if (!strcmp(cmd, "chat")) return chat_main(argc - 1, argv + 1);
    if (!strcmp(cmd, "token")) return token_main(argc - 1, argv + 1);
    cli c = {.exit_code = 1};
    if (!strcmp(cmd, "ws-echo")) {
        c.echo = true;
    } else if (!strcmp(cmd, "ws-queue")) {
        c.queue = true;
    } else if (strcmp(cmd, "ws") != 0) {
        fprintf(stderr, "parley: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }
    parley_ws_opts o;
    parley_ws_opts_init(&o);
    const char *headers[MAX_LIST], *protocols[MAX_LIST];
    enum {
        OPT_HEADER = 256,
        OPT_PROTO,
        OPT_NO_DEFLATE,
        OPT_CA,
        OPT_PROXY,
        OPT_INSECURE,
        OPT_TIMEOUT,
        OPT_MAX_MSG,
        OPT_VERBOSE,
        OPT_RECONNECT,
        OPT_RC_DELAY,
        OPT_RC_DELAY_MAX,
        OPT_RC_ATTEMPTS,
        OPT_PING_INTERVAL,
        OPT_PING_TIMEOUT,
        OPT_QUEUE_FILE,
        OPT_Q_COUNT,
        OPT_Q_BYTES,
        OPT_ACK_ON_WRITE,
        OPT_ACK_ECHO
    };
    static const struct option longopts[] = {
        {"header", required_argument, 0, OPT_HEADER},
        {"protocol", required_argument, 0, OPT_PROTO},
        {"no-deflate", no_argument, 0, OPT_NO_DEFLATE},
        {"ca-file", required_argument, 0, OPT_CA},
        {"proxy", required_argument, 0, OPT_PROXY},
        {"insecure", no_argument, 0, OPT_INSECURE},
        {"timeout", required_argument, 0, OPT_TIMEOUT},
        {"max-message", required_argument, 0, OPT_MAX_MSG},
        {"verbose", no_argument, 0, OPT_VERBOSE},
        {"reconnect", no_argument, 0, OPT_RECONNECT},
        {"reconnect-delay", required_argument, 0, OPT_RC_DELAY},
        {"reconnect-delay-max", required_argument, 0, OPT_RC_DELAY_MAX},
        {"reconnect-attempts", required_argument, 0, OPT_RC_ATTEMPTS},
        {"ping-interval", required_argument, 0, OPT_PING_INTERVAL},
        {"ping-timeout", required_argument, 0, OPT_PING_TIMEOUT},
        {"queue-file", required_argument, 0, OPT_QUEUE_FILE},
        {"queue-max-count", required_argument, 0, OPT_Q_COUNT},
        {"queue-max-bytes", required_argument, 0, OPT_Q_BYTES},
        {"ack-on-write", no_argument, 0, OPT_ACK_ON_WRITE},
        {"ack-echo", no_argument, 0, OPT_ACK_ECHO},
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
        case OPT_NO_DEFLATE:
            o.permessage_deflate = 0;
            break;
        case OPT_CA:
            o.ca_file = optarg;
            break;
        case OPT_PROXY:
            o.proxy = optarg;
            break;
        case OPT_INSECURE:
            o.insecure = 1;
            break;
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
        case OPT_VERBOSE:
            parley_log_set(PARLEY_LOG_DEBUG, NULL, NULL);
            break;
        case OPT_RECONNECT:
            o.reconnect = 1;
            break;
        case OPT_ACK_ON_WRITE:
            o.ack_on_write = 1;
            break;
        case OPT_ACK_ECHO:
            c.ack_echo = true;
            break;
        case OPT_QUEUE_FILE:
            o.queue_path = optarg;
            break;
        case OPT_RC_DELAY:
        case OPT_RC_DELAY_MAX:
        case OPT_RC_ATTEMPTS:
        case OPT_PING_INTERVAL:
        case OPT_PING_TIMEOUT:
        case OPT_Q_COUNT:
        case OPT_Q_BYTES: {
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            bool wide = ch == OPT_Q_COUNT || ch == OPT_Q_BYTES;
            if (errno || *end || !*optarg || (!wide && v > UINT32_MAX)) {
                fprintf(stderr, "parley: bad value for --%s\n", longopts[ch - OPT_HEADER].name);
                return 2;
            }
            if (ch == OPT_RC_DELAY) o.reconnect_delay_ms = (uint32_t)v;
            if (ch == OPT_RC_DELAY_MAX) o.reconnect_delay_max_ms = (uint32_t)v;
            if (ch == OPT_RC_ATTEMPTS) o.reconnect_attempts = (unsigned)v;
            if (ch == OPT_PING_INTERVAL) o.ping_interval_ms = (uint32_t)v;
            if (ch == OPT_PING_TIMEOUT) o.ping_timeout_ms = (uint32_t)v;
            if (ch == OPT_Q_COUNT) o.queue_max_count = (size_t)v;
            if (ch == OPT_Q_BYTES) o.queue_max_bytes = (size_t)v;
            break;
        }
        default:
            usage(stderr);
            return 2;
        }
        if (ch >= OPT_RECONNECT && !c.queue) {
            fprintf(stderr, "parley: --%s is a ws-queue option\n", longopts[ch - OPT_HEADER].name);
            return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    o.url = argv[optind];
    o.headers = headers;
    o.protocols = protocols;
    if (c.queue) {
        o.on_event = q_event;
        o.on_send_status = q_status;
    } else {
        o.on_open = on_open;
        o.on_message = on_message;
        o.on_close = on_close;
    }
    o.user = &c;
    signal(SIGPIPE, SIG_IGN);

    c.t0 = ptime_ms();
    c.loop = parley_loop_new();
    if (!c.loop) return 1;
    int rc = parley_ws_new(c.loop, &o, &c.ws);
    if (rc) {
        fprintf(stderr, "parley: %s: %s\n", o.url, parley_strerror(rc));
        parley_loop_free(c.loop);
        return rc == PARLEY_EURL || rc == PARLEY_EINVAL ? 2 : 1;
    }
    if (c.queue && start_stdin(&c) != 0) {
        fprintf(stderr, "parley: cannot read stdin\n");
        parley_ws_free(c.ws);
        parley_loop_free(c.loop);
        return 1;
    }
    parley_ws_connect(c.ws);
    parley_loop_run(c.loop);
    parley_ws_free(c.ws);
    parley_loop_free(c.loop);
    return c.exit_code;
}
