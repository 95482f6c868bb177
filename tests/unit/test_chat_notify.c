/*
 * Notifications in the messaging client (include/parley/chat.h) and the
 * store's "notifications" and "notifications/unread" keys
 * (include/parley/store.h), against a scripted server in the same process
 * that speaks the notifications protocol (sync with pages, live
 * `notification` events with an acknowledgement request, `unread`
 * events, reads, preferences) on a plain Socket.IO namespace: the sync
 * after every connection, acknowledgements, held-back notifications,
 * no repeats across a reconnection, reads here and elsewhere, pages and
 * the store's bound, preferences and their errors. Then the same client
 * against the real messaging service (its notifications half): `notify`
 * from a notifier-role socket, in_app off holding notifications back,
 * urgent messages pushed, reads, a second device, preferences.
 * Last, the store's cache of presence, notifications and the unread
 * count: reloaded with the server down, bad rows, a messages-only file.
 *
 * PARLEY_TEST_LOG=1 prints the library's log.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>

#include "base/buf.h"
#include "client_helpers.h"
#include "codec/json.h"
#include <sqlite3.h>

#include "parley/store.h"
#include "services/messaging.h"

#define WAIT_MS  5000 /* upper bound for anything that should happen "soon" */
#define QUIET_MS 200  /* how long nothing more must happen for "exactly" */

/* ---- the library's log: store and chat warnings fail the test ---- */

static atomic_int warnings;
static atomic_int malformed_lines; /* "chat: a malformed ..." log lines */

static void log_sink(parley_log_level level, const char *msg, void *user)
{
    (void)user;
    if (!strncmp(msg, "chat: a malformed", 17)) {
        /* Expected only in test_malformed_flood, which counts them. */
        atomic_fetch_add(&malformed_lines, 1);
        return;
    }
    if (!strncmp(msg, "chat:", 5) || !strncmp(msg, "store:", 6)) atomic_fetch_add(&warnings, 1);
    if (level < PARLEY_LOG_WARN && !getenv("PARLEY_TEST_LOG")) return;
    if (!getenv("PARLEY_TEST_LOG") && strstr(msg, "INSECURE --dev-auth")) return;
    if (!getenv("PARLEY_TEST_LOG") && strstr(msg, "no --jwt-secret")) return;
    fprintf(stderr, "log: %s\n", msg);
}

typedef struct fsrv fsrv;
static fsrv *th_fsrv; /* for acknowledgement callbacks */

/* ---- a scripted notifications server (the protocol of the brief) ---- */

typedef struct fnotif {
    int64_t id;
    bool delivered, read;
} fnotif;

struct fsrv {
    th_server th; /* first */
    unsigned port;
    parley_socket *sock; /* the connected client (one at a time) */
    fnotif list[1024];
    size_t n;
    int acks;  /* notification events acknowledged by the client */
    int syncs; /* notifications_sync requests */
    int64_t last_since;
    char reads[1024]; /* notifications_read objects, '|'-separated */
    char prefs[512];
};

static int64_t fs_unread(const fsrv *f)
{
    int64_t n = 0;
    for (size_t i = 0; i < f->n; i++) n += !f->list[i].read;
    return n;
}

static void fs_render(pbuf *b, const fnotif *x)
{
    pbuf_appendf(b,
                 "{\"id\":%lld,\"type\":\"mention\",\"priority\":\"normal\",\"title\":\"t%lld\","
                 "\"body\":\"b\\u00e9\",\"image\":null,\"actions\":[{\"id\":\"open\",\"label\":"
                 "\"Open\"}],\"from\":\"bob\",\"created\":1767225600000,\"expires\":null,"
                 "\"dedupe_key\":null,\"delivered\":%s,\"read\":%s}",
                 (long long)x->id, (long long)x->id, x->delivered ? "true" : "false",
                 x->read ? "true" : "false");
}

#define FS_BOB                                                                                     \
    "{\"user\":\"bob\",\"status\":\"away\",\"text\":\"at lunch\",\"last_seen\":1767225600000,"     \
    "\"devices\":2}"

static void fs_emit_unread(fsrv *f)
{
    if (!f->sock) return;
    char a[64];
    snprintf(a, sizeof a, "[{\"count\":%lld}]", (long long)fs_unread(f));
    parley_emit(f->sock, "unread", a, NULL, 0);
}

static void fs_acked(parley_socket *s, int err, const parley_args *args, void *user)
{
    (void)s;
    (void)args;
    fsrv *f = th_fsrv;
    int64_t id = (int64_t)(intptr_t)user;
    if (err) return;
    f->acks++;
    for (size_t i = 0; i < f->n; i++)
        if (f->list[i].id == id) f->list[i].delivered = true;
}

static void fs_answer(parley_socket *s, int64_t ack_id, const char *json)
{
    if (ack_id < 0) return;
    char *a = malloc(strlen(json) + 3);
    sprintf(a, "[%s]", json);
    parley_ack(s, ack_id, a, NULL, 0);
    free(a);
}

