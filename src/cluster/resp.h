/*
 * RESP2 (the Redis protocol), sans-I/O: commands out, replies in. Only
 * what a Pub/Sub client meets: simple strings, errors, integers, bulk
 * strings and flat arrays of those (subscribe confirmations, messages,
 * PUBSUB NUMSUB). Spec: https://redis.io/docs/reference/protocol-spec/
 *
 * Reading is hiredis' reader (hiredis/read.h, Debian libhiredis-dev) with
 * our own reply-object functions: they fill one reusable presp_reply
 * instead of allocating a redisReply tree, copy string bytes into a
 * reusable arena (hiredis compacts its buffer at the end of each
 * redisReaderGetReply, so pointers into it would not survive), and refuse
 * nested arrays, arrays over PRESP_MAX_ELEMS elements and bulk strings
 * over max_bulk. hiredis 0.14 has no limit of its own on a bulk string's
 * length (it buffers until the whole string is there), so the reader takes
 * at most max_bulk + PRESP_SLACK unconsumed bytes (presp_reader_room) and
 * a reply's strings together at most as much: a server that sends more
 * gets PARLEY_ELIMIT and the connection is dropped. Nothing is allocated
 * per reply once the buffers have grown (hiredis' maxbuf is 0: its buffer
 * is kept, and it is bounded by the limit above, instead of being freed
 * and allocated again whenever it drains with over 16 KiB spare; counted
 * with malloc interposed, 19,000 pmessage replies of 50 KB fed in 4 KiB
 * pieces took 76,000 allocations with the default 16 KiB, none with 0).
 *
 * hiredis 0.14 is lenient where our old reader was strict: it reads
 * ":12a" as 12, "$-2" as a nil and does not check the CRLF after a bulk
 * string's bytes (the bytes after it then fail as the next reply). None
 * of that gives a server more than it has anyway (it chooses every
 * integer and string it sends); memory stays bounded as above.
 *
 * Writing stays our own (presp_command): redisFormatCommandArgv allocates
 * its result for every command, and PUBLISH is sent once per broadcast, a
 * hot path where the house rule is no allocation per message. Writing
 * RESP is a few lines into the connection's reusable command buffer.
 */
#ifndef PARLEY_CLUSTER_RESP_H
#define PARLEY_CLUSTER_RESP_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

#define PRESP_MAX_ELEMS 8
#define PRESP_SLACK     (64 * 1024) /* over max_bulk: headers, other strings */

typedef struct presp_val {
    char type;        /* '+', '-', ':', '$' */
    const uint8_t *p; /* string bytes ('$' nil: NULL) */
    size_t len;
    int64_t i; /* ':' */
} presp_val;

typedef struct presp_reply {
    char type;                     /* '*' for an array, else as presp_val */
    presp_val v;                   /* not an array */
    presp_val el[PRESP_MAX_ELEMS]; /* an array's elements */
    size_t n;
    int nil; /* "*-1" or "$-1" */
} presp_reply;

struct redisReader;

typedef struct presp_reader {
    struct redisReader *r;
    size_t max_bulk;
    size_t cap; /* max_bulk + PRESP_SLACK */
    presp_reply rep;
    size_t off[PRESP_MAX_ELEMS + 1]; /* string offsets in arena ([0]: rep.v) */
    pbuf arena;
    int err;
    int handed; /* rep was handed out: cleared before the next one */
    const char *why;
} presp_reader;

/* 0 or PARLEY_ENOMEM. */
int presp_reader_init(presp_reader *rd, size_t max_bulk);
void presp_reader_free(presp_reader *rd);
/* Forgets buffered bytes and any error (a new connection). 0 or
 * PARLEY_ENOMEM. */
int presp_reader_reset(presp_reader *rd);

/* How many more bytes the reader takes now (0: its limit is reached and
 * no reply can complete: the peer is over the limit). */
size_t presp_reader_room(const presp_reader *rd);

/* Copies len bytes in. 0, PARLEY_ELIMIT (len over presp_reader_room) or
 * PARLEY_ENOMEM. */
int presp_feed(presp_reader *rd, const uint8_t *p, size_t len);

/* The next complete reply: 1 (*out valid until the next call), 0 when
 * more input is needed, or PARLEY_EPROTO (malformed, nested or longer
 * array), PARLEY_ELIMIT (a bulk string over max_bulk) or PARLEY_ENOMEM;
 * an error stays until presp_reader_reset. */
int presp_next(presp_reader *rd, const presp_reply **out);

/* What the last error was, for logs. */
const char *presp_reader_error(const presp_reader *rd);

/* Appends a command (an array of bulk strings). 0 or PARLEY_ENOMEM. */
int presp_command(pbuf *out, size_t argc, const char *const *argv, const size_t *lens);

#endif
