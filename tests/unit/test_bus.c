/* Unit tests: the ZeroMQ module (common/bus.c) on a libev loop, and the bus daemon's
 * forwarding (services/bus/bus.c): valid events reach a subscriber in order, garbage
 * (wrong frame counts, undecodable envelopes, topics that lie about the type) is counted
 * and dropped, and the publisher only reports ready once the bus has subscribed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "bus/bus.c"

#include "ac_event.h"

typedef struct fixture {
    struct ev_loop *loop;
    bus_config_t cfg;
    char in_ep[64], out_ep[64];
    bus_t bus;
    uint64_t seen[64];
    size_t nseen;
    size_t garbage;
    ev_timer deadline;
    int timed_out;
} fixture_t;

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    fixture_t *f = ac_container_of(w, fixture_t, deadline);
    f->timed_out = 1;
    ev_break(loop, EVBREAK_ALL);
}

/* Runs the loop until cond(f) holds or `seconds` pass. */
static int run_until(fixture_t *f, int (*cond)(fixture_t *), double seconds)
{
    f->timed_out = 0;
    ev_timer_set(&f->deadline, seconds, 0.);
    ev_timer_start(f->loop, &f->deadline);
    while (!cond(f) && !f->timed_out)
        ev_run(f->loop, EVRUN_ONCE);
    ev_timer_stop(f->loop, &f->deadline);
    return cond(f);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    int base = 20000 + (getpid() % 20000);
    f->loop = ev_loop_new(EVFLAG_AUTO);
    snprintf(f->in_ep, sizeof(f->in_ep), "tcp://127.0.0.1:%d", base);
    snprintf(f->out_ep, sizeof(f->out_ep), "tcp://127.0.0.1:%d", base + 1);
    f->cfg.input_bind = f->in_ep;
    f->cfg.output_bind = f->out_ep;
    f->cfg.hwm = 1000;
    f->cfg.max_msg = 65536;
    ev_timer_init(&f->deadline, on_deadline, 1., 0.);
    assert_int_equal(bus_setup(&f->bus, f->loop, &f->cfg), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    bus_teardown(&f->bus);
    ev_loop_destroy(f->loop);
    free(f);
    ac_bus_shutdown();
    return 0;
}

static int on_event(const Aftercare__V1__Envelope *env, const char *topic, void *arg)
{
    fixture_t *f = arg;
    if (f->nseen < 64)
        f->seen[f->nseen++] = env->sequence;
    return 0;
}

static void on_garbage(const ac_frames_t *frames, const char *why, void *arg)
{
    ((fixture_t *)arg)->garbage++;
}

static uint8_t *make_envelope(const char *topic, uint64_t seq, size_t *len)
{
    Aftercare__V1__Envelope env;
    ac_event_ids_t ids;
    uint8_t *raw, *out;
    size_t raw_len;
    ac_event_init(&env, &ids, "test", topic, "SV-1", "k", 1, NULL);
    assert_int_equal(ac_event_pack(&env, &raw, &raw_len), 0);
    out = malloc(raw_len + 11);
    *len = ac_event_append_sequence(raw, raw_len, seq, out);
    free(raw);
    return out;
}

static int pub_ready(fixture_t *f);
static ac_bus_pub_t *current_pub;
static int pub_ready(fixture_t *f)
{
    return ac_bus_pub_is_ready(current_pub);
}
static size_t want_seen;
static int enough_seen(fixture_t *f)
{
    return f->nseen >= want_seen;
}
static uint64_t want_malformed;
static int enough_malformed(fixture_t *f)
{
    return f->bus.malformed >= want_malformed;
}

static void test_forwarding_and_garbage(void **state)
{
    fixture_t *f = *state;
    ac_bus_sub_config_t scfg = {
        .endpoint = f->out_ep, .on_event = on_event, .on_garbage = on_garbage, .arg = f};
    ac_bus_sub_t *sub = ac_bus_sub_new(f->loop, &scfg);
    ac_bus_pub_t *pub = ac_bus_pub_new(f->loop, f->in_ep, NULL);
    ac_zsock_t *rogue = ac_zsock_new(f->loop, AC_ZSOCK_PUB);
    assert_non_null(sub);
    assert_non_null(pub);
    assert_non_null(rogue);
    assert_int_equal(ac_zsock_connect(rogue, f->in_ep), 0);

    current_pub = pub;
    assert_true(run_until(f, pub_ready, 5.));
    /* give the subscriber's subscription time to reach the bus's XPUB */
    want_seen = 1000;
    run_until(f, enough_seen, 0.3);

    for (uint64_t seq = 1; seq <= 20; seq++) {
        size_t len;
        uint8_t *env = make_envelope("ticket.created", seq, &len);
        assert_int_equal(ac_bus_pub_send(pub, "ticket.created", env, len), 0);
        free(env);
    }
    /* garbage from a rogue publisher: each must be dropped by the bus */
    {
        size_t len;
        uint8_t *good = make_envelope("ticket.created", 99, &len);
        uint8_t *noseq = make_envelope("ticket.created", 0, &len);
        const void *one[1] = {"ticket.created"};
        size_t one_len[1] = {14};
        const void *three[3] = {"ticket.created", good, "x"};
        size_t three_len[3] = {14, len, 1};
        const void *lie[2] = {"parts.reserved", good};
        size_t lie_len[2] = {14, len};
        const void *junk[2] = {"ticket.created", "\xff\xff\xff\xff\xff"};
        size_t junk_len[2] = {14, 5};
        const void *trunc[2] = {"ticket.created", good};
        size_t trunc_len[2] = {14, len / 2};
        const void *zero[2] = {"ticket.created", noseq};
        size_t zero_len[2] = {14, len - 2};
        run_until(f, enough_seen, 0.3); /* rogue's connection settles */
        assert_int_equal(ac_zsock_send(rogue, one, one_len, 1), 0);
        assert_int_equal(ac_zsock_send(rogue, three, three_len, 3), 0);
        assert_int_equal(ac_zsock_send(rogue, lie, lie_len, 2), 0);
        assert_int_equal(ac_zsock_send(rogue, junk, junk_len, 2), 0);
        assert_int_equal(ac_zsock_send(rogue, trunc, trunc_len, 2), 0);
        assert_int_equal(ac_zsock_send(rogue, zero, zero_len, 2), 0);
        free(good);
        free(noseq);
    }
    want_seen = 20;
    assert_true(run_until(f, enough_seen, 5.));
    want_malformed = 6;
    assert_true(run_until(f, enough_malformed, 5.));
    want_seen = 21;
    run_until(f, enough_seen, 0.3); /* nothing more may arrive */
    assert_int_equal(f->nseen, 20);
    for (size_t i = 0; i < 20; i++)
        assert_int_equal(f->seen[i], i + 1);
    assert_int_equal(f->bus.forwarded, 20);
    assert_int_equal(f->bus.malformed, 6);
    assert_int_equal(f->garbage, 0);

    ac_zsock_destroy(&rogue);
    ac_bus_pub_destroy(&pub);
    ac_bus_sub_destroy(&sub);
}

static void test_publisher_waits_for_bus(void **state)
{
    fixture_t *f = *state;
    char ep[64];
    /* a publisher pointed at a port where no bus listens never becomes ready and never
     * accepts a message it would have to drop */
    snprintf(ep, sizeof(ep), "tcp://127.0.0.1:%d", 20000 + (getpid() % 20000) + 2);
    ac_bus_pub_t *pub = ac_bus_pub_new(f->loop, ep, NULL);
    assert_non_null(pub);
    current_pub = pub;
    assert_false(run_until(f, pub_ready, 0.5));
    assert_int_equal(ac_bus_pub_send(pub, "ticket.created", "x", 1), AC_ERR_AGAIN);
    ac_bus_pub_destroy(&pub);
}

static int pub_not_ready(fixture_t *f)
{
    return !ac_bus_pub_is_ready(current_pub);
}

static void test_publisher_follows_bus_restarts(void **state)
{
    fixture_t *f = *state;
    ac_bus_pub_t *pub = ac_bus_pub_new(f->loop, f->in_ep, NULL);
    assert_non_null(pub);
    current_pub = pub;
    assert_true(run_until(f, pub_ready, 5.));
    assert_int_equal(ac_bus_pub_generation(pub), 1);

    /* the bus goes away: the publisher must notice and hold events, not queue them into a
     * dead connection */
    bus_teardown(&f->bus);
    assert_true(run_until(f, pub_not_ready, 5.));
    assert_int_equal(ac_bus_pub_send(pub, "ticket.created", "x", 1), AC_ERR_AGAIN);

    /* it comes back on the same address: ready again, on a new generation */
    assert_int_equal(bus_setup(&f->bus, f->loop, &f->cfg), 0);
    assert_true(run_until(f, pub_ready, 10.));
    assert_int_equal(ac_bus_pub_generation(pub), 2);
    ac_bus_pub_destroy(&pub);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_forwarding_and_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publisher_waits_for_bus, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publisher_follows_bus_restarts, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
