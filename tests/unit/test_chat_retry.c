/*
 * The messaging client (include/parley/chat.h) and the server's "not now"
 * refusals: rate_limited, quota_exceeded and storage_full acknowledgements
 * with retry_after_ms. Against a scripted server in the same process that
 * speaks the messaging protocol on /chat (sync, send_message with
 * client-id de-duplication, receipts, rooms) and refuses by the message
 * text, recording every attempt with its time:
 * - a queued message kept in its place, resent only after the wait, with
 *   the messages queued behind it sent after it (order at the server);
 * - a burst replayed at connection against a limiter that refuses
 *   everything while a wait runs: the order still holds;
 * - refusals without retry_after_ms, or with another code, fail;
 * - a wait that spans a disconnect and reconnection;
 * - a time to live that passes during a wait (FAILED "expired");
 * - receipts go through the same queue and wait the same way;
 * - requests outside the queue are not retried, and their error carries
 *   the server's retry_after_ms to the application.
 *
 * PARLEY_TEST_LOG=1 prints the library's log and the server's attempts.
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
#include "parley/chat.h"

#define WAIT_MS  5000 /* upper bound for anything that should happen "soon" */
#define QUIET_MS 300  /* how long nothing more must happen for "not again" */

/* ---- the library's log: chat warnings fail the test ---- */

static atomic_int warnings;

static void log_sink(parley_log_level level, const char *msg, void *user)
{
    (void)user;
    if (!strncmp(msg, "chat:", 5)) atomic_fetch_add(&warnings, 1);
    if (level < PARLEY_LOG_WARN && !getenv("PARLEY_TEST_LOG")) return;
    fprintf(stderr, "log: %s\n", msg);
}

/* ---- the scripted server ---- */

#define MAX_ATT    256
#define MAX_STORED 64

/* What the server did with one attempt. */
enum { OUT_KEPT = 'k', OUT_FAILED = 'f', OUT_STORED = 's', OUT_DUPLICATE = 'd' };

typedef struct attempt {
    char event[16]; /* "send_message", "receipt", "join_room", "leave_room" */
    char cid[40];   /* send_message: the client id */
    uint64_t at;    /* ptime_ms on arrival */
    char outcome;
} attempt;

typedef struct rsrv {
    th_server th; /* first */
    pthread_mutex_t mu;
    parley_socket *sock; /* the connected client */
    attempt att[MAX_ATT];
    int natt;
    char stored[MAX_STORED][40]; /* client ids in store order (seq - 1) */
    char texts[MAX_STORED][32];
    int nstored;
    /* Limiter mode: after a refusal with a wait, every send_message is
     * refused until the wait is over (what a rate limiter does). */
    bool window;
    uint64_t window_end;
    uint64_t conn_at[16];
    int nconn;
} rsrv;

/* How the server answers a text: refusals (code, retry_after_ms or 0)
 * for the first `times` attempts; times -1 = always. */
static const struct rule {
    const char *prefix;
    int times;
    const char *code;
    int retry_ms;
} rules[] = {
    {"limit2", 2, "rate_limited", 300}, {"quota1", 1, "quota_exceeded", 200},
    {"full1", 1, "storage_full", 200},  {"noretry", -1, "rate_limited", 0},
    {"member", -1, "not_member", 300},  {"kick", 1, "rate_limited", 600},
    {"ttl", -1, "rate_limited", 1000},
};

static void rs_answer(parley_socket *s, int64_t ack_id, const char *json)
{
    if (ack_id < 0) return;
    pbuf b = {0};
    pbuf_appendf(&b, "[%s]", json);
    pbuf_append(&b, "", 1);
    parley_ack(s, ack_id, (const char *)b.ptr, NULL, 0);
    pbuf_free(&b);
}

