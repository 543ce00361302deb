/* test_slaclock.c — one SLA clock's arithmetic (services/dispatch/slaclock.c, included so
 * its statics are in reach; calendar.c comes from dispatch_core): pauses derived from a
 * status history, deadlines of every level across nights, weekends, holidays, time zones
 * and a DST change, with pauses (closed and open), the warning-window rule and its P1
 * exemption, re-basing a clock on a new policy over the same history, microsecond wall
 * time, whole-second business time, and refused targets.
 *
 * Every expected value is worked out by hand in the comment above it. Instants are local
 * RFC 3339 times with the offset in force. Calendar facts: 2026-11-27 is a Friday,
 * 2026-11-30 a Monday, 2026-12-23 a Wednesday; US DST ends 2026-11-01 (EDT -04:00 -> EST
 * -05:00). "Berlin office": Mon-Fri 08:00-12:00 and 13:00-17:00 (working intervals are
 * half-open: 17:00 itself is outside), holidays 24, 25, 26 Dec 2026 and 1 Jan 2027. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dispatch/slaclock.c"

#include "ac_time.h"

#define S(x)  ((int64_t)(x)*1000000)
#define MS(x) ((int64_t)(x)*1000)
#define H(x)  S((int64_t)(x)*3600)
#define M(x)  S((int64_t)(x)*60)
#define NEVER DISPATCH_SLA_NEVER

static const char BERLIN_OFFICE[] =
    "{\"time_zone\":\"Europe/Berlin\",\"working_hours\":{"
    "\"mon\":[\"08:00-12:00\",\"13:00-17:00\"],\"tue\":[\"08:00-12:00\",\"13:00-17:00\"],"
    "\"wed\":[\"08:00-12:00\",\"13:00-17:00\"],\"thu\":[\"08:00-12:00\",\"13:00-17:00\"],"
    "\"fri\":[\"08:00-12:00\",\"13:00-17:00\"]},"
    "\"holidays\":[\"2026-12-24\",\"2026-12-25\",\"2026-12-26\",\"2027-01-01\"]}";

static const char NEW_YORK_OFFICE[] =
    "{\"time_zone\":\"America/New_York\",\"working_hours\":{"
    "\"mon\":[\"09:00-17:00\"],\"tue\":[\"09:00-17:00\"],\"wed\":[\"09:00-17:00\"],"
    "\"thu\":[\"09:00-17:00\"],\"fri\":[\"09:00-17:00\"]}}";

static int64_t T(const char *rfc3339)
{
    int64_t us = 0;
    if (ac_time_parse_rfc3339(rfc3339, &us) != 0)
        fail_msg("bad test time %s", rfc3339);
    return us;
}

static dispatch_calendar_t *cal_new(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    if (!j)
        fail_msg("bad test JSON: %s", jerr.text);
    dispatch_calendar_t *cal = NULL;
    dispatch_cal_err_t err;
    int rc = dispatch_calendar_parse(j, NULL, &cal, &err);
    json_decref(j);
    if (rc != 0)
        fail_msg("calendar refused: %s: %s", err.field, err.message);
    return cal;
}

/* A clock over `marks` (the ticket's history; the first mark is the start). */
typedef struct clock_fx {
    dispatch_sla_span_t spans[16];
    dispatch_sla_clock_t c;
} clock_fx_t;

static void clock_init(clock_fx_t *fx, const dispatch_calendar_t *cal, bool is_business,
                       const dispatch_sla_mark_t *marks, size_t n, bool stop_pauses)
{
    assert_true(n >= 1 && n <= 16);
    memset(fx, 0, sizeof *fx);
    fx->c.cal = cal;
    fx->c.is_business = is_business;
    fx->c.started_at_us = marks[0].at_us;
    fx->c.n_pauses = dispatch_sla_pauses(marks, n, marks[0].at_us, stop_pauses, fx->spans);
    fx->c.pauses = fx->spans;
}

static int64_t due(const dispatch_sla_clock_t *c, int64_t offset_us)
{
    int64_t d = -1;
    assert_int_equal(dispatch_sla_due(c, offset_us, &d), 0);
    return d;
}

