/*
 * HTTP/1.1 message codec (sans-I/O): request and response heads, body
 * framing (Content-Length, chunked, until-close), writers, and helpers for
 * request targets and query strings.
 *
 * Model: the caller accumulates the bytes of a head in its own buffer and
 * calls http_parse_head() after each append with everything received so
 * far; the parser remembers how far it has already scanned, so total work is
 * linear in the head size however the input is chopped. The parsed head
 * points into the caller's buffer (no copies): it stays valid while those
 * bytes stay where they are.
 *
 * Strictness (RFC 9110/9112): a malformed request or status line, a bad
 * header name or value character (CTL, NUL, bare CR, bare LF line ends),
 * whitespace before the colon, obs-fold, conflicting or malformed
 * Content-Length, Content-Length together with Transfer-Encoding, an
 * HTTP/1.1 request without exactly one Host, and every limit overrun are
 * errors that come with the HTTP status to answer. Limits are checked before
 * anything is allocated (the parser itself never allocates).
 */
#ifndef PARLEY_CODEC_HTTP_H
#define PARLEY_CODEC_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

typedef struct http_limits {
    size_t max_header_bytes; /* start line + header fields + final CRLF; default 8192 */
    size_t max_headers;      /* header field count; default 64 */
    uint64_t max_body;       /* decoded body bytes; default 1 MiB */
} http_limits;

/* Fills in the defaults above. */
void http_limits_init(http_limits *l);

typedef struct http_header {
    const char *name; /* as received (compare with pstr_ieq) */
    size_t name_len;
    const char *value; /* leading and trailing OWS removed */
    size_t value_len;
} http_header;

typedef enum http_body_kind {
    HTTP_BODY_NONE = 0,    /* no body */
    HTTP_BODY_LENGTH,      /* Content-Length bytes */
    HTTP_BODY_CHUNKED,     /* Transfer-Encoding: chunked */
    HTTP_BODY_UNTIL_CLOSE, /* responses only: body ends when the connection closes */
} http_body_kind;

typedef struct http_head {
    /* Requests. */
    const char *method;
    size_t method_len;
    const char *target;
    size_t target_len;
    /* Responses. */
    int status;
    const char *reason;
    size_t reason_len;
    /* Both. */
    int version_minor; /* HTTP/1.<minor>: 0 or 1 */
    http_header *headers;
    size_t num_headers;
    http_body_kind body_kind;
    uint64_t content_length; /* when body_kind == HTTP_BODY_LENGTH */
    bool keep_alive;         /* from the version and the Connection header */
    bool conn_upgrade;       /* Connection header lists the "upgrade" token */
    bool expect_continue;    /* Expect: 100-continue */
} http_head;

typedef struct http_parser {
    http_limits limits;
    bool response;     /* parsing responses (client side) */
    bool head_request; /* response to a HEAD request: never a body */
    size_t scanned;    /* bytes already searched for the end of the head */
    /* Set when http_parse_head fails: the status to answer with (400, 413,
     * 414, 431, 501, 505) and a short static explanation. */
    int error_status;
    const char *error;
} http_parser;

/* Initialises a parser for requests (response=false) or responses.
 * limits may be NULL for the defaults. */
void http_parser_init(http_parser *p, bool response, const http_limits *limits);

/* Makes the parser ready for the next message on a keep-alive connection.
 * For responses, head_request says whether the request was HEAD. */
void http_parser_reset(http_parser *p, bool head_request);

/* Parses a head from buf[0, len), which holds every byte received since
 * the head began. `headers` is caller storage for up to `max_headers`
 * entries (limits.max_headers). Returns the length of the head in bytes
 * (>0; the body, if any, starts at buf + that length), 0 when the head is
 * not complete yet, or PARLEY_EPROTO / PARLEY_ELIMIT with p->error_status
 * and p->error set. Leading empty lines before a request line are skipped
 * (RFC 9112 section 2.2) and count towards the head size. */
long http_parse_head(http_parser *p, const uint8_t *buf, size_t len, http_head *head,
                     http_header *headers, size_t max_headers);

/* Finds a header by name (case-insensitive); the first one when repeated. */
const http_header *http_find_header(const http_head *h, const char *name);

/* True when the comma-separated list in header `name` (all occurrences)
 * contains `token` (case-insensitive, OWS around items ignored). */
bool http_header_has_token(const http_head *h, const char *name, const char *token);

