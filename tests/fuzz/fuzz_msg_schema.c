/* Fuzzes the messaging schema parsers. The first input byte picks the
 * parser (and, for content, the message type); the rest is the JSON text.
 * Whatever a parser accepts must encode to JSON that it accepts again,
 * giving the same encoding (a fixed point); whatever it refuses must come
 * with a code and a message that encode to valid JSON. */
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

static void check_error(msg_errcode rc, const msg_error *err)
{
    CHECK(rc == err->code);
    CHECK(rc > MSG_OK && rc < MSG_E_COUNT);
    CHECK(err->message[0] != 0);
    pbuf out = {0};
    CHECK(msg_encode_error(&out, err) == 0);
    json_val v;
    CHECK(json_parse((char *)out.ptr, out.len, 8, &v, NULL) == 0);
    bool ok = true;
    msg_error back;
    CHECK(msg_parse_ack(&v, &ok, &back) && !ok && back.code == rc);
    pbuf_free(&out);
}

/* Parses the encoding in out with parse_again and encodes it again: both
 * encodings must be equal. */
#define FIXED_POINT(out, T, parse_again, encode)                                                   \
    do {                                                                                           \
        json_val v2_;                                                                              \
        CHECK(json_parse((char *)(out).ptr, (out).len, 32, &v2_, NULL) == 0);                      \
        T again_;                                                                                  \
        msg_error e2_;                                                                             \
        CHECK(parse_again == MSG_OK);                                                              \
        pbuf o2_ = {0};                                                                            \
        CHECK(encode == 0);                                                                        \
        CHECK(o2_.len == (out).len && memcmp(o2_.ptr, (out).ptr, (out).len) == 0);                 \
        pbuf_free(&o2_);                                                                           \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536) return 0;
    unsigned which = data[0] % 12;
    /* The presence parsers, added later, take the top first bytes. */
    if (data[0] >= 252) which = 12 + (data[0] - 252) % 3;
    msg_limits lim;
    msg_limits_init(&lim);
    lim.max_text = 64 + data[0]; /* small limits are reachable */
    lim.max_caption = 16;
    lim.max_name = 16;
    lim.max_label = 8;
    char *s = malloc(size);
    CHECK(s);
    memcpy(s, data + 1, size - 1);
    json_val v;
    if (which == 11) {
        /* The argument-array helper on the raw text. */
        msg_error err;
        json_val obj;
        msg_errcode rc = msg_args_object(s, size - 1, &lim, &obj, &err);
        if (rc)
            check_error(rc, &err);
        else
            CHECK(obj.type == JSON_OBJECT);
        free(s);
        return 0;
    }
    if (json_parse(s, size - 1, 32, &v, NULL) != 0) {
        free(s);
        return 0;
    }
    msg_error err;
    memset(&err, 0, sizeof err);
    msg_errcode rc = MSG_OK;
    pbuf out = {0};
    switch (which) {
    case 0: {
        msg_send m;
        rc = msg_parse_send(&v, &lim, &m, &err);
        if (rc) break;
        CHECK(msg_valid_client_id(m.client_id, strlen(m.client_id)));
        msg_conv c;
        msg_error e;
        msg_errcode r2 = msg_send_resolve(&m, "alice", &c, &e);
        if (r2 == MSG_OK) {
            msg_conv c2;
            CHECK(msg_conv_parse(&c2, c.id, strlen(c.id)) && strcmp(c2.id, c.id) == 0);
        } else {
            check_error(r2, &e);
        }
        CHECK(msg_encode_send(&out, &m) == 0);
        FIXED_POINT(out, msg_send, msg_parse_send(&v2_, &lim, &again_, &e2_),
                    msg_encode_send(&o2_, &again_));
        break;
    }
    case 1: {
        msg_message m;
        rc = msg_parse_message(&v, &lim, &m, &err);
        if (rc) break;
        CHECK(msg_encode_message(&out, &m, NULL, 0) == 0);
        FIXED_POINT(out, msg_message, msg_parse_message(&v2_, &lim, &again_, &e2_),
                    msg_encode_message(&o2_, &again_, NULL, 0));
        break;
    }
    case 2: {
        msg_receipt r;
        rc = msg_parse_receipt(&v, &r, &err);
        if (rc) break;
        CHECK(msg_encode_receipt(&out, &r) == 0);
        FIXED_POINT(out, msg_receipt, msg_parse_receipt(&v2_, &again_, &e2_),
                    msg_encode_receipt(&o2_, &again_));
        break;
    }
    case 3: {
        msg_status st;
        rc = msg_parse_status(&v, &st, &err);
        if (rc) break;
        CHECK(msg_encode_status(&out, &st) == 0);
        FIXED_POINT(out, msg_status, msg_parse_status(&v2_, &again_, &e2_),
                    msg_encode_status(&o2_, &again_));
        break;
    }
    case 4:
    case 5: {
        bool server = which == 5;
        msg_typing t;
        rc = msg_parse_typing(&v, server, &t, &err);
        if (rc) break;
        CHECK(msg_encode_typing(&out, &t) == 0);
        FIXED_POINT(out, msg_typing, msg_parse_typing(&v2_, server, &again_, &e2_),
                    msg_encode_typing(&o2_, &again_));
        break;
    }
    case 6: {
        msg_sync sy;
        rc = msg_parse_sync(&v, &sy, &err);
        if (rc) break;
        CHECK(sy.limit >= 1 && sy.limit <= MSG_SYNC_MAX_LIMIT);
        json_iter it;
        char id[MSG_CONV_MAX + 1];
        int64_t seq;
        size_t n = 0;
        msg_sync_iter_init(&sy, &it);
        while (msg_sync_iter_next(&it, id, &seq)) {
            msg_conv c;
            CHECK(msg_conv_parse(&c, id, strlen(id)));
            CHECK(seq >= 0 && seq <= MSG_SEQ_MAX);
            n++;
        }
        CHECK(n == sy.nsince);
        /* `cursor` is "" or a valid conversation id. */
        msg_conv fc;
        CHECK(!sy.cursor[0] || msg_conv_parse(&fc, sy.cursor, strlen(sy.cursor)));
        break;
    }
    case 7: {
        msg_history h;
        rc = msg_parse_history(&v, &h, &err);
        if (rc) break;
        msg_conv c;
        CHECK(msg_conv_parse(&c, h.conversation, strlen(h.conversation)));
        CHECK(h.limit >= 1 && h.limit <= MSG_HISTORY_MAX_LIMIT && h.before >= 0);
        break;
    }
    case 8: {
        char room[MSG_ROOM_MAX + 1];
        rc = msg_parse_room_req(&v, room, &err);
        if (rc == MSG_OK) CHECK(msg_valid_room(room, strlen(room)));
        break;
    }
    case 9: {
        char mime[MSG_MIME_MAX + 1];
        unsigned num;
        rc = msg_parse_upload(&v, mime, &num, &err);
        if (rc == MSG_OK) CHECK(msg_valid_mime(mime, strlen(mime)) && num <= 255);
        break;
    }
    case 10: {
        /* Content of every type, from a client and from the server. */
        msg_type t = (msg_type)(1 + (data[0] / 12) % 7);
        bool server = (data[0] / 84) & 1;
        msg_content c;
        rc = msg_parse_content(&v, t, server, &lim, &c, &err);
        if (rc) break;
        CHECK(msg_encode_content(&out, t, &c) == 0);
        json_val v2;
        CHECK(json_parse((char *)out.ptr, out.len, 8, &v2, NULL) == 0);
        msg_content c2;
        msg_error e2;
        /* The server's own additions (mime, size) re-parse on its side. */
        CHECK(msg_parse_content(&v2, t, true, &lim, &c2, &e2) == MSG_OK || !server);
        break;
    }
    case 12: {
        msg_pstatus st;
        bool has_text;
        char text[MSG_PRESENCE_TEXT_MAX + 1];
        int invisible = -2;
        rc = msg_parse_presence_set(&v, &st, &has_text, text, &invisible, &err);
        if (rc) break;
        CHECK(invisible >= -1 && invisible <= 1);
        /* No status: only with invisible (the device keeps its own). */
        CHECK(st == MSG_PS_ONLINE || st == MSG_PS_AWAY || st == MSG_PS_BUSY ||
              (st == MSG_PS_OFFLINE && invisible != -1));
        size_t n = strlen(text);
        CHECK(n <= MSG_PRESENCE_TEXT_MAX && (has_text || n == 0));
        for (size_t i = 0; i < n; i++) CHECK((unsigned char)text[i] >= 0x20 && text[i] != 0x7f);
        break;
    }
    case 13: {
        static char users[MSG_PRESENCE_USERS_MAX][MSG_USER_MAX + 1];
        size_t n;
        rc = msg_parse_presence_users(&v, users, &n, &err);
        if (rc) {
            CHECK(n == 0);
            break;
        }
        CHECK(n >= 1 && n <= MSG_PRESENCE_USERS_MAX);
        for (size_t i = 0; i < n; i++) CHECK(msg_valid_user(users[i], strlen(users[i])));
        break;
    }
    case 14: {
        msg_presence p;
        rc = msg_parse_presence(&v, &p, &err);
        if (rc) break;
        CHECK(msg_encode_presence(&out, &p) == 0);
        FIXED_POINT(out, msg_presence, msg_parse_presence(&v2_, &again_, &e2_),
                    msg_encode_presence(&o2_, &again_));
        break;
    }
    }
    if (rc) check_error(rc, &err);
    pbuf_free(&out);
    free(s);
    return 0;
}
