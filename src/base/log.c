#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

parley_log_level plog_min_level = PARLEY_LOG_WARN;
static parley_log_fn log_fn;
static void *log_user;

void parley_log_set(parley_log_level min_level, parley_log_fn fn, void *user)
{
    plog_min_level = min_level;
    log_fn = fn;
    log_user = user;
}

void plog_emit(parley_log_level level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (log_fn) {
        log_fn(level, msg, log_user);
        return;
    }
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    fprintf(stderr, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s\n", tm.tm_year + 1900,
            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
            names[level <= PARLEY_LOG_OFF ? level : PARLEY_LOG_OFF], msg);
}
