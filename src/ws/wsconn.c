/* WebSocket session: events from the frame parser, frames to the pconn. */
#include "ws/wsconn.h"

#include <string.h>

#include "base/log.h"
#include "base/util.h"
#include "codec/utf8.h"

void wsconn_opts_init(wsconn_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_frame = 16u << 20;
    o->max_message = 16u << 20;
    o->ping_timeout_ms = 10000;
    o->close_timeout_ms = 5000;
    o->deflate_threshold = 64;
}

static void on_timer(ptimer *t);

int wsconn_init(wsconn *w, pconn *c, bool client, const wsconn_opts *opts, const pmd_params *pmd,
                const pmd_config *cfg, void *user)
{
    memset(w, 0, sizeof *w);
    w->conn = c;
    w->user = user;
    w->opts = opts;
    w->client = client;
    ws_parser_init(&w->parser, !client);
    w->parser.max_frame = (uint32_t)PARLEY_MIN(opts->max_frame, (uint64_t)UINT32_MAX);
    w->parser.max_message = (uint32_t)PARLEY_MIN(opts->max_message, (uint64_t)UINT32_MAX);
    ptimer_init(&w->timer, on_timer);
    if (pmd) {
        w->deflater = pmd_deflater_new(pmd, cfg, !client);
        w->parser.inflater = pmd_inflater_new(pmd, !client);
        if (!w->deflater || !w->parser.inflater) {
            wsconn_free(w);
            return PARLEY_ENOMEM;
        }
    }
    if (opts->ping_interval_ms) ploop_timer_start(c->loop, &w->timer, opts->ping_interval_ms);
    return 0;
}

void wsconn_free(wsconn *w)
{
    if (w->conn) ploop_timer_stop(w->conn->loop, &w->timer);
    ws_parser_free(&w->parser);
    pmd_stream_free(w->deflater);
    pmd_stream_free(w->parser.inflater);
    w->deflater = NULL;
    w->parser.inflater = NULL;
}

static void report(wsconn *w, uint16_t code, const uint8_t *reason, size_t len, int err)
{
    if (w->reported) return;
    w->reported = true;
    w->state = WSCONN_CLOSED;
    ploop_timer_stop(w->conn->loop, &w->timer);
    if (w->opts->cbs->on_closed) w->opts->cbs->on_closed(w, code, reason, len, err);
}

void wsconn_lost(wsconn *w, int err)
{
    report(w, WS_CLOSE_ABNORMAL, NULL, 0, err ? err : PARLEY_ECLOSED);
}

/* A fresh masking key from the loop's CSPRNG pool (RFC 6455 5.3: keys
 * must be unpredictable). NULL only if the CSPRNG fails, in which case a
 * predictable key would break the guarantee: the send is refused. */
static const uint8_t *next_mask(wsconn *w)
{
    return ploop_random(w->conn->loop, 4);
}

static int send_raw(wsconn *w, int opcode, bool fin, const void *data, size_t len, bool compress)
{
    pbuf *out = pconn_out(w->conn);
    if (!out) return (w->conn->flags & PCONN_CLOSING) && w->conn->close_err == PARLEY_EFULL
                         ? PARLEY_EFULL
                         : PARLEY_ECLOSED;
    const uint8_t *mask = NULL;
    if (w->client && !(mask = next_mask(w))) return PARLEY_EIO;
    int rc;
    if (compress)
        rc = ws_message_append(out, w->deflater, w->opts->deflate_threshold, opcode, data, len,
                               mask);
    else
        rc = ws_frame_append(out, opcode, fin, false, data, len, mask);
    if (rc) return rc;
    return pconn_wrote(w->conn);
}

int wsconn_send(wsconn *w, int opcode, const void *data, size_t len)
{
    if (opcode != WS_OP_TEXT && opcode != WS_OP_BINARY) return PARLEY_EINVAL;
    if (w->state != WSCONN_OPEN) return PARLEY_ECLOSED;
    return send_raw(w, opcode, true, data, len, w->deflater != NULL);
}

