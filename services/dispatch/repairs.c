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
 * The routes are described by a table of operations (op_t): which statement, what the
 * path names, whether the caller's name is passed as the actor, and the body's fields in
 * the order of the statement's parameters. */
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
#include "validate.h"

#define MAX_FIELDS     8
#define MAX_KEY_LEN    100 /* longest path parameter echoed back */
#define LIST_LIMIT_DEF 50
#define LIST_LIMIT_MAX 200
#define MAX_TIME_US    253402300800000000LL /* 10000-01-01: times are 1970..9999 */

/* --- the body's fields ------------------------------------------------------------------ */

typedef enum field_kind {
    F_TEXT,     /* a string of min..max characters, not only white space */
    F_UUID,     /* an id */
    F_TIME,     /* RFC 3339 with an offset; passed on as UTC */
    F_RMA,      /* a vendor's RMA number */
    F_TRACKING, /* a carrier's tracking number */
    F_INT,      /* an integer in min..max */
    F_BOOL,     /* true or false */
    F_ENUM,     /* one of values */
    F_CONTACT,  /* {"name", "phone", "email"}, each optional; null removes it (PATCH) */
} field_kind_t;

typedef struct body_field {
    const char *name;
    field_kind_t kind;
    int is_required;
    long min, max;             /* F_TEXT: characters; F_INT: values */
    const char *const *values; /* F_ENUM: NULL-terminated */
} body_field_t;

/* The checked values, one per field, as the statement's text parameters. */
typedef struct body_values {
    const char *v[MAX_FIELDS];                 /* NULL: absent (SQL NULL) */
    char buf[MAX_FIELDS][AC_TIME_STRLEN + 24]; /* normalised times, numbers */
} body_values_t;

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