static void elapsed(const dispatch_sla_clock_t *c, int64_t until, int64_t want_elapsed,
                    int64_t want_paused)
{
    int64_t e = -1, p = -1;
    assert_int_equal(dispatch_sla_elapsed(c, until, &e, &p), 0);
    assert_int_equal(e, want_elapsed);
    assert_int_equal(p, want_paused);
}

/* Plans and checks the levels: want[] as {level, due_us} in the documented order. */
typedef struct want {
    int level;
    int64_t due_us;
} want_t;

static void plan(const dispatch_sla_clock_t *c, int64_t target_s, int64_t grace_s, const double *fr,
                 size_t nfr, bool is_urgent, const want_t *want, size_t nwant,
                 dispatch_sla_planned_t *out)
{
    dispatch_sla_targets_t t = {
        .target_s = target_s, .grace_s = grace_s, .fractions = fr, .n_fractions = nfr};
    size_t n = 99;
    assert_int_equal(dispatch_sla_plan(c, &t, is_urgent, out, &n), 0);
    assert_int_equal(n, nwant);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(out[i].level, want[i].level);
        if (out[i].due_us != want[i].due_us) {
            char a[AC_TIME_STRLEN], b[AC_TIME_STRLEN];
            fail_msg("level %zu: due %s, expected %s", i,
                     out[i].due_us == NEVER ? "never" : ac_time_format_us(out[i].due_us, a),
                     want[i].due_us == NEVER ? "never" : ac_time_format_us(want[i].due_us, b));
        }
    }
}

/* --- pauses from the status history ---------------------------------------------------- */

static void test_pauses_from_history(void **state)
{
    (void)state;
    dispatch_sla_span_t out[16];
    /* new 10:00, needs_info 10:30, new 11:00, waiting_customer 12:00 and at once back to
     * in_progress 12:00 (an empty pause), resolved 13:00, reopened 14:00, waiting_external
     * 15:00 (going on now) */
    const dispatch_sla_mark_t h[] = {
        {T("2026-11-30T10:00:00Z"), DISPATCH_SLA_RUN},
        {T("2026-11-30T10:30:00Z"), DISPATCH_SLA_PAUSE},
        {T("2026-11-30T11:00:00Z"), DISPATCH_SLA_RUN},
        {T("2026-11-30T12:00:00Z"), DISPATCH_SLA_PAUSE},
        {T("2026-11-30T12:00:00Z"), DISPATCH_SLA_RUN},
        {T("2026-11-30T13:00:00Z"), DISPATCH_SLA_STOP},
        {T("2026-11-30T14:00:00Z"), DISPATCH_SLA_RUN},
        {T("2026-11-30T15:00:00Z"), DISPATCH_SLA_PAUSE},
    };
    /* the resolution clock: 10:30-11:00, the resolved hour 13:00-14:00 (ended by the
     * reopen), and 15:00 open; the empty 12:00 pause is dropped */
    assert_int_equal(dispatch_sla_pauses(h, 8, h[0].at_us, true, out), 3);
    assert_int_equal(out[0].from_us, T("2026-11-30T10:30:00Z"));
    assert_int_equal(out[0].to_us, T("2026-11-30T11:00:00Z"));
    assert_int_equal(out[1].from_us, T("2026-11-30T13:00:00Z"));
    assert_int_equal(out[1].to_us, T("2026-11-30T14:00:00Z"));
    assert_int_equal(out[2].from_us, T("2026-11-30T15:00:00Z"));
    assert_int_equal(out[2].to_us, NEVER);
    /* the other clocks: the resolved hour is not a pause for them */
    assert_int_equal(dispatch_sla_pauses(h, 8, h[0].at_us, false, out), 2);
    assert_int_equal(out[1].from_us, T("2026-11-30T15:00:00Z"));

    /* a trailing stop is the end, not a pause; adjacent pause and stop merge:
     * waiting_customer 10:30, resolved 11:00, reopened 12:00 -> one span 10:30-12:00 */
    const dispatch_sla_mark_t m[] = {
        {T("2026-11-30T10:00:00Z"), DISPATCH_SLA_RUN},
        {T("2026-11-30T10:30:00Z"), DISPATCH_SLA_PAUSE},
        {T("2026-11-30T11:00:00Z"), DISPATCH_SLA_STOP},
        {T("2026-11-30T12:00:00Z"), DISPATCH_SLA_RUN},
        {T("2026-11-30T13:00:00Z"), DISPATCH_SLA_STOP},
    };
    assert_int_equal(dispatch_sla_pauses(m, 5, m[0].at_us, true, out), 1);
    assert_int_equal(out[0].from_us, T("2026-11-30T10:30:00Z"));
    assert_int_equal(out[0].to_us, T("2026-11-30T12:00:00Z"));

    /* clipped to the start: a clock started at 10:45 sees 10:45-11:00 of the first pause */
    assert_int_equal(dispatch_sla_pauses(h, 8, T("2026-11-30T10:45:00Z"), false, out), 2);
    assert_int_equal(out[0].from_us, T("2026-11-30T10:45:00Z"));
    assert_int_equal(out[0].to_us, T("2026-11-30T11:00:00Z"));
}

