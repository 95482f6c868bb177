/*
 * parley bench: a load generator built on the library's own codecs and
 * network layer, for loopback targets only. Scenarios:
 *
 *   ws-echo        N WebSocket connections; each sends K frames in one write
 *                  (K = 1: one message in flight), waits for the K echoes,
 *                  repeats. Messages/s and round-trip latency.
 *   sio-echo       N Socket.IO sessions (websocket transport) emitting
 *                  `message-with-ack` and awaiting the acknowledgement.
 *                  Round trips/s and latency.
 *   sio-broadcast  M senders and N receivers in one room: senders emit
 *                  `to-room`; deliveries/s, latency from send to each
 *                  receipt, and lost deliveries (must be 0).
 *   connect        Socket.IO session establishments per second (TCP,
 *                  upgrade, open packet, CONNECT, close), N in parallel.
 *   chat           the messaging service of parleyd: N users in pairs on /chat
 *                  (websocket), each keeping K send_message requests in
 *                  flight to its partner; every delivered message is
 *                  counted and every R-th one answered with a read receipt,
 *                  whose status event goes back to the sender. Acknowledged
 *                  (committed) messages/s and acknowledgement latency.
 *   idle           N WebSocket connections or Socket.IO sessions held open
 *                  (answering the server's pings) for a while; the server's
 *                  RSS growth per connection from /proc/PID/status, measured
 *                  between N/10 (at most 1000) and N connections so that
 *                  start-up and allocator warm-up are not counted.
 *
 * The generator must never be the bottleneck: frames are encoded and
 * masked once where they do not change, replies are parsed in place, and
 * nothing is allocated per message. The server-side handlers are those of
 * `parleyd --protocol-test` (and of bench/node/sio-server.mjs for the
 * reference).
 */
#include "prog/bench.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/url.h"
#include "base/util.h"
#include "services/jwt.h"
#include "codec/http.h"
#include "codec/ws.h"
#include "codec/ws_handshake.h"
#include "net/net.h"

/* ---- latency histogram: values in ns, 64 sub-buckets per power of two ---- */

#define HIST_SUB 64
#define HIST_POW 40
typedef struct hist {
    uint64_t counts[HIST_POW * HIST_SUB];
    uint64_t n, max;
} hist;

static unsigned hist_index(uint64_t v)
{
    if (v < HIST_SUB) return (unsigned)v;
    unsigned p = 63u - (unsigned)__builtin_clzll(v); /* v >= 64: p >= 6 */
    unsigned idx = (p - 5) * HIST_SUB + (unsigned)((v >> (p - 6)) & (HIST_SUB - 1));
    return idx < HIST_POW * HIST_SUB ? idx : HIST_POW * HIST_SUB - 1;
}

static uint64_t hist_value(unsigned idx)
{
    if (idx < HIST_SUB) return idx;
    unsigned p = idx / HIST_SUB + 5;
    unsigned shift = p - 6;
    return ((uint64_t)(HIST_SUB + idx % HIST_SUB) << shift) + ((1ull << shift) >> 1);
}

static void hist_add(hist *h, uint64_t v, uint64_t count)
{
    h->counts[hist_index(v)] += count;
    h->n += count;
    if (v > h->max) h->max = v;
}

static uint64_t hist_pct(const hist *h, double pct)
{
    if (!h->n) return 0;
    uint64_t want = (uint64_t)ceil(pct / 100.0 * (double)h->n);
    if (want == 0) want = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_POW * HIST_SUB; i++) {
        seen += h->counts[i];
        if (seen >= want) return PARLEY_MIN(hist_value(i), h->max);
    }
    return h->max;
}

/* ---- connections ---- */

enum { SC_WS_ECHO, SC_SIO_ECHO, SC_SIO_BCAST, SC_CONNECT, SC_IDLE, SC_CHAT };
enum { BC_CONNECTING, BC_HANDSHAKE, BC_EIO_OPEN, BC_SIO_CONNECT, BC_READY, BC_DEAD };

#define BCAST_WINDOW 64

typedef struct bench bench;

typedef struct bconn {
    pconn c;
    bench *b;
    int state;
    unsigned idx;
    bool receiver;
    bool joined;
    ws_parser wp;
    uint64_t sent_ns;
    uint32_t waiting;
    int64_t ack_id;
    uint64_t sent_msgs; /* chat: client ids */
    uint64_t *ring;     /* chat: send times by ack id % pipeline */
} bconn;

typedef struct bcast_slot {
    uint64_t seq; /* which broadcast occupies the slot */
    uint32_t left;
} bcast_slot;

#define BENCH_MAX_URLS 8

struct bench {
    parley_loop *loop;
    purl url[BENCH_MAX_URLS]; /* connection i goes to url[i % nurls] */
    unsigned nurls;
    int scenario;
    bool sio; /* Socket.IO sessions (else plain WebSocket) */
    unsigned conns, pipeline, senders, sources, ramp;
    size_t size;
    double duration_s, warmup_s, hold_s;
    bool json;
    unsigned pid;
    bconn *bc;
    unsigned open, ready, dead, connecting, started;
    unsigned limit; /* connections to open for now (idle opens in two steps) */
    uint8_t *batch; /* ws-echo: K masked frames shared by all connections */
    size_t batch_len;
    uint8_t *request[BENCH_MAX_URLS]; /* the upgrade request per URL, shared */
    size_t request_len[BENCH_MAX_URLS];
    char payload[4096];
    bool measuring, done, load_started, draining;
    uint64_t t_start, t_end;
    uint64_t msgs, errors, pings;
    /* sio-broadcast */
    uint64_t bcast_sent, delivered, expected;
    bcast_slot (*slots)[BCAST_WINDOW];
    uint32_t *outstanding;
    uint64_t *next_seq;
    hist lat;
    /* chat */
    const char *jwt_secret;
    unsigned receipt_every;
    uint64_t run_id, acked, deliveries, receipts, statuses;
    uint64_t *rings;
    long rss_before, rss_after;
    unsigned first_step; /* idle: connections open when rss_before was read */
    uv_timer_t timer;
    int phase;
};

