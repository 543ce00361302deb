/* score.h — choosing the engineer for a queued assignment request: the filters, the
 * score, the ranking, and the sentences that explain a choice ("why this engineer") or
 * the lack of one (the reason of an assignment.unfilled alert). The assignment worker
 * (assignment.c) keeps the roster of engineers in memory and calls this for every request
 * it takes from dispatch.assign_queue; the database then re-checks its pick (engineer
 * version, availability and capacity) under a row lock.
 *
 * Filters, in order (each count in the funnel is "passed this and every earlier one"):
 *   role          the kind asks for it: diagnosis -> technical_support; work -> by the
 *                 plan's mode (remote -> technical_support, on_site -> field_engineer,
 *                 depot_repair / external_repair -> depot_technician); work without a
 *                 mode: any of the three
 *   skill         a product_line skill named after the ticket's product model, or (no
 *                 product) a category skill named after the ticket's category
 *   region        field engineers only: serves the ticket's region (a ticket without a
 *                 region: any)
 *   available     availability "available" (not away, not on leave)
 *   on_shift      the shift calendar says the engineer works now (next_working(now) ==
 *                 now: half-open intervals, holidays, the zone's DST rules)
 *   not_declined  has not declined this ticket's request of this kind, and was not taken
 *                 off it by a re-dispatch
 *   free_capacity open jobs (offered + accepted assignments) < capacity
 *
 * Score: four terms with values in 0..1 (rounded to 4 decimals), each times its weight;
 * the total (0..1, rounded to 6 decimals) is their sum:
 *   load          0.40  1 - open / capacity: the free share of the engineer's capacity
 *   skill_level   0.30  level / 5 of the skill the ticket needs
 *   sla_slack     0.20  urgency x (1 / (1 + open) + level / 5) / 2: the less slack the
 *                       ticket has, the more an idle and skilled engineer counts
 *   customer_tier 0.10  VIP: level / 5 (VIP tickets prefer the more skilled); standard: 0
 * urgency: from the SLA engine's slack when it has one (1 at or past the deadline, 0 with
 * 24 h or more left, linear in between), else from the priority: P1 1, P2 2/3, P3 1/3,
 * P4 0. Ranking: higher total first; ties go to fewer open jobs, then to the smaller
 * engineer id (as text), so the order is total and deterministic.
 *
 * Pure: no I/O; the clock is a parameter. Owns nothing (the roster entries belong to the
 * caller). */
#ifndef DISPATCH_SCORE_H
#define DISPATCH_SCORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ac_uuid.h"
#include "calendar.h"

/* Roles and availabilities: the values of dispatch_role_names / _availability_names
 * (validate.h), which equal the proto enum numbers. */
enum {
    DISPATCH_ROLE_ANY_WORKER = 0, /* as a need: technical_support, field or depot */
    DISPATCH_ROLE_TECHNICAL_SUPPORT = 1,
    DISPATCH_ROLE_FIELD_ENGINEER = 2,
    DISPATCH_ROLE_DEPOT_TECHNICIAN = 3,
    DISPATCH_ROLE_SUPERVISOR = 4,
    DISPATCH_ROLE_MANAGER = 5,
};
enum {
    DISPATCH_AVAIL_AVAILABLE = 1,
    DISPATCH_AVAIL_AWAY = 2,
    DISPATCH_AVAIL_ON_LEAVE = 3,
};

#define DISPATCH_SCORE_NTERMS 4
#define DISPATCH_W_LOAD       0.40
#define DISPATCH_W_SKILL      0.30
#define DISPATCH_W_SLA        0.20
#define DISPATCH_W_TIER       0.10
#define DISPATCH_SLACK_FULL_S 86400 /* slack at which urgency reaches 0 */
#define DISPATCH_MAX_LEVEL    5

typedef struct dispatch_skill {
    bool is_product_line; /* else a category skill */
    int level;            /* 1..5 */
    char *name;           /* owned by the roster */
} dispatch_skill_t;

/* One engineer as the worker knows it. */
typedef struct dispatch_roster_engineer {
    char id[AC_UUID_STRLEN];
    int64_t version;
    int role;         /* DISPATCH_ROLE_* */
    int availability; /* DISPATCH_AVAIL_* */
    int capacity;     /* open jobs at once */
    int open;         /* open jobs now (offered + accepted) */
    char **regions;   /* owned by the roster */
    size_t nregions;
    dispatch_skill_t *skills; /* owned by the roster */
    size_t nskills;
    const dispatch_calendar_t *shift; /* borrowed; NULL: never on shift (unusable calendar) */
    bool is_on_shift;                 /* as of the last evaluation */
    int64_t shift_check_s;            /* re-evaluate at or after this instant (0: now) */
} dispatch_roster_engineer_t;

