/* follow.c — intake keeps a ticket's status and history current from dispatch's events
 * (issue 4, item 4; issue 3, item 3).
 *
 * Two halves, so that each dispatch event is acted on exactly once and each status change
 * is an ordinary one:
 *   1. The consumer of AC_INTAKE_FOLLOW (main.c; checkpoint in intake.consumer_checkpoints)
 *      routes dispatch's events here by payload type. A handler decides which status the
 *      event asks for (the table below) and queues it in intake.follow_inbox, in the
 *      consumer's transaction (migrations/005_follow.sql).
 *   2. The applier takes the oldest queued changes (up to BATCH_MAX, in the order they
 *      were queued) with their tickets locked, checks each against intake's transition
 *      table (validate.c, the same as POST .../transitions) on the ticket as the changes
 *      before it left it, and in one transaction writes each ticket (version + 1), a
 *      status history row by actor "dispatch" with a reason naming the event, the
 *      ticket.* event in intake.outbox, and deletes the inbox rows. A move the table
 *      refuses (a visit step for a cancelled ticket), or one to the status the ticket
 *      already has (the same event twice), deletes the row, logs a line at info and
 *      changes nothing else: it never stalls the stream. When a batch fails, its changes
 *      are applied again one per transaction; a change that keeps failing alone is set
 *      aside after MAX_ATTEMPTS (failed_at) and the rows behind it go on.
 *
 *   dispatch event                          status asked for   only from
 *   ticket.assigned (diagnosis assignment)  diagnosing         new, reopened
 *   plan.accepted                           planned            (the table: diagnosing)
 *   visit.started, visit.resumed            in_progress        (the table)
 *   visit.paused (waiting_parts)            waiting_parts      (the table: in_progress)
 *   visit.paused (waiting_customer)         waiting_customer   (the table)
 *   visit.confirmed                         resolved           in_progress, diagnosing
 *   repair.shipped                          waiting_external   (the table: in_progress)
 *   repair.returned                         in_progress        waiting_external
 *   anything else (visit.travel/arrived/completed, plan.proposed, ...)  none
 * "only from" narrows the transition table where a move it allows would be wrong for
 * that event: a late diagnosis assignment must not take a planned ticket back to
 * diagnosing, a confirmed visit must not count as a first-contact resolution of a new
 * ticket, a returned unit must not end a wait on the customer.
 *
 * No loop: intake changes a status only on these dispatch events; dispatch follows
 * intake's ticket.* events, and on a mere status change it only updates its view, its
 * SLA clocks and (on resolved/closed/cancelled) releases assignments — none of which is
 * an event intake acts on (assignment.released is not followed).
 *
 * Owns: the applier (intake_follower_t): its timer, its transaction in flight and the
 * changes it holds. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_log.h"
#include "ac_time.h"
#include "ac_uuid.h"
#include "events.h"
#include "intake.h"
#include "store.h"

#define POLL_S       5.0 /* a look at the inbox without a NOTIFY (missed ones) */
#define RETRY_MIN_S  0.2 /* after a failure: exponential backoff */
#define RETRY_MAX_S  30.0
#define MAX_ATTEMPTS 5   /* failures of one change before it is set aside */
#define BATCH_MAX    100 /* changes per transaction */
#define GATHER_S     0.1 /* a NOTIFY starts a take at most this often (see kick_soon()) */
#define ACTOR        "dispatch"

/* --- 1. the consumer: which status each event asks for ----------------------------------- */

/* Queues `to` for the event's ticket; AC_ERR_INVALID (dead-lettered) for an event without
 * a usable ticket or id. */
static int enqueue(const ac_consumer_event_t *ev, ac_db_txn_t *txn,
                   const Aftercare__V1__DispatchTicket *t, int to, const char *only_from,
                   const char *reason)
{
    const Aftercare__V1__Envelope *env = ev->env;
    if (!t || !t->id || !ac_uuid_is_valid(t->id) || !t->number || !t->number[0] || !env->id ||
        !ac_uuid_is_valid(env->id)) {
        ac_log_at(AC_LOG_WARN, t && t->number ? t->number : NULL, env->id,
                  "%s from %s without a usable ticket or event id: not applied", ev->topic,
                  ev->source);
        return AC_ERR_INVALID;
    }
    if (!txn) /* memory mode: intake always runs its consumer on the database */
        return 0;
    return intake_store_add_follow_enqueue(txn, env->id, ev->source, ev->topic, t->id, t->number,
                                           intake_status_names[to], only_from, reason,
                                           env->correlation_id ? env->correlation_id : "");
}

