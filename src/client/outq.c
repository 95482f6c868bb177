/*
 * The outbound queue (see outq.h).
 *
 * Memory: one doubly linked list per priority in push order. Entries stay
 * in their list whether pending or in flight, so a requeue only flips
 * flags and the original order comes back by construction. Each list has a
 * cursor with the invariant "no pending entry lies before it", which makes
 * outq_next O(1) amortised: the cursor only moves forward over in-flight
 * entries, and only outq_requeue moves it back to the head. Expired entries
 * that outq_expire has not removed yet are skipped by a scan; callers that
 * arm a timer on outq_next_expiry keep that scan empty. Deadlines live in a
 * ptimer_heap (earliest expiry in O(1), removal in O(log n)); ids in a pmap
 * whose keys are the entries' own id arrays.
 *
 * Storage: one row per entry, written before the call returns. In-flight
 * state is not stored: after a restart everything is pending again, which
 * is what the header promises. The connection runs in WAL mode with
 * synchronous=NORMAL, which survives a killed process (the WAL sits in the
 * page cache) but not a power cut; that trade is the requirement, and it
 * spares an fsync per message. The connection takes locking_mode=EXCLUSIVE
 * and an exclusive transaction at open, so the file stays locked for the
 * queue's lifetime: a second outq_open on the same file, in this process
 * or another, fails with PARLEY_EIO after the busy timeout instead of two
 * queues handing out the same entries and reusing each other's seq.
 *
 * Storage failures: a failed push changes nothing and returns PARLEY_EIO.
 * A failed delete (ack, expire) or attempts update is logged and the memory
 * state goes ahead anyway: the server's word is final, and the worst the
 * stale row can do after a restart is cause one resend that the server
 * de-duplicates by id (or one more expiry report). Keeping the entry would
 * instead resend it in this process and make an expiry timer spin.
 */
#include "outq.h"

#include <assert.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/map.h"
#include "base/theap.h"
#include "base/util.h"
#include "parley/parley.h"

#define OUTQ_NPRIO          4
#define OUTQ_SCHEMA_VERSION 1
#define OUTQ_APP_ID         0x5051554f /* "PQUO": marks a file as ours */
#define OUTQ_BUSY_MS        1000
/* seq beyond this in a file is corruption: no queue pushes 2^62 times. */
#define OUTQ_SEQ_MAX ((uint64_t)1 << 62)

typedef struct qent {
    outq_entry e; /* first, so an outq_entry pointer is a qent pointer */
    struct qent *prev, *next;
    struct qent *gone; /* chain of entries being expired */
    ptimer timer;      /* armed iff e.expires_ms != 0 */
} qent;

typedef struct plist {
    qent *head, *tail;
    qent *cursor;   /* no pending entry before it; NULL: none pending */
    size_t pending; /* entries not in flight (expired ones included) */
} plist;

enum { ST_INSERT, ST_DELETE, ST_ATTEMPTS, ST_BEGIN, ST_COMMIT, ST_ROLLBACK, ST_COUNT };

static const char *const stmt_sql[ST_COUNT] = {
    ("INSERT INTO outq(seq, id, priority, created_ms, expires_ms, event, data, attempts) "
     "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0)"),
    "DELETE FROM outq WHERE seq = ?1",
    "UPDATE outq SET attempts = ?2 WHERE seq = ?1",
    "BEGIN IMMEDIATE",
    "COMMIT",
    "ROLLBACK",
};

struct outq {
    size_t max_count, max_bytes;
    plist prio[OUTQ_NPRIO];
    pmap ids;
    ptimer_heap expiry;
    size_t count, bytes, in_flight;
    uint64_t next_seq;
    sqlite3 *db; /* NULL: memory only */
    sqlite3_stmt *st[ST_COUNT];
    char *path; /* for log messages */
};

void outq_opts_init(outq_opts *o)
{
    o->max_count = 1000;
    o->max_bytes = 8u << 20;
    o->path = NULL;
}

