/* work.c — work records (issue 4, item 4): one visit or remote session of an engineer on a
 * ticket, and its steps — travel, arrival, start, pause (waiting for parts or for the
 * customer), resume, completion (with the report) and the customer's confirmation (name,
 * time, hash of the signed sheet). Each step is an event visit.<step> (WorkStepRecorded);
 * intake follows them to keep the ticket's status and history current.
 *
 * This file checks the shape of each request (types, lengths, enums, the report and the
 * confirmation) and answers 400/403/404/422 before any database work; the state machine,
 * the times, the engineer and the ticket are checked by the SQL functions of
 * migrations/006_work.sql, which write and render in one transaction (ops.h).
 *
 *   POST /v1/tickets/{number}/work   engineer, supervisor          a new record
 *   GET  /v1/tickets/{number}/work   agent, engineer, supervisor,  the ticket's records
 *   GET  /v1/work/{id}               integration                   one record
 *   POST /v1/work/{id}/steps         engineer, supervisor; agent only for "confirmed" */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_time.h"
#include "ac_uuid.h"
#include "dispatch.h"
#include "ops.h"
#include "store.h"
#include "validate.h"

#define NOTE_MAX_CHARS    2000
#define TEXT_MAX_CHARS    4000 /* diagnosis, actions */
#define PART_NUMBER_MAX   64
#define SERIAL_MAX        100
#define PARTS_MAX         100
#define QUANTITY_MAX      100000
#define ATTACHMENTS_MAX   50
#define ATTACHMENT_MAX    1000
#define SIGNER_MAX_CHARS  200
#define SHA256_HEX_LEN    64
#define TICKET_NUMBER_MAX 32

/* Why a request was refused, before any database work. */
typedef struct work_verr {
    int status;
    const char *code;
    char field[96];
    char message[256];
} work_verr_t;

/* Fills *err: why the request is refused. */
__attribute__((format(printf, 5, 6))) static void
set_verr(work_verr_t *err, int status, const char *code, const char *field, const char *fmt, ...)
{
    va_list ap;
    err->status = status;
    err->code = code;
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

/* set_verr(), as an expression worth AC_ERR_INVALID: `return verr(...);`. A macro so that
 * the value is visible at each caller: clang's analyzer does not follow calls into variadic
 * functions, and would take a refusal of get_string() for a success that left *out unset.
 * (Where the value is not used, call set_verr().) */
#define verr(...) (set_verr(__VA_ARGS__), AC_ERR_INVALID)

static void reply_verr(ac_http_req_t *req, const work_verr_t *err)
{
    ac_http_reply_error(req, err->status, err->code, err->field[0] ? err->field : NULL, "%s",
                        err->message);
}

/* Unknown keys of obj are refused; prefix names the object ("report."). */
static int check_known(const json_t *obj, const char *const *names, const char *prefix,
                       work_verr_t *err)
{
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)(uintptr_t)obj, key, v)
    {
        size_t i;
        for (i = 0; names[i] && strcmp(names[i], key) != 0; i++)
            ;
        if (!names[i]) {
            char path[96];
            snprintf(path, sizeof path, "%s%.60s", prefix, key);
            return verr(err, 422, "unknown_field", path, "unknown field %s", path);
        }
    }
    return 0;
}

/* obj[key] as a string of min..max characters; *out NULL when absent and !is_required. */
static int get_string(const json_t *obj, const char *key, const char *path, int is_required,
                      size_t min, size_t max, const char **out, work_verr_t *err)
{
    const json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (is_required)
            return verr(err, 422, "missing_field", path, "%s is required", path);
        return 0;
    }
    if (!json_is_string(v))
        return verr(err, 422, "invalid_field", path, "%s must be a string", path);
    size_t n = dispatch_utf8_len(json_string_value(v));
    if (n < min || n > max)
        return verr(err, 422, "invalid_field", path, "%s must be %zu to %zu characters", path, min,
                    max);
    *out = json_string_value(v);
    return 0;
}

