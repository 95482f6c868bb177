/* Reconnection delays: exponential backoff with jitter, sans-I/O. */
#ifndef PARLEY_CLIENT_BACKOFF_H
#define PARLEY_CLIENT_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

typedef struct backoff {
    uint32_t base_ms;    /* first delay */
    uint32_t max_ms;     /* cap */
    double jitter;       /* 0..1: socket.io-client's randomizationFactor */
    bool full_jitter;    /* instead: uniform in [0, delay] ("full jitter") */
    unsigned attempts;   /* attempts made since the last success */
} backoff;

/* The delay before the next attempt and counts the attempt. r is a
 * uniform random number in [0, 1) (the caller's source, so tests can fix
 * it). The delay is d = min(base * 2^attempt, max); with full_jitter it is
 * drawn uniformly from [0, d], else moved by up to d * jitter either way
 * (socket.io-client's formula), and kept within [0, max]. */
uint32_t backoff_next(backoff *b, double r);

/* A connection succeeded: the next failure starts from base again. */
static inline void backoff_reset(backoff *b)
{
    b->attempts = 0;
}

#endif
