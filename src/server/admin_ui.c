/*
 * The Socket.IO Admin UI namespace (protocol of npm @socket.io/admin-ui
 * 0.5.x), written from the wire behaviour of that package's server: what
 * it sends (config, server_stats, all_sockets, socket_connected,
 * socket_updated, socket_disconnected, room_joined, room_left) and the
 * actions its UI emits (join, leave, _disconnect).
 *
 * Memory: nothing is kept per admin besides its socket; per session the
 * server keeps the handshake record (at most ADMIN_HS_MAX bytes plus the
 * address). Aggregated event counters live in a fixed array of buckets,
 * filled only while an admin is connected. all_sockets is capped
 * (max_sockets, max_bytes, max_rooms per socket).
 */
#include "server/admin_ui.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "base/log.h"
#include "base/ratelimit.h"
#include "base/util.h"
#include "codec/json.h"
#include "codec/utf8.h"
#include "net/net.h"
#include "server/sio_internal.h"

#define MAX_CRED   1024 /* bytes of a username or password */
#define MAX_NAME   256  /* namespace, room and filter names */
#define AGG_SLOTS  64
#define URL_MAX    512
#define HDR_VAL_MAX 1024
#define QUERY_MAX  64 /* query parameters looked at (the duplicate check is quadratic) */

enum { AGG_RAW_CONN, AGG_RAW_DISC, AGG_PKT_IN, AGG_PKT_OUT, AGG_BYTES_IN, AGG_BYTES_OUT };
static const char *const agg_names[] = {"rawConnection", "rawDisconnection", "packetsIn",
                                        "packetsOut",    "bytesIn",          "bytesOut"};

typedef struct agg_slot {
    int64_t ts; /* ms, whole seconds */
    uint8_t type;
    const char *sub; /* static string or NULL */
    uint64_t count;
} agg_slot;

struct admin_ui {
    parley_server *srv;
    parley_loop *loop;
    parley_nsp *nsp;
    admin_ui_opts o;
    char *nsp_name;
    char *server_id;
    char hostname[256];
    uint64_t started; /* monotonic ms */
    ptimer stats;
    bool stats_on;
    pbuf out;
    pdefer kick; /* disconnects admins marked as backlogged */
    agg_slot agg[AGG_SLOTS];
    size_t nagg;
    plog_limit log_refused;
};

/* ---- helpers ---- */

static int64_t wall_ms(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void admin_iso_time(char out[25], int64_t ms)
{
    time_t secs = (time_t)(ms / 1000);
    int msec = (int)(ms % 1000);
    if (msec < 0) {
        msec += 1000;
        secs--;
    }
    struct tm tm;
    gmtime_r(&secs, &tm);
    if (strftime(out, 20, "%Y-%m-%dT%H:%M:%S", &tm) != 19) {
        memcpy(out, "1970-01-01T00:00:00", 20); /* years beyond 9999 */
    }
    out[19] = '.';
    out[20] = (char)('0' + msec / 100);
    out[21] = (char)('0' + msec / 10 % 10);
    out[22] = (char)('0' + msec % 10);
    out[23] = 'Z';
    out[24] = 0;
}

/* new Date().toString() of a process in UTC. */
static void js_time(char *out, size_t cap, int64_t ms)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    strftime(out, cap, "%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)", &tm);
}

int admin_json_lossy(pbuf *out, const char *s, size_t len)
{
    if (utf8_valid((const uint8_t *)s, len)) return json_append_string(out, s, len);
    pbuf tmp = {0};
    int rc = pbuf_append(&tmp, s, len);
    for (size_t i = 0; rc == 0 && i < len; i++)
        if (tmp.ptr[i] >= 0x80) tmp.ptr[i] = '?';
    if (rc == 0) rc = json_append_string(out, (const char *)tmp.ptr, len);
    pbuf_free(&tmp);
    return rc;
}

static bool in_list(const char *const *list, const char *name, size_t len)
{
    for (; *list; list++)
        if (pstr_ieqz(name, len, *list)) return true;
    return false;
}

bool admin_header_secret(const char *name, size_t len)
{
    static const char *const secret[] = {"authorization", "proxy-authorization", "cookie",
                                         "x-api-key", "x-auth-token", NULL};
    return in_list(secret, name, len);
}

bool admin_query_secret(const char *name, size_t len)
{
    static const char *const secret[] = {"token", "access_token", "auth", "jwt", "key", "apikey",
                                         "api_key", "password", "sid", NULL};
    return in_list(secret, name, len);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes a query component (%XX, '+' as space) into out; a malformed
 * escape stays as it is. */
static void query_decode(const char *s, size_t len, pbuf *out)
{
    out->len = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%' && i + 2 < len + 0 && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            c = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        }
        if (pbuf_append(out, &c, 1) != 0) return;
    }
}

