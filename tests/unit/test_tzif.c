/* Unit tests for the TZif parser and POSIX TZ footer rules (codec/tzif.h)
 * and the zone loader (services/tz.h): real zones from /usr/share/zoneinfo
 * at hand-checked instants (the 2026 transitions, seconds either side) and
 * against glibc's `date` over two and a half centuries, quiet hours, zone
 * names, every truncation of real files, limits without allocation, and
 * footer strings on synthetic files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "codec/tzif.h"
#include "parley/parley.h"
#include "services/tz.h"

#define ZONEINFO "/usr/share/zoneinfo"

/* Every malloc made by the library goes through here (the test links with
 * -Wl,--wrap=malloc), so "nothing allocated" can be asserted. */
void *__wrap_malloc(size_t n);
void *__real_malloc(size_t n);
static size_t malloc_calls;
void *__wrap_malloc(size_t n)
{
    malloc_calls++;
    return __real_malloc(n);
}

static int64_t utc(int y, int mo, int d, int h, int mi)
{
    struct tm tm = {
        .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi};
    return (int64_t)timegm(&tm);
}

static tz_zone *load(const char *name)
{
    tz_zone *z = NULL;
    assert_int_equal(tz_load(NULL, name, &z), 0);
    assert_non_null(z);
    return z;
}

static uint8_t *read_all(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, ZONEINFO "/%s", name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint8_t *buf = malloc(1 << 16);
    assert_non_null(buf);
    *len = fread(buf, 1, 1 << 16, f);
    fclose(f);
    assert_true(*len > 44 && *len < (1 << 16));
    return buf;
}

/* Offset just before and exactly at a transition. */
static void assert_change(const tz_zone *z, int64_t at, int32_t before, int32_t after)
{
    assert_int_equal(tz_offset(z, at - 1), before);
    assert_int_equal(tz_offset(z, at), after);
}

static void test_berlin(void **state)
{
    (void)state;
    tz_zone *z = load("Europe/Berlin");
    assert_int_equal(tz_offset(z, utc(2026, 1, 15, 12, 0)), 3600);
    assert_int_equal(tz_offset(z, utc(2026, 7, 15, 12, 0)), 7200);
    assert_int_equal(utc(2026, 3, 29, 1, 0), 1774746000);
    assert_change(z, 1774746000, 3600, 7200);
    assert_int_equal(utc(2026, 10, 25, 1, 0), 1792890000);
    assert_change(z, 1792890000, 7200, 3600);
    /* 2100 is past the file's table (it ends in 2037): footer rule. */
    assert_change(z, utc(2100, 3, 28, 1, 0), 3600, 7200);
    assert_change(z, utc(2100, 10, 31, 1, 0), 7200, 3600);
    assert_int_equal(tz_offset(z, utc(2100, 1, 15, 0, 0)), 3600);
    assert_int_equal(tz_offset(z, utc(2100, 7, 15, 0, 0)), 7200);
    /* Before the first transition (1893): LMT, +0:53:28 (zdump gmtoff). */
    assert_int_equal(tz_offset(z, utc(1800, 1, 1, 0, 0)), 3208);
    assert_int_equal(tz_offset(z, INT64_MIN), 3208);
    int32_t far = tz_offset(z, INT64_MAX); /* clamped: some year past 10^9 */
    assert_true(far == 3600 || far == 7200);
    tz_free(z);
}

static void test_new_york(void **state)
{
    (void)state;
    tz_zone *z = load("America/New_York");
    assert_int_equal(tz_offset(z, utc(2026, 1, 15, 12, 0)), -18000);
    assert_int_equal(tz_offset(z, utc(2026, 7, 15, 12, 0)), -14400);
    assert_change(z, utc(2026, 3, 8, 7, 0), -18000, -14400);
    assert_change(z, utc(2026, 11, 1, 6, 0), -14400, -18000);
    assert_change(z, utc(2100, 3, 14, 7, 0), -18000, -14400);      /* second Sunday */
    assert_change(z, utc(2100, 11, 7, 6, 0), -14400, -18000);      /* first Sunday */
    assert_int_equal(tz_offset(z, utc(1850, 1, 1, 0, 0)), -17762); /* LMT -4:56:02 */
    tz_free(z);
}

