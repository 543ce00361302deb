/* store.c — see store.h. The JSON documents the API returns are built by the SQL
 * functions of migrations/001_init.sql (intake.ticket_doc() etc.), so a row crosses the
 * wire once, already in its final shape. */
#include "store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "ac_log.h"
#include "ac_time.h"

/* Shared FROM clause: the ticket with its customer and (optional) product. */
#define TICKET_FROM                                                                                \
    "FROM intake.tickets t "                                                                       \
    "JOIN intake.customers c ON c.id = t.customer_id "                                             \
    "LEFT JOIN intake.products p ON p.id = t.product_id "

static const char SQL_CREATE_TICKET[] =
    "SELECT r_status, r_field, r_message, r_doc FROM intake.create_ticket("
    "$1::text, $2::text, $3::uuid, $4::uuid, $5::text, $6::text, $7::text, $8::timestamptz, "
    "$9::text, $10::boolean, $11::text, $12::text, $13::json, $14::json, $15::text)";

/* The whole batch in one statement (migration 002); $n is the array of parameter n of
 * intake.create_ticket() over the batch's requests. */
static const char SQL_CREATE_TICKETS[] =
    "SELECT idx, r_status, r_field, r_message, r_doc FROM intake.create_tickets("
    "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], "
    "$8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], "
    "$15::text[])";

/* Many outbox rows in one statement: ids and topics as text arrays, envelopes as a binary
 * bytea[] (so one statement trigger, one NOTIFY, one executor start per batch). */
static const char SQL_OUTBOX_INSERT_MANY[] =
    "INSERT INTO intake.outbox (event_id, topic, envelope) "
    "SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[])";

static const char SQL_OUTBOX_INSERT[] =
    "INSERT INTO intake.outbox (event_id, topic, envelope) VALUES ($1::uuid, $2::text, $3::bytea)";

static const char SQL_TICKET_GET[] =
    "SELECT intake.ticket_doc(t, c, p), "
    "(SELECT coalesce(json_agg(json_build_object('from', h.from_status, 'to', h.to_status, "
    "'at', intake.ts(h.at), 'reason', h.reason, 'actor', h.actor) ORDER BY h.seq), '[]') "
    "FROM intake.ticket_status_history h WHERE h.ticket_id = t.id) " TICKET_FROM
    "WHERE t.number = $1::text";

static const char SQL_TICKET_LOCK[] =
    "SELECT intake.ticket_doc(t, c, p), intake.ts(now()) " TICKET_FROM
    "WHERE t.number = $1::text FOR UPDATE OF t";

static const char SQL_TICKET_UPDATE[] =
    "UPDATE intake.tickets SET description = $2::text, category = $3::text, "
    "urgency = $4::text, expedite = $5::boolean, priority = $6::text, contact = $7::json, "
    "status = $8::text, version = $9::bigint, updated_at = now(), "
    "resolved_at = $10::timestamptz, closed_at = $11::timestamptz "
    "WHERE id = $1::uuid AND version = $9::bigint - 1";

static const char SQL_HISTORY_INSERT[] =
    "INSERT INTO intake.ticket_status_history "
    "(ticket_id, seq, from_status, to_status, at, reason, actor) "
    "SELECT $1::uuid, coalesce(max(h.seq), 0) + 1, $2::text, $3::text, now(), $4::text, "
    "$5::text FROM intake.ticket_status_history h WHERE h.ticket_id = $1::uuid";

/* Many at once (follow.c): $n are the arrays of the single statements' parameters; the
 * update also takes each ticket's version before the batch ($12). */
static const char SQL_TICKET_UPDATE_MANY[] =
    "UPDATE intake.tickets t SET description = u.description, category = u.category, "
    "urgency = u.urgency, expedite = u.expedite, priority = u.priority, contact = u.contact, "
    "status = u.status, version = u.version, updated_at = now(), resolved_at = u.resolved_at, "
    "closed_at = u.closed_at "
    "FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::text[], "
    "$7::json[], $8::text[], $9::bigint[], $10::timestamptz[], $11::timestamptz[], "
    "$12::bigint[]) AS u(id, description, category, urgency, expedite, priority, contact, "
    "status, version, resolved_at, closed_at, old_version) "
    "WHERE t.id = u.id AND t.version = u.old_version";

