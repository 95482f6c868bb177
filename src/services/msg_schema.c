/*
 * The messaging wire schema (see msg_schema.h and docs/PROTOCOL.md).
 *
 * Objects are read in one pass over their members: each known name has a
 * bit, so a repeated member is caught (json_object_get would silently take
 * the first one, and two readers of the same payload could then disagree
 * about what it says). Checks run in a fixed order (spoofed sender,
 * unknown and repeated members, missing ones, then each value) so that a
 * payload with several faults always gets the same error code.
 */
#include "services/msg_schema.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "codec/tzif.h"
#include "codec/utf8.h"
#include "parley/parley.h"

/* ---- identifiers ---- */

static bool alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool chars_ok(const char *s, size_t len, size_t max, const char *extra)
{
    if (len == 0 || len > max) return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!alnum(c) && (c == 0 || !strchr(extra, c))) return false;
    }
    return true;
}

bool msg_valid_user(const char *s, size_t len)
{
    return chars_ok(s, len, MSG_USER_MAX, "._@-");
}

bool msg_valid_room(const char *s, size_t len)
{
    return chars_ok(s, len, MSG_ROOM_MAX, "._-");
}

bool msg_valid_client_id(const char *s, size_t len)
{
    return chars_ok(s, len, MSG_CLIENT_ID_MAX, "._:-");
}

