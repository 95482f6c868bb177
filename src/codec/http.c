#include "codec/http.h"

#include <assert.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "parley/parley.h"

/* RFC 9112 section 2.2 asks servers to tolerate "at least one" empty line
 * before the request line; a few more costs nothing, an endless stream of
 * them is a client that is not speaking HTTP. */
#define HTTP_MAX_LEADING_EMPTY 4
/* chunk-size line, extensions included: generous for real extensions, small
 * enough that nobody can make us skip an unbounded line. */
#define HTTP_MAX_CHUNK_LINE    256
#define HTTP_DEFAULT_HDR_BYTES 8192
#define HTTP_MAX_CL            ((uint64_t)INT64_MAX)

void http_limits_init(http_limits *l)
{
    l->max_header_bytes = HTTP_DEFAULT_HDR_BYTES;
    l->max_headers = 64;
    l->max_body = 1024 * 1024;
}

/* RFC 9110 section 5.6.2 tchar. */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_token(const char *s, size_t n)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)s[i])) return false;
    return true;
}

/* field-value characters: VCHAR, obs-text, SP, HTAB. */
static bool is_field_char(unsigned char c)
{
    return (c >= 0x20 && c != 0x7f) || c == '\t';
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

void http_parser_init(http_parser *p, bool response, const http_limits *limits)
{
    memset(p, 0, sizeof *p);
    if (limits)
        p->limits = *limits;
    else
        http_limits_init(&p->limits);
    p->response = response;
}

void http_parser_reset(http_parser *p, bool head_request)
{
    p->head_request = head_request;
    p->scanned = 0;
    p->error_status = 0;
    p->error = NULL;
}

static long fail(http_parser *p, int status, const char *why)
{
    p->error_status = status;
    p->error = why;
    return (status == 413 || status == 414 || status == 431) ? PARLEY_ELIMIT : PARLEY_EPROTO;
}

/* The head ran over max_header_bytes. For a request whose request line does
 * not end within the limit the more precise answer is 414. Runs once per
 * failure, so scanning the line again keeps the total work linear. */
static long fail_limit(http_parser *p, const uint8_t *buf, size_t len, size_t start, size_t limit)
{
    if (p->response) return fail(p, 431, "response head too large");
    size_t end = len < limit ? len : limit;
    for (size_t i = start; i < end; i++)
        if (buf[i] == '\n') return fail(p, 431, "request header fields too large");
    return fail(p, 414, "request line too long");
}

static long need_more(http_parser *p, size_t len)
{
    p->scanned = len;
    return 0;
}

/* Iterates over the comma-separated items of a field value, trimming OWS
 * and skipping empty items (RFC 9110 section 5.6.1). */
static bool next_item(const char *v, size_t n, size_t *pos, const char **item, size_t *item_len)
{
    size_t i = *pos;
    while (i < n) {
        while (i < n && (is_ows(v[i]) || v[i] == ',')) i++;
        if (i >= n) break;
        size_t b = i;
        while (i < n && v[i] != ',') i++;
        size_t e = i;
        while (e > b && is_ows(v[e - 1])) e--;
        *pos = i;
        *item = v + b;
        *item_len = e - b;
        return true;
    }
    *pos = n;
    return false;
}

/* Parses every Content-Length field: each a list of 1*DIGIT items that
 * must all agree (RFC 9112 section 6.3, item 5). 1 when present, 0 when
 * absent, -1 when invalid. */
static int parse_content_length(const http_head *h, uint64_t *out)
{
    bool seen = false;
    uint64_t val = 0;
    for (size_t k = 0; k < h->num_headers; k++) {
        const http_header *f = &h->headers[k];
        if (!pstr_ieqz(f->name, f->name_len, "Content-Length")) continue;
        size_t i = 0;
        bool any = false;
        /* Split by hand rather than with next_item: empty items are an
         * error here, not something to skip. */
        for (;;) {
            while (i < f->value_len && is_ows(f->value[i])) i++;
            size_t b = i;
            uint64_t v = 0;
            while (i < f->value_len && f->value[i] >= '0' && f->value[i] <= '9') {
                unsigned d = (unsigned)(f->value[i] - '0');
                if (v > (HTTP_MAX_CL - d) / 10) return -1;
                v = v * 10 + d;
                i++;
            }
            if (i == b) return -1;
            while (i < f->value_len && is_ows(f->value[i])) i++;
            if (seen && v != val) return -1;
            seen = any = true;
            val = v;
            if (i == f->value_len) break;
            if (f->value[i] != ',') return -1;
            i++;
        }
        if (!any) return -1;
    }
    *out = val;
    return seen ? 1 : 0;
}

typedef enum te_result {
    TE_NONE,          /* no Transfer-Encoding */
    TE_CHUNKED,       /* exactly "chunked" */
    TE_CHUNKED_OTHER, /* other codings, then chunked last */
    TE_OTHER_FINAL,   /* the final coding is not chunked */
    TE_BAD,           /* malformed, empty, or chunked applied twice */
} te_result;

/* Classifies the transfer codings of all Transfer-Encoding fields, which
 * together form one list (RFC 9112 section 6.1). */
static te_result parse_transfer_encoding(const http_head *h)
{
    bool seen = false, last_chunked = false, other = false;
    unsigned chunked = 0;
    for (size_t k = 0; k < h->num_headers; k++) {
        const http_header *f = &h->headers[k];
        if (!pstr_ieqz(f->name, f->name_len, "Transfer-Encoding")) continue;
        seen = true;
        size_t pos = 0, n;
        const char *it;
        while (next_item(f->value, f->value_len, &pos, &it, &n)) {
            size_t t = 0;
            while (t < n && is_tchar((unsigned char)it[t])) t++;
            size_t rest = t;
            while (rest < n && is_ows(it[rest])) rest++;
            /* Parameters (";q=...") do not change which coding this is. */
            if (t == 0 || (rest < n && it[rest] != ';')) return TE_BAD;
            if (pstr_ieqz(it, t, "chunked")) {
                if (t != n) return TE_BAD; /* chunked takes no parameters */
                chunked++;
                last_chunked = true;
            } else {
                other = true;
                last_chunked = false;
            }
        }
    }
    if (!seen) return TE_NONE;
    /* chunked twice, or no coding at all: the framing is ambiguous. */
    if (chunked > 1 || (!chunked && !other)) return TE_BAD;
    if (!last_chunked) return TE_OTHER_FINAL;
    return other ? TE_CHUNKED_OTHER : TE_CHUNKED;
}

/* Parses "HTTP/x.y" at s (8 bytes available). Returns the minor version
 * for 1.0/1.1, -2 for another well-formed version, -1 when malformed. */
static int parse_version(const uint8_t *s)
{
    if (memcmp(s, "HTTP/", 5) != 0) return -1;
    if (s[5] < '0' || s[5] > '9' || s[6] != '.' || s[7] < '0' || s[7] > '9') return -1;
    if (s[5] == '1' && (s[7] == '0' || s[7] == '1')) return s[7] - '0';
    return -2;
}

static long parse_request_line(http_parser *p, const uint8_t *s, size_t n, http_head *h)
{
    size_t i = 0;
    while (i < n && is_tchar(s[i])) i++;
    if (i == 0 || i >= n || s[i] != ' ') return fail(p, 400, "malformed request line");
    h->method = (const char *)s;
    h->method_len = i;
    size_t t = ++i;
    while (i < n && s[i] >= 0x21 && s[i] <= 0x7e) i++;
    if (i == t || i >= n || s[i] != ' ') return fail(p, 400, "malformed request line");
    h->target = (const char *)s + t;
    h->target_len = i - t;
    i++;
    if (n - i != 8) return fail(p, 400, "malformed request line");
    int minor = parse_version(s + i);
    if (minor == -2) return fail(p, 505, "HTTP version not supported");
    if (minor < 0) return fail(p, 400, "malformed request line");
    h->version_minor = minor;
    return 0;
}

static long parse_status_line(http_parser *p, const uint8_t *s, size_t n, http_head *h)
{
    if (n < 12 || s[8] != ' ') return fail(p, 400, "malformed status line");
    int minor = parse_version(s);
    if (minor == -2) return fail(p, 505, "HTTP version not supported");
    if (minor < 0) return fail(p, 400, "malformed status line");
    int status = 0;
    for (size_t i = 9; i < 12; i++) {
        if (s[i] < '0' || s[i] > '9') return fail(p, 400, "malformed status code");
        status = status * 10 + (s[i] - '0');
    }
    if (status < 100 || status > 599) return fail(p, 400, "status code out of range");
    /* A missing SP before an empty reason is common enough to tolerate. */
    size_t r = 12;
    if (n > 12) {
        if (s[12] != ' ') return fail(p, 400, "malformed status line");
        r = 13;
    }
    for (size_t i = r; i < n; i++)
        if (!is_field_char(s[i])) return fail(p, 400, "bad character in reason phrase");
    h->version_minor = minor;
    h->status = status;
    h->reason = (const char *)s + r;
    h->reason_len = n - r;
    return 0;
}

static long parse_field_line(http_parser *p, const uint8_t *s, size_t n, http_header *f)
{
    if (s[0] == ' ' || s[0] == '\t') return fail(p, 400, "obsolete line folding");
    size_t i = 0;
    while (i < n && is_tchar(s[i])) i++;
    if (i == 0 || i >= n || s[i] != ':') return fail(p, 400, "malformed header field");
    f->name = (const char *)s;
    f->name_len = i;
    i++;
    while (i < n && is_ows((char)s[i])) i++;
    size_t b = i, e = i;
    for (; i < n; i++) {
        if (!is_field_char(s[i])) return fail(p, 400, "bad character in header value");
        if (!is_ows((char)s[i])) e = i + 1;
    }
    f->value = (const char *)s + b;
    f->value_len = e - b;
    return 0;
}

static long count_named(const http_head *h, const char *name)
{
    long c = 0;
    for (size_t k = 0; k < h->num_headers; k++)
        if (pstr_ieqz(h->headers[k].name, h->headers[k].name_len, name)) c++;
    return c;
}

/* Works out the body framing, RFC 9112 section 6.3. */
static long decide_framing(http_parser *p, http_head *h)
{
    uint64_t cl = 0;
    int has_cl = parse_content_length(h, &cl);
    if (has_cl < 0) return fail(p, 400, "invalid Content-Length");
    te_result te = parse_transfer_encoding(h);
    if (te != TE_NONE && has_cl) return fail(p, 400, "both Transfer-Encoding and Content-Length");
    if (te == TE_BAD) return fail(p, 400, "invalid Transfer-Encoding");

    if (!p->response) {
        if (te != TE_NONE) {
            if (h->version_minor == 0) return fail(p, 400, "Transfer-Encoding in HTTP/1.0");
            if (te != TE_CHUNKED) return fail(p, 501, "transfer coding not implemented");
            h->body_kind = HTTP_BODY_CHUNKED;
        } else if (has_cl) {
            if (cl > p->limits.max_body) return fail(p, 413, "request body too large");
            h->body_kind = HTTP_BODY_LENGTH;
            h->content_length = cl;
        } else {
            h->body_kind = HTTP_BODY_NONE;
        }
        return 0;
    }

    if (h->status < 200 || h->status == 204 || h->status == 304 || p->head_request) {
        h->body_kind = HTTP_BODY_NONE;
    } else if (te == TE_CHUNKED || te == TE_CHUNKED_OTHER) {
        h->body_kind = HTTP_BODY_CHUNKED;
    } else if (te != TE_NONE) {
        h->body_kind = HTTP_BODY_UNTIL_CLOSE;
    } else if (has_cl) {
        h->body_kind = HTTP_BODY_LENGTH;
        h->content_length = cl;
    } else {
        h->body_kind = HTTP_BODY_UNTIL_CLOSE;
    }
    return 0;
}

/* Parses the complete head s[0, n): start line, fields, final CRLF. Every
 * line is known to end in CRLF with no CR or LF inside. */
static long parse_complete(http_parser *p, const uint8_t *s, size_t n, http_head *h,
                           http_header *headers, size_t max_headers)
{
    size_t cap = PARLEY_MIN(max_headers, p->limits.max_headers);
    memset(h, 0, sizeof *h);
    h->headers = headers;
    size_t eol = 0;
    while (s[eol] != '\r') eol++;
    long rc = p->response ? parse_status_line(p, s, eol, h) : parse_request_line(p, s, eol, h);
    if (rc) return rc;
    /* The head ends with the only empty line in it. */
    size_t i = eol + 2;
    while (i + 2 < n) {
        size_t b = i;
        while (s[i] != '\r') i++;
        if (h->num_headers >= cap) return fail(p, 431, "too many header fields");
        rc = parse_field_line(p, s + b, i - b, &headers[h->num_headers]);
        if (rc) return rc;
        h->num_headers++;
        i += 2;
    }
    assert(i + 2 == n && s[i] == '\r');

    if (!p->response) {
        long hosts = count_named(h, "Host");
        if (hosts > 1 || (hosts == 0 && h->version_minor == 1))
            return fail(p, 400, hosts ? "repeated Host" : "missing Host");
    }
    rc = decide_framing(p, h);
    if (rc) return rc;

    if (h->version_minor == 1)
        h->keep_alive = !http_header_has_token(h, "Connection", "close");
    else
        h->keep_alive = http_header_has_token(h, "Connection", "keep-alive") &&
                        !http_header_has_token(h, "Connection", "close");
    /* A body delimited by the close cannot leave the connection usable. */
    if (h->body_kind == HTTP_BODY_UNTIL_CLOSE) h->keep_alive = false;
    h->conn_upgrade = http_header_has_token(h, "Connection", "upgrade");
    h->expect_continue = http_header_has_token(h, "Expect", "100-continue");
    return 0;
}

long http_parse_head(http_parser *p, const uint8_t *buf, size_t len, http_head *head,
                     http_header *headers, size_t max_headers)
{
    if (p->error_status) return fail(p, p->error_status, p->error);
    size_t limit = p->limits.max_header_bytes;
    if (limit > LONG_MAX) limit = LONG_MAX;

    /* Leading empty lines (requests only). The bytes are judged in the
     * order they arrive, so the outcome never depends on the chopping: an
     * error in byte i wins over the limit only when i < limit. */
    size_t start = 0;
    if (!p->response) {
        for (unsigned empties = 0;; empties++) {
            if (start >= len) return need_more(p, len);
            if (start >= limit) return fail_limit(p, buf, len, start, limit);
            if (buf[start] == '\n') return fail(p, 400, "bare LF");
            if (buf[start] != '\r') break;
            if (empties == HTTP_MAX_LEADING_EMPTY) return fail(p, 400, "too many empty lines");
            if (start + 1 >= len) return need_more(p, len);
            if (start + 1 >= limit) return fail_limit(p, buf, len, start, limit);
            if (buf[start + 1] != '\n') return fail(p, 400, "bare CR");
            start += 2;
        }
    }

    /* The caller resets the parser between messages and never takes
     * bytes away from a head in progress. */
    assert(p->scanned <= len);
    size_t i = p->scanned > start ? p->scanned : start;
    for (; i < len; i++) {
        uint8_t c = buf[i];
        if (i > start && buf[i - 1] == '\r' && c != '\n') return fail(p, 400, "bare CR");
        if (c == '\n') {
            if (i == start || buf[i - 1] != '\r') return fail(p, 400, "bare LF");
            if (i >= start + 3 && buf[i - 2] == '\n' && buf[i - 3] == '\r' && i < limit) {
                p->scanned = i + 1;
                long rc = parse_complete(p, buf + start, i + 1 - start, head, headers, max_headers);
                return rc ? rc : (long)(i + 1);
            }
        }
        if (i >= limit) return fail_limit(p, buf, len, start, limit);
    }
    return need_more(p, len);
}

const http_header *http_find_header(const http_head *h, const char *name)
{
    for (size_t k = 0; k < h->num_headers; k++)
        if (pstr_ieqz(h->headers[k].name, h->headers[k].name_len, name)) return &h->headers[k];
    return NULL;
}

bool http_header_has_token(const http_head *h, const char *name, const char *token)
{
    for (size_t k = 0; k < h->num_headers; k++) {
        const http_header *f = &h->headers[k];
        if (!pstr_ieqz(f->name, f->name_len, name)) continue;
        size_t pos = 0, n;
        const char *it;
        while (next_item(f->value, f->value_len, &pos, &it, &n))
            if (pstr_ieqz(it, n, token)) return true;
    }
    return false;
}

/* Body decoder. */

enum {
    CH_SIZE = 0,    /* chunk-size digits */
    CH_SIZE_WS,     /* BWS after the size */
    CH_EXT,         /* chunk extensions, skipped */
    CH_SIZE_LF,     /* LF ending the size line */
    CH_DATA,        /* chunk data */
    CH_DATA_CR,     /* CRLF after chunk data */
    CH_DATA_LF,     /* LF of that CRLF */
    CH_TRAILER_BOL, /* start of a trailer line (or the final empty line) */
    CH_TRAILER,     /* inside a trailer line */
    CH_TRAILER_LF,
    CH_END_LF, /* LF of the final empty line */
    CH_DONE,
    CH_ERROR,
};

static int body_fail(http_body *b, int status, const char *why)
{
    b->state = CH_ERROR;
    b->error_status = status;
    b->error = why;
    return status == 400 ? PARLEY_EPROTO : PARLEY_ELIMIT;
}

void http_body_init(http_body *b, const http_head *h, uint64_t max_body)
{
    memset(b, 0, sizeof *b);
    b->kind = h->body_kind;
    b->max = max_body;
    /* http_body_init does not see the parser limits; the caller may lower
     * or raise this after init. */
    b->max_trailer_bytes = HTTP_DEFAULT_HDR_BYTES;
    b->state = CH_SIZE;
    if (b->kind == HTTP_BODY_LENGTH) {
        b->remaining = h->content_length;
        if (h->content_length > max_body) body_fail(b, 413, "body too large");
    }
    if (b->kind == HTTP_BODY_NONE) b->state = CH_DONE;
}

static int decode_chunked(http_body *b, uint8_t *data, size_t len, size_t *consumed,
                          size_t *out_len)
{
    size_t i = 0, o = 0;
    int rc = 0;
    while (i < len && b->state != CH_DONE) {
        if (b->state == CH_DATA) {
            size_t n = len - i;
            if (n > b->remaining) n = (size_t)b->remaining;
            if (o != i) memmove(data + o, data + i, n);
            o += n;
            i += n;
            b->remaining -= n;
            b->total += n;
            if (b->remaining == 0) b->state = CH_DATA_CR;
            continue;
        }
        uint8_t c = data[i++];
        switch (b->state) {
        case CH_SIZE:
        case CH_SIZE_WS:
        case CH_EXT:
        case CH_SIZE_LF:
            if (++b->line_len > HTTP_MAX_CHUNK_LINE) {
                rc = body_fail(b, 400, "chunk-size line too long");
                goto out;
            }
            break;
        case CH_TRAILER_BOL:
        case CH_TRAILER:
        case CH_TRAILER_LF:
        case CH_END_LF:
            if (++b->trailer_bytes > b->max_trailer_bytes) {
                rc = body_fail(b, 431, "trailer section too large");
                goto out;
            }
            break;
        default:
            break;
        }
        switch (b->state) {
        case CH_SIZE: {
            int d = hexval(c);
            if (d >= 0) {
                if (b->chunk_size > (UINT64_MAX >> 4)) {
                    rc = body_fail(b, 400, "chunk size overflow");
                    goto out;
                }
                b->chunk_size = b->chunk_size << 4 | (uint64_t)d;
                /* Refuse as soon as the size is known to be too big: the
                 * data need not arrive for us to know. */
                if (b->chunk_size > b->max - b->total) {
                    rc = body_fail(b, 413, "body too large");
                    goto out;
                }
                break;
            }
            if (b->line_len == 1) {
                rc = body_fail(b, 400, "missing chunk size");
                goto out;
            }
            if (c == '\r') {
                b->state = CH_SIZE_LF;
            } else if (c == ';') {
                b->state = CH_EXT;
            } else if (c == ' ' || c == '\t') {
                b->state = CH_SIZE_WS;
            } else {
                rc = body_fail(b, 400, "malformed chunk size");
                goto out;
            }
            break;
        }
        case CH_SIZE_WS:
            if (c == ';') {
                b->state = CH_EXT;
            } else if (c == '\r') {
                b->state = CH_SIZE_LF;
            } else if (c != ' ' && c != '\t') {
                rc = body_fail(b, 400, "malformed chunk size");
                goto out;
            }
            break;
        case CH_EXT:
            if (c == '\r') {
                b->state = CH_SIZE_LF;
            } else if (!is_field_char(c)) {
                rc = body_fail(b, 400, "bad character in chunk extension");
                goto out;
            }
            break;
        case CH_SIZE_LF:
            if (c != '\n') {
                rc = body_fail(b, 400, "bare CR in chunk-size line");
                goto out;
            }
            b->line_len = 0;
            if (b->chunk_size == 0) {
                b->state = CH_TRAILER_BOL;
            } else {
                b->remaining = b->chunk_size;
                b->chunk_size = 0;
                b->state = CH_DATA;
            }
            break;
        case CH_DATA_CR:
            if (c != '\r') {
                rc = body_fail(b, 400, "missing CRLF after chunk data");
                goto out;
            }
            b->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != '\n') {
                rc = body_fail(b, 400, "missing CRLF after chunk data");
                goto out;
            }
            b->state = CH_SIZE;
            break;
        case CH_TRAILER_BOL:
            if (c == '\r') {
                b->state = CH_END_LF;
            } else if (c == ' ' || c == '\t' || !is_tchar(c)) {
                /* obs-fold or a line that cannot be a field */
                rc = body_fail(b, 400, "malformed trailer field");
                goto out;
            } else {
                b->state = CH_TRAILER;
            }
            break;
        case CH_TRAILER:
            if (c == '\r') {
                b->state = CH_TRAILER_LF;
            } else if (!is_field_char(c)) {
                rc = body_fail(b, 400, "bad character in trailer field");
                goto out;
            }
            break;
        case CH_TRAILER_LF:
        case CH_END_LF:
            if (c != '\n') {
                rc = body_fail(b, 400, "bare CR in trailer section");
                goto out;
            }
            b->state = b->state == CH_END_LF ? CH_DONE : CH_TRAILER_BOL;
            break;
        default:
            assert(0);
            break;
        }
    }
    rc = b->state == CH_DONE ? 1 : 0;
out:
    *consumed = i;
    *out_len = o;
    return rc;
}

