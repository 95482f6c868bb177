/* Unit tests for the JSON validator, navigation and writers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <locale.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/util.h"
#include "chop.h"
#include "codec/json.h"
#include "parley/parley.h"

/* A document with an explicit length (0: use strlen), so that NUL bytes
 * and raw non-UTF-8 bytes can be tested. */
typedef struct tdoc {
    const char *s;
    size_t len;
} tdoc;

static size_t doc_len(const tdoc *d)
{
    return d->len ? d->len : strlen(d->s);
}

static int parse(const char *s, size_t len, json_val *v, size_t *off)
{
    return json_parse(s, len, JSON_DEFAULT_MAX_DEPTH, v, off);
}

static int parse_z(const char *s, json_val *v)
{
    return parse(s, strlen(s), v, NULL);
}

/* Parses s and checks that the value is s without surrounding whitespace
 * and of the given type. */
static void expect_valid(const char *s, size_t len, json_type type)
{
    json_val v;
    size_t off = 12345;
    int rc = parse(s, len, &v, &off);
    if (rc) print_error("rejected (at %zu): %.*s\n", off, (int)len, s);
    assert_int_equal(rc, 0);
    assert_int_equal(v.type, type);
    size_t a = 0, b = len;
    while (a < b && strchr(" \t\n\r", s[a])) a++;
    while (b > a && strchr(" \t\n\r", s[b - 1])) b--;
    assert_ptr_equal(v.p, s + a);
    assert_int_equal(v.len, b - a);
}

static void test_valid_documents(void **state)
{
    (void)state;
    static const struct {
        tdoc d;
        json_type type;
    } v[] = {
        {{"0", 0}, JSON_NUMBER},
        {{"-0", 0}, JSON_NUMBER},
        {{"1", 0}, JSON_NUMBER},
        {{"-1", 0}, JSON_NUMBER},
        {{"10", 0}, JSON_NUMBER},
        {{"1.5", 0}, JSON_NUMBER},
        {{"-1.5e10", 0}, JSON_NUMBER},
        {{"1E5", 0}, JSON_NUMBER},
        {{"1e+5", 0}, JSON_NUMBER},
        {{"1e-5", 0}, JSON_NUMBER},
        {{"0.0", 0}, JSON_NUMBER},
        {{"0e0", 0}, JSON_NUMBER},
        {{"0E-0", 0}, JSON_NUMBER},
        {{"-0.000001", 0}, JSON_NUMBER},
        {{"123456789012345678901234567890", 0}, JSON_NUMBER},
        {{"1e400", 0}, JSON_NUMBER},
        {{"1.7976931348623157e308", 0}, JSON_NUMBER},
        {{"true", 0}, JSON_TRUE},
        {{"false", 0}, JSON_FALSE},
        {{"null", 0}, JSON_NULL},
        {{"\"\"", 0}, JSON_STRING},
        {{"\"a\"", 0}, JSON_STRING},
        {{"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", 0}, JSON_STRING},
        {{"\"\\u0000\"", 0}, JSON_STRING},
        {{"\"\\u00e9\\u00C9\"", 0}, JSON_STRING},
        {{"\"\\uD83D\\uDE00\"", 0}, JSON_STRING},
        {{"\"\\ud83d\\ude00\"", 0}, JSON_STRING},
        {{"\"\\uDBFF\\uDFFF\"", 0}, JSON_STRING},
        {{"\"\\uFFFF\\uFFFE\"", 0}, JSON_STRING},
        {{"\"\xc3\xa9\"", 0}, JSON_STRING},
        {{"\"\xe2\x82\xac\"", 0}, JSON_STRING},
        {{"\"\xf0\x9f\x98\x80\"", 0}, JSON_STRING},
        {{"\"\xf4\x8f\xbf\xbf\"", 0}, JSON_STRING},
        {{"\"\xef\xbf\xbf\"", 0}, JSON_STRING},
        {{"\"\xe2\x80\xa8\xe2\x80\xa9\"", 0}, JSON_STRING},
        {{"\"\x7f\"", 0}, JSON_STRING},
        {{"\"long string with only plain ascii bytes, enough for several words\"", 0}, JSON_STRING},
        {{"\"mixed \xc3\xa9t\xc3\xa9 and \xe6\x97\xa5\xe6\x9c\xac and \\n escapes\"", 0},
         JSON_STRING},
        {{"[]", 0}, JSON_ARRAY},
        {{"{}", 0}, JSON_OBJECT},
        {{"[ ]", 0}, JSON_ARRAY},
        {{"{ }", 0}, JSON_OBJECT},
        {{" [1, 2] ", 0}, JSON_ARRAY},
        {{"\t\n\r [] \r\n\t", 0}, JSON_ARRAY},
        {{"{\"a\":1,\"a\":2}", 0}, JSON_OBJECT},
        {{"[[[]]]", 0}, JSON_ARRAY},
        {{"{\"\":{}}", 0}, JSON_OBJECT},
        {{"[1,\"a\",true,false,null,{},[],-2.5e-3]", 0}, JSON_ARRAY},
        {{"{ \"a\" : [ 1 , { \"b\" : null } ] , \"c\" : \"d\" }", 0}, JSON_OBJECT},
        {{"[\"]\",\"}\",\"[\",\"{\",\"\\\"\",\",\"]", 0}, JSON_ARRAY},
        {{"[0,-0,0.5,10,1e1]", 0}, JSON_ARRAY},
        {{"\"\\u0022\"", 0}, JSON_STRING},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        expect_valid(v[i].d.s, doc_len(&v[i].d), v[i].type);
    }
}

