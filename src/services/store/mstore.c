/* The store interface: opening by URL, and each public call passed to the
 * backend's table (mstore_backend.h). */
#include "services/store/mstore_backend.h"

#include <string.h>

#include "base/log.h"
#include "parley/parley.h"

int mstore_open(const char *path, bool full_sync, mstore **out)
{
    return mstore_sqlite_open(path, full_sync, out);
}

int mstore_open_url(const char *url, const mstore_open_opts *o, mstore **out)
{
    *out = NULL;
    if (!url || !o) return PARLEY_EINVAL;
    if (strncmp(url, "sqlite:", 7) == 0) return mstore_sqlite_open(url + 7, o->full_sync, out);
    if (strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0)
        return mstore_pg_open(url, o, out);
    plog_error("store: %s: not a store URL (sqlite:PATH or postgresql://...)", url);
    return PARLEY_EINVAL;
}

/* Pending asynchronous calls finish before any synchronous one. */
static void settle(mstore *s)
{
    if (s->ops->drain) s->ops->drain(s);
}

void mstore_insert_async(mstore *s, const msg_conv *c, const char *sender, const char *client_id,
                         msg_type type, msg_priority prio, const char *content_json,
                         size_t content_len, const char *media, const char *media_mime,
                         int64_t now_ms, mstore_insert_cb cb, void *arg)
{
    if (s->ops->insert_async) {
        s->ops->insert_async(s, c, sender, client_id, type, prio, content_json, content_len, media,
                             media_mime, now_ms, cb, arg);
        return;
    }
    mstore_msg m;
    int rc = s->ops->insert(s, c, sender, client_id, type, prio, content_json, content_len, media,
                            media_mime, now_ms, &m);
    cb(arg, rc, rc == 0 ? &m : NULL);
}

void mstore_commit_async(mstore *s, mstore_commit_cb cb, void *arg)
{
    if (s->ops->commit_async) {
        s->ops->commit_async(s, cb, arg);
        return;
    }
    cb(arg, s->ops->commit(s));
}

void mstore_receipt_async(mstore *s, const char *conv, const char *user, int64_t delivered,
                          int64_t read, mstore_receipt_cb cb, void *arg)
{
    if (s->ops->receipt_async) {
        s->ops->receipt_async(s, conv, user, delivered, read, cb, arg);
        return;
    }
    settle(s);
    mstore_receipt_res res = {0};
    int rc = 0;
    int64_t last = s->ops->last_seq(s, conv);
    if (last < 0) {
        rc = (int)last;
    } else if ((res.last = last) < delivered || last < read) {
        /* Which answer: a stranger learns nothing of the conversation. */
        int p = s->ops->is_participant(s, conv, user);
        rc = p < 0 ? p : p ? MSTORE_BEYOND : PARLEY_ESTATE;
    } else {
        rc = s->ops->receipt(s, conv, user, delivered, read, &res.delivered, &res.read,
                             &res.changed);
    }
    cb(arg, rc, &res);
}

void mstore_set_storage_quota(mstore *s, int64_t bytes)
{
    s->ops->set_storage_quota(s, bytes > 0 ? bytes : 0);
}

void mstore_drain(mstore *s)
{
    settle(s);
}

bool mstore_async_pending(const mstore *s)
{
    return s->ops->pending && s->ops->pending(s);
}

const char *mstore_backend(const mstore *s)
{
    return s->ops->name;
}

bool mstore_up(const mstore *s)
{
    return !s->ops->up || s->ops->up(s);
}

void mstore_close(mstore *s)
{
    if (s) s->ops->close(s);
}

bool mstore_in_batch(const mstore *s)
{
    return s->ops->in_batch(s);
}

int mstore_commit(mstore *s)
{
    settle(s);
    return s->ops->commit(s);
}

void mstore_rollback(mstore *s)
{
    settle(s);
    return s->ops->rollback(s);
}

