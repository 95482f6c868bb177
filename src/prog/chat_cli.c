/*
 * parley chat: the messaging client (include/parley/chat.h) on the command
 * line. Commands are lines on stdin, everything that happens is a JSON
 * line on stdout, so that people and scripts (the interop tests) can both
 * drive it. The chat runs on its own loop thread; this thread only reads
 * stdin, so output from both is serialised by a mutex.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "codec/json.h"
#include "parley/chat.h"
#include "prog/chat_cli.h"
#include "services/msg_schema.h"

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static const char *token_file;
static const char *token_fixed;

static void usage(FILE *f)
{
    fprintf(
        f, "usage: parley chat URL --user ID [options]\n"
           "\n"
           "The messaging client: commands on stdin (one per line), events as JSON lines\n"
           "on stdout. Messages sent while offline are queued and go out on reconnection,\n"
           "exactly once.\n"
           "\n"
           "options:\n"
           "  --user ID              the user id (the token's subject)\n"
           "  --token JWT            the CONNECT token (parley token makes one)\n"
           "  --token-file FILE      read the token from FILE on every (re)connection\n"
           "  --dev-auth             no token: {\"user\": ID} (parleyd --dev-auth only)\n"
           "  --queue-file FILE      keep unsent messages in this SQLite file\n"
           "  --transport T          websocket, polling, or both (default: polling, then upgrade)\n"
           "  --reconnect-delay MS   first reconnection delay (default 1000)\n"
           "  --reconnect-delay-max MS  largest delay (default 5000)\n"
           "  --no-auto-delivered    do not send delivered receipts by itself\n"
           "  --ca-file FILE, --insecure   TLS trust\n"
           "\n"
           "messaging commands:\n"
           "  send TARGET TEXT       a text message; TARGET @user, #room or a conversation id\n"
           "  send-json OBJECT       {\"to\"|\"room\"|\"conversation\", \"type\", \"content\",\n"
           "                         \"priority\" (low, normal, high, urgent), \"ttl_ms\",\n"
           "                         \"client_id\"}\n"
           "  read CONV SEQ          mark read up to SEQ\n"
           "  typing CONV on|off\n"
           "  history CONV [BEFORE [LIMIT]]\n"
           "  join ROOM | leave ROOM | members ROOM\n"
           "  upload MIME FILE       upload media; prints its id\n"
           "  last-seq CONV | connect | close | state | quit (also end of input)\n"
           "\n"
           "presence commands:\n"
           "  presence online|away|busy [TEXT]\n"
           "  invisible on|off       appear offline to everyone else (all devices, stored)\n"
           "                         this device's status; TEXT (the rest of the line, at\n"
           "                         most 128 bytes) sets the user's status text, \"\" clears it\n"
           "  subscribe USER...      follow users' presence (presence events)\n"
           "  unsubscribe USER...\n"
           "  room-presence ROOM     the presence of every member of a room\n"
           "\n"
           "notification commands:\n"
           "  notifications          list the notifications received so far, and the unread count\n"
           "  notifications-sync     fetch notifications the server holds (new ones are printed\n"
           "                         as notification events)\n"
           "  notifications-read ID... | notifications-read all\n"
           "  notification-prefs [JSON]  get the preferences, or change them with an object of\n"
           "                         in_app, push, types, quiet_hours, muted_users, muted_rooms\n"
           "\n"
           "events: {\"ev\": NAME, ...} with NAME\n"
           "  state, message, status, receipt, typing, member, history, room, upload,\n"
           "  last_seq, error;\n"
           "  queued (a send was accepted into the outbound queue: {\"client_id\"}; its\n"
           "    progress follows as status events: sending, sent, delivered, read, failed);\n"
           "  presence ({\"user\", \"status\", \"text\", \"last_seen\", \"devices\"}, and\n"
           "    \"invisible\": true in your own while you appear offline), room_presence;\n"
           "  notification (the server's Notification object plus \"live\"), unread\n"
           "    ({\"count\"}), notifications, notifications_read, prefs\n");
}

/* ---- output ---- */

static void add_str(pbuf *b, const char *key, const char *s)
{
    pbuf_appendf(b, ",\"%s\":", key);
    if (json_append_string(b, s, strlen(s)) != 0) pbuf_append_str(b, "null");
}

static void emit(const char *ev, pbuf *fields)
{
    pthread_mutex_lock(&out_mu);
    printf("{\"ev\":\"%s\"%.*s}\n", ev, fields ? (int)fields->len : 0,
           fields ? (const char *)fields->ptr : "");
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);
    if (fields) pbuf_free(fields);
}

static void emit_error(const char *cmd, const char *code, const char *field, const char *message)
{
    pbuf b = {0};
    add_str(&b, "cmd", cmd);
    add_str(&b, "code", code);
    if (field && *field) add_str(&b, "field", field);
    add_str(&b, "message", message);
    emit("error", &b);
}

static const char *state_name(parley_chat_state s)
{
    switch (s) {
    case PARLEY_CHAT_OFFLINE:
        return "offline";
    case PARLEY_CHAT_CONNECTING:
        return "connecting";
    case PARLEY_CHAT_SYNCING:
        return "syncing";
    case PARLEY_CHAT_ONLINE:
        return "online";
    case PARLEY_CHAT_REFUSED:
        return "refused";
    }
    return "?";
}