static void test_invalid_documents(void **state)
{
    (void)state;
    static const struct {
        tdoc d;
        size_t off;
    } v[] = {
        {{"", 0}, 0},
        {{"   ", 0}, 3},
        {{"[1,]", 0}, 3},
        {{"[1 2]", 0}, 3},
        {{"{\"a\" 1}", 0}, 5},
        {{"01", 0}, 1},
        {{"00", 0}, 1},
        {{"-01", 0}, 2},
        {{"-", 0}, 1},
        {{"1.", 0}, 2},
        {{"1.e5", 0}, 2},
        {{".5", 0}, 0},
        {{"+1", 0}, 0},
        {{"1e", 0}, 2},
        {{"1e+", 0}, 3},
        {{"1E-x", 0}, 3},
        {{"-a", 0}, 1},
        {{"NaN", 0}, 0},
        {{"Infinity", 0}, 0},
        {{"-Infinity", 0}, 1},
        {{"0x10", 0}, 1},
        {{"1_000", 0}, 1},
        {{"tru", 0}, 3},
        {{"trUe", 0}, 2},
        {{"True", 0}, 0},
        {{"nul", 0}, 3},
        {{"nulll", 0}, 4},
        {{"falsey", 0}, 5},
        {{"undefined", 0}, 0},
        {{"\"abc", 0}, 4},
        {{"\"", 0}, 1},
        {{"\"a\x01\"", 0}, 2},
        {{"\"a\x1f\"", 0}, 2},
        {{"\"a\tb\"", 0}, 2},
        {{"\"a\nb\"", 0}, 2},
        {{"\"a\0b\"", 5}, 2},
        {{"\"\\x\"", 0}, 2},
        {{"\"\\'\"", 0}, 2},
        {{"\"\\U0041\"", 0}, 2},
        {{"\"\\", 0}, 1},
        {{"\"\\u12G4\"", 0}, 1},
        {{"\"\\u123\"", 0}, 1},
        {{"\"\\u12", 0}, 5},
        {{"\"\\uDC00\"", 0}, 1},
        {{"\"\\uDFFF\"", 0}, 1},
        {{"\"\\uD800\"", 0}, 1},
        {{"\"\\uDBFF\"", 0}, 1},
        {{"\"\\uD800\\u0041\"", 0}, 1},
        {{"\"\\uD800\\uD800\"", 0}, 1},
        {{"\"\\uD800\\n\"", 0}, 1},
        {{"\"\\uD800x\\uDC00\"", 0}, 1},
        {{"\"\\uDC00\\uD800\"", 0}, 1},
        {{"\"ok\\uD83D\"", 0}, 3},
        {{"[", 0}, 1},
        {{"]", 0}, 0},
        {{"{", 0}, 1},
        {{"}", 0}, 0},
        {{"{\"a\":1", 0}, 6},
        {{"{\"a\":", 0}, 5},
        {{"{\"a\"", 0}, 4},
        {{"[1]]", 0}, 3},
        {{"[1}", 0}, 2},
        {{"{\"a\":1]", 0}, 6},
        {{"{,}", 0}, 1},
        {{"{\"a\"}", 0}, 4},
        {{"{1:2}", 0}, 1},
        {{"{a:1}", 0}, 1},
        {{"{'a':1}", 0}, 1},
        {{"{\"a\":1,}", 0}, 7},
        {{"{\"a\"::1}", 0}, 5},
        {{"[1,2,]", 0}, 5},
        {{"[,1]", 0}, 1},
        {{"[1,,2]", 0}, 3},
        {{"\xef\xbb\xbf[]", 0}, 0},
        {{"/* c */ 1", 0}, 0},
        {{"1 // c", 0}, 2},
        {{"[\"a\"\x0b]", 0}, 4},
        {{"\x0c[]", 0}, 0},
        {{"[]\xc2\xa0", 0}, 2},
        {{"1 2", 0}, 2},
        {{"[] []", 0}, 3},
        {{"{}{}", 0}, 2},
        {{"\"a\"\"b\"", 0}, 3},
        {{"'a'", 0}, 0},
        {{"[\"a\\\"]", 0}, 6},
        /* UTF-8 inside strings */
        {{"\"\xc0\x80\"", 0}, 1},
        {{"\"\xc1\xbf\"", 0}, 1},
        {{"\"\xe0\x80\x80\"", 0}, 2},
        {{"\"\xe0\x9f\xbf\"", 0}, 2},
        {{"\"\xed\xa0\x80\"", 0}, 2},
        {{"\"\xed\xbf\xbf\"", 0}, 2},
        {{"\"\xf0\x80\x80\x80\"", 0}, 2},
        {{"\"\xf4\x90\x80\x80\"", 0}, 2},
        {{"\"\xf5\x80\x80\x80\"", 0}, 1},
        {{"\"\xff\"", 0}, 1},
        {{"\"\x80\"", 0}, 1},
        {{"\"ab\xbf\"", 0}, 3},
        {{"\"\xc3\"", 0}, 2},
        {{"\"\xe2\x82\"", 0}, 3},
        {{"\"\xf0\x9f\x98\"", 0}, 4},
        {{"\"\xc3\xa9\xc3\"", 0}, 4},
        {{"\"\xc3\xc3\xa9\"", 0}, 2},
        {{"\"\xc3", 0}, 2},
        /* UTF-8 outside strings is never valid either */
        {{"\xc3\xa9", 0}, 0},
        {{"[\xc3\xa9]", 0}, 1},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        json_val val;
        size_t off = 9999;
        size_t len = doc_len(&v[i].d);
        int rc = parse(v[i].d.s, len, &val, &off);
        if (rc != PARLEY_EPROTO || off != v[i].off)
            print_error("case %zu: rc %d off %zu (want %zu): %.*s\n", i, rc, off, v[i].off,
                        (int)len, v[i].d.s);
        assert_int_equal(rc, PARLEY_EPROTO);
        assert_int_equal(off, v[i].off);
        assert_int_equal(val.type, JSON_INVALID);
        /* err_off and v are optional */
        assert_int_equal(json_parse(v[i].d.s, len, 32, NULL, NULL), PARLEY_EPROTO);
    }
}

