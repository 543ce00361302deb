/* test_db.c — the libpq pool and the migrations against a real PostgreSQL.
 *
 * Needs AC_TEST_PG_DSN: a superuser DSN to a scratch database (tests/run.sh sets it). The
 * tests fail, rather than skip, when it is unset. They use the schemas ac_test_db and
 * ac_test_db_mig, which they drop and recreate. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ev.h>
#include <libpq-fe.h>

#include "ac_db.h"
#include "ac_log.h"
#include "pg_scratch.h"

#define SCHEMA     "ac_test_db"
#define MIG_SCHEMA "ac_test_db_mig"
#define TIMEOUT_S  15.0

enum { S_INSERT, S_SELECT, S_COUNT };

static const ac_db_stmt_t test_stmts[] = {
    [S_INSERT] = {"INSERT INTO " SCHEMA ".t (id, v) VALUES ($1, $2) RETURNING id", 2},
    [S_SELECT] = {"SELECT v FROM " SCHEMA ".t WHERE id = $1", 1},
    [S_COUNT] = {"SELECT count(*) FROM " SCHEMA ".t WHERE id = $1", 1},
};

/* --- helpers --------------------------------------------------------------------------- */

/* First column of the first row as a number (-1 for SQL NULL). */
static long pg_long(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        fail_msg("%s: %s", sql, PQerrorMessage(pg));
    long v = PQgetisnull(r, 0, 0) ? -1 : atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* Stops ev_run(EVRUN_ONCE) from blocking forever. */
typedef struct guard {
    ev_timer timer;
    int is_expired;
} guard_t;

static void on_guard(struct ev_loop *loop, ev_timer *w, int revents)
{
    guard_t *g = ac_container_of(w, guard_t, timer);
    g->is_expired = 1;
}

static void guard_start(struct ev_loop *loop, guard_t *g, double timeout_s)
{
    g->is_expired = 0;
    ev_now_update(loop);
    ev_timer_init(&g->timer, on_guard, timeout_s, 0.);
    ev_timer_start(loop, &g->timer);
}

#define RUN_UNTIL(loop, cond)                                                                      \
    do {                                                                                           \
        guard_t guard_;                                                                            \
        guard_start(loop, &guard_, TIMEOUT_S);                                                     \
        while (!(cond) && !guard_.is_expired)                                                      \
            ev_run(loop, EVRUN_ONCE);                                                              \
        ev_timer_stop(loop, &guard_.timer);                                                        \
        if (!(cond))                                                                               \
            fail_msg("timed out waiting for %s", #cond);                                           \
    } while (0)

/* Runs the loop for about `seconds`. */
static void run_for(struct ev_loop *loop, double seconds)
{
    guard_t g;
    guard_start(loop, &g, seconds);
    while (!g.is_expired)
        ev_run(loop, EVRUN_ONCE);
}

/* What a txn callback saw. */
typedef struct outcome {
    int ncalls;
    int err;
    int nresults;
    int is_free_in_cb; /* free the txn inside the callback */
    ac_db_txn_t **txn_p;
} outcome_t;

static void on_outcome(ac_db_txn_t *txn, int err, void *arg)
{
    outcome_t *o = arg;
    o->ncalls++;
    o->err = err;
    o->nresults = ac_db_txn_nresults(txn);
    if (o->is_free_in_cb)
        ac_db_txn_free(o->txn_p);
}

static const char *result_value(const ac_db_txn_t *t, int i)
{
    PGresult *r = ac_db_txn_result(t, i);
    assert_non_null(r);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(r), 1);
    return PQgetvalue(r, 0, 0);
}

typedef struct fixture {
    struct ev_loop *loop;
    ac_db_config_t cfg;
    ac_db_t *db;
    char conninfo[512];
    /* on_notify */
    int nmissed; /* calls with channel == NULL */
    int nnotified;
    char channel[64];
    char payload[64];
} fixture_t;

static void on_notify(void *arg, const char *channel, const char *payload)
{
    fixture_t *fx = arg;
    if (!channel) {
        fx->nmissed++;
        return;
    }
    fx->nnotified++;
    snprintf(fx->channel, sizeof fx->channel, "%s", channel);
    snprintf(fx->payload, sizeof fx->payload, "%s", payload ? payload : "");
}

static void pool_open(fixture_t *fx, int pool_size, const char *extra_conninfo)
{
    snprintf(fx->conninfo, sizeof fx->conninfo, "%s %s", test_dsn(), extra_conninfo);
    fx->cfg.conninfo = fx->conninfo;
    fx->cfg.pool_size = pool_size;
    fx->cfg.stmts = test_stmts;
    fx->cfg.nstmts = sizeof test_stmts / sizeof test_stmts[0];
    fx->cfg.on_notify = on_notify;
    fx->cfg.notify_arg = fx;
    fx->cfg.name = "test";
    fx->db = ac_db_new(fx->loop, &fx->cfg);
    assert_non_null(fx->db);
    RUN_UNTIL(fx->loop, ac_db_is_up(fx->db));
}

static int fixture_setup(void **state)
{
    PGconn *pg = pg_open();
    pg_exec(pg, "DROP SCHEMA IF EXISTS " SCHEMA " CASCADE");
    pg_exec(pg, "CREATE SCHEMA " SCHEMA);
    pg_exec(pg, "CREATE TABLE " SCHEMA ".t (id int PRIMARY KEY, v text)");
    PQfinish(pg);
    fixture_t *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    fx->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(fx->loop);
    *state = fx;
    return 0;
}

static int fixture_teardown(void **state)
{
    fixture_t *fx = *state;
    ac_db_destroy(&fx->db);
    ev_loop_destroy(fx->loop);
    free(fx);
    return 0;
}

static uint32_t pool_nready(const ac_db_t *db)
{
    ac_db_stats_t st;
    ac_db_stats(db, &st);
    return st.ready;
}

/* Runs `SELECT count(*) ... WHERE id = id` through the pool. */
static long pool_count(fixture_t *fx, const char *id)
{
    ac_db_txn_t *t = ac_db_txn_new(fx->db, 1);
    assert_non_null(t);
    const char *params[] = {id};
    assert_int_equal(ac_db_txn_add(t, S_COUNT, params, NULL, NULL), 0);
    outcome_t o = {0};
    assert_int_equal(ac_db_txn_commit(t, on_outcome, &o), 0);
    RUN_UNTIL(fx->loop, o.ncalls == 1);
    assert_int_equal(o.err, 0);
    long n = atol(result_value(t, 0));
    ac_db_txn_free(&t);
    return n;
}

/* --- migrations ------------------------------------------------------------------------ */

static const ac_migration_t mig_good[] = {
    {1, "001_first",
     "CREATE TABLE " MIG_SCHEMA ".m1 (x int);\nINSERT INTO " MIG_SCHEMA ".m1 VALUES (1);\n"},
    {2, "002_second", "CREATE TABLE " MIG_SCHEMA ".m2 (y int)"},
    {0, NULL, NULL},
};

static const ac_migration_t mig_bad[] = {
    {1, "001_first", "CREATE TABLE " MIG_SCHEMA ".m1 (x int)"},
    {2, "002_second", "CREATE TABLE " MIG_SCHEMA ".m2 (y int)"},
    {3, "003_broken", "CREATE TABLE " MIG_SCHEMA ".m3 (z int); SELECT 1/0;"},
    {0, NULL, NULL},
};

static const ac_migration_t mig_slow[] = {
    {1, "001_slow", "SELECT pg_sleep(0.5); CREATE TABLE " MIG_SCHEMA ".slow (x int);"},
    {0, NULL, NULL},
};

static void test_migrate(void **state)
{
    const char *dsn = test_dsn();
    PGconn *pg = pg_open();
    pg_exec(pg, "DROP SCHEMA IF EXISTS " MIG_SCHEMA " CASCADE");

    /* Creates the schema and its bookkeeping, applies both. */
    assert_int_equal(ac_db_migrate(dsn, MIG_SCHEMA, "unit", mig_good, 5), 0);
    assert_int_equal(pg_long(pg, "SELECT count(*) FROM " MIG_SCHEMA ".schema_migrations "
                                 "WHERE component = 'unit'"),
                     2);
    assert_int_equal(pg_long(pg, "SELECT count(*) FROM " MIG_SCHEMA ".m1"), 1);

    /* Again: nothing to do (re-running 001 would fail on CREATE TABLE). */
    assert_int_equal(ac_db_migrate(dsn, MIG_SCHEMA, "unit", mig_good, 5), 0);
    assert_int_equal(pg_long(pg, "SELECT count(*) FROM " MIG_SCHEMA ".m1"), 1);

    /* A failing migration leaves nothing behind and is not recorded. */
    assert_int_equal(ac_db_migrate(dsn, MIG_SCHEMA, "unit", mig_bad, 5), AC_ERR_DB);
    assert_int_equal(pg_long(pg, "SELECT count(*) FROM pg_tables WHERE schemaname = '" MIG_SCHEMA
                                 "' AND tablename = 'm3'"),
                     0);
    assert_int_equal(pg_long(pg, "SELECT max(version) FROM " MIG_SCHEMA ".schema_migrations "
                                 "WHERE component = 'unit'"),
                     2);

    /* Two processes starting at once: both succeed, the migration runs once. */
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(ac_db_migrate(dsn, MIG_SCHEMA, "slow", mig_slow, 5) == 0 ? 0 : 1);
    int rc = ac_db_migrate(dsn, MIG_SCHEMA, "slow", mig_slow, 5);
    int status = 0;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_int_equal(rc, 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(pg_long(pg, "SELECT count(*) FROM " MIG_SCHEMA ".schema_migrations "
                                 "WHERE component = 'slow'"),
                     1);

    /* No server: gives up after wait_s. */
    assert_int_equal(ac_db_migrate("host=127.0.0.1 port=1", MIG_SCHEMA, "unit", mig_good, 0.6),
                     AC_ERR_UNAVAILABLE);
    PQfinish(pg);
}

/* --- parameters ------------------------------------------------------------------------ */

/* ac_db_array_literal(): what PostgreSQL reads back is what went in, element by element
 * (quotes, backslashes, commas, braces, empty strings, NULLs); no elements is an empty
 * array. */
static void test_array_literal(void **state)
{
    (void)state;
    const char *values[] = {"plain", "a \"quoted\" word", "back\\slash", NULL,
                            "",      "comma, {brace}",    "NULL"};
    size_t n = sizeof values / sizeof values[0];
    char *lit = ac_db_array_literal(values, n);
    assert_non_null(lit);
    PGconn *pg = pg_open();
    const char *params[1] = {lit};
    PGresult *r = PQexecParams(pg,
                               "SELECT x, x IS NULL FROM unnest($1::text[]) WITH ORDINALITY "
                               "AS u(x, i) ORDER BY i",
                               1, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(r), (int)n);
    for (size_t i = 0; i < n; i++) {
        if (values[i]) {
            assert_string_equal(PQgetvalue(r, (int)i, 1), "f");
            assert_string_equal(PQgetvalue(r, (int)i, 0), values[i]);
        } else {
            assert_string_equal(PQgetvalue(r, (int)i, 1), "t");
        }
    }
    PQclear(r);
    free(lit);

    lit = ac_db_array_literal(NULL, 0);
    assert_string_equal(lit, "{}");
    params[0] = lit;
    r = PQexecParams(pg, "SELECT cardinality($1::text[])", 1, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(r, 0, 0), "0");
    PQclear(r);
    free(lit);
    PQfinish(pg);
}

/* --- transactions ---------------------------------------------------------------------- */

static void test_commit_returns_results(void **state)
{
    fixture_t *fx = *state;
    pool_open(fx, 1, "");
    ac_db_txn_t *t = ac_db_txn_new(fx->db, 1);
    assert_non_null(t);
    const char *insert[] = {"1", "one"};
    const char *select[] = {"1"};
    assert_int_equal(ac_db_txn_add(t, S_INSERT, insert, NULL, NULL), 0);
    assert_int_equal(ac_db_txn_add(t, S_SELECT, select, NULL, NULL), 0);
    outcome_t o = {0};
    assert_int_equal(ac_db_txn_commit(t, on_outcome, &o), 0);
    assert_int_equal(o.ncalls, 0); /* never from inside commit() */
    RUN_UNTIL(fx->loop, o.ncalls == 1);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.nresults, 2);
    assert_string_equal(result_value(t, 0), "1");
    assert_string_equal(result_value(t, 1), "one");
    assert_null(ac_db_txn_result(t, 2));
    assert_string_equal(ac_db_txn_sqlstate(t), "");
    ac_db_txn_free(&t);
    assert_null(t);

    PGconn *pg = pg_open();
    assert_int_equal(pg_long(pg, "SELECT count(*) FROM " SCHEMA ".t WHERE id = 1"), 1);
    PQfinish(pg);

    ac_db_stats_t st;
    ac_db_stats(fx->db, &st);
    assert_int_equal(st.txns, 1);
    assert_int_equal(st.ready, 1);
    assert_int_equal(st.reconnects, 1);
}

static void test_binary_results(void **state)
{
    fixture_t *fx = *state;
    pool_open(fx, 1, "");
    ac_db_txn_t *t = ac_db_txn_new(fx->db, 0);
    assert_non_null(t);
    const char *v[] = {"258"};
    assert_int_equal(ac_db_txn_add_sql(t, "SELECT $1::bigint", 1, v, NULL, NULL), 0);
    ac_db_txn_set_binary_results(t, 1);
    assert_int_equal(ac_db_txn_add_sql(t, "SELECT $1::bigint, '\\x00ff01'::bytea, 'txt'::text", 1,
                                       v, NULL, NULL),
                     0);
    outcome_t o = {0};
    assert_int_equal(ac_db_txn_flush(t, on_outcome, &o), 0);
    RUN_UNTIL(fx->loop, o.ncalls == 1);
    assert_int_equal(o.err, 0);
    PGresult *text = ac_db_txn_result(t, 0), *bin = ac_db_txn_result(t, 1);
    assert_int_equal(PQfformat(text, 0), 0); /* added before the switch: text */
    assert_string_equal(PQgetvalue(text, 0, 0), "258");
    assert_int_equal(PQfformat(bin, 0), 1);
    assert_int_equal(PQgetlength(bin, 0, 0), 8);
    assert_memory_equal(PQgetvalue(bin, 0, 0), "\0\0\0\0\0\0\x01\x02", 8);
    assert_int_equal(PQgetlength(bin, 0, 1), 3);
    assert_memory_equal(PQgetvalue(bin, 0, 1), "\x00\xff\x01", 3);
    assert_int_equal(PQgetlength(bin, 0, 2), 3);
    assert_memory_equal(PQgetvalue(bin, 0, 2), "txt", 3);
    ac_db_txn_free(&t);
}

static void test_flush_then_commit(void **state)
{
    fixture_t *fx = *state;
    pool_open(fx, 1, "");
    PGconn *pg = pg_open();
    ac_db_txn_t *t = ac_db_txn_new(fx->db, 1);
    const char *insert[] = {"2", "two"};
    assert_int_equal(ac_db_txn_add(t, S_INSERT, insert, NULL, NULL), 0);
    outcome_t o = {0};
    assert_int_equal(ac_db_txn_flush(t, on_outcome, &o), 0);
    RUN_UNTIL(fx->loop, o.ncalls == 1);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.nresults, 1);
    assert_string_equal(result_value(t, 0), "2");
    /* Inside a transaction: nobody else sees the row yet. */
    assert_int_equal(pg_long(pg, "SELECT count(*) FROM " SCHEMA ".t WHERE id = 2"), 0);

    /* Second round trip, with an unprepared statement and a binary parameter. */
    const char *select[] = {"2"};
    assert_int_equal(ac_db_txn_add(t, S_SELECT, select, NULL, NULL), 0);
    const char bin[] = {'x', '\0', 'y'};
    const char *bin_values[] = {bin};
    const int bin_lengths[] = {3};
    const int bin_formats[] = {1};
    assert_int_equal(
        ac_db_txn_add_sql(t, "SELECT length($1::bytea)", 1, bin_values, bin_lengths, bin_formats),
        0);
    const char *null_values[] = {NULL};
    assert_int_equal(ac_db_txn_add_sql(t, "SELECT $1::text IS NULL", 1, null_values, NULL, NULL),
                     0);
    assert_int_equal(ac_db_txn_commit(t, on_outcome, &o), 0);
    assert_int_equal(ac_db_txn_nresults(t), 3);
    assert_null(ac_db_txn_result(t, 0)); /* the flush's results are gone */
    RUN_UNTIL(fx->loop, o.ncalls == 2);
    assert_int_equal(o.err, 0);
    assert_string_equal(result_value(t, 0), "two");
    assert_string_equal(result_value(t, 1), "3");
    assert_string_equal(result_value(t, 2), "t");
    /* Committed: no more round trips. */
    assert_int_equal(ac_db_txn_flush(t, on_outcome, &o), AC_ERR_CONFLICT);
    ac_db_txn_free(&t);
    assert_int_equal(pg_long(pg, "SELECT count(*) FROM " SCHEMA ".t WHERE id = 2"), 1);
    PQfinish(pg);
}

