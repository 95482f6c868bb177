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
           "  --token JWT            the CONNECT token\n"
           "  --token-file FILE      read the token from FILE on every (re)connection\n"
           "  --dev-auth             no token: {\"user\": ID} (parleyd --dev-auth only)\n"
           "  --queue-file FILE      keep unsent messages in this SQLite file\n"
           "  --transport T          websocket, polling, or both (default: polling, then upgrade)\n"
           "  --reconnect-delay MS   first reconnection delay (default 1000)\n"
           "  --reconnect-delay-max MS  largest delay (default 5000)\n"
           "  --no-auto-delivered    do not send delivered receipts by itself\n"
           "  --ca-file FILE, --insecure   TLS trust\n"
           "\n"
           "commands:\n"
           "  send TARGET TEXT       a text message; TARGET @user, #room or a conversation id\n"
           "  send-json OBJECT       {\"to\"|\"room\"|\"conversation\", \"type\", \"content\",\n"
           "                         \"priority\", \"ttl_ms\", \"client_id\"}\n"
           "  read CONV SEQ          mark read up to SEQ\n"
           "  typing CONV on|off\n"
           "  history CONV [BEFORE [LIMIT]]\n"
           "  join ROOM | leave ROOM | members ROOM\n"
           "  upload MIME FILE       upload media; prints its id\n"
           "  last-seq CONV | connect | close | state | quit (also end of input)\n"
           "\n"
           "events: {\"ev\": NAME, ...} with NAME state, message, status, receipt, typing,\n"
           "member, sent (a send was queued), history, room, upload, last_seq, error\n");
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
    pbuf_append(b, "}", 1);
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

static void sent(const char *cmd, int rc, const char *id, const parley_chat_error *e)
{
    if (rc != 0) {
        emit_error(cmd, e && e->code[0] ? e->code : "error", e ? e->field : "",
                   e && e->message[0] ? e->message : parley_strerror(rc));
        return;
    }
    pbuf b = {0};
    add_str(&b, "client_id", id);
    emit("sent", &b);
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
    sent("send", rc, id, &e);
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
    if (json_object_get(&obj, "ttl_ms", &v) && json_int(&v, &ttl) && ttl > 0 && ttl < UINT32_MAX)
        o.ttl_ms = (uint32_t)ttl;
    int rc = 0;
    parley_chat_error e;
    memset(&e, 0, sizeof e);
    if (prio) {
        static const char *const names[] = {"low", "normal", "high", "urgent"};
        o.priority = -1;
        for (int i = 0; i < 4; i++)
            if (!strcmp(prio, names[i])) o.priority = i;
    }
    char id[37] = "";
    rc = parley_chat_send(c, &o, id, &e);
    sent("send-json", rc, id, &e);
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
        emit_error("upload", "io", "", strerror(errno));
        return;
    }
    pbuf data = {0};
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) pbuf_append(&data, buf, n);
    fclose(f);
    int rc = parley_chat_upload(c, mime, data.ptr, data.len, on_upload, NULL);
    if (rc) emit_error("upload", "invalid", "", parley_strerror(rc));
    pbuf_free(&data);
}

static bool command(parley_chat *c, char *line)
{
    char *rest = line;
    char *cmd = word(&rest);
    if (!cmd) return true;
    int rc = 0;
    if (!strcmp(cmd, "quit")) return false;
    if (!strcmp(cmd, "send")) {
        cmd_send(c, rest);
    } else if (!strcmp(cmd, "send-json")) {
        cmd_send_json(c, rest);
    } else if (!strcmp(cmd, "read")) {
        char *conv = word(&rest), *seq = word(&rest);
        rc = conv && seq ? parley_chat_mark_read(c, conv, strtoll(seq, NULL, 10)) : PARLEY_EINVAL;
    } else if (!strcmp(cmd, "typing")) {
        char *conv = word(&rest), *on = word(&rest);
        rc = conv && on ? parley_chat_typing(c, conv, !strcmp(on, "on")) : PARLEY_EINVAL;
    } else if (!strcmp(cmd, "history")) {
        char *conv = word(&rest), *before = word(&rest), *limit = word(&rest);
        char *tag = conv ? strdup(conv) : NULL;
        rc = tag ? parley_chat_history(c, conv, before ? strtoll(before, NULL, 10) : 0,
                                       limit ? (unsigned)strtoul(limit, NULL, 10) : 0, on_history,
                                       tag)
                 : PARLEY_EINVAL;
        if (rc) free(tag);
    } else if (!strcmp(cmd, "join") || !strcmp(cmd, "leave") || !strcmp(cmd, "members")) {
        char *room = word(&rest);
        static const char *const ops[] = {"join", "leave", "members"};
        const char *op = ops[cmd[0] == 'j' ? 0 : cmd[0] == 'l' ? 1 : 2];
        int (*fn)(parley_chat *, const char *, parley_chat_room_fn, void *) =
            cmd[0] == 'j'   ? parley_chat_join
            : cmd[0] == 'l' ? parley_chat_leave
                            : parley_chat_members;
        rc = room ? fn(c, room, on_room, (void *)op) : PARLEY_EINVAL;
    } else if (!strcmp(cmd, "upload")) {
        cmd_upload(c, rest);
    } else if (!strcmp(cmd, "last-seq")) {
        char *conv = word(&rest);
        if (!conv) {
            rc = PARLEY_EINVAL;
        } else {
            pbuf b = {0};
            add_str(&b, "conversation", conv);
            pbuf_appendf(&b, ",\"seq\":%lld", (long long)parley_chat_last_seq(c, conv));
            emit("last_seq", &b);
        }
    } else if (!strcmp(cmd, "connect")) {
        rc = parley_chat_connect(c);
    } else if (!strcmp(cmd, "close")) {
        rc = parley_chat_close(c);
    } else if (!strcmp(cmd, "state")) {
        pbuf b = {0};
        add_str(&b, "state", state_name(parley_chat_get_state(c)));
        emit("state", &b);
    } else {
        emit_error(cmd, "usage", "", "unknown command");
        return true;
    }
    if (rc) emit_error(cmd, "invalid", "", parley_strerror(rc));
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
                fprintf(stderr, "parley chat: --transport websocket, polling or both\n");
                return 2;
            }
            break;
        case OPT_RC_DELAY:
        case OPT_RC_DELAY_MAX: {
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 10);
            if (errno || *end || !*optarg || v > UINT32_MAX) {
                fprintf(stderr, "parley chat: bad delay '%s'\n", optarg);
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
        usage(stderr);
        return 2;
    }
    o.url = argv[optind];
    signal(SIGPIPE, SIG_IGN);
    parley_chat *c;
    int rc = parley_chat_new(&o, &c);
    if (rc) {
        fprintf(stderr, "parley chat: %s\n", parley_strerror(rc));
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
    return 0;
}
