/*
 * JSON (RFC 8259) without a tree: validation, navigation and compact
 * re-emission over the original text, with no allocation.
 *
 * Why not a DOM library: Socket.IO traffic is JSON on the hot path (every
 * event, every ack). Building and freeing a tree per message would be the
 * dominant cost; here a message is validated once and then navigated by
 * spans of its own text. A value that must be kept is copied as text.
 *
 * Strictness: UTF-8 must be valid (also inside strings, including no
 * unpaired surrogate escapes \uD800-\uDFFF), no control characters in
 * strings, numbers per the RFC grammar (no leading zeros, no '+', no
 * trailing '.', no NaN/Infinity), no trailing commas, no comments, exactly
 * one top-level value surrounded by optional whitespace. Nesting deeper
 * than max_depth is an error (limits are API: callers pass theirs).
 */
#ifndef PARLEY_CODEC_JSON_H
#define PARLEY_CODEC_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

typedef enum json_type {
    JSON_INVALID = 0,
    JSON_NULL,
    JSON_FALSE,
    JSON_TRUE,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT,
} json_type;

/* A value: its type and its exact text (for strings including the quotes,
 * for containers including the brackets). */
typedef struct json_val {
    json_type type;
    const char *p;
    size_t len;
} json_val;

#define JSON_DEFAULT_MAX_DEPTH 32

/* Validates that s[0, len) is exactly one JSON value (with optional
 * surrounding whitespace) and fills *v with it (whitespace excluded).
 * Returns 0 or PARLEY_EPROTO; on error *err_off (may be NULL) is the byte
 * offset where the input went wrong. */
int json_parse(const char *s, size_t len, unsigned max_depth, json_val *v, size_t *err_off);

/* Iteration over a validated array or object (json_parse'd, or an element
 * obtained from such a value). No validation is repeated. */
typedef struct json_iter {
    const char *p;
    const char *end;
} json_iter;

/* Starts iterating the elements of an array or the members of an object. */
void json_iter_init(json_iter *it, const json_val *container);
/* Next array element; false at the end. */
bool json_array_next(json_iter *it, json_val *elem);
/* Next object member; key is a JSON_STRING value (with quotes). */
bool json_object_next(json_iter *it, json_val *key, json_val *value);

/* Number of elements of an array / members of an object. */
size_t json_count(const json_val *container);

/* Finds member `name` (compared after unescaping) in an object; the first
 * one when repeated. */
bool json_object_get(const json_val *obj, const char *name, json_val *out);

/* True when the JSON string v equals the C string lit (unescaped compare). */
bool json_string_eq(const json_val *v, const char *lit);

/* Unescapes a JSON string into out (UTF-8, no NUL added) and returns the
 * byte length, or -1 when it does not fit in cap. The unescaped length is
 * never more than v->len - 2. */
long json_string_decode(const json_val *v, char *out, size_t cap);

/* Reads an integer number (no fraction or exponent, within int64).
 * Returns false for other values. */
bool json_int(const json_val *v, int64_t *out);

/* Reads any number as a double. */
bool json_double(const json_val *v, double *out);

/* Appends v's text without insignificant whitespace, keeping member order
 * and the exact spelling of strings and numbers. */
int json_compact(pbuf *out, const json_val *v);

/* Appends a JSON string literal (quotes, escapes) for s[0, len), which
 * must be valid UTF-8 (PARLEY_EINVAL otherwise). */
int json_append_string(pbuf *out, const char *s, size_t len);

#endif
