/* api.c — dispatch's HTTP handlers (docs/dispatch-api.md): validate (validate.c), then run
 * the statements (store.c) on the pool and answer from the callback. A create is one
 * transaction of two round trips: insert (returning the document); then outbox event and
 * COMMIT. A PATCH is three: lock the row and read it; write the merged document; outbox
 * event and COMMIT. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_log.h"
#include "ac_uuid.h"
#include "dispatch.h"
#include "events.h"
#include "ops.h"
#include "store.h"
#include "validate.h"

#define MAX_KEY_LEN 200 /* longest path parameter echoed back */

static void reply_verr(ac_http_req_t *req, const dispatch_verr_t *err)
{
    ac_http_reply_error(req, err->status, err->code, err->field[0] ? err->field : NULL, "%s",
                        err->message);
}

static void reply_nomem(ac_http_req_t *req)
{
    ac_http_reply_error(req, 503, "unavailable", NULL, "out of memory; retry");
}

static const char *req_query(void *arg, const char *name)
{
    return ac_http_req_query(arg, name);
}

static const char *tzdir(const dispatch_t *self)
{
    return self->cfg->tzdir && self->cfg->tzdir[0] ? self->cfg->tzdir : NULL;
}

/* --- one database call per request --------------------------------------------------- */

typedef struct api_call api_call_t;
/* Runs after a successful round trip while the request is attached. Returns 1 when it
 * has started another round trip (the call lives on, even if that failed and freed it),
 * 0 when it has answered. */
typedef int (*api_step_fn)(api_call_t *c, ac_http_req_t *req);

struct api_call {
    dispatch_op_t op; /* first */
    dispatch_t *self;
    ac_db_txn_t *txn; /* owned */
    api_step_fn step;
    char key[MAX_KEY_LEN + 1]; /* the id asked for */
    long limit;                /* list calls: page size */
    int is_write;              /* a transaction: its COMMIT may be in doubt when cut off */
    int is_committing;         /* the round trip in flight carries the COMMIT */
    int64_t expected_version;  /* PATCH: 0 = any */
    json_t *fields;            /* owned: PATCH fields */
    json_t *before;            /* owned: the editable view before a PATCH */
    json_t *doc;               /* owned: the engineer after the change */
};

static void call_free(api_call_t *c)
{
    dispatch_op_detach(c->self, &c->op);
    ac_db_txn_free(&c->txn);
    json_decref(c->fields);
    json_decref(c->before);
    json_decref(c->doc);
    free(c);
}

/* NULL (answered) when out of memory or the pool is gone. */
static api_call_t *call_new(dispatch_t *self, ac_http_req_t *req, int is_transaction,
                            const char *key)
{
    api_call_t *c = calloc(1, sizeof *c);
    if (!c) {
        reply_nomem(req);
        return NULL;
    }
    c->self = self;
    c->is_write = is_transaction;
    snprintf(c->key, sizeof c->key, "%s", key ? key : "");
    c->txn = ac_db_txn_new(self->db, is_transaction);
    if (!c->txn) {
        free(c);
        dispatch_reply_db_error(req, AC_ERR_UNAVAILABLE, NULL);
        return NULL;
    }
    dispatch_op_attach(self, &c->op, req);
    return c;
}

static void on_call_done(ac_db_txn_t *txn, int err, void *arg)
{
    api_call_t *c = arg;
    ac_http_req_t *req = c->op.req;
    if (!req) {
        call_free(c);
        return;
    }
    if (err < 0) {
        if (err == AC_ERR_UNAVAILABLE && c->is_write && c->is_committing)
            ac_http_reply_error(req, 503, "unavailable", NULL,
                                "the database connection was lost during COMMIT: the change "
                                "may or may not have been made; check before retrying");
        else
            dispatch_reply_db_error(req, err, txn);
        call_free(c);
        return;
    }
    if (c->step(c, req) == 0)
        call_free(c);
}