static int get_time(const json_t *obj, const char *key, const char *path, int is_required,
                    const char **out, work_verr_t *err)
{
    int64_t us;
    if (get_string(obj, key, path, is_required, 1, 64, out, err) < 0)
        return AC_ERR_INVALID;
    if (*out && ac_time_parse_rfc3339(*out, &us) < 0)
        return verr(err, 422, "invalid_field", path,
                    "%s must be an RFC 3339 time such as 2026-11-22T10:00:00Z", path);
    return 0;
}

static int is_name_in(const char *s, const char *const *names)
{
    for (size_t i = 0; s && names[i]; i++)
        if (strcmp(s, names[i]) == 0)
            return 1;
    return 0;
}

/* --- the report and the confirmation --------------------------------------------------- */

/* parts_used / old_parts_returned: [{part_number, quantity, serial_number?}] -> *out. */
static int check_parts(const json_t *parts, const char *name, json_t *out, work_verr_t *err)
{
    static const char *const keys[] = {"part_number", "quantity", "serial_number", NULL};
    char path[96], p2[128];
    size_t i;
    const json_t *p;

    snprintf(path, sizeof path, "report.%s", name);
    if (!json_is_array(parts))
        return verr(err, 422, "invalid_field", path, "%s must be an array", path);
    if (json_array_size(parts) > PARTS_MAX)
        return verr(err, 422, "invalid_field", path, "%s: at most %d parts", path, PARTS_MAX);
    json_array_foreach(parts, i, p)
    {
        const char *number, *serial;
        snprintf(path, sizeof path, "report.%s[%zu]", name, i);
        if (!json_is_object(p))
            return verr(err, 422, "invalid_field", path, "%s must be an object", path);
        snprintf(p2, sizeof p2, "%s.", path);
        if (check_known(p, keys, p2, err) < 0)
            return AC_ERR_INVALID;
        snprintf(p2, sizeof p2, "%s.part_number", path);
        if (get_string(p, "part_number", p2, 1, 1, PART_NUMBER_MAX, &number, err) < 0)
            return AC_ERR_INVALID;
        snprintf(p2, sizeof p2, "%s.quantity", path);
        const json_t *q = json_object_get(p, "quantity");
        if (!q)
            return verr(err, 422, "missing_field", p2, "%s is required", p2);
        if (!json_is_integer(q) || json_integer_value(q) < 1 ||
            json_integer_value(q) > QUANTITY_MAX)
            return verr(err, 422, "invalid_field", p2, "%s must be an integer from 1 to %d", p2,
                        QUANTITY_MAX);
        snprintf(p2, sizeof p2, "%s.serial_number", path);
        if (get_string(p, "serial_number", p2, 0, 1, SERIAL_MAX, &serial, err) < 0)
            return AC_ERR_INVALID;
        json_t *part =
            json_pack("{s:s,s:I}", "part_number", number, "quantity", json_integer_value(q));
        if (!part ||
            (serial && json_object_set_new(part, "serial_number", json_string(serial)) < 0) ||
            json_array_append_new(out, part) < 0) {
            json_decref(part);
            return verr(err, 503, "unavailable", NULL, "out of memory; retry");
        }
    }
    return 0;
}