bool msg_valid_media_id(const char *s, size_t len)
{
    if (len != MSG_MEDIA_ID_LEN) return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

/* RFC 6838 section 4.2 restricted-name, for both halves of type/subtype. */
static bool mime_name(const char *s, size_t len)
{
    if (len == 0 || len > 63 || !alnum((unsigned char)s[0])) return false;
    for (size_t i = 1; i < len; i++)
        if (!alnum((unsigned char)s[i]) && !strchr("!#$&-^_.+", s[i])) return false;
    return true;
}

bool msg_valid_mime(const char *s, size_t len)
{
    if (len == 0 || len > MSG_MIME_MAX) return false;
    const char *slash = memchr(s, '/', len);
    if (!slash) return false;
    size_t tl = (size_t)(slash - s);
    return mime_name(s, tl) && mime_name(slash + 1, len - tl - 1);
}

/* ---- conversations ---- */

/* Copies a name the caller promises to be valid (so at most cap - 1
 * bytes); a longer one is cut rather than overflowing. */
static size_t copy_name(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = 0;
    return n;
}

void msg_conv_dm(msg_conv *c, const char *x, const char *y)
{
    memset(c, 0, sizeof *c);
    c->kind = MSG_CONV_DM;
    const char *a = strcmp(x, y) < 0 ? x : y;
    const char *b = a == x ? y : x;
    size_t al = copy_name(c->a, sizeof c->a, a), bl = copy_name(c->b, sizeof c->b, b);
    memcpy(c->id, "dm:", 3);
    memcpy(c->id + 3, c->a, al);
    c->id[3 + al] = ':';
    memcpy(c->id + 4 + al, c->b, bl + 1);
}

void msg_conv_room(msg_conv *c, const char *name)
{
    memset(c, 0, sizeof *c);
    c->kind = MSG_CONV_ROOM;
    size_t n = copy_name(c->a, sizeof c->a, name);
    memcpy(c->id, "room:", 5);
    memcpy(c->id + 5, c->a, n + 1);
}

bool msg_conv_parse(msg_conv *c, const char *id, size_t len)
{
    memset(c, 0, sizeof *c);
    if (len > 5 && memcmp(id, "room:", 5) == 0) {
        if (!msg_valid_room(id + 5, len - 5)) return false;
        c->kind = MSG_CONV_ROOM;
        memcpy(c->a, id + 5, len - 5);
    } else if (len > 3 && memcmp(id, "dm:", 3) == 0) {
        const char *p = id + 3, *end = id + len;
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (!colon) return false;
        size_t al = (size_t)(colon - p), bl = (size_t)(end - colon - 1);
        if (!msg_valid_user(p, al) || !msg_valid_user(colon + 1, bl)) return false;
        memcpy(c->a, p, al);
        memcpy(c->b, colon + 1, bl);
        /* One spelling per pair, so that the id is a key. */
        if (strcmp(c->a, c->b) >= 0) {
            memset(c, 0, sizeof *c);
            return false;
        }
        c->kind = MSG_CONV_DM;
    } else {
        return false;
    }
    memcpy(c->id, id, len);
    c->id[len] = 0;
    return true;
}

const char *msg_conv_peer(const msg_conv *c, const char *me)
{
    if (c->kind != MSG_CONV_DM) return NULL;
    if (strcmp(c->a, me) == 0) return c->b;
    if (strcmp(c->b, me) == 0) return c->a;
    return NULL;
}

/* ---- names ---- */

static const char *const type_names[] = {NULL,    "text",  "image",    "file",
                                         "audio", "video", "location", "system"};
static const char *const prio_names[] = {"low", "normal", "high", "urgent"};

static const char *const err_names[MSG_E_COUNT] = {
    [MSG_OK] = "ok",
    [MSG_E_BAD_REQUEST] = "bad_request",
    [MSG_E_MISSING_FIELD] = "missing_field",
    [MSG_E_INVALID_FIELD] = "invalid_field",
    [MSG_E_UNKNOWN_FIELD] = "unknown_field",
    [MSG_E_UNKNOWN_TYPE] = "unknown_type",
    [MSG_E_TOO_LARGE] = "too_large",
    [MSG_E_SENDER_FORBIDDEN] = "sender_forbidden",
    [MSG_E_NOT_MEMBER] = "not_member",
    [MSG_E_FORBIDDEN] = "forbidden",
    [MSG_E_NOT_FOUND] = "not_found",
    [MSG_E_UNKNOWN_EVENT] = "unknown_event",
    [MSG_E_INTERNAL] = "internal",
    [MSG_E_RATE_LIMITED] = "rate_limited",
    [MSG_E_QUOTA_EXCEEDED] = "quota_exceeded",
    [MSG_E_STORAGE_FULL] = "storage_full",
    [MSG_E_UNAVAILABLE] = "unavailable",
    [MSG_E_AUTH_REQUIRED] = "auth_required",
    [MSG_E_INVALID_TOKEN] = "invalid_token",
    [MSG_E_TOKEN_EXPIRED] = "token_expired",
    [MSG_E_TOKEN_NOT_YET_VALID] = "token_not_yet_valid",
    [MSG_E_INVALID_USER] = "invalid_user",
    [MSG_E_AUTH_UNAVAILABLE] = "auth_unavailable",
};

static bool name_is(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

const char *msg_type_name(msg_type t)
{
    return t >= MSG_TEXT && t <= MSG_SYSTEM ? type_names[t] : NULL;
}

const char *msg_type_with_article(msg_type t)
{
    static const char *const phrases[] = {
        [MSG_TEXT] = "a text",     [MSG_IMAGE] = "an image", [MSG_FILE] = "a file",
        [MSG_AUDIO] = "an audio",  [MSG_VIDEO] = "a video",  [MSG_LOCATION] = "a location",
        [MSG_SYSTEM] = "a system",
    };
    return t >= MSG_TEXT && t <= MSG_SYSTEM ? phrases[t] : NULL;
}

int msg_type_from_name(const char *s, size_t len)
{
    for (int t = MSG_TEXT; t <= MSG_SYSTEM; t++)
        if (name_is(s, len, type_names[t])) return t;
    return 0;
}

const char *msg_priority_name(msg_priority p)
{
    return p >= MSG_PRIO_LOW && p <= MSG_PRIO_URGENT ? prio_names[p] : NULL;
}

int msg_priority_from_name(const char *s, size_t len)
{
    for (int p = MSG_PRIO_LOW; p <= MSG_PRIO_URGENT; p++)
        if (name_is(s, len, prio_names[p])) return p;
    return -1;
}

bool msg_type_has_media(msg_type t)
{
    return t == MSG_IMAGE || t == MSG_FILE || t == MSG_AUDIO || t == MSG_VIDEO;
}

const char *msg_errcode_name(msg_errcode c)
{
    return c >= MSG_OK && c < MSG_E_COUNT ? err_names[c] : "internal";
}

int msg_errcode_from_name(const char *s, size_t len)
{
    for (int c = MSG_E_BAD_REQUEST; c < MSG_E_COUNT; c++)
        if (name_is(s, len, err_names[c])) return c;
    return MSG_OK;
}

void msg_limits_init(msg_limits *l)
{
    l->max_text = 8192;
    l->max_caption = 1024;
    l->max_name = 255;
    l->max_label = 256;
    l->max_depth = 8;
}

/* ---- errors ---- */

msg_errcode msg_fail(msg_error *err, msg_errcode code, const char *field, const char *fmt, ...)
{
    if (!err) return code;
    err->code = code;
    err->retry_after_ms = 0;
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return code;
}

static int append_err_body(pbuf *out, const msg_error *err)
{
    int rc = pbuf_append_str(out, "\"code\":");
    const char *name = msg_errcode_name(err->code);
    if (rc == 0) rc = json_append_string(out, name, strlen(name));
    if (rc == 0) rc = pbuf_append_str(out, ",\"message\":");
    /* A message cut at its byte limit may end inside a character: drop
     * the partial one rather than the whole message. */
    size_t ml = strlen(err->message);
    for (int i = 0; i < 4 && ml && !utf8_valid((const uint8_t *)err->message, ml); i++) ml--;
    if (rc == 0 && json_append_string(out, err->message, ml) != 0)
        rc = json_append_string(out, "error", 5);
    if (rc == 0 && err->field[0]) {
        rc = pbuf_append_str(out, ",\"field\":");
        if (rc == 0) rc = json_append_string(out, err->field, strlen(err->field));
    }
    if (rc == 0 && err->retry_after_ms > 0)
        rc = pbuf_appendf(out, ",\"retry_after_ms\":%lld", (long long)err->retry_after_ms);
    return rc;
}

int msg_encode_error(pbuf *out, const msg_error *err)
{
    int rc = pbuf_append_str(out, "{\"ok\":false,\"error\":{");
    if (rc == 0) rc = append_err_body(out, err);
    if (rc == 0) rc = pbuf_append_str(out, "}}");
    return rc;
}

int msg_encode_connect_error(pbuf *out, const msg_error *err)
{
    int rc = pbuf_append(out, "{", 1);
    if (rc == 0) rc = append_err_body(out, err);
    if (rc == 0) rc = pbuf_append(out, "}", 1);
    return rc;
}

/* ---- member scanning ---- */

/* A member table: names and the spans found for them. */
typedef struct field {
    const char *name;
    json_val v; /* type JSON_INVALID while absent */
} field;

/* Objects from clients are strict: a member naming the sender, an
 * unknown member or a repeated one is an error (a field silently ignored
 * today would change meaning when a later version defines it). Objects
 * from the server are read leniently, skipping unknown members, so that a
 * client keeps working when a newer server adds fields. */
enum { FROM_CLIENT, FROM_SERVER };

/* Reads the members of obj into fields[]. Returns MSG_OK, or (from a
 * client) the error of the first sender member, unknown member (reported
 * with prefix) or repeated member. */
/* e->field = "prefix.name" (or "name"), cut to the buffer: a path is
 * for humans and logs, and a long unknown name must not hide the error. */
static void field_path(msg_error *e, const char *prefix, const char *name)
{
    int n = snprintf(e->field, sizeof e->field, "%s%s%s", prefix, prefix[0] ? "." : "", name);
    if (n < 0) e->field[0] = 0;
}

static msg_errcode scan(const json_val *obj, field *f, size_t nf, const char *prefix, int mode,
                        msg_error *err)
{
    for (size_t i = 0; i < nf; i++) f[i].v.type = JSON_INVALID;
    json_iter it;
    json_val k, v;
    char name[40];
    msg_errcode first = MSG_OK;
    msg_error tmp;
    json_iter_init(&it, obj);
    while (json_object_next(&it, &k, &v)) {
        long n = json_string_decode(&k, name, sizeof name - 1);
        if (n >= 0) name[n] = 0;
        if (mode == FROM_CLIENT && n >= 0 && (!strcmp(name, "from") || !strcmp(name, "sender")))
            return msg_fail(err, MSG_E_SENDER_FORBIDDEN, name,
                            "%s: the sender is the authenticated user, not a field", name);
        size_t i = 0;
        while (n >= 0 && i < nf && strcmp(f[i].name, name) != 0) i++;
        if (first != MSG_OK) continue;
        if (mode == FROM_SERVER && (n < 0 || i == nf)) continue;
        if (n < 0 || i == nf) {
            char shown[24];
            long sl = json_string_decode(&k, shown, sizeof shown - 1);
            if (sl < 0) sl = 0;
            shown[sl] = 0;
            for (long j = 0; j < sl; j++)
                if ((unsigned char)shown[j] < 0x20 || (unsigned char)shown[j] >= 0x7f)
                    shown[j] = '?';
            first = msg_fail(&tmp, MSG_E_UNKNOWN_FIELD, "", "unknown field %s%s%s", prefix,
                             prefix[0] ? "." : "", shown);
            field_path(&tmp, prefix, shown);
        } else if (f[i].v.type != JSON_INVALID) {
            first = msg_fail(&tmp, MSG_E_INVALID_FIELD, "", "%s%s%s given twice", prefix,
                             prefix[0] ? "." : "", name);
            field_path(&tmp, prefix, name);
        } else {
            f[i].v = v;
        }
    }
    if (first != MSG_OK && err) *err = tmp;
    return first;
}

static bool has(const field *f)
{
    return f->v.type != JSON_INVALID;
}

size_t msg_json_string_len(const json_val *v)
{
    const char *p = v->p + 1, *end = v->p + v->len - 1;
    size_t n = 0;
    while (p < end) {
        if (*p != '\\') {
            n++;
            p++;
            continue;
        }
        if (p[1] != 'u') {
            n++;
            p += 2;
            continue;
        }
        unsigned cp = (unsigned)strtoul((char[5]){p[2], p[3], p[4], p[5], 0}, NULL, 16);
        p += 6;
        if (cp >= 0xd800 && cp <= 0xdbff) {
            /* A validated string pairs every high surrogate. */
            n += 4;
            p += 6;
        } else {
            n += cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
        }
    }
    return n;
}

/* A string member decoded into out (cap bytes incl. NUL) and checked. */
static msg_errcode get_ident(const field *f, const char *path, char *out, size_t cap,
                             bool (*valid)(const char *, size_t), const char *what, msg_error *err)
{
    if (f->v.type != JSON_STRING)
        return msg_fail(err, MSG_E_INVALID_FIELD, path, "%s must be a string", path);
    long n = json_string_decode(&f->v, out, cap - 1);
    if (n < 0 || !valid(out, (size_t)n)) {
        out[0] = 0;
        return msg_fail(err, MSG_E_INVALID_FIELD, path, "%s is not a valid %s", path, what);
    }
    out[n] = 0;
    return MSG_OK;
}

static msg_errcode get_text(const field *f, const char *path, size_t min, size_t max, json_val *out,
                            msg_error *err)
{
    if (f->v.type != JSON_STRING)
        return msg_fail(err, MSG_E_INVALID_FIELD, path, "%s must be a string", path);
    size_t n = msg_json_string_len(&f->v);
    if (n > max)
        return msg_fail(err, MSG_E_TOO_LARGE, path, "%s is %zu bytes, the limit is %zu", path, n,
                        max);
    if (n < min) return msg_fail(err, MSG_E_INVALID_FIELD, path, "%s must not be empty", path);
    *out = f->v;
    return MSG_OK;
}

static msg_errcode get_int(const field *f, const char *path, int64_t min, int64_t max, int64_t *out,
                           msg_error *err)
{
    int64_t v;
    if (f->v.type != JSON_NUMBER || !json_int(&f->v, &v))
        return msg_fail(err, MSG_E_INVALID_FIELD, path, "%s must be an integer", path);
    if (v < min || v > max)
        return msg_fail(err, MSG_E_INVALID_FIELD, path, "%s must be within %lld..%lld", path,
                        (long long)min, (long long)max);
    *out = v;
    return MSG_OK;
}

static msg_errcode get_conv_id(const field *f, const char *path, char out[MSG_CONV_MAX + 1],
                               msg_error *err)
{
    msg_conv c;
    char buf[MSG_CONV_MAX + 1];
    long n = f->v.type == JSON_STRING ? json_string_decode(&f->v, buf, sizeof buf - 1) : -1;
    if (f->v.type != JSON_STRING)
        return msg_fail(err, MSG_E_INVALID_FIELD, path, "%s must be a string", path);
    if (n < 0 || !msg_conv_parse(&c, buf, (size_t)n))
        return msg_fail(err, MSG_E_INVALID_FIELD, path,
                        "%s is not a conversation id (dm:<a>:<b> or room:<name>)", path);
    memcpy(out, c.id, strlen(c.id) + 1);
    return MSG_OK;
}

static msg_errcode need_object(const json_val *obj, msg_error *err)
{
    if (!obj || obj->type != JSON_OBJECT)
        return msg_fail(err, MSG_E_BAD_REQUEST, "", "the argument must be a JSON object");
    return MSG_OK;
}

/* ---- content ---- */

enum {
    C_TEXT,
    C_CAPTION,
    C_NAME,
    C_LABEL,
    C_LAT,
    C_LNG,
    C_MEDIA,
    C_MIME,
    C_SIZE,
    C_WIDTH,
    C_HEIGHT,
    C_DURATION,
    C_N
};

static const char *const content_names[C_N] = {"text", "caption", "name",   "label",
                                               "lat",  "lng",     "media",  "mime",
                                               "size", "width",   "height", "duration_ms"};

/* Which content fields each type allows (bit per C_*). */
static unsigned allowed_fields(msg_type t, bool server)
{
    unsigned media = (1u << C_MEDIA) | (server ? (1u << C_MIME) | (1u << C_SIZE) : 0);
    switch (t) {
    case MSG_TEXT:
    case MSG_SYSTEM:
        return 1u << C_TEXT;
    case MSG_IMAGE:
        return media | (1u << C_CAPTION) | (1u << C_WIDTH) | (1u << C_HEIGHT);
    case MSG_FILE:
        return media | (1u << C_NAME);
    case MSG_AUDIO:
        return media | (1u << C_DURATION);
    case MSG_VIDEO:
        return media | (1u << C_CAPTION) | (1u << C_WIDTH) | (1u << C_HEIGHT) | (1u << C_DURATION);
    case MSG_LOCATION:
        return (1u << C_LAT) | (1u << C_LNG) | (1u << C_LABEL);
    }
    return 0;
}

static unsigned required_fields(msg_type t, bool server)
{
    switch (t) {
    case MSG_TEXT:
    case MSG_SYSTEM:
        return 1u << C_TEXT;
    case MSG_LOCATION:
        return (1u << C_LAT) | (1u << C_LNG);
    case MSG_IMAGE:
    case MSG_FILE:
    case MSG_AUDIO:
    case MSG_VIDEO:
        return (1u << C_MEDIA) | (server ? (1u << C_MIME) | (1u << C_SIZE) : 0);
    }
    return 0;
}

static bool valid_file_name(const json_val *v, size_t max)
{
    char buf[1024];
    if (max >= sizeof buf) max = sizeof buf - 1;
    long n = json_string_decode(v, buf, max);
    if (n <= 0) return false;
    for (long i = 0; i < n; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c < 0x20 || c == 0x7f || c == '/' || c == '\\') return false;
    }
    return !(n == 1 && buf[0] == '.') && !(n == 2 && buf[0] == '.' && buf[1] == '.');
}

static msg_errcode get_coord(const field *f, const char *path, double lim, msg_error *err)
{
    double d;
    if (f->v.type != JSON_NUMBER || !json_double(&f->v, &d))
        return msg_fail(err, MSG_E_INVALID_FIELD, path, "%s must be a number", path);
    if (!(d >= -lim && d <= lim))
        return msg_fail(err, MSG_E_INVALID_FIELD, path, "%s must be within -%g..%g", path, lim,
                        lim);
    return MSG_OK;
}

msg_errcode msg_parse_content(const json_val *obj, msg_type t, bool server_fields,
                              const msg_limits *l, msg_content *c, msg_error *err)
{
    memset(c, 0, sizeof *c);
    c->size = c->width = c->height = c->duration_ms = -1;
    c->text.type = c->caption.type = c->name.type = c->label.type = JSON_INVALID;
    c->lat.type = c->lng.type = JSON_INVALID;
    if (!obj || obj->type != JSON_OBJECT)
        return msg_fail(err, MSG_E_INVALID_FIELD, "content", "content must be an object");
    if (!msg_type_name(t)) return msg_fail(err, MSG_E_UNKNOWN_TYPE, "type", "unknown type");
    field f[C_N];
    for (int i = 0; i < C_N; i++) f[i].name = content_names[i];
    msg_errcode rc = scan(obj, f, C_N, "content", server_fields ? FROM_SERVER : FROM_CLIENT, err);
    if (rc) return rc;
    unsigned allowed = allowed_fields(t, server_fields), need = required_fields(t, server_fields);
    for (int i = 0; i < C_N; i++) {
        char path[40];
        snprintf(path, sizeof path, "content.%s", content_names[i]);
        if (has(&f[i]) && !(allowed & (1u << i)) && server_fields) f[i].v.type = JSON_INVALID;
        if (has(&f[i]) && !(allowed & (1u << i)))
            return msg_fail(err, MSG_E_UNKNOWN_FIELD, path, "%s is not a field of %s message", path,
                            msg_type_with_article(t));
    }
    for (int i = 0; i < C_N; i++) {
        char path[40];
        snprintf(path, sizeof path, "content.%s", content_names[i]);
        if (!has(&f[i]) && (need & (1u << i)))
            return msg_fail(err, MSG_E_MISSING_FIELD, path, "%s message needs %s",
                            msg_type_with_article(t), path);
    }
    if (has(&f[C_TEXT]) &&
        (rc = get_text(&f[C_TEXT], "content.text", 1, l->max_text, &c->text, err)))
        return rc;
    if (has(&f[C_CAPTION]) &&
        (rc = get_text(&f[C_CAPTION], "content.caption", 0, l->max_caption, &c->caption, err)))
        return rc;
    if (has(&f[C_NAME])) {
        if ((rc = get_text(&f[C_NAME], "content.name", 1, l->max_name, &c->name, err))) return rc;
        if (!valid_file_name(&c->name, l->max_name))
            return msg_fail(err, MSG_E_INVALID_FIELD, "content.name",
                            "content.name must not contain control characters or slashes");
    }
    if (has(&f[C_LABEL]) &&
        (rc = get_text(&f[C_LABEL], "content.label", 0, l->max_label, &c->label, err)))
        return rc;
    if (has(&f[C_LAT])) {
        if ((rc = get_coord(&f[C_LAT], "content.lat", 90, err))) return rc;
        c->lat = f[C_LAT].v;
    }
    if (has(&f[C_LNG])) {
        if ((rc = get_coord(&f[C_LNG], "content.lng", 180, err))) return rc;
        c->lng = f[C_LNG].v;
    }
    if (has(&f[C_MEDIA]) &&
        (rc = get_ident(&f[C_MEDIA], "content.media", c->media, sizeof c->media, msg_valid_media_id,
                        "media id (64 lowercase hex digits)", err)))
        return rc;
    if (has(&f[C_MIME]) && (rc = get_ident(&f[C_MIME], "content.mime", c->mime, sizeof c->mime,
                                           msg_valid_mime, "media type", err)))
        return rc;
    if (has(&f[C_SIZE]) &&
        (rc = get_int(&f[C_SIZE], "content.size", 0, MSG_SEQ_MAX, &c->size, err)))
        return rc;
    if (has(&f[C_WIDTH]) &&
        (rc = get_int(&f[C_WIDTH], "content.width", 1, MSG_MAX_DIMENSION, &c->width, err)))
        return rc;
    if (has(&f[C_HEIGHT]) &&
        (rc = get_int(&f[C_HEIGHT], "content.height", 1, MSG_MAX_DIMENSION, &c->height, err)))
        return rc;
    if (has(&f[C_DURATION]) && (rc = get_int(&f[C_DURATION], "content.duration_ms", 0,
                                             MSG_MAX_DURATION_MS, &c->duration_ms, err)))
        return rc;
    return MSG_OK;
}

static int put_key(pbuf *out, bool *first, const char *key)
{
    int rc = pbuf_append_str(out, *first ? "\"" : ",\"");
    *first = false;
    if (rc == 0) rc = pbuf_append_str(out, key);
    if (rc == 0) rc = pbuf_append_str(out, "\":");
    return rc;
}

static int put_span(pbuf *out, bool *first, const char *key, const json_val *v)
{
    if (v->type == JSON_INVALID) return 0;
    int rc = put_key(out, first, key);
    return rc ? rc : pbuf_append(out, v->p, v->len);
}

static int put_str(pbuf *out, bool *first, const char *key, const char *s)
{
    int rc = put_key(out, first, key);
    return rc ? rc : json_append_string(out, s, strlen(s));
}

static int put_int(pbuf *out, bool *first, const char *key, int64_t v)
{
    int rc = put_key(out, first, key);
    if (rc) return rc;
    /* Every message has four numbers: printf is measurable here. */
    char tmp[24];
    size_t n = sizeof tmp;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[--n] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) tmp[--n] = '-';
    return pbuf_append(out, tmp + n, sizeof tmp - n);
}

