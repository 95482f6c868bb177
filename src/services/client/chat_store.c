/*
 * The reactive state store (include/parley/store.h) over the messaging
 * client: a keyed registry of values kept as structured state and
 * rendered to JSON only when someone reads them (a delivery, a snapshot,
 * the cache writer), so a burst of N messages costs N list inserts and
 * one rendering, not N.
 *
 * Locking: one mutex guards the registry, the watchers and the cache's
 * dirty marks. Updates come from the chat's callbacks on its loop thread;
 * snapshots, watch/unwatch and dispatch may come from any thread. No
 * callback of the application runs with the mutex held.
 *
 * Coalescing: every entry has a version, bumped per change; every watcher
 * remembers the version it was last called with. A delivery calls each
 * watcher whose version differs, with the value of that moment. Delivery
 * is requested once per quiet-to-pending transition: a ploop_defer on the
 * loop (default) or one write to an eventfd (dispatch_fd mode), so a burst
 * costs one wake-up either way.
 *
 * Cache: entries that persist (messages, known presences, notifications,
 * the unread count) get a dirty mark; a writer thread waits for marks,
 * lets changes gather for cache_flush_ms, renders the dirty entries under
 * the mutex and writes them outside it in one SQLite transaction. The
 * loop thread never touches the file. Loading validates every row and
 * deletes the ones it skips.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif

#include <sqlite3.h>

#include "base/buf.h"
#include "base/log.h"
#include "base/map.h"
#include "base/util.h"
#include "client/sio_internal.h"
#include "client/ws_internal.h"
#include "codec/json.h"
#include "net/net.h"
#include "parley/store.h"
#include "services/msg_schema.h"

#define CACHE_SCHEMA_VERSION 1
#define CACHE_BUSY_MS        2000
#define ID_LEN               36
#define STORE_WS_MAX         64 /* parley_store_watch_ws per store */
#define STORE_WS_NAME_MAX    64

typedef enum kind {
    K_CONNECTION,
    K_TYPING,
    K_MESSAGES,
    K_PRESENCE,
    K_PRESENCE_ALL,
    K_NOTIFS,
    K_UNREAD,
    K_WS, /* "ws/<name>/state" */
} kind;

/* A notification in "notifications": what can change (delivered, read)
 * apart, the rest of the server's object is kept rendered. */
typedef struct nitem {
    int64_t id;
    bool delivered, read;
    char *rest; /* ,"type":...  (leading comma; every member but id, delivered, read) */
} nitem;

/* A message in a list. The members that never change after it is known
 * ("type", "priority", "content", "text", and whatever a newer cache
 * holds) are kept as rendered JSON members in `rest`. */
typedef struct item {
    int64_t id, seq, ts;
    char client_id[ID_LEN + 1];
    char *from;
    bool mine;
    int status;  /* parley_msg_status for this user's messages, else 0 */
    bool hidden; /* parley_store_send: not shown until the chat took it */
    char *rest;  /* ,"type":...,"priority":...  (leading comma) */
} item;

typedef struct entry {
    char *key;
    size_t klen;
    kind kind;
    uint64_t version;
    char *json; /* rendering of the current version; NULL: stale */
    size_t len;
    bool cache_dirty;
    /* K_CONNECTION */
    parley_chat_state state;
    char code[32], message[160];
    /* K_TYPING: sorted user ids */
    char **users;
    size_t nusers;
    /* K_MESSAGES */
    item *items; /* seq > 0 ascending, then the unsent (seq 0) in send order */
    size_t n, cap;
    int64_t peer_delivered, peer_read;
    /* K_PRESENCE (the user is key + 9) */
    bool known; /* the server told us: listed in "presence" */
    parley_presence pstatus;
    char ptext[MSG_PRESENCE_TEXT_MAX + 1];
    int64_t last_seen; /* -1: null */
    unsigned devices;
    /* K_NOTIFS: ascending id */
    nitem *notifs;
    size_t nnotifs, capnotifs;
    /* K_UNREAD */
    int64_t unread;
    /* K_WS */
    pws_state ws_state;
    unsigned ws_attempt;
    uint32_t ws_delay_ms;
    int ws_http_status, ws_code;
    char ws_reason[32];
} entry;

typedef struct watcher {
    int64_t id;
    entry *e;
    parley_store_fn fn;
    void *user;
    uint64_t seen; /* version last delivered; UINT64_MAX: none yet */
} watcher;

struct parley_store {
    parley_store_opts o;
    parley_chat_opts app; /* the application's chat options (callbacks) */
    char *cache_path;
    parley_chat *chat;
    parley_loop *loop;
    char user[MSG_USER_MAX + 1];

    pthread_mutex_t mu;
    pthread_cond_t cond; /* watchers finishing, the writer's wake-ups */
    pmap entries;        /* key -> entry */
    watcher *watchers;
    size_t nwatchers, capwatchers;
    int64_t next_watch;
    bool signalled; /* a delivery is requested and has not started */
    bool freeing;
    int64_t running;      /* watch id whose callback is running, 0: none */
    pthread_t running_on; /* on this thread */
    pdefer defer;         /* default mode */
    int fd_read, fd_write;
    /* raw WebSocket clients observed (parley_store_watch_ws) */
    struct wsobs *wsobs[STORE_WS_MAX];

    /* cache */
    sqlite3 *db;
    pthread_t writer;
    bool writer_started, writer_stop;
    size_t ndirty;
};

/* ---- keys and entries ---- */

static bool key_kind(const char *key, kind *k, const char **conv)
{
    const char *c = NULL;
    if (!strcmp(key, "connection")) {
        *k = K_CONNECTION;
    } else if (!strncmp(key, "typing/", 7)) {
        *k = K_TYPING;
        c = key + 7;
    } else if (!strncmp(key, "messages/", 9)) {
        *k = K_MESSAGES;
        c = key + 9;
    } else if (!strcmp(key, "notifications")) {
        *k = K_NOTIFS;
    } else if (!strcmp(key, "notifications/unread")) {
        *k = K_UNREAD;
    } else if (!strcmp(key, "presence")) {
        *k = K_PRESENCE_ALL;
    } else if (!strncmp(key, "presence/", 9)) {
        *k = K_PRESENCE;
        if (!msg_valid_user(key + 9, strlen(key + 9))) return false;
    } else if (!strncmp(key, "ws/", 3)) {
        /* ws/<name>/state, name as a room name */
        size_t len = strlen(key);
        if (len < 3 + 1 + 6 || strcmp(key + len - 6, "/state") != 0 ||
            !msg_valid_room(key + 3, len - 9) || len - 9 > STORE_WS_NAME_MAX)
            return false;
        *k = K_WS;
    } else {
        return false;
    }
    if (c) {
        msg_conv parsed;
        if (!msg_conv_parse(&parsed, c, strlen(c))) return false;
    }
    if (conv) *conv = c;
    return true;
}

static void item_free(item *it)
{
    free(it->from);
    free(it->rest);
}

static void entry_free(entry *e)
{
    for (size_t i = 0; i < e->nusers; i++) free(e->users[i]);
    free(e->users);
    for (size_t i = 0; i < e->n; i++) item_free(&e->items[i]);
    free(e->items);
    for (size_t i = 0; i < e->nnotifs; i++) free(e->notifs[i].rest);
    free(e->notifs);
    free(e->json);
    free(e->key);
    free(e);
}

/* The entry for key, created with its empty value when absent. Locked. */
static entry *entry_get(parley_store *s, const char *key, bool create)
{
    size_t klen = strlen(key);
    entry *e = pmap_get(&s->entries, key, klen);
    if (e || !create) return e;
    kind k;
    if (!key_kind(key, &k, NULL)) return NULL;
    e = pcalloc(1, sizeof *e);
    if (!e) return NULL;
    e->key = strdup(key);
    e->klen = klen;
    e->kind = k;
    e->state = PARLEY_CHAT_OFFLINE;
    e->last_seen = -1;
    e->version = 1;
    if (!e->key || pmap_put(&s->entries, e->key, klen, e) != 0) {
        entry_free(e);
        return NULL;
    }
    return e;
}

static entry *conv_entry(parley_store *s, const char *prefix, const char *conv)
{
    char key[16 + MSG_CONV_MAX + 1];
    snprintf(key, sizeof key, "%s%s", prefix, conv);
    return entry_get(s, key, true);
}

/* ---- rendering ---- */

static const char *state_name(parley_chat_state st)
{
    switch (st) {
    case PARLEY_CHAT_OFFLINE:
        return "offline";
    case PARLEY_CHAT_CONNECTING:
        return "connecting";
    case PARLEY_CHAT_SYNCING:
        return "syncing";
    case PARLEY_CHAT_ONLINE:
        return "online";
    case PARLEY_CHAT_REFUSED:
        return "refused";
    }
    return "offline";
}

static const char *const status_names[] = {"", "sending", "sent", "delivered", "read", "failed"};

static int status_from_name(const char *p, size_t len)
{
    for (int i = 1; i <= PARLEY_MSG_FAILED; i++)
        if (strlen(status_names[i]) == len && !memcmp(status_names[i], p, len)) return i;
    return 0;
}

