/*
 * Token buckets for rate limits, and a limiter for log lines.
 *
 * A bucket holds up to `burst` tokens and gains `tokens` every `period_ms`
 * (continuously, in integer milli-tokens: no floating point, no drift). A
 * request of cost c passes when c tokens are there and takes them; when
 * it does not pass, the caller learns how long until it would. A bucket
 * is 16 bytes, needs no allocation and no timer: it is brought up to date
 * when used, from the caller's clock (the loop's milliseconds).
 *
 * A zeroed bucket is full: limits start generous and never need an
 * initialisation pass.
 */
#ifndef PARLEY_BASE_RATELIMIT_H
#define PARLEY_BASE_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

/* tokens * period_ms must stay below 10^16 (e.g. 10^9 bytes per second,
 * or 10^8 per day): every limit Parley configures is far below. */
typedef struct prate_cfg {
    uint64_t tokens;    /* gained per period; 0 = no limit */
    uint32_t period_ms; /* 1000 for "per second", 86400000 for "per day" */
    uint64_t burst;     /* bucket size; 0 = tokens */
} prate_cfg;

typedef struct prate {
    uint64_t milli; /* tokens available, in thousandths */
    uint64_t at;    /* clock (ms) of the last update; 0 = never used: full */
} prate;

/* A limit of `n` per `period_ms` with room for `burst` at once. */
static inline prate_cfg prate_limit(uint64_t n, uint32_t period_ms, uint64_t burst)
{
    prate_cfg c = {n, period_ms ? period_ms : 1000, burst};
    return c;
}

/* Takes `cost` tokens when they are there (a cost above the burst is
 * clamped to it, so that one large request can pass on a full bucket).
 * Returns true when taken; otherwise false and, when retry_ms is not NULL,
 * the time in ms until the cost would pass (at least 1). An unlimited cfg
 * (tokens == 0) always passes. now_ms must not go backwards (a step back
 * is treated as no time passing). */
bool prate_take(prate *b, const prate_cfg *c, uint64_t now_ms, uint64_t cost, uint64_t *retry_ms);

/* Gives tokens back (a request refused later for another reason), up to
 * the burst. */
void prate_refund(prate *b, const prate_cfg *c, uint64_t now_ms, uint64_t cost);

/* True when the bucket is full at now_ms: it holds no information and its
 * owner may free it (the next use starts full anyway). */
bool prate_full(const prate *b, const prate_cfg *c, uint64_t now_ms);

/* At most one log line per interval for a recurring event: returns true
 * when a line may be written now, with *suppressed set to how many events
 * were held back since the last line (and reset). Count every event by
 * calling this; write the line (with the count) only when it says so. */
typedef struct plog_limit {
    uint64_t next_ms;
    uint64_t suppressed;
} plog_limit;

bool plog_limit_ok(plog_limit *l, uint64_t now_ms, uint32_t interval_ms, uint64_t *suppressed);

#endif
