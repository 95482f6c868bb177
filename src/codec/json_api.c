/* The public JSON builder and reader (include/parley/json.h), a thin layer
 * over the internal scanner (codec/json.h): the reader is json_parse once
 * plus navigation by spans; the builder appends with json_append_string and
 * json_compact. */
#include "parley/json.h"

#include <locale.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "codec/json.h"

/* ---- Builder ---- */

struct parley_json_builder {
    pbuf out;
    int err;
    unsigned depth;
    bool need_comma; /* the open container already has an element */
    bool have_key;   /* in an object: a key was written, its value is next */
    bool done;       /* the top-level value is complete */
    char stack[PARLEY_JSON_BUILD_MAX_DEPTH]; /* '{' or '[' per open container */
};

int parley_json_builder_new(parley_json_builder **out)
{
    if (!out) return PARLEY_EINVAL;
    *out = calloc(1, sizeof **out);
    return *out ? 0 : PARLEY_ENOMEM;
}

void parley_json_builder_free(parley_json_builder *b)
{
    if (!b) return;
    pbuf_free(&b->out);
    free(b);
}

void parley_json_builder_reset(parley_json_builder *b)
{
    if (!b) return;
    pbuf out = b->out;
    out.len = 0;
    memset(b, 0, sizeof *b);
    b->out = out;
}

int parley_json_builder_error(const parley_json_builder *b)
{
    return b ? b->err : PARLEY_EINVAL;
}

static int fail(parley_json_builder *b, int rc)
{
    if (!b->err) b->err = rc;
    return b->err;
}

/* Before a value: checks its place and writes the separating comma. */
static int value_start(parley_json_builder *b)
{
    if (b->err) return b->err;
    if (b->done) return fail(b, PARLEY_ESTATE);
    if (b->depth > 0) {
        if (b->stack[b->depth - 1] == '{') {
            if (!b->have_key) return fail(b, PARLEY_ESTATE);
        } else if (b->need_comma) {
            int rc = pbuf_append(&b->out, ",", 1);
            if (rc) return fail(b, rc);
        }
    }
    return 0;
}

static void value_end(parley_json_builder *b)
{
    b->have_key = false;
    b->need_comma = true;
    if (b->depth == 0) b->done = true;
}

static int begin(parley_json_builder *b, char open)
{
    if (!b) return PARLEY_EINVAL;
    int rc = value_start(b);
    if (rc) return rc;
    if (b->depth >= PARLEY_JSON_BUILD_MAX_DEPTH) return fail(b, PARLEY_ELIMIT);
    rc = pbuf_append(&b->out, &open, 1);
    if (rc) return fail(b, rc);
    b->stack[b->depth++] = open;
    b->have_key = false;
    b->need_comma = false;
    return 0;
}

static int end(parley_json_builder *b, char open)
{
    if (!b) return PARLEY_EINVAL;
    if (b->err) return b->err;
    if (b->depth == 0 || b->stack[b->depth - 1] != open || b->have_key)
        return fail(b, PARLEY_ESTATE);
    char close = open == '{' ? '}' : ']';
    int rc = pbuf_append(&b->out, &close, 1);
    if (rc) return fail(b, rc);
    b->depth--;
    value_end(b);
    return 0;
}

int parley_json_begin_object(parley_json_builder *b)
{
    return begin(b, '{');
}

int parley_json_end_object(parley_json_builder *b)
{
    return end(b, '{');
}

int parley_json_begin_array(parley_json_builder *b)
{
    return begin(b, '[');
}

int parley_json_end_array(parley_json_builder *b)
{
    return end(b, '[');
}

int parley_json_key(parley_json_builder *b, const char *name)
{
    if (!b) return PARLEY_EINVAL;
    if (b->err) return b->err;
    if (!name) return fail(b, PARLEY_EINVAL);
    if (b->depth == 0 || b->stack[b->depth - 1] != '{' || b->have_key)
        return fail(b, PARLEY_ESTATE);
    uint32_t mark = b->out.len;
    int rc = b->need_comma ? pbuf_append(&b->out, ",", 1) : 0;
    if (rc == 0) rc = json_append_string(&b->out, name, strlen(name));
    if (rc == 0) rc = pbuf_append(&b->out, ":", 1);
    if (rc) {
        b->out.len = mark;
        return fail(b, rc);
    }
    b->have_key = true;
    return 0;
}