static const char SQL_HISTORY_INSERT_MANY[] =
    "INSERT INTO intake.ticket_status_history "
    "(ticket_id, seq, from_status, to_status, at, reason, actor) "
    "SELECT u.id, coalesce((SELECT max(h.seq) FROM intake.ticket_status_history h "
    "WHERE h.ticket_id = u.id), 0) + row_number() OVER (PARTITION BY u.id ORDER BY u.ord), "
    "u.f, u.t, now(), u.reason, u.actor "
    "FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[]) "
    "WITH ORDINALITY AS u(id, f, t, reason, actor, ord)";

/* Newest first; fetches limit + 1 rows to know whether another page follows. */
static const char SQL_TICKET_LIST[] =
    "SELECT t.seq, intake.ticket_doc(t, c, p) " TICKET_FROM
    "WHERE ($1::text IS NULL OR t.status = $1::text) "
    "AND ($2::text IS NULL OR t.priority = $2::text) "
    "AND ($3::text IS NULL OR t.category = $3::text) "
    "AND ($4::uuid IS NULL OR t.customer_id = $4::uuid) "
    "AND ($5::timestamptz IS NULL OR t.created_at >= $5::timestamptz) "
    "AND ($6::timestamptz IS NULL OR t.created_at <= $6::timestamptz) "
    "AND ($7::bigint IS NULL OR t.seq < $7::bigint) "
    "ORDER BY t.seq DESC LIMIT $8::int";

static const char SQL_CUSTOMER_INSERT[] =
    "INSERT INTO intake.customers AS c (kind, name, tier, phone, email, contacts) "
    "VALUES ($1::text, $2::text, $3::text, $4::text, $5::text, $6::json) "
    "RETURNING intake.customer_doc(c)";

static const char SQL_CUSTOMER_GET[] =
    "SELECT intake.customer_doc(c) FROM intake.customers c WHERE c.id = $1::uuid";

static const char SQL_CUSTOMER_LIST[] =
    "SELECT c.seq, intake.customer_doc(c) FROM intake.customers c "
    "WHERE ($1::text IS NULL OR c.tier = $1::text) AND ($2::bigint IS NULL OR c.seq < $2::bigint) "
    "ORDER BY c.seq DESC LIMIT $3::int";

/* No error for the expected failures: a missing customer inserts nothing (first column
 * false), a duplicate serial number for the model returns a NULL document. */
static const char SQL_PRODUCT_INSERT[] =
    "WITH cust AS (SELECT id FROM intake.customers WHERE id = $1::uuid), "
    "ins AS (INSERT INTO intake.products AS p "
    "(customer_id, model, serial_number, purchase_date, install_site, region) "
    "SELECT cust.id, $2::text, $3::text, $4::date, $5::text, $6::text FROM cust "
    "ON CONFLICT (model, serial_number) DO NOTHING RETURNING intake.product_doc(p) AS doc) "
    "SELECT EXISTS (SELECT 1 FROM cust), (SELECT doc FROM ins)";

static const char SQL_PRODUCT_GET[] =
    "SELECT intake.product_doc(p) FROM intake.products p WHERE p.id = $1::uuid";

static const char SQL_PRODUCT_LIST[] = "SELECT p.seq, intake.product_doc(p) FROM intake.products p "
                                       "WHERE ($1::uuid IS NULL OR p.customer_id = $1::uuid) "
                                       "AND ($2::bigint IS NULL OR p.seq < $2::bigint) "
                                       "ORDER BY p.seq DESC LIMIT $3::int";

