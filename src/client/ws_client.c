/*
 * The public WebSocket client: connect, upgrade, then a wsconn; around it
 * the resilience layer: heartbeat, reconnection with backoff, and the
 * outbound queue.
 *
 * Re-entrancy: user callbacks run only from loop callbacks (I/O and
 * timers), never inside a public call. A public call
 * that has something to report (the CONNECTING event of parley_ws_connect,
 * ACKED after parley_ws_ack, queued messages to send) arms `kick`, a
 * timer due at once, which runs in the next loop iteration. (A timer, not
 * a ploop_defer: an armed timer keeps the loop alive, so a call made while
 * the loop has nothing else to do is still acted on.) That keeps callers from
 * other threads, which wait inside ploop_call, from meeting their own
 * callbacks while they hold locks.
 *
 * Callbacks may free the handle: every callback site checks free_pending
 * afterwards and stops touching the handle; the memory goes once no
 * callback is on the stack and the connection has closed (leave_cb).
 *
 * Heartbeat: the client pings itself (wsconn's keepalive stays off) so it
 * can carry a sequence number in the ping, time the round trip, and count
 * any input as a sign of life: a pong queued behind a large message on a
 * slow link is not mistaken for a dead peer.
 *
 * Queue: entries are outq entries whose event name is the message type
 * ("t" or "b"). Their clock is the wall clock, because a persisted queue
 * outlives the process (and the monotonic clock's origin). Sending stops
 * while the connection's unsent output is above half its limit, so the
 * queue never makes the connection hit max_output; a short timer resumes.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"
#include "base/url.h"
#include "base/util.h"
#include "client/backoff.h"
#include "client/outq.h"
#include "client/proxy.h"
#include "client/ws_internal.h"
#include "codec/http.h"
#include "codec/pmd.h"
#include "codec/utf8.h"
#include "codec/ws_handshake.h"
#include "net/net.h"
#include "parley/ws.h"
#include "ws/wsconn.h"

#define WSC_MAX_HEADERS   64
#define WSC_PUMP_RETRY_MS 10 /* output above half its limit: try again then */
#define WSC_DRAIN_POLL_MS 5  /* ack_on_write: how often to look at the output */

enum { WSC_IDLE = 0, WSC_CONNECTING, WSC_HANDSHAKE, WSC_OPEN, WSC_DONE, WSC_WAITING };

struct parley_ws {
    parley_loop *loop;
    bool own_loop;
    uv_sem_t *freed;  /* own loop freed from another thread: posted when gone */
    parley_ws_opts o; /* callbacks and scalars; strings below are our copies */
    purl url;
    http_header *headers; /* parsed extra headers (point into hdr_text) */
    size_t nheaders;
    char *hdr_text;
    char **protocols;
    size_t nprotocols;
    pmd_config pmd;
    wsconn_opts wsopts;
    ptls_ctx *tls;

    pconn c;
    bool conn_live; /* c initialised and its on_close not yet run */
    uint8_t state;
    int depth; /* nesting of user callbacks */
    pws_observer_fn obs_fn; /* pws_observe */
    void *obs_user;
    bool free_pending;
    char key[25];
    http_parser parser;
    http_header *resp_hdrs;
    ptimer timer; /* whole-connect deadline */
    wsconn ws;
    bool ws_live;
    int http_status;
    pproxy proxy; /* with use_proxy */
    bool use_proxy;
    int err; /* why the attempt ended */
    uint16_t close_code;
    uint8_t close_reason_len;
    char close_reason[124];

    /* Reconnection. */
    backoff bo;
    unsigned attempt;        /* automatic attempts since the last open connection */
    bool app_closed;         /* parley_ws_close: no automatic attempts */
    bool connecting_pending; /* a CONNECTING event for kick to report */
    ptimer retry_timer;

    /* Heartbeat (loop clock, ms). */
    ptimer hb_timer;
    bool hb_awaiting; /* a ping is out */
    bool hb_dead;     /* the connection ended because no pong came */
    uint64_t hb_seq, hb_sent_ms, hb_next_ms, hb_sent_ns, last_rx_ms;

    parley_ws_stats st; /* uptime_ms and queued are filled in on demand */
    uint64_t opened_ms; /* ptime_ms() when the connection opened */

    /* Outbound queue (opened on first use unless persistent). */
    outq *q;
    ptimer kick, expiry_timer, pump_timer, drain_timer;
    pbuf acked; /* ids acknowledged by parley_ws_ack, OUTQ_ID_LEN each, to report */
};

static const wsconn_cbs wsc_ws_cbs;

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Timers are only ever armed on the loop thread, so a handle that never
 * armed one (e.g. a failed parley_ws_new on another thread) leaves the loop
 * alone. */
static void stop_timer(parley_ws *ws, ptimer *t)
{
    if (ptimer_armed(t)) ploop_timer_stop(ws->loop, t);
}

static void stop_timers(parley_ws *ws)
{
    stop_timer(ws, &ws->timer);
    stop_timer(ws, &ws->retry_timer);
    stop_timer(ws, &ws->hb_timer);
    stop_timer(ws, &ws->expiry_timer);
    stop_timer(ws, &ws->pump_timer);
    stop_timer(ws, &ws->drain_timer);
    stop_timer(ws, &ws->kick);
}

static void kick_soon(parley_ws *ws)
{
    if (!ptimer_armed(&ws->kick)) ploop_timer_start(ws->loop, &ws->kick, 0);
}

static void reap_main(void *arg)
{
    parley_loop *l = arg;
    parley_loop_join(l);
    parley_loop_free(l);
}

/* A client with a loop of its own was freed on that loop's thread (inside
 * a callback): the thread cannot join itself, so a short-lived detached
 * thread stops and frees the loop. */
static void reap_loop(parley_loop *l)
{
    uv_thread_t t;
    if (uv_thread_create(&t, reap_main, l) != 0) {
        plog_error("ws: cannot start a thread to stop the client's loop; it keeps running");
        return;
    }
    pthread_detach(t);
}

