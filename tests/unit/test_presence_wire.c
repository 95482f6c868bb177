/* The messages of presence across nodes (presence_wire.h): what the
 * writers make parses back to the same records; every kind of garbage is
 * refused whole, with its reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/server/presence_wire.h"

static const char *parse_str(pcw_msg *m, const char *s)
{
    return pcw_parse(m, s, strlen(s));
}

static void test_round_trip(void **state)
{
    (void)state;
    pcw_contrib a = {.user = "amy", .devices = 2, .status = MSG_PS_AWAY, .text_at = 1767225600000,
                     .text = "in a \"lesson\" \xc3\xa9", .invisible = false, .inv_at = 0,
                     .last_seen = -1};
    pcw_contrib b = {.user = "bob.b@x", .devices = 0, .status = MSG_PS_OFFLINE, .text_at = 0,
                     .text = "", .invisible = true, .inv_at = 17, .last_seen = 16};
    memset(a.text + strlen(a.text), 0, sizeof a.text - strlen(a.text));
    pbuf buf = {0};
    assert_int_equal(pcw_header(&buf, "node7"), 0);
    assert_int_equal(pbuf_append(&buf, ",", 1), 0);
    assert_int_equal(pcw_contrib_append(&buf, &a), 0);
    assert_int_equal(pbuf_append(&buf, ",", 1), 0);
    assert_int_equal(pcw_want_append(&buf, "Other9"), 0);
    assert_int_equal(pbuf_append(&buf, ",", 1), 0);
    assert_int_equal(pcw_contrib_append(&buf, &b), 0);
    assert_int_equal(pbuf_append(&buf, "]", 1), 0);
    pcw_msg m;
    assert_null(pcw_parse(&m, (const char *)buf.ptr, buf.len));
    assert_string_equal(m.uid, "node7");
    assert_false(m.bye);
    pcw_record r;
    assert_true(pcw_next(&m, &r));
    assert_int_equal(r.kind, PCW_CONTRIB);
    assert_string_equal(r.c.user, "amy");
    assert_int_equal(r.c.devices, 2);
    assert_int_equal(r.c.status, MSG_PS_AWAY);
    assert_int_equal(r.c.text_at, 1767225600000);
    assert_string_equal(r.c.text, a.text);
    assert_false(r.c.invisible);
    assert_int_equal(r.c.last_seen, -1);
    assert_true(pcw_next(&m, &r));
    assert_int_equal(r.kind, PCW_WANT);
    assert_string_equal(r.target, "Other9");
    assert_true(pcw_next(&m, &r));
    assert_string_equal(r.c.user, "bob.b@x");
    assert_int_equal(r.c.devices, 0);
    assert_true(r.c.invisible);
    assert_int_equal(r.c.inv_at, 17);
    assert_int_equal(r.c.last_seen, 16);
    assert_false(pcw_next(&m, &r));
    /* A heartbeat has no records; a goodbye is a flag, not a record. */
    assert_null(parse_str(&m, "[1,\"n\"]"));
    assert_false(pcw_next(&m, &r));
    assert_null(parse_str(&m, " [ 1 , \"n\" , [\"w\",\"x\"] , [\"b\"] ] "));
    assert_true(m.bye);
    assert_true(pcw_next(&m, &r));
    assert_int_equal(r.kind, PCW_WANT);
    assert_false(pcw_next(&m, &r));
    pbuf_free(&buf);
}

#define C(rest) "[1,\"n1\",[\"c\"," rest "]]"

