/* store.c — see store.h. The engineer document the API returns is built by
 * dispatch.engineer_doc() (migrations/001_engineers.sql), so a row crosses the wire once,
 * already in its final shape. */
#include "store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <libpq-fe.h>

#include "ac_log.h"

static const char SQL_OUTBOX_INSERT[] = "INSERT INTO dispatch.outbox (event_id, topic, envelope) "
                                        "VALUES ($1::uuid, $2::text, $3::bytea)";

static const char SQL_ENGINEER_SAVE[] =
    "SELECT dispatch.engineer_save($1::uuid, $2::bigint, $3::jsonb)";

static const char SQL_ENGINEER_GET[] =
    "SELECT dispatch.engineer_doc(e) FROM dispatch.engineers e WHERE e.id = $1::uuid";

static const char SQL_ENGINEER_LOCK[] =
    "SELECT dispatch.engineer_doc(e) FROM dispatch.engineers e WHERE e.id = $1::uuid "
    "FOR UPDATE";

/* Newest first; fetches limit + 1 rows to know whether another page follows. */
static const char SQL_ENGINEER_LIST[] =
    "SELECT e.seq, dispatch.engineer_doc(e) FROM dispatch.engineers e "
    "WHERE ($1::text IS NULL OR e.role = $1::text) "
    "AND ($2::text IS NULL OR e.regions @> ARRAY[$2::text]) "
    "AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM dispatch.engineer_skills s "
    "WHERE s.engineer_id = e.id AND s.name = $3::text)) "
    "AND ($4::text IS NULL OR e.availability = $4::text) "
    "AND ($5::bigint IS NULL OR e.seq < $5::bigint) "
    "ORDER BY e.seq DESC LIMIT $6::int";

static const char SQL_TICKET_APPLY[] =
    "SELECT dispatch.ticket_apply($1::uuid, $2::text, $3::bigint, $4::text, $5::text, "
    "$6::uuid, $7::text, $8::text, $9::text, $10::text, $11::boolean, $12::timestamptz, "
    "$13::timestamptz)";

static const char SQL_TICKET_GET[] = "SELECT dispatch.ticket_get($1::text)";

static const char SQL_EMIT_TAKE[] = "SELECT dispatch.emit_take($1::int)";

/* -- assignment.c -- */

/* -- sla.c -- */

/* -- plans.c -- */

/* -- work.c -- */

/* -- repairs.c -- */

/* -- cases.c -- */

const ac_db_stmt_t dispatch_stmts[DISPATCH_STMT__COUNT] = {
    [DISPATCH_STMT_OUTBOX_INSERT] = {SQL_OUTBOX_INSERT, 3},
    [DISPATCH_STMT_ENGINEER_SAVE] = {SQL_ENGINEER_SAVE, 3},
    [DISPATCH_STMT_ENGINEER_GET] = {SQL_ENGINEER_GET, 1},
    [DISPATCH_STMT_ENGINEER_LOCK] = {SQL_ENGINEER_LOCK, 1},
    [DISPATCH_STMT_ENGINEER_LIST] = {SQL_ENGINEER_LIST, 6},
    [DISPATCH_STMT_TICKET_APPLY] = {SQL_TICKET_APPLY, 13},
    [DISPATCH_STMT_TICKET_GET] = {SQL_TICKET_GET, 1},
    [DISPATCH_STMT_EMIT_TAKE] = {SQL_EMIT_TAKE, 1},
    /* -- assignment.c -- */
    /* -- sla.c -- */
    /* -- plans.c -- */
    /* -- work.c -- */
    /* -- repairs.c -- */
    /* -- cases.c -- */
};

static const PGresult *result_rows(const ac_db_txn_t *t, int i)
{
    const PGresult *res = ac_db_txn_result(t, i);
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
        return NULL;
    return res;
}

