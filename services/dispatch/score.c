/* score.c — see score.h. */
#include "score.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static const char *const role_names[] = {
    "engineer", "technical_support", "field_engineer", "depot_technician", "supervisor", "manager",
};

static const char *role_name(int role)
{
    return role >= 0 && role < (int)(sizeof role_names / sizeof role_names[0]) ? role_names[role]
                                                                               : "engineer";
}

/* Values are shown and stored rounded, and the total is computed from what is shown. */
static double round_to(double x, double scale)
{
    return (double)(int64_t)(x * scale + (x >= 0 ? 0.5 : -0.5)) / scale;
}

double dispatch_score_urgency(const dispatch_score_ticket_t *t)
{
    if (t->has_slack) {
        if (t->slack_s <= 0)
            return 1.0;
        if (t->slack_s >= DISPATCH_SLACK_FULL_S)
            return 0.0;
        return 1.0 - (double)t->slack_s / DISPATCH_SLACK_FULL_S;
    }
    switch (t->priority) {
    case 1:
        return 1.0;
    case 2:
        return 2.0 / 3.0;
    case 3:
        return 1.0 / 3.0;
    default:
        return 0.0;
    }
}

static void format_duration(int64_t s, char *buf, size_t len)
{
    if (s <= 0)
        snprintf(buf, len, "deadline due");
    else if (s < 3600)
        snprintf(buf, len, "%" PRId64 "m to the SLA deadline", (s + 59) / 60);
    else
        snprintf(buf, len, "%" PRId64 "h%02" PRId64 "m to the SLA deadline", s / 3600,
                 (s % 3600) / 60);
}

/* The numbers only (dispatch_match() scores every candidate); details: see below. */
static void score_values(const dispatch_score_ticket_t *t, int open, int capacity, int level,
                         dispatch_score_t *out)
{
    double free_share = capacity > 0 ? 1.0 - (double)open / capacity : 0.0;
    double skill = (double)level / DISPATCH_MAX_LEVEL;
    double urgency = dispatch_score_urgency(t);
    dispatch_score_term_t *term = out->terms;

    if (free_share < 0)
        free_share = 0;
    term[0].name = "load";
    term[0].weight = DISPATCH_W_LOAD;
    term[0].value = round_to(free_share, 1e4);
    term[1].name = "skill_level";
    term[1].weight = DISPATCH_W_SKILL;
    term[1].value = round_to(skill, 1e4);
    term[2].name = "sla_slack";
    term[2].weight = DISPATCH_W_SLA;
    term[2].value = round_to(urgency * (1.0 / (1 + open) + skill) / 2, 1e4);
    term[3].name = "customer_tier";
    term[3].weight = DISPATCH_W_TIER;
    term[3].value = t->is_vip ? round_to(skill, 1e4) : 0.0;
    double total = 0;
    for (int i = 0; i < DISPATCH_SCORE_NTERMS; i++)
        total += term[i].value * term[i].weight;
    out->total = round_to(total, 1e6);
}

static void score_details(const dispatch_score_ticket_t *t, int open, int capacity, int level,
                          dispatch_score_t *out)
{
    dispatch_score_term_t *term = out->terms;
    char when[48];

    snprintf(term[0].detail, sizeof term[0].detail, "%d of %d open jobs", open, capacity);
    snprintf(term[1].detail, sizeof term[1].detail, "%s %.100s level %d of %d",
             t->is_product_line ? "product_line" : "category", t->skill ? t->skill : "", level,
             DISPATCH_MAX_LEVEL);
    if (t->has_slack)
        format_duration(t->slack_s, when, sizeof when);
    else
        snprintf(when, sizeof when, "P%d, no SLA clock", t->priority);
    snprintf(term[2].detail, sizeof term[2].detail, "urgency %.2f (%s); %d open jobs, level %d",
             dispatch_score_urgency(t), when, open, level);
    if (t->is_vip)
        snprintf(term[3].detail, sizeof term[3].detail, "VIP customer: skill level %d counts",
                 level);
    else
        snprintf(term[3].detail, sizeof term[3].detail, "standard customer");
}

void dispatch_score_compute(const dispatch_score_ticket_t *t, int open, int capacity, int level,
                            dispatch_score_t *out)
{
    memset(out, 0, sizeof *out);
    score_values(t, open, capacity, level, out);
    score_details(t, open, capacity, level, out);
}