static void ws_destroy(parley_ws *ws)
{
    if (ws->loop) stop_timers(ws);
    outq_close(ws->q);
    free(ws->headers);
    free(ws->hdr_text);
    for (size_t i = 0; i < ws->nprotocols; i++) free(ws->protocols[i]);
    free(ws->protocols);
    free(ws->resp_hdrs);
    ptls_ctx_free(ws->tls);
    pbuf_free(&ws->acked);
    parley_loop *l = ws->loop;
    bool own = ws->own_loop;
    uv_sem_t *freed = ws->freed;
    free(ws);
    if (own) {
        if (freed)
            uv_sem_post(freed);
        else
            reap_loop(l);
    }
}

/* Runs after every user callback: the user may have freed the handle.
 * True when the caller must not touch the handle any more. */
static bool leave_cb(parley_ws *ws)
{
    ws->depth--;
    if (ws->depth == 0 && ws->free_pending && !ws->conn_live) {
        ws_destroy(ws);
        return true;
    }
    return ws->free_pending;
}

static bool emit(parley_ws *ws, const parley_ws_event *ev)
{
    if (ws->free_pending) return true;
    if (ws->obs_fn) ws->obs_fn(ws, ev, ws->obs_user);
    if (!ws->o.on_event) return false;
    ws->depth++;
    ws->o.on_event(ws, ev, ws->o.user);
    return leave_cb(ws);
}

static bool report(parley_ws *ws, const char *id, parley_ws_send_status status, int err)
{
    if (ws->free_pending) return true;
    if (!ws->o.on_send_status) return false;
    ws->depth++;
    ws->o.on_send_status(ws, id, status, err, ws->o.user);
    return leave_cb(ws);
}

/* Reports every id in ids (OUTQ_ID_LEN bytes each). True when freed. */
static bool report_ids(parley_ws *ws, const pbuf *ids, parley_ws_send_status status, int err)
{
    char id[OUTQ_ID_LEN + 1];
    for (size_t off = 0; off + OUTQ_ID_LEN <= ids->len; off += OUTQ_ID_LEN) {
        memcpy(id, ids->ptr + off, OUTQ_ID_LEN);
        id[OUTQ_ID_LEN] = 0;
        if (report(ws, id, status, err)) return true;
    }
    return false;
}

static bool emit_connecting(parley_ws *ws)
{
    ws->connecting_pending = false;
    parley_ws_event ev = {.type = PARLEY_WS_EV_CONNECTING, .attempt = ws->attempt};
    return emit(ws, &ev);
}

void parley_ws_opts_init_size(parley_ws_opts *out, size_t size)
{
    parley_ws_opts defaults, *o = &defaults;
    memset(o, 0, sizeof *o);
    o->size = sizeof *o;
    o->permessage_deflate = 1;
    o->connect_timeout_ms = 10000;
    o->max_message = 16u << 20;
    o->ping_timeout_ms = 10000;
    o->max_output = 8u << 20;
    o->reconnect_delay_ms = 1000;
    o->reconnect_delay_max_ms = 30000;
    o->queue_max_count = 1000;
    o->queue_max_bytes = 8u << 20;
    popts_give(out, size, o, sizeof *o);
}

/* Splits "Name: value" strings into header structs, validating them. */
static int copy_headers(parley_ws *ws, const char *const *h, size_t n)
{
    int rc = http_headers_from_lines(h, n, WSC_MAX_HEADERS, &ws->hdr_text, &ws->headers);
    if (rc == 0) ws->nheaders = n;
    return rc;
}

static int open_queue(parley_ws *ws, const char *path)
{
    outq_opts qo;
    outq_opts_init(&qo);
    qo.max_count = ws->o.queue_max_count;
    qo.max_bytes = ws->o.queue_max_bytes;
    qo.path = path;
    return outq_open(&qo, &ws->q);
}

static void on_retry(ptimer *t);
static void on_hb(ptimer *t);
static void on_expiry(ptimer *t);
static void on_pump(ptimer *t);
static void on_drain(ptimer *t);
static void on_kick(ptimer *t);

int parley_ws_new(parley_loop *loop, const parley_ws_opts *o_in, parley_ws **out)
{
    parley_ws_opts o_buf;
    if (!o_in || !out || POPTS_TAKE(parley_ws_opts, parley_ws_opts_init, &o_buf, o_in, url) != 0)
        return PARLEY_EINVAL;
    const parley_ws_opts *o = &o_buf;
    if (!o || !o->url || !out) return PARLEY_EINVAL;
    if (o->reconnect &&
        (o->reconnect_delay_ms == 0 || o->reconnect_delay_max_ms < o->reconnect_delay_ms))
        return PARLEY_EINVAL;
    if (o->queue_max_count == 0 || o->queue_max_bytes == 0) return PARLEY_EINVAL;
    parley_ws *ws = pcalloc(1, sizeof *ws);
    if (!ws) return PARLEY_ENOMEM;
    ws->loop = loop;
    ws->o = *o;
    ptimer_init(&ws->timer, NULL);
    ptimer_init(&ws->retry_timer, on_retry);
    ptimer_init(&ws->hb_timer, on_hb);
    ptimer_init(&ws->expiry_timer, on_expiry);
    ptimer_init(&ws->pump_timer, on_pump);
    ptimer_init(&ws->drain_timer, on_drain);
    ptimer_init(&ws->kick, on_kick);
    int rc = purl_parse(o->url, &ws->url);
    if (rc == 0 && strcmp(ws->url.scheme, "ws") != 0 && strcmp(ws->url.scheme, "wss") != 0)
        rc = PARLEY_EURL;
    if (rc == 0) rc = pproxy_pick(o->proxy, ws->url.tls, ws->url.host, &ws->proxy, &ws->use_proxy);
    if (rc == 0) rc = copy_headers(ws, o->headers, o->nheaders);
    if (rc == 0 && o->nprotocols) {
        ws->protocols = pcalloc(o->nprotocols, sizeof *ws->protocols);
        if (!ws->protocols) rc = PARLEY_ENOMEM;
        for (size_t i = 0; rc == 0 && i < o->nprotocols; i++) {
            if (!o->protocols[i] || !*o->protocols[i]) {
                rc = PARLEY_EINVAL;
                break;
            }
            ws->protocols[i] = strdup(o->protocols[i]);
            if (!ws->protocols[i]) rc = PARLEY_ENOMEM;
            ws->nprotocols = i + 1;
        }
    }
    if (rc == 0 && ws->url.tls) {
        ptls_client_opts to = {.ca_file = o->ca_file, .insecure = o->insecure != 0};
        char err[256];
        ws->tls = ptls_ctx_client(&to, err, sizeof err);
        if (!ws->tls) {
            plog_error("TLS setup: %s", err);
            rc = PARLEY_ETLS;
        }
    }
    if (rc == 0) {
        ws->resp_hdrs = pcalloc(WSC_MAX_HEADERS, sizeof *ws->resp_hdrs);
        if (!ws->resp_hdrs) rc = PARLEY_ENOMEM;
    }
    /* A persistent queue is loaded now, so that what it holds goes out on
     * the first connection; a memory-only one waits for its first use. */
    if (rc == 0 && o->queue_path) rc = open_queue(ws, o->queue_path);
    if (rc == 0 && !loop) {
        ws->loop = parley_loop_new();
        if (!ws->loop) {
            rc = PARLEY_ENOMEM;
        } else if ((rc = parley_loop_start(ws->loop)) != 0) {
            parley_loop_free(ws->loop);
            ws->loop = NULL;
        } else {
            ws->own_loop = true;
        }
    }
    if (rc) {
        ws->own_loop = false;
        ws_destroy(ws);
        return rc;
    }
    /* Only our copies are used from here on. */
    ws->o.url = NULL;
    ws->o.headers = NULL;
    ws->o.protocols = NULL;
    ws->o.ca_file = NULL;
    ws->o.proxy = NULL;
    ws->o.queue_path = NULL;
    pmd_config_init(&ws->pmd);
    ws->pmd.enabled = o->permessage_deflate != 0;
    wsconn_opts_init(&ws->wsopts);
    if (o->max_message)
        ws->wsopts.max_frame = ws->wsopts.max_message =
            PARLEY_MIN(o->max_message, (uint64_t)UINT32_MAX);
    ws->wsopts.ping_interval_ms = 0; /* the client runs its own heartbeat */
    ws->wsopts.cbs = &wsc_ws_cbs;
    if (!o->ping_timeout_ms) ws->o.ping_timeout_ms = 10000;
    ws->bo = (backoff){
        .base_ms = o->reconnect_delay_ms, .max_ms = o->reconnect_delay_max_ms, .full_jitter = true};
    *out = ws;
    return 0;
}

