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
#include "conns.h"
#include "heartbeat.h"
#include "keys.h"
#include "zap.h"

struct bus_sources;
struct bus_store;
struct bus_replay;
struct bus_monitor;

/* The ZAP domains of the bus sockets; index of bus_t.auth_failures. */
typedef enum {
    BUS_DOMAIN_INPUT,  /* "aftercare.input": services' publishers */
    BUS_DOMAIN_OUTPUT, /* "aftercare.output": subscribers */
    BUS_DOMAIN_REPLAY, /* "aftercare.replay": replay clients */
    BUS_DOMAINS
} bus_domain_t;
#define BUS_ZAP_INPUT  "aftercare.input"
#define BUS_ZAP_OUTPUT "aftercare.output"
#define BUS_ZAP_REPLAY "aftercare.replay"

/* The I/O thread that serves each bus socket (ac_zsock_set_affinity()): the output on
 * thread 1 when there are two or more, the input and the replay endpoint on thread 0. One
 * thread per socket keeps its monitor's events in the order they happened, which conns.c
 * relies on to attribute handshakes; and the output's encryption runs beside the input's
 * decryption. */
#define BUS_IO_AFFINITY(cfg, domain)                                                               \
    ((domain) == BUS_DOMAIN_OUTPUT && (cfg)->io_threads >= 2 ? 2u : 1u)

typedef struct bus_config {
    char *input_bind;      /* AC_BUS_INPUT_BIND */
    char *output_bind;     /* AC_BUS_OUTPUT_BIND */
    long hwm;              /* AC_BUS_HWM: per-subscriber queue, in messages */
    long io_threads;       /* AC_BUS_IO_THREADS: ZeroMQ I/O threads (CURVE runs there) */
    long max_msg;          /* AC_BUS_MAX_MSG: bytes; larger messages are refused */
    char *secret_key_file; /* AC_BUS_SECRET_KEY_FILE: the bus's CURVE key pair */
    char *sources;         /* AC_BUS_SOURCES: "source=schema,..." (sources.c parses it) */
    char *replay_bind;     /* AC_BUS_REPLAY_BIND: where replay clients connect (ROUTER) */
    long heartbeat_ms;     /* AC_BUS_HEARTBEAT_MS: period of bus.heartbeat */
    long replay_batch;     /* AC_BUS_REPLAY_BATCH: outbox rows per replay query */
    long replay_max;       /* AC_BUS_REPLAY_MAX: replays running at once */
    long replay_per_key;   /* AC_BUS_REPLAY_PER_KEY: ... of them per client key */
    long replay_stall_s;   /* AC_BUS_REPLAY_STALL_S: a paused replay is dropped after this */
    char *http_addr;       /* AC_BUS_HTTP_ADDR: /healthz, /metrics, /v1/stats */
    int http_port;         /* AC_BUS_HTTP_PORT */
    char *db;              /* AC_BUS_DB: libpq conninfo (role ac_bus) */
    char *log_level;
    char *log_format;
} bus_config_t;

typedef struct bus {
    struct ev_loop *loop;    /* borrowed from main() */
    const bus_config_t *cfg; /* borrowed */
    ac_zsock_t *input;       /* owned XSUB */
    ac_zsock_t *output;      /* owned XPUB */
    bus_keys_t *keys;        /* owned: who may connect, publish, see which topics */
    ac_curve_t curve;        /* the bus's key pair (every bus socket is a CURVE server) */
    bus_zap_t *zap;          /* owned: the ZAP handler (zap.c) */
    ev_signal sigint;        /* graceful stop */
    ev_signal sigterm;
    ev_timer stats;      /* periodic one-line summary */
    uint64_t forwarded;  /* messages passed to the output */
    uint64_t malformed;  /* messages dropped as malformed */
    uint64_t subscribes; /* subscription messages seen on the output */
    uint64_t unsubscribes;
    /* security (zap.c, bus.c): refused handshakes per ZAP domain, see bus_domain_t */
    uint64_t auth_failures[BUS_DOMAINS];
    /* connections and failed handshakes per socket (conns.c), see bus_domain_t */
    bus_conns_t conns[BUS_DOMAINS];
    uint64_t unauthorised;     /* input messages dropped: not a service key, or another source */
    uint64_t topics_denied;    /* output subscriptions (or parts) refused by a key's topics */
    uint64_t output_recreated; /* times the output was re-created (a key revoked/narrowed) */
    ev_timer output_rebind;    /* retries binding a re-created output while the port is busy */
    struct bus_seen_key *output_keys; /* owned: keys let into the output since its creation */
    size_t noutput_keys;
    /* history (main.c wires these after bus_setup(), removes them before bus_teardown()) */
    struct bus_sources *sources; /* owned: source positions, topic counts (sources.c) */
    struct bus_store *store;     /* owned: the outboxes' SQL (store.c) */
    struct bus_replay *replay;   /* owned: the replay endpoint (replay.c) */
    struct bus_monitor *monitor; /* owned: /healthz, /metrics, /v1/stats (monitor.c) */
    bus_heartbeat_t heartbeat;   /* bus.heartbeat on the output (heartbeat.c) */
    /* called for every forwarded event (source positions, topic counts); may be NULL */
    void (*on_forwarded)(void *arg, const char *source, uint64_t sequence, const char *topic);
    void *forwarded_arg;
} bus_t;

int bus_setup(bus_t *self, struct ev_loop *loop, const bus_config_t *cfg) AC_WUR;
void bus_teardown(bus_t *self);
/* zap.c: key k has just been let into the output. If it is later revoked or its topics
 * narrowed, the output socket is re-created so that it must authenticate again. */
void bus_output_key_seen(bus_t *self, const bus_key_t *k);

#endif
