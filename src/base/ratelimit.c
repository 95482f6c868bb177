/* Token buckets in integer milli-tokens (see ratelimit.h). */
#include "base/ratelimit.h"

static uint64_t burst_milli(const prate_cfg *c)
{
    uint64_t b = c->burst ? c->burst : c->tokens;
    return b > UINT64_MAX / 1000 ? UINT64_MAX : b * 1000;
}

/* Brings b up to now_ms. Milli-tokens gained in `elapsed` ms are
 * elapsed * rate / period (rate = tokens * 1000), computed as
 * q * rate + r * rate / period with q, r = elapsed divided by period, so
 * that nothing overflows for limits with tokens * period_ms <= 10^16 (see
 * the header); a product that would overflow means the bucket is full. */
static void refill(prate *b, const prate_cfg *c, uint64_t now_ms)
{
    uint64_t cap = burst_milli(c);
    if (b->at == 0) {
        b->milli = cap;
        b->at = now_ms ? now_ms : 1;
        return;
    }
    if (now_ms <= b->at) return;
    uint64_t elapsed = now_ms - b->at;
    b->at = now_ms;
    if (b->milli >= cap) {
        b->milli = cap;
        return;
    }
    uint64_t missing = cap - b->milli;
    uint64_t rate = c->tokens > UINT64_MAX / 1000 ? UINT64_MAX : c->tokens * 1000;
    uint64_t period = c->period_ms ? c->period_ms : 1000;
    uint64_t q = elapsed / period, r = elapsed % period;
    if (q && rate >= missing / q + 1) {
        b->milli = cap;
        return;
    }
    uint64_t gained = q * rate;
    if (r) {
        if (rate > UINT64_MAX / r) {
            b->milli = cap;
            return;
        }
        gained += r * rate / period;
    }
    b->milli = gained >= missing ? cap : b->milli + gained;
}

bool prate_take(prate *b, const prate_cfg *c, uint64_t now_ms, uint64_t cost, uint64_t *retry_ms)
{
    if (c->tokens == 0) return true;
    refill(b, c, now_ms);
    uint64_t cap = burst_milli(c);
    uint64_t want = cost > cap / 1000 ? cap : cost * 1000;
    if (b->milli >= want) {
        b->milli -= want;
        return true;
    }
    if (retry_ms) {
        uint64_t missing = want - b->milli;
        /* ceil(missing * period / rate), split as in refill */
        uint64_t rate = c->tokens > UINT64_MAX / 1000 ? UINT64_MAX : c->tokens * 1000;
        uint64_t period = c->period_ms ? c->period_ms : 1000;
        uint64_t ms = (missing / rate) * period + ((missing % rate) * period + rate - 1) / rate;
        *retry_ms = ms ? ms : 1;
    }
    return false;
}

void prate_refund(prate *b, const prate_cfg *c, uint64_t now_ms, uint64_t cost)
{
    if (c->tokens == 0) return;
    refill(b, c, now_ms);
    uint64_t cap = burst_milli(c);
    uint64_t back = cost > cap / 1000 ? cap : cost * 1000;
    b->milli = cap - b->milli <= back ? cap : b->milli + back;
}

bool prate_full(const prate *b, const prate_cfg *c, uint64_t now_ms)
{
    if (c->tokens == 0 || b->at == 0) return true;
    prate copy = *b;
    refill(&copy, c, now_ms);
    return copy.milli >= burst_milli(c);
}

bool plog_limit_ok(plog_limit *l, uint64_t now_ms, uint32_t interval_ms, uint64_t *suppressed)
{
    if (now_ms < l->next_ms) {
        l->suppressed++;
        return false;
    }
    if (suppressed) *suppressed = l->suppressed;
    l->suppressed = 0;
    l->next_ms = now_ms + interval_ms;
    return true;
}