static void rs_refuse(parley_socket *s, int64_t ack_id, const char *code, int64_t retry_ms)
{
    char a[256];
    if (retry_ms > 0)
        snprintf(a, sizeof a,
                 "{\"ok\":false,\"error\":{\"code\":\"%s\",\"message\":\"not now\","
                 "\"retry_after_ms\":%lld}}",
                 code, (long long)retry_ms);
    else
        snprintf(a, sizeof a, "{\"ok\":false,\"error\":{\"code\":\"%s\",\"message\":\"no\"}}",
                 code);
    rs_answer(s, ack_id, a);
}

/* Records an attempt (under mu); returns how many of the same event and
 * client id came before it. */
static int rs_record(rsrv *f, const char *event, const char *cid, attempt **out)
{
    int before = 0;
    for (int i = 0; i < f->natt; i++)
        before += !strcmp(f->att[i].event, event) && !strcmp(f->att[i].cid, cid);
    *out = NULL;
    if (f->natt < MAX_ATT) {
        attempt *a = &f->att[f->natt++];
        snprintf(a->event, sizeof a->event, "%s", event);
        snprintf(a->cid, sizeof a->cid, "%s", cid);
        a->at = ptime_ms();
        *out = a;
    }
    return before;
}

static bool get_string(const json_val *obj, const char *key, char *out, size_t cap)
{
    json_val v;
    out[0] = 0;
    if (!json_object_get(obj, key, &v) || v.type != JSON_STRING) return false;
    long n = json_string_decode(&v, out, cap - 1);
    out[n < 0 ? 0 : n] = 0;
    return n > 0;
}

static void rs_message(pbuf *b, rsrv *f, int k, bool duplicate)
{
    pbuf_appendf(b,
                 "{\"ok\":true,\"duplicate\":%s,\"message\":{\"id\":%d,\"conversation\":"
                 "\"dm:alice:bob\",\"seq\":%d,\"from\":\"alice\",\"client_id\":\"%s\","
                 "\"type\":\"text\",\"priority\":\"normal\",\"ts\":1767225600000,"
                 "\"content\":{\"text\":\"%s\"}}}",
                 duplicate ? "true" : "false", k + 1, k + 1, f->stored[k], f->texts[k]);
    pbuf_append(b, "", 1);
}

static void rs_send_message(rsrv *f, parley_socket *s, const json_val *obj, int64_t ack_id)
{
    char cid[40], text[32] = "";
    json_val content;
    get_string(obj, "client_id", cid, sizeof cid);
    if (json_object_get(obj, "content", &content)) get_string(&content, "text", text, sizeof text);
    pthread_mutex_lock(&f->mu);
    attempt *a;
    int before = rs_record(f, "send_message", cid, &a);
    uint64_t now = ptime_ms();
    for (int k = 0; k < f->nstored; k++) {
        if (strcmp(f->stored[k], cid) != 0) continue;
        if (a) a->outcome = OUT_DUPLICATE;
        pbuf b = {0};
        rs_message(&b, f, k, true);
        pthread_mutex_unlock(&f->mu);
        rs_answer(s, ack_id, (const char *)b.ptr);
        pbuf_free(&b);
        return;
    }
    const char *code = NULL;
    int64_t retry = 0;
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(rules) && !code; i++) {
        if (strncmp(text, rules[i].prefix, strlen(rules[i].prefix)) != 0) continue;
        if (rules[i].times >= 0 && before >= rules[i].times) break;
        code = rules[i].code;
        retry = rules[i].retry_ms;
    }
    if (!code && f->window && now < f->window_end) {
        code = "rate_limited";
        retry = (int64_t)(f->window_end - now);
    }
    if (code) {
        if (retry > 0 && f->window && now + (uint64_t)retry > f->window_end)
            f->window_end = now + (uint64_t)retry;
        bool kept = retry > 0 && strcmp(code, "not_member") != 0;
        if (a) a->outcome = kept ? OUT_KEPT : OUT_FAILED;
        pthread_mutex_unlock(&f->mu);
        if (getenv("PARLEY_TEST_LOG"))
            fprintf(stderr, "srv: %s %s refused %s %lld\n", cid, text, code, (long long)retry);
        rs_refuse(s, ack_id, code, retry);
        return;
    }
    assert_true(f->nstored < MAX_STORED);
    int k = f->nstored++;
    snprintf(f->stored[k], sizeof f->stored[k], "%s", cid);
    snprintf(f->texts[k], sizeof f->texts[k], "%s", text);
    if (a) a->outcome = OUT_STORED;
    pbuf b = {0};
    rs_message(&b, f, k, false);
    pthread_mutex_unlock(&f->mu);
    if (getenv("PARLEY_TEST_LOG")) fprintf(stderr, "srv: %s %s stored %d\n", cid, text, k + 1);
    rs_answer(s, ack_id, (const char *)b.ptr);
    pbuf_free(&b);
}

