#include "codec/sio.h"

#include <string.h>

#include "codec/utf8.h"
#include "parley/parley.h"

/* Largest integer a JavaScript number holds exactly: the reference turns
 * ack ids into numbers, so a larger id could not be acknowledged. */
#define SIO_MAX_ACK_ID ((int64_t)9007199254740991)
/* Levels tracked by the placeholder scan (the data was validated with the
 * caller's max_depth; this only bounds the scan's own stack). */
#define SIO_PH_DEPTH_CAP 1024

void sio_limits_init(sio_limits *l)
{
    l->max_attachments = 10;
    l->max_depth = JSON_DEFAULT_MAX_DEPTH;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_json_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static const char *const reserved[] = {
    "connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener",
};

bool sio_reserved_event(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strlen(reserved[i]) == len && !memcmp(reserved[i], name, len)) return true;
    return false;
}

/* EVENT data: an array whose first element is a number or a string that is
 * not reserved (socket.io-parser isPayloadValid). The name is compared
 * after unescaping, as JSON.parse would see it. */
static bool event_data_ok(const json_val *data)
{
    if (data->type != JSON_ARRAY) return false;
    json_iter it;
    json_val first;
    json_iter_init(&it, data);
    if (!json_array_next(&it, &first)) return false;
    if (first.type == JSON_NUMBER) return true;
    if (first.type != JSON_STRING) return false;
    char name[16];
    long n = json_string_decode(&first, name, sizeof name);
    if (n < 0) return true; /* longer than any reserved name */
    return !sio_reserved_event(name, (size_t)n);
}

static int fail(const char **why, const char *text)
{
    if (why) *why = text;
    return PARLEY_EPROTO;
}

int sio_parse(const char *s, size_t len, const sio_limits *lim, sio_packet *out, const char **why)
{
    sio_limits deflim;
    if (!lim) {
        sio_limits_init(&deflim);
        lim = &deflim;
    }
    /* The reference reads the type with Number(str.charAt(0)), which also
     * turns "" and leading whitespace into 0 (CONNECT); only the digits
     * are a type here. */
    if (len == 0) return fail(why, "empty packet");
    if (s[0] < '0' || s[0] > '6') return fail(why, "unknown packet type");
    int type = s[0] - '0';
    size_t i = 1;

    unsigned attachments = 0;
    if (type == SIO_BINARY_EVENT || type == SIO_BINARY_ACK) {
        /* Digits then '-'. The reference's Number() would also take
         * " 1", "0x1" or "1e0"; none of its encoders write those. */
        size_t start = i;
        uint64_t n = 0;
        while (i < len && is_digit(s[i])) {
            if (n <= UINT32_MAX) n = n * 10 + (unsigned)(s[i] - '0');
            i++;
        }
        if (i == start || i == len || s[i] != '-' || n < 1) return fail(why, "illegal attachments");
        if (n > lim->max_attachments) return fail(why, "too many attachments");
        attachments = (unsigned)n;
        i++;
    }

    const char *nsp = "/";
    size_t nsp_len = 1;
    if (i < len && s[i] == '/') {
        const char *comma = memchr(s + i, ',', len - i);
        size_t end = comma ? (size_t)(comma - s) : len;
        nsp = s + i;
        nsp_len = end - i;
        if (!utf8_valid((const uint8_t *)nsp, nsp_len)) return fail(why, "namespace not UTF-8");
        i = comma ? end + 1 : len;
    }

    int64_t id = -1;
    if (i < len && is_digit(s[i])) {
        id = 0;
        while (i < len && is_digit(s[i])) {
            id = id * 10 + (s[i] - '0');
            if (id > SIO_MAX_ACK_ID) return fail(why, "ack id too large");
            i++;
        }
    }

    json_val data = {JSON_INVALID, NULL, 0};
    if (i < len) {
        /* The reference counts whitespace here as ack id characters
         * (Number(" ") is 0), so "2 [..]" would be an ack request with
         * id 0. Rather than guess, such a packet is refused. */
        if (is_json_ws(s[i])) return fail(why, "whitespace before data");
        if (json_parse(s + i, len - i, lim->max_depth, &data, NULL))
            return fail(why, "invalid JSON data");
    }

    /* Per-type rules of the reference decoder (isPayloadValid), which
     * checks data only when there is some: an EVENT or ACK without data
     * decodes (the server then ignores the event, or acks with no
     * arguments). */
    bool ok;
    switch (type) {
    case SIO_CONNECT:
        ok = data.type == JSON_INVALID || data.type == JSON_OBJECT;
        break;
    case SIO_DISCONNECT:
        ok = data.type == JSON_INVALID;
        break;
    case SIO_EVENT:
    case SIO_BINARY_EVENT:
        ok = data.type == JSON_INVALID || event_data_ok(&data);
        break;
    case SIO_ACK:
    case SIO_BINARY_ACK:
        ok = data.type == JSON_INVALID || data.type == JSON_ARRAY;
        break;
    default: /* SIO_CONNECT_ERROR */
        ok = data.type == JSON_STRING || data.type == JSON_OBJECT;
    }
    if (!ok) return fail(why, "invalid payload for the packet type");

    out->type = type;
    out->attachments = attachments;
    out->nsp = nsp;
    out->nsp_len = nsp_len;
    out->id = id;
    out->data = data;
    return 0;
}

