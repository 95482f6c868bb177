/* Unit tests for the public JSON builder and reader (parley/json.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chop.h"
#include "parley/json.h"
#include "parley/parley.h"

static parley_json_builder *newb(void)
{
    parley_json_builder *b = NULL;
    assert_int_equal(parley_json_builder_new(&b), 0);
    assert_non_null(b);
    return b;
}

static void assert_built(parley_json_builder *b, const char *want)
{
    size_t len = 99;
    const char *s = parley_json_builder_result(b, &len);
    assert_non_null(s);
    assert_int_equal(len, strlen(want));
    assert_string_equal(s, want);
}

static parley_json_doc *parse_ok(const char *s, size_t len)
{
    parley_json_doc *d = NULL;
    assert_int_equal(parley_json_parse(s, len, 0, 0, &d, NULL), 0);
    assert_non_null(d);
    return d;
}

static void test_build_basic(void **state)
{
    (void)state;
    parley_json_builder *b = newb();
    assert_int_equal(parley_json_begin_object(b), 0);
    assert_int_equal(parley_json_key(b, "a"), 0);
    assert_int_equal(parley_json_int64(b, INT64_MIN), 0);
    assert_int_equal(parley_json_key(b, "b"), 0);
    assert_int_equal(parley_json_begin_array(b), 0);
    assert_int_equal(parley_json_int64(b, INT64_MAX), 0);
    assert_int_equal(parley_json_bool(b, 1), 0);
    assert_int_equal(parley_json_bool(b, 0), 0);
    assert_int_equal(parley_json_null(b), 0);
    assert_int_equal(parley_json_double(b, 0.1), 0);
    assert_int_equal(parley_json_double(b, -0.0), 0);
    assert_int_equal(parley_json_double(b, -2.5e-300), 0);
    assert_int_equal(parley_json_begin_object(b), 0);
    assert_int_equal(parley_json_end_object(b), 0);
    assert_int_equal(parley_json_begin_array(b), 0);
    assert_int_equal(parley_json_end_array(b), 0);
    assert_int_equal(parley_json_raw(b, " { \"x\" : [ 1 , 2 ] } ", 21), 0);
    assert_int_equal(parley_json_end_array(b), 0);
    assert_int_equal(parley_json_key(b, ""), 0);
    assert_int_equal(parley_json_string(b, ""), 0);
    assert_int_equal(parley_json_end_object(b), 0);
    assert_built(b, "{\"a\":-9223372036854775808,\"b\":[9223372036854775807,true,false,null,"
                    "0.1,-0.0,-2.5e-300,{},[],{\"x\":[1,2]}],\"\":\"\"}");
    /* Reset empties the text and keeps working. */
    parley_json_builder_reset(b);
    assert_null(parley_json_builder_result(b, NULL));
    assert_int_equal(parley_json_builder_error(b), PARLEY_ESTATE);
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_builder_error(b), 0);
    assert_int_equal(parley_json_string(b, "top"), 0);
    assert_built(b, "\"top\"");
    parley_json_builder_free(b);
    parley_json_builder_free(NULL);
}

static void test_build_escaping(void **state)
{
    (void)state;
    parley_json_builder *b = newb();
    const char s[] = "q\"b\\s/\b\f\n\r\t\x01\x1f\x7f h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\0z";
    assert_int_equal(parley_json_begin_array(b), 0);
    assert_int_equal(parley_json_string_n(b, s, sizeof s - 1), 0);
    assert_int_equal(parley_json_end_array(b), 0);
    size_t len;
    const char *out = parley_json_builder_result(b, &len);
    assert_non_null(out);
    /* No raw control characters, quotes and backslashes escaped. */
    for (size_t i = 0; i < len; i++) assert_true((unsigned char)out[i] >= 0x20);
    assert_non_null(strstr(out, "q\\\"b\\\\s"));
    assert_non_null(strstr(out, "\\u0000z"));
    assert_non_null(strstr(out, "\\u0001"));
    /* Read back: the same bytes, NUL included. */
    parley_json_doc *d = parse_ok(out, len);
    char buf[128];
    size_t n;
    assert_int_equal(parley_json_get_string(parley_json_at(parley_json_root(d), 0), buf, sizeof buf, &n), 0);
    assert_int_equal(n, sizeof s - 1);
    assert_memory_equal(buf, s, n);
    assert_int_equal(buf[n], '\0');
    parley_json_free(d);
    parley_json_builder_free(b);
}

