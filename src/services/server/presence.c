/* The messaging service: presence, and the presence requests (see messaging.c). */
#include "services/server/msg_internal.h"

#include "server/adapter.h"

/* ---- presence ---- */

static void on_pres_window(ptimer *t);

/* The user's presence record, created (from the store) when asked to.
 * NULL when absent and not created, or on failure. */
mpres *pres_get(msg_service *svc, const char *id, bool create)
{
    size_t len = strlen(id);
    mpres *p = pmap_get(&svc->pres, id, len);
    if (p || !create) return p;
    p = pcalloc(1, sizeof *p);
    if (!p) return NULL;
    p->svc = svc;
    memcpy(p->id, id, len + 1);
    p->len = len;
    int inv = mstore_presence_invisible(svc->store, id);
    if (inv < 0 || mstore_presence_get(svc->store, id, &p->last_seen, p->text) < 0 ||
        pmap_put(&svc->pres, p->id, p->len, p) != 0) {
        free(p);
        return NULL;
    }
    p->invisible = p->self_invisible = inv == 1;
    p->sent_status = p->self_status = MSG_PS_OFFLINE;
    memcpy(p->sent_text, p->text, sizeof p->text);
    ptimer_init(&p->window, on_pres_window);
    return p;
}

msg_pstatus ms_status(const msess *ms)
{
    return ms->pstatus == MSG_PS_ONLINE && ms->idle ? MSG_PS_AWAY : (msg_pstatus)ms->pstatus;
}

/* The user's presence now, as the user's own devices see it (self) or as
 * everyone else does. 0, or negative when the store fails. */
static int pres_compute(msg_service *svc, const char *id, msg_presence *out, bool self)
{
    memset(out, 0, sizeof *out);
    snprintf(out->user, sizeof out->user, "%s", id);
    mpres *p = pres_get(svc, id, false);
    if (p) {
        memcpy(out->text, p->text, sizeof out->text);
        out->last_seen = p->last_seen;
    } else if (mstore_presence_get(svc->store, id, &out->last_seen, out->text) < 0) {
        return PARLEY_EIO;
    }
    /* Devices on the other nodes (none without a cluster), and the newest
     * text: the text set last, on whichever node. */
    pc_remote r;
    pc_remote_get(svc, id, &r);
    if (r.text && r.text_at > (p ? p->text_at : 0))
        snprintf(out->text, sizeof out->text, "%s", r.text);
    muser *u = user_get(svc, id, false);
    out->status = MSG_PS_OFFLINE;
    unsigned local = u ? u->n : 0;
    if (local + r.devices == 0) return 0;
    /* Connected: the record exists unless it could not be made. */
    int inv = p ? p->invisible : mstore_presence_invisible(svc->store, id);
    if (inv < 0) return PARLEY_EIO;
    if (inv && !self) return 0; /* offline, last seen as frozen */
    out->invisible = inv;
    if (u) out->status = pres_local_status(u);
    if (r.status > out->status) out->status = r.status;
    out->devices = local + r.devices;
    out->last_seen = msvc_wall_ms(); /* online: seen now */
    return 0;
}

/* The most available effective status of the user's devices on this node
 * (MSG_PS_OFFLINE when none). */
msg_pstatus pres_local_status(const muser *u)
{
    msg_pstatus st = MSG_PS_OFFLINE;
    for (msess *ms = u->socks; ms; ms = ms->next)
        if (ms_status(ms) > st) st = ms_status(ms);
    return st;
}

void pres_maybe_free(msg_service *svc, mpres *p)
{
    muser *u = user_get(svc, p->id, false);
    if (p->dirty || ptimer_armed(&p->window) || (u && u->n)) return;
    /* Devices elsewhere: kept, for what subscribers were told. */
    pc_remote r;
    pc_remote_get(svc, p->id, &r);
    if (r.devices) return;
    pmap_del(&svc->pres, p->id, p->len);
    free(p);
}

/* Marks the user's presence for the end of the iteration. trigger: the
 * socket whose own action (connecting, presence_set, activity after
 * idleness) is the change; an update sent at once leaves it out, since
 * it knows (presence_set has it in the acknowledgement). An update held
 * by the window goes to every socket: it may carry other changes. */
