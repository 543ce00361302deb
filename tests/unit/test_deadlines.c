/* test_deadlines.c — the SLA engine's in-memory deadline set and its libev glue
 * (services/dispatch/deadlines.c, included so the heap and hash are in reach): heap and
 * hash invariants under random arm / move / cancel / pop sequences checked against a plain
 * reference model (fixed seeds), bulk load equal to incremental arming, versions, ties in
 * id order, and a real ev loop firing deadlines 20-200 ms ahead in order, none early,
 * within a generous bound (never a tight timing assertion). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dispatch/deadlines.c"

#include "ac_time.h"

#define MS(x) ((int64_t)(x)*1000)

static uint64_t rng_state;

static uint64_t rng(void)
{
    /* splitmix64: deterministic for a given seed on every platform */
    uint64_t z = (rng_state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static dispatch_deadline_t DL(uint64_t id, int64_t due_at_us, uint32_t version)
{
    dispatch_deadline_t d = {.due_at_us = due_at_us,
                             .id = id,
                             .version = version,
                             .kind = (uint8_t)(id % 3),
                             .level = (uint8_t)(id % 5)};
    return d;
}

static bool dl_equal(const dispatch_deadline_t *a, const dispatch_deadline_t *b)
{
    return a->due_at_us == b->due_at_us && a->id == b->id && a->version == b->version &&
           a->kind == b->kind && a->level == b->level;
}

/* Heap order, hash <-> heap back-references, and no stray slots. */
static void check_invariants(const dispatch_deadlines_t *s)
{
    assert_false(s->is_dirty);
    assert_true(2 * s->count <= s->slot_cap);
    for (size_t pos = 0; pos < s->count; pos++) {
        const dl_entry_t *e = &s->heap[pos];
        if (pos > 0)
            assert_false(entry_less(e, &s->heap[(pos - 1) / DL_ARITY]));
        assert_true(e->slot < s->slot_cap);
        assert_int_equal(s->slots[e->slot], pos + 1);
        bool found = false;
        assert_int_equal(slot_find(s, e->d.id, &found), e->slot);
        assert_true(found);
    }
    size_t used = 0;
    for (size_t i = 0; i < s->slot_cap; i++)
        used += s->slots[i] != 0;
    assert_int_equal(used, s->count);
}

/* ---- the reference model: a flat array indexed by id ---- */

#define MODEL_IDS 600

typedef struct model {
    bool is_armed[MODEL_IDS];
    dispatch_deadline_t d[MODEL_IDS];
    uint32_t version[MODEL_IDS]; /* last version seen (armed or cancelled) */
} model_t;

static size_t model_count(const model_t *m)
{
    size_t n = 0;
    for (size_t i = 0; i < MODEL_IDS; i++)
        n += m->is_armed[i];
    return n;
}

/* The earliest armed id by (due, id), or 0 when none. */
static uint64_t model_min(const model_t *m)
{
    uint64_t best = 0;
    for (uint64_t id = 1; id < MODEL_IDS; id++)
        if (m->is_armed[id] && (best == 0 || m->d[id].due_at_us < m->d[best].due_at_us))
            best = id; /* ids ascend, so a tie keeps the smaller id */
    return best;
}

static void run_random(uint64_t seed, int ops)
{
    static model_t m;
    memset(&m, 0, sizeof(m));
    rng_state = seed;
    dispatch_deadlines_t *s = dispatch_deadlines_new();
    assert_non_null(s);
    int64_t now = MS(1000000);
    dispatch_deadline_t out[64];

    for (int op = 0; op < ops; op++) {
        uint64_t id = 1 + rng() % (MODEL_IDS - 1);
        unsigned r = (unsigned)(rng() % 100);
        /* due times on a coarse grid so that ties are frequent */
        int64_t due = now + (int64_t)(rng() % 200) * MS(5) - MS(100);
        if (r < 50) { /* arm or move; sometimes with a stale version */
            uint32_t v = m.version[id] + (uint32_t)(rng() % 3) - 1U;
            dispatch_deadline_t d = DL(id, due, v);
            int rc = dispatch_deadlines_arm(s, &d);
            if (m.is_armed[id] && version_older(v, m.version[id])) {
                assert_int_equal(rc, AC_ERR_CONFLICT);
            } else {
                assert_int_equal(rc, AC_OK);
                m.is_armed[id] = true;
                m.d[id] = d;
                m.version[id] = v;
            }
        } else if (r < 75) { /* cancel */
            uint32_t v = m.version[id] + (uint32_t)(rng() % 3) - 1U;
            int rc = dispatch_deadlines_cancel(s, id, v);
            if (!m.is_armed[id]) {
                assert_int_equal(rc, AC_ERR_NOTFOUND);
            } else if (version_older(v, m.d[id].version)) {
                assert_int_equal(rc, AC_ERR_CONFLICT);
            } else {
                assert_int_equal(rc, AC_OK);
                m.is_armed[id] = false;
            }
        } else if (r < 95) { /* pop due at a clock that advances */
            now += (int64_t)(rng() % 20) * MS(1);
            size_t max = 1 + rng() % AC_ARRAY_LEN(out);
            size_t n = dispatch_deadlines_pop_due(s, now, out, max);
            for (size_t i = 0; i < n; i++) {
                uint64_t want = model_min(&m);
                assert_int_not_equal(want, 0);
                assert_int_equal(out[i].id, want);
                assert_true(dl_equal(&out[i], &m.d[want]));
                assert_true(out[i].due_at_us <= now);
                m.is_armed[want] = false;
            }
            uint64_t next = model_min(&m);
            if (n < max && next != 0)
                assert_true(m.d[next].due_at_us > now); /* nothing due left behind */
        } else {                                        /* peek and find */
            uint64_t want = model_min(&m);
            const dispatch_deadline_t *p = dispatch_deadlines_peek(s);
            if (want == 0) {
                assert_null(p);
            } else {
                assert_non_null(p);
                assert_int_equal(p->id, want);
            }
            const dispatch_deadline_t *f = dispatch_deadlines_find(s, id);
            if (m.is_armed[id]) {
                assert_non_null(f);
                assert_true(dl_equal(f, &m.d[id]));
            } else {
                assert_null(f);
            }
        }
        assert_int_equal(dispatch_deadlines_count(s), model_count(&m));
        if (op % 97 == 0)
            check_invariants(s);
    }
    check_invariants(s);
    dispatch_deadlines_destroy(&s);
    assert_null(s);
}

static void test_random_against_model(void **state)
{
    (void)state;
    static const uint64_t seeds[] = {1, 42, 20261123, UINT64_C(0xDEADBEEF)};
    for (size_t i = 0; i < AC_ARRAY_LEN(seeds); i++)
        run_random(seeds[i], 20000);
}

/* Many ids (the hash grows several times and shifts back on delete). */
static void test_grow_and_drain(void **state)
{
    (void)state;
    rng_state = 7;
    dispatch_deadlines_t *s = dispatch_deadlines_new();
    assert_non_null(s);
    for (uint64_t id = 1; id <= 50000; id++) {
        dispatch_deadline_t d = DL(id * 7919, (int64_t)(rng() % 1000000), 1);
        assert_int_equal(dispatch_deadlines_arm(s, &d), AC_OK);
    }
    check_invariants(s);
    for (uint64_t id = 2; id <= 50000; id += 2)
        assert_int_equal(dispatch_deadlines_cancel(s, id * 7919, 1), AC_OK);
    check_invariants(s);
    assert_int_equal(dispatch_deadlines_count(s), 25000);
    dispatch_deadline_t prev = {0}, d;
    size_t n = 0;
    while (dispatch_deadlines_pop_due(s, INT64_MAX, &d, 1) == 1) {
        if (n++ > 0)
            assert_true(prev.due_at_us < d.due_at_us ||
                        (prev.due_at_us == d.due_at_us && prev.id < d.id));
        assert_int_equal((d.id / 7919) % 2, 1);
        prev = d;
    }
    assert_int_equal(n, 25000);
    assert_null(dispatch_deadlines_peek(s));
    dispatch_deadlines_destroy(&s);
}

static void test_bulk_load_equals_incremental(void **state)
{
    (void)state;
    enum { N = 20000 };
    dispatch_deadlines_t *inc = dispatch_deadlines_new();
    dispatch_deadlines_t *bulk = dispatch_deadlines_new();
    assert_non_null(inc);
    assert_non_null(bulk);
    assert_int_equal(dispatch_deadlines_reserve(bulk, N), AC_OK);
    size_t heap_cap = bulk->heap_cap;
    rng_state = 99;
    for (int i = 0; i < N; i++) {
        /* ids repeat now and then: the later (newer or equal version) one wins */
        uint64_t id = 1 + rng() % (N * 3 / 4);
        dispatch_deadline_t d = DL(id, (int64_t)(rng() % 5000) * MS(1), (uint32_t)(rng() % 4));
        int rc_inc = dispatch_deadlines_arm(inc, &d);
        int rc_bulk = dispatch_deadlines_append(bulk, &d);
        assert_int_equal(rc_inc, rc_bulk);
    }
    assert_int_equal(bulk->heap_cap, heap_cap); /* reserve was enough: no regrowth */
    assert_true(bulk->is_dirty);
    dispatch_deadlines_heapify(bulk);
    check_invariants(bulk);
    assert_int_equal(dispatch_deadlines_count(bulk), dispatch_deadlines_count(inc));
    dispatch_deadline_t a, b;
    while (dispatch_deadlines_pop_due(inc, INT64_MAX, &a, 1) == 1) {
        assert_int_equal(dispatch_deadlines_pop_due(bulk, INT64_MAX, &b, 1), 1);
        assert_true(dl_equal(&a, &b));
    }
    assert_int_equal(dispatch_deadlines_count(bulk), 0);
    dispatch_deadlines_destroy(&inc);
    dispatch_deadlines_destroy(&bulk);
}

/* Appends without heapify: the next ordered operation establishes the order itself. */
static void test_ordered_op_after_append_heapifies(void **state)
{
    (void)state;
    dispatch_deadlines_t *s = dispatch_deadlines_new();
    assert_non_null(s);
    for (uint64_t id = 1; id <= 100; id++) {
        dispatch_deadline_t d = DL(id, MS(1000) - (int64_t)id, 1);
        assert_int_equal(dispatch_deadlines_append(s, &d), AC_OK);
    }
    const dispatch_deadline_t *p = dispatch_deadlines_peek(s);
    assert_non_null(p);
    assert_int_equal(p->id, 100);
    check_invariants(s);
    dispatch_deadlines_destroy(&s);
}

static void test_cancel_unknown_and_versions(void **state)
{
    (void)state;
    dispatch_deadlines_t *s = dispatch_deadlines_new();
    assert_non_null(s);
    assert_int_equal(dispatch_deadlines_cancel(s, 12345, 1), AC_ERR_NOTFOUND);
    dispatch_deadline_t d = DL(12345, MS(500), 5);
    assert_int_equal(dispatch_deadlines_arm(s, &d), AC_OK);
    assert_int_equal(dispatch_deadlines_cancel(s, 54321, 5), AC_ERR_NOTFOUND);
    /* a late event for version 4 changes nothing */
    dispatch_deadline_t stale = DL(12345, MS(100), 4);
    assert_int_equal(dispatch_deadlines_arm(s, &stale), AC_ERR_CONFLICT);
    assert_int_equal(dispatch_deadlines_cancel(s, 12345, 4), AC_ERR_CONFLICT);
    assert_int_equal(dispatch_deadlines_find(s, 12345)->due_at_us, MS(500));
    assert_int_equal(dispatch_deadlines_count(s), 1);
    assert_int_equal(dispatch_deadlines_cancel(s, 12345, 5), AC_OK);
    assert_int_equal(dispatch_deadlines_cancel(s, 12345, 5), AC_ERR_NOTFOUND);
    assert_int_equal(dispatch_deadlines_count(s), 0);
    /* versions compare as serial numbers: 0 is newer than 0xFFFFFFFF */
    d = DL(7, MS(1), UINT32_MAX);
    assert_int_equal(dispatch_deadlines_arm(s, &d), AC_OK);
    d = DL(7, MS(2), 0);
    assert_int_equal(dispatch_deadlines_arm(s, &d), AC_OK);
    assert_int_equal(dispatch_deadlines_find(s, 7)->version, 0);
    d = DL(7, MS(3), UINT32_MAX);
    assert_int_equal(dispatch_deadlines_arm(s, &d), AC_ERR_CONFLICT);
    dispatch_deadlines_destroy(&s);
}

static void test_move_earlier_and_later(void **state)
{
    (void)state;
    dispatch_deadlines_t *s = dispatch_deadlines_new();
    assert_non_null(s);
    for (uint64_t id = 1; id <= 10; id++) {
        dispatch_deadline_t d = DL(id, MS(100) * (int64_t)id, 1);
        assert_int_equal(dispatch_deadlines_arm(s, &d), AC_OK);
    }
    assert_int_equal(dispatch_deadlines_peek(s)->id, 1);
    dispatch_deadline_t d = DL(7, MS(50), 2); /* earlier than everyone */
    assert_int_equal(dispatch_deadlines_arm(s, &d), AC_OK);
    assert_int_equal(dispatch_deadlines_peek(s)->id, 7);
    assert_int_equal(dispatch_deadlines_peek(s)->version, 2);
    d = DL(7, MS(5000), 3); /* later than everyone */
    assert_int_equal(dispatch_deadlines_arm(s, &d), AC_OK);
    assert_int_equal(dispatch_deadlines_peek(s)->id, 1);
    d = DL(1, MS(450), 2); /* between 4 and 5 */
    assert_int_equal(dispatch_deadlines_arm(s, &d), AC_OK);
    assert_int_equal(dispatch_deadlines_count(s), 10);
    check_invariants(s);
    static const uint64_t order[] = {2, 3, 4, 1, 5, 6, 8, 9, 10, 7};
    dispatch_deadline_t out[16];
    assert_int_equal(dispatch_deadlines_pop_due(s, MS(449), out, 16), 3);
    assert_int_equal(dispatch_deadlines_pop_due(s, INT64_MAX, out + 3, 16 - 3), 7);
    for (size_t i = 0; i < AC_ARRAY_LEN(order); i++)
        assert_int_equal(out[i].id, order[i]);
    dispatch_deadlines_destroy(&s);
}

static void test_equal_due_times_pop_in_id_order(void **state)
{
    (void)state;
    dispatch_deadlines_t *s = dispatch_deadlines_new();
    assert_non_null(s);
    static const uint64_t ids[] = {900, 3, 77, 5000000000ULL, 1, 42, 8, 2};
    for (size_t i = 0; i < AC_ARRAY_LEN(ids); i++) {
        dispatch_deadline_t d = DL(ids[i], MS(1000), 1);
        assert_int_equal(dispatch_deadlines_arm(s, &d), AC_OK);
    }
    dispatch_deadline_t out[8];
    assert_int_equal(dispatch_deadlines_pop_due(s, MS(999), out, 8), 0); /* not yet */
    assert_int_equal(dispatch_deadlines_pop_due(s, MS(1000), out, 8), 8);
    static const uint64_t want[] = {1, 2, 3, 8, 42, 77, 900, 5000000000ULL};
    for (size_t i = 0; i < AC_ARRAY_LEN(want); i++)
        assert_int_equal(out[i].id, want[i]);
    dispatch_deadlines_destroy(&s);
}

/* ---- libev glue ---- */

#define FIRED_MAX 4096

typedef struct fired {
    dispatch_deadlines_t *set;
    dispatch_deadline_t d[FIRED_MAX];
    int64_t at_us[FIRED_MAX]; /* wall clock when delivered */
    size_t n;
    size_t calls;
    size_t expect; /* break the loop after this many */
    size_t max_batch_seen;
    struct ev_loop *loop;
} fired_t;

static void on_due(void *arg, const dispatch_deadline_t *due, size_t n, int64_t now_us)
{
    fired_t *f = arg;
    int64_t wall_us = ac_time_now_us();
    f->calls++;
    if (n > f->max_batch_seen)
        f->max_batch_seen = n;
    for (size_t i = 0; i < n && f->n < FIRED_MAX; i++) {
        assert_true(due[i].due_at_us <= now_us);
        f->d[f->n] = due[i];
        f->at_us[f->n] = wall_us;
        f->n++;
    }
    if (f->n >= f->expect)
        ev_break(f->loop, EVBREAK_ALL);
}

static void on_guard(struct ev_loop *loop, ev_timer *w, int revents)
{
    ev_break(loop, EVBREAK_ALL); /* the test then fails on the count */
}

static void run_loop(struct ev_loop *loop, double guard_s)
{
    ev_timer guard;
    ev_timer_init(&guard, on_guard, guard_s, 0.);
    ev_timer_start(loop, &guard);
    ev_run(loop, 0);
    ev_timer_stop(loop, &guard);
}

static void test_loop_fires_in_order_none_early(void **state)
{
    (void)state;
    static fired_t f;
    memset(&f, 0, sizeof(f));
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(loop);
    dispatch_deadlines_t *s = dispatch_deadlines_new();
    assert_non_null(s);
    f.loop = loop;
    f.expect = 40;
    assert_int_equal(dispatch_deadlines_attach(s, loop, 0, on_due, &f), AC_OK);
    assert_int_equal(dispatch_deadlines_attach(s, loop, 0, on_due, &f), AC_ERR_CONFLICT);
    rng_state = 5;
    int64_t t0 = ac_time_now_us();
    for (uint64_t id = 1; id <= f.expect; id++) {
        dispatch_deadline_t d = DL(id, t0 + MS(20) + (int64_t)(rng() % 181) * MS(1), 1);
        assert_int_equal(dispatch_deadlines_arm(s, &d), AC_OK);
    }
    run_loop(loop, 5.0);
    assert_int_equal(f.n, f.expect);
    for (size_t i = 0; i < f.n; i++) {
        if (i > 0)
            assert_false(entry_less(&(dl_entry_t){.d = f.d[i]}, &(dl_entry_t){.d = f.d[i - 1]}));
        /* libev's loop time trails the real clock, so the wall clock at delivery is at or
         * after the due time (1 ms allowed for the clock slewing between libev's re-syncs) */
        assert_true(f.at_us[i] >= f.d[i].due_at_us - MS(1));
        assert_true(f.at_us[i] - f.d[i].due_at_us < MS(500));
    }
    assert_int_equal(dispatch_deadlines_count(s), 0);
    assert_false(ev_is_active(&s->timer)); /* empty set: the watcher is stopped */
    dispatch_deadlines_destroy(&s);
    ev_loop_destroy(loop);
}

typedef struct rearm_ctx {
    ev_timer tick;
    dispatch_deadlines_t *set;
    int64_t t0;
} rearm_ctx_t;

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    rearm_ctx_t *c = ac_container_of(w, rearm_ctx_t, tick);
    /* the watcher is running for id 1 at t0 + 2 s: move it and add one in front */
    dispatch_deadline_t a = DL(1, c->t0 + MS(150), 2);
    dispatch_deadline_t b = DL(2, c->t0 + MS(100), 1);
    assert_int_equal(dispatch_deadlines_arm(c->set, &a), AC_OK);
    assert_int_equal(dispatch_deadlines_arm(c->set, &b), AC_OK);
}

