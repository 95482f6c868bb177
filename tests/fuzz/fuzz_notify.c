/* Fuzzes the notification parsers of the messaging schema. The first
 * input byte picks the parser; the rest is the JSON text. What notify
 * accepts must encode to a Notification whose fields stay within the
 * limits and parse again (actions) to the same encoding; preferences must
 * reach a fixed point through their encoder; every refusal must come with
 * a code, a message and JSON that encodes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "codec/json.h"
#include "services/msg_schema.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) __builtin_trap();                                                                \
    } while (0)

#define NOW 1767225600000LL

static void check_error(msg_errcode rc, const msg_error *err)
{
    CHECK(rc == err->code);
    CHECK(rc > MSG_OK && rc < MSG_E_COUNT);
    CHECK(err->message[0] != 0);
    pbuf out = {0};
    CHECK(msg_encode_error(&out, err) == 0);
    json_val v;
    CHECK(json_parse((char *)out.ptr, out.len, 8, &v, NULL) == 0);
    pbuf_free(&out);
}

static void fuzz_notify(const json_val *v)
{
    msg_notification *n = malloc(sizeof *n);
    CHECK(n);
    msg_error err;
    msg_errcode rc = msg_parse_notify(v, NOW, n, &err);
    if (rc) {
        check_error(rc, &err);
        free(n);
        return;
    }
    CHECK(strlen(n->title) >= 1 && strlen(n->title) <= MSG_NOTIF_TITLE_MAX);
    CHECK(strlen(n->body) <= MSG_NOTIF_BODY_MAX);
    CHECK(n->nactions <= MSG_NOTIF_ACTIONS_MAX);
    CHECK(n->expires == -1 || n->expires > NOW);
    n->id = 1;
    n->created = NOW;
    pbuf out = {0};
    CHECK(msg_encode_notification(&out, n) == 0);
    json_val obj, acts;
    CHECK(json_parse((char *)out.ptr, out.len, 8, &obj, NULL) == 0);
    CHECK(json_object_get(&obj, "actions", &acts));
    msg_naction a[MSG_NOTIF_ACTIONS_MAX];
    unsigned na;
    CHECK(msg_parse_nactions(&acts, a, &na, &err) == MSG_OK && na == n->nactions);
    for (unsigned i = 0; i < na; i++)
        CHECK(!strcmp(a[i].id, n->actions[i].id) && !strcmp(a[i].label, n->actions[i].label));
    pbuf_free(&out);
    free(n);
}

static void fuzz_prefs(const json_val *v)
{
    msg_nprefs p;
    unsigned given;
    msg_error err;
    msg_nprefs_default(&p);
    msg_errcode rc = msg_parse_nprefs(v, &p, &given, &err);
    if (rc) {
        check_error(rc, &err);
        return;
    }
    pbuf out = {0}, again = {0};
    CHECK(msg_encode_nprefs(&out, &p) == 0);
    json_val v2;
    CHECK(json_parse((char *)out.ptr, out.len, 8, &v2, NULL) == 0);
    msg_nprefs q;
    msg_nprefs_default(&q);
    CHECK(msg_parse_nprefs(&v2, &q, &given, &err) == MSG_OK && given == 63);
    CHECK(msg_encode_nprefs(&again, &q) == 0);
    CHECK(again.len == out.len && memcmp(again.ptr, out.ptr, out.len) == 0);
    pbuf_free(&out);
    pbuf_free(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536) return 0;
    unsigned which = data[0] % 4;
    char *s = malloc(size);
    CHECK(s);
    memcpy(s, data + 1, size - 1);
    json_val v;
    if (json_parse(s, size - 1, 32, &v, NULL) != 0) {
        free(s);
        return 0;
    }
    msg_error err;
    msg_errcode rc;
    switch (which) {
    case 0:
        fuzz_notify(&v);
        break;
    case 1:
        fuzz_prefs(&v);
        break;
    case 2: {
        int64_t since;
        unsigned limit;
        rc = msg_parse_nsync(&v, &since, &limit, &err);
        if (rc)
            check_error(rc, &err);
        else
            CHECK(since >= 0 && limit >= 1 && limit <= MSG_NOTIF_SYNC_MAX);
        break;
    }
    default: {
        int64_t *ids = malloc(MSG_NOTIF_READ_MAX * sizeof *ids);
        CHECK(ids);
        size_t n;
        bool all;
        rc = msg_parse_nread(&v, ids, &n, &all, &err);
        if (rc)
            check_error(rc, &err);
        else
            CHECK(all ? n == 0 : (n >= 1 && n <= MSG_NOTIF_READ_MAX));
        free(ids);
        break;
    }
    }
    free(s);
    return 0;
}