static void rs_event(parley_socket *s, const char *event, size_t event_len, const parley_args *args,
                     int64_t ack_id, void *user)
{
    (void)event_len;
    rsrv *f = user;
    json_val arr, obj;
    json_iter it;
    memset(&obj, 0, sizeof obj);
    if (json_parse(args->json, args->json_len, 16, &arr, NULL) == 0 && arr.type == JSON_ARRAY) {
        json_iter_init(&it, &arr);
        json_array_next(&it, &obj);
    }
    attempt *a;
    if (!strcmp(event, "sync")) {
        rs_answer(s, ack_id, "{\"ok\":true,\"messages\":[],\"conversations\":[],\"more\":false}");
    } else if (!strcmp(event, "send_message")) {
        rs_send_message(f, s, &obj, ack_id);
    } else if (!strcmp(event, "receipt")) {
        /* The first one waits 200 ms, later ones are taken. */
        pthread_mutex_lock(&f->mu);
        int before = rs_record(f, "receipt", "", &a);
        if (a) a->outcome = before ? OUT_STORED : OUT_KEPT;
        pthread_mutex_unlock(&f->mu);
        if (before)
            rs_answer(s, ack_id, "{\"ok\":true}");
        else
            rs_refuse(s, ack_id, "rate_limited", 200);
    } else if (!strcmp(event, "join_room")) {
        pthread_mutex_lock(&f->mu);
        rs_record(f, "join_room", "", &a);
        pthread_mutex_unlock(&f->mu);
        rs_refuse(s, ack_id, "rate_limited", 1500);
    } else if (!strcmp(event, "leave_room")) {
        pthread_mutex_lock(&f->mu);
        rs_record(f, "leave_room", "", &a);
        pthread_mutex_unlock(&f->mu);
        rs_refuse(s, ack_id, "not_member", 0);
    } else {
        rs_answer(s, ack_id,
                  "{\"ok\":false,\"error\":{\"code\":\"unknown_event\",\"message\":\"no\"}}");
    }
}

static void rs_connection(parley_socket *s, void *user)
{
    rsrv *f = user;
    pthread_mutex_lock(&f->mu);
    f->sock = s;
    if (f->nconn < 16) f->conn_at[f->nconn++] = ptime_ms();
    pthread_mutex_unlock(&f->mu);
}

static void rs_disconnect(parley_socket *s, const char *reason, void *user)
{
    (void)reason;
    rsrv *f = user;
    pthread_mutex_lock(&f->mu);
    if (f->sock == s) f->sock = NULL;
    pthread_mutex_unlock(&f->mu);
}

static void rs_setup(th_server *t, void *user)
{
    rsrv *f = user;
    parley_nsp *n = parley_server_of(t->srv, "/chat");
    parley_nsp_handlers h = {.on_connection = rs_connection,
                             .on_event = rs_event,
                             .on_disconnect = rs_disconnect,
                             .user = f};
    parley_nsp_set_handlers(n, &h);
}

static void rs_start(rsrv *f, bool window)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    f->window = window;
    parley_server_opts so;
    parley_server_opts_init(&so);
    so.ping_interval_ms = 2000;
    so.ping_timeout_ms = 2000;
    assert_int_equal(th_server_start(&f->th, &so, 0, rs_setup, f, 0), 0);
}

static void rs_stop(rsrv *f)
{
    th_server_stop(&f->th);
    pthread_mutex_destroy(&f->mu);
    assert_int_equal(atomic_load(&warnings), 0);
}

