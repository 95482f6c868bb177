/* Unit tests for presence below the service: the wire schema (presence_set,
 * the user lists of presence_subscribe / presence_unsubscribe, the
 * Presence object both ways) with each documented error, and the store
 * (last seen and status text per user, in the batch, across reopening,
 * and the migration of a version 1 database). */
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

#include "base/buf.h"
#include "codec/json.h"
#include "parley/parley.h"
#include "services/msg_schema.h"
#include "services/store/mstore.h"

static json_val obj_of(const char *s)
{
    json_val v;
    assert_int_equal(json_parse(s, strlen(s), 32, &v, NULL), 0);
    return v;
}

/* presence_set: the error code, and the field at fault. */
static msg_errcode set_rc(const char *s, msg_pstatus *st, bool *has_text,
                          char text[MSG_PRESENCE_TEXT_MAX + 1], msg_error *err)
{
    json_val v = obj_of(s);
    memset(err, 0, sizeof *err);
    int inv;
    msg_errcode rc = msg_parse_presence_set(&v, st, has_text, text, &inv, err);
    assert_int_equal(rc, err->code);
    return rc;
}

static void expect_set_error(const char *s, msg_errcode code, const char *field)
{
    msg_pstatus st;
    bool has_text;
    char text[MSG_PRESENCE_TEXT_MAX + 1];
    msg_error err;
    assert_int_equal(set_rc(s, &st, &has_text, text, &err), code);
    assert_string_equal(err.field, field);
    assert_true(err.message[0] != 0);
}

static void test_presence_set(void **state)
{
    (void)state;
    msg_pstatus st;
    bool has_text;
    char text[MSG_PRESENCE_TEXT_MAX + 1];
    msg_error err;
    assert_int_equal(set_rc("{\"status\":\"busy\"}", &st, &has_text, text, &err), MSG_OK);
    assert_int_equal(st, MSG_PS_BUSY);
    assert_false(has_text);
    assert_int_equal(
        set_rc("{\"text\":\"at lunch \\u00e9\",\"status\":\"away\"}", &st, &has_text, text, &err),
        MSG_OK);
    assert_int_equal(st, MSG_PS_AWAY);
    assert_true(has_text);
    assert_string_equal(text, "at lunch \xc3\xa9");
    assert_int_equal(set_rc("{\"status\":\"online\",\"text\":\"\"}", &st, &has_text, text, &err),
                     MSG_OK);
    assert_int_equal(st, MSG_PS_ONLINE);
    assert_true(has_text);
    assert_string_equal(text, "");

    /* 128 UTF-8 bytes pass (64 two-byte characters, escaped or not); 129 do not. */
    char buf[1024];
    pbuf b = {0};
    pbuf_append_str(&b, "{\"status\":\"online\",\"text\":\"");
    for (int i = 0; i < 64; i++) pbuf_append_str(&b, i % 2 ? "\\u00e9" : "\xc3\xa9");
    pbuf_append_str(&b, "\"}");
    pbuf_append(&b, "", 1);
    assert_int_equal(set_rc((char *)b.ptr, &st, &has_text, text, &err), MSG_OK);
    assert_int_equal(strlen(text), 128);
    snprintf(buf, sizeof buf, "{\"status\":\"online\",\"text\":\"%0129d\"}", 0);
    expect_set_error(buf, MSG_E_TOO_LARGE, "text");
    snprintf(buf, sizeof buf, "{\"status\":\"online\",\"text\":\"%0128d\"}", 0);
    assert_int_equal(set_rc(buf, &st, &has_text, text, &err), MSG_OK);
    pbuf_free(&b);

    expect_set_error("{}", MSG_E_MISSING_FIELD, "status");
    expect_set_error("{\"status\":\"offline\"}", MSG_E_INVALID_FIELD, "status");
    expect_set_error("{\"status\":\"sleeping\"}", MSG_E_INVALID_FIELD, "status");
    expect_set_error("{\"status\":\"Online\"}", MSG_E_INVALID_FIELD, "status");
    expect_set_error("{\"status\":\"online\\u0000\"}", MSG_E_INVALID_FIELD, "status");
    expect_set_error("{\"status\":1}", MSG_E_INVALID_FIELD, "status");
    expect_set_error("{\"status\":\"online\",\"text\":null}", MSG_E_INVALID_FIELD, "text");
    expect_set_error("{\"status\":\"online\",\"text\":\"a\\nb\"}", MSG_E_INVALID_FIELD, "text");
    expect_set_error("{\"status\":\"online\",\"text\":\"a\\u0000b\"}", MSG_E_INVALID_FIELD, "text");
    expect_set_error("{\"status\":\"online\",\"mood\":\"x\"}", MSG_E_UNKNOWN_FIELD, "mood");
    expect_set_error("{\"status\":\"online\",\"status\":\"busy\"}", MSG_E_INVALID_FIELD, "status");
    expect_set_error("{\"status\":\"online\",\"user\":\"x\"}", MSG_E_UNKNOWN_FIELD, "user");
    expect_set_error("{\"status\":\"online\",\"from\":\"x\"}", MSG_E_SENDER_FORBIDDEN, "from");
    expect_set_error("[]", MSG_E_BAD_REQUEST, "");
}