static void test_sql_error_rolls_back(void **state)
{
    fixture_t *fx = *state;
    pool_open(fx, 1, "");
    PGconn *pg = pg_open();
    pg_exec(pg, "INSERT INTO " SCHEMA ".t VALUES (30, 'taken')");

    ac_db_txn_t *t = ac_db_txn_new(fx->db, 1);
    const char *ok[] = {"31", "fine"};
    const char *dup[] = {"30", "duplicate"};
    const char *select[] = {"31"};
    assert_int_equal(ac_db_txn_add(t, S_INSERT, ok, NULL, NULL), 0);
    assert_int_equal(ac_db_txn_add(t, S_INSERT, dup, NULL, NULL), 0);
    assert_int_equal(ac_db_txn_add(t, S_SELECT, select, NULL, NULL), 0);
    outcome_t o = {0};
    assert_int_equal(ac_db_txn_commit(t, on_outcome, &o), 0);
    RUN_UNTIL(fx->loop, o.ncalls == 1);
    assert_int_equal(o.err, AC_ERR_DB);
    assert_string_equal(ac_db_txn_sqlstate(t), "23505");
    assert_non_null(strstr(ac_db_txn_errmsg(t), "duplicate key"));
    assert_string_equal(result_value(t, 0), "31");
    assert_int_equal(PQresultStatus(ac_db_txn_result(t, 1)), PGRES_FATAL_ERROR);
    assert_null(ac_db_txn_result(t, 2)); /* not run */
    /* Aborted: only free remains. */
    assert_int_equal(ac_db_txn_add(t, S_SELECT, select, NULL, NULL), AC_ERR_CONFLICT);
    assert_int_equal(ac_db_txn_commit(t, on_outcome, &o), AC_ERR_CONFLICT);
    ac_db_txn_free(&t);

    assert_int_equal(pg_long(pg, "SELECT count(*) FROM " SCHEMA ".t WHERE id = 31"), 0);
    /* The one connection was cleaned up and serves the next transaction. */
    assert_int_equal(pool_count(fx, "31"), 0);
    assert_int_equal(pool_count(fx, "30"), 1);
    ac_db_stats_t st;
    ac_db_stats(fx->db, &st);
    assert_int_equal(st.errors, 1);

    /* Without a transaction the statements of a round trip still fail together. */
    t = ac_db_txn_new(fx->db, 0);
    const char *ok2[] = {"32", "fine"};
    assert_int_equal(ac_db_txn_add(t, S_INSERT, ok2, NULL, NULL), 0);
    assert_int_equal(ac_db_txn_add_sql(t, "SELECT 1/0", 0, NULL, NULL, NULL), 0);
    assert_int_equal(ac_db_txn_commit(t, on_outcome, &o), 0);
    RUN_UNTIL(fx->loop, o.ncalls == 2);
    assert_int_equal(o.err, AC_ERR_DB);
    assert_string_equal(ac_db_txn_sqlstate(t), "22012");
    ac_db_txn_free(&t);
    assert_int_equal(pool_count(fx, "32"), 0);
    PQfinish(pg);
}

