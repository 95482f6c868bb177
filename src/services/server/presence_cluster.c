/* The messaging service: presence across the nodes of a Redis cluster
 * (docs/CLUSTER.md, "Presence across nodes").
 *
 * Every node publishes, on the node-private channel
 * "parley#presence#<nsp>#" (cluster/adapter.h), its contribution to each
 * user's presence whenever it changes: the user's devices on this node,
 * the most available of their effective statuses, and the user's status
 * text and invisibility with when they were set here. Every message is
 * also a heartbeat, and one goes out every presence_heartbeat_ms. Each
 * node keeps the other live nodes' contributions; pres_compute adds them
 * to its own devices with the rule of docs/PROTOCOL.md. Every node tells
 * its own sockets only (parley_broadcast__local), from its own record of
 * what it told them, so each socket hears of each change once, through
 * its node's coalescing window. A node not heard from for
 * presence_node_timeout_ms is dead: its contributions go, and every node
 * tells its sockets what that changes.
 *
 * The messages: presence_wire.h. One that is garbage is dropped whole
 * and counted. */
#include "services/server/msg_internal.h"

#include "cluster/adapter.h"
#include "services/server/presence_wire.h"

#define PC_NODES_MAX 32          /* other nodes tracked */
#define PC_UID_MAX   PCW_UID_MAX /* node uid bytes */
#define PC_OUT_CUT   (32u << 10) /* a queued message is published past this */
#define PC_FREE_MAX  1024        /* recycled entries kept */
#define PC_CHAN_MAX  (32 + PROOM_MAX)

typedef struct rentry {
    struct rentry *next_free;
    char user[MSG_USER_MAX + 1];
    uint32_t devices;
    uint8_t status;
    int64_t text_at;
    char text[MSG_PRESENCE_TEXT_MAX + 1];
} rentry;

typedef struct rnode {
    bool used;
    char uid[PC_UID_MAX + 1];
    uint64_t heard; /* loop ms */
    pmap users;     /* user id -> rentry */
    uint32_t n;
} rnode;

typedef struct pres_cluster {
    msg_service *svc;
    pcluster *c;
    char chan[PC_CHAN_MAX];
    char uid[PC_UID_MAX + 1];
    uint32_t hb_ms, dead_ms;
    uint32_t max_entries, entries; /* (node, user) entries: the limit, and now */
    ptimer hb;
    rnode nodes[PC_NODES_MAX];
    rentry *free_list;
    unsigned nfree;
    pbuf out;      /* "[1,uid" and records, unclosed; empty when nothing is queued */
    bool announce; /* queue the whole table once this message is handled */
    plog_limit log_bad;
    /* counters */
    uint64_t received, garbage, over_limit, dead, published, publish_failures;
} pres_cluster;

/* ---- the remote table ---- */

static rentry *entry_new(pres_cluster *pc)
{
    rentry *e = pc->free_list;
    if (e) {
        pc->free_list = e->next_free;
        pc->nfree--;
        memset(e, 0, sizeof *e);
        return e;
    }
    return pcalloc(1, sizeof *e);
}

static void entry_free(pres_cluster *pc, rentry *e)
{
    if (pc->nfree >= PC_FREE_MAX) {
        free(e);
        return;
    }
    e->next_free = pc->free_list;
    pc->free_list = e;
    pc->nfree++;
}

static void node_clear(pres_cluster *pc, rnode *n)
{
    size_t pos = 0;
    pmap_entry *me;
    while ((me = pmap_next(&n->users, &pos))) entry_free(pc, me->val);
    pc->entries -= n->n;
    pmap_free(&n->users);
    memset(n, 0, sizeof *n);
}

void pc_remote_get(msg_service *svc, const char *user, pc_remote *out)
{
    memset(out, 0, sizeof *out);
    pres_cluster *pc = svc->pc;
    if (!pc) return;
    size_t len = strlen(user);
    for (size_t i = 0; i < PC_NODES_MAX; i++) {
        rnode *n = &pc->nodes[i];
        if (!n->used || !n->n) continue;
        rentry *e = pmap_get(&n->users, user, len);
        if (!e) continue;
        out->devices += e->devices;
        if (e->status > out->status) out->status = e->status;
        if (e->text_at > out->text_at) {
            out->text_at = e->text_at;
            out->text = e->text;
        }
    }
}

/* The live node with the smallest uid, this one included, stores when
 * the users of a dead node were last seen (once, for a shared store). */
static bool am_leader(const pres_cluster *pc)
{
    for (size_t i = 0; i < PC_NODES_MAX; i++)
        if (pc->nodes[i].used && strcmp(pc->nodes[i].uid, pc->uid) < 0) return false;
    return true;
}

