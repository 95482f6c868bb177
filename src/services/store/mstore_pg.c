/*
 * The PostgreSQL backend of the message store (mstore.h), shared by every
 * node of a cluster.
 *
 * Connection: one libpq connection in non-blocking mode. A synchronous
 * call sends its prepared statement (PQflush until everything is out)
 * and waits for the answer with poll() on the socket, at most
 * timeout_ms, after the pending asynchronous calls (mstore_insert_async,
 * mstore_commit_async: pipelined, "the pipeline" below). A timeout or a broken connection marks the store
 * down: the connection is dropped, the call and every later one return
 * PARLEY_EIO at once, and a reconnect runs in the background on the loop
 * (PQconnectStart / PQconnectPoll driven by a uv_poll_t, a uv_timer_t for
 * the exponential backoff with jitter and for the attempt's deadline).
 * Without a loop (tests, tools) the next call after the backoff delay
 * reconnects synchronously. After reconnecting the statements are
 * prepared again. A batch open when the connection broke is lost: its
 * writes fail, its commit returns PARLEY_EIO and rolls it back.
 *
 * Batches: the first write sends BEGIN, later writes join; mstore_commit
 * sends COMMIT. Any error inside the transaction aborts it in PostgreSQL:
 * the batch is then lost (like SQLite's abandoned transaction) and its
 * commit reports PARLEY_EIO, so nothing in it is acknowledged. Serialization
 * failures and deadlocks between nodes end that way too.
 *
 * Nothing mutable is cached in memory (other nodes write too): seq is
 * the conversation's highest stored seq + 1, read under a transaction-
 * scoped advisory lock on the conversation that serialises its writers on
 * every node until their commit (gapless, unique; parley_insert's comment
 * says how batches avoid deadlocks). The bytes each user stores are
 * counted in memory during a batch and added to usage_storage just
 * before its COMMIT, one row per user in user order (no lock held from a
 * message to the commit, none taken out of order). A message costs one
 * round trip: the function parley_insert (installed by the migration)
 * creates a DM, checks a room's membership and the storage quota, takes
 * the seq, inserts with ON CONFLICT (sender, client_id) DO NOTHING, and
 * records the media reference; a receipt is one call of parley_receipt. A concurrent insert of the same (sender, client_id) by
 * another node waits for that node's transaction on the unique index:
 * committed, it is MSTORE_DUPLICATE (no seq taken, the batch intact) and
 * mstore_find returns the stored message; rolled back, the insert goes on.
 *
 * Schema: parley_schema(version); migrations run at open in one
 * transaction under pg_advisory_xact_lock, so nodes starting together
 * take turns; a newer version than this code knows is refused.
 */
#include "services/store/mstore_backend.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/buf.h"
#include "base/log.h"
#include "base/ratelimit.h"
#include "base/util.h"
#include "codec/json.h"
#include "parley/parley.h"

#define PG_SCHEMA_VERSION 1
#define PG_LOCK_KEY       "344894687056" /* 0x504d534750, "PMSGP": the migration lock */

enum {
    ST_FIND,
    ST_CONV_GET,
    ST_INSERT,
    ST_RECEIPT,
    ST_CONV_ADD,
    ST_PART_ADD,
    ST_PART_DEL,
    ST_PART_GET,
    ST_PART_SET,
    ST_PART_LIST,
    ST_USER_CONVS,
    ST_MSG_AFTER,
    ST_MSG_BEFORE,
    ST_MEDIA_ADD,
    ST_MEDIA_UP_ADD,
    ST_MEDIA_UP_SET,
    ST_MEDIA_FOR,
    ST_USAGE_DAY_GET,
    ST_USAGE_DAY_ADD,
    ST_USAGE_DAY_SWEEP,
    ST_STORAGE_GET,
    ST_STORAGE_ADD,
    ST_STORAGE_FLUSH,
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
    ST_PING,
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_COUNT
};

#define NOTIF_COLS                                                                                 \
    "id, recipient, type, priority, title, body, image, actions, sender, created, expires, "       \
    "dedupe_key, delivered, read"
#define NOTIF_LIVE(t) "(expires IS NULL OR expires > " t "::bigint)"
#define MSG_COLS      "id, conv, seq, sender, client_id, type, priority, ts, content"

static const char *const stmt_sql[ST_COUNT] = {
    [ST_FIND] = "SELECT " MSG_COLS " FROM messages WHERE sender = $1 AND client_id = $2",
    [ST_CONV_GET] = "SELECT (SELECT coalesce(max(m.seq), 0) FROM messages m WHERE m.conv = c.id) "
                    "FROM conversations c WHERE c.id = $1",
    [ST_INSERT] =
        "SELECT st, mid, mseq FROM parley_insert($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
        "$11, $12, $13, $14, $15, $16)",
    [ST_RECEIPT] = "SELECT rst, rd, rr, rlast FROM parley_receipt($1, $2, $3, $4)",
    [ST_CONV_ADD] = "INSERT INTO conversations(id, kind, created_ms) "
                    "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    [ST_PART_ADD] = "INSERT INTO participants(conv, usr, delivered, read, joined_ms) "
                    "VALUES ($1, $2, 0, 0, $3) ON CONFLICT DO NOTHING",
    [ST_PART_DEL] = "DELETE FROM participants WHERE conv = $1 AND usr = $2",
    [ST_PART_GET] = "SELECT delivered, read FROM participants WHERE conv = $1 AND usr = $2",
    /* Only ever up: another node may have raised them meanwhile. */
    [ST_PART_SET] = "UPDATE participants SET delivered = greatest(delivered, $3::bigint), "
                    "read = greatest(read, $4::bigint) WHERE conv = $1 AND usr = $2",
    [ST_PART_LIST] = "SELECT usr, delivered, read FROM participants WHERE conv = $1 ORDER BY usr",
    [ST_USER_CONVS] = "SELECT conv FROM participants WHERE usr = $1 ORDER BY conv",
    [ST_MSG_AFTER] = "SELECT " MSG_COLS " FROM messages WHERE conv = $1 AND seq > $2 "
                     "ORDER BY seq LIMIT $3",
    [ST_MSG_BEFORE] = "SELECT * FROM (SELECT " MSG_COLS " FROM messages WHERE conv = $1 AND "
                      "seq < $2 ORDER BY seq DESC LIMIT $3) t ORDER BY seq",
    [ST_MEDIA_ADD] = "INSERT INTO media(id, size, mime, created_ms) VALUES ($1, $2, $3, $4) "
                     "ON CONFLICT DO NOTHING",
    [ST_MEDIA_UP_ADD] = "INSERT INTO media_uploaders(media, usr, mime) VALUES ($1, $2, $3) "
                        "ON CONFLICT DO NOTHING",
    [ST_MEDIA_UP_SET] = "UPDATE media_uploaders SET mime = $3 WHERE media = $1 AND usr = $2 AND "
                        "mime IS DISTINCT FROM $3",
    [ST_MEDIA_FOR] = "SELECT m.size, x.mime FROM media m JOIN ("
                     "SELECT 0 AS k, 0::bigint AS o, ''::text COLLATE \"C\" AS c, mime "
                     "FROM media_uploaders WHERE media = $1 AND usr = $2 "
                     "UNION ALL SELECT 1, r.msg, r.conv, r.mime FROM media_refs r "
                     "JOIN participants p ON p.conv = r.conv WHERE r.media = $1 AND p.usr = $2"
                     ") x ON true WHERE m.id = $1 ORDER BY x.k, x.o, x.c LIMIT 1",
    [ST_USAGE_DAY_GET] = "SELECT uploads, bytes FROM usage_days WHERE usr = $1 AND day = $2",
    [ST_USAGE_DAY_ADD] = "INSERT INTO usage_days(usr, day, uploads, bytes) VALUES ($1, $2, 1, $3) "
                         "ON CONFLICT (usr, day) DO UPDATE SET uploads = usage_days.uploads + 1, "
                         "bytes = usage_days.bytes + excluded.bytes",
    [ST_USAGE_DAY_SWEEP] = "DELETE FROM usage_days WHERE day < $1",
    [ST_STORAGE_GET] = "SELECT bytes FROM usage_storage WHERE usr = $1",
    [ST_STORAGE_ADD] = "INSERT INTO usage_storage(usr, bytes) VALUES ($1, $2) "
                       "ON CONFLICT (usr) DO UPDATE SET bytes = usage_storage.bytes + "
                       "excluded.bytes",
    /* The batch's stored bytes, one row per user, taken in user order. */
    [ST_STORAGE_FLUSH] = "INSERT INTO usage_storage(usr, bytes) SELECT u, b FROM "
                         "unnest($1::text[], $2::bigint[]) AS t(u, b) ORDER BY u "
                         "ON CONFLICT (usr) DO UPDATE SET bytes = usage_storage.bytes + "
                         "excluded.bytes",
    [ST_USER_ROOMS] = "SELECT count(*) FROM participants WHERE usr = $1 AND conv >= 'room:' "
                      "AND conv < 'room;'",
    [ST_CONTACT] = "SELECT (EXISTS (SELECT 1 FROM messages WHERE conv = $1 AND sender = $2) OR "
                   "EXISTS (SELECT 1 FROM participants a JOIN participants b ON b.conv = a.conv "
                   "AND b.usr = $3 WHERE a.usr = $2 AND a.conv >= 'room:' AND a.conv < "
                   "'room;'))::int",
    [ST_PRES_GET] = "SELECT last_seen, text FROM presence WHERE usr = $1",
    [ST_PRES_SEEN] = "INSERT INTO presence(usr, last_seen, text) VALUES ($1, $2, '') "
                     "ON CONFLICT (usr) DO UPDATE SET last_seen = excluded.last_seen",
    [ST_PRES_TEXT] = "INSERT INTO presence(usr, last_seen, text) VALUES ($1, NULL, $2) "
                     "ON CONFLICT (usr) DO UPDATE SET text = excluded.text",
    [ST_PRES_INV_GET] = "SELECT since FROM presence_invisible WHERE usr = $1",
    [ST_PRES_INV_ON] = "INSERT INTO presence_invisible(usr, since) VALUES ($1, $2) "
                       "ON CONFLICT (usr) DO NOTHING",
    [ST_PRES_INV_OFF] = "DELETE FROM presence_invisible WHERE usr = $1",
    [ST_NOTIF_ADD] = "INSERT INTO notifications(recipient, type, priority, title, body, image, "
                     "actions, sender, created, expires, dedupe_key) "
                     "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    [ST_NOTIF_DEDUPE] = "SELECT " NOTIF_COLS " FROM notifications WHERE recipient = $1 AND "
                        "dedupe_key = $2 AND " NOTIF_LIVE("$3") " ORDER BY id DESC LIMIT 1",
    [ST_NOTIF_LIST] = "SELECT " NOTIF_COLS " FROM notifications WHERE recipient = $1 AND id > $2 "
                      "AND " NOTIF_LIVE("$3") " ORDER BY id LIMIT $4",
    [ST_NOTIF_UNREAD] = "SELECT count(*) FROM notifications WHERE recipient = $1 AND read = 0 "
                        "AND " NOTIF_LIVE("$2"),
    [ST_NOTIF_DELIVER_RANGE] = "UPDATE notifications SET delivered = 1 WHERE recipient = $1 AND "
                               "id > $2 AND id <= $3 AND delivered = 0",
    [ST_NOTIF_READ_ONE] = "UPDATE notifications SET read = 1, delivered = 1 WHERE id = $1 AND "
                          "recipient = $2 AND read = 0 AND " NOTIF_LIVE("$3"),
    [ST_NOTIF_READ_ALL] = "UPDATE notifications SET read = 1, delivered = 1 WHERE recipient = $1 "
                          "AND read = 0 AND " NOTIF_LIVE("$2"),
    [ST_NOTIF_EXPIRED_USERS] = "SELECT DISTINCT recipient FROM notifications WHERE expires <= $1 "
                               "AND read = 0 ORDER BY recipient",
    [ST_NOTIF_SWEEP] = "DELETE FROM notifications WHERE expires <= $1",
    [ST_NOTIF_NEXT_EXPIRY] = "SELECT min(expires) FROM notifications WHERE expires IS NOT NULL",
    [ST_NPREFS_GET] = "SELECT prefs FROM notification_prefs WHERE usr = $1",
    [ST_NPREFS_SET] = "INSERT INTO notification_prefs(usr, prefs) VALUES ($1, $2) "
                      "ON CONFLICT (usr) DO UPDATE SET prefs = excluded.prefs",
    [ST_NOTIF_GET] = "SELECT " NOTIF_COLS " FROM notifications WHERE id = $1",
    [ST_PUSH_ADD] = "INSERT INTO push_outbox(notif, usr, attempts, next_attempt_ms, created_ms) "
                    "VALUES ($1, $2, 0, greatest($3::bigint, coalesce((SELECT next_attempt_ms "
                    "FROM push_outbox WHERE usr = $2 ORDER BY id LIMIT 1), $3::bigint)), "
                    "$3::bigint) RETURNING id",
    [ST_PUSH_COUNT] = "SELECT count(*) FROM push_outbox",
    [ST_PUSH_DUE] = "SELECT o.id, o.notif, o.usr, o.attempts, o.next_attempt_ms, o.created_ms "
                    "FROM push_outbox o WHERE o.next_attempt_ms <= $1 AND NOT EXISTS (SELECT 1 "
                    "FROM push_outbox p WHERE p.usr = o.usr AND p.id < o.id) "
                    "ORDER BY o.next_attempt_ms, o.id LIMIT $2",
    [ST_PUSH_NEXT] = "SELECT min(next_attempt_ms) FROM push_outbox WHERE next_attempt_ms > $1",
    [ST_PUSH_DEL] = "DELETE FROM push_outbox WHERE id = $1",
    [ST_PUSH_RETRY] = "UPDATE push_outbox SET attempts = $2, next_attempt_ms = $3 WHERE id = $1",
    [ST_PUSH_RETRY_AFTER] = "UPDATE push_outbox SET next_attempt_ms = $3 WHERE usr = $1 AND "
                            "id > $2 AND next_attempt_ms < $3",
    [ST_PING] = "SELECT 1",
    [ST_BEGIN] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
};

/* Schema steps: entry i takes version i to i + 1. Text ids sort by bytes
 * (COLLATE "C"), like SQLite's BINARY: ranges on 'room:' and every ORDER
 * BY mean the same on both backends. */
