/* Unit tests for the messaging wire schema: every request parser's
 * accepted forms and each documented error, encoders round-tripping through
 * the parsers, and random mutations of valid payloads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "chop.h"
#include "codec/json.h"
#include "services/msg_schema.h"

static msg_limits lim;

static int setup(void **state)
{
    (void)state;
    msg_limits_init(&lim);
    return 0;
}

static json_val obj_of(const char *s)
{
    json_val v;
    assert_int_equal(json_parse(s, strlen(s), 32, &v, NULL), 0);
    return v;
}

/* Parses a send_message payload; returns the error code (and err). */
static msg_errcode send_rc(const char *s, msg_send *m, msg_error *err)
{
    json_val v = obj_of(s);
    memset(err, 0, sizeof *err);
    msg_errcode rc = msg_parse_send(&v, &lim, m, err);
    assert_int_equal(rc, err->code);
    if (rc) assert_true(err->message[0] != 0);
    return rc;
}

static void expect_send_err(const char *s, msg_errcode code, const char *field)
{
    msg_send m;
    msg_error err;
    msg_errcode rc = send_rc(s, &m, &err);
    if (rc != code)
        fail_msg("%s: got %s (%s), want %s", s, msg_errcode_name(rc), err.message,
                 msg_errcode_name(code));
    if (field) assert_string_equal(err.field, field);
}

/* encode(parse(s)) parses again to the same encoding. Returns it. */
static char *send_roundtrip(const char *s)
{
    msg_send m, m2;
    msg_error err;
    assert_int_equal(send_rc(s, &m, &err), MSG_OK);
    pbuf out = {0};
    assert_int_equal(msg_encode_send(&out, &m), 0);
    pbuf_append(&out, "", 1);
    json_val v = obj_of((char *)out.ptr);
    assert_int_equal(msg_parse_send(&v, &lim, &m2, &err), MSG_OK);
    pbuf out2 = {0};
    assert_int_equal(msg_encode_send(&out2, &m2), 0);
    pbuf_append(&out2, "", 1);
    assert_string_equal((char *)out.ptr, (char *)out2.ptr);
    pbuf_free(&out2);
    return (char *)out.ptr;
}

/* ---- identifiers ---- */

static void test_identifiers(void **state)
{
    (void)state;
    assert_true(msg_valid_user("alice", 5));
    assert_true(msg_valid_user("a.b_c@d-e", 9));
    assert_false(msg_valid_user("", 0));
    assert_false(msg_valid_user("a b", 3));
    assert_false(msg_valid_user("a:b", 3));
    assert_false(msg_valid_user("a\0b", 3));
    char u[66];
    memset(u, 'x', sizeof u);
    assert_true(msg_valid_user(u, 64));
    assert_false(msg_valid_user(u, 65));
    assert_true(msg_valid_room("general", 7));
    assert_false(msg_valid_room("a@b", 3));
    assert_true(msg_valid_client_id("6f1c-9:a.b_c", 12));
    assert_false(msg_valid_client_id("a/b", 3));
    char h[65];
    memset(h, 'a', 64);
    h[64] = 0;
    assert_true(msg_valid_media_id(h, 64));
    assert_false(msg_valid_media_id(h, 63));
    h[3] = 'A';
    assert_false(msg_valid_media_id(h, 64));
    h[3] = 'g';
    assert_false(msg_valid_media_id(h, 64));
    assert_true(msg_valid_mime("image/png", 9));
    assert_true(msg_valid_mime("application/vnd.api+json", 24));
    assert_false(msg_valid_mime("image", 5));
    assert_false(msg_valid_mime("image/", 6));
    assert_false(msg_valid_mime("/png", 4));
    assert_false(msg_valid_mime("image/png; charset=x", 20));
    assert_false(msg_valid_mime("ima ge/png", 10));
}

static void test_conversations(void **state)
{
    (void)state;
    msg_conv c;
    msg_conv_dm(&c, "bob", "alice");
    assert_string_equal(c.id, "dm:alice:bob");
    assert_string_equal(c.a, "alice");
    assert_string_equal(c.b, "bob");
    assert_string_equal(msg_conv_peer(&c, "alice"), "bob");
    assert_string_equal(msg_conv_peer(&c, "bob"), "alice");
    assert_null(msg_conv_peer(&c, "eve"));
    msg_conv_room(&c, "general");
    assert_string_equal(c.id, "room:general");
    assert_int_equal(c.kind, MSG_CONV_ROOM);
    assert_null(msg_conv_peer(&c, "alice"));

    assert_true(msg_conv_parse(&c, "dm:alice:bob", 12));
    assert_int_equal(c.kind, MSG_CONV_DM);
    assert_true(msg_conv_parse(&c, "room:x", 6));
    assert_string_equal(c.a, "x");
    static const char *const bad[] = {
        "dm:bob:alice", "dm:alice:alice", "dm:alice", "dm::bob", "dm:alice:", "dm:a:b:c",
        "room:",        "room:a b",       "rooms:x",  "x",       "",          "DM:alice:bob",
        "room:a@b"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        assert_false(msg_conv_parse(&c, bad[i], strlen(bad[i])));
        assert_int_equal(c.kind, MSG_CONV_NONE);
    }
}

