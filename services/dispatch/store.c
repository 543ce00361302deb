/* store.c — see store.h. The engineer document the API returns is built by
 * dispatch.engineer_doc() (migrations/001_engineers.sql), so a row crosses the wire once,
 * already in its final shape. */
#include "store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include <libpq-fe.h>

#include "ac_log.h"
#include "deadlines.h" /* sla.c's rows */

static const char SQL_OUTBOX_INSERT[] = "INSERT INTO dispatch.outbox (event_id, topic, envelope) "
                                        "VALUES ($1::uuid, $2::text, $3::bytea)";
static const char SQL_OUTBOX_INSERT_MANY[] =
    "INSERT INTO dispatch.outbox (event_id, topic, envelope) "
    "SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[])";

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

/* The consumer's batch of ticket events (migrations/012_tickets_apply.sql): parameter n is
 * the array of dispatch.ticket_apply()'s parameter n over the events. */
static const char SQL_TICKETS_APPLY[] =
    "SELECT dispatch.tickets_apply($1::uuid[], $2::text[], $3::bigint[], $4::text[], "
    "$5::text[], $6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[], $11::boolean[], "
    "$12::timestamptz[], $13::timestamptz[], $14::jsonb[])";

static const char SQL_TICKET_GET[] = "SELECT dispatch.ticket_get($1::text)";

static const char SQL_EMIT_TAKE[] = "SELECT dispatch.emit_take($1::int)";

/* -- assignment.c -- */

static const char SQL_ASSIGN_ENGINEERS[] = "SELECT dispatch.assign_engineers($1::uuid[])";
static const char SQL_ASSIGN_TAKE[] =
    "SELECT dispatch.assign_take($1::int, $2::text[], $3::timestamptz)";
static const char SQL_ASSIGN_APPLY[] = "SELECT dispatch.assign_apply($1::jsonb)";
/* -- offers.c -- */
static const char SQL_ASSIGN_EXPIRE[] = "SELECT dispatch.assign_expire($1::int, $2::int)";
/* also: no 'load' notices from the batch (migration 017) */
static const char SQL_ASSIGN_ASYNC_COMMIT[] =
    "SELECT set_config('synchronous_commit', 'off', true),"
    " set_config('dispatch.assign_quiet', 'on', true)";
/* COALESCE evaluates the operation only when the caller may answer (migration 013) */
static const char SQL_ASSIGNMENT_ACCEPT[] =
    "SELECT coalesce(dispatch.assignment_answer_refusal($1::uuid, $3::text),"
    " dispatch.assignment_accept($1::uuid, $2::text))";
static const char SQL_ASSIGNMENT_DECLINE[] =
    "SELECT coalesce(dispatch.assignment_answer_refusal($1::uuid, $5::text),"
    " dispatch.assignment_decline($1::uuid, $2::text, $3::text, $4::text))";
static const char SQL_TICKET_ASSIGN[] = "SELECT dispatch.ticket_assign($1::text, $2::uuid, "
                                        "$3::text, $4::text, $5::boolean, $6::text, $7::text)";
static const char SQL_ASSIGNMENT_GET[] = "SELECT dispatch.assignment_get($1::uuid)";
static const char SQL_TICKET_ASSIGNMENTS[] = "SELECT dispatch.ticket_assignments($1::text)";
static const char SQL_ASSIGN_QUEUE_LIST[] =
    "SELECT dispatch.assign_queue_list($1::text, $2::boolean, $3::int)";

/* -- sla.c -- */

static const char SQL_SLA_START[] = "SELECT dispatch.sla_start()";

/* Keyset over the partial indexes sla_clocks_armed and sla_deadlines_armed (what the view
 * dispatch.sla_armed shows), each read in order up to the page size and the two merged;
 * the first page passes NULL. */
#define SLA_AFTER                                                                                  \
    "(CASE WHEN $1::bigint IS NULL THEN '-infinity'::timestamptz "                                 \
    "ELSE 'epoch'::timestamptz + $1::bigint * interval '1 microsecond' END, $2::bigint)"
