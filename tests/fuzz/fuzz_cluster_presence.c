/* Fuzzes the parser of presence across nodes (presence_wire.h), whose
 * input comes from any node on the Redis. A message it takes must walk
 * to its end with every field within its limits, and written again by
 * the node's own writers it must parse to the same records; a message it
 * refuses must say why. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "services/server/presence_wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

#define RECORDS_MAX 4096

typedef struct walked {
    size_t n;
    pcw_record r[RECORDS_MAX];
} walked;

/* Walks a taken message: its records, checked; false past RECORDS_MAX. */
static bool walk(pcw_msg *m, walked *w)
{
    w->n = 0;
    pcw_record r;
    while (pcw_next(m, &r)) {
        if (w->n == RECORDS_MAX) return false;
        if (r.kind == PCW_CONTRIB) {
            const pcw_contrib *c = &r.c;
            CHECK(msg_valid_user(c->user, strlen(c->user)));
            CHECK(c->devices <= PCW_DEVICES_MAX);
            CHECK(c->status <= MSG_PS_ONLINE);
            CHECK(c->devices ? c->status >= MSG_PS_BUSY : c->status == MSG_PS_OFFLINE);
            CHECK(c->text_at >= 0 && c->inv_at >= 0 && c->last_seen >= -1);
            CHECK(strlen(c->text) <= MSG_PRESENCE_TEXT_MAX);
        } else {
            CHECK(r.kind == PCW_WANT && pcw_uid_ok(r.target));
        }
        w->r[w->n++] = r;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static walked first, second;
    pcw_msg m;
    const char *why = pcw_parse(&m, (const char *)data, size);
    if (why) {
        CHECK(why[0] != 0);
        return 0;
    }
    CHECK(pcw_uid_ok(m.uid));
    bool bye = m.bye;
    if (!walk(&m, &first)) return 0;
    /* Written again: the same message. */
    pbuf b = {0};
    CHECK(pcw_header(&b, m.uid) == 0);
    for (size_t i = 0; i < first.n; i++) {
        CHECK(pbuf_append(&b, ",", 1) == 0);
        if (first.r[i].kind == PCW_CONTRIB)
            CHECK(pcw_contrib_append(&b, &first.r[i].c) == 0);
        else
            CHECK(pcw_want_append(&b, first.r[i].target) == 0);
    }
    if (bye) CHECK(pbuf_append(&b, ",", 1) == 0 && pcw_bye_append(&b) == 0);
    CHECK(pbuf_append(&b, "]", 1) == 0);
    pcw_msg again;
    CHECK(pcw_parse(&again, (const char *)b.ptr, b.len) == NULL);
    CHECK(!strcmp(again.uid, m.uid) && again.bye == bye);
    CHECK(walk(&again, &second) && second.n == first.n);
    for (size_t i = 0; i < first.n; i++) {
        const pcw_record *x = &first.r[i], *y = &second.r[i];
        CHECK(x->kind == y->kind);
        if (x->kind == PCW_WANT) {
            CHECK(!strcmp(x->target, y->target));
            continue;
        }
        CHECK(!strcmp(x->c.user, y->c.user) && !strcmp(x->c.text, y->c.text));
        CHECK(x->c.devices == y->c.devices && x->c.status == y->c.status);
        CHECK(x->c.text_at == y->c.text_at && x->c.invisible == y->c.invisible);
        CHECK(x->c.inv_at == y->c.inv_at && x->c.last_seen == y->c.last_seen);
    }
    pbuf_free(&b);
    return 0;
}
