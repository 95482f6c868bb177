/*
 * The messaging store (see msg_store.h).
 *
 * Sequence numbers come from a per-conversation cache of the last seq,
 * loaded from max(seq) on first use, so a send costs one INSERT. The cache
 * reflects the open batch; a rollback drops it whole (it is reloaded from
 * the file on demand), which is simpler and safer than undoing entries.
 *
 * Stored bytes per user (quotas) work the same way: a cache of per-user
 * counters, loaded from usage_storage on first use, moved by every insert
 * and upload without a statement, and written back with one UPSERT per
 * user the batch changed just before the COMMIT. A rollback drops the
 * changed counters (the table still holds their committed values).
 *
 * SQLite rolls a transaction back by itself after some errors (disk full,
 * I/O error, out of memory). The batch then no longer exists although
 * earlier writes in it reported success: `lost` records that, every later
 * write of the batch fails, and the commit reports the failure so that no
 * acknowledgement for the lost writes is sent.
 */
#include "services/store/mstore_backend.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/log.h"
#include "base/map.h"
#include "base/ratelimit.h"
#include "base/util.h"
#include "codec/json.h"
#include "parley/parley.h"

#define MSTORE_SCHEMA_VERSION 6
#define MSTORE_APP_ID         0x504d5347 /* "PMSG" */
#define MSTORE_BUSY_MS        1000
#define MSTORE_CACHE_MAX      65536 /* conversations kept in the seq cache, users in theirs */
#define STR_(x)               #x
#define STR(x)                STR_(x)
#define OVERHEAD_SQL          STR(MSTORE_MSG_OVERHEAD)

enum {
    ST_FIND,
    ST_CONV_GET,
    ST_CONV_LAST,
    ST_CONV_ADD,
    ST_PART_ADD,
    ST_PART_DEL,
    ST_PART_GET,
    ST_PART_SET,
    ST_PART_LIST,
    ST_USER_CONVS,
    ST_MSG_ADD,
    ST_MSG_AFTER,
    ST_MSG_BEFORE,
    ST_MEDIA_ADD,
    ST_MEDIA_UP_ADD,
    ST_MEDIA_UP_SET,
    ST_MEDIA_REF,
    ST_MEDIA_FOR,
    ST_USAGE_DAY_GET,
    ST_USAGE_DAY_ADD,
    ST_USAGE_DAY_SWEEP,
    ST_STORAGE_GET,
    ST_STORAGE_SET,
    ST_USER_ROOMS,
    ST_CONTACT,
    ST_PRES_GET,
    ST_PRES_SEEN,
    ST_PRES_TEXT,
    ST_PRES_INV_GET,
    ST_PRES_INV_ON,
    ST_PRES_INV_OFF,
    ST_NOTIF_ADD,
    ST_NOTIF_DEDUPE,
    ST_NOTIF_LIST,
    ST_NOTIF_UNREAD,
    ST_NOTIF_DELIVERED,
    ST_NOTIF_DELIVER_RANGE,
    ST_NOTIF_READ_ONE,
    ST_NOTIF_READ_ALL,
    ST_NOTIF_EXPIRED_USERS,
    ST_NOTIF_SWEEP,
    ST_NOTIF_NEXT_EXPIRY,
    ST_NPREFS_GET,
    ST_NPREFS_SET,
    ST_NOTIF_GET,
    ST_PUSH_ADD,
    ST_PUSH_COUNT,
    ST_PUSH_DUE,
    ST_PUSH_NEXT,
    ST_PUSH_DEL,
    ST_PUSH_RETRY,
    ST_PUSH_RETRY_AFTER,
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_COUNT
};

#define NOTIF_COLS                                                                                 \
    "id, recipient, type, priority, title, body, image, actions, sender, created, expires, "       \
    "dedupe_key, delivered, read"
/* Not expired at time t: expired rows are never returned nor counted,
 * whether or not the sweep has deleted them yet. */
#define NOTIF_LIVE(t) "(expires IS NULL OR expires > " t ")"

#define MSG_COLS "id, conv, seq, sender, client_id, type, priority, ts, content"

static const char *const stmt_sql[ST_COUNT] = {
    [ST_FIND] = "SELECT " MSG_COLS " FROM messages WHERE sender = ?1 AND client_id = ?2",
    [ST_CONV_GET] = "SELECT kind FROM conversations WHERE id = ?1",
    [ST_CONV_LAST] = "SELECT max(seq) FROM messages WHERE conv = ?1",
    [ST_CONV_ADD] = "INSERT OR IGNORE INTO conversations(id, kind, created_ms) VALUES (?1, ?2, ?3)",
    [ST_PART_ADD] = "INSERT OR IGNORE INTO participants(conv, user, delivered, read, joined_ms) "
                    "VALUES (?1, ?2, 0, 0, ?3)",
    [ST_PART_DEL] = "DELETE FROM participants WHERE conv = ?1 AND user = ?2",
    [ST_PART_GET] = "SELECT delivered, read FROM participants WHERE conv = ?1 AND user = ?2",
    [ST_PART_SET] =
        "UPDATE participants SET delivered = ?3, read = ?4 WHERE conv = ?1 AND user = ?2",
    [ST_PART_LIST] = "SELECT user, delivered, read FROM participants WHERE conv = ?1 ORDER BY user",
    [ST_USER_CONVS] = "SELECT conv FROM participants WHERE user = ?1 ORDER BY conv",
    [ST_MSG_ADD] =
        "INSERT INTO messages(conv, seq, sender, client_id, type, priority, ts, content) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [ST_MSG_AFTER] = "SELECT " MSG_COLS " FROM messages WHERE conv = ?1 AND seq > ?2 "
                     "ORDER BY seq LIMIT ?3",
    [ST_MSG_BEFORE] = "SELECT * FROM (SELECT " MSG_COLS " FROM messages WHERE conv = ?1 AND "
                      "seq < ?2 ORDER BY seq DESC LIMIT ?3) ORDER BY seq",
    [ST_MEDIA_ADD] =
        "INSERT OR IGNORE INTO media(id, size, mime, created_ms) VALUES (?1, ?2, ?3, ?4)",
    [ST_MEDIA_UP_ADD] =
        "INSERT OR IGNORE INTO media_uploaders(media, user, mime) VALUES (?1, ?2, ?3)",
    [ST_MEDIA_UP_SET] =
        "UPDATE media_uploaders SET mime = ?3 WHERE media = ?1 AND user = ?2 AND mime IS NOT ?3",
    [ST_MEDIA_REF] =
        "INSERT OR IGNORE INTO media_refs(media, conv, mime, msg) VALUES (?1, ?2, ?3, ?4)",
    /* Visible to the user: they uploaded it, or take part in a conversation
     * referencing it. The user's own upload first, then the earliest reference (by the
     * message that made it; conv breaks the ties of pre-schema-4 rows,
     * which all carry the one type media.mime had). */
    [ST_MEDIA_FOR] = "SELECT m.size, x.mime FROM media m JOIN ("
                     "SELECT 0 AS k, 0 AS o, '' AS c, mime FROM media_uploaders "
                     "WHERE media = ?1 AND user = ?2 "
                     "UNION ALL SELECT 1, r.msg, r.conv, r.mime FROM media_refs r "
                     "JOIN participants p ON p.conv = r.conv WHERE r.media = ?1 AND p.user = ?2"
                     ") x WHERE m.id = ?1 ORDER BY x.k, x.o, x.c LIMIT 1",
    [ST_USAGE_DAY_GET] = "SELECT uploads, bytes FROM usage_days WHERE user = ?1 AND day = ?2",
    [ST_USAGE_DAY_ADD] = "INSERT INTO usage_days(user, day, uploads, bytes) VALUES (?1, ?2, 1, ?3) "
                         "ON CONFLICT(user, day) DO UPDATE SET uploads = uploads + 1, "
                         "bytes = bytes + excluded.bytes",
    [ST_USAGE_DAY_SWEEP] = "DELETE FROM usage_days WHERE day < ?1",
    [ST_STORAGE_GET] = "SELECT bytes FROM usage_storage WHERE user = ?1",
    [ST_STORAGE_SET] = "INSERT INTO usage_storage(user, bytes) VALUES (?1, ?2) "
                       "ON CONFLICT(user) DO UPDATE SET bytes = excluded.bytes",
    /* A range on participants_by_user(user, conv): ';' follows ':'. */
    [ST_USER_ROOMS] = "SELECT count(*) FROM participants WHERE user = ?1 AND conv >= 'room:' "
                      "AND conv < 'room;'",
    /* ?2 wrote in their direct conversation ?1 with ?3, or the two share a
     * room (a range on participants_by_user for ?2's rooms). */
    [ST_CONTACT] = "SELECT EXISTS (SELECT 1 FROM messages WHERE conv = ?1 AND sender = ?2) OR "
                   "EXISTS (SELECT 1 FROM participants a JOIN participants b ON b.conv = a.conv "
                   "AND b.user = ?3 WHERE a.user = ?2 AND a.conv >= 'room:' AND a.conv < 'room;')",
    [ST_PRES_GET] = "SELECT last_seen, text FROM presence WHERE user = ?1",
    [ST_PRES_SEEN] = "INSERT INTO presence(user, last_seen, text) VALUES (?1, ?2, '') "
                     "ON CONFLICT(user) DO UPDATE SET last_seen = excluded.last_seen",
    [ST_PRES_TEXT] = "INSERT INTO presence(user, last_seen, text) VALUES (?1, NULL, ?2) "
                     "ON CONFLICT(user) DO UPDATE SET text = excluded.text",
    [ST_PRES_INV_GET] = "SELECT since FROM presence_invisible WHERE user = ?1",
    [ST_PRES_INV_ON] = "INSERT INTO presence_invisible(user, since) VALUES (?1, ?2) "
                       "ON CONFLICT(user) DO NOTHING",
    [ST_PRES_INV_OFF] = "DELETE FROM presence_invisible WHERE user = ?1",
    [ST_NOTIF_ADD] = "INSERT INTO notifications(recipient, type, priority, title, body, image, "
                     "actions, sender, created, expires, dedupe_key) "
                     "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    [ST_NOTIF_DEDUPE] = "SELECT " NOTIF_COLS " FROM notifications WHERE recipient = ?1 AND "
                        "dedupe_key = ?2 AND " NOTIF_LIVE("?3") " ORDER BY id DESC LIMIT 1",
    [ST_NOTIF_LIST] = "SELECT " NOTIF_COLS " FROM notifications WHERE recipient = ?1 AND id > ?2 "
                      "AND " NOTIF_LIVE("?3") " ORDER BY id LIMIT ?4",
    [ST_NOTIF_UNREAD] =
        "SELECT count(*) FROM notifications WHERE recipient = ?1 AND read = 0 AND " NOTIF_LIVE(
            "?2"),
    [ST_NOTIF_DELIVERED] = "UPDATE notifications SET delivered = 1 WHERE id = ?1 AND "
                           "recipient = ?2 AND delivered = 0",
    [ST_NOTIF_DELIVER_RANGE] = "UPDATE notifications SET delivered = 1 WHERE recipient = ?1 AND "
                               "id > ?2 AND id <= ?3 AND delivered = 0",
    [ST_NOTIF_READ_ONE] = "UPDATE notifications SET read = 1, delivered = 1 WHERE id = ?1 AND "
                          "recipient = ?2 AND read = 0 AND " NOTIF_LIVE("?3"),
    [ST_NOTIF_READ_ALL] = "UPDATE notifications SET read = 1, delivered = 1 WHERE recipient = ?1 "
                          "AND read = 0 AND " NOTIF_LIVE("?2"),
    [ST_NOTIF_EXPIRED_USERS] = "SELECT DISTINCT recipient FROM notifications WHERE expires <= ?1 "
                               "AND read = 0 ORDER BY recipient",
    [ST_NOTIF_SWEEP] = "DELETE FROM notifications WHERE expires <= ?1",
    [ST_NOTIF_NEXT_EXPIRY] = "SELECT min(expires) FROM notifications WHERE expires IS NOT NULL",
    [ST_NPREFS_GET] = "SELECT prefs FROM notification_prefs WHERE user = ?1",
    [ST_NPREFS_SET] = "INSERT INTO notification_prefs(user, prefs) VALUES (?1, ?2) "
                      "ON CONFLICT(user) DO UPDATE SET prefs = excluded.prefs",
    [ST_NOTIF_GET] = "SELECT " NOTIF_COLS " FROM notifications WHERE id = ?1",
    /* A user's rows go out in id order: a new row is not due before the
     * user's oldest one (which may be backing off). */
    [ST_PUSH_ADD] = "INSERT INTO push_outbox(notif, user, attempts, next_attempt_ms, created_ms) "
                    "VALUES (?1, ?2, 0, max(?3, coalesce((SELECT next_attempt_ms FROM push_outbox "
                    "WHERE user = ?2 ORDER BY id LIMIT 1), ?3)), ?3)",
    [ST_PUSH_COUNT] = "SELECT count(*) FROM push_outbox",
    /* Due rows that are their user's oldest. */
    [ST_PUSH_DUE] = "SELECT o.id, o.notif, o.user, o.attempts, o.next_attempt_ms, o.created_ms "
                    "FROM push_outbox o WHERE o.next_attempt_ms <= ?1 AND NOT EXISTS (SELECT 1 "
                    "FROM push_outbox p WHERE p.user = o.user AND p.id < o.id) "
                    "ORDER BY o.next_attempt_ms, o.id LIMIT ?2",
    [ST_PUSH_NEXT] = "SELECT min(next_attempt_ms) FROM push_outbox WHERE next_attempt_ms > ?1",
    [ST_PUSH_DEL] = "DELETE FROM push_outbox WHERE id = ?1",
    [ST_PUSH_RETRY] = "UPDATE push_outbox SET attempts = ?2, next_attempt_ms = ?3 WHERE id = ?1",
    /* The user's later rows wait for the retried one. */
    [ST_PUSH_RETRY_AFTER] = "UPDATE push_outbox SET next_attempt_ms = ?3 WHERE user = ?1 AND "
                            "id > ?2 AND next_attempt_ms < ?3",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
};

