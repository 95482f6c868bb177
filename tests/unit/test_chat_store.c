/*
 * The reactive state store (include/parley/store.h) against the real
 * messaging service in the same process, as test_chat_client.c runs it:
 * the server on a loop thread of its own, every store's chat on its own
 * loop thread. Watch callbacks record what they saw (under a mutex); the
 * test thread waits with bounded timeouts and asserts exact values and
 * counts. In dispatch_fd mode the deliveries run on a separate pthread
 * that polls the store's descriptor.
 *
 * PARLEY_TEST_LOG=1 prints the library's log.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <sys/stat.h>

#include "chat_server.h"
#include "codec/json.h"
#include "parley/store.h"
#include "services/messaging.h"

/* ---- stores ---- */

typedef struct tstore {
    parley_store *st;
    parley_chat_opts co;
    parley_store_opts so;
    char user[32], url[64], cache[96];
} tstore;

static void ts_init(tstore *t, const char *user, const srv *s)
{
    memset(t, 0, sizeof *t);
    snprintf(t->user, sizeof t->user, "%s", user);
    snprintf(t->url, sizeof t->url, "http://127.0.0.1:%u", s->port);
    parley_chat_opts_init(&t->co);
    t->co.url = t->url;
    t->co.user_id = t->user;
    t->co.dev_auth = 1;
    t->co.reconnection_delay_ms = 50;
    t->co.reconnection_delay_max_ms = 200;
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

/* How many elements the array value of key has. */
static size_t count_of(const char *json)
{
    json_val j;
    assert_int_equal(json_parse(json, strlen(json), 32, &j, NULL), 0);
    assert_int_equal(j.type, JSON_ARRAY);
    return json_count(&j);
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

static void store_send(tstore *t, const char *to, const char *text)
{
    parley_chat_send_opts o;
    parley_chat_send_opts_init(&o);
    o.to = to;
    o.text = text;
    char id[37];
    parley_chat_error err;
    assert_int_equal(parley_store_send(t->st, &o, id, &err), 0);
    assert_int_equal(strlen(id), 36);
}

/* ---- dispatching on a thread of its own ---- */

typedef struct dispatcher {
    parley_store *st;
    int ready; /* poll said readable */
    int ran;   /* what parley_store_dispatch returned */
    pthread_t self;
} dispatcher;

static void *dispatch_main(void *arg)
{
    dispatcher *d = arg;
    d->self = pthread_self();
    struct pollfd p = {.fd = parley_store_fd(d->st), .events = POLLIN};
    d->ready = poll(&p, 1, WAIT_MS) == 1 && (p.revents & POLLIN);
    d->ran = d->ready ? parley_store_dispatch(d->st) : -1;
    return NULL;
}

/* One poll + dispatch on a new thread: how many callbacks ran (-1: the
 * descriptor never became readable). *who gets the thread. */
static int dispatch_once(parley_store *st, pthread_t *who)
{
    dispatcher d = {.st = st};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, dispatch_main, &d), 0);
    pthread_join(th, NULL);
    if (who) *who = d.self;
    return d.ran;
}

static bool fd_readable(parley_store *st)
{
    struct pollfd p = {.fd = parley_store_fd(st), .events = POLLIN};
    return poll(&p, 1, 0) == 1;
}

/* ---- 1. a burst in dispatch_fd mode: one callback with all of it ---- */

