/*
 * libparley messaging client: the client half of parleyd's messaging
 * protocol (docs/PROTOCOL.md, "Messaging"), on the Socket.IO client
 * (parley/client.h) and its outbound queue.
 *
 *     char *token(parley_chat *c, void *app) { return strdup(app_jwt(app)); }
 *
 *     parley_chat_opts o;
 *     parley_chat_opts_init(&o);
 *     o.url = "https://chat.example.com";
 *     o.user_id = "alice";              // the token's subject
 *     o.token = token;                  // asked on every (re)connection
 *     o.queue_path = "alice.queue";     // unsent messages survive a restart
 *     o.on_message = show_message;      // every message, live or synced
 *     o.on_status = show_status;        // sending -> sent -> delivered -> read / failed
 *     parley_chat *chat;
 *     parley_chat_new(&o, &chat);       // connects, syncs, stays connected
 *     char id[37];
 *     parley_chat_send_text(chat, "bob", "hi", id);
 *
 * What it does for the application:
 * - Sends go through the persistent outbound queue: a message sent while
 *   offline is SENDING and goes out on reconnection, exactly once (the
 *   client id is the idempotency key the server de-duplicates on).
 * - A queued send (message or receipt) that the server refuses for now
 *   (rate_limited, or quota_exceeded / storage_full, with retry_after_ms)
 *   does not fail: it stays SENDING in its place, the queue sends nothing
 *   for retry_after_ms plus up to 10% of jitter (also across a
 *   reconnection), then resends it, alone, and the rest once it is
 *   answered, so order holds. Its time to live still runs meanwhile
 *   (FAILED "expired"). Other refusals make it FAILED.
 * - After every (re)connection it syncs from the last seq it has per
 *   conversation, so messages arrive in order, with no gap and no
 *   duplicate, whether they came live or while the device was away; and
 *   the receipts in the answer tell a sender that was offline what was
 *   delivered or read meanwhile.
 * - Received messages are acknowledged as delivered automatically
 *   (auto_delivered); read receipts are the application's call
 *   (parley_chat_mark_read).
 * - A typing indicator is refreshed while on and stopped on request.
 *
 * Threads: like parley_client (it runs on the client's loop: its own
 * thread by default, or opts.loop). Every function may be called from any
 * thread except parley_chat_free, which must not be called from a
 * callback. Callbacks run on the loop thread; pointers passed to them are
 * valid only during the call.
 */
#ifndef PARLEY_CHAT_H
#define PARLEY_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "parley/client.h"
#include "parley/parley.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct parley_chat parley_chat;

/* Status of a message this client sends. */
typedef enum parley_msg_status {
    PARLEY_MSG_SENDING = 1, /* queued or on the wire, not yet stored */
    PARLEY_MSG_SENT,        /* the server stored it (seq known) */
    PARLEY_MSG_DELIVERED,   /* another participant's device received it */
    PARLEY_MSG_READ,        /* another participant read it */
    PARLEY_MSG_FAILED,      /* refused by the server, or expired unsent */
} parley_msg_status;

/* Connection state of the chat. */
typedef enum parley_chat_state {
    PARLEY_CHAT_OFFLINE = 1, /* not connected (reconnecting unless closed) */
    PARLEY_CHAT_CONNECTING,
    PARLEY_CHAT_SYNCING, /* connected, catching up */
    PARLEY_CHAT_ONLINE,  /* caught up; events arrive live */
    PARLEY_CHAT_REFUSED, /* the server refused the identity (code says
                            why: token_expired, invalid_token, ...);
                            parley_chat_connect tries again */
} parley_chat_state;

/* A protocol error: code as in docs/PROTOCOL.md ("invalid_field", ...),
 * the offending field's path or "", and a message for humans. */
typedef struct parley_chat_error {
    char code[32];
    char field[48];
    char message[160];
    /* > 0: the server's hint that the same request may succeed when made
     * again after this many ms (rate_limited, quota_exceeded,
     * storage_full); 0 when it gave none (and for client-side errors). */
    int64_t retry_after_ms;
} parley_chat_error;

