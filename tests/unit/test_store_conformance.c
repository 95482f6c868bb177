/* The store's conformance suite: the semantics of services/store/mstore.h
 * checked on every backend. Each test runs on SQLite (a scratch file)
 * and, when PARLEY_TEST_PG_URL names a PostgreSQL database whose role may
 * create databases, on PostgreSQL (a fresh database per test, dropped
 * after). CTest runs it a second time under tests/pg/pg-scratch so that
 * the PostgreSQL backend is always exercised; the SQLite-file specifics
 * (corruption, WAL, quick_check) stay in test_msg_store.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "base/buf.h"
#include "base/util.h"
#include "parley/parley.h"
#include "services/msg_schema.h"
#include "services/store/mstore.h"

#define T0  1767225600000LL
#define NOW T0

/* ---- one store per test, on the backend under test ---- */

static bool g_pg;           /* the group running: PostgreSQL */
static const char *g_pgurl; /* the maintenance URL (PARLEY_TEST_PG_URL) */

typedef struct fixture {
    char dir[64];
    char path[96];
    char db[48];
    char url[512];
} fixture;

/* url with its database name (the last path segment) replaced by db. */
static void pg_url_for(char *out, size_t cap, const char *url, const char *db)
{
    const char *scheme = strstr(url, "://");
    assert_non_null(scheme);
    const char *slash = strchr(scheme + 3, '/');
    size_t head = slash ? (size_t)(slash - url) : strlen(url);
    const char *query = slash ? strchr(slash, '?') : NULL;
    snprintf(out, cap, "%.*s/%s%s", (int)head, url, db, query ? query : "");
}

static PGconn *pg_admin(void)
{
    PGconn *c = PQconnectdb(g_pgurl);
    if (PQstatus(c) != CONNECTION_OK) fail_msg("cannot reach %s: %s", g_pgurl, PQerrorMessage(c));
    return c;
}

static void pg_admin_exec(const char *sql)
{
    PGconn *c = pg_admin();
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) fail_msg("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
}

static void fx_init(fixture *f)
{
    static int n;
    memset(f, 0, sizeof *f);
    if (g_pg) {
        snprintf(f->db, sizeof f->db, "t_%d_%d", (int)getpid(), ++n);
        char sql[96];
        snprintf(sql, sizeof sql, "CREATE DATABASE %s", f->db);
        pg_admin_exec(sql);
        pg_url_for(f->url, sizeof f->url, g_pgurl, f->db);
    } else {
        snprintf(f->dir, sizeof f->dir, "/tmp/conform-test-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->path, sizeof f->path, "%s/m.db", f->dir);
        snprintf(f->url, sizeof f->url, "sqlite:%s", f->path);
    }
}

static mstore *fx_open(fixture *f)
{
    mstore_open_opts o = {.timeout_ms = 10000};
    mstore *st = NULL;
    assert_int_equal(mstore_open_url(f->url, &o, &st), 0);
    assert_non_null(st);
    assert_string_equal(mstore_backend(st), g_pg ? "postgresql" : "sqlite");
    assert_true(mstore_up(st));
    return st;
}

static void fx_free(fixture *f)
{
    if (g_pg) {
        char sql[96];
        snprintf(sql, sizeof sql, "DROP DATABASE %s WITH (FORCE)", f->db);
        pg_admin_exec(sql);
        return;
    }
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 4; i++) {
        char p[128];
        snprintf(p, sizeof p, "%s%s", f->path, suffix[i]);
        unlink(p);
    }
    assert_int_equal(rmdir(f->dir), 0);
}

/* Runs SQL straight on the store's database (the store closed for
 * SQLite, which holds its file exclusively); with want_rows, the rows'
 * first columns joined by ',' into out. */
static void fx_sql(fixture *f, const char *sql, char *out, size_t cap)
{
    if (out) out[0] = 0;
    if (g_pg) {
        PGconn *c = PQconnectdb(f->url);
        assert_int_equal(PQstatus(c), CONNECTION_OK);
        PGresult *r = PQexec(c, sql);
        ExecStatusType es = PQresultStatus(r);
        if (es != PGRES_COMMAND_OK && es != PGRES_TUPLES_OK)
            fail_msg("%s: %s", sql, PQresultErrorMessage(r));
        for (int i = 0; out && es == PGRES_TUPLES_OK && i < PQntuples(r); i++)
            snprintf(out + strlen(out), cap - strlen(out), "%s%s", i ? "," : "",
                     PQgetvalue(r, i, 0));
        PQclear(r);
        PQfinish(c);
        return;
    }
    sqlite3 *db;
    assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
    sqlite3_stmt *q;
    const char *tail = sql;
    while (tail && *tail) {
        assert_int_equal(sqlite3_prepare_v2(db, tail, -1, &q, &tail), SQLITE_OK);
        if (!q) break;
        int rc, i = 0;
        while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
            if (out)
                snprintf(out + strlen(out), cap - strlen(out), "%s%s", i++ ? "," : "",
                         (const char *)sqlite3_column_text(q, 0));
        }
        assert_int_equal(rc, SQLITE_DONE);
        sqlite3_finalize(q);
    }
    sqlite3_close(db);
}

/* ---- messages (from test_msg_store.c) ---- */

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

static void test_dm_sequence_and_find(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    msg_conv ab, ac;
    msg_conv_dm(&ab, "alice", "bob");
    msg_conv_dm(&ac, "carol", "alice");
    assert_int_equal(mstore_conv_exists(st, ab.id), 0);
    assert_int_equal(mstore_last_seq(st, ab.id), 0);
    assert_int_equal(mstore_is_participant(st, ab.id, "alice"), 0);
    assert_false(mstore_in_batch(st));

    mstore_msg m;
    assert_int_equal(put_text(st, &ab, "alice", "c1", &m), 1);
    assert_true(mstore_in_batch(st));
    int64_t id1 = m.m.id;
    assert_true(id1 > 0);
    assert_string_equal(m.m.conversation, "dm:alice:bob");
    assert_string_equal(m.m.from, "alice");
    assert_int_equal(m.m.ts, T0);
    assert_int_equal(put_text(st, &ab, "bob", "c1", &m), 2); /* client ids are per sender */
    assert_true(m.m.id > id1);
    assert_int_equal(put_text(st, &ac, "carol", "x", NULL), 1);
    assert_int_equal(put_text(st, &ab, "alice", "c2", NULL), 3);
    assert_int_equal(mstore_commit(st), 0);
    assert_false(mstore_in_batch(st));
    assert_int_equal(mstore_commits(st), 1);
    assert_int_equal(mstore_is_participant(st, ab.id, "alice"), 1);
    assert_int_equal(mstore_is_participant(st, ab.id, "bob"), 1);
    assert_int_equal(mstore_is_participant(st, ab.id, "carol"), 0);
    assert_int_equal(mstore_conv_exists(st, ab.id), 1);

    assert_int_equal(mstore_find(st, "alice", "c1", &m), 1);
    assert_int_equal(m.m.id, id1);
    assert_int_equal(m.m.seq, 1);
    assert_string_equal(m.m.client_id, "c1");
    assert_int_equal(m.content_len, 16);
    assert_memory_equal(m.content_json, "{\"text\":\"hello\"}", 16);
    assert_int_equal(mstore_find(st, "bob", "c1", &m), 1);
    assert_int_equal(m.m.seq, 2);
    assert_int_equal(mstore_find(st, "carol", "c1", &m), 0);
    /* The same client id from the same sender stores nothing, gives out
     * no seq, and leaves the batch intact. */
    static const char content[] = "{\"text\":\"again\"}";
    assert_int_equal(put_text(st, &ab, "bob", "c7", NULL), 4);
    assert_int_equal(mstore_insert(st, &ab, "alice", "c1", MSG_TEXT, MSG_PRIO_NORMAL, content,
                                   sizeof content - 1, NULL, NULL, T0, &m),
                     MSTORE_DUPLICATE);
    assert_int_equal(mstore_insert(st, &ab, "bob", "c7", MSG_TEXT, MSG_PRIO_NORMAL, content,
                                   sizeof content - 1, NULL, NULL, T0, &m),
                     MSTORE_DUPLICATE);
    assert_true(mstore_in_batch(st));
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_last_seq(st, ab.id), 4);
    assert_int_equal(mstore_find(st, "bob", "c7", &m), 1);
    assert_int_equal(m.m.seq, 4);
    assert_int_equal(mstore_find(st, "alice", "c1", &m), 1);
    assert_memory_equal(m.content_json, "{\"text\":\"hello\"}", 16);
    mstore_close(st);

    /* Reopened: seq continues. */
    st = fx_open(&sc);
    assert_int_equal(mstore_last_seq(st, ab.id), 4);
    assert_int_equal(put_text(st, &ab, "bob", "c9", NULL), 5);
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);
    fx_free(&sc);
}

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

static void test_paging(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    msg_conv c;
    msg_conv_dm(&c, "a", "b");
    for (int i = 0; i < 30; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "m%d", i);
        put_text(st, &c, i % 2 ? "a" : "b", cid, NULL);
    }
    assert_int_equal(mstore_commit(st), 0);
    collected got = {0};
    assert_int_equal(mstore_messages_after(st, c.id, 0, 10, collect, &got), 0);
    assert_int_equal(got.n, 10);
    for (size_t i = 0; i < 10; i++) assert_int_equal(got.seq[i], (int64_t)i + 1);
    memset(&got, 0, sizeof got);
    assert_int_equal(mstore_messages_after(st, c.id, 25, 10, collect, &got), 0);
    assert_int_equal(got.n, 5);
    assert_int_equal(got.seq[0], 26);
    assert_int_equal(got.seq[4], 30);
    assert_string_equal(got.from[4], "a");
    memset(&got, 0, sizeof got);
    assert_int_equal(mstore_messages_after(st, c.id, 30, 10, collect, &got), 0);
    assert_int_equal(got.n, 0);
    /* Newest first in selection, ascending in delivery. */
    memset(&got, 0, sizeof got);
    assert_int_equal(mstore_messages_before(st, c.id, 0, 4, collect, &got), 0);
    assert_int_equal(got.n, 4);
    assert_int_equal(got.seq[0], 27);
    assert_int_equal(got.seq[3], 30);
    memset(&got, 0, sizeof got);
    assert_int_equal(mstore_messages_before(st, c.id, 3, 50, collect, &got), 0);
    assert_int_equal(got.n, 2);
    assert_int_equal(got.seq[0], 1);
    assert_int_equal(got.seq[1], 2);
    /* A callback can stop the iteration with its own value. */
    memset(&got, 0, sizeof got);
    got.stop_at = 3;
    assert_int_equal(mstore_messages_after(st, c.id, 0, 50, collect, &got), 7);
    assert_int_equal(got.n, 3);
    mstore_close(st);
    /* Rows that break the rules are refused when read. */
    fx_sql(&sc,
           "INSERT INTO messages(conv, seq, sender, client_id, type, priority, ts, content) "
           "VALUES ('dm:a:b', 31, 'a', 'bad1', 1, 1, 0, 'not json');"
           "INSERT INTO messages(conv, seq, sender, client_id, type, priority, ts, content) "
           "VALUES ('dm:a:b', 32, 'a', 'bad2', 99, 1, 0, '{}');"
           "INSERT INTO messages(conv, seq, sender, client_id, type, priority, ts, content) "
           "VALUES ('dm:a:b', 33, 'a b', 'bad3', 1, 1, 0, '{}');",
           NULL, 0);
    st = fx_open(&sc);
    for (int64_t after = 30; after < 33; after++) {
        memset(&got, 0, sizeof got);
        assert_int_equal(mstore_messages_after(st, c.id, after, 1, collect, &got), PARLEY_EIO);
        assert_int_equal(got.n, 0);
    }
    mstore_msg m;
    assert_int_equal(mstore_find(st, "a", "bad1", &m), PARLEY_EIO);
    mstore_close(st);
    fx_free(&sc);
}

/* ---- rooms and receipts ---- */

typedef struct users {
    char name[8][MSG_USER_MAX + 1];
    int64_t d[8], r[8];
    size_t n;
} users;

static int collect_user(const char *user, int64_t d, int64_t r, void *arg)
{
    users *u = arg;
    assert_true(u->n < 8);
    snprintf(u->name[u->n], sizeof u->name[u->n], "%s", user);
    u->d[u->n] = d;
    u->r[u->n] = r;
    u->n++;
    return 0;
}

typedef struct convs {
    char id[8][MSG_CONV_MAX + 1];
    size_t n;
} convs;

static int collect_conv(const char *conv, void *arg)
{
    convs *c = arg;
    assert_true(c->n < 8);
    snprintf(c->id[c->n++], MSG_CONV_MAX + 1, "%s", conv);
    return 0;
}

