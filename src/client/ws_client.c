/* The public WebSocket client: connect, upgrade, then a wsconn. */
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/url.h"
#include "base/util.h"
#include "codec/http.h"
#include "codec/pmd.h"
#include "codec/utf8.h"
#include "codec/ws_handshake.h"
#include "net/net.h"
#include "parley/ws.h"
#include "ws/wsconn.h"

#define WSC_MAX_HEADERS 64

enum { WSC_IDLE = 0, WSC_CONNECTING, WSC_HANDSHAKE, WSC_OPEN, WSC_DONE };

struct parley_ws {
    parley_loop *loop;
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
    bool free_pending;
    char key[25];
    http_parser parser;
    http_header *resp_hdrs;
    ptimer timer; /* whole-connect deadline */
    wsconn ws;
    bool ws_live;
    int http_status;
    int err; /* why the attempt ended */
    uint16_t close_code;
    uint8_t close_reason_len;
    char close_reason[124];
};

static const wsconn_cbs wsc_ws_cbs;

static void ws_destroy(parley_ws *ws)
{
    ploop_timer_stop(ws->loop, &ws->timer);
    free(ws->headers);
    free(ws->hdr_text);
    for (size_t i = 0; i < ws->nprotocols; i++) free(ws->protocols[i]);
    free(ws->protocols);
    free(ws->resp_hdrs);
    ptls_ctx_free(ws->tls);
    free(ws);
}

/* Runs after every user callback: the user may have freed the handle. */
static bool leave_cb(parley_ws *ws)
{
    ws->depth--;
    if (ws->depth == 0 && ws->free_pending && !ws->conn_live) {
        ws_destroy(ws);
        return true;
    }
    return ws->free_pending;
}

void parley_ws_opts_init(parley_ws_opts *o)
{
    memset(o, 0, sizeof *o);
    o->permessage_deflate = 1;
    o->connect_timeout_ms = 10000;
    o->max_message = 16u << 20;
    o->ping_timeout_ms = 10000;
    o->max_output = 8u << 20;
}

/* Splits "Name: value" strings into header structs, validating them. */
static int copy_headers(parley_ws *ws, const char *const *h, size_t n)
{
    if (n == 0) return 0;
    if (n > WSC_MAX_HEADERS) return PARLEY_EINVAL;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!h[i]) return PARLEY_EINVAL;
        total += strlen(h[i]) + 1;
    }
    ws->hdr_text = malloc(total);
    ws->headers = pcalloc(n, sizeof *ws->headers);
    if (!ws->hdr_text || !ws->headers) return PARLEY_ENOMEM;
    char *p = ws->hdr_text;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(h[i]);
        memcpy(p, h[i], len + 1);
        char *colon = memchr(p, ':', len);
        if (!colon || colon == p) return PARLEY_EINVAL;
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        size_t vlen = (size_t)(p + len - v);
        while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) vlen--;
        ws->headers[i] = (http_header){p, (size_t)(colon - p), v, vlen};
        p += len + 1;
    }
    ws->nheaders = n;
    /* Let the HTTP writer judge the characters now rather than at connect. */
    pbuf probe = {0};
    int rc = http_write_request_head(&probe, "GET", "/", "h", ws->headers, n, -1);
    pbuf_free(&probe);
    return rc;
}