/* ---- outgoing ---- */

static void bad(pres_cluster *pc, const char *why)
{
    pc->garbage++;
    uint64_t held = 0;
    if (plog_limit_ok(&pc->log_bad, ploop_now(pc->svc->loop), LOG_EVERY_MS, &held))
        plog_warn("presence: ignored a message on %s: %s (%llu more since the last such line; "
                  "counted in parley_presence_cluster_garbage_total)",
                  pc->chan, why, (unsigned long long)held);
}

static void publish_now(pres_cluster *pc)
{
    pbuf *b = &pc->out;
    if (!b->len) return;
    int rc = pbuf_append(b, "]", 1);
    if (rc == 0) rc = pcluster_private_publish(pc->c, pc->chan, (const char *)b->ptr, b->len);
    if (rc) {
        pc->publish_failures++;
    } else {
        pc->published++;
    }
    b->len = 0;
    if (b->cap > 256 * 1024) pbuf_reset(b, 4096);
}

/* Starts a record: the header first when the message is new. */
static int rec_start(pres_cluster *pc)
{
    pbuf *b = &pc->out;
    if (b->len > PC_OUT_CUT) publish_now(pc);
    int rc = b->len ? 0 : pcw_header(b, pc->uid);
    if (rc == 0) rc = pbuf_append(b, ",", 1);
    return rc;
}

static int rec_done(pres_cluster *pc, int rc)
{
    if (rc) {
        /* A half-written record: the whole queued message goes. */
        plog_error("presence: a message to the other nodes was dropped: %s", parley_strerror(rc));
        pc->out.len = 0;
        pc->publish_failures++;
    }
    return rc;
}

static void queue_contrib(pres_cluster *pc, mpres *p, uint32_t devices, uint8_t status)
{
    pcw_contrib c = {.devices = devices,
                     .status = status,
                     .text_at = p->text_at,
                     .invisible = p->invisible,
                     .inv_at = p->inv_at,
                     .last_seen = p->last_seen < 0 ? -1 : p->last_seen};
    memcpy(c.user, p->id, p->len + 1);
    memcpy(c.text, p->text, sizeof c.text);
    int rc = rec_start(pc);
    if (rc == 0) rc = pcw_contrib_append(&pc->out, &c);
    if (rec_done(pc, rc) == 0) {
        p->pc_devices = devices;
        p->pc_status = status;
        p->pc_text_at = p->text_at;
        p->pc_inv_at = p->inv_at;
    }
}

void pc_contrib(msg_service *svc, mpres *p)
{
    pres_cluster *pc = svc->pc;
    if (!pc) return;
    muser *u = user_get(svc, p->id, false);
    uint32_t devices = u ? u->n : 0;
    uint8_t status = devices ? (uint8_t)pres_local_status(u) : MSG_PS_OFFLINE;
    if (devices == p->pc_devices && status == p->pc_status && p->text_at == p->pc_text_at &&
        p->inv_at == p->pc_inv_at)
        return;
    queue_contrib(pc, p, devices, status);
}

/* Every user with devices here, whatever was published before. */
static void queue_table(pres_cluster *pc)
{
    msg_service *svc = pc->svc;
    size_t pos = 0;
    pmap_entry *me;
    while ((me = pmap_next(&svc->users, &pos))) {
        muser *u = me->val;
        if (!u->n) continue;
        mpres *p = pres_get(svc, u->id, true);
        if (p) queue_contrib(pc, p, u->n, (uint8_t)pres_local_status(u));
    }
}

void pc_publish(msg_service *svc)
{
    if (svc->pc) publish_now(svc->pc);
}

/* ---- a node is gone ---- */

static void node_dead(pres_cluster *pc, rnode *n, bool left)
{
    msg_service *svc = pc->svc;
    if (left) {
        plog_info("presence: node %s left: its devices (%u users) are dropped", n->uid,
                  (unsigned)n->n);
    } else {
        pc->dead++;
        plog_warn("presence: node %s not heard from for %u ms: its devices (%u users) are dropped",
                  n->uid, pc->dead_ms, (unsigned)n->n);
    }
    n->used = false; /* out of pc_remote_get and of the leader choice */
    bool leader = am_leader(pc);
    int64_t now = msvc_wall_ms();
    size_t pos = 0;
    pmap_entry *me;
    while ((me = pmap_next(&n->users, &pos))) {
        rentry *e = me->val;
        mpres *p = pres_get(svc, e->user, true);
        if (!p) continue;
        muser *u = user_get(svc, e->user, false);
        pc_remote r;
        pc_remote_get(svc, e->user, &r);
        bool gone = (!u || !u->n) && r.devices == 0;
        if (gone && !p->invisible) {
            p->last_seen = now;
            /* Written once, by the node that sends the event. */
            if (leader && mstore_presence_seen(svc->store, p->id, now) != 0)
                plog_error("messaging: cannot store when %s was last seen", p->id);
        }
        pres_mark_remote(svc, p);
    }
    n->used = true;
    node_clear(pc, n);
}

