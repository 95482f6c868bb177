/*
 * The push gateway webhook (docs/PROTOCOL.md, "Push webhook"): stored
 * notifications of recipients who want push and have no connected device
 * are POSTed, signed, to one operator-configured HTTPS endpoint.
 *
 * Durability: the messaging service calls push_enqueue in the same store
 * batch that stores the notification, so the outbox row (msg_store.h,
 * "push outbox") commits with it: a notification acknowledged to its
 * sender has its push queued, whatever happens to the process after.
 *
 * Delivery: at least once. A row is deleted (in a later batch) after the
 * receiver answered 2xx; a failure (connection, TLS, non-2xx, timeout)
 * reschedules it with exponential backoff and jitter; after max_attempts
 * it is dropped. Rows of one user go out one at a time in id order; at
 * most `concurrency` requests are in flight. Rows left by a previous run
 * are resumed at start.
 *
 * Everything runs on the loop thread. Store writes join the current batch
 * and the owner is asked to commit (opts.commit); the sender only reads
 * the outbox between batches (push_after_commit), so nothing uncommitted
 * is ever sent.
 */
#ifndef PARLEY_SERVICES_PUSH_H
#define PARLEY_SERVICES_PUSH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/metrics.h"
#include "net/net.h"
#include "services/msg_schema.h"
#include "services/store/mstore.h"

typedef struct push push;

#define PUSH_SECRET_MAX      4096
#define PUSH_RESPONSE_MAX    4096 /* receiver's response body, read and discarded */
#define PUSH_CONCURRENCY_MAX 64
#define PUSH_SIG_LEN         67 /* "v1=" + 64 hex digits */

typedef struct push_opts {
    const char *url;            /* https://..., or http:// to a loopback address */
    const uint8_t *secret;      /* HMAC-SHA256 key (copied) */
    size_t secret_len;          /* 1..PUSH_SECRET_MAX */
    const char *ca_file;        /* CA bundle to trust; NULL: the system store */
    uint32_t timeout_ms;        /* whole request, connect included; default 10000 */
    uint32_t backoff_ms;        /* first retry delay; default 1000 */
    uint32_t backoff_max_ms;    /* cap; default 600000 */
    uint32_t max_attempts;      /* then dropped; default 20 */
    uint64_t max_outbox;        /* rows; beyond, new pushes are dropped; default 100000 */
    unsigned concurrency;       /* requests in flight; default 4 */
    void (*commit)(void *user); /* the owner commits the open batch soon */
    void *user;
} push_opts;

void push_opts_init(push_opts *o);

/* Checks a webhook URL: https, or http when the host is a loopback IP
 * literal (127.0.0.0/8, ::1). 0, or PARLEY_EURL with the reason in err. */
int push_check_url(const char *url, char *err, size_t errcap);

/* 0, PARLEY_EURL / PARLEY_EINVAL / PARLEY_ETLS (reason logged),
 * PARLEY_ENOMEM, PARLEY_EIO (store). The first pass runs on the loop. */
int push_new(parley_loop *loop, mstore *store, const push_opts *o, push **out);

/* Aborts requests in flight (their rows stay: sent again next start). */
void push_free(push *p);

/* n was just stored (not a dedupe hit) in the open batch and is push
 * eligible: queues its row in the same batch. Over max_outbox the push is
 * counted as dropped (and logged, rate-limited); 0 then too. */
int push_enqueue(push *p, const msg_notification *n, int64_t now_ms);

/* The owner committed (ok) or lost (rolled back) the batch. */
void push_after_commit(push *p, bool ok);

/* The parley_push_* families (zeros when p is NULL: push is off). */
void push_metrics(const push *p, pmx_out *o);

/* ---- pure parts (unit-tested) ---- */

/* The push-eligibility rule: p->push on; no connected device (online
 * false); not expired at now_ms; the sender not muted; a message/mention
 * not from a muted room; the type not switched off; and quiet hours
 * (quiet_now: set and now inside) do not hold it (priority below
 * q_min). in_app plays no part. */
bool push_eligible(const msg_nprefs *p, const msg_notification *n, const char *room, bool quiet_now,
                   bool online, int64_t now_ms);

/* X-Parley-Signature: "v1=" + hex HMAC-SHA256(key, data), NUL
 * terminated in out, where data is the signed string "<ts>.<body>".
 * 0, or PARLEY_EINVAL (bad key length, OpenSSL failed). */
int push_sign(const uint8_t *key, size_t klen, const void *data, size_t len,
              char out[PUSH_SIG_LEN + 1]);

/* The delay before attempt attempts + 1 after attempts (>= 1) failed:
 * min(base * 2^(attempts-1), max), moved by up to 20% either way by r in
 * [0, 1), kept within [0, max]. */
uint32_t push_backoff(uint32_t base_ms, uint32_t max_ms, uint32_t attempts, double r);

#endif
