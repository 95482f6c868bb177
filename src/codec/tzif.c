#include "codec/tzif.h"

#include <stdlib.h>
#include <string.h>

#include "parley/parley.h"

/* RFC 8536 section 3.2: offsets outside this range are not allowed (and
 * -2^31 is singled out), so keeping them here also keeps t + offset from
 * overflowing anywhere below. */
#define UTOFF_MIN (-89999)
#define UTOFF_MAX 93599

#define HEADER_LEN 44

/* Footer evaluation clamps times here so that day arithmetic (days * 86400
 * plus a week of rule time) stays far from int64 overflow. */
#define FOOTER_T_LIMIT ((int64_t)1 << 56)

typedef enum rule_kind { RULE_JULIAN1, RULE_ZERO, RULE_MONTH } rule_kind;

/* One end of the DST period: a day of the year and a local time of day. */
typedef struct tz_when {
    rule_kind kind;
    int n;        /* Jn: 1..365; n: 0..365 */
    int m, w, d;  /* Mm.w.d */
    int32_t secs; /* local time of day, -167h..167h */
} tz_when;

typedef struct tz_rule {
    bool present; /* a non-empty TZ string */
    bool has_dst;
    int32_t std_off; /* seconds east */
    int32_t dst_off;
    tz_when start, end;
} tz_rule;

typedef struct tz_trans {
    int64_t at;
    int32_t off;
} tz_trans;

struct tz_zone {
    int32_t first_off; /* time type 0: before the first transition */
    tz_rule rule;      /* after the last transition (v2+ only) */
    size_t n;
    tz_trans trans[]; /* strictly ascending */
};

typedef struct tzif_header {
    char version; /* 0, '2', '3', '4' */
    uint32_t isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt;
} tzif_header;

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t rd64(const uint8_t *p)
{
    return (int64_t)((uint64_t)rd32(p) << 32 | rd32(p + 4));
}

static int read_header(const uint8_t *p, size_t len, tzif_header *h)
{
    if (len < HEADER_LEN) return PARLEY_EPROTO;
    if (memcmp(p, "TZif", 4) != 0) return PARLEY_EPROTO;
    h->version = (char)p[4];
    if (h->version != 0 && h->version != '2' && h->version != '3' && h->version != '4')
        return PARLEY_EPROTO;
    h->isutcnt = rd32(p + 20);
    h->isstdcnt = rd32(p + 24);
    h->leapcnt = rd32(p + 28);
    h->timecnt = rd32(p + 32);
    h->typecnt = rd32(p + 36);
    h->charcnt = rd32(p + 40);
    /* Limits before consistency, so that a huge count is reported as a
     * limit whatever else is wrong with the file. */
    if (h->timecnt > TZIF_MAX_TRANSITIONS || h->typecnt > TZIF_MAX_TYPES) return PARLEY_ELIMIT;
    if (h->typecnt == 0 || h->charcnt == 0) return PARLEY_EPROTO;
    if (h->isutcnt != 0 && h->isutcnt != h->typecnt) return PARLEY_EPROTO;
    if (h->isstdcnt != 0 && h->isstdcnt != h->typecnt) return PARLEY_EPROTO;
    return 0;
}

/* Size of the data block after a header; timesz is 4 (v1) or 8 (v2+).
 * 64-bit arithmetic: counts are at most 2^32 - 1, so nothing overflows. */
static uint64_t block_len(const tzif_header *h, unsigned timesz)
{
    return (uint64_t)h->timecnt * timesz + h->timecnt + (uint64_t)h->typecnt * 6 + h->charcnt +
           (uint64_t)h->leapcnt * (timesz + 4) + h->isstdcnt + h->isutcnt;
}

/* ---- POSIX TZ strings (footer) ---------------------------------------- */

typedef struct cursor {
    const char *p, *end;
} cursor;

static bool peek_is(const cursor *c, char ch)
{
    return c->p < c->end && *c->p == ch;
}

static bool is_alpha(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z');
}

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* 1..maxdigits decimal digits. */
static bool parse_num(cursor *c, int maxdigits, int *out)
{
    int v = 0, k = 0;
    while (c->p < c->end && is_digit(*c->p) && k < maxdigits) {
        v = v * 10 + (*c->p - '0');
        c->p++;
        k++;
    }
    *out = v;
    return k > 0;
}

/* A zone abbreviation: 3+ letters, or <3+ of [A-Za-z0-9+-]>. Only its
 * syntax matters here: offsets come from the numbers. */