/* ---- Placeholders ----
 *
 * One linear pass over the (validated) data text, with a small record per
 * open container, instead of a tree walk: a walk that looked into every
 * object's members before descending would rescan nested text once per
 * level. JSON.parse keeps the last of repeated keys, so "_placeholder" and
 * "num" are tracked as last-one-wins, as the reference sees them. */

enum {
    LV_OBJ = 1,    /* an object (else an array) */
    LV_PH = 2,     /* its last "_placeholder" member is true */
    LV_NUM_OK = 4, /* its last "num" member is a valid attachment index */
    LV_HAS_PH = 8, /* a placeholder was found inside it */
};

enum { KEY_OTHER, KEY_PLACEHOLDER, KEY_NUM };

/* Kept small (offsets, not pointers; flags apart) because the whole stack
 * lives on the C stack: about 9 KiB at the depth cap. */
typedef struct ph_level {
    uint32_t start; /* offset of the opening bracket */
    uint32_t num;
} ph_level;

typedef struct ph_scan {
    ph_level lv[SIO_PH_DEPTH_CAP];
    uint8_t flags[SIO_PH_DEPTH_CAP];
    unsigned depth;
    int pending; /* the key whose value comes next in the top object */
} ph_scan;

static const char *skip_str(const char *p, const char *e)
{
    while (p < e) {
        const char *q = p;
        while (q < e && *q != '"' && *q != '\\') q++;
        if (q == e) return e;
        if (*q == '"') return q + 1;
        p = q + 2;
    }
    return e;
}

/* A num is valid when it is a number whose value is an integer in
 * [0, attachments). The reference also accepts a fractional index (and
 * substitutes undefined for the buffer); that is refused here. Values are
 * compared as JavaScript does, so 1.0 and 1e0 are index 1. */
static bool num_ok(const char *p, size_t n, unsigned attachments, unsigned *num)
{
    json_val v = {JSON_NUMBER, p, n};
    double d;
    if (!json_double(&v, &d)) return false;
    if (!(d >= 0 && d < (double)attachments)) return false;
    unsigned u = (unsigned)d;
    if ((double)u != d) return false;
    *num = u;
    return true;
}

/* Records the value just seen for the pending key of the top object. */
static void ph_value(ph_scan *sc, const char *p, size_t n, unsigned attachments)
{
    if (sc->depth == 0 || sc->pending == KEY_OTHER) return;
    uint8_t *flags = &sc->flags[sc->depth - 1];
    if (sc->pending == KEY_PLACEHOLDER) {
        if (n == 4 && !memcmp(p, "true", 4))
            *flags |= LV_PH;
        else
            *flags &= (uint8_t)~LV_PH;
    } else {
        unsigned num;
        if (n && (*p == '-' || is_digit(*p)) && num_ok(p, n, attachments, &num)) {
            *flags |= LV_NUM_OK;
            sc->lv[sc->depth - 1].num = num;
        } else {
            *flags &= (uint8_t)~LV_NUM_OK;
        }
    }
    sc->pending = KEY_OTHER;
}