/* A message (received, synced, or from history). */
typedef struct parley_chat_message {
    int64_t id;               /* server id */
    int64_t seq;              /* position in the conversation: 1, 2, ... */
    int64_t ts;               /* server time, ms since the epoch */
    const char *conversation; /* "dm:alice:bob", "room:general" */
    const char *from;         /* the sender's user id */
    const char *client_id;    /* the sender's idempotency id */
    const char *type;         /* "text", "image", "file", "audio", "video", "location", "system" */
    const char *priority;     /* "low", "normal", "high", "urgent" */
    const char *content_json; /* the content object, compact JSON */
    size_t content_len;
    const char *text; /* text/system body, caption, file name or
                         location label, decoded; "" when none */
    int mine;         /* sent by this user (from any device) */
} parley_chat_message;

/* A step in the life of a message this client sent. */
typedef struct parley_chat_status {
    const char *client_id;
    parley_msg_status status;
    const char *conversation;       /* "" until SENT */
    int64_t seq;                    /* 0 until SENT */
    int64_t id;                     /* server id; 0 until SENT */
    int duplicate;                  /* SENT: the server had it already (a resend) */
    const parley_chat_error *error; /* FAILED: why ("expired" when its
                                       time to live passed unsent) */
} parley_chat_status;

typedef void (*parley_chat_status_fn)(parley_chat *c, const parley_chat_status *st, void *user);

/* A notification (docs/PROTOCOL.md, "Notifications": the Notification
 * object). Strings are decoded; optional ones are NULL when null. */
typedef struct parley_chat_notification {
    int64_t id;           /* the server's, increasing */
    const char *type;     /* "message", "mention", "assignment", "deadline", "system",
                             "achievement", "reminder", "alert" */
    const char *priority; /* "low", "normal", "high", "urgent" */
    const char *title;
    const char *body;         /* "" when none */
    const char *image;        /* http(s) URL, or NULL */
    const char *actions_json; /* [{"id","label"}, ...] compact JSON; "[]" when none */
    size_t actions_len;
    const char *from;       /* the sender's user id; NULL when sent through the HTTP API */
    int64_t created;        /* ms since the epoch */
    int64_t expires;        /* ms since the epoch; 0: never */
    const char *dedupe_key; /* or NULL */
    int delivered, read;    /* as the server had them when it sent this */
    int live;               /* 1: pushed (a `notification` event); 0: from a sync */
    const char *json;       /* the whole object as the server sent it (compact JSON) */
    size_t json_len;
} parley_chat_notification;

/* A user's presence status (docs/PROTOCOL.md, "Presence"). The values are
 * ordered by availability; OFFLINE is only ever reported, never chosen. */
typedef enum parley_presence {
    PARLEY_PRESENCE_OFFLINE = 0, /* no device connected */
    PARLEY_PRESENCE_BUSY = 1,
    PARLEY_PRESENCE_AWAY = 2, /* chosen, or an idle online device */
    PARLEY_PRESENCE_ONLINE = 3,
} parley_presence;

/* A user's presence as the server computed it: the aggregate over the
 * user's devices. */
typedef struct parley_chat_presence {
    const char *user;
    parley_presence status;
    const char *text;  /* the user's status text; "" when none */
    int64_t last_seen; /* ms since the epoch (now while online); -1: never connected */
    unsigned devices;  /* connected sockets of the user */
    /* Appended (read it only from a library that has it): this user's
     * own presence while they appear offline (parley_chat_presence_invisible);
     * others then see OFFLINE, 0 devices, last_seen frozen. */
    int invisible;
} parley_chat_presence;