static int is_alnum(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* RMA numbers: 3-40 characters, letters, digits and - _ / . , starting with a letter or a
 * digit (vendors' forms vary: "RMA-2026-0042", "R12345/7"). */
static int rma_is_valid(const char *s)
{
    size_t len = strlen(s);
    if (len < 3 || len > 40 || !is_alnum(s[0]))
        return 0;
    for (size_t i = 1; i < len; i++)
        if (!is_alnum(s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '/' && s[i] != '.')
            return 0;
    return 1;
}

/* Tracking numbers: 6-40 letters and digits (UPS 1Z..., DHL, FedEx, postal services). */
static int tracking_is_valid(const char *s)
{
    size_t len = strlen(s);
    if (len < 6 || len > 40)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!is_alnum(s[i]))
            return 0;
    return 1;
}

/* 7-20 characters: digits, spaces, - ( ), a leading +; at least 7 digits. */
static int phone_is_valid(const char *s)
{
    size_t len = strlen(s);
    int digits = 0;
    if (len < 7 || len > 20)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9')
            digits++;
        else if (c == '+' && i == 0)
            continue;
        else if (c != ' ' && c != '-' && c != '(' && c != ')')
            return 0;
    }
    return digits >= 7;
}

static int email_is_valid(const char *s)
{
    size_t len = strlen(s);
    const char *at = strchr(s, '@');
    if (len == 0 || len > 254 || !at || at == s || strchr(at + 1, '@'))
        return 0;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return 0;
    const char *domain = at + 1;
    const char *dot = strrchr(domain, '.');
    return dot && domain[0] != '.' && dot[1] != '\0' && !strstr(domain, "..");
}

static int check_contact(const json_t *v, const char *name, dispatch_verr_t *err)
{
    const char *key;
    const json_t *part;
    char path[64];

    if (!json_is_object(v))
        return verr(err, 422, "invalid_field", name, "%s must be an object", name);
    json_object_foreach((json_t *)(uintptr_t)v, key, part)
    {
        snprintf(path, sizeof path, "%s.%.40s", name, key);
        if (strcmp(key, "name") != 0 && strcmp(key, "phone") != 0 && strcmp(key, "email") != 0)
            return verr(err, 422, "unknown_field", path, "unknown field %s", path);
        if (json_is_null(part))
            continue;
        if (!json_is_string(part))
            return verr(err, 422, "invalid_field", path, "%s must be a string", path);
        const char *s = json_string_value(part);
        if (strcmp(key, "name") == 0 && (utf8_len(s) < 1 || utf8_len(s) > 200 || is_blank(s)))
            return verr(err, 422, "invalid_field", path, "%s must be 1 to 200 characters", path);
        if (strcmp(key, "phone") == 0 && !phone_is_valid(s))
            return verr(err, 422, "invalid_field", path,
                        "%s must be 7-20 characters of digits, spaces, - ( ) and a leading +",
                        path);
        if (strcmp(key, "email") == 0 && !email_is_valid(s))
            return verr(err, 422, "invalid_field", path, "%s is not an email address", path);
    }
    return 0;
}

static int check_field(const body_field_t *f, const json_t *v, char *buf, size_t buflen,
                       const char **out, dispatch_verr_t *err)
{
    const char *s = json_string_value(v);
    int64_t us;

    switch (f->kind) {
    case F_INT:
        if (!json_is_integer(v) || json_integer_value(v) < f->min || json_integer_value(v) > f->max)
            return verr(err, 422, "invalid_field", f->name, "%s must be an integer from %ld to %ld",
                        f->name, f->min, f->max);
        snprintf(buf, buflen, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        *out = buf;
        return 0;
    case F_BOOL:
        if (!json_is_boolean(v))
            return verr(err, 422, "invalid_field", f->name, "%s must be true or false", f->name);
        *out = json_is_true(v) ? "true" : "false";
        return 0;
    case F_CONTACT:
        *out = NULL; /* passed within the document */
        return check_contact(v, f->name, err);
    default:
        break;
    }
    if (!s)
        return verr(err, 422, "invalid_field", f->name, "%s must be a string", f->name);
    switch (f->kind) {
    case F_TEXT:
        if (utf8_len(s) < (size_t)f->min || utf8_len(s) > (size_t)f->max ||
            (f->min > 0 && is_blank(s)))
            return verr(err, 422, "invalid_field", f->name, "%s must be %ld to %ld characters",
                        f->name, f->min, f->max);
        break;
    case F_UUID:
        if (!ac_uuid_is_valid(s))
            return verr(err, 422, "invalid_field", f->name, "%s must be an id (a UUID), not %.40s",
                        f->name, s);
        break;
    case F_TIME:
        if (ac_time_parse_rfc3339(s, &us) < 0 || us < 0 || us >= MAX_TIME_US)
            return verr(err, 422, "invalid_field", f->name,
                        "%s must be an RFC 3339 time with an offset, e.g. "
                        "2026-11-23T10:00:00Z, not %.40s",
                        f->name, s);
        ac_time_format_us(us, buf);
        s = buf;
        break;
    case F_RMA:
        if (!rma_is_valid(s))
            return verr(err, 422, "invalid_field", f->name,
                        "%s must be 3-40 letters, digits, - _ / . starting with a letter or "
                        "digit, not %.40s",
                        f->name, s);
        break;
    case F_TRACKING:
        if (!tracking_is_valid(s))
            return verr(err, 422, "invalid_field", f->name,
                        "%s must be 6-40 letters and digits, not %.40s", f->name, s);
        break;
    case F_ENUM: {
        size_t i;
        for (i = 0; f->values[i] && strcmp(f->values[i], s) != 0; i++)
            ;
        if (!f->values[i])
            return verr(err, 422, "invalid_field", f->name, "%s must be %s or %s, not %.40s",
                        f->name, f->values[0], f->values[1], s);
        break;
    }
    default:
        break;
    }
    *out = s;
    return 0;
}

/* Checks body against fields (NULL-name terminated): no unknown keys, required fields
 * present, each value of its kind. A JSON null is an absent field. */
static int check_body(const json_t *body, const body_field_t *fields, body_values_t *out,
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
        out->v[i] = NULL;
        v = json_object_get(body, f->name);
        if (!v || json_is_null(v)) {
            if (f->is_required)
                return verr(err, 422, "missing_field", f->name, "%s is required", f->name);
            continue;
        }
        if (check_field(f, v, out->buf[i], sizeof out->buf[i], &out->v[i], err) < 0)
            return AC_ERR_INVALID;
    }
    return 0;
}

/* --- operations ------------------------------------------------------------------------- */

enum path_kind { PATH_NONE, PATH_TICKET, PATH_ID };

typedef struct op {
    int stmt;
    enum path_kind path;
    const char *what; /* the path's object, for a 404: "send-out", "vendor" */
    int is_write;
    int with_actor;             /* the caller's name follows the path parameter */
    int is_doc;                 /* the checked body is one jsonb parameter */
    const body_field_t *fields; /* in parameter order; NULL: no body */
} op_t;

static void reply_verr(ac_http_req_t *req, const dispatch_verr_t *err)
{
    ac_http_reply_error(req, err->status, err->code, err->field[0] ? err->field : NULL, "%s",
                        err->message);
}

/* The path's key when it can name something of its kind; NULL (answered 404) otherwise. */
static const char *path_key(ac_http_req_t *req, const op_t *op)
{
    const char *key = ac_http_req_param(req, 0);
    int is_valid =
        key && (op->path == PATH_TICKET ? strlen(key) <= 32 && strncmp(key, "SV-", 3) == 0
                                        : ac_uuid_is_valid(key));
    if (!is_valid) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no %s %.*s", op->what, MAX_KEY_LEN,
                            key ? key : "");
        return NULL;
    }
    return key;
}