/* Appends `"key":value` to an object under construction in out when the
 * object (without its closing brace) stays within `limit` bytes from
 * `start`; otherwise leaves out as it was. Returns 0 or an error. */
static int member_within(pbuf *out, size_t start, size_t limit, bool *first, const char *key,
                         size_t klen, const char *val, size_t vlen, bool secret)
{
    size_t mark = out->len;
    int rc = *first ? 0 : pbuf_append(out, ",", 1);
    if (rc == 0) rc = admin_json_lossy(out, key, klen);
    if (rc == 0) rc = pbuf_append(out, ":", 1);
    if (rc == 0)
        rc = secret ? pbuf_append_str(out, "\"[redacted]\"") : admin_json_lossy(out, val, vlen);
    if (rc == 0 && out->len - start > limit) {
        out->len = mark; /* does not fit: left out */
        return 0;
    }
    if (rc == 0) *first = false;
    return rc;
}

int admin_handshake_json(pbuf *out, const char *target, size_t target_len,
                         const http_header *headers, size_t nheaders, const char *peer_ip,
                         bool secure, int64_t now_ms)
{
    size_t start = out->len;
    /* Budget: what the fixed members take, then headers and query. */
    const size_t limit = ADMIN_HS_MAX;
    const char *q = memchr(target, '?', target_len);
    size_t path_len = q ? (size_t)(q - target) : target_len;
    const char *query = q ? q + 1 : "";
    size_t query_len = q ? target_len - path_len - 1 : 0;
    bool xdomain = false;
    for (size_t i = 0; i < nheaders; i++)
        if (pstr_ieqz(headers[i].name, headers[i].name_len, "origin")) xdomain = true;

    pbuf key = {0}, val = {0}, url = {0};
    int rc = pbuf_append_str(out, "{\"address\":");
    if (rc == 0) rc = admin_json_lossy(out, peer_ip, strlen(peer_ip));

    /* The url: the path and the query with secret values replaced, cut at
     * URL_MAX bytes. */
    if (rc == 0) rc = pbuf_append(&url, target, PARLEY_MIN(path_len, (size_t)URL_MAX));
    for (size_t i = 0, first = 1; rc == 0 && q && i <= query_len && url.len <= URL_MAX;
         first = 0) {
        const char *seg = query + i;
        const char *amp = memchr(seg, '&', query_len - i);
        size_t seg_len = amp ? (size_t)(amp - seg) : query_len - i;
        const char *eq = memchr(seg, '=', seg_len);
        size_t name_len = eq ? (size_t)(eq - seg) : seg_len;
        query_decode(seg, name_len, &key);
        rc = pbuf_append(&url, first ? "?" : "&", 1);
        if (rc == 0 && admin_query_secret((const char *)key.ptr, key.len)) {
            rc = pbuf_append(&url, seg, name_len);
            if (rc == 0) rc = pbuf_append_str(&url, "=[redacted]");
        } else if (rc == 0) {
            rc = pbuf_append(&url, seg, seg_len);
        }
        i += seg_len + 1;
    }
    /* The url as a JSON string, at most URL_MAX bytes escaped. */
    pbuf ujson = {0};
    if (url.len > URL_MAX) url.len = URL_MAX;
    while (rc == 0) {
        ujson.len = 0;
        rc = admin_json_lossy(&ujson, (const char *)url.ptr, url.len);
        if (rc || ujson.len <= URL_MAX + 2) break;
        url.len -= PARLEY_MIN(url.len, ujson.len - URL_MAX - 2);
    }
    /* What follows headers and query: issued, secure, time, url, xdomain
     * (names, punctuation, a 13-digit time, a 64-byte date). */
    size_t reserve = ujson.len + 200;

    /* Headers, lower-cased, first occurrence only. */
    if (rc == 0) rc = pbuf_append_str(out, ",\"headers\":{");
    size_t obj = out->len;
    bool first = true;
    /* Two thirds of what is left for the headers, the rest for the query. */
    size_t hdr_limit = limit > reserve + (obj - start) ? (limit - reserve - (obj - start)) * 2 / 3 : 0;
    for (size_t i = 0; rc == 0 && i < nheaders; i++) {
        const http_header *h = &headers[i];
        bool seen = false;
        for (size_t k = 0; k < i && !seen; k++)
            seen = pstr_ieq(headers[k].name, headers[k].name_len, h->name, h->name_len);
        if (seen || h->value_len > HDR_VAL_MAX) continue;
        key.len = 0;
        rc = pbuf_append(&key, h->name, h->name_len);
        for (size_t k = 0; rc == 0 && k < key.len; k++) key.ptr[k] = (uint8_t)tolower(key.ptr[k]);
        if (rc == 0)
            rc = member_within(out, obj, hdr_limit, &first, (const char *)key.ptr, key.len, h->value,
                               h->value_len, admin_header_secret(h->name, h->name_len));
    }
    if (rc == 0) rc = pbuf_append_str(out, "},\"query\":{");
    obj = out->len;
    first = true;
    size_t q_limit = limit > reserve + (obj - start) ? limit - reserve - (obj - start) : 0;
    unsigned nparams = 0;
    for (size_t i = 0; rc == 0 && q && i <= query_len && nparams < QUERY_MAX; nparams++) {
        const char *seg = query + i;
        const char *amp = memchr(seg, '&', query_len - i);
        size_t seg_len = amp ? (size_t)(amp - seg) : query_len - i;
        i += seg_len + 1;
        if (seg_len == 0) continue;
        const char *eq = memchr(seg, '=', seg_len);
        size_t name_len = eq ? (size_t)(eq - seg) : seg_len;
        query_decode(seg, name_len, &key);
        /* The first value of a repeated name only. */
        bool seen = false;
        for (const char *p = query; p < seg && !seen;) {
            const char *a2 = memchr(p, '&', (size_t)(seg - p));
            size_t l2 = a2 ? (size_t)(a2 - p) : (size_t)(seg - p);
            const char *e2 = memchr(p, '=', l2);
            size_t n2 = e2 ? (size_t)(e2 - p) : l2;
            query_decode(p, n2, &val);
            seen = l2 && val.len == key.len && memcmp(val.ptr, key.ptr, key.len) == 0;
            p += l2 + 1;
        }
        if (seen) continue;
        if (eq)
            query_decode(eq + 1, seg_len - name_len - 1, &val);
        else
            val.len = 0;
        rc = member_within(out, obj, q_limit, &first, (const char *)key.ptr, key.len,
                           val.len ? (const char *)val.ptr : "", val.len,
                           admin_query_secret((const char *)key.ptr, key.len));
    }
    char tbuf[80];
    js_time(tbuf, sizeof tbuf, now_ms);
    if (rc == 0)
        rc = pbuf_appendf(out, "},\"issued\":%lld,\"secure\":%s,\"time\":\"%s\",\"url\":",
                          (long long)now_ms, secure ? "true" : "false", tbuf);
    if (rc == 0) rc = pbuf_append(out, ujson.ptr, ujson.len);
    if (rc == 0) rc = pbuf_appendf(out, ",\"xdomain\":%s}", xdomain ? "true" : "false");
    pbuf_free(&ujson);
    pbuf_free(&key);
    pbuf_free(&val);
    pbuf_free(&url);
    if (rc) out->len = start;
    return rc;
}

