/* Unit tests: sequencer.c — the consumer's per-source decisions: order, duplicates, the
 * window, gap detection from live events and heartbeats, replay coverage (filtered
 * sequences, drops during a replay), resets, and a randomised run against a simulated bus
 * that drops, repeats and reorders nothing it should not. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "ac_sequencer.h"

static int live_items; /* items allocated and not yet freed */

static void *item(uint64_t seq)
{
    uint64_t *p = malloc(sizeof(*p));
    assert_non_null(p);
    *p = seq;
    live_items++;
    return p;
}

static void item_free(void *p)
{
    if (p) {
        live_items--;
        free(p);
    }
}

/* Offers seq with a fresh item; frees it when not taken. Returns the outcome. */
static ac_seq_offer_t offer(ac_seq_t *s, uint64_t seq)
{
    void *it = item(seq);
    ac_seq_offer_t r = ac_seq_offer(s, seq, it);
    if (r != AC_SEQ_BUFFERED)
        item_free(it);
    return r;
}

/* Pops everything ready; checks the items match their sequences; returns how many, and
 * the sequences in out (may be NULL). */
static size_t pop_all(ac_seq_t *s, uint64_t *out, size_t cap)
{
    size_t n = 0;
    uint64_t seq;
    void *it;
    while ((it = ac_seq_pop(s, &seq)) != NULL) {
        assert_int_equal(*(uint64_t *)it, seq);
        if (out && n < cap)
            out[n] = seq;
        n++;
        item_free(it);
    }
    return n;
}

static ac_seq_t *synced_at(uint64_t next, size_t window)
{
    ac_seq_t *s = ac_seq_new(window, item_free);
    assert_non_null(s);
    ac_seq_reset(s, next);
    ac_seq_mark_synced(s);
    return s;
}

static void teardown_seq(ac_seq_t **s)
{
    ac_seq_destroy(s);
    assert_null(*s);
    assert_int_equal(live_items, 0);
}

static void test_in_order_and_duplicates(void **state)
{
    ac_seq_t *s = synced_at(1, 64);
    uint64_t got[8];
    uint64_t from, to;
    for (uint64_t i = 1; i <= 5; i++)
        assert_int_equal(offer(s, i), AC_SEQ_BUFFERED);
    assert_int_equal(offer(s, 3), AC_SEQ_DUPLICATE); /* held */
    assert_int_equal(ac_seq_ready(s, 100), 5);
    assert_int_equal(pop_all(s, got, 8), 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(got[i], i + 1);
    assert_int_equal(offer(s, 2), AC_SEQ_DUPLICATE); /* already handed out */
    assert_int_equal(ac_seq_next(s), 6);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_NONE);
    ac_seq_stats_t st;
    ac_seq_stats(s, &st);
    assert_int_equal(st.duplicates, 2);
    teardown_seq(&s);
}

static void test_initial_replay_then_live(void **state)
{
    ac_seq_t *s = ac_seq_new(64, item_free);
    uint64_t from, to, got[32];
    ac_seq_reset(s, 1);
    assert_false(ac_seq_is_synced(s));
    /* the first replay asks from the position up to whatever the bus has */
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_INITIAL);
    assert_int_equal(from, 1);
    assert_int_equal(to, 0);
    ac_seq_replay_begin(s, from, to);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_NONE); /* one at a time */
    /* live events arrive while the replay runs: they wait */
    assert_int_equal(offer(s, 11), AC_SEQ_BUFFERED);
    assert_int_equal(offer(s, 12), AC_SEQ_BUFFERED);
    assert_int_equal(pop_all(s, NULL, 0), 0);
    for (uint64_t i = 1; i <= 10; i++)
        assert_int_equal(offer(s, i), AC_SEQ_BUFFERED);
    assert_int_equal(offer(s, 11), AC_SEQ_DUPLICATE); /* the replay's copy of a live one */
    ac_seq_replay_end(s, 11);
    assert_true(ac_seq_is_synced(s));
    assert_int_equal(pop_all(s, got, 32), 12);
    for (int i = 0; i < 12; i++)
        assert_int_equal(got[i], i + 1); /* the seam: no gap, no duplicate */
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_NONE);
    teardown_seq(&s);
}