static int on_ticket_assigned(const ac_consumer_event_t *ev, ac_db_txn_t *txn, void *arg)
{
    const Aftercare__V1__TicketAssigned *p = ev->env->ticket_assigned;
    const Aftercare__V1__Assignment *a = p ? p->assignment : NULL;
    char reason[200];
    (void)arg;
    if (!a || a->kind != AFTERCARE__V1__ASSIGNMENT_KIND__ASSIGNMENT_KIND_DIAGNOSIS)
        return 0; /* the work assignment follows an accepted plan: the ticket is planned */
    snprintf(reason, sizeof reason, "ticket.assigned: diagnosis by %.100s",
             a->engineer_name && a->engineer_name[0] ? a->engineer_name : "an engineer");
    return enqueue(ev, txn, p->ticket, INTAKE_ST_DIAGNOSING, "{new,reopened}", reason);
}

static int on_plan_changed(const ac_consumer_event_t *ev, ac_db_txn_t *txn, void *arg)
{
    static const char *const modes[] = {"", "remote", "on_site", "depot_repair", "external_repair"};
    const Aftercare__V1__PlanChanged *p = ev->env->plan_changed;
    const Aftercare__V1__ServicePlan *plan = p ? p->plan : NULL;
    char reason[200];
    (void)arg;
    if (!p || strcmp(ev->topic, "plan.accepted") != 0)
        return 0;
    if (plan && plan->mode > 0 && (size_t)plan->mode < AC_ARRAY_LEN(modes))
        snprintf(reason, sizeof reason, "plan.accepted: revision %d, %s", (int)plan->revision,
                 modes[plan->mode]);
    else
        snprintf(reason, sizeof reason, "plan.accepted");
    return enqueue(ev, txn, p->ticket, INTAKE_ST_PLANNED, NULL, reason);
}

static int on_work_step(const ac_consumer_event_t *ev, ac_db_txn_t *txn, void *arg)
{
    const Aftercare__V1__WorkStepRecorded *p = ev->env->work_step_recorded;
    const Aftercare__V1__WorkRecord *r = p ? p->record : NULL;
    int is_remote = r && r->kind && strcmp(r->kind, "remote") == 0;
    char reason[200];
    const char *only_from = NULL;
    int to;
    (void)arg;
    if (!p)
        return 0;
    switch (p->step) {
    case AFTERCARE__V1__WORK_STEP__WORK_STEP_STARTED:
        to = INTAKE_ST_IN_PROGRESS;
        snprintf(reason, sizeof reason, "visit.started: %s",
                 is_remote ? "remote session started" : "work on site started");
        break;
    case AFTERCARE__V1__WORK_STEP__WORK_STEP_RESUMED:
        to = INTAKE_ST_IN_PROGRESS;
        snprintf(reason, sizeof reason, "visit.resumed: work resumed");
        break;
    case AFTERCARE__V1__WORK_STEP__WORK_STEP_PAUSED:
        if (r && r->pause_reason && strcmp(r->pause_reason, "waiting_parts") == 0) {
            to = INTAKE_ST_WAITING_PARTS;
            snprintf(reason, sizeof reason, "visit.paused: waiting for parts");
        } else if (r && r->pause_reason && strcmp(r->pause_reason, "waiting_customer") == 0) {
            to = INTAKE_ST_WAITING_CUSTOMER;
            snprintf(reason, sizeof reason, "visit.paused: waiting for the customer");
        } else {
            ac_log_at(AC_LOG_WARN, p->ticket ? p->ticket->number : NULL, ev->env->id,
                      "visit.paused with pause reason \"%.40s\": no status for it",
                      r && r->pause_reason ? r->pause_reason : "");
            return 0;
        }
        break;
    case AFTERCARE__V1__WORK_STEP__WORK_STEP_CONFIRMED:
        to = INTAKE_ST_RESOLVED;
        only_from = "{in_progress,diagnosing}";
        snprintf(reason, sizeof reason, "visit.confirmed: customer confirmed (%.100s)",
                 r && r->confirmation && r->confirmation->name ? r->confirmation->name : "");
        break;
    default: /* travel, arrived, completed: the status stays */
        return 0;
    }
    return enqueue(ev, txn, p->ticket, to, only_from, reason);
}

