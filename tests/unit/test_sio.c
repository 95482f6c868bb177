/* Unit tests for Socket.IO v5 packets: parser verdicts (as socket.io-parser
 * 4.2.x decides them, with the documented stricter cases), placeholders,
 * the head writer, and round trips through Engine.IO polling payloads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/util.h"
#include "chop.h"
#include "codec/eio.h"
#include "codec/json.h"
#include "codec/sio.h"
#include "parley/parley.h"

#define MAX_SAFE 9007199254740991LL

/* Parses a copy of exactly len bytes (so ASan sees over-reads). */
static int parse_copy(const char *s, size_t len, const sio_limits *lim, sio_packet *p,
                      const char **why, char **copy)
{
    *copy = malloc(len ? len : 1);
    memcpy(*copy, s, len);
    return sio_parse(*copy, len, lim, p, why);
}

static void test_accepted(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int type;
        unsigned att;
        const char *nsp;
        int64_t id;
        const char *data; /* NULL: no data */
        json_type dtype;
    } v[] = {
        /* what the reference encoder writes */
        {"0", 0, 0, "/", -1, NULL, 0},
        {"0/admin,", 0, 0, "/admin", -1, NULL, 0},
        {"0{\"token\":\"abc\"}", 0, 0, "/", -1, "{\"token\":\"abc\"}", JSON_OBJECT},
        {"0/admin,{\"sid\":\"oSO0OpakMV_3jnilAAAA\"}", 0, 0, "/admin", -1,
         "{\"sid\":\"oSO0OpakMV_3jnilAAAA\"}", JSON_OBJECT},
        {"1", 1, 0, "/", -1, NULL, 0},
        {"1/chat,", 1, 0, "/chat", -1, NULL, 0},
        {"2[\"hello\",1]", 2, 0, "/", -1, "[\"hello\",1]", JSON_ARRAY},
        {"20[\"hello\"]", 2, 0, "/", 0, "[\"hello\"]", JSON_ARRAY},
        {"2/admin,13[\"project:delete\",123]", 2, 0, "/admin", 13, "[\"project:delete\",123]",
         JSON_ARRAY},
        {"313[]", 3, 0, "/", 13, "[]", JSON_ARRAY},
        {"3/admin,456[{\"a\":\"b\"}]", 3, 0, "/admin", 456, "[{\"a\":\"b\"}]", JSON_ARRAY},
        {"4{\"message\":\"Not authorized\"}", 4, 0, "/", -1, "{\"message\":\"Not authorized\"}",
         JSON_OBJECT},
        {"4/ns,{\"message\":\"Invalid namespace\"}", 4, 0, "/ns", -1,
         "{\"message\":\"Invalid namespace\"}", JSON_OBJECT},
        {"51-[\"up\",{\"_placeholder\":true,\"num\":0}]", 5, 1, "/", -1,
         "[\"up\",{\"_placeholder\":true,\"num\":0}]", JSON_ARRAY},
        {"52-/x,7[\"up\",{\"a\":{\"_placeholder\":true,\"num\":0}}]", 5, 2, "/x", 7,
         "[\"up\",{\"a\":{\"_placeholder\":true,\"num\":0}}]", JSON_ARRAY},
        {"61-9[{\"_placeholder\":true,\"num\":0}]", 6, 1, "/", 9,
         "[{\"_placeholder\":true,\"num\":0}]", JSON_ARRAY},
        /* what the reference decoder also accepts */
        {"0/admin", 0, 0, "/admin", -1, NULL, 0},
        /* EVENT and ACK without data: the reference checks data only when
         * there is some */
        {"2", 2, 0, "/", -1, NULL, 0},
        {"2/a,", 2, 0, "/a", -1, NULL, 0},
        {"21", 2, 0, "/", 1, NULL, 0},
        {"51-", 5, 1, "/", -1, NULL, 0},
        {"3", 3, 0, "/", -1, NULL, 0},
        {"31", 3, 0, "/", 1, NULL, 0},
        {"61-", 6, 1, "/", -1, NULL, 0},
        /* no comma: the namespace runs to the end, there is no data */
        {"2/a[\"x\"]", 2, 0, "/a[\"x\"]", -1, NULL, 0},
        {"1/chat", 1, 0, "/chat", -1, NULL, 0},
        {"2/,[\"a\"]", 2, 0, "/", -1, "[\"a\"]", JSON_ARRAY},
        {"4\"boom\"", 4, 0, "/", -1, "\"boom\"", JSON_STRING},
        {"2[1]", 2, 0, "/", -1, "[1]", JSON_ARRAY},
        {"2[-1.5e3,\"x\"]", 2, 0, "/", -1, "[-1.5e3,\"x\"]", JSON_ARRAY},
        {"2[\"\"]", 2, 0, "/", -1, "[\"\"]", JSON_ARRAY},
        {"2[\"connectx\"]", 2, 0, "/", -1, "[\"connectx\"]", JSON_ARRAY},
        {"2[\"Connect\"]", 2, 0, "/", -1, "[\"Connect\"]", JSON_ARRAY},
        {"2[\"\\u0063onnect_\"]", 2, 0, "/", -1, "[\"\\u0063onnect_\"]", JSON_ARRAY},
        {"2[\"newlistener\"]", 2, 0, "/", -1, "[\"newlistener\"]", JSON_ARRAY},
        {"2[\"a very long event name that is longer than any reserved one\"]", 2, 0, "/", -1,
         "[\"a very long event name that is longer than any reserved one\"]", JSON_ARRAY},
        {"2007[\"a\"]", 2, 0, "/", 7, "[\"a\"]", JSON_ARRAY},
        {"29007199254740991[\"a\"]", 2, 0, "/", MAX_SAFE, "[\"a\"]", JSON_ARRAY},
        {"200000000000000000000000009007199254740991[\"a\"]", 2, 0, "/", MAX_SAFE, "[\"a\"]",
         JSON_ARRAY},
        {"2[\"a\"] ", 2, 0, "/", -1, "[\"a\"]", JSON_ARRAY},
        {"2[\"a\" , {\"b\" : 1}]\r\n", 2, 0, "/", -1, "[\"a\" , {\"b\" : 1}]", JSON_ARRAY},
        {"2/\xc3\xbcn\xc3\xaf,[\"a\"]", 2, 0, "/\xc3\xbcn\xc3\xaf", -1, "[\"a\"]", JSON_ARRAY},
        {"2/a/b?c=d,[\"a\"]", 2, 0, "/a/b?c=d", -1, "[\"a\"]", JSON_ARRAY},
        {"3[]", 3, 0, "/", -1, "[]", JSON_ARRAY},
        {"0/a,1{}", 0, 0, "/a", 1, "{}", JSON_OBJECT},
        {"1/a,5", 1, 0, "/a", 5, NULL, 0},
        {"510-[\"a\"]", 5, 10, "/", -1, "[\"a\"]", JSON_ARRAY},
        {"501-[\"a\"]", 5, 1, "/", -1, "[\"a\"]", JSON_ARRAY},
        {"63-[]", 6, 3, "/", -1, "[]", JSON_ARRAY},
        {"51-[7]", 5, 1, "/", -1, "[7]", JSON_ARRAY},
        /* placeholders in a non-binary packet are plain data */
        {"2[\"a\",{\"_placeholder\":true,\"num\":99}]", 2, 0, "/", -1,
         "[\"a\",{\"_placeholder\":true,\"num\":99}]", JSON_ARRAY},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        sio_packet p;
        memset(&p, 0xa5, sizeof p);
        const char *why = NULL;
        char *copy;
        size_t len = strlen(v[i].in);
        int rc = parse_copy(v[i].in, len, NULL, &p, &why, &copy);
        if (rc) print_error("rejected (%s): %s\n", why, v[i].in);
        assert_int_equal(rc, 0);
        assert_int_equal(p.type, v[i].type);
        assert_int_equal(p.attachments, v[i].att);
        assert_int_equal(p.nsp_len, strlen(v[i].nsp));
        assert_memory_equal(p.nsp, v[i].nsp, p.nsp_len);
        assert_true(p.id == v[i].id);
        if (v[i].data) {
            assert_int_equal(p.data.type, v[i].dtype);
            assert_int_equal(p.data.len, strlen(v[i].data));
            assert_memory_equal(p.data.p, v[i].data, p.data.len);
            assert_true(p.data.p >= copy && p.data.p + p.data.len <= copy + len);
        } else {
            assert_int_equal(p.data.type, JSON_INVALID);
        }
        free(copy);
    }
}