int dispatch_choice_compare(const dispatch_choice_t *a, const dispatch_choice_t *b)
{
    if (a->score.total != b->score.total)
        return a->score.total > b->score.total ? -1 : 1;
    if (a->engineer->open != b->engineer->open)
        return a->engineer->open < b->engineer->open ? -1 : 1;
    return strcmp(a->engineer->id, b->engineer->id);
}

int dispatch_engineer_skill_level(const dispatch_roster_engineer_t *e,
                                  const dispatch_score_ticket_t *t)
{
    if (!t->skill || !t->skill[0])
        return 0;
    for (size_t i = 0; i < e->nskills; i++)
        if (e->skills[i].is_product_line == t->is_product_line &&
            strcmp(e->skills[i].name, t->skill) == 0)
            return e->skills[i].level;
    return 0;
}

int dispatch_engineer_shift_refresh(dispatch_roster_engineer_t *e, int64_t now_s)
{
    bool was = e->is_on_shift;
    int64_t at;

    if (e->shift_check_s > now_s)
        return 0;
    if (!e->shift) {
        e->is_on_shift = false;
        e->shift_check_s = INT64_MAX;
        return 0;
    }
    if (dispatch_calendar_is_24x7(e->shift)) {
        e->is_on_shift = true;
        e->shift_check_s = INT64_MAX;
    } else if (dispatch_calendar_next_working(e->shift, now_s, NULL, 0, &at) < 0) {
        e->is_on_shift = false; /* no working time before 2200, or an instant out of range */
        e->shift_check_s = now_s + 3600;
    } else if (at <= now_s) {
        /* working now; shift boundaries are whole local minutes, and every zone in use is
         * a whole number of minutes off UTC, so the state can only change at a UTC minute */
        e->is_on_shift = true;
        e->shift_check_s = now_s - (now_s % 60) + 60;
    } else {
        e->is_on_shift = false;
        e->shift_check_s = at;
    }
    return e->is_on_shift && !was;
}

static bool serves_region(const dispatch_roster_engineer_t *e, const char *region)
{
    for (size_t i = 0; i < e->nregions; i++)
        if (strcmp(e->regions[i], region) == 0)
            return true;
    return false;
}

static bool is_excluded(const dispatch_need_t *need, const char *id)
{
    for (size_t i = 0; i < need->nexcluded; i++)
        if (need->excluded[i] && strcmp(need->excluded[i], id) == 0)
            return true;
    return false;
}

static bool has_role(const dispatch_need_t *need, int role)
{
    if (need->role != DISPATCH_ROLE_ANY_WORKER)
        return role == need->role;
    return role == DISPATCH_ROLE_TECHNICAL_SUPPORT || role == DISPATCH_ROLE_FIELD_ENGINEER ||
           role == DISPATCH_ROLE_DEPOT_TECHNICIAN;
}

/* Inserts c into top[0..*n) (sorted, at most k) when it ranks high enough. */
static void top_insert(dispatch_choice_t *top, size_t *n, size_t k, const dispatch_choice_t *c)
{
    size_t i = *n;
    if (k == 0)
        return;
    if (*n == k) {
        if (dispatch_choice_compare(c, &top[k - 1]) >= 0)
            return;
        i = k - 1; /* the last one drops out */
    } else {
        (*n)++;
    }
    while (i > 0 && dispatch_choice_compare(c, &top[i - 1]) < 0) {
        top[i] = top[i - 1];
        i--;
    }
    top[i] = *c;
}