/* Every proper prefix of a container or string document is invalid. */
static void test_truncations(void **state)
{
    (void)state;
    static const char *const docs[] = {
        "{\"a\":[1,2,{\"b\":\"c\\n\\u00e9\\ud83d\\ude00\"}],\"d\":true,\"e\":null}",
        "[\"\xe6\x97\xa5\xe6\x9c\xac\",false,-1.5e+3,{}]",
        "\"\xf0\x9f\x98\x80 plain text that is long enough for the word loop\"",
        "true",
        "false",
        "null",
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(docs); i++) {
        size_t len = strlen(docs[i]);
        expect_valid(docs[i], len,
                     docs[i][0] == '{'   ? JSON_OBJECT
                     : docs[i][0] == '[' ? JSON_ARRAY
                     : docs[i][0] == '"' ? JSON_STRING
                     : docs[i][0] == 't' ? JSON_TRUE
                     : docs[i][0] == 'f' ? JSON_FALSE
                                         : JSON_NULL);
        for (size_t n = 0; n < len; n++) {
            /* a copy of exactly n bytes, so that ASan sees any over-read */
            char *c = malloc(n ? n : 1);
            memcpy(c, docs[i], n);
            size_t off = 9999;
            assert_int_equal(parse(c, n, NULL, &off), PARLEY_EPROTO);
            assert_true(off <= n);
            free(c);
        }
    }
}

static char *nested(const char *open, const char *close, unsigned n, size_t *len)
{
    size_t lo = strlen(open), lc = strlen(close);
    char *s = malloc(n * (lo + lc) + 2);
    size_t k = 0;
    for (unsigned i = 0; i < n; i++) {
        memcpy(s + k, open, lo);
        k += lo;
    }
    s[k++] = '1';
    for (unsigned i = 0; i < n; i++) {
        memcpy(s + k, close, lc);
        k += lc;
    }
    s[k] = '\0';
    *len = k;
    return s;
}

static void test_depth(void **state)
{
    (void)state;
    static const struct {
        const char *open, *close;
    } kinds[] = {{"[", "]"}, {"{\"k\":", "}"}, {"[{\"k\":", "}]"}};
    static const unsigned limits[] = {0, 1, 2, 32, 100, 1000, 1024};
    for (size_t k = 0; k < PARLEY_ARRAY_LEN(kinds); k++) {
        unsigned per = k == 2 ? 2 : 1;
        for (size_t l = 0; l < PARLEY_ARRAY_LEN(limits); l++) {
            unsigned lim = limits[l];
            for (unsigned n = lim / per > 2 ? lim / per - 2 : 0; n <= lim / per + 2; n++) {
                size_t len;
                char *s = nested(kinds[k].open, kinds[k].close, n, &len);
                json_val v;
                size_t off = 0;
                int rc = json_parse(s, len, lim, &v, &off);
                if (n * per <= lim) {
                    assert_int_equal(rc, 0);
                    assert_int_equal(v.len, len);
                } else {
                    assert_int_equal(rc, PARLEY_EPROTO);
                    /* fails at the first bracket beyond the limit */
                    size_t lo = strlen(kinds[k].open);
                    size_t want = (lim / per) * lo;
                    if (per == 2 && lim % 2) want += 1;
                    assert_int_equal(off, want);
                }
                free(s);
            }
        }
    }
    /* limits above the internal cap act as the cap */
    size_t len;
    char *s = nested("[", "]", 1024, &len);
    assert_int_equal(json_parse(s, len, 5000, NULL, NULL), 0);
    free(s);
    s = nested("[", "]", 1025, &len);
    assert_int_equal(json_parse(s, len, 5000, NULL, NULL), PARLEY_EPROTO);
    free(s);
    /* scalars need no depth at all; depth counts open containers only */
    assert_int_equal(json_parse("\"x\"", 3, 0, NULL, NULL), 0);
    assert_int_equal(json_parse("[]", 2, 0, NULL, NULL), PARLEY_EPROTO);
    assert_int_equal(json_parse("[1,[2],{\"a\":3}]", 15, 2, NULL, NULL), 0);
    assert_int_equal(json_parse("[1,[2],{\"a\":[3]}]", 17, 2, NULL, NULL), PARLEY_EPROTO);
    /* many siblings at depth 1 do not accumulate */
    pbuf b = {0};
    pbuf_append_str(&b, "[");
    for (int i = 0; i < 5000; i++) pbuf_append_str(&b, i ? ",[]" : "[]");
    pbuf_append_str(&b, "]");
    assert_int_equal(json_parse((char *)b.ptr, b.len, 2, NULL, NULL), 0);
    pbuf_free(&b);
}

/* All two-byte sequences after a quote, and all code points via \u: the
 * validator agrees with a direct definition of valid UTF-8. */
