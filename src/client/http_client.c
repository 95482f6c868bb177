/* Keep-alive HTTP/1.1 client connection (see http_client.h). */
#include "client/http_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/util.h"

#define HC_MAX_HEADERS   64
#define HC_DEFAULT_LIMIT (16u << 20)

enum { HC_IDLE = 0, HC_HEAD, HC_BODY };

/* One TCP (TLS) connection. Separate from the client so that a connection
 * being closed can finish in the background while the next one opens. */
typedef struct hconn {
    pconn c;
    hclient *h; /* NULL once abandoned */
    bool connected;
} hconn;

struct hclient {
    parley_loop *loop;
    char host[256];
    char host_header[270];
    unsigned port;
    ptls_ctx *tls;
    pproxy proxy;
    bool use_proxy;
    uint32_t connect_timeout_ms;
    uint64_t max_body;
    hclient_cb cb;
    void *user;

    hconn *cur;
    pbuf req; /* request bytes waiting for the connection */
    bool busy;
    int phase;
    http_parser parser;
    http_header hdrs[HC_MAX_HEADERS];
    http_body body;
    int status;
    bool keep_alive;
    pbuf resp;

    hclient **slot;
    int depth;
    bool dead; /* hclient_close called */
    ptimer linger;
};

static size_t hc_on_data(pconn *c, uint8_t *data, size_t len);
static void hc_on_connect(pconn *c, int status);
static void hc_on_eof(pconn *c);
static void hc_on_close(pconn *c, int err);
static const pconn_cbs hc_cbs = {.on_data = hc_on_data,
                                 .on_connect = hc_on_connect,
                                 .on_eof = hc_on_eof,
                                 .on_close = hc_on_close};

static void on_linger(ptimer *t);

hclient *hclient_new(parley_loop *loop, const hclient_opts *o, hclient_cb cb, void *user)
{
    if (!o->host || !o->host_header || strlen(o->host) >= sizeof(((hclient *)0)->host) ||
        strlen(o->host_header) >= sizeof(((hclient *)0)->host_header))
        return NULL;
    hclient *h = pcalloc(1, sizeof *h);
    if (!h) return NULL;
    h->loop = loop;
    snprintf(h->host, sizeof h->host, "%s", o->host);
    snprintf(h->host_header, sizeof h->host_header, "%s", o->host_header);
    h->port = o->port;
    h->tls = o->tls;
    if (o->proxy) {
        h->proxy = *o->proxy;
        h->use_proxy = true;
    }
    h->connect_timeout_ms = o->connect_timeout_ms;
    h->max_body = o->max_body ? o->max_body : HC_DEFAULT_LIMIT;
    h->cb = cb;
    h->user = user;
    ptimer_init(&h->linger, on_linger);
    return h;
}

static void destroy(hclient *h)
{
    if (h->slot) *h->slot = NULL;
    ploop_timer_stop(h->loop, &h->linger);
    pbuf_free(&h->req);
    pbuf_free(&h->resp);
    free(h);
}

/* Frees a dead client once nothing refers to it. True when freed. */
static bool maybe_destroy(hclient *h)
{
    if (h->dead && h->depth == 0 && !h->cur) {
        destroy(h);
        return true;
    }
    return false;
}

/* Lets go of the current connection (it closes and frees itself). */
static void drop_conn(hclient *h, bool graceful, int err)
{
    hconn *hc = h->cur;
    if (!hc) return;
    h->cur = NULL;
    hc->h = NULL;
    pconn_close(&hc->c, graceful, err);
}

/* Ends the outstanding request and reports it. Returns true when the
 * client went away during the callback. */