static bool parse_name(cursor *c)
{
    const char *s = c->p;
    if (peek_is(c, '<')) {
        c->p++;
        s = c->p;
        while (c->p < c->end &&
               (is_alpha(*c->p) || is_digit(*c->p) || *c->p == '+' || *c->p == '-'))
            c->p++;
        if (c->p - s < 3 || !peek_is(c, '>')) return false;
        c->p++;
        return true;
    }
    while (c->p < c->end && is_alpha(*c->p)) c->p++;
    return c->p - s >= 3;
}

/* [+-]h[:mm[:ss]] with hours up to max_hours; the sign as written. */
static bool parse_hms(cursor *c, int max_hours, int hour_digits, int32_t *out)
{
    int sign = 1;
    if (peek_is(c, '+')) {
        c->p++;
    } else if (peek_is(c, '-')) {
        sign = -1;
        c->p++;
    }
    int h, m = 0, s = 0;
    if (!parse_num(c, hour_digits, &h) || h > max_hours) return false;
    if (peek_is(c, ':')) {
        c->p++;
        if (!parse_num(c, 2, &m) || m > 59) return false;
        if (peek_is(c, ':')) {
            c->p++;
            if (!parse_num(c, 2, &s) || s > 59) return false;
        }
    }
    *out = sign * (h * 3600 + m * 60 + s);
    return true;
}

/* POSIX offsets count west of Greenwich; RFC 8536 keeps hours to 0..24. */
static bool parse_offset(cursor *c, int32_t *east)
{
    int32_t west;
    if (!parse_hms(c, 24, 2, &west)) return false;
    *east = -west;
    return true;
}

static bool parse_when(cursor *c, tz_when *w)
{
    memset(w, 0, sizeof *w);
    if (peek_is(c, 'J')) {
        c->p++;
        w->kind = RULE_JULIAN1;
        if (!parse_num(c, 3, &w->n) || w->n < 1 || w->n > 365) return false;
    } else if (peek_is(c, 'M')) {
        c->p++;
        w->kind = RULE_MONTH;
        if (!parse_num(c, 2, &w->m) || w->m < 1 || w->m > 12) return false;
        if (!peek_is(c, '.')) return false;
        c->p++;
        if (!parse_num(c, 1, &w->w) || w->w < 1 || w->w > 5) return false;
        if (!peek_is(c, '.')) return false;
        c->p++;
        if (!parse_num(c, 1, &w->d) || w->d > 6) return false;
    } else {
        w->kind = RULE_ZERO;
        if (!parse_num(c, 3, &w->n) || w->n > 365) return false;
    }
    w->secs = 2 * 3600; /* POSIX default: 02:00 */
    if (peek_is(c, '/')) {
        c->p++;
        /* RFC 8536 section 3.3.1 (version 3): -167..167 hours. */
        if (!parse_hms(c, 167, 3, &w->secs)) return false;
    }
    return true;
}

static int parse_tz_string(const char *s, size_t len, tz_rule *r)
{
    memset(r, 0, sizeof *r);
    if (len == 0) return 0; /* no rule: the last transition's type lasts */
    cursor c = {s, s + len};
    if (!parse_name(&c) || !parse_offset(&c, &r->std_off)) return PARLEY_EPROTO;
    r->present = true;
    r->dst_off = r->std_off;
    if (c.p == c.end) return 0;
    if (!parse_name(&c)) return PARLEY_EPROTO;
    r->has_dst = true;
    r->dst_off = r->std_off + 3600;
    if (c.p < c.end && *c.p != ',' && !parse_offset(&c, &r->dst_off)) return PARLEY_EPROTO;
    /* POSIX leaves a DST name without a rule to the implementation; zic
     * never writes one, so it is refused rather than guessed. */
    if (!peek_is(&c, ',')) return PARLEY_EPROTO;
    c.p++;
    if (!parse_when(&c, &r->start) || !peek_is(&c, ',')) return PARLEY_EPROTO;
    c.p++;
    if (!parse_when(&c, &r->end) || c.p != c.end) return PARLEY_EPROTO;
    return 0;
}

/* ---- civil calendar ---------------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days since 1970-01-01 of y-m-d (proleptic Gregorian; H. Hinnant's
 * days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = floor_div(y, 400);
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int64_t year_of_days(int64_t z)
{
    z += 719468;
    int64_t era = floor_div(z, 146097);
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t y = yoe + era * 400;
    return mp >= 10 ? y + 1 : y; /* March-based year: Jan and Feb belong to the next */
}