static void test_kolkata_lord_howe_utc(void **state)
{
    (void)state;
    tz_zone *z = load("Asia/Kolkata");
    assert_int_equal(tz_offset(z, utc(2026, 1, 15, 12, 0)), 19800);
    assert_int_equal(tz_offset(z, utc(2026, 7, 15, 12, 0)), 19800);
    assert_int_equal(tz_offset(z, utc(2100, 7, 15, 12, 0)), 19800);
    tz_free(z);

    z = load("Australia/Lord_Howe"); /* +10:30 standard, +11 in (southern) summer */
    assert_int_equal(tz_offset(z, utc(2026, 1, 15, 12, 0)), 39600);
    assert_int_equal(tz_offset(z, utc(2026, 7, 15, 12, 0)), 37800);
    assert_change(z, 1775314800, 39600, 37800); /* 2026-04-04 15:00 UTC */
    assert_change(z, 1791041400, 37800, 39600); /* 2026-10-03 15:30 UTC */
    assert_change(z, utc(2100, 4, 3, 15, 0), 39600, 37800);
    assert_change(z, utc(2100, 10, 2, 15, 30), 37800, 39600);
    assert_int_equal(tz_offset(z, utc(2100, 1, 1, 0, 0)), 39600); /* DST across New Year */
    tz_free(z);

    z = load("UTC");
    int64_t ts[] = {INT64_MIN, -1, 0, 1774746000, utc(2100, 7, 1, 0, 0), INT64_MAX};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) assert_int_equal(tz_offset(z, ts[i]), 0);
    tz_free(z);
}

/* glibc's reading of the same files, as an independent implementation:
 * `TZ=zone date -f times +%z`, compared to the minute (%z has no seconds,
 * and old LMT offsets do). */
static void test_against_date(void **state)
{
    (void)state;
    if (system("date --version >/dev/null 2>&1") != 0) skip();
    static const char *zones[] = {
        "Europe/Berlin",     "America/New_York",  "Asia/Kolkata", "Australia/Lord_Howe",
        "America/Sao_Paulo", "Europe/Dublin",     "Asia/Tehran",  "Pacific/Chatham",
        "America/Nuuk",      "Africa/Casablanca", "UTC"};
    enum { N = 2200 };
    static int64_t ts[N];
    char tmpl[] = "/tmp/parley-tzif-XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    uint64_t rng = 0x9e3779b97f4a7c15u;
    for (int i = 0; i < N; i++) {
        rng = rng * 6364136223846793005u + 1442695040888963407u;
        /* 1900..2150, and a dense band around 2026 */
        int64_t lo = utc(1900, 1, 1, 0, 0), hi = utc(2150, 1, 1, 0, 0);
        if (i % 2) lo = utc(2025, 1, 1, 0, 0), hi = utc(2028, 1, 1, 0, 0);
        ts[i] = lo + (int64_t)((rng >> 11) % (uint64_t)(hi - lo));
        fprintf(f, "@%lld\n", (long long)ts[i]);
    }
    fclose(f);
    for (size_t zi = 0; zi < sizeof zones / sizeof zones[0]; zi++) {
        tz_zone *z = load(zones[zi]);
        char cmd[512];
        snprintf(cmd, sizeof cmd, "TZ=%s date -f %s +%%z", zones[zi], tmpl);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        char line[64];
        int i = 0;
        while (fgets(line, sizeof line, p) && i < N) {
            int hhmm = atoi(line + 1);
            int32_t want = (line[0] == '-' ? -1 : 1) * ((hhmm / 100) * 60 + hhmm % 100);
            int32_t got = tz_offset(z, ts[i]);
            int32_t got_min = got < 0 ? -(-got / 60) : got / 60;
            if (got_min != want)
                fail_msg("%s at %lld: %d, date says %s", zones[zi], (long long)ts[i], got, line);
            i++;
        }
        assert_int_equal(pclose(p), 0);
        assert_int_equal(i, N);
        tz_free(z);
    }
    unlink(tmpl);
}