static void test_fd_burst(void **state)
{
    (void)state;
    srv s;
    srv_init(&s);
    srv_start(&s);
    tstore alice, bob;
    ts_init(&alice, "alice", &s);
    ts_init(&bob, "bob", &s);
    bob.so.dispatch_fd = 1;
    ts_open(&alice);
    ts_open(&bob);
    assert_true(parley_store_fd(bob.st) >= 0);
    assert_int_equal(parley_store_fd(alice.st), -1);
    wait_state(&alice, "online");
    wait_state(&bob, "online");

    rec msgs;
    rec_init(&msgs);
    int64_t id = parley_store_watch(bob.st, "messages/dm:alice:bob", on_value, &msgs);
    assert_true(id > 0);
    /* The first value, delivered on the dispatching thread. */
    pthread_t who;
    assert_int_equal(dispatch_once(bob.st, &who), 1);
    assert_int_equal(msgs.calls, 1);
    assert_string_equal(msgs.last, "[]");
    assert_true(pthread_equal(who, msgs.thread));
    assert_false(fd_readable(bob.st));

    /* 50 messages while bob's host does not dispatch. */
    for (int i = 1; i <= 50; i++) {
        char text[16];
        snprintf(text, sizeof text, "m%d", i);
        store_send(&alice, "bob", text);
    }
    wait_value(&bob, "messages/dm:alice:bob", "\"from\":\"alice\"", 50);
    assert_true(fd_readable(bob.st));
    assert_int_equal(msgs.calls, 1);

    /* One dispatch: one callback with all 50, in order, then quiet. */
    assert_int_equal(dispatch_once(bob.st, &who), 1);
    assert_int_equal(msgs.calls, 2);
    assert_true(pthread_equal(who, msgs.thread));
    assert_int_equal(count_of(msgs.last), 50);
    char *p = msgs.last;
    for (int i = 1; i <= 50; i++) {
        char want[64];
        snprintf(want, sizeof want, "\"seq\":%d,", i);
        p = strstr(p, want);
        assert_non_null(p);
        snprintf(want, sizeof want, "\"text\":\"m%d\"", i);
        p = strstr(p, want);
        assert_non_null(p);
    }
    assert_int_equal(occurrences(msgs.last, "\"mine\":false"), 50);
    assert_int_equal(occurrences(msgs.last, "\"status\""), 0); /* not bob's own */
    assert_false(fd_readable(bob.st));
    assert_int_equal(parley_store_dispatch(bob.st), 0);

    /* Alice's side: her 50, sending -> ... -> delivered (bob's device). */
    wait_value(&alice, "messages/dm:alice:bob", "\"status\":\"delivered\"", 50);
    /* Bob reads up to 50: alice's list shows read. */
    assert_int_equal(parley_chat_mark_read(parley_store_chat(bob.st), "dm:alice:bob", 50), 0);
    wait_value(&alice, "messages/dm:alice:bob", "\"status\":\"read\"", 50);
    char *a = get(&alice, "messages/dm:alice:bob");
    assert_int_equal(count_of(a), 50);
    assert_int_equal(occurrences(a, "\"mine\":true"), 50);
    assert_int_equal(occurrences(a, "\"seq\":0,"), 0);
    free(a);

    /* Unwatch stops callbacks; an unknown id is refused. */
    assert_int_equal(parley_store_unwatch(bob.st, id), 0);
    assert_int_equal(parley_store_unwatch(bob.st, id), PARLEY_EINVAL);
    store_send(&alice, "bob", "after unwatch");
    wait_value(&bob, "messages/dm:alice:bob", "\"from\":\"alice\"", 51);
    dispatch_once(bob.st, NULL);
    assert_int_equal(msgs.calls, 2);

    ts_close(&alice);
    ts_close(&bob);
    rec_free(&msgs);
    srv_done(&s);
}

/* ---- 2. loop-thread delivery: connection and typing sequences ---- */

