/* The push gateway webhook (see push.h). */
#include "services/server/push.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"
#include "base/ratelimit.h"
#include "base/url.h"
#include "base/util.h"
#include "client/backoff.h"
#include "client/http_client.h"
#include "codec/json.h"

#define PUSH_SCAN_MAX  256   /* due rows looked at per pass */
#define PUSH_LOG_EVERY 10000 /* ms between log lines a dead receiver causes */
#define PUSH_JITTER    0.2

/* Fixed label sets. */
enum { PF_CONNECT, PF_TLS, PF_TIMEOUT, PF_STATUS, PF_RESPONSE, PF_INTERNAL, PF_COUNT };
static const char *const fail_names[PF_COUNT] = {"connect", "tls",      "timeout",
                                                 "status",  "response", "internal"};
enum { PD_ATTEMPTS, PD_OUTBOX_FULL, PD_EXPIRED, PD_COUNT };
static const char *const drop_names[PD_COUNT] = {"max_attempts", "outbox_full", "expired"};

typedef struct pslot {
    push *p;
    hclient *h; /* keep-alive connection to the receiver, reused */
    bool busy;
    mstore_push_row row;
    msg_notification n; /* the row's notification, loaded for the request */
    pbuf req;           /* "<ts>." followed by the body */
    size_t body_off;
    ptimer timer; /* the request's deadline */
} pslot;

