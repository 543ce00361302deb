/* main.c — aftercare-dispatch: configuration, then dispatch_setup(), the loop,
 * dispatch_teardown() (the reverse order). The HTTP server, /healthz and the graceful stop
 * on SIGINT/SIGTERM are ac_service's. */
#include <ev.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_config.h"
#include "ac_log.h"
#include "dispatch.h"
#include "ops.h"
#include "store.h"

extern const ac_migration_t dispatch_migrations[];

static const ac_cfg_key_t dispatch_config_keys[] = {
    {"AC_DISPATCH_DB", AC_CFG_STRING, offsetof(dispatch_config_t, db_conninfo), NULL, 0, 0,
     "libpq connection string of the dispatch login"},
    {"AC_DISPATCH_HTTP_ADDR", AC_CFG_STRING, offsetof(dispatch_config_t, http_addr), "127.0.0.1", 0,
     0, "HTTP bind address"},
    {"AC_DISPATCH_HTTP_PORT", AC_CFG_PORT, offsetof(dispatch_config_t, http_port), "8082", 0, 0,
     "HTTP port"},
    {"AC_DISPATCH_DB_POOL", AC_CFG_INT, offsetof(dispatch_config_t, db_pool), "4", 1, 256,
     "database connections"},
    {"AC_DISPATCH_MAX_BODY", AC_CFG_INT, offsetof(dispatch_config_t, max_body), "65536", 1024,
     16777216, "largest request body in bytes"},
    {"AC_BUS_INPUT", AC_CFG_STRING, offsetof(dispatch_config_t, bus_input), "tcp://127.0.0.1:5570",
     0, 0, "the bus daemon's input endpoint"},
    {"AC_BUS_OUTPUT", AC_CFG_STRING, offsetof(dispatch_config_t, bus_output),
     "tcp://127.0.0.1:5571", 0, 0, "the bus daemon's output endpoint (intake's events)"},
    {"AC_BUS_REPLAY", AC_CFG_STRING, offsetof(dispatch_config_t, bus_replay),
     "tcp://127.0.0.1:5572", 0, 0, "the bus daemon's replay endpoint"},
    {"AC_BUS_SERVER_KEY", AC_CFG_STRING, offsetof(dispatch_config_t, bus_server_key), NULL, 0, 0,
     "the bus's CURVE public key (40 characters of Z85)"},
    {"AC_DISPATCH_KEY_FILE", AC_CFG_STRING, offsetof(dispatch_config_t, key_file), NULL, 0, 0,
     "dispatch's CURVE key file (aftercarectl keys create dispatch --kind service ...)"},
    {"AC_OUTBOX_RETENTION", AC_CFG_DURATION, offsetof(dispatch_config_t, retention_s), "30d", 0,
     315360000, "how long published events stay replayable (e.g. 30d, 12h; 0 = for ever)"},
    {"AC_DISPATCH_TZDIR", AC_CFG_STRING, offsetof(dispatch_config_t, tzdir), "", 0, 0,
     "zoneinfo directory for shift calendars (empty: /usr/share/zoneinfo)"},
    {"AC_DISPATCH_LINK_SECRET", AC_CFG_STRING, offsetof(dispatch_config_t, link_secret), "", 0, 0,
     "secret (32+ characters) that signs customers' plan links; empty: links disabled"},
    {"AC_DISPATCH_OFFER_TIMEOUT", AC_CFG_DURATION, offsetof(dispatch_config_t, offer_timeout_s),
     "15m", 0, 604800,
     "an automatic offer nobody accepts or declines within this is declined and offered to "
     "the next engineer (e.g. 15m, 90s; 0 = never)"},
    {"AC_LOG_LEVEL", AC_CFG_STRING, offsetof(dispatch_config_t, log_level), "info", 0, 0,
     "debug, info, warn or error"},
    {"AC_LOG_FORMAT", AC_CFG_STRING, offsetof(dispatch_config_t, log_format), "text", 0, 0,
     "text or json"},
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

static const char *const listen_channels[] = {"ac_auth", "dispatch_assign", "dispatch_deadlines",
                                              "dispatch_emit", NULL};

static const char *const follow_sources[] = {"aftercare/intake", NULL};
static const char *const follow_topics[] = {"ticket.", NULL};

static const ac_http_route_t *const route_tables[] = {
    dispatch_engineer_routes, dispatch_ticket_http_routes, dispatch_assignment_routes,
    dispatch_plan_routes,     dispatch_work_routes,        dispatch_repair_routes,
    dispatch_case_routes,     dispatch_sla_routes,         NULL,
};

/* --- glue callbacks ---------------------------------------------------------------------- */

static void on_db_notify(void *arg, const char *channel, const char *payload)
{
    dispatch_t *self = arg;
    if (!channel) { /* the listening connection is (re)connected: notifications were missed */
        dispatch_emitter_on_notify(self);
        dispatch_assignment_on_notify(self, NULL);
        dispatch_sla_on_notify(self, NULL);
        /* perhaps a restarted server: the consumer's last commits (not waited for) may be
         * gone */
        ac_consumer_recheck(self->consumer);
        if (self->auth)
            ac_auth_on_notify(self->auth, NULL, NULL);
    } else if (strcmp(channel, "dispatch_assign") == 0)
        dispatch_assignment_on_notify(self, payload);
    else if (strcmp(channel, "dispatch_emit") == 0)
        dispatch_emitter_on_notify(self);
    else if (strcmp(channel, "dispatch_deadlines") == 0)
        dispatch_sla_on_notify(self, payload);
    else if (self->auth)
        ac_auth_on_notify(self->auth, channel, payload);
}

/* Every module's routes in one table (ac_http takes one). NULL on OOM. */
static ac_http_route_t *routes_concat(void)
{
    size_t n = 0, k = 0;
    ac_http_route_t *all;
    for (size_t t = 0; route_tables[t]; t++)
        for (size_t i = 0; route_tables[t][i].method; i++)
            n++;
    if (!(all = calloc(n + 1, sizeof *all)))
        return NULL;
    for (size_t t = 0; route_tables[t]; t++)
        for (size_t i = 0; route_tables[t][i].method; i++)
            all[k++] = route_tables[t][i];
    return all; /* all[n] is zeroed: the terminator */
}

/* --- setup / teardown ------------------------------------------------------------------ */

static int dispatch_setup(dispatch_t *self, struct ev_loop *loop, const dispatch_config_t *cfg)
{
    memset(self, 0, sizeof *self);
    self->loop = loop;
    self->cfg = cfg;

    ac_service_init(&self->base, loop, "dispatch", "");
    if (ac_service_migrate(&self->base, cfg->db_conninfo, dispatch_migrations) < 0)
        return -1;

    if (!(self->metrics = ac_metrics_new("aftercare_dispatch")))
        return -1;
    dispatch_api_setup(self);

    self->db_cfg = (ac_db_config_t){
        .conninfo = cfg->db_conninfo,
        .pool_size = (int)cfg->db_pool,
        .stmts = dispatch_stmts,
        .nstmts = DISPATCH_STMT__COUNT,
        .listen = listen_channels,
        .on_notify = on_db_notify,
        .notify_arg = self,
        .name = "dispatch",
    };
    if (!(self->db = ac_db_new(loop, &self->db_cfg)))
        return -1;
    if (!(self->auth = ac_auth_new(loop, self->db)))
        return -1;

    self->outbox_cfg = (ac_outbox_config_t){
        .conninfo = cfg->db_conninfo,
        .schema = "dispatch",
        .source = "aftercare/dispatch",
        .bus_endpoint = cfg->bus_input,
        .retention_s = cfg->retention_s,
        .curve = &cfg->curve,
        .metrics = self->metrics,
    };
    if (!(self->outbox = ac_outbox_new(loop, &self->outbox_cfg)))
        return -1;

    dispatch_emitter_start(self);
    if (dispatch_assignment_start(self) < 0 || dispatch_sla_start(self) < 0)
        return -1;
    dispatch_offers_start(self);

    /* intake's ticket events: tickets.c mirrors them, the modules' SQL hooks react */
    self->consumer_cfg = (ac_consumer_config_t){
        .name = "dispatch",
        .output_endpoint = cfg->bus_output,
        .replay_endpoint = cfg->bus_replay,
        .curve = &cfg->curve,
        .sources = follow_sources,
        .topics = follow_topics,
        .routes = dispatch_ticket_routes,
        .on_batch_begin = dispatch_tickets_batch_begin,
        .on_batch_end = dispatch_tickets_batch_end,
        .on_batch_done = dispatch_sla_batch_done,
        .is_commit_async = 1, /* effects published only through the outbox */
        .arg = self,
        .db = self->db,
        .schema = "dispatch",
        .metrics = self->metrics,
    };
    if (!(self->consumer = ac_consumer_new(loop, &self->consumer_cfg)))
        return -1;

    if (!(self->routes = routes_concat()))
        return -1;
    ac_http_config_t http_cfg = {
        .bind_addr = cfg->http_addr,
        .port = cfg->http_port,
        .max_body_bytes = (size_t)cfg->max_body,
        .routes = self->routes,
        .handler_arg = self,
        .metrics = self->metrics,
    };
    return ac_service_listen(&self->base, self->db, self->auth, &http_cfg);
}

static void dispatch_teardown(dispatch_t *self)
{
    self->is_closed = 1;                  /* from here on no call starts */
    ac_service_close(&self->base);        /* 503 to the requests in flight; no more HTTP */
    ac_consumer_destroy(&self->consumer); /* its transaction in flight rolls back */
    dispatch_tickets_stop(self);
    dispatch_sla_stop(self);
    dispatch_offers_stop(self);
    dispatch_assignment_stop(self);
    dispatch_emitter_stop(self);
    ac_outbox_destroy(&self->outbox);
    ac_auth_destroy(&self->auth);
    ac_db_destroy(&self->db); /* the calls still in flight end here, unanswered */
    ac_metrics_destroy(&self->metrics);
    free(self->routes);
    self->routes = NULL;
}

int main(void)
{
    dispatch_config_t cfg = {0};
    dispatch_t dispatch;
    struct ev_loop *loop = EV_DEFAULT;
    char err[256];
    int rc = 0;

    if (ac_config_load(&cfg, dispatch_config_keys, err, sizeof err) != 0) {
        fprintf(stderr, "aftercare-dispatch: %s\n", err);
        ac_config_free(&cfg, dispatch_config_keys);
        return 2;
    }
    if (ac_log_setup("dispatch", cfg.log_level, cfg.log_format, err, sizeof(err)) != 0) {
        fprintf(stderr, "aftercare-dispatch: %s\n", err);
        ac_config_free(&cfg, dispatch_config_keys);
        return 2;
    }
    if (cfg.link_secret && cfg.link_secret[0] && strlen(cfg.link_secret) < 32) {
        fprintf(stderr,
                "aftercare-dispatch: AC_DISPATCH_LINK_SECRET is too short (%zu "
                "characters; at least 32, or empty to disable customer links)\n",
                strlen(cfg.link_secret));
        ac_config_free(&cfg, dispatch_config_keys);
        return 2;
    }
    if (ac_curve_load(cfg.key_file, cfg.bus_server_key, &cfg.curve, err, sizeof(err)) != 0) {
        fprintf(stderr, "aftercare-dispatch: %s (AC_DISPATCH_KEY_FILE, AC_BUS_SERVER_KEY)\n", err);
        ac_config_free(&cfg, dispatch_config_keys);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    if (dispatch_setup(&dispatch, loop, &cfg) != 0) {
        ac_error("dispatch: cannot start");
        rc = 1;
    } else {
        ev_run(loop, 0);
    }
    dispatch_teardown(&dispatch);
    ac_config_free(&cfg, dispatch_config_keys);
    ac_info("dispatch stopped");
    return rc;
}
