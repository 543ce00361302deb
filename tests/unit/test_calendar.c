/* test_calendar.c — the SLA engine's business-time arithmetic (services/dispatch/calendar.c,
 * included so its statics are in reach): deadlines, elapsed business time and the next
 * working instant across nights, weekends, holidays, lunch breaks, several weeks, time
 * zones and both DST changes, with pauses; and every way a calendar can be refused.
 *
 * Expected values are computed by hand in the comments. Instants are written as local
 * RFC 3339 times with the offset in force, so a case reads like a wall clock.
 * 2026 calendar facts used below: 2026-01-01 is a Thursday; 2026-11-23 a Monday;
 * EU DST 2026-03-29 (01:00Z, CET->CEST) and 2026-10-25 (01:00Z, CEST->CET);
 * US DST 2026-03-08 (07:00Z, EST->EDT) and 2026-11-01 (06:00Z, EDT->EST);
 * Lord Howe 2026-04-05 (02:00 -> 01:30 local) and 2026-10-04 (02:00 -> 02:30 local). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dispatch/calendar.c"

#define H(x) ((int64_t)(x)*3600)
#define M(x) ((int64_t)(x)*60)

/* Berlin office: Mon-Fri 08:00-12:00 and 13:00-17:00 (40 h a week); Christmas Eve, Christmas,
 * Boxing Day (a Saturday in 2026) and New Year's Day off. */
static const char BERLIN_OFFICE[] =
    "{\"time_zone\":\"Europe/Berlin\",\"working_hours\":{"
    "\"mon\":[\"13:00-17:00\",\"08:00-12:00\"],\"tue\":[\"08:00-12:00\",\"13:00-17:00\"],"
    "\"wed\":[\"08:00-12:00\",\"13:00-17:00\"],\"thu\":[\"08:00-12:00\",\"13:00-17:00\"],"
    "\"fri\":[\"08:00-12:00\",\"13:00-17:00\"],\"sat\":[],\"sun\":[]},"
    "\"holidays\":[\"2026-12-24\",\"2026-12-25\",\"2026-12-26\",\"2027-01-01\",\"2026-12-25\"]}";

static int64_t T(const char *rfc3339)
{
    int64_t us = 0;
    if (ac_time_parse_rfc3339(rfc3339, &us) != 0)
        fail_msg("bad test time %s", rfc3339);
    return us / 1000000;
}

static dispatch_calendar_t *cal_new(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (!j)
        fail_msg("bad test JSON: %s: %s", text, jerr.text);
    dispatch_calendar_t *cal = NULL;
    dispatch_cal_err_t err;
    int rc = dispatch_calendar_parse(j, NULL, &cal, &err);
    json_decref(j);
    if (rc != 0)
        fail_msg("calendar refused: %s: %s", err.field, err.message);
    return cal;
}

/* every day of the week the same intervals, e.g. "\"08:00-17:00\"" */
static dispatch_calendar_t *cal_daily(const char *zone, const char *intervals)
{
    char text[1024];
    snprintf(text, sizeof text,
             "{\"time_zone\":\"%s\",\"working_hours\":{\"mon\":[%s],\"tue\":[%s],\"wed\":[%s],"
             "\"thu\":[%s],\"fri\":[%s],\"sat\":[%s],\"sun\":[%s]}}",
             zone, intervals, intervals, intervals, intervals, intervals, intervals, intervals);
    return cal_new(text);
}

static dispatch_calendar_t *cal_weekdays(const char *zone, const char *intervals)
{
    char text[1024];
    snprintf(text, sizeof text,
             "{\"time_zone\":\"%s\",\"working_hours\":{\"mon\":[%s],\"tue\":[%s],\"wed\":[%s],"
             "\"thu\":[%s],\"fri\":[%s]}}",
             zone, intervals, intervals, intervals, intervals, intervals);
    return cal_new(text);
}

static int64_t add(const dispatch_calendar_t *cal, int64_t start, int64_t dur,
                   const dispatch_span_t *pauses, size_t n)
{
    int64_t d = -1;
    assert_int_equal(dispatch_calendar_add(cal, start, dur, pauses, n, &d), 0);
    return d;
}

static int64_t elapsed(const dispatch_calendar_t *cal, int64_t from, int64_t to,
                       const dispatch_span_t *pauses, size_t n)
{
    int64_t e = -1;
    assert_int_equal(dispatch_calendar_elapsed(cal, from, to, pauses, n, &e), 0);
    return e;
}

static int64_t next_working(const dispatch_calendar_t *cal, int64_t t,
                            const dispatch_span_t *pauses, size_t n)
{
    int64_t at = -1;
    assert_int_equal(dispatch_calendar_next_working(cal, t, pauses, n, &at), 0);
    return at;
}

/* add() and elapsed() must agree: the deadline is the first instant with `dur` elapsed. */
static void check_inverse(const dispatch_calendar_t *cal, int64_t start, int64_t dur,
                          const dispatch_span_t *pauses, size_t n)
{
    int64_t d = add(cal, start, dur, pauses, n);
    assert_int_equal(elapsed(cal, start, d, pauses, n), dur);
    if (dur > 0)
        assert_int_equal(elapsed(cal, start, d - 1, pauses, n), dur - 1);
}

/* --- the zone table ------------------------------------------------------------------ */