static void test_gap_from_live_event(void **state)
{
    ac_seq_t *s = synced_at(1, 64);
    uint64_t from, to, got[8];
    offer(s, 1);
    offer(s, 2);
    assert_int_equal(pop_all(s, NULL, 0), 2);
    assert_int_equal(offer(s, 5), AC_SEQ_BUFFERED); /* 3 and 4 went missing */
    assert_int_equal(pop_all(s, NULL, 0), 0);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    assert_int_equal(from, 3);
    assert_int_equal(to, 4); /* up to the one before the next held event */
    ac_seq_replay_begin(s, from, to);
    offer(s, 6);
    offer(s, 3);
    offer(s, 4);
    ac_seq_replay_end(s, 4);
    assert_int_equal(pop_all(s, got, 8), 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(got[i], i + 3);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_NONE);
    teardown_seq(&s);
}

static void test_gap_from_heartbeat(void **state)
{
    ac_seq_t *s = synced_at(6, 64);
    uint64_t from, to;
    ac_seq_note_latest(s, 5); /* the heartbeat says what we have: nothing to do */
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_NONE);
    ac_seq_note_latest(s, 8);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    assert_int_equal(from, 6);
    assert_int_equal(to, 8);
    /* a held prefix is not asked for again */
    offer(s, 6);
    offer(s, 7);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    assert_int_equal(from, 8);
    assert_int_equal(to, 8);
    offer(s, 8);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_NONE);
    assert_int_equal(pop_all(s, NULL, 0), 3);
    teardown_seq(&s);
}

static void test_filtered_sequences_are_skipped(void **state)
{
    ac_seq_t *s = ac_seq_new(64, item_free);
    uint64_t from, to, got[8];
    ac_seq_reset(s, 1);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_INITIAL);
    ac_seq_replay_begin(s, from, to);
    offer(s, 2); /* 1, 3 and 5 are topics this consumer does not see */
    offer(s, 4);
    assert_int_equal(pop_all(s, NULL, 0), 0); /* 1 might still come */
    ac_seq_replay_end(s, 5);
    assert_int_equal(pop_all(s, got, 8), 2);
    assert_int_equal(got[0], 2);
    assert_int_equal(got[1], 4);
    assert_int_equal(ac_seq_next(s), 6);
    ac_seq_stats_t st;
    ac_seq_stats(s, &st);
    assert_int_equal(st.skipped, 3);
    /* filtered streams replay every hole up to the latest at once */
    ac_seq_set_filtered(s, 1);
    offer(s, 8);
    offer(s, 10);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    assert_int_equal(from, 6);
    assert_int_equal(to, 10);
    ac_seq_replay_begin(s, from, to);
    ac_seq_replay_end(s, 10);
    assert_int_equal(pop_all(s, got, 8), 2);
    assert_int_equal(ac_seq_next(s), 11);
    teardown_seq(&s);
}

static void test_window_overflow_is_refetched(void **state)
{
    ac_seq_t *s = synced_at(1, 16);
    uint64_t from, to;
    assert_int_equal(ac_seq_window(s), 16);
    for (uint64_t i = 1; i <= 16; i++)
        assert_int_equal(offer(s, i), AC_SEQ_BUFFERED);
    for (uint64_t i = 17; i <= 40; i++)
        assert_int_equal(offer(s, i), AC_SEQ_DROPPED);
    assert_int_equal(ac_seq_held(s), 16);
    assert_int_equal(ac_seq_latest(s), 40);
    /* no room: nothing to ask for until the window moves */
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_NONE);
    assert_int_equal(pop_all(s, NULL, 0), 16);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    assert_int_equal(from, 17);
    assert_int_equal(to, 40);
    teardown_seq(&s);
}

static void test_drop_during_replay_limits_its_claim(void **state)
{
    ac_seq_t *s = ac_seq_new(16, item_free);
    uint64_t from, to, got[32];
    ac_seq_reset(s, 1);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_INITIAL);
    ac_seq_replay_begin(s, from, to);
    for (uint64_t i = 1; i <= 20; i++)
        offer(s, i); /* 17..20 do not fit */
    ac_seq_replay_end(s, 20);
    /* the end must not claim 17..20 as filtered */
    assert_int_equal(pop_all(s, got, 32), 16);
    assert_int_equal(ac_seq_next(s), 17);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    assert_int_equal(from, 17);
    assert_int_equal(to, 20);
    teardown_seq(&s);
}

