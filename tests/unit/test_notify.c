/* Unit tests for notifications below the service: the wire schema (the
 * notify request with every field limit and its error code and field,
 * the Notification and Preferences objects, notifications_sync and
 * notifications_read), and the store (insert, dedupe against unexpired
 * rows only, listing, unread counts, delivered and read marks, the expiry
 * sweep, preferences, rows checked when read back, migration 2 -> 3). */
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

#define NOW 1767225600000LL

static json_val obj_of(const char *s)
{
    json_val v;
    assert_int_equal(json_parse(s, strlen(s), 32, &v, NULL), 0);
    return v;
}

static msg_notification *parse_ok(const char *s)
{
    static msg_notification n;
    msg_error err;
    json_val v = obj_of(s);
    assert_int_equal(msg_parse_notify(&v, NOW, &n, &err), MSG_OK);
    return &n;
}

static void expect_notify_error(const char *s, msg_errcode code, const char *field)
{
    msg_notification *n = malloc(sizeof *n);
    msg_error err;
    memset(&err, 0, sizeof err);
    json_val v = obj_of(s);
    msg_errcode rc = msg_parse_notify(&v, NOW, n, &err);
    if (rc != code || strcmp(err.field, field) != 0)
        fail_msg("%s: got %s field '%s' (%s), want %s field '%s'", s, msg_errcode_name(rc),
                 err.field, err.message, msg_errcode_name(code), field);
    assert_true(err.message[0] != 0);
    free(n);
}

/* A JSON string literal of n copies of c. */
static char *str_of(size_t n, char c)
{
    char *s = malloc(n + 3);
    s[0] = '"';
    memset(s + 1, c, n);
    s[n + 1] = '"';
    s[n + 2] = 0;
    return s;
}

static void expect_field_len(const char *field, const char *prefix, size_t ok_len, msg_errcode over,
                             const char *err_field)
{
    char *good = str_of(ok_len, 'a'), *bad = str_of(ok_len + 1, 'a');
    size_t cap = strlen(prefix) + ok_len + 200;
    char *s = malloc(cap);
    snprintf(s, cap, "{\"to\":\"bob\",\"type\":\"alert\",%s\"%s\":%s}", prefix, field, good);
    msg_error err;
    json_val v = obj_of(s);
    msg_notification *n = malloc(sizeof *n);
    assert_int_equal(msg_parse_notify(&v, NOW, n, &err), MSG_OK);
    snprintf(s, cap, "{\"to\":\"bob\",\"type\":\"alert\",%s\"%s\":%s}", prefix, field, bad);
    expect_notify_error(s, over, err_field);
    free(n);
    free(s);
    free(good);
    free(bad);
}

