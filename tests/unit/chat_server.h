/*
 * The real messaging service in the test process, for the client-side
 * tests (test_chat_store.c, test_chat_presence.c): a server on a loop
 * thread of its own with a fresh data directory, restartable on the same
 * port, a log sink that counts the library's warnings (a "chat:" or
 * "store:" warning fails a test), and recorders for store watch
 * callbacks. Header-only: each test file is its own
 * executable.
 */
#ifndef PARLEY_TEST_CHAT_SERVER_H
#define PARLEY_TEST_CHAT_SERVER_H

#include <dirent.h>
#include <sys/stat.h>

#include "client_helpers.h"
#include "parley/store.h"
#include "services/messaging.h"

#define WAIT_MS  5000 /* upper bound for anything that should happen "soon" */
#define QUIET_MS 200  /* how long nothing more must happen for "exactly" */

/* ---- the library's log: store and chat warnings fail the test ---- */

static atomic_int warnings;

static void log_sink(parley_log_level level, const char *msg, void *user)
{
    (void)user;
    if (!strncmp(msg, "chat:", 5) || !strncmp(msg, "store:", 6)) atomic_fetch_add(&warnings, 1);
    if (level < PARLEY_LOG_WARN && !getenv("PARLEY_TEST_LOG")) return;
    if (!getenv("PARLEY_TEST_LOG") && strstr(msg, "INSECURE --dev-auth")) return;
    if (!getenv("PARLEY_TEST_LOG") && strstr(msg, "no --jwt-secret")) return;
    fprintf(stderr, "log: %s\n", msg);
}

/* ---- the server (as in test_chat_client.c) ---- */

typedef struct srv {
    th_server th; /* first: the setup callback gets it */
    msg_service_opts mo;
    msg_service *svc;
    int svc_rc;
    char dir[64];
    unsigned port;
} srv;

static void srv_setup(th_server *t, void *user)
{
    (void)t;
    srv *s = user;
    s->svc_rc = msg_service_new(s->th.srv, &s->mo, &s->svc);
}

static void srv_init(srv *s)
{
    memset(s, 0, sizeof *s);
    snprintf(s->dir, sizeof s->dir, "/tmp/parley-chat-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    msg_service_opts_init(&s->mo);
    mquota_opts_unlimited(&s->mo.quota); /* functional tests: bursts */
    s->mo.data_dir = s->dir;
    s->mo.typing_throttle_ms = 20;
    s->mo.dev_auth = true;
}

static void srv_start(srv *s)
{
    if (s->port == 0) s->port = th_low_port();
    parley_server_opts so;
    parley_server_opts_init(&so);
    so.ping_interval_ms = 2000;
    so.ping_timeout_ms = 2000;
    unsigned port = s->port;
    assert_int_equal(th_server_start(&s->th, &so, 0, srv_setup, s, port), 0);
    assert_int_equal(s->svc_rc, 0);
    s->port = s->th.port;
    assert_true(port == 0 || s->port == port);
}

static void srv_down(parley_server *ps, void *user)
{
    (void)ps;
    srv *s = user;
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
    assert_int_equal(atomic_load(&warnings), 0);
}

/* ---- a watch's record ---- */

typedef struct rec {
    pthread_mutex_t mu;
    int calls;
    char *last;
    char joined[8192]; /* every value, '|'-separated */
    pthread_t thread;  /* the thread of the last call */
    parley_store *store;
    int64_t unwatch_self; /* the callback unwatches this id when set */
} rec;

static void rec_init(rec *r)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
}

static void rec_free(rec *r)
{
    free(r->last);
    pthread_mutex_destroy(&r->mu);
}

static void on_value(parley_store *s, const char *key, const char *json, size_t len, void *user)
{
    rec *r = user;
    assert_non_null(key);
    assert_int_equal(strlen(json), len); /* NUL-terminated, len exact */
    pthread_mutex_lock(&r->mu);
    r->calls++;
    free(r->last);
    r->last = strdup(json);
    size_t o = strlen(r->joined);
    snprintf(r->joined + o, sizeof r->joined - o, "%s%s", o ? "|" : "", json);
    r->thread = pthread_self();
    int64_t self = r->unwatch_self;
    pthread_mutex_unlock(&r->mu);
    if (self) assert_int_equal(parley_store_unwatch(s, self), 0);
}

static int rec_calls(rec *r)
{
    pthread_mutex_lock(&r->mu);
    int n = r->calls;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Waits up to WAIT_MS for at least n calls, then QUIET_MS for no more:
 * the number of calls. */
static int rec_settle(rec *r, int n)
{
    uint64_t end = ptime_ms() + WAIT_MS;
    while (rec_calls(r) < n && ptime_ms() < end) usleep(2000);
    usleep(QUIET_MS * 1000);
    return rec_calls(r);
}

static void rec_joined(rec *r, char *out, size_t cap)
{
    pthread_mutex_lock(&r->mu);
    snprintf(out, cap, "%s", r->joined);
    pthread_mutex_unlock(&r->mu);
}

#endif
