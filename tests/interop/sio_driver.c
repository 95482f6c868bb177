/*
 * sio_driver: the libparley Socket.IO client driven by the interop tests
 * (tests/interop/sio_driver.test.mjs and friends). Commands arrive on
 * stdin, one JSON object per line, and are executed from this (main)
 * thread, so every call also exercises the client's cross-thread path;
 * everything the client reports is printed on stdout, one JSON object per
 * line, from the client's loop thread. Binary values travel as base64.
 *
 * Commands: new, socket, auth, connect, close, sock_connect,
 * sock_disconnect, emit, ack, send, stats, counts, info, free, exit (see
 * the handlers below for their fields).
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/util.h"
#include "codec/json.h"
#include "parley/client.h"

#define MAX_SOCKS 16

typedef struct dsock {
    char nsp[257];
    parley_sock *s;
    char *auth; /* JSON object or NULL */
} dsock;

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static parley_client *client;
static dsock socks[MAX_SOCKS];
static int nsocks;
static bool client_started; /* the `connect` command ran */
static pthread_mutex_t auth_mu = PTHREAD_MUTEX_INITIALIZER;

/* ---- output ---- */

static void out_line(pbuf *b)
{
    pbuf_append(b, "\n", 1);
    pthread_mutex_lock(&out_mu);
    fwrite(b->ptr, 1, b->len, stdout);
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);
    pbuf_free(b);
}

static void jstr(pbuf *b, const char *s)
{
    if (!s) {
        pbuf_append_str(b, "null");
        return;
    }
    if (json_append_string(b, s, strlen(s)) != 0) pbuf_append_str(b, "\"<invalid utf-8>\"");
}

static void jbins(pbuf *b, const parley_bin *bins, size_t n)
{
    pbuf_append(b, "[", 1);
    for (size_t i = 0; i < n; i++) {
        if (i) pbuf_append(b, ",", 1);
        char *enc = malloc(base64_encoded_len(bins[i].len) + 1);
        base64_encode(bins[i].data, bins[i].len, enc);
        pbuf_appendf(b, "\"%s\"", enc);
        free(enc);
    }
    pbuf_append(b, "]", 1);
}

static const char *nsp_of(parley_sock *s)
{
    for (int i = 0; i < nsocks; i++)
        if (socks[i].s == s) return socks[i].nsp;
    return "?";
}

/* ---- callbacks (loop thread) ---- */

static const char *const ev_names[] = {"",      "CONNECTING",   "OPEN",        "UPGRADE",
                                       "CLOSE", "RECONNECTING", "RECONNECTED", "RECONNECT_FAILED",
                                       "ERROR"};

static void on_client_event(parley_client *c, const parley_client_event *ev, void *user)
{
    (void)c;
    (void)user;
    pbuf b = {0};
    pbuf_appendf(&b, "{\"ev\":\"client\",\"type\":\"%s\",\"reason\":", ev_names[ev->type]);
    jstr(&b, ev->reason);
    pbuf_appendf(&b,
                 ",\"err\":%d,\"status\":%d,\"attempt\":%u,\"delay\":%u,\"transport\":", ev->err,
                 ev->http_status, ev->attempt, ev->delay_ms);
    jstr(&b, ev->transport);
    pbuf_append(&b, "}", 1);
    out_line(&b);
}

static char *auth_cb(parley_sock *s, void *user)
{
    dsock *d = user;
    (void)s;
    pthread_mutex_lock(&auth_mu);
    char *a = d->auth ? strdup(d->auth) : NULL;
    pthread_mutex_unlock(&auth_mu);
    return a;
}

static void on_connect(parley_sock *s, int recovered, void *user)
{
    dsock *d = user;
    char id[32];
    parley_sock_id(s, id);
    pbuf b = {0};
    pbuf_append_str(&b, "{\"ev\":\"connect\",\"nsp\":");
    jstr(&b, d->nsp);
    pbuf_appendf(&b, ",\"recovered\":%s,\"id\":", recovered ? "true" : "false");
    jstr(&b, id);
    pbuf_append(&b, "}", 1);
    out_line(&b);
}

static void on_disconnect(parley_sock *s, const char *reason, void *user)
{
    (void)s;
    dsock *d = user;
    pbuf b = {0};
    pbuf_append_str(&b, "{\"ev\":\"disconnect\",\"nsp\":");
    jstr(&b, d->nsp);
    pbuf_append_str(&b, ",\"reason\":");
    jstr(&b, reason);
    pbuf_append(&b, "}", 1);
    out_line(&b);
}

static void on_connect_error(parley_sock *s, const char *message, const char *data, void *user)
{
    (void)s;
    dsock *d = user;
    pbuf b = {0};
    pbuf_append_str(&b, "{\"ev\":\"connect_error\",\"nsp\":");
    jstr(&b, d->nsp);
    pbuf_append_str(&b, ",\"message\":");
    jstr(&b, message);
    pbuf_appendf(&b, ",\"data\":%s}", data ? data : "null");
    out_line(&b);
}

