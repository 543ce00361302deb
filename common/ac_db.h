/* ac_db.h — PostgreSQL on the libev loop.
 *
 * A pool of libpq connections whose sockets are ev_io watchers: nothing here ever blocks
 * the loop (except ac_db_migrate(), which is for start-up only). Every connection runs in
 * libpq pipeline mode and has the service's statement table prepared on connect.
 * Lost connections are re-established with exponential backoff; while no connection is
 * up, ac_db_txn_commit()/flush() fail at once with AC_ERR_UNAVAILABLE (callers answer 503).
 *
 * Owns: its connections, their watchers, the queue of transactions waiting for one.
 */
#ifndef AC_DB_H
#define AC_DB_H

#include <stddef.h>
#include <stdint.h>

#include "ac_err.h"

struct ev_loop;
struct pg_result; /* PGresult; only the db module and store.c files include <libpq-fe.h> */
struct json_t;

typedef struct ac_db ac_db_t;
typedef struct ac_db_txn ac_db_txn_t;

/* One prepared statement; a service keeps a table of these next to an enum of indexes. */
typedef struct ac_db_stmt {
    const char *sql; /* $n parameters only */
    int nparams;
} ac_db_stmt_t;

/* One numbered migration (generated from NNN_name.sql by cmake/embed_migrations.cmake). */
typedef struct ac_migration {
    int version;      /* > 0, strictly increasing in the table */
    const char *name; /* "001_init" */
    const char *sql;  /* may contain several statements */
} ac_migration_t;

typedef struct ac_db_config {
    const char *conninfo;      /* libpq connection string */
    int pool_size;             /* connections, >= 1 */
    const ac_db_stmt_t *stmts; /* prepared on every connection; may be NULL */
    size_t nstmts;
    const char *const *listen; /* NULL-terminated channels LISTENed on connection 0, or NULL */
    /* Called for each NOTIFY; also called with channel == NULL after connection 0 has
     * (re)connected, because notifications may have been missed while it was down. */
    void (*on_notify)(void *arg, const char *channel, const char *payload);
    void *notify_arg;
    double reconnect_min_s; /* default 0.1 when 0 */
    double reconnect_max_s; /* default 5 when 0 */
    size_t max_queue;       /* transactions waiting for a connection; default 10000 */
    const char *name;       /* for logs: "intake", "intake-relay" */
} ac_db_config_t;

/* Starts connecting at once (asynchronously). cfg and everything it points to must outlive
 * the pool. NULL on failure (logged). */
ac_db_t *ac_db_new(struct ev_loop *loop, const ac_db_config_t *cfg);
/* Closes every connection; pending transactions get their callback with AC_ERR_UNAVAILABLE
 * first. Safe on NULL; sets *self_p = NULL. */
void ac_db_destroy(ac_db_t **self_p);
/* 1 when at least one connection is ready for work. */
int ac_db_is_up(const ac_db_t *self);

typedef struct ac_db_stats {
    uint64_t txns;        /* transactions finished (committed or not) */
    uint64_t errors;      /* statements that failed with an SQL error */
    uint64_t disconnects; /* connections lost */
    uint64_t reconnects;  /* successful (re)connections */
    uint32_t ready;       /* connections ready now */
    uint32_t queued;      /* transactions waiting for a connection now */
} ac_db_stats_t;
void ac_db_stats(const ac_db_t *self, ac_db_stats_t *out);

/* --- transactions ---------------------------------------------------------------------
 * A txn collects statements, then flush() or commit() sends them in one pipeline round
 * trip. The first flush/commit waits for a free connection and, when is_transaction,
 * sends BEGIN first. The callback reports the outcome of that round trip:
 *   0                  every statement succeeded (after commit(): the COMMIT succeeded too)
 *   AC_ERR_DB          a statement (or COMMIT) failed; see ac_db_txn_sqlstate()/_errmsg().
 *                      The transaction is aborted: only ac_db_txn_free() remains.
 *   AC_ERR_UNAVAILABLE the connection was lost (for a COMMIT: outcome unknown) or none is up.
 * In the callback, ac_db_txn_result(t, i) is the i-th statement of that round trip (NULL
 * for statements not run); results are borrowed until the next flush/commit/free.
 * After a flush callback returning 0 the caller may add more and flush or commit again.
 * add/flush/commit return AC_ERR_CONFLICT (no callback) while a round trip is waiting or in
 * flight, after a commit, or after a failure (AC_ERR_UNAVAILABLE when the connection was lost).
 * The caller always ends with ac_db_txn_free(), which may be called inside the callback;
 * freeing an unfinished transaction rolls it back. */
typedef void (*ac_db_cb_fn)(ac_db_txn_t *txn, int err, void *arg);

ac_db_txn_t *ac_db_txn_new(ac_db_t *db, int is_transaction); /* NULL on OOM */
/* Queue prepared statement `stmt` (index in cfg->stmts). values[i] NULL is SQL NULL;
 * lengths/formats may be NULL (all text). Values are copied. */
