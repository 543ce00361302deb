/* ops.c — see ops.h. */
#include "ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "ac_event.h"
#include "ac_log.h"
#include "ac_pbjson.h"
#include "ac_uuid.h"
#include "store.h"

/* --- ac_service's, under dispatch's names ------------------------------------------- */

void dispatch_op_attach(dispatch_t *self, dispatch_op_t *op, ac_http_req_t *req)
{
    ac_service_op_attach(&self->base, op, req);
}

void dispatch_op_detach(dispatch_t *self, dispatch_op_t *op)
{
    ac_service_op_detach(&self->base, op);
}

void dispatch_reply_db_error(ac_http_req_t *req, int err, const ac_db_txn_t *txn)
{
    ac_service_reply_db_error(req, err, txn);
}

const char *dispatch_engineer_scope(const ac_http_req_t *req)
{
    return ac_http_req_role(req) == AC_ROLE_ENGINEER ? ac_http_req_engineer(req) : NULL;
}

int dispatch_is_refused(dispatch_t *self, ac_http_req_t *req)
{
    return ac_service_is_refused(&self->base, req);
}

/* --- events -------------------------------------------------------------------------- */

/* One EVENT -> packed Envelope bytes (malloc'ed) and its topic. */
static int pack_event(const json_t *ev, const char *correlation_id, char event_id[AC_UUID_STRLEN],
                      uint8_t **buf, size_t *len)
{
    const char *topic = json_string_value(json_object_get(ev, "topic"));
    const char *subject = json_string_value(json_object_get(ev, "subject"));
    const char *pkey = json_string_value(json_object_get(ev, "partition_key"));
    const json_t *payload = json_object_get(ev, "payload");
    Aftercare__V1__Envelope hdr;
    ac_event_ids_t ids;
    ProtobufCMessage *msg = NULL;
    char err[256];
    json_t *env;
    int rc;

    if (!topic || !json_is_object(payload) || json_object_size(payload) != 1) {
        ac_error("dispatch: an event without topic or with other than one payload member");
        return AC_ERR_INVALID;
    }
    const char *own_corr = json_string_value(json_object_get(ev, "correlation_id"));
    if (own_corr && own_corr[0])
        correlation_id = own_corr; /* an emitted event keeps its cause's id */
    ac_event_init(&hdr, &ids, "dispatch", topic, subject ? subject : "", pkey ? pkey : "",
                  json_integer_value(json_object_get(ev, "ticket_version")),
                  correlation_id ? correlation_id : "");
    if (!(env = json_deep_copy(payload)))
        return AC_ERR_NOMEM;
    rc = json_object_set_new(env, "id", json_string(hdr.id)) |
         json_object_set_new(env, "source", json_string(hdr.source)) |
         json_object_set_new(env, "type", json_string(hdr.type)) |
         json_object_set_new(env, "subject", json_string(hdr.subject)) |
         json_object_set_new(env, "time", json_string(hdr.time)) |
         json_object_set_new(env, "partition_key", json_string(hdr.partition_key)) |
         json_object_set_new(env, "ticket_version", json_integer(hdr.ticket_version)) |
         json_object_set_new(env, "correlation_id", json_string(hdr.correlation_id)) |
         json_object_set_new(env, "spec_version", json_string(hdr.spec_version));
    if (rc != 0) {
        json_decref(env);
        return AC_ERR_NOMEM;
    }
    rc = ac_pbjson_to_message(&aftercare__v1__envelope__descriptor, env, &msg, err, sizeof err);
    json_decref(env);
    if (rc == AC_ERR_INVALID)
        ac_error("dispatch: event %s does not fit the proto: %s", topic, err);
    if (rc < 0)
        return rc;
    rc = ac_event_pack((const Aftercare__V1__Envelope *)msg, buf, len);
    protobuf_c_message_free_unpacked(msg, NULL);
    if (rc == 0)
        memcpy(event_id, ids.id, AC_UUID_STRLEN);
    return rc;
}