static const char SQL_SLA_ARMED[] =
    "SELECT d.id, d.due_at, d.version FROM ("
    " (SELECT c.id, c.next_due_at AS due_at, c.version FROM dispatch.sla_clocks c"
    "   WHERE c.next_due_at IS NOT NULL AND (c.next_due_at, c.id) > " SLA_AFTER
    "   ORDER BY c.next_due_at, c.id LIMIT $3::int)"
    " UNION ALL"
    " (SELECT v.id, v.due_at, v.version FROM dispatch.sla_vendor_deadlines v"
    "   WHERE v.state = 'pending' AND v.due_at IS NOT NULL AND (v.due_at, v.id) > " SLA_AFTER
    "   ORDER BY v.due_at, v.id LIMIT $3::int)) d "
    "ORDER BY d.due_at, d.id LIMIT $3::int";

static const char SQL_SLA_ARMED_COUNT[] = "SELECT to_json(count(*)) FROM dispatch.sla_armed";

static const char SQL_SLA_CHANGES[] = "SELECT dispatch.sla_changes_take($1::int)";
static const char SQL_SLA_DIRTY[] = "SELECT dispatch.sla_dirty($1::int)";
static const char SQL_SLA_SAVE[] = "SELECT dispatch.sla_save($1::jsonb)";
static const char SQL_SLA_FIRE[] = "SELECT dispatch.sla_fire($1::bigint[], $2::int[])";
static const char SQL_SLA_POLICY_CACHE[] = "SELECT dispatch.sla_policy_cache()";
static const char SQL_SLA_RESERVE_IDS[] = "SELECT dispatch.sla_reserve_ids($1::int)";
static const char SQL_SLA_VIEW[] = "SELECT dispatch.sla_view($1::text)";
static const char SQL_SLA_CALENDAR_CREATE[] =
    "SELECT dispatch.sla_calendar_create($1::text, $2::jsonb)";
static const char SQL_SLA_CALENDAR_PATCH[] =
    "SELECT dispatch.sla_calendar_patch($1::text, $2::jsonb, $3::bigint)";
static const char SQL_SLA_CALENDAR_GET[] = "SELECT dispatch.sla_calendar_get($1::text)";
static const char SQL_SLA_CALENDAR_LIST[] = "SELECT dispatch.sla_calendar_list()";
static const char SQL_SLA_POLICY_CREATE[] = "SELECT dispatch.sla_policy_create($1::jsonb)";
static const char SQL_SLA_POLICY_PATCH[] =
    "SELECT dispatch.sla_policy_patch($1::uuid, $2::jsonb, $3::bigint)";
static const char SQL_SLA_POLICY_GET[] = "SELECT dispatch.sla_policy_get($1::uuid)";
static const char SQL_SLA_POLICY_LIST[] = "SELECT dispatch.sla_policy_list()";

/* -- plans.c -- */

/* the last parameter of a write: whose tickets the caller may act on (migration 018) */
static const char SQL_PLAN_PROPOSE[] =
    "SELECT coalesce(dispatch.engineer_refusal('ticket', $1::text, $4::text),"
    " dispatch.plan_propose($1::text, $2::text, $3::jsonb))";
static const char SQL_PLAN_LIST[] = "SELECT dispatch.plan_list($1::text)";
static const char SQL_PLAN_GET[] = "SELECT dispatch.plan_get($1::uuid)";
static const char SQL_PLAN_DECIDE[] =
    "SELECT dispatch.plan_decide($1::uuid, $2::text, $3::text, $4::text, $5::text, $6::text, "
    "$7::int)";
static const char SQL_PLAN_CANCEL[] =
    "SELECT coalesce(dispatch.engineer_refusal('plan', $1::uuid::text, $4::text),"
    " dispatch.plan_cancel($1::uuid, $2::text, $3::text))";
static const char SQL_PLAN_LINK[] = "SELECT dispatch.plan_link($1::uuid, $2::text, $3::bigint)";
static const char SQL_PLAN_CUSTOMER_GET[] = "SELECT dispatch.plan_customer_get($1::uuid, $2::int)";