int msg_encode_content(pbuf *out, msg_type t, const msg_content *c)
{
    bool first = true;
    int rc = pbuf_append(out, "{", 1);
    switch (t) {
    case MSG_TEXT:
    case MSG_SYSTEM:
        if (rc == 0) rc = put_span(out, &first, "text", &c->text);
        break;
    case MSG_LOCATION:
        if (rc == 0) rc = put_span(out, &first, "lat", &c->lat);
        if (rc == 0) rc = put_span(out, &first, "lng", &c->lng);
        if (rc == 0) rc = put_span(out, &first, "label", &c->label);
        break;
    case MSG_IMAGE:
    case MSG_FILE:
    case MSG_AUDIO:
    case MSG_VIDEO:
        if (rc == 0) rc = put_str(out, &first, "media", c->media);
        if (rc == 0 && c->mime[0]) rc = put_str(out, &first, "mime", c->mime);
        if (rc == 0 && c->size >= 0) rc = put_int(out, &first, "size", c->size);
        if (rc == 0) rc = put_span(out, &first, "caption", &c->caption);
        if (rc == 0) rc = put_span(out, &first, "name", &c->name);
        if (rc == 0 && c->width >= 0) rc = put_int(out, &first, "width", c->width);
        if (rc == 0 && c->height >= 0) rc = put_int(out, &first, "height", c->height);
        if (rc == 0 && c->duration_ms >= 0)
            rc = put_int(out, &first, "duration_ms", c->duration_ms);
        break;
    default:
        return PARLEY_EINVAL;
    }
    if (rc == 0) rc = pbuf_append(out, "}", 1);
    return rc;
}

/* ---- send_message ---- */

enum { S_CLIENT_ID, S_TO, S_ROOM, S_CONV, S_TYPE, S_PRIORITY, S_CONTENT, S_N };

msg_errcode msg_parse_send(const json_val *obj, const msg_limits *l, msg_send *m, msg_error *err)
{
    memset(m, 0, sizeof *m);
    m->priority = MSG_PRIO_NORMAL;
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[S_N] = {{"client_id", {0}}, {"to", {0}},       {"room", {0}},   {"conversation", {0}},
                    {"type", {0}},      {"priority", {0}}, {"content", {0}}};
    if ((rc = scan(obj, f, S_N, "", FROM_CLIENT, err))) return rc;
    if (!has(&f[S_CLIENT_ID]))
        return msg_fail(err, MSG_E_MISSING_FIELD, "client_id", "client_id is required");
    int targets = has(&f[S_TO]) + has(&f[S_ROOM]) + has(&f[S_CONV]);
    if (targets == 0)
        return msg_fail(err, MSG_E_MISSING_FIELD, "to",
                        "one of to, room or conversation is required");
    if (!has(&f[S_TYPE])) return msg_fail(err, MSG_E_MISSING_FIELD, "type", "type is required");
    if (!has(&f[S_CONTENT]))
        return msg_fail(err, MSG_E_MISSING_FIELD, "content", "content is required");
    if (targets > 1)
        return msg_fail(err, MSG_E_INVALID_FIELD, has(&f[S_TO]) ? "to" : "room",
                        "give only one of to, room and conversation");
    if ((rc = get_ident(&f[S_CLIENT_ID], "client_id", m->client_id, sizeof m->client_id,
                        msg_valid_client_id, "client id ([A-Za-z0-9._:-], 1 to 64 bytes)", err)))
        return rc;
    if (has(&f[S_TO])) {
        m->target_kind = MSG_CONV_DM;
        rc = get_ident(&f[S_TO], "to", m->target, MSG_USER_MAX + 1, msg_valid_user, "user id", err);
    } else if (has(&f[S_ROOM])) {
        m->target_kind = MSG_CONV_ROOM;
        rc = get_ident(&f[S_ROOM], "room", m->target, MSG_ROOM_MAX + 1, msg_valid_room, "room name",
                       err);
    } else {
        m->target_is_conv = true;
        rc = get_conv_id(&f[S_CONV], "conversation", m->target, err);
        msg_conv c;
        if (rc == MSG_OK && msg_conv_parse(&c, m->target, strlen(m->target)))
            m->target_kind = c.kind;
    }
    if (rc) return rc;
    if (f[S_TYPE].v.type != JSON_STRING)
        return msg_fail(err, MSG_E_INVALID_FIELD, "type", "type must be a string");
    char tname[16];
    long tn = json_string_decode(&f[S_TYPE].v, tname, sizeof tname - 1);
    int t = tn < 0 ? 0 : msg_type_from_name(tname, (size_t)tn);
    if (!t)
        return msg_fail(err, MSG_E_UNKNOWN_TYPE, "type",
                        "type must be text, image, file, audio, video, location or system");
    m->type = (msg_type)t;
    if (has(&f[S_PRIORITY])) {
        char pname[16];
        long pn = f[S_PRIORITY].v.type == JSON_STRING
                      ? json_string_decode(&f[S_PRIORITY].v, pname, sizeof pname - 1)
                      : -1;
        int p = pn < 0 ? -1 : msg_priority_from_name(pname, (size_t)pn);
        if (p < 0)
            return msg_fail(err, MSG_E_INVALID_FIELD, "priority",
                            "priority must be low, normal, high or urgent");
        m->priority = (msg_priority)p;
    }
    return msg_parse_content(&f[S_CONTENT].v, m->type, false, l, &m->content, err);
}

