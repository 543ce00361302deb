/* outbox.c — the outbox tables and the relay (see ac_outbox.h). This file is the relay's
 * store: its SQL lives here, built once per schema. */
#include "ac_outbox.h"

#include <ev.h>
#include <limits.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_bus.h"
#include "ac_db.h"
#include "ac_event.h"
#include "ac_log.h"
#include "ac_metrics.h"
#include "ac_time.h"

#define SCHEMA_MAX 48
#define SQL_MAX    2048

/* published_seq means "handed to the ZeroMQ socket", not "on the wire": a kill -9 can
 * lose what the socket still held. So the database records only sequences handed over at
 * least this long ago, and a restart resends the rest. */
#define MARK_DELAY_S 2.0
#define MARK_RING    64

enum { S_NOJIT, S_MARK, S_ASSIGN, S_RECOVER, S_PRUNE, S_COUNT };

#define PRUNE_CHUNK 5000 /* rows deleted per statement */
#define PRUNE_MIN_S 1.0  /* the prune job runs every retention / 2, within these */
#define PRUNE_MAX_S 300.0

/* A backlog grows the numbering batch (fewer transactions, so fewer commits and their
 * fsyncs, per event) up to this many rows; it falls back to cfg->batch once caught up. */
#define BATCH_MAX 4000

/* Runs numbered are deleted from outbox_pending_run, and their index entries stay until
 * VACUUM: after a burst of small transactions (a run each) every numbering transaction
 * would walk them (measured when the table held one row per event: ~1.5 ms for 200,000 at
 * each commit of a 1,000/s load that follows, the latency's p99 3x). Autovacuum may come a
 * minute later, so once caught up after this many events the relay vacuums the table
 * itself (a few milliseconds: it is narrow and nearly empty). */
#define VACUUM_AFTER 20000

/* A numbered event, kept in the arena as a record of a bus batch (ac_bus.h): consecutive
 * events are consecutive records, so a batch message is a slice of the arena. */
typedef struct pending_event {
    uint64_t sequence;
    const uint8_t *record; /* in the arena: topic length, topic, envelope length, envelope */
    size_t record_len;
    const char *topic; /* in the record, not NUL-terminated */
    size_t topic_len;
    const uint8_t *envelope; /* in the record, sequence already appended */
    size_t len;
} pending_event_t;

struct ac_outbox {
    struct ev_loop *loop;          /* borrowed */
    const ac_outbox_config_t *cfg; /* borrowed */
    ac_db_t *db;                   /* owned, one connection that LISTENs */
    ac_db_config_t dbcfg;          /* must outlive db */
    ac_db_stmt_t stmts[S_COUNT];
    char sql[S_COUNT][SQL_MAX];
    char channel[SCHEMA_MAX + 8];
    const char *listen[2];
    ac_bus_pub_t *pub;       /* owned */
    ev_timer poll;           /* safety net against a missed NOTIFY */
    ev_timer retry;          /* after a database error */
    ev_timer prune;          /* the retention job (not started when retention_s is 0) */
    ac_db_txn_t *prune_txn;  /* the prune statement in flight, or NULL */
    unsigned prune_failures; /* consecutive failed prunes (the first is logged at warn) */
    ac_db_txn_t *vacuum_txn; /* VACUUM of outbox_pending_run in flight, or NULL */
    uint64_t numbered_since_vacuum;
    char vacuum_sql[SQL_MAX];
    ac_backoff_t backoff;
    ac_db_txn_t *txn;         /* the round trip in flight, or NULL */
    pending_event_t *pending; /* numbered, not yet handed to the bus */
    uint8_t *arena;           /* owned: the topics and envelopes of pending */
    size_t npending, next;
    int batch;                /* rows per numbering transaction (cfg->batch .. BATCH_MAX) */
    int txn_batch;            /* the LIMIT of the round trip in flight */
    int base_batch;           /* cfg->batch, or 500 */
    int is_recovered;         /* numbered-but-unpublished rows resent after start */
    int is_txn_recover;       /* the round trip in flight is a recovery query */
    unsigned resend_epoch;    /* bumped by every resend_from() */
    unsigned txn_epoch;       /* resend_epoch when the round trip in flight was sent */
    uint64_t seen_generation; /* the bus subscription the relay last published to */
    int is_dirty;             /* woken while busy: look again afterwards */
    int last_was_full;        /* the last batch was full: more rows are waiting */
    int64_t recover_cursor;   /* resend after this sequence; -1: after the stored one */
    uint64_t published_seq;   /* last sequence handed to the bus socket */
    uint64_t persisted_seq;   /* what outbox_state.published_seq holds */
    uint64_t marking_seq;     /* the value the round trip in flight writes there */
    struct {
        uint64_t seq;    /* published_seq after a batch was handed to the socket */
        ev_tstamp at;    /* when */
    } handed[MARK_RING]; /* oldest first, from handed_head */
    unsigned handed_head, handed_n;
    uint64_t safe_seq; /* handed over at least MARK_DELAY_S ago */
};

static int schema_is_valid(const char *schema)
{
    size_t n = strlen(schema);
    if (n == 0 || n >= SCHEMA_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((schema[i] >= 'a' && schema[i] <= 'z') || schema[i] == '_' ||
              (i > 0 && schema[i] >= '0' && schema[i] <= '9')))
            return 0;
    return 1;
}

/* --- migrations ----------------------------------------------------------------------- */