/* --- around the clock, in microseconds ------------------------------------------------- */

static void test_wall_microseconds(void **state)
{
    (void)state;
    dispatch_sla_planned_t out[10];
    const double fr[] = {0.75, 0.5}; /* any order: planned ascending */
    /* opened 10:00:00.700, no pause, target 5 s, grace 2 s:
     * 0.5 -> +2.5 s = 10:00:03.200; 0.75 -> +3.75 s = 10:00:04.450;
     * breach +5 s = 10:00:05.700; escalation +7 s = 10:00:07.700 */
    const dispatch_sla_mark_t run[] = {{T("2026-11-30T10:00:00.700Z"), DISPATCH_SLA_RUN}};
    clock_fx_t fx;
    clock_init(&fx, NULL, false, run, 1, true);
    const want_t w1[] = {{DISPATCH_SLA_WARNING, T("2026-11-30T10:00:03.200Z")},
                         {DISPATCH_SLA_WARNING, T("2026-11-30T10:00:04.450Z")},
                         {DISPATCH_SLA_BREACH, T("2026-11-30T10:00:05.700Z")},
                         {DISPATCH_SLA_ESCALATION, T("2026-11-30T10:00:07.700Z")}};
    plan(&fx.c, 5, 2, fr, 2, false, w1, 4, out);
    assert_true(out[0].fraction == 0.5 && out[1].fraction == 0.75);
    assert_true(out[2].fraction == 1.0 && out[3].fraction == 1.4); /* 1 + 2 / 5 */
    assert_int_equal(out[1].elapsed_us, MS(3750));
    assert_int_equal(out[2].elapsed_us, S(5));

    /* waiting_customer 10:00:02 .. 10:00:12 (10 s): 0.5 -> 1.3 s before the pause
     * (10:00:00.7-10:00:02), 1.2 s after it -> 10:00:13.200; 0.75 -> 3.75 - 1.3 = 2.45 s
     * after -> 10:00:14.450; breach 10:00:15.700; escalation 10:00:17.700. Each 10 s
     * later: the paused time. At the breach, 10 s were paused and 5 s counted. */
    const dispatch_sla_mark_t paused[] = {{T("2026-11-30T10:00:00.700Z"), DISPATCH_SLA_RUN},
                                          {T("2026-11-30T10:00:02Z"), DISPATCH_SLA_PAUSE},
                                          {T("2026-11-30T10:00:12Z"), DISPATCH_SLA_RUN}};
    clock_init(&fx, NULL, false, paused, 3, true);
    const want_t w2[] = {{DISPATCH_SLA_WARNING, T("2026-11-30T10:00:13.200Z")},
                         {DISPATCH_SLA_WARNING, T("2026-11-30T10:00:14.450Z")},
                         {DISPATCH_SLA_BREACH, T("2026-11-30T10:00:15.700Z")},
                         {DISPATCH_SLA_ESCALATION, T("2026-11-30T10:00:17.700Z")}};
    plan(&fx.c, 5, 2, fr, 2, false, w2, 4, out);
    assert_int_equal(out[2].elapsed_us, S(5));
    assert_int_equal(out[2].paused_us, S(10));
    /* at 10:00:05 (inside the pause): 1.3 s counted, 3 s paused */
    elapsed(&fx.c, T("2026-11-30T10:00:05Z"), MS(1300), S(3));

    /* the pause is going on (no mark ends it): 0.25 (1.25 s) was reached before it, at
     * 10:00:01.950; everything later has no due time yet */
    const double quarter[] = {0.25, 0.5};
    clock_init(&fx, NULL, false, paused, 2, true);
    const want_t w3[] = {{DISPATCH_SLA_WARNING, T("2026-11-30T10:00:01.950Z")},
                         {DISPATCH_SLA_WARNING, NEVER},
                         {DISPATCH_SLA_BREACH, NEVER},
                         {DISPATCH_SLA_ESCALATION, NEVER}};
    plan(&fx.c, 5, 2, quarter, 2, false, w3, 4, out);
    assert_int_equal(out[1].elapsed_us, 0);
    /* at 10:00:30: 1.3 s counted, 28 s paused (the open pause counts up to now) */
    elapsed(&fx.c, T("2026-11-30T10:00:30Z"), MS(1300), S(28));
    /* before the start: nothing */
    elapsed(&fx.c, T("2026-11-30T10:00:00Z"), 0, 0);
}