/* Appends a scalar's text after checking its place. */
static int scalar(parley_json_builder *b, const char *text, size_t len)
{
    int rc = value_start(b);
    if (rc) return rc;
    rc = pbuf_append(&b->out, text, len);
    if (rc) return fail(b, rc);
    value_end(b);
    return 0;
}

int parley_json_string_n(parley_json_builder *b, const char *s, size_t len)
{
    if (!b) return PARLEY_EINVAL;
    if (b->err) return b->err;
    if (!s && len) return fail(b, PARLEY_EINVAL);
    uint32_t mark = b->out.len;
    int rc = value_start(b);
    if (rc) return rc;
    rc = json_append_string(&b->out, s ? s : "", len);
    if (rc) {
        b->out.len = mark;
        return fail(b, rc);
    }
    value_end(b);
    return 0;
}

int parley_json_string(parley_json_builder *b, const char *s)
{
    if (!b) return PARLEY_EINVAL;
    if (!s) return b->err ? b->err : fail(b, PARLEY_EINVAL);
    return parley_json_string_n(b, s, strlen(s));
}

int parley_json_int64(parley_json_builder *b, int64_t v)
{
    if (!b) return PARLEY_EINVAL;
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%lld", (long long)v);
    return scalar(b, buf, (size_t)n);
}

