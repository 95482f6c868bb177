/*
 * The messaging protocol's wire schema, in one place for both halves:
 * event names, field names, limits, error codes, and sans-I/O validation
 * (JSON in, structs out) and encoding (structs to JSON). docs/PROTOCOL.md
 * ("Messaging") is the prose version of this header; keep them in step.
 *
 * Parsers take an object already validated by json_parse() (an element of
 * an event's argument array) and never allocate: identifiers are decoded
 * into fixed arrays, free text stays a span of the caller's JSON (quotes
 * and escapes included) that must outlive the struct. Every field is
 * checked against msg_limits before anything is kept; a failure fills a
 * msg_error with the code, the offending field's path and a message.
 *
 * Encoders append compact JSON to a pbuf (one object; the caller wraps it
 * in an argument array). A struct produced by a parser encodes to JSON that
 * the matching parser accepts and turns into an equal struct.
 */
#ifndef PARLEY_SERVICES_MSG_SCHEMA_H
#define PARLEY_SERVICES_MSG_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "codec/json.h"

/* ---- namespace and events ---- */

#define MSG_NAMESPACE "/chat"

/* client -> server; each takes one object and answers through the ack */
#define MSG_EV_SEND           "send_message"
#define MSG_EV_RECEIPT        "receipt"
#define MSG_EV_TYPING         "typing"
#define MSG_EV_SYNC           "sync"
#define MSG_EV_HISTORY        "history"
#define MSG_EV_JOIN_ROOM      "join_room"
#define MSG_EV_LEAVE_ROOM     "leave_room"
#define MSG_EV_ROOM_MEMBERS   "room_members"
#define MSG_EV_UPLOAD_MEDIA   "upload_media"
#define MSG_EV_PRESENCE_SET   "presence_set"
#define MSG_EV_PRESENCE_SUB   "presence_subscribe"
#define MSG_EV_PRESENCE_UNSUB "presence_unsubscribe"
#define MSG_EV_PRESENCE_ROOM  "presence_room"

/* server -> client */
#define MSG_EV_NEW_MESSAGE   "new_message"
#define MSG_EV_STATUS        "status"
#define MSG_EV_TYPING_OUT    "typing" /* same name both ways */
#define MSG_EV_MEMBER_JOINED "member_joined"
#define MSG_EV_MEMBER_LEFT   "member_left"
#define MSG_EV_PRESENCE      "presence"
/* Sent once, just before the server disconnects a socket that kept
 * sending over its limits: {"code": "rate_limited", "message": ...}. */
#define MSG_EV_DISCONNECT_REASON "disconnect_reason"

/* ---- identifiers ---- */

#define MSG_USER_MAX      64  /* user ids: [A-Za-z0-9._@-], 1..64 bytes */
#define MSG_ROOM_MAX      64  /* room names: [A-Za-z0-9._-], 1..64 bytes */
#define MSG_CLIENT_ID_MAX 64  /* client message ids: [A-Za-z0-9._:-], 1..64 bytes */
#define MSG_MEDIA_ID_LEN  64  /* media ids: sha256 of the content, lowercase hex */
#define MSG_MIME_MAX      127 /* type/subtype, RFC 6838 restricted names */
/* "dm:<a>:<b>" (a < b, bytewise) or "room:<name>" */
#define MSG_CONV_MAX (3 + MSG_USER_MAX + 1 + MSG_USER_MAX)

bool msg_valid_user(const char *s, size_t len);
bool msg_valid_room(const char *s, size_t len);
bool msg_valid_client_id(const char *s, size_t len);
bool msg_valid_media_id(const char *s, size_t len);
bool msg_valid_mime(const char *s, size_t len);

typedef enum msg_conv_kind {
    MSG_CONV_NONE = 0,
    MSG_CONV_DM = 1,   /* two users */
    MSG_CONV_ROOM = 2, /* a named room */
} msg_conv_kind;

/* A conversation: its id and what it is. For a DM, a and b are the two
 * users (a < b); for a room, a is the room name and b is empty. */
typedef struct msg_conv {
    msg_conv_kind kind;
    char id[MSG_CONV_MAX + 1];
    char a[MSG_USER_MAX + 1];
    char b[MSG_USER_MAX + 1];
} msg_conv;

