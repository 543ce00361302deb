/* service.c — what the HTTP services share (contract in ac_service.h). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ac_consumer.h"
#include "ac_log.h"
#include "ac_outbox.h"
#include "ac_service.h"

/* --- graceful stop ------------------------------------------------------------------- */

static void stop(ac_service_t *self, const char *signame)
{
    if (self->is_stopping) {
        ac_warn("%s again: stopping now", signame);
        ev_break(self->loop, EVBREAK_ALL);
        return;
    }
    self->is_stopping = 1;
    ac_info("%s: stopping after %zu requests in flight", signame, self->nops);
    if (self->nops == 0) {
        ev_break(self->loop, EVBREAK_ALL);
        return;
    }
    ev_timer_start(self->loop, &self->stop_deadline);
}

static void on_sigint(struct ev_loop *loop, ev_signal *w, int revents)
{
    stop(ac_container_of(w, ac_service_t, sigint), "SIGINT");
}

static void on_sigterm(struct ev_loop *loop, ev_signal *w, int revents)
{
    stop(ac_container_of(w, ac_service_t, sigterm), "SIGTERM");
}

static void on_stop_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    ac_service_t *self = ac_container_of(w, ac_service_t, stop_deadline);
    ac_warn("%zu requests still in flight after %.0f s: stopping anyway", self->nops,
            AC_SERVICE_STOP_GRACE_S);
    ev_break(loop, EVBREAK_ALL);
}

/* --- HTTP glue ----------------------------------------------------------------------- */

static int on_authenticate(void *arg, const char *token, ac_principal_t *who_out)
{
    ac_service_t *self = arg;
    if (!self->auth || !ac_auth_is_loaded(self->auth))
        return -1; /* 503: a valid token must never be told it is unknown */
    return ac_auth_lookup(self->auth, token, who_out);
}

static int on_health(void *arg, json_t *checks)
{
    ac_service_t *self = arg;
    int is_db_up = ac_db_is_up(self->db);
    int is_auth_loaded = self->auth && ac_auth_is_loaded(self->auth);
    json_object_set_new(checks, "db", json_string(is_db_up ? "up" : "down"));
    json_object_set_new(checks, "tokens", json_string(is_auth_loaded ? "loaded" : "loading"));
    return is_db_up && is_auth_loaded ? 0 : AC_ERR_UNAVAILABLE;
}

/* --- life cycle ---------------------------------------------------------------------- */

void ac_service_init(ac_service_t *self, struct ev_loop *loop, const char *name,
                     const char *commit_unknown_hint)
{
    self->loop = loop;
    self->name = name;
    self->commit_unknown_hint = commit_unknown_hint;
    self->ops.prev = self->ops.next = &self->ops;
    self->ops.req = NULL;
    ev_signal_init(&self->sigint, on_sigint, SIGINT);
    ev_signal_init(&self->sigterm, on_sigterm, SIGTERM);
    ev_timer_init(&self->stop_deadline, on_stop_deadline, AC_SERVICE_STOP_GRACE_S, 0.);
}

int ac_service_migrate(const ac_service_t *self, const char *conninfo,
                       const ac_migration_t *migrations)
{
    if (ac_db_migrate(conninfo, self->name, self->name, migrations, AC_SERVICE_MIGRATE_WAIT_S) <
            0 ||
        ac_outbox_migrate(conninfo, self->name, AC_SERVICE_MIGRATE_WAIT_S) < 0 ||
        ac_consumer_migrate(conninfo, self->name, AC_SERVICE_MIGRATE_WAIT_S) < 0) {
        ac_error("%s: database migrations failed", self->name);
        return -1;
    }
    return 0;
}

int ac_service_listen(ac_service_t *self, ac_db_t *db, ac_auth_t *auth,
                      const ac_http_config_t *http_cfg)
{
    self->db = db;
    self->auth = auth;
    self->http_cfg = *http_cfg;
    self->http_cfg.authenticate = on_authenticate;
    self->http_cfg.auth_arg = self;
    self->http_cfg.health = on_health;
    self->http_cfg.health_arg = self;
    if (!(self->http = ac_http_new(self->loop, &self->http_cfg)))
        return -1;

    ev_signal_start(self->loop, &self->sigint);
    ev_signal_start(self->loop, &self->sigterm);

    ac_info("%s listening on http://%s:%d", self->name, http_cfg->bind_addr,
            ac_http_port(self->http));
    return 0;
}