/* ---- small helpers ---- */

static bool id_char(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
           c == '_';
}

static bool id_valid(const char *id, size_t n)
{
    if (n != OUTQ_ID_LEN) return false;
    for (size_t i = 0; i < n; i++)
        if (!id_char((unsigned char)id[i])) return false;
    return true;
}

/* RFC 9562 version 4: 122 random bits, version nibble 4, variant 10. */
static int make_uuid(char out[OUTQ_ID_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[16];
    if (prand_bytes(b, sizeof b) != 0) return PARLEY_EIO;
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    size_t o = 0;
    for (size_t i = 0; i < sizeof b; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    assert(o == OUTQ_ID_LEN);
    out[o] = 0;
    return 0;
}

/* SQLite integers are signed; the queue's clocks are unsigned. The bit
 * pattern round-trips, so a saturated expiry (UINT64_MAX) survives. */
static sqlite3_int64 to_i64(uint64_t v)
{
    sqlite3_int64 r;
    memcpy(&r, &v, sizeof r);
    return r;
}

static uint64_t from_i64(sqlite3_int64 v)
{
    uint64_t r;
    memcpy(&r, &v, sizeof r);
    return r;
}

static bool expired(const qent *x, uint64_t now_ms)
{
    return x->e.expires_ms != 0 && x->e.expires_ms <= now_ms;
}

static size_t entry_bytes(const qent *x)
{
    return x->e.len + strlen(x->e.event);
}

/* One block holds the entry, its event name and its payload. The caller
 * has bounded evlen + len by max_bytes (or by what the file holds). */
static qent *entry_alloc(size_t evlen, size_t len)
{
    if (evlen > SIZE_MAX - sizeof(qent) - 1 || len > SIZE_MAX - sizeof(qent) - 1 - evlen)
        return NULL;
    qent *x = malloc(sizeof *x + evlen + 1 + len);
    if (!x) return NULL;
    memset(x, 0, sizeof *x);
    x->e.event = (char *)(x + 1);
    x->e.data = (uint8_t *)x->e.event + evlen + 1;
    ptimer_init(&x->timer, NULL);
    return x;
}

/* ---- lists ---- */

static void list_append(outq *q, qent *x)
{
    plist *l = &q->prio[x->e.priority];
    x->next = NULL;
    x->prev = l->tail;
    if (l->tail)
        l->tail->next = x;
    else
        l->head = x;
    l->tail = x;
    if (!x->e.in_flight) {
        l->pending++;
        if (!l->cursor) l->cursor = x;
    }
}

/* Takes x out of every index and the counters; the memory stays. */
static void detach(outq *q, qent *x)
{
    plist *l = &q->prio[x->e.priority];
    if (l->cursor == x) l->cursor = x->next;
    if (x->prev)
        x->prev->next = x->next;
    else
        l->head = x->next;
    if (x->next)
        x->next->prev = x->prev;
    else
        l->tail = x->prev;
    x->prev = x->next = NULL;
    if (x->e.in_flight) {
        assert(q->in_flight > 0);
        q->in_flight--;
    } else {
        assert(l->pending > 0);
        l->pending--;
    }
    ptimer_heap_remove(&q->expiry, &x->timer);
    void *was = pmap_del(&q->ids, x->e.id, OUTQ_ID_LEN);
    assert(was == x);
    (void)was;
    size_t b = entry_bytes(x);
    assert(q->count > 0 && q->bytes >= b);
    q->count--;
    q->bytes -= b;
}

/* ---- storage ---- */

static int db_err(const outq *q, const char *what)
{
    plog_error("outq %s: %s: %s", q->path, what, sqlite3_errmsg(q->db));
    return PARLEY_EIO;
}

static int db_exec(const outq *q, const char *sql, const char *what)
{
    if (sqlite3_exec(q->db, sql, NULL, NULL, NULL) != SQLITE_OK) return db_err(q, what);
    return 0;
}

/* Runs a kept statement to completion and resets it for the next use. */
static int db_run(const outq *q, int which, const char *what)
{
    sqlite3_stmt *s = q->st[which];
    int rc = sqlite3_step(s);
    int err = rc == SQLITE_DONE ? 0 : db_err(q, what);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return err;
}

/* One-row integer query (PRAGMA values, counts). */
static int db_int(const outq *q, const char *sql, sqlite3_int64 *v)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(q->db, sql, -1, &s, NULL) != SQLITE_OK) return db_err(q, sql);
    int rc = sqlite3_step(s);
    int err = 0;
    if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) == SQLITE_INTEGER)
        *v = sqlite3_column_int64(s, 0);
    else if (rc == SQLITE_ROW) {
        plog_error("outq %s: %s: not an integer", q->path, sql);
        err = PARLEY_EIO;
    } else
        err = db_err(q, sql);
    sqlite3_finalize(s);
    return err;
}