static void test_free_unfinished_rolls_back(void **state)
{
    fixture_t *fx = *state;
    pool_open(fx, 1, "");

    /* Between round trips. */
    ac_db_txn_t *t = ac_db_txn_new(fx->db, 1);
    const char *insert[] = {"40", "forty"};
    assert_int_equal(ac_db_txn_add(t, S_INSERT, insert, NULL, NULL), 0);
    outcome_t o = {0};
    assert_int_equal(ac_db_txn_flush(t, on_outcome, &o), 0);
    RUN_UNTIL(fx->loop, o.ncalls == 1);
    assert_int_equal(o.err, 0);
    ac_db_txn_free(&t);
    assert_int_equal(pool_count(fx, "40"), 0);

    /* While the round trip is in flight: no callback, then rolled back. */
    t = ac_db_txn_new(fx->db, 1);
    const char *insert2[] = {"41", "forty-one"};
    assert_int_equal(ac_db_txn_add(t, S_INSERT, insert2, NULL, NULL), 0);
    assert_int_equal(ac_db_txn_add_sql(t, "SELECT pg_sleep(0.3)", 0, NULL, NULL, NULL), 0);
    outcome_t abandoned = {0};
    assert_int_equal(ac_db_txn_flush(t, on_outcome, &abandoned), 0);
    run_for(fx->loop, 0.1);
    ac_db_txn_free(&t);
    assert_int_equal(pool_count(fx, "41"), 0);
    assert_int_equal(abandoned.ncalls, 0);

    /* While queued behind a holder: it just leaves the queue. */
    ac_db_txn_t *holder = ac_db_txn_new(fx->db, 1);
    assert_int_equal(ac_db_txn_flush(holder, on_outcome, &o), 0);
    RUN_UNTIL(fx->loop, o.ncalls == 2);
    ac_db_txn_t *waiting = ac_db_txn_new(fx->db, 1);
    const char *insert3[] = {"42", "forty-two"};
    assert_int_equal(ac_db_txn_add(waiting, S_INSERT, insert3, NULL, NULL), 0);
    outcome_t dropped = {0};
    assert_int_equal(ac_db_txn_commit(waiting, on_outcome, &dropped), 0);
    run_for(fx->loop, 0.05);
    ac_db_stats_t st;
    ac_db_stats(fx->db, &st);
    assert_int_equal(st.queued, 1);
    ac_db_txn_free(&waiting);
    ac_db_stats(fx->db, &st);
    assert_int_equal(st.queued, 0);
    ac_db_txn_free(&holder);
    assert_int_equal(pool_count(fx, "42"), 0);
    assert_int_equal(dropped.ncalls, 0);

    /* Freed inside its own callback after a flush: rolled back too. */
    t = ac_db_txn_new(fx->db, 1);
    const char *insert4[] = {"43", "forty-three"};
    assert_int_equal(ac_db_txn_add(t, S_INSERT, insert4, NULL, NULL), 0);
    outcome_t self_free = {.is_free_in_cb = 1, .txn_p = &t};
    assert_int_equal(ac_db_txn_flush(t, on_outcome, &self_free), 0);
    RUN_UNTIL(fx->loop, self_free.ncalls == 1);
    assert_null(t);
    assert_int_equal(pool_count(fx, "43"), 0);
}