static const char SQL_POLICY_PUT[] =
    "INSERT INTO intake.warranty_policies AS w (model, months, description) "
    "VALUES ($1::text, $2::int, $3::text) "
    "ON CONFLICT (model) DO UPDATE SET months = EXCLUDED.months, "
    "description = EXCLUDED.description, updated_at = now() "
    "RETURNING intake.policy_doc(w)";

static const char SQL_POLICY_LIST[] =
    "SELECT coalesce(json_agg(intake.policy_doc(w) ORDER BY w.model), '[]') "
    "FROM intake.warranty_policies w";

static const char SQL_FOLLOW_ENQUEUE[] =
    "SELECT intake.follow_enqueue($1::uuid, $2::text, $3::text, $4::uuid, $5::text, $6::text, "
    "$7::text[], $8::text, $9::text)";

static const char SQL_FOLLOW_TAKE[] = "SELECT intake.follow_take($1::int)";

static const char SQL_FOLLOW_DONE[] =
    "DELETE FROM intake.follow_inbox WHERE id = ANY ($1::bigint[])";

static const char SQL_FOLLOW_FAILED[] =
    "SELECT intake.follow_failed($1::bigint, $2::text, $3::int)";

const ac_db_stmt_t intake_stmts[INTAKE_STMT__COUNT] = {
    [INTAKE_STMT_CREATE_TICKET] = {SQL_CREATE_TICKET, INTAKE_CREATE_NARGS},
    [INTAKE_STMT_CREATE_TICKETS] = {SQL_CREATE_TICKETS, INTAKE_CREATE_NARGS},
    [INTAKE_STMT_OUTBOX_INSERT] = {SQL_OUTBOX_INSERT, 3},
    [INTAKE_STMT_OUTBOX_INSERT_MANY] = {SQL_OUTBOX_INSERT_MANY, 3},
    [INTAKE_STMT_TICKET_GET] = {SQL_TICKET_GET, 1},
    [INTAKE_STMT_TICKET_LOCK] = {SQL_TICKET_LOCK, 1},
    [INTAKE_STMT_TICKET_UPDATE] = {SQL_TICKET_UPDATE, 11},
    [INTAKE_STMT_HISTORY_INSERT] = {SQL_HISTORY_INSERT, 5},
    [INTAKE_STMT_TICKET_UPDATE_MANY] = {SQL_TICKET_UPDATE_MANY, INTAKE_UPDATE_NCOLS},
    [INTAKE_STMT_HISTORY_INSERT_MANY] = {SQL_HISTORY_INSERT_MANY, INTAKE_HISTORY_NCOLS},
    [INTAKE_STMT_TICKET_LIST] = {SQL_TICKET_LIST, 8},
    [INTAKE_STMT_CUSTOMER_INSERT] = {SQL_CUSTOMER_INSERT, 6},
    [INTAKE_STMT_CUSTOMER_GET] = {SQL_CUSTOMER_GET, 1},
    [INTAKE_STMT_CUSTOMER_LIST] = {SQL_CUSTOMER_LIST, 3},
    [INTAKE_STMT_PRODUCT_INSERT] = {SQL_PRODUCT_INSERT, 6},
    [INTAKE_STMT_PRODUCT_GET] = {SQL_PRODUCT_GET, 1},
    [INTAKE_STMT_PRODUCT_LIST] = {SQL_PRODUCT_LIST, 3},
    [INTAKE_STMT_POLICY_PUT] = {SQL_POLICY_PUT, 3},
    [INTAKE_STMT_POLICY_LIST] = {SQL_POLICY_LIST, 0},
    [INTAKE_STMT_FOLLOW_ENQUEUE] = {SQL_FOLLOW_ENQUEUE, 9},
    [INTAKE_STMT_FOLLOW_TAKE] = {SQL_FOLLOW_TAKE, 1},
    [INTAKE_STMT_FOLLOW_DONE] = {SQL_FOLLOW_DONE, 1},
    [INTAKE_STMT_FOLLOW_FAILED] = {SQL_FOLLOW_FAILED, 3},
};

/* --- helpers ----------------------------------------------------------------------- */

