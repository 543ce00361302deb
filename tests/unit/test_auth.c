/* test_auth.c — roles, token hashing and generation, and the token cache's reload logic.
 *
 * auth.c is included so that the cache runs against a fake ac_db (defined below) whose
 * transactions complete when the test says so, with PGresults built by libpq itself
 * (PQmakeEmptyPGresult/PQsetvalue). The real database path is covered by system tests. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../common/auth.c"

/* --- a fake ac_db ----------------------------------------------------------------------- */

struct ac_db_txn {
    ac_db_cb_fn cb;
    void *arg;
    PGresult *res;
    int nsql;
};

static struct {
    int commit_rc;          /* what ac_db_txn_commit() returns */
    int ncommits;           /* successful commits so far */
    int nfreed;             /* transactions freed */
    ac_db_txn_t *in_flight; /* committed, callback not yet called */
    char last_sql[256];
} fake;

ac_db_txn_t *ac_db_txn_new(ac_db_t *db, int is_transaction)
{
    assert_int_equal(is_transaction, 0);
    return calloc(1, sizeof(ac_db_txn_t));
}

int ac_db_txn_add_sql(ac_db_txn_t *t, const char *sql, int nparams, const char *const *values,
                      const int *lengths, const int *formats)
{
    assert_int_equal(nparams, 0);
    snprintf(fake.last_sql, sizeof(fake.last_sql), "%s", sql);
    t->nsql++;
    return 0;
}

int ac_db_txn_commit(ac_db_txn_t *t, ac_db_cb_fn cb, void *arg)
{
    assert_int_equal(t->nsql, 1);
    if (fake.commit_rc < 0)
        return fake.commit_rc;
    assert_null(fake.in_flight);
    t->cb = cb;
    t->arg = arg;
    fake.in_flight = t;
    fake.ncommits++;
    return 0;
}

void ac_db_txn_free(ac_db_txn_t **t_p)
{
    if (*t_p == NULL)
        return;
    if (*t_p == fake.in_flight)
        fake.in_flight = NULL;
    PQclear((*t_p)->res);
    free(*t_p);
    *t_p = NULL;
    fake.nfreed++;
}

struct pg_result *ac_db_txn_result(const ac_db_txn_t *t, int i)
{
    return i == 0 ? t->res : NULL;
}

const char *ac_db_txn_errmsg(const ac_db_txn_t *t)
{
    return "relation \"auth.tokens\" does not exist";
}

#define ENGINEER_ID "0b6f1c9e-3d2a-4c51-9e7f-2a8d4b6c1e30"

typedef struct row {
    const char *hash, *role, *name, *engineer_id;
} row_t;

static PGresult *make_result(const row_t *rows, int n)
{
    char c0[] = "token_sha256", c1[] = "role", c2[] = "name", c3[] = "engineer_id";
    PGresAttDesc attrs[4] = {
        {.name = c0, .typid = 25, .typlen = -1, .atttypmod = -1},
        {.name = c1, .typid = 25, .typlen = -1, .atttypmod = -1},
        {.name = c2, .typid = 25, .typlen = -1, .atttypmod = -1},
        {.name = c3, .typid = 2950, .typlen = 16, .atttypmod = -1},
    };
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    assert_non_null(res);
    assert_int_equal(PQsetResultAttrs(res, 4, attrs), 1);
    for (int i = 0; i < n; i++) {
        const char *cells[4] = {rows[i].hash, rows[i].role, rows[i].name, rows[i].engineer_id};
        for (int c = 0; c < 4; c++) {
            char buf[128];
            snprintf(buf, sizeof(buf), "%s", cells[c] != NULL ? cells[c] : "");
            int len = cells[c] != NULL ? (int)strlen(buf) : -1;
            assert_int_equal(PQsetvalue(res, i, c, buf, len), 1);
        }
    }
    return res;
}

/* Completes the load in flight: with rows when err == 0. */
static void complete_load(int err, const row_t *rows, int n)
{
    ac_db_txn_t *t = fake.in_flight;
    assert_non_null(t);
    fake.in_flight = NULL;
    if (err == 0)
        t->res = make_result(rows, n);
    t->cb(t, err, t->arg);
}