static void test_names(void **state)
{
    (void)state;
    for (int t = MSG_TEXT; t <= MSG_SYSTEM; t++) {
        const char *n = msg_type_name((msg_type)t);
        assert_non_null(n);
        assert_int_equal(msg_type_from_name(n, strlen(n)), t);
    }
    assert_int_equal(msg_type_from_name("Text", 4), 0);
    assert_null(msg_type_name((msg_type)0));
    for (int p = MSG_PRIO_LOW; p <= MSG_PRIO_URGENT; p++) {
        const char *n = msg_priority_name((msg_priority)p);
        assert_int_equal(msg_priority_from_name(n, strlen(n)), p);
    }
    assert_int_equal(msg_priority_from_name("max", 3), -1);
    for (int c = MSG_E_BAD_REQUEST; c < MSG_E_COUNT; c++) {
        const char *n = msg_errcode_name((msg_errcode)c);
        assert_int_equal(msg_errcode_from_name(n, strlen(n)), c);
    }
    assert_int_equal(msg_errcode_from_name("nope", 4), MSG_OK);
}

/* ---- send_message ---- */

static void test_send_text(void **state)
{
    (void)state;
    msg_send m;
    msg_error err;
    assert_int_equal(
        send_rc(
            "{\"client_id\":\"c1\",\"to\":\"bob\",\"type\":\"text\",\"content\":{\"text\":\"hi\"}}",
            &m, &err),
        MSG_OK);
    assert_string_equal(m.client_id, "c1");
    assert_int_equal(m.target_kind, MSG_CONV_DM);
    assert_string_equal(m.target, "bob");
    assert_false(m.target_is_conv);
    assert_int_equal(m.type, MSG_TEXT);
    assert_int_equal(m.priority, MSG_PRIO_NORMAL);
    assert_int_equal(m.content.text.len, 4);
    assert_memory_equal(m.content.text.p, "\"hi\"", 4);

    msg_conv c;
    assert_int_equal(msg_send_resolve(&m, "alice", &c, &err), MSG_OK);
    assert_string_equal(c.id, "dm:alice:bob");
    assert_int_equal(msg_send_resolve(&m, "bob", &c, &err), MSG_E_INVALID_FIELD);
    assert_string_equal(err.field, "to");

    char *s = send_roundtrip(
        "{\"content\":{\"text\":\"h\\u00e9\"},\"type\":\"text\",\"priority\":\"urgent\","
        "\"room\":\"general\",\"client_id\":\"c2\"}");
    assert_string_equal(s, "{\"client_id\":\"c2\",\"room\":\"general\",\"type\":\"text\","
                           "\"priority\":\"urgent\",\"content\":{\"text\":\"h\\u00e9\"}}");
    free(s);
    s = send_roundtrip("{\"client_id\":\"c3\",\"conversation\":\"dm:alice:bob\",\"type\":\"text\","
                       "\"content\":{\"text\":\"x\"},\"priority\":\"low\"}");
    free(s);
    assert_int_equal(send_rc("{\"client_id\":\"c3\",\"conversation\":\"dm:alice:bob\",\"type\":"
                             "\"text\",\"content\":{\"text\":\"x\"}}",
                             &m, &err),
                     MSG_OK);
    assert_true(m.target_is_conv);
    assert_int_equal(m.target_kind, MSG_CONV_DM);
    assert_int_equal(msg_send_resolve(&m, "bob", &c, &err), MSG_OK);
    assert_string_equal(c.id, "dm:alice:bob");
    assert_int_equal(msg_send_resolve(&m, "eve", &c, &err), MSG_E_NOT_MEMBER);
    assert_int_equal(send_rc("{\"client_id\":\"c3\",\"conversation\":\"room:g\",\"type\":"
                             "\"text\",\"content\":{\"text\":\"x\"}}",
                             &m, &err),
                     MSG_OK);
    assert_int_equal(msg_send_resolve(&m, "eve", &c, &err), MSG_OK);
    assert_string_equal(c.id, "room:g");
}

static void test_send_types(void **state)
{
    (void)state;
    const char *h = "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"";
    char buf[1024];
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"image\",\"content\":{\"media\":%s,"
             "\"caption\":\"\",\"width\":640,\"height\":480}}",
             h);
    char *s = send_roundtrip(buf);
    assert_non_null(strstr(s, "\"width\":640,\"height\":480"));
    free(s);
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"file\",\"content\":{\"media\":%s,"
             "\"name\":\"report.pdf\"}}",
             h);
    free(send_roundtrip(buf));
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"audio\",\"content\":{\"media\":%s,"
             "\"duration_ms\":0}}",
             h);
    free(send_roundtrip(buf));
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"video\",\"content\":{\"media\":%s,"
             "\"duration_ms\":86400000,\"width\":1,\"height\":100000,\"caption\":\"v\"}}",
             h);
    free(send_roundtrip(buf));
    s = send_roundtrip("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"location\",\"content\":"
                       "{\"lat\":-90,\"lng\":180.0,\"label\":\"Pole\"}}");
    assert_non_null(strstr(s, "{\"lat\":-90,\"lng\":180.0,\"label\":\"Pole\"}"));
    free(s);
    free(send_roundtrip("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"location\",\"content\":"
                        "{\"lat\":48.8566,\"lng\":2.3522e0}}"));
    free(send_roundtrip("{\"client_id\":\"c\",\"room\":\"ops\",\"type\":\"system\",\"content\":"
                        "{\"text\":\"maintenance at 10\"}}"));
}