static void test_notify_parse(void **state)
{
    (void)state;
    msg_notification *n = parse_ok("{\"to\":\"bob\",\"type\":\"mention\",\"title\":\"T\"}");
    assert_string_equal(n->to, "bob");
    assert_int_equal(n->type, MSG_NT_MENTION);
    assert_int_equal(n->priority, MSG_PRIO_NORMAL);
    assert_string_equal(n->title, "T");
    assert_string_equal(n->body, "");
    assert_string_equal(n->image, "");
    assert_int_equal(n->nactions, 0);
    assert_int_equal(n->expires, -1);
    assert_string_equal(n->dedupe, "");
    n = parse_ok("{\"to\":\"bob\",\"type\":\"alert\",\"priority\":\"urgent\",\"title\":\"\\u00e9\","
                 "\"body\":\"b\",\"image\":\"HTTPS://h/x.png\",\"actions\":[{\"id\":\"a.b-c_1\","
                 "\"label\":\"L\"}],\"expires_at\":1767225600001,\"dedupe_key\":\"k\"}");
    assert_int_equal(n->priority, MSG_PRIO_URGENT);
    assert_string_equal(n->title, "\xc3\xa9");
    assert_string_equal(n->image, "HTTPS://h/x.png");
    assert_int_equal(n->nactions, 1);
    assert_string_equal(n->actions[0].id, "a.b-c_1");
    assert_int_equal(n->expires, NOW + 1);
    assert_string_equal(n->dedupe, "k");
    n = parse_ok("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"image\":null}");
    assert_string_equal(n->image, "");
    static const char *const types[] = {"message", "mention",     "assignment", "deadline",
                                        "system",  "achievement", "reminder",   "alert"};
    for (int t = 0; t < 8; t++) {
        char s[128];
        snprintf(s, sizeof s, "{\"to\":\"bob\",\"type\":\"%s\",\"title\":\"t\"}", types[t]);
        assert_int_equal(parse_ok(s)->type, t + 1);
        assert_string_equal(msg_ntype_name((msg_ntype)(t + 1)), types[t]);
    }
    assert_null(msg_ntype_name((msg_ntype)0));
    assert_null(msg_ntype_name((msg_ntype)9));

    expect_notify_error("[]", MSG_E_BAD_REQUEST, "");
    /* A repeated member is invalid_field, named (POST /api/notifications
     * and notify share this parser). */
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"a\",\"title\":\"b\"}",
                        MSG_E_INVALID_FIELD, "title");
    expect_notify_error("{\"to\":\"bob\",\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\"}",
                        MSG_E_INVALID_FIELD, "to");
    expect_notify_error("{\"type\":\"alert\",\"title\":\"t\"}", MSG_E_MISSING_FIELD, "to");
    expect_notify_error("{\"to\":\"bob\",\"title\":\"t\"}", MSG_E_MISSING_FIELD, "type");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\"}", MSG_E_MISSING_FIELD, "title");
    expect_notify_error("{\"to\":\"b b\",\"type\":\"alert\",\"title\":\"t\"}", MSG_E_INVALID_FIELD,
                        "to");
    expect_notify_error("{\"to\":7,\"type\":\"alert\",\"title\":\"t\"}", MSG_E_INVALID_FIELD, "to");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"text\",\"title\":\"t\"}", MSG_E_INVALID_FIELD,
                        "type");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"priority\":\"max\",\"title\":\"t\"}",
                        MSG_E_INVALID_FIELD, "priority");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"\"}", MSG_E_INVALID_FIELD,
                        "title");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":1}", MSG_E_INVALID_FIELD,
                        "title");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"a\\u0000\"}",
                        MSG_E_INVALID_FIELD, "title");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"body\":null}",
                        MSG_E_INVALID_FIELD, "body");
    expect_notify_error(
        "{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"image\":\"ftp://h/\"}",
        MSG_E_INVALID_FIELD, "image");
    expect_notify_error(
        "{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"image\":\"http:///x\"}",
        MSG_E_INVALID_FIELD, "image");
    expect_notify_error(
        "{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"image\":\"http://a b\"}",
        MSG_E_INVALID_FIELD, "image");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"image\":\"\"}",
                        MSG_E_INVALID_FIELD, "image");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"actions\":{}}",
                        MSG_E_INVALID_FIELD, "actions");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"actions\":[1]}",
                        MSG_E_INVALID_FIELD, "actions[0]");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"actions\":[{"
                        "\"label\":\"x\"}]}",
                        MSG_E_MISSING_FIELD, "actions[0].id");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"actions\":[{"
                        "\"id\":\"a\"}]}",
                        MSG_E_MISSING_FIELD, "actions[0].label");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"actions\":[{"
                        "\"id\":\"a\",\"label\":\"x\"},{\"id\":\"a/b\",\"label\":\"x\"}]}",
                        MSG_E_INVALID_FIELD, "actions[1].id");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"actions\":[{"
                        "\"id\":\"a\",\"label\":\"x\"},{\"id\":\"a\",\"label\":\"y\"}]}",
                        MSG_E_INVALID_FIELD, "actions[1].id");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"actions\":[{"
                        "\"id\":\"a\",\"label\":\"\"}]}",
                        MSG_E_INVALID_FIELD, "actions[0].label");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"actions\":[{"
                        "\"id\":\"a\",\"label\":\"x\",\"url\":\"u\"}]}",
                        MSG_E_UNKNOWN_FIELD, "actions[0].url");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"actions\":["
                        "{\"id\":\"a\",\"label\":\"x\"},{\"id\":\"b\",\"label\":\"x\"},{\"id\":"
                        "\"c\",\"label\":\"x\"},{\"id\":\"d\",\"label\":\"x\"},{\"id\":\"e\","
                        "\"label\":\"x\"},{\"id\":\"f\",\"label\":\"x\"}]}",
                        MSG_E_TOO_LARGE, "actions");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"expires_at\":"
                        "1767225600000}",
                        MSG_E_INVALID_FIELD, "expires_at");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"expires_at\":1.5}",
                        MSG_E_INVALID_FIELD, "expires_at");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"dedupe_key\":\"\"}",
                        MSG_E_INVALID_FIELD, "dedupe_key");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"x\":1}",
                        MSG_E_UNKNOWN_FIELD, "x");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"title\":\"u\"}",
                        MSG_E_INVALID_FIELD, "title");
    expect_notify_error("{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"from\":\"eve\"}",
                        MSG_E_SENDER_FORBIDDEN, "from");
    /* Limits, exactly: the largest accepted and one byte more. */
    expect_field_len("title", "", MSG_NOTIF_TITLE_MAX, MSG_E_TOO_LARGE, "title");
    expect_field_len("body", "\"title\":\"t\",", MSG_NOTIF_BODY_MAX, MSG_E_TOO_LARGE, "body");
    expect_field_len("dedupe_key", "\"title\":\"t\",", MSG_NOTIF_DEDUPE_MAX, MSG_E_TOO_LARGE,
                     "dedupe_key");
    char *label = str_of(MSG_NOTIF_ACTION_LABEL_MAX, 'l'),
         *id = str_of(MSG_NOTIF_ACTION_ID_MAX, 'i');
    char s[512];
    snprintf(s, sizeof s,
             "{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"actions\":[{\"id\":%s,"
             "\"label\":%s}]}",
             id, label);
    assert_int_equal(parse_ok(s)->nactions, 1);
    free(label);
    free(id);
    label = str_of(MSG_NOTIF_ACTION_LABEL_MAX + 1, 'l');
    snprintf(s, sizeof s,
             "{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"actions\":[{\"id\":\"a\","
             "\"label\":%s}]}",
             label);
    expect_notify_error(s, MSG_E_TOO_LARGE, "actions[0].label");
    free(label);
    id = str_of(MSG_NOTIF_ACTION_ID_MAX + 1, 'i');
    snprintf(s, sizeof s,
             "{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"actions\":[{\"id\":%s,"
             "\"label\":\"x\"}]}",
             id);
    expect_notify_error(s, MSG_E_INVALID_FIELD, "actions[0].id");
    free(id);
    /* image: 2048 bytes of URL accepted, 2049 too large. */
    char *img = malloc(MSG_NOTIF_IMAGE_MAX + 200);
    size_t pre = strlen("http://h/");
    static const char head[] =
        "{\"to\":\"bob\",\"type\":\"alert\",\"title\":\"t\",\"image\":\"http://h/";
    memcpy(img, head, sizeof head - 1);
    size_t off = sizeof head - 1;
    memset(img + off, 'x', MSG_NOTIF_IMAGE_MAX - pre);
    strcpy(img + off + MSG_NOTIF_IMAGE_MAX - pre, "\"}");
    assert_int_equal(strlen(parse_ok(img)->image), MSG_NOTIF_IMAGE_MAX);
    memset(img + off, 'x', MSG_NOTIF_IMAGE_MAX - pre + 1);
    strcpy(img + off + MSG_NOTIF_IMAGE_MAX - pre + 1, "\"}");
    expect_notify_error(img, MSG_E_TOO_LARGE, "image");
    free(img);
}