/* Ends the attempt: records why, and drops the link (on_close reports). */
static void abort_attempt(parley_ws *ws, int err)
{
    if (!ws->err) ws->err = err;
    if (ws->conn_live) pconn_close(&ws->c, false, err);
}

static size_t wsc_on_data(pconn *c, uint8_t *data, size_t len);
static void wsc_on_connect(pconn *c, int status);
static void wsc_on_eof(pconn *c);
static void wsc_on_close(pconn *c, int err);
static const pconn_cbs wsc_cbs = {.on_data = wsc_on_data,
                                  .on_connect = wsc_on_connect,
                                  .on_eof = wsc_on_eof,
                                  .on_close = wsc_on_close};

static void on_deadline(ptimer *t)
{
    parley_ws *ws = PARLEY_CONTAINER_OF(t, parley_ws, timer);
    if (ws->state == WSC_CONNECTING || ws->state == WSC_HANDSHAKE) {
        plog_info("ws %s: no connection within %u ms", ws->url.host_header,
                  ws->o.connect_timeout_ms);
        abort_attempt(ws, PARLEY_ETIMEDOUT);
    }
}

/* from_api: inside a public call, where no callback may run; the
 * CONNECTING event then goes out from the loop (kick). */
static void start_attempt(parley_ws *ws, bool from_api)
{
    ws->err = 0;
    ws->http_status = 0;
    ws->close_code = WS_CLOSE_ABNORMAL;
    ws->close_reason_len = 0;
    ws->hb_dead = false;
    ws->hb_awaiting = false;
    pconn_init(&ws->c, ws->loop, &wsc_cbs, ws->o.max_output);
    ws->conn_live = true;
    ws->state = WSC_CONNECTING;
    ws->st.attempts++;
    http_parser_init(&ws->parser, true, NULL);
    ws->parser.limits.max_headers = WSC_MAX_HEADERS;
    int rc = pconn_connect_via(&ws->c, ws->use_proxy ? &ws->proxy : NULL, ws->url.host,
                               ws->url.port, ws->tls, 0);
    if (rc) {
        /* Nothing started: close the fresh handle; on_close reports. */
        abort_attempt(ws, rc);
    } else if (ws->o.connect_timeout_ms) {
        ws->timer.cb = on_deadline;
        ploop_timer_start(ws->loop, &ws->timer, ws->o.connect_timeout_ms);
    }
    if (from_api) {
        ws->connecting_pending = true;
        kick_soon(ws);
    } else {
        emit_connecting(ws);
    }
}

static void on_retry(ptimer *t)
{
    parley_ws *ws = PARLEY_CONTAINER_OF(t, parley_ws, retry_timer);
    if (ws->state == WSC_WAITING && !ws->free_pending) start_attempt(ws, false);
}

static void wsc_on_connect(pconn *c, int status)
{
    parley_ws *ws = PARLEY_CONTAINER_OF(c, parley_ws, c);
    if (status) {
        ws->err = status;
        if (status == PARLEY_EPROXY || status == PARLEY_EPROXYAUTH)
            ws->http_status = pconn_proxy_status(c); /* the proxy's */
        return; /* the pconn closes itself */
    }
    int rc = ws_client_key(ws->key);
    pbuf ext = {0};
    if (rc == 0 && ws->pmd.enabled) rc = pmd_client_offer(&ws->pmd, &ext);
    if (rc == 0 && ext.len) rc = pbuf_append(&ext, "", 1);
    pbuf *out = pconn_out(c);
    if (rc == 0 && !out) rc = PARLEY_ECLOSED;
    if (rc == 0)
        rc = ws_write_client_request(
            out, ws->url.host_header, ws->url.target, ws->key, (const char *const *)ws->protocols,
            ws->nprotocols, ext.len ? (const char *)ext.ptr : NULL, ws->headers, ws->nheaders);
    pbuf_free(&ext);
    if (rc) {
        abort_attempt(ws, rc);
        return;
    }
    pconn_wrote(c);
    ws->state = WSC_HANDSHAKE;
}

/* ---- heartbeat ---- */

static void hb_arm(parley_ws *ws, uint64_t at)
{
    uint64_t now = ploop_now(ws->loop);
    ploop_timer_start(ws->loop, &ws->hb_timer, at > now ? at - now : 0);
}