static void test_rooms_and_receipts(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    msg_conv room;
    msg_conv_room(&room, "general");
    mstore_msg m;
    static const char content[] = "{\"text\":\"x\"}";
    /* A room must exist before anything is posted in it. */
    assert_int_equal(mstore_insert(st, &room, "amy", "r0", MSG_TEXT, MSG_PRIO_LOW, content,
                                   sizeof content - 1, NULL, NULL, T0, &m),
                     PARLEY_ESTATE);
    bool added = false;
    assert_int_equal(mstore_join(st, "general", "bob", T0, &added), 0);
    assert_true(added);
    assert_int_equal(mstore_join(st, "general", "amy", T0, &added), 0);
    assert_true(added);
    assert_int_equal(mstore_join(st, "general", "amy", T0, &added), 0);
    assert_false(added);
    assert_int_equal(mstore_conv_exists(st, room.id), 1);
    assert_int_equal(put_text(st, &room, "amy", "r1", NULL), 1);
    assert_int_equal(put_text(st, &room, "bob", "r2", NULL), 2);
    assert_int_equal(mstore_commit(st), 0);

    users u = {0};
    assert_int_equal(mstore_participants(st, room.id, collect_user, &u), 0);
    assert_int_equal(u.n, 2);
    assert_string_equal(u.name[0], "amy");
    assert_string_equal(u.name[1], "bob");

    int64_t d, r;
    bool changed;
    assert_int_equal(mstore_receipt(st, room.id, "bob", 1, 0, &d, &r, &changed), 0);
    assert_true(changed);
    assert_int_equal(d, 1);
    assert_int_equal(r, 0);
    /* Watermarks never go back. */
    assert_int_equal(mstore_receipt(st, room.id, "bob", 0, 0, &d, &r, &changed), 0);
    assert_false(changed);
    assert_int_equal(d, 1);
    /* read raises delivered */
    assert_int_equal(mstore_receipt(st, room.id, "bob", 0, 2, &d, &r, &changed), 0);
    assert_true(changed);
    assert_int_equal(d, 2);
    assert_int_equal(r, 2);
    assert_int_equal(mstore_receipt(st, room.id, "bob", 2, 1, &d, &r, &changed), 0);
    assert_false(changed);
    assert_int_equal(r, 2);
    assert_int_equal(mstore_receipt(st, room.id, "zed", 1, 0, &d, &r, &changed), PARLEY_ESTATE);
    assert_int_equal(mstore_commit(st), 0);

    memset(&u, 0, sizeof u);
    assert_int_equal(mstore_participants(st, room.id, collect_user, &u), 0);
    assert_int_equal(u.d[1], 2);
    assert_int_equal(u.r[1], 2);
    assert_int_equal(u.d[0], 0);

    msg_conv dm;
    msg_conv_dm(&dm, "bob", "amy");
    put_text(st, &dm, "bob", "d1", NULL);
    convs cv = {0};
    assert_int_equal(mstore_user_convs(st, "bob", collect_conv, &cv), 0);
    assert_int_equal(cv.n, 2);
    assert_string_equal(cv.id[0], "dm:amy:bob");
    assert_string_equal(cv.id[1], "room:general");

    assert_int_equal(mstore_leave(st, "general", "bob"), 0);
    assert_int_equal(mstore_leave(st, "general", "bob"), PARLEY_ESTATE);
    assert_int_equal(mstore_leave(st, "nowhere", "bob"), PARLEY_ESTATE);
    assert_int_equal(mstore_is_participant(st, room.id, "bob"), 0);
    assert_int_equal(mstore_commit(st), 0);
    memset(&cv, 0, sizeof cv);
    assert_int_equal(mstore_user_convs(st, "bob", collect_conv, &cv), 0);
    assert_int_equal(cv.n, 1);
    /* The room outlives its members: history stays for those who rejoin. */
    assert_int_equal(mstore_leave(st, "general", "amy"), 0);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_conv_exists(st, room.id), 1);
    assert_int_equal(mstore_last_seq(st, room.id), 2);
    assert_int_equal(mstore_join(st, "general", "amy", T0, &added), 0);
    assert_int_equal(put_text(st, &room, "amy", "r3", NULL), 3);
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);
    fx_free(&sc);
}

/* ---- batches ---- */

static void test_rollback(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    msg_conv c;
    msg_conv_dm(&c, "a", "b");
    put_text(st, &c, "a", "keep", NULL);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(put_text(st, &c, "a", "drop1", NULL), 2);
    assert_int_equal(put_text(st, &c, "b", "drop2", NULL), 3);
    bool added;
    assert_int_equal(mstore_join(st, "r", "a", T0, &added), 0);
    mstore_rollback(st);
    assert_false(mstore_in_batch(st));
    mstore_msg m;
    assert_int_equal(mstore_find(st, "a", "drop1", &m), 0);
    assert_int_equal(mstore_find(st, "a", "keep", &m), 1);
    assert_int_equal(mstore_last_seq(st, c.id), 1);
    msg_conv r;
    msg_conv_room(&r, "r");
    assert_int_equal(mstore_conv_exists(st, r.id), 0);
    /* The seq given out in the rolled-back batch is given again. */
    assert_int_equal(put_text(st, &c, "a", "drop1", NULL), 2);
    assert_int_equal(mstore_commit(st), 0);
    /* Commit without a batch is a no-op. */
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_commits(st), 2);
    /* Closing with an open batch rolls it back. */
    put_text(st, &c, "a", "lost", NULL);
    mstore_close(st);
    st = fx_open(&sc);
    assert_int_equal(mstore_find(st, "a", "lost", &m), 0);
    assert_int_equal(mstore_last_seq(st, c.id), 2);
    mstore_close(st);
    fx_free(&sc);
}

/* Readiness probe and the batch's write count (metrics). */
static void test_ping_and_batch_writes(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    assert_int_equal(mstore_ping(st), 0);
    assert_int_equal(mstore_batch_writes(st), 0);
    msg_conv c;
    msg_conv_dm(&c, "a", "b");
    put_text(st, &c, "a", "one", NULL);
    uint32_t one = mstore_batch_writes(st);
    assert_true(one >= 1);
    put_text(st, &c, "a", "two", NULL);
    assert_true(mstore_batch_writes(st) > one);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_batch_writes(st), 0);
    assert_int_equal(mstore_ping(st), 0);
    mstore_close(st);
    fx_free(&sc);
}

/* ---- media ---- */

static void test_media(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    const char *id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    int64_t size = 0;
    char mime[MSG_MIME_MAX + 1];
    assert_int_equal(mstore_media_for(st, id, "amy", &size, mime), 0);
    bool existed = true;
    assert_int_equal(mstore_media_put(st, id, 1234, "image/png", "amy", T0, &existed), 0);
    assert_false(existed);
    assert_int_equal(mstore_media_put(st, id, 1234, "image/png", "bob", T0, &existed), 0);
    assert_true(existed);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_media_for(st, id, "amy", &size, mime), 1);
    assert_int_equal(size, 1234);
    assert_string_equal(mime, "image/png");
    /* Uploaders see it; others only through a conversation. */
    assert_int_equal(mstore_media_for(st, id, "amy", &size, mime), 1);
    assert_int_equal(mstore_media_for(st, id, "bob", &size, mime), 1);
    assert_int_equal(mstore_media_for(st, id, "cat", &size, mime), 0);
    bool added;
    mstore_join(st, "pics", "amy", T0, &added);
    mstore_join(st, "pics", "cat", T0, &added);
    msg_conv room;
    msg_conv_room(&room, "pics");
    static const char content[] = "{\"media\":\"x\"}";
    mstore_msg m;
    assert_int_equal(mstore_insert(st, &room, "amy", "p1", MSG_IMAGE, MSG_PRIO_NORMAL, content,
                                   sizeof content - 1, id, "image/png", T0, &m),
                     0);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_media_for(st, id, "cat", &size, mime), 1);
    assert_int_equal(mstore_media_for(st, id, "dan", &size, mime), 0);
    /* Leaving the room takes the access away. */
    assert_int_equal(mstore_leave(st, "pics", "cat"), 0);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_media_for(st, id, "cat", &size, mime), 0);
    mstore_close(st);
    fx_free(&sc);
}

/* ---- per-upload MIME types (schema 4) ---- */

#define BLOB "aaaabbbbccccddddaaaabbbbccccddddaaaabbbbccccddddaaaabbbbccccdddd"

static void post_media(mstore *st, const msg_conv *c, const char *from, const char *cid,
                       const char *media, const char *mime)
{
    static const char content[] = "{\"media\":\"m\"}";
    mstore_msg m;
    assert_int_equal(mstore_insert(st, c, from, cid, MSG_IMAGE, MSG_PRIO_NORMAL, content,
                                   sizeof content - 1, media, mime, T0, &m),
                     0);
}

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

static void test_media_mime_per_upload(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    /* Unknown media: the same answer as media nobody showed this user. */
    assert_media_for(st, "vic", 0, NULL);
    /* A squatter uploads the victim's bytes first, as a page. */
    bool existed = true;
    assert_int_equal(mstore_media_put(st, BLOB, 777, "text/html", "sam", T0, &existed), 0);
    assert_false(existed);
    assert_int_equal(mstore_media_put(st, BLOB, 777, "image/png", "vic", T0, &existed), 0);
    assert_true(existed);
    assert_int_equal(mstore_commit(st), 0);
    /* Each uploader gets their own type; the first upload no longer
     * decides for everyone. */
    assert_media_for(st, "vic", 1, "image/png");
    assert_media_for(st, "sam", 1, "text/html");
    assert_media_for(st, "tom", 0, NULL);
    int64_t size;
    char mime[MSG_MIME_MAX + 1];
    assert_int_equal(mstore_media_for(st, BLOB + 1, "vic", &size, mime), 0);

    /* The squatter's message carries text/html only in its conversation;
     * the victim's room gets image/png. */
    msg_conv dm, room;
    msg_conv_dm(&dm, "sam", "tom");
    msg_conv_room(&room, "r");
    bool added;
    assert_int_equal(mstore_join(st, "r", "vic", T0, &added), 0);
    assert_int_equal(mstore_join(st, "r", "una", T0, &added), 0);
    assert_int_equal(mstore_join(st, "r", "tom", T0, &added), 0);
    post_media(st, &dm, "sam", "s1", BLOB, "text/html");
    post_media(st, &room, "vic", "v1", BLOB, "image/png");
    /* A later message of another type does not change a conversation's. */
    post_media(st, &dm, "tom", "t1", BLOB, "image/gif");
    assert_int_equal(mstore_commit(st), 0);
    assert_media_for(st, "una", 1, "image/png");
    /* In both: the earliest reference among the user's conversations. */
    assert_media_for(st, "tom", 1, "text/html");
    assert_media_for(st, "zed", 0, NULL);
    mstore_close(st);
    char got[256];
    fx_sql(&sc, "SELECT conv || '=' || mime FROM media_refs ORDER BY conv", got, sizeof got);
    assert_string_equal(got, "dm:sam:tom=text/html,room:r=image/png");
    st = fx_open(&sc);
    /* Leaving takes the room's type (and access) away. */
    assert_int_equal(mstore_leave(st, "r", "una"), 0);
    assert_media_for(st, "una", 0, NULL);
    /* An uploader's own type wins over references, and a re-upload by the
     * same user with another type replaces theirs only. */
    assert_int_equal(mstore_media_put(st, BLOB, 777, "image/webp", "vic", T0, &existed), 0);
    assert_true(existed);
    assert_media_for(st, "vic", 1, "image/webp");
    assert_media_for(st, "sam", 1, "text/html");
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);
    st = fx_open(&sc);
    assert_media_for(st, "vic", 1, "image/webp");
    assert_media_for(st, "tom", 1, "text/html");
    /* A media message needs the type it carries. */
    mstore_msg m;
    assert_int_equal(mstore_insert(st, &dm, "sam", "s2", MSG_IMAGE, MSG_PRIO_NORMAL, "{}", 2, BLOB,
                                   NULL, T0, &m),
                     PARLEY_EINVAL);
    assert_int_equal(mstore_insert(st, &dm, "sam", "s2", MSG_IMAGE, MSG_PRIO_NORMAL, "{}", 2, BLOB,
                                   "not a type", T0, &m),
                     PARLEY_EINVAL);
    mstore_close(st);
    fx_free(&sc);
}

/* ---- usage ---- */

static void assert_day(mstore *st, const char *user, int64_t day, int64_t n, int64_t b)
{
    int64_t uploads = -1, bytes = -1;
    assert_int_equal(mstore_usage_day(st, user, day, &uploads, &bytes), 0);
    assert_int_equal(uploads, n);
    assert_int_equal(bytes, b);
}