int parley_ws_new(parley_loop *loop, const parley_ws_opts *o, parley_ws **out)
{
    if (!loop || !o || !o->url || !out) return PARLEY_EINVAL;
    parley_ws *ws = pcalloc(1, sizeof *ws);
    if (!ws) return PARLEY_ENOMEM;
    ws->loop = loop;
    ws->o = *o;
    ptimer_init(&ws->timer, NULL);
    int rc = purl_parse(o->url, &ws->url);
    if (rc == 0 && strcmp(ws->url.scheme, "ws") != 0 && strcmp(ws->url.scheme, "wss") != 0)
        rc = PARLEY_EURL;
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
    if (rc) {
        ws_destroy(ws);
        return rc;
    }
    pmd_config_init(&ws->pmd);
    ws->pmd.enabled = o->permessage_deflate != 0;
    wsconn_opts_init(&ws->wsopts);
    if (o->max_message)
        ws->wsopts.max_frame = ws->wsopts.max_message = PARLEY_MIN(o->max_message, (uint64_t)UINT32_MAX);
    ws->wsopts.ping_interval_ms = o->ping_interval_ms;
    ws->wsopts.cbs = &wsc_ws_cbs;
    if (o->ping_timeout_ms) ws->wsopts.ping_timeout_ms = o->ping_timeout_ms;
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

int parley_ws_connect(parley_ws *ws)
{
    if (ws->state != WSC_IDLE && ws->state != WSC_DONE) return PARLEY_ESTATE;
    if (ws->conn_live) return PARLEY_ESTATE;
    ws->err = 0;
    ws->http_status = 0;
    ws->close_code = WS_CLOSE_ABNORMAL;
    ws->close_reason_len = 0;
    pconn_init(&ws->c, ws->loop, &wsc_cbs, ws->o.max_output);
    ws->conn_live = true;
    ws->state = WSC_CONNECTING;
    http_parser_init(&ws->parser, true, NULL);
    ws->parser.limits.max_headers = WSC_MAX_HEADERS;
    int rc = pconn_connect(&ws->c, ws->url.host, ws->url.port, ws->tls, 0);
    if (rc) {
        /* Nothing started: close the fresh handle; on_close reports. */
        abort_attempt(ws, rc);
        return 0;
    }
    if (ws->o.connect_timeout_ms) {
        ws->timer.cb = on_deadline;
        ploop_timer_start(ws->loop, &ws->timer, ws->o.connect_timeout_ms);
    }
    return 0;
}

static void wsc_on_connect(pconn *c, int status)
{
    parley_ws *ws = PARLEY_CONTAINER_OF(c, parley_ws, c);
    if (status) {
        ws->err = status;
        return; /* the pconn closes itself */
    }
    int rc = ws_client_key(ws->key);
    pbuf ext = {0};
    if (rc == 0 && ws->pmd.enabled) rc = pmd_client_offer(&ws->pmd, &ext);
    if (rc == 0 && ext.len) rc = pbuf_append(&ext, "", 1);
    pbuf *out = pconn_out(c);
    if (rc == 0 && !out) rc = PARLEY_ECLOSED;
    if (rc == 0)
        rc = ws_write_client_request(out, ws->url.host_header, ws->url.target, ws->key,
                                     (const char *const *)ws->protocols, ws->nprotocols,
                                     ext.len ? (const char *)ext.ptr : NULL, ws->headers,
                                     ws->nheaders);
    pbuf_free(&ext);
    if (rc) {
        abort_attempt(ws, rc);
        return;
    }
    pconn_wrote(c);
    ws->state = WSC_HANDSHAKE;
}

/* wsconn callbacks -> user callbacks. */

static void wsc_message(wsconn *w, int opcode, uint8_t *data, size_t len)
{
    parley_ws *ws = w->user;
    if (!ws->o.on_message || ws->free_pending) return;
    ws->depth++;
    ws->o.on_message(ws, opcode == WS_OP_TEXT ? PARLEY_WS_TEXT : PARLEY_WS_BINARY, data, len,
                     ws->o.user);
    leave_cb(ws);
}

static void wsc_pong(wsconn *w, const uint8_t *data, size_t len)
{
    parley_ws *ws = w->user;
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
    if (ws_verify_response(&head, ws->key, (const char *const *)ws->protocols, ws->nprotocols,
                           &res, &why) != 0) {
        if (head.status != 101) ws->http_status = head.status;
        plog_info("ws %s: handshake refused (HTTP %d): %s", ws->url.host_header, head.status,
                  why ? why : "");
        abort_attempt(ws, PARLEY_EHANDSHAKE);
        return len;
    }
    pmd_params params;
    bool use_pmd = false;
    if (res.extensions && res.extensions_len) {
        int rc = ws->pmd.enabled ? pmd_client_accept(&ws->pmd, res.extensions, res.extensions_len,
                                                     &params)
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
        snprintf(proto, sizeof proto, "%.*s", (int)PARLEY_MIN(res.protocol_len, 255),
                 res.protocol);
    int rc = wsconn_init(&ws->ws, &ws->c, true, &ws->wsopts, use_pmd ? &params : NULL, &ws->pmd,
                         ws);
    if (rc) {
        abort_attempt(ws, rc);
        return len;
    }
    ws->ws_live = true;
    ws->state = WSC_OPEN;
    ploop_timer_stop(ws->loop, &ws->timer);
    if (ws->o.on_open) {
        ws->depth++;
        ws->o.on_open(ws, res.protocol ? proto : NULL, ws->o.user);
        leave_cb(ws);
    }
    return (size_t)r;
}

static size_t wsc_on_data(pconn *c, uint8_t *data, size_t len)
{
    parley_ws *ws = PARLEY_CONTAINER_OF(c, parley_ws, c);
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
    if (ws->state == WSC_HANDSHAKE || ws->state == WSC_CONNECTING) abort_attempt(ws, PARLEY_ECLOSED);
    pconn_close(c, true, 0);
}

static void wsc_on_close(pconn *c, int err)
{
    parley_ws *ws = PARLEY_CONTAINER_OF(c, parley_ws, c);
    ws->conn_live = false;
    ploop_timer_stop(ws->loop, &ws->timer);
    if (ws->ws_live) {
        wsconn_lost(&ws->ws, err);
        wsconn_free(&ws->ws);
        ws->ws_live = false;
    }
    if (!ws->err && err) ws->err = err;
    if (ws->state != WSC_OPEN && !ws->err) ws->err = PARLEY_ECLOSED;
    ws->state = WSC_DONE;
    if (ws->free_pending) {
        if (ws->depth == 0) ws_destroy(ws);
        return;
    }
    if (ws->o.on_close) {
        ws->depth++;
        ws->o.on_close(ws, ws->close_code, ws->close_reason, ws->close_reason_len, ws->err,
                       ws->o.user);
        leave_cb(ws);
    }
}

int parley_ws_send(parley_ws *ws, parley_ws_type type, const void *data, size_t len)
{
    if (type != PARLEY_WS_TEXT && type != PARLEY_WS_BINARY) return PARLEY_EINVAL;
    if (len && !data) return PARLEY_EINVAL;
    if (ws->state != WSC_OPEN) return ws->state == WSC_DONE ? PARLEY_ECLOSED : PARLEY_ESTATE;
    if (type == PARLEY_WS_TEXT && !utf8_valid(data, len)) return PARLEY_EINVAL;
    return wsconn_send(&ws->ws, type == PARLEY_WS_TEXT ? WS_OP_TEXT : WS_OP_BINARY, data, len);
}

int parley_ws_send_fragment(parley_ws *ws, parley_ws_type type, int first, int fin,
                            const void *data, size_t len)
{
    if (type != PARLEY_WS_TEXT && type != PARLEY_WS_BINARY) return PARLEY_EINVAL;
    if (len && !data) return PARLEY_EINVAL;
    if (ws->state != WSC_OPEN) return ws->state == WSC_DONE ? PARLEY_ECLOSED : PARLEY_ESTATE;
    int opcode = first ? (type == PARLEY_WS_TEXT ? WS_OP_TEXT : WS_OP_BINARY) : WS_OP_CONT;
    return wsconn_send_frame(&ws->ws, opcode, fin != 0, data, len);
}

int parley_ws_ping(parley_ws *ws, const void *data, size_t len)
{
    if (len && !data) return PARLEY_EINVAL;
    if (ws->state != WSC_OPEN) return ws->state == WSC_DONE ? PARLEY_ECLOSED : PARLEY_ESTATE;
    return wsconn_ping(&ws->ws, data, len);
}

int parley_ws_close(parley_ws *ws, int code, const char *reason)
{
    if (code != 0 && (code < 0 || code > 65535 || !ws_close_code_valid((unsigned)code)))
        return PARLEY_EINVAL;
    if (ws->state == WSC_CONNECTING || ws->state == WSC_HANDSHAKE) {
        abort_attempt(ws, PARLEY_ECLOSED);
        return 0;
    }
    if (ws->state != WSC_OPEN) return PARLEY_ECLOSED;
    return wsconn_close(&ws->ws, (uint16_t)code, reason);
}

int parley_ws_http_status(const parley_ws *ws)
{
    return ws->http_status;
}

void parley_ws_free(parley_ws *ws)
{
    if (!ws || ws->free_pending) return;
    ws->free_pending = true;
    if (ws->conn_live) {
        pconn_close(&ws->c, false, PARLEY_ECLOSED);
        return; /* wsc_on_close finishes */
    }
    if (ws->depth == 0) ws_destroy(ws);
}
