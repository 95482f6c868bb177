/*
 * The messaging store: conversations, participants with their receipt
 * watermarks, messages, the media index, presence (last seen and status
 * text per user), notifications and notification preferences, in one
 * SQLite database.
 *
 * Batches (group commit): the first write opens a transaction and every
 * later write joins it until mstore_commit(); the service commits once per
 * loop iteration and sends acknowledgements only after the commit
 * returned. mstore_rollback() undoes the whole batch. Reads see the
 * batch's own uncommitted writes (one connection).
 *
 * Durability: WAL mode; synchronous=NORMAL by default, which survives the
 * process being killed at any point (committed transactions sit in the
 * WAL in the page cache) but not power loss; `full_sync` selects
 * synchronous=FULL for that. The database is locked exclusively while
 * open: a second server on the same data directory fails to open it.
 *
 * Schema versioned (PRAGMA user_version, application_id "PMSG"); older
 * versions are migrated inside the opening transaction, newer ones are
 * refused. Rows read back are checked like any input.
 *
 * Usage for quotas: uploads per user and UTC day, and the bytes each
 * user stores (schema 4). The stored bytes are kept up to date by
 * mstore_insert and mstore_media_put themselves, counted in memory and
 * written once per user and batch just before the commit.
 *
 * Single-threaded: one loop thread uses a store. Row pointers passed to
 * callbacks are valid during the call only.
 */
#ifndef PARLEY_SERVICES_MSG_STORE_H
#define PARLEY_SERVICES_MSG_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "services/msg_schema.h"

typedef struct mstore mstore;

/* ---- backends ----
 *
 * Two backends implement this interface (mstore_backend.h): SQLite, one
 * file held by one process (the default), and PostgreSQL, shared by every
 * node of a cluster (mstore_pg.c). Every function below means the same on
 * both; where a backend differs (durability, locking, what "batch" costs)
 * its own comment says so. */
typedef struct mstore_open_opts {
    bool full_sync;          /* SQLite: synchronous=FULL */
    struct uv_loop_s *loop;  /* PostgreSQL: the loop its connection lives on */
    unsigned timeout_ms;     /* PostgreSQL: longest wait for one answer (0: 5000) */
    unsigned backoff_ms;     /* PostgreSQL: first reconnect delay (0: 100) */
    unsigned backoff_max_ms; /* PostgreSQL: longest reconnect delay (0: 5000) */
} mstore_open_opts;

/* Opens the store a URL names: `sqlite:PATH` or `postgresql://...`
 * (`postgres://` too; libpq's URI syntax). 0, PARLEY_EINVAL (not a store
 * URL), or what the backend's open returns. */
int mstore_open_url(const char *url, const mstore_open_opts *o, mstore **out);
int mstore_sqlite_open(const char *path, bool full_sync, mstore **out);
int mstore_pg_open(const char *url, const mstore_open_opts *o, mstore **out);
/* "sqlite" or "postgresql". */
const char *mstore_backend(const mstore *s);

/* SQLite: mstore_sqlite_open(path, full_sync, out).
 * Opens (creating) the database file at path. 0, PARLEY_EIO (cannot open,
 * locked by another process, not our database, newer schema, damaged),
 * or PARLEY_ENOMEM.
 *
 * An absent or zero-byte file becomes a new database, with a warning
 * naming it (an empty file beside a non-empty write-ahead log is refused:
 * SQLite would delete the log). Refused with an error naming the file and
 * the problem: not an SQLite database, shorter than its header says
 * (without a write-ahead log that may complete it), failing PRAGMA
 * quick_check. The quick check reads every page: about 1.6 s per GiB from
 * the page cache (0.04 s for 200,000 messages, 28 MB; 0.45 s for 2
 * million, 290 MB), several times that from a cold disk. Above
 * MSTORE_QUICK_CHECK_MAX bytes it leaves out the messages table (the
 * bulk) and says so, so that a store of many GiB starts in seconds. */
#define MSTORE_QUICK_CHECK_MAX ((int64_t)1 << 30)
int mstore_open(const char *path, bool full_sync, mstore **out);
/* Rolls back an open batch and closes. NULL is a no-op. */
void mstore_close(mstore *s);

