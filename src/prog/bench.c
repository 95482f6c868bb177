/*
 * parley bench: a load generator built on the library's own codecs and
 * network layer. Scenarios:
 *
 *   ws-echo   N WebSocket connections; each sends K frames in one write
 *             (K = 1: one message in flight), waits for the K echoes, and
 *             repeats. Reports messages/s and round-trip latency.
 *   idle      N WebSocket connections held open (answering the server's
 *             pings) for a while; reports the server's RSS growth per
 *             connection, read from /proc/PID/status.
 *
 * The generator must never be the bottleneck: frames are encoded (and
 * masked) once and shared by every connection, replies are parsed in place,
 * and nothing is allocated per message.
 */
#include "prog/bench.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/url.h"
#include "base/util.h"
#include "codec/http.h"
#include "codec/ws.h"
#include "codec/ws_handshake.h"
#include "net/net.h"

/* Log-linear latency histogram: values in ns, 64 sub-buckets per power of
 * two (relative error under 1.6 %). */
#define HIST_SUB 64
#define HIST_POW 40
typedef struct hist {
    uint64_t counts[HIST_POW * HIST_SUB];
    uint64_t n, max, sum;
} hist;

static unsigned hist_index(uint64_t v)
{
    if (v < HIST_SUB) return (unsigned)v;
    unsigned p = 63u - (unsigned)__builtin_clzll(v); /* v >= 64: p >= 6 */
    unsigned shift = p - 6;
    unsigned idx = (p - 5) * HIST_SUB + (unsigned)((v >> shift) & (HIST_SUB - 1));
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
    h->sum += v * count;
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

typedef struct bench bench;

enum { BC_CONNECTING, BC_HANDSHAKE, BC_OPEN, BC_DEAD };

typedef struct bconn {
    pconn c;
    bench *b;
    int state;
    ws_parser wp;
    uint64_t sent_ns;
    uint32_t waiting; /* echoes outstanding in the current batch */
} bconn;

struct bench {
    parley_loop *loop;
    purl url;
    unsigned conns, pipeline;
    size_t size;
    double duration_s, warmup_s;
    bool json;
    bconn *bc;
    unsigned open, dead, connecting;
    uint8_t *batch; /* K masked frames, shared by all connections */
    size_t batch_len;
    uint8_t *request; /* the upgrade request, shared */
    size_t request_len;
    bool measuring, done;
    uint64_t t_start, t_end;
    uint64_t msgs, bytes;
    uint64_t errors;
    hist lat;
    bool idle; /* idle scenario: no load */
    uint64_t pings;
    unsigned pid;
    double hold_s;
    long rss_before, rss_after;
    uv_timer_t timer;
    int phase; /* 0 warmup, 1 measuring */
};

static void send_batch(bconn *x)
{
    bench *b = x->b;
    x->sent_ns = ptime_ns();
    x->waiting = b->pipeline;
    pconn_write(&x->c, b->batch, b->batch_len);
}

static size_t bc_on_data(pconn *c, uint8_t *data, size_t len)
{
    bconn *x = c->user;
    bench *b = x->b;
    size_t off = 0;
    if (x->state == BC_HANDSHAKE) {
        /* The echo server's answer: only its status matters here. */
        for (size_t i = 3; i < len; i++) {
            if (data[i - 3] == '\r' && data[i - 2] == '\n' && data[i - 1] == '\r' &&
                data[i] == '\n') {
                if (len < 12 || memcmp(data, "HTTP/1.1 101", 12) != 0) {
                    fprintf(stderr, "bench: handshake refused: %.*s\n", (int)PARLEY_MIN(len, 40),
                            data);
                    x->state = BC_DEAD;
                    b->errors++;
                    pconn_close(c, false, PARLEY_EHANDSHAKE);
                    return len;
                }
                off = i + 1;
                x->state = BC_OPEN;
                b->connecting--;
                b->open++;
                break;
            }
        }
        if (x->state != BC_OPEN) return 0;
        if (!b->idle && b->connecting == 0 && b->open + b->dead == b->conns) {
            /* Everyone is connected: start the load on all at once. */
            for (unsigned i = 0; i < b->conns; i++)
                if (b->bc[i].state == BC_OPEN) send_batch(&b->bc[i]);
        }
    }
    while (off < len) {
        ws_event ev;
        long n = ws_parse(&x->wp, data + off, len - off, &ev);
        if (n < 0) {
            fprintf(stderr, "bench: bad frame from server: %s\n", x->wp.error);
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
            static const uint8_t mask[4] = {1, 2, 3, 4};
            size_t h = ws_frame_header(pong, WS_OP_PONG, true, false, ev.len, mask);
            memcpy(pong + h, ev.data, ev.len);
            ws_mask(pong + h, ev.len, mask, 0);
            pconn_write(c, pong, h + ev.len);
            b->pings++;
            continue;
        }
        if (ev.type != WS_EV_MESSAGE) continue;
        if (ev.len != b->size) b->errors++;
        if (--x->waiting == 0) {
            if (b->measuring) {
                hist_add(&b->lat, ptime_ns() - x->sent_ns, b->pipeline);
                b->msgs += b->pipeline;
                b->bytes += (uint64_t)b->pipeline * b->size;
            }
            if (!b->done) send_batch(x);
        }
    }
    return off;
}

static void bc_on_connect(pconn *c, int status)
{
    bconn *x = c->user;
    if (status) {
        fprintf(stderr, "bench: connect: %s\n", parley_strerror(status));
        return;
    }
    x->state = BC_HANDSHAKE;
    pconn_write(c, x->b->request, x->b->request_len);
}

static void bc_on_close(pconn *c, int err)
{
    bconn *x = c->user;
    bench *b = x->b;
    if (x->state == BC_OPEN) b->open--;
    if (x->state == BC_CONNECTING || x->state == BC_HANDSHAKE) b->connecting--;
    if (!b->done && err) b->errors++;
    x->state = BC_DEAD;
    b->dead++;
    ws_parser_free(&x->wp);
    if (b->done && b->dead == b->conns) uv_close((uv_handle_t *)&b->timer, NULL);
}

static const pconn_cbs bc_cbs = {
    .on_data = bc_on_data, .on_connect = bc_on_connect, .on_close = bc_on_close};

static void on_phase(uv_timer_t *t)
{
    bench *b = t->data;
    if (b->phase == 0) {
        if (b->open == 0 && b->connecting > 0) {
            /* Still connecting: wait for the load to start. */
            uv_timer_start(&b->timer, on_phase, 100, 0);
            return;
        }
        b->phase = 1;
        b->measuring = true;
        b->t_start = ptime_ns();
        uv_timer_start(&b->timer, on_phase, (uint64_t)(b->duration_s * 1000), 0);
        return;
    }
    b->measuring = false;
    b->done = true;
    b->t_end = ptime_ns();
    for (unsigned i = 0; i < b->conns; i++)
        if (b->bc[i].state != BC_DEAD) pconn_close(&b->bc[i].c, false, 0);
    if (b->dead == b->conns) uv_close((uv_handle_t *)&b->timer, NULL);
}

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

static void on_idle_phase(uv_timer_t *t)
{
    bench *b = t->data;
    if (b->phase == 0) {
        if (b->connecting > 0) {
            uv_timer_start(&b->timer, on_idle_phase, 100, 0);
            return;
        }
        /* Everyone is connected (or failed): hold, heartbeats running. */
        b->phase = 1;
        b->t_start = ptime_ns();
        uv_timer_start(&b->timer, on_idle_phase, (uint64_t)(b->hold_s * 1000), 0);
        return;
    }
    b->rss_after = read_rss(b->pid);
    b->t_end = ptime_ns();
    b->done = true;
    for (unsigned i = 0; i < b->conns; i++)
        if (b->bc[i].state != BC_DEAD) pconn_close(&b->bc[i].c, false, 0);
    if (b->dead == b->conns) uv_close((uv_handle_t *)&b->timer, NULL);
}

static int build_frames(bench *b)
{
    uint8_t mask[4];
    if (prand_bytes(mask, 4) != 0) return PARLEY_EIO;
    uint8_t *payload = malloc(b->size ? b->size : 1);
    if (!payload) return PARLEY_ENOMEM;
    for (size_t i = 0; i < b->size; i++) payload[i] = (uint8_t)('a' + i % 26);
    pbuf out = {0};
    int rc = 0;
    for (unsigned k = 0; k < b->pipeline && rc == 0; k++)
        rc = ws_frame_append(&out, WS_OP_BINARY, true, false, payload, b->size, mask);
    free(payload);
    b->batch = out.ptr;
    b->batch_len = out.len;
    if (rc) return rc;
    char key[25];
    if (ws_client_key(key) != 0) return PARLEY_EIO;
    pbuf req = {0};
    rc = ws_write_client_request(&req, b->url.host_header, b->url.target, key, NULL, 0, NULL, NULL,
                                 0);
    b->request = req.ptr;
    b->request_len = req.len;
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: parley bench ws-echo|idle [options]\n"
               "  --url URL            ws://HOST:PORT/PATH of an echo endpoint (loopback only)\n"
               "  --connections N      concurrent connections (default 100)\n"
               "  --size BYTES         payload size (default 20)\n"
               "  --pipeline K         frames per write, awaited together (default 1)\n"
               "  --duration SECONDS   measured time (default 5)\n"
               "  --warmup SECONDS     unmeasured time first (default 1)\n"
               "  --json               one JSON object instead of the table\n"
               "idle only:\n"
               "  --pid PID            the server process whose RSS is measured (required)\n"
               "  --hold SECONDS       how long connections are held (default 5)\n");
}