static const char OUTBOX_V1[] =
    "CREATE TABLE %1$s.outbox ("
    " id bigserial PRIMARY KEY,"
    " event_id uuid NOT NULL UNIQUE,"
    " topic text NOT NULL CHECK (topic <> ''),"
    " envelope bytea NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now(),"
    " sequence bigint UNIQUE);"
    "CREATE INDEX outbox_unnumbered ON %1$s.outbox (id) WHERE sequence IS NULL;"
    "CREATE TABLE %1$s.outbox_state ("
    " singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
    " last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),"
    " published_seq bigint NOT NULL DEFAULT 0 CHECK (published_seq <= last_seq));"
    "INSERT INTO %1$s.outbox_state DEFAULT VALUES;"
    "CREATE FUNCTION %1$s.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS"
    " $f$ BEGIN PERFORM pg_notify('%1$s_outbox', ''); RETURN NULL; END $f$;"
    "CREATE TRIGGER outbox_notify AFTER INSERT ON %1$s.outbox"
    " FOR EACH STATEMENT EXECUTE FUNCTION %1$s.outbox_notify();";

/* The bus reads the outbox for replay (and outbox_state for positions and lag) as role
 * ac_bus; a database without that role (unit tests) gets no grant. */
static const char OUTBOX_V2[] = "DO $g$ BEGIN"
                                " IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ac_bus') THEN"
                                "  GRANT USAGE ON SCHEMA %1$s TO ac_bus;"
                                "  GRANT SELECT ON %1$s.outbox, %1$s.outbox_state TO ac_bus;"
                                " END IF;"
                                " END $g$;";

/* Numbering without rewriting the row. Numbering by UPDATE rewrote each wide outbox row (a
 * new row version, three index entries, ~2 KB of WAL per event) and bounded the relay.
 * Now the outbox rows are never updated:
 * - outbox_pending holds the ids not numbered yet; the insert trigger fills it from the
 *   statement's transition table (one small index entry per event for the producer), and
 *   the relay deletes what it numbers, so finding work never scans the outbox;
 * - outbox_seq (sequence -> id) is the numbering, narrow and append-only; replay, recovery
 *   and prune join it to the outbox by id;
 * - outbox_sequenced (a view) shows the outbox with its sequences, NULL while unnumbered,
 *   for administrators and tests.
 * Rows numbered or pending before this migration keep their place. (Migration 005 replaced
 * both tables with runs of ids.) */
static const char OUTBOX_V3[] =
    "CREATE TABLE %1$s.outbox_pending (id bigint PRIMARY KEY);"
    "CREATE TABLE %1$s.outbox_seq (sequence bigint PRIMARY KEY CHECK (sequence > 0),"
    " id bigint NOT NULL);"
    "INSERT INTO %1$s.outbox_seq (sequence, id)"
    " SELECT sequence, id FROM %1$s.outbox WHERE sequence IS NOT NULL;"
    "INSERT INTO %1$s.outbox_pending (id) SELECT id FROM %1$s.outbox WHERE sequence IS NULL;"
    "ALTER TABLE %1$s.outbox DROP COLUMN sequence;"
    "DROP TRIGGER outbox_notify ON %1$s.outbox;"
    "CREATE OR REPLACE FUNCTION %1$s.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS"
    " $f$ BEGIN INSERT INTO %1$s.outbox_pending (id) SELECT id FROM new_rows;"
    " PERFORM pg_notify('%1$s_outbox', ''); RETURN NULL; END $f$;"
    "CREATE TRIGGER outbox_notify AFTER INSERT ON %1$s.outbox REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION %1$s.outbox_notify();"
    "CREATE VIEW %1$s.outbox_sequenced AS"
    " SELECT o.id, o.event_id, o.topic, o.envelope, o.created_at, s.sequence"
    " FROM %1$s.outbox o LEFT JOIN %1$s.outbox_seq s ON s.id = o.id;"
    "DO $g$ BEGIN"
    " IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ac_bus') THEN"
    "  GRANT SELECT ON %1$s.outbox_pending, %1$s.outbox_seq, %1$s.outbox_sequenced TO ac_bus;"
    " END IF;"
    " END $g$;";

/* A writer that wakes its own relay (ac_outbox_add_self_wake()) sends no NOTIFY: a
 * notifying transaction holds PostgreSQL's database-wide NOTIFY lock from its commit until
 * its WAL is on disk, so a synchronous commit that notifies makes every other notifying
 * commit of the database wait for its disk flush. */
static const char OUTBOX_V4[] =
    "CREATE OR REPLACE FUNCTION %1$s.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS"
    " $f$ BEGIN INSERT INTO %1$s.outbox_pending (id) SELECT id FROM new_rows;"
    " IF current_setting('aftercare.outbox_wake', true) IS DISTINCT FROM 'self' THEN"
    "  PERFORM pg_notify('%1$s_outbox', '');"
    " END IF;"
    " RETURN NULL; END $f$;";

/* Numbering by runs. With a numbering row per event (outbox_seq) and a pending row per
 * event (outbox_pending) the relay's numbering statement cost 7.2 us of the database's CPU
 * per event; by runs it costs 1.7 (psql, 200,000 outbox rows numbered in batches of 4,000,
 * server time), and the relay went from ~75,000 to ~100,000 events/s. A run is a range of
 * ids that one INSERT statement wrote with no gap in between; numbering a run is one row:
 * - outbox_pending_run (lo, hi): ids lo..hi are committed and not numbered yet; the insert
 *   trigger writes one row per run of its statement (usually one per statement);
 * - outbox_run (first_seq, first_id, n): ids first_id .. first_id + n - 1 carry sequences
 *   first_seq .. first_seq + n - 1. The runs' ids never overlap (an id is numbered once),
 *   and their sequences follow each other without a gap;
 * - outbox_span(from, to) turns a sequence range into (sequence, lo, hi) pieces: the ids
 *   lo..hi carry sequence, sequence + 1, ...; replay and recovery read the outbox through
 *   it, one index range per run. It is declared ROWS 10 (a window holds few runs): the
 *   default guess, 1,000, made the planner JIT-compile the replay query.
 * The relay numbers the oldest pending runs, splitting the last one at the batch size.
 * Rows numbered or pending before this migration are regrouped into runs; they keep their
 * sequences. */