static const char *status_name(parley_msg_status s)
{
    switch (s) {
    case PARLEY_MSG_SENDING:
        return "sending";
    case PARLEY_MSG_SENT:
        return "sent";
    case PARLEY_MSG_DELIVERED:
        return "delivered";
    case PARLEY_MSG_READ:
        return "read";
    case PARLEY_MSG_FAILED:
        return "failed";
    }
    return "?";
}

/* ---- callbacks (loop thread) ---- */

static char *read_token(parley_chat *c, void *user)
{
    (void)c;
    (void)user;
    if (token_fixed) return strdup(token_fixed);
    if (!token_file) return NULL;
    FILE *f = fopen(token_file, "r");
    if (!f) return NULL;
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) n--;
    buf[n] = 0;
    return n ? strdup(buf) : NULL;
}

static void on_state(parley_chat *c, parley_chat_state st, const parley_chat_error *why, void *user)
{
    (void)c;
    (void)user;
    pbuf b = {0};
    add_str(&b, "state", state_name(st));
    if (why) {
        add_str(&b, "code", why->code);
        add_str(&b, "message", why->message);
    }
    emit("state", &b);
}

static void message_fields(pbuf *b, const parley_chat_message *m)
{
    pbuf_appendf(b, ",\"id\":%lld,\"seq\":%lld,\"ts\":%lld", (long long)m->id, (long long)m->seq,
                 (long long)m->ts);
    add_str(b, "conversation", m->conversation);
    add_str(b, "from", m->from);
    add_str(b, "client_id", m->client_id);
    add_str(b, "type", m->type);
    add_str(b, "priority", m->priority);
    pbuf_append_str(b, ",\"content\":");
    pbuf_append(b, m->content_json, m->content_len);
    add_str(b, "text", m->text);
    pbuf_appendf(b, ",\"mine\":%s", m->mine ? "true" : "false");
}

static void on_message(parley_chat *c, const parley_chat_message *m, void *user)
{
    (void)c;
    (void)user;
    pbuf b = {0};
    message_fields(&b, m);
    emit("message", &b);
}

static void on_status(parley_chat *c, const parley_chat_status *st, void *user)
{
    (void)c;
    (void)user;
    pbuf b = {0};
    add_str(&b, "client_id", st->client_id);
    add_str(&b, "status", status_name(st->status));
    if (st->seq) {
        add_str(&b, "conversation", st->conversation);
        pbuf_appendf(&b, ",\"seq\":%lld,\"id\":%lld,\"duplicate\":%s", (long long)st->seq,
                     (long long)st->id, st->duplicate ? "true" : "false");
    }
    if (st->error) {
        add_str(&b, "code", st->error->code);
        if (st->error->field[0]) add_str(&b, "field", st->error->field);
        add_str(&b, "message", st->error->message);
    }
    emit("status", &b);
}

static void on_receipt(parley_chat *c, const char *conv, const char *uid, int64_t delivered,
                       int64_t read, void *user)
{
    (void)c;
    (void)user;
    pbuf b = {0};
    add_str(&b, "conversation", conv);
    add_str(&b, "user", uid);
    pbuf_appendf(&b, ",\"delivered\":%lld,\"read\":%lld", (long long)delivered, (long long)read);
    emit("receipt", &b);
}

static void on_typing(parley_chat *c, const char *conv, const char *uid, int typing, void *user)
{
    (void)c;
    (void)user;
    pbuf b = {0};
    add_str(&b, "conversation", conv);
    add_str(&b, "user", uid);
    pbuf_appendf(&b, ",\"typing\":%s", typing ? "true" : "false");
    emit("typing", &b);
}

static void on_member(parley_chat *c, const char *room, const char *uid, int joined, void *user)
{
    (void)c;
    (void)user;
    pbuf b = {0};
    add_str(&b, "room", room);
    add_str(&b, "user", uid);
    pbuf_appendf(&b, ",\"joined\":%s", joined ? "true" : "false");
    emit("member", &b);
}

static void add_error(pbuf *b, const parley_chat_error *e)
{
    if (!e) return;
    pbuf_append_str(b, ",\"error\":{\"code\":");
    json_append_string(b, e->code, strlen(e->code));
    pbuf_append_str(b, ",\"message\":");
    json_append_string(b, e->message, strlen(e->message));
    if (e->field[0]) {
        pbuf_append_str(b, ",\"field\":");
        json_append_string(b, e->field, strlen(e->field));
    }
    pbuf_append(b, "}", 1);
}

/* A request that failed: the server's error, or for a failure without
 * one (err: timed out or disconnected) an error named after err. */
static void add_failure(pbuf *b, int err, const parley_chat_error *e)
{
    parley_chat_error local;
    if (!e) {
        memset(&local, 0, sizeof local);
        snprintf(local.code, sizeof local.code, "%s",
                 err == PARLEY_ETIMEDOUT ? "timeout" : "disconnected");
        snprintf(local.message, sizeof local.message, "%s", parley_strerror(err));
        e = &local;
    }
    add_error(b, e);
}