static void pres_mark(msg_service *svc, mpres *p, msess *trigger)
{
    if (!p->dirty) {
        p->dirty = true;
        p->trigger = trigger;
        p->next_dirty = svc->dirty;
        svc->dirty = p;
        msvc_schedule(svc);
    } else if (p->trigger != trigger) {
        p->trigger = NULL; /* several causes: everyone hears of it */
    }
}

static int add_target(msg_service *svc, const char *name)
{
    if (svc->bn == svc->bcap) {
        size_t cap = svc->bcap ? svc->bcap * 2 : 16;
        void *n = realloc(svc->bnames, cap * sizeof *svc->bnames);
        if (!n) return PARLEY_ENOMEM;
        svc->bnames = n;
        void *q = realloc(svc->bptrs, cap * sizeof *svc->bptrs);
        if (!q) return PARLEY_ENOMEM;
        svc->bptrs = q;
        svc->bcap = cap;
    }
    snprintf(svc->bnames[svc->bn++], PROOM_MAX, "%s", name);
    return 0;
}

static int add_room_target(const char *conv, void *arg)
{
    msg_service *svc = arg;
    if (strncmp(conv, "room:", 5) != 0) return 0;
    char r[PROOM_MAX];
    proom(r, 'r', conv + 5);
    return add_target(svc, r);
}

/* Who hears of a change: everyone (the user's devices, subscribers,
 * fellow room members), everyone but the user's own devices, or only
 * those (while the user appears offline). */
enum { PB_ALL, PB_OTHERS, PB_SELF };

static void pres_broadcast(msg_service *svc, const msg_presence *cur, msess *except, int who)
{
    char r[PROOM_MAX], own[PROOM_MAX];
    svc->bn = 0;
    proom(own, 'u', cur->user);
    int rc = who == PB_OTHERS ? 0 : add_target(svc, own);
    proom(r, 's', cur->user);
    if (rc == 0 && who != PB_SELF) rc = add_target(svc, r);
    if (rc == 0 && who != PB_SELF)
        rc = mstore_user_convs(svc->store, cur->user, add_room_target, svc);
    pbuf *b = &svc->pjson;
    b->len = 0;
    if (rc == 0) rc = pbuf_append(b, "[", 1);
    if (rc == 0) rc = msg_encode_presence(b, cur);
    if (rc == 0) rc = pbuf_append(b, "]", 1);
    if (!msvc_json_done(b, rc)) {
        plog_error("messaging: presence of %s not sent: %s", cur->user, parley_strerror(rc));
        return;
    }
    /* The names moved while the array grew: pointers are taken last. */
    for (size_t i = 0; i < svc->bn; i++) svc->bptrs[i] = svc->bnames[i];
    parley_target t = {.rooms = svc->bptrs, .nrooms = svc->bn};
    const char *x = own;
    if (who == PB_OTHERS) { /* the user's devices are in the rooms too */
        t.except = &x;
        t.nexcept = 1;
    }
    if (except && except->sock) t.except_socket = except->sock;
    /* In a cluster every node tells its own sockets (each from its own
     * sent_* state): each socket hears of each change once. */
    rc = svc->pc
             ? parley_broadcast__local(svc->nsp, &t, MSG_EV_PRESENCE, (const char *)b->ptr, NULL, 0)
             : parley_broadcast(svc->nsp, &t, MSG_EV_PRESENCE, (const char *)b->ptr, NULL, 0);
    if (rc < 0) plog_error("messaging: presence broadcast failed: %s", parley_strerror(rc));
    svc->stats.presence_updates++;
}

/* Sends the user's presence if it differs from what was last sent, and
 * opens a coalescing window when it did. While the user appears offline
 * others and the user's own devices hear of different changes. */
static void pres_send_if_changed(msg_service *svc, mpres *p, msess *except)
{
    msg_presence self, pub;
    if (pres_compute(svc, p->id, &self, true) != 0) return;
    pub = self;
    /* p->invisible, not self.invisible: the last device leaving an
     * invisible user changes nothing for others. */
    if (p->invisible) {
        pub.status = MSG_PS_OFFLINE;
        pub.devices = 0;
        pub.last_seen = p->last_seen;
        pub.invisible = false;
    }
    /* last_seen moves by itself while online: it is not a change. */
    bool text = strcmp(self.text, p->sent_text) != 0;
    bool pub_changed = text || pub.status != p->sent_status || pub.devices != p->sent_devices;
    bool self_changed = text || self.status != p->self_status || self.devices != p->self_devices ||
                        self.invisible != p->self_invisible;
    if (!pub_changed && !self_changed) return;
    if (!p->invisible) {
        pres_broadcast(svc, &self, except, PB_ALL);
    } else {
        if (pub_changed) pres_broadcast(svc, &pub, except, PB_OTHERS);
        if (self_changed) pres_broadcast(svc, &self, except, PB_SELF);
    }
    p->sent_status = (uint8_t)pub.status;
    p->sent_devices = pub.devices;
    memcpy(p->sent_text, pub.text, sizeof p->sent_text);
    p->self_status = (uint8_t)self.status;
    p->self_devices = self.devices;
    p->self_invisible = self.invisible;
    if (svc->o.presence_interval_ms)
        ploop_timer_start(svc->loop, &p->window, svc->o.presence_interval_ms);
}