static void test_zone_offsets(void **state)
{
    (void)state;
    dispatch_calendar_t *be = cal_daily("Europe/Berlin", "\"08:00-17:00\"");
    /* CET +1 h until 2026-03-29T01:00Z, then CEST +2 h until 2026-10-25T01:00Z */
    assert_int_equal(dispatch_calendar_utc_offset(be, T("2026-03-29T00:59:59Z")), 3600);
    assert_int_equal(dispatch_calendar_utc_offset(be, T("2026-03-29T01:00:00Z")), 7200);
    assert_int_equal(dispatch_calendar_utc_offset(be, T("2026-10-25T00:59:59Z")), 7200);
    assert_int_equal(dispatch_calendar_utc_offset(be, T("2026-10-25T01:00:00Z")), 3600);
    /* far beyond the explicit table: the footer rule (last Sunday of March, 2150-03-29) */
    assert_int_equal(dispatch_calendar_utc_offset(be, T("2150-03-29T00:59:59Z")), 3600);
    assert_int_equal(dispatch_calendar_utc_offset(be, T("2150-03-29T01:00:00Z")), 7200);
    assert_string_equal(dispatch_calendar_zone(be), "Europe/Berlin");
    /* local -> UTC: the spring-forward gap 02:00-03:00 maps to the change (01:00Z); the
     * fall-back 02:30 happens twice, the first (CEST, 00:30Z) is taken */
    assert_int_equal(zone_local_to_utc(be, T("2026-03-29T02:30:00Z")), T("2026-03-29T01:00:00Z"));
    assert_int_equal(zone_local_to_utc(be, T("2026-03-29T03:00:00Z")), T("2026-03-29T01:00:00Z"));
    assert_int_equal(zone_local_to_utc(be, T("2026-10-25T02:30:00Z")), T("2026-10-25T00:30:00Z"));
    assert_int_equal(zone_local_to_utc(be, T("2026-10-25T03:00:00Z")), T("2026-10-25T02:00:00Z"));
    dispatch_calendar_destroy(&be);
    assert_null(be);
    dispatch_calendar_destroy(&be); /* safe twice */

    dispatch_calendar_t *ny = cal_daily("America/New_York", "\"09:00-17:00\"");
    assert_int_equal(dispatch_calendar_utc_offset(ny, T("2026-03-08T06:59:59Z")), -5 * 3600);
    assert_int_equal(dispatch_calendar_utc_offset(ny, T("2026-03-08T07:00:00Z")), -4 * 3600);
    assert_int_equal(dispatch_calendar_utc_offset(ny, T("2026-11-01T05:59:59Z")), -4 * 3600);
    assert_int_equal(dispatch_calendar_utc_offset(ny, T("2026-11-01T06:00:00Z")), -5 * 3600);
    dispatch_calendar_destroy(&ny);

    dispatch_calendar_t *in = cal_daily("Asia/Kolkata", "\"09:30-18:00\"");
    assert_int_equal(dispatch_calendar_utc_offset(in, T("2026-06-01T00:00:00Z")), 19800);
    assert_int_equal(dispatch_calendar_utc_offset(in, T("2199-12-31T00:00:00Z")), 19800);
    dispatch_calendar_destroy(&in);

    dispatch_calendar_t *lh = cal_daily("Australia/Lord_Howe", "\"00:00-24:00\"");
    /* +11 (DST) until 2026-04-05 02:00 local = 2026-04-04T15:00Z, then +10:30 */
    assert_int_equal(dispatch_calendar_utc_offset(lh, T("2026-04-04T14:59:59Z")), 11 * 3600);
    assert_int_equal(dispatch_calendar_utc_offset(lh, T("2026-04-04T15:00:00Z")), 37800);
    dispatch_calendar_destroy(&lh);
}

static void test_posix_tz_footer(void **state)
{
    (void)state;
    posix_tz_t tz;
    assert_int_equal(ptz_parse("CET-1CEST,M3.5.0,M10.5.0/3", &tz), 0);
    assert_int_equal(tz.std_off, 3600);
    assert_int_equal(tz.dst_off, 7200);
    assert_int_equal(tz.end.time_s, 3 * 3600);
    /* 2026: last Sunday of March is the 29th, of October the 25th */
    assert_int_equal(ptz_day(&tz.start, 2026), days_from_civil(2026, 3, 29));
    assert_int_equal(ptz_day(&tz.end, 2026), days_from_civil(2026, 10, 25));
    assert_int_equal(ptz_parse("<+1030>-10:30<+11>-11,M10.1.0,M4.1.0", &tz), 0);
    assert_int_equal(tz.std_off, 37800);
    assert_int_equal(tz.dst_off, 39600);
    assert_int_equal(ptz_parse("<+0530>-5:30", &tz), 0);
    assert_false(tz.has_dst);
    assert_int_equal(tz.std_off, 19800);
    assert_int_equal(ptz_parse("EST5EDT,M3.2.0,M11.1.0", &tz), 0);
    assert_int_equal(tz.dst_off, -4 * 3600);
    assert_int_equal(ptz_day(&tz.start, 2026), days_from_civil(2026, 3, 8));
    assert_int_equal(ptz_parse("XX-1", &tz), AC_ERR_INVALID);
    assert_int_equal(ptz_parse("CET-1CEST", &tz), AC_ERR_INVALID);
    assert_int_equal(ptz_parse("CET-1CEST,M13.5.0,M10.5.0", &tz), AC_ERR_INVALID);
    /* J60 is 1 March in every year, leap or not; 59 (zero-based) is 1 March only in
     * common years */
    tz_rule_date_t j = {.kind = 'J', .n = 60}, n = {.kind = 'N', .n = 59};
    assert_int_equal(ptz_day(&j, 2028), days_from_civil(2028, 3, 1));
    assert_int_equal(ptz_day(&n, 2028), days_from_civil(2028, 2, 29));
    assert_int_equal(ptz_day(&n, 2027), days_from_civil(2027, 3, 1));
}

/* --- deadlines in Berlin ------------------------------------------------------------- */