uint64_t mstore_commits(const mstore *s)
{
    return s->ops->commits(s);
}

uint32_t mstore_batch_writes(const mstore *s)
{
    return s->ops->batch_writes(s);
}

int mstore_ping(mstore *s)
{
    settle(s);
    return s->ops->ping(s);
}

int mstore_find(mstore *s, const char *sender, const char *client_id, mstore_msg *out)
{
    settle(s);
    return s->ops->find(s, sender, client_id, out);
}

int mstore_insert(mstore *s, const msg_conv *c, const char *sender, const char *client_id, msg_type type, msg_priority prio, const char *content_json, size_t content_len, const char *media, const char *media_mime, int64_t now_ms, mstore_msg *out)
{
    settle(s);
    return s->ops->insert(s, c, sender, client_id, type, prio, content_json, content_len, media, media_mime, now_ms, out);
}

int64_t mstore_last_seq(mstore *s, const char *conv)
{
    settle(s);
    return s->ops->last_seq(s, conv);
}

int mstore_is_participant(mstore *s, const char *conv, const char *user)
{
    settle(s);
    return s->ops->is_participant(s, conv, user);
}

int mstore_conv_exists(mstore *s, const char *conv)
{
    settle(s);
    return s->ops->conv_exists(s, conv);
}

int mstore_receipt(mstore *s, const char *conv, const char *user, int64_t delivered, int64_t read, int64_t *d, int64_t *r, bool *changed)
{
    settle(s);
    return s->ops->receipt(s, conv, user, delivered, read, d, r, changed);
}

int mstore_join(mstore *s, const char *room, const char *user, int64_t now_ms, bool *added)
{
    settle(s);
    return s->ops->join(s, room, user, now_ms, added);
}

int mstore_leave(mstore *s, const char *room, const char *user)
{
    settle(s);
    return s->ops->leave(s, room, user);
}

int mstore_participants(mstore *s, const char *conv, mstore_user_fn fn, void *arg)
{
    settle(s);
    return s->ops->participants(s, conv, fn, arg);
}

int mstore_user_convs(mstore *s, const char *user, mstore_conv_fn fn, void *arg)
{
    settle(s);
    return s->ops->user_convs(s, user, fn, arg);
}

int mstore_messages_after(mstore *s, const char *conv, int64_t after, unsigned limit, mstore_msg_fn fn, void *arg)
{
    settle(s);
    return s->ops->messages_after(s, conv, after, limit, fn, arg);
}

int mstore_messages_before(mstore *s, const char *conv, int64_t before, unsigned limit, mstore_msg_fn fn, void *arg)
{
    settle(s);
    return s->ops->messages_before(s, conv, before, limit, fn, arg);
}

int mstore_media_put(mstore *s, const char *id, int64_t size, const char *mime, const char *user, int64_t now_ms, bool *existed)
{
    settle(s);
    return s->ops->media_put(s, id, size, mime, user, now_ms, existed);
}

int mstore_media_for(mstore *s, const char *id, const char *user, int64_t *size, char mime[MSG_MIME_MAX + 1])
{
    settle(s);
    return s->ops->media_for(s, id, user, size, mime);
}

int mstore_usage_day(mstore *s, const char *user, int64_t day, int64_t *uploads, int64_t *bytes)
{
    settle(s);
    return s->ops->usage_day(s, user, day, uploads, bytes);
}

int mstore_usage_add_upload(mstore *s, const char *user, int64_t day, int64_t bytes)
{
    settle(s);
    return s->ops->usage_add_upload(s, user, day, bytes);
}

int mstore_storage_bytes(mstore *s, const char *user, int64_t *bytes)
{
    settle(s);
    return s->ops->storage_bytes(s, user, bytes);
}

int64_t mstore_user_rooms(mstore *s, const char *user)
{
    settle(s);
    return s->ops->user_rooms(s, user);
}