static void test_rejected(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *why;
    } v[] = {
        /* type */
        {"", "empty packet"},
        {" ", "unknown packet type"}, /* the reference reads Number(" ") as 0 */
        {" 0", "unknown packet type"},
        {"7", "unknown packet type"},
        {"9[\"a\"]", "unknown packet type"},
        {"a", "unknown packet type"},
        {"-1", "unknown packet type"},
        {"/", "unknown packet type"},
        /* attachments */
        {"5[\"a\"]", "illegal attachments"},
        {"5", "illegal attachments"},
        {"6", "illegal attachments"},
        {"51", "illegal attachments"},
        {"5-[\"a\"]", "illegal attachments"},
        {"50-[\"a\"]", "illegal attachments"},
        {"500-[\"a\"]", "illegal attachments"},
        {"5a-[\"a\"]", "illegal attachments"},
        {"5 1-[\"a\"]", "illegal attachments"},  /* reference: Number(" 1") */
        {"50x1-[\"a\"]", "illegal attachments"}, /* reference: Number("0x1") */
        {"51e0-[\"a\"]", "illegal attachments"}, /* reference: Number("1e0") */
        {"5/a,[\"a\"]", "illegal attachments"},
        {"511-[\"a\"]", "too many attachments"},
        {"599999999999999999999999-[\"a\"]", "too many attachments"},
        {"54294967297-[\"a\"]", "too many attachments"},
        /* per-type payload */
        {"2[]", "invalid payload"},
        {"2[\"connect\"]", "invalid payload"},
        {"2[\"connect_error\"]", "invalid payload"},
        {"2[\"disconnect\"]", "invalid payload"},
        {"2[\"disconnecting\"]", "invalid payload"},
        {"2[\"newListener\"]", "invalid payload"},
        {"2[\"removeListener\",1]", "invalid payload"},
        {"2[\"\\u0063onnect\"]", "invalid payload"},
        {"2[\"disconnect\\u0069ng\"]", "invalid payload"},
        {"2/chat,5[\"disconnect\"]", "invalid payload"},
        {"51-[\"connect\",{\"_placeholder\":true,\"num\":0}]", "invalid payload"},
        {"2[true]", "invalid payload"},
        {"2[null]", "invalid payload"},
        {"2[[\"a\"]]", "invalid payload"},
        {"2[{}]", "invalid payload"},
        {"2{}", "invalid payload"},
        {"2\"a\"", "invalid payload"},
        {"51-[]", "invalid payload"},
        {"3{}", "invalid payload"},
        {"3\"x\"", "invalid payload"},
        {"3null", "invalid payload"},
        {"61-{}", "invalid payload"},
        {"4", "invalid payload"},
        {"41", "invalid payload"},
        {"4[]", "invalid payload"},
        {"4null", "invalid payload"},
        {"47", "invalid payload"},
        {"0[]", "invalid payload"},
        {"0null", "invalid payload"},
        {"0\"x\"", "invalid payload"},
        {"0/a,1[]", "invalid payload"},
        {"1{}", "invalid payload"},
        {"1[]", "invalid payload"},
        {"1\"x\"", "invalid payload"},
        {"1/a,{}", "invalid payload"},
        {"1null", "invalid payload"},
        /* whitespace between the head and the data: the reference would
         * take it as ack id characters */
        {"2 [\"a\"]", "whitespace before data"},
        {"2\t[\"a\"]", "whitespace before data"},
        {"2\n", "whitespace before data"},
        {"2/a, [\"a\"]", "whitespace before data"},
        {"21 [\"a\"]", "whitespace before data"},
        {"0 {}", "whitespace before data"},
        /* ack id */
        {"29007199254740992[\"a\"]", "ack id too large"},
        {"299999999999999999999[\"a\"]", "ack id too large"},
        {"2/a,90071992547409910[\"a\"]", "ack id too large"},
        /* JSON */
        {"2[\"a\"", "invalid JSON"},
        {"2[\"a\",]", "invalid JSON"},
        {"2[\"a\"]x", "invalid JSON"},
        {"2[\"a\"][]", "invalid JSON"},
        {"2x", "invalid JSON"},
        {"2/a,x", "invalid JSON"},
        {"2,[\"a\"]", "invalid JSON"},
        {"2[\"\\ud800\"]", "invalid JSON"}, /* JSON.parse takes lone surrogates */
        {"2[\"\xff\"]", "invalid JSON"},
        {"2['a']", "invalid JSON"},
        {"0{a:1}", "invalid JSON"},
        /* namespace */
        {"2/\xff,[\"a\"]", "namespace not UTF-8"},
        {"0/\xc3", "namespace not UTF-8"},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        sio_packet p;
        const char *why = NULL;
        char *copy;
        int rc = parse_copy(v[i].in, strlen(v[i].in), NULL, &p, &why, &copy);
        if (rc != PARLEY_EPROTO || !why || !strstr(why, v[i].why))
            print_error("case %zu (%s): rc %d why %s\n", i, v[i].in, rc, why ? why : "(null)");
        assert_int_equal(rc, PARLEY_EPROTO);
        assert_non_null(why);
        assert_non_null(strstr(why, v[i].why));
        /* why is optional */
        assert_int_equal(sio_parse(copy, strlen(v[i].in), NULL, &p, NULL), PARLEY_EPROTO);
        free(copy);
    }
}

