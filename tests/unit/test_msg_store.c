/* Unit tests for the messaging store: sequence numbers, idempotency
 * lookups, rooms, receipts, paging, media access and MIME types per
 * upload and conversation, usage counts, batches (commit, rollback, a
 * transaction SQLite abandons), migration from schema 3, foreign, newer
 * and damaged files, and processes killed mid-traffic losing nothing
 * they committed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/util.h"
#include "chop.h"
#include "parley/parley.h"
#include "services/store/mstore.h"

#define T0 1767225600000LL

#include "store_scratch.h"

#define scratch_init(s) scratch_init_tag((s), "mstore")

static int64_t put_text(mstore *st, const msg_conv *c, const char *from, const char *cid,
                        mstore_msg *out)
{
    static const char content[] = "{\"text\":\"hello\"}";
    mstore_msg tmp;
    if (!out) out = &tmp;
    int rc = mstore_insert(st, c, from, cid, MSG_TEXT, MSG_PRIO_NORMAL, content, sizeof content - 1,
                           NULL, NULL, T0, out);
    assert_int_equal(rc, 0);
    return out->m.seq;
}

/* ---- messages ---- */

typedef struct collected {
    int64_t seq[64];
    char from[64][MSG_USER_MAX + 1];
    size_t n;
    size_t stop_at; /* stop the iteration after this many (0: never) */
} collected;

static int collect(const mstore_msg *m, void *arg)
{
    collected *c = arg;
    assert_true(c->n < 64);
    c->seq[c->n] = m->m.seq;
    snprintf(c->from[c->n], sizeof c->from[c->n], "%s", m->m.from);
    c->n++;
    return c->stop_at && c->n == c->stop_at ? 7 : 0;
}

/* ---- rooms and receipts ---- */

typedef struct users {
    char name[8][MSG_USER_MAX + 1];
    int64_t d[8], r[8];
    size_t n;
} users;

typedef struct convs {
    char id[8][MSG_CONV_MAX + 1];
    size_t n;
} convs;

/* ---- batches ---- */

/* A disk that fills up in the middle of a batch: whatever SQLite does
 * with the transaction, the commit either keeps every write that
 * succeeded or reports failure and keeps none, and the store works again
 * once there is room. */
static int count_batch(mstore *st, int n)
{
    int found = 0;
    for (int i = 0; i < n; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "b%d", i);
        mstore_msg m;
        int rc = mstore_find(st, "a", cid, &m);
        assert_true(rc == 0 || rc == 1);
        found += rc;
    }
    return found;
}

static void test_full_disk(void **state)
{
    (void)state;
    scratch sc;
    scratch_init(&sc);
    mstore *st = open_store(sc.path);
    msg_conv c;
    msg_conv_dm(&c, "a", "b");
    put_text(st, &c, "a", "first", NULL);
    assert_int_equal(mstore_commit(st), 0);
    sqlite3 *db = mstore__db(st);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA page_count", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    int pages = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA max_page_count = %d", pages + 3);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);

    char big[3000];
    memset(big, 'x', sizeof big);
    memcpy(big, "{\"text\":\"", 9);
    memcpy(big + sizeof big - 2, "\"}", 2);
    int ok = 0, failed = 0;
    for (int i = 0; i < 40; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "b%d", i);
        mstore_msg m;
        int rc = mstore_insert(st, &c, "a", cid, MSG_TEXT, MSG_PRIO_NORMAL, big, sizeof big, NULL,
                               NULL, T0, &m);
        if (rc == 0 && !failed)
            ok++;
        else if (rc)
            failed++;
    }
    assert_true(ok > 0);
    assert_true(failed > 0);
    int rc = mstore_commit(st);
    assert_false(mstore_in_batch(st));
    int found = count_batch(st, 40);
    if (rc == 0)
        assert_int_equal(found, ok);
    else
        assert_int_equal(found, 0);
    int64_t last = mstore_last_seq(st, c.id);
    assert_int_equal(last, 1 + found);
    /* The stored bytes agree with what was kept. */
    int64_t want = 16 + MSTORE_MSG_OVERHEAD + found * (int64_t)(sizeof big + MSTORE_MSG_OVERHEAD);
    int64_t bytes = -1;
    assert_int_equal(mstore_storage_bytes(st, "a", &bytes), 0);
    assert_int_equal(bytes, want);

    /* Room again: the store carries on with consistent seqs. */
    assert_int_equal(sqlite3_exec(db, "PRAGMA max_page_count = 1000000", NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(put_text(st, &c, "b", "after", NULL), last + 1);
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);
    st = open_store(sc.path);
    assert_int_equal(mstore_last_seq(st, c.id), last + 1);
    assert_int_equal(count_batch(st, 40), found);
    assert_int_equal(mstore_storage_bytes(st, "a", &bytes), 0);
    assert_int_equal(bytes, want);
    mstore_close(st);
    scratch_free(&sc);
}