/* --- roles and tokens ------------------------------------------------------------------- */

static void test_role_round_trip(void **state)
{
    const char *names[] = {"agent", "engineer", "supervisor", "warehouse", "admin", "integration"};
    const int bits[] = {AC_ROLE_AGENT,     AC_ROLE_ENGINEER, AC_ROLE_SUPERVISOR,
                        AC_ROLE_WAREHOUSE, AC_ROLE_ADMIN,    AC_ROLE_INTEGRATION};
    for (size_t i = 0; i < AC_ARRAY_LEN(names); i++) {
        assert_int_equal(ac_role_parse(names[i]), bits[i]);
        assert_string_equal(ac_role_name(bits[i]), names[i]);
        assert_string_equal(ac_role_name(ac_role_parse(names[i])), names[i]);
    }
    assert_int_equal(ac_role_parse("Agent"), 0);
    assert_int_equal(ac_role_parse("root"), 0);
    assert_int_equal(ac_role_parse(""), 0);
    assert_int_equal(ac_role_parse(NULL), 0);
    assert_string_equal(ac_role_name(0), "?");
    assert_string_equal(ac_role_name(AC_ROLE_AGENT | AC_ROLE_ADMIN), "?");
    assert_string_equal(ac_role_name(AC_ROLE_ANY), "?");
    assert_string_equal(ac_role_name(1 << 6), "?");
}

static void test_token_hash_known_values(void **state)
{
    char hash[AC_TOKEN_HASH_LEN];
    ac_token_hash("abc", hash);
    assert_string_equal(hash, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    ac_token_hash("", hash);
    assert_string_equal(hash, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_token_generate_format_and_uniqueness(void **state)
{
    enum { N = 1000 };
    char(*tokens)[AC_TOKEN_LEN] = calloc(N, AC_TOKEN_LEN);
    assert_non_null(tokens);
    for (int i = 0; i < N; i++) {
        assert_int_equal(ac_token_generate(tokens[i]), 0);
        assert_int_equal(strlen(tokens[i]), AC_TOKEN_LEN - 1);
        assert_memory_equal(tokens[i], "act_", 4);
        for (int k = 4; k < AC_TOKEN_LEN - 1; k++) {
            char c = tokens[i][k];
            assert_true((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
        }
    }
    qsort(tokens, N, AC_TOKEN_LEN, cmp_str);
    for (int i = 1; i < N; i++)
        assert_string_not_equal(tokens[i - 1], tokens[i]);
    free(tokens);
}

/* --- the cache -------------------------------------------------------------------------- */

typedef struct fixture {
    struct ev_loop *loop;
    ac_auth_t *auth;
    char tok_a[AC_TOKEN_LEN], tok_b[AC_TOKEN_LEN], tok_c[AC_TOKEN_LEN];
    char hash_a[AC_TOKEN_HASH_LEN], hash_b[AC_TOKEN_HASH_LEN], hash_c[AC_TOKEN_HASH_LEN];
} fixture_t;

static int setup(void **state)
{
    memset(&fake, 0, sizeof(fake));
    fixture_t *fx = calloc(1, sizeof(*fx));
    fx->loop = ev_loop_new(EVFLAG_AUTO);
    assert_int_equal(ac_token_generate(fx->tok_a), 0);
    assert_int_equal(ac_token_generate(fx->tok_b), 0);
    assert_int_equal(ac_token_generate(fx->tok_c), 0);
    ac_token_hash(fx->tok_a, fx->hash_a);
    ac_token_hash(fx->tok_b, fx->hash_b);
    ac_token_hash(fx->tok_c, fx->hash_c);
    static int dummy_db;
    fx->auth = ac_auth_new(fx->loop, (ac_db_t *)(void *)&dummy_db);
    assert_non_null(fx->auth);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *fx = *state;
    ac_auth_destroy(&fx->auth);
    assert_null(fx->auth);
    assert_null(fake.in_flight); /* a load in flight was freed */
    ev_loop_destroy(fx->loop);
    free(fx);
    return 0;
}

static void test_first_load_fills_the_table(void **state)
{
    fixture_t *fx = *state;
    assert_int_equal(fake.ncommits, 1); /* started at once */
    assert_string_equal(fake.last_sql, SQL_LOAD_TOKENS);
    assert_false(ac_auth_is_loaded(fx->auth));
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_a, NULL), 0);

    char upper_c[AC_TOKEN_HASH_LEN];
    for (int i = 0; i < AC_TOKEN_HASH_LEN; i++)
        upper_c[i] = (char)(fx->hash_c[i] >= 'a' ? fx->hash_c[i] - 'a' + 'A' : fx->hash_c[i]);
    const row_t rows[] = {
        {fx->hash_a, "engineer", "alice", ENGINEER_ID},
        {fx->hash_b, "overlord", "bob", NULL}, /* unknown role: ignored */
        {"not-a-hash", "admin", "mallory", NULL},
        {upper_c, "admin", NULL, NULL}, /* upper-case hex accepted; NULL name -> "" */
    };
    complete_load(0, rows, 4);
    assert_true(ac_auth_is_loaded(fx->auth));

    ac_principal_t who = {"unset", "unset"};
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_a, &who), AC_ROLE_ENGINEER);
    assert_string_equal(who.name, "alice");
    assert_string_equal(who.engineer_id, ENGINEER_ID);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_b, &who), 0);
    assert_null(who.name);
    assert_null(who.engineer_id);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_c, &who), AC_ROLE_ADMIN);
    assert_string_equal(who.name, "");
    assert_string_equal(who.engineer_id, "");                        /* NULL engineer_id -> "" */
    assert_int_equal(ac_auth_lookup(fx->auth, fx->hash_a, NULL), 0); /* the hash is no token */
    assert_int_equal(ac_auth_lookup(fx->auth, "", NULL), 0);
    assert_int_equal(ac_auth_lookup(fx->auth, NULL, NULL), 0);
}