/* ---- emitting to the admins ---- */

/* An admin socket's data: non-NULL once it is to be disconnected. */
static char BACKLOGGED;

/* Sends the arguments in a->out (a JSON array) as `event` to every admin,
 * except those whose client is not taking what it is sent (marked, and
 * disconnected when the iteration ends: not from inside a hook). */
static void emit_admins(admin_ui *a, const char *event)
{
    size_t pos = 0;
    parley_socket *s;
    while ((s = parley_nsp__socket_next(a->nsp, &pos))) {
        if (parley_socket_data(s)) continue;
        if (parley_socket__backlog(s) > a->o.max_backlog) {
            parley_socket_set_data(s, &BACKLOGGED);
            ploop_defer(a->loop, &a->kick);
            continue;
        }
        parley_emit__direct(s, event, (const char *)a->out.ptr, a->out.len);
    }
}

static void on_kick(pdefer *d)
{
    admin_ui *a = PARLEY_CONTAINER_OF(d, admin_ui, kick);
    for (;;) {
        size_t pos = 0;
        parley_socket *s, *found = NULL;
        while (!found && (s = parley_nsp__socket_next(a->nsp, &pos)))
            if (parley_socket_data(s)) found = s;
        if (!found) return;
        plog_warn("admin-ui: an admin from %s is not taking its events (over %zu bytes "
                  "queued): disconnected",
                  parley_socket__peer_ip(found), a->o.max_backlog);
        parley_disconnect(found, 1);
    }
}

static bool have_admins(const admin_ui *a)
{
    return parley_nsp__count(a->nsp) > 0;
}

static int append_str(pbuf *out, const char *s)
{
    return admin_json_lossy(out, s, strlen(s));
}

static int append_now(pbuf *out)
{
    char iso[25];
    admin_iso_time(iso, wall_ms());
    return pbuf_appendf(out, "\"%s\"", iso);
}