int dispatch_events_queue(dispatch_t *self, ac_db_txn_t *txn, const json_t *events,
                          const char *correlation_id)
{
    size_t i;
    const json_t *ev;
    ac_outbox_rows_t rows;
    int rc = 0;

    if (json_array_size(events) == 0)
        return 0;
    if (ac_outbox_rows_init(&rows) < 0)
        return AC_ERR_NOMEM;
    json_array_foreach(events, i, ev)
    {
        char event_id[AC_UUID_STRLEN];
        uint8_t *buf;
        size_t len;
        const char *topic = json_string_value(json_object_get(ev, "topic"));
        if ((rc = pack_event(ev, correlation_id, event_id, &buf, &len)) < 0)
            break;
        rc = ac_outbox_rows_append(&rows, event_id, topic, buf, len);
        free(buf);
        if (rc < 0)
            break;
        ac_log_at(AC_LOG_DEBUG, NULL, event_id, "%s queued", topic);
    }
    if (rc == 0)
        rc = dispatch_store_add_outbox_rows(txn, &rows);
    ac_outbox_rows_clear(&rows);
    if (rc < 0)
        return rc;
    json_array_foreach(events, i, ev) /* counted once they are on their way */
    {
        char labels[AC_TOPIC_MAX + 16];
        snprintf(labels, sizeof labels, "topic=\"%s\"",
                 json_string_value(json_object_get(ev, "topic")));
        ac_metrics_add(self->metrics, "events_total", labels, 1);
    }
    return 0;
}

/* --- one SQL call -------------------------------------------------------------------- */

typedef struct sql_call {
    dispatch_op_t op; /* first; attached only for HTTP calls */
    dispatch_t *self;
    ac_db_txn_t *txn; /* owned */
    int is_write;
    int is_committing;
    json_t *result; /* owned: the function's answer */
    dispatch_sql_done_fn done;
    void *arg;
    char correlation_id[AC_UUID_STRLEN + 64];
} sql_call_t;

static void call_free(sql_call_t *c)
{
    dispatch_op_detach(c->self, &c->op);
    ac_db_txn_free(&c->txn);
    json_decref(c->result);
    free(c);
}

/* Ends the call: answers the request or calls done. err < 0 or c->result. */
static void call_end(sql_call_t *c, int err)
{
    if (c->done) {
        if (err == AC_ERR_DB && c->txn)
            ac_warn("dispatch: %s failed (SQLSTATE %s): %s",
                    c->correlation_id[0] ? c->correlation_id : "background operation",
                    ac_db_txn_sqlstate(c->txn), ac_db_txn_errmsg(c->txn));
        c->done(c->arg, err, err < 0 ? NULL : c->result);
    } else if (c->op.req) {
        ac_http_req_t *req = c->op.req;
        if (err == AC_ERR_UNAVAILABLE && c->is_committing)
            ac_http_reply_error(req, 503, "unavailable", NULL,
                                "the database connection was lost during COMMIT: the change "
                                "may or may not have been made; check before retrying");
        else if (err == AC_ERR_INVALID)
            ac_http_reply_error(req, 500, "internal", NULL, "unexpected answer from the database");
        else if (err < 0)
            dispatch_reply_db_error(req, err, c->txn);
        else {
            const json_t *e = json_object_get(c->result, "error");
            if (e) {
                const char *field = json_string_value(json_object_get(e, "field"));
                const char *msg = json_string_value(json_object_get(e, "message"));
                const char *code = json_string_value(json_object_get(e, "code"));
                json_int_t status = json_integer_value(json_object_get(e, "status"));
                ac_http_reply_error(req, status >= 400 && status < 600 ? (int)status : 409,
                                    code ? code : "conflict", field, "%s", msg ? msg : "");
            } else {
                json_int_t status = json_integer_value(json_object_get(c->result, "status"));
                json_t *body = json_object_get(c->result, "body");
                ac_http_reply_json(req, status >= 200 && status < 300 ? (int)status : 200,
                                   json_incref(body ? body : json_object()));
            }
        }
    }
    call_free(c);
}

static void on_committed(ac_db_txn_t *txn, int err, void *arg)
{
    sql_call_t *c = arg;
    (void)txn;
    call_end(c, err < 0 ? err : 0);
}