/* Schema steps: entry i takes version i to i + 1, inside the opening
 * transaction (a crash mid-migration leaves the old version). */
static const char *const migrations[MSTORE_SCHEMA_VERSION] = {
    "CREATE TABLE conversations ("
    " id TEXT PRIMARY KEY,"
    " kind INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL"
    ") WITHOUT ROWID;"
    "CREATE TABLE participants ("
    " conv TEXT NOT NULL,"
    " user TEXT NOT NULL,"
    " delivered INTEGER NOT NULL,"
    " read INTEGER NOT NULL,"
    " joined_ms INTEGER NOT NULL,"
    " PRIMARY KEY (conv, user)"
    ") WITHOUT ROWID;"
    "CREATE INDEX participants_by_user ON participants(user, conv);"
    "CREATE TABLE messages ("
    " id INTEGER PRIMARY KEY,"
    " conv TEXT NOT NULL,"
    " seq INTEGER NOT NULL,"
    " sender TEXT NOT NULL,"
    " client_id TEXT NOT NULL,"
    " type INTEGER NOT NULL,"
    " priority INTEGER NOT NULL,"
    " ts INTEGER NOT NULL,"
    " content TEXT NOT NULL,"
    " UNIQUE (conv, seq),"
    " UNIQUE (sender, client_id)"
    ");"
    "CREATE TABLE media ("
    " id TEXT PRIMARY KEY,"
    " size INTEGER NOT NULL,"
    " mime TEXT NOT NULL,"
    " created_ms INTEGER NOT NULL"
    ") WITHOUT ROWID;"
    "CREATE TABLE media_uploaders ("
    " media TEXT NOT NULL,"
    " user TEXT NOT NULL,"
    " PRIMARY KEY (media, user)"
    ") WITHOUT ROWID;"
    "CREATE TABLE media_refs ("
    " media TEXT NOT NULL,"
    " conv TEXT NOT NULL,"
    " PRIMARY KEY (media, conv)"
    ") WITHOUT ROWID;",
    /* 1 -> 2: presence. Only what must outlive the connections: when the
     * user was last connected (NULL: never) and their status text. */
    "CREATE TABLE presence ("
    " user TEXT PRIMARY KEY,"
    " last_seen INTEGER,"
    " text TEXT NOT NULL"
    ") WITHOUT ROWID;",
    /* 2 -> 3: notifications (AUTOINCREMENT: ids are never reused after the
     * sweep deletes the newest rows) and per-user preferences, kept as the
     * Preferences object's JSON (read back through the same parser). */
    "CREATE TABLE notifications ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " recipient TEXT NOT NULL,"
    " type INTEGER NOT NULL,"
    " priority INTEGER NOT NULL,"
    " title TEXT NOT NULL,"
    " body TEXT NOT NULL,"
    " image TEXT,"
    " actions TEXT NOT NULL,"
    " sender TEXT,"
    " created INTEGER NOT NULL,"
    " expires INTEGER,"
    " dedupe_key TEXT,"
    " delivered INTEGER NOT NULL DEFAULT 0,"
    " read INTEGER NOT NULL DEFAULT 0"
    ");"
    "CREATE INDEX notifications_by_recipient ON notifications(recipient, id);"
    "CREATE INDEX notifications_by_dedupe ON notifications(recipient, dedupe_key)"
    " WHERE dedupe_key IS NOT NULL;"
    "CREATE INDEX notifications_by_expiry ON notifications(expires) WHERE expires IS NOT NULL;"
    "CREATE TABLE notification_prefs ("
    " user TEXT PRIMARY KEY,"
    " prefs TEXT NOT NULL"
    ") WITHOUT ROWID;",
    /* 3 -> 4: the MIME type per upload and per referencing conversation,
     * no longer one per blob decided by whoever uploaded the bytes first
     * (media.mime stays: the backfill's source, and the first upload's type);
     * usage for quotas. The media tables are rebuilt with the new column
     * (SQLite cannot add a NOT NULL column without a default), uploads and
     * references backfilled with media.mime, references with msg 0 (older
     * than any later one). Stored bytes are counted from the data once,
     * here. Uploads per day start empty: uploaders had no time before.
     * Everything this step makes is derived from version-3 tables, so it
     * also runs on a database whose version was set back by hand (tests of
     * older steps do that): hence the DROP ... IF EXISTS. */
    "CREATE TABLE media_uploaders_4 ("
    " media TEXT NOT NULL,"
    " user TEXT NOT NULL,"
    " mime TEXT NOT NULL,"
    " PRIMARY KEY (media, user)"
    ") WITHOUT ROWID;"
    "INSERT INTO media_uploaders_4(media, user, mime)"
    " SELECT u.media, u.user, m.mime FROM media_uploaders u JOIN media m ON m.id = u.media;"
    "DROP TABLE media_uploaders;"
    "ALTER TABLE media_uploaders_4 RENAME TO media_uploaders;"
    "CREATE TABLE media_refs_4 ("
    " media TEXT NOT NULL,"
    " conv TEXT NOT NULL,"
    " mime TEXT NOT NULL,"
    " msg INTEGER NOT NULL," /* the message that made the reference */
    " PRIMARY KEY (media, conv)"
    ") WITHOUT ROWID;"
    "INSERT INTO media_refs_4(media, conv, mime, msg)"
    " SELECT r.media, r.conv, m.mime, 0 FROM media_refs r JOIN media m ON m.id = r.media;"
    "DROP TABLE media_refs;"
    "ALTER TABLE media_refs_4 RENAME TO media_refs;"
    "DROP TABLE IF EXISTS usage_days;"
    "CREATE TABLE usage_days ("
    " user TEXT NOT NULL,"
    " day INTEGER NOT NULL,"
    " uploads INTEGER NOT NULL,"
    " bytes INTEGER NOT NULL,"
    " PRIMARY KEY (user, day)"
    ") WITHOUT ROWID;"
    "DROP TABLE IF EXISTS usage_storage;"
    "CREATE TABLE usage_storage ("
    " user TEXT PRIMARY KEY,"
    " bytes INTEGER NOT NULL"
    ") WITHOUT ROWID;"
    "INSERT INTO usage_storage(user, bytes)"
    " SELECT user, sum(b) FROM ("
    "  SELECT sender AS user, length(CAST(content AS BLOB)) + " OVERHEAD_SQL " AS b FROM messages"
    "  UNION ALL SELECT u.user, m.size FROM media_uploaders u JOIN media m ON m.id = u.media"
    " ) GROUP BY user;",
    /* 4 -> 5: "appear offline" (presence_set's invisible). A row per user
     * who chose it, with the wall ms it was turned on; no row: visible.
     * Its own table, so that the step stands alone. */
    "CREATE TABLE IF NOT EXISTS presence_invisible ("
    " user TEXT PRIMARY KEY,"
    " since INTEGER NOT NULL"
    ") WITHOUT ROWID;",
    /* 5 -> 6: the push outbox (services/server/push.h): one row per notification
     * to deliver to the push webhook, written in the notification's own
     * transaction. AUTOINCREMENT: a row's id is its X-Parley-Delivery,
     * which receivers dedupe on, so ids are never reused. IF NOT EXISTS:
     * the step also runs on a database whose version was set back by hand
     * (tests of older steps do that), keeping its rows. */
    "CREATE TABLE IF NOT EXISTS push_outbox ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " notif INTEGER NOT NULL,"
    " user TEXT NOT NULL,"
    " attempts INTEGER NOT NULL,"
    " next_attempt_ms INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL"
    ");"
    "CREATE INDEX IF NOT EXISTS push_outbox_by_user ON push_outbox(user, id);"
    "CREATE INDEX IF NOT EXISTS push_outbox_by_due ON push_outbox(next_attempt_ms, id);",
};