static void test_build_invalid_utf8(void **state)
{
    (void)state;
    static const char *bad[] = {"\xff", "\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                                "ok\xe2\x82"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        parley_json_builder *b = newb();
        assert_int_equal(parley_json_begin_array(b), 0);
        assert_int_equal(parley_json_string(b, bad[i]), PARLEY_EINVAL);
        assert_null(parley_json_builder_result(b, NULL));
        assert_int_equal(parley_json_builder_error(b), PARLEY_EINVAL);
        parley_json_builder_free(b);
        b = newb();
        assert_int_equal(parley_json_begin_object(b), 0);
        assert_int_equal(parley_json_key(b, bad[i]), PARLEY_EINVAL);
        parley_json_builder_free(b);
    }
}

static void test_build_errors_sticky(void **state)
{
    (void)state;
    parley_json_builder *b = newb();
    /* value without a key */
    assert_int_equal(parley_json_begin_object(b), 0);
    assert_int_equal(parley_json_int64(b, 1), PARLEY_ESTATE);
    /* later calls, even valid ones, return the first error */
    assert_int_equal(parley_json_key(b, "k"), PARLEY_ESTATE);
    assert_int_equal(parley_json_double(b, NAN), PARLEY_ESTATE);
    assert_int_equal(parley_json_end_object(b), PARLEY_ESTATE);
    assert_null(parley_json_builder_result(b, NULL));
    assert_int_equal(parley_json_builder_error(b), PARLEY_ESTATE);

    /* each misuse, in a fresh builder */
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_key(b, "k"), PARLEY_ESTATE); /* key outside object */
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_begin_array(b), 0);
    assert_int_equal(parley_json_key(b, "k"), PARLEY_ESTATE); /* key in array */
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_begin_object(b), 0);
    assert_int_equal(parley_json_key(b, "k"), 0);
    assert_int_equal(parley_json_key(b, "j"), PARLEY_ESTATE); /* two keys */
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_begin_object(b), 0);
    assert_int_equal(parley_json_key(b, "k"), 0);
    assert_int_equal(parley_json_end_object(b), PARLEY_ESTATE); /* key without value */
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_begin_array(b), 0);
    assert_int_equal(parley_json_end_object(b), PARLEY_ESTATE); /* mismatched end */
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_end_array(b), PARLEY_ESTATE); /* end with nothing open */
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_null(b), 0);
    assert_int_equal(parley_json_null(b), PARLEY_ESTATE); /* second top-level value */
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_begin_array(b), 0);
    assert_null(parley_json_builder_result(b, NULL)); /* incomplete */
    assert_int_equal(parley_json_builder_error(b), PARLEY_ESTATE);
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_double(b, INFINITY), PARLEY_EINVAL);
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_double(b, -INFINITY), PARLEY_EINVAL);
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_raw(b, "[1,]", 4), PARLEY_EINVAL);
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_raw(b, "1 2", 3), PARLEY_EINVAL);
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_raw(b, NULL, 0), PARLEY_EINVAL);
    parley_json_builder_reset(b);
    assert_int_equal(parley_json_string(b, NULL), PARLEY_EINVAL);
    parley_json_builder_reset(b);
    /* depth limit */
    for (int i = 0; i < PARLEY_JSON_BUILD_MAX_DEPTH; i++) assert_int_equal(parley_json_begin_array(b), 0);
    assert_int_equal(parley_json_begin_array(b), PARLEY_ELIMIT);
    assert_int_equal(parley_json_builder_error(b), PARLEY_ELIMIT);
    parley_json_builder_reset(b);
    for (int i = 0; i < PARLEY_JSON_BUILD_MAX_DEPTH; i++) assert_int_equal(parley_json_begin_array(b), 0);
    for (int i = 0; i < PARLEY_JSON_BUILD_MAX_DEPTH; i++) assert_int_equal(parley_json_end_array(b), 0);
    assert_non_null(parley_json_builder_result(b, NULL));
    parley_json_builder_free(b);
    assert_int_equal(parley_json_builder_new(NULL), PARLEY_EINVAL);
    assert_int_equal(parley_json_null(NULL), PARLEY_EINVAL);
}

