/*
 * Loading time zones from the system's IANA database (the I/O half of
 * codec/tzif.h, which parses and evaluates them).
 */
#ifndef PARLEY_SERVICES_TZ_H
#define PARLEY_SERVICES_TZ_H

#include "codec/tzif.h"

/* Largest file tz_load reads: real zones are under 4 KiB, and 2000
 * transitions, 256 types and a 256-byte footer fit well inside. */
#define TZ_MAX_FILE (256 * 1024)

/* Loads zone `name` (e.g. "Europe/Berlin") from dir (NULL:
 * "/usr/share/zoneinfo"). Errors: PARLEY_EINVAL (name fails
 * tz_valid_name, which keeps the path inside dir), PARLEY_EIO (missing,
 * unreadable, not a regular file), PARLEY_ELIMIT (file larger than
 * TZ_MAX_FILE) and tzif_parse's errors (PARLEY_EPROTO, PARLEY_ELIMIT,
 * PARLEY_ENOMEM). */
int tz_load(const char *dir, const char *name, tz_zone **out);
/* The same, with a sentence for the log in why[0, cap) on failure (what
 * was wrong and with which file). */
int tz_load_why(const char *dir, const char *name, tz_zone **out, char *why, size_t cap);

#endif
