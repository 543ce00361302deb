/* cases.c — difficult cases (issue 4, item 6) over HTTP (docs/dispatch-api.md, "Difficult
 * cases"): a ticket is flagged as difficult, the case gets an owner and a tracking file of
 * notes, escalates up the chain engineer -> supervisor -> manager with a reason, changes
 * owner, and is closed with a resolution; each step is an event (case.*).
 *
 * As in repairs.c, this module checks the path, the query and the body's shape (types,
 * lengths, ids; table-driven, ops.h and reqbody.h) and runs one SQL function of
 * migrations/008_cases.sql through ops.c, which decides what depends on state (one open case per
 * ticket, the order of the levels, the owner's role fitting the level, a closed case staying
 * closed), writes, and returns the reply and the events. A refused request changes nothing. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ac_uuid.h"
#include "dispatch.h"
#include "ops.h"
#include "store.h"
#include "validate.h"

#define TEXT_MAX_CHARS 4000

/* --- operations ------------------------------------------------------------------------- */

static const dispatch_body_field_t flag_fields[] = {
    {"reason", DISPATCH_F_TEXT, 1, 1, TEXT_MAX_CHARS, NULL},
    {"owner_engineer_id", DISPATCH_F_UUID, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL}};
static const dispatch_body_field_t note_fields[] = {
    {"note", DISPATCH_F_TEXT, 1, 1, TEXT_MAX_CHARS, NULL}, {NULL, 0, 0, 0, 0, NULL}};
static const dispatch_body_field_t escalate_fields[] = {
    {"reason", DISPATCH_F_TEXT, 1, 1, TEXT_MAX_CHARS, NULL},
    {"owner_engineer_id", DISPATCH_F_UUID, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL}};
static const dispatch_body_field_t owner_fields[] = {
    {"engineer_id", DISPATCH_F_UUID, 1, 0, 0, NULL},
    {"reason", DISPATCH_F_TEXT, 1, 1, TEXT_MAX_CHARS, NULL},
    {NULL, 0, 0, 0, 0, NULL}};
static const dispatch_body_field_t close_fields[] = {
    {"resolution", DISPATCH_F_TEXT, 1, 1, TEXT_MAX_CHARS, NULL}, {NULL, 0, 0, 0, 0, NULL}};

#define CASE(stmt, write, fields)                                                                  \
    {                                                                                              \
        stmt, DISPATCH_PATH_ID, "difficult case", write, write, 0, fields, write                   \
    }
#define TICKET(stmt, write, fields)                                                                \
    {                                                                                              \
        stmt, DISPATCH_PATH_TICKET, "ticket", write, write, 0, fields, write                       \
    }
static const dispatch_route_op_t op_flag = TICKET(DISPATCH_STMT_CASE_FLAG, 1, flag_fields);
static const dispatch_route_op_t op_note = CASE(DISPATCH_STMT_CASE_NOTE, 1, note_fields);
static const dispatch_route_op_t op_escalate =
    CASE(DISPATCH_STMT_CASE_ESCALATE, 1, escalate_fields);
static const dispatch_route_op_t op_owner = CASE(DISPATCH_STMT_CASE_OWNER, 1, owner_fields);
static const dispatch_route_op_t op_close = CASE(DISPATCH_STMT_CASE_CLOSE, 1, close_fields);
static const dispatch_route_op_t op_get = CASE(DISPATCH_STMT_CASE_GET, 0, NULL);
static const dispatch_route_op_t op_of_ticket = TICKET(DISPATCH_STMT_CASE_OF_TICKET, 0, NULL);

static void on_case_flag(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_flag);
}

static void on_case_note(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_note);
}

static void on_case_escalate(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_escalate);
}

static void on_case_owner(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_owner);
}

static void on_case_close(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_close);
}

static void on_case_get(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_get);
}

static void on_case_of_ticket(ac_http_req_t *req, void *arg)
{
    dispatch_run_route_op(arg, req, &op_of_ticket);
}

static int is_one_of(const char *s, const char *const *names)
{
    for (size_t i = 0; names[i]; i++)
        if (strcmp(names[i], s) == 0)
            return 1;
    return 0;
}

/* GET /v1/cases?state=&level=&owner_engineer_id=&limit=&cursor= */
static void on_case_list(ac_http_req_t *req, void *arg)
{
    static const char *const states[] = {"open", "closed", NULL};
    static const char *const levels[] = {"engineer", "supervisor", "manager", NULL};
    dispatch_t *self = arg;
    const char *state = ac_http_req_query(req, "state");
    const char *level = ac_http_req_query(req, "level");
    const char *owner = ac_http_req_query(req, "owner_engineer_id");
    char limit[24], cursor[24];
    int has_cursor;

    if (dispatch_is_refused(self, req))
        return;
    if (state && !is_one_of(state, states)) {
        ac_http_reply_error(req, 422, "invalid_field", "state", "state must be open or closed");
        return;
    }
    if (level && !is_one_of(level, levels)) {
        ac_http_reply_error(req, 422, "invalid_field", "level",
                            "level must be engineer, supervisor or manager");
        return;
    }
    if (owner && !ac_uuid_is_valid(owner)) {
        ac_http_reply_error(req, 422, "invalid_field", "owner_engineer_id",
                            "owner_engineer_id must be an engineer id (a UUID)");
        return;
    }
    if (dispatch_page_query(req, limit, cursor, sizeof limit, &has_cursor) < 0)
        return;
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_CASE_LIST,
                      (const char *[]){state, level, owner, has_cursor ? cursor : NULL, limit});
}

/* --- routes ------------------------------------------------------------------------------- */

#define READERS (AC_ROLE_AGENT | AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR | AC_ROLE_INTEGRATION)
#define WRITERS (AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR) /* admin is always allowed */

const ac_http_route_t dispatch_case_routes[] = {
    {"POST", "/v1/tickets/{}/case", WRITERS, on_case_flag, "cases_flag"},
    {"GET", "/v1/tickets/{}/case", READERS, on_case_of_ticket, "cases_of_ticket"},
    {"GET", "/v1/cases", AC_ROLE_SUPERVISOR, on_case_list, "cases_list"},
    {"GET", "/v1/cases/{}", READERS, on_case_get, "cases_get"},
    {"POST", "/v1/cases/{}/notes", WRITERS, on_case_note, "cases_note"},
    {"POST", "/v1/cases/{}/escalate", WRITERS, on_case_escalate, "cases_escalate"},
    {"POST", "/v1/cases/{}/owner", WRITERS, on_case_owner, "cases_owner"},
    {"POST", "/v1/cases/{}/close", WRITERS, on_case_close, "cases_close"},
    {NULL, NULL, 0, NULL, NULL},
};