static void on_history(parley_chat *c, int err, const parley_chat_error *e,
                       const parley_chat_message *msgs, size_t n, int more, void *user)
{
    (void)c;
    (void)err;
    pbuf b = {0};
    add_str(&b, "conversation", (const char *)user);
    free(user);
    add_error(&b, e);
    pbuf_appendf(&b, ",\"more\":%s,\"messages\":[", more ? "true" : "false");
    for (size_t i = 0; i < n; i++) {
        pbuf m = {0};
        message_fields(&m, &msgs[i]); /* ",\"id\":...": drop the comma */
        pbuf_append_str(&b, i ? ",{" : "{");
        if (m.len) pbuf_append(&b, m.ptr + 1, m.len - 1);
        pbuf_append(&b, "}", 1);
        pbuf_free(&m);
    }
    pbuf_append(&b, "]", 1);
    emit("history", &b);
}

static void on_room(parley_chat *c, int err, const parley_chat_error *e, const char *room,
                    const char *const *members, size_t n, void *user)
{
    (void)c;
    (void)err;
    pbuf b = {0};
    add_str(&b, "op", (const char *)user);
    add_str(&b, "room", room);
    add_error(&b, e);
    if (!e) {
        pbuf_append_str(&b, ",\"members\":[");
        for (size_t i = 0; i < n; i++) {
            if (i) pbuf_append(&b, ",", 1);
            json_append_string(&b, members[i], strlen(members[i]));
        }
        pbuf_append(&b, "]", 1);
    }
    emit("room", &b);
}

static void on_upload(parley_chat *c, int err, const parley_chat_error *e, const char *id,
                      const char *mime, int64_t size, void *user)
{
    (void)c;
    (void)err;
    (void)user;
    pbuf b = {0};
    add_error(&b, e);
    if (!e) {
        add_str(&b, "media", id);
        add_str(&b, "mime", mime);
        pbuf_appendf(&b, ",\"size\":%lld", (long long)size);
    }
    emit("upload", &b);
}

/* ---- presence and notifications (loop thread) ---- */

static const char *presence_name(parley_presence p)
{
    switch (p) {
    case PARLEY_PRESENCE_OFFLINE:
        return "offline";
    case PARLEY_PRESENCE_BUSY:
        return "busy";
    case PARLEY_PRESENCE_AWAY:
        return "away";
    case PARLEY_PRESENCE_ONLINE:
        return "online";
    }
    return "?";
}

/* {"user":...,"status":...,"text":...,"last_seen":...,"devices":...}
 * members (with a leading comma). */
static void presence_fields(pbuf *b, const parley_chat_presence *p)
{
    add_str(b, "user", p->user);
    add_str(b, "status", presence_name(p->status));
    add_str(b, "text", p->text);
    if (p->last_seen < 0)
        pbuf_append_str(b, ",\"last_seen\":null");
    else
        pbuf_appendf(b, ",\"last_seen\":%lld", (long long)p->last_seen);
    pbuf_appendf(b, ",\"devices\":%u", p->devices);
    if (p->invisible) pbuf_append_str(b, ",\"invisible\":true");
}

static void on_presence(parley_chat *c, const parley_chat_presence *p, void *user)
{
    (void)c;
    (void)user;
    pbuf b = {0};
    presence_fields(&b, p);
    emit("presence", &b);
}

static void on_room_presence(parley_chat *c, int err, const parley_chat_error *e, const char *room,
                             const parley_chat_presence *list, size_t n, void *user)
{
    (void)c;
    pbuf b = {0};
    add_str(&b, "room", room ? room : (const char *)user);
    free(user);
    if (err) {
        add_failure(&b, err, e);
    } else {
        pbuf_append_str(&b, ",\"presences\":[");
        for (size_t i = 0; i < n; i++) {
            pbuf m = {0};
            presence_fields(&m, &list[i]);
            pbuf_append_str(&b, i ? ",{" : "{");
            if (m.len) pbuf_append(&b, m.ptr + 1, m.len - 1);
            pbuf_append(&b, "}", 1);
            pbuf_free(&m);
        }
        pbuf_append(&b, "]", 1);
    }
    emit("room_presence", &b);
}

/* The notifications received so far, for the `notifications` command
 * (which runs on the main thread: notif_mu). */
typedef struct notif_item {
    int64_t id;
    char *json; /* the Notification object as the server sent it */
    bool read;  /* as this client knows it */
} notif_item;

static pthread_mutex_t notif_mu = PTHREAD_MUTEX_INITIALIZER;
static notif_item *notifs;
static size_t n_notifs, cap_notifs;
static int64_t unread_count = -1; /* -1: not reported yet */

