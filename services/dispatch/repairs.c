/* repairs.c — external repair (issue 4, item 5): vendors (outside repair stations) and
 * send-outs of a ticket's unit to them, over HTTP (docs/dispatch-api.md, "External
 * repair").
 *
 * Every route is one operation: this module checks what it can without the database —
 * the path, the body's shape, types and lengths, the forms of RMA and tracking numbers,
 * contact details, timestamps (normalised to UTC) — and hands the values to one SQL
 * function of migrations/007_repairs.sql through ops.c. The function decides everything
 * that depends on state (the order of the steps, unknown or inactive vendors, a due date
 * before the ship date, one send-out in progress per ticket), writes, and returns the
 * reply with its events (vendor.*, repair.*), which ops.c puts in the outbox in the same
 * transaction. A refused request changes nothing.
 *
 * The routes are described by a table of operations (dispatch_route_op_t): which statement, what
 * the path names, whether the caller's name is passed as the actor, and the body's fields in the
 * order of the statement's parameters. */
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ac_time.h"
#include "ac_uuid.h"
#include "dispatch.h"
#include "ops.h"
#include "store.h"
#include "reqbody.h"
#include "validate.h"

/* --- vendors ------------------------------------------------------------------------------ */

static const dispatch_body_field_t vendor_create_fields[] = {
    {"name", DISPATCH_F_TEXT, 1, 1, 200, NULL},
    {"contact", DISPATCH_F_CONTACT, 1, 0, 0, NULL},
    {"address", DISPATCH_F_TEXT, 0, 0, 500, NULL},
    {"turnaround_days", DISPATCH_F_INT, 1, 1, 365, NULL},
    {"active", DISPATCH_F_BOOL, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const dispatch_body_field_t vendor_patch_fields[] = {
    {"expected_version", DISPATCH_F_INT, 0, 1, LONG_MAX, NULL},
    {"name", DISPATCH_F_TEXT, 0, 1, 200, NULL},
    {"contact", DISPATCH_F_CONTACT, 0, 0, 0, NULL},
    {"address", DISPATCH_F_TEXT, 0, 0, 500, NULL},
    {"turnaround_days", DISPATCH_F_INT, 0, 1, 365, NULL},
    {"active", DISPATCH_F_BOOL, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const dispatch_route_op_t op_vendor_create = {
    DISPATCH_STMT_VENDOR_CREATE, DISPATCH_PATH_NONE, "vendor", 1, 0, 1, vendor_create_fields, 0};
static const dispatch_route_op_t op_vendor_patch = {
    DISPATCH_STMT_VENDOR_PATCH, DISPATCH_PATH_ID, "vendor", 1, 0, 1, vendor_patch_fields, 0};
static const dispatch_route_op_t op_vendor_get = {
    DISPATCH_STMT_VENDOR_GET, DISPATCH_PATH_ID, "vendor", 0, 0, 0, NULL, 0};

static void on_vendor_create(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_vendor_create);
}

static void on_vendor_patch(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_vendor_patch);
}

static void on_vendor_get(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_vendor_get);
}

static void on_vendor_list(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *active = ac_http_req_query(req, "active");
    char limit[24], cursor[24];
    int has_cursor;

    if (dispatch_is_refused(self, req))
        return;
    if (active && strcmp(active, "true") != 0 && strcmp(active, "false") != 0) {
        ac_http_reply_error(req, 422, "invalid_field", "active", "active must be true or false");
        return;
    }
    if (dispatch_page_query(req, limit, cursor, sizeof limit, &has_cursor) < 0)
        return;
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_VENDOR_LIST,
                      (const char *[]){active, has_cursor ? cursor : NULL, limit});
}

/* --- send-outs ---------------------------------------------------------------------------- */

static const char *const inspection_results[] = {"pass", "fail", NULL};