msg_errcode msg_send_resolve(const msg_send *m, const char *sender, msg_conv *c, msg_error *err)
{
    if (m->target_is_conv) {
        if (!msg_conv_parse(c, m->target, strlen(m->target)))
            return msg_fail(err, MSG_E_INVALID_FIELD, "conversation", "bad conversation id");
        if (c->kind == MSG_CONV_DM && !msg_conv_peer(c, sender))
            return msg_fail(err, MSG_E_NOT_MEMBER, "conversation",
                            "you are not a participant of %s", c->id);
        return MSG_OK;
    }
    if (m->target_kind == MSG_CONV_ROOM) {
        msg_conv_room(c, m->target);
        return MSG_OK;
    }
    if (strcmp(m->target, sender) == 0)
        return msg_fail(err, MSG_E_INVALID_FIELD, "to", "to: a direct message needs another user");
    msg_conv_dm(c, sender, m->target);
    return MSG_OK;
}

int msg_encode_send(pbuf *out, const msg_send *m)
{
    bool first = true;
    int rc = pbuf_append(out, "{", 1);
    if (rc == 0) rc = put_str(out, &first, "client_id", m->client_id);
    const char *key = m->target_is_conv                 ? "conversation"
                      : m->target_kind == MSG_CONV_ROOM ? "room"
                                                        : "to";
    if (rc == 0) rc = put_str(out, &first, key, m->target);
    const char *tn = msg_type_name(m->type), *pn = msg_priority_name(m->priority);
    if (!tn || !pn) return PARLEY_EINVAL;
    if (rc == 0) rc = put_str(out, &first, "type", tn);
    if (rc == 0) rc = put_str(out, &first, "priority", pn);
    if (rc == 0) rc = put_key(out, &first, "content");
    if (rc == 0) rc = msg_encode_content(out, m->type, &m->content);
    if (rc == 0) rc = pbuf_append(out, "}", 1);
    return rc;
}

/* ---- message ---- */

int msg_encode_message(pbuf *out, const msg_message *m, const char *content_json,
                       size_t content_len)
{
    const char *tn = msg_type_name(m->type), *pn = msg_priority_name(m->priority);
    if (!tn || !pn) return PARLEY_EINVAL;
    bool first = true;
    int rc = pbuf_append(out, "{", 1);
    if (rc == 0) rc = put_int(out, &first, "id", m->id);
    if (rc == 0) rc = put_str(out, &first, "conversation", m->conversation);
    if (rc == 0) rc = put_int(out, &first, "seq", m->seq);
    if (rc == 0) rc = put_str(out, &first, "from", m->from);
    if (rc == 0) rc = put_str(out, &first, "client_id", m->client_id);
    if (rc == 0) rc = put_str(out, &first, "type", tn);
    if (rc == 0) rc = put_str(out, &first, "priority", pn);
    if (rc == 0) rc = put_int(out, &first, "ts", m->ts);
    if (rc == 0) rc = put_key(out, &first, "content");
    if (rc == 0)
        rc = content_json ? pbuf_append(out, content_json, content_len)
                          : msg_encode_content(out, m->type, &m->content);
    if (rc == 0) rc = pbuf_append(out, "}", 1);
    return rc;
}

enum { M_ID, M_CONV, M_SEQ, M_FROM, M_CLIENT_ID, M_TYPE, M_PRIORITY, M_TS, M_CONTENT, M_N };

msg_errcode msg_parse_message(const json_val *obj, const msg_limits *l, msg_message *m,
                              msg_error *err)
{
    memset(m, 0, sizeof *m);
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[M_N] = {{"id", {0}},       {"conversation", {0}}, {"seq", {0}},
                    {"from", {0}},     {"client_id", {0}},    {"type", {0}},
                    {"priority", {0}}, {"ts", {0}},           {"content", {0}}};
    if ((rc = scan(obj, f, M_N, "", FROM_SERVER, err))) return rc;
    for (int i = 0; i < M_N; i++)
        if (!has(&f[i]))
            return msg_fail(err, MSG_E_MISSING_FIELD, f[i].name, "%s is required", f[i].name);
    if ((rc = get_int(&f[M_ID], "id", 1, MSG_SEQ_MAX, &m->id, err))) return rc;
    if ((rc = get_conv_id(&f[M_CONV], "conversation", m->conversation, err))) return rc;
    if ((rc = get_int(&f[M_SEQ], "seq", 1, MSG_SEQ_MAX, &m->seq, err))) return rc;
    if ((rc = get_ident(&f[M_FROM], "from", m->from, sizeof m->from, msg_valid_user, "user id",
                        err)))
        return rc;
    if ((rc = get_ident(&f[M_CLIENT_ID], "client_id", m->client_id, sizeof m->client_id,
                        msg_valid_client_id, "client id", err)))
        return rc;
    if ((rc = get_int(&f[M_TS], "ts", 0, MSG_SEQ_MAX, &m->ts, err))) return rc;
    char name[16];
    long n = f[M_TYPE].v.type == JSON_STRING
                 ? json_string_decode(&f[M_TYPE].v, name, sizeof name - 1)
                 : -1;
    int t = n < 0 ? 0 : msg_type_from_name(name, (size_t)n);
    if (!t) return msg_fail(err, MSG_E_UNKNOWN_TYPE, "type", "unknown message type");
    m->type = (msg_type)t;
    n = f[M_PRIORITY].v.type == JSON_STRING
            ? json_string_decode(&f[M_PRIORITY].v, name, sizeof name - 1)
            : -1;
    int p = n < 0 ? -1 : msg_priority_from_name(name, (size_t)n);
    if (p < 0) return msg_fail(err, MSG_E_INVALID_FIELD, "priority", "unknown priority");
    m->priority = (msg_priority)p;
    return msg_parse_content(&f[M_CONTENT].v, m->type, true, l, &m->content, err);
}

/* ---- receipts, status, typing ---- */

msg_errcode msg_parse_receipt(const json_val *obj, msg_receipt *r, msg_error *err)
{
    memset(r, 0, sizeof *r);
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[3] = {{"conversation", {0}}, {"status", {0}}, {"seq", {0}}};
    if ((rc = scan(obj, f, 3, "", FROM_CLIENT, err))) return rc;
    for (int i = 0; i < 3; i++)
        if (!has(&f[i]))
            return msg_fail(err, MSG_E_MISSING_FIELD, f[i].name, "%s is required", f[i].name);
    if ((rc = get_conv_id(&f[0], "conversation", r->conversation, err))) return rc;
    if (json_string_eq(&f[1].v, "delivered"))
        r->status = MSG_DELIVERED;
    else if (json_string_eq(&f[1].v, "read"))
        r->status = MSG_READ;
    else
        return msg_fail(err, MSG_E_INVALID_FIELD, "status", "status must be delivered or read");
    return get_int(&f[2], "seq", 1, MSG_SEQ_MAX, &r->seq, err);
}

int msg_encode_receipt(pbuf *out, const msg_receipt *r)
{
    bool first = true;
    int rc = pbuf_append(out, "{", 1);
    if (rc == 0) rc = put_str(out, &first, "conversation", r->conversation);
    if (rc == 0) rc = put_str(out, &first, "status", r->status == MSG_READ ? "read" : "delivered");
    if (rc == 0) rc = put_int(out, &first, "seq", r->seq);
    if (rc == 0) rc = pbuf_append(out, "}", 1);
    return rc;
}

int msg_encode_status(pbuf *out, const msg_status *s)
{
    bool first = true;
    int rc = pbuf_append(out, "{", 1);
    if (rc == 0) rc = put_str(out, &first, "conversation", s->conversation);
    if (rc == 0) rc = put_str(out, &first, "user", s->user);
    if (rc == 0) rc = put_int(out, &first, "delivered", s->delivered);
    if (rc == 0) rc = put_int(out, &first, "read", s->read);
    if (rc == 0) rc = pbuf_append(out, "}", 1);
    return rc;
}

msg_errcode msg_parse_status(const json_val *obj, msg_status *s, msg_error *err)
{
    memset(s, 0, sizeof *s);
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[4] = {{"conversation", {0}}, {"user", {0}}, {"delivered", {0}}, {"read", {0}}};
    if ((rc = scan(obj, f, 4, "", FROM_SERVER, err))) return rc;
    for (int i = 0; i < 4; i++)
        if (!has(&f[i]))
            return msg_fail(err, MSG_E_MISSING_FIELD, f[i].name, "%s is required", f[i].name);
    if ((rc = get_conv_id(&f[0], "conversation", s->conversation, err))) return rc;
    if ((rc = get_ident(&f[1], "user", s->user, sizeof s->user, msg_valid_user, "user id", err)))
        return rc;
    if ((rc = get_int(&f[2], "delivered", 0, MSG_SEQ_MAX, &s->delivered, err))) return rc;
    return get_int(&f[3], "read", 0, MSG_SEQ_MAX, &s->read, err);
}

