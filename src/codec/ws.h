/*
 * WebSocket framing (RFC 6455), sans-I/O, for both roles.
 *
 * Parser model: the caller passes the bytes it holds; ws_parse() consumes
 * what it can and returns at most one event per call. Bytes it did not
 * consume must be passed again, at the start of `data`, on the next call
 * (followed by whatever arrived since). Payloads are unmasked in place, so
 * `data` must be writable. A complete, unfragmented, uncompressed message
 * whose frame is wholly inside `data` is delivered as a pointer into `data`
 * (no copy); fragmented or compressed messages are assembled in the
 * parser's own buffer, which is bounded by max_message and grown only after
 * the frame header has been checked against the limits.
 *
 * Checks (each failure returns an error with the close code to send):
 * masking (server: client frames must be masked; client: server frames must
 * not be) -> 1002; reserved opcodes, RSV bits without a negotiated
 * extension, RSV1 on control or continuation frames -> 1002; non-minimal
 * 16/64-bit lengths or the 64-bit top bit set -> 1002; control frames over
 * 125 bytes or fragmented -> 1002; continuation without a message, or a new
 * data frame inside a fragmented message -> 1002; frame over max_frame or
 * message over max_message (also after inflation) -> 1009; invalid UTF-8 in
 * a text message (checked incrementally, failing on the first bad byte
 * received, even inside a frame that has not fully arrived) or in a close
 * reason -> 1007; close payload of 1 byte or a code not allowed on the wire
 * -> 1002; a corrupt deflate stream -> 1007.
 */
#ifndef PARLEY_CODEC_WS_H
#define PARLEY_CODEC_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

enum ws_close_code {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL = 1002,
    WS_CLOSE_UNSUPPORTED = 1003,
    WS_CLOSE_NO_STATUS = 1005, /* never on the wire: "close frame had no code" */
    WS_CLOSE_ABNORMAL = 1006,  /* never on the wire: "connection dropped" */
    WS_CLOSE_INVALID_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_EXTENSION = 1010,
    WS_CLOSE_INTERNAL = 1011,
    WS_CLOSE_RESTART = 1012,
    WS_CLOSE_TRY_AGAIN = 1013,
    WS_CLOSE_BAD_GATEWAY = 1014,
};

/* True for codes a peer may send in a close frame: 1000-1003, 1007-1014
 * and 3000-4999. */
bool ws_close_code_valid(unsigned code);

typedef struct pmd_stream pmd_stream; /* codec/pmd.h */

typedef enum ws_event_type {
    WS_EV_NONE = 0, /* nothing complete yet */
    WS_EV_MESSAGE,  /* a whole text or binary message */
    WS_EV_PING,
    WS_EV_PONG,
    WS_EV_CLOSE, /* the peer's close frame (validated) */
} ws_event_type;

typedef struct ws_event {
    ws_event_type type;
    int opcode; /* WS_OP_TEXT or WS_OP_BINARY for messages */
    /* Message payload, ping/pong payload, or close reason (valid UTF-8).
     * Valid until the next ws_parse call or until the caller changes the
     * input bytes, whichever comes first. */
    uint8_t *data;
    size_t len;
    uint16_t close_code; /* WS_CLOSE_NO_STATUS when the close frame was empty */
    bool was_compressed;
} ws_event;

/* 64 bytes, laid out for size: every WebSocket connection holds one. */
typedef struct ws_parser {
    /* Configuration: set before the first ws_parse. */
    uint32_t max_frame;   /* payload bytes per frame; default 16 MiB */
    uint32_t max_message; /* bytes per (inflated) message; default 16 MiB */
    pmd_stream *inflater; /* non-NULL when permessage-deflate is negotiated */

    /* Private state. */
    uint32_t frame_len;  /* payload length of the current frame (<= max_frame) */
    uint32_t frame_done; /* payload bytes of it already unmasked/checked */
    pbuf msg;            /* assembly buffer */
    uint32_t utf8;       /* UTF-8 state of the text message in progress */
    uint16_t close_code; /* when ws_parse fails: the close code to send */
    int8_t fail_rc;      /* returned again after a failure */
    uint8_t error_id;    /* when ws_parse fails: see ws_parser_error */
    uint8_t state;
    uint8_t mask[4];
    uint8_t hdr_len; /* header bytes of the current frame */
    uint8_t frame_opcode;
    uint8_t msg_opcode; /* opcode of the message in progress, 0 = none */
    bool server;        /* true: peer is a client, frames must be masked */
    bool frame_fin;
    bool frame_rsv1;
    bool frame_masked;
    bool msg_compressed;
    bool msg_assembling; /* payload goes to `msg` */
} ws_parser;

/* Why ws_parse failed (a short static text), NULL if it did not. */
const char *ws_parser_error(const ws_parser *p);

/* Sets defaults (client role, 16 MiB limits, no extension). */
void ws_parser_init(ws_parser *p, bool server);

/* Frees the assembly buffer (the inflater belongs to the caller). */
void ws_parser_free(ws_parser *p);

/* Releases the assembly buffer's memory when no message is in progress
 * and the buffer is larger than keep bytes (idle connections stay small).
 * A message event's data that pointed into that buffer becomes invalid. */
void ws_parser_trim(ws_parser *p, size_t keep);

/* Parses. Returns the number of bytes consumed (>= 0) with *ev set
 * (ev->type == WS_EV_NONE when more input is needed), or PARLEY_EPROTO /
 * PARLEY_ELIMIT with p->close_code and ws_parser_error(p) set: the caller sends a
 * close frame with that code and stops parsing. After a WS_EV_CLOSE event
 * the caller should stop parsing too. */
long ws_parse(ws_parser *p, uint8_t *data, size_t len, ws_event *ev);

/* Total bytes (header + payload) the frame that starts at the beginning of
 * the unconsumed input needs, once its header has been seen; 0 when not
 * known yet. Lets a caller size its input buffer once for a big frame. */
uint64_t ws_parser_frame_need(const ws_parser *p);

/* Writers. */

/* Maximum frame header size: 2 + 8 (length) + 4 (mask). */
#define WS_MAX_HEADER 14

/* Writes a frame header for a payload of `len` bytes into out; mask is
 * NULL (unmasked) or a 4-byte key, which is written into the header.
 * Returns the header length (2..14). */
size_t ws_frame_header(uint8_t *out, int opcode, bool fin, bool rsv1, uint64_t len,
                       const uint8_t *mask);

/* XORs data with the mask, starting at mask position `offset % 4`. */
void ws_mask(uint8_t *data, size_t len, const uint8_t mask[4], size_t offset);

/* Appends one frame (header, then the payload masked when mask != NULL). */
int ws_frame_append(pbuf *out, int opcode, bool fin, bool rsv1, const void *payload, size_t len,
                    const uint8_t *mask);

/* Appends a whole message as one frame. When deflater is non-NULL and
 * len >= threshold the payload is compressed (RSV1 set). */
int ws_message_append(pbuf *out, pmd_stream *deflater, size_t threshold, int opcode,
                      const void *payload, size_t len, const uint8_t *mask);

/* Builds a close frame payload into out (125 bytes): the code (none when
 * code == 0) and the reason, cut to fit at a UTF-8 character boundary.
 * Returns the payload length. */
size_t ws_close_payload(uint8_t *out, uint16_t code, const char *reason, size_t reason_len);

#endif
