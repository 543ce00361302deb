/* heartbeat.h — the bus's heartbeat: every AC_BUS_HEARTBEAT_MS a message on the output,
 *   ["bus.heartbeat"][Envelope{source "aftercare/bus", type "aftercare.bus.heartbeat.v1",
 *                              sequence 0, bus_heartbeat}]
 * carrying each source's latest published sequence and oldest replayable sequence
 * (proto/aftercare/v1/bus.proto), a beat counting from 1 and a UUID per bus process.
 * A subscriber that heard nothing can tell from it whether it missed something.
 *
 * Owns: its timer. */
#ifndef BUS_HEARTBEAT_H
#define BUS_HEARTBEAT_H

#include <ev.h>
#include <stdint.h>

#include "ac_uuid.h"

struct bus;
struct bus_sources;

typedef struct bus_heartbeat {
    struct bus *bus;             /* borrowed: its output socket (which may be re-created) */
    struct bus_sources *sources; /* borrowed */
    ev_timer timer;
    uint64_t beat;                 /* the last beat sent */
    uint64_t failed;               /* beats that could not be packed or sent */
    char instance[AC_UUID_STRLEN]; /* this process's bus_instance */
} bus_heartbeat_t;

/* Starts beating at once, then every period_ms. */
void bus_heartbeat_start(bus_heartbeat_t *self, struct bus *bus, struct bus_sources *sources,
                         long period_ms);
void bus_heartbeat_stop(bus_heartbeat_t *self);

#endif