static void copy_cell(const PGresult *res, int row, int col, char *out, size_t len)
{
    snprintf(out, len, "%s", PQgetisnull(res, row, col) ? "" : PQgetvalue(res, row, col));
}

static char *dup_or_null(const char *s, int *is_oom)
{
    char *d;
    if (!s)
        return NULL;
    d = strdup(s);
    if (!d)
        *is_oom = 1;
    return d;
}

static char *dump_or_null(const json_t *v, int *is_oom)
{
    char *d;
    if (!v)
        return NULL;
    d = json_dumps(v, JSON_COMPACT);
    if (!d)
        *is_oom = 1;
    return d;
}

static const char *doc_str(const json_t *doc, const char *key)
{
    return json_string_value(json_object_get(doc, key)); /* NULL for JSON null */
}

/* --- ticket creation --------------------------------------------------------------- */

int intake_store_create_args(const intake_ticket_in_t *in, const char *idem_key,
                             const char *request_hash, const char *actor, intake_create_args_t *out)
{
    char occurred[AC_TIME_STRLEN];
    int is_oom = 0;
    int urgency = in->urgency, category = in->category;
    char **v = out->v;

    memset(out, 0, sizeof *out);
    v[0] = dup_or_null(idem_key, &is_oom);
    v[1] = dup_or_null(idem_key ? request_hash : NULL, &is_oom);
    v[2] = dup_or_null(in->customer_id, &is_oom);
    v[3] = dup_or_null(in->product_id, &is_oom);
    v[4] = dup_or_null(INTAKE_ENUM_NAME(intake_channel_names, in->channel), &is_oom);
    v[5] = dup_or_null(INTAKE_ENUM_NAME(intake_category_names, category), &is_oom);
    v[6] = dup_or_null(in->description, &is_oom);
    v[7] = dup_or_null(in->has_occurred_at ? ac_time_format_us(in->occurred_at_us, occurred) : NULL,
                       &is_oom);
    v[8] = dup_or_null(INTAKE_ENUM_NAME(intake_urgency_names, urgency), &is_oom);
    v[9] = dup_or_null(in->is_expedite ? "true" : "false", &is_oom);
    v[10] = dup_or_null(INTAKE_ENUM_NAME(intake_priority_names,
                                         intake_priority(urgency, category, 0, in->is_expedite)),
                        &is_oom);
    v[11] = dup_or_null(INTAKE_ENUM_NAME(intake_priority_names,
                                         intake_priority(urgency, category, 1, in->is_expedite)),
                        &is_oom);
    v[12] = dump_or_null(in->contact, &is_oom);
    v[13] = dump_or_null(in->attachments, &is_oom);
    v[14] = dup_or_null(actor, &is_oom);
    if (is_oom) {
        intake_store_create_args_clear(out);
        return AC_ERR_NOMEM;
    }
    return 0;
}

void intake_store_create_args_clear(intake_create_args_t *a)
{
    for (size_t i = 0; i < INTAKE_CREATE_NARGS; i++) {
        free(a->v[i]);
        a->v[i] = NULL;
    }
}

int intake_store_add_create_ticket(ac_db_txn_t *t, const intake_create_args_t *a)
{
    const char *values[INTAKE_CREATE_NARGS];
    for (size_t i = 0; i < INTAKE_CREATE_NARGS; i++)
        values[i] = a->v[i];
    return ac_db_txn_add(t, INTAKE_STMT_CREATE_TICKET, values, NULL, NULL);
}

int intake_store_add_create_tickets(ac_db_txn_t *t, intake_create_args_t *const *args, size_t n)
{
    const char **cells = malloc((n ? n : 1) * INTAKE_CREATE_NARGS * sizeof *cells);
    if (!cells)
        return AC_ERR_NOMEM;
    for (size_t i = 0; i < n; i++)
        memcpy(&cells[i * INTAKE_CREATE_NARGS], args[i]->v, sizeof args[i]->v);
    int rc = ac_db_txn_add_columns(t, INTAKE_STMT_CREATE_TICKETS, cells, n, INTAKE_CREATE_NARGS);
    free(cells);
    return rc;
}