static void test_notification_encode(void **state)
{
    (void)state;
    msg_notification *n =
        parse_ok("{\"to\":\"bob\",\"type\":\"deadline\",\"title\":\"T \\\"q\\\"\",\"body\":\"b\","
                 "\"actions\":[{\"id\":\"o\",\"label\":\"Open\"}],\"expires_at\":1767225660000,"
                 "\"dedupe_key\":\"d\"}");
    n->id = 7;
    n->created = NOW;
    snprintf(n->from, sizeof n->from, "ann");
    n->delivered = true;
    pbuf b = {0};
    assert_int_equal(msg_encode_notification(&b, n), 0);
    assert_int_equal(pbuf_append(&b, "", 1), 0);
    assert_string_equal((char *)b.ptr,
                        "{\"id\":7,\"type\":\"deadline\",\"priority\":\"normal\",\"title\":\"T "
                        "\\\"q\\\"\",\"body\":\"b\",\"image\":null,\"actions\":[{\"id\":\"o\","
                        "\"label\":\"Open\"}],\"from\":\"ann\",\"created\":1767225600000,"
                        "\"expires\":1767225660000,\"dedupe_key\":\"d\",\"delivered\":true,"
                        "\"read\":false}");
    b.len = 0;
    n->from[0] = n->dedupe[0] = 0;
    n->expires = -1;
    n->nactions = 0;
    snprintf(n->image, sizeof n->image, "https://i/");
    assert_int_equal(msg_encode_notification(&b, n), 0);
    assert_int_equal(pbuf_append(&b, "", 1), 0);
    assert_non_null(strstr((char *)b.ptr, "\"image\":\"https://i/\",\"actions\":[],\"from\":null"));
    assert_non_null(strstr((char *)b.ptr, "\"expires\":null,\"dedupe_key\":null"));
    n->type = (msg_ntype)0;
    assert_int_equal(msg_encode_notification(&b, n), PARLEY_EINVAL);
    pbuf_free(&b);
}