typedef struct sconv {
    char id[MSG_CONV_MAX + 1];
    size_t len;
    int64_t last_seq;
    bool exists;
} sconv;

/* A user's stored bytes; on the dirty list while the batch changed them. */
typedef struct suser {
    char id[MSG_USER_MAX + 1];
    size_t len;
    int64_t bytes;
    bool dirty;
    struct suser *next_dirty;
} suser;

typedef struct sqs sqs;
static const mstore_ops sqlite_ops;
static void sq_close(mstore *base_);
static void sq_rollback(mstore *base_);

struct sqs {
    mstore base;   /* first: the interface */
    int64_t quota; /* stored bytes per sender, 0 none */
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
    char *path;
    pmap convs;        /* id -> sconv */
    pmap users;        /* id -> suser */
    suser *dirty;      /* users whose bytes the batch changed */
    int64_t swept_day; /* usage_days holds nothing older than the day before this */
    bool in_tx;
    bool lost; /* SQLite ended the batch's transaction by itself */
    uint64_t commits;
    uint32_t batch_writes; /* writes in the open batch */
    pbuf found;            /* content of the last mstore_find */
    plog_limit log_err;    /* a failing disk fails every statement: summaries */
};

/* ---- plumbing ---- */

static int db_err(sqs *s, const char *what)
{
    uint64_t held;
    if (plog_limit_ok(&s->log_err, ptime_ms(), 10000, &held))
        plog_error("store %s: %s: %s (%llu more store errors since the last line)", s->path, what,
                   sqlite3_errmsg(s->db), (unsigned long long)held);
    return PARLEY_EIO;
}

static int db_exec(sqs *s, const char *sql, const char *what)
{
    if (sqlite3_exec(s->db, sql, NULL, NULL, NULL) != SQLITE_OK) return db_err(s, what);
    return 0;
}

static void cache_clear(sqs *s)
{
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&s->convs, &pos))) free(e->val);
    pmap_free(&s->convs);
    memset(&s->convs, 0, sizeof s->convs);
}

static void users_clear(sqs *s)
{
    size_t pos = 0;
    pmap_entry *e;
    while ((e = pmap_next(&s->users, &pos))) free(e->val);
    pmap_free(&s->users);
    memset(&s->users, 0, sizeof s->users);
    s->dirty = NULL;
}

/* The batch is gone: its counters are wrong, the others still right. */
static void users_drop_dirty(sqs *s)
{
    suser *u = s->dirty;
    while (u) {
        suser *next = u->next_dirty;
        pmap_del(&s->users, u->id, u->len);
        free(u);
        u = next;
    }
    s->dirty = NULL;
}

/* Everything cached about the batch's writes, after it ended unsaved. */
static void batch_forget(sqs *s)
{
    cache_clear(s);
    users_drop_dirty(s);
    s->swept_day = INT64_MIN;
}

/* After a failed statement: did SQLite abandon the transaction? */
static void check_lost(sqs *s)
{
    if (s->in_tx && sqlite3_get_autocommit(s->db)) {
        plog_error("store %s: the batch was rolled back by SQLite", s->path);
        s->lost = true;
        batch_forget(s);
    }
}

static sqlite3_stmt *stmt(sqs *s, int which)
{
    sqlite3_stmt *st = s->st[which];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

static void done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

static int bind_text(sqlite3_stmt *st, int i, const char *v)
{
    size_t n = strlen(v);
    return n > INT_MAX ? SQLITE_TOOBIG : sqlite3_bind_text(st, i, v, (int)n, SQLITE_STATIC);
}

/* Runs a write statement to completion. */
static int run(sqs *s, sqlite3_stmt *st, const char *what)
{
    int rc = sqlite3_step(st);
    done(st);
    if (rc == SQLITE_DONE) return 0;
    int err = db_err(s, what);
    check_lost(s);
    return err;
}

/* Every write goes through here first. */
static int ensure_tx(sqs *s)
{
    if (s->lost) return PARLEY_EIO;
    if (s->in_tx) {
        s->batch_writes++;
        return 0;
    }
    int rc = sqlite3_step(s->st[ST_BEGIN]);
    done(s->st[ST_BEGIN]);
    if (rc != SQLITE_DONE) return db_err(s, "begin");
    s->in_tx = true;
    s->batch_writes = 1;
    return 0;
}

static bool sq_in_batch(const mstore *base_)
{
    const sqs *s = (const sqs *)base_;
    return s->in_tx;
}

void *mstore__db(mstore *base)
{
    return base && base->ops == &sqlite_ops ? ((sqs *)base)->db : NULL;
}

static uint64_t sq_commits(const mstore *base_)
{
    const sqs *s = (const sqs *)base_;
    return s->commits;
}

static uint32_t sq_batch_writes(const mstore *base_)
{
    const sqs *s = (const sqs *)base_;
    return s->in_tx ? s->batch_writes : 0;
}

static int sq_ping(mstore *base_)
{
    sqs *s = (sqs *)base_;
    if (s->lost) return PARLEY_EIO;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, "SELECT count(*) FROM sqlite_master", -1, &st, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : db_err(s, "ping");
}

static void sq_rollback(mstore *base_)
{
    sqs *s = (sqs *)base_;
    if (!s->in_tx) return;
    if (!sqlite3_get_autocommit(s->db)) {
        int rc = sqlite3_step(s->st[ST_ROLLBACK]);
        done(s->st[ST_ROLLBACK]);
        if (rc != SQLITE_DONE) db_err(s, "rollback");
    }
    s->in_tx = false;
    s->lost = false;
    batch_forget(s);
}

/* The batch's counters, written back just before its COMMIT. No
 * check_lost here: a failure rolls the whole batch back, which drops the
 * dirty list this walks. */
static int users_flush(sqs *s)
{
    for (suser *u = s->dirty; u; u = u->next_dirty) {
        sqlite3_stmt *st = stmt(s, ST_STORAGE_SET);
        sqlite3_bind_text(st, 1, u->id, (int)u->len, SQLITE_STATIC);
        sqlite3_bind_int64(st, 2, u->bytes);
        int rc = sqlite3_step(st);
        done(st);
        if (rc != SQLITE_DONE) return db_err(s, "storing usage");
    }
    return 0;
}

static int sq_commit(mstore *base_)
{
    sqs *s = (sqs *)base_;
    if (!s->in_tx) return 0;
    if (s->lost) {
        sq_rollback(&s->base);
        return PARLEY_EIO;
    }
    if (users_flush(s) != 0) {
        sq_rollback(&s->base);
        return PARLEY_EIO;
    }
    int rc = sqlite3_step(s->st[ST_COMMIT]);
    done(s->st[ST_COMMIT]);
    if (rc != SQLITE_DONE) {
        db_err(s, "commit");
        sq_rollback(&s->base);
        return PARLEY_EIO;
    }
    s->in_tx = false;
    s->commits++;
    for (suser *u = s->dirty; u; u = u->next_dirty) u->dirty = false;
    s->dirty = NULL;
    if (s->convs.n > MSTORE_CACHE_MAX) cache_clear(s);
    if (s->users.n > MSTORE_CACHE_MAX) users_clear(s);
    return 0;
}

/* ---- opening ---- */

static int db_int(sqs *s, const char *sql, sqlite3_int64 *v)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) return db_err(s, sql);
    int rc = sqlite3_step(st), err = 0;
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_INTEGER)
        *v = sqlite3_column_int64(st, 0);
    else
        err = db_err(s, sql);
    sqlite3_finalize(st);
    return err;
}

static int migrate(sqs *s, sqlite3_int64 from)
{
    for (sqlite3_int64 v = from; v < MSTORE_SCHEMA_VERSION; v++) {
        int rc = db_exec(s, migrations[v], "schema migration");
        if (rc) return rc;
    }
    if (from == MSTORE_SCHEMA_VERSION) return 0;
    char sql[96];
    snprintf(sql, sizeof sql, "PRAGMA application_id = %d; PRAGMA user_version = %d;",
             MSTORE_APP_ID, MSTORE_SCHEMA_VERSION);
    return db_exec(s, sql, "schema version");
}