size_t dispatch_match(const dispatch_need_t *need, dispatch_roster_engineer_t *const *roster,
                      size_t n, int64_t now_s, dispatch_funnel_t *funnel, dispatch_choice_t *top,
                      size_t k)
{
    size_t ntop = 0;
    bool is_field = need->role == DISPATCH_ROLE_FIELD_ENGINEER;
    const char *region = need->region && need->region[0] ? need->region : NULL;

    memset(funnel, 0, sizeof *funnel);
    for (size_t i = 0; i < n; i++) {
        dispatch_roster_engineer_t *e = roster[i];
        dispatch_choice_t c;
        int level;

        if (!has_role(need, e->role))
            continue;
        funnel->role++;
        if ((level = dispatch_engineer_skill_level(e, &need->ticket)) == 0)
            continue;
        funnel->skill++;
        if ((is_field || e->role == DISPATCH_ROLE_FIELD_ENGINEER) && region &&
            !serves_region(e, region))
            continue;
        funnel->region++;
        if (e->availability != DISPATCH_AVAIL_AVAILABLE)
            continue;
        funnel->available++;
        (void)dispatch_engineer_shift_refresh(e, now_s);
        if (!e->is_on_shift)
            continue;
        funnel->on_shift++;
        if (is_excluded(need, e->id))
            continue;
        funnel->not_declined++;
        if (e->open >= e->capacity)
            continue;
        funnel->free_capacity++;
        c.engineer = e;
        c.level = level;
        score_values(&need->ticket, e->open, e->capacity, level, &c.score);
        top_insert(top, &ntop, k, &c);
    }
    for (size_t i = 0; i < ntop; i++) /* the sentences, for the few that may be shown */
        score_details(&need->ticket, top[i].engineer->open, top[i].engineer->capacity, top[i].level,
                      &top[i].score);
    return ntop;
}

void dispatch_need_describe(const dispatch_need_t *need, char *buf, size_t len)
{
    const char *region = need->region && need->region[0] ? need->region : NULL;
    int n = snprintf(buf, len, "%s with %s %.100s", role_name(need->role),
                     need->ticket.is_product_line ? "product_line" : "category",
                     need->ticket.skill ? need->ticket.skill : "");
    if (region && need->role == DISPATCH_ROLE_FIELD_ENGINEER && n > 0 && (size_t)n < len)
        snprintf(buf + n, len - (size_t)n, " in region %.100s", region);
}

void dispatch_unfilled_reason(const dispatch_need_t *need, const dispatch_funnel_t *f, char *buf,
                              size_t len)
{
    char what[320];
    const char *skill = need->ticket.skill ? need->ticket.skill : "";
    const char *kind = need->ticket.is_product_line ? "product_line" : "category";

    dispatch_need_describe(need, what, sizeof what);
    if (f->role == 0)
        snprintf(buf, len, "no engineer has the role %s", role_name(need->role));
    else if (f->skill == 0)
        snprintf(buf, len, "no %s has the skill %s %.100s (%d with the role)",
                 role_name(need->role), kind, skill, f->role);
    else if (f->region == 0)
        snprintf(buf, len, "no %s with %s %.100s serves region %.100s (%d have the skill)",
                 role_name(need->role), kind, skill, need->region ? need->region : "", f->skill);
    else if (f->available == 0)
        snprintf(buf, len, "no %s is available (%d away or on leave)", what, f->region);
    else if (f->on_shift == 0)
        snprintf(buf, len, "no %s is on shift now (%d available, off shift)", what, f->available);
    else if (f->not_declined == 0)
        snprintf(buf, len, "every %s on shift (%d) has declined this ticket", what, f->on_shift);
    else if (f->free_capacity == 0)
        snprintf(buf, len, "every %s on shift is at capacity (%d)", what, f->not_declined);
    else
        snprintf(buf, len, "%d %s could take it, but none in time", f->free_capacity, what);
}

void dispatch_why(const dispatch_need_t *need, const dispatch_funnel_t *funnel,
                  const dispatch_choice_t *top, size_t ntop, size_t i, char *buf, size_t len)
{
    assert(top != NULL); /* top[i] (i < ntop) is the choice explained */
    const dispatch_choice_t *c = &top[i];
    const dispatch_choice_t *next = i + 1 < ntop ? &top[i + 1] : (i > 0 ? &top[0] : NULL);
    char rank[64], against[64];

    if (i == 0)
        snprintf(rank, sizeof rank, "best of %d candidate%s", funnel->free_capacity,
                 funnel->free_capacity == 1 ? "" : "s");
    else
        snprintf(rank, sizeof rank, "choice %zu of %d candidates (the better ones were taken)",
                 i + 1, funnel->free_capacity);
    if (next)
        snprintf(against, sizeof against, " (%s %.4f)", i + 1 < ntop ? "next" : "best",
                 next->score.total);
    else
        against[0] = '\0';
    snprintf(buf, len, "%s: score %.4f%s; %s, %s, %s, %s", rank, c->score.total, against,
             c->score.terms[0].detail, c->score.terms[1].detail, c->score.terms[2].detail,
             c->score.terms[3].detail);
    (void)need;
}