/* Schema steps: entry i takes version i to i + 1. Later versions append
 * steps here (ALTER TABLE, data copies); they run inside the transaction
 * of outq_open, so a crash mid-migration leaves the old version intact. */
static const char *const migrations[OUTQ_SCHEMA_VERSION] = {
    "CREATE TABLE outq ("
    " seq INTEGER PRIMARY KEY,"
    " id TEXT NOT NULL UNIQUE,"
    " priority INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " expires_ms INTEGER NOT NULL,"
    " event TEXT NOT NULL,"
    " data BLOB NOT NULL,"
    " attempts INTEGER NOT NULL DEFAULT 0);",
};

static int migrate(outq *q, sqlite3_int64 from)
{
    for (sqlite3_int64 v = from; v < OUTQ_SCHEMA_VERSION; v++) {
        int rc = db_exec(q, migrations[v], "schema migration");
        if (rc) return rc;
    }
    if (from == OUTQ_SCHEMA_VERSION) return 0;
    char sql[96];
    snprintf(sql, sizeof sql, "PRAGMA application_id = %d; PRAGMA user_version = %d;", OUTQ_APP_ID,
             OUTQ_SCHEMA_VERSION);
    return db_exec(q, sql, "schema version");
}

/* Inside the exclusive transaction: is this ours, and at which version? */
static int check_schema(outq *q)
{
    sqlite3_int64 app = 0, ver = 0, objects = 0;
    int rc = db_int(q, "PRAGMA application_id", &app);
    if (!rc) rc = db_int(q, "PRAGMA user_version", &ver);
    if (!rc) rc = db_int(q, "SELECT count(*) FROM sqlite_schema", &objects);
    if (rc) return rc;
    if (ver == 0 && app == 0 && objects == 0) return migrate(q, 0);
    if (app != OUTQ_APP_ID) {
        plog_error("outq %s: not a queue database (application_id %lld, %lld schema objects)",
                   q->path, (long long)app, (long long)objects);
        return PARLEY_EIO;
    }
    if (ver < 1 || ver > OUTQ_SCHEMA_VERSION) {
        plog_error("outq %s: schema version %lld, this library reads 1 to %d", q->path,
                   (long long)ver, OUTQ_SCHEMA_VERSION);
        return PARLEY_EIO;
    }
    return migrate(q, ver);
}

static int corrupt(const outq *q, sqlite3_int64 seq, const char *why)
{
    plog_error("outq %s: row seq %lld: %s", q->path, (long long)seq, why);
    return PARLEY_EIO;
}

/* Builds an entry from a row. The file is input like any other: every
 * column is checked before it is used. */
