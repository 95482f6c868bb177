/*
 * The messages of presence across nodes (presence_cluster.c), read and
 * written without the service, so that the parser can be fuzzed and
 * tested alone. A message is a JSON array: [1, uid, record...], a record
 * being
 *   ["c", user, devices, status, text_at, text, invisible, inv_at, last_seen]
 *        a contribution (devices 0: the user has none on that node any
 *        more; last_seen: when the last one went, -1 unknown)
 *   ["w", uid]  "node uid: send your table": the sender is new to it
 *   ["b"]  the sender leaves (shutting down): its devices go now
 * status: msg_pstatus (0 offline, 1 busy, 2 away, 3 online; at least 1
 * with devices, 0 without). A message with anything else is garbage: it
 * is refused whole.
 */
#ifndef PARLEY_SERVICES_SERVER_PRESENCE_WIRE_H
#define PARLEY_SERVICES_SERVER_PRESENCE_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "codec/json.h"
#include "services/msg_schema.h"

#define PCW_UID_MAX     32          /* node uid bytes: [A-Za-z0-9] */
#define PCW_IN_MAX      (1u << 20)  /* longer messages are refused unparsed */
#define PCW_DEVICES_MAX 1000000     /* per user and node */
#define PCW_TIME_MAX    (INT64_MAX / 2)

typedef struct pcw_contrib {
    char user[MSG_USER_MAX + 1];
    uint32_t devices;
    uint8_t status;
    int64_t text_at;
    char text[MSG_PRESENCE_TEXT_MAX + 1];
    bool invisible;
    int64_t inv_at;
    int64_t last_seen; /* -1 unknown */
} pcw_contrib;

enum { PCW_CONTRIB, PCW_WANT };

typedef struct pcw_record {
    int kind;
    pcw_contrib c;                   /* PCW_CONTRIB */
    char target[PCW_UID_MAX + 1];    /* PCW_WANT: the node asked for its table */
} pcw_record;

/* A checked message; its values point into the text given to pcw_parse,
 * which must outlive it. */
typedef struct pcw_msg {
    json_val top;
    json_iter it; /* at the first record */
    char uid[PCW_UID_MAX + 1];
    bool bye;
} pcw_msg;

/* Checks a whole message: NULL with m ready for pcw_next, or what is
 * wrong with it (a static string). */
const char *pcw_parse(pcw_msg *m, const char *msg, size_t len);
/* The next contribution or table request of a message pcw_parse took
 * (a "b" record is m->bye instead): true, or false after the last. */
bool pcw_next(pcw_msg *m, pcw_record *r);

/* Writers: the header "[1,uid" (uid valid), then records each after a
 * ',', then "]". 0 or PARLEY_ENOMEM. */
int pcw_header(pbuf *b, const char *uid);
int pcw_contrib_append(pbuf *b, const pcw_contrib *c);
int pcw_want_append(pbuf *b, const char *uid);
int pcw_bye_append(pbuf *b);

/* A node uid: 1..PCW_UID_MAX bytes of [A-Za-z0-9]. */
bool pcw_uid_ok(const char *s);

#endif
