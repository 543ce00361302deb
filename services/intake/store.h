/* store.h — every SQL statement intake runs, one function per statement.
 *
 * The statement table (intake_stmts) is prepared on every pool connection. The
 * intake_store_add_*() functions queue a statement on a transaction (values are copied);
 * the *_result() functions read a finished round trip's results and copy them out
 * (JSON documents are rendered by SQL — see migrations/001_init.sql — and parsed here).
 * Only this module and common/ include <libpq-fe.h>.
 *
 * Owns: nothing between calls. */
#ifndef INTAKE_STORE_H
#define INTAKE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ac_db.h"
#include "ac_outbox.h"
#include "validate.h"

enum intake_stmt {
    INTAKE_STMT_CREATE_TICKET,
    INTAKE_STMT_CREATE_TICKETS,
    INTAKE_STMT_OUTBOX_INSERT,
    INTAKE_STMT_OUTBOX_INSERT_MANY,
    INTAKE_STMT_TICKET_GET,
    INTAKE_STMT_TICKET_LOCK,
    INTAKE_STMT_TICKET_UPDATE,
    INTAKE_STMT_HISTORY_INSERT,
    INTAKE_STMT_TICKET_UPDATE_MANY,
    INTAKE_STMT_HISTORY_INSERT_MANY,
    INTAKE_STMT_TICKET_LIST,
    INTAKE_STMT_CUSTOMER_INSERT,
    INTAKE_STMT_CUSTOMER_GET,
    INTAKE_STMT_CUSTOMER_LIST,
    INTAKE_STMT_PRODUCT_INSERT,
    INTAKE_STMT_PRODUCT_GET,
    INTAKE_STMT_PRODUCT_LIST,
    INTAKE_STMT_POLICY_PUT,
    INTAKE_STMT_POLICY_LIST,
    INTAKE_STMT_FOLLOW_ENQUEUE,
    INTAKE_STMT_FOLLOW_TAKE,
    INTAKE_STMT_FOLLOW_DONE,
    INTAKE_STMT_FOLLOW_FAILED,
    INTAKE_STMT__COUNT
};
extern const ac_db_stmt_t intake_stmts[INTAKE_STMT__COUNT];

/* --- ticket creation (intake.create_ticket(), one call per request) ------------------ */
#define INTAKE_CREATE_NARGS 15
/* The SQL parameters of one create, rendered once so that a batch can be retried. */
typedef struct intake_create_args {
    char *v[INTAKE_CREATE_NARGS]; /* owned; NULL is SQL NULL */
} intake_create_args_t;
/* idem_key/request_hash may be NULL (no Idempotency-Key). */
int intake_store_create_args(const intake_ticket_in_t *in, const char *idem_key,
                             const char *request_hash, const char *actor,
                             intake_create_args_t *out) AC_WUR;
void intake_store_create_args_clear(intake_create_args_t *a);
int intake_store_add_create_ticket(ac_db_txn_t *t, const intake_create_args_t *a) AC_WUR;

typedef enum {
    INTAKE_CREATE_CREATED,  /* doc: the new ticket */
    INTAKE_CREATE_REPLAYED, /* doc: the ticket of the earlier request with this key */
    INTAKE_CREATE_REJECTED, /* code/field/message: a 422 */
} intake_create_outcome_t;
typedef struct intake_create_result {
    intake_create_outcome_t outcome;
    char code[32];
    char field[32];
    char message[200];
    json_t *doc; /* owned; NULL when rejected */
} intake_create_result_t;
/* Result i of a round trip that ran intake_store_add_create_ticket(). AC_ERR_PROTO when
 * the row is not what the function returns (logged). */
int intake_store_create_ticket_result(const ac_db_txn_t *t, int i,
                                      intake_create_result_t *out) AC_WUR;
/* A whole batch in one statement (intake.create_tickets(), migration 002): add it as the
 * round trip's first statement, then read request i (0-based) of n. */
int intake_store_add_create_tickets(ac_db_txn_t *t, intake_create_args_t *const *args,
                                    size_t n) AC_WUR;
int intake_store_create_tickets_result(const ac_db_txn_t *t, size_t n, size_t i,
                                       intake_create_result_t *out) AC_WUR;

/* INSERT INTO intake.outbox (event_id, topic, envelope): envelope sent binary. */
int intake_store_add_outbox(ac_db_txn_t *t, const char *event_id, const char *topic,
                            const uint8_t *envelope, size_t len) AC_WUR;

/* The outbox rows of a batch (ac_outbox_rows_t) as one multi-row INSERT. */
int intake_store_add_outbox_rows(ac_db_txn_t *t, ac_outbox_rows_t *r) AC_WUR;