static void test_utf8_exhaustive(void **state)
{
    (void)state;
    char s[8];
    for (unsigned a = 0x80; a < 0x100; a++) {
        for (unsigned b = 0; b < 0x100; b++) {
            s[0] = '"';
            s[1] = (char)a;
            s[2] = (char)b;
            s[3] = '"';
            bool want = a >= 0xC2 && a <= 0xDF && b >= 0x80 && b <= 0xBF;
            assert_int_equal(parse(s, 4, NULL, NULL) == 0, want);
        }
    }
    for (unsigned cp = 0; cp < 0x10000; cp++) {
        snprintf(s, sizeof s, "\\u%04X", cp);
        char d[9] = {'"'};
        memcpy(d + 1, s, 6);
        d[7] = '"';
        bool want = cp < 0xD800 || cp > 0xDFFF;
        assert_int_equal(parse(d, 8, NULL, NULL) == 0, want);
    }
    /* all three-byte sequences E0..EF xx yy against the ranges */
    for (unsigned a = 0xE0; a <= 0xEF; a++) {
        for (unsigned b = 0x80; b < 0xC0; b++) {
            for (unsigned c = 0x70; c < 0xD0; c += 0x0F) {
                s[0] = '"';
                s[1] = (char)a;
                s[2] = (char)b;
                s[3] = (char)c;
                s[4] = '"';
                unsigned cp = (a & 0x0F) << 12 | (b & 0x3F) << 6 | (c & 0x3F);
                bool want =
                    c >= 0x80 && c <= 0xBF && cp >= 0x800 && !(cp >= 0xD800 && cp <= 0xDFFF);
                assert_int_equal(parse(s, 5, NULL, NULL) == 0, want);
            }
        }
    }
}

static void test_compact(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } v[] = {
        {" [ 1 , 2 ] ", "[1,2]"},
        {"{ \"a\" : \"b c\" , \"d\" : [ ] }", "{\"a\":\"b c\",\"d\":[]}"},
        {"\"  spaced  \"", "\"  spaced  \""},
        {"[1.50, 1e+5, -0, 1E2, 0.0]", "[1.50,1e+5,-0,1E2,0.0]"},
        {"\"\\u0041\\/\"", "\"\\u0041\\/\""},
        {"{\"a\\\" b\" : \" x \\\\\" , \"\\\\\" : \" \"}",
         "{\"a\\\" b\":\" x \\\\\",\"\\\\\":\" \"}"},
        {"\n{\n  \"k\": [\n    true,\n    null\n  ]\n}\n", "{\"k\":[true,null]}"},
        {"{\"b\":1,\"a\":2,\"b\":3}", "{\"b\":1,\"a\":2,\"b\":3}"},
        {"[ { } , [ ] , [ [ ] ] ]", "[{},[],[[]]]"},
        {"\t\r\n42\t\r\n", "42"},
        {"[\"\xe6\x97\xa5 \xe6\x9c\xac\" , \"\\ud83d\\ude00\"]",
         "[\"\xe6\x97\xa5 \xe6\x9c\xac\",\"\\ud83d\\ude00\"]"},
        {"true", "true"},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        json_val val;
        assert_int_equal(parse_z(v[i].in, &val), 0);
        pbuf b = {0};
        pbuf_append_str(&b, "prefix:");
        assert_int_equal(json_compact(&b, &val), 0);
        assert_int_equal(b.len, 7 + strlen(v[i].out));
        assert_memory_equal(b.ptr, "prefix:", 7);
        assert_memory_equal(b.ptr + 7, v[i].out, strlen(v[i].out));
        /* compact output is valid and a fixed point */
        json_val again;
        assert_int_equal(parse((char *)b.ptr + 7, b.len - 7, &again, NULL), 0);
        assert_int_equal(again.type, val.type);
        pbuf c = {0};
        assert_int_equal(json_compact(&c, &again), 0);
        assert_int_equal(c.len, b.len - 7);
        assert_memory_equal(c.ptr, b.ptr + 7, c.len);
        pbuf_free(&b);
        pbuf_free(&c);
    }
    /* compacting an element of a larger document */
    json_val doc, e;
    const char *s = "[ 0 , { \"x\" : [ 1 , 2 ] } ]";
    assert_int_equal(parse_z(s, &doc), 0);
    json_iter it;
    json_iter_init(&it, &doc);
    assert_true(json_array_next(&it, &e));
    assert_true(json_array_next(&it, &e));
    pbuf b = {0};
    assert_int_equal(json_compact(&b, &e), 0);
    assert_int_equal(b.len, 11);
    assert_memory_equal(b.ptr, "{\"x\":[1,2]}", 11);
    pbuf_free(&b);
    json_val bad = {JSON_INVALID, NULL, 0};
    assert_int_equal(json_compact(&b, &bad), PARLEY_EINVAL);
}

