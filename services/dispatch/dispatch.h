/* dispatch.h — the dispatch service (issue 4): engineers, assignment of tickets, service
 * plans, work records, external repairs, difficult cases and the SLA engine, served over
 * HTTP (docs/dispatch-api.md); every change publishes its event through dispatch.outbox
 * in the same transaction.
 *
 * Dispatch learns about tickets by following intake's events (ac_consumer, checkpoint in
 * dispatch.consumer_checkpoints): tickets.c mirrors what it needs in dispatch.tickets and
 * their status history, in the consumer's transaction, and the SQL hooks of the other
 * modules (migrations/) react in that same transaction.
 *
 * Modules: main.c wires; ops.c runs a SQL operation and publishes the events it returns;
 * api.c (engineers' HTTP handlers), tickets.c (the intake consumer), assignment.c,
 * offers.c (unanswered offers expire), plans.c, work.c, repairs.c, cases.c, sla.c (each:
 * its HTTP routes and background work; its SQL in migrations/NNN_<module>.sql); store.c
 * (prepared statements); events.c (engineer payloads); and in dispatch_core (no I/O,
 * unit-tested): calendar.c (business time), deadlines.c (the armed deadline set),
 * slaclock.c (SLA clocks with pauses), score.c (assignment filters and score),
 * validate.c, plan_validate.c.
 *
 * Owns (dispatch_t): the database pool, the token cache, the outbox relay, the consumer,
 * the metrics registry, each module's state, and (in its ac_service_t) the HTTP server,
 * the signal watchers and the list of requests waiting on the database. */
#ifndef DISPATCH_H
#define DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "ac_auth.h"
#include "ac_bus.h"
#include "ac_consumer.h"
#include "ac_db.h"
#include "ac_http.h"
#include "ac_metrics.h"
#include "ac_outbox.h"
#include "ac_service.h"
#include "ac_time.h"

typedef struct dispatch_config {
    char *db_conninfo;      /* AC_DISPATCH_DB (required) */
    char *http_addr;        /* AC_DISPATCH_HTTP_ADDR */
    int http_port;          /* AC_DISPATCH_HTTP_PORT */
    long db_pool;           /* AC_DISPATCH_DB_POOL: connections */
    long max_body;          /* AC_DISPATCH_MAX_BODY: bytes */
    char *bus_input;        /* AC_BUS_INPUT */
    char *bus_output;       /* AC_BUS_OUTPUT: where the consumer subscribes */
    char *bus_replay;       /* AC_BUS_REPLAY: where the consumer replays */
    double retention_s;     /* AC_OUTBOX_RETENTION: published outbox rows kept this long */
    char *bus_server_key;   /* AC_BUS_SERVER_KEY: the bus's CURVE public key (Z85) */
    char *key_file;         /* AC_DISPATCH_KEY_FILE: dispatch's CURVE key pair */
    ac_curve_t curve;       /* loaded by main() from key_file and bus_server_key */
    char *tzdir;            /* AC_DISPATCH_TZDIR: zoneinfo directory for shift calendars */
    char *link_secret;      /* AC_DISPATCH_LINK_SECRET: signs customer links (plans.c) */
    double offer_timeout_s; /* AC_DISPATCH_OFFER_TIMEOUT: an unanswered automatic offer
                             * expires (offers.c); 0 = never */
    char *log_level;        /* AC_LOG_LEVEL */
    char *log_format;       /* AC_LOG_FORMAT: text | json */
} dispatch_config_t;

/* A request waiting on the database (ac_service.h). Embedded first in every async
 * request struct. */
typedef ac_op_t dispatch_op_t;

/* offers.c's state: the sweep that expires unanswered offers. */
typedef struct dispatch_offers {
    ev_timer timer;       /* the next sweep */
    ac_backoff_t backoff; /* after a failed sweep */
    int is_sweeping;      /* its transaction is in flight */
} dispatch_offers_t;