#define ID "TEXT COLLATE \"C\" NOT NULL"
static const char *const migrations[PG_SCHEMA_VERSION] = {
    "CREATE TABLE conversations ("
    " id " ID " PRIMARY KEY,"
    " kind INTEGER NOT NULL,"
    " created_ms BIGINT NOT NULL);"
    "CREATE TABLE participants ("
    " conv " ID ","
    " usr " ID ","
    " delivered BIGINT NOT NULL,"
    " read BIGINT NOT NULL,"
    " joined_ms BIGINT NOT NULL,"
    " PRIMARY KEY (conv, usr));"
    "CREATE INDEX participants_by_user ON participants(usr, conv);"
    "CREATE TABLE messages ("
    " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " conv " ID ","
    " seq BIGINT NOT NULL,"
    " sender " ID ","
    " client_id " ID ","
    " type INTEGER NOT NULL,"
    " priority INTEGER NOT NULL,"
    " ts BIGINT NOT NULL,"
    " content TEXT NOT NULL,"
    " UNIQUE (conv, seq),"
    " UNIQUE (sender, client_id));"
    "CREATE TABLE media ("
    " id " ID " PRIMARY KEY,"
    " size BIGINT NOT NULL,"
    " mime TEXT NOT NULL,"
    " created_ms BIGINT NOT NULL);"
    "CREATE TABLE media_uploaders ("
    " media " ID ","
    " usr " ID ","
    " mime TEXT NOT NULL,"
    " PRIMARY KEY (media, usr));"
    "CREATE TABLE media_refs ("
    " media " ID ","
    " conv " ID ","
    " mime TEXT NOT NULL,"
    " msg BIGINT NOT NULL,"
    " PRIMARY KEY (media, conv));"
    "CREATE TABLE presence ("
    " usr " ID " PRIMARY KEY,"
    " last_seen BIGINT,"
    " text TEXT NOT NULL);"
    "CREATE TABLE presence_invisible ("
    " usr " ID " PRIMARY KEY,"
    " since BIGINT NOT NULL);"
    "CREATE TABLE notifications ("
    " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " recipient " ID ","
    " type INTEGER NOT NULL,"
    " priority INTEGER NOT NULL,"
    " title TEXT NOT NULL,"
    " body TEXT NOT NULL,"
    " image TEXT,"
    " actions TEXT NOT NULL,"
    " sender TEXT COLLATE \"C\","
    " created BIGINT NOT NULL,"
    " expires BIGINT,"
    " dedupe_key TEXT,"
    " delivered INTEGER NOT NULL DEFAULT 0,"
    " read INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX notifications_by_recipient ON notifications(recipient, id);"
    "CREATE INDEX notifications_by_dedupe ON notifications(recipient, dedupe_key)"
    " WHERE dedupe_key IS NOT NULL;"
    "CREATE INDEX notifications_by_expiry ON notifications(expires) WHERE expires IS NOT NULL;"
    "CREATE TABLE notification_prefs ("
    " usr " ID " PRIMARY KEY,"
    " prefs TEXT NOT NULL);"
    "CREATE TABLE usage_days ("
    " usr " ID ","
    " day BIGINT NOT NULL,"
    " uploads BIGINT NOT NULL,"
    " bytes BIGINT NOT NULL,"
    " PRIMARY KEY (usr, day));"
    "CREATE TABLE usage_storage ("
    " usr " ID " PRIMARY KEY,"
    " bytes BIGINT NOT NULL);"
    "CREATE TABLE push_outbox ("
    " id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " notif BIGINT NOT NULL,"
    " usr " ID ","
    " attempts BIGINT NOT NULL,"
    " next_attempt_ms BIGINT NOT NULL,"
    " created_ms BIGINT NOT NULL);"
    "CREATE INDEX push_outbox_by_user ON push_outbox(usr, id);"
    "CREATE INDEX push_outbox_by_due ON push_outbox(next_attempt_ms, id);"
    /* One message in one round trip. st: 0 stored, 1 duplicate (nothing
     * written, no seq taken), 2 no such room, 3 seq exhausted, 4 busy:
     * another transaction writes this conversation and p_wait is false
     * (nothing written). The writers of a conversation, on every node,
     * take turns on a transaction-scoped advisory lock on its id, held
     * until their commit; under it the next seq is the conversation's
     * highest stored one + 1 (the (conv, seq) index: no row of its own
     * to update). A transaction that already holds locks never waits for
     * one (p_wait false: busy instead), so the batches of two nodes cannot
     * deadlock on conversations: the caller commits what it has and tries
     * again, waiting, in a new transaction that holds nothing. Inserts
     * are pipelined (several of a batch sent before the first answer):
     * once one insert of a transaction is busy, every later one that may
     * not wait is busy too (the transaction-local setting parley.busy),
     * and the caller sends them again in order after the early commit, so
     * that a later message never takes a seq before an earlier one. A
     * duplicate (sender, client_id) inserts nothing, so takes no seq. The
     * sender's stored bytes are counted by the caller, once per user and
     * batch, at commit. */
    "CREATE FUNCTION parley_insert(p_conv text, p_dm boolean, p_a text, p_b text,"
    " p_sender text, p_cid text, p_type integer, p_prio integer, p_ts bigint, p_content text,"
    " p_media text, p_mime text, p_seq_max bigint, p_wait boolean, p_quota bigint,"
    " p_need bigint)"
    " RETURNS TABLE(st integer, mid bigint, mseq bigint) LANGUAGE plpgsql AS $f$"
    " DECLARE v_last bigint; v_id bigint; v_used bigint;"
    " BEGIN"
    "  IF p_wait THEN"
    "   PERFORM pg_advisory_xact_lock(hashtextextended(p_conv, 1347241300));"
    "  ELSIF coalesce(current_setting('parley.busy', true), '') = 't' OR"
    "   NOT pg_try_advisory_xact_lock(hashtextextended(p_conv, 1347241300)) THEN"
    "   PERFORM set_config('parley.busy', 't', true);"
    "   st := 4; mid := 0; mseq := 0; RETURN NEXT; RETURN;"
    "  END IF;"
    "  PERFORM 1 FROM conversations c WHERE c.id = p_conv;"
    "  IF NOT FOUND THEN"
    "   IF NOT p_dm THEN st := 2; mid := 0; mseq := 0; RETURN NEXT; RETURN; END IF;"
    "   INSERT INTO conversations(id, kind, created_ms) VALUES (p_conv, 1, p_ts)"
    "    ON CONFLICT DO NOTHING;"
    "   INSERT INTO participants(conv, usr, delivered, read, joined_ms) VALUES"
    "    (p_conv, p_a, 0, 0, p_ts), (p_conv, p_b, 0, 0, p_ts) ON CONFLICT DO NOTHING;"
    "  ELSIF NOT p_dm THEN"
    "   PERFORM 1 FROM participants p WHERE p.conv = p_conv AND p.usr = p_sender;"
    "   IF NOT FOUND THEN st := 5; mid := 0; mseq := 0; RETURN NEXT; RETURN; END IF;"
    "  END IF;"
    /* p_need: the message's bytes and the batch's answered ones (the
     * node's, written at commit). */
    "  IF p_quota > 0 THEN"
    "   SELECT coalesce(max(u.bytes), 0) INTO v_used FROM usage_storage u WHERE u.usr = p_sender;"
    "   IF v_used + p_need > p_quota THEN st := 6; mid := 0; mseq := 0; RETURN NEXT; RETURN; END IF;"
    "  END IF;"
    "  SELECT coalesce(max(m.seq), 0) INTO v_last FROM messages m WHERE m.conv = p_conv;"
    "  IF v_last < 0 OR v_last + 1 >= p_seq_max THEN"
    "   st := 3; mid := 0; mseq := 0; RETURN NEXT; RETURN;"
    "  END IF;"
    "  INSERT INTO messages(conv, seq, sender, client_id, type, priority, ts, content)"
    "   VALUES (p_conv, v_last + 1, p_sender, p_cid, p_type, p_prio, p_ts, p_content)"
    "   ON CONFLICT (sender, client_id) DO NOTHING RETURNING id INTO v_id;"
    "  IF v_id IS NULL THEN st := 1; mid := 0; mseq := 0; RETURN NEXT; RETURN; END IF;"
    "  IF p_media IS NOT NULL THEN"
    "   INSERT INTO media_refs(media, conv, mime, msg) VALUES (p_media, p_conv, p_mime, v_id)"
    "    ON CONFLICT DO NOTHING;"
    "  END IF;"
    "  st := 0; mid := v_id; mseq := v_last + 1; RETURN NEXT;"
    " END $f$;"
    /* A receipt in one statement (mstore_receipt_async): rst 0 unchanged,
     * 3 moved, 1 not a participant, 2 beyond the last seq; rlast always.
     * The watermarks only ever go up: the UPDATE takes the row's current
     * values (another node may have raised them meanwhile). */
    "CREATE FUNCTION parley_receipt(p_conv text, p_user text, p_delivered bigint, p_read bigint)"
    " RETURNS TABLE(rst integer, rd bigint, rr bigint, rlast bigint) LANGUAGE plpgsql AS $f$"
    " DECLARE v_d bigint; v_r bigint;"
    " BEGIN"
    "  SELECT coalesce(max(m.seq), 0) INTO rlast FROM messages m WHERE m.conv = p_conv;"
    "  SELECT p.delivered, p.read INTO v_d, v_r FROM participants p"
    "   WHERE p.conv = p_conv AND p.usr = p_user;"
    "  IF NOT FOUND THEN rst := 1; rd := 0; rr := 0; RETURN NEXT; RETURN; END IF;"
    "  IF greatest(p_delivered, p_read) > rlast THEN"
    "   rst := 2; rd := v_d; rr := v_r; RETURN NEXT; RETURN;"
    "  END IF;"
    "  rr := greatest(v_r, p_read); rd := greatest(v_d, p_delivered, rr);"
    "  IF rd = v_d AND rr = v_r THEN rst := 0; RETURN NEXT; RETURN; END IF;"
    "  UPDATE participants p SET delivered = greatest(p.delivered, rd), read = greatest(p.read, rr)"
    "   WHERE p.conv = p_conv AND p.usr = p_user RETURNING p.delivered, p.read INTO rd, rr;"
    "  rst := 3; RETURN NEXT;"
    " END $f$;",
};
#undef ID

/* The sockets and timer of the reconnect, each freed by its close
 * callback (the store may be gone by then). */
typedef struct pgs pgs;

/* The bytes users stored in the open batch, added at its commit. */
#define PEND_USERS 512
#define PEND_SLOTS 1024 /* a power of two, above PEND_USERS */
typedef struct pend_user {
    char user[MSG_USER_MAX + 1];
    int64_t bytes;
} pend_user;

struct pgs {
    mstore base; /* first: the interface */
    PGconn *conn;
    int64_t quota; /* stored bytes per sender, 0 none (parley_insert checks) */
    char *url;
    char where[160]; /* user@host:port/db for logs: never the password */
    uv_loop_t *loop;
    uv_timer_t *timer; /* backoff, and the deadline of an attempt */
    uv_idle_t *kick;   /* sends the calls of one loop iteration together */
    uv_poll_t *poll;   /* the socket of a connection being made */
    uv_poll_t *idle;   /* the open connection's socket between calls: a
                          server that goes away is noticed at once */
    int poll_fd;
    PGconn *pending; /* the connection being made on the loop */
    unsigned timeout_ms, backoff_min, backoff_max, backoff;
    uint64_t retry_at; /* without a loop: when the next call may reconnect */
    bool up;
    bool in_tx;
    bool begin_pending; /* in_tx, BEGIN not sent yet (goes with the first statement) */
    bool lost;          /* the batch's transaction is gone (error, lost connection) */
    uint64_t commits;
    uint64_t splits; /* batches committed early, a conversation being busy */
    uint32_t batch_writes;
    int64_t swept_day;
    PGresult *res; /* the last answer, cleared by the next call */
    pbuf found;    /* content of the last mstore_find */
    pend_user pend[PEND_USERS];
    uint16_t pend_slot[PEND_SLOTS]; /* index + 1 into pend, 0 empty */
    unsigned npend;
    pbuf arr_users, arr_bytes; /* ST_STORAGE_FLUSH's parameters */
    plog_limit log_err;
    /* Asynchronous calls, in call order (aop), and what is on the wire
     * (one entry per statement or sync sent, in order). */
    struct aop *aq_head, *aq_tail;
    struct wire *wire;
    unsigned wire_cap, wire_head, nwire;
    unsigned nbusy;        /* inserts answered busy, to send again */
    bool need_rollback;    /* a COMMIT was skipped in an aborted pipeline */
    bool dispatching;      /* callbacks running */
    bool in_async;         /* the pipeline's own synchronous work */
    bool flush_failed;     /* the commit's stored-bytes statement failed */
    bool split_failed;     /* an early commit of this batch failed (W_SPLIT) */
    unsigned unsynced;     /* statements sent since the last Sync */
    bool want_write;       /* libpq has output the socket did not take */
    uint64_t tx_gen;       /* transactions begun by the pipeline */
};

static const mstore_ops pg_ops;
static void pg_close(mstore *base_);
static void pend_clear(pgs *s);
static void start_reconnect(pgs *s);
static void fail_all(pgs *s);
static void pump(pgs *s);
static void pg_drain(mstore *base_);

/* ---- parameters: up to 16, numbers formatted in place ---- */

typedef struct params {
    int n;
    const char *v[16];
    int len[16];
    int fmt[16];
    char num[16][24];
} params;

static void p_init(params *p)
{
    p->n = 0;
}

static void p_str(params *p, const char *v)
{
    p->v[p->n] = v;
    p->len[p->n] = 0;
    p->fmt[p->n] = 0;
    p->n++;
}

/* Text with a length (not NUL-terminated): the binary format of text is
 * its bytes. */
static void p_bytes(params *p, const char *v, size_t n)
{
    p->v[p->n] = v;
    p->len[p->n] = (int)n;
    p->fmt[p->n] = 1;
    p->n++;
}

static void p_i64(params *p, int64_t v)
{
    snprintf(p->num[p->n], sizeof p->num[p->n], "%" PRId64, v);
    p_str(p, p->num[p->n]);
}

static void p_null(params *p)
{
    p_str(p, NULL);
}

static void p_opt(params *p, const char *v)
{
    if (v && v[0])
        p_str(p, v);
    else
        p_null(p);
}

/* ---- the connection ---- */

/* libpq's messages span lines: one line for the log. */
static const char *oneline(char *buf, size_t cap, const char *msg)
{
    size_t n = 0;
    for (const char *p = msg ? msg : ""; *p && n + 1 < cap; p++) {
        char ch = *p == '\n' || *p == '\t' || *p == '\r' ? ' ' : *p;
        if (ch == ' ' && (n == 0 || buf[n - 1] == ' ')) continue;
        buf[n++] = ch;
    }
    while (n && buf[n - 1] == ' ') n--;
    buf[n] = 0;
    return buf;
}

static void log_err(pgs *s, const char *what, const char *detail)
{
    uint64_t held;
    char line[512];
    if (plog_limit_ok(&s->log_err, ptime_ms(), 10000, &held))
        plog_error("store %s: %s: %s (%llu more store errors since the last line)", s->where, what,
                   oneline(line, sizeof line, detail), (unsigned long long)held);
}

