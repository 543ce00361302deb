/* store.h — every SQL statement dispatch runs, one function per statement.
 *
 * The statement table (dispatch_stmts) is prepared on every pool connection. The
 * dispatch_store_add_*() functions queue a statement on a transaction (values are
 * copied); the *_result() functions read a finished round trip's results and copy them out
 * (JSON documents are rendered by SQL — see migrations/001_engineers.sql — and parsed
 * here). Only this module and common/ include <libpq-fe.h>.
 *
 * Owns: nothing between calls. */
#ifndef DISPATCH_STORE_H
#define DISPATCH_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ac_db.h"
#include "ac_outbox.h"

/* A ticket event as dispatch.tickets_apply() takes it: id, number, version, priority,
 * category, customer_id, tier, product_model, region, status, in_warranty, created_at,
 * updated_at, and the SLA clocks proposed for a new ticket (migration 019; JSON) (text;
 * NULL for SQL NULL). */
#define DISPATCH_TICKET_NARGS   14
#define DISPATCH_TICKET_ARG_SLA 13

enum dispatch_stmt {
    DISPATCH_STMT_OUTBOX_INSERT,
    DISPATCH_STMT_OUTBOX_INSERT_MANY,
    DISPATCH_STMT_ENGINEER_SAVE,
    DISPATCH_STMT_ENGINEER_GET,
    DISPATCH_STMT_ENGINEER_LOCK,
    DISPATCH_STMT_ENGINEER_LIST,
    /* tickets.c: dispatch.tickets_apply() over a batch of ticket events (see
     * dispatch_store_add_tickets_apply) */
    DISPATCH_STMT_TICKETS_APPLY,
    DISPATCH_STMT_TICKET_GET, /* dispatch.ticket_get(number) */
    DISPATCH_STMT_EMIT_TAKE,  /* dispatch.emit_take(limit): ops.c's emitter */
    /* The statements below return one json value for ops.c (dispatch_http_sql(),
     * dispatch_run_sql()); each module keeps its own block. */
    /* -- assignment.c -- */
    DISPATCH_STMT_ASSIGN_ENGINEERS,    /* dispatch.assign_engineers(ids | NULL): the roster */
    DISPATCH_STMT_ASSIGN_TAKE,         /* dispatch.assign_take(limit, retry_roles, pass_start) */
    DISPATCH_STMT_ASSIGN_ASYNC_COMMIT, /* this transaction commits without waiting for fsync
                                        * and sends no 'load' notices (migration 017) */
    DISPATCH_STMT_ASSIGN_APPLY,        /* dispatch.assign_apply(decisions) */
    DISPATCH_STMT_ASSIGNMENT_ACCEPT,   /* dispatch.assignment_accept(id, actor), as */
    DISPATCH_STMT_ASSIGNMENT_DECLINE, /* dispatch.assignment_decline(id, actor, reason, corr), as */
    DISPATCH_STMT_TICKET_ASSIGN,      /* dispatch.ticket_assign(number, engineer, kind, ...) */
    DISPATCH_STMT_ASSIGNMENT_GET,     /* dispatch.assignment_get(id) */
    DISPATCH_STMT_TICKET_ASSIGNMENTS, /* dispatch.ticket_assignments(number) */
    DISPATCH_STMT_ASSIGN_QUEUE_LIST,  /* dispatch.assign_queue_list(kind, unfilled, limit) */
    /* -- offers.c -- */
    DISPATCH_STMT_ASSIGN_EXPIRE, /* dispatch.assign_expire(timeout_s, limit) */
    /* -- sla.c -- */
    DISPATCH_STMT_SLA_START,        /* dispatch.sla_start(): clears the change queue */
    DISPATCH_STMT_SLA_ARMED,        /* armed deadlines after (due_at, id): binary rows, see below */
    DISPATCH_STMT_SLA_ARMED_COUNT,  /* how many are armed: one json number */
    DISPATCH_STMT_SLA_CHANGES,      /* dispatch.sla_changes_take(limit) */
    DISPATCH_STMT_SLA_DIRTY,        /* dispatch.sla_dirty(limit) */
    DISPATCH_STMT_SLA_SAVE,         /* dispatch.sla_save(jsonb) */
    DISPATCH_STMT_SLA_FIRE,         /* dispatch.sla_fire(ids bigint[], versions int[]) */
    DISPATCH_STMT_SLA_VIEW,         /* dispatch.sla_view(number) */
    DISPATCH_STMT_SLA_POLICY_CACHE, /* dispatch.sla_policy_cache(): the active policies */
    DISPATCH_STMT_SLA_RESERVE_IDS,  /* dispatch.sla_reserve_ids(n): clock ids for proposals */
    DISPATCH_STMT_SLA_CALENDAR_CREATE, /* dispatch.sla_calendar_create(name, jsonb) */
    DISPATCH_STMT_SLA_CALENDAR_PATCH,  /* dispatch.sla_calendar_patch(name, jsonb, version) */
    DISPATCH_STMT_SLA_CALENDAR_GET,    /* dispatch.sla_calendar_get(name) */
    DISPATCH_STMT_SLA_CALENDAR_LIST,   /* dispatch.sla_calendar_list() */
    DISPATCH_STMT_SLA_POLICY_CREATE,   /* dispatch.sla_policy_create(jsonb) */
    DISPATCH_STMT_SLA_POLICY_PATCH,    /* dispatch.sla_policy_patch(id, jsonb, version) */
    DISPATCH_STMT_SLA_POLICY_GET,      /* dispatch.sla_policy_get(id) */
    DISPATCH_STMT_SLA_POLICY_LIST,     /* dispatch.sla_policy_list() */
    /* -- plans.c -- */
    DISPATCH_STMT_PLAN_PROPOSE,      /* dispatch.plan_propose(number, actor, doc) */
    DISPATCH_STMT_PLAN_LIST,         /* dispatch.plan_list(number) */
    DISPATCH_STMT_PLAN_GET,          /* dispatch.plan_get(id) */
    DISPATCH_STMT_PLAN_DECIDE,       /* dispatch.plan_decide(id, action, via, actor, customer,
                                      * note, revision) */
    DISPATCH_STMT_PLAN_CANCEL,       /* dispatch.plan_cancel(id, actor, reason) */
    DISPATCH_STMT_PLAN_LINK,         /* dispatch.plan_link(id, actor, expires_s) */
    DISPATCH_STMT_PLAN_CUSTOMER_GET, /* dispatch.plan_customer_get(id, revision) */
    /* -- work.c -- */
    DISPATCH_STMT_WORK_CREATE, /* dispatch.work_create(number, kind, engineer_id, note, actor),
                                * as (dispatch_engineer_scope()) */
    DISPATCH_STMT_WORK_STEP,   /* dispatch.work_step(id, step, at, note, pause_reason, report,
                                * confirmation, expected_version, actor), as */
    DISPATCH_STMT_WORK_GET,    /* dispatch.work_get(id) */
    DISPATCH_STMT_WORK_LIST,   /* dispatch.work_list(number) */
    /* -- repairs.c -- */
    DISPATCH_STMT_VENDOR_CREATE,   /* dispatch.vendor_create(doc) */
    DISPATCH_STMT_VENDOR_PATCH,    /* dispatch.vendor_patch(id, doc) */
    DISPATCH_STMT_VENDOR_GET,      /* dispatch.vendor_get(id) */
    DISPATCH_STMT_VENDOR_LIST,     /* dispatch.vendor_list(active, cursor, limit) */
    DISPATCH_STMT_REPAIR_CREATE,   /* dispatch.repair_create(number, actor, vendor, rma, due) */
    DISPATCH_STMT_REPAIR_SHIP,     /* (id, actor, carrier, tracking, shipped_at, due) */
    DISPATCH_STMT_REPAIR_FOLLOWUP, /* (id, actor, note, due) */
    DISPATCH_STMT_REPAIR_RETURN,   /* (id, actor, returned_at, note) */
    DISPATCH_STMT_REPAIR_INSPECT,  /* (id, actor, result, note) */
    DISPATCH_STMT_REPAIR_REROUTE,  /* (id, actor, vendor, rma, reason, due) */
    DISPATCH_STMT_REPAIR_GET,      /* dispatch.repair_get(id) */
    DISPATCH_STMT_REPAIR_LIST,     /* dispatch.repair_list(number) */
    /* -- cases.c -- */
    DISPATCH_STMT_CASE_FLAG,      /* dispatch.case_flag(number, actor, reason, owner) */
    DISPATCH_STMT_CASE_NOTE,      /* dispatch.case_note(id, actor, note) */
    DISPATCH_STMT_CASE_ESCALATE,  /* dispatch.case_escalate(id, actor, reason, owner) */
    DISPATCH_STMT_CASE_OWNER,     /* dispatch.case_set_owner(id, actor, engineer, reason) */
    DISPATCH_STMT_CASE_CLOSE,     /* dispatch.case_close(id, actor, resolution) */
    DISPATCH_STMT_CASE_GET,       /* dispatch.case_get(id) */
    DISPATCH_STMT_CASE_OF_TICKET, /* dispatch.case_of_ticket(number) */
    DISPATCH_STMT_CASE_LIST,      /* dispatch.case_list(state, level, owner, cursor, limit) */
    DISPATCH_STMT__COUNT
};
extern const ac_db_stmt_t dispatch_stmts[DISPATCH_STMT__COUNT];