static int load_row(outq *q, sqlite3_stmt *s)
{
    for (int c = 0; c <= 7; c++) {
        int want = c == 1 || c == 5 ? SQLITE_TEXT : c == 6 ? SQLITE_BLOB : SQLITE_INTEGER;
        if (sqlite3_column_type(s, c) != want)
            return corrupt(q, sqlite3_column_int64(s, 0), "column of the wrong type");
    }
    sqlite3_int64 seq = sqlite3_column_int64(s, 0);
    const char *id = (const char *)sqlite3_column_text(s, 1);
    size_t idlen = (size_t)sqlite3_column_bytes(s, 1);
    sqlite3_int64 prio = sqlite3_column_int64(s, 2);
    const char *ev = (const char *)sqlite3_column_text(s, 5);
    size_t evlen = (size_t)sqlite3_column_bytes(s, 5);
    const void *data = sqlite3_column_blob(s, 6);
    size_t len = (size_t)sqlite3_column_bytes(s, 6);
    sqlite3_int64 attempts = sqlite3_column_int64(s, 7);
    if ((!id || !ev || (!data && len)) && sqlite3_errcode(q->db) == SQLITE_NOMEM)
        return PARLEY_ENOMEM;
    if (seq <= 0 || (uint64_t)seq >= OUTQ_SEQ_MAX || (uint64_t)seq < q->next_seq)
        return corrupt(q, seq, "bad seq");
    if (!id || !id_valid(id, idlen)) return corrupt(q, seq, "bad id");
    if (prio < OUTQ_LOW || prio > OUTQ_URGENT) return corrupt(q, seq, "bad priority");
    if (!ev || memchr(ev, 0, evlen)) return corrupt(q, seq, "bad event name");
    if (attempts < 0 || attempts > UINT32_MAX) return corrupt(q, seq, "bad attempts");
    if (pmap_get(&q->ids, id, OUTQ_ID_LEN)) return corrupt(q, seq, "duplicate id");

    qent *x = entry_alloc(evlen, len);
    if (!x) return PARLEY_ENOMEM;
    x->e.seq = (uint64_t)seq;
    memcpy(x->e.id, id, OUTQ_ID_LEN);
    x->e.id[OUTQ_ID_LEN] = 0;
    x->e.priority = (int)prio;
    x->e.created_ms = from_i64(sqlite3_column_int64(s, 3));
    x->e.expires_ms = from_i64(sqlite3_column_int64(s, 4));
    memcpy(x->e.event, ev, evlen);
    x->e.event[evlen] = 0;
    if (len) memcpy(x->e.data, data, len);
    x->e.len = len;
    x->e.attempts = (uint32_t)attempts;
    int rc = pmap_put(&q->ids, x->e.id, OUTQ_ID_LEN, x);
    if (!rc && x->e.expires_ms) rc = ptimer_heap_add(&q->expiry, &x->timer, x->e.expires_ms);
    if (rc) {
        pmap_del(&q->ids, x->e.id, OUTQ_ID_LEN);
        free(x);
        return rc;
    }
    list_append(q, x);
    q->count++;
    q->bytes += evlen + len;
    q->next_seq = (uint64_t)seq + 1;
    return 0;
}

static int load(outq *q)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(q->db,
                           "SELECT seq, id, priority, created_ms, expires_ms, event, data, "
                           "attempts FROM outq ORDER BY seq",
                           -1, &s, NULL) != SQLITE_OK)
        return db_err(q, "schema does not match");
    int rc, err = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        if ((err = load_row(q, s)) != 0) break;
    if (!err && rc != SQLITE_DONE) err = db_err(q, "reading the queue");
    sqlite3_finalize(s);
    if (err) return err;
    /* Over the limits means they were lowered since the file was written.
     * Dropping would lose messages and refusing would strand them, so the
     * entries load and pushes wait until acks make room. */
    if (q->count > q->max_count || q->bytes > q->max_bytes)
        plog_warn("outq %s: %zu entries, %zu bytes loaded, over the limits (%zu, %zu)", q->path,
                  q->count, q->bytes, q->max_count, q->max_bytes);
    return 0;
}