/* The DM between users x and y (valid ids, x != y). */
void msg_conv_dm(msg_conv *c, const char *x, const char *y);
/* The conversation of room `name` (a valid room name). */
void msg_conv_room(msg_conv *c, const char *name);
/* Parses a conversation id; false unless it is one of the two forms with
 * valid names (a DM's users distinct and in order). */
bool msg_conv_parse(msg_conv *c, const char *id, size_t len);
/* For a DM: the participant who is not `me` (NULL if me is not in it). */
const char *msg_conv_peer(const msg_conv *c, const char *me);

/* ---- message types and priorities ---- */

typedef enum msg_type {
    MSG_TEXT = 1,
    MSG_IMAGE,
    MSG_FILE,
    MSG_AUDIO,
    MSG_VIDEO,
    MSG_LOCATION,
    MSG_SYSTEM,
} msg_type;

typedef enum msg_priority {
    MSG_PRIO_LOW = 0,
    MSG_PRIO_NORMAL = 1,
    MSG_PRIO_HIGH = 2,
    MSG_PRIO_URGENT = 3,
} msg_priority;

const char *msg_type_name(msg_type t); /* "text", ...; NULL when out of range */
/* The name with its indefinite article for messages: "a video", "an image". */
const char *msg_type_with_article(msg_type t);
int msg_type_from_name(const char *s, size_t len); /* 0 when unknown */
const char *msg_priority_name(msg_priority p);
int msg_priority_from_name(const char *s, size_t len); /* -1 when unknown */
/* Media types: image, file, audio, video. */
bool msg_type_has_media(msg_type t);

/* ---- limits ---- */

typedef struct msg_limits {
    size_t max_text;    /* text and system bodies, UTF-8 bytes; default 8192 */
    size_t max_caption; /* image/video captions; default 1024 */
    size_t max_name;    /* file names; default 255 */
    size_t max_label;   /* location labels; default 256 */
    unsigned max_depth; /* JSON nesting accepted in a payload; default 8 */
} msg_limits;

void msg_limits_init(msg_limits *l);

#define MSG_MAX_DIMENSION     100000   /* image/video width and height */
#define MSG_MAX_DURATION_MS   86400000 /* audio/video duration: one day */
#define MSG_SYNC_MAX_LIMIT    1000     /* messages per sync answer */
#define MSG_SYNC_DEF_LIMIT    200
#define MSG_SYNC_MAX_CONVS    200 /* conversations per sync answer (then `next`) */
#define MSG_SYNC_MAX_RECEIPTS 256 /* receipts listed per conversation in a sync answer */
#define MSG_HISTORY_MAX_LIMIT 200
#define MSG_HISTORY_DEF_LIMIT 50
#define MSG_SYNC_MAX_SINCE    10000              /* conversations named in one sync */
#define MSG_SEQ_MAX           ((int64_t)1 << 53) /* exact in every JSON peer */

/* ---- errors ---- */

typedef enum msg_errcode {
    MSG_OK = 0,
    /* acknowledgements */
    MSG_E_BAD_REQUEST,      /* the arguments are not one JSON object */
    MSG_E_MISSING_FIELD,    /* a required field is absent */
    MSG_E_INVALID_FIELD,    /* wrong JSON type, bad characters, out of range, repeated */
    MSG_E_UNKNOWN_FIELD,    /* a field the protocol does not define */
    MSG_E_UNKNOWN_TYPE,     /* type is not one of the message types */
    MSG_E_TOO_LARGE,        /* text, caption, name, label or media over the limit */
    MSG_E_SENDER_FORBIDDEN, /* the payload names a sender: it comes from the token */
    MSG_E_NOT_MEMBER,       /* the user is not in the room / conversation */
    MSG_E_FORBIDDEN,        /* system messages without the admin role; media not visible */
    MSG_E_NOT_FOUND,        /* unknown media, room or conversation */
    MSG_E_UNKNOWN_EVENT,    /* an event the namespace does not define */
    MSG_E_INTERNAL,         /* storage failure: nothing was stored, retry later */
    MSG_E_RATE_LIMITED,     /* over a rate limit: retry after retry_after_ms */
    MSG_E_QUOTA_EXCEEDED,   /* over a quota (daily uploads, storage, rooms) */
    MSG_E_STORAGE_FULL,     /* the server's disk is below its reserve: writes refused */
    MSG_E_UNAVAILABLE,      /* the shared database cannot be reached: nothing was
                               stored; retry after retry_after_ms */
    /* connect_error data */
    MSG_E_AUTH_REQUIRED,       /* no token in the CONNECT auth payload */
    MSG_E_INVALID_TOKEN,       /* malformed, wrong algorithm, bad signature */
    MSG_E_TOKEN_EXPIRED,       /* exp passed (beyond the leeway) */
    MSG_E_TOKEN_NOT_YET_VALID, /* nbf in the future (beyond the leeway) */
    MSG_E_INVALID_USER,        /* sub missing or not a valid user id */
    MSG_E_AUTH_UNAVAILABLE,    /* the server has no way to check tokens */
    MSG_E_COUNT
} msg_errcode;

