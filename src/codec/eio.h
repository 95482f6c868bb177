/*
 * Engine.IO protocol v4 packets (sans-I/O).
 *
 * A packet is one ASCII type digit and a payload: 0 open, 1 close, 2 ping,
 * 3 pong, 4 message, 5 upgrade, 6 noop. Over WebSocket each frame is one
 * packet, and a binary frame is a binary message with no type prefix. Over
 * HTTP long-polling a payload joins packets with the record separator
 * 0x1e; a binary message is written as 'b' followed by its base64.
 */
#ifndef PARLEY_CODEC_EIO_H
#define PARLEY_CODEC_EIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

enum eio_type {
    EIO_OPEN = 0,
    EIO_CLOSE = 1,
    EIO_PING = 2,
    EIO_PONG = 3,
    EIO_MESSAGE = 4,
    EIO_UPGRADE = 5,
    EIO_NOOP = 6,
};

#define EIO_SEPARATOR 0x1e

typedef struct eio_packet {
    int type;
    bool binary; /* a binary message (type is EIO_MESSAGE) */
    uint8_t *data;
    size_t len;
} eio_packet;

/* Parses a text packet (a WebSocket text frame, or one element of a
 * polling payload that is not base64): type digit 0-6 then the payload.
 * Empty input or another first byte -> PARLEY_EPROTO. */
int eio_parse_text(uint8_t *s, size_t len, eio_packet *out);

/* Iterates over a polling payload (a POST body). Base64 binary packets
 * are decoded in place. */
typedef struct eio_payload {
    uint8_t *p;
    uint8_t *end;
    bool done;
} eio_payload;

void eio_payload_init(eio_payload *it, uint8_t *body, size_t len);

/* Returns 1 with the next packet, 0 at the end, PARLEY_EPROTO on a
 * malformed payload (empty body, empty packet, bad type, bad base64). */
int eio_payload_next(eio_payload *it, eio_packet *out);

/* Appends one packet to a polling payload being built: a separator first
 * when out already holds packets (`first` false), then the type digit and
 * data, or 'b' and base64 for binary. */
int eio_payload_append(pbuf *out, bool first, int type, bool binary, const uint8_t *data,
                       size_t len);

/* Size eio_payload_append would add. */
size_t eio_payload_size(bool first, bool binary, size_t len);

#endif
