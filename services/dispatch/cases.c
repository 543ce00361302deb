/* cases.c — difficult cases (issue 4, item 6) over HTTP (docs/dispatch-api.md, "Difficult
 * cases"): a ticket is flagged as difficult, the case gets an owner and a tracking file of
 * notes, escalates up the chain engineer -> supervisor -> manager with a reason, changes
 * owner, and is closed with a resolution; each step is an event (case.*).
 *
 * As in repairs.c, this module checks the path, the query and the body's shape (types,
 * lengths, ids) and runs one SQL function of migrations/008_cases.sql through ops.c, which
 * decides what depends on state (one open case per ticket, the order of the levels, the
 * owner's role fitting the level, a closed case staying closed), writes, and returns the
 * reply and the events. A refused request changes nothing. */
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

#define MAX_FIELDS     4
#define MAX_KEY_LEN    100 /* longest path parameter echoed back */
#define TEXT_MAX_CHARS 4000
#define LIST_LIMIT_DEF 50
#define LIST_LIMIT_MAX 200

/* A body field: a text of 1..TEXT_MAX_CHARS characters (not only white space), or an id. */
typedef struct body_field {
    const char *name;
    int is_id;
    int is_required;
} body_field_t;

enum path_kind { PATH_TICKET, PATH_CASE };

typedef struct op {
    int stmt;
    enum path_kind path;
    int is_write;               /* writes also pass the caller's name as the actor */
    const body_field_t *fields; /* in parameter order, after path and actor; NULL: no body */
} op_t;

static size_t utf8_len(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

static int is_blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
            return 0;
    return 1;
}

__attribute__((format(printf, 5, 6))) static int
verr(dispatch_verr_t *err, int status, const char *code, const char *field, const char *fmt, ...)
{
    va_list ap;
    err->status = status;
    snprintf(err->code, sizeof err->code, "%s", code);
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return AC_ERR_INVALID;
}

/* No unknown keys, required fields present (a JSON null is absent), values of their kind;
 * values[i] borrowed from body or NULL. */
static int check_body(const json_t *body, const body_field_t *fields, const char **values,
                      dispatch_verr_t *err)
{
    const char *key;
    const json_t *v;
    size_t i;

    if (!json_is_object(body))
        return verr(err, 400, "malformed_json", NULL, "the body must be a JSON object");
    json_object_foreach((json_t *)(uintptr_t)body, key, v)
    {
        for (i = 0; fields[i].name && strcmp(fields[i].name, key) != 0; i++)
            ;
        if (!fields[i].name)
            return verr(err, 422, "unknown_field", key, "unknown field %.60s", key);
    }
    for (i = 0; fields[i].name; i++) {
        const body_field_t *f = &fields[i];
        const char *s;
        values[i] = NULL;
        v = json_object_get(body, f->name);
        if (!v || json_is_null(v)) {
            if (f->is_required)
                return verr(err, 422, "missing_field", f->name, "%s is required", f->name);
            continue;
        }
        if (!(s = json_string_value(v)))
            return verr(err, 422, "invalid_field", f->name, "%s must be a string", f->name);
        if (f->is_id && !ac_uuid_is_valid(s))
            return verr(err, 422, "invalid_field", f->name,
                        "%s must be an engineer id (a UUID), not %.40s", f->name, s);
        if (!f->is_id && (utf8_len(s) < 1 || utf8_len(s) > TEXT_MAX_CHARS || is_blank(s)))
            return verr(err, 422, "invalid_field", f->name, "%s must be 1 to %d characters",
                        f->name, TEXT_MAX_CHARS);
        values[i] = s;
    }
    return 0;
}

static void run_op(dispatch_t *self, ac_http_req_t *req, const op_t *op)
{
    const char *params[MAX_FIELDS + 2];
    const char *key = ac_http_req_param(req, 0);
    dispatch_verr_t err;
    size_t n = 0;

    if (dispatch_is_refused(self, req))
        return;
    if (!key || (op->path == PATH_TICKET ? strlen(key) > 32 || strncmp(key, "SV-", 3) != 0
                                         : !ac_uuid_is_valid(key))) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no %s %.*s",
                            op->path == PATH_TICKET ? "ticket" : "difficult case", MAX_KEY_LEN,
                            key ? key : "");
        return;
    }
    params[n++] = key;
    if (op->is_write)
        params[n++] = ac_http_req_principal(req);
    if (op->fields) {
        if (check_body(ac_http_req_json(req), op->fields, params + n, &err) < 0) {
            ac_http_reply_error(req, err.status, err.code, err.field[0] ? err.field : NULL, "%s",
                                err.message);
            return;
        }
    }
    dispatch_http_sql(self, req, op->is_write, op->stmt, params);
}

/* --- operations ------------------------------------------------------------------------- */

static const body_field_t flag_fields[] = {
    {"reason", 0, 1}, {"owner_engineer_id", 1, 0}, {NULL, 0, 0}};
static const body_field_t note_fields[] = {{"note", 0, 1}, {NULL, 0, 0}};
static const body_field_t escalate_fields[] = {
    {"reason", 0, 1}, {"owner_engineer_id", 1, 0}, {NULL, 0, 0}};
static const body_field_t owner_fields[] = {{"engineer_id", 1, 1}, {"reason", 0, 1}, {NULL, 0, 0}};
static const body_field_t close_fields[] = {{"resolution", 0, 1}, {NULL, 0, 0}};

static const op_t op_flag = {DISPATCH_STMT_CASE_FLAG, PATH_TICKET, 1, flag_fields};
static const op_t op_note = {DISPATCH_STMT_CASE_NOTE, PATH_CASE, 1, note_fields};
static const op_t op_escalate = {DISPATCH_STMT_CASE_ESCALATE, PATH_CASE, 1, escalate_fields};
static const op_t op_owner = {DISPATCH_STMT_CASE_OWNER, PATH_CASE, 1, owner_fields};
static const op_t op_close = {DISPATCH_STMT_CASE_CLOSE, PATH_CASE, 1, close_fields};
static const op_t op_get = {DISPATCH_STMT_CASE_GET, PATH_CASE, 0, NULL};
static const op_t op_of_ticket = {DISPATCH_STMT_CASE_OF_TICKET, PATH_TICKET, 0, NULL};

static void on_case_flag(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_flag);
}

static void on_case_note(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_note);
}

static void on_case_escalate(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_escalate);
}

static void on_case_owner(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_owner);
}

static void on_case_close(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_close);
}

static void on_case_get(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_get);
}

static void on_case_of_ticket(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_of_ticket);
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
    const char *l = ac_http_req_query(req, "limit"), *c = ac_http_req_query(req, "cursor");
    char limit[24], cursor[24];
    long lv = LIST_LIMIT_DEF;
    long long cv = 0;
    char *end;

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
    if (l && ((lv = strtol(l, &end, 10)), !*l || *end || lv < 1 || lv > LIST_LIMIT_MAX)) {
        ac_http_reply_error(req, 422, "invalid_field", "limit",
                            "limit must be an integer from 1 to %d", LIST_LIMIT_MAX);
        return;
    }
    if (c && ((cv = strtoll(c, &end, 10)), !*c || *end || cv < 1)) {
        ac_http_reply_error(req, 422, "invalid_field", "cursor",
                            "cursor must be the next_cursor of the previous page");
        return;
    }
    snprintf(limit, sizeof limit, "%ld", lv);
    snprintf(cursor, sizeof cursor, "%lld", cv);
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_CASE_LIST,
                      (const char *[]){state, level, owner, c ? cursor : NULL, limit});
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
