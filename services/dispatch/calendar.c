/* calendar.c — business-time arithmetic (see calendar.h for the contract).
 *
 * Notes:
 * - The zone is a table of UTC-offset changes: at[i] is the instant from which off[i]
 *   applies; before at[0] off0 applies. Consecutive entries never repeat an offset (a change
 *   of abbreviation or of isdst alone is dropped), so "the next change" is a real one.
 * - Local dates are days since 1970-01-01 on the local wall clock; a working interval of
 *   local date d is mapped to UTC endpoint by endpoint (zone_local_to_utc), or by one
 *   subtraction when no offset change is near that day (the usual case).
 * - All walks share one shape: for each local day from the one holding the cursor, take
 *   the day's working spans, clip them to the cursor, cut the pauses out. Before each day
 *   the walk may skip k whole weeks at once: over a span with one UTC offset, no holiday
 *   and no pause, every 7 days hold exactly week_s of business time. */
#include "calendar.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ac_time.h"

#define DAY_S            INT64_C(86400)
#define WEEK_S           (7 * DAY_S)
#define TZIF_MAX_BYTES   (INT64_C(1024) * 1024)
#define ZONE_EXPAND_YEAR 2200 /* the footer rule is expanded into transitions up to here */
#define STACK_PAUSES     16

static const char *const WEEKDAYS[7] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};

typedef struct cal_interval {
    int32_t start_s; /* seconds after local midnight */
    int32_t end_s;   /* exclusive; up to 86400 */
} cal_interval_t;

struct dispatch_calendar {
    bool is_24x7;
    char zone_name[64];
    /* the zone: offsets east of UTC in seconds */
    int64_t *tr_at;  /* owned, ascending */
    int32_t *tr_off; /* owned, parallel to tr_at */
    size_t n_tr;
    size_t cap_tr;
    int32_t off0; /* before tr_at[0] */
    /* the week, Monday first */
    cal_interval_t iv[7][DISPATCH_CAL_MAX_INTERVALS]; /* sorted, disjoint */
    uint8_t n_iv[7];
    int64_t week_s;
    int32_t *holidays; /* owned, sorted, unique local dates */
    size_t n_holidays;
};

/* --- civil dates (H. Hinnant's algorithms) ------------------------------------------- */

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int64_t year_from_days(int64_t days)
{
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    return yoe + era * 400 + (m <= 2);
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int64_t y, int m)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : mdays[m - 1];
}

/* 0 = Monday .. 6 = Sunday; 1970-01-01 was a Thursday. */
static int weekday_mon0(int64_t day)
{
    return (int)(((day + 3) % 7 + 7) % 7);
}

/* --- the zone ---------------------------------------------------------------------- */