static void on_notification(parley_chat *c, const parley_chat_notification *n, void *user)
{
    (void)c;
    (void)user;
    pthread_mutex_lock(&notif_mu);
    if (n_notifs == cap_notifs) {
        size_t cap = cap_notifs ? 2 * cap_notifs : 16;
        notif_item *grown = realloc(notifs, cap * sizeof *grown);
        if (grown) {
            notifs = grown;
            cap_notifs = cap;
        }
    }
    char *json = n_notifs < cap_notifs ? malloc(n->json_len + 1) : NULL;
    if (json) {
        memcpy(json, n->json, n->json_len);
        json[n->json_len] = 0;
        notifs[n_notifs++] = (notif_item){.id = n->id, .json = json, .read = n->read != 0};
    }
    pthread_mutex_unlock(&notif_mu);
    /* The server's object, whole, plus "live". */
    pbuf b = {0};
    pbuf_appendf(&b, ",\"live\":%s", n->live ? "true" : "false");
    if (n->json_len > 2 && n->json[0] == '{') {
        pbuf_append(&b, ",", 1);
        pbuf_append(&b, n->json + 1, n->json_len - 2);
    }
    emit("notification", &b);
}

static void on_unread(parley_chat *c, int64_t count, void *user)
{
    (void)c;
    (void)user;
    pthread_mutex_lock(&notif_mu);
    unread_count = count;
    pthread_mutex_unlock(&notif_mu);
    pbuf b = {0};
    pbuf_appendf(&b, ",\"count\":%lld", (long long)count);
    emit("unread", &b);
}

static void on_notifications_read(parley_chat *c, const int64_t *ids, size_t n, int all, void *user)
{
    (void)c;
    (void)user;
    pthread_mutex_lock(&notif_mu);
    for (size_t i = 0; i < n_notifs; i++) {
        bool hit = all;
        for (size_t k = 0; !hit && k < n; k++) hit = ids[k] == notifs[i].id;
        if (hit) notifs[i].read = true;
    }
    pthread_mutex_unlock(&notif_mu);
    pbuf b = {0};
    pbuf_appendf(&b, ",\"all\":%s,\"ids\":[", all ? "true" : "false");
    for (size_t i = 0; i < n; i++) pbuf_appendf(&b, "%s%lld", i ? "," : "", (long long)ids[i]);
    pbuf_append(&b, "]", 1);
    emit("notifications_read", &b);
}

static void on_prefs(parley_chat *c, int err, const parley_chat_error *e, const char *prefs_json,
                     size_t len, void *user)
{
    (void)c;
    pbuf b = {0};
    add_str(&b, "op", (const char *)user);
    if (err) {
        add_failure(&b, err, e);
    } else {
        pbuf_append_str(&b, ",\"prefs\":");
        pbuf_append(&b, prefs_json, len);
    }
    emit("prefs", &b);
}

/* ---- commands (this thread) ---- */

static char *word(char **p)
{
    while (**p == ' ') (*p)++;
    if (!**p) return NULL;
    char *w = *p;
    while (**p && **p != ' ') (*p)++;
    if (**p) *(*p)++ = 0;
    return w;
}

/* A JSON string member of obj, decoded into a malloc'ed string. */
static char *get_str(const json_val *obj, const char *name)
{
    json_val v;
    if (!json_object_get(obj, name, &v)) return NULL;
    if (v.type != JSON_STRING) return strdup(""); /* refused by validation */
    char *s = malloc(v.len);
    if (!s) return NULL;
    long n = json_string_decode(&v, s, v.len - 1);
    s[n > 0 ? n : 0] = 0;
    return s;
}

/* The answer to a send command: "queued" (the message is in the outbound
 * queue; its steps follow as "status" events) or "error" (nothing queued). */
static void send_result(const char *cmd, int rc, const char *id, const parley_chat_error *e)
{
    if (rc != 0) {
        emit_error(cmd, e && e->code[0] ? e->code : "error", e ? e->field : "",
                   e && e->message[0] ? e->message : parley_strerror(rc));
        return;
    }
    pbuf b = {0};
    add_str(&b, "client_id", id);
    emit("queued", &b);
}

static void cmd_send(parley_chat *c, char *rest)
{
    char *target = word(&rest);
    while (rest && *rest == ' ') rest++;
    if (!target || !rest || !*rest) {
        emit_error("send", "usage", "", "send TARGET TEXT");
        return;
    }
    parley_chat_send_opts o;
    parley_chat_send_opts_init(&o);
    if (target[0] == '@')
        o.to = target + 1;
    else if (target[0] == '#')
        o.room = target + 1;
    else
        o.conversation = target;
    o.text = rest;
    char id[37] = "";
    parley_chat_error e;
    int rc = parley_chat_send(c, &o, id, &e);
    send_result("send", rc, id, &e);
}