/* Sends the queued statements (add_rc: the result of queueing them). The last round trip
 * commits; an earlier one flushes. On failure the request is answered and c freed. */
static void call_send(api_call_t *c, int add_rc, int is_last, api_step_fn step)
{
    int rc = add_rc;
    c->step = step;
    c->is_committing = is_last;
    if (rc == 0)
        rc = is_last ? ac_db_txn_commit(c->txn, on_call_done, c)
                     : ac_db_txn_flush(c->txn, on_call_done, c);
    if (rc < 0) {
        if (c->op.req) {
            if (rc == AC_ERR_NOMEM)
                reply_nomem(c->op.req);
            else
                dispatch_reply_db_error(c->op.req, rc == AC_ERR_DB ? rc : AC_ERR_UNAVAILABLE, NULL);
        }
        call_free(c);
    }
}

static int step_not_found(api_call_t *c, ac_http_req_t *req)
{
    ac_http_reply_error(req, 404, "not_found", NULL, "no engineer %s", c->key);
    return 0;
}

static int step_internal(ac_http_req_t *req, int rc)
{
    if (rc == AC_ERR_NOMEM)
        reply_nomem(req);
    else
        ac_http_reply_error(req, 500, "internal", NULL, "unexpected answer from the database");
    return 0;
}

static int step_reply_doc(api_call_t *c, ac_http_req_t *req)
{
    ac_http_reply_json(req, c->before ? 200 : 201, c->doc);
    c->doc = NULL;
    return 0;
}

/* Queues the engineer's event on c->txn, then commits; the reply follows. */
static int send_event(api_call_t *c, ac_http_req_t *req, dispatch_event_kind_t kind,
                      const char *const *changed, size_t n_changed)
{
    char event_id[AC_UUID_STRLEN];
    uint8_t *buf;
    size_t len;
    int rc = dispatch_event_pack_engineer(kind, c->doc, ac_http_req_id(req), changed, n_changed,
                                          event_id, &buf, &len);
    if (rc == 0) {
        rc = dispatch_store_add_outbox(c->txn, event_id, dispatch_event_topic(kind), buf, len);
        free(buf);
    }
    if (rc == 0) {
        ac_log_at(AC_LOG_DEBUG, NULL, event_id, "%s queued", dispatch_event_topic(kind));
        ac_metrics_add(c->self->metrics,
                       kind == DISPATCH_EV_ENGINEER_CREATED ? "engineers_created_total"
                                                            : "engineers_updated_total",
                       NULL, 1);
    }
    call_send(c, rc, 1, step_reply_doc);
    return 1;
}

/* --- engineers ----------------------------------------------------------------------- */

static int step_created(api_call_t *c, ac_http_req_t *req)
{
    int rc = dispatch_store_doc_result(c->txn, 0, &c->doc);
    if (rc < 0)
        return step_internal(req, rc);
    return send_event(c, req, DISPATCH_EV_ENGINEER_CREATED, NULL, 0);
}

static void on_engineer_create(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    dispatch_verr_t err;
    json_t *doc;
    api_call_t *c;

    if (dispatch_is_refused(self, req))
        return;
    if (dispatch_validate_engineer(ac_http_req_json(req), tzdir(self), &doc, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    if ((c = call_new(self, req, 1, NULL)))
        call_send(c, dispatch_store_add_engineer_save(c->txn, NULL, 0, doc), 0, step_created);
    json_decref(doc);
}

/* An engineer id from the path; NULL (answered 404) when it cannot name one. */
static const char *engineer_id(ac_http_req_t *req)
{
    const char *id = ac_http_req_param(req, 0);
    if (!id || !ac_uuid_is_valid(id)) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no engineer %.*s", MAX_KEY_LEN,
                            id ? id : "");
        return NULL;
    }
    return id;
}

static int step_get(api_call_t *c, ac_http_req_t *req)
{
    json_t *doc;
    int rc = dispatch_store_doc_result(c->txn, 0, &doc);
    if (rc == AC_ERR_NOTFOUND)
        return step_not_found(c, req);
    if (rc < 0)
        return step_internal(req, rc);
    ac_http_reply_json(req, 200, doc);
    return 0;
}