/* Reads row `row` of result `i` (columns: [idx,] r_status, r_field, r_message, r_doc). */
static int create_result_row(const PGresult *res, int row, int col0, intake_create_result_t *out)
{
    char status[32];

    memset(out, 0, sizeof *out);
    copy_cell(res, row, col0, status, sizeof status);
    copy_cell(res, row, col0 + 1, out->field, sizeof out->field);
    copy_cell(res, row, col0 + 2, out->message, sizeof out->message);
    if (strcmp(status, "created") == 0 || strcmp(status, "replayed") == 0) {
        out->outcome = status[0] == 'c' ? INTAKE_CREATE_CREATED : INTAKE_CREATE_REPLAYED;
        out->doc = ac_db_json_cell(res, row, col0 + 3);
        if (!json_is_object(out->doc)) {
            ac_error("store: ticket creation returned %s without a ticket", status);
            json_decref(out->doc);
            out->doc = NULL;
            return AC_ERR_PROTO;
        }
        return 0;
    }
    out->outcome = INTAKE_CREATE_REJECTED;
    snprintf(out->code, sizeof out->code, "%s", status);
    return 0;
}

int intake_store_create_ticket_result(const ac_db_txn_t *t, int i, intake_create_result_t *out)
{
    const PGresult *res = ac_db_txn_rows(t, i);
    if (!res || PQntuples(res) != 1 || PQnfields(res) != 4) {
        memset(out, 0, sizeof *out);
        ac_error("store: intake.create_ticket() returned no row");
        return AC_ERR_PROTO;
    }
    return create_result_row(res, 0, 0, out);
}

int intake_store_create_tickets_result(const ac_db_txn_t *t, size_t n, size_t i,
                                       intake_create_result_t *out)
{
    const PGresult *res = ac_db_txn_rows(t, 0);
    if (!res || (size_t)PQntuples(res) != n || PQnfields(res) != 5 ||
        strtoul(PQgetvalue(res, (int)i, 0), NULL, 10) != i + 1) {
        memset(out, 0, sizeof *out);
        ac_error("store: intake.create_tickets() did not return request %zu of %zu", i + 1, n);
        return AC_ERR_PROTO;
    }
    return create_result_row(res, (int)i, 1, out);
}

int intake_store_add_outbox(ac_db_txn_t *t, const char *event_id, const char *topic,
                            const uint8_t *envelope, size_t len)
{
    const char *values[3] = {event_id, topic, (const char *)envelope};
    int lengths[3] = {0, 0, (int)len};
    int formats[3] = {0, 0, 1};
    return ac_db_txn_add(t, INTAKE_STMT_OUTBOX_INSERT, values, lengths, formats);
}

/* --- tickets ----------------------------------------------------------------------- */

int intake_store_add_ticket_get(ac_db_txn_t *t, const char *number)
{
    const char *values[1] = {number};
    return ac_db_txn_add(t, INTAKE_STMT_TICKET_GET, values, NULL, NULL);
}

int intake_store_ticket_get_result(const ac_db_txn_t *t, int i, json_t **doc_out)
{
    const PGresult *res = ac_db_txn_rows(t, i);
    json_t *doc, *history;

    *doc_out = NULL;
    if (!res)
        return AC_ERR_PROTO;
    if (PQntuples(res) == 0)
        return AC_ERR_NOTFOUND;
    doc = ac_db_json_cell(res, 0, 0);
    history = ac_db_json_cell(res, 0, 1);
    if (!json_is_object(doc) || !json_is_array(history) ||
        json_object_set_new(doc, "history", history) < 0) {
        json_decref(doc);
        return AC_ERR_PROTO;
    }
    *doc_out = doc;
    return 0;
}

int intake_store_add_ticket_lock(ac_db_txn_t *t, const char *number)
{
    const char *values[1] = {number};
    return ac_db_txn_add(t, INTAKE_STMT_TICKET_LOCK, values, NULL, NULL);
}