/* Body decoder. Decodes in place: framing (chunk sizes, extensions,
 * trailers) is removed and the decoded bytes are moved to the front of the
 * input, which works because output never outgrows input. */
typedef struct http_body {
    http_body_kind kind;
    uint64_t remaining; /* bytes left in the body (LENGTH) or current chunk (CHUNKED) */
    uint64_t total;     /* decoded bytes so far */
    uint64_t max;       /* limit on total */
    int state;          /* chunked-decoder state */
    size_t line_len;    /* bytes of the current chunk-size or trailer line */
    size_t trailer_bytes;
    size_t max_trailer_bytes; /* 8192 after http_body_init; the caller may change it */
    uint64_t chunk_size; /* chunk size being parsed */
    int error_status;   /* 400, 413 or 431 when decoding fails */
    const char *error;
} http_body;

/* Prepares to decode the body of `h` with at most max_body decoded bytes
 * (a Content-Length above max_body fails at once, before any byte is read:
 * that check is also made by http_parse_head for requests). */
void http_body_init(http_body *b, const http_head *h, uint64_t max_body);

/* Decodes from data[0, len). On return *consumed input bytes were used and
 * the first *out_len bytes of data are decoded body (out_len <= consumed).
 * Returns 1 when the body is complete (data beyond *consumed belongs to the
 * next message), 0 when more input is needed, or PARLEY_EPROTO /
 * PARLEY_ELIMIT (b->error_status 400 / 413) on malformed chunked framing or
 * an oversized body (431 for a trailer section over max_trailer_bytes). */
int http_body_decode(http_body *b, uint8_t *data, size_t len, size_t *consumed, size_t *out_len);

/* Signals end of input (the peer closed). Returns 1 when that completes the
 * body (UNTIL_CLOSE, or nothing was expected), PARLEY_EPROTO when a body was
 * cut short. */
int http_body_eof(http_body *b);

/* Standard reason phrase for a status code ("Unknown" for others). */
const char *http_status_text(int status);

/* Writers. They refuse (PARLEY_EINVAL) header names that are not tokens and
 * values containing CR, LF or NUL, so that nothing can be smuggled into a
 * head. PARLEY_ENOMEM when out of memory. */

/* Appends a status line and headers. reason may be NULL (standard text).
 * content_length >= 0 adds a Content-Length header; -1 adds none. The
 * blank line ending the head is written; the body is the caller's. */
int http_write_response_head(pbuf *out, int status, const char *reason, const http_header *hdrs,
                             size_t n, int64_t content_length);

/* The head of http_write_response (Content-Type, then the headers, then
 * Content-Length) without the body: for HEAD answers. */
int http_write_response_head_ct(pbuf *out, int status, const char *content_type,
                                const http_header *hdrs, size_t n, int64_t content_length);

/* A whole response with a body (Content-Length set from body_len). */
int http_write_response(pbuf *out, int status, const char *content_type, const http_header *hdrs,
                        size_t n, const void *body, size_t body_len);

/* Appends a request line and headers; `host` becomes the Host header.
 * content_length as for responses. */
int http_write_request_head(pbuf *out, const char *method, const char *target, const char *host,
                            const http_header *hdrs, size_t n, int64_t content_length);

/* Headers an application hands over as "Name: value" lines (at most max):
 * one copy of the text in *text and an array of n headers in *hdrs
 * pointing into it (both malloc'ed, the caller frees them), values
 * trimmed of blanks and checked by the request writer. n == 0 gives two
 * NULLs. PARLEY_EINVAL (no colon, empty name, a bad character, too many)
 * or PARLEY_ENOMEM leave both NULL. */
int http_headers_from_lines(const char *const *lines, size_t n, size_t max, char **text,
                            http_header **hdrs);

/* Request-target helpers (origin-form "/path?query"). */

/* The path part (before '?'), not decoded. */
void http_target_path(const char *target, size_t len, const char **path, size_t *path_len);

/* Finds `key` in the query string of the target and returns its raw
 * (still percent-encoded) value. Returns true when found; a key without
 * '=' has an empty value. */
bool http_query_get(const char *target, size_t len, const char *key, const char **val,
                    size_t *val_len);

/* Percent-decodes (and '+' -> ' ' when form is true) src into dst, which
 * must hold src_len bytes. Returns the decoded length or -1 on a bad
 * escape. */
long http_pct_decode(const char *src, size_t src_len, char *dst, bool form);

#endif