static void test_usage_days(void **state)
{
    (void)state;
    assert_int_equal(mstore_utc_day(0), 0);
    assert_int_equal(mstore_utc_day(86399999), 0);
    assert_int_equal(mstore_utc_day(86400000), 1);
    assert_int_equal(mstore_utc_day(-1), -1);
    assert_int_equal(mstore_utc_day(-86400000), -1);
    assert_int_equal(mstore_utc_day(-86400001), -2);
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    int64_t d = mstore_utc_day(T0);
    assert_day(st, "amy", d, 0, 0);
    assert_int_equal(mstore_usage_add_upload(st, "amy", d, 100), 0);
    assert_true(mstore_in_batch(st));
    assert_int_equal(mstore_usage_add_upload(st, "amy", d, 50), 0);
    assert_int_equal(mstore_usage_add_upload(st, "bob", d, 7), 0);
    assert_day(st, "amy", d, 2, 150); /* the batch's own writes */
    assert_int_equal(mstore_commit(st), 0);
    assert_day(st, "amy", d, 2, 150);
    assert_day(st, "bob", d, 1, 7);
    assert_int_equal(mstore_usage_add_upload(st, "amy", d, -1), PARLEY_EINVAL);
    /* Rolled back: not counted. */
    assert_int_equal(mstore_usage_add_upload(st, "amy", d, 1000), 0);
    mstore_rollback(st);
    assert_day(st, "amy", d, 2, 150);
    /* The next day starts at zero; yesterday stays. */
    assert_int_equal(mstore_usage_add_upload(st, "amy", d + 1, 10), 0);
    assert_int_equal(mstore_commit(st), 0);
    assert_day(st, "amy", d + 1, 1, 10);
    assert_day(st, "amy", d, 2, 150);
    /* Two days on, the first is gone, for everyone. */
    assert_int_equal(mstore_usage_add_upload(st, "cat", d + 2, 1), 0);
    assert_int_equal(mstore_commit(st), 0);
    assert_day(st, "amy", d, 0, 0);
    assert_day(st, "bob", d, 0, 0);
    assert_day(st, "amy", d + 1, 1, 10);
    /* A rolled-back sweep is done again by the next upload. */
    assert_int_equal(mstore_usage_add_upload(st, "cat", d + 3, 1), 0);
    mstore_rollback(st);
    assert_day(st, "amy", d + 1, 1, 10);
    assert_int_equal(mstore_usage_add_upload(st, "cat", d + 3, 1), 0);
    assert_int_equal(mstore_commit(st), 0);
    assert_day(st, "amy", d + 1, 0, 0);
    assert_day(st, "cat", d + 2, 1, 1);
    assert_day(st, "cat", d + 3, 1, 1);
    mstore_close(st);
    /* Kept across a restart. */
    st = fx_open(&sc);
    assert_day(st, "cat", d + 3, 1, 1);
    mstore_close(st);
    fx_free(&sc);
}

static int64_t stored(mstore *st, const char *user)
{
    int64_t b = -1;
    assert_int_equal(mstore_storage_bytes(st, user, &b), 0);
    return b;
}

static void test_storage_bytes(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    const int64_t text = 16 + MSTORE_MSG_OVERHEAD; /* put_text's message */
    int64_t b = 0;
    assert_int_equal(mstore_storage_bytes(st, "", &b), PARLEY_EINVAL);
    assert_int_equal(stored(st, "amy"), 0);
    msg_conv c;
    msg_conv_dm(&c, "amy", "bob");
    put_text(st, &c, "amy", "a1", NULL);
    put_text(st, &c, "amy", "a2", NULL);
    put_text(st, &c, "bob", "b1", NULL);
    assert_int_equal(stored(st, "amy"), 2 * text); /* before the commit */
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(stored(st, "amy"), 2 * text);
    assert_int_equal(stored(st, "bob"), text);
    /* Duplicates and refused messages store nothing. */
    mstore_msg m;
    assert_int_equal(
        mstore_insert(st, &c, "amy", "a1", MSG_TEXT, MSG_PRIO_NORMAL, "{}", 2, NULL, NULL, T0, &m),
        MSTORE_DUPLICATE);
    msg_conv room;
    msg_conv_room(&room, "nowhere");
    assert_int_equal(mstore_insert(st, &room, "amy", "a9", MSG_TEXT, MSG_PRIO_NORMAL, "{}", 2, NULL,
                                   NULL, T0, &m),
                     PARLEY_ESTATE);
    assert_int_equal(stored(st, "amy"), 2 * text);
    /* A blob counts once per user who uploaded it. */
    bool existed;
    assert_int_equal(mstore_media_put(st, BLOB, 777, "image/png", "amy", T0, &existed), 0);
    assert_int_equal(mstore_media_put(st, BLOB, 777, "image/gif", "amy", T0, &existed), 0);
    assert_int_equal(mstore_media_put(st, BLOB, 777, "image/png", "bob", T0, &existed), 0);
    assert_int_equal(stored(st, "amy"), 2 * text + 777);
    assert_int_equal(stored(st, "bob"), text + 777);
    assert_int_equal(mstore_commit(st), 0);
    /* Rolled back: the batch's bytes go, committed ones stay, and the
     * store goes on counting from there. */
    put_text(st, &c, "amy", "a3", NULL);
    put_text(st, &c, "cat-never", "x", NULL); /* not a participant: the store does not check */
    assert_int_equal(mstore_media_put(st, BLOB, 777, "image/png", "dan", T0, &existed), 0);
    assert_int_equal(stored(st, "amy"), 3 * text + 777);
    assert_int_equal(stored(st, "dan"), 777);
    mstore_rollback(st);
    assert_int_equal(stored(st, "amy"), 2 * text + 777);
    assert_int_equal(stored(st, "dan"), 0);
    assert_int_equal(stored(st, "cat-never"), 0);
    assert_int_equal(stored(st, "bob"), text + 777);
    put_text(st, &c, "amy", "a3", NULL);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(stored(st, "amy"), 3 * text + 777);
    /* Closing with a batch open drops it. */
    put_text(st, &c, "bob", "b2", NULL);
    mstore_close(st);
    st = fx_open(&sc);
    assert_int_equal(stored(st, "amy"), 3 * text + 777);
    assert_int_equal(stored(st, "bob"), text + 777);
    assert_int_equal(stored(st, "dan"), 0);
    /* One row per user. */
    mstore_close(st);
    char got[64];
    fx_sql(&sc, "SELECT count(*) FROM usage_storage", got, sizeof got);
    assert_string_equal(got, "2");
    st = fx_open(&sc);
    mstore_close(st);
    fx_free(&sc);
}

static void test_user_rooms(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    assert_int_equal(mstore_user_rooms(st, "amy"), 0);
    bool added;
    assert_int_equal(mstore_join(st, "a", "amy", T0, &added), 0);
    assert_int_equal(mstore_join(st, "b", "amy", T0, &added), 0);
    assert_int_equal(mstore_join(st, "b", "bob", T0, &added), 0);
    msg_conv c;
    msg_conv_dm(&c, "amy", "zed");
    put_text(st, &c, "amy", "d1", NULL); /* a DM is not a room */
    msg_conv_dm(&c, "amy", "aaa");       /* sorts before "room:" */
    put_text(st, &c, "amy", "d2", NULL);
    assert_int_equal(mstore_user_rooms(st, "amy"), 2);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_user_rooms(st, "amy"), 2);
    assert_int_equal(mstore_user_rooms(st, "bob"), 1);
    assert_int_equal(mstore_user_rooms(st, "zed"), 0);
    assert_int_equal(mstore_leave(st, "a", "amy"), 0);
    assert_int_equal(mstore_user_rooms(st, "amy"), 1);
    mstore_close(st);
    fx_free(&sc);
}

/* ---- files that are not ours ---- */

/* ---- notifications (from test_notify.c) ---- */

static msg_notification *req(const char *to, const char *title, const char *dedupe, int64_t expires)
{
    msg_notification *n = calloc(1, sizeof *n);
    snprintf(n->to, sizeof n->to, "%s", to);
    n->type = MSG_NT_ALERT;
    n->priority = MSG_PRIO_HIGH;
    snprintf(n->title, sizeof n->title, "%s", title);
    snprintf(n->dedupe, sizeof n->dedupe, "%s", dedupe);
    snprintf(n->from, sizeof n->from, "svc");
    n->expires = expires;
    n->nactions = 1;
    snprintf(n->actions[0].id, sizeof n->actions[0].id, "open");
    snprintf(n->actions[0].label, sizeof n->actions[0].label, "Open");
    return n;
}

typedef struct listed {
    int64_t ids[16];
    bool delivered[16], read[16];
    size_t n;
} listed;

static int collect_notif(const msg_notification *n, void *arg)
{
    listed *l = arg;
    l->ids[l->n] = n->id;
    l->delivered[l->n] = n->delivered;
    l->read[l->n++] = n->read;
    return 0;
}

static int count_user(const char *user, void *arg)
{
    (void)user;
    (*(int *)arg)++;
    return 0;
}

static void test_store(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    assert_int_equal(mstore_notif_next_expiry(st), -1);
    msg_notification *a = req("bob", "a", "k", -1), *b = req("bob", "b", "", NOW + 1000),
                     *c = req("amy", "c", "k", -1);
    assert_int_equal(mstore_notif_insert(st, a, NOW), 0);
    assert_int_equal(mstore_notif_insert(st, b, NOW), 0);
    assert_int_equal(mstore_notif_insert(st, c, NOW), 0); /* dedupe is per recipient */
    assert_true(a->id < b->id && b->id < c->id);
    assert_int_equal(a->created, NOW);
    /* Dedupe: the stored one comes back, nothing written. */
    msg_notification *d = req("bob", "other", "k", -1);
    assert_int_equal(mstore_notif_insert(st, d, NOW), MSTORE_DUPLICATE);
    assert_int_equal(d->id, a->id);
    assert_string_equal(d->title, "a");
    assert_int_equal(d->nactions, 1);
    assert_string_equal(d->actions[0].label, "Open");
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_notif_unread(st, "bob", NOW), 2);
    assert_int_equal(mstore_notif_next_expiry(st), NOW + 1000);
    listed l = {0};
    assert_int_equal(mstore_notif_list(st, "bob", 0, 10, NOW, collect_notif, &l), 0);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.ids[0], a->id);
    /* Expired: neither listed nor counted, before the sweep. */
    memset(&l, 0, sizeof l);
    assert_int_equal(mstore_notif_list(st, "bob", 0, 10, NOW + 1000, collect_notif, &l), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(mstore_notif_unread(st, "bob", NOW + 1000), 1);
    /* since and limit */
    memset(&l, 0, sizeof l);
    assert_int_equal(mstore_notif_list(st, "bob", a->id, 10, NOW, collect_notif, &l), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.ids[0], b->id);
    memset(&l, 0, sizeof l);
    assert_int_equal(mstore_notif_list(st, "bob", 0, 1, NOW, collect_notif, &l), 0);
    assert_int_equal(l.n, 1);
    /* delivered and read */
    assert_int_equal(mstore_notif_delivered(st, "bob", a->id - 1, a->id), 0);
    unsigned changed;
    int64_t ids[3] = {b->id, c->id, 99999};
    assert_int_equal(mstore_notif_read(st, "bob", ids, 3, false, NOW, &changed), 0);
    assert_int_equal(changed, 1); /* c is amy's, 99999 unknown */
    assert_int_equal(mstore_commit(st), 0);
    memset(&l, 0, sizeof l);
    assert_int_equal(mstore_notif_list(st, "bob", 0, 10, NOW, collect_notif, &l), 0);
    assert_true(l.delivered[0] && !l.read[0]);
    assert_true(l.delivered[1] && l.read[1]);
    assert_int_equal(mstore_notif_unread(st, "amy", NOW), 1);
    assert_int_equal(mstore_notif_read(st, "amy", NULL, 0, true, NOW, &changed), 0);
    assert_int_equal(changed, 1);
    assert_int_equal(mstore_notif_unread(st, "amy", NOW), 0);
    /* An expired dedupe key no longer matches. */
    msg_notification *e = req("bob", "e", "x", NOW + 10), *f = req("bob", "f", "x", -1);
    assert_int_equal(mstore_notif_insert(st, e, NOW), 0);
    assert_int_equal(mstore_notif_insert(st, f, NOW + 10), 0);
    assert_true(f->id > e->id);
    /* Sweep: users with unread expired ones are reported (b was read). */
    int nusers = 0;
    assert_int_equal(mstore_notif_sweep(st, NOW + 1000, count_user, &nusers), 0);
    assert_int_equal(nusers, 1);
    assert_int_equal(mstore_notif_next_expiry(st), -1);
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);

    /* Preferences, and everything across reopening. */
    st = fx_open(&sc);
    pbuf p = {0};
    assert_int_equal(mstore_nprefs_get(st, "bob", &p), 0);
    assert_int_equal(mstore_nprefs_set(st, "bob", "{\"in_app\":false}", 16), 0);
    assert_int_equal(mstore_nprefs_set(st, "bob", "{\"push\":false}", 14), 0);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_nprefs_get(st, "bob", &p), 1);
    assert_int_equal(p.len, 14);
    assert_memory_equal(p.ptr, "{\"push\":false}", 14);
    memset(&l, 0, sizeof l);
    assert_int_equal(mstore_notif_list(st, "bob", 0, 10, NOW, collect_notif, &l), 0);
    assert_int_equal(l.n, 2); /* a and f */
    /* New ids never reuse swept ones. */
    msg_notification *g = req("bob", "g", "", -1);
    assert_int_equal(mstore_notif_insert(st, g, NOW), 0);
    assert_true(g->id > f->id);
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);

    /* Rows that break the rules are refused when read. */
    fx_sql(&sc,
           "INSERT INTO notifications(recipient, type, priority, title, "
           "body, actions, created) VALUES ('zed', 99, 1, 't', '', '[]', 1);"
           "INSERT INTO notifications(recipient, type, priority, title, "
           "body, actions, created) VALUES ('yan', 1, 1, 't', '', '[1]', 1);"
           "INSERT INTO notifications(recipient, type, priority, title, "
           "body, actions, created) VALUES ('xia', 1, 1, '', '', '[]', 1);",
           NULL, 0);
    st = fx_open(&sc);
    static const char *const bad[] = {"zed", "yan", "xia"};
    for (int i = 0; i < 3; i++) {
        memset(&l, 0, sizeof l);
        assert_int_equal(mstore_notif_list(st, bad[i], 0, 10, NOW, collect_notif, &l), PARLEY_EIO);
    }
    mstore_close(st);
    pbuf_free(&p);
    free(a);
    free(b);
    free(c);
    free(d);
    free(e);
    free(f);
    free(g);
    fx_free(&sc);
}