bool mstore_in_batch(const mstore *s);
/* Commits the open batch (no-op without one). 0, or PARLEY_EIO after
 * which the batch has been rolled back. */
int mstore_commit(mstore *s);
void mstore_rollback(mstore *s);
/* Whether the store can take requests now: always for SQLite; for
 * PostgreSQL, false from a lost connection until it is re-established
 * (calls meanwhile fail with PARLEY_EIO at once; the service answers them
 * `unavailable`). */
bool mstore_up(const mstore *s);
/* Writes made since the store was opened and committed batches; for
 * tests and metrics. */
uint64_t mstore_commits(const mstore *s);
/* Writes (statements) in the open batch; 0 without one. */
uint32_t mstore_batch_writes(const mstore *s);
/* A cheap read that reaches the database (readiness probes). 0, or
 * PARLEY_EIO (with the reason logged) when the store does not answer or
 * its batch was lost. */
int mstore_ping(mstore *s);

/* A stored message as read back; strings valid during the callback (or
 * until the next store call for mstore_insert / mstore_find). */
typedef struct mstore_msg {
    msg_message m; /* content not parsed: see content_json */
    const char *content_json;
    size_t content_len;
} mstore_msg;

/* The message `sender` stored with client_id, if any: 1 found (*out
 * filled), 0 not found, or PARLEY_EIO. */
int mstore_find(mstore *s, const char *sender, const char *client_id, mstore_msg *out);

/* Stores a message in conversation c (DM conversations and their two
 * participants are created on first use; a room must exist, and the
 * sender be one of its members). Assigns id,
 * seq (last + 1) and ts = now_ms; media (NULL or a media id) is recorded
 * as referenced by the conversation with media_mime, the MIME type the
 * message carries (ignored without media; the first message of a
 * conversation to reference a media decides its type there). The
 * sender's stored bytes grow by content_len + MSTORE_MSG_OVERHEAD. The
 * caller has checked that the sender may post there. 0; MSTORE_DUPLICATE
 * when the sender already stored client_id (nothing is written: look it
 * up with mstore_find); MSTORE_NOT_MEMBER (a room the sender is not a
 * member of); MSTORE_OVER_QUOTA (mstore_set_storage_quota); PARLEY_EIO,
 * PARLEY_ENOMEM, PARLEY_ESTATE (room does not exist), PARLEY_EINVAL
 * (media without a valid media_mime). The checks come in that order:
 * room, membership, quota, then the duplicate. */
#define MSTORE_DUPLICATE  1
#define MSTORE_NOT_MEMBER 3
#define MSTORE_OVER_QUOTA 4
/* Inserts refuse a message that would take its sender's stored bytes
 * (mstore_storage_bytes, with this batch's) above bytes: the check is made
 * by the insert itself, with no round trip of its own. On PostgreSQL the
 * batch's inserts still in flight are not counted: a sender may go over
 * by what it has in flight in one batch. 0 = no quota (the default). */
void mstore_set_storage_quota(mstore *s, int64_t bytes);
int mstore_insert(mstore *s, const msg_conv *c, const char *sender, const char *client_id,
                  msg_type type, msg_priority prio, const char *content_json, size_t content_len,
                  const char *media, const char *media_mime, int64_t now_ms, mstore_msg *out);

/* ---- asynchronous calls ----
 *
 * The hot path without waiting for the database: on PostgreSQL the
 * statements of several calls are in flight on the connection at once
 * (libpq's pipeline mode) and their answers are read when the socket is
 * readable (on the loop of mstore_open_opts; without a loop at the next
 * synchronous call or mstore_drain). On SQLite the call runs at once and
 * its callback is called before mstore_insert_async returns.
 *
 * Callbacks run in the order the calls were made; every insert's before
 * a later commit's. A callback may be called before the async call
 * returns (an error found at once, SQLite). Callbacks may make
 * synchronous store calls. Every synchronous call (except mstore_up,
 * mstore_in_batch, mstore_commits, mstore_batch_writes) first waits for
 * the pending asynchronous ones; their callbacks run then, unless the
 * synchronous call was made from a callback (then right after it). */