static void on_pres_window(ptimer *t)
{
    mpres *p = PARLEY_CONTAINER_OF(t, mpres, window);
    msg_service *svc = p->svc;
    /* Only the latest state, and only if it differs from the last sent:
     * a connect and disconnect inside the window send nothing. */
    pres_send_if_changed(svc, p, NULL);
    pc_publish(svc);
    pres_maybe_free(svc, p);
}

/* After the commit: every user whose presence may have changed. */
void pres_flush(msg_service *svc)
{
    mpres *p = svc->dirty;
    svc->dirty = NULL;
    while (p) {
        mpres *next = p->next_dirty;
        msess *trigger = p->trigger;
        p->dirty = false;
        p->trigger = NULL;
        pc_contrib(svc, p); /* at once: the window holds back events, not this */
        if (!ptimer_armed(&p->window)) pres_send_if_changed(svc, p, trigger);
        pres_maybe_free(svc, p);
        p = next;
    }
    pc_publish(svc);
}

/* A change on another node (its devices, or the node gone): this node
 * tells its own sockets at the end of the iteration, as for any other. */
void pres_mark_remote(msg_service *svc, mpres *p)
{
    pres_mark(svc, p, NULL);
}

static void on_idle(ptimer *t)
{
    msess *ms = PARLEY_CONTAINER_OF(t, msess, idle_timer);
    msg_service *svc = ms->svc;
    if (!ms->sock) return;
    uint64_t idle_for = ploop_now(svc->loop) - ms->last_act;
    if (idle_for < svc->o.away_after_ms) {
        ploop_timer_start(svc->loop, &ms->idle_timer, svc->o.away_after_ms - idle_for);
        return;
    }
    ms->idle = true;
    mpres *p = pres_get(svc, ms->user->id, true);
    if (p && ms->pstatus == MSG_PS_ONLINE) pres_mark(svc, p, NULL);
}

/* Any event from a device is activity. Cheap on the hot path: a store of
 * the time, and timer work only when the device was idle. */
void pres_activity(msg_service *svc, msess *ms)
{
    ms->last_act = ploop_now(svc->loop);
    if (!ms->idle) return;
    ms->idle = false;
    ploop_timer_start(svc->loop, &ms->idle_timer, svc->o.away_after_ms);
    mpres *p = pres_get(svc, ms->user->id, true);
    if (p && ms->pstatus == MSG_PS_ONLINE) pres_mark(svc, p, ms);
}

static int join_room_presence(const char *conv, void *arg)
{
    msess *ms = arg;
    if (strncmp(conv, "room:", 5) != 0) return 0;
    char r[PROOM_MAX];
    proom(r, 'r', conv + 5);
    parley_join(ms->sock, r);
    return 0;
}

/* A device connected (the user's sockets list has it already). */
void pres_connected(msg_service *svc, msess *ms)
{
    ms->pstatus = MSG_PS_ONLINE;
    ms->last_act = ploop_now(svc->loop);
    ptimer_init(&ms->idle_timer, on_idle);
    if (svc->o.away_after_ms) ploop_timer_start(svc->loop, &ms->idle_timer, svc->o.away_after_ms);
    char r[PROOM_MAX];
    proom(r, 'u', ms->user->id);
    parley_join(ms->sock, r);
    if (mstore_user_convs(svc->store, ms->user->id, join_room_presence, ms) < 0)
        plog_error("messaging: cannot list the rooms of %s for presence", ms->user->id);
    mpres *p = pres_get(svc, ms->user->id, true);
    if (!p) return;
    /* Recorded at connection too, so that a server killed while the user
     * is connected still knows roughly when they were last there. */
    pc_remote rem;
    pc_remote_get(svc, p->id, &rem);
    /* (Not while the user is connected elsewhere: last seen is "now".) */
    if (ms->user->n == 1 && rem.devices == 0 && !p->invisible) { /* frozen while invisible */
        p->last_seen = msvc_wall_ms();
        if (mstore_presence_seen(svc->store, p->id, p->last_seen) != 0)
            plog_error("messaging: cannot store when %s was last seen", p->id);
    }
    pres_mark(svc, p, ms);
}