static void hb_start(parley_ws *ws)
{
    if (!ws->o.ping_interval_ms) return;
    uint64_t now = ploop_now(ws->loop);
    ws->hb_awaiting = false;
    ws->last_rx_ms = now;
    ws->hb_next_ms = now + ws->o.ping_interval_ms;
    hb_arm(ws, ws->hb_next_ms);
}

static void on_hb(ptimer *t)
{
    parley_ws *ws = PARLEY_CONTAINER_OF(t, parley_ws, hb_timer);
    if (ws->state != WSC_OPEN || !ws->ws_live || ws->ws.state != WSCONN_OPEN) return;
    uint64_t now = ploop_now(ws->loop);
    if (ws->hb_awaiting) {
        /* Input after the ping proves the link works; the pong may be
         * queued behind it. */
        uint64_t dead_at = PARLEY_MAX(ws->hb_sent_ms, ws->last_rx_ms) + ws->o.ping_timeout_ms;
        if (now < dead_at) {
            hb_arm(ws, dead_at);
            return;
        }
        plog_info("ws %s: no pong within %u ms", ws->url.host_header, ws->o.ping_timeout_ms);
        ws->hb_dead = true;
        abort_attempt(ws, PARLEY_ETIMEDOUT);
        return;
    }
    if (now < ws->hb_next_ms) {
        hb_arm(ws, ws->hb_next_ms);
        return;
    }
    uint8_t p[8];
    uint64_t seq = ++ws->hb_seq;
    for (int i = 7; i >= 0; i--, seq >>= 8) p[i] = (uint8_t)seq;
    if (wsconn_ping(&ws->ws, p, sizeof p) != 0) return; /* closing */
    ws->hb_awaiting = true;
    ws->hb_sent_ms = now;
    ws->hb_sent_ns = ptime_ns();
    ws->hb_next_ms = now + ws->o.ping_interval_ms;
    hb_arm(ws, now + ws->o.ping_timeout_ms);
}

static void hb_pong(parley_ws *ws, const uint8_t *data, size_t len)
{
    if (!ws->hb_awaiting || len != 8) return;
    uint64_t seq = 0;
    for (int i = 0; i < 8; i++) seq = seq << 8 | data[i];
    if (seq != ws->hb_seq) return;
    ws->hb_awaiting = false;
    uint64_t rtt = (ptime_ns() - ws->hb_sent_ns) / 1000u;
    ws->st.last_rtt_us = rtt ? rtt : 1;
    hb_arm(ws, ws->hb_next_ms);
}

/* ---- outbound queue ---- */

static int entry_opcode(const outq_entry *e)
{
    if (e->event[0] && !e->event[1]) {
        if (e->event[0] == 't') return WS_OP_TEXT;
        if (e->event[0] == 'b') return WS_OP_BINARY;
    }
    return -1;
}

static void collect_in_flight(const outq_entry *e, void *user)
{
    if (e->in_flight && pbuf_append(user, e->id, OUTQ_ID_LEN) != 0)
        plog_warn("ws: out of memory: a queued message's status is not reported");
}

static void collect_entry(const outq_entry *e, void *user)
{
    if (pbuf_append(user, e->id, OUTQ_ID_LEN) != 0)
        plog_warn("ws: out of memory: a queued message's status is not reported");
}

static void arm_expiry(parley_ws *ws)
{
    uint64_t next = ws->q ? outq_next_expiry(ws->q) : 0;
    if (!next) {
        stop_timer(ws, &ws->expiry_timer);
        return;
    }
    uint64_t now = wall_ms();
    ploop_timer_start(ws->loop, &ws->expiry_timer, next > now ? next - now : 0);
}

/* Removes expired entries and reports them. True when freed. */
static bool expire_now(parley_ws *ws)
{
    if (!ws->q) return false;
    pbuf gone = {0};
    outq_expire(ws->q, wall_ms(), collect_entry, &gone);
    arm_expiry(ws);
    bool freed = report_ids(ws, &gone, PARLEY_WS_SEND_FAILED, PARLEY_ETIMEDOUT);
    pbuf_free(&gone);
    return freed;
}

static void on_expiry(ptimer *t)
{
    expire_now(PARLEY_CONTAINER_OF(t, parley_ws, expiry_timer));
}

static bool can_send(const parley_ws *ws)
{
    return ws->state == WSC_OPEN && ws->ws_live && ws->ws.state == WSCONN_OPEN &&
           !(ws->c.flags & PCONN_CLOSING);
}

/* Sends pending entries in queue order while the output has room. */
static void pump(parley_ws *ws)
{
    if (!ws->q || !can_send(ws)) return;
    size_t room = ws->c.max_out / 2;
    uint64_t now = wall_ms();
    char id[OUTQ_ID_LEN + 1];
    outq_entry *e;
    while (can_send(ws) && (e = outq_next(ws->q, now)) != NULL) {
        if (pconn_pending(&ws->c) >= room) {
            ploop_timer_start(ws->loop, &ws->pump_timer, WSC_PUMP_RETRY_MS);
            break;
        }
        memcpy(id, e->id, sizeof id);
        int op = entry_opcode(e);
        if (op < 0 || (op == WS_OP_TEXT && !utf8_valid(e->data, e->len))) {
            /* Only a foreign or damaged queue file has these. */
            plog_warn("ws: queued message %s is not a WebSocket message; dropped", id);
            outq_ack(ws->q, id);
            if (report(ws, id, PARLEY_WS_SEND_FAILED, PARLEY_EINVAL)) return;
            continue;
        }
        int rc = wsconn_send(&ws->ws, op, e->data, e->len);
        if (rc) {
            /* A closing connection requeues everything; anything else
             * (memory) may pass. */
            if (can_send(ws)) ploop_timer_start(ws->loop, &ws->pump_timer, WSC_PUMP_RETRY_MS);
            break;
        }
        outq_sent(ws->q, e);
        ws->st.messages_out++;
        ws->st.bytes_out += e->len;
        if (report(ws, id, PARLEY_WS_SEND_SENT, 0)) return;
    }
    if (ws->o.ack_on_write && ws->q && outq_in_flight(ws->q) && !ptimer_armed(&ws->drain_timer))
        ploop_timer_start(ws->loop, &ws->drain_timer, 0);
}

