/* store.c — the bus's SQL (see store.h).
 *
 * Notes:
 * - Each statement text is a template with %1$s for the schema, filled once per source.
 *   They are sent unprepared (ac_db_txn_add_sql): a prepared statement on a missing
 *   outbox (a service not migrated yet, a typo in AC_BUS_SOURCES) would fail every
 *   connection of the pool, and with it the token cache; unprepared, only that source's
 *   queries fail, each with the database's reason.
 * - The replay query answers in one snapshot (one statement) both the rows and where the
 *   outbox stands (last_seq, oldest sequence): replay validates a request and notices a
 *   range pruned under it from the same figures the rows come from. The one-row
 *   subquery is LEFT JOINed to the rows, so it arrives even when no row matches.
 * - The replay query's results come in binary format: the envelopes are bytea, and
 *   decoding hex text would cost more than everything else. */
#include "store.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_db.h"
#include "ac_event.h"
#include "ac_log.h"

#define SCHEMA_MAX     48
#define SQL_MAX        1536
#define LISTEN_CHANNEL "ac_auth"

enum { STMT_POSITION, STMT_BATCH, STMT_PER_SOURCE };

/* The numbers live in outbox_run (runs of ids with consecutive sequences), the ids not
 * numbered yet in outbox_pending_run (see common/outbox.c). */
static const char SQL_POSITION[] =
    "SELECT s.last_seq, s.published_seq,"
    " coalesce((SELECT min(first_seq) FROM %1$s.outbox_run), 0),"
    " (SELECT coalesce(sum(hi - lo + 1), 0) FROM %1$s.outbox_pending_run)"
    " FROM %1$s.outbox_state s";
enum { POS_LAST, POS_PUBLISHED, POS_OLDEST, POS_UNNUMBERED, POS_NCOLS };

/* $1 from, $2 to (capped at last_seq), $3 prefix, $4 the key's prefixes (text[]).
 * Sequences are contiguous (pruning removes a prefix only), so [from, to] holds at most
 * to - from + 1 rows: the caller's window is the batch size, there is no LIMIT, and
 * whatever plan the statistics suggest, the work is bounded by the window. outbox_span()
 * gives the id range of each run in the window: one index range of the outbox per run.
 * There is no ORDER BY: sorting the envelopes cost the database more than the rest of the
 * query, and the rows come in sequence order anyway; batch_copy() puts them in order if
 * they ever do not. */
static const char SQL_BATCH[] =
    "SELECT coalesce(m.last_seq, 0), coalesce(m.oldest, 0), o.sequence, o.topic, o.envelope"
    " FROM (SELECT (SELECT last_seq FROM %1$s.outbox_state) AS last_seq,"
    "              (SELECT min(first_seq) FROM %1$s.outbox_run) AS oldest) m"
    " LEFT JOIN LATERAL ("
    "   SELECT s.sequence + (o.id - s.lo) AS sequence, o.topic, o.envelope"
    "   FROM %1$s.outbox_span($1::bigint, least($2::bigint, m.last_seq)) s"
    "   JOIN %1$s.outbox o ON o.id BETWEEN s.lo AND s.hi"
    "   WHERE starts_with(topic, $3::text)"
    "     AND (cardinality($4::text[]) = 0"
    "          OR EXISTS (SELECT 1 FROM unnest($4::text[]) p WHERE starts_with(topic, p)))"
    "  ) o ON true";
enum { BATCH_LAST, BATCH_OLDEST, BATCH_SEQ, BATCH_TOPIC, BATCH_ENVELOPE, BATCH_NCOLS };

/* Before the batch, in its transaction. The planner cannot know how many rows a window
 * holds (its bounds are parameters) and guesses a fraction of the outbox. On an outbox of
 * 200,000 rows that guess made it scan the whole outbox against the window's runs (~200 ms
 * for a 2,000-row batch that takes 3 ms through the index) or JIT-compile the query (~185
 * ms). Index access is right whatever the sizes: the window bounds the work. */
static const char SQL_PLANNER[] = "SELECT set_config('jit', 'off', true),"
                                  " set_config('enable_seqscan', 'off', true)";

struct bus_store {
    struct ev_loop *loop; /* borrowed */
    char *conninfo;       /* owned copy */
    size_t nsources;
    char *sql; /* owned texts, SQL_MAX each: source * STMT_PER_SOURCE + statement */
    ac_db_config_t db_cfg;
    ac_db_t *db; /* owned */
    void (*on_notify)(void *arg, const char *channel, const char *payload);
    void *notify_arg;
};

static const char *const LISTEN[] = {LISTEN_CHANNEL, NULL};

static void on_db_notify(void *arg, const char *channel, const char *payload)
{
    bus_store_t *self = arg;
    if (self->on_notify)
        self->on_notify(self->notify_arg, channel, payload);
}