/* One socket as the Admin UI lists it. */
static int serialize(admin_ui *a, pbuf *out, parley_socket *s)
{
    const char *id = parley_socket_id(s);
    int rc = pbuf_appendf(out, "{\"id\":\"%s\",\"clientId\":\"%.12s\",\"transport\":\"%s\",\"nsp\":",
                          id, parley_socket__client_id(s), parley_socket_transport(s));
    if (rc == 0) rc = append_str(out, parley_nsp_name(parley_socket_nsp(s)));
    if (rc == 0) rc = pbuf_append_str(out, ",\"data\":{},\"handshake\":");
    size_t hl;
    const char *hs = parley_socket__handshake(s, &hl);
    if (rc == 0) rc = hs ? pbuf_append(out, hs, hl) : pbuf_append_str(out, "{}");
    if (rc == 0) rc = pbuf_appendf(out, ",\"rooms\":[\"%s\"", id);
    size_t n = parley_socket__nrooms(s);
    for (size_t i = 0; rc == 0 && i < n && i < a->o.max_rooms; i++) {
        size_t len;
        const char *r = parley_socket__room(s, i, &len);
        rc = pbuf_append(out, ",", 1);
        if (rc == 0) rc = admin_json_lossy(out, r, len);
    }
    if (rc == 0) rc = pbuf_append_str(out, "]}");
    return rc;
}

static void agg_push(admin_ui *a, uint8_t type, const char *sub, uint64_t count)
{
    if (!have_admins(a)) return;
    int64_t now = wall_ms();
    int64_t ts = now - now % 1000;
    for (size_t i = a->nagg; i-- > 0;) {
        agg_slot *g = &a->agg[i];
        if (g->ts != ts) break; /* slots are in time order */
        if (g->type == type && (g->sub == sub || (g->sub && sub && strcmp(g->sub, sub) == 0))) {
            g->count += count;
            return;
        }
    }
    if (a->nagg == AGG_SLOTS) return; /* full until the next server_stats */
    a->agg[a->nagg++] = (agg_slot){ts, type, sub, count};
}

static void emit_stats(admin_ui *a)
{
    pbuf *out = &a->out;
    out->len = 0;
    double uptime = (double)(ptime_ms() - a->started) / 1000.0;
    int rc = pbuf_append_str(out, "[{\"serverId\":");
    if (rc == 0) rc = append_str(out, a->server_id);
    if (rc == 0) rc = pbuf_append_str(out, ",\"hostname\":");
    if (rc == 0) rc = append_str(out, a->hostname);
    if (rc == 0)
        rc = pbuf_appendf(out,
                          ",\"pid\":%ld,\"uptime\":%.3f,\"clientsCount\":%u,"
                          "\"pollingClientsCount\":%u,\"aggregatedEvents\":[",
                          (long)getpid(), uptime, parley_server__clients(a->srv),
                          parley_server__polling_clients(a->srv));
    for (size_t i = 0; rc == 0 && i < a->nagg; i++) {
        const agg_slot *g = &a->agg[i];
        rc = pbuf_appendf(out, "%s{\"timestamp\":%lld,\"type\":\"%s\"", i ? "," : "",
                          (long long)g->ts, agg_names[g->type]);
        if (rc == 0 && g->sub) {
            rc = pbuf_append_str(out, ",\"subType\":");
            if (rc == 0) rc = append_str(out, g->sub);
        }
        if (rc == 0) rc = pbuf_appendf(out, ",\"count\":%llu}", (unsigned long long)g->count);
    }
    a->nagg = 0;
    if (rc == 0) rc = pbuf_append_str(out, "],\"namespaces\":[");
    size_t pos = 0;
    parley_nsp *n;
    bool first = true;
    while (rc == 0 && (n = parley_server__nsp_next(a->srv, &pos))) {
        rc = pbuf_appendf(out, "%s{\"name\":", first ? "" : ",");
        if (rc == 0) rc = append_str(out, parley_nsp_name(n));
        if (rc == 0) rc = pbuf_appendf(out, ",\"socketsCount\":%zu}", parley_nsp__count(n));
        first = false;
    }
    if (rc == 0) rc = pbuf_append_str(out, "]}]");
    if (rc == 0) emit_admins(a, "server_stats");
}

static void on_stats_timer(ptimer *t)
{
    admin_ui *a = PARLEY_CONTAINER_OF(t, admin_ui, stats);
    if (!have_admins(a)) {
        a->stats_on = false;
        return;
    }
    emit_stats(a);
    ploop_timer_start(a->loop, &a->stats, a->o.stats_interval_ms);
}

/* ---- observer ---- */

static int obs_handshake(const phttpd_req *req, const char *peer_ip, bool secure, pbuf *out,
                         void *user)
{
    (void)user;
    const http_head *h = req->head;
    if (!h) return PARLEY_EINVAL;
    return admin_handshake_json(out, h->target, h->target_len, h->headers, h->num_headers, peer_ip,
                                secure, wall_ms());
}