static msg_errcode sync_rc(const char *s, int64_t *since, unsigned *limit, msg_error *err)
{
    json_val v = obj_of(s);
    memset(err, 0, sizeof *err);
    return msg_parse_nsync(&v, since, limit, err);
}

static msg_errcode read_rc(const char *s, int64_t *ids, size_t *n, bool *all, msg_error *err)
{
    json_val v = obj_of(s);
    memset(err, 0, sizeof *err);
    return msg_parse_nread(&v, ids, n, all, err);
}

static void test_sync_read(void **state)
{
    (void)state;
    int64_t since;
    unsigned limit;
    msg_error err;
    assert_int_equal(sync_rc("{}", &since, &limit, &err), MSG_OK);
    assert_int_equal(since, 0);
    assert_int_equal(limit, 100);
    assert_int_equal(sync_rc("{\"since\":5,\"limit\":500}", &since, &limit, &err), MSG_OK);
    assert_int_equal(since, 5);
    assert_int_equal(limit, 500);
    assert_int_equal(sync_rc("{\"limit\":1}", &since, &limit, &err), MSG_OK);
    assert_int_equal(sync_rc("{\"limit\":501}", &since, &limit, &err), MSG_E_INVALID_FIELD);
    assert_string_equal(err.field, "limit");
    assert_int_equal(sync_rc("{\"limit\":0}", &since, &limit, &err), MSG_E_INVALID_FIELD);
    assert_int_equal(sync_rc("{\"since\":-1}", &since, &limit, &err), MSG_E_INVALID_FIELD);
    assert_string_equal(err.field, "since");
    assert_int_equal(sync_rc("{\"since\":\"1\"}", &since, &limit, &err), MSG_E_INVALID_FIELD);
    assert_int_equal(sync_rc("{\"x\":1}", &since, &limit, &err), MSG_E_UNKNOWN_FIELD);
    assert_int_equal(sync_rc("[]", &since, &limit, &err), MSG_E_BAD_REQUEST);

    int64_t ids[MSG_NOTIF_READ_MAX];
    size_t n;
    bool all;
    assert_int_equal(read_rc("{\"ids\":[3,1]}", ids, &n, &all, &err), MSG_OK);
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 3);
    assert_false(all);
    assert_int_equal(read_rc("{\"all\":true}", ids, &n, &all, &err), MSG_OK);
    assert_true(all);
    assert_int_equal(read_rc("{}", ids, &n, &all, &err), MSG_E_MISSING_FIELD);
    assert_string_equal(err.field, "ids");
    assert_int_equal(read_rc("{\"all\":false}", ids, &n, &all, &err), MSG_E_INVALID_FIELD);
    assert_string_equal(err.field, "all");
    assert_int_equal(read_rc("{\"all\":true,\"ids\":[1]}", ids, &n, &all, &err),
                     MSG_E_INVALID_FIELD);
    assert_int_equal(read_rc("{\"ids\":[]}", ids, &n, &all, &err), MSG_E_INVALID_FIELD);
    assert_string_equal(err.field, "ids");
    assert_int_equal(read_rc("{\"ids\":[0]}", ids, &n, &all, &err), MSG_E_INVALID_FIELD);
    assert_int_equal(read_rc("{\"ids\":[\"1\"]}", ids, &n, &all, &err), MSG_E_INVALID_FIELD);
    assert_int_equal(read_rc("{\"ids\":1}", ids, &n, &all, &err), MSG_E_INVALID_FIELD);
    pbuf b = {0};
    pbuf_append_str(&b, "{\"ids\":[");
    for (int i = 1; i <= MSG_NOTIF_READ_MAX + 1; i++) {
        char t[16];
        snprintf(t, sizeof t, "%s%d", i > 1 ? "," : "", i);
        pbuf_append_str(&b, t);
    }
    pbuf_append(&b, "]}", 3);
    assert_int_equal(read_rc((char *)b.ptr, ids, &n, &all, &err), MSG_E_TOO_LARGE);
    assert_string_equal(err.field, "ids");
    /* exactly 500 */
    char *cut = strrchr((char *)b.ptr, ',');
    strcpy(cut, "]}");
    assert_int_equal(read_rc((char *)b.ptr, ids, &n, &all, &err), MSG_OK);
    assert_int_equal(n, MSG_NOTIF_READ_MAX);
    pbuf_free(&b);
}

