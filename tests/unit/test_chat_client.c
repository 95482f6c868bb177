/*
 * The messaging client (include/parley/chat.h) against the real messaging
 * service (src/services/server/messaging.c) on the library's own server, in the
 * same process: the server on a loop thread of its own, every parley_chat
 * on its own loop thread, as applications use them. Callbacks write lines
 * to a per-client log (under a mutex); the test thread waits on the log
 * with bounded timeouts and asserts exact sequences and counts.
 *
 * PARLEY_TEST_LOG=1 prints every line as it is logged.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <signal.h>
#include <dirent.h>
#include <sys/stat.h>
#include <openssl/evp.h>

#include "client_helpers.h"
#include "parley/chat.h"
#include "services/jwt.h"
#include "services/messaging.h"

#define WAIT_MS  5000 /* upper bound for anything that should happen "soon" */
#define QUIET_MS 200  /* how long nothing more must happen for "exactly once" */

/* ---- the log ---- */

typedef struct tlog {
    pthread_mutex_t mu;
    char **lines;
    int n, cap;
    const char *name;
} tlog;

static void tlog_init(tlog *l, const char *name)
{
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
    l->name = name;
}

static void tlog_free(tlog *l)
{
    for (int i = 0; i < l->n; i++) free(l->lines[i]);
    free(l->lines);
    pthread_mutex_destroy(&l->mu);
}

static void tlogf(tlog *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tlogf(tlog *l, const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (getenv("PARLEY_TEST_LOG")) fprintf(stderr, "LOG %s: %s\n", l->name, buf);
    pthread_mutex_lock(&l->mu);
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->lines = realloc(l->lines, (size_t)l->cap * sizeof *l->lines);
    }
    l->lines[l->n++] = strdup(buf);
    pthread_mutex_unlock(&l->mu);
}

/* The number of lines so far: where to wait from for what comes next. */
static int tlog_len(tlog *l)
{
    pthread_mutex_lock(&l->mu);
    int n = l->n;
    pthread_mutex_unlock(&l->mu);
    return n;
}

static int tlog_count(tlog *l, const char *prefix)
{
    size_t plen = strlen(prefix);
    int n = 0;
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n; i++)
        if (!strncmp(l->lines[i], prefix, plen)) n++;
    pthread_mutex_unlock(&l->mu);
    return n;
}

/* Waits up to ms for at least n lines starting with prefix; the count. */
static int tlog_wait_count(tlog *l, const char *prefix, int n, int ms)
{
    uint64_t end = ptime_ms() + (uint64_t)ms;
    int k;
    while ((k = tlog_count(l, prefix)) < n && ptime_ms() < end) usleep(2000);
    return k;
}

/* The first line at or after *from starting with prefix, waiting up to ms;
 * copied to out. -1 when none; *from moves past it. */
static int tlog_wait(tlog *l, int *from, const char *prefix, int ms, char *out, size_t cap)
{
    uint64_t end = ptime_ms() + (uint64_t)ms;
    size_t plen = strlen(prefix);
    for (;;) {
        pthread_mutex_lock(&l->mu);
        for (int i = *from; i < l->n; i++) {
            if (!strncmp(l->lines[i], prefix, plen)) {
                if (out) snprintf(out, cap, "%s", l->lines[i]);
                pthread_mutex_unlock(&l->mu);
                *from = i + 1;
                return i;
            }
        }
        pthread_mutex_unlock(&l->mu);
        if (ptime_ms() >= end) return -1;
        usleep(2000);
    }
}

/* Every line starting with prefix, in order, joined with '|' into out. */
static void tlog_join(tlog *l, const char *prefix, char *out, size_t cap)
{
    size_t plen = strlen(prefix), o = 0;
    out[0] = 0;
    pthread_mutex_lock(&l->mu);
    for (int i = 0; i < l->n; i++) {
        if (strncmp(l->lines[i], prefix, plen) != 0) continue;
        int w = snprintf(out + o, cap - o, "%s%s", o ? "|" : "", l->lines[i] + plen);
        if (w < 0 || (size_t)w >= cap - o) break;
        o += (size_t)w;
    }
    pthread_mutex_unlock(&l->mu);
}

#define WAIT(l, from, prefix, ms)                                                                  \
    do {                                                                                           \
        if (tlog_wait((l), (from), (prefix), (ms), NULL, 0) < 0)                                   \
            fail_msg("%s: no \"%s\" within %d ms", (l)->name, (prefix), (ms));                     \
    } while (0)
#define WAITL(l, from, prefix, ms, line)                                                           \
    do {                                                                                           \
        if (tlog_wait((l), (from), (prefix), (ms), (line), sizeof(line)) < 0)                      \
            fail_msg("%s: no \"%s\" within %d ms", (l)->name, (prefix), (ms));                     \
    } while (0)
/* Waits for exactly n lines: at least n within WAIT_MS, and no more after
 * QUIET_MS of quiet. */
#define EXACTLY(l, prefix, n)                                                                      \
    do {                                                                                           \
        int got_ = tlog_wait_count((l), (prefix), (n), WAIT_MS);                                   \
        if (got_ >= (n)) {                                                                         \
            usleep(QUIET_MS * 1000);                                                               \
            got_ = tlog_count((l), (prefix));                                                      \
        }                                                                                          \
        if (got_ != (n)) fail_msg("%s: %d \"%s\", want %d", (l)->name, got_, (prefix), (n));       \
    } while (0)

/* ---- the library's log ---- */

/* Warnings of the client ("chat: ...") mean it saw something it should
 * not have (a malformed answer, a refused sync): counted, and every test
 * ends with none. The server's reminders about --dev-auth are dropped. */
static atomic_int chat_warnings;

static void log_sink(parley_log_level level, const char *msg, void *user)
{
    (void)user;
    if (!strncmp(msg, "chat:", 5)) atomic_fetch_add(&chat_warnings, 1);
    if (level < PARLEY_LOG_WARN && !getenv("PARLEY_TEST_LOG")) return;
    if (!getenv("PARLEY_TEST_LOG") && strstr(msg, "INSECURE --dev-auth")) return;
    if (!getenv("PARLEY_TEST_LOG") && strstr(msg, "no --jwt-secret")) return;
    fprintf(stderr, "log: %s\n", msg);
}

/* ---- the server: messaging on a parley_server on its own thread ---- */

typedef struct srv {
    th_server th; /* first: the setup callback gets it */
    msg_service_opts mo;
    msg_service *svc;
    int svc_rc;
    char dir[64];
    uint8_t secret[32];
    unsigned port;
} srv;

static void srv_setup(th_server *t, void *user)
{
    (void)t;
    srv *s = user;
    s->svc_rc = msg_service_new(s->th.srv, &s->mo, &s->svc);
}

/* mo options: dev_auth on, a small typing throttle, the data directory. */
static void srv_init(srv *s, bool jwt)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/parley-chat-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    msg_service_opts_init(&s->mo);
    mquota_opts_unlimited(&s->mo.quota); /* functional tests: bursts */
    s->mo.data_dir = s->dir;
    s->mo.typing_throttle_ms = 20;
    if (jwt) {
        for (size_t i = 0; i < sizeof s->secret; i++) s->secret[i] = (uint8_t)(i * 7 + 3);
        s->mo.jwt_secret = s->secret;
        s->mo.jwt_secret_len = sizeof s->secret;
    } else {
        s->mo.dev_auth = true;
    }
}

/* Starts (again) on s->port (0 the first time: th_low_port). */
static void srv_start(srv *s)
{
    if (s->port == 0) s->port = th_low_port();
    parley_server_opts so;
    parley_server_opts_init(&so);
    /* Heartbeats well above a loaded sanitizer run's hiccups: a server
     * restart is noticed from the closed TCP connection, not from pings. */
    so.ping_interval_ms = 2000;
    so.ping_timeout_ms = 2000;
    unsigned port = s->port;
    assert_int_equal(th_server_start(&s->th, &so, 0, srv_setup, s, port), 0);
    assert_int_equal(s->svc_rc, 0);
    assert_non_null(s->svc);
    s->port = s->th.port;
    assert_true(port == 0 || s->port == port);
}

static void srv_down(parley_server *ps, void *user)
{
    (void)ps;
    srv *s = user;
    /* As parleyd: every socket is gone, the service commits and goes, and
     * only then is the server freed. */
    msg_service_free(s->svc);
    s->svc = NULL;
    atomic_store(&s->th.down, true);
}

static void srv_shutdown_call(void *arg)
{
    srv *s = arg;
    if (s->th.echo) engine_free(s->th.echo);
    s->th.echo = NULL;
    parley_server_shutdown(s->th.srv, srv_down, s);
}

static void srv_stop(srv *s)
{
    if (!s->th.loop) return;
    ploop_call(s->th.loop, srv_shutdown_call, s);
    for (int i = 0; i < 500 && !atomic_load(&s->th.down); i++) usleep(10000);
    assert_true(atomic_load(&s->th.down));
    parley_loop_join(s->th.loop);
    parley_server_free(s->th.srv);
    parley_loop_free(s->th.loop);
    s->th.loop = NULL;
}

/* Removes a directory tree (the data directory: files and media/). */
static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char path[512];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            struct stat st;
            if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
                rm_tree(path);
            else
                unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

static void srv_done(srv *s)
{
    srv_stop(s);
    rm_tree(s->dir);
    assert_int_equal(atomic_load(&chat_warnings), 0);
}

typedef struct stats_arg {
    srv *s;
    msg_service_stats st;
} stats_arg;

static void stats_call(void *arg)
{
    stats_arg *a = arg;
    msg_service_stats_get(a->s->svc, &a->st);
}

static msg_service_stats srv_stats(srv *s)
{
    stats_arg a = {.s = s};
    assert_int_equal(ploop_call(s->th.loop, stats_call, &a), 0);
    return a.st;
}

/* ---- a chat client and what its callbacks saw ---- */

typedef struct tc {
    tlog log;
    parley_chat *chat;
    char user[32];
    char url[64];
    const char *token;      /* the JWT to hand out, or NULL */
    const struct srv *mint; /* or a fresh one from this server's secret */
    atomic_int mints;
    parley_chat_opts o;
} tc;