typedef struct dispatch {
    struct ev_loop *loop;                       /* borrowed from main() */
    const dispatch_config_t *cfg;               /* borrowed; outlives the service */
    ac_metrics_t *metrics;                      /* owned */
    ac_db_t *db;                                /* owned */
    ac_auth_t *auth;                            /* owned */
    ac_outbox_t *outbox;                        /* owned */
    ac_consumer_t *consumer;                    /* owned: intake's ticket events */
    ac_http_route_t *routes;                    /* owned: every module's routes, concatenated */
    struct dispatch_assigner *assigner;         /* owned (assignment.c) */
    struct dispatch_sla *sla;                   /* owned (sla.c) */
    struct dispatch_ticket_batch *ticket_batch; /* owned (tickets.c): the consumer's batch */
    ac_db_config_t db_cfg;                      /* must outlive db */
    ac_outbox_config_t outbox_cfg;
    ac_consumer_config_t consumer_cfg;
    ac_service_t base;        /* HTTP, graceful stop, requests in flight */
    int is_closed;            /* the loop has ended: start no database work */
    ev_timer emit_timer;      /* ops.c's emitter: pending_events -> outbox */
    dispatch_offers_t offers; /* offers.c */
    int is_emitting, is_emit_again;
} dispatch_t;

/* Each module's routes, each table terminated by { NULL }; main.c serves them all. */
extern const ac_http_route_t dispatch_engineer_routes[];    /* api.c */
extern const ac_http_route_t dispatch_ticket_http_routes[]; /* tickets.c */
extern const ac_http_route_t dispatch_assignment_routes[];  /* assignment.c */
extern const ac_http_route_t dispatch_plan_routes[];        /* plans.c */
extern const ac_http_route_t dispatch_work_routes[];        /* work.c */
extern const ac_http_route_t dispatch_repair_routes[];      /* repairs.c */
extern const ac_http_route_t dispatch_case_routes[];        /* cases.c */
extern const ac_http_route_t dispatch_sla_routes[];         /* sla.c */

/* api.c: declares the service's metrics. */
void dispatch_api_setup(dispatch_t *self);

/* tickets.c: the routes of the intake consumer (by payload type), which collect the
 * events of a batch, and its batch hooks (ac_consumer_config_t), which apply them;
 * tickets_stop frees what is collected. */
extern const ac_consumer_route_t dispatch_ticket_routes[];
void dispatch_tickets_batch_begin(void *arg);
int dispatch_tickets_batch_end(struct ac_db_txn *txn, void *arg);
void dispatch_tickets_stop(dispatch_t *self);

/* assignment.c: the worker that assigns queued tickets (woken by NOTIFY
 * dispatch_assign). start: 0 or -1; stop frees; on_notify: a notification arrived. */
int dispatch_assignment_start(dispatch_t *self);
void dispatch_assignment_stop(dispatch_t *self);
void dispatch_assignment_on_notify(dispatch_t *self, const char *payload);

/* offers.c: unanswered automatic offers expire (migration 021). start: declares the
 * metric and, with a timeout, sweeps at once and then when the next offer is due; stop:
 * no more sweeps. */
void dispatch_offers_start(dispatch_t *self);
void dispatch_offers_stop(dispatch_t *self);
/* sla.c: the SLA engine (clocks' next levels and vendor deadlines armed on the loop;
 * NOTIFY dispatch_deadlines). */
int dispatch_sla_start(dispatch_t *self);
void dispatch_sla_stop(dispatch_t *self);
void dispatch_sla_on_notify(dispatch_t *self, const char *payload);
/* A new ticket's SLA clocks, computed for the consumer's insert (migration 019): the
 * proposal as JSON text (malloc'ed), or NULL when there is none (the clocks are then
 * inserted dirty and the engine computes them). */
char *dispatch_sla_propose(dispatch_t *self, const char *number, const char *priority,
                           const char *tier, const char *category, const char *status,
                           const char *opened_at, const char *updated_at);
/* The consumer's on_batch_done (arg: the service): its transaction is over, committed or
 * not (err), and the clocks proposed for it are armed either way — one that was not
 * inserted arms nothing that fires. */
void dispatch_sla_batch_done(int err, void *arg);
/* A policy or calendar changed: the proposals wait until the policies are read again. */
void dispatch_sla_policies_changed(dispatch_t *self);

#endif