static void test_add_day_night_weekend(void **state)
{
    (void)state;
    dispatch_calendar_t *cal = cal_new(BERLIN_OFFICE);
    assert_int_equal(dispatch_calendar_week_s(cal), H(40));
    /* Mon 09:00 + 2 h, all in the morning: Mon 11:00 */
    assert_int_equal(add(cal, T("2026-11-23T09:00:00+01:00"), H(2), NULL, 0),
                     T("2026-11-23T11:00:00+01:00"));
    /* lunch: Mon 11:00 + 2 h = 11:00-12:00 (1 h) + 13:00-14:00 (1 h) -> Mon 14:00 */
    assert_int_equal(add(cal, T("2026-11-23T11:00:00+01:00"), H(2), NULL, 0),
                     T("2026-11-23T14:00:00+01:00"));
    /* exactly the morning: Mon 08:00 + 4 h ends at 12:00, not after lunch at 13:00 */
    assert_int_equal(add(cal, T("2026-11-23T08:00:00+01:00"), H(4), NULL, 0),
                     T("2026-11-23T12:00:00+01:00"));
    /* night: Mon 16:00 + 2 h = Mon 16:00-17:00 + Tue 08:00-09:00 -> Tue 09:00 */
    assert_int_equal(add(cal, T("2026-11-23T16:00:00+01:00"), H(2), NULL, 0),
                     T("2026-11-24T09:00:00+01:00"));
    /* Friday evening: Fri 18:00 + 4 h: nothing until Mon 08:00, then 4 h -> Mon 12:00 */
    assert_int_equal(add(cal, T("2026-11-27T18:00:00+01:00"), H(4), NULL, 0),
                     T("2026-11-30T12:00:00+01:00"));
    /* Friday afternoon: Fri 15:30 + 3 h = 1.5 h Fri + 1.5 h Mon -> Mon 09:30 */
    assert_int_equal(add(cal, T("2026-11-27T15:30:00+01:00"), M(180), NULL, 0),
                     T("2026-11-30T09:30:00+01:00"));
    /* Saturday start: Sat 10:00 + 1 h -> Mon 09:00 */
    assert_int_equal(add(cal, T("2026-11-28T10:00:00+01:00"), H(1), NULL, 0),
                     T("2026-11-30T09:00:00+01:00"));
    /* one second: Tue 12:30 (lunch) + 1 s -> Tue 13:00:01 */
    assert_int_equal(add(cal, T("2026-11-24T12:30:00+01:00"), 1, NULL, 0),
                     T("2026-11-24T13:00:01+01:00"));
    /* zero: the start itself, even at night */
    assert_int_equal(add(cal, T("2026-11-24T23:00:00+01:00"), 0, NULL, 0),
                     T("2026-11-24T23:00:00+01:00"));
    dispatch_calendar_destroy(&cal);
}

static void test_add_holidays_and_weeks(void **state)
{
    (void)state;
    dispatch_calendar_t *cal = cal_new(BERLIN_OFFICE);
    /* Wed 23 Dec 16:00 + 3 h: Wed 16-17 (1 h); Thu 24 and Fri 25 holidays; weekend;
     * Mon 28 08:00-10:00 (2 h) -> Mon 28 Dec 10:00 */
    assert_int_equal(add(cal, T("2026-12-23T16:00:00+01:00"), H(3), NULL, 0),
                     T("2026-12-28T10:00:00+01:00"));
    /* 100 h from Mon 2 Nov 08:00 (no holiday, no DST change until March): two whole weeks
     * (80 h) -> Mon 16 Nov 08:00, then Mon 8 + Tue 8 + Wed 4 -> Wed 18 Nov 12:00 */
    assert_int_equal(add(cal, T("2026-11-02T08:00:00+01:00"), H(100), NULL, 0),
                     T("2026-11-18T12:00:00+01:00"));
    /* 200 h from Mon 14 Dec 08:00 across Christmas and New Year:
     *   14-18 Dec 40 h (40); 21-23 Dec 24 h, 24/25 off (64); 28-31 Dec 32 h, 1 Jan off (96);
     *   4-8 Jan 40 h (136); 11-15 Jan 40 h (176); 18, 19, 20 Jan 24 h (200) -> Wed 20 Jan 17:00 */
    assert_int_equal(add(cal, T("2026-12-14T08:00:00+01:00"), H(200), NULL, 0),
                     T("2027-01-20T17:00:00+01:00"));
    assert_int_equal(
        elapsed(cal, T("2026-12-14T08:00:00+01:00"), T("2027-01-20T17:00:00+01:00"), NULL, 0),
        H(200));
    /* 10 weeks from Mon 5 Jan 2026 08:00, across the spring-forward Sunday 29 March: 400 h
     * = exactly 10 working weeks -> Fri 13 Mar 17:00 CET; 600 h = 15 weeks -> Fri 17 Apr
     * 17:00 CEST (the DST change falls on a Sunday, so every week still has 40 h) */
    assert_int_equal(add(cal, T("2026-01-05T08:00:00+01:00"), H(400), NULL, 0),
                     T("2026-03-13T17:00:00+01:00"));
    assert_int_equal(add(cal, T("2026-01-05T08:00:00+01:00"), H(600), NULL, 0),
                     T("2026-04-17T17:00:00+02:00"));
    /* a whole year of the office: 2026 has 261 weekdays; Christmas Eve and Christmas are
     * weekdays off (Boxing Day is a Saturday, 1 Jan 2026 is not listed): 259 * 8 h */
    assert_int_equal(
        elapsed(cal, T("2026-01-01T00:00:00+01:00"), T("2027-01-01T00:00:00+01:00"), NULL, 0),
        H(259 * 8));
    dispatch_calendar_destroy(&cal);
}

static void test_elapsed_basics(void **state)
{
    (void)state;
    dispatch_calendar_t *cal = cal_new(BERLIN_OFFICE);
    int64_t e = -1;
    /* Mon 07:00 .. Mon 18:00: the working day, 8 h */
    assert_int_equal(
        elapsed(cal, T("2026-11-23T07:00:00+01:00"), T("2026-11-23T18:00:00+01:00"), NULL, 0),
        H(8));
    /* Fri 16:00 .. Mon 09:00: 1 h + 1 h */
    assert_int_equal(
        elapsed(cal, T("2026-11-27T16:00:00+01:00"), T("2026-11-30T09:00:00+01:00"), NULL, 0),
        H(2));
    /* the weekend alone: nothing */
    assert_int_equal(
        elapsed(cal, T("2026-11-28T00:00:00+01:00"), T("2026-11-30T00:00:00+01:00"), NULL, 0), 0);
    /* lunch alone: nothing; empty range: nothing */
    assert_int_equal(
        elapsed(cal, T("2026-11-24T12:00:00+01:00"), T("2026-11-24T13:00:00+01:00"), NULL, 0), 0);
    assert_int_equal(
        elapsed(cal, T("2026-11-24T10:00:00+01:00"), T("2026-11-24T10:00:00+01:00"), NULL, 0), 0);
    /* backwards, out of range, negative duration */
    assert_int_equal(dispatch_calendar_elapsed(cal, T("2026-11-24T10:00:00Z"),
                                               T("2026-11-24T09:00:00Z"), NULL, 0, &e),
                     AC_ERR_INVALID);
    assert_int_equal(dispatch_calendar_elapsed(cal, -1, 0, NULL, 0, &e), AC_ERR_INVALID);
    assert_int_equal(dispatch_calendar_add(cal, T("2026-11-24T10:00:00Z"), -1, NULL, 0, &e),
                     AC_ERR_INVALID);
    assert_int_equal(dispatch_calendar_add(cal, DISPATCH_CAL_MAX_S, 1, NULL, 0, &e),
                     AC_ERR_INVALID);
    /* a deadline beyond 2200 */
    assert_int_equal(
        dispatch_calendar_add(cal, T("2199-12-20T08:00:00+01:00"), H(400), NULL, 0, &e),
        AC_ERR_TOOBIG);
    dispatch_calendar_destroy(&cal);
}