/* Notices (NOTICE, WARNING from the server) are not errors of ours. */
static void quiet_notice(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

static void clear_res(pgs *s)
{
    if (s->res) PQclear(s->res);
    s->res = NULL;
}

static unsigned jitter(unsigned ms)
{
    uint32_t r = 0;
    prand_bytes(&r, sizeof r);
    return ms / 2 + (ms > 1 ? r % (ms / 2 + 1) : 0);
}

static void poll_closed(uv_handle_t *h)
{
    free(h);
}

static void stop_poll(pgs *s)
{
    if (!s->poll) return;
    uv_poll_stop(s->poll);
    uv_close((uv_handle_t *)s->poll, poll_closed);
    s->poll = NULL;
    s->poll_fd = -1;
}

static void idle_stop(pgs *s)
{
    if (!s->idle) return;
    uv_poll_stop(s->idle);
    uv_close((uv_handle_t *)s->idle, poll_closed);
    s->idle = NULL;
}

/* The connection is gone: down until a reconnect succeeds. */
static void mark_down(pgs *s, const char *why)
{
    clear_res(s);
    idle_stop(s);
    if (s->conn) {
        char line[512];
        plog_error("store %s: connection lost (%s); reconnecting", s->where,
                   oneline(line, sizeof line, why));
        PQfinish(s->conn);
        s->conn = NULL;
    }
    if (s->in_tx) s->lost = true;
    if (s->up) s->backoff = s->backoff_min;
    s->up = false;
    fail_all(s); /* their callbacks run when the pipeline's caller dispatches */
    start_reconnect(s);
}

/* Waits until fd is ready for events or deadline (monotonic ms): 1
 * ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = ptime_ms();
        if (now >= deadline) return 0;
        struct pollfd pfd = {.fd = fd, .events = events};
        int n = poll(&pfd, 1, (int)PARLEY_MIN(deadline - now, (uint64_t)INT_MAX));
        if (n > 0) return 1;
        if (n < 0 && errno != EINTR) return -1;
    }
}

/* Reads the whole answer of what was sent; *out: its first result (or
 * the first error). 0, or PARLEY_EIO after the connection was dropped. */
static int await_results(pgs *s, PGresult **out, const char *what, bool pipelined)
{
    *out = NULL;
    uint64_t deadline = ptime_ms() + s->timeout_ms;
    int fd = PQsocket(s->conn);
    int fl;
    while ((fl = PQflush(s->conn)) == 1) {
        int w = wait_fd(fd, POLLIN | POLLOUT, deadline);
        if (w <= 0) goto broken;
        if (!PQconsumeInput(s->conn)) goto broken;
    }
    if (fl < 0) goto broken;
    for (;;) {
        while (PQisBusy(s->conn)) {
            int w = wait_fd(fd, POLLIN, deadline);
            if (w <= 0) {
                if (w == 0) log_err(s, what, "no answer in time");
                goto broken;
            }
            if (!PQconsumeInput(s->conn)) goto broken;
        }
        PGresult *r = PQgetResult(s->conn);
        if (!r) {
            if (!pipelined) break;
            continue; /* the end of one statement's results */
        }
        ExecStatusType es = PQresultStatus(r);
        if (es == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            break;
        }
        /* The first error, else the first result (pipelined: the last
         * statement's, the one asked for). */
        bool keep =
            !*out || (PQresultStatus(*out) != PGRES_FATAL_ERROR &&
                      (es == PGRES_FATAL_ERROR || (pipelined && es != PGRES_PIPELINE_ABORTED)));
        if (keep) {
            if (*out) PQclear(*out);
            *out = r;
        } else {
            PQclear(r);
        }
    }
    if (pipelined && !PQexitPipelineMode(s->conn)) goto broken;
    if (PQstatus(s->conn) != CONNECTION_OK) goto broken;
    return 0;
broken:
    if (*out) PQclear(*out);
    *out = NULL;
    mark_down(s, PQerrorMessage(s->conn)[0] ? PQerrorMessage(s->conn) : "timeout");
    return PARLEY_EIO;
}

static int await(pgs *s, PGresult **out, const char *what)
{
    return await_results(s, out, what, false);
}

static bool connected(pgs *s);

/* Runs prepared statement `st`; s->res holds the answer. 0, or
 * PARLEY_EIO (logged; a failure inside the batch loses the batch). The
 * batch's BEGIN goes with its first statement: pipelined, one round
 * trip. */
static int q(pgs *s, int st, const params *p, const char *what)
{
    clear_res(s);
    if (!connected(s)) {
        if (s->in_tx) s->lost = true;
        return PARLEY_EIO;
    }
    bool begin = s->begin_pending;
    s->begin_pending = false;
    char name[16];
    snprintf(name, sizeof name, "s%d", st);
    if (begin) {
        char bname[16];
        snprintf(bname, sizeof bname, "s%d", ST_BEGIN);
        if (!PQenterPipelineMode(s->conn) ||
            !PQsendQueryPrepared(s->conn, bname, 0, NULL, NULL, NULL, 0)) {
            mark_down(s, PQerrorMessage(s->conn));
            return PARLEY_EIO;
        }
    }
    if (!PQsendQueryPrepared(s->conn, name, p ? p->n : 0, p ? p->v : NULL, p ? p->len : NULL,
                             p ? p->fmt : NULL, 0) ||
        (begin && !PQpipelineSync(s->conn))) {
        mark_down(s, PQerrorMessage(s->conn));
        return PARLEY_EIO;
    }
    PGresult *r;
    if (await_results(s, &r, what, begin)) return PARLEY_EIO;
    ExecStatusType es = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (es != PGRES_COMMAND_OK && es != PGRES_TUPLES_OK) {
        log_err(s, what, r ? PQresultErrorMessage(r) : "no result");
        if (r) PQclear(r);
        if (s->in_tx) s->lost = true;
        return PARLEY_EIO;
    }
    s->res = r;
    return 0;
}

/* A simple query (several statements; no parameters), for migrations. */
static int exec_simple(pgs *s, const char *sql, const char *what)
{
    if (!PQsendQuery(s->conn, sql)) {
        log_err(s, what, PQerrorMessage(s->conn));
        return PARLEY_EIO;
    }
    PGresult *r;
    if (await(s, &r, what)) return PARLEY_EIO;
    ExecStatusType es = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    int ret = 0;
    if (es != PGRES_COMMAND_OK && es != PGRES_TUPLES_OK) {
        char line[512];
        plog_error("store %s: %s: %s", s->where, what,
                   oneline(line, sizeof line, r ? PQresultErrorMessage(r) : "no result"));
        ret = PARLEY_EIO;
    }
    if (r) PQclear(r);
    return ret;
}

/* Prepares every statement: pipelined, one round trip. */
static int prepare_all(pgs *s)
{
    if (!PQenterPipelineMode(s->conn)) return PARLEY_EIO;
    for (int i = 0; i < ST_COUNT; i++) {
        char name[16];
        snprintf(name, sizeof name, "s%d", i);
        if (!PQsendPrepare(s->conn, name, stmt_sql[i], 0, NULL)) goto fail;
    }
    if (!PQpipelineSync(s->conn)) goto fail;
    uint64_t deadline = ptime_ms() + s->timeout_ms;
    int fd = PQsocket(s->conn), fl;
    while ((fl = PQflush(s->conn)) == 1) {
        if (wait_fd(fd, POLLIN | POLLOUT, deadline) <= 0 || !PQconsumeInput(s->conn)) goto fail;
    }
    if (fl < 0) goto fail;
    int ret = 0;
    for (;;) {
        while (PQisBusy(s->conn)) {
            if (wait_fd(fd, POLLIN, deadline) <= 0 || !PQconsumeInput(s->conn)) goto fail;
        }
        PGresult *r = PQgetResult(s->conn);
        if (!r) continue; /* end of one statement's results */
        ExecStatusType es = PQresultStatus(r);
        if (es == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            break;
        }
        if (es != PGRES_COMMAND_OK && !ret) {
            plog_error("store %s: preparing statements: %s", s->where, PQresultErrorMessage(r));
            ret = PARLEY_EIO;
        }
        PQclear(r);
    }
    if (!PQexitPipelineMode(s->conn)) goto fail;
    return ret;
fail:
    plog_error("store %s: preparing statements: %s", s->where, PQerrorMessage(s->conn));
    return PARLEY_EIO;
}

static PGconn *connect_start(pgs *s)
{
    const char *const keys[] = {"dbname", "client_encoding", "fallback_application_name", NULL};
    const char *const vals[] = {s->url, "UTF8", "parleyd", NULL};
    return PQconnectStartParams(keys, vals, 1);
}

/* Between calls nothing is asked of the server: the socket becoming
 * readable means it said something on its own, which is a server
 * shutting down or a connection broken (or a notice). Without this, a
 * restarted database would be noticed only by the next request, which
 * would fail. */
static void on_idle(uv_poll_t *h, int status, int events)
{
    pgs *s = h->data;
    if (s->idle != h || !s->conn) return;
    if (status < 0) {
        mark_down(s, uv_strerror(status));
        pump(s);
        return;
    }
    if ((events & UV_WRITABLE) && s->want_write) {
        pump(s); /* PQflush there */
        if (!s->conn) return;
    }
    if (!(events & UV_READABLE)) return;
    if (PQconsumeInput(s->conn) == 0 || PQstatus(s->conn) == CONNECTION_BAD) {
        mark_down(s, PQerrorMessage(s->conn));
        pump(s);
        return;
    }
    PGnotify *n;
    while ((n = PQnotifies(s->conn))) PQfreemem(n);
    /* The same watch reads the pipeline's answers (one poll per socket). */
    if (s->aq_head) pump(s);
}

static void idle_start(pgs *s)
{
    int fd = s->loop && s->conn && !s->idle ? PQsocket(s->conn) : -1;
    if (fd < 0) return;
    s->idle = malloc(sizeof *s->idle);
    if (!s->idle) return; /* noticed at the next call instead */
    if (uv_poll_init(s->loop, s->idle, fd) != 0) {
        free(s->idle);
        s->idle = NULL;
        return;
    }
    s->idle->data = s;
    if (uv_poll_start(s->idle, UV_READABLE, on_idle) != 0) idle_stop(s);
}

/* A new connection is open: set it up for the store (the statements
 * only once the schema exists). */
static int conn_ready(pgs *s, PGconn *c, bool prepare)
{
    s->conn = c;
    PQsetNoticeProcessor(c, quiet_notice, NULL);
    if (PQsetnonblocking(c, 1) != 0 || (prepare && prepare_all(s) != 0)) {
        if (s->conn) PQfinish(s->conn);
        s->conn = NULL;
        return PARLEY_EIO;
    }
    idle_start(s);
    return 0;
}

/* Connects with poll(), at most timeout_ms (open, and without a loop). */
static int connect_sync(pgs *s, bool prepare)
{
    PGconn *c = connect_start(s);
    if (!c) return PARLEY_ENOMEM;
    uint64_t deadline = ptime_ms() + s->timeout_ms;
    PostgresPollingStatusType ps =
        PQstatus(c) == CONNECTION_BAD ? PGRES_POLLING_FAILED : PGRES_POLLING_WRITING;
    while (ps != PGRES_POLLING_OK && ps != PGRES_POLLING_FAILED) {
        int w = wait_fd(PQsocket(c), ps == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
        if (w <= 0) {
            plog_error("store %s: cannot connect: %s", s->where,
                       w == 0 ? "timed out" : strerror(errno));
            PQfinish(c);
            return PARLEY_EIO;
        }
        ps = PQconnectPoll(c);
    }
    if (ps == PGRES_POLLING_FAILED) {
        char msg[512];
        plog_error("store %s: cannot connect: %s", s->where,
                   oneline(msg, sizeof msg, PQerrorMessage(c)));
        PQfinish(c);
        return PARLEY_EIO;
    }
    return conn_ready(s, c, prepare);
}

/* ---- reconnecting on the loop ---- */

static void on_timer(uv_timer_t *t);

static void schedule(pgs *s)
{
    unsigned d = jitter(s->backoff);
    s->backoff = s->backoff > s->backoff_max / 2 ? s->backoff_max : s->backoff * 2;
    s->retry_at = ptime_ms() + d;
    if (s->timer) uv_timer_start(s->timer, on_timer, d, 0);
}

static void abandon_pending(pgs *s)
{
    stop_poll(s);
    if (s->pending) PQfinish(s->pending);
    s->pending = NULL;
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watches the pending connection's socket for what PQconnectPoll wants. */
static int watch(pgs *s, PostgresPollingStatusType ps)
{
    int fd = PQsocket(s->pending);
    if (fd < 0) return -1;
    if (s->poll && s->poll_fd != fd) stop_poll(s);
    if (!s->poll) {
        s->poll = malloc(sizeof *s->poll);
        if (!s->poll) return -1;
        if (uv_poll_init(s->loop, s->poll, fd) != 0) {
            free(s->poll);
            s->poll = NULL;
            return -1;
        }
        s->poll->data = s;
        s->poll_fd = fd;
    }
    return uv_poll_start(s->poll, ps == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE, on_poll);
}

static void attempt_failed(pgs *s)
{
    if (s->pending) {
        const char *msg = PQerrorMessage(s->pending);
        log_err(s, "reconnecting", msg[0] ? msg : "failed");
    } else {
        log_err(s, "reconnecting", "timed out");
    }
    abandon_pending(s);
    schedule(s);
}

static void step(pgs *s)
{
    PostgresPollingStatusType ps = PQconnectPoll(s->pending);
    if (ps == PGRES_POLLING_OK) {
        PGconn *c = s->pending;
        s->pending = NULL;
        stop_poll(s);
        uv_timer_stop(s->timer);
        if (conn_ready(s, c, true) != 0) {
            schedule(s);
            return;
        }
        plog_info("store %s: reconnected", s->where);
        s->up = true;
        s->backoff = s->backoff_min;
        return;
    }
    if (ps == PGRES_POLLING_FAILED || watch(s, ps) != 0) attempt_failed(s);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    pgs *s = h->data;
    if (s->poll != h || !s->pending) return;
    step(s);
}

static void on_timer(uv_timer_t *t)
{
    pgs *s = t->data;
    if (s->pending) { /* the attempt's deadline */
        attempt_failed(s);
        return;
    }
    s->pending = connect_start(s);
    if (!s->pending || PQstatus(s->pending) == CONNECTION_BAD) {
        attempt_failed(s);
        return;
    }
    uv_timer_start(s->timer, on_timer, s->timeout_ms, 0);
    if (watch(s, PGRES_POLLING_WRITING) != 0) attempt_failed(s);
}

static void start_reconnect(pgs *s)
{
    if (s->pending) return;
    schedule(s);
}

/* Whether a call may go to the database now; without a loop, reconnects
 * here once the backoff delay has passed. */
static bool connected(pgs *s)
{
    if (s->conn && s->up) return true;
    if (s->loop || ptime_ms() < s->retry_at) return false;
    if (connect_sync(s, true) != 0) {
        schedule(s);
        return false;
    }
    plog_info("store %s: reconnected", s->where);
    s->up = true;
    s->backoff = s->backoff_min;
    return true;
}

/* ---- batches ---- */

/* Every write goes through here first. The BEGIN waits for the batch's
 * first statement and goes out with it (q). */
static int ensure_tx(pgs *s)
{
    if (s->lost) return PARLEY_EIO;
    if (s->in_tx) {
        s->batch_writes++;
        return 0;
    }
    if (!connected(s)) return PARLEY_EIO;
    s->in_tx = true;
    s->begin_pending = true;
    s->batch_writes = 1;
    return 0;
}

static bool pg_in_batch(const mstore *base_)
{
    const pgs *s = (const pgs *)base_;
    return s->in_tx || s->aq_head;
}

static bool pg_up(const mstore *base_)
{
    const pgs *s = (const pgs *)base_;
    return s->up && s->conn;
}

static uint64_t pg_commits(const mstore *base_)
{
    return ((const pgs *)base_)->commits;
}

static uint32_t pg_batch_writes(const mstore *base_)
{
    const pgs *s = (const pgs *)base_;
    return s->in_tx ? s->batch_writes : 0;
}

static int pg_ping(mstore *base_)
{
    pgs *s = (pgs *)base_;
    if (s->lost) return PARLEY_EIO;
    int rc = q(s, ST_PING, NULL, "ping");
    clear_res(s);
    return rc;
}

static void pg_rollback(mstore *base_)
{
    pgs *s = (pgs *)base_;
    if (!s->in_tx) return;
    pend_clear(s);
    s->in_tx = false; /* before q(): a failed ROLLBACK loses nothing more */
    s->lost = false;
    s->swept_day = INT64_MIN;
    if (s->begin_pending) { /* nothing was sent */
        s->begin_pending = false;
        return;
    }
    if (s->conn && s->up) {
        q(s, ST_ROLLBACK, NULL, "rollback");
        clear_res(s);
    }
}

static uint32_t pend_hash(const char *u)
{
    uint32_t h = 2166136261u;
    for (; *u; u++) h = (h ^ (uint8_t)*u) * 16777619u;
    return h;
}

static void pend_clear(pgs *s)
{
    if (!s->npend) return;
    memset(s->pend_slot, 0, sizeof s->pend_slot);
    s->npend = 0;
}

/* The entry of user in the batch's stored bytes; NULL when full. */
static pend_user *pend_get(pgs *s, const char *user, bool add)
{
    for (uint32_t i = pend_hash(user) & (PEND_SLOTS - 1);; i = (i + 1) & (PEND_SLOTS - 1)) {
        uint16_t k = s->pend_slot[i];
        if (k && strcmp(s->pend[k - 1].user, user) == 0) return &s->pend[k - 1];
        if (k) continue;
        if (!add || s->npend == PEND_USERS) return NULL;
        pend_user *e = &s->pend[s->npend++];
        snprintf(e->user, sizeof e->user, "%s", user);
        e->bytes = 0;
        s->pend_slot[i] = (uint16_t)s->npend;
        return e;
    }
}

static int storage_add(pgs *s, const char *user, int64_t n);

/* Counts n more bytes stored by user in the batch (directly when the
 * batch has too many users to hold). */
static int pend_add(pgs *s, const char *user, int64_t n)
{
    pend_user *e = pend_get(s, user, true);
    if (!e) return storage_add(s, user, n);
    e->bytes += n;
    return 0;
}

/* A text[] literal element: quoted, with " and \ escaped. */
static int arr_add_str(pbuf *b, const char *v)
{
    int rc = pbuf_append(b, b->len > 1 ? ",\"" : "\"", b->len > 1 ? 2 : 1);
    for (; rc == 0 && *v; v++) {
        if (*v == '"' || *v == '\\') rc = pbuf_append(b, "\\", 1);
        if (rc == 0) rc = pbuf_append(b, v, 1);
    }
    return rc ? rc : pbuf_append(b, "\"", 1);
}

/* Adds the batch's stored bytes to usage_storage (before its COMMIT). */
static int pend_flush(pgs *s)
{
    if (!s->npend) return 0;
    pbuf *u = &s->arr_users, *n = &s->arr_bytes;
    u->len = n->len = 0;
    int rc = pbuf_append(u, "{", 1);
    if (rc == 0) rc = pbuf_append(n, "{", 1);
    for (unsigned i = 0; rc == 0 && i < s->npend; i++) {
        rc = arr_add_str(u, s->pend[i].user);
        if (rc == 0) rc = pbuf_appendf(n, i ? ",%lld" : "%lld", (long long)s->pend[i].bytes);
    }
    if (rc == 0) rc = pbuf_append(u, "}", 2);
    if (rc == 0) rc = pbuf_append(n, "}", 2);
    if (rc) return rc;
    params p;
    p_init(&p);
    p_str(&p, (const char *)u->ptr);
    p_str(&p, (const char *)n->ptr);
    rc = q(s, ST_STORAGE_FLUSH, &p, "storing usage");
    clear_res(s);
    pend_clear(s);
    if (u->cap > 65536) pbuf_reset(u, 4096);
    if (n->cap > 65536) pbuf_reset(n, 4096);
    return rc;
}

static int pg_commit(mstore *base_)
{
    pgs *s = (pgs *)base_;
    if (s->split_failed) { /* the batch's first part is lost (settle_wire) */
        s->split_failed = false;
        if (s->in_tx) pg_rollback(&s->base);
        return PARLEY_EIO;
    }
    if (!s->in_tx) return 0;
    if (s->lost) {
        pg_rollback(&s->base);
        return PARLEY_EIO;
    }
    if (s->begin_pending) { /* no statement made it to the database */
        pend_clear(s);
        s->begin_pending = false;
        s->in_tx = false;
        s->commits++;
        return 0;
    }
    int rc = pend_flush(s);
    if (rc == 0 && !s->lost) rc = q(s, ST_COMMIT, NULL, "commit");
    else if (rc == 0) rc = PARLEY_EIO;
    /* COMMIT of an aborted transaction answers ROLLBACK, not an error. */
    if (rc == 0 && strcmp(PQcmdStatus(s->res), "COMMIT") != 0) rc = PARLEY_EIO;
    clear_res(s);
    if (rc || s->lost) {
        pg_rollback(&s->base);
        return PARLEY_EIO;
    }
    s->in_tx = false;
    s->commits++;
    return 0;
}

/* Commits the batch so far and opens the next one, joined by the same
 * caller's later writes (parley_insert's busy answer). When the commit
 * fails the batch stays open and lost: the caller's mstore_commit fails,
 * so nothing of it is acknowledged (the part that may have been written
 * is found again by a resend, as after any failed commit). */
static int split_batch(pgs *s)
{
    uint32_t writes = s->batch_writes;
    int rc = pg_commit(&s->base);
    s->in_tx = true;
    s->begin_pending = rc == 0;
    s->batch_writes = writes;
    if (rc) {
        s->lost = true;
        return rc;
    }
    s->splits++;
    return 0;
}

/* ---- opening ---- */

/* Nodes opening together take turns: the lock is held until COMMIT. */
static const char lock_sql[] = "BEGIN; SELECT pg_advisory_xact_lock(" PG_LOCK_KEY ");"
                               "CREATE TABLE IF NOT EXISTS parley_schema ("
                               " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);";

static int migrate(pgs *s)
{
    int rc = exec_simple(s, lock_sql, "locking the schema");
    if (rc) return rc;
    PGresult *r = NULL;
    if (!PQsendQuery(s->conn, "SELECT version FROM parley_schema WHERE id = 1") ||
        await(s, &r, "reading the schema version"))
        return PARLEY_EIO;
    long ver = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        plog_error("store %s: reading the schema version: %s", s->where, PQresultErrorMessage(r));
        rc = PARLEY_EIO;
    } else if (PQntuples(r) == 1) {
        ver = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    }
    PQclear(r);
    if (!rc && (ver < 0 || ver > PG_SCHEMA_VERSION)) {
        plog_error("store %s: schema version %ld, this server reads up to %d", s->where, ver,
                   PG_SCHEMA_VERSION);
        rc = PARLEY_EIO;
    }
    for (long v = ver; !rc && v < PG_SCHEMA_VERSION; v++)
        rc = exec_simple(s, migrations[v], "schema migration");
    if (!rc && ver != PG_SCHEMA_VERSION) {
        char sql[160];
        snprintf(sql, sizeof sql,
                 "INSERT INTO parley_schema(id, version) VALUES (1, %d) ON CONFLICT (id) DO "
                 "UPDATE SET version = excluded.version",
                 PG_SCHEMA_VERSION);
        rc = exec_simple(s, sql, "schema version");
        if (!rc) plog_info("store %s: schema version %ld -> %d", s->where, ver, PG_SCHEMA_VERSION);
    }
    if (!rc) return exec_simple(s, "COMMIT", "committing the schema");
    if (s->conn) exec_simple(s, "ROLLBACK", "rollback");
    return rc;
}

/* user@host:port/dbname of the URL, for logs (never the password). */
static void describe(pgs *s)
{
    char *err = NULL;
    PQconninfoOption *o = PQconninfoParse(s->url, &err);
    if (!o) {
        PQfreemem(err);
        snprintf(s->where, sizeof s->where, "postgresql (unparsable URL)");
        return;
    }
    const char *user = "", *host = "", *port = "", *db = "";
    for (PQconninfoOption *i = o; i->keyword; i++) {
        if (!i->val) continue;
        if (!strcmp(i->keyword, "user")) user = i->val;
        if (!strcmp(i->keyword, "host")) host = i->val;
        if (!strcmp(i->keyword, "port")) port = i->val;
        if (!strcmp(i->keyword, "dbname")) db = i->val;
    }
    snprintf(s->where, sizeof s->where, "postgresql://%s%s%s%s%s/%s", user, *user ? "@" : "",
             *host ? host : "localhost", *port ? ":" : "", port, db);
    PQconninfoFree(o);
}

static void timer_closed(uv_handle_t *h)
{
    free(h);
}

int mstore_pg_open(const char *url, const mstore_open_opts *o, mstore **out)
{
    *out = NULL;
    if (!url || !o) return PARLEY_EINVAL;
    pgs *s = pcalloc(1, sizeof *s);
    if (!s) return PARLEY_ENOMEM;
    s->base.ops = &pg_ops;
    s->poll_fd = -1;
    s->swept_day = INT64_MIN;
    s->loop = o->loop;
    s->timeout_ms = o->timeout_ms ? o->timeout_ms : 5000;
    s->backoff_min = o->backoff_ms ? o->backoff_ms : 100;
    s->backoff_max = o->backoff_max_ms ? o->backoff_max_ms : 5000;
    if (s->backoff_max < s->backoff_min) s->backoff_max = s->backoff_min;
    s->backoff = s->backoff_min;
    s->url = strdup(url);
    if (!s->url) {
        free(s);
        return PARLEY_ENOMEM;
    }
    describe(s);
    int rc = 0;
    if (s->loop) {
        s->timer = malloc(sizeof *s->timer);
        if (!s->timer || uv_timer_init(s->loop, s->timer) != 0) {
            free(s->timer);
            s->timer = NULL;
            rc = PARLEY_ENOMEM;
        } else {
            s->timer->data = s;
        }
        s->kick = rc ? NULL : malloc(sizeof *s->kick);
        if (!rc && (!s->kick || uv_idle_init(s->loop, s->kick) != 0)) {
            free(s->kick);
            s->kick = NULL;
            rc = PARLEY_ENOMEM;
        } else if (!rc) {
            s->kick->data = s;
        }
    }
    if (!rc) rc = connect_sync(s, false);
    if (!rc) {
        s->up = true;
        /* The statements once their tables exist. */
        rc = migrate(s);
        if (!rc && s->conn) rc = prepare_all(s);
        if (!rc && !s->conn) rc = PARLEY_EIO;
    }
    if (rc) {
        s->up = false;
        pg_close(&s->base);
        return rc == PARLEY_ENOMEM ? rc : PARLEY_EIO;
    }
    *out = &s->base;
    return 0;
}

static void pg_close(mstore *base_)
{
    pgs *s = (pgs *)base_;
    if (!s) return;
    pg_drain(&s->base);
    if (s->in_tx) pg_rollback(&s->base);
    clear_res(s);
    abandon_pending(s);
    if (s->timer) {
        uv_timer_stop(s->timer);
        uv_close((uv_handle_t *)s->timer, timer_closed);
    }
    if (s->kick) {
        uv_idle_stop(s->kick);
        uv_close((uv_handle_t *)s->kick, timer_closed);
    }
    idle_stop(s);
    if (s->conn) PQfinish(s->conn);
    pbuf_free(&s->found);
    pbuf_free(&s->arr_users);
    pbuf_free(&s->arr_bytes);
    free(s->wire);
    free(s->url);
    free(s);
}

/* ---- reading rows: checked like input ---- */

static int corrupt(const pgs *s, const char *what)
{
    plog_error("store %s: bad row: %s", s->where, what);
    return PARLEY_EIO;
}

static bool get_i64(const PGresult *r, int row, int col, int64_t *v)
{
    if (PQgetisnull(r, row, col)) return false;
    const char *t = PQgetvalue(r, row, col);
    char *end;
    errno = 0;
    long long x = strtoll(t, &end, 10);
    if (errno || end == t || *end) return false;
    *v = x;
    return true;
}

/* A text column into out (cap bytes incl. NUL): at most max bytes, at
 * least min, no NUL; NULL only when nullable (gives ""). */
static bool get_cstr(const PGresult *r, int row, int col, char *out, size_t max, bool nullable,
                     size_t min)
{
    out[0] = 0;
    if (PQgetisnull(r, row, col)) return nullable;
    const char *v = PQgetvalue(r, row, col);
    size_t n = (size_t)PQgetlength(r, row, col);
    if (n > max || n < min || memchr(v, 0, n)) return false;
    memcpy(out, v, n);
    out[n] = 0;
    return true;
}

static bool valid_conv_id(const char *v, size_t n)
{
    msg_conv c;
    return msg_conv_parse(&c, v, n);
}

static int get_ident(const pgs *s, const PGresult *r, int row, int col, char *out, size_t cap,
                     bool (*valid)(const char *, size_t), const char *what)
{
    if (PQgetisnull(r, row, col)) return corrupt(s, what);
    const char *v = PQgetvalue(r, row, col);
    size_t n = (size_t)PQgetlength(r, row, col);
    if (n >= cap || !valid(v, n)) return corrupt(s, what);
    memcpy(out, v, n);
    out[n] = 0;
    return 0;
}

static int read_msg(const pgs *s, const PGresult *r, int row, mstore_msg *out)
{
    memset(out, 0, sizeof *out);
    msg_message *m = &out->m;
    int64_t type, prio;
    if (!get_i64(r, row, 0, &m->id) || !get_i64(r, row, 2, &m->seq) || !get_i64(r, row, 5, &type) ||
        !get_i64(r, row, 6, &prio) || !get_i64(r, row, 7, &m->ts) || PQgetisnull(r, row, 8))
        return corrupt(s, "column of the wrong type");
    if (m->id <= 0 || m->id > MSG_SEQ_MAX || m->seq <= 0 || m->seq > MSG_SEQ_MAX || m->ts < 0 ||
        m->ts > MSG_SEQ_MAX)
        return corrupt(s, "id, seq or ts out of range");
    if (type < MSG_TEXT || type > MSG_SYSTEM || prio < MSG_PRIO_LOW || prio > MSG_PRIO_URGENT)
        return corrupt(s, "type or priority out of range");
    m->type = (msg_type)type;
    m->priority = (msg_priority)prio;
    int rc = get_ident(s, r, row, 1, m->conversation, sizeof m->conversation, valid_conv_id,
                       "conversation id");
    if (!rc) rc = get_ident(s, r, row, 3, m->from, sizeof m->from, msg_valid_user, "sender");
    if (!rc)
        rc = get_ident(s, r, row, 4, m->client_id, sizeof m->client_id, msg_valid_client_id,
                       "client id");
    if (rc) return rc;
    out->content_json = PQgetvalue(r, row, 8);
    out->content_len = (size_t)PQgetlength(r, row, 8);
    json_val v;
    if (json_parse(out->content_json, out->content_len, 8, &v, NULL) != 0 ||
        v.type != JSON_OBJECT || v.len != out->content_len)
        return corrupt(s, "content is not a compact JSON object");
    return 0;
}

static bool ident_ok(const char *v, size_t max)
{
    size_t n = strlen(v);
    return n >= 1 && n <= max;
}

/* Rows affected by the last write. */
static long changes(const pgs *s)
{
    return strtol(PQcmdTuples(s->res), NULL, 10);
}

/* ---- messages ---- */

static int pg_find(mstore *base_, const char *sender, const char *client_id, mstore_msg *out)
{
    pgs *s = (pgs *)base_;
    if (!ident_ok(sender, MSG_USER_MAX) || !ident_ok(client_id, MSG_CLIENT_ID_MAX)) return 0;
    params p;
    p_init(&p);
    p_str(&p, sender);
    p_str(&p, client_id);
    int rc = q(s, ST_FIND, &p, "looking up a client id");
    if (rc) return rc;
    if (PQntuples(s->res) == 0) {
        clear_res(s);
        return 0;
    }
    rc = read_msg(s, s->res, 0, out);
    s->found.len = 0;
    if (rc == 0 && pbuf_append(&s->found, out->content_json, out->content_len) != 0)
        rc = PARLEY_ENOMEM;
    clear_res(s);
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

/* The quota's parameters: the quota, and the bytes the message needs
 * with those of the sender's answered inserts in the open batch. */
static void quota_params(pgs *s, params *p, const char *sender, size_t content_len)
{
    const pend_user *e = s->quota && s->in_tx ? pend_get(s, sender, false) : NULL;
    p_i64(p, s->quota);
    p_i64(p, (int64_t)content_len + MSTORE_MSG_OVERHEAD + (e ? e->bytes : 0));
}

/* What parley_insert's answer st (not 0, stored, nor 4, busy) means. */
static int insert_refusal(pgs *s, int64_t st)
{
    switch (st) {
    case 1:
        return MSTORE_DUPLICATE;
    case 2:
        return PARLEY_ESTATE;
    case 3:
        return PARLEY_ELIMIT;
    case 5:
        return MSTORE_NOT_MEMBER;
    case 6:
        return MSTORE_OVER_QUOTA;
    default:
        s->lost = true;
        return corrupt(s, "parley_insert's answer");
    }
}

/* parley_insert's p_wait, the 14th parameter. */
#define PI_WAIT 13

static int pg_insert(mstore *base_, const msg_conv *c, const char *sender, const char *client_id,
                     msg_type type, msg_priority prio, const char *content_json, size_t content_len,
                     const char *media, const char *media_mime, int64_t now_ms, mstore_msg *out)
{
    pgs *s = (pgs *)base_;
    if (content_len > INT_MAX) return PARLEY_EINVAL;
    if (media && (!media_mime || !msg_valid_mime(media_mime, strlen(media_mime))))
        return PARLEY_EINVAL;
    if (!ident_ok(c->id, MSG_CONV_MAX) || !ident_ok(sender, MSG_USER_MAX) ||
        !ident_ok(client_id, MSG_CLIENT_ID_MAX) || (media && !ident_ok(media, 255)))
        return PARLEY_EINVAL;
    int rc = ensure_tx(s);
    if (rc) return rc;
    params p;
    p_init(&p);
    p_str(&p, c->id);
    p_str(&p, c->kind == MSG_CONV_DM ? "t" : "f");
    p_opt(&p, c->kind == MSG_CONV_DM ? c->a : NULL);
    p_opt(&p, c->kind == MSG_CONV_DM ? c->b : NULL);
    p_str(&p, sender);
    p_str(&p, client_id);
    p_i64(&p, type);
    p_i64(&p, prio);
    p_i64(&p, now_ms);
    p_bytes(&p, content_json, content_len);
    p_opt(&p, media);
    p_opt(&p, media ? media_mime : NULL);
    p_i64(&p, MSG_SEQ_MAX);
    /* A transaction that holds nothing yet may wait for the conversation;
     * one that does may not (parley_insert's comment). */
    p_str(&p, s->begin_pending ? "t" : "f");
    quota_params(s, &p, sender, content_len);
    int64_t st = -1, id = 0, seq = 0;
    for (int attempt = 0;; attempt++) {
        if ((rc = q(s, ST_INSERT, &p, "storing a message"))) return rc;
        if (PQntuples(s->res) != 1 || !get_i64(s->res, 0, 0, &st) ||
            !get_i64(s->res, 0, 1, &id) || !get_i64(s->res, 0, 2, &seq))
            st = -1;
        clear_res(s);
        if (st != 4 || attempt > 0) break;
        /* Busy: commit the batch so far (its own acknowledgements still
         * wait for the caller's mstore_commit) and wait in a new one. */
        if ((rc = split_batch(s))) return rc;
        p.v[PI_WAIT] = "t";
        p.len[PI_WAIT] = 1;
        p.n = PI_WAIT + 1; /* the batch's bytes are committed now */
        quota_params(s, &p, sender, content_len);
    }
    if (st != 0) return insert_refusal(s, st);
    if ((rc = pend_add(s, sender, (int64_t)content_len + MSTORE_MSG_OVERHEAD))) {
        s->lost = true; /* stored without its bytes: the batch must not commit */
        return rc;
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


/* ---- asynchronous calls: the pipeline ----
 *
 * Calls are queued in order (aop). Inserts and receipts are sent
 * together (send_ready, kicked once per loop iteration or by a commit:
 * BEGIN first when one opens the batch, one Sync after them) unless a
 * commit queued before them is not sent yet. A commit is sent once every
 * call before it is answered and nothing is on the wire (its stored
 * bytes are known then): the stored-bytes statement, COMMIT and a Sync;
 * the next batch's inserts may follow it at once, in a transaction of
 * their own. Answers are read when the socket is readable (the idle
 * watch, one poll for the socket) or by mstore_drain; callbacks run in
 * call order. An insert answered busy (every later one of its
 * transaction is busy too: parley_insert) waits until the wire is empty;
 * then the batch so far is committed early in the pipeline (W_SPLIT) and
 * the busy ones are sent again, in order, the first in a new transaction
 * that may wait for the conversation (settle_wire). A lost connection
 * fails every pending call with PARLEY_EIO. */

enum { A_INSERT, A_COMMIT, A_RECEIPT };
enum { Q_NEW, Q_SENT, Q_BUSY, Q_DONE };
enum { W_BEGIN, W_INSERT, W_FLUSH, W_COMMIT, W_SYNC, W_RECEIPT, W_SPLIT };

typedef struct aop {
    struct aop *next;
    uint8_t kind, state;
    int rc;
    mstore_insert_cb icb;
    mstore_commit_cb ccb;
    mstore_receipt_cb rcb;
    void *arg;
    mstore_receipt_res rr; /* A_RECEIPT: asked (delivered, read), then the answer */
    msg_conv c;
    char sender[MSG_USER_MAX + 1];
    char cid[MSG_CLIENT_ID_MAX + 1];
    char media[256];
    char mime[MSG_MIME_MAX + 1];
    bool has_media;
    msg_type type;
    msg_priority prio;
    int64_t ts, id, seq;
    size_t content_len;
    char *content;
} aop;

typedef struct wire {
    uint8_t kind;
    aop *op;
} wire;

static void aop_done(pgs *s, aop *o, int rc)
{
    if (o->state == Q_BUSY && s->nbusy) s->nbusy--;
    o->state = Q_DONE;
    o->rc = rc;
}

static int wire_push(pgs *s, uint8_t kind, aop *op)
{
    if (s->nwire == s->wire_cap) {
        unsigned cap = s->wire_cap ? s->wire_cap * 2 : 64;
        wire *w = malloc(cap * sizeof *w);
        if (!w) return PARLEY_ENOMEM;
        for (unsigned i = 0; i < s->nwire; i++) w[i] = s->wire[(s->wire_head + i) % s->wire_cap];
        free(s->wire);
        s->wire = w;
        s->wire_cap = cap;
        s->wire_head = 0;
    }
    s->wire[(s->wire_head + s->nwire) % s->wire_cap] = (wire){kind, op};
    s->nwire++;
    return 0;
}

static wire wire_pop(pgs *s)
{
    wire w = s->wire[s->wire_head];
    s->wire_head = (s->wire_head + 1) % s->wire_cap;
    s->nwire--;
    return w;
}

/* The transaction and every pending call are gone (mark_down). */
static void fail_all(pgs *s)
{
    s->nwire = 0;
    s->wire_head = 0;
    s->need_rollback = false;
    s->flush_failed = false;
    s->split_failed = false;
    s->want_write = false;
    for (aop *o = s->aq_head; o; o = o->next) {
        if (o->state == Q_DONE) continue;
        aop_done(s, o, PARLEY_EIO);
        if (o->kind == A_COMMIT && s->in_tx) { /* that batch is rolled back */
            pend_clear(s);
            s->in_tx = s->lost = s->begin_pending = false;
            s->swept_day = INT64_MIN;
        }
    }
    s->nbusy = 0;
}

/* Runs the callbacks of answered calls, in order (not nested). */
static void dispatch(pgs *s)
{
    if (s->dispatching) return;
    s->dispatching = true;
    aop *o;
    while ((o = s->aq_head) && o->state == Q_DONE) {
        s->aq_head = o->next;
        if (!s->aq_head) s->aq_tail = NULL;
        if (o->kind == A_INSERT) {
            mstore_msg m;
            memset(&m, 0, sizeof m);
            if (o->rc == 0) {
                m.m.id = o->id;
                m.m.seq = o->seq;
                m.m.ts = o->ts;
                m.m.type = o->type;
                m.m.priority = o->prio;
                copy_str(m.m.conversation, sizeof m.m.conversation, o->c.id);
                copy_str(m.m.from, sizeof m.m.from, o->sender);
                copy_str(m.m.client_id, sizeof m.m.client_id, o->cid);
                m.content_json = o->content;
                m.content_len = o->content_len;
            }
            o->icb(o->arg, o->rc, o->rc == 0 ? &m : NULL);
        } else if (o->kind == A_RECEIPT) {
            o->rcb(o->arg, o->rc, &o->rr);
        } else {
            o->ccb(o->arg, o->rc);
        }
        free(o->content);
        free(o);
    }
    s->dispatching = false;
}

static bool send_prepared(pgs *s, int st, const params *p)
{
    char name[16];
    snprintf(name, sizeof name, "s%d", st);
    return PQsendQueryPrepared(s->conn, name, p ? p->n : 0, p ? p->v : NULL, p ? p->len : NULL,
                               p ? p->fmt : NULL, 0) == 1;
}

static void insert_params(pgs *s, params *p, const aop *o, bool wait)
{
    p_init(p);
    p_str(p, o->c.id);
    p_str(p, o->c.kind == MSG_CONV_DM ? "t" : "f");
    p_opt(p, o->c.kind == MSG_CONV_DM ? o->c.a : NULL);
    p_opt(p, o->c.kind == MSG_CONV_DM ? o->c.b : NULL);
    p_str(p, o->sender);
    p_str(p, o->cid);
    p_i64(p, o->type);
    p_i64(p, o->prio);
    p_i64(p, o->ts);
    p_bytes(p, o->content, o->content_len);
    p_opt(p, o->has_media ? o->media : NULL);
    p_opt(p, o->has_media ? o->mime : NULL);
    p_i64(p, MSG_SEQ_MAX);
    p_str(p, wait ? "t" : "f");
    quota_params(s, p, o->sender, o->content_len);
}

/* Builds the stored-bytes statement's arrays: 0, 1 nothing to add, or an
 * error. */
static int pend_arrays(pgs *s, params *p)
{
    if (!s->npend) return 1;
    pbuf *u = &s->arr_users, *n = &s->arr_bytes;
    u->len = n->len = 0;
    int rc = pbuf_append(u, "{", 1);
    if (rc == 0) rc = pbuf_append(n, "{", 1);
    for (unsigned i = 0; rc == 0 && i < s->npend; i++) {
        rc = arr_add_str(u, s->pend[i].user);
        if (rc == 0) rc = pbuf_appendf(n, i ? ",%lld" : "%lld", (long long)s->pend[i].bytes);
    }
    if (rc == 0) rc = pbuf_append(u, "}", 2);
    if (rc == 0) rc = pbuf_append(n, "}", 2);
    if (rc) return rc;
    p_init(p);
    p_str(p, (const char *)u->ptr);
    p_str(p, (const char *)n->ptr);
    return 0;
}

static bool enter_pipeline(pgs *s)
{
    return PQpipelineStatus(s->conn) != PQ_PIPELINE_OFF || PQenterPipelineMode(s->conn) == 1;
}

/* Sends the open batch's stored bytes, COMMIT and a Sync: the caller's
 * commit o (W_COMMIT) or an early one (W_SPLIT). The batch is closed on
 * this side then: the next inserts may follow on the wire, in a
 * transaction of their own. 0 sent; 1 nothing sent (the stored bytes
 * could not be listed); -1 the connection failed (mark_down). */
static int send_commit(pgs *s, uint8_t kind, aop *o)
{
    params p;
    int ar = pend_arrays(s, &p);
    if (ar < 0) return 1;
    s->flush_failed = false;
    if (!enter_pipeline(s) || (ar == 0 && !send_prepared(s, ST_STORAGE_FLUSH, &p)) ||
        (ar == 0 && wire_push(s, W_FLUSH, o)) || !send_prepared(s, ST_COMMIT, NULL) ||
        wire_push(s, kind, o) || !PQpipelineSync(s->conn) || wire_push(s, W_SYNC, NULL)) {
        mark_down(s, PQerrorMessage(s->conn));
        return -1;
    }
    pend_clear(s);
    s->in_tx = false;
    s->batch_writes = 0;
    return 0;
}

/* Starts a commit whose earlier calls are all answered, the wire empty. */
static void start_commit(pgs *s, aop *o)
{
    if (!s->in_tx) {
        aop_done(s, o, s->split_failed ? PARLEY_EIO : 0);
        s->split_failed = false;
        return;
    }
    if (s->begin_pending || s->lost || s->need_rollback) {
        /* pg_commit's own cases: nothing sent, or a lost batch */
        s->need_rollback = false;
        if (s->conn && PQpipelineStatus(s->conn) != PQ_PIPELINE_OFF) PQexitPipelineMode(s->conn);
        s->in_async = true;
        aop_done(s, o, pg_commit(&s->base));
        s->in_async = false;
        return;
    }
    int rc = send_commit(s, W_COMMIT, o);
    if (rc > 0) {
        s->lost = true;
        start_commit(s, o);
        return;
    }
    if (rc < 0) return;
    o->id = (int64_t)s->tx_gen;
    o->state = Q_SENT;
}

static void send_ready_(pgs *s);

/* Sends what may go now, then one Sync for the statements sent: the
 * server answers them in one write, and an error aborts only the
 * statements of the same batch, which is lost with it anyway. */
static void send_ready(pgs *s)
{
    send_ready_(s);
    if (!s->unsynced || !s->conn || PQpipelineStatus(s->conn) == PQ_PIPELINE_OFF) {
        s->unsynced = 0;
        return;
    }
    s->unsynced = 0;
    if (!PQpipelineSync(s->conn) || wire_push(s, W_SYNC, NULL))
        mark_down(s, PQerrorMessage(s->conn));
}

static void send_ready_(pgs *s)
{
    bool before_done = true; /* every call before o answered */
    for (aop *o = s->aq_head; o; o = o->next) {
        if (o->state != Q_NEW) {
            if (o->state != Q_DONE) before_done = false;
            continue;
        }
        if (o->kind == A_COMMIT) {
            if (!before_done || s->nwire || s->nbusy) return;
            start_commit(s, o);
            if (o->state != Q_DONE) return;
            continue;
        }
        if (s->lost || (!(s->conn && s->up) && !connected(s))) {
            if (s->in_tx) s->lost = true;
            aop_done(s, o, PARLEY_EIO);
            continue;
        }
        bool first = !s->in_tx || s->begin_pending;
        if (!s->in_tx) s->batch_writes = 0;
        if (first) s->tx_gen++;
        s->in_tx = true;
        s->begin_pending = false;
        s->batch_writes++;
        params p;
        bool rcpt = o->kind == A_RECEIPT;
        if (rcpt) {
            p_init(&p);
            p_str(&p, o->c.id);
            p_str(&p, o->sender);
            p_i64(&p, o->rr.delivered);
            p_i64(&p, o->rr.read);
        } else {
            insert_params(s, &p, o, first);
        }
        if (!enter_pipeline(s) || (first && !send_prepared(s, ST_BEGIN, NULL)) ||
            (first && wire_push(s, W_BEGIN, NULL)) ||
            !send_prepared(s, rcpt ? ST_RECEIPT : ST_INSERT, &p) ||
            wire_push(s, rcpt ? W_RECEIPT : W_INSERT, o)) {
            mark_down(s, PQerrorMessage(s->conn));
            return;
        }
        s->unsynced++;
        o->state = Q_SENT;
        before_done = false;
    }
}

/* A call's statement failed: its batch is lost with it. */
static void statement_failed(pgs *s, aop *o)
{
    if (s->in_tx) s->lost = true;
    aop_done(s, o, PARLEY_EIO);
}

/* One answer for the statement at the head of the wire. */
static void take_result(pgs *s, PGresult *r)
{
    ExecStatusType es = PQresultStatus(r);
    if (es == PGRES_PIPELINE_SYNC) {
        if (s->nwire && s->wire[s->wire_head].kind == W_SYNC) wire_pop(s);
        return;
    }
    if (!s->nwire) return;
    wire w = wire_pop(s);
    bool ok = es == PGRES_COMMAND_OK || es == PGRES_TUPLES_OK;
    if (!ok && es == PGRES_FATAL_ERROR) log_err(s, "pipeline", PQresultErrorMessage(r));
    switch (w.kind) {
    case W_BEGIN:
        if (!ok) s->lost = true;
        break;
    case W_FLUSH:
        if (!ok) s->flush_failed = true;
        break;
    case W_SPLIT: {
        /* The batch so far, committed early (settle_wire). Failed, the
         * caller's commit fails too: its acknowledgements cover it. */
        bool committed = ok && !s->flush_failed && strcmp(PQcmdStatus(r), "COMMIT") == 0;
        s->flush_failed = false;
        if (committed) {
            s->commits++;
            s->splits++;
        } else {
            s->swept_day = INT64_MIN;
            s->split_failed = true;
            if (s->in_tx) s->lost = true; /* the busy ones' transaction */
        }
        break;
    }
    case W_INSERT: {
        aop *o = w.op;
        int64_t st = -1;
        if (!ok) {
            statement_failed(s, o);
            break;
        }
        if (PQntuples(r) != 1 || !get_i64(r, 0, 0, &st) || !get_i64(r, 0, 1, &o->id) ||
            !get_i64(r, 0, 2, &o->seq))
            st = -1;
        if (st == 4) {
            o->state = Q_BUSY;
            s->nbusy++;
        } else if (st != 0) {
            aop_done(s, o, insert_refusal(s, st));
        } else if (pend_add(s, o->sender, (int64_t)o->content_len + MSTORE_MSG_OVERHEAD)) {
            s->lost = true;
            aop_done(s, o, PARLEY_ENOMEM);
        } else {
            aop_done(s, o, 0);
        }
        break;
    }
    case W_RECEIPT: {
        aop *o = w.op;
        int64_t st = -1;
        if (!ok) {
            statement_failed(s, o);
            break;
        }
        if (PQntuples(r) != 1 || !get_i64(r, 0, 0, &st) || !get_i64(r, 0, 1, &o->rr.delivered) ||
            !get_i64(r, 0, 2, &o->rr.read) || !get_i64(r, 0, 3, &o->rr.last) || o->rr.last < 0)
            st = -1;
        o->rr.changed = st == 3;
        if (st == 0 || st == 3)
            aop_done(s, o, 0);
        else if (st == 1)
            aop_done(s, o, PARLEY_ESTATE);
        else if (st == 2)
            aop_done(s, o, MSTORE_BEYOND);
        else {
            s->lost = true;
            aop_done(s, o, corrupt(s, "parley_receipt's answer"));
        }
        break;
    }
    case W_COMMIT: {
        aop *o = w.op;
        bool committed = ok && !s->flush_failed && strcmp(PQcmdStatus(r), "COMMIT") == 0;
        s->flush_failed = false;
        if (committed) {
            s->commits++;
        } else {
            s->swept_day = INT64_MIN;
            /* Skipped (the stored-bytes statement failed): the transaction
             * is still open, aborted; rolled back when the wire is empty.
             * (A next batch already sent after it fails in it, and its
             * own COMMIT ends it.) */
            if (es == PGRES_PIPELINE_ABORTED && (uint64_t)o->id == s->tx_gen && !s->in_tx) {
                s->in_tx = true;
                s->lost = true;
                s->need_rollback = true;
            }
        }
        if (s->split_failed) { /* the batch's first part was lost */
            s->split_failed = false;
            committed = false;
        }
        aop_done(s, o, committed ? 0 : PARLEY_EIO);
        break;
    }
    }
}

/* Reads the answers there are (block: until the wire is empty). 0, or
 * PARLEY_EIO after the connection was dropped. */
static int read_results(pgs *s, bool block)
{
    uint64_t deadline = ptime_ms() + s->timeout_ms;
    while (s->nwire && s->conn) {
        int fl = PQflush(s->conn);
        if (fl < 0) goto broken;
        s->want_write = fl == 1;
        if (PQisBusy(s->conn)) {
            if (!block) {
                if (!PQconsumeInput(s->conn)) goto broken;
                if (PQisBusy(s->conn)) break;
            } else {
                int w = wait_fd(PQsocket(s->conn), fl == 1 ? POLLIN | POLLOUT : POLLIN, deadline);
                if (w <= 0) {
                    if (w == 0) log_err(s, "pipeline", "no answer in time");
                    goto broken;
                }
                if (!PQconsumeInput(s->conn)) goto broken;
                continue;
            }
        }
        PGresult *r = PQgetResult(s->conn);
        if (!r) continue; /* the end of one statement's results */
        take_result(s, r);
        PQclear(r);
    }
    if (s->conn && PQstatus(s->conn) != CONNECTION_OK) goto broken;
    return 0;
broken:
    mark_down(s, s->conn && PQerrorMessage(s->conn)[0] ? PQerrorMessage(s->conn) : "timeout");
    return PARLEY_EIO;
}

static int pg_insert(mstore *base_, const msg_conv *c, const char *sender, const char *client_id,
                     msg_type type, msg_priority prio, const char *content_json, size_t content_len,
                     const char *media, const char *media_mime, int64_t now_ms, mstore_msg *out);

/* With the wire empty: leaves pipeline mode; rolls back an aborted
 * batch; commits the batch so far and inserts the busy ones again. */
static void settle_wire(pgs *s)
{
    if (s->nwire || !s->conn) return;
    if (PQpipelineStatus(s->conn) != PQ_PIPELINE_OFF && !PQexitPipelineMode(s->conn)) return;
    if (s->need_rollback) { /* a COMMIT skipped after a failed statement */
        s->need_rollback = false;
        s->in_async = true;
        pg_rollback(&s->base);
        s->in_async = false;
    }
    if (!s->nbusy) return;
    if (s->lost || !s->in_tx) { /* nothing to commit early: the batch is gone */
        for (aop *o = s->aq_head; o && s->nbusy; o = o->next)
            if (o->state == Q_BUSY) aop_done(s, o, PARLEY_EIO);
        return;
    }
    /* The batch so far is committed early, in the pipeline (its stored
     * bytes with it), and the busy inserts go out again, in order, the
     * first in a new transaction that holds nothing and may wait for the
     * conversation (send_ready). The loop does not wait for either. */
    int rc = send_commit(s, W_SPLIT, NULL);
    if (rc > 0) {
        s->lost = true;
        settle_wire(s);
        return;
    }
    if (rc < 0) return;
    for (aop *o = s->aq_head; o && s->nbusy; o = o->next) {
        if (o->state != Q_BUSY) continue;
        o->state = Q_NEW;
        s->nbusy--;
    }
}

/* Progress without waiting: reads, sends, runs callbacks. */
static void pump(pgs *s)
{
    for (int round = 0; round < 4; round++) {
        if (s->nwire) read_results(s, false);
        if (!s->nwire) settle_wire(s);
        unsigned before = s->nwire;
        send_ready(s);
        if (s->conn && s->nwire) {
            int fl = PQflush(s->conn);
            if (fl < 0) {
                mark_down(s, PQerrorMessage(s->conn));
            } else {
                s->want_write = fl == 1;
            }
        }
        if (s->nwire == before || s->nwire) break;
    }
    if (s->idle && s->conn)
        uv_poll_start(s->idle, UV_READABLE | (s->want_write ? UV_WRITABLE : 0), on_idle);
    dispatch(s);
}

static void pg_drain(mstore *base_)
{
    pgs *s = (pgs *)base_;
    if (s->in_async) return;
    for (unsigned guard = 0; s->aq_head; guard++) {
        bool open = false;
        for (aop *o = s->aq_head; o; o = o->next) open |= o->state != Q_DONE;
        if (!open) break;
        if (s->nwire) {
            read_results(s, true);
            guard = 0;
            continue;
        }
        settle_wire(s);
        send_ready(s);
        if (!s->nwire && guard > 8) { /* cannot happen: fail, never hang */
            fail_all(s);
            break;
        }
    }
    settle_wire(s);
    dispatch(s);
}

static bool pg_pending(const mstore *base_)
{
    return ((const pgs *)base_)->aq_head != NULL;
}

static void on_kick(uv_idle_t *h)
{
    pgs *s = h->data;
    uv_idle_stop(h);
    pump(s);
}

/* The calls of this loop iteration go out together: at the start of the
 * next one (an idle handle, which also keeps the poll from blocking), or
 * before that with a commit (the messaging service commits once its
 * iteration's requests are handled); without a loop, at once. */
static void kick(pgs *s)
{
    if (!s->kick)
        pump(s);
    else if (!uv_is_active((uv_handle_t *)s->kick))
        uv_idle_start(s->kick, on_kick);
}

static void enqueue(pgs *s, aop *o)
{
    if (s->aq_tail)
        s->aq_tail->next = o;
    else
        s->aq_head = o;
    s->aq_tail = o;
}

static void pg_insert_async(mstore *base_, const msg_conv *c, const char *sender,
                            const char *client_id, msg_type type, msg_priority prio,
                            const char *content_json, size_t content_len, const char *media,
                            const char *media_mime, int64_t now_ms, mstore_insert_cb cb, void *arg)
{
    pgs *s = (pgs *)base_;
    aop *o = calloc(1, sizeof *o);
    if (!o) {
        cb(arg, PARLEY_ENOMEM, NULL);
        return;
    }
    o->kind = A_INSERT;
    o->icb = cb;
    o->arg = arg;
    int rc = 0;
    if (content_len > INT_MAX) rc = PARLEY_EINVAL;
    if (media && (!media_mime || !msg_valid_mime(media_mime, strlen(media_mime))))
        rc = PARLEY_EINVAL;
    if (!ident_ok(c->id, MSG_CONV_MAX) || !ident_ok(sender, MSG_USER_MAX) ||
        !ident_ok(client_id, MSG_CLIENT_ID_MAX) || (media && !ident_ok(media, 255)))
        rc = PARLEY_EINVAL;
    if (rc == 0 && !(o->content = malloc(content_len + 1))) rc = PARLEY_ENOMEM;
    if (rc == 0) {
        o->c = *c;
        copy_str(o->sender, sizeof o->sender, sender);
        copy_str(o->cid, sizeof o->cid, client_id);
        if (media) {
            o->has_media = true;
            copy_str(o->media, sizeof o->media, media);
            copy_str(o->mime, sizeof o->mime, media_mime);
        }
        o->type = type;
        o->prio = prio;
        o->ts = now_ms;
        memcpy(o->content, content_json, content_len);
        o->content[content_len] = 0;
        o->content_len = content_len;
    } else {
        o->state = Q_DONE;
        o->rc = rc;
    }
    enqueue(s, o);
    if (s->in_async) return; /* sent after the pipeline's own work */
    kick(s);
}

static void pg_receipt_async(mstore *base_, const char *conv, const char *user,
                             int64_t delivered, int64_t read, mstore_receipt_cb cb, void *arg)
{
    pgs *s = (pgs *)base_;
    aop *o = calloc(1, sizeof *o);
    if (!o) {
        mstore_receipt_res res = {0};
        cb(arg, PARLEY_ENOMEM, &res);
        return;
    }
    o->kind = A_RECEIPT;
    o->rcb = cb;
    o->arg = arg;
    if (!ident_ok(conv, MSG_CONV_MAX) || !ident_ok(user, MSG_USER_MAX) || delivered < 0 ||
        read < 0) {
        o->state = Q_DONE;
        o->rc = PARLEY_EINVAL;
    } else {
        copy_str(o->c.id, sizeof o->c.id, conv);
        copy_str(o->sender, sizeof o->sender, user);
        o->rr.delivered = delivered;
        o->rr.read = read;
    }
    enqueue(s, o);
    if (s->in_async) return;
    kick(s);
}

static void pg_commit_async(mstore *base_, mstore_commit_cb cb, void *arg)
{
    pgs *s = (pgs *)base_;
    aop *o = calloc(1, sizeof *o);
    if (!o) {
        pg_drain(base_);
        cb(arg, pg_commit(base_));
        return;
    }
    o->kind = A_COMMIT;
    o->ccb = cb;
    o->arg = arg;
    enqueue(s, o);
    if (s->in_async) return;
    pump(s);
}

/* The conversation's row: 1 with *last, 0 none, or an error. */
static int conv_get(pgs *s, const char *conv, int64_t *last)
{
    *last = 0;
    if (strlen(conv) > MSG_CONV_MAX) return PARLEY_EINVAL;
    params p;
    p_init(&p);
    p_str(&p, conv);
    int rc = q(s, ST_CONV_GET, &p, "reading a conversation");
    if (rc) return rc;
    int ret = 0;
    if (PQntuples(s->res) == 1) {
        if (!get_i64(s->res, 0, 0, last) || *last < 0 || *last >= MSG_SEQ_MAX)
            ret = corrupt(s, "last seq");
        else
            ret = 1;
    }
    clear_res(s);
    return ret;
}

static int64_t pg_last_seq(mstore *base_, const char *conv)
{
    int64_t last;
    int rc = conv_get((pgs *)base_, conv, &last);
    return rc < 0 ? rc : last;
}

static int pg_conv_exists(mstore *base_, const char *conv)
{
    int64_t last;
    return conv_get((pgs *)base_, conv, &last);
}

static int pg_is_participant(mstore *base_, const char *conv, const char *user)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_str(&p, conv);
    p_str(&p, user);
    int rc = q(s, ST_PART_GET, &p, "reading a participant");
    if (rc) return rc;
    rc = PQntuples(s->res) > 0;
    clear_res(s);
    return rc;
}

static int iterate_msgs(pgs *s, mstore_msg_fn fn, void *arg)
{
    PGresult *r = s->res;
    s->res = NULL; /* the callback may call the store */
    int stop = 0;
    for (int i = 0, n = PQntuples(r); i < n && !stop; i++) {
        mstore_msg m;
        if ((stop = read_msg(s, r, i, &m)) != 0) break;
        stop = fn(&m, arg);
    }
    PQclear(r);
    return stop;
}

static int pg_messages_after(mstore *base_, const char *conv, int64_t after, unsigned limit,
                             mstore_msg_fn fn, void *arg)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_str(&p, conv);
    p_i64(&p, after);
    p_i64(&p, limit);
    int rc = q(s, ST_MSG_AFTER, &p, "reading messages");
    return rc ? rc : iterate_msgs(s, fn, arg);
}

static int pg_messages_before(mstore *base_, const char *conv, int64_t before, unsigned limit,
                              mstore_msg_fn fn, void *arg)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_str(&p, conv);
    p_i64(&p, before > 0 ? before : MSG_SEQ_MAX);
    p_i64(&p, limit);
    int rc = q(s, ST_MSG_BEFORE, &p, "reading messages");
    return rc ? rc : iterate_msgs(s, fn, arg);
}

/* ---- participants ---- */

static int pg_receipt(mstore *base_, const char *conv, const char *user, int64_t delivered,
                      int64_t read, int64_t *d, int64_t *r, bool *changed)
{
    pgs *s = (pgs *)base_;
    *changed = false;
    params p;
    p_init(&p);
    p_str(&p, conv);
    p_str(&p, user);
    int rc = q(s, ST_PART_GET, &p, "reading watermarks");
    if (rc) return rc;
    if (PQntuples(s->res) == 0) {
        clear_res(s);
        return PARLEY_ESTATE;
    }
    int64_t od, orr;
    bool ok = get_i64(s->res, 0, 0, &od) && get_i64(s->res, 0, 1, &orr);
    clear_res(s);
    if (!ok) return corrupt(s, "watermark");
    int64_t nr = PARLEY_MAX(orr, read);
    int64_t nd = PARLEY_MAX(PARLEY_MAX(od, delivered), nr);
    *d = nd;
    *r = nr;
    if (nd == od && nr == orr) return 0;
    if ((rc = ensure_tx(s))) return rc;
    p_i64(&p, nd);
    p_i64(&p, nr);
    if ((rc = q(s, ST_PART_SET, &p, "storing a receipt"))) return rc;
    clear_res(s);
    *changed = true;
    return 0;
}

static int pg_join(mstore *base_, const char *room, const char *user, int64_t now_ms, bool *added)
{
    pgs *s = (pgs *)base_;
    *added = false;
    msg_conv c;
    msg_conv_room(&c, room);
    if (!ident_ok(user, MSG_USER_MAX)) return PARLEY_EINVAL;
    int rc = ensure_tx(s);
    if (rc) return rc;
    params p;
    p_init(&p);
    p_str(&p, c.id);
    p_i64(&p, MSG_CONV_ROOM);
    p_i64(&p, now_ms);
    if ((rc = q(s, ST_CONV_ADD, &p, "adding a conversation"))) return rc;
    p_init(&p);
    p_str(&p, c.id);
    p_str(&p, user);
    p_i64(&p, now_ms);
    if ((rc = q(s, ST_PART_ADD, &p, "adding a participant"))) return rc;
    *added = changes(s) == 1;
    clear_res(s);
    return 0;
}

static int pg_leave(mstore *base_, const char *room, const char *user)
{
    pgs *s = (pgs *)base_;
    msg_conv c;
    msg_conv_room(&c, room);
    int rc = ensure_tx(s);
    if (rc) return rc;
    params p;
    p_init(&p);
    p_str(&p, c.id);
    p_str(&p, user);
    if ((rc = q(s, ST_PART_DEL, &p, "removing a participant"))) return rc;
    rc = changes(s) == 1 ? 0 : PARLEY_ESTATE;
    clear_res(s);
    return rc;
}

static int pg_participants(mstore *base_, const char *conv, mstore_user_fn fn, void *arg)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_str(&p, conv);
    int rc = q(s, ST_PART_LIST, &p, "reading participants");
    if (rc) return rc;
    PGresult *r = s->res;
    s->res = NULL;
    int stop = 0;
    for (int i = 0, n = PQntuples(r); i < n && !stop; i++) {
        char user[MSG_USER_MAX + 1];
        int64_t d, rd;
        if ((stop = get_ident(s, r, i, 0, user, sizeof user, msg_valid_user, "participant"))) break;
        if (!get_i64(r, i, 1, &d) || !get_i64(r, i, 2, &rd)) {
            stop = corrupt(s, "watermark");
            break;
        }
        stop = fn(user, d, rd, arg);
    }
    PQclear(r);
    return stop;
}

static int pg_user_convs(mstore *base_, const char *user, mstore_conv_fn fn, void *arg)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_str(&p, user);
    int rc = q(s, ST_USER_CONVS, &p, "reading conversations");
    if (rc) return rc;
    PGresult *r = s->res;
    s->res = NULL;
    int stop = 0;
    for (int i = 0, n = PQntuples(r); i < n && !stop; i++) {
        char conv[MSG_CONV_MAX + 1];
        if ((stop = get_ident(s, r, i, 0, conv, sizeof conv, valid_conv_id, "conversation"))) break;
        stop = fn(conv, arg);
    }
    PQclear(r);
    return stop;
}