msg_errcode msg_parse_typing(const json_val *obj, bool from_server, msg_typing *t, msg_error *err)
{
    memset(t, 0, sizeof *t);
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[3] = {{"conversation", {0}}, {"state", {0}}, {"user", {0}}};
    if ((rc = scan(obj, f, from_server ? 3 : 2, "", from_server ? FROM_SERVER : FROM_CLIENT, err)))
        return rc;
    for (int i = 0; i < (from_server ? 3 : 2); i++)
        if (!has(&f[i]))
            return msg_fail(err, MSG_E_MISSING_FIELD, f[i].name, "%s is required", f[i].name);
    if ((rc = get_conv_id(&f[0], "conversation", t->conversation, err))) return rc;
    if (json_string_eq(&f[1].v, "start"))
        t->start = true;
    else if (!json_string_eq(&f[1].v, "stop"))
        return msg_fail(err, MSG_E_INVALID_FIELD, "state", "state must be start or stop");
    if (from_server)
        return get_ident(&f[2], "user", t->user, sizeof t->user, msg_valid_user, "user id", err);
    return MSG_OK;
}

int msg_encode_typing(pbuf *out, const msg_typing *t)
{
    bool first = true;
    int rc = pbuf_append(out, "{", 1);
    if (rc == 0) rc = put_str(out, &first, "conversation", t->conversation);
    if (rc == 0 && t->user[0]) rc = put_str(out, &first, "user", t->user);
    if (rc == 0) rc = put_str(out, &first, "state", t->start ? "start" : "stop");
    if (rc == 0) rc = pbuf_append(out, "}", 1);
    return rc;
}

/* ---- sync and history ---- */

msg_errcode msg_parse_sync(const json_val *obj, msg_sync *s, msg_error *err)
{
    memset(s, 0, sizeof *s);
    s->since.type = JSON_INVALID;
    s->limit = MSG_SYNC_DEF_LIMIT;
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[3] = {{"since", {0}}, {"limit", {0}}, {"cursor", {0}}};
    if ((rc = scan(obj, f, 3, "", FROM_CLIENT, err))) return rc;
    if (has(&f[1])) {
        int64_t v = 0;
        if ((rc = get_int(&f[1], "limit", 1, MSG_SYNC_MAX_LIMIT, &v, err))) return rc;
        s->limit = (unsigned)v;
    }
    /* "" is the start (what `next` says when only messages were cut on the
     * first page). */
    if (has(&f[2]) && !(f[2].v.type == JSON_STRING && f[2].v.len == 2) &&
        (rc = get_conv_id(&f[2], "cursor", s->cursor, err)))
        return rc;
    if (!has(&f[0])) return MSG_OK;
    if (f[0].v.type != JSON_OBJECT)
        return msg_fail(err, MSG_E_INVALID_FIELD, "since",
                        "since must be an object of conversation id -> seq");
    size_t n = json_count(&f[0].v);
    if (n > MSG_SYNC_MAX_SINCE)
        return msg_fail(err, MSG_E_TOO_LARGE, "since", "since names %zu conversations, at most %d",
                        n, MSG_SYNC_MAX_SINCE);
    json_iter it;
    json_val k, v;
    json_iter_init(&it, &f[0].v);
    while (json_object_next(&it, &k, &v)) {
        field kf = {"since", k}, vf = {"since", v};
        char id[MSG_CONV_MAX + 1];
        int64_t seq;
        if ((rc = get_conv_id(&kf, "since", id, err))) return rc;
        if ((rc = get_int(&vf, "since", 0, MSG_SEQ_MAX, &seq, err))) return rc;
    }
    s->since = f[0].v;
    s->nsince = n;
    return MSG_OK;
}

void msg_sync_iter_init(const msg_sync *s, json_iter *it)
{
    if (s->since.type == JSON_OBJECT)
        json_iter_init(it, &s->since);
    else
        it->p = it->end = NULL;
}

bool msg_sync_iter_next(json_iter *it, char id[MSG_CONV_MAX + 1], int64_t *seq)
{
    json_val k, v;
    if (!it->p || !json_object_next(it, &k, &v)) return false;
    long n = json_string_decode(&k, id, MSG_CONV_MAX);
    if (n < 0) n = 0; /* cannot happen after msg_parse_sync */
    id[n] = 0;
    if (!json_int(&v, seq)) *seq = 0;
    return true;
}

int64_t msg_sync_since(const msg_sync *s, const char *id)
{
    json_iter it;
    char k[MSG_CONV_MAX + 1];
    int64_t seq, found = 0;
    msg_sync_iter_init(s, &it);
    while (msg_sync_iter_next(&it, k, &seq))
        if (strcmp(k, id) == 0) found = seq; /* the last one wins, as in JSON.parse */
    return found;
}

msg_errcode msg_parse_history(const json_val *obj, msg_history *h, msg_error *err)
{
    memset(h, 0, sizeof *h);
    h->limit = MSG_HISTORY_DEF_LIMIT;
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[3] = {{"conversation", {0}}, {"before", {0}}, {"limit", {0}}};
    if ((rc = scan(obj, f, 3, "", FROM_CLIENT, err))) return rc;
    if (!has(&f[0]))
        return msg_fail(err, MSG_E_MISSING_FIELD, "conversation", "conversation is required");
    if ((rc = get_conv_id(&f[0], "conversation", h->conversation, err))) return rc;
    if (has(&f[1]) && (rc = get_int(&f[1], "before", 1, MSG_SEQ_MAX, &h->before, err))) return rc;
    if (has(&f[2])) {
        int64_t v = 0;
        if ((rc = get_int(&f[2], "limit", 1, MSG_HISTORY_MAX_LIMIT, &v, err))) return rc;
        h->limit = (unsigned)v;
    }
    return MSG_OK;
}

msg_errcode msg_parse_room_req(const json_val *obj, char room[MSG_ROOM_MAX + 1], msg_error *err)
{
    room[0] = 0;
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[1] = {{"room", {0}}};
    if ((rc = scan(obj, f, 1, "", FROM_CLIENT, err))) return rc;
    if (!has(&f[0])) return msg_fail(err, MSG_E_MISSING_FIELD, "room", "room is required");
    return get_ident(&f[0], "room", room, MSG_ROOM_MAX + 1, msg_valid_room,
                     "room name ([A-Za-z0-9._-], 1 to 64 bytes)", err);
}

msg_errcode msg_parse_upload(const json_val *obj, char mime[MSG_MIME_MAX + 1], unsigned *num,
                             msg_error *err)
{
    mime[0] = 0;
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[2] = {{"mime", {0}}, {"data", {0}}};
    if ((rc = scan(obj, f, 2, "", FROM_CLIENT, err))) return rc;
    if (!has(&f[0])) return msg_fail(err, MSG_E_MISSING_FIELD, "mime", "mime is required");
    if (!has(&f[1])) return msg_fail(err, MSG_E_MISSING_FIELD, "data", "data is required");
    if ((rc = get_ident(&f[0], "mime", mime, MSG_MIME_MAX + 1, msg_valid_mime, "media type", err)))
        return rc;
    json_val ph, n;
    int64_t v;
    if (f[1].v.type != JSON_OBJECT || !json_object_get(&f[1].v, "_placeholder", &ph) ||
        ph.type != JSON_TRUE || !json_object_get(&f[1].v, "num", &n) || !json_int(&n, &v) ||
        v < 0 || v > 255)
        return msg_fail(err, MSG_E_INVALID_FIELD, "data", "data must be a binary attachment");
    *num = (unsigned)v;
    return MSG_OK;
}

/* ---- acknowledgements and arguments ---- */

bool msg_parse_ack(const json_val *obj, bool *ok, msg_error *err)
{
    json_val v, e, c, m, f;
    if (!obj || obj->type != JSON_OBJECT || !json_object_get(obj, "ok", &v)) return false;
    if (v.type == JSON_TRUE) {
        *ok = true;
        return true;
    }
    if (v.type != JSON_FALSE) return false;
    *ok = false;
    memset(err, 0, sizeof *err);
    if (!json_object_get(obj, "error", &e) || e.type != JSON_OBJECT) return false;
    if (!json_object_get(&e, "code", &c) || c.type != JSON_STRING) return false;
    char name[32];
    long n = json_string_decode(&c, name, sizeof name - 1);
    err->code = n < 0 ? MSG_OK : (msg_errcode)msg_errcode_from_name(name, (size_t)n);
    if (json_object_get(&e, "message", &m) && m.type == JSON_STRING) {
        n = json_string_decode(&m, err->message, sizeof err->message - 1);
        err->message[n < 0 ? 0 : n] = 0;
    }
    if (json_object_get(&e, "field", &f) && f.type == JSON_STRING) {
        n = json_string_decode(&f, err->field, sizeof err->field - 1);
        err->field[n < 0 ? 0 : n] = 0;
    }
    json_val ra;
    int64_t ms;
    if (json_object_get(&e, "retry_after_ms", &ra) && json_int(&ra, &ms) && ms > 0 &&
        ms <= 86400000)
        err->retry_after_ms = ms;
    return true;
}

msg_errcode msg_args_object(const char *json, size_t len, const msg_limits *l, json_val *obj,
                            msg_error *err)
{
    json_val arr;
    obj->type = JSON_INVALID;
    if (json_parse(json, len, l->max_depth, &arr, NULL) != 0 || arr.type != JSON_ARRAY)
        return msg_fail(err, MSG_E_BAD_REQUEST, "",
                        "the arguments must be one JSON object (nested at most %u deep)",
                        l->max_depth);
    json_iter it;
    json_iter_init(&it, &arr);
    if (!json_array_next(&it, obj) || obj->type != JSON_OBJECT) {
        obj->type = JSON_INVALID;
        return msg_fail(err, MSG_E_BAD_REQUEST, "", "the argument must be a JSON object");
    }
    json_val extra;
    if (json_array_next(&it, &extra)) {
        obj->type = JSON_INVALID;
        return msg_fail(err, MSG_E_BAD_REQUEST, "", "one argument expected");
    }
    return MSG_OK;
}

/* ---- presence ---- */

static const char *const pstatus_names[] = {
    [MSG_PS_OFFLINE] = "offline",
    [MSG_PS_BUSY] = "busy",
    [MSG_PS_AWAY] = "away",
    [MSG_PS_ONLINE] = "online",
};

const char *msg_pstatus_name(msg_pstatus s)
{
    return (unsigned)s < PARLEY_ARRAY_LEN(pstatus_names) ? pstatus_names[s] : NULL;
}

