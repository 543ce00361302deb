/* consumer-sink.c — ac-consumer-sink, a test subscriber: the consumer (ac_consumer.h) in
 * database mode, whose handler inserts (source, sequence, event_id, topic, subject) of each
 * event into <schema>.events in the same transaction as the checkpoint. The table has no
 * unique constraint, so an event applied twice shows up as two rows, a lost one as a hole.
 *
 * Configuration (environment):
 *   AC_SINK_DB           libpq conninfo (a role that may create the schema; tests use the
 *                        superuser)                                          required
 *   AC_SINK_SCHEMA       schema of events, consumer_checkpoints, ...        [sink]
 *   AC_SINK_FOLLOW       comma-separated sources                            [aftercare/intake]
 *   AC_SINK_TOPICS       comma-separated topic prefixes, "" = every topic   []
 *   AC_SINK_KEY_FILE     CURVE key file of this subscriber                   required
 *   AC_BUS_SERVER_KEY    the bus's public key                                required
 *   AC_BUS_OUTPUT        [tcp://127.0.0.1:5571]    AC_BUS_REPLAY   [tcp://127.0.0.1:5572]
 *   AC_SINK_RCVHWM       receive queue of the SUB socket, messages          [100000]
 *   AC_SINK_BATCH        events per transaction                             [64]
 *   AC_SINK_WINDOW       events held per source                             [16384]
 *   AC_SINK_REPLAY_TIMEOUT_MS                                                [5000]
 *   AC_SINK_FAIL_SEQUENCE  the event with this sequence fails in the database (a poison
 *                        event, to test the dead letters); 0 = none          [0]
 * Every second, and at exit, one line "sink stats: applied=... gaps=..." on stderr. */
#include <ev.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_bus.h"
#include "ac_config.h"
#include "ac_consumer.h"
#include "ac_db.h"
#include "ac_log.h"

#define SINK_LIST_MAX   16
#define SINK_SCHEMA_MAX 48
#define MIGRATE_WAIT_S  30.0

typedef struct sink_config {
    char *db;
    char *schema;
    char *follow;
    char *topics;
    char *key_file;
    char *server_key;
    char *output;
    char *replay;
    long rcvhwm;
    long batch;
    long window;
    long replay_timeout_ms;
    long fail_sequence;
    char *log_level;
    char *log_format;
} sink_config_t;