static const uint8_t MASK[4] = {0x11, 0x22, 0x33, 0x44};

static void ws_send_text(bconn *x, const char *text, size_t len)
{
    pbuf *out = pconn_out(&x->c);
    if (!out || pbuf_reserve(out, WS_MAX_HEADER + len) != 0) return;
    uint8_t *p = out->ptr + out->len;
    size_t h = ws_frame_header(p, WS_OP_TEXT, true, false, len, MASK);
    memcpy(p + h, text, len);
    ws_mask(p + h, len, MASK, 0);
    out->len += h + len;
    pconn_wrote(&x->c);
}

static void start_connect(bench *b, bconn *x);
static void all_ready_check(bench *b);

static void sio_emit_ack(bconn *x)
{
    bench *b = x->b;
    char buf[4200];
    x->sent_ns = ptime_ns();
    x->waiting = b->pipeline;
    for (unsigned k = 0; k < b->pipeline; k++) {
        int n = snprintf(buf, sizeof buf, "42%lld[\"message-with-ack\",\"%s\"]",
                         (long long)x->ack_id++, b->payload);
        ws_send_text(x, buf, (size_t)n);
    }
}

static void bcast_send(bconn *x)
{
    bench *b = x->b;
    unsigned s = x->idx;
    while (b->outstanding[s] < BCAST_WINDOW && !b->done && !b->draining) {
        uint64_t seq = b->next_seq[s]++;
        bcast_slot *slot = &b->slots[s][seq % BCAST_WINDOW];
        slot->seq = seq;
        slot->left = b->conns - b->senders;
        b->outstanding[s]++;
        char buf[4300];
        int n = snprintf(buf, sizeof buf, "42[\"to-room\",\"bench\",\"bcast\",\"%llu:%u:%llu:%s\"]",
                         (unsigned long long)ptime_ns(), s, (unsigned long long)seq, b->payload);
        ws_send_text(x, buf, (size_t)n);
        /* Losses are counted over the whole run, drain included. */
        b->bcast_sent++;
        b->expected += b->conns - b->senders;
    }
}

/* ---- chat ---- */

#define CHAT_NSP "/chat"

static void chat_user(char *out, size_t cap, unsigned idx)
{
    snprintf(out, cap, "bu%u", idx);
}

static void chat_send(bconn *x)
{
    bench *b = x->b;
    char to[32], buf[4400];
    chat_user(to, sizeof to, x->idx ^ 1u);
    int64_t id = x->ack_id++;
    x->ring[(uint64_t)id % b->pipeline] = ptime_ns();
    int n = snprintf(buf, sizeof buf,
                     "42" CHAT_NSP ",%lld[\"send_message\",{\"client_id\":\"%llx-%u-%llu\",\"to\":"
                     "\"%s\",\"type\":\"text\",\"content\":{\"text\":\"%s\"}}]",
                     (long long)id, (unsigned long long)b->run_id, x->idx,
                     (unsigned long long)x->sent_msgs++, to, b->payload);
    ws_send_text(x, buf, (size_t)n);
}

static void chat_start(bconn *x)
{
    for (unsigned k = 0; k < x->b->pipeline; k++) chat_send(x);
}

/* The CONNECT auth payload: a token when a secret is given, else the
 * development mode's {"user"}. */
static int chat_connect(bconn *x)
{
    bench *b = x->b;
    char user[32];
    chat_user(user, sizeof user, x->idx);
    pbuf out = {0};
    int rc = pbuf_append_str(&out, "40" CHAT_NSP ",");
    if (b->jwt_secret) {
        char claims[128];
        snprintf(claims, sizeof claims, "{\"sub\":\"%s\",\"exp\":%lld}", user,
                 (long long)time(NULL) + 86400);
        if (rc == 0) rc = pbuf_append_str(&out, "{\"token\":\"");
        if (rc == 0)
            rc =
                jwt_sign(&out, NULL, claims, (const uint8_t *)b->jwt_secret, strlen(b->jwt_secret));
        if (rc == 0) rc = pbuf_append_str(&out, "\"}");
    } else if (rc == 0) {
        rc = pbuf_appendf(&out, "{\"user\":\"%s\"}", user);
    }
    if (rc == 0) ws_send_text(x, (const char *)out.ptr, out.len);
    pbuf_free(&out);
    return rc;
}