static const char *state_name(parley_chat_state s)
{
    switch (s) {
    case PARLEY_CHAT_OFFLINE:
        return "OFFLINE";
    case PARLEY_CHAT_CONNECTING:
        return "CONNECTING";
    case PARLEY_CHAT_SYNCING:
        return "SYNCING";
    case PARLEY_CHAT_ONLINE:
        return "ONLINE";
    case PARLEY_CHAT_REFUSED:
        return "REFUSED";
    }
    return "?";
}

static const char *status_name(parley_msg_status s)
{
    switch (s) {
    case PARLEY_MSG_SENDING:
        return "SENDING";
    case PARLEY_MSG_SENT:
        return "SENT";
    case PARLEY_MSG_DELIVERED:
        return "DELIVERED";
    case PARLEY_MSG_READ:
        return "READ";
    case PARLEY_MSG_FAILED:
        return "FAILED";
    }
    return "?";
}

static void cb_state(parley_chat *c, parley_chat_state st, const parley_chat_error *why, void *user)
{
    (void)c;
    tc *t = user;
    tlogf(&t->log, "state %s %s", state_name(st), why ? why->code : "-");
}

static void cb_message(parley_chat *c, const parley_chat_message *m, void *user)
{
    (void)c;
    tc *t = user;
    tlogf(&t->log, "msg %s %lld %s %s mine=%d %s", m->conversation, (long long)m->seq, m->from,
          m->type, m->mine, m->text);
    tlogf(&t->log, "cid %s %lld %s", m->conversation, (long long)m->seq, m->client_id);
    tlogf(&t->log, "content %s %lld %.*s", m->conversation, (long long)m->seq, (int)m->content_len,
          m->content_json);
}

/* "status <client id> <STATUS> <conversation> <seq> dup=<d> <code> <field>" */
static void cb_status(parley_chat *c, const parley_chat_status *st, void *user)
{
    (void)c;
    tc *t = user;
    tlogf(&t->log, "status %s %s %s %lld dup=%d %s %s", st->client_id, status_name(st->status),
          st->conversation[0] ? st->conversation : "-", (long long)st->seq, st->duplicate,
          st->error ? st->error->code : "-",
          st->error && st->error->field[0] ? st->error->field : "-");
    /* The id is set from SENT on. */
    if (st->status >= PARLEY_MSG_SENT && st->status <= PARLEY_MSG_READ && st->id <= 0)
        tlogf(&t->log, "BAD id %lld for %s", (long long)st->id, st->client_id);
}

static void cb_receipt(parley_chat *c, const char *conv, const char *u, int64_t d, int64_t r,
                       void *user)
{
    (void)c;
    tc *t = user;
    tlogf(&t->log, "receipt %s %s %lld %lld", conv, u, (long long)d, (long long)r);
}

static void cb_typing(parley_chat *c, const char *conv, const char *u, int typing, void *user)
{
    (void)c;
    tc *t = user;
    tlogf(&t->log, "typing %s %s %d", conv, u, typing);
}

static void cb_member(parley_chat *c, const char *room, const char *u, int joined, void *user)
{
    (void)c;
    tc *t = user;
    tlogf(&t->log, "member %s %s %d", room, u, joined);
}

static char *make_token_at(const srv *s, const char *sub, double exp_s, bool bad_sig);

static char *cb_token(parley_chat *c, void *user)
{
    (void)c;
    tc *t = user;
    if (t->mint) {
        /* The first token runs out 600 ms from now; the next ones last. */
        int n = atomic_fetch_add(&t->mints, 1);
        tlogf(&t->log, "token %d", n + 1);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double now = (double)ts.tv_sec + ts.tv_nsec / 1e9;
        return make_token_at(t->mint, t->user, n == 0 ? now + 0.6 : now + 3600, false);
    }
    return t->token ? strdup(t->token) : NULL;
}

/* Options for user on the server's port; the caller may change them
 * before tc_open. */
static void tc_init(tc *t, const char *user, const srv *s)
{
    memset(t, 0, sizeof *t);
    snprintf(t->user, sizeof t->user, "%s", user);
    tlog_init(&t->log, t->user);
    snprintf(t->url, sizeof t->url, "http://127.0.0.1:%u", s->port);
    parley_chat_opts_init(&t->o);
    t->o.url = t->url;
    t->o.user_id = t->user;
    t->o.dev_auth = 1;
    t->o.reconnection_delay_ms = 50;
    t->o.reconnection_delay_max_ms = 200;
    t->o.on_state = cb_state;
    t->o.on_message = cb_message;
    t->o.on_status = cb_status;
    t->o.on_receipt = cb_receipt;
    t->o.on_typing = cb_typing;
    t->o.on_member = cb_member;
    t->o.user = t;
}

static void tc_open(tc *t)
{
    assert_int_equal(parley_chat_new(&t->o, &t->chat), 0);
    assert_non_null(t->chat);
}

/* Opens and waits until caught up. */
static void tc_online(tc *t)
{
    int at = tlog_len(&t->log);
    tc_open(t);
    WAIT(&t->log, &at, "state ONLINE", WAIT_MS);
    assert_int_equal(parley_chat_get_state(t->chat), PARLEY_CHAT_ONLINE);
}

static void tc_close(tc *t)
{
    parley_chat_free(t->chat);
    t->chat = NULL;
}

static void tc_done(tc *t)
{
    tc_close(t);
    assert_int_equal(tlog_count(&t->log, "BAD "), 0);
    tlog_free(&t->log);
}

/* The chat's Socket.IO socket (the client returns the existing one). */
static parley_sock *tc_sock(tc *t)
{
    parley_sock *s = parley_client_socket(parley_chat_client(t->chat), "/chat", NULL);
    assert_non_null(s);
    return s;
}

static void send_text(tc *t, const char *to, const char *text, char id[37])
{
    assert_int_equal(parley_chat_send_text(t->chat, to, text, id), 0);
    assert_int_equal(strlen(id), 36);
}

/* The status steps of one message, "SENDING|SENT ...|...". */
static void steps(tc *t, const char *id, char *out, size_t cap)
{
    char prefix[256];
    snprintf(prefix, sizeof prefix, "status %s ", id);
    tlog_join(&t->log, prefix, out, cap);
}

static void wait_status(tc *t, const char *id, const char *status)
{
    char prefix[512];
    snprintf(prefix, sizeof prefix, "status %s %s", id, status);
    if (tlog_wait_count(&t->log, prefix, 1, WAIT_MS) < 1) {
        char all[1024];
        steps(t, id, all, sizeof all);
        fail_msg("%s: %s never became %s (steps: %s)", t->log.name, id, status, all);
    }
}

/* ---- requests with answers, waited for on the test thread ---- */

typedef struct answer {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    int err;
    char code[32], field[48];
    /* history */
    int n;
    int64_t seqs[256];
    char texts[256][64];
    int more;
    /* rooms */
    char members[512];
    /* upload */
    char media[80], mime[64];
    int64_t size;
} answer;

static void answer_init(answer *a)
{
    memset(a, 0, sizeof *a);
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
}

static void answer_free(answer *a)
{
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
}

static void answer_set(answer *a, int err, const parley_chat_error *e)
{
    a->err = err;
    if (e) {
        snprintf(a->code, sizeof a->code, "%s", e->code);
        snprintf(a->field, sizeof a->field, "%s", e->field);
    }
}

static void answer_done(answer *a)
{
    a->done = true;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

static void answer_wait(answer *a)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&a->mu);
    while (!a->done && pthread_cond_timedwait(&a->cv, &a->mu, &ts) == 0) {
    }
    bool done = a->done;
    pthread_mutex_unlock(&a->mu);
    if (!done) fail_msg("no answer within %d ms", WAIT_MS);
}

static void cb_history(parley_chat *c, int err, const parley_chat_error *e,
                       const parley_chat_message *msgs, size_t n, int more, void *user)
{
    (void)c;
    answer *a = user;
    pthread_mutex_lock(&a->mu);
    answer_set(a, err, e);
    for (size_t i = 0; i < n && i < 256; i++) {
        a->seqs[i] = msgs[i].seq;
        snprintf(a->texts[i], sizeof a->texts[i], "%s", msgs[i].text);
    }
    a->n = (int)n;
    a->more = more;
    answer_done(a);
}

static void cb_room(parley_chat *c, int err, const parley_chat_error *e, const char *room,
                    const char *const *members, size_t n, void *user)
{
    (void)c;
    (void)room;
    answer *a = user;
    pthread_mutex_lock(&a->mu);
    answer_set(a, err, e);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int w = snprintf(a->members + o, sizeof a->members - o, "%s%s", i ? "," : "", members[i]);
        if (w > 0 && (size_t)w < sizeof a->members - o) o += (size_t)w;
    }
    a->n = (int)n;
    answer_done(a);
}

static void cb_upload(parley_chat *c, int err, const parley_chat_error *e, const char *media_id,
                      const char *mime, int64_t size, void *user)
{
    (void)c;
    answer *a = user;
    pthread_mutex_lock(&a->mu);
    answer_set(a, err, e);
    snprintf(a->media, sizeof a->media, "%s", media_id ? media_id : "");
    snprintf(a->mime, sizeof a->mime, "%s", mime ? mime : "");
    a->size = size;
    answer_done(a);
}

static void history(tc *t, const char *conv, int64_t before, unsigned limit, answer *a)
{
    answer_init(a);
    assert_int_equal(parley_chat_history(t->chat, conv, before, limit, cb_history, a), 0);
    answer_wait(a);
}

static void join(tc *t, const char *room, answer *a)
{
    answer_init(a);
    assert_int_equal(parley_chat_join(t->chat, room, cb_room, a), 0);
    answer_wait(a);
}

/* ---- 1. a direct message through every status ---- */