static void test_notify_reloads_and_revokes(void **state)
{
    fixture_t *fx = *state;
    const row_t two[] = {{fx->hash_a, "agent", "alice", NULL},
                         {fx->hash_b, "engineer", "bob", NULL}};
    complete_load(0, two, 2);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_b, NULL), AC_ROLE_ENGINEER);

    ac_auth_on_notify(fx->auth, "something_else", "");
    assert_int_equal(fake.ncommits, 1);
    assert_null(fake.in_flight);

    ac_auth_on_notify(fx->auth, "ac_auth", "");
    assert_int_equal(fake.ncommits, 2);
    const row_t one[] = {{fx->hash_a, "agent", "alice", NULL}}; /* bob's token was revoked */
    complete_load(0, one, 1);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_a, NULL), AC_ROLE_AGENT);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_b, NULL), 0);

    ac_auth_on_notify(fx->auth, NULL, NULL); /* reconnected */
    assert_int_equal(fake.ncommits, 3);
    complete_load(0, NULL, 0);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_a, NULL), 0);
    assert_true(ac_auth_is_loaded(fx->auth));
}

static void test_notify_during_a_load_reloads_once_after_it(void **state)
{
    fixture_t *fx = *state;
    ac_auth_on_notify(fx->auth, "ac_auth", "");
    ac_auth_on_notify(fx->auth, NULL, NULL);
    ac_auth_on_notify(fx->auth, "ac_auth", "");
    assert_int_equal(fake.ncommits, 1); /* still the first load */

    const row_t stale[] = {{fx->hash_a, "agent", "alice", NULL}};
    complete_load(0, stale, 1);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_a, NULL), AC_ROLE_AGENT);
    assert_int_equal(fake.ncommits, 2); /* one more, for the notifications meanwhile */

    const row_t fresh[] = {{fx->hash_c, "warehouse", "carol", NULL}};
    complete_load(0, fresh, 1);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_a, NULL), 0);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_c, NULL), AC_ROLE_WAREHOUSE);
    assert_int_equal(fake.ncommits, 2); /* and no more */
    assert_null(fake.in_flight);
}