void subs_free(msess *ms)
{
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&ms->subs, &pos))) free(e->val);
    pmap_free(&ms->subs);
    memset(&ms->subs, 0, sizeof ms->subs);
    ms->nsubs = 0;
}

/* A device is gone: `user` is its user, `left` how many devices the user
 * still has (ms is already off the user's list). */
void pres_disconnected(msg_service *svc, msess *ms, const char *user, unsigned left)
{
    ploop_timer_stop(svc->loop, &ms->idle_timer);
    subs_free(ms);
    mpres *p = pres_get(svc, user, true);
    if (!p) return;
    if (p->trigger == ms) p->trigger = NULL;
    pc_remote r;
    pc_remote_get(svc, p->id, &r);
    /* Only when the user's last device in the cluster goes. */
    if (left == 0 && r.devices == 0 && !p->invisible) { /* frozen while invisible */
        p->last_seen = msvc_wall_ms();
        if (mstore_presence_seen(svc->store, p->id, p->last_seen) != 0)
            plog_error("messaging: cannot store when %s was last seen", p->id);
    }
    pres_mark(svc, p, NULL);
}

/* ---- presence requests ---- */

void req_presence_set(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                      int64_t ack_id)
{
    (void)a;
    msg_pstatus st;
    bool has_text;
    char text[MSG_PRESENCE_TEXT_MAX + 1];
    msg_error err;
    int inv;
    if (msg_parse_presence_set(obj, &st, &has_text, text, &inv, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    if (!user_rate_ok(svc, ms, ack_id, MQ_PRESENCE, 1, "too many presence changes: slow down"))
        return;
    if ((has_text || inv >= 0) && refuse_if_disk_low(svc, ms, ack_id)) return;
    mpres *p = pres_get(svc, ms->user->id, true);
    if (!p) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    if (has_text && strcmp(text, p->text) != 0) {
        if (mstore_presence_text(svc->store, p->id, text) != 0) {
            reply_internal(svc, ms, ack_id);
            return;
        }
        memcpy(p->text, text, sizeof p->text);
        p->text_at = msvc_wall_ms();
    }
    if (inv >= 0 && (bool)inv != p->invisible) {
        /* Last seen freezes at the moment it turns on (what others are
         * told from now on) and resumes from now when it turns off. */
        int64_t now = msvc_wall_ms();
        if (mstore_presence_set_invisible(svc->store, p->id, inv, now) != 0 ||
            mstore_presence_seen(svc->store, p->id, now) != 0) {
            reply_internal(svc, ms, ack_id);
            return;
        }
        p->invisible = inv;
        p->inv_at = now;
        p->last_seen = now;
    }
    if (st != MSG_PS_OFFLINE) ms->pstatus = (uint8_t)st; /* not given: kept */
    pres_mark(svc, p, ms);
    msg_presence cur;
    pbuf *b = &svc->scratch;
    b->len = 0;
    int rc = pres_compute(svc, p->id, &cur, true);
    if (rc == 0) rc = pbuf_append_str(b, "{\"ok\":true,\"presence\":");
    if (rc == 0) rc = msg_encode_presence(b, &cur);
    if (rc == 0) rc = pbuf_append(b, "}", 1);
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    /* A new text or invisibility is acknowledged once it is stored. */
    queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, mstore_in_batch(svc->store));
}

/* Appends the Presence objects of users[] (comma-separated), as `self`
 * (the asking user) sees them. */
static int append_presences(msg_service *svc, pbuf *b, char users[][MSG_USER_MAX + 1], size_t n,
                            const char *self)
{
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        msg_presence cur;
        rc = pres_compute(svc, users[i], &cur, strcmp(users[i], self) == 0);
        if (rc == 0 && i) rc = pbuf_append(b, ",", 1);
        if (rc == 0) rc = msg_encode_presence(b, &cur);
    }
    return rc;
}

