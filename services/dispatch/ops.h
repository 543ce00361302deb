/* ops.h — the shape every dispatch change after the engineers takes: one SQL function
 * call (in migrations/, e.g. dispatch.plan_propose()) decides, writes and renders; this
 * module turns its JSON answer into outbox events and the HTTP reply.
 *
 * The SQL function returns one json value, either
 *   {"status": 200|201, "body": {...}, "events": [EVENT, ...]}        -> COMMIT, reply
 *   {"error": {"status": 409, "code": "...", "message": "...", "field": "..."}}
 *                                                                     -> ROLLBACK, reply
 * (a function that has written something before it finds an error still returns the
 * error: the transaction is rolled back, so nothing changes). EVENT is
 *   {"topic": "plan.proposed", "subject": "SV-...", "partition_key": "<uuid>",
 *    "ticket_version": 3, "payload": {"plan_changed": {... the payload as JSON ...}}}
 * where "payload" holds exactly one member of Envelope's oneof, in the JSON shape of
 * ac_pbjson (field names as in the .proto, enums by name). Each event is converted to an
 * Envelope (ac_pbjson_to_message), given a new id, the time, source aftercare/dispatch,
 * type aftercare.<topic>.v1 and the correlation id (the HTTP request id), packed and
 * inserted into dispatch.outbox — in the same transaction, which then commits.
 *
 * Also here, under dispatch's names: ac_service's list of requests waiting on the
 * database (so that a stopping service can answer them), its refusal of new requests
 * while stopping and its mapping of database errors to replies.
 *
 * Owns: each op's transaction until its callback has run. */
#ifndef DISPATCH_OPS_H
#define DISPATCH_OPS_H

#include <jansson.h>

#include "ac_db.h"
#include "ac_http.h"
#include "dispatch.h"
#include "reqbody.h"

/* The ops list (dispatch_http_sql()'s requests and the modules'):
 * ac_service_op_attach() / ac_service_op_detach() (idempotent) on self->base. */
void dispatch_op_attach(dispatch_t *self, dispatch_op_t *op, ac_http_req_t *req);
void dispatch_op_detach(dispatch_t *self, dispatch_op_t *op);

/* ac_service_reply_db_error(): 503 for lost connections, out of memory and transient SQL
 * states (nothing changed, retry), 500 for other SQL errors (logged with the SQLSTATE). */
void dispatch_reply_db_error(ac_http_req_t *req, int err, const ac_db_txn_t *txn);

/* Whose assignments and work records the caller may act on: NULL = anyone's (every role
 * but engineer); an engineer's token: the engineer it names, "" when it names none
 * (migrations 013, 014). */
const char *dispatch_engineer_scope(const ac_http_req_t *req);

/* ac_service_is_refused(): a stopping service takes nothing new: 1 (answered 503) when
 * refused. */
int dispatch_is_refused(dispatch_t *self, ac_http_req_t *req);

/* Packs every EVENT of `events` (an array, may be NULL or empty) and queues its outbox
 * insert on txn. 0, AC_ERR_INVALID (an event does not fit the proto; logged with the
 * path of the bad field) or AC_ERR_NOMEM. Metrics: events_total{topic}. */
int dispatch_events_queue(dispatch_t *self, ac_db_txn_t *txn, const json_t *events,
                          const char *correlation_id) AC_WUR;

/* Runs prepared statement `stmt` of dispatch_stmts (store.h; one row, one json column;
 * parameters as text, NULL = SQL NULL) in a new transaction for req and answers it as
 * above. A read-only call (is_write 0) runs without a transaction and must return no
 * events. */
void dispatch_http_sql(dispatch_t *self, ac_http_req_t *req, int is_write, int stmt,
                       const char *const *params);

/* The same for work that is not a request (the assignment worker, the SLA engine).
 * done(arg, err, result) runs once: err 0 and the parsed result
 * (borrowed; an {"error":...} result was rolled back, anything else committed with its
 * events), or err < 0 (AC_ERR_UNAVAILABLE, AC_ERR_DB with nothing committed — or, when
 * the connection was lost during COMMIT, in doubt; AC_ERR_INVALID for an answer that is
 * not of the shape above). Returns 0, or < 0 without calling done. */
typedef void (*dispatch_sql_done_fn)(void *arg, int err, const json_t *result);
int dispatch_run_sql(dispatch_t *self, int stmt, const char *const *params,
                     const char *correlation_id, dispatch_sql_done_fn done, void *arg) AC_WUR;

/* Table-driven routes (repairs.c, cases.c): one SQL statement per route, whose
 * parameters are the path's key, the caller's name (the actor), the checked body and,
 * last, whose work the caller may touch (dispatch_engineer_scope()). */
typedef enum dispatch_path_kind {
    DISPATCH_PATH_NONE,   /* no path parameter */
    DISPATCH_PATH_TICKET, /* {} is a ticket number (SV-...) */
    DISPATCH_PATH_ID,     /* {} is a UUID */
} dispatch_path_kind_t;

typedef struct dispatch_route_op {
    int stmt;                            /* of dispatch_stmts */
    dispatch_path_kind_t path;           /* the first parameter, when not NONE */
    const char *what;                    /* the path's object, for a 404: "send-out", "ticket" */
    int is_write;                        /* a transaction that may publish events */
    int with_actor;                      /* the caller's name follows the path's key */
    int is_doc;                          /* the whole checked body is one jsonb parameter */
    const dispatch_body_field_t *fields; /* in parameter order; NULL: no body */
    int with_scope;                      /* dispatch_engineer_scope() is the last parameter */
} dispatch_route_op_t;

/* Checks path and body (404, 400, 422 answered here), then dispatch_http_sql(). */
void dispatch_run_route_op(dispatch_t *self, ac_http_req_t *req, const dispatch_route_op_t *op);
/* A list's query: limit (1..200, default 50) and cursor (a positive integer) into text.
 * 0, or AC_ERR_INVALID answered 422. */
int dispatch_page_query(ac_http_req_t *req, char *limit, char *cursor, size_t len,
                        int *has_cursor) AC_WUR;

/* The emitter: publishes the events SQL queued with dispatch.emit() (hooks running in
 * the consumer's transaction, ...; migrations/002_tickets.sql), woken by NOTIFY
 * dispatch_emit and every 2 s. */
void dispatch_emitter_start(dispatch_t *self);
void dispatch_emitter_stop(dispatch_t *self);
void dispatch_emitter_on_notify(dispatch_t *self);

#endif