static void test_loop_rearm_earlier_while_running(void **state)
{
    (void)state;
    static fired_t f;
    memset(&f, 0, sizeof(f));
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(loop);
    dispatch_deadlines_t *s = dispatch_deadlines_new();
    assert_non_null(s);
    f.loop = loop;
    f.expect = 2;
    rearm_ctx_t c = {.set = s, .t0 = ac_time_now_us()};
    dispatch_deadline_t d = DL(1, c.t0 + MS(2000), 1);
    assert_int_equal(dispatch_deadlines_arm(s, &d), AC_OK);
    assert_int_equal(dispatch_deadlines_attach(s, loop, 0, on_due, &f), AC_OK);
    assert_true(ev_is_active(&s->timer));
    ev_timer_init(&c.tick, on_tick, 0.02, 0.);
    ev_timer_start(loop, &c.tick);
    run_loop(loop, 5.0);
    assert_int_equal(f.n, 2);
    assert_int_equal(f.d[0].id, 2);
    assert_int_equal(f.d[1].id, 1);
    assert_int_equal(f.d[1].version, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_true(f.at_us[i] >= f.d[i].due_at_us - MS(1));
        assert_true(f.at_us[i] - f.d[i].due_at_us < MS(500));
    }
    assert_true(f.at_us[1] < c.t0 + MS(1500)); /* not at the original 2 s */
    dispatch_deadlines_destroy(&s);
    ev_loop_destroy(loop);
}