static int month_len(int64_t y, int m)
{
    static const int len[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : len[m - 1];
}

/* Day (since the epoch) on which rule date w falls in year y. */
static int64_t when_day(const tz_when *w, int64_t y)
{
    int64_t jan1 = days_from_civil(y, 1, 1);
    switch (w->kind) {
    case RULE_JULIAN1:
        /* Feb 29 is never counted: J60 is always March 1. */
        return jan1 + w->n - 1 + (is_leap(y) && w->n >= 60 ? 1 : 0);
    case RULE_ZERO:
        return jan1 + w->n;
    case RULE_MONTH:
    default: {
        int64_t first = days_from_civil(y, w->m, 1);
        int wday = (int)(((first % 7) + 7 + 4) % 7); /* 1970-01-01 was a Thursday */
        int mday = 1 + (w->d - wday + 7) % 7 + (w->w - 1) * 7;
        while (mday > month_len(y, w->m)) mday -= 7; /* week 5: the last one */
        return first + mday - 1;
    }
    }
}

static int32_t rule_offset(const tz_rule *r, int64_t t)
{
    if (!r->has_dst) return r->std_off;
    if (t > FOOTER_T_LIMIT) t = FOOTER_T_LIMIT;
    if (t < -FOOTER_T_LIMIT) t = -FOOTER_T_LIMIT;
    int64_t y = year_of_days(floor_div(t + r->std_off, 86400));
    /* The latest change at or before t wins. Looking at the neighbouring
     * years too covers southern-hemisphere rules (DST across New Year),
     * rule times beyond 24h and the all-year-DST form. A start is written
     * in standard time, an end in DST. */
    int64_t best = INT64_MIN;
    int32_t off = r->std_off;
    bool found = false;
    for (int64_t yy = y - 1; yy <= y + 1; yy++) {
        int64_t s = when_day(&r->start, yy) * 86400 + r->start.secs - r->std_off;
        int64_t e = when_day(&r->end, yy) * 86400 + r->end.secs - r->dst_off;
        if (s <= t && (!found || s >= best)) {
            best = s;
            off = r->dst_off;
            found = true;
        }
        if (e <= t && (!found || e >= best)) {
            best = e;
            off = r->std_off;
            found = true;
        }
    }
    return off;
}

/* ---- TZif ----------------------------------------------------------- */

int tzif_parse(const uint8_t *data, size_t len, tz_zone **out)
{
    *out = NULL;
    tzif_header h;
    int rc = read_header(data, len, &h);
    if (rc) return rc;
    const uint8_t *p = data + HEADER_LEN;
    size_t left = len - HEADER_LEN;
    unsigned timesz = 4;
    uint64_t blen = block_len(&h, 4);
    if (h.version != 0) {
        /* Skip the version-1 part; everything comes from the 64-bit one. */
        if (blen > left) return PARLEY_EPROTO;
        p += blen;
        left -= (size_t)blen;
        tzif_header h2;
        rc = read_header(p, left, &h2);
        if (rc) return rc;
        if (h2.version != h.version) return PARLEY_EPROTO;
        h = h2;
        p += HEADER_LEN;
        left -= HEADER_LEN;
        timesz = 8;
        blen = block_len(&h, 8);
    }
    if (blen > left) return PARLEY_EPROTO;

    const uint8_t *times = p;
    const uint8_t *idx = times + (size_t)h.timecnt * timesz;
    const uint8_t *types = idx + h.timecnt;
    const uint8_t *chars = types + (size_t)h.typecnt * 6;
    const uint8_t *leaps = chars + h.charcnt;
    const uint8_t *isstd = leaps + (size_t)h.leapcnt * (timesz + 4);
    const uint8_t *isut = isstd + h.isstdcnt;
    const uint8_t *end = isut + h.isutcnt;

    int32_t utoff[TZIF_MAX_TYPES];
    for (uint32_t i = 0; i < h.typecnt; i++) {
        const uint8_t *ty = types + 6 * i;
        int32_t off = (int32_t)rd32(ty);
        if (off < UTOFF_MIN || off > UTOFF_MAX) return PARLEY_EPROTO;
        if (ty[4] > 1 || ty[5] >= h.charcnt) return PARLEY_EPROTO;
        utoff[i] = off;
    }
    /* The designations must be NUL-terminated inside the char block. */
    if (chars[h.charcnt - 1] != 0) return PARLEY_EPROTO;
    for (uint32_t i = 0; i < h.isstdcnt; i++)
        if (isstd[i] > 1) return PARLEY_EPROTO;
    for (uint32_t i = 0; i < h.isutcnt; i++)
        if (isut[i] > 1 || (isut[i] == 1 && (h.isstdcnt == 0 || isstd[i] != 1)))
            return PARLEY_EPROTO;
    /* Leap-second records: occurrences strictly ascending (RFC 8536 3.2). */
    for (uint32_t i = 1; i < h.leapcnt; i++) {
        const uint8_t *a = leaps + (size_t)(i - 1) * (timesz + 4), *b = a + timesz + 4;
        int64_t ta = timesz == 8 ? rd64(a) : (int32_t)rd32(a);
        int64_t tb = timesz == 8 ? rd64(b) : (int32_t)rd32(b);
        if (tb <= ta) return PARLEY_EPROTO;
    }
    int64_t prev = 0;
    for (uint32_t i = 0; i < h.timecnt; i++) {
        int64_t t = timesz == 8 ? rd64(times + 8 * (size_t)i) : (int32_t)rd32(times + 4 * i);
        if (i > 0 && t <= prev) return PARLEY_EPROTO;
        if (idx[i] >= h.typecnt) return PARLEY_EPROTO;
        prev = t;
    }

    tz_rule rule;
    memset(&rule, 0, sizeof rule);
    left -= (size_t)(end - p);
    if (h.version == 0) {
        if (left != 0) return PARLEY_EPROTO;
    } else {
        /* Footer: '\n' TZ-string '\n', and nothing after it. */
        if (left < 2 || end[0] != '\n') return PARLEY_EPROTO;
        const char *s = (const char *)end + 1;
        size_t avail = left - 1;
        const char *nl = memchr(s, '\n', avail < TZIF_MAX_FOOTER + 1 ? avail : TZIF_MAX_FOOTER + 1);
        if (!nl) return avail > TZIF_MAX_FOOTER ? PARLEY_ELIMIT : PARLEY_EPROTO;
        size_t slen = (size_t)(nl - s);
        if (slen + 1 != avail) return PARLEY_EPROTO;
        rc = parse_tz_string(s, slen, &rule);
        if (rc) return rc;
    }

    /* Everything is checked: only now allocate. */
    tz_zone *z = malloc(sizeof *z + (size_t)h.timecnt * sizeof(tz_trans));
    if (!z) return PARLEY_ENOMEM;
    z->first_off = utoff[0];
    z->rule = rule;
    z->n = h.timecnt;
    for (uint32_t i = 0; i < h.timecnt; i++) {
        z->trans[i].at = timesz == 8 ? rd64(times + 8 * (size_t)i) : (int32_t)rd32(times + 4 * i);
        z->trans[i].off = utoff[idx[i]];
    }
    *out = z;
    return 0;
}

void tz_free(tz_zone *z)
{
    free(z);
}

int32_t tz_offset(const tz_zone *z, int64_t t)
{
    /* RFC 9636 (which clarifies 8536): with no transitions the footer, if
     * any, describes all time. */
    if (z->n == 0) return z->rule.present ? rule_offset(&z->rule, t) : z->first_off;
    if (t < z->trans[0].at) return z->first_off;
    if (t > z->trans[z->n - 1].at && z->rule.present) return rule_offset(&z->rule, t);
    size_t lo = 0, hi = z->n; /* find the last transition at or before t */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (z->trans[mid].at <= t)
            lo = mid;
        else
            hi = mid;
    }
    return z->trans[lo].off;
}

