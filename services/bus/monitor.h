/* monitor.h — the bus's HTTP server for administrators (AC_BUS_HTTP_ADDR/PORT):
 *   GET /healthz    (no token) the database, the key cache and the token cache
 *   GET /metrics    (no token) Prometheus text, prefix aftercare_bus_
 *   GET /v1/stats   (role admin) the same figures as JSON, plus per-topic rates over the
 *                   last 10 and 60 seconds; `aftercarectl events stats` shows it
 * Tokens are checked against auth.tokens through the bus's store pool (ac_auth).
 *
 * Owns: the HTTP server, the token cache, the metrics registry. */
#ifndef BUS_MONITOR_H
#define BUS_MONITOR_H

struct bus;

typedef struct bus_monitor bus_monitor_t;

/* Reads the figures from bus (its counters, store, sources, replay, heartbeat), which
 * must outlive the monitor. NULL on failure (logged). */
bus_monitor_t *bus_monitor_new(struct bus *bus);
void bus_monitor_destroy(bus_monitor_t **self_p); /* safe on NULL; sets *self_p = NULL */
/* Forward the store pool's notifications here (the token cache reloads on ac_auth). */
void bus_monitor_on_notify(bus_monitor_t *self, const char *channel, const char *payload);

#endif
