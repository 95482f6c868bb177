/*
 * The outbound queue: what the application sent and the server has not
 * acknowledged yet. Sans-I/O apart from the optional SQLite file: the
 * caller passes the clock in and decides when to send.
 *
 * Order: urgent > high > normal > low; first in, first out within a
 * priority. An entry is sent (outq_next + outq_sent), stays "in flight"
 * until outq_ack removes it, and goes back to pending (same id, same place
 * in the order) when the connection drops (outq_requeue). Each entry
 * carries an idempotency id, so that at-least-once transmission gives
 * exactly-once effect on a server that de-duplicates by id.
 *
 * Limits: a push that would exceed max_count entries or max_bytes of
 * payload is refused with PARLEY_EFULL; nothing is ever dropped silently.
 * Entries with a time-to-live expire (outq_expire reports them, they are
 * never sent afterwards) unless they are in flight at their deadline.
 *
 * Persistence (optional): with a path, every change is written to a SQLite
 * database in WAL mode before the call returns, so a process killed at any
 * point and restarted finds every entry it had pushed and not seen
 * acknowledged, in the same order, with the same ids. In-flight entries
 * come back as pending.
 */
#ifndef PARLEY_CLIENT_OUTQ_H
#define PARLEY_CLIENT_OUTQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum outq_priority {
    OUTQ_LOW = 0,
    OUTQ_NORMAL = 1,
    OUTQ_HIGH = 2,
    OUTQ_URGENT = 3,
};

#define OUTQ_ID_LEN 36 /* UUID v4 text, without NUL */

typedef struct outq outq;

typedef struct outq_opts {
    size_t max_count; /* default 1000 */
    size_t max_bytes; /* payload bytes (event name included); default 8 MiB */
    const char *path; /* SQLite file, NULL = in memory only */
} outq_opts;

void outq_opts_init(outq_opts *o);

typedef struct outq_entry {
    uint64_t seq; /* push order, kept across restarts */
    char id[OUTQ_ID_LEN + 1];
    int priority;
    uint64_t created_ms; /* wall-clock ms (caller's clock) */
    uint64_t expires_ms; /* 0 = never */
    char *event;         /* NUL-terminated */
    uint8_t *data;
    size_t len;
    uint32_t attempts; /* times handed out by outq_sent */
    bool in_flight;
} outq_entry;

/* Opens a queue, loading a persisted one when opts->path exists (creating
 * or migrating its schema). Errors: PARLEY_EINVAL, PARLEY_ENOMEM, PARLEY_EIO
 * (the file cannot be opened or is not a queue). */
int outq_open(const outq_opts *opts, outq **out);

/* Closes (everything stays in the file when persistent). */
void outq_close(outq *q);

/* Adds an entry. id: the caller's idempotency id (36 characters, e.g. a
 * message resent by the application) or NULL to generate a UUID v4. An id
 * already in the queue gives PARLEY_EINVAL. ttl_ms 0 = no expiry. The entry
 * pointer (optional) is valid until the entry is acked or expired.
 * Errors: PARLEY_EFULL (count or bytes limit), PARLEY_EINVAL, PARLEY_ENOMEM,
 * PARLEY_EIO (storage). */
int outq_push(outq *q, int priority, const char *event, const void *data, size_t len,
              uint64_t ttl_ms, uint64_t now_ms, const char *id, outq_entry **out);

/* The next entry to send: highest priority, oldest, not in flight, not
 * expired at now_ms; NULL when none. */
outq_entry *outq_next(outq *q, uint64_t now_ms);

/* Marks an entry as sent (in flight) and counts the attempt. */
void outq_sent(outq *q, outq_entry *e);

/* The server acknowledged id: the entry leaves the queue. Returns 0, or
 * PARLEY_EINVAL when no such entry (a duplicate ack: harmless). */
int outq_ack(outq *q, const char *id);

/* The connection dropped: in-flight entries become pending again. */
void outq_requeue(outq *q);

/* The server answered e but asked for it again later (a rate limit): e,
 * in flight, becomes pending again at its place in the order, its attempt
 * still counted. A deadline that passed while it was in flight applies
 * now, as after outq_requeue. No-op for an entry not in flight. */
void outq_requeue_entry(outq *q, outq_entry *e);

/* Removes pending entries expired at now_ms, calling cb for each before it
 * is freed. Returns how many. In-flight entries do not expire: they were
 * sent, the server may have stored them, and its acknowledgement decides;
 * one whose deadline passed in flight expires once outq_requeue makes it
 * pending again (outq_next_expiry then reports its deadline). */
size_t outq_expire(outq *q, uint64_t now_ms, void (*cb)(const outq_entry *e, void *user),
                   void *user);

/* The earliest expiry among entries, 0 when none expires (for a timer). */
uint64_t outq_next_expiry(const outq *q);

outq_entry *outq_find(const outq *q, const char *id);
size_t outq_count(const outq *q);
size_t outq_bytes(const outq *q);
size_t outq_in_flight(const outq *q);

/* Visits every entry in send order (pending and in flight). */
void outq_foreach(const outq *q, void (*cb)(const outq_entry *e, void *user), void *user);

#endif
