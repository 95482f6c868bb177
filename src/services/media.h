/*
 * Content-addressed media files: each upload is stored once under the
 * SHA-256 of its bytes, as <dir>/<first two hex digits>/<all 64 digits>.
 *
 * Writes go to a temporary file in the same directory and are renamed
 * into place, so a file under its final name is always complete (a crash
 * leaves at most a stray temporary, removed by media_open). Content that
 * is already stored, and still hashes to its name, is not written again;
 * a damaged copy is replaced. The index (size, type, who may see it)
 * lives in the messaging store, not here.
 *
 * Synchronous file I/O: uploads are bounded by the caller's limit
 * (--max-media-bytes).
 */
#ifndef PARLEY_SERVICES_MEDIA_H
#define PARLEY_SERVICES_MEDIA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "services/msg_schema.h"

typedef struct media_store media_store;

/* Uses (creating) directory `dir`; removes temporaries left by a crash.
 * full_sync: fsync each file and its directory before it counts as
 * stored. 0, PARLEY_EIO, PARLEY_ENOMEM. */
int media_open(const char *dir, bool full_sync, media_store **out);
void media_close(media_store *m);

/* SHA-256 of data as 64 lowercase hex digits. 0 or PARLEY_EIO. */
int media_hash(const void *data, size_t len, char id[MSG_MEDIA_ID_LEN + 1]);

/* Stores data; id receives its media id. 0, PARLEY_EIO. */
int media_put(media_store *m, const void *data, size_t len, char id[MSG_MEDIA_ID_LEN + 1]);

/* Reads media `id` (a valid media id) into out, refusing files larger than
 * max (or whose content does not hash to id). 0, PARLEY_EAGAIN (no such
 * file), PARLEY_ELIMIT, PARLEY_EIO. */
int media_get(media_store *m, const char *id, size_t max, pbuf *out);

#endif