static const char *const presence_names[] = {"offline", "busy", "away", "online"};

/* {"user","status","text","last_seen","devices"}, as the protocol's
 * Presence object. */
static int render_presence(pbuf *b, const entry *e)
{
    const char *user = e->key + 9;
    int rc = pbuf_append_str(b, "{\"user\":");
    if (rc == 0) rc = json_append_string(b, user, strlen(user));
    if (rc == 0) rc = pbuf_appendf(b, ",\"status\":\"%s\",\"text\":", presence_names[e->pstatus]);
    if (rc == 0) rc = json_append_string(b, e->ptext, strlen(e->ptext));
    if (rc == 0 && e->last_seen < 0) rc = pbuf_append_str(b, ",\"last_seen\":null");
    if (rc == 0 && e->last_seen >= 0)
        rc = pbuf_appendf(b, ",\"last_seen\":%lld", (long long)e->last_seen);
    if (rc == 0) rc = pbuf_appendf(b, ",\"devices\":%u}", e->devices);
    return rc;
}

static int cmp_entry_key(const void *a, const void *b)
{
    return strcmp((*(entry *const *)a)->key, (*(entry *const *)b)->key);
}

/* "presence": every known user's Presence, keyed by user id, in id order
 * (sorted here: the registry is a hash map). Locked. */
static int render_presence_all(parley_store *s, pbuf *b)
{
    size_t n = 0, pos = 0;
    pmap_entry *pe;
    while ((pe = pmap_next(&s->entries, &pos))) {
        entry *e = pe->val;
        n += e->kind == K_PRESENCE && e->known;
    }
    entry **list = n ? malloc(n * sizeof *list) : NULL;
    if (n && !list) return PARLEY_ENOMEM;
    size_t k = 0;
    pos = 0;
    while ((pe = pmap_next(&s->entries, &pos)) && k < n) {
        entry *e = pe->val;
        if (e->kind == K_PRESENCE && e->known) list[k++] = e;
    }
    if (k > 1) qsort(list, k, sizeof *list, cmp_entry_key);
    int rc = pbuf_append(b, "{", 1);
    for (size_t i = 0; rc == 0 && i < k; i++) {
        const char *user = list[i]->key + 9;
        if (i) rc = pbuf_append(b, ",", 1);
        if (rc == 0) rc = json_append_string(b, user, strlen(user));
        if (rc == 0) rc = pbuf_append(b, ":", 1);
        if (rc == 0) rc = render_presence(b, list[i]);
    }
    if (rc == 0) rc = pbuf_append(b, "}", 1);
    free(list);
    return rc;
}

static int render_item(pbuf *b, const item *it)
{
    int rc = pbuf_appendf(b, "{\"id\":%lld,\"seq\":%lld,\"ts\":%lld,\"from\":", (long long)it->id,
                          (long long)it->seq, (long long)it->ts);
    if (rc == 0) rc = json_append_string(b, it->from, strlen(it->from));
    if (rc == 0)
        rc = pbuf_appendf(b, ",\"client_id\":\"%s\",\"mine\":%s%s", it->client_id,
                          it->mine ? "true" : "false", it->rest);
    if (rc == 0 && it->status) rc = pbuf_appendf(b, ",\"status\":\"%s\"", status_names[it->status]);
    if (rc == 0) rc = pbuf_append(b, "}", 1);
    return rc;
}

/* Renders e into e->json when stale. Locked. */
static const char *const ws_state_names[] = {"idle", "connecting", "open", "reconnecting",
                                              "closed"};

/* {"state", "attempt", and what applies: "delay_ms" (reconnecting),
 * "reason" and "code" (after a connection or an attempt ended),
 * "http_status" (a refused handshake)} */
static int render_ws(pbuf *b, const entry *e)
{
    int rc = pbuf_appendf(b, "{\"state\":\"%s\",\"attempt\":%u", ws_state_names[e->ws_state],
                          e->ws_attempt);
    if (rc == 0 && e->ws_state == PWS_RECONNECTING)
        rc = pbuf_appendf(b, ",\"delay_ms\":%u", (unsigned)e->ws_delay_ms);
    if (rc == 0 && e->ws_reason[0]) {
        rc = pbuf_append_str(b, ",\"reason\":");
        if (rc == 0) rc = json_append_string(b, e->ws_reason, strlen(e->ws_reason));
        if (rc == 0 && e->ws_code) rc = pbuf_appendf(b, ",\"code\":%d", e->ws_code);
    }
    if (rc == 0 && e->ws_http_status) rc = pbuf_appendf(b, ",\"http_status\":%d", e->ws_http_status);
    if (rc == 0) rc = pbuf_append(b, "}", 1);
    return rc;
}

static int entry_render(parley_store *s, entry *e)
{
    if (e->json) return 0;
    pbuf b = {0};
    int rc = 0;
    switch (e->kind) {
    case K_CONNECTION:
        rc = pbuf_appendf(&b, "{\"state\":\"%s\"", state_name(e->state));
        if (rc == 0 && e->state == PARLEY_CHAT_REFUSED) {
            rc = pbuf_append_str(&b, ",\"code\":");
            if (rc == 0) rc = json_append_string(&b, e->code, strlen(e->code));
            if (rc == 0) rc = pbuf_append_str(&b, ",\"message\":");
            if (rc == 0) rc = json_append_string(&b, e->message, strlen(e->message));
        }
        if (rc == 0) rc = pbuf_append(&b, "}", 1);
        break;
    case K_TYPING:
        rc = pbuf_append(&b, "[", 1);
        for (size_t i = 0; rc == 0 && i < e->nusers; i++) {
            if (i) rc = pbuf_append(&b, ",", 1);
            if (rc == 0) rc = json_append_string(&b, e->users[i], strlen(e->users[i]));
        }
        if (rc == 0) rc = pbuf_append(&b, "]", 1);
        break;
    case K_MESSAGES:
        rc = pbuf_append(&b, "[", 1);
        for (size_t i = 0, shown = 0; rc == 0 && i < e->n; i++) {
            if (e->items[i].hidden) continue;
            if (shown++) rc = pbuf_append(&b, ",", 1);
            if (rc == 0) rc = render_item(&b, &e->items[i]);
        }
        if (rc == 0) rc = pbuf_append(&b, "]", 1);
        break;
    case K_PRESENCE:
        rc = render_presence(&b, e);
        break;
    case K_PRESENCE_ALL:
        rc = render_presence_all(s, &b);
        break;
    case K_NOTIFS:
        rc = pbuf_append(&b, "[", 1);
        for (size_t i = 0; rc == 0 && i < e->nnotifs; i++) {
            const nitem *n = &e->notifs[i];
            rc = pbuf_appendf(&b, "%s{\"id\":%lld%s,\"delivered\":%s,\"read\":%s}", i ? "," : "",
                              (long long)n->id, n->rest, n->delivered ? "true" : "false",
                              n->read ? "true" : "false");
        }
        if (rc == 0) rc = pbuf_append(&b, "]", 1);
        break;
    case K_UNREAD:
        rc = pbuf_appendf(&b, "%lld", (long long)e->unread);
        break;
    case K_WS:
        rc = render_ws(&b, e);
        break;
    }
    if (rc == 0) rc = pbuf_append(&b, "", 1);
    if (rc != 0) {
        pbuf_free(&b);
        return rc;
    }
    e->json = (char *)b.ptr;
    e->len = b.len - 1;
    return 0;
}

/* ---- delivery ---- */

static bool has_watcher(parley_store *s, const entry *e)
{
    for (size_t i = 0; i < s->nwatchers; i++)
        if (s->watchers[i].e == e) return true;
    return false;
}

static void on_defer(pdefer *d);

/* Asks for a delivery. Locked; returns true when the caller must hop to
 * the loop to queue it (default mode, not on the loop thread). */
static bool request_delivery(parley_store *s)
{
    if (s->signalled || s->freeing) return false;
    s->signalled = true;
    if (s->o.dispatch_fd) {
        uint64_t one = 1;
        /* A full eventfd or pipe is readable already: nothing is lost. */
        ssize_t w = write(s->fd_write, &one, s->fd_write == s->fd_read ? 8 : 1);
        (void)w;
        return false;
    }
    if (s->loop && ploop_on_thread(s->loop)) {
        ploop_defer(s->loop, &s->defer);
        return false;
    }
    return true;
}

static void defer_on_loop(void *arg)
{
    parley_store *s = arg;
    pthread_mutex_lock(&s->mu);
    if (!s->freeing) ploop_defer(s->loop, &s->defer);
    pthread_mutex_unlock(&s->mu);
}

/* Whether e's value is kept in the cache: the message lists, the
 * presence of every user the server reported ("presence" is made of
 * those rows), the notification list and the unread count. */
static bool cached_kind(const entry *e)
{
    return e->kind == K_MESSAGES || e->kind == K_NOTIFS || e->kind == K_UNREAD ||
           (e->kind == K_PRESENCE && e->known);
}