static void test_send_errors(void **state)
{
    (void)state;
    const char *media = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    char buf[512];
    /* The sender is never a field, and that is reported first. */
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"text\",\"content\":{\"text\":"
                    "\"x\"},\"from\":\"mallory\"}",
                    MSG_E_SENDER_FORBIDDEN, "from");
    expect_send_err("{\"sender\":\"mallory\",\"bogus\":1}", MSG_E_SENDER_FORBIDDEN, "sender");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"text\",\"content\":{\"text\":"
                    "\"x\",\"from\":\"m\"}}",
                    MSG_E_SENDER_FORBIDDEN, "from");
    /* Missing fields. */
    expect_send_err("{}", MSG_E_MISSING_FIELD, "client_id");
    expect_send_err("{\"client_id\":\"c\",\"type\":\"text\",\"content\":{}}", MSG_E_MISSING_FIELD,
                    "to");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"content\":{}}", MSG_E_MISSING_FIELD,
                    "type");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"text\"}", MSG_E_MISSING_FIELD,
                    "content");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"text\",\"content\":{}}",
                    MSG_E_MISSING_FIELD, "content.text");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"image\",\"content\":{}}",
                    MSG_E_MISSING_FIELD, "content.media");
    expect_send_err(
        "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"location\",\"content\":{\"lat\":1}}",
        MSG_E_MISSING_FIELD, "content.lng");
    /* Unknown and repeated members. */
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"text\",\"content\":{\"text\":"
                    "\"x\"},\"id\":5}",
                    MSG_E_UNKNOWN_FIELD, "id");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"text\",\"content\":{\"text\":"
                    "\"x\",\"caption\":\"y\"}}",
                    MSG_E_UNKNOWN_FIELD, "content.caption");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"text\",\"content\":{\"text\":"
                    "\"x\",\"zz\":\"y\"}}",
                    MSG_E_UNKNOWN_FIELD, "content.zz");
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"image\",\"content\":{\"media\":\"%s\","
             "\"mime\":\"image/png\"}}",
             media);
    expect_send_err(buf, MSG_E_UNKNOWN_FIELD, "content.mime");
    expect_send_err("{\"client_id\":\"c\",\"client_id\":\"d\",\"to\":\"b\",\"type\":\"text\","
                    "\"content\":{\"text\":\"x\"}}",
                    MSG_E_INVALID_FIELD, "client_id");
    /* Targets. */
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"room\":\"r\",\"type\":\"text\","
                    "\"content\":{\"text\":\"x\"}}",
                    MSG_E_INVALID_FIELD, "to");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b c\",\"type\":\"text\",\"content\":{\"text\":"
                    "\"x\"}}",
                    MSG_E_INVALID_FIELD, "to");
    expect_send_err("{\"client_id\":\"c\",\"to\":7,\"type\":\"text\",\"content\":{\"text\":\"x\"}}",
                    MSG_E_INVALID_FIELD, "to");
    expect_send_err("{\"client_id\":\"c\",\"room\":\"a@b\",\"type\":\"text\",\"content\":{\"text\":"
                    "\"x\"}}",
                    MSG_E_INVALID_FIELD, "room");
    expect_send_err("{\"client_id\":\"c\",\"conversation\":\"dm:b:a\",\"type\":\"text\","
                    "\"content\":{\"text\":\"x\"}}",
                    MSG_E_INVALID_FIELD, "conversation");
    expect_send_err("{\"client_id\":\"c/1\",\"to\":\"b\",\"type\":\"text\",\"content\":{\"text\":"
                    "\"x\"}}",
                    MSG_E_INVALID_FIELD, "client_id");
    expect_send_err("{\"client_id\":\"\",\"to\":\"b\",\"type\":\"text\",\"content\":{\"text\":"
                    "\"x\"}}",
                    MSG_E_INVALID_FIELD, "client_id");
    /* Types, priority, content. */
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"sticker\",\"content\":{}}",
                    MSG_E_UNKNOWN_TYPE, "type");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":1,\"content\":{}}",
                    MSG_E_INVALID_FIELD, "type");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"text\",\"priority\":\"max\","
                    "\"content\":{\"text\":\"x\"}}",
                    MSG_E_INVALID_FIELD, "priority");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"text\",\"content\":\"hi\"}",
                    MSG_E_INVALID_FIELD, "content");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"text\",\"content\":{\"text\":"
                    "\"\"}}",
                    MSG_E_INVALID_FIELD, "content.text");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"text\",\"content\":{\"text\":5}}",
                    MSG_E_INVALID_FIELD, "content.text");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"location\",\"content\":"
                    "{\"lat\":90.0001,\"lng\":0}}",
                    MSG_E_INVALID_FIELD, "content.lat");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"location\",\"content\":"
                    "{\"lat\":0,\"lng\":-180.5}}",
                    MSG_E_INVALID_FIELD, "content.lng");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"location\",\"content\":"
                    "{\"lat\":\"1\",\"lng\":0}}",
                    MSG_E_INVALID_FIELD, "content.lat");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"location\",\"content\":"
                    "{\"lat\":1e400,\"lng\":0}}",
                    MSG_E_INVALID_FIELD, "content.lat");
    expect_send_err("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"image\",\"content\":{\"media\":"
                    "\"abc\"}}",
                    MSG_E_INVALID_FIELD, "content.media");
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"image\",\"content\":{\"media\":\"%s\","
             "\"width\":0}}",
             media);
    expect_send_err(buf, MSG_E_INVALID_FIELD, "content.width");
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"image\",\"content\":{\"media\":\"%s\","
             "\"height\":1.5}}",
             media);
    expect_send_err(buf, MSG_E_INVALID_FIELD, "content.height");
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"audio\",\"content\":{\"media\":\"%s\","
             "\"duration_ms\":86400001}}",
             media);
    expect_send_err(buf, MSG_E_INVALID_FIELD, "content.duration_ms");
    static const char *const names[] = {"a/b", "..", ".", "a\\\\b", "a\\nb", ""};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(
            buf, sizeof buf,
            "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"file\",\"content\":{\"media\":\"%s\","
            "\"name\":\"%s\"}}",
            media, names[i]);
        expect_send_err(buf, MSG_E_INVALID_FIELD, "content.name");
    }
    /* Not an object. */
    json_val v = obj_of("[1]");
    msg_send m;
    msg_error err;
    assert_int_equal(msg_parse_send(&v, &lim, &m, &err), MSG_E_BAD_REQUEST);
    assert_int_equal(msg_parse_send(NULL, &lim, &m, &err), MSG_E_BAD_REQUEST);
}