/* --- business time --------------------------------------------------------------------- */

static void test_business_weekend(void **state)
{
    (void)state;
    dispatch_sla_planned_t out[10];
    dispatch_calendar_t *cal = cal_new(BERLIN_OFFICE);
    const double fr[] = {0.5, 0.75};
    /* opened Fri 27 Nov 15:30:00.250 -> counted from 15:30:01 (whole seconds, rounded up).
     * Target 8 h, grace 2 h. Friday gives 15:30:01-17:00 = 1:29:59.
     *   0.5 = 4 h: 2:30:01 left -> Mon 30 Nov 08:00 + 2:30:01 = 10:30:01
     *   0.75 = 6 h: 4:30:01 left -> Mon 08-12 (4 h), 13:00 + 0:30:01 = 13:30:01
     *   breach 8 h: 6:30:01 left -> Mon 08-12, 13:00 + 2:30:01 = 15:30:01
     *   escalation 10 h: 8:30:01 left -> Mon 8 h, Tue 1 Dec 08:00 + 0:30:01 = 08:30:01 */
    const dispatch_sla_mark_t h[] = {{T("2026-11-27T15:30:00.250+01:00"), DISPATCH_SLA_RUN}};
    clock_fx_t fx;
    clock_init(&fx, cal, true, h, 1, true);
    const want_t w[] = {{DISPATCH_SLA_WARNING, T("2026-11-30T10:30:01+01:00")},
                        {DISPATCH_SLA_WARNING, T("2026-11-30T13:30:01+01:00")},
                        {DISPATCH_SLA_BREACH, T("2026-11-30T15:30:01+01:00")},
                        {DISPATCH_SLA_ESCALATION, T("2026-12-01T08:30:01+01:00")}};
    plan(&fx.c, 8 * 3600, 2 * 3600, fr, 2, false, w, 4, out);
    assert_int_equal(out[2].elapsed_us, H(8));
    assert_int_equal(out[3].elapsed_us, H(10));
    assert_int_equal(out[3].paused_us, 0);
    /* elapsed at Mon 09:00: Fri 1:29:59 + Mon 1 h = 2:29:59 */
    elapsed(&fx.c, T("2026-11-30T09:00:00+01:00"), H(2) + M(29) + S(59), 0);
    dispatch_calendar_destroy(&cal);
}