static void on_engineer_get(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *id;
    api_call_t *c;

    if (dispatch_is_refused(self, req) || !(id = engineer_id(req)))
        return;
    if ((c = call_new(self, req, 0, id)))
        call_send(c, dispatch_store_add_engineer_get(c->txn, id), 1, step_get);
}

static int step_page(api_call_t *c, ac_http_req_t *req)
{
    json_t *body;
    int rc = dispatch_store_page_result(c->txn, 0, c->limit, &body);
    if (rc < 0)
        return step_internal(req, rc);
    ac_http_reply_json(req, 200, body);
    return 0;
}

static void on_engineer_list(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    dispatch_list_in_t in;
    dispatch_verr_t err;
    api_call_t *c;

    if (dispatch_is_refused(self, req))
        return;
    if (dispatch_validate_engineer_filter(req_query, req, &in, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    dispatch_engineer_filter_t f = {
        .role = in.role,
        .region = in.region,
        .skill = in.skill,
        .availability = in.availability,
        .cursor = in.cursor,
        .limit = in.limit,
    };
    if ((c = call_new(self, req, 0, NULL))) {
        c->limit = in.limit;
        call_send(c, dispatch_store_add_engineer_list(c->txn, &f), 1, step_page);
    }
}

static int step_patch_saved(api_call_t *c, ac_http_req_t *req)
{
    const char *changed[8];
    size_t n;
    int rc = dispatch_store_doc_result(c->txn, 0, &c->doc);
    if (rc == AC_ERR_NOTFOUND) { /* cannot happen under the row lock; answer as a conflict */
        ac_http_reply_error(req, 409, "version_conflict", "expected_version",
                            "engineer %s changed meanwhile; read it again", c->key);
        return 0;
    }
    if (rc < 0)
        return step_internal(req, rc);
    n = dispatch_engineer_changed(c->before, c->doc, changed);
    return send_event(c, req, DISPATCH_EV_ENGINEER_UPDATED, changed, n);
}

static int step_patch_locked(api_call_t *c, ac_http_req_t *req)
{
    json_t *current, *merged, *doc;
    dispatch_verr_t err;
    int rc = dispatch_store_doc_result(c->txn, 0, &current);

    if (rc == AC_ERR_NOTFOUND)
        return step_not_found(c, req);
    if (rc < 0)
        return step_internal(req, rc);
    json_int_t version = json_integer_value(json_object_get(current, "version"));
    if (c->expected_version && c->expected_version != (int64_t)version) {
        ac_http_reply_error(req, 409, "version_conflict", "expected_version",
                            "engineer %s is at version %" JSON_INTEGER_FORMAT ", not %" PRId64,
                            c->key, version, c->expected_version);
        json_decref(current);
        return 0;
    }
    merged = dispatch_engineer_merge(current, c->fields);
    if (!merged) {
        json_decref(current);
        reply_nomem(req);
        return 0;
    }
    rc = dispatch_validate_engineer(merged, tzdir(c->self), &doc, &err);
    json_decref(merged);
    if (rc < 0) {
        json_decref(current);
        reply_verr(req, &err);
        return 0;
    }
    if (dispatch_engineer_changed(current, doc, (const char *[8]){0}) == 0) {
        /* nothing to do: no version bump, no event (rolled back on free) */
        json_decref(doc);
        c->doc = current;
        ac_http_reply_json(req, 200, c->doc);
        c->doc = NULL;
        return 0;
    }
    c->before = current;
    rc = dispatch_store_add_engineer_save(c->txn, c->key, (int64_t)version + 1, doc);
    json_decref(doc);
    call_send(c, rc, 0, step_patch_saved);
    return 1;
}

static void on_engineer_patch(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *id;
    dispatch_verr_t err;
    int64_t expected_version;
    json_t *fields;
    api_call_t *c;

    if (dispatch_is_refused(self, req) || !(id = engineer_id(req)))
        return;
    if (dispatch_validate_engineer_patch(ac_http_req_json(req), &expected_version, &fields, &err) <
        0) {
        reply_verr(req, &err);
        return;
    }
    if (!(c = call_new(self, req, 1, id))) {
        json_decref(fields);
        return;
    }
    c->fields = fields;
    c->expected_version = expected_version;
    call_send(c, dispatch_store_add_engineer_lock(c->txn, id), 0, step_patch_locked);
}

/* --- routes and metrics -------------------------------------------------------------- */

#define READERS (AC_ROLE_AGENT | AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR)
#define WRITERS AC_ROLE_SUPERVISOR /* admin is always allowed */

const ac_http_route_t dispatch_engineer_routes[] = {
    {"POST", "/v1/engineers", WRITERS, on_engineer_create, "engineers_create"},
    {"GET", "/v1/engineers", READERS, on_engineer_list, "engineers_list"},
    {"GET", "/v1/engineers/{}", READERS, on_engineer_get, "engineers_get"},
    {"PATCH", "/v1/engineers/{}", WRITERS, on_engineer_patch, "engineers_patch"},
    {NULL, NULL, 0, NULL, NULL},
};

/* Refreshes the gauges and counters taken from other modules at every scrape. */
static void on_metrics_render(ac_metrics_t *m, void *arg)
{
    dispatch_t *self = arg;
    ac_db_stats_t st;

    ac_metrics_set(m, "requests_in_flight", NULL, (double)self->nops);
    if (!self->db)
        return;
    ac_db_stats(self->db, &st);
    ac_metrics_set(m, "db_connections_ready", NULL, st.ready);
    ac_metrics_set(m, "db_txns_queued", NULL, st.queued);
    ac_metrics_add(m, "db_txns_total", NULL, (double)(st.txns - self->db_seen.txns));
    ac_metrics_add(m, "db_errors_total", NULL, (double)(st.errors - self->db_seen.errors));
    ac_metrics_add(m, "db_disconnects_total", NULL,
                   (double)(st.disconnects - self->db_seen.disconnects));
    ac_metrics_add(m, "db_reconnects_total", NULL,
                   (double)(st.reconnects - self->db_seen.reconnects));
    self->db_seen = st;
}

void dispatch_api_setup(dispatch_t *self)
{
    static const struct {
        const char *name;
        ac_metric_type_t type;
        const char *help;
    } families[] = {
        {"engineers_created_total", AC_METRIC_COUNTER, "Engineers created"},
        {"engineers_updated_total", AC_METRIC_COUNTER, "PATCHes that changed an engineer"},
        {"events_total", AC_METRIC_COUNTER, "Events put in the outbox, by topic"},
        {"emitted_events_total", AC_METRIC_COUNTER,
         "Events queued by SQL (dispatch.emit) and moved to the outbox"},
        {"requests_in_flight", AC_METRIC_GAUGE, "Requests waiting on the database"},
        {"db_connections_ready", AC_METRIC_GAUGE, "Database pool connections ready"},
        {"db_txns_queued", AC_METRIC_GAUGE, "Transactions waiting for a pool connection"},
        {"db_txns_total", AC_METRIC_COUNTER, "Database transactions finished"},
        {"db_errors_total", AC_METRIC_COUNTER, "Statements that failed with an SQL error"},
        {"db_disconnects_total", AC_METRIC_COUNTER, "Pool connections lost"},
        {"db_reconnects_total", AC_METRIC_COUNTER, "Pool connections (re)established"},
    };

    self->ops.prev = self->ops.next = &self->ops;
    self->ops.req = NULL;
    for (size_t i = 0; i < AC_ARRAY_LEN(families); i++)
        (void)ac_metrics_declare(self->metrics, families[i].name, families[i].type,
                                 families[i].help);
    ac_metrics_on_render(self->metrics, on_metrics_render, self);
}
