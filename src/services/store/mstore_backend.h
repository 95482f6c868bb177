/*
 * The store interface, for backends (mstore_sqlite.c, mstore_pg.c): every
 * backend's handle starts with `mstore` and points at one const table of
 * its operations; mstore.c turns each public mstore_* call into a call
 * through the table. The contract of each operation is the public
 * function's, in mstore.h. Callers never include this header.
 */
#ifndef PARLEY_SERVICES_STORE_BACKEND_H
#define PARLEY_SERVICES_STORE_BACKEND_H

#include "services/store/mstore.h"

typedef struct mstore_ops {
    const char *name;
    void (*close)(mstore *s);
    bool (*in_batch)(const mstore *s);
    bool (*up)(const mstore *s); /* NULL: always */
    int (*commit)(mstore *s);
    void (*rollback)(mstore *s);
    uint64_t (*commits)(const mstore *s);
    uint32_t (*batch_writes)(const mstore *s);
    int (*ping)(mstore *s);
    int (*find)(mstore *s, const char *sender, const char *client_id, mstore_msg *out);
    int (*insert)(mstore *s, const msg_conv *c, const char *sender, const char *client_id, msg_type type, msg_priority prio, const char *content_json, size_t content_len, const char *media, const char *media_mime, int64_t now_ms, mstore_msg *out);
    void (*set_storage_quota)(mstore *s, int64_t bytes);
    int64_t (*last_seq)(mstore *s, const char *conv);
    int (*is_participant)(mstore *s, const char *conv, const char *user);
    int (*conv_exists)(mstore *s, const char *conv);
    int (*receipt)(mstore *s, const char *conv, const char *user, int64_t delivered, int64_t read, int64_t *d, int64_t *r, bool *changed);
    int (*join)(mstore *s, const char *room, const char *user, int64_t now_ms, bool *added);
    int (*leave)(mstore *s, const char *room, const char *user);
    int (*participants)(mstore *s, const char *conv, mstore_user_fn fn, void *arg);
    int (*user_convs)(mstore *s, const char *user, mstore_conv_fn fn, void *arg);
    int (*messages_after)(mstore *s, const char *conv, int64_t after, unsigned limit, mstore_msg_fn fn, void *arg);
    int (*messages_before)(mstore *s, const char *conv, int64_t before, unsigned limit, mstore_msg_fn fn, void *arg);
    int (*media_put)(mstore *s, const char *id, int64_t size, const char *mime, const char *user, int64_t now_ms, bool *existed);
    int (*media_for)(mstore *s, const char *id, const char *user, int64_t *size, char mime[MSG_MIME_MAX + 1]);
    int (*usage_day)(mstore *s, const char *user, int64_t day, int64_t *uploads, int64_t *bytes);
    int (*usage_add_upload)(mstore *s, const char *user, int64_t day, int64_t bytes);
    int (*storage_bytes)(mstore *s, const char *user, int64_t *bytes);
    int64_t (*user_rooms)(mstore *s, const char *user);
    int (*contact)(mstore *s, const char *user, const char *other);
    int (*presence_get)(mstore *s, const char *user, int64_t *last_seen, char text[MSG_PRESENCE_TEXT_MAX + 1]);
    int (*presence_seen)(mstore *s, const char *user, int64_t now_ms);
    int (*presence_text)(mstore *s, const char *user, const char *text);
    int (*presence_invisible)(mstore *s, const char *user);
    int (*presence_set_invisible)(mstore *s, const char *user, bool on, int64_t now_ms);
    int (*notif_insert)(mstore *s, msg_notification *n, int64_t now_ms);
    int (*notif_list)(mstore *s, const char *user, int64_t since, unsigned limit, int64_t now_ms, mstore_notif_fn fn, void *arg);
    int64_t (*notif_unread)(mstore *s, const char *user, int64_t now_ms);
    int (*notif_delivered)(mstore *s, const char *user, int64_t after, int64_t upto);
    int (*notif_read)(mstore *s, const char *user, const int64_t *ids, size_t n, bool all, int64_t now_ms, unsigned *changed);
    int (*notif_sweep)(mstore *s, int64_t now_ms, mstore_user_list_fn fn, void *arg);
    int64_t (*notif_next_expiry)(mstore *s);
    int (*nprefs_get)(mstore *s, const char *user, pbuf *out);
    int (*nprefs_set)(mstore *s, const char *user, const char *json, size_t len);
    int (*notif_get)(mstore *s, int64_t id, msg_notification *n);
    int (*push_add)(mstore *s, int64_t notif, const char *user, int64_t now_ms, int64_t *id);
    int64_t (*push_count)(mstore *s);
    int (*push_due)(mstore *s, int64_t now_ms, unsigned limit, mstore_push_fn fn, void *arg);
    int64_t (*push_next_due)(mstore *s, int64_t after_ms);
    int (*push_del)(mstore *s, int64_t id);
    int (*push_retry)(mstore *s, int64_t id, const char *user, uint32_t attempts, int64_t next_ms);
    /* Asynchronous calls (mstore.h); all NULL: mstore.c runs the
     * synchronous ones and calls back at once. */
    void (*insert_async)(mstore *s, const msg_conv *c, const char *sender, const char *client_id, msg_type type, msg_priority prio, const char *content_json, size_t content_len, const char *media, const char *media_mime, int64_t now_ms, mstore_insert_cb cb, void *arg);
    void (*commit_async)(mstore *s, mstore_commit_cb cb, void *arg);
    void (*receipt_async)(mstore *s, const char *conv, const char *user, int64_t delivered, int64_t read, mstore_receipt_cb cb, void *arg);
    void (*drain)(mstore *s);
    bool (*pending)(const mstore *s);
} mstore_ops;

struct mstore {
    const mstore_ops *ops;
};

#endif
