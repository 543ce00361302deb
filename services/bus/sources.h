/* sources.h — where each source's stream stands, and what flows per topic.
 *
 * A source ("aftercare/intake") is a service whose outbox (schema "intake") the bus can
 * replay; AC_BUS_SOURCES lists them as "source=schema,...". For each source the bus knows
 * the highest sequence it forwarded itself, and, refreshed from the outbox every
 * REFRESH_S seconds, last_seq, the oldest sequence replay can serve and the rows still
 * unnumbered. The heartbeat, replay and the HTTP figures read these.
 *
 * Per topic it counts forwarded messages and samples the counts every second, for rates
 * over the last 10 and 60 seconds.
 *
 * Owns: the source and topic tables, the refresh and sampling timers, the refresh queries. */
#ifndef BUS_SOURCES_H
#define BUS_SOURCES_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "ac_err.h"
#include "store.h"

#define BUS_SOURCES_MAX     32
#define BUS_SOURCE_NAME_MAX 64 /* "aftercare/<service>" with the NUL */
#define BUS_SCHEMA_MAX      48
#define BUS_TOPICS_MAX      256 /* distinct topics counted; the rest go to "(other)" */
#define BUS_RATE_SAMPLES    61  /* one per second: 60 s of history */

typedef struct bus_sources bus_sources_t;

typedef struct bus_source {
    bus_sources_t *owner;
    char name[BUS_SOURCE_NAME_MAX]; /* "aftercare/intake" */
    char schema[BUS_SCHEMA_MAX];    /* "intake" */
    uint64_t forwarded_seq;         /* the highest sequence this process forwarded */
    uint64_t start_seq;             /* outbox last_seq at the first successful read */
    int has_position;               /* position was read at least once */
    int is_failing;                 /* the last read failed (logged once per outage) */
    bus_position_t position;        /* the latest read */
    bus_store_call_t refresh;       /* the read in flight */
} bus_source_t;

typedef struct bus_topic_stat {
    char topic[128];
    uint64_t forwarded;                 /* messages forwarded */
    uint64_t samples[BUS_RATE_SAMPLES]; /* `forwarded` at each sampling tick (ring) */
} bus_topic_stat_t;

/* Parses and validates spec ("aftercare/intake=intake,..."): source names
 * "aftercare/[a-z][a-z0-9-]*", schemas "[a-z_][a-z0-9_]*", no duplicates. NULL with a
 * message in err on failure. */
bus_sources_t *bus_sources_new(struct ev_loop *loop, const char *spec, char *err, size_t errlen);
void bus_sources_destroy(bus_sources_t **self_p);
/* Starts the refresh (every few seconds) on store, which must outlive the refreshes:
 * bus_sources_stop() before destroying it. */
void bus_sources_start(bus_sources_t *self, bus_store_t *store);
void bus_sources_stop(bus_sources_t *self);

size_t bus_sources_count(const bus_sources_t *self);
bus_source_t *bus_sources_at(bus_sources_t *self, size_t i);
/* The index of the source called name, or -1. */
int bus_sources_find(const bus_sources_t *self, const char *name);
/* The schemas in source order (borrowed: valid while self lives), for bus_store_new(). */
const char *const *bus_sources_schemas(const bus_sources_t *self);

/* The bus forwarded this event (called for every forwarded message). */
void bus_sources_on_forwarded(bus_sources_t *self, const char *source, uint64_t sequence,
                              const char *topic);

/* The latest sequence the bus knows was published: max(forwarded, last_seq at start),
 * capped at the outbox's last_seq as last read (an envelope cannot push it beyond what
 * the outbox numbered; an honest event just forwarded shows within REFRESH_FIRST_S). */
uint64_t bus_source_last_sequence(const bus_source_t *s);
/* Committed events not yet through the bus: unnumbered rows + numbered ones beyond
 * bus_source_last_sequence(). 0 before the first read. */
uint64_t bus_source_lag(const bus_source_t *s);

size_t bus_sources_ntopics(const bus_sources_t *self);
const bus_topic_stat_t *bus_sources_topic(const bus_sources_t *self, size_t i);
/* Messages per second over the last `seconds` (clamped to the history kept). */
double bus_sources_topic_rate(const bus_sources_t *self, const bus_topic_stat_t *t, int seconds);

#endif
