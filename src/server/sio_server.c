/*
 * Socket.IO v5 server over the Engine.IO engine: namespaces, CONNECT with
 * auth and middleware, events and acknowledgements both ways, binary
 * attachments, rooms and broadcasts encoded once, volatile emits, and
 * connection-state recovery.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/map.h"
#include "base/util.h"
#include "codec/json.h"
#include "codec/sio.h"
#include "net/net.h"
#include "parley/server.h"
#include "server/engine.h"
#include "server/httpd.h"
#include "server/adapter.h"
#include "server/sio_internal.h"

#define MAX_ROOM_NAME   256
#define MAX_ATTACHMENTS 64 /* upper bound for the max_attachments option */

typedef struct room {
    char *name;
    size_t len;
    parley_socket **m;
    uint32_t n, cap;
} room;

typedef struct member {
    room *r;
    uint32_t idx; /* position in r->m */
} member;

typedef struct pending_ack {
    struct pending_ack *next;
    parley_socket *s;
    int64_t id;
    parley_ack_fn fn;
    void *user;
    ptimer timer;
} pending_ack;

typedef struct sio_client sio_client;

struct parley_socket {
    sio_client *c;
    parley_nsp *nsp;
    parley_socket *next_dead;
    member *rooms;
    uint16_t nrooms, rooms_cap;
    bool connected;
    bool recovered;
    bool authed; /* its namespace had a connect check (see require_auth) */
    pending_ack *acks;
    int64_t next_ack;
    uint64_t gen; /* broadcast de-duplication */
    void *data;
    const char *auth; /* valid during the connect callbacks */
    size_t auth_len;
    char id[21];
    char pid[21]; /* recovery only */
};

struct sio_client {
    parley_server *srv;
    esession *es;
    parley_socket **socks; /* one per connected namespace */
    uint8_t nsocks, socks_cap;
    ptimer connect_timer;
    /* A binary packet waiting for its attachments. */
    pbuf bin_text;
    pbuf *bins;
    unsigned bins_want, bins_got;
    size_t bin_bytes; /* held for it (text and attachments), counted in the stats */
    uint8_t nauth;    /* sockets in authenticated namespaces */
    bool polling;     /* counted in the server's polling_clients */
    /* Recorded at the handshake when an observer builds it: the peer
     * address, a NUL, then hs_len bytes (sio_observer.handshake). */
    char *hs;
    size_t hs_len;
};

struct parley_nsp {
    parley_server *srv;
    char *name;
    size_t len;
    parley_nsp_handlers h;
    pmap sockets; /* id -> socket */
    pmap rooms;   /* name -> room */
    bool closed;  /* CONNECTs answered "Invalid namespace" */
};

/* Connection-state recovery. */
typedef struct saved_session {
    char pid[21];
    char sid[21];
    parley_nsp *nsp;
    char **rooms;
    size_t nrooms;
    uint64_t expires;
} saved_session;

typedef struct stored_packet {
    struct stored_packet *next;
    char offset[32];
    uint64_t at;
    parley_nsp *nsp;
    char **rooms; /* NULL: every socket */
    size_t nrooms;
    char **except;
    size_t nexcept;
    pbuf text; /* the Socket.IO packet */
    pbuf *bins;
    size_t nbins;
} stored_packet;

struct parley_server {
    parley_loop *loop;
    phttpd *http;
    engine *eng;
    ptls_ctx *tls;
    parley_server_opts o;
    char *path;
    char *cors;
    sio_limits lim;
    pmap nsps;
    pbuf scratch;  /* outgoing packet text */
    pbuf scratch2; /* incoming argument rewriting */
    uint64_t gen;
    parley_socket *dead;
    pdefer reap;
    bool shutting_down;
    void (*done)(parley_server *s, void *user);
    void *done_user;
    /* recovery */
    pmap saved;   /* pid -> saved_session */
    pmap offsets; /* offset -> stored_packet */
    stored_packet *log_head, *log_tail;
    uint64_t offset_counter;
    char offset_prefix[8];
    ptimer prune;
    pmd_config pmd;
    plog_limit log_att, log_auth;
    /* guards */
    char *allowed;      /* our copy of o.allowed_origins */
    size_t max_att;     /* per session (max_attachment_bytes resolved) */
    size_t max_pending; /* server-wide (max_pending_attachment_bytes resolved) */
    parley_server_stats stats;
    sio_observer obs; /* all NULL: none */
    unsigned polling_clients;
    sio_adapter adapter; /* all NULL: none (a single node) */
};

static void socket_gone(parley_socket *s, const char *reason, bool persist);
static const engine_cbs eng_cbs;
static void client_close(sio_client *c);
static void client_close_why(sio_client *c, const char *reason);

/* ---- options and lifetime ---- */

void parley_server_opts_init_size(parley_server_opts *out, size_t size)
{
    parley_server_opts defaults, *o = &defaults;
    memset(o, 0, sizeof *o);
    o->size = sizeof *o;
    o->path = "/socket.io/";
    o->ping_interval_ms = 25000;
    o->ping_timeout_ms = 20000;
    o->upgrade_timeout_ms = 10000;
    o->connect_timeout_ms = 45000;
    o->max_payload = 1000000;
    o->polling = 1;
    o->websocket = 1;
    o->max_disconnection_ms = 120000;
    o->max_attachments = 10;
    o->compression_threshold = 1024;
    popts_give(out, size, o, sizeof *o);
}

const char *parley_socket_id(const parley_socket *s)
{
    return s->id;
}

parley_nsp *parley_socket_nsp(const parley_socket *s)
{
    return s->nsp;
}

const char *parley_nsp_name(const parley_nsp *n)
{
    return n->name;
}

int parley_socket_recovered(const parley_socket *s)
{
    return s->recovered;
}

const char *parley_socket_transport(const parley_socket *s)
{
    return esession_transport(s->c->es) == ENGINE_WEBSOCKET ? "websocket" : "polling";
}

void parley_socket_set_data(parley_socket *s, void *data)
{
    s->data = data;
}

void *parley_socket_data(const parley_socket *s)
{
    return s->data;
}

const char *parley_socket_auth(const parley_socket *s, size_t *len)
{
    if (len) *len = s->auth_len;
    return s->auth;
}

/* ---- internal hooks (sio_internal.h) ---- */

void parley_server__observe(parley_server *s, const sio_observer *o)
{
    if (o)
        s->obs = *o;
    else
        memset(&s->obs, 0, sizeof s->obs);
}

parley_loop *parley_server__loop(const parley_server *s)
{
    return s->loop;
}

parley_nsp *parley_server__nsp_next(const parley_server *s, size_t *pos)
{
    pmap_entry *e = pmap_next(&s->nsps, pos);
    return e ? e->val : NULL;
}

parley_socket *parley_nsp__socket_next(const parley_nsp *n, size_t *pos)
{
    pmap_entry *e = pmap_next(&n->sockets, pos);
    return e ? e->val : NULL;
}

size_t parley_nsp__count(const parley_nsp *n)
{
    return n->sockets.n;
}

size_t parley_socket__nrooms(const parley_socket *s)
{
    return s->nrooms;
}

const char *parley_socket__room(const parley_socket *s, size_t i, size_t *len)
{
    if (i >= s->nrooms) return NULL;
    *len = s->rooms[i].r->len;
    return s->rooms[i].r->name;
}

size_t parley_socket__backlog(const parley_socket *s)
{
    return esession_backlog(s->c->es);
}

const char *parley_socket__client_id(const parley_socket *s)
{
    return esession_id(s->c->es);
}

const char *parley_socket__handshake(const parley_socket *s, size_t *len)
{
    const sio_client *c = s->c;
    if (!c->hs) {
        *len = 0;
        return NULL;
    }
    *len = c->hs_len;
    return c->hs + strlen(c->hs) + 1;
}

const char *parley_socket__peer_ip(const parley_socket *s)
{
    return s->c->hs ? s->c->hs : "";
}

unsigned parley_server__clients(const parley_server *s)
{
    return s->eng ? engine_sessions(s->eng) : 0;
}

unsigned parley_server__polling_clients(const parley_server *s)
{
    return s->polling_clients;
}

static bool valid_nsp_name(const char *name)
{
    return name && name[0] == '/' && strlen(name) <= MAX_ROOM_NAME;
}

