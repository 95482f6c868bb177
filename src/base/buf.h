/* Growable byte buffers and refcounted shared byte blocks. */
#ifndef PARLEY_BASE_BUF_H
#define PARLEY_BASE_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* A growable buffer: bytes [ptr, ptr+len) are valid, capacity is cap.
 * A zeroed pbuf is an empty buffer that owns nothing. 16 bytes: every
 * connection holds two; a buffer is at most 4 GiB - 1 (reservations past
 * that fail with PARLEY_ENOMEM). */
typedef struct pbuf {
    uint8_t *ptr;
    uint32_t len;
    uint32_t cap;
} pbuf;

#define PBUF_MAX UINT32_MAX

/* Ensures room for `extra` more bytes. 0 or PARLEY_ENOMEM (also on size
 * overflow). Growth is geometric so appends are amortised O(1). */
int pbuf_reserve(pbuf *b, size_t extra);

/* Appends n bytes. 0 or PARLEY_ENOMEM. */
int pbuf_append(pbuf *b, const void *p, size_t n);

/* Appends a NUL-terminated string (without the NUL). */
int pbuf_append_str(pbuf *b, const char *s);

/* Appends printf-formatted text. 0, PARLEY_ENOMEM or PARLEY_EINVAL. */
int pbuf_appendf(pbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Removes the first n bytes (n <= len). */
void pbuf_consume(pbuf *b, size_t n);

/* Releases memory; the buffer becomes empty and owns nothing. */
void pbuf_free(pbuf *b);

/* Empties the buffer; frees the storage when it is larger than keep_cap, so
 * that a connection that once carried a big message does not keep its
 * memory while idle. */
void pbuf_reset(pbuf *b, size_t keep_cap);

/* A refcounted immutable byte block, for data written to many connections
 * (a broadcast is encoded once and each recipient holds a reference). */
typedef struct pshared {
    uint32_t refs;
    size_t len;
    uint8_t data[];
} pshared;

/* Allocates a block of len bytes with refcount 1; NULL when out of memory. */
pshared *pshared_new(size_t len);
/* Copies p into a new block. */
pshared *pshared_from(const void *p, size_t len);
static inline pshared *pshared_ref(pshared *s)
{
    s->refs++;
    return s;
}
void pshared_unref(pshared *s);

#endif
