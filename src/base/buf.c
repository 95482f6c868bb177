#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "parley/parley.h"

int pbuf_reserve(pbuf *b, size_t extra)
{
    if ((size_t)(b->cap - b->len) >= extra) return 0;
    if (extra > (size_t)(PBUF_MAX - b->len)) return PARLEY_ENOMEM;
    size_t need = b->len + extra;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > PBUF_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    uint8_t *p = realloc(b->ptr, cap);
    if (!p) return PARLEY_ENOMEM;
    b->ptr = p;
    b->cap = (uint32_t)cap;
    return 0;
}

int pbuf_append(pbuf *b, const void *p, size_t n)
{
    if (n == 0) return 0;
    int rc = pbuf_reserve(b, n);
    if (rc) return rc;
    memcpy(b->ptr + b->len, p, n);
    b->len += (uint32_t)n;
    return 0;
}

int pbuf_append_str(pbuf *b, const char *s)
{
    return pbuf_append(b, s, strlen(s));
}

int pbuf_appendf(pbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return PARLEY_EINVAL;
    if ((size_t)n < sizeof tmp) return pbuf_append(b, tmp, (size_t)n);
    int rc = pbuf_reserve(b, (size_t)n + 1);
    if (rc) return rc;
    va_start(ap, fmt);
    vsnprintf((char *)b->ptr + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (uint32_t)n;
    return 0;
}

void pbuf_consume(pbuf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->ptr, b->ptr + n, b->len - n);
    b->len -= (uint32_t)n;
}

void pbuf_free(pbuf *b)
{
    free(b->ptr);
    b->ptr = NULL;
    b->len = b->cap = 0;
}

void pbuf_reset(pbuf *b, size_t keep_cap)
{
    b->len = 0;
    if (b->cap > keep_cap) pbuf_free(b);
}

pshared *pshared_new(size_t len)
{
    if (len > SIZE_MAX - sizeof(pshared)) return NULL;
    pshared *s = malloc(sizeof(pshared) + len);
    if (!s) return NULL;
    s->refs = 1;
    s->len = len;
    return s;
}

pshared *pshared_from(const void *p, size_t len)
{
    pshared *s = pshared_new(len);
    if (s && len) memcpy(s->data, p, len);
    return s;
}

void pshared_unref(pshared *s)
{
    if (s && --s->refs == 0) free(s);
}
