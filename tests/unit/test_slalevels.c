/* test_slalevels.c — merging a new computation into a clock's stored levels
 * (services/dispatch/slalevels.c): ids given once and kept, fired levels untouched,
 * levels no longer computed cancelled, a stopped clock, a paused level, running out of
 * ids, and the next due time the engine arms. Clock id 160: its levels are 161..175. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dispatch/slalevels.h"

#define CLOCK 160
#define NEVER DISPATCH_SLA_NEVER

static dispatch_sla_planned_t planned(dispatch_sla_level_t level, double fraction, int64_t due)
{
    return (dispatch_sla_planned_t){
        .level = level, .fraction = fraction, .due_us = due, .elapsed_us = 0, .paused_us = 0};
}

/* The default policy's four levels, due at 100, 150, 200 and 250. */
static size_t four(dispatch_sla_planned_t *lv, int64_t shift)
{
    lv[0] = planned(DISPATCH_SLA_WARNING, 0.5, 100 + shift);
    lv[1] = planned(DISPATCH_SLA_WARNING, 0.75, 150 + shift);
    lv[2] = planned(DISPATCH_SLA_BREACH, 1.0, 200 + shift);
    lv[3] = planned(DISPATCH_SLA_ESCALATION, 1.5, 250 + shift);
    return 4;
}

/* The level of `levels` whose level and fraction are these (NULL: none). */
static json_t *find(json_t *levels, const char *level, double fraction)
{
    size_t i;
    json_t *e;
    json_array_foreach(levels, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "level")), level) == 0 &&
            json_number_value(json_object_get(e, "fraction")) == fraction)
            return e;
    }
    return NULL;
}

static json_int_t id_of(json_t *e)
{
    return json_integer_value(json_object_get(e, "id"));
}

static const char *state_of(json_t *e)
{
    return json_string_value(json_object_get(e, "state"));
}

static json_t *merge(json_t *old, const dispatch_sla_planned_t *lv, size_t n, bool is_open,
                     int64_t *next)
{
    json_t *out = dispatch_sla_levels_merge(CLOCK, old, lv, n, is_open, next, "SV-T", "arrival");
    assert_non_null(out);
    return out;
}

static void test_new_clock_gets_ids_in_order(void **state)
{
    (void)state;
    dispatch_sla_planned_t lv[4];
    int64_t next = 0;
    json_t *old = json_array();
    json_t *out = merge(old, lv, four(lv, 0), true, &next);
    assert_int_equal(json_array_size(out), 4);
    assert_int_equal(id_of(find(out, "warning", 0.5)), CLOCK + 1);
    assert_int_equal(id_of(find(out, "warning", 0.75)), CLOCK + 2);
    assert_int_equal(id_of(find(out, "breach", 1.0)), CLOCK + 3);
    assert_int_equal(id_of(find(out, "escalation", 1.5)), CLOCK + 4);
    assert_string_equal(state_of(find(out, "breach", 1.0)), "pending");
    assert_int_equal(next, 100);
    json_decref(old);
    json_decref(out);
}

/* Re-based (a priority change): the same levels keep their ids, with the new due times. */
static void test_recomputed_levels_keep_their_ids(void **state)
{
    (void)state;
    dispatch_sla_planned_t lv[4];
    int64_t next = 0;
    json_t *empty = json_array();
    json_t *first = merge(empty, lv, four(lv, 0), true, &next);
    json_t *second = merge(first, lv, four(lv, 1000), true, &next);
    assert_int_equal(id_of(find(second, "breach", 1.0)), CLOCK + 3);
    assert_int_equal(json_integer_value(json_object_get(find(second, "breach", 1.0), "due_us")),
                     1200);
    assert_int_equal(next, 1100);
    json_decref(empty);
    json_decref(first);
    json_decref(second);
}

/* The 0.5 warning fired at 100: a re-computation that moves it to 1100 does not re-arm it,
 * and the next due time is the next pending level's. */
static void test_fired_level_stays_fired(void **state)
{
    (void)state;
    dispatch_sla_planned_t lv[4];
    int64_t next = 0;
    json_t *empty = json_array();
    json_t *first = merge(empty, lv, four(lv, 0), true, &next);
    json_t *w = find(first, "warning", 0.5);
    json_object_set_new(w, "state", json_string("fired"));
    json_object_set_new(w, "fired_us", json_integer(101));
    json_t *second = merge(first, lv, four(lv, 1000), true, &next);
    json_t *w2 = find(second, "warning", 0.5);
    assert_string_equal(state_of(w2), "fired");
    assert_int_equal(json_integer_value(json_object_get(w2, "due_us")), 100);
    assert_int_equal(json_integer_value(json_object_get(w2, "fired_us")), 101);
    assert_int_equal(id_of(w2), CLOCK + 1);
    assert_int_equal(next, 1150);
    json_decref(empty);
    json_decref(first);
    json_decref(second);
}

/* The policy's warnings change from 0.5/0.75 to 0.6: the old pending ones are kept as
 * cancelled (with their ids), the new one takes the next free id. */