static int ph_run(ph_scan *sc, const json_val *data, unsigned attachments, unsigned max_depth,
                  void (*cb)(const json_val *ph, unsigned num, void *user), void *user,
                  const char **why)
{
    const char *p = data->p, *e = data->p + data->len;
    bool expect_key = false;
    if (data->len > UINT32_MAX) return fail(why, "data too large");
    unsigned cap = max_depth < SIO_PH_DEPTH_CAP ? max_depth : SIO_PH_DEPTH_CAP;
    sc->depth = 0;
    sc->pending = KEY_OTHER;
    while (p < e) {
        char c = *p;
        switch (c) {
        case ' ':
        case '\t':
        case '\n':
        case '\r':
        case ':':
            p++;
            break;
        case ',':
            expect_key = sc->depth && (sc->flags[sc->depth - 1] & LV_OBJ);
            p++;
            break;
        case '{':
        case '[':
            ph_value(sc, "", 0, attachments); /* a container is neither true nor a number */
            if (sc->depth >= cap) return fail(why, "data nested too deeply");
            sc->lv[sc->depth].start = (uint32_t)(p - data->p);
            sc->lv[sc->depth].num = 0;
            sc->flags[sc->depth] = c == '{' ? LV_OBJ : 0;
            sc->depth++;
            expect_key = c == '{';
            p++;
            break;
        case '}':
        case ']': {
            if (sc->depth == 0) return fail(why, "unbalanced data");
            unsigned d = --sc->depth;
            uint8_t fl = sc->flags[d];
            uint8_t *parent = d ? &sc->flags[d - 1] : NULL;
            p++;
            expect_key = false;
            if ((fl & (LV_OBJ | LV_PH)) == (LV_OBJ | LV_PH)) {
                /* The reference never looks inside a placeholder; one
                 * nested in another is something no encoder writes, and
                 * refusing it keeps this scan to a single pass. */
                if (fl & LV_HAS_PH) return fail(why, "placeholder inside a placeholder");
                if (!(fl & LV_NUM_OK)) return fail(why, "illegal attachments");
                if (cb) {
                    const char *start = data->p + sc->lv[d].start;
                    json_val ph = {JSON_OBJECT, start, (size_t)(p - start)};
                    cb(&ph, sc->lv[d].num, user);
                }
                if (parent) *parent |= LV_HAS_PH;
            } else if (parent && (fl & LV_HAS_PH)) {
                *parent |= LV_HAS_PH;
            }
            break;
        }
        case '"': {
            const char *q = skip_str(p + 1, e);
            if (expect_key) {
                json_val k = {JSON_STRING, p, (size_t)(q - p)};
                sc->pending = json_string_eq(&k, "_placeholder") ? KEY_PLACEHOLDER
                              : json_string_eq(&k, "num")        ? KEY_NUM
                                                                 : KEY_OTHER;
                expect_key = false;
            } else {
                ph_value(sc, "", 0, attachments);
            }
            p = q;
            break;
        }
        default: {
            const char *q = p;
            while (q < e && *q != ',' && *q != ']' && *q != '}' && !is_json_ws(*q)) q++;
            ph_value(sc, p, (size_t)(q - p), attachments);
            p = q;
            break;
        }
        }
    }
    if (sc->depth) return fail(why, "unbalanced data");
    return 0;
}

int sio_check_placeholders(const json_val *data, unsigned attachments, unsigned max_depth,
                           void (*cb)(const json_val *ph, unsigned num, void *user), void *user,
                           const char **why)
{
    if (!data || (data->type != JSON_ARRAY && data->type != JSON_OBJECT)) return 0;
    ph_scan sc;
    /* Validate fully first, so that cb never sees placeholders of data
     * that turns out to be malformed. */
    int rc = ph_run(&sc, data, attachments, max_depth, NULL, NULL, why);
    if (rc || !cb) return rc;
    return ph_run(&sc, data, attachments, max_depth, cb, user, why);
}

int sio_write_head(pbuf *out, int type, unsigned attachments, const char *nsp, size_t nsp_len,
                   int64_t id)
{
    if (type < SIO_CONNECT || type > SIO_BINARY_ACK) return PARLEY_EINVAL;
    bool binary = type == SIO_BINARY_EVENT || type == SIO_BINARY_ACK;
    if (binary && attachments == 0) return PARLEY_EINVAL;
    if (!nsp || nsp_len == 0) {
        nsp = "/";
        nsp_len = 1;
    }
    /* A namespace that the parser would read back differently is refused:
     * it must start with '/' and cannot hold the ',' that ends it. */
    if (nsp[0] != '/' || memchr(nsp, ',', nsp_len) || !utf8_valid((const uint8_t *)nsp, nsp_len))
        return PARLEY_EINVAL;
    if (id > SIO_MAX_ACK_ID) return PARLEY_EINVAL;

    char head[48];
    size_t n = 0;
    head[n++] = (char)('0' + type);
    if (binary) {
        char digits[12];
        size_t k = 0;
        do {
            digits[k++] = (char)('0' + attachments % 10);
            attachments /= 10;
        } while (attachments);
        while (k) head[n++] = digits[--k];
        head[n++] = '-';
    }
    bool named = !(nsp_len == 1 && nsp[0] == '/');
    char idbuf[20];
    size_t idn = 0;
    if (id >= 0) {
        uint64_t x = (uint64_t)id;
        do {
            idbuf[idn++] = (char)('0' + x % 10);
            x /= 10;
        } while (x);
    }
    size_t total = n + (named ? nsp_len + 1 : 0) + idn;
    if (pbuf_reserve(out, total)) return PARLEY_ENOMEM;
    uint8_t *o = out->ptr + out->len;
    memcpy(o, head, n);
    o += n;
    if (named) {
        memcpy(o, nsp, nsp_len);
        o += nsp_len;
        *o++ = ',';
    }
    while (idn) *o++ = (uint8_t)idbuf[--idn];
    out->len = (size_t)(o - out->ptr);
    return 0;
}