static void test_iterate(void **state)
{
    (void)state;
    json_val doc, e, k;
    json_iter it;
    const char *s = " [ 1 , \"two\" , [ 3 , [ ] ] , { \"f\" : \"]\" } , true , false , null , "
                    "-4.5e1 , \"a,b\" ] ";
    assert_int_equal(parse_z(s, &doc), 0);
    assert_int_equal(json_count(&doc), 9);
    static const struct {
        json_type t;
        const char *text;
    } want[] = {
        {JSON_NUMBER, "1"},          {JSON_STRING, "\"two\""},
        {JSON_ARRAY, "[ 3 , [ ] ]"}, {JSON_OBJECT, "{ \"f\" : \"]\" }"},
        {JSON_TRUE, "true"},         {JSON_FALSE, "false"},
        {JSON_NULL, "null"},         {JSON_NUMBER, "-4.5e1"},
        {JSON_STRING, "\"a,b\""},
    };
    json_iter_init(&it, &doc);
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(want); i++) {
        assert_true(json_array_next(&it, &e));
        assert_int_equal(e.type, want[i].t);
        assert_int_equal(e.len, strlen(want[i].text));
        assert_memory_equal(e.p, want[i].text, e.len);
        if (i == 2) {
            json_iter in;
            json_val x;
            json_iter_init(&in, &e);
            assert_true(json_array_next(&in, &x));
            assert_int_equal(x.type, JSON_NUMBER);
            assert_true(json_array_next(&in, &x));
            assert_int_equal(x.type, JSON_ARRAY);
            assert_int_equal(json_count(&x), 0);
            assert_false(json_array_next(&in, &x));
        }
    }
    assert_false(json_array_next(&it, &e));
    assert_false(json_array_next(&it, &e));

    /* objects */
    s = "{\"a\":1, \"b\" : {\"c\":[{}]} ,\"a\":\"second\",\"\\u0061\":3,\"\":null}";
    assert_int_equal(parse_z(s, &doc), 0);
    assert_int_equal(json_count(&doc), 5);
    json_iter_init(&it, &doc);
    static const char *const keys[] = {"\"a\"", "\"b\"", "\"a\"", "\"\\u0061\"", "\"\""};
    static const char *const vals[] = {"1", "{\"c\":[{}]}", "\"second\"", "3", "null"};
    for (size_t i = 0; i < 5; i++) {
        assert_true(json_object_next(&it, &k, &e));
        assert_int_equal(k.type, JSON_STRING);
        assert_int_equal(k.len, strlen(keys[i]));
        assert_memory_equal(k.p, keys[i], k.len);
        assert_int_equal(e.len, strlen(vals[i]));
        assert_memory_equal(e.p, vals[i], e.len);
    }
    assert_false(json_object_next(&it, &k, &e));

    /* lookup: first of repeated names, names compared unescaped */
    assert_true(json_object_get(&doc, "a", &e));
    assert_memory_equal(e.p, "1", 1);
    assert_true(json_object_get(&doc, "b", &e));
    assert_int_equal(e.type, JSON_OBJECT);
    assert_true(json_object_get(&e, "c", &e));
    assert_int_equal(e.type, JSON_ARRAY);
    assert_true(json_object_get(&doc, "", &e));
    assert_int_equal(e.type, JSON_NULL);
    assert_false(json_object_get(&doc, "c", &e));
    assert_false(json_object_get(&doc, "A", &e));
    /* lookup on a non-object finds nothing */
    assert_int_equal(parse_z("[\"a\"]", &doc), 0);
    assert_false(json_object_get(&doc, "a", &e));
    assert_int_equal(parse_z("{\"\\u0078y\":7}", &doc), 0);
    assert_true(json_object_get(&doc, "xy", &e));
    assert_int_equal(e.type, JSON_NUMBER);

    /* empty containers and scalars */
    assert_int_equal(parse_z("{ }", &doc), 0);
    assert_int_equal(json_count(&doc), 0);
    json_iter_init(&it, &doc);
    assert_false(json_object_next(&it, &k, &e));
    assert_int_equal(parse_z("[\n]", &doc), 0);
    json_iter_init(&it, &doc);
    assert_false(json_array_next(&it, &e));
    assert_int_equal(parse_z("7", &doc), 0);
    assert_int_equal(json_count(&doc), 0);
    json_iter_init(&it, &doc);
    assert_false(json_array_next(&it, &e));

    /* strings with escaped quotes and brackets do not confuse skipping */
    s = "[\"\\\"]\\\\\",{\"k\\\"}\":\"}\\\\\"},[\"[\"],0]";
    assert_int_equal(parse_z(s, &doc), 0);
    assert_int_equal(json_count(&doc), 4);
    json_iter_init(&it, &doc);
    assert_true(json_array_next(&it, &e));
    assert_int_equal(e.len, 7);
    assert_true(json_array_next(&it, &e));
    assert_int_equal(e.type, JSON_OBJECT);
    assert_int_equal(e.len, 14);
    assert_true(json_object_get(&e, "k\"}", &k));
    assert_true(json_string_eq(&k, "}\\"));
    assert_true(json_array_next(&it, &e));
    assert_int_equal(e.len, 5);
    assert_true(json_array_next(&it, &e));
    assert_int_equal(e.type, JSON_NUMBER);
    assert_false(json_array_next(&it, &e));
}

