/*
 * Messaging quick start (include/parley/chat.h): sign in as a user, send
 * a message, and watch it go sending -> sent -> delivered -> read; print
 * what others send.
 *
 * Against a development server (no tokens: never in production):
 *
 *     scripts/run --dev-auth                                  # one terminal
 *     build/examples/chat http://127.0.0.1:8080 alice bob     # another
 *     build/examples/chat http://127.0.0.1:8080 bob alice     # a third
 *
 * With a real server, give a token instead: PARLEY_TOKEN=<JWT> chat URL
 * USER PEER (the token callback runs on every reconnection, so a fresh
 * token can be handed out there). Each line typed is sent to PEER; it is
 * queued while the server is unreachable and sent once it is back.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parley/chat.h"

static const char *status_name[] = {"?", "sending", "sent", "delivered", "read", "failed"};

static char *token(parley_chat *c, void *user)
{
    (void)c;
    (void)user;
    const char *t = getenv("PARLEY_TOKEN");
    return t ? strdup(t) : NULL;
}

/* Callbacks run on the chat's own thread. */
static void on_state(parley_chat *c, parley_chat_state st, const parley_chat_error *why, void *user)
{
    (void)c;
    (void)user;
    static const char *names[] = {"?", "offline", "connecting", "syncing", "online", "refused"};
    printf("[%s%s%s]\n", names[st], why ? ": " : "", why ? why->message : "");
    fflush(stdout);
}

static void on_message(parley_chat *c, const parley_chat_message *m, void *user)
{
    (void)user;
    printf("%s #%lld %s: %s\n", m->conversation, (long long)m->seq, m->from, m->text);
    fflush(stdout);
    /* Shown to the user: mark it read (delivered was sent by itself). */
    if (!m->mine) parley_chat_mark_read(c, m->conversation, m->seq);
}

static void on_status(parley_chat *c, const parley_chat_status *st, void *user)
{
    (void)c;
    (void)user;
    printf("  message %.8s: %s%s%s\n", st->client_id, status_name[st->status],
           st->error ? " - " : "", st->error ? st->error->message : "");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s URL USER PEER\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    parley_chat_opts o;
    parley_chat_opts_init(&o);
    o.url = argv[1];
    o.user_id = argv[2];
    o.token = token;
    o.dev_auth = getenv("PARLEY_TOKEN") == NULL;
    o.on_state = on_state;
    o.on_message = on_message;
    o.on_status = on_status;
    parley_chat *chat;
    int rc = parley_chat_new(&o, &chat);
    if (rc) {
        fprintf(stderr, "%s\n", parley_strerror(rc));
        return 1;
    }
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!*line) continue;
        parley_chat_send_opts so;
        parley_chat_send_opts_init(&so);
        so.to = argv[3];
        so.text = line;
        parley_chat_error err;
        rc = parley_chat_send(chat, &so, NULL, &err);
        if (rc) printf("not sent: %s (%s)\n", err.message, err.code);
    }
    parley_chat_free(chat);
    return 0;
}
