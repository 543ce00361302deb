/* slalevels.c — merging a computation into a clock's stored levels (contract in
 * slalevels.h). */
#include "slalevels.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ac_log.h"

#define US_PER_S INT64_C(1000000)

static const char *const LEVELS[] = {"", "warning", "breach", "escalation"};

/* Whether `old` (a stored level) is the computed level (level, fraction): warnings are
 * told apart by their fraction; a breach or an escalation is one whatever its fraction. */
static int is_same_level(const json_t *old, const char *level, double fraction)
{
    const char *l = json_string_value(json_object_get(old, "level"));
    if (!l || strcmp(l, level) != 0)
        return 0;
    return strcmp(level, "warning") != 0 ||
           fabs(json_number_value(json_object_get(old, "fraction")) - fraction) < 1e-9;
}

static int is_state(const json_t *level, const char *state)
{
    const char *s = json_string_value(json_object_get(level, "state"));
    return s && strcmp(s, state) == 0;
}

static json_t *json_us(int64_t us)
{
    return us == DISPATCH_SLA_NEVER ? json_null() : json_integer(us);
}

/* An id for a new level of the clock `base`: a free slot, else that of a level no longer
 * wanted that never fired (which is then dropped: *dropped_j); 0 when all are fired. */
static json_int_t level_id(json_int_t base, unsigned used, const json_t *old, const char *is_kept,
                           size_t *dropped_j)
{
    const json_t *o;
    size_t j;
    *dropped_j = SIZE_MAX;
    for (int k = 1; k <= DISPATCH_SLA_LEVEL_SLOTS; k++)
        if (!(used & (1U << k)))
            return base + k;
    json_array_foreach(old, j, o)
    {
        if (!is_kept[j] && !is_state(o, "fired")) {
            *dropped_j = j;
            return json_integer_value(json_object_get(o, "id"));
        }
    }
    return 0;
}

json_t *dispatch_sla_levels_merge(int64_t clock_id, const json_t *old,
                                  const dispatch_sla_planned_t *lv, size_t n_lv, bool is_open,
                                  int64_t *next_us, const char *number, const char *target)
{
    json_int_t base = (json_int_t)clock_id;
    const json_t *o;
    size_t n_old = json_array_size(old), j, i;
    char *is_kept = calloc(n_old + 1, 1); /* old level j is in the result (or dropped) */
    json_t *out = json_array();
    unsigned used = 0; /* bit k: id base + k is taken */

    *next_us = DISPATCH_SLA_NEVER;
    if (!is_kept || !out)
        goto fail;
    json_array_foreach(old, j, o)
    {
        json_int_t k = json_integer_value(json_object_get(o, "id")) - base;
        if (k >= 1 && k <= DISPATCH_SLA_LEVEL_SLOTS)
            used |= 1U << k;
    }
    for (i = 0; is_open && i < n_lv; i++) {
        const dispatch_sla_planned_t *p = &lv[i];
        const char *name = LEVELS[p->level];
        size_t match = SIZE_MAX, dropped = SIZE_MAX;
        json_array_foreach(old, j, o)
        {
            if (!is_kept[j] && is_same_level(o, name, p->fraction)) {
                match = j;
                break;
            }
        }
        if (match != SIZE_MAX) {
            is_kept[match] = 1;
            o = json_array_get(old, match);
            if (is_state(o, "fired")) { /* fired once, for ever */
                if (json_array_append(out, (json_t *)(uintptr_t)o) < 0)
                    goto fail;
                continue;
            }
        }
        json_int_t id = match != SIZE_MAX ? json_integer_value(json_object_get(o, "id"))
                                          : level_id(base, used, old, is_kept, &dropped);
        if (id == 0) {
            ac_log_at(AC_LOG_ERROR, number, NULL,
                      "sla: the %s clock has no room for its %s level at %.3f",
                      target ? target : "?", name, p->fraction);
            continue;
        }
        if (dropped != SIZE_MAX)
            is_kept[dropped] = 1;
        if (id > base && id - base <= DISPATCH_SLA_LEVEL_SLOTS)
            used |= 1U << (id - base);
        if (p->due_us != DISPATCH_SLA_NEVER && p->due_us < *next_us)
            *next_us = p->due_us;
        if (json_array_append_new(
                out, json_pack("{s:I, s:s, s:f, s:o, s:I, s:I, s:s}", "id", id, "level", name,
                               "fraction", p->fraction, "due_us", json_us(p->due_us), "elapsed_s",
                               (json_int_t)(p->elapsed_us / US_PER_S), "paused_s",
                               (json_int_t)(p->paused_us / US_PER_S), "state", "pending")) < 0)
            goto fail;
    }
    json_array_foreach(old, j, o)
    {
        if (is_kept[j])
            continue;
        json_t *copy = json_copy((json_t *)(uintptr_t)o);
        if (!copy ||
            (is_state(o, "pending") &&
             json_object_set_new(copy, "state", json_string("cancelled")) < 0) ||
            json_array_append_new(out, copy) < 0)
            goto fail;
    }
    free(is_kept);
    return out;
fail:
    free(is_kept);
    json_decref(out);
    return NULL;
}
