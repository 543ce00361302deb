/* batch.c — group commit of ticket creates.
 *
 * Validated creates queue up; up to AC_INTAKE_BATCH_MAX of them run in ONE transaction of
 * two round trips:
 *   1. the batch's first ticket number (intake_store_add_numbers_from()) and one
 *      intake.create_tickets() call for the whole batch (migrations 002, 009): one
 *      statement for N requests, which never raises for expected problems but returns a
 *      status per request — a statement per request costs 2.5x as much database time;
 *   2. the claim of the batch's numbers (intake.numbers_claim()), one multi-row
 *      intake.outbox INSERT of the tickets actually created, then COMMIT.
 * Clients are answered after the commit. Requests arriving meanwhile keep queueing, so
 * under load a batch carries everything that came in during the previous one and the
 * commit (WAL flush) cost is shared.
 *
 * Two batches may be in flight. Ticket numbers are gap-free per day, so a batch must know
 * where the one before it ends: the next batch is numbered (round trip 1 sent) once the
 * batch before has returned its round trip 1, and then runs beside that batch's round
 * trip 2. Numbers are taken at commit (migration 009): the claim only succeeds when they
 * are the next ones, waiting for the batch before to commit; when that batch failed the
 * claim fails too (SQLSTATE 40001) and the batch is retried. After any failure the next
 * number is unknown, and the next batch reads the day's counter alone.
 *
 * A batch that fails with an SQL error (AC_ERR_DB) is retried request by request through
 * intake.create_ticket(), alone, so one bad request cannot fail the others and a race on
 * an Idempotency-Key with another transaction is resolved; AC_ERR_UNAVAILABLE answers them
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
    ac_db_txn_t *txn;    /* owned */
    int is_retry;        /* a single request of a failed batch (numbered under the lock) */
    int is_numbering;    /* round trip 1 is out: self->is_numbering is this batch's */
    int is_committing;   /* round trip 2 (with the COMMIT) is in flight */
    unsigned number_gen; /* self->number_gen when it was numbered */
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

/* Round trip 1 is over (or the batch is): the next batch may be numbered. */
static void batch_numbered(create_batch_t *b)
{
    if (b->is_numbering) {
        b->is_numbering = 0;
        b->self->is_numbering = 0;
    }
}

