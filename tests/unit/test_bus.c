/* Unit tests: the ZeroMQ module (common/bus.c) on a libev loop, and the bus daemon's
 * forwarding (services/bus/bus.c): valid events reach a subscriber in order, garbage
 * (wrong frame counts, undecodable envelopes, topics that lie about the type) is counted
 * and dropped, and the publisher only reports ready once the bus has subscribed.
 * Security (keys.c, zap.c): every socket is CURVE; only a service key publishes, and only
 * its own source; a key's topics limit what it sees; a revoked key is cut off.
 *
 * Needs AC_TEST_PG_DSN (a superuser DSN to a database with auth.bus_keys; tests/run.sh
 * sets it): the bus loads its keys from there. The tests add their keys, named
 * unit-bus-<pid>-*, and delete them afterwards. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <libpq-fe.h>
#include <sys/stat.h>

#include "bus/bus.c"
#include "bus/conns.c"
#include "bus/keys.c"
#include "bus/zap.c"

#include "ac_event.h"

typedef struct fixture {
    struct ev_loop *loop;
    bus_config_t cfg;
    char in_ep[64], out_ep[64];
    char dir[64], bus_key_path[128];
    ac_curve_t svc;  /* a service key for source aftercare/test (the envelopes' source) */
    ac_curve_t subk; /* a subscriber key, every topic */
    PGconn *pg;      /* superuser: adds and revokes keys */
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

static void pg_exec(fixture_t *f, const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(f->pg, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(f->pg));
    PQclear(r);
}

/* Allows a key on the bus: kind "service" (source aftercare/test) or "subscriber". */
static void allow_key(fixture_t *f, const char *suffix, const char *kind, const char *topics,
                      const ac_curve_t *keys)
{
    char name[64];
    snprintf(name, sizeof(name), "unit-bus-%d-%s", (int)getpid(), suffix);
    const char *params[] = {keys->public_key, name, kind,
                            strcmp(kind, "service") == 0 ? "aftercare/test" : NULL, topics};
    pg_exec(f,
            "INSERT INTO auth.bus_keys (public_key, name, kind, source, topics) "
            "VALUES ($1, $2, $3, $4, $5::text[])",
            5, params);
}

/* A client pair for a socket to the bus whose public key is server_key. */
static void client_keys(const char *server_key, ac_curve_t *out)
{
    memset(out, 0, sizeof(*out));
    assert_int_equal(ac_curve_keypair(out->public_key, out->secret_key), 0);
    snprintf(out->server_key, sizeof(out->server_key), "%s", server_key);
}

