/*
 * Time zones from TZif files (RFC 8536), for notification quiet hours
 * (sans-I/O: the bytes of a file in, UTC offsets out; services/tz.h loads
 * files from the system's IANA database).
 *
 * Versions 1, 2 and 3 are read (and 4, which only changes the meaning of
 * the leap-second table, which is not used). For version 2+ files the
 * 64-bit part is used and the version-1 part is only checked for size; the
 * footer's POSIX TZ string (e.g. "CET-1CEST,M3.5.0,M10.5.0/3") gives the
 * offsets after the last transition, with the version-3 extensions (rule
 * times from -167 to 167 hours, DST all year). Times before the first
 * transition use time type 0. Leap-second records are checked for size and
 * otherwise ignored: offsets are for POSIX time.
 *
 * Strictness: bad magic or version, a size that does not match the counts,
 * transitions not strictly ascending, a type index, designation index or
 * UT offset out of range, indicator counts other than 0 or typecnt, a
 * missing, malformed or trailing-garbage footer, and a DST name without a
 * rule are all PARLEY_EPROTO. Limits (TZIF_MAX_*) are checked on the
 * headers, before anything is allocated; a malformed file allocates nothing.
 */
#ifndef PARLEY_CODEC_TZIF_H
#define PARLEY_CODEC_TZIF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TZIF_MAX_TRANSITIONS 2000
#define TZIF_MAX_TYPES       256
#define TZIF_MAX_FOOTER      256 /* bytes of TZ string between the footer's newlines */

typedef struct tz_zone tz_zone;

/* Parses a TZif file (versions 1, 2, 3; for v2+ use the 64-bit second part
 * and the footer TZ string for times after the last transition). Limits
 * checked before allocating (at most 2000 transitions, 256 types, footer <=
 * 256 bytes). 0, PARLEY_EPROTO (malformed), PARLEY_ELIMIT, PARLEY_ENOMEM. */
int tzif_parse(const uint8_t *data, size_t len, tz_zone **out);
void tz_free(tz_zone *z);

/* UTC offset in seconds east of Greenwich at unix time t. Always within
 * [-89999, 93599] (RFC 8536's range). Times beyond about +-2^56 s are
 * evaluated as if clamped there. */
int32_t tz_offset(const tz_zone *z, int64_t t);

/* True for a valid IANA-style zone name: 1..64 bytes of [A-Za-z0-9_+-] in
 * '/'-separated parts, no "." or ".." parts, not starting with '/' (and no
 * empty part: no "//", no trailing '/'). Safe to join to a directory. */
bool tz_valid_name(const char *name, size_t len);

/* Quiet hours [start_min, end_min) in minutes after local midnight
 * (0..1439, start != end; start > end crosses midnight): true when the
 * local time of unix ms now_ms in zone z falls inside. Out-of-range
 * arguments give false. */
bool tz_in_quiet_hours(const tz_zone *z, int start_min, int end_min, int64_t now_ms);

#endif
