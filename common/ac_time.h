/* ac_time.h — wall-clock time in microseconds, RFC 3339 / date formatting and strict
 * parsing, and an embedded exponential backoff. */
#ifndef AC_TIME_H
#define AC_TIME_H

#include <stddef.h>
#include <stdint.h>

#include "ac_err.h"

#define AC_TIME_STRLEN 32 /* enough for "2026-11-22T10:00:00.123456Z" */

int64_t ac_time_now_us(void);  /* CLOCK_REALTIME */
int64_t ac_time_mono_us(void); /* CLOCK_MONOTONIC */
/* "2026-11-22T10:00:00.123456Z" (UTC, microseconds) into buf[AC_TIME_STRLEN]. */
char *ac_time_format_us(int64_t us, char *buf);
/* Strict RFC 3339: "YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)". AC_ERR_INVALID if not. */
int ac_time_parse_rfc3339(const char *s, int64_t *us_out) AC_WUR;
/* Strict "YYYY-MM-DD" (a real calendar date) -> days since 1970-01-01. */
int ac_date_parse(const char *s, int32_t *days_out) AC_WUR;
/* days since epoch -> "YYYY-MM-DD" into buf[11]. */
char *ac_date_format(int32_t days, char *buf);

typedef struct ac_backoff {
    double min_s, max_s, cur_s;
} ac_backoff_t;
void ac_backoff_init(ac_backoff_t *b, double min_s, double max_s);
double ac_backoff_next(ac_backoff_t *b); /* current delay (with +-20% jitter), then doubles */
void ac_backoff_reset(ac_backoff_t *b);

#endif
