/* batch.c — group commit of ticket creates.
 *
 * Validated creates queue up; whenever no batch is in flight, up to AC_INTAKE_BATCH_MAX
 * of them run in ONE transaction of two round trips:
 *   1. one intake.create_tickets() call for the whole batch (migration 002): one
 *      statement for N requests, which never raises for expected problems but returns a
 *      status per request — a statement per request costs 2.5x as much database time;
 *   2. one multi-row intake.outbox INSERT of the tickets actually created, then COMMIT.
 * Clients are answered after the commit. Requests arriving meanwhile keep queueing, so
 * under load a batch carries everything that came in during the previous one and the
 * commit (WAL flush) cost is shared.
 *
 * One batch at a time: every create updates the same per-day counter row, which would
 * serialise concurrent batches anyway (and two batches could deadlock on idempotency
 * keys claimed in opposite orders).
 *
 * A batch that fails with an SQL error (AC_ERR_DB) is retried request by request through
 * intake.create_ticket(), so one bad request cannot fail the others and a race on an
 * Idempotency-Key with another transaction is resolved; AC_ERR_UNAVAILABLE answers them
 * all 503. */
#include <stdlib.h>
#include <string.h>

#include "ac_log.h"
#include "events.h"
#include "intake.h"
#include "store.h"

struct intake_create {
    ac_op_t op; /* first: the waiting HTTP request */
    intake_t *self;
    intake_create_t *next;         /* in the queue or the retry queue */
    intake_create_args_t args;     /* the SQL parameters, kept for a retry */
    char *correlation_id;          /* owned: the request's X-Request-Id */
    intake_create_result_t result; /* from round trip 1 */
};

typedef struct create_batch {
    intake_t *self;
    ac_db_txn_t *txn;  /* owned */
    int is_retry;      /* a single request of a failed batch */
    int is_committing; /* round trip 2 (with the COMMIT) is in flight */
    size_t n;
    intake_create_t *items[]; /* owned */
} create_batch_t;

static void kick(intake_t *self);

static void create_free(intake_create_t *c)
{
    ac_service_op_detach(&c->self->base, &c->op);
    intake_store_create_args_clear(&c->args);
    json_decref(c->result.doc);
    free(c->correlation_id);
    free(c);
}

static void queue_push(intake_create_t **head, intake_create_t **tail, intake_create_t *c)
{
    c->next = NULL;
    if (*tail)
        (*tail)->next = c;
    else
        *head = c;
    *tail = c;
}

static intake_create_t *queue_pop(intake_create_t **head, intake_create_t **tail)
{
    intake_create_t *c = *head;
    if (c) {
        *head = c->next;
        if (!*head)
            *tail = NULL;
        c->next = NULL;
    }
    return c;
}

int intake_create_submit(intake_t *self, ac_http_req_t *req, const intake_ticket_in_t *in,
                         const char *idem_key, const char *request_hash)
{
    intake_create_t *c = calloc(1, sizeof *c);
    if (!c)
        return AC_ERR_NOMEM;
    c->self = self;
    c->correlation_id = strdup(ac_http_req_id(req));
    if (!c->correlation_id ||
        intake_store_create_args(in, idem_key, request_hash, ac_role_name(ac_http_req_role(req)),
                                 &c->args) < 0) {
        free(c->correlation_id);
        free(c);
        return AC_ERR_NOMEM;
    }
    ac_service_op_attach(&self->base, &c->op, req);
    queue_push(&self->queue_head, &self->queue_tail, c);
    self->queue_len++;
    kick(self);
    return 0;
}

void intake_create_drop_all(intake_t *self)
{
    intake_create_t *c;
    while ((c = queue_pop(&self->retry_head, &self->retry_tail)))
        create_free(c);
    while ((c = queue_pop(&self->queue_head, &self->queue_tail)))
        create_free(c);
    self->queue_len = 0;
}

/* --- answering ----------------------------------------------------------------------- */