int ac_db_txn_add(ac_db_txn_t *t, int stmt, const char *const *values, const int *lengths,
                  const int *formats) AC_WUR;
/* The statements added from now on return their results in binary format (bytea as raw
 * bytes, bigint as 8 bytes big-endian, text as is) when on, in text (the default) when
 * off: for bulk reads of bytea. */
void ac_db_txn_set_binary_results(ac_db_txn_t *t, int on);
/* Queue an unprepared statement (for rare or dynamic SQL). sql is copied. */
int ac_db_txn_add_sql(ac_db_txn_t *t, const char *sql, int nparams, const char *const *values,
                      const int *lengths, const int *formats) AC_WUR;
/* Returns AC_ERR_UNAVAILABLE at once (no callback) when no connection is up or the queue
 * is full; otherwise 0 and the callback follows later, never from inside this call. */
int ac_db_txn_flush(ac_db_txn_t *t, ac_db_cb_fn cb, void *arg) AC_WUR;
int ac_db_txn_commit(ac_db_txn_t *t, ac_db_cb_fn cb, void *arg) AC_WUR;
void ac_db_txn_free(ac_db_txn_t **t_p);

int ac_db_txn_nresults(const ac_db_txn_t *t);
struct pg_result *ac_db_txn_result(const ac_db_txn_t *t, int i);
const char *ac_db_txn_sqlstate(const ac_db_txn_t *t); /* "" when none */
const char *ac_db_txn_errmsg(const ac_db_txn_t *t);   /* "" when none */

/* Cell (row, col) of a result with binary results as an int8 (8 bytes, big-endian); 0 for
 * SQL NULL or a cell of another size. */
uint64_t ac_db_cell_int8(const struct pg_result *res, int row, int col);
/* The rows of a result with binary results in increasing order of its int8 column col
 * (NULL counts as 0): NULL when they already are in that order (the usual case: nothing to
 * free) or when out of memory (*err is AC_ERR_NOMEM then); otherwise the row numbers in
 * that order, which the caller frees. For statements that leave out an ORDER BY whose
 * sort would cost more than this (wide rows that come in order anyway). */
int *ac_db_result_order(const struct pg_result *res, int col, int *err);

/* The PostgreSQL array literal {"v0","v1",NULL,...} of n text values (NULL: SQL NULL),
 * quoted and escaped: one parameter ($1::text[], ::uuid[], ::bigint[], ...) for a
 * set-based statement over many rows. The caller frees it; NULL when out of memory. */
char *ac_db_array_literal(const char *const *values, size_t n);
/* Queue prepared statement `stmt` over many rows at once: its parameter j is the array
 * literal of column j of `cells`, a row-major nrows x ncols table of text values (NULL:
 * SQL NULL); the statement takes ncols parameters. */
int ac_db_txn_add_columns(ac_db_txn_t *t, int stmt, const char *const *cells, size_t nrows,
                          size_t ncols) AC_WUR;

/* --- reading results as JSON (db_json.c; for the services' store.c) -------------------
 * Results are those of ac_db_txn_result(): borrowed until the next flush/commit/free. */
/* The i-th result when it returned rows (PGRES_TUPLES_OK); NULL otherwise. */
const struct pg_result *ac_db_txn_rows(const ac_db_txn_t *t, int i);
/* Cell (row, col) parsed as JSON (any value); NULL for SQL NULL or unparsable text
 * (logged). The caller owns the result. */
struct json_t *ac_db_json_cell(const struct pg_result *res, int row, int col);
/* First column of the first row as JSON; AC_ERR_NOTFOUND when no row or SQL NULL,
 * AC_ERR_PROTO when the statement returned no rows or unparsable JSON. */
int ac_db_doc_result(const ac_db_txn_t *t, int i, struct json_t **doc_out) AC_WUR;
/* Rows (seq, doc) of a list statement that fetched limit + 1 rows:
 * {"items": [first `limit` docs], "next_cursor": "<seq of the last item>" | null}.
 * AC_ERR_PROTO (no rows, or not two columns) or AC_ERR_NOMEM (also for a doc that is SQL
 * NULL or does not parse). */
int ac_db_page_result(const ac_db_txn_t *t, int i, long limit, struct json_t **body_out) AC_WUR;

/* --- start-up -------------------------------------------------------------------------
 * Blocking. Applies, in one transaction each, the migrations newer than those recorded in
 * <schema>.schema_migrations (component, version), creating it (and the schema) if missing.
 * `component` separates independent migration sets in one schema ("intake", "outbox").
 * Retries the connection for up to wait_s seconds (PostgreSQL may still be starting).
 * Returns 0, AC_ERR_UNAVAILABLE (no connection within wait_s), AC_ERR_DB (a migration or the
 * bookkeeping failed; that migration is rolled back) or AC_ERR_INVALID/AC_ERR_CONFIG. */
int ac_db_migrate(const char *conninfo, const char *schema, const char *component,
                  const ac_migration_t *migrations, double wait_s) AC_WUR;

#endif