static void test_warning_window(void **state)
{
    (void)state;
    dispatch_sla_planned_t out[10];
    dispatch_calendar_t *cal = cal_new(BERLIN_OFFICE);
    clock_fx_t fx;
    /* Business clock, opened Mon 30 Nov 09:00, target 14 h, grace 1 h, warnings 0.5, 0.75:
     *   0.5 = 7 h: Mon 09-12 (3 h) + 13-17 (4 h) -> Mon 17:00, the end of the day, which is
     *     outside working time -> it waits for Tue 1 Dec 08:00 (still before the breach);
     *   0.75 = 10.5 h: Mon 7 h, Tue 08:00 + 3:30 = 11:30 (working time: unchanged);
     *   breach 14 h: Mon 7 h, Tue 08-12 (4 h), 13:00 + 3 h = 16:00;
     *   escalation 15 h: Tue 17:00 (escalations are not held). */
    const double fr[] = {0.5, 0.75};
    const dispatch_sla_mark_t h[] = {{T("2026-11-30T09:00:00+01:00"), DISPATCH_SLA_RUN}};
    clock_init(&fx, cal, true, h, 1, true);
    const want_t w[] = {{DISPATCH_SLA_WARNING, T("2026-12-01T08:00:00+01:00")},
                        {DISPATCH_SLA_WARNING, T("2026-12-01T11:30:00+01:00")},
                        {DISPATCH_SLA_BREACH, T("2026-12-01T16:00:00+01:00")},
                        {DISPATCH_SLA_ESCALATION, T("2026-12-01T17:00:00+01:00")}};
    plan(&fx.c, 14 * 3600, 3600, fr, 2, false, w, 4, out);
    /* held overnight, no working time passed: still 7 h counted at Tue 08:00 */
    assert_int_equal(out[0].elapsed_us, H(7));
    /* P1: the warning is not held: Mon 17:00 */
    const want_t w1[] = {{DISPATCH_SLA_WARNING, T("2026-11-30T17:00:00+01:00")},
                         {DISPATCH_SLA_WARNING, T("2026-12-01T11:30:00+01:00")},
                         {DISPATCH_SLA_BREACH, T("2026-12-01T16:00:00+01:00")},
                         {DISPATCH_SLA_ESCALATION, T("2026-12-01T17:00:00+01:00")}};
    plan(&fx.c, 14 * 3600, 3600, fr, 2, true, w1, 4, out);

    /* An around-the-clock clock with the office as its working window: opened Fri 27 Nov
     * 16:00, target 4 h of wall time, grace 1 h, warnings 0.1, 0.25, 0.5:
     *   0.1 = 24 min -> Fri 16:24, working time: kept;
     *   0.25 = 1 h -> Fri 17:00 (outside) -> Mon 08:00, after the breach: dropped;
     *   0.5 = 2 h -> Fri 18:00 (outside) -> Mon 08:00: dropped;
     *   breach Fri 20:00, escalation Fri 21:00 (wall time, whatever the window). */
    const double fr3[] = {0.1, 0.25, 0.5};
    const dispatch_sla_mark_t f[] = {{T("2026-11-27T16:00:00+01:00"), DISPATCH_SLA_RUN}};
    clock_init(&fx, cal, false, f, 1, true);
    const want_t w2[] = {{DISPATCH_SLA_WARNING, T("2026-11-27T16:24:00+01:00")},
                         {DISPATCH_SLA_BREACH, T("2026-11-27T20:00:00+01:00")},
                         {DISPATCH_SLA_ESCALATION, T("2026-11-27T21:00:00+01:00")}};
    plan(&fx.c, 4 * 3600, 3600, fr3, 3, false, w2, 3, out);
    /* the same ticket at P1: every warning at its own time */
    const want_t w3[] = {{DISPATCH_SLA_WARNING, T("2026-11-27T16:24:00+01:00")},
                         {DISPATCH_SLA_WARNING, T("2026-11-27T17:00:00+01:00")},
                         {DISPATCH_SLA_WARNING, T("2026-11-27T18:00:00+01:00")},
                         {DISPATCH_SLA_BREACH, T("2026-11-27T20:00:00+01:00")},
                         {DISPATCH_SLA_ESCALATION, T("2026-11-27T21:00:00+01:00")}};
    plan(&fx.c, 4 * 3600, 3600, fr3, 3, true, w3, 5, out);
    dispatch_calendar_destroy(&cal);
}