static void on_pump(ptimer *t)
{
    pump(PARLEY_CONTAINER_OF(t, parley_ws, pump_timer));
}

/* ack_on_write: once the connection's output is empty, the kernel has every
 * message written so far, and the in-flight entries are done. */
static void on_drain(ptimer *t)
{
    parley_ws *ws = PARLEY_CONTAINER_OF(t, parley_ws, drain_timer);
    if (!ws->q || !outq_in_flight(ws->q) || ws->state != WSC_OPEN || !ws->conn_live) return;
    if (pconn_pending(&ws->c) > 0) {
        ploop_timer_start(ws->loop, &ws->drain_timer, WSC_DRAIN_POLL_MS);
        return;
    }
    pbuf ids = {0};
    outq_foreach(ws->q, collect_in_flight, &ids);
    char id[OUTQ_ID_LEN + 1];
    for (size_t off = 0; off + OUTQ_ID_LEN <= ids.len; off += OUTQ_ID_LEN) {
        memcpy(id, ids.ptr + off, OUTQ_ID_LEN);
        id[OUTQ_ID_LEN] = 0;
        outq_ack(ws->q, id);
    }
    report_ids(ws, &ids, PARLEY_WS_SEND_ACKED, 0);
    pbuf_free(&ids);
}

/* Next loop iteration: what public calls left to report or send. */
static void on_kick(ptimer *t)
{
    parley_ws *ws = PARLEY_CONTAINER_OF(t, parley_ws, kick);
    if (ws->free_pending) return;
    if (ws->connecting_pending && emit_connecting(ws)) return;
    if (ws->acked.len) {
        pbuf ids = ws->acked;
        ws->acked = (pbuf){0};
        bool freed = report_ids(ws, &ids, PARLEY_WS_SEND_ACKED, 0);
        pbuf_free(&ids);
        if (freed) return;
    }
    if (expire_now(ws)) return;
    pump(ws);
}

/* ---- wsconn callbacks -> user callbacks ---- */

static void wsc_message(wsconn *w, int opcode, uint8_t *data, size_t len)
{
    parley_ws *ws = w->user;
    if (ws->free_pending) return;
    parley_ws_type type = opcode == WS_OP_TEXT ? PARLEY_WS_TEXT : PARLEY_WS_BINARY;
    ws->st.messages_in++;
    ws->st.bytes_in += len;
    parley_ws_event ev = {.type = PARLEY_WS_EV_MESSAGE, .msg_type = type, .data = data, .len = len};
    if (emit(ws, &ev) || !ws->o.on_message) return;
    ws->depth++;
    ws->o.on_message(ws, type, data, len, ws->o.user);
    leave_cb(ws);
}

static void wsc_pong(wsconn *w, const uint8_t *data, size_t len)
{
    parley_ws *ws = w->user;
    hb_pong(ws, data, len);
    if (!ws->o.on_pong || ws->free_pending) return;
    ws->depth++;
    ws->o.on_pong(ws, data, len, ws->o.user);
    leave_cb(ws);
}

static void wsc_closed(wsconn *w, uint16_t code, const uint8_t *reason, size_t len, int err)
{
    parley_ws *ws = w->user;
    ws->close_code = code;
    ws->close_reason_len = (uint8_t)PARLEY_MIN(len, sizeof ws->close_reason - 1);
    if (len) memcpy(ws->close_reason, reason, ws->close_reason_len);
    ws->close_reason[ws->close_reason_len] = 0;
    if (err && !ws->err) ws->err = err;
}

static const wsconn_cbs wsc_ws_cbs = {
    .on_message = wsc_message, .on_pong = wsc_pong, .on_closed = wsc_closed};

static size_t handshake_step(parley_ws *ws, uint8_t *data, size_t len)
{
    http_head head;
    long r = http_parse_head(&ws->parser, data, len, &head, ws->resp_hdrs, WSC_MAX_HEADERS);
    if (r == 0) return 0;
    if (r < 0) {
        plog_info("ws %s: malformed handshake response: %s", ws->url.host_header,
                  ws->parser.error ? ws->parser.error : "?");
        abort_attempt(ws, PARLEY_EHANDSHAKE);
        return len;
    }
    const char *why = NULL;
    ws_client_result res;
    if (ws_verify_response(&head, ws->key, (const char *const *)ws->protocols, ws->nprotocols, &res,
                           &why) != 0) {
        if (head.status != 101) ws->http_status = head.status;
        plog_info("ws %s: handshake refused (HTTP %d): %s", ws->url.host_header, head.status,
                  why ? why : "");
        abort_attempt(ws, PARLEY_EHANDSHAKE);
        return len;
    }
    pmd_params params;
    bool use_pmd = false;
    if (res.extensions && res.extensions_len) {
        int rc = ws->pmd.enabled
                     ? pmd_client_accept(&ws->pmd, res.extensions, res.extensions_len, &params)
                     : PARLEY_EPROTO;
        if (rc < 0) {
            plog_info("ws %s: server answered with extensions we cannot use: %.*s",
                      ws->url.host_header, (int)res.extensions_len, res.extensions);
            abort_attempt(ws, PARLEY_EHANDSHAKE);
            return len;
        }
        use_pmd = rc == 1;
    }
    char proto[256] = "";
    if (res.protocol)
        snprintf(proto, sizeof proto, "%.*s", (int)PARLEY_MIN(res.protocol_len, 255), res.protocol);
    int rc =
        wsconn_init(&ws->ws, &ws->c, true, &ws->wsopts, use_pmd ? &params : NULL, &ws->pmd, ws);
    if (rc) {
        abort_attempt(ws, rc);
        return len;
    }
    ws->ws_live = true;
    ws->state = WSC_OPEN;
    ploop_timer_stop(ws->loop, &ws->timer);
    ws->st.connections++;
    if (ws->attempt) ws->st.reconnects++;
    ws->opened_ms = ptime_ms();
    unsigned attempt = ws->attempt;
    ws->attempt = 0;
    backoff_reset(&ws->bo);
    hb_start(ws);
    if (ws->connecting_pending && emit_connecting(ws)) return len;
    parley_ws_event ev = {.type = PARLEY_WS_EV_CONNECTED,
                          .attempt = attempt,
                          .protocol = res.protocol ? proto : NULL};
    if (emit(ws, &ev)) return len;
    if (ws->o.on_open) {
        ws->depth++;
        ws->o.on_open(ws, res.protocol ? proto : NULL, ws->o.user);
        if (leave_cb(ws)) return len;
    }
    /* Replay what waited, behind what on_open sent. */
    pump(ws);
    return ws->free_pending ? len : (size_t)r;
}