static void cmd_send_json(parley_chat *c, const char *text)
{
    json_val obj, v;
    if (json_parse(text, strlen(text), 16, &obj, NULL) != 0 || obj.type != JSON_OBJECT) {
        emit_error("send-json", "usage", "", "send-json takes one JSON object");
        return;
    }
    parley_chat_send_opts o;
    parley_chat_send_opts_init(&o);
    char *to = get_str(&obj, "to"), *room = get_str(&obj, "room"),
         *conv = get_str(&obj, "conversation"), *type = get_str(&obj, "type"),
         *cid = get_str(&obj, "client_id"), *prio = get_str(&obj, "priority");
    pbuf content = {0};
    o.to = to;
    o.room = room;
    o.conversation = conv;
    o.type = type;
    o.client_id = cid;
    if (json_object_get(&obj, "content", &v)) {
        json_compact(&content, &v);
        pbuf_append(&content, "", 1);
        o.content_json = (const char *)content.ptr;
    }
    int64_t ttl = 0;
    bool ok = true;
    if (json_object_get(&obj, "ttl_ms", &v)) {
        if (!json_int(&v, &ttl) || ttl < 0 || ttl > UINT32_MAX) {
            emit_error("send-json", "invalid_field", "ttl_ms",
                       "ttl_ms must be a whole number of milliseconds from 0 (none) to "
                       "4294967295");
            ok = false;
        }
        o.ttl_ms = (uint32_t)ttl;
    }
    if (ok && prio) {
        static const char *const names[] = {"low", "normal", "high", "urgent"};
        o.priority = -1;
        for (int i = 0; i < 4; i++)
            if (!strcmp(prio, names[i])) o.priority = i;
        if (o.priority < 0) {
            emit_error("send-json", "invalid_field", "priority",
                       "priority must be one of low, normal, high, urgent");
            ok = false;
        }
    }
    if (ok) {
        parley_chat_error e;
        memset(&e, 0, sizeof e);
        char id[37] = "";
        int rc = parley_chat_send(c, &o, id, &e);
        send_result("send-json", rc, id, &e);
    }
    pbuf_free(&content);
    free(to);
    free(room);
    free(conv);
    free(type);
    free(cid);
    free(prio);
}

static void cmd_upload(parley_chat *c, char *rest)
{
    char *mime = word(&rest), *file = word(&rest);
    if (!mime || !file) {
        emit_error("upload", "usage", "", "upload MIME FILE");
        return;
    }
    FILE *f = fopen(file, "rb");
    if (!f) {
        char m[200];
        snprintf(m, sizeof m, "%.120s: %s", file, strerror(errno));
        emit_error("upload", "io", "", m);
        return;
    }
    pbuf data = {0};
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) pbuf_append(&data, buf, n);
    fclose(f);
    int rc = parley_chat_upload(c, mime, data.ptr, data.len, on_upload, NULL);
    if (rc == PARLEY_EINVAL) {
        char m[160];
        snprintf(m, sizeof m, "'%.80s' is not a MIME type (type/subtype, e.g. image/png)", mime);
        emit_error("upload", "invalid_field", "mime", m);
    } else if (rc) {
        emit_error("upload", "error", "", parley_strerror(rc));
    }
    pbuf_free(&data);
}

/* A whole decimal number in [min, max] (no sign, spaces or suffix). */
static bool parse_int(const char *s, long long min, long long max, long long *out)
{
    if (!s || *s < '0' || *s > '9') return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < min || v > max) return false;
    *out = v;
    return true;
}

static void cmd_invisible(parley_chat *c, char *rest)
{
    char *v = word(&rest);
    if (!v || (strcmp(v, "on") && strcmp(v, "off"))) {
        emit_error("invisible", "usage", "", "invisible on|off");
        return;
    }
    int rc = parley_chat_presence_invisible(c, !strcmp(v, "on"));
    if (rc) emit_error("invisible", "error", "", parley_strerror(rc));
}

static void cmd_presence(parley_chat *c, char *rest)
{
    char *status = word(&rest);
    while (*rest == ' ') rest++;
    if (!status) {
        emit_error("presence", "usage", "", "presence online|away|busy [TEXT]");
        return;
    }
    parley_presence p;
    if (!strcmp(status, "online")) {
        p = PARLEY_PRESENCE_ONLINE;
    } else if (!strcmp(status, "away")) {
        p = PARLEY_PRESENCE_AWAY;
    } else if (!strcmp(status, "busy")) {
        p = PARLEY_PRESENCE_BUSY;
    } else if (!strcmp(status, "offline")) {
        emit_error("presence", "invalid_field", "status",
                   "offline cannot be chosen (it is reported when no device is connected); "
                   "choose online, away or busy");
        return;
    } else {
        emit_error("presence", "invalid_field", "status",
                   "the status must be one of online, away, busy");
        return;
    }
    const char *text = NULL; /* keep the current text */
    if (!strcmp(rest, "\"\""))
        text = "";
    else if (*rest)
        text = rest;
    int rc = parley_chat_presence_set(c, p, text);
    if (rc == PARLEY_EINVAL)
        emit_error("presence", "invalid_field", "text",
                   "the status text must be at most 128 bytes of UTF-8 without control "
                   "characters");
    else if (rc)
        emit_error("presence", "error", "", parley_strerror(rc));
}

static void cmd_subscribe(parley_chat *c, const char *cmd, char *rest, bool on)
{
    const char **users = NULL;
    size_t n = 0, cap = 0;
    char *u;
    bool ok = true;
    while (ok && (u = word(&rest))) {
        if (!msg_valid_user(u, strlen(u))) {
            char m[160];
            snprintf(m, sizeof m,
                     "'%.64s%s' is not a user id (1 to 64 bytes of A-Z a-z 0-9 . _ @ -)", u,
                     strlen(u) > 64 ? "..." : "");
            emit_error(cmd, "invalid_field", "users", m);
            ok = false;
            break;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 8;
            const char **grown = realloc(users, cap * sizeof *grown);
            if (!grown) {
                emit_error(cmd, "error", "", parley_strerror(PARLEY_ENOMEM));
                ok = false;
                break;
            }
            users = grown;
        }
        users[n++] = u;
    }
    if (ok && n == 0) {
        emit_error(cmd, "usage", "", on ? "subscribe USER..." : "unsubscribe USER...");
        ok = false;
    }
    if (ok) {
        int rc = on ? parley_chat_presence_subscribe(c, users, n)
                    : parley_chat_presence_unsubscribe(c, users, n);
        if (rc == PARLEY_EFULL)
            emit_error(cmd, "too_large", "users",
                       "at most 1000 subscriptions in all (the server's limit); none added");
        else if (rc)
            emit_error(cmd, "error", "", parley_strerror(rc));
    }
    free(users);
}