int http_body_decode(http_body *b, uint8_t *data, size_t len, size_t *consumed, size_t *out_len)
{
    *consumed = 0;
    *out_len = 0;
    if (b->state == CH_ERROR) return body_fail(b, b->error_status, b->error);
    if (b->state == CH_DONE) return 1;
    switch (b->kind) {
    case HTTP_BODY_NONE:
        return 1;
    case HTTP_BODY_LENGTH: {
        size_t n = len;
        if (n > b->remaining) n = (size_t)b->remaining;
        b->remaining -= n;
        b->total += n;
        *consumed = *out_len = n;
        if (b->remaining) return 0;
        b->state = CH_DONE;
        return 1;
    }
    case HTTP_BODY_UNTIL_CLOSE:
        if (len > b->max - b->total) return body_fail(b, 413, "body too large");
        b->total += len;
        *consumed = *out_len = len;
        return 0;
    case HTTP_BODY_CHUNKED:
        return decode_chunked(b, data, len, consumed, out_len);
    }
    return body_fail(b, 400, "unknown body framing");
}

int http_body_eof(http_body *b)
{
    if (b->state == CH_ERROR) return body_fail(b, b->error_status, b->error);
    if (b->state == CH_DONE || b->kind == HTTP_BODY_NONE || b->kind == HTTP_BODY_UNTIL_CLOSE) {
        b->state = CH_DONE;
        return 1;
    }
    return body_fail(b, 400, "body cut short");
}