static void test_double_locale(void **state)
{
    (void)state;
    /* A comma locale must not leak into the text (skipped when absent). */
    const char *loc = setlocale(LC_NUMERIC, "de_DE.UTF-8");
    if (!loc) loc = setlocale(LC_NUMERIC, "fr_FR.UTF-8");
    parley_json_builder *b = newb();
    assert_int_equal(parley_json_double(b, 1.5), 0);
    assert_built(b, "1.5");
    parley_json_doc *d = parse_ok("1.25", 4);
    double x;
    assert_int_equal(parley_json_get_double(parley_json_root(d), &x), 0);
    assert_true(x == 1.25);
    parley_json_free(d);
    setlocale(LC_NUMERIC, "C");
    parley_json_builder_free(b);
}

static void test_read_basic(void **state)
{
    (void)state;
    const char *s = " {\"name\":\"a\\u00e9\\n\",\"n\":[1,-2,3.5,1e2,true,false,null],"
                    "\"o\":{\"x\":1,\"x\":2}} ";
    parley_json_doc *d = parse_ok(s, strlen(s));
    parley_json_value r = parley_json_root(d);
    assert_int_equal(parley_json_type_of(r), PARLEY_JSON_OBJECT);
    assert_int_equal(parley_json_count(r), 3);
    char buf[16];
    size_t n;
    assert_int_equal(parley_json_get_string(parley_json_get(r, "name"), buf, sizeof buf, &n), 0);
    assert_string_equal(buf, "a\xc3\xa9\n");
    assert_int_equal(n, 4);
    /* too small a buffer: ELIMIT; exactly enough: fits */
    assert_int_equal(parley_json_get_string(parley_json_get(r, "name"), buf, 4, &n), PARLEY_ELIMIT);
    assert_int_equal(parley_json_get_string(parley_json_get(r, "name"), buf, 5, &n), 0);
    char *dup;
    assert_int_equal(parley_json_get_string_dup(parley_json_get(r, "name"), &dup, &n), 0);
    assert_string_equal(dup, "a\xc3\xa9\n");
    parley_json_string_free(dup);
    parley_json_value arr = parley_json_get(r, "n");
    assert_int_equal(parley_json_count(arr), 7);
    int64_t i;
    assert_int_equal(parley_json_get_int64(parley_json_at(arr, 1), &i), 0);
    assert_int_equal(i, -2);
    assert_int_equal(parley_json_get_int64(parley_json_at(arr, 2), &i), PARLEY_EINVAL);
    assert_int_equal(parley_json_get_int64(parley_json_at(arr, 3), &i), PARLEY_EINVAL);
    double x;
    assert_int_equal(parley_json_get_double(parley_json_at(arr, 3), &x), 0);
    assert_true(x == 100.0);
    int bv;
    assert_int_equal(parley_json_get_bool(parley_json_at(arr, 4), &bv), 0);
    assert_int_equal(bv, 1);
    assert_int_equal(parley_json_get_bool(parley_json_at(arr, 5), &bv), 0);
    assert_int_equal(bv, 0);
    assert_int_equal(parley_json_type_of(parley_json_at(arr, 6)), PARLEY_JSON_NULL);
    assert_int_equal(parley_json_get_bool(parley_json_at(arr, 6), &bv), PARLEY_EINVAL);
    /* absent: NONE, and NONE propagates */
    assert_int_equal(parley_json_type_of(parley_json_at(arr, 7)), PARLEY_JSON_NONE);
    assert_int_equal(parley_json_type_of(parley_json_get(r, "missing")), PARLEY_JSON_NONE);
    assert_int_equal(parley_json_type_of(parley_json_get(arr, "x")), PARLEY_JSON_NONE);
    assert_int_equal(parley_json_type_of(parley_json_at(parley_json_get(r, "zz"), 0)), PARLEY_JSON_NONE);
    assert_int_equal(parley_json_get_string(parley_json_get(r, "zz"), buf, sizeof buf, &n), PARLEY_EINVAL);
    assert_int_equal(parley_json_get_string(parley_json_get(r, "n"), buf, sizeof buf, &n), PARLEY_EINVAL);
    /* repeated member: the first */
    assert_int_equal(parley_json_get_int64(parley_json_get(parley_json_get(r, "o"), "x"), &i), 0);
    assert_int_equal(i, 1);
    /* iteration over members, in order */
    parley_json_iter it;
    parley_json_value k, v;
    const char *names[] = {"name", "n", "o"};
    size_t count = 0;
    parley_json_iter_init(&it, r);
    while (parley_json_iter_next(&it, &k, &v)) {
        assert_true(count < 3);
        assert_int_equal(parley_json_get_string(k, buf, sizeof buf, NULL), 0);
        assert_string_equal(buf, names[count]);
        count++;
    }
    assert_int_equal(count, 3);
    count = 0;
    parley_json_iter_init(&it, arr);
    while (parley_json_iter_next(&it, &k, &v)) {
        assert_int_equal(parley_json_type_of(k), PARLEY_JSON_NONE);
        count++;
    }
    assert_int_equal(count, 7);
    parley_json_iter_init(&it, parley_json_at(arr, 0)); /* a number: empty */
    assert_int_equal(parley_json_iter_next(&it, &k, &v), 0);
    parley_json_free(d);
    parley_json_free(NULL);
}