static void test_warning_no_longer_computed_is_cancelled(void **state)
{
    (void)state;
    dispatch_sla_planned_t lv[4];
    int64_t next = 0;
    json_t *empty = json_array();
    json_t *first = merge(empty, lv, four(lv, 0), true, &next);
    dispatch_sla_planned_t now[3] = {planned(DISPATCH_SLA_WARNING, 0.6, 120),
                                     planned(DISPATCH_SLA_BREACH, 1.0, 200),
                                     planned(DISPATCH_SLA_ESCALATION, 1.4, 240)};
    json_t *second = merge(first, now, 3, true, &next);
    assert_int_equal(json_array_size(second), 5);
    assert_string_equal(state_of(find(second, "warning", 0.5)), "cancelled");
    assert_string_equal(state_of(find(second, "warning", 0.75)), "cancelled");
    assert_int_equal(id_of(find(second, "warning", 0.6)), CLOCK + 5);
    /* the escalation is one level whatever its fraction: same id, new fraction */
    assert_int_equal(id_of(find(second, "escalation", 1.4)), CLOCK + 4);
    assert_int_equal(next, 120);
    json_decref(empty);
    json_decref(first);
    json_decref(second);
}

/* Met or cancelled: nothing is computed; pending levels are cancelled, fired ones stay,
 * nothing is armed. Reopened: the same levels come back pending under the same ids. */
static void test_stopped_clock_cancels_and_reopened_one_restores(void **state)
{
    (void)state;
    dispatch_sla_planned_t lv[4];
    int64_t next = 0;
    json_t *empty = json_array();
    json_t *first = merge(empty, lv, four(lv, 0), true, &next);
    json_object_set_new(find(first, "warning", 0.5), "state", json_string("fired"));
    json_t *stopped = merge(first, NULL, 0, false, &next);
    assert_int_equal(next, NEVER);
    assert_int_equal(json_array_size(stopped), 4);
    assert_string_equal(state_of(find(stopped, "warning", 0.5)), "fired");
    assert_string_equal(state_of(find(stopped, "breach", 1.0)), "cancelled");
    json_t *reopened = merge(stopped, lv, four(lv, 500), true, &next);
    assert_string_equal(state_of(find(reopened, "breach", 1.0)), "pending");
    assert_int_equal(id_of(find(reopened, "breach", 1.0)), CLOCK + 3);
    assert_string_equal(state_of(find(reopened, "warning", 0.5)), "fired");
    assert_int_equal(next, 650);
    json_decref(empty);
    json_decref(first);
    json_decref(stopped);
    json_decref(reopened);
}

/* Paused before the breach: its due time is unknown (null) and only the warnings arm. */
static void test_paused_level_has_no_due_time(void **state)
{
    (void)state;
    dispatch_sla_planned_t lv[2] = {planned(DISPATCH_SLA_WARNING, 0.5, 100),
                                    planned(DISPATCH_SLA_BREACH, 1.0, NEVER)};
    int64_t next = 0;
    json_t *empty = json_array();
    json_t *out = merge(empty, lv, 2, true, &next);
    assert_true(json_is_null(json_object_get(find(out, "breach", 1.0), "due_us")));
    assert_int_equal(next, 100);
    dispatch_sla_planned_t all_paused[1] = {planned(DISPATCH_SLA_BREACH, 1.0, NEVER)};
    json_t *again = merge(out, all_paused, 1, true, &next);
    assert_int_equal(next, NEVER);
    json_decref(empty);
    json_decref(out);
    json_decref(again);
}

/* Fifteen ids taken by warnings that were cancelled: a new warning takes the id of one of
 * them (which is dropped); with all fifteen fired, a new warning is left out. */
static void test_running_out_of_ids(void **state)
{
    (void)state;
    json_t *old = json_array();
    for (int k = 1; k <= DISPATCH_SLA_LEVEL_SLOTS; k++)
        json_array_append_new(old,
                              json_pack("{s:I, s:s, s:f, s:I, s:s}", "id", (json_int_t)(CLOCK + k),
                                        "level", "warning", "fraction", 0.01 * k, "due_us",
                                        (json_int_t)k, "state", "cancelled"));
    dispatch_sla_planned_t lv[1] = {planned(DISPATCH_SLA_WARNING, 0.9, 900)};
    int64_t next = 0;
    json_t *out = merge(old, lv, 1, true, &next);
    assert_int_equal(json_array_size(out), DISPATCH_SLA_LEVEL_SLOTS);
    json_int_t id = id_of(find(out, "warning", 0.9));
    assert_true(id > CLOCK && id <= CLOCK + DISPATCH_SLA_LEVEL_SLOTS);
    assert_int_equal(next, 900);

    size_t i;
    json_t *e;
    json_array_foreach(old, i, e) json_object_set_new(e, "state", json_string("fired"));
    json_t *full = merge(old, lv, 1, true, &next);
    assert_int_equal(json_array_size(full), DISPATCH_SLA_LEVEL_SLOTS);
    assert_null(find(full, "warning", 0.9));
    assert_int_equal(next, NEVER);
    json_decref(old);
    json_decref(out);
    json_decref(full);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_clock_gets_ids_in_order),
        cmocka_unit_test(test_recomputed_levels_keep_their_ids),
        cmocka_unit_test(test_fired_level_stays_fired),
        cmocka_unit_test(test_warning_no_longer_computed_is_cancelled),
        cmocka_unit_test(test_stopped_clock_cancels_and_reopened_one_restores),
        cmocka_unit_test(test_paused_level_has_no_due_time),
        cmocka_unit_test(test_running_out_of_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