int msg_pstatus_from_name(const char *s, size_t len)
{
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(pstatus_names); i++)
        if (strlen(pstatus_names[i]) == len && memcmp(pstatus_names[i], s, len) == 0) return (int)i;
    return -1;
}

int msg_encode_presence(pbuf *out, const msg_presence *p)
{
    bool first = true;
    const char *st = msg_pstatus_name(p->status);
    if (!st) return PARLEY_EINVAL;
    int rc = pbuf_append(out, "{", 1);
    if (rc == 0) rc = put_str(out, &first, "user", p->user);
    if (rc == 0) rc = put_str(out, &first, "status", st);
    if (rc == 0) rc = put_str(out, &first, "text", p->text);
    if (rc == 0 && p->last_seen >= 0) rc = put_int(out, &first, "last_seen", p->last_seen);
    if (rc == 0 && p->last_seen < 0) rc = pbuf_append_str(out, ",\"last_seen\":null");
    if (rc == 0) rc = put_int(out, &first, "devices", p->devices);
    if (rc == 0 && p->invisible) rc = pbuf_append_str(out, ",\"invisible\":true");
    if (rc == 0) rc = pbuf_append(out, "}", 1);
    return rc;
}

/* Status text: bounded before it is decoded, one line of printable text. */
static msg_errcode get_status_text(const field *f, char out[MSG_PRESENCE_TEXT_MAX + 1],
                                   msg_error *err)
{
    json_val v;
    msg_errcode rc = get_text(f, "text", 0, MSG_PRESENCE_TEXT_MAX, &v, err);
    if (rc) return rc;
    long n = json_string_decode(&v, out, MSG_PRESENCE_TEXT_MAX);
    if (n < 0) /* cannot happen after the length check; stay safe */
        return msg_fail(err, MSG_E_TOO_LARGE, "text", "text is over %d bytes",
                        MSG_PRESENCE_TEXT_MAX);
    for (long i = 0; i < n; i++) {
        if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f) {
            out[0] = 0;
            return msg_fail(err, MSG_E_INVALID_FIELD, "text",
                            "text must not contain control characters");
        }
    }
    out[n] = 0;
    return MSG_OK;
}

msg_errcode msg_parse_presence_set(const json_val *obj, msg_pstatus *status, bool *has_text,
                                   char text[MSG_PRESENCE_TEXT_MAX + 1], int *invisible,
                                   msg_error *err)
{
    *status = MSG_PS_OFFLINE;
    *has_text = false;
    text[0] = 0;
    if (invisible) *invisible = -1;
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[3] = {{"status", {0}}, {"text", {0}}, {"invisible", {0}}};
    if ((rc = scan(obj, f, invisible ? 3 : 2, "", FROM_CLIENT, err))) return rc;
    if (invisible && has(&f[2])) {
        if (f[2].v.type != JSON_TRUE && f[2].v.type != JSON_FALSE)
            return msg_fail(err, MSG_E_INVALID_FIELD, "invisible", "invisible must be a boolean");
        *invisible = f[2].v.type == JSON_TRUE;
    }
    if (!has(&f[0]) && (!invisible || *invisible < 0))
        return msg_fail(err, MSG_E_MISSING_FIELD, "status", "status is required");
    if (has(&f[0])) {
        int s = -1;
        if (f[0].v.type == JSON_STRING) {
            char name[8];
            long n = json_string_decode(&f[0].v, name, sizeof name - 1);
            if (n >= 0) s = msg_pstatus_from_name(name, (size_t)n);
        }
        /* Offline is what the server says when no device is connected
         * (appearing offline is invisible's business). */
        if (s < 0 || s == MSG_PS_OFFLINE)
            return msg_fail(err, MSG_E_INVALID_FIELD, "status",
                            "status must be online, away or busy");
        *status = (msg_pstatus)s;
    }
    if (!has(&f[1])) return MSG_OK;
    if ((rc = get_status_text(&f[1], text, err))) return rc;
    *has_text = true;
    return MSG_OK;
}

msg_errcode msg_parse_presence_users(const json_val *obj,
                                     char users[MSG_PRESENCE_USERS_MAX][MSG_USER_MAX + 1],
                                     size_t *n, msg_error *err)
{
    *n = 0;
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[1] = {{"users", {0}}};
    if ((rc = scan(obj, f, 1, "", FROM_CLIENT, err))) return rc;
    if (!has(&f[0])) return msg_fail(err, MSG_E_MISSING_FIELD, "users", "users is required");
    if (f[0].v.type != JSON_ARRAY)
        return msg_fail(err, MSG_E_INVALID_FIELD, "users", "users must be an array of user ids");
    json_iter it;
    json_val v;
    json_iter_init(&it, &f[0].v);
    size_t count = 0;
    /* Counted first: nothing is decoded from an array over the limit. */
    while (json_array_next(&it, &v))
        if (++count > MSG_PRESENCE_USERS_MAX)
            return msg_fail(err, MSG_E_TOO_LARGE, "users", "at most %d users per request",
                            MSG_PRESENCE_USERS_MAX);
    if (count == 0) return msg_fail(err, MSG_E_INVALID_FIELD, "users", "users must not be empty");
    json_iter_init(&it, &f[0].v);
    while (json_array_next(&it, &v)) {
        field one = {"users", v};
        if ((rc = get_ident(&one, "users", users[*n], MSG_USER_MAX + 1, msg_valid_user, "user id",
                            err))) {
            *n = 0;
            return rc;
        }
        (*n)++;
    }
    return MSG_OK;
}

msg_errcode msg_parse_presence(const json_val *obj, msg_presence *p, msg_error *err)
{
    memset(p, 0, sizeof *p);
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[5] = {
        {"user", {0}}, {"status", {0}}, {"text", {0}}, {"last_seen", {0}}, {"devices", {0}}};
    if ((rc = scan(obj, f, 5, "", FROM_SERVER, err))) return rc;
    for (int i = 0; i < 5; i++)
        if (!has(&f[i]))
            return msg_fail(err, MSG_E_MISSING_FIELD, f[i].name, "%s is required", f[i].name);
    if ((rc = get_ident(&f[0], "user", p->user, sizeof p->user, msg_valid_user, "user id", err)))
        return rc;
    char name[8];
    long n = f[1].v.type == JSON_STRING ? json_string_decode(&f[1].v, name, sizeof name - 1) : -1;
    int s = n >= 0 ? msg_pstatus_from_name(name, (size_t)n) : -1;
    if (s < 0) return msg_fail(err, MSG_E_INVALID_FIELD, "status", "unknown status");
    p->status = (msg_pstatus)s;
    if ((rc = get_status_text(&f[2], p->text, err))) return rc;
    p->last_seen = -1;
    if (f[3].v.type != JSON_NULL &&
        (rc = get_int(&f[3], "last_seen", 0, MSG_SEQ_MAX, &p->last_seen, err)))
        return rc;
    int64_t d = 0;
    if ((rc = get_int(&f[4], "devices", 0, UINT32_MAX, &d, err))) return rc;
    p->devices = (unsigned)d;
    json_val inv;
    p->invisible = json_object_get(obj, "invisible", &inv) && inv.type == JSON_TRUE;
    return MSG_OK;
}

/* ---- notifications ---- */

static const char *const ntype_names[] = {NULL,          "message",  "mention",
                                          "assignment",  "deadline", "system",
                                          "achievement", "reminder", "alert"};

const char *msg_ntype_name(msg_ntype t)
{
    return t >= MSG_NT_MESSAGE && t <= MSG_NT_LAST ? ntype_names[t] : NULL;
}

int msg_ntype_from_name(const char *s, size_t len)
{
    for (int t = MSG_NT_MESSAGE; t <= MSG_NT_LAST; t++)
        if (name_is(s, len, ntype_names[t])) return t;
    return 0;
}

bool msg_valid_http_url(const char *s, size_t len)
{
    size_t skip;
    if (len > 7 && pstr_ieq(s, 7, "http://", 7))
        skip = 7;
    else if (len > 8 && pstr_ieq(s, 8, "https://", 8))
        skip = 8;
    else
        return false;
    /* A host must follow the scheme. */
    if (s[skip] == '/' || s[skip] == '?' || s[skip] == '#') return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) return false;
    return true;
}

bool msg_valid_tz_name(const char *s, size_t len)
{
    /* One rule for the schema and the loader: a valid name is safe to
     * join to the zoneinfo directory. */
    return tz_valid_name(s, len);
}

/* A string decoded into out (a C string: U+0000 refused), len min..max
 * UTF-8 bytes; the bound is checked before anything is decoded. */
static msg_errcode get_cstr(const field *f, const char *path, size_t min, size_t max, char *out,
                            msg_error *err)
{
    json_val span;
    msg_errcode rc = get_text(f, path, min, max, &span, err);
    if (rc) return rc;
    long n = json_string_decode(&span, out, max + 1);
    if (n < 0 || memchr(out, 0, (size_t)n)) {
        out[0] = 0;
        return msg_fail(err, MSG_E_INVALID_FIELD, path, "%s must not contain U+0000", path);
    }
    out[n] = 0;
    return MSG_OK;
}

static bool action_id_ok(const char *s, size_t len)
{
    return chars_ok(s, len, MSG_NOTIF_ACTION_ID_MAX, "._-");
}