int wsconn_send2(wsconn *w, int opcode, const void *a, size_t alen, const void *b, size_t blen)
{
    if (opcode != WS_OP_TEXT && opcode != WS_OP_BINARY) return PARLEY_EINVAL;
    if (w->state != WSCONN_OPEN) return PARLEY_ECLOSED;
    if (blen > SIZE_MAX - alen) return PARLEY_EINVAL;
    if (w->deflater && alen + blen >= w->opts->deflate_threshold) {
        /* Compression needs the payload in one piece; a rare path (the
         * Engine.IO default is no permessage-deflate). */
        pbuf tmp = {0};
        int rc = pbuf_append(&tmp, a, alen);
        if (rc == 0) rc = pbuf_append(&tmp, b, blen);
        if (rc == 0) rc = send_raw(w, opcode, true, tmp.ptr, tmp.len, true);
        pbuf_free(&tmp);
        return rc;
    }
    pbuf *out = pconn_out(w->conn);
    if (!out) return PARLEY_ECLOSED;
    const uint8_t *mask = NULL;
    if (w->client && !(mask = next_mask(w))) return PARLEY_EIO;
    size_t len = alen + blen;
    int rc = pbuf_reserve(out, WS_MAX_HEADER + len);
    if (rc) return rc;
    uint8_t *p = out->ptr + out->len;
    size_t h = ws_frame_header(p, opcode, true, false, len, mask);
    if (alen) memcpy(p + h, a, alen);
    if (blen) memcpy(p + h + alen, b, blen);
    if (mask) ws_mask(p + h, len, mask, 0);
    out->len += h + len;
    return pconn_wrote(w->conn);
}

int wsconn_send_frame(wsconn *w, int opcode, bool fin, const void *data, size_t len)
{
    if (opcode != WS_OP_TEXT && opcode != WS_OP_BINARY && opcode != WS_OP_CONT)
        return PARLEY_EINVAL;
    if (w->state != WSCONN_OPEN) return PARLEY_ECLOSED;
    return send_raw(w, opcode, fin, data, len, false);
}

int wsconn_ping(wsconn *w, const void *data, size_t len)
{
    if (len > 125) return PARLEY_EINVAL;
    if (w->state != WSCONN_OPEN) return PARLEY_ECLOSED;
    return send_raw(w, WS_OP_PING, true, data, len, false);
}

static int send_close_frame(wsconn *w, uint16_t code, const char *reason, size_t reason_len)
{
    uint8_t payload[125];
    size_t n = ws_close_payload(payload, code, reason, reason_len);
    return send_raw(w, WS_OP_CLOSE, true, payload, n, false);
}

int wsconn_close(wsconn *w, uint16_t code, const char *reason)
{
    if (w->state != WSCONN_OPEN) return PARLEY_ECLOSED;
    if (code && !ws_close_code_valid(code)) return PARLEY_EINVAL;
    int rc = send_close_frame(w, code, reason, reason ? strlen(reason) : 0);
    if (rc) return rc;
    w->state = WSCONN_CLOSE_SENT;
    w->awaiting_pong = false;
    ploop_timer_start(w->conn->loop, &w->timer, w->opts->close_timeout_ms);
    return 0;
}

/* Fail the WebSocket connection (RFC 6455 section 7.1.7). */
static void fail(wsconn *w, uint16_t code, const char *why, int err)
{
    /* A peer can open connection after connection to fail them: at most
     * one line per 10 s, counting the others. */
    uint64_t held;
    if (plog_limit_ok(&w->conn->loop->log_ws, ploop_now(w->conn->loop), 10000, &held)) {
        char peer[64];
        pconn_peer_name(w->conn, peer, sizeof peer);
        plog_info("websocket %s: closing with %u: %s (%llu more failed or timed-out "
                  "connections since the last line)",
                  peer, code, why ? why : "", (unsigned long long)held);
    }
    if (w->state == WSCONN_OPEN) send_close_frame(w, code, why, why ? strlen(why) : 0);
    report(w, code, (const uint8_t *)why, why ? strlen(why) : 0, err);
    pconn_close(w->conn, true, err);
}

