/*
 * permessage-deflate (RFC 7692): negotiation for both roles and the
 * deflate/inflate streams.
 *
 * Window bits: zlib's raw deflate cannot produce an 8-bit window, so an
 * offer that requires server_max_window_bits=8 from us (or, as a client, a
 * response that requires client_max_window_bits=8) is declined rather than
 * answered with a stream the peer cannot read. Inflaters always use a
 * 15-bit window, which reads any window size.
 *
 * Inflation is bounded: output is produced in steps and stops with
 * PARLEY_ELIMIT before the message exceeds its limit, so a deflate bomb
 * never makes us allocate past the limit.
 */
#ifndef PARLEY_CODEC_PMD_H
#define PARLEY_CODEC_PMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

/* What this side is willing to do. */
typedef struct pmd_config {
    bool enabled;                    /* default true */
    bool server_no_context_takeover; /* server: always demand it; client: request it */
    bool client_no_context_takeover; /* server: always demand it; client: request it */
    int server_max_window_bits;      /* 9..15 (default 15): client requests / server caps */
    int client_max_window_bits;      /* 9..15 (default 15): client offers / server caps;
                                      * a client with 0 leaves the parameter out of
                                      * its offer (the server then cannot cap us) */
    int level;                       /* zlib level 1..9, default 1 (speed) */
    int mem_level;                   /* zlib memLevel 1..9, default 8 */
    size_t threshold;                /* messages below this many bytes go uncompressed; default 64 */
} pmd_config;

/* What was agreed. */
typedef struct pmd_params {
    bool server_no_context_takeover;
    bool client_no_context_takeover;
    int server_max_window_bits; /* 15 when not negotiated */
    int client_max_window_bits; /* 15 when not negotiated */
} pmd_params;

void pmd_config_init(pmd_config *c);

/* Server: reads the client's Sec-WebSocket-Extensions value (several
 * header occurrences joined with ","), picks the first permessage-deflate
 * offer it can accept and appends the response header value to `response`.
 * Returns 1 (accepted, *out filled), 0 (no acceptable offer: no
 * extension), or PARLEY_EPROTO for a malformed header (answer 400). */
int pmd_server_negotiate(const pmd_config *cfg, const char *offer, size_t len, pmd_params *out,
                         pbuf *response);

/* Client: appends the offer header value for cfg. */
int pmd_client_offer(const pmd_config *cfg, pbuf *out);

/* Client: checks the server's Sec-WebSocket-Extensions value against what
 * was offered. Returns 1 (accepted, *out filled) or PARLEY_EPROTO (fail
 * the connection: unknown extension, parameter not offered, bad value,
 * duplicate parameter). An empty value returns 0 (no extension). */
int pmd_client_accept(const pmd_config *cfg, const char *resp, size_t len, pmd_params *out);

/* Streams. `server` says which side we are: it picks which window bits and
 * which no_context_takeover flag apply to our deflater and our inflater. */
typedef struct pmd_stream pmd_stream;

/* Creates lazily-initialised streams (zlib state is allocated on first
 * use, so a negotiated but unused extension costs a few bytes). NULL when
 * out of memory. */
pmd_stream *pmd_deflater_new(const pmd_params *p, const pmd_config *cfg, bool server);
pmd_stream *pmd_inflater_new(const pmd_params *p, bool server);
void pmd_stream_free(pmd_stream *s);

/* Compresses one whole message and appends the payload (without the
 * trailing 00 00 ff ff) to out. Resets the context afterwards when our
 * no_context_takeover applies. 0, PARLEY_ENOMEM or PARLEY_EIO (zlib). */
int pmd_deflate_message(pmd_stream *s, const uint8_t *in, size_t len, pbuf *out);

/* Inflates one frame's payload of a compressed message and appends the
 * output to out. `fin`: this is the message's last frame (the 00 00 ff ff
 * tail is fed after it, and the context is reset when the peer's
 * no_context_takeover applies). Fails with PARLEY_ELIMIT as soon as out
 * would hold more than max_out bytes, PARLEY_EPROTO on a corrupt stream. */
int pmd_inflate(pmd_stream *s, const uint8_t *in, size_t len, bool fin, pbuf *out, size_t max_out);

/* Frees zlib state between messages when the stream has no context to
 * keep (no_context_takeover) — used to keep idle connections small. */
void pmd_stream_trim(pmd_stream *s);

#endif