/* ---- media ---- */

static int storage_add(pgs *s, const char *user, int64_t n)
{
    params p;
    p_init(&p);
    p_str(&p, user);
    p_i64(&p, n);
    int rc = q(s, ST_STORAGE_ADD, &p, "storing usage");
    clear_res(s);
    return rc;
}

static int pg_media_put(mstore *base_, const char *id, int64_t size, const char *mime,
                        const char *user, int64_t now_ms, bool *existed)
{
    pgs *s = (pgs *)base_;
    if (size < 0) return PARLEY_EINVAL;
    if (!ident_ok(user, MSG_USER_MAX)) return PARLEY_EINVAL;
    int rc = ensure_tx(s);
    if (rc) return rc;
    params p;
    p_init(&p);
    p_str(&p, id);
    p_i64(&p, size);
    p_str(&p, mime);
    p_i64(&p, now_ms);
    if ((rc = q(s, ST_MEDIA_ADD, &p, "recording media"))) return rc;
    *existed = changes(s) == 0;
    p_init(&p);
    p_str(&p, id);
    p_str(&p, user);
    p_str(&p, mime);
    if ((rc = q(s, ST_MEDIA_UP_ADD, &p, "recording an uploader"))) return rc;
    bool first = changes(s) == 1;
    clear_res(s);
    if (first) return storage_add(s, user, size);
    rc = q(s, ST_MEDIA_UP_SET, &p, "recording an uploader's type");
    clear_res(s);
    return rc;
}