/* An event or acknowledgement on /chat: p points after "4". */
static void chat_packet(bconn *x, const uint8_t *p, size_t len)
{
    bench *b = x->b;
    static const char nsp[] = CHAT_NSP ",";
    if (len < 1 + sizeof nsp - 1 || memcmp(p + 1, nsp, sizeof nsp - 1) != 0) return;
    const char *q = (const char *)p + sizeof nsp, *end = (const char *)p + len;
    if (p[0] == '3') {
        char *after;
        long long id = strtoll(q, &after, 10);
        if (after == q || end - after < 11) return;
        bool ok = memcmp(after, "[{\"ok\":true", 11) == 0;
        if (!ok) {
            if (b->errors++ == 0)
                fprintf(stderr, "bench: chat request failed: %.*s\n",
                        (int)PARLEY_MIN(end - after, 300), after);
            return;
        }
        if (!x->joined) {
            /* The sync answer: this user now receives live events. */
            x->joined = true;
            if (b->started < b->limit) start_connect(b, &b->bc[b->started++]);
            all_ready_check(b);
            return;
        }
        if (b->measuring) {
            hist_add(&b->lat, ptime_ns() - x->ring[(uint64_t)id % b->pipeline], 1);
            b->msgs++;
        }
        b->acked++;
        if (!b->done && !b->draining) chat_send(x);
        return;
    }
    if (p[0] != '2') return;
    static const char nm[] = "[\"new_message\",", st[] = "[\"status\",";
    if ((size_t)(end - q) > sizeof nm && memcmp(q, nm, sizeof nm - 1) == 0) {
        b->deliveries++;
        const char *s = strstr(q, "\"seq\":");
        long long seq = s ? strtoll(s + 6, NULL, 10) : 0;
        if (b->receipt_every && seq % b->receipt_every == 0 && !b->done) {
            char me[32], peer[32], buf[200];
            chat_user(me, sizeof me, x->idx);
            chat_user(peer, sizeof peer, x->idx ^ 1u);
            bool lt = strcmp(me, peer) < 0;
            int n = snprintf(buf, sizeof buf,
                             "42" CHAT_NSP ",[\"receipt\",{\"conversation\":\"dm:%s:%s\","
                             "\"status\":\"read\",\"seq\":%lld}]",
                             lt ? me : peer, lt ? peer : me, seq);
            ws_send_text(x, buf, (size_t)n);
            b->receipts++;
        }
    } else if ((size_t)(end - q) > sizeof st && memcmp(q, st, sizeof st - 1) == 0) {
        b->statuses++;
    }
}

static void start_load(bench *b)
{
    if (b->load_started) return;
    b->load_started = true;
    for (unsigned i = 0; i < b->conns; i++) {
        bconn *x = &b->bc[i];
        if (x->state != BC_READY) continue;
        switch (b->scenario) {
        case SC_WS_ECHO:
            x->sent_ns = ptime_ns();
            x->waiting = b->pipeline;
            pconn_write(&x->c, b->batch, b->batch_len);
            break;
        case SC_SIO_ECHO: sio_emit_ack(x); break;
        case SC_SIO_BCAST:
            if (!x->receiver) bcast_send(x);
            break;
        case SC_CHAT:
            chat_start(x);
            break;
        default: break;
        }
    }
}

/* A connection finished its handshakes. */
static void on_ready(bconn *x)
{
    bench *b = x->b;
    x->state = BC_READY;
    b->ready++;
    if (b->connecting) b->connecting--;
    if (b->scenario == SC_CONNECT) {
        if (b->measuring) b->msgs++;
        pconn_close(&x->c, false, 0);
        return;
    }
    if (b->scenario == SC_SIO_BCAST && x->receiver) {
        ws_send_text(x, "420[\"join\",\"bench\"]", 19);
        return;
    }
    if (b->scenario == SC_CHAT) {
        /* Live delivery starts with sync; its answer makes the user ready.
         * Earlier runs' history is skipped: since = the largest seq. */
        char me[32], peer[32], sync[256];
        chat_user(me, sizeof me, x->idx);
        chat_user(peer, sizeof peer, x->idx ^ 1u);
        bool lt = strcmp(me, peer) < 0;
        int n = snprintf(sync, sizeof sync,
                         "42" CHAT_NSP ",0[\"sync\",{\"since\":{\"dm:%s:%s\":9007199254740992}}]",
                         lt ? me : peer, lt ? peer : me);
        ws_send_text(x, sync, (size_t)n);
        x->ack_id = 1;
        return;
    }
    /* Ramp: start the next connection. */
    if (b->started < b->limit) start_connect(b, &b->bc[b->started++]);
}

static void all_ready_check(bench *b)
{
    unsigned receivers_joined = 0, needed = 0;
    if (b->scenario == SC_SIO_BCAST || b->scenario == SC_CHAT) {
        for (unsigned i = 0; i < b->conns; i++) {
            if (b->bc[i].receiver || b->scenario == SC_CHAT) {
                needed++;
                if (b->bc[i].joined) receivers_joined++;
            }
        }
        if (receivers_joined < needed) return;
    }
    if (b->ready + b->dead < b->conns) return;
    if (b->scenario == SC_WS_ECHO || b->scenario == SC_SIO_ECHO || b->scenario == SC_SIO_BCAST ||
        b->scenario == SC_CHAT)
        start_load(b);
}