static void reply_result(intake_t *self, intake_create_t *c)
{
    ac_http_req_t *req = c->op.req;
    intake_create_result_t *r = &c->result;

    if (r->outcome == INTAKE_CREATE_REJECTED) {
        char labels[64];
        snprintf(labels, sizeof labels, "code=\"%s\"", r->code);
        ac_metrics_add(self->metrics, "ticket_create_rejected_total", labels, 1);
        if (req)
            ac_http_reply_error(req, 422, r->code, r->field[0] ? r->field : NULL, "%s", r->message);
        return;
    }
    ac_metrics_add(self->metrics,
                   r->outcome == INTAKE_CREATE_CREATED ? "tickets_created_total"
                                                       : "ticket_create_replays_total",
                   NULL, 1);
    if (!req)
        return;
    const char *number = json_string_value(json_object_get(r->doc, "number"));
    char location[160];
    snprintf(location, sizeof location, "/v1/tickets/%s", number ? number : "");
    (void)ac_http_reply_header(req, "Location", location);
    if (r->outcome == INTAKE_CREATE_REPLAYED)
        (void)ac_http_reply_header(req, "Idempotent-Replayed", "true");
    ac_http_reply_json(req, 201, r->doc);
    r->doc = NULL;
}

static void batch_free(create_batch_t *b)
{
    ac_db_txn_free(&b->txn);
    free(b);
}

/* The batch is over (answered or handed to the retry queue): start the next one. */
static void batch_done(create_batch_t *b)
{
    intake_t *self = b->self;
    batch_free(b);
    self->is_batch_in_flight = 0;
    kick(self);
}

static void batch_succeeded(create_batch_t *b)
{
    for (size_t i = 0; i < b->n; i++) {
        reply_result(b->self, b->items[i]);
        create_free(b->items[i]);
    }
    batch_done(b);
}

static void batch_failed(create_batch_t *b, int err)
{
    intake_t *self = b->self;
    /* Any SQL error of the batch statement (including a batch of one: an Idempotency-Key
     * claimed meanwhile by another transaction) is settled by intake.create_ticket(). */
    if (err == AC_ERR_DB && !b->is_retry) {
        ac_warn("create batch of %zu failed (SQLSTATE %s: %s); retrying each request alone", b->n,
                ac_db_txn_sqlstate(b->txn), ac_db_txn_errmsg(b->txn));
        ac_metrics_add(self->metrics, "create_batch_retries_total", NULL, 1);
        for (size_t i = 0; i < b->n; i++) {
            intake_create_t *c = b->items[i];
            json_decref(c->result.doc);
            memset(&c->result, 0, sizeof c->result);
            queue_push(&self->retry_head, &self->retry_tail, c);
        }
    } else {
        for (size_t i = 0; i < b->n; i++) {
            intake_create_t *c = b->items[i];
            if (c->op.req && err == AC_ERR_UNAVAILABLE && b->is_committing)
                ac_service_reply_commit_unknown(&self->base, c->op.req);
            else if (c->op.req)
                ac_service_reply_db_error(c->op.req, err, b->txn);
            create_free(c);
        }
    }
    batch_done(b);
}

/* --- the two round trips ----------------------------------------------------------- */

static void on_batch_committed(ac_db_txn_t *txn, int err, void *arg)
{
    create_batch_t *b = arg;
    (void)txn;
    if (err == 0 || err == AC_ERR_UNAVAILABLE) /* committed, or perhaps: see below */
        ac_outbox_wake(b->self->outbox);
    if (err < 0)
        batch_failed(b, err);
    else
        batch_succeeded(b);
}

/* Round trip 1 is back: read each request's outcome, queue the events of the new tickets
 * and commit. */