/* --- DST ----------------------------------------------------------------------------- */

static void test_dst_berlin(void **state)
{
    (void)state;
    dispatch_calendar_t *cal = cal_daily("Europe/Berlin", "\"08:00-17:00\"");
    /* 08:00-17:00 is 9 h on both change days (Sunday 29 March and Sunday 25 October) */
    assert_int_equal(
        elapsed(cal, T("2026-03-29T00:00:00+01:00"), T("2026-03-30T00:00:00+02:00"), NULL, 0),
        H(9));
    assert_int_equal(
        elapsed(cal, T("2026-10-25T00:00:00+02:00"), T("2026-10-26T00:00:00+01:00"), NULL, 0),
        H(9));
    /* across the spring-forward night: Sat 16:00 CET + 2 h = Sat 16-17 + Sun 08-09 CEST
     * -> 2026-03-29T09:00+02:00 = 07:00Z (adding a fixed 24 h in UTC would say 08:00Z) */
    assert_int_equal(add(cal, T("2026-03-28T16:00:00+01:00"), H(2), NULL, 0),
                     T("2026-03-29T07:00:00Z"));
    /* across the fall-back night: Sat 16:00 CEST + 2 h -> Sun 09:00 CET = 08:00Z */
    assert_int_equal(add(cal, T("2026-10-24T16:00:00+02:00"), H(2), NULL, 0),
                     T("2026-10-25T08:00:00Z"));
    /* 9 h from Sat 08:00 CET: all of Saturday -> Sat 17:00; 10 h -> Sun 09:00 CEST */
    assert_int_equal(add(cal, T("2026-03-28T08:00:00+01:00"), H(10), NULL, 0),
                     T("2026-03-29T09:00:00+02:00"));
    dispatch_calendar_destroy(&cal);

    /* a day of 00:00-24:00 is real time: 23 h on the spring day, 25 h on the autumn day */
    cal = cal_daily("Europe/Berlin", "\"00:00-24:00\"");
    assert_int_equal(
        elapsed(cal, T("2026-03-29T00:00:00+01:00"), T("2026-03-30T00:00:00+02:00"), NULL, 0),
        H(23));
    assert_int_equal(
        elapsed(cal, T("2026-10-25T00:00:00+02:00"), T("2026-10-26T00:00:00+01:00"), NULL, 0),
        H(25));
    /* so a whole year of it is exactly 365 days (the 23 h and the 25 h cancel out), over
     * the weekly fast path */
    assert_int_equal(
        elapsed(cal, T("2026-01-01T00:00:00+01:00"), T("2027-01-01T00:00:00+01:00"), NULL, 0),
        365 * DAY_S);
    /* and 30 days of it from 15 March 00:00 CET end on 14 April 01:00 CEST (one hour
     * of the wall clock was skipped) */
    assert_int_equal(add(cal, T("2026-03-15T00:00:00+01:00"), 30 * DAY_S, NULL, 0),
                     T("2026-04-14T01:00:00+02:00"));
    dispatch_calendar_destroy(&cal);

    /* intervals inside the change hour: 02:00-03:00 does not exist on 29 March (0 h) and
     * happens twice on 25 October (2 h) */
    cal = cal_daily("Europe/Berlin", "\"02:00-03:00\"");
    assert_int_equal(
        elapsed(cal, T("2026-03-29T00:00:00+01:00"), T("2026-03-30T00:00:00+02:00"), NULL, 0), 0);
    assert_int_equal(
        elapsed(cal, T("2026-10-25T00:00:00+02:00"), T("2026-10-26T00:00:00+01:00"), NULL, 0),
        H(2));
    /* Sat 28 March 02:30 + 1 h: 30 min Saturday, nothing Sunday, 30 min Monday -> 02:30 CEST */
    assert_int_equal(add(cal, T("2026-03-28T02:30:00+01:00"), H(1), NULL, 0),
                     T("2026-03-30T02:30:00+02:00"));
    dispatch_calendar_destroy(&cal);
}

static void test_dst_new_york(void **state)
{
    (void)state;
    dispatch_calendar_t *cal = cal_weekdays("America/New_York", "\"09:00-17:00\"");
    /* Fri 6 March 16:00 EST (21:00Z) + 2 h: Fri 16-17, Mon 9 March 09-10 EDT -> 14:00Z */
    assert_int_equal(add(cal, T("2026-03-06T16:00:00-05:00"), H(2), NULL, 0),
                     T("2026-03-09T14:00:00Z"));
    /* Fri 30 Oct 16:00 EDT + 2 h -> Mon 2 Nov 10:00 EST = 15:00Z */
    assert_int_equal(add(cal, T("2026-10-30T16:00:00-04:00"), H(2), NULL, 0),
                     T("2026-11-02T15:00:00Z"));
    /* the week around each change still has 40 h */
    assert_int_equal(
        elapsed(cal, T("2026-03-07T00:00:00-05:00"), T("2026-03-14T00:00:00-04:00"), NULL, 0),
        H(40));
    assert_int_equal(
        elapsed(cal, T("2026-10-31T00:00:00-04:00"), T("2026-11-07T00:00:00-05:00"), NULL, 0),
        H(40));
    dispatch_calendar_destroy(&cal);

    /* the change hour: 01:00-04:00 on Sunday 8 March is 01:00 EST (06Z) .. 04:00 EDT (08Z) =
     * 2 h; on Sunday 1 November 01:00 (first, EDT, 05Z) .. 04:00 EST (09Z) = 4 h */
    cal = cal_daily("America/New_York", "\"01:00-04:00\"");
    assert_int_equal(
        elapsed(cal, T("2026-03-08T00:00:00-05:00"), T("2026-03-09T00:00:00-04:00"), NULL, 0),
        H(2));
    assert_int_equal(
        elapsed(cal, T("2026-11-01T00:00:00-04:00"), T("2026-11-02T00:00:00-05:00"), NULL, 0),
        H(4));
    /* 1 h from 8 March 01:30 EST: 01:30 EST -> 03:30 EDT is one real hour */
    assert_int_equal(add(cal, T("2026-03-08T01:30:00-05:00"), H(1), NULL, 0),
                     T("2026-03-08T03:30:00-04:00"));
    /* the next working instant at 02:30 on 8 March (a time that does not exist, 07:30Z is
     * already 03:30 EDT) is itself */
    assert_int_equal(next_working(cal, T("2026-03-08T07:30:00Z"), NULL, 0),
                     T("2026-03-08T07:30:00Z"));
    dispatch_calendar_destroy(&cal);
}

