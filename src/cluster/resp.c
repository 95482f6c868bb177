/* RESP2 reader and command writer (see resp.h). */
#include "cluster/resp.h"

#include <stdio.h>
#include <string.h>

#include "parley/parley.h"

/* A CRLF-terminated line at p: its length (without CRLF) or -1 when the
 * CRLF is not there yet; -2 when the line is too long to be a header. */
#define LINE_MAX_BYTES 1024 /* a header or simple string/error line */

static long line_at(const uint8_t *p, size_t len)
{
    size_t lim = len < LINE_MAX_BYTES ? len : LINE_MAX_BYTES;
    for (size_t i = 0; i + 1 < lim; i++)
        if (p[i] == '\r') return p[i + 1] == '\n' ? (long)i : -2;
    return lim >= LINE_MAX_BYTES ? -2 : -1;
}

static int parse_int(const uint8_t *p, size_t n, int64_t *out)
{
    size_t i = 0;
    int neg = 0;
    if (n && p[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i == n || n - i > 18) return -1;
    int64_t v = 0;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        v = v * 10 + (p[i] - '0');
    }
    *out = neg ? -v : v;
    return 0;
}

/* One non-array value at data: bytes taken, 0 for more, or an error. */
static long parse_val(const uint8_t *data, size_t len, size_t max_bulk, presp_val *v, int *nil,
                      size_t *need)
{
    if (len < 1) return 0;
    long l = line_at(data, len);
    if (l == -2) return PARLEY_EPROTO;
    if (l < 0) return 0;
    char t = (char)data[0];
    memset(v, 0, sizeof *v);
    v->type = t;
    switch (t) {
    case '+':
    case '-':
        v->p = data + 1;
        v->len = (size_t)l - 1;
        return l + 2;
    case ':':
        if (parse_int(data + 1, (size_t)l - 1, &v->i)) return PARLEY_EPROTO;
        return l + 2;
    case '$': {
        int64_t n;
        if (parse_int(data + 1, (size_t)l - 1, &n) || n < -1) return PARLEY_EPROTO;
        if (n == -1) {
            if (nil) *nil = 1;
            return l + 2;
        }
        if ((uint64_t)n > max_bulk) return PARLEY_ELIMIT;
        size_t total = (size_t)l + 2 + (size_t)n + 2;
        if (len < total) {
            if (need) *need = total;
            return 0;
        }
        if (data[total - 2] != '\r' || data[total - 1] != '\n') return PARLEY_EPROTO;
        v->p = data + l + 2;
        v->len = (size_t)n;
        return (long)total;
    }
    default:
        return PARLEY_EPROTO;
    }
}

long presp_parse(const uint8_t *data, size_t len, size_t max_bulk, presp_reply *out, size_t *need)
{
    memset(out, 0, sizeof *out);
    if (need) *need = 0;
    if (len < 1) return 0;
    if (data[0] != '*') {
        long r = parse_val(data, len, max_bulk, &out->v, &out->nil, need);
        if (r > 0) out->type = out->v.type;
        return r;
    }
    long l = line_at(data, len);
    if (l == -2) return PARLEY_EPROTO;
    if (l < 0) return 0;
    int64_t n;
    if (parse_int(data + 1, (size_t)l - 1, &n) || n < -1 || n > PRESP_MAX_ELEMS)
        return PARLEY_EPROTO;
    out->type = '*';
    size_t off = (size_t)l + 2;
    if (n == -1) {
        out->nil = 1;
        return (long)off;
    }
    for (int64_t i = 0; i < n; i++) {
        if (off < len && data[off] == '*') return PARLEY_EPROTO;
        int nil = 0;
        size_t sub = 0;
        long r = parse_val(data + off, len - off, max_bulk, &out->el[i], &nil, &sub);
        if (r <= 0) {
            if (r == 0 && need) *need = off + (sub ? sub : 1);
            return r;
        }
        off += (size_t)r;
    }
    out->n = (size_t)n;
    return (long)off;
}

int presp_command(pbuf *out, size_t argc, const char *const *argv, const size_t *lens)
{
    char head[32];
    int n = snprintf(head, sizeof head, "*%zu\r\n", argc);
    int rc = pbuf_append(out, head, (size_t)n);
    for (size_t i = 0; rc == 0 && i < argc; i++) {
        size_t len = lens ? lens[i] : strlen(argv[i]);
        n = snprintf(head, sizeof head, "$%zu\r\n", len);
        rc = pbuf_append(out, head, (size_t)n);
        if (rc == 0) rc = pbuf_append(out, argv[i], len);
        if (rc == 0) rc = pbuf_append(out, "\r\n", 2);
    }
    return rc;
}