static void run_op(dispatch_t *self, ac_http_req_t *req, const op_t *op)
{
    const char *params[MAX_FIELDS + 2];
    body_values_t values = {.v = {NULL}}; /* all absent until checked */
    dispatch_verr_t err;
    char *doc = NULL;
    size_t n = 0;

    if (dispatch_is_refused(self, req))
        return;
    if (op->path != PATH_NONE && !(params[n++] = path_key(req, op)))
        return;
    if (op->with_actor)
        params[n++] = ac_http_req_principal(req);
    if (op->fields) {
        const json_t *body = ac_http_req_json(req);
        if (check_body(body, op->fields, &values, &err) < 0) {
            reply_verr(req, &err);
            return;
        }
        if (op->is_doc) {
            if (!(doc = json_dumps(body, JSON_COMPACT))) {
                ac_http_reply_error(req, 503, "unavailable", NULL, "out of memory; retry");
                return;
            }
            params[n++] = doc;
        } else {
            for (size_t i = 0; op->fields[i].name; i++)
                params[n++] = values.v[i];
        }
    }
    dispatch_http_sql(self, req, op->is_write, op->stmt, params); /* copies the parameters */
    free(doc);
}

/* The list routes' common query: limit (1..200, default 50) and cursor (a positive
 * integer), into text for the statement. 0, or answered 422. */
static int page_query(ac_http_req_t *req, char *limit, char *cursor, size_t len, int *has_cursor)
{
    const char *l = ac_http_req_query(req, "limit"), *c = ac_http_req_query(req, "cursor");
    char *end;
    long lv = LIST_LIMIT_DEF;

    if (l) {
        lv = strtol(l, &end, 10);
        if (!*l || *end || lv < 1 || lv > LIST_LIMIT_MAX) {
            ac_http_reply_error(req, 422, "invalid_field", "limit",
                                "limit must be an integer from 1 to %d", LIST_LIMIT_MAX);
            return AC_ERR_INVALID;
        }
    }
    *has_cursor = 0;
    if (c) {
        long long cv = strtoll(c, &end, 10);
        if (!*c || *end || cv < 1) {
            ac_http_reply_error(req, 422, "invalid_field", "cursor",
                                "cursor must be the next_cursor of the previous page");
            return AC_ERR_INVALID;
        }
        snprintf(cursor, len, "%lld", cv);
        *has_cursor = 1;
    }
    snprintf(limit, len, "%ld", lv);
    return 0;
}

/* --- vendors ------------------------------------------------------------------------------ */

static const body_field_t vendor_create_fields[] = {
    {"name", F_TEXT, 1, 1, 200, NULL},    {"contact", F_CONTACT, 1, 0, 0, NULL},
    {"address", F_TEXT, 0, 0, 500, NULL}, {"turnaround_days", F_INT, 1, 1, 365, NULL},
    {"active", F_BOOL, 0, 0, 0, NULL},    {NULL, 0, 0, 0, 0, NULL},
};