/* The server times of the attempts of (event, cid) into at (up to cap):
 * how many there were. */
static int rs_attempts(rsrv *f, const char *event, const char *cid, uint64_t *at, int cap)
{
    int n = 0;
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < f->natt; i++) {
        if (strcmp(f->att[i].event, event) != 0 || strcmp(f->att[i].cid, cid) != 0) continue;
        if (at && n < cap) at[n] = f->att[i].at;
        n++;
    }
    pthread_mutex_unlock(&f->mu);
    return n;
}

/* Index in the server's log of the first send_message attempt of cid
 * made after (or at) index `from`; -1 when none. */
static int rs_first_from(rsrv *f, const char *cid, int from)
{
    int pos = -1;
    pthread_mutex_lock(&f->mu);
    for (int i = from; i < f->natt && pos < 0; i++)
        if (!strcmp(f->att[i].event, "send_message") && !strcmp(f->att[i].cid, cid)) pos = i;
    pthread_mutex_unlock(&f->mu);
    return pos;
}

/* Index of the attempt that stored cid; -1. */
static int rs_stored_at(rsrv *f, const char *cid)
{
    int pos = -1;
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < f->natt && pos < 0; i++)
        if (!strcmp(f->att[i].cid, cid) && f->att[i].outcome == OUT_STORED) pos = i;
    pthread_mutex_unlock(&f->mu);
    return pos;
}

/* The stored client ids, '|'-separated, in store order. */
static void rs_stored(rsrv *f, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    pthread_mutex_lock(&f->mu);
    for (int k = 0; k < f->nstored; k++)
        o += (size_t)snprintf(out + o, o < cap ? cap - o : 0, "%s%s", k ? "|" : "", f->stored[k]);
    pthread_mutex_unlock(&f->mu);
}

static int rs_count(rsrv *f, char outcome)
{
    int n = 0;
    pthread_mutex_lock(&f->mu);
    for (int i = 0; i < f->natt; i++) n += f->att[i].outcome == outcome;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static int rs_conns(rsrv *f, uint64_t *last)
{
    pthread_mutex_lock(&f->mu);
    int n = f->nconn;
    if (last && n) *last = f->conn_at[n - 1];
    pthread_mutex_unlock(&f->mu);
    return n;
}

static void do_kick(void *arg)
{
    rsrv *f = arg;
    if (f->sock) parley_disconnect(f->sock, 1);
}

/* ---- the application ---- */

#define MAX_MSGS 32

typedef struct tmsg {
    char cid[37];
    char trail[16]; /* status digits in order: "12" = SENDING, SENT */
    char code[32];  /* FAILED: the error */
    int64_t retry_after_ms;
} tmsg;

typedef struct tapp {
    parley_chat *chat;
    parley_chat_opts o;
    char url[64];
    pthread_mutex_t mu;
    tmsg m[MAX_MSGS];
    int n;
    int failed;
    parley_chat_state state;
    /* the last room callback */
    int room_calls, room_err;
    parley_chat_error room_e;
} tapp;

static void app_status(parley_chat *c, const parley_chat_status *st, void *user)
{
    (void)c;
    tapp *t = user;
    pthread_mutex_lock(&t->mu);
    int i = 0;
    while (i < t->n && strcmp(t->m[i].cid, st->client_id) != 0) i++;
    if (i == t->n && t->n < MAX_MSGS)
        snprintf(t->m[t->n++].cid, sizeof t->m[0].cid, "%s", st->client_id);
    if (i < t->n) {
        size_t o = strlen(t->m[i].trail);
        if (o + 1 < sizeof t->m[i].trail) t->m[i].trail[o] = (char)('0' + st->status);
        if (st->status == PARLEY_MSG_FAILED) {
            t->failed++;
            assert_non_null(st->error);
            snprintf(t->m[i].code, sizeof t->m[i].code, "%s", st->error->code);
            t->m[i].retry_after_ms = st->error->retry_after_ms;
        }
    }
    pthread_mutex_unlock(&t->mu);
}

static void app_state(parley_chat *c, parley_chat_state st, const parley_chat_error *why,
                      void *user)
{
    (void)c;
    (void)why;
    tapp *t = user;
    pthread_mutex_lock(&t->mu);
    t->state = st;
    pthread_mutex_unlock(&t->mu);
}

static void app_room(parley_chat *c, int err, const parley_chat_error *e, const char *room,
                     const char *const *members, size_t n, void *user)
{
    (void)c;
    (void)room;
    (void)members;
    (void)n;
    tapp *t = user;
    pthread_mutex_lock(&t->mu);
    t->room_calls++;
    t->room_err = err;
    if (e) t->room_e = *e;
    pthread_mutex_unlock(&t->mu);
}

static void app_open(tapp *t, rsrv *f, bool connect)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    snprintf(t->url, sizeof t->url, "http://127.0.0.1:%u", f->th.port);
    parley_chat_opts_init(&t->o);
    t->o.url = t->url;
    t->o.user_id = "alice";
    t->o.dev_auth = 1;
    t->o.reconnection_delay_ms = 50;
    t->o.reconnection_delay_max_ms = 200;
    t->o.auto_connect = connect;
    t->o.on_status = app_status;
    t->o.on_state = app_state;
    t->o.user = t;
    assert_int_equal(parley_chat_new(&t->o, &t->chat), 0);
}