/* Runs the loop until a load is in flight again (the 1 s retry), at most 3 s. */
static int run_until_retried(fixture_t *fx)
{
    ev_tstamp until = ev_time() + 3.0;
    while (fake.in_flight == NULL && ev_time() < until)
        ev_run(fx->loop, EVRUN_ONCE);
    return fake.in_flight != NULL;
}

static void test_failed_loads_retry_after_a_second(void **state)
{
    fixture_t *fx = *state;
    const row_t one[] = {{fx->hash_a, "agent", "alice", NULL}};
    complete_load(0, one, 1);

    /* Commit refused at once (database down): the old table stays; retried later. */
    fake.commit_rc = AC_ERR_UNAVAILABLE;
    ac_auth_on_notify(fx->auth, "ac_auth", "");
    assert_null(fake.in_flight);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_a, NULL), AC_ROLE_AGENT);
    fake.commit_rc = 0;
    ev_tstamp t0 = ev_time();
    assert_true(run_until_retried(fx));
    assert_true(ev_time() - t0 > 0.5);

    /* The load itself fails (connection lost, SQL error): retried too. */
    complete_load(AC_ERR_UNAVAILABLE, NULL, 0);
    assert_true(run_until_retried(fx));
    complete_load(AC_ERR_DB, NULL, 0);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_a, NULL), AC_ROLE_AGENT);
    assert_true(run_until_retried(fx));
    const row_t other[] = {{fx->hash_b, "supervisor", "bob", NULL}};
    complete_load(0, other, 1);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_a, NULL), 0);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_b, NULL), AC_ROLE_SUPERVISOR);
    assert_int_equal(fake.ncommits, 4);
}

static void test_notify_while_retrying_loads_at_once(void **state)
{
    fixture_t *fx = *state;
    complete_load(AC_ERR_UNAVAILABLE, NULL, 0); /* first load failed: retry armed */
    assert_false(ac_auth_is_loaded(fx->auth));
    ac_auth_on_notify(fx->auth, NULL, NULL); /* reconnected before the retry */
    assert_non_null(fake.in_flight);
    const row_t one[] = {{fx->hash_a, "integration", "crm", NULL}};
    complete_load(0, one, 1);
    assert_true(ac_auth_is_loaded(fx->auth));
    ac_principal_t who;
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_a, &who), AC_ROLE_INTEGRATION);
    assert_string_equal(who.name, "crm");
    /* The cancelled retry timer does not start a second load. */
    ev_tstamp until = ev_time() + 1.3;
    while (ev_time() < until)
        ev_run(fx->loop, EVRUN_NOWAIT);
    assert_int_equal(fake.ncommits, 2);
}

static void test_many_tokens(void **state)
{
    fixture_t *fx = *state;
    enum { N = 500 };
    static char toks[N][AC_TOKEN_LEN], hashes[N][AC_TOKEN_HASH_LEN];
    static row_t rows[N];
    for (int i = 0; i < N; i++) {
        assert_int_equal(ac_token_generate(toks[i]), 0);
        ac_token_hash(toks[i], hashes[i]);
        rows[i] = (row_t){hashes[i], i % 2 ? "agent" : "engineer", "bulk", NULL};
    }
    complete_load(0, rows, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(ac_auth_lookup(fx->auth, toks[i], NULL),
                         i % 2 ? AC_ROLE_AGENT : AC_ROLE_ENGINEER);
    assert_int_equal(ac_auth_lookup(fx->auth, fx->tok_a, NULL), 0);
}

static void test_destroy_with_a_load_in_flight(void **state)
{
    fixture_t *fx = *state;
    assert_non_null(fake.in_flight);
    ac_auth_destroy(&fx->auth); /* teardown checks the txn was freed */
    assert_null(fake.in_flight);
    assert_int_equal(fake.nfreed, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_role_round_trip),
        cmocka_unit_test(test_token_hash_known_values),
        cmocka_unit_test(test_token_generate_format_and_uniqueness),
        cmocka_unit_test_setup_teardown(test_first_load_fills_the_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notify_reloads_and_revokes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notify_during_a_load_reloads_once_after_it, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_failed_loads_retry_after_a_second, setup, teardown),
        cmocka_unit_test_setup_teardown(test_notify_while_retrying_loads_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_destroy_with_a_load_in_flight, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
