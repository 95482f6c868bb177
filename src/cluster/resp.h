/*
 * RESP2 (the Redis protocol), sans-I/O: commands out, replies in. Only
 * what a Pub/Sub client meets: simple strings, errors, integers, bulk
 * strings and flat arrays of those (subscribe confirmations, messages,
 * PUBSUB NUMSUB). Replies are parsed in place: strings point into the
 * input, nothing is allocated. Spec: https://redis.io/docs/reference/protocol-spec/
 */
#ifndef PARLEY_CLUSTER_RESP_H
#define PARLEY_CLUSTER_RESP_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

#define PRESP_MAX_ELEMS 8

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

/* Parses one reply at the start of data. Returns the bytes it took (> 0),
 * 0 when more input is needed (*need, if not NULL, gets a lower bound of
 * the bytes the reply takes in all), or PARLEY_EPROTO (malformed, nested
 * or longer array) or PARLEY_ELIMIT (a bulk string over max_bulk). */
long presp_parse(const uint8_t *data, size_t len, size_t max_bulk, presp_reply *out, size_t *need);

/* Appends a command (an array of bulk strings). 0 or PARLEY_ENOMEM. */
int presp_command(pbuf *out, size_t argc, const char *const *argv, const size_t *lens);

#endif