int mstore_contact(mstore *s, const char *user, const char *other)
{
    settle(s);
    return s->ops->contact(s, user, other);
}

int mstore_presence_get(mstore *s, const char *user, int64_t *last_seen, char text[MSG_PRESENCE_TEXT_MAX + 1])
{
    settle(s);
    return s->ops->presence_get(s, user, last_seen, text);
}

int mstore_presence_seen(mstore *s, const char *user, int64_t now_ms)
{
    settle(s);
    return s->ops->presence_seen(s, user, now_ms);
}

int mstore_presence_text(mstore *s, const char *user, const char *text)
{
    settle(s);
    return s->ops->presence_text(s, user, text);
}

int mstore_presence_invisible(mstore *s, const char *user)
{
    settle(s);
    return s->ops->presence_invisible(s, user);
}

int mstore_presence_set_invisible(mstore *s, const char *user, bool on, int64_t now_ms)
{
    settle(s);
    return s->ops->presence_set_invisible(s, user, on, now_ms);
}

int mstore_notif_insert(mstore *s, msg_notification *n, int64_t now_ms)
{
    settle(s);
    return s->ops->notif_insert(s, n, now_ms);
}

int mstore_notif_list(mstore *s, const char *user, int64_t since, unsigned limit, int64_t now_ms, mstore_notif_fn fn, void *arg)
{
    settle(s);
    return s->ops->notif_list(s, user, since, limit, now_ms, fn, arg);
}

int64_t mstore_notif_unread(mstore *s, const char *user, int64_t now_ms)
{
    settle(s);
    return s->ops->notif_unread(s, user, now_ms);
}

int mstore_notif_delivered(mstore *s, const char *user, int64_t after, int64_t upto)
{
    settle(s);
    return s->ops->notif_delivered(s, user, after, upto);
}

int mstore_notif_read(mstore *s, const char *user, const int64_t *ids, size_t n, bool all, int64_t now_ms, unsigned *changed)
{
    settle(s);
    return s->ops->notif_read(s, user, ids, n, all, now_ms, changed);
}

int mstore_notif_sweep(mstore *s, int64_t now_ms, mstore_user_list_fn fn, void *arg)
{
    settle(s);
    return s->ops->notif_sweep(s, now_ms, fn, arg);
}

int64_t mstore_notif_next_expiry(mstore *s)
{
    settle(s);
    return s->ops->notif_next_expiry(s);
}

int mstore_nprefs_get(mstore *s, const char *user, pbuf *out)
{
    settle(s);
    return s->ops->nprefs_get(s, user, out);
}

int mstore_nprefs_set(mstore *s, const char *user, const char *json, size_t len)
{
    settle(s);
    return s->ops->nprefs_set(s, user, json, len);
}

int mstore_notif_get(mstore *s, int64_t id, msg_notification *n)
{
    settle(s);
    return s->ops->notif_get(s, id, n);
}

int mstore_push_add(mstore *s, int64_t notif, const char *user, int64_t now_ms, int64_t *id)
{
    settle(s);
    return s->ops->push_add(s, notif, user, now_ms, id);
}

int64_t mstore_push_count(mstore *s)
{
    settle(s);
    return s->ops->push_count(s);
}

int mstore_push_due(mstore *s, int64_t now_ms, unsigned limit, mstore_push_fn fn, void *arg)
{
    settle(s);
    return s->ops->push_due(s, now_ms, limit, fn, arg);
}

int64_t mstore_push_next_due(mstore *s, int64_t after_ms)
{
    settle(s);
    return s->ops->push_next_due(s, after_ms);
}

int mstore_push_del(mstore *s, int64_t id)
{
    settle(s);
    return s->ops->push_del(s, id);
}

int mstore_push_retry(mstore *s, int64_t id, const char *user, uint32_t attempts, int64_t next_ms)
{
    settle(s);
    return s->ops->push_retry(s, id, user, attempts, next_ms);
}