/* JSON cell (row, col); NULL for SQL NULL or unparsable text (logged). */
static json_t *json_cell(const PGresult *res, int row, int col)
{
    json_error_t jerr;
    json_t *v;
    if (PQgetisnull(res, row, col))
        return NULL;
    v = json_loadb(PQgetvalue(res, row, col), (size_t)PQgetlength(res, row, col), JSON_DECODE_ANY,
                   &jerr);
    if (!v)
        ac_error("store: unparsable JSON from the database: %s", jerr.text);
    return v;
}

int dispatch_store_add_outbox(ac_db_txn_t *t, const char *event_id, const char *topic,
                              const uint8_t *envelope, size_t len)
{
    const char *values[3] = {event_id, topic, (const char *)envelope};
    int lengths[3] = {0, 0, (int)len};
    int formats[3] = {0, 0, 1};
    return ac_db_txn_add(t, DISPATCH_STMT_OUTBOX_INSERT, values, lengths, formats);
}

int dispatch_store_add_engineer_save(ac_db_txn_t *t, const char *id, int64_t version,
                                     const json_t *doc)
{
    char version_s[24];
    char *text = json_dumps(doc, JSON_COMPACT);
    int rc;
    if (!text)
        return AC_ERR_NOMEM;
    snprintf(version_s, sizeof version_s, "%" PRId64, version);
    const char *values[3] = {id, id ? version_s : NULL, text};
    rc = ac_db_txn_add(t, DISPATCH_STMT_ENGINEER_SAVE, values, NULL, NULL);
    free(text);
    return rc;
}

int dispatch_store_add_engineer_get(ac_db_txn_t *t, const char *id)
{
    const char *values[1] = {id};
    return ac_db_txn_add(t, DISPATCH_STMT_ENGINEER_GET, values, NULL, NULL);
}

int dispatch_store_add_engineer_lock(ac_db_txn_t *t, const char *id)
{
    const char *values[1] = {id};
    return ac_db_txn_add(t, DISPATCH_STMT_ENGINEER_LOCK, values, NULL, NULL);
}

int dispatch_store_add_engineer_list(ac_db_txn_t *t, const dispatch_engineer_filter_t *f)
{
    char cursor[24], limit[24];
    snprintf(cursor, sizeof cursor, "%" PRId64, f->cursor);
    snprintf(limit, sizeof limit, "%ld", f->limit + 1);
    const char *values[6] = {
        f->role, f->region, f->skill, f->availability, f->cursor > 0 ? cursor : NULL, limit,
    };
    return ac_db_txn_add(t, DISPATCH_STMT_ENGINEER_LIST, values, NULL, NULL);
}

int dispatch_store_doc_result(const ac_db_txn_t *t, int i, json_t **doc_out)
{
    const PGresult *res = result_rows(t, i);
    *doc_out = NULL;
    if (!res)
        return AC_ERR_PROTO;
    if (PQntuples(res) == 0 || PQgetisnull(res, 0, 0))
        return AC_ERR_NOTFOUND;
    *doc_out = json_cell(res, 0, 0);
    return *doc_out ? 0 : AC_ERR_PROTO;
}

int dispatch_store_page_result(const ac_db_txn_t *t, int i, long limit, json_t **body_out)
{
    const PGresult *res = result_rows(t, i);
    json_t *items, *body;
    int n;

    *body_out = NULL;
    if (!res || PQnfields(res) != 2)
        return AC_ERR_PROTO;
    n = PQntuples(res);
    items = json_array();
    body = json_object();
    if (!items || !body)
        goto nomem;
    for (int row = 0; row < n && row < limit; row++) {
        json_t *doc = json_cell(res, row, 1);
        if (!doc || json_array_append_new(items, doc) < 0)
            goto nomem;
    }
    if (json_object_set_new(body, "items", items) < 0) {
        items = NULL;
        goto nomem;
    }
    items = NULL;
    /* A further row exists: the next page starts after the last item shown. */
    if (json_object_set_new(body, "next_cursor",
                            n > limit ? json_string(PQgetvalue(res, (int)limit - 1, 0))
                                      : json_null()) < 0)
        goto nomem;
    *body_out = body;
    return 0;
nomem:
    json_decref(items);
    json_decref(body);
    return AC_ERR_NOMEM;
}
