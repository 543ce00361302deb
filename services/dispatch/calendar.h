/* calendar.h — business-time arithmetic for the SLA engine: a calendar (an IANA time zone,
 * weekly working hours, holidays — or "around the clock"), and the three questions the
 * engine asks of it: when is a deadline (start + business duration, pushed across
 * pauses), how much business time has elapsed between two instants (pauses excluded),
 * and when is the next working instant (a warning outside working hours waits for it).
 * Pure: no sockets, no database, no libev; a calendar is immutable after parsing, so any
 * number of threads may share it.
 *
 * Instants are UTC epoch seconds; durations are seconds. Business time is real elapsed
 * time inside working intervals: a working interval is a local wall-clock range on a
 * local date, mapped to UTC with the zone's rules, so 08:00-17:00 is 9 h on both DST-change
 * days, and 00:00-24:00 is 23 h on the spring-forward day and 25 h on the fall-back day.
 * A local time that does not exist (inside a spring-forward gap) maps to the instant of
 * the transition; an ambiguous one (inside a fall-back overlap) maps to its first
 * occurrence.
 *
 * Time zones: each calendar parses its zone's TZif file (/usr/share/zoneinfo/<name>, the
 * 64-bit v2+ data and the POSIX-TZ footer rule) once, when the calendar is parsed, into
 * a sorted table of UTC-offset changes, with the footer rule expanded up to 2200. An offset
 * lookup is then a binary search over that table (a few hundred entries, ~9 compares) with
 * no global state: no setenv("TZ")/tzset() (process-global, not thread-safe, and a file
 * stat per switch), no localtime_r. Calendars are few (one per SLA policy) and the table
 * is a few kB, so the cache is simply "the calendar owns its zone"; a shared per-name
 * cache can be added when calendars become numerous. Instants before 1970 or from 2200
 * on are refused (AC_ERR_INVALID).
 *
 * Cost: deadline and elapsed computations walk local days (a handful of binary searches
 * per day) but skip whole weeks at once — nominal weekly business time — wherever the
 * skipped span holds no holiday, no offset change and no pause, so they are
 * O(days in partial weeks + holidays + DST changes + pauses spanned), not O(duration).
 *
 * JSON form (unknown keys are refused; a missing weekday is a day off):
 *   { "time_zone": "Europe/Berlin",
 *     "working_hours": { "mon": ["08:00-12:00", "13:00-17:00"], ..., "sun": [] },
 *     "holidays": ["2026-12-25", "2026-12-26"] }
 *   { "around_the_clock": true }      (24x7: every other key is ignored)
 * Times are "HH:MM", 00:00..24:00 (24:00 only as an end); within a day, intervals may
 * touch but not overlap; at most DISPATCH_CAL_MAX_INTERVALS per day; a calendar that is
 * not 24x7 needs some working time in the week. Holidays are local dates, whole days. */
#ifndef DISPATCH_CALENDAR_H
#define DISPATCH_CALENDAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ac_err.h"

#define DISPATCH_CAL_MAX_INTERVALS 8                   /* working intervals per weekday */
#define DISPATCH_CAL_MAX_HOLIDAYS  4096                /* holiday dates per calendar */
#define DISPATCH_CAL_MIN_S         INT64_C(0)          /* 1970-01-01T00:00:00Z */
#define DISPATCH_CAL_MAX_S         INT64_C(7258118400) /* 2200-01-01T00:00:00Z (excluded) */

typedef struct dispatch_calendar dispatch_calendar_t;

/* A span [from_s, to_s) of UTC epoch seconds, e.g. a pause during which the clock stops. */
typedef struct dispatch_span {
    int64_t from_s; /* inclusive */
    int64_t to_s;   /* exclusive */
} dispatch_span_t;

/* Why a calendar was refused: the culprit's path and a sentence for a 422 answer. */
typedef struct dispatch_cal_err {
    char field[64];    /* "time_zone", "working_hours.tue[1]", "holidays[2]", "" for the root */
    char message[256]; /* human-readable, names the offending value */
} dispatch_cal_err_t;

/* Parses and validates a calendar. tzdir: the zoneinfo directory, NULL for
 * /usr/share/zoneinfo. On success *cal_out is a new calendar (the caller owns it) and 0 is
 * returned; on bad input AC_ERR_INVALID with *err filled (nothing allocated); AC_ERR_NOMEM
 * or AC_ERR_IO (zone file unreadable for another reason than "no such zone") otherwise. */
int dispatch_calendar_parse(const json_t *json, const char *tzdir, dispatch_calendar_t **cal_out,
                            dispatch_cal_err_t *err) AC_WUR;
/* A 24x7 calendar (NULL when out of memory). */
dispatch_calendar_t *dispatch_calendar_new_24x7(void);
/* Safe on NULL; sets *self_p = NULL. */
void dispatch_calendar_destroy(dispatch_calendar_t **self_p);

bool dispatch_calendar_is_24x7(const dispatch_calendar_t *self);
/* Borrowed: "Europe/Berlin", or "UTC" for a 24x7 calendar. */
const char *dispatch_calendar_zone(const dispatch_calendar_t *self);
/* Nominal business seconds in a week without holidays or DST changes (604800 for 24x7). */
int64_t dispatch_calendar_week_s(const dispatch_calendar_t *self);
/* The zone's UTC offset at t_s, in seconds east of UTC (0 for 24x7). */
int32_t dispatch_calendar_utc_offset(const dispatch_calendar_t *self, int64_t t_s);

/* Pauses: any number of spans, in any order, possibly overlapping or empty (from == to);
 * NULL with n_pauses 0 for none. A span with from > to is AC_ERR_INVALID. */

/* *deadline_s = the earliest instant d >= start_s at which `business_s` seconds of business
 * time, minus pauses, have elapsed since start_s (so d falls inside working time or at the
 * end of a working interval, never in a pause; business_s == 0 gives start_s).
 * AC_ERR_INVALID for a negative duration or an instant out of range, AC_ERR_TOOBIG when the
 * deadline would fall after DISPATCH_CAL_MAX_S, AC_ERR_NOMEM. */
int dispatch_calendar_add(const dispatch_calendar_t *self, int64_t start_s, int64_t business_s,
                          const dispatch_span_t *pauses, size_t n_pauses,
                          int64_t *deadline_s) AC_WUR;
/* *elapsed_s = business seconds in [from_s, to_s) outside the pauses. AC_ERR_INVALID when
 * from_s > to_s or an instant is out of range. */
int dispatch_calendar_elapsed(const dispatch_calendar_t *self, int64_t from_s, int64_t to_s,
                              const dispatch_span_t *pauses, size_t n_pauses,
                              int64_t *elapsed_s) AC_WUR;
/* *at_s = the earliest instant >= t_s that is working time and not paused (t_s itself when
 * it is). Working intervals are half-open: 17:00 on an 08:00-17:00 day is not working
 * time. AC_ERR_TOOBIG when there is none before DISPATCH_CAL_MAX_S. */
int dispatch_calendar_next_working(const dispatch_calendar_t *self, int64_t t_s,
                                   const dispatch_span_t *pauses, size_t n_pauses,
                                   int64_t *at_s) AC_WUR;

#endif