const char *msg_errcode_name(msg_errcode c);          /* "invalid_field", ... */
int msg_errcode_from_name(const char *s, size_t len); /* MSG_OK when unknown */

typedef struct msg_error {
    msg_errcode code;
    char field[48];    /* path of the offending field ("content.lat"), or "" */
    char message[160]; /* for humans */
    /* > 0: the request may succeed when retried after this many ms
     * (rate_limited, quota_exceeded, storage_full, unavailable); 0: not
     * said. */
    int64_t retry_after_ms;
} msg_error;

/* Fills err (printf-style message). Returns code, for `return msg_fail(..)`. */
msg_errcode msg_fail(msg_error *err, msg_errcode code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* {"ok":false,"error":{"code":…,"message":…[,"field":…][,"retry_after_ms":…]}} */
int msg_encode_error(pbuf *out, const msg_error *err);
/* The connect_error data: {"code":…,"message":…}. */
int msg_encode_connect_error(pbuf *out, const msg_error *err);
/* Reads an acknowledgement object: *ok, and on failure err (code
 * MSG_OK when the name is not known to this version). False when the
 * object is not an acknowledgement. */
bool msg_parse_ack(const json_val *obj, bool *ok, msg_error *err);

/* ---- message content ---- */

/* Content of every type; which fields are set depends on the type. Spans
 * are JSON strings or numbers as they appear in the input
 * (type JSON_INVALID when absent). */
typedef struct msg_content {
    json_val text;                    /* text, system: required */
    json_val caption;                 /* image, video */
    json_val name;                    /* file */
    json_val label;                   /* location */
    json_val lat, lng;                /* location: required numbers */
    char media[MSG_MEDIA_ID_LEN + 1]; /* media types: required */
    char mime[MSG_MIME_MAX + 1];      /* media types: set by the server */
    int64_t size;                     /* media types: set by the server; -1 absent */
    int64_t width, height;            /* image, video; -1 absent */
    int64_t duration_ms;              /* audio, video; -1 absent */
} msg_content;

/* Parses the content object of a message of type t. server_fields: accept
 * mime and size (messages from the server); a client must not send them. */
msg_errcode msg_parse_content(const json_val *obj, msg_type t, bool server_fields,
                              const msg_limits *l, msg_content *c, msg_error *err);
/* Appends the content object (fields in a fixed order). */
int msg_encode_content(pbuf *out, msg_type t, const msg_content *c);

/* ---- send_message (client -> server) ---- */

typedef struct msg_send {
    char client_id[MSG_CLIENT_ID_MAX + 1];
    /* The target: exactly one of to (a user), room, or conversation was
     * given. target.kind is MSG_CONV_DM with target.name the user,
     * MSG_CONV_ROOM with the room name; a conversation id is resolved to
     * one of these with the sender (see msg_send_resolve). */
    msg_conv_kind target_kind;
    char target[MSG_CONV_MAX + 1]; /* user, room, or the conversation id as given */
    bool target_is_conv;
    msg_type type;
    msg_priority priority;
    msg_content content;
} msg_send;

msg_errcode msg_parse_send(const json_val *obj, const msg_limits *l, msg_send *m, msg_error *err);
/* Works out the conversation of a send from `sender` (a valid user id):
 * a DM to oneself and a conversation id that does not include the sender
 * are refused (invalid_field / not_member). */
msg_errcode msg_send_resolve(const msg_send *m, const char *sender, msg_conv *c, msg_error *err);
int msg_encode_send(pbuf *out, const msg_send *m);

/* ---- a stored message (new_message, history, sync, send ack) ---- */

typedef struct msg_message {
    int64_t id;  /* server id, > 0 */
    int64_t seq; /* per conversation, 1, 2, ... */
    int64_t ts;  /* server time, ms since the epoch */
    char conversation[MSG_CONV_MAX + 1];
    char from[MSG_USER_MAX + 1];
    char client_id[MSG_CLIENT_ID_MAX + 1];
    msg_type type;
    msg_priority priority;
    msg_content content;
} msg_message;

/* The message object, with the content given as ready JSON (content_json,
 * e.g. from the store) or, when content_json is NULL, encoded from m. */
int msg_encode_message(pbuf *out, const msg_message *m, const char *content_json,
                       size_t content_len);
msg_errcode msg_parse_message(const json_val *obj, const msg_limits *l, msg_message *m,
                              msg_error *err);

/* ---- receipts and status ---- */

typedef enum msg_receipt_kind { MSG_DELIVERED = 1, MSG_READ = 2 } msg_receipt_kind;

typedef struct msg_receipt {
    char conversation[MSG_CONV_MAX + 1];
    msg_receipt_kind status;
    int64_t seq; /* everything up to and including seq */
} msg_receipt;

msg_errcode msg_parse_receipt(const json_val *obj, msg_receipt *r, msg_error *err);
int msg_encode_receipt(pbuf *out, const msg_receipt *r);

/* status (server -> client): a participant's watermarks in a conversation. */
typedef struct msg_status {
    char conversation[MSG_CONV_MAX + 1];
    char user[MSG_USER_MAX + 1];
    int64_t delivered, read;
} msg_status;

int msg_encode_status(pbuf *out, const msg_status *s);
msg_errcode msg_parse_status(const json_val *obj, msg_status *s, msg_error *err);

/* ---- typing ---- */

typedef struct msg_typing {
    char conversation[MSG_CONV_MAX + 1];
    bool start;                  /* state "start" or "stop" */
    char user[MSG_USER_MAX + 1]; /* server -> client only; "" from clients */
} msg_typing;

/* from_server: the user field is required (and accepted). */
msg_errcode msg_parse_typing(const json_val *obj, bool from_server, msg_typing *t, msg_error *err);
int msg_encode_typing(pbuf *out, const msg_typing *t);

/* ---- sync and history requests ---- */

typedef struct msg_sync {
    json_val since; /* object conversation id -> seq (validated), or JSON_INVALID */
    size_t nsince;
    unsigned limit;
    char cursor[MSG_CONV_MAX + 1]; /* start at this conversation id (the answer's `next`); "" */
} msg_sync;

msg_errcode msg_parse_sync(const json_val *obj, msg_sync *s, msg_error *err);
/* Looks up the seq the client has for conversation `id` (0 when absent). */
int64_t msg_sync_since(const msg_sync *s, const char *id);
/* Iterates the since map: each call yields the next conversation id
 * (decoded) and seq; false at the end. *pos starts as zeroed json_iter
 * from msg_sync_iter_init. */
void msg_sync_iter_init(const msg_sync *s, json_iter *it);
bool msg_sync_iter_next(json_iter *it, char id[MSG_CONV_MAX + 1], int64_t *seq);

typedef struct msg_history {
    char conversation[MSG_CONV_MAX + 1];
    int64_t before; /* exclusive; 0 = from the newest */
    unsigned limit;
} msg_history;

msg_errcode msg_parse_history(const json_val *obj, msg_history *h, msg_error *err);

/* join_room, leave_room, room_members: {"room": name} */
msg_errcode msg_parse_room_req(const json_val *obj, char room[MSG_ROOM_MAX + 1], msg_error *err);

/* upload_media: {"mime": type, "data": <binary placeholder>}; *num is the
 * attachment the placeholder refers to. */
msg_errcode msg_parse_upload(const json_val *obj, char mime[MSG_MIME_MAX + 1], unsigned *num,
                             msg_error *err);

/* ---- presence ---- */

#define MSG_PRESENCE_TEXT_MAX  128  /* status text, UTF-8 bytes */
#define MSG_PRESENCE_USERS_MAX 100  /* users named in one (un)subscribe */
#define MSG_PRESENCE_SUBS_MAX  1000 /* subscriptions one socket may hold */

/* Ordered by availability: a larger value is more available, so the
 * aggregate of several devices is their maximum. */
typedef enum msg_pstatus {
    MSG_PS_OFFLINE = 0,
    MSG_PS_BUSY = 1,
    MSG_PS_AWAY = 2,
    MSG_PS_ONLINE = 3,
} msg_pstatus;

const char *msg_pstatus_name(msg_pstatus s);          /* "online", ...; NULL out of range */
int msg_pstatus_from_name(const char *s, size_t len); /* -1 when unknown */

/* The Presence object (server -> client). */
typedef struct msg_presence {
    char user[MSG_USER_MAX + 1];
    msg_pstatus status;
    char text[MSG_PRESENCE_TEXT_MAX + 1]; /* "" when none */
    int64_t last_seen;                    /* ms since the epoch; -1: null (never seen) */
    unsigned devices;                     /* connected sockets */
    bool invisible;                       /* "appear offline" is on: only in the user's own view */
} msg_presence;

int msg_encode_presence(pbuf *out, const msg_presence *p);
/* Lenient (unknown members skipped), for the client half. */
msg_errcode msg_parse_presence(const json_val *obj, msg_presence *p, msg_error *err);

/* presence_set: {"status"?: "online"|"away"|"busy", "text"?: string,
 * "invisible"?: bool}, status required unless invisible is given. A
 * client cannot choose offline. *status is MSG_PS_OFFLINE when status was
 * not given (keep the device's). The text is decoded into text (at most
 * MSG_PRESENCE_TEXT_MAX bytes; no control characters); *has_text says
 * whether it was given ("" clears). invisible (may be NULL: the member is
 * then refused as unknown): -1 not given, 0 false, 1 true. */
msg_errcode msg_parse_presence_set(const json_val *obj, msg_pstatus *status, bool *has_text,
                                   char text[MSG_PRESENCE_TEXT_MAX + 1], int *invisible,
                                   msg_error *err);

/* presence_subscribe / presence_unsubscribe: {"users": [ids, 1..100]}.
 * The ids are decoded into users[]; *n gets their count (repeats kept). */
msg_errcode msg_parse_presence_users(const json_val *obj,
                                     char users[MSG_PRESENCE_USERS_MAX][MSG_USER_MAX + 1],
                                     size_t *n, msg_error *err);

/* ---- notifications ---- */

/* client -> server */
#define MSG_EV_NOTIFY          "notify"
#define MSG_EV_NOTIF_SYNC      "notifications_sync"
#define MSG_EV_NOTIF_READ      "notifications_read"
#define MSG_EV_NOTIF_PREFS_GET "notification_prefs_get"
#define MSG_EV_NOTIF_PREFS_SET "notification_prefs_set"
/* server -> client */
#define MSG_EV_NOTIFICATION "notification" /* emitted with an acknowledgement request */
#define MSG_EV_UNREAD       "unread"

#define MSG_NOTIF_TITLE_MAX        256
#define MSG_NOTIF_BODY_MAX         4096
#define MSG_NOTIF_IMAGE_MAX        2048
#define MSG_NOTIF_ACTIONS_MAX      5
#define MSG_NOTIF_ACTION_ID_MAX    64 /* [A-Za-z0-9._-] */
#define MSG_NOTIF_ACTION_LABEL_MAX 64
#define MSG_NOTIF_DEDUPE_MAX       128
#define MSG_NOTIF_SYNC_MAX         500
#define MSG_NOTIF_SYNC_DEF         100
#define MSG_NOTIF_READ_MAX         500
#define MSG_NOTIF_MUTED_MAX        1000
#define MSG_TZ_MAX                 64 /* IANA zone names: "Area/City" */

/* Notification types; bit (1 << t) in msg_nprefs.types_off. */
typedef enum msg_ntype {
    MSG_NT_MESSAGE = 1,
    MSG_NT_MENTION,
    MSG_NT_ASSIGNMENT,
    MSG_NT_DEADLINE,
    MSG_NT_SYSTEM,
    MSG_NT_ACHIEVEMENT,
    MSG_NT_REMINDER,
    MSG_NT_ALERT,
} msg_ntype;
#define MSG_NT_LAST MSG_NT_ALERT

const char *msg_ntype_name(msg_ntype t);            /* NULL out of range */
int msg_ntype_from_name(const char *s, size_t len); /* 0 when unknown */

typedef struct msg_naction {
    char id[MSG_NOTIF_ACTION_ID_MAX + 1];
    char label[MSG_NOTIF_ACTION_LABEL_MAX + 1]; /* no NUL inside (checked) */
} msg_naction;

/* The Notification object, and the parsed `notify` request (which leaves
 * id, from, created, delivered and read to the server). Text is decoded:
 * a notification is stored, so it is copied anyway. Title, body and
 * dedupe key may not contain U+0000, so they are C strings. */
typedef struct msg_notification {
    int64_t id;
    char to[MSG_USER_MAX + 1]; /* the recipient (not part of the object) */
    msg_ntype type;
    msg_priority priority;
    char title[MSG_NOTIF_TITLE_MAX + 1];
    char body[MSG_NOTIF_BODY_MAX + 1];
    char image[MSG_NOTIF_IMAGE_MAX + 1]; /* "" = null */
    msg_naction actions[MSG_NOTIF_ACTIONS_MAX];
    unsigned nactions;
    char from[MSG_USER_MAX + 1];           /* "" = null (HTTP API) */
    int64_t created;                       /* ms since the epoch */
    int64_t expires;                       /* ms since the epoch; -1 = null */
    char dedupe[MSG_NOTIF_DEDUPE_MAX + 1]; /* "" = null */
    bool delivered, read;
} msg_notification;

/* `notify` / the HTTP API body: {"to", "type", "priority"?, "title",
 * "body"?, "image"?, "actions"?, "expires_at"?, "dedupe_key"?}. expires_at
 * must be after now_ms. Strict like every client object. */
msg_errcode msg_parse_notify(const json_val *obj, int64_t now_ms, msg_notification *n,
                             msg_error *err);
/* The actions array alone (also how the store reads its column back). */
msg_errcode msg_parse_nactions(const json_val *arr, msg_naction *a, unsigned *n, msg_error *err);
int msg_encode_nactions(pbuf *out, const msg_naction *a, unsigned n);
int msg_encode_notification(pbuf *out, const msg_notification *n);
/* true for an absolute http:// or https:// URL of printable ASCII with a host. */
bool msg_valid_http_url(const char *s, size_t len);

/* notifications_sync: {"since"?: id (default 0), "limit"?: 1..500 (default 100)} */
msg_errcode msg_parse_nsync(const json_val *obj, int64_t *since, unsigned *limit, msg_error *err);
/* notifications_read: {"ids": [1..500 ids]} or {"all": true}. */
msg_errcode msg_parse_nread(const json_val *obj, int64_t ids[MSG_NOTIF_READ_MAX], size_t *n,
                            bool *all, msg_error *err);

/* Preferences. Muted lists stay spans (arrays of validated ids) of the
 * JSON they were parsed from, which must outlive the struct. */
typedef struct msg_nprefs {
    bool in_app, push;
    unsigned types_off; /* bit (1 << type) for every type switched off */
    bool quiet;         /* quiet hours set */
    int q_start, q_end; /* minutes after midnight, local time; start != end */
    char tz[MSG_TZ_MAX + 1];
    msg_priority q_min; /* quiet_hours.min_priority: this and above pass (default urgent) */
    json_val muted_users, muted_rooms; /* JSON_INVALID: empty */
} msg_nprefs;

void msg_nprefs_default(msg_nprefs *p);
/* Bits of the fields a notification_prefs_set gave. */
enum {
    MSG_NP_IN_APP = 1,
    MSG_NP_PUSH = 2,
    MSG_NP_TYPES = 4,
    MSG_NP_QUIET = 8,
    MSG_NP_MUTED_USERS = 16,
    MSG_NP_MUTED_ROOMS = 32,
};
/* Overwrites the fields of *p that obj names (any subset of P); *given
 * gets their bits. A field replaces the stored one whole (types too). On
 * error *p may be partly changed. tz is checked for its shape only
 * (msg_valid_tz_name): whether the zone exists is the server's business. */
msg_errcode msg_parse_nprefs(const json_val *obj, msg_nprefs *p, unsigned *given, msg_error *err);
int msg_encode_nprefs(pbuf *out, const msg_nprefs *p);
/* Is id (a C string) in a muted list? */
bool msg_nprefs_has(const json_val *list, const char *id);
/* IANA-style names (tz_valid_name): 1..64 bytes of [A-Za-z0-9_+-] in
 * '/'-separated parts, none empty, not starting or ending with '/'. */
bool msg_valid_tz_name(const char *s, size_t len);

/* ---- helpers ---- */

/* The single object in an event's argument array (`[ {...} ]`). */
msg_errcode msg_args_object(const char *json, size_t len, const msg_limits *l, json_val *obj,
                            msg_error *err);

/* UTF-8 length of a validated JSON string value once unescaped. */
size_t msg_json_string_len(const json_val *v);

#endif
