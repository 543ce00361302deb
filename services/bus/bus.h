/* bus.h — the bus daemon: the one address for everyone.
 * Services' publishers connect to the input (XSUB); subscribers connect to the output
 * (XPUB). The bus subscribes to everything upstream, checks every message (two frames,
 * a topic that matches the envelope's type) and forwards it; anything else is counted,
 * logged and dropped. It keeps no state, so it may restart at any time: publishers
 * reconnect and resend what they queued, subscribers reconnect. */
#ifndef BUS_BUS_H
#define BUS_BUS_H

#include <ev.h>
#include <stdint.h>

#include "ac_bus.h"

typedef struct bus_config {
    char *input_bind;  /* AC_BUS_INPUT_BIND */
    char *output_bind; /* AC_BUS_OUTPUT_BIND */
    long hwm;          /* AC_BUS_HWM: per-subscriber queue, in messages */
    long max_msg;      /* AC_BUS_MAX_MSG: bytes; larger messages are refused */
    char *log_level;
    char *log_format;
} bus_config_t;

typedef struct bus {
    struct ev_loop *loop;    /* borrowed from main() */
    const bus_config_t *cfg; /* borrowed */
    ac_zsock_t *input;       /* owned XSUB */
    ac_zsock_t *output;      /* owned XPUB */
    ev_signal sigint;        /* graceful stop */
    ev_signal sigterm;
    ev_timer stats;      /* periodic one-line summary */
    uint64_t forwarded;  /* messages passed to the output */
    uint64_t malformed;  /* messages dropped as malformed */
    uint64_t subscribes; /* subscription messages seen on the output */
    uint64_t unsubscribes;
} bus_t;

int bus_setup(bus_t *self, struct ev_loop *loop, const bus_config_t *cfg) AC_WUR;
void bus_teardown(bus_t *self);

#endif