static const char OUTBOX_V5[] =
    "CREATE TABLE %1$s.outbox_pending_run (lo bigint PRIMARY KEY, hi bigint NOT NULL,"
    " CHECK (hi >= lo));"
    "CREATE TABLE %1$s.outbox_run (first_seq bigint PRIMARY KEY CHECK (first_seq > 0),"
    " first_id bigint NOT NULL UNIQUE, n integer NOT NULL CHECK (n > 0));"
    "INSERT INTO %1$s.outbox_run (first_seq, first_id, n)"
    " SELECT min(sequence), min(id), count(*)::int"
    " FROM (SELECT sequence, id, sequence - row_number() OVER"
    "        (PARTITION BY id - sequence ORDER BY sequence) AS g FROM %1$s.outbox_seq) s"
    " GROUP BY id - sequence, g;"
    "INSERT INTO %1$s.outbox_pending_run (lo, hi)"
    " SELECT min(id), max(id)"
    " FROM (SELECT id, id - row_number() OVER (ORDER BY id) AS g FROM %1$s.outbox_pending) p"
    " GROUP BY g;"
    "DROP VIEW %1$s.outbox_sequenced;"
    "DROP TABLE %1$s.outbox_pending, %1$s.outbox_seq;"
    "CREATE OR REPLACE FUNCTION %1$s.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS"
    " $f$ BEGIN INSERT INTO %1$s.outbox_pending_run (lo, hi)"
    "  SELECT min(id), max(id)"
    "  FROM (SELECT id, id - row_number() OVER (ORDER BY id) AS g FROM new_rows) r GROUP BY g;"
    " IF current_setting('aftercare.outbox_wake', true) IS DISTINCT FROM 'self' THEN"
    "  PERFORM pg_notify('%1$s_outbox', '');"
    " END IF;"
    " RETURN NULL; END $f$;"
    "CREATE FUNCTION %1$s.outbox_span(p_from bigint, p_to bigint)"
    " RETURNS TABLE (sequence bigint, lo bigint, hi bigint) LANGUAGE sql STABLE ROWS 10 AS"
    " $f$ SELECT greatest(r.first_seq, p_from), r.first_id + greatest(p_from - r.first_seq, 0),"
    "  r.first_id + least(r.n - 1, p_to - r.first_seq)"
    "  FROM %1$s.outbox_run r"
    "  WHERE r.first_seq >= coalesce((SELECT max(first_seq) FROM %1$s.outbox_run"
    "                                 WHERE first_seq <= p_from), p_from)"
    "    AND r.first_seq <= p_to AND r.first_seq + r.n > p_from $f$;"
    "CREATE VIEW %1$s.outbox_sequenced AS"
    " SELECT o.id, o.event_id, o.topic, o.envelope, o.created_at,"
    "  r.first_seq + (o.id - r.first_id) AS sequence"
    " FROM %1$s.outbox o LEFT JOIN LATERAL"
    "  (SELECT first_seq, first_id, n FROM %1$s.outbox_run WHERE first_id <= o.id"
    "   ORDER BY first_id DESC LIMIT 1) r ON o.id < r.first_id + r.n;"
    "DO $g$ BEGIN"
    " IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ac_bus') THEN"
    "  GRANT SELECT ON %1$s.outbox_pending_run, %1$s.outbox_run, %1$s.outbox_sequenced"
    "   TO ac_bus;"
    " END IF;"
    " END $g$;";

int ac_outbox_migrate(const char *conninfo, const char *schema, double wait_s)
{
    return ac_outbox_migrate_upto(conninfo, schema, INT_MAX, wait_s);
}

int ac_outbox_migrate_upto(const char *conninfo, const char *schema, int version, double wait_s)
{
    char v1[sizeof(OUTBOX_V1) + (size_t)16 * SCHEMA_MAX];
    char v2[sizeof(OUTBOX_V2) + (size_t)4 * SCHEMA_MAX];
    char v3[sizeof(OUTBOX_V3) + (size_t)32 * SCHEMA_MAX];
    char v4[sizeof(OUTBOX_V4) + (size_t)4 * SCHEMA_MAX];
    char v5[sizeof(OUTBOX_V5) + (size_t)32 * SCHEMA_MAX];
    if (!schema_is_valid(schema)) {
        ac_error("outbox: invalid schema name \"%s\"", schema);
        return AC_ERR_INVALID;
    }
    snprintf(v1, sizeof(v1), OUTBOX_V1, schema);
    snprintf(v2, sizeof(v2), OUTBOX_V2, schema);
    snprintf(v3, sizeof(v3), OUTBOX_V3, schema);
    snprintf(v4, sizeof(v4), OUTBOX_V4, schema);
    snprintf(v5, sizeof(v5), OUTBOX_V5, schema);
    ac_migration_t migrations[] = {
        {1, "001_outbox", v1},    {2, "002_grant_bus", v2}, {3, "003_numbering_table", v3},
        {4, "004_self_wake", v4}, {5, "005_runs", v5},      {0, NULL, NULL}};
    for (size_t i = 0; migrations[i].sql; i++)
        if (migrations[i].version > version)
            migrations[i] = (ac_migration_t){0, NULL, NULL};
    return ac_db_migrate(conninfo, schema, "outbox", migrations, wait_s);
}

/* --- the relay ------------------------------------------------------------------------- */

/* The relay's transactions are planned on tables that are young or churn fast (a burst
 * fills the pending runs and empties them seconds later), so statistics mislead: with them,
 * plans scanned the whole outbox or pending table into a hash per batch, and JIT
 * compiling cost more than running (measured: ~15 ms of ~27 ms for 500 rows). Index
 * access is right for every statement of the relay, whatever the table sizes, so it is
 * forced for its transactions (SET LOCAL: the prune job and other sessions keep the
 * defaults). */
static const char SQL_NOJIT[] = "SELECT set_config('jit', 'off', true),"
                                " set_config('enable_seqscan', 'off', true),"
                                " set_config('enable_mergejoin', 'off', true)";

