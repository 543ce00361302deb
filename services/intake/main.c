/* main.c — aftercare-intake: configuration, then intake_setup(), the loop,
 * intake_teardown() (the reverse order). The HTTP server, /healthz and the graceful stop
 * on SIGINT/SIGTERM are ac_service's. */
#include <ev.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_config.h"
#include "ac_log.h"
#include "intake.h"
#include "store.h"

extern const ac_migration_t intake_migrations[];

static const ac_cfg_key_t intake_config_keys[] = {
    {"AC_INTAKE_DB", AC_CFG_STRING, offsetof(intake_config_t, db_conninfo), NULL, 0, 0,
     "libpq connection string of the intake login"},
    {"AC_INTAKE_HTTP_ADDR", AC_CFG_STRING, offsetof(intake_config_t, http_addr), "127.0.0.1", 0, 0,
     "HTTP bind address"},
    {"AC_INTAKE_HTTP_PORT", AC_CFG_PORT, offsetof(intake_config_t, http_port), "8081", 0, 0,
     "HTTP port"},
    {"AC_INTAKE_DB_POOL", AC_CFG_INT, offsetof(intake_config_t, db_pool), "4", 1, 256,
     "database connections"},
    {"AC_INTAKE_MAX_BODY", AC_CFG_INT, offsetof(intake_config_t, max_body), "65536", 1024, 16777216,
     "largest request body in bytes"},
    {"AC_INTAKE_BATCH_MAX", AC_CFG_INT, offsetof(intake_config_t, batch_max), "256", 1, 10000,
     "ticket creates per group-commit transaction"},
    {"AC_BUS_INPUT", AC_CFG_STRING, offsetof(intake_config_t, bus_input), "tcp://127.0.0.1:5570", 0,
     0, "the bus daemon's input endpoint"},
    {"AC_BUS_OUTPUT", AC_CFG_STRING, offsetof(intake_config_t, bus_output), "tcp://127.0.0.1:5571",
     0, 0, "the bus daemon's output endpoint"},
    {"AC_BUS_REPLAY", AC_CFG_STRING, offsetof(intake_config_t, bus_replay), "tcp://127.0.0.1:5572",
     0, 0, "the bus daemon's replay endpoint"},
    {"AC_INTAKE_FOLLOW", AC_CFG_STRING, offsetof(intake_config_t, follow), "aftercare/dispatch", 0,
     0, "comma-separated sources whose events intake applies, or \"none\""},
    {"AC_BUS_SERVER_KEY", AC_CFG_STRING, offsetof(intake_config_t, bus_server_key), NULL, 0, 0,
     "the bus's CURVE public key (40 characters of Z85)"},
    {"AC_INTAKE_KEY_FILE", AC_CFG_STRING, offsetof(intake_config_t, key_file), NULL, 0, 0,
     "intake's CURVE key file (aftercarectl keys create intake --kind service ...)"},
    {"AC_OUTBOX_RETENTION", AC_CFG_DURATION, offsetof(intake_config_t, retention_s), "30d", 0,
     315360000, "how long published events stay replayable (e.g. 30d, 12h; 0 = for ever)"},
    {"AC_LOG_LEVEL", AC_CFG_STRING, offsetof(intake_config_t, log_level), "info", 0, 0,
     "debug, info, warn or error"},
    {"AC_LOG_FORMAT", AC_CFG_STRING, offsetof(intake_config_t, log_format), "text", 0, 0,
     "text or json"},
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

static const char *const listen_channels[] = {"ac_auth", "intake_follow", NULL};

/* --- glue callbacks ---------------------------------------------------------------------- */

static void on_db_notify(void *arg, const char *channel, const char *payload)
{
    intake_t *self = arg;
    if (channel && strcmp(channel, "intake_follow") == 0) {
        intake_follow_on_notify(self);
        return;
    }
    if (!channel) { /* the listening connection (re)connected: notifications were missed, and
                     * a restarted server may have lost the consumer's last commits */
        intake_follow_on_notify(self);
        ac_consumer_recheck(self->consumer);
    }
    if (self->auth)
        ac_auth_on_notify(self->auth, channel, payload);
}

/* --- setup / teardown ------------------------------------------------------------------ */

/* The consumer of AC_INTAKE_FOLLOW's sources (follow.c's routes), checkpoints in
 * intake.consumer_checkpoints; none when the list is "none". Every event of those sources
 * is read (no topic filter): those without a route only move the checkpoint. */
static int intake_follow_setup(intake_t *self)
{
    const intake_config_t *cfg = self->cfg;
    size_t n = 0;
    if (!(self->follow_buf = strdup(strcmp(cfg->follow, "none") == 0 ? "" : cfg->follow)))
        return -1;
    for (char *p = strtok(self->follow_buf, ", "); p; p = strtok(NULL, ", ")) {
        if (n == INTAKE_FOLLOW_MAX) {
            ac_error("intake: AC_INTAKE_FOLLOW names more than %d sources", INTAKE_FOLLOW_MAX);
            return -1;
        }
        self->follow[n++] = p;
    }
    self->follow[n] = NULL;
    if (n == 0)
        return 0;
    self->consumer_cfg = (ac_consumer_config_t){
        .name = "intake",
        .output_endpoint = cfg->bus_output,
        .replay_endpoint = cfg->bus_replay,
        .curve = &cfg->curve,
        .sources = self->follow,
        .routes = intake_follow_routes,
        .is_commit_async = 1, /* effects published only through the outbox */
        .arg = self,
        .db = self->db,
        .schema = "intake",
        .metrics = self->metrics,
    };
    self->consumer = ac_consumer_new(self->loop, &self->consumer_cfg);
    return self->consumer ? 0 : -1;
}

static int intake_setup(intake_t *self, struct ev_loop *loop, const intake_config_t *cfg)
{
    memset(self, 0, sizeof *self);
    self->loop = loop;
    self->cfg = cfg;

    ac_service_init(&self->base, loop, "intake",
                    " (a create is safe to retry with the same Idempotency-Key)");
    if (ac_service_migrate(&self->base, cfg->db_conninfo, intake_migrations) < 0)
        return -1;

    if (!(self->metrics = ac_metrics_new("aftercare_intake")))
        return -1;
    intake_api_setup(self);

    self->db_cfg = (ac_db_config_t){
        .conninfo = cfg->db_conninfo,
        .pool_size = (int)cfg->db_pool,
        .stmts = intake_stmts,
        .nstmts = INTAKE_STMT__COUNT,
        .listen = listen_channels,
        .on_notify = on_db_notify,
        .notify_arg = self,
        .name = "intake",
    };
    if (!(self->db = ac_db_new(loop, &self->db_cfg)))
        return -1;
    if (!(self->auth = ac_auth_new(loop, self->db)))
        return -1;

    self->outbox_cfg = (ac_outbox_config_t){
        .conninfo = cfg->db_conninfo,
        .schema = "intake",
        .source = "aftercare/intake",
        .bus_endpoint = cfg->bus_input,
        .retention_s = cfg->retention_s,
        .curve = &cfg->curve,
        .metrics = self->metrics,
    };
    if (!(self->outbox = ac_outbox_new(loop, &self->outbox_cfg)))
        return -1;
    if (intake_follow_start(self) != 0 || intake_follow_setup(self) != 0)
        return -1;

    ac_http_config_t http_cfg = {
        .bind_addr = cfg->http_addr,
        .port = cfg->http_port,
        .max_body_bytes = (size_t)cfg->max_body,
        .routes = intake_routes,
        .handler_arg = self,
        .metrics = self->metrics,
    };
    return ac_service_listen(&self->base, self->db, self->auth, &http_cfg);
}

static void intake_teardown(intake_t *self)
{
    self->is_closed = 1;                  /* from here on no batch or call starts */
    ac_service_close(&self->base);        /* 503 to the requests in flight; no more HTTP */
    ac_consumer_destroy(&self->consumer); /* its transaction in flight rolls back */
    intake_follow_stop(self);
    free(self->follow_buf);
    self->follow_buf = NULL;
    ac_outbox_destroy(&self->outbox);
    ac_auth_destroy(&self->auth);
    ac_db_destroy(&self->db); /* the calls still in flight end here, unanswered */
    intake_create_drop_all(self);
    ac_metrics_destroy(&self->metrics);
}

int main(void)
{
    intake_config_t cfg = {0};
    intake_t intake;
    struct ev_loop *loop = EV_DEFAULT;
    char err[256];
    int rc = 0;

    if (ac_config_load(&cfg, intake_config_keys, err, sizeof err) != 0) {
        fprintf(stderr, "aftercare-intake: %s\n", err);
        ac_config_free(&cfg, intake_config_keys);
        return 2;
    }
    if (ac_log_setup("intake", cfg.log_level, cfg.log_format, err, sizeof(err)) != 0) {
        fprintf(stderr, "aftercare-intake: %s\n", err);
        ac_config_free(&cfg, intake_config_keys);
        return 2;
    }
    if (ac_curve_load(cfg.key_file, cfg.bus_server_key, &cfg.curve, err, sizeof(err)) != 0) {
        fprintf(stderr, "aftercare-intake: %s (AC_INTAKE_KEY_FILE, AC_BUS_SERVER_KEY)\n", err);
        ac_config_free(&cfg, intake_config_keys);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    if (intake_setup(&intake, loop, &cfg) != 0) {
        ac_error("intake: cannot start");
        rc = 1;
    } else {
        ev_run(loop, 0);
    }
    intake_teardown(&intake);
    ac_config_free(&cfg, intake_config_keys);
    ac_info("intake stopped");
    return rc;
}
