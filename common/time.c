/* time.c — clocks, RFC 3339 and calendar dates (proleptic Gregorian, UTC), backoff. */
#include "ac_time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t ac_time_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t ac_time_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

static int days_in_month(int y, int m)
{
    static const int dim[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 ? 28 + leap : dim[m - 1];
}

char *ac_time_format_us(int64_t us, char *buf)
{
    int64_t secs = us >= 0 ? us / 1000000 : (us - 999999) / 1000000;
    int64_t frac = us - secs * 1000000;
    int64_t days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
    int64_t rem = secs - days * 86400;
    int y, m, d;
    civil_from_days(days, &y, &m, &d);
    snprintf(buf, AC_TIME_STRLEN, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", y, m, d, (int)(rem / 3600),
             (int)(rem / 60 % 60), (int)(rem % 60), (int)frac);
    return buf;
}

/* Reads exactly n decimal digits. */
static int digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

static int parse_date_part(const char **p, int *y, int *m, int *d)
{
    if (digits(p, 4, y) || *(*p)++ != '-' || digits(p, 2, m) || *(*p)++ != '-' || digits(p, 2, d))
        return AC_ERR_INVALID;
    if (*y < 1 || *m < 1 || *m > 12 || *d < 1 || *d > days_in_month(*y, *m))
        return AC_ERR_INVALID;
    return 0;
}

int ac_date_parse(const char *s, int32_t *days_out)
{
    int y, m, d;
    const char *p = s;
    if (!s || strlen(s) != 10 || parse_date_part(&p, &y, &m, &d))
        return AC_ERR_INVALID;
    *days_out = (int32_t)days_from_civil(y, m, d);
    return 0;
}

char *ac_date_format(int32_t days, char *buf)
{
    int y, m, d;
    civil_from_days(days, &y, &m, &d);
    snprintf(buf, 11, "%04d-%02d-%02d", y, m, d);
    return buf;
}

int ac_time_parse_rfc3339(const char *s, int64_t *us_out)
{
    int y, mo, d, h, mi, sec, oh = 0, om = 0;
    int64_t frac_us = 0;
    const char *p = s;

    if (!s || parse_date_part(&p, &y, &mo, &d))
        return AC_ERR_INVALID;
    if (*p != 'T' && *p != 't')
        return AC_ERR_INVALID;
    p++;
    if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi) || *p++ != ':' ||
        digits(&p, 2, &sec))
        return AC_ERR_INVALID;
    if (h > 23 || mi > 59 || sec > 59) /* leap seconds are not accepted */
        return AC_ERR_INVALID;
    if (*p == '.') {
        int n = 0;
        p++;
        while (*p >= '0' && *p <= '9') {
            if (n < 6)
                frac_us = frac_us * 10 + (*p - '0');
            n++;
            p++;
        }
        if (n == 0 || n > 9)
            return AC_ERR_INVALID;
        for (; n < 6; n++)
            frac_us *= 10;
    }
    int sign = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p == '+' ? 1 : -1;
        p++;
        if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59)
            return AC_ERR_INVALID;
    } else {
        return AC_ERR_INVALID;
    }
    if (*p != '\0')
        return AC_ERR_INVALID;
    int64_t secs = days_from_civil(y, mo, d) * 86400 + (int64_t)h * 3600 + (int64_t)mi * 60 + sec;
    secs -= (int64_t)sign * (oh * 3600 + om * 60);
    /* an offset may carry 0001-01-01 into year 0, which PostgreSQL and the format lack */
    if (secs < days_from_civil(1, 1, 1) * 86400)
        return AC_ERR_INVALID;
    *us_out = secs * 1000000 + frac_us;
    return 0;
}

void ac_backoff_init(ac_backoff_t *b, double min_s, double max_s)
{
    b->min_s = min_s > 0 ? min_s : 0.1;
    b->max_s = max_s >= b->min_s ? max_s : b->min_s;
    b->cur_s = b->min_s;
}

double ac_backoff_next(ac_backoff_t *b)
{
    double base = b->cur_s;
    /* +-20 % jitter so that many clients do not retry in lock step; rand() is fine here */
    double jitter = 0.8 + 0.4 * ((double)rand() / (double)RAND_MAX);
    b->cur_s = base * 2 > b->max_s ? b->max_s : base * 2;
    return base * jitter;
}

void ac_backoff_reset(ac_backoff_t *b)
{
    b->cur_s = b->min_s;
}
