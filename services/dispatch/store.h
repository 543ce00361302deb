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

enum dispatch_stmt {
    DISPATCH_STMT_OUTBOX_INSERT,
    DISPATCH_STMT_ENGINEER_SAVE,
    DISPATCH_STMT_ENGINEER_GET,
    DISPATCH_STMT_ENGINEER_LOCK,
    DISPATCH_STMT_ENGINEER_LIST,
    /* tickets.c: dispatch.ticket_apply(id, number, version, priority, category,
     * customer_id, tier, product_model, region, status, in_warranty, created_at,
     * updated_at) */
    DISPATCH_STMT_TICKET_APPLY,
    DISPATCH_STMT_TICKET_GET, /* dispatch.ticket_get(number) */
    DISPATCH_STMT_EMIT_TAKE,  /* dispatch.emit_take(limit): ops.c's emitter */
    /* The statements below return one json value for ops.c (dispatch_http_sql(),
     * dispatch_run_sql()); each module keeps its own block. */
    /* -- assignment.c -- */
    /* -- sla.c -- */
    /* -- plans.c -- */
    /* -- work.c -- */
    /* -- repairs.c -- */
    /* -- cases.c -- */
    DISPATCH_STMT__COUNT
};
extern const ac_db_stmt_t dispatch_stmts[DISPATCH_STMT__COUNT];

/* GET /v1/engineers filters; NULL strings are "any". */
typedef struct dispatch_engineer_filter {
    const char *role, *region, *skill, *availability; /* borrowed */
    int64_t cursor;                                   /* seq of the last item shown; 0: first */
    long limit;                                       /* 1..200 */
} dispatch_engineer_filter_t;

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

/* First column of the first row as JSON; AC_ERR_NOTFOUND when no row or SQL NULL. */
int dispatch_store_doc_result(const ac_db_txn_t *t, int i, json_t **doc_out) AC_WUR;
/* Rows (seq, doc) of a list statement that fetched limit + 1 rows:
 * {"items": [first `limit` docs], "next_cursor": "<seq of the last item>" | null}. */
int dispatch_store_page_result(const ac_db_txn_t *t, int i, long limit, json_t **body_out) AC_WUR;

#endif