static void test_reset_forward_and_back(void **state)
{
    ac_seq_t *s = synced_at(1, 16);
    uint64_t from, to, got[32];
    for (uint64_t i = 1; i <= 10; i++)
        offer(s, i);
    ac_seq_reset(s, 4); /* e.g. the checkpoint was further on */
    assert_int_equal(ac_seq_held(s), 7);
    assert_int_equal(offer(s, 3), AC_SEQ_DUPLICATE);
    for (uint64_t i = 11; i <= 19; i++)
        offer(s, i); /* window [4, 19] is full */
    assert_int_equal(ac_seq_held(s), 16);
    ac_seq_rewind(s, 2); /* a failed batch: [2, 17] fits, 18 and 19 go */
    assert_int_equal(ac_seq_held(s), 14);
    ac_seq_stats_t st;
    ac_seq_stats(s, &st);
    assert_int_equal(st.evicted, 2);
    offer(s, 2);
    offer(s, 3);
    assert_int_equal(pop_all(s, got, 32), 16);
    assert_int_equal(got[0], 2);
    assert_int_equal(got[15], 17);
    /* 18 and 19 are known to exist: fetched again */
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    assert_int_equal(from, 18);
    assert_int_equal(to, 19);
    teardown_seq(&s);
}

static void test_eviction_during_replay_limits_its_claim(void **state)
{
    ac_seq_t *s = ac_seq_new(16, item_free);
    uint64_t from, to;
    ac_seq_reset(s, 5);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_INITIAL);
    ac_seq_replay_begin(s, from, to);
    for (uint64_t i = 5; i <= 20; i++)
        offer(s, i);
    ac_seq_rewind(s, 3); /* rewound by 2: 19 and 20 are evicted */
    ac_seq_replay_end(s, 20);
    offer(s, 3);
    offer(s, 4);
    assert_int_equal(pop_all(s, NULL, 0), 16);
    assert_int_equal(ac_seq_next(s), 19);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    assert_int_equal(from, 19);
    teardown_seq(&s);
}

static void test_reset_back_forgets_coverage(void **state)
{
    ac_seq_t *s = ac_seq_new(64, item_free);
    uint64_t from, to, got[4];
    ac_seq_reset(s, 1);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_INITIAL);
    ac_seq_replay_begin(s, from, to);
    offer(s, 2);
    ac_seq_replay_end(s, 5); /* 1, 3, 4, 5 filtered */
    assert_int_equal(pop_all(s, got, 4), 1);
    assert_int_equal(ac_seq_next(s), 6);
    /* a checkpoint moved back by hand: 2 was handed out and is gone, so all of 1..5 must
     * be asked for again, not skipped as filtered */
    ac_seq_reset(s, 1);
    assert_int_equal(pop_all(s, NULL, 0), 0);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    assert_int_equal(from, 1);
    assert_int_equal(to, 5);
    teardown_seq(&s);
}

static void test_abort_allows_another(void **state)
{
    ac_seq_t *s = synced_at(1, 64);
    uint64_t from, to;
    ac_seq_note_latest(s, 3);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    ac_seq_replay_begin(s, from, to);
    assert_true(ac_seq_is_replaying(s));
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_NONE);
    ac_seq_replay_abort(s); /* a timeout or BUSY */
    assert_false(ac_seq_is_replaying(s));
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    assert_int_equal(from, 1);
    assert_int_equal(to, 3);
    ac_seq_replay_end(s, 3); /* an end after the abort claims nothing */
    assert_int_equal(pop_all(s, NULL, 0), 0);
    assert_int_equal(ac_seq_next(s), 1);
    teardown_seq(&s);
}

static void test_catchup_after_silence(void **state)
{
    ac_seq_t *s = synced_at(1, 64);
    uint64_t from, to;
    offer(s, 1);
    offer(s, 2);
    assert_int_equal(pop_all(s, NULL, 0), 2);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_NONE);
    ac_seq_request_catchup(s); /* no heartbeat for a while: ask what the bus has */
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_CATCHUP);
    assert_int_equal(from, 3);
    assert_int_equal(to, 0);
    ac_seq_replay_begin(s, from, to);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_NONE);
    offer(s, 3);
    ac_seq_replay_end(s, 5); /* 4 and 5 were filtered */
    assert_int_equal(pop_all(s, NULL, 0), 1);
    assert_int_equal(ac_seq_next(s), 6);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_NONE);
    teardown_seq(&s);
}