typedef struct parley_chat_opts {
    size_t size;         /* sizeof the struct, set by parley_chat_opts_init (see parley.h) */
    const char *url;     /* http(s):// or ws(s):// server */
    const char *path;    /* Socket.IO path; default "/socket.io/" */
    const char *user_id; /* the user id the token is for (DM ids, "mine") */
    /* The JWT for the CONNECT, asked for on every (re)connection: a string
     * from parley_alloc or parley_strdup (or malloc), freed by the library
     * with parley_free, or NULL for none. */
    char *(*token)(parley_chat *c, void *user);
    int dev_auth; /* no token: {"user": user_id} (parleyd --dev-auth only) */
    /* Outbound queue (messages and receipts): limits and optional file. */
    const char *queue_path;
    size_t queue_max_count;     /* default 1000 */
    size_t queue_max_bytes;     /* default 8 MiB */
    int auto_delivered;         /* send delivered receipts (default 1) */
    uint32_t typing_refresh_ms; /* re-send "start" while typing; default 3000 */
    size_t max_tracked;         /* own messages followed to READ; default 10000 */
    size_t max_text_bytes;      /* the server's --max-text-bytes; default 8192 */
    /* Transport, as in parley_client_opts. */
    unsigned transports;
    int websocket_first;
    const char *ca_file;
    int insecure;
    uint32_t reconnection_delay_ms;     /* default 1000 */
    uint32_t reconnection_delay_max_ms; /* default 5000 */
    parley_loop *loop;                  /* NULL: a thread of its own */
    int auto_connect;                   /* default 1 */

    /* Callbacks (all optional). */
    void (*on_state)(parley_chat *c, parley_chat_state state, const parley_chat_error *why,
                     void *user);
    void (*on_message)(parley_chat *c, const parley_chat_message *m, void *user);
    /* Every status step of every message sent by this client, including
     * messages a restarted process found in its queue file. */
    parley_chat_status_fn on_status;
    /* A participant's watermarks moved (delivered/read up to seq). */
    void (*on_receipt)(parley_chat *c, const char *conversation, const char *user_id,
                       int64_t delivered, int64_t read, void *user);
    void (*on_typing)(parley_chat *c, const char *conversation, const char *user_id, int typing,
                      void *user);
    void (*on_member)(parley_chat *c, const char *room, const char *user_id, int joined,
                      void *user);
    /* A user's presence: every `presence` event, and every Presence in
     * the answers to parley_chat_presence_set (this user's own aggregate),
     * _subscribe and _room. Treat it as the user's current state; not
     * every intermediate state is seen (the server coalesces). */
    void (*on_presence)(parley_chat *c, const parley_chat_presence *p, void *user);
    /* A notification: pushed live (acknowledged to the server after this
     * returns, which marks it delivered), or returned by a sync (after
     * every connection, and parley_chat_notifications_sync). Each id is
     * reported once, whichever way it came first (ids that came live are
     * remembered, up to 1000, until a sync has passed them). */
    void (*on_notification)(parley_chat *c, const parley_chat_notification *n, void *user);
    /* The user's unread count: from the server's `unread` events, sync
     * answers and read answers; called when it differs from the last
     * one reported (first report: any value, 0 included). */
    void (*on_unread)(parley_chat *c, int64_t count, void *user);
    /* The server acknowledged that this device marked ids[0, n) read, or
     * all of them (all 1, ids NULL). */
    void (*on_notifications_read)(parley_chat *c, const int64_t *ids, size_t n, int all,
                                  void *user);
    void *user;
} parley_chat_opts;

/* Defaults into the first `size` bytes of *o, o->size = min(size,
 * sizeof); call it as parley_chat_opts_init(&o) (see parley.h). */
PARLEY_API void parley_chat_opts_init_size(parley_chat_opts *o, size_t size);
#define parley_chat_opts_init(o) parley_chat_opts_init_size((o), sizeof *(o))

/* Creates the chat and (with auto_connect) connects. Errors:
 * PARLEY_EINVAL (no url, or user_id missing or invalid), PARLEY_EURL, PARLEY_ETLS,
 * PARLEY_EIO (the queue file), PARLEY_ENOMEM. */
PARLEY_API int parley_chat_new(const parley_chat_opts *o, parley_chat **out);

/* Connects again (after REFUSED with a fresh token, or after close). */
PARLEY_API int parley_chat_connect(parley_chat *c);
/* Disconnects and stops reconnecting; sends keep queuing. */
PARLEY_API int parley_chat_close(parley_chat *c);
/* Frees everything; queued messages stay in the queue file if any. Not
 * from a callback. */