static void test_quiet_hours(void **state)
{
    (void)state;
    tz_zone *z = load("Europe/Berlin");
    /* Winter: local = UTC + 1. 22:00-07:00 crosses midnight. */
    assert_false(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 1, 15, 20, 59) * 1000));
    assert_true(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 1, 15, 21, 0) * 1000));
    assert_true(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 1, 15, 23, 30) * 1000));
    assert_true(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 1, 16, 5, 59) * 1000));
    assert_true(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 1, 16, 5, 59) * 1000 + 59999));
    assert_false(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 1, 16, 6, 0) * 1000));
    /* Summer: local = UTC + 2. */
    assert_false(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 7, 15, 19, 59) * 1000));
    assert_true(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 7, 15, 20, 0) * 1000));
    assert_true(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 7, 16, 4, 59) * 1000));
    assert_false(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 7, 16, 5, 0) * 1000));
    /* Same-day window 09:00-17:00. */
    assert_false(tz_in_quiet_hours(z, 9 * 60, 17 * 60, utc(2026, 1, 15, 7, 59) * 1000));
    assert_true(tz_in_quiet_hours(z, 9 * 60, 17 * 60, utc(2026, 1, 15, 8, 0) * 1000));
    assert_true(tz_in_quiet_hours(z, 9 * 60, 17 * 60, utc(2026, 1, 15, 15, 59) * 1000));
    assert_false(tz_in_quiet_hours(z, 9 * 60, 17 * 60, utc(2026, 1, 15, 16, 0) * 1000));
    /* Bad windows are never quiet. */
    assert_false(tz_in_quiet_hours(z, 600, 600, utc(2026, 1, 15, 9, 0) * 1000));
    assert_false(tz_in_quiet_hours(z, -1, 600, utc(2026, 1, 15, 0, 0) * 1000));
    assert_false(tz_in_quiet_hours(z, 0, 1440, utc(2026, 1, 15, 0, 0) * 1000));
    tz_free(z);

    /* Kolkata, +5:30: local 22:00 is 16:30 UTC. */
    z = load("Asia/Kolkata");
    assert_false(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 5, 1, 16, 29) * 1000));
    assert_true(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 5, 1, 16, 30) * 1000));
    assert_true(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 5, 2, 1, 29) * 1000));
    assert_false(tz_in_quiet_hours(z, 22 * 60, 7 * 60, utc(2026, 5, 2, 1, 30) * 1000));
    /* A half-hour window at 13:30-14:00 local = 08:00-08:30 UTC. */
    assert_false(tz_in_quiet_hours(z, 13 * 60 + 30, 14 * 60, utc(2026, 5, 1, 7, 59) * 1000));
    assert_true(tz_in_quiet_hours(z, 13 * 60 + 30, 14 * 60, utc(2026, 5, 1, 8, 0) * 1000));
    assert_false(tz_in_quiet_hours(z, 13 * 60 + 30, 14 * 60, utc(2026, 5, 1, 8, 30) * 1000));
    tz_free(z);

    /* Before 1970, ms round toward -inf: -1 ms is 23:59:59.999 UTC. */
    z = load("UTC");
    assert_true(tz_in_quiet_hours(z, 23 * 60 + 59, 0, -1));
    assert_false(tz_in_quiet_hours(z, 23 * 60 + 59, 0, 0));
    assert_true(tz_in_quiet_hours(z, 0, 1, 0));
    (void)tz_in_quiet_hours(z, 0, 1, INT64_MIN);
    (void)tz_in_quiet_hours(z, 0, 1, INT64_MAX); /* no overflow (UBSan) */
    tz_free(z);
}

