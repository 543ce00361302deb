/* deadlines.h — the in-memory side of the SLA engine's timers: the set of armed deadlines
 * (one entry per armed clock — due at its next level — or vendor deadline row in
 * PostgreSQL, keyed by the clock's or the row's id: one id space) and the one libev
 * watcher that wakes the loop when the earliest of them is due. Pure C: no database, no
 * sockets. The rows are the truth (DESIGN.md §2); this set only decides when to look.
 *
 * Data structure: a 4-ary min-heap of 32-byte entries ordered by (due_at_us, id) — equal
 * due times therefore come out in id order — plus an open-addressing hash (linear
 * probing, load <= 1/2, backward-shift deletion, no tombstones) from id to heap position.
 * The hash slot holds only the heap position (4 bytes); the id is read from the heap
 * entry. arm / move / cancel / pop are O(log n); find is O(1). Memory at 1,000,000
 * deadlines: 32 B of heap + ~8.4 B of hash = ~40 B per deadline (exactly reported by
 * dispatch_deadlines_memory_bytes()). Restart path: dispatch_deadlines_reserve(n), n x
 * dispatch_deadlines_append() (no ordering work), dispatch_deadlines_heapify() — O(n).
 *
 * Versions: each deadline carries its row's version (uint32, compared as serial numbers,
 * RFC 1982, so wrap-around is harmless). arm() with an older version than the one armed,
 * or cancel() of an older version, is refused with AC_ERR_CONFLICT and changes nothing: an
 * event that arrives late cannot resurrect or kill a deadline that was re-armed since.
 * The version is also what the engine's conditional UPDATE checks when it fires.
 *
 * Clock: deadlines are wall-clock instants (UTC epoch microseconds), computed from and
 * compared with PostgreSQL's now(), i.e. the system's real-time clock. The watcher is
 * therefore an ev_periodic in absolute mode (at = due_at_us / 1e6, no interval), not an
 * ev_timer: an ev_timer counts a relative interval on the monotonic clock, so when the
 * wall clock is stepped forward by N s (NTP step, VM resume) every deadline would fire N s
 * late, and after a backward step it would fire early and need re-arming. libev
 * reschedules periodics when the real-time clock jumps — at once on Linux (libev >= 4.31
 * watches a timerfd with TFD_TIMER_CANCEL_ON_SET while a periodic is active), otherwise at
 * the next loop wake-up (libev never sleeps longer than ~60 s). So a deadline fires when
 * the wall clock (ev_now(), the same clock the database compares with) reaches it. A
 * double holds epoch seconds to ~0.24 us, well below the 1 ms resolution of epoll. The
 * callback's now_us is llround(ev_now() * 1e6), the loop time of the wake-up; nothing
 * later than now_us is delivered, so nothing fires early (beyond that rounding).
 *
 * Delivery: at each wake-up at most batch_max due deadlines (earliest first) are removed
 * from the set and handed to on_due in one call; if more are due, the watcher fires again
 * on the next loop iteration, so I/O watchers get their turn during a backlog (e.g. after
 * a restart with thousands of overdue rows). A delivered deadline is no longer in the
 * set: if its transaction fails, the engine re-arms it (e.g. now + backoff). */
#ifndef DISPATCH_DEADLINES_H
#define DISPATCH_DEADLINES_H

#include <stddef.h>
#include <stdint.h>

#include "ac_err.h"

struct ev_loop;

#define DISPATCH_DEADLINES_BATCH_DEFAULT 1024 /* deadlines per on_due call when 0 is given */

typedef struct dispatch_deadline {
    int64_t due_at_us; /* UTC epoch microseconds */
    uint64_t id;       /* the deadline row's id */
    uint32_t version;  /* the row's version (serial-number order) */
    uint8_t kind;      /* the engine's code: which target (response, arrival, ...) */
    uint8_t level;     /* the engine's code: escalation level (warning, breach, ...) */
} dispatch_deadline_t;

typedef struct dispatch_deadlines dispatch_deadlines_t;

/* Called from the loop with n >= 1 due deadlines, earliest first (ties by id), already
 * removed from the set; `due` is borrowed for the call. now_us is the loop time used. The
 * callback may arm and cancel (that is how a failed firing is retried) and may detach, but
 * must not destroy the set. */
typedef void (*dispatch_deadlines_due_fn)(void *arg, const dispatch_deadline_t *due, size_t n,
                                          int64_t now_us);

dispatch_deadlines_t *dispatch_deadlines_new(void);             /* NULL on failure, logged */
void dispatch_deadlines_destroy(dispatch_deadlines_t **self_p); /* safe on NULL; detaches */

/* Insert, or move an armed deadline (new due time, kind, level, version). 0 on success;
 * AC_ERR_CONFLICT if d->version is older than the armed one (nothing changed);
 * AC_ERR_NOMEM; AC_ERR_TOOBIG beyond 2^30 deadlines. */
int dispatch_deadlines_arm(dispatch_deadlines_t *self, const dispatch_deadline_t *d) AC_WUR;
/* Remove deadline `id` if its armed version is not newer than `version`. 0 removed;
 * AC_ERR_NOTFOUND not armed; AC_ERR_CONFLICT armed with a newer version (kept). */
int dispatch_deadlines_cancel(dispatch_deadlines_t *self, uint64_t id, uint32_t version) AC_WUR;
/* The earliest deadline, or NULL when empty. Borrowed until the set next changes. */
const dispatch_deadline_t *dispatch_deadlines_peek(dispatch_deadlines_t *self);
/* The armed deadline `id`, or NULL. Borrowed until the set next changes. */
const dispatch_deadline_t *dispatch_deadlines_find(const dispatch_deadlines_t *self, uint64_t id);
/* Remove up to max deadlines with due_at_us <= now_us into out[], earliest first (ties by
 * id); returns how many. */
size_t dispatch_deadlines_pop_due(dispatch_deadlines_t *self, int64_t now_us,
                                  dispatch_deadline_t *out, size_t max);
size_t dispatch_deadlines_count(const dispatch_deadlines_t *self);
/* Bytes held by the set's arrays and struct (not malloc's own overhead). */
size_t dispatch_deadlines_memory_bytes(const dispatch_deadlines_t *self);

/* Bulk load (restart path): reserve room for n deadlines in all (0 / AC_ERR_NOMEM /
 * AC_ERR_TOOBIG), append them in any order without ordering work (same version rules and
 * results as arm; a repeated id updates the entry), then heapify (O(n)). Any ordered
 * operation (peek, pop, arm, cancel, the watcher) heapifies first if appends are pending,
 * so forgetting heapify costs time, never correctness. */
int dispatch_deadlines_reserve(dispatch_deadlines_t *self, size_t n) AC_WUR;
int dispatch_deadlines_append(dispatch_deadlines_t *self, const dispatch_deadline_t *d) AC_WUR;
void dispatch_deadlines_heapify(dispatch_deadlines_t *self);

/* libev glue: start one ev_periodic (embedded in the set) for the earliest deadline and
 * keep it armed for the earliest as the set changes; on_due gets up to batch_max (0:
 * DISPATCH_DEADLINES_BATCH_DEFAULT) due deadlines per wake-up. The loop is borrowed and
 * must outlive the attachment. 0, AC_ERR_NOMEM, or AC_ERR_CONFLICT if already attached. */
int dispatch_deadlines_attach(dispatch_deadlines_t *self, struct ev_loop *loop, size_t batch_max,
                              dispatch_deadlines_due_fn on_due, void *arg) AC_WUR;
void dispatch_deadlines_detach(dispatch_deadlines_t *self); /* stops the watcher; idempotent */

#endif
