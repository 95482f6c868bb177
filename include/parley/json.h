/*
 * Building and reading JSON text.
 *
 * Event arguments and acknowledgements of the Socket.IO client and server
 * (parley_args.json) and the chat API's payloads are JSON text. This header
 * lets an application make such text without escaping strings by hand, and
 * read it without a JSON library of its own.
 *
 * Neither half depends on a loop: every function here may be called from
 * any thread, as long as one builder or one document is not used by two
 * threads at once.
 *
 * Builder. A parley_json_builder appends compact JSON text:
 *
 *     parley_json_builder *b;
 *     parley_json_builder_new(&b);
 *     parley_json_begin_object(b);
 *     parley_json_key(b, "text");
 *     parley_json_string(b, user_input);   // escaped here
 *     parley_json_end_object(b);
 *     const char *json = parley_json_builder_result(b, NULL);
 *     ...                                  // {"text":"..."}
 *     parley_json_builder_free(b);
 *
 * Every builder call returns 0 or an error code, and errors are sticky: the
 * first one is kept, later calls do nothing and return it again, and
 * parley_json_builder_result returns NULL (parley_json_builder_error tells
 * which error). So a sequence of calls may be checked once, at the end.
 * The errors:
 *   PARLEY_ESTATE  a call out of place: a value in an object without a key
 *                  before it, a key outside an object or twice in a row, an
 *                  end that does not match the open container, a second
 *                  top-level value; from _result: the text is incomplete
 *                  (no value yet, or a container still open).
 *   PARLEY_EINVAL  a string or key that is not valid UTF-8, a double that is
 *                  not finite (JSON has no NaN or Infinity), raw text that
 *                  is not one valid JSON value, a NULL pointer.
 *   PARLEY_ELIMIT  more than PARLEY_JSON_BUILD_MAX_DEPTH nested containers.
 *   PARLEY_ENOMEM  out of memory (the text is at most 4 GiB - 1 bytes).
 *
 * Reader. parley_json_parse validates a text once (strict RFC 8259: valid
 * UTF-8, no comments, no trailing commas, no NaN) and keeps a private copy
 * of it; values (parley_json_value) are small handles into that copy,
 * passed by value, valid until the document is freed. A lookup that finds
 * nothing (a missing member, an index past the end, a lookup in something
 * that is not an object or array) gives a value of type PARLEY_JSON_NONE,
 * on which every other lookup also gives NONE, so chains need one check:
 *
 *     parley_json_doc *d;
 *     if (parley_json_parse(args->json, args->json_len, 0, 0, &d, NULL) == 0) {
 *         parley_json_value text = parley_json_get(parley_json_at(parley_json_root(d), 0), "text");
 *         char buf[256];
 *         if (parley_json_get_string(text, buf, sizeof buf, NULL) == 0) ...
 *         parley_json_free(d);
 *     }
 */
#ifndef PARLEY_JSON_H
#define PARLEY_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "parley/parley.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Builder ---- */

typedef struct parley_json_builder parley_json_builder;

/* Containers a builder may nest (PARLEY_ELIMIT past it). */
#define PARLEY_JSON_BUILD_MAX_DEPTH 64

/* Creates an empty builder. 0, PARLEY_EINVAL (out is NULL) or PARLEY_ENOMEM. */
PARLEY_API int parley_json_builder_new(parley_json_builder **out);
/* Frees the builder and its text (a result pointer becomes invalid). NULL
 * is allowed. */
PARLEY_API void parley_json_builder_free(parley_json_builder *b);
/* Empties the builder and clears its error, keeping its memory for reuse
 * (a result pointer becomes invalid). */
PARLEY_API void parley_json_builder_reset(parley_json_builder *b);
/* The first error of the builder, or 0. */
PARLEY_API int parley_json_builder_error(const parley_json_builder *b);

PARLEY_API int parley_json_begin_object(parley_json_builder *b);
PARLEY_API int parley_json_end_object(parley_json_builder *b);
PARLEY_API int parley_json_begin_array(parley_json_builder *b);
PARLEY_API int parley_json_end_array(parley_json_builder *b);
/* The name of the next object member: NUL-terminated UTF-8 (escaped). */
PARLEY_API int parley_json_key(parley_json_builder *b, const char *name);
/* A string value: NUL-terminated UTF-8, escaped as needed. */
PARLEY_API int parley_json_string(parley_json_builder *b, const char *s);
/* A string value of len bytes of UTF-8, which may contain NUL bytes
 * (written as \u0000). */
PARLEY_API int parley_json_string_n(parley_json_builder *b, const char *s, size_t len);
/* An integer, written exactly. */
PARLEY_API int parley_json_int64(parley_json_builder *b, int64_t v);
/* A finite double, written with the fewest digits that read back to the
 * same double (whatever the process's LC_NUMERIC); -0.0 as "-0.0". A
 * whole double is written without a fraction ("2"), so it reads back as an
 * integer as well. */
PARLEY_API int parley_json_double(parley_json_builder *b, double v);
/* true (v != 0) or false. */
PARLEY_API int parley_json_bool(parley_json_builder *b, int v);
PARLEY_API int parley_json_null(parley_json_builder *b);
/* A value given as JSON text (len bytes), e.g. arguments received from a
 * peer: validated (one value, nested at most 1024 deep) and appended
 * without its insignificant whitespace. */
PARLEY_API int parley_json_raw(parley_json_builder *b, const char *json, size_t len);