static int pg_media_for(mstore *base_, const char *id, const char *user, int64_t *size,
                        char mime[MSG_MIME_MAX + 1])
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_str(&p, id);
    p_str(&p, user);
    int rc = q(s, ST_MEDIA_FOR, &p, "reading media");
    if (rc) return rc;
    int ret = 0;
    if (PQntuples(s->res) > 0) {
        if (!get_i64(s->res, 0, 0, size) || *size < 0)
            ret = corrupt(s, "media size");
        else if ((ret = get_ident(s, s->res, 0, 1, mime, MSG_MIME_MAX + 1, msg_valid_mime,
                                  "media type")) == 0)
            ret = 1;
    }
    clear_res(s);
    return ret;
}

/* ---- usage ---- */

static int pg_usage_day(mstore *base_, const char *user, int64_t day, int64_t *uploads,
                        int64_t *bytes)
{
    pgs *s = (pgs *)base_;
    *uploads = *bytes = 0;
    params p;
    p_init(&p);
    p_str(&p, user);
    p_i64(&p, day);
    int rc = q(s, ST_USAGE_DAY_GET, &p, "reading uploads of a day");
    if (rc) return rc;
    if (PQntuples(s->res) > 0) {
        int64_t n, b;
        if (!get_i64(s->res, 0, 0, &n) || !get_i64(s->res, 0, 1, &b) || n < 0 || b < 0) {
            rc = corrupt(s, "uploads of a day");
        } else {
            *uploads = n;
            *bytes = b;
        }
    }
    clear_res(s);
    return rc;
}