static void on_any(parley_sock *s, const char *event, const parley_args *a, int64_t ack_id,
                   void *user)
{
    dsock *d = user;
    (void)s;
    pbuf b = {0};
    pbuf_append_str(&b, "{\"ev\":\"event\",\"nsp\":");
    jstr(&b, d->nsp);
    pbuf_append_str(&b, ",\"event\":");
    jstr(&b, event);
    pbuf_append_str(&b, ",\"args\":");
    pbuf_append(&b, a->json, a->json_len);
    pbuf_append_str(&b, ",\"bins\":");
    jbins(&b, a->bins, a->nbins);
    pbuf_appendf(&b, ",\"ack\":%lld}", (long long)ack_id);
    out_line(&b);
}

typedef struct ack_tag {
    char tag[64];
} ack_tag;

static void on_ack(parley_sock *s, int err, const parley_args *a, void *user)
{
    ack_tag *t = user;
    pbuf b = {0};
    pbuf_append_str(&b, "{\"ev\":\"ack\",\"nsp\":");
    jstr(&b, nsp_of(s));
    pbuf_append_str(&b, ",\"tag\":");
    jstr(&b, t->tag);
    pbuf_appendf(&b, ",\"err\":%d,\"args\":", err);
    if (a)
        pbuf_append(&b, a->json, a->json_len);
    else
        pbuf_append_str(&b, "null");
    pbuf_append_str(&b, ",\"bins\":");
    jbins(&b, a ? a->bins : NULL, a ? a->nbins : 0);
    pbuf_append(&b, "}", 1);
    out_line(&b);
    free(t);
}

static void on_status(parley_sock *s, const char *id, int status, int err, const parley_args *a,
                      void *user)
{
    (void)user;
    pbuf b = {0};
    pbuf_append_str(&b, "{\"ev\":\"status\",\"nsp\":");
    jstr(&b, nsp_of(s));
    pbuf_append_str(&b, ",\"id\":");
    jstr(&b, id);
    pbuf_appendf(&b, ",\"status\":%d,\"err\":%d,\"args\":", status, err);
    if (a)
        pbuf_append(&b, a->json, a->json_len);
    else
        pbuf_append_str(&b, "null");
    pbuf_append(&b, "}", 1);
    out_line(&b);
}

static void on_count(const char *event, uint64_t in, uint64_t out, void *user)
{
    pbuf *b = user;
    if (b->ptr[b->len - 1] != '{') pbuf_append(b, ",", 1);
    jstr(b, event);
    pbuf_appendf(b, ":[%llu,%llu]", (unsigned long long)in, (unsigned long long)out);
}

/* ---- command helpers ---- */

static bool get(const json_val *o, const char *k, json_val *v)
{
    return json_object_get(o, k, v) && v->type != JSON_NULL;
}

static char *get_str(const json_val *o, const char *k)
{
    json_val v;
    if (!get(o, k, &v) || v.type != JSON_STRING) return NULL;
    char *s = malloc(v.len);
    long n = json_string_decode(&v, s, v.len - 1);
    if (n < 0) {
        free(s);
        return NULL;
    }
    s[n] = 0;
    return s;
}

static long long get_int(const json_val *o, const char *k, long long def)
{
    json_val v;
    int64_t x;
    if (!get(o, k, &v)) return def;
    if (v.type == JSON_TRUE) return 1;
    if (v.type == JSON_FALSE) return 0;
    return json_int(&v, &x) ? x : def;
}

static char *get_json(const json_val *o, const char *k)
{
    json_val v;
    if (!get(o, k, &v)) return NULL;
    pbuf b = {0};
    json_compact(&b, &v);
    pbuf_append(&b, "", 1);
    return (char *)b.ptr;
}

/* bins: an array of base64 strings. */
static size_t get_bins(const json_val *o, parley_bin *bins, uint8_t **store, size_t max)
{
    json_val arr, e;
    size_t n = 0;
    if (!get(o, "bins", &arr) || arr.type != JSON_ARRAY) return 0;
    json_iter it;
    json_iter_init(&it, &arr);
    while (n < max && json_array_next(&it, &e)) {
        char *txt = malloc(e.len);
        long tl = json_string_decode(&e, txt, e.len - 1);
        store[n] = malloc((size_t)(tl > 0 ? tl : 1));
        long dl =
            tl >= 0 ? base64_decode(txt, (size_t)tl, store[n], (size_t)(tl > 0 ? tl : 1)) : -1;
        free(txt);
        bins[n] = (parley_bin){store[n], dl > 0 ? (size_t)dl : 0};
        n++;
    }
    return n;
}