static void fs_event(parley_socket *s, const char *event, size_t event_len, const parley_args *args,
                     int64_t ack_id, void *user)
{
    (void)event_len;
    fsrv *f = user;
    json_val arr, obj, v;
    json_iter it;
    memset(&obj, 0, sizeof obj);
    if (json_parse(args->json, args->json_len, 16, &arr, NULL) == 0 && arr.type == JSON_ARRAY) {
        json_iter_init(&it, &arr);
        json_array_next(&it, &obj);
    }
    if (!strcmp(event, "sync")) {
        fs_answer(s, ack_id, "{\"ok\":true,\"messages\":[],\"conversations\":[],\"more\":false}");
    } else if (!strcmp(event, "notifications_sync")) {
        int64_t since = 0, limit = 100;
        if (json_object_get(&obj, "since", &v)) json_int(&v, &since);
        if (json_object_get(&obj, "limit", &v)) json_int(&v, &limit);
        f->syncs++;
        f->last_since = since;
        pbuf b = {0};
        pbuf_append_str(&b, "{\"ok\":true,\"notifications\":[");
        int64_t k = 0;
        bool more = false;
        for (size_t i = 0; i < f->n; i++) {
            if (f->list[i].id <= since) continue;
            if (k == limit) {
                more = true;
                break;
            }
            f->list[i].delivered = true;
            if (k++) pbuf_append(&b, ",", 1);
            fs_render(&b, &f->list[i]);
        }
        pbuf_appendf(&b, "],\"more\":%s,\"unread\":%lld}", more ? "true" : "false",
                     (long long)fs_unread(f));
        pbuf_append(&b, "", 1);
        fs_answer(s, ack_id, (const char *)b.ptr);
        pbuf_free(&b);
    } else if (!strcmp(event, "notifications_read")) {
        size_t o = strlen(f->reads);
        snprintf(f->reads + o, sizeof f->reads - o, "%s%.*s", o ? "|" : "", (int)obj.len, obj.p);
        if (json_object_get(&obj, "all", &v)) {
            for (size_t i = 0; i < f->n; i++) f->list[i].read = true;
        } else if (json_object_get(&obj, "ids", &v)) {
            json_val idv;
            json_iter_init(&it, &v);
            while (json_array_next(&it, &idv)) {
                int64_t id;
                if (!json_int(&idv, &id)) continue;
                for (size_t i = 0; i < f->n; i++)
                    if (f->list[i].id == id) f->list[i].read = true;
            }
        }
        char a[64];
        snprintf(a, sizeof a, "{\"ok\":true,\"unread\":%lld}", (long long)fs_unread(f));
        fs_answer(s, ack_id, a);
    } else if (!strcmp(event, "presence_subscribe")) {
        /* Whoever is asked for: bob away, carol never seen. */
        fs_answer(s, ack_id,
                  "{\"ok\":true,\"presences\":[" FS_BOB ",{\"user\":\"carol\",\"status\":"
                  "\"offline\",\"text\":\"\",\"last_seen\":null,\"devices\":0}]}");
    } else if (!strcmp(event, "notification_prefs_get")) {
        char a[600];
        snprintf(a, sizeof a, "{\"ok\":true,\"prefs\":%s}", f->prefs);
        fs_answer(s, ack_id, a);
    } else if (!strcmp(event, "notification_prefs_set")) {
        /* args->json is not NUL-terminated: search the object's span. */
        bool mars = false;
        for (size_t i = 0; i + 5 <= obj.len && !mars; i++) mars = !memcmp(obj.p + i, "Mars/", 5);
        if (mars) {
            fs_answer(s, ack_id,
                      "{\"ok\":false,\"error\":{\"code\":\"invalid_field\",\"message\":\"unknown "
                      "time zone\",\"field\":\"quiet_hours.tz\"}}");
            return;
        }
        /* Enough for the client: the object sent becomes the prefs. */
        snprintf(f->prefs, sizeof f->prefs, "%.*s", (int)obj.len, obj.p);
        char a[600];
        snprintf(a, sizeof a, "{\"ok\":true,\"prefs\":%s}", f->prefs);
        fs_answer(s, ack_id, a);
    } else {
        fs_answer(s, ack_id,
                  "{\"ok\":false,\"error\":{\"code\":\"unknown_event\",\"message\":\"no\"}}");
    }
}

static void fs_connection(parley_socket *s, void *user)
{
    fsrv *f = user;
    f->sock = s;
}

static void fs_disconnect(parley_socket *s, const char *reason, void *user)
{
    (void)reason;
    fsrv *f = user;
    if (f->sock == s) f->sock = NULL;
}

static void fs_setup(th_server *t, void *user)
{
    fsrv *f = user;
    parley_nsp *n = parley_server_of(t->srv, "/chat");
    parley_nsp_handlers h = {.on_connection = fs_connection,
                             .on_event = fs_event,
                             .on_disconnect = fs_disconnect,
                             .user = f};
    parley_nsp_set_handlers(n, &h);
}

static void fs_start(fsrv *f)
{
    memset(f, 0, sizeof *f);
    th_fsrv = f;
    snprintf(f->prefs, sizeof f->prefs,
             "{\"in_app\":true,\"push\":true,\"types\":{},\"quiet_hours\":null,"
             "\"muted_users\":[],\"muted_rooms\":[]}");
    parley_server_opts so;
    parley_server_opts_init(&so);
    so.ping_interval_ms = 2000;
    so.ping_timeout_ms = 2000;
    assert_int_equal(th_server_start(&f->th, &so, 0, fs_setup, f, 0), 0);
    f->port = f->th.port;
}

static void fs_stop(fsrv *f)
{
    ploop_call(f->th.loop, th_server_shutdown_call, &f->th);
    for (int i = 0; i < 500 && !atomic_load(&f->th.down); i++) usleep(10000);
    assert_true(atomic_load(&f->th.down));
    parley_loop_join(f->th.loop);
    parley_server_free(f->th.srv);
    parley_loop_free(f->th.loop);
    assert_int_equal(atomic_load(&warnings), 0);
}

/* On the server's loop: a new notification, pushed (with an ack request)
 * when live, and the unread count either way. */
typedef struct fs_op {
    fsrv *f;
    int count;
    bool live;
    int64_t out;
} fs_op;

static void do_add(void *arg)
{
    fs_op *o = arg;
    fsrv *f = o->f;
    for (int k = 0; k < o->count; k++) {
        fnotif *x = &f->list[f->n++];
        x->id = (int64_t)f->n;
        if (o->live && f->sock) {
            pbuf b = {0};
            pbuf_append(&b, "[", 1);
            fs_render(&b, x);
            pbuf_append(&b, "]", 2);
            parley_emit_opts eo = {
                .size = sizeof eo,
                .ack = fs_acked, .ack_user = (void *)(intptr_t)x->id, .timeout_ms = 0};
            parley_emit_opts_send(f->sock, &eo, "notification", (const char *)b.ptr, NULL, 0);
            pbuf_free(&b);
        }
    }
    fs_emit_unread(f);
}

