/*
 * Reliable sends: messages go through the outbound queue, persisted in a
 * SQLite file, and leave it only when the server has acknowledged them.
 * Kill this program (even with kill -9) or the server at any point and
 * start it again: what was not acknowledged is sent again, in priority
 * order, with the same idempotency ids.
 *
 * Run it against the protocol-test server, which acknowledges
 * "message-with-ack":
 *
 *     scripts/run --protocol-test --listen 127.0.0.1:8080       # one terminal
 *     build/examples/reliable http://127.0.0.1:8080 /tmp/q.db   # another
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "parley/client.h"

static const char *const status_names[] = {"", "queued", "sent", "acked", "failed"};

static void on_status(parley_sock *s, const char *id, int status, int err, const parley_args *args,
                      void *user)
{
    (void)s;
    (void)args;
    (void)user;
    printf("%s %s%s%s\n", id, status_names[status], err ? ": " : "",
           err ? parley_strerror(err) : "");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : "http://127.0.0.1:8080";
    const char *queue = argc > 2 ? argv[2] : "/tmp/parley-example-queue.db";

    parley_client_opts o;
    parley_client_opts_init(&o);
    o.url = url;
    parley_client *c;
    if (parley_client_new(&o, &c) != 0) return 1;
    parley_sock_opts so;
    parley_sock_opts_init(&so);
    so.queue_path = queue;
    parley_sock *s = parley_client_socket(c, "/", &so);
    if (!s) {
        fprintf(stderr, "reliable: cannot open the queue file %s\n", queue);
        return 1;
    }
    printf("%zu messages left from an earlier run\n", parley_sock_queued(s));

    for (int i = 0; i < 20; i++) {
        char id[37], args[128];
        parley_new_id(id); /* the server can drop duplicates by this id */
        int prio = i % 4 == 0 ? PARLEY_PRIORITY_HIGH : PARLEY_PRIORITY_NORMAL;
        snprintf(args, sizeof args, "[{\"id\":\"%s\",\"n\":%d}]", id, i);
        int rc = parley_sock_send(s, "message-with-ack", args, prio, 60000, id, on_status, NULL);
        if (rc) printf("not queued: %s\n", parley_strerror(rc));
    }
    while (parley_sock_queued(s) > 0) sleep(1);
    printf("all acknowledged\n");
    parley_client_free(c);
    return 0;
}
