/*
 * Socket.IO protocol v5 packets (sans-I/O).
 *
 * Text form: <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]
 *   type: 0 CONNECT, 1 DISCONNECT, 2 EVENT, 3 ACK, 4 CONNECT_ERROR,
 *         5 BINARY_EVENT, 6 BINARY_ACK
 * A binary packet is followed by <attachments> binary Engine.IO messages;
 * in its data each Buffer is replaced by {"_placeholder":true,"num":N}.
 *
 * The decoder accepts exactly what the reference (npm socket.io-parser
 * 4.2.x) accepts, per packet type, and rejects the rest with a reason, so
 * that a malformed packet closes only the offending connection.
 */
#ifndef PARLEY_CODEC_SIO_H
#define PARLEY_CODEC_SIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "codec/json.h"

enum sio_type {
    SIO_CONNECT = 0,
    SIO_DISCONNECT = 1,
    SIO_EVENT = 2,
    SIO_ACK = 3,
    SIO_CONNECT_ERROR = 4,
    SIO_BINARY_EVENT = 5,
    SIO_BINARY_ACK = 6,
};

typedef struct sio_limits {
    unsigned max_attachments; /* default 10 (as the reference) */
    unsigned max_depth;       /* JSON nesting, default 32 */
} sio_limits;

void sio_limits_init(sio_limits *l);

typedef struct sio_packet {
    int type;
    unsigned attachments; /* binary types only */
    const char *nsp;      /* "/" when the packet names none */
    size_t nsp_len;
    int64_t id;    /* ack id, -1 when absent */
    json_val data; /* type JSON_INVALID when there is no data */
} sio_packet;

/* Parses a packet from s[0, len) (an Engine.IO text message). Checks the
 * type, the attachment count (binary types only, at most
 * max_attachments), the namespace (starts with '/'), the ack id (decimal,
 * at most 2^53 - 1), that the data is valid JSON within max_depth, and the
 * per-type data rules of the reference parser (e.g. EVENT data is a
 * non-empty array whose first element is an event name that is not
 * reserved). Returns 0, or PARLEY_EPROTO with *why set to a short static
 * text. */
int sio_parse(const char *s, size_t len, const sio_limits *lim, sio_packet *out, const char **why);

/* Reserved event names (connect, connect_error, disconnect, disconnecting,
 * newListener, removeListener). */
bool sio_reserved_event(const char *name, size_t len);

/* Visits the placeholders of binary packet data: every object with
 * "_placeholder": true must have an integer "num" in [0, attachments).
 * Returns 0 or PARLEY_EPROTO (*why set). When cb is non-NULL it is called
 * for each placeholder with its value span and num. */
int sio_check_placeholders(const json_val *data, unsigned attachments, unsigned max_depth,
                           void (*cb)(const json_val *ph, unsigned num, void *user), void *user,
                           const char **why);

/* Appends the packet head: type, "<attachments>-" for binary types,
 * "<nsp>," when nsp is not "/", and the ack id when id >= 0. The caller
 * appends the JSON data (if any) after it. */
int sio_write_head(pbuf *out, int type, unsigned attachments, const char *nsp, size_t nsp_len,
                   int64_t id);

#endif