/* The text built: NUL-terminated, its length in *len (len may be NULL).
 * NULL when the builder has an error or the text is incomplete (the error,
 * PARLEY_ESTATE for incomplete text, is then parley_json_builder_error's).
 * The text belongs to the builder: valid until the next call that changes
 * the builder (reset, free); copy it to keep it. */
PARLEY_API const char *parley_json_builder_result(parley_json_builder *b, size_t *len);

/* ---- Reader ---- */

typedef struct parley_json_doc parley_json_doc;

typedef enum parley_json_type {
    PARLEY_JSON_NONE = 0, /* no such value (see above) */
    PARLEY_JSON_NULL,
    PARLEY_JSON_BOOL,
    PARLEY_JSON_NUMBER,
    PARLEY_JSON_STRING,
    PARLEY_JSON_ARRAY,
    PARLEY_JSON_OBJECT,
} parley_json_type;

/* A value inside a document. The fields are private; copy the struct
 * freely, but it is valid only while its document is. */
typedef struct parley_json_value {
    const char *p_;
    size_t len_;
    int type_;
} parley_json_value;

/* Defaults of parley_json_parse's limits (used when 0 is passed). */
#define PARLEY_JSON_DEFAULT_MAX_DEPTH 32
#define PARLEY_JSON_DEFAULT_MAX_SIZE  (1024 * 1024)
/* The largest max_depth honoured (larger values are lowered to it). */
#define PARLEY_JSON_MAX_DEPTH_CAP 1024

/* Parses text[0, len) (need not be NUL-terminated; len 0 is invalid) as
 * exactly one JSON value with optional surrounding whitespace, and makes
 * *out a document holding a copy of it (free with parley_json_free). Limits:
 * max_depth nested containers (0: the default), max_size bytes of text (0:
 * the default); a text longer than max_size is refused before anything is
 * allocated. Returns 0, PARLEY_EINVAL (NULL text or out), PARLEY_EPROTO
 * (not valid JSON; *err_off, when err_off is not NULL, is the byte offset
 * where it went wrong), PARLEY_ELIMIT (too long, or valid JSON nested
 * deeper than max_depth) or PARLEY_ENOMEM. *out is NULL on error. */
PARLEY_API int parley_json_parse(const char *text, size_t len, unsigned max_depth,
                                 size_t max_size, parley_json_doc **out, size_t *err_off);
/* Frees a document; its values become invalid. NULL is allowed. */
PARLEY_API void parley_json_free(parley_json_doc *d);

/* The top-level value. */
PARLEY_API parley_json_value parley_json_root(const parley_json_doc *d);
PARLEY_API parley_json_type parley_json_type_of(parley_json_value v);
/* Member `name` of an object (compared after unescaping; the first one if
 * the name is repeated); NONE when absent or v is not an object. */
PARLEY_API parley_json_value parley_json_get(parley_json_value obj, const char *name);
/* Element i (from 0) of an array; NONE past the end or when v is not an
 * array. Walks the array: O(i). To visit every element use the iterator. */
PARLEY_API parley_json_value parley_json_at(parley_json_value arr, size_t i);
/* Elements of an array or members of an object; 0 for anything else. */
PARLEY_API size_t parley_json_count(parley_json_value v);

/* The decoded string (UTF-8) into buf, NUL-terminated; *len (len may be
 * NULL) is its length without the NUL. A string may contain NUL bytes
 * (\u0000): then only *len tells its end. Returns 0, PARLEY_EINVAL (v is
 * not a string, or buf is NULL with cap > 0) or PARLEY_ELIMIT (it does not
 * fit in cap - 1 bytes; cap >= the value's JSON text length always fits). */
PARLEY_API int parley_json_get_string(parley_json_value v, char *buf, size_t cap, size_t *len);
/* The decoded string in new memory (NUL-terminated; *len as above), to
 * free with parley_json_string_free. 0, PARLEY_EINVAL or PARLEY_ENOMEM. */
PARLEY_API int parley_json_get_string_dup(parley_json_value v, char **out, size_t *len);
/* Frees a string from parley_json_get_string_dup; NULL is allowed. */
PARLEY_API void parley_json_string_free(char *s);
/* An integer written without fraction or exponent ("3", "-7"; not "3.0"
 * or "3e0"): 0, PARLEY_EINVAL (not a number, or not written as an integer)
 * or PARLEY_ELIMIT (outside int64_t). */
PARLEY_API int parley_json_get_int64(parley_json_value v, int64_t *out);
/* Any number as the nearest double: 0, PARLEY_EINVAL (not a number) or
 * PARLEY_ELIMIT (too large for a double, e.g. 1e400). */
PARLEY_API int parley_json_get_double(parley_json_value v, double *out);
/* true or false as 1 or 0: 0 or PARLEY_EINVAL (not a boolean). */
PARLEY_API int parley_json_get_bool(parley_json_value v, int *out);

/* Iteration over the elements of an array or the members of an object, in
 * document order. The fields are private. */
typedef struct parley_json_iter {
    const char *p_;
    const char *end_;
    int type_;
} parley_json_iter;

/* Starts an iteration; over anything but an array or object it is empty. */
PARLEY_API void parley_json_iter_init(parley_json_iter *it, parley_json_value container);
/* Next element of an array, or next member of an object with its name as a
 * string value in *key (key may be NULL; read it with
 * parley_json_get_string). 1 with *value set, 0 at the end. */
PARLEY_API int parley_json_iter_next(parley_json_iter *it, parley_json_value *key,
                                     parley_json_value *value);

#ifdef __cplusplus
}
#endif

#endif
