/*
 * Presence in the messaging client (include/parley/chat.h) and the state
 * store's presence keys (include/parley/store.h), against the real
 * messaging service in the same process (helpers as in
 * test_chat_store.c): the answers of presence_set / _subscribe / _room,
 * argument checks, several devices of one user seen by a watcher, a burst
 * coalesced into one store callback, and the chosen status and the
 * subscriptions renewed after the server restarts.
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
    pthread_mutex_t mu;
    char seen[16384]; /* the application's on_presence calls, "user status devices text;" */
    int nseen;
} tstore;

static void app_presence(parley_chat *c, const parley_chat_presence *p, void *user)
{
    (void)c;
    tstore *t = user;
    static const char *const names[] = {"offline", "busy", "away", "online"};
    pthread_mutex_lock(&t->mu);
    size_t o = strlen(t->seen);
    snprintf(t->seen + o, sizeof t->seen - o, "%s %s %u %s;", p->user, names[p->status], p->devices,
             p->text);
    t->nseen++;
    pthread_mutex_unlock(&t->mu);
}

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
    t->co.on_presence = app_presence;
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

/* ---- presence helpers ---- */

static parley_chat *chat_of(tstore *t)
{
    return parley_store_chat(t->st);
}

/* Waits until the application's on_presence calls of t include needle. */
static void wait_seen(tstore *t, const char *needle)
{
    uint64_t end = ptime_ms() + WAIT_MS;
    for (;;) {
        pthread_mutex_lock(&t->mu);
        bool ok = strstr(t->seen, needle) != NULL;
        pthread_mutex_unlock(&t->mu);
        if (ok) return;
        if (ptime_ms() >= end) fail_msg("%s: never saw \"%s\" in %s", t->user, needle, t->seen);
        usleep(5000);
    }
}

static void seen_reset(tstore *t)
{
    pthread_mutex_lock(&t->mu);
    t->seen[0] = 0;
    t->nseen = 0;
    pthread_mutex_unlock(&t->mu);
}

