/* intake.h — the intake service: customers, products, warranty policies, tickets and
 * their status history, served over HTTP (docs/api.md); every ticket change publishes
 * its event through intake.outbox in the same transaction.
 *
 * Modules: main.c wires, api.c (HTTP handlers and JSON), batch.c (group commit of
 * ticket creates), follow.c (the ticket status changes dispatch's events ask for),
 * validate.c (pure input rules), store.c (all SQL), events.c (protobuf payloads).
 *
 * Owns (intake_t): the database pool, the token cache, the outbox relay, the consumer of
 * the followed sources and follow.c's applier, the metrics registry, the create queues,
 * and (in its ac_service_t) the HTTP server, the signal watchers and the list of requests
 * waiting on the database. */
#ifndef INTAKE_H
#define INTAKE_H

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
#include "validate.h"

#define INTAKE_FOLLOW_MAX 16 /* sources intake may follow */

typedef struct intake_config {
    char *db_conninfo;    /* AC_INTAKE_DB (required) */
    char *http_addr;      /* AC_INTAKE_HTTP_ADDR */
    int http_port;        /* AC_INTAKE_HTTP_PORT */
    long db_pool;         /* AC_INTAKE_DB_POOL: connections */
    long max_body;        /* AC_INTAKE_MAX_BODY: bytes */
    long batch_max;       /* AC_INTAKE_BATCH_MAX: creates per group-commit transaction */
    char *bus_input;      /* AC_BUS_INPUT */
    char *bus_output;     /* AC_BUS_OUTPUT: where the consumer subscribes */
    char *bus_replay;     /* AC_BUS_REPLAY: where the consumer replays */
    char *follow;         /* AC_INTAKE_FOLLOW: comma-separated sources; "none" = none */
    double retention_s;   /* AC_OUTBOX_RETENTION: published outbox rows kept this long */
    char *bus_server_key; /* AC_BUS_SERVER_KEY: the bus's CURVE public key (Z85) */
    char *key_file;       /* AC_INTAKE_KEY_FILE: intake's CURVE key pair */
    ac_curve_t curve;     /* loaded by main() from key_file and bus_server_key */
    char *log_level;      /* AC_LOG_LEVEL */
    char *log_format;     /* AC_LOG_FORMAT: text | json */
} intake_config_t;

typedef struct intake_create intake_create_t; /* batch.c */

typedef struct intake {
    struct ev_loop *loop;             /* borrowed from main() */
    const intake_config_t *cfg;       /* borrowed; outlives the service */
    ac_metrics_t *metrics;            /* owned */
    ac_db_t *db;                      /* owned */
    ac_auth_t *auth;                  /* owned */
    ac_outbox_t *outbox;              /* owned */
    ac_consumer_t *consumer;          /* owned; NULL when AC_INTAKE_FOLLOW names no source */
    struct intake_follower *follower; /* owned (follow.c): applies the queued changes */
    ac_service_t base;                /* HTTP, graceful stop, requests in flight */
    ac_db_config_t db_cfg;            /* must outlive db */
    ac_outbox_config_t outbox_cfg;
    ac_consumer_config_t consumer_cfg;
    char *follow_buf;                          /* owned copy of cfg->follow, split */
    const char *follow[INTAKE_FOLLOW_MAX + 1]; /* NULL-terminated, into follow_buf */
    int is_closed;                             /* the loop has ended: start no database work */

    /* group commit (batch.c) */
    intake_create_t *queue_head, *queue_tail; /* validated creates, in arrival order */
    size_t queue_len;
    intake_create_t *retry_head, *retry_tail; /* creates of a failed batch, run alone */
    int is_batch_in_flight;
    int is_kicking; /* inside batch.c's kick(): no recursion */
} intake_t;

/* api.c */
extern const ac_http_route_t intake_routes[];
/* Declares the service's metrics. */
void intake_api_setup(intake_t *self);

/* batch.c */
/* Queues a validated create; the reply comes after its group commit. Takes nothing from
 * the caller (in is rendered into SQL parameters at once). */
int intake_create_submit(intake_t *self, ac_http_req_t *req, const intake_ticket_in_t *in,
                         const char *idem_key, const char *request_hash) AC_WUR;
/* After the pool is gone: frees the creates still queued (already answered). */
void intake_create_drop_all(intake_t *self);

/* follow.c: the routes of the consumer of AC_INTAKE_FOLLOW's sources (by payload type:
 * dispatch's TicketAssigned, PlanChanged, WorkStepRecorded, RepairStep), which queue the
 * ticket status changes those events ask for, and the applier that makes each one a
 * normal status change (woken by NOTIFY intake_follow). start: 0 or -1; stop: frees it
 * (a change in flight rolls back); on_notify: a notification came, or the listening
 * connection (re)connected. */
extern const ac_consumer_route_t intake_follow_routes[];
int intake_follow_start(intake_t *self) AC_WUR;
void intake_follow_stop(intake_t *self);
void intake_follow_on_notify(intake_t *self);

#endif