static void test_kolkata_and_lord_howe(void **state)
{
    (void)state;
    /* Kolkata, +05:30 all year: Mon-Fri 09:30-18:00 (8.5 h) */
    dispatch_calendar_t *cal = cal_weekdays("Asia/Kolkata", "\"09:30-18:00\"");
    /* Mon 17:00 + 2 h: Mon 17:00-18:00, Tue 09:30-10:30 -> 2026-11-24T10:30+05:30 = 05:00Z */
    assert_int_equal(add(cal, T("2026-11-23T17:00:00+05:30"), H(2), NULL, 0),
                     T("2026-11-24T05:00:00Z"));
    /* a Friday 17:00 UTC start is 22:30 local: the next window is Mon 09:30 = 04:00Z */
    assert_int_equal(next_working(cal, T("2026-11-27T17:00:00Z"), NULL, 0),
                     T("2026-11-30T04:00:00Z"));
    /* 3 weeks (3 * 5 * 8.5 h = 127.5 h) and 1 h from Mon 23 Nov 09:30 -> Mon 14 Dec 10:30 */
    assert_int_equal(add(cal, T("2026-11-23T09:30:00+05:30"), M(3 * 5 * 510 + 60), NULL, 0),
                     T("2026-12-14T10:30:00+05:30"));
    dispatch_calendar_destroy(&cal);

    /* Lord Howe: a 30-minute DST (+10:30 <-> +11); a 00:00-24:00 day is 24.5 h on
     * Sunday 5 April and 23.5 h on Sunday 4 October */
    cal = cal_daily("Australia/Lord_Howe", "\"00:00-24:00\"");
    assert_int_equal(
        elapsed(cal, T("2026-04-05T00:00:00+11:00"), T("2026-04-06T00:00:00+10:30"), NULL, 0),
        M(24 * 60 + 30));
    assert_int_equal(
        elapsed(cal, T("2026-10-04T00:00:00+10:30"), T("2026-10-05T00:00:00+11:00"), NULL, 0),
        M(23 * 60 + 30));
    dispatch_calendar_destroy(&cal);
}

/* --- pauses -------------------------------------------------------------------------- */

