/* main.c — aftercare-bus: configuration, then bus_setup() and the history (sources, store,
 * heartbeat, replay, monitor), the loop, and the teardown in reverse. */
#include <ev.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "ac_config.h"
#include "ac_log.h"
#include "bus.h"
#include "monitor.h"
#include "replay.h"
#include "sources.h"
#include "store.h"

static const ac_cfg_key_t bus_config_keys[] = {
    {"AC_BUS_INPUT_BIND", AC_CFG_STRING, offsetof(bus_config_t, input_bind), "tcp://127.0.0.1:5570",
     0, 0, "where services' publishers connect (XSUB)"},
    {"AC_BUS_OUTPUT_BIND", AC_CFG_STRING, offsetof(bus_config_t, output_bind),
     "tcp://127.0.0.1:5571", 0, 0, "where subscribers connect (XPUB)"},
    {"AC_BUS_HWM", AC_CFG_INT, offsetof(bus_config_t, hwm), "100000", 100, 10000000,
     "messages queued per subscriber before it misses some"},
    {"AC_BUS_IO_THREADS", AC_CFG_INT, offsetof(bus_config_t, io_threads), "2", 1, 64,
     "ZeroMQ I/O threads (CURVE runs there): the input and the output each get one of two"},
    {"AC_BUS_MAX_MSG", AC_CFG_INT, offsetof(bus_config_t, max_msg), "1048576", 1024, 67108864,
     "largest accepted message in bytes"},
    {"AC_BUS_DB", AC_CFG_STRING, offsetof(bus_config_t, db), NULL, 0, 0,
     "PostgreSQL conninfo of role ac_bus (keys, outboxes, tokens)"},
    {"AC_BUS_SECRET_KEY_FILE", AC_CFG_STRING, offsetof(bus_config_t, secret_key_file), NULL, 0, 0,
     "the bus's CURVE key file (aftercarectl keys create bus --out FILE)"},
    {"AC_BUS_SOURCES", AC_CFG_STRING, offsetof(bus_config_t, sources),
     "aftercare/intake=intake,aftercare/dispatch=dispatch", 0, 0,
     "source=schema pairs, comma-separated: the outboxes replay reads"},
    {"AC_BUS_REPLAY_BIND", AC_CFG_STRING, offsetof(bus_config_t, replay_bind),
     "tcp://127.0.0.1:5572", 0, 0, "where replay clients connect (ROUTER)"},
    {"AC_BUS_HEARTBEAT_MS", AC_CFG_INT, offsetof(bus_config_t, heartbeat_ms), "1000", 10, 60000,
     "milliseconds between bus.heartbeat messages"},
    {"AC_BUS_REPLAY_BATCH", AC_CFG_INT, offsetof(bus_config_t, replay_batch), "2000", 1, 100000,
     "outbox rows per replay query"},
    {"AC_BUS_REPLAY_MAX", AC_CFG_INT, offsetof(bus_config_t, replay_max), "32", 1, 10000,
     "replays running at once; more get BUSY"},
    {"AC_BUS_REPLAY_PER_KEY", AC_CFG_INT, offsetof(bus_config_t, replay_per_key), "8", 1, 10000,
     "replays running at once per client key; more get BUSY"},
    {"AC_BUS_REPLAY_STALL_S", AC_CFG_INT, offsetof(bus_config_t, replay_stall_s), "30", 1, 86400,
     "seconds a replay may wait for a client that does not read before it is dropped"},
    {"AC_BUS_HTTP_ADDR", AC_CFG_STRING, offsetof(bus_config_t, http_addr), "127.0.0.1", 0, 0,
     "HTTP bind address (/healthz, /metrics, /v1/stats)"},
    {"AC_BUS_HTTP_PORT", AC_CFG_PORT, offsetof(bus_config_t, http_port), "8090", 0, 0, "HTTP port"},
    {"AC_LOG_LEVEL", AC_CFG_STRING, offsetof(bus_config_t, log_level), "info", 0, 0,
     "debug, info, warn or error"},
    {"AC_LOG_FORMAT", AC_CFG_STRING, offsetof(bus_config_t, log_format), "text", 0, 0,
     "text or json"},
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

static void on_store_notify(void *arg, const char *channel, const char *payload)
{
    bus_t *bus = arg;
    bus_monitor_on_notify(bus->monitor, channel, payload);
}

static void on_forwarded(void *arg, const char *source, uint64_t sequence, const char *topic)
{
    bus_sources_on_forwarded(arg, source, sequence, topic);
}

/* After bus_setup(), whose ZAP handler must be bound before the replay socket binds:
 * sources (taken from *sources_p), store, heartbeat, replay, monitor. */
static int history_setup(bus_t *bus, bus_sources_t **sources_p)
{
    const bus_config_t *cfg = bus->cfg;
    bus->sources = *sources_p;
    *sources_p = NULL;
    bus->store = bus_store_new(bus->loop, cfg->db, bus_sources_schemas(bus->sources),
                               bus_sources_count(bus->sources), on_store_notify, bus);
    if (!bus->store)
        return AC_ERR_IO;
    bus_sources_start(bus->sources, bus->store);
    bus->on_forwarded = on_forwarded;
    bus->forwarded_arg = bus->sources;
    bus_heartbeat_start(&bus->heartbeat, bus, bus->sources, cfg->heartbeat_ms);
    if (!(bus->replay = bus_replay_new(bus, bus->store, bus->sources)) ||
        !(bus->monitor = bus_monitor_new(bus)))
        return AC_ERR_IO;
    return 0;
}

static void history_teardown(bus_t *bus)
{
    bus->on_forwarded = NULL;
    bus_monitor_destroy(&bus->monitor);
    bus_replay_destroy(&bus->replay);
    bus_heartbeat_stop(&bus->heartbeat);
    bus_sources_stop(bus->sources);
    bus_store_destroy(&bus->store);
    bus_sources_destroy(&bus->sources);
}

int main(void)
{
    bus_config_t cfg = {0};
    char err[256];
    bus_t bus;
    bus_sources_t *sources;
    struct ev_loop *loop = EV_DEFAULT;
    int rc = 0;

    if (ac_config_load(&cfg, bus_config_keys, err, sizeof(err)) != 0) {
        fprintf(stderr, "aftercare-bus: %s\n", err);
        ac_config_free(&cfg, bus_config_keys);
        return 2;
    }
    if (ac_log_setup("bus", cfg.log_level, cfg.log_format, err, sizeof(err)) != 0) {
        fprintf(stderr, "aftercare-bus: %s\n", err);
        ac_config_free(&cfg, bus_config_keys);
        return 2;
    }
    if (!(sources = bus_sources_new(loop, cfg.sources, err, sizeof(err)))) {
        fprintf(stderr, "aftercare-bus: %s\n", err);
        ac_config_free(&cfg, bus_config_keys);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    /* (before the first socket: the input and the output each encrypt on a thread of
     * their own, instead of sharing one with every subscriber's and publisher's CURVE) */
    if (ac_bus_set_io_threads((int)cfg.io_threads) != 0) {
        fprintf(stderr, "aftercare-bus: cannot set %ld ZeroMQ I/O threads\n", cfg.io_threads);
        bus_sources_destroy(&sources);
        ac_config_free(&cfg, bus_config_keys);
        return 2;
    }

    if ((rc = bus_setup(&bus, loop, &cfg)) != 0 || (rc = history_setup(&bus, &sources)) != 0) {
        ac_error("cannot start the bus");
        rc = rc == AC_ERR_CONFIG ? 2 : 1;
    } else {
        ev_run(loop, 0);
    }
    history_teardown(&bus);
    bus_teardown(&bus);
    bus_sources_destroy(&sources); /* when bus_setup() failed before taking them */
    ac_bus_shutdown();
    ac_config_free(&cfg, bus_config_keys);
    ac_info("stopped");
    return rc;
}