static void test_loop_sequences(void **state)
{
    (void)state;
    srv s;
    srv_init(&s);
    srv_start(&s);
    tstore alice, bob;
    ts_init(&alice, "alice", &s);
    ts_init(&bob, "bob", &s);
    bob.co.auto_connect = 0;
    ts_open(&alice);
    ts_open(&bob);
    assert_int_equal(parley_store_dispatch(bob.st), PARLEY_ESTATE);

    rec conn, typing;
    rec_init(&conn);
    rec_init(&typing);
    assert_true(parley_store_watch(bob.st, "connection", on_value, &conn) > 0);
    assert_true(parley_store_watch(bob.st, "typing/dm:alice:bob", on_value, &typing) > 0);
    assert_int_equal(rec_settle(&conn, 1), 1);
    assert_string_equal(conn.last, "{\"state\":\"offline\"}");
    assert_int_equal(rec_settle(&typing, 1), 1);
    assert_string_equal(typing.last, "[]");

    /* Every state lives across loop iterations: each one is delivered. */
    assert_int_equal(parley_chat_connect(parley_store_chat(bob.st)), 0);
    wait_state(&bob, "online");
    wait_state(&alice, "online");
    assert_int_equal(rec_settle(&conn, 4), 4);
    char all[8192];
    rec_joined(&conn, all, sizeof all);
    assert_string_equal(all, "{\"state\":\"offline\"}|{\"state\":\"connecting\"}|"
                             "{\"state\":\"syncing\"}|{\"state\":\"online\"}");

    /* Typing on and off. */
    parley_chat *ac = parley_store_chat(alice.st);
    assert_int_equal(parley_chat_typing(ac, "dm:alice:bob", 1), 0);
    wait_value(&bob, "typing/dm:alice:bob", "[\"alice\"]", 1);
    assert_int_equal(parley_chat_typing(ac, "dm:alice:bob", 0), 0);
    wait_value(&bob, "typing/dm:alice:bob", "[]", 1);
    assert_int_equal(rec_settle(&typing, 3), 3);
    rec_joined(&typing, all, sizeof all);
    assert_string_equal(all, "[]|[\"alice\"]|[]");

    /* A typing user is dropped when the connection goes (no "stop" can
     * come any more), and the watcher sees both. */
    assert_int_equal(parley_chat_typing(ac, "dm:alice:bob", 1), 0);
    wait_value(&bob, "typing/dm:alice:bob", "[\"alice\"]", 1);
    assert_int_equal(parley_chat_close(parley_store_chat(bob.st)), 0);
    wait_state(&bob, "offline");
    wait_value(&bob, "typing/dm:alice:bob", "[]", 1);
    assert_int_equal(rec_settle(&typing, 5), 5);
    rec_joined(&typing, all, sizeof all);
    assert_string_equal(all, "[]|[\"alice\"]|[]|[\"alice\"]|[]");
    assert_int_equal(rec_settle(&conn, 5), 5);
    assert_string_equal(conn.last, "{\"state\":\"offline\"}");

    /* A callback that unwatches itself is not called again. */
    rec self;
    rec_init(&self);
    pthread_mutex_lock(&self.mu);
    self.unwatch_self = parley_store_watch(bob.st, "connection", on_value, &self);
    assert_true(self.unwatch_self > 0);
    pthread_mutex_unlock(&self.mu);
    assert_int_equal(rec_settle(&self, 1), 1);
    assert_int_equal(parley_chat_connect(parley_store_chat(bob.st)), 0);
    wait_state(&bob, "online");
    assert_int_equal(rec_settle(&self, 1), 1);
    assert_int_equal(rec_settle(&conn, 8), 8);

    ts_close(&alice);
    ts_close(&bob);
    rec_free(&conn);
    rec_free(&typing);
    rec_free(&self);
    srv_done(&s);
}

/* ---- 3. the cache: the last known state, offline ---- */

static void test_cache_reload(void **state)
{
    (void)state;
    srv s;
    srv_init(&s);
    srv_start(&s);
    tstore alice, bob;
    ts_init(&alice, "alice", &s);
    ts_init(&bob, "bob", &s);
    snprintf(bob.cache, sizeof bob.cache, "%s/bob.store", s.dir);
    bob.so.cache_path = bob.cache;
    bob.so.cache_flush_ms = 50;
    ts_open(&alice);
    ts_open(&bob);
    wait_state(&alice, "online");
    wait_state(&bob, "online");

    store_send(&alice, "bob", "one");
    store_send(&alice, "bob", "two \"quoted\"");
    store_send(&bob, "alice", "three");
    wait_value(&bob, "messages/dm:alice:bob", "\"status\":\"delivered\"", 1);
    wait_value(&bob, "messages/dm:alice:bob", "\"from\":\"alice\"", 2);
    char *before = get(&bob, "messages/dm:alice:bob");
    assert_int_equal(count_of(before), 3);
    ts_close(&bob);
    srv_stop(&s);

    /* Offline: the snapshot and the first delivery are what it was. */
    bob.so.dispatch_fd = 1;
    ts_open(&bob);
    /* The chat knows what the cache has: it will sync from there. */
    assert_int_equal(parley_chat_last_seq(parley_store_chat(bob.st), "dm:alice:bob"), 3);
    char *after = get(&bob, "messages/dm:alice:bob");
    assert_string_equal(after, before);
    free(after);
    rec msgs;
    rec_init(&msgs);
    assert_true(parley_store_watch(bob.st, "messages/dm:alice:bob", on_value, &msgs) > 0);
    assert_int_equal(dispatch_once(bob.st, NULL), 1);
    assert_string_equal(msgs.last, before);
    char *conn = get(&bob, "connection");
    assert_null(strstr(conn, "online")); /* live state is not cached */
    free(conn);

    /* Sent offline: "sending" (the chat queued it); cached so; and after a
     * restart without a queue file nothing will send it: "failed". */
    store_send(&bob, "alice", "lost");
    wait_value(&bob, "messages/dm:alice:bob", "\"status\":\"sending\"", 1);
    ts_close(&bob);
    ts_open(&bob);
    wait_value(&bob, "messages/dm:alice:bob", "\"status\":\"failed\"", 1);
    wait_value(&bob, "messages/dm:alice:bob", "\"status\":\"sending\"", 0);

    /* Back online it syncs from the cached seq: one new message, no
     * duplicate of the cached ones. */
    srv_start(&s);
    wait_state(&bob, "online");
    wait_state(&alice, "online");
    store_send(&alice, "bob", "four");
    wait_value(&bob, "messages/dm:alice:bob", "\"from\":\"alice\"", 3);
    char *now = get(&bob, "messages/dm:alice:bob");
    assert_int_equal(count_of(now), 5);
    assert_int_equal(occurrences(now, "\"seq\":0,"), 1); /* the lost one, last */
    assert_non_null(strstr(now, "},\"text\":\"lost\",\"status\":\"failed\"}]"));
    assert_int_equal(occurrences(now, "\"seq\":4,"), 1);
    assert_int_equal(occurrences(now, "},\"text\":\"one\""), 1);
    free(now);
    ts_close(&bob);

    /* Not a cache file: refused. */
    char junk[128];
    snprintf(junk, sizeof junk, "%s/junk", s.dir);
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    fputs("this is not a database, not at all, and long enough to be read as a header", f);
    fclose(f);
    bob.so.cache_path = junk;
    parley_store *st = (parley_store *)&bob;
    assert_int_equal(parley_store_new(&bob.so, &st), PARLEY_EIO);
    assert_null(st);
    atomic_store(&warnings, 0); /* the refusal was logged, as it should */

    ts_close(&alice);
    free(before);
    rec_free(&msgs);
    srv_done(&s);
}