/* GET /v1/engineers filters; NULL strings are "any". */
typedef struct dispatch_engineer_filter {
    const char *role, *region, *skill, *availability; /* borrowed */
    int64_t cursor;                                   /* seq of the last item shown; 0: first */
    long limit;                                       /* 1..200 */
} dispatch_engineer_filter_t;

/* Many events at once (ac_outbox_rows_t): one multi-row INSERT. */
int dispatch_store_add_outbox_rows(ac_db_txn_t *t, ac_outbox_rows_t *r) AC_WUR;
/* INSERT INTO dispatch.outbox (event_id, topic, envelope): envelope sent binary. */
int dispatch_store_add_outbox(ac_db_txn_t *t, const char *event_id, const char *topic,
                              const uint8_t *envelope, size_t len) AC_WUR;

/* dispatch.engineer_save(): id NULL creates; otherwise updates engineer id, whose version
 * must be version - 1 (the result is then SQL NULL). doc: the validated editable fields. */
int dispatch_store_add_engineer_save(ac_db_txn_t *t, const char *id, int64_t version,
                                     const json_t *doc) AC_WUR;
int dispatch_store_add_engineer_get(ac_db_txn_t *t, const char *id) AC_WUR;
/* The engineer's document, its row locked (SELECT ... FOR UPDATE). */
int dispatch_store_add_engineer_lock(ac_db_txn_t *t, const char *id) AC_WUR;
int dispatch_store_add_engineer_list(ac_db_txn_t *t, const dispatch_engineer_filter_t *f) AC_WUR;