/* The batch is over (answered or handed to the retry queue): start the next one. */
static void batch_done(create_batch_t *b)
{
    intake_t *self = b->self;
    batch_numbered(b);
    if (b->is_retry) /* it numbered under the counter's lock: read the counter again */
        self->number_next = 0;
    batch_free(b);
    self->nbatches--;
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

/* Puts the batch's requests back at the head of the queue, in their order, to be numbered
 * again in a new batch. */
static void batch_requeue(create_batch_t *b)
{
    intake_t *self = b->self;
    for (size_t i = b->n; i-- > 0;) {
        intake_create_t *c = b->items[i];
        json_decref(c->result.doc);
        memset(&c->result, 0, sizeof c->result);
        c->next = self->queue_head;
        self->queue_head = c;
        if (!self->queue_tail)
            self->queue_tail = c;
        self->queue_len++;
    }
    b->n = 0;
}

static void batch_failed(create_batch_t *b, int err)
{
    intake_t *self = b->self;
    /* Whatever it numbered is not committed: a batch numbered after it fails its claim, and
     * the next one reads the counter. */
    self->number_next = 0;
    self->number_gen++;
    if (err == AC_ERR_DB && !b->is_retry && strcmp(ac_db_txn_sqlstate(b->txn), "40001") == 0) {
        /* its numbers were not the next ones (the batch before it failed): number again */
        ac_metrics_add(self->metrics, "create_batch_renumbered_total", NULL, 1);
        batch_requeue(b);
        batch_done(b);
        return;
    }
    /* Any other SQL error of the batch statement (including a batch of one: an
     * Idempotency-Key claimed meanwhile by another transaction) is settled by
     * intake.create_ticket(). */
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

/* Widens [*first, *last] of `day` to the number of a new ticket of the batch. The batch's
 * numbers are one run of one day; AC_ERR_PROTO (logged) otherwise. */
static int note_number(const json_t *doc, char day[11], int64_t *first, int64_t *last)
{
    const char *number = json_string_value(json_object_get(doc, "number"));
    char d[11];
    int64_t seq;
    if (intake_number_parse(number, d, &seq) < 0 || (*first > 0 && strcmp(d, day) != 0)) {
        ac_error("create batch: unexpected ticket number %s", number ? number : "(none)");
        return AC_ERR_PROTO;
    }
    if (*first == 0) {
        memcpy(day, d, sizeof d);
        *first = *last = seq;
    } else if (seq < *first) {
        *first = seq;
    } else if (seq > *last) {
        *last = seq;
    }
    return 0;
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
    char day[11] = "";
    int64_t first = 0, last = 0;
    for (size_t i = 0; i < b->n; i++) {
        intake_create_t *c = b->items[i];
        rc = b->is_retry ? intake_store_create_ticket_result(txn, (int)i, &c->result)
                         : intake_store_create_tickets_result(txn, 1, b->n, i, &c->result);
        if (rc == 0 && !b->is_retry && c->result.outcome == INTAKE_CREATE_CREATED)
            rc = note_number(c->result.doc, day, &first, &last);
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
    if (b->is_numbering) { /* the next batch may be numbered, and sent */
        intake_t *self = b->self;
        if (b->number_gen != self->number_gen) {
            /* a batch before it failed meanwhile: these numbers cannot be claimed */
            ac_outbox_rows_clear(&rows);
            ac_metrics_add(self->metrics, "create_batch_renumbered_total", NULL, 1);
            batch_requeue(b);
            batch_done(b);
            return;
        }
        if (first > 0) {
            self->number_next = last + 1;
            memcpy(self->number_day, day, sizeof day);
        }
        batch_numbered(b);
        kick(self);
    }
    if (rows.n == 0) { /* nothing was written: no commit to wait for */
        ac_outbox_rows_clear(&rows);
        batch_succeeded(b);
        return;
    }
    /* (synchronous commit: its NOTIFY would hold every notifying commit of the database
     * through this disk flush; on_batch_committed() wakes the relay instead) */
    rc = ac_outbox_add_self_wake(txn);
    if (rc == 0 && first > 0)
        rc = intake_store_add_numbers_claim(txn, day, first, last);
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
    b->is_numbering = !is_retry;
    b->number_gen = self->number_gen;
    for (size_t i = 0; i < n; i++) {
        b->items[i] = is_retry ? queue_pop(&self->retry_head, &self->retry_tail)
                               : queue_pop(&self->queue_head, &self->queue_tail);
        b->n++;
    }
    if (!is_retry)
        self->queue_len -= n;
    if (self->nbatches++ > 0)
        ac_metrics_add(self->metrics, "create_batches_overlapped_total", NULL, 1);
    self->is_numbering |= b->is_numbering;
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
        rc = !args ? AC_ERR_NOMEM
                   : intake_store_add_numbers_from(b->txn, self->number_next, self->number_day);
        if (rc == 0)
            rc = intake_store_add_create_tickets(b->txn, args, n);
        free(args);
    }
    if (rc == 0)
        rc = ac_db_txn_flush(b->txn, on_batch_created, b);
    if (rc < 0) /* nothing was sent: answer at once */
        batch_failed(b, rc == AC_ERR_DB ? AC_ERR_DB : AC_ERR_UNAVAILABLE);
    /* otherwise b belongs to on_batch_created(), which frees it */
} // NOLINT(clang-analyzer-unix.Malloc): b is owned by the pending callback

/* A second batch goes out beside the one in flight only with at least this many requests:
 * every batch costs about as much database time as eight more requests in it, so a small
 * one is cheaper waiting for the next. tests/bench/intake.sh, closed loop, 16 clients:
 * with 1, more than half of the batches carried one request and throughput fell 10 %
 * below one batch at a time; with 4 and 8 it rose 6-20 %; with 12 and 16 it fell again. */
#define OVERLAP_MIN 8

/* Starts what may start: the retries of a failed batch first, one request each and alone;
 * then up to batch_max queued requests, when no batch is being numbered and the next
 * number is known (or nothing is in flight, so that the counter can be read). */
static void kick(intake_t *self)
{
    if (self->is_kicking) /* a batch failed synchronously inside batch_start() */
        return;
    self->is_kicking = 1;
    while (!self->is_closed) {
        if (self->retry_head && self->nbatches == 0)
            batch_start(self, 1);
        else if (!self->retry_head && self->queue_head && !self->is_numbering &&
                 (self->nbatches == 0 ||
                  (self->nbatches < 2 && self->number_next > 0 && self->queue_len >= OVERLAP_MIN)))
            batch_start(self, 0);
        else
            break;
    }
    self->is_kicking = 0;
}