parley_nsp *parley_server_of(parley_server *s, const char *name)
{
    if (!valid_nsp_name(name)) return NULL;
    parley_nsp *n = pmap_get(&s->nsps, name, strlen(name));
    if (n) return n;
    n = pcalloc(1, sizeof *n);
    if (!n) return NULL;
    n->srv = s;
    n->name = strdup(name);
    n->len = strlen(name);
    if (!n->name || pmap_put(&s->nsps, n->name, n->len, n) != 0) {
        free(n->name);
        free(n);
        return NULL;
    }
    if (s->adapter.nsp_created) s->adapter.nsp_created(n, s->adapter.user);
    return n;
}

parley_nsp *parley_server__nsp_find(const parley_server *s, const char *name, size_t len)
{
    return pmap_get(&s->nsps, name, len);
}

bool parley_server__has_adapter(const parley_server *s)
{
    return s->adapter.broadcast != NULL;
}

void parley_server__set_adapter(parley_server *s, const sio_adapter *a)
{
    if (!a) {
        memset(&s->adapter, 0, sizeof s->adapter);
        return;
    }
    s->adapter = *a;
    if (!a->nsp_created) return;
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&s->nsps, &pos))) a->nsp_created(e->val, a->user);
}

void parley_nsp_set_closed(parley_nsp *n, int closed)
{
    n->closed = closed != 0;
}

void parley_nsp_set_handlers(parley_nsp *n, const parley_nsp_handlers *h)
{
    if (h)
        n->h = *h;
    else
        memset(&n->h, 0, sizeof n->h);
}

/* ---- random ids ---- */

static int random_id(char out[21])
{
    uint8_t raw[15];
    if (prand_bytes(raw, sizeof raw) != 0) return PARLEY_EIO;
    base64_encode(raw, sizeof raw, out);
    for (int i = 0; i < 20; i++) {
        if (out[i] == '+') out[i] = '-';
        if (out[i] == '/') out[i] = '_';
    }
    return 0;
}

/* ---- rooms ---- */

static room *room_get(parley_nsp *n, const char *name, size_t len, bool create)
{
    room *r = pmap_get(&n->rooms, name, len);
    if (r || !create) return r;
    r = pcalloc(1, sizeof *r);
    if (!r) return NULL;
    r->name = malloc(len + 1);
    if (!r->name) {
        free(r);
        return NULL;
    }
    memcpy(r->name, name, len);
    r->name[len] = 0;
    r->len = len;
    if (pmap_put(&n->rooms, r->name, len, r) != 0) {
        free(r->name);
        free(r);
        return NULL;
    }
    return r;
}

static bool in_room(const parley_socket *s, const room *r)
{
    for (uint16_t i = 0; i < s->nrooms; i++)
        if (s->rooms[i].r == r) return true;
    return false;
}

static int join_room(parley_socket *s, const char *name, size_t len)
{
    if (len == 0 || len > MAX_ROOM_NAME) return PARLEY_EINVAL;
    /* The room named by the socket's own id is implicit. */
    if (len == 20 && memcmp(name, s->id, 20) == 0) return 0;
    room *r = room_get(s->nsp, name, len, true);
    if (!r) return PARLEY_ENOMEM;
    if (in_room(s, r)) return 0;
    if (s->nrooms == s->rooms_cap) {
        if (s->rooms_cap == UINT16_MAX) return PARLEY_ELIMIT;
        uint16_t cap = s->rooms_cap ? (uint16_t)PARLEY_MIN(s->rooms_cap * 2, UINT16_MAX) : 2;
        member *v = realloc(s->rooms, cap * sizeof *v);
        if (!v) return PARLEY_ENOMEM;
        s->rooms = v;
        s->rooms_cap = cap;
    }
    if (r->n == r->cap) {
        uint32_t cap = r->cap ? r->cap * 2 : 4;
        parley_socket **m = realloc(r->m, cap * sizeof *m);
        if (!m) return PARLEY_ENOMEM;
        r->m = m;
        r->cap = cap;
    }
    s->rooms[s->nrooms++] = (member){r, r->n};
    r->m[r->n++] = s;
    parley_server *srv = s->nsp->srv;
    if (srv->obs.room) srv->obs.room(s, r->name, r->len, true, srv->obs.user);
    return 0;
}

static void room_free(parley_nsp *n, room *r)
{
    pmap_del(&n->rooms, r->name, r->len);
    free(r->m);
    free(r->name);
    free(r);
}

static void leave_member(parley_socket *s, uint16_t i)
{
    room *r = s->rooms[i].r;
    uint32_t idx = s->rooms[i].idx;
    /* Swap-remove from the room, fixing the moved member's index. */
    parley_socket *moved = r->m[--r->n];
    if (idx != r->n) {
        r->m[idx] = moved;
        for (uint16_t k = 0; k < moved->nrooms; k++)
            if (moved->rooms[k].r == r) moved->rooms[k].idx = idx;
    }
    s->rooms[i] = s->rooms[--s->nrooms];
    if (r->n == 0) room_free(s->nsp, r);
}

int parley_join(parley_socket *s, const char *room_name)
{
    if (!room_name || !s->connected) return room_name ? PARLEY_ECLOSED : PARLEY_EINVAL;
    return join_room(s, room_name, strlen(room_name));
}

int parley_leave(parley_socket *s, const char *room_name)
{
    if (!room_name) return PARLEY_EINVAL;
    return parley_leave_n(s, room_name, strlen(room_name));
}

int parley_leave_n(parley_socket *s, const char *room_name, size_t len)
{
    for (uint16_t i = 0; i < s->nrooms; i++) {
        if (s->rooms[i].r->len == len && memcmp(s->rooms[i].r->name, room_name, len) == 0) {
            parley_server *srv = s->nsp->srv;
            if (srv->obs.room) {
                /* The name lives in the room, which may go with the leave. */
                char name[MAX_ROOM_NAME];
                memcpy(name, room_name, len);
                leave_member(s, i);
                srv->obs.room(s, name, len, false, srv->obs.user);
            } else {
                leave_member(s, i);
            }
            return 0;
        }
    }
    return 0;
}

int parley_join_n(parley_socket *s, const char *room_name, size_t len)
{
    if (!room_name) return PARLEY_EINVAL;
    if (!s->connected) return PARLEY_ECLOSED;
    return join_room(s, room_name, len);
}

size_t parley_nsp__select(const parley_nsp *n, const char *name, size_t len, parley_socket **out,
                          size_t cap)
{
    size_t count = 0;
    if (!name) {
        size_t pos = 0;
        pmap_entry *e;
        while ((e = pmap_next(&n->sockets, &pos))) {
            if (count < cap) out[count] = e->val;
            count++;
        }
        return count;
    }
    if (len == 20) {
        parley_socket *one = pmap_get(&n->sockets, name, 20);
        if (one) {
            if (cap) out[0] = one;
            return 1;
        }
    }
    room *r = pmap_get(&n->rooms, name, len);
    for (uint32_t k = 0; r && k < r->n; k++) {
        if (count < cap) out[count] = r->m[k];
        count++;
    }
    return count;
}

/* ---- encoding ---- */

/* Checks that args_json is a JSON array whose placeholders match nbins. */
static int check_args(parley_server *srv, const char *args, size_t len, size_t nbins, json_val *v)
{
    if (!args) {
        if (nbins) return PARLEY_EINVAL;
        v->type = JSON_INVALID;
        return 0;
    }
    if (json_parse(args, len, srv->lim.max_depth, v, NULL) != 0 || v->type != JSON_ARRAY)
        return PARLEY_EINVAL;
    if (nbins > srv->lim.max_attachments) return PARLEY_EINVAL;
    const char *why;
    if (nbins && sio_check_placeholders(v, (unsigned)nbins, srv->lim.max_depth, NULL, NULL, &why))
        return PARLEY_EINVAL;
    return 0;
}

/* Appends the elements of array v (without brackets), comma-led when
 * `lead` and the array is not empty. */
static int append_inner(pbuf *out, const json_val *v, bool lead)
{
    if (v->type != JSON_ARRAY) return 0;
    json_iter it;
    json_iter_init(&it, v);
    json_val e;
    bool first = !lead;
    int rc = 0;
    while (rc == 0 && json_array_next(&it, &e)) {
        if (!first) rc = pbuf_append(out, ",", 1);
        first = false;
        if (rc == 0) rc = json_compact(out, &e);
    }
    return rc;
}

/* Builds an EVENT (or BINARY_EVENT) packet for nsp into out:
 * 2[<n>-][nsp,][id]["event",args...(,"offset")]. */
