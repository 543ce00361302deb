/* monitor.c — /healthz, /metrics and /v1/stats of the bus (see monitor.h).
 *
 * The figures live where they are counted (bus_t, sources, replay, heartbeat); the
 * metrics render hook and the stats handler read them from there, so the two always
 * agree and nothing is counted twice. */
#include "monitor.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_auth.h"
#include "ac_http.h"
#include "ac_log.h"
#include "ac_metrics.h"
#include "bus.h"
#include "keys.h"
#include "replay.h"
#include "sources.h"
#include "store.h"

#define LABEL_MAX 300

struct bus_monitor {
    bus_t *bus;            /* borrowed */
    ac_metrics_t *metrics; /* owned */
    ac_auth_t *auth;       /* owned; reads through the store's pool */
    ac_http_config_t http_cfg;
    ac_http_t *http; /* owned */
    ev_tstamp started_at;
};

static const char *const DOMAIN_NAMES[BUS_DOMAINS] = {
    [BUS_DOMAIN_INPUT] = BUS_ZAP_INPUT,
    [BUS_DOMAIN_OUTPUT] = BUS_ZAP_OUTPUT,
    [BUS_DOMAIN_REPLAY] = BUS_ZAP_REPLAY,
};
static const char *const SOCKET_NAMES[BUS_DOMAINS] = {
    [BUS_DOMAIN_INPUT] = "input",
    [BUS_DOMAIN_OUTPUT] = "output",
    [BUS_DOMAIN_REPLAY] = "replay",
};

