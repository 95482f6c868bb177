/*
 * Rate limits and quotas of the messaging service (docs/PROTOCOL.md,
 * "Limits"): the configuration with its defaults, and the tables of token
 * buckets that outlive connections — per user, and per sender/recipient
 * pair. Per-socket buckets live in the socket's own state.
 *
 * Memory: an entry is made the first time a user (or pair) is limited and
 * freed by a sweep once its buckets are full again (it then holds no
 * information); nothing is allocated per request after that. The pair
 * table is bounded (max_pairs): when it is full, new pairs are refused
 * with a retry hint rather than growing it.
 *
 * Loop thread only.
 */
#ifndef PARLEY_SERVICES_QUOTA_H
#define PARLEY_SERVICES_QUOTA_H

#include <stdbool.h>
#include <stdint.h>

#include "base/ratelimit.h"
#include "net/net.h"

typedef struct mquota_opts {
    prate_cfg events;        /* per socket: every event (default 50/s, burst 100) */
    prate_cfg messages;      /* per user: send_message (default 20/s, burst 40) */
    prate_cfg message_bytes; /* per user: content bytes (default 256 KiB/s, burst 1 MiB) */
    prate_cfg presence;      /* per user: presence_set (default 1/s, burst 10) */
    prate_cfg joins;         /* per user: join_room (default 1/s, burst 20) */
    prate_cfg notify;   /* per sender and recipient: notifications (default 30/min, burst 10) */
    prate_cfg urgent;   /* per sender and recipient (DM) or room: urgent (default 10/h, burst 3) */
    prate_cfg strikes;  /* refusals past a run's first second (default 30/s, burst 300) */
    uint32_t max_rooms; /* rooms a user may be a member of (default 500; 0 = no limit) */
    uint32_t uploads_per_day;      /* media uploads per user per UTC day (default 500) */
    uint64_t upload_bytes_per_day; /* media bytes per user per UTC day (default 1 GiB) */
    uint64_t storage_per_user;     /* stored bytes per user (default 2 GiB; 0 = no limit) */
    uint64_t disk_reserve;         /* free bytes below which writes are refused (default 256 MiB) */
    uint32_t max_pairs;            /* sender/recipient buckets kept at once (default 100000) */
} mquota_opts;

void mquota_opts_init(mquota_opts *o);
/* Lifts every limit (benchmarks, trusted deployments). */
void mquota_opts_unlimited(mquota_opts *o);

typedef enum mquota_user_kind {
    MQ_MESSAGES,
    MQ_BYTES,
    MQ_PRESENCE,
    MQ_JOINS,
    MQ_USER_KINDS
} mquota_user_kind;

typedef enum mquota_pair_kind { MQ_NOTIFY, MQ_URGENT, MQ_PAIR_KINDS } mquota_pair_kind;

typedef struct mquota mquota;

/* The options are copied. 0 or PARLEY_ENOMEM. */
int mquota_new(parley_loop *loop, const mquota_opts *o, mquota **out);
void mquota_free(mquota *q);
const mquota_opts *mquota_opts_of(const mquota *q);

/* Takes `cost` from the user's bucket of `kind`. False with *retry_ms
 * when over the limit (or out of memory: then retry in a second). */
bool mquota_user_take(mquota *q, const char *user, mquota_user_kind kind, uint64_t cost,
                      uint64_t *retry_ms);
/* Gives back what a refused request took (e.g. its bytes, when the
 * message bucket then refused it). */
void mquota_user_refund(mquota *q, const char *user, mquota_user_kind kind, uint64_t cost);

/* One from the bucket of (from, to): a sender and a recipient user, or a
 * room for urgent room messages (callers prefix names so that the two
 * cannot collide). */
bool mquota_pair_take(mquota *q, const char *from, const char *to, mquota_pair_kind kind,
                      uint64_t *retry_ms);

typedef struct mquota_stats {
    unsigned users;      /* user entries now */
    unsigned pairs;      /* pair entries now */
    uint64_t pairs_full; /* refusals because the pair table was full */
} mquota_stats;
void mquota_stats_get(const mquota *q, mquota_stats *st);

/* Frees entries whose buckets are full now (also done every minute). */
void mquota_sweep(mquota *q);

#endif