/* -- work.c -- */
/* $6 / $10: whose work the caller may record (migration 014); an engineer's own record
 * when engineer_id is left out, on a ticket the engineer holds (018) */
static const char SQL_WORK_CREATE[] =
    "SELECT coalesce(dispatch.work_refusal(NULL, $3::uuid, $6::text),"
    " dispatch.engineer_refusal('ticket', $1::text, $6::text),"
    " dispatch.work_create($1::text, $2::text, coalesce($3::uuid, nullif($6::text, '')::uuid),"
    " $4::text, $5::text))";
static const char SQL_WORK_STEP[] =
    "SELECT coalesce(dispatch.work_refusal($1::uuid, NULL, $10::text),"
    " dispatch.work_step($1::uuid, $2::text, $3::timestamptz, $4::text, $5::text,"
    " $6::jsonb, $7::jsonb, $8::bigint, $9::text))";
static const char SQL_WORK_GET[] = "SELECT dispatch.work_get($1::uuid)";
static const char SQL_WORK_LIST[] = "SELECT dispatch.work_list($1::text)";

/* -- repairs.c -- (writes: the last parameter as for plans) */
static const char SQL_VENDOR_CREATE[] = "SELECT dispatch.vendor_create($1::jsonb)";
static const char SQL_VENDOR_PATCH[] = "SELECT dispatch.vendor_patch($1::uuid, $2::jsonb)";
static const char SQL_VENDOR_GET[] = "SELECT dispatch.vendor_get($1::uuid)";
static const char SQL_VENDOR_LIST[] =
    "SELECT dispatch.vendor_list($1::boolean, $2::bigint, $3::int)";
#define REPAIR_REFUSAL(n)                                                                          \
    "SELECT coalesce(dispatch.engineer_refusal('repair', $1::uuid::text, $" n "::text), "
static const char SQL_REPAIR_CREATE[] =
    "SELECT coalesce(dispatch.engineer_refusal('ticket', $1::text, $6::text),"
    " dispatch.repair_create($1::text, $2::text, $3::uuid, $4::text, $5::timestamptz))";
static const char SQL_REPAIR_SHIP[] =
    REPAIR_REFUSAL("7") "dispatch.repair_ship($1::uuid, $2::text, $3::text, $4::text,"
                        " $5::timestamptz, $6::timestamptz))";
static const char SQL_REPAIR_FOLLOWUP[] =
    REPAIR_REFUSAL("5") "dispatch.repair_followup($1::uuid, $2::text, $3::text, $4::timestamptz))";
static const char SQL_REPAIR_RETURN[] =
    REPAIR_REFUSAL("5") "dispatch.repair_return($1::uuid, $2::text, $3::timestamptz, $4::text))";
static const char SQL_REPAIR_INSPECT[] =
    REPAIR_REFUSAL("5") "dispatch.repair_inspect($1::uuid, $2::text, $3::text, $4::text))";
static const char SQL_REPAIR_REROUTE[] =
    REPAIR_REFUSAL("7") "dispatch.repair_reroute($1::uuid, $2::text, $3::uuid, $4::text, $5::text,"
                        " $6::timestamptz))";
static const char SQL_REPAIR_GET[] = "SELECT dispatch.repair_get($1::uuid)";
static const char SQL_REPAIR_LIST[] = "SELECT dispatch.repair_list($1::text)";

/* -- cases.c -- */
#define CASE_REFUSAL(n)                                                                            \
    "SELECT coalesce(dispatch.engineer_refusal('case', $1::uuid::text, $" n "::text), "
static const char SQL_CASE_FLAG[] =
    "SELECT coalesce(dispatch.engineer_refusal('ticket', $1::text, $5::text),"
    " dispatch.case_flag($1::text, $2::text, $3::text, $4::uuid))";
static const char SQL_CASE_NOTE[] =
    CASE_REFUSAL("4") "dispatch.case_note($1::uuid, $2::text, $3::text))";
static const char SQL_CASE_ESCALATE[] =
    CASE_REFUSAL("5") "dispatch.case_escalate($1::uuid, $2::text, $3::text, $4::uuid))";