bus_store_t *bus_store_new(struct ev_loop *loop, const char *conninfo, const char *const *schemas,
                           size_t nschemas,
                           void (*on_notify)(void *arg, const char *channel, const char *payload),
                           void *notify_arg)
{
    size_t nstmts = nschemas * STMT_PER_SOURCE;
    bus_store_t *self = calloc(1, sizeof(*self));

    if (!self || !(self->conninfo = strdup(conninfo)) ||
        !(self->sql = calloc(nstmts ? nstmts : 1, SQL_MAX))) {
        ac_error("bus store: out of memory");
        bus_store_destroy(&self);
        return NULL;
    }
    self->loop = loop;
    self->nsources = nschemas;
    self->on_notify = on_notify;
    self->notify_arg = notify_arg;
    for (size_t i = 0; i < nschemas; i++) {
        for (int k = 0; k < STMT_PER_SOURCE; k++) {
            size_t s = i * STMT_PER_SOURCE + (size_t)k;
            char *text = self->sql + s * SQL_MAX;
            int n = k == STMT_POSITION ? snprintf(text, SQL_MAX, SQL_POSITION, schemas[i])
                                       : snprintf(text, SQL_MAX, SQL_BATCH, schemas[i]);
            if (n < 0 || n >= SQL_MAX || strlen(schemas[i]) >= SCHEMA_MAX) {
                ac_error("bus store: schema name \"%s\" is too long", schemas[i]);
                bus_store_destroy(&self);
                return NULL;
            }
        }
    }
    self->db_cfg = (ac_db_config_t){
        .conninfo = self->conninfo,
        .pool_size = 4,
        .listen = LISTEN,
        .on_notify = on_db_notify,
        .notify_arg = self,
        .name = "bus",
    };
    if (!(self->db = ac_db_new(loop, &self->db_cfg))) {
        bus_store_destroy(&self);
        return NULL;
    }
    return self;
}

void bus_store_destroy(bus_store_t **self_p)
{
    bus_store_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    ac_db_destroy(&self->db);
    free(self->sql);
    free(self->conninfo);
    free(self);
    *self_p = NULL;
}

struct ac_db *bus_store_db(bus_store_t *self)
{
    return self->db;
}

int bus_store_is_up(const bus_store_t *self)
{
    return self && ac_db_is_up(self->db);
}

void bus_store_cancel(bus_store_call_t *call)
{
    ac_db_txn_free(&call->txn);
}

/* --- results ----------------------------------------------------------------------------- */

static uint64_t text_u64(const PGresult *res, int row, int col)
{
    return strtoull(PQgetvalue(res, row, col), NULL, 10);
}

/* A binary int8; 0 for NULL or a negative value. */
static uint64_t bin_u64(const PGresult *res, int row, int col)
{
    uint64_t v = ac_db_cell_int8(res, row, col);
    return (int64_t)v < 0 ? 0 : v;
}

static const char *sql_text(const bus_store_t *self, size_t source, int stmt)
{
    return self->sql + (source * STMT_PER_SOURCE + (size_t)stmt) * SQL_MAX;
}

/* The reason of a failure, for the caller's log line. */
static void note_failure(bus_store_call_t *call, ac_db_txn_t *txn, int err)
{
    if (err == AC_ERR_DB && ac_db_txn_sqlstate(txn)[0])
        snprintf(call->error, sizeof(call->error), "%s %s", ac_db_txn_sqlstate(txn),
                 ac_db_txn_errmsg(txn));
    else
        snprintf(call->error, sizeof(call->error), "%s", ac_strerror(err));
}

static void on_position(ac_db_txn_t *txn, int err, void *arg)
{
    bus_store_call_t *call = arg;
    PGresult *res = ac_db_txn_result(txn, 0);

    if (err == 0 && (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
                     PQnfields(res) != POS_NCOLS))
        err = AC_ERR_DB;
    if (err != 0) {
        note_failure(call, txn, err);
    } else {
        call->position.last_seq = text_u64(res, 0, POS_LAST);
        call->position.published_seq = text_u64(res, 0, POS_PUBLISHED);
        call->position.oldest_seq = text_u64(res, 0, POS_OLDEST);
        call->position.unnumbered = text_u64(res, 0, POS_UNNUMBERED);
    }
    ac_db_txn_free(&call->txn);
    call->done(call, err);
}

int bus_store_read_position(bus_store_t *self, bus_store_call_t *call, size_t source)
{
    int rc;
    if (source >= self->nsources)
        return AC_ERR_INVALID;
    if (call->txn)
        return AC_ERR_CONFLICT;
    if (!(call->txn = ac_db_txn_new(self->db, 0)))
        return AC_ERR_NOMEM;
    rc = ac_db_txn_add_sql(call->txn, sql_text(self, source, STMT_POSITION), 0, NULL, NULL, NULL);
    if (rc == 0)
        rc = ac_db_txn_flush(call->txn, on_position, call);
    if (rc != 0)
        ac_db_txn_free(&call->txn);
    return rc;
}

/* Copies the rows of a replay result (binary format) into one allocation, in sequence
 * order. */
