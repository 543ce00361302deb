/* plans.c — service plans (item 3 of issue 4; docs/dispatch-api.md "Service plans").
 *
 * An engineer proposes a plan for a ticket (mode, work, parts, fee, ETA); the customer
 * accepts or disputes it, through an agent or through a signed link; a disputed plan is
 * revised (a new revision supersedes it). Acceptance asks assignment for the engineer who
 * does the work (dispatch.assign_request(), in the same transaction).
 *
 * Each handler checks the request's shape (plan_validate.c) and hands one SQL function
 * (migrations/005_plans.sql) to ops.c, which decides, writes, publishes the plan.* event
 * and answers. Two things happen here instead:
 *   - POST /v1/plans/{id}/link records the link (dispatch.plan_link()) and signs it with
 *     AC_DISPATCH_LINK_SECRET: HMAC-SHA256 over plan id, revision and expiry;
 *   - the public /v1/customer/plans/... routes check that signature (in constant time) and
 *     its expiry before anything reaches the database: 403 for a bad or an expired link.
 *
 * Owns: each link request until its SQL call has answered. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_log.h"
#include "ac_time.h"
#include "ac_uuid.h"
#include "dispatch.h"
#include "ops.h"
#include "plan_validate.h"
#include "store.h"

#define DECIDED_BY_LINK "customer (signed link)"

static void reply_verr(ac_http_req_t *req, const dispatch_verr_t *err)
{
    ac_http_reply_error(req, err->status, err->code, err->field[0] ? err->field : NULL, "%s",
                        err->message);
}

/* The caller's token name: who proposed, decided or cancelled. */
static const char *actor(const ac_http_req_t *req)
{
    const char *name = ac_http_req_principal(req);
    return name && name[0] ? name : "unknown";
}

/* A plan id from the path; NULL (answered 404) when it cannot name one. */
static const char *plan_id(ac_http_req_t *req)
{
    const char *id = ac_http_req_param(req, 0);
    if (!id || !ac_uuid_is_valid(id)) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no plan %.60s", id ? id : "");
        return NULL;
    }
    return id;
}

/* A ticket number from the path (SV-...); NULL (answered 404) otherwise. */
static const char *ticket_number(ac_http_req_t *req)
{
    const char *number = ac_http_req_param(req, 0);
    if (!number || strlen(number) > 32 || strncmp(number, "SV-", 3) != 0) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no ticket %.40s", number ? number : "");
        return NULL;
    }
    return number;
}

/* --- staff routes -------------------------------------------------------------------- */

static void on_plan_propose(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *number;
    dispatch_verr_t err;
    json_t *doc;
    char *text;

    if (dispatch_is_refused(self, req) || !(number = ticket_number(req)))
        return;
    if (dispatch_validate_plan(ac_http_req_json(req), &doc, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!text) {
        ac_http_reply_error(req, 503, "unavailable", NULL, "out of memory; retry");
        return;
    }
    dispatch_http_sql(self, req, 1, DISPATCH_STMT_PLAN_PROPOSE,
                      (const char *[]){number, actor(req), text, dispatch_engineer_scope(req)});
    free(text);
}

static void on_plan_list(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *number;
    if (dispatch_is_refused(self, req) || !(number = ticket_number(req)))
        return;
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_PLAN_LIST, (const char *[]){number});
}

static void on_plan_get(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *id;
    if (dispatch_is_refused(self, req) || !(id = plan_id(req)))
        return;
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_PLAN_GET, (const char *[]){id});
}