static void test_strings(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        const char *want;
        size_t want_len;
    } v[] = {
        {"\"\"", "", 0},
        {"\"abc\"", "abc", 3},
        {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t", 8},
        {"\"\\u0000x\"", "\0x", 2},
        {"\"\\u0041\\u00e9\\u20AC\"", "A\xc3\xa9\xe2\x82\xac", 6},
        {"\"\\ud83d\\ude00!\"", "\xf0\x9f\x98\x80!", 5},
        {"\"\\uDBFF\\uDFFF\"", "\xf4\x8f\xbf\xbf", 4},
        {"\"\\u07ff\\u0800\\uffff\"", "\xdf\xbf\xe0\xa0\x80\xef\xbf\xbf", 8},
        {"\"raw \xc3\xa9 and \\u00e9\"", "raw \xc3\xa9 and \xc3\xa9", 13},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        json_val s;
        assert_int_equal(parse_z(v[i].json, &s), 0);
        char out[64];
        long n = json_string_decode(&s, out, sizeof out);
        assert_int_equal(n, (long)v[i].want_len);
        assert_memory_equal(out, v[i].want, v[i].want_len);
        assert_true((size_t)n <= s.len - 2);
        /* exact capacity fits, one less does not */
        assert_int_equal(json_string_decode(&s, out, v[i].want_len), (long)v[i].want_len);
        if (v[i].want_len) assert_int_equal(json_string_decode(&s, out, v[i].want_len - 1), -1);
        if (!memchr(v[i].want, '\0', v[i].want_len)) {
            char z[64];
            memcpy(z, v[i].want, v[i].want_len);
            z[v[i].want_len] = '\0';
            assert_true(json_string_eq(&s, z));
            z[v[i].want_len] = 'x';
            z[v[i].want_len + 1] = '\0';
            assert_false(json_string_eq(&s, z));
            if (v[i].want_len) {
                z[v[i].want_len - 1] = '\0';
                assert_false(json_string_eq(&s, z));
            }
        }
    }
    json_val s;
    assert_int_equal(parse_z("\"a\\u0000\"", &s), 0);
    assert_false(json_string_eq(&s, "a"));
    assert_int_equal(parse_z("\"connect\"", &s), 0);
    assert_true(json_string_eq(&s, "connect"));
    assert_false(json_string_eq(&s, "connec"));
    assert_false(json_string_eq(&s, "connectx"));
    assert_int_equal(parse_z("\"\\u0063onnect\"", &s), 0);
    assert_true(json_string_eq(&s, "connect"));
    assert_false(json_string_eq(&s, "Connect"));
    assert_false(json_string_eq(&s, "connect_error"));
    /* only strings are strings */
    assert_int_equal(parse_z("123", &s), 0);
    assert_false(json_string_eq(&s, "123"));
    char out[8];
    assert_int_equal(json_string_decode(&s, out, sizeof out), -1);
    assert_int_equal(parse_z("[]", &s), 0);
    assert_false(json_string_eq(&s, "[]"));
}

static void test_numbers(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        bool ok;
        int64_t v;
    } ints[] = {
        {"0", true, 0},
        {"-0", true, 0},
        {"7", true, 7},
        {"-7", true, -7},
        {"9007199254740991", true, 9007199254740991LL},
        {"9223372036854775807", true, INT64_MAX},
        {"9223372036854775808", false, 0},
        {"-9223372036854775808", true, INT64_MIN},
        {"-9223372036854775809", false, 0},
        {"18446744073709551616", false, 0},
        {"99999999999999999999999", false, 0},
        {"1.0", false, 0},
        {"1e2", false, 0},
        {"1E2", false, 0},
        {"-0.5", false, 0},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(ints); i++) {
        json_val v;
        assert_int_equal(parse_z(ints[i].s, &v), 0);
        int64_t x = 42;
        assert_int_equal(json_int(&v, &x), ints[i].ok);
        if (ints[i].ok) assert_true(x == ints[i].v);
    }
    json_val v;
    int64_t x;
    double d;
    assert_int_equal(parse_z("\"1\"", &v), 0);
    assert_false(json_int(&v, &x));
    assert_false(json_double(&v, &d));
    assert_int_equal(parse_z("true", &v), 0);
    assert_false(json_int(&v, &x));

    static const struct {
        const char *s;
        double v;
    } dbl[] = {
        {"0", 0.0},
        {"1.5", 1.5},
        {"-2.25e2", -225.0},
        {"1E-2", 0.01},
        {"0.1", 0.1},
        {"123456789012345678901234567890", 123456789012345678901234567890.0},
        {"1.7976931348623157e308", 1.7976931348623157e308},
        {"4.9e-324", 4.9e-324},
        {"1e-400", 0.0},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(dbl); i++) {
        assert_int_equal(parse_z(dbl[i].s, &v), 0);
        assert_true(json_double(&v, &d));
        assert_true(d == dbl[i].v);
    }
    assert_int_equal(parse_z("-0", &v), 0);
    assert_true(json_double(&v, &d));
    assert_true(d == 0 && signbit(d));
    assert_int_equal(parse_z("1e400", &v), 0);
    assert_true(json_double(&v, &d));
    assert_true(isinf(d) && d > 0);
    assert_int_equal(parse_z("-1e400", &v), 0);
    assert_true(json_double(&v, &d));
    assert_true(isinf(d) && d < 0);

    /* numbers too long for the copy buffer */
    pbuf b = {0};
    pbuf_append_str(&b, "1.");
    for (int i = 0; i < 2000; i++) pbuf_append_str(&b, "0");
    assert_int_equal(parse((char *)b.ptr, b.len, &v, NULL), 0);
    assert_true(json_double(&v, &d));
    assert_true(d == 1.0);
    b.len = 0;
    pbuf_append_str(&b, "-0.");
    for (int i = 0; i < 1500; i++) pbuf_append_str(&b, "0");
    pbuf_append_str(&b, "25e1502");
    assert_int_equal(parse((char *)b.ptr, b.len, &v, NULL), 0);
    assert_true(json_double(&v, &d));
    assert_true(d == -25.0);
    b.len = 0;
    pbuf_append_str(&b, "123");
    for (int i = 0; i < 1000; i++) pbuf_append_str(&b, "0");
    pbuf_append_str(&b, "e-1000");
    assert_int_equal(parse((char *)b.ptr, b.len, &v, NULL), 0);
    assert_true(json_double(&v, &d));
    assert_true(d == 123.0);
    b.len = 0;
    pbuf_append_str(&b, "9");
    for (int i = 0; i < 1000; i++) pbuf_append_str(&b, "9");
    assert_int_equal(parse((char *)b.ptr, b.len, &v, NULL), 0);
    assert_true(json_double(&v, &d));
    assert_true(isinf(d));
    b.len = 0;
    pbuf_append_str(&b, "0.");
    for (int i = 0; i < 1000; i++) pbuf_append_str(&b, "0");
    pbuf_append_str(&b, "1e999999999999999999999");
    assert_int_equal(parse((char *)b.ptr, b.len, &v, NULL), 0);
    assert_true(json_double(&v, &d));
    assert_true(isinf(d));
    b.len = 0;
    pbuf_append_str(&b, "-0.");
    for (int i = 0; i < 1000; i++) pbuf_append_str(&b, "0");
    assert_int_equal(parse((char *)b.ptr, b.len, &v, NULL), 0);
    assert_true(json_double(&v, &d));
    assert_true(d == 0 && signbit(d));
    /* 0.1 followed by many digits: rounding needs the sticky tail.
     * 2^-1 + 2^-54 (halfway between two doubles) plus a tiny excess must
     * round up; without the excess it rounds to even (down). */
    b.len = 0;
    pbuf_append_str(&b, "0.500000000000000055511151231257827021181583404541015625");
    assert_int_equal(parse((char *)b.ptr, b.len, &v, NULL), 0);
    assert_true(json_double(&v, &d));
    assert_true(d == 0.5);
    for (int i = 0; i < 900; i++) pbuf_append_str(&b, "0");
    pbuf_append_str(&b, "1");
    assert_int_equal(parse((char *)b.ptr, b.len, &v, NULL), 0);
    assert_true(json_double(&v, &d));
    assert_true(d == 0.5 + 0x1p-53); /* the next double after 0.5 */
    pbuf_free(&b);

    /* the decimal point does not follow the C locale of the process */
    static const char *const comma_locales[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "de_DE",
                                                "fr_FR"};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(comma_locales); i++) {
        if (!setlocale(LC_NUMERIC, comma_locales[i])) continue;
        assert_int_equal(parse_z("2.5", &v), 0);
        assert_true(json_double(&v, &d));
        setlocale(LC_NUMERIC, "C");
        assert_true(d == 2.5);
        break;
    }
}