static void fs_add(fsrv *f, int count, bool live)
{
    fs_op o = {.f = f, .count = count, .live = live};
    assert_int_equal(ploop_call(f->th.loop, do_add, &o), 0);
}

/* Read on "another device": everything, and the count goes out. */
static void do_read_elsewhere(void *arg)
{
    fsrv *f = arg;
    for (size_t i = 0; i < f->n; i++) f->list[i].read = true;
    fs_emit_unread(f);
}

static void do_kick(void *arg)
{
    fsrv *f = arg;
    if (f->sock) parley_disconnect(f->sock, 1);
}

static void do_get(void *arg)
{
    fs_op *o = arg;
    o->out = o->count == 0 ? o->f->acks : o->count == 1 ? o->f->syncs : o->f->last_since;
}

typedef struct reads_arg {
    fsrv *f;
    char *out;
    size_t cap;
} reads_arg;

static void do_reads(void *arg)
{
    reads_arg *a = arg;
    snprintf(a->out, a->cap, "%s", a->f->reads);
}

/* The notifications_read objects the server got (read on its loop). */
static void fs_reads(fsrv *f, char *out, size_t cap)
{
    reads_arg a = {.f = f, .out = out, .cap = cap};
    ploop_call(f->th.loop, do_reads, &a);
}

/* 0: acks, 1: syncs, 2: the last sync's since (read on the server's loop). */
static int64_t fs_get(fsrv *f, int what)
{
    fs_op o = {.f = f, .count = what};
    ploop_call(f->th.loop, do_get, &o);
    return o.out;
}

/* ---- stores ---- */

typedef struct tstore {
    parley_store *st;
    parley_chat_opts co;
    parley_store_opts so;
    char user[32], url[64], cache[96];
    pthread_mutex_t mu;
    char seen[65536]; /* the application's on_notification calls, "id:live;" */
    int nseen;
    int64_t unread; /* the last on_unread */
    int nunread;
} tstore;

static void app_notification(parley_chat *c, const parley_chat_notification *n, void *user)
{
    (void)c;
    tstore *t = user;
    pthread_mutex_lock(&t->mu);
    size_t o = strlen(t->seen);
    snprintf(t->seen + o, sizeof t->seen - o, "%lld:%d;", (long long)n->id, n->live);
    t->nseen++;
    pthread_mutex_unlock(&t->mu);
}

static void app_unread(parley_chat *c, int64_t count, void *user)
{
    (void)c;
    tstore *t = user;
    pthread_mutex_lock(&t->mu);
    t->unread = count;
    t->nunread++;
    pthread_mutex_unlock(&t->mu);
}

static void ts_init(tstore *t, const char *user, unsigned port)
{
    memset(t, 0, sizeof *t);
    snprintf(t->user, sizeof t->user, "%s", user);
    snprintf(t->url, sizeof t->url, "http://127.0.0.1:%u", port);
    parley_chat_opts_init(&t->co);
    t->co.url = t->url;
    t->co.user_id = t->user;
    t->co.dev_auth = 1;
    t->co.reconnection_delay_ms = 50;
    t->co.reconnection_delay_max_ms = 200;
    t->co.on_notification = app_notification;
    t->co.on_unread = app_unread;
    t->co.user = t;
    pthread_mutex_init(&t->mu, NULL);
    parley_store_opts_init(&t->so);
    t->so.chat = &t->co;
}

static void ts_open(tstore *t)
{
    assert_int_equal(parley_store_new(&t->so, &t->st), 0);
    assert_non_null(t->st);
    assert_non_null(parley_store_chat(t->st));
}

static void ts_close(tstore *t)
{
    parley_store_free(t->st);
    t->st = NULL;
}

/* The snapshot of key (asserted valid JSON); the caller frees it. */
static char *get(tstore *t, const char *key)
{
    size_t len = 0;
    char *v = parley_store_get(t->st, key, &len);
    assert_non_null(v);
    assert_int_equal(strlen(v), len);
    json_val j;
    assert_int_equal(json_parse(v, len, 32, &j, NULL), 0);
    return v;
}