static const char SQL_MARK[] = "UPDATE %1$s.outbox_state SET published_seq = $1::bigint "
                               "WHERE published_seq < $1::bigint";

/* Numbers the oldest pending runs, $1 events at most, in one statement: deletes them from
 * outbox_pending_run (the last one taken may be cut: its rest goes back), appends them to
 * outbox_run after last_seq, and returns the events (sequence, topic, envelope). The
 * numbering comes from what the DELETE returned, and the state row is locked, so it stays
 * gap-free even if two relays ever ran at once (a run is deleted by one of them only).
 * Each run's envelopes are one index range of the outbox. The rows come in no promised
 * order (sorting the envelopes cost the database ~0.8 us per event): pending_load() puts
 * them in sequence order. */
static const char SQL_ASSIGN[] =
    "WITH st AS (SELECT last_seq FROM %1$s.outbox_state FOR UPDATE),"
    " pick AS (SELECT lo FROM (SELECT lo, hi, sum(hi - lo + 1) OVER (ORDER BY lo) AS upto"
    "                          FROM (SELECT lo, hi FROM %1$s.outbox_pending_run"
    "                                ORDER BY lo LIMIT $1::int) p) c"
    "          WHERE upto - (hi - lo + 1) < $1::int),"
    " del AS (DELETE FROM %1$s.outbox_pending_run p USING pick WHERE p.lo = pick.lo"
    "         RETURNING p.lo, p.hi),"
    " cut AS (SELECT lo, hi, (sum(hi - lo + 1) OVER (ORDER BY lo))::bigint AS upto FROM del),"
    " taken AS (SELECT lo, hi, least(hi, hi - (upto - $1::int)) AS last_id,"
    "                  upto - (hi - lo + 1) AS before FROM cut),"
    " rest AS (INSERT INTO %1$s.outbox_pending_run (lo, hi)"
    "          SELECT last_id + 1, hi FROM taken WHERE last_id < hi),"
    " numbered AS (SELECT st.last_seq + t.before + 1 AS first_seq, t.lo, t.last_id"
    "              FROM taken t, st),"
    " ins AS (INSERT INTO %1$s.outbox_run (first_seq, first_id, n)"
    "         SELECT first_seq, lo, (last_id - lo + 1)::int FROM numbered),"
    " bump AS (UPDATE %1$s.outbox_state"
    "          SET last_seq = last_seq + (SELECT sum(last_id - lo + 1) FROM numbered)::bigint"
    "          WHERE EXISTS (SELECT 1 FROM numbered))"
    " SELECT r.first_seq + (o.id - r.lo), o.topic, o.envelope FROM numbered r"
    " CROSS JOIN LATERAL (SELECT id, topic, envelope FROM %1$s.outbox"
    "                     WHERE id BETWEEN r.lo AND r.last_id) o";

/* The $2 events after $1 ($1 < 0: after the published_seq recorded in the database, after
 * a start), in no promised order (see SQL_ASSIGN). */
static const char SQL_RECOVER[] =
    "SELECT s.sequence + (o.id - s.lo), o.topic, o.envelope"
    " FROM (SELECT CASE WHEN $1::bigint < 0 THEN (SELECT published_seq FROM %1$s.outbox_state)"
    "                   ELSE $1::bigint END AS after) x"
    " CROSS JOIN LATERAL %1$s.outbox_span(x.after + 1, x.after + $2::bigint) s"
    " CROSS JOIN LATERAL (SELECT id, topic, envelope FROM %1$s.outbox"
    "                     WHERE id BETWEEN s.lo AND s.hi) o";

/* Retention: deletes the oldest published runs (their outbox rows and their numbers), about
 * $1 events (whole runs, at least one), stopping before the first run (in sequence order)
 * whose newest row is younger than $2 seconds, so no hole is ever left for replay. */
static const char SQL_PRUNE[] =
    "WITH runs AS (SELECT first_seq, first_id, n, sum(n) OVER (ORDER BY first_seq) AS upto"
    "              FROM (SELECT first_seq, first_id, n FROM %1$s.outbox_run"
    "                    ORDER BY first_seq LIMIT $1::int) r),"
    " chunk AS (SELECT r.first_seq, r.first_id, r.n, o.created_at FROM runs r"
    "           LEFT JOIN %1$s.outbox o ON o.id = r.first_id + r.n - 1"
    "           WHERE r.upto - r.n < $1::int"
    "             AND r.first_seq + r.n - 1 <= (SELECT published_seq FROM %1$s.outbox_state)),"
    " keep AS (SELECT min(first_seq) AS first FROM chunk"
    "          WHERE created_at >= now() - make_interval(secs => $2::double precision)),"
    " doomed AS (SELECT first_seq, first_id, n FROM chunk"
    "            WHERE first_seq < coalesce((SELECT first FROM keep), 9223372036854775807)),"
    " del_rows AS (DELETE FROM %1$s.outbox o USING doomed d"
    "              WHERE o.id BETWEEN d.first_id AND d.first_id + d.n - 1),"
    " del AS (DELETE FROM %1$s.outbox_run r USING doomed d WHERE r.first_seq = d.first_seq"
    "         RETURNING r.first_seq + r.n - 1 AS last, r.n)"
    " SELECT coalesce(sum(n), 0)::bigint, coalesce(max(last), 0) FROM del";

/* Events queued towards a bus connection that broke may be lost: after the bus subscribes
 * again on a new connection, resend this many of the latest (more than the publisher's
 * queue and socket buffers hold; subscribers drop duplicates by sequence). */
#define RESEND_WINDOW 20000

static void relay_kick(ac_outbox_t *self);

