/*
 * The broadcast envelope of the Socket.IO Redis adapter, sans-I/O.
 *
 * @socket.io/redis-adapter 8.x (dist/index.js, RedisAdapter.broadcast and
 * onmessage) and @socket.io/redis-emitter 5.x (dist/index.js,
 * BroadcastOperator.emit) publish, with notepack.io 3.x (MessagePack),
 *
 *     [uid, {type: 2, data: [event, ...args], nsp}, {rooms, except, flags}]
 *
 * on channel "socket.io#<nsp>#" or, for exactly one room,
 * "socket.io#<nsp>#<room>#". Binary arguments are MessagePack bin values
 * inside data (notepack encodes a Buffer as bin, a string as str).
 *
 * The decoder turns such a message into what parley_broadcast takes: the
 * event name, the arguments as a JSON array with binary values replaced by
 * {"_placeholder":true,"num":N} and the attachments (pointing into the
 * message), the rooms and except lists, and the flags. Every length and
 * count is checked against the input and the limits before anything is
 * written, and the decoder's buffers are reused from message to message
 * (no allocation per message once they have grown). Input is hostile:
 * anything malformed, over a limit, with invalid UTF-8 or not an EVENT is
 * refused as a whole.
 *
 * The decoder is our own, not msgpack-c's unpacker: that one reserves
 * memory for the element count a header claims before it reads the
 * elements. Measured with msgpack-c 4.0, the 6-byte message
 * dd 05 f5 e1 00 01 (an array32 claiming 100,000,000 elements) made
 * msgpack_unpack reserve ~2.4 GB (VmPeak 4.2 GB, and it answered
 * CONTINUE), and dd ff ff ff ff failed with NOMEM: a publisher on the
 * Redis channel would control our memory. Ours refuses a count the bytes
 * left cannot hold before doing anything with it (test_hostile_counts).
 *
 * The encoder (msgpack-c's packer, writing into the caller's pbuf through
 * a callback: no allocation beyond the buffer's growth) writes the same
 * envelope from parley_broadcast's arguments, the way notepack would
 * (smallest integer form, float64 for other numbers, str for strings, bin
 * for attachments), so a Node adapter decodes it.
 */
#ifndef PARLEY_CLUSTER_ENVELOPE_H
#define PARLEY_CLUSTER_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "codec/json.h"
#include "parley/server.h"

#define PENV_MAX_UID        64  /* bytes of a node uid (Node: 6) */
#define PENV_MAX_ROOM_LEN   256 /* as the server's room names */
#define PENV_HARD_MAX_ROOMS 1024
#define PENV_HARD_MAX_BINS  64

typedef struct penv_limits {
    size_t max_message; /* whole message in bytes (default 1000000) */
    unsigned max_rooms; /* rooms and except entries each (default 64, <= 1024) */
    unsigned max_depth; /* nesting of arrays and maps (default 32) */
    unsigned max_bins;  /* binary values (default 10, <= 64) */
    unsigned max_items; /* MessagePack values in all (default 100000) */
} penv_limits;

void penv_limits_init(penv_limits *l);

/* A decoded broadcast. Pointers are valid until the next decode with the
 * same decoder (or until the input goes away, for bins and uid). */
typedef struct penv_msg {
    const char *uid;   /* NUL-terminated */
    const char *nsp;   /* NUL-terminated; "/" when the packet had none */
    const char *event; /* NUL-terminated */
    const char *args;  /* JSON array, NUL-terminated */
    size_t args_len;
    const parley_bin *bins;
    size_t nbins;
    const char *const *rooms; /* NUL-terminated names */
    size_t nrooms;
    const char *const *except;
    size_t nexcept;
    bool volatile_;
    bool local;
    int64_t timeout_ms;     /* flags.timeout (0: none) */
    const char *request_id; /* penv_decode_request only */
} penv_msg;

typedef struct penv_dec {
    penv_limits lim;
    pbuf json;                     /* args */
    pbuf strs;                     /* uid, nsp, event, rooms (NUL-separated) */
    size_t *room_off, *except_off; /* offsets into strs, max_rooms each */
    const char **room_ptr, **except_ptr;
    parley_bin bins[PENV_HARD_MAX_BINS];
} penv_dec;

/* 0 or PARLEY_ENOMEM. lim NULL: defaults. */
int penv_dec_init(penv_dec *d, const penv_limits *lim);
void penv_dec_free(penv_dec *d);

/* Decodes one message. 0, or PARLEY_EPROTO (malformed, not an event
 * envelope, invalid UTF-8), PARLEY_ELIMIT (over a limit), PARLEY_ENOMEM.
 * *why (may be NULL) says what, for logs. */
int penv_decode(penv_dec *d, const uint8_t *msg, size_t len, penv_msg *out, const char **why);

/* The same for a broadcast with acknowledgements, published on the
 * request channel: {uid, requestId, type: 7, packet, opts} (RedisAdapter
 * .broadcastWithAck). request_id is set. */
int penv_decode_request(penv_dec *d, const uint8_t *msg, size_t len, penv_msg *out,
                        const char **why);

/* Appends one JSON value as MessagePack (placeholders refer to bins). */
int penv_put_json(pbuf *out, pbuf *scratch, const json_val *v, const parley_bin *bins, size_t nbins,
                  unsigned max_depth);

/* Appends the envelope for a broadcast to out (after out->len = 0 by the
 * caller if wanted). args: a parsed JSON array or NULL; placeholders in it
 * refer to bins. except_id (may be NULL) is added to the except list (a
 * socket id: the sender). scratch is a reusable buffer for string
 * decoding. 0, PARLEY_EINVAL (a placeholder without its attachment,
 * nesting over max_depth), PARLEY_ENOMEM. */
typedef struct penv_out {
    const char *uid;
    const char *nsp;
    const char *event;
    const json_val *args;
    const parley_bin *bins;
    size_t nbins;
    const char *const *rooms;
    size_t nrooms;
    const char *const *except;
    size_t nexcept;
    const char *except_id;
    bool volatile_;
} penv_out;

int penv_encode(pbuf *out, pbuf *scratch, const penv_out *m, unsigned max_depth);

/* MessagePack writers (notepack's choices of forms), for other messages. */
int penv_put_str(pbuf *out, const char *s, size_t len);
int penv_put_int(pbuf *out, int64_t v);
int penv_put_array(pbuf *out, uint32_t n);
int penv_put_map(pbuf *out, uint32_t n);

#endif