static void app_close(tapp *t)
{
    parley_chat_free(t->chat);
    pthread_mutex_destroy(&t->mu);
}

static void wait_online(tapp *t)
{
    uint64_t end = ptime_ms() + WAIT_MS;
    for (;;) {
        pthread_mutex_lock(&t->mu);
        bool on = t->state == PARLEY_CHAT_ONLINE;
        pthread_mutex_unlock(&t->mu);
        if (on) return;
        if (ptime_ms() >= end) fail_msg("never online");
        usleep(2000);
    }
}

/* Queues a text to bob; its client id into cid. */
static void app_send(tapp *t, const char *text, uint32_t ttl_ms, char cid[37])
{
    parley_chat_send_opts so;
    parley_chat_send_opts_init(&so);
    so.to = "bob";
    so.text = text;
    so.ttl_ms = ttl_ms;
    parley_chat_error e;
    assert_int_equal(parley_chat_send(t->chat, &so, cid, &e), 0);
}

static tmsg app_msg(tapp *t, const char *cid)
{
    tmsg m;
    memset(&m, 0, sizeof m);
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->m[i].cid, cid)) m = t->m[i];
    pthread_mutex_unlock(&t->mu);
    return m;
}

/* Waits until cid's last status is `status`. */
static void wait_status(tapp *t, const char *cid, parley_msg_status status)
{
    uint64_t end = ptime_ms() + WAIT_MS;
    for (;;) {
        tmsg m = app_msg(t, cid);
        size_t n = strlen(m.trail);
        if (n && m.trail[n - 1] == '0' + (char)status) return;
        if (ptime_ms() >= end) fail_msg("%s: statuses \"%s\", never %d", cid, m.trail, status);
        usleep(2000);
    }
}

static uint64_t retries(tapp *t)
{
    parley_client_stats st;
    parley_client_get_stats(parley_chat_client(t->chat), &st);
    return st.send_retries;
}

static void wait_retries(tapp *t, uint64_t n)
{
    uint64_t end = ptime_ms() + WAIT_MS;
    while (retries(t) < n) {
        if (ptime_ms() >= end)
            fail_msg("send_retries %llu, want %llu", (unsigned long long)retries(t),
                     (unsigned long long)n);
        usleep(2000);
    }
}

static int app_failed(tapp *t)
{
    pthread_mutex_lock(&t->mu);
    int n = t->failed;
    pthread_mutex_unlock(&t->mu);
    return n;
}

/* ---- tests ---- */