PARLEY_API void parley_chat_free(parley_chat *c);

PARLEY_API parley_chat_state parley_chat_get_state(parley_chat *c);
/* The underlying Socket.IO client (statistics, transport). */
PARLEY_API parley_client *parley_chat_client(parley_chat *c);

/* A message to send. Exactly one of to, room and conversation.
 *
 * Priority (docs/PROTOCOL.md, "Messaging", priorities): the message's
 * place in the chat's outbound queue, which sends URGENT > HIGH > NORMAL
 * > LOW, first in first out within a priority. Without a backlog every
 * message leaves at once in call order; with one (sent while offline, or
 * unacknowledged when a connection dropped) a HIGH message goes out, and
 * is stored, ahead of NORMAL ones queued before it, in its own
 * conversation too (it then gets the lower seq). The server then
 * delivers the HIGH and URGENT messages of a commit batch live ahead of
 * the NORMAL and LOW ones of other conversations (never ahead of earlier
 * ones of their own conversation); HIGH also notifies recipients with no
 * live device, URGENT every recipient; LOW may be delivered up to the
 * server's --low-delay late. */
typedef struct parley_chat_send_opts {
    size_t size; /* sizeof the struct, set by parley_chat_send_opts_init (see parley.h) */
    const char *to;                  /* a user: the direct conversation */
    const char *room;                /* a room you are a member of */
    const char *conversation;        /* a conversation id you take part in */
    const char *type;                /* default "text" */
    const char *text;                /* shorthand content for text/system: {"text": text} */
    const char *content_json;        /* the content object (see PROTOCOL.md) */
    int priority;                    /* PARLEY_PRIORITY_*; default NORMAL */
    uint32_t ttl_ms;                 /* still queued when it passes: FAILED "expired" (one on
                                        the wire waits for the server's answer); 0 = never */
    const char *client_id;           /* 36 characters (parley_new_id); NULL: generated */
    parley_chat_status_fn on_status; /* this message's steps (besides opts.on_status) */
    void *user;
} parley_chat_send_opts;

/* Defaults into the first `size` bytes of *o, o->size = min(size,
 * sizeof); call it as parley_chat_send_opts_init(&o) (see parley.h). */
PARLEY_API void parley_chat_send_opts_init_size(parley_chat_send_opts *o, size_t size);
#define parley_chat_send_opts_init(o) parley_chat_send_opts_init_size((o), sizeof *(o))

/* Validates the message as the server would (types, fields, limits) and
 * queues it: SENDING is reported before this returns. client_id_out (37
 * bytes, may be NULL) gets its client id. Errors: PARLEY_EINVAL (err
 * says which field and why; nothing queued), PARLEY_EFULL (queue limits),
 * PARLEY_EIO, PARLEY_ENOMEM. The server's codes (err->code, err->field)
 * for common mistakes, refused here before anything is queued:
 *   empty text ("")                  invalid_field, "content.text"
 *   to yourself (to == user_id)      invalid_field, "to"
 *   to and room (or conversation)    invalid_field, "to" ("room" for room
 *                                    and conversation)
 *   no target                        missing_field, "to"
 * Media of the wrong kind (an image message whose content.media was
 * uploaded as video/mp4, say) can only be checked by the server, which
 * knows the upload's type: the message is queued and then reported FAILED
 * with invalid_field, "content.media" (its message names the media type
 * needed and the upload's); unknown media: not_found, "content.media".
 * Build content_json with parley/json.h to have strings escaped. */
PARLEY_API int parley_chat_send(parley_chat *c, const parley_chat_send_opts *o,
                                char client_id_out[37], parley_chat_error *err);
/* A text message to a user (normal priority). */
PARLEY_API int parley_chat_send_text(parley_chat *c, const char *to_user, const char *text,
                                     char client_id_out[37]);