static void test_limits(void **state)
{
    (void)state;
    sio_limits lim;
    sio_limits_init(&lim);
    assert_int_equal(lim.max_attachments, 10);
    assert_int_equal(lim.max_depth, 32);

    sio_packet p;
    const char *why;
    lim.max_attachments = 3;
    assert_int_equal(sio_parse("53-[\"a\"]", 8, &lim, &p, &why), 0);
    assert_int_equal(p.attachments, 3);
    assert_int_equal(sio_parse("54-[\"a\"]", 8, &lim, &p, &why), PARLEY_EPROTO);
    assert_string_equal(why, "too many attachments");
    lim.max_attachments = 0;
    assert_int_equal(sio_parse("51-[\"a\"]", 8, &lim, &p, &why), PARLEY_EPROTO);
    assert_string_equal(why, "too many attachments");
    assert_int_equal(sio_parse("2[\"a\"]", 6, &lim, &p, &why), 0);

    /* JSON depth: the data array counts as one level */
    sio_limits_init(&lim);
    lim.max_depth = 3;
    assert_int_equal(sio_parse("2[\"a\",[[1]]]", 12, &lim, &p, &why), 0);
    assert_int_equal(sio_parse("2[\"a\",[[[1]]]]", 14, &lim, &p, &why), PARLEY_EPROTO);
    assert_string_equal(why, "invalid JSON data");
    lim.max_depth = 0;
    assert_int_equal(sio_parse("4\"x\"", 4, &lim, &p, &why), 0);
    assert_int_equal(sio_parse("2[\"a\"]", 6, &lim, &p, &why), PARLEY_EPROTO);

    /* default depth 32 */
    pbuf b = {0};
    pbuf_append_str(&b, "2[\"a\",");
    for (int i = 0; i < 31; i++) pbuf_append_str(&b, "[");
    for (int i = 0; i < 31; i++) pbuf_append_str(&b, "]");
    pbuf_append_str(&b, "]");
    assert_int_equal(sio_parse((char *)b.ptr, b.len, NULL, &p, &why), 0);
    b.len = 0;
    pbuf_append_str(&b, "2[\"a\",");
    for (int i = 0; i < 32; i++) pbuf_append_str(&b, "[");
    for (int i = 0; i < 32; i++) pbuf_append_str(&b, "]");
    pbuf_append_str(&b, "]");
    assert_int_equal(sio_parse((char *)b.ptr, b.len, NULL, &p, &why), PARLEY_EPROTO);
    pbuf_free(&b);
}