static int pg_usage_add_upload(mstore *base_, const char *user, int64_t day, int64_t bytes)
{
    pgs *s = (pgs *)base_;
    if (bytes < 0 || day <= INT64_MIN + 1) return PARLEY_EINVAL;
    int rc = ensure_tx(s);
    if (rc) return rc;
    params p;
    if (day > s->swept_day) {
        p_init(&p);
        p_i64(&p, day - 1);
        if ((rc = q(s, ST_USAGE_DAY_SWEEP, &p, "deleting old uploads"))) return rc;
        clear_res(s);
        s->swept_day = day;
    }
    p_init(&p);
    p_str(&p, user);
    p_i64(&p, day);
    p_i64(&p, bytes);
    rc = q(s, ST_USAGE_DAY_ADD, &p, "counting an upload");
    clear_res(s);
    return rc;
}

static void pg_set_storage_quota(mstore *base_, int64_t bytes)
{
    ((pgs *)base_)->quota = bytes;
}

static int pg_storage_bytes(mstore *base_, const char *user, int64_t *bytes)
{
    pgs *s = (pgs *)base_;
    if (!ident_ok(user, MSG_USER_MAX)) return PARLEY_EINVAL;
    *bytes = 0;
    params p;
    p_init(&p);
    p_str(&p, user);
    int rc = q(s, ST_STORAGE_GET, &p, "reading usage");
    if (rc) return rc;
    if (PQntuples(s->res) > 0 && (!get_i64(s->res, 0, 0, bytes) || *bytes < 0))
        rc = corrupt(s, "stored bytes");
    clear_res(s);
    const pend_user *e = rc == 0 && s->in_tx ? pend_get(s, user, false) : NULL;
    if (e) *bytes += e->bytes; /* the open batch's, not written yet */
    return rc;
}