/* A simulated bus publishes 1..N; the live path drops bursts, repeats events and hands
 * them over late; heartbeats come now and then; replays are answered from the full stream
 * in bounded steps, with a topic filter hiding every seventh event. Whatever happens, the
 * consumer must hand out exactly the visible events, once each, in order. */
static void test_randomised_against_simulated_bus(void **state)
{
    for (unsigned seed = 1; seed <= 40; seed++) {
        const uint64_t n = 3000;
        ac_seq_t *s = ac_seq_new(64, item_free);
        uint64_t expect = 1, published = 0;
        uint64_t rfrom = 0, rto = 0, rpos = 0; /* the replay being answered */
        int is_replaying = 0;
        srand(seed);
        ac_seq_reset(s, 1);
        ac_seq_set_filtered(s, 1);
        for (int step = 0; step < 200000 && (expect <= n || published < n); step++) {
            int r = rand() % 100;
            uint64_t seq, from, to;
            void *it;
            if (r < 40 && published < n) {
                /* live: publish the next; drop a burst sometimes; repeat sometimes */
                published++;
                if (published % 7 != 0 && rand() % 10 != 0)
                    offer(s, published);
                if (rand() % 20 == 0 && published > 3) {
                    uint64_t again = published - (uint64_t)(rand() % 3);
                    if (again % 7 != 0)
                        offer(s, again);
                }
            } else if (r < 45) {
                ac_seq_note_latest(s, published); /* heartbeat */
            } else if (r < 80 && is_replaying) {
                /* answer a few events of the replay, then its end */
                uint64_t last = rto ? rto : published;
                for (int k = 0; k < 5 && rpos <= last; k++, rpos++)
                    if (rpos % 7 != 0)
                        offer(s, rpos);
                if (rpos > last) {
                    ac_seq_replay_end(s, last);
                    is_replaying = 0;
                }
            } else if (r < 82 && is_replaying) {
                ac_seq_replay_abort(s); /* a timeout */
                is_replaying = 0;
            } else if (r < 84) {
                ac_seq_request_catchup(s); /* the bus fell silent */
            }
            while ((it = ac_seq_pop(s, &seq)) != NULL) {
                while (expect % 7 == 0)
                    expect++;
                assert_int_equal(seq, expect);
                expect++;
                item_free(it);
            }
            if (!is_replaying && ac_seq_want_replay(s, &from, &to)) {
                assert_true(from >= 1);
                assert_true(to == 0 || to >= from);
                ac_seq_replay_begin(s, from, to);
                rfrom = from;
                rto = to;
                rpos = rfrom;
                is_replaying = 1;
            }
        }
        while (expect % 7 == 0)
            expect++;
        assert_int_equal(expect, n + 1);
        teardown_seq(&s);
    }
}

/* H1: a database-mode batch fails after its pop passed over a long filtered range; the
 * events offered back that no longer fit the window must be fetched again, never passed
 * over as filtered. */
static void test_refused_offer_is_never_skipped(void **state)
{
    ac_seq_t *s = ac_seq_new(16, item_free);
    uint64_t from, to, seq;
    void *it;
    ac_seq_reset(s, 1);
    ac_seq_set_filtered(s, 1);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_INITIAL);
    ac_seq_replay_begin(s, from, to);
    ac_seq_replay_end(s, 40); /* 1..40 are other topics */
    assert_null(ac_seq_pop(s, NULL));
    assert_int_equal(ac_seq_next(s), 41); /* the checkpoint is still 0 */
    assert_int_equal(offer(s, 50), AC_SEQ_BUFFERED);
    ac_seq_note_latest(s, 100);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    ac_seq_replay_begin(s, from, to);
    ac_seq_replay_end(s, 100); /* 41..49 and 51..100 are other topics */
    it = ac_seq_pop(s, &seq);  /* the batch: 50 */
    assert_non_null(it);
    assert_int_equal(seq, 50);
    assert_null(ac_seq_pop(s, NULL)); /* passes over 51..100 */
    assert_int_equal(ac_seq_next(s), 101);
    /* the transaction fails: rewound too far back (the old checkpoint + 1), 50 is refused */
    ac_seq_rewind(s, 1);
    assert_int_equal(ac_seq_offer(s, 50, it), AC_SEQ_DROPPED);
    item_free(it);
    assert_null(ac_seq_pop(s, NULL));
    assert_int_equal(ac_seq_next(s), 50); /* waits for 50, not past it */
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    assert_int_equal(from, 50);
    /* rewinding to the batch's first event (what the consumer does) keeps it */
    it = item(50);
    assert_int_equal(ac_seq_offer(s, 50, it), AC_SEQ_BUFFERED);
    ac_seq_rewind(s, 50);
    assert_int_equal(pop_all(s, &seq, 1), 1);
    assert_int_equal(seq, 50);
    teardown_seq(&s);
}

