/* slaclock.c — see slaclock.h. Notes:
 * - Wall time (no calendar, a 24x7 one, or a clock that does not count business time) is
 *   a walk over the sorted pauses in microseconds; business time goes to calendar.c in
 *   whole seconds, the pauses converted there (widened) and the open one left out: a
 *   deadline computed without it is reachable only if it falls before the open pause.
 * - Fractions of a target are offsets in microseconds (llround of f * target), so 0.75 of
 *   a 5 s target is exactly 3.75 s of wall time, or 4 s of business time. */
#include "slaclock.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define US_PER_S    INT64_C(1000000)
#define STACK_SPANS 32

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

static int64_t ceil_div(int64_t a, int64_t b)
{
    return -floor_div(-a, b);
}

static bool is_wall(const dispatch_sla_clock_t *c)
{
    return !c->is_business || !c->cal || dispatch_calendar_is_24x7(c->cal);
}

size_t dispatch_sla_pauses(const dispatch_sla_mark_t *marks, size_t n, int64_t started_at_us,
                           bool stop_pauses, dispatch_sla_span_t *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        bool is_last = i + 1 == n;
        bool is_pause = marks[i].phase == DISPATCH_SLA_PAUSE ||
                        (marks[i].phase == DISPATCH_SLA_STOP && stop_pauses && !is_last);
        if (!is_pause)
            continue;
        int64_t from = marks[i].at_us > started_at_us ? marks[i].at_us : started_at_us;
        int64_t to = is_last ? DISPATCH_SLA_NEVER : marks[i + 1].at_us;
        if (to <= from)
            continue; /* empty, or wholly before the start */
        if (k > 0 && out[k - 1].to_us >= from) {
            if (to > out[k - 1].to_us)
                out[k - 1].to_us = to;
            continue;
        }
        out[k].from_us = from;
        out[k].to_us = to;
        k++;
    }
    return k;
}

/* The closed pauses in whole seconds, widened (start down, end up); the open one, if
 * any, is left out and its start returned in *open_from_us (DISPATCH_SLA_NEVER if none).
 * *spans_out is `stack` or malloc'ed (the caller frees it when it is not `stack`). */
static int pauses_to_s(const dispatch_sla_clock_t *c, dispatch_span_t *stack,
                       dispatch_span_t **spans_out, size_t *n_out, int64_t *open_from_us)
{
    dispatch_span_t *spans = stack;
    size_t k = 0;
    *open_from_us = DISPATCH_SLA_NEVER;
    if (c->n_pauses > STACK_SPANS && !(spans = malloc(c->n_pauses * sizeof *spans)))
        return AC_ERR_NOMEM;
    for (size_t i = 0; i < c->n_pauses; i++) {
        const dispatch_sla_span_t *p = &c->pauses[i];
        if (p->to_us == DISPATCH_SLA_NEVER) {
            *open_from_us = p->from_us;
            break;
        }
        spans[k].from_s = floor_div(p->from_us, US_PER_S);
        spans[k].to_s = ceil_div(p->to_us, US_PER_S);
        k++;
    }
    *spans_out = spans;
    *n_out = k;
    return 0;
}

static int due_wall(const dispatch_sla_clock_t *c, int64_t offset_us, int64_t *due_us)
{
    int64_t t = c->started_at_us, rem = offset_us;
    if (rem == 0) {
        *due_us = t;
        return 0;
    }
    for (size_t i = 0; i < c->n_pauses; i++) {
        const dispatch_sla_span_t *p = &c->pauses[i];
        if (p->from_us > t) {
            int64_t gap = p->from_us - t;
            if (rem <= gap) {
                *due_us = t + rem;
                return 0;
            }
            rem -= gap;
        }
        if (p->to_us == DISPATCH_SLA_NEVER) {
            *due_us = DISPATCH_SLA_NEVER;
            return 0;
        }
        if (p->to_us > t)
            t = p->to_us;
    }
    *due_us = t + rem;
    return 0;
}

int dispatch_sla_due(const dispatch_sla_clock_t *c, int64_t offset_us, int64_t *due_us)
{
    if (offset_us < 0 || c->started_at_us < 0)
        return AC_ERR_INVALID;
    if (is_wall(c))
        return due_wall(c, offset_us, due_us);

    dispatch_span_t stack[STACK_SPANS], *spans = NULL;
    size_t n = 0;
    int64_t open_from_us, due_s = 0;
    int rc = pauses_to_s(c, stack, &spans, &n, &open_from_us);
    if (rc < 0)
        return rc;
    rc = dispatch_calendar_add(c->cal, ceil_div(c->started_at_us, US_PER_S),
                               ceil_div(offset_us, US_PER_S), spans, n, &due_s);
    if (spans != stack)
        free(spans);
    if (rc < 0)
        return rc;
    if (open_from_us != DISPATCH_SLA_NEVER && due_s > floor_div(open_from_us, US_PER_S))
        *due_us = DISPATCH_SLA_NEVER; /* not reached before the pause going on now */
    else
        *due_us = due_s * US_PER_S;
    return 0;
}