static size_t zone_upper_bound(const dispatch_calendar_t *z, int64_t t)
{
    size_t lo = 0, hi = z->n_tr;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (z->tr_at[mid] <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo; /* number of changes at or before t */
}

static int32_t zone_offset(const dispatch_calendar_t *z, int64_t t)
{
    size_t i = zone_upper_bound(z, t);
    return i == 0 ? z->off0 : z->tr_off[i - 1];
}

/* The first offset change strictly after t, INT64_MAX when none. */
static int64_t zone_next_change(const dispatch_calendar_t *z, int64_t t)
{
    size_t i = zone_upper_bound(z, t);
    return i < z->n_tr ? z->tr_at[i] : INT64_MAX;
}

/* Local wall time (seconds since 1970-01-01T00:00 local) -> UTC. A time in a gap maps to
 * the change that skipped it; an ambiguous one to its first occurrence. Offset changes are
 * assumed to be more than a day apart (true of every zone since 1970). */
static int64_t zone_local_to_utc(const dispatch_calendar_t *z, int64_t local)
{
    int32_t oa = zone_offset(z, local - DAY_S); /* the offset before any change near local */
    int32_t ob = zone_offset(z, local + DAY_S); /* ... and after */
    int64_t ta = local - oa, tb = local - ob;
    bool is_a = zone_offset(z, ta) == oa;
    bool is_b = zone_offset(z, tb) == ob;
    int64_t lo = ta < tb ? ta : tb;
    if (is_a && is_b)
        return lo;
    if (is_a)
        return ta;
    if (is_b)
        return tb;
    return zone_next_change(z, lo);
}

static int64_t local_date_of(const dispatch_calendar_t *z, int64_t t)
{
    return floor_div(t + zone_offset(z, t), DAY_S);
}

/* Appends a change; drops one that changes nothing; a change at the instant of the last
 * one replaces it; one before the last is ignored (the explicit table wins). */
static int zone_push(dispatch_calendar_t *z, int64_t at, int32_t off)
{
    if (z->n_tr > 0 && at <= z->tr_at[z->n_tr - 1]) {
        if (at < z->tr_at[z->n_tr - 1])
            return 0;
        z->n_tr--; /* same instant: the later entry wins */
    }
    int32_t prev = z->n_tr > 0 ? z->tr_off[z->n_tr - 1] : z->off0;
    if (prev == off)
        return 0;
    if (z->n_tr == z->cap_tr) {
        size_t cap = z->cap_tr ? z->cap_tr * 2 : 256;
        int64_t *at_new = realloc(z->tr_at, cap * sizeof *at_new);
        if (!at_new)
            return AC_ERR_NOMEM;
        z->tr_at = at_new;
        int32_t *off_new = realloc(z->tr_off, cap * sizeof *off_new);
        if (!off_new)
            return AC_ERR_NOMEM;
        z->tr_off = off_new;
        z->cap_tr = cap;
    }
    z->tr_at[z->n_tr] = at;
    z->tr_off[z->n_tr] = off;
    z->n_tr++;
    return 0;
}

/* POSIX TZ string (the TZif footer), e.g. "CET-1CEST,M3.5.0,M10.5.0/3". */
typedef struct tz_rule_date {
    char kind;      /* 'J' (1..365, no Feb 29), 'N' (0..365), 'M' (month.week.day) */
    int n, m, w, d; /* n for J/N; m, w, d for M */
    int32_t time_s; /* local time of the change, -167h..167h */
} tz_rule_date_t;

typedef struct posix_tz {
    int32_t std_off; /* east of UTC */
    int32_t dst_off;
    bool has_dst;
    tz_rule_date_t start, end;
} posix_tz_t;

static const char *ptz_name(const char *s)
{
    if (*s == '<') {
        const char *e = strchr(s, '>');
        return e && e - s >= 4 ? e + 1 : NULL;
    }
    const char *p = s;
    while ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z'))
        p++;
    return p - s >= 3 ? p : NULL;
}

static const char *ptz_num(const char *s, int max, int *out)
{
    if (*s < '0' || *s > '9')
        return NULL;
    int v = 0;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (*s++ - '0');
        if (v > max)
            return NULL;
    }
    *out = v;
    return s;
}

/* [+-]hh[:mm[:ss]] -> seconds (sign as written). */
static const char *ptz_hms(const char *s, int max_h, int32_t *out)
{
    int sign = 1, h = 0, m = 0, sec = 0;
    if (*s == '+' || *s == '-')
        sign = *s++ == '-' ? -1 : 1;
    if (!(s = ptz_num(s, max_h, &h)))
        return NULL;
    if (*s == ':' && !(s = ptz_num(s + 1, 59, &m)))
        return NULL;
    if (s && *s == ':' && !(s = ptz_num(s + 1, 59, &sec)))
        return NULL;
    *out = sign * (h * 3600 + m * 60 + sec);
    return s;
}

static const char *ptz_date(const char *s, tz_rule_date_t *r)
{
    r->time_s = 2 * 3600;
    if (*s == 'J') {
        r->kind = 'J';
        if (!(s = ptz_num(s + 1, 365, &r->n)) || r->n < 1)
            return NULL;
    } else if (*s == 'M') {
        r->kind = 'M';
        if (!(s = ptz_num(s + 1, 12, &r->m)) || r->m < 1 || *s != '.')
            return NULL;
        if (!(s = ptz_num(s + 1, 5, &r->w)) || r->w < 1 || *s != '.')
            return NULL;
        if (!(s = ptz_num(s + 1, 6, &r->d)))
            return NULL;
    } else {
        r->kind = 'N';
        if (!(s = ptz_num(s, 365, &r->n)))
            return NULL;
    }
    if (*s == '/')
        s = ptz_hms(s + 1, 167, &r->time_s);
    return s;
}

static int ptz_parse(const char *s, posix_tz_t *tz)
{
    int32_t v;
    memset(tz, 0, sizeof *tz);
    if (!(s = ptz_name(s)) || !(s = ptz_hms(s, 24, &v)))
        return AC_ERR_INVALID;
    tz->std_off = -v;
    if (*s == '\0')
        return 0;
    if (!(s = ptz_name(s)))
        return AC_ERR_INVALID;
    tz->has_dst = true;
    tz->dst_off = tz->std_off + 3600;
    if (*s != ',' && *s != '\0') {
        if (!(s = ptz_hms(s, 24, &v)))
            return AC_ERR_INVALID;
        tz->dst_off = -v;
    }
    if (*s != ',') /* no rule: TZif footers always carry one; refuse to guess */
        return AC_ERR_INVALID;
    if (!(s = ptz_date(s + 1, &tz->start)) || *s != ',')
        return AC_ERR_INVALID;
    if (!(s = ptz_date(s + 1, &tz->end)) || *s != '\0')
        return AC_ERR_INVALID;
    return 0;
}