static void test_read_errors(void **state)
{
    (void)state;
    parley_json_doc *d = (parley_json_doc *)1;
    size_t off = 99;
    assert_int_equal(parley_json_parse("[1,]", 4, 0, 0, &d, &off), PARLEY_EPROTO);
    assert_null(d);
    assert_int_equal(off, 3);
    static const char *bad[] = {"", " ", "[", "{\"a\"}", "01", "NaN", "[1]x", "\"\xff\"", "'a'",
                                "{\"a\":1,}", "/* */1", "\"\\ud800\""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(parley_json_parse(bad[i], strlen(bad[i]), 0, 0, &d, NULL), PARLEY_EPROTO);
    assert_int_equal(parley_json_parse(NULL, 0, 0, 0, &d, NULL), PARLEY_EINVAL);
    assert_int_equal(parley_json_parse("1", 1, 0, 0, NULL, NULL), PARLEY_EINVAL);
}

static void test_read_limits(void **state)
{
    (void)state;
    char deep[2 * 40 + 1];
    for (int depth = 1; depth <= 40; depth++) {
        memset(deep, '[', (size_t)depth);
        memset(deep + depth, ']', (size_t)depth);
        parley_json_doc *d = NULL;
        int rc = parley_json_parse(deep, 2 * (size_t)depth, 0, 0, &d, NULL);
        assert_int_equal(rc, depth <= PARLEY_JSON_DEFAULT_MAX_DEPTH ? 0 : PARLEY_ELIMIT);
        parley_json_free(d);
        rc = parley_json_parse(deep, 2 * (size_t)depth, 5, 0, &d, NULL);
        assert_int_equal(rc, depth <= 5 ? 0 : PARLEY_ELIMIT);
        parley_json_free(d);
    }
    /* deeper than the cap is a limit too */
    size_t n = PARLEY_JSON_MAX_DEPTH_CAP + 1;
    char *big = malloc(2 * n);
    assert_non_null(big);
    memset(big, '[', n);
    memset(big + n, ']', n);
    parley_json_doc *d = NULL;
    assert_int_equal(parley_json_parse(big, 2 * n, 100000, 0, &d, NULL), PARLEY_EPROTO);
    assert_int_equal(parley_json_parse(big + 1, 2 * n - 2, 100000, 0, &d, NULL), 0);
    parley_json_free(d);
    free(big);
    /* too deep but also malformed: a syntax error */
    assert_int_equal(parley_json_parse("[[[[", 4, 2, 0, &d, NULL), PARLEY_EPROTO);
    /* size: refused by length, whatever the text */
    assert_int_equal(parley_json_parse("\"abcd\"", 6, 0, 5, &d, NULL), PARLEY_ELIMIT);
    assert_int_equal(parley_json_parse("\"abcd\"", 6, 0, 6, &d, NULL), 0);
    parley_json_free(d);
    assert_int_equal(parley_json_parse("xxxxxx", 6, 0, 5, &d, NULL), PARLEY_ELIMIT);
}

static void test_read_integers(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int rc;
        int64_t v;
    } c[] = {
        {"0", 0, 0},
        {"-0", 0, 0},
        {"9223372036854775807", 0, INT64_MAX},
        {"-9223372036854775808", 0, INT64_MIN},
        {"9223372036854775808", PARLEY_ELIMIT, 0},
        {"-9223372036854775809", PARLEY_ELIMIT, 0},
        {"100000000000000000000000", PARLEY_ELIMIT, 0},
        {"1.0", PARLEY_EINVAL, 0},
        {"1e3", PARLEY_EINVAL, 0},
        {"\"1\"", PARLEY_EINVAL, 0},
        {"true", PARLEY_EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof c / sizeof *c; i++) {
        parley_json_doc *d = parse_ok(c[i].s, strlen(c[i].s));
        int64_t v = 42;
        assert_int_equal(parley_json_get_int64(parley_json_root(d), &v), c[i].rc);
        if (c[i].rc == 0) assert_true(v == c[i].v);
        parley_json_free(d);
    }
    parley_json_doc *d = parse_ok("1e400", 5);
    double x;
    assert_int_equal(parley_json_get_double(parley_json_root(d), &x), PARLEY_ELIMIT);
    parley_json_free(d);
    d = parse_ok("\"1\"", 3);
    assert_int_equal(parley_json_get_double(parley_json_root(d), &x), PARLEY_EINVAL);
    parley_json_free(d);
}

/* ---- Round trips: random documents built, then read back ---- */

typedef struct node {
    int type; /* parley_json_type */
    int64_t i;
    double d;
    int b;
    char s[24];
    size_t slen;
    int is_double;
    size_t n;
    struct node *kids;
    char keys[8][24];
} node;

static void rand_string(uint64_t *rng, char *s, size_t *len, size_t max)
{
    static const char *pieces[] = {"a", "\"", "\\", "/", "\n", "\x01", "\x1f", "\xc3\xa9",
                                   "\xe2\x82\xac", "\xf0\x9f\x98\x80", " ", "\x7f", "\0"};
    size_t n = 0;
    size_t want = test_rand(rng) % 6;
    for (size_t i = 0; i < want; i++) {
        const char *p = pieces[test_rand(rng) % (sizeof pieces / sizeof *pieces)];
        size_t pl = *p ? strlen(p) : 1;
        if (n + pl > max) break;
        memcpy(s + n, p, pl);
        n += pl;
    }
    *len = n;
}

static void gen(uint64_t *rng, node *nd, int depth)
{
    memset(nd, 0, sizeof *nd);
    int t = (int)(test_rand(rng) % (depth > 4 ? 4 : 6)) + 1;
    nd->type = t;
    switch (t) {
    case PARLEY_JSON_BOOL: nd->b = (int)(test_rand(rng) & 1); break;
    case PARLEY_JSON_NUMBER:
        nd->is_double = (int)(test_rand(rng) & 1);
        if (nd->is_double) {
            uint64_t bits = test_rand(rng);
            memcpy(&nd->d, &bits, sizeof bits);
            if (!isfinite(nd->d)) nd->d = 0.5;
        } else {
            nd->i = (int64_t)test_rand(rng);
        }
        break;
    case PARLEY_JSON_STRING: rand_string(rng, nd->s, &nd->slen, sizeof nd->s); break;
    case PARLEY_JSON_ARRAY:
    case PARLEY_JSON_OBJECT:
        nd->n = test_rand(rng) % 5;
        nd->kids = calloc(nd->n ? nd->n : 1, sizeof *nd->kids);
        assert_non_null(nd->kids);
        for (size_t i = 0; i < nd->n; i++) {
            gen(rng, &nd->kids[i], depth + 1);
            snprintf(nd->keys[i], sizeof nd->keys[i], "k\"%zu", i);
        }
        break;
    default: break;
    }
}

static void build(parley_json_builder *b, const node *nd)
{
    switch (nd->type) {
    case PARLEY_JSON_NULL: parley_json_null(b); break;
    case PARLEY_JSON_BOOL: parley_json_bool(b, nd->b); break;
    case PARLEY_JSON_NUMBER:
        if (nd->is_double)
            parley_json_double(b, nd->d);
        else
            parley_json_int64(b, nd->i);
        break;
    case PARLEY_JSON_STRING: parley_json_string_n(b, nd->s, nd->slen); break;
    case PARLEY_JSON_ARRAY:
        parley_json_begin_array(b);
        for (size_t i = 0; i < nd->n; i++) build(b, &nd->kids[i]);
        parley_json_end_array(b);
        break;
    case PARLEY_JSON_OBJECT:
        parley_json_begin_object(b);
        for (size_t i = 0; i < nd->n; i++) {
            parley_json_key(b, nd->keys[i]);
            build(b, &nd->kids[i]);
        }
        parley_json_end_object(b);
        break;
    default: break;
    }
}

static void check(parley_json_value v, const node *nd)
{
    assert_int_equal(parley_json_type_of(v), nd->type);
    switch (nd->type) {
    case PARLEY_JSON_BOOL: {
        int b;
        assert_int_equal(parley_json_get_bool(v, &b), 0);
        assert_int_equal(b, nd->b);
        break;
    }
    case PARLEY_JSON_NUMBER:
        if (nd->is_double) {
            double d;
            assert_int_equal(parley_json_get_double(v, &d), 0);
            assert_memory_equal(&d, &nd->d, sizeof d); /* exact, -0 included */
        } else {
            int64_t i;
            assert_int_equal(parley_json_get_int64(v, &i), 0);
            assert_true(i == nd->i);
        }
        break;
    case PARLEY_JSON_STRING: {
        char *s;
        size_t n;
        assert_int_equal(parley_json_get_string_dup(v, &s, &n), 0);
        assert_int_equal(n, nd->slen);
        assert_memory_equal(s, nd->s, n);
        parley_json_string_free(s);
        break;
    }
    case PARLEY_JSON_ARRAY:
    case PARLEY_JSON_OBJECT: {
        assert_int_equal(parley_json_count(v), nd->n);
        parley_json_iter it;
        parley_json_value k, e;
        size_t i = 0;
        parley_json_iter_init(&it, v);
        while (parley_json_iter_next(&it, &k, &e)) {
            assert_true(i < nd->n);
            check(e, &nd->kids[i]);
            if (nd->type == PARLEY_JSON_OBJECT) {
                char kb[32];
                assert_int_equal(parley_json_get_string(k, kb, sizeof kb, NULL), 0);
                assert_string_equal(kb, nd->keys[i]);
                check(parley_json_get(v, nd->keys[i]), &nd->kids[i]);
            } else {
                check(parley_json_at(v, i), &nd->kids[i]);
            }
            i++;
        }
        assert_int_equal(i, nd->n);
        break;
    }
    default: break;
    }
}

static void free_node(node *nd)
{
    for (size_t i = 0; i < nd->n; i++) free_node(&nd->kids[i]);
    free(nd->kids);
}

static void test_round_trip(void **state)
{
    (void)state;
    uint64_t rng = chop_seed();
    parley_json_builder *b = newb();
    for (int round = 0; round < 2000; round++) {
        node root;
        gen(&rng, &root, 0);
        parley_json_builder_reset(b);
        build(b, &root);
        size_t len;
        const char *text = parley_json_builder_result(b, &len);
        assert_int_equal(parley_json_builder_error(b), 0);
        assert_non_null(text);
        assert_int_equal(strlen(text), len);
        parley_json_doc *d = parse_ok(text, len);
        check(parley_json_root(d), &root);
        parley_json_free(d);
        /* raw re-embedding gives the same text */
        parley_json_builder *b2 = newb();
        assert_int_equal(parley_json_raw(b2, text, len), 0);
        size_t len2;
        const char *text2 = parley_json_builder_result(b2, &len2);
        assert_non_null(text2);
        assert_int_equal(len2, len);
        assert_memory_equal(text2, text, len);
        parley_json_builder_free(b2);
        /* every proper prefix of a container is refused (the text fed
         * cut short at every byte) */
        if (round < 200 && (root.type == PARLEY_JSON_ARRAY || root.type == PARLEY_JSON_OBJECT ||
                            root.type == PARLEY_JSON_STRING)) {
            for (size_t cut = 0; cut < len; cut++) {
                parley_json_doc *p = NULL;
                assert_int_not_equal(parley_json_parse(text, cut, 0, 0, &p, NULL), 0);
                assert_null(p);
            }
        }
        free_node(&root);
    }
    parley_json_builder_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_basic),       cmocka_unit_test(test_build_escaping),
        cmocka_unit_test(test_build_invalid_utf8), cmocka_unit_test(test_build_errors_sticky),
        cmocka_unit_test(test_double_locale),     cmocka_unit_test(test_read_basic),
        cmocka_unit_test(test_read_errors),       cmocka_unit_test(test_read_limits),
        cmocka_unit_test(test_read_integers),     cmocka_unit_test(test_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