/* ---- 4. bounds, keys and arguments ---- */

static void test_bounds_and_keys(void **state)
{
    (void)state;
    srv s;
    srv_init(&s);
    srv_start(&s);
    tstore alice, bob;
    ts_init(&alice, "alice", &s);
    ts_init(&bob, "bob", &s);
    bob.so.max_messages = 5;
    ts_open(&alice);
    ts_open(&bob);
    wait_state(&alice, "online");
    wait_state(&bob, "online");
    for (int i = 1; i <= 8; i++) {
        char text[16];
        snprintf(text, sizeof text, "m%d", i);
        store_send(&alice, "bob", text);
    }
    wait_value(&bob, "messages/dm:alice:bob", "},\"text\":\"m8\"", 1);
    char *v = get(&bob, "messages/dm:alice:bob");
    assert_int_equal(count_of(v), 5);
    assert_null(strstr(v, "\"text\":\"m3\""));
    assert_non_null(strstr(v, "\"seq\":4,"));
    free(v);

    /* A refused send leaves nothing in the list. */
    parley_chat_send_opts o;
    parley_chat_send_opts_init(&o);
    o.to = "bob";
    o.type = "image";
    o.content_json = "{}";
    parley_chat_error err;
    char id[37];
    assert_int_equal(parley_store_send(alice.st, &o, id, &err), PARLEY_EINVAL);
    v = get(&alice, "messages/dm:alice:bob");
    assert_int_equal(count_of(v), 8);
    assert_null(strstr(v, "\"image\""));
    free(v);

    /* Keys: any conversation has an empty value; anything else is refused. */
    v = get(&bob, "typing/room:general");
    assert_string_equal(v, "[]");
    free(v);
    v = get(&bob, "messages/dm:carol:dave");
    assert_string_equal(v, "[]");
    free(v);
    rec r;
    rec_init(&r);
    /* presence/<user> and notifications are keys now (test_chat_presence.c). */
    assert_null(parley_store_get(bob.st, "presence/not a user", NULL));
    assert_null(parley_store_get(bob.st, "notifications/read", NULL));
    assert_null(parley_store_get(bob.st, "messages/nonsense", NULL));
    assert_int_equal(parley_store_watch(bob.st, "messages/", on_value, &r), PARLEY_EINVAL);
    assert_int_equal(parley_store_watch(bob.st, "connection", NULL, &r), PARLEY_EINVAL);
    assert_int_equal(parley_store_unwatch(bob.st, 12345), PARLEY_EINVAL);
    parley_store_opts so;
    parley_store_opts_init(&so);
    parley_store *st = (parley_store *)&so;
    assert_int_equal(parley_store_new(&so, &st), PARLEY_EINVAL);
    assert_null(st);
    assert_int_equal(rec_settle(&r, 0), 0);

    ts_close(&alice);
    ts_close(&bob);
    rec_free(&r);
    srv_done(&s);
}