static int on_repair_step(const ac_consumer_event_t *ev, ac_db_txn_t *txn, void *arg)
{
    const Aftercare__V1__RepairStep *p = ev->env->repair_step;
    const char *vendor = p && p->sendout && p->sendout->vendor_name ? p->sendout->vendor_name : "";
    char reason[200];
    (void)arg;
    if (!p)
        return 0;
    if (strcmp(ev->topic, "repair.shipped") == 0) {
        snprintf(reason, sizeof reason, "repair.shipped: unit sent to %.100s", vendor);
        return enqueue(ev, txn, p->ticket, INTAKE_ST_WAITING_EXTERNAL, NULL, reason);
    }
    if (strcmp(ev->topic, "repair.returned") == 0) {
        snprintf(reason, sizeof reason, "repair.returned: unit back from %.100s", vendor);
        return enqueue(ev, txn, p->ticket, INTAKE_ST_IN_PROGRESS, "{waiting_external}", reason);
    }
    return 0;
}

const ac_consumer_route_t intake_follow_routes[] = {
    {&aftercare__v1__ticket_assigned__descriptor, on_ticket_assigned},
    {&aftercare__v1__plan_changed__descriptor, on_plan_changed},
    {&aftercare__v1__work_step_recorded__descriptor, on_work_step},
    {&aftercare__v1__repair_step__descriptor, on_repair_step},
    {NULL, NULL},
};

/* --- 2. the applier ------------------------------------------------------------------------ */

/* What one taken change came to, counted in the metrics once its transaction committed. */
typedef struct follow_outcome {
    const char *outcome; /* "applied" | "skipped" */
    int to;              /* the status it moved to (enum intake_status), when applied */
} follow_outcome_t;

/* A ticket the batch changed: its document (in `taken`) and its version before. */
typedef struct follow_touched {
    json_t *doc;
    int64_t old_version;
} follow_touched_t;

typedef struct intake_follower {
    intake_t *intake;           /* borrowed: the owner */
    ev_timer timer;             /* the next look at the inbox: POLL_S, or a retry's delay */
    ev_timer gather;            /* kick_soon()'s delay */
    double last_take;           /* ev_now() of the last take */
    ac_backoff_t backoff;       /* retry delays after failures */
    ac_db_txn_t *txn;           /* owned: the changes in flight */
    json_t *taken;              /* owned: follow_take()'s answer, {"items", "tickets", "now"} */
    size_t n;                   /* changes taken (items of `taken`) */
    int64_t *ids;               /* owned: their inbox rows */
    follow_outcome_t *outcomes; /* owned: what each came to */
    /* the batch's writes, added as three statements once every change is decided */
    follow_touched_t *touched; /* owned: the tickets changed, ntouched of n */
    size_t ntouched;
    const char **history; /* owned array, borrowed strings: INTAKE_HISTORY_NCOLS a change */
    size_t nhistory;
    ac_outbox_rows_t events;
    int has_events; /* `events` is initialised */
    int limit;      /* changes per take: BATCH_MAX, or 1 after a failed batch */
    int is_busy;    /* a transaction is in flight */
    int is_again;   /* woken while busy: look again when done */
} intake_follower_t;

static void kick(intake_follower_t *f);
static void on_gather(struct ev_loop *loop, ev_timer *w, int revents);

static const char *item_str(const json_t *item, const char *key)
{
    const char *s = json_string_value(json_object_get(item, key));
    return s ? s : "";
}

/* The item's "only_from" (a JSON array; null: any) lets `from` go. */
static int is_from_allowed(const json_t *item, int from)
{
    const json_t *only = json_object_get(item, "only_from");
    const json_t *s;
    size_t i;
    if (!json_is_array(only))
        return 1;
    json_array_foreach(only, i, s)
    {
        if (json_is_string(s) && strcmp(json_string_value(s), intake_status_names[from]) == 0)
            return 1;
    }
    return 0;
}