const char *http_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    }
    return "Unknown";
}

/* Writers. Everything is validated before the first byte is appended, and
 * out->len is restored if an append fails, so a caller never sends half a
 * head. */

static bool value_ok(const char *v)
{
    for (; *v; v++)
        if (*v == '\r' || *v == '\n') return false;
    return true;
}

static bool headers_ok(const http_header *hdrs, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        const http_header *f = &hdrs[k];
        if (!f->name || !is_token(f->name, f->name_len)) return false;
        if (f->value_len && !f->value) return false;
        for (size_t i = 0; i < f->value_len; i++) {
            char c = f->value[i];
            if (c == '\r' || c == '\n' || c == '\0') return false;
        }
    }
    return true;
}

static int append_header(pbuf *out, const char *name, size_t name_len, const char *value,
                         size_t value_len)
{
    int rc = pbuf_append(out, name, name_len);
    if (!rc) rc = pbuf_append(out, ": ", 2);
    if (!rc) rc = pbuf_append(out, value, value_len);
    if (!rc) rc = pbuf_append(out, "\r\n", 2);
    return rc;
}

/* Appends headers, the optional Content-Type and Content-Length, and the
 * blank line. */
static int append_fields(pbuf *out, const char *content_type, const http_header *hdrs, size_t n,
                         int64_t content_length)
{
    int rc = 0;
    if (content_type)
        rc = append_header(out, "Content-Type", 12, content_type, strlen(content_type));
    for (size_t k = 0; k < n && !rc; k++)
        rc = append_header(out, hdrs[k].name, hdrs[k].name_len, hdrs[k].value, hdrs[k].value_len);
    if (!rc && content_length >= 0)
        rc = pbuf_appendf(out, "Content-Length: %lld\r\n", (long long)content_length);
    if (!rc) rc = pbuf_append(out, "\r\n", 2);
    return rc;
}