/* Receipts are watermarks over a conversation's seq numbers (1, 2, ...):
 * marking seq covers every message with seq' <= seq, not only message seq.
 * They only move forward: a seq at or below one this client already sent
 * returns 0 and sends nothing, and the server likewise keeps the higher
 * watermark. read implies delivered (marking read up to seq also marks
 * delivered up to seq). seq <= 0 or a malformed conversation id:
 * PARLEY_EINVAL. A seq above the conversation's last message is refused
 * by the server (invalid_field): pass seqs of messages received. Receipts
 * are reliable sends (queued while offline, sent in order). The
 * participants' resulting watermarks arrive in on_receipt (delivered and
 * read up to those seqs) and as message statuses in on_status. */

/* Marks conversation read up to seq (a watermark; reliable). */
PARLEY_API int parley_chat_mark_read(parley_chat *c, const char *conversation, int64_t seq);
/* Marks it delivered up to seq (done by itself with auto_delivered). */
PARLEY_API int parley_chat_mark_delivered(parley_chat *c, const char *conversation, int64_t seq);

/* Typing indicator on (refreshed until turned off) or off. */
PARLEY_API int parley_chat_typing(parley_chat *c, const char *conversation, int typing);

/* The last seq this client has of a conversation (0 when none). */
PARLEY_API int64_t parley_chat_last_seq(parley_chat *c, const char *conversation);
/* Tells the client that the application already has conversation up to
 * seq (e.g. from its own store), so that sync starts there. */
PARLEY_API int parley_chat_set_last_seq(parley_chat *c, const char *conversation, int64_t seq);

/* The direct conversation id of users a and b into out (133 bytes).
 * 0 or PARLEY_EINVAL. */
PARLEY_API int parley_chat_dm_id(const char *a, const char *b, char out[133]);

/* Requests answered by the server. err: 0, PARLEY_EPROTO (the server
 * refused: e says why), PARLEY_ETIMEDOUT, PARLEY_ECLOSED. These requests
 * (history, rooms, upload, presence_room, notification preferences) are
 * not queued and never retried by the chat: a refusal over a limit comes
 * to fn with e->retry_after_ms set when the server gave it, and trying
 * again (after that delay) is the application's call. */
typedef void (*parley_chat_history_fn)(parley_chat *c, int err, const parley_chat_error *e,
                                       const parley_chat_message *msgs, size_t n, int more,
                                       void *user);
/* Messages of a conversation before seq `before` (0: the newest), at most
 * limit (0: the server's default), in ascending seq. */
PARLEY_API int parley_chat_history(parley_chat *c, const char *conversation, int64_t before,
                                   unsigned limit, parley_chat_history_fn fn, void *user);

/* Rooms: join, leave, list members. members is the member list (join,
 * members) or NULL. */
typedef void (*parley_chat_room_fn)(parley_chat *c, int err, const parley_chat_error *e,
                                    const char *room, const char *const *members, size_t nmembers,
                                    void *user);
PARLEY_API int parley_chat_join(parley_chat *c, const char *room, parley_chat_room_fn fn,
                                void *user);
PARLEY_API int parley_chat_leave(parley_chat *c, const char *room, parley_chat_room_fn fn,
                                 void *user);
PARLEY_API int parley_chat_members(parley_chat *c, const char *room, parley_chat_room_fn fn,
                                   void *user);

/* Uploads media (a binary attachment); fn gets the media id to put in
 * content_json ({"media": id, ...}). */
typedef void (*parley_chat_upload_fn)(parley_chat *c, int err, const parley_chat_error *e,
                                      const char *media_id, const char *mime, int64_t size,
                                      void *user);
PARLEY_API int parley_chat_upload(parley_chat *c, const char *mime, const void *data, size_t len,
                                  parley_chat_upload_fn fn, void *user);

/* ---- presence (docs/PROTOCOL.md, "Presence") ----
 *
 * Every connection of this chat is a device of its user, online from its
 * CONNECT. The chat keeps what the application chose and what it
 * subscribed to, and re-establishes both after every (re)connection,
 * because the server keeps them per socket: a new socket starts online
 * and subscribed to nobody. Results reach opts.on_presence. */