static void on_vacuum_result(ac_db_txn_t *txn, int err, void *arg)
{
    ac_outbox_t *self = arg;
    self->vacuum_txn = NULL;
    if (err != 0) /* not worth more than a line: autovacuum does it later */
        ac_warn("outbox: VACUUM of %s.outbox_pending_run failed: %s %s", self->cfg->schema,
                err == AC_ERR_DB ? ac_db_txn_sqlstate(txn) : ac_strerror(err),
                ac_db_txn_errmsg(txn));
    ac_db_txn_free(&txn);
}

/* See VACUUM_AFTER. Outside a transaction block (VACUUM refuses one). */
static void vacuum_pending(ac_outbox_t *self)
{
    if (self->vacuum_txn || !(self->vacuum_txn = ac_db_txn_new(self->db, 0)))
        return;
    self->numbered_since_vacuum = 0;
    if (ac_db_txn_add_sql(self->vacuum_txn, self->vacuum_sql, 0, NULL, NULL, NULL) != 0 ||
        ac_db_txn_flush(self->vacuum_txn, on_vacuum_result, self) != 0)
        ac_db_txn_free(&self->vacuum_txn); /* the database is down: the next burst retries */
}

static void pending_clear(ac_outbox_t *self)
{
    free(self->pending);
    free(self->arena);
    self->pending = NULL;
    self->arena = NULL;
    self->npending = self->next = 0;
}

/* Copies the rows (sequence, topic, envelope; binary results, in any order) of res into
 * self->pending in sequence order, the envelopes with their sequence appended, all in one
 * arena as bus batch records. */
static int pending_load(ac_outbox_t *self, PGresult *res)
{
    int rows = PQntuples(res), err;
    size_t size = 0, at = 0;
    int *order;
    if (rows <= 0)
        return 0;
    for (int r = 0; r < rows; r++) {
        size_t rec = ac_bus_batch_record_size((size_t)PQgetlength(res, r, 1),
                                              (size_t)PQgetlength(res, r, 2) + 11);
        if (PQgetlength(res, r, 0) != 8 || PQgetisnull(res, r, 2) || rec == 0)
            return AC_ERR_DB;
        size += rec;
    }
    order = ac_db_result_order(res, 0, &err);
    self->pending = calloc((size_t)rows, sizeof(*self->pending));
    self->arena = malloc(size);
    if (err != 0 || !self->pending || !self->arena) {
        free(order);
        return AC_ERR_NOMEM;
    }
    for (int i = 0; i < rows; i++) {
        int r = order ? order[i] : i;
        pending_event_t *ev = &self->pending[self->npending];
        size_t tlen = (size_t)PQgetlength(res, r, 1);
        uint64_t seq = ac_db_cell_int8(res, r, 0);
        uint8_t *rec = self->arena + at, *envelope = rec + 1 + tlen + 4;
        ev->sequence = seq;
        ev->record = rec;
        ev->topic = (const char *)rec + 1;
        ev->topic_len = tlen;
        ev->envelope = envelope;
        ev->len = ac_event_append_sequence((const uint8_t *)PQgetvalue(res, r, 2),
                                           (size_t)PQgetlength(res, r, 2), seq, envelope);
        /* the envelope is in place: writing the record around it copies only the topic */
        ev->record_len = ac_bus_batch_record_put(rec, PQgetvalue(res, r, 1), tlen, NULL, ev->len);
        at += ev->record_len;
        self->npending++;
    }
    free(order);
    return 0;
}

static void note_handed(ac_outbox_t *self)
{
    unsigned slot;
    if (self->handed_n == MARK_RING) { /* full: the newest entry absorbs this one */
        slot = (self->handed_head + self->handed_n - 1) % MARK_RING;
    } else {
        slot = (self->handed_head + self->handed_n) % MARK_RING;
        self->handed_n++;
    }
    self->handed[slot].seq = self->published_seq;
    self->handed[slot].at = ev_now(self->loop);
}

/* The highest sequence handed to the socket at least MARK_DELAY_S ago. */
static uint64_t safe_seq_now(ac_outbox_t *self)
{
    ev_tstamp now = ev_now(self->loop);
    while (self->handed_n && self->handed[self->handed_head].at <= now - MARK_DELAY_S) {
        if (self->handed[self->handed_head].seq > self->safe_seq)
            self->safe_seq = self->handed[self->handed_head].seq;
        self->handed_head = (self->handed_head + 1) % MARK_RING;
        self->handed_n--;
    }
    return self->safe_seq;
}

static void publish_pending(ac_outbox_t *self)
{
    while (self->next < self->npending) {
        const pending_event_t *ev = &self->pending[self->next];
        size_t n = 1, bytes = ev->record_len;
        int rc;
        /* a run of events in one batch message (see ac_bus.h): one CURVE box on each side
         * instead of two per event; a lone event goes as it is */
        while (self->next + n < self->npending && n < AC_BUS_BATCH_EVENTS &&
               bytes + ev[n].record_len <= AC_BUS_BATCH_BYTES_MAX)
            bytes += ev[n++].record_len;
        if (n == 1) {
            char topic[256];
            memcpy(topic, ev->topic, ev->topic_len);
            topic[ev->topic_len] = '\0';
            rc = ac_bus_pub_send(self->pub, topic, ev->envelope, ev->len);
        } else {
            rc = ac_bus_pub_send(self->pub, AC_BUS_BATCH_TOPIC, ev->record, bytes);
        }
        if (rc == AC_ERR_AGAIN)
            return; /* on_bus_ready resumes */
        if (rc != 0) {
            ac_error("outbox: cannot publish sequence %llu: %s", (unsigned long long)ev->sequence,
                     ac_strerror(rc));
            return;
        }
        self->published_seq = ev[n - 1].sequence;
        self->next += n;
        if (self->cfg->metrics)
            ac_metrics_add(self->cfg->metrics, "outbox_published_total", NULL, (double)n);
    }
    if (self->cfg->metrics && self->npending)
        ac_metrics_set(self->cfg->metrics, "outbox_published_sequence", NULL,
                       (double)self->published_seq);
    if (self->npending)
        note_handed(self);
    pending_clear(self);
    if (self->is_dirty || self->last_was_full || !self->is_recovered)
        relay_kick(self);
}