/* The day (since epoch) a rule date names in year y. */
static int64_t ptz_day(const tz_rule_date_t *r, int64_t y)
{
    int64_t jan1 = days_from_civil(y, 1, 1);
    if (r->kind == 'J')
        return jan1 + r->n - 1 + (is_leap(y) && r->n >= 60 ? 1 : 0);
    if (r->kind == 'N')
        return jan1 + r->n;
    int64_t first = days_from_civil(y, r->m, 1);
    int wd_sun0 = (weekday_mon0(first) + 1) % 7;
    int64_t day = first + (r->d - wd_sun0 + 7) % 7 + (int64_t)(r->w - 1) * 7;
    if (day >= first + days_in_month(y, r->m))
        day -= 7;
    return day;
}

static int zone_expand_rule(dispatch_calendar_t *z, const posix_tz_t *tz)
{
    if (!tz->has_dst) { /* the last explicit offset already is the standard one */
        if (z->n_tr == 0)
            z->off0 = tz->std_off;
        return 0;
    }
    int64_t y0 = z->n_tr ? year_from_days(floor_div(z->tr_at[z->n_tr - 1], DAY_S)) : 1969;
    for (int64_t y = y0; y < ZONE_EXPAND_YEAR; y++) {
        int64_t on = ptz_day(&tz->start, y) * DAY_S + tz->start.time_s - tz->std_off;
        int64_t off = ptz_day(&tz->end, y) * DAY_S + tz->end.time_s - tz->dst_off;
        int rc = on < off ? zone_push(z, on, tz->dst_off) : zone_push(z, off, tz->std_off);
        if (rc == 0)
            rc = on < off ? zone_push(z, off, tz->std_off) : zone_push(z, on, tz->dst_off);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be_time(const unsigned char *p, size_t size)
{
    if (size == 4)
        return (int32_t)be32(p);
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

/* Parses TZif (RFC 8536) data into the calendar's zone table. AC_ERR_INVALID when it is
 * not TZif (or uses leap seconds), AC_ERR_NOMEM. */
static int zone_parse_tzif(dispatch_calendar_t *z, const unsigned char *buf, size_t len)
{
    const unsigned char *p = buf, *end = buf + len;
    size_t tsize = 4;
    for (int pass = 0;; pass++) {
        if ((size_t)(end - p) < 44 || memcmp(p, "TZif", 4) != 0)
            return AC_ERR_INVALID;
        char version = (char)p[4];
        size_t isutcnt = be32(p + 20), isstdcnt = be32(p + 24), leapcnt = be32(p + 28);
        size_t timecnt = be32(p + 32), typecnt = be32(p + 36), charcnt = be32(p + 40);
        if (timecnt > 100000 || typecnt == 0 || typecnt > 256 || charcnt > 100000 ||
            leapcnt > 100000 || isutcnt > 256 || isstdcnt > 256)
            return AC_ERR_INVALID;
        p += 44;
        size_t block = timecnt * tsize + timecnt + typecnt * 6 + charcnt + leapcnt * (tsize + 4) +
                       isstdcnt + isutcnt;
        if ((size_t)(end - p) < block)
            return AC_ERR_INVALID;
        if (pass == 0 && version >= '2') { /* skip the 32-bit block, read the 64-bit one */
            p += block;
            tsize = 8;
            continue;
        }
        if (leapcnt > 0)
            return AC_ERR_INVALID; /* "right/" zones count leap seconds: not supported */
        const unsigned char *times = p, *idx = p + timecnt * tsize;
        const unsigned char *types = idx + timecnt;
        z->off0 = (int32_t)be32(types);
        for (size_t i = 0; i < timecnt; i++) {
            if (idx[i] >= typecnt)
                return AC_ERR_INVALID;
            int rc = zone_push(z, be_time(times + i * tsize, tsize),
                               (int32_t)be32(types + (size_t)idx[i] * 6));
            if (rc != 0)
                return rc;
        }
        p += block;
        if (tsize == 4 || p >= end || *p != '\n')
            return 0; /* v1: no footer; the last offset holds for ever */
        const unsigned char *nl = memchr(p + 1, '\n', (size_t)(end - p - 1));
        if (!nl)
            return AC_ERR_INVALID;
        char footer[128];
        size_t flen = (size_t)(nl - p - 1);
        if (flen == 0)
            return 0;
        if (flen >= sizeof footer)
            return AC_ERR_INVALID;
        memcpy(footer, p + 1, flen);
        footer[flen] = '\0';
        posix_tz_t tz;
        if (ptz_parse(footer, &tz) != 0)
            return AC_ERR_INVALID;
        return zone_expand_rule(z, &tz);
    }
}

/* AC_ERR_NOTFOUND (no such zone file), AC_ERR_INVALID (not TZif), AC_ERR_IO, AC_ERR_NOMEM. */
static int zone_load(dispatch_calendar_t *z, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ENOTDIR ? AC_ERR_NOTFOUND : AC_ERR_IO;
    int rc = AC_ERR_IO;
    unsigned char *buf = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0)
        goto out;
    if (!S_ISREG(st.st_mode)) {
        rc = AC_ERR_NOTFOUND; /* a directory such as "Europe" */
        goto out;
    }
    if (st.st_size > TZIF_MAX_BYTES) {
        rc = AC_ERR_INVALID;
        goto out;
    }
    size_t len = (size_t)st.st_size, got = 0;
    if (!(buf = malloc(len + 1))) {
        rc = AC_ERR_NOMEM;
        goto out;
    }
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        got += (size_t)n;
    }
    rc = zone_parse_tzif(z, buf, len);
out:
    free(buf);
    close(fd);
    return rc;
}

/* --- construction and parsing ------------------------------------------------------ */

static dispatch_calendar_t *calendar_alloc(void)
{
    return calloc(1, sizeof(dispatch_calendar_t));
}

static void set_24x7(dispatch_calendar_t *cal)
{
    cal->is_24x7 = true;
    snprintf(cal->zone_name, sizeof cal->zone_name, "UTC");
    for (int wd = 0; wd < 7; wd++) {
        cal->iv[wd][0] = (cal_interval_t){0, (int32_t)DAY_S};
        cal->n_iv[wd] = 1;
    }
    cal->week_s = WEEK_S;
}

dispatch_calendar_t *dispatch_calendar_new_24x7(void)
{
    dispatch_calendar_t *cal = calendar_alloc();
    if (cal)
        set_24x7(cal);
    return cal;
}

void dispatch_calendar_destroy(dispatch_calendar_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    dispatch_calendar_t *self = *self_p;
    free(self->tr_at);
    free(self->tr_off);
    free(self->holidays);
    free(self);
    *self_p = NULL;
}

AC_PRINTF(3, 4)
static int cal_fail(dispatch_cal_err_t *err, const char *field, const char *fmt, ...)
{
    va_list ap;
    snprintf(err->field, sizeof err->field, "%s", field);
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return AC_ERR_INVALID;
}

static bool is_zone_name(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len >= 64 || s[0] == '/' || s[0] == '.' || strstr(s, "..") || strstr(s, "//"))
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '/' || c == '_' || c == '-' || c == '+' || c == '.'))
            return false;
    }
    return true;
}