static dsock *find_sock(const json_val *o)
{
    char *nsp = get_str(o, "nsp");
    const char *want = nsp ? nsp : "/";
    dsock *d = NULL;
    for (int i = 0; i < nsocks; i++)
        if (!strcmp(socks[i].nsp, want)) d = &socks[i];
    free(nsp);
    return d;
}

static void reply(const char *cmd, int rc)
{
    pbuf b = {0};
    pbuf_appendf(&b, "{\"ev\":\"done\",\"cmd\":\"%s\",\"rc\":%d}", cmd, rc);
    out_line(&b);
}

static int cmd_new(const json_val *o)
{
    parley_client_opts co;
    parley_client_opts_init(&co);
    char *url = get_str(o, "url");
    char *path = get_str(o, "path");
    char *query = get_str(o, "query");
    char *tr = get_str(o, "transports");
    char *proxy = get_str(o, "proxy");
    co.url = url;
    co.proxy = proxy;
    if (path) co.path = path;
    co.query = query;
    if (tr && !strcmp(tr, "polling")) co.transports = PARLEY_TRANSPORT_POLLING;
    if (tr && !strcmp(tr, "websocket")) co.transports = PARLEY_TRANSPORT_WEBSOCKET;
    co.websocket_first = (int)get_int(o, "ws_first", 0);
    co.upgrade = (int)get_int(o, "upgrade", 1);
    co.reconnection = (int)get_int(o, "reconnection", 1);
    co.reconnection_delay_ms = (uint32_t)get_int(o, "delay", 1000);
    co.reconnection_delay_max_ms = (uint32_t)get_int(o, "delay_max", 5000);
    co.reconnection_attempts = (unsigned)get_int(o, "attempts", 0);
    co.timeout_ms = (uint32_t)get_int(o, "timeout", 20000);
    co.auto_connect = 0;
    co.insecure = (int)get_int(o, "insecure", 0);
    co.permessage_deflate = (int)get_int(o, "compression", 1);
    co.compression_threshold = (size_t)get_int(o, "compression_threshold", 1024);
    co.on_event = on_client_event;
    int rc = parley_client_new(&co, &client);
    free(url);
    free(path);
    free(query);
    free(tr);
    free(proxy);
    return rc;
}

static int cmd_socket(const json_val *o)
{
    if (!client || nsocks == MAX_SOCKS) return PARLEY_ESTATE;
    dsock *d = &socks[nsocks];
    char *nsp = get_str(o, "nsp");
    snprintf(d->nsp, sizeof d->nsp, "%s", nsp ? nsp : "/");
    free(nsp);
    d->auth = get_json(o, "auth");
    char *qp = get_str(o, "queue_path");
    parley_sock_opts so;
    parley_sock_opts_init(&so);
    so.auth = auth_cb;
    so.on_connect = on_connect;
    so.on_disconnect = on_disconnect;
    so.on_connect_error = on_connect_error;
    so.user = d;
    so.queue_path = qp;
    /* Handlers first, then CONNECT: the server greets right after it.
     * Before the `connect` command the client is not running, so a socket
     * made then can join by itself when it starts. */
    so.auto_connect = !client_started;
    nsocks++;
    d->s = parley_client_socket(client, d->nsp, &so);
    free(qp);
    if (!d->s) {
        nsocks--;
        return PARLEY_EINVAL;
    }
    if (parley_sock_on_any(d->s, on_any, d) <= 0) return PARLEY_ENOMEM;
    return client_started ? parley_sock_connect(d->s) : 0;
}

static int cmd_emit(const json_val *o, dsock *d)
{
    char *event = get_str(o, "event");
    char *args = get_json(o, "args");
    parley_bin bins[16];
    uint8_t *store[16];
    size_t nb = get_bins(o, bins, store, 16);
    long long timeout = get_int(o, "ack_timeout", -1);
    int rc;
    if (get_int(o, "volatile", 0)) {
        rc = parley_sock_emit_volatile(d->s, event, args, bins, nb);
    } else if (timeout >= 0) {
        ack_tag *t = calloc(1, sizeof *t);
        char *tag = get_str(o, "tag");
        snprintf(t->tag, sizeof t->tag, "%s", tag ? tag : "");
        free(tag);
        rc = parley_sock_emit_ack(d->s, event, args, bins, nb, (uint32_t)timeout, on_ack, t);
        if (rc) free(t);
    } else {
        rc = parley_sock_emit(d->s, event, args, bins, nb);
    }
    for (size_t i = 0; i < nb; i++) free(store[i]);
    free(event);
    free(args);
    return rc;
}