/* The completion report -> *out (normalised: every list present). */
static int check_report(const json_t *r, json_t **out, work_verr_t *err)
{
    static const char *const keys[] = {"diagnosis",          "actions",     "parts_used",
                                       "old_parts_returned", "attachments", NULL};
    const char *diagnosis, *actions;
    const json_t *v;
    json_t *used = NULL, *returned = NULL, *attachments = NULL;
    size_t i;

    *out = NULL;
    if (!json_is_object(r))
        return verr(err, 422, "invalid_field", "report", "report must be an object");
    if (check_known(r, keys, "report.", err) < 0 ||
        get_string(r, "diagnosis", "report.diagnosis", 1, 1, TEXT_MAX_CHARS, &diagnosis, err) < 0 ||
        get_string(r, "actions", "report.actions", 1, 1, TEXT_MAX_CHARS, &actions, err) < 0)
        return AC_ERR_INVALID;
    if (!(used = json_array()) || !(returned = json_array()) || !(attachments = json_array()))
        goto nomem;
    if (((v = json_object_get(r, "parts_used")) && check_parts(v, "parts_used", used, err) < 0) ||
        ((v = json_object_get(r, "old_parts_returned")) &&
         check_parts(v, "old_parts_returned", returned, err) < 0))
        goto fail;
    if ((v = json_object_get(r, "attachments"))) {
        const json_t *a;
        if (!json_is_array(v) || json_array_size(v) > ATTACHMENTS_MAX) {
            set_verr(err, 422, "invalid_field", "report.attachments",
                     "report.attachments must be an array of at most %d references",
                     ATTACHMENTS_MAX);
            goto fail;
        }
        json_array_foreach(v, i, a)
        {
            char path[64];
            const char *s = json_string_value(a);
            snprintf(path, sizeof path, "report.attachments[%zu]", i);
            if (!s || dispatch_utf8_len(s) < 1 || dispatch_utf8_len(s) > ATTACHMENT_MAX) {
                set_verr(err, 422, "invalid_field", path,
                         "%s must be a reference (URL or id) of 1 to %d characters", path,
                         ATTACHMENT_MAX);
                goto fail;
            }
            if (json_array_append_new(attachments, json_string(s)) < 0)
                goto nomem;
        }
    }
    *out =
        json_pack("{s:s,s:s,s:o,s:o,s:o}", "diagnosis", diagnosis, "actions", actions, "parts_used",
                  used, "old_parts_returned", returned, "attachments", attachments);
    if (!*out) /* json_pack steals the references even when it fails */
        return verr(err, 503, "unavailable", NULL, "out of memory; retry");
    return 0;
nomem:
    set_verr(err, 503, "unavailable", NULL, "out of memory; retry");
fail:
    json_decref(used);
    json_decref(returned);
    json_decref(attachments);
    return AC_ERR_INVALID;
}

/* The customer's confirmation -> *out (the hash in lower case). */
static int check_confirmation(const json_t *c, json_t **out, work_verr_t *err)
{
    static const char *const keys[] = {"name", "signed_at", "sheet_sha256", NULL};
    const char *name, *signed_at, *hash;
    char lower[SHA256_HEX_LEN + 1];

    *out = NULL;
    if (!json_is_object(c))
        return verr(err, 422, "invalid_field", "confirmation", "confirmation must be an object");
    if (check_known(c, keys, "confirmation.", err) < 0 ||
        get_string(c, "name", "confirmation.name", 1, 1, SIGNER_MAX_CHARS, &name, err) < 0 ||
        get_time(c, "signed_at", "confirmation.signed_at", 1, &signed_at, err) < 0 ||
        get_string(c, "sheet_sha256", "confirmation.sheet_sha256", 1, 1, 200, &hash, err) < 0)
        return AC_ERR_INVALID;
    if (strlen(hash) != SHA256_HEX_LEN)
        return verr(err, 422, "invalid_field", "confirmation.sheet_sha256",
                    "confirmation.sheet_sha256 must be the SHA-256 of the sheet: %d hex digits",
                    SHA256_HEX_LEN);
    for (size_t i = 0; i < SHA256_HEX_LEN; i++) {
        if (!isxdigit((unsigned char)hash[i]))
            return verr(err, 422, "invalid_field", "confirmation.sheet_sha256",
                        "confirmation.sheet_sha256 must be %d hex digits", SHA256_HEX_LEN);
        lower[i] = (char)tolower((unsigned char)hash[i]);
    }
    lower[SHA256_HEX_LEN] = '\0';
    if (!(*out = json_pack("{s:s,s:s,s:s}", "name", name, "signed_at", signed_at, "sheet_sha256",
                           lower)))
        return verr(err, 503, "unavailable", NULL, "out of memory; retry");
    return 0;
}

/* --- requests -------------------------------------------------------------------------- */