static size_t wsc_on_data(pconn *c, uint8_t *data, size_t len)
{
    parley_ws *ws = PARLEY_CONTAINER_OF(c, parley_ws, c);
    if (ws->state == WSC_OPEN) ws->last_rx_ms = ploop_now(ws->loop);
    size_t off = 0;
    while (off < len && !(c->flags & PCONN_CLOSING) && !ws->free_pending) {
        if (ws->state == WSC_OPEN) {
            off += wsconn_feed(&ws->ws, data + off, len - off);
            break;
        }
        if (ws->state != WSC_HANDSHAKE) return len;
        size_t n = handshake_step(ws, data + off, len - off);
        if (n == 0) break;
        off += n;
    }
    return off;
}

static void wsc_on_eof(pconn *c)
{
    parley_ws *ws = PARLEY_CONTAINER_OF(c, parley_ws, c);
    if (ws->ws_live && ws->ws.state != WSCONN_CLOSED) wsconn_lost(&ws->ws, PARLEY_ECLOSED);
    if (ws->state == WSC_HANDSHAKE || ws->state == WSC_CONNECTING)
        abort_attempt(ws, PARLEY_ECLOSED);
    pconn_close(c, true, 0);
}

static const char *end_reason(const parley_ws *ws, bool was_open)
{
    if (ws->app_closed) return "closed";
    if (was_open) {
        if (ws->hb_dead) return "ping timeout";
        switch (ws->err) {
        case 0:
            return "server closed";
        case PARLEY_EPROTO:
            return "protocol error";
        case PARLEY_EFULL:
            return "output full";
        default:
            return "connection lost";
        }
    }
    switch (ws->err) {
    case PARLEY_EHANDSHAKE:
        return "handshake refused";
    case PARLEY_EPROXY:
    case PARLEY_EPROXYAUTH:
        return "proxy refused";
    case PARLEY_ETIMEDOUT:
        return "connect timeout";
    default:
        return "connect failed";
    }
}

/* Retrying cannot change these answers; the application has to act. */
static bool retryable(const parley_ws *ws)
{
    if (ws->err == PARLEY_EPROXYAUTH) return false;
    if (ws->err == PARLEY_EPROXY) return ws->http_status != 403;
    if (ws->err != PARLEY_EHANDSHAKE) return true;
    return ws->http_status != 401 && ws->http_status != 403 && ws->http_status != 404;
}

static double jitter_random(parley_ws *ws)
{
    if (ws->o.reconnect_random) {
        ws->depth++;
        double r = ws->o.reconnect_random(ws->o.user);
        ws->depth--;             /* leave_cb's work is done by the caller's checks */
        if (!(r >= 0)) return 0; /* also NaN */
        return r < 1 ? r : 0.999999;
    }
    const uint8_t *b = ploop_random(ws->loop, 4);
    if (!b) return 0.5;
    uint32_t v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    return v / 4294967296.0;
}

static void schedule_retry(parley_ws *ws)
{
    double r = jitter_random(ws);
    if (ws->free_pending) {
        if (ws->depth == 0) ws_destroy(ws);
        return;
    }
    if (ws->state != WSC_WAITING) return;
    uint32_t delay = backoff_next(&ws->bo, r);
    ws->attempt++;
    plog_info("ws %s: reconnecting in %u ms (attempt %u)", ws->url.host_header, delay, ws->attempt);
    /* The loop's clock is from the start of the iteration; the delay is a
     * promise of spacing between attempts, so count it from now. */
    uv_update_time(ws->loop->uv);
    ploop_timer_start(ws->loop, &ws->retry_timer, delay);
    parley_ws_event ev = {
        .type = PARLEY_WS_EV_RECONNECTING, .attempt = ws->attempt, .delay_ms = delay};
    emit(ws, &ev);
}

static void wsc_on_close(pconn *c, int err)
{
    parley_ws *ws = PARLEY_CONTAINER_OF(c, parley_ws, c);
    ws->conn_live = false;
    stop_timer(ws, &ws->timer);
    stop_timer(ws, &ws->hb_timer);
    stop_timer(ws, &ws->pump_timer);
    stop_timer(ws, &ws->drain_timer);
    bool was_open = ws->state == WSC_OPEN;
    if (ws->ws_live) {
        wsconn_lost(&ws->ws, err);
        wsconn_free(&ws->ws);
        ws->ws_live = false;
    }
    if (!ws->err && err) ws->err = err;
    if (!was_open && !ws->err) ws->err = PARLEY_ECLOSED;
    if (ws->free_pending) {
        ws->state = WSC_DONE;
        if (ws->depth == 0) ws_destroy(ws);
        return;
    }
    if (was_open) ws->st.total_uptime_ms += ptime_ms() - ws->opened_ms;
    if (ws->err && !ws->app_closed) ws->st.errors++;
    /* In-flight entries wait again, before any callback can reconnect. */
    pbuf requeued = {0};
    if (ws->q && outq_in_flight(ws->q)) {
        outq_foreach(ws->q, collect_in_flight, &requeued);
        outq_requeue(ws->q);
        arm_expiry(ws); /* deadlines that passed in flight apply now */
    }
    bool auto_on = ws->o.reconnect && !ws->app_closed;
    bool retry = auto_on && retryable(ws) &&
                 (ws->o.reconnect_attempts == 0 || ws->attempt < ws->o.reconnect_attempts);
    ws->state = retry ? WSC_WAITING : WSC_DONE;

    if (ws->connecting_pending && emit_connecting(ws)) goto out;
    parley_ws_event ev = {.type = was_open ? PARLEY_WS_EV_DISCONNECTED : PARLEY_WS_EV_ERROR,
                          .attempt = ws->attempt,
                          .reason = end_reason(ws, was_open),
                          .err = ws->err,
                          .http_status = ws->http_status,
                          .code = ws->close_code,
                          .close_reason = ws->close_reason,
                          .close_reason_len = ws->close_reason_len,
                          .will_retry = retry};
    if (emit(ws, &ev)) goto out;
    if (ws->o.on_close) {
        ws->depth++;
        ws->o.on_close(ws, ws->close_code, ws->close_reason, ws->close_reason_len, ws->err,
                       ws->o.user);
        if (leave_cb(ws)) goto out;
    }
    if (report_ids(ws, &requeued, PARLEY_WS_SEND_QUEUED, 0)) goto out;
    /* The callbacks may have closed or connected again meanwhile. */
    if (ws->state == WSC_WAITING) {
        schedule_retry(ws);
    } else if (auto_on && ws->state == WSC_DONE && !ws->app_closed) {
        plog_info("ws %s: giving up reconnecting (%s)", ws->url.host_header,
                  retryable(ws) ? "attempts used up" : "not retryable");
        parley_ws_event gu = {.type = PARLEY_WS_EV_RECONNECT_FAILED,
                              .attempt = ws->attempt,
                              .err = ws->err,
                              .http_status = ws->http_status};
        emit(ws, &gu);
    }
out:
    pbuf_free(&requeued);
}