static void count(intake_follower_t *f, const char *outcome)
{
    char labels[48];
    snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome);
    ac_metrics_add(f->intake->metrics, "follow_changes_total", labels, 1);
}

/* Ends the transaction (rolled back unless committed) and the changes taken. */
static void finish(intake_follower_t *f)
{
    ac_db_txn_free(&f->txn);
    json_decref(f->taken);
    f->taken = NULL;
    free(f->ids);
    f->ids = NULL;
    free(f->outcomes);
    f->outcomes = NULL;
    free(f->touched);
    f->touched = NULL;
    f->ntouched = 0;
    free(f->history);
    f->history = NULL;
    f->nhistory = 0;
    if (f->has_events)
        ac_outbox_rows_clear(&f->events);
    f->has_events = 0;
    f->n = 0;
    f->is_busy = 0;
}

static void retry_later(intake_follower_t *f)
{
    finish(f);
    if (f->intake->is_closed)
        return;
    ev_timer_stop(f->intake->loop, &f->timer);
    ev_timer_set(&f->timer, ac_backoff_next(&f->backoff), POLL_S);
    ev_timer_start(f->intake->loop, &f->timer);
}

/* A batch failed: the same changes again at once, one per transaction, so that the one
 * that fails is found and counted against (record_failure()) without holding up the
 * others. Back to batches after the first single change commits. */
static void retry_one_by_one(intake_follower_t *f, const char *why)
{
    ac_warn("follow: a batch of %zu changes failed (%s); applying them one by one", f->n, why);
    finish(f);
    f->limit = 1;
    kick(f);
}

static void on_failure_recorded(ac_db_txn_t *txn, int err, void *arg)
{
    intake_follower_t *f = arg;
    const json_t *item = json_array_get(json_object_get(f->taken, "items"), 0);
    json_t *doc = NULL;
    if (err == 0 && ac_db_doc_result(txn, 0, &doc) == 0) {
        json_int_t attempts = json_integer_value(json_object_get(doc, "attempts"));
        if (json_is_true(json_object_get(doc, "is_given_up"))) {
            ac_log_at(AC_LOG_ERROR, item_str(item, "ticket_number"), item_str(item, "event_id"),
                      "follow: %s -> %s failed %" JSON_INTEGER_FORMAT
                      " times: set aside (intake.follow_inbox id %" PRId64
                      ", failed_at); the changes behind it go on",
                      item_str(item, "topic"), item_str(item, "to_status"), attempts, f->ids[0]);
            count(f, "failed");
            ac_backoff_reset(&f->backoff);
        }
    }
    json_decref(doc);
    retry_later(f);
}

/* A single change failed for a reason that may not go away: one more attempt on its row. */
static void record_failure(intake_follower_t *f, const char *why)
{
    const json_t *item = json_array_get(json_object_get(f->taken, "items"), 0);
    ac_log_at(AC_LOG_WARN, item_str(item, "ticket_number"), item_str(item, "event_id"),
              "follow: %s -> %s failed: %s", item_str(item, "topic"), item_str(item, "to_status"),
              why);
    ac_db_txn_free(&f->txn);
    if (f->intake->is_closed || !(f->txn = ac_db_txn_new(f->intake->db, 1)) ||
        intake_store_add_follow_failed(f->txn, f->ids[0], why, MAX_ATTEMPTS) < 0 ||
        ac_db_txn_commit(f->txn, on_failure_recorded, f) < 0)
        retry_later(f);
}

static int is_retryable_state(const char *state)
{
    return strncmp(state, "40", 2) == 0 || strncmp(state, "53", 2) == 0 ||
           strncmp(state, "57", 2) == 0 || strncmp(state, "08", 2) == 0;
}

/* The taken changes cannot go through: a batch is retried one by one, a single change
 * counts a failed attempt. */
static void batch_failed(intake_follower_t *f, const char *why)
{
    if (f->n > 1)
        retry_one_by_one(f, why);
    else
        record_failure(f, why);
}