/* mstore_insert's work; cb(arg, rc, m) with mstore_insert's result (m
 * only when rc is 0, valid during the call). A conversation busy on
 * another node is handled as by mstore_insert (the batch so far is
 * committed early, the message waits in a new one). */
typedef void (*mstore_insert_cb)(void *arg, int rc, const mstore_msg *m);
void mstore_insert_async(mstore *s, const msg_conv *c, const char *sender, const char *client_id,
                         msg_type type, msg_priority prio, const char *content_json,
                         size_t content_len, const char *media, const char *media_mime,
                         int64_t now_ms, mstore_insert_cb cb, void *arg);
/* mstore_commit's work: cb(arg, rc) after every earlier call's callback,
 * rc 0 only when the COMMIT succeeded (PARLEY_EIO: the batch is rolled
 * back). Calls made meanwhile belong to the next batch. */
typedef void (*mstore_commit_cb)(void *arg, int rc);
void mstore_commit_async(mstore *s, mstore_commit_cb cb, void *arg);
/* mstore_receipt's work, with the checks a receipt needs first, in one
 * call (one statement in PostgreSQL's pipeline): cb(arg, rc, res) with
 * rc 0 (res: the watermarks after, whether they moved, the last seq);
 * PARLEY_ESTATE when user is not a participant of conv (res->last is
 * still the conversation's last seq: a DM without messages has no
 * participants yet); MSTORE_BEYOND when delivered or read is beyond the
 * last seq (res->last); PARLEY_EIO, PARLEY_EINVAL. Joins the batch. */
#define MSTORE_BEYOND 2
typedef struct mstore_receipt_res {
    int64_t delivered, read, last;
    bool changed;
} mstore_receipt_res;
typedef void (*mstore_receipt_cb)(void *arg, int rc, const mstore_receipt_res *res);
void mstore_receipt_async(mstore *s, const char *conv, const char *user, int64_t delivered,
                          int64_t read, mstore_receipt_cb cb, void *arg);
/* Waits for every pending asynchronous call and runs its callback. A
 * lost connection fails them all with PARLEY_EIO. */
void mstore_drain(mstore *s);
/* Whether asynchronous calls may still be pending (false on SQLite). */
bool mstore_async_pending(const mstore *s);

/* The conversation's last seq (0 when it has no messages or does not
 * exist). Negative on error. */
int64_t mstore_last_seq(mstore *s, const char *conv);

/* 1 when user takes part in conv (a room member; one of a DM's two users
 * once the DM has a message), 0 when not, negative on error. */
int mstore_is_participant(mstore *s, const char *conv, const char *user);
/* 1 when the conversation exists (a room ever joined, a DM with a
 * message), 0 when not, negative on error. */
int mstore_conv_exists(mstore *s, const char *conv);

/* Raises user's watermarks in conv: delivered to at least `delivered`,
 * read to at least `read` (read also raises delivered). *d and *r get the
 * values after; *changed whether they moved. 0, PARLEY_ESTATE (not a
 * participant), PARLEY_EIO. */
int mstore_receipt(mstore *s, const char *conv, const char *user, int64_t delivered, int64_t read,
                   int64_t *d, int64_t *r, bool *changed);

/* Room membership. join: *added = false when already a member (the room
 * is created with its first member). leave: PARLEY_ESTATE when not a
 * member. */
int mstore_join(mstore *s, const char *room, const char *user, int64_t now_ms, bool *added);
int mstore_leave(mstore *s, const char *room, const char *user);

/* Iterations: the callback returns 0 to continue, anything else to stop
 * (returned by the iteration). PARLEY_EIO on storage errors. */
typedef int (*mstore_user_fn)(const char *user, int64_t delivered, int64_t read, void *arg);
/* Participants of conv in user order, with their watermarks. */
int mstore_participants(mstore *s, const char *conv, mstore_user_fn fn, void *arg);