static const char SQL_CASE_OWNER[] =
    CASE_REFUSAL("5") "dispatch.case_set_owner($1::uuid, $2::text, $3::uuid, $4::text))";
static const char SQL_CASE_CLOSE[] =
    CASE_REFUSAL("4") "dispatch.case_close($1::uuid, $2::text, $3::text))";
static const char SQL_CASE_GET[] = "SELECT dispatch.case_get($1::uuid)";
static const char SQL_CASE_OF_TICKET[] = "SELECT dispatch.case_of_ticket($1::text)";
static const char SQL_CASE_LIST[] =
    "SELECT dispatch.case_list($1::text, $2::text, $3::uuid, $4::bigint, $5::int)";

const ac_db_stmt_t dispatch_stmts[DISPATCH_STMT__COUNT] = {
    [DISPATCH_STMT_OUTBOX_INSERT] = {SQL_OUTBOX_INSERT, 3},
    [DISPATCH_STMT_OUTBOX_INSERT_MANY] = {SQL_OUTBOX_INSERT_MANY, 3},
    [DISPATCH_STMT_ENGINEER_SAVE] = {SQL_ENGINEER_SAVE, 3},
    [DISPATCH_STMT_ENGINEER_GET] = {SQL_ENGINEER_GET, 1},
    [DISPATCH_STMT_ENGINEER_LOCK] = {SQL_ENGINEER_LOCK, 1},
    [DISPATCH_STMT_ENGINEER_LIST] = {SQL_ENGINEER_LIST, 6},
    [DISPATCH_STMT_TICKETS_APPLY] = {SQL_TICKETS_APPLY, DISPATCH_TICKET_NARGS},
    [DISPATCH_STMT_TICKET_GET] = {SQL_TICKET_GET, 1},
    [DISPATCH_STMT_EMIT_TAKE] = {SQL_EMIT_TAKE, 1},
    /* -- assignment.c -- */
    [DISPATCH_STMT_ASSIGN_ENGINEERS] = {SQL_ASSIGN_ENGINEERS, 1},
    [DISPATCH_STMT_ASSIGN_TAKE] = {SQL_ASSIGN_TAKE, 3},
    [DISPATCH_STMT_ASSIGN_APPLY] = {SQL_ASSIGN_APPLY, 1},
    [DISPATCH_STMT_ASSIGN_ASYNC_COMMIT] = {SQL_ASSIGN_ASYNC_COMMIT, 0},
    [DISPATCH_STMT_ASSIGNMENT_ACCEPT] = {SQL_ASSIGNMENT_ACCEPT, 3},
    [DISPATCH_STMT_ASSIGNMENT_DECLINE] = {SQL_ASSIGNMENT_DECLINE, 5},
    [DISPATCH_STMT_TICKET_ASSIGN] = {SQL_TICKET_ASSIGN, 7},
    [DISPATCH_STMT_ASSIGNMENT_GET] = {SQL_ASSIGNMENT_GET, 1},
    [DISPATCH_STMT_TICKET_ASSIGNMENTS] = {SQL_TICKET_ASSIGNMENTS, 1},
    [DISPATCH_STMT_ASSIGN_EXPIRE] = {SQL_ASSIGN_EXPIRE, 2},
    [DISPATCH_STMT_ASSIGN_QUEUE_LIST] = {SQL_ASSIGN_QUEUE_LIST, 3},
    /* -- sla.c -- */
    [DISPATCH_STMT_SLA_START] = {SQL_SLA_START, 0},
    [DISPATCH_STMT_SLA_ARMED] = {SQL_SLA_ARMED, 3},
    [DISPATCH_STMT_SLA_ARMED_COUNT] = {SQL_SLA_ARMED_COUNT, 0},
    [DISPATCH_STMT_SLA_CHANGES] = {SQL_SLA_CHANGES, 1},
    [DISPATCH_STMT_SLA_DIRTY] = {SQL_SLA_DIRTY, 1},
    [DISPATCH_STMT_SLA_SAVE] = {SQL_SLA_SAVE, 1},
    [DISPATCH_STMT_SLA_FIRE] = {SQL_SLA_FIRE, 2},
    [DISPATCH_STMT_SLA_VIEW] = {SQL_SLA_VIEW, 1},
    [DISPATCH_STMT_SLA_POLICY_CACHE] = {SQL_SLA_POLICY_CACHE, 0},
    [DISPATCH_STMT_SLA_RESERVE_IDS] = {SQL_SLA_RESERVE_IDS, 1},
    [DISPATCH_STMT_SLA_CALENDAR_CREATE] = {SQL_SLA_CALENDAR_CREATE, 2},
    [DISPATCH_STMT_SLA_CALENDAR_PATCH] = {SQL_SLA_CALENDAR_PATCH, 3},
    [DISPATCH_STMT_SLA_CALENDAR_GET] = {SQL_SLA_CALENDAR_GET, 1},
    [DISPATCH_STMT_SLA_CALENDAR_LIST] = {SQL_SLA_CALENDAR_LIST, 0},
    [DISPATCH_STMT_SLA_POLICY_CREATE] = {SQL_SLA_POLICY_CREATE, 1},
    [DISPATCH_STMT_SLA_POLICY_PATCH] = {SQL_SLA_POLICY_PATCH, 3},
    [DISPATCH_STMT_SLA_POLICY_GET] = {SQL_SLA_POLICY_GET, 1},
    [DISPATCH_STMT_SLA_POLICY_LIST] = {SQL_SLA_POLICY_LIST, 0},
    /* -- plans.c -- */
    [DISPATCH_STMT_PLAN_PROPOSE] = {SQL_PLAN_PROPOSE, 4},
    [DISPATCH_STMT_PLAN_LIST] = {SQL_PLAN_LIST, 1},
    [DISPATCH_STMT_PLAN_GET] = {SQL_PLAN_GET, 1},
    [DISPATCH_STMT_PLAN_DECIDE] = {SQL_PLAN_DECIDE, 7},
    [DISPATCH_STMT_PLAN_CANCEL] = {SQL_PLAN_CANCEL, 4},
    [DISPATCH_STMT_PLAN_LINK] = {SQL_PLAN_LINK, 3},
    [DISPATCH_STMT_PLAN_CUSTOMER_GET] = {SQL_PLAN_CUSTOMER_GET, 2},
    /* -- work.c -- */
    [DISPATCH_STMT_WORK_CREATE] = {SQL_WORK_CREATE, 6},
    [DISPATCH_STMT_WORK_STEP] = {SQL_WORK_STEP, 10},
    [DISPATCH_STMT_WORK_GET] = {SQL_WORK_GET, 1},
    [DISPATCH_STMT_WORK_LIST] = {SQL_WORK_LIST, 1},
    /* -- repairs.c -- */
    [DISPATCH_STMT_VENDOR_CREATE] = {SQL_VENDOR_CREATE, 1},
    [DISPATCH_STMT_VENDOR_PATCH] = {SQL_VENDOR_PATCH, 2},
    [DISPATCH_STMT_VENDOR_GET] = {SQL_VENDOR_GET, 1},
    [DISPATCH_STMT_VENDOR_LIST] = {SQL_VENDOR_LIST, 3},
    [DISPATCH_STMT_REPAIR_CREATE] = {SQL_REPAIR_CREATE, 6},
    [DISPATCH_STMT_REPAIR_SHIP] = {SQL_REPAIR_SHIP, 7},
    [DISPATCH_STMT_REPAIR_FOLLOWUP] = {SQL_REPAIR_FOLLOWUP, 5},
    [DISPATCH_STMT_REPAIR_RETURN] = {SQL_REPAIR_RETURN, 5},
    [DISPATCH_STMT_REPAIR_INSPECT] = {SQL_REPAIR_INSPECT, 5},
    [DISPATCH_STMT_REPAIR_REROUTE] = {SQL_REPAIR_REROUTE, 7},
    [DISPATCH_STMT_REPAIR_GET] = {SQL_REPAIR_GET, 1},
    [DISPATCH_STMT_REPAIR_LIST] = {SQL_REPAIR_LIST, 1},
    /* -- cases.c -- */
    [DISPATCH_STMT_CASE_FLAG] = {SQL_CASE_FLAG, 5},
    [DISPATCH_STMT_CASE_NOTE] = {SQL_CASE_NOTE, 4},
    [DISPATCH_STMT_CASE_ESCALATE] = {SQL_CASE_ESCALATE, 5},
    [DISPATCH_STMT_CASE_OWNER] = {SQL_CASE_OWNER, 5},
    [DISPATCH_STMT_CASE_CLOSE] = {SQL_CASE_CLOSE, 4},
    [DISPATCH_STMT_CASE_GET] = {SQL_CASE_GET, 1},
    [DISPATCH_STMT_CASE_OF_TICKET] = {SQL_CASE_OF_TICKET, 1},
    [DISPATCH_STMT_CASE_LIST] = {SQL_CASE_LIST, 5},
};

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
    return ac_db_doc_result(t, i, doc_out);
}

