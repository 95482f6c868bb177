/*
 * Quick start with the Socket.IO client (include/parley/client.h): connect
 * to parleyd's messaging namespace /chat with a token, listen to every
 * event, emit with and without an acknowledgement, follow reconnection,
 * print statistics.
 *
 * parleyd's /chat wants a token (an HS256 JWT whose sub is the user id).
 * With the server that scripts/run starts (its secret in var/jwt.secret):
 *
 *     scripts/run                                                  # one terminal
 *     export PARLEY_TOKEN=$(build/parley token --secret-file var/jwt.secret --user alice)
 *     build/examples/quickstart http://127.0.0.1:8080              # another
 *
 * It joins the room "quickstart" and sends a message there every second
 * (acknowledged once stored), with a typing indicator before it (no
 * acknowledgement). Run a second one as another user to see each other's
 * messages. Stop the server with Ctrl-C and start it again: the client
 * reports the disconnection and the reconnection attempts, and the emits
 * made while it was away are delivered once it is back. A server that
 * cannot be reached at first, or that refuses the token, ends the example
 * with a message (exit status 1). Ctrl-C ends it.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "parley/client.h"
#include "parley/json.h"

static volatile sig_atomic_t stop;
static volatile sig_atomic_t failed;    /* why it stops: 1 refused, 2 unreachable */
static volatile sig_atomic_t connected; /* connected to /chat at least once */

static void on_sigint(int sig)
{
    (void)sig;
    stop = 1;
}

static void usage(const char *prog)
{
    fprintf(
        stderr,
        "usage: %s [URL [TOKEN]]\n"
        "\n"
        "Connects to parleyd's /chat namespace (URL default http://127.0.0.1:8080) with\n"
        "TOKEN, or the PARLEY_TOKEN environment variable: a JWT that the server accepts.\n"
        "For a server started with --jwt-secret-file FILE (scripts/run: var/jwt.secret):\n"
        "\n"
        "    export PARLEY_TOKEN=$(build/parley token --secret-file var/jwt.secret --user alice)\n"
        "    %s http://127.0.0.1:8080\n",
        prog, prog);
}

/* The CONNECT payload, asked for on every (re)connection: {"token": ...},
 * built with parley/json.h (which escapes the string). The client frees
 * what this returns with free(), so the text is copied out of the builder. */
static char *auth(parley_sock *s, void *user)
{
    (void)s;
    parley_json_builder *b;
    if (parley_json_builder_new(&b)) return NULL;
    parley_json_begin_object(b);
    parley_json_key(b, "token");
    parley_json_string(b, user);
    parley_json_end_object(b); /* errors are sticky: checked once, below */
    const char *text = parley_json_builder_result(b, NULL);
    char *json = text ? strdup(text) : NULL;
    parley_json_builder_free(b);
    return json;
}

/* Callbacks run on the client's own thread. */
static void on_client_event(parley_client *c, const parley_client_event *ev, void *user)
{
    (void)c;
    const char *url = user;
    switch (ev->type) {
    case PARLEY_CLIENT_OPEN:
        printf("open on %s\n", ev->transport);
        break;
    case PARLEY_CLIENT_UPGRADE:
        printf("upgraded to %s\n", ev->transport);
        break;
    case PARLEY_CLIENT_CLOSE:
        printf("closed: %s\n", ev->reason);
        break;
    case PARLEY_CLIENT_RECONNECTING:
        printf("reconnection attempt %u in %u ms\n", ev->attempt, ev->delay_ms);
        break;
    case PARLEY_CLIENT_RECONNECTED:
        printf("reconnected after %u attempts\n", ev->attempt);
        break;
    case PARLEY_CLIENT_RECONNECT_FAILED:
        printf("gave up reconnecting\n");
        break;
    case PARLEY_CLIENT_ERROR:
        printf("error: %s (HTTP %d)\n", parley_strerror(ev->err), ev->http_status);
        if (!connected && !stop) {
            /* Never connected: most likely nothing listens there. */
            fprintf(stderr,
                    "quickstart: cannot reach %s: %s%s\n"
                    "quickstart: is parleyd running there? (scripts/run starts it)\n",
                    url, parley_strerror(ev->err), ev->http_status ? " (HTTP error)" : "");
            failed = 2;
            stop = 1;
        }
        break;
    default:
        break;
    }
    fflush(stdout);
}

static void on_connect(parley_sock *s, int recovered, void *user)
{
    (void)user;
    char id[32];
    parley_sock_id(s, id);
    connected = 1;
    printf("connected to /chat as %s%s\n", id, recovered ? " (recovered)" : "");
    fflush(stdout);
}

static void on_connect_error(parley_sock *s, const char *message, const char *data_json, void *user)
{
    (void)s;
    (void)user;
    /* data is {"code": ..., "message": ...}: token_expired, invalid_token, ... */
    fprintf(stderr, "quickstart: the server refused the connection: %s%s%s\n", message,
            data_json ? " " : "", data_json ? data_json : "");
    if (data_json && strstr(data_json, "\"token_expired\""))
        fprintf(stderr, "quickstart: the token has expired; make a fresh one with parley token\n");
    else if (data_json && strstr(data_json, "\"invalid_token\""))
        fprintf(stderr, "quickstart: the server does not accept this token (malformed, or not "
                        "signed with its secret: parley token --secret-file must name the file "
                        "parleyd reads)\n");
    failed = 1;
    stop = 1;
}