static void test_listen_notify(void **state)
{
    fixture_t *fx = *state;
    static const char *const channels[] = {"ac test Chan", NULL}; /* needs quoting */
    fx->cfg.listen = channels;
    pool_open(fx, 2, "");
    RUN_UNTIL(fx->loop, fx->nmissed == 1);
    assert_int_equal(fx->nnotified, 0);

    PGconn *pg = pg_open();
    pg_exec(pg, "NOTIFY \"ac test Chan\", 'hello'");
    RUN_UNTIL(fx->loop, fx->nnotified == 1);
    assert_string_equal(fx->channel, "ac test Chan");
    assert_string_equal(fx->payload, "hello");
    /* Another channel is not delivered. */
    pg_exec(pg, "NOTIFY other_chan, 'nope'");
    pg_exec(pg, "NOTIFY \"ac test Chan\", 'again'");
    RUN_UNTIL(fx->loop, fx->nnotified == 2);
    assert_string_equal(fx->payload, "again");
    PQfinish(pg);
    assert_int_equal(fx->nmissed, 1);
}

#define NTXNS 50

typedef struct many {
    int ndone;
    int nfailed;
    long pids[NTXNS];
    ac_db_txn_t *txns[NTXNS];
} many_t;

static void on_many(ac_db_txn_t *txn, int err, void *arg)
{
    many_t *m = arg;
    int i;
    for (i = 0; i < NTXNS && m->txns[i] != txn; i++) {
    }
    assert_true(i < NTXNS);
    if (err)
        m->nfailed++;
    else
        m->pids[i] = atol(PQgetvalue(ac_db_txn_result(txn, 1), 0, 0));
    m->ndone++;
    ac_db_txn_free(&m->txns[i]);
}