/* A count answer (one bigint row). */
static int64_t count(pgs *s, int st, const params *p, const char *what)
{
    int rc = q(s, st, p, what);
    if (rc) return rc;
    int64_t v;
    int64_t ret =
        PQntuples(s->res) == 1 && get_i64(s->res, 0, 0, &v) && v >= 0 ? v : corrupt(s, what);
    clear_res(s);
    return ret;
}

static int64_t pg_user_rooms(mstore *base_, const char *user)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_str(&p, user);
    return count(s, ST_USER_ROOMS, &p, "counting rooms");
}

static int pg_contact(mstore *base_, const char *user, const char *other)
{
    pgs *s = (pgs *)base_;
    if (!strcmp(user, other)) return 1;
    msg_conv c;
    msg_conv_dm(&c, user, other);
    params p;
    p_init(&p);
    p_str(&p, c.id);
    p_str(&p, user);
    p_str(&p, other);
    int64_t v = count(s, ST_CONTACT, &p, "looking up a contact");
    return v < 0 ? (int)v : v != 0;
}

/* ---- presence ---- */

static int pg_presence_get(mstore *base_, const char *user, int64_t *last_seen,
                           char text[MSG_PRESENCE_TEXT_MAX + 1])
{
    pgs *s = (pgs *)base_;
    *last_seen = -1;
    text[0] = 0;
    params p;
    p_init(&p);
    p_str(&p, user);
    int rc = q(s, ST_PRES_GET, &p, "reading presence");
    if (rc) return rc;
    int ret = 0;
    if (PQntuples(s->res) > 0) {
        int64_t seen = -1;
        bool ok = PQgetisnull(s->res, 0, 0) || (get_i64(s->res, 0, 0, &seen) && seen >= 0);
        if (!ok || !get_cstr(s->res, 0, 1, text, MSG_PRESENCE_TEXT_MAX, false, 0)) {
            plog_error("store %s: bad presence row for %s", s->where, user);
            text[0] = 0;
            ret = PARLEY_EIO;
        } else {
            *last_seen = seen;
            ret = 1;
        }
    }
    clear_res(s);
    return ret;
}

/* A write of one statement joining the batch. */
static int write1(pgs *s, int st, const params *p, const char *what)
{
    int rc = ensure_tx(s);
    if (rc) return rc;
    rc = q(s, st, p, what);
    clear_res(s);
    return rc;
}

static int pg_presence_seen(mstore *base_, const char *user, int64_t now_ms)
{
    params p;
    p_init(&p);
    p_str(&p, user);
    p_i64(&p, now_ms);
    return write1((pgs *)base_, ST_PRES_SEEN, &p, "storing last seen");
}

static int pg_presence_text(mstore *base_, const char *user, const char *text)
{
    if (strlen(text) > MSG_PRESENCE_TEXT_MAX) return PARLEY_EINVAL;
    params p;
    p_init(&p);
    p_str(&p, user);
    p_str(&p, text);
    return write1((pgs *)base_, ST_PRES_TEXT, &p, "storing a status text");
}

static int pg_presence_invisible(mstore *base_, const char *user)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_str(&p, user);
    int rc = q(s, ST_PRES_INV_GET, &p, "reading presence");
    if (rc) return rc;
    rc = PQntuples(s->res) > 0;
    clear_res(s);
    return rc;
}