static void test_dm_statuses(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_online(&alice);
    tc_online(&bob);

    char id[37], want[256], got[1024];
    send_text(&alice, "bob", "hello bob", id);
    wait_status(&alice, id, "DELIVERED");
    EXACTLY(&bob.log, "msg ", 1);
    int at = 0;
    char line[512];
    WAITL(&bob.log, &at, "msg ", 0, line);
    assert_string_equal(line, "msg dm:alice:bob 1 alice text mine=0 hello bob");
    snprintf(want, sizeof want, "cid dm:alice:bob 1 %s", id);
    at = 0;
    WAITL(&bob.log, &at, "cid ", 0, line);
    assert_string_equal(line, want);
    at = 0;
    WAITL(&bob.log, &at, "content ", 0, line);
    assert_string_equal(line, "content dm:alice:bob 1 {\"text\":\"hello bob\"}");

    assert_int_equal(parley_chat_mark_read(bob.chat, "dm:alice:bob", 1), 0);
    wait_status(&alice, id, "READ");
    usleep(QUIET_MS * 1000);
    steps(&alice, id, got, sizeof got);
    assert_string_equal(got, "SENDING - 0 dup=0 - -|SENT dm:alice:bob 1 dup=0 - -|"
                             "DELIVERED dm:alice:bob 1 dup=0 - -|READ dm:alice:bob 1 dup=0 - -");
    /* The receipts alice saw: bob's watermarks. */
    assert_true(tlog_count(&alice.log, "receipt dm:alice:bob bob 1 1") >= 1);
    assert_int_equal(tlog_count(&alice.log, "receipt dm:alice:bob alice"), 0);
    assert_int_equal(parley_chat_last_seq(alice.chat, "dm:alice:bob"), 1);
    assert_int_equal(parley_chat_last_seq(bob.chat, "dm:alice:bob"), 1);
    /* alice's own message is not handed to her as received. */
    assert_int_equal(tlog_count(&alice.log, "msg "), 0);
    /* Bob sent nothing: no status of his. */
    assert_int_equal(tlog_count(&bob.log, "status "), 0);

    /* A reply the other way round. */
    char id2[37];
    send_text(&bob, "alice", "hi alice", id2);
    wait_status(&bob, id2, "DELIVERED");
    EXACTLY(&alice.log, "msg ", 1);
    at = 0;
    WAITL(&alice.log, &at, "msg ", 0, line);
    assert_string_equal(line, "msg dm:alice:bob 2 bob text mine=0 hi alice");

    /* Other content: a location (its label is the text) and text that
     * needs escaping both ways. */
    parley_chat_send_opts so;
    parley_chat_send_opts_init(&so);
    so.to = "bob";
    so.type = "location";
    so.content_json = "{\"lat\":48.8566,\"lng\":2.3522,\"label\":\"Paris\"}";
    char id3[37], id4[37];
    parley_chat_error err;
    assert_int_equal(parley_chat_send(alice.chat, &so, id3, &err), 0);
    wait_status(&alice, id3, "SENT dm:alice:bob 3 dup=0");
    send_text(&alice, "bob", "caf\xc3\xa9 \"quoted\"\tand\\back", id4);
    wait_status(&alice, id4, "SENT dm:alice:bob 4 dup=0");
    EXACTLY(&bob.log, "msg ", 3);
    at = 0;
    WAIT(&bob.log, &at, "msg dm:alice:bob 3 alice location mine=0 Paris", 0);
    WAIT(&bob.log, &at, "msg dm:alice:bob 4 alice text mine=0 caf\xc3\xa9 \"quoted\"\tand\\back",
         0);
    at = 0;
    WAIT(&bob.log, &at,
         "content dm:alice:bob 3 {\"lat\":48.8566,\"lng\":2.3522,\"label\":\"Paris\"}", 0);

    char dm[133];
    assert_int_equal(parley_chat_dm_id("bob", "alice", dm), 0);
    assert_string_equal(dm, "dm:alice:bob");
    assert_int_equal(parley_chat_dm_id("bob", "bob", dm), PARLEY_EINVAL);

    tc_done(&alice);
    tc_done(&bob);
    msg_service_stats st = srv_stats(&s);
    assert_int_equal(st.messages, 4);
    assert_int_equal(st.duplicates, 0);
    srv_done(&s);
}

/* ---- 1b. receipts by hand (auto_delivered off) ---- */

/* A message's own on_status: counts its steps in *user. */
static void cb_own_status(parley_chat *c, const parley_chat_status *st, void *user)
{
    (void)c;
    atomic_int *steps_seen = user;
    /* Each step once, in order: SENDING=1, SENT=2, DELIVERED=3, READ=4. */
    if ((int)st->status == atomic_load(steps_seen) + 1)
        atomic_fetch_add(steps_seen, 1);
    else
        atomic_store(steps_seen, -100);
}

static void test_manual_receipts(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    bob.o.auto_delivered = 0;
    tc_online(&alice);
    tc_online(&bob);

    char ids[3][37];
    for (int i = 0; i < 2; i++) send_text(&alice, "bob", "by hand", ids[i]);
    /* The third with a callback of its own, besides opts.on_status. */
    atomic_int own = 0;
    parley_chat_send_opts so;
    parley_chat_send_opts_init(&so);
    so.to = "bob";
    so.text = "by hand";
    so.on_status = cb_own_status;
    so.user = &own;
    parley_chat_error err;
    assert_int_equal(parley_chat_send(alice.chat, &so, ids[2], &err), 0);
    /* SENDING, before the call returned (SENT may follow at once: the
     * loop thread does not wait for this one to look). */
    assert_true(atomic_load(&own) >= 1);
    for (int i = 0; i < 3; i++) wait_status(&alice, ids[i], "SENT");
    EXACTLY(&bob.log, "msg ", 3);
    /* Received, but bob's client says nothing by itself. */
    EXACTLY(&alice.log, "status ", 6);

    assert_int_equal(parley_chat_mark_delivered(bob.chat, "dm:alice:bob", 2), 0);
    wait_status(&alice, ids[1], "DELIVERED");
    EXACTLY(&alice.log, "status ", 8);
    /* Read up to 3 without delivered first: read implies delivered, each
     * step reported once, in order. */
    assert_int_equal(parley_chat_mark_read(bob.chat, "dm:alice:bob", 3), 0);
    wait_status(&alice, ids[2], "READ");
    EXACTLY(&alice.log, "status ", 12);
    char got[512], want[512];
    steps(&alice, ids[2], got, sizeof got);
    assert_string_equal(got, "SENDING - 0 dup=0 - -|SENT dm:alice:bob 3 dup=0 - -|"
                             "DELIVERED dm:alice:bob 3 dup=0 - -|READ dm:alice:bob 3 dup=0 - -");
    steps(&alice, ids[0], got, sizeof got);
    snprintf(want, sizeof want, "%s",
             "SENDING - 0 dup=0 - -|SENT dm:alice:bob 1 dup=0 - -|"
             "DELIVERED dm:alice:bob 1 dup=0 - -|READ dm:alice:bob 1 dup=0 - -");
    assert_string_equal(got, want);
    /* Watermarks only move forward. */
    assert_int_equal(parley_chat_mark_read(bob.chat, "dm:alice:bob", 1), 0);
    assert_int_equal(parley_chat_mark_read(bob.chat, "nonsense", 1), PARLEY_EINVAL);
    assert_int_equal(parley_chat_mark_delivered(bob.chat, "dm:alice:bob", 0), PARLEY_EINVAL);
    usleep(QUIET_MS * 1000);
    assert_int_equal(tlog_count(&alice.log, "status "), 12);
    assert_int_equal(atomic_load(&own), 4);

    tc_done(&alice);
    tc_done(&bob);
    srv_done(&s);
}

/* ---- 2. a room ---- */

static void test_room(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob, carol;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_init(&carol, "carol", &s);
    tc_online(&alice);
    tc_online(&bob);
    tc_online(&carol);

    answer a;
    join(&alice, "general", &a);
    assert_int_equal(a.err, 0);
    assert_string_equal(a.members, "alice");
    answer_free(&a);
    join(&bob, "general", &a);
    assert_int_equal(a.err, 0);
    assert_int_equal(a.n, 2);
    assert_non_null(strstr(a.members, "alice"));
    assert_non_null(strstr(a.members, "bob"));
    answer_free(&a);
    join(&carol, "general", &a);
    assert_int_equal(a.err, 0);
    assert_int_equal(a.n, 3);
    answer_free(&a);

    EXACTLY(&alice.log, "member general ", 2);
    int at = 0;
    WAIT(&alice.log, &at, "member general bob 1", 0);
    WAIT(&alice.log, &at, "member general carol 1", 0);
    EXACTLY(&bob.log, "member general ", 1);
    at = 0;
    WAIT(&bob.log, &at, "member general carol 1", 0);

    char id[37];
    parley_chat_send_opts so;
    parley_chat_send_opts_init(&so);
    so.room = "general";
    so.text = "hello room";
    parley_chat_error err;
    assert_int_equal(parley_chat_send(alice.chat, &so, id, &err), 0);
    wait_status(&alice, id, "SENT room:general 1");
    EXACTLY(&bob.log, "msg ", 1);
    EXACTLY(&carol.log, "msg ", 1);
    at = 0;
    WAIT(&bob.log, &at, "msg room:general 1 alice text mine=0 hello room", 0);
    at = 0;
    WAIT(&carol.log, &at, "msg room:general 1 alice text mine=0 hello room", 0);
    wait_status(&alice, id, "DELIVERED room:general 1");

    /* Members list; leaving; the one who left gets nothing more. */
    answer_init(&a);
    assert_int_equal(parley_chat_members(bob.chat, "general", cb_room, &a), 0);
    answer_wait(&a);
    assert_int_equal(a.err, 0);
    assert_int_equal(a.n, 3);
    answer_free(&a);
    answer_init(&a);
    assert_int_equal(parley_chat_leave(carol.chat, "general", cb_room, &a), 0);
    answer_wait(&a);
    assert_int_equal(a.err, 0);
    answer_free(&a);
    at = 0;
    WAIT(&alice.log, &at, "member general carol 0", WAIT_MS);
    so.text = "after carol left";
    assert_int_equal(parley_chat_send(alice.chat, &so, id, &err), 0);
    wait_status(&alice, id, "SENT room:general 2");
    EXACTLY(&bob.log, "msg ", 2);
    assert_int_equal(tlog_count(&carol.log, "msg "), 1);

    /* A late joiner: the room's next message comes once, live, and what
     * it fetches to fill the gap before it is in order, each once. */
    tc dave;
    tc_init(&dave, "dave", &s);
    tc_online(&dave);
    join(&dave, "general", &a);
    assert_int_equal(a.err, 0);
    answer_free(&a);
    so.text = "welcome dave";
    assert_int_equal(parley_chat_send(alice.chat, &so, id, &err), 0);
    wait_status(&alice, id, "SENT room:general 3");
    EXACTLY(&dave.log, "msg room:general 3 alice text mine=0 welcome dave", 1);
    assert_int_equal(parley_chat_last_seq(dave.chat, "room:general"), 3);
    pthread_mutex_lock(&dave.log.mu); /* its callbacks may still log */
    int prev = 0;
    bool ordered = true;
    for (int i = 0; i < dave.log.n; i++) {
        int seq;
        if (sscanf(dave.log.lines[i], "msg room:general %d", &seq) != 1) continue;
        ordered = ordered && seq > prev;
        prev = seq;
    }
    pthread_mutex_unlock(&dave.log.mu);
    assert_true(ordered);
    assert_int_equal(prev, 3);
    tc_done(&dave);

    tc_done(&alice);
    tc_done(&bob);
    tc_done(&carol);
    srv_done(&s);
}