static void test_names(void **state)
{
    (void)state;
    static const char *good[] = {"UTC",       "Europe/Berlin", "America/Argentina/Buenos_Aires",
                                 "Etc/GMT+5", "Etc/GMT-14",    "a",
                                 "A-b_c+1/x"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        assert_true(tz_valid_name(good[i], strlen(good[i])));
    static const char *bad[] = {
        "../etc/passwd", "/abs", "a/../b",         "",     ".",   "..",    "a/./b",
        "a//b",          "a/",   "Europe/Berlin ", "a\\b", "a.b", "~root", "a/.."};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(tz_valid_name(bad[i], strlen(bad[i])));
    char long_name[66];
    memset(long_name, 'a', sizeof long_name);
    assert_true(tz_valid_name(long_name, 64));
    assert_false(tz_valid_name(long_name, 65));
    assert_false(tz_valid_name("UTC\0x", 5)); /* embedded NUL */
    assert_false(tz_valid_name(NULL, 3));

    tz_zone *z = (tz_zone *)1;
    assert_int_equal(tz_load(NULL, "../etc/passwd", &z), PARLEY_EINVAL);
    assert_null(z);
    assert_int_equal(tz_load(NULL, "/abs", &z), PARLEY_EINVAL);
    assert_int_equal(tz_load(NULL, "a/../b", &z), PARLEY_EINVAL);
    assert_int_equal(tz_load(NULL, "", &z), PARLEY_EINVAL);
    assert_int_equal(tz_load(NULL, "No/Such_Zone", &z), PARLEY_EIO);
    assert_int_equal(tz_load(NULL, "Europe", &z), PARLEY_EIO); /* a directory */
    assert_int_equal(tz_load("/nonexistent-dir", "UTC", &z), PARLEY_EIO);
    assert_int_equal(tz_load(ZONEINFO, "Asia/Kolkata", &z), 0);
    tz_free(z);

    /* A file that is there but not TZif. */
    char dir[] = "/tmp/parley-tzdir-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/Bad", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("not a tzif file at all, but long enough to hold a header.....", f);
    fclose(f);
    assert_int_equal(tz_load(dir, "Bad", &z), PARLEY_EPROTO);
    /* Each failure says what was wrong, for the log (not "I/O error"). */
    char why[256];
    assert_int_equal(tz_load_why(dir, "Bad", &z, why, sizeof why), PARLEY_EPROTO);
    assert_non_null(strstr(why, "not a valid TZif file"));
    assert_non_null(strstr(why, "/Bad"));
    assert_int_equal(tz_load_why(dir, "No/Such_Zone", &z, why, sizeof why), PARLEY_EIO);
    assert_non_null(strstr(why, "no such zone"));
    assert_int_equal(tz_load_why(NULL, "Europe", &z, why, sizeof why), PARLEY_EIO);
    assert_non_null(strstr(why, "not a regular file"));
    assert_int_equal(tz_load_why(NULL, "../x", &z, why, sizeof why), PARLEY_EINVAL);
    assert_string_equal(why, "not a valid zone name");
    unlink(path);
    rmdir(dir);
}

/* Every proper prefix of a real file is malformed; only the whole parses.
 * Each prefix sits in its own exact-size allocation so that ASan sees any
 * read past it. */
static void test_truncated(void **state)
{
    (void)state;
    static const char *zones[] = {"UTC", "Asia/Kolkata", "Europe/Berlin", "Australia/Lord_Howe"};
    for (size_t zi = 0; zi < sizeof zones / sizeof zones[0]; zi++) {
        size_t len;
        uint8_t *all = read_all(zones[zi], &len);
        for (size_t n = 0; n <= len; n++) {
            uint8_t *copy = malloc(n ? n : 1);
            assert_non_null(copy);
            memcpy(copy, all, n);
            tz_zone *z = NULL;
            size_t before = malloc_calls;
            int rc = tzif_parse(copy, n, &z);
            if (n < len) {
                if (rc != PARLEY_EPROTO) fail_msg("%s prefix %zu: %d", zones[zi], n, rc);
                assert_null(z);
                assert_int_equal(malloc_calls, before); /* refused before allocating */
            } else {
                assert_int_equal(rc, 0);
                assert_int_equal(malloc_calls, before + 1);
                tz_free(z);
            }
            free(copy);
        }
        /* A byte of trailing garbage is refused too. */
        uint8_t *more = malloc(len + 1);
        memcpy(more, all, len);
        more[len] = '\n';
        tz_zone *z = NULL;
        assert_int_equal(tzif_parse(more, len + 1, &z), PARLEY_EPROTO);
        free(more);
        free(all);
    }
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8),
    p[3] = (uint8_t)v;
}

/* Offsets of the count fields in a header. */
enum { H_ISUT = 20, H_ISSTD = 24, H_LEAP = 28, H_TIME = 32, H_TYPE = 36, H_CHAR = 40 };

static int parse_counting(const uint8_t *d, size_t len, size_t *allocs)
{
    tz_zone *z = NULL;
    size_t before = malloc_calls;
    int rc = tzif_parse(d, len, &z);
    *allocs = malloc_calls - before;
    if (rc == 0)
        tz_free(z);
    else
        assert_null(z);
    return rc;
}