static int encode_event(pbuf *out, const parley_nsp *n, int64_t id, const char *event,
                        const json_val *args, size_t nbins, const char *offset)
{
    out->len = 0;
    int rc = sio_write_head(out, nbins ? SIO_BINARY_EVENT : SIO_EVENT, (unsigned)nbins, n->name,
                            n->len, id);
    if (rc == 0) rc = pbuf_append(out, "[", 1);
    if (rc == 0) rc = json_append_string(out, event, strlen(event));
    if (rc == 0 && args) rc = append_inner(out, args, true);
    if (rc == 0 && offset) {
        rc = pbuf_append(out, ",", 1);
        if (rc == 0) rc = json_append_string(out, offset, strlen(offset));
    }
    if (rc == 0) rc = pbuf_append(out, "]", 1);
    return rc;
}

/* Sends packet text plus its attachments to one client session. */
static int send_packet(sio_client *c, const char *text, size_t len, const parley_bin *bins,
                       size_t nbins)
{
    int rc = esession_send(c->es, false, text, len);
    for (size_t i = 0; rc == 0 && i < nbins; i++)
        rc = esession_send(c->es, true, bins[i].data, bins[i].len);
    parley_server *srv = c->srv;
    if (rc == 0 && srv->obs.traffic) {
        srv->obs.traffic(true, len, srv->obs.user);
        for (size_t i = 0; i < nbins; i++) srv->obs.traffic(true, bins[i].len, srv->obs.user);
    }
    return rc;
}

/* ---- recovery store ---- */

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

static char **dup_strv(const char *const *v, size_t n)
{
    char **out = pcalloc(n ? n : 1, sizeof *out);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        out[i] = strdup(v[i]);
        if (!out[i]) {
            free_strv(out, i);
            return NULL;
        }
    }
    return out;
}

static void stored_free(stored_packet *p)
{
    free_strv(p->rooms, p->nrooms);
    free_strv(p->except, p->nexcept);
    pbuf_free(&p->text);
    for (size_t i = 0; i < p->nbins; i++) pbuf_free(&p->bins[i]);
    free(p->bins);
    free(p);
}

static void saved_free(saved_session *ss)
{
    free_strv(ss->rooms, ss->nrooms);
    free(ss);
}

static void prune_recovery(parley_server *srv)
{
    uint64_t now = ploop_now(srv->loop);
    while (srv->log_head && srv->log_head->at + srv->o.max_disconnection_ms < now) {
        stored_packet *p = srv->log_head;
        srv->log_head = p->next;
        if (!srv->log_head) srv->log_tail = NULL;
        pmap_del(&srv->offsets, p->offset, strlen(p->offset));
        stored_free(p);
    }
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&srv->saved, &pos))) {
        saved_session *ss = e->val;
        if (ss->expires < now) {
            pmap_del(&srv->saved, ss->pid, 20);
            saved_free(ss);
            pos = 0; /* the table shifted: start over */
        }
    }
}

static void on_prune(ptimer *t)
{
    parley_server *srv = PARLEY_CONTAINER_OF(t, parley_server, prune);
    prune_recovery(srv);
    ploop_timer_start(srv->loop, &srv->prune, 60000);
}

static const char *next_offset(parley_server *srv, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%llx", srv->offset_prefix, (unsigned long long)++srv->offset_counter);
    return buf;
}

static stored_packet *store_packet(parley_server *srv, parley_nsp *n, const parley_target *to,
                                   const char *offset, const pbuf *text, const parley_bin *bins,
                                   size_t nbins)
{
    stored_packet *p = pcalloc(1, sizeof *p);
    if (!p) return NULL;
    snprintf(p->offset, sizeof p->offset, "%s", offset);
    p->at = ploop_now(srv->loop);
    p->nsp = n;
    bool ok = pbuf_append(&p->text, text->ptr, text->len) == 0;
    if (ok && to && to->nrooms) {
        p->rooms = dup_strv(to->rooms, to->nrooms);
        p->nrooms = to->nrooms;
        ok = p->rooms != NULL;
    }
    size_t nex = to ? to->nexcept + (to->except_socket ? 1 : 0) : 0;
    if (ok && nex) {
        p->except = pcalloc(nex, sizeof *p->except);
        ok = p->except != NULL;
        for (size_t i = 0; ok && i < to->nexcept; i++)
            ok = (p->except[p->nexcept++] = strdup(to->except[i])) != NULL;
        if (ok && to->except_socket)
            ok = (p->except[p->nexcept++] = strdup(to->except_socket->id)) != NULL;
    }
    if (ok && nbins) {
        p->bins = pcalloc(nbins, sizeof *p->bins);
        ok = p->bins != NULL;
        for (size_t i = 0; ok && i < nbins; i++) {
            ok = pbuf_append(&p->bins[i], bins[i].data, bins[i].len) == 0;
            p->nbins = i + 1;
        }
    }
    if (!ok || pmap_put(&srv->offsets, p->offset, strlen(p->offset), p) != 0) {
        stored_free(p);
        return NULL;
    }
    if (srv->log_tail)
        srv->log_tail->next = p;
    else
        srv->log_head = p;
    srv->log_tail = p;
    return p;
}

static bool strv_has(char **v, size_t n, const char *s, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(v[i]) == len && memcmp(v[i], s, len) == 0) return true;
    return false;
}

/* The reference's rule: included when sent to everyone or to one of the
 * session's rooms, and none of the session's rooms is excluded. */
static bool packet_for(const stored_packet *p, char **rooms, size_t nrooms)
{
    bool included = p->nrooms == 0;
    for (size_t i = 0; i < nrooms; i++) {
        size_t len = strlen(rooms[i]);
        if (!included && strv_has(p->rooms, p->nrooms, rooms[i], len)) included = true;
        if (strv_has(p->except, p->nexcept, rooms[i], len)) return false;
    }
    return included;
}

static void persist_session(parley_socket *s)
{
    parley_server *srv = s->nsp->srv;
    saved_session *ss = pcalloc(1, sizeof *ss);
    if (!ss) return;
    memcpy(ss->pid, s->pid, sizeof ss->pid);
    memcpy(ss->sid, s->id, sizeof ss->sid);
    ss->nsp = s->nsp;
    ss->nrooms = (size_t)s->nrooms + 1;
    ss->rooms = pcalloc(ss->nrooms, sizeof *ss->rooms);
    bool ok = ss->rooms && (ss->rooms[0] = strdup(s->id));
    for (uint16_t i = 0; ok && i < s->nrooms; i++)
        ok = (ss->rooms[i + 1] = strdup(s->rooms[i].r->name)) != NULL;
    ss->expires = ploop_now(srv->loop) + srv->o.max_disconnection_ms;
    if (!ok) {
        saved_free(ss);
        return;
    }
    saved_session *old = pmap_del(&srv->saved, ss->pid, 20);
    if (old) saved_free(old);
    if (pmap_put(&srv->saved, ss->pid, 20, ss) != 0) saved_free(ss);
}

/* ---- emitting ---- */

static int emit_one(parley_socket *s, const parley_emit_opts *o, const char *event,
                    const char *args_json, const parley_bin *bins, size_t nbins);

static int broadcast(parley_nsp *n, const parley_target *to, const char *event,
                     const char *args_json, const parley_bin *bins, size_t nbins, bool publish);

int parley_broadcast(parley_nsp *n, const parley_target *to, const char *event,
                     const char *args_json, const parley_bin *bins, size_t nbins)
{
    return broadcast(n, to, event, args_json, bins, nbins, true);
}

int parley_broadcast__local(parley_nsp *n, const parley_target *to, const char *event,
                            const char *args_json, const parley_bin *bins, size_t nbins)
{
    return broadcast(n, to, event, args_json, bins, nbins, false);
}

/* Delivers to the local sockets, then (publish) hands the broadcast to the
 * adapter: the bytes are encoded once for both. */