void ac_service_close(ac_service_t *self)
{
    if (self->loop) {
        ev_signal_stop(self->loop, &self->sigint);
        ev_signal_stop(self->loop, &self->sigterm);
        ev_timer_stop(self->loop, &self->stop_deadline);
    }
    while (self->ops.next && self->ops.next != &self->ops) {
        ac_op_t *op = self->ops.next;
        if (op->req)
            ac_http_reply_error(op->req, 503, "unavailable", NULL, "the server is shutting down");
        op->req = NULL;
        ac_service_op_detach(self, op);
    }
    ac_http_destroy(&self->http);
    self->db = NULL;
    self->auth = NULL;
}

/* --- the ops list -------------------------------------------------------------------- */

void ac_service_op_attach(ac_service_t *self, ac_op_t *op, ac_http_req_t *req)
{
    op->req = req;
    op->prev = &self->ops;
    op->next = self->ops.next;
    self->ops.next->prev = op;
    self->ops.next = op;
    self->nops++;
}

void ac_service_op_detach(ac_service_t *self, ac_op_t *op)
{
    if (!op->next)
        return;
    op->prev->next = op->next;
    op->next->prev = op->prev;
    op->next = op->prev = NULL;
    self->nops--;
    /* graceful stop: the last request is answered (unless the loop has ended already:
     * teardown answers them all) */
    if (self->is_stopping && self->nops == 0 && ev_depth(self->loop) > 0)
        ev_break(self->loop, EVBREAK_ALL);
}

int ac_service_is_refused(const ac_service_t *self, ac_http_req_t *req)
{
    if (!self->is_stopping)
        return 0;
    ac_http_reply_error(req, 503, "unavailable", NULL, "the server is shutting down");
    return 1;
}

/* --- replies ------------------------------------------------------------------------- */

static int is_retryable_state(const char *state)
{
    /* serialization failure / deadlock (40), resources (53), operator intervention (57),
     * connection (08) */
    return strncmp(state, "40", 2) == 0 || strncmp(state, "53", 2) == 0 ||
           strncmp(state, "57", 2) == 0 || strncmp(state, "08", 2) == 0;
}

void ac_service_reply_db_error(ac_http_req_t *req, int err, const ac_db_txn_t *txn)
{
    const char *state = txn ? ac_db_txn_sqlstate(txn) : "";
    if (err == AC_ERR_DB && !is_retryable_state(state)) {
        ac_error("%s %s: database error (SQLSTATE %s): %s", ac_http_req_method(req),
                 ac_http_req_path(req), state, txn ? ac_db_txn_errmsg(txn) : "");
        ac_http_reply_error(req, 500, "internal", NULL, "internal error (SQLSTATE %s)", state);
        return;
    }
    if (err == AC_ERR_NOMEM) {
        ac_service_reply_nomem(req);
        return;
    }
    ac_http_reply_error(req, 503, "unavailable", NULL,
                        "the database is unavailable; nothing was changed, retry");
}

void ac_service_reply_commit_unknown(const ac_service_t *self, ac_http_req_t *req)
{
    ac_http_reply_error(req, 503, "unavailable", NULL,
                        "the database connection was lost during COMMIT: the change may or may "
                        "not have been made; check before retrying%s",
                        self->commit_unknown_hint);
}

void ac_service_reply_nomem(ac_http_req_t *req)
{
    ac_http_reply_error(req, 503, "unavailable", NULL, "out of memory; retry");
}

int ac_service_reply_unexpected(ac_http_req_t *req, int rc)
{
    if (rc == AC_ERR_NOMEM)
        ac_service_reply_nomem(req);
    else
        ac_http_reply_error(req, 500, "internal", NULL, "unexpected answer from the database");
    return 0;
}

/* --- metrics ------------------------------------------------------------------------- */

