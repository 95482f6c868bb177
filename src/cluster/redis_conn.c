/* A Redis connection over a Parley connection (see redis_conn.h). */
#include "cluster/redis_conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/ratelimit.h"
#include "base/util.h"
#include "parley/parley.h"

enum { R_IDLE, R_CONNECTING, R_HANDSHAKE, R_READY };

struct predis {
    pconn c;
    parley_loop *loop;
    predis_url url;
    predis_opts o;
    char name[32];
    predis_cbs cbs;
    void *user;
    int state;
    bool conn_live; /* c initialised, its on_close not run yet */
    bool freeing;
    unsigned in_cb;      /* inside on_close's callback */
    unsigned hs_pending; /* AUTH/SELECT replies still due */
    unsigned attempts;
    backoff bo;
    ptimer retry;
    pbuf cmd;
    presp_reader rd; /* replies: hiredis' reader, reset per connection */
    plog_limit log;
};

int predis_url_parse(const char *url, predis_url *out, const char **why)
{
    const char *dummy;
    if (!why) why = &dummy;
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!url) {
        *why = "no URL";
        return PARLEY_EINVAL;
    }
    const char *p;
    if (!strncmp(url, "rediss://", 9)) {
        out->tls = true;
        p = url + 9;
    } else if (!strncmp(url, "redis://", 8)) {
        p = url + 8;
    } else {
        *why = "the URL must start with redis:// or rediss://";
        return PARLEY_EINVAL;
    }
    const char *end = p + strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@') at = q; /* the last one: a password may hold '@' */
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ulen = colon ? (size_t)(colon - p) : 0;
        const char *pw = colon ? colon + 1 : p;
        size_t plen = (size_t)(at - pw);
        if (ulen >= sizeof out->user || plen >= sizeof out->pass) {
            *why = "user or password too long";
            return PARLEY_EINVAL;
        }
        memcpy(out->user, p, ulen);
        memcpy(out->pass, pw, plen);
        p = at + 1;
    }
    const char *hend = end;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb) {
            *why = "bad IPv6 address";
            return PARLEY_EINVAL;
        }
        if ((size_t)(rb - p - 1) >= sizeof out->host) goto badhost;
        memcpy(out->host, p + 1, (size_t)(rb - p - 1));
        hend = rb + 1;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (colon) hend = colon;
        if ((size_t)(hend - p) >= sizeof out->host) goto badhost;
        memcpy(out->host, p, (size_t)(hend - p));
    }
    if (!out->host[0]) goto badhost;
    if (hend < end) {
        if (*hend != ':' || hend + 1 == end) goto badport;
        unsigned long v = 0;
        for (const char *q = hend + 1; q < end; q++) {
            if (*q < '0' || *q > '9') goto badport;
            v = v * 10 + (unsigned long)(*q - '0');
            if (v > 65535) goto badport;
        }
        if (v == 0) goto badport;
        out->port = (unsigned)v;
    }
    if (*end == '/' && end[1]) {
        unsigned long v = 0;
        const char *q = end + 1;
        for (; *q >= '0' && *q <= '9'; q++) {
            v = v * 10 + (unsigned long)(*q - '0');
            if (v > 1000000) break;
        }
        if (*q || v > 1000000) {
            *why = "the path must be a database number";
            return PARLEY_EINVAL;
        }
        out->db = (unsigned)v;
    } else if (*end && *end != '/') {
        *why = "query and fragment are not supported";
        return PARLEY_EINVAL;
    }
    return 0;
badhost:
    *why = "bad host";
    return PARLEY_EINVAL;
badport:
    *why = "bad port";
    return PARLEY_EINVAL;
}

static size_t on_data(pconn *c, uint8_t *data, size_t len);
static void on_connect(pconn *c, int status);
static void on_close(pconn *c, int err);
static const pconn_cbs conn_cbs = {
    .on_data = on_data, .on_connect = on_connect, .on_close = on_close};

static void attempt(predis *r);

static void on_retry(ptimer *t)
{
    predis *r = PARLEY_CONTAINER_OF(t, predis, retry);
    attempt(r);
}

