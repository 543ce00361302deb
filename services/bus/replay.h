/* replay.h — the bus's replay endpoint (ROUTER, AC_BUS_REPLAY_BIND, CURVE with ZAP domain
 * "aftercare.replay"): "events of source S from sequence N, up to M, with topic prefix P",
 * read from the source's outbox and streamed in sequence order, then ReplayEnd — or
 * ReplayError. The wire protocol and the error codes are in proto/aftercare/v1/bus.proto.
 *
 * Each accepted request is a stream: it reads AC_BUS_REPLAY_BATCH rows per query (at most
 * one query in flight, one batch read ahead), sends with ROUTER_MANDATORY and pauses
 * while the client's queue is full, so a slow client slows only its own streams and
 * nothing is dropped. The client's key is checked at the request and before every batch;
 * the topics sent are the request's prefix intersected with the key's topics.
 * Every malformed request is counted, logged (rate-limited) and answered with
 * BAD_REQUEST.
 *
 * Owns: the ROUTER socket, the streams and their queries, the retry timer. */
#ifndef BUS_REPLAY_H
#define BUS_REPLAY_H

#include <stdint.h>

#include "ac_err.h"

struct bus;
struct bus_store;
struct bus_sources;

typedef struct bus_replay bus_replay_t;

/* ReplayError codes, as in bus.proto (index of bus_replay_stats_t.errors). */
enum {
    BUS_REPLAY_BAD_REQUEST = 1,
    BUS_REPLAY_UNKNOWN_SOURCE = 2,
    BUS_REPLAY_PRUNED = 3,
    BUS_REPLAY_FORBIDDEN = 4,
    BUS_REPLAY_BUSY = 5,
    BUS_REPLAY_UNAVAILABLE = 6,
    BUS_REPLAY_CODES = 7
};
const char *bus_replay_code_name(int code); /* "BAD_REQUEST", ...; "?" when unknown */

typedef struct bus_replay_stats {
    uint64_t requests;                 /* replay.request messages read (well-formed or not) */
    uint64_t malformed;                /* of which could not be read as a request */
    uint64_t completed;                /* streams ended with ReplayEnd */
    uint64_t errors[BUS_REPLAY_CODES]; /* ReplayError answers, by code */
    uint64_t events;                   /* replay.event messages sent */
    uint64_t peers_gone;               /* streams dropped because the client went away */
    uint64_t replies_dropped;          /* answers that could not be queued */
    uint64_t stalled; /* streams dropped: the client did not read for AC_BUS_REPLAY_STALL_S */
    unsigned active;  /* streams running now */
} bus_replay_stats_t;

/* Binds the replay socket (after the ZAP handler is bound). NULL on failure (logged). */
bus_replay_t *bus_replay_new(struct bus *bus, struct bus_store *store, struct bus_sources *sources);
void bus_replay_destroy(bus_replay_t **self_p); /* safe on NULL; sets *self_p = NULL */
void bus_replay_stats(const bus_replay_t *self, bus_replay_stats_t *out);

#endif