/* ---- 3. a recipient that was away ---- */

static void test_offline_recipient(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_online(&alice);
    tc_online(&bob);
    tc_close(&bob);

    char ids[20][37];
    for (int i = 0; i < 20; i++) {
        char text[32];
        snprintf(text, sizeof text, "m%d", i + 1);
        send_text(&alice, "bob", text, ids[i]);
    }
    for (int i = 0; i < 20; i++) {
        char want[64];
        snprintf(want, sizeof want, "SENT dm:alice:bob %d ", i + 1);
        wait_status(&alice, ids[i], want);
    }
    EXACTLY(&alice.log, "status ", 40); /* SENDING and SENT each, nothing delivered */

    tc_online(&bob); /* a new parley_chat: syncs from nothing */
    EXACTLY(&bob.log, "msg ", 20);
    int at = 0;
    for (int i = 0; i < 20; i++) {
        char want[128], line[256];
        snprintf(want, sizeof want, "msg dm:alice:bob %d alice text mine=0 m%d", i + 1, i + 1);
        WAITL(&bob.log, &at, "msg ", 0, line);
        assert_string_equal(line, want);
    }
    for (int i = 0; i < 20; i++) wait_status(&alice, ids[i], "DELIVERED");
    EXACTLY(&alice.log, "status ", 60);
    assert_int_equal(parley_chat_last_seq(bob.chat, "dm:alice:bob"), 20);

    /* Another device of bob's that has 1..15 already (its own store):
     * told so before it connects, it syncs the rest only. */
    tc bob2;
    tc_init(&bob2, "bob", &s);
    bob2.o.auto_connect = 0;
    tc_open(&bob2);
    assert_int_equal(parley_chat_set_last_seq(bob2.chat, "dm:alice:bob", 15), 0);
    assert_int_equal(parley_chat_set_last_seq(bob2.chat, "dm:bob:bob", 1), PARLEY_EINVAL);
    assert_int_equal(parley_chat_get_state(bob2.chat), PARLEY_CHAT_OFFLINE);
    at = 0;
    assert_int_equal(parley_chat_connect(bob2.chat), 0);
    WAIT(&bob2.log, &at, "state ONLINE", WAIT_MS);
    EXACTLY(&bob2.log, "msg ", 5);
    at = 0;
    for (int i = 15; i < 20; i++) {
        char want[64], line[256];
        snprintf(want, sizeof want, "msg dm:alice:bob %d alice text mine=0 m%d", i + 1, i + 1);
        WAITL(&bob2.log, &at, "msg ", 0, line);
        assert_string_equal(line, want);
    }
    /* bob's delivered watermark was 20 already: nothing moves. */
    usleep(QUIET_MS * 1000);
    assert_int_equal(tlog_count(&alice.log, "status "), 60);
    tc_done(&bob2);

    tc_done(&alice);
    tc_done(&bob);
    assert_int_equal(srv_stats(&s).messages, 20);
    srv_done(&s);
}

/* ---- 4. a sender while the server is down ---- */

static void test_offline_sender(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_online(&alice);
    tc_online(&bob);
    int at = 0;
    srv_stop(&s);
    WAIT(&alice.log, &at, "state OFFLINE", WAIT_MS);

    char ids[5][37];
    for (int i = 0; i < 5; i++) {
        char text[32];
        snprintf(text, sizeof text, "offline %d", i + 1);
        send_text(&alice, "bob", text, ids[i]);
    }
    usleep(300000); /* several reconnection attempts fail meanwhile */
    for (int i = 0; i < 5; i++) {
        char got[512];
        steps(&alice, ids[i], got, sizeof got);
        assert_string_equal(got, "SENDING - 0 dup=0 - -");
    }
    assert_int_equal(parley_sock_queued(tc_sock(&alice)), 5);
    /* A request made meanwhile waits for the connection too. */
    answer h;
    answer_init(&h);
    assert_int_equal(parley_chat_history(alice.chat, "dm:alice:bob", 0, 0, cb_history, &h), 0);

    srv_start(&s); /* same port, same data */
    answer_wait(&h);
    assert_int_equal(h.err, 0);
    answer_free(&h);
    for (int i = 0; i < 5; i++) {
        char want[64];
        snprintf(want, sizeof want, "SENT dm:alice:bob %d dup=0", i + 1);
        wait_status(&alice, ids[i], want);
    }
    EXACTLY(&bob.log, "msg ", 5);
    at = 0;
    for (int i = 0; i < 5; i++) {
        char want[128], line[256];
        snprintf(want, sizeof want, "msg dm:alice:bob %d alice text mine=0 offline %d", i + 1,
                 i + 1);
        WAITL(&bob.log, &at, "msg ", 0, line);
        assert_string_equal(line, want);
    }
    for (int i = 0; i < 5; i++) {
        wait_status(&alice, ids[i], "DELIVERED");
        char prefix[128];
        snprintf(prefix, sizeof prefix, "status %.36s SENT", ids[i]);
        assert_int_equal(tlog_count(&alice.log, prefix), 1);
    }
    assert_int_equal(parley_sock_queued(tc_sock(&alice)), 0);
    msg_service_stats st = srv_stats(&s);
    assert_int_equal(st.messages, 5);
    assert_int_equal(st.duplicates, 0);

    tc_done(&alice);
    tc_done(&bob);
    srv_done(&s);
}

/* ---- 5. a sender that was away learns what was read meanwhile ---- */

static void test_offline_sender_learns(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_online(&alice);
    tc_online(&bob);

    char ids[3][37];
    for (int i = 0; i < 3; i++) send_text(&alice, "bob", "read me", ids[i]);
    for (int i = 0; i < 3; i++) wait_status(&alice, ids[i], "DELIVERED");
    EXACTLY(&bob.log, "msg ", 3);

    int at = 0;
    assert_int_equal(parley_chat_close(alice.chat), 0);
    WAIT(&alice.log, &at, "state OFFLINE", WAIT_MS);
    assert_int_equal(parley_chat_mark_read(bob.chat, "dm:alice:bob", 3), 0);
    /* The receipt is stored once the server acknowledged it (it leaves
     * bob's queue then). */
    parley_sock *bs = tc_sock(&bob);
    for (int i = 0; i < 500 && parley_sock_queued(bs) != 0; i++) usleep(2000);
    assert_int_equal(parley_sock_queued(bs), 0);
    usleep(100000);
    for (int i = 0; i < 3; i++) {
        char prefix[128];
        snprintf(prefix, sizeof prefix, "status %.36s READ", ids[i]);
        assert_int_equal(tlog_count(&alice.log, prefix), 0);
    }
    assert_int_equal(parley_chat_get_state(alice.chat), PARLEY_CHAT_OFFLINE);

    assert_int_equal(parley_chat_connect(alice.chat), 0);
    WAIT(&alice.log, &at, "state ONLINE", WAIT_MS);
    for (int i = 0; i < 3; i++) wait_status(&alice, ids[i], "READ");
    usleep(QUIET_MS * 1000);
    for (int i = 0; i < 3; i++) {
        char got[512], want[512];
        steps(&alice, ids[i], got, sizeof got);
        snprintf(want, sizeof want,
                 "SENDING - 0 dup=0 - -|SENT dm:alice:bob %d dup=0 - -|"
                 "DELIVERED dm:alice:bob %d dup=0 - -|READ dm:alice:bob %d dup=0 - -",
                 i + 1, i + 1, i + 1);
        assert_string_equal(got, want);
    }
    /* Nothing was received twice on the reconnection. */
    assert_int_equal(tlog_count(&alice.log, "msg "), 0);
    assert_int_equal(tlog_count(&bob.log, "msg "), 3);

    tc_done(&alice);
    tc_done(&bob);
    srv_done(&s);
}

/* ---- 5b. away, both ways: what the device sent is not handed back ---- */

static void test_offline_both_ways(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_online(&alice);
    tc_online(&bob);
    int at = 0;
    assert_int_equal(parley_chat_close(alice.chat), 0);
    WAIT(&alice.log, &at, "state OFFLINE", WAIT_MS);
    char b1[37], a1[37], a2[37];
    send_text(&bob, "alice", "while you were away", b1);
    wait_status(&bob, b1, "SENT dm:alice:bob 1");
    /* Queued while closed: it goes out on the reconnection, next to the
     * sync that brings bob's message (and, stored meanwhile, alice's). */
    send_text(&alice, "bob", "back soon", a1);
    assert_int_equal(parley_chat_connect(alice.chat), 0);
    WAIT(&alice.log, &at, "state ONLINE", WAIT_MS);
    wait_status(&alice, a1, "SENT dm:alice:bob 2 dup=0");
    /* alice's device sent a1: it reports it through on_status, never as a
     * received message, whether its answer or the sync came first. */
    EXACTLY(&alice.log, "msg ", 1);
    char line[256];
    int m = 0;
    WAITL(&alice.log, &m, "msg ", 0, line);
    assert_string_equal(line, "msg dm:alice:bob 1 bob text mine=0 while you were away");
    wait_status(&bob, b1, "DELIVERED");
    wait_status(&alice, a1, "DELIVERED");
    assert_int_equal(parley_chat_last_seq(alice.chat, "dm:alice:bob"), 2);
    /* Live again: the next one follows on. */
    send_text(&alice, "bob", "here", a2);
    wait_status(&alice, a2, "SENT dm:alice:bob 3 dup=0");
    assert_int_equal(parley_chat_last_seq(alice.chat, "dm:alice:bob"), 3);
    EXACTLY(&bob.log, "msg ", 2);
    assert_int_equal(tlog_count(&alice.log, "msg "), 1);

    tc_done(&alice);
    tc_done(&bob);
    srv_done(&s);
}