static int keys_loaded(fixture_t *f)
{
    return bus_keys_is_loaded(f->bus.keys);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    int base = 20000 + (getpid() % 20000);
    const char *dsn = getenv("AC_TEST_PG_DSN");
    ac_curve_t bus_pair;
    char err[512];
    if (!dsn || !*dsn)
        fail_msg("AC_TEST_PG_DSN is not set: the bus loads its keys from PostgreSQL");
    f->pg = PQconnectdb(dsn);
    if (PQstatus(f->pg) != CONNECTION_OK)
        fail_msg("cannot connect: %s", PQerrorMessage(f->pg));
    f->loop = ev_loop_new(EVFLAG_AUTO);
    snprintf(f->in_ep, sizeof(f->in_ep), "tcp://127.0.0.1:%d", base);
    snprintf(f->out_ep, sizeof(f->out_ep), "tcp://127.0.0.1:%d", base + 1);
    snprintf(f->dir, sizeof(f->dir), "/tmp/ac-test-bus-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->bus_key_path, sizeof(f->bus_key_path), "%s/bus.key", f->dir);
    memset(&bus_pair, 0, sizeof(bus_pair));
    assert_int_equal(ac_curve_keypair(bus_pair.public_key, bus_pair.secret_key), 0);
    assert_int_equal(ac_curve_write(f->bus_key_path, &bus_pair, NULL, err, sizeof(err)), 0);
    f->cfg.input_bind = f->in_ep;
    f->cfg.output_bind = f->out_ep;
    f->cfg.hwm = 1000;
    f->cfg.max_msg = 65536;
    f->cfg.secret_key_file = f->bus_key_path;
    f->cfg.db = (char *)(uintptr_t)dsn;
    ev_timer_init(&f->deadline, on_deadline, 1., 0.);
    client_keys(bus_pair.public_key, &f->svc);
    client_keys(bus_pair.public_key, &f->subk);
    allow_key(f, "svc", "service", "{}", &f->svc);
    allow_key(f, "sub", "subscriber", "{}", &f->subk);
    assert_int_equal(bus_setup(&f->bus, f->loop, &f->cfg), 0);
    assert_true(run_until(f, keys_loaded, 10.));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    char pattern[64];
    snprintf(pattern, sizeof(pattern), "unit-bus-%d-%%", (int)getpid());
    const char *params[] = {pattern};
    bus_teardown(&f->bus);
    pg_exec(f, "DELETE FROM auth.bus_keys WHERE name LIKE $1", 1, params);
    PQfinish(f->pg);
    ev_loop_destroy(f->loop);
    unlink(f->bus_key_path);
    rmdir(f->dir);
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
    ac_bus_sub_config_t scfg = {.endpoint = f->out_ep,
                                .curve = &f->subk,
                                .on_event = on_event,
                                .on_garbage = on_garbage,
                                .arg = f};
    ac_bus_sub_t *sub = ac_bus_sub_new(f->loop, &scfg);
    ac_bus_pub_t *pub = ac_bus_pub_new(f->loop, f->in_ep, &f->svc);
    ac_zsock_t *rogue = ac_zsock_new(f->loop, AC_ZSOCK_PUB);
    assert_non_null(sub);
    assert_non_null(pub);
    assert_non_null(rogue);
    /* garbage from an authorised publisher: the checks do not rely on the key */
    assert_int_equal(ac_zsock_set_curve_client(rogue, &f->svc), 0);
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
    ac_bus_pub_t *pub = ac_bus_pub_new(f->loop, f->in_ep, &f->svc);
    assert_non_null(pub);
    current_pub = pub;
    assert_true(run_until(f, pub_ready, 5.));
    assert_int_equal(ac_bus_pub_generation(pub), 1);

    /* the bus goes away: the publisher must notice and hold events, not queue them into a
     * dead connection */
    bus_teardown(&f->bus);
    assert_true(run_until(f, pub_not_ready, 5.));
    assert_int_equal(ac_bus_pub_send(pub, "ticket.created", "x", 1), AC_ERR_AGAIN);

    /* it comes back on the same address: ready again, on a new generation (the handshake
     * waits until the new bus has loaded its keys, rather than being refused) */
    assert_int_equal(bus_setup(&f->bus, f->loop, &f->cfg), 0);
    assert_true(run_until(f, pub_ready, 10.));
    assert_int_equal(ac_bus_pub_generation(pub), 2);
    ac_bus_pub_destroy(&pub);
}

/* --- security ------------------------------------------------------------------------ */

typedef struct seen {
    ac_bus_sub_config_t cfg; /* the subscriber borrows it */
    size_t n;
    char topics[64][32];
} seen_t;

static int on_seen(const Aftercare__V1__Envelope *env, const char *topic, void *arg)
{
    seen_t *s = arg;
    if (s->n < 64)
        snprintf(s->topics[s->n++], sizeof(s->topics[0]), "%s", topic);
    return 0;
}

static ac_bus_sub_t *subscriber(fixture_t *f, const ac_curve_t *keys, const char *const *topics,
                                seen_t *seen)
{
    seen->cfg = (ac_bus_sub_config_t){
        .endpoint = f->out_ep, .curve = keys, .topics = topics, .on_event = on_seen, .arg = seen};
    ac_bus_sub_t *sub = ac_bus_sub_new(f->loop, &seen->cfg);
    assert_non_null(sub);
    return sub;
}

static void publish(ac_bus_pub_t *pub, const char *service, const char *topic, uint64_t seq)
{
    Aftercare__V1__Envelope env;
    ac_event_ids_t ids;
    uint8_t *raw, *out;
    size_t raw_len, len;
    ac_event_init(&env, &ids, service, topic, "SV-1", "k", 1, NULL);
    assert_int_equal(ac_event_pack(&env, &raw, &raw_len), 0);
    out = malloc(raw_len + 11);
    len = ac_event_append_sequence(raw, raw_len, seq, out);
    assert_int_equal(ac_bus_pub_send(pub, topic, out, len), 0);
    free(raw);
    free(out);
}

static seen_t *want_seen_of;
static int seen_enough(fixture_t *f)
{
    return want_seen_of->n >= want_seen;
}
static uint64_t want_count, *counter;
static int counted(fixture_t *f)
{
    return *counter >= want_count;
}
static int never(fixture_t *f)
{
    return 0;
}

static void test_only_a_service_key_publishes_its_own_source(void **state)
{
    fixture_t *f = *state;
    seen_t seen = {0};
    ac_bus_sub_t *sub = subscriber(f, &f->subk, NULL, &seen);
    ac_bus_pub_t *pub = ac_bus_pub_new(f->loop, f->in_ep, &f->svc);
    ac_bus_pub_t *impostor = ac_bus_pub_new(f->loop, f->in_ep, &f->subk);
    current_pub = pub;
    assert_true(run_until(f, pub_ready, 5.));
    run_until(f, never, 0.3); /* the subscription reaches the bus */

    /* a subscriber key is refused at the handshake: the bus never subscribes to it */
    current_pub = impostor;
    assert_false(run_until(f, pub_ready, 0.5));
    assert_true(f->bus.auth_failures[BUS_DOMAIN_INPUT] >= 1);

    /* the service key speaks for aftercare/test only, and never on bus.* (the bus's own) */
    publish(pub, "other", "ticket.created", 1); /* source aftercare/other */
    publish(pub, "test", "bus.heartbeat", 1);   /* its own source, a matching type */
    publish(pub, "test", "ticket.created", 1);
    want_seen = 1;
    want_seen_of = &seen;
    assert_true(run_until(f, seen_enough, 5.));
    run_until(f, never, 0.2);
    assert_int_equal(seen.n, 1);
    assert_int_equal(f->bus.unauthorised, 2);
    assert_int_equal(f->bus.forwarded, 1);
    assert_int_equal(f->bus.malformed, 0);

    ac_bus_pub_destroy(&impostor);
    ac_bus_pub_destroy(&pub);
    ac_bus_sub_destroy(&sub);
}

static void test_topics_of_a_key_limit_what_it_sees(void **state)
{
    fixture_t *f = *state;
    ac_curve_t crm;
    seen_t all = {0}, limited = {0}, denied = {0};
    const char *const parts_only[] = {"parts.", NULL};
    client_keys(f->bus.curve.public_key, &crm);
    allow_key(f, "crm", "subscriber", "{ticket.,survey.}", &crm);
    want_count = 1;
    counter = &f->bus.subscribes;
    ac_bus_sub_t *sub_all = subscriber(f, &f->subk, NULL, &all);
    /* the CRM asks for everything once, and for parts. only once */
    ac_bus_sub_t *sub_limited = NULL, *sub_denied = NULL;
    for (int i = 0; i < 50 && (!sub_limited || !sub_denied); i++) {
        run_until(f, never, 0.05); /* the bus hears of the new key */
        if (bus_keys_find(f->bus.keys, crm.public_key)) {
            sub_limited = subscriber(f, &crm, NULL, &limited);
            sub_denied = subscriber(f, &crm, parts_only, &denied);
        }
    }
    assert_non_null(sub_limited);
    ac_bus_pub_t *pub = ac_bus_pub_new(f->loop, f->in_ep, &f->svc);
    current_pub = pub;
    assert_true(run_until(f, pub_ready, 5.));
    want_count = 3;
    assert_true(run_until(f, counted, 5.)); /* the three subscriptions reached the bus */
    run_until(f, never, 0.1);
    assert_true(f->bus.topics_denied >= 1); /* "parts." of a ticket./survey. key */

    publish(pub, "test", "parts.reserved", 1);
    publish(pub, "test", "ticket.created", 2);
    publish(pub, "test", "survey.sent", 3);
    want_seen = 3;
    want_seen_of = &all;
    assert_true(run_until(f, seen_enough, 5.));
    want_seen = 2;
    want_seen_of = &limited;
    assert_true(run_until(f, seen_enough, 5.));
    run_until(f, never, 0.2);
    assert_int_equal(limited.n, 2);
    assert_string_equal(limited.topics[0], "ticket.created");
    assert_string_equal(limited.topics[1], "survey.sent");
    assert_int_equal(denied.n, 0);

    ac_bus_pub_destroy(&pub);
    ac_bus_sub_destroy(&sub_denied);
    ac_bus_sub_destroy(&sub_limited);
    ac_bus_sub_destroy(&sub_all);
}

static void test_revocation_recreates_the_output(void **state)
{
    fixture_t *f = *state;
    seen_t seen = {0}, again = {0};
    char name[64];
    ac_bus_sub_t *sub = subscriber(f, &f->subk, NULL, &seen);
    ac_bus_pub_t *pub = ac_bus_pub_new(f->loop, f->in_ep, &f->svc);
    current_pub = pub;
    assert_true(run_until(f, pub_ready, 5.));
    want_count = 1;
    counter = &f->bus.subscribes;
    assert_true(run_until(f, counted, 5.));
    publish(pub, "test", "ticket.created", 1);
    want_seen = 1;
    want_seen_of = &seen;
    assert_true(run_until(f, seen_enough, 5.));

    snprintf(name, sizeof(name), "unit-bus-%d-sub", (int)getpid());
    const char *params[] = {name};
    pg_exec(f, "UPDATE auth.bus_keys SET revoked_at = now() WHERE name = $1", 1, params);
    want_count = 1;
    counter = &f->bus.output_recreated;
    assert_true(run_until(f, counted, 5.));

    /* whatever comes now never reaches the revoked key, which is refused on reconnecting */
    uint64_t refused = f->bus.auth_failures[BUS_DOMAIN_OUTPUT];
    ac_bus_sub_t *retry = subscriber(f, &f->subk, NULL, &again);
    want_count = refused + 1;
    counter = &f->bus.auth_failures[BUS_DOMAIN_OUTPUT];
    assert_true(run_until(f, counted, 5.));
    publish(pub, "test", "ticket.created", 2);
    run_until(f, never, 0.5);
    assert_int_equal(seen.n, 1);
    assert_int_equal(again.n, 0);

    ac_bus_sub_destroy(&retry);
    ac_bus_pub_destroy(&pub);
    ac_bus_sub_destroy(&sub);
}

/* Connections and failed handshakes from a socket monitor's events (conns.c): an outcome
 * names no connection, yet the count stays right and failures keep their reasons. */
static void test_connections_from_monitor_events(void **state)
{
    bus_t bus;
    bus_zap_t zap;
    bus_conns_t c;
    (void)state;
    memset(&bus, 0, sizeof(bus));
    memset(&zap, 0, sizeof(zap));
    memset(&c, 0, sizeof(c));
    bus.loop = ev_loop_new(EVFLAG_AUTO);
    bus.zap = &zap;
    zap.bus = &bus;
    c.bus = &bus;
    c.domain = BUS_ZAP_OUTPUT;

    /* a TCP port check (fd 10) waits in its handshake while a subscriber (11) gets in */
    on_conn_event(&c, AC_ZEVENT_ACCEPTED, 10, "");
    on_conn_event(&c, AC_ZEVENT_ACCEPTED, 11, "");
    on_conn_event(&c, AC_ZEVENT_HANDSHAKE_SUCCEEDED, 0, "");
    assert_int_equal(c.connections, 1);
    /* the check gives up: its failure and close take no subscriber away */
    on_conn_event(&c, AC_ZEVENT_HANDSHAKE_FAILED_NO_DETAIL, 104, "");
    on_conn_event(&c, AC_ZEVENT_DISCONNECTED, 10, "");
    assert_int_equal(c.connections, 1);
    assert_int_equal(c.failures[BUS_HS_INCOMPLETE], 1);
    /* garbage: closed without any handshake event */
    on_conn_event(&c, AC_ZEVENT_ACCEPTED, 12, "");
    on_conn_event(&c, AC_ZEVENT_DISCONNECTED, 12, "");
    assert_int_equal(c.failures[BUS_HS_NOT_ZMTP], 1);
    /* no CURVE, the wrong server key, a refused key */
    on_conn_event(&c, AC_ZEVENT_ACCEPTED, 13, "");
    on_conn_event(&c, AC_ZEVENT_HANDSHAKE_FAILED_PROTOCOL, AC_ZPROTO_ZMTP_MECHANISM_MISMATCH, "");
    on_conn_event(&c, AC_ZEVENT_DISCONNECTED, 13, "");
    on_conn_event(&c, AC_ZEVENT_ACCEPTED, 13, "");
    on_conn_event(&c, AC_ZEVENT_HANDSHAKE_FAILED_PROTOCOL, AC_ZPROTO_ZMTP_CRYPTOGRAPHIC, "");
    on_conn_event(&c, AC_ZEVENT_DISCONNECTED, 13, "");
    on_conn_event(&c, AC_ZEVENT_ACCEPTED, 14, "");
    on_conn_event(&c, AC_ZEVENT_HANDSHAKE_FAILED_AUTH, 400, "");
    on_conn_event(&c, AC_ZEVENT_DISCONNECTED, 14, "");
    assert_int_equal(c.failures[BUS_HS_NOT_CURVE], 1);
    assert_int_equal(c.failures[BUS_HS_CRYPTOGRAPHIC], 1);
    assert_int_equal(c.failures[BUS_HS_REFUSED], 1);
    assert_int_equal(c.connections, 1);
    /* a second subscriber, then both leave */
    on_conn_event(&c, AC_ZEVENT_ACCEPTED, 15, "");
    on_conn_event(&c, AC_ZEVENT_HANDSHAKE_SUCCEEDED, 0, "");
    assert_int_equal(c.connections, 2);
    on_conn_event(&c, AC_ZEVENT_DISCONNECTED, 11, "");
    on_conn_event(&c, AC_ZEVENT_DISCONNECTED, 15, "");
    assert_int_equal(c.connections, 0);
    assert_int_equal(c.accepted, 7);
    assert_int_equal(c.handshakes, 2);

    bus_conns_clear(&c);
    ev_loop_destroy(bus.loop);
}

/* ac_curve_write() never overwrites, and on failure removes only a file it created. */
static void test_curve_write_leaves_other_files_alone(void **state)
{
    char dir[] = "/tmp/ac-test-curve-XXXXXX", path[64], err[512], text[32] = {0};
    ac_curve_t pair;
    FILE *fp;
    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/other.key", dir);
    fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("someone else's\n", fp);
    fclose(fp);
    assert_int_equal(ac_curve_keypair(pair.public_key, pair.secret_key), 0);
    assert_int_not_equal(ac_curve_write(path, &pair, NULL, err, sizeof(err)), 0);
    fp = fopen(path, "r"); /* still there, untouched */
    assert_non_null(fp);
    assert_non_null(fgets(text, sizeof(text), fp));
    fclose(fp);
    assert_string_equal(text, "someone else's\n");
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_curve_write_leaves_other_files_alone),
        cmocka_unit_test(test_connections_from_monitor_events),
        cmocka_unit_test_setup_teardown(test_only_a_service_key_publishes_its_own_source, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_topics_of_a_key_limit_what_it_sees, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revocation_recreates_the_output, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forwarding_and_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publisher_waits_for_bus, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publisher_follows_bus_restarts, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