/* presence_set's invisible ("appear offline"). */
static msg_errcode inv_rc(const char *s, msg_pstatus *st, int *inv, msg_error *err)
{
    json_val v = obj_of(s);
    bool has_text;
    char text[MSG_PRESENCE_TEXT_MAX + 1];
    memset(err, 0, sizeof *err);
    return msg_parse_presence_set(&v, st, &has_text, text, inv, err);
}

static void test_presence_set_invisible(void **state)
{
    (void)state;
    msg_pstatus st;
    int inv;
    msg_error err;
    assert_int_equal(inv_rc("{\"invisible\":true}", &st, &inv, &err), MSG_OK);
    assert_int_equal(inv, 1);
    assert_int_equal(st, MSG_PS_OFFLINE); /* not given: the device keeps its own */
    assert_int_equal(inv_rc("{\"invisible\":false,\"status\":\"busy\"}", &st, &inv, &err), MSG_OK);
    assert_int_equal(inv, 0);
    assert_int_equal(st, MSG_PS_BUSY);
    assert_int_equal(inv_rc("{\"status\":\"away\"}", &st, &inv, &err), MSG_OK);
    assert_int_equal(inv, -1);
    assert_int_equal(st, MSG_PS_AWAY);
    static const char *const bad[] = {"{\"invisible\":1}", "{\"invisible\":\"true\"}",
                                      "{\"invisible\":null}", "{\"invisible\":[]}",
                                      "{\"status\":\"online\",\"invisible\":0}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(inv_rc(bad[i], &st, &inv, &err), MSG_E_INVALID_FIELD);
        assert_string_equal(err.field, "invisible");
    }
    assert_int_equal(inv_rc("{\"invisible\":true,\"invisible\":false}", &st, &inv, &err),
                     MSG_E_INVALID_FIELD);
    assert_int_equal(inv_rc("{\"invisible\":true,\"status\":\"offline\"}", &st, &inv, &err),
                     MSG_E_INVALID_FIELD);
    assert_string_equal(err.field, "status");
    /* Without a place for it (the client's own check), an unknown member. */
    json_val v = obj_of("{\"invisible\":true}");
    bool has_text;
    char text[MSG_PRESENCE_TEXT_MAX + 1];
    assert_int_equal(msg_parse_presence_set(&v, &st, &has_text, text, NULL, &err),
                     MSG_E_UNKNOWN_FIELD);

    /* The Presence object carries it only when on, and reads it back. */
    msg_presence p = {
        .user = "amy", .status = MSG_PS_ONLINE, .last_seen = 5, .devices = 2, .invisible = true};
    pbuf b = {0};
    assert_int_equal(msg_encode_presence(&b, &p), 0);
    pbuf_append(&b, "", 1);
    assert_non_null(strstr((char *)b.ptr, "\"invisible\":true"));
    msg_presence back;
    v = obj_of((char *)b.ptr);
    assert_int_equal(msg_parse_presence(&v, &back, &err), MSG_OK);
    assert_true(back.invisible);
    p.invisible = false;
    b.len = 0;
    assert_int_equal(msg_encode_presence(&b, &p), 0);
    pbuf_append(&b, "", 1);
    assert_null(strstr((char *)b.ptr, "invisible"));
    pbuf_free(&b);
}

static msg_errcode users_rc(const char *s, char users[MSG_PRESENCE_USERS_MAX][MSG_USER_MAX + 1],
                            size_t *n, msg_error *err)
{
    json_val v = obj_of(s);
    memset(err, 0, sizeof *err);
    return msg_parse_presence_users(&v, users, n, err);
}