/* name="value" with the value escaped for the Prometheus text format. */
static const char *label(char *out, size_t outlen, const char *name, const char *value)
{
    size_t n = (size_t)snprintf(out, outlen, "%s=\"", name);
    for (const char *v = value; *v && n + 4 < outlen; v++) {
        if (*v == '\\' || *v == '"') {
            out[n++] = '\\';
            out[n++] = *v;
        } else if (*v == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else {
            out[n++] = *v;
        }
    }
    out[n++] = '"';
    out[n] = '\0';
    return out;
}

/* --- /metrics ---------------------------------------------------------------------------- */

static const struct {
    const char *name;
    ac_metric_type_t type;
    const char *help;
} FAMILIES[] = {
    {"forwarded_total", AC_METRIC_COUNTER, "Events forwarded from the input to the output"},
    {"malformed_total", AC_METRIC_COUNTER, "Messages dropped as malformed"},
    {"unauthorised_total", AC_METRIC_COUNTER,
     "Input messages dropped: not a service key, or another source than the key's"},
    {"topics_denied_total", AC_METRIC_COUNTER, "Output subscriptions refused by a key's topics"},
    {"auth_failures_total", AC_METRIC_COUNTER, "CURVE handshakes refused, per ZAP domain"},
    {"output_subscriptions", AC_METRIC_GAUGE, "Subscriptions applied on the output now"},
    {"subscribers", AC_METRIC_GAUGE, "Subscribers connected to the output now"},
    {"connections", AC_METRIC_GAUGE, "Peers connected past the handshake now, per socket"},
    {"connections_accepted_total", AC_METRIC_COUNTER, "TCP connections accepted, per socket"},
    {"handshake_failures_total", AC_METRIC_COUNTER,
     "Handshakes failed, per socket and reason (refused: by the ZAP handler; not_curve, "
     "cryptographic, protocol, not_zmtp, incomplete: before it)"},
    {"keys_loaded", AC_METRIC_GAUGE, "Live bus keys in the cache (0 before the first load)"},
    {"db_up", AC_METRIC_GAUGE, "1 when the bus's database pool has a connection"},
    {"heartbeats_total", AC_METRIC_COUNTER, "bus.heartbeat messages sent"},
    {"replay_requests_total", AC_METRIC_COUNTER, "Replay requests received"},
    {"replay_malformed_total", AC_METRIC_COUNTER, "Replay requests that could not be read"},
    {"replay_completed_total", AC_METRIC_COUNTER, "Replays ended with ReplayEnd"},
    {"replay_errors_total", AC_METRIC_COUNTER, "Replays answered with ReplayError, per code"},
    {"replay_events_total", AC_METRIC_COUNTER, "Events sent by replays"},
    {"replay_peers_gone_total", AC_METRIC_COUNTER, "Replays dropped: the client went away"},
    {"replay_stalled_total", AC_METRIC_COUNTER,
     "Replays dropped: the client did not read for AC_BUS_REPLAY_STALL_S"},
    {"replay_active", AC_METRIC_GAUGE, "Replays running now"},
    {"source_last_sequence", AC_METRIC_GAUGE, "Latest sequence the bus knows was published"},
    {"source_oldest_sequence", AC_METRIC_GAUGE, "Oldest sequence replay can serve (0: none)"},
    {"outbox_last_sequence", AC_METRIC_GAUGE, "The outbox's last assigned sequence"},
    {"outbox_unnumbered", AC_METRIC_GAUGE, "Committed outbox rows not numbered yet"},
    {"outbox_lag", AC_METRIC_GAUGE, "Committed events not yet through the bus"},
};

static void on_render(ac_metrics_t *m, void *arg)
{
    bus_monitor_t *self = arg;
    bus_t *bus = self->bus;
    bus_replay_stats_t rs = {0};
    char lbl[LABEL_MAX];

    for (size_t i = 0; i < bus_sources_ntopics(bus->sources); i++) {
        const bus_topic_stat_t *t = bus_sources_topic(bus->sources, i);
        ac_metrics_set_counter(m, "forwarded_total", label(lbl, sizeof(lbl), "topic", t->topic),
                               (double)t->forwarded);
    }
    ac_metrics_set_counter(m, "malformed_total", NULL, (double)bus->malformed);
    ac_metrics_set_counter(m, "unauthorised_total", NULL, (double)bus->unauthorised);
    ac_metrics_set_counter(m, "topics_denied_total", NULL, (double)bus->topics_denied);
    for (int d = 0; d < BUS_DOMAINS; d++)
        ac_metrics_set_counter(m, "auth_failures_total",
                               label(lbl, sizeof(lbl), "domain", DOMAIN_NAMES[d]),
                               (double)bus->auth_failures[d]);
    ac_metrics_set(m, "subscribers", NULL, (double)bus->conns[BUS_DOMAIN_OUTPUT].connections);
    for (int d = 0; d < BUS_DOMAINS; d++) {
        const bus_conns_t *c = &bus->conns[d];
        char both[2 * LABEL_MAX];
        label(lbl, sizeof(lbl), "socket", SOCKET_NAMES[d]);
        ac_metrics_set(m, "connections", lbl, (double)c->connections);
        ac_metrics_set_counter(m, "connections_accepted_total", lbl, (double)c->accepted);
        for (int r = 0; r < BUS_HS_REASONS; r++) {
            size_t n = (size_t)snprintf(both, sizeof(both), "%s,", lbl);
            label(both + n, sizeof(both) - n, "reason", bus_hs_reason_name(r));
            ac_metrics_set_counter(m, "handshake_failures_total", both, (double)c->failures[r]);
        }
    }
    ac_metrics_set(
        m, "output_subscriptions", NULL,
        bus->subscribes > bus->unsubscribes ? (double)(bus->subscribes - bus->unsubscribes) : 0.);
    ac_metrics_set(m, "keys_loaded", NULL,
                   bus->keys && bus_keys_is_loaded(bus->keys) ? (double)bus_keys_count(bus->keys)
                                                              : 0.);
    ac_metrics_set(m, "db_up", NULL, bus_store_is_up(bus->store) ? 1. : 0.);
    ac_metrics_set_counter(m, "heartbeats_total", NULL, (double)bus->heartbeat.beat);

    if (bus->replay)
        bus_replay_stats(bus->replay, &rs);
    ac_metrics_set_counter(m, "replay_requests_total", NULL, (double)rs.requests);
    ac_metrics_set_counter(m, "replay_malformed_total", NULL, (double)rs.malformed);
    ac_metrics_set_counter(m, "replay_completed_total", NULL, (double)rs.completed);
    ac_metrics_set_counter(m, "replay_events_total", NULL, (double)rs.events);
    ac_metrics_set_counter(m, "replay_peers_gone_total", NULL, (double)rs.peers_gone);
    ac_metrics_set_counter(m, "replay_stalled_total", NULL, (double)rs.stalled);
    ac_metrics_set(m, "replay_active", NULL, (double)rs.active);
    for (int c = 1; c < BUS_REPLAY_CODES; c++)
        ac_metrics_set_counter(m, "replay_errors_total",
                               label(lbl, sizeof(lbl), "code", bus_replay_code_name(c)),
                               (double)rs.errors[c]);

    for (size_t i = 0; i < bus_sources_count(bus->sources); i++) {
        const bus_source_t *s = bus_sources_at(bus->sources, i);
        label(lbl, sizeof(lbl), "source", s->name);
        ac_metrics_set(m, "source_last_sequence", lbl, (double)bus_source_last_sequence(s));
        ac_metrics_set(m, "source_oldest_sequence", lbl,
                       s->has_position ? (double)s->position.oldest_seq : 0.);
        ac_metrics_set(m, "outbox_last_sequence", lbl,
                       s->has_position ? (double)s->position.last_seq : 0.);
        ac_metrics_set(m, "outbox_unnumbered", lbl,
                       s->has_position ? (double)s->position.unnumbered : 0.);
        ac_metrics_set(m, "outbox_lag", lbl, (double)bus_source_lag(s));
    }
}

/* --- /v1/stats ---------------------------------------------------------------------------- */

static json_t *json_u64(uint64_t v)
{
    return json_integer((json_int_t)v);
}

static json_t *stats_doc(bus_monitor_t *self)
{
    bus_t *bus = self->bus;
    bus_replay_stats_t rs = {0};
    json_t *doc = json_object(), *auth = json_object(), *topics = json_array(),
           *sources = json_array(), *replay = json_object(), *errors = json_object(),
           *conns = json_object(), *failures = json_object();

    if (!doc || !auth || !topics || !sources || !replay || !errors || !conns || !failures) {
        json_decref(doc);
        json_decref(auth);
        json_decref(conns);
        json_decref(failures);
        json_decref(topics);
        json_decref(sources);
        json_decref(replay);
        json_decref(errors);
        return NULL;
    }
    json_object_set_new(doc, "bus_instance", json_string(bus->heartbeat.instance));
    json_object_set_new(doc, "uptime_s", json_real(ev_now(bus->loop) - self->started_at));
    json_object_set_new(doc, "heartbeat_beat", json_u64(bus->heartbeat.beat));
    json_object_set_new(doc, "heartbeat_ms", json_integer(bus->cfg->heartbeat_ms));
    json_object_set_new(doc, "db", json_string(bus_store_is_up(bus->store) ? "up" : "down"));
    json_object_set_new(doc, "keys",
                        json_integer(bus->keys && bus_keys_is_loaded(bus->keys)
                                         ? (json_int_t)bus_keys_count(bus->keys)
                                         : 0));
    json_object_set_new(doc, "forwarded", json_u64(bus->forwarded));
    json_object_set_new(doc, "malformed", json_u64(bus->malformed));
    json_object_set_new(doc, "unauthorised", json_u64(bus->unauthorised));
    json_object_set_new(doc, "topics_denied", json_u64(bus->topics_denied));
    json_object_set_new(doc, "subscribes", json_u64(bus->subscribes));
    json_object_set_new(doc, "unsubscribes", json_u64(bus->unsubscribes));
    json_object_set_new(
        doc, "subscriptions",
        json_u64(bus->subscribes > bus->unsubscribes ? bus->subscribes - bus->unsubscribes : 0));
    for (int d = 0; d < BUS_DOMAINS; d++)
        json_object_set_new(auth, DOMAIN_NAMES[d], json_u64(bus->auth_failures[d]));
    json_object_set_new(doc, "auth_failures", auth);
    json_object_set_new(doc, "subscribers", json_u64(bus->conns[BUS_DOMAIN_OUTPUT].connections));
    for (int d = 0; d < BUS_DOMAINS; d++) {
        const bus_conns_t *c = &bus->conns[d];
        json_t *by_reason = json_object();
        for (int r = 0; by_reason && r < BUS_HS_REASONS; r++)
            json_object_set_new(by_reason, bus_hs_reason_name(r), json_u64(c->failures[r]));
        json_object_set_new(conns, SOCKET_NAMES[d], json_u64(c->connections));
        json_object_set_new(failures, SOCKET_NAMES[d], by_reason);
    }
    json_object_set_new(doc, "connections", conns);
    json_object_set_new(doc, "handshake_failures", failures);

    for (size_t i = 0; i < bus_sources_ntopics(bus->sources); i++) {
        const bus_topic_stat_t *t = bus_sources_topic(bus->sources, i);
        json_array_append_new(topics,
                              json_pack("{s:s, s:I, s:f, s:f}", "topic", t->topic, "forwarded",
                                        (json_int_t)t->forwarded, "rate_10s",
                                        bus_sources_topic_rate(bus->sources, t, 10), "rate_60s",
                                        bus_sources_topic_rate(bus->sources, t, 60)));
    }
    json_object_set_new(doc, "topics", topics);

    for (size_t i = 0; i < bus_sources_count(bus->sources); i++) {
        const bus_source_t *s = bus_sources_at(bus->sources, i);
        json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I}", "source", s->name, "schema", s->schema,
                              "last_sequence", (json_int_t)bus_source_last_sequence(s),
                              "forwarded_sequence", (json_int_t)s->forwarded_seq, "outbox_lag",
                              (json_int_t)bus_source_lag(s));
        if (o && s->has_position) {
            json_object_set_new(o, "oldest_sequence", json_u64(s->position.oldest_seq));
            json_object_set_new(o, "outbox_last_sequence", json_u64(s->position.last_seq));
            json_object_set_new(o, "outbox_published_sequence",
                                json_u64(s->position.published_seq));
            json_object_set_new(o, "outbox_unnumbered", json_u64(s->position.unnumbered));
        } else if (o) {
            json_object_set_new(o, "oldest_sequence", json_null());
        }
        json_array_append_new(sources, o);
    }
    json_object_set_new(doc, "sources", sources);

    if (bus->replay)
        bus_replay_stats(bus->replay, &rs);
    json_object_set_new(replay, "requests", json_u64(rs.requests));
    json_object_set_new(replay, "malformed", json_u64(rs.malformed));
    json_object_set_new(replay, "active", json_integer(rs.active));
    json_object_set_new(replay, "completed", json_u64(rs.completed));
    json_object_set_new(replay, "events", json_u64(rs.events));
    json_object_set_new(replay, "peers_gone", json_u64(rs.peers_gone));
    json_object_set_new(replay, "stalled", json_u64(rs.stalled));
    for (int c = 1; c < BUS_REPLAY_CODES; c++)
        json_object_set_new(errors, bus_replay_code_name(c), json_u64(rs.errors[c]));
    json_object_set_new(replay, "errors", errors);
    json_object_set_new(doc, "replay", replay);
    return doc;
}

