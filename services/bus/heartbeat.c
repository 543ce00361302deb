/* heartbeat.c — bus.heartbeat on the output (see heartbeat.h). */
#include "heartbeat.h"

#include <stdlib.h>
#include <string.h>

#include "ac_event.h"
#include "ac_log.h"
#include "bus.h"
#include "sources.h"

#define HEARTBEAT_TOPIC "bus.heartbeat"

static void beat(bus_heartbeat_t *self)
{
    size_t n = bus_sources_count(self->sources), known = 0;
    Aftercare__V1__SourcePosition pos[BUS_SOURCES_MAX];
    Aftercare__V1__SourcePosition *ppos[BUS_SOURCES_MAX];
    Aftercare__V1__BusHeartbeat hb = AFTERCARE__V1__BUS_HEARTBEAT__INIT;
    Aftercare__V1__Envelope env;
    ac_event_ids_t ids;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc;

    if (!self->bus->output)
        return; /* being re-created (a key was revoked): the next beat goes out */
    for (size_t i = 0; i < n; i++) {
        const bus_source_t *s = bus_sources_at(self->sources, i);
        if (!s->has_position)
            continue; /* not read yet: a 0 would tell a tail to start at 1 */
        aftercare__v1__source_position__init(&pos[known]);
        pos[known].source = (char *)(uintptr_t)s->name;
        pos[known].last_sequence = bus_source_last_sequence(s);
        pos[known].oldest_sequence = s->position.oldest_seq;
        ppos[known] = &pos[known];
        known++;
    }
    hb.n_sources = known;
    hb.sources = ppos;
    hb.beat = self->beat + 1;
    hb.bus_instance = self->instance;
    ac_event_init(&env, &ids, "bus", HEARTBEAT_TOPIC, NULL, NULL, 0, NULL);
    env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_BUS_HEARTBEAT;
    env.bus_heartbeat = &hb;
    rc = ac_event_pack(&env, &buf, &len);
    if (rc == 0) {
        const void *data[2] = {HEARTBEAT_TOPIC, buf};
        size_t lens[2] = {sizeof(HEARTBEAT_TOPIC) - 1, len};
        rc = ac_zsock_send(self->bus->output, data, lens, 2);
    }
    free(buf);
    if (rc == 0) {
        self->beat++;
    } else if (self->failed++ == 0) {
        ac_warn("heartbeat: cannot send: %s", ac_strerror(rc));
    }
}

static void on_beat(struct ev_loop *loop, ev_timer *w, int revents)
{
    beat(ac_container_of(w, bus_heartbeat_t, timer));
}

void bus_heartbeat_start(bus_heartbeat_t *self, struct bus *bus, struct bus_sources *sources,
                         long period_ms)
{
    double period_s = (double)period_ms / 1000.;
    memset(self, 0, sizeof(*self));
    self->bus = bus;
    self->sources = sources;
    ac_uuid_new(self->instance);
    ev_timer_init(&self->timer, on_beat, period_s, period_s);
    ev_timer_start(bus->loop, &self->timer);
    ac_info("heartbeat every %ld ms on %s, bus instance %s", period_ms, HEARTBEAT_TOPIC,
            self->instance);
}

void bus_heartbeat_stop(bus_heartbeat_t *self)
{
    if (self->bus)
        ev_timer_stop(self->bus->loop, &self->timer);
}