static void test_pauses(void **state)
{
    (void)state;
    dispatch_calendar_t *cal = cal_new(BERLIN_OFFICE);
    int64_t e = -1;
    /* a pause over the night: Mon 16:00 + 2 h, paused Mon 16:30 .. Tue 09:00:
     * Mon 16:00-16:30 (0.5 h), Tue 09:00-10:30 (1.5 h) -> Tue 10:30 */
    dispatch_span_t night[] = {{T("2026-11-23T16:30:00+01:00"), T("2026-11-24T09:00:00+01:00")}};
    assert_int_equal(add(cal, T("2026-11-23T16:00:00+01:00"), H(2), night, 1),
                     T("2026-11-24T10:30:00+01:00"));
    assert_int_equal(
        elapsed(cal, T("2026-11-23T08:00:00+01:00"), T("2026-11-24T17:00:00+01:00"), night, 1),
        H(16) - M(30) - H(1));

    /* overlapping pauses, out of order, plus an empty one: Tue 10:00-11:00, 10:30-14:00 and
     * 13:30-13:45 merge into 10:00-14:00. Tue 09:00 + 3 h: 09-10 (1 h), paused until 14:00,
     * 14-16 (2 h) -> Tue 16:00. Tue 08:00..17:00 elapsed: 8 h - (10-12 and 13-14) = 5 h */
    dispatch_span_t overlap[] = {
        {T("2026-11-24T13:30:00+01:00"), T("2026-11-24T13:45:00+01:00")},
        {T("2026-11-24T10:30:00+01:00"), T("2026-11-24T14:00:00+01:00")},
        {T("2026-11-24T09:15:00+01:00"), T("2026-11-24T09:15:00+01:00")},
        {T("2026-11-24T10:00:00+01:00"), T("2026-11-24T11:00:00+01:00")},
    };
    assert_int_equal(add(cal, T("2026-11-24T09:00:00+01:00"), H(3), overlap, 4),
                     T("2026-11-24T16:00:00+01:00"));
    assert_int_equal(
        elapsed(cal, T("2026-11-24T08:00:00+01:00"), T("2026-11-24T17:00:00+01:00"), overlap, 4),
        H(5));
    /* a deadline never lands in a pause: Tue 09:00 + 1 h would be 10:00, the pause starts
     * there, so 10:00 is still the first instant with 1 h elapsed */
    assert_int_equal(add(cal, T("2026-11-24T09:00:00+01:00"), H(1), overlap, 4),
                     T("2026-11-24T10:00:00+01:00"));
    /* a pause that covers the start: Tue 10:15 + 30 min -> 14:30 */
    assert_int_equal(add(cal, T("2026-11-24T10:15:00+01:00"), M(30), overlap, 4),
                     T("2026-11-24T14:30:00+01:00"));

    /* a pause over a weekend changes nothing; one covering the whole range leaves 0 */
    dispatch_span_t weekend[] = {{T("2026-11-28T00:00:00+01:00"), T("2026-11-30T00:00:00+01:00")}};
    assert_int_equal(add(cal, T("2026-11-27T16:00:00+01:00"), H(2), weekend, 1),
                     T("2026-11-30T09:00:00+01:00"));
    dispatch_span_t all[] = {{T("2026-11-01T00:00:00Z"), T("2026-12-01T00:00:00Z")}};
    assert_int_equal(
        elapsed(cal, T("2026-11-23T08:00:00+01:00"), T("2026-11-27T17:00:00+01:00"), all, 1), 0);

    /* a long pause (waiting on an outside repair shop for 6 weeks): Mon 23 Nov 10:00 + 4 h,
     * paused Mon 11:00 .. Mon 4 Jan 2027 00:00 (over Christmas and New Year):
     * Mon 10-11 (1 h), then Mon 4 Jan 08:00 + 3 h -> 11:00 */
    dispatch_span_t repair[] = {{T("2026-11-23T11:00:00+01:00"), T("2027-01-04T00:00:00+01:00")}};
    assert_int_equal(add(cal, T("2026-11-23T10:00:00+01:00"), H(4), repair, 1),
                     T("2027-01-04T11:00:00+01:00"));
    /* and several pauses over a long target: 100 h from Mon 2 Nov 08:00 (-> Wed 18 Nov 12:00
     * without pauses), paused all of Thu 5 Nov (8 h) and Tue 10 Nov 12:00-17:00 (4 h):
     * 12 h more: Wed 18 13-17 (4 h), Thu 19 08-12 (4 h), 13-17 (4 h) -> Thu 19 Nov 17:00 */
    dispatch_span_t two[] = {
        {T("2026-11-10T12:00:00+01:00"), T("2026-11-10T17:00:00+01:00")},
        {T("2026-11-05T00:00:00+01:00"), T("2026-11-06T00:00:00+01:00")},
    };
    assert_int_equal(add(cal, T("2026-11-02T08:00:00+01:00"), H(100), two, 2),
                     T("2026-11-19T17:00:00+01:00"));
    check_inverse(cal, T("2026-11-02T08:00:00+01:00"), H(100), two, 2);

    /* many pauses (more than fit on the stack): 20 pauses of 30 min every morning at 08:00
     * from Mon 2 Nov, weekdays only matter: Mon 2 .. Fri 27 Nov has 20 weekdays; each day
     * loses 30 min: elapsed over those 4 weeks is 160 h - 10 h */
    dispatch_span_t many[20];
    for (int i = 0, day = 0; i < 20; day++) {
        int64_t d0 = T("2026-11-02T08:00:00+01:00") + day * DAY_S;
        if (weekday_mon0(floor_div(d0, DAY_S)) >= 5)
            continue;
        many[i++] = (dispatch_span_t){d0, d0 + M(30)};
    }
    assert_int_equal(
        elapsed(cal, T("2026-11-02T00:00:00+01:00"), T("2026-11-28T00:00:00+01:00"), many, 20),
        H(150));

    /* a backwards pause is refused */
    dispatch_span_t bad[] = {{T("2026-11-24T10:00:00Z"), T("2026-11-24T09:00:00Z")}};
    assert_int_equal(dispatch_calendar_add(cal, T("2026-11-24T08:00:00Z"), H(1), bad, 1, &e),
                     AC_ERR_INVALID);
    assert_int_equal(dispatch_calendar_elapsed(cal, T("2026-11-24T08:00:00Z"),
                                               T("2026-11-24T12:00:00Z"), bad, 1, &e),
                     AC_ERR_INVALID);
    /* a pause that never ends: no deadline before 2200 */
    dispatch_span_t forever[] = {{T("2026-11-24T08:00:00Z"), DISPATCH_CAL_MAX_S}};
    assert_int_equal(dispatch_calendar_add(cal, T("2026-11-24T08:00:00Z"), H(1), forever, 1, &e),
                     AC_ERR_TOOBIG);
    dispatch_calendar_destroy(&cal);
}

/* --- next working instant ------------------------------------------------------------ */

static void test_next_working(void **state)
{
    (void)state;
    dispatch_calendar_t *cal = cal_new(BERLIN_OFFICE);
    /* inside working time: itself */
    assert_int_equal(next_working(cal, T("2026-11-24T09:00:00+01:00"), NULL, 0),
                     T("2026-11-24T09:00:00+01:00"));
    assert_int_equal(next_working(cal, T("2026-11-24T08:00:00+01:00"), NULL, 0),
                     T("2026-11-24T08:00:00+01:00"));
    /* lunch -> 13:00; 17:00 is already off (half-open) -> next day 08:00 */
    assert_int_equal(next_working(cal, T("2026-11-24T12:30:00+01:00"), NULL, 0),
                     T("2026-11-24T13:00:00+01:00"));
    assert_int_equal(next_working(cal, T("2026-11-24T17:00:00+01:00"), NULL, 0),
                     T("2026-11-25T08:00:00+01:00"));
    /* Friday evening -> Monday; Christmas Eve evening -> Mon 28 Dec (24, 25 off, weekend) */
    assert_int_equal(next_working(cal, T("2026-11-27T20:00:00+01:00"), NULL, 0),
                     T("2026-11-30T08:00:00+01:00"));
    assert_int_equal(next_working(cal, T("2026-12-23T17:30:00+01:00"), NULL, 0),
                     T("2026-12-28T08:00:00+01:00"));
    /* a pause at the start of the window pushes it: paused Mon 07:00-09:15 */
    dispatch_span_t p[] = {{T("2026-11-30T07:00:00+01:00"), T("2026-11-30T09:15:00+01:00")}};
    assert_int_equal(next_working(cal, T("2026-11-27T20:00:00+01:00"), p, 1),
                     T("2026-11-30T09:15:00+01:00"));
    dispatch_calendar_destroy(&cal);
}

/* --- 24x7 ---------------------------------------------------------------------------- */