static const body_field_t vendor_patch_fields[] = {
    {"expected_version", F_INT, 0, 1, LONG_MAX, NULL},
    {"name", F_TEXT, 0, 1, 200, NULL},
    {"contact", F_CONTACT, 0, 0, 0, NULL},
    {"address", F_TEXT, 0, 0, 500, NULL},
    {"turnaround_days", F_INT, 0, 1, 365, NULL},
    {"active", F_BOOL, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const op_t op_vendor_create = {DISPATCH_STMT_VENDOR_CREATE, PATH_NONE, "vendor", 1, 0, 1,
                                      vendor_create_fields};
static const op_t op_vendor_patch = {DISPATCH_STMT_VENDOR_PATCH, PATH_ID, "vendor", 1, 0, 1,
                                     vendor_patch_fields};
static const op_t op_vendor_get = {DISPATCH_STMT_VENDOR_GET, PATH_ID, "vendor", 0, 0, 0, NULL};

static void on_vendor_create(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_vendor_create);
}

static void on_vendor_patch(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_vendor_patch);
}

static void on_vendor_get(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_vendor_get);
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
    if (page_query(req, limit, cursor, sizeof limit, &has_cursor) < 0)
        return;
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_VENDOR_LIST,
                      (const char *[]){active, has_cursor ? cursor : NULL, limit});
}

/* --- send-outs ---------------------------------------------------------------------------- */

static const char *const inspection_results[] = {"pass", "fail", NULL};

static const body_field_t repair_create_fields[] = {
    {"vendor_id", F_UUID, 1, 0, 0, NULL},
    {"rma_number", F_RMA, 1, 0, 0, NULL},
    {"vendor_due_at", F_TIME, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const body_field_t repair_ship_fields[] = {
    {"carrier", F_TEXT, 1, 1, 100, NULL},
    {"tracking", F_TRACKING, 1, 0, 0, NULL},
    {"shipped_at", F_TIME, 0, 0, 0, NULL},
    {"vendor_due_at", F_TIME, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const body_field_t repair_followup_fields[] = {
    {"note", F_TEXT, 1, 1, 2000, NULL},
    {"vendor_due_at", F_TIME, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const body_field_t repair_return_fields[] = {
    {"returned_at", F_TIME, 0, 0, 0, NULL},
    {"note", F_TEXT, 0, 1, 2000, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const body_field_t repair_inspect_fields[] = {
    {"result", F_ENUM, 1, 0, 0, inspection_results},
    {"note", F_TEXT, 0, 1, 2000, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const body_field_t repair_reroute_fields[] = {
    {"vendor_id", F_UUID, 1, 0, 0, NULL},
    {"rma_number", F_RMA, 1, 0, 0, NULL},
    {"reason", F_TEXT, 1, 1, 2000, NULL},
    {"vendor_due_at", F_TIME, 0, 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const op_t op_repair_create = {DISPATCH_STMT_REPAIR_CREATE, PATH_TICKET, "ticket", 1, 1, 0,
                                      repair_create_fields};
static const op_t op_repair_ship = {DISPATCH_STMT_REPAIR_SHIP, PATH_ID, "send-out", 1, 1, 0,
                                    repair_ship_fields};
static const op_t op_repair_followup = {DISPATCH_STMT_REPAIR_FOLLOWUP, PATH_ID, "send-out", 1, 1, 0,
                                        repair_followup_fields};
static const op_t op_repair_return = {DISPATCH_STMT_REPAIR_RETURN, PATH_ID, "send-out", 1, 1, 0,
                                      repair_return_fields};
static const op_t op_repair_inspect = {DISPATCH_STMT_REPAIR_INSPECT, PATH_ID, "send-out", 1, 1, 0,
                                       repair_inspect_fields};
static const op_t op_repair_reroute = {DISPATCH_STMT_REPAIR_REROUTE, PATH_ID, "send-out", 1, 1, 0,
                                       repair_reroute_fields};
static const op_t op_repair_get = {DISPATCH_STMT_REPAIR_GET, PATH_ID, "send-out", 0, 0, 0, NULL};
static const op_t op_repair_list = {
    DISPATCH_STMT_REPAIR_LIST, PATH_TICKET, "ticket", 0, 0, 0, NULL};

static void on_repair_create(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_repair_create);
}

static void on_repair_ship(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_repair_ship);
}

static void on_repair_followup(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_repair_followup);
}

static void on_repair_return(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_repair_return);
}

static void on_repair_inspect(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_repair_inspect);
}

static void on_repair_reroute(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_repair_reroute);
}

static void on_repair_get(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_repair_get);
}

static void on_repair_list(ac_http_req_t *req, void *arg)
{
    run_op(arg, req, &op_repair_list);
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