/* ---- 5. the application's chat callbacks still run, after the store ---- */

typedef struct app {
    tstore *t;
    atomic_int states, messages, statuses, receipts, typings;
    atomic_int saw_in_store; /* on_message: the snapshot had it already */
    atomic_int wrong_user;
} app;

static void app_state(parley_chat *c, parley_chat_state st, const parley_chat_error *why,
                      void *user)
{
    (void)c;
    (void)st;
    (void)why;
    app *a = user;
    atomic_fetch_add(&a->states, 1);
}

static void app_message(parley_chat *c, const parley_chat_message *m, void *user)
{
    app *a = user;
    if (c != parley_store_chat(a->t->st)) atomic_fetch_add(&a->wrong_user, 1);
    char key[160], needle[64];
    snprintf(key, sizeof key, "messages/%s", m->conversation);
    snprintf(needle, sizeof needle, "\"seq\":%lld,", (long long)m->seq);
    char *v = parley_store_get(a->t->st, key, NULL);
    if (v && strstr(v, needle)) atomic_fetch_add(&a->saw_in_store, 1);
    free(v);
    atomic_fetch_add(&a->messages, 1);
}

static void app_status(parley_chat *c, const parley_chat_status *st, void *user)
{
    (void)c;
    (void)st;
    app *a = user;
    atomic_fetch_add(&a->statuses, 1);
}

static void app_receipt(parley_chat *c, const char *conv, const char *u, int64_t d, int64_t r,
                        void *user)
{
    (void)c;
    (void)conv;
    (void)u;
    (void)d;
    (void)r;
    app *a = user;
    atomic_fetch_add(&a->receipts, 1);
}

static void app_typing(parley_chat *c, const char *conv, const char *u, int typing, void *user)
{
    (void)c;
    (void)conv;
    (void)u;
    (void)typing;
    app *a = user;
    atomic_fetch_add(&a->typings, 1);
}

static int wait_atomic(atomic_int *v, int n)
{
    uint64_t end = ptime_ms() + WAIT_MS;
    while (atomic_load(v) < n && ptime_ms() < end) usleep(2000);
    usleep(QUIET_MS * 1000);
    return atomic_load(v);
}

static void test_app_callbacks(void **state)
{
    (void)state;
    srv s;
    srv_init(&s);
    srv_start(&s);
    tstore alice, bob;
    ts_init(&alice, "alice", &s);
    ts_init(&bob, "bob", &s);
    app a;
    memset(&a, 0, sizeof a);
    a.t = &alice;
    alice.co.on_state = app_state;
    alice.co.on_message = app_message;
    alice.co.on_status = app_status;
    alice.co.on_receipt = app_receipt;
    alice.co.on_typing = app_typing;
    alice.co.user = &a;
    ts_open(&alice);
    ts_open(&bob);
    wait_state(&alice, "online");
    wait_state(&bob, "online");
    assert_int_equal(wait_atomic(&a.states, 3), 3); /* connecting, syncing, online */

    store_send(&bob, "alice", "to alice");
    assert_int_equal(wait_atomic(&a.messages, 1), 1);
    assert_int_equal(atomic_load(&a.saw_in_store), 1);
    store_send(&alice, "bob", "to bob");
    wait_value(&alice, "messages/dm:alice:bob", "\"status\":\"delivered\"", 1);
    assert_int_equal(wait_atomic(&a.statuses, 3), 3); /* sending, sent, delivered */
    assert_true(wait_atomic(&a.receipts, 1) >= 1);
    assert_int_equal(parley_chat_typing(parley_store_chat(bob.st), "dm:alice:bob", 1), 0);
    assert_int_equal(wait_atomic(&a.typings, 1), 1);
    assert_int_equal(atomic_load(&a.wrong_user), 0);

    ts_close(&alice);
    ts_close(&bob);
    srv_done(&s);
}

/* ---- a raw WebSocket client's state: "ws/<name>/state" ---- */

