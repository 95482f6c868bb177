#include "client/backoff.h"

uint32_t backoff_next(backoff *b, double r)
{
    double d = b->base_ms;
    for (unsigned i = 0; i < b->attempts && d < b->max_ms; i++) d *= 2;
    if (b->attempts < UINT32_MAX) b->attempts++;
    if (d > b->max_ms) d = b->max_ms;
    if (b->full_jitter) {
        d *= r;
    } else if (b->jitter > 0) {
        double dev = d * b->jitter * (2 * r - 1);
        d += dev;
    }
    if (d < 0) d = 0;
    if (d > b->max_ms) d = b->max_ms;
    return (uint32_t)d;
}