/* A backlog (deadlines that passed while the service was down) comes in batches of
 * batch_max, one per loop iteration, in order; a cancel before the loop runs is honoured. */
static void test_loop_overdue_backlog_in_batches(void **state)
{
    (void)state;
    static fired_t f;
    memset(&f, 0, sizeof(f));
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(loop);
    dispatch_deadlines_t *s = dispatch_deadlines_new();
    assert_non_null(s);
    f.loop = loop;
    f.expect = 2499;
    int64_t t0 = ac_time_now_us();
    assert_int_equal(dispatch_deadlines_reserve(s, 2500), AC_OK);
    for (uint64_t id = 1; id <= 2500; id++) {
        dispatch_deadline_t d = DL(id, t0 - MS(3600) + (int64_t)(id % 50) * MS(1), 1);
        assert_int_equal(dispatch_deadlines_append(s, &d), AC_OK);
    }
    assert_int_equal(dispatch_deadlines_attach(s, loop, 1000, on_due, &f), AC_OK);
    assert_int_equal(dispatch_deadlines_cancel(s, 1234, 1), AC_OK);
    run_loop(loop, 5.0);
    assert_int_equal(f.n, 2499);
    assert_int_equal(f.calls, 3);
    assert_int_equal(f.max_batch_seen, 1000);
    for (size_t i = 0; i < f.n; i++) {
        assert_int_not_equal(f.d[i].id, 1234);
        if (i > 0)
            assert_false(entry_less(&(dl_entry_t){.d = f.d[i]}, &(dl_entry_t){.d = f.d[i - 1]}));
    }
    dispatch_deadlines_destroy(&s);
    ev_loop_destroy(loop);
}