static int parse_zone(dispatch_calendar_t *cal, const json_t *jz, const char *tzdir,
                      dispatch_cal_err_t *err)
{
    if (!jz)
        return cal_fail(err, "time_zone",
                        "time_zone is required (an IANA name such as "
                        "\"Europe/Berlin\")");
    if (!json_is_string(jz))
        return cal_fail(err, "time_zone", "time_zone must be a string such as \"Europe/Berlin\"");
    const char *name = json_string_value(jz);
    if (!is_zone_name(name))
        return cal_fail(err, "time_zone", "\"%.64s\" is not a time zone name", name);
    char path[512];
    int n = snprintf(path, sizeof path, "%s/%s", tzdir ? tzdir : "/usr/share/zoneinfo", name);
    if (n < 0 || (size_t)n >= sizeof path)
        return cal_fail(err, "time_zone", "\"%s\": zone path too long", name);
    int rc = zone_load(cal, path);
    if (rc == AC_ERR_NOTFOUND || rc == AC_ERR_INVALID)
        return cal_fail(err, "time_zone", "unknown time zone \"%s\"", name);
    if (rc != 0) {
        cal_fail(err, "time_zone", "cannot read the zone file %s: %s", path, ac_strerror(rc));
        return rc;
    }
    snprintf(cal->zone_name, sizeof cal->zone_name, "%s", name);
    return 0;
}

/* "HH:MM" (00:00..24:00) -> seconds after midnight, -1 if it is not a time of day. */
static int32_t parse_hhmm(const char *s)
{
    for (int i = 0; i < 5; i++)
        if (i == 2 ? s[i] != ':' : (s[i] < '0' || s[i] > '9'))
            return -1;
    int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
    if (m > 59 || h > 24 || (h == 24 && m != 0))
        return -1;
    return h * 3600 + m * 60;
}