static void test_ws_state(void **state)
{
    (void)state;
    srv s;
    srv_init(&s);
    srv_start(&s);
    tstore a;
    ts_init(&a, "alice", &s);
    ts_open(&a);
    /* A real WebSocket peer: the server's Engine.IO endpoint. */
    char url[128];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/socket.io/?EIO=4&transport=websocket", s.port);
    parley_ws_opts wo;
    parley_ws_opts_init(&wo);
    wo.url = url;
    wo.reconnect = 1;
    wo.reconnect_delay_ms = 20;
    wo.reconnect_delay_max_ms = 50;
    parley_ws *ws;
    assert_int_equal(parley_ws_new(NULL, &wo, &ws), 0);

    rec r;
    rec_init(&r);
    char *v = get(&a, "ws/feed/state");
    assert_string_equal(v, "{\"state\":\"idle\",\"attempt\":0}");
    free(v);
    assert_true(parley_store_watch(a.st, "ws/feed/state", on_value, &r) > 0);
    assert_int_equal(rec_settle(&r, 1), 1);
    assert_int_equal(parley_store_watch_ws(a.st, "feed", ws), 0);
    /* Bad names, a second observation of the name or of the ws. */
    assert_int_equal(parley_store_watch_ws(a.st, "feed", ws), PARLEY_ESTATE);
    assert_int_equal(parley_store_watch_ws(a.st, "other", ws), PARLEY_ESTATE);
    assert_int_equal(parley_store_watch_ws(a.st, "bad name", ws), PARLEY_EINVAL);
    assert_int_equal(parley_store_watch_ws(a.st, "", ws), PARLEY_EINVAL);
    assert_int_equal(parley_store_watch_ws(a.st, "x", NULL), PARLEY_EINVAL);
    assert_null(parley_store_get(a.st, "ws/bad name/state", NULL));
    assert_null(parley_store_get(a.st, "ws/feed", NULL));
    assert_int_equal(parley_store_watch(a.st, "ws/feed/status", on_value, &r), PARLEY_EINVAL);

    assert_int_equal(parley_ws_connect(ws), 0);
    wait_value(&a, "ws/feed/state", "\"state\":\"open\"", 1);
    v = get(&a, "ws/feed/state");
    assert_string_equal(v, "{\"state\":\"open\",\"attempt\":0}");
    free(v);

    /* The server goes away: the watcher sees the connection end and the
     * client wait for its next attempt; back up, open again. */
    srv_stop(&s);
    wait_value(&a, "ws/feed/state", "\"state\":\"open\"", 0);
    srv_start(&s);
    wait_value(&a, "ws/feed/state", "\"state\":\"open\"", 1);
    char all[8192];
    rec_joined(&r, all, sizeof all);
    assert_non_null(strstr(all, "\"state\":\"reconnecting\""));
    assert_non_null(strstr(all, "\"state\":\"connecting\""));
    assert_non_null(strstr(all, "\"reason\":"));
    v = get(&a, "ws/feed/state");
    assert_non_null(strstr(v, "\"attempt\":"));
    assert_null(strstr(v, "\"attempt\":0"));
    free(v);

    /* Closed by the application: closed, with the reason. */
    assert_int_equal(parley_ws_close(ws, 1000, "bye"), 0);
    wait_value(&a, "ws/feed/state", "\"state\":\"closed\"", 1);
    v = get(&a, "ws/feed/state");
    assert_non_null(strstr(v, "\"reason\":\"closed\""));
    free(v);

    assert_int_equal(parley_store_unwatch_ws(a.st, ws), 0);
    assert_int_equal(parley_store_unwatch_ws(a.st, ws), PARLEY_EINVAL);
    wait_value(&a, "ws/feed/state", "{\"state\":\"idle\",\"attempt\":0}", 1);
    /* No more store updates once unwatched (the idle value's delivery
     * may still be on its way: let it land first). */
    usleep(QUIET_MS * 1000);
    int calls = rec_calls(&r);
    assert_int_equal(parley_ws_connect(ws), 0);
    usleep(QUIET_MS * 1000);
    assert_int_equal(rec_calls(&r), calls);
    /* Observed again, it starts from the ws's state, then follows it. */
    assert_int_equal(parley_store_watch_ws(a.st, "feed", ws), 0);
    wait_value(&a, "ws/feed/state", "\"state\":\"open\"", 1);
    /* Freed with the store while observed: detached, the ws lives on. */
    ts_close(&a);
    assert_int_equal(parley_ws_close(ws, 1000, NULL), 0);
    parley_ws_free(ws);
    rec_free(&r);
    srv_done(&s);
}

int main(void)
{
    parley_log_set(getenv("PARLEY_TEST_LOG") ? PARLEY_LOG_DEBUG : PARLEY_LOG_WARN, log_sink, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fd_burst),      cmocka_unit_test(test_loop_sequences),
        cmocka_unit_test(test_cache_reload),  cmocka_unit_test(test_bounds_and_keys),
        cmocka_unit_test(test_app_callbacks), cmocka_unit_test(test_ws_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