static int batch_copy(const PGresult *res, bus_batch_t **out)
{
    int nrows = PQntuples(res), err;
    size_t n = 0, bytes = 0;
    bus_batch_t *b;
    uint8_t *arena;
    int *order = ac_db_result_order(res, BATCH_SEQ, &err);

    if (err != 0)
        return err;
    for (int r = 0; r < nrows; r++) {
        if (PQgetisnull(res, r, BATCH_SEQ))
            continue; /* the LEFT JOIN's row when nothing matched */
        n++;
        bytes += (size_t)PQgetlength(res, r, BATCH_TOPIC) + 1;
        bytes += (size_t)PQgetlength(res, r, BATCH_ENVELOPE) + 11; /* + field 6 */
    }
    b = malloc(sizeof(*b) + n * sizeof(bus_batch_row_t) + bytes);
    if (!b) {
        free(order);
        return AC_ERR_NOMEM;
    }
    b->last_seq = nrows > 0 ? bin_u64(res, 0, BATCH_LAST) : 0;
    b->oldest_seq = nrows > 0 ? bin_u64(res, 0, BATCH_OLDEST) : 0;
    b->n = 0;
    b->rows = (bus_batch_row_t *)(b + 1);
    arena = (uint8_t *)(b->rows + n);
    for (int i = 0; i < nrows; i++) {
        int r = order ? order[i] : i;
        bus_batch_row_t *row;
        size_t tlen, elen;
        if (PQgetisnull(res, r, BATCH_SEQ))
            continue;
        row = &b->rows[b->n++];
        tlen = (size_t)PQgetlength(res, r, BATCH_TOPIC);
        elen = (size_t)PQgetlength(res, r, BATCH_ENVELOPE);
        row->sequence = bin_u64(res, r, BATCH_SEQ);
        memcpy(arena, PQgetvalue(res, r, BATCH_TOPIC), tlen);
        arena[tlen] = '\0';
        row->topic = (const char *)arena;
        arena += tlen + 1;
        /* byte for byte what the relay sent: the stored envelope + its sequence */
        row->len = ac_event_append_sequence((const uint8_t *)PQgetvalue(res, r, BATCH_ENVELOPE),
                                            elen, row->sequence, arena);
        row->envelope = arena;
        arena += elen + 11;
    }
    free(order);
    *out = b;
    return 0;
}

void bus_batch_free(bus_batch_t **batch_p)
{
    if (!batch_p)
        return;
    free(*batch_p);
    *batch_p = NULL;
}

static void on_batch(ac_db_txn_t *txn, int err, void *arg)
{
    bus_store_call_t *call = arg;
    PGresult *res = ac_db_txn_result(txn, 1);

    call->batch = NULL;
    if (err == 0 && (!res || PQresultStatus(res) != PGRES_TUPLES_OK ||
                     PQnfields(res) != BATCH_NCOLS || PQntuples(res) < 1))
        err = AC_ERR_DB;
    if (err == 0)
        err = batch_copy(res, &call->batch);
    if (err != 0)
        note_failure(call, txn, err);
    ac_db_txn_free(&call->txn);
    call->done(call, err);
}

/* {"a","b\"c"}: a text[] literal, every element quoted. Malloc'ed; NULL on OOM. */
static char *array_literal(const char *const *items, size_t n)
{
    size_t cap = 3;
    char *out, *p;
    for (size_t i = 0; i < n; i++)
        cap += 2 * strlen(items[i]) + 3;
    if (!(out = malloc(cap)))
        return NULL;
    p = out;
    *p++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *p++ = ',';
        *p++ = '"';
        for (const char *s = items[i]; *s; s++) {
            if (*s == '"' || *s == '\\')
                *p++ = '\\';
            *p++ = *s;
        }
        *p++ = '"';
    }
    *p++ = '}';
    *p = '\0';
    return out;
}

int bus_store_read_batch(bus_store_t *self, bus_store_call_t *call, const bus_batch_query_t *q)
{
    char from[24], to[24];
    char *topics;
    const char *values[4];
    int rc;

    if (q->source >= self->nsources || q->from_seq < 1 || q->from_seq > INT64_MAX ||
        q->to_seq > INT64_MAX)
        return AC_ERR_INVALID;
    if (call->txn)
        return AC_ERR_CONFLICT;
    if (!(topics = array_literal(q->topics, q->ntopics)))
        return AC_ERR_NOMEM;
    snprintf(from, sizeof(from), "%llu", (unsigned long long)q->from_seq);
    snprintf(to, sizeof(to), "%llu", (unsigned long long)q->to_seq);
    values[0] = from;
    values[1] = to;
    values[2] = q->prefix ? q->prefix : "";
    values[3] = topics;
    if (!(call->txn = ac_db_txn_new(self->db, 1))) {
        free(topics);
        return AC_ERR_NOMEM;
    }
    rc = ac_db_txn_add_sql(call->txn, SQL_PLANNER, 0, NULL, NULL, NULL);
    ac_db_txn_set_binary_results(call->txn, 1);
    if (rc == 0)
        rc = ac_db_txn_add_sql(call->txn, sql_text(self, q->source, STMT_BATCH), 4, values, NULL,
                               NULL);
    free(topics); /* the values were copied */
    if (rc == 0)
        rc = ac_db_txn_commit(call->txn, on_batch, call);
    if (rc != 0)
        ac_db_txn_free(&call->txn);
    return rc;
}