static void test_reserved(void **state)
{
    (void)state;
    static const char *const yes[] = {"connect",       "connect_error", "disconnect",
                                      "disconnecting", "newListener",   "removeListener"};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(yes); i++) {
        size_t n = strlen(yes[i]);
        assert_true(sio_reserved_event(yes[i], n));
        assert_false(sio_reserved_event(yes[i], n - 1));
        char longer[32];
        snprintf(longer, sizeof longer, "%sx", yes[i]);
        assert_false(sio_reserved_event(longer, n + 1));
    }
    static const char *const no[] = {"",      "Connect",     "CONNECT", "message",     "connect ",
                                     "error", "newlistener", "ping",    "disconnected"};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(no); i++)
        assert_false(sio_reserved_event(no[i], strlen(no[i])));
    assert_false(sio_reserved_event("connect\0", 8));
}

/* ---- Placeholders ---- */

typedef struct ph_log {
    unsigned n;
    unsigned nums[16];
    char text[16][64];
} ph_log;

static void ph_cb(const json_val *ph, unsigned num, void *user)
{
    ph_log *l = user;
    assert_true(l->n < 16);
    assert_int_equal(ph->type, JSON_OBJECT);
    l->nums[l->n] = num;
    assert_true(ph->len < 64);
    memcpy(l->text[l->n], ph->p, ph->len);
    l->text[l->n][ph->len] = '\0';
    l->n++;
}

static int check_ph(const char *data, unsigned att, ph_log *log, const char **why)
{
    json_val v;
    assert_int_equal(json_parse(data, strlen(data), 32, &v, NULL), 0);
    memset(log, 0, sizeof *log);
    return sio_check_placeholders(&v, att, 32, ph_cb, log, why);
}

static void test_placeholders_ok(void **state)
{
    (void)state;
    static const struct {
        const char *data;
        unsigned att;
        unsigned n;
        unsigned nums[4];
        const char *first;
    } v[] = {
        {"[\"up\",{\"_placeholder\":true,\"num\":0}]",
         1,
         1,
         {0},
         "{\"_placeholder\":true,\"num\":0}"},
        {"[\"up\",{\"a\":{\"_placeholder\":true,\"num\":0},\"b\":[{\"_placeholder\":true,\"num\":1}"
         ","
         "\"c\"]}]",
         2,
         2,
         {0, 1},
         "{\"_placeholder\":true,\"num\":0}"},
        /* document order, whatever the numbers */
        {"[{\"_placeholder\":true,\"num\":2},{\"_placeholder\":true,\"num\":0},{\"_placeholder\":"
         "true,\"num\":1}]",
         3,
         3,
         {2, 0, 1},
         "{\"_placeholder\":true,\"num\":2}"},
        /* a number may be repeated, and attachments may go unused */
        {"[{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":0}]",
         5,
         2,
         {0, 0},
         NULL},
        {"[\"no binary here\"]", 1, 0, {0}, NULL},
        {"[]", 1, 0, {0}, NULL},
        /* member order and spacing do not matter; extra members are kept */
        {"[ { \"num\" : 1 , \"x\" : [1] , \"_placeholder\" : true } ]",
         2,
         1,
         {1},
         "{ \"num\" : 1 , \"x\" : [1] , \"_placeholder\" : true }"},
        /* _placeholder must be exactly true */
        {"[{\"_placeholder\":false,\"num\":-1}]", 1, 0, {0}, NULL},
        {"[{\"_placeholder\":\"true\",\"num\":-1}]", 1, 0, {0}, NULL},
        {"[{\"_placeholder\":1,\"num\":-1}]", 1, 0, {0}, NULL},
        {"[{\"_placeholder\":[true],\"num\":-1}]", 1, 0, {0}, NULL},
        {"[{\"_Placeholder\":true,\"num\":-1}]", 1, 0, {0}, NULL},
        {"[{\"placeholder\":true,\"num\":-1}]", 1, 0, {0}, NULL},
        /* "_placeholder" as a value or inside an array is not a key */
        {"[\"_placeholder\",true,{\"k\":\"_placeholder\",\"v\":true,\"num\":-1}]", 1, 0, {0}, NULL},
        /* JSON.parse keeps the last of repeated keys */
        {"[{\"_placeholder\":true,\"_placeholder\":false,\"num\":-1}]", 1, 0, {0}, NULL},
        {"[{\"_placeholder\":false,\"num\":0,\"_placeholder\":true}]", 1, 1, {0}, NULL},
        {"[{\"_placeholder\":true,\"num\":5,\"num\":1}]", 2, 1, {1}, NULL},
        /* keys are compared unescaped */
        {"[{\"\\u005fplaceholder\":true,\"n\\u0075m\":1}]", 2, 1, {1}, NULL},
        /* numbers are compared by value, as JavaScript does */
        {"[{\"_placeholder\":true,\"num\":1.0}]", 2, 1, {1}, NULL},
        {"[{\"_placeholder\":true,\"num\":1e0}]", 2, 1, {1}, NULL},
        {"[{\"_placeholder\":true,\"num\":10E-1}]", 2, 1, {1}, NULL},
        {"[{\"_placeholder\":true,\"num\":-0}]", 1, 1, {0}, NULL},
        {"[{\"_placeholder\":true,\"num\":1e-400}]", 1, 1, {0}, NULL},
        /* deep inside other data */
        {"[\"e\",{\"a\":[[{\"b\":{\"_placeholder\":true,\"num\":0}}]],\"c\":\"}]\"}]",
         1,
         1,
         {0},
         NULL},
        /* objects inside a placeholder that are not placeholders */
        {"[{\"_placeholder\":true,\"num\":0,\"meta\":{\"a\":{\"b\":[]}}}]", 1, 1, {0}, NULL},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        ph_log log;
        const char *why = NULL;
        int rc = check_ph(v[i].data, v[i].att, &log, &why);
        if (rc) print_error("case %zu rejected (%s): %s\n", i, why, v[i].data);
        assert_int_equal(rc, 0);
        assert_int_equal(log.n, v[i].n);
        for (unsigned k = 0; k < v[i].n; k++) assert_int_equal(log.nums[k], v[i].nums[k]);
        if (v[i].first) assert_string_equal(log.text[0], v[i].first);
        /* cb is optional */
        json_val d;
        assert_int_equal(json_parse(v[i].data, strlen(v[i].data), 32, &d, NULL), 0);
        assert_int_equal(sio_check_placeholders(&d, v[i].att, 32, NULL, NULL, &why), 0);
    }
    /* the data itself may be a placeholder */
    ph_log log;
    const char *why;
    assert_int_equal(check_ph("{\"_placeholder\":true,\"num\":0}", 1, &log, &why), 0);
    assert_int_equal(log.n, 1);
    /* no data, or scalar data, has no placeholders */
    json_val none = {JSON_INVALID, NULL, 0};
    assert_int_equal(sio_check_placeholders(&none, 1, 32, ph_cb, &log, &why), 0);
    assert_int_equal(check_ph("\"_placeholder\"", 1, &log, &why), 0);
    assert_int_equal(log.n, 0);
}