static void cmd_notifications_list(void)
{
    pbuf b = {0};
    pthread_mutex_lock(&notif_mu);
    if (unread_count < 0)
        pbuf_append_str(&b, ",\"unread\":null");
    else
        pbuf_appendf(&b, ",\"unread\":%lld", (long long)unread_count);
    pbuf_append_str(&b, ",\"notifications\":[");
    for (size_t i = 0; i < n_notifs; i++) {
        /* The stored object with "read" as this client knows it now. */
        json_val obj, k, v;
        json_iter it;
        if (i) pbuf_append(&b, ",", 1);
        if (json_parse(notifs[i].json, strlen(notifs[i].json), 16, &obj, NULL) != 0) {
            pbuf_append_str(&b, "null");
            continue;
        }
        pbuf_append(&b, "{", 1);
        bool first = true;
        json_iter_init(&it, &obj);
        while (json_object_next(&it, &k, &v)) {
            if (json_string_eq(&k, "read")) continue;
            if (!first) pbuf_append(&b, ",", 1);
            first = false;
            json_compact(&b, &k);
            pbuf_append(&b, ":", 1);
            json_compact(&b, &v);
        }
        pbuf_appendf(&b, "%s\"read\":%s}", first ? "" : ",", notifs[i].read ? "true" : "false");
    }
    pthread_mutex_unlock(&notif_mu);
    pbuf_append(&b, "]", 1);
    emit("notifications", &b);
}

static void cmd_notifications_read(parley_chat *c, char *rest)
{
    const char *usage_msg = "notifications-read ID... (1 to 500 ids) or notifications-read all";
    char *w = word(&rest);
    int rc;
    if (!w) {
        emit_error("notifications-read", "usage", "", usage_msg);
        return;
    }
    if (!strcmp(w, "all")) {
        if (word(&rest)) {
            emit_error("notifications-read", "usage", "", usage_msg);
            return;
        }
        rc = parley_chat_notifications_read_all(c);
    } else {
        int64_t ids[500];
        size_t n = 0;
        for (; w; w = word(&rest)) {
            long long v;
            if (n == 500) {
                emit_error("notifications-read", "too_large", "ids", "at most 500 ids at once");
                return;
            }
            if (!parse_int(w, 1, (1LL << 53), &v)) {
                char m[160];
                snprintf(m, sizeof m, "'%.32s' is not a notification id (a whole number from 1)",
                         w);
                emit_error("notifications-read", "invalid_field", "ids", m);
                return;
            }
            ids[n++] = v;
        }
        rc = parley_chat_notifications_read(c, ids, n);
    }
    if (rc == PARLEY_ESTATE)
        emit_error("notifications-read", "offline", "",
                   "not connected: read notifications once the state is online");
    else if (rc)
        emit_error("notifications-read", "error", "", parley_strerror(rc));
}

static void cmd_prefs(parley_chat *c, char *rest)
{
    while (*rest == ' ') rest++;
    int rc;
    if (!*rest) {
        rc = parley_chat_notification_prefs_get(c, on_prefs, (void *)"get");
    } else {
        json_val v;
        if (json_parse(rest, strlen(rest), 16, &v, NULL) != 0 || v.type != JSON_OBJECT) {
            emit_error("notification-prefs", "usage", "",
                       "notification-prefs takes no argument (get) or one JSON object (set)");
            return;
        }
        rc = parley_chat_notification_prefs_set(c, rest, on_prefs, (void *)"set");
    }
    if (rc) emit_error("notification-prefs", "error", "", parley_strerror(rc));
}