/* -- sla.c -- */

/* PostgreSQL's binary timestamptz counts microseconds from 2000-01-01T00:00:00Z. */
#define PG_EPOCH_US INT64_C(946684800000000)

static uint64_t be_u64(const char *p)
{
    const unsigned char *b = (const unsigned char *)p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | b[i];
    return v;
}

static uint32_t be_u32(const char *p)
{
    const unsigned char *b = (const unsigned char *)p;
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

int dispatch_store_add_sla_armed(ac_db_txn_t *t, int64_t after_due_us, uint64_t after_id,
                                 long limit)
{
    char due[24], id[24], lim[24];
    int is_first = after_due_us == INT64_MIN;
    snprintf(due, sizeof due, "%" PRId64, after_due_us);
    snprintf(id, sizeof id, "%" PRIu64, after_id);
    snprintf(lim, sizeof lim, "%ld", limit);
    const char *values[3] = {is_first ? NULL : due, id, lim};
    ac_db_txn_set_binary_results(t, 1);
    return ac_db_txn_add(t, DISPATCH_STMT_SLA_ARMED, values, NULL, NULL);
}

int dispatch_store_add_sla_armed_count(ac_db_txn_t *t)
{
    return ac_db_txn_add(t, DISPATCH_STMT_SLA_ARMED_COUNT, NULL, NULL, NULL);
}

int dispatch_store_sla_armed_result(const ac_db_txn_t *t, int i, dispatch_deadline_t *out,
                                    size_t max, size_t *n_out)
{
    const PGresult *res = ac_db_txn_rows(t, i);
    *n_out = 0;
    if (!res || PQnfields(res) != 3 || PQfformat(res, 0) != 1)
        return AC_ERR_PROTO;
    int n = PQntuples(res);
    if ((size_t)n > max)
        return AC_ERR_TOOBIG;
    for (int row = 0; row < n; row++) {
        if (PQgetisnull(res, row, 0) || PQgetisnull(res, row, 1) || PQgetisnull(res, row, 2) ||
            PQgetlength(res, row, 0) != 8 || PQgetlength(res, row, 1) != 8 ||
            PQgetlength(res, row, 2) != 4)
            return AC_ERR_PROTO;
        out[row] = (dispatch_deadline_t){
            .id = be_u64(PQgetvalue(res, row, 0)),
            .due_at_us = (int64_t)be_u64(PQgetvalue(res, row, 1)) + PG_EPOCH_US,
            .version = be_u32(PQgetvalue(res, row, 2)),
        };
    }
    *n_out = (size_t)n;
    return 0;
}

int dispatch_store_add_tickets_apply(ac_db_txn_t *t, const char *const *cells, size_t n)
{
    return ac_db_txn_add_columns(t, DISPATCH_STMT_TICKETS_APPLY, cells, n, DISPATCH_TICKET_NARGS);
}

int dispatch_store_add_outbox_rows(ac_db_txn_t *t, ac_outbox_rows_t *r)
{
    return ac_outbox_rows_add(t, DISPATCH_STMT_OUTBOX_INSERT_MANY, r);
}