/* ---- 6. the queue file across a process restart ---- */

static void test_persisted_queue(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc bob;
    tc_init(&bob, "bob", &s);
    tc_online(&bob);
    srv_stop(&s);

    char qpath[128];
    snprintf(qpath, sizeof qpath, "%s-alice.queue", s.dir);
    tc alice;
    tc_init(&alice, "alice", &s);
    alice.o.queue_path = qpath;
    tc_open(&alice);
    char ids[10][37];
    for (int i = 0; i < 10; i++) {
        char text[32];
        snprintf(text, sizeof text, "queued %d", i + 1);
        send_text(&alice, "bob", text, ids[i]);
    }
    EXACTLY(&alice.log, "status ", 10); /* SENDING only */
    assert_int_equal(parley_sock_queued(tc_sock(&alice)), 10);
    tc_done(&alice);

    /* The "restarted process": same queue file, callbacks of its own. */
    tc alice2;
    tc_init(&alice2, "alice", &s);
    alice2.o.queue_path = qpath;
    tc_open(&alice2);
    assert_int_equal(parley_sock_queued(tc_sock(&alice2)), 10);
    srv_start(&s);
    for (int i = 0; i < 10; i++) {
        char want[64];
        snprintf(want, sizeof want, "SENT dm:alice:bob %d dup=0", i + 1);
        wait_status(&alice2, ids[i], want);
    }
    EXACTLY(&bob.log, "msg ", 10);
    int at = 0;
    for (int i = 0; i < 10; i++) {
        char want[128], line[256];
        snprintf(want, sizeof want, "msg dm:alice:bob %d alice text mine=0 queued %d", i + 1,
                 i + 1);
        WAITL(&bob.log, &at, "msg ", 0, line);
        assert_string_equal(line, want);
    }
    /* Each SENT once, then followed to DELIVERED. */
    for (int i = 0; i < 10; i++) {
        wait_status(&alice2, ids[i], "DELIVERED");
        char prefix[128];
        snprintf(prefix, sizeof prefix, "status %.36s SENT", ids[i]);
        assert_int_equal(tlog_count(&alice2.log, prefix), 1);
    }
    assert_int_equal(parley_sock_queued(tc_sock(&alice2)), 0);
    assert_int_equal(srv_stats(&s).messages, 10);

    tc_done(&alice2);
    tc_done(&bob);
    srv_done(&s);
    unlink(qpath);
    char side[160];
    snprintf(side, sizeof side, "%s-wal", qpath);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", qpath);
    unlink(side);
}

/* ---- 7. bad input refused locally ---- */

typedef struct bad_case {
    const char *to, *room, *conversation, *type, *text, *content_json, *client_id;
    int priority;
    const char *code, *field;
} bad_case;

static void test_bad_input(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice;
    tc_init(&alice, "alice", &s);
    alice.o.max_text_bytes = 100;
    tc_online(&alice);

    char long_text[102];
    memset(long_text, 'x', 101);
    long_text[101] = 0;
    const bad_case cases[] = {
        {.to = "bob", .type = "sticker", .text = "hi", .code = "unknown_type", .field = "type"},
        {.to = "bob",
         .type = "location",
         .content_json = "{\"lat\":200,\"lng\":0}",
         .code = "invalid_field",
         .field = "content.lat"},
        {.to = "bob",
         .type = "location",
         .content_json = "{\"lng\":0}",
         .code = "missing_field",
         .field = "content.lat"},
        {.text = "nowhere", .code = "missing_field", .field = "to"},
        {.to = "bob",
         .room = "general",
         .text = "two targets",
         .code = "invalid_field",
         .field = "to"},
        {.to = "alice", .text = "me", .code = "invalid_field", .field = "to"},
        {.to = "bob", .text = long_text, .code = "too_large", .field = "content.text"},
        {.to = "bob", .text = "", .code = "invalid_field", .field = "content.text"},
        {.to = "b o b", .text = "hi", .code = "invalid_field", .field = "to"},
        {.to = "bob",
         .content_json = "{\"text\":\"hi\",\"extra\":1}",
         .code = "unknown_field",
         .field = "content.extra"},
        {.to = "bob", .content_json = "{\"text\":", .code = "bad_request", .field = ""},
        {.to = "bob",
         .text = "hi",
         .client_id = "short",
         .code = "invalid_field",
         .field = "client_id"},
        {.to = "bob", .text = "hi", .priority = 7, .code = "invalid_field", .field = "priority"},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(cases); i++) {
        const bad_case *k = &cases[i];
        parley_chat_send_opts so;
        parley_chat_send_opts_init(&so);
        so.to = k->to;
        so.room = k->room;
        so.conversation = k->conversation;
        so.type = k->type;
        so.text = k->text;
        so.content_json = k->content_json;
        so.client_id = k->client_id;
        if (k->priority) so.priority = k->priority;
        parley_chat_error err;
        memset(&err, 0x55, sizeof err);
        char id[37] = "";
        int rc = parley_chat_send(alice.chat, &so, id, &err);
        if (rc != PARLEY_EINVAL || strcmp(err.code, k->code) != 0 ||
            strcmp(err.field, k->field) != 0)
            fail_msg("case %zu: rc %d code \"%s\" field \"%s\" (%s); want EINVAL %s \"%s\"", i, rc,
                     err.code, err.field, err.message, k->code, k->field);
        assert_true(err.message[0] != 0);
    }
    /* Nothing was queued nor reported. */
    assert_int_equal(parley_sock_queued(tc_sock(&alice)), 0);
    assert_int_equal(tlog_count(&alice.log, "status "), 0);

    /* A valid send works afterwards; 100 bytes is within the limit. */
    char id[37];
    long_text[100] = 0;
    send_text(&alice, "bob", long_text, id);
    wait_status(&alice, id, "SENT dm:alice:bob 1 dup=0");
    /* The same client id again, while it is followed: refused locally. */
    parley_chat_send_opts so;
    parley_chat_send_opts_init(&so);
    so.to = "bob";
    so.text = "again";
    so.client_id = id;
    parley_chat_error err;
    assert_int_equal(parley_chat_send(alice.chat, &so, NULL, &err), PARLEY_EINVAL);
    assert_string_equal(err.field, "client_id");
    EXACTLY(&alice.log, "status ", 2);

    tc_done(&alice);
    srv_done(&s);
}

/* ---- 8. the server refuses: FAILED with its code ---- */

static void test_server_refusal(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice;
    tc_init(&alice, "alice", &s);
    tc_online(&alice);

    parley_chat_send_opts so;
    parley_chat_send_opts_init(&so);
    so.room = "secret";
    so.text = "let me in";
    char id1[37], id2[37], id3[37];
    parley_chat_error err;
    assert_int_equal(parley_chat_send(alice.chat, &so, id1, &err), 0);
    parley_chat_send_opts_init(&so);
    so.conversation = "dm:bob:carol";
    so.text = "eavesdrop";
    assert_int_equal(parley_chat_send(alice.chat, &so, id2, &err), 0);
    wait_status(&alice, id1, "FAILED");
    wait_status(&alice, id2, "FAILED");
    char got[512];
    steps(&alice, id1, got, sizeof got);
    assert_string_equal(got, "SENDING - 0 dup=0 - -|FAILED - 0 dup=0 not_member room");
    steps(&alice, id2, got, sizeof got);
    assert_string_equal(got, "SENDING - 0 dup=0 - -|FAILED - 0 dup=0 not_member conversation");

    /* The queue is not stuck behind them. */
    send_text(&alice, "bob", "fine", id3);
    wait_status(&alice, id3, "SENT dm:alice:bob 1 dup=0");
    EXACTLY(&alice.log, "status ", 6);
    assert_int_equal(parley_sock_queued(tc_sock(&alice)), 0);
    /* A failed id is forgotten: it may be used again (and is refused
     * again by the server, which stored nothing under it). */
    parley_chat_send_opts_init(&so);
    so.room = "secret";
    so.text = "again";
    so.client_id = id1;
    assert_int_equal(parley_chat_send(alice.chat, &so, NULL, &err), 0);
    EXACTLY(&alice.log, "status ", 8);
    steps(&alice, id1, got, sizeof got);
    assert_string_equal(got, "SENDING - 0 dup=0 - -|FAILED - 0 dup=0 not_member room|"
                             "SENDING - 0 dup=0 - -|FAILED - 0 dup=0 not_member room");

    tc_done(&alice);
    assert_int_equal(srv_stats(&s).messages, 1);
    srv_done(&s);
}

/* ---- 9. typing ---- */

static void test_typing(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_online(&alice);
    tc_online(&bob);

    assert_int_equal(parley_chat_typing(alice.chat, "dm:alice:bob", 1), 0);
    int at = 0;
    WAIT(&bob.log, &at, "typing dm:alice:bob alice 1", WAIT_MS);
    assert_int_equal(parley_chat_typing(alice.chat, "dm:alice:bob", 0), 0);
    WAIT(&bob.log, &at, "typing dm:alice:bob alice 0", WAIT_MS);
    EXACTLY(&bob.log, "typing ", 2);
    assert_int_equal(tlog_count(&alice.log, "typing "), 0);
    assert_int_equal(parley_chat_typing(alice.chat, "nonsense", 1), PARLEY_EINVAL);

    /* On again, and the chat freed while typing (its refresh timer armed). */
    assert_int_equal(parley_chat_typing(alice.chat, "dm:alice:bob", 1), 0);
    WAIT(&bob.log, &at, "typing dm:alice:bob alice 1", WAIT_MS);

    tc_done(&alice);
    tc_done(&bob);
    srv_done(&s);
}