static void test_pool_of_two_runs_fifty(void **state)
{
    fixture_t *fx = *state;
    pool_open(fx, 2, "");
    RUN_UNTIL(fx->loop, pool_nready(fx->db) == 2);
    many_t m = {0};
    char ids[NTXNS][16];
    for (int i = 0; i < NTXNS; i++) {
        m.txns[i] = ac_db_txn_new(fx->db, 1);
        assert_non_null(m.txns[i]);
        snprintf(ids[i], sizeof ids[i], "%d", 1000 + i);
        const char *insert[] = {ids[i], "many"};
        assert_int_equal(ac_db_txn_add(m.txns[i], S_INSERT, insert, NULL, NULL), 0);
        assert_int_equal(
            ac_db_txn_add_sql(m.txns[i], "SELECT pg_backend_pid()", 0, NULL, NULL, NULL), 0);
        /* each holds its connection a moment, so one fast connection cannot drain the
         * whole queue before the other is handed work (that made this test flaky) */
        assert_int_equal(
            ac_db_txn_add_sql(m.txns[i], "SELECT pg_sleep(0.005)", 0, NULL, NULL, NULL), 0);
        assert_int_equal(ac_db_txn_commit(m.txns[i], on_many, &m), 0);
    }
    ac_db_stats_t st;
    ac_db_stats(fx->db, &st);
    assert_int_equal(st.queued, NTXNS);
    RUN_UNTIL(fx->loop, m.ndone == NTXNS);
    assert_int_equal(m.nfailed, 0);
    /* Both connections took part. */
    int nother = 0;
    for (int i = 1; i < NTXNS; i++)
        nother += m.pids[i] != m.pids[0];
    assert_true(nother > 0);
    assert_true(nother < NTXNS - 1);
    ac_db_stats(fx->db, &st);
    assert_int_equal(st.txns, NTXNS);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.ready, 2);
    PGconn *pg = pg_open();
    assert_int_equal(pg_long(pg, "SELECT count(*) FROM " SCHEMA ".t WHERE v = 'many'"), NTXNS);
    PQfinish(pg);
}