/* Marks e for the cache writer. Locked. */
static void mark_dirty(parley_store *s, entry *e)
{
    if (!s->db || e->cache_dirty || !cached_kind(e)) return;
    e->cache_dirty = true;
    if (s->ndirty++ == 0) pthread_cond_broadcast(&s->cond);
}

/* An entry changed: new version, stale rendering, cache and watchers told.
 * Locked. Returns true when the caller, not on the loop thread, must hop
 * there to queue the delivery (after unlocking: see defer_on_loop). */
static bool changed(parley_store *s, entry *e)
{
    e->version++;
    free(e->json);
    e->json = NULL;
    mark_dirty(s, e);
    return has_watcher(s, e) && request_delivery(s);
}

typedef struct job {
    int64_t id;
    parley_store_fn fn;
    void *user;
    char *key, *json;
    size_t len;
} job;

/* Runs every pending delivery on the calling thread. */
static int deliver(parley_store *s)
{
    pthread_mutex_lock(&s->mu);
    s->signalled = false;
    if (s->o.dispatch_fd) {
        uint64_t v;
        char drain[64];
        if (s->fd_read == s->fd_write) {
            ssize_t r = read(s->fd_read, &v, sizeof v);
            (void)r;
        } else {
            while (read(s->fd_read, drain, sizeof drain) > 0) {
            }
        }
    }
    job *jobs = s->nwatchers ? calloc(s->nwatchers, sizeof *jobs) : NULL;
    size_t n = 0;
    for (size_t i = 0; jobs && i < s->nwatchers; i++) {
        watcher *w = &s->watchers[i];
        if (w->seen == w->e->version || entry_render(s, w->e) != 0) continue;
        job *j = &jobs[n];
        j->key = strdup(w->e->key);
        j->json = malloc(w->e->len + 1);
        if (!j->key || !j->json) {
            free(j->key);
            free(j->json);
            continue; /* out of memory: this watcher gets the next change */
        }
        memcpy(j->json, w->e->json, w->e->len + 1);
        j->len = w->e->len;
        j->id = w->id;
        j->fn = w->fn;
        j->user = w->user;
        w->seen = w->e->version;
        n++;
    }
    pthread_mutex_unlock(&s->mu);
    int ran = 0;
    for (size_t i = 0; i < n; i++) {
        job *j = &jobs[i];
        pthread_mutex_lock(&s->mu);
        bool alive = false;
        for (size_t k = 0; k < s->nwatchers && !alive; k++) alive = s->watchers[k].id == j->id;
        if (alive) {
            s->running = j->id;
            s->running_on = pthread_self();
        }
        pthread_mutex_unlock(&s->mu);
        if (alive) {
            j->fn(s, j->key, j->json, j->len, j->user);
            ran++;
            pthread_mutex_lock(&s->mu);
            s->running = 0;
            pthread_cond_broadcast(&s->cond);
            pthread_mutex_unlock(&s->mu);
        }
        free(j->key);
        free(j->json);
    }
    free(jobs);
    return ran;
}

static void on_defer(pdefer *d)
{
    deliver(PARLEY_CONTAINER_OF(d, parley_store, defer));
}

/* ---- messages ---- */

static void set_status(entry *e, item *it, int status)
{
    (void)e;
    /* Forward only; only an unsent message can fail, and that is final. */
    if (it->status == PARLEY_MSG_FAILED) return;
    if (status == PARLEY_MSG_FAILED) {
        if (it->seq == 0) it->status = status;
    } else if (status > it->status) {
        it->status = status;
    }
}

/* Drops the oldest while over the bound. */
static void trim(parley_store *s, entry *e)
{
    size_t drop = e->n > s->o.max_messages ? e->n - s->o.max_messages : 0;
    if (!drop) return;
    for (size_t i = 0; i < drop; i++) item_free(&e->items[i]);
    memmove(e->items, e->items + drop, (e->n - drop) * sizeof *e->items);
    e->n -= drop;
}

