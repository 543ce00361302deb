/* api.c — dispatch's HTTP handlers (docs/dispatch-api.md): validate (validate.c), then run
 * the statements (store.c) on the pool and answer from the callback. A create is one
 * transaction of two round trips: insert (returning the document); then outbox event and
 * COMMIT. A PATCH is three: lock the row and read it; write the merged document; outbox
 * event and COMMIT. */
#include <assert.h>
#include <inttypes.h>
#include <stddef.h>
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

static void reply_verr(ac_http_req_t *req, const dispatch_verr_t *err)
{
    ac_http_reply_error(req, err->status, err->code, err->field[0] ? err->field : NULL, "%s",
                        err->message);
}

static const char *req_query(void *arg, const char *name)
{
    return ac_http_req_query(arg, name);
}

static const char *tzdir(const dispatch_t *self)
{
    return self->cfg->tzdir && self->cfg->tzdir[0] ? self->cfg->tzdir : NULL;
}

/* --- one database call per request (ac_call_t) ---------------------------------------- */

typedef struct api_call {
    ac_call_t call;           /* first */
    int64_t expected_version; /* PATCH: 0 = any */
    json_t *fields;           /* owned: PATCH fields */
    json_t *before;           /* owned: the editable view before a PATCH */
    json_t *doc;              /* owned: the engineer after the change */
} api_call_t;

static void call_clear(ac_call_t *call)
{
    api_call_t *c = ac_container_of(call, api_call_t, call);
    json_decref(c->fields);
    json_decref(c->before);
    json_decref(c->doc);
}

static dispatch_t *service_of(const api_call_t *c)
{
    return ac_container_of(c->call.svc, dispatch_t, base);
}

/* NULL (answered) when out of memory or the pool is gone. */
static api_call_t *call_new(dispatch_t *self, ac_http_req_t *req, int is_transaction,
                            const char *id)
{
    static_assert(offsetof(api_call_t, call) == 0, "ac_call_new() allocates an api_call_t");
    ac_call_t *call = ac_call_new(&self->base, req, sizeof(api_call_t), is_transaction, "engineer",
                                  id, call_clear);
    return call ? ac_container_of(call, api_call_t, call) : NULL;
}

static int step_reply_doc(ac_call_t *call, ac_http_req_t *req)
{
    api_call_t *c = ac_container_of(call, api_call_t, call);
    ac_http_reply_json(req, c->before ? 200 : 201, c->doc);
    c->doc = NULL;
    return 0;
}

/* Queues the engineer's event on c->call.txn, then commits; the reply follows. */
static int send_event(api_call_t *c, ac_http_req_t *req, dispatch_event_kind_t kind,
                      const char *const *changed, size_t n_changed)
{
    char event_id[AC_UUID_STRLEN];
    uint8_t *buf;
    size_t len;
    int rc = dispatch_event_pack_engineer(kind, c->doc, ac_http_req_id(req), changed, n_changed,
                                          event_id, &buf, &len);
    if (rc == 0) {
        rc = dispatch_store_add_outbox(c->call.txn, event_id, dispatch_event_topic(kind), buf, len);
        free(buf);
    }
    if (rc == 0) {
        ac_log_at(AC_LOG_DEBUG, NULL, event_id, "%s queued", dispatch_event_topic(kind));
        ac_metrics_add(service_of(c)->metrics,
                       kind == DISPATCH_EV_ENGINEER_CREATED ? "engineers_created_total"
                                                            : "engineers_updated_total",
                       NULL, 1);
    }
    ac_call_send(&c->call, rc, 1, step_reply_doc);
    return 1;
}

/* --- engineers ----------------------------------------------------------------------- */

static int step_created(ac_call_t *call, ac_http_req_t *req)
{
    api_call_t *c = ac_container_of(call, api_call_t, call);
    int rc = ac_db_doc_result(c->call.txn, 0, &c->doc);
    if (rc < 0)
        return ac_service_reply_unexpected(req, rc);
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
        ac_call_send(&c->call, dispatch_store_add_engineer_save(c->call.txn, NULL, 0, doc), 0,
                     step_created);
    json_decref(doc);
}

