/* Unit tests for the push webhook's pure parts (signature, backoff,
 * eligibility, URL rule) and the store's push outbox (schema 5, and the
 * migration from schema 4). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec/json.h"
#include "parley/parley.h"
#include "services/msg_schema.h"
#include "services/store/mstore.h"
#include "services/server/push.h"

#define T0 1767225600000LL

/* ---- signature ---- */

static void test_sign_rfc4231(void **state)
{
    (void)state;
    /* RFC 4231 test case 2: the HMAC-SHA256 under the format. */
    static const char data[] = "what do ya want for nothing?";
    char sig[PUSH_SIG_LEN + 1];
    assert_int_equal(push_sign((const uint8_t *)"Jefe", 4, data, sizeof data - 1, sig), 0);
    assert_string_equal(sig, "v1=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

static void test_sign_format(void **state)
{
    (void)state;
    /* `printf '%s' '1700000000.{"delivery":1,"user":"bob"}' |
     *  openssl dgst -sha256 -hmac 'push-secret-0123456789'` */
    static const char key[] = "push-secret-0123456789";
    static const char data[] = "1700000000.{\"delivery\":1,\"user\":\"bob\"}";
    char sig[PUSH_SIG_LEN + 1];
    assert_int_equal(push_sign((const uint8_t *)key, sizeof key - 1, data, sizeof data - 1, sig),
                     0);
    assert_string_equal(sig, "v1=d4dd47ad642b692cf23d595942f0cb87ddf34ebb46724a39ffc482e1e432c2fd");
    assert_int_equal(strlen(sig), PUSH_SIG_LEN);
    /* One byte more changes it. */
    char sig2[PUSH_SIG_LEN + 1];
    assert_int_equal(push_sign((const uint8_t *)key, sizeof key - 1, data, sizeof data - 2, sig2),
                     0);
    assert_string_not_equal(sig, sig2);
    /* No key, or one too long: refused. */
    assert_int_equal(push_sign((const uint8_t *)key, 0, data, 3, sig), PARLEY_EINVAL);
    static uint8_t big[PUSH_SECRET_MAX + 1];
    assert_int_equal(push_sign(big, sizeof big, data, 3, sig), PARLEY_EINVAL);
}

/* ---- backoff ---- */

static void test_backoff(void **state)
{
    (void)state;
    /* r = 0.5: no jitter. 1 s, 2 s, 4 s, ... capped at 10 min. */
    assert_int_equal(push_backoff(1000, 600000, 1, 0.5), 1000);
    assert_int_equal(push_backoff(1000, 600000, 2, 0.5), 2000);
    assert_int_equal(push_backoff(1000, 600000, 3, 0.5), 4000);
    assert_int_equal(push_backoff(1000, 600000, 10, 0.5), 512000);
    assert_int_equal(push_backoff(1000, 600000, 11, 0.5), 600000);
    assert_int_equal(push_backoff(1000, 600000, 20, 0.5), 600000);
    assert_int_equal(push_backoff(1000, 600000, 4000000000u, 0.5), 600000);
    /* Jitter: up to 20% either way, never above the cap. */
    assert_int_equal(push_backoff(1000, 600000, 1, 0.0), 800);
    uint32_t hi = push_backoff(1000, 600000, 1, 0.999999);
    assert_true(hi >= 1199 && hi <= 1200);
    assert_int_equal(push_backoff(1000, 600000, 3, 0.0), 3200);
    assert_int_equal(push_backoff(1000, 600000, 30, 0.999), 600000);
    assert_int_equal(push_backoff(1000, 600000, 30, 0.0), 480000);
    /* The test settings: 100 ms base. */
    assert_int_equal(push_backoff(100, 2000, 1, 0.5), 100);
    assert_int_equal(push_backoff(100, 2000, 6, 0.5), 2000);
}

/* ---- eligibility ---- */

static void prefs(msg_nprefs *p, const char *json)
{
    msg_nprefs_default(p);
    static json_val obj;
    static char buf[512];
    snprintf(buf, sizeof buf, "%s", json);
    assert_int_equal(json_parse(buf, strlen(buf), 4, &obj, NULL), 0);
    unsigned given;
    msg_error err;
    assert_int_equal(msg_parse_nprefs(&obj, p, &given, &err), MSG_OK);
}

static void notif(msg_notification *n, msg_ntype type, msg_priority prio, const char *from)
{
    memset(n, 0, sizeof *n);
    n->id = 7;
    snprintf(n->to, sizeof n->to, "bob");
    n->type = type;
    n->priority = prio;
    snprintf(n->title, sizeof n->title, "t");
    snprintf(n->from, sizeof n->from, "%s", from);
    n->expires = -1;
}

static void test_eligible(void **state)
{
    (void)state;
    msg_nprefs p;
    msg_notification n;
    notif(&n, MSG_NT_ALERT, MSG_PRIO_NORMAL, "amy");
    /* Default: push on. */
    msg_nprefs_default(&p);
    assert_true(p.push);
    assert_true(push_eligible(&p, &n, NULL, false, false, T0));
    /* A connected device: no push. */
    assert_false(push_eligible(&p, &n, NULL, false, true, T0));
    /* push:false. */
    prefs(&p, "{\"push\":false}");
    assert_false(push_eligible(&p, &n, NULL, false, false, T0));
    /* in_app:false does not block push. */
    prefs(&p, "{\"in_app\":false}");
    assert_true(push_eligible(&p, &n, NULL, false, false, T0));
    /* Muted sender. */
    prefs(&p, "{\"muted_users\":[\"amy\"]}");
    assert_false(push_eligible(&p, &n, NULL, false, false, T0));
    notif(&n, MSG_NT_ALERT, MSG_PRIO_NORMAL, ""); /* the HTTP API: no sender */
    assert_true(push_eligible(&p, &n, NULL, false, false, T0));
    /* Muted room: message and mention only. */
    prefs(&p, "{\"muted_rooms\":[\"lobby\"]}");
    notif(&n, MSG_NT_MENTION, MSG_PRIO_HIGH, "amy");
    assert_false(push_eligible(&p, &n, "lobby", false, false, T0));
    assert_true(push_eligible(&p, &n, "other", false, false, T0));
    notif(&n, MSG_NT_MESSAGE, MSG_PRIO_HIGH, "amy");
    assert_false(push_eligible(&p, &n, "lobby", false, false, T0));
    notif(&n, MSG_NT_ALERT, MSG_PRIO_HIGH, "amy");
    assert_true(push_eligible(&p, &n, "lobby", false, false, T0));
    /* Type off. */
    prefs(&p, "{\"types\":{\"alert\":false}}");
    assert_false(push_eligible(&p, &n, NULL, false, false, T0));
    notif(&n, MSG_NT_REMINDER, MSG_PRIO_HIGH, "amy");
    assert_true(push_eligible(&p, &n, NULL, false, false, T0));
    /* Quiet hours: below min_priority (default urgent) held, urgent passes. */
    msg_nprefs_default(&p);
    assert_false(push_eligible(&p, &n, NULL, true, false, T0));
    notif(&n, MSG_NT_REMINDER, MSG_PRIO_URGENT, "amy");
    assert_true(push_eligible(&p, &n, NULL, true, false, T0));
    /* Expired: never. */
    n.expires = T0;
    assert_false(push_eligible(&p, &n, NULL, false, false, T0));
    n.expires = T0 + 1;
    assert_true(push_eligible(&p, &n, NULL, false, false, T0));
}

static void test_url_rule(void **state)
{
    (void)state;
    char err[320];
    assert_int_equal(push_check_url("https://push.example.com/hook", err, sizeof err), 0);
    assert_int_equal(push_check_url("https://10.0.0.1:8443/", err, sizeof err), 0);
    assert_int_equal(push_check_url("http://127.0.0.1:9000/hook", err, sizeof err), 0);
    assert_int_equal(push_check_url("http://127.5.5.5/", err, sizeof err), 0);
    assert_int_equal(push_check_url("http://[::1]:9000/", err, sizeof err), 0);
    assert_int_equal(push_check_url("http://push.example.com/hook", err, sizeof err), PARLEY_EURL);
    assert_non_null(strstr(err, "loopback"));
    assert_int_equal(push_check_url("http://localhost/", err, sizeof err), PARLEY_EURL);
    assert_int_equal(push_check_url("http://10.0.0.1/", err, sizeof err), PARLEY_EURL);
    assert_int_equal(push_check_url("ws://127.0.0.1/", err, sizeof err), PARLEY_EURL);
    assert_int_equal(push_check_url("not a url", err, sizeof err), PARLEY_EURL);
    assert_int_equal(push_check_url("https://user:pw@x/", err, sizeof err), PARLEY_EURL);
}

/* ---- the outbox in the store ---- */

#include "store_scratch.h"

#define scratch_init(s) scratch_init_tag((s), "push")

typedef struct rows {
    mstore_push_row r[16];
    unsigned n;
} rows;

static int64_t add_notif(mstore *st, const char *to)
{
    msg_notification n;
    notif(&n, MSG_NT_ALERT, MSG_PRIO_NORMAL, "amy");
    snprintf(n.to, sizeof n.to, "%s", to);
    assert_int_equal(mstore_notif_insert(st, &n, T0), 0);
    return n.id;
}

static int64_t user_version(mstore *st)
{
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(mstore__db(st), "PRAGMA user_version", -1, &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return v;
}

/* A schema-4 database (5 adds presence_invisible, 6 the outbox) with a
 * notification in it opens as version 6, keeps its data, and queues. */
static void test_migration_v4(void **state)
{
    (void)state;
    scratch sc;
    scratch_init(&sc);
    mstore *st = open_store(sc.path);
    int64_t n1 = add_notif(st, "bob");
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(sc.path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db,
                     "DROP TABLE push_outbox; DROP TABLE presence_invisible;"
                     " PRAGMA user_version = 4;",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);

    st = open_store(sc.path);
    assert_int_equal(user_version(st), 6);
    msg_notification got;
    assert_int_equal(mstore_notif_get(st, n1, &got), 1);
    assert_int_equal(mstore_push_count(st), 0);
    int64_t id;
    assert_int_equal(mstore_push_add(st, n1, "bob", T0, &id), 0);
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);
    st = open_store(sc.path);
    assert_int_equal(user_version(st), 6);
    assert_int_equal(mstore_push_count(st), 1);
    mstore_close(st);
    scratch_free(&sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_rfc4231), cmocka_unit_test(test_sign_format),
        cmocka_unit_test(test_backoff),      cmocka_unit_test(test_eligible),
        cmocka_unit_test(test_url_rule),
        cmocka_unit_test(test_migration_v4),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