static void attempt(predis *r)
{
    r->attempts++;
    if (presp_reader_reset(&r->rd)) {
        /* No memory for a reader now: try again later. */
        ploop_timer_start(r->loop, &r->retry, backoff_next(&r->bo, 0.5));
        return;
    }
    pconn_init(&r->c, r->loop, &conn_cbs, r->o.max_out);
    r->conn_live = true;
    r->state = R_CONNECTING;
    int rc = pconn_connect(&r->c, r->url.host, r->url.port, r->url.tls ? r->o.tls : NULL,
                           r->o.connect_timeout_ms);
    if (rc) pconn_close(&r->c, false, rc);
}

static int send_cmd(predis *r, size_t argc, const char *const *argv, const size_t *lens)
{
    r->cmd.len = 0;
    int rc = presp_command(&r->cmd, argc, argv, lens);
    if (rc == 0) rc = pconn_write(&r->c, r->cmd.ptr, r->cmd.len);
    if (r->cmd.cap > 65536) pbuf_reset(&r->cmd, 4096);
    return rc;
}

static void ready(predis *r)
{
    r->state = R_READY;
    r->attempts = 0;
    backoff_reset(&r->bo);
    plog_info("redis %s: connected to %s:%u", r->name, r->url.host, r->url.port);
    if (r->cbs.on_ready) r->cbs.on_ready(r, r->user);
}

static void on_connect(pconn *c, int status)
{
    predis *r = PARLEY_CONTAINER_OF(c, predis, c);
    if (status) return; /* on_close follows */
    r->state = R_HANDSHAKE;
    r->hs_pending = 0;
    if (r->url.pass[0]) {
        const char *argv[3] = {"AUTH", r->url.user, r->url.pass};
        if (r->url.user[0])
            send_cmd(r, 3, argv, NULL);
        else
            send_cmd(r, 2, (const char *const[]){"AUTH", r->url.pass}, NULL);
        r->hs_pending++;
    }
    if (r->url.db) {
        char db[16];
        snprintf(db, sizeof db, "%u", r->url.db);
        send_cmd(r, 2, (const char *const[]){"SELECT", db}, NULL);
        r->hs_pending++;
    }
    if (r->hs_pending == 0) ready(r);
}

/* One reply (or push) from the server. */
static void handle(predis *r, const presp_reply *rep)
{
    if (r->state == R_HANDSHAKE) {
        if (rep->type == '-') {
            plog_error("redis %s: %.*s (check the URL's user, password and database)", r->name,
                       (int)PARLEY_MIN(rep->v.len, 200), (const char *)rep->v.p);
            pconn_close(&r->c, false, PARLEY_EPROTO);
            return;
        }
        if (--r->hs_pending == 0) ready(r);
        return;
    }
    if (r->state == R_READY && r->cbs.on_reply) r->cbs.on_reply(r, rep, r->user);
}

/* The bytes go into the reader (a copy: hiredis keeps its own buffer), at
 * most as many as it takes before its limit (presp_reader_room), and the
 * replies that complete are handled between pieces; a server that goes
 * over the limit without completing a reply, or sends something
 * malformed, has its connection dropped. */
static size_t on_data(pconn *c, uint8_t *data, size_t len)
{
    predis *r = PARLEY_CONTAINER_OF(c, predis, c);
    size_t off = 0;
    int rc = 0;
    while (off < len && !(c->flags & PCONN_CLOSING)) {
        size_t k = PARLEY_MIN(len - off, presp_reader_room(&r->rd));
        rc = presp_feed(&r->rd, data + off, k ? k : len - off);
        if (rc) break;
        off += k;
        const presp_reply *rep;
        while (!(c->flags & PCONN_CLOSING) && (rc = presp_next(&r->rd, &rep)) > 0) handle(r, rep);
        if (rc < 0) break;
    }
    if (rc < 0 && !(c->flags & PCONN_CLOSING)) {
        plog_warn("redis %s: %s from the server; reconnecting", r->name,
                  presp_reader_error(&r->rd));
        pconn_close(c, false, rc);
    }
    return len;
}

