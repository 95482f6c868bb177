/* Internal logging: plog(PARLEY_LOG_WARN, "fmt", ...). */
#ifndef PARLEY_BASE_LOG_H
#define PARLEY_BASE_LOG_H

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

#endif