/* ---- presence (from test_presence.c) ---- */
static void test_store_presence(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    int64_t seen = 99;
    char text[MSG_PRESENCE_TEXT_MAX + 1] = "junk";
    assert_int_equal(mstore_presence_get(st, "amy", &seen, text), 0);
    assert_int_equal(seen, -1);
    assert_string_equal(text, "");

    /* Text first: last seen stays unknown. */
    assert_int_equal(mstore_presence_text(st, "amy", "hello"), 0);
    assert_true(mstore_in_batch(st));
    assert_int_equal(mstore_presence_get(st, "amy", &seen, text), 1); /* the batch is visible */
    assert_int_equal(seen, -1);
    assert_string_equal(text, "hello");
    assert_int_equal(mstore_commit(st), 0);
    /* Seen: the text stays. */
    assert_int_equal(mstore_presence_seen(st, "amy", 1000), 0);
    assert_int_equal(mstore_presence_seen(st, "amy", 2000), 0);
    assert_int_equal(mstore_presence_seen(st, "bob", 3000), 0);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_presence_get(st, "amy", &seen, text), 1);
    assert_int_equal(seen, 2000);
    assert_string_equal(text, "hello");
    assert_int_equal(mstore_presence_get(st, "bob", &seen, text), 1);
    assert_int_equal(seen, 3000);
    assert_string_equal(text, "");
    /* A rolled-back batch leaves nothing. */
    assert_int_equal(mstore_presence_text(st, "amy", "never"), 0);
    assert_int_equal(mstore_presence_seen(st, "amy", 5000), 0);
    mstore_rollback(st);
    assert_int_equal(mstore_presence_get(st, "amy", &seen, text), 1);
    assert_int_equal(seen, 2000);
    assert_string_equal(text, "hello");
    /* Over the limit: refused before anything is written. */
    char big[MSG_PRESENCE_TEXT_MAX + 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(mstore_presence_text(st, "amy", big), PARLEY_EINVAL);
    assert_false(mstore_in_batch(st));
    assert_int_equal(mstore_presence_text(st, "amy", ""), 0);
    mstore_close(st); /* uncommitted: rolled back */

    st = fx_open(&sc);
    assert_int_equal(mstore_presence_get(st, "amy", &seen, text), 1);
    assert_int_equal(seen, 2000);
    assert_string_equal(text, "hello");
    mstore_close(st);

    /* Rows that break the rules are refused when read. */
    fx_sql(&sc,
           g_pg ? "INSERT INTO presence VALUES ('neg', -1, '');"
                  "INSERT INTO presence VALUES ('long', 1, repeat('x', 129));"
                : "INSERT INTO presence VALUES ('neg', -1, '');"
                  "INSERT INTO presence VALUES ('long', 1, printf('%.*c', 129, 'x'));",
           NULL, 0);
    st = fx_open(&sc);
    assert_int_equal(mstore_presence_get(st, "neg", &seen, text), PARLEY_EIO);
    assert_int_equal(mstore_presence_get(st, "long", &seen, text), PARLEY_EIO);
    assert_int_equal(mstore_presence_get(st, "amy", &seen, text), 1);

    /* Invisible (schema 5): per user, joins the batch, survives a reopen. */
    assert_int_equal(mstore_presence_invisible(st, "amy"), 0);
    assert_int_equal(mstore_presence_set_invisible(st, "amy", true, 7000), 0);
    assert_true(mstore_in_batch(st));
    assert_int_equal(mstore_presence_invisible(st, "amy"), 1);
    assert_int_equal(mstore_presence_set_invisible(st, "amy", true, 8000), 0); /* again: kept */
    assert_int_equal(mstore_presence_invisible(st, "bob"), 0);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_presence_set_invisible(st, "amy", false, 0), 0);
    mstore_rollback(st);
    assert_int_equal(mstore_presence_invisible(st, "amy"), 1);
    mstore_close(st);
    st = fx_open(&sc);
    assert_int_equal(mstore_presence_invisible(st, "amy"), 1);
    assert_int_equal(mstore_presence_set_invisible(st, "amy", false, 0), 0);
    assert_int_equal(mstore_presence_set_invisible(st, "amy", false, 0), 0); /* off twice */
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_presence_invisible(st, "amy"), 0);
    mstore_close(st);
    fx_free(&sc);
}

/* ---- the push outbox (from test_push.c) ---- */

typedef struct rows {
    mstore_push_row r[16];
    unsigned n;
} rows;

static int collect_push(const mstore_push_row *r, void *arg)
{
    rows *x = arg;
    if (x->n == 16) return 1;
    x->r[x->n++] = *r;
    return 0;
}

static void notif(msg_notification *n, msg_ntype type, msg_priority prio, const char *from)
{
    memset(n, 0, sizeof *n);
    n->id = 7;
    snprintf(n->to, sizeof n->to, "bob");
    n->type = type;
    n->priority = prio;
    snprintf(n->title, sizeof n->title, "t");
    snprintf(n->from, sizeof n->from, "%s", from);
    n->expires = -1;
}

static int64_t add_notif(mstore *st, const char *to)
{
    msg_notification n;
    notif(&n, MSG_NT_ALERT, MSG_PRIO_NORMAL, "amy");
    snprintf(n.to, sizeof n.to, "%s", to);
    assert_int_equal(mstore_notif_insert(st, &n, T0), 0);
    return n.id;
}

static void test_outbox(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    assert_int_equal(mstore_push_count(st), 0);
    int64_t n1 = add_notif(st, "bob"), n2 = add_notif(st, "bob"), n3 = add_notif(st, "cat");
    int64_t id1, id2, id3;
    assert_int_equal(mstore_push_add(st, n1, "bob", T0, &id1), 0);
    assert_int_equal(mstore_push_add(st, n2, "bob", T0 + 1, &id2), 0);
    assert_int_equal(mstore_push_add(st, n3, "cat", T0 + 2, &id3), 0);
    assert_true(id1 < id2 && id2 < id3);
    assert_true(mstore_in_batch(st));
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_push_count(st), 3);
    /* Due: each user's oldest row only. */
    rows x = {0};
    assert_int_equal(mstore_push_due(st, T0 + 10, 16, collect_push, &x), 0);
    assert_int_equal(x.n, 2);
    assert_int_equal(x.r[0].id, id1);
    assert_int_equal(x.r[0].notif, n1);
    assert_string_equal(x.r[0].user, "bob");
    assert_int_equal(x.r[0].attempts, 0);
    assert_int_equal(x.r[0].created_ms, T0);
    assert_int_equal(x.r[1].id, id3);
    /* Nothing due before the first row. */
    x.n = 0;
    assert_int_equal(mstore_push_due(st, T0 - 1, 16, collect_push, &x), 0);
    assert_int_equal(x.n, 0);
    assert_int_equal(mstore_push_next_due(st, T0 - 1), T0);
    /* bob's first fails: it and bob's later row wait; cat's goes on. */
    assert_int_equal(mstore_push_retry(st, id1, "bob", 1, T0 + 1000), 0);
    assert_int_equal(mstore_commit(st), 0);
    x.n = 0;
    assert_int_equal(mstore_push_due(st, T0 + 10, 16, collect_push, &x), 0);
    assert_int_equal(x.n, 1);
    assert_int_equal(x.r[0].id, id3);
    assert_int_equal(mstore_push_next_due(st, T0 + 10), T0 + 1000);
    /* A new row of bob's is not due before bob's oldest either. */
    int64_t id4;
    assert_int_equal(mstore_push_add(st, add_notif(st, "bob"), "bob", T0 + 20, &id4), 0);
    assert_int_equal(mstore_commit(st), 0);
    x.n = 0;
    assert_int_equal(mstore_push_due(st, T0 + 30, 16, collect_push, &x), 0);
    assert_int_equal(x.n, 1);
    x.n = 0;
    assert_int_equal(mstore_push_due(st, T0 + 1000, 16, collect_push, &x), 0);
    assert_int_equal(x.n, 2);
    assert_int_equal(x.r[0].id, id3);
    assert_int_equal(x.r[1].id, id1);
    assert_int_equal(x.r[1].attempts, 1);
    /* Delivered: deleted; bob's next row is now his oldest. */
    assert_int_equal(mstore_push_del(st, id1), 0);
    assert_int_equal(mstore_push_del(st, id3), 0);
    assert_int_equal(mstore_commit(st), 0);
    x.n = 0;
    assert_int_equal(mstore_push_due(st, T0 + 1000, 16, collect_push, &x), 0);
    assert_int_equal(x.n, 1);
    assert_int_equal(x.r[0].id, id2);
    assert_int_equal(mstore_push_count(st), 2);
    /* A rolled-back batch takes its rows along. */
    assert_int_equal(mstore_push_add(st, n3, "cat", T0, NULL), 0);
    mstore_rollback(st);
    assert_int_equal(mstore_push_count(st), 2);
    /* The notification by id. */
    msg_notification got;
    assert_int_equal(mstore_notif_get(st, n2, &got), 1);
    assert_string_equal(got.to, "bob");
    assert_int_equal(mstore_notif_get(st, 999, &got), 0);
    /* Ids are never reused, even after the newest row is deleted. */
    assert_int_equal(mstore_push_del(st, id4), 0);
    assert_int_equal(mstore_commit(st), 0);
    int64_t id5;
    assert_int_equal(mstore_push_add(st, n2, "bob", T0, &id5), 0);
    assert_int_equal(mstore_commit(st), 0);
    assert_true(id5 > id4);
    mstore_close(st);
    fx_free(&sc);
}

/* ---- PostgreSQL: several nodes on one database ---- */

static mstore *pg_open_opts(const char *url, uv_loop_t *loop, unsigned timeout_ms)
{
    mstore_open_opts o = {
        .loop = loop, .timeout_ms = timeout_ms, .backoff_ms = 20, .backoff_max_ms = 200};
    mstore *st = NULL;
    assert_int_equal(mstore_open_url(url, &o, &st), 0);
    return st;
}

typedef struct writer {
    const char *url;
    const char *name; /* sender */
    int n, per_batch;
    int stored, failed;
    int64_t seqs[400];
} writer;

static void *write_many(void *arg)
{
    writer *w = arg;
    mstore *st = pg_open_opts(w->url, NULL, 20000);
    msg_conv room;
    msg_conv_room(&room, "busy");
    int pending = 0, base = 0;
    for (int i = 0; i < w->n; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "w%d", i);
        mstore_msg m;
        int rc = mstore_insert(st, &room, w->name, cid, MSG_TEXT, MSG_PRIO_NORMAL,
                               "{\"text\":\"x\"}", 12, NULL, NULL, T0, &m);
        if (rc == 0) w->seqs[base + pending++] = m.m.seq;
        if (pending == w->per_batch || i == w->n - 1) {
            if (mstore_commit(st) == 0) {
                base += pending;
                w->stored += pending;
            } else {
                w->failed += pending;
            }
            pending = 0;
        }
    }
    mstore_close(st);
    return NULL;
}

static int collect_seq(const mstore_msg *m, void *arg)
{
    int64_t *next = arg;
    assert_int_equal(m->m.seq, *next);
    (*next)++;
    return 0;
}

