#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

parley_log_level plog_min_level = PARLEY_LOG_WARN;
static parley_log_fn log_fn;
static void *log_user;
static plog_format log_format = PLOG_TEXT;

void parley_log_set(parley_log_level min_level, parley_log_fn fn, void *user)
{
    plog_min_level = min_level;
    log_fn = fn;
    log_user = user;
}

void plog_set_format(plog_format f)
{
    log_format = f;
}

/* The length of the valid UTF-8 sequence at s (n bytes available), or 0
 * when the bytes there are not one (overlong forms, surrogates, above
 * U+10FFFF, cut short). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* Appends msg as the inside of a JSON string to out[*pos..], keeping
 * `reserve` bytes free at the end. */
static void json_escape(char *out, size_t *pos, size_t cap, size_t reserve, const char *msg)
{
    const unsigned char *s = (const unsigned char *)msg;
    size_t n = strlen(msg), p = *pos;
    for (size_t i = 0; i < n;) {
        char esc[8];
        const char *piece = esc;
        size_t plen, used = 1;
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            plen = 2;
        } else if (c < 0x20) {
            static const char short_esc[] = {['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n',
                                             ['\r'] = 'r', ['\t'] = 't'};
            if (c < sizeof short_esc && short_esc[c]) {
                esc[0] = '\\';
                esc[1] = short_esc[c];
                plen = 2;
            } else {
                plen = (size_t)snprintf(esc, sizeof esc, "\\u%04x", c);
            }
        } else if (c < 0x80) {
            piece = (const char *)s + i;
            plen = 1;
        } else if ((used = utf8_seq(s + i, n - i)) > 0) {
            piece = (const char *)s + i;
            plen = used;
        } else {
            used = 1;
            memcpy(esc, "\\ufffd", 6);
            plen = 6;
        }
        if (p + plen + reserve > cap) break;
        memcpy(out + p, piece, plen);
        p += plen;
        i += used;
    }
    *pos = p;
}

size_t plog_format_line(char *out, size_t cap, plog_format f, parley_log_level level,
                        int64_t unix_ms, const char *msg)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    const char *name = names[level <= PARLEY_LOG_OFF ? level : PARLEY_LOG_OFF];
    time_t secs = (time_t)(unix_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char ts[80];
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(unix_ms % 1000));
    if (f == PLOG_JSON) {
        int head = snprintf(out, cap, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", ts, name);
        size_t pos = (size_t)head;
        json_escape(out, &pos, cap, 4, msg); /* "}\n and the NUL */
        memcpy(out + pos, "\"}\n", 4);
        return pos + 3;
    }
    int head = snprintf(out, cap, "%s %s ", ts, name);
    size_t pos = (size_t)head, n = strlen(msg);
    if (n > cap - pos - 2) n = cap - pos - 2;
    memcpy(out + pos, msg, n);
    pos += n;
    memcpy(out + pos, "\n", 2);
    return pos + 1;
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
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    /* One write per line: lines of concurrent loops do not interleave. */
    char line[PLOG_LINE_MAX];
    size_t n = plog_format_line(line, sizeof line, log_format, level, ms, msg);
    fwrite(line, 1, n, stderr);
}