static msg_errcode prefs_rc(const char *s, msg_nprefs *p, unsigned *given, msg_error *err)
{
    json_val v = obj_of(s);
    memset(err, 0, sizeof *err);
    return msg_parse_nprefs(&v, p, given, err);
}

static void expect_prefs_error(const char *s, msg_errcode code, const char *field)
{
    msg_nprefs p;
    unsigned given;
    msg_error err;
    msg_nprefs_default(&p);
    msg_errcode rc = prefs_rc(s, &p, &given, &err);
    if (rc != code || strcmp(err.field, field) != 0)
        fail_msg("%s: got %s field '%s', want %s field '%s'", s, msg_errcode_name(rc), err.field,
                 msg_errcode_name(code), field);
}

static void test_prefs(void **state)
{
    (void)state;
    msg_nprefs p;
    unsigned given;
    msg_error err;
    pbuf b = {0};
    msg_nprefs_default(&p);
    assert_int_equal(msg_encode_nprefs(&b, &p), 0);
    pbuf_append(&b, "", 1);
    assert_string_equal(
        (char *)b.ptr,
        "{\"in_app\":true,\"push\":true,\"types\":{\"message\":true,\"mention\":true,"
        "\"assignment\":true,\"deadline\":true,\"system\":true,\"achievement\":true,"
        "\"reminder\":true,\"alert\":true},\"quiet_hours\":null,\"muted_users\":[],"
        "\"muted_rooms\":[]}");
    const char *set = "{\"push\":false,\"types\":{\"alert\":false,\"message\":true},"
                      "\"quiet_hours\":{\"start\":\"22:30\",\"end\":\"07:00\",\"tz\":"
                      "\"America/Argentina/Buenos_Aires\"},\"muted_users\":[\"eve\", \"mal\"],"
                      "\"muted_rooms\":[\"general\"]}";
    assert_int_equal(prefs_rc(set, &p, &given, &err), MSG_OK);
    assert_int_equal(given, MSG_NP_PUSH | MSG_NP_TYPES | MSG_NP_QUIET | MSG_NP_MUTED_USERS |
                                MSG_NP_MUTED_ROOMS);
    assert_true(p.in_app);
    assert_false(p.push);
    assert_int_equal(p.types_off, 1u << MSG_NT_ALERT);
    assert_true(p.quiet);
    assert_int_equal(p.q_start, 22 * 60 + 30);
    assert_int_equal(p.q_end, 7 * 60);
    assert_string_equal(p.tz, "America/Argentina/Buenos_Aires");
    assert_true(msg_nprefs_has(&p.muted_users, "mal"));
    assert_false(msg_nprefs_has(&p.muted_users, "ma"));
    assert_true(msg_nprefs_has(&p.muted_rooms, "general"));
    b.len = 0;
    assert_int_equal(msg_encode_nprefs(&b, &p), 0);
    pbuf_append(&b, "", 1);
    assert_non_null(strstr((char *)b.ptr, "\"alert\":false}"));
    assert_non_null(strstr((char *)b.ptr, "\"quiet_hours\":{\"start\":\"22:30\",\"end\":\"07:00\","
                                          "\"tz\":\"America/Argentina/Buenos_Aires\"},"
                                          "\"muted_users\":[\"eve\",\"mal\"],"
                                          "\"muted_rooms\":[\"general\"]}"));
    /* What is encoded parses back to the same preferences. */
    msg_nprefs q;
    msg_nprefs_default(&q);
    json_val v = obj_of((char *)b.ptr);
    assert_int_equal(msg_parse_nprefs(&v, &q, &given, &err), MSG_OK);
    assert_int_equal(given, 63);
    assert_int_equal(q.types_off, p.types_off);
    assert_int_equal(q.q_start, p.q_start);
    assert_false(q.push);
    /* A subset changes only itself; quiet_hours null clears. */
    assert_int_equal(prefs_rc("{\"quiet_hours\":null}", &q, &given, &err), MSG_OK);
    assert_int_equal(given, MSG_NP_QUIET);
    assert_false(q.quiet);
    assert_int_equal(q.types_off, 1u << MSG_NT_ALERT);
    assert_int_equal(prefs_rc("{}", &q, &given, &err), MSG_OK);
    assert_int_equal(given, 0);
    pbuf_free(&b);

    expect_prefs_error("[]", MSG_E_BAD_REQUEST, "");
    expect_prefs_error("{\"in_app\":1}", MSG_E_INVALID_FIELD, "in_app");
    expect_prefs_error("{\"push\":null}", MSG_E_INVALID_FIELD, "push");
    expect_prefs_error("{\"types\":[]}", MSG_E_INVALID_FIELD, "types");
    expect_prefs_error("{\"types\":{\"text\":true}}", MSG_E_INVALID_FIELD, "types");
    expect_prefs_error("{\"types\":{\"alert\":1}}", MSG_E_INVALID_FIELD, "types");
    expect_prefs_error("{\"types\":{\"alert\":true,\"alert\":false}}", MSG_E_INVALID_FIELD,
                       "types");
    expect_prefs_error("{\"quiet_hours\":\"22-07\"}", MSG_E_INVALID_FIELD, "quiet_hours");
    expect_prefs_error("{\"quiet_hours\":{\"end\":\"07:00\",\"tz\":\"UTC\"}}", MSG_E_MISSING_FIELD,
                       "quiet_hours.start");
    expect_prefs_error("{\"quiet_hours\":{\"start\":\"07:00\",\"tz\":\"UTC\"}}",
                       MSG_E_MISSING_FIELD, "quiet_hours.end");
    expect_prefs_error("{\"quiet_hours\":{\"start\":\"07:00\",\"end\":\"08:00\"}}",
                       MSG_E_MISSING_FIELD, "quiet_hours.tz");
    expect_prefs_error("{\"quiet_hours\":{\"start\":\"7:00\",\"end\":\"08:00\",\"tz\":\"UTC\"}}",
                       MSG_E_INVALID_FIELD, "quiet_hours.start");
    expect_prefs_error("{\"quiet_hours\":{\"start\":\"07:00\",\"end\":\"08:60\",\"tz\":\"UTC\"}}",
                       MSG_E_INVALID_FIELD, "quiet_hours.end");
    expect_prefs_error("{\"quiet_hours\":{\"start\":\"24:00\",\"end\":\"08:00\",\"tz\":\"UTC\"}}",
                       MSG_E_INVALID_FIELD, "quiet_hours.start");
    expect_prefs_error("{\"quiet_hours\":{\"start\":\"08:00\",\"end\":\"08:00\",\"tz\":\"UTC\"}}",
                       MSG_E_INVALID_FIELD, "quiet_hours.end");
    expect_prefs_error("{\"quiet_hours\":{\"start\":\"08:00\",\"end\":\"09:00\",\"tz\":\"../x\"}}",
                       MSG_E_INVALID_FIELD, "quiet_hours.tz");
    expect_prefs_error("{\"quiet_hours\":{\"start\":\"08:00\",\"end\":\"09:00\",\"tz\":\"UTC\","
                       "\"x\":1}}",
                       MSG_E_UNKNOWN_FIELD, "quiet_hours.x");
    expect_prefs_error("{\"muted_users\":\"eve\"}", MSG_E_INVALID_FIELD, "muted_users");
    expect_prefs_error("{\"muted_users\":[\"e e\"]}", MSG_E_INVALID_FIELD, "muted_users");
    expect_prefs_error("{\"muted_rooms\":[\"a@b\"]}", MSG_E_INVALID_FIELD, "muted_rooms");
    expect_prefs_error("{\"colour\":1}", MSG_E_UNKNOWN_FIELD, "colour");
    /* 1000 muted users accepted, 1001 too many. */
    pbuf big = {0};
    pbuf_append_str(&big, "{\"muted_users\":[");
    for (int i = 0; i < MSG_NOTIF_MUTED_MAX; i++) {
        char t[16];
        snprintf(t, sizeof t, "%s\"u%d\"", i ? "," : "", i);
        pbuf_append_str(&big, t);
    }
    size_t at = big.len;
    pbuf_append(&big, "]}", 3);
    msg_nprefs_default(&p);
    assert_int_equal(prefs_rc((char *)big.ptr, &p, &given, &err), MSG_OK);
    big.len = at;
    pbuf_append(&big, ",\"x\"]}", 7);
    expect_prefs_error((char *)big.ptr, MSG_E_TOO_LARGE, "muted_users");
    pbuf_free(&big);

    assert_true(msg_valid_tz_name("UTC", 3));
    assert_true(msg_valid_tz_name("Etc/GMT+5", 9));
    assert_false(msg_valid_tz_name("", 0));
    assert_false(msg_valid_tz_name("/etc", 4));
    assert_false(msg_valid_tz_name("Asia/", 5));
    assert_false(msg_valid_tz_name("a//b", 4));
    assert_false(msg_valid_tz_name("a/./b", 5));
    assert_false(msg_valid_tz_name("a/../b", 6));
    assert_false(msg_valid_tz_name("a/.b", 4));
    assert_false(msg_valid_tz_name("a b", 3));
}