/* The ticket as the score sees it. */
typedef struct dispatch_score_ticket {
    int priority;         /* 1..4 for P1..P4 */
    bool is_vip;          /* customer tier */
    bool has_slack;       /* the SLA engine knows the slack */
    int64_t slack_s;      /* seconds to the next SLA deadline; <= 0: due or breached */
    bool is_product_line; /* the skill needed: product_line (else category) ... */
    const char *skill;    /* ... of this name */
} dispatch_score_ticket_t;

/* What a queued request asks for. */
typedef struct dispatch_need {
    int role;                    /* DISPATCH_ROLE_*; 0: any of the three working roles */
    const char *region;          /* field engineers must serve it; NULL or "": any */
    const char *const *excluded; /* engineer ids not to offer it to */
    size_t nexcluded;
    dispatch_score_ticket_t ticket;
} dispatch_need_t;

/* Engineers left after each filter (cumulative). */
typedef struct dispatch_funnel {
    int role, skill, region, available, on_shift, not_declined, free_capacity;
} dispatch_funnel_t;

typedef struct dispatch_score_term {
    const char *name; /* static: "load", "skill_level", "sla_slack", "customer_tier" */
    double value;     /* 0..1 */
    double weight;
    char detail[160]; /* e.g. "2 of 5 open jobs" */
} dispatch_score_term_t;

typedef struct dispatch_score {
    double total; /* sum of value x weight */
    dispatch_score_term_t terms[DISPATCH_SCORE_NTERMS];
} dispatch_score_t;

typedef struct dispatch_choice {
    dispatch_roster_engineer_t *engineer; /* borrowed from the roster */
    int level;                            /* of the needed skill */
    dispatch_score_t score;
} dispatch_choice_t;

/* 0..1, as described above. */
double dispatch_score_urgency(const dispatch_score_ticket_t *t);

/* The score of an engineer with `open` of `capacity` jobs (capacity > 0) and the needed
 * skill at `level` for ticket t. */
void dispatch_score_compute(const dispatch_score_ticket_t *t, int open, int capacity, int level,
                            dispatch_score_t *out);

/* < 0 when a ranks before b, > 0 after, 0 only for the same engineer. */
int dispatch_choice_compare(const dispatch_choice_t *a, const dispatch_choice_t *b);

/* The level (1..5) of e's skill that t needs, 0 when e lacks it. */
int dispatch_engineer_skill_level(const dispatch_roster_engineer_t *e,
                                  const dispatch_score_ticket_t *t);

/* Brings e->is_on_shift up to date for instant now_s (cheap when e->shift_check_s is in the
 * future). Returns 1 when e has just come on shift, else 0. */
int dispatch_engineer_shift_refresh(dispatch_roster_engineer_t *e, int64_t now_s);

/* Runs the filters over roster[0..n) at now_s; fills *funnel and the best (up to) k
 * candidates into top[], best first. Returns how many were written (0: nobody fits). */
size_t dispatch_match(const dispatch_need_t *need, dispatch_roster_engineer_t *const *roster,
                      size_t n, int64_t now_s, dispatch_funnel_t *funnel, dispatch_choice_t *top,
                      size_t k);

/* "technical_support with product_line X200" (+ " in region north" for field work). */
void dispatch_need_describe(const dispatch_need_t *need, char *buf, size_t len);

/* Why nobody fits: names the first filter that left nobody, e.g. "no field_engineer with
 * product_line X200 serves region north (3 have the skill)". */
void dispatch_unfilled_reason(const dispatch_need_t *need, const dispatch_funnel_t *funnel,
                              char *buf, size_t len);

/* Why top[i] was chosen among the funnel's candidates, e.g. "best of 4 candidates:
 * score 0.8530 (next 0.7120); 1 of 5 open jobs, product_line X200 level 5 of 5, urgency
 * 0.67 (P2), standard customer". top[0..ntop) as dispatch_match() returned them. */
void dispatch_why(const dispatch_need_t *need, const dispatch_funnel_t *funnel,
                  const dispatch_choice_t *top, size_t ntop, size_t i, char *buf, size_t len);

#endif