/* --- tickets ----------------------------------------------------------------------- */
int intake_store_add_ticket_get(ac_db_txn_t *t, const char *number) AC_WUR;
/* The ticket document plus "history"; AC_ERR_NOTFOUND when no such ticket. */
int intake_store_ticket_get_result(const ac_db_txn_t *t, int i, json_t **doc_out) AC_WUR;

/* SELECT ... FOR UPDATE of the ticket, plus the transaction's now() (RFC 3339 UTC). */
int intake_store_add_ticket_lock(ac_db_txn_t *t, const char *number) AC_WUR;
int intake_store_ticket_lock_result(const ac_db_txn_t *t, int i, json_t **doc_out,
                                    char now_out[32]) AC_WUR;

/* Writes the mutable fields of doc (the ticket document after the change: description,
 * category, urgency, expedite, priority, contact, status, version, resolved_at,
 * closed_at) to the row doc.id, whose version must be doc.version - 1. */
int intake_store_add_ticket_update(ac_db_txn_t *t, const json_t *doc) AC_WUR;
int intake_store_add_history(ac_db_txn_t *t, const char *ticket_id, const char *from_status,
                             const char *to_status, const char *reason, const char *actor) AC_WUR;

int intake_store_add_ticket_list(ac_db_txn_t *t, const intake_ticket_filter_t *f) AC_WUR;

/* --- customers, products, warranty policies ----------------------------------------- */
int intake_store_add_customer_insert(ac_db_txn_t *t, const intake_customer_in_t *in) AC_WUR;
int intake_store_add_customer_get(ac_db_txn_t *t, const char *id) AC_WUR;
int intake_store_add_customer_list(ac_db_txn_t *t, const intake_list_filter_t *f) AC_WUR;

int intake_store_add_product_insert(ac_db_txn_t *t, const intake_product_in_t *in) AC_WUR;
/* *is_customer_found 0: no such customer; doc NULL with the customer found: the serial
 * number exists for that model already. */
int intake_store_product_insert_result(const ac_db_txn_t *t, int i, int *is_customer_found,
                                       json_t **doc_out) AC_WUR;
int intake_store_add_product_get(ac_db_txn_t *t, const char *id) AC_WUR;
int intake_store_add_product_list(ac_db_txn_t *t, const intake_list_filter_t *f) AC_WUR;

int intake_store_add_policy_put(ac_db_txn_t *t, const intake_policy_in_t *in) AC_WUR;
int intake_store_add_policy_list(ac_db_txn_t *t) AC_WUR;

/* Many tickets' changes at once (follow.c's batches). Ticket updates: one row per
 * ticket, its document after the batch's changes and the version it had before them.
 * History rows: ticket id, from, to, reason, actor, in the order the changes were made
 * (each ticket's rows numbered on from its last). */
#define INTAKE_UPDATE_NCOLS  12
#define INTAKE_HISTORY_NCOLS 5
int intake_store_ticket_update_cells(const json_t *doc, int64_t old_version,
                                     char *cells[INTAKE_UPDATE_NCOLS]) AC_WUR;
int intake_store_add_ticket_updates(ac_db_txn_t *t, const char *const *cells, size_t n) AC_WUR;
int intake_store_add_histories(ac_db_txn_t *t, const char *const *cells, size_t n) AC_WUR;

/* --- following dispatch (follow.c, migrations/005_follow.sql) ----------------------- */
/* intake.follow_enqueue(): queue the status change an event of a followed source asks
 * for (once per event_id); runs in the consumer's transaction. only_from: a text[]
 * literal ("{new,reopened}") of the statuses it may move from, NULL for any. */
int intake_store_add_follow_enqueue(ac_db_txn_t *t, const char *event_id, const char *source,
                                    const char *topic, const char *ticket_id,
                                    const char *ticket_number, const char *to_status,
                                    const char *only_from, const char *reason,
                                    const char *correlation_id) AC_WUR;
/* intake.follow_take() (migrations/006_follow_batch.sql): the oldest pending changes, at
 * most `limit`, with their tickets locked; read it with ac_db_doc_result() ({"items",
 * "tickets", "now"}; AC_ERR_NOTFOUND: nothing to do). */
int intake_store_add_follow_take(ac_db_txn_t *t, int limit) AC_WUR;
/* The changes are done (applied or skipped): their rows go. */
int intake_store_add_follow_done(ac_db_txn_t *t, const int64_t *ids, size_t n) AC_WUR;
/* intake.follow_failed(): one more failed try; set aside after max_attempts. Read with
 * ac_db_doc_result() ({"attempts", "is_given_up"}). */
int intake_store_add_follow_failed(ac_db_txn_t *t, int64_t id, const char *error,
                                   int max_attempts) AC_WUR;

#endif