static void schedule_retry(ac_outbox_t *self)
{
    ev_timer_stop(self->loop, &self->retry);
    ev_timer_set(&self->retry, ac_backoff_next(&self->backoff), 0.);
    ev_timer_start(self->loop, &self->retry);
}

/* Go back to resending numbered rows after `after` (-1: after the stored published_seq)
 * before numbering new ones. */
static void resend_from(ac_outbox_t *self, int64_t after)
{
    self->is_recovered = 0;
    self->recover_cursor = after;
    self->resend_epoch++; /* a recovery already in flight must not move the cursor */
}

/* After a failed round trip its COMMIT may or may not have happened: rows it numbered
 * would never be numbered again, so resend everything after what went out for sure. */
static void resend_after_failure(ac_outbox_t *self)
{
    resend_from(self, self->published_seq > 0 ? (int64_t)self->published_seq : -1);
}

static void on_relay_result(ac_db_txn_t *txn, int err, void *arg)
{
    ac_outbox_t *self = arg;
    int nres = ac_db_txn_nresults(txn);
    PGresult *rows = nres > 0 ? ac_db_txn_result(txn, nres - 1) : NULL;
    int is_recover = self->is_txn_recover && self->txn_epoch == self->resend_epoch;
    int nrows;

    self->txn = NULL;
    if (err != 0) {
        if (err == AC_ERR_DB)
            ac_error("outbox: relay query failed: %s %s", ac_db_txn_sqlstate(txn),
                     ac_db_txn_errmsg(txn));
        ac_db_txn_free(&txn);
        resend_after_failure(self);
        schedule_retry(self);
        return;
    }
    ac_backoff_reset(&self->backoff);
    if (self->marking_seq > self->persisted_seq)
        self->persisted_seq = self->marking_seq;
    nrows = rows && PQresultStatus(rows) == PGRES_TUPLES_OK ? PQntuples(rows) : 0;
    if (nrows > 0 && pending_load(self, rows) != 0) {
        ac_error("outbox: cannot load %d events (out of memory or a bad row)", nrows);
        pending_clear(self);
        ac_db_txn_free(&txn);
        resend_after_failure(self);
        schedule_retry(self);
        return;
    }
    ac_db_txn_free(&txn);
    self->last_was_full = nrows >= self->txn_batch;
    if (!is_recover) {
        self->numbered_since_vacuum += (uint64_t)nrows;
        if (!self->last_was_full && self->numbered_since_vacuum >= VACUUM_AFTER)
            vacuum_pending(self);
    }
    if (!is_recover) /* a backlog: bigger batches; caught up: back to the configured size */
        self->batch = !self->last_was_full ? self->base_batch
                      : self->batch * 2 > BATCH_MAX
                          ? (self->base_batch > BATCH_MAX ? self->base_batch : BATCH_MAX)
                          : self->batch * 2;
    if (is_recover && !self->is_recovered) {
        if (nrows > 0) {
            self->recover_cursor = (int64_t)self->pending[self->npending - 1].sequence;
            ac_info("outbox: resending %d numbered events from sequence %llu", nrows,
                    (unsigned long long)self->pending[0].sequence);
        }
        if (!self->last_was_full) {
            self->is_recovered = 1;
            self->is_dirty = 1; /* go on to number what arrived meanwhile */
        }
    }
    if (self->cfg->metrics && nrows > 0)
        ac_metrics_observe(self->cfg->metrics, "outbox_batch_size", NULL, nrows);
    publish_pending(self);
}

static void relay_kick(ac_outbox_t *self)
{
    char a[24], b[24];
    const char *params[2] = {a, b};
    int rc;

    if (self->txn) {
        self->is_dirty = 1;
        return;
    }
    if (self->next < self->npending) {
        publish_pending(self);
        return;
    }
    if (!ac_bus_pub_is_ready(self->pub))
        return; /* numbering now would only make events wait; on_bus_ready kicks */
    self->is_dirty = 0;
    self->txn = ac_db_txn_new(self->db, 1);
    if (!self->txn) {
        schedule_retry(self);
        return;
    }
    self->marking_seq = safe_seq_now(self);
    snprintf(a, sizeof(a), "%llu", (unsigned long long)self->marking_seq);
    rc = ac_db_txn_add(self->txn, S_NOJIT, NULL, NULL, NULL);
    if (rc == 0)
        rc = ac_db_txn_add(self->txn, S_MARK, params, NULL, NULL);
    self->is_txn_recover = !self->is_recovered;
    self->txn_epoch = self->resend_epoch;
    self->txn_batch = self->batch;
    ac_db_txn_set_binary_results(self->txn, 1); /* sequence, topic, raw envelope bytes */
    if (rc == 0 && !self->is_recovered) {
        snprintf(a, sizeof(a), "%lld", (long long)self->recover_cursor);
        snprintf(b, sizeof(b), "%d", self->batch);
        rc = ac_db_txn_add(self->txn, S_RECOVER, params, NULL, NULL);
    } else if (rc == 0) {
        snprintf(a, sizeof(a), "%d", self->batch);
        rc = ac_db_txn_add(self->txn, S_ASSIGN, params, NULL, NULL);
    }
    if (rc == 0)
        rc = ac_db_txn_commit(self->txn, on_relay_result, self);
    if (rc != 0) {
        ac_db_txn_free(&self->txn);
        schedule_retry(self);
    }
}