static int parse_day(dispatch_calendar_t *cal, int wd, const json_t *jday, dispatch_cal_err_t *err)
{
    char field[64];
    snprintf(field, sizeof field, "working_hours.%s", WEEKDAYS[wd]);
    if (!json_is_array(jday))
        return cal_fail(err, field, "%s must be a list of \"HH:MM-HH:MM\" intervals", field);
    if (json_array_size(jday) > DISPATCH_CAL_MAX_INTERVALS)
        return cal_fail(err, field, "%s has %zu intervals, at most %d are allowed", field,
                        json_array_size(jday), DISPATCH_CAL_MAX_INTERVALS);
    size_t i;
    const json_t *jiv;
    json_array_foreach(jday, i, jiv)
    {
        snprintf(field, sizeof field, "working_hours.%s[%zu]", WEEKDAYS[wd], i);
        if (!json_is_string(jiv))
            return cal_fail(err, field, "%s must be a string \"HH:MM-HH:MM\"", field);
        const char *s = json_string_value(jiv);
        if (strlen(s) != 11 || s[5] != '-')
            return cal_fail(err, field, "\"%.40s\" is not an interval \"HH:MM-HH:MM\"", s);
        int32_t from = parse_hhmm(s), to = parse_hhmm(s + 6);
        if (from < 0)
            return cal_fail(err, field, "\"%.5s\" in \"%s\" is not a time of day (00:00..24:00)", s,
                            s);
        if (to < 0)
            return cal_fail(err, field, "\"%.5s\" in \"%s\" is not a time of day (00:00..24:00)",
                            s + 6, s);
        if (from >= to)
            return cal_fail(err, field, "interval \"%s\" does not start before it ends", s);
        /* insert sorted by start; touching is fine, overlapping is not */
        size_t n = cal->n_iv[wd], at = n;
        while (at > 0 && cal->iv[wd][at - 1].start_s > from)
            at--;
        const cal_interval_t *prev = at > 0 ? &cal->iv[wd][at - 1] : NULL;
        const cal_interval_t *next = at < n ? &cal->iv[wd][at] : NULL;
        const cal_interval_t *clash = prev && prev->end_s > from   ? prev
                                      : next && next->start_s < to ? next
                                                                   : NULL;
        if (clash)
            return cal_fail(err, field, "interval \"%s\" overlaps %02d:%02d-%02d:%02d", s,
                            clash->start_s / 3600, clash->start_s % 3600 / 60, clash->end_s / 3600,
                            clash->end_s % 3600 / 60);
        memmove(&cal->iv[wd][at + 1], &cal->iv[wd][at], (n - at) * sizeof cal->iv[wd][0]);
        cal->iv[wd][at] = (cal_interval_t){from, to};
        cal->n_iv[wd]++;
        cal->week_s += to - from;
    }
    return 0;
}