static void test_send_limits(void **state)
{
    (void)state;
    msg_limits small = lim;
    small.max_text = 4;
    msg_send m;
    msg_error err;
    /* Limits count UTF-8 bytes after unescaping: é is 2, 😀 is 4. */
    static const struct {
        const char *text;
        msg_errcode want;
    } cases[] = {
        {"abcd", MSG_OK},
        {"abcde", MSG_E_TOO_LARGE},
        {"\\u00e9\\u00e9", MSG_OK},
        {"\\u00e9\\u00e9a", MSG_E_TOO_LARGE},
        {"\\ud83d\\ude00", MSG_OK},
        {"\\ud83d\\ude00\\n", MSG_E_TOO_LARGE},
        {"\xf0\x9f\x98\x80", MSG_OK},
        {"\\u20ac\\\"", MSG_OK},
        {"\\u20ac\\\"\\/", MSG_E_TOO_LARGE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char buf[256];
        snprintf(
            buf, sizeof buf,
            "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"text\",\"content\":{\"text\":\"%s\"}}",
            cases[i].text);
        json_val v = obj_of(buf);
        msg_errcode rc = msg_parse_send(&v, &small, &m, &err);
        if (rc != cases[i].want) fail_msg("%s: %s", cases[i].text, msg_errcode_name(rc));
        if (rc) assert_string_equal(err.field, "content.text");
    }
    /* Each limit has its own field. */
    small.max_caption = 2;
    small.max_name = 3;
    small.max_label = 1;
    const char *media = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    char buf[512];
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"image\",\"content\":{\"media\":\"%s\","
             "\"caption\":\"abc\"}}",
             media);
    json_val v = obj_of(buf);
    assert_int_equal(msg_parse_send(&v, &small, &m, &err), MSG_E_TOO_LARGE);
    assert_string_equal(err.field, "content.caption");
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"file\",\"content\":{\"media\":\"%s\","
             "\"name\":\"abcd\"}}",
             media);
    v = obj_of(buf);
    assert_int_equal(msg_parse_send(&v, &small, &m, &err), MSG_E_TOO_LARGE);
    assert_string_equal(err.field, "content.name");
    v = obj_of("{\"client_id\":\"c\",\"to\":\"b\",\"type\":\"location\",\"content\":{\"lat\":0,"
               "\"lng\":0,\"label\":\"ab\"}}");
    assert_int_equal(msg_parse_send(&v, &small, &m, &err), MSG_E_TOO_LARGE);
    assert_string_equal(err.field, "content.label");
    /* Identifier limits are fixed by the protocol. */
    char id[80];
    memset(id, 'a', 65);
    id[65] = 0;
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"%s\",\"to\":\"b\",\"type\":\"text\",\"content\":{\"text\":\"x\"}}",
             id);
    expect_send_err(buf, MSG_E_INVALID_FIELD, "client_id");
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"c\",\"to\":\"%s\",\"type\":\"text\",\"content\":{\"text\":\"x\"}}",
             id);
    expect_send_err(buf, MSG_E_INVALID_FIELD, "to");
    id[64] = 0;
    snprintf(buf, sizeof buf,
             "{\"client_id\":\"%s\",\"to\":\"%s\",\"type\":\"text\",\"content\":{\"text\":\"x\"}}",
             id, id);
    free(send_roundtrip(buf));
}

/* ---- messages ---- */