static void test_malformed(void **state)
{
    (void)state;
    size_t len, allocs;
    uint8_t *orig = read_all("Europe/Berlin", &len);
    uint8_t *d = malloc(len);
    assert_non_null(d);
    /* The v2 header follows the v1 block; find it. */
    size_t h2 = 0;
    for (size_t i = 4; i + 4 <= len; i++)
        if (memcmp(orig + i, "TZif", 4) == 0) {
            h2 = i;
            break;
        }
    assert_true(h2 > 44);

#define RESET() memcpy(d, orig, len)
    RESET();
    d[0] = 'X';
    assert_int_equal(parse_counting(d, len, &allocs), PARLEY_EPROTO);
    RESET();
    d[h2 + 3] = 'g'; /* second magic */
    assert_int_equal(parse_counting(d, len, &allocs), PARLEY_EPROTO);
    RESET();
    d[4] = '5'; /* unknown version */
    assert_int_equal(parse_counting(d, len, &allocs), PARLEY_EPROTO);
    RESET();
    d[h2 + 4] = '3'; /* versions of the two headers differ */
    assert_int_equal(parse_counting(d, len, &allocs), PARLEY_EPROTO);

    /* Limits, in either header, before anything is allocated. */
    uint32_t lim[][2] = {
        {H_TIME, 2001}, {H_TIME, 0xffffffffu}, {H_TYPE, 257}, {H_TYPE, 0xffffffffu}};
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++) {
        size_t at[] = {lim[i][0], h2 + lim[i][0]};
        for (int k = 0; k < 2; k++) {
            RESET();
            put32(d + at[k], lim[i][1]);
            assert_int_equal(parse_counting(d, len, &allocs), PARLEY_ELIMIT);
            assert_int_equal(allocs, 0);
        }
    }
    /* Counts that do not match the data. */
    uint32_t bad[][2] = {{H_TYPE, 0}, {H_CHAR, 0}, {H_ISUT, 1},           {H_ISSTD, 1},
                         {H_LEAP, 1}, {H_TIME, 1}, {H_CHAR, 0xffffffffu}, {H_LEAP, 0xffffffffu}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        RESET();
        put32(d + h2 + bad[i][0], bad[i][1]);
        assert_int_equal(parse_counting(d, len, &allocs), PARLEY_EPROTO);
        assert_int_equal(allocs, 0);
    }
    /* Data: the first 64-bit transition moved after the second (not
     * ascending); a type index out of range; a footer that is not a rule;
     * a footer without its closing newline. */
    RESET();
    memcpy(d + h2 + 44, d + h2 + 44 + 8, 8);
    assert_int_equal(parse_counting(d, len, &allocs), PARLEY_EPROTO);
    uint32_t timecnt = (uint32_t)orig[h2 + H_TIME] << 24 | (uint32_t)orig[h2 + H_TIME + 1] << 16 |
                       (uint32_t)orig[h2 + H_TIME + 2] << 8 | orig[h2 + H_TIME + 3];
    RESET();
    d[h2 + 44 + 8 * timecnt] = 200;
    assert_int_equal(parse_counting(d, len, &allocs), PARLEY_EPROTO);
    RESET();
    d[len - 2] = '!'; /* "...M10.5.0/!" */
    assert_int_equal(parse_counting(d, len, &allocs), PARLEY_EPROTO);
    RESET();
    d[len - 1] = 'x';
    assert_int_equal(parse_counting(d, len, &allocs), PARLEY_EPROTO);
    RESET();
    assert_int_equal(parse_counting(d, len, &allocs), 0);
    assert_int_equal(allocs, 1);
#undef RESET
    free(d);
    free(orig);
}

/* A version-2 file with no transitions, one type (offset type0) and the
 * given footer string: all of time is the footer's. */
