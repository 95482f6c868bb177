/*
 * The state store (include/parley/store.h) the way a GUI or an FFI host
 * uses it: values are watched, and changes are delivered on the
 * application's own thread, here a poll() loop over stdin and the
 * store's descriptor. Lines typed are sent to PEER; the conversation,
 * the connection and PEER's typing are printed whenever they change (a
 * burst of messages prints once). With CACHE, the last known
 * conversation is shown at once, even with the server down.
 *
 *     scripts/run --dev-auth                                          # one terminal
 *     build/examples/store http://127.0.0.1:8080 alice bob alice.db   # another
 *     build/examples/chat http://127.0.0.1:8080 bob alice             # a third
 */
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "parley/store.h"

/* Runs on this program's main thread, inside parley_store_dispatch. */
static void show(parley_store *s, const char *key, const char *json, size_t len, void *user)
{
    (void)s;
    (void)user;
    /* A real UI would parse the JSON and re-render; the text will do. */
    printf("%s = %.*s%s\n", key, len > 600 ? 600 : (int)len, json, len > 600 ? "..." : "");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: %s URL USER PEER [CACHE]\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    char conv[133];
    if (parley_chat_dm_id(argv[2], argv[3], conv) != 0) {
        fprintf(stderr, "bad user ids\n");
        return 2;
    }
    parley_chat_opts co;
    parley_chat_opts_init(&co);
    co.url = argv[1];
    co.user_id = argv[2];
    co.dev_auth = 1; /* development servers only: a real one wants co.token */
    parley_store_opts so;
    parley_store_opts_init(&so);
    so.chat = &co;
    so.max_messages = 20;
    so.dispatch_fd = 1;
    so.cache_path = argc == 5 ? argv[4] : NULL;
    parley_store *st;
    int rc = parley_store_new(&so, &st);
    if (rc) {
        fprintf(stderr, "%s\n", parley_strerror(rc));
        return 1;
    }
    char key[160];
    parley_store_watch(st, "connection", show, NULL);
    snprintf(key, sizeof key, "messages/%s", conv);
    parley_store_watch(st, key, show, NULL);
    snprintf(key, sizeof key, "typing/%s", conv);
    parley_store_watch(st, key, show, NULL);

    struct pollfd fds[2] = {{.fd = 0, .events = POLLIN},
                            {.fd = parley_store_fd(st), .events = POLLIN}};
    char line[4096];
    for (;;) {
        if (poll(fds, 2, -1) < 0) break;
        if (fds[1].revents & POLLIN) parley_store_dispatch(st);
        if (!(fds[0].revents & (POLLIN | POLLHUP))) continue;
        if (!fgets(line, sizeof line, stdin)) break;
        line[strcspn(line, "\r\n")] = 0;
        if (!*line) continue;
        parley_chat_send_opts o;
        parley_chat_send_opts_init(&o);
        o.to = argv[3];
        o.text = line;
        parley_chat_error err;
        if (parley_store_send(st, &o, NULL, &err) != 0)
            printf("not sent: %s (%s)\n", err.message, err.code);
    }
    parley_store_free(st);
    return 0;
}