static void parse_bcast(bench *b, const uint8_t *p, size_t len)
{
    /* 42["bcast","<ns>:<sender>:<seq>:..."]; other events (the
     * protocol-test server greets with `auth`) are not ours. */
    static const char prefix[] = "42[\"bcast\",\"";
    if (len < sizeof prefix || memcmp(p, prefix, sizeof prefix - 1) != 0) return;
    const char *q = (const char *)p + sizeof prefix - 1;
    char *end;
    uint64_t t = strtoull(q, &end, 10);
    unsigned s = (unsigned)strtoul(end + 1, &end, 10);
    uint64_t seq = strtoull(end + 1, &end, 10);
    if (s >= b->senders) {
        b->errors++;
        return;
    }
    uint64_t now = ptime_ns();
    bcast_slot *slot = &b->slots[s][seq % BCAST_WINDOW];
    if (slot->seq != seq || slot->left == 0) {
        b->errors++; /* a duplicate, or one we did not send */
        return;
    }
    b->delivered++;
    if (b->measuring) {
        hist_add(&b->lat, now - t, 1);
        b->msgs++;
    }
    if (--slot->left == 0) {
        b->outstanding[s]--;
        bconn *sender = &b->bc[s];
        if (sender->state == BC_READY) bcast_send(sender);
    }
}

static void on_sio_text(bconn *x, const uint8_t *p, size_t len)
{
    bench *b = x->b;
    if (len == 1 && p[0] == '2') {
        ws_send_text(x, "3", 1);
        b->pings++;
        return;
    }
    if (x->state == BC_EIO_OPEN) {
        if (len > 0 && p[0] == '0') {
            x->state = BC_SIO_CONNECT;
            if (b->scenario == SC_CHAT) {
                if (chat_connect(x) != 0) b->errors++;
            } else {
                ws_send_text(x, "40", 2);
            }
        } else {
            b->errors++;
        }
        return;
    }
    if (x->state == BC_SIO_CONNECT) {
        if (len >= 2 && p[0] == '4' && p[1] == '4') {
            fprintf(stderr, "bench: CONNECT refused: %.*s\n", (int)PARLEY_MIN(len, 300), p);
            b->errors++;
            pconn_close(&x->c, false, PARLEY_EHANDSHAKE);
        } else if (len >= 2 && p[0] == '4' && p[1] == '0') {
            on_ready(x);
            all_ready_check(b);
        } else if (len >= 2 && p[0] == '4') {
            /* Events before CONNECT (none expected). */
        } else {
            b->errors++;
        }
        return;
    }
    if (len < 2 || p[0] != '4') return;
    if (b->scenario == SC_CHAT) {
        chat_packet(x, p + 1, len - 1);
        return;
    }
    if (p[1] == '3') {
        /* An acknowledgement. */
        if (b->scenario == SC_SIO_BCAST) {
            if (!x->joined) {
                x->joined = true;
                if (b->started < b->limit) start_connect(b, &b->bc[b->started++]);
                all_ready_check(b);
            }
            return;
        }
        if (b->scenario != SC_SIO_ECHO || x->waiting == 0) return;
        if (--x->waiting == 0) {
            if (b->measuring) {
                hist_add(&b->lat, ptime_ns() - x->sent_ns, b->pipeline);
                b->msgs += b->pipeline;
            }
            if (!b->done) sio_emit_ack(x);
        }
        return;
    }
    if (p[1] == '2' && b->scenario == SC_SIO_BCAST && x->receiver) parse_bcast(b, p, len);
}

static size_t bc_on_data(pconn *c, uint8_t *data, size_t len)
{
    bconn *x = PARLEY_CONTAINER_OF(c, bconn, c);
    bench *b = x->b;
    size_t off = 0;
    if (x->state == BC_HANDSHAKE) {
        /* The upgrade answer: only its status matters here. */
        for (size_t i = 3; i < len; i++) {
            if (data[i - 3] == '\r' && data[i - 2] == '\n' && data[i - 1] == '\r' &&
                data[i] == '\n') {
                if (len < 12 || memcmp(data, "HTTP/1.1 101", 12) != 0) {
                    fprintf(stderr, "bench: handshake refused: %.*s\n", (int)PARLEY_MIN(len, 60),
                            data);
                    b->errors++;
                    pconn_close(c, false, PARLEY_EHANDSHAKE);
                    return len;
                }
                off = i + 1;
                b->open++;
                if (b->sio) {
                    x->state = BC_EIO_OPEN;
                } else {
                    on_ready(x);
                    all_ready_check(b);
                }
                break;
            }
        }
        if (off == 0) return 0;
    }
    while (off < len) {
        ws_event ev;
        long n = ws_parse(&x->wp, data + off, len - off, &ev);
        if (n < 0) {
            fprintf(stderr, "bench: bad frame from server: %s\n", ws_parser_error(&x->wp));
            b->errors++;
            pconn_close(c, false, PARLEY_EPROTO);
            return len;
        }
        off += (size_t)n;
        if (ev.type == WS_EV_NONE) {
            if (n == 0) break;
            continue;
        }
        if (ev.type == WS_EV_PING) {
            uint8_t pong[WS_MAX_HEADER + 125];
            size_t h = ws_frame_header(pong, WS_OP_PONG, true, false, ev.len, MASK);
            memcpy(pong + h, ev.data, ev.len);
            ws_mask(pong + h, ev.len, MASK, 0);
            pconn_write(c, pong, h + ev.len);
            b->pings++;
            continue;
        }
        if (ev.type != WS_EV_MESSAGE) continue;
        if (b->sio) {
            if (ev.opcode == WS_OP_TEXT) on_sio_text(x, ev.data, ev.len);
            continue;
        }
        if (b->scenario != SC_WS_ECHO) continue;
        if (ev.len != b->size) b->errors++;
        if (x->waiting && --x->waiting == 0) {
            if (b->measuring) {
                hist_add(&b->lat, ptime_ns() - x->sent_ns, b->pipeline);
                b->msgs += b->pipeline;
            }
            if (!b->done) {
                x->sent_ns = ptime_ns();
                x->waiting = b->pipeline;
                pconn_write(c, b->batch, b->batch_len);
            }
        }
    }
    return off;
}

