/* The messages of presence across nodes: presence_wire.h. */
#include "services/server/presence_wire.h"

#include <string.h>

#include "parley/parley.h"

bool pcw_uid_ok(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= 'A' && s[n] <= 'Z') ||
              (s[n] >= '0' && s[n] <= '9')))
            return false;
    return n >= 1 && n <= PCW_UID_MAX;
}

/* A JSON string into out (cap bytes with the NUL): false when it is not a
 * string, too long, or has control characters (NUL included). */
static bool get_str(const json_val *v, char *out, size_t cap)
{
    if (v->type != JSON_STRING) return false;
    long n = json_string_decode(v, out, cap - 1);
    if (n < 0) return false;
    out[n] = 0;
    for (long i = 0; i < n; i++)
        if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f) return false;
    return true;
}

static bool get_int(const json_val *v, int64_t lo, int64_t hi, int64_t *out)
{
    return v->type == JSON_NUMBER && json_int(v, out) && *out >= lo && *out <= hi;
}

/* The fields of a contribution after its "c": NULL, or what is wrong. */
static const char *read_contrib(json_iter *it, pcw_contrib *c)
{
    json_val v[8], extra;
    for (int i = 0; i < 8; i++)
        if (!json_array_next(it, &v[i])) return "a contribution with too few fields";
    if (json_array_next(it, &extra)) return "a contribution with too many fields";
    int64_t devices, status, inv;
    if (!get_str(&v[0], c->user, sizeof c->user) || !msg_valid_user(c->user, strlen(c->user)))
        return "a bad user id";
    if (!get_int(&v[1], 0, PCW_DEVICES_MAX, &devices)) return "a bad device count";
    if (!get_int(&v[2], devices ? MSG_PS_BUSY : MSG_PS_OFFLINE,
                 devices ? MSG_PS_ONLINE : MSG_PS_OFFLINE, &status))
        return "a bad status";
    if (!get_int(&v[3], 0, PCW_TIME_MAX, &c->text_at)) return "a bad text time";
    if (!get_str(&v[4], c->text, sizeof c->text)) return "a bad text";
    if (!get_int(&v[5], 0, 1, &inv)) return "a bad invisibility";
    if (!get_int(&v[6], 0, PCW_TIME_MAX, &c->inv_at)) return "a bad invisibility time";
    if (!get_int(&v[7], -1, PCW_TIME_MAX, &c->last_seen)) return "a bad last seen";
    c->devices = (uint32_t)devices;
    c->status = (uint8_t)status;
    c->invisible = inv == 1;
    return NULL;
}

/* One record: its kind (PCW_CONTRIB, PCW_WANT, or 'b' for a goodbye),
 * or -1 with *why. */
static int read_record(const json_val *v, pcw_record *r, const char **why)
{
    json_iter f;
    json_val kind, target, extra;
    if (v->type != JSON_ARRAY) {
        *why = "a record that is not an array";
        return -1;
    }
    json_iter_init(&f, v);
    if (!json_array_next(&f, &kind)) {
        *why = "an empty record";
        return -1;
    }
    if (json_string_eq(&kind, "c")) {
        *why = read_contrib(&f, &r->c);
        return *why ? -1 : (r->kind = PCW_CONTRIB);
    }
    if (json_string_eq(&kind, "w") && json_array_next(&f, &target) &&
        get_str(&target, r->target, sizeof r->target) && pcw_uid_ok(r->target) &&
        !json_array_next(&f, &extra))
        return r->kind = PCW_WANT;
    if (json_string_eq(&kind, "b") && !json_array_next(&f, &extra)) return 'b';
    *why = "a record of an unknown kind";
    return -1;
}

const char *pcw_parse(pcw_msg *m, const char *msg, size_t len)
{
    memset(m, 0, sizeof *m);
    if (len > PCW_IN_MAX) return "too long";
    json_val v;
    if (json_parse(msg, len, 4, &m->top, NULL) != 0 || m->top.type != JSON_ARRAY)
        return "not a JSON array";
    json_iter_init(&m->it, &m->top);
    int64_t version;
    if (!json_array_next(&m->it, &v) || !get_int(&v, 1, 1, &version)) return "not version 1";
    if (!json_array_next(&m->it, &v) || !get_str(&v, m->uid, sizeof m->uid) ||
        !pcw_uid_ok(m->uid))
        return "a bad node uid";
    /* Every record is checked before any is used: a message is taken
     * whole or not at all. */
    json_iter rit = m->it;
    pcw_record r;
    while (json_array_next(&rit, &v)) {
        const char *why = NULL;
        int k = read_record(&v, &r, &why);
        if (k < 0) return why;
        if (k == 'b') m->bye = true;
    }
    return NULL;
}

bool pcw_next(pcw_msg *m, pcw_record *r)
{
    json_val v;
    const char *why;
    while (json_array_next(&m->it, &v))
        if (read_record(&v, r, &why) != 'b') return true; /* checked by pcw_parse */
    return false;
}

int pcw_header(pbuf *b, const char *uid)
{
    int rc = pbuf_append_str(b, "[1,");
    if (rc == 0) rc = json_append_string(b, uid, strlen(uid));
    return rc;
}

int pcw_contrib_append(pbuf *b, const pcw_contrib *c)
{
    int rc = pbuf_append_str(b, "[\"c\",");
    if (rc == 0) rc = json_append_string(b, c->user, strlen(c->user));
    if (rc == 0)
        rc = pbuf_appendf(b, ",%u,%u,%lld,", (unsigned)c->devices, (unsigned)c->status,
                          (long long)c->text_at);
    if (rc == 0) rc = json_append_string(b, c->text, strlen(c->text));
    if (rc == 0)
        rc = pbuf_appendf(b, ",%d,%lld,%lld]", c->invisible ? 1 : 0, (long long)c->inv_at,
                          (long long)(c->last_seen < 0 ? -1 : c->last_seen));
    return rc;
}

int pcw_want_append(pbuf *b, const char *uid)
{
    int rc = pbuf_append_str(b, "[\"w\",");
    if (rc == 0) rc = json_append_string(b, uid, strlen(uid));
    if (rc == 0) rc = pbuf_append(b, "]", 1);
    return rc;
}

int pcw_bye_append(pbuf *b)
{
    return pbuf_append_str(b, "[\"b\"]");
}
