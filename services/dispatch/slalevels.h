/* slalevels.h — a clock's escalation levels as its row keeps them (sla_clocks.levels,
 * migrations/009_sla_levels.sql), and how a new computation is merged into them. Pure: no
 * database, no loop (unit-tested in tests/unit/test_slalevels.c).
 *
 * A level is a JSON object {"id", "level" ("warning", "breach", "escalation"), "fraction",
 * "due_us" (epoch µs; null while paused before it), "elapsed_s", "paused_s", "state"
 * ("pending", "fired", "cancelled"), "fired_us" (once fired)}. Its id is the clock's id +
 * k, k = 1..DISPATCH_SLA_LEVEL_SLOTS (clock ids are multiples of 16), and it keeps it for
 * ever: events carry it as deadline_id. */
#ifndef DISPATCH_SLALEVELS_H
#define DISPATCH_SLALEVELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "slaclock.h"

#define DISPATCH_SLA_LEVEL_SLOTS 15

/* The clock's new levels after a computation: each computed level (lv, only when is_open)
 * keeps the id of the stored level it matches — warnings match by fraction, a breach or
 * an escalation whatever its fraction — or gets a free id; a stored level that fired
 * stays exactly as it fired (it never fires again); stored levels no longer computed stay
 * if fired and become "cancelled" if pending. With every id taken, a new level takes the
 * id of a level no longer computed that never fired (which is dropped); with none such
 * (all fired), it is left out and logged (number, target: for the log line). *next_us:
 * the earliest due time of the pending levels, DISPATCH_SLA_NEVER when none is armed.
 * NULL when out of memory. */
json_t *dispatch_sla_levels_merge(int64_t clock_id, const json_t *old,
                                  const dispatch_sla_planned_t *lv, size_t n_lv, bool is_open,
                                  int64_t *next_us, const char *number, const char *target);

#endif