/* A message refused twice with rate_limited (retry_after_ms 300) stays
 * SENDING and is stored on the third attempt, each resend at least 300 ms
 * after the refusal before it; B and C, queued during the first wait, are
 * sent only after it (the resend after a wait goes alone, and it is
 * refused once more). quota_exceeded and storage_full with a wait are
 * kept the same way. Every client id is stored once. */
static void test_wait_keeps_order(void **state)
{
    (void)state;
    rsrv f;
    rs_start(&f, false);
    tapp t;
    app_open(&t, &f, true);
    wait_online(&t);
    char a[37], b[37], c[37];
    app_send(&t, "limit2 first", 0, a);
    wait_retries(&t, 1);
    app_send(&t, "second", 0, b);
    app_send(&t, "third", 0, c);
    wait_status(&t, c, PARLEY_MSG_SENT);
    wait_status(&t, a, PARLEY_MSG_SENT);
    uint64_t at[4];
    assert_int_equal(rs_attempts(&f, "send_message", a, at, 4), 3);
    assert_true(at[1] >= at[0] + 300);
    assert_true(at[2] >= at[1] + 300);
    /* B and C: one attempt each, after A's stored one, in order. */
    int stored_a = rs_stored_at(&f, a);
    assert_true(stored_a >= 0);
    assert_int_equal(rs_attempts(&f, "send_message", b, NULL, 0), 1);
    assert_int_equal(rs_attempts(&f, "send_message", c, NULL, 0), 1);
    assert_true(rs_first_from(&f, b, 0) > stored_a);
    assert_true(rs_first_from(&f, c, 0) > rs_first_from(&f, b, 0));
    char want[160], got[512];
    snprintf(want, sizeof want, "%s|%s|%s", a, b, c);
    rs_stored(&f, got, sizeof got);
    assert_string_equal(got, want);
    assert_string_equal(app_msg(&t, a).trail, "12");
    assert_string_equal(app_msg(&t, b).trail, "12");
    assert_int_equal(retries(&t), 2);

    /* quota_exceeded and storage_full with retry_after_ms 200: kept. */
    char q[37], s[37];
    app_send(&t, "quota1", 0, q);
    app_send(&t, "full1", 0, s);
    wait_status(&t, q, PARLEY_MSG_SENT);
    wait_status(&t, s, PARLEY_MSG_SENT);
    assert_int_equal(rs_attempts(&f, "send_message", q, at, 4), 2);
    assert_true(at[1] >= at[0] + 200);
    assert_int_equal(rs_attempts(&f, "send_message", s, at, 4), 2);
    assert_true(at[1] >= at[0] + 200);
    assert_string_equal(app_msg(&t, q).trail, "12");
    assert_string_equal(app_msg(&t, s).trail, "12");
    assert_true(rs_stored_at(&f, q) < rs_stored_at(&f, s));
    assert_int_equal(app_failed(&t), 0);
    assert_int_equal(rs_count(&f, OUT_DUPLICATE), 0);
    assert_int_equal(f.nstored, 5);
    app_close(&t);
    rs_stop(&f);
}

/* Messages queued offline go out together at connection; the limiter
 * refuses the first and, while its wait runs, everything else. After the
 * wait the first goes alone (refused once more), then the rest: stored
 * in the order they were queued, none FAILED, none twice. */