static int seen_count(tstore *t)
{
    pthread_mutex_lock(&t->mu);
    int n = t->nseen;
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* An answer to wait for (join_room, presence_room). */
typedef struct answer {
    pthread_mutex_t mu;
    bool done;
    int err;
    char code[32];
    char list[4096]; /* presence_room: "user status devices;" in order */
    size_t n;
} answer;

static void answer_init(answer *a)
{
    memset(a, 0, sizeof *a);
    pthread_mutex_init(&a->mu, NULL);
}

static void answer_wait(answer *a)
{
    uint64_t end = ptime_ms() + WAIT_MS;
    for (;;) {
        pthread_mutex_lock(&a->mu);
        bool done = a->done;
        pthread_mutex_unlock(&a->mu);
        if (done) return;
        if (ptime_ms() >= end) fail_msg("no answer");
        usleep(2000);
    }
}

static void on_join(parley_chat *c, int err, const parley_chat_error *e, const char *room,
                    const char *const *members, size_t n, void *user)
{
    (void)c;
    (void)room;
    (void)members;
    (void)n;
    answer *a = user;
    pthread_mutex_lock(&a->mu);
    a->err = err;
    if (e) snprintf(a->code, sizeof a->code, "%s", e->code);
    a->done = true;
    pthread_mutex_unlock(&a->mu);
}

static void join(tstore *t, const char *room)
{
    answer a;
    answer_init(&a);
    assert_int_equal(parley_chat_join(chat_of(t), room, on_join, &a), 0);
    answer_wait(&a);
    assert_int_equal(a.err, 0);
}

static void on_room_presence(parley_chat *c, int err, const parley_chat_error *e, const char *room,
                             const parley_chat_presence *list, size_t n, void *user)
{
    (void)c;
    static const char *const names[] = {"offline", "busy", "away", "online"};
    answer *a = user;
    pthread_mutex_lock(&a->mu);
    a->err = err;
    if (e) snprintf(a->code, sizeof a->code, "%s", e->code);
    snprintf(a->list, sizeof a->list, "%s:", room);
    for (size_t i = 0; i < n; i++) {
        size_t o = strlen(a->list);
        snprintf(a->list + o, sizeof a->list - o, "%s %s %u;", list[i].user, names[list[i].status],
                 list[i].devices);
    }
    a->n = n;
    a->done = true;
    pthread_mutex_unlock(&a->mu);
}

static void subscribe(tstore *t, const char *u1, const char *u2)
{
    const char *users[2] = {u1, u2};
    assert_int_equal(parley_chat_presence_subscribe(chat_of(t), users, u2 ? 2 : 1), 0);
}

#define UNKNOWN(u)                                                                                 \
    "{\"user\":\"" u "\",\"status\":\"offline\",\"text\":\"\",\"last_seen\":null,\"devices\":0}"

/* ---- 1. set, subscribe and room answers; argument checks ---- */

static void test_answers(void **state)
{
    (void)state;
    srv s;
    srv_init(&s);
    s.mo.presence_interval_ms = 0; /* every change at once */
    srv_start(&s);
    tstore alice, bob, carol;
    ts_init(&alice, "alice", &s);
    ts_init(&bob, "bob", &s);
    ts_init(&carol, "carol", &s);
    ts_open(&alice);
    ts_open(&bob);
    ts_open(&carol);
    wait_state(&alice, "online");
    wait_state(&bob, "online");
    wait_state(&carol, "online");

    /* Before anything is known: the protocol's object for an unknown id,
     * and "presence" lists nobody. */
    char *v = get(&bob, "presence/alice");
    assert_string_equal(v, UNKNOWN("alice"));
    free(v);
    v = get(&bob, "presence");
    assert_string_equal(v, "{}");
    free(v);

    /* The subscribe answer: one Presence per id, to on_presence and the
     * store. A user nobody used is offline with last_seen null. */
    subscribe(&bob, "alice", "nobody");
    wait_seen(&bob, "alice online 1 ;");
    wait_seen(&bob, "nobody offline 0 ;");
    wait_value(&bob, "presence/alice", "\"status\":\"online\"", 1);
    v = get(&bob, "presence/alice");
    assert_non_null(
        strstr(v, "{\"user\":\"alice\",\"status\":\"online\",\"text\":\"\",\"last_seen\":"));
    assert_non_null(strstr(v, ",\"devices\":1}"));
    assert_null(strstr(v, "null"));
    free(v);
    v = get(&bob, "presence/nobody");
    assert_string_equal(v, UNKNOWN("nobody"));
    free(v);
    v = get(&bob, "presence");
    assert_non_null(strstr(v, "{\"alice\":{\"user\":\"alice\",\"status\":\"online\""));
    assert_non_null(strstr(v, ",\"nobody\":" UNKNOWN("nobody") "}"));
    assert_null(strstr(v, "carol"));
    free(v);

    /* presence_set: alice's own aggregate in the answer; bob gets the
     * event (he subscribed). */
    assert_int_equal(
        parley_chat_presence_set(chat_of(&alice), PARLEY_PRESENCE_BUSY, "in a meeting"), 0);
    wait_seen(&alice, "alice busy 1 in a meeting;");
    wait_value(&alice, "presence/alice", "\"status\":\"busy\",\"text\":\"in a meeting\"", 1);
    wait_seen(&bob, "alice busy 1 in a meeting;");
    wait_value(&bob, "presence/alice", "\"status\":\"busy\",\"text\":\"in a meeting\"", 1);
    /* Carol shares no room with alice and did not subscribe: nothing. */
    usleep(QUIET_MS * 1000);
    assert_int_equal(seen_count(&carol), 0);

    /* NULL text keeps it; "" clears it. */
    assert_int_equal(parley_chat_presence_set(chat_of(&alice), PARLEY_PRESENCE_AWAY, NULL), 0);
    wait_value(&bob, "presence/alice", "\"status\":\"away\",\"text\":\"in a meeting\"", 1);
    assert_int_equal(parley_chat_presence_set(chat_of(&alice), PARLEY_PRESENCE_ONLINE, ""), 0);
    wait_value(&bob, "presence/alice", "\"status\":\"online\",\"text\":\"\"", 1);

    /* presence_room: every member in id order, also to on_presence. */
    join(&alice, "lobby");
    join(&bob, "lobby");
    assert_int_equal(parley_chat_presence_set(chat_of(&bob), PARLEY_PRESENCE_BUSY, NULL), 0);
    wait_seen(&bob, "bob busy 1 ;");
    answer a;
    answer_init(&a);
    seen_reset(&alice);
    assert_int_equal(parley_chat_presence_room(chat_of(&alice), "lobby", on_room_presence, &a), 0);
    answer_wait(&a);
    assert_int_equal(a.err, 0);
    assert_int_equal(a.n, 2);
    assert_string_equal(a.list, "lobby:alice online 1;bob busy 1;");
    wait_seen(&alice, "bob busy 1 ;");
    wait_value(&alice, "presence/bob", "\"status\":\"busy\"", 1);
    /* Room members hear each other's updates without subscribing. */
    assert_int_equal(parley_chat_presence_set(chat_of(&bob), PARLEY_PRESENCE_AWAY, "back soon"), 0);
    wait_value(&alice, "presence/bob", "\"status\":\"away\",\"text\":\"back soon\"", 1);

    /* Not a member: refused with the server's code, no list. */
    answer_init(&a);
    assert_int_equal(parley_chat_presence_room(chat_of(&carol), "lobby", on_room_presence, &a), 0);
    answer_wait(&a);
    assert_int_equal(a.err, PARLEY_EPROTO);
    assert_string_equal(a.code, "not_member");
    assert_int_equal(a.n, 0);

    /* Unsubscribed: bob hears no more of nobody's... and of alice only
     * through the room; after leaving it, nothing. */
    const char *users[2] = {"alice", "nobody"};
    assert_int_equal(parley_chat_presence_unsubscribe(chat_of(&bob), users, 2), 0);
    answer_init(&a);
    assert_int_equal(parley_chat_leave(chat_of(&bob), "lobby", on_join, &a), 0);
    answer_wait(&a);
    assert_int_equal(a.err, 0);
    usleep(QUIET_MS * 1000);
    seen_reset(&bob);
    assert_int_equal(parley_chat_presence_set(chat_of(&alice), PARLEY_PRESENCE_BUSY, "gone"), 0);
    wait_seen(&alice, "alice busy 1 gone;");
    usleep(QUIET_MS * 1000);
    assert_int_equal(seen_count(&bob), 0);
    wait_value(&bob, "presence/alice", "\"text\":\"\"", 1); /* the last known, kept */

    /* Argument checks: nothing reaches the server. */
    parley_chat *ac = chat_of(&alice);
    assert_int_equal(parley_chat_presence_set(ac, PARLEY_PRESENCE_OFFLINE, NULL), PARLEY_EINVAL);
    assert_int_equal(parley_chat_presence_set(ac, (parley_presence)7, NULL), PARLEY_EINVAL);
    char big[200];
    memset(big, 'x', 129);
    big[129] = 0;
    assert_int_equal(parley_chat_presence_set(ac, PARLEY_PRESENCE_BUSY, big), PARLEY_EINVAL);
    big[128] = 0; /* 128 bytes is the limit, and allowed */
    assert_int_equal(parley_chat_presence_set(ac, PARLEY_PRESENCE_BUSY, big), 0);
    assert_int_equal(parley_chat_presence_set(ac, PARLEY_PRESENCE_BUSY, "bell\x07"), PARLEY_EINVAL);
    assert_int_equal(parley_chat_presence_set(ac, PARLEY_PRESENCE_BUSY, "\xff"), PARLEY_EINVAL);
    assert_int_equal(parley_chat_presence_subscribe(ac, users, 0), PARLEY_EINVAL);
    const char *bad[2] = {"bob", "not valid"};
    assert_int_equal(parley_chat_presence_subscribe(ac, bad, 2), PARLEY_EINVAL);
    assert_int_equal(parley_chat_presence_unsubscribe(ac, bad, 2), PARLEY_EINVAL);
    assert_int_equal(parley_chat_presence_room(ac, "no room!", on_room_presence, &a),
                     PARLEY_EINVAL);
    /* The subscription limit (1000, the server's) is kept locally: a
     * request that would go over adds nothing. */
    static char names[1001][16];
    const char *many[1001];
    for (int i = 0; i < 1001; i++) {
        snprintf(names[i], sizeof names[i], "u%d", i);
        many[i] = names[i];
    }
    assert_int_equal(parley_chat_presence_subscribe(ac, many, 1001), PARLEY_EFULL);
    assert_int_equal(parley_chat_presence_subscribe(ac, many, 1000), 0); /* 10 requests */
    wait_seen(&alice, "u999 offline 0 ;");
    assert_int_equal(parley_chat_presence_subscribe(ac, many + 1000, 1), PARLEY_EFULL);
    assert_int_equal(parley_chat_presence_subscribe(ac, many + 5, 1), 0); /* had it */
    assert_int_equal(parley_chat_presence_unsubscribe(ac, many, 1), 0);
    assert_int_equal(parley_chat_presence_subscribe(ac, many + 1000, 1), 0);
    wait_seen(&alice, "u1000 offline 0 ;");
    /* Store keys: user ids are validated. */
    assert_null(parley_store_get(alice.st, "presence/", NULL));
    assert_null(parley_store_get(alice.st, "presence/a b", NULL));
    assert_int_equal(parley_store_watch(alice.st, "presence/", on_value, NULL), PARLEY_EINVAL);

    ts_close(&alice);
    ts_close(&bob);
    ts_close(&carol);
    srv_done(&s);
}

/* ---- 2. several devices of one user, seen by a watcher ---- */

static void test_devices(void **state)
{
    (void)state;
    srv s;
    srv_init(&s);
    s.mo.presence_interval_ms = 0;
    srv_start(&s);
    tstore phone, laptop, bob;
    ts_init(&phone, "alice", &s);
    ts_init(&laptop, "alice", &s);
    ts_init(&bob, "bob", &s);
    ts_open(&bob);
    wait_state(&bob, "online");
    rec w;
    rec_init(&w);
    assert_true(parley_store_watch(bob.st, "presence/alice", on_value, &w) > 0);
    assert_int_equal(rec_settle(&w, 1), 1);
    assert_string_equal(w.last, UNKNOWN("alice"));
    subscribe(&bob, "alice", NULL);
    wait_seen(&bob, "alice offline 0 ;");
    assert_int_equal(rec_settle(&w, 1), 1); /* the same value: no call */

    ts_open(&phone);
    wait_value(&bob, "presence/alice", "\"status\":\"online\",\"text\":\"\"", 1);
    wait_value(&bob, "presence/alice", "\"devices\":1}", 1);
    assert_int_equal(parley_chat_presence_set(chat_of(&phone), PARLEY_PRESENCE_BUSY, NULL), 0);
    wait_value(&bob, "presence/alice", "\"status\":\"busy\"", 1);
    /* A second device online: online wins over busy. */
    ts_open(&laptop);
    wait_value(&bob, "presence/alice", "\"status\":\"online\"", 1);
    wait_value(&bob, "presence/alice", "\"devices\":2}", 1);
    /* away + busy: away. The text belongs to the user, from any device. */
    assert_int_equal(parley_chat_presence_set(chat_of(&laptop), PARLEY_PRESENCE_AWAY, "lunch"), 0);
    wait_value(&bob, "presence/alice", "\"status\":\"away\",\"text\":\"lunch\"", 1);
    wait_seen(&phone, "alice away 2 lunch;"); /* her other device hears it */
    /* The laptop goes: busy, one device. */
    ts_close(&laptop);
    wait_value(&bob, "presence/alice", "\"status\":\"busy\",\"text\":\"lunch\"", 1);
    wait_value(&bob, "presence/alice", "\"devices\":1}", 1);
    /* The last device goes: offline, last_seen a time, the text stays. */
    ts_close(&phone);
    wait_value(&bob, "presence/alice", "\"status\":\"offline\",\"text\":\"lunch\"", 1);
    wait_value(&bob, "presence/alice", "\"devices\":0}", 1);
    char *v = get(&bob, "presence/alice");
    assert_null(strstr(v, "null"));
    free(v);

    /* The watcher saw each state (one server update per loop iteration,
     * each delivered before the next came), ending offline. */
    int n = rec_settle(&w, 7);
    assert_true(n >= 7);
    char all[8192];
    rec_joined(&w, all, sizeof all);
    const char *steps[] = {UNKNOWN("alice"),
                           "\"status\":\"online\",\"text\":\"\"",
                           "\"status\":\"busy\",\"text\":\"\"",
                           "\"status\":\"online\",\"text\":\"\"",
                           "\"status\":\"away\",\"text\":\"lunch\"",
                           "\"status\":\"busy\",\"text\":\"lunch\"",
                           "\"status\":\"offline\",\"text\":\"lunch\""};
    const char *p = all;
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        p = strstr(p, steps[i]);
        if (!p) fail_msg("step %zu (%s) missing in order: %s", i, steps[i], all);
        p += strlen(steps[i]);
    }
    assert_non_null(strstr(w.last, "\"status\":\"offline\""));

    ts_close(&bob);
    rec_free(&w);
    srv_done(&s);
}