static void on_bus_ready(void *arg)
{
    ac_outbox_t *self = arg;
    uint64_t g = ac_bus_pub_generation(self->pub);
    if (g != self->seen_generation) {
        if (self->seen_generation != 0 && self->published_seq > 0) {
            uint64_t p = self->published_seq;
            ac_warn("outbox: the bus connection was renewed; resending from sequence %llu",
                    (unsigned long long)(p > RESEND_WINDOW ? p - RESEND_WINDOW + 1 : 1));
            resend_from(self, p > RESEND_WINDOW ? (int64_t)(p - RESEND_WINDOW) : 0);
        }
        self->seen_generation = g;
    }
    relay_kick(self);
}

int ac_outbox_add_self_wake(struct ac_db_txn *t)
{
    return ac_db_txn_add_sql(t, "SELECT set_config('aftercare.outbox_wake', 'self', true)", 0, NULL,
                             NULL, NULL);
}

void ac_outbox_wake(ac_outbox_t *self)
{
    if (self)
        relay_kick(self);
}

static void on_outbox_notify(void *arg, const char *channel, const char *payload)
{
    relay_kick(arg);
}

static void on_poll(struct ev_loop *loop, ev_timer *w, int revents)
{
    relay_kick(ac_container_of(w, ac_outbox_t, poll));
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    relay_kick(ac_container_of(w, ac_outbox_t, retry));
}

/* --- retention ------------------------------------------------------------------------- */

static void prune_kick(ac_outbox_t *self);

static void on_prune_result(ac_db_txn_t *txn, int err, void *arg)
{
    ac_outbox_t *self = arg;
    PGresult *res = ac_db_txn_result(txn, 0);
    long long deleted = 0, upto = 0;

    self->prune_txn = NULL;
    if (err == 0 && res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        deleted = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        upto = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    } else if (err == 0) {
        err = AC_ERR_DB;
    }
    if (err != 0) {
        if (self->prune_failures++ == 0)
            ac_warn("outbox: pruning %s.outbox failed: %s %s", self->cfg->schema,
                    err == AC_ERR_DB ? ac_db_txn_sqlstate(txn) : ac_strerror(err),
                    ac_db_txn_errmsg(txn));
        ac_db_txn_free(&txn);
        return; /* the next period tries again */
    }
    ac_db_txn_free(&txn);
    self->prune_failures = 0;
    if (deleted > 0) {
        ac_info("outbox: pruned %lld events of %s.outbox up to sequence %lld (retention %.0f s)",
                deleted, self->cfg->schema, upto, self->cfg->retention_s);
        if (self->cfg->metrics)
            ac_metrics_add(self->cfg->metrics, "outbox_pruned_total", NULL, (double)deleted);
    }
    if (deleted >= PRUNE_CHUNK)
        prune_kick(self); /* more to do: go on at once */
}

static void prune_kick(ac_outbox_t *self)
{
    char chunk[16], secs[32];
    const char *params[2] = {chunk, secs};
    int rc;

    if (self->prune_txn)
        return;
    if (!(self->prune_txn = ac_db_txn_new(self->db, 0)))
        return;
    snprintf(chunk, sizeof(chunk), "%d", PRUNE_CHUNK);
    snprintf(secs, sizeof(secs), "%.3f", self->cfg->retention_s);
    rc = ac_db_txn_add(self->prune_txn, S_PRUNE, params, NULL, NULL);
    if (rc == 0)
        rc = ac_db_txn_flush(self->prune_txn, on_prune_result, self);
    if (rc != 0)
        ac_db_txn_free(&self->prune_txn); /* the database is down: the next period retries */
}

static void on_prune(struct ev_loop *loop, ev_timer *w, int revents)
{
    prune_kick(ac_container_of(w, ac_outbox_t, prune));
}

ac_outbox_t *ac_outbox_new(struct ev_loop *loop, const ac_outbox_config_t *cfg)
{
    static const int nparams[S_COUNT] = {0, 1, 1, 2, 2};
    double prune_every_s;
    ac_outbox_t *self;

    if (!schema_is_valid(cfg->schema)) {
        ac_error("outbox: invalid schema name \"%s\"", cfg->schema);
        return NULL;
    }
    self = calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    self->loop = loop;
    self->cfg = cfg;
    self->recover_cursor = -1;
    self->batch = self->base_batch = cfg->batch > 0 ? cfg->batch : 500;
    snprintf(self->sql[S_NOJIT], SQL_MAX, "%s", SQL_NOJIT);
    snprintf(self->sql[S_MARK], SQL_MAX, SQL_MARK, cfg->schema);
    snprintf(self->sql[S_ASSIGN], SQL_MAX, SQL_ASSIGN, cfg->schema);
    snprintf(self->sql[S_RECOVER], SQL_MAX, SQL_RECOVER, cfg->schema);
    snprintf(self->sql[S_PRUNE], SQL_MAX, SQL_PRUNE, cfg->schema);
    snprintf(self->vacuum_sql, SQL_MAX, "VACUUM %s.outbox_pending_run", cfg->schema);
    for (int i = 0; i < S_COUNT; i++) {
        self->stmts[i].sql = self->sql[i];
        self->stmts[i].nparams = nparams[i];
    }
    snprintf(self->channel, sizeof(self->channel), "%s_outbox", cfg->schema);
    self->listen[0] = self->channel;
    self->dbcfg.conninfo = cfg->conninfo;
    self->dbcfg.pool_size = 2; /* the prune job and VACUUM never hold up the relay */
    self->dbcfg.stmts = self->stmts;
    self->dbcfg.nstmts = S_COUNT;
    self->dbcfg.listen = self->listen;
    self->dbcfg.on_notify = on_outbox_notify;
    self->dbcfg.notify_arg = self;
    self->dbcfg.name = "outbox-relay";
    ac_backoff_init(&self->backoff, 0.1, 5.);
    ev_timer_init(&self->poll, on_poll, 1., 1.);
    ev_timer_init(&self->retry, on_retry, 1., 0.);
    prune_every_s = cfg->retention_s / 2;
    prune_every_s = prune_every_s < PRUNE_MIN_S   ? PRUNE_MIN_S
                    : prune_every_s > PRUNE_MAX_S ? PRUNE_MAX_S
                                                  : prune_every_s;
    ev_timer_init(&self->prune, on_prune, prune_every_s, prune_every_s);
    if (cfg->metrics) {
        ac_metrics_declare(cfg->metrics, "outbox_published_total", AC_METRIC_COUNTER,
                           "Events handed to the bus by the outbox relay");
        ac_metrics_declare(cfg->metrics, "outbox_published_sequence", AC_METRIC_GAUGE,
                           "Last sequence handed to the bus");
        ac_metrics_declare(cfg->metrics, "outbox_batch_size", AC_METRIC_SIZES,
                           "Events numbered per relay transaction");
        ac_metrics_declare(cfg->metrics, "outbox_pruned_total", AC_METRIC_COUNTER,
                           "Published events deleted from the outbox after the retention");
    }
    /* about as many events queued as an unbatched publisher's 10,000 messages hold */
    self->pub =
        ac_bus_pub_new_hwm(loop, cfg->bus_endpoint, cfg->curve, 10000 / AC_BUS_BATCH_EVENTS);
    self->db = self->pub ? ac_db_new(loop, &self->dbcfg) : NULL;
    if (!self->db) {
        ac_outbox_destroy(&self);
        return NULL;
    }
    ac_bus_pub_on_ready(self->pub, on_bus_ready, self);
    ev_timer_start(loop, &self->poll);
    if (cfg->retention_s > 0)
        ev_timer_start(loop, &self->prune);
    return self;
}

