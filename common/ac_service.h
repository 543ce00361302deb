/* ac_service.h — what the HTTP services on the pool (intake, dispatch) share: the HTTP
 * server with its token check and /healthz, the graceful stop, the list of requests
 * waiting on the database, the replies for database errors, the pool's metrics, and
 * "one database call per request" (ac_call_t).
 *
 * A service embeds one ac_service_t (its watchers inside): ac_service_init() at the top
 * of its setup, ac_service_listen() at the end (the pool and token cache are the
 * service's own; they are lent here), ac_service_close() first in its teardown.
 *
 * Graceful stop: a first SIGINT/SIGTERM makes ac_service_is_refused() answer new
 * requests 503 and lets those in flight finish (up to AC_SERVICE_STOP_GRACE_S), a second
 * one stops the loop at once.
 *
 * Owns: the HTTP server, the signal and stop watchers; each call (ac_call_t) owns its
 * transaction until it is freed. */
#ifndef AC_SERVICE_H
#define AC_SERVICE_H

#include <stddef.h>

#include <ev.h>

#include "ac_auth.h"
#include "ac_db.h"
#include "ac_err.h"
#include "ac_http.h"
#include "ac_metrics.h"

#define AC_SERVICE_STOP_GRACE_S   5.0  /* longest wait for requests in flight after a signal */
#define AC_SERVICE_MIGRATE_WAIT_S 30.0 /* PostgreSQL may still be starting */

/* A request waiting on the database. Embedded first in every async request struct. */
typedef struct ac_op {
    struct ac_op *prev, *next; /* in ac_service_t.ops while attached */
    ac_http_req_t *req;        /* NULL once answered by ac_service_close() */
} ac_op_t;

typedef struct ac_service {
    struct ev_loop *loop;            /* borrowed from main() */
    const char *name;                /* static: "intake"; its schema and log prefix */
    const char *commit_unknown_hint; /* static: appended to the "COMMIT in doubt" 503 */
    ac_db_t *db;                     /* borrowed from the service (ac_service_listen()) */
    ac_auth_t *auth;                 /* borrowed from the service (ac_service_listen()) */
    ac_http_t *http;                 /* owned */
    ac_http_config_t http_cfg;       /* must outlive http */
    ev_signal sigint, sigterm;       /* graceful stop */
    ev_timer stop_deadline;          /* gives requests in flight this long after a signal */
    int is_stopping;                 /* a signal came: new requests get 503, the rest finish */
    ac_op_t ops;                     /* sentinel of the attached requests */
    size_t nops;
    ac_db_stats_t db_seen; /* db counters already exported to metrics */
} ac_service_t;

/* Initialises self (already zeroed by the caller's memset): the ops list, the watchers
 * (not started). name and commit_unknown_hint must be static strings ("" for no hint). */
void ac_service_init(ac_service_t *self, struct ev_loop *loop, const char *name,
                     const char *commit_unknown_hint);
/* Blocking, for start-up: the service's migrations (schema and component: its name), then
 * the outbox's and the consumer's in the same schema. 0, or -1 (logged). */
int ac_service_migrate(const ac_service_t *self, const char *conninfo,
                       const ac_migration_t *migrations) AC_WUR;
/* Lends db and auth, serves http_cfg (copied; its authenticate and health callbacks are
 * set here: tokens from auth, /healthz from db and auth), starts the signal watchers and
 * logs "<name> listening on http://ADDR:PORT". 0, or -1 (logged). */
int ac_service_listen(ac_service_t *self, ac_db_t *db, ac_auth_t *auth,
                      const ac_http_config_t *http_cfg) AC_WUR;
/* Teardown, after the loop: stops the watchers, answers 503 to every request still
 * waiting (detaching them), stops serving HTTP and forgets db and auth. Safe after
 * ac_service_init() alone. */
void ac_service_close(ac_service_t *self);

/* The ops list. detach is idempotent; the last detach of a stopping service breaks the
 * loop. */
void ac_service_op_attach(ac_service_t *self, ac_op_t *op, ac_http_req_t *req);
void ac_service_op_detach(ac_service_t *self, ac_op_t *op);
/* Common prologue of a handler: a stopping service takes nothing new. 1 (answered 503)
 * when refused. */
int ac_service_is_refused(const ac_service_t *self, ac_http_req_t *req);