static void emit_room(admin_ui *a, parley_socket *s, const char *room, size_t len, bool joined);

static void obs_connected(parley_socket *s, void *user)
{
    admin_ui *a = user;
    if (!have_admins(a)) return;
    /* As the reference: the socket joins the room of its own id first. */
    const char *id = parley_socket_id(s);
    emit_room(a, s, id, strlen(id), true);
    pbuf *out = &a->out;
    out->len = 0;
    int rc = pbuf_append(out, "[", 1);
    if (rc == 0) rc = serialize(a, out, s);
    if (rc == 0) rc = pbuf_append(out, ",", 1);
    if (rc == 0) rc = append_now(out);
    if (rc == 0) rc = pbuf_append(out, "]", 1);
    if (rc == 0) emit_admins(a, "socket_connected");
}

/* [nsp, room, id, date] */
static void emit_room(admin_ui *a, parley_socket *s, const char *room, size_t len, bool joined)
{
    pbuf *out = &a->out;
    out->len = 0;
    int rc = pbuf_append(out, "[", 1);
    if (rc == 0) rc = append_str(out, parley_nsp_name(parley_socket_nsp(s)));
    if (rc == 0) rc = pbuf_append(out, ",", 1);
    if (rc == 0) rc = admin_json_lossy(out, room, len);
    if (rc == 0) rc = pbuf_appendf(out, ",\"%s\",", parley_socket_id(s));
    if (rc == 0) rc = append_now(out);
    if (rc == 0) rc = pbuf_append(out, "]", 1);
    if (rc == 0) emit_admins(a, joined ? "room_joined" : "room_left");
}

static void obs_gone(parley_socket *s, const char *reason, void *user)
{
    admin_ui *a = user;
    if (!have_admins(a)) return;
    pbuf *out = &a->out;
    out->len = 0;
    int rc = pbuf_append(out, "[", 1);
    if (rc == 0) rc = append_str(out, parley_nsp_name(parley_socket_nsp(s)));
    if (rc == 0) rc = pbuf_appendf(out, ",\"%s\",", parley_socket_id(s));
    if (rc == 0) rc = append_str(out, reason);
    if (rc == 0) rc = pbuf_append(out, ",", 1);
    if (rc == 0) rc = append_now(out);
    if (rc == 0) rc = pbuf_append(out, "]", 1);
    if (rc == 0) emit_admins(a, "socket_disconnected");
    /* As the reference: the rooms it leaves, its own last. */
    size_t n = parley_socket__nrooms(s);
    for (size_t i = 0; i < n && i < a->o.max_rooms; i++) {
        size_t len;
        const char *r = parley_socket__room(s, i, &len);
        emit_room(a, s, r, len, false);
    }
    const char *id = parley_socket_id(s);
    emit_room(a, s, id, strlen(id), false);
}

static void obs_room(parley_socket *s, const char *room, size_t len, bool joined, void *user)
{
    admin_ui *a = user;
    if (have_admins(a)) emit_room(a, s, room, len, joined);
}

static void obs_upgraded(parley_socket *s, void *user)
{
    admin_ui *a = user;
    if (!have_admins(a)) return;
    pbuf *out = &a->out;
    out->len = 0;
    int rc = pbuf_appendf(out, "[{\"id\":\"%s\",\"nsp\":", parley_socket_id(s));
    if (rc == 0) rc = append_str(out, parley_nsp_name(parley_socket_nsp(s)));
    if (rc == 0) rc = pbuf_append_str(out, ",\"transport\":\"websocket\"}]");
    if (rc == 0) emit_admins(a, "socket_updated");
}

static void obs_session(bool open, const char *reason, void *user)
{
    admin_ui *a = user;
    agg_push(a, open ? AGG_RAW_CONN : AGG_RAW_DISC, open ? NULL : reason, 1);
}

static void obs_traffic(bool out, size_t bytes, void *user)
{
    admin_ui *a = user;
    agg_push(a, out ? AGG_PKT_OUT : AGG_PKT_IN, NULL, 1);
    agg_push(a, out ? AGG_BYTES_OUT : AGG_BYTES_IN, NULL, bytes);
}