static void on_stats(ac_http_req_t *req, void *arg)
{
    json_t *doc = stats_doc(arg);
    if (!doc) {
        ac_http_reply_error(req, 500, "internal", NULL, "out of memory");
        return;
    }
    ac_http_reply_json(req, 200, doc);
}

static const ac_http_route_t ROUTES[] = {
    {"GET", "/v1/stats", AC_ROLE_ADMIN, on_stats, "stats"},
    {NULL, NULL, 0, NULL, NULL},
};

/* --- glue --------------------------------------------------------------------------------- */

static int on_authenticate(void *arg, const char *token, ac_principal_t *who_out)
{
    bus_monitor_t *self = arg;
    if (!ac_auth_is_loaded(self->auth))
        return -1; /* 503: a valid token must never be told it is unknown */
    return ac_auth_lookup(self->auth, token, who_out);
}

static int on_health(void *arg, json_t *checks)
{
    bus_monitor_t *self = arg;
    bus_t *bus = self->bus;
    int is_db_up = bus_store_is_up(bus->store);
    int is_keys_loaded = bus->keys && bus_keys_is_loaded(bus->keys);
    int is_auth_loaded = ac_auth_is_loaded(self->auth);
    json_object_set_new(checks, "db", json_string(is_db_up ? "up" : "down"));
    json_object_set_new(checks, "keys", json_string(is_keys_loaded ? "loaded" : "loading"));
    json_object_set_new(checks, "tokens", json_string(is_auth_loaded ? "loaded" : "loading"));
    return is_db_up && is_keys_loaded ? 0 : AC_ERR_UNAVAILABLE;
}