static bool is_loopback(const char *host)
{
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0 ||
           strcmp(host, "localhost") == 0;
}

static int run(int argc, char **argv, bool idle)
{
    static bench b; /* large (histogram): not on the stack */
    memset(&b, 0, sizeof b);
    b.idle = idle;
    b.hold_s = 5;
    b.conns = 100;
    b.pipeline = 1;
    b.size = 20;
    b.duration_s = 5;
    b.warmup_s = 1;
    const char *url = NULL;
    static const struct option longopts[] = {
        {"url", required_argument, 0, 'u'},      {"connections", required_argument, 0, 'c'},
        {"size", required_argument, 0, 's'},     {"pipeline", required_argument, 0, 'k'},
        {"duration", required_argument, 0, 'd'}, {"warmup", required_argument, 0, 'w'},
        {"json", no_argument, 0, 'j'},           {"help", no_argument, 0, 'h'},
        {"pid", required_argument, 0, 'p'},      {"hold", required_argument, 0, 'o'},
        {0, 0, 0, 0},
    };
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'u': url = optarg; break;
        case 'c': b.conns = (unsigned)strtoul(optarg, NULL, 10); break;
        case 's': b.size = strtoul(optarg, NULL, 10); break;
        case 'k': b.pipeline = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'd': b.duration_s = strtod(optarg, NULL); break;
        case 'w': b.warmup_s = strtod(optarg, NULL); break;
        case 'j': b.json = true; break;
        case 'p': b.pid = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'o': b.hold_s = strtod(optarg, NULL); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!url || b.conns == 0 || b.conns > 100000 || b.pipeline == 0 || b.pipeline > 4096 ||
        b.duration_s <= 0 || b.warmup_s < 0 || b.size > (16u << 20) ||
        (idle && (b.pid == 0 || b.hold_s <= 0))) {
        usage(stderr);
        return 2;
    }
    if (purl_parse(url, &b.url) != 0 || strcmp(b.url.scheme, "ws") != 0) {
        fprintf(stderr, "bench: --url must be ws://...\n");
        return 2;
    }
    if (!is_loopback(b.url.host)) {
        fprintf(stderr, "bench: targets must be on loopback\n");
        return 2;
    }
    if (build_frames(&b) != 0) return 1;
    b.loop = parley_loop_new();
    b.bc = pcalloc(b.conns, sizeof *b.bc);
    if (!b.loop || !b.bc) return 1;
    for (unsigned i = 0; i < b.conns; i++) {
        bconn *x = &b.bc[i];
        x->b = &b;
        pconn_init(&x->c, b.loop, &bc_cbs, x, 0);
        ws_parser_init(&x->wp, false);
        x->state = BC_CONNECTING;
        b.connecting++;
        if (pconn_connect(&x->c, b.url.host, b.url.port, NULL, 10000) != 0) {
            fprintf(stderr, "bench: cannot start connection %u\n", i);
            pconn_close(&x->c, false, PARLEY_EIO);
        }
    }
    uv_timer_init(b.loop->uv, &b.timer);
    b.timer.data = &b;
    if (idle) {
        b.rss_before = read_rss(b.pid);
        if (b.rss_before < 0) {
            fprintf(stderr, "bench: cannot read /proc/%u/status\n", b.pid);
            return 1;
        }
        uv_timer_start(&b.timer, on_idle_phase, 100, 0);
    } else {
        uv_timer_start(&b.timer, on_phase, (uint64_t)(b.warmup_s * 1000), 0);
    }
    parley_loop_run(b.loop);
    if (idle) {
        unsigned held = b.conns - (unsigned)b.errors;
        double per = held ? (double)(b.rss_after - b.rss_before) / held : 0;
        if (b.json)
            printf("{\"scenario\":\"idle\",\"url\":\"%s\",\"connections\":%u,\"held\":%u,"
                   "\"hold_s\":%.1f,\"pings_answered\":%llu,\"rss_before\":%ld,"
                   "\"rss_after\":%ld,\"bytes_per_connection\":%.0f,\"errors\":%llu}\n",
                   url, b.conns, held, b.hold_s, (unsigned long long)b.pings, b.rss_before,
                   b.rss_after, per, (unsigned long long)b.errors);
        else
            printf("idle %s: %u connections held %.1f s (%llu pings answered)\n"
                   "  server RSS %ld -> %ld bytes: %.0f bytes per connection\n"
                   "  errors: %llu\n",
                   url, held, b.hold_s, (unsigned long long)b.pings, b.rss_before, b.rss_after,
                   per, (unsigned long long)b.errors);
        free(b.bc);
        free(b.batch);
        free(b.request);
        parley_loop_free(b.loop);
        return b.errors ? 1 : 0;
    }

    double secs = (double)(b.t_end - b.t_start) / 1e9;
    double rate = secs > 0 ? (double)b.msgs / secs : 0;
    double us = 1e-3;
    if (b.json) {
        printf("{\"scenario\":\"ws-echo\",\"url\":\"%s\",\"connections\":%u,\"size\":%zu,"
               "\"pipeline\":%u,\"seconds\":%.3f,\"messages\":%llu,\"msg_per_s\":%.0f,"
               "\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f,\"errors\":%llu}\n",
               url, b.conns, b.size, b.pipeline, secs, (unsigned long long)b.msgs, rate,
               (double)hist_pct(&b.lat, 50) * us, (double)hist_pct(&b.lat, 99) * us,
               (double)b.lat.max * us, (unsigned long long)b.errors);
    } else {
        printf("ws-echo %s: %u connections, %zu-byte messages, %u per write, %.1f s\n", url,
               b.conns, b.size, b.pipeline, secs);
        printf("  %-12s %14s\n", "messages/s", "");
        printf("  %-12.0f\n", rate);
        printf("  latency (round trip of a batch): p50 %.1f us, p99 %.1f us, max %.1f us\n",
               (double)hist_pct(&b.lat, 50) * us, (double)hist_pct(&b.lat, 99) * us,
               (double)b.lat.max * us);
        printf("  errors: %llu\n", (unsigned long long)b.errors);
    }
    free(b.bc);
    free(b.batch);
    free(b.request);
    parley_loop_free(b.loop);
    return b.errors ? 1 : 0;
}

int bench_main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "ws-echo")) return run(argc - 1, argv + 1, false);
    if (!strcmp(argv[1], "idle")) return run(argc - 1, argv + 1, true);
    fprintf(stderr, "bench: unknown scenario '%s'\n", argv[1]);
    return 2;
}
