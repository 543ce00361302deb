/* test_score.c — choosing an engineer (services/dispatch/score.c, included with the
 * calendar it evaluates shifts with): urgency, the four score terms and their total, the
 * ranking and its tie-breaks, every filter of the funnel (role, skill, region for field
 * engineers only, availability, shift, declined, capacity), the top-k selection, the shift
 * state and when it is looked at again, and the sentences that explain a choice or the lack
 * of one. 2026-11-23 is a Monday. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dispatch/calendar.c"
#include "dispatch/score.c"

#include "ac_time.h"

static int64_t T(const char *rfc3339)
{
    int64_t us = 0;
    if (ac_time_parse_rfc3339(rfc3339, &us) != 0)
        fail_msg("bad test time %s", rfc3339);
    return us / 1000000;
}

static dispatch_calendar_t *cal(const char *text)
{
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    dispatch_calendar_t *c = NULL;
    dispatch_cal_err_t err;
    assert_non_null(j);
    assert_int_equal(dispatch_calendar_parse(j, NULL, &c, &err), 0);
    json_decref(j);
    return c;
}

/* A roster engineer on the stack: one skill, one region. */
typedef struct eng {
    dispatch_roster_engineer_t e;
    dispatch_skill_t skill;
    char *region;
    char skill_name[32];
    char region_name[32];
} eng_t;

static void eng_init(eng_t *x, const char *id, int role, const char *skill, int level,
                     const char *region, int open, int capacity, const dispatch_calendar_t *shift)
{
    memset(x, 0, sizeof *x);
    snprintf(x->e.id, sizeof x->e.id, "%s", id);
    x->e.version = 1;
    x->e.role = role;
    x->e.availability = DISPATCH_AVAIL_AVAILABLE;
    x->e.open = open;
    x->e.capacity = capacity;
    snprintf(x->skill_name, sizeof x->skill_name, "%s", skill);
    x->skill.is_product_line = true;
    x->skill.level = level;
    x->skill.name = x->skill_name;
    x->e.skills = &x->skill;
    x->e.nskills = 1;
    snprintf(x->region_name, sizeof x->region_name, "%s", region);
    x->region = x->region_name;
    x->e.regions = &x->region;
    x->e.nregions = 1;
    x->e.shift = shift;
}

static dispatch_score_ticket_t ticket(int priority, bool vip)
{
    dispatch_score_ticket_t t = {
        .priority = priority, .is_vip = vip, .is_product_line = true, .skill = "X200"};
    return t;
}

static double sum_terms(const dispatch_score_t *s)
{
    double total = 0;
    for (int i = 0; i < DISPATCH_SCORE_NTERMS; i++)
        total += s->terms[i].value * s->terms[i].weight;
    return total;
}

/* --- urgency and the terms -------------------------------------------------------------- */

static void test_urgency(void **state)
{
    (void)state;
    dispatch_score_ticket_t t = ticket(1, false);
    assert_true(dispatch_score_urgency(&t) == 1.0);
    t.priority = 2;
    assert_float_equal(dispatch_score_urgency(&t), 2.0 / 3, 1e-12);
    t.priority = 3;
    assert_float_equal(dispatch_score_urgency(&t), 1.0 / 3, 1e-12);
    t.priority = 4;
    assert_true(dispatch_score_urgency(&t) == 0.0);
    /* the SLA engine's slack wins over the priority */
    t.has_slack = true;
    t.slack_s = 0;
    assert_true(dispatch_score_urgency(&t) == 1.0);
    t.slack_s = -600; /* breached */
    assert_true(dispatch_score_urgency(&t) == 1.0);
    t.slack_s = 43200;
    assert_float_equal(dispatch_score_urgency(&t), 0.5, 1e-12);
    t.slack_s = 86400;
    assert_true(dispatch_score_urgency(&t) == 0.0);
    t.slack_s = 10 * 86400;
    assert_true(dispatch_score_urgency(&t) == 0.0);
}