static void run(const char *line, size_t len)
{
    json_val o;
    if (json_parse(line, len, 64, &o, NULL) != 0 || o.type != JSON_OBJECT) {
        reply("?", PARLEY_EINVAL);
        return;
    }
    char *cmd = get_str(&o, "cmd");
    if (!cmd) {
        reply("?", PARLEY_EINVAL);
        return;
    }
    int rc = 0;
    dsock *d = find_sock(&o);
    if (!strcmp(cmd, "new")) {
        rc = cmd_new(&o);
    } else if (!strcmp(cmd, "exit")) {
        free(cmd);
        if (client) parley_client_free(client);
        for (int i = 0; i < nsocks; i++) free(socks[i].auth);
        reply("exit", 0);
        exit(0);
    } else if (!client) {
        rc = PARLEY_ESTATE;
    } else if (!strcmp(cmd, "socket")) {
        rc = cmd_socket(&o);
    } else if (!strcmp(cmd, "connect")) {
        client_started = true;
        rc = parley_client_connect(client);
    } else if (!strcmp(cmd, "close")) {
        rc = parley_client_close(client);
    } else if (!strcmp(cmd, "free")) {
        parley_client_free(client);
        client = NULL;
        nsocks = 0;
        client_started = false;
    } else if (!strcmp(cmd, "stats")) {
        parley_client_stats st;
        parley_client_get_stats(client, &st);
        pbuf b = {0};
        pbuf_appendf(
            &b,
            "{\"ev\":\"stats\",\"connects\":%llu,\"reconnects\":%llu,\"errors\":%llu,"
            "\"packets_in\":%llu,\"packets_out\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,"
            "\"uptime_ms\":%llu,\"total_uptime_ms\":%llu,\"last_rtt_ms\":%u,\"transport\":",
            (unsigned long long)st.connects, (unsigned long long)st.reconnects,
            (unsigned long long)st.errors, (unsigned long long)st.packets_in,
            (unsigned long long)st.packets_out, (unsigned long long)st.bytes_in,
            (unsigned long long)st.bytes_out, (unsigned long long)st.uptime_ms,
            (unsigned long long)st.total_uptime_ms, st.last_rtt_ms);
        jstr(&b, parley_client_transport(client));
        pbuf_append(&b, "}", 1);
        out_line(&b);
    } else if (!d) {
        rc = PARLEY_EINVAL;
    } else if (!strcmp(cmd, "auth")) {
        pthread_mutex_lock(&auth_mu);
        free(d->auth);
        d->auth = get_json(&o, "auth");
        pthread_mutex_unlock(&auth_mu);
    } else if (!strcmp(cmd, "sock_connect")) {
        rc = parley_sock_connect(d->s);
    } else if (!strcmp(cmd, "sock_disconnect")) {
        rc = parley_sock_disconnect(d->s);
    } else if (!strcmp(cmd, "emit")) {
        rc = cmd_emit(&o, d);
    } else if (!strcmp(cmd, "ack")) {
        char *args = get_json(&o, "args");
        parley_bin bins[16];
        uint8_t *store[16];
        size_t nb = get_bins(&o, bins, store, 16);
        rc = parley_sock_ack(d->s, get_int(&o, "id", -1), args, bins, nb);
        for (size_t i = 0; i < nb; i++) free(store[i]);
        free(args);
    } else if (!strcmp(cmd, "send")) {
        char *event = get_str(&o, "event");
        char *args = get_json(&o, "args");
        char *id = get_str(&o, "id");
        rc = parley_sock_send(d->s, event, args, (int)get_int(&o, "priority", 1),
                              (uint32_t)get_int(&o, "ttl", 0), id, on_status, NULL);
        free(event);
        free(args);
        free(id);
    } else if (!strcmp(cmd, "counts")) {
        pbuf b = {0};
        pbuf_append_str(&b, "{\"ev\":\"counts\",\"counts\":{");
        parley_sock_event_counts(d->s, on_count, &b);
        pbuf_append_str(&b, "}}");
        out_line(&b);
    } else if (!strcmp(cmd, "info")) {
        char id[32];
        parley_sock_id(d->s, id);
        pbuf b = {0};
        pbuf_appendf(&b,
                     "{\"ev\":\"info\",\"connected\":%s,\"recovered\":%s,\"queued\":%zu,\"id\":",
                     parley_sock_connected(d->s) ? "true" : "false",
                     parley_sock_recovered(d->s) ? "true" : "false", parley_sock_queued(d->s));
        jstr(&b, id);
        pbuf_append(&b, "}", 1);
        out_line(&b);
    } else {
        rc = PARLEY_EINVAL;
    }
    reply(cmd, rc);
    free(cmd);
}

int main(void)
{
    if (getenv("SIO_DRIVER_LOG")) parley_log_set(PARLEY_LOG_DEBUG, NULL, NULL);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
        if (n) run(line, (size_t)n);
    }
    free(line);
    if (client) parley_client_free(client);
    for (int i = 0; i < nsocks; i++) free(socks[i].auth);
    return 0;
}
