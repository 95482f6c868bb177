/* The log line formatter (base/log.h): the text layout, and JSON lines
 * that stay valid JSON whatever the message holds, checked with the
 * strict parser of codec/json.h and by decoding the message back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base/log.h"
#include "codec/json.h"

/* 2026-12-07T19:53:00.123Z */
#define T0 1796673180123LL

/* Formats msg as a JSON line, checks that it is one valid JSON object
 * ending in a newline, and returns its "msg" decoded (static storage). */
static const char *json_roundtrip(const char *msg, size_t cap, parley_log_level level)
{
    static char line[PLOG_LINE_MAX];
    static char decoded[PLOG_LINE_MAX];
    assert_true(cap <= sizeof line);
    size_t n = plog_format_line(line, cap, PLOG_JSON, level, T0, msg);
    assert_true(n < cap);
    assert_int_equal(strlen(line), n);
    assert_int_equal(line[n - 1], '\n');
    assert_null(memchr(line, '\n', n - 1));
    json_val obj, v;
    assert_int_equal(json_parse(line, n - 1, 4, &obj, NULL), 0);
    assert_int_equal(obj.type, JSON_OBJECT);
    assert_int_equal(json_count(&obj), 3);
    assert_true(json_object_get(&obj, "ts", &v));
    assert_true(json_string_eq(&v, "2026-12-07T19:53:00.123Z"));
    assert_true(json_object_get(&obj, "level", &v));
    static const char *names[] = {"debug", "info", "warn", "error"};
    assert_true(json_string_eq(&v, names[level]));
    assert_true(json_object_get(&obj, "msg", &v));
    assert_int_equal(v.type, JSON_STRING);
    long len = json_string_decode(&v, decoded, sizeof decoded - 1);
    assert_true(len >= 0);
    decoded[len] = 0;
    return decoded;
}

static void test_text_layout(void **state)
{
    (void)state;
    char line[256];
    size_t n = plog_format_line(line, sizeof line, PLOG_TEXT, PARLEY_LOG_WARN, T0, "hello \"x\"");
    assert_string_equal(line, "2026-12-07T19:53:00.123Z warn hello \"x\"\n");
    assert_int_equal(n, strlen(line));
}

static void test_json_layout(void **state)
{
    (void)state;
    char line[256];
    size_t n = plog_format_line(line, sizeof line, PLOG_JSON, PARLEY_LOG_INFO, T0, "parleyd started");
    assert_string_equal(line,
                        "{\"ts\":\"2026-12-07T19:53:00.123Z\",\"level\":\"info\",\"msg\":\"parleyd "
                        "started\"}\n");
    assert_int_equal(n, strlen(line));
    assert_string_equal(json_roundtrip("", 256, PARLEY_LOG_ERROR), "");
    assert_string_equal(json_roundtrip("d", 256, PARLEY_LOG_DEBUG), "d");
}

static void test_json_escapes(void **state)
{
    (void)state;
    char line[256];
    plog_format_line(line, sizeof line, PLOG_JSON, PARLEY_LOG_INFO, T0,
                     "q\" b\\ n\n r\r t\t b\b f\f x\x01 y\x1f del\x7f");
    assert_non_null(strstr(line, "\"msg\":\"q\\\" b\\\\ n\\n r\\r t\\t b\\b f\\f x\\u0001 "
                                 "y\\u001f del\x7f\"}\n"));
    const char *all = "quote\" backslash\\ slash/ nl\n cr\r tab\t ctl\x01\x02\x1b\x1f end";
    assert_string_equal(json_roundtrip(all, 256, PARLEY_LOG_WARN), all);
}

static void test_json_utf8(void **state)
{
    (void)state;
    /* Valid UTF-8 of every length passes unchanged (not as \u escapes). */
    const char *ok = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf";
    char line[256];
    plog_format_line(line, sizeof line, PLOG_JSON, PARLEY_LOG_INFO, T0, ok);
    assert_non_null(strstr(line, ok));
    assert_string_equal(json_roundtrip(ok, 256, PARLEY_LOG_INFO), ok);
    /* What is not UTF-8 becomes U+FFFD, one per bad byte. */
    static const struct {
        const char *in, *out;
    } bad[] = {
        {"a\xff" "b", "a\xef\xbf\xbd" "b"},                       /* never valid */
        {"\xc0\x80", "\xef\xbf\xbd\xef\xbf\xbd"},                 /* overlong NUL */
        {"\xe0\x80\xaf", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* overlong / */
        {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* surrogate */
        {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* > U+10FFFF */
        {"x\xe2\x82", "x\xef\xbf\xbd\xef\xbf\xbd"},               /* cut short at the end */
        {"\xe2\x82" "a", "\xef\xbf\xbd\xef\xbf\xbd" "a"},         /* cut short by ASCII */
        {"\x80", "\xef\xbf\xbd"},                                 /* lone continuation */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_string_equal(json_roundtrip(bad[i].in, 256, PARLEY_LOG_INFO), bad[i].out);
}

static void test_json_cut(void **state)
{
    (void)state;
    /* Messages longer than the line: cut, never inside an escape or a
     * UTF-8 sequence, and still one valid JSON object. */
    char msg[1024];
    static const char *pieces[] = {"\"", "\\", "\x01", "\xc3\xa9", "\xf0\x9f\x98\x80", "a", "\xff"};
    for (size_t cap = 128; cap < 200; cap++) {
        for (size_t k = 0; k < sizeof pieces / sizeof pieces[0]; k++) {
            msg[0] = 0;
            while (strlen(msg) + 8 < sizeof msg) strcat(msg, pieces[k]);
            const char *d = json_roundtrip(msg, cap, PARLEY_LOG_INFO);
            assert_true(strlen(d) > 0);
            if (k < 6) assert_memory_equal(d, msg, strlen(d)); /* a prefix of the message */
        }
    }
    /* The largest message plog_emit formats, all of it escaped 6-fold,
     * fits in PLOG_LINE_MAX whole. */
    memset(msg, 0x01, sizeof msg - 1);
    msg[sizeof msg - 1] = 0;
    assert_int_equal(strlen(json_roundtrip(msg, PLOG_LINE_MAX, PARLEY_LOG_INFO)), sizeof msg - 1);
    /* Text lines are cut too, and end with the newline. */
    char line[128];
    size_t n = plog_format_line(line, sizeof line, PLOG_TEXT, PARLEY_LOG_INFO, T0, msg);
    assert_int_equal(n, sizeof line - 1);
    assert_int_equal(line[n - 1], '\n');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text_layout), cmocka_unit_test(test_json_layout),
        cmocka_unit_test(test_json_escapes), cmocka_unit_test(test_json_utf8),
        cmocka_unit_test(test_json_cut),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