static const char *const kind_names[] = {"visit", "remote", NULL};
static const char *const step_names[] = {"travel",  "arrived",   "started",   "paused",
                                         "resumed", "completed", "confirmed", NULL};
static const char *const pause_reason_names[] = {"waiting_parts", "waiting_customer", NULL};

/* The ticket number of the path, or 404 (answered). */
static const char *path_ticket(ac_http_req_t *req)
{
    const char *number = ac_http_req_param(req, 0);
    if (!number || strlen(number) > TICKET_NUMBER_MAX || strncmp(number, "SV-", 3) != 0) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no ticket %.40s", number ? number : "");
        return NULL;
    }
    return number;
}

/* The work record id of the path, or 404 (answered). */
static const char *path_work(ac_http_req_t *req)
{
    const char *id = ac_http_req_param(req, 0);
    if (!id || !ac_uuid_is_valid(id)) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no work record %.40s", id ? id : "");
        return NULL;
    }
    return id;
}

/* { kind, engineer_id?, note? } */
static void on_work_create(ac_http_req_t *req, void *arg)
{
    static const char *const keys[] = {"kind", "engineer_id", "note", NULL};
    dispatch_t *self = arg;
    const json_t *body = ac_http_req_json(req);
    const char *number, *kind, *engineer_id, *note;
    work_verr_t err;

    if (dispatch_is_refused(self, req) || !(number = path_ticket(req)))
        return;
    if (check_known(body, keys, "", &err) < 0 ||
        get_string(body, "kind", "kind", 1, 1, 16, &kind, &err) < 0 ||
        get_string(body, "engineer_id", "engineer_id", 0, 1, 64, &engineer_id, &err) < 0 ||
        get_string(body, "note", "note", 0, 0, NOTE_MAX_CHARS, &note, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    if (!is_name_in(kind, kind_names)) {
        ac_http_reply_error(req, 422, "invalid_field", "kind",
                            "kind must be visit or remote (not \"%.40s\")", kind);
        return;
    }
    if (engineer_id && !ac_uuid_is_valid(engineer_id)) {
        ac_http_reply_error(req, 422, "invalid_field", "engineer_id",
                            "engineer_id must be an engineer's id (a UUID)");
        return;
    }
    dispatch_http_sql(self, req, 1, DISPATCH_STMT_WORK_CREATE,
                      (const char *[]){number, kind, engineer_id, note, ac_http_req_principal(req),
                                       dispatch_engineer_scope(req)});
}

/* { step, at?, note?, pause_reason?, report?, confirmation?, expected_version? } */
static void on_work_step(ac_http_req_t *req, void *arg)
{
    static const char *const keys[] = {
        "step", "at", "note", "pause_reason", "report", "confirmation", "expected_version", NULL};
    dispatch_t *self = arg;
    const json_t *body = ac_http_req_json(req);
    const char *id, *step, *at, *note, *pause_reason;
    json_t *report = NULL, *confirmation = NULL;
    char *report_s = NULL, *confirmation_s = NULL, version_s[24] = "";
    const json_t *v;
    work_verr_t err;

    if (dispatch_is_refused(self, req) || !(id = path_work(req)))
        return;
    if (check_known(body, keys, "", &err) < 0 ||
        get_string(body, "step", "step", 1, 1, 16, &step, &err) < 0)
        goto refused;
    if (!is_name_in(step, step_names)) {
        set_verr(&err, 422, "invalid_field", "step",
                 "step must be one of travel, arrived, started, paused, resumed, completed, "
                 "confirmed (not \"%.40s\")",
                 step);
        goto refused;
    }
    if (ac_http_req_role(req) == AC_ROLE_AGENT && strcmp(step, "confirmed") != 0) {
        ac_http_reply_error(req, 403, "forbidden", NULL,
                            "an agent records only the customer's confirmation");
        return;
    }
    if (get_time(body, "at", "at", 0, &at, &err) < 0 ||
        get_string(body, "note", "note", 0, 0, NOTE_MAX_CHARS, &note, &err) < 0 ||
        get_string(body, "pause_reason", "pause_reason", 0, 1, 32, &pause_reason, &err) < 0)
        goto refused;
    if ((v = json_object_get(body, "expected_version")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1) {
            set_verr(&err, 422, "invalid_field", "expected_version",
                     "expected_version must be an integer >= 1");
            goto refused;
        }
        snprintf(version_s, sizeof version_s, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    }

    /* what goes with which step */
    int is_paused = strcmp(step, "paused") == 0;
    int is_completed = strcmp(step, "completed") == 0;
    int is_confirmed = strcmp(step, "confirmed") == 0;
    const json_t *rv = json_object_get(body, "report");
    const json_t *cv = json_object_get(body, "confirmation");
    if (json_is_null(rv)) /* json_is_null() is false for NULL */
        rv = NULL;
    if (json_is_null(cv))
        cv = NULL;
    if (is_paused && !pause_reason) {
        set_verr(&err, 422, "missing_field", "pause_reason",
                 "pause_reason (waiting_parts or waiting_customer) is required with step paused");
        goto refused;
    }
    if (pause_reason && !is_paused) {
        set_verr(&err, 422, "invalid_field", "pause_reason",
                 "pause_reason goes only with step paused");
        goto refused;
    }
    if (pause_reason && !is_name_in(pause_reason, pause_reason_names)) {
        set_verr(&err, 422, "invalid_field", "pause_reason",
                 "pause_reason must be waiting_parts or waiting_customer (not \"%.40s\")",
                 pause_reason);
        goto refused;
    }
    if (is_completed && !rv) {
        set_verr(&err, 422, "missing_field", "report", "report is required with step completed");
        goto refused;
    }
    if (rv && !is_completed) {
        set_verr(&err, 422, "invalid_field", "report", "report goes only with step completed");
        goto refused;
    }
    if (is_confirmed && !cv) {
        set_verr(&err, 422, "missing_field", "confirmation",
                 "confirmation is required with step confirmed");
        goto refused;
    }
    if (cv && !is_confirmed) {
        set_verr(&err, 422, "invalid_field", "confirmation",
                 "confirmation goes only with step confirmed");
        goto refused;
    }
    if ((rv && check_report(rv, &report, &err) < 0) ||
        (cv && check_confirmation(cv, &confirmation, &err) < 0))
        goto refused;
    if ((report && !(report_s = json_dumps(report, JSON_COMPACT))) ||
        (confirmation && !(confirmation_s = json_dumps(confirmation, JSON_COMPACT)))) {
        ac_http_reply_error(req, 503, "unavailable", NULL, "out of memory; retry");
        goto out;
    }
    dispatch_http_sql(self, req, 1, DISPATCH_STMT_WORK_STEP,
                      (const char *[]){id, step, at, note, pause_reason, report_s, confirmation_s,
                                       version_s[0] ? version_s : NULL, ac_http_req_principal(req),
                                       dispatch_engineer_scope(req)});
    goto out;
refused:
    reply_verr(req, &err);
out:
    json_decref(report);
    json_decref(confirmation);
    free(report_s);
    free(confirmation_s);
}

static void on_work_get(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *id;
    if (dispatch_is_refused(self, req) || !(id = path_work(req)))
        return;
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_WORK_GET, (const char *[]){id});
}

static void on_work_list(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *number;
    if (dispatch_is_refused(self, req) || !(number = path_ticket(req)))
        return;
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_WORK_LIST, (const char *[]){number});
}

#define READERS (AC_ROLE_AGENT | AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR | AC_ROLE_INTEGRATION)

const ac_http_route_t dispatch_work_routes[] = {
    {"POST", "/v1/tickets/{}/work", AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR, on_work_create,
     "work_create"},
    {"GET", "/v1/tickets/{}/work", READERS, on_work_list, "work_list"},
    {"GET", "/v1/work/{}", READERS, on_work_get, "work_get"},
    {"POST", "/v1/work/{}/steps", AC_ROLE_AGENT | AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR,
     on_work_step, "work_step"},
    {NULL, NULL, 0, NULL, NULL},
};