static void test_around_the_clock(void **state)
{
    (void)state;
    dispatch_calendar_t *cal = cal_new("{\"around_the_clock\":true}");
    assert_true(dispatch_calendar_is_24x7(cal));
    assert_int_equal(dispatch_calendar_week_s(cal), WEEK_S);
    int64_t t = T("2026-11-27T18:00:00Z");
    /* Friday evening + 4 h is Friday 22:00 */
    assert_int_equal(add(cal, t, H(4), NULL, 0), t + H(4));
    /* 30 days: exactly 30 * 24 h (no DST in a 24x7 clock), over the week fast path */
    assert_int_equal(add(cal, t, 30 * DAY_S, NULL, 0), t + 30 * DAY_S);
    assert_int_equal(elapsed(cal, t, t + 30 * DAY_S + 5, NULL, 0), 30 * DAY_S + 5);
    assert_int_equal(next_working(cal, t, NULL, 0), t);
    /* paused 2 h after 1 h: 4 h -> 6 h later */
    dispatch_span_t p[] = {{t + H(1), t + H(3)}};
    assert_int_equal(add(cal, t, H(4), p, 1), t + H(6));
    assert_int_equal(elapsed(cal, t, t + H(6), p, 1), H(4));
    assert_int_equal(next_working(cal, t + H(2), p, 1), t + H(3));
    dispatch_calendar_destroy(&cal);

    /* around_the_clock ignores the rest, even a bad zone */
    cal = cal_new("{\"around_the_clock\":true,\"time_zone\":\"Mars/Olympus\"}");
    assert_true(dispatch_calendar_is_24x7(cal));
    dispatch_calendar_destroy(&cal);
    cal = dispatch_calendar_new_24x7();
    assert_non_null(cal);
    assert_string_equal(dispatch_calendar_zone(cal), "UTC");
    assert_int_equal(add(cal, t, 1, NULL, 0), t + 1);
    dispatch_calendar_destroy(&cal);
    /* false is an ordinary calendar */
    cal = cal_new("{\"around_the_clock\":false,\"time_zone\":\"UTC\","
                  "\"working_hours\":{\"mon\":[\"00:00-24:00\"]}}");
    assert_false(dispatch_calendar_is_24x7(cal));
    assert_int_equal(dispatch_calendar_week_s(cal), DAY_S);
    dispatch_calendar_destroy(&cal);
}

/* --- properties over many random cases ----------------------------------------------- */

static void test_properties(void **state)
{
    (void)state;
    dispatch_calendar_t *cals[] = {
        cal_new(BERLIN_OFFICE),
        cal_weekdays("America/New_York", "\"09:00-12:30\",\"13:30-17:00\""),
        cal_daily("Australia/Lord_Howe", "\"00:00-24:00\""),
        cal_daily("Europe/Berlin", "\"01:00-03:30\",\"22:00-24:00\""),
        cal_new("{\"around_the_clock\":true}"),
    };
    unsigned seed = 42;
    for (size_t c = 0; c < AC_ARRAY_LEN(cals); c++) {
        for (int i = 0; i < 300; i++) {
            int64_t start = T("2026-01-01T00:00:00Z") + (rand_r(&seed) % (2 * 366)) * DAY_S +
                            rand_r(&seed) % DAY_S;
            int64_t dur = rand_r(&seed) % (i % 3 == 0 ? 600 * 3600 : 20 * 3600);
            dispatch_span_t pauses[3];
            size_t np = (size_t)(rand_r(&seed) % 4);
            for (size_t k = 0; k < np; k++) {
                int64_t from = start + rand_r(&seed) % (30 * DAY_S);
                pauses[k] = (dispatch_span_t){from, from + rand_r(&seed) % (3 * DAY_S)};
            }
            /* the deadline is the first instant with dur elapsed */
            check_inverse(cals[c], start, dur, pauses, np);
            /* elapsed is additive at any split point (the week fast path and the day walk
             * cut the range differently) */
            int64_t end = start + rand_r(&seed) % (120 * DAY_S);
            int64_t mid = start + (end - start) / 3 + rand_r(&seed) % DAY_S;
            mid = mid > end ? end : mid;
            assert_int_equal(elapsed(cals[c], start, end, pauses, np),
                             elapsed(cals[c], start, mid, pauses, np) +
                                 elapsed(cals[c], mid, end, pauses, np));
            /* the next working instant has business time right after it */
            int64_t nw = next_working(cals[c], start, pauses, np);
            assert_true(nw >= start);
            assert_int_equal(elapsed(cals[c], start, nw, pauses, np), 0);
            assert_int_equal(elapsed(cals[c], nw, nw + 1, pauses, np), 1);
        }
        dispatch_calendar_destroy(&cals[c]);
    }
}

/* --- refused calendars --------------------------------------------------------------- */

/* Parsing `text` fails with AC_ERR_INVALID, naming `field`, with `needle` in the message. */
static void expect_refused(const char *text, const char *field, const char *needle)
{
    json_error_t jerr;
    json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!j)
        fail_msg("bad test JSON: %s: %s", text, jerr.text);
    dispatch_calendar_t *cal = (dispatch_calendar_t *)(uintptr_t)1;
    dispatch_cal_err_t err;
    int rc = dispatch_calendar_parse(j, NULL, &cal, &err);
    json_decref(j);
    if (rc != AC_ERR_INVALID)
        fail_msg("accepted (rc %d): %s", rc, text);
    assert_null(cal);
    assert_string_equal(err.field, field);
    if (!strstr(err.message, needle))
        fail_msg("message \"%s\" lacks \"%s\"", err.message, needle);
}

#define WH(day_json) "{\"time_zone\":\"Europe/Berlin\",\"working_hours\":{" day_json "}}"