int admin_event_json(pbuf *out, const char *nsp, const char *id, const char *event,
                     size_t event_len, const char *args, size_t args_len, int64_t now_ms)
{
    size_t start = out->len;
    int rc = pbuf_append(out, "[", 1);
    if (rc == 0) rc = append_str(out, nsp);
    if (rc == 0) rc = pbuf_append(out, ",", 1);
    if (rc == 0) rc = append_str(out, id);
    if (rc == 0) rc = pbuf_append(out, ",[", 2);
    if (rc == 0) rc = admin_json_lossy(out, event, event_len);
    /* The elements of the array text, as they are (it is valid JSON). */
    const char *open = args_len ? memchr(args, '[', args_len) : NULL;
    const char *close = args_len ? args + args_len : NULL;
    while (close && close > args && close[-1] != ']') close--;
    bool empty = true;
    for (const char *p = open ? open + 1 : close; p && p < close - 1; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') empty = false;
    if (rc == 0 && open && close > open + 1 && !empty) {
        if (args_len > ADMIN_EVENT_MAX) {
            rc = pbuf_appendf(out, ",\"[%zu bytes not shown]\"", args_len);
        } else {
            rc = pbuf_append(out, ",", 1);
            if (rc == 0) rc = pbuf_append(out, open + 1, (size_t)(close - 1 - (open + 1)));
        }
    }
    char iso[25];
    admin_iso_time(iso, now_ms);
    if (rc == 0) rc = pbuf_appendf(out, "],\"%s\"]", iso);
    if (rc) out->len = start;
    return rc;
}

static void obs_event(parley_socket *s, bool outgoing, const char *event, size_t event_len,
                      const char *args, size_t args_len, void *user)
{
    admin_ui *a = user;
    if (!a->o.events || parley_socket_nsp(s) == a->nsp || !have_admins(a)) return;
    a->out.len = 0;
    if (admin_event_json(&a->out, parley_nsp_name(parley_socket_nsp(s)), parley_socket_id(s),
                         event, event_len, args, args_len, wall_ms()) == 0)
        emit_admins(a, outgoing ? "event_sent" : "event_received");
}

/* ---- the admin namespace ---- */

/* Decodes the string member `name` of auth into buf; absent is empty.
 * -1 when present and not a string, or too long. */
static long cred(const json_val *auth, const char *name, char *buf, size_t cap)
{
    json_val v;
    if (auth->type != JSON_OBJECT || !json_object_get(auth, name, &v)) return 0;
    if (v.type != JSON_STRING) return -1;
    return json_string_decode(&v, buf, cap);
}

static int admin_check(parley_socket *s, const char *auth, size_t auth_len,
                       parley_connect_error *err, void *user)
{
    admin_ui *a = user;
    json_val v = {.type = JSON_INVALID};
    if (auth && json_parse(auth, auth_len, 16, &v, NULL) != 0) v.type = JSON_INVALID;
    char *u = malloc(MAX_CRED), *p = malloc(MAX_CRED);
    long ul = u && p ? cred(&v, "username", u, MAX_CRED) : -1;
    long pl = ul >= 0 ? cred(&v, "password", p, MAX_CRED) : -1;
    const char *ip = parley_socket__peer_ip(s);
    bool ok = ul >= 0 && pl >= 0 &&
              a->o.authorize(u, (size_t)ul, p, (size_t)pl, ip, a->o.user) != 0;
    if (p) OPENSSL_cleanse(p, MAX_CRED);
    free(u);
    free(p);
    if (ok) return 0;
    /* The message the Admin UI recognises (it reopens its login form). */
    err->message = "invalid credentials";
    err->data_json = "{\"reason\":\"the admin namespace needs a valid username and password "
                     "(the admin key)\"}";
    uint64_t held;
    if (plog_limit_ok(&a->log_refused, ploop_now(a->loop), 10000, &held))
        plog_info("admin-ui: refused a CONNECT to %s from %s (%llu more since the last line)",
                  a->nsp_name, ip[0] ? ip : "?", (unsigned long long)held);
    return -1;
}

static void admin_connection(parley_socket *s, void *user)
{
    admin_ui *a = user;
    pbuf *out = &a->out;
    out->len = 0;
    static const char *const features[] = {"JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE",
                                           "MDISCONNECT"};
    int rc = pbuf_append_str(out, "[{\"supportedFeatures\":[");
    for (size_t i = 0; rc == 0 && !a->o.readonly && i < PARLEY_ARRAY_LEN(features); i++)
        rc = pbuf_appendf(out, "\"%s\",", features[i]);
    /* ALL_EVENTS puts the UI in its development mode (the sockets, rooms
     * and events pages); the events themselves are relayed only when the
     * embedder asked for it (opts.events). */
    if (rc == 0) rc = pbuf_append_str(out, "\"AGGREGATED_EVENTS\",\"ALL_EVENTS\"]}]");
    if (rc == 0) parley_emit__direct(s, "config", (const char *)out->ptr, out->len);

    out->len = 0;
    rc = pbuf_append(out, "[[", 2);
    size_t listed = 0, pos = 0;
    parley_nsp *n;
    while (rc == 0 && (n = parley_server__nsp_next(a->srv, &pos))) {
        size_t spos = 0;
        parley_socket *x;
        while (rc == 0 && listed < a->o.max_sockets && out->len < a->o.max_bytes &&
               (x = parley_nsp__socket_next(n, &spos))) {
            if (listed) rc = pbuf_append(out, ",", 1);
            if (rc == 0) rc = serialize(a, out, x);
            listed++;
        }
    }
    if (rc == 0) rc = pbuf_append(out, "]]", 2);
    if (rc == 0) parley_emit__direct(s, "all_sockets", (const char *)out->ptr, out->len);
    plog_info("admin-ui: an admin connected from %s (%zu sockets listed)",
              parley_socket__peer_ip(s), listed);
    emit_stats(a);
    if (!a->stats_on) {
        a->stats_on = true;
        ploop_timer_start(a->loop, &a->stats, a->o.stats_interval_ms);
    }
    if (a->out.cap > 65536) pbuf_free(&a->out); /* a big all_sockets is not kept */
}

static void admin_disconnect(parley_socket *s, const char *reason, void *user)
{
    (void)s;
    (void)reason;
    admin_ui *a = user;
    if (!have_admins(a) && a->stats_on) {
        ploop_timer_stop(a->loop, &a->stats);
        a->stats_on = false;
        a->nagg = 0;
    }
}

/* A string argument into buf (NUL-terminated): its length, or -1. */
static long str_arg(const json_val *v, char *buf, size_t cap)
{
    if (v->type != JSON_STRING) return -1;
    long n = json_string_decode(v, buf, cap - 1);
    if (n >= 0) buf[n] = 0;
    return n;
}

static parley_nsp *find_nsp(admin_ui *a, const char *name)
{
    size_t pos = 0;
    parley_nsp *n;
    while ((n = parley_server__nsp_next(a->srv, &pos)))
        if (strcmp(parley_nsp_name(n), name) == 0) return n;
    return NULL;
}

enum { ACT_JOIN, ACT_LEAVE, ACT_DISCONNECT };

/* join [nsp, room, filter?], leave [nsp, room, filter?], _disconnect
 * [nsp, close, filter?]: applied to the sockets of nsp in room `filter`
 * (a socket id names one socket), or to all of nsp's sockets. Returns the
 * number of sockets acted on, or sets *why. */
static long act(admin_ui *a, int what, const parley_args *args, const char **why)
{
    json_val arr, nv, second, fv;
    if (json_parse(args->json, args->json_len, 16, &arr, NULL) != 0 || arr.type != JSON_ARRAY) {
        *why = "bad arguments";
        return -1;
    }
    json_iter it;
    json_iter_init(&it, &arr);
    char nsp_name[MAX_NAME + 1], room[MAX_NAME + 1], filter[MAX_NAME + 1];
    if (!json_array_next(&it, &nv) || str_arg(&nv, nsp_name, sizeof nsp_name) < 1) {
        *why = "the first argument must be a namespace name";
        return -1;
    }
    long room_len = 0;
    bool close = false;
    if (!json_array_next(&it, &second)) {
        *why = what == ACT_DISCONNECT ? "the second argument must be a boolean (close)"
                                      : "the second argument must be a room name";
        return -1;
    }
    if (what == ACT_DISCONNECT) {
        if (second.type != JSON_TRUE && second.type != JSON_FALSE) {
            *why = "the second argument must be a boolean (close)";
            return -1;
        }
        close = second.type == JSON_TRUE;
    } else {
        room_len = str_arg(&second, room, sizeof room);
        if (room_len < 1) {
            *why = "the second argument must be a room name (1 to 256 bytes)";
            return -1;
        }
    }
    long filter_len = -1;
    if (json_array_next(&it, &fv) && fv.type != JSON_NULL) {
        filter_len = str_arg(&fv, filter, sizeof filter);
        if (filter_len < 1) {
            *why = "the third argument must be a room or socket id, or absent";
            return -1;
        }
    }
    parley_nsp *n = find_nsp(a, nsp_name);
    if (!n) {
        *why = "no such namespace";
        return -1;
    }
    for (size_t i = 0; what != ACT_DISCONNECT && i < a->o.nmanaged; i++) {
        if (strcmp(a->o.managed[i], nsp_name) == 0) {
            /* Joining a user's socket to a conversation's room would send
             * that conversation to someone who is not a member. */
            *why = "room membership in this namespace is managed by its service";
            return -1;
        }
    }
    size_t count = parley_nsp__select(n, filter_len > 0 ? filter : NULL,
                                      filter_len > 0 ? (size_t)filter_len : 0, NULL, 0);
    if (count == 0) return 0;
    parley_socket **v = malloc(count * sizeof *v);
    if (!v) {
        *why = "out of memory";
        return -1;
    }
    count = parley_nsp__select(n, filter_len > 0 ? filter : NULL,
                               filter_len > 0 ? (size_t)filter_len : 0, v, count);
    /* A snapshot: joins, leaves and disconnects change the room. Sockets
     * stay allocated until the end of the loop iteration. */
    for (size_t i = 0; i < count; i++) {
        if (what == ACT_JOIN)
            parley_join_n(v[i], room, (size_t)room_len);
        else if (what == ACT_LEAVE)
            parley_leave_n(v[i], room, (size_t)room_len);
        else
            parley_disconnect(v[i], close);
    }
    free(v);
    return (long)count;
}

static void admin_event(parley_socket *s, const char *event, size_t event_len,
                        const parley_args *args, int64_t ack_id, void *user)
{
    admin_ui *a = user;
    int what = -1;
    if (event_len == 4 && memcmp(event, "join", 4) == 0) what = ACT_JOIN;
    if (event_len == 5 && memcmp(event, "leave", 5) == 0) what = ACT_LEAVE;
    if (event_len == 11 && memcmp(event, "_disconnect", 11) == 0) what = ACT_DISCONNECT;
    const char *why = NULL;
    long done = -1;
    if (what < 0)
        why = "unsupported action";
    else if (a->o.readonly)
        why = "read-only";
    else if (args->nbins)
        why = "binary arguments";
    else
        done = act(a, what, args, &why);
    if (done < 0)
        plog_debug("admin-ui: %.*s refused: %s", (int)PARLEY_MIN(event_len, 64), event, why);
    else
        plog_info("admin-ui: %.*s applied to %ld sockets", (int)event_len, event, done);
    if (ack_id < 0) return;
    /* Not in the reference (its UI sends no acknowledgement requests): a
     * tool can learn the outcome. */
    char buf[160];
    if (done < 0)
        snprintf(buf, sizeof buf, "[{\"ok\":false,\"error\":\"%s\"}]", why);
    else
        snprintf(buf, sizeof buf, "[{\"ok\":true,\"sockets\":%ld}]", done);
    parley_ack(s, ack_id, buf, NULL, 0);
}

/* ---- lifetime ---- */

void admin_ui_opts_init(admin_ui_opts *o)
{
    memset(o, 0, sizeof *o);
    o->nsp = "/admin";
    o->stats_interval_ms = 2000;
    o->max_sockets = 1000;
    o->max_bytes = 4u << 20;
    o->max_rooms = 64;
    o->max_backlog = 8u << 20;
}

int admin_ui_attach(parley_server *srv, const admin_ui_opts *o, admin_ui **out)
{
    if (!srv || !o || !o->authorize || !o->nsp || o->nsp[0] != '/' || strlen(o->nsp) > MAX_NAME ||
        o->stats_interval_ms == 0 || o->max_sockets == 0 || o->max_bytes == 0 ||
        o->max_backlog == 0)
        return PARLEY_EINVAL;
    admin_ui *a = pcalloc(1, sizeof *a);
    if (!a) return PARLEY_ENOMEM;
    a->srv = srv;
    a->loop = parley_server__loop(srv);
    a->o = *o;
    a->started = ptime_ms();
    ptimer_init(&a->stats, on_stats_timer);
    a->kick.cb = on_kick;
    if (gethostname(a->hostname, sizeof a->hostname - 1) != 0) strcpy(a->hostname, "localhost");
    a->hostname[sizeof a->hostname - 1] = 0;
    a->nsp_name = strdup(o->nsp);
    a->server_id = strdup(o->server_id ? o->server_id : a->hostname);
    a->nsp = a->nsp_name ? parley_server_of(srv, a->nsp_name) : NULL;
    if (!a->nsp || !a->server_id) {
        free(a->nsp_name);
        free(a->server_id);
        free(a);
        return PARLEY_ENOMEM;
    }
    a->o.nsp = a->nsp_name;
    a->o.server_id = a->server_id;
    parley_nsp_handlers h = {.on_connect_check = admin_check,
                             .on_connection = admin_connection,
                             .on_event = admin_event,
                             .on_disconnect = admin_disconnect,
                             .user = a};
    parley_nsp_set_handlers(a->nsp, &h);
    sio_observer ob = {.handshake = obs_handshake,
                       .connected = obs_connected,
                       .gone = obs_gone,
                       .room = obs_room,
                       .upgraded = obs_upgraded,
                       .session = obs_session,
                       .traffic = obs_traffic,
                       .event = obs_event,
                       .user = a};
    parley_server__observe(srv, &ob);
    *out = a;
    return 0;
}

void admin_ui_free(admin_ui *a)
{
    if (!a) return;
    parley_server__observe(a->srv, NULL);
    parley_nsp_set_handlers(a->nsp, NULL);
    parley_nsp_set_closed(a->nsp, 1);
    ploop_timer_stop(a->loop, &a->stats);
    ploop_defer_cancel(a->loop, &a->kick);
    pbuf_free(&a->out);
    free(a->nsp_name);
    free(a->server_id);
    free(a);
}