int intake_store_ticket_lock_result(const ac_db_txn_t *t, int i, json_t **doc_out, char now_out[32])
{
    const PGresult *res = ac_db_txn_rows(t, i);
    *doc_out = NULL;
    if (!res)
        return AC_ERR_PROTO;
    if (PQntuples(res) == 0)
        return AC_ERR_NOTFOUND;
    *doc_out = ac_db_json_cell(res, 0, 0);
    if (!json_is_object(*doc_out)) {
        json_decref(*doc_out);
        *doc_out = NULL;
        return AC_ERR_PROTO;
    }
    copy_cell(res, 0, 1, now_out, 32);
    return 0;
}

/* The values of SQL_TICKET_UPDATE (the first 11) and the version before (12th), owned. */
int intake_store_ticket_update_cells(const json_t *doc, int64_t old_version,
                                     char *cells[INTAKE_UPDATE_NCOLS])
{
    char version[24], old[24];
    int is_oom = 0;

    snprintf(version, sizeof version, "%" JSON_INTEGER_FORMAT,
             json_integer_value(json_object_get(doc, "version")));
    snprintf(old, sizeof old, "%" PRId64, old_version);
    cells[0] = dup_or_null(doc_str(doc, "id"), &is_oom);
    cells[1] = dup_or_null(doc_str(doc, "description"), &is_oom);
    cells[2] = dup_or_null(doc_str(doc, "category"), &is_oom);
    cells[3] = dup_or_null(doc_str(doc, "urgency"), &is_oom);
    cells[4] =
        dup_or_null(json_is_true(json_object_get(doc, "expedite")) ? "true" : "false", &is_oom);
    cells[5] = dup_or_null(doc_str(doc, "priority"), &is_oom);
    cells[6] = dump_or_null(json_object_get(doc, "contact"), &is_oom);
    cells[7] = dup_or_null(doc_str(doc, "status"), &is_oom);
    cells[8] = dup_or_null(version, &is_oom);
    cells[9] = dup_or_null(doc_str(doc, "resolved_at"), &is_oom);
    cells[10] = dup_or_null(doc_str(doc, "closed_at"), &is_oom);
    cells[11] = dup_or_null(old, &is_oom);
    if (is_oom) {
        for (size_t j = 0; j < INTAKE_UPDATE_NCOLS; j++) {
            free(cells[j]);
            cells[j] = NULL;
        }
        return AC_ERR_NOMEM;
    }
    return 0;
}

int intake_store_add_ticket_update(ac_db_txn_t *t, const json_t *doc)
{
    char *cells[INTAKE_UPDATE_NCOLS];
    int64_t version = (int64_t)json_integer_value(json_object_get(doc, "version"));
    int rc = intake_store_ticket_update_cells(doc, version - 1, cells);
    if (rc < 0)
        return rc;
    rc = ac_db_txn_add(t, INTAKE_STMT_TICKET_UPDATE, (const char *const *)cells, NULL, NULL);
    for (size_t j = 0; j < INTAKE_UPDATE_NCOLS; j++)
        free(cells[j]);
    return rc;
}

int intake_store_add_ticket_updates(ac_db_txn_t *t, const char *const *cells, size_t n)
{
    return ac_db_txn_add_columns(t, INTAKE_STMT_TICKET_UPDATE_MANY, cells, n, INTAKE_UPDATE_NCOLS);
}

int intake_store_add_histories(ac_db_txn_t *t, const char *const *cells, size_t n)
{
    return ac_db_txn_add_columns(t, INTAKE_STMT_HISTORY_INSERT_MANY, cells, n,
                                 INTAKE_HISTORY_NCOLS);
}

int intake_store_add_history(ac_db_txn_t *t, const char *ticket_id, const char *from_status,
                             const char *to_status, const char *reason, const char *actor)
{
    const char *values[5] = {ticket_id, from_status, to_status, reason, actor};
    return ac_db_txn_add(t, INTAKE_STMT_HISTORY_INSERT, values, NULL, NULL);
}

