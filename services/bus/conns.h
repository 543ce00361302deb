/* conns.h — who is connected to a bus socket, and every handshake that failed.
 *
 * A ZeroMQ socket monitor (ac_zsock_monitor) on each bus socket reports
 * connections accepted, handshakes succeeded or failed, and connections closed.
 * A failure is counted by reason and logged (rate-limited, through
 * bus_zap_log_refusal) — including those that happen before the ZAP handler is
 * asked: a client without CURVE, one with the wrong server key, or a peer that
 * does not speak ZMTP at all. ZAP refusals (reason "refused") are counted here
 * too but logged by zap.c, which knows the key.
 *
 * libzmq 4.3 names the connection (its fd) only in ACCEPTED and DISCONNECTED: a
 * handshake outcome is attributed to the oldest connection still in its
 * handshake, and a failure's DISCONNECTED (which follows it) corrects that
 * attribution when it was wrong. That order holds because each bus socket is
 * served by one ZeroMQ I/O thread (BUS_IO_AFFINITY, bus.h): spread over two, the
 * events of different connections came in no particular order. A connection closed before any
 * handshake event was not a ZeroMQ peer.
 *
 * Owns: the tables of connections in their handshake and past it. */
#ifndef BUS_CONNS_H
#define BUS_CONNS_H

#include <stddef.h>
#include <stdint.h>

#include "ac_bus.h"

struct bus;

/* Why a handshake failed; index of bus_conns_t.failures. */
typedef enum {
    BUS_HS_REFUSED,       /* the ZAP handler said no (unknown, revoked or wrong kind of
                             key) */
    BUS_HS_NOT_CURVE,     /* the client does not use CURVE */
    BUS_HS_CRYPTOGRAPHIC, /* a CURVE box did not open: usually the wrong server
                             key */
    BUS_HS_PROTOCOL,      /* another ZMTP or ZAP protocol error */
    BUS_HS_NOT_ZMTP,      /* closed before any handshake: not a ZeroMQ peer (garbage)
                           */
    BUS_HS_INCOMPLETE,    /* the peer left, or the handshake timed out */
    BUS_HS_REASONS
} bus_hs_reason_t;
const char *bus_hs_reason_name(int reason); /* "refused", "not_curve", ... */

typedef struct bus_fds {
    int *fds;
    size_t n, cap;
} bus_fds_t;

typedef struct bus_conns {
    /* figures (since the bus started; connections: now, on the current socket) */
    uint64_t connections; /* peers past the handshake now */
    uint64_t accepted;    /* TCP connections accepted */
    uint64_t handshakes;  /* handshakes succeeded */
    uint64_t failures[BUS_HS_REASONS];
    /* private */
    struct bus *bus;             /* borrowed */
    const char *domain;          /* the socket's ZAP domain (static text), for the log */
    bus_fds_t handshaking;       /* accepted, no handshake outcome yet, oldest first */
    bus_fds_t established;       /* past the handshake */
    unsigned failures_unclosed;  /* failures whose DISCONNECTED has not come yet */
    double incomplete_logged_at; /* ev_tstamp of the last "left during its handshake" line */
    unsigned long incomplete_suppressed;
} bus_conns_t;

/* Watches s, a bus socket of ZAP domain domain (static text), from now on. A
 * re-created socket is watched again: the connections of the old one are
 * forgotten, the totals kept. Call before binding s. */
int bus_conns_watch(bus_conns_t *c, struct bus *bus, const char *domain, ac_zsock_t *s) AC_WUR;
/* Frees the tables (after the socket is destroyed); safe on a zeroed one. */
void bus_conns_clear(bus_conns_t *c);

#endif