static void bc_on_connect(pconn *c, int status)
{
    bconn *x = PARLEY_CONTAINER_OF(c, bconn, c);
    if (status) {
        fprintf(stderr, "bench: connect: %s\n", parley_strerror(status));
        return;
    }
    x->state = BC_HANDSHAKE;
    unsigned k = x->idx % x->b->nurls;
    pconn_write(c, x->b->request[k], x->b->request_len[k]);
}

static void bc_on_close(pconn *c, int err)
{
    bconn *x = PARLEY_CONTAINER_OF(c, bconn, c);
    bench *b = x->b;
    bool was_ready = x->state == BC_READY;
    if (x->state == BC_CONNECTING || x->state == BC_HANDSHAKE || x->state == BC_EIO_OPEN ||
        x->state == BC_SIO_CONNECT) {
        if (b->connecting) b->connecting--;
        if (!b->done) {
            b->errors++;
            fprintf(stderr, "bench: connection %u lost before ready: %s\n", x->idx,
                    parley_strerror(err ? err : PARLEY_ECLOSED));
        }
    } else if (was_ready && !b->done && b->scenario != SC_CONNECT && err) {
        b->errors++;
    }
    ws_parser_free(&x->wp);
    if (b->scenario == SC_CONNECT && !b->done) {
        /* Next session on the same slot. */
        start_connect(b, x);
        return;
    }
    x->state = BC_DEAD;
    b->dead++;
    if (b->done && b->dead == b->conns) uv_close((uv_handle_t *)&b->timer, NULL);
    else if (!b->done) all_ready_check(b);
}

static const pconn_cbs bc_cbs = {
    .on_data = bc_on_data, .on_connect = bc_on_connect, .on_close = bc_on_close};

static void start_connect(bench *b, bconn *x)
{
    pconn_init(&x->c, b->loop, &bc_cbs, 0);
    ws_parser_init(&x->wp, false);
    x->state = BC_CONNECTING;
    x->ack_id = 0;
    b->connecting++;
    if (b->sources > 1) {
        /* 127.0.0.0/8 is all loopback: more source addresses, more
         * ephemeral ports. */
        unsigned k = x->idx % b->sources;
        char src[32];
        snprintf(src, sizeof src, "127.0.%u.%u", k / 250, 1 + k % 250);
        pconn_bind_local(&x->c, src);
    }
    const purl *u = &b->url[x->idx % b->nurls];
    if (pconn_connect(&x->c, u->host, u->port, NULL, 10000) != 0) {
        fprintf(stderr, "bench: cannot start connection %u\n", x->idx);
        pconn_close(&x->c, false, PARLEY_EIO);
    }
}

/* ---- phases ---- */