/* How many times needle occurs in hay. */
static int occurrences(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* Waits until key's snapshot contains needle exactly n times. */
static void wait_value(tstore *t, const char *key, const char *needle, int n)
{
    uint64_t end = ptime_ms() + WAIT_MS;
    for (;;) {
        char *v = get(t, key);
        int k = occurrences(v, needle);
        if (k == n) {
            free(v);
            return;
        }
        if (ptime_ms() >= end) fail_msg("%s: %d x \"%s\" (want %d) in %s", key, k, needle, n, v);
        free(v);
        usleep(5000);
    }
}

static void wait_state(tstore *t, const char *state)
{
    char want[64];
    snprintf(want, sizeof want, "{\"state\":\"%s\"}", state);
    wait_value(t, "connection", want, 1);
}

/* ---- helpers ---- */

static parley_chat *chat_of(tstore *t)
{
    return parley_store_chat(t->st);
}

static int seen_has(tstore *t, const char *needle)
{
    pthread_mutex_lock(&t->mu);
    int n = occurrences(t->seen, needle);
    pthread_mutex_unlock(&t->mu);
    return n;
}

static void wait_seen(tstore *t, const char *needle)
{
    uint64_t end = ptime_ms() + WAIT_MS;
    while (!seen_has(t, needle)) {
        if (ptime_ms() >= end) fail_msg("never saw \"%s\" in %s", needle, t->seen);
        usleep(5000);
    }
}

static void wait_get(fsrv *f, int what, int64_t want)
{
    uint64_t end = ptime_ms() + WAIT_MS;
    while (fs_get(f, what) != want) {
        if (ptime_ms() >= end)
            fail_msg("server value %d: %lld, want %lld", what, (long long)fs_get(f, what),
                     (long long)want);
        usleep(5000);
    }
}

static void wait_unread(tstore *t, const char *n)
{
    uint64_t end = ptime_ms() + WAIT_MS;
    for (;;) {
        char *v = get(t, "notifications/unread");
        bool ok = !strcmp(v, n);
        if (!ok && ptime_ms() >= end) fail_msg("unread %s, want %s", v, n);
        free(v);
        if (ok) return;
        usleep(5000);
    }
}

/* ---- 1. sync on connection, live + ack, held back, reconnection, reads ---- */

static void test_flow(void **state)
{
    (void)state;
    fsrv f;
    fs_start(&f);
    fs_add(&f, 3, false); /* stored while alice was away */
    tstore alice;
    ts_init(&alice, "alice", f.port);
    ts_open(&alice);
    wait_state(&alice, "online");

    /* The sync after connecting: all three, once, not live. */
    wait_unread(&alice, "3");
    wait_value(&alice, "notifications", "\"title\":", 3);
    wait_seen(&alice, "3:0;");
    assert_string_equal(alice.seen, "1:0;2:0;3:0;");
    assert_int_equal(fs_get(&f, 2), 0);
    char *v = get(&alice, "notifications");
    assert_non_null(strstr(
        v, "[{\"id\":1,\"type\":\"mention\",\"priority\":\"normal\",\"title\":\"t1\",\"body\":"
           "\"b\\u00e9\",\"image\":null,\"actions\":[{\"id\":\"open\",\"label\":\"Open\"}],"
           "\"from\":\"bob\",\"created\":1767225600000,\"expires\":null,\"dedupe_key\":null,"
           "\"delivered\":true,\"read\":false},{\"id\":2,"));
    free(v);

    /* Live: reported, acknowledged (the server marks it delivered). */
    fs_add(&f, 1, true);
    wait_seen(&alice, "4:1;");
    wait_get(&f, 0, 1);
    wait_unread(&alice, "4");
    wait_value(&alice, "notifications", "\"id\":4,", 1);
    wait_value(&alice, "notifications", "\"delivered\":true", 4);

    /* Held back by the server (quiet hours): only the count moves, until
     * the application syncs. */
    fs_add(&f, 1, false);
    wait_unread(&alice, "5");
    usleep(QUIET_MS * 1000);
    assert_int_equal(seen_has(&alice, "5:"), 0);
    assert_int_equal(parley_chat_notifications_sync(chat_of(&alice)), 0);
    wait_seen(&alice, "5:0;");
    wait_get(&f, 2, 3);
    wait_value(&alice, "notifications", "\"title\":", 5);

    /* Pushed live, then the connection drops: the sync after reconnecting
     * starts at 5 and brings 6 again, which is not reported twice. */
    fs_add(&f, 1, true);
    wait_seen(&alice, "6:1;");
    int syncs = (int)fs_get(&f, 1);
    ploop_call(f.th.loop, do_kick, &f);
    wait_get(&f, 1, syncs + 1);
    wait_state(&alice, "online");
    assert_int_equal(fs_get(&f, 2), 5);
    usleep(QUIET_MS * 1000);
    assert_string_equal(alice.seen, "1:0;2:0;3:0;4:1;5:0;6:1;");
    wait_value(&alice, "notifications", "\"title\":", 6);

    /* Read on this device: the ids, the count. */
    int64_t ids[2] = {1, 2};
    assert_int_equal(parley_chat_notifications_read(chat_of(&alice), ids, 2), 0);
    wait_unread(&alice, "4");
    wait_value(&alice, "notifications", "\"read\":true", 2);
    /* Read elsewhere: the count drops to 0, so all are read here too. */
    ploop_call(f.th.loop, do_read_elsewhere, &f);
    wait_unread(&alice, "0");
    wait_value(&alice, "notifications", "\"read\":true", 6);
    assert_int_equal(parley_chat_notifications_read_all(chat_of(&alice)), 0);
    char reads[1024] = "";
    uint64_t end = ptime_ms() + WAIT_MS;
    while (!strstr(reads, "|{\"all\":true}") && ptime_ms() < end) {
        usleep(5000);
        fs_reads(&f, reads, sizeof reads);
    }
    assert_string_equal(reads, "{\"ids\":[1,2]}|{\"all\":true}");
    pthread_mutex_lock(&alice.mu);
    assert_int_equal(alice.unread, 0);
    pthread_mutex_unlock(&alice.mu);

    /* Arguments, and no reads while disconnected (not queued). */
    assert_int_equal(parley_chat_notifications_read(chat_of(&alice), ids, 0), PARLEY_EINVAL);
    int64_t zero = 0;
    assert_int_equal(parley_chat_notifications_read(chat_of(&alice), &zero, 1), PARLEY_EINVAL);
    static int64_t many[501];
    for (int i = 0; i < 501; i++) many[i] = i + 1;
    assert_int_equal(parley_chat_notifications_read(chat_of(&alice), many, 501), PARLEY_EINVAL);
    assert_int_equal(parley_chat_notifications_read(chat_of(&alice), many, 500), 0);
    assert_int_equal(parley_chat_close(chat_of(&alice)), 0);
    wait_state(&alice, "offline");
    assert_int_equal(parley_chat_notifications_read(chat_of(&alice), ids, 1), PARLEY_ESTATE);
    assert_int_equal(parley_chat_notifications_read_all(chat_of(&alice)), PARLEY_ESTATE);
    assert_int_equal(parley_chat_notifications_sync(chat_of(&alice)),
                     0); /* at the next connection */

    ts_close(&alice);
    fs_stop(&f);
}

/* A server that sends garbage at line rate: each bad notification is
 * dropped, the log gets one line (the limit's first) and not a thousand,
 * and a good notification after the flood is still taken. */
static void do_flood(void *arg)
{
    fsrv *f = arg;
    for (int k = 0; k < 1000 && f->sock; k++)
        parley_emit(f->sock, "notification", "[{\"id\":\"not a number\"}]", NULL, 0);
}

static void test_malformed_flood(void **state)
{
    (void)state;
    fsrv f;
    fs_start(&f);
    tstore alice;
    ts_init(&alice, "alice", f.port);
    ts_open(&alice);
    wait_state(&alice, "online");
    int before = atomic_load(&malformed_lines);
    assert_int_equal(ploop_call(f.th.loop, do_flood, &f), 0);
    fs_add(&f, 1, true);
    wait_seen(&alice, "1:1;");
    int lines = atomic_load(&malformed_lines) - before;
    assert_in_range(lines, 1, 2);
    ts_close(&alice);
    fs_stop(&f);
}

/* ---- 2. pages, and the store's bound ---- */

static void test_pages(void **state)
{
    (void)state;
    fsrv f;
    fs_start(&f);
    fs_add(&f, 250, false);
    tstore alice;
    ts_init(&alice, "alice", f.port);
    alice.so.max_notifications = 50;
    ts_open(&alice);
    wait_state(&alice, "online");
    wait_unread(&alice, "250");
    wait_seen(&alice, "250:0;");
    assert_int_equal(fs_get(&f, 1), 3); /* 100 + 100 + 50 */
    assert_int_equal(fs_get(&f, 2), 200);
    pthread_mutex_lock(&alice.mu);
    assert_int_equal(alice.nseen, 250);
    pthread_mutex_unlock(&alice.mu);
    for (int i = 1; i <= 250; i++) {
        char want[32];
        snprintf(want, sizeof want, ";%d:0;", i);
        if (i > 1) assert_int_equal(seen_has(&alice, want), 1);
    }
    wait_value(&alice, "notifications", "\"title\":", 50);
    char *v = get(&alice, "notifications");
    assert_int_equal(strncmp(v, "[{\"id\":201,", 11), 0);
    assert_non_null(strstr(v, "{\"id\":250,"));
    free(v);
    ts_close(&alice);
    fs_stop(&f);
}

/* ---- 3. preferences ---- */

typedef struct prefs_ans {
    pthread_mutex_t mu;
    bool done;
    int err;
    char code[32], field[48];
    char json[600];
} prefs_ans;

static void on_prefs(parley_chat *c, int err, const parley_chat_error *e, const char *json,
                     size_t len, void *user)
{
    (void)c;
    prefs_ans *a = user;
    pthread_mutex_lock(&a->mu);
    a->err = err;
    if (e) {
        snprintf(a->code, sizeof a->code, "%s", e->code);
        snprintf(a->field, sizeof a->field, "%s", e->field);
    }
    if (json) {
        assert_int_equal(strlen(json), len);
        snprintf(a->json, sizeof a->json, "%s", json);
    } else {
        snprintf(a->json, sizeof a->json, "(null)");
    }
    a->done = true;
    pthread_mutex_unlock(&a->mu);
}

static void prefs_wait(prefs_ans *a)
{
    uint64_t end = ptime_ms() + WAIT_MS;
    for (;;) {
        pthread_mutex_lock(&a->mu);
        bool d = a->done;
        pthread_mutex_unlock(&a->mu);
        if (d) return;
        if (ptime_ms() >= end) fail_msg("no prefs answer");
        usleep(2000);
    }
}

static void test_prefs(void **state)
{
    (void)state;
    fsrv f;
    fs_start(&f);
    tstore alice;
    ts_init(&alice, "alice", f.port);
    ts_open(&alice);
    wait_state(&alice, "online");
    wait_unread(&alice, "0");
    parley_chat *c = chat_of(&alice);
    prefs_ans a;
    memset(&a, 0, sizeof a);
    pthread_mutex_init(&a.mu, NULL);
    assert_int_equal(parley_chat_notification_prefs_get(c, on_prefs, &a), 0);
    prefs_wait(&a);
    assert_int_equal(a.err, 0);
    assert_string_equal(a.json, "{\"in_app\":true,\"push\":true,\"types\":{},\"quiet_hours\":null,"
                                "\"muted_users\":[],\"muted_rooms\":[]}");
    a.done = false;
    assert_int_equal(parley_chat_notification_prefs_set(c, "{\"in_app\":false}", on_prefs, &a), 0);
    prefs_wait(&a);
    assert_int_equal(a.err, 0);
    assert_string_equal(a.json, "{\"in_app\":false}");
    a.done = false;
    assert_int_equal(parley_chat_notification_prefs_set(
                         c,
                         "{\"quiet_hours\":{\"start\":\"22:00\",\"end\":\"07:00\",\"tz\":\"Mars/"
                         "Base\"}}",
                         on_prefs, &a),
                     0);
    prefs_wait(&a);
    assert_int_equal(a.err, PARLEY_EPROTO);
    assert_string_equal(a.code, "invalid_field");
    assert_string_equal(a.field, "quiet_hours.tz");
    assert_string_equal(a.json, "(null)");
    assert_int_equal(parley_chat_notification_prefs_set(c, "[1]", on_prefs, &a), PARLEY_EINVAL);
    assert_int_equal(parley_chat_notification_prefs_set(c, "{\"a\":", on_prefs, &a), PARLEY_EINVAL);
    assert_int_equal(parley_chat_notification_prefs_set(c, NULL, on_prefs, &a), PARLEY_EINVAL);
    ts_close(&alice);
    fs_stop(&f);
}

/* ---- 4. against the real service ---- */

typedef struct rsrv {
    th_server th; /* first */
    msg_service_opts mo;
    msg_service *svc;
    int svc_rc;
    char dir[64];
} rsrv;

static void rs_setup(th_server *t, void *user)
{
    (void)t;
    rsrv *r = user;
    r->svc_rc = msg_service_new(r->th.srv, &r->mo, &r->svc);
}

static void rs_down(parley_server *ps, void *user)
{
    (void)ps;
    rsrv *r = user;
    msg_service_free(r->svc);
    atomic_store(&r->th.down, true);
}

static void rs_shutdown_call(void *arg)
{
    rsrv *r = arg;
    if (r->th.echo) engine_free(r->th.echo);
    r->th.echo = NULL;
    parley_server_shutdown(r->th.srv, rs_down, r);
}

static void rm_dir(const char *dir)
{
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* A socket with the notifier role (development identity). */
typedef struct notifier {
    parley_client *cl;
    parley_sock *sock;
    pthread_mutex_t mu;
    int answers;
    char last[2048];
} notifier;

static char *notifier_auth(parley_sock *s, void *user)
{
    (void)s;
    (void)user;
    return strdup("{\"user\":\"svc\",\"role\":\"notifier\"}");
}

static void on_notify_ack(parley_sock *s, int err, const parley_args *args, void *user)
{
    (void)s;
    notifier *n = user;
    pthread_mutex_lock(&n->mu);
    snprintf(n->last, sizeof n->last, "%d %.*s", err, args ? (int)args->json_len : 0,
             args ? args->json : "");
    n->answers++;
    pthread_mutex_unlock(&n->mu);
}

static void notify(notifier *n, const char *obj)
{
    pthread_mutex_lock(&n->mu);
    int before = n->answers;
    pthread_mutex_unlock(&n->mu);
    char args[1024];
    snprintf(args, sizeof args, "[%s]", obj);
    assert_int_equal(
        parley_sock_emit_ack(n->sock, "notify", args, NULL, 0, WAIT_MS, on_notify_ack, n), 0);
    uint64_t end = ptime_ms() + WAIT_MS;
    for (;;) {
        pthread_mutex_lock(&n->mu);
        bool done = n->answers > before;
        pthread_mutex_unlock(&n->mu);
        if (done) break;
        if (ptime_ms() >= end) fail_msg("no answer to notify");
        usleep(2000);
    }
    assert_non_null(strstr(n->last, "0 [{\"ok\":true"));
}

static void test_real_server(void **state)
{
    (void)state;
    rsrv r;
    memset(&r, 0, sizeof r);
    snprintf(r.dir, sizeof r.dir, "/tmp/parley-notify-XXXXXX");
    assert_non_null(mkdtemp(r.dir));
    msg_service_opts_init(&r.mo);
    mquota_opts_unlimited(&r.mo.quota); /* functional tests: bursts */
    r.mo.data_dir = r.dir;
    r.mo.dev_auth = true;
    parley_server_opts so;
    parley_server_opts_init(&so);
    so.ping_interval_ms = 2000;
    so.ping_timeout_ms = 2000;
    assert_int_equal(th_server_start(&r.th, &so, 0, rs_setup, &r, 0), 0);
    assert_int_equal(r.svc_rc, 0);

    tstore alice, bob, phone;
    ts_init(&alice, "alice", r.th.port);
    ts_init(&bob, "bob", r.th.port);
    ts_init(&phone, "alice", r.th.port);
    ts_open(&alice);
    ts_open(&bob);
    wait_state(&alice, "online");
    wait_state(&bob, "online");
    wait_unread(&alice, "0");
    char *v = get(&alice, "notifications");
    assert_string_equal(v, "[]");
    free(v);

    notifier n;
    memset(&n, 0, sizeof n);
    pthread_mutex_init(&n.mu, NULL);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u", r.th.port);
    parley_client_opts co;
    parley_client_opts_init(&co);
    co.url = url;
    assert_int_equal(parley_client_new(&co, &n.cl), 0);
    parley_sock_opts sopt;
    parley_sock_opts_init(&sopt);
    sopt.auth = notifier_auth;
    n.sock = parley_client_socket(n.cl, "/chat", &sopt);
    assert_non_null(n.sock);
    uint64_t end = ptime_ms() + WAIT_MS;
    while (!parley_sock_connected(n.sock) && ptime_ms() < end) usleep(2000);
    assert_true(parley_sock_connected(n.sock));

    /* Live: reported, acknowledged, listed, counted. */
    notify(&n, "{\"to\":\"alice\",\"type\":\"mention\",\"title\":\"hello\",\"body\":\"you\"}");
    wait_seen(&alice, "1:1;");
    wait_unread(&alice, "1");
    wait_value(&alice, "notifications", "\"title\":\"hello\",\"body\":\"you\"", 1);
    wait_value(&alice, "notifications", "\"delivered\":true,\"read\":false}", 1);

    /* in_app off: held back (counted only) until a sync. */
    prefs_ans a;
    memset(&a, 0, sizeof a);
    pthread_mutex_init(&a.mu, NULL);
    assert_int_equal(
        parley_chat_notification_prefs_set(chat_of(&alice), "{\"in_app\":false}", on_prefs, &a), 0);
    prefs_wait(&a);
    assert_int_equal(a.err, 0);
    assert_non_null(strstr(a.json, "\"in_app\":false"));
    notify(&n, "{\"to\":\"alice\",\"type\":\"reminder\",\"title\":\"later\"}");
    wait_unread(&alice, "2");
    usleep(QUIET_MS * 1000);
    assert_int_equal(seen_has(&alice, "2:"), 0);
    assert_int_equal(parley_chat_notifications_sync(chat_of(&alice)), 0);
    wait_seen(&alice, "2:0;");
    wait_value(&alice, "notifications", "\"title\":\"later\"", 1);

    /* An urgent message: pushed once in_app is on again (the recipient
     * stays in control: urgent passes quiet hours only). */
    a.done = false;
    assert_int_equal(
        parley_chat_notification_prefs_set(chat_of(&alice), "{\"in_app\":true}", on_prefs, &a), 0);
    prefs_wait(&a);
    assert_int_equal(a.err, 0);
    parley_chat_send_opts mo;
    parley_chat_send_opts_init(&mo);
    mo.to = "alice";
    mo.text = "call me";
    mo.priority = PARLEY_PRIORITY_URGENT;
    char cid[37];
    assert_int_equal(parley_store_send(bob.st, &mo, cid, NULL), 0);
    wait_seen(&alice, "3:1;");
    wait_unread(&alice, "3");
    /* bob is no contact of alice's (she never wrote to him, they share no
     * room): his urgent DM notifies her as high. */
    wait_value(
        &alice, "notifications",
        "\"type\":\"message\",\"priority\":\"high\",\"title\":\"bob\",\"body\":\"call me\"", 1);

    /* Preferences: the server's refusal comes back with its field. */
    a.done = false;
    assert_int_equal(parley_chat_notification_prefs_set(
                         chat_of(&alice),
                         "{\"quiet_hours\":{\"start\":\"22:00\",\"end\":\"07:00\",\"tz\":\"Mars/"
                         "Olympus\"}}",
                         on_prefs, &a),
                     0);
    prefs_wait(&a);
    assert_int_equal(a.err, PARLEY_EPROTO);
    assert_string_equal(a.code, "invalid_field");
    assert_string_equal(a.field, "quiet_hours.tz");

    /* Reads. */
    int64_t one = 1;
    assert_int_equal(parley_chat_notifications_read(chat_of(&alice), &one, 1), 0);
    wait_unread(&alice, "2");
    wait_value(&alice, "notifications", "\"read\":true", 1);

    /* A second device: its sync brings all three, once, with the read. */
    ts_open(&phone);
    wait_state(&phone, "online");
    wait_seen(&phone, "3:0;");
    assert_string_equal(phone.seen, "1:0;2:0;3:0;");
    wait_unread(&phone, "2");
    wait_value(&phone, "notifications", "\"read\":true", 1);
    /* Read everything there: this device learns it from the count. */
    assert_int_equal(parley_chat_notifications_read_all(chat_of(&phone)), 0);
    wait_unread(&phone, "0");
    wait_unread(&alice, "0");
    wait_value(&alice, "notifications", "\"read\":true", 3);

    /* A reconnection repeats nothing. */
    assert_int_equal(parley_chat_close(chat_of(&alice)), 0);
    wait_state(&alice, "offline");
    assert_int_equal(parley_chat_connect(chat_of(&alice)), 0);
    wait_state(&alice, "online");
    usleep(QUIET_MS * 1000);
    assert_string_equal(alice.seen, "1:1;2:0;3:1;");

    parley_client_free(n.cl);
    ts_close(&alice);
    ts_close(&bob);
    ts_close(&phone);
    ploop_call(r.th.loop, rs_shutdown_call, &r);
    for (int i = 0; i < 500 && !atomic_load(&r.th.down); i++) usleep(10000);
    assert_true(atomic_load(&r.th.down));
    parley_loop_join(r.th.loop);
    parley_server_free(r.th.srv);
    parley_loop_free(r.th.loop);
    rm_dir(r.dir);
    assert_int_equal(atomic_load(&warnings), 0);
}

/* ---- 4. the cache: presence, notifications and unread, offline ---- */

static const char *const cache_keys[] = {"presence/bob", "presence/carol", "presence/dave",
                                         "presence",     "notifications",  "notifications/unread"};
#define NCACHE_KEYS (sizeof cache_keys / sizeof *cache_keys)

static void on_first(parley_store *s, const char *key, const char *json, size_t len, void *user)
{
    (void)s;
    char **slot = user;
    assert_non_null(key);
    assert_int_equal(strlen(json), len);
    free(*slot);
    *slot = strdup(json);
}

static void db_run(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *err = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK) fail_msg("%s: %s", sql, err ? err : "?");
    sqlite3_close(db);
}

static int db_version(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int v = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* Offline (dispatch_fd mode): every key's snapshot and first watch
 * call are want[]. */
static void expect_offline(tstore *t, char *const *want)
{
    for (size_t i = 0; i < NCACHE_KEYS; i++) {
        char *v = get(t, cache_keys[i]);
        assert_string_equal(v, want[i]);
        free(v);
    }
    char *first[NCACHE_KEYS] = {0};
    for (size_t i = 0; i < NCACHE_KEYS; i++)
        assert_true(parley_store_watch(t->st, cache_keys[i], on_first, &first[i]) > 0);
    assert_int_equal(parley_store_dispatch(t->st), (int)NCACHE_KEYS);
    for (size_t i = 0; i < NCACHE_KEYS; i++) {
        assert_non_null(first[i]);
        assert_string_equal(first[i], want[i]);
        free(first[i]);
    }
    char *conn = get(t, "connection");
    assert_null(strstr(conn, "online")); /* live state, not cached */
    free(conn);
}

static void test_cache(void **state)
{
    (void)state;
    char dir[] = "/tmp/parley-notify-XXXXXX";
    assert_non_null(mkdtemp(dir));
    fsrv f;
    fs_start(&f);
    fs_add(&f, 3, false);
    tstore alice;
    ts_init(&alice, "alice", f.port);
    snprintf(alice.cache, sizeof alice.cache, "%s/alice.store", dir);
    alice.so.cache_path = alice.cache;
    alice.so.cache_flush_ms = 50;
    ts_open(&alice);
    wait_state(&alice, "online");
    wait_value(&alice, "notifications", "\"title\":", 3);
    fs_add(&f, 1, true);
    wait_value(&alice, "notifications", "\"title\":", 4);
    int64_t two = 2;
    assert_int_equal(parley_chat_notifications_read(chat_of(&alice), &two, 1), 0);
    wait_value(&alice, "notifications", "\"read\":true", 1);
    wait_unread(&alice, "3");
    const char *users[] = {"bob", "carol"};
    assert_int_equal(parley_chat_presence_subscribe(chat_of(&alice), users, 2), 0);
    wait_value(&alice, "presence", "\"user\":", 2);

    /* The values, exactly. */
    char *want[NCACHE_KEYS];
    for (size_t i = 0; i < NCACHE_KEYS; i++) want[i] = get(&alice, cache_keys[i]);
    assert_string_equal(want[0], FS_BOB);
    const char *carol =
        "{\"user\":\"carol\",\"status\":\"offline\",\"text\":\"\",\"last_seen\":null,"
        "\"devices\":0}";
    assert_string_equal(want[1], carol);
    assert_string_equal(want[2], "{\"user\":\"dave\",\"status\":\"offline\",\"text\":\"\","
                                 "\"last_seen\":null,\"devices\":0}");
    char all[512];
    snprintf(all, sizeof all, "{\"bob\":%s,\"carol\":%s}", FS_BOB, carol);
    assert_string_equal(want[3], all);
    pbuf b = {0};
    pbuf_append(&b, "[", 1);
    for (int64_t id = 1; id <= 4; id++) {
        fnotif x = {.id = id, .delivered = true, .read = id == 2};
        if (id > 1) pbuf_append(&b, ",", 1);
        fs_render(&b, &x);
    }
    pbuf_append(&b, "]", 2);
    assert_string_equal(want[4], (const char *)b.ptr);
    pbuf_free(&b);
    assert_string_equal(want[5], "3");
    ts_close(&alice);
    fs_stop(&f);

    /* The server is down: the same values, from the cache. */
    alice.so.dispatch_fd = 1;
    ts_open(&alice);
    expect_offline(&alice, want);
    ts_close(&alice);
    assert_int_equal(atomic_load(&warnings), 0);

    /* Bad rows and a bad list element are skipped, each with a warning;
     * the rest loads as before. */
    db_run(alice.cache,
           "INSERT INTO store_values VALUES ('presence/eve', '{\"user\":\"eve\",\"status\":"
           "\"sleeping\",\"text\":\"\",\"last_seen\":null,\"devices\":0}');"
           "INSERT INTO store_values VALUES ('presence/frank', '" FS_BOB "');"
           "INSERT INTO store_values VALUES ('presence/gina', '{\"user\":');"
           "INSERT INTO store_values VALUES ('typing/dm:alice:bob', '[\"bob\"]');"
           "INSERT INTO store_values VALUES ('no such key', '1');"
           "UPDATE store_values SET value = '[{\"id\":0,\"type\":\"mention\"},' || substr(value, 2)"
           " WHERE key = 'notifications';");
    ts_open(&alice);
    expect_offline(&alice, want);
    char *eve = get(&alice, "presence/eve");
    assert_string_equal(eve, "{\"user\":\"eve\",\"status\":\"offline\",\"text\":\"\",\"last_seen\":"
                             "null,\"devices\":0}");
    free(eve);
    ts_close(&alice);
    assert_int_equal(atomic_load(&warnings), 6);
    atomic_store(&warnings, 0);
    /* Warned about once: the bad rows are gone, the list rewritten. */
    ts_open(&alice);
    expect_offline(&alice, want);
    ts_close(&alice);
    assert_int_equal(atomic_load(&warnings), 0);
    /* A bad unread count: 0, the value of nothing known. */
    db_run(alice.cache,
           "UPDATE store_values SET value = '\"three\"' WHERE key = 'notifications/unread';");
    ts_open(&alice);
    char *unread = get(&alice, "notifications/unread");
    assert_string_equal(unread, "0");
    free(unread);
    ts_close(&alice);
    assert_int_equal(atomic_load(&warnings), 1);
    atomic_store(&warnings, 0);

    /* A cache written before presence and notifications were cached
     * (messages only) loads as it did. */
    char old[128];
    snprintf(old, sizeof old, "%s/old.store", dir);
    const char *msg = "{\"id\":7,\"seq\":3,\"ts\":1767225600000,\"from\":\"bob\",\"client_id\":"
                      "\"0b6f2c1e-8f0a-4c51-9d3e-2a7b5c9e1f40\",\"mine\":false,\"type\":\"text\","
                      "\"priority\":\"normal\",\"content\":{\"text\":\"hi\"},\"text\":\"hi\"}";
    char sql[1024];
    snprintf(sql, sizeof sql,
             "CREATE TABLE store_values (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
             "PRAGMA user_version = 1;"
             "INSERT INTO store_values VALUES ('messages/dm:alice:bob', '[%s]');",
             msg);
    db_run(old, sql);
    alice.so.cache_path = old;
    ts_open(&alice);
    char list[512];
    snprintf(list, sizeof list, "[%s]", msg);
    char *msgs = get(&alice, "messages/dm:alice:bob");
    assert_string_equal(msgs, list);
    free(msgs);
    assert_int_equal(parley_chat_last_seq(chat_of(&alice), "dm:alice:bob"), 3);
    char *empty[NCACHE_KEYS] = {want[2], want[2], want[2], "{}", "[]", "0"};
    empty[0] = strdup("{\"user\":\"bob\",\"status\":\"offline\",\"text\":\"\",\"last_seen\":null,"
                      "\"devices\":0}");
    empty[1] = strdup(carol);
    expect_offline(&alice, empty);
    free(empty[0]);
    free(empty[1]);
    ts_close(&alice);
    assert_int_equal(db_version(old), 1);
    assert_int_equal(db_version(alice.cache), 1);
    assert_int_equal(atomic_load(&warnings), 0);

    for (size_t i = 0; i < NCACHE_KEYS; i++) free(want[i]);
    pthread_mutex_destroy(&alice.mu);
    rm_dir(dir);
}

int main(void)
{
    /* As every program using the library must (README, "Using the
     * library"): a write to a connection the peer reset is EPIPE, not
     * a fatal signal. */
    signal(SIGPIPE, SIG_IGN);
    parley_log_set(getenv("PARLEY_TEST_LOG") ? PARLEY_LOG_DEBUG : PARLEY_LOG_WARN, log_sink, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flow),  cmocka_unit_test(test_malformed_flood),
        cmocka_unit_test(test_pages),
        cmocka_unit_test(test_prefs), cmocka_unit_test(test_real_server),
        cmocka_unit_test(test_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