/* ---- 10. history ---- */

static void test_history(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_online(&alice);
    tc_online(&bob);

    char ids[12][37];
    for (int i = 0; i < 12; i++) {
        char text[32];
        snprintf(text, sizeof text, "h%d", i + 1);
        send_text(&alice, "bob", text, ids[i]);
    }
    for (int i = 0; i < 12; i++) wait_status(&alice, ids[i], "SENT");

    answer a;
    history(&bob, "dm:alice:bob", 0, 0, &a);
    assert_int_equal(a.err, 0);
    assert_int_equal(a.n, 12);
    assert_false(a.more);
    for (int i = 0; i < 12; i++) {
        char want[32];
        snprintf(want, sizeof want, "h%d", i + 1);
        assert_int_equal(a.seqs[i], i + 1);
        assert_string_equal(a.texts[i], want);
    }
    answer_free(&a);

    /* Paging backwards, 5 at a time. */
    const struct {
        int64_t before;
        int n, first, more;
    } pages[] = {{0, 5, 8, 1}, {8, 5, 3, 1}, {3, 2, 1, 0}};
    for (size_t p = 0; p < PARLEY_ARRAY_LEN(pages); p++) {
        history(&alice, "dm:alice:bob", pages[p].before, 5, &a);
        assert_int_equal(a.err, 0);
        assert_int_equal(a.n, pages[p].n);
        assert_int_equal(a.more, pages[p].more);
        for (int i = 0; i < a.n; i++) assert_int_equal(a.seqs[i], pages[p].first + i);
        answer_free(&a);
    }

    /* Not a participant: the server's code. */
    tc carol;
    tc_init(&carol, "carol", &s);
    tc_online(&carol);
    history(&carol, "dm:alice:bob", 0, 0, &a);
    assert_int_equal(a.err, PARLEY_EPROTO);
    assert_string_equal(a.code, "not_member");
    assert_int_equal(a.n, 0);
    answer_free(&a);
    assert_int_equal(parley_chat_history(carol.chat, "dm:bob:alice", 0, 0, cb_history, NULL),
                     PARLEY_EINVAL);

    tc_done(&alice);
    tc_done(&bob);
    tc_done(&carol);
    srv_done(&s);
}

/* ---- 11. media ---- */

static void test_upload(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_online(&alice);
    tc_online(&bob);

    uint8_t png[200];
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(png, sig, sizeof sig);
    for (size_t i = sizeof sig; i < sizeof png; i++) png[i] = (uint8_t)(i * 31);
    uint8_t md[32];
    unsigned mdlen = 0;
    assert_int_equal(EVP_Digest(png, sizeof png, md, &mdlen, EVP_sha256(), NULL), 1);
    char hex[65];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);

    answer a;
    answer_init(&a);
    assert_int_equal(parley_chat_upload(alice.chat, "image/png", png, sizeof png, cb_upload, &a),
                     0);
    answer_wait(&a);
    assert_int_equal(a.err, 0);
    assert_string_equal(a.media, hex);
    assert_string_equal(a.mime, "image/png");
    assert_int_equal(a.size, sizeof png);
    answer_free(&a);
    assert_int_equal(parley_chat_upload(alice.chat, "not a mime", png, 1, cb_upload, &a),
                     PARLEY_EINVAL);

    char content[160], id[37];
    snprintf(content, sizeof content, "{\"media\":\"%s\",\"caption\":\"a picture\"}", hex);
    parley_chat_send_opts so;
    parley_chat_send_opts_init(&so);
    so.to = "bob";
    so.type = "image";
    so.content_json = content;
    parley_chat_error err;
    assert_int_equal(parley_chat_send(alice.chat, &so, id, &err), 0);
    wait_status(&alice, id, "SENT dm:alice:bob 1 dup=0");
    EXACTLY(&bob.log, "msg ", 1);
    int at = 0;
    char line[512];
    WAITL(&bob.log, &at, "msg ", 0, line);
    assert_string_equal(line, "msg dm:alice:bob 1 alice image mine=0 a picture");
    at = 0;
    WAITL(&bob.log, &at, "content ", 0, line);
    assert_non_null(strstr(line, hex));
    assert_non_null(strstr(line, "\"mime\":\"image/png\""));
    assert_non_null(strstr(line, "\"size\":200"));

    /* An image of media that does not exist: the server's not_found. */
    snprintf(content, sizeof content, "{\"media\":\"%064d\"}", 0);
    assert_int_equal(parley_chat_send(alice.chat, &so, id, &err), 0);
    wait_status(&alice, id, "FAILED - 0 dup=0 not_found");

    tc_done(&alice);
    tc_done(&bob);
    srv_done(&s);
}

/* ---- 12. time to live ---- */

static void test_ttl(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_online(&alice);
    tc_online(&bob);
    int at = 0;
    srv_stop(&s);
    WAIT(&alice.log, &at, "state OFFLINE", WAIT_MS);

    parley_chat_send_opts so;
    parley_chat_send_opts_init(&so);
    so.to = "bob";
    so.text = "soon stale";
    so.ttl_ms = 200;
    char id[37], keep[37];
    parley_chat_error err;
    uint64_t t0 = ptime_ms();
    assert_int_equal(parley_chat_send(alice.chat, &so, id, &err), 0);
    send_text(&alice, "bob", "kept", keep);
    wait_status(&alice, id, "FAILED");
    uint64_t took = ptime_ms() - t0;
    assert_true(took >= 150);
    assert_true(took < 2000);
    char got[512];
    steps(&alice, id, got, sizeof got);
    assert_string_equal(got, "SENDING - 0 dup=0 - -|FAILED - 0 dup=0 expired -");
    assert_int_equal(parley_sock_queued(tc_sock(&alice)), 1);

    srv_start(&s);
    wait_status(&alice, keep, "SENT dm:alice:bob 1 dup=0");
    EXACTLY(&bob.log, "msg ", 1);
    answer a;
    history(&bob, "dm:alice:bob", 0, 0, &a);
    assert_int_equal(a.err, 0);
    assert_int_equal(a.n, 1);
    assert_string_equal(a.texts[0], "kept");
    answer_free(&a);
    steps(&alice, id, got, sizeof got);
    assert_string_equal(got, "SENDING - 0 dup=0 - -|FAILED - 0 dup=0 expired -");
    assert_int_equal(srv_stats(&s).messages, 1);

    tc_done(&alice);
    tc_done(&bob);
    srv_done(&s);
}

/* ---- 13. identities: JWT accepted, refusals reported ---- */

/* An HS256 token for sub expiring at exp_s (NULL on failure: this runs
 * on client threads too, where cmocka cannot fail). */
static char *make_token_at(const srv *s, const char *sub, double exp_s, bool bad_sig)
{
    pbuf b = {0};
    char claims[160];
    snprintf(claims, sizeof claims, "{\"sub\":\"%s\",\"exp\":%.3f}", sub, exp_s);
    uint8_t key[sizeof s->secret];
    memcpy(key, s->secret, sizeof key);
    if (bad_sig) key[0] ^= 1;
    if (jwt_sign(&b, NULL, claims, key, sizeof key) != 0 || pbuf_append(&b, "", 1) != 0) {
        pbuf_free(&b);
        return NULL;
    }
    return (char *)b.ptr;
}

static char *make_token(const srv *s, const char *sub, int64_t exp_s, bool bad_sig)
{
    char *t = make_token_at(s, sub, (double)exp_s, bad_sig);
    assert_non_null(t);
    return t;
}

static void test_auth(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, true);
    srv_start(&s);
    int64_t now_s = (int64_t)time(NULL);
    char *good_alice = make_token(&s, "alice", now_s + 3600, false);
    char *good_bob = make_token(&s, "bob", now_s + 3600, false);
    char *forged = make_token(&s, "mallory", now_s + 3600, true);
    char *expired = make_token(&s, "mallory", now_s - 3600, false);

    tc alice, bob;
    tc_init(&alice, "alice", &s);
    alice.o.dev_auth = 0;
    alice.o.token = cb_token;
    alice.token = good_alice;
    tc_init(&bob, "bob", &s);
    bob.o.dev_auth = 0;
    bob.o.token = cb_token;
    bob.token = good_bob;
    tc_online(&alice);
    tc_online(&bob);
    char id[37];
    send_text(&alice, "bob", "signed", id);
    wait_status(&alice, id, "DELIVERED dm:alice:bob 1");

    const struct {
        const char *token;
        const char *code;
    } refusals[] = {
        {NULL, "auth_required"}, {"forged", "invalid_token"}, {"expired", "token_expired"}};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(refusals); i++) {
        tc m;
        tc_init(&m, "mallory", &s);
        m.o.dev_auth = 0;
        m.o.token = cb_token;
        m.token = !refusals[i].token                     ? NULL
                  : !strcmp(refusals[i].token, "forged") ? forged
                                                         : expired;
        tc_open(&m);
        char want[64];
        snprintf(want, sizeof want, "state REFUSED %s", refusals[i].code);
        int at = 0;
        WAIT(&m.log, &at, want, WAIT_MS);
        assert_int_equal(parley_chat_get_state(m.chat), PARLEY_CHAT_REFUSED);
        /* It stays refused: no retry with the same identity. */
        usleep(200000);
        assert_int_equal(tlog_count(&m.log, "state REFUSED"), 1);
        assert_int_equal(tlog_count(&m.log, "state ONLINE"), 0);
        if (i == 0) {
            /* With a valid token now, parley_chat_connect gets in. */
            m.token = make_token(&s, "mallory", now_s + 3600, false);
            assert_int_equal(parley_chat_connect(m.chat), 0);
            WAIT(&m.log, &at, "state ONLINE", WAIT_MS);
        }
        char *own = i == 0 ? (char *)m.token : NULL;
        tc_done(&m);
        free(own);
    }

    tc_done(&alice);
    tc_done(&bob);
    free(good_alice);
    free(good_bob);
    free(forged);
    free(expired);
    srv_done(&s);
}

/* ---- 13b. a token that runs out during the session ---- */