/* ---- media ---- */

/* ---- per-upload MIME types (schema 4) ---- */

#define BLOB "aaaabbbbccccddddaaaabbbbccccddddaaaabbbbccccddddaaaabbbbccccdddd"

static void assert_media_for(mstore *st, const char *user, int want, const char *want_mime)
{
    int64_t size = -1;
    char mime[MSG_MIME_MAX + 1] = "";
    assert_int_equal(mstore_media_for(st, BLOB, user, &size, mime), want);
    if (want == 1) {
        assert_int_equal(size, 777);
        assert_string_equal(mime, want_mime);
    }
}

/* The schema of version 3, as it was, to check the migration to 4. */
static const char v3_schema[] =
    "CREATE TABLE conversations (id TEXT PRIMARY KEY, kind INTEGER NOT NULL, created_ms INTEGER "
    "NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE participants (conv TEXT NOT NULL, user TEXT NOT NULL, delivered INTEGER NOT "
    "NULL, read INTEGER NOT NULL, joined_ms INTEGER NOT NULL, PRIMARY KEY (conv, user)) WITHOUT "
    "ROWID;"
    "CREATE INDEX participants_by_user ON participants(user, conv);"
    "CREATE TABLE messages (id INTEGER PRIMARY KEY, conv TEXT NOT NULL, seq INTEGER NOT NULL, "
    "sender TEXT NOT NULL, client_id TEXT NOT NULL, type INTEGER NOT NULL, priority INTEGER NOT "
    "NULL, ts INTEGER NOT NULL, content TEXT NOT NULL, UNIQUE (conv, seq), UNIQUE (sender, "
    "client_id));"
    "CREATE TABLE media (id TEXT PRIMARY KEY, size INTEGER NOT NULL, mime TEXT NOT NULL, "
    "created_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE media_uploaders (media TEXT NOT NULL, user TEXT NOT NULL, PRIMARY KEY (media, "
    "user)) WITHOUT ROWID;"
    "CREATE TABLE media_refs (media TEXT NOT NULL, conv TEXT NOT NULL, PRIMARY KEY (media, conv)) "
    "WITHOUT ROWID;"
    "CREATE TABLE presence (user TEXT PRIMARY KEY, last_seen INTEGER, text TEXT NOT NULL) WITHOUT "
    "ROWID;"
    "CREATE TABLE notifications (id INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL, "
    "type INTEGER NOT NULL, priority INTEGER NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL, "
    "image TEXT, actions TEXT NOT NULL, sender TEXT, created INTEGER NOT NULL, expires INTEGER, "
    "dedupe_key TEXT, delivered INTEGER NOT NULL DEFAULT 0, read INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX notifications_by_recipient ON notifications(recipient, id);"
    "CREATE INDEX notifications_by_dedupe ON notifications(recipient, dedupe_key) WHERE "
    "dedupe_key IS NOT NULL;"
    "CREATE INDEX notifications_by_expiry ON notifications(expires) WHERE expires IS NOT NULL;"
    "CREATE TABLE notification_prefs (user TEXT PRIMARY KEY, prefs TEXT NOT NULL) WITHOUT ROWID;"
    "PRAGMA application_id = 1347244871; PRAGMA user_version = 3;";

