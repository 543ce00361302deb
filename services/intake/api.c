/* api.c — intake's HTTP handlers (docs/api.md): validate (validate.c), then run the
 * statements (store.c) on the pool and answer from the callback. Ticket creates go
 * through the group commit (batch.c). A ticket change (PATCH, transition) is one
 * transaction of two round trips: lock the row and read it; then update, history,
 * outbox event and COMMIT together. */
#include <assert.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_log.h"
#include "ac_time.h"
#include "ac_uuid.h"
#include "events.h"
#include "intake.h"
#include "store.h"

#define US_PER_DAY (INT64_C(86400) * 1000000)

static void reply_verr(ac_http_req_t *req, const intake_verr_t *err)
{
    ac_http_reply_error(req, err->status, err->code, err->field[0] ? err->field : NULL, "%s",
                        err->message);
}

static const char *req_query(void *arg, const char *name)
{
    return ac_http_req_query(arg, name);
}

/* --- one database call per request (ac_call_t) ---------------------------------------- */

typedef struct api_call {
    ac_call_t call;    /* first */
    char message[256]; /* prepared error text (product conflict) */
    /* ticket changes */
    intake_patch_in_t patch;
    intake_transition_in_t transition;
    char *reason; /* owned copy of transition.reason */
    json_t *doc;  /* owned: the ticket after the change */
} api_call_t;

static void call_clear(ac_call_t *call)
{
    api_call_t *c = ac_container_of(call, api_call_t, call);
    intake_patch_in_clear(&c->patch);
    json_decref(c->doc);
    free(c->reason);
}

/* NULL (answered) when out of memory or the pool is gone. */
static api_call_t *call_new(intake_t *self, ac_http_req_t *req, int is_transaction,
                            const char *what, const char *key)
{
    static_assert(offsetof(api_call_t, call) == 0, "ac_call_new() allocates an api_call_t");
    ac_call_t *call =
        ac_call_new(&self->base, req, sizeof(api_call_t), is_transaction, what, key, call_clear);
    return call ? ac_container_of(call, api_call_t, call) : NULL;
}

/* Steps shared by several routes. */
static int reply_doc(ac_call_t *call, ac_http_req_t *req, int status)
{
    json_t *doc;
    int rc = ac_db_doc_result(call->txn, 0, &doc);
    return ac_call_reply_doc(call, req, status, rc, doc);
}

static int step_doc_200(ac_call_t *call, ac_http_req_t *req)
{
    return reply_doc(call, req, 200);
}

static int step_doc_201(ac_call_t *call, ac_http_req_t *req)
{
    return reply_doc(call, req, 201);
}

/* --- customers ----------------------------------------------------------------------- */

static void on_customer_create(ac_http_req_t *req, void *arg)
{
    intake_t *self = arg;
    intake_customer_in_t in;
    intake_verr_t err;
    api_call_t *c;

    if (ac_service_is_refused(&self->base, req))
        return;
    if (intake_validate_customer(ac_http_req_json(req), &in, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    if ((c = call_new(self, req, 1, "customer", NULL)))
        ac_call_send(&c->call, intake_store_add_customer_insert(c->call.txn, &in), 1, step_doc_201);
    intake_customer_in_clear(&in);
}

/* GET /v1/<kind>s/{id}: a malformed id names nothing, so it is a 404 like a missing one. */
static void serve_get_by_id(ac_http_req_t *req, intake_t *self, const char *kind,
                            int (*add)(ac_db_txn_t *t, const char *id))
{
    const char *id = ac_http_req_param(req, 0);
    api_call_t *c;

    if (ac_service_is_refused(&self->base, req))
        return;
    if (!id || !ac_uuid_is_valid(id)) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no %s %.*s", kind, AC_CALL_KEY_MAX,
                            id ? id : "");
        return;
    }
    if ((c = call_new(self, req, 0, kind, id)))
        ac_call_send(&c->call, add(c->call.txn, id), 1, step_doc_200);
}