/* Two nodes writing into one conversation: seqs 1..N, no gap, no twice. */
static void test_pg_two_nodes_seq(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    bool added;
    assert_int_equal(mstore_join(st, "busy", "amy", T0, &added), 0);
    assert_int_equal(mstore_join(st, "busy", "bob", T0, &added), 0);
    assert_int_equal(mstore_commit(st), 0);
    writer a = {.url = sc.url, .name = "amy", .n = 300, .per_batch = 7};
    writer b = {.url = sc.url, .name = "bob", .n = 300, .per_batch = 11};
    pthread_t ta, tb;
    uint64_t t0 = ptime_ms();
    assert_int_equal(pthread_create(&ta, NULL, write_many, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, write_many, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    uint64_t ms = ptime_ms() - t0;
    print_message("two nodes: 600 messages into one conversation in %llu ms\n",
                  (unsigned long long)ms);
    assert_int_equal(a.stored + b.stored, 600);
    assert_int_equal(mstore_last_seq(st, "room:busy"), 600);
    int64_t next = 1;
    for (int64_t after = 0; after < 600; after += 200)
        assert_int_equal(mstore_messages_after(st, "room:busy", after, 200, collect_seq, &next), 0);
    assert_int_equal(next, 601);
    /* Each node's own seqs go up (the row lock orders the writers). */
    for (int i = 1; i < a.stored; i++) assert_true(a.seqs[i] > a.seqs[i - 1]);
    for (int i = 1; i < b.stored; i++) assert_true(b.seqs[i] > b.seqs[i - 1]);
    mstore_close(st);
    fx_free(&sc);
}

typedef struct crosser {
    const char *url;
    const char *name;
    bool reverse; /* which of the two rooms first in each pair */
    int stored, failed;
} crosser;

static void *write_crossing(void *arg)
{
    crosser *w = arg;
    mstore *st = pg_open_opts(w->url, NULL, 20000);
    msg_conv r[2];
    msg_conv_room(&r[0], "x");
    msg_conv_room(&r[1], "y");
    for (int i = 0; i < 100; i++) {
        int pending = 0;
        for (int k = 0; k < 4; k++) {
            char cid[32];
            snprintf(cid, sizeof cid, "c%d.%d", i, k);
            mstore_msg m;
            const msg_conv *c = &r[(k & 1) ^ (w->reverse ? 1 : 0)];
            if (mstore_insert(st, c, w->name, cid, MSG_TEXT, MSG_PRIO_NORMAL, "{\"text\":\"x\"}",
                              12, NULL, NULL, T0, &m) == 0)
                pending++;
        }
        if (mstore_commit(st) == 0)
            w->stored += pending;
        else
            w->failed += 4;
    }
    mstore_close(st);
    return NULL;
}

/* Rooms x and y with members amy and bob, committed: the crossing tests'. */
static void join_rooms_xy(mstore *st)
{
    bool added;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(mstore_join(st, i ? "y" : "x", "amy", T0, &added), 0);
        assert_int_equal(mstore_join(st, i ? "y" : "x", "bob", T0, &added), 0);
    }
    assert_int_equal(mstore_commit(st), 0);
}

/* Two nodes whose batches take two conversations in opposite orders (the
 * pattern of a DM whose users are on different nodes): without care this
 * deadlocks in PostgreSQL (one batch lost about every second). A batch
 * that finds a conversation busy commits what it has and waits in a new
 * transaction instead: nothing is lost, both rooms gapless. */
static void test_pg_crossing_batches(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    join_rooms_xy(st);
    crosser a = {.url = sc.url, .name = "amy", .reverse = false};
    crosser b = {.url = sc.url, .name = "bob", .reverse = true};
    pthread_t ta, tb;
    uint64_t t0 = ptime_ms();
    assert_int_equal(pthread_create(&ta, NULL, write_crossing, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, write_crossing, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    print_message("crossing batches: 800 messages in %llu ms\n",
                  (unsigned long long)(ptime_ms() - t0));
    assert_int_equal(a.failed + b.failed, 0);
    assert_int_equal(a.stored + b.stored, 800);
    for (int i = 0; i < 2; i++) {
        const char *conv = i ? "room:y" : "room:x";
        assert_int_equal(mstore_last_seq(st, conv), 400);
        int64_t next = 1;
        for (int64_t after = 0; after < 400; after += 200)
            assert_int_equal(mstore_messages_after(st, conv, after, 200, collect_seq, &next), 0);
        assert_int_equal(next, 401);
    }
    /* Each message's bytes counted once, at its batch's commit. */
    int64_t bytes = 0;
    assert_int_equal(mstore_storage_bytes(st, "amy", &bytes), 0);
    assert_int_equal(bytes, 400 * (12 + MSTORE_MSG_OVERHEAD));
    mstore_close(st);
    fx_free(&sc);
}

/* Waits (at most 10 s) until `want` sessions of the test's database match
 * `where` (a pg_stat_activity condition); with terminate, ends them. */
static void wait_sessions(fixture *f, const char *where, int want, bool terminate)
{
    char sql[512], got[16] = "", want_s[16];
    snprintf(sql, sizeof sql, "SELECT count(%s) FROM pg_stat_activity WHERE datname = '%s' AND %s",
             terminate ? "pg_terminate_backend(pid)" : "*", f->db, where);
    snprintf(want_s, sizeof want_s, "%d", want);
    for (int i = 0; i < 1000 && strcmp(got, want_s) != 0; i++) {
        if (i) usleep(10 * 1000);
        fx_sql(f, sql, got, sizeof got);
    }
    assert_string_equal(got, want_s);
}

/* The racing insert is waiting for a lock node 1 holds. */
static void wait_blocked(fixture *f)
{
    wait_sessions(f, "wait_event_type = 'Lock'", 1, false);
}

typedef struct racer {
    mstore *st;
    const msg_conv *c;
    const char *cid;
    int rc;
    mstore_msg m;
    uint64_t ms;
} racer;

static void *race_insert(void *arg)
{
    racer *r = arg;
    uint64_t t0 = ptime_ms();
    r->rc = mstore_insert(r->st, r->c, "alice", r->cid, MSG_TEXT, MSG_PRIO_NORMAL,
                          "{\"text\":\"node2\"}", 16, NULL, NULL, T0, &r->m);
    r->ms = ptime_ms() - t0;
    return NULL;
}

/* The same (sender, client_id) from two nodes: one stored, the other
 * MSTORE_DUPLICATE without a seq and without losing its batch. */
static void test_pg_duplicate_across_nodes(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *n1 = fx_open(&sc), *n2 = fx_open(&sc);
    msg_conv ab, room;
    msg_conv_dm(&ab, "alice", "bob");
    msg_conv_room(&room, "r");
    bool added;
    assert_int_equal(mstore_join(n2, "r", "alice", T0, &added), 0);
    assert_int_equal(mstore_commit(n2), 0);

    /* Committed on node 1, then node 2: duplicate. */
    mstore_msg m;
    assert_int_equal(put_text(n1, &ab, "alice", "c1", &m), 1);
    assert_int_equal(mstore_commit(n1), 0);
    assert_int_equal(put_text(n2, &room, "alice", "r1", NULL), 1);
    assert_int_equal(mstore_insert(n2, &room, "alice", "c1", MSG_TEXT, MSG_PRIO_NORMAL, "{}", 2,
                                   NULL, NULL, T0, &m),
                     MSTORE_DUPLICATE);
    assert_int_equal(put_text(n2, &room, "alice", "r2", NULL), 2); /* no seq taken, batch alive */
    assert_int_equal(mstore_commit(n2), 0);
    assert_int_equal(mstore_find(n2, "alice", "c1", &m), 1);
    assert_string_equal(m.m.conversation, "dm:alice:bob");

    /* Concurrent, the first one commits: the second waits for it and is
     * a duplicate (another conversation, so the unique index decides). */
    assert_int_equal(put_text(n1, &ab, "alice", "c2", NULL), 2);
    racer r = {.st = n2, .c = &room, .cid = "c2"};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, race_insert, &r), 0);
    wait_blocked(&sc);
    assert_int_equal(mstore_commit(n1), 0);
    pthread_join(t, NULL);
    assert_int_equal(r.rc, MSTORE_DUPLICATE);
    assert_int_equal(mstore_commit(n2), 0);
    assert_int_equal(mstore_last_seq(n2, room.id), 2);
    assert_int_equal(mstore_find(n2, "alice", "c2", &m), 1);
    assert_string_equal(m.m.conversation, "dm:alice:bob");
    assert_memory_equal(m.content_json, "{\"text\":\"hello\"}", 16);

    /* Same conversation: the row lock orders them, same answer. */
    assert_int_equal(put_text(n1, &ab, "alice", "c3", NULL), 3);
    racer r2 = {.st = n2, .c = &ab, .cid = "c3"};
    assert_int_equal(pthread_create(&t, NULL, race_insert, &r2), 0);
    wait_blocked(&sc);
    assert_int_equal(mstore_commit(n1), 0);
    pthread_join(t, NULL);
    assert_int_equal(r2.rc, MSTORE_DUPLICATE);
    assert_int_equal(mstore_commit(n2), 0);
    assert_int_equal(mstore_last_seq(n1, ab.id), 3);

    /* The first one rolls back: the second stores. */
    assert_int_equal(put_text(n1, &ab, "alice", "c4", NULL), 4);
    racer r3 = {.st = n2, .c = &room, .cid = "c4"};
    assert_int_equal(pthread_create(&t, NULL, race_insert, &r3), 0);
    wait_blocked(&sc);
    mstore_rollback(n1);
    pthread_join(t, NULL);
    assert_int_equal(r3.rc, 0);
    assert_int_equal(r3.m.m.seq, 3);
    assert_int_equal(mstore_commit(n2), 0);
    assert_int_equal(mstore_find(n1, "alice", "c4", &m), 1);
    assert_string_equal(m.m.conversation, "room:r");
    assert_memory_equal(m.content_json, "{\"text\":\"node2\"}", 16);
    assert_int_equal(mstore_last_seq(n1, ab.id), 3);
    mstore_close(n1);
    mstore_close(n2);
    fx_free(&sc);
}

/* A batch is one transaction: many writes, one COMMIT; a failure in it
 * loses all of it (nothing visible, no seq consumed), never a part. */
static void test_pg_group_commit(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc), *other = fx_open(&sc);
    msg_conv c;
    msg_conv_dm(&c, "a", "b");
    uint64_t t0 = ptime_ms();
    for (int i = 0; i < 1000; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "g%d", i);
        put_text(st, &c, i % 2 ? "a" : "b", cid, NULL);
    }
    uint64_t ms_insert = ptime_ms() - t0;
    assert_int_equal(mstore_batch_writes(st), 1000);
    /* Not visible to another node before the commit. */
    assert_int_equal(mstore_last_seq(other, c.id), 0);
    assert_int_equal(mstore_commit(st), 0);
    uint64_t ms = ptime_ms() - t0;
    print_message("group commit: 1000 inserts in %llu ms, with the commit %llu ms\n",
                  (unsigned long long)ms_insert, (unsigned long long)ms);
    assert_int_equal(mstore_commits(st), 1);
    assert_int_equal(mstore_last_seq(other, c.id), 1000);

    /* An error inside the batch (content PostgreSQL refuses: not UTF-8)
     * loses the batch: later writes fail, the commit fails. */
    assert_int_equal(put_text(st, &c, "a", "x1", NULL), 1001);
    mstore_msg m;
    assert_int_equal(mstore_insert(st, &c, "a", "x2", MSG_TEXT, MSG_PRIO_NORMAL,
                                   "{\"text\":\"\xff\"}", 12, NULL, NULL, T0, &m),
                     PARLEY_EIO);
    assert_int_equal(
        mstore_insert(st, &c, "a", "x3", MSG_TEXT, MSG_PRIO_NORMAL, "{}", 2, NULL, NULL, T0, &m),
        PARLEY_EIO);
    assert_int_equal(mstore_commit(st), PARLEY_EIO);
    assert_false(mstore_in_batch(st));
    assert_true(mstore_up(st)); /* the connection is fine */
    assert_int_equal(mstore_find(st, "a", "x1", &m), 0);
    assert_int_equal(mstore_last_seq(st, c.id), 1000);
    /* The same when the refused write is the batch's first (its BEGIN
     * goes in the same round trip). */
    assert_int_equal(mstore_insert(st, &c, "a", "x2", MSG_TEXT, MSG_PRIO_NORMAL,
                                   "{\"text\":\"\xff\"}", 12, NULL, NULL, T0, &m),
                     PARLEY_EIO);
    assert_true(mstore_in_batch(st));
    assert_int_equal(
        mstore_insert(st, &c, "a", "x3", MSG_TEXT, MSG_PRIO_NORMAL, "{}", 2, NULL, NULL, T0, &m),
        PARLEY_EIO);
    assert_int_equal(mstore_commit(st), PARLEY_EIO);
    assert_int_equal(put_text(st, &c, "a", "x4", NULL), 1001);
    mstore_rollback(st);

    /* The connection killed before the commit: PARLEY_EIO, nothing kept,
     * and the store is down until it reconnects (here: on the next call
     * after the backoff, there is no loop). */
    assert_int_equal(put_text(st, &c, "a", "y1", NULL), 1001);
    assert_int_equal(put_text(st, &c, "b", "y2", NULL), 1002);
    wait_sessions(&sc, "state LIKE 'idle in transaction%'", 1, true);
    assert_int_equal(mstore_commit(st), PARLEY_EIO);
    assert_false(mstore_in_batch(st));
    assert_false(mstore_up(st));
    uint64_t t1 = ptime_ms();
    assert_int_equal(mstore_ping(st), PARLEY_EIO); /* at once, while down */
    assert_true(ptime_ms() - t1 < 50);
    usleep(300 * 1000); /* past the backoff */
    assert_int_equal(mstore_ping(st), 0);
    assert_true(mstore_up(st));
    assert_int_equal(mstore_find(st, "a", "y1", &m), 0);
    assert_int_equal(mstore_last_seq(st, c.id), 1000);
    assert_int_equal(put_text(st, &c, "a", "y1", NULL), 1001);
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);
    mstore_close(other);
    fx_free(&sc);
}