/* Chooses this device's status (ONLINE, AWAY or BUSY) and, when text is
 * not NULL, the user's status text ("" clears it; at most 128 UTF-8 bytes,
 * no control characters; NULL keeps the current one). Sent at once when
 * connected, otherwise at the next connection; the status is sent again
 * after every reconnection, the text only until the server acknowledged
 * it (it is the user's, stored by the server, and another device may have
 * changed it since). The answer's Presence goes to on_presence; a
 * refusal (a rate limit too) is logged, not retried, and reaches no
 * callback. Errors: PARLEY_EINVAL (status OFFLINE or unknown, text
 * invalid), PARLEY_ENOMEM. */
PARLEY_API int parley_chat_presence_set(parley_chat *c, parley_presence status, const char *text);

/* "Appear offline" (docs/PROTOCOL.md, "Appearing offline"), on (nonzero)
 * or off: while on, everyone else sees this user OFFLINE on all their
 * devices, with last_seen frozen at the moment it was turned on, and the
 * user's typing starts are not relayed; this user's own devices see the
 * true state with invisible set (on_presence). The choice is the user's,
 * stored by the server: it stays across reconnections and restarts until
 * turned off, from any device. Sent at once when connected, otherwise at
 * the next connection, and again after reconnections only until the
 * server acknowledged it. Messages and receipts still go out as usual:
 * an application that wants to stay unnoticed holds back
 * parley_chat_mark_read while it is on. Errors: PARLEY_EINVAL (c NULL). */
PARLEY_API int parley_chat_presence_invisible(parley_chat *c, int on);

/* Follows the presence of users (n >= 1 valid user ids): `presence`
 * events for them from now on, and their current state at once (through
 * on_presence) when connected. Subscriptions are kept by the chat and
 * renewed after every reconnection (whose answers report the current
 * states again). Errors: PARLEY_EINVAL (n 0, an invalid id), PARLEY_EFULL
 * (more than 1000 subscriptions in all: the server's limit; nothing is
 * added), PARLEY_ENOMEM. */
PARLEY_API int parley_chat_presence_subscribe(parley_chat *c, const char *const *users, size_t n);
/* Stops following users (ids not followed are ignored). Same errors
 * except PARLEY_EFULL. */
PARLEY_API int parley_chat_presence_unsubscribe(parley_chat *c, const char *const *users, size_t n);

/* The presence of every member of a room (members only), in user id
 * order. Each also goes to on_presence, before fn runs. err: 0,
 * PARLEY_EPROTO (e says why: not_member, ...), PARLEY_ETIMEDOUT,
 * PARLEY_ECLOSED; list is NULL when err. Returns 0 or PARLEY_EINVAL (room
 * invalid), PARLEY_ENOMEM. */
typedef void (*parley_chat_presence_fn)(parley_chat *c, int err, const parley_chat_error *e,
                                        const char *room, const parley_chat_presence *list,
                                        size_t n, void *user);
PARLEY_API int parley_chat_presence_room(parley_chat *c, const char *room,
                                         parley_chat_presence_fn fn, void *user);

/* ---- notifications ----
 *
 * After every (re)connection the chat syncs the notifications newer than
 * the highest id an earlier sync returned (so that notifications the
 * server held back while this device was online, which no event brought,
 * are fetched too), all pages, to on_notification; live ones arrive
 * through it in between. */

/* Syncs now (e.g. when on_unread grew and no notification came: the
 * server held it back, quiet hours or muting). When not connected, the
 * next connection syncs anyway. 0 or PARLEY_EINVAL. */
PARLEY_API int parley_chat_notifications_sync(parley_chat *c);

/* Marks notifications read: ids[0, n), 1 <= n <= 500 (ids this user does
 * not have are ignored by the server). The answer's count goes to on_unread
 * and the ids to on_notifications_read. Not queued: when not connected it
 * fails (PARLEY_ESTATE) and the application tries again later; a refusal
 * (a rate limit too) is logged, not retried, and reaches no callback
 * (on_notifications_read is not called). Errors:
 * PARLEY_EINVAL, PARLEY_ESTATE, PARLEY_ENOMEM. */