static void test_time_zone_and_dst(void **state)
{
    (void)state;
    dispatch_sla_planned_t out[10];
    dispatch_calendar_t *cal = cal_new(NEW_YORK_OFFICE);
    clock_fx_t fx;
    /* New York, Mon-Fri 09:00-17:00. Opened Fri 30 Oct 2026 16:00 EDT (20:00Z), target
     * 8 h, grace 4 h, one warning at 0.5:
     *   Friday gives 16:00-17:00 (1 h); the clocks go back on Sun 1 Nov;
     *   0.5 = 4 h: Mon 2 Nov 09:00 EST + 3 h = 12:00 EST (17:00Z);
     *   breach 8 h: Mon 09:00 + 7 h = 16:00 EST = 21:00Z — 73 h of wall time after the
     *     start, where the same local times a week earlier would be 72 h apart;
     *   escalation 12 h: Mon 8 h, Tue 3 Nov 09:00 + 3 h = 12:00 EST. */
    const double fr[] = {0.5};
    const dispatch_sla_mark_t h[] = {{T("2026-10-30T16:00:00-04:00"), DISPATCH_SLA_RUN}};
    clock_init(&fx, cal, true, h, 1, true);
    const want_t w[] = {{DISPATCH_SLA_WARNING, T("2026-11-02T12:00:00-05:00")},
                        {DISPATCH_SLA_BREACH, T("2026-11-02T16:00:00-05:00")},
                        {DISPATCH_SLA_ESCALATION, T("2026-11-03T12:00:00-05:00")}};
    plan(&fx.c, 8 * 3600, 4 * 3600, fr, 1, false, w, 3, out);
    assert_int_equal(out[1].due_us - h[0].at_us, H(73));
    dispatch_calendar_destroy(&cal);
}

static void test_holidays_and_pauses(void **state)
{
    (void)state;
    dispatch_sla_planned_t out[10];
    dispatch_calendar_t *cal = cal_new(BERLIN_OFFICE);
    clock_fx_t fx;
    /* Opened Wed 23 Dec 10:00, waiting_customer 11:00 .. 15:00, target 8 h, grace 1 h,
     * warning 0.5:
     *   Wed 10-11 (1 h), paused until 15:00, 15-17 (2 h): 3 h on Wednesday;
     *   Thu 24, Fri 25 and Sat 26 are holidays, Sunday is off;
     *   0.5 = 4 h: Mon 28 Dec 08:00 + 1 h = 09:00;
     *   breach 8 h: Mon 08-12 (4 h), 13:00 + 1 h = 14:00;
     *   escalation 9 h: Mon 15:00.
     * At the breach, 8 h counted and 4 h (wall) paused. */
    const double fr[] = {0.5};
    const dispatch_sla_mark_t h[] = {{T("2026-12-23T10:00:00+01:00"), DISPATCH_SLA_RUN},
                                     {T("2026-12-23T11:00:00+01:00"), DISPATCH_SLA_PAUSE},
                                     {T("2026-12-23T15:00:00+01:00"), DISPATCH_SLA_RUN}};
    clock_init(&fx, cal, true, h, 3, true);
    const want_t w[] = {{DISPATCH_SLA_WARNING, T("2026-12-28T09:00:00+01:00")},
                        {DISPATCH_SLA_BREACH, T("2026-12-28T14:00:00+01:00")},
                        {DISPATCH_SLA_ESCALATION, T("2026-12-28T15:00:00+01:00")}};
    plan(&fx.c, 8 * 3600, 3600, fr, 1, false, w, 3, out);
    assert_int_equal(out[1].elapsed_us, H(8));
    assert_int_equal(out[1].paused_us, H(4));

    /* The pause still going on (no 15:00 mark): 0.25 = 2 h would be Wed 12:00 — after the
     * pause began at 11:00, so no due time; at Wed 16:00, 1 h counted and 5 h paused. */
    const double q[] = {0.25};
    clock_init(&fx, cal, true, h, 2, true);
    const want_t wq[] = {{DISPATCH_SLA_WARNING, NEVER},
                         {DISPATCH_SLA_BREACH, NEVER},
                         {DISPATCH_SLA_ESCALATION, NEVER}};
    plan(&fx.c, 8 * 3600, 3600, q, 1, false, wq, 3, out);
    elapsed(&fx.c, T("2026-12-23T16:00:00+01:00"), H(1), H(5));
    /* a deadline reached exactly when the pause began keeps its time: 1 h -> Wed 11:00 */
    assert_int_equal(due(&fx.c, H(1)), T("2026-12-23T11:00:00+01:00"));
    dispatch_calendar_destroy(&cal);
}