/* An answer that does not come in timeout_ms (here: waiting for another
 * node's row lock): PARLEY_EIO after about timeout_ms, down, then back. */
static void test_pg_timeout_and_limit(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *n1 = fx_open(&sc), *n2 = pg_open_opts(sc.url, NULL, 500);
    msg_conv c;
    msg_conv_dm(&c, "a", "b");
    put_text(n1, &c, "a", "m1", NULL);
    assert_int_equal(mstore_commit(n1), 0);
    put_text(n1, &c, "a", "m2", NULL); /* holds the conversation's row */
    uint64_t t0 = ptime_ms();
    mstore_msg m;
    assert_int_equal(
        mstore_insert(n2, &c, "b", "m3", MSG_TEXT, MSG_PRIO_NORMAL, "{}", 2, NULL, NULL, T0, &m),
        PARLEY_EIO);
    uint64_t ms = ptime_ms() - t0;
    print_message("blocked insert: PARLEY_EIO after %llu ms (timeout 500)\n",
                  (unsigned long long)ms);
    assert_true(ms >= 450 && ms < 1500);
    assert_false(mstore_up(n2));
    assert_int_equal(mstore_commit(n2), PARLEY_EIO); /* its batch is lost */
    assert_int_equal(mstore_commit(n1), 0);
    usleep(300 * 1000);
    assert_int_equal(mstore_last_seq(n2, c.id), 2);
    assert_true(mstore_up(n2));
    assert_int_equal(mstore_find(n2, "b", "m3", &m), 0);
    /* The last seq there is: PARLEY_ELIMIT, nothing written, the batch
     * intact. */
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO messages(conv, seq, sender, client_id, type, priority, ts, content) "
             "VALUES ('dm:a:b', %lld, 'a', 'fill', 0, 1, 0, '{}')",
             (long long)(MSG_SEQ_MAX - 1));
    fx_sql(&sc, sql, NULL, 0);
    msg_conv room;
    msg_conv_room(&room, "r");
    bool added;
    assert_int_equal(mstore_join(n2, "r", "b", T0, &added), 0);
    assert_int_equal(
        mstore_insert(n2, &c, "b", "x0", MSG_TEXT, MSG_PRIO_NORMAL, "{}", 2, NULL, NULL, T0, &m),
        PARLEY_ELIMIT);
    assert_int_equal(put_text(n2, &room, "b", "x0", NULL), 1);
    assert_int_equal(mstore_commit(n2), 0);
    assert_int_equal(mstore_last_seq(n2, c.id), MSG_SEQ_MAX - 1);
    mstore_close(n1);
    mstore_close(n2);
    fx_free(&sc);
}

static void scratch_cmd(const char *what)
{
    const char *script = getenv("PARLEY_TEST_PG_SCRATCH"), *dir = getenv("PARLEY_TEST_PG_DIR");
    if (!script || !dir) fail_msg("PARLEY_TEST_PG_SCRATCH and PARLEY_TEST_PG_DIR: not set");
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s %s %s >/dev/null", script, what, dir);
    assert_int_equal(system(cmd), 0);
}

/* Runs the loop until the store is up again, at most ms. */
static bool wait_up(uv_loop_t *loop, mstore *st, unsigned ms)
{
    uint64_t end = ptime_ms() + ms;
    while (!mstore_up(st) && ptime_ms() < end) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(10 * 1000);
    }
    return mstore_up(st);
}

/* The database stopped and killed under a running store: bounded
 * PARLEY_EIO, down, then back by itself on the loop. */
static void test_pg_restart(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    fixture sc;
    fx_init(&sc);
    mstore *st = pg_open_opts(sc.url, &loop, 2000);
    msg_conv c;
    msg_conv_dm(&c, "a", "b");
    put_text(st, &c, "a", "m1", NULL);
    assert_int_equal(mstore_commit(st), 0);
    for (int round = 0; round < 2; round++) {
        /* A batch in flight when the database goes away is lost. */
        char cid[16];
        snprintf(cid, sizeof cid, "lost%d", round);
        put_text(st, &c, "a", cid, NULL);
        scratch_cmd(round == 0 ? "stop" : "kill");
        uint64_t t0 = ptime_ms();
        assert_int_equal(mstore_commit(st), PARLEY_EIO);
        uint64_t ms = ptime_ms() - t0;
        print_message("%s: commit failed in %llu ms\n", round ? "killed" : "stopped",
                      (unsigned long long)ms);
        assert_true(ms < 2500);
        assert_false(mstore_up(st));
        t0 = ptime_ms();
        assert_true(mstore_last_seq(st, c.id) < 0);
        assert_int_equal(mstore_ping(st), PARLEY_EIO);
        mstore_msg m;
        assert_int_equal(
            mstore_insert(st, &c, "a", "z", MSG_TEXT, MSG_PRIO_NORMAL, "{}", 2, NULL, NULL, T0, &m),
            PARLEY_EIO);
        assert_true(ptime_ms() - t0 < 50);
        /* Still down: reconnect attempts fail and back off. */
        assert_false(wait_up(&loop, st, 300));
        scratch_cmd("start");
        t0 = ptime_ms();
        assert_true(wait_up(&loop, st, 20000));
        print_message("back up %llu ms after the restart\n", (unsigned long long)(ptime_ms() - t0));
        assert_int_equal(mstore_find(st, "a", cid, &m), 0);
        assert_int_equal(mstore_last_seq(st, c.id), 1 + round);
        assert_int_equal(put_text(st, &c, "b", cid, NULL), 2 + round);
        assert_int_equal(mstore_commit(st), 0);
    }
    mstore_close(st);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    fx_free(&sc);
}

static void *open_close(void *arg)
{
    mstore_open_opts o = {0};
    mstore *st = NULL;
    intptr_t rc = mstore_open_url(arg, &o, &st);
    mstore_close(st);
    return (void *)rc;
}

/* Nodes starting together migrate once; a newer schema is refused; an
 * unreachable database fails the open at once. */
static void test_pg_migrations(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, open_close, sc.url), 0);
    for (int i = 0; i < 4; i++) {
        void *rc;
        pthread_join(t[i], &rc);
        assert_int_equal((intptr_t)rc, 0);
    }
    char got[64];
    fx_sql(&sc, "SELECT version FROM parley_schema", got, sizeof got);
    assert_string_equal(got, "1");
    mstore *st = fx_open(&sc);
    mstore_close(st);
    fx_sql(&sc, "UPDATE parley_schema SET version = 99", NULL, 0);
    mstore_open_opts o = {0};
    assert_int_equal(mstore_open_url(sc.url, &o, &st), PARLEY_EIO);
    assert_null(st);
    fx_sql(&sc, "UPDATE parley_schema SET version = 1", NULL, 0);
    st = fx_open(&sc);
    mstore_close(st);
    /* Nobody listens there. */
    uint64_t t0 = ptime_ms();
    assert_int_equal(mstore_open_url("postgresql://parley@127.0.0.1:1/postgres", &o, &st),
                     PARLEY_EIO);
    assert_true(ptime_ms() - t0 < 5000);
    fx_free(&sc);
}

/* Content comes back byte for byte, and mstore__db is SQLite's only. */
static void test_pg_content_bytes(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    assert_null(mstore__db(st));
    msg_conv c;
    msg_conv_dm(&c, "a", "b");
    static const char content[] = "{\"text\":\"h\\u00e9 \xc3\xa9 \xf0\x9f\x98\x80 \\\"q\\\"\"}";
    mstore_msg m;
    assert_int_equal(mstore_insert(st, &c, "a", "u1", MSG_TEXT, MSG_PRIO_NORMAL, content,
                                   sizeof content - 1, NULL, NULL, T0, &m),
                     0);
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_find(st, "a", "u1", &m), 1);
    assert_int_equal(m.content_len, sizeof content - 1);
    assert_memory_equal(m.content_json, content, sizeof content - 1);
    /* Over the limits: refused before anything is sent. */
    char big[MSG_CLIENT_ID_MAX + 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(
        mstore_insert(st, &c, "a", big, MSG_TEXT, MSG_PRIO_NORMAL, "{}", 2, NULL, NULL, T0, &m),
        PARLEY_EINVAL);
    assert_false(mstore_in_batch(st));
    mstore_close(st);
    fx_free(&sc);
}

/* ---- asynchronous calls ---- */

typedef struct arec {
    int n;             /* callbacks so far */
    bool in_order;     /* each callback the one expected next */
    int rc[16];
    int64_t seq[16];
    int commit_rc, commit_at, ncommits;
} arec;

typedef struct acall {
    arec *r;
    int idx;
} acall;

static void rec_insert(void *arg, int rc, const mstore_msg *m)
{
    acall *c = arg;
    arec *r = c->r;
    if (c->idx != r->n) r->in_order = false;
    r->rc[r->n] = rc;
    r->seq[r->n] = rc == 0 && m ? m->m.seq : -1;
    if (rc == 0 && (!m || strcmp(m->content_json, "{\"text\":\"async\"}") != 0))
        r->in_order = false;
    r->n++;
}

static void rec_commit(void *arg, int rc)
{
    arec *r = arg;
    r->commit_rc = rc;
    r->commit_at = r->n;
    r->ncommits++;
}

static void put_async(mstore *st, const msg_conv *c, const char *from, const char *cid, acall *a)
{
    mstore_insert_async(st, c, from, cid, MSG_TEXT, MSG_PRIO_NORMAL, "{\"text\":\"async\"}", 16,
                        NULL, NULL, T0, rec_insert, a);
}

/* Callbacks in call order, each insert's before the commit's; the
 * results of mstore_insert; a synchronous call first finishes what is
 * pending. */
static void test_async_calls(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    msg_conv c, room;
    msg_conv_dm(&c, "a", "b");
    msg_conv_room(&room, "nosuch");
    put_text(st, &c, "a", "c0", NULL);
    assert_int_equal(mstore_commit(st), 0);
    mstore_drain(st); /* nothing pending: nothing happens */
    arec r = {.in_order = true, .commit_at = -1};
    acall a[5];
    for (int i = 0; i < 5; i++) a[i] = (acall){&r, i};
    put_async(st, &c, "a", "c1", &a[0]);
    put_async(st, &c, "a", "c0", &a[1]); /* a resend */
    put_async(st, &room, "a", "r1", &a[2]);
    put_async(st, &c, "b", "c2", &a[3]);
    mstore_commit_async(st, rec_commit, &r);
    put_async(st, &c, "a", "c3", &a[4]); /* the next batch */
    /* A synchronous call: every callback has run when it returns. */
    assert_int_equal(mstore_last_seq(st, c.id), 4);
    assert_false(mstore_async_pending(st));
    assert_int_equal(r.n, 5);
    assert_true(r.in_order);
    assert_int_equal(r.ncommits, 1);
    assert_int_equal(r.commit_rc, 0);
    assert_int_equal(r.commit_at, 4);
    int want_rc[5] = {0, MSTORE_DUPLICATE, PARLEY_ESTATE, 0, 0};
    int64_t want_seq[5] = {2, -1, -1, 3, 4};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(r.rc[i], want_rc[i]);
        assert_int_equal(r.seq[i], want_seq[i]);
    }
    assert_true(mstore_in_batch(st));
    assert_int_equal(mstore_commit(st), 0);
    /* The first batch committed apart: a rollback now leaves it. */
    arec r2 = {.in_order = true, .commit_at = -1};
    acall b = {&r2, 0};
    put_async(st, &c, "a", "c4", &b);
    mstore_drain(st);
    assert_int_equal(r2.n, 1);
    assert_int_equal(r2.seq[0], 5);
    mstore_rollback(st);
    assert_int_equal(mstore_last_seq(st, c.id), 4);
    mstore_msg m;
    assert_int_equal(mstore_find(st, "a", "c4", &m), 0);
    assert_int_equal(mstore_find(st, "b", "c2", &m), 1);
    assert_int_equal(m.m.seq, 3);
    /* A commit with nothing to commit answers 0. */
    arec r3 = {.in_order = true, .commit_at = -1};
    mstore_commit_async(st, rec_commit, &r3);
    mstore_drain(st);
    assert_int_equal(r3.ncommits, 1);
    assert_int_equal(r3.commit_rc, 0);
    mstore_close(st);
    fx_free(&sc);
}