/* ---- public calls, run on the loop thread ---- */

typedef struct call {
    parley_ws *ws;
    int rc;
    parley_ws_type type;
    const void *data;
    size_t len;
    int a, b, c; /* priority, first, fin / code */
    uint32_t ttl_ms;
    const char *str; /* id, reason */
    char *id_out;
    size_t count;
    parley_ws_stats *stats;
    uv_sem_t *freed;
    pws_observer_fn obs; /* pws_observe */
    void *obs_user;
} call;

static int run(parley_ws *ws, void (*fn)(void *), call *a)
{
    a->ws = ws;
    int rc = ploop_call(ws->loop, fn, a);
    return rc ? rc : a->rc;
}

static void do_connect(void *arg)
{
    call *a = arg;
    parley_ws *ws = a->ws;
    if (ws->free_pending || ws->conn_live ||
        (ws->state != WSC_IDLE && ws->state != WSC_DONE && ws->state != WSC_WAITING)) {
        a->rc = PARLEY_ESTATE;
        return;
    }
    stop_timer(ws, &ws->retry_timer);
    ws->attempt = 0;
    backoff_reset(&ws->bo);
    ws->app_closed = false;
    start_attempt(ws, true);
}

static void do_observe(void *arg)
{
    call *a = arg;
    parley_ws *ws = a->ws;
    pws_observer_fn fn = a->obs;
    void *user = a->obs_user;
    if (fn && ws->obs_fn && ws->obs_user != user) {
        a->rc = PARLEY_ESTATE;
        return;
    }
    ws->obs_fn = fn;
    ws->obs_user = fn ? user : NULL;
    switch (ws->state) {
    case WSC_IDLE:
        a->a = PWS_IDLE;
        break;
    case WSC_CONNECTING:
    case WSC_HANDSHAKE:
        a->a = PWS_CONNECTING;
        break;
    case WSC_OPEN:
        a->a = PWS_OPEN;
        break;
    case WSC_WAITING:
        a->a = PWS_RECONNECTING;
        break;
    default:
        a->a = PWS_CLOSED;
        break;
    }
}

int pws_observe(parley_ws *ws, pws_observer_fn fn, void *user, pws_state *state)
{
    if (!ws) return PARLEY_EINVAL;
    call a = {0};
    a.obs = fn;
    a.obs_user = user;
    int rc = run(ws, do_observe, &a);
    if (rc == 0 && state) *state = (pws_state)a.a;
    return rc;
}

int parley_ws_connect(parley_ws *ws)
{
    call a = {0};
    return run(ws, do_connect, &a);
}

static int send_state_error(const parley_ws *ws)
{
    return ws->state == WSC_DONE || ws->state == WSC_WAITING ? PARLEY_ECLOSED : PARLEY_ESTATE;
}

static void do_send(void *arg)
{
    call *a = arg;
    parley_ws *ws = a->ws;
    if (ws->state != WSC_OPEN) {
        a->rc = send_state_error(ws);
        return;
    }
    if (a->type == PARLEY_WS_TEXT && !utf8_valid(a->data, a->len)) {
        a->rc = PARLEY_EINVAL;
        return;
    }
    a->rc = wsconn_send(&ws->ws, a->type == PARLEY_WS_TEXT ? WS_OP_TEXT : WS_OP_BINARY, a->data,
                        a->len);
    if (a->rc == 0) {
        ws->st.messages_out++;
        ws->st.bytes_out += a->len;
    }
}

int parley_ws_send(parley_ws *ws, parley_ws_type type, const void *data, size_t len)
{
    if (type != PARLEY_WS_TEXT && type != PARLEY_WS_BINARY) return PARLEY_EINVAL;
    if (len && !data) return PARLEY_EINVAL;
    call a = {.type = type, .data = data, .len = len};
    return run(ws, do_send, &a);
}

static void do_send_fragment(void *arg)
{
    call *a = arg;
    parley_ws *ws = a->ws;
    if (ws->state != WSC_OPEN) {
        a->rc = send_state_error(ws);
        return;
    }
    int opcode = a->b ? (a->type == PARLEY_WS_TEXT ? WS_OP_TEXT : WS_OP_BINARY) : WS_OP_CONT;
    a->rc = wsconn_send_frame(&ws->ws, opcode, a->c != 0, a->data, a->len);
    if (a->rc == 0) {
        ws->st.bytes_out += a->len;
        if (a->c) ws->st.messages_out++;
    }
}

int parley_ws_send_fragment(parley_ws *ws, parley_ws_type type, int first, int fin,
                            const void *data, size_t len)
{
    if (type != PARLEY_WS_TEXT && type != PARLEY_WS_BINARY) return PARLEY_EINVAL;
    if (len && !data) return PARLEY_EINVAL;
    call a = {.type = type, .data = data, .len = len, .b = first, .c = fin};
    return run(ws, do_send_fragment, &a);
}

static void do_ping(void *arg)
{
    call *a = arg;
    parley_ws *ws = a->ws;
    if (ws->state != WSC_OPEN) {
        a->rc = send_state_error(ws);
        return;
    }
    a->rc = wsconn_ping(&ws->ws, a->data, a->len);
}

int parley_ws_ping(parley_ws *ws, const void *data, size_t len)
{
    if (len && !data) return PARLEY_EINVAL;
    call a = {.data = data, .len = len};
    return run(ws, do_ping, &a);
}