static int write_response(pbuf *out, int status, const char *reason, const char *content_type,
                          const http_header *hdrs, size_t n, int64_t content_length,
                          const void *body, size_t body_len)
{
    if (status < 100 || status > 999 || content_length < -1) return PARLEY_EINVAL;
    if (!reason) reason = http_status_text(status);
    for (const char *r = reason; *r; r++)
        if (!is_field_char((unsigned char)*r)) return PARLEY_EINVAL;
    if (content_type && !value_ok(content_type)) return PARLEY_EINVAL;
    if (!headers_ok(hdrs, n)) return PARLEY_EINVAL;
    size_t mark = out->len;
    int rc = pbuf_appendf(out, "HTTP/1.1 %d %s\r\n", status, reason);
    if (!rc) rc = append_fields(out, content_type, hdrs, n, content_length);
    if (!rc) rc = pbuf_append(out, body, body_len);
    if (rc) out->len = mark;
    return rc;
}

int http_write_response_head(pbuf *out, int status, const char *reason, const http_header *hdrs,
                             size_t n, int64_t content_length)
{
    return write_response(out, status, reason, NULL, hdrs, n, content_length, NULL, 0);
}

int http_write_response_head_ct(pbuf *out, int status, const char *content_type,
                                const http_header *hdrs, size_t n, int64_t content_length)
{
    return write_response(out, status, NULL, content_type, hdrs, n, content_length, NULL, 0);
}

