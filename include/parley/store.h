/*
 * libparley reactive state store: the messaging client's state as
 * observable values, for UIs and FFI hosts (the C counterpart of a
 * Riverpod/Redux store).
 *
 *     void show(parley_store *s, const char *key, const char *json, size_t len, void *ui)
 *     {
 *         ui_render(ui, key, json);      // the latest value, JSON text
 *     }
 *
 *     parley_chat_opts co;               // as for parley_chat_new
 *     parley_chat_opts_init(&co);
 *     co.url = "https://chat.example.com";
 *     co.user_id = "alice";
 *     ...
 *     parley_store_opts so;
 *     parley_store_opts_init(&so);
 *     so.chat = &co;
 *     so.cache_path = "alice.store";    // the last known state, offline
 *     so.dispatch_fd = 1;               // deliver on my thread
 *     parley_store *st;
 *     parley_store_new(&so, &st);
 *     parley_store_watch(st, "connection", show, ui);
 *     parley_store_watch(st, "messages/dm:alice:bob", show, ui);
 *     // in the GUI loop: poll(parley_store_fd(st)) readable ->
 *     parley_store_dispatch(st);
 *
 * Ownership of the chat: the store creates the parley_chat from so.chat
 * and observes it by taking its callbacks; the application's callbacks in
 * so.chat still run, after the store has taken the event in (so a
 * snapshot taken inside them already shows it). parley_store_chat gives
 * the chat for everything else (history, rooms, receipts); the store
 * frees it. Send through parley_store_send for this device's messages to
 * appear in the message lists with their status: the chat reports them
 * by status only, without their content.
 *
 * Keys and values (JSON text, compact):
 * - "connection": {"state": "offline"|"connecting"|"syncing"|"online"|
 *   "refused"} plus "code" and "message" when refused.
 * - "typing/<conversation>": the other users typing there, sorted:
 *   ["bob","carol"]. Emptied when the connection drops (the server's stop
 *   events cannot arrive then).
 * - "messages/<conversation>": the last max_messages messages, ascending
 *   seq, then this device's unsent ones in send order. Each is
 *   {"id","seq","ts","from","client_id","mine","type","priority",
 *   "content","text"} as in parley_chat_message, plus for messages of this
 *   user "status": "sending"|"sent"|"delivered"|"read"|"failed" (delivered
 *   and read follow the other participants' receipts). An unsent message
 *   has "id" and "seq" 0 and "ts" the local send time (ms since the epoch);
 *   a sent one keeps that local "ts" (the server's time is not reported to
 *   the sender).
 * - "presence/<user>": the user's Presence as the server last reported
 *   it (an event, or the answer of parley_chat_presence_set, _subscribe or
 *   _room): {"user","status": "online"|"away"|"busy"|"offline","text",
 *   "last_seen": ms or null,"devices"}. A user nothing was heard of has
 *   the object the server itself gives a user id nobody used:
 *   {"user":id,"status":"offline","text":"","last_seen":null,
 *   "devices":0}; so "offline" may mean "not known yet": subscribe
 *   (parley_chat_presence_subscribe) to learn and follow the real state.
 *   Values are the last known: they stay while this client is
 *   disconnected (subscriptions are renewed, and their answers refresh
 *   the values, on reconnection; room members' are not: ask with
 *   parley_chat_presence_room). A report equal to the value is no change.
 * - "presence": every user reported so far (the same objects), keyed by
 *   user id in id order: {"alice":{...},"bob":{...}}; {} at first.
 * - "notifications": the newest max_notifications notifications the chat
 *   reported (live or synced), ascending id, each the server's
 *   Notification object ({"id","type","priority","title","body","image",
 *   "actions","from","created","expires","dedupe_key", ...}) with
 *   "delivered" and "read" last. "read" becomes true when this device's
 *   parley_chat_notifications_read / _read_all is acknowledged, or for
 *   all of them when the unread count drops to 0 (the server tells other
 *   devices' reads only as a count). One already expired when it arrives
 *   is not listed. [] at first.
 * - "notifications/unread": the user's unread count, a number (the
 *   server's `unread` events and the sync and read answers); 0 at first.
 * - "ws/<name>/state": a raw WebSocket client (parley/ws.h) the
 *   application put under a name with parley_store_watch_ws:
 *   {"state": "idle"|"connecting"|"open"|"reconnecting"|"closed",
 *   "attempt": n} plus "delay_ms" while reconnecting (the wait before
 *   attempt n), "reason" (the event's: "connection lost", "ping timeout",
 *   "connect failed", ...) and "code" (the close code, when a connection
 *   ended) after a connection or attempt ended, "http_status" when a
 *   handshake was refused. "closed" is final only without reconnection
 *   (or after the last attempt). {"state":"idle","attempt":0} for a name
 *   not watched (also after parley_store_unwatch_ws). Not cached.
 * Conversations are ids as in PROTOCOL.md ("dm:alice:bob", "room:general")
 * and users valid user ids, ws names 1..64 characters of [A-Za-z0-9._-];
 * any other key is PARLEY_EINVAL. Every valid
 * key has a value from the start ({"state":"offline"}, [], [], the
 * unknown-user object, {}, [], 0).
 *
 * Change notifications are coalesced: a watcher is called with the value
 * as it is when delivery runs, once, however many changes came since its
 * last call; a watcher is called once soon after watch with the current
 * value.
 *
 * Delivery: by default on the chat's loop thread at the end of the loop
 * iteration in which values changed. With dispatch_fd, parley_store_fd is
 * readable while deliveries are pending and parley_store_dispatch runs
 * them on the caller's thread (a GUI loop, a Dart isolate, Python).
 *
 * Cache (cache_path): "messages/...", "presence/<user>" of every user
 * listed in "presence", "notifications" and "notifications/unread" are
 * written to SQLite behind the loop (a writer thread, batched every
 * cache_flush_ms in one transaction, and once more by parley_store_free)
 * and loaded by parley_store_new, before connecting, so a store created
 * offline shows them as they were (snapshots and first watch calls,
 * "presence" included); the chat then syncs from the newest cached seq of
 * each conversation. "connection" and "typing/..." are live state, not
 * cached. Once online, cached values stay until the server says
 * otherwise: a cached presence (status, text, last_seen, devices) until a
 * report on that user (subscribe again to follow it); cached
 * notifications are merged by id with the sync after connecting and live
 * ones (new ids added, "delivered" and "read" only ever set), bounded by
 * max_notifications; the unread count is replaced by the server's.
 * Rows are checked when loaded (with the protocol's parsers): one that is
 * not a valid value of its key is skipped with a warning and deleted.
 * Cache files written by earlier versions (messages only) load as before.
 * A cached unsent message is resent from the chat's queue file
 * (chat.queue_path) and goes on from "sending"; without a queue file it is
 * "failed" (nothing will send it).
 *
 * Threads: every function may be called from any thread, except
 * parley_store_free (not from a store or chat callback, and not while
 * parley_store_dispatch runs on another thread). Watch callbacks
 * run on the loop thread (default) or the thread calling
 * parley_store_dispatch, never inside another store call, one at a time;
 * they may call any store function but parley_store_free. key and json
 * passed to them are valid during the call only.
 */