static void test_unavailable(void **state)
{
    fixture_t *fx = *state;
    ac_db_config_t cfg = {
        .conninfo = "host=127.0.0.1 port=1 connect_timeout=2",
        .pool_size = 1,
        .stmts = test_stmts,
        .nstmts = sizeof test_stmts / sizeof test_stmts[0],
        .name = "closed-port",
    };
    fx->db = ac_db_new(fx->loop, &cfg);
    assert_non_null(fx->db);
    run_for(fx->loop, 0.3);
    assert_false(ac_db_is_up(fx->db));
    ac_db_txn_t *t = ac_db_txn_new(fx->db, 1);
    const char *params[] = {"1"};
    assert_int_equal(ac_db_txn_add(t, S_SELECT, params, NULL, NULL), 0);
    outcome_t o = {0};
    assert_int_equal(ac_db_txn_flush(t, on_outcome, &o), AC_ERR_UNAVAILABLE);
    assert_int_equal(ac_db_txn_commit(t, on_outcome, &o), AC_ERR_UNAVAILABLE);
    run_for(fx->loop, 0.2);
    assert_int_equal(o.ncalls, 0);
    ac_db_stats_t st;
    ac_db_stats(fx->db, &st);
    assert_int_equal(st.reconnects, 0);
    assert_int_equal(st.ready, 0);
    ac_db_txn_free(&t);
    ac_db_destroy(&fx->db);
    assert_null(fx->db);
    ac_db_destroy(&fx->db); /* safe on NULL */

    /* A bad statement keeps the pool down rather than half-working. */
    static const ac_db_stmt_t bad_stmts[] = {{"SELEKT 1", 0}};
    cfg.conninfo = test_dsn();
    cfg.stmts = bad_stmts;
    cfg.nstmts = 1;
    cfg.name = "bad-stmt";
    fx->db = ac_db_new(fx->loop, &cfg);
    assert_non_null(fx->db);
    run_for(fx->loop, 0.3);
    assert_false(ac_db_is_up(fx->db));
}