static int broadcast(parley_nsp *n, const parley_target *to, const char *event,
                     const char *args_json, const parley_bin *bins, size_t nbins, bool publish)
{
    parley_server *srv = n->srv;
    if (!event || sio_reserved_event(event, strlen(event))) return PARLEY_EINVAL;
    json_val args;
    int rc = check_args(srv, args_json, args_json ? strlen(args_json) : 0, nbins, &args);
    if (rc) return rc;
    bool volatile_ = to && to->volatile_;
    char offbuf[32];
    const char *offset =
        srv->o.recovery && !volatile_ ? next_offset(srv, offbuf, sizeof offbuf) : NULL;
    rc = encode_event(&srv->scratch, n, -1, event, args_json ? &args : NULL, nbins, offset);
    if (rc) return rc;
    if (offset) store_packet(srv, n, to, offset, &srv->scratch, bins, nbins);

    /* Encoded once: every WebSocket recipient shares these frames. */
    eframe frames[1 + MAX_ATTACHMENTS];
    size_t nframes = 0;
    if (nbins + 1 > PARLEY_ARRAY_LEN(frames)) return PARLEY_EINVAL;
    rc = eframe_init(&frames[nframes++], false, srv->scratch.ptr, srv->scratch.len);
    for (size_t i = 0; rc == 0 && i < nbins; i++)
        rc = eframe_init(&frames[nframes++], true, bins[i].data, bins[i].len);
    if (rc) {
        for (size_t i = 0; i + 1 < nframes; i++) eframe_release(&frames[i]);
        return rc;
    }

    uint64_t gen = ++srv->gen;
    srv->stats.broadcasts++;
    if (to) {
        for (size_t i = 0; i < to->nexcept; i++) {
            const char *name = to->except[i];
            size_t len = strlen(name);
            room *r = room_get(n, name, len, false);
            for (uint32_t k = 0; r && k < r->n; k++) r->m[k]->gen = gen;
            parley_socket *one = len == 20 ? pmap_get(&n->sockets, name, 20) : NULL;
            if (one) one->gen = gen;
        }
        if (to->except_socket) to->except_socket->gen = gen;
    }
    int count = 0;
    void (*traffic_)(bool, size_t, void *) = srv->obs.traffic;
    size_t textlen_ = srv->scratch.len;
    void (*event_)(parley_socket *, bool, const char *, size_t, const char *, size_t, void *) =
        srv->obs.event;
    size_t evlen_ = strlen(event), args_len_ = args_json ? strlen(args_json) : 0;
#define DELIVER(sock)                                                                              \
    do {                                                                                           \
        parley_socket *x_ = (sock);                                                                \
        if (x_->gen != gen && x_->connected && (!volatile_ || esession_writable(x_->c->es))) {     \
            x_->gen = gen;                                                                         \
            for (size_t f_ = 0; f_ < nframes; f_++) esession_send_frame(x_->c->es, &frames[f_]);   \
            count++;                                                                               \
            srv->stats.events_out++;                                                               \
            if (traffic_)                                                                          \
                for (size_t f_ = 0; f_ < nframes; f_++)                                            \
                    traffic_(true, f_ ? bins[f_ - 1].len : textlen_, srv->obs.user);               \
            if (event_)                                                                            \
                event_(x_, true, event, evlen_, args_json ? args_json : "[]",                      \
                       args_json ? args_len_ : 2, srv->obs.user);                                  \
        }                                                                                          \
    } while (0)
    if (!to || to->nrooms == 0) {
        size_t pos = 0;
        pmap_entry *e;
        while ((e = pmap_next(&n->sockets, &pos))) DELIVER((parley_socket *)e->val);
    } else {
        for (size_t i = 0; i < to->nrooms; i++) {
            const char *name = to->rooms[i];
            size_t len = strlen(name);
            room *r = room_get(n, name, len, false);
            for (uint32_t k = 0; r && k < r->n; k++) DELIVER(r->m[k]);
            parley_socket *one = len == 20 ? pmap_get(&n->sockets, name, 20) : NULL;
            if (one) DELIVER(one);
        }
    }
#undef DELIVER
    for (size_t i = 0; i < nframes; i++) eframe_release(&frames[i]);
    if (publish && srv->adapter.broadcast)
        srv->adapter.broadcast(n, to, event, args_json ? &args : NULL, bins, nbins,
                               srv->adapter.user);
    return count;
}

static void ack_timeout(ptimer *t)
{
    pending_ack *a = PARLEY_CONTAINER_OF(t, pending_ack, timer);
    parley_socket *s = a->s;
    for (pending_ack **pp = &s->acks; *pp; pp = &(*pp)->next) {
        if (*pp == a) {
            *pp = a->next;
            break;
        }
    }
    a->fn(s, PARLEY_ETIMEDOUT, NULL, a->user);
    free(a);
}

static int emit_one(parley_socket *s, const parley_emit_opts *o, const char *event,
                    const char *args_json, const parley_bin *bins, size_t nbins)
{
    if (!s->connected) return PARLEY_ECLOSED;
    parley_server *srv = s->nsp->srv;
    if (!event || sio_reserved_event(event, strlen(event))) return PARLEY_EINVAL;
    bool volatile_ = o && o->volatile_;
    bool want_ack = o && o->ack;
    if (srv->o.recovery && !want_ack) {
        /* As the reference: with recovery on, a plain emit is a broadcast
         * to the socket's own room, so that it is stored with an offset. */
        const char *own = s->id;
        parley_target to = {.rooms = &own, .nrooms = 1, .volatile_ = volatile_};
        int rc = parley_broadcast(s->nsp, &to, event, args_json, bins, nbins);
        return rc < 0 ? rc : 0;
    }
    json_val args;
    int rc = check_args(srv, args_json, args_json ? strlen(args_json) : 0, nbins, &args);
    if (rc) return rc;
    /* A volatile packet is dropped unless it can leave at once. */
    if (volatile_ && !esession_writable(s->c->es)) return 0;
    pending_ack *a = NULL;
    int64_t id = -1;
    if (want_ack) {
        a = pcalloc(1, sizeof *a);
        if (!a) return PARLEY_ENOMEM;
        id = s->next_ack++;
        *a = (pending_ack){.s = s, .id = id, .fn = o->ack, .user = o->ack_user};
        ptimer_init(&a->timer, ack_timeout);
    }
    rc = encode_event(&srv->scratch, s->nsp, id, event, args_json ? &args : NULL, nbins, NULL);
    if (rc == 0)
        rc = send_packet(s->c, (const char *)srv->scratch.ptr, srv->scratch.len, bins, nbins);
    if (rc) {
        free(a);
        return rc;
    }
    srv->stats.events_out++;
    if (a) {
        a->next = s->acks;
        s->acks = a;
        if (o->timeout_ms) ploop_timer_start(srv->loop, &a->timer, o->timeout_ms);
    }
    if (srv->obs.event)
        srv->obs.event(s, true, event, strlen(event), args_json ? args_json : "[]",
                       args_json ? strlen(args_json) : 2, srv->obs.user);
    return 0;
}

int parley_emit__direct(parley_socket *s, const char *event, const char *args_json, size_t len)
{
    if (!s->connected) return PARLEY_ECLOSED;
    parley_server *srv = s->nsp->srv;
    json_val args;
    int rc = check_args(srv, args_json, len, 0, &args);
    if (rc == 0) rc = encode_event(&srv->scratch, s->nsp, -1, event, &args, 0, NULL);
    if (rc == 0) rc = send_packet(s->c, (const char *)srv->scratch.ptr, srv->scratch.len, NULL, 0);
    return rc;
}

int parley_emit(parley_socket *s, const char *event, const char *args_json, const parley_bin *bins,
                size_t nbins)
{
    return emit_one(s, NULL, event, args_json, bins, nbins);
}

void parley_emit_opts_init_size(parley_emit_opts *out, size_t size)
{
    parley_emit_opts d;
    memset(&d, 0, sizeof d);
    d.size = sizeof d;
    popts_give(out, size, &d, sizeof d);
}

int parley_emit_opts_send(parley_socket *s, const parley_emit_opts *o_in, const char *event,
                          const char *args_json, const parley_bin *bins, size_t nbins)
{
    parley_emit_opts o;
    if (POPTS_TAKE(parley_emit_opts, parley_emit_opts_init, &o, o_in, volatile_) != 0)
        return PARLEY_EINVAL;
    return emit_one(s, &o, event, args_json, bins, nbins);
}

int parley_ack(parley_socket *s, int64_t ack_id, const char *args_json, const parley_bin *bins,
               size_t nbins)
{
    if (!s->connected) return PARLEY_ECLOSED;
    if (ack_id < 0) return PARLEY_EINVAL;
    parley_server *srv = s->nsp->srv;
    json_val args;
    int rc = check_args(srv, args_json, args_json ? strlen(args_json) : 0, nbins, &args);
    if (rc) return rc;
    pbuf *out = &srv->scratch;
    out->len = 0;
    rc = sio_write_head(out, nbins ? SIO_BINARY_ACK : SIO_ACK, (unsigned)nbins, s->nsp->name,
                        s->nsp->len, ack_id);
    if (rc == 0) rc = pbuf_append(out, "[", 1);
    if (rc == 0 && args_json) rc = append_inner(out, &args, false);
    if (rc == 0) rc = pbuf_append(out, "]", 1);
    if (rc == 0) rc = send_packet(s->c, (const char *)out->ptr, out->len, bins, nbins);
    if (rc == 0) srv->stats.acks_out++;
    return rc;
}