/* Resident set of a process in bytes, from /proc/PID/status; -1 if unknown. */
static long read_rss(unsigned pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%u/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

static void finish(bench *b)
{
    b->measuring = false;
    b->done = true;
    b->t_end = ptime_ns();
    for (unsigned i = 0; i < b->conns; i++)
        if (b->bc[i].state != BC_DEAD) pconn_close(&b->bc[i].c, false, 0);
    if (b->dead == b->conns) uv_close((uv_handle_t *)&b->timer, NULL);
}

static void on_phase(uv_timer_t *t)
{
    bench *b = t->data;
    switch (b->phase) {
    case 0: /* waiting for connections (and for the load to start) */
        if (b->scenario != SC_CONNECT && b->scenario != SC_IDLE && !b->load_started) {
            uv_timer_start(&b->timer, on_phase, 50, 0);
            return;
        }
        if (b->scenario == SC_IDLE) {
            if (b->connecting > 0 || b->started < b->limit) {
                uv_timer_start(&b->timer, on_phase, 100, 0);
                return;
            }
            if (b->limit < b->conns) {
                /* The first step is up and settled: measure from here, so
                 * that start-up allocations and allocator warm-up do not
                 * count as per-connection memory. */
                if (b->rss_before == 0) {
                    uv_timer_start(&b->timer, on_phase, 1000, 0);
                    b->rss_before = -1;
                    return;
                }
                b->rss_before = read_rss(b->pid);
                b->first_step = b->ready;
                b->limit = b->conns;
                unsigned more = PARLEY_MIN(b->ramp, b->conns - b->started);
                for (unsigned i = 0; i < more; i++) start_connect(b, &b->bc[b->started++]);
                uv_timer_start(&b->timer, on_phase, 100, 0);
                return;
            }
        }
        b->phase = 1;
        uv_timer_start(&b->timer, on_phase,
                       (uint64_t)((b->scenario == SC_IDLE ? b->hold_s : b->warmup_s) * 1000), 0);
        return;
    case 1: /* warm-up over: measure */
        if (b->scenario == SC_IDLE) {
            b->rss_after = read_rss(b->pid);
            finish(b);
            return;
        }
        b->phase = 2;
        b->measuring = true;
        b->t_start = ptime_ns();
        uv_timer_start(&b->timer, on_phase, (uint64_t)(b->duration_s * 1000), 0);
        return;
    case 2:
        b->t_end = ptime_ns();
        b->measuring = false;
        if (b->scenario == SC_SIO_BCAST) {
            /* Stop sending and let the last broadcasts arrive before
             * counting losses. */
            b->draining = true;
            b->phase = 3;
            uv_timer_start(&b->timer, on_phase, 2000, 0);
            return;
        }
        finish(b);
        return;
    default: {
        uint64_t t_end = b->t_end;
        finish(b);
        b->t_end = t_end;
        return;
    }
    }
}

static int build_requests(bench *b)
{
    char key[25];
    if (ws_client_key(key) != 0) return PARLEY_EIO;
    int rc = 0;
    for (unsigned k = 0; k < b->nurls && rc == 0; k++) {
        const purl *u = &b->url[k];
        pbuf req = {0};
        char target[2200];
        if (b->sio) {
            /* Engine.IO over WebSocket directly, as socket.io-client with
             * transports: ["websocket"]. */
            const char *q = strchr(u->target, '?');
            snprintf(target, sizeof target, "%s%sEIO=4&transport=websocket", u->target,
                     q ? "&" : "?");
        } else {
            snprintf(target, sizeof target, "%s", u->target);
        }
        rc = ws_write_client_request(&req, u->host_header, target, key, NULL, 0, NULL, NULL, 0);
        b->request[k] = req.ptr;
        b->request_len[k] = req.len;
    }
    if (rc) return rc;
    size_t n = PARLEY_MIN(b->size, sizeof b->payload - 1);
    for (size_t i = 0; i < n; i++) b->payload[i] = (char)('a' + i % 26);
    b->payload[n] = 0;
    if (b->scenario == SC_WS_ECHO) {
        pbuf out = {0};
        for (unsigned k = 0; k < b->pipeline && rc == 0; k++)
            rc = ws_frame_append(&out, WS_OP_BINARY, true, false, b->payload, b->size, MASK);
        b->batch = out.ptr;
        b->batch_len = out.len;
    }
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: parley bench SCENARIO --url URL [options]\n"
            "scenarios: ws-echo, sio-echo, sio-broadcast, connect, idle, chat\n"
            "  --url URL            ws://HOST:PORT/PATH (ws-echo, idle) or\n"
            "                       http://HOST:PORT/socket.io/ (Socket.IO; loopback only);\n"
            "                       repeat it (up to 8) to spread connections over several\n"
            "                       servers: connection i goes to the (i mod n)-th URL, so\n"
            "                       sio-broadcast's senders are on the first (a cluster)\n"
            "  --connections N      connections / sessions (default 100)\n"
            "  --size BYTES         payload size (default 20)\n"
            "  --pipeline K         messages sent together and awaited together (default 1)\n"
            "  --senders M          sio-broadcast: senders among the connections (default 1)\n"
            "  --duration SECONDS   measured time (default 5)\n"
            "  --warmup SECONDS     unmeasured time first (default 1)\n"
            "  --sources N          spread connections over N source addresses 127.0.0.x\n"
            "  --ramp N             open at most N connections at a time (default 256)\n"
            "  --json               one JSON object instead of text\n"
            "chat (against parleyd's messaging service):\n"
            "  --jwt-secret SECRET  sign tokens with SECRET (default: parleyd --dev-auth)\n"
            "  --receipt-every R    answer every R-th delivered message with a read\n"
            "                       receipt (default 10; 0 = none)\n"
            "                       (--connections must be even: users are in pairs)\n"
            "idle:\n"
            "  --pid PID            the server process whose RSS is measured (required)\n"
            "  --hold SECONDS       how long connections are held (default 5)\n");
}

static bool is_loopback(const char *host)
{
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0 ||
           strcmp(host, "localhost") == 0;
}

static const char *scenario_name(int s)
{
    static const char *const names[] = {"ws-echo", "sio-echo", "sio-broadcast",
                                        "connect", "idle",     "chat"};
    return names[s];
}