static void test_refused(void **state)
{
    (void)state;
    expect_refused("[]", "", "JSON object");
    expect_refused("{\"timezone\":\"Europe/Berlin\"}", "timezone", "unknown calendar field");
    expect_refused("{\"around_the_clock\":\"yes\"}", "around_the_clock", "true or false");
    /* the zone */
    expect_refused("{\"working_hours\":{\"mon\":[\"08:00-17:00\"]}}", "time_zone", "required");
    expect_refused("{\"time_zone\":1,\"working_hours\":{}}", "time_zone", "string");
    expect_refused("{\"time_zone\":\"Mars/Olympus\",\"working_hours\":{}}", "time_zone",
                   "unknown time zone \"Mars/Olympus\"");
    expect_refused("{\"time_zone\":\"Europe\",\"working_hours\":{}}", "time_zone",
                   "unknown time zone \"Europe\"");
    expect_refused("{\"time_zone\":\"zone.tab\",\"working_hours\":{}}", "time_zone",
                   "unknown time zone");
    expect_refused("{\"time_zone\":\"../../etc/passwd\",\"working_hours\":{}}", "time_zone",
                   "not a time zone name");
    expect_refused("{\"time_zone\":\"/etc/localtime\",\"working_hours\":{}}", "time_zone",
                   "not a time zone name");
    expect_refused("{\"time_zone\":\"\",\"working_hours\":{}}", "time_zone",
                   "not a time zone name");
    /* the week */
    expect_refused("{\"time_zone\":\"Europe/Berlin\"}", "working_hours", "required");
    expect_refused("{\"time_zone\":\"Europe/Berlin\",\"working_hours\":[]}", "working_hours",
                   "object");
    expect_refused(WH("\"monday\":[\"08:00-17:00\"]"), "working_hours.monday",
                   "\"monday\" is not a weekday");
    expect_refused(WH("\"mon\":\"08:00-17:00\""), "working_hours.mon", "list");
    expect_refused(WH("\"tue\":[8]"), "working_hours.tue[0]", "string");
    expect_refused(WH("\"tue\":[\"8-17\"]"), "working_hours.tue[0]", "\"8-17\"");
    expect_refused(WH("\"tue\":[\"08:00 17:00\"]"), "working_hours.tue[0]", "\"08:00 17:00\"");
    expect_refused(WH("\"wed\":[\"08:00-12:00\",\"25:00-26:00\"]"), "working_hours.wed[1]",
                   "\"25:00\" in \"25:00-26:00\" is not a time of day");
    expect_refused(WH("\"wed\":[\"08:00-24:30\"]"), "working_hours.wed[0]",
                   "\"24:30\" in \"08:00-24:30\" is not a time of day");
    expect_refused(WH("\"wed\":[\"08:60-09:00\"]"), "working_hours.wed[0]", "\"08:60\"");
    expect_refused(WH("\"wed\":[\"0a:00-09:00\"]"), "working_hours.wed[0]", "\"0a:00\"");
    expect_refused(WH("\"thu\":[\"17:00-08:00\"]"), "working_hours.thu[0]",
                   "interval \"17:00-08:00\" does not start before it ends");
    expect_refused(WH("\"thu\":[\"09:00-09:00\"]"), "working_hours.thu[0]", "does not start");
    expect_refused(WH("\"thu\":[\"24:00-24:00\"]"), "working_hours.thu[0]", "does not start");
    expect_refused(WH("\"fri\":[\"08:00-12:00\",\"11:00-13:00\"]"), "working_hours.fri[1]",
                   "\"11:00-13:00\" overlaps 08:00-12:00");
    expect_refused(WH("\"fri\":[\"13:00-17:00\",\"08:00-13:30\"]"), "working_hours.fri[1]",
                   "\"08:00-13:30\" overlaps 13:00-17:00");
    expect_refused(WH("\"fri\":[\"08:00-17:00\",\"09:00-10:00\"]"), "working_hours.fri[1]",
                   "overlaps 08:00-17:00");
    expect_refused(WH("\"sat\":[\"00:00-01:00\",\"01:00-02:00\",\"02:00-03:00\",\"03:00-04:00\","
                      "\"04:00-05:00\",\"05:00-06:00\",\"06:00-07:00\",\"07:00-08:00\","
                      "\"08:00-09:00\"]"),
                   "working_hours.sat", "at most 8");
    expect_refused(WH("\"sat\":[],\"sun\":[]"), "working_hours", "no working time");
    expect_refused(WH(""), "working_hours", "no working time");
    /* holidays */
    expect_refused("{\"time_zone\":\"UTC\",\"working_hours\":{\"mon\":[\"08:00-17:00\"]},"
                   "\"holidays\":\"2026-12-25\"}",
                   "holidays", "list");
    expect_refused("{\"time_zone\":\"UTC\",\"working_hours\":{\"mon\":[\"08:00-17:00\"]},"
                   "\"holidays\":[\"2026-12-25\",\"2026-02-30\"]}",
                   "holidays[1]", "\"2026-02-30\" is not a date");
    expect_refused("{\"time_zone\":\"UTC\",\"working_hours\":{\"mon\":[\"08:00-17:00\"]},"
                   "\"holidays\":[\"2026-13-01\"]}",
                   "holidays[0]", "\"2026-13-01\"");
    expect_refused("{\"time_zone\":\"UTC\",\"working_hours\":{\"mon\":[\"08:00-17:00\"]},"
                   "\"holidays\":[\"25.12.2026\"]}",
                   "holidays[0]", "\"25.12.2026\"");
    expect_refused("{\"time_zone\":\"UTC\",\"working_hours\":{\"mon\":[\"08:00-17:00\"]},"
                   "\"holidays\":[20261225]}",
                   "holidays[0]", "date");
    expect_refused("{\"time_zone\":\"UTC\",\"working_hours\":{\"mon\":[\"08:00-17:00\"]},"
                   "\"holidays\":[\"2300-01-01\"]}",
                   "holidays[0]", "outside");

    /* a zone file that is not TZif, from a custom tzdir */
    char dir[] = "/tmp/test_calendar_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/Bogus", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("TZif2 but not really", f);
    fclose(f);
    json_t *j = json_loads(
        "{\"time_zone\":\"Bogus\",\"working_hours\":{\"mon\":[\"08:00-09:00\"]}}", 0, NULL);
    dispatch_calendar_t *cal = NULL;
    dispatch_cal_err_t err;
    assert_int_equal(dispatch_calendar_parse(j, dir, &cal, &err), AC_ERR_INVALID);
    assert_string_equal(err.field, "time_zone");
    json_decref(j);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zone_offsets),
        cmocka_unit_test(test_posix_tz_footer),
        cmocka_unit_test(test_add_day_night_weekend),
        cmocka_unit_test(test_add_holidays_and_weeks),
        cmocka_unit_test(test_elapsed_basics),
        cmocka_unit_test(test_dst_berlin),
        cmocka_unit_test(test_dst_new_york),
        cmocka_unit_test(test_kolkata_and_lord_howe),
        cmocka_unit_test(test_pauses),
        cmocka_unit_test(test_next_working),
        cmocka_unit_test(test_around_the_clock),
        cmocka_unit_test(test_properties),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