bool tz_valid_name(const char *name, size_t len)
{
    if (!name || len == 0 || len > 64) return false;
    size_t part = 0; /* start of the current part */
    for (size_t i = 0; i <= len; i++) {
        if (i == len || name[i] == '/') {
            size_t n = i - part;
            if (n == 0) return false; /* leading '/', "//" or trailing '/' */
            if (name[part] == '.' && (n == 1 || (n == 2 && name[part + 1] == '.'))) return false;
            part = i + 1;
            continue;
        }
        char ch = name[i];
        if (!(is_alpha(ch) || is_digit(ch) || ch == '_' || ch == '+' || ch == '-')) return false;
    }
    return true;
}

bool tz_in_quiet_hours(const tz_zone *z, int start_min, int end_min, int64_t now_ms)
{
    if (start_min < 0 || start_min > 1439 || end_min < 0 || end_min > 1439) return false;
    if (start_min == end_min) return false;
    int64_t t = floor_div(now_ms, 1000);
    int64_t local = t + tz_offset(z, t); /* |t| < 2^54: no overflow */
    int64_t m = (local - floor_div(local, 86400) * 86400) / 60;
    if (start_min < end_min) return m >= start_min && m < end_min;
    return m >= start_min || m < end_min; /* crosses midnight */
}
