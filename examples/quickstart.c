/*
 * Quick start: connect, listen to events, emit (with and without an
 * acknowledgement), follow reconnection, print statistics.
 *
 * Run it against the protocol-test server:
 *
 *     scripts/run --protocol-test --listen 127.0.0.1:8080   # one terminal
 *     build/examples/quickstart http://127.0.0.1:8080       # another
 *
 * Stop the server with Ctrl-C and start it again: the client reports the
 * disconnection and the reconnection attempts, and the emits made while
 * it was away are delivered once it is back. Ctrl-C ends the example.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "parley/client.h"

static volatile sig_atomic_t stop;

static void on_sigint(int sig)
{
    (void)sig;
    stop = 1;
}

/* Callbacks run on the client's own thread. */
static void on_client_event(parley_client *c, const parley_client_event *ev, void *user)
{
    (void)c;
    (void)user;
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
    printf("connected to / as %s%s\n", id, recovered ? " (recovered)" : "");
    fflush(stdout);
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
    (void)s;
    (void)user;
    printf("event %s %.*s%s\n", event, (int)args->json_len, args->json,
           ack_id >= 0 ? " (wants an ack)" : "");
    fflush(stdout);
}

static void on_ack(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    (void)user;
    if (err)
        printf("no acknowledgement: %s\n", parley_strerror(err));
    else
        printf("acknowledged with %.*s\n", (int)args->json_len, args->json);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : "http://127.0.0.1:8080";
    signal(SIGINT, on_sigint);

    parley_client_opts o;
    parley_client_opts_init(&o);
    o.url = url;
    o.on_event = on_client_event;
    o.auto_connect = 0; /* sockets and handlers first, then connect */
    parley_client *c;
    int rc = parley_client_new(&o, &c);
    if (rc) {
        fprintf(stderr, "quickstart: %s\n", parley_strerror(rc));
        return 1;
    }

    parley_sock_opts so;
    parley_sock_opts_init(&so);
    so.on_connect = on_connect;
    so.on_disconnect = on_disconnect;
    parley_sock *s = parley_client_socket(c, "/", &so);
    parley_sock_on_any(s, on_event, NULL);
    parley_client_connect(c);

    /* The protocol-test server echoes "message" as "message-back" and acks
     * "message-with-ack" with its arguments. Emits made while offline wait
     * in a buffer and leave in order. */
    for (int i = 0; !stop; i++) {
        char args[64];
        snprintf(args, sizeof args, "[\"hello\",%d]", i);
        parley_sock_emit(s, "message", args, NULL, 0);
        parley_sock_emit_ack(s, "message-with-ack", args, NULL, 0, 2000, on_ack, NULL);
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
        sleep(1);
    }
    parley_client_free(c);
    return 0;
}