static void on_disconnect(parley_sock *s, const char *reason, void *user)
{
    (void)s;
    (void)user;
    printf("disconnected: %s\n", reason);
    fflush(stdout);
}

/* Every event arrives here: its arguments are one JSON array. */
static void on_event(parley_sock *s, const char *event, const parley_args *args, int64_t ack_id,
                     void *user)
{
    (void)user;
    printf("event %s %.*s\n", event, (int)args->json_len, args->json);
    fflush(stdout);
    /* Notifications ask for an acknowledgement (it marks them delivered). */
    if (ack_id >= 0) parley_sock_ack(s, ack_id, "[]", NULL, 0);
}

static void on_ack(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    (void)user;
    if (err) {
        printf("no acknowledgement: %s\n", parley_strerror(err));
    } else {
        printf("acknowledged with %.*s\n", (int)args->json_len, args->json);
        /* The answer is [{"ok": false, "error": {"code": ..., ...}}] when
         * the request was refused: read with parley/json.h. */
        parley_json_doc *d;
        if (parley_json_parse(args->json, args->json_len, 0, 0, &d, NULL) == 0) {
            parley_json_value answer = parley_json_at(parley_json_root(d), 0);
            int ok;
            char code[64];
            if (parley_json_get_bool(parley_json_get(answer, "ok"), &ok) == 0 && !ok &&
                parley_json_get_string(parley_json_get(parley_json_get(answer, "error"), "code"),
                                       code, sizeof code, NULL) == 0)
                printf("refused: %s\n", code);
            parley_json_free(d);
        }
    }
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc > 3 || (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")))) {
        usage(argv[0]);
        return argc > 3 ? 2 : 0;
    }
    const char *url = argc > 1 ? argv[1] : "http://127.0.0.1:8080";
    const char *token = argc > 2 ? argv[2] : getenv("PARLEY_TOKEN");
    if (!token || !*token) {
        fprintf(stderr, "%s: no token: give TOKEN or set PARLEY_TOKEN\n\n", argv[0]);
        usage(argv[0]);
        return 2;
    }
    for (const char *p = token; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) {
            fprintf(stderr, "%s: that is not a token (a JWT is base64url text and dots)\n",
                    argv[0]);
            return 2;
        }
    signal(SIGINT, on_sigint);
    signal(SIGTERM, on_sigint);

    parley_client_opts o;
    parley_client_opts_init(&o);
    o.url = url;
    o.on_event = on_client_event;
    o.user = (void *)url;
    o.auto_connect = 0; /* sockets and handlers first, then connect */
    parley_client *c;
    int rc = parley_client_new(&o, &c);
    if (rc) {
        fprintf(stderr, "quickstart: %s: %s\n", url, parley_strerror(rc));
        return 2;
    }

    parley_sock_opts so;
    parley_sock_opts_init(&so);
    so.auth = auth;
    so.user = (void *)token;
    so.on_connect = on_connect;
    so.on_connect_error = on_connect_error;
    so.on_disconnect = on_disconnect;
    parley_sock *s = parley_client_socket(c, "/chat", &so);
    parley_sock_on_any(s, on_event, NULL);
    parley_client_connect(c);

    /* Emits made while offline wait in a buffer and leave in order, once
     * connected. Requests on /chat take one object; the acknowledgement is
     * {"ok": true, ...} or {"ok": false, "error": {...}} (docs/PROTOCOL.md). */
    parley_sock_emit_ack(s, "join_room", "[{\"room\":\"quickstart\"}]", NULL, 0, 5000, on_ack,
                         NULL);
    parley_json_builder *b;
    if (parley_json_builder_new(&b)) {
        parley_client_free(c);
        return 2;
    }
    for (int i = 0; !stop; i++) {
        char id[37], text[32];
        parley_sock_emit(s, "typing",
                         "[{\"conversation\":\"room:quickstart\",\"state\":\"start\"}]", NULL, 0);
        /* [{"client_id": id, "room": "quickstart", "type": "text",
         *   "content": {"text": "hello N"}}], any text escaped */
        parley_new_id(id);
        snprintf(text, sizeof text, "hello %d", i);
        parley_json_builder_reset(b);
        parley_json_begin_array(b);
        parley_json_begin_object(b);
        parley_json_key(b, "client_id");
        parley_json_string(b, id);
        parley_json_key(b, "room");
        parley_json_string(b, "quickstart");
        parley_json_key(b, "type");
        parley_json_string(b, "text");
        parley_json_key(b, "content");
        parley_json_begin_object(b);
        parley_json_key(b, "text");
        parley_json_string(b, text);
        parley_json_end_object(b);
        parley_json_end_object(b);
        parley_json_end_array(b);
        const char *args = parley_json_builder_result(b, NULL);
        if (args) parley_sock_emit_ack(s, "send_message", args, NULL, 0, 5000, on_ack, NULL);
        if (i % 5 == 4) {
            parley_client_stats st;
            parley_client_get_stats(c, &st);
            printf("stats: %llu sessions, %llu reconnects, %llu packets in, %llu out, "
                   "up %llu ms, last round trip %u ms\n",
                   (unsigned long long)st.connects, (unsigned long long)st.reconnects,
                   (unsigned long long)st.packets_in, (unsigned long long)st.packets_out,
                   (unsigned long long)st.uptime_ms, st.last_rtt_ms);
            fflush(stdout);
        }
        for (int t = 0; t < 10 && !stop; t++) usleep(100000);
    }
    parley_json_builder_free(b);
    parley_client_free(c);
    return failed ? 1 : 0;
}