/* ---- sockets ---- */

static void reap(pdefer *d)
{
    parley_server *srv = PARLEY_CONTAINER_OF(d, parley_server, reap);
    while (srv->dead) {
        parley_socket *s = srv->dead;
        srv->dead = s->next_dead;
        free(s->rooms);
        free(s);
    }
}

static void client_remove_socket(sio_client *c, parley_socket *s)
{
    for (uint8_t i = 0; i < c->nsocks; i++) {
        if (c->socks[i] == s) {
            c->socks[i] = c->socks[--c->nsocks];
            return;
        }
    }
}

static bool recoverable(const char *reason)
{
    static const char *const r[] = {"transport error", "transport close", "forced close",
                                    "ping timeout", "server shutting down"};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(r); i++)
        if (strcmp(reason, r[i]) == 0) return true;
    return false;
}

static void socket_gone(parley_socket *s, const char *reason, bool persist)
{
    if (!s->connected) return;
    parley_server *srv = s->nsp->srv;
    if (persist && srv->o.recovery && recoverable(reason)) persist_session(s);
    s->connected = false;
    pmap_del(&s->nsp->sockets, s->id, 20);
    if (srv->obs.gone) srv->obs.gone(s, reason, srv->obs.user);
    while (s->nrooms) leave_member(s, (uint16_t)(s->nrooms - 1));
    client_remove_socket(s->c, s);
    if (s->authed && --s->c->nauth == 0 && srv->o.require_auth && !esession_closed(s->c->es)) {
        /* The last authenticated socket left a live session: the
         * authentication deadline starts again. */
        ploop_timer_start(srv->loop, &s->c->connect_timer, srv->o.connect_timeout_ms);
    }
    pending_ack *a = s->acks;
    s->acks = NULL;
    while (a) {
        pending_ack *next = a->next;
        ploop_timer_stop(srv->loop, &a->timer);
        a->fn(s, PARLEY_ECLOSED, NULL, a->user);
        free(a);
        a = next;
    }
    if (s->nsp->h.on_disconnect) s->nsp->h.on_disconnect(s, reason, s->nsp->h.user);
    s->next_dead = srv->dead;
    srv->dead = s;
    ploop_defer(srv->loop, &srv->reap);
}

void parley_disconnect(parley_socket *s, int close_transport)
{
    if (!s->connected) return;
    sio_client *c = s->c;
    parley_server *srv = s->nsp->srv;
    pbuf *out = &srv->scratch;
    out->len = 0;
    if (sio_write_head(out, SIO_DISCONNECT, 0, s->nsp->name, s->nsp->len, -1) == 0)
        esession_send(c->es, false, out->ptr, out->len);
    socket_gone(s, "server namespace disconnect", false);
    if (close_transport) esession_close(c->es);
}

static parley_socket *client_socket(sio_client *c, const char *nsp, size_t len)
{
    for (uint8_t i = 0; i < c->nsocks; i++)
        if (c->socks[i]->nsp->len == len && memcmp(c->socks[i]->nsp->name, nsp, len) == 0)
            return c->socks[i];
    return NULL;
}

static int send_connect_error(sio_client *c, const char *nsp, size_t nsp_len, const char *message,
                              const char *data_json)
{
    parley_server *srv = c->srv;
    pbuf *out = &srv->scratch;
    out->len = 0;
    int rc = sio_write_head(out, SIO_CONNECT_ERROR, 0, nsp, nsp_len, -1);
    if (rc == 0) rc = pbuf_append_str(out, "{\"message\":");
    if (rc == 0) rc = json_append_string(out, message, strlen(message));
    if (rc == 0 && data_json) {
        json_val v;
        rc = json_parse(data_json, strlen(data_json), srv->lim.max_depth, &v, NULL);
        if (rc == 0) rc = pbuf_append_str(out, ",\"data\":");
        if (rc == 0) rc = json_compact(out, &v);
    }
    if (rc == 0) rc = pbuf_append(out, "}", 1);
    if (rc == 0) rc = esession_send(c->es, false, out->ptr, out->len);
    return rc;
}

/* Looks for a recoverable session named by the CONNECT auth. */
static saved_session *find_saved(parley_server *srv, parley_nsp *n, const json_val *auth,
                                 const stored_packet **after)
{
    if (!srv->o.recovery || auth->type != JSON_OBJECT) return NULL;
    json_val pid, off;
    if (!json_object_get(auth, "pid", &pid) || pid.type != JSON_STRING) return NULL;
    if (!json_object_get(auth, "offset", &off) || off.type != JSON_STRING) return NULL;
    char pidbuf[32], offbuf[32];
    long pl = json_string_decode(&pid, pidbuf, sizeof pidbuf);
    long ol = json_string_decode(&off, offbuf, sizeof offbuf);
    if (pl != 20 || ol <= 0) return NULL;
    saved_session *ss = pmap_get(&srv->saved, pidbuf, 20);
    if (!ss || ss->nsp != n) return NULL;
    if (ss->expires < ploop_now(srv->loop)) return NULL;
    stored_packet *p = pmap_get(&srv->offsets, offbuf, (size_t)ol);
    if (!p) return NULL;
    *after = p;
    return ss;
}

static void on_connect_packet(sio_client *c, const sio_packet *pk)
{
    parley_server *srv = c->srv;
    if (client_socket(c, pk->nsp, pk->nsp_len)) {
        /* A second CONNECT to the same namespace: the reference closes. */
        client_close(c);
        return;
    }
    parley_nsp *n =
        pk->nsp_len <= MAX_ROOM_NAME ? pmap_get(&srv->nsps, pk->nsp, pk->nsp_len) : NULL;
    if (!n || n->closed) {
        /* A closed namespace is indistinguishable from a missing one. */
        send_connect_error(c, pk->nsp, pk->nsp_len, "Invalid namespace", NULL);
        return;
    }
    parley_socket *s = pcalloc(1, sizeof *s);
    if (!s) {
        client_close(c);
        return;
    }
    s->c = c;
    s->nsp = n;
    const stored_packet *after = NULL;
    saved_session *ss = find_saved(srv, n, &pk->data, &after);
    if (ss) {
        memcpy(s->id, ss->sid, sizeof s->id);
        memcpy(s->pid, ss->pid, sizeof s->pid);
        s->recovered = true;
    } else if (random_id(s->id) != 0 || (srv->o.recovery && random_id(s->pid) != 0)) {
        free(s);
        client_close(c);
        return;
    }
    if (pk->data.type == JSON_OBJECT) {
        s->auth = pk->data.p;
        s->auth_len = pk->data.len;
    }
    /* Middleware (skipped for a recovered session, as the reference). */
    if (!ss && n->h.on_connect_check) {
        parley_connect_error err = {0};
        if (n->h.on_connect_check(s, s->auth, s->auth_len, &err, n->h.user) != 0) {
            send_connect_error(c, pk->nsp, pk->nsp_len, err.message ? err.message : "refused",
                               err.data_json);
            free(s);
            return;
        }
        if (esession_closed(c->es)) {
            free(s);
            return;
        }
    }
    if (c->nsocks == c->socks_cap) {
        uint8_t cap = c->socks_cap ? (uint8_t)PARLEY_MIN(c->socks_cap * 2, 255) : 1;
        parley_socket **v = cap > c->socks_cap ? realloc(c->socks, cap * sizeof *v) : NULL;
        if (!v) {
            free(s);
            client_close(c);
            return;
        }
        c->socks = v;
        c->socks_cap = cap;
    }
    if (pmap_put(&n->sockets, s->id, 20, s) != 0) {
        free(s);
        client_close(c);
        return;
    }
    c->socks[c->nsocks++] = s;
    s->connected = true;
    s->authed = n->h.on_connect_check != NULL;
    if (s->authed) c->nauth++;
    if (!srv->o.require_auth || c->nauth) ploop_timer_stop(srv->loop, &c->connect_timer);
    if (ss) {
        for (size_t i = 0; i < ss->nrooms; i++)
            if (strcmp(ss->rooms[i], s->id) != 0) join_room(s, ss->rooms[i], strlen(ss->rooms[i]));
        /* Missed packets go first; the client holds them until CONNECT. */
        for (const stored_packet *p = after->next; p; p = p->next) {
            if (p->nsp != n || !packet_for(p, ss->rooms, ss->nrooms)) continue;
            parley_bin bins[MAX_ATTACHMENTS];
            size_t nb = PARLEY_MIN(p->nbins, PARLEY_ARRAY_LEN(bins));
            for (size_t i = 0; i < nb; i++) bins[i] = (parley_bin){p->bins[i].ptr, p->bins[i].len};
            send_packet(c, (const char *)p->text.ptr, p->text.len, bins, nb);
        }
        pmap_del(&srv->saved, ss->pid, 20);
        saved_free(ss);
    }
    pbuf *out = &srv->scratch;
    out->len = 0;
    int rc = sio_write_head(out, SIO_CONNECT, 0, n->name, n->len, -1);
    if (rc == 0)
        rc = srv->o.recovery ? pbuf_appendf(out, "{\"sid\":\"%s\",\"pid\":\"%s\"}", s->id, s->pid)
                             : pbuf_appendf(out, "{\"sid\":\"%s\"}", s->id);
    if (rc == 0) esession_send(c->es, false, out->ptr, out->len);
    if (srv->obs.connected) srv->obs.connected(s, srv->obs.user);
    if (!s->connected) return; /* (an observer must not, but be safe) */
    if (n->h.on_connection) n->h.on_connection(s, n->h.user);
    s->auth = NULL;
    s->auth_len = 0;
}