static void on_result(ac_db_txn_t *txn, int err, void *arg)
{
    sql_call_t *c = arg;
    PGresult *res;
    json_error_t jerr;
    int rc;

    if (err < 0) {
        call_end(c, err);
        return;
    }
    res = ac_db_txn_result(txn, 0);
    if (!res || PQntuples(res) != 1 || PQnfields(res) != 1 || PQgetisnull(res, 0, 0) ||
        !(c->result = json_loads(PQgetvalue(res, 0, 0), JSON_DECODE_ANY, &jerr)) ||
        !json_is_object(c->result)) {
        ac_error("dispatch: a SQL operation answered something other than one json object");
        call_end(c, AC_ERR_INVALID);
        return;
    }
    if (json_object_get(c->result, "error") || !c->is_write) {
        call_end(c, 0); /* an error rolls back when the transaction is freed */
        return;
    }
    rc = dispatch_events_queue(c->self, c->txn, json_object_get(c->result, "events"),
                               c->correlation_id);
    if (rc == 0) {
        c->is_committing = 1;
        rc = ac_db_txn_commit(c->txn, on_committed, c);
    }
    if (rc < 0)
        call_end(c, rc == AC_ERR_NOMEM || rc == AC_ERR_INVALID ? rc : AC_ERR_UNAVAILABLE);
}

static sql_call_t *call_start(dispatch_t *self, int is_write, int stmt, const char *const *params,
                              int *rc_out)
{
    sql_call_t *c = calloc(1, sizeof *c);
    int rc;

    *rc_out = AC_ERR_NOMEM;
    if (!c)
        return NULL;
    c->self = self;
    c->is_write = is_write;
    if (!(c->txn = ac_db_txn_new(self->db, is_write))) {
        free(c);
        return NULL;
    }
    rc = ac_db_txn_add(c->txn, stmt, params, NULL, NULL);
    if (rc == 0)
        rc = is_write ? ac_db_txn_flush(c->txn, on_result, c)
                      : ac_db_txn_commit(c->txn, on_result, c);
    if (rc < 0) {
        ac_db_txn_free(&c->txn);
        free(c);
        *rc_out = rc;
        return NULL;
    }
    *rc_out = 0;
    return c;
}

void dispatch_http_sql(dispatch_t *self, ac_http_req_t *req, int is_write, int stmt,
                       const char *const *params)
{
    int rc;
    sql_call_t *c = call_start(self, is_write, stmt, params, &rc);
    if (!c) {
        dispatch_reply_db_error(req,
                                rc == AC_ERR_DB      ? rc
                                : rc == AC_ERR_NOMEM ? rc
                                                     : AC_ERR_UNAVAILABLE,
                                NULL);
        return;
    }
    snprintf(c->correlation_id, sizeof c->correlation_id, "%s", ac_http_req_id(req));
    dispatch_op_attach(self, &c->op, req);
}

int dispatch_run_sql(dispatch_t *self, int stmt, const char *const *params,
                     const char *correlation_id, dispatch_sql_done_fn done, void *arg)
{
    int rc;
    sql_call_t *c;

    if (self->is_closed)
        return AC_ERR_UNAVAILABLE;
    if (!(c = call_start(self, 1, stmt, params, &rc)))
        return rc;
    c->done = done;
    c->arg = arg;
    snprintf(c->correlation_id, sizeof c->correlation_id, "%s",
             correlation_id ? correlation_id : "");
    return 0;
}

#define ROUTE_KEY_MAX   100 /* longest path parameter echoed back */
#define ROUTE_LIMIT_DEF 50
#define ROUTE_LIMIT_MAX 200

/* --- table-driven routes ------------------------------------------------------------ */

static void reply_verr(ac_http_req_t *req, const dispatch_verr_t *err)
{
    ac_http_reply_error(req, err->status, err->code, err->field[0] ? err->field : NULL, "%s",
                        err->message);
}