static int check_schema(sqs *s)
{
    sqlite3_int64 app = 0, ver = 0, objects = 0;
    int rc = db_int(s, "PRAGMA application_id", &app);
    if (!rc) rc = db_int(s, "PRAGMA user_version", &ver);
    if (!rc) rc = db_int(s, "SELECT count(*) FROM sqlite_schema", &objects);
    if (rc) return rc;
    if (ver == 0 && app == 0 && objects == 0) return migrate(s, 0);
    if (app != MSTORE_APP_ID) {
        plog_error("store %s: not a messaging database (application_id %lld)", s->path,
                   (long long)app);
        return PARLEY_EIO;
    }
    if (ver < 1 || ver > MSTORE_SCHEMA_VERSION) {
        plog_error("store %s: schema version %lld, this server reads 1 to %d", s->path,
                   (long long)ver, MSTORE_SCHEMA_VERSION);
        return PARLEY_EIO;
    }
    return migrate(s, ver);
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The size of path's write-ahead log (0 when there is none), or
 * PARLEY_EIO / PARLEY_ENOMEM. */
static int64_t wal_size(const char *path)
{
    size_t n = strlen(path);
    char *wal = malloc(n + 5);
    if (!wal) return PARLEY_ENOMEM;
    memcpy(wal, path, n);
    memcpy(wal + n, "-wal", 5);
    struct stat st;
    int64_t ret = 0;
    if (stat(wal, &st) == 0)
        ret = S_ISREG(st.st_mode) ? (int64_t)st.st_size : 0;
    else if (errno != ENOENT) {
        plog_error("store %s: %s", wal, strerror(errno));
        ret = PARLEY_EIO;
    }
    free(wal);
    return ret;
}

/* What SQLite would start on silently: looked at before it opens the
 * file (https://sqlite.org/fileformat.html, "The Database Header"). 0 to
 * go on, or the error; *fresh names why a new database is about to be
 * made (NULL: there is one). */
static int check_file(const char *path, const char **fresh)
{
    *fresh = NULL;
    struct stat st;
    bool absent = false;
    if (stat(path, &st) != 0) {
        if (errno != ENOENT) {
            plog_error("store %s: %s", path, strerror(errno));
            return PARLEY_EIO;
        }
        absent = true;
    } else if (!S_ISREG(st.st_mode)) {
        plog_error("store %s: not a regular file", path);
        return PARLEY_EIO;
    }
    int64_t wal = wal_size(path);
    if (wal < 0) return (int)wal;
    if (absent || st.st_size == 0) {
        /* SQLite deletes the log of an empty database: what it holds would
         * be lost without a word. Entering WAL mode writes page 1, so the
         * store never leaves an empty file beside its log by itself. */
        if (wal > 0) {
            plog_error("store %s: %s but the write-ahead log %s-wal holds %lld bytes: not "
                       "starting a new database over it (restore the database file or move "
                       "both away)",
                       path, absent ? "no such file" : "empty file", path, (long long)wal);
            return PARLEY_EIO;
        }
        *fresh = absent ? "no such file" : "empty file (0 bytes)";
        return 0;
    }
    uint8_t h[100];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd < 0 ? -1 : pread(fd, h, sizeof h, 0);
    int err = errno;
    if (fd >= 0) close(fd);
    if (n < 0) {
        plog_error("store %s: cannot read: %s", path, strerror(err));
        return PARLEY_EIO;
    }
    if ((size_t)n < sizeof h || memcmp(h, "SQLite format 3", 16) != 0) {
        plog_error("store %s: not an SQLite database (%s)", path,
                   (size_t)n < sizeof h ? "shorter than a database header" : "no SQLite header");
        return PARLEY_EIO;
    }
    uint32_t psize = (uint32_t)h[16] << 8 | h[17];
    if (psize == 1) psize = 65536;
    if (psize < 512 || (psize & (psize - 1)) != 0) {
        plog_error("store %s: damaged database header (page size %u)", path, psize);
        return PARLEY_EIO;
    }
    /* The in-header size counts only when the version-valid-for number
     * matches the change counter (a writer older than 3.7.0 leaves it
     * stale). */
    uint32_t pages = be32(h + 28);
    uint64_t want = (uint64_t)pages * psize;
    if (pages == 0 || be32(h + 24) != be32(h + 92) || (uint64_t)st.st_size >= want) return 0;
    if (wal > 0) {
        /* A checkpoint killed midway: it writes page 1, with the new size,
         * before the pages that make the file that long. Recovery from the
         * log completes it; the quick check tells whether that worked. */
        plog_info("store %s: %lld of %llu bytes, the rest to come from the write-ahead log", path,
                  (long long)st.st_size, (unsigned long long)want);
        return 0;
    }
    plog_error("store %s: truncated: the header says %u pages of %u bytes (%llu bytes), the "
               "file has %lld bytes",
               path, pages, psize, (unsigned long long)want, (long long)st.st_size);
    return PARLEY_EIO;
}

/* Runs a quick_check pragma: 0 when it answers "ok". */
static int run_check(sqs *s, const char *sql)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    int ret = 0;
    if (rc != SQLITE_ROW) {
        plog_error("store %s: damaged: %s", s->path, sqlite3_errmsg(s->db));
        ret = PARLEY_EIO;
    } else {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        if (!v || strcmp(v, "ok") != 0) {
            plog_error("store %s: damaged: quick_check: %s", s->path, v ? v : "(null)");
            ret = PARLEY_EIO;
        }
    }
    sqlite3_finalize(st);
    return ret;
}

int64_t mstore__check_max = MSTORE_QUICK_CHECK_MAX;

/* PRAGMA quick_check reads every page: O(file size), see msg_store.h.
 * Above mstore__check_max the bulk (messages and its indexes) is left
 * out: every other table is checked with its indexes, the schema too. */
static int quick_check(sqs *s)
{
    sqlite3_int64 pages = 0, psize = 0;
    int rc = db_int(s, "PRAGMA page_count", &pages);
    if (!rc) rc = db_int(s, "PRAGMA page_size", &psize);
    if (rc) return rc;
    uint64_t t0 = ptime_ms();
    if (pages * psize <= mstore__check_max) {
        rc = run_check(s, "PRAGMA quick_check(1)");
    } else {
        plog_info("store %s: %lld MiB: the startup check leaves out the messages table (above "
                  "%lld MiB; check offline with sqlite3 FILE 'PRAGMA quick_check')",
                  s->path, (long long)(pages * psize >> 20), (long long)(mstore__check_max >> 20));
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(s->db,
                               "SELECT 'sqlite_schema' UNION ALL SELECT name FROM (SELECT "
                               "name FROM sqlite_schema WHERE type = 'table' AND name <> "
                               "'messages' ORDER BY name)",
                               -1, &st, NULL) != SQLITE_OK) {
            plog_error("store %s: damaged: %s", s->path, sqlite3_errmsg(s->db));
            return PARLEY_EIO;
        }
        int step = SQLITE_DONE;
        while (rc == 0 && (step = sqlite3_step(st)) == SQLITE_ROW) {
            char *sql = sqlite3_mprintf("PRAGMA quick_check(\"%w\")",
                                        (const char *)sqlite3_column_text(st, 0));
            rc = sql ? run_check(s, sql) : PARLEY_ENOMEM;
            sqlite3_free(sql);
        }
        if (rc == 0 && step != SQLITE_DONE) {
            plog_error("store %s: damaged: %s", s->path, sqlite3_errmsg(s->db));
            rc = PARLEY_EIO;
        }
        sqlite3_finalize(st);
    }
    uint64_t ms = ptime_ms() - t0;
    if (ms >= 1000) plog_info("store %s: checked in %.1f s", s->path, (double)ms / 1000);
    return rc;
}

static int db_open(sqs *s, const char *path, bool full_sync)
{
    const char *fresh;
    int rc = check_file(path, &fresh);
    if (rc) return rc;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &s->db, flags, NULL) != SQLITE_OK) {
        if (!s->db) return PARLEY_ENOMEM;
        return db_err(s, "cannot open");
    }
    if (fresh) plog_warn("store %s: %s: creating a new database", path, fresh);
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_db_config(s->db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)NULL);
    sqlite3_db_config(s->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)NULL);
    sqlite3_busy_timeout(s->db, MSTORE_BUSY_MS);
    /* Exclusive before WAL: no -shm file, and the lock taken by the first
     * transaction below is held until close, so a second server on the
     * same directory cannot interleave its writes with ours. */
    rc = db_exec(s, "PRAGMA locking_mode = EXCLUSIVE", "locking mode");
    if (rc) return rc;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL) != SQLITE_OK)
        return db_err(s, "journal mode");
    rc = sqlite3_step(st);
    const char *mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : NULL;
    bool wal = mode && strcmp(mode, "wal") == 0;
    if (rc != SQLITE_ROW)
        rc = db_err(s, "not a usable database");
    else if (!wal) {
        plog_error("store %s: cannot enter WAL mode (%s)", s->path, mode ? mode : "?");
        rc = PARLEY_EIO;
    } else
        rc = 0;
    sqlite3_finalize(st);
    if (rc) return rc;
    if ((rc = db_exec(s, full_sync ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
                      "synchronous")))
        return rc;
    if ((rc = db_exec(s, "PRAGMA cache_size = -16384", "cache size"))) return rc;
    /* A batch touches index pages all over the file (one per sender and
     * conversation), so checkpoints at SQLite's default of 1000 pages ran
     * almost every commit under load; 8192 pages (32 MiB of WAL) cut the
     * store's cost per message by a fifth in the chat benchmark. */
    if ((rc = db_exec(s, "PRAGMA wal_autocheckpoint = 8192", "checkpoint interval"))) return rc;
    if ((rc = db_exec(s, "BEGIN EXCLUSIVE", "locking the store"))) return rc;
    rc = quick_check(s);
    if (!rc) rc = check_schema(s);
    if (!rc) rc = db_exec(s, "COMMIT", "commit");
    if (rc) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    for (int i = 0; i < ST_COUNT; i++)
        if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                               NULL) != SQLITE_OK)
            return db_err(s, "schema does not match");
    return 0;
}

int mstore_sqlite_open(const char *path, bool full_sync, mstore **out)
{
    *out = NULL;
    if (!path || !*path) return PARLEY_EINVAL;
    sqs *s = pcalloc(1, sizeof *s);
    if (!s) return PARLEY_ENOMEM;
    s->base.ops = &sqlite_ops;
    s->swept_day = INT64_MIN;
    s->path = strdup(path);
    int rc = s->path ? db_open(s, path, full_sync) : PARLEY_ENOMEM;
    if (rc) {
        sq_close(&s->base);
        return rc;
    }
    *out = &s->base;
    return 0;
}

static void sq_close(mstore *base_)
{
    sqs *s = (sqs *)base_;
    if (!s) return;
    if (s->db) sq_rollback(&s->base);
    cache_clear(s);
    users_clear(s);
    pbuf_free(&s->found);
    for (int i = 0; i < ST_COUNT; i++) sqlite3_finalize(s->st[i]);
    if (s->db && sqlite3_close(s->db) != SQLITE_OK) db_err(s, "close");
    free(s->path);
    free(s);
}

/* ---- conversations ---- */