static int parse_week(dispatch_calendar_t *cal, const json_t *jwh, dispatch_cal_err_t *err)
{
    if (!jwh)
        return cal_fail(err, "working_hours", "working_hours is required (or around_the_clock)");
    if (!json_is_object(jwh))
        return cal_fail(err, "working_hours",
                        "working_hours must be an object such as {\"mon\": [\"08:00-17:00\"]}");
    const char *key;
    const json_t *jday;
    json_object_foreach((json_t *)(uintptr_t)jwh, key, jday)
    {
        int wd = 0;
        while (wd < 7 && strcmp(key, WEEKDAYS[wd]) != 0)
            wd++;
        if (wd == 7) {
            char field[64];
            snprintf(field, sizeof field, "working_hours.%.40s", key);
            return cal_fail(err, field, "\"%.40s\" is not a weekday (mon, tue, ... sun)", key);
        }
        int rc = parse_day(cal, wd, jday, err);
        if (rc != 0)
            return rc;
    }
    if (cal->week_s == 0)
        return cal_fail(err, "working_hours", "working_hours has no working time in the week");
    return 0;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static int parse_holidays(dispatch_calendar_t *cal, const json_t *jh, dispatch_cal_err_t *err)
{
    if (!jh)
        return 0;
    if (!json_is_array(jh))
        return cal_fail(err, "holidays", "holidays must be a list of dates \"YYYY-MM-DD\"");
    size_t n = json_array_size(jh);
    if (n > DISPATCH_CAL_MAX_HOLIDAYS)
        return cal_fail(err, "holidays", "%zu holidays, at most %d are allowed", n,
                        DISPATCH_CAL_MAX_HOLIDAYS);
    if (n == 0)
        return 0;
    if (!(cal->holidays = malloc(n * sizeof *cal->holidays)))
        return AC_ERR_NOMEM;
    size_t i;
    const json_t *jd;
    json_array_foreach(jh, i, jd)
    {
        char field[64];
        snprintf(field, sizeof field, "holidays[%zu]", i);
        int32_t day;
        if (!json_is_string(jd))
            return cal_fail(err, field, "%s must be a date \"YYYY-MM-DD\"", field);
        if (ac_date_parse(json_string_value(jd), &day) != 0)
            return cal_fail(err, field, "\"%.40s\" is not a date \"YYYY-MM-DD\"",
                            json_string_value(jd));
        if ((int64_t)day * DAY_S < DISPATCH_CAL_MIN_S - DAY_S ||
            (int64_t)day * DAY_S >= DISPATCH_CAL_MAX_S)
            return cal_fail(err, field, "\"%s\" is outside 1970..2199", json_string_value(jd));
        cal->holidays[i] = day;
    }
    qsort(cal->holidays, n, sizeof *cal->holidays, cmp_i32);
    size_t u = 0;
    for (i = 0; i < n; i++) /* a date listed twice is one holiday */
        if (u == 0 || cal->holidays[u - 1] != cal->holidays[i])
            cal->holidays[u++] = cal->holidays[i];
    cal->n_holidays = u;
    return 0;
}

int dispatch_calendar_parse(const json_t *json, const char *tzdir, dispatch_calendar_t **cal_out,
                            dispatch_cal_err_t *err)
{
    static const char *const KEYS[] = {"time_zone", "working_hours", "holidays",
                                       "around_the_clock"};
    *cal_out = NULL;
    memset(err, 0, sizeof *err);
    if (!json_is_object(json))
        return cal_fail(err, "", "a calendar must be a JSON object");
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)(uintptr_t)json, key, v)
    {
        size_t k = 0;
        while (k < AC_ARRAY_LEN(KEYS) && strcmp(key, KEYS[k]) != 0)
            k++;
        if (k == AC_ARRAY_LEN(KEYS)) {
            char field[64];
            snprintf(field, sizeof field, "%.60s", key);
            return cal_fail(err, field, "unknown calendar field \"%.60s\"", key);
        }
    }
    const json_t *j247 = json_object_get(json, "around_the_clock");
    if (j247 && !json_is_boolean(j247))
        return cal_fail(err, "around_the_clock", "around_the_clock must be true or false");

    dispatch_calendar_t *cal = calendar_alloc();
    if (!cal)
        return AC_ERR_NOMEM;
    int rc = 0;
    if (json_is_true(j247)) {
        set_24x7(cal);
    } else if ((rc = parse_zone(cal, json_object_get(json, "time_zone"), tzdir, err)) != 0 ||
               (rc = parse_week(cal, json_object_get(json, "working_hours"), err)) != 0 ||
               (rc = parse_holidays(cal, json_object_get(json, "holidays"), err)) != 0) {
        dispatch_calendar_destroy(&cal);
        return rc;
    }
    *cal_out = cal;
    return 0;
}

bool dispatch_calendar_is_24x7(const dispatch_calendar_t *self)
{
    return self->is_24x7;
}

const char *dispatch_calendar_zone(const dispatch_calendar_t *self)
{
    return self->zone_name;
}

int64_t dispatch_calendar_week_s(const dispatch_calendar_t *self)
{
    return self->week_s;
}

int32_t dispatch_calendar_utc_offset(const dispatch_calendar_t *self, int64_t t_s)
{
    return zone_offset(self, t_s);
}

/* --- the walk ---------------------------------------------------------------------- */

/* Index of the first holiday on or after local date `day`. */
static size_t holiday_lower_bound(const dispatch_calendar_t *cal, int64_t day)
{
    size_t lo = 0, hi = cal->n_holidays;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cal->holidays[mid] < day)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool is_holiday(const dispatch_calendar_t *cal, int64_t day)
{
    size_t i = holiday_lower_bound(cal, day);
    return i < cal->n_holidays && cal->holidays[i] == day;
}

/* UTC start of the first holiday on or after local date `day`, INT64_MAX if none. */
static int64_t next_holiday_utc(const dispatch_calendar_t *cal, int64_t day)
{
    size_t i = holiday_lower_bound(cal, day);
    return i < cal->n_holidays ? zone_local_to_utc(cal, cal->holidays[i] * DAY_S) : INT64_MAX;
}

/* The working spans of local date `day` in UTC, ascending; returns how many (0 on a day
 * off or a holiday). midnight_s is the UTC start of the day. */