static void report(bench *b, const char *url)
{
    double secs = (double)(b->t_end - b->t_start) / 1e9;
    double rate = secs > 0 ? (double)b->msgs / secs : 0;
    double us = 1e-3;
    if (b->scenario == SC_IDLE) {
        unsigned held = b->ready;
        unsigned added = held > b->first_step ? held - b->first_step : 0;
        double per = added ? (double)(b->rss_after - b->rss_before) / added : 0;
        if (b->json)
            printf("{\"scenario\":\"idle\",\"protocol\":\"%s\",\"url\":\"%s\",\"connections\":%u,"
                   "\"held\":%u,\"hold_s\":%.1f,\"pings_answered\":%llu,\"rss_before\":%ld,"
                   "\"rss_after\":%ld,\"bytes_per_connection\":%.0f,\"errors\":%llu}\n",
                   b->sio ? "socket.io" : "websocket", url, b->conns, held, b->hold_s,
                   (unsigned long long)b->pings, b->rss_before, b->rss_after, per,
                   (unsigned long long)b->errors);
        else
            printf("idle %s (%s): %u connections held %.1f s (%llu pings answered)\n"
                   "  server RSS %ld -> %ld bytes: %.0f bytes per connection\n"
                   "  errors: %llu\n",
                   url, b->sio ? "socket.io" : "websocket", held, b->hold_s,
                   (unsigned long long)b->pings, b->rss_before, b->rss_after, per,
                   (unsigned long long)b->errors);
        return;
    }
    uint64_t lost = b->expected > b->delivered ? b->expected - b->delivered : 0;
    if (b->json && b->scenario == SC_CHAT) {
        printf("{\"scenario\":\"chat\",\"url\":\"%s\",\"connections\":%u,\"size\":%zu,"
               "\"pipeline\":%u,\"seconds\":%.3f,\"messages\":%llu,\"msg_per_s\":%.0f,"
               "\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"acknowledged\":%llu,"
               "\"delivered\":%llu,\"receipts\":%llu,\"statuses\":%llu,\"errors\":%llu}\n",
               url, b->conns, b->size, b->pipeline, secs, (unsigned long long)b->msgs, rate,
               (double)hist_pct(&b->lat, 50) * us, (double)hist_pct(&b->lat, 99) * us,
               (double)b->lat.max * us, (unsigned long long)b->acked,
               (unsigned long long)b->deliveries, (unsigned long long)b->receipts,
               (unsigned long long)b->statuses, (unsigned long long)b->errors);
        return;
    }
    if (b->json) {
        printf("{\"scenario\":\"%s\",\"url\":\"%s\",\"connections\":%u,\"size\":%zu,"
               "\"pipeline\":%u,\"senders\":%u,\"seconds\":%.3f,\"messages\":%llu,"
               "\"msg_per_s\":%.0f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,"
               "\"lost\":%llu,\"errors\":%llu}\n",
               scenario_name(b->scenario), url, b->conns, b->size, b->pipeline, b->senders, secs,
               (unsigned long long)b->msgs, rate, (double)hist_pct(&b->lat, 50) * us,
               (double)hist_pct(&b->lat, 99) * us, (double)b->lat.max * us,
               (unsigned long long)lost, (unsigned long long)b->errors);
        return;
    }
    if (b->scenario == SC_CHAT) {
        printf("chat %s: %u users in pairs, %u in flight each, %zu-byte texts, %.1f s\n"
               "  %.0f acknowledged (stored) messages/s\n"
               "  ack latency: p50 %.1f us, p99 %.1f us, max %.1f us\n"
               "  acknowledged %llu, delivered %llu, read receipts %llu, status events %llu\n"
               "  errors: %llu\n",
               url, b->conns, b->pipeline, b->size, secs, rate, (double)hist_pct(&b->lat, 50) * us,
               (double)hist_pct(&b->lat, 99) * us, (double)b->lat.max * us,
               (unsigned long long)b->acked, (unsigned long long)b->deliveries,
               (unsigned long long)b->receipts, (unsigned long long)b->statuses,
               (unsigned long long)b->errors);
        return;
    }
    printf("%s %s: %u connections, %zu-byte payloads, %.1f s\n", scenario_name(b->scenario), url,
           b->conns, b->size, secs);
    const char *unit = b->scenario == SC_CONNECT     ? "sessions/s"
                       : b->scenario == SC_SIO_BCAST ? "deliveries/s"
                       : b->scenario == SC_SIO_ECHO  ? "round trips/s"
                                                     : "messages/s";
    printf("  %.0f %s\n", rate, unit);
    if (b->scenario != SC_CONNECT)
        printf("  latency: p50 %.1f us, p99 %.1f us, max %.1f us\n",
               (double)hist_pct(&b->lat, 50) * us, (double)hist_pct(&b->lat, 99) * us,
               (double)b->lat.max * us);
    if (b->scenario == SC_SIO_BCAST)
        printf("  broadcasts %llu, deliveries %llu, lost %llu\n",
               (unsigned long long)b->bcast_sent, (unsigned long long)b->delivered,
               (unsigned long long)lost);
    printf("  errors: %llu\n", (unsigned long long)b->errors);
}

