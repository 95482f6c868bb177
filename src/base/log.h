/* Internal logging: plog(PARLEY_LOG_WARN, "fmt", ...). */
#ifndef PARLEY_BASE_LOG_H
#define PARLEY_BASE_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "parley/parley.h"

extern parley_log_level plog_min_level;

void plog_emit(parley_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define plog(level, ...)                                                                           \
    do {                                                                                           \
        if ((level) >= plog_min_level) plog_emit((level), __VA_ARGS__);                            \
    } while (0)
#define plog_debug(...) plog(PARLEY_LOG_DEBUG, __VA_ARGS__)
#define plog_info(...)  plog(PARLEY_LOG_INFO, __VA_ARGS__)
#define plog_warn(...)  plog(PARLEY_LOG_WARN, __VA_ARGS__)
#define plog_error(...) plog(PARLEY_LOG_ERROR, __VA_ARGS__)

/* How the default sink (stderr, when no parley_log_set function is set)
 * writes a line:
 *   PLOG_TEXT  2026-12-07T19:53:00.123Z info message
 *   PLOG_JSON  {"ts":"2026-12-07T19:53:00.123Z","level":"info","msg":"message"}
 * JSON lines are valid JSON whatever the message holds: quotes, backslashes
 * and control characters are escaped, valid UTF-8 is kept as is and every
 * byte that is not part of valid UTF-8 becomes U+FFFD. */
typedef enum plog_format { PLOG_TEXT, PLOG_JSON } plog_format;

void plog_set_format(plog_format f);

/* Longest line plog_format_line writes for any message (with the '\n'). */
#define PLOG_LINE_MAX 8192

/* Writes one line, '\n' included, for `msg` at `level` and wall-clock time
 * `unix_ms` into out (NUL-terminated); returns its length. A message too
 * long for `cap` is cut (in JSON, never inside an escape or a UTF-8
 * sequence, and the line stays valid JSON). cap must be at least 128. */
size_t plog_format_line(char *out, size_t cap, plog_format f, parley_log_level level,
                        int64_t unix_ms, const char *msg);

#endif
