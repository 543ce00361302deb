/* conns.c — connections and failed handshakes of the bus sockets (conns.h). */
#include "conns.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_log.h"
#include "bus.h"

#define INCOMPLETE_LOG_S 10.0
#define WATCHED                                                                                    \
    (AC_ZEVENT_ACCEPTED | AC_ZEVENT_DISCONNECTED | AC_ZEVENT_HANDSHAKE_SUCCEEDED |                 \
     AC_ZEVENT_HANDSHAKE_FAILED_NO_DETAIL | AC_ZEVENT_HANDSHAKE_FAILED_PROTOCOL |                  \
     AC_ZEVENT_HANDSHAKE_FAILED_AUTH)

static const char *const REASONS[BUS_HS_REASONS] = {
    [BUS_HS_REFUSED] = "refused",
    [BUS_HS_NOT_CURVE] = "not_curve",
    [BUS_HS_CRYPTOGRAPHIC] = "cryptographic",
    [BUS_HS_PROTOCOL] = "protocol",
    [BUS_HS_NOT_ZMTP] = "not_zmtp",
    [BUS_HS_INCOMPLETE] = "incomplete",
};

const char *bus_hs_reason_name(int reason)
{
    return reason >= 0 && reason < BUS_HS_REASONS ? REASONS[reason] : "?";
}

/* --- fd tables
 * ------------------------------------------------------------------------- */

static void fds_push(bus_fds_t *t, int fd)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        int *grown = realloc(t->fds, cap * sizeof(*grown));
        if (grown == NULL)
            return; /* out of memory: this connection is not tracked (counts stay low)
                     */
        t->fds = grown;
        t->cap = cap;
    }
    t->fds[t->n++] = fd;
}

static void fds_remove_at(bus_fds_t *t, size_t i)
{
    memmove(&t->fds[i], &t->fds[i + 1], (t->n - i - 1) * sizeof(t->fds[0]));
    t->n--;
}

/* 1 when fd was in t (and is no longer). */
static int fds_remove(bus_fds_t *t, int fd)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->fds[i] == fd) {
            fds_remove_at(t, i);
            return 1;
        }
    return 0;
}

static void fds_free(bus_fds_t *t)
{
    free(t->fds);
    memset(t, 0, sizeof(*t));
}

/* The oldest connection in its handshake is now past it. */
static void promote_oldest(bus_conns_t *c)
{
    if (c->handshaking.n == 0)
        return;
    fds_push(&c->established, c->handshaking.fds[0]);
    fds_remove_at(&c->handshaking, 0);
}

/* --- events
 * ----------------------------------------------------------------------------
 */

static void failed(bus_conns_t *c, bus_hs_reason_t reason, const char *why)
{
    c->failures[reason]++;
    if (reason != BUS_HS_REFUSED) /* zap.c has logged it, with the key */
        bus_zap_log_refusal(c->bus->zap, c->domain, "", "", why);
}

/* A peer that left (or went quiet) during its handshake: a TCP port check, a client that
 * gave up; not a refusal, so logged as information, at most every INCOMPLETE_LOG_S. */
static void incomplete(bus_conns_t *c, uint32_t err)
{
    ev_tstamp now = ev_now(c->bus->loop);
    c->failures[BUS_HS_INCOMPLETE]++;
    if (c->incomplete_logged_at > 0 && now - c->incomplete_logged_at < INCOMPLETE_LOG_S) {
        c->incomplete_suppressed++;
        return;
    }
    ac_info("%s: a peer left during its handshake (%s)%s", c->domain, strerror((int)err),
            c->incomplete_suppressed ? "; and others since the last such line" : "");
    c->incomplete_logged_at = now;
    c->incomplete_suppressed = 0;
}

static void on_failure(bus_conns_t *c, int event, uint32_t value)
{
    char why[96];
    c->failures_unclosed++;
    if (event == AC_ZEVENT_HANDSHAKE_FAILED_AUTH) {
        failed(c, BUS_HS_REFUSED, "");
    } else if (event == AC_ZEVENT_HANDSHAKE_FAILED_NO_DETAIL) {
        incomplete(c, value);
    } else if (value == AC_ZPROTO_ZMTP_MECHANISM_MISMATCH) {
        failed(c, BUS_HS_NOT_CURVE, "handshake failed: the client does not use CURVE");
    } else if (value == AC_ZPROTO_ZMTP_CRYPTOGRAPHIC) {
        failed(c, BUS_HS_CRYPTOGRAPHIC,
               "handshake failed: CURVE boxes do not open (wrong server key?)");
    } else {
        snprintf(why, sizeof(why), "handshake failed: %s protocol error 0x%08x",
                 value >= AC_ZPROTO_ZAP_FIRST ? "ZAP" : "ZMTP", (unsigned)value);
        failed(c, BUS_HS_PROTOCOL, why);
    }
}

static void on_disconnected(bus_conns_t *c, int fd)
{
    if (c->failures_unclosed > 0) {
        /* a failed handshake's connection closes right after the failure: this one
         */
        c->failures_unclosed--;
        if (!fds_remove(&c->handshaking, fd) && fds_remove(&c->established, fd))
            promote_oldest(c); /* it was taken for the one that succeeded meanwhile */
    } else if (!fds_remove(&c->established, fd) && fds_remove(&c->handshaking, fd)) {
        failed(c, BUS_HS_NOT_ZMTP, "connection closed before a handshake: not a ZeroMQ peer");
    }
}

static void on_conn_event(void *arg, int event, uint32_t value, const char *endpoint)
{
    bus_conns_t *c = arg;
    ac_debug("%s: connection event 0x%x, value %u (%s)", c->domain, (unsigned)event,
             (unsigned)value, endpoint);
    switch (event) {
    case AC_ZEVENT_ACCEPTED:
        c->accepted++;
        fds_push(&c->handshaking, (int)value);
        break;
    case AC_ZEVENT_HANDSHAKE_SUCCEEDED:
        c->handshakes++;
        promote_oldest(c);
        break;
    case AC_ZEVENT_HANDSHAKE_FAILED_NO_DETAIL:
    case AC_ZEVENT_HANDSHAKE_FAILED_PROTOCOL:
    case AC_ZEVENT_HANDSHAKE_FAILED_AUTH:
        on_failure(c, event, value);
        break;
    case AC_ZEVENT_DISCONNECTED:
        on_disconnected(c, (int)value);
        break;
    default:
        break;
    }
    c->connections = c->established.n;
}

int bus_conns_watch(bus_conns_t *c, struct bus *bus, const char *domain, ac_zsock_t *s)
{
    c->bus = bus;
    c->domain = domain;
    c->handshaking.n = 0;
    c->established.n = 0;
    c->failures_unclosed = 0;
    c->connections = 0;
    return ac_zsock_monitor(s, WATCHED, on_conn_event, c);
}

void bus_conns_clear(bus_conns_t *c)
{
    fds_free(&c->handshaking);
    fds_free(&c->established);
    c->connections = 0;
}