void bus_monitor_on_notify(bus_monitor_t *self, const char *channel, const char *payload)
{
    if (self && self->auth)
        ac_auth_on_notify(self->auth, channel, payload);
}

bus_monitor_t *bus_monitor_new(bus_t *bus)
{
    const bus_config_t *cfg = bus->cfg;
    bus_monitor_t *self = calloc(1, sizeof(*self));
    if (!self) {
        ac_error("monitor: out of memory");
        return NULL;
    }
    self->bus = bus;
    self->started_at = ev_now(bus->loop);
    if (!(self->metrics = ac_metrics_new("aftercare_bus")))
        goto fail;
    for (size_t i = 0; i < AC_ARRAY_LEN(FAMILIES); i++)
        if (ac_metrics_declare(self->metrics, FAMILIES[i].name, FAMILIES[i].type,
                               FAMILIES[i].help) != 0)
            goto fail;
    ac_metrics_on_render(self->metrics, on_render, self);
    if (!(self->auth = ac_auth_new(bus->loop, bus_store_db(bus->store))))
        goto fail;
    self->http_cfg = (ac_http_config_t){
        .bind_addr = cfg->http_addr,
        .port = cfg->http_port,
        .routes = ROUTES,
        .handler_arg = self,
        .authenticate = on_authenticate,
        .auth_arg = self,
        .health = on_health,
        .health_arg = self,
        .metrics = self->metrics,
    };
    if (!(self->http = ac_http_new(bus->loop, &self->http_cfg)))
        goto fail;
    ac_info("bus monitor on http://%s:%d", cfg->http_addr, ac_http_port(self->http));
    return self;
fail:
    bus_monitor_destroy(&self);
    return NULL;
}

void bus_monitor_destroy(bus_monitor_t **self_p)
{
    bus_monitor_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    ac_http_destroy(&self->http);
    ac_auth_destroy(&self->auth);
    ac_metrics_destroy(&self->metrics);
    free(self);
    *self_p = NULL;
}