static size_t day_spans(const dispatch_calendar_t *cal, int64_t day, int64_t midnight_s,
                        dispatch_span_t out[DISPATCH_CAL_MAX_INTERVALS])
{
    int wd = weekday_mon0(day);
    if (cal->n_iv[wd] == 0 || is_holiday(cal, day))
        return 0;
    int64_t local0 = day * DAY_S;
    int32_t off = zone_offset(cal, midnight_s);
    /* one offset all day (and midnight exists): plain subtraction */
    bool is_plain = midnight_s + off == local0 &&
                    zone_next_change(cal, midnight_s) > midnight_s + DAY_S + INT64_C(3) * 3600;
    size_t n = 0;
    for (size_t i = 0; i < cal->n_iv[wd]; i++) {
        int64_t a = local0 + cal->iv[wd][i].start_s, b = local0 + cal->iv[wd][i].end_s;
        dispatch_span_t s =
            is_plain ? (dispatch_span_t){a - off, b - off}
                     : (dispatch_span_t){zone_local_to_utc(cal, a), zone_local_to_utc(cal, b)};
        if (s.to_s > s.from_s) /* empty when it fell into a spring-forward gap */
            out[n++] = s;
    }
    return n;
}

static int cmp_span(const void *a, const void *b)
{
    const dispatch_span_t *x = a, *y = b;
    return (x->from_s > y->from_s) - (x->from_s < y->from_s);
}

/* The pauses, non-empty ones only, sorted by start, in buf when they fit (else malloc'ed;
 * pauses_fini frees). Overlapping pauses need no merging: the walk jumps to the end of the
 * pause holding its cursor and the cursor only passes pauses that have ended. */
typedef struct pauses {
    dispatch_span_t *v;
    size_t n;
    size_t i; /* the walk's cursor: first pause that may still matter */
    dispatch_span_t buf[STACK_PAUSES];
} pauses_t;

static int pauses_init(pauses_t *p, const dispatch_span_t *in, size_t n)
{
    p->v = p->buf;
    p->n = 0;
    p->i = 0;
    if (n > STACK_PAUSES && !(p->v = malloc(n * sizeof *p->v)))
        return AC_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) {
        if (in[i].from_s > in[i].to_s)
            return AC_ERR_INVALID;
        if (in[i].from_s < in[i].to_s)
            p->v[p->n++] = in[i];
    }
    if (p->n > 1)
        qsort(p->v, p->n, sizeof *p->v, cmp_span);
    return 0;
}

static void pauses_fini(pauses_t *p)
{
    if (p->v != p->buf)
        free(p->v);
}

/* The pause holding t or the next one after it (NULL when none), moving the cursor. */
static const dispatch_span_t *pauses_at(pauses_t *p, int64_t t)
{
    while (p->i < p->n && p->v[p->i].to_s <= t)
        p->i++;
    return p->i < p->n ? &p->v[p->i] : NULL;
}

typedef enum walk_op { WALK_ADD, WALK_ELAPSED, WALK_NEXT } walk_op_t;

typedef struct walk {
    walk_op_t op;
    int64_t cur_s;   /* cursor: everything before it has been accounted for */
    int64_t limit_s; /* WALK_ELAPSED: end of the range */
    int64_t rem_s;   /* WALK_ADD: business time still to go */
    int64_t sum_s;   /* WALK_ELAPSED: business time so far */
    int64_t at_s;    /* WALK_ADD, WALK_NEXT: the answer */
} walk_t;

/* Feeds one business span [from, to) (already clipped to the cursor and limit) minus the
 * pauses into the walk; true when the walk has its answer. */
static bool walk_span(walk_t *w, pauses_t *p, int64_t from, int64_t to)
{
    while (from < to) {
        const dispatch_span_t *ps = pauses_at(p, from);
        if (ps && ps->from_s <= from) {
            from = ps->to_s;
            continue;
        }
        int64_t piece_end = ps && ps->from_s < to ? ps->from_s : to;
        int64_t len = piece_end - from;
        if (w->op == WALK_NEXT) {
            w->at_s = from;
            return true;
        }
        if (w->op == WALK_ADD && w->rem_s <= len) {
            w->at_s = from + w->rem_s;
            return true;
        }
        if (w->op == WALK_ADD)
            w->rem_s -= len;
        else
            w->sum_s += len;
        from = piece_end;
    }
    return false;
}

/* How many whole weeks from cur_s (in local date `day`) can be skipped at once. */
static int64_t weeks_to_skip(const dispatch_calendar_t *cal, const walk_t *w, pauses_t *p,
                             int64_t day)
{
    int64_t horizon = w->op == WALK_ELAPSED ? w->limit_s : DISPATCH_CAL_MAX_S;
    if (w->op == WALK_NEXT || horizon - w->cur_s < 2 * WEEK_S)
        return 0;
    int64_t k = (horizon - w->cur_s) / WEEK_S;
    if (w->op == WALK_ADD) {
        int64_t kr = (w->rem_s - 1) / cal->week_s; /* leave the last bit to the day walk */
        k = kr < k ? kr : k;
    }
    if (k < 2) /* one week is as cheap to walk day by day */
        return 0;
    int64_t until = zone_next_change(cal, w->cur_s);
    int64_t h = next_holiday_utc(cal, day);
    until = h < until ? h : until;
    const dispatch_span_t *ps = pauses_at(p, w->cur_s); /* starts after cur_s: see walk() */
    if (ps && ps->from_s < until)
        until = ps->from_s;
    if (until != INT64_MAX) {
        int64_t ku = (until - w->cur_s) / WEEK_S;
        k = ku < k ? ku : k;
    }
    return k;
}