static int run(int argc, char **argv, int scenario)
{
    static bench b; /* large (histogram): not on the stack */
    memset(&b, 0, sizeof b);
    b.scenario = scenario;
    b.conns = 100;
    b.pipeline = 1;
    b.size = 20;
    b.senders = 1;
    b.duration_s = 5;
    b.warmup_s = 1;
    b.hold_s = 5;
    b.ramp = 256;
    b.receipt_every = 10;
    const char *url = NULL;
    const char *urls[BENCH_MAX_URLS];
    static const struct option longopts[] = {
        {"url", required_argument, 0, 'u'},
        {"connections", required_argument, 0, 'c'},
        {"size", required_argument, 0, 's'},
        {"pipeline", required_argument, 0, 'k'},
        {"duration", required_argument, 0, 'd'},
        {"warmup", required_argument, 0, 'w'},
        {"json", no_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},
        {"pid", required_argument, 0, 'p'},
        {"hold", required_argument, 0, 'o'},
        {"senders", required_argument, 0, 'm'},
        {"sources", required_argument, 0, 'r'},
        {"ramp", required_argument, 0, 'a'},
        {"jwt-secret", required_argument, 0, 'J'},
        {"receipt-every", required_argument, 0, 'R'},
        {0, 0, 0, 0},
    };
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'u':
            if (b.nurls == BENCH_MAX_URLS) {
                fprintf(stderr, "bench: at most %d --url\n", BENCH_MAX_URLS);
                return 2;
            }
            urls[b.nurls++] = optarg;
            url = urls[0];
            break;
        case 'c': b.conns = (unsigned)strtoul(optarg, NULL, 10); break;
        case 's': b.size = strtoul(optarg, NULL, 10); break;
        case 'k': b.pipeline = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'd': b.duration_s = strtod(optarg, NULL); break;
        case 'w': b.warmup_s = strtod(optarg, NULL); break;
        case 'j': b.json = true; break;
        case 'p': b.pid = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'o': b.hold_s = strtod(optarg, NULL); break;
        case 'm': b.senders = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'r': b.sources = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'a': b.ramp = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'J':
            b.jwt_secret = optarg;
            break;
        case 'R':
            b.receipt_every = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!url || b.conns == 0 || b.conns > 200000 || b.pipeline == 0 || b.pipeline > 4096 ||
        b.duration_s <= 0 || b.warmup_s < 0 || b.ramp == 0 ||
        (scenario == SC_WS_ECHO ? b.size > (16u << 20) : b.size > 4000) ||
        (scenario == SC_IDLE && (b.pid == 0 || b.hold_s <= 0)) ||
        (scenario == SC_SIO_BCAST && (b.senders == 0 || b.senders >= b.conns)) ||
        (scenario == SC_CHAT && b.conns % 2 != 0)) {
        usage(stderr);
        return 2;
    }
    for (unsigned k = 0; k < b.nurls; k++) {
        if (purl_parse(urls[k], &b.url[k]) != 0 || b.url[k].tls) {
            fprintf(stderr, "bench: --url must be ws:// or http:// (no TLS)\n");
            return 2;
        }
        if (!is_loopback(b.url[k].host)) {
            fprintf(stderr, "bench: targets must be on loopback\n");
            return 2;
        }
        if (strcmp(b.url[k].scheme, b.url[0].scheme) != 0) {
            fprintf(stderr, "bench: every --url has the same scheme\n");
            return 2;
        }
    }
    b.sio = strcmp(b.url[0].scheme, "http") == 0;
    if (scenario == SC_WS_ECHO && b.sio) {
        fprintf(stderr, "bench: ws-echo wants a ws:// URL\n");
        return 2;
    }
    if ((scenario == SC_SIO_ECHO || scenario == SC_SIO_BCAST || scenario == SC_CONNECT ||
         scenario == SC_CHAT) &&
        !b.sio) {
        fprintf(stderr, "bench: %s wants an http://HOST:PORT/socket.io/ URL\n",
                scenario_name(scenario));
        return 2;
    }
    if (build_requests(&b) != 0) return 1;
    b.loop = parley_loop_new();
    b.bc = pcalloc(b.conns, sizeof *b.bc);
    if (scenario == SC_SIO_BCAST) {
        b.slots = pcalloc(b.senders, sizeof *b.slots);
        b.outstanding = pcalloc(b.senders, sizeof *b.outstanding);
        b.next_seq = pcalloc(b.senders, sizeof *b.next_seq);
    }
    if (scenario == SC_CHAT) {
        b.rings = pcalloc((size_t)b.conns * b.pipeline, sizeof *b.rings);
        /* Client ids unique across runs on the same data directory. */
        b.run_id = ptime_ns() ^ ((uint64_t)time(NULL) << 20);
    }
    if (!b.loop || !b.bc ||
        (scenario == SC_SIO_BCAST && (!b.slots || !b.outstanding || !b.next_seq)) ||
        (scenario == SC_CHAT && !b.rings))
        return 1;
    for (unsigned i = 0; i < b.conns; i++) {
        b.bc[i].b = &b;
        b.bc[i].idx = i;
        /* The first M connections send, the others receive. */
        b.bc[i].receiver = scenario == SC_SIO_BCAST && i >= b.senders;
        b.bc[i].state = BC_DEAD;
        if (b.rings) b.bc[i].ring = b.rings + (size_t)i * b.pipeline;
    }
    b.limit = b.conns;
    if (scenario == SC_IDLE) {
        if (read_rss(b.pid) < 0) {
            fprintf(stderr, "bench: cannot read /proc/%u/status\n", b.pid);
            return 1;
        }
        /* Two steps: a tenth (at most 1000) first, then the rest; the RSS
         * growth of the second step per connection is reported. */
        b.limit = PARLEY_MAX(1u, PARLEY_MIN(1000u, b.conns / 10));
    }
    uv_timer_init(b.loop->uv, &b.timer);
    b.timer.data = &b;
    unsigned first = scenario == SC_CONNECT ? b.conns : PARLEY_MIN(b.limit, b.ramp);
    for (; b.started < first; b.started++) start_connect(&b, &b.bc[b.started]);
    if (scenario == SC_CONNECT) {
        /* Every slot reconnects forever: measure right away after warm-up. */
        b.phase = 1;
        uv_timer_start(&b.timer, on_phase, (uint64_t)(b.warmup_s * 1000), 0);
    } else {
        uv_timer_start(&b.timer, on_phase, 50, 0);
    }
    parley_loop_run(b.loop);
    report(&b, url);
    free(b.bc);
    free(b.batch);
    for (unsigned k = 0; k < b.nurls; k++) free(b.request[k]);
    free(b.slots);
    free(b.outstanding);
    free(b.next_seq);
    free(b.rings);
    parley_loop_free(b.loop);
    uint64_t lost = b.expected > b.delivered ? b.expected - b.delivered : 0;
    return b.errors || lost ? 1 : 0;
}

int bench_main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    static const struct {
        const char *name;
        int sc;
    } sc[] = {{"ws-echo", SC_WS_ECHO}, {"sio-echo", SC_SIO_ECHO}, {"sio-broadcast", SC_SIO_BCAST},
              {"connect", SC_CONNECT}, {"idle", SC_IDLE},         {"chat", SC_CHAT}};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(sc); i++)
        if (!strcmp(argv[1], sc[i].name)) return run(argc - 1, argv + 1, sc[i].sc);
    fprintf(stderr, "bench: unknown scenario '%s'\n", argv[1]);
    return 2;
}