static void test_loop_cancelled_never_fires(void **state)
{
    (void)state;
    static fired_t f;
    memset(&f, 0, sizeof(f));
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(loop);
    dispatch_deadlines_t *s = dispatch_deadlines_new();
    assert_non_null(s);
    f.loop = loop;
    f.expect = 1;
    assert_int_equal(dispatch_deadlines_attach(s, loop, 0, on_due, &f), AC_OK);
    dispatch_deadline_t d = DL(9, ac_time_now_us() + MS(30), 1);
    assert_int_equal(dispatch_deadlines_arm(s, &d), AC_OK);
    assert_true(ev_is_active(&s->timer));
    assert_int_equal(dispatch_deadlines_cancel(s, 9, 1), AC_OK);
    assert_false(ev_is_active(&s->timer));
    run_loop(loop, 0.3);
    assert_int_equal(f.n, 0);
    dispatch_deadlines_detach(s);
    dispatch_deadlines_detach(s);
    dispatch_deadlines_destroy(&s);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_against_model),
        cmocka_unit_test(test_grow_and_drain),
        cmocka_unit_test(test_bulk_load_equals_incremental),
        cmocka_unit_test(test_ordered_op_after_append_heapifies),
        cmocka_unit_test(test_cancel_unknown_and_versions),
        cmocka_unit_test(test_move_earlier_and_later),
        cmocka_unit_test(test_equal_due_times_pop_in_id_order),
        cmocka_unit_test(test_loop_fires_in_order_none_early),
        cmocka_unit_test(test_loop_rearm_earlier_while_running),
        cmocka_unit_test(test_loop_overdue_backlog_in_batches),
        cmocka_unit_test(test_loop_cancelled_never_fires),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