static void test_rebase_on_new_policy(void **state)
{
    (void)state;
    dispatch_sla_planned_t out[10];
    dispatch_calendar_t *cal = cal_new(BERLIN_OFFICE);
    clock_fx_t fx;
    /* The ticket of test_holidays_and_pauses changes priority on Mon 28 Dec; its new policy
     * has a 4 h target (grace 30 min, warning 0.5) and is computed again over the same
     * history: Wednesday counts 3 h as before (the 11:00-15:00 pause is applied again), so
     *   0.5 = 2 h: Wed 10-11, 15:00 + 1 h = Wed 16:00;
     *   breach 4 h: 3 h on Wednesday, Mon 28 Dec 08:00 + 1 h = 09:00;
     *   escalation 4.5 h: Mon 09:30.
     * As a P1 ticket nothing changes: every due time is inside working time already. */
    const double fr[] = {0.5};
    const dispatch_sla_mark_t h[] = {{T("2026-12-23T10:00:00+01:00"), DISPATCH_SLA_RUN},
                                     {T("2026-12-23T11:00:00+01:00"), DISPATCH_SLA_PAUSE},
                                     {T("2026-12-23T15:00:00+01:00"), DISPATCH_SLA_RUN}};
    clock_init(&fx, cal, true, h, 3, true);
    const want_t w[] = {{DISPATCH_SLA_WARNING, T("2026-12-23T16:00:00+01:00")},
                        {DISPATCH_SLA_BREACH, T("2026-12-28T09:00:00+01:00")},
                        {DISPATCH_SLA_ESCALATION, T("2026-12-28T09:30:00+01:00")}};
    plan(&fx.c, 4 * 3600, 1800, fr, 1, false, w, 3, out);
    plan(&fx.c, 4 * 3600, 1800, fr, 1, true, w, 3, out);
    /* and around the clock instead (a 24x7 policy): 4 h of wall time, 4 h paused ->
     * Wed 10:00 + 8 h = 18:00; 0.5 -> 10:00 + 1 h, paused, 15:00 + 1 h = 16:00 */
    clock_init(&fx, NULL, false, h, 3, true);
    const want_t w2[] = {{DISPATCH_SLA_WARNING, T("2026-12-23T16:00:00+01:00")},
                         {DISPATCH_SLA_BREACH, T("2026-12-23T18:00:00+01:00")},
                         {DISPATCH_SLA_ESCALATION, T("2026-12-23T18:30:00+01:00")}};
    plan(&fx.c, 4 * 3600, 1800, fr, 1, false, w2, 3, out);
    dispatch_calendar_destroy(&cal);
}

static void test_whole_seconds(void **state)
{
    (void)state;
    dispatch_calendar_t *cal = cal_new(BERLIN_OFFICE);
    clock_fx_t fx;
    /* business time counts whole seconds: opened Mon 10:00:00.250 counts from 10:00:01;
     * at 10:00:10.900 that is 10:00:01..10:00:10 = 9 s; wall time would be 10.65 s */
    const dispatch_sla_mark_t h[] = {{T("2026-11-30T10:00:00.250+01:00"), DISPATCH_SLA_RUN}};
    clock_init(&fx, cal, true, h, 1, true);
    elapsed(&fx.c, T("2026-11-30T10:00:10.900+01:00"), S(9), 0);
    /* 2.5 s of business time -> 3 s (rounded up) from 10:00:01 = 10:00:04 */
    assert_int_equal(due(&fx.c, MS(2500)), T("2026-11-30T10:00:04+01:00"));
    clock_init(&fx, cal, false, h, 1, true);
    elapsed(&fx.c, T("2026-11-30T10:00:10.900+01:00"), MS(10650), 0);
    /* a 24x7 calendar counts business time in microseconds too */
    dispatch_calendar_t *always = dispatch_calendar_new_24x7();
    clock_init(&fx, always, true, h, 1, true);
    assert_int_equal(due(&fx.c, MS(2500)), T("2026-11-30T10:00:02.750+01:00"));
    dispatch_calendar_destroy(&always);
    dispatch_calendar_destroy(&cal);
}

/* due() and elapsed() agree on random histories: elapsed(due(x)) == x around the clock,
 * and x rounded up to a second in business time (never less). */