static size_t build(uint8_t *out, char version, int32_t type0, const char *footer, size_t flen)
{
    size_t n = 0;
    for (int part = 0; part < 2; part++) {
        memset(out + n, 0, 44);
        memcpy(out + n, "TZif", 4);
        out[n + 4] = (uint8_t)version;
        put32(out + n + H_TYPE, 1);
        put32(out + n + H_CHAR, 4);
        n += 44;
        put32(out + n, (uint32_t)type0);
        out[n + 4] = 0, out[n + 5] = 0;
        memcpy(out + n + 6, "ABC", 4);
        n += 10;
        if (version == 0) return n;
    }
    out[n++] = '\n';
    memcpy(out + n, footer, flen);
    n += flen;
    out[n++] = '\n';
    return n;
}

static tz_zone *footer_zone(const char *footer)
{
    uint8_t buf[1024];
    size_t n = build(buf, '3', 0, footer, strlen(footer));
    tz_zone *z = NULL;
    int rc = tzif_parse(buf, n, &z);
    if (rc != 0) fail_msg("footer \"%s\": %d", footer, rc);
    return z;
}

static int footer_rc(const char *footer)
{
    uint8_t buf[1024];
    size_t n = build(buf, '2', 0, footer, strlen(footer));
    size_t allocs;
    return parse_counting(buf, n, &allocs);
}