/* ---- 3. a burst: one store callback per key with the final state ---- */

static void test_burst(void **state)
{
    (void)state;
    srv s;
    srv_init(&s);
    s.mo.presence_interval_ms = 300; /* the server coalesces too */
    srv_start(&s);
    tstore alice, bob;
    ts_init(&alice, "alice", &s);
    ts_init(&bob, "bob", &s);
    bob.so.dispatch_fd = 1;
    ts_open(&alice);
    ts_open(&bob);
    wait_state(&alice, "online");
    wait_state(&bob, "online");
    subscribe(&bob, "alice", "carol");
    wait_value(&bob, "presence/alice", "\"status\":\"online\"", 1);
    wait_value(&bob, "presence/carol", "\"devices\":0", 1);

    rec one, all;
    rec_init(&one);
    rec_init(&all);
    assert_true(parley_store_watch(bob.st, "presence/alice", on_value, &one) > 0);
    assert_true(parley_store_watch(bob.st, "presence", on_value, &all) > 0);
    assert_int_equal(dispatch_once(bob.st, NULL), 2);
    assert_false(fd_readable(bob.st));

    /* 30 changes as fast as the client sends them. */
    for (int i = 1; i <= 30; i++) {
        char text[24];
        snprintf(text, sizeof text, "step %d", i);
        assert_int_equal(
            parley_chat_presence_set(chat_of(&alice),
                                     i % 2 ? PARLEY_PRESENCE_BUSY : PARLEY_PRESENCE_AWAY, text),
            0);
    }
    wait_seen(&alice, "alice away 1 step 30;");
    wait_value(&bob, "presence/alice", "\"status\":\"away\",\"text\":\"step 30\"", 1);
    usleep(500 * 1000); /* past the server's window: nothing more comes */
    assert_true(fd_readable(bob.st));
    /* The server sent at most the first change and the final state. */
    assert_true(seen_count(&bob) - 2 <= 2);
    assert_int_equal(one.calls, 1);
    assert_int_equal(dispatch_once(bob.st, NULL), 2);
    assert_int_equal(one.calls, 2);
    assert_int_equal(all.calls, 2);
    assert_non_null(strstr(one.last, "\"status\":\"away\",\"text\":\"step 30\""));
    assert_non_null(strstr(
        all.last, "{\"alice\":{\"user\":\"alice\",\"status\":\"away\",\"text\":\"step 30\""));
    assert_non_null(strstr(all.last, ",\"carol\":" UNKNOWN("carol") "}"));
    assert_false(fd_readable(bob.st));
    assert_int_equal(parley_store_dispatch(bob.st), 0);

    ts_close(&alice);
    ts_close(&bob);
    rec_free(&one);
    rec_free(&all);
    srv_done(&s);
}