/* ---- asynchronous receipts ---- */

typedef struct rrec {
    int n;
    bool in_order;
    int rc[8];
    mstore_receipt_res res[8];
} rrec;

typedef struct rcall {
    rrec *r;
    int idx;
} rcall;

static void rec_receipt(void *arg, int rc, const mstore_receipt_res *res)
{
    rcall *c = arg;
    rrec *r = c->r;
    if (c->idx != r->n) r->in_order = false;
    r->rc[r->n] = rc;
    r->res[r->n] = *res;
    r->n++;
}

/* mstore_receipt_async: the membership, the seq's range and the watermark
 * update in one call; a receipt sees the inserts made before it in the
 * same batch; a stranger learns nothing (not-a-participant before
 * beyond); callbacks in call order with the inserts'. */
static void test_async_receipts(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    msg_conv dm, empty;
    msg_conv_dm(&dm, "amy", "bob");
    msg_conv_dm(&empty, "cat", "dan");
    bool added;
    assert_int_equal(mstore_join(st, "r", "amy", T0, &added), 0);
    for (int i = 0; i < 3; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "d%d", i);
        assert_int_equal(put_text(st, &dm, "amy", cid, NULL), i + 1);
    }
    assert_int_equal(mstore_commit(st), 0);

    rrec r = {.in_order = true};
    rcall rc[8];
    for (int i = 0; i < 8; i++) rc[i] = (rcall){&r, i};
    arec ar = {.in_order = true, .commit_at = -1};
    acall ac = {&ar, 0};
    mstore_receipt_async(st, dm.id, "bob", 2, 0, rec_receipt, &rc[0]);  /* moves */
    mstore_receipt_async(st, dm.id, "bob", 0, 1, rec_receipt, &rc[1]);  /* read 1 */
    mstore_receipt_async(st, dm.id, "bob", 1, 0, rec_receipt, &rc[2]);  /* nothing new */
    mstore_receipt_async(st, dm.id, "bob", 0, 4, rec_receipt, &rc[3]);  /* beyond 3 */
    mstore_receipt_async(st, "room:r", "zed", 0, 99, rec_receipt, &rc[4]); /* a stranger */
    mstore_receipt_async(st, empty.id, "cat", 0, 1, rec_receipt, &rc[5]); /* no messages */
    put_async(st, &dm, "amy", "d3", &ac);                                  /* seq 4 ... */
    mstore_receipt_async(st, dm.id, "bob", 0, 4, rec_receipt, &rc[6]);  /* ... seen at once */
    mstore_commit_async(st, rec_commit, &ar);
    mstore_drain(st);
    assert_false(mstore_async_pending(st));
    assert_int_equal(r.n, 7);
    assert_true(r.in_order);
    assert_int_equal(ar.n, 1);
    assert_int_equal(ar.seq[0], 4);
    assert_int_equal(ar.commit_rc, 0);

    assert_int_equal(r.rc[0], 0);
    assert_true(r.res[0].changed);
    assert_int_equal(r.res[0].delivered, 2);
    assert_int_equal(r.res[0].read, 0);
    assert_int_equal(r.res[0].last, 3);
    assert_int_equal(r.rc[1], 0);
    assert_true(r.res[1].changed);
    assert_int_equal(r.res[1].delivered, 2);
    assert_int_equal(r.res[1].read, 1);
    assert_int_equal(r.rc[2], 0);
    assert_false(r.res[2].changed);
    assert_int_equal(r.res[2].delivered, 2);
    assert_int_equal(r.res[2].read, 1);
    assert_int_equal(r.rc[3], MSTORE_BEYOND);
    assert_int_equal(r.res[3].last, 3);
    assert_int_equal(r.rc[4], PARLEY_ESTATE);
    assert_int_equal(r.rc[5], PARLEY_ESTATE);
    assert_int_equal(r.res[5].last, 0);
    assert_int_equal(r.rc[6], 0);
    assert_true(r.res[6].changed);
    assert_int_equal(r.res[6].delivered, 4);
    assert_int_equal(r.res[6].read, 4);
    assert_int_equal(r.res[6].last, 4);

    /* Stored with the commit: the synchronous call reads them back. */
    int64_t d, rd;
    bool changed;
    assert_int_equal(mstore_receipt(st, dm.id, "bob", 0, 0, &d, &rd, &changed), 0);
    assert_false(changed);
    assert_int_equal(d, 4);
    assert_int_equal(rd, 4);
    assert_int_equal(mstore_receipt(st, dm.id, "amy", 0, 0, &d, &rd, &changed), 0);
    assert_int_equal(d, 0);
    mstore_close(st);
    fx_free(&sc);
}

/* The insert checks a room's membership and the sender's storage quota
 * itself, in this order, before the duplicate; synchronously and
 * pipelined. */
static void test_insert_checks(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    static const char content[] = "{\"text\":\"hello\"}"; /* put_text's */
    const int64_t one = (int64_t)sizeof content - 1 + MSTORE_MSG_OVERHEAD;
    msg_conv room, dm;
    msg_conv_room(&room, "r");
    msg_conv_dm(&dm, "amy", "bob");
    bool added;
    assert_int_equal(mstore_join(st, "r", "amy", T0, &added), 0);
    assert_int_equal(mstore_commit(st), 0);
    mstore_msg m;
    assert_int_equal(mstore_insert(st, &room, "bob", "b1", MSG_TEXT, MSG_PRIO_NORMAL, content,
                                   sizeof content - 1, NULL, NULL, T0, &m),
                     MSTORE_NOT_MEMBER);
    assert_int_equal(put_text(st, &room, "amy", "a1", NULL), 1);
    arec r = {.in_order = true, .commit_at = -1};
    acall a[4] = {{&r, 0}, {&r, 1}, {&r, 2}, {&r, 3}};
    put_async(st, &room, "bob", "b2", &a[0]);
    put_async(st, &room, "amy", "a2", &a[1]);
    mstore_commit_async(st, rec_commit, &r);
    mstore_drain(st);
    assert_int_equal(r.rc[0], MSTORE_NOT_MEMBER);
    assert_int_equal(r.rc[1], 0);
    assert_int_equal(r.seq[1], 2);
    assert_int_equal(r.commit_rc, 0);
    int64_t used = 0;
    assert_int_equal(mstore_storage_bytes(st, "bob", &used), 0);
    assert_int_equal(used, 0);

    /* amy has stored two messages; room for exactly one more. */
    assert_int_equal(mstore_storage_bytes(st, "amy", &used), 0);
    int64_t amy = used;
    mstore_set_storage_quota(st, amy + one);
    assert_int_equal(put_text(st, &dm, "amy", "a3", NULL), 1);
    assert_int_equal(mstore_insert(st, &dm, "amy", "a4", MSG_TEXT, MSG_PRIO_NORMAL, content,
                                   sizeof content - 1, NULL, NULL, T0, &m),
                     MSTORE_OVER_QUOTA);
    /* ... counted with the open batch's, then committed. */
    assert_int_equal(mstore_commit(st), 0);
    assert_int_equal(mstore_insert(st, &dm, "amy", "a4", MSG_TEXT, MSG_PRIO_NORMAL, content,
                                   sizeof content - 1, NULL, NULL, T0, &m),
                     MSTORE_OVER_QUOTA);
    /* The quota comes before the duplicate: a resend is refused too. */
    assert_int_equal(mstore_insert(st, &dm, "amy", "a3", MSG_TEXT, MSG_PRIO_NORMAL, content,
                                   sizeof content - 1, NULL, NULL, T0, &m),
                     MSTORE_OVER_QUOTA);
    assert_int_equal(put_text(st, &dm, "bob", "b3", NULL), 2); /* others go on */
    arec r2 = {.in_order = true, .commit_at = -1};
    acall b[2] = {{&r2, 0}, {&r2, 1}};
    put_async(st, &dm, "amy", "a5", &b[0]);
    put_async(st, &dm, "bob", "b4", &b[1]);
    mstore_commit_async(st, rec_commit, &r2);
    mstore_drain(st);
    assert_int_equal(r2.rc[0], MSTORE_OVER_QUOTA);
    assert_int_equal(r2.rc[1], 0);
    assert_int_equal(r2.seq[1], 3);
    assert_int_equal(r2.commit_rc, 0);
    assert_int_equal(mstore_storage_bytes(st, "amy", &used), 0);
    assert_int_equal(used, amy + one);
    /* No quota: stored again. */
    mstore_set_storage_quota(st, 0);
    assert_int_equal(put_text(st, &dm, "amy", "a4", NULL), 4);
    assert_int_equal(mstore_commit(st), 0);
    mstore_close(st);
    fx_free(&sc);
}

/* ---- PostgreSQL: pipelined inserts ---- */

#define AX_BATCHES 50
#define AX_PER     8

typedef struct axw axw;
typedef struct axcall {
    axw *w;
    int idx, room;
} axcall;

struct axw {
    const char *url, *name;
    bool reverse;
    int n, pending, stored, failed, commits_ok;
    bool in_order, seq_order;
    int64_t last[2];
    axcall calls[AX_BATCHES * AX_PER];
};

static void ax_insert(void *arg, int rc, const mstore_msg *m)
{
    axcall *c = arg;
    axw *w = c->w;
    if (c->idx != w->n) w->in_order = false;
    w->n++;
    if (rc != 0) {
        w->failed++;
        return;
    }
    /* One sender's messages in a conversation: seqs in the order sent. */
    if (m->m.seq <= w->last[c->room]) w->seq_order = false;
    w->last[c->room] = m->m.seq;
    w->pending++;
}

static void ax_commit(void *arg, int rc)
{
    axcall *c = arg; /* the batch's last insert */
    axw *w = c->w;
    if (w->n != c->idx + 1) w->in_order = false;
    if (rc == 0) {
        w->stored += w->pending;
        w->commits_ok++;
    } else {
        w->failed += w->pending;
    }
    w->pending = 0;
}

static void *write_async(void *arg)
{
    axw *w = arg;
    mstore *st = pg_open_opts(w->url, NULL, 20000);
    msg_conv r[2];
    msg_conv_room(&r[0], "x");
    msg_conv_room(&r[1], "y");
    for (int b = 0; b < AX_BATCHES; b++) {
        for (int k = 0; k < AX_PER; k++) {
            int i = b * AX_PER + k;
            char cid[16];
            snprintf(cid, sizeof cid, "a%d", i);
            axcall *c = &w->calls[i];
            *c = (axcall){w, i, (k & 1) ^ (w->reverse ? 1 : 0)};
            mstore_insert_async(st, &r[c->room], w->name, cid, MSG_TEXT, MSG_PRIO_NORMAL,
                                "{\"text\":\"x\"}", 12, NULL, NULL, T0, ax_insert, c);
        }
        mstore_commit_async(st, ax_commit, &w->calls[b * AX_PER + AX_PER - 1]);
        if (b % 5 == 4) mstore_drain(st); /* several batches in flight between */
    }
    mstore_drain(st);
    mstore_close(st);
    return NULL;
}

/* Two nodes pipelining batches that take two conversations in opposite
 * orders: busy answers with later inserts in flight. Nothing is lost,
 * the rooms are gapless, callbacks come in call order and every sender's
 * messages keep their order within a conversation. */