/* The path's key when it can name something of its kind; NULL (answered 404) otherwise. */
static const char *path_key(ac_http_req_t *req, const dispatch_route_op_t *op)
{
    const char *key = ac_http_req_param(req, 0);
    int is_valid =
        key && (op->path == DISPATCH_PATH_TICKET ? strlen(key) <= 32 && strncmp(key, "SV-", 3) == 0
                                                 : ac_uuid_is_valid(key));
    if (!is_valid) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no %s %.*s", op->what, ROUTE_KEY_MAX,
                            key ? key : "");
        return NULL;
    }
    return key;
}

void dispatch_run_route_op(dispatch_t *self, ac_http_req_t *req, const dispatch_route_op_t *op)
{
    const char *params[DISPATCH_BODY_MAX_FIELDS + 3];
    dispatch_body_values_t values = {.v = {NULL}}; /* all absent until checked */
    dispatch_verr_t err;
    char *doc = NULL;
    size_t n = 0;

    if (dispatch_is_refused(self, req))
        return;
    if (op->path != DISPATCH_PATH_NONE && !(params[n++] = path_key(req, op)))
        return;
    if (op->with_actor)
        params[n++] = ac_http_req_principal(req);
    if (op->fields) {
        const json_t *body = ac_http_req_json(req);
        if (dispatch_check_body(body, op->fields, &values, &err) < 0) {
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
    if (op->with_scope)
        params[n++] = dispatch_engineer_scope(req);
    dispatch_http_sql(self, req, op->is_write, op->stmt, params); /* copies the parameters */
    free(doc);
}

/* The list routes' common query: limit (1..200, default 50) and cursor (a positive
 * integer), into text for the statement. 0, or answered 422. */
int dispatch_page_query(ac_http_req_t *req, char *limit, char *cursor, size_t len, int *has_cursor)
{
    const char *l = ac_http_req_query(req, "limit"), *c = ac_http_req_query(req, "cursor");
    char *end;
    long lv = ROUTE_LIMIT_DEF;

    if (l) {
        lv = strtol(l, &end, 10);
        if (!*l || *end || lv < 1 || lv > ROUTE_LIMIT_MAX) {
            ac_http_reply_error(req, 422, "invalid_field", "limit",
                                "limit must be an integer from 1 to %d", ROUTE_LIMIT_MAX);
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

/* --- the emitter: dispatch.pending_events -> outbox ---------------------------------- */

#define EMIT_BATCH   500 /* pending events per take */
#define EMIT_EVERY_S 2.0 /* also without a NOTIFY (missed during a reconnect) */

static void emit_kick(dispatch_t *self);

static void on_emitted(void *arg, int err, const json_t *result)
{
    dispatch_t *self = arg;
    json_int_t taken =
        json_integer_value(json_object_get(json_object_get(result, "body"), "taken"));
    self->is_emitting = 0;
    if (err < 0) {
        ac_warn("dispatch: publishing pending events failed (%s); retrying", ac_strerror(err));
        return; /* the periodic timer retries */
    }
    if (taken > 0)
        ac_metrics_add(self->metrics, "emitted_events_total", NULL, (double)taken);
    if (self->is_emit_again || taken >= EMIT_BATCH) {
        self->is_emit_again = 0;
        emit_kick(self);
    }
}

static void emit_kick(dispatch_t *self)
{
    char limit[16];
    if (self->is_closed)
        return;
    if (self->is_emitting) {
        self->is_emit_again = 1;
        return;
    }
    snprintf(limit, sizeof limit, "%d", EMIT_BATCH);
    if (dispatch_run_sql(self, DISPATCH_STMT_EMIT_TAKE, (const char *[]){limit}, NULL, on_emitted,
                         self) == 0)
        self->is_emitting = 1;
}

static void on_emit_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    emit_kick(ac_container_of(w, dispatch_t, emit_timer));
}

void dispatch_emitter_start(dispatch_t *self)
{
    ev_timer_init(&self->emit_timer, on_emit_timer, 0., EMIT_EVERY_S);
    ev_timer_start(self->loop, &self->emit_timer); /* at once: what a crash left behind */
}

void dispatch_emitter_stop(dispatch_t *self)
{
    if (self->loop)
        ev_timer_stop(self->loop, &self->emit_timer);
}

void dispatch_emitter_on_notify(dispatch_t *self)
{
    emit_kick(self);
}