static sconv *get_conv(sqs *s, const char *id, int *err)
{
    size_t len = strlen(id);
    *err = 0;
    sconv *c = pmap_get(&s->convs, id, len);
    if (c) return c;
    if (len > MSG_CONV_MAX) {
        *err = PARLEY_EINVAL;
        return NULL;
    }
    sqlite3_stmt *st = stmt(s, ST_CONV_GET);
    bind_text(st, 1, id);
    int rc = sqlite3_step(st);
    bool exists = rc == SQLITE_ROW;
    done(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        *err = db_err(s, "reading a conversation");
        return NULL;
    }
    int64_t last = 0;
    st = stmt(s, ST_CONV_LAST);
    bind_text(st, 1, id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_INTEGER)
        last = sqlite3_column_int64(st, 0);
    done(st);
    if (rc != SQLITE_ROW) {
        *err = db_err(s, "reading a conversation's last seq");
        return NULL;
    }
    if (last < 0 || last >= MSG_SEQ_MAX) {
        plog_error("store %s: conversation %s: bad last seq %lld", s->path, id, (long long)last);
        *err = PARLEY_EIO;
        return NULL;
    }
    c = pcalloc(1, sizeof *c);
    if (!c) {
        *err = PARLEY_ENOMEM;
        return NULL;
    }
    memcpy(c->id, id, len + 1);
    c->len = len;
    c->last_seq = last;
    c->exists = exists;
    if (pmap_put(&s->convs, c->id, c->len, c) != 0) {
        free(c);
        *err = PARLEY_ENOMEM;
        return NULL;
    }
    return c;
}

static int64_t sq_last_seq(mstore *base_, const char *conv)
{
    sqs *s = (sqs *)base_;
    int err;
    sconv *c = get_conv(s, conv, &err);
    return c ? c->last_seq : err;
}

static int sq_conv_exists(mstore *base_, const char *conv)
{
    sqs *s = (sqs *)base_;
    int err;
    sconv *c = get_conv(s, conv, &err);
    return c ? c->exists : err;
}

static int add_conv(sqs *s, sconv *c, msg_conv_kind kind, int64_t now_ms)
{
    sqlite3_stmt *st = stmt(s, ST_CONV_ADD);
    bind_text(st, 1, c->id);
    sqlite3_bind_int(st, 2, kind);
    sqlite3_bind_int64(st, 3, now_ms);
    int rc = run(s, st, "adding a conversation");
    if (rc == 0) c->exists = true;
    return rc;
}

static int add_participant(sqs *s, const char *conv, const char *user, int64_t now_ms,
                           bool *added)
{
    sqlite3_stmt *st = stmt(s, ST_PART_ADD);
    bind_text(st, 1, conv);
    bind_text(st, 2, user);
    sqlite3_bind_int64(st, 3, now_ms);
    int rc = run(s, st, "adding a participant");
    if (rc == 0 && added) *added = sqlite3_changes(s->db) == 1;
    return rc;
}

static int sq_is_participant(mstore *base_, const char *conv, const char *user)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_PART_GET);
    bind_text(st, 1, conv);
    bind_text(st, 2, user);
    int rc = sqlite3_step(st);
    done(st);
    if (rc == SQLITE_ROW) return 1;
    if (rc == SQLITE_DONE) return 0;
    return db_err(s, "reading a participant");
}

/* ---- messages ---- */

static int corrupt(const sqs *s, const char *what)
{
    plog_error("store %s: bad row: %s", s->path, what);
    return PARLEY_EIO;
}

static int copy_ident(const sqs *s, sqlite3_stmt *st, int col, char *out, size_t cap,
                      bool (*valid)(const char *, size_t), const char *what)
{
    const char *v = (const char *)sqlite3_column_text(st, col);
    size_t n = (size_t)sqlite3_column_bytes(st, col);
    if (sqlite3_column_type(st, col) != SQLITE_TEXT || !v || n >= cap || !valid(v, n))
        return corrupt(s, what);
    memcpy(out, v, n);
    out[n] = 0;
    return 0;
}

static bool valid_conv_id(const char *v, size_t n)
{
    msg_conv c;
    return msg_conv_parse(&c, v, n);
}

/* Reads a row of MSG_COLS; the file is input like any other. */
static int read_msg(const sqs *s, sqlite3_stmt *st, mstore_msg *out)
{
    memset(out, 0, sizeof *out);
    msg_message *m = &out->m;
    for (int i = 0; i < 9; i++) {
        int want = i == 1 || i == 3 || i == 4 || i == 8 ? SQLITE_TEXT : SQLITE_INTEGER;
        if (sqlite3_column_type(st, i) != want) return corrupt(s, "column of the wrong type");
    }
    m->id = sqlite3_column_int64(st, 0);
    m->seq = sqlite3_column_int64(st, 2);
    int64_t type = sqlite3_column_int64(st, 5), prio = sqlite3_column_int64(st, 6);
    m->ts = sqlite3_column_int64(st, 7);
    if (m->id <= 0 || m->id > MSG_SEQ_MAX || m->seq <= 0 || m->seq > MSG_SEQ_MAX || m->ts < 0 ||
        m->ts > MSG_SEQ_MAX)
        return corrupt(s, "id, seq or ts out of range");
    if (type < MSG_TEXT || type > MSG_SYSTEM || prio < MSG_PRIO_LOW || prio > MSG_PRIO_URGENT)
        return corrupt(s, "type or priority out of range");
    m->type = (msg_type)type;
    m->priority = (msg_priority)prio;
    int rc = copy_ident(s, st, 1, m->conversation, sizeof m->conversation, valid_conv_id,
                        "conversation id");
    if (!rc) rc = copy_ident(s, st, 3, m->from, sizeof m->from, msg_valid_user, "sender");
    if (!rc)
        rc = copy_ident(s, st, 4, m->client_id, sizeof m->client_id, msg_valid_client_id,
                        "client id");
    if (rc) return rc;
    out->content_json = (const char *)sqlite3_column_text(st, 8);
    out->content_len = (size_t)sqlite3_column_bytes(st, 8);
    json_val v;
    if (!out->content_json || json_parse(out->content_json, out->content_len, 8, &v, NULL) != 0 ||
        v.type != JSON_OBJECT || v.len != out->content_len)
        return corrupt(s, "content is not a compact JSON object");
    return 0;
}

static int sq_find(mstore *base_, const char *sender, const char *client_id, mstore_msg *out)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_FIND);
    bind_text(st, 1, sender);
    bind_text(st, 2, client_id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        done(st);
        return 0;
    }
    if (rc != SQLITE_ROW) {
        done(st);
        return db_err(s, "looking up a client id");
    }
    /* The row's text dies with the reset: keep a copy for the caller. */
    rc = read_msg(s, st, out);
    s->found.len = 0;
    if (rc == 0 && pbuf_append(&s->found, out->content_json, out->content_len) != 0)
        rc = PARLEY_ENOMEM;
    done(st);
    if (rc) return rc;
    out->content_json = (const char *)s->found.ptr;
    return 1;
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = 0;
}

/* user's counter, loaded on first use (one lookup; no row: nothing
 * stored yet). */
static suser *get_user(sqs *s, const char *user, int *err)
{
    size_t len = strlen(user);
    *err = 0;
    suser *u = pmap_get(&s->users, user, len);
    if (u) return u;
    if (len == 0 || len > MSG_USER_MAX) {
        *err = PARLEY_EINVAL;
        return NULL;
    }
    sqlite3_stmt *st = stmt(s, ST_STORAGE_GET);
    bind_text(st, 1, user);
    int rc = sqlite3_step(st);
    int64_t bytes = 0;
    if (rc == SQLITE_ROW) {
        bytes = sqlite3_column_int64(st, 0);
        if (sqlite3_column_type(st, 0) != SQLITE_INTEGER || bytes < 0) *err = -1;
    }
    done(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        *err = db_err(s, "reading usage");
        return NULL;
    }
    if (*err) {
        *err = corrupt(s, "stored bytes");
        return NULL;
    }
    if (!(u = pcalloc(1, sizeof *u))) {
        *err = PARLEY_ENOMEM;
        return NULL;
    }
    memcpy(u->id, user, len + 1);
    u->len = len;
    u->bytes = bytes;
    if (pmap_put(&s->users, u->id, u->len, u) != 0) {
        free(u);
        *err = PARLEY_ENOMEM;
        return NULL;
    }
    return u;
}

static void user_add(sqs *s, suser *u, int64_t n)
{
    u->bytes = n > INT64_MAX - u->bytes ? INT64_MAX : u->bytes + n;
    if (u->dirty) return;
    u->dirty = true;
    u->next_dirty = s->dirty;
    s->dirty = u;
}

static int sq_insert(mstore *base_, const msg_conv *c, const char *sender, const char *client_id,
                  msg_type type, msg_priority prio, const char *content_json, size_t content_len,
                  const char *media, const char *media_mime, int64_t now_ms, mstore_msg *out)
{
    sqs *s = (sqs *)base_;
    if (content_len > INT_MAX) return PARLEY_EINVAL;
    if (media && (!media_mime || !msg_valid_mime(media_mime, strlen(media_mime))))
        return PARLEY_EINVAL;
    int rc = ensure_tx(s);
    if (rc) return rc;
    sconv *sc = get_conv(s, c->id, &rc);
    if (!sc) return rc;
    /* Before anything is written: a message stored is a message counted. */
    suser *su = get_user(s, sender, &rc);
    if (!su) return rc;
    if (!sc->exists) {
        if (c->kind != MSG_CONV_DM) return PARLEY_ESTATE;
        rc = add_conv(s, sc, MSG_CONV_DM, now_ms);
        if (!rc) rc = add_participant(s, c->id, c->a, now_ms, NULL);
        if (!rc) rc = add_participant(s, c->id, c->b, now_ms, NULL);
        if (rc) return rc;
    } else if (c->kind != MSG_CONV_DM) {
        int p = sq_is_participant(base_, c->id, sender);
        if (p <= 0) return p < 0 ? p : MSTORE_NOT_MEMBER;
    }
    if (s->quota && su->bytes + (int64_t)content_len + MSTORE_MSG_OVERHEAD > s->quota)
        return MSTORE_OVER_QUOTA;
    if (sc->last_seq + 1 >= MSG_SEQ_MAX) return PARLEY_ELIMIT;
    int64_t seq = sc->last_seq + 1;
    sqlite3_stmt *st = stmt(s, ST_MSG_ADD);
    bind_text(st, 1, c->id);
    sqlite3_bind_int64(st, 2, seq);
    bind_text(st, 3, sender);
    bind_text(st, 4, client_id);
    sqlite3_bind_int(st, 5, type);
    sqlite3_bind_int(st, 6, prio);
    sqlite3_bind_int64(st, 7, now_ms);
    sqlite3_bind_text(st, 8, content_json, (int)content_len, SQLITE_STATIC);
    rc = sqlite3_step(st);
    done(st);
    /* The only unique key a correct caller can hit: (sender, client_id). */
    if (rc == SQLITE_CONSTRAINT_UNIQUE) return MSTORE_DUPLICATE;
    if (rc != SQLITE_DONE) {
        rc = db_err(s, "storing a message");
        check_lost(s);
        return rc;
    }
    sc->last_seq = seq;
    int64_t id = sqlite3_last_insert_rowid(s->db);
    user_add(s, su, (int64_t)content_len + MSTORE_MSG_OVERHEAD);
    if (media) {
        st = stmt(s, ST_MEDIA_REF);
        bind_text(st, 1, media);
        bind_text(st, 2, c->id);
        bind_text(st, 3, media_mime);
        sqlite3_bind_int64(st, 4, id);
        if ((rc = run(s, st, "recording a media reference"))) return rc;
    }
    memset(out, 0, sizeof *out);
    out->m.id = id;
    out->m.seq = seq;
    out->m.ts = now_ms;
    out->m.type = type;
    out->m.priority = prio;
    copy_str(out->m.conversation, sizeof out->m.conversation, c->id);
    copy_str(out->m.from, sizeof out->m.from, sender);
    copy_str(out->m.client_id, sizeof out->m.client_id, client_id);
    out->content_json = content_json;
    out->content_len = content_len;
    return 0;
}