void ac_service_declare_db_metrics(ac_metrics_t *m)
{
    (void)ac_metrics_declare(m, "db_connections_ready", AC_METRIC_GAUGE,
                             "Database pool connections ready");
    (void)ac_metrics_declare(m, "db_txns_queued", AC_METRIC_GAUGE,
                             "Transactions waiting for a pool connection");
    (void)ac_metrics_declare(m, "db_txns_total", AC_METRIC_COUNTER,
                             "Database transactions finished");
    (void)ac_metrics_declare(m, "db_errors_total", AC_METRIC_COUNTER,
                             "Statements that failed with an SQL error");
    (void)ac_metrics_declare(m, "db_disconnects_total", AC_METRIC_COUNTER, "Pool connections lost");
    (void)ac_metrics_declare(m, "db_reconnects_total", AC_METRIC_COUNTER,
                             "Pool connections (re)established");
}

void ac_service_on_metrics_render(ac_metrics_t *m, void *arg)
{
    ac_service_t *self = arg;
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

/* --- one database call per request --------------------------------------------------- */

ac_call_t *ac_call_new(ac_service_t *svc, ac_http_req_t *req, size_t size, int is_transaction,
                       const char *what, const char *key, void (*clear)(ac_call_t *call))
{
    ac_call_t *call = calloc(1, size);
    if (!call) {
        ac_service_reply_nomem(req);
        return NULL;
    }
    call->svc = svc;
    call->clear = clear;
    call->is_write = is_transaction;
    call->what = what;
    snprintf(call->key, sizeof call->key, "%s", key ? key : "");
    call->txn = ac_db_txn_new(svc->db, is_transaction);
    if (!call->txn) {
        free(call);
        ac_service_reply_db_error(req, AC_ERR_UNAVAILABLE, NULL);
        return NULL;
    }
    ac_service_op_attach(svc, &call->op, req);
    return call;
}

void ac_call_free(ac_call_t *call)
{
    if (call->clear)
        call->clear(call);
    ac_service_op_detach(call->svc, &call->op);
    ac_db_txn_free(&call->txn);
    free(call);
}

static void on_call_done(ac_db_txn_t *txn, int err, void *arg)
{
    ac_call_t *call = arg;
    ac_http_req_t *req = call->op.req;
    if (!req) {
        ac_call_free(call);
        return;
    }
    if (err < 0) {
        if (err == AC_ERR_UNAVAILABLE && call->is_write && call->is_committing)
            ac_service_reply_commit_unknown(call->svc, req);
        else
            ac_service_reply_db_error(req, err, txn);
        ac_call_free(call);
        return;
    }
    if (call->step(call, req) == 0)
        ac_call_free(call);
}

void ac_call_send(ac_call_t *call, int add_rc, int is_last, ac_call_step_fn step)
{
    int rc = add_rc;
    call->step = step;
    call->is_committing = is_last;
    if (rc == 0)
        rc = is_last ? ac_db_txn_commit(call->txn, on_call_done, call)
                     : ac_db_txn_flush(call->txn, on_call_done, call);
    if (rc < 0) {
        if (call->op.req)
            ac_service_reply_db_error(
                call->op.req, rc == AC_ERR_DB || rc == AC_ERR_NOMEM ? rc : AC_ERR_UNAVAILABLE,
                NULL);
        ac_call_free(call);
    }
}

int ac_call_step_page(ac_call_t *call, ac_http_req_t *req)
{
    json_t *body;
    int rc = ac_db_page_result(call->txn, 0, call->limit, &body);
    if (rc < 0)
        return ac_service_reply_unexpected(req, rc);
    ac_http_reply_json(req, 200, body);
    return 0;
}

int ac_call_reply_not_found(ac_call_t *call, ac_http_req_t *req)
{
    ac_http_reply_error(req, 404, "not_found", NULL, "no %s %s", call->what, call->key);
    return 0;
}

int ac_call_reply_doc(ac_call_t *call, ac_http_req_t *req, int status, int rc, json_t *doc)
{
    if (rc == AC_ERR_NOTFOUND)
        return ac_call_reply_not_found(call, req);
    if (rc < 0)
        return ac_service_reply_unexpected(req, rc);
    ac_http_reply_json(req, status, doc);
    return 0;
}