static bool command(parley_chat *c, char *line)
{
    char *rest = line;
    char *cmd = word(&rest);
    if (!cmd) return true;
    int rc = 0;
    const char *bad_conv = NULL, *bad_room = NULL; /* refused by the library */
    if (!strcmp(cmd, "quit")) return false;
    if (!strcmp(cmd, "send")) {
        cmd_send(c, rest);
    } else if (!strcmp(cmd, "send-json")) {
        cmd_send_json(c, rest);
    } else if (!strcmp(cmd, "read")) {
        char *conv = word(&rest), *seq = word(&rest);
        long long v;
        if (!conv || !seq)
            emit_error(cmd, "usage", "", "read CONV SEQ");
        else if (!parse_int(seq, 1, INT64_MAX, &v))
            emit_error(cmd, "invalid_field", "seq", "SEQ must be a whole number from 1");
        else if ((rc = parley_chat_mark_read(c, conv, v)) == PARLEY_EINVAL)
            bad_conv = conv;
    } else if (!strcmp(cmd, "typing")) {
        char *conv = word(&rest), *on = word(&rest);
        if (!conv || !on || (strcmp(on, "on") != 0 && strcmp(on, "off") != 0))
            emit_error(cmd, "usage", "", "typing CONV on|off");
        else if ((rc = parley_chat_typing(c, conv, !strcmp(on, "on"))) == PARLEY_EINVAL)
            bad_conv = conv;
    } else if (!strcmp(cmd, "history")) {
        char *conv = word(&rest), *before = word(&rest), *limit = word(&rest);
        long long b = 0, l = 0;
        if (!conv) {
            emit_error(cmd, "usage", "", "history CONV [BEFORE [LIMIT]]");
        } else if (before && !parse_int(before, 0, INT64_MAX, &b)) {
            emit_error(cmd, "invalid_field", "before",
                       "BEFORE must be a whole number: a seq, or 0 for the newest");
        } else if (limit && !parse_int(limit, 0, MSG_HISTORY_MAX_LIMIT, &l)) {
            emit_error(cmd, "invalid_field", "limit",
                       "LIMIT must be a whole number from 0 (the server's default) to 200");
        } else {
            char *tag = strdup(conv);
            rc =
                tag ? parley_chat_history(c, conv, b, (unsigned)l, on_history, tag) : PARLEY_ENOMEM;
            if (rc) free(tag);
            if (rc == PARLEY_EINVAL) bad_conv = conv;
        }
    } else if (!strcmp(cmd, "join") || !strcmp(cmd, "leave") || !strcmp(cmd, "members")) {
        char *room = word(&rest);
        static const char *const ops[] = {"join", "leave", "members"};
        const char *op = ops[cmd[0] == 'j' ? 0 : cmd[0] == 'l' ? 1 : 2];
        int (*fn)(parley_chat *, const char *, parley_chat_room_fn, void *) =
            cmd[0] == 'j'   ? parley_chat_join
            : cmd[0] == 'l' ? parley_chat_leave
                            : parley_chat_members;
        if (!room) {
            char m[32];
            snprintf(m, sizeof m, "%s ROOM", op);
            emit_error(cmd, "usage", "", m);
        } else if ((rc = fn(c, room, on_room, (void *)op)) == PARLEY_EINVAL) {
            bad_room = room;
        }
    } else if (!strcmp(cmd, "upload")) {
        cmd_upload(c, rest);
    } else if (!strcmp(cmd, "last-seq")) {
        char *conv = word(&rest);
        if (!conv) {
            emit_error(cmd, "usage", "", "last-seq CONV");
        } else {
            pbuf b = {0};
            add_str(&b, "conversation", conv);
            pbuf_appendf(&b, ",\"seq\":%lld", (long long)parley_chat_last_seq(c, conv));
            emit("last_seq", &b);
        }
    } else if (!strcmp(cmd, "presence")) {
        cmd_presence(c, rest);
    } else if (!strcmp(cmd, "invisible")) {
        cmd_invisible(c, rest);
    } else if (!strcmp(cmd, "subscribe") || !strcmp(cmd, "unsubscribe")) {
        cmd_subscribe(c, cmd, rest, cmd[0] == 's');
    } else if (!strcmp(cmd, "room-presence")) {
        char *room = word(&rest);
        char *tag = room ? strdup(room) : NULL;
        if (!room)
            emit_error(cmd, "usage", "", "room-presence ROOM");
        else if (!tag)
            rc = PARLEY_ENOMEM;
        else if ((rc = parley_chat_presence_room(c, room, on_room_presence, tag)) != 0)
            free(tag);
        if (rc == PARLEY_EINVAL) bad_room = room;
    } else if (!strcmp(cmd, "notifications")) {
        cmd_notifications_list();
    } else if (!strcmp(cmd, "notifications-sync")) {
        rc = parley_chat_notifications_sync(c);
    } else if (!strcmp(cmd, "notifications-read")) {
        cmd_notifications_read(c, rest);
    } else if (!strcmp(cmd, "notification-prefs")) {
        cmd_prefs(c, rest);
    } else if (!strcmp(cmd, "connect")) {
        rc = parley_chat_connect(c);
    } else if (!strcmp(cmd, "close")) {
        rc = parley_chat_close(c);
    } else if (!strcmp(cmd, "state")) {
        pbuf b = {0};
        add_str(&b, "state", state_name(parley_chat_get_state(c)));
        emit("state", &b);
    } else {
        char m[128];
        snprintf(m, sizeof m, "unknown command '%.40s' (parley chat --help lists them)", cmd);
        emit_error(cmd, "usage", "", m);
        return true;
    }
    if (rc && (bad_conv || bad_room)) {
        char m[200];
        if (bad_conv)
            snprintf(m, sizeof m, "'%.80s' is not a conversation id (dm:USER:USER or room:NAME)",
                     bad_conv);
        else
            snprintf(m, sizeof m, "'%.80s' is not a room name (1 to 64 bytes of A-Z a-z 0-9 . _ -)",
                     bad_room);
        emit_error(cmd, "invalid_field", bad_conv ? "conversation" : "room", m);
    } else if (rc) {
        emit_error(cmd, "error", "", parley_strerror(rc));
    }
    return true;
}