static void test_placeholders_bad(void **state)
{
    (void)state;
    static const struct {
        const char *data;
        unsigned att;
        const char *why;
    } v[] = {
        {"[{\"_placeholder\":true}]", 1, "illegal attachments"},
        /* not a placeholder itself, but its _placeholder member is one */
        {"[{\"_placeholder\":{\"_placeholder\":true},\"num\":0}]", 1, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":1}]", 1, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":10}]", 10, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":-1}]", 1, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":0.5}]", 1, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":1.5}]", 3, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":\"0\"}]", 1, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":null}]", 1, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":true}]", 1, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":[0]}]", 1, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":{}}]", 1, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":1e400}]", 1, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":4294967296}]", 1, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":0,\"num\":7}]", 1, "illegal attachments"},
        {"[{\"num\":0,\"_placeholder\":true,\"num\":\"x\"}]", 1, "illegal attachments"},
        {"[{\"_placeholder\":true,\"num\":0}]", 0, "illegal attachments"},
        {"[\"ok\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":3}]", 2,
         "illegal attachments"},
        /* one placeholder inside another (the reference would not look
         * inside the outer one; no encoder writes this) */
        {"[{\"_placeholder\":true,\"num\":0,\"x\":{\"_placeholder\":true,\"num\":0}}]", 1,
         "placeholder inside a placeholder"},
        {"[{\"_placeholder\":true,\"num\":0,\"x\":[[{\"_placeholder\":true,\"num\":0}]]}]", 1,
         "placeholder inside a placeholder"},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        ph_log log;
        const char *why = NULL;
        int rc = check_ph(v[i].data, v[i].att, &log, &why);
        if (rc != PARLEY_EPROTO) print_error("case %zu accepted: %s\n", i, v[i].data);
        assert_int_equal(rc, PARLEY_EPROTO);
        assert_non_null(why);
        assert_string_equal(why, v[i].why);
        /* nothing is reported for data that turns out to be malformed */
        assert_int_equal(log.n, 0);
    }
    /* the scan has its own depth bound */
    json_val d;
    const char *why;
    const char *deep = "[[[[{\"_placeholder\":true,\"num\":0}]]]]";
    assert_int_equal(json_parse(deep, strlen(deep), 32, &d, NULL), 0);
    assert_int_equal(sio_check_placeholders(&d, 1, 5, NULL, NULL, &why), 0);
    assert_int_equal(sio_check_placeholders(&d, 1, 4, NULL, NULL, &why), PARLEY_EPROTO);
}

/* ---- Writer ---- */

static void expect_head(int type, unsigned att, const char *nsp, size_t nsp_len, int64_t id,
                        const char *want)
{
    pbuf b = {0};
    pbuf_append_str(&b, "~");
    assert_int_equal(sio_write_head(&b, type, att, nsp, nsp_len, id), 0);
    assert_int_equal(b.len, 1 + strlen(want));
    assert_memory_equal(b.ptr + 1, want, b.len - 1);
    pbuf_free(&b);
}

