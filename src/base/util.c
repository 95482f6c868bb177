#include "util.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "parley/parley.h"

int popts_take(void *dst, size_t dst_size, const void *src, size_t min_size)
{
    if (!src || dst_size < sizeof(size_t)) return PARLEY_EINVAL;
    size_t size;
    memcpy(&size, src, sizeof size);
    if (size == 0 || size < min_size) return PARLEY_EINVAL;
    memcpy(dst, src, PARLEY_MIN(size, dst_size));
    memcpy(dst, &dst_size, sizeof dst_size);
    return 0;
}

void popts_give(void *dst, size_t dst_size, const void *full, size_t full_size)
{
    if (!dst || dst_size < sizeof(size_t)) return;
    size_t n = PARLEY_MIN(dst_size, full_size);
    memcpy(dst, full, n);
    memcpy(dst, &n, sizeof n);
}

void *pcalloc(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size) return NULL;
    return calloc(n ? n : 1, size ? size : 1);
}

char *pmemdup_str(const void *p, size_t n)
{
    if (n == SIZE_MAX) return NULL;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    if (n) memcpy(s, p, n);
    s[n] = 0;
    return s;
}

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t base64_encoded_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

size_t base64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64chars[v >> 18];
        out[o++] = b64chars[(v >> 12) & 63];
        out[o++] = b64chars[(v >> 6) & 63];
        out[o++] = b64chars[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        out[o++] = b64chars[v >> 18];
        out[o++] = b64chars[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

long base64_decode(const char *in, size_t n, uint8_t *out, size_t out_cap)
{
    if (n % 4) return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)in[i + k];
            if (c == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad) return -1; /* data after padding */
            v[k] = b64val(c);
            if (v[k] < 0) return -1;
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        size_t nbytes = 3 - (size_t)pad;
        /* Non-canonical encodings (stray low bits before padding) are rejected. */
        if (pad == 1 && (w & 0xff)) return -1;
        if (pad == 2 && (w & 0xffff)) return -1;
        if (o + nbytes > out_cap) return -1;
        out[o++] = (uint8_t)(w >> 16);
        if (nbytes > 1) out[o++] = (uint8_t)(w >> 8);
        if (nbytes > 2) out[o++] = (uint8_t)w;
    }
    return (long)o;
}

int prand_bytes(void *buf, size_t n)
{
    while (n > 0) {
        int chunk = n > 1 << 20 ? 1 << 20 : (int)n;
        if (RAND_bytes(buf, chunk) != 1) return PARLEY_EIO;
        buf = (uint8_t *)buf + chunk;
        n -= (size_t)chunk;
    }
    return 0;
}

uint64_t ptime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t ptime_ms(void)
{
    return ptime_ns() / 1000000u;
}

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

bool pstr_ieq(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen) return false;
    for (size_t i = 0; i < alen; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i])) return false;
    return true;
}

bool pstr_ieqz(const char *a, size_t alen, const char *b)
{
    return pstr_ieq(a, alen, b, strlen(b));
}