/* M3: long filtered ranges are passed over at once, and reading what is ready does not
 * walk them slot by slot. */
static void test_filtered_range_is_passed_at_once(void **state)
{
    ac_seq_t *s = ac_seq_new(16, item_free);
    uint64_t from, to, seq;
    const uint64_t far = 400000000ULL;
    clock_t t0;
    double elapsed;
    ac_seq_reset(s, 1);
    ac_seq_set_filtered(s, 1);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_INITIAL);
    ac_seq_replay_begin(s, from, to);
    ac_seq_replay_end(s, far); /* nothing of ours in 1..far */
    assert_int_equal(ac_seq_covered(s), far);
    t0 = clock();
    for (int i = 0; i < 10; i++)
        assert_int_equal(ac_seq_ready(s, 64), 0);
    elapsed = (double)(clock() - t0) / CLOCKS_PER_SEC;
    assert_true(elapsed < 0.5);
    assert_int_equal(ac_seq_skip_filtered(s), far);
    assert_int_equal(ac_seq_next(s), far + 1);
    assert_int_equal(ac_seq_skip_filtered(s), 0);
    /* a held event stops the skip */
    ac_seq_replay_begin(s, far + 1, far + 100);
    offer(s, far + 5);
    ac_seq_replay_end(s, far + 100);
    assert_int_equal(ac_seq_skip_filtered(s), 4);
    assert_int_equal(ac_seq_ready(s, 64), 1);
    assert_int_equal(pop_all(s, &seq, 1), 1);
    assert_int_equal(seq, far + 5);
    assert_int_equal(ac_seq_next(s), far + 101);
    teardown_seq(&s);
}

/* M2: replays end short of what a heartbeat announced: lowering latest stops asking. */
static void test_lower_latest_stops_asking(void **state)
{
    ac_seq_t *s = synced_at(11, 64);
    uint64_t from, to;
    ac_seq_note_latest(s, 20);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    assert_int_equal(from, 11);
    assert_int_equal(to, 20);
    ac_seq_replay_begin(s, from, to);
    ac_seq_replay_end(s, 10); /* the bus has nothing beyond 10 */
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    ac_seq_lower_latest(s, 10);
    assert_int_equal(ac_seq_latest(s), 10);
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_NONE);
    ac_seq_lower_latest(s, 30); /* never raises */
    assert_int_equal(ac_seq_latest(s), 10);
    ac_seq_note_latest(s, 21); /* announced again */
    assert_int_equal(ac_seq_want_replay(s, &from, &to), AC_SEQ_REPLAY_GAP);
    teardown_seq(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_in_order_and_duplicates),
        cmocka_unit_test(test_initial_replay_then_live),
        cmocka_unit_test(test_gap_from_live_event),
        cmocka_unit_test(test_gap_from_heartbeat),
        cmocka_unit_test(test_filtered_sequences_are_skipped),
        cmocka_unit_test(test_window_overflow_is_refetched),
        cmocka_unit_test(test_drop_during_replay_limits_its_claim),
        cmocka_unit_test(test_reset_forward_and_back),
        cmocka_unit_test(test_eviction_during_replay_limits_its_claim),
        cmocka_unit_test(test_reset_back_forgets_coverage),
        cmocka_unit_test(test_abort_allows_another),
        cmocka_unit_test(test_catchup_after_silence),
        cmocka_unit_test(test_randomised_against_simulated_bus),
        cmocka_unit_test(test_refused_offer_is_never_skipped),
        cmocka_unit_test(test_filtered_range_is_passed_at_once),
        cmocka_unit_test(test_lower_latest_stops_asking),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