static void test_write_head(void **state)
{
    (void)state;
    /* the reference encoder's heads (see test_accepted for full packets) */
    expect_head(SIO_CONNECT, 0, "/", 1, -1, "0");
    expect_head(SIO_CONNECT, 0, "/admin", 6, -1, "0/admin,");
    expect_head(SIO_DISCONNECT, 0, "/chat", 5, -1, "1/chat,");
    expect_head(SIO_EVENT, 0, "/", 1, -1, "2");
    expect_head(SIO_EVENT, 0, "/", 1, 0, "20");
    expect_head(SIO_EVENT, 0, "/admin", 6, 13, "2/admin,13");
    expect_head(SIO_ACK, 0, "/", 1, 13, "313");
    expect_head(SIO_ACK, 0, "/admin", 6, 456, "3/admin,456");
    expect_head(SIO_CONNECT_ERROR, 0, "/ns", 3, -1, "4/ns,");
    expect_head(SIO_BINARY_EVENT, 1, "/", 1, -1, "51-");
    expect_head(SIO_BINARY_EVENT, 2, "/x", 2, 7, "52-/x,7");
    expect_head(SIO_BINARY_ACK, 1, "/", 1, 9, "61-9");
    expect_head(SIO_BINARY_ACK, 4294967295u, "/", 1, -1, "64294967295-");
    expect_head(SIO_EVENT, 0, "/", 1, MAX_SAFE, "29007199254740991");
    expect_head(SIO_EVENT, 0, "/", 1, -5, "2");
    /* attachments are written for binary types only */
    expect_head(SIO_EVENT, 3, "/", 1, -1, "2");
    /* no namespace means "/" */
    expect_head(SIO_EVENT, 0, NULL, 0, -1, "2");
    expect_head(SIO_EVENT, 0, "", 0, 1, "21");
    /* nsp_len bounds the name */
    expect_head(SIO_EVENT, 0, "/abc", 2, -1, "2/a,");
    expect_head(SIO_EVENT, 0, "/\xc3\xbcn\xc3\xaf", 6, -1, "2/\xc3\xbcn\xc3\xaf,");

    pbuf b = {0};
    pbuf_append_str(&b, "keep");
    assert_int_equal(sio_write_head(&b, -1, 0, "/", 1, -1), PARLEY_EINVAL);
    assert_int_equal(sio_write_head(&b, 7, 0, "/", 1, -1), PARLEY_EINVAL);
    assert_int_equal(sio_write_head(&b, SIO_BINARY_EVENT, 0, "/", 1, -1), PARLEY_EINVAL);
    assert_int_equal(sio_write_head(&b, SIO_BINARY_ACK, 0, "/", 1, 1), PARLEY_EINVAL);
    assert_int_equal(sio_write_head(&b, SIO_EVENT, 0, "admin", 5, -1), PARLEY_EINVAL);
    assert_int_equal(sio_write_head(&b, SIO_EVENT, 0, "/a,b", 4, -1), PARLEY_EINVAL);
    assert_int_equal(sio_write_head(&b, SIO_EVENT, 0, "/\xff", 2, -1), PARLEY_EINVAL);
    assert_int_equal(sio_write_head(&b, SIO_EVENT, 0, "/", 1, MAX_SAFE + 1), PARLEY_EINVAL);
    assert_int_equal(sio_write_head(&b, SIO_EVENT, 0, "/", 1, INT64_MAX), PARLEY_EINVAL);
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.ptr, "keep", 4);
    pbuf_free(&b);
}

/* ---- Randomized round trips ---- */

typedef struct rgen {
    uint64_t rng;
    unsigned placeholders; /* written so far in this packet */
    unsigned max_ph;
} rgen;

static unsigned rn(rgen *g, unsigned n)
{
    return (unsigned)(test_rand(&g->rng) % n);
}

static void rws(rgen *g, pbuf *b)
{
    if (rn(g, 4) == 0) pbuf_append_str(b, rn(g, 2) ? " " : "\n\t");
}

static void rstring(rgen *g, pbuf *b)
{
    static const char *const s[] = {"\"\"",
                                    "\"x\"",
                                    "\"hello world\"",
                                    "\"\\u00e9\\n\"",
                                    "\"\xe6\x97\xa5\"",
                                    "\"_placeholder\"",
                                    "\"num\"",
                                    "\"a,b/c\""};
    pbuf_append_str(b, s[rn(g, PARLEY_ARRAY_LEN(s))]);
}

static void rvalue(rgen *g, pbuf *b, unsigned depth)
{
    unsigned k = rn(g, depth > 3 ? 3 : 6);
    if (g->placeholders < g->max_ph && rn(g, 4) == 0) {
        pbuf_appendf(b, "{\"_placeholder\":true,\"num\":%u}", g->placeholders++);
        return;
    }
    switch (k) {
    case 0:
        pbuf_append_str(b, rn(g, 2) ? "12.5" : "-3");
        break;
    case 1:
        rstring(g, b);
        break;
    case 2:
        pbuf_append_str(b, rn(g, 2) ? "true" : "null");
        break;
    case 3:
    case 4: {
        unsigned n = rn(g, 4);
        pbuf_append_str(b, "[");
        for (unsigned i = 0; i < n; i++) {
            if (i) pbuf_append_str(b, ",");
            rws(g, b);
            rvalue(g, b, depth + 1);
        }
        pbuf_append_str(b, "]");
        break;
    }
    default: {
        unsigned n = rn(g, 4);
        pbuf_append_str(b, "{");
        for (unsigned i = 0; i < n; i++) {
            if (i) pbuf_append_str(b, ",");
            /* any key but "_placeholder": a user object with
             * "_placeholder": true would be taken for one */
            static const char *const keys[] = {"\"\"", "\"k\"", "\"num\"", "\"\\u00e9\"",
                                               "\"a,b\""};
            pbuf_append_str(b, keys[rn(g, PARLEY_ARRAY_LEN(keys))]);
            rws(g, b);
            pbuf_append_str(b, ":");
            rvalue(g, b, depth + 1);
        }
        pbuf_append_str(b, "}");
    }
    }
}