static const dispatch_body_field_t repair_create_fields[] = {
    {"vendor_id", DISPATCH_F_UUID, 1, 0, 0, NULL},
    {"rma_number", DISPATCH_F_RMA, 1, 0, 0, NULL},
    {"vendor_due_at", DISPATCH_F_TIME, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const dispatch_body_field_t repair_ship_fields[] = {
    {"carrier", DISPATCH_F_TEXT, 1, 1, 100, NULL},
    {"tracking", DISPATCH_F_TRACKING, 1, 0, 0, NULL},
    {"shipped_at", DISPATCH_F_TIME, 0, 0, 0, NULL},
    {"vendor_due_at", DISPATCH_F_TIME, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const dispatch_body_field_t repair_followup_fields[] = {
    {"note", DISPATCH_F_TEXT, 1, 1, 2000, NULL},
    {"vendor_due_at", DISPATCH_F_TIME, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const dispatch_body_field_t repair_return_fields[] = {
    {"returned_at", DISPATCH_F_TIME, 0, 0, 0, NULL},
    {"note", DISPATCH_F_TEXT, 0, 1, 2000, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const dispatch_body_field_t repair_inspect_fields[] = {
    {"result", DISPATCH_F_ENUM, 1, 0, 0, inspection_results},
    {"note", DISPATCH_F_TEXT, 0, 1, 2000, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const dispatch_body_field_t repair_reroute_fields[] = {
    {"vendor_id", DISPATCH_F_UUID, 1, 0, 0, NULL},
    {"rma_number", DISPATCH_F_RMA, 1, 0, 0, NULL},
    {"reason", DISPATCH_F_TEXT, 1, 1, 2000, NULL},
    {"vendor_due_at", DISPATCH_F_TIME, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const dispatch_route_op_t op_repair_create = {
    DISPATCH_STMT_REPAIR_CREATE, DISPATCH_PATH_TICKET, "ticket", 1, 1, 0, repair_create_fields, 1};
static const dispatch_route_op_t op_repair_ship = {
    DISPATCH_STMT_REPAIR_SHIP, DISPATCH_PATH_ID, "send-out", 1, 1, 0, repair_ship_fields, 1};
static const dispatch_route_op_t op_repair_followup = {DISPATCH_STMT_REPAIR_FOLLOWUP,
                                                       DISPATCH_PATH_ID,
                                                       "send-out",
                                                       1,
                                                       1,
                                                       0,
                                                       repair_followup_fields,
                                                       1};
static const dispatch_route_op_t op_repair_return = {
    DISPATCH_STMT_REPAIR_RETURN, DISPATCH_PATH_ID, "send-out", 1, 1, 0, repair_return_fields, 1};
static const dispatch_route_op_t op_repair_inspect = {
    DISPATCH_STMT_REPAIR_INSPECT, DISPATCH_PATH_ID, "send-out", 1, 1, 0, repair_inspect_fields, 1};
static const dispatch_route_op_t op_repair_reroute = {
    DISPATCH_STMT_REPAIR_REROUTE, DISPATCH_PATH_ID, "send-out", 1, 1, 0, repair_reroute_fields, 1};
static const dispatch_route_op_t op_repair_get = {
    DISPATCH_STMT_REPAIR_GET, DISPATCH_PATH_ID, "send-out", 0, 0, 0, NULL, 0};
static const dispatch_route_op_t op_repair_list = {
    DISPATCH_STMT_REPAIR_LIST, DISPATCH_PATH_TICKET, "ticket", 0, 0, 0, NULL, 0};

static void on_repair_create(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_repair_create);
}

static void on_repair_ship(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_repair_ship);
}

static void on_repair_followup(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_repair_followup);
}

static void on_repair_return(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_repair_return);
}

static void on_repair_inspect(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_repair_inspect);
}

static void on_repair_reroute(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_repair_reroute);
}

static void on_repair_get(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_repair_get);
}

static void on_repair_list(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_repair_list);
}

/* --- routes ------------------------------------------------------------------------------- */

#define READERS (AC_ROLE_AGENT | AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR | AC_ROLE_INTEGRATION)
#define WRITERS (AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR) /* admin is always allowed */

const ac_http_route_t dispatch_repair_routes[] = {
    {"POST", "/v1/vendors", AC_ROLE_SUPERVISOR, on_vendor_create, "vendors_create"},
    {"GET", "/v1/vendors", READERS, on_vendor_list, "vendors_list"},
    {"GET", "/v1/vendors/{}", READERS, on_vendor_get, "vendors_get"},
    {"PATCH", "/v1/vendors/{}", AC_ROLE_SUPERVISOR, on_vendor_patch, "vendors_patch"},
    {"POST", "/v1/tickets/{}/repairs", WRITERS, on_repair_create, "repairs_create"},
    {"GET", "/v1/tickets/{}/repairs", READERS, on_repair_list, "repairs_list"},
    {"GET", "/v1/repairs/{}", READERS, on_repair_get, "repairs_get"},
    {"POST", "/v1/repairs/{}/ship", WRITERS, on_repair_ship, "repairs_ship"},
    {"POST", "/v1/repairs/{}/followup", WRITERS, on_repair_followup, "repairs_followup"},
    {"POST", "/v1/repairs/{}/return", WRITERS, on_repair_return, "repairs_return"},
    {"POST", "/v1/repairs/{}/inspect", WRITERS, on_repair_inspect, "repairs_inspect"},
    {"POST", "/v1/repairs/{}/reroute", WRITERS, on_repair_reroute, "repairs_reroute"},
    {NULL, NULL, 0, NULL, NULL},
};
