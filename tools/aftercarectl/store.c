/* store.c — aftercarectl's own database access: auth.tokens and auth.bus_keys
 * (deploy/pg-bootstrap.sql), as ac_admin. A command-line tool may block, so this is plain
 * synchronous libpq; the services' token caches hear about every change through the table's NOTIFY
 * trigger. */
#include "ctl.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ctl_store {
    PGconn *conn; /* owned */
};

/* Names identify tokens for `token revoke`, so at most one active token has a name.
 * (The table itself allows reuse of a name once the old token is revoked.) */
static const char SQL_TOKEN_INSERT[] =
    "INSERT INTO auth.tokens (name, role, token_sha256, engineer_id) "
    "SELECT $1, $2, $3, $4::uuid WHERE NOT EXISTS "
    "(SELECT 1 FROM auth.tokens WHERE name = $1 AND revoked_at IS NULL) "
    "RETURNING id";

static const char SQL_TOKEN_LIST[] =
    "SELECT name, role, "
    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
    "to_char(revoked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), engineer_id "
    "FROM auth.tokens ORDER BY created_at, name";

static const char SQL_TOKEN_REVOKE[] =
    "UPDATE auth.tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL";

static const char SQL_TOKEN_EXISTS[] = "SELECT 1 FROM auth.tokens WHERE name = $1 LIMIT 1";

/* $5 is a text[] literal built by topics_literal(). At most one live key has a name; a
 * public key is never registered twice (a revoked key stays revoked). */
static const char SQL_KEY_INSERT[] =
    "INSERT INTO auth.bus_keys (public_key, name, kind, source, topics) "
    "SELECT $1, $2, $3, $4, $5::text[] WHERE NOT EXISTS "
    "(SELECT 1 FROM auth.bus_keys WHERE name = $2 AND revoked_at IS NULL) "
    "ON CONFLICT (public_key) DO NOTHING RETURNING public_key";

static const char SQL_KEY_OWNER[] =
    "SELECT name || CASE WHEN revoked_at IS NULL THEN '' ELSE ' (revoked)' END "
    "FROM auth.bus_keys WHERE public_key = $1";

static const char SQL_KEY_LIST[] =
    "SELECT public_key, name, kind, source, array_to_string(topics, ','), "
    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
    "to_char(revoked_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
    "FROM auth.bus_keys ORDER BY created_at, name";

static const char SQL_KEY_REVOKE[] =
    "UPDATE auth.bus_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL";

static const char SQL_KEY_EXISTS[] = "SELECT 1 FROM auth.bus_keys WHERE name = $1 LIMIT 1";

/* The first line of libpq's message (they end in a newline, sometimes with DETAIL). */
static void print_pq_error(const char *what, const char *msg)
{
    size_t n = strcspn(msg, "\n");
    ctl_err("%s: %.*s", what, (int)n, msg);
}

ctl_store_t *ctl_store_open(const char *conninfo)
{
    ctl_store_t *self = calloc(1, sizeof *self);
    if (self == NULL) {
        ctl_err("out of memory");
        return NULL;
    }
    self->conn = PQconnectdb(conninfo);
    if (self->conn == NULL || PQstatus(self->conn) != CONNECTION_OK) {
        print_pq_error("cannot connect to the database",
                       self->conn != NULL ? PQerrorMessage(self->conn) : "out of memory");
        ctl_store_close(&self);
        return NULL;
    }
    return self;
}

void ctl_store_close(ctl_store_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    PQfinish((*self_p)->conn);
    free(*self_p);
    *self_p = NULL;
}