static void test_message_roundtrip(void **state)
{
    (void)state;
    msg_message m;
    memset(&m, 0, sizeof m);
    m.id = 42;
    m.seq = 7;
    m.ts = 1767225600000;
    snprintf(m.conversation, sizeof m.conversation, "dm:alice:bob");
    snprintf(m.from, sizeof m.from, "alice");
    snprintf(m.client_id, sizeof m.client_id, "c-1");
    m.type = MSG_TEXT;
    m.priority = MSG_PRIO_HIGH;
    pbuf out = {0};
    assert_int_equal(msg_encode_message(&out, &m, "{\"text\":\"hi\"}", 13), 0);
    pbuf_append(&out, "", 1);
    assert_string_equal((char *)out.ptr,
                        "{\"id\":42,\"conversation\":\"dm:alice:bob\",\"seq\":7,\"from\":\"alice\","
                        "\"client_id\":\"c-1\",\"type\":\"text\",\"priority\":\"high\","
                        "\"ts\":1767225600000,\"content\":{\"text\":\"hi\"}}");
    json_val v = obj_of((char *)out.ptr);
    msg_message p;
    msg_error err;
    assert_int_equal(msg_parse_message(&v, &lim, &p, &err), MSG_OK);
    assert_int_equal(p.id, 42);
    assert_int_equal(p.seq, 7);
    assert_int_equal(p.ts, 1767225600000);
    assert_string_equal(p.conversation, "dm:alice:bob");
    assert_string_equal(p.from, "alice");
    assert_string_equal(p.client_id, "c-1");
    assert_int_equal(p.priority, MSG_PRIO_HIGH);
    pbuf again = {0};
    assert_int_equal(msg_encode_message(&again, &p, NULL, 0), 0);
    pbuf_append(&again, "", 1);
    assert_string_equal((char *)again.ptr, (char *)out.ptr);
    pbuf_free(&out);
    pbuf_free(&again);

    /* Server messages carry mime and size; unknown members are skipped
     * (newer servers), missing ones are errors. */
    const char *img =
        "{\"id\":1,\"conversation\":\"room:r\",\"seq\":1,\"from\":\"a\",\"client_id\":"
        "\"c\",\"type\":\"image\",\"priority\":\"low\",\"ts\":5,\"extra\":[1],"
        "\"content\":{\"media\":\"0123456789abcdef0123456789abcdef0123456789abcdef"
        "0123456789abcdef\",\"mime\":\"image/png\",\"size\":10,\"future\":true}}";
    v = obj_of(img);
    assert_int_equal(msg_parse_message(&v, &lim, &p, &err), MSG_OK);
    assert_string_equal(p.content.mime, "image/png");
    assert_int_equal(p.content.size, 10);
    v = obj_of("{\"id\":1,\"conversation\":\"room:r\",\"seq\":1,\"from\":\"a\",\"client_id\":"
               "\"c\",\"type\":\"image\",\"priority\":\"low\",\"ts\":5,\"content\":{\"media\":"
               "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"}}");
    assert_int_equal(msg_parse_message(&v, &lim, &p, &err), MSG_E_MISSING_FIELD);
    assert_string_equal(err.field, "content.mime");
    v = obj_of(
        "{\"id\":0,\"conversation\":\"room:r\",\"seq\":1,\"from\":\"a\",\"client_id\":"
        "\"c\",\"type\":\"text\",\"priority\":\"low\",\"ts\":5,\"content\":{\"text\":\"x\"}}");
    assert_int_equal(msg_parse_message(&v, &lim, &p, &err), MSG_E_INVALID_FIELD);
    assert_string_equal(err.field, "id");
    v = obj_of(
        "{\"conversation\":\"room:r\",\"seq\":1,\"from\":\"a\",\"client_id\":"
        "\"c\",\"type\":\"text\",\"priority\":\"low\",\"ts\":5,\"content\":{\"text\":\"x\"}}");
    assert_int_equal(msg_parse_message(&v, &lim, &p, &err), MSG_E_MISSING_FIELD);
    assert_string_equal(err.field, "id");
}

/* ---- receipts, status, typing, sync, history, rooms, upload ---- */