static void test_pg_async_crossing(void **state)
{
    (void)state;
    fixture sc;
    fx_init(&sc);
    mstore *st = fx_open(&sc);
    join_rooms_xy(st);
    static axw a, b;
    a = (axw){.url = sc.url, .name = "amy", .in_order = true, .seq_order = true};
    b = (axw){.url = sc.url, .name = "bob", .reverse = true, .in_order = true, .seq_order = true};
    pthread_t ta, tb;
    uint64_t t0 = ptime_ms();
    assert_int_equal(pthread_create(&ta, NULL, write_async, &a), 0);
    assert_int_equal(pthread_create(&tb, NULL, write_async, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    print_message("pipelined crossing batches: 800 messages in %llu ms\n",
                  (unsigned long long)(ptime_ms() - t0));
    assert_true(a.in_order && b.in_order);
    assert_true(a.seq_order && b.seq_order);
    assert_int_equal(a.failed + b.failed, 0);
    assert_int_equal(a.stored + b.stored, 2 * AX_BATCHES * AX_PER);
    assert_int_equal(a.commits_ok + b.commits_ok, 2 * AX_BATCHES);
    for (int i = 0; i < 2; i++) {
        const char *conv = i ? "room:y" : "room:x";
        assert_int_equal(mstore_last_seq(st, conv), AX_BATCHES * AX_PER);
        int64_t next = 1;
        for (int64_t after = 0; after < AX_BATCHES * AX_PER; after += 200)
            assert_int_equal(mstore_messages_after(st, conv, after, 200, collect_seq, &next), 0);
        assert_int_equal(next, AX_BATCHES * AX_PER + 1);
    }
    int64_t bytes = 0;
    assert_int_equal(mstore_storage_bytes(st, "amy", &bytes), 0);
    assert_int_equal(bytes, AX_BATCHES * AX_PER * (12 + MSTORE_MSG_OVERHEAD));
    mstore_close(st);
    fx_free(&sc);
}

typedef struct kickt {
    mstore *st;
    msg_conv c;
    arec r;
    acall a[4];
    rrec rr;
    rcall rc;
    bool timed_out;
    uv_idle_t wake; /* keeps the loop turning until the calls are made */
    uv_check_t check;
    uv_timer_t guard;
} kickt;

static void kick_commit(void *arg, int rc)
{
    kickt *k = arg;
    rec_commit(&k->r, rc);
    uv_stop(uv_handle_get_loop((uv_handle_t *)&k->guard));
}

/* The receipt answered (after the inserts): commit, from the callback. */
static void kick_receipt(void *arg, int rc, const mstore_receipt_res *res)
{
    kickt *k = PARLEY_CONTAINER_OF(arg, kickt, rc);
    rec_receipt(arg, rc, res);
    mstore_commit_async(k->st, kick_commit, k);
}

/* The calls are made from a check callback, the loop's last phase (as the
 * service's commit is): with nothing else to wake the loop after it,
 * they must still go out. */
static void kick_from_check(uv_check_t *h)
{
    kickt *k = h->data;
    uv_check_stop(h);
    uv_idle_stop(&k->wake);
    for (int i = 0; i < 3; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "q%d", i);
        k->a[i] = (acall){&k->r, i};
        put_async(k->st, &k->c, "amy", cid, &k->a[i]);
    }
    k->rc = (rcall){&k->rr, 0};
    mstore_receipt_async(k->st, k->c.id, "bob", 0, 3, kick_receipt, &k->rc);
}

static void kick_wake(uv_idle_t *h)
{
    (void)h; /* an active idle handle: the poll does not block */
}

/* A test's deadline on its loop: sets the bool in data and stops. */
static void loop_guard(uv_timer_t *t)
{
    *(bool *)t->data = true;
    uv_stop(uv_handle_get_loop((uv_handle_t *)t));
}

/* On a loop, the calls of one iteration are sent together at the next
 * (not one Sync each): inserts and a receipt made from a check callback
 * are answered with no timer or other event to wake the loop, in order;
 * the receipt sees the inserts; a commit made from its callback stores
 * them all. */
static void test_pg_calls_on_the_loop(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    fixture sc;
    fx_init(&sc);
    static kickt k;
    memset(&k, 0, sizeof k);
    k.r = (arec){.in_order = true, .commit_at = -1};
    k.rr = (rrec){.in_order = true};
    k.st = pg_open_opts(sc.url, &loop, 5000);
    msg_conv_dm(&k.c, "amy", "bob");
    assert_int_equal(uv_check_init(&loop, &k.check), 0);
    k.check.data = &k;
    assert_int_equal(uv_check_start(&k.check, kick_from_check), 0);
    assert_int_equal(uv_idle_init(&loop, &k.wake), 0);
    assert_int_equal(uv_idle_start(&k.wake, kick_wake), 0);
    assert_int_equal(uv_timer_init(&loop, &k.guard), 0);
    k.guard.data = &k.timed_out;
    assert_int_equal(uv_timer_start(&k.guard, loop_guard, 10000, 0), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_false(k.timed_out);
    assert_int_equal(k.r.n, 3);
    assert_true(k.r.in_order);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(k.r.rc[i], 0);
        assert_int_equal(k.r.seq[i], i + 1);
    }
    assert_int_equal(k.rr.n, 1);
    assert_int_equal(k.rr.rc[0], 0);
    assert_int_equal(k.rr.res[0].read, 3);
    assert_int_equal(k.r.ncommits, 1);
    assert_int_equal(k.r.commit_rc, 0);
    uv_timer_stop(&k.guard);
    uv_close((uv_handle_t *)&k.guard, NULL);
    uv_close((uv_handle_t *)&k.check, NULL);
    uv_close((uv_handle_t *)&k.wake, NULL);
    mstore_close(k.st);
    mstore *st2 = pg_open_opts(sc.url, NULL, 5000);
    assert_int_equal(mstore_last_seq(st2, k.c.id), 3);
    mstore_close(st2);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    fx_free(&sc);
}

typedef struct busyt {
    mstore *st, *st2;
    arec r;
    int n_at_release;
    bool pending_at_release, released, timed_out;
    uv_timer_t release, guard;
} busyt;

static void busy_commit(void *arg, int rc)
{
    busyt *b = PARLEY_CONTAINER_OF(arg, busyt, r);
    rec_commit(arg, rc);
    uv_stop(uv_handle_get_loop((uv_handle_t *)&b->guard));
}

/* Node 2 commits, from a timer on node 1's loop: node 1 must not be
 * waiting for it inside a call. */
static void busy_release(uv_timer_t *t)
{
    busyt *b = t->data;
    b->n_at_release = b->r.n;
    b->pending_at_release = mstore_async_pending(b->st);
    assert_int_equal(mstore_commit(b->st2), 0);
    b->released = true;
}

/* A batch meets a conversation another node holds: the batch so far is
 * committed early and the busy insert waits in a new transaction, in
 * the pipeline, while the loop goes on (a timer on it makes the other
 * node commit; a store that waited inside the call would time out). */
static void test_pg_busy_retry_on_the_loop(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    fixture sc;
    fx_init(&sc);
    static busyt b;
    memset(&b, 0, sizeof b);
    b.r = (arec){.in_order = true, .commit_at = -1};
    b.st = pg_open_opts(sc.url, &loop, 5000);
    b.st2 = pg_open_opts(sc.url, NULL, 5000);
    join_rooms_xy(b.st2);
    msg_conv x, y;
    msg_conv_room(&x, "x");
    msg_conv_room(&y, "y");
    assert_int_equal(put_text(b.st2, &y, "bob", "b1", NULL), 1); /* node 2 holds y */
    acall a[2] = {{&b.r, 0}, {&b.r, 1}};
    put_async(b.st, &x, "amy", "a1", &a[0]);
    put_async(b.st, &y, "amy", "a2", &a[1]);
    mstore_commit_async(b.st, busy_commit, &b.r);
    assert_int_equal(uv_timer_init(&loop, &b.release), 0);
    b.release.data = &b;
    assert_int_equal(uv_timer_start(&b.release, busy_release, 300, 0), 0);
    assert_int_equal(uv_timer_init(&loop, &b.guard), 0);
    b.guard.data = &b.timed_out;
    assert_int_equal(uv_timer_start(&b.guard, loop_guard, 10000, 0), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_false(b.timed_out);
    assert_true(b.released);
    assert_true(b.pending_at_release); /* the busy insert was still waiting */
    assert_int_equal(b.n_at_release, 1);
    assert_int_equal(b.r.n, 2);
    assert_true(b.r.in_order);
    assert_int_equal(b.r.rc[0], 0);
    assert_int_equal(b.r.seq[0], 1);
    assert_int_equal(b.r.rc[1], 0);
    assert_int_equal(b.r.seq[1], 2); /* after node 2's */
    assert_int_equal(b.r.ncommits, 1);
    assert_int_equal(b.r.commit_rc, 0);
    uv_close((uv_handle_t *)&b.release, NULL);
    uv_close((uv_handle_t *)&b.guard, NULL);
    mstore_close(b.st);
    assert_int_equal(mstore_last_seq(b.st2, y.id), 2);
    assert_int_equal(mstore_last_seq(b.st2, x.id), 1);
    mstore_close(b.st2);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    fx_free(&sc);
}

/* The connection killed with a pipeline in flight: every callback runs,
 * the commit's with PARLEY_EIO, nothing of the batch is stored; the store
 * comes back on the loop. */
static void test_pg_async_killed(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    fixture sc;
    fx_init(&sc);
    mstore *st = pg_open_opts(sc.url, &loop, 5000);
    msg_conv c;
    msg_conv_dm(&c, "a", "b");
    put_text(st, &c, "a", "m0", NULL);
    assert_int_equal(mstore_commit(st), 0);
    mstore *st2 = pg_open_opts(sc.url, NULL, 5000);
    assert_int_equal(put_text(st2, &c, "b", "n0", NULL), 2);
    arec r = {.in_order = true, .commit_at = -1};
    acall a[12];
    for (int i = 0; i < 12; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "k%d", i);
        a[i] = (acall){&r, i};
        put_async(st, &c, "a", cid, &a[i]);
        if (i == 5) mstore_commit_async(st, rec_commit, &r);
    }
    assert_true(mstore_async_pending(st));
    /* Node 1's first insert waits for the conversation node 2 writes:
     * everything after it is in the pipeline, unanswered. */
    wait_sessions(&sc, "wait_event_type = 'Lock'", 1, true);
    mstore_rollback(st2);
    mstore_close(st2);
    /* The answers arrive on the loop: run it until everything is called. */
    uint64_t end = ptime_ms() + 10000;
    while (mstore_async_pending(st) && ptime_ms() < end) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    mstore_drain(st);
    assert_false(mstore_async_pending(st));
    assert_int_equal(r.n, 12);
    assert_true(r.in_order);
    assert_int_equal(r.ncommits, 1);
    assert_int_equal(r.commit_at, 6);
    assert_int_equal(r.commit_rc, PARLEY_EIO);
    for (int i = 0; i < 12; i++) assert_int_equal(r.rc[i], PARLEY_EIO);
    assert_false(mstore_up(st));
    assert_false(mstore_in_batch(st)); /* that batch ended with its commit's PARLEY_EIO */
    assert_true(wait_up(&loop, st, 20000));
    mstore_msg m;
    for (int i = 0; i < 12; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "k%d", i);
        assert_int_equal(mstore_find(st, "a", cid, &m), 0);
    }
    assert_int_equal(mstore_last_seq(st, c.id), 1);
    /* And the pipeline works again. */
    arec r2 = {.in_order = true, .commit_at = -1};
    acall b = {&r2, 0};
    put_async(st, &c, "a", "k0", &b);
    mstore_commit_async(st, rec_commit, &r2);
    end = ptime_ms() + 10000;
    while (mstore_async_pending(st) && ptime_ms() < end) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(r2.n, 1);
    assert_int_equal(r2.rc[0], 0);
    assert_int_equal(r2.seq[0], 2);
    assert_int_equal(r2.commit_rc, 0);
    mstore_close(st);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    fx_free(&sc);
}

/* ---- groups ---- */

static int setup_sqlite(void **state)
{
    (void)state;
    g_pg = false;
    return 0;
}

static int setup_pg(void **state)
{
    (void)state;
    g_pg = true;
    return 0;
}

int main(void)
{
    const struct CMUnitTest common[] = {
        cmocka_unit_test(test_dm_sequence_and_find),
        cmocka_unit_test(test_paging),
        cmocka_unit_test(test_rooms_and_receipts),
        cmocka_unit_test(test_rollback),
        cmocka_unit_test(test_ping_and_batch_writes),
        cmocka_unit_test(test_media),
        cmocka_unit_test(test_media_mime_per_upload),
        cmocka_unit_test(test_usage_days),
        cmocka_unit_test(test_storage_bytes),
        cmocka_unit_test(test_user_rooms),
        cmocka_unit_test(test_store),
        cmocka_unit_test(test_store_presence),
        cmocka_unit_test(test_outbox),
        cmocka_unit_test(test_async_calls),
        cmocka_unit_test(test_async_receipts),
        cmocka_unit_test(test_insert_checks),
    };
    const struct CMUnitTest pg_only[] = {
        cmocka_unit_test(test_pg_content_bytes),
        cmocka_unit_test(test_pg_migrations),
        cmocka_unit_test(test_pg_duplicate_across_nodes),
        cmocka_unit_test(test_pg_two_nodes_seq),
        cmocka_unit_test(test_pg_group_commit),
        cmocka_unit_test(test_pg_timeout_and_limit),
        cmocka_unit_test(test_pg_crossing_batches),
        cmocka_unit_test(test_pg_restart),
        cmocka_unit_test(test_pg_async_crossing),
        cmocka_unit_test(test_pg_async_killed),
        cmocka_unit_test(test_pg_calls_on_the_loop),
        cmocka_unit_test(test_pg_busy_retry_on_the_loop),
    };
    int failed = cmocka_run_group_tests_name("sqlite", common, setup_sqlite, NULL);
    g_pgurl = getenv("PARLEY_TEST_PG_URL");
    if (!g_pgurl || !*g_pgurl) {
        /* Without a database: the SQLite run only (CTest's pg entry sets
         * the URL, and fails when PostgreSQL is missing). */
        if (getenv("PARLEY_TEST_REQUIRE_PG")) {
            fprintf(stderr, "PARLEY_TEST_PG_URL is not set\n");
            return 1;
        }
        return failed;
    }
    failed += cmocka_run_group_tests_name("postgresql", common, setup_pg, NULL);
    failed += cmocka_run_group_tests_name("postgresql only", pg_only, setup_pg, NULL);
    return failed;
}
