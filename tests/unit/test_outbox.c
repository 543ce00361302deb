/* test_outbox.c — the outbox's tables against a real PostgreSQL: an upgrade to numbering
 * by runs keeps every event's number, and the insert trigger records runs.
 *
 * Needs AC_TEST_PG_DSN (tests/run.sh sets it); fails when it is unset. Uses the schema
 * ac_test_outbox, which it drops and recreates. The relay itself (numbering, publishing,
 * recovery, prune) is exercised end to end by the system tests. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "ac_outbox.h"
#include "pg_scratch.h"

#define SCHEMA "ac_test_outbox"

/* The rows of a query as text: fields separated by ',', rows by ' ' (NULL as "-"). */
static void pg_text(PGconn *pg, const char *sql, char *out, size_t size)
{
    PGresult *r = PQexec(pg, sql);
    size_t at = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(pg));
    out[0] = '\0';
    for (int row = 0; row < PQntuples(r); row++)
        for (int col = 0; col < PQnfields(r); col++) {
            const char *v = PQgetisnull(r, row, col) ? "-" : PQgetvalue(r, row, col);
            const char *sep = col > 0 ? "," : row > 0 ? " " : "";
            int n = snprintf(out + at, size - at, "%s%s", sep, v);
            if (n < 0 || (size_t)n >= size - at)
                fail_msg("%s: result too long", sql);
            at += (size_t)n;
        }
    PQclear(r);
}

#define assert_rows(pg, sql, expected)                                                             \
    do {                                                                                           \
        char got_[1024];                                                                           \
        pg_text((pg), (sql), got_, sizeof got_);                                                   \
        assert_string_equal(got_, (expected));                                                     \
    } while (0)

static void insert_rows(PGconn *pg, const char *ids)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO " SCHEMA ".outbox (id, event_id, topic, envelope)"
             " SELECT i, gen_random_uuid(), 'ticket.created', '\\x0a01'::bytea"
             " FROM unnest('{%s}'::bigint[]) i",
             ids);
    pg_exec(pg, sql);
}

/* A database numbered the old way (a row per event in outbox_seq, a row per pending id in
 * outbox_pending), including a late commit (ids 6 and 7 numbered after id 8), keeps every
 * number when it is regrouped into runs. */
static void test_upgrade_keeps_every_number(void **state)
{
    PGconn *pg = pg_open();
    pg_exec(pg, "DROP SCHEMA IF EXISTS " SCHEMA " CASCADE");
    assert_int_equal(ac_outbox_migrate_upto(test_dsn(), SCHEMA, 4, 5), 0);
    insert_rows(pg, "1,2,3,4,5,6,7,8,9,10,11,12");
    /* what the old relay left: ids 1-5, 8, 6-7 and 11 numbered 1..9; 9, 10 and 12 pending */
    pg_exec(pg, "DELETE FROM " SCHEMA ".outbox_pending WHERE id NOT IN (9, 10, 12)");
    pg_exec(pg, "INSERT INTO " SCHEMA ".outbox_seq (sequence, id) VALUES"
                " (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 8), (7, 6), (8, 7), (9, 11)");
    pg_exec(pg, "UPDATE " SCHEMA ".outbox_state SET last_seq = 9, published_seq = 6");

    assert_int_equal(ac_outbox_migrate(test_dsn(), SCHEMA, 5), 0);

    assert_rows(pg, "SELECT id, sequence FROM " SCHEMA ".outbox_sequenced ORDER BY id",
                "1,1 2,2 3,3 4,4 5,5 6,7 7,8 8,6 9,- 10,- 11,9 12,-");
    assert_rows(pg, "SELECT first_seq, first_id, n FROM " SCHEMA ".outbox_run ORDER BY 1",
                "1,1,5 6,8,1 7,6,2 9,11,1");
    assert_rows(pg, "SELECT lo, hi FROM " SCHEMA ".outbox_pending_run ORDER BY 1", "9,10 12,12");
    assert_rows(pg, "SELECT last_seq, published_seq FROM " SCHEMA ".outbox_state", "9,6");
    assert_rows(pg,
                "SELECT to_regclass('" SCHEMA ".outbox_seq') IS NULL,"
                " to_regclass('" SCHEMA ".outbox_pending') IS NULL",
                "t,t");
    /* a sequence range as id ranges: cut at both ends, in sequence order */
    assert_rows(pg, "SELECT * FROM " SCHEMA ".outbox_span(4, 7) ORDER BY 1", "4,4,5 6,8,8 7,6,6");
    assert_rows(pg, "SELECT * FROM " SCHEMA ".outbox_span(8, 100) ORDER BY 1", "8,7,7 9,11,11");
    assert_rows(pg, "SELECT * FROM " SCHEMA ".outbox_span(10, 20)", "");
    /* migrating again changes nothing */
    assert_int_equal(ac_outbox_migrate(test_dsn(), SCHEMA, 5), 0);
    assert_rows(pg, "SELECT count(*) FROM " SCHEMA ".outbox_run", "4");
    PQfinish(pg);
}

/* One statement whose ids have holes records one pending run per gap-free range; a
 * statement that fails records nothing. */
static void test_trigger_records_runs(void **state)
{
    PGconn *pg = pg_open();
    pg_exec(pg, "DROP SCHEMA IF EXISTS " SCHEMA " CASCADE");
    assert_int_equal(ac_outbox_migrate(test_dsn(), SCHEMA, 5), 0);
    insert_rows(pg, "30,20,21,26,22,25");
    insert_rows(pg, "40");
    assert_rows(pg, "SELECT lo, hi FROM " SCHEMA ".outbox_pending_run ORDER BY 1",
                "20,22 25,26 30,30 40,40");
    {
        PGresult *r = PQexec(pg, "INSERT INTO " SCHEMA ".outbox (id, event_id, topic, envelope)"
                                 " VALUES (50, gen_random_uuid(), 'x', ''), (51, NULL, 'x', '')");
        assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
        PQclear(r);
    }
    assert_rows(pg, "SELECT count(*), sum(hi - lo + 1) FROM " SCHEMA ".outbox_pending_run", "4,7");
    assert_rows(pg, "SELECT count(*) FROM " SCHEMA ".outbox_sequenced WHERE sequence IS NULL", "7");
    pg_exec(pg, "DROP SCHEMA " SCHEMA " CASCADE");
    PQfinish(pg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_upgrade_keeps_every_number),
        cmocka_unit_test(test_trigger_records_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