/* ---- 4. the chosen status and the subscriptions after a restart ---- */

static void test_reconnect(void **state)
{
    (void)state;
    srv s;
    srv_init(&s);
    s.mo.presence_interval_ms = 0;
    srv_start(&s);
    tstore alice, laptop, bob;
    ts_init(&alice, "alice", &s);
    ts_init(&laptop, "alice", &s);
    ts_init(&bob, "bob", &s);
    ts_open(&alice);
    ts_open(&bob);
    wait_state(&alice, "online");
    wait_state(&bob, "online");
    assert_int_equal(parley_chat_presence_set(chat_of(&alice), PARLEY_PRESENCE_BUSY, "focus"), 0);
    wait_seen(&alice, "alice busy 1 focus;");
    subscribe(&bob, "alice", NULL);
    wait_value(&bob, "presence/alice", "\"status\":\"busy\",\"text\":\"focus\"", 1);

    /* The server restarts: its presence state is gone. Both clients come
     * back; alice says busy again and bob subscribes again by themselves. */
    srv_stop(&s);
    wait_state(&alice, "offline");
    wait_state(&bob, "offline");
    wait_value(&bob, "presence/alice", "\"status\":\"busy\",\"text\":\"focus\"", 1); /* kept */
    seen_reset(&bob);
    srv_start(&s);
    wait_state(&alice, "online");
    wait_state(&bob, "online");
    wait_seen(&bob, "alice busy 1 focus;");
    wait_value(&bob, "presence/alice", "\"status\":\"busy\",\"text\":\"focus\"", 1);
    wait_value(&bob, "presence/alice", "\"devices\":1}", 1);
    /* A newcomer asking now gets busy too: the server has it. */
    tstore carol;
    ts_init(&carol, "carol", &s);
    ts_open(&carol);
    wait_state(&carol, "online");
    subscribe(&carol, "alice", NULL);
    wait_seen(&carol, "alice busy 1 focus;");

    /* Chosen while disconnected: sent (with its text) on reconnection. */
    srv_stop(&s);
    wait_state(&alice, "offline");
    assert_int_equal(parley_chat_presence_set(chat_of(&alice), PARLEY_PRESENCE_AWAY, "later"), 0);
    srv_start(&s);
    wait_value(&bob, "presence/alice", "\"status\":\"away\",\"text\":\"later\"", 1);

    /* An acknowledged text is not sent again: another device changed it
     * meanwhile, and alice's reconnection must not undo that. */
    ts_open(&laptop);
    wait_state(&laptop, "online");
    assert_int_equal(parley_chat_presence_set(chat_of(&laptop), PARLEY_PRESENCE_BUSY, "laptop"), 0);
    wait_value(&bob, "presence/alice", "\"status\":\"away\",\"text\":\"laptop\"", 1);
    assert_int_equal(parley_chat_close(chat_of(&alice)), 0);
    wait_value(&bob, "presence/alice", "\"status\":\"busy\",\"text\":\"laptop\"", 1);
    assert_int_equal(parley_chat_connect(chat_of(&alice)), 0);
    wait_state(&alice, "online");
    wait_value(&bob, "presence/alice", "\"status\":\"away\",\"text\":\"laptop\"", 1);
    wait_value(&bob, "presence/alice", "\"devices\":2}", 1);
    usleep(QUIET_MS * 1000);
    wait_value(&bob, "presence/alice", "\"status\":\"away\",\"text\":\"laptop\"", 1);

    ts_close(&alice);
    ts_close(&laptop);
    ts_close(&bob);
    ts_close(&carol);
    srv_done(&s);
}

int main(void)
{
    parley_log_set(getenv("PARLEY_TEST_LOG") ? PARLEY_LOG_DEBUG : PARLEY_LOG_WARN, log_sink, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answers),
        cmocka_unit_test(test_devices),
        cmocka_unit_test(test_burst),
        cmocka_unit_test(test_reconnect),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