static uint64_t rng_state = 42;
static uint64_t rng(void)
{
    uint64_t z = (rng_state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static void test_due_and_elapsed_agree(void **state)
{
    (void)state;
    dispatch_calendar_t *cal = cal_new(BERLIN_OFFICE);
    for (int round = 0; round < 400; round++) {
        dispatch_sla_mark_t h[10];
        int64_t t = T("2026-11-02T00:00:00Z") + (int64_t)(rng() % (uint64_t)H(24 * 60));
        size_t n = 1 + rng() % 9;
        for (size_t i = 0; i < n; i++) {
            h[i].at_us = t;
            h[i].phase = i == 0 ? DISPATCH_SLA_RUN : (uint8_t)(rng() % 3);
            t += (int64_t)(rng() % (uint64_t)H(30));
        }
        bool is_business = round % 2;
        clock_fx_t fx;
        clock_init(&fx, cal, is_business, h, n, round % 3 == 0);
        int64_t x = (int64_t)(rng() % (uint64_t)H(200)) + 1, e = 0, p = 0;
        int64_t d = due(&fx.c, x);
        if (d == NEVER)
            continue;
        assert_int_equal(dispatch_sla_elapsed(&fx.c, d, &e, &p), 0);
        if (is_business)
            assert_int_equal(e, (x + S(1) - 1) / S(1) * S(1));
        else
            assert_int_equal(e, x);
    }
    dispatch_calendar_destroy(&cal);
}

static void test_refused(void **state)
{
    (void)state;
    dispatch_sla_planned_t out[10];
    size_t n = 7;
    const dispatch_sla_mark_t h[] = {{T("2026-11-30T10:00:00Z"), DISPATCH_SLA_RUN}};
    clock_fx_t fx;
    clock_init(&fx, NULL, false, h, 1, true);
    const double ok[] = {0.5};
    const double zero[] = {0.0}, one[] = {1.0}, neg[] = {-0.5}, nan_[] = {NAN};
    const double many[9] = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9};
    const dispatch_sla_targets_t bad[] = {
        {.target_s = 0, .fractions = ok, .n_fractions = 1},
        {.target_s = -60, .fractions = ok, .n_fractions = 1},
        {.target_s = DISPATCH_SLA_MAX_TARGET_S + 1},
        {.target_s = 60, .grace_s = -1},
        {.target_s = 60, .fractions = zero, .n_fractions = 1},
        {.target_s = 60, .fractions = one, .n_fractions = 1},
        {.target_s = 60, .fractions = neg, .n_fractions = 1},
        {.target_s = 60, .fractions = nan_, .n_fractions = 1},
        {.target_s = 60, .fractions = many, .n_fractions = 9},
    };
    for (size_t i = 0; i < AC_ARRAY_LEN(bad); i++) {
        assert_int_equal(dispatch_sla_plan(&fx.c, &bad[i], false, out, &n), AC_ERR_INVALID);
        assert_int_equal(n, 0);
    }
    int64_t d = 0;
    assert_int_equal(dispatch_sla_due(&fx.c, -1, &d), AC_ERR_INVALID);
    /* duplicate fractions count once; no warnings at all is fine */
    const double dup[] = {0.5, 0.5};
    dispatch_sla_targets_t t = {.target_s = 60, .fractions = dup, .n_fractions = 2};
    assert_int_equal(dispatch_sla_plan(&fx.c, &t, false, out, &n), 0);
    assert_int_equal(n, 3);
    t.n_fractions = 0;
    assert_int_equal(dispatch_sla_plan(&fx.c, &t, false, out, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(out[0].level, DISPATCH_SLA_BREACH);
    assert_int_equal(out[1].due_us, out[0].due_us); /* grace 0: escalation at the breach */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pauses_from_history),   cmocka_unit_test(test_wall_microseconds),
        cmocka_unit_test(test_business_weekend),      cmocka_unit_test(test_warning_window),
        cmocka_unit_test(test_time_zone_and_dst),     cmocka_unit_test(test_holidays_and_pauses),
        cmocka_unit_test(test_rebase_on_new_policy),  cmocka_unit_test(test_whole_seconds),
        cmocka_unit_test(test_due_and_elapsed_agree), cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