static void test_footer(void **state)
{
    (void)state;
    tz_zone *z = footer_zone("CET-1CEST,M3.5.0,M10.5.0/3");
    assert_change(z, 1774746000, 3600, 7200);
    assert_change(z, 1792890000, 7200, 3600);
    tz_free(z);
    /* It agrees with Berlin's own footer far out, every few days. */
    tz_zone *berlin = load("Europe/Berlin");
    z = footer_zone("CET-1CEST,M3.5.0,M10.5.0/3");
    for (int64_t t = utc(2040, 1, 1, 0, 0); t < utc(2300, 1, 1, 0, 0); t += 86400 * 3 + 3607)
        assert_int_equal(tz_offset(z, t), tz_offset(berlin, t));
    tz_free(z);
    tz_free(berlin);

    z = footer_zone("<+0330>-3:30");
    assert_int_equal(tz_offset(z, 0), 12600);
    assert_int_equal(tz_offset(z, utc(2100, 7, 1, 0, 0)), 12600);
    tz_free(z);
    z = footer_zone("<-03>3");
    assert_int_equal(tz_offset(z, 0), -10800);
    tz_free(z);
    z = footer_zone("XYZ-24:59:59");
    assert_int_equal(tz_offset(z, 0), 89999);
    tz_free(z);

    z = footer_zone("EST5EDT,M3.2.0,M11.1.0");
    assert_change(z, utc(2026, 3, 8, 7, 0), -18000, -14400);
    assert_change(z, utc(2026, 11, 1, 6, 0), -14400, -18000);
    tz_free(z);

    /* Jn never counts Feb 29 (J60 is March 1); n counts it (59 is Feb 29
     * in a leap year, March 1 otherwise). */
    z = footer_zone("AAA0BBB,J60/0,J300/0");
    assert_change(z, utc(2028, 3, 1, 0, 0), 0, 3600);
    assert_change(z, utc(2027, 3, 1, 0, 0), 0, 3600);
    tz_free(z);
    z = footer_zone("AAA0BBB,59/0,300/0");
    assert_change(z, utc(2028, 2, 29, 0, 0), 0, 3600);
    assert_change(z, utc(2027, 3, 1, 0, 0), 0, 3600);
    assert_change(z, utc(2028, 10, 26, 23, 0), 3600, 0); /* day 300 = Oct 27, 00:00 DST */
    tz_free(z);

    /* Negative rule time (America/Nuuk style): 23:00 the day before. */
    z = footer_zone("<-02>2<-01>,M3.5.0/-1,M10.5.0/0");
    assert_change(z, 1774746000, -7200, -3600);
    assert_change(z, 1792890000, -3600, -7200);
    tz_free(z);
    /* 167 hours: first Sunday of March 2026 is March 1, plus 6d23h. */
    z = footer_zone("AAA0BBB,M3.1.0/167,M10.1.0/-167");
    assert_change(z, utc(2026, 3, 7, 23, 0), 0, 3600);
    assert_change(z, utc(2026, 9, 27, 0, 0), 3600, 0); /* Oct 4 00:00 - 167h, in DST */
    tz_free(z);
    /* Explicit DST offset, and seconds. */
    z = footer_zone("AAA-1BBB-1:30:15,M3.5.0,M10.5.0");
    assert_int_equal(tz_offset(z, utc(2026, 7, 1, 0, 0)), 5415);
    assert_int_equal(tz_offset(z, utc(2026, 1, 1, 0, 0)), 3600);
    tz_free(z);
    /* Version 3: DST all year. */
    z = footer_zone("EST5EDT,0/0,J365/25");
    int64_t all[] = {utc(2026, 1, 1, 5, 0),     utc(2026, 1, 1, 4, 0),    utc(2026, 7, 1, 0, 0),
                     utc(2026, 12, 31, 23, 59), utc(2028, 12, 31, 12, 0), utc(2100, 3, 1, 0, 0)};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        assert_int_equal(tz_offset(z, all[i]), -14400);
    tz_free(z);
    /* Southern hemisphere, 30-minute DST (Lord Howe's footer). */
    z = footer_zone("<+1030>-10:30<+11>-11,M10.1.0,M4.1.0");
    assert_change(z, 1775314800, 39600, 37800);
    assert_change(z, 1791041400, 37800, 39600);
    assert_int_equal(tz_offset(z, utc(2027, 1, 1, 0, 0)), 39600);
    tz_free(z);

    /* An empty footer: no rule, type 0 throughout. */
    uint8_t buf[1024];
    size_t n = build(buf, '2', 19800, "", 0);
    assert_int_equal(tzif_parse(buf, n, &z), 0);
    assert_int_equal(tz_offset(z, utc(2100, 1, 1, 0, 0)), 19800);
    tz_free(z);
    /* Version 1: no footer at all. */
    n = build(buf, 0, -3600, NULL, 0);
    assert_int_equal(tzif_parse(buf, n, &z), 0);
    assert_int_equal(tz_offset(z, 0), -3600);
    tz_free(z);
    /* An offset outside RFC 8536's range. */
    n = build(buf, '2', 93600, "", 0);
    assert_int_equal(tzif_parse(buf, n, &z), PARLEY_EPROTO);

    static const char *bad[] = {"CE-1",
                                "CET",
                                "CET-25",
                                "CET-1:60",
                                "CET-1:00:60",
                                "CET-1CEST",
                                "CET-1CEST,",
                                "CET-1CEST,M3.5.0",
                                "CET-1CEST,M3.5.0,",
                                "CET-1CEST,M13.1.0,M10.5.0",
                                "CET-1CEST,M0.1.0,M10.5.0",
                                "CET-1CEST,M3.6.0,M10.5.0",
                                "CET-1CEST,M3.0.0,M10.5.0",
                                "CET-1CEST,M3.5.7,M10.5.0",
                                "CET-1CEST,M3.5,M10.5.0",
                                "CET-1CEST,J0,J100",
                                "CET-1CEST,J366,J100",
                                "CET-1CEST,366,100",
                                "CET-1CEST,M3.5.0/168,M10.5.0",
                                "CET-1CEST,M3.5.0/-168,M10.5.0",
                                "CET-1CEST,M3.5.0,M10.5.0/3x",
                                "CET-1CEST,M3.5.0,M10.5.0,",
                                "<AB>1",
                                "<ABC1",
                                "<A B>1",
                                "CET-1CE,M3.5.0,M10.5.0",
                                " CET-1",
                                "CET-1 ",
                                "CET+-1",
                                "CET-1CEST-25,M3.5.0,M10.5.0",
                                "12CET",
                                "CET-1\tCEST,M3.5.0,M10.5.0"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (footer_rc(bad[i]) != PARLEY_EPROTO) fail_msg("footer \"%s\" accepted", bad[i]);

    /* 256 bytes of TZ string is the limit. */
    char big[300];
    big[0] = '<';
    memset(big + 1, 'A', 252);
    memcpy(big + 253, ">-1", 4);
    assert_int_equal(strlen(big), 256);
    assert_int_equal(footer_rc(big), 0);
    memset(big + 1, 'A', 253);
    memcpy(big + 254, ">-1", 4);
    assert_int_equal(footer_rc(big), PARLEY_ELIMIT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_berlin),
        cmocka_unit_test(test_new_york),
        cmocka_unit_test(test_kolkata_lord_howe_utc),
        cmocka_unit_test(test_against_date),
        cmocka_unit_test(test_quiet_hours),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_footer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