static void on_heartbeat(ptimer *t)
{
    pres_cluster *pc = PARLEY_CONTAINER_OF(t, pres_cluster, hb);
    uint64_t now = ploop_now(pc->svc->loop);
    for (size_t i = 0; i < PC_NODES_MAX; i++) {
        rnode *n = &pc->nodes[i];
        if (n->used && now - n->heard > pc->dead_ms) node_dead(pc, n, false);
    }
    /* The heartbeat: a message with no records (or what is queued). */
    if (!pc->out.len && rec_done(pc, rec_start(pc)) == 0) pc->out.len--; /* the ',' */
    publish_now(pc);
    ploop_timer_start(pc->svc->loop, &pc->hb, pc->hb_ms);
}

/* ---- incoming ---- */

/* A contribution of node n (checked by pcw_parse), applied: the user's
 * record kept in step. */
static void apply_contrib(pres_cluster *pc, rnode *n, const pcw_contrib *c)
{
    msg_service *svc = pc->svc;
    const char *user = c->user;
    int64_t devices = c->devices, status = c->status, text_at = c->text_at;
    int64_t inv_at = c->inv_at, last_seen = c->last_seen;
    const char *text = c->text;
    size_t len = strlen(user);
    rentry *e = pmap_get(&n->users, user, len);
    if (devices == 0) {
        if (e) {
            pmap_del(&n->users, user, len);
            n->n--;
            pc->entries--;
            entry_free(pc, e);
        }
    } else {
        if (!e) {
            if (pc->entries >= pc->max_entries) {
                pc->over_limit++;
                return;
            }
            e = entry_new(pc);
            if (!e) return;
            memcpy(e->user, user, len + 1);
            if (pmap_put(&n->users, e->user, len, e) != 0) {
                entry_free(pc, e);
                return;
            }
            n->n++;
            pc->entries++;
        }
        e->devices = (uint32_t)devices;
        e->status = (uint8_t)status;
        e->text_at = text_at;
        memcpy(e->text, text, sizeof e->text);
    }
    /* The record (what this node's sockets were told) stays while the
     * user has devices anywhere; none and no record: nobody here was told
     * anything. */
    mpres *p = pres_get(svc, user, devices > 0);
    if (!p) return;
    /* The user's own settings, newest first; not published again (the
     * node they were set on did). */
    if (text_at > p->text_at) {
        memcpy(p->text, text, sizeof p->text);
        p->text_at = p->pc_text_at = text_at;
    }
    if (inv_at > p->inv_at) {
        p->invisible = c->invisible;
        p->inv_at = p->pc_inv_at = inv_at;
        p->last_seen = inv_at; /* frozen, or resumed, then */
    }
    muser *u = user_get(svc, user, false);
    pc_remote r;
    pc_remote_get(svc, user, &r);
    /* That node stored it (its last device went); this one only tells. */
    if ((!u || !u->n) && r.devices == 0 && !p->invisible && last_seen >= 0)
        p->last_seen = last_seen;
    pres_mark_remote(svc, p);
}

static void on_message(const char *msg, size_t len, void *user)
{
    pres_cluster *pc = user;
    pcw_msg m;
    const char *why = pcw_parse(&m, msg, len);
    if (why) {
        bad(pc, why);
        return;
    }
    if (!strcmp(m.uid, pc->uid)) return; /* our own */
    uint64_t now = ploop_now(pc->svc->loop);
    rnode *n = NULL, *slot = NULL;
    for (size_t i = 0; i < PC_NODES_MAX && !n; i++) {
        if (pc->nodes[i].used && !strcmp(pc->nodes[i].uid, m.uid)) n = &pc->nodes[i];
        if (!pc->nodes[i].used && !slot) slot = &pc->nodes[i];
    }
    if (m.bye) { /* the rest of its message no longer matters */
        pc->received++;
        if (n) node_dead(pc, n, true);
        return;
    }
    if (!n) {
        if (!slot) {
            pc->over_limit++;
            bad(pc, "more nodes than presence tracks");
            return;
        }
        n = slot;
        memset(n, 0, sizeof *n);
        n->used = true;
        memcpy(n->uid, m.uid, strlen(m.uid) + 1);
        plog_info("presence: node %s joined", m.uid);
        /* It knows nothing of us (or dropped us): our table, and its. */
        pc->announce = true;
        int rc = rec_start(pc);
        if (rc == 0) rc = pcw_want_append(&pc->out, m.uid);
        rec_done(pc, rc);
    }
    n->heard = now;
    pc->received++;
    pcw_record r;
    while (pcw_next(&m, &r)) {
        if (r.kind == PCW_CONTRIB)
            apply_contrib(pc, n, &r.c);
        else if (!strcmp(r.target, pc->uid))
            pc->announce = true; /* a "w" for us */
    }
    if (pc->announce) {
        pc->announce = false;
        queue_table(pc);
    }
    publish_now(pc);
}