static bool finish(hclient *h, int err)
{
    h->busy = false;
    h->phase = HC_IDLE;
    pbuf_reset(&h->req, 0);
    pbuf body = h->resp;
    memset(&h->resp, 0, sizeof h->resp);
    int status = h->status;
    bool gone = false;
    if (h->dead) {
        /* A lingering request finished: now close. */
        drop_conn(h, err == 0, 0);
        gone = maybe_destroy(h);
    } else if (h->cb) {
        h->depth++;
        /* A proxy's refusal carries the proxy's status. */
        bool px = err == PARLEY_EPROXY || err == PARLEY_EPROXYAUTH;
        h->cb(h, err, err && !px ? 0 : status, body.ptr, body.len, h->user);
        h->depth--;
        gone = maybe_destroy(h);
    }
    pbuf_free(&body);
    return gone;
}

static void write_request(hclient *h)
{
    hconn *hc = h->cur;
    if (!hc || !hc->connected || !h->req.len) return;
    if (pconn_write(&hc->c, h->req.ptr, h->req.len) != 0) return; /* on_close reports */
    pbuf_reset(&h->req, 0);
}

static int open_conn(hclient *h)
{
    hconn *hc = pcalloc(1, sizeof *hc);
    if (!hc) return PARLEY_ENOMEM;
    hc->h = h;
    pconn_init(&hc->c, h->loop, &hc_cbs, 0);
    h->cur = hc;
    int rc = pconn_connect_via(&hc->c, h->use_proxy ? &h->proxy : NULL, h->host, h->port, h->tls,
                               h->connect_timeout_ms);
    if (rc) {
        /* The handle exists: close it; the error is reported from on_close. */
        pconn_close(&hc->c, false, rc);
    }
    return 0;
}

int hclient_request(hclient *h, const char *method, const char *target, const http_header *hdrs,
                    size_t nhdrs, const void *body, size_t body_len)
{
    if (h->dead || h->busy) return PARLEY_ESTATE;
    pbuf_reset(&h->req, 0);
    int rc = http_write_request_head(&h->req, method, target, h->host_header, hdrs, nhdrs,
                                     body || body_len ? (int64_t)body_len : -1);
    if (rc == 0 && body_len) rc = pbuf_append(&h->req, body, body_len);
    if (rc) {
        pbuf_reset(&h->req, 0);
        return rc;
    }
    h->busy = true;
    h->phase = HC_HEAD;
    h->status = 0;
    pbuf_reset(&h->resp, 0);
    http_parser_init(&h->parser, true, NULL);
    h->parser.limits.max_headers = HC_MAX_HEADERS;
    if (h->cur && (h->cur->c.flags & (PCONN_CLOSING | PCONN_EOF))) drop_conn(h, false, 0);
    if (!h->cur) return open_conn(h);
    write_request(h);
    return 0;
}

bool hclient_busy(const hclient *h)
{
    return h->busy;
}

static void on_linger(ptimer *t)
{
    hclient *h = PARLEY_CONTAINER_OF(t, hclient, linger);
    h->busy = false;
    drop_conn(h, false, 0);
    maybe_destroy(h);
}

void hclient_close(hclient *h, uint32_t linger_ms)
{
    if (!h || h->dead) return;
    h->dead = true;
    h->cb = NULL;
    if (h->busy && linger_ms && h->cur) {
        ploop_timer_start(h->loop, &h->linger, linger_ms);
        return;
    }
    h->busy = false;
    drop_conn(h, false, 0);
    maybe_destroy(h);
}

void hclient_set_slot(hclient *h, hclient **slot)
{
    h->slot = slot;
}

void hclient_abort(hclient *h)
{
    if (!h) return;
    h->dead = true;
    h->cb = NULL;
    h->busy = false;
    ploop_timer_stop(h->loop, &h->linger);
    drop_conn(h, false, 0);
    maybe_destroy(h);
}

static void hc_on_connect(pconn *c, int status)
{
    hconn *hc = PARLEY_CONTAINER_OF(c, hconn, c);
    if (status) { /* the connection closes; on_close reports */
        if (hc->h && (status == PARLEY_EPROXY || status == PARLEY_EPROXYAUTH))
            hc->h->status = pconn_proxy_status(c);
        return;
    }
    hc->connected = true;
    if (hc->h) write_request(hc->h);
}

