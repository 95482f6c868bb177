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
 * queued while the server is unreachable and sent once it is back. A line
 * "/loc LAT LNG LABEL" sends a location instead (its content object built
 * with parley/json.h, which escapes the label); received locations are
 * printed with their coordinates, read from the content with parley/json.h.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parley/chat.h"
#include "parley/json.h"

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
    printf("%s #%lld %s: %s", m->conversation, (long long)m->seq, m->from, m->text);
    /* Other content: read from the content object, e.g. a location's
     * {"lat": ..., "lng": ..., "label": ...}. */
    parley_json_doc *d;
    if (!strcmp(m->type, "location") &&
        parley_json_parse(m->content_json, m->content_len, 0, 0, &d, NULL) == 0) {
        double lat, lng;
        parley_json_value content = parley_json_root(d);
        if (parley_json_get_double(parley_json_get(content, "lat"), &lat) == 0 &&
            parley_json_get_double(parley_json_get(content, "lng"), &lng) == 0)
            printf(" (location %.6f, %.6f)", lat, lng);
        parley_json_free(d);
    }
    printf("\n");
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
        double lat, lng;
        int label_at = 0;
        parley_json_builder *b = NULL;
        if (sscanf(line, "/loc %lf %lf %n", &lat, &lng, &label_at) == 2 && label_at > 0) {
            /* {"lat": LAT, "lng": LNG, "label": LABEL} */
            if (parley_json_builder_new(&b)) break;
            parley_json_begin_object(b);
            parley_json_key(b, "lat");
            parley_json_double(b, lat);
            parley_json_key(b, "lng");
            parley_json_double(b, lng);
            parley_json_key(b, "label");
            parley_json_string(b, line + label_at);
            parley_json_end_object(b);
            so.type = "location";
            so.text = NULL;
            so.content_json = parley_json_builder_result(b, NULL);
            if (!so.content_json) {
                /* e.g. a label that is not UTF-8 */
                printf("not sent: %s\n", parley_strerror(parley_json_builder_error(b)));
                parley_json_builder_free(b);
                continue;
            }
        }
        parley_chat_error err;
        rc = parley_chat_send(chat, &so, NULL, &err);
        parley_json_builder_free(b); /* parley_chat_send copied the content */
        if (rc) printf("not sent: %s (%s)\n", err.message, err.code);
    }
    parley_chat_free(chat);
    return 0;
}