static void test_terms(void **state)
{
    (void)state;
    dispatch_score_ticket_t t = ticket(2, false);
    dispatch_score_t s;
    /* 1 of 4 open jobs, level 4: load 0.75; skill 0.8; sla (2/3)(1/2 + 0.8)/2 = 0.4333;
     * tier 0 -> 0.3 + 0.24 + 0.08667 + 0 = 0.62667 */
    dispatch_score_compute(&t, 1, 4, 4, &s);
    assert_string_equal(s.terms[0].name, "load");
    assert_string_equal(s.terms[1].name, "skill_level");
    assert_string_equal(s.terms[2].name, "sla_slack");
    assert_string_equal(s.terms[3].name, "customer_tier");
    assert_float_equal(s.terms[0].value, 0.75, 1e-12);
    assert_float_equal(s.terms[0].weight, 0.40, 1e-12);
    assert_float_equal(s.terms[1].value, 0.8, 1e-12);
    assert_float_equal(s.terms[1].weight, 0.30, 1e-12);
    assert_float_equal(s.terms[2].value, 0.4333, 1e-12); /* rounded to 4 decimals */
    assert_float_equal(s.terms[2].weight, 0.20, 1e-12);
    assert_float_equal(s.terms[3].value, 0.0, 1e-12);
    assert_float_equal(s.terms[3].weight, 0.10, 1e-12);
    assert_float_equal(s.total, 0.62666, 1e-9);
    assert_float_equal(s.total, sum_terms(&s), 1e-6);
    assert_string_equal(s.terms[0].detail, "1 of 4 open jobs");
    assert_string_equal(s.terms[1].detail, "product_line X200 level 4 of 5");
    assert_string_equal(s.terms[2].detail, "urgency 0.67 (P2, no SLA clock); 1 open jobs, level 4");
    assert_string_equal(s.terms[3].detail, "standard customer");

    /* VIP: the skill counts once more */
    t = ticket(4, true);
    dispatch_score_compute(&t, 0, 2, 5, &s);
    assert_float_equal(s.terms[3].value, 1.0, 1e-12);
    assert_string_equal(s.terms[3].detail, "VIP customer: skill level 5 counts");
    assert_float_equal(s.terms[2].value, 0.0, 1e-12); /* P4: no urgency */
    assert_float_equal(s.total, 0.4 + 0.3 + 0.1, 1e-9);

    /* with a slack: the detail says how much */
    t = ticket(3, false);
    t.has_slack = true;
    t.slack_s = 2 * 3600 + 5 * 60;
    dispatch_score_compute(&t, 0, 1, 1, &s);
    assert_non_null(strstr(s.terms[2].detail, "2h05m to the SLA deadline"));
    t.slack_s = -1;
    dispatch_score_compute(&t, 0, 1, 1, &s);
    assert_non_null(strstr(s.terms[2].detail, "urgency 1.00 (deadline due)"));

    /* over capacity (a supervisor's override): load stays at 0, never negative */
    dispatch_score_compute(&t, 5, 2, 1, &s);
    assert_true(s.terms[0].value == 0.0);
}

static void test_every_total_is_in_range_and_monotone(void **state)
{
    (void)state;
    for (int p = 1; p <= 4; p++)
        for (int vip = 0; vip < 2; vip++)
            for (int cap = 1; cap <= 6; cap++)
                for (int open = 0; open < cap; open++)
                    for (int lvl = 1; lvl <= 5; lvl++) {
                        dispatch_score_ticket_t t = ticket(p, vip);
                        dispatch_score_t s, busier, better;
                        dispatch_score_compute(&t, open, cap, lvl, &s);
                        assert_true(s.total >= 0 && s.total <= 1);
                        assert_float_equal(s.total, sum_terms(&s), 1e-6);
                        if (open + 1 < cap) { /* one more job never scores higher */
                            dispatch_score_compute(&t, open + 1, cap, lvl, &busier);
                            assert_true(busier.total < s.total);
                        }
                        if (lvl < 5) { /* a higher level never scores lower */
                            dispatch_score_compute(&t, open, cap, lvl + 1, &better);
                            assert_true(better.total > s.total);
                        }
                    }
}

/* --- ranking --------------------------------------------------------------------------------- */

static void test_compare_ties(void **state)
{
    (void)state;
    eng_t a, b;
    eng_init(&a, "bbbb", 1, "X200", 3, "north", 1, 4, NULL);
    eng_init(&b, "aaaa", 1, "X200", 3, "north", 2, 4, NULL);
    dispatch_choice_t ca = {.engineer = &a.e}, cb = {.engineer = &b.e};
    ca.score.total = cb.score.total = 0.5;
    assert_true(dispatch_choice_compare(&ca, &cb) < 0); /* fewer open jobs first */
    b.e.open = 1;
    assert_true(dispatch_choice_compare(&ca, &cb) > 0); /* then the smaller id */
    assert_true(dispatch_choice_compare(&cb, &ca) < 0);
    assert_int_equal(dispatch_choice_compare(&ca, &ca), 0);
    cb.score.total = 0.4;
    assert_true(dispatch_choice_compare(&ca, &cb) < 0); /* the score first of all */
}

