/* pg_scratch.h — the scratch PostgreSQL of the unit tests that need one (test_db.c,
 * test_outbox.c): AC_TEST_PG_DSN, a superuser DSN that tests/run.sh sets. The tests fail,
 * rather than skip, when it is unset. Include after <cmocka.h> and <libpq-fe.h>. */
#ifndef AC_TEST_PG_SCRATCH_H
#define AC_TEST_PG_SCRATCH_H

#include <stdlib.h>

static const char *test_dsn(void)
{
    const char *dsn = getenv("AC_TEST_PG_DSN");
    if (!dsn || !*dsn)
        fail_msg("AC_TEST_PG_DSN is not set: these tests need a scratch PostgreSQL");
    return dsn;
}

static PGconn *pg_open(void)
{
    PGconn *pg = PQconnectdb(test_dsn());
    if (PQstatus(pg) != CONNECTION_OK)
        fail_msg("cannot connect: %s", PQerrorMessage(pg));
    PQclear(PQexec(pg, "SET client_min_messages = warning"));
    return pg;
}

static void pg_exec(PGconn *pg, const char *sql)
{
    PGresult *r = PQexec(pg, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        fail_msg("%s: %s", sql, PQerrorMessage(pg));
    PQclear(r);
}

#endif