#ifndef PARLEY_STORE_H
#define PARLEY_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "parley/chat.h"
#include "parley/parley.h"
#include "parley/ws.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct parley_store parley_store;

/* A key's value changed (or, the first time, its current value). json is
 * json[0, len), NUL-terminated. */
typedef void (*parley_store_fn)(parley_store *s, const char *key, const char *json, size_t len,
                                void *user);

typedef struct parley_store_opts {
    size_t size; /* sizeof the struct, set by parley_store_opts_init (see parley.h) */
    /* The chat to create (required; copied as parley_chat_new does). Its
     * callbacks run after the store's. */
    const parley_chat_opts *chat;
    size_t max_messages; /* kept per conversation; default 200 */
    /* 0: callbacks on the loop thread. 1: on the thread calling
     * parley_store_dispatch when parley_store_fd is readable. */
    int dispatch_fd;
    /* SQLite file for the last known state (messages, presence,
     * notifications, unread); NULL: none */
    const char *cache_path;
    uint32_t cache_flush_ms;  /* how long changes gather before a write; default 250 */
    size_t max_notifications; /* kept in "notifications" (the newest); default 100 */
} parley_store_opts;

/* Defaults into the first `size` bytes of *o, o->size = min(size,
 * sizeof); call it as parley_store_opts_init(&o) (see parley.h). */