static const ac_cfg_key_t sink_config_keys[] = {
    {"AC_SINK_DB", AC_CFG_STRING, offsetof(sink_config_t, db), NULL, 0, 0, "libpq conninfo"},
    {"AC_SINK_SCHEMA", AC_CFG_STRING, offsetof(sink_config_t, schema), "sink", 0, 0, "schema"},
    {"AC_SINK_FOLLOW", AC_CFG_STRING, offsetof(sink_config_t, follow), "aftercare/intake", 0, 0,
     "comma-separated sources"},
    {"AC_SINK_TOPICS", AC_CFG_STRING, offsetof(sink_config_t, topics), "", 0, 0,
     "comma-separated topic prefixes"},
    {"AC_SINK_KEY_FILE", AC_CFG_STRING, offsetof(sink_config_t, key_file), NULL, 0, 0,
     "CURVE key file"},
    {"AC_BUS_SERVER_KEY", AC_CFG_STRING, offsetof(sink_config_t, server_key), NULL, 0, 0,
     "the bus's public key"},
    {"AC_BUS_OUTPUT", AC_CFG_STRING, offsetof(sink_config_t, output), "tcp://127.0.0.1:5571", 0, 0,
     "bus output"},
    {"AC_BUS_REPLAY", AC_CFG_STRING, offsetof(sink_config_t, replay), "tcp://127.0.0.1:5572", 0, 0,
     "bus replay"},
    {"AC_SINK_RCVHWM", AC_CFG_INT, offsetof(sink_config_t, rcvhwm), "100000", 1, 10000000,
     "SUB receive queue"},
    {"AC_SINK_BATCH", AC_CFG_INT, offsetof(sink_config_t, batch), "64", 1, 10000,
     "events per transaction"},
    {"AC_SINK_WINDOW", AC_CFG_INT, offsetof(sink_config_t, window), "16384", 16, 1 << 24,
     "events held per source"},
    {"AC_SINK_REPLAY_TIMEOUT_MS", AC_CFG_INT, offsetof(sink_config_t, replay_timeout_ms), "5000",
     100, 600000, "replay timeout"},
    {"AC_SINK_FAIL_SEQUENCE", AC_CFG_INT, offsetof(sink_config_t, fail_sequence), "0", 0, 1L << 62,
     "poison event"},
    {"AC_LOG_LEVEL", AC_CFG_STRING, offsetof(sink_config_t, log_level), "info", 0, 0, "level"},
    {"AC_LOG_FORMAT", AC_CFG_STRING, offsetof(sink_config_t, log_format), "text", 0, 0, "format"},
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

typedef struct sink {
    struct ev_loop *loop;
    const sink_config_t *cfg;
    ac_curve_t curve;
    ac_db_t *db;
    ac_db_config_t db_cfg;
    ac_db_stmt_t stmts[1];
    char sql_insert[256];
    ac_consumer_t *consumer;
    ac_consumer_config_t consumer_cfg;
    char *follow_buf, *topics_buf; /* owned, split in place */
    const char *follow[SINK_LIST_MAX + 1];
    const char *topics[SINK_LIST_MAX + 1];
    ev_timer stats;
    ev_signal sigint, sigterm;
} sink_t;

/* Splits buf at commas in place into out (NULL-terminated); empty items are skipped. */
static size_t split(char *buf, const char **out, size_t max)
{
    size_t n = 0;
    for (char *p = strtok(buf, ","); p && n < max; p = strtok(NULL, ","))
        if (*p)
            out[n++] = p;
    out[n] = NULL;
    return n;
}

static int on_event(const ac_consumer_event_t *ev, ac_db_txn_t *txn, void *arg)
{
    sink_t *self = arg;
    char seq[24];
    const char *values[5] = {ev->source, seq, ev->env->id, ev->topic, ev->env->subject};
    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)ev->sequence);
    if (self->cfg->fail_sequence > 0 && ev->sequence == (uint64_t)self->cfg->fail_sequence) {
        int rc = ac_db_txn_add_sql(txn, "SELECT 1 / 0", 0, NULL, NULL, NULL);
        if (rc)
            return rc;
    }
    return ac_db_txn_add(txn, 0, values, NULL, NULL);
}

static void log_stats(sink_t *self, const char *when)
{
    ac_consumer_stats_t st;
    ac_consumer_stats(self->consumer, &st);
    ac_info("sink stats%s: applied=%llu duplicates=%llu gaps=%llu live_missed=%llu replays=%llu "
            "replay_errors=%llu garbage=%llu dead_letters=%llu db_retries=%llu next=%llu",
            when, (unsigned long long)st.applied, (unsigned long long)st.duplicates,
            (unsigned long long)st.gaps, (unsigned long long)st.live_missed,
            (unsigned long long)st.replays, (unsigned long long)st.replay_errors,
            (unsigned long long)st.garbage, (unsigned long long)st.dead_letters,
            (unsigned long long)st.db_retries,
            (unsigned long long)ac_consumer_next(self->consumer, self->follow[0]));
}