typedef int (*mstore_conv_fn)(const char *conv, void *arg);
/* Conversations user takes part in, in id order. */
int mstore_user_convs(mstore *s, const char *user, mstore_conv_fn fn, void *arg);

typedef int (*mstore_msg_fn)(const mstore_msg *m, void *arg);
/* Messages of conv with seq > after, ascending, at most limit. */
int mstore_messages_after(mstore *s, const char *conv, int64_t after, unsigned limit,
                          mstore_msg_fn fn, void *arg);
/* Messages of conv with seq < before (0: all), the newest `limit` of
 * them, ascending. */
int mstore_messages_before(mstore *s, const char *conv, int64_t before, unsigned limit,
                           mstore_msg_fn fn, void *arg);

/* Media index. put: records the upload by `user` with its own MIME type (the content is already on
 * disk; the same user uploading the same bytes again with another type
 * changes their type); *existed when the media was known before. A
 * user's first upload of a blob adds its size to their stored bytes
 * (once per user and blob). Joins the batch. */
int mstore_media_put(mstore *s, const char *id, int64_t size, const char *mime, const char *user,
                     int64_t now_ms, bool *existed);
/* Media id as `user` sees it: 1 when it exists and is visible to them
 * (they uploaded it, or take part in a conversation where a message
 * references it), with its size and the MIME type for
 * them: their own upload's type when they uploaded it, otherwise the type
 * of the earliest reference from a conversation they take part in. 0 when
 * it does not exist or is not visible (one answer for both, so that
 * callers cannot become an existence oracle); negative on error. */
int mstore_media_for(mstore *s, const char *id, const char *user, int64_t *size,
                     char mime[MSG_MIME_MAX + 1]);

/* ---- usage, for quotas ---- */

/* The UTC day of a Unix time in ms: days since 1970-01-01. */
static inline int64_t mstore_utc_day(int64_t unix_ms)
{
    int64_t d = unix_ms / 86400000;
    return unix_ms < 0 && d * 86400000 != unix_ms ? d - 1 : d;
}
/* Media uploads by user on UTC day `day` (mstore_utc_day): their number
 * and bytes, 0 and 0 when none. Days before yesterday (relative to the
 * latest day added) may have been deleted. 0 or PARLEY_EIO. */
int mstore_usage_day(mstore *s, const char *user, int64_t day, int64_t *uploads, int64_t *bytes);
/* Counts one upload of `bytes` (>= 0) by user on `day`; the first upload
 * of a later day than any before deletes the rows older than the day
 * before it. Joins the batch. 0, PARLEY_EINVAL, PARLEY_EIO. */
int mstore_usage_add_upload(mstore *s, const char *user, int64_t day, int64_t bytes);

/* The bytes a user stores: content_len + MSTORE_MSG_OVERHEAD per message
 * they sent (the overhead stands for the row, its keys and indexes),
 * plus the size of each distinct blob they uploaded. Reflects the open
 * batch. 0, PARLEY_EINVAL (not a user id), PARLEY_EIO, PARLEY_ENOMEM. */
#define MSTORE_MSG_OVERHEAD 128
int mstore_storage_bytes(mstore *s, const char *user, int64_t *bytes);

/* The number of rooms (not DMs) user is a member of; negative on error. */
int64_t mstore_user_rooms(mstore *s, const char *user);

/* Whether `other` is a contact of `user`: user wrote in their direct
 * conversation, or the two are members of a common room. 1, 0, or
 * negative on error. (Who may raise urgent notifications for user.) */
int mstore_contact(mstore *s, const char *user, const char *other);

/* Presence: what outlives the connections. get: 1 found (*last_seen,
 * -1 when never set, and text filled), 0 unknown user (-1 and ""),
 * negative on error. seen: records when the user was last connected.
 * text: the user's status text ("" clears). Both join the batch. */
int mstore_presence_get(mstore *s, const char *user, int64_t *last_seen,
                        char text[MSG_PRESENCE_TEXT_MAX + 1]);
int mstore_presence_seen(mstore *s, const char *user, int64_t now_ms);
int mstore_presence_text(mstore *s, const char *user, const char *text);
/* "Appear offline" (schema 5): invisible gives 1 when the user chose it,
 * 0 when not, negative on error. set_invisible records the choice (now_ms:
 * when it was turned on; kept when it already was). Joins the batch. */