static void test_token_refresh(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, true);
    s.mo.jwt_leeway_ms = 0;
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    alice.o.dev_auth = 0;
    alice.o.token = cb_token;
    alice.mint = &s;
    tc_init(&bob, "bob", &s);
    bob.o.dev_auth = 0;
    bob.o.token = cb_token;
    bob.token = make_token(&s, "bob", (int64_t)time(NULL) + 3600, false);
    tc_online(&alice);
    tc_online(&bob);
    int at = 0;
    WAIT(&alice.log, &at, "token 1", 0);
    /* The server ends the session when the token runs out; the chat comes
     * back at once with a fresh one. */
    WAIT(&alice.log, &at, "state OFFLINE", 3000);
    WAIT(&alice.log, &at, "token 2", WAIT_MS);
    WAIT(&alice.log, &at, "state ONLINE", WAIT_MS);
    assert_int_equal(tlog_count(&alice.log, "state REFUSED"), 0);
    char id[37];
    send_text(&alice, "bob", "still here", id);
    wait_status(&alice, id, "DELIVERED dm:alice:bob 1");
    EXACTLY(&bob.log, "msg ", 1);
    assert_int_equal(atomic_load(&alice.mints), 2);

    char *bt = (char *)bob.token;
    tc_done(&alice);
    tc_done(&bob);
    free(bt);
    srv_done(&s);
}

/* ---- 13c. a queue file with a message that expires after the restart ---- */

static void test_persisted_ttl(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    srv_stop(&s);
    char qpath[128];
    snprintf(qpath, sizeof qpath, "%s-alice.queue", s.dir);
    tc alice;
    tc_init(&alice, "alice", &s);
    alice.o.queue_path = qpath;
    tc_open(&alice);
    parley_chat_send_opts so;
    parley_chat_send_opts_init(&so);
    so.to = "bob";
    so.text = "short-lived";
    so.ttl_ms = 500;
    char id[37], keep[37];
    parley_chat_error err;
    assert_int_equal(parley_chat_send(alice.chat, &so, id, &err), 0);
    send_text(&alice, "bob", "kept", keep);
    tc_done(&alice);

    tc alice2;
    tc_init(&alice2, "alice", &s);
    alice2.o.queue_path = qpath;
    tc_open(&alice2);
    /* The restarted process reports the expiry of what it inherited. */
    wait_status(&alice2, id, "FAILED - 0 dup=0 expired");
    srv_start(&s);
    wait_status(&alice2, keep, "SENT dm:alice:bob 1 dup=0");
    EXACTLY(&alice2.log, "status ", 2);
    assert_int_equal(srv_stats(&s).messages, 1);

    tc_done(&alice2);
    srv_done(&s);
    unlink(qpath);
    char side[160];
    snprintf(side, sizeof side, "%s-wal", qpath);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", qpath);
    unlink(side);
}

/* ---- 14. a resend from another process: the server's duplicate ---- */

static void test_duplicate(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, alice2, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&alice2, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_online(&alice);
    tc_online(&alice2);
    tc_online(&bob);

    char id[37];
    assert_int_equal(parley_new_id(id), 0);
    parley_chat_send_opts so;
    parley_chat_send_opts_init(&so);
    so.to = "bob";
    so.text = "first";
    so.client_id = id;
    parley_chat_error err;
    char out[37];
    assert_int_equal(parley_chat_send(alice.chat, &so, out, &err), 0);
    assert_string_equal(out, id);
    wait_status(&alice, id, "SENT dm:alice:bob 1 dup=0");
    /* alice's other device gets it as hers. */
    EXACTLY(&alice2.log, "msg ", 1);
    int at = 0;
    WAIT(&alice2.log, &at, "msg dm:alice:bob 1 alice text mine=1 first", 0);
    assert_int_equal(tlog_count(&alice2.log, "status "), 0);

    /* The same client id from the other device: stored once, answered as
     * a duplicate with the stored message. */
    so.text = "second";
    assert_int_equal(parley_chat_send(alice2.chat, &so, NULL, &err), 0);
    wait_status(&alice2, id, "SENT dm:alice:bob 1 dup=1");
    EXACTLY(&bob.log, "msg ", 1);
    at = 0;
    WAIT(&bob.log, &at, "msg dm:alice:bob 1 alice text mine=0 first", 0);
    msg_service_stats st = srv_stats(&s);
    assert_int_equal(st.messages, 1);
    assert_int_equal(st.duplicates, 1);
    /* Both devices follow it to DELIVERED (bob's receipt reaches both). */
    wait_status(&alice, id, "DELIVERED");
    wait_status(&alice2, id, "DELIVERED");

    tc_done(&alice);
    tc_done(&alice2);
    tc_done(&bob);
    srv_done(&s);
}

/* ---- 15. a sync answer cut short (more: true) ---- */

static void count_syncs(const char *event, uint64_t in, uint64_t out, void *user)
{
    (void)in;
    if (!strcmp(event, "sync")) *(uint64_t *)user = out;
}

static void test_sync_paging(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_online(&alice);
    /* 300 messages of 1500 bytes: more than one 256 KiB sync answer, and
     * texts longer than the client decodes on its stack. */
    enum { N = 300 };
    static char ids[N][37];
    char text[1501];
    for (int i = 0; i < N; i++) {
        memset(text, 'a' + i % 26, 1500);
        int k = snprintf(text, sizeof text, "%d:", i + 1);
        text[k] = 'x';
        text[1500] = 0;
        send_text(&alice, "bob", text, ids[i]);
    }
    for (int i = 0; i < N; i++) wait_status(&alice, ids[i], "SENT");

    tc_online(&bob);
    EXACTLY(&bob.log, "msg ", N);
    int at = 0;
    for (int i = 0; i < N; i++) {
        char line[2048], want[32];
        WAITL(&bob.log, &at, "msg ", 0, line);
        snprintf(want, sizeof want, " %d alice text", i + 1);
        if (!strstr(line, want)) fail_msg("message %d: %.60s", i + 1, line);
        snprintf(want, sizeof want, "mine=0 %d:", i + 1);
        const char *body = strstr(line, want);
        assert_non_null(body);
        assert_int_equal(strlen(body + 7), 1500);
    }
    /* It took more than one sync request (the first answer said more). */
    uint64_t syncs = 0;
    parley_sock_event_counts(tc_sock(&bob), count_syncs, &syncs);
    assert_true(syncs >= 2);
    assert_int_equal(tlog_count(&bob.log, "state ONLINE"), 1);
    assert_true(tlog_count(&bob.log, "state SYNCING") >= 1);
    for (int i = 0; i < N; i++) wait_status(&alice, ids[i], "DELIVERED");

    tc_done(&alice);
    tc_done(&bob);
    srv_done(&s);
}

/* A user in more rooms than one sync answer lists (200): the chat walks
 * the pages (`next` back as `cursor`) and goes live only at the end, in
 * every room, the last page's ones included. */
static void test_sync_conversation_pages(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc alice, bob;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_online(&alice);
    tc_online(&bob);
    enum { ROOMS = 450 };
    char room[32];
    answer a;
    for (int i = 0; i < ROOMS; i++) {
        snprintf(room, sizeof room, "r%03d", i);
        join(&alice, room, &a);
        assert_int_equal(a.err, 0);
        answer_free(&a);
    }
    join(&bob, "r449", &a);
    answer_free(&a);
    tc_done(&alice);

    /* alice's next device: three pages of conversations, then live. */
    tc alice2;
    tc_init(&alice2, "alice", &s);
    tc_online(&alice2);
    uint64_t syncs = 0;
    parley_sock_event_counts(tc_sock(&alice2), count_syncs, &syncs);
    assert_true(syncs >= 3);
    assert_int_equal(tlog_count(&alice2.log, "state ONLINE"), 1);
    /* A room of the last page is live. */
    char id[37];
    parley_chat_send_opts so;
    parley_chat_send_opts_init(&so);
    so.room = "r449";
    so.text = "last page";
    parley_chat_error err;
    assert_int_equal(parley_chat_send(bob.chat, &so, id, &err), 0);
    wait_status(&bob, id, "SENT room:r449 1");
    int at = 0;
    WAIT(&alice2.log, &at, "msg room:r449 1 bob text mine=0 last page", 0);
    EXACTLY(&alice2.log, "msg ", 1);

    tc_done(&alice2);
    tc_done(&bob);
    srv_done(&s);
}

/* ---- 16. chats on the application's loop ---- */

static void test_app_loop(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    parley_loop *loop = parley_loop_new();
    assert_non_null(loop);
    assert_int_equal(parley_loop_start(loop), 0);

    /* carol alone on the loop first, with a conversation known, closed:
     * nothing of hers is armed when she is freed. */
    tc carol;
    tc_init(&carol, "carol", &s);
    carol.o.loop = loop;
    tc_online(&carol);
    assert_int_equal(parley_chat_set_last_seq(carol.chat, "dm:bob:carol", 0), 0);
    assert_int_equal(parley_chat_last_seq(carol.chat, "dm:bob:carol"), 0);
    int at = 0;
    assert_int_equal(parley_chat_close(carol.chat), 0);
    WAIT(&carol.log, &at, "state OFFLINE", WAIT_MS);
    tc_done(&carol);

    /* The loop's timers are intact: two chats on it work, across a server
     * restart (reconnection timers) and a third one coming and going. */
    tc alice, bob, dave;
    tc_init(&alice, "alice", &s);
    tc_init(&bob, "bob", &s);
    tc_init(&dave, "dave", &s);
    alice.o.loop = bob.o.loop = dave.o.loop = loop;
    tc_online(&alice);
    tc_online(&bob);
    tc_online(&dave);
    char id[37];
    send_text(&dave, "alice", "from dave", id);
    wait_status(&dave, id, "DELIVERED");
    tc_done(&dave);
    send_text(&alice, "bob", "one", id);
    wait_status(&alice, id, "DELIVERED");
    int ab = tlog_len(&alice.log), bb = tlog_len(&bob.log);
    srv_stop(&s);
    send_text(&alice, "bob", "two", id);
    srv_start(&s);
    WAIT(&alice.log, &ab, "state ONLINE", WAIT_MS);
    WAIT(&bob.log, &bb, "state ONLINE", WAIT_MS);
    wait_status(&alice, id, "DELIVERED dm:alice:bob 2");
    EXACTLY(&bob.log, "msg ", 2);

    tc_done(&alice);
    tc_done(&bob);
    parley_loop_join(loop);
    parley_loop_free(loop);
    srv_done(&s);
}