/* ---- store ---- */

#include "store_scratch.h"

#define scratch_init(s) scratch_init_tag((s), "notify")

static msg_notification *req(const char *to, const char *title, const char *dedupe, int64_t expires)
{
    msg_notification *n = calloc(1, sizeof *n);
    snprintf(n->to, sizeof n->to, "%s", to);
    n->type = MSG_NT_ALERT;
    n->priority = MSG_PRIO_HIGH;
    snprintf(n->title, sizeof n->title, "%s", title);
    snprintf(n->dedupe, sizeof n->dedupe, "%s", dedupe);
    snprintf(n->from, sizeof n->from, "svc");
    n->expires = expires;
    n->nactions = 1;
    snprintf(n->actions[0].id, sizeof n->actions[0].id, "open");
    snprintf(n->actions[0].label, sizeof n->actions[0].label, "Open");
    return n;
}

typedef struct listed {
    int64_t ids[16];
    bool delivered[16], read[16];
    size_t n;
} listed;

/* A version 2 database (before notifications) gains the tables when
 * opened, and keeps its data. */
static void test_migration(void **state)
{
    (void)state;
    scratch sc;
    scratch_init(&sc);
    mstore *st = open_store(sc.path);
    assert_int_equal(mstore_presence_text(st, "amy", "hi"), 0);
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(sc.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "DROP TABLE notifications; DROP TABLE notification_prefs; "
                                  "PRAGMA user_version = 2;",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    st = open_store(sc.path);
    int64_t seen;
    char text[MSG_PRESENCE_TEXT_MAX + 1];
    assert_int_equal(mstore_presence_get(st, "amy", &seen, text), 1);
    assert_string_equal(text, "hi");
    msg_notification *n = req("amy", "t", "", -1);
    assert_int_equal(mstore_notif_insert(st, n, NOW), 0);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_notif_unread(st, "amy", NOW), 1);
    free(n);
    mstore_close(st);
    scratch_free(&sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_notify_parse), cmocka_unit_test(test_notification_encode),
        cmocka_unit_test(test_sync_read),    cmocka_unit_test(test_prefs),        cmocka_unit_test(test_migration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