static int64_t user_version(mstore *st)
{
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(mstore__db(st), "PRAGMA user_version", -1, &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return v;
}

static void test_migration_v3(void **state)
{
    (void)state;
    scratch sc;
    scratch_init(&sc);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(sc.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, v3_schema, NULL, NULL, NULL), SQLITE_OK);
    /* amy uploaded the blob and sent it to bob (2 messages of 13 bytes
     * each: "é" is two bytes and counted as such); cat uploaded it too;
     * dan has a room but no messages. */
    assert_int_equal(
        sqlite3_exec(db,
                     "INSERT INTO conversations VALUES ('dm:amy:bob', 1, 0), ('room:x', 2, 0);"
                     "INSERT INTO participants VALUES ('dm:amy:bob', 'amy', 0, 0, 0), "
                     "('dm:amy:bob', 'bob', 0, 0, 0), ('room:x', 'dan', 0, 0, 0);"
                     "INSERT INTO messages(conv, seq, sender, client_id, type, priority, ts, "
                     "content) VALUES ('dm:amy:bob', 1, 'amy', 'c1', 1, 1, 0, '{\"text\":\"é\"}'), "
                     "('dm:amy:bob', 2, 'amy', 'c2', 2, 1, 0, '{\"media\":\"m\"}');"
                     "INSERT INTO media VALUES ('" BLOB "', 777, 'image/png', 0);"
                     "INSERT INTO media_uploaders VALUES ('" BLOB "', 'amy'), ('" BLOB "', 'cat');"
                     "INSERT INTO media_refs VALUES ('" BLOB "', 'dm:amy:bob');",
                     NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);

    mstore *st = open_store(sc.path);
    assert_int_equal(user_version(st), 6);
    assert_media_for(st, "amy", 1, "image/png");
    assert_media_for(st, "cat", 1, "image/png");
    assert_media_for(st, "bob", 1, "image/png");
    assert_media_for(st, "dan", 0, NULL);
    int64_t bytes = -1;
    assert_int_equal(mstore_storage_bytes(st, "amy", &bytes), 0);
    assert_int_equal(bytes, 13 + 13 + 2 * MSTORE_MSG_OVERHEAD + 777);
    assert_int_equal(mstore_storage_bytes(st, "cat", &bytes), 0);
    assert_int_equal(bytes, 777);
    assert_int_equal(mstore_storage_bytes(st, "bob", &bytes), 0);
    assert_int_equal(bytes, 0);
    assert_int_equal(mstore_user_rooms(st, "dan"), 1);
    /* Migrated data works with the new rules. */
    msg_conv c;
    msg_conv_dm(&c, "amy", "bob");
    mstore_msg m;
    assert_int_equal(mstore_find(st, "amy", "c1", &m), 1);
    assert_int_equal(put_text(st, &c, "bob", "b1", NULL), 3);
    bool existed;
    assert_int_equal(mstore_media_put(st, BLOB, 777, "text/plain", "cat", T0, &existed), 0);
    assert_true(existed);
    assert_int_equal(mstore_commit(st), 0);
    assert_media_for(st, "cat", 1, "text/plain");
    assert_media_for(st, "amy", 1, "image/png");
    assert_int_equal(mstore_storage_bytes(st, "cat", &bytes), 0);
    assert_int_equal(bytes, 777);
    mstore_close(st);
    st = open_store(sc.path);
    assert_int_equal(user_version(st), 6);
    assert_int_equal(mstore_storage_bytes(st, "bob", &bytes), 0);
    assert_int_equal(bytes, 16 + MSTORE_MSG_OVERHEAD);
    mstore_close(st);
    scratch_free(&sc);
}

/* ---- usage ---- */

/* ---- files that are not ours ---- */

static void test_foreign_files(void **state)
{
    (void)state;
    scratch sc;
    scratch_init(&sc);
    mstore *st = NULL;
    assert_int_equal(mstore_open("", false, &st), PARLEY_EINVAL);
    assert_int_equal(mstore_open(NULL, false, &st), PARLEY_EINVAL);
    assert_int_equal(mstore_open("/nonexistent-dir/x/m.db", false, &st), PARLEY_EIO);
    assert_null(st);
    /* Another application's database. */
    sqlite3 *db;
    assert_int_equal(sqlite3_open(sc.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE t(x)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(mstore_open(sc.path, false, &st), PARLEY_EIO);
    assert_null(st);
    unlink(sc.path);
    /* A newer schema version of ours. */
    st = open_store(sc.path);
    mstore_close(st);
    assert_int_equal(sqlite3_open(sc.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(mstore_open(sc.path, false, &st), PARLEY_EIO);
    unlink(sc.path);
    unlink(sc.path);
    /* Not a database at all. */
    FILE *f = fopen(sc.path, "w");
    assert_non_null(f);
    fputs("this is not a database, just some text that is long enough for a header......\n"
          "................................................................................\n",
          f);
    fclose(f);
    assert_int_equal(mstore_open(sc.path, false, &st), PARLEY_EIO);
    unlink(sc.path);
    /* Rows that break the rules are refused when read, not trusted. */
    st = open_store(sc.path);
    msg_conv c;
    msg_conv_dm(&c, "a", "b");
    put_text(st, &c, "a", "ok", NULL);
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);
    assert_int_equal(sqlite3_open(sc.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "INSERT INTO messages(conv, seq, sender, client_id, type, "
                                  "priority, ts, content) VALUES ('dm:a:b', 2, 'a b', 'bad', 1, 1, "
                                  "0, '{}'); INSERT INTO messages(conv, seq, sender, client_id, "
                                  "type, priority, ts, content) VALUES ('dm:a:b', 3, 'a', 'bad2', "
                                  "1, 1, 0, '{\"text\":');",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    st = open_store(sc.path);
    mstore_msg m;
    assert_int_equal(mstore_find(st, "a", "ok", &m), 1);
    assert_int_equal(mstore_find(st, "a b", "bad", &m), PARLEY_EIO);
    assert_int_equal(mstore_find(st, "a", "bad2", &m), PARLEY_EIO);
    collected got = {0};
    assert_int_equal(mstore_messages_after(st, c.id, 0, 10, collect, &got), PARLEY_EIO);
    assert_int_equal(got.n, 1);
    mstore_close(st);
    /* A second store on the same file is refused while the first is open. */
    st = open_store(sc.path);
    mstore *second = NULL;
    assert_int_equal(mstore_open(sc.path, false, &second), PARLEY_EIO);
    assert_null(second);
    mstore_close(st);
    scratch_free(&sc);
}

/* ---- damaged files ---- */

typedef struct logged {
    char last[512]; /* the last warning or error */
    parley_log_level level;
    unsigned n;
} logged;

static void log_sink(parley_log_level level, const char *msg, void *user)
{
    logged *l = user;
    if (level < PARLEY_LOG_WARN) return;
    snprintf(l->last, sizeof l->last, "%s", msg);
    l->level = level;
    l->n++;
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len) assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n > 0);
    rewind(f);
    uint8_t *p = malloc((size_t)n);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* Opens a copy of `data` (len bytes) at path: the result, and the
 * message logged must name the file and contain `what`. */
static void open_copy(const scratch *sc, const void *data, size_t len, int want, const char *what)
{
    char wal[128];
    snprintf(wal, sizeof wal, "%s-wal", sc->path);
    unlink(wal);
    write_file(sc->path, data, len);
    logged l = {0};
    parley_log_set(PARLEY_LOG_INFO, log_sink, &l);
    mstore *st = NULL;
    int rc = mstore_open(sc->path, false, &st);
    parley_log_set(PARLEY_LOG_WARN, NULL, NULL);
    if (rc != want) fail_msg("%s: %d, want %d (%s)", what, rc, want, l.last);
    if (!strstr(l.last, sc->path) || !strstr(l.last, what))
        fail_msg("logged \"%s\", want the file and \"%s\"", l.last, what);
    if (want == 0) {
        assert_non_null(st);
        assert_int_equal(l.level, PARLEY_LOG_WARN);
        assert_int_equal(mstore_last_seq(st, "dm:a:b"), 0); /* a new, empty database */
        assert_int_equal(user_version(st), 6);
        mstore_close(st);
    } else {
        assert_null(st);
        assert_int_equal(l.level, PARLEY_LOG_ERROR);
    }
}

static int collect_none(const mstore_msg *m, void *arg)
{
    (void)m;
    (void)arg;
    return 0;
}

static void test_damaged_files(void **state)
{
    (void)state;
    scratch sc;
    scratch_init(&sc);
    /* A real store, a few hundred pages. */
    mstore *st = open_store(sc.path);
    for (int i = 0; i < 3000; i++) {
        msg_conv c;
        char other[16], cid[16];
        snprintf(other, sizeof other, "u%d", i % 17);
        snprintf(cid, sizeof cid, "c%d", i);
        msg_conv_dm(&c, "me", other);
        put_text(st, &c, "me", cid, NULL);
    }
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);
    size_t len;
    uint8_t *orig = read_file(sc.path, &len);
    const size_t page = 4096;
    assert_int_equal(len % page, 0);
    assert_true(len / page > 40);
    uint8_t *bad = malloc(len);
    assert_non_null(bad);
    uint64_t rng = chop_seed();

    /* Truncated: the header says more pages than there are. */
    open_copy(&sc, orig, len / 2, PARLEY_EIO, "truncated");
    open_copy(&sc, orig, len / 2 + 1000, PARLEY_EIO, "truncated");
    open_copy(&sc, orig, len - page, PARLEY_EIO, "truncated");
    open_copy(&sc, orig, len - 1, PARLEY_EIO, "truncated");
    open_copy(&sc, orig, page, PARLEY_EIO, "truncated");
    open_copy(&sc, orig, 100, PARLEY_EIO, "truncated"); /* the header only */
    open_copy(&sc, orig, 99, PARLEY_EIO, "not an SQLite database");
    /* Not a database at all. */
    for (size_t i = 0; i < len; i++) bad[i] = (uint8_t)test_rand(&rng);
    open_copy(&sc, bad, len, PARLEY_EIO, "not an SQLite database");
    /* A page of junk in the middle, then one in the header page. */
    memcpy(bad, orig, len);
    for (size_t i = 0; i < page; i++) bad[len / page / 2 * page + i] = (uint8_t)test_rand(&rng);
    open_copy(&sc, bad, len, PARLEY_EIO, "damaged");
    memcpy(bad, orig, len);
    for (size_t i = 0; i < page; i++) bad[i] = (uint8_t)test_rand(&rng);
    open_copy(&sc, bad, len, PARLEY_EIO, "not an SQLite database");
    /* A page size the format does not allow. */
    memcpy(bad, orig, len);
    bad[16] = 0x03;
    bad[17] = 0x00;
    open_copy(&sc, bad, len, PARLEY_EIO, "page size");
    /* Another application's database, sound but not ours. */
    unlink(sc.path);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(sc.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "PRAGMA application_id = 42; CREATE TABLE t(x); INSERT INTO t "
                                  "VALUES (randomblob(100000));",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    size_t olen;
    uint8_t *other = read_file(sc.path, &olen);
    open_copy(&sc, other, olen, PARLEY_EIO, "not a messaging database");
    free(other);
    /* Empty: a new database, with a warning. */
    open_copy(&sc, orig, 0, 0, "empty file");
    unlink(sc.path);
    open_copy(&sc, NULL, 0, 0, "empty file");
    /* ... but not over a write-ahead log that holds something: SQLite would
     * delete it. */
    char wal[128];
    snprintf(wal, sizeof wal, "%s-wal", sc.path);
    write_file(sc.path, "", 0);
    write_file(wal, orig, 5000);
    logged l = {0};
    parley_log_set(PARLEY_LOG_INFO, log_sink, &l);
    assert_int_equal(mstore_open(sc.path, false, &st), PARLEY_EIO);
    unlink(sc.path);
    assert_int_equal(mstore_open(sc.path, false, &st), PARLEY_EIO);
    parley_log_set(PARLEY_LOG_WARN, NULL, NULL);
    assert_non_null(strstr(l.last, "write-ahead log"));
    assert_int_equal(access(sc.path, F_OK), -1);
    struct stat sb;
    assert_int_equal(stat(wal, &sb), 0);
    assert_int_equal(sb.st_size, 5000);
    /* A short file with a log that cannot complete it (not a log at all)
     * is left to SQLite and refused by the quick check. */
    write_file(sc.path, orig, len - page);
    write_file(wal, bad, 5000);
    memset(&l, 0, sizeof l);
    parley_log_set(PARLEY_LOG_INFO, log_sink, &l);
    assert_int_equal(mstore_open(sc.path, false, &st), PARLEY_EIO);
    parley_log_set(PARLEY_LOG_WARN, NULL, NULL);
    assert_null(st);
    if (!strstr(l.last, sc.path) || (!strstr(l.last, "damaged") && !strstr(l.last, "malformed")))
        fail_msg("%s", l.last);
    unlink(wal);

    /* A store above the size checked in full: every table but messages
     * (and the schema) still is. */
    mstore__check_max = 0;
    int64_t root_conv = 0, root_msgs = 0;
    write_file(sc.path, orig, len);
    assert_int_equal(sqlite3_open(sc.path, &db), SQLITE_OK);
    sqlite3_stmt *q;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT (SELECT rootpage FROM sqlite_schema WHERE name = "
                                        "'conversations'), (SELECT rootpage FROM sqlite_schema "
                                        "WHERE name = 'messages')",
                                        -1, &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    root_conv = sqlite3_column_int64(q, 0);
    root_msgs = sqlite3_column_int64(q, 1);
    sqlite3_finalize(q);
    sqlite3_close(db);
    assert_true(root_conv > 1 && root_msgs > 1);
    memcpy(bad, orig, len);
    memset(bad + (root_conv - 1) * page, 0x5a, page);
    open_copy(&sc, bad, len, PARLEY_EIO, "damaged");
    memcpy(bad, orig, len);
    memset(bad + (root_msgs - 1) * page, 0x5a, page);
    unlink(wal);
    write_file(sc.path, bad, len);
    memset(&l, 0, sizeof l);
    parley_log_set(PARLEY_LOG_INFO, log_sink, &l);
    assert_int_equal(mstore_open(sc.path, false, &st), 0); /* the price of starting in time */
    parley_log_set(PARLEY_LOG_WARN, NULL, NULL);
    assert_int_equal(l.n, 0);
    assert_int_equal(mstore_messages_after(st, "dm:me:u3", 0, 10, collect_none, NULL), PARLEY_EIO);
    mstore_close(st);
    mstore__check_max = MSTORE_QUICK_CHECK_MAX;

    /* The original is fine. */
    write_file(sc.path, orig, len);
    memset(&l, 0, sizeof l);
    parley_log_set(PARLEY_LOG_INFO, log_sink, &l);
    st = open_store(sc.path);
    parley_log_set(PARLEY_LOG_WARN, NULL, NULL);
    assert_int_equal(l.n, 0);
    msg_conv c;
    msg_conv_dm(&c, "me", "u3");
    assert_int_equal(mstore_last_seq(st, c.id), 3000 / 17 + 1);
    mstore_msg m;
    assert_int_equal(mstore_find(st, "me", "c2999", &m), 1);
    mstore_close(st);
    free(bad);
    free(orig);
    scratch_free(&sc);
}

/* ---- crashes ---- */

/* The child commits batches forever and reports each commit (number of
 * messages committed so far, 4 bytes) on fd; it is killed at a random
 * moment. Messages are numbered globally: message k has client id "k<k>"
 * and goes to conversation k % 5. */
static void crash_child(const char *path, uint32_t start, uint64_t seed, int fd)
{
    mstore *st = NULL;
    if (mstore_open(path, false, &st) != 0) _exit(3);
    uint64_t rng = seed;
    uint32_t k = start;
    static const char content[] = "{\"text\":\"crash test\"}";
    for (;;) {
        uint32_t batch = 1 + (uint32_t)(test_rand(&rng) % 40);
        for (uint32_t i = 0; i < batch; i++, k++) {
            msg_conv c;
            char other[8], cid[16];
            snprintf(other, sizeof other, "u%u", k % 5);
            msg_conv_dm(&c, "me", other);
            snprintf(cid, sizeof cid, "k%u", k);
            mstore_msg m;
            if (mstore_insert(st, &c, "me", cid, MSG_TEXT, MSG_PRIO_NORMAL, content,
                              sizeof content - 1, NULL, NULL, T0 + k, &m) != 0)
                _exit(4);
            int64_t d, r;
            bool changed;
            if (m.m.seq > 1 &&
                mstore_receipt(st, c.id, other, m.m.seq - 1, m.m.seq / 2, &d, &r, &changed) != 0)
                _exit(5);
        }
        if (mstore_commit(st) != 0) _exit(6);
        if (write(fd, &k, sizeof k) != (ssize_t)sizeof k) _exit(7);
    }
}

typedef struct seqcheck {
    int64_t next;
    bool ok;
} seqcheck;

static int check_seq(const mstore_msg *m, void *arg)
{
    seqcheck *c = arg;
    if (m->m.seq != c->next) c->ok = false;
    c->next++;
    return 0;
}

static void test_killed_mid_traffic(void **state)
{
    (void)state;
    scratch sc;
    scratch_init(&sc);
    uint64_t rng = chop_seed() ^ 0x6b696c6cull;
    uint32_t committed = 0;
    for (int round = 0; round < 12; round++) {
        int pfd[2];
        assert_int_equal(pipe(pfd), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(pfd[0]);
            crash_child(sc.path, committed, test_rand(&rng), pfd[1]);
            _exit(99);
        }
        close(pfd[1]);
        /* Let it commit a random number of batches, then kill it wherever
         * it is (usually in the middle of the next batch). */
        uint32_t want = 1 + (uint32_t)(test_rand(&rng) % 20), seen = 0, last = committed;
        while (seen < want) {
            uint32_t v;
            ssize_t n = read(pfd[0], &v, sizeof v);
            if (n < 0 && errno == EINTR) continue;
            assert_int_equal(n, (ssize_t)sizeof v);
            assert_true(v > last);
            last = v;
            seen++;
        }
        uint64_t until = ptime_ns() + test_rand(&rng) % 200000;
        while (ptime_ns() < until) continue;
        assert_int_equal(kill(pid, SIGKILL), 0);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (WIFEXITED(status)) fail_msg("child exited with %d", WEXITSTATUS(status));
        assert_int_equal(WTERMSIG(status), SIGKILL);
        for (;;) {
            uint32_t v;
            ssize_t n = read(pfd[0], &v, sizeof v);
            if (n < 0 && errno == EINTR) continue;
            if (n == 0) break;
            assert_int_equal(n, (ssize_t)sizeof v);
            last = v;
        }
        close(pfd[0]);

        /* Everything reported committed is there; the batch in flight is
         * there whole or not at all; seqs have no gaps. */
        mstore *st = open_store(sc.path);
        mstore_msg m;
        for (uint32_t k = 0; k < last; k++) {
            char cid[16];
            snprintf(cid, sizeof cid, "k%u", k);
            if (mstore_find(st, "me", cid, &m) != 1) fail_msg("round %d: k%u lost", round, k);
        }
        uint32_t total = last;
        for (;;) {
            char cid[16];
            snprintf(cid, sizeof cid, "k%u", total);
            if (mstore_find(st, "me", cid, &m) != 1) break;
            total++;
        }
        for (uint32_t k = total; k < total + 50; k++) {
            char cid[16];
            snprintf(cid, sizeof cid, "k%u", k);
            assert_int_equal(mstore_find(st, "me", cid, &m), 0);
        }
        int64_t sum = 0;
        for (int u = 0; u < 5; u++) {
            msg_conv c;
            char other[16];
            snprintf(other, sizeof other, "u%d", u);
            msg_conv_dm(&c, "me", other);
            int64_t lastseq = mstore_last_seq(st, c.id);
            seqcheck chk = {1, true};
            int64_t from = 0;
            while (from < lastseq) {
                assert_int_equal(mstore_messages_after(st, c.id, from, 1000, check_seq, &chk), 0);
                from = chk.next - 1;
            }
            assert_true(chk.ok);
            sum += lastseq;
        }
        assert_int_equal(sum, (int64_t)total);
        mstore_close(st);
        committed = total;
    }
    assert_true(committed > 12);
    scratch_free(&sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_disk),
        cmocka_unit_test(test_migration_v3),
        cmocka_unit_test(test_foreign_files),
        cmocka_unit_test(test_damaged_files),
        cmocka_unit_test(test_killed_mid_traffic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