/* The response is complete: reuse the connection or let it go. */
static bool response_done(hclient *h)
{
    if (!h->keep_alive) drop_conn(h, true, 0);
    return finish(h, 0);
}

static size_t hc_on_data(pconn *c, uint8_t *data, size_t len)
{
    hconn *hc = PARLEY_CONTAINER_OF(c, hconn, c);
    hclient *h = hc->h;
    if (!h) return len;
    if (!h->busy) {
        /* Bytes nobody asked for: the connection cannot be trusted. */
        drop_conn(h, false, PARLEY_EPROTO);
        return len;
    }
    size_t off = 0;
    while (off < len && h->busy && h->cur == hc) {
        if (h->phase == HC_HEAD) {
            http_head head;
            long r =
                http_parse_head(&h->parser, data + off, len - off, &head, h->hdrs, HC_MAX_HEADERS);
            if (r == 0) return off;
            if (r < 0) {
                plog_info("http %s: malformed response: %s", h->host_header,
                          h->parser.error ? h->parser.error : "?");
                drop_conn(h, false, PARLEY_EPROTO);
                finish(h, PARLEY_EPROTO);
                return len;
            }
            off += (size_t)r;
            if (head.status >= 100 && head.status < 200) {
                if (head.status == 101) {
                    drop_conn(h, false, PARLEY_EPROTO);
                    finish(h, PARLEY_EPROTO);
                    return len;
                }
                http_parser_reset(&h->parser, false);
                continue;
            }
            h->status = head.status;
            h->keep_alive = head.keep_alive;
            if (head.body_kind == HTTP_BODY_LENGTH && head.content_length > h->max_body) {
                drop_conn(h, false, PARLEY_ELIMIT);
                finish(h, PARLEY_ELIMIT);
                return len;
            }
            http_body_init(&h->body, &head, h->max_body);
            if (head.body_kind == HTTP_BODY_NONE ||
                (head.body_kind == HTTP_BODY_LENGTH && head.content_length == 0)) {
                if (response_done(h)) return len;
                continue;
            }
            if (head.body_kind == HTTP_BODY_LENGTH && head.content_length > len - off)
                pconn_expect(c, (size_t)(head.content_length - (len - off)));
            h->phase = HC_BODY;
        } else {
            size_t consumed = 0, out = 0;
            int rc = http_body_decode(&h->body, data + off, len - off, &consumed, &out);
            if (rc < 0) {
                plog_info("http %s: bad response body: %s", h->host_header,
                          h->body.error ? h->body.error : "?");
                drop_conn(h, false, rc);
                finish(h, rc);
                return len;
            }
            if (out && pbuf_append(&h->resp, data + off, out) != 0) {
                drop_conn(h, false, PARLEY_ENOMEM);
                finish(h, PARLEY_ENOMEM);
                return len;
            }
            off += consumed;
            if (rc == 1) {
                if (response_done(h)) return len;
            } else if (consumed == 0) {
                break;
            }
        }
    }
    return len;
}

static void hc_on_eof(pconn *c)
{
    hconn *hc = PARLEY_CONTAINER_OF(c, hconn, c);
    hclient *h = hc->h;
    if (h && h->busy && h->phase == HC_BODY && http_body_eof(&h->body) == 1) {
        drop_conn(h, true, 0);
        finish(h, 0);
        return;
    }
    pconn_close(c, true, 0);
    if (h && h->cur == hc) {
        drop_conn(h, true, 0);
        if (h->busy) finish(h, PARLEY_ECLOSED);
    }
}

static void hc_on_close(pconn *c, int err)
{
    hconn *hc = PARLEY_CONTAINER_OF(c, hconn, c);
    hclient *h = hc->h;
    free(hc);
    if (!h) return;
    h->cur = NULL;
    if (h->busy) {
        finish(h, err ? err : PARLEY_ECLOSED);
        return;
    }
    maybe_destroy(h);
}