/* ac_db_doc_result() (ac_db.h) under its old name, for sla.c. */
int dispatch_store_doc_result(const ac_db_txn_t *t, int i, json_t **doc_out) AC_WUR;

/* -- sla.c -- */
struct dispatch_deadline; /* deadlines.h */
/* The SLA engine's start-up load, one page: the armed deadlines (pending, with a due
 * time) after (after_due_us, after_id) in (due_at, id) order, at most `limit`, with binary
 * results. The first page starts after (INT64_MIN, 0). */
int dispatch_store_add_sla_armed(ac_db_txn_t *t, int64_t after_due_us, uint64_t after_id,
                                 long limit) AC_WUR;
/* How many deadlines are armed (read with dispatch_store_doc_result(): a json number). */
int dispatch_store_add_sla_armed_count(ac_db_txn_t *t) AC_WUR;
/* Its rows into out[] (id, due_at_us, version; kind and level 0), at most max: *n_out.
 * AC_ERR_PROTO for a result of another shape, AC_ERR_TOOBIG for more than max rows. */
int dispatch_store_sla_armed_result(const ac_db_txn_t *t, int i, struct dispatch_deadline *out,
                                    size_t max, size_t *n_out) AC_WUR;

/* dispatch.tickets_apply() (migrations/012_tickets_apply.sql) for n ticket events in
 * stream order, `cells` holding each event's DISPATCH_TICKET_NARGS values one after the
 * other: one statement for the consumer's batch. */
int dispatch_store_add_tickets_apply(ac_db_txn_t *t, const char *const *cells, size_t n) AC_WUR;

#endif