int mstore_presence_invisible(mstore *s, const char *user);
int mstore_presence_set_invisible(mstore *s, const char *user, bool on, int64_t now_ms);

/* Notifications (schema 3). Expired rows (expires <= now_ms) are never
 * returned nor counted, swept or not.
 * insert: n holds the request (to, type, ..., dedupe); fills id and
 * created. When n->dedupe names an unexpired notification of the same
 * recipient nothing is written, *n becomes the stored one and the result
 * is MSTORE_DUPLICATE. Joins the batch. */
int mstore_notif_insert(mstore *s, msg_notification *n, int64_t now_ms);
typedef int (*mstore_notif_fn)(const msg_notification *n, void *arg);
/* user's notifications with id > since, ascending, at most limit. */
int mstore_notif_list(mstore *s, const char *user, int64_t since, unsigned limit, int64_t now_ms,
                      mstore_notif_fn fn, void *arg);
/* Unread count, or negative on error. */
int64_t mstore_notif_unread(mstore *s, const char *user, int64_t now_ms);
/* Marks user's notifications with after < id <= upto delivered. */
int mstore_notif_delivered(mstore *s, const char *user, int64_t after, int64_t upto);
/* Marks ids (or all) of user's unexpired notifications read; foreign and
 * unknown ids are ignored; *changed counts rows that became read. */
int mstore_notif_read(mstore *s, const char *user, const int64_t *ids, size_t n, bool all,
                      int64_t now_ms, unsigned *changed);
/* Deletes expired notifications; first calls fn for every user who had
 * unread ones among them (their count changes). */
typedef int (*mstore_user_list_fn)(const char *user, void *arg);
int mstore_notif_sweep(mstore *s, int64_t now_ms, mstore_user_list_fn fn, void *arg);
/* The earliest expiry stored, -1 when none, below -1 on error. */
int64_t mstore_notif_next_expiry(mstore *s);
/* Preferences as stored JSON (the Preferences object): 1 found (out
 * holds it), 0 none, negative on error. set joins the batch. */
int mstore_nprefs_get(mstore *s, const char *user, pbuf *out);
int mstore_nprefs_set(mstore *s, const char *user, const char *json, size_t len);

/* One notification by id, expired or not: 1 found, 0 none, negative on
 * error. */
int mstore_notif_get(mstore *s, int64_t id, msg_notification *n);

/* The push outbox (schema 5; services/server/push.h): rows to POST to the push
 * webhook. add joins the batch (the notification's own, so both commit
 * together); a user's new row is not due before that user's oldest row.
 * due: calls fn for rows with next_ms <= now_ms that are the oldest of
 * their user, by (next_ms, id), at most limit; fn returns non-zero to
 * stop (a negative value is returned). next_due: the earliest next_ms
 * above after_ms, -1 when none, below -1 on error. del and retry join
 * the batch; retry also holds the user's later rows until next_ms. */
typedef struct mstore_push_row {
    int64_t id, notif;
    char user[MSG_USER_MAX + 1];
    uint32_t attempts;
    int64_t next_ms, created_ms;
} mstore_push_row;
typedef int (*mstore_push_fn)(const mstore_push_row *r, void *arg);
int mstore_push_add(mstore *s, int64_t notif, const char *user, int64_t now_ms, int64_t *id);
int64_t mstore_push_count(mstore *s);
int mstore_push_due(mstore *s, int64_t now_ms, unsigned limit, mstore_push_fn fn, void *arg);
int64_t mstore_push_next_due(mstore *s, int64_t after_ms);
int mstore_push_del(mstore *s, int64_t id);
int mstore_push_retry(mstore *s, int64_t id, const char *user, uint32_t attempts, int64_t next_ms);

/* The SQLite handle, for tests that need to reach under the store. */
void *mstore__db(mstore *s);
/* MSTORE_QUICK_CHECK_MAX, lowered by tests of the larger stores' check. */
extern int64_t mstore__check_max;

#endif