/* Placeholders as the reference re-encodes them: numbered 0, 1, ... in
 * the order they appear, one attachment per occurrence, attachments no
 * placeholder refers to dropped. Rewrites args in place when needed. */
typedef struct ph_list {
    const char *base;
    size_t n;
    bool overflow;
    struct {
        size_t off, len;
        unsigned num;
    } v[MAX_ATTACHMENTS];
} ph_list;

static void collect_ph(const json_val *ph, unsigned num, void *user)
{
    ph_list *l = user;
    if (l->n == MAX_ATTACHMENTS) {
        l->overflow = true;
        return;
    }
    l->v[l->n].off = (size_t)(ph->p - l->base);
    l->v[l->n].len = ph->len;
    l->v[l->n].num = num;
    l->n++;
}

static int canonical_bins(parley_server *srv, pbuf *args, const parley_bin *in, size_t nin,
                          parley_bin *out, size_t *nout)
{
    json_val v;
    if (json_parse((const char *)args->ptr, args->len, srv->lim.max_depth, &v, NULL) != 0)
        return PARLEY_EPROTO;
    ph_list l = {.base = (const char *)args->ptr};
    const char *why;
    if (sio_check_placeholders(&v, (unsigned)nin, srv->lim.max_depth, collect_ph, &l, &why) != 0 ||
        l.overflow)
        return PARLEY_EPROTO;
    bool same = l.n == nin;
    for (size_t i = 0; same && i < l.n; i++) same = l.v[i].num == i;
    for (size_t i = 0; i < l.n; i++) out[i] = in[l.v[i].num];
    *nout = l.n;
    if (same) return 0;
    pbuf tmp = {0};
    size_t at = 0;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < l.n; i++) {
        rc = pbuf_append(&tmp, args->ptr + at, l.v[i].off - at);
        if (rc == 0) rc = pbuf_appendf(&tmp, "{\"_placeholder\":true,\"num\":%zu}", i);
        at = l.v[i].off + l.v[i].len;
    }
    if (rc == 0) rc = pbuf_append(&tmp, args->ptr + at, args->len - at);
    if (rc == 0) {
        args->len = 0;
        rc = pbuf_append(args, tmp.ptr, tmp.len);
    }
    pbuf_free(&tmp);
    return rc;
}

/* Delivers an EVENT or ACK with its arguments (attachments resolved). */
static void dispatch(sio_client *c, const sio_packet *pk, const parley_bin *bins, size_t nbins)
{
    parley_server *srv = c->srv;
    parley_socket *s = client_socket(c, pk->nsp, pk->nsp_len);
    if (!s) {
        /* A packet for a namespace the client did not join. */
        client_close(c);
        return;
    }
    pbuf *args = &srv->scratch2;
    args->len = 0;
    if (pk->type == SIO_EVENT || pk->type == SIO_BINARY_EVENT) {
        /* No data, no event name: nothing to dispatch (as the reference). */
        if (pk->data.type == JSON_INVALID) return;
        json_iter it;
        json_iter_init(&it, &pk->data);
        json_val name;
        json_array_next(&it, &name);
        char ev[MAX_ROOM_NAME + 1];
        long evlen = name.type == JSON_STRING ? json_string_decode(&name, ev, sizeof ev - 1) : -1;
        if (name.type == JSON_NUMBER && name.len < sizeof ev) {
            memcpy(ev, name.p, name.len);
            evlen = (long)name.len;
        }
        if (evlen < 0) {
            client_close(c); /* an event name we cannot hold */
            return;
        }
        ev[evlen] = 0;
        /* The arguments are the elements after the name, re-emitted
         * compactly in their order. */
        int rc = pbuf_append(args, "[", 1);
        json_val e;
        bool first = true;
        while (rc == 0 && json_array_next(&it, &e)) {
            if (!first) rc = pbuf_append(args, ",", 1);
            first = false;
            if (rc == 0) rc = json_compact(args, &e);
        }
        if (rc == 0) rc = pbuf_append(args, "]", 1);
        parley_bin canon[MAX_ATTACHMENTS];
        size_t ncanon = 0;
        if (rc == 0 && nbins) rc = canonical_bins(srv, args, bins, nbins, canon, &ncanon);
        if (rc) {
            client_close(c);
            return;
        }
        parley_args a = {(const char *)args->ptr, args->len, ncanon ? canon : NULL, ncanon};
        srv->stats.events_in++;
        if (srv->obs.event)
            srv->obs.event(s, false, ev, (size_t)evlen, a.json, a.json_len, srv->obs.user);
        if (!s->connected) return;
        if (s->nsp->h.on_event)
            s->nsp->h.on_event(s, ev, (size_t)evlen, &a, pk->id, s->nsp->h.user);
        return;
    }
    /* ACK / BINARY_ACK */
    for (pending_ack **pp = &s->acks; *pp; pp = &(*pp)->next) {
        pending_ack *a = *pp;
        if (a->id != pk->id) continue;
        *pp = a->next;
        ploop_timer_stop(srv->loop, &a->timer);
        int rc = pk->data.type == JSON_INVALID ? pbuf_append(args, "[]", 2)
                                               : json_compact(args, &pk->data);
        parley_bin canon[MAX_ATTACHMENTS];
        size_t ncanon = 0;
        if (rc == 0 && nbins) rc = canonical_bins(srv, args, bins, nbins, canon, &ncanon);
        if (rc) {
            free(a);
            client_close(c);
            return;
        }
        parley_args pa = {(const char *)args->ptr, args->len, ncanon ? canon : NULL, ncanon};
        srv->stats.acks_in++;
        a->fn(s, 0, &pa, a->user);
        free(a);
        return;
    }
    /* An acknowledgement nobody waits for (late, after a timeout): ignored,
     * as the reference does. */
}

/* Lets go of a binary packet in progress (the bytes leave the stats). */
static void bin_reset(sio_client *c)
{
    for (unsigned i = 0; i < c->bins_got; i++) pbuf_free(&c->bins[i]);
    free(c->bins);
    c->bins = NULL;
    c->bins_want = c->bins_got = 0;
    pbuf_free(&c->bin_text);
    assert(c->srv->stats.pending_attachment_bytes >= c->bin_bytes);
    c->srv->stats.pending_attachment_bytes -= c->bin_bytes;
    c->bin_bytes = 0;
}

/* Counts n more bytes held for the client's binary packet in progress,
 * within the per-session and server-wide caps. False (nothing counted)
 * when n would exceed one of them: the session has been closed. */
static bool bin_take(sio_client *c, size_t n)
{
    parley_server *srv = c->srv;
    parley_server_stats *st = &srv->stats;
    bool session = n > srv->max_att - c->bin_bytes;
    if (session || n > srv->max_pending - st->pending_attachment_bytes) {
        st->attachment_limit_closes++;
        uint64_t held;
        if (plog_limit_ok(&srv->log_att, ploop_now(srv->loop), 10000, &held))
            plog_warn("socket.io %s: %zu more attachment bytes exceed the %s limit (%zu, %zu "
                      "held): closing (%llu more since the last line)",
                      esession_id(c->es), n, session ? "session" : "server-wide",
                      session ? srv->max_att : srv->max_pending,
                      session ? c->bin_bytes : st->pending_attachment_bytes,
                      (unsigned long long)held);
        client_close_why(c, "parse error");
        return false;
    }
    c->bin_bytes += n;
    st->pending_attachment_bytes += n;
    if (st->pending_attachment_bytes > st->pending_attachment_peak)
        st->pending_attachment_peak = st->pending_attachment_bytes;
    return true;
}