/* Accept or dispute on the customer's behalf. */
static void agent_decide(ac_http_req_t *req, dispatch_t *self, dispatch_plan_action_t action)
{
    const char *id;
    dispatch_plan_decision_t d;
    dispatch_verr_t err;

    if (dispatch_is_refused(self, req) || !(id = plan_id(req)))
        return;
    if (dispatch_validate_plan_decision(ac_http_req_json(req), action, 0, &d, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    dispatch_http_sql(self, req, 1, DISPATCH_STMT_PLAN_DECIDE,
                      (const char *[]){id, action == DISPATCH_PLAN_ACCEPT ? "accept" : "dispute",
                                       "agent", actor(req), d.customer_name, d.note, NULL});
}

static void on_plan_accept(ac_http_req_t *req, void *arg)
{
    agent_decide(req, arg, DISPATCH_PLAN_ACCEPT);
}

static void on_plan_dispute(ac_http_req_t *req, void *arg)
{
    agent_decide(req, arg, DISPATCH_PLAN_DISPUTE);
}

static void on_plan_cancel(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *id, *reason;
    dispatch_verr_t err;

    if (dispatch_is_refused(self, req) || !(id = plan_id(req)))
        return;
    if (dispatch_validate_plan_cancel(ac_http_req_json(req), &reason, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    dispatch_http_sql(self, req, 1, DISPATCH_STMT_PLAN_CANCEL,
                      (const char *[]){id, actor(req), reason, dispatch_engineer_scope(req)});
}

/* --- issuing a customer link --------------------------------------------------------- */

typedef struct link_call {
    dispatch_op_t op; /* first */
    dispatch_t *self;
} link_call_t;

/* The {"error": ...} answer of a SQL function, as ops.c replies it. */
static void reply_sql_error(ac_http_req_t *req, const json_t *e)
{
    const char *field = json_string_value(json_object_get(e, "field"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *code = json_string_value(json_object_get(e, "code"));
    json_int_t status = json_integer_value(json_object_get(e, "status"));
    ac_http_reply_error(req, status >= 400 && status < 600 ? (int)status : 409,
                        code ? code : "conflict", field, "%s", msg ? msg : "");
}

/* dispatch.plan_link() has recorded the link: sign it and answer
 * {"plan_id", "ticket_number", "revision", "expires", "expires_at", "path"}. */
static void reply_link(dispatch_t *self, ac_http_req_t *req, const json_t *recorded)
{
    const char *id = json_string_value(json_object_get(recorded, "plan_id"));
    json_int_t revision = json_integer_value(json_object_get(recorded, "revision"));
    json_int_t expires = json_integer_value(json_object_get(recorded, "expires"));
    char sig[DISPATCH_PLAN_SIG_HEXLEN + 1], path[256];
    json_t *body;

    if (!id || revision < 1 || revision > INT32_MAX ||
        dispatch_plan_link_sign(self->cfg->link_secret, id, (int)revision, (int64_t)expires, sig) <
            0) {
        ac_error("plans: cannot sign a link for plan %s", id ? id : "?");
        ac_http_reply_error(req, 500, "internal", NULL, "the link could not be signed");
        return;
    }
    snprintf(path, sizeof path,
             "/v1/customer/plans/%s?rev=%" JSON_INTEGER_FORMAT "&expires=%" JSON_INTEGER_FORMAT
             "&sig=%s",
             id, revision, expires, sig);
    if (!(body = json_deep_copy(recorded)) ||
        json_object_set_new(body, "path", json_string(path)) < 0) {
        json_decref(body);
        ac_http_reply_error(req, 503, "unavailable", NULL, "out of memory; retry");
        return;
    }
    ac_log_at(AC_LOG_INFO, json_string_value(json_object_get(recorded, "ticket_number")), NULL,
              "customer link for plan %s revision %" JSON_INTEGER_FORMAT " issued by %s", id,
              revision, actor(req));
    ac_http_reply_json(req, 201, body);
}

static void on_link_recorded(void *arg, int err, const json_t *result)
{
    link_call_t *c = arg;
    ac_http_req_t *req = c->op.req;

    if (req) {
        const json_t *e = json_object_get(result, "error");
        if (err == AC_ERR_INVALID)
            ac_http_reply_error(req, 500, "internal", NULL, "unexpected answer from the database");
        else if (err < 0)
            ac_http_reply_error(req, 503, "unavailable", NULL,
                                "the database is unavailable; no link was issued, retry");
        else if (e)
            reply_sql_error(req, e);
        else
            reply_link(c->self, req, json_object_get(result, "body"));
    }
    dispatch_op_detach(c->self, &c->op);
    free(c);
}

static void on_plan_link(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *id;
    long hours;
    dispatch_verr_t err;
    char expires[24];
    link_call_t *c;
    int rc;

    if (dispatch_is_refused(self, req) || !(id = plan_id(req)))
        return;
    if (!dispatch_plan_link_is_enabled(self->cfg->link_secret)) {
        ac_http_reply_error(req, 503, "links_disabled", NULL,
                            "customer links are disabled on this server: AC_DISPATCH_LINK_SECRET "
                            "is not set (or shorter than %d characters)",
                            DISPATCH_PLAN_SECRET_MIN_LEN);
        return;
    }
    if (dispatch_validate_plan_link(ac_http_req_json(req), &hours, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    snprintf(expires, sizeof expires, "%" PRId64,
             ac_time_now_us() / 1000000 + (int64_t)hours * 3600);
    if (!(c = calloc(1, sizeof *c))) {
        ac_http_reply_error(req, 503, "unavailable", NULL, "out of memory; retry");
        return;
    }
    c->self = self;
    dispatch_op_attach(self, &c->op, req);
    rc = dispatch_run_sql(self, DISPATCH_STMT_PLAN_LINK, (const char *[]){id, actor(req), expires},
                          ac_http_req_id(req), on_link_recorded, c);
    if (rc < 0) { /* done will not be called */
        dispatch_reply_db_error(req, rc == AC_ERR_NOMEM ? rc : AC_ERR_UNAVAILABLE, NULL);
        dispatch_op_detach(self, &c->op);
        free(c);
    }
}

/* --- the customer's signed link (no token) ------------------------------------------- */

/* Checks the link of a customer route. Returns the plan id and (in rev, as text) the
 * revision the link is for, or NULL when it has answered (404 links disabled, 403 invalid
 * or expired). */
static const char *customer_link(dispatch_t *self, ac_http_req_t *req, char rev[16])
{
    const char *id = ac_http_req_param(req, 0);
    const char *expires = ac_http_req_query(req, "expires");
    int revision;
    dispatch_link_check_t check;

    /* the answer is for one person: keep it out of caches, and the link out of referrers */
    (void)ac_http_reply_header(req, "Cache-Control", "no-store");
    (void)ac_http_reply_header(req, "Referrer-Policy", "no-referrer");
    if (!dispatch_plan_link_is_enabled(self->cfg->link_secret)) {
        ac_http_reply_error(req, 404, "not_found", NULL,
                            "customer links are not enabled on this server");
        return NULL;
    }
    check = dispatch_plan_link_check(self->cfg->link_secret, id, ac_http_req_query(req, "rev"),
                                     expires, ac_http_req_query(req, "sig"),
                                     ac_time_now_us() / 1000000, &revision);
    if (check == DISPATCH_LINK_INVALID) {
        ac_metrics_add(self->metrics, "plan_link_refusals_total", "reason=\"invalid\"", 1);
        ac_http_reply_error(req, 403, "invalid_link", NULL,
                            "this link is not valid (incomplete or altered); please ask for a "
                            "new link");
        return NULL;
    }
    if (check == DISPATCH_LINK_EXPIRED) {
        char at[AC_TIME_STRLEN];
        ac_metrics_add(self->metrics, "plan_link_refusals_total", "reason=\"expired\"", 1);
        ac_http_reply_error(req, 403, "link_expired", NULL,
                            "this link expired at %s; please ask for a new link",
                            ac_time_format_us((int64_t)strtoll(expires, NULL, 10) * 1000000, at));
        return NULL;
    }
    snprintf(rev, 16, "%d", revision);
    return id;
}

static void on_customer_plan_get(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    char rev[16];
    const char *id;
    if (dispatch_is_refused(self, req) || !(id = customer_link(self, req, rev)))
        return;
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_PLAN_CUSTOMER_GET, (const char *[]){id, rev});
}

static void customer_decide(ac_http_req_t *req, dispatch_t *self, dispatch_plan_action_t action)
{
    char rev[16];
    const char *id;
    dispatch_plan_decision_t d;
    dispatch_verr_t err;

    if (dispatch_is_refused(self, req) || !(id = customer_link(self, req, rev)))
        return;
    if (dispatch_validate_plan_decision(ac_http_req_json(req), action, 1, &d, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    dispatch_http_sql(self, req, 1, DISPATCH_STMT_PLAN_DECIDE,
                      (const char *[]){id, action == DISPATCH_PLAN_ACCEPT ? "accept" : "dispute",
                                       "link", DECIDED_BY_LINK, d.customer_name, d.note, rev});
}

static void on_customer_plan_accept(ac_http_req_t *req, void *arg)
{
    customer_decide(req, arg, DISPATCH_PLAN_ACCEPT);
}

static void on_customer_plan_dispute(ac_http_req_t *req, void *arg)
{
    customer_decide(req, arg, DISPATCH_PLAN_DISPUTE);
}

/* --- routes -------------------------------------------------------------------------- */

#define READERS  (AC_ROLE_AGENT | AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR | AC_ROLE_INTEGRATION)
#define AUTHORS  (AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR) /* propose, revise, cancel */
#define DECIDERS (AC_ROLE_AGENT | AC_ROLE_SUPERVISOR)    /* for the customer; links */

const ac_http_route_t dispatch_plan_routes[] = {
    {"POST", "/v1/tickets/{}/plans", AUTHORS, on_plan_propose, "plans_propose"},
    {"GET", "/v1/tickets/{}/plans", READERS, on_plan_list, "plans_list"},
    {"GET", "/v1/plans/{}", READERS, on_plan_get, "plans_get"},
    {"POST", "/v1/plans/{}/accept", DECIDERS, on_plan_accept, "plans_accept"},
    {"POST", "/v1/plans/{}/dispute", DECIDERS, on_plan_dispute, "plans_dispute"},
    {"POST", "/v1/plans/{}/cancel", AUTHORS, on_plan_cancel, "plans_cancel"},
    {"POST", "/v1/plans/{}/link", DECIDERS, on_plan_link, "plans_link"},
    {"GET", "/v1/customer/plans/{}", AC_ROLE_PUBLIC, on_customer_plan_get, "customer_plans_get"},
    {"POST", "/v1/customer/plans/{}/accept", AC_ROLE_PUBLIC, on_customer_plan_accept,
     "customer_plans_accept"},
    {"POST", "/v1/customer/plans/{}/dispute", AC_ROLE_PUBLIC, on_customer_plan_dispute,
     "customer_plans_dispute"},
    {NULL, NULL, 0, NULL, NULL},
};