/* Where a stored message with seq goes: *found when one is there already. */
static size_t seq_slot(const entry *e, int64_t seq, bool *found)
{
    size_t end = e->n;
    while (end > 0 && e->items[end - 1].seq == 0) end--;
    size_t lo = 0, hi = end;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (e->items[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < end && e->items[lo].seq == seq;
    return lo;
}

static item *find_client_id(entry *e, const char *cid)
{
    if (strlen(cid) != ID_LEN) return NULL;
    for (size_t i = e->n; i-- > 0;)
        if (!strcmp(e->items[i].client_id, cid)) return &e->items[i];
    return NULL;
}

/* Inserts *it at pos (taking its allocations). false: out of memory (the
 * item is freed). */
static bool insert_at(entry *e, size_t pos, item *it)
{
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 16;
        item *p = realloc(e->items, cap * sizeof *p);
        if (!p) {
            item_free(it);
            return false;
        }
        e->items = p;
        e->cap = cap;
    }
    memmove(e->items + pos + 1, e->items + pos, (e->n - pos) * sizeof *e->items);
    e->items[pos] = *it;
    e->n++;
    return true;
}

/* An unsent item became stored as seq: moved to its place (or merged
 * into the copy that is there already). */
static void place_sent(entry *e, item *it, int64_t seq, int64_t id)
{
    size_t at = (size_t)(it - e->items);
    item moving = *it;
    memmove(e->items + at, e->items + at + 1, (e->n - at - 1) * sizeof *e->items);
    e->n--;
    moving.seq = seq;
    moving.id = id;
    bool found;
    size_t pos = seq_slot(e, seq, &found);
    if (found) {
        set_status(e, &e->items[pos], moving.status);
        item_free(&moving);
        return;
    }
    insert_at(e, pos, &moving);
}

/* Watermarks of the other participants: this user's messages up to them
 * are delivered / read. */
static void apply_watermarks(entry *e)
{
    for (size_t i = 0; i < e->n; i++) {
        item *it = &e->items[i];
        if (!it->mine || it->seq == 0) continue;
        if (it->seq <= e->peer_read)
            set_status(e, it, PARLEY_MSG_READ);
        else if (it->seq <= e->peer_delivered)
            set_status(e, it, PARLEY_MSG_DELIVERED);
        else if (it->status == 0)
            it->status = PARLEY_MSG_SENT;
    }
}

/* The ,"type":...,"priority":...,"content":...,"text":... members. */
static char *rest_members(const char *type, const char *priority, const char *content,
                          size_t content_len, const char *text)
{
    pbuf b = {0};
    int rc = pbuf_append_str(&b, ",\"type\":");
    if (rc == 0) rc = json_append_string(&b, type, strlen(type));
    if (rc == 0) rc = pbuf_append_str(&b, ",\"priority\":");
    if (rc == 0) rc = json_append_string(&b, priority, strlen(priority));
    if (rc == 0) rc = pbuf_append_str(&b, ",\"content\":");
    if (rc == 0) rc = pbuf_append(&b, content, content_len);
    if (rc == 0) rc = pbuf_append_str(&b, ",\"text\":");
    if (rc == 0) rc = json_append_string(&b, text, strlen(text));
    if (rc == 0) rc = pbuf_append(&b, "", 1);
    if (rc != 0) {
        pbuf_free(&b);
        return NULL;
    }
    return (char *)b.ptr;
}

static void take_message(parley_store *s, const parley_chat_message *m)
{
    entry *e = conv_entry(s, "messages/", m->conversation);
    if (!e) return;
    item *mine = m->mine ? find_client_id(e, m->client_id) : NULL;
    if (mine && mine->seq == 0) {
        /* This device's own message, come back through a sync (an earlier
         * run's queue): it is stored now. */
        set_status(e, mine, PARLEY_MSG_SENT);
        place_sent(e, mine, m->seq, m->id);
        apply_watermarks(e);
        changed(s, e);
        return;
    }
    bool found;
    size_t pos = seq_slot(e, m->seq, &found);
    if (found) return;
    item it;
    memset(&it, 0, sizeof it);
    it.id = m->id;
    it.seq = m->seq;
    it.ts = m->ts;
    snprintf(it.client_id, sizeof it.client_id, "%s", m->client_id);
    it.mine = m->mine != 0;
    it.from = strdup(m->from);
    it.rest = rest_members(m->type, m->priority, m->content_json, m->content_len, m->text);
    if (!it.from || !it.rest) {
        item_free(&it);
        return;
    }
    if (!insert_at(e, pos, &it)) return;
    if (m->mine) apply_watermarks(e);
    trim(s, e);
    changed(s, e);
}

/* ---- the chat's callbacks (loop thread) ---- */

static void cb_state(parley_chat *c, parley_chat_state st, const parley_chat_error *why, void *user)
{
    parley_store *s = user;
    pthread_mutex_lock(&s->mu);
    entry *e = entry_get(s, "connection", true);
    if (e) {
        e->state = st;
        snprintf(e->code, sizeof e->code, "%s", why ? why->code : "");
        snprintf(e->message, sizeof e->message, "%s", why ? why->message : "");
        changed(s, e);
    }
    if (st != PARLEY_CHAT_ONLINE && st != PARLEY_CHAT_SYNCING) {
        /* Typing states are live only: nobody can say "stop" now. */
        size_t pos = 0;
        pmap_entry *pe;
        while ((pe = pmap_next(&s->entries, &pos))) {
            entry *t = pe->val;
            if (t->kind != K_TYPING || !t->nusers) continue;
            for (size_t i = 0; i < t->nusers; i++) free(t->users[i]);
            t->nusers = 0;
            changed(s, t);
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (s->app.on_state) s->app.on_state(c, st, why, s->app.user);
}

static void cb_message(parley_chat *c, const parley_chat_message *m, void *user)
{
    parley_store *s = user;
    pthread_mutex_lock(&s->mu);
    take_message(s, m);
    pthread_mutex_unlock(&s->mu);
    if (s->app.on_message) s->app.on_message(c, m, s->app.user);
}

static entry *own_entry(parley_store *s, const parley_chat_status *st, item **it)
{
    *it = NULL;
    if (st->conversation && st->conversation[0]) {
        entry *e = conv_entry(s, "messages/", st->conversation);
        if (e) *it = find_client_id(e, st->client_id);
        return *it ? e : NULL;
    }
    /* SENDING and FAILED carry no conversation: look where unsent ones are. */
    size_t pos = 0;
    pmap_entry *pe;
    while ((pe = pmap_next(&s->entries, &pos))) {
        entry *e = pe->val;
        if (e->kind != K_MESSAGES) continue;
        if ((*it = find_client_id(e, st->client_id))) return e;
    }
    return NULL;
}

static void cb_status(parley_chat *c, const parley_chat_status *st, void *user)
{
    parley_store *s = user;
    pthread_mutex_lock(&s->mu);
    item *it;
    entry *e = own_entry(s, st, &it);
    if (e) {
        int before = it->status;
        int64_t seq = it->seq;
        set_status(e, it, st->status);
        if (it->seq == 0 && st->seq > 0) {
            place_sent(e, it, st->seq, st->id);
            apply_watermarks(e);
        }
        if ((before != it->status || seq != st->seq) && !it->hidden) changed(s, e);
    }
    pthread_mutex_unlock(&s->mu);
    if (s->app.on_status) s->app.on_status(c, st, s->app.user);
}

static void cb_receipt(parley_chat *c, const char *conversation, const char *user_id,
                       int64_t delivered, int64_t read, void *user)
{
    parley_store *s = user;
    if (strcmp(user_id, s->user) != 0) {
        pthread_mutex_lock(&s->mu);
        entry *e = conv_entry(s, "messages/", conversation);
        if (e) {
            int64_t d = read > delivered ? read : delivered; /* read implies delivered */
            bool moved = d > e->peer_delivered || read > e->peer_read;
            if (d > e->peer_delivered) e->peer_delivered = d;
            if (read > e->peer_read) e->peer_read = read;
            if (moved) {
                /* A change only when a message of this user moved: statuses
                 * of stored messages only grow, so the sum tells. */
                int sum = 0, after = 0;
                for (size_t i = 0; i < e->n; i++) sum += e->items[i].status;
                apply_watermarks(e);
                for (size_t i = 0; i < e->n; i++) after += e->items[i].status;
                if (sum != after) changed(s, e);
            }
        }
        pthread_mutex_unlock(&s->mu);
    }
    if (s->app.on_receipt)
        s->app.on_receipt(c, conversation, user_id, delivered, read, s->app.user);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void cb_typing(parley_chat *c, const char *conversation, const char *user_id, int typing,
                      void *user)
{
    parley_store *s = user;
    pthread_mutex_lock(&s->mu);
    entry *e = conv_entry(s, "typing/", conversation);
    if (e) {
        size_t at = 0;
        while (at < e->nusers && strcmp(e->users[at], user_id) != 0) at++;
        if (typing && at == e->nusers) {
            char **p = realloc(e->users, (e->nusers + 1) * sizeof *p);
            char *u = strdup(user_id);
            if (p) e->users = p;
            if (p && u) {
                e->users[e->nusers++] = u;
                qsort(e->users, e->nusers, sizeof *e->users, cmp_str);
                changed(s, e);
            } else {
                free(u);
            }
        } else if (!typing && at < e->nusers) {
            free(e->users[at]);
            memmove(e->users + at, e->users + at + 1, (e->nusers - at - 1) * sizeof *e->users);
            e->nusers--;
            changed(s, e);
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (s->app.on_typing) s->app.on_typing(c, conversation, user_id, typing, s->app.user);
}

static void cb_member(parley_chat *c, const char *room, const char *user_id, int joined, void *user)
{
    parley_store *s = user;
    if (s->app.on_member) s->app.on_member(c, room, user_id, joined, s->app.user);
}

static void cb_presence(parley_chat *c, const parley_chat_presence *p, void *user)
{
    parley_store *s = user;
    pthread_mutex_lock(&s->mu);
    char key[9 + MSG_USER_MAX + 1];
    snprintf(key, sizeof key, "presence/%s", p->user);
    entry *e = entry_get(s, key, true);
    /* Answers repeat what events said: only a difference is a change
     * (last_seen included: "now" while online, the disconnection after).
     * A first report equal to the unknown-user value changes nothing in
     * "presence/<user>" but lists the user in "presence". */
    parley_presence st = p->status <= PARLEY_PRESENCE_ONLINE ? p->status : PARLEY_PRESENCE_OFFLINE;
    bool differs = e && (e->pstatus != st || strcmp(e->ptext, p->text) != 0 ||
                         e->last_seen != p->last_seen || e->devices != p->devices);
    if (e && (differs || !e->known)) {
        e->known = true;
        e->pstatus = st;
        snprintf(e->ptext, sizeof e->ptext, "%s", p->text);
        e->last_seen = p->last_seen;
        e->devices = p->devices;
        if (differs)
            changed(s, e);
        else
            mark_dirty(s, e); /* listed now: its row makes it known after a restart */
        entry *all = entry_get(s, "presence", true);
        if (all) changed(s, all);
    }
    pthread_mutex_unlock(&s->mu);
    if (s->app.on_presence) s->app.on_presence(c, p, s->app.user);
}

/* ---- notifications ---- */

static int64_t wall_ms(void);

/* The members of the server's object but id, delivered and read, as
 * ,"name":value text (leading comma). */
static char *notif_rest(const char *json, size_t len)
{
    json_val obj, k, v;
    if (json_parse(json, len, JSON_DEFAULT_MAX_DEPTH, &obj, NULL) != 0 || obj.type != JSON_OBJECT)
        return NULL;
    pbuf b = {0};
    int rc = 0;
    json_iter it;
    json_iter_init(&it, &obj);
    while (rc == 0 && json_object_next(&it, &k, &v)) {
        if (json_string_eq(&k, "id") || json_string_eq(&k, "delivered") ||
            json_string_eq(&k, "read"))
            continue;
        rc = pbuf_append(&b, ",", 1);
        if (rc == 0) rc = pbuf_append(&b, k.p, k.len);
        if (rc == 0) rc = pbuf_append(&b, ":", 1);
        if (rc == 0) rc = pbuf_append(&b, v.p, v.len);
    }
    if (rc == 0) rc = pbuf_append(&b, "", 1);
    if (rc != 0) {
        pbuf_free(&b);
        return NULL;
    }
    return (char *)b.ptr;
}

static void cb_notification(parley_chat *c, const parley_chat_notification *n, void *user)
{
    parley_store *s = user;
    pthread_mutex_lock(&s->mu);
    entry *e = entry_get(s, "notifications", true);
    /* One that expired on the way is not shown (the server no longer
     * counts it). */
    if (e && !(n->expires > 0 && n->expires <= wall_ms())) {
        size_t lo = 0, hi = e->nnotifs;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (e->notifs[mid].id < n->id)
                lo = mid + 1;
            else
                hi = mid;
        }
        /* A live one is acknowledged by the chat once this returns. */
        bool delivered = n->delivered || n->live, read = n->read;
        if (lo < e->nnotifs && e->notifs[lo].id == n->id) {
            nitem *it = &e->notifs[lo];
            if ((delivered && !it->delivered) || (read && !it->read)) {
                it->delivered |= delivered;
                it->read |= read;
                changed(s, e);
            }
        } else if (e->nnotifs < s->o.max_notifications || lo > 0) {
            nitem it = {.id = n->id, .delivered = delivered, .read = read};
            it.rest = notif_rest(n->json, n->json_len);
            if (e->nnotifs == e->capnotifs) {
                size_t cap = e->capnotifs ? e->capnotifs * 2 : 16;
                nitem *p = realloc(e->notifs, cap * sizeof *p);
                if (p) {
                    e->notifs = p;
                    e->capnotifs = cap;
                }
            }
            if (it.rest && e->nnotifs < e->capnotifs) {
                memmove(e->notifs + lo + 1, e->notifs + lo, (e->nnotifs - lo) * sizeof *e->notifs);
                e->notifs[lo] = it;
                e->nnotifs++;
                /* Bounded: the oldest go. */
                size_t drop =
                    e->nnotifs > s->o.max_notifications ? e->nnotifs - s->o.max_notifications : 0;
                for (size_t i = 0; i < drop; i++) free(e->notifs[i].rest);
                memmove(e->notifs, e->notifs + drop, (e->nnotifs - drop) * sizeof *e->notifs);
                e->nnotifs -= drop;
                changed(s, e);
            } else {
                free(it.rest);
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (s->app.on_notification) s->app.on_notification(c, n, s->app.user);
}

/* Marks ids read (all of them when ids is NULL). Locked. */
static void notifs_read(parley_store *s, const int64_t *ids, size_t n)
{
    entry *e = entry_get(s, "notifications", true);
    if (!e) return;
    bool moved = false;
    for (size_t i = 0; i < e->nnotifs; i++) {
        nitem *it = &e->notifs[i];
        if (it->read) continue;
        bool hit = !ids;
        for (size_t k = 0; k < n && !hit; k++) hit = ids[k] == it->id;
        if (hit) it->read = it->delivered = moved = true;
    }
    if (moved) changed(s, e);
}

static void cb_unread(parley_chat *c, int64_t count, void *user)
{
    parley_store *s = user;
    pthread_mutex_lock(&s->mu);
    entry *e = entry_get(s, "notifications/unread", true);
    if (e && e->unread != count) {
        e->unread = count;
        changed(s, e);
    }
    /* Nothing unread: whatever is listed was read (on another device, the
     * only way this device learns it). */
    if (count == 0) notifs_read(s, NULL, 0);
    pthread_mutex_unlock(&s->mu);
    if (s->app.on_unread) s->app.on_unread(c, count, s->app.user);
}

static void cb_notifications_read(parley_chat *c, const int64_t *ids, size_t n, int all, void *user)
{
    parley_store *s = user;
    pthread_mutex_lock(&s->mu);
    notifs_read(s, all ? NULL : ids, n);
    pthread_mutex_unlock(&s->mu);
    if (s->app.on_notifications_read) s->app.on_notifications_read(c, ids, n, all, s->app.user);
}

static char *cb_token(parley_chat *c, void *user)
{
    parley_store *s = user;
    return s->app.token ? s->app.token(c, s->app.user) : NULL;
}

/* ---- cache ---- */

static bool db_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) == SQLITE_OK) return true;
    plog_warn("store: cache: %s", err ? err : sqlite3_errmsg(db));
    sqlite3_free(err);
    return false;
}

/* One cached message object back into an item. */
static bool item_from_json(const json_val *obj, item *it)
{
    memset(it, 0, sizeof *it);
    if (obj->type != JSON_OBJECT) return false;
    pbuf rest = {0};
    json_iter iter;
    json_val k, v;
    bool ok = true;
    json_iter_init(&iter, obj);
    while (ok && json_object_next(&iter, &k, &v)) {
        if (json_string_eq(&k, "id")) {
            ok = json_int(&v, &it->id);
        } else if (json_string_eq(&k, "seq")) {
            ok = json_int(&v, &it->seq) && it->seq >= 0;
        } else if (json_string_eq(&k, "ts")) {
            ok = json_int(&v, &it->ts);
        } else if (json_string_eq(&k, "from")) {
            ok = v.type == JSON_STRING && (it->from = malloc(v.len)) != NULL;
            if (ok) {
                long n = json_string_decode(&v, it->from, v.len - 1);
                ok = n >= 0;
                if (ok) it->from[n] = 0;
            }
        } else if (json_string_eq(&k, "client_id")) {
            long n = v.type == JSON_STRING
                         ? json_string_decode(&v, it->client_id, sizeof it->client_id - 1)
                         : -1;
            ok = n >= 0;
            if (ok) it->client_id[n] = 0;
        } else if (json_string_eq(&k, "mine")) {
            it->mine = v.type == JSON_TRUE;
        } else if (json_string_eq(&k, "status")) {
            it->status = v.type == JSON_STRING ? status_from_name(v.p + 1, v.len - 2) : 0;
        } else {
            ok = pbuf_append(&rest, ",", 1) == 0 && pbuf_append(&rest, k.p, k.len) == 0 &&
                 pbuf_append(&rest, ":", 1) == 0 && pbuf_append(&rest, v.p, v.len) == 0;
        }
    }
    if (ok) ok = pbuf_append(&rest, "", 1) == 0;
    it->rest = (char *)rest.ptr;
    if (!ok || !it->from || !it->rest) {
        if (!it->rest) pbuf_free(&rest);
        item_free(it);
        return false;
    }
    return true;
}

static void load_messages(parley_store *s, const char *key, const json_val *arr)
{
    entry *e = entry_get(s, key, true);
    if (!e) return;
    json_iter it;
    json_val v;
    json_iter_init(&it, arr);
    while (json_array_next(&it, &v)) {
        item m;
        if (!item_from_json(&v, &m)) continue;
        bool found = false;
        size_t pos = m.seq ? seq_slot(e, m.seq, &found) : e->n;
        if (found)
            item_free(&m);
        else
            insert_at(e, pos, &m);
    }
    trim(s, e);
}

/* A cached Presence, checked as the chat checks the server's
 * (msg_parse_presence), and for the user of its key. */
static bool load_presence(parley_store *s, const char *key, const json_val *obj)
{
    msg_presence p;
    msg_error err;
    if (msg_parse_presence(obj, &p, &err) != MSG_OK) {
        plog_warn("store: cache: %s: %s (%s): skipped", key, err.message, err.field);
        return false;
    }
    if (strcmp(p.user, key + 9) != 0) {
        plog_warn("store: cache: %s holds the presence of %s: skipped", key, p.user);
        return false;
    }
    entry *e = entry_get(s, key, true);
    if (!e) return false;
    e->known = true;
    e->pstatus = (parley_presence)p.status;
    memcpy(e->ptext, p.text, sizeof e->ptext);
    e->last_seen = p.last_seen;
    e->devices = p.devices;
    return true;
}

/* The decoded string v into buf[cap]; false when not a string or longer. */
static bool short_string(const json_val *v, char *buf, size_t cap, size_t *len)
{
    if (v->type != JSON_STRING) return false;
    long n = json_string_decode(v, buf, cap - 1);
    if (n < 0) return false;
    buf[n] = 0;
    *len = (size_t)n;
    return true;
}

/* A cached Notification (as "notifications" renders it) back into an
 * nitem: the members the protocol fixes are checked with msg_schema's
 * names and the actions parser; the rest is kept as it was. */
static bool nitem_from_json(const json_val *obj, nitem *out)
{
    memset(out, 0, sizeof *out);
    if (obj->type != JSON_OBJECT) return false;
    json_val v, d, r;
    char name[32];
    size_t n;
    int64_t created;
    msg_naction actions[MSG_NOTIF_ACTIONS_MAX];
    unsigned nactions;
    msg_error err;
    bool ok = json_object_get(obj, "id", &v) && json_int(&v, &out->id) && out->id > 0 &&
              json_object_get(obj, "created", &v) && json_int(&v, &created) &&
              json_object_get(obj, "title", &v) && v.type == JSON_STRING &&
              json_object_get(obj, "type", &v) && short_string(&v, name, sizeof name, &n) &&
              msg_ntype_from_name(name, n) != 0 && json_object_get(obj, "priority", &v) &&
              short_string(&v, name, sizeof name, &n) && msg_priority_from_name(name, n) >= 0 &&
              json_object_get(obj, "delivered", &d) &&
              (d.type == JSON_TRUE || d.type == JSON_FALSE) && json_object_get(obj, "read", &r) &&
              (r.type == JSON_TRUE || r.type == JSON_FALSE);
    if (ok && json_object_get(obj, "actions", &v) && v.type != JSON_NULL)
        ok = msg_parse_nactions(&v, actions, &nactions, &err) == MSG_OK;
    if (!ok) return false;
    out->delivered = d.type == JSON_TRUE;
    out->read = r.type == JSON_TRUE;
    out->rest = notif_rest(obj->p, obj->len);
    return out->rest != NULL;
}

static void load_notifications(parley_store *s, const char *key, const json_val *arr)
{
    entry *e = entry_get(s, key, true);
    if (!e) return;
    json_iter it;
    json_val v;
    json_iter_init(&it, arr);
    bool skipped = false;
    for (size_t i = 0; json_array_next(&it, &v); i++) {
        nitem ni;
        if (!nitem_from_json(&v, &ni)) {
            plog_warn("store: cache: %s[%zu] is not a notification: skipped", key, i);
            free(ni.rest);
            skipped = true;
            continue;
        }
        size_t lo = 0, hi = e->nnotifs;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (e->notifs[mid].id < ni.id)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo < e->nnotifs && e->notifs[lo].id == ni.id) {
            free(ni.rest); /* a repeat: the first one stays */
            continue;
        }
        if (e->nnotifs == e->capnotifs) {
            size_t cap = e->capnotifs ? e->capnotifs * 2 : 16;
            nitem *p = realloc(e->notifs, cap * sizeof *p);
            if (!p) {
                free(ni.rest);
                continue;
            }
            e->notifs = p;
            e->capnotifs = cap;
        }
        memmove(e->notifs + lo + 1, e->notifs + lo, (e->nnotifs - lo) * sizeof *e->notifs);
        e->notifs[lo] = ni;
        e->nnotifs++;
    }
    /* A smaller max_notifications than the run that wrote it: the newest. */
    size_t drop = e->nnotifs > s->o.max_notifications ? e->nnotifs - s->o.max_notifications : 0;
    for (size_t i = 0; i < drop; i++) free(e->notifs[i].rest);
    memmove(e->notifs, e->notifs + drop, (e->nnotifs - drop) * sizeof *e->notifs);
    e->nnotifs -= drop;
    if (skipped) mark_dirty(s, e); /* the writer rewrites the row without them */
}

/* One row of the cache into its entry. Rows are checked: false for one
 * that is not what its key holds (skipped with a warning; the caller
 * deletes it). */
static bool load_value(parley_store *s, const char *key, const char *json, size_t len)
{
    kind k;
    json_val v;
    if (!key_kind(key, &k, NULL)) {
        plog_warn("store: cache: %s is not a store key: skipped", key);
        return false;
    }
    if (json_parse(json, len, JSON_DEFAULT_MAX_DEPTH, &v, NULL) != 0) {
        plog_warn("store: cache: %s is not JSON: skipped", key);
        return false;
    }
    int64_t count;
    switch (k) {
    case K_MESSAGES:
        if (v.type == JSON_ARRAY) {
            load_messages(s, key, &v);
            return true;
        }
        break;
    case K_PRESENCE:
        return load_presence(s, key, &v);
    case K_NOTIFS:
        if (v.type == JSON_ARRAY) {
            load_notifications(s, key, &v);
            return true;
        }
        break;
    case K_UNREAD:
        if (json_int(&v, &count) && count >= 0) {
            entry *e = entry_get(s, key, true);
            if (e) e->unread = count;
            return true;
        }
        break;
    case K_CONNECTION:
    case K_TYPING:
    case K_PRESENCE_ALL:
    case K_WS:
        break; /* live state, or made of other rows: never written */
    }
    plog_warn("store: cache: %s is not a value of that key: skipped", key);
    return false;
}

static int cache_open(parley_store *s)
{
    if (sqlite3_open_v2(s->cache_path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK) {
        plog_warn("store: cannot open the cache %s: %s", s->cache_path,
                  s->db ? sqlite3_errmsg(s->db) : "out of memory");
        return PARLEY_EIO;
    }
    sqlite3_busy_timeout(s->db, CACHE_BUSY_MS);
    sqlite3_stmt *st = NULL;
    int version = -1;
    if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (version < 0 || version > CACHE_SCHEMA_VERSION) {
        plog_warn("store: %s is not a store cache (version %d)", s->cache_path, version);
        return PARLEY_EIO;
    }
    /* WAL: the writer thread's commits do not block readers, and the
     * cache is a cache, so a lost last batch on power loss is acceptable
     * (synchronous=NORMAL). */
    if (!db_exec(s->db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;") ||
        !db_exec(s->db, "CREATE TABLE IF NOT EXISTS store_values (key TEXT PRIMARY KEY, "
                        "value TEXT NOT NULL); PRAGMA user_version = 1;"))
        return PARLEY_EIO;
    if (sqlite3_prepare_v2(s->db, "SELECT key, value FROM store_values", -1, &st, NULL) !=
        SQLITE_OK)
        return PARLEY_EIO;
    /* Rows skipped are deleted afterwards (not while the SELECT runs), so
     * that each is warned about once. */
    char **bad = NULL;
    size_t nbad = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *key = (const char *)sqlite3_column_text(st, 0);
        const char *val = (const char *)sqlite3_column_text(st, 1);
        int len = sqlite3_column_bytes(st, 1);
        if (!key || (val && load_value(s, key, val, (size_t)len))) continue;
        char **p = realloc(bad, (nbad + 1) * sizeof *p);
        if (!p) continue;
        bad = p;
        if ((bad[nbad] = strdup(key))) nbad++;
    }
    sqlite3_finalize(st);
    st = NULL;
    if (nbad && sqlite3_prepare_v2(s->db, "DELETE FROM store_values WHERE key = ?", -1, &st,
                                   NULL) == SQLITE_OK) {
        for (size_t i = 0; i < nbad; i++) {
            sqlite3_bind_text(st, 1, bad[i], -1, SQLITE_STATIC);
            if (sqlite3_step(st) != SQLITE_DONE)
                plog_warn("store: cache: cannot delete %s: %s", bad[i], sqlite3_errmsg(s->db));
            sqlite3_reset(st);
        }
    }
    sqlite3_finalize(st);
    for (size_t i = 0; i < nbad; i++) free(bad[i]);
    free(bad);
    return 0;
}

typedef struct kv {
    char *key, *json;
} kv;

/* Takes the dirty entries' renderings. Locked. */
static kv *collect_dirty(parley_store *s, size_t *n)
{
    *n = 0;
    if (!s->ndirty) return NULL;
    kv *out = calloc(s->ndirty, sizeof *out);
    if (!out) return NULL;
    size_t pos = 0;
    pmap_entry *pe;
    while ((pe = pmap_next(&s->entries, &pos)) && *n < s->ndirty) {
        entry *e = pe->val;
        if (!e->cache_dirty || entry_render(s, e) != 0) continue;
        out[*n].key = strdup(e->key);
        out[*n].json = strdup(e->json);
        if (!out[*n].key || !out[*n].json) {
            free(out[*n].key);
            free(out[*n].json);
            continue; /* stays dirty: the next batch tries again */
        }
        e->cache_dirty = false;
        (*n)++;
    }
    s->ndirty -= *n;
    return out;
}

static void write_batch(parley_store *s, kv *b, size_t n)
{
    sqlite3_stmt *st = NULL;
    bool ok = db_exec(s->db, "BEGIN") &&
              sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO store_values VALUES (?, ?)", -1,
                                 &st, NULL) == SQLITE_OK;
    for (size_t i = 0; ok && i < n; i++) {
        sqlite3_bind_text(st, 1, b[i].key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, b[i].json, -1, SQLITE_STATIC);
        ok = sqlite3_step(st) == SQLITE_DONE;
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    if (ok) ok = db_exec(s->db, "COMMIT");
    if (!ok) {
        plog_warn("store: cache write failed: %s", sqlite3_errmsg(s->db));
        db_exec(s->db, "ROLLBACK");
    }
    for (size_t i = 0; i < n; i++) {
        free(b[i].key);
        free(b[i].json);
    }
    free(b);
}

static void deadline_in(struct timespec *ts, uint32_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *writer_main(void *arg)
{
    parley_store *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->ndirty && !s->writer_stop) pthread_cond_wait(&s->cond, &s->mu);
        if (!s->ndirty && s->writer_stop) break;
        /* Let the burst gather (cut short by free, which flushes at once). */
        struct timespec ts;
        deadline_in(&ts, s->o.cache_flush_ms);
        while (!s->writer_stop && pthread_cond_timedwait(&s->cond, &s->mu, &ts) != ETIMEDOUT) {
        }
        size_t n;
        kv *b = collect_dirty(s, &n);
        pthread_mutex_unlock(&s->mu);
        if (n)
            write_batch(s, b, n);
        else
            free(b);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- life cycle ---- */

void parley_store_opts_init_size(parley_store_opts *out, size_t size)
{
    parley_store_opts defaults, *o = &defaults;
    memset(o, 0, sizeof *o);
    o->size = sizeof *o;
    o->max_messages = 200;
    o->cache_flush_ms = 250;
    o->max_notifications = 100;
    popts_give(out, size, o, sizeof *o);
}

static void ws_detach_all(parley_store *s);

static void store_destroy(parley_store *s)
{
    ws_detach_all(s);
    if (s->writer_started) {
        pthread_mutex_lock(&s->mu);
        s->writer_stop = true;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->writer, NULL);
    }
    if (s->db) sqlite3_close(s->db);
    size_t pos = 0;
    pmap_entry *pe;
    while ((pe = pmap_next(&s->entries, &pos))) entry_free(pe->val);
    pmap_free(&s->entries);
    free(s->watchers);
    if (s->fd_read >= 0) close(s->fd_read);
    if (s->fd_write >= 0 && s->fd_write != s->fd_read) close(s->fd_write);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->mu);
    free(s->cache_path);
    free(s);
}

static int open_fd(parley_store *s)
{
#ifdef __linux__
    s->fd_read = s->fd_write = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return s->fd_read >= 0 ? 0 : PARLEY_EIO;
#else
    int p[2];
    if (pipe(p) != 0) return PARLEY_EIO;
    for (int i = 0; i < 2; i++) {
        fcntl(p[i], F_SETFL, fcntl(p[i], F_GETFL) | O_NONBLOCK);
        fcntl(p[i], F_SETFD, FD_CLOEXEC);
    }
    s->fd_read = p[0];
    s->fd_write = p[1];
    return 0;
#endif
}

int parley_store_new(const parley_store_opts *o_in, parley_store **out)
{
    if (!out) return PARLEY_EINVAL;
    *out = NULL;
    parley_store_opts o_buf;
    parley_chat_opts chat_buf;
    if (!o_in || POPTS_TAKE(parley_store_opts, parley_store_opts_init, &o_buf, o_in, chat) != 0 ||
        !o_buf.chat)
        return PARLEY_EINVAL;
    if (POPTS_TAKE(parley_chat_opts, parley_chat_opts_init, &chat_buf, o_buf.chat, url) != 0)
        return PARLEY_EINVAL;
    o_buf.chat = &chat_buf;
    const parley_store_opts *o = &o_buf;
    if (!o || !o->chat || !o->chat->user_id ||
        !msg_valid_user(o->chat->user_id, strlen(o->chat->user_id)))
        return PARLEY_EINVAL;
    parley_store *s = pcalloc(1, sizeof *s);
    if (!s) return PARLEY_ENOMEM;
    s->o = *o;
    s->o.chat = NULL;
    if (!s->o.max_messages) s->o.max_messages = 200;
    if (!s->o.cache_flush_ms) s->o.cache_flush_ms = 250;
    if (!s->o.max_notifications) s->o.max_notifications = 100;
    s->app = *o->chat;
    s->fd_read = s->fd_write = -1;
    s->next_watch = 1;
    s->defer.cb = on_defer;
    snprintf(s->user, sizeof s->user, "%s", o->chat->user_id);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    int rc = 0;
    if (o->dispatch_fd) rc = open_fd(s);
    if (rc == 0 && o->cache_path) {
        s->cache_path = strdup(o->cache_path);
        rc = s->cache_path ? cache_open(s) : PARLEY_ENOMEM;
        if (rc == 0 && pthread_create(&s->writer, NULL, writer_main, s) != 0) rc = PARLEY_ENOMEM;
        if (rc == 0) s->writer_started = true;
    }
    if (rc != 0) {
        store_destroy(s);
        return rc;
    }

    /* The chat: the store's callbacks, connected only once the cached
     * seqs are known to it so that it syncs from there. */
    parley_chat_opts co = *o->chat;
    co.on_state = cb_state;
    co.on_message = cb_message;
    co.on_status = cb_status;
    co.on_receipt = cb_receipt;
    co.on_typing = cb_typing;
    co.on_member = cb_member;
    co.on_presence = cb_presence;
    co.on_notification = cb_notification;
    co.on_unread = cb_unread;
    co.on_notifications_read = cb_notifications_read;
    co.token = o->chat->token ? cb_token : NULL;
    co.user = s;
    co.auto_connect = 0;
    rc = parley_chat_new(&co, &s->chat);
    if (rc != 0) {
        store_destroy(s);
        return rc;
    }
    s->loop = parley_client__loop(parley_chat_client(s->chat));
    size_t pos = 0;
    pmap_entry *pe;
    while (rc == 0 && (pe = pmap_next(&s->entries, &pos))) {
        entry *e = pe->val;
        int64_t last = 0;
        for (size_t i = 0; i < e->n; i++) {
            item *it = &e->items[i];
            if (it->seq > last) last = it->seq;
            /* Cached as unsent: without a queue file nothing sends it now. */
            if (it->seq == 0 && it->status == PARLEY_MSG_SENDING && !o->chat->queue_path)
                it->status = PARLEY_MSG_FAILED;
        }
        if (e->kind == K_MESSAGES && last > 0)
            rc = parley_chat_set_last_seq(s->chat, e->key + 9, last);
    }
    if (rc == 0 && o->chat->auto_connect) rc = parley_chat_connect(s->chat);
    if (rc != 0) {
        parley_store_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

static void stop_on_loop(void *arg)
{
    parley_store *s = arg;
    pthread_mutex_lock(&s->mu);
    s->freeing = true;
    ploop_defer_cancel(s->loop, &s->defer);
    pthread_mutex_unlock(&s->mu);
}

void parley_store_free(parley_store *s)
{
    if (!s) return;
    /* No delivery queued on the loop from here on; the chat's callbacks
     * still update values (and the cache) until it is freed. */
    if (ploop_call(s->loop, stop_on_loop, s) != 0) {
        pthread_mutex_lock(&s->mu);
        s->freeing = true;
        pthread_mutex_unlock(&s->mu);
    }
    parley_chat_free(s->chat);
    store_destroy(s);
}

parley_chat *parley_store_chat(parley_store *s)
{
    return s ? s->chat : NULL;
}

/* ---- watching and reading ---- */

static int grow_watchers(parley_store *s)
{
    size_t cap = s->capwatchers ? s->capwatchers * 2 : 8;
    watcher *w = realloc(s->watchers, cap * sizeof *w);
    if (!w) return PARLEY_ENOMEM;
    s->watchers = w;
    s->capwatchers = cap;
    return 0;
}

int64_t parley_store_watch(parley_store *s, const char *key, parley_store_fn fn, void *user)
{
    if (!s || !key || !fn) return PARLEY_EINVAL;
    pthread_mutex_lock(&s->mu);
    entry *e = entry_get(s, key, true);
    int64_t id = PARLEY_EINVAL;
    bool hop = false;
    if (!e) {
        kind k;
        id = key_kind(key, &k, NULL) ? PARLEY_ENOMEM : PARLEY_EINVAL;
    } else if (s->nwatchers == s->capwatchers && grow_watchers(s) != 0) {
        id = PARLEY_ENOMEM;
    } else {
        watcher *w = &s->watchers[s->nwatchers++];
        w->id = id = s->next_watch++;
        w->e = e;
        w->fn = fn;
        w->user = user;
        w->seen = UINT64_MAX;
        hop = request_delivery(s);
    }
    pthread_mutex_unlock(&s->mu);
    if (hop) ploop_call(s->loop, defer_on_loop, s);
    return id;
}

int parley_store_unwatch(parley_store *s, int64_t id)
{
    if (!s || id <= 0) return PARLEY_EINVAL;
    pthread_mutex_lock(&s->mu);
    size_t i = 0;
    while (i < s->nwatchers && s->watchers[i].id != id) i++;
    if (i == s->nwatchers) {
        pthread_mutex_unlock(&s->mu);
        return PARLEY_EINVAL;
    }
    memmove(s->watchers + i, s->watchers + i + 1, (s->nwatchers - i - 1) * sizeof *s->watchers);
    s->nwatchers--;
    /* A call in progress on another thread finishes before we return, so
     * the caller may free what user points to. */
    while (s->running == id && !pthread_equal(s->running_on, pthread_self()))
        pthread_cond_wait(&s->cond, &s->mu);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

char *parley_store_get(parley_store *s, const char *key, size_t *len)
{
    if (!s || !key) return NULL;
    kind k;
    if (!key_kind(key, &k, NULL)) return NULL;
    pthread_mutex_lock(&s->mu);
    /* A key nobody touched has its empty value without being created. */
    entry tmp;
    entry *e = entry_get(s, key, false);
    if (!e) {
        memset(&tmp, 0, sizeof tmp);
        tmp.kind = k;
        tmp.state = PARLEY_CHAT_OFFLINE;
        tmp.last_seen = -1;
        tmp.key = (char *)key; /* presence renders the user from it */
        e = &tmp;
    }
    char *out = NULL;
    if (entry_render(s, e) == 0) {
        out = malloc(e->len + 1);
        if (out) memcpy(out, e->json, e->len + 1);
        if (out && len) *len = e->len;
    }
    if (e == &tmp) free(tmp.json);
    pthread_mutex_unlock(&s->mu);
    return out;
}

int parley_store_fd(parley_store *s)
{
    return s && s->o.dispatch_fd ? s->fd_read : -1;
}

int parley_store_dispatch(parley_store *s)
{
    if (!s) return PARLEY_EINVAL;
    if (!s->o.dispatch_fd) return PARLEY_ESTATE;
    return deliver(s);
}

/* ---- sending ---- */

/* The text an application shows for content (as parley_chat_message.text). */
static char *content_text(const char *content)
{
    json_val v, t;
    static const char *const names[] = {"text", "caption", "name", "label"};
    if (json_parse(content, strlen(content), JSON_DEFAULT_MAX_DEPTH, &v, NULL) == 0 &&
        v.type == JSON_OBJECT) {
        for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
            if (!json_object_get(&v, names[i], &t) || t.type != JSON_STRING) continue;
            char *out = malloc(t.len);
            if (!out) return NULL;
            long n = json_string_decode(&t, out, t.len - 1);
            out[n > 0 ? n : 0] = 0;
            return out;
        }
    }
    return strdup("");
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int parley_store_send(parley_store *s, const parley_chat_send_opts *o_in, char client_id_out[37],
                      parley_chat_error *err)
{
    parley_chat_send_opts o_buf;
    if (!s || !o_in ||
        POPTS_TAKE(parley_chat_send_opts, parley_chat_send_opts_init, &o_buf, o_in, to) != 0)
        return PARLEY_EINVAL;
    const parley_chat_send_opts *o = &o_buf;
    /* The item must be in the list before the chat can report on it, so
     * its id and conversation are settled here. */
    char id[ID_LEN + 1], conv[MSG_CONV_MAX + 16];
    if (o->client_id)
        snprintf(id, sizeof id, "%s", o->client_id);
    else if (parley_new_id(id) != 0)
        return PARLEY_EIO;
    conv[0] = 0;
    if (o->to && !o->room && !o->conversation)
        parley_chat_dm_id(s->user, o->to, conv);
    else if (o->room && !o->to && !o->conversation)
        snprintf(conv, sizeof conv, "room:%s", o->room);
    else if (o->conversation && !o->to && !o->room)
        snprintf(conv, sizeof conv, "%s", o->conversation);
    msg_conv parsed;
    bool listed = conv[0] && msg_conv_parse(&parsed, conv, strlen(conv));
    parley_chat_send_opts so = *o;
    so.client_id = id;
    const char *prio = o->priority == PARLEY_PRIORITY_LOW      ? "low"
                       : o->priority == PARLEY_PRIORITY_HIGH   ? "high"
                       : o->priority == PARLEY_PRIORITY_URGENT ? "urgent"
                                                               : "normal";
    /* Listed hidden before the chat sees it (so that no report can come
     * before the item is there), shown once the chat took it, removed if
     * it refused: watchers never see a message that was not sent. */
    bool added = false;
    if (listed) {
        pbuf content = {0};
        int rc = 0;
        if (o->content_json) {
            json_val cv;
            rc = json_parse(o->content_json, strlen(o->content_json), JSON_DEFAULT_MAX_DEPTH, &cv,
                            NULL);
            if (rc == 0) rc = pbuf_append_str(&content, o->content_json);
        } else if (o->text) {
            rc = pbuf_append_str(&content, "{\"text\":");
            if (rc == 0) rc = json_append_string(&content, o->text, strlen(o->text));
            if (rc == 0) rc = pbuf_append(&content, "}", 1);
        } else {
            rc = pbuf_append_str(&content, "{}");
        }
        if (rc == 0) rc = pbuf_append(&content, "", 1);
        char *text = rc == 0 ? content_text((const char *)content.ptr) : NULL;
        item it;
        memset(&it, 0, sizeof it);
        memcpy(it.client_id, id, sizeof it.client_id);
        it.ts = wall_ms();
        it.mine = true;
        it.status = PARLEY_MSG_SENDING;
        it.hidden = true;
        it.from = strdup(s->user);
        it.rest = text ? rest_members(o->type ? o->type : "text", prio, (const char *)content.ptr,
                                      content.len - 1, text)
                       : NULL;
        free(text);
        pbuf_free(&content);
        pthread_mutex_lock(&s->mu);
        entry *e = conv_entry(s, "messages/", conv);
        if (e && it.from && it.rest && !find_client_id(e, id))
            added = insert_at(e, e->n, &it); /* frees it when it fails */
        else
            item_free(&it);
        pthread_mutex_unlock(&s->mu);
    }
    int rc = parley_chat_send(s->chat, &so, client_id_out, err);
    bool hop = false;
    if (added) {
        pthread_mutex_lock(&s->mu);
        entry *e = conv_entry(s, "messages/", conv);
        item *it = e ? find_client_id(e, id) : NULL;
        if (it && rc != 0) {
            item_free(it);
            size_t at = (size_t)(it - e->items);
            memmove(e->items + at, e->items + at + 1, (e->n - at - 1) * sizeof *e->items);
            e->n--;
        } else if (it) {
            it->hidden = false;
            trim(s, e);
            hop = changed(s, e);
        }
        pthread_mutex_unlock(&s->mu);
    }
    if (hop) ploop_call(s->loop, defer_on_loop, s);
    return rc;
}

/* ---- raw WebSocket clients (parley_store_watch_ws) ---- */

typedef struct wsobs {
    parley_store *s;
    parley_ws *ws;
    bool seen; /* an event came (under the store's mutex) */
    char key[3 + STORE_WS_NAME_MAX + 7];
} wsobs;

/* An event of the ws, on its loop thread. */
static void ws_observed(parley_ws *ws, const parley_ws_event *ev, void *user)
{
    (void)ws;
    wsobs *o = user;
    parley_store *s = o->s;
    pthread_mutex_lock(&s->mu);
    entry *e = entry_get(s, o->key, true);
    bool hop = false;
    if (e && ev->type != PARLEY_WS_EV_MESSAGE) {
        o->seen = true;
        switch (ev->type) {
        case PARLEY_WS_EV_CONNECTING:
            e->ws_state = PWS_CONNECTING;
            e->ws_attempt = ev->attempt;
            break;
        case PARLEY_WS_EV_CONNECTED:
            e->ws_state = PWS_OPEN;
            e->ws_attempt = ev->attempt;
            e->ws_reason[0] = 0;
            e->ws_code = e->ws_http_status = 0;
            break;
        case PARLEY_WS_EV_DISCONNECTED:
        case PARLEY_WS_EV_ERROR:
            /* RECONNECTING follows when will_retry. */
            e->ws_state = PWS_CLOSED;
            snprintf(e->ws_reason, sizeof e->ws_reason, "%s", ev->reason ? ev->reason : "");
            e->ws_code = ev->type == PARLEY_WS_EV_DISCONNECTED ? ev->code : 0;
            e->ws_http_status = ev->http_status;
            break;
        case PARLEY_WS_EV_RECONNECTING:
            e->ws_state = PWS_RECONNECTING;
            e->ws_attempt = ev->attempt;
            e->ws_delay_ms = ev->delay_ms;
            break;
        case PARLEY_WS_EV_RECONNECT_FAILED:
            e->ws_state = PWS_CLOSED;
            if (ev->http_status) e->ws_http_status = ev->http_status;
            break;
        default:
            break;
        }
        hop = changed(s, e);
    }
    pthread_mutex_unlock(&s->mu);
    if (hop) ploop_call(s->loop, defer_on_loop, s);
}

static bool ws_name_ok(const char *name)
{
    size_t len = name ? strlen(name) : 0;
    return len > 0 && len <= STORE_WS_NAME_MAX && msg_valid_room(name, len);
}

int parley_store_watch_ws(parley_store *s, const char *name, parley_ws *ws)
{
    if (!s || !ws || !ws_name_ok(name)) return PARLEY_EINVAL;
    wsobs *o = pcalloc(1, sizeof *o);
    if (!o) return PARLEY_ENOMEM;
    o->s = s;
    o->ws = ws;
    snprintf(o->key, sizeof o->key, "ws/%s/state", name);
    pthread_mutex_lock(&s->mu);
    size_t slot = STORE_WS_MAX;
    int rc = 0;
    for (size_t i = 0; i < STORE_WS_MAX; i++) {
        wsobs *x = s->wsobs[i];
        if (!x) {
            if (slot == STORE_WS_MAX) slot = i;
        } else if (x->ws == ws || !strcmp(x->key, o->key)) {
            rc = PARLEY_ESTATE;
        }
    }
    if (rc == 0 && slot == STORE_WS_MAX) rc = PARLEY_EFULL;
    if (rc == 0) s->wsobs[slot] = o; /* reserved: the observer is set below */
    pthread_mutex_unlock(&s->mu);
    if (rc) {
        free(o);
        return rc;
    }
    pws_state st;
    rc = pws_observe(ws, ws_observed, o, &st);
    pthread_mutex_lock(&s->mu);
    bool hop = false;
    if (rc) {
        s->wsobs[slot] = NULL;
    } else {
        entry *e = entry_get(s, o->key, true);
        /* Events may have come already (the observer runs from the
         * call on): the state of the call is the oldest, take it only
         * when nothing came. */
        if (e && !o->seen) {
            e->ws_state = st;
            hop = changed(s, e);
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (hop) ploop_call(s->loop, defer_on_loop, s);
    if (rc) free(o);
    return rc;
}

int parley_store_unwatch_ws(parley_store *s, parley_ws *ws)
{
    if (!s || !ws) return PARLEY_EINVAL;
    wsobs *o = NULL;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < STORE_WS_MAX && !o; i++)
        if (s->wsobs[i] && s->wsobs[i]->ws == ws) {
            o = s->wsobs[i];
            s->wsobs[i] = NULL;
        }
    pthread_mutex_unlock(&s->mu);
    if (!o) return PARLEY_EINVAL;
    /* On the ws's loop: no observer call runs after this returns. */
    pws_observe(ws, NULL, NULL, NULL);
    pthread_mutex_lock(&s->mu);
    entry *e = entry_get(s, o->key, false);
    bool hop = false;
    if (e) {
        e->ws_state = PWS_IDLE;
        e->ws_attempt = 0;
        e->ws_reason[0] = 0;
        e->ws_code = e->ws_http_status = 0;
        hop = changed(s, e);
    }
    pthread_mutex_unlock(&s->mu);
    if (hop) ploop_call(s->loop, defer_on_loop, s);
    free(o);
    return 0;
}

static void ws_detach_all(parley_store *s)
{
    for (size_t i = 0; i < STORE_WS_MAX; i++) {
        wsobs *o = s->wsobs[i];
        if (!o) continue;
        s->wsobs[i] = NULL;
        pws_observe(o->ws, NULL, NULL, NULL);
        free(o);
    }
}