/* Data valid for the type (with placeholders for binary types); returns
 * false when the type takes no data this time. */
static bool rdata(rgen *g, int type, pbuf *b)
{
    bool binary = type == SIO_BINARY_EVENT || type == SIO_BINARY_ACK;
    g->placeholders = 0;
    g->max_ph = binary ? 1 + rn(g, 10) : 0;
    switch (type) {
    case SIO_CONNECT:
        if (rn(g, 2)) return false;
        pbuf_append_str(b, "{\"token\":");
        rvalue(g, b, 1);
        pbuf_append_str(b, "}");
        return true;
    case SIO_DISCONNECT:
        return false;
    case SIO_CONNECT_ERROR:
        if (rn(g, 2))
            rstring(g, b);
        else
            pbuf_append_str(b, "{\"message\":\"nope\",\"data\":{\"code\":4}}");
        return true;
    case SIO_EVENT:
    case SIO_BINARY_EVENT:
        pbuf_append_str(b, "[");
        rws(g, b);
        if (rn(g, 4))
            pbuf_append_str(b, rn(g, 2) ? "\"chat message\"" : "\"\\u0063onnect2\"");
        else
            pbuf_append_str(b, "42");
        break;
    default:
        pbuf_append_str(b, "[");
        break;
    }
    unsigned n = rn(g, 4);
    bool first = type != SIO_EVENT && type != SIO_BINARY_EVENT;
    for (unsigned i = 0; i < n; i++) {
        if (!first) pbuf_append_str(b, ",");
        first = false;
        rws(g, b);
        rvalue(g, b, 1);
    }
    /* binary packets carry at least one attachment */
    while (binary && g->placeholders == 0) {
        if (!first) pbuf_append_str(b, ",");
        first = false;
        rvalue(g, b, 1);
    }
    rws(g, b);
    pbuf_append_str(b, "]");
    return true;
}

typedef struct rpkt {
    int type;
    unsigned att;
    const char *nsp;
    int64_t id;
    pbuf text; /* the encoded packet */
    size_t data_off;
} rpkt;

static void rpacket(rgen *g, rpkt *p)
{
    static const char *const nsps[] = {"/",        "/",    "/", "/admin", "/\xc3\xbcn\xc3\xaf",
                                       "/a/b?c=d", "/123", "/-"};
    p->type = (int)rn(g, 7);
    p->nsp = nsps[rn(g, PARLEY_ARRAY_LEN(nsps))];
    switch (rn(g, 4)) {
    case 0:
        p->id = -1;
        break;
    case 1:
        p->id = rn(g, 10);
        break;
    case 2:
        p->id = (int64_t)(test_rand(&g->rng) % (uint64_t)(MAX_SAFE + 1));
        break;
    default:
        p->id = MAX_SAFE - rn(g, 2);
        break;
    }
    pbuf raw = {0};
    bool has = rdata(g, p->type, &raw);
    bool binary = p->type == SIO_BINARY_EVENT || p->type == SIO_BINARY_ACK;
    p->att = binary ? g->placeholders : 0;
    p->text.len = 0;
    assert_int_equal(sio_write_head(&p->text, p->type, p->att, p->nsp, strlen(p->nsp), p->id), 0);
    p->data_off = p->text.len;
    if (has) {
        json_val v;
        size_t off = 0;
        int rc = json_parse((char *)raw.ptr, raw.len, 32, &v, &off);
        if (rc) print_error("generated bad JSON at %zu: %.*s\n", off, (int)raw.len, raw.ptr);
        assert_int_equal(rc, 0);
        assert_int_equal(json_compact(&p->text, &v), 0);
    }
    pbuf_free(&raw);
}

static void count_cb(const json_val *ph, unsigned num, void *user)
{
    (void)ph;
    unsigned *seen = user;
    /* the generator numbers placeholders in document order */
    assert_int_equal(num, seen[0]);
    seen[0]++;
}

static void check_rpacket(const rpkt *r, const char *s, size_t len)
{
    sio_packet p;
    const char *why = NULL;
    int rc = sio_parse(s, len, NULL, &p, &why);
    if (rc) print_error("rejected (%s): %.*s\n", why, (int)len, s);
    assert_int_equal(rc, 0);
    assert_int_equal(p.type, r->type);
    assert_int_equal(p.attachments, r->att);
    assert_int_equal(p.nsp_len, strlen(r->nsp));
    assert_memory_equal(p.nsp, r->nsp, p.nsp_len);
    assert_true(p.id == r->id);
    if (len > r->data_off) {
        assert_ptr_equal(p.data.p, s + r->data_off);
        assert_int_equal(p.data.len, len - r->data_off);
    } else {
        assert_int_equal(p.data.type, JSON_INVALID);
    }
    unsigned seen = 0;
    assert_int_equal(sio_check_placeholders(&p.data, p.attachments, 32, count_cb, &seen, &why), 0);
    assert_int_equal(seen, r->att);
    /* re-encoding head + compact data gives the same bytes */
    pbuf again = {0};
    assert_int_equal(sio_write_head(&again, p.type, p.attachments, p.nsp, p.nsp_len, p.id), 0);
    if (p.data.type != JSON_INVALID) assert_int_equal(json_compact(&again, &p.data), 0);
    assert_int_equal(again.len, len);
    assert_memory_equal(again.ptr, s, len);
    pbuf_free(&again);
}