int dispatch_sla_elapsed(const dispatch_sla_clock_t *c, int64_t until_us, int64_t *elapsed_us,
                         int64_t *paused_us)
{
    int64_t start = c->started_at_us, paused = 0;
    *elapsed_us = 0;
    *paused_us = 0;
    if (until_us <= start)
        return 0;
    for (size_t i = 0; i < c->n_pauses; i++) {
        int64_t from = c->pauses[i].from_us > start ? c->pauses[i].from_us : start;
        int64_t to = c->pauses[i].to_us < until_us ? c->pauses[i].to_us : until_us;
        if (to > from)
            paused += to - from;
    }
    *paused_us = paused;
    if (is_wall(c)) {
        *elapsed_us = until_us - start - paused;
        return 0;
    }

    int64_t start_s = ceil_div(start, US_PER_S), until_s = floor_div(until_us, US_PER_S);
    if (until_s <= start_s)
        return 0;
    dispatch_span_t stack[STACK_SPANS], *spans = NULL;
    size_t n = 0;
    int64_t open_from_us, e_s = 0;
    int rc = pauses_to_s(c, stack, &spans, &n, &open_from_us);
    if (rc < 0)
        return rc;
    if (open_from_us != DISPATCH_SLA_NEVER) { /* pauses_to_s left room for it */
        int64_t from_s = floor_div(open_from_us, US_PER_S);
        spans[n].from_s = from_s < until_s ? from_s : until_s;
        spans[n].to_s = until_s;
        n++;
    }
    rc = dispatch_calendar_elapsed(c->cal, start_s, until_s, spans, n, &e_s);
    if (spans != stack)
        free(spans);
    if (rc == 0)
        *elapsed_us = e_s * US_PER_S;
    return rc;
}

int dispatch_sla_working_at(const dispatch_calendar_t *cal, int64_t due_us, int64_t *at_us)
{
    *at_us = due_us;
    if (!cal || dispatch_calendar_is_24x7(cal) || due_us == DISPATCH_SLA_NEVER)
        return 0;
    int64_t t_s = floor_div(due_us, US_PER_S), w_s = 0;
    int rc = dispatch_calendar_next_working(cal, t_s, NULL, 0, &w_s);
    if (rc < 0)
        return rc;
    if (w_s != t_s)
        *at_us = w_s * US_PER_S; /* outside working time: the next window opens */
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Fills elapsed/paused at the planned due time. */
static int planned_at(const dispatch_sla_clock_t *c, dispatch_sla_planned_t *p)
{
    p->elapsed_us = 0;
    p->paused_us = 0;
    if (p->due_us == DISPATCH_SLA_NEVER)
        return 0;
    return dispatch_sla_elapsed(c, p->due_us, &p->elapsed_us, &p->paused_us);
}

int dispatch_sla_plan(const dispatch_sla_clock_t *c, const dispatch_sla_targets_t *t,
                      bool is_urgent, dispatch_sla_planned_t *out, size_t *n_out)
{
    double fr[DISPATCH_SLA_MAX_FRACTIONS];
    int64_t breach_us = 0, escalation_us = 0;
    size_t n = 0, nf = t->n_fractions;
    int rc;

    *n_out = 0;
    if (t->target_s <= 0 || t->target_s > DISPATCH_SLA_MAX_TARGET_S || t->grace_s < 0 ||
        t->grace_s > DISPATCH_SLA_MAX_TARGET_S || nf > DISPATCH_SLA_MAX_FRACTIONS ||
        (nf > 0 && !t->fractions))
        return AC_ERR_INVALID;
    for (size_t i = 0; i < nf; i++) {
        if (!isfinite(t->fractions[i]) || t->fractions[i] <= 0 || t->fractions[i] >= 1)
            return AC_ERR_INVALID;
        fr[i] = t->fractions[i];
    }
    qsort(fr, nf, sizeof fr[0], cmp_double);

    if ((rc = dispatch_sla_due(c, t->target_s * US_PER_S, &breach_us)) < 0 ||
        (rc = dispatch_sla_due(c, (t->target_s + t->grace_s) * US_PER_S, &escalation_us)) < 0)
        return rc;

    for (size_t i = 0; i < nf; i++) {
        int64_t due_us = 0;
        if (i > 0 && fr[i] == fr[i - 1])
            continue;
        rc = dispatch_sla_due(c, llround(fr[i] * (double)t->target_s * (double)US_PER_S), &due_us);
        if (rc == 0 && !is_urgent)
            rc = dispatch_sla_working_at(c->cal, due_us, &due_us);
        if (rc < 0)
            return rc;
        if (due_us != DISPATCH_SLA_NEVER && breach_us != DISPATCH_SLA_NEVER && due_us >= breach_us)
            continue; /* it would wait past the breach */
        out[n++] = (dispatch_sla_planned_t){
            .level = DISPATCH_SLA_WARNING, .fraction = fr[i], .due_us = due_us};
    }
    out[n++] = (dispatch_sla_planned_t){
        .level = DISPATCH_SLA_BREACH, .fraction = 1.0, .due_us = breach_us};
    out[n++] = (dispatch_sla_planned_t){.level = DISPATCH_SLA_ESCALATION,
                                        .fraction = 1.0 + (double)t->grace_s / (double)t->target_s,
                                        .due_us = escalation_us};
    for (size_t i = 0; i < n; i++)
        if ((rc = planned_at(c, &out[i])) < 0)
            return rc;
    *n_out = n;
    return 0;
}