int http_write_response(pbuf *out, int status, const char *content_type, const http_header *hdrs,
                        size_t n, const void *body, size_t body_len)
{
    if (body_len > (uint64_t)INT64_MAX) return PARLEY_EINVAL;
    return write_response(out, status, NULL, content_type, hdrs, n, (int64_t)body_len, body,
                          body_len);
}

int http_write_request_head(pbuf *out, const char *method, const char *target, const char *host,
                            const http_header *hdrs, size_t n, int64_t content_length)
{
    if (!method || !target || !host || content_length < -1) return PARLEY_EINVAL;
    if (!is_token(method, strlen(method)) || !*target) return PARLEY_EINVAL;
    for (const char *t = target; *t; t++)
        if ((unsigned char)*t < 0x21 || (unsigned char)*t > 0x7e) return PARLEY_EINVAL;
    if (!value_ok(host) || !headers_ok(hdrs, n)) return PARLEY_EINVAL;
    size_t mark = out->len;
    int rc = pbuf_append_str(out, method);
    if (!rc) rc = pbuf_append(out, " ", 1);
    if (!rc) rc = pbuf_append_str(out, target);
    if (!rc) rc = pbuf_append(out, " HTTP/1.1\r\n", 11);
    if (!rc) rc = append_header(out, "Host", 4, host, strlen(host));
    if (!rc) rc = append_fields(out, NULL, hdrs, n, content_length);
    if (rc) out->len = mark;
    return rc;
}