static int iterate_msgs(sqs *s, sqlite3_stmt *st, mstore_msg_fn fn, void *arg)
{
    int rc, stop = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        mstore_msg m;
        if ((stop = read_msg(s, st, &m)) != 0) break;
        if ((stop = fn(&m, arg)) != 0) break;
    }
    if (!stop && rc != SQLITE_DONE) stop = db_err(s, "reading messages");
    done(st);
    return stop;
}

static int sq_messages_after(mstore *base_, const char *conv, int64_t after, unsigned limit,
                          mstore_msg_fn fn, void *arg)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_MSG_AFTER);
    bind_text(st, 1, conv);
    sqlite3_bind_int64(st, 2, after);
    sqlite3_bind_int64(st, 3, limit);
    return iterate_msgs(s, st, fn, arg);
}

static int sq_messages_before(mstore *base_, const char *conv, int64_t before, unsigned limit,
                           mstore_msg_fn fn, void *arg)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_MSG_BEFORE);
    bind_text(st, 1, conv);
    sqlite3_bind_int64(st, 2, before > 0 ? before : MSG_SEQ_MAX);
    sqlite3_bind_int64(st, 3, limit);
    return iterate_msgs(s, st, fn, arg);
}

/* ---- participants ---- */

static int sq_receipt(mstore *base_, const char *conv, const char *user, int64_t delivered, int64_t read,
                   int64_t *d, int64_t *r, bool *changed)
{
    sqs *s = (sqs *)base_;
    *changed = false;
    sqlite3_stmt *st = stmt(s, ST_PART_GET);
    bind_text(st, 1, conv);
    bind_text(st, 2, user);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        done(st);
        return PARLEY_ESTATE;
    }
    if (rc != SQLITE_ROW || sqlite3_column_type(st, 0) != SQLITE_INTEGER ||
        sqlite3_column_type(st, 1) != SQLITE_INTEGER) {
        done(st);
        return rc == SQLITE_ROW ? corrupt(s, "watermark") : db_err(s, "reading watermarks");
    }
    int64_t od = sqlite3_column_int64(st, 0), orr = sqlite3_column_int64(st, 1);
    done(st);
    int64_t nr = PARLEY_MAX(orr, read);
    int64_t nd = PARLEY_MAX(PARLEY_MAX(od, delivered), nr);
    *d = nd;
    *r = nr;
    if (nd == od && nr == orr) return 0;
    if ((rc = ensure_tx(s))) return rc;
    st = stmt(s, ST_PART_SET);
    bind_text(st, 1, conv);
    bind_text(st, 2, user);
    sqlite3_bind_int64(st, 3, nd);
    sqlite3_bind_int64(st, 4, nr);
    if ((rc = run(s, st, "storing a receipt"))) return rc;
    *changed = true;
    return 0;
}

static int sq_join(mstore *base_, const char *room, const char *user, int64_t now_ms, bool *added)
{
    sqs *s = (sqs *)base_;
    *added = false;
    msg_conv c;
    msg_conv_room(&c, room);
    int rc = ensure_tx(s);
    if (rc) return rc;
    sconv *sc = get_conv(s, c.id, &rc);
    if (!sc) return rc;
    if (!sc->exists && (rc = add_conv(s, sc, MSG_CONV_ROOM, now_ms))) return rc;
    return add_participant(s, c.id, user, now_ms, added);
}

static int sq_leave(mstore *base_, const char *room, const char *user)
{
    sqs *s = (sqs *)base_;
    msg_conv c;
    msg_conv_room(&c, room);
    int rc = ensure_tx(s);
    if (rc) return rc;
    sqlite3_stmt *st = stmt(s, ST_PART_DEL);
    bind_text(st, 1, c.id);
    bind_text(st, 2, user);
    if ((rc = run(s, st, "removing a participant"))) return rc;
    return sqlite3_changes(s->db) == 1 ? 0 : PARLEY_ESTATE;
}

static int sq_participants(mstore *base_, const char *conv, mstore_user_fn fn, void *arg)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_PART_LIST);
    bind_text(st, 1, conv);
    int rc, stop = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char user[MSG_USER_MAX + 1];
        if ((stop = copy_ident(s, st, 0, user, sizeof user, msg_valid_user, "participant")) != 0)
            break;
        if (sqlite3_column_type(st, 1) != SQLITE_INTEGER ||
            sqlite3_column_type(st, 2) != SQLITE_INTEGER) {
            stop = corrupt(s, "watermark");
            break;
        }
        if ((stop = fn(user, sqlite3_column_int64(st, 1), sqlite3_column_int64(st, 2), arg)) != 0)
            break;
    }
    if (!stop && rc != SQLITE_DONE) stop = db_err(s, "reading participants");
    done(st);
    return stop;
}

static int sq_user_convs(mstore *base_, const char *user, mstore_conv_fn fn, void *arg)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_USER_CONVS);
    bind_text(st, 1, user);
    int rc, stop = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char conv[MSG_CONV_MAX + 1];
        if ((stop = copy_ident(s, st, 0, conv, sizeof conv, valid_conv_id, "conversation")) != 0)
            break;
        if ((stop = fn(conv, arg)) != 0) break;
    }
    if (!stop && rc != SQLITE_DONE) stop = db_err(s, "reading conversations");
    done(st);
    return stop;
}

/* ---- media ---- */

static int sq_media_put(mstore *base_, const char *id, int64_t size, const char *mime, const char *user,
                     int64_t now_ms, bool *existed)
{
    sqs *s = (sqs *)base_;
    if (size < 0) return PARLEY_EINVAL;
    int rc = ensure_tx(s);
    if (rc) return rc;
    suser *u = get_user(s, user, &rc);
    if (!u) return rc;
    sqlite3_stmt *st = stmt(s, ST_MEDIA_ADD);
    bind_text(st, 1, id);
    sqlite3_bind_int64(st, 2, size);
    bind_text(st, 3, mime);
    sqlite3_bind_int64(st, 4, now_ms);
    if ((rc = run(s, st, "recording media"))) return rc;
    *existed = sqlite3_changes(s->db) == 0;
    st = stmt(s, ST_MEDIA_UP_ADD);
    bind_text(st, 1, id);
    bind_text(st, 2, user);
    bind_text(st, 3, mime);
    if ((rc = run(s, st, "recording an uploader"))) return rc;
    if (sqlite3_changes(s->db) == 1) {
        user_add(s, u, size);
        return 0;
    }
    /* An upload of theirs again: their type is the latest they gave. */
    st = stmt(s, ST_MEDIA_UP_SET);
    bind_text(st, 1, id);
    bind_text(st, 2, user);
    bind_text(st, 3, mime);
    return run(s, st, "recording an uploader's type");
}

static int sq_media_for(mstore *base_, const char *id, const char *user, int64_t *size,
                     char mime[MSG_MIME_MAX + 1])
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_MEDIA_FOR);
    bind_text(st, 1, id);
    bind_text(st, 2, user);
    int rc = sqlite3_step(st), ret;
    if (rc == SQLITE_DONE)
        ret = 0;
    else if (rc != SQLITE_ROW)
        ret = db_err(s, "reading media");
    else if (sqlite3_column_type(st, 0) != SQLITE_INTEGER || sqlite3_column_int64(st, 0) < 0)
        ret = corrupt(s, "media size");
    else {
        *size = sqlite3_column_int64(st, 0);
        ret = copy_ident(s, st, 1, mime, MSG_MIME_MAX + 1, msg_valid_mime, "media type");
        if (ret == 0) ret = 1;
    }
    done(st);
    return ret;
}

/* ---- usage ---- */

static int sq_usage_day(mstore *base_, const char *user, int64_t day, int64_t *uploads, int64_t *bytes)
{
    sqs *s = (sqs *)base_;
    *uploads = *bytes = 0;
    sqlite3_stmt *st = stmt(s, ST_USAGE_DAY_GET);
    bind_text(st, 1, user);
    sqlite3_bind_int64(st, 2, day);
    int rc = sqlite3_step(st), ret = 0;
    if (rc == SQLITE_ROW) {
        int64_t n = sqlite3_column_int64(st, 0), b = sqlite3_column_int64(st, 1);
        if (sqlite3_column_type(st, 0) != SQLITE_INTEGER ||
            sqlite3_column_type(st, 1) != SQLITE_INTEGER || n < 0 || b < 0) {
            ret = corrupt(s, "uploads of a day");
        } else {
            *uploads = n;
            *bytes = b;
        }
    } else if (rc != SQLITE_DONE) {
        ret = db_err(s, "reading uploads of a day");
    }
    done(st);
    return ret;
}

static int sq_usage_add_upload(mstore *base_, const char *user, int64_t day, int64_t bytes)
{
    sqs *s = (sqs *)base_;
    if (bytes < 0 || day <= INT64_MIN + 1) return PARLEY_EINVAL;
    int rc = ensure_tx(s);
    if (rc) return rc;
    sqlite3_stmt *st;
    if (day > s->swept_day) {
        /* Once per day (and after a rollback): the rows nobody asks for
         * any more, a handful per user. */
        st = stmt(s, ST_USAGE_DAY_SWEEP);
        sqlite3_bind_int64(st, 1, day - 1);
        if ((rc = run(s, st, "deleting old uploads"))) return rc;
        s->swept_day = day;
    }
    st = stmt(s, ST_USAGE_DAY_ADD);
    bind_text(st, 1, user);
    sqlite3_bind_int64(st, 2, day);
    sqlite3_bind_int64(st, 3, bytes);
    return run(s, st, "counting an upload");
}