PARLEY_API void parley_store_opts_init_size(parley_store_opts *o, size_t size);
#define parley_store_opts_init(o) parley_store_opts_init_size((o), sizeof *(o))

/* Creates the store and its chat: loads the cache, then (with the chat's
 * auto_connect) connects. Errors: PARLEY_EINVAL (no chat options, or as
 * parley_chat_new), PARLEY_EIO (the cache file cannot be opened or is not
 * a store cache), the errors of parley_chat_new, PARLEY_ENOMEM. */
PARLEY_API int parley_store_new(const parley_store_opts *o, parley_store **out);

/* Frees the chat and the store (the cache gets its last write first).
 * Not from a callback. */
PARLEY_API void parley_store_free(parley_store *s);

/* The chat (owned by the store): history, rooms, receipts, typing. */
PARLEY_API parley_chat *parley_store_chat(parley_store *s);

/* Calls fn(s, key, value, user) with the current value soon, then after
 * changes (coalesced). Returns the watch id (> 0), or PARLEY_EINVAL (key
 * not a store key, fn NULL), PARLEY_ENOMEM. */
PARLEY_API int64_t parley_store_watch(parley_store *s, const char *key, parley_store_fn fn,
                                      void *user);

/* Stops a watch: no call for it starts after this returns, and when
 * called from another thread than the one delivering, a call in progress
 * has finished (so user may be freed). 0, or PARLEY_EINVAL (unknown id). */
PARLEY_API int parley_store_unwatch(parley_store *s, int64_t id);

/* The current value of key as a NUL-terminated string the caller frees
 * with parley_free (or free), its length in *len (may be NULL); NULL when key is not
 * a store key or memory ran out. */
PARLEY_API char *parley_store_get(parley_store *s, const char *key, size_t *len);

/* dispatch_fd mode: a descriptor that polls readable while deliveries are
 * pending (owned by the store; only poll it). -1 in the default mode. */
PARLEY_API int parley_store_fd(parley_store *s);

/* dispatch_fd mode: runs the pending callbacks on this thread and clears
 * the readiness. Returns how many callbacks ran, or PARLEY_ESTATE in the
 * default mode. */
PARLEY_API int parley_store_dispatch(parley_store *s);

/* parley_chat_send, and the message enters "messages/<conversation>" at
 * once as "sending" (then sent, delivered, read or failed). Same
 * arguments and errors; on an error nothing is added. */
PARLEY_API int parley_store_send(parley_store *s, const parley_chat_send_opts *o,
                                 char client_id_out[37], parley_chat_error *err);

/* Publishes the connection state of ws, a raw WebSocket client of the
 * application (on any loop), as "ws/<name>/state": the store observes
 * its connection events (before the ws's own on_event) from now on, and
 * the value starts from the ws's state at this call. At most one store
 * observes a ws, and a store at most 64 of them. The ws must stay alive
 * until parley_store_unwatch_ws or parley_store_free; neither may be
 * called from a callback of the store or of the ws. Errors: PARLEY_EINVAL
 * (name not 1..64 of [A-Za-z0-9._-], ws NULL), PARLEY_ESTATE (the name or
 * the ws is observed already), PARLEY_EFULL (64), PARLEY_ENOMEM. */
PARLEY_API int parley_store_watch_ws(parley_store *s, const char *name, parley_ws *ws);
/* Stops observing ws (before parley_ws_free); its key goes back to
 * {"state":"idle","attempt":0}. 0 or PARLEY_EINVAL (not observed). */
PARLEY_API int parley_store_unwatch_ws(parley_store *s, parley_ws *ws);

#ifdef __cplusplus
}
#endif
#endif