/* Walks days from w->cur_s on; 0 when the walk has its answer (WALK_ELAPSED: reached
 * limit_s), AC_ERR_TOOBIG when it runs past DISPATCH_CAL_MAX_S. */
static int walk(const dispatch_calendar_t *cal, walk_t *w, pauses_t *p)
{
    int64_t day = local_date_of(cal, w->cur_s);
    for (;;) {
        int64_t midnight = zone_local_to_utc(cal, day * DAY_S);
        if (w->cur_s < midnight)
            w->cur_s = midnight;
        if (w->op == WALK_ELAPSED && w->cur_s >= w->limit_s)
            return 0;
        if (w->cur_s >= DISPATCH_CAL_MAX_S)
            return AC_ERR_TOOBIG;
        /* inside a pause: jump to its end (a long pause costs no day walk) */
        const dispatch_span_t *ps = pauses_at(p, w->cur_s);
        if (ps && ps->from_s <= w->cur_s) {
            w->cur_s = ps->to_s;
            day = local_date_of(cal, w->cur_s);
            continue;
        }
        int64_t k = weeks_to_skip(cal, w, p, day);
        if (k > 0) {
            if (w->op == WALK_ADD)
                w->rem_s -= k * cal->week_s;
            else
                w->sum_s += k * cal->week_s;
            w->cur_s += k * WEEK_S;
            day += 7 * k;
            continue;
        }
        dispatch_span_t spans[DISPATCH_CAL_MAX_INTERVALS];
        size_t n = day_spans(cal, day, midnight, spans);
        for (size_t i = 0; i < n; i++) {
            int64_t from = spans[i].from_s > w->cur_s ? spans[i].from_s : w->cur_s;
            int64_t to = spans[i].to_s;
            if (w->op == WALK_ELAPSED && to > w->limit_s)
                to = w->limit_s;
            if (from < to && walk_span(w, p, from, to))
                return 0;
        }
        day++;
    }
}

static bool in_range(int64_t t)
{
    return t >= DISPATCH_CAL_MIN_S && t < DISPATCH_CAL_MAX_S;
}

int dispatch_calendar_add(const dispatch_calendar_t *self, int64_t start_s, int64_t business_s,
                          const dispatch_span_t *pauses, size_t n_pauses, int64_t *deadline_s)
{
    if (!in_range(start_s) || business_s < 0)
        return AC_ERR_INVALID;
    if (business_s == 0) {
        *deadline_s = start_s;
        return 0;
    }
    pauses_t p;
    int rc = pauses_init(&p, pauses, n_pauses);
    walk_t w = {.op = WALK_ADD, .cur_s = start_s, .rem_s = business_s};
    if (rc == 0 && (rc = walk(self, &w, &p)) == 0) {
        if (w.at_s >= DISPATCH_CAL_MAX_S)
            rc = AC_ERR_TOOBIG;
        else
            *deadline_s = w.at_s;
    }
    pauses_fini(&p);
    return rc;
}

int dispatch_calendar_elapsed(const dispatch_calendar_t *self, int64_t from_s, int64_t to_s,
                              const dispatch_span_t *pauses, size_t n_pauses, int64_t *elapsed_s)
{
    if (!in_range(from_s) || !in_range(to_s) || from_s > to_s)
        return AC_ERR_INVALID;
    pauses_t p;
    int rc = pauses_init(&p, pauses, n_pauses);
    walk_t w = {.op = WALK_ELAPSED, .cur_s = from_s, .limit_s = to_s};
    if (rc == 0 && (rc = walk(self, &w, &p)) == 0)
        *elapsed_s = w.sum_s;
    pauses_fini(&p);
    return rc;
}

int dispatch_calendar_next_working(const dispatch_calendar_t *self, int64_t t_s,
                                   const dispatch_span_t *pauses, size_t n_pauses, int64_t *at_s)
{
    if (!in_range(t_s))
        return AC_ERR_INVALID;
    pauses_t p;
    int rc = pauses_init(&p, pauses, n_pauses);
    walk_t w = {.op = WALK_NEXT, .cur_s = t_s};
    if (rc == 0 && (rc = walk(self, &w, &p)) == 0)
        *at_s = w.at_s;
    pauses_fini(&p);
    return rc;
}