/* Replies. db_error: 500 internal for an SQL error that is not transient (logged with its
 * SQLSTATE), 503 otherwise (out of memory, lost connection, transient SQL states: nothing
 * was changed, retry). commit_unknown: 503 for a write whose COMMIT was sent when the
 * connection broke (outcome unknown). unexpected: 503 for AC_ERR_NOMEM, 500 for anything
 * else ("unexpected answer from the database"); returns 0, for a step's return. */
void ac_service_reply_db_error(ac_http_req_t *req, int err, const ac_db_txn_t *txn);
void ac_service_reply_commit_unknown(const ac_service_t *self, ac_http_req_t *req);
void ac_service_reply_nomem(ac_http_req_t *req);
int ac_service_reply_unexpected(ac_http_req_t *req, int rc);

/* Metrics: declares the pool's families (db_connections_ready, db_txns_queued,
 * db_txns_total, db_errors_total, db_disconnects_total, db_reconnects_total). The render
 * hook (for ac_metrics_on_render(), arg: the ac_service_t) sets them and
 * requests_in_flight, which the service declares. */
void ac_service_declare_db_metrics(ac_metrics_t *m);
void ac_service_on_metrics_render(ac_metrics_t *m, void *arg);

/* --- one database call per request ----------------------------------------------------
 * A call is a request's transaction of one or more round trips. After each successful
 * round trip its step runs, while the request is attached (a request answered by
 * ac_service_close() meanwhile only frees the call); a failed round trip is answered
 * here (ac_service_reply_db_error(), or commit_unknown for a write's COMMIT). */
#define AC_CALL_KEY_MAX 200 /* longest path parameter a call keeps (and names in its 404) */

typedef struct ac_call ac_call_t;
/* Returns 1 when it has started another round trip (the call lives on, even if that
 * failed and freed it), 0 when it has answered (the call is then freed). */
typedef int (*ac_call_step_fn)(ac_call_t *call, ac_http_req_t *req);

struct ac_call {
    ac_op_t op;                     /* first */
    ac_service_t *svc;              /* borrowed */
    ac_db_txn_t *txn;               /* owned */
    ac_call_step_fn step;           /* runs after the round trip in flight */
    void (*clear)(ac_call_t *call); /* frees what the enclosing struct owns; may be NULL */
    const char *what;               /* static: "ticket", "engineer": for 404 messages */
    char key[AC_CALL_KEY_MAX + 1];  /* the id or number asked for ("" for none) */
    long limit;                     /* list calls: page size (ac_call_step_page()) */
    int is_write;                   /* a transaction: its COMMIT may be in doubt when cut off */
    int is_committing;              /* the round trip in flight carries the COMMIT */
};

/* A zeroed call of `size` bytes: a service's struct whose first member is the ac_call_t
 * (recovered with ac_container_of()), about the `what` called key (copied; NULL for
 * none). Starts its transaction (is_transaction: BEGIN ... COMMIT) and attaches req. NULL
 * (answered 503) when out of memory or the pool is gone. */
ac_call_t *ac_call_new(ac_service_t *svc, ac_http_req_t *req, size_t size, int is_transaction,
                       const char *what, const char *key, void (*clear)(ac_call_t *call));
/* clear, detach, the transaction (rolled back when unfinished), the memory. */
void ac_call_free(ac_call_t *call);
/* Sends the queued statements (add_rc: the result of queueing them) and makes step the
 * next step. The last round trip commits; an earlier one flushes. On failure the request
 * is answered and the call freed. */
void ac_call_send(ac_call_t *call, int add_rc, int is_last, ac_call_step_fn step);
/* A step: answers 200 with ac_db_page_result() of the first statement and call->limit. */
int ac_call_step_page(ac_call_t *call, ac_http_req_t *req);
/* 404 not_found "no <what> <key>". Returns 0, for a step's return. */
int ac_call_reply_not_found(ac_call_t *call, ac_http_req_t *req);
/* Answers with a reader's result (rc, doc: taken): `status` with doc when rc is 0,
 * ac_call_reply_not_found() for AC_ERR_NOTFOUND, ac_service_reply_unexpected() for
 * another error. Returns 0, for a step's return. */
int ac_call_reply_doc(ac_call_t *call, ac_http_req_t *req, int status, int rc, struct json_t *doc);

#endif