static void test_append_string(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t len;
        const char *out;
    } v[] = {
        {"", 0, "\"\""},
        {"abc", 3, "\"abc\""},
        {"a\"b\\c/", 6, "\"a\\\"b\\\\c/\""},
        {"\b\f\n\r\t", 5, "\"\\b\\f\\n\\r\\t\""},
        {"\x01\x1f\x7f", 3, "\"\\u0001\\u001f\x7f\""},
        {"\0", 1, "\"\\u0000\""},
        {"\x0b\x1b", 2, "\"\\u000b\\u001b\""},
        {"\xc3\xa9\xe2\x80\xa8\xf0\x9f\x98\x80", 9, "\"\xc3\xa9\xe2\x80\xa8\xf0\x9f\x98\x80\""},
        {"<script>&'", 10, "\"<script>&'\""},
    };
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(v); i++) {
        pbuf b = {0};
        pbuf_append_str(&b, "x");
        assert_int_equal(json_append_string(&b, v[i].in, v[i].len), 0);
        assert_int_equal(b.len, 1 + strlen(v[i].out));
        assert_memory_equal(b.ptr + 1, v[i].out, b.len - 1);
        /* round trip */
        json_val s;
        assert_int_equal(parse((char *)b.ptr + 1, b.len - 1, &s, NULL), 0);
        assert_int_equal(s.type, JSON_STRING);
        char out[64];
        assert_int_equal(json_string_decode(&s, out, sizeof out), (long)v[i].len);
        assert_memory_equal(out, v[i].in, v[i].len);
        pbuf_free(&b);
    }
    static const tdoc bad[] = {
        {"\xc3", 1}, {"a\xff", 2}, {"\xed\xa0\x80", 3}, {"\xc0\x80", 2}, {"\xf4\x90\x80\x80", 4}};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(bad); i++) {
        pbuf b = {0};
        pbuf_append_str(&b, "keep");
        assert_int_equal(json_append_string(&b, bad[i].s, bad[i].len), PARLEY_EINVAL);
        assert_int_equal(b.len, 4);
        pbuf_free(&b);
    }
    /* every byte value below 0x80 round-trips */
    char all[128];
    for (int i = 0; i < 128; i++) all[i] = (char)i;
    pbuf b = {0};
    assert_int_equal(json_append_string(&b, all, sizeof all), 0);
    json_val s;
    assert_int_equal(parse((char *)b.ptr, b.len, &s, NULL), 0);
    char out[128];
    assert_int_equal(json_string_decode(&s, out, sizeof out), 128);
    assert_memory_equal(out, all, 128);
    pbuf_free(&b);
}

/* ---- Randomized: documents built from random values, written with
 * random whitespace, must validate, compact to the whitespace-free
 * rendering, and iterate back to the same structure. */

typedef struct gen {
    uint64_t rng;
    pbuf spaced, tight;
} gen;

static unsigned rnd(gen *g, unsigned n)
{
    return (unsigned)(test_rand(&g->rng) % n);
}

static void put(gen *g, const char *s, size_t n)
{
    pbuf_append(&g->spaced, s, n);
    pbuf_append(&g->tight, s, n);
}

static void ws(gen *g)
{
    static const char w[] = " \t\n\r";
    if (rnd(g, 3) == 0) return;
    unsigned n = 1 + rnd(g, 3);
    for (unsigned i = 0; i < n; i++) pbuf_append(&g->spaced, &w[rnd(g, 4)], 1);
}