/* --- filters ------------------------------------------------------------------------------------
 */

static const int64_t MON_10 = INT64_C(1795428000); /* 2026-11-23T10:00:00Z, a Monday */

static void test_match_funnel(void **state)
{
    (void)state;
    dispatch_calendar_t *always = dispatch_calendar_new_24x7();
    dispatch_calendar_t *nights = cal("{\"time_zone\":\"UTC\",\"working_hours\":{"
                                      "\"mon\":[\"20:00-24:00\"],\"tue\":[\"20:00-24:00\"]}}");
    assert_int_equal(T("2026-11-23T10:00:00Z"), MON_10);
    eng_t e[9];
    eng_init(&e[0], "e0", DISPATCH_ROLE_FIELD_ENGINEER, "X200", 5, "north", 0, 3, always);
    eng_init(&e[1], "e1", DISPATCH_ROLE_FIELD_ENGINEER, "X200", 2, "north", 0, 3, always);
    eng_init(&e[2], "e2", DISPATCH_ROLE_FIELD_ENGINEER, "X200", 5, "south", 0, 3, always);
    eng_init(&e[3], "e3", DISPATCH_ROLE_FIELD_ENGINEER, "Z9", 5, "north", 0, 3, always);
    eng_init(&e[4], "e4", DISPATCH_ROLE_TECHNICAL_SUPPORT, "X200", 5, "north", 0, 3, always);
    eng_init(&e[5], "e5", DISPATCH_ROLE_FIELD_ENGINEER, "X200", 5, "north", 0, 3, always);
    e[5].e.availability = DISPATCH_AVAIL_ON_LEAVE;
    eng_init(&e[6], "e6", DISPATCH_ROLE_FIELD_ENGINEER, "X200", 5, "north", 0, 3, nights);
    eng_init(&e[7], "e7", DISPATCH_ROLE_FIELD_ENGINEER, "X200", 5, "north", 0, 3, always);
    eng_init(&e[8], "e8", DISPATCH_ROLE_FIELD_ENGINEER, "X200", 5, "north", 3, 3, always);
    dispatch_roster_engineer_t *roster[9];
    for (int i = 0; i < 9; i++)
        roster[i] = &e[i].e;
    const char *declined[] = {"e7"};
    dispatch_need_t need = {.role = DISPATCH_ROLE_FIELD_ENGINEER,
                            .region = "north",
                            .excluded = declined,
                            .nexcluded = 1,
                            .ticket = ticket(3, false)};
    dispatch_funnel_t f;
    dispatch_choice_t top[4];

    size_t n = dispatch_match(&need, roster, 9, MON_10, &f, top, 4);
    /* role: 8 field engineers; skill: 7 (not e3); region: 6 (not e2); available: 5 (not e5);
     * on shift: 4 (not e6, nights); not declined: 3 (not e7); free capacity: 2 (not e8) */
    assert_int_equal(f.role, 8);
    assert_int_equal(f.skill, 7);
    assert_int_equal(f.region, 6);
    assert_int_equal(f.available, 5);
    assert_int_equal(f.on_shift, 4);
    assert_int_equal(f.not_declined, 3);
    assert_int_equal(f.free_capacity, 2);
    assert_int_equal(n, 2);
    assert_string_equal(top[0].engineer->id, "e0"); /* level 5 before level 2 */
    assert_string_equal(top[1].engineer->id, "e1");
    assert_int_equal(top[0].level, 5);
    assert_true(top[0].score.total > top[1].score.total);
    assert_false(e[6].e.is_on_shift);
    assert_int_equal(e[6].e.shift_check_s, T("2026-11-23T20:00:00Z")); /* when it starts */

    /* k = 1: only the best; the funnel is the same */
    n = dispatch_match(&need, roster, 9, MON_10, &f, top, 1);
    assert_int_equal(n, 1);
    assert_string_equal(top[0].engineer->id, "e0");
    assert_int_equal(f.free_capacity, 2);

    /* at 21:00 the night engineer is on shift (and came on shift just now) */
    e[6].e.shift_check_s = 0;
    n = dispatch_match(&need, roster, 9, T("2026-11-23T21:00:00Z"), &f, top, 4);
    assert_int_equal(f.on_shift, 5);
    assert_int_equal(n, 3);

    /* region applies to field engineers only: a depot or remote need ignores it */
    dispatch_need_t tech = {
        .role = DISPATCH_ROLE_TECHNICAL_SUPPORT, .region = "south", .ticket = ticket(3, false)};
    n = dispatch_match(&tech, roster, 9, MON_10, &f, top, 4);
    assert_int_equal(n, 1);
    assert_string_equal(top[0].engineer->id, "e4");
    /* and a field need without a region takes every region */
    need.region = "";
    n = dispatch_match(&need, roster, 9, MON_10, &f, top, 4);
    assert_int_equal(f.region, f.skill);
    /* work without a mode: any of the three working roles */
    dispatch_need_t any = {.role = DISPATCH_ROLE_ANY_WORKER, .ticket = ticket(3, false)};
    e[4].e.role = DISPATCH_ROLE_MANAGER;
    n = dispatch_match(&any, roster, 9, MON_10, &f, top, 4);
    assert_int_equal(f.role, 8);
    /* a category skill is not a product_line skill of the same name */
    any.ticket.is_product_line = false;
    n = dispatch_match(&any, roster, 9, MON_10, &f, top, 4);
    assert_int_equal(n, 0);
    assert_int_equal(f.skill, 0);

    dispatch_calendar_destroy(&always);
    dispatch_calendar_destroy(&nights);
}