static void test_burst_order(void **state)
{
    (void)state;
    rsrv f;
    rs_start(&f, true);
    tapp t;
    app_open(&t, &f, false);
    char ids[5][37];
    app_send(&t, "limit2 one", 0, ids[0]);
    for (int i = 1; i < 5; i++) {
        char text[16];
        snprintf(text, sizeof text, "msg %d", i);
        app_send(&t, text, 0, ids[i]);
    }
    assert_int_equal(parley_chat_connect(t.chat), 0);
    for (int i = 0; i < 5; i++) wait_status(&t, ids[i], PARLEY_MSG_SENT);
    char want[512], got[512];
    size_t o = 0;
    for (int i = 0; i < 5; i++)
        o += (size_t)snprintf(want + o, sizeof want - o, "%s%s", i ? "|" : "", ids[i]);
    rs_stored(&f, got, sizeof got);
    assert_string_equal(got, want);
    uint64_t at[8];
    assert_int_equal(rs_attempts(&f, "send_message", ids[0], at, 8), 3);
    assert_true(at[1] >= at[0] + 300);
    assert_true(at[2] >= at[1] + 300);
    /* The others were refused once (they were on the wire with the
     * first), then waited behind it. */
    int stored_first = rs_stored_at(&f, ids[0]);
    assert_true(stored_first >= 0);
    for (int i = 1; i < 5; i++) {
        assert_int_equal(rs_attempts(&f, "send_message", ids[i], at, 8), 2);
        assert_true(rs_first_from(&f, ids[i], stored_first) > stored_first);
        assert_string_equal(app_msg(&t, ids[i]).trail, "12");
    }
    assert_int_equal(app_failed(&t), 0);
    assert_int_equal(rs_count(&f, OUT_DUPLICATE), 0);
    app_close(&t);
    rs_stop(&f);
}

/* rate_limited without retry_after_ms, and another code with one, are
 * final: FAILED with the server's code (and its hint, when given), sent
 * once. */
static void test_final_refusals(void **state)
{
    (void)state;
    rsrv f;
    rs_start(&f, false);
    tapp t;
    app_open(&t, &f, true);
    wait_online(&t);
    char n[37], m[37], ok[37];
    app_send(&t, "noretry", 0, n);
    app_send(&t, "member", 0, m);
    app_send(&t, "fine", 0, ok);
    wait_status(&t, n, PARLEY_MSG_FAILED);
    wait_status(&t, m, PARLEY_MSG_FAILED);
    wait_status(&t, ok, PARLEY_MSG_SENT);
    tmsg x = app_msg(&t, n);
    assert_string_equal(x.trail, "15");
    assert_string_equal(x.code, "rate_limited");
    assert_int_equal(x.retry_after_ms, 0);
    x = app_msg(&t, m);
    assert_string_equal(x.trail, "15");
    assert_string_equal(x.code, "not_member");
    assert_int_equal(x.retry_after_ms, 300);
    usleep(QUIET_MS * 1000 * 2);
    assert_int_equal(rs_attempts(&f, "send_message", n, NULL, 0), 1);
    assert_int_equal(rs_attempts(&f, "send_message", m, NULL, 0), 1);
    assert_int_equal(retries(&t), 0);
    assert_int_equal(app_failed(&t), 2);
    app_close(&t);
    rs_stop(&f);
}

/* A wait in progress when the connection drops keeps its deadline: the
 * replay after the reconnection (which comes sooner) waits for it. */
static void test_wait_across_reconnect(void **state)
{
    (void)state;
    rsrv f;
    rs_start(&f, false);
    tapp t;
    app_open(&t, &f, true);
    wait_online(&t);
    char k[37], after[37];
    app_send(&t, "kick me", 0, k);
    wait_retries(&t, 1);
    assert_int_equal(ploop_call(f.th.loop, do_kick, &f), 0);
    app_send(&t, "after", 0, after);
    wait_status(&t, after, PARLEY_MSG_SENT);
    wait_status(&t, k, PARLEY_MSG_SENT);
    uint64_t at[4], conn = 0;
    assert_int_equal(rs_conns(&f, &conn), 2);
    assert_int_equal(rs_attempts(&f, "send_message", k, at, 4), 2);
    assert_true(conn < at[0] + 600); /* reconnected while the wait ran */
    assert_true(at[1] >= at[0] + 600);
    assert_true(rs_first_from(&f, after, 0) > rs_stored_at(&f, k));
    assert_string_equal(app_msg(&t, k).trail, "12");
    assert_int_equal(app_failed(&t), 0);
    assert_int_equal(rs_count(&f, OUT_DUPLICATE), 0);
    app_close(&t);
    rs_stop(&f);
}

/* The time to live runs during a wait: FAILED "expired", never resent,
 * and the queue goes on with what follows. */