static void test_random_round_trip(void **state)
{
    (void)state;
    rgen g = {.rng = chop_seed() ^ 0x73696full};
    rpkt r = {0};
    for (int round = 0; round < 5000; round++) {
        rpacket(&g, &r);
        char *copy = malloc(r.text.len);
        memcpy(copy, r.text.ptr, r.text.len);
        check_rpacket(&r, copy, r.text.len);
        free(copy);
    }
    pbuf_free(&r.text);
}

/* Whole polling bodies: random Socket.IO packets, each an Engine.IO
 * message followed by its binary attachments, interleaved with pings;
 * the payload iterator and the packet parser give everything back. */
static void test_polling_bodies(void **state)
{
    (void)state;
    rgen g = {.rng = chop_seed() ^ 0x706f6cull};
    enum { MAXP = 30 };
    for (int round = 0; round < 300; round++) {
        rpkt pk[MAXP];
        memset(pk, 0, sizeof pk);
        size_t n = 1 + rn(&g, MAXP);
        pbuf body = {0};
        bool first = true;
        uint8_t att[64];
        for (size_t i = 0; i < n; i++) {
            rpacket(&g, &pk[i]);
            if (rn(&g, 5) == 0) {
                assert_int_equal(eio_payload_append(&body, first, EIO_PING, false, NULL, 0), 0);
                first = false;
            }
            assert_int_equal(eio_payload_append(&body, first, EIO_MESSAGE, false, pk[i].text.ptr,
                                                pk[i].text.len),
                             0);
            first = false;
            for (unsigned a = 0; a < pk[i].att; a++) {
                /* attachment k of packet i: k+i bytes of value i^k */
                size_t alen = (a + i) % sizeof att;
                memset(att, (int)(i ^ a), alen);
                assert_int_equal(eio_payload_append(&body, false, EIO_MESSAGE, true, att, alen), 0);
            }
        }
        eio_payload it;
        eio_packet ep;
        eio_payload_init(&it, body.ptr, body.len);
        for (size_t i = 0; i < n; i++) {
            int rc;
            do {
                rc = eio_payload_next(&it, &ep);
                assert_int_equal(rc, 1);
            } while (ep.type == EIO_PING);
            assert_int_equal(ep.type, EIO_MESSAGE);
            assert_false(ep.binary);
            check_rpacket(&pk[i], (char *)ep.data, ep.len);
            for (unsigned a = 0; a < pk[i].att; a++) {
                assert_int_equal(eio_payload_next(&it, &ep), 1);
                assert_true(ep.binary);
                size_t alen = (a + i) % sizeof att;
                assert_int_equal(ep.len, alen);
                for (size_t k = 0; k < alen; k++) assert_int_equal(ep.data[k], (uint8_t)(i ^ a));
            }
        }
        assert_int_equal(eio_payload_next(&it, &ep), 0);
        for (size_t i = 0; i < n; i++) pbuf_free(&pk[i].text);
        pbuf_free(&body);
    }
}

/* Random bytes and mutated packets never crash the parser, and what it
 * accepts re-encodes to something it accepts the same way. */
static void test_random_mutations(void **state)
{
    (void)state;
    rgen g = {.rng = chop_seed() ^ 0x6d7574ull};
    static const char alphabet[] = "0123456-/,[]{}\":_ abcnumplaceholdertrue";
    rpkt r = {0};
    for (int round = 0; round < 20000; round++) {
        rpacket(&g, &r);
        size_t len = r.text.len;
        char *s = malloc(len + 1);
        memcpy(s, r.text.ptr, len);
        unsigned muts = 1 + rn(&g, 3);
        for (unsigned m = 0; m < muts && len; m++) {
            size_t at = rn(&g, (unsigned)len);
            if (rn(&g, 3) == 0)
                len = at; /* truncate */
            else
                s[at] = alphabet[rn(&g, sizeof alphabet - 1)];
        }
        sio_packet p;
        const char *why = NULL;
        if (sio_parse(s, len, NULL, &p, &why) == 0) {
            pbuf again = {0};
            assert_int_equal(sio_write_head(&again, p.type, p.attachments, p.nsp, p.nsp_len, p.id),
                             0);
            if (p.data.type != JSON_INVALID) assert_int_equal(json_compact(&again, &p.data), 0);
            sio_packet q;
            assert_int_equal(sio_parse((char *)again.ptr, again.len, NULL, &q, &why), 0);
            assert_int_equal(q.type, p.type);
            assert_int_equal(q.attachments, p.attachments);
            assert_int_equal(q.nsp_len, p.nsp_len);
            assert_memory_equal(q.nsp, p.nsp, p.nsp_len);
            assert_true(q.id == p.id);
            assert_int_equal(q.data.type, p.data.type);
            pbuf_free(&again);
            (void)sio_check_placeholders(&p.data, p.attachments, 32, NULL, NULL, &why);
        } else {
            assert_non_null(why);
        }
        free(s);
    }
    pbuf_free(&r.text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepted),        cmocka_unit_test(test_rejected),
        cmocka_unit_test(test_limits),          cmocka_unit_test(test_reserved),
        cmocka_unit_test(test_placeholders_ok), cmocka_unit_test(test_placeholders_bad),
        cmocka_unit_test(test_write_head),      cmocka_unit_test(test_random_round_trip),
        cmocka_unit_test(test_polling_bodies),  cmocka_unit_test(test_random_mutations),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