/* An engineer id from the path; NULL (answered 404) when it cannot name one. */
static const char *engineer_id(ac_http_req_t *req)
{
    const char *id = ac_http_req_param(req, 0);
    if (!id || !ac_uuid_is_valid(id)) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no engineer %.*s", AC_CALL_KEY_MAX,
                            id ? id : "");
        return NULL;
    }
    return id;
}

static int step_get(ac_call_t *call, ac_http_req_t *req)
{
    json_t *doc;
    int rc = ac_db_doc_result(call->txn, 0, &doc);
    return ac_call_reply_doc(call, req, 200, rc, doc);
}

static void on_engineer_get(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *id;
    api_call_t *c;

    if (dispatch_is_refused(self, req) || !(id = engineer_id(req)))
        return;
    if ((c = call_new(self, req, 0, id)))
        ac_call_send(&c->call, dispatch_store_add_engineer_get(c->call.txn, id), 1, step_get);
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
        c->call.limit = in.limit;
        ac_call_send(&c->call, dispatch_store_add_engineer_list(c->call.txn, &f), 1,
                     ac_call_step_page);
    }
}

static int step_patch_saved(ac_call_t *call, ac_http_req_t *req)
{
    api_call_t *c = ac_container_of(call, api_call_t, call);
    const char *changed[8];
    size_t n;
    int rc = ac_db_doc_result(c->call.txn, 0, &c->doc);
    if (rc == AC_ERR_NOTFOUND) { /* cannot happen under the row lock; answer as a conflict */
        ac_http_reply_error(req, 409, "version_conflict", "expected_version",
                            "engineer %s changed meanwhile; read it again", c->call.key);
        return 0;
    }
    if (rc < 0)
        return ac_service_reply_unexpected(req, rc);
    n = dispatch_engineer_changed(c->before, c->doc, changed);
    return send_event(c, req, DISPATCH_EV_ENGINEER_UPDATED, changed, n);
}

static int step_patch_locked(ac_call_t *call, ac_http_req_t *req)
{
    api_call_t *c = ac_container_of(call, api_call_t, call);
    json_t *current, *merged, *doc;
    dispatch_verr_t err;
    int rc = ac_db_doc_result(c->call.txn, 0, &current);

    if (rc == AC_ERR_NOTFOUND)
        return ac_call_reply_not_found(call, req);
    if (rc < 0)
        return ac_service_reply_unexpected(req, rc);
    json_int_t version = json_integer_value(json_object_get(current, "version"));
    if (c->expected_version && c->expected_version != (int64_t)version) {
        ac_http_reply_error(req, 409, "version_conflict", "expected_version",
                            "engineer %s is at version %" JSON_INTEGER_FORMAT ", not %" PRId64,
                            c->call.key, version, c->expected_version);
        json_decref(current);
        return 0;
    }
    merged = dispatch_engineer_merge(current, c->fields);
    if (!merged) {
        json_decref(current);
        ac_service_reply_nomem(req);
        return 0;
    }
    rc = dispatch_validate_engineer(merged, tzdir(service_of(c)), &doc, &err);
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
    rc = dispatch_store_add_engineer_save(c->call.txn, c->call.key, (int64_t)version + 1, doc);
    json_decref(doc);
    ac_call_send(&c->call, rc, 0, step_patch_saved);
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
    ac_call_send(&c->call, dispatch_store_add_engineer_lock(c->call.txn, id), 0, step_patch_locked);
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
    };

    for (size_t i = 0; i < AC_ARRAY_LEN(families); i++)
        (void)ac_metrics_declare(self->metrics, families[i].name, families[i].type,
                                 families[i].help);
    ac_service_declare_db_metrics(self->metrics);
    ac_metrics_on_render(self->metrics, ac_service_on_metrics_render, &self->base);
}