/* Runs a statement; on failure prints the error, clears the result and returns NULL. */
static PGresult *exec(ctl_store_t *self, const char *sql, int nparams, const char *const *params,
                      ExecStatusType expected)
{
    PGresult *res = PQexecParams(self->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (res == NULL || PQresultStatus(res) != expected) {
        print_pq_error("database error",
                       res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(self->conn));
        PQclear(res);
        return NULL;
    }
    return res;
}

int ctl_store_token_insert(ctl_store_t *self, const char *name, const char *role,
                           const char *token_hash, const char *engineer_id)
{
    const char *params[] = {name, role, token_hash, engineer_id};
    PGresult *res = exec(self, SQL_TOKEN_INSERT, 4, params, PGRES_TUPLES_OK);
    if (res == NULL)
        return AC_ERR_DB;
    int rc = PQntuples(res) == 1 ? 0 : AC_ERR_CONFLICT;
    PQclear(res);
    return rc;
}

int ctl_store_token_list(ctl_store_t *self, void (*fn)(const ctl_token_row_t *row, void *arg),
                         void *arg)
{
    PGresult *res = exec(self, SQL_TOKEN_LIST, 0, NULL, PGRES_TUPLES_OK);
    if (res == NULL)
        return AC_ERR_DB;
    for (int i = 0; i < PQntuples(res); i++) {
        ctl_token_row_t row = {
            .name = PQgetvalue(res, i, 0),
            .role = PQgetvalue(res, i, 1),
            .created_at = PQgetvalue(res, i, 2),
            .revoked_at = PQgetisnull(res, i, 3) ? NULL : PQgetvalue(res, i, 3),
            .engineer_id = PQgetisnull(res, i, 4) ? NULL : PQgetvalue(res, i, 4),
        };
        fn(&row, arg);
    }
    PQclear(res);
    return 0;
}

int ctl_store_token_revoke(ctl_store_t *self, const char *name, size_t *n_revoked)
{
    const char *params[] = {name};
    PGresult *res = exec(self, SQL_TOKEN_REVOKE, 1, params, PGRES_COMMAND_OK);
    if (res == NULL)
        return AC_ERR_DB;
    *n_revoked = strtoul(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    if (*n_revoked > 0)
        return 0;

    res = exec(self, SQL_TOKEN_EXISTS, 1, params, PGRES_TUPLES_OK);
    if (res == NULL)
        return AC_ERR_DB;
    int rc = PQntuples(res) > 0 ? AC_ERR_CONFLICT : AC_ERR_NOTFOUND;
    PQclear(res);
    return rc;
}

/* {"a","b"} as a text[] literal; the caller has validated the prefixes (no quotes,
 * backslashes, commas or braces), so plain quoting suffices. malloc'ed, NULL on OOM. */
static char *topics_literal(const char *const *topics)
{
    size_t len = 3;
    for (size_t i = 0; topics[i] != NULL; i++)
        len += strlen(topics[i]) + 3;
    char *out = malloc(len), *p = out;
    if (out == NULL)
        return NULL;
    *p++ = '{';
    for (size_t i = 0; topics[i] != NULL; i++)
        p += sprintf(p, "%s\"%s\"", i > 0 ? "," : "", topics[i]);
    *p++ = '}';
    *p = '\0';
    return out;
}

int ctl_store_key_insert(ctl_store_t *self, const char *public_key, const char *name,
                         const char *kind, const char *source, const char *const *topics,
                         char *owner, size_t owner_len)
{
    char *literal = topics_literal(topics);
    if (literal == NULL) {
        ctl_err("out of memory");
        return AC_ERR_NOMEM;
    }
    const char *params[] = {public_key, name, kind, source, literal};
    PGresult *res = exec(self, SQL_KEY_INSERT, 5, params, PGRES_TUPLES_OK);
    free(literal);
    if (res == NULL)
        return AC_ERR_DB;
    int inserted = PQntuples(res) == 1;
    PQclear(res);
    if (inserted)
        return 0;
    /* not inserted: the public key is known already, or the name is taken */
    res = exec(self, SQL_KEY_OWNER, 1, params, PGRES_TUPLES_OK);
    if (res == NULL)
        return AC_ERR_DB;
    int rc = AC_ERR_CONFLICT;
    if (PQntuples(res) == 1) {
        snprintf(owner, owner_len, "%s", PQgetvalue(res, 0, 0));
        rc = AC_ERR_INVALID;
    }
    PQclear(res);
    return rc;
}

int ctl_store_key_list(ctl_store_t *self, void (*fn)(const ctl_key_row_t *row, void *arg),
                       void *arg)
{
    PGresult *res = exec(self, SQL_KEY_LIST, 0, NULL, PGRES_TUPLES_OK);
    if (res == NULL)
        return AC_ERR_DB;
    for (int i = 0; i < PQntuples(res); i++) {
        ctl_key_row_t row = {
            .public_key = PQgetvalue(res, i, 0),
            .name = PQgetvalue(res, i, 1),
            .kind = PQgetvalue(res, i, 2),
            .source = PQgetisnull(res, i, 3) ? NULL : PQgetvalue(res, i, 3),
            .topics = PQgetvalue(res, i, 4),
            .created_at = PQgetvalue(res, i, 5),
            .revoked_at = PQgetisnull(res, i, 6) ? NULL : PQgetvalue(res, i, 6),
        };
        fn(&row, arg);
    }
    PQclear(res);
    return 0;
}

int ctl_store_key_revoke(ctl_store_t *self, const char *name)
{
    const char *params[] = {name};
    PGresult *res = exec(self, SQL_KEY_REVOKE, 1, params, PGRES_COMMAND_OK);
    if (res == NULL)
        return AC_ERR_DB;
    unsigned long n = strtoul(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    if (n > 0)
        return 0;
    res = exec(self, SQL_KEY_EXISTS, 1, params, PGRES_TUPLES_OK);
    if (res == NULL)
        return AC_ERR_DB;
    int rc = PQntuples(res) > 0 ? AC_ERR_CONFLICT : AC_ERR_NOTFOUND;
    PQclear(res);
    return rc;
}