static void on_timer(ptimer *t)
{
    wsconn *w = PARLEY_CONTAINER_OF(t, wsconn, timer);
    switch (w->state) {
    case WSCONN_OPEN:
        if (w->awaiting_pong) {
            /* The peer is gone or stuck: no close frame would reach it.
             * (A network outage takes thousands at once: a summary.) */
            uint64_t held;
            if (plog_limit_ok(&w->conn->loop->log_ws, ploop_now(w->conn->loop), 10000, &held)) {
                char peer[64];
                pconn_peer_name(w->conn, peer, sizeof peer);
                plog_info("websocket %s: no pong within %u ms (%llu more failed or timed-out "
                          "connections since the last line)",
                          peer, w->opts->ping_timeout_ms, (unsigned long long)held);
            }
            report(w, WS_CLOSE_ABNORMAL, NULL, 0, PARLEY_ETIMEDOUT);
            pconn_close(w->conn, false, PARLEY_ETIMEDOUT);
            return;
        }
        if (send_raw(w, WS_OP_PING, true, NULL, 0, false) != 0) return;
        w->awaiting_pong = true;
        ploop_timer_start(w->conn->loop, &w->timer, w->opts->ping_timeout_ms);
        return;
    case WSCONN_CLOSE_SENT:
        report(w, WS_CLOSE_ABNORMAL, NULL, 0, PARLEY_ETIMEDOUT);
        pconn_close(w->conn, false, PARLEY_ETIMEDOUT);
        return;
    default:
        /* Client waiting for the server to close TCP after the handshake. */
        pconn_close(w->conn, false, 0);
        return;
    }
}

static void on_peer_close(wsconn *w, const ws_event *ev)
{
    if (w->state == WSCONN_OPEN) {
        /* Echo the code; an empty close is answered with an empty one. */
        uint16_t code = ev->close_code == WS_CLOSE_NO_STATUS ? 0 : ev->close_code;
        send_close_frame(w, code, (const char *)ev->data, ev->len);
    }
    report(w, ev->close_code, ev->data, ev->len, 0);
    if (w->client) {
        /* RFC 6455 5.5.1: the server closes TCP first; wait a bit for it. */
        ploop_timer_start(w->conn->loop, &w->timer, w->opts->close_timeout_ms);
    } else {
        pconn_close(w->conn, true, 0);
    }
}

size_t wsconn_feed(wsconn *w, uint8_t *data, size_t len)
{
    size_t off = 0;
    while (off < len && w->state != WSCONN_CLOSED) {
        ws_event ev;
        long n = ws_parse(&w->parser, data + off, len - off, &ev);
        if (n < 0) {
            fail(w, w->parser.close_code, ws_parser_error(&w->parser), (int)n);
            return len;
        }
        off += (size_t)n;
        if (ev.type == WS_EV_NONE) {
            if (n == 0) {
                uint64_t need = ws_parser_frame_need(&w->parser);
                if (need > len - off) pconn_expect(w->conn, (size_t)need);
                break;
            }
            continue;
        }
        switch (ev.type) {
        case WS_EV_MESSAGE:
            /* Messages still count after we sent close: the peer may have
             * sent them before it saw our close frame. */
            if (w->opts->cbs->on_message)
                w->opts->cbs->on_message(w, ev.opcode, ev.data, ev.len);
            break;
        case WS_EV_PING:
            if (w->state == WSCONN_OPEN) send_raw(w, WS_OP_PONG, true, ev.data, ev.len, false);
            if (w->opts->cbs->on_ping) w->opts->cbs->on_ping(w, ev.data, ev.len);
            break;
        case WS_EV_PONG:
            if (w->awaiting_pong && w->state == WSCONN_OPEN) {
                w->awaiting_pong = false;
                ploop_timer_start(w->conn->loop, &w->timer, w->opts->ping_interval_ms);
            }
            if (w->opts->cbs->on_pong) w->opts->cbs->on_pong(w, ev.data, ev.len);
            break;
        case WS_EV_CLOSE: on_peer_close(w, &ev); break;
        default: break;
        }
    }
    if (w->state == WSCONN_CLOSED) return len; /* ignore anything after close */
    if (off == len) ws_parser_trim(&w->parser, 0);
    return off;
}