int chat_main(int argc, char **argv)
{
    parley_chat_opts o;
    parley_chat_opts_init(&o);
    o.on_state = on_state;
    o.on_message = on_message;
    o.on_status = on_status;
    o.on_receipt = on_receipt;
    o.on_typing = on_typing;
    o.on_member = on_member;
    o.on_presence = on_presence;
    o.on_notification = on_notification;
    o.on_unread = on_unread;
    o.on_notifications_read = on_notifications_read;
    o.token = read_token;
    enum {
        OPT_USER = 256,
        OPT_TOKEN,
        OPT_TOKEN_FILE,
        OPT_DEV,
        OPT_QUEUE,
        OPT_TRANSPORT,
        OPT_RC_DELAY,
        OPT_RC_DELAY_MAX,
        OPT_NO_DELIVERED,
        OPT_CA,
        OPT_INSECURE,
        OPT_HELP,
    };
    static const struct option longopts[] = {
        {"user", required_argument, 0, OPT_USER},
        {"token", required_argument, 0, OPT_TOKEN},
        {"token-file", required_argument, 0, OPT_TOKEN_FILE},
        {"dev-auth", no_argument, 0, OPT_DEV},
        {"queue-file", required_argument, 0, OPT_QUEUE},
        {"transport", required_argument, 0, OPT_TRANSPORT},
        {"reconnect-delay", required_argument, 0, OPT_RC_DELAY},
        {"reconnect-delay-max", required_argument, 0, OPT_RC_DELAY_MAX},
        {"no-auto-delivered", no_argument, 0, OPT_NO_DELIVERED},
        {"ca-file", required_argument, 0, OPT_CA},
        {"insecure", no_argument, 0, OPT_INSECURE},
        {"help", no_argument, 0, OPT_HELP},
        {0, 0, 0, 0},
    };
    parley_log_set(PARLEY_LOG_WARN, NULL, NULL);
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        char *end;
        switch (ch) {
        case OPT_USER:
            o.user_id = optarg;
            break;
        case OPT_TOKEN:
            token_fixed = optarg;
            break;
        case OPT_TOKEN_FILE:
            token_file = optarg;
            break;
        case OPT_DEV:
            o.dev_auth = 1;
            break;
        case OPT_QUEUE:
            o.queue_path = optarg;
            break;
        case OPT_TRANSPORT:
            if (!strcmp(optarg, "websocket"))
                o.transports = PARLEY_TRANSPORT_WEBSOCKET;
            else if (!strcmp(optarg, "polling"))
                o.transports = PARLEY_TRANSPORT_POLLING;
            else if (!strcmp(optarg, "both"))
                o.transports = 0;
            else {
                fprintf(stderr,
                        "parley chat: --transport must be websocket, polling or both, "
                        "not '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case OPT_RC_DELAY:
        case OPT_RC_DELAY_MAX: {
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 10);
            if (errno || *end || !*optarg || v > UINT32_MAX) {
                fprintf(stderr,
                        "parley chat: --%s must be a whole number of milliseconds, not '%s'\n",
                        ch == OPT_RC_DELAY ? "reconnect-delay" : "reconnect-delay-max", optarg);
                return 2;
            }
            if (ch == OPT_RC_DELAY)
                o.reconnection_delay_ms = (uint32_t)v;
            else
                o.reconnection_delay_max_ms = (uint32_t)v;
            break;
        }
        case OPT_NO_DELIVERED:
            o.auto_delivered = 0;
            break;
        case OPT_CA:
            o.ca_file = optarg;
            break;
        case OPT_INSECURE:
            o.insecure = 1;
            break;
        case OPT_HELP:
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1 || !o.user_id) {
        if (!o.user_id)
            fprintf(stderr, "parley chat: --user ID is required\n");
        else if (optind == argc)
            fprintf(stderr, "parley chat: the server URL is required\n");
        else
            fprintf(stderr, "parley chat: one URL only; unexpected '%s'\n", argv[optind + 1]);
        usage(stderr);
        return 2;
    }
    if (!msg_valid_user(o.user_id, strlen(o.user_id))) {
        fprintf(stderr,
                "parley chat: --user must be 1 to 64 bytes of A-Z a-z 0-9 . _ @ -, not '%s'\n",
                o.user_id);
        return 2;
    }
    o.url = argv[optind];
    signal(SIGPIPE, SIG_IGN);
    parley_chat *c;
    int rc = parley_chat_new(&o, &c);
    if (rc) {
        if (rc == PARLEY_EURL || rc == PARLEY_EINVAL)
            fprintf(stderr,
                    "parley chat: '%s' is not a server URL (http://, https://, ws:// or wss://)\n",
                    o.url);
        else
            fprintf(stderr, "parley chat: cannot start: %s\n", parley_strerror(rc));
        return rc == PARLEY_EINVAL || rc == PARLEY_EURL ? 2 : 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (!command(c, line)) break;
    }
    free(line);
    parley_chat_free(c);
    for (size_t i = 0; i < n_notifs; i++) free(notifs[i].json);
    free(notifs);
    return 0;
}