static void test_connection_loss(void **state)
{
    fixture_t *fx = *state;
    pool_open(fx, 1, "application_name=ac_db_test_loss");
    PGconn *pg = pg_open();

    ac_db_txn_t *slow = ac_db_txn_new(fx->db, 1);
    assert_int_equal(ac_db_txn_add_sql(slow, "SELECT pg_sleep(10)", 0, NULL, NULL, NULL), 0);
    outcome_t o1 = {0};
    assert_int_equal(ac_db_txn_flush(slow, on_outcome, &o1), 0);
    ac_db_txn_t *queued = ac_db_txn_new(fx->db, 1);
    outcome_t o2 = {0};
    assert_int_equal(ac_db_txn_commit(queued, on_outcome, &o2), 0);
    run_for(fx->loop, 0.2);
    assert_int_equal(o1.ncalls + o2.ncalls, 0);

    pg_exec(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'ac_db_test_loss'");
    RUN_UNTIL(fx->loop, o1.ncalls == 1 && o2.ncalls == 1);
    assert_int_equal(o1.err, AC_ERR_UNAVAILABLE);
    assert_int_equal(o2.err, AC_ERR_UNAVAILABLE); /* the queue is not left hanging */
    ac_db_txn_free(&slow);
    ac_db_txn_free(&queued);

    /* Comes back by itself, tells the listener it may have missed something. */
    RUN_UNTIL(fx->loop, ac_db_is_up(fx->db));
    ac_db_stats_t st;
    ac_db_stats(fx->db, &st);
    assert_int_equal(st.disconnects, 1);
    assert_int_equal(st.reconnects, 2);
    assert_int_equal(st.errors, 0); /* a lost connection is not an SQL error */
    assert_int_equal(fx->nmissed, 2);
    assert_int_equal(pool_count(fx, "1"), 0);
    PQfinish(pg);
}

static void test_destroy_fails_pending(void **state)
{
    fixture_t *fx = *state;
    pool_open(fx, 1, "");
    ac_db_txn_t *holder = ac_db_txn_new(fx->db, 1);
    const char *insert[] = {"60", "sixty"};
    assert_int_equal(ac_db_txn_add(holder, S_INSERT, insert, NULL, NULL), 0);
    assert_int_equal(ac_db_txn_add_sql(holder, "SELECT pg_sleep(1)", 0, NULL, NULL, NULL), 0);
    outcome_t o1 = {0};
    assert_int_equal(ac_db_txn_commit(holder, on_outcome, &o1), 0);
    ac_db_txn_t *waiting = ac_db_txn_new(fx->db, 0);
    outcome_t o2 = {.is_free_in_cb = 1, .txn_p = &waiting};
    assert_int_equal(ac_db_txn_commit(waiting, on_outcome, &o2), 0);
    run_for(fx->loop, 0.05); /* the holder's round trip is in flight */
    assert_int_equal(o1.ncalls + o2.ncalls, 0);

    ac_db_destroy(&fx->db);
    assert_int_equal(o1.ncalls, 1);
    assert_int_equal(o1.err, AC_ERR_UNAVAILABLE);
    assert_int_equal(o2.ncalls, 1);
    assert_int_equal(o2.err, AC_ERR_UNAVAILABLE);
    assert_null(waiting);
    /* The holder outlives the pool. */
    assert_int_equal(ac_db_txn_commit(holder, on_outcome, &o1), AC_ERR_UNAVAILABLE);
    ac_db_txn_free(&holder);
    PGconn *pg = pg_open();
    assert_int_equal(pg_long(pg, "SELECT count(*) FROM " SCHEMA ".t WHERE id = 60"), 0);
    PQfinish(pg);
}

/* More than the socket buffers hold: the write side must wait for EV_WRITE. */
static void test_large_statement(void **state)
{
    fixture_t *fx = *state;
    pool_open(fx, 1, "");
    size_t size = 32u << 20;
    char *big = malloc(size + 1);
    assert_non_null(big);
    memset(big, 'a', size);
    big[size] = '\0';
    ac_db_txn_t *t = ac_db_txn_new(fx->db, 0);
    const char *values[] = {big};
    assert_int_equal(ac_db_txn_add_sql(t, "SELECT length($1::text)", 1, values, NULL, NULL), 0);
    big[0] = 'b'; /* values are copied */
    assert_int_equal(ac_db_txn_add_sql(t, "SELECT substr($1::text, 1, 1)", 1, values, NULL, NULL),
                     0);
    free(big);
    outcome_t o = {0};
    assert_int_equal(ac_db_txn_commit(t, on_outcome, &o), 0);
    RUN_UNTIL(fx->loop, o.ncalls == 1);
    assert_int_equal(o.err, 0);
    char expect[32];
    snprintf(expect, sizeof expect, "%zu", size);
    assert_string_equal(result_value(t, 0), expect);
    assert_string_equal(result_value(t, 1), "b");
    ac_db_txn_free(&t);
}

/* A callback may destroy the pool (a service stopping on a fatal error). */
typedef struct stopper {
    ac_db_t **db_p;
    ac_db_txn_t *first, *second;
    int nfirst, nsecond, second_err;
} stopper_t;

static void on_first_destroys(ac_db_txn_t *txn, int err, void *arg)
{
    stopper_t *s = arg;
    s->nfirst++;
    ac_db_txn_free(&s->first);
    ac_db_destroy(s->db_p);
}

static void on_second(ac_db_txn_t *txn, int err, void *arg)
{
    stopper_t *s = arg;
    s->nsecond++;
    s->second_err = err;
    ac_db_txn_free(&s->second);
}

static void test_destroy_inside_callback(void **state)
{
    fixture_t *fx = *state;
    pool_open(fx, 1, "");
    stopper_t s = {.db_p = &fx->db};
    s.first = ac_db_txn_new(fx->db, 1);
    s.second = ac_db_txn_new(fx->db, 1);
    assert_int_equal(ac_db_txn_add_sql(s.first, "SELECT 1", 0, NULL, NULL, NULL), 0);
    assert_int_equal(ac_db_txn_commit(s.first, on_first_destroys, &s), 0);
    assert_int_equal(ac_db_txn_commit(s.second, on_second, &s), 0);
    RUN_UNTIL(fx->loop, s.nfirst == 1);
    assert_null(fx->db);
    assert_int_equal(s.nsecond, 1);
    assert_int_equal(s.second_err, AC_ERR_UNAVAILABLE);
    assert_null(s.first);
    assert_null(s.second);
    run_for(fx->loop, 0.05); /* nothing of the pool is left on the loop */
}

int main(void)
{
    ac_log_init("test_db", AC_LOG_WARN, 0);
    const char *dsn = getenv("AC_TEST_PG_DSN");
    if (!dsn || !*dsn) {
        fprintf(stderr, "test_db: AC_TEST_PG_DSN is not set: these tests need a scratch "
                        "PostgreSQL (a superuser DSN)\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrate),
        cmocka_unit_test(test_array_literal),
        cmocka_unit_test_setup_teardown(test_commit_returns_results, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_binary_results, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_flush_then_commit, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_sql_error_rolls_back, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_free_unfinished_rolls_back, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_listen_notify, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_pool_of_two_runs_fifty, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_unavailable, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_connection_loss, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_destroy_fails_pending, fixture_setup,
                                        fixture_teardown),
        cmocka_unit_test_setup_teardown(test_large_statement, fixture_setup, fixture_teardown),
        cmocka_unit_test_setup_teardown(test_destroy_inside_callback, fixture_setup,
                                        fixture_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
