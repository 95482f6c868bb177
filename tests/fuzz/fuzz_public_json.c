/* Fuzzes the public JSON reader and builder (parley/json.h). The first
 * input byte picks the depth limit, the second the size limit. A document
 * the reader accepts is rebuilt through the builder (strings decoded and
 * re-escaped, numbers and literals as read); the rebuilt text must be
 * accepted again and rebuild to itself. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parley/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

static void rebuild(parley_json_builder *b, parley_json_value v)
{
    parley_json_iter it;
    parley_json_value k, e;
    switch (parley_json_type_of(v)) {
    case PARLEY_JSON_NULL: CHECK(parley_json_null(b) == 0); break;
    case PARLEY_JSON_BOOL: {
        int x;
        CHECK(parley_json_get_bool(v, &x) == 0);
        CHECK(parley_json_bool(b, x) == 0);
        break;
    }
    case PARLEY_JSON_NUMBER: {
        int64_t i;
        double d;
        int rc = parley_json_get_int64(v, &i);
        if (rc == 0) {
            CHECK(parley_json_int64(b, i) == 0);
        } else if (parley_json_get_double(v, &d) == 0) {
            CHECK(parley_json_double(b, d) == 0);
        } else {
            CHECK(parley_json_null(b) == 0); /* out of double range */
        }
        break;
    }
    case PARLEY_JSON_STRING: {
        char *s;
        size_t n;
        CHECK(parley_json_get_string_dup(v, &s, &n) == 0);
        CHECK(parley_json_string_n(b, s, n) == 0);
        parley_json_string_free(s);
        break;
    }
    case PARLEY_JSON_ARRAY:
    case PARLEY_JSON_OBJECT: {
        int obj = parley_json_type_of(v) == PARLEY_JSON_OBJECT;
        size_t count = 0;
        CHECK((obj ? parley_json_begin_object(b) : parley_json_begin_array(b)) == 0);
        parley_json_iter_init(&it, v);
        while (parley_json_iter_next(&it, &k, &e)) {
            if (obj) {
                char *s;
                size_t n;
                CHECK(parley_json_get_string_dup(k, &s, &n) == 0);
                if (!memchr(s, '\0', n)) {
                    /* the first member of that name is found by name */
                    CHECK(parley_json_type_of(parley_json_get(v, s)) != PARLEY_JSON_NONE);
                    CHECK(parley_json_key(b, s) == 0);
                } else {
                    CHECK(parley_json_key(b, "nul") == 0);
                }
                parley_json_string_free(s);
            } else {
                CHECK(parley_json_type_of(parley_json_at(v, count)) == parley_json_type_of(e));
            }
            rebuild(b, e);
            count++;
        }
        CHECK(count == parley_json_count(v));
        CHECK((obj ? parley_json_end_object(b) : parley_json_end_array(b)) == 0);
        break;
    }
    default: CHECK(0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || size > 65536) return 0;
    unsigned depth = data[0] % 70;
    size_t max_size = (size_t)data[1] * 64;
    const char *text = (const char *)data + 2;
    size -= 2;
    parley_json_doc *d = NULL;
    size_t off = (size_t)-1;
    int rc = parley_json_parse(text, size, depth, max_size, &d, &off);
    if (rc != 0) {
        CHECK(d == NULL);
        CHECK(rc == PARLEY_EPROTO || rc == PARLEY_ELIMIT);
        if (rc == PARLEY_EPROTO) CHECK(off <= size);
        return 0;
    }
    CHECK(size <= (max_size ? max_size : PARLEY_JSON_DEFAULT_MAX_SIZE));
    parley_json_builder *b;
    CHECK(parley_json_builder_new(&b) == 0);
    rebuild(b, parley_json_root(d));
    size_t len;
    const char *t = parley_json_builder_result(b, &len);
    /* the builder's own depth limit is 64; deeper documents stop there */
    if (!t) {
        CHECK(parley_json_builder_error(b) == PARLEY_ELIMIT);
    } else {
        parley_json_doc *d2;
        CHECK(parley_json_parse(t, len, PARLEY_JSON_MAX_DEPTH_CAP, len, &d2, NULL) == 0);
        parley_json_builder *b2;
        CHECK(parley_json_builder_new(&b2) == 0);
        rebuild(b2, parley_json_root(d2));
        size_t len2;
        const char *t2 = parley_json_builder_result(b2, &len2);
        CHECK(t2 && len2 == len && memcmp(t, t2, len) == 0);
        parley_json_builder_free(b2);
        parley_json_free(d2);
    }
    parley_json_builder_free(b);
    parley_json_free(d);
    return 0;
}