static void test_top_k_keeps_the_best_in_order(void **state)
{
    (void)state;
    enum { N = 40 };
    dispatch_calendar_t *always = dispatch_calendar_new_24x7();
    eng_t e[N];
    dispatch_roster_engineer_t *roster[N];
    char id[8];
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof id, "e%02d", (i * 17) % N); /* ids not in roster order */
        /* capacity 10, open i % 10, level 1 + i % 5 */
        eng_init(&e[i], id, 1, "X200", 1 + i % 5, "north", i % 10, 10, always);
        roster[i] = &e[i].e;
    }
    dispatch_need_t need = {.role = 1, .ticket = ticket(1, false)};
    dispatch_funnel_t f;
    dispatch_choice_t top[5], all[N];
    size_t n = dispatch_match(&need, roster, N, MON_10, &f, top, 5);
    size_t nall = dispatch_match(&need, roster, N, MON_10, &f, all, N);
    assert_int_equal(n, 5);
    assert_int_equal(nall, N);
    for (size_t i = 0; i + 1 < nall; i++)
        assert_true(dispatch_choice_compare(&all[i], &all[i + 1]) < 0);
    for (size_t i = 0; i < n; i++)
        assert_ptr_equal(top[i].engineer, all[i].engineer);
    dispatch_calendar_destroy(&always);
}

/* --- shifts -------------------------------------------------------------------------------------
 */

static void test_shift_refresh(void **state)
{
    (void)state;
    dispatch_calendar_t *always = dispatch_calendar_new_24x7();
    dispatch_calendar_t *office =
        cal("{\"time_zone\":\"Europe/Berlin\",\"working_hours\":{\"mon\":[\"08:00-17:00\"]},"
            "\"holidays\":[\"2026-11-30\"]}");
    eng_t x;

    eng_init(&x, "x", 1, "X200", 3, "north", 0, 1, always);
    assert_int_equal(dispatch_engineer_shift_refresh(&x.e, MON_10), 1); /* came on shift */
    assert_true(x.e.is_on_shift);
    assert_true(x.e.shift_check_s == INT64_MAX); /* 24x7: never again */
    assert_int_equal(dispatch_engineer_shift_refresh(&x.e, MON_10 + 1), 0);

    /* Berlin office hours, 11:00 local: working; looked at again at the next minute */
    eng_init(&x, "x", 1, "X200", 3, "north", 0, 1, office);
    assert_int_equal(dispatch_engineer_shift_refresh(&x.e, MON_10 + 30), 1);
    assert_int_equal(x.e.shift_check_s, MON_10 + 60);
    /* not looked at before it is due (even at a time it would be off) */
    x.e.shift_check_s = T("2026-11-24T00:00:00Z");
    assert_int_equal(dispatch_engineer_shift_refresh(&x.e, T("2026-11-23T23:00:00Z")), 0);
    assert_true(x.e.is_on_shift);
    /* 17:00 local (16:00Z) is the end: off, next start the Monday after next (the next
     * Monday is a holiday) */
    x.e.shift_check_s = 0;
    assert_int_equal(dispatch_engineer_shift_refresh(&x.e, T("2026-11-23T16:00:00Z")), 0);
    assert_false(x.e.is_on_shift);
    assert_int_equal(x.e.shift_check_s, T("2026-12-07T07:00:00Z"));
    assert_int_equal(dispatch_engineer_shift_refresh(&x.e, T("2026-12-07T07:00:00Z")), 1);
    assert_true(x.e.is_on_shift);

    /* no usable calendar: never on shift */
    eng_init(&x, "x", 1, "X200", 3, "north", 0, 1, NULL);
    assert_int_equal(dispatch_engineer_shift_refresh(&x.e, MON_10), 0);
    assert_false(x.e.is_on_shift);

    dispatch_calendar_destroy(&always);
    dispatch_calendar_destroy(&office);
}