/* GET /v1/<kind>s: filters validated by `validate`, one page by `add`. */
static void serve_list(ac_http_req_t *req, intake_t *self, const char *kind,
                       int (*validate)(intake_query_fn query, void *arg, intake_list_filter_t *out,
                                       intake_verr_t *err),
                       int (*add)(ac_db_txn_t *t, const intake_list_filter_t *f))
{
    intake_list_filter_t f;
    intake_verr_t err;
    api_call_t *c;

    if (ac_service_is_refused(&self->base, req))
        return;
    if (validate(req_query, req, &f, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    if ((c = call_new(self, req, 0, kind, NULL))) {
        c->call.limit = f.page.limit;
        ac_call_send(&c->call, add(c->call.txn, &f), 1, ac_call_step_page);
    }
}

static void on_customer_get(ac_http_req_t *req, void *arg)
{
    serve_get_by_id(req, arg, "customer", intake_store_add_customer_get);
}

static void on_customer_list(ac_http_req_t *req, void *arg)
{
    serve_list(req, arg, "customer", intake_validate_customer_filter,
               intake_store_add_customer_list);
}

/* --- products ------------------------------------------------------------------------ */

static int step_product_created(ac_call_t *call, ac_http_req_t *req)
{
    api_call_t *c = ac_container_of(call, api_call_t, call);
    int is_customer_found;
    json_t *doc;
    int rc = intake_store_product_insert_result(c->call.txn, 0, &is_customer_found, &doc);
    if (rc < 0)
        return ac_service_reply_unexpected(req, rc);
    if (!is_customer_found) {
        ac_http_reply_error(req, 422, "unknown_reference", "customer_id", "no customer %s",
                            c->call.key);
        return 0;
    }
    if (!doc) {
        ac_http_reply_error(req, 409, "conflict", "serial_number", "%s", c->message);
        return 0;
    }
    ac_http_reply_json(req, 201, doc);
    return 0;
}

static void on_product_create(ac_http_req_t *req, void *arg)
{
    intake_t *self = arg;
    intake_product_in_t in;
    intake_verr_t err;
    api_call_t *c;
    int64_t now_us = ac_time_now_us();

    if (ac_service_is_refused(&self->base, req))
        return;
    if (intake_validate_product(ac_http_req_json(req), (int32_t)(now_us / US_PER_DAY), &in, &err) <
        0) {
        reply_verr(req, &err);
        return;
    }
    if ((c = call_new(self, req, 1, "product", in.customer_id))) {
        snprintf(c->message, sizeof c->message,
                 "serial number %.100s is already registered for model %.100s", in.serial_number,
                 in.model);
        ac_call_send(&c->call, intake_store_add_product_insert(c->call.txn, &in), 1,
                     step_product_created);
    }
}

static void on_product_get(ac_http_req_t *req, void *arg)
{
    serve_get_by_id(req, arg, "product", intake_store_add_product_get);
}

static void on_product_list(ac_http_req_t *req, void *arg)
{
    serve_list(req, arg, "product", intake_validate_product_filter, intake_store_add_product_list);
}

/* --- warranty policies --------------------------------------------------------------- */

static void on_policy_put(ac_http_req_t *req, void *arg)
{
    intake_t *self = arg;
    const char *model = ac_http_req_param(req, 0);
    intake_policy_in_t in;
    intake_verr_t err;
    api_call_t *c;

    if (ac_service_is_refused(&self->base, req))
        return;
    if (intake_validate_policy(model ? model : "", ac_http_req_json(req), &in, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    if ((c = call_new(self, req, 1, "warranty policy", model)))
        ac_call_send(&c->call, intake_store_add_policy_put(c->call.txn, &in), 1, step_doc_200);
}

static int step_policy_list(ac_call_t *call, ac_http_req_t *req)
{
    json_t *items;
    int rc = ac_db_doc_result(call->txn, 0, &items);
    if (rc < 0)
        return ac_service_reply_unexpected(req, rc);
    ac_http_reply_json(req, 200, json_pack("{s:o}", "items", items));
    return 0;
}

static void on_policy_list(ac_http_req_t *req, void *arg)
{
    intake_t *self = arg;
    api_call_t *c;

    if (ac_service_is_refused(&self->base, req))
        return;
    if ((c = call_new(self, req, 0, "warranty policy", NULL)))
        ac_call_send(&c->call, intake_store_add_policy_list(c->call.txn), 1, step_policy_list);
}

/* --- tickets: create, read ----------------------------------------------------------- */

static void on_ticket_create(ac_http_req_t *req, void *arg)
{
    intake_t *self = arg;
    json_t *body = ac_http_req_json(req);
    const char *idem_key = ac_http_req_header(req, "Idempotency-Key");
    char hash[AC_TOKEN_HASH_LEN] = "";
    intake_ticket_in_t in;
    intake_verr_t err;

    if (ac_service_is_refused(&self->base, req))
        return;
    if (idem_key && !intake_idem_key_is_valid(idem_key)) {
        ac_http_reply_error(req, 400, "invalid_header", "Idempotency-Key",
                            "Idempotency-Key must be 1 to 200 printable ASCII characters");
        return;
    }
    if (intake_validate_ticket(body, ac_time_now_us(), &in, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    if (idem_key) {
        /* The same request is the same canonical body: compact, keys sorted. */
        char *canonical = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
        if (!canonical) {
            intake_ticket_in_clear(&in);
            ac_service_reply_nomem(req);
            return;
        }
        ac_token_hash(canonical, hash);
        free(canonical);
    }
    if (intake_create_submit(self, req, &in, idem_key, idem_key ? hash : NULL) < 0)
        ac_service_reply_nomem(req);
    intake_ticket_in_clear(&in);
}

static int step_ticket_get(ac_call_t *call, ac_http_req_t *req)
{
    json_t *doc;
    int rc = intake_store_ticket_get_result(call->txn, 0, &doc);
    return ac_call_reply_doc(call, req, 200, rc, doc);
}

/* A ticket number from the path; NULL (answered 404) when it cannot name a ticket. */
static const char *ticket_number(ac_http_req_t *req)
{
    const char *number = ac_http_req_param(req, 0);
    if (!number || !number[0] || strlen(number) > 64) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no ticket %.64s", number ? number : "");
        return NULL;
    }
    return number;
}

static void on_ticket_get(ac_http_req_t *req, void *arg)
{
    intake_t *self = arg;
    const char *number;
    api_call_t *c;

    if (ac_service_is_refused(&self->base, req) || !(number = ticket_number(req)))
        return;
    if ((c = call_new(self, req, 0, "ticket", number)))
        ac_call_send(&c->call, intake_store_add_ticket_get(c->call.txn, number), 1,
                     step_ticket_get);
}

static void on_ticket_list(ac_http_req_t *req, void *arg)
{
    intake_t *self = arg;
    intake_ticket_filter_t f;
    intake_verr_t err;
    api_call_t *c;

    if (ac_service_is_refused(&self->base, req))
        return;
    if (intake_validate_ticket_filter(req_query, req, &f, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    if ((c = call_new(self, req, 0, "ticket", NULL))) {
        c->call.limit = f.page.limit;
        ac_call_send(&c->call, intake_store_add_ticket_list(c->call.txn, &f), 1, ac_call_step_page);
    }
}

/* --- tickets: changes ---------------------------------------------------------------- */

static int doc_enum(const json_t *doc, const char *key, const char *const *names, size_t n)
{
    return intake_enum_parse(names, n, json_string_value(json_object_get(doc, key)));
}

/* Reads the locked ticket into c->doc and checks expected_version. 0 to go on; otherwise
 * answered (404 / 409 / 500). */
static int locked_ticket(api_call_t *c, ac_http_req_t *req, int64_t expected_version, char now[32])
{
    int rc = intake_store_ticket_lock_result(c->call.txn, 0, &c->doc, now);
    if (rc == AC_ERR_NOTFOUND) {
        ac_call_reply_not_found(&c->call, req);
        return -1;
    }
    if (rc < 0) {
        ac_service_reply_unexpected(req, rc);
        return -1;
    }
    json_int_t version = json_integer_value(json_object_get(c->doc, "version"));
    if (expected_version && expected_version != (int64_t)version) {
        ac_http_reply_error(req, 409, "version_conflict", "expected_version",
                            "ticket %s is at version %" JSON_INTEGER_FORMAT ", not %" PRId64,
                            c->call.key, version, expected_version);
        return -1;
    }
    return 0;
}

/* Bumps version and updated_at of c->doc. */
static int doc_bump(json_t *doc, const char *now)
{
    json_int_t version = json_integer_value(json_object_get(doc, "version"));
    if (json_object_set_new(doc, "version", json_integer(version + 1)) < 0 ||
        json_object_set_new(doc, "updated_at", json_string(now)) < 0)
        return AC_ERR_NOMEM;
    return 0;
}

/* Queues the ticket's event on c->call.txn. */
static int add_event(api_call_t *c, ac_http_req_t *req, const intake_event_t *ev_in)
{
    intake_event_t ev = *ev_in;
    char event_id[AC_UUID_STRLEN];
    uint8_t *buf;
    size_t len;
    int rc;

    ev.ticket = c->doc;
    ev.correlation_id = ac_http_req_id(req);
    ev.actor = ac_role_name(ac_http_req_role(req));
    if ((rc = intake_event_pack(&ev, event_id, &buf, &len)) < 0)
        return rc;
    rc = intake_store_add_outbox(c->call.txn, event_id, intake_event_topic(ev.kind), buf, len);
    free(buf);
    if (rc == 0)
        ac_log_at(AC_LOG_DEBUG, json_string_value(json_object_get(c->doc, "number")), event_id,
                  "%s queued", intake_event_topic(ev.kind));
    return rc;
}

static int step_reply_ticket(ac_call_t *call, ac_http_req_t *req)
{
    api_call_t *c = ac_container_of(call, api_call_t, call);
    ac_http_reply_json(req, 200, c->doc);
    c->doc = NULL;
    return 0;
}

static int set_changed_str(json_t *doc, const char *key, const char *value, const char **changed,
                           size_t *nchanged)
{
    const char *old = json_string_value(json_object_get(doc, key));
    if (old && strcmp(old, value) == 0)
        return 0;
    changed[(*nchanged)++] = key;
    return json_object_set_new(doc, key, json_string(value));
}

static int step_patch_locked(ac_call_t *call, ac_http_req_t *req)
{
    api_call_t *c = ac_container_of(call, api_call_t, call);
    intake_t *self = ac_container_of(call->svc, intake_t, base);
    const intake_patch_in_t *p = &c->patch;
    json_t *doc;
    const char *changed[8];
    size_t nchanged = 0;
    char now[32];
    int rc = 0;

    if (locked_ticket(c, req, p->expected_version, now) < 0)
        return 0;
    doc = c->doc;
    int status = doc_enum(doc, "status", intake_status_names, AC_ARRAY_LEN(intake_status_names));
    if (status == INTAKE_ST_CLOSED || status == INTAKE_ST_CANCELLED) {
        ac_http_reply_error(req, 409, "conflict", NULL, "ticket %s is %s and cannot be edited",
                            c->call.key, intake_status_names[status]);
        return 0;
    }

    if (p->present & INTAKE_PATCH_DESCRIPTION)
        rc |= set_changed_str(doc, "description", p->description, changed, &nchanged);
    if (p->present & INTAKE_PATCH_CATEGORY) {
        if (intake_category_needs_product(p->category) &&
            !json_is_object(json_object_get(doc, "product"))) {
            ac_http_reply_error(req, 422, "invalid_field", "category",
                                "category %s needs a product, and ticket %s has none",
                                intake_category_names[p->category], c->call.key);
            return 0;
        }
        rc |= set_changed_str(doc, "category", intake_category_names[p->category], changed,
                              &nchanged);
    }
    if (p->present & INTAKE_PATCH_URGENCY)
        rc |= set_changed_str(doc, "urgency", intake_urgency_names[p->urgency], changed, &nchanged);
    if ((p->present & INTAKE_PATCH_EXPEDITE) &&
        json_is_true(json_object_get(doc, "expedite")) != p->is_expedite) {
        changed[nchanged++] = "expedite";
        rc |= json_object_set_new(doc, "expedite", json_boolean(p->is_expedite));
    }
    if (p->present & INTAKE_PATCH_CONTACT) {
        /* The parts given replace the ticket's; the others stay. */
        json_t *contact = json_deep_copy(json_object_get(doc, "contact"));
        if (!json_is_object(contact)) {
            json_decref(contact);
            contact = json_object();
        }
        if (!contact || json_object_update(contact, p->contact) < 0) {
            json_decref(contact);
            ac_service_reply_nomem(req);
            return 0;
        }
        if (json_equal(contact, json_object_get(doc, "contact"))) {
            json_decref(contact);
        } else {
            changed[nchanged++] = "contact";
            rc |= json_object_set_new(doc, "contact", contact);
        }
    }
    if (rc < 0) {
        ac_service_reply_nomem(req);
        return 0;
    }
    if (nchanged == 0) { /* nothing to do: no version bump, no event (rolled back on free) */
        return step_reply_ticket(&c->call, req);
    }

    const json_t *customer = json_object_get(doc, "customer");
    int is_vip = doc_enum(customer, "tier", intake_tier_names, AC_ARRAY_LEN(intake_tier_names)) ==
                 INTAKE_TIER_VIP;
    int priority = intake_priority(
        doc_enum(doc, "urgency", intake_urgency_names, AC_ARRAY_LEN(intake_urgency_names)),
        doc_enum(doc, "category", intake_category_names, AC_ARRAY_LEN(intake_category_names)),
        is_vip, json_is_true(json_object_get(doc, "expedite")));
    if (set_changed_str(doc, "priority", intake_priority_names[priority], changed, &nchanged) < 0 ||
        doc_bump(doc, now) < 0) {
        ac_service_reply_nomem(req);
        return 0;
    }

    intake_event_t ev = {
        .kind = INTAKE_EV_UPDATED,
        .changed_fields = changed,
        .n_changed_fields = nchanged,
    };
    rc = intake_store_add_ticket_update(c->call.txn, doc);
    if (rc == 0)
        rc = add_event(c, req, &ev);
    if (rc == 0)
        ac_metrics_add(self->metrics, "tickets_updated_total", NULL, 1);
    ac_call_send(&c->call, rc, 1, step_reply_ticket);
    return 1;
}

static void on_ticket_patch(ac_http_req_t *req, void *arg)
{
    intake_t *self = arg;
    const char *number;
    intake_patch_in_t in;
    intake_verr_t err;
    api_call_t *c;

    if (ac_service_is_refused(&self->base, req) || !(number = ticket_number(req)))
        return;
    if (intake_validate_patch(ac_http_req_json(req), &in, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    if (!(c = call_new(self, req, 1, "ticket", number))) {
        intake_patch_in_clear(&in);
        return;
    }
    c->patch = in; /* takes in.contact */
    ac_call_send(&c->call, intake_store_add_ticket_lock(c->call.txn, number), 0, step_patch_locked);
}

static int step_transition_locked(ac_call_t *call, ac_http_req_t *req)
{
    api_call_t *c = ac_container_of(call, api_call_t, call);
    intake_t *self = ac_container_of(call->svc, intake_t, base);
    const intake_transition_in_t *tr = &c->transition;
    json_t *doc;
    char now[32];
    int rc = 0;

    if (locked_ticket(c, req, tr->expected_version, now) < 0)
        return 0;
    doc = c->doc;
    int from = doc_enum(doc, "status", intake_status_names, AC_ARRAY_LEN(intake_status_names));
    if (!intake_transition_allowed(from, tr->to)) {
        ac_http_reply_error(req, 409, "illegal_transition", "to",
                            "ticket %s cannot move from %s to %s", c->call.key,
                            from ? intake_status_names[from] : "?", intake_status_names[tr->to]);
        return 0;
    }
    rc |= json_object_set_new(doc, "status", json_string(intake_status_names[tr->to]));
    if (tr->to == INTAKE_ST_RESOLVED)
        rc |= json_object_set_new(doc, "resolved_at", json_string(now));
    else if (tr->to == INTAKE_ST_CLOSED)
        rc |= json_object_set_new(doc, "closed_at", json_string(now));
    else if (tr->to == INTAKE_ST_REOPENED) { /* the earlier ones stay in the history */
        rc |= json_object_set_new(doc, "resolved_at", json_null());
        rc |= json_object_set_new(doc, "closed_at", json_null());
    }
    if (rc < 0 || doc_bump(doc, now) < 0) {
        ac_service_reply_nomem(req);
        return 0;
    }

    intake_event_t ev = {
        .kind = intake_event_kind_for_status(tr->to),
        .from_status = from,
        .to_status = tr->to,
        .reason = c->reason,
    };
    const char *actor = ac_role_name(ac_http_req_role(req));
    rc = intake_store_add_ticket_update(c->call.txn, doc);
    if (rc == 0)
        rc = intake_store_add_history(c->call.txn, json_string_value(json_object_get(doc, "id")),
                                      intake_status_names[from], intake_status_names[tr->to],
                                      c->reason, actor);
    if (rc == 0)
        rc = add_event(c, req, &ev);
    if (rc == 0) {
        char labels[64];
        snprintf(labels, sizeof labels, "to=\"%s\"", intake_status_names[tr->to]);
        ac_metrics_add(self->metrics, "ticket_transitions_total", labels, 1);
    }
    ac_call_send(&c->call, rc, 1, step_reply_ticket);
    return 1;
}

static void on_ticket_transition(ac_http_req_t *req, void *arg)
{
    intake_t *self = arg;
    const char *number;
    intake_transition_in_t in;
    intake_verr_t err;
    api_call_t *c;

    if (ac_service_is_refused(&self->base, req) || !(number = ticket_number(req)))
        return;
    if (intake_validate_transition(ac_http_req_json(req), &in, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    if (!(c = call_new(self, req, 1, "ticket", number)))
        return;
    c->transition = in;
    c->reason = strdup(in.reason);
    ac_call_send(&c->call,
                 c->reason ? intake_store_add_ticket_lock(c->call.txn, number) : AC_ERR_NOMEM, 0,
                 step_transition_locked);
}

/* --- routes and metrics -------------------------------------------------------------- */

#define WRITERS (AC_ROLE_AGENT | AC_ROLE_SUPERVISOR | AC_ROLE_INTEGRATION)

const ac_http_route_t intake_routes[] = {
    {"POST", "/v1/customers", WRITERS, on_customer_create, "customers_create"},
    {"GET", "/v1/customers", AC_ROLE_ANY, on_customer_list, "customers_list"},
    {"GET", "/v1/customers/{}", AC_ROLE_ANY, on_customer_get, "customers_get"},
    {"POST", "/v1/products", WRITERS, on_product_create, "products_create"},
    {"GET", "/v1/products", AC_ROLE_ANY, on_product_list, "products_list"},
    {"GET", "/v1/products/{}", AC_ROLE_ANY, on_product_get, "products_get"},
    {"PUT", "/v1/warranty-policies/{}", AC_ROLE_SUPERVISOR, on_policy_put, "policies_put"},
    {"GET", "/v1/warranty-policies", AC_ROLE_ANY, on_policy_list, "policies_list"},
    {"POST", "/v1/tickets", WRITERS, on_ticket_create, "tickets_create"},
    {"GET", "/v1/tickets", AC_ROLE_ANY, on_ticket_list, "tickets_list"},
    {"GET", "/v1/tickets/{}", AC_ROLE_ANY, on_ticket_get, "tickets_get"},
    {"PATCH", "/v1/tickets/{}",
     AC_ROLE_AGENT | AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR | AC_ROLE_INTEGRATION, on_ticket_patch,
     "tickets_patch"},
    {"POST", "/v1/tickets/{}/transitions", AC_ROLE_AGENT | AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR,
     on_ticket_transition, "tickets_transition"},
    {NULL, NULL, 0, NULL, NULL},
};

/* Refreshes the gauges and counters taken from other modules at every scrape. */
static void on_metrics_render(ac_metrics_t *m, void *arg)
{
    intake_t *self = arg;
    ac_metrics_set(m, "create_queue_depth", NULL, (double)self->queue_len);
    ac_service_on_metrics_render(m, &self->base);
}

void intake_api_setup(intake_t *self)
{
    static const struct {
        const char *name;
        ac_metric_type_t type;
        const char *help;
    } families[] = {
        {"tickets_created_total", AC_METRIC_COUNTER, "Tickets created"},
        {"ticket_create_replays_total", AC_METRIC_COUNTER,
         "Ticket creates answered from an earlier request with the same Idempotency-Key"},
        {"ticket_create_rejected_total", AC_METRIC_COUNTER,
         "Ticket creates refused by the database checks, by error code"},
        {"create_batch_size", AC_METRIC_SIZES, "Ticket creates per group-commit transaction"},
        {"create_batches_total", AC_METRIC_COUNTER, "Group-commit transactions started"},
        {"create_batch_requests_total", AC_METRIC_COUNTER,
         "Ticket creates sent in group-commit transactions"},
        {"create_batch_retries_total", AC_METRIC_COUNTER,
         "Group-commit transactions that failed and were retried one request at a time"},
        {"create_queue_depth", AC_METRIC_GAUGE, "Ticket creates waiting for the next batch"},
        {"requests_in_flight", AC_METRIC_GAUGE, "Requests waiting on the database"},
        {"tickets_updated_total", AC_METRIC_COUNTER, "PATCHes that changed a ticket"},
        {"ticket_transitions_total", AC_METRIC_COUNTER, "Ticket status changes, by new status"},
    };

    for (size_t i = 0; i < AC_ARRAY_LEN(families); i++)
        (void)ac_metrics_declare(self->metrics, families[i].name, families[i].type,
                                 families[i].help);
    ac_service_declare_db_metrics(self->metrics);
    ac_metrics_on_render(self->metrics, on_metrics_render, self);
}