static void test_receipt_status_typing(void **state)
{
    (void)state;
    msg_receipt r;
    msg_error err;
    json_val v = obj_of("{\"conversation\":\"dm:a:b\",\"status\":\"read\",\"seq\":3}");
    assert_int_equal(msg_parse_receipt(&v, &r, &err), MSG_OK);
    assert_int_equal(r.status, MSG_READ);
    assert_int_equal(r.seq, 3);
    pbuf out = {0};
    assert_int_equal(msg_encode_receipt(&out, &r), 0);
    assert_int_equal(out.len,
                     strlen("{\"conversation\":\"dm:a:b\",\"status\":\"read\",\"seq\":3}"));
    pbuf_free(&out);
    static const struct {
        const char *json;
        msg_errcode code;
        const char *field;
    } bad[] = {
        {"{\"conversation\":\"dm:a:b\",\"status\":\"seen\",\"seq\":3}", MSG_E_INVALID_FIELD,
         "status"},
        {"{\"conversation\":\"dm:a:b\",\"status\":\"read\",\"seq\":0}", MSG_E_INVALID_FIELD, "seq"},
        {"{\"conversation\":\"dm:a:b\",\"status\":\"read\",\"seq\":\"1\"}", MSG_E_INVALID_FIELD,
         "seq"},
        {"{\"conversation\":\"dm:a:b\",\"status\":\"read\"}", MSG_E_MISSING_FIELD, "seq"},
        {"{\"conversation\":\"x\",\"status\":\"read\",\"seq\":1}", MSG_E_INVALID_FIELD,
         "conversation"},
        {"{\"conversation\":\"dm:a:b\",\"status\":\"read\",\"seq\":1,\"user\":\"a\"}",
         MSG_E_UNKNOWN_FIELD, "user"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        v = obj_of(bad[i].json);
        assert_int_equal(msg_parse_receipt(&v, &r, &err), bad[i].code);
        assert_string_equal(err.field, bad[i].field);
    }

    msg_status st = {.delivered = 9, .read = 7};
    snprintf(st.conversation, sizeof st.conversation, "room:r");
    snprintf(st.user, sizeof st.user, "bob");
    assert_int_equal(msg_encode_status(&out, &st), 0);
    pbuf_append(&out, "", 1);
    assert_string_equal(
        (char *)out.ptr,
        "{\"conversation\":\"room:r\",\"user\":\"bob\",\"delivered\":9,\"read\":7}");
    msg_status st2;
    v = obj_of((char *)out.ptr);
    assert_int_equal(msg_parse_status(&v, &st2, &err), MSG_OK);
    assert_memory_equal(&st, &st2, sizeof st);
    pbuf_free(&out);

    msg_typing t;
    v = obj_of("{\"conversation\":\"room:r\",\"state\":\"start\"}");
    assert_int_equal(msg_parse_typing(&v, false, &t, &err), MSG_OK);
    assert_true(t.start);
    assert_string_equal(t.user, "");
    snprintf(t.user, sizeof t.user, "amy");
    assert_int_equal(msg_encode_typing(&out, &t), 0);
    pbuf_append(&out, "", 1);
    assert_string_equal((char *)out.ptr,
                        "{\"conversation\":\"room:r\",\"user\":\"amy\",\"state\":\"start\"}");
    v = obj_of((char *)out.ptr);
    msg_typing t2;
    assert_int_equal(msg_parse_typing(&v, true, &t2, &err), MSG_OK);
    assert_string_equal(t2.user, "amy");
    /* A client does not name the typist. */
    assert_int_equal(msg_parse_typing(&v, false, &t2, &err), MSG_E_UNKNOWN_FIELD);
    pbuf_free(&out);
    v = obj_of("{\"conversation\":\"room:r\",\"state\":\"typing\"}");
    assert_int_equal(msg_parse_typing(&v, false, &t, &err), MSG_E_INVALID_FIELD);
    assert_string_equal(err.field, "state");
    v = obj_of("{\"state\":\"stop\"}");
    assert_int_equal(msg_parse_typing(&v, false, &t, &err), MSG_E_MISSING_FIELD);
}

static void test_sync_history_rooms(void **state)
{
    (void)state;
    msg_sync s;
    msg_error err;
    json_val v = obj_of("{}");
    assert_int_equal(msg_parse_sync(&v, &s, &err), MSG_OK);
    assert_int_equal(s.limit, MSG_SYNC_DEF_LIMIT);
    assert_int_equal(s.nsince, 0);
    assert_int_equal(msg_sync_since(&s, "room:a"), 0);
    v = obj_of(
        "{\"since\":{\"room:a\":5,\"dm:a:b\":0,\"room:b\":9007199254740992},\"limit\":1000}");
    assert_int_equal(msg_parse_sync(&v, &s, &err), MSG_OK);
    assert_int_equal(s.nsince, 3);
    assert_int_equal(s.limit, 1000);
    assert_int_equal(msg_sync_since(&s, "room:a"), 5);
    assert_int_equal(msg_sync_since(&s, "room:b"), 9007199254740992LL);
    assert_int_equal(msg_sync_since(&s, "room:c"), 0);
    json_iter it;
    char id[MSG_CONV_MAX + 1];
    int64_t seq;
    msg_sync_iter_init(&s, &it);
    assert_true(msg_sync_iter_next(&it, id, &seq));
    assert_string_equal(id, "room:a");
    assert_int_equal(seq, 5);
    assert_true(msg_sync_iter_next(&it, id, &seq));
    assert_true(msg_sync_iter_next(&it, id, &seq));
    assert_false(msg_sync_iter_next(&it, id, &seq));
    assert_string_equal(s.cursor, "");
    /* The answer's `next` comes back as `cursor`; "" is the start. */
    v = obj_of("{\"cursor\":\"room:zoo\"}");
    assert_int_equal(msg_parse_sync(&v, &s, &err), MSG_OK);
    assert_string_equal(s.cursor, "room:zoo");
    v = obj_of("{\"cursor\":\"\"}");
    assert_int_equal(msg_parse_sync(&v, &s, &err), MSG_OK);
    assert_string_equal(s.cursor, "");
    static const struct {
        const char *json;
        msg_errcode code;
        const char *field;
    } bad[] = {
        {"{\"limit\":0}", MSG_E_INVALID_FIELD, "limit"},
        {"{\"limit\":1001}", MSG_E_INVALID_FIELD, "limit"},
        {"{\"since\":[]}", MSG_E_INVALID_FIELD, "since"},
        {"{\"since\":{\"bad\":1}}", MSG_E_INVALID_FIELD, "since"},
        {"{\"since\":{\"room:a\":-1}}", MSG_E_INVALID_FIELD, "since"},
        {"{\"since\":{\"room:a\":9007199254740993}}", MSG_E_INVALID_FIELD, "since"},
        {"{\"since\":{},\"from\":\"x\"}", MSG_E_SENDER_FORBIDDEN, "from"},
        {"{\"sinse\":{}}", MSG_E_UNKNOWN_FIELD, "sinse"},
        {"{\"cursor\":\"nope\"}", MSG_E_INVALID_FIELD, "cursor"},
        {"{\"cursor\":5}", MSG_E_INVALID_FIELD, "cursor"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        v = obj_of(bad[i].json);
        assert_int_equal(msg_parse_sync(&v, &s, &err), bad[i].code);
        assert_string_equal(err.field, bad[i].field);
    }
    /* The since map is bounded before it is walked. */
    pbuf big = {0};
    pbuf_append_str(&big, "{\"since\":{");
    for (int i = 0; i <= MSG_SYNC_MAX_SINCE; i++)
        pbuf_appendf(&big, "%s\"room:r%d\":1", i ? "," : "", i);
    pbuf_append_str(&big, "}}");
    json_val bv;
    assert_int_equal(json_parse((char *)big.ptr, big.len, 8, &bv, NULL), 0);
    assert_int_equal(msg_parse_sync(&bv, &s, &err), MSG_E_TOO_LARGE);
    pbuf_free(&big);

    msg_history h;
    v = obj_of("{\"conversation\":\"room:a\"}");
    assert_int_equal(msg_parse_history(&v, &h, &err), MSG_OK);
    assert_int_equal(h.before, 0);
    assert_int_equal(h.limit, MSG_HISTORY_DEF_LIMIT);
    v = obj_of("{\"conversation\":\"room:a\",\"before\":10,\"limit\":200}");
    assert_int_equal(msg_parse_history(&v, &h, &err), MSG_OK);
    assert_int_equal(h.before, 10);
    assert_int_equal(h.limit, 200);
    v = obj_of("{\"conversation\":\"room:a\",\"limit\":201}");
    assert_int_equal(msg_parse_history(&v, &h, &err), MSG_E_INVALID_FIELD);
    v = obj_of("{\"conversation\":\"room:a\",\"before\":0}");
    assert_int_equal(msg_parse_history(&v, &h, &err), MSG_E_INVALID_FIELD);
    v = obj_of("{\"before\":3}");
    assert_int_equal(msg_parse_history(&v, &h, &err), MSG_E_MISSING_FIELD);

    char room[MSG_ROOM_MAX + 1];
    v = obj_of("{\"room\":\"general\"}");
    assert_int_equal(msg_parse_room_req(&v, room, &err), MSG_OK);
    assert_string_equal(room, "general");
    v = obj_of("{\"room\":\"gen eral\"}");
    assert_int_equal(msg_parse_room_req(&v, room, &err), MSG_E_INVALID_FIELD);
    v = obj_of("{}");
    assert_int_equal(msg_parse_room_req(&v, room, &err), MSG_E_MISSING_FIELD);
    v = obj_of("{\"room\":\"a\",\"user\":\"b\"}");
    assert_int_equal(msg_parse_room_req(&v, room, &err), MSG_E_UNKNOWN_FIELD);

    char mime[MSG_MIME_MAX + 1];
    unsigned num = 99;
    v = obj_of("{\"mime\":\"image/png\",\"data\":{\"_placeholder\":true,\"num\":0}}");
    assert_int_equal(msg_parse_upload(&v, mime, &num, &err), MSG_OK);
    assert_string_equal(mime, "image/png");
    assert_int_equal(num, 0);
    v = obj_of("{\"mime\":\"image/png\",\"data\":\"aGk=\"}");
    assert_int_equal(msg_parse_upload(&v, mime, &num, &err), MSG_E_INVALID_FIELD);
    assert_string_equal(err.field, "data");
    v = obj_of("{\"mime\":\"png\",\"data\":{\"_placeholder\":true,\"num\":0}}");
    assert_int_equal(msg_parse_upload(&v, mime, &num, &err), MSG_E_INVALID_FIELD);
    assert_string_equal(err.field, "mime");
    v = obj_of("{\"data\":{\"_placeholder\":true,\"num\":0}}");
    assert_int_equal(msg_parse_upload(&v, mime, &num, &err), MSG_E_MISSING_FIELD);
}

/* ---- errors and acks ---- */

static void test_errors_and_acks(void **state)
{
    (void)state;
    msg_error e;
    assert_int_equal(msg_fail(&e, MSG_E_NOT_MEMBER, "room", "not in %s", "general"),
                     MSG_E_NOT_MEMBER);
    pbuf out = {0};
    assert_int_equal(msg_encode_error(&out, &e), 0);
    pbuf_append(&out, "", 1);
    assert_string_equal((char *)out.ptr, "{\"ok\":false,\"error\":{\"code\":\"not_member\","
                                         "\"message\":\"not in general\",\"field\":\"room\"}}");
    json_val v = obj_of((char *)out.ptr);
    bool ok = true;
    msg_error back;
    assert_true(msg_parse_ack(&v, &ok, &back));
    assert_false(ok);
    assert_int_equal(back.code, MSG_E_NOT_MEMBER);
    assert_string_equal(back.message, "not in general");
    assert_string_equal(back.field, "room");
    assert_int_equal(back.retry_after_ms, 0);
    pbuf_free(&out);

    /* Limits say when to come back. */
    msg_fail(&e, MSG_E_RATE_LIMITED, NULL, "slow down");
    e.retry_after_ms = 1250;
    assert_int_equal(msg_encode_error(&out, &e), 0);
    pbuf_append(&out, "", 1);
    assert_string_equal((char *)out.ptr, "{\"ok\":false,\"error\":{\"code\":\"rate_limited\","
                                         "\"message\":\"slow down\",\"retry_after_ms\":1250}}");
    v = obj_of((char *)out.ptr);
    assert_true(msg_parse_ack(&v, &ok, &back));
    assert_int_equal(back.code, MSG_E_RATE_LIMITED);
    assert_int_equal(back.retry_after_ms, 1250);
    pbuf_free(&out);
    /* Out of range or not an integer: not said. */
    v = obj_of("{\"ok\":false,\"error\":{\"code\":\"quota_exceeded\",\"message\":\"m\","
               "\"retry_after_ms\":-5}}");
    assert_true(msg_parse_ack(&v, &ok, &back));
    assert_int_equal(back.code, MSG_E_QUOTA_EXCEEDED);
    assert_int_equal(back.retry_after_ms, 0);
    v = obj_of("{\"ok\":false,\"error\":{\"code\":\"storage_full\",\"message\":\"m\","
               "\"retry_after_ms\":1.5}}");
    assert_true(msg_parse_ack(&v, &ok, &back));
    assert_int_equal(back.code, MSG_E_STORAGE_FULL);
    assert_int_equal(back.retry_after_ms, 0);

    /* A message cut inside a character stays valid UTF-8. */
    msg_fail(&e, MSG_E_TOO_LARGE, NULL, "%s", "");
    memset(e.message, 'a', sizeof e.message);
    memcpy(e.message + sizeof e.message - 3, "\xc3\xa9", 2); /* é ends at the last byte */
    e.message[sizeof e.message - 1] = 0;
    assert_int_equal(msg_encode_error(&out, &e), 0);
    assert_int_equal(json_parse((char *)out.ptr, out.len, 4, &v, NULL), 0);
    pbuf_free(&out);
    memcpy(e.message + sizeof e.message - 2, "\xe2", 1); /* a cut 3-byte sequence */
    assert_int_equal(msg_encode_error(&out, &e), 0);
    assert_int_equal(json_parse((char *)out.ptr, out.len, 4, &v, NULL), 0);
    pbuf_free(&out);

    msg_fail(&e, MSG_E_TOKEN_EXPIRED, NULL, "token expired");
    assert_int_equal(msg_encode_connect_error(&out, &e), 0);
    pbuf_append(&out, "", 1);
    assert_string_equal((char *)out.ptr,
                        "{\"code\":\"token_expired\",\"message\":\"token expired\"}");
    pbuf_free(&out);

    v = obj_of("{\"ok\":true,\"message\":{}}");
    assert_true(msg_parse_ack(&v, &ok, &back));
    assert_true(ok);
    v = obj_of("{\"ok\":false,\"error\":{\"code\":\"from_the_future\",\"message\":\"m\"}}");
    assert_true(msg_parse_ack(&v, &ok, &back));
    assert_false(ok);
    assert_int_equal(back.code, MSG_OK);
    v = obj_of("{\"ok\":1}");
    assert_false(msg_parse_ack(&v, &ok, &back));
    v = obj_of("{\"ok\":false}");
    assert_false(msg_parse_ack(&v, &ok, &back));

    json_val o;
    assert_int_equal(msg_args_object("[{\"a\":1}]", 9, &lim, &o, &e), MSG_OK);
    assert_int_equal(o.type, JSON_OBJECT);
    assert_int_equal(msg_args_object("[]", 2, &lim, &o, &e), MSG_E_BAD_REQUEST);
    assert_int_equal(msg_args_object("[1]", 3, &lim, &o, &e), MSG_E_BAD_REQUEST);
    assert_int_equal(msg_args_object("[{},{}]", 7, &lim, &o, &e), MSG_E_BAD_REQUEST);
    assert_int_equal(msg_args_object("[{", 2, &lim, &o, &e), MSG_E_BAD_REQUEST);
    /* Nesting deeper than the limit is refused before anything is read. */
    const char *deep = "[{\"a\":[[[[[[[[1]]]]]]]]}]";
    assert_int_equal(msg_args_object(deep, strlen(deep), &lim, &o, &e), MSG_E_BAD_REQUEST);
}

/* ---- random mutations ---- */

static const char *const seeds[] = {
    "{\"client_id\":\"c1\",\"to\":\"bob\",\"type\":\"text\",\"content\":{\"text\":\"hi \\u00e9\"}}",
    "{\"client_id\":\"c\",\"room\":\"r\",\"type\":\"location\",\"priority\":\"low\",\"content\":"
    "{\"lat\":-1.5,\"lng\":2e1,\"label\":\"x\"}}",
    "{\"client_id\":\"c\",\"conversation\":\"dm:a:b\",\"type\":\"video\",\"content\":{\"media\":"
    "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\",\"width\":3,"
    "\"caption\":\"\\ud83d\\ude00\",\"duration_ms\":5}}",
};

static void test_mutations(void **state)
{
    (void)state;
    uint64_t rng = chop_seed() ^ 0x6d736773ull;
    size_t accepted = 0;
    for (int round = 0; round < 20000; round++) {
        const char *seed = seeds[test_rand(&rng) % (sizeof seeds / sizeof *seeds)];
        size_t n = strlen(seed);
        char buf[512];
        memcpy(buf, seed, n);
        int edits = 1 + (int)(test_rand(&rng) % 3);
        for (int e = 0; e < edits; e++) {
            size_t at = test_rand(&rng) % n;
            switch (test_rand(&rng) % 3) {
            case 0:
                buf[at] = (char)(test_rand(&rng) & 0x7f);
                break;
            case 1:
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
                break;
            default:
                if (n + 1 < sizeof buf) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = "{}[]\":,0a\\"[test_rand(&rng) % 10];
                    n++;
                }
            }
        }
        json_val v;
        if (json_parse(buf, n, 32, &v, NULL) != 0) continue;
        msg_send m;
        msg_error err;
        memset(&err, 0, sizeof err);
        msg_errcode rc = msg_parse_send(&v, &lim, &m, &err);
        assert_int_equal(rc, err.code);
        if (rc != MSG_OK) {
            assert_true(rc > MSG_OK && rc < MSG_E_COUNT);
            continue;
        }
        accepted++;
        pbuf out = {0};
        assert_int_equal(msg_encode_send(&out, &m), 0);
        json_val v2;
        assert_int_equal(json_parse((char *)out.ptr, out.len, 32, &v2, NULL), 0);
        msg_send m2;
        assert_int_equal(msg_parse_send(&v2, &lim, &m2, &err), MSG_OK);
        pbuf out2 = {0};
        assert_int_equal(msg_encode_send(&out2, &m2), 0);
        assert_int_equal(out.len, out2.len);
        assert_memory_equal(out.ptr, out2.ptr, out.len);
        pbuf_free(&out);
        pbuf_free(&out2);
    }
    assert_true(accepted > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identifiers),
        cmocka_unit_test(test_conversations),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_send_text),
        cmocka_unit_test(test_send_types),
        cmocka_unit_test(test_send_errors),
        cmocka_unit_test(test_send_limits),
        cmocka_unit_test(test_message_roundtrip),
        cmocka_unit_test(test_receipt_status_typing),
        cmocka_unit_test(test_sync_history_rooms),
        cmocka_unit_test(test_errors_and_acks),
        cmocka_unit_test(test_mutations),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