struct push {
    parley_loop *loop;
    mstore *store;
    push_opts o;
    uint8_t *secret;
    purl url;
    ptls_ctx *tls;
    pslot *slots;
    unsigned nslots, busy;
    ptimer timer;  /* the next due row */
    bool wake;     /* a pass is wanted (after the open batch commits) */
    bool in_pass;  /* no pass inside a pass (a failing store could loop) */
    int64_t count; /* rows in the outbox (committed and in the open batch) */
    mstore_push_row cand[PUSH_CONCURRENCY_MAX];
    unsigned ncand;
    uint64_t sent, failures[PF_COUNT], dropped[PD_COUNT];
    plog_limit log_fail, log_full;
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- pure parts ---- */

bool push_eligible(const msg_nprefs *p, const msg_notification *n, const char *room, bool quiet_now,
                   bool online, int64_t now_ms)
{
    if (!p->push || online) return false;
    if (n->expires >= 0 && n->expires <= now_ms) return false;
    if (n->from[0] && msg_nprefs_has(&p->muted_users, n->from)) return false;
    if (room && (n->type == MSG_NT_MESSAGE || n->type == MSG_NT_MENTION) &&
        msg_nprefs_has(&p->muted_rooms, room))
        return false;
    if (p->types_off & (1u << n->type)) return false;
    if (n->priority < p->q_min && quiet_now) return false;
    return true;
}

int push_sign(const uint8_t *key, size_t klen, const void *data, size_t len,
              char out[PUSH_SIG_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    static const unsigned char empty[1] = {0};
    if (klen == 0 || klen > PUSH_SECRET_MAX) return PARLEY_EINVAL;
    if (!HMAC(EVP_sha256(), key, (int)klen, len ? (const unsigned char *)data : empty, len, mac,
              &maclen) ||
        maclen != 32)
        return PARLEY_EINVAL;
    memcpy(out, "v1=", 3);
    for (unsigned i = 0; i < 32; i++) {
        out[3 + 2 * i] = hex[mac[i] >> 4];
        out[4 + 2 * i] = hex[mac[i] & 15];
    }
    out[PUSH_SIG_LEN] = 0;
    return 0;
}

uint32_t push_backoff(uint32_t base_ms, uint32_t max_ms, uint32_t attempts, double r)
{
    backoff b = {.base_ms = base_ms, .max_ms = max_ms, .jitter = PUSH_JITTER};
    b.attempts = attempts ? attempts - 1 : 0;
    return backoff_next(&b, r);
}

static bool loopback_literal(const char *host)
{
    unsigned char a[16];
    if (inet_pton(AF_INET, host, a) == 1) return a[0] == 127;
    if (inet_pton(AF_INET6, host, a) == 1) {
        static const unsigned char one[16] = {[15] = 1};
        return memcmp(a, one, 16) == 0;
    }
    return false;
}

int push_check_url(const char *url, char *err, size_t errcap)
{
    purl u;
    if (!url || purl_parse(url, &u) != 0) {
        snprintf(err, errcap, "--push-webhook: not a valid http(s) URL");
        return PARLEY_EURL;
    }
    if (strcmp(u.scheme, "https") && strcmp(u.scheme, "http")) {
        snprintf(err, errcap, "--push-webhook: the URL must be https:// (got %s://)", u.scheme);
        return PARLEY_EURL;
    }
    if (!u.tls && !loopback_literal(u.host)) {
        snprintf(err, errcap,
                 "--push-webhook: http:// only to a loopback address (127.0.0.0/8 or [::1]); "
                 "use https:// for %s",
                 u.host);
        return PARLEY_EURL;
    }
    return 0;
}

/* ---- the sender ---- */

void push_opts_init(push_opts *o)
{
    memset(o, 0, sizeof *o);
    o->timeout_ms = 10000;
    o->backoff_ms = 1000;
    o->backoff_max_ms = 600000;
    o->max_attempts = 20;
    o->max_outbox = 100000;
    o->concurrency = 4;
}

static void on_timer(ptimer *t);
static void on_slot_timeout(ptimer *t);
static void pass(push *p);

static void ask_commit(push *p)
{
    if (p->o.commit) p->o.commit(p->o.user);
}

/* A pass is wanted: now when no batch is open, else after its commit. */
static void kick(push *p)
{
    p->wake = true;
    if (p->in_pass) return; /* the pass re-arms its timer */
    if (mstore_in_batch(p->store))
        ask_commit(p);
    else
        pass(p);
}

static void recount(push *p)
{
    int64_t n = mstore_push_count(p->store);
    if (n >= 0) p->count = n;
}

int push_new(parley_loop *loop, mstore *store, const push_opts *o, push **out)
{
    *out = NULL;
    char err[256];
    if (push_check_url(o->url, err, sizeof err) != 0) {
        plog_error("%s", err);
        return PARLEY_EURL;
    }
    if (!o->secret || o->secret_len == 0 || o->secret_len > PUSH_SECRET_MAX ||
        o->concurrency == 0 || o->concurrency > PUSH_CONCURRENCY_MAX || o->timeout_ms == 0 ||
        o->max_attempts == 0 || o->backoff_max_ms < o->backoff_ms) {
        plog_error("push: bad options");
        return PARLEY_EINVAL;
    }
    push *p = pcalloc(1, sizeof *p);
    if (!p) return PARLEY_ENOMEM;
    ptimer_init(&p->timer, on_timer); /* before any push_free */
    p->loop = loop;
    p->store = store;
    p->o = *o;
    p->o.url = p->o.ca_file = NULL; /* not kept: parsed and used below */
    purl_parse(o->url, &p->url);
    p->secret = malloc(o->secret_len);
    p->slots = pcalloc(o->concurrency, sizeof *p->slots);
    if (!p->secret || !p->slots) {
        push_free(p);
        return PARLEY_ENOMEM;
    }
    memcpy(p->secret, o->secret, o->secret_len);
    p->nslots = o->concurrency;
    for (unsigned i = 0; i < p->nslots; i++) {
        p->slots[i].p = p;
        ptimer_init(&p->slots[i].timer, on_slot_timeout);
    }
    if (p->url.tls) {
        ptls_client_opts to = {.ca_file = o->ca_file};
        p->tls = ptls_ctx_client(&to, err, sizeof err);
        if (!p->tls) {
            plog_error("push: TLS setup: %s", err);
            push_free(p);
            return PARLEY_ETLS;
        }
    }
    p->count = mstore_push_count(store);
    if (p->count < 0) {
        push_free(p);
        return PARLEY_EIO;
    }
    if (p->count)
        plog_info("push: %lld pending deliveries in the outbox, resuming", (long long)p->count);
    /* The first pass on the loop (rows left by the previous run). */
    p->wake = true;
    ploop_timer_start(loop, &p->timer, 0);
    *out = p;
    return 0;
}

void push_free(push *p)
{
    if (!p) return;
    ploop_timer_stop(p->loop, &p->timer);
    for (unsigned i = 0; p->slots && i < p->nslots; i++) {
        pslot *s = &p->slots[i];
        ploop_timer_stop(p->loop, &s->timer);
        if (s->h) hclient_abort(s->h);
        pbuf_free(&s->req);
    }
    free(p->slots);
    if (p->secret) OPENSSL_cleanse(p->secret, p->o.secret_len);
    free(p->secret);
    ptls_ctx_free(p->tls);
    free(p);
}

int push_enqueue(push *p, const msg_notification *n, int64_t now_ms)
{
    if (p->count >= 0 && (uint64_t)p->count >= p->o.max_outbox) {
        p->dropped[PD_OUTBOX_FULL]++;
        uint64_t held;
        if (plog_limit_ok(&p->log_full, ploop_now(p->loop), PUSH_LOG_EVERY, &held))
            plog_warn("push: the outbox holds %lld rows (--push-max-outbox): notification %lld "
                      "for %s not pushed (%llu more since the last line)",
                      (long long)p->count, (long long)n->id, n->to, (unsigned long long)held);
        return 0;
    }
    int rc = mstore_push_add(p->store, n->id, n->to, now_ms, NULL);
    if (rc) return rc;
    p->count++;
    p->wake = true; /* the pass runs after the commit */
    return 0;
}

void push_after_commit(push *p, bool ok)
{
    if (!ok) {
        /* The batch is gone: rows it added (and deleted) with it. */
        recount(p);
        p->wake = true;
    }
    /* A batch opened since (the owner's work after its commit): its
     * commit brings the pass. */
    if (p->wake) kick(p);
}

static void fail_log(push *p, const pslot *s, int why, const char *detail)
{
    uint64_t held;
    if (plog_limit_ok(&p->log_fail, ploop_now(p->loop), PUSH_LOG_EVERY, &held))
        plog_warn("push: delivery %lld to %s failed (%s%s%s; attempt %u) (%llu more failures "
                  "since the last line)",
                  (long long)s->row.id, p->url.host_header, fail_names[why], detail ? ": " : "",
                  detail ? detail : "", s->row.attempts + 1, (unsigned long long)held);
}

/* The slot's request ended: the row is deleted or rescheduled in the open
 * batch, and the next pass follows that batch's commit. */
static void slot_done(pslot *s, bool ok, int why, const char *detail)
{
    push *p = s->p;
    ploop_timer_stop(p->loop, &s->timer);
    int rc;
    if (ok) {
        p->sent++;
        rc = mstore_push_del(p->store, s->row.id);
        if (rc == 0) p->count--;
    } else {
        p->failures[why]++;
        fail_log(p, s, why, detail);
        uint32_t attempts = s->row.attempts + 1;
        if (attempts >= p->o.max_attempts) {
            p->dropped[PD_ATTEMPTS]++;
            plog_warn("push: delivery %lld (notification %lld for %s) dropped after %u attempts",
                      (long long)s->row.id, (long long)s->row.notif, s->row.user, attempts);
            rc = mstore_push_del(p->store, s->row.id);
            if (rc == 0) p->count--;
        } else {
            const uint8_t *rnd = ploop_random(p->loop, 4);
            double r = 0.5;
            if (rnd)
                r = (double)((uint32_t)rnd[0] << 24 | (uint32_t)rnd[1] << 16 |
                             (uint32_t)rnd[2] << 8 | rnd[3]) /
                    4294967296.0;
            uint32_t d = push_backoff(p->o.backoff_ms, p->o.backoff_max_ms, attempts, r);
            rc = mstore_push_retry(p->store, s->row.id, s->row.user, attempts,
                                   wall_ms() + (int64_t)d);
        }
    }
    if (rc) plog_error("push: cannot update delivery %lld in the outbox", (long long)s->row.id);
    s->busy = false;
    p->busy--;
    kick(p);
}

static int classify(int err)
{
    switch (err) {
    case PARLEY_ETLS:
        return PF_TLS;
    case PARLEY_ETIMEDOUT:
        return PF_TIMEOUT;
    case PARLEY_ELIMIT:
    case PARLEY_EPROTO:
        return PF_RESPONSE;
    case PARLEY_ENOMEM:
    case PARLEY_EINVAL:
    case PARLEY_ESTATE:
        return PF_INTERNAL;
    default:
        return PF_CONNECT;
    }
}

static void on_response(hclient *h, int err, int status, uint8_t *body, size_t len, void *user)
{
    (void)h;
    (void)body;
    (void)len; /* read (bounded by PUSH_RESPONSE_MAX) and discarded */
    pslot *s = user;
    if (!s->busy) return;
    if (err) {
        slot_done(s, false, classify(err), parley_strerror(err));
        return;
    }
    if (status >= 200 && status < 300) {
        slot_done(s, true, 0, NULL);
        return;
    }
    char d[32];
    snprintf(d, sizeof d, "HTTP %d", status);
    slot_done(s, false, PF_STATUS, d);
}

static void on_slot_timeout(ptimer *t)
{
    pslot *s = PARLEY_CONTAINER_OF(t, pslot, timer);
    if (!s->busy) return;
    /* The connection goes with the request: a late answer must not be
     * taken for the next one. */
    if (s->h) hclient_abort(s->h);
    s->h = NULL;
    slot_done(s, false, PF_TIMEOUT, NULL);
}

/* Builds and sends the row's request; false when the row was settled
 * without one (its notification expired or is gone). */
static bool slot_start(pslot *s, const mstore_push_row *row)
{
    push *p = s->p;
    s->row = *row;
    int64_t now = wall_ms();
    int r = mstore_notif_get(p->store, row->notif, &s->n);
    if (r == 0 || (r == 1 && s->n.expires >= 0 && s->n.expires <= now)) {
        p->dropped[PD_EXPIRED]++;
        if (mstore_push_del(p->store, row->id) == 0) p->count--;
        ask_commit(p);
        return false;
    }
    s->busy = true;
    p->busy++;
    if (r < 0) {
        slot_done(s, false, PF_INTERNAL, "store");
        return true;
    }
    int64_t ts = now / 1000;
    pbuf *b = &s->req;
    pbuf_reset(b, 64 * 1024);
    int rc = pbuf_appendf(b, "%lld.", (long long)ts);
    s->body_off = b->len;
    if (rc == 0) rc = pbuf_appendf(b, "{\"delivery\":%lld,\"user\":", (long long)row->id);
    if (rc == 0) rc = json_append_string(b, row->user, strlen(row->user));
    if (rc == 0) rc = pbuf_append_str(b, ",\"notification\":");
    if (rc == 0) rc = msg_encode_notification(b, &s->n);
    if (rc == 0) rc = pbuf_append(b, "}", 1);
    char sig[PUSH_SIG_LEN + 1];
    /* The signed bytes are "<ts>." + body: the buffer as built. */
    if (rc == 0) rc = push_sign(p->secret, p->o.secret_len, b->ptr, b->len, sig);
    if (rc) {
        slot_done(s, false, PF_INTERNAL, "encoding");
        return true;
    }
    char tsv[24], idv[24];
    snprintf(tsv, sizeof tsv, "%lld", (long long)ts);
    snprintf(idv, sizeof idv, "%lld", (long long)row->id);
    http_header hd[5] = {
        {"Content-Type", 12, "application/json", 16},  {"X-Parley-Timestamp", 18, tsv, strlen(tsv)},
        {"X-Parley-Signature", 18, sig, PUSH_SIG_LEN}, {"X-Parley-Delivery", 17, idv, strlen(idv)},
        {"User-Agent", 10, "parleyd-push", 12},
    };
    if (!s->h) {
        hclient_opts ho = {.host = p->url.host,
                           .port = p->url.port,
                           .host_header = p->url.host_header,
                           .tls = p->tls,
                           .connect_timeout_ms = p->o.timeout_ms,
                           .max_body = PUSH_RESPONSE_MAX};
        s->h = hclient_new(p->loop, &ho, on_response, s);
        if (!s->h) {
            slot_done(s, false, PF_INTERNAL, "out of memory");
            return true;
        }
        hclient_set_slot(s->h, &s->h);
    }
    ploop_timer_start(p->loop, &s->timer, p->o.timeout_ms);
    rc = hclient_request(s->h, "POST", p->url.target, hd, PARLEY_ARRAY_LEN(hd),
                         b->ptr + s->body_off, b->len - s->body_off);
    if (rc) {
        hclient_abort(s->h);
        s->h = NULL;
        slot_done(s, false, PF_INTERNAL, parley_strerror(rc));
    }
    return true;
}

static bool user_busy(const push *p, const char *user)
{
    for (unsigned i = 0; i < p->nslots; i++)
        if (p->slots[i].busy && !strcmp(p->slots[i].row.user, user)) return true;
    return false;
}

static int take_row(const mstore_push_row *r, void *arg)
{
    push *p = arg;
    if (p->busy + p->ncand >= p->nslots) return 1;
    if (user_busy(p, r->user)) return 0;
    p->cand[p->ncand++] = *r;
    return 0;
}

/* Starts what is due (the outbox as committed: no batch is open) and arms
 * the timer for the next row. */
static void pass(push *p)
{
    if (p->in_pass) return;
    p->in_pass = true;
    p->wake = false;
    int64_t now = wall_ms();
    p->ncand = 0;
    if (p->busy < p->nslots && mstore_push_due(p->store, now, PUSH_SCAN_MAX, take_row, p) < 0)
        plog_error("push: cannot read the outbox");
    for (unsigned i = 0; i < p->ncand; i++) {
        pslot *s = NULL;
        for (unsigned k = 0; k < p->nslots && !s; k++)
            if (!p->slots[k].busy) s = &p->slots[k];
        if (!s) break;
        slot_start(s, &p->cand[i]);
    }
    p->ncand = 0;
    p->in_pass = false;
    ploop_timer_stop(p->loop, &p->timer);
    if (p->wake) {
        /* Settled rows during the pass: after their commit, or (a store
         * that fails to write) a second from now. */
        if (mstore_in_batch(p->store))
            ask_commit(p);
        else
            ploop_timer_start(p->loop, &p->timer, 1000);
        return;
    }
    int64_t next = mstore_push_next_due(p->store, now);
    if (next >= 0) {
        int64_t d = next - wall_ms();
        if (d < 1) d = 1;
        if (d > 3600000) d = 3600000;
        ploop_timer_start(p->loop, &p->timer, (uint64_t)d);
    }
}

static void on_timer(ptimer *t)
{
    push *p = PARLEY_CONTAINER_OF(t, push, timer);
    kick(p);
}

void push_metrics(const push *p, pmx_out *o)
{
    pmx_counter(o, "parley_push_sent_total", "Push webhook deliveries answered with 2xx.",
                p ? p->sent : 0);
    pmx_family(o, "parley_push_failures_total", PMX_COUNTER,
               "Push webhook attempts that failed, by reason (each is retried until "
               "--push-max-attempts).");
    for (int k = 0; k < PF_COUNT; k++) {
        pmx_label l = {"reason", fail_names[k]};
        pmx_sample_u64(o, "parley_push_failures_total", NULL, &l, 1, p ? p->failures[k] : 0);
    }
    pmx_family(o, "parley_push_dropped_total", PMX_COUNTER,
               "Pushes given up, by reason: max_attempts, outbox_full (--push-max-outbox), "
               "expired (the notification expired first).");
    for (int k = 0; k < PD_COUNT; k++) {
        pmx_label l = {"reason", drop_names[k]};
        pmx_sample_u64(o, "parley_push_dropped_total", NULL, &l, 1, p ? p->dropped[k] : 0);
    }
    pmx_gauge(o, "parley_push_outbox", "Pushes waiting in the outbox.",
              p && p->count > 0 ? (double)p->count : 0);
}