static void on_committed(ac_db_txn_t *txn, int err, void *arg)
{
    intake_follower_t *f = arg;
    int is_full;
    if (err == AC_ERR_DB && !is_retryable_state(ac_db_txn_sqlstate(txn))) {
        char why[300];
        snprintf(why, sizeof why, "SQLSTATE %s: %s", ac_db_txn_sqlstate(txn),
                 ac_db_txn_errmsg(txn));
        batch_failed(f, why);
        return;
    }
    if (err < 0) { /* the database is away: the rows are still there */
        ac_warn("follow: applying %zu changes failed (%s); retrying", f->n, ac_strerror(err));
        retry_later(f);
        return;
    }
    for (size_t i = 0; i < f->n; i++) {
        count(f, f->outcomes[i].outcome);
        if (strcmp(f->outcomes[i].outcome, "applied") == 0) {
            char labels[64];
            snprintf(labels, sizeof labels, "to=\"%s\"", intake_status_names[f->outcomes[i].to]);
            ac_metrics_add(f->intake->metrics, "ticket_transitions_total", labels, 1);
        }
    }
    ac_backoff_reset(&f->backoff);
    is_full = f->n >= (size_t)f->limit;
    f->limit = BATCH_MAX;
    finish(f);
    if (is_full || f->is_again) { /* the next ones (else the next NOTIFY says so) */
        f->is_again = 0;
        kick(f);
    }
}

/* The move from -> to at `now`: the ticket's document (changed in place, so that a later
 * change of the same ticket in the batch starts from it), its history row and its event,
 * collected for the batch's statements. */
static int add_status_change(intake_follower_t *f, const json_t *item, json_t *doc, int from,
                             int to, const char *now)
{
    const char *reason = item_str(item, "reason");
    const char *corr = item_str(item, "correlation_id");
    json_int_t version = json_integer_value(json_object_get(doc, "version"));
    char event_id[AC_UUID_STRLEN];
    uint8_t *buf;
    size_t len, k;
    int rc = 0;

    for (k = 0; k < f->ntouched && f->touched[k].doc != doc; k++)
        ;
    if (k == f->ntouched) {
        f->touched[k].doc = doc;
        f->touched[k].old_version = (int64_t)version;
        f->ntouched++;
    }
    rc |= json_object_set_new(doc, "status", json_string(intake_status_names[to]));
    if (to == INTAKE_ST_RESOLVED)
        rc |= json_object_set_new(doc, "resolved_at", json_string(now));
    else if (to == INTAKE_ST_CLOSED)
        rc |= json_object_set_new(doc, "closed_at", json_string(now));
    else if (to == INTAKE_ST_REOPENED) {
        rc |= json_object_set_new(doc, "resolved_at", json_null());
        rc |= json_object_set_new(doc, "closed_at", json_null());
    }
    rc |= json_object_set_new(doc, "version", json_integer(version + 1));
    rc |= json_object_set_new(doc, "updated_at", json_string(now));
    if (rc < 0)
        return AC_ERR_NOMEM;

    intake_event_t ev = {
        .kind = intake_event_kind_for_status(to),
        .ticket = doc,
        .correlation_id = corr[0] ? corr : item_str(item, "event_id"),
        .from_status = from,
        .to_status = to,
        .reason = reason,
        .actor = ACTOR,
    };
    if ((rc = intake_event_pack(&ev, event_id, &buf, &len)) < 0)
        return rc;
    rc = ac_outbox_rows_append(&f->events, event_id, intake_event_topic(ev.kind), buf, len);
    free(buf);
    if (rc < 0)
        return AC_ERR_NOMEM;
    const char **row = &f->history[f->nhistory++ * INTAKE_HISTORY_NCOLS];
    row[0] = json_string_value(json_object_get(doc, "id"));
    row[1] = intake_status_names[from];
    row[2] = intake_status_names[to];
    row[3] = reason;
    row[4] = ACTOR;
    return 0;
}