/* ---- 17. creation errors, and freeing with requests outstanding ---- */

static void test_api_edges(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, false);
    srv_start(&s);
    tc t;
    tc_init(&t, "alice", &s);
    parley_chat *c = (parley_chat *)&t; /* must be cleared */
    t.o.user_id = "not a user";
    assert_int_equal(parley_chat_new(&t.o, &c), PARLEY_EINVAL);
    assert_null(c);
    t.o.user_id = t.user;
    t.o.url = NULL;
    assert_int_equal(parley_chat_new(&t.o, &c), PARLEY_EINVAL);
    t.o.url = "gopher://x";
    assert_int_equal(parley_chat_new(&t.o, &c), PARLEY_EURL);
    assert_null(c);
    tlog_free(&t.log);
    tc_init(&t, "alice", &s);
    t.o.queue_path = "/nonexistent-parley-dir/alice.queue";
    assert_int_equal(parley_chat_new(&t.o, &c), PARLEY_EIO);
    assert_null(c);
    tlog_free(&t.log);

    /* Requests made while the server is away wait for the connection; the
     * chat freed meanwhile lets go of them (no callback, no leak). */
    tc_init(&t, "alice", &s);
    tc_online(&t);
    int at = 0;
    srv_stop(&s);
    WAIT(&t.log, &at, "state OFFLINE", WAIT_MS);
    answer a;
    answer_init(&a);
    uint8_t blob[16] = {0};
    assert_int_equal(parley_chat_history(t.chat, "dm:alice:bob", 0, 0, cb_history, &a), 0);
    assert_int_equal(parley_chat_join(t.chat, "general", cb_room, &a), 0);
    assert_int_equal(parley_chat_upload(t.chat, "image/png", blob, sizeof blob, cb_upload, &a), 0);
    assert_int_equal(parley_chat_typing(t.chat, "dm:alice:bob", 1), 0);
    tc_done(&t);
    assert_false(a.done);
    answer_free(&a);

    /* Queue limits: refused with EFULL, nothing reported for it. */
    tc_init(&t, "alice", &s);
    t.o.queue_max_count = 3;
    tc_open(&t);
    char id[37];
    for (int i = 0; i < 3; i++) send_text(&t, "bob", "fits", id);
    parley_chat_error err;
    parley_chat_send_opts so;
    parley_chat_send_opts_init(&so);
    so.to = "bob";
    so.text = "one too many";
    assert_int_equal(parley_chat_send(t.chat, &so, id, &err), PARLEY_EFULL);
    assert_string_equal(err.code, "queue_full");
    assert_int_equal(tlog_count(&t.log, "status "), 3);
    assert_int_equal(parley_sock_queued(tc_sock(&t)), 3);
    tc_done(&t);
    srv_start(&s);
    srv_done(&s);
}

/* ---- 14. sending notifications (parley_chat_notify) ---- */

typedef struct nanswer {
    answer a;
    int dup;
    int64_t id, retry;
    char title[64], from[32], prio[16];
} nanswer;

static void cb_notify(parley_chat *c, int err, const parley_chat_error *e,
                      const parley_chat_notification *n, int duplicate, void *user)
{
    (void)c;
    nanswer *x = user;
    pthread_mutex_lock(&x->a.mu);
    answer_set(&x->a, err, e);
    x->retry = e ? e->retry_after_ms : 0;
    x->dup = duplicate;
    x->id = n ? n->id : 0;
    snprintf(x->title, sizeof x->title, "%s", n ? n->title : "");
    snprintf(x->from, sizeof x->from, "%s", n && n->from ? n->from : "");
    snprintf(x->prio, sizeof x->prio, "%s", n ? n->priority : "");
    answer_done(&x->a);
}

static void notify_wait(tc *t, const parley_chat_notify_opts *o, nanswer *x)
{
    memset(x, 0, sizeof *x);
    answer_init(&x->a);
    assert_int_equal(parley_chat_notify(t->chat, o, cb_notify, x), 0);
    answer_wait(&x->a);
    answer_free(&x->a);
}

static char *role_token(const srv *s, const char *sub, const char *role)
{
    pbuf b = {0};
    char claims[200];
    snprintf(claims, sizeof claims, "{\"sub\":\"%s\",\"role\":\"%s\",\"exp\":%lld}", sub, role,
             (long long)time(NULL) + 3600);
    assert_int_equal(jwt_sign(&b, NULL, claims, s->secret, sizeof s->secret), 0);
    assert_int_equal(pbuf_append(&b, "", 1), 0);
    return (char *)b.ptr;
}

static void test_notify(void **state)
{
    (void)state;
    srv s;
    srv_init(&s, true);
    s.mo.quota.notify.tokens = 1; /* one a minute ... */
    s.mo.quota.notify.period_ms = 60000;
    s.mo.quota.notify.burst = 3; /* ... after 3 */
    srv_start(&s);
    tc svc, alice;
    tc_init(&svc, "svc", &s);
    svc.o.dev_auth = 0;
    svc.o.token = cb_token;
    svc.token = role_token(&s, "svc", "notifier");
    tc_init(&alice, "alice", &s);
    alice.o.dev_auth = 0;
    alice.o.token = cb_token;
    alice.token = role_token(&s, "alice", "user");
    tc_online(&svc);
    tc_online(&alice);

    parley_chat_notify_opts o;
    parley_chat_notify_opts_init(&o);
    o.to = "alice";
    o.type = "reminder";
    o.priority = "high";
    o.title = "Stand-up \"now\"";
    o.body = "room 4";
    o.actions_json = "[{\"id\":\"open\",\"label\":\"Open\"}]";
    o.expires_at = (int64_t)time(NULL) * 1000 + 3600000;
    o.dedupe_key = "standup-1";
    nanswer x;
    notify_wait(&svc, &o, &x);
    assert_int_equal(x.a.err, 0);
    assert_int_equal(x.dup, 0);
    assert_true(x.id > 0);
    assert_string_equal(x.title, "Stand-up \"now\"");
    assert_string_equal(x.from, "svc");
    assert_string_equal(x.prio, "high");
    int64_t first = x.id;
    /* The same dedupe key: the stored one, duplicate. */
    notify_wait(&svc, &o, &x);
    assert_int_equal(x.a.err, 0);
    assert_int_equal(x.dup, 1);
    assert_int_equal(x.id, first);

    /* The socket API's codes and fields. */
    parley_chat_notify_opts bad = o;
    bad.dedupe_key = NULL;
    bad.title = NULL;
    notify_wait(&svc, &bad, &x);
    assert_int_equal(x.a.err, PARLEY_EPROTO);
    assert_string_equal(x.a.code, "missing_field");
    assert_string_equal(x.a.field, "title");
    bad = o;
    bad.priority = "highest";
    notify_wait(&svc, &bad, &x);
    assert_string_equal(x.a.code, "invalid_field");
    assert_string_equal(x.a.field, "priority");
    bad = o;
    bad.expires_at = 1000;
    notify_wait(&svc, &bad, &x);
    assert_string_equal(x.a.code, "invalid_field");
    assert_string_equal(x.a.field, "expires_at");
    bad = o;
    bad.actions_json = "[{\"id\":\"open\"}]";
    notify_wait(&svc, &bad, &x);
    assert_string_equal(x.a.code, "missing_field");
    assert_string_equal(x.a.field, "actions[0].label");
    /* Refused before anything is sent. */
    bad.actions_json = "{\"id\":1}";
    assert_int_equal(parley_chat_notify(svc.chat, &bad, cb_notify, &x), PARLEY_EINVAL);
    assert_int_equal(parley_chat_notify(svc.chat, NULL, cb_notify, &x), PARLEY_EINVAL);

    /* Not a notifier: forbidden, no field. */
    notify_wait(&alice, &o, &x);
    assert_int_equal(x.a.err, PARLEY_EPROTO);
    assert_string_equal(x.a.code, "forbidden");
    assert_string_equal(x.a.field, "");

    /* The rate (the duplicate counted, the refusals did not): one more,
     * then rate_limited on "to" with a delay. */
    o.dedupe_key = NULL;
    notify_wait(&svc, &o, &x);
    assert_int_equal(x.a.err, 0);
    notify_wait(&svc, &o, &x);
    assert_int_equal(x.a.err, PARLEY_EPROTO);
    assert_string_equal(x.a.code, "rate_limited");
    assert_string_equal(x.a.field, "to");
    assert_true(x.retry > 0);

    char *t1 = (char *)svc.token, *t2 = (char *)alice.token;
    tc_done(&svc);
    tc_done(&alice);
    free(t1);
    free(t2);
    srv_done(&s);
}

int main(void)
{
    /* As every program using the library must (README, "Using the
     * library"): a write to a connection the peer reset is EPIPE, not
     * a fatal signal. */
    signal(SIGPIPE, SIG_IGN);
    parley_log_set(getenv("PARLEY_TEST_LOG") ? PARLEY_LOG_DEBUG : PARLEY_LOG_WARN, log_sink, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dm_statuses),
        cmocka_unit_test(test_manual_receipts),
        cmocka_unit_test(test_room),
        cmocka_unit_test(test_offline_recipient),
        cmocka_unit_test(test_offline_sender),
        cmocka_unit_test(test_offline_sender_learns),
        cmocka_unit_test(test_offline_both_ways),
        cmocka_unit_test(test_persisted_queue),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_server_refusal),
        cmocka_unit_test(test_typing),
        cmocka_unit_test(test_history),
        cmocka_unit_test(test_upload),
        cmocka_unit_test(test_ttl),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_token_refresh),
        cmocka_unit_test(test_persisted_ttl),
        cmocka_unit_test(test_duplicate),
        cmocka_unit_test(test_sync_paging),
        cmocka_unit_test(test_sync_conversation_pages),
        cmocka_unit_test(test_app_loop),
        cmocka_unit_test(test_api_edges),
        cmocka_unit_test(test_notify),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