msg_errcode msg_parse_nactions(const json_val *arr, msg_naction *a, unsigned *n, msg_error *err)
{
    *n = 0;
    if (arr->type != JSON_ARRAY)
        return msg_fail(err, MSG_E_INVALID_FIELD, "actions", "actions must be an array");
    if (json_count(arr) > MSG_NOTIF_ACTIONS_MAX)
        return msg_fail(err, MSG_E_TOO_LARGE, "actions", "at most %d actions",
                        MSG_NOTIF_ACTIONS_MAX);
    json_iter it;
    json_val v;
    json_iter_init(&it, arr);
    unsigned i = 0;
    char path[32];
    msg_errcode rc;
    while (json_array_next(&it, &v)) {
        snprintf(path, sizeof path, "actions[%u]", i);
        if (v.type != JSON_OBJECT)
            return msg_fail(err, MSG_E_INVALID_FIELD, path, "%s must be an object", path);
        field f[2] = {{"id", {0}}, {"label", {0}}};
        if ((rc = scan(&v, f, 2, path, FROM_CLIENT, err))) return rc;
        char fp[48];
        snprintf(fp, sizeof fp, "%s.id", path);
        if (!has(&f[0])) return msg_fail(err, MSG_E_MISSING_FIELD, fp, "%s is required", fp);
        if ((rc = get_ident(&f[0], fp, a[i].id, sizeof a[i].id, action_id_ok,
                            "action id ([A-Za-z0-9._-], 1 to 64 bytes)", err)))
            return rc;
        for (unsigned j = 0; j < i; j++)
            if (strcmp(a[j].id, a[i].id) == 0)
                return msg_fail(err, MSG_E_INVALID_FIELD, fp, "%s repeats an action id", fp);
        snprintf(fp, sizeof fp, "%s.label", path);
        if (!has(&f[1])) return msg_fail(err, MSG_E_MISSING_FIELD, fp, "%s is required", fp);
        if ((rc = get_cstr(&f[1], fp, 1, MSG_NOTIF_ACTION_LABEL_MAX, a[i].label, err))) return rc;
        i++;
    }
    *n = i;
    return MSG_OK;
}

enum {
    NF_TO,
    NF_TYPE,
    NF_PRIO,
    NF_TITLE,
    NF_BODY,
    NF_IMAGE,
    NF_ACTIONS,
    NF_EXPIRES,
    NF_DEDUPE,
    NF_N
};

msg_errcode msg_parse_notify(const json_val *obj, int64_t now_ms, msg_notification *n,
                             msg_error *err)
{
    memset(n, 0, sizeof *n);
    n->priority = MSG_PRIO_NORMAL;
    n->expires = -1;
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[NF_N] = {{"to", {0}},      {"type", {0}},       {"priority", {0}},
                     {"title", {0}},   {"body", {0}},       {"image", {0}},
                     {"actions", {0}}, {"expires_at", {0}}, {"dedupe_key", {0}}};
    if ((rc = scan(obj, f, NF_N, "", FROM_CLIENT, err))) return rc;
    static const int required[] = {NF_TO, NF_TYPE, NF_TITLE};
    for (size_t i = 0; i < PARLEY_ARRAY_LEN(required); i++)
        if (!has(&f[required[i]]))
            return msg_fail(err, MSG_E_MISSING_FIELD, f[required[i]].name, "%s is required",
                            f[required[i]].name);
    if ((rc = get_ident(&f[NF_TO], "to", n->to, sizeof n->to, msg_valid_user, "user id", err)))
        return rc;
    char name[16];
    long len = f[NF_TYPE].v.type == JSON_STRING
                   ? json_string_decode(&f[NF_TYPE].v, name, sizeof name - 1)
                   : -1;
    int t = len >= 0 ? msg_ntype_from_name(name, (size_t)len) : 0;
    if (!t)
        return msg_fail(err, MSG_E_INVALID_FIELD, "type",
                        "type must be one of message, mention, assignment, deadline, system, "
                        "achievement, reminder, alert");
    n->type = (msg_ntype)t;
    if (has(&f[NF_PRIO])) {
        len = f[NF_PRIO].v.type == JSON_STRING
                  ? json_string_decode(&f[NF_PRIO].v, name, sizeof name - 1)
                  : -1;
        int p = len >= 0 ? msg_priority_from_name(name, (size_t)len) : -1;
        if (p < 0)
            return msg_fail(err, MSG_E_INVALID_FIELD, "priority",
                            "priority must be low, normal, high or urgent");
        n->priority = (msg_priority)p;
    }
    if ((rc = get_cstr(&f[NF_TITLE], "title", 1, MSG_NOTIF_TITLE_MAX, n->title, err))) return rc;
    if (has(&f[NF_BODY]) &&
        (rc = get_cstr(&f[NF_BODY], "body", 0, MSG_NOTIF_BODY_MAX, n->body, err)))
        return rc;
    if (has(&f[NF_IMAGE]) && f[NF_IMAGE].v.type != JSON_NULL) {
        if ((rc = get_cstr(&f[NF_IMAGE], "image", 1, MSG_NOTIF_IMAGE_MAX, n->image, err)))
            return rc;
        if (!msg_valid_http_url(n->image, strlen(n->image))) {
            n->image[0] = 0;
            return msg_fail(err, MSG_E_INVALID_FIELD, "image", "image must be an http(s) URL");
        }
    }
    if (has(&f[NF_ACTIONS]) &&
        (rc = msg_parse_nactions(&f[NF_ACTIONS].v, n->actions, &n->nactions, err)))
        return rc;
    if (has(&f[NF_EXPIRES])) {
        if ((rc = get_int(&f[NF_EXPIRES], "expires_at", 0, MSG_SEQ_MAX, &n->expires, err)))
            return rc;
        if (n->expires <= now_ms) {
            n->expires = -1;
            return msg_fail(err, MSG_E_INVALID_FIELD, "expires_at",
                            "expires_at must be in the future");
        }
    }
    if (has(&f[NF_DEDUPE]) &&
        (rc = get_cstr(&f[NF_DEDUPE], "dedupe_key", 1, MSG_NOTIF_DEDUPE_MAX, n->dedupe, err)))
        return rc;
    return MSG_OK;
}

int msg_encode_nactions(pbuf *out, const msg_naction *a, unsigned n)
{
    int rc = pbuf_append(out, "[", 1);
    for (unsigned i = 0; rc == 0 && i < n; i++) {
        bool first = true;
        if (i) rc = pbuf_append(out, ",", 1);
        if (rc == 0) rc = pbuf_append(out, "{", 1);
        if (rc == 0) rc = put_str(out, &first, "id", a[i].id);
        if (rc == 0) rc = put_str(out, &first, "label", a[i].label);
        if (rc == 0) rc = pbuf_append(out, "}", 1);
    }
    if (rc == 0) rc = pbuf_append(out, "]", 1);
    return rc;
}

static int put_nullable(pbuf *out, bool *first, const char *key, const char *s)
{
    if (s[0]) return put_str(out, first, key, s);
    int rc = put_key(out, first, key);
    return rc ? rc : pbuf_append_str(out, "null");
}

int msg_encode_notification(pbuf *out, const msg_notification *n)
{
    bool first = true;
    const char *t = msg_ntype_name(n->type), *p = msg_priority_name(n->priority);
    if (!t || !p) return PARLEY_EINVAL;
    int rc = pbuf_append(out, "{", 1);
    if (rc == 0) rc = put_int(out, &first, "id", n->id);
    if (rc == 0) rc = put_str(out, &first, "type", t);
    if (rc == 0) rc = put_str(out, &first, "priority", p);
    if (rc == 0) rc = put_str(out, &first, "title", n->title);
    if (rc == 0) rc = put_str(out, &first, "body", n->body);
    if (rc == 0) rc = put_nullable(out, &first, "image", n->image);
    if (rc == 0) rc = put_key(out, &first, "actions");
    if (rc == 0) rc = msg_encode_nactions(out, n->actions, n->nactions);
    if (rc == 0) rc = put_nullable(out, &first, "from", n->from);
    if (rc == 0) rc = put_int(out, &first, "created", n->created);
    if (rc == 0 && n->expires >= 0) rc = put_int(out, &first, "expires", n->expires);
    if (rc == 0 && n->expires < 0) rc = pbuf_append_str(out, ",\"expires\":null");
    if (rc == 0) rc = put_nullable(out, &first, "dedupe_key", n->dedupe);
    if (rc == 0)
        rc = pbuf_append_str(out, n->delivered ? ",\"delivered\":true" : ",\"delivered\":false");
    if (rc == 0) rc = pbuf_append_str(out, n->read ? ",\"read\":true}" : ",\"read\":false}");
    return rc;
}

msg_errcode msg_parse_nsync(const json_val *obj, int64_t *since, unsigned *limit, msg_error *err)
{
    *since = 0;
    *limit = MSG_NOTIF_SYNC_DEF;
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[2] = {{"since", {0}}, {"limit", {0}}};
    if ((rc = scan(obj, f, 2, "", FROM_CLIENT, err))) return rc;
    if (has(&f[0]) && (rc = get_int(&f[0], "since", 0, MSG_SEQ_MAX, since, err))) return rc;
    int64_t l = MSG_NOTIF_SYNC_DEF;
    if (has(&f[1]) && (rc = get_int(&f[1], "limit", 1, MSG_NOTIF_SYNC_MAX, &l, err))) return rc;
    *limit = (unsigned)l;
    return MSG_OK;
}

msg_errcode msg_parse_nread(const json_val *obj, int64_t ids[MSG_NOTIF_READ_MAX], size_t *n,
                            bool *all, msg_error *err)
{
    *n = 0;
    *all = false;
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[2] = {{"ids", {0}}, {"all", {0}}};
    if ((rc = scan(obj, f, 2, "", FROM_CLIENT, err))) return rc;
    if (has(&f[0]) && has(&f[1]))
        return msg_fail(err, MSG_E_INVALID_FIELD, "all", "give ids or all, not both");
    if (has(&f[1])) {
        if (f[1].v.type != JSON_TRUE)
            return msg_fail(err, MSG_E_INVALID_FIELD, "all", "all must be true");
        *all = true;
        return MSG_OK;
    }
    if (!has(&f[0])) return msg_fail(err, MSG_E_MISSING_FIELD, "ids", "ids (or all) is required");
    if (f[0].v.type != JSON_ARRAY)
        return msg_fail(err, MSG_E_INVALID_FIELD, "ids", "ids must be an array of ids");
    size_t count = json_count(&f[0].v);
    if (count > MSG_NOTIF_READ_MAX)
        return msg_fail(err, MSG_E_TOO_LARGE, "ids", "at most %d ids", MSG_NOTIF_READ_MAX);
    if (count == 0) return msg_fail(err, MSG_E_INVALID_FIELD, "ids", "ids must not be empty");
    json_iter it;
    json_val v;
    json_iter_init(&it, &f[0].v);
    while (json_array_next(&it, &v)) {
        field one = {"ids", v};
        if ((rc = get_int(&one, "ids", 1, MSG_SEQ_MAX, &ids[*n], err))) {
            *n = 0;
            return rc;
        }
        (*n)++;
    }
    return MSG_OK;
}