PARLEY_API int parley_chat_notifications_read(parley_chat *c, const int64_t *ids, size_t n);
/* Marks every notification of the user read. As above. */
PARLEY_API int parley_chat_notifications_read_all(parley_chat *c);

/* Notification preferences, JSON in and out (the protocol's P object:
 * in_app, push, types, quiet_hours (with min_priority: "high" lets high
 * and urgent through quiet hours; default urgent), muted_users,
 * muted_rooms). fn gets
 * err 0 and the whole stored P, or err PARLEY_EPROTO (e: the server's
 * code and field, e.g. invalid_field "quiet_hours.tz"), PARLEY_ETIMEDOUT,
 * PARLEY_ECLOSED, with prefs_json NULL. */
typedef void (*parley_chat_prefs_fn)(parley_chat *c, int err, const parley_chat_error *e,
                                     const char *prefs_json, size_t len, void *user);
PARLEY_API int parley_chat_notification_prefs_get(parley_chat *c, parley_chat_prefs_fn fn,
                                                  void *user);
/* changes_json: an object with any subset of P's fields. Errors:
 * PARLEY_EINVAL (not a JSON object), PARLEY_ENOMEM. */
PARLEY_API int parley_chat_notification_prefs_set(parley_chat *c, const char *changes_json,
                                                  parley_chat_prefs_fn fn, void *user);

/* ---- sending notifications (tokens with the notifier or admin role) ----
 *
 * The socket API's `notify` request (docs/PROTOCOL.md, "Sending"). Every
 * field is sent as given and checked by the server, which answers with
 * the same codes and fields as to any socket: forbidden (no field) when
 * the token's role is not notifier or admin; missing_field (to, type,
 * title), invalid_field (to, type, priority, title, image, actions[i].id,
 * expires_at not in the future, ...), too_large, unknown_field,
 * rate_limited (field "to", e->retry_after_ms set: more than --rate-notify
 * to this recipient), storage_full. Not queued, never retried. */
typedef struct parley_chat_notify_opts {
    size_t size;              /* sizeof the struct, set by parley_chat_notify_opts_init (parley.h) */
    const char *to;           /* the recipient's user id (required) */
    const char *type;         /* "message", "mention", ... (required) */
    const char *priority;     /* "low", "normal", "high", "urgent"; NULL: normal */
    const char *title;        /* required, 1..256 bytes */
    const char *body;         /* NULL: none */
    const char *image;        /* an http(s) URL; NULL: none */
    const char *actions_json; /* a JSON array [{"id","label"}, ...] sent as is; NULL: none */
    int64_t expires_at;       /* ms since the epoch, in the future; 0: never */
    const char *dedupe_key;   /* NULL: none (a repeat with a stored key: duplicate) */
} parley_chat_notify_opts;

/* Defaults (all NULL / 0) for the first `size` bytes of o (the caller's
 * sizeof); call it as parley_chat_notify_opts_init(&o) (see parley.h). */
PARLEY_API void parley_chat_notify_opts_init_size(parley_chat_notify_opts *o, size_t size);
#define parley_chat_notify_opts_init(o) parley_chat_notify_opts_init_size((o), sizeof *(o))

/* err: 0 with n the stored notification (duplicate 1: a dedupe hit, n is
 * the stored one, nothing new pushed), or PARLEY_EPROTO (e: the server's
 * code, field and retry_after_ms), PARLEY_ETIMEDOUT, PARLEY_ECLOSED, with
 * n NULL. */
typedef void (*parley_chat_notify_fn)(parley_chat *c, int err, const parley_chat_error *e,
                                      const parley_chat_notification *n, int duplicate,
                                      void *user);
/* Returns 0, PARLEY_EINVAL (o NULL, actions_json not a JSON array,
 * expires_at negative), PARLEY_ENOMEM, or the socket's error when it
 * cannot emit. */
PARLEY_API int parley_chat_notify(parley_chat *c, const parley_chat_notify_opts *o,
                                  parley_chat_notify_fn fn, void *user);

#ifdef __cplusplus
}
#endif
#endif