/* --- the sentences
 * -------------------------------------------------------------------------------- */

static void test_unfilled_reasons(void **state)
{
    (void)state;
    char buf[512];
    dispatch_need_t need = {
        .role = DISPATCH_ROLE_FIELD_ENGINEER, .region = "north", .ticket = ticket(3, false)};
    dispatch_funnel_t f = {0};
    dispatch_unfilled_reason(&need, &f, buf, sizeof buf);
    assert_string_equal(buf, "no engineer has the role field_engineer");
    f.role = 4;
    dispatch_unfilled_reason(&need, &f, buf, sizeof buf);
    assert_string_equal(buf, "no field_engineer has the skill product_line X200 (4 with the role)");
    f.skill = 3;
    dispatch_unfilled_reason(&need, &f, buf, sizeof buf);
    assert_string_equal(buf, "no field_engineer with product_line X200 serves region north (3 have "
                             "the skill)");
    f.region = 2;
    dispatch_unfilled_reason(&need, &f, buf, sizeof buf);
    assert_string_equal(buf, "no field_engineer with product_line X200 in region north is "
                             "available (2 away or on leave)");
    f.available = 2;
    dispatch_unfilled_reason(&need, &f, buf, sizeof buf);
    assert_non_null(strstr(buf, "is on shift now"));
    f.on_shift = 1;
    dispatch_unfilled_reason(&need, &f, buf, sizeof buf);
    assert_non_null(strstr(buf, "has declined this ticket"));
    f.not_declined = 1;
    dispatch_unfilled_reason(&need, &f, buf, sizeof buf);
    assert_non_null(strstr(buf, "is at capacity"));

    dispatch_need_t diag = {
        .role = DISPATCH_ROLE_TECHNICAL_SUPPORT, .region = "north", .ticket = ticket(3, false)};
    diag.ticket.is_product_line = false;
    diag.ticket.skill = "consultation";
    dispatch_need_describe(&diag, buf, sizeof buf);
    assert_string_equal(buf, "technical_support with category consultation"); /* no region */
}

static void test_why(void **state)
{
    (void)state;
    char buf[1024];
    eng_t a, b;
    eng_init(&a, "a", 1, "X200", 5, "north", 0, 4, NULL);
    eng_init(&b, "b", 1, "X200", 2, "north", 1, 4, NULL);
    dispatch_need_t need = {.role = 1, .ticket = ticket(2, false)};
    dispatch_funnel_t f = {.free_capacity = 2};
    dispatch_choice_t top[2] = {{.engineer = &a.e, .level = 5}, {.engineer = &b.e, .level = 2}};
    dispatch_score_compute(&need.ticket, 0, 4, 5, &top[0].score);
    dispatch_score_compute(&need.ticket, 1, 4, 2, &top[1].score);
    dispatch_why(&need, &f, top, 2, 0, buf, sizeof buf);
    assert_true(strncmp(buf, "best of 2 candidates: score 0.", 30) == 0);
    assert_non_null(strstr(buf, "(next 0."));
    assert_non_null(strstr(buf, "0 of 4 open jobs"));
    assert_non_null(strstr(buf, "product_line X200 level 5 of 5"));
    dispatch_why(&need, &f, top, 2, 1, buf, sizeof buf);
    assert_non_null(strstr(buf, "choice 2 of 2 candidates"));
    assert_non_null(strstr(buf, "(best 0."));
    f.free_capacity = 1;
    dispatch_why(&need, &f, top, 1, 0, buf, sizeof buf);
    assert_true(strncmp(buf, "best of 1 candidate: score", 26) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_urgency),
        cmocka_unit_test(test_terms),
        cmocka_unit_test(test_every_total_is_in_range_and_monotone),
        cmocka_unit_test(test_compare_ties),
        cmocka_unit_test(test_match_funnel),
        cmocka_unit_test(test_top_k_keeps_the_best_in_order),
        cmocka_unit_test(test_shift_refresh),
        cmocka_unit_test(test_unfilled_reasons),
        cmocka_unit_test(test_why),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