/* An empty buffer holding a copy of data, allocated to size (what the
 * stats count is what is held). */
static int pbuf_exact(pbuf *b, const void *data, size_t len)
{
    if (len == 0) return 0;
    if (len > PBUF_MAX) return PARLEY_ENOMEM;
    b->ptr = malloc(len);
    if (!b->ptr) return PARLEY_ENOMEM;
    memcpy(b->ptr, data, len);
    b->len = b->cap = (uint32_t)len;
    return 0;
}

static void handle_packet(sio_client *c, const sio_packet *pk, const parley_bin *bins, size_t nbins)
{
    switch (pk->type) {
    case SIO_CONNECT:
        on_connect_packet(c, pk);
        return;
    case SIO_DISCONNECT: {
        parley_socket *s = client_socket(c, pk->nsp, pk->nsp_len);
        if (!s) {
            client_close(c);
            return;
        }
        socket_gone(s, "client namespace disconnect", false);
        return;
    }
    case SIO_EVENT:
    case SIO_BINARY_EVENT:
    case SIO_ACK:
    case SIO_BINARY_ACK:
        dispatch(c, pk, bins, nbins);
        return;
    default:
        /* CONNECT_ERROR from a client is invalid: the reference closes. */
        client_close(c);
        return;
    }
}

/* ---- engine callbacks ---- */

static void on_connect_timeout(ptimer *t)
{
    sio_client *c = PARLEY_CONTAINER_OF(t, sio_client, connect_timer);
    parley_server *srv = c->srv;
    if (!srv->o.require_auth) {
        if (c->nsocks == 0) client_close(c);
        return;
    }
    if (c->nauth || esession_closed(c->es)) return;
    srv->stats.auth_timeout_closes++;
    uint64_t held;
    if (plog_limit_ok(&srv->log_auth, ploop_now(srv->loop), 10000, &held))
        plog_info("socket.io %s: no authenticated namespace within %u ms (%u sockets): closing "
                  "(%llu more since the last line)",
                  esession_id(c->es), srv->o.connect_timeout_ms, (unsigned)c->nsocks,
                  (unsigned long long)held);
    client_close_why(c, "auth timeout");
}

static void client_close(sio_client *c)
{
    client_close_why(c, "forced close");
}

/* Closes the client's session. A binary packet in progress is let go of
 * now: a polling session may take a while to finish closing. */
static void client_close_why(sio_client *c, const char *reason)
{
    bin_reset(c);
    if (!esession_closed(c->es)) esession_close_why(c->es, reason);
}

/* The peer's address without the port ("127.0.0.1", "::1"). */
static void peer_ip(pconn *conn, char *out, size_t cap)
{
    char name[80];
    pconn_peer_name(conn, name, sizeof name);
    const char *start = name, *end = strrchr(name, ':');
    if (name[0] == '[') {
        start = name + 1;
        end = strchr(name, ']');
    }
    size_t len = end && end > start ? (size_t)(end - start) : strlen(start);
    if (len >= cap) len = cap - 1;
    memcpy(out, start, len);
    out[len] = 0;
}

/* The observer's record of the handshake: "<ip>\0<bytes>", allocated to
 * size. */
static void record_handshake(sio_client *c, const phttpd_req *req)
{
    parley_server *srv = c->srv;
    char ip[64];
    peer_ip(req->conn, ip, sizeof ip);
    pbuf b = {0};
    size_t iplen = strlen(ip) + 1;
    if (pbuf_append(&b, ip, iplen) == 0 &&
        srv->obs.handshake(req, ip, srv->tls != NULL, &b, srv->obs.user) == 0) {
        c->hs = malloc(b.len);
        if (c->hs) {
            memcpy(c->hs, b.ptr, b.len);
            c->hs_len = b.len - iplen;
        }
    }
    pbuf_free(&b);
}

static void eng_open(esession *es, const phttpd_req *req)
{
    parley_server *srv = engine_user(esession_engine(es));
    sio_client *c = pcalloc(1, sizeof *c);
    if (!c) {
        esession_close(es);
        return;
    }
    c->srv = srv;
    c->es = es;
    ptimer_init(&c->connect_timer, on_connect_timeout);
    esession_set_user(es, c);
    ploop_timer_start(srv->loop, &c->connect_timer, srv->o.connect_timeout_ms);
    if (esession_transport(es) == ENGINE_POLLING) {
        c->polling = true;
        srv->polling_clients++;
    }
    if (srv->obs.handshake && req && req->conn) record_handshake(c, req);
    if (srv->obs.session) srv->obs.session(true, NULL, srv->obs.user);
}

static void eng_upgrade(esession *es)
{
    sio_client *c = esession_user(es);
    if (!c) return;
    parley_server *srv = c->srv;
    if (c->polling) {
        c->polling = false;
        srv->polling_clients--;
    }
    for (uint8_t i = 0; srv->obs.upgraded && i < c->nsocks; i++)
        srv->obs.upgraded(c->socks[i], srv->obs.user);
}

static void eng_message(esession *es, bool binary, uint8_t *data, size_t len)
{
    sio_client *c = esession_user(es);
    parley_server *srv = c->srv;
    const char *why = NULL;
    sio_packet pk;
    if (srv->obs.traffic) srv->obs.traffic(false, len, srv->obs.user);
    if (binary) {
        if (c->bins_want == 0) {
            plog_debug("socket.io %s: binary data outside a binary packet", esession_id(es));
            client_close(c);
            return;
        }
        if (!bin_take(c, len)) return;
        if (pbuf_exact(&c->bins[c->bins_got], data, len) != 0) {
            client_close(c);
            return;
        }
        c->bins_got++;
        if (c->bins_got < c->bins_want) return;
        /* All attachments are in: parse the saved text again (its spans
         * point into our copy). */
        if (sio_parse((const char *)c->bin_text.ptr, c->bin_text.len, &srv->lim, &pk, &why) != 0) {
            client_close(c);
            return;
        }
        parley_bin bins[MAX_ATTACHMENTS];
        size_t n = PARLEY_MIN(c->bins_got, PARLEY_ARRAY_LEN(bins));
        for (size_t i = 0; i < n; i++) bins[i] = (parley_bin){c->bins[i].ptr, c->bins[i].len};
        /* The handler may send; keep the buffers until it returns. */
        pbuf text = c->bin_text;
        pbuf *parts = c->bins;
        unsigned got = c->bins_got;
        size_t held = c->bin_bytes;
        memset(&c->bin_text, 0, sizeof c->bin_text);
        c->bins = NULL;
        c->bins_want = c->bins_got = 0;
        c->bin_bytes = 0;
        handle_packet(c, &pk, bins, n); /* may free c */
        pbuf_free(&text);
        for (unsigned i = 0; i < got; i++) pbuf_free(&parts[i]);
        free(parts);
        srv->stats.pending_attachment_bytes -= held;
        return;
    }
    if (c->bins_want) {
        plog_debug("socket.io %s: text while attachments were expected", esession_id(es));
        client_close(c);
        return;
    }
    if (sio_parse((const char *)data, len, &srv->lim, &pk, &why) != 0) {
        plog_debug("socket.io %s: bad packet: %s", esession_id(es), why ? why : "?");
        client_close(c);
        return;
    }
    if (pk.type == SIO_BINARY_EVENT || pk.type == SIO_BINARY_ACK) {
        if (!client_socket(c, pk.nsp, pk.nsp_len)) {
            /* Refused now, as a plain packet for a namespace not joined
             * is: waiting for its attachments would hold memory for a
             * packet bound to be refused (the reference would buffer). */
            plog_debug("socket.io %s: binary packet for a namespace not joined", esession_id(es));
            client_close(c);
            return;
        }
        if (sio_check_placeholders(&pk.data, pk.attachments, srv->lim.max_depth, NULL, NULL,
                                   &why) != 0) {
            plog_debug("socket.io %s: bad placeholders: %s", esession_id(es), why ? why : "?");
            client_close(c);
            return;
        }
        if (pk.attachments > 0) {
            if (!bin_take(c, len)) return;
            c->bins = pcalloc(pk.attachments, sizeof *c->bins);
            if (!c->bins || pbuf_exact(&c->bin_text, data, len) != 0) {
                client_close(c);
                return;
            }
            c->bins_want = pk.attachments;
            return;
        }
    }
    handle_packet(c, &pk, NULL, 0);
}