void ac_outbox_destroy(ac_outbox_t **self_p)
{
    ac_outbox_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    ev_timer_stop(self->loop, &self->poll);
    ev_timer_stop(self->loop, &self->retry);
    ev_timer_stop(self->loop, &self->prune);
    ac_db_txn_free(&self->prune_txn);
    ac_db_txn_free(&self->vacuum_txn);
    ac_db_txn_free(&self->txn);
    ac_db_destroy(&self->db);
    ac_bus_pub_destroy(&self->pub);
    pending_clear(self);
    free(self);
    *self_p = NULL;
}

uint64_t ac_outbox_published_seq(const ac_outbox_t *self)
{
    return self->published_seq;
}

/* --- multi-row inserts ----------------------------------------------------------------- */

static void put_be32(FILE *f, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    fwrite(b, 1, 4, f);
}

int ac_outbox_rows_init(ac_outbox_rows_t *r)
{
    memset(r, 0, sizeof *r);
    r->ids = open_memstream(&r->ids_buf, &r->ids_len);
    r->topics = open_memstream(&r->topics_buf, &r->topics_len);
    r->bodies = open_memstream(&r->bodies_buf, &r->bodies_len);
    if (!r->ids || !r->topics || !r->bodies) {
        ac_outbox_rows_clear(r);
        return AC_ERR_NOMEM;
    }
    return 0;
}

int ac_outbox_rows_append(ac_outbox_rows_t *r, const char *event_id, const char *topic,
                          const uint8_t *envelope, size_t len)
{
    /* uuids and topics (lowercase letters, dots, underscores) need no quoting */
    fprintf(r->ids, "%s%s", r->n ? "," : "", event_id);
    fprintf(r->topics, "%s%s", r->n ? "," : "", topic);
    put_be32(r->bodies, (uint32_t)len);
    fwrite(envelope, 1, len, r->bodies);
    r->n++;
    return ferror(r->ids) || ferror(r->topics) || ferror(r->bodies) ? AC_ERR_NOMEM : 0;
}

int ac_outbox_rows_add(ac_db_txn_t *t, int stmt, ac_outbox_rows_t *r)
{
    char *ids = NULL, *topics = NULL, *array = NULL;
    size_t ids_len = 0, topics_len = 0, array_len = 0;
    FILE *fi = open_memstream(&ids, &ids_len);
    FILE *ft = open_memstream(&topics, &topics_len);
    FILE *fa = open_memstream(&array, &array_len);
    int rc = AC_ERR_NOMEM;

    if (fflush(r->ids) || fflush(r->topics) || fflush(r->bodies) || !fi || !ft || !fa)
        goto out;
    fprintf(fi, "{%.*s}", (int)r->ids_len, r->ids_buf);
    fprintf(ft, "{%.*s}", (int)r->topics_len, r->topics_buf);
    /* array_recv format: ndim, has-nulls, element type (bytea = 17), dim, lower bound */
    put_be32(fa, 1);
    put_be32(fa, 0);
    put_be32(fa, 17);
    put_be32(fa, (uint32_t)r->n);
    put_be32(fa, 1);
    fwrite(r->bodies_buf, 1, r->bodies_len, fa);
    {
        /* close all three whatever happens; any error means out of memory */
        int is_bad = ferror(fi) | ferror(ft) | ferror(fa);
        is_bad |= fclose(fi) != 0;
        is_bad |= fclose(ft) != 0;
        is_bad |= fclose(fa) != 0;
        fi = ft = fa = NULL;
        if (is_bad)
            goto out;
    }
    {
        const char *values[3] = {ids, topics, array};
        int lengths[3] = {0, 0, (int)array_len};
        int formats[3] = {0, 0, 1};
        rc = ac_db_txn_add(t, stmt, values, lengths, formats);
    }
out:
    if (fi)
        fclose(fi);
    if (ft)
        fclose(ft);
    if (fa)
        fclose(fa);
    free(ids);
    free(topics);
    free(array);
    return rc;
}

void ac_outbox_rows_clear(ac_outbox_rows_t *r)
{
    if (r->ids)
        fclose(r->ids);
    if (r->topics)
        fclose(r->topics);
    if (r->bodies)
        fclose(r->bodies);
    free(r->ids_buf);
    free(r->topics_buf);
    free(r->bodies_buf);
    memset(r, 0, sizeof *r);
}