void msg_nprefs_default(msg_nprefs *p)
{
    memset(p, 0, sizeof *p);
    p->in_app = p->push = true;
    p->q_min = MSG_PRIO_URGENT;
    p->muted_users.type = p->muted_rooms.type = JSON_INVALID;
}

/* "HH:MM" -> minutes after midnight, or -1. */
static int hhmm(const json_val *v)
{
    if (v->type != JSON_STRING || v->len != 7) return -1;
    const char *s = v->p + 1;
    for (int i = 0; i < 5; i++)
        if (i == 2 ? s[i] != ':' : (s[i] < '0' || s[i] > '9')) return -1;
    int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
    return h < 24 && m < 60 ? h * 60 + m : -1;
}

static msg_errcode parse_quiet(const json_val *v, msg_nprefs *p, msg_error *err)
{
    if (v->type == JSON_NULL) {
        p->quiet = false;
        p->tz[0] = 0;
        p->q_start = p->q_end = 0;
        p->q_min = MSG_PRIO_URGENT;
        return MSG_OK;
    }
    if (v->type != JSON_OBJECT)
        return msg_fail(err, MSG_E_INVALID_FIELD, "quiet_hours",
                        "quiet_hours must be an object or null");
    field f[4] = {{"start", {0}}, {"end", {0}}, {"tz", {0}}, {"min_priority", {0}}};
    msg_errcode rc = scan(v, f, 4, "quiet_hours", FROM_CLIENT, err);
    if (rc) return rc;
    static const char *const paths[3] = {"quiet_hours.start", "quiet_hours.end", "quiet_hours.tz"};
    for (int i = 0; i < 3; i++)
        if (!has(&f[i]))
            return msg_fail(err, MSG_E_MISSING_FIELD, paths[i], "%s is required", paths[i]);
    int s = hhmm(&f[0].v), e = hhmm(&f[1].v);
    if (s < 0) return msg_fail(err, MSG_E_INVALID_FIELD, paths[0], "%s must be HH:MM", paths[0]);
    if (e < 0) return msg_fail(err, MSG_E_INVALID_FIELD, paths[1], "%s must be HH:MM", paths[1]);
    if (s == e)
        return msg_fail(err, MSG_E_INVALID_FIELD, paths[1],
                        "quiet hours must not start and end at the same time");
    char tz[MSG_TZ_MAX + 1];
    if ((rc = get_ident(&f[2], paths[2], tz, sizeof tz, msg_valid_tz_name, "time zone name", err)))
        return rc;
    int qmin = MSG_PRIO_URGENT;
    if (has(&f[3])) {
        char name[16];
        long n = f[3].v.type == JSON_STRING ? json_string_decode(&f[3].v, name, sizeof name - 1)
                                            : -1;
        qmin = n >= 0 ? msg_priority_from_name(name, (size_t)n) : -1;
        /* low would let everything through: no quiet hours at all. */
        if (qmin <= MSG_PRIO_LOW)
            return msg_fail(err, MSG_E_INVALID_FIELD, "quiet_hours.min_priority",
                            "quiet_hours.min_priority must be normal, high or urgent");
    }
    p->q_min = (msg_priority)qmin;
    p->quiet = true;
    p->q_start = s;
    p->q_end = e;
    memcpy(p->tz, tz, sizeof tz);
    return MSG_OK;
}

static msg_errcode parse_muted(const field *f, bool (*valid)(const char *, size_t),
                               const char *what, json_val *out, msg_error *err)
{
    if (f->v.type != JSON_ARRAY)
        return msg_fail(err, MSG_E_INVALID_FIELD, f->name, "%s must be an array of %ss", f->name,
                        what);
    if (json_count(&f->v) > MSG_NOTIF_MUTED_MAX)
        return msg_fail(err, MSG_E_TOO_LARGE, f->name, "at most %d entries in %s",
                        MSG_NOTIF_MUTED_MAX, f->name);
    json_iter it;
    json_val v;
    json_iter_init(&it, &f->v);
    char id[MSG_USER_MAX + 1];
    while (json_array_next(&it, &v)) {
        field one = {f->name, v};
        msg_errcode rc = get_ident(&one, f->name, id, sizeof id, valid, what, err);
        if (rc) return rc;
    }
    *out = f->v;
    return MSG_OK;
}

enum { PF_IN_APP, PF_PUSH, PF_TYPES, PF_QUIET, PF_MU, PF_MR, PF_N };

msg_errcode msg_parse_nprefs(const json_val *obj, msg_nprefs *p, unsigned *given, msg_error *err)
{
    *given = 0;
    msg_errcode rc = need_object(obj, err);
    if (rc) return rc;
    field f[PF_N] = {{"in_app", {0}},      {"push", {0}},        {"types", {0}},
                     {"quiet_hours", {0}}, {"muted_users", {0}}, {"muted_rooms", {0}}};
    if ((rc = scan(obj, f, PF_N, "", FROM_CLIENT, err))) return rc;
    for (int i = PF_IN_APP; i <= PF_PUSH; i++) {
        if (!has(&f[i])) continue;
        if (f[i].v.type != JSON_TRUE && f[i].v.type != JSON_FALSE)
            return msg_fail(err, MSG_E_INVALID_FIELD, f[i].name, "%s must be true or false",
                            f[i].name);
        *(i == PF_IN_APP ? &p->in_app : &p->push) = f[i].v.type == JSON_TRUE;
    }
    if (has(&f[PF_TYPES])) {
        if (f[PF_TYPES].v.type != JSON_OBJECT)
            return msg_fail(err, MSG_E_INVALID_FIELD, "types", "types must be an object");
        unsigned off = 0, seen = 0;
        json_iter it;
        json_val k, v;
        json_iter_init(&it, &f[PF_TYPES].v);
        while (json_object_next(&it, &k, &v)) {
            char name[16];
            long n = json_string_decode(&k, name, sizeof name - 1);
            int t = n >= 0 ? msg_ntype_from_name(name, (size_t)n) : 0;
            if (!t)
                return msg_fail(err, MSG_E_INVALID_FIELD, "types", "types names an unknown type");
            if (seen & (1u << t))
                return msg_fail(err, MSG_E_INVALID_FIELD, "types", "types repeats %s", name);
            seen |= 1u << t;
            if (v.type != JSON_TRUE && v.type != JSON_FALSE)
                return msg_fail(err, MSG_E_INVALID_FIELD, "types", "types.%s must be true or false",
                                name);
            if (v.type == JSON_FALSE) off |= 1u << t;
        }
        p->types_off = off;
    }
    if (has(&f[PF_QUIET]) && (rc = parse_quiet(&f[PF_QUIET].v, p, err))) return rc;
    if (has(&f[PF_MU]) &&
        (rc = parse_muted(&f[PF_MU], msg_valid_user, "user id", &p->muted_users, err)))
        return rc;
    if (has(&f[PF_MR]) &&
        (rc = parse_muted(&f[PF_MR], msg_valid_room, "room name", &p->muted_rooms, err)))
        return rc;
    for (int i = 0; i < PF_N; i++)
        if (has(&f[i])) *given |= 1u << i;
    return MSG_OK;
}

static int put_list(pbuf *out, bool *first, const char *key, const json_val *v)
{
    int rc = put_key(out, first, key);
    if (rc) return rc;
    return v->type == JSON_ARRAY ? json_compact(out, v) : pbuf_append_str(out, "[]");
}

int msg_encode_nprefs(pbuf *out, const msg_nprefs *p)
{
    bool first = true;
    int rc = pbuf_append(out, "{", 1);
    if (rc == 0) rc = put_key(out, &first, "in_app");
    if (rc == 0) rc = pbuf_append_str(out, p->in_app ? "true" : "false");
    if (rc == 0) rc = put_key(out, &first, "push");
    if (rc == 0) rc = pbuf_append_str(out, p->push ? "true" : "false");
    if (rc == 0) rc = put_key(out, &first, "types");
    for (int t = MSG_NT_MESSAGE; rc == 0 && t <= MSG_NT_LAST; t++) {
        rc = pbuf_append_str(out, t == MSG_NT_MESSAGE ? "{\"" : ",\"");
        if (rc == 0) rc = pbuf_append_str(out, ntype_names[t]);
        if (rc == 0) rc = pbuf_append_str(out, p->types_off & (1u << t) ? "\":false" : "\":true");
    }
    if (rc == 0) rc = pbuf_append(out, "}", 1);
    if (rc == 0) rc = put_key(out, &first, "quiet_hours");
    if (rc == 0 && !p->quiet) rc = pbuf_append_str(out, "null");
    if (rc == 0 && p->quiet) {
        char q[80];
        snprintf(q, sizeof q,
                 "{\"start\":\"%02d:%02d\",\"end\":\"%02d:%02d\",\"tz\":", p->q_start / 60,
                 p->q_start % 60, p->q_end / 60, p->q_end % 60);
        rc = pbuf_append_str(out, q);
        if (rc == 0) rc = json_append_string(out, p->tz, strlen(p->tz));
        /* Absent means urgent (what earlier versions stored and did). */
        if (rc == 0 && p->q_min != MSG_PRIO_URGENT)
            rc = pbuf_appendf(out, ",\"min_priority\":\"%s\"", msg_priority_name(p->q_min));
        if (rc == 0) rc = pbuf_append(out, "}", 1);
    }
    if (rc == 0) rc = put_list(out, &first, "muted_users", &p->muted_users);
    if (rc == 0) rc = put_list(out, &first, "muted_rooms", &p->muted_rooms);
    if (rc == 0) rc = pbuf_append(out, "}", 1);
    return rc;
}

bool msg_nprefs_has(const json_val *list, const char *id)
{
    if (list->type != JSON_ARRAY) return false;
    json_iter it;
    json_val v;
    json_iter_init(&it, list);
    while (json_array_next(&it, &v))
        if (json_string_eq(&v, id)) return true;
    return false;
}