int parley_json_double(parley_json_builder *b, double v)
{
    if (!b) return PARLEY_EINVAL;
    if (b->err) return b->err;
    if (!isfinite(v)) return fail(b, PARLEY_EINVAL);
    /* The shortest %g that reads back to v; snprintf and strtod both use
     * the locale's decimal point, which then becomes JSON's '.'. */
    if (v == 0 && signbit(v)) return scalar(b, "-0.0", 4); /* "-0" would read as integer 0 */
    char buf[40];
    int n = 0;
    for (int prec = 1; prec <= 17; prec++) {
        n = snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    const char *dp = localeconv()->decimal_point;
    char point = dp && dp[0] && !dp[1] ? dp[0] : '.';
    for (int i = 0; i < n; i++)
        if (buf[i] == point) buf[i] = '.';
    return scalar(b, buf, (size_t)n);
}

int parley_json_bool(parley_json_builder *b, int v)
{
    if (!b) return PARLEY_EINVAL;
    return v ? scalar(b, "true", 4) : scalar(b, "false", 5);
}

int parley_json_null(parley_json_builder *b)
{
    if (!b) return PARLEY_EINVAL;
    return scalar(b, "null", 4);
}

int parley_json_raw(parley_json_builder *b, const char *json, size_t len)
{
    if (!b) return PARLEY_EINVAL;
    if (b->err) return b->err;
    if (!json) return fail(b, PARLEY_EINVAL);
    json_val v;
    if (json_parse(json, len, PARLEY_JSON_MAX_DEPTH_CAP, &v, NULL) != 0)
        return fail(b, PARLEY_EINVAL);
    uint32_t mark = b->out.len;
    int rc = value_start(b);
    if (rc) return rc;
    rc = json_compact(&b->out, &v);
    if (rc) {
        b->out.len = mark;
        return fail(b, rc);
    }
    value_end(b);
    return 0;
}

const char *parley_json_builder_result(parley_json_builder *b, size_t *len)
{
    if (len) *len = 0;
    if (!b) return NULL;
    if (b->err) return NULL;
    if (!b->done) {
        fail(b, PARLEY_ESTATE);
        return NULL;
    }
    int rc = pbuf_append(&b->out, "", 1); /* the NUL, not counted */
    if (rc) {
        fail(b, rc);
        return NULL;
    }
    b->out.len--;
    if (len) *len = b->out.len;
    return (const char *)b->out.ptr;
}

/* ---- Reader ---- */

struct parley_json_doc {
    json_val root;
    size_t len;
    char text[];
};

static const parley_json_value NONE = {NULL, 0, PARLEY_JSON_NONE};

static parley_json_value wrap(const json_val *v)
{
    parley_json_value r = {v->p, v->len, PARLEY_JSON_NONE};
    switch (v->type) {
    case JSON_NULL: r.type_ = PARLEY_JSON_NULL; break;
    case JSON_FALSE:
    case JSON_TRUE: r.type_ = PARLEY_JSON_BOOL; break;
    case JSON_NUMBER: r.type_ = PARLEY_JSON_NUMBER; break;
    case JSON_STRING: r.type_ = PARLEY_JSON_STRING; break;
    case JSON_ARRAY: r.type_ = PARLEY_JSON_ARRAY; break;
    case JSON_OBJECT: r.type_ = PARLEY_JSON_OBJECT; break;
    default: return NONE;
    }
    return r;
}

static json_val unwrap(parley_json_value v)
{
    json_val r = {JSON_INVALID, v.p_, v.len_};
    switch (v.type_) {
    case PARLEY_JSON_NULL: r.type = JSON_NULL; break;
    case PARLEY_JSON_BOOL: r.type = v.len_ == 4 ? JSON_TRUE : JSON_FALSE; break;
    case PARLEY_JSON_NUMBER: r.type = JSON_NUMBER; break;
    case PARLEY_JSON_STRING: r.type = JSON_STRING; break;
    case PARLEY_JSON_ARRAY: r.type = JSON_ARRAY; break;
    case PARLEY_JSON_OBJECT: r.type = JSON_OBJECT; break;
    default: break;
    }
    if (!v.p_) r.type = JSON_INVALID;
    return r;
}

int parley_json_parse(const char *text, size_t len, unsigned max_depth, size_t max_size,
                      parley_json_doc **out, size_t *err_off)
{
    if (out) *out = NULL;
    if (err_off) *err_off = 0;
    if (!text || !out) return PARLEY_EINVAL;
    if (max_depth == 0) max_depth = PARLEY_JSON_DEFAULT_MAX_DEPTH;
    if (max_depth > PARLEY_JSON_MAX_DEPTH_CAP) max_depth = PARLEY_JSON_MAX_DEPTH_CAP;
    if (max_size == 0) max_size = PARLEY_JSON_DEFAULT_MAX_SIZE;
    if (len > max_size) return PARLEY_ELIMIT;
    /* Validated in place first, so that bad input allocates nothing. */
    json_val v;
    size_t off = 0;
    if (json_parse(text, len, max_depth, &v, &off) != 0) {
        if (err_off) *err_off = off;
        /* Valid but too deep is a limit, not a syntax error. */
        if (max_depth < PARLEY_JSON_MAX_DEPTH_CAP &&
            json_parse(text, len, PARLEY_JSON_MAX_DEPTH_CAP, &v, NULL) == 0)
            return PARLEY_ELIMIT;
        return PARLEY_EPROTO;
    }
    parley_json_doc *d = malloc(sizeof *d + len + 1);
    if (!d) return PARLEY_ENOMEM;
    memcpy(d->text, text, len);
    d->text[len] = '\0';
    d->len = len;
    d->root = v;
    d->root.p = d->text + (v.p - text);
    *out = d;
    return 0;
}

void parley_json_free(parley_json_doc *d)
{
    free(d);
}

parley_json_value parley_json_root(const parley_json_doc *d)
{
    return d ? wrap(&d->root) : NONE;
}

parley_json_type parley_json_type_of(parley_json_value v)
{
    return v.p_ ? (parley_json_type)v.type_ : PARLEY_JSON_NONE;
}

parley_json_value parley_json_get(parley_json_value obj, const char *name)
{
    json_val o = unwrap(obj), r;
    if (!name || o.type != JSON_OBJECT || !json_object_get(&o, name, &r)) return NONE;
    return wrap(&r);
}

parley_json_value parley_json_at(parley_json_value arr, size_t i)
{
    json_val a = unwrap(arr), e;
    if (a.type != JSON_ARRAY) return NONE;
    json_iter it;
    json_iter_init(&it, &a);
    while (json_array_next(&it, &e))
        if (i-- == 0) return wrap(&e);
    return NONE;
}

size_t parley_json_count(parley_json_value v)
{
    json_val c = unwrap(v);
    if (c.type != JSON_ARRAY && c.type != JSON_OBJECT) return 0;
    return json_count(&c);
}

int parley_json_get_string(parley_json_value v, char *buf, size_t cap, size_t *len)
{
    if (len) *len = 0;
    json_val s = unwrap(v);
    if (s.type != JSON_STRING || (!buf && cap)) return PARLEY_EINVAL;
    if (cap == 0) return PARLEY_ELIMIT;
    long n = json_string_decode(&s, buf, cap - 1);
    if (n < 0) return PARLEY_ELIMIT;
    buf[n] = '\0';
    if (len) *len = (size_t)n;
    return 0;
}

int parley_json_get_string_dup(parley_json_value v, char **out, size_t *len)
{
    if (len) *len = 0;
    if (!out) return PARLEY_EINVAL;
    *out = NULL;
    json_val s = unwrap(v);
    if (s.type != JSON_STRING) return PARLEY_EINVAL;
    /* The decoded string is never longer than the text between quotes. */
    char *buf = malloc(s.len - 1);
    if (!buf) return PARLEY_ENOMEM;
    int rc = parley_json_get_string(v, buf, s.len - 1, len);
    if (rc) {
        free(buf);
        return rc;
    }
    *out = buf;
    return 0;
}

void parley_json_string_free(char *s)
{
    free(s);
}

int parley_json_get_int64(parley_json_value v, int64_t *out)
{
    json_val n = unwrap(v);
    if (n.type != JSON_NUMBER || !out) return PARLEY_EINVAL;
    if (json_int(&n, out)) return 0;
    /* json_int refuses fractions, exponents and values out of range: only
     * digits (after an optional '-') means out of range. */
    for (size_t i = n.p[0] == '-'; i < n.len; i++)
        if (n.p[i] < '0' || n.p[i] > '9') return PARLEY_EINVAL;
    return PARLEY_ELIMIT;
}

int parley_json_get_double(parley_json_value v, double *out)
{
    json_val n = unwrap(v);
    double d;
    if (n.type != JSON_NUMBER || !out || !json_double(&n, &d)) return PARLEY_EINVAL;
    if (!isfinite(d)) return PARLEY_ELIMIT;
    *out = d;
    return 0;
}

int parley_json_get_bool(parley_json_value v, int *out)
{
    json_val b = unwrap(v);
    if ((b.type != JSON_TRUE && b.type != JSON_FALSE) || !out) return PARLEY_EINVAL;
    *out = b.type == JSON_TRUE;
    return 0;
}

void parley_json_iter_init(parley_json_iter *it, parley_json_value container)
{
    if (!it) return;
    json_val c = unwrap(container);
    it->type_ = PARLEY_JSON_NONE;
    it->p_ = it->end_ = NULL;
    if (c.type != JSON_ARRAY && c.type != JSON_OBJECT) return;
    json_iter ji;
    json_iter_init(&ji, &c);
    it->p_ = ji.p;
    it->end_ = ji.end;
    it->type_ = c.type == JSON_ARRAY ? PARLEY_JSON_ARRAY : PARLEY_JSON_OBJECT;
}

int parley_json_iter_next(parley_json_iter *it, parley_json_value *key, parley_json_value *value)
{
    if (key) *key = NONE;
    if (value) *value = NONE;
    if (!it || it->type_ == PARLEY_JSON_NONE) return 0;
    json_iter ji = {it->p_, it->end_};
    json_val k, e;
    bool more = it->type_ == PARLEY_JSON_ARRAY ? json_array_next(&ji, &e)
                                               : json_object_next(&ji, &k, &e);
    it->p_ = ji.p;
    if (!more) return 0;
    if (key && it->type_ == PARLEY_JSON_OBJECT) *key = wrap(&k);
    if (value) *value = wrap(&e);
    return 1;
}
