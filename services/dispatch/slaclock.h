/* slaclock.h — the arithmetic of one SLA clock (issue 4, the SLA engine): given when the
 * clock started, the ticket's status history and its policy, where do the escalation
 * deadlines fall, and how much time has counted so far. Built on calendar.h; pure (no
 * database, no loop, no clock reads), so the engine (sla.c) and the unit tests share it.
 *
 * A clock counts from started_at (the ticket's opened_at) either business time in its
 * calendar (is_business) or wall time around the clock, and stands still during pauses.
 * Pauses are not stored: they are derived from the status history every time
 * (dispatch_sla_pauses), so a clock whose policy changes is simply computed again with
 * the new targets over the same history — that is the re-basing rule.
 *
 * Precision: wall time is counted in microseconds. Business time is counted in whole
 * seconds (calendar.h): the start is rounded up to the next second, a pause is widened to
 * whole seconds (start down, end up), a business offset is rounded up; so a business
 * deadline is a whole second and never earlier than the exact one (by < 2 s). Business
 * SLAs are hours long; around-the-clock ones (the short ones of the tests) are exact.
 *
 * Levels of one target (docs/dispatch-api.md, "The SLA engine"):
 *   warning     at each warning fraction f of the target (0 < f < 1; default 0.5, 0.75);
 *               a warning that falls outside the working window of the policy's calendar
 *               (whether or not the clock counts business time) waits for the next working
 *               instant, unless the ticket is urgent (P1); a warning that would then come
 *               at or after the breach is dropped (the breach says more);
 *   breach      at 100 % of the target;
 *   escalation  at the target plus the grace (counted like the target).
 * While the ticket is paused, a deadline the clock had not reached when the pause began
 * has no due time (DISPATCH_SLA_NEVER); the next computation after the pause ends finds
 * it, later by exactly the paused (business) time. */
#ifndef DISPATCH_SLACLOCK_H
#define DISPATCH_SLACLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ac_err.h"
#include "calendar.h"

#define DISPATCH_SLA_NEVER         INT64_MAX         /* no due time / an open pause's end */
#define DISPATCH_SLA_MAX_FRACTIONS 8                 /* warning fractions per policy */
#define DISPATCH_SLA_MAX_TARGET_S  INT64_C(31622400) /* 366 days: targets and grace */

/* What the ticket's status means for a clock, from the mark's instant on. */
typedef enum dispatch_sla_phase {
    DISPATCH_SLA_RUN = 0,   /* being worked on: the clock runs */
    DISPATCH_SLA_PAUSE = 1, /* waiting on the customer or an outside party */
    DISPATCH_SLA_STOP = 2,  /* resolved, closed or cancelled */
} dispatch_sla_phase_t;

/* One status-history entry: from at_us on, the ticket is in `phase`. */
typedef struct dispatch_sla_mark {
    int64_t at_us;
    uint8_t phase; /* dispatch_sla_phase_t */
} dispatch_sla_mark_t;

/* [from_us, to_us): to_us DISPATCH_SLA_NEVER for the pause going on now. */
typedef struct dispatch_sla_span {
    int64_t from_us;
    int64_t to_us;
} dispatch_sla_span_t;

typedef enum dispatch_sla_level {
    DISPATCH_SLA_WARNING = 1, /* values as SlaLevel in dispatch.proto */
    DISPATCH_SLA_BREACH = 2,
    DISPATCH_SLA_ESCALATION = 3,
} dispatch_sla_level_t;

typedef struct dispatch_sla_clock {
    const dispatch_calendar_t *cal; /* borrowed; NULL = around the clock, no working window */
    bool is_business;               /* count business time in cal (else wall time) */
    int64_t started_at_us;
    const dispatch_sla_span_t *pauses; /* borrowed: sorted, disjoint, after started_at; only the
                                        * last may be open (dispatch_sla_pauses() makes them) */
    size_t n_pauses;
} dispatch_sla_clock_t;

typedef struct dispatch_sla_targets {
    int64_t target_s;        /* > 0 */
    int64_t grace_s;         /* >= 0 */
    const double *fractions; /* warning fractions, each in (0, 1); any order */
    size_t n_fractions;      /* <= DISPATCH_SLA_MAX_FRACTIONS */
} dispatch_sla_targets_t;

typedef struct dispatch_sla_planned {
    uint8_t level;      /* dispatch_sla_level_t */
    double fraction;    /* f; 1.0; 1 + grace / target */
    int64_t due_us;     /* DISPATCH_SLA_NEVER while paused before reaching it */
    int64_t elapsed_us; /* counted time at due_us (0 when NEVER) */
    int64_t paused_us;  /* wall time paused between started_at and due_us (0 when NEVER) */
} dispatch_sla_planned_t;

/* The pauses of a clock from the ticket's history (marks in time order; equal instants
 * keep their order, the last one wins). PAUSE phases pause every clock; STOP phases pause
 * the clock only when stop_pauses (the resolution clock, whose ticket can be reopened) and
 * a later mark ends them — a trailing STOP is the clock's end, not a pause. Spans are
 * clipped to start at started_at_us, adjacent ones merged. out has room for n spans.
 * Returns the number written. */
size_t dispatch_sla_pauses(const dispatch_sla_mark_t *marks, size_t n, int64_t started_at_us,
                           bool stop_pauses, dispatch_sla_span_t *out);

/* *due_us = the first instant at which offset_us of counted time has elapsed since the
 * start (DISPATCH_SLA_NEVER when the open pause begins before that). 0, AC_ERR_INVALID
 * (offset < 0, instants out of the calendar's range), AC_ERR_TOOBIG (beyond 2200). */
int dispatch_sla_due(const dispatch_sla_clock_t *c, int64_t offset_us, int64_t *due_us) AC_WUR;

/* Counted time and wall time paused between the start and until_us (0 and 0 before the
 * start). The open pause counts as paused up to until_us. 0 or AC_ERR_INVALID. */
int dispatch_sla_elapsed(const dispatch_sla_clock_t *c, int64_t until_us, int64_t *elapsed_us,
                         int64_t *paused_us) AC_WUR;

/* *at_us = due_us, or the next working instant of cal when due_us is outside its working
 * time (cal NULL or 24x7: due_us). 0 or a calendar error. */
int dispatch_sla_working_at(const dispatch_calendar_t *cal, int64_t due_us, int64_t *at_us) AC_WUR;

/* The deadlines of one target, in this order: warnings by ascending fraction (those
 * dropped left out), breach, escalation. is_urgent (P1): warnings are not held for the
 * working window. out has room for DISPATCH_SLA_MAX_FRACTIONS + 2; *n_out is how many were
 * written. 0, AC_ERR_INVALID (bad targets), or an error of the arithmetic above. */
int dispatch_sla_plan(const dispatch_sla_clock_t *c, const dispatch_sla_targets_t *t,
                      bool is_urgent, dispatch_sla_planned_t *out, size_t *n_out) AC_WUR;

#endif