/* The batch's writes: the tickets, their history rows, their events. */
static int add_writes(intake_follower_t *f)
{
    int rc = 0;
    if (f->ntouched == 0)
        return 0;
    char **cells = calloc(f->ntouched * INTAKE_UPDATE_NCOLS, sizeof *cells);
    if (!cells)
        return AC_ERR_NOMEM;
    for (size_t k = 0; rc == 0 && k < f->ntouched; k++)
        rc = intake_store_ticket_update_cells(f->touched[k].doc, f->touched[k].old_version,
                                              &cells[k * INTAKE_UPDATE_NCOLS]);
    if (rc == 0)
        rc = intake_store_add_ticket_updates(f->txn, (const char *const *)cells, f->ntouched);
    for (size_t i = 0; i < f->ntouched * INTAKE_UPDATE_NCOLS; i++)
        free(cells[i]);
    free(cells);
    if (rc == 0)
        rc = intake_store_add_histories(f->txn, f->history, f->nhistory);
    if (rc == 0)
        rc = intake_store_add_outbox_rows(f->txn, &f->events);
    return rc;
}

/* Decides change i (the ticket's document as the changes before it in the batch left it)
 * and adds its writes; < 0 when they could not be added. */
static int apply_one(intake_follower_t *f, size_t i, const char *now)
{
    const json_t *item = json_array_get(json_object_get(f->taken, "items"), i);
    const char *number = item_str(item, "ticket_number");
    const char *event_id = item_str(item, "event_id");
    const char *topic = item_str(item, "topic");
    const char *to_name = item_str(item, "to_status");
    json_t *doc =
        json_object_get(json_object_get(f->taken, "tickets"), item_str(item, "ticket_id"));
    int to = INTAKE_ENUM_PARSE(intake_status_names, to_name);
    int from =
        INTAKE_ENUM_PARSE(intake_status_names, json_string_value(json_object_get(doc, "status")));
    int rc;

    f->ids[i] = (int64_t)json_integer_value(json_object_get(item, "id"));
    f->outcomes[i].outcome = "skipped";
    if (!json_is_object(doc)) {
        ac_log_at(AC_LOG_WARN, number, event_id,
                  "follow: %s for a ticket intake does not have: "
                  "skipped",
                  topic);
    } else if (!to || !from) {
        ac_log_at(AC_LOG_WARN, number, event_id,
                  "follow: %s asks for status \"%s\" from \"%s\": "
                  "skipped",
                  topic, to_name, from ? intake_status_names[from] : "?");
    } else if (from == to) {
        ac_log_at(AC_LOG_INFO, number, event_id, "follow: %s: the ticket is %s already", topic,
                  to_name);
    } else if (!is_from_allowed(item, from)) {
        ac_log_at(AC_LOG_INFO, number, event_id,
                  "follow: %s: the ticket is %s and this event moves it to %s only from "
                  "another status: skipped",
                  topic, intake_status_names[from], to_name);
    } else if (!intake_transition_allowed(from, to)) {
        ac_log_at(AC_LOG_INFO, number, event_id,
                  "follow: %s: the ticket is %s and cannot move to %s: skipped", topic,
                  intake_status_names[from], to_name);
    } else {
        if ((rc = add_status_change(f, item, doc, from, to, now)) < 0)
            return rc;
        f->outcomes[i].outcome = "applied";
        f->outcomes[i].to = to;
        ac_log_at(AC_LOG_INFO, number, event_id, "follow: %s: %s -> %s", topic,
                  intake_status_names[from], to_name);
    }
    return 0;
}