/* Request-target helpers. */

void http_target_path(const char *target, size_t len, const char **path, size_t *path_len)
{
    const char *q = memchr(target, '?', len);
    *path = target;
    *path_len = q ? (size_t)(q - target) : len;
}

bool http_query_get(const char *target, size_t len, const char *key, const char **val,
                    size_t *val_len)
{
    const char *q = memchr(target, '?', len);
    if (!q) return false;
    const char *end = target + len;
    const char *hash = memchr(q, '#', (size_t)(end - q));
    if (hash) end = hash;
    size_t klen = strlen(key);
    const char *s = q + 1;
    while (s <= end) {
        const char *amp = memchr(s, '&', (size_t)(end - s));
        const char *e = amp ? amp : end;
        if (e > s) {
            const char *eq = memchr(s, '=', (size_t)(e - s));
            const char *kend = eq ? eq : e;
            if ((size_t)(kend - s) == klen && memcmp(s, key, klen) == 0) {
                *val = eq ? eq + 1 : e;
                *val_len = eq ? (size_t)(e - eq - 1) : 0;
                return true;
            }
        }
        if (!amp) break;
        s = amp + 1;
    }
    return false;
}

long http_pct_decode(const char *src, size_t src_len, char *dst, bool form)
{
    size_t o = 0;
    for (size_t i = 0; i < src_len; i++) {
        char c = src[i];
        if (c == '%') {
            if (src_len - i < 3) return -1;
            int hi = hexval((unsigned char)src[i + 1]), lo = hexval((unsigned char)src[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            dst[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+' && form) {
            dst[o++] = ' ';
        } else {
            dst[o++] = c;
        }
    }
    return (long)o;
}

static int header_lines(const char *const *lines, size_t n, size_t max, char **text,
                        http_header **hdrs)
{
    if (n > max || !lines) return PARLEY_EINVAL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!lines[i]) return PARLEY_EINVAL;
        total += strlen(lines[i]) + 1;
    }
    *text = malloc(total);
    *hdrs = pcalloc(n, sizeof **hdrs);
    if (!*text || !*hdrs) return PARLEY_ENOMEM;
    char *p = *text;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(lines[i]);
        memcpy(p, lines[i], len + 1);
        char *colon = memchr(p, ':', len);
        if (!colon || colon == p) return PARLEY_EINVAL;
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        size_t vlen = (size_t)(p + len - v);
        while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) vlen--;
        (*hdrs)[i] = (http_header){p, (size_t)(colon - p), v, vlen};
        p += len + 1;
    }
    /* Let the writer judge the characters now rather than at connect. */
    pbuf probe = {0};
    int rc = http_write_request_head(&probe, "GET", "/", "h", *hdrs, n, -1);
    pbuf_free(&probe);
    return rc;
}

int http_headers_from_lines(const char *const *lines, size_t n, size_t max, char **text,
                            http_header **hdrs)
{
    *text = NULL;
    *hdrs = NULL;
    if (n == 0) return 0;
    int rc = header_lines(lines, n, max, text, hdrs);
    if (rc != 0) {
        free(*text);
        free(*hdrs);
        *text = NULL;
        *hdrs = NULL;
    }
    return rc;
}
