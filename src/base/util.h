/* Small shared helpers: checked sizes, base64, randomness, clocks. */
#ifndef PARLEY_BASE_UTIL_H
#define PARLEY_BASE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PARLEY_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define PARLEY_MIN(a, b)    ((a) < (b) ? (a) : (b))
#define PARLEY_MAX(a, b)    ((a) > (b) ? (a) : (b))
#define PARLEY_CONTAINER_OF(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Public option structs carry their size as their first member (size_t
 * size), so that a program built against an older header (a smaller
 * struct) or another language's binding works with a newer library.
 * popts_take copies the caller's struct src into dst, which the caller has
 * filled with the defaults (its _opts_init): only the first min(src->size,
 * dst_size) bytes are read, the rest keeps the defaults, and dst->size is
 * set to dst_size. PARLEY_EINVAL for a NULL src, or a size of 0 or below
 * min_size (the size member and the first field: the smallest struct any
 * version of the header declares). */
int popts_take(void *dst, size_t dst_size, const void *src, size_t min_size);
/* The other direction, for the _opts_init functions: the first
 * min(dst_size, full_size) bytes of the defaults full into dst, and that
 * count into dst's size member (a caller's struct of an older, smaller
 * layout is filled without writing past it). Nothing when dst is NULL or
 * smaller than a size_t. */
void popts_give(void *dst, size_t dst_size, const void *full, size_t full_size);
#define POPTS_MIN(T, first) (offsetof(T, first) + sizeof(((T *)0)->first))
/* init(dst) then popts_take for a struct of type T whose first field after
 * size is `first`. */
#define POPTS_TAKE(T, init, dst, src, first)                                                       \
    (init(dst), popts_take((dst), sizeof(T), (src), POPTS_MIN(T, first)))

/* calloc with overflow check on n*size. */
void *pcalloc(size_t n, size_t size);

/* A NUL-terminated copy of p[0, n) (p need not be terminated: unlike
 * strndup, nothing past n is read). NULL when out of memory. */
char *pmemdup_str(const void *p, size_t n);

/* Base64 (RFC 4648, standard alphabet, with padding). */
size_t base64_encoded_len(size_t n);
/* Writes base64_encoded_len(n) bytes plus a NUL to out. Returns the length. */
size_t base64_encode(const uint8_t *in, size_t n, char *out);
/* Decodes strictly (padding required, no whitespace, canonical trailing
 * bits). Returns the decoded length, or -1 on malformed input or when the
 * output would exceed out_cap. */
long base64_decode(const char *in, size_t n, uint8_t *out, size_t out_cap);

/* Fills buf with n bytes from the OS CSPRNG (OpenSSL RAND_bytes).
 * Returns 0 or PARLEY_EIO. */
int prand_bytes(void *buf, size_t n);

/* Monotonic clock in milliseconds / nanoseconds. */
uint64_t ptime_ms(void);
uint64_t ptime_ns(void);

/* ASCII case-insensitive comparison of a and b (lengths given). */
bool pstr_ieq(const char *a, size_t alen, const char *b, size_t blen);
/* Same with a NUL-terminated b. */
bool pstr_ieqz(const char *a, size_t alen, const char *b);

#endif
