/* main.c — aftercare-bus: configuration, then bus_setup(), the loop, bus_teardown(). */
#include <ev.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "ac_config.h"
#include "ac_log.h"
#include "bus.h"

static const ac_cfg_key_t bus_config_keys[] = {
    {"AC_BUS_INPUT_BIND", AC_CFG_STRING, offsetof(bus_config_t, input_bind), "tcp://127.0.0.1:5570",
     0, 0, "where services' publishers connect (XSUB)"},
    {"AC_BUS_OUTPUT_BIND", AC_CFG_STRING, offsetof(bus_config_t, output_bind),
     "tcp://127.0.0.1:5571", 0, 0, "where subscribers connect (XPUB)"},
    {"AC_BUS_HWM", AC_CFG_INT, offsetof(bus_config_t, hwm), "100000", 100, 10000000,
     "messages queued per subscriber before it misses some"},
    {"AC_BUS_MAX_MSG", AC_CFG_INT, offsetof(bus_config_t, max_msg), "1048576", 1024, 67108864,
     "largest accepted message in bytes"},
    {"AC_LOG_LEVEL", AC_CFG_STRING, offsetof(bus_config_t, log_level), "info", 0, 0,
     "debug, info, warn or error"},
    {"AC_LOG_FORMAT", AC_CFG_STRING, offsetof(bus_config_t, log_format), "text", 0, 0,
     "text or json"},
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

int main(void)
{
    bus_config_t cfg = {0};
    char err[256];
    bus_t bus;
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
    signal(SIGPIPE, SIG_IGN);

    if (bus_setup(&bus, loop, &cfg) != 0) {
        ac_error("cannot start the bus");
        rc = 1;
    } else {
        ev_run(loop, 0);
    }
    bus_teardown(&bus);
    ac_bus_shutdown();
    ac_config_free(&cfg, bus_config_keys);
    ac_info("stopped");
    return rc;
}