static void sq_set_storage_quota(mstore *base_, int64_t bytes)
{
    ((sqs *)base_)->quota = bytes;
}

static int sq_storage_bytes(mstore *base_, const char *user, int64_t *bytes)
{
    sqs *s = (sqs *)base_;
    int rc;
    suser *u = get_user(s, user, &rc);
    if (!u) return rc;
    *bytes = u->bytes;
    return 0;
}

static int64_t sq_user_rooms(mstore *base_, const char *user)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_USER_ROOMS);
    bind_text(st, 1, user);
    int64_t ret =
        sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : db_err(s, "counting rooms");
    done(st);
    return ret;
}

static int sq_contact(mstore *base_, const char *user, const char *other)
{
    sqs *s = (sqs *)base_;
    if (!strcmp(user, other)) return 1;
    msg_conv c;
    msg_conv_dm(&c, user, other);
    sqlite3_stmt *st = stmt(s, ST_CONTACT);
    bind_text(st, 1, c.id);
    bind_text(st, 2, user);
    bind_text(st, 3, other);
    int ret = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) != 0
                                             : db_err(s, "looking up a contact");
    done(st);
    return ret;
}

/* ---- presence ---- */

static int sq_presence_get(mstore *base_, const char *user, int64_t *last_seen,
                        char text[MSG_PRESENCE_TEXT_MAX + 1])
{
    sqs *s = (sqs *)base_;
    *last_seen = -1;
    text[0] = 0;
    sqlite3_stmt *st = stmt(s, ST_PRES_GET);
    bind_text(st, 1, user);
    int rc = sqlite3_step(st), ret = 0;
    if (rc == SQLITE_ROW) {
        int t0 = sqlite3_column_type(st, 0);
        const char *t = (const char *)sqlite3_column_text(st, 1);
        int tlen = sqlite3_column_bytes(st, 1);
        int64_t seen = t0 == SQLITE_INTEGER ? sqlite3_column_int64(st, 0) : -1;
        /* Checked like input: a row that breaks the rules is not passed on. */
        if ((t0 != SQLITE_NULL && (t0 != SQLITE_INTEGER || seen < 0)) || !t || tlen < 0 ||
            tlen > MSG_PRESENCE_TEXT_MAX || memchr(t, 0, (size_t)tlen)) {
            plog_error("store %s: bad presence row for %s", s->path, user);
            ret = PARLEY_EIO;
        } else {
            *last_seen = seen;
            memcpy(text, t, (size_t)tlen);
            text[tlen] = 0;
            ret = 1;
        }
    } else if (rc != SQLITE_DONE) {
        ret = db_err(s, "reading presence");
    }
    done(st);
    return ret;
}

static int sq_presence_seen(mstore *base_, const char *user, int64_t now_ms)
{
    sqs *s = (sqs *)base_;
    int rc = ensure_tx(s);
    if (rc) return rc;
    sqlite3_stmt *st = stmt(s, ST_PRES_SEEN);
    bind_text(st, 1, user);
    sqlite3_bind_int64(st, 2, now_ms);
    return run(s, st, "storing last seen");
}

static int sq_presence_text(mstore *base_, const char *user, const char *text)
{
    sqs *s = (sqs *)base_;
    if (strlen(text) > MSG_PRESENCE_TEXT_MAX) return PARLEY_EINVAL;
    int rc = ensure_tx(s);
    if (rc) return rc;
    sqlite3_stmt *st = stmt(s, ST_PRES_TEXT);
    bind_text(st, 1, user);
    bind_text(st, 2, text);
    return run(s, st, "storing a status text");
}

static int sq_presence_invisible(mstore *base_, const char *user)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_PRES_INV_GET);
    bind_text(st, 1, user);
    int rc = sqlite3_step(st), ret = 0;
    if (rc == SQLITE_ROW)
        ret = 1;
    else if (rc != SQLITE_DONE)
        ret = db_err(s, "reading presence");
    done(st);
    return ret;
}

static int sq_presence_set_invisible(mstore *base_, const char *user, bool on, int64_t now_ms)
{
    sqs *s = (sqs *)base_;
    int rc = ensure_tx(s);
    if (rc) return rc;
    sqlite3_stmt *st = stmt(s, on ? ST_PRES_INV_ON : ST_PRES_INV_OFF);
    bind_text(st, 1, user);
    if (on) sqlite3_bind_int64(st, 2, now_ms);
    return run(s, st, "storing invisibility");
}

/* ---- notifications ---- */

/* A text column copied into out (cap bytes incl. NUL), at most max bytes,
 * no NUL inside; NULL allowed only when nullable (gives ""). */
static bool col_cstr(sqlite3_stmt *st, int col, char *out, size_t max, bool nullable, size_t min)
{
    out[0] = 0;
    int t = sqlite3_column_type(st, col);
    if (t == SQLITE_NULL) return nullable;
    if (t != SQLITE_TEXT) return false;
    const char *v = (const char *)sqlite3_column_text(st, col);
    int n = sqlite3_column_bytes(st, col);
    if (!v || n < 0 || (size_t)n > max || (size_t)n < min || memchr(v, 0, (size_t)n)) return false;
    memcpy(out, v, (size_t)n);
    out[n] = 0;
    return true;
}

static int read_notif(const sqs *s, sqlite3_stmt *st, msg_notification *n)
{
    memset(n, 0, sizeof *n);
    n->id = sqlite3_column_int64(st, 0);
    int64_t type = sqlite3_column_int64(st, 2), prio = sqlite3_column_int64(st, 3);
    n->type = (msg_ntype)type;
    n->priority = (msg_priority)prio;
    n->created = sqlite3_column_int64(st, 9);
    n->expires = sqlite3_column_type(st, 10) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 10);
    n->delivered = sqlite3_column_int64(st, 12) != 0;
    n->read = sqlite3_column_int64(st, 13) != 0;
    const char *aj = (const char *)sqlite3_column_text(st, 7);
    int alen = sqlite3_column_bytes(st, 7);
    json_val arr;
    msg_error err;
    /* Checked like input: a row that breaks the rules is not passed on. */
    bool ok = n->id > 0 && type >= MSG_NT_MESSAGE && type <= MSG_NT_LAST && prio >= MSG_PRIO_LOW &&
              prio <= MSG_PRIO_URGENT && n->created >= 0 &&
              col_cstr(st, 1, n->to, MSG_USER_MAX, false, 1) &&
              col_cstr(st, 4, n->title, MSG_NOTIF_TITLE_MAX, false, 1) &&
              col_cstr(st, 5, n->body, MSG_NOTIF_BODY_MAX, false, 0) &&
              col_cstr(st, 6, n->image, MSG_NOTIF_IMAGE_MAX, true, 1) &&
              col_cstr(st, 8, n->from, MSG_USER_MAX, true, 1) &&
              col_cstr(st, 11, n->dedupe, MSG_NOTIF_DEDUPE_MAX, true, 1) && aj && alen >= 0 &&
              json_parse(aj, (size_t)alen, 4, &arr, NULL) == 0 &&
              msg_parse_nactions(&arr, n->actions, &n->nactions, &err) == MSG_OK;
    if (!ok) {
        plog_error("store %s: bad notification row %lld", s->path, (long long)n->id);
        return PARLEY_EIO;
    }
    return 0;
}

static void bind_opt(sqlite3_stmt *st, int i, const char *v)
{
    if (v[0])
        bind_text(st, i, v);
    else
        sqlite3_bind_null(st, i);
}

static int sq_notif_insert(mstore *base_, msg_notification *n, int64_t now_ms)
{
    sqs *s = (sqs *)base_;
    if (n->dedupe[0]) {
        sqlite3_stmt *st = stmt(s, ST_NOTIF_DEDUPE);
        bind_text(st, 1, n->to);
        bind_text(st, 2, n->dedupe);
        sqlite3_bind_int64(st, 3, now_ms);
        int rc = sqlite3_step(st), ret = 0;
        if (rc == SQLITE_ROW)
            ret = read_notif(s, st, n) == 0 ? MSTORE_DUPLICATE : PARLEY_EIO;
        else if (rc != SQLITE_DONE)
            ret = db_err(s, "finding a notification by dedupe key");
        done(st);
        if (ret) return ret;
    }
    int rc = ensure_tx(s);
    if (rc) return rc;
    pbuf actions = {0};
    if (msg_encode_nactions(&actions, n->actions, n->nactions) != 0) {
        pbuf_free(&actions);
        return PARLEY_ENOMEM;
    }
    sqlite3_stmt *st = stmt(s, ST_NOTIF_ADD);
    bind_text(st, 1, n->to);
    sqlite3_bind_int(st, 2, (int)n->type);
    sqlite3_bind_int(st, 3, (int)n->priority);
    bind_text(st, 4, n->title);
    bind_text(st, 5, n->body);
    bind_opt(st, 6, n->image);
    sqlite3_bind_text(st, 7, (const char *)actions.ptr, (int)actions.len, SQLITE_STATIC);
    bind_opt(st, 8, n->from);
    sqlite3_bind_int64(st, 9, now_ms);
    if (n->expires >= 0)
        sqlite3_bind_int64(st, 10, n->expires);
    else
        sqlite3_bind_null(st, 10);
    bind_opt(st, 11, n->dedupe);
    rc = run(s, st, "storing a notification");
    pbuf_free(&actions);
    if (rc) return rc;
    n->id = sqlite3_last_insert_rowid(s->db);
    n->created = now_ms;
    n->delivered = n->read = false;
    return 0;
}

static int sq_notif_get(mstore *base_, int64_t id, msg_notification *n)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_NOTIF_GET);
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st), ret = 0;
    if (rc == SQLITE_ROW)
        ret = read_notif(s, st, n) == 0 ? 1 : PARLEY_EIO;
    else if (rc != SQLITE_DONE)
        ret = db_err(s, "reading a notification");
    done(st);
    return ret;
}

/* ---- push outbox ---- */

