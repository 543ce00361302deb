/* dispatch.h — the dispatch service (issue 4): engineers for now — their skills, regions,
 * role, capacity, shift calendar, availability and contact details — served over HTTP
 * (docs/dispatch-api.md); every change publishes its event through dispatch.outbox in the
 * same transaction. Assignment and the SLA engine come next.
 *
 * Modules: main.c wires, api.c (HTTP handlers and input rules), store.c (all SQL),
 * events.c (protobuf payloads), calendar.c (business time; dispatch_core).
 *
 * Owns (dispatch_t): the database pool, the token cache, the outbox relay, the HTTP
 * server, the metrics registry, the signal watchers, and every request waiting on the
 * database (the ops list). */
#ifndef DISPATCH_H
#define DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "ac_auth.h"
#include "ac_bus.h"
#include "ac_db.h"
#include "ac_http.h"
#include "ac_metrics.h"
#include "ac_outbox.h"

typedef struct dispatch_config {
    char *db_conninfo;    /* AC_DISPATCH_DB (required) */
    char *http_addr;      /* AC_DISPATCH_HTTP_ADDR */
    int http_port;        /* AC_DISPATCH_HTTP_PORT */
    long db_pool;         /* AC_DISPATCH_DB_POOL: connections */
    long max_body;        /* AC_DISPATCH_MAX_BODY: bytes */
    char *bus_input;      /* AC_BUS_INPUT */
    double retention_s;   /* AC_OUTBOX_RETENTION: published outbox rows kept this long */
    char *bus_server_key; /* AC_BUS_SERVER_KEY: the bus's CURVE public key (Z85) */
    char *key_file;       /* AC_DISPATCH_KEY_FILE: dispatch's CURVE key pair */
    ac_curve_t curve;     /* loaded by main() from key_file and bus_server_key */
    char *tzdir;          /* AC_DISPATCH_TZDIR: zoneinfo directory for shift calendars */
    char *log_level;      /* AC_LOG_LEVEL */
    char *log_format;     /* AC_LOG_FORMAT: text | json */
} dispatch_config_t;

/* A request waiting on the database. Embedded first in every async request struct. */
typedef struct dispatch_op {
    struct dispatch_op *prev, *next; /* in dispatch_t.ops while attached */
    ac_http_req_t *req;              /* NULL once answered by dispatch_ops_abort() */
} dispatch_op_t;

typedef struct dispatch {
    struct ev_loop *loop;         /* borrowed from main() */
    const dispatch_config_t *cfg; /* borrowed; outlives the service */
    ac_metrics_t *metrics;        /* owned */
    ac_db_t *db;                  /* owned */
    ac_auth_t *auth;              /* owned */
    ac_outbox_t *outbox;          /* owned */
    ac_http_t *http;              /* owned */
    ac_db_config_t db_cfg;        /* must outlive db */
    ac_outbox_config_t outbox_cfg;
    ac_http_config_t http_cfg;
    ev_signal sigint, sigterm; /* graceful stop */
    ev_timer stop_deadline;    /* gives requests in flight this long after a signal */
    int is_stopping;           /* a signal came: new requests get 503, the rest finish */
    int is_closed;             /* the loop has ended: start no database work */

    dispatch_op_t ops; /* sentinel of the attached requests */
    size_t nops;

    ac_db_stats_t db_seen; /* db counters already exported to metrics */
} dispatch_t;

/* api.c */
extern const ac_http_route_t dispatch_routes[];
/* Initialises the ops list and declares the service's metrics. */
void dispatch_api_setup(dispatch_t *self);
void dispatch_ops_abort(dispatch_t *self); /* 503 to all, detaches them */

#endif