static void page_params(const intake_page_in_t *page, char cursor[24], char limit[24],
                        const char **cursor_out)
{
    snprintf(cursor, 24, "%" PRId64, page->cursor);
    snprintf(limit, 24, "%ld", page->limit + 1);
    *cursor_out = page->cursor > 0 ? cursor : NULL;
}

int intake_store_add_ticket_list(ac_db_txn_t *t, const intake_ticket_filter_t *f)
{
    char cursor[24], limit[24];
    const char *cursor_v;
    page_params(&f->page, cursor, limit, &cursor_v);
    const char *values[8] = {
        f->status,
        f->priority,
        f->category,
        f->customer_id,
        f->created_from[0] ? f->created_from : NULL,
        f->created_to[0] ? f->created_to : NULL,
        cursor_v,
        limit,
    };
    return ac_db_txn_add(t, INTAKE_STMT_TICKET_LIST, values, NULL, NULL);
}

/* --- customers, products, warranty policies ----------------------------------------- */

int intake_store_add_customer_insert(ac_db_txn_t *t, const intake_customer_in_t *in)
{
    int is_oom = 0, rc;
    char *contacts = dump_or_null(in->contacts, &is_oom);
    if (is_oom)
        return AC_ERR_NOMEM;
    const char *values[6] = {in->kind,  in->name,  in->tier,
                             in->phone, in->email, contacts ? contacts : "[]"};
    rc = ac_db_txn_add(t, INTAKE_STMT_CUSTOMER_INSERT, values, NULL, NULL);
    free(contacts);
    return rc;
}

int intake_store_add_customer_get(ac_db_txn_t *t, const char *id)
{
    const char *values[1] = {id};
    return ac_db_txn_add(t, INTAKE_STMT_CUSTOMER_GET, values, NULL, NULL);
}

int intake_store_add_customer_list(ac_db_txn_t *t, const intake_list_filter_t *f)
{
    char cursor[24], limit[24];
    const char *cursor_v;
    page_params(&f->page, cursor, limit, &cursor_v);
    const char *values[3] = {f->tier, cursor_v, limit};
    return ac_db_txn_add(t, INTAKE_STMT_CUSTOMER_LIST, values, NULL, NULL);
}

int intake_store_add_product_insert(ac_db_txn_t *t, const intake_product_in_t *in)
{
    const char *values[6] = {in->customer_id,   in->model,        in->serial_number,
                             in->purchase_date, in->install_site, in->region};
    return ac_db_txn_add(t, INTAKE_STMT_PRODUCT_INSERT, values, NULL, NULL);
}

int intake_store_product_insert_result(const ac_db_txn_t *t, int i, int *is_customer_found,
                                       json_t **doc_out)
{
    const PGresult *res = ac_db_txn_rows(t, i);
    *doc_out = NULL;
    *is_customer_found = 0;
    if (!res || PQntuples(res) != 1)
        return AC_ERR_PROTO;
    *is_customer_found = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    *doc_out = ac_db_json_cell(res, 0, 1);
    return 0;
}

int intake_store_add_product_get(ac_db_txn_t *t, const char *id)
{
    const char *values[1] = {id};
    return ac_db_txn_add(t, INTAKE_STMT_PRODUCT_GET, values, NULL, NULL);
}

int intake_store_add_product_list(ac_db_txn_t *t, const intake_list_filter_t *f)
{
    char cursor[24], limit[24];
    const char *cursor_v;
    page_params(&f->page, cursor, limit, &cursor_v);
    const char *values[3] = {f->customer_id, cursor_v, limit};
    return ac_db_txn_add(t, INTAKE_STMT_PRODUCT_LIST, values, NULL, NULL);
}