static void test_ttl_during_wait(void **state)
{
    (void)state;
    rsrv f;
    rs_start(&f, false);
    tapp t;
    app_open(&t, &f, true);
    wait_online(&t);
    char x[37], next[37];
    app_send(&t, "ttl", 250, x);
    wait_status(&t, x, PARLEY_MSG_FAILED);
    tmsg m = app_msg(&t, x);
    assert_string_equal(m.trail, "15");
    assert_string_equal(m.code, "expired");
    app_send(&t, "next", 0, next);
    wait_status(&t, next, PARLEY_MSG_SENT);
    uint64_t at[2];
    assert_int_equal(rs_attempts(&f, "send_message", next, at, 2), 1);
    uint64_t refused[2];
    assert_int_equal(rs_attempts(&f, "send_message", x, refused, 2), 1);
    assert_true(at[0] >= refused[0] + 1000); /* the wait held the queue */
    usleep(QUIET_MS * 1000);
    assert_int_equal(rs_attempts(&f, "send_message", x, NULL, 0), 1);
    app_close(&t);
    rs_stop(&f);
}

/* Receipts wait like messages; requests outside the queue are not
 * retried and their error carries retry_after_ms (0 when not given). */
static void test_receipts_and_requests(void **state)
{
    (void)state;
    rsrv f;
    rs_start(&f, false);
    tapp t;
    app_open(&t, &f, true);
    wait_online(&t);
    assert_int_equal(parley_chat_mark_read(t.chat, "dm:alice:bob", 3), 0);
    uint64_t end = ptime_ms() + WAIT_MS;
    while (rs_attempts(&f, "receipt", "", NULL, 0) < 2 && ptime_ms() < end) usleep(2000);
    uint64_t at[4];
    assert_int_equal(rs_attempts(&f, "receipt", "", at, 4), 2);
    assert_true(at[1] >= at[0] + 200);
    assert_int_equal(retries(&t), 1);

    assert_int_equal(parley_chat_join(t.chat, "general", app_room, &t), 0);
    end = ptime_ms() + WAIT_MS;
    for (;;) {
        pthread_mutex_lock(&t.mu);
        int calls = t.room_calls;
        pthread_mutex_unlock(&t.mu);
        if (calls == 1) break;
        if (ptime_ms() >= end) fail_msg("no join answer");
        usleep(2000);
    }
    assert_int_equal(t.room_err, PARLEY_EPROTO);
    assert_string_equal(t.room_e.code, "rate_limited");
    assert_int_equal(t.room_e.retry_after_ms, 1500);
    assert_int_equal(parley_chat_leave(t.chat, "general", app_room, &t), 0);
    end = ptime_ms() + WAIT_MS;
    for (;;) {
        pthread_mutex_lock(&t.mu);
        int calls = t.room_calls;
        pthread_mutex_unlock(&t.mu);
        if (calls == 2) break;
        if (ptime_ms() >= end) fail_msg("no leave answer");
        usleep(2000);
    }
    assert_int_equal(t.room_err, PARLEY_EPROTO);
    assert_string_equal(t.room_e.code, "not_member");
    assert_int_equal(t.room_e.retry_after_ms, 0);
    usleep(QUIET_MS * 1000);
    assert_int_equal(rs_attempts(&f, "join_room", "", NULL, 0), 1);
    assert_int_equal(rs_attempts(&f, "leave_room", "", NULL, 0), 1);
    assert_int_equal(t.room_calls, 2);
    assert_int_equal(retries(&t), 1);
    app_close(&t);
    rs_stop(&f);
}

int main(void)
{
    parley_log_set(getenv("PARLEY_TEST_LOG") ? PARLEY_LOG_DEBUG : PARLEY_LOG_WARN, log_sink, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (getenv("PARLEY_TEST_ONLY")) cmocka_set_test_filter(getenv("PARLEY_TEST_ONLY"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wait_keeps_order), cmocka_unit_test(test_burst_order),
        cmocka_unit_test(test_final_refusals),   cmocka_unit_test(test_wait_across_reconnect),
        cmocka_unit_test(test_ttl_during_wait),  cmocka_unit_test(test_receipts_and_requests),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
