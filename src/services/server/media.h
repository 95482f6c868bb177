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
 * Uploads arrive whole (media_put) or in pieces (media_begin, media_write,
 * media_finish), the latter so that a large HTTP body goes to disk as it
 * arrives instead of into memory.
 *
 * Synchronous file I/O: uploads are bounded by the caller's limit
 * (--max-media-bytes). Single-threaded like the store that uses it.
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
 * stored. 0, PARLEY_EIO (cannot create it, or it exists and is not a
 * directory: logged), PARLEY_EINVAL (path too long), PARLEY_ENOMEM. */
int media_open(const char *dir, bool full_sync, media_store **out);
/* The same for a directory several servers share (a cluster on one
 * PostgreSQL: docs/CLUSTER.md): content-addressed names and rename make
 * concurrent writers safe; only temporaries untouched for
 * MEDIA_SHARED_TMP_AGE_S are removed, since another server may be
 * writing the younger ones. */
#define MEDIA_SHARED_TMP_AGE_S 3600
int media_open_shared(const char *dir, bool full_sync, media_store **out);
/* Every writer must have been finished or aborted. NULL is a no-op. */
void media_close(media_store *m);

/* SHA-256 of data as 64 lowercase hex digits. 0 or PARLEY_EIO. */
int media_hash(const void *data, size_t len, char id[MSG_MEDIA_ID_LEN + 1]);

/* Stores data; id receives its media id. 0, PARLEY_EIO. */
int media_put(media_store *m, const void *data, size_t len, char id[MSG_MEDIA_ID_LEN + 1]);

/* Reads media `id` (a valid media id) into out, refusing files larger than
 * max (or whose content does not hash to id). 0, PARLEY_EAGAIN (no such
 * file), PARLEY_ELIMIT, PARLEY_EIO. */
int media_get(media_store *m, const char *id, size_t max, pbuf *out);

/* A streamed upload: a temporary file in the media directory (created
 * with O_EXCL, mode 0640, named "tmp-" and 32 random hex digits) and the
 * SHA-256 of what was written so far. */
typedef struct media_writer media_writer;

/* Starts an upload of at most max_bytes (the caller checks its own limit
 * first; this one only keeps a caller's bug from filling the disk).
 * 0, PARLEY_EIO (logged), PARLEY_ENOMEM. */
int media_begin(media_store *m, uint64_t max_bytes, media_writer **out);
/* Appends len bytes. 0; PARLEY_ELIMIT past max_bytes (nothing of data
 * written) or PARLEY_EIO (disk full, ...; logged), after which the writer
 * only fails: abort it. */
int media_write(media_writer *w, const void *data, size_t len);
/* Completes the upload and frees w, whatever the result: fsyncs when the
 * store is in full-sync mode, then moves the file to its content address,
 * or deletes it when that content is stored already (and still hashes to
 * its name; a damaged copy is replaced). id gets the media id, *existed
 * whether it was stored before. 0, or the writer's earlier error,
 * PARLEY_EIO, with nothing stored. */
int media_finish(media_writer *w, char id[MSG_MEDIA_ID_LEN + 1], bool *existed);
/* Deletes the temporary and frees w. NULL is a no-op. */
void media_abort(media_writer *w);

/* Bytes available to this process on the media directory's file system
 * (statvfs: f_bavail x f_frsize), for the server's disk-space reserve.
 * 0 or PARLEY_EIO. */
int media_disk_free(media_store *m, uint64_t *bytes_avail);

#endif