/* ---- lifetime ---- */

static void pc_free(pres_cluster *pc)
{
    /* Leaving: the others drop our devices now rather than after the
     * timeout (if Redis takes it before the connection goes). */
    pc->out.len = 0;
    int rc = rec_start(pc);
    if (rc == 0) rc = pcw_bye_append(&pc->out);
    if (rec_done(pc, rc) == 0) publish_now(pc);
    ploop_timer_stop(pc->svc->loop, &pc->hb);
    pcluster_private_unsubscribe(pc->c, pc->chan);
    for (size_t i = 0; i < PC_NODES_MAX; i++)
        if (pc->nodes[i].used) node_clear(pc, &pc->nodes[i]);
    while (pc->free_list) {
        rentry *e = pc->free_list;
        pc->free_list = e->next_free;
        free(e);
    }
    pbuf_free(&pc->out);
    free(pc);
}

int msg_service_set_cluster(msg_service *svc, struct parley_cluster *c)
{
    if (!svc) return PARLEY_EINVAL;
    svc->cluster = c;
    if (svc->pc) {
        pc_free(svc->pc);
        svc->pc = NULL;
    }
    if (!c || svc->disabled) return 0;
    pres_cluster *pc = pcalloc(1, sizeof *pc);
    if (!pc) return PARLEY_ENOMEM;
    pc->svc = svc;
    pc->c = c;
    snprintf(pc->uid, sizeof pc->uid, "%s", pcluster_uid(c));
    snprintf(pc->chan, sizeof pc->chan, "parley#presence#%s#", MSG_NAMESPACE);
    pc->hb_ms = svc->o.presence_heartbeat_ms ? svc->o.presence_heartbeat_ms : 1000;
    pc->dead_ms = svc->o.presence_node_timeout_ms ? svc->o.presence_node_timeout_ms : 3000;
    if (pc->dead_ms < pc->hb_ms) pc->dead_ms = pc->hb_ms * 2;
    pc->max_entries = svc->o.presence_remote_users ? svc->o.presence_remote_users : 200000;
    ptimer_init(&pc->hb, on_heartbeat);
    int rc = pcluster_private_subscribe(c, pc->chan, on_message, pc);
    if (rc) {
        free(pc);
        return rc;
    }
    svc->pc = pc;
    /* Devices already connected (joined late): the table goes with the
     * first heartbeat, and again to every node that appears. */
    queue_table(pc);
    ploop_timer_start(svc->loop, &pc->hb, 10);
    return 0;
}

void msg_service_cluster_collect(pmx_out *o, void *user)
{
    msg_service *svc = user;
    pres_cluster *pc = svc ? svc->pc : NULL;
    unsigned nodes = 0, users = 0;
    for (size_t i = 0; pc && i < PC_NODES_MAX; i++)
        if (pc->nodes[i].used) {
            nodes++;
            users += pc->nodes[i].n;
        }
    pmx_gauge(o, "parley_presence_cluster_nodes",
              "Other nodes whose presence heartbeats are being heard.", nodes);
    pmx_gauge(o, "parley_presence_cluster_remote_users",
              "Users with devices on other nodes (summed over the nodes).", users);
    pmx_counter(o, "parley_presence_cluster_received_total",
                "Presence messages from other nodes taken.", pc ? pc->received : 0);
    pmx_counter(o, "parley_presence_cluster_garbage_total",
                "Presence messages or records from Redis ignored as malformed.",
                pc ? pc->garbage : 0);
    pmx_counter(o, "parley_presence_cluster_over_limit_total",
                "Presence reports ignored over the node or per-node user limit.",
                pc ? pc->over_limit : 0);
    pmx_counter(o, "parley_presence_cluster_dead_nodes_total",
                "Nodes declared dead (no heartbeat within the timeout).", pc ? pc->dead : 0);
    pmx_counter(o, "parley_presence_cluster_published_total",
                "Presence messages published to the other nodes.", pc ? pc->published : 0);
    pmx_counter(o, "parley_presence_cluster_publish_failures_total",
                "Presence messages that could not be published.", pc ? pc->publish_failures : 0);
}