static int pg_presence_set_invisible(mstore *base_, const char *user, bool on, int64_t now_ms)
{
    params p;
    p_init(&p);
    p_str(&p, user);
    if (on) p_i64(&p, now_ms);
    return write1((pgs *)base_, on ? ST_PRES_INV_ON : ST_PRES_INV_OFF, &p, "storing invisibility");
}

/* ---- notifications ---- */

static int read_notif(const pgs *s, const PGresult *r, int row, msg_notification *n)
{
    memset(n, 0, sizeof *n);
    int64_t type = -1, prio = -1, delivered = 0, read = 0, expires = -1;
    bool ok = get_i64(r, row, 0, &n->id) && get_i64(r, row, 2, &type) &&
              get_i64(r, row, 3, &prio) && get_i64(r, row, 9, &n->created) &&
              (PQgetisnull(r, row, 10) || get_i64(r, row, 10, &expires)) &&
              get_i64(r, row, 12, &delivered) && get_i64(r, row, 13, &read);
    n->type = (msg_ntype)type;
    n->priority = (msg_priority)prio;
    n->expires = expires;
    n->delivered = delivered != 0;
    n->read = read != 0;
    json_val arr;
    msg_error err;
    ok = ok && n->id > 0 && type >= MSG_NT_MESSAGE && type <= MSG_NT_LAST && prio >= MSG_PRIO_LOW &&
         prio <= MSG_PRIO_URGENT && n->created >= 0 &&
         get_cstr(r, row, 1, n->to, MSG_USER_MAX, false, 1) &&
         get_cstr(r, row, 4, n->title, MSG_NOTIF_TITLE_MAX, false, 1) &&
         get_cstr(r, row, 5, n->body, MSG_NOTIF_BODY_MAX, false, 0) &&
         get_cstr(r, row, 6, n->image, MSG_NOTIF_IMAGE_MAX, true, 1) &&
         get_cstr(r, row, 8, n->from, MSG_USER_MAX, true, 1) &&
         get_cstr(r, row, 11, n->dedupe, MSG_NOTIF_DEDUPE_MAX, true, 1) &&
         !PQgetisnull(r, row, 7) &&
         json_parse(PQgetvalue(r, row, 7), (size_t)PQgetlength(r, row, 7), 4, &arr, NULL) == 0 &&
         msg_parse_nactions(&arr, n->actions, &n->nactions, &err) == MSG_OK;
    if (!ok) {
        plog_error("store %s: bad notification row %lld", s->where, (long long)n->id);
        return PARLEY_EIO;
    }
    return 0;
}

static int pg_notif_insert(mstore *base_, msg_notification *n, int64_t now_ms)
{
    pgs *s = (pgs *)base_;
    params p;
    int rc;
    if (strlen(n->to) > MSG_USER_MAX || strlen(n->title) > MSG_NOTIF_TITLE_MAX ||
        strlen(n->body) > MSG_NOTIF_BODY_MAX || strlen(n->dedupe) > MSG_NOTIF_DEDUPE_MAX)
        return PARLEY_EINVAL;
    if (n->dedupe[0]) {
        p_init(&p);
        p_str(&p, n->to);
        p_str(&p, n->dedupe);
        p_i64(&p, now_ms);
        if ((rc = q(s, ST_NOTIF_DEDUPE, &p, "finding a notification by dedupe key"))) return rc;
        int ret = 0;
        if (PQntuples(s->res) > 0)
            ret = read_notif(s, s->res, 0, n) == 0 ? MSTORE_DUPLICATE : PARLEY_EIO;
        clear_res(s);
        if (ret) return ret;
    }
    if ((rc = ensure_tx(s))) return rc;
    pbuf actions = {0};
    if (msg_encode_nactions(&actions, n->actions, n->nactions) != 0) {
        pbuf_free(&actions);
        return PARLEY_ENOMEM;
    }
    p_init(&p);
    p_str(&p, n->to);
    p_i64(&p, (int64_t)n->type);
    p_i64(&p, (int64_t)n->priority);
    p_str(&p, n->title);
    p_str(&p, n->body);
    p_opt(&p, n->image);
    p_bytes(&p, (const char *)actions.ptr, actions.len);
    p_opt(&p, n->from);
    p_i64(&p, now_ms);
    if (n->expires >= 0)
        p_i64(&p, n->expires);
    else
        p_null(&p);
    p_opt(&p, n->dedupe);
    rc = q(s, ST_NOTIF_ADD, &p, "storing a notification");
    pbuf_free(&actions);
    if (rc) return rc;
    int64_t id = 0;
    bool ok = PQntuples(s->res) == 1 && get_i64(s->res, 0, 0, &id);
    clear_res(s);
    if (!ok) return corrupt(s, "notification id");
    n->id = id;
    n->created = now_ms;
    n->delivered = n->read = false;
    return 0;
}

static int pg_notif_get(mstore *base_, int64_t id, msg_notification *n)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_i64(&p, id);
    int rc = q(s, ST_NOTIF_GET, &p, "reading a notification");
    if (rc) return rc;
    int ret = 0;
    if (PQntuples(s->res) > 0) ret = read_notif(s, s->res, 0, n) == 0 ? 1 : PARLEY_EIO;
    clear_res(s);
    return ret;
}

static int pg_notif_list(mstore *base_, const char *user, int64_t since, unsigned limit,
                         int64_t now_ms, mstore_notif_fn fn, void *arg)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_str(&p, user);
    p_i64(&p, since);
    p_i64(&p, now_ms);
    p_i64(&p, limit);
    int rc = q(s, ST_NOTIF_LIST, &p, "listing notifications");
    if (rc) return rc;
    PGresult *r = s->res;
    s->res = NULL;
    msg_notification *n = malloc(sizeof *n);
    int ret = n ? 0 : PARLEY_ENOMEM;
    for (int i = 0, cnt = PQntuples(r); ret == 0 && i < cnt; i++) {
        ret = read_notif(s, r, i, n);
        if (ret == 0) ret = fn(n, arg);
    }
    free(n);
    PQclear(r);
    return ret;
}

static int64_t pg_notif_unread(mstore *base_, const char *user, int64_t now_ms)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_str(&p, user);
    p_i64(&p, now_ms);
    return count(s, ST_NOTIF_UNREAD, &p, "counting unread notifications");
}

static int pg_notif_delivered(mstore *base_, const char *user, int64_t after, int64_t upto)
{
    params p;
    p_init(&p);
    p_str(&p, user);
    p_i64(&p, after);
    p_i64(&p, upto);
    return write1((pgs *)base_, ST_NOTIF_DELIVER_RANGE, &p, "marking notifications delivered");
}

static int pg_notif_read(mstore *base_, const char *user, const int64_t *ids, size_t n, bool all,
                         int64_t now_ms, unsigned *changed)
{
    pgs *s = (pgs *)base_;
    *changed = 0;
    int rc = ensure_tx(s);
    if (rc) return rc;
    for (size_t i = 0; rc == 0 && (all ? i < 1 : i < n); i++) {
        params p;
        p_init(&p);
        if (!all) p_i64(&p, ids[i]);
        p_str(&p, user);
        p_i64(&p, now_ms);
        rc = q(s, all ? ST_NOTIF_READ_ALL : ST_NOTIF_READ_ONE, &p, "marking notifications read");
        if (rc == 0) *changed += (unsigned)changes(s);
        clear_res(s);
    }
    return rc;
}

static int pg_notif_sweep(mstore *base_, int64_t now_ms, mstore_user_list_fn fn, void *arg)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_i64(&p, now_ms);
    int ret = q(s, ST_NOTIF_EXPIRED_USERS, &p, "listing expired notifications");
    if (ret) return ret;
    PGresult *r = s->res;
    s->res = NULL;
    char user[MSG_USER_MAX + 1];
    for (int i = 0, cnt = PQntuples(r); ret == 0 && i < cnt; i++) {
        if (!get_cstr(r, i, 0, user, MSG_USER_MAX, false, 1)) continue;
        ret = fn(user, arg);
    }
    PQclear(r);
    if (ret) return ret;
    return write1(s, ST_NOTIF_SWEEP, &p, "deleting expired notifications");
}

/* A min() answer: the value, -1 for NULL, below -1 on error. */
static int64_t min_of(pgs *s, int st, const params *p, const char *what)
{
    int rc = q(s, st, p, what);
    if (rc) return rc - 1 < -1 ? rc - 1 : -2;
    int64_t v = -1;
    if (PQntuples(s->res) != 1 || (!PQgetisnull(s->res, 0, 0) && !get_i64(s->res, 0, 0, &v)))
        v = corrupt(s, what) - 1;
    clear_res(s);
    return v;
}

static int64_t pg_notif_next_expiry(mstore *base_)
{
    return min_of((pgs *)base_, ST_NOTIF_NEXT_EXPIRY, NULL, "finding the next expiry");
}

static int pg_nprefs_get(mstore *base_, const char *user, pbuf *out)
{
    pgs *s = (pgs *)base_;
    out->len = 0;
    params p;
    p_init(&p);
    p_str(&p, user);
    int rc = q(s, ST_NPREFS_GET, &p, "reading notification preferences");
    if (rc) return rc;
    int ret = 0;
    if (PQntuples(s->res) > 0) {
        int n = PQgetlength(s->res, 0, 0);
        if (PQgetisnull(s->res, 0, 0) || n <= 0)
            ret = PARLEY_EIO;
        else
            ret = pbuf_append(out, PQgetvalue(s->res, 0, 0), (size_t)n) == 0 ? 1 : PARLEY_ENOMEM;
    }
    clear_res(s);
    return ret;
}

static int pg_nprefs_set(mstore *base_, const char *user, const char *json, size_t len)
{
    if (len > INT_MAX) return PARLEY_EINVAL;
    params p;
    p_init(&p);
    p_str(&p, user);
    p_bytes(&p, json, len);
    return write1((pgs *)base_, ST_NPREFS_SET, &p, "storing notification preferences");
}

/* ---- push outbox ---- */

static int pg_push_add(mstore *base_, int64_t notif, const char *user, int64_t now_ms, int64_t *id)
{
    pgs *s = (pgs *)base_;
    int rc = ensure_tx(s);
    if (rc) return rc;
    params p;
    p_init(&p);
    p_i64(&p, notif);
    p_str(&p, user);
    p_i64(&p, now_ms);
    if ((rc = q(s, ST_PUSH_ADD, &p, "queueing a push"))) return rc;
    int64_t v = 0;
    bool ok = PQntuples(s->res) == 1 && get_i64(s->res, 0, 0, &v);
    clear_res(s);
    if (!ok) return corrupt(s, "push id");
    if (id) *id = v;
    return 0;
}

static int64_t pg_push_count(mstore *base_)
{
    return count((pgs *)base_, ST_PUSH_COUNT, NULL, "counting pushes");
}

static int pg_push_due(mstore *base_, int64_t now_ms, unsigned limit, mstore_push_fn fn, void *arg)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_i64(&p, now_ms);
    p_i64(&p, limit);
    int ret = q(s, ST_PUSH_DUE, &p, "listing due pushes");
    if (ret) return ret;
    PGresult *r = s->res;
    s->res = NULL;
    mstore_push_row row;
    for (int i = 0, cnt = PQntuples(r); ret == 0 && i < cnt; i++) {
        memset(&row, 0, sizeof row);
        int64_t att = 0;
        if (!get_i64(r, i, 0, &row.id) || !get_i64(r, i, 1, &row.notif) ||
            !get_i64(r, i, 3, &att) || !get_i64(r, i, 4, &row.next_ms) ||
            !get_i64(r, i, 5, &row.created_ms) ||
            !get_cstr(r, i, 2, row.user, MSG_USER_MAX, false, 1)) {
            plog_error("store %s: bad push_outbox row %lld", s->where, (long long)row.id);
            ret = PARLEY_EIO;
            break;
        }
        row.attempts = att < 0 ? 0 : att > UINT32_MAX ? UINT32_MAX : (uint32_t)att;
        ret = fn(&row, arg);
    }
    PQclear(r);
    return ret < 0 ? ret : 0;
}

static int64_t pg_push_next_due(mstore *base_, int64_t after_ms)
{
    params p;
    p_init(&p);
    p_i64(&p, after_ms);
    return min_of((pgs *)base_, ST_PUSH_NEXT, &p, "finding the next push");
}

static int pg_push_del(mstore *base_, int64_t id)
{
    params p;
    p_init(&p);
    p_i64(&p, id);
    return write1((pgs *)base_, ST_PUSH_DEL, &p, "deleting a push");
}

static int pg_push_retry(mstore *base_, int64_t id, const char *user, uint32_t attempts,
                         int64_t next_ms)
{
    pgs *s = (pgs *)base_;
    params p;
    p_init(&p);
    p_i64(&p, id);
    p_i64(&p, attempts);
    p_i64(&p, next_ms);
    int rc = write1(s, ST_PUSH_RETRY, &p, "rescheduling a push");
    if (rc) return rc;
    p_init(&p);
    p_str(&p, user);
    p_i64(&p, id);
    p_i64(&p, next_ms);
    return write1(s, ST_PUSH_RETRY_AFTER, &p, "rescheduling pushes");
}

/* ---- the interface ---- */

static const mstore_ops pg_ops = {
    .name = "postgresql",
    .close = pg_close,
    .in_batch = pg_in_batch,
    .up = pg_up,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .commits = pg_commits,
    .batch_writes = pg_batch_writes,
    .ping = pg_ping,
    .find = pg_find,
    .insert = pg_insert,
    .last_seq = pg_last_seq,
    .is_participant = pg_is_participant,
    .conv_exists = pg_conv_exists,
    .receipt = pg_receipt,
    .join = pg_join,
    .leave = pg_leave,
    .participants = pg_participants,
    .user_convs = pg_user_convs,
    .messages_after = pg_messages_after,
    .messages_before = pg_messages_before,
    .media_put = pg_media_put,
    .media_for = pg_media_for,
    .usage_day = pg_usage_day,
    .usage_add_upload = pg_usage_add_upload,
    .storage_bytes = pg_storage_bytes,
    .user_rooms = pg_user_rooms,
    .contact = pg_contact,
    .presence_get = pg_presence_get,
    .presence_seen = pg_presence_seen,
    .presence_text = pg_presence_text,
    .presence_invisible = pg_presence_invisible,
    .presence_set_invisible = pg_presence_set_invisible,
    .notif_insert = pg_notif_insert,
    .notif_list = pg_notif_list,
    .notif_unread = pg_notif_unread,
    .notif_delivered = pg_notif_delivered,
    .notif_read = pg_notif_read,
    .notif_sweep = pg_notif_sweep,
    .notif_next_expiry = pg_notif_next_expiry,
    .nprefs_get = pg_nprefs_get,
    .nprefs_set = pg_nprefs_set,
    .notif_get = pg_notif_get,
    .push_add = pg_push_add,
    .push_count = pg_push_count,
    .push_due = pg_push_due,
    .push_next_due = pg_push_next_due,
    .push_del = pg_push_del,
    .push_retry = pg_push_retry,
    .insert_async = pg_insert_async,
    .commit_async = pg_commit_async,
    .set_storage_quota = pg_set_storage_quota,
    .receipt_async = pg_receipt_async,
    .drain = pg_drain,
    .pending = pg_pending,
};