static void test_presence_users(void **state)
{
    (void)state;
    static char users[MSG_PRESENCE_USERS_MAX][MSG_USER_MAX + 1];
    size_t n = 99;
    msg_error err;
    assert_int_equal(users_rc("{\"users\":[\"amy\",\"b.o-b@x\",\"amy\"]}", users, &n, &err),
                     MSG_OK);
    assert_int_equal(n, 3);
    assert_string_equal(users[0], "amy");
    assert_string_equal(users[1], "b.o-b@x");
    assert_string_equal(users[2], "amy"); /* repeats are kept: harmless */

    pbuf b = {0};
    for (int count = 100; count <= 101; count++) {
        b.len = 0;
        pbuf_append_str(&b, "{\"users\":[");
        for (int i = 0; i < count; i++) pbuf_appendf(&b, "%s\"u%d\"", i ? "," : "", i);
        pbuf_append_str(&b, "]}");
        pbuf_append(&b, "", 1);
        msg_errcode rc = users_rc((char *)b.ptr, users, &n, &err);
        if (count == 100) {
            assert_int_equal(rc, MSG_OK);
            assert_int_equal(n, 100);
            assert_string_equal(users[99], "u99");
        } else {
            assert_int_equal(rc, MSG_E_TOO_LARGE);
            assert_string_equal(err.field, "users");
            assert_int_equal(n, 0);
        }
    }
    pbuf_free(&b);
    static const struct {
        const char *in;
        msg_errcode code;
        const char *field;
    } bad[] = {
        {"{}", MSG_E_MISSING_FIELD, "users"},
        {"{\"users\":[]}", MSG_E_INVALID_FIELD, "users"},
        {"{\"users\":\"amy\"}", MSG_E_INVALID_FIELD, "users"},
        {"{\"users\":[\"amy\",\"not valid\"]}", MSG_E_INVALID_FIELD, "users"},
        {"{\"users\":[\"amy\",7]}", MSG_E_INVALID_FIELD, "users"},
        {"{\"users\":[\"\"]}", MSG_E_INVALID_FIELD, "users"},
        {"{\"users\":[\"amy\"],\"room\":\"x\"}", MSG_E_UNKNOWN_FIELD, "room"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(users_rc(bad[i].in, users, &n, &err), bad[i].code);
        assert_string_equal(err.field, bad[i].field);
        assert_int_equal(n, 0);
    }
    /* 65 bytes: one over the user id limit. */
    char buf[256];
    snprintf(buf, sizeof buf, "{\"users\":[\"%065d\"]}", 0);
    assert_int_equal(users_rc(buf, users, &n, &err), MSG_E_INVALID_FIELD);
}

static void test_presence_object(void **state)
{
    (void)state;
    msg_presence p = {.status = MSG_PS_AWAY, .last_seen = 1767225600123LL, .devices = 2};
    snprintf(p.user, sizeof p.user, "amy");
    snprintf(p.text, sizeof p.text, "say \"hi\" \xc3\xa9");
    pbuf b = {0};
    assert_int_equal(msg_encode_presence(&b, &p), 0);
    static const char want[] = "{\"user\":\"amy\",\"status\":\"away\",\"text\":\"say \\\"hi\\\" "
                               "\xc3\xa9\",\"last_seen\":1767225600123,\"devices\":2}";
    assert_int_equal(b.len, sizeof want - 1);
    assert_memory_equal(b.ptr, want, b.len);
    json_val v;
    assert_int_equal(json_parse((char *)b.ptr, b.len, 8, &v, NULL), 0);
    msg_presence q;
    msg_error err;
    assert_int_equal(msg_parse_presence(&v, &q, &err), MSG_OK);
    assert_memory_equal(&p, &q, sizeof p);

    /* Never seen: last_seen is null, and reads back as -1. */
    msg_presence off = {.status = MSG_PS_OFFLINE, .last_seen = -1};
    snprintf(off.user, sizeof off.user, "bob");
    b.len = 0;
    assert_int_equal(msg_encode_presence(&b, &off), 0);
    static const char want2[] =
        "{\"user\":\"bob\",\"status\":\"offline\",\"text\":\"\",\"last_seen\":null,\"devices\":0}";
    assert_int_equal(b.len, sizeof want2 - 1);
    assert_memory_equal(b.ptr, want2, b.len);
    assert_int_equal(json_parse((char *)b.ptr, b.len, 8, &v, NULL), 0);
    assert_int_equal(msg_parse_presence(&v, &q, &err), MSG_OK);
    assert_int_equal(q.last_seen, -1);
    assert_int_equal(q.status, MSG_PS_OFFLINE);

    /* From the server, unknown members are skipped; bad values are not. */
    v = obj_of("{\"user\":\"c\",\"status\":\"busy\",\"text\":\"\",\"last_seen\":5,\"devices\":1,"
               "\"mood\":\"new in v2\"}");
    assert_int_equal(msg_parse_presence(&v, &q, &err), MSG_OK);
    assert_int_equal(q.status, MSG_PS_BUSY);
    v = obj_of("{\"user\":\"c\",\"status\":\"gone\",\"text\":\"\",\"last_seen\":5,\"devices\":1}");
    assert_int_equal(msg_parse_presence(&v, &q, &err), MSG_E_INVALID_FIELD);
    v = obj_of("{\"user\":\"c\",\"status\":\"busy\",\"text\":\"\",\"last_seen\":-5,\"devices\":1}");
    assert_int_equal(msg_parse_presence(&v, &q, &err), MSG_E_INVALID_FIELD);
    v = obj_of("{\"user\":\"c\",\"status\":\"busy\",\"text\":\"\",\"devices\":1}");
    assert_int_equal(msg_parse_presence(&v, &q, &err), MSG_E_MISSING_FIELD);
    assert_string_equal(err.field, "last_seen");
    /* An out-of-range status is not encoded. */
    p.status = (msg_pstatus)9;
    assert_int_equal(msg_encode_presence(&b, &p), PARLEY_EINVAL);
    assert_null(msg_pstatus_name((msg_pstatus)4));
    assert_int_equal(msg_pstatus_from_name("online", 6), MSG_PS_ONLINE);
    assert_int_equal(msg_pstatus_from_name("onlin", 5), -1);
    /* Availability order, which the aggregation relies on. */
    assert_true(MSG_PS_ONLINE > MSG_PS_AWAY && MSG_PS_AWAY > MSG_PS_BUSY &&
                MSG_PS_BUSY > MSG_PS_OFFLINE);
    pbuf_free(&b);
}

/* ---- store ---- */

#include "store_scratch.h"

#define scratch_init(s) scratch_init_tag((s), "presence")

/* A database written by the version before presence (schema 1) is
 * migrated when opened: its messages stay, the presence table appears. */
static void test_store_migration(void **state)
{
    (void)state;
    scratch sc;
    scratch_init(&sc);
    mstore *st = open_store(sc.path);
    msg_conv c;
    msg_conv_dm(&c, "amy", "bob");
    static const char content[] = "{\"text\":\"hi\"}";
    mstore_msg m;
    assert_int_equal(mstore_insert(st, &c, "amy", "c1", MSG_TEXT, MSG_PRIO_NORMAL, content,
                                   sizeof content - 1, NULL, NULL, 1000, &m),
                     0);
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);
    /* Back to what version 1 wrote. */
    sqlite3 *db;
    assert_int_equal(sqlite3_open(sc.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "DROP TABLE presence; DROP TABLE notifications; DROP TABLE "
                                  "notification_prefs; PRAGMA user_version = 1;",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);

    st = open_store(sc.path);
    assert_int_equal(mstore_find(st, "amy", "c1", &m), 1);
    int64_t seen;
    char text[MSG_PRESENCE_TEXT_MAX + 1];
    assert_int_equal(mstore_presence_get(st, "amy", &seen, text), 0);
    assert_int_equal(mstore_presence_seen(st, "amy", 42), 0);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_presence_get(st, "amy", &seen, text), 1);
    assert_int_equal(seen, 42);
    mstore_close(st);
    assert_int_equal(sqlite3_open(sc.path, &db), SQLITE_OK);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(q, 0), 6); /* and on through 2 -> ... -> 6 */
    sqlite3_finalize(q);
    sqlite3_close(db);
    scratch_free(&sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_presence_set),   cmocka_unit_test(test_presence_set_invisible),
        cmocka_unit_test(test_presence_users), cmocka_unit_test(test_presence_object), cmocka_unit_test(test_store_migration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