static int db_open(outq *q, const char *path)
{
    q->path = strdup(path);
    if (!q->path) return PARLEY_ENOMEM;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &q->db, flags, NULL) != SQLITE_OK) {
        if (!q->db) return PARLEY_ENOMEM;
        return db_err(q, "cannot open");
    }
    sqlite3_extended_result_codes(q->db, 1);
    /* The file is input: a crafted schema gets no application functions
     * to call and no way to write around SQLite's checks. */
    sqlite3_db_config(q->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    sqlite3_db_config(q->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)NULL);
    sqlite3_busy_timeout(q->db, OUTQ_BUSY_MS);

    /* Exclusive before WAL: the WAL index then lives in our heap (no -shm
     * file) and the lock taken below is kept until close. */
    int rc = db_exec(q, "PRAGMA locking_mode = EXCLUSIVE", "locking mode");
    if (rc) return rc;
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(q->db, "PRAGMA journal_mode = WAL", -1, &s, NULL) != SQLITE_OK)
        return db_err(q, "journal mode");
    rc = sqlite3_step(s);
    const char *mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(s, 0) : NULL;
    bool wal = mode && strcmp(mode, "wal") == 0;
    if (rc != SQLITE_ROW) {
        rc = db_err(q, "not a usable database");
    } else if (!wal) {
        plog_error("outq %s: cannot enter WAL mode (%s)", q->path, mode ? mode : "?");
        rc = PARLEY_EIO;
    } else {
        rc = 0;
    }
    sqlite3_finalize(s);
    if (rc) return rc;
    if ((rc = db_exec(q, "PRAGMA synchronous = NORMAL", "synchronous"))) return rc;

    if ((rc = db_exec(q, "BEGIN EXCLUSIVE", "locking the queue"))) return rc;
    rc = check_schema(q);
    if (!rc) rc = load(q);
    if (!rc) rc = db_exec(q, "COMMIT", "commit");
    if (rc) {
        sqlite3_exec(q->db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    for (int i = 0; i < ST_COUNT; i++)
        if (sqlite3_prepare_v3(q->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &q->st[i],
                               NULL) != SQLITE_OK)
            return db_err(q, "schema does not match");
    return 0;
}

static int db_insert(const outq *q, const qent *x)
{
    sqlite3_stmt *s = q->st[ST_INSERT];
    size_t evlen = strlen(x->e.event);
    /* A zero-length blob needs a non-NULL pointer, else SQLite stores NULL. */
    const void *data = x->e.len ? (const void *)x->e.data : (const void *)"";
    if (evlen > INT_MAX || x->e.len > INT_MAX) {
        plog_error("outq %s: entry too large for the database", q->path);
        return PARLEY_EIO;
    }
    if (sqlite3_bind_int64(s, 1, to_i64(x->e.seq)) != SQLITE_OK ||
        sqlite3_bind_text(s, 2, x->e.id, OUTQ_ID_LEN, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_int(s, 3, x->e.priority) != SQLITE_OK ||
        sqlite3_bind_int64(s, 4, to_i64(x->e.created_ms)) != SQLITE_OK ||
        sqlite3_bind_int64(s, 5, to_i64(x->e.expires_ms)) != SQLITE_OK ||
        sqlite3_bind_text(s, 6, x->e.event, (int)evlen, SQLITE_STATIC) != SQLITE_OK ||
        sqlite3_bind_blob(s, 7, data, (int)x->e.len, SQLITE_STATIC) != SQLITE_OK) {
        int err = db_err(q, "bind");
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        return err;
    }
    return db_run(q, ST_INSERT, "storing an entry");
}

static int db_delete(const outq *q, const qent *x)
{
    if (sqlite3_bind_int64(q->st[ST_DELETE], 1, to_i64(x->e.seq)) != SQLITE_OK)
        return db_err(q, "bind");
    int rc = db_run(q, ST_DELETE, "deleting an entry");
    if (!rc && sqlite3_changes(q->db) != 1)
        plog_warn("outq %s: entry seq %llu was not in the file", q->path,
                  (unsigned long long)x->e.seq);
    return rc;
}

/* ---- the queue ---- */

int outq_open(const outq_opts *opts, outq **out)
{
    if (!out) return PARLEY_EINVAL;
    *out = NULL;
    outq_opts o;
    if (opts)
        o = *opts;
    else
        outq_opts_init(&o);
    if (o.max_count == 0 || o.max_bytes == 0 || (o.path && !*o.path)) return PARLEY_EINVAL;
    outq *q = calloc(1, sizeof *q);
    if (!q) return PARLEY_ENOMEM;
    q->max_count = o.max_count;
    q->max_bytes = o.max_bytes;
    q->next_seq = 1;
    if (o.path) {
        int rc = db_open(q, o.path);
        if (rc) {
            outq_close(q);
            return rc;
        }
    }
    *out = q;
    return 0;
}

void outq_close(outq *q)
{
    if (!q) return;
    /* The heap touches the entries' timers when freed: it goes first. */
    ptimer_heap_free(&q->expiry);
    pmap_free(&q->ids);
    for (int p = 0; p < OUTQ_NPRIO; p++) {
        qent *x = q->prio[p].head;
        while (x) {
            qent *next = x->next;
            free(x);
            x = next;
        }
    }
    for (int i = 0; i < ST_COUNT; i++) sqlite3_finalize(q->st[i]);
    if (q->db && sqlite3_close(q->db) != SQLITE_OK) db_err(q, "close");
    free(q->path);
    free(q);
}

int outq_push(outq *q, int priority, const char *event, const void *data, size_t len,
              uint64_t ttl_ms, uint64_t now_ms, const char *id, outq_entry **out)
{
    if (out) *out = NULL;
    if (!q || priority < OUTQ_LOW || priority > OUTQ_URGENT || !event || (!data && len))
        return PARLEY_EINVAL;
    if (id) {
        if (!id_valid(id, strnlen(id, OUTQ_ID_LEN + 1))) return PARLEY_EINVAL;
        if (pmap_get(&q->ids, id, OUTQ_ID_LEN)) return PARLEY_EINVAL;
    }
    size_t evlen = strlen(event);
    /* Overflow-free form of count + 1 > max and bytes + len + evlen > max;
     * count and bytes may already exceed the limits after a load. */
    if (q->count >= q->max_count) return PARLEY_EFULL;
    if (len > q->max_bytes || evlen > q->max_bytes - len) return PARLEY_EFULL;
    size_t need = len + evlen;
    if (q->bytes > q->max_bytes || need > q->max_bytes - q->bytes) return PARLEY_EFULL;

    qent *x = entry_alloc(evlen, len);
    if (!x) return PARLEY_ENOMEM;
    int rc = 0;
    if (id) {
        memcpy(x->e.id, id, OUTQ_ID_LEN);
        x->e.id[OUTQ_ID_LEN] = 0;
    } else {
        /* A clash needs a caller id equal to fresh random bits; retrying
         * costs nothing and keeps ids unique without trusting luck. */
        int tries = 0;
        do rc = make_uuid(x->e.id);
        while (!rc && pmap_get(&q->ids, x->e.id, OUTQ_ID_LEN) && ++tries < 8);
        if (!rc && tries == 8) rc = PARLEY_EIO;
        if (rc) {
            free(x);
            return rc;
        }
    }
    assert(q->next_seq < OUTQ_SEQ_MAX);
    x->e.seq = q->next_seq;
    x->e.priority = priority;
    x->e.created_ms = now_ms;
    if (ttl_ms) x->e.expires_ms = now_ms > UINT64_MAX - ttl_ms ? UINT64_MAX : now_ms + ttl_ms;
    memcpy(x->e.event, event, evlen + 1);
    if (len) memcpy(x->e.data, data, len);
    x->e.len = len;

    rc = pmap_put(&q->ids, x->e.id, OUTQ_ID_LEN, x);
    if (rc) {
        free(x);
        return rc;
    }
    if (x->e.expires_ms) rc = ptimer_heap_add(&q->expiry, &x->timer, x->e.expires_ms);
    if (!rc && q->db) rc = db_insert(q, x);
    if (rc) {
        ptimer_heap_remove(&q->expiry, &x->timer);
        pmap_del(&q->ids, x->e.id, OUTQ_ID_LEN);
        free(x);
        return rc;
    }
    list_append(q, x);
    q->count++;
    q->bytes += need;
    q->next_seq++;
    if (out) *out = &x->e;
    return 0;
}

outq_entry *outq_next(outq *q, uint64_t now_ms)
{
    if (!q) return NULL;
    for (int p = OUTQ_URGENT; p >= OUTQ_LOW; p--) {
        plist *l = &q->prio[p];
        if (!l->pending) continue;
        qent *x = l->cursor;
        while (x && x->e.in_flight) x = x->next;
        l->cursor = x;
        for (; x; x = x->next)
            if (!x->e.in_flight && !expired(x, now_ms)) return &x->e;
    }
    return NULL;
}

void outq_sent(outq *q, outq_entry *e)
{
    if (!q || !e) return;
    assert(pmap_get(&q->ids, e->id, OUTQ_ID_LEN) == (qent *)e);
    if (!e->in_flight) {
        e->in_flight = true;
        q->in_flight++;
        assert(q->prio[e->priority].pending > 0);
        q->prio[e->priority].pending--;
    }
    if (e->attempts < UINT32_MAX) e->attempts++;
    if (!q->db) return;
    if (sqlite3_bind_int64(q->st[ST_ATTEMPTS], 1, to_i64(e->seq)) != SQLITE_OK ||
        sqlite3_bind_int64(q->st[ST_ATTEMPTS], 2, e->attempts) != SQLITE_OK) {
        db_err(q, "bind");
        sqlite3_clear_bindings(q->st[ST_ATTEMPTS]);
        return;
    }
    db_run(q, ST_ATTEMPTS, "counting an attempt");
}

int outq_ack(outq *q, const char *id)
{
    if (!q || !id || strnlen(id, OUTQ_ID_LEN + 1) != OUTQ_ID_LEN) return PARLEY_EINVAL;
    qent *x = pmap_get(&q->ids, id, OUTQ_ID_LEN);
    if (!x) return PARLEY_EINVAL;
    if (q->db) db_delete(q, x); /* logged; see the top of the file */
    detach(q, x);
    free(x);
    return 0;
}

void outq_requeue(outq *q)
{
    if (!q || !q->in_flight) return;
    for (int p = 0; p < OUTQ_NPRIO; p++) {
        plist *l = &q->prio[p];
        for (qent *x = l->head; x; x = x->next) {
            if (!x->e.in_flight) continue;
            x->e.in_flight = false;
            l->pending++;
            /* A deadline that passed in flight applies now. */
            if (x->e.expires_ms && !ptimer_armed(&x->timer) &&
                ptimer_heap_add(&q->expiry, &x->timer, x->e.expires_ms) != 0)
                plog_warn("outq: out of memory re-arming an expiry");
        }
        l->cursor = l->head;
    }
    q->in_flight = 0;
}

void outq_requeue_entry(outq *q, outq_entry *e)
{
    if (!q || !e || !e->in_flight) return;
    qent *x = (qent *)e;
    assert(pmap_get(&q->ids, e->id, OUTQ_ID_LEN) == x);
    plist *l = &q->prio[e->priority];
    e->in_flight = false;
    assert(q->in_flight > 0);
    q->in_flight--;
    l->pending++;
    /* A list is in push order: the cursor moves back to x unless it is
     * already before it. */
    if (!l->cursor || l->cursor->e.seq > e->seq) l->cursor = x;
    if (e->expires_ms && !ptimer_armed(&x->timer) &&
        ptimer_heap_add(&q->expiry, &x->timer, e->expires_ms) != 0)
        plog_warn("outq: out of memory re-arming an expiry");
}

static int by_expiry(const void *a, const void *b)
{
    const qent *x = *(qent *const *)a, *y = *(qent *const *)b;
    if (x->e.expires_ms != y->e.expires_ms) return x->e.expires_ms < y->e.expires_ms ? -1 : 1;
    return x->e.seq < y->e.seq ? -1 : x->e.seq > y->e.seq;
}

size_t outq_expire(outq *q, uint64_t now_ms, void (*cb)(const outq_entry *e, void *user),
                   void *user)
{
    if (!q) return 0;
    qent *gone = NULL, **tail = &gone;
    size_t n = 0;
    for (ptimer *t = ptimer_heap_peek(&q->expiry); t && t->deadline <= now_ms;
         t = ptimer_heap_peek(&q->expiry)) {
        ptimer_heap_remove(&q->expiry, t);
        qent *x = PARLEY_CONTAINER_OF(t, qent, timer);
        /* On the wire: the server may store it, so only its answer (ack)
         * or the loss of the connection (requeue, which re-arms the
         * deadline) decides. Reporting it failed here could contradict
         * what the server did. */
        if (x->e.in_flight) continue;
        x->gone = NULL;
        *tail = x;
        tail = &x->gone;
        n++;
    }
    if (!n) return 0;
    /* The timer heap does not order equal deadlines: report in
     * (expiry, push order), so that ties come out as they went in. */
    if (n > 1) {
        qent **v = malloc(n * sizeof *v);
        if (v) {
            size_t k = 0;
            for (qent *x = gone; x; x = x->gone) v[k++] = x;
            qsort(v, n, sizeof *v, by_expiry);
            for (k = 0; k + 1 < n; k++) v[k]->gone = v[k + 1];
            v[n - 1]->gone = NULL;
            gone = v[0];
            free(v);
        }
    }
    if (q->db) {
        /* All rows in one transaction: one WAL commit however many expire. */
        bool txn = n > 1 && db_run(q, ST_BEGIN, "begin") == 0;
        int rc = 0;
        for (qent *x = gone; x && !rc; x = x->gone) rc = db_delete(q, x);
        if (txn && (rc || db_run(q, ST_COMMIT, "commit") != 0)) db_run(q, ST_ROLLBACK, "rollback");
    }
    /* Every entry leaves the queue before the first callback, so a
     * callback may push, ack or expire again on a consistent queue. */
    for (qent *x = gone; x; x = x->gone) detach(q, x);
    while (gone) {
        qent *x = gone;
        gone = x->gone;
        if (cb) cb(&x->e, user);
        free(x);
    }
    return n;
}

uint64_t outq_next_expiry(const outq *q)
{
    const ptimer *t = q ? ptimer_heap_peek(&q->expiry) : NULL;
    return t ? t->deadline : 0;
}

outq_entry *outq_find(const outq *q, const char *id)
{
    if (!q || !id || strnlen(id, OUTQ_ID_LEN + 1) != OUTQ_ID_LEN) return NULL;
    qent *x = pmap_get(&q->ids, id, OUTQ_ID_LEN);
    return x ? &x->e : NULL;
}

size_t outq_count(const outq *q)
{
    return q ? q->count : 0;
}

size_t outq_bytes(const outq *q)
{
    return q ? q->bytes : 0;
}

size_t outq_in_flight(const outq *q)
{
    return q ? q->in_flight : 0;
}

void outq_foreach(const outq *q, void (*cb)(const outq_entry *e, void *user), void *user)
{
    if (!q || !cb) return;
    for (int p = OUTQ_URGENT; p >= OUTQ_LOW; p--)
        for (const qent *x = q->prio[p].head; x; x = x->next) cb(&x->e, user);
}