static void on_close(pconn *c, int err)
{
    predis *r = PARLEY_CONTAINER_OF(c, predis, c);
    bool was_ready = r->state == R_READY;
    r->conn_live = false;
    r->state = R_IDLE;
    if (r->freeing) {
        pbuf_free(&r->cmd);
        presp_reader_free(&r->rd);
        free(r);
        return;
    }
    if (!err) err = PARLEY_ECLOSED;
    double rnd = 0.5;
    const uint8_t *b = ploop_random(r->loop, 4);
    if (b)
        rnd = (double)(((uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3])) /
              4294967296.0;
    uint32_t delay = backoff_next(&r->bo, rnd);
    if (was_ready)
        plog_warn("redis %s: connection to %s:%u lost (%s); retrying in %u ms", r->name,
                  r->url.host, r->url.port, parley_strerror(err), delay);
    else if (plog_limit_ok(&r->log, ploop_now(r->loop), 10000, NULL))
        plog_warn("redis %s: cannot connect to %s:%u (%s, attempt %u); retrying in %u ms", r->name,
                  r->url.host, r->url.port, parley_strerror(err), r->attempts, delay);
    ploop_timer_start(r->loop, &r->retry, delay);
    r->in_cb++;
    if (r->cbs.on_down) r->cbs.on_down(r, err, r->user);
    r->in_cb--;
    if (r->freeing) {
        ploop_timer_stop(r->loop, &r->retry);
        pbuf_free(&r->cmd);
        presp_reader_free(&r->rd);
        free(r);
    }
}

int predis_new(parley_loop *loop, const predis_url *url, const predis_opts *o,
               const predis_cbs *cbs, void *user, predis **out)
{
    predis *r = pcalloc(1, sizeof *r);
    if (!r) return PARLEY_ENOMEM;
    if (url->tls && (!o || !o->tls)) {
        free(r);
        return PARLEY_EINVAL; /* rediss:// without a TLS context */
    }
    r->loop = loop;
    r->url = *url;
    if (o) r->o = *o;
    snprintf(r->name, sizeof r->name, "%s", r->o.name ? r->o.name : "connection");
    r->o.name = NULL;
    if (!r->o.max_bulk) r->o.max_bulk = 1024 * 1024 + 65536;
    if (!r->o.connect_timeout_ms) r->o.connect_timeout_ms = 5000;
    if (!r->o.retry_min_ms) r->o.retry_min_ms = 100;
    if (!r->o.retry_max_ms) r->o.retry_max_ms = 5000;
    r->bo = (backoff){.base_ms = r->o.retry_min_ms, .max_ms = r->o.retry_max_ms, .jitter = 0.5};
    r->cbs = *cbs;
    r->user = user;
    ptimer_init(&r->retry, on_retry);
    if (presp_reader_init(&r->rd, r->o.max_bulk)) {
        free(r);
        return PARLEY_ENOMEM;
    }
    attempt(r);
    *out = r;
    return 0;
}

bool predis_ready(const predis *r)
{
    return r->state == R_READY && !(r->c.flags & PCONN_CLOSING);
}

int predis_command(predis *r, size_t argc, const char *const *argv, const size_t *lens)
{
    if (!predis_ready(r)) return PARLEY_ECLOSED;
    return send_cmd(r, argc, argv, lens);
}

void predis_drop(predis *r, int err)
{
    if (r->conn_live) pconn_close(&r->c, false, err);
}

unsigned predis_attempts(const predis *r)
{
    return r->attempts;
}

void predis_free(predis *r)
{
    if (!r) return;
    r->freeing = true;
    ploop_timer_stop(r->loop, &r->retry);
    if (r->conn_live) {
        /* Graceful: what was published last (a node's goodbye) still
         * reaches Redis. */
        pconn_close(&r->c, true, 0);
        return; /* on_close frees */
    }
    if (r->in_cb) return; /* on_close frees after its callback */
    pbuf_free(&r->cmd);
    presp_reader_free(&r->rd);
    free(r);
}