static void do_close(void *arg)
{
    call *a = arg;
    parley_ws *ws = a->ws;
    switch (ws->state) {
    case WSC_WAITING:
        stop_timer(ws, &ws->retry_timer);
        ws->state = WSC_DONE;
        ws->app_closed = true;
        return;
    case WSC_CONNECTING:
    case WSC_HANDSHAKE:
        ws->app_closed = true;
        abort_attempt(ws, PARLEY_ECLOSED);
        return;
    case WSC_OPEN:
        /* Even when the peer's close is under way: no reconnection. */
        ws->app_closed = true;
        a->rc = wsconn_close(&ws->ws, (uint16_t)a->c, a->str);
        return;
    default:
        a->rc = PARLEY_ECLOSED;
        return;
    }
}

int parley_ws_close(parley_ws *ws, int code, const char *reason)
{
    if (code != 0 && (code < 0 || code > 65535 || !ws_close_code_valid((unsigned)code)))
        return PARLEY_EINVAL;
    call a = {.c = code, .str = reason};
    return run(ws, do_close, &a);
}

static void do_http_status(void *arg)
{
    call *a = arg;
    a->rc = a->ws->http_status;
}

int parley_ws_http_status(const parley_ws *ws)
{
    call a = {0};
    /* The handle is not modified; ploop_call only takes a plain pointer. */
    return run((parley_ws *)(uintptr_t)ws, do_http_status, &a);
}

static void do_send_queued(void *arg)
{
    call *a = arg;
    parley_ws *ws = a->ws;
    if (!ws->q && (a->rc = open_queue(ws, NULL)) != 0) return;
    outq_entry *e;
    a->rc = outq_push(ws->q, a->a, a->type == PARLEY_WS_TEXT ? "t" : "b", a->data, a->len,
                      a->ttl_ms, wall_ms(), a->str, &e);
    if (a->rc) return;
    if (a->id_out) memcpy(a->id_out, e->id, OUTQ_ID_LEN + 1);
    if (e->expires_ms) arm_expiry(ws);
    if (ws->state == WSC_OPEN) kick_soon(ws);
}

static int send_queued(parley_ws *ws, parley_ws_type type, const void *data, size_t len,
                       int priority, uint32_t ttl_ms, const char *id, char *id_out)
{
    if (type != PARLEY_WS_TEXT && type != PARLEY_WS_BINARY) return PARLEY_EINVAL;
    if (len && !data) return PARLEY_EINVAL;
    if (priority < PARLEY_WS_PRIORITY_LOW || priority > PARLEY_WS_PRIORITY_URGENT)
        return PARLEY_EINVAL;
    if (type == PARLEY_WS_TEXT && !utf8_valid(data, len)) return PARLEY_EINVAL;
    call a = {.type = type,
              .data = data,
              .len = len,
              .a = priority,
              .ttl_ms = ttl_ms,
              .str = id,
              .id_out = id_out};
    return run(ws, do_send_queued, &a);
}

int parley_ws_send_queued(parley_ws *ws, parley_ws_type type, const void *data, size_t len,
                          int priority, uint32_t ttl_ms, char *id_out)
{
    return send_queued(ws, type, data, len, priority, ttl_ms, NULL, id_out);
}

int parley_ws_send_queued_id(parley_ws *ws, parley_ws_type type, const void *data, size_t len,
                             int priority, uint32_t ttl_ms, const char *id)
{
    if (!id) return PARLEY_EINVAL;
    return send_queued(ws, type, data, len, priority, ttl_ms, id, NULL);
}

static void do_ack(void *arg)
{
    call *a = arg;
    parley_ws *ws = a->ws;
    if (!ws->q || (a->rc = outq_ack(ws->q, a->str)) != 0) {
        a->rc = PARLEY_EINVAL;
        return;
    }
    if (pbuf_append(&ws->acked, a->str, OUTQ_ID_LEN) != 0)
        plog_warn("ws: out of memory: the acknowledgement of %s is not reported", a->str);
    kick_soon(ws);
}

int parley_ws_ack(parley_ws *ws, const char *id)
{
    if (!id) return PARLEY_EINVAL;
    call a = {.str = id};
    return run(ws, do_ack, &a);
}

static void do_queued(void *arg)
{
    call *a = arg;
    a->count = outq_count(a->ws->q);
}

size_t parley_ws_queued(parley_ws *ws)
{
    call a = {0};
    return run(ws, do_queued, &a) == 0 ? a.count : 0;
}

static void do_stats(void *arg)
{
    call *a = arg;
    parley_ws *ws = a->ws;
    *a->stats = ws->st;
    if (ws->state == WSC_OPEN) {
        uint64_t up = ptime_ms() - ws->opened_ms;
        a->stats->uptime_ms = up;
        a->stats->total_uptime_ms += up;
    }
    a->stats->queued = outq_count(ws->q);
}

void parley_ws_get_stats(parley_ws *ws, parley_ws_stats *out)
{
    memset(out, 0, sizeof *out);
    call a = {.stats = out};
    run(ws, do_stats, &a);
}

static void do_free(void *arg)
{
    call *a = arg;
    parley_ws *ws = a->ws;
    if (ws->free_pending) return;
    ws->free_pending = true;
    ws->freed = a->freed; /* NULL unless joined from another thread */
    /* Nothing may fire between now and the memory going. */
    stop_timers(ws);
    /* The queue file is released now, not when the connection has closed,
     * so that a new client may open it at once. */
    outq_close(ws->q);
    ws->q = NULL;
    if (ws->conn_live) {
        pconn_close(&ws->c, false, PARLEY_ECLOSED);
        return; /* wsc_on_close finishes */
    }
    if (ws->depth == 0) ws_destroy(ws);
}

void parley_ws_free(parley_ws *ws)
{
    if (!ws) return;
    if (ws->own_loop && !ploop_on_thread(ws->loop)) {
        parley_loop *l = ws->loop;
        uv_sem_t gone;
        if (uv_sem_init(&gone, 0) != 0) {
            plog_error("ws: cannot free a client (no semaphore)");
            return;
        }
        call a = {.freed = &gone};
        if (run(ws, do_free, &a) == 0) uv_sem_wait(&gone);
        uv_sem_destroy(&gone);
        parley_loop_join(l);
        parley_loop_free(l);
        return;
    }
    call a = {0};
    run(ws, do_free, &a);
}