static void on_stats(struct ev_loop *loop, ev_timer *w, int revents)
{
    log_stats(ac_container_of(w, sink_t, stats), "");
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

static const char SINK_V1[] = "CREATE TABLE %1$s.events ("
                              " id bigserial PRIMARY KEY,"
                              " source text NOT NULL,"
                              " sequence bigint NOT NULL,"
                              " event_id text NOT NULL,"
                              " topic text NOT NULL,"
                              " subject text NOT NULL,"
                              " received_at timestamptz NOT NULL DEFAULT now());";

static int sink_setup(sink_t *self, struct ev_loop *loop, const sink_config_t *cfg)
{
    char err[512], v1[sizeof(SINK_V1) + (size_t)4 * SINK_SCHEMA_MAX];
    memset(self, 0, sizeof(*self));
    self->loop = loop;
    self->cfg = cfg;
    if (ac_curve_load(cfg->key_file, cfg->server_key, &self->curve, err, sizeof(err)) != 0) {
        ac_error("sink: %s", err);
        return -1;
    }
    if (strlen(cfg->schema) >= SINK_SCHEMA_MAX) {
        ac_error("sink: schema name too long");
        return -1;
    }
    snprintf(v1, sizeof(v1), SINK_V1, cfg->schema);
    const ac_migration_t migrations[] = {{1, "001_sink", v1}, {0, NULL, NULL}};
    if (ac_db_migrate(cfg->db, cfg->schema, "sink", migrations, MIGRATE_WAIT_S) != 0 ||
        ac_consumer_migrate(cfg->db, cfg->schema, MIGRATE_WAIT_S) != 0) {
        ac_error("sink: migrations failed");
        return -1;
    }
    snprintf(self->sql_insert, sizeof(self->sql_insert),
             "INSERT INTO %s.events (source, sequence, event_id, topic, subject)"
             " VALUES ($1, $2::bigint, $3, $4, $5)",
             cfg->schema);
    self->stmts[0] = (ac_db_stmt_t){self->sql_insert, 5};
    self->db_cfg = (ac_db_config_t){
        .conninfo = cfg->db,
        .pool_size = 2,
        .stmts = self->stmts,
        .nstmts = 1,
        .name = "sink",
    };
    if (!(self->db = ac_db_new(loop, &self->db_cfg)))
        return -1;
    self->follow_buf = strdup(cfg->follow);
    self->topics_buf = strdup(cfg->topics);
    if (!self->follow_buf || !self->topics_buf)
        return -1;
    if (split(self->follow_buf, self->follow, SINK_LIST_MAX) == 0) {
        ac_error("sink: AC_SINK_FOLLOW names no source");
        return -1;
    }
    size_t ntopics = split(self->topics_buf, self->topics, SINK_LIST_MAX);
    self->consumer_cfg = (ac_consumer_config_t){
        .name = "sink",
        .output_endpoint = cfg->output,
        .replay_endpoint = cfg->replay,
        .curve = &self->curve,
        .sources = self->follow,
        .topics = ntopics > 0 ? self->topics : NULL,
        .on_event = on_event,
        .arg = self,
        .db = self->db,
        .schema = cfg->schema,
        .batch_max = (int)cfg->batch,
        .rcvhwm = (int)cfg->rcvhwm,
        .window = (size_t)cfg->window,
        .replay_timeout_s = (double)cfg->replay_timeout_ms / 1000.,
    };
    if (!(self->consumer = ac_consumer_new(loop, &self->consumer_cfg)))
        return -1;
    ev_timer_init(&self->stats, on_stats, 1., 1.);
    ev_timer_start(loop, &self->stats);
    ev_signal_init(&self->sigint, on_signal, SIGINT);
    ev_signal_start(loop, &self->sigint);
    ev_signal_init(&self->sigterm, on_signal, SIGTERM);
    ev_signal_start(loop, &self->sigterm);
    ac_info("sink: following %s into %s.events", cfg->follow, cfg->schema);
    return 0;
}

static void sink_teardown(sink_t *self)
{
    if (self->loop) {
        ev_timer_stop(self->loop, &self->stats);
        ev_signal_stop(self->loop, &self->sigint);
        ev_signal_stop(self->loop, &self->sigterm);
    }
    if (self->consumer)
        log_stats(self, " at exit");
    ac_consumer_destroy(&self->consumer);
    ac_db_destroy(&self->db);
    free(self->follow_buf);
    free(self->topics_buf);
    ac_bus_shutdown();
}

int main(void)
{
    sink_config_t cfg = {0};
    sink_t sink;
    struct ev_loop *loop = EV_DEFAULT;
    char err[256];
    int rc = 0;

    if (ac_config_load(&cfg, sink_config_keys, err, sizeof(err)) != 0 ||
        ac_log_setup("sink", cfg.log_level, cfg.log_format, err, sizeof(err)) != 0) {
        fprintf(stderr, "ac-consumer-sink: %s\n", err);
        ac_config_free(&cfg, sink_config_keys);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (sink_setup(&sink, loop, &cfg) != 0) {
        ac_error("sink: cannot start");
        rc = 1;
    } else {
        ev_run(loop, 0);
    }
    sink_teardown(&sink);
    ac_config_free(&cfg, sink_config_keys);
    return rc;
}