static void gen_string(gen *g)
{
    static const char *const parts[] = {"a",
                                        "Z",
                                        " ",
                                        "\\\"",
                                        "\\\\",
                                        "\\/",
                                        "\\n",
                                        "\\u00e9",
                                        "\\ud83d\\ude00",
                                        "\xc3\xa9",
                                        "\xe2\x82\xac",
                                        "\xf0\x9f\x98\x80",
                                        "plain text run ",
                                        "[",
                                        "]",
                                        "{",
                                        "}",
                                        ",",
                                        ":",
                                        "\\u0000",
                                        "\x7f"};
    put(g, "\"", 1);
    unsigned n = rnd(g, 6);
    for (unsigned i = 0; i < n; i++) {
        const char *p = parts[rnd(g, PARLEY_ARRAY_LEN(parts))];
        put(g, p, strlen(p));
    }
    put(g, "\"", 1);
}

static void gen_value(gen *g, unsigned depth)
{
    static const char *const scalars[] = {
        "0",    "-0",   "1",     "-12.5e+3", "3.25",
        "1E-7", "true", "false", "null",     "123456789012345678901"};
    unsigned k = depth >= 6 ? rnd(g, 2) : rnd(g, 4);
    if (k == 0) {
        const char *s = scalars[rnd(g, PARLEY_ARRAY_LEN(scalars))];
        put(g, s, strlen(s));
    } else if (k == 1) {
        gen_string(g);
    } else {
        bool obj = k == 3;
        put(g, obj ? "{" : "[", 1);
        unsigned n = rnd(g, 5);
        for (unsigned i = 0; i < n; i++) {
            ws(g);
            if (i) {
                put(g, ",", 1);
                ws(g);
            }
            if (obj) {
                gen_string(g);
                ws(g);
                put(g, ":", 1);
                ws(g);
            }
            gen_value(g, depth + 1);
        }
        ws(g);
        put(g, obj ? "}" : "]", 1);
    }
}

/* Walks v and appends a compact rendering built only from the iterators;
 * returns the number of values visited. */
static size_t rebuild(pbuf *out, const json_val *v)
{
    size_t n = 1;
    if (v->type == JSON_ARRAY || v->type == JSON_OBJECT) {
        bool obj = v->type == JSON_OBJECT;
        json_iter it;
        json_val k, e;
        size_t count = 0;
        pbuf_append(out, obj ? "{" : "[", 1);
        json_iter_init(&it, v);
        while (obj ? json_object_next(&it, &k, &e) : json_array_next(&it, &e)) {
            if (count++) pbuf_append(out, ",", 1);
            if (obj) {
                assert_int_equal(k.type, JSON_STRING);
                pbuf_append(out, k.p, k.len);
                pbuf_append(out, ":", 1);
            }
            n += rebuild(out, &e);
        }
        assert_int_equal(count, json_count(v));
        pbuf_append(out, obj ? "}" : "]", 1);
    } else {
        if (v->type == JSON_STRING) {
            char buf[256];
            long d = json_string_decode(v, buf, sizeof buf);
            assert_true(d >= 0 && (size_t)d <= v->len - 2);
            /* the decoded text is UTF-8 and re-encodes to an equal string */
            pbuf s = {0};
            assert_int_equal(json_append_string(&s, buf, (size_t)d), 0);
            json_val sv;
            assert_int_equal(parse((char *)s.ptr, s.len, &sv, NULL), 0);
            char buf2[256];
            assert_int_equal(json_string_decode(&sv, buf2, sizeof buf2), d);
            assert_memory_equal(buf, buf2, (size_t)d);
            if (!memchr(buf, '\0', (size_t)d)) {
                buf[d] = '\0';
                assert_true(json_string_eq(v, buf));
            }
            pbuf_free(&s);
        }
        pbuf_append(out, v->p, v->len);
    }
    return n;
}

static void test_random_documents(void **state)
{
    (void)state;
    gen g = {.rng = chop_seed() ^ 0x6a736f6eull};
    for (int round = 0; round < 3000; round++) {
        g.spaced.len = g.tight.len = 0;
        ws(&g);
        gen_value(&g, 0);
        ws(&g);
        json_val v;
        size_t off = 0;
        int rc = json_parse((char *)g.spaced.ptr, g.spaced.len, 16, &v, &off);
        if (rc)
            print_error("round %d rejected at %zu: %.*s\n", round, off, (int)g.spaced.len,
                        (char *)g.spaced.ptr);
        assert_int_equal(rc, 0);
        pbuf c = {0};
        assert_int_equal(json_compact(&c, &v), 0);
        assert_int_equal(c.len, g.tight.len);
        assert_memory_equal(c.ptr, g.tight.ptr, c.len);
        pbuf r = {0};
        rebuild(&r, &v);
        assert_int_equal(r.len, g.tight.len);
        assert_memory_equal(r.ptr, g.tight.ptr, r.len);
        /* a copy of exactly the document, cut at a random point, is never
         * accepted as the same value (truncated text) and never over-read */
        size_t cut = (size_t)rnd(&g, (unsigned)g.spaced.len);
        char *t = malloc(cut ? cut : 1);
        memcpy(t, g.spaced.ptr, cut);
        json_val tv;
        size_t value_end = (size_t)(v.p - (char *)g.spaced.ptr) + v.len;
        if (json_parse(t, cut, 16, &tv, NULL) == 0) assert_true(cut >= value_end || tv.len < v.len);
        free(t);
        pbuf_free(&c);
        pbuf_free(&r);
    }
    pbuf_free(&g.spaced);
    pbuf_free(&g.tight);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_documents),  cmocka_unit_test(test_invalid_documents),
        cmocka_unit_test(test_truncations),      cmocka_unit_test(test_depth),
        cmocka_unit_test(test_utf8_exhaustive),  cmocka_unit_test(test_compact),
        cmocka_unit_test(test_iterate),          cmocka_unit_test(test_strings),
        cmocka_unit_test(test_numbers),          cmocka_unit_test(test_append_string),
        cmocka_unit_test(test_random_documents),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