int intake_store_add_policy_put(ac_db_txn_t *t, const intake_policy_in_t *in)
{
    char months[24];
    snprintf(months, sizeof months, "%ld", in->months);
    const char *values[3] = {in->model, months, in->description};
    return ac_db_txn_add(t, INTAKE_STMT_POLICY_PUT, values, NULL, NULL);
}

int intake_store_add_policy_list(ac_db_txn_t *t)
{
    return ac_db_txn_add(t, INTAKE_STMT_POLICY_LIST, NULL, NULL, NULL);
}

/* --- many outbox rows ------------------------------------------------------------------ */

int intake_store_add_outbox_rows(ac_db_txn_t *t, ac_outbox_rows_t *r)
{
    return ac_outbox_rows_add(t, INTAKE_STMT_OUTBOX_INSERT_MANY, r);
}

/* --- following dispatch ---------------------------------------------------------------- */

int intake_store_add_follow_enqueue(ac_db_txn_t *t, const char *event_id, const char *source,
                                    const char *topic, const char *ticket_id,
                                    const char *ticket_number, const char *to_status,
                                    const char *only_from, const char *reason,
                                    const char *correlation_id)
{
    const char *values[9] = {event_id,  source,    topic,  ticket_id,     ticket_number,
                             to_status, only_from, reason, correlation_id};
    return ac_db_txn_add(t, INTAKE_STMT_FOLLOW_ENQUEUE, values, NULL, NULL);
}

/* The applier's transaction commits without waiting for its WAL to reach the disk: a
 * PostgreSQL crash within the WAL writer's delay loses the change together with the
 * deletion of its inbox row, so it is applied again; its ticket.* event is published only
 * after the relay's synchronous numbering commit, which flushes the WAL past this one. (A
 * synchronous commit here held PostgreSQL's NOTIFY lock — the outbox trigger notifies —
 * through a disk flush, and every other notifying commit queued behind it.) */
int intake_store_add_follow_take(ac_db_txn_t *t, int limit)
{
    char limit_s[16];
    snprintf(limit_s, sizeof limit_s, "%d", limit);
    const char *values[1] = {limit_s};
    int rc = ac_db_txn_add(t, INTAKE_STMT_FOLLOW_TAKE, values, NULL, NULL);
    /* (second: the take's answer stays the transaction's first result; the commit setting
     * is read at COMMIT. The statements that follow write the batch's tickets, history and
     * inbox rows by key: index probes at every table size, as in follow_take itself —
     * intake migration 007) */
    return rc < 0 ? rc
                  : ac_db_txn_add_sql(t,
                                      "SELECT set_config('synchronous_commit', 'off', true),"
                                      " set_config('enable_seqscan', 'off', true),"
                                      " set_config('enable_hashjoin', 'off', true),"
                                      " set_config('enable_mergejoin', 'off', true)",
                                      0, NULL, NULL, NULL);
}

int intake_store_add_follow_done(ac_db_txn_t *t, const int64_t *ids, size_t n)
{
    size_t cap = 3 + n * 21; /* braces, NUL; per id: up to 20 characters and a comma */
    char *list = malloc(cap), *w = list;
    int rc;
    if (!list)
        return AC_ERR_NOMEM;
    *w++ = '{';
    for (size_t i = 0; i < n; i++)
        w += snprintf(w, cap - (size_t)(w - list), "%s%" PRId64, i ? "," : "", ids[i]);
    snprintf(w, cap - (size_t)(w - list), "}");
    const char *values[1] = {list};
    rc = ac_db_txn_add(t, INTAKE_STMT_FOLLOW_DONE, values, NULL, NULL);
    free(list);
    return rc;
}

int intake_store_add_follow_failed(ac_db_txn_t *t, int64_t id, const char *error, int max_attempts)
{
    char id_s[24], max_s[16];
    snprintf(id_s, sizeof id_s, "%" PRId64, id);
    snprintf(max_s, sizeof max_s, "%d", max_attempts);
    const char *values[3] = {id_s, error, max_s};
    return ac_db_txn_add(t, INTAKE_STMT_FOLLOW_FAILED, values, NULL, NULL);
}