static void on_taken(ac_db_txn_t *txn, int err, void *arg)
{
    intake_follower_t *f = arg;
    const json_t *items;
    const char *now;
    int rc;

    if (err < 0) {
        ac_warn("follow: reading the queued changes failed (%s%s%s); retrying", ac_strerror(err),
                err == AC_ERR_DB ? ": " : "", err == AC_ERR_DB ? ac_db_txn_errmsg(txn) : "");
        retry_later(f);
        return;
    }
    rc = ac_db_doc_result(txn, 0, &f->taken);
    if (rc == AC_ERR_NOTFOUND) { /* nothing to do (or another instance is at it) */
        finish(f);
        if (f->is_again) {
            f->is_again = 0;
            kick(f);
        }
        return;
    }
    items = json_object_get(f->taken, "items");
    f->n = json_array_size(items);
    if (rc < 0 || f->n == 0 || !json_is_object(json_object_get(f->taken, "tickets"))) {
        ac_warn("follow: unexpected answer from intake.follow_take(); retrying");
        retry_later(f);
        return;
    }
    f->ids = calloc(f->n, sizeof *f->ids);
    f->outcomes = calloc(f->n, sizeof *f->outcomes);
    f->touched = calloc(f->n, sizeof *f->touched);
    f->history = calloc(f->n * INTAKE_HISTORY_NCOLS, sizeof *f->history);
    f->has_events = f->ids && ac_outbox_rows_init(&f->events) == 0;
    if (!f->ids || !f->outcomes || !f->touched || !f->history || !f->has_events) {
        ac_warn("follow: out of memory; retrying");
        retry_later(f);
        return;
    }
    now = json_string_value(json_object_get(f->taken, "now"));
    for (size_t i = 0; i < f->n; i++) {
        if ((rc = apply_one(f, i, now ? now : "")) < 0) {
            batch_failed(f, rc == AC_ERR_NOMEM ? "out of memory" : "the event does not pack");
            return;
        }
    }
    if ((rc = add_writes(f)) < 0) {
        batch_failed(f, rc == AC_ERR_NOMEM ? "out of memory" : "cannot add the writes");
        return;
    }
    if (intake_store_add_follow_done(f->txn, f->ids, f->n) < 0 ||
        ac_db_txn_commit(f->txn, on_committed, f) < 0)
        retry_later(f);
}

/* Takes the next changes, unless some are in flight (then once more after them). */
static void kick(intake_follower_t *f)
{
    intake_t *self = f->intake;
    if (self->is_closed)
        return;
    if (f->is_busy) {
        f->is_again = 1;
        return;
    }
    f->last_take = ev_now(self->loop);
    if (!(f->txn = ac_db_txn_new(self->db, 1)) ||
        intake_store_add_follow_take(f->txn, f->limit) < 0 ||
        ac_db_txn_flush(f->txn, on_taken, f) < 0) {
        retry_later(f); /* no connection yet: the timer comes back */
        return;
    }
    f->is_busy = 1;
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    intake_follower_t *f = ac_container_of(w, intake_follower_t, timer);
    (void)loop;
    (void)revents;
    kick(f);
}

int intake_follow_start(intake_t *self)
{
    intake_follower_t *f = calloc(1, sizeof *f);
    if (!f) {
        ac_error("intake: out of memory");
        return -1;
    }
    f->intake = self;
    f->limit = BATCH_MAX;
    ac_backoff_init(&f->backoff, RETRY_MIN_S, RETRY_MAX_S);
    (void)ac_metrics_declare(self->metrics, "follow_changes_total", AC_METRIC_COUNTER,
                             "Ticket status changes asked for by followed events, by outcome "
                             "(applied, skipped: not allowed or already so, failed: set aside)");
    /* at once (what a restart left queued), then every POLL_S; a retry re-arms it with its
     * delay first */
    ev_timer_init(&f->timer, on_timer, 0., POLL_S);
    ev_timer_start(self->loop, &f->timer);
    ev_init(&f->gather, on_gather);
    self->follower = f;
    return 0;
}

void intake_follow_stop(intake_t *self)
{
    intake_follower_t *f = self->follower;
    if (!f)
        return;
    if (self->loop) {
        ev_timer_stop(self->loop, &f->timer);
        ev_timer_stop(self->loop, &f->gather);
    }
    finish(f); /* changes in flight roll back; their rows stay queued */
    free(f);
    self->follower = NULL;
}

static void on_gather(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    kick(ac_container_of(w, intake_follower_t, gather));
}

/* A NOTIFY (queued changes): taken at once, unless a take started less than GATHER_S
 * ago — then when that much has passed. The changes are not on anyone's critical path
 * (dispatch has published its event already), and a stream of them is applied in batches
 * of dozens rather than a few a transaction: a transaction costs intake's database about
 * as much as the first ten changes in it. */
static void kick_soon(intake_follower_t *f)
{
    double wait = f->last_take + GATHER_S - ev_now(f->intake->loop);
    if (wait <= 0) {
        kick(f);
        return;
    }
    if (!ev_is_active(&f->gather)) {
        ev_timer_set(&f->gather, wait, 0.);
        ev_timer_start(f->intake->loop, &f->gather);
    }
}

void intake_follow_on_notify(intake_t *self)
{
    if (self->follower)
        kick_soon(self->follower);
}
