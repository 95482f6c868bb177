/* Fuzzes the JSON validator. A document it accepts must compact to a
 * valid fixed point, iterate to the same text, and every string in it must
 * decode to UTF-8 that re-encodes to an equal string. The first input byte
 * picks the depth limit. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "codec/json.h"
#include "codec/utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void check_string(const json_val *v)
{
    CHECK(v->len >= 2 && v->p[0] == '"' && v->p[v->len - 1] == '"');
    char *buf = malloc(v->len);
    CHECK(buf);
    long n = json_string_decode(v, buf, v->len - 2);
    CHECK(n >= 0 && (size_t)n <= v->len - 2);
    CHECK(utf8_valid((const uint8_t *)buf, (size_t)n));
    if (n > 0) CHECK(json_string_decode(v, buf, (size_t)n - 1) == -1);
    pbuf s = {0};
    CHECK(json_append_string(&s, buf, (size_t)n) == 0);
    json_val sv;
    CHECK(json_parse((char *)s.ptr, s.len, 0, &sv, NULL) == 0 && sv.type == JSON_STRING);
    char *buf2 = malloc(s.len);
    CHECK(buf2);
    CHECK(json_string_decode(&sv, buf2, s.len) == n);
    CHECK(memcmp(buf, buf2, (size_t)n) == 0);
    if (!memchr(buf, '\0', (size_t)n)) {
        char *z = malloc((size_t)n + 1);
        CHECK(z);
        memcpy(z, buf, (size_t)n);
        z[n] = '\0';
        CHECK(json_string_eq(v, z));
        free(z);
    }
    free(buf2);
    free(buf);
    pbuf_free(&s);
}

/* Appends a compact rendering rebuilt from the iterators. */
static void walk(pbuf *out, const json_val *v, unsigned depth)
{
    CHECK(depth <= 1024);
    switch (v->type) {
    case JSON_ARRAY:
    case JSON_OBJECT: {
        bool obj = v->type == JSON_OBJECT;
        CHECK(v->p[0] == (obj ? '{' : '[') && v->p[v->len - 1] == (obj ? '}' : ']'));
        json_iter it;
        json_val k, e;
        size_t count = 0;
        pbuf_append(out, obj ? "{" : "[", 1);
        json_iter_init(&it, v);
        while (obj ? json_object_next(&it, &k, &e) : json_array_next(&it, &e)) {
            CHECK(e.p > v->p && e.p + e.len < v->p + v->len);
            if (count++) pbuf_append(out, ",", 1);
            if (obj) {
                CHECK(k.type == JSON_STRING);
                check_string(&k);
                pbuf_append(out, k.p, k.len);
                pbuf_append(out, ":", 1);
                /* lookup by the decoded name finds the first member with it */
                char name[64];
                long n = json_string_decode(&k, name, sizeof name - 1);
                if (n >= 0 && !memchr(name, '\0', (size_t)n)) {
                    name[n] = '\0';
                    json_val found;
                    CHECK(json_object_get(v, name, &found));
                    CHECK(found.p <= e.p);
                }
            }
            walk(out, &e, depth + 1);
        }
        CHECK(count == json_count(v));
        pbuf_append(out, obj ? "}" : "]", 1);
        return;
    }
    case JSON_STRING:
        check_string(v);
        break;
    case JSON_NUMBER: {
        int64_t i;
        double d;
        CHECK(json_double(v, &d));
        if (json_int(v, &i) && i > -(1LL << 53) && i < (1LL << 53)) CHECK(d == (double)i);
        break;
    }
    case JSON_TRUE:
        CHECK(v->len == 4 && !memcmp(v->p, "true", 4));
        break;
    case JSON_FALSE:
        CHECK(v->len == 5 && !memcmp(v->p, "false", 5));
        break;
    case JSON_NULL:
        CHECK(v->len == 4 && !memcmp(v->p, "null", 4));
        break;
    default:
        CHECK(0);
    }
    pbuf_append(out, v->p, v->len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536) return 0;
    unsigned depth = data[0] % 48;
    size--;
    char *s = malloc(size ? size : 1);
    CHECK(s);
    memcpy(s, data + 1, size);
    json_val v;
    size_t off = (size_t)-1;
    int rc = json_parse(s, size, depth, &v, &off);
    if (rc != 0) {
        CHECK(off <= size);
        CHECK(v.type == JSON_INVALID);
        free(s);
        return 0;
    }
    CHECK(v.type != JSON_INVALID && v.p >= s && v.p + v.len <= s + size && v.len > 0);
    for (const char *p = s; p < v.p; p++) CHECK(is_ws(*p));
    for (const char *p = v.p + v.len; p < s + size; p++) CHECK(is_ws(*p));

    pbuf c = {0};
    CHECK(json_compact(&c, &v) == 0);
    CHECK(c.len <= v.len);
    json_val cv;
    CHECK(json_parse((char *)c.ptr, c.len, depth, &cv, NULL) == 0);
    CHECK(cv.type == v.type && cv.len == c.len);
    pbuf c2 = {0};
    CHECK(json_compact(&c2, &cv) == 0);
    CHECK(c2.len == c.len && memcmp(c2.ptr, c.ptr, c.len) == 0);

    pbuf w = {0};
    walk(&w, &v, 0);
    CHECK(w.len == c.len && memcmp(w.ptr, c.ptr, c.len) == 0);

    pbuf_free(&c);
    pbuf_free(&c2);
    pbuf_free(&w);
    free(s);
    return 0;
}