static int sq_push_add(mstore *base_, int64_t notif, const char *user, int64_t now_ms, int64_t *id)
{
    sqs *s = (sqs *)base_;
    int rc = ensure_tx(s);
    if (rc) return rc;
    sqlite3_stmt *st = stmt(s, ST_PUSH_ADD);
    sqlite3_bind_int64(st, 1, notif);
    bind_text(st, 2, user);
    sqlite3_bind_int64(st, 3, now_ms);
    rc = run(s, st, "queueing a push");
    if (rc) return rc;
    if (id) *id = sqlite3_last_insert_rowid(s->db);
    return 0;
}

static int64_t sq_push_count(mstore *base_)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_PUSH_COUNT);
    int64_t ret =
        sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : db_err(s, "counting pushes");
    done(st);
    return ret;
}

static int sq_push_due(mstore *base_, int64_t now_ms, unsigned limit, mstore_push_fn fn, void *arg)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_PUSH_DUE);
    sqlite3_bind_int64(st, 1, now_ms);
    sqlite3_bind_int64(st, 2, limit);
    mstore_push_row r;
    int rc, ret = 0;
    while (ret == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        memset(&r, 0, sizeof r);
        r.id = sqlite3_column_int64(st, 0);
        r.notif = sqlite3_column_int64(st, 1);
        int64_t att = sqlite3_column_int64(st, 3);
        r.attempts = att < 0 ? 0 : att > UINT32_MAX ? UINT32_MAX : (uint32_t)att;
        r.next_ms = sqlite3_column_int64(st, 4);
        r.created_ms = sqlite3_column_int64(st, 5);
        if (!col_cstr(st, 2, r.user, MSG_USER_MAX, false, 1)) {
            plog_error("store %s: bad push_outbox row %lld", s->path, (long long)r.id);
            ret = PARLEY_EIO;
            break;
        }
        ret = fn(&r, arg);
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = db_err(s, "listing due pushes");
    done(st);
    return ret < 0 ? ret : 0;
}

static int64_t sq_push_next_due(mstore *base_, int64_t after_ms)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_PUSH_NEXT);
    sqlite3_bind_int64(st, 1, after_ms);
    int64_t ret = -1;
    if (sqlite3_step(st) == SQLITE_ROW) {
        if (sqlite3_column_type(st, 0) == SQLITE_INTEGER) ret = sqlite3_column_int64(st, 0);
    } else {
        ret = db_err(s, "finding the next push");
        if (ret == -1) ret = -2;
    }
    done(st);
    return ret;
}

static int sq_push_del(mstore *base_, int64_t id)
{
    sqs *s = (sqs *)base_;
    int rc = ensure_tx(s);
    if (rc) return rc;
    sqlite3_stmt *st = stmt(s, ST_PUSH_DEL);
    sqlite3_bind_int64(st, 1, id);
    return run(s, st, "deleting a push");
}

static int sq_push_retry(mstore *base_, int64_t id, const char *user, uint32_t attempts, int64_t next_ms)
{
    sqs *s = (sqs *)base_;
    int rc = ensure_tx(s);
    if (rc) return rc;
    sqlite3_stmt *st = stmt(s, ST_PUSH_RETRY);
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int64(st, 2, attempts);
    sqlite3_bind_int64(st, 3, next_ms);
    rc = run(s, st, "rescheduling a push");
    if (rc) return rc;
    st = stmt(s, ST_PUSH_RETRY_AFTER);
    bind_text(st, 1, user);
    sqlite3_bind_int64(st, 2, id);
    sqlite3_bind_int64(st, 3, next_ms);
    return run(s, st, "rescheduling pushes");
}

static int sq_notif_list(mstore *base_, const char *user, int64_t since, unsigned limit, int64_t now_ms,
                      mstore_notif_fn fn, void *arg)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_NOTIF_LIST);
    bind_text(st, 1, user);
    sqlite3_bind_int64(st, 2, since);
    sqlite3_bind_int64(st, 3, now_ms);
    sqlite3_bind_int64(st, 4, limit);
    msg_notification *n = malloc(sizeof *n);
    int rc, ret = n ? 0 : PARLEY_ENOMEM;
    while (ret == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        ret = read_notif(s, st, n);
        if (ret == 0) ret = fn(n, arg);
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = db_err(s, "listing notifications");
    done(st);
    free(n);
    return ret;
}

static int64_t sq_notif_unread(mstore *base_, const char *user, int64_t now_ms)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_NOTIF_UNREAD);
    bind_text(st, 1, user);
    sqlite3_bind_int64(st, 2, now_ms);
    int64_t ret = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0)
                                                 : db_err(s, "counting unread notifications");
    done(st);
    return ret;
}

static int sq_notif_delivered(mstore *base_, const char *user, int64_t after, int64_t upto)
{
    sqs *s = (sqs *)base_;
    int rc = ensure_tx(s);
    if (rc) return rc;
    sqlite3_stmt *st = stmt(s, ST_NOTIF_DELIVER_RANGE);
    bind_text(st, 1, user);
    sqlite3_bind_int64(st, 2, after);
    sqlite3_bind_int64(st, 3, upto);
    return run(s, st, "marking notifications delivered");
}

static int sq_notif_read(mstore *base_, const char *user, const int64_t *ids, size_t n, bool all,
                      int64_t now_ms, unsigned *changed)
{
    sqs *s = (sqs *)base_;
    *changed = 0;
    int rc = ensure_tx(s);
    if (rc) return rc;
    for (size_t i = 0; rc == 0 && (all ? i < 1 : i < n); i++) {
        sqlite3_stmt *st = stmt(s, all ? ST_NOTIF_READ_ALL : ST_NOTIF_READ_ONE);
        int k = 1;
        if (!all) sqlite3_bind_int64(st, k++, ids[i]);
        bind_text(st, k++, user);
        sqlite3_bind_int64(st, k, now_ms);
        rc = run(s, st, "marking notifications read");
        if (rc == 0) *changed += (unsigned)sqlite3_changes(s->db);
    }
    return rc;
}

static int sq_notif_sweep(mstore *base_, int64_t now_ms, mstore_user_list_fn fn, void *arg)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_NOTIF_EXPIRED_USERS);
    sqlite3_bind_int64(st, 1, now_ms);
    char user[MSG_USER_MAX + 1];
    int rc, ret = 0;
    while (ret == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!col_cstr(st, 0, user, MSG_USER_MAX, false, 1)) continue;
        ret = fn(user, arg);
    }
    if (ret == 0 && rc != SQLITE_DONE) ret = db_err(s, "listing expired notifications");
    done(st);
    if (ret) return ret;
    if ((ret = ensure_tx(s))) return ret;
    st = stmt(s, ST_NOTIF_SWEEP);
    sqlite3_bind_int64(st, 1, now_ms);
    return run(s, st, "deleting expired notifications");
}

static int64_t sq_notif_next_expiry(mstore *base_)
{
    sqs *s = (sqs *)base_;
    sqlite3_stmt *st = stmt(s, ST_NOTIF_NEXT_EXPIRY);
    int rc = sqlite3_step(st);
    int64_t ret = -1;
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_INTEGER)
        ret = sqlite3_column_int64(st, 0);
    else if (rc != SQLITE_ROW)
        ret = db_err(s, "finding the next expiry") - 1; /* below -1: an error */
    done(st);
    return ret;
}

static int sq_nprefs_get(mstore *base_, const char *user, pbuf *out)
{
    sqs *s = (sqs *)base_;
    out->len = 0;
    sqlite3_stmt *st = stmt(s, ST_NPREFS_GET);
    bind_text(st, 1, user);
    int rc = sqlite3_step(st), ret = 0;
    if (rc == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        int n = sqlite3_column_bytes(st, 0);
        if (!v || n <= 0)
            ret = PARLEY_EIO;
        else
            ret = pbuf_append(out, v, (size_t)n) == 0 ? 1 : PARLEY_ENOMEM;
    } else if (rc != SQLITE_DONE) {
        ret = db_err(s, "reading notification preferences");
    }
    done(st);
    return ret;
}

static int sq_nprefs_set(mstore *base_, const char *user, const char *json, size_t len)
{
    sqs *s = (sqs *)base_;
    int rc = ensure_tx(s);
    if (rc) return rc;
    if (len > INT_MAX) return PARLEY_EINVAL;
    sqlite3_stmt *st = stmt(s, ST_NPREFS_SET);
    bind_text(st, 1, user);
    sqlite3_bind_text(st, 2, json, (int)len, SQLITE_STATIC);
    return run(s, st, "storing notification preferences");
}

/* ---- the interface ---- */

static const mstore_ops sqlite_ops = {
    .name = "sqlite",
    .close = sq_close,
    .in_batch = sq_in_batch,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .commits = sq_commits,
    .batch_writes = sq_batch_writes,
    .ping = sq_ping,
    .find = sq_find,
    .insert = sq_insert,
    .last_seq = sq_last_seq,
    .is_participant = sq_is_participant,
    .conv_exists = sq_conv_exists,
    .receipt = sq_receipt,
    .join = sq_join,
    .leave = sq_leave,
    .participants = sq_participants,
    .user_convs = sq_user_convs,
    .messages_after = sq_messages_after,
    .messages_before = sq_messages_before,
    .media_put = sq_media_put,
    .media_for = sq_media_for,
    .usage_day = sq_usage_day,
    .usage_add_upload = sq_usage_add_upload,
    .storage_bytes = sq_storage_bytes,
    .set_storage_quota = sq_set_storage_quota,
    .user_rooms = sq_user_rooms,
    .contact = sq_contact,
    .presence_get = sq_presence_get,
    .presence_seen = sq_presence_seen,
    .presence_text = sq_presence_text,
    .presence_invisible = sq_presence_invisible,
    .presence_set_invisible = sq_presence_set_invisible,
    .notif_insert = sq_notif_insert,
    .notif_list = sq_notif_list,
    .notif_unread = sq_notif_unread,
    .notif_delivered = sq_notif_delivered,
    .notif_read = sq_notif_read,
    .notif_sweep = sq_notif_sweep,
    .notif_next_expiry = sq_notif_next_expiry,
    .nprefs_get = sq_nprefs_get,
    .nprefs_set = sq_nprefs_set,
    .notif_get = sq_notif_get,
    .push_add = sq_push_add,
    .push_count = sq_push_count,
    .push_due = sq_push_due,
    .push_next_due = sq_push_next_due,
    .push_del = sq_push_del,
    .push_retry = sq_push_retry,
};