static void on_batch_created(ac_db_txn_t *txn, int err, void *arg)
{
    create_batch_t *b = arg;
    ac_outbox_rows_t rows;
    int rc;

    if (err < 0) {
        batch_failed(b, err);
        return;
    }
    if (ac_outbox_rows_init(&rows) < 0) {
        batch_failed(b, AC_ERR_UNAVAILABLE);
        return;
    }
    for (size_t i = 0; i < b->n; i++) {
        intake_create_t *c = b->items[i];
        rc = b->is_retry ? intake_store_create_ticket_result(txn, (int)i, &c->result)
                         : intake_store_create_tickets_result(txn, b->n, i, &c->result);
        if (rc < 0) {
            ac_outbox_rows_clear(&rows);
            batch_failed(b, AC_ERR_DB);
            return;
        }
        if (c->result.outcome != INTAKE_CREATE_CREATED)
            continue;
        intake_event_t ev = {
            .kind = INTAKE_EV_CREATED,
            .ticket = c->result.doc,
            .correlation_id = c->correlation_id,
        };
        char event_id[AC_UUID_STRLEN];
        uint8_t *buf;
        size_t len;
        if ((rc = intake_event_pack(&ev, event_id, &buf, &len)) < 0) {
            ac_error("create batch: cannot pack ticket.created: %s", ac_strerror(rc));
            ac_outbox_rows_clear(&rows);
            batch_failed(b, rc == AC_ERR_NOMEM ? AC_ERR_UNAVAILABLE : AC_ERR_DB);
            return;
        }
        rc =
            ac_outbox_rows_append(&rows, event_id, intake_event_topic(INTAKE_EV_CREATED), buf, len);
        free(buf);
        if (rc < 0) {
            ac_outbox_rows_clear(&rows);
            batch_failed(b, AC_ERR_UNAVAILABLE);
            return;
        }
    }
    if (rows.n == 0) { /* nothing was written: no commit to wait for */
        ac_outbox_rows_clear(&rows);
        batch_succeeded(b);
        return;
    }
    /* (synchronous commit: its NOTIFY would hold every notifying commit of the database
     * through this disk flush; on_batch_committed() wakes the relay instead) */
    rc = ac_outbox_add_self_wake(txn);
    if (rc == 0)
        rc = intake_store_add_outbox_rows(txn, &rows);
    ac_outbox_rows_clear(&rows);
    if (rc < 0) {
        batch_failed(b, AC_ERR_UNAVAILABLE);
        return;
    }
    if ((rc = ac_db_txn_commit(txn, on_batch_committed, b)) < 0)
        batch_failed(b, rc); /* nothing was sent */
    else
        b->is_committing = 1;
}

static void batch_start(intake_t *self, int is_retry)
{
    size_t n = is_retry ? 1 : self->queue_len;
    int rc = 0;

    if (!is_retry && n > (size_t)self->cfg->batch_max)
        n = (size_t)self->cfg->batch_max;
    create_batch_t *b = calloc(1, sizeof *b + n * sizeof(intake_create_t *));
    if (!b) {
        /* Answer the oldest request rather than spin: out of memory is an outage. */
        intake_create_t *c = is_retry ? queue_pop(&self->retry_head, &self->retry_tail)
                                      : queue_pop(&self->queue_head, &self->queue_tail);
        if (!is_retry)
            self->queue_len--;
        if (c->op.req)
            ac_http_reply_error(c->op.req, 503, "unavailable", NULL, "out of memory");
        create_free(c);
        return;
    }
    b->self = self;
    b->is_retry = is_retry;
    for (size_t i = 0; i < n; i++) {
        b->items[i] = is_retry ? queue_pop(&self->retry_head, &self->retry_tail)
                               : queue_pop(&self->queue_head, &self->queue_tail);
        b->n++;
    }
    if (!is_retry)
        self->queue_len -= n;
    self->is_batch_in_flight = 1;
    ac_metrics_observe(self->metrics, "create_batch_size", NULL, (double)n);
    ac_metrics_add(self->metrics, "create_batches_total", NULL, 1);
    ac_metrics_add(self->metrics, "create_batch_requests_total", NULL, (double)n);

    b->txn = ac_db_txn_new(self->db, 1);
    if (!b->txn)
        rc = AC_ERR_UNAVAILABLE;
    if (rc == 0 && is_retry) {
        rc = intake_store_add_create_ticket(b->txn, &b->items[0]->args);
    } else if (rc == 0) {
        intake_create_args_t **args = n ? malloc(n * sizeof(intake_create_args_t *)) : NULL;
        for (size_t i = 0; args && i < n; i++)
            args[i] = &b->items[i]->args;
        rc = args ? intake_store_add_create_tickets(b->txn, args, n) : AC_ERR_NOMEM;
        free(args);
    }
    if (rc == 0)
        rc = ac_db_txn_flush(b->txn, on_batch_created, b);
    if (rc < 0) /* nothing was sent: answer at once */
        batch_failed(b, rc == AC_ERR_DB ? AC_ERR_DB : AC_ERR_UNAVAILABLE);
    /* otherwise b belongs to on_batch_created(), which frees it */
} // NOLINT(clang-analyzer-unix.Malloc): b is owned by the pending callback

/* Starts the next batch when none is in flight: the retries of a failed batch first, one
 * request each, then up to batch_max queued requests. */
static void kick(intake_t *self)
{
    if (self->is_kicking) /* a batch failed synchronously inside batch_start() */
        return;
    self->is_kicking = 1;
    while (!self->is_closed && !self->is_batch_in_flight) {
        if (self->retry_head)
            batch_start(self, 1);
        else if (self->queue_head)
            batch_start(self, 0);
        else
            break;
    }
    self->is_kicking = 0;
}