static void test_garbage(void **state)
{
    (void)state;
    static const struct {
        const char *in, *why;
    } bad[] = {
        {"", "not a JSON array"},
        {"{}", "not a JSON array"},
        {"[1,\"n1\"", "not a JSON array"},
        {"[]", "not version 1"},
        {"[2,\"n1\"]", "not version 1"},
        {"[1.5,\"n1\"]", "not version 1"},
        {"[\"1\",\"n1\"]", "not version 1"},
        {"[1]", "a bad node uid"},
        {"[1,\"\"]", "a bad node uid"},
        {"[1,\"n-1\"]", "a bad node uid"},
        {"[1,\"n\\u0000\"]", "a bad node uid"},
        {"[1,7]", "a bad node uid"},
        {"[1,\"123456789012345678901234567890123\"]", "a bad node uid"},
        {"[1,\"n1\",7]", "a record that is not an array"},
        {"[1,\"n1\",[]]", "an empty record"},
        {"[1,\"n1\",[\"x\"]]", "a record of an unknown kind"},
        {"[1,\"n1\",[\"b\",1]]", "a record of an unknown kind"},
        {"[1,\"n1\",[\"w\"]]", "a record of an unknown kind"},
        {"[1,\"n1\",[\"w\",\"a b\"]]", "a record of an unknown kind"},
        {"[1,\"n1\",[\"w\",\"n2\",1]]", "a record of an unknown kind"},
        {C("\"amy\",1,3,0,\"\",0,0"), "a contribution with too few fields"},
        {C("\"amy\",1,3,0,\"\",0,0,-1,9"), "a contribution with too many fields"},
        {C("\"a my\",1,3,0,\"\",0,0,-1"), "a bad user id"},
        {C("\"\",1,3,0,\"\",0,0,-1"), "a bad user id"},
        {C("1,1,3,0,\"\",0,0,-1"), "a bad user id"},
        {C("\"amy\",-1,3,0,\"\",0,0,-1"), "a bad device count"},
        {C("\"amy\",1000001,3,0,\"\",0,0,-1"), "a bad device count"},
        {C("\"amy\",1,0,0,\"\",0,0,-1"), "a bad status"},
        {C("\"amy\",1,4,0,\"\",0,0,-1"), "a bad status"},
        {C("\"amy\",0,3,0,\"\",0,0,-1"), "a bad status"},
        {C("\"amy\",1,3,-1,\"\",0,0,-1"), "a bad text time"},
        {C("\"amy\",1,3,1e3,\"\",0,0,-1"), "a bad text time"},
        {C("\"amy\",1,3,0,\"a\\nb\",0,0,-1"), "a bad text"},
        {C("\"amy\",1,3,0,null,0,0,-1"), "a bad text"},
        {C("\"amy\",1,3,0,\"\",2,0,-1"), "a bad invisibility"},
        {C("\"amy\",1,3,0,\"\",true,0,-1"), "a bad invisibility"},
        {C("\"amy\",1,3,0,\"\",0,-5,-1"), "a bad invisibility time"},
        {C("\"amy\",1,3,0,\"\",0,0,-2"), "a bad last seen"},
        {C("\"amy\",1,3,0,\"\",0,0,9223372036854775807"), "a bad last seen"},
        /* All or nothing: a good record before a bad one changes nothing. */
        {"[1,\"n1\",[\"c\",\"amy\",1,3,0,\"\",0,0,-1],[\"q\"]]", "a record of an unknown kind"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pcw_msg m;
        const char *why = parse_str(&m, bad[i].in);
        if (!why || strcmp(why, bad[i].why) != 0)
            fail_msg("%s: got %s, want %s", bad[i].in, why ? why : "(taken)", bad[i].why);
    }
}

/* The limits: a text of 128 bytes is taken, 129 is not; the size limit
 * comes before any parsing. */
static void test_limits(void **state)
{
    (void)state;
    char in[512], text[MSG_PRESENCE_TEXT_MAX + 2];
    memset(text, 'x', sizeof text - 1);
    text[MSG_PRESENCE_TEXT_MAX] = 0;
    snprintf(in, sizeof in, C("\"amy\",1,3,0,\"%s\",0,0,-1"), text);
    pcw_msg m;
    assert_null(parse_str(&m, in));
    text[MSG_PRESENCE_TEXT_MAX] = 'x';
    text[MSG_PRESENCE_TEXT_MAX + 1] = 0;
    snprintf(in, sizeof in, C("\"amy\",1,3,0,\"%s\",0,0,-1"), text);
    assert_string_equal(parse_str(&m, in), "a bad text");
    size_t big = PCW_IN_MAX + 1;
    char *huge = malloc(big);
    assert_non_null(huge);
    memset(huge, ' ', big);
    memcpy(huge, "[1,\"n1\"]", 8);
    assert_string_equal(pcw_parse(&m, huge, big), "too long");
    assert_null(pcw_parse(&m, huge, big - 1)); /* trailing spaces */
    free(huge);
    /* A node uid of 32 bytes is the longest. */
    assert_null(parse_str(&m, "[1,\"12345678901234567890123456789012\"]"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