void req_presence_sub(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                      int64_t ack_id)
{
    (void)a;
    char users[MSG_PRESENCE_USERS_MAX][MSG_USER_MAX + 1];
    size_t n;
    msg_error err;
    if (msg_parse_presence_users(obj, users, &n, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    /* The limit first, so that a refused request changes nothing. */
    size_t fresh = 0;
    for (size_t i = 0; i < n; i++) {
        bool seen = pmap_get(&ms->subs, users[i], strlen(users[i])) != NULL;
        for (size_t j = 0; j < i && !seen; j++) seen = strcmp(users[i], users[j]) == 0;
        fresh += !seen;
    }
    if (ms->nsubs + fresh > MSG_PRESENCE_SUBS_MAX) {
        msg_fail(&err, MSG_E_TOO_LARGE, "users",
                 "a socket may subscribe to at most %d users (%u now)", MSG_PRESENCE_SUBS_MAX,
                 ms->nsubs);
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(users[i]);
        if (pmap_get(&ms->subs, users[i], len)) continue;
        psub *sub = pcalloc(1, sizeof *sub);
        if (!sub) break;
        memcpy(sub->id, users[i], len + 1);
        if (pmap_put(&ms->subs, sub->id, len, sub) != 0) {
            free(sub);
            break;
        }
        ms->nsubs++;
        char r[PROOM_MAX];
        proom(r, 's', sub->id);
        parley_join(ms->sock, r);
    }
    pbuf *b = &svc->scratch;
    b->len = 0;
    int rc = pbuf_append_str(b, "{\"ok\":true,\"presences\":[");
    if (rc == 0) rc = append_presences(svc, b, users, n, ms->user->id);
    if (rc == 0) rc = pbuf_append_str(b, "]}");
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, false);
}

void req_presence_unsub(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                        int64_t ack_id)
{
    (void)a;
    char users[MSG_PRESENCE_USERS_MAX][MSG_USER_MAX + 1];
    size_t n;
    msg_error err;
    if (msg_parse_presence_users(obj, users, &n, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        psub *sub = pmap_del(&ms->subs, users[i], strlen(users[i]));
        if (!sub) continue;
        char r[PROOM_MAX];
        proom(r, 's', sub->id);
        parley_leave(ms->sock, r);
        free(sub);
        ms->nsubs--;
    }
    static const char ok[] = "{\"ok\":true}";
    queue_ack_json(svc, ms, ack_id, ok, sizeof ok - 1, false);
}

typedef struct pres_list {
    msg_service *svc;
    pbuf *out;
    bool first;
    const char *self; /* the asking user */
} pres_list;

static int append_member_presence(const char *user, int64_t d, int64_t r, void *arg)
{
    (void)d;
    (void)r;
    pres_list *l = arg;
    msg_presence cur;
    int rc = pres_compute(l->svc, user, &cur, strcmp(user, l->self) == 0);
    if (rc == 0 && !l->first) rc = pbuf_append(l->out, ",", 1);
    if (rc == 0) rc = msg_encode_presence(l->out, &cur);
    l->first = false;
    return rc;
}

void req_presence_room(msg_service *svc, msess *ms, const json_val *obj, const parley_args *a,
                       int64_t ack_id)
{
    (void)a;
    char room[MSG_ROOM_MAX + 1];
    msg_error err;
    if (msg_parse_room_req(obj, room, &err)) {
        reply_error(svc, ms, ack_id, &err);
        return;
    }
    msg_conv c;
    msg_conv_room(&c, room);
    if (!check_member(svc, ms, ack_id, &c)) return;
    pbuf *b = &svc->scratch;
    b->len = 0;
    int rc = pbuf_append_str(b, "{\"ok\":true,\"room\":");
    if (rc == 0) rc = json_append_string(b, room, strlen(room));
    if (rc == 0) rc = pbuf_append_str(b, ",\"presences\":[");
    pres_list l = {svc, b, true, ms->user->id};
    if (rc == 0) rc = mstore_participants(svc->store, c.id, append_member_presence, &l);
    if (rc == 0) rc = pbuf_append_str(b, "]}");
    if (rc) {
        reply_internal(svc, ms, ack_id);
        return;
    }
    queue_ack_json(svc, ms, ack_id, (char *)b->ptr, b->len, mstore_in_batch(svc->store));
}