static void eng_close(esession *es, const char *reason)
{
    sio_client *c = esession_user(es);
    if (!c) return;
    parley_server *srv = c->srv;
    while (c->nsocks) socket_gone(c->socks[c->nsocks - 1], reason, true);
    ploop_timer_stop(srv->loop, &c->connect_timer); /* after the sockets: see socket_gone */
    bin_reset(c);
    if (c->polling) srv->polling_clients--;
    free(c->socks);
    free(c->hs);
    free(c);
    esession_set_user(es, NULL);
    if (srv->obs.session) srv->obs.session(false, reason, srv->obs.user);
}

static const engine_cbs eng_cbs = {
    .on_open = eng_open, .on_message = eng_message, .on_close = eng_close,
    .on_upgrade = eng_upgrade};

/* ---- server ---- */

int parley_server_new(parley_loop *loop, const parley_server_opts *o_in, parley_server **out)
{
    parley_server_opts o_buf;
    if (!o_in)
        parley_server_opts_init(&o_buf);
    else if (POPTS_TAKE(parley_server_opts, parley_server_opts_init, &o_buf, o_in, path) != 0)
        return PARLEY_EINVAL;
    const parley_server_opts *o = &o_buf;
    if (!loop || !o->path || o->path[0] != '/' || (!o->polling && !o->websocket) ||
        o->max_payload == 0 || (!o->tls_cert != !o->tls_key) ||
        o->max_attachments > MAX_ATTACHMENTS)
        return PARLEY_EINVAL;
    parley_server *s = pcalloc(1, sizeof *s);
    if (!s) return PARLEY_ENOMEM;
    s->loop = loop;
    s->o = *o;
    s->reap.cb = reap;
    ptimer_init(&s->prune, on_prune);
    sio_limits_init(&s->lim);
    if (o->max_attachments) s->lim.max_attachments = o->max_attachments;
    int rc = 0;
    size_t plen = strlen(o->path);
    s->path = malloc(plen + 2);
    if (!s->path) rc = PARLEY_ENOMEM;
    if (rc == 0) {
        /* The reference always serves "<path>/". */
        memcpy(s->path, o->path, plen + 1);
        if (s->path[plen - 1] != '/') strcat(s->path, "/");
        s->o.path = s->path;
    }
    if (rc == 0 && o->cors_origin) {
        s->cors = strdup(o->cors_origin);
        if (!s->cors) rc = PARLEY_ENOMEM;
        s->o.cors_origin = s->cors;
    }
    if (rc == 0 && o->allowed_origins) {
        s->allowed = strdup(o->allowed_origins);
        if (!s->allowed) rc = PARLEY_ENOMEM;
        s->o.allowed_origins = s->allowed;
    }
    s->max_att = o->max_attachment_bytes;
    if (s->max_att == 0)
        s->max_att = o->max_payload <= SIZE_MAX / 4 ? 4 * o->max_payload : SIZE_MAX;
    s->max_pending = o->max_pending_attachment_bytes ? o->max_pending_attachment_bytes
                                                     : (size_t)64 * 1024 * 1024;
    s->o.tls_cert = s->o.tls_key = NULL;
    if (rc == 0 && o->tls_cert) {
        char err[256];
        s->tls = ptls_ctx_server(o->tls_cert, o->tls_key, err, sizeof err);
        if (!s->tls) {
            plog_error("TLS: %s", err);
            rc = PARLEY_ETLS;
        }
    }
    phttpd_opts hopts;
    phttpd_opts_init(&hopts);
    /* A polling POST may carry max_payload bytes. */
    if (hopts.limits.max_body < o->max_payload) hopts.limits.max_body = o->max_payload;
    if (rc == 0) rc = phttpd_new(loop, &hopts, &s->http);
    if (o->permessage_deflate) {
        pmd_config_init(&s->pmd);
        s->pmd.threshold = o->compression_threshold;
    }
    if (rc == 0) rc = parley_server__engine(s, s->path, &eng_cbs, s, &s->eng);
    if (rc == 0 && !parley_server_of(s, "/")) rc = PARLEY_ENOMEM;
    if (rc == 0 && o->recovery) {
        uint8_t r[3];
        prand_bytes(r, sizeof r);
        snprintf(s->offset_prefix, sizeof s->offset_prefix, "%02x%02x%02x", r[0], r[1], r[2]);
        ploop_timer_start(loop, &s->prune, 60000);
    }
    if (rc) {
        parley_server_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* Lets an embedder add plain HTTP routes next to Socket.IO (parleyd's
 * status page). Not in the public header: internal to Parley's programs. */
phttpd *parley_server__http(parley_server *s)
{
    return s->http;
}

ptls_ctx *parley_server__tls(parley_server *s)
{
    return s->tls;
}

int parley_server__engine(parley_server *s, const char *path, const engine_cbs *cbs, void *user,
                          engine **out)
{
    const parley_server_opts *o = &s->o;
    engine_opts eo;
    engine_opts_init(&eo);
    eo.ping_interval_ms = o->ping_interval_ms;
    eo.ping_timeout_ms = o->ping_timeout_ms;
    eo.upgrade_timeout_ms = o->upgrade_timeout_ms;
    eo.max_payload = o->max_payload;
    eo.transports = (o->polling ? ENGINE_POLLING : 0) | (o->websocket ? ENGINE_WEBSOCKET : 0);
    eo.cors_origin = s->cors;
    eo.cors_credentials = o->cors_credentials != 0;
    eo.allowed_origins = s->allowed;
    eo.origin_refused = &s->stats.origin_refused;
    if (o->permessage_deflate) eo.pmd = &s->pmd;
    return engine_attach(s->http, path, &eo, cbs, user, out);
}

int parley_server__cluster(parley_server *s, const char *tag, engine_route_fn route, void *user)
{
    return s->eng ? engine_set_cluster(s->eng, tag, route, user, 0, 0) : PARLEY_ESTATE;
}

void parley_server__stats(const parley_server *s, parley_server_stats *out)
{
    *out = s->stats;
    if (s->eng) engine_stats_get(s->eng, &out->eng);
}

void parley_server__nsps(const parley_server *s,
                         void (*fn)(const char *nsp, unsigned sockets, unsigned rooms, void *arg),
                         void *arg)
{
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&s->nsps, &pos))) {
        const parley_nsp *n = e->val;
        fn(n->name, (unsigned)n->sockets.n, (unsigned)n->rooms.n, arg);
    }
}

int parley_server_listen(parley_server *s, const char *host, unsigned port, unsigned *bound)
{
    return phttpd_listen(s->http, host, port, s->tls, bound);
}

static void on_http_done(phttpd *h, void *user)
{
    (void)h;
    parley_server *s = user;
    if (s->done) s->done(s, s->done_user);
}

void parley_server_shutdown(parley_server *s, void (*done)(parley_server *s, void *user),
                            void *user)
{
    s->shutting_down = true;
    s->done = done;
    s->done_user = user;
    /* Sessions end first (reason "server shutting down"), then the HTTP
     * connections close. */
    engine_free(s->eng);
    s->eng = NULL;
    phttpd_shutdown(s->http, on_http_done, s);
}

void parley_server_free(parley_server *s)
{
    if (!s) return;
    if (s->eng) engine_free(s->eng);
    phttpd_free(s->http);
    ptls_ctx_free(s->tls);
    ploop_timer_stop(s->loop, &s->prune);
    ploop_defer_cancel(s->loop, &s->reap);
    reap(&s->reap);
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&s->nsps, &pos))) {
        parley_nsp *n = e->val;
        size_t rp = 0;
        pmap_entry *re;
        while ((re = pmap_next(&n->rooms, &rp))) {
            room *r = re->val;
            free(r->m);
            free(r->name);
            free(r);
        }
        pmap_free(&n->rooms);
        pmap_free(&n->sockets);
        free(n->name);
        free(n);
    }
    pmap_free(&s->nsps);
    while (s->log_head) {
        stored_packet *p = s->log_head;
        s->log_head = p->next;
        stored_free(p);
    }
    pmap_free(&s->offsets);
    pos = 0;
    while ((e = pmap_next(&s->saved, &pos))) saved_free(e->val);
    pmap_free(&s->saved);
    pbuf_free(&s->scratch);
    pbuf_free(&s->scratch2);
    free(s->path);
    free(s->cors);
    free(s->allowed);
    free(s);
}
