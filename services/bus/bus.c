/* bus.c — forwarding and checking (see bus.h). */
#include "bus.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_event.h"
#include "ac_log.h"

#define FORWARD_BATCH   1024
#define HEARTBEAT_TOPIC "bus.heartbeat" /* every key may see it */
#define REBIND_S        0.1             /* retry of a re-created output's bind */

/* topics only the bus itself publishes (bus.heartbeat); refused on the input */
#define BUS_RESERVED_PREFIX "bus."

/* A key let into the output, with the widest topics it has had since (see
 * bus_output_key_seen and seen_key_widen). */
typedef struct bus_seen_key {
    char public_key[AC_KEY_Z85_LEN + 1];
    char **topics; /* owned copies; ntopics == 0 means every topic */
    size_t ntopics;
} bus_seen_key_t;

/* A message is forwarded only when it is [topic][envelope] and the topic is the one the
 * envelope's type implies, so subscribers' prefix filters can be trusted. The envelope is
 * not decoded: its top level is walked (ac_event_peek(): well-formed fields, header fields
 * of the right wire types) for its source, type and sequence; the payload is passed on
 * unread. The source is copied to source for the publisher check, the sequence to
 * *sequence and the topic to topic (AC_TOPIC_MAX) for the source positions. */
static const char *check_message(const ac_frames_t *f, char *source, size_t source_len,
                                 uint64_t *sequence, char *topic)
{
    char type[AC_TOPIC_MAX + 20], derived[AC_TOPIC_MAX];
    ac_event_peek_t env;

    if (f->n != 2)
        return "not two frames";
    if (f->len[0] == 0 || f->len[0] >= AC_TOPIC_MAX || memchr(f->data[0], 0, f->len[0]))
        return "bad topic frame";
    memcpy(topic, f->data[0], f->len[0]);
    topic[f->len[0]] = '\0';
    if (ac_event_peek(f->data[1], f->len[1], &env) != 0)
        return "envelope does not decode";
    if (env.type_len >= sizeof(type) || memchr(env.type, 0, env.type_len))
        return "envelope type is not aftercare.<topic>.v<n>";
    memcpy(type, env.type, env.type_len);
    type[env.type_len] = '\0';
    if (ac_event_topic_from_type(type, derived, sizeof(derived)) != 0)
        return "envelope type is not aftercare.<topic>.v<n>";
    if (strcmp(derived, topic) != 0)
        return "topic does not match the envelope type";
    if (env.sequence == 0 || env.source_len == 0)
        return "envelope has no source or sequence";
    if (env.source_len >= source_len || memchr(env.source, 0, env.source_len))
        return "envelope source is too long or has a NUL byte";
    memcpy(source, env.source, env.source_len);
    source[env.source_len] = '\0';
    *sequence = env.sequence;
    return NULL;
}

/* Only a live service key may publish, and only envelopes of its own source: NULL when
 * the message may go on, else why not (the message is dropped as unauthorised). */
static const char *check_publisher(bus_t *self, const ac_frames_t *f, const char *source, char *why,
                                   size_t whylen)
{
    const bus_key_t *k = bus_keys_find(self->keys, f->user_id);
    if (k == NULL)
        snprintf(why, whylen, "%s", f->user_id[0] ? "key revoked" : "no CURVE key");
    else if (!k->is_service)
        snprintf(why, whylen, "key \"%s\" is not a service key", k->name);
    else if (strcmp(source, k->source) != 0)
        snprintf(why, whylen, "envelope source \"%.64s\" is not %s, the source of key \"%s\"",
                 source, k->source, k->name);
    else
        return NULL;
    return why;
}

/* What input_check() learnt of the message it let through. */
typedef struct input_check {
    bus_t *self;
    uint64_t sequence;
    char source[AC_TOPIC_MAX];
    char topic[AC_TOPIC_MAX];
    size_t batch_events; /* events of a batch message (forwarded one by one), else 0 */
} input_check_t;

/* 1 when the event f ([topic][envelope]) may go to the output, else 0 (counted, logged). */
static int input_event_ok(input_check_t *c, const ac_frames_t *f)
{
    bus_t *self = c->self;
    char denied[256];
    const char *why = check_message(f, c->source, sizeof(c->source), &c->sequence, c->topic);
    if (!why && strncmp(c->topic, BUS_RESERVED_PREFIX, strlen(BUS_RESERVED_PREFIX)) == 0) {
        /* bus.* (bus.heartbeat: every key may see it) is the bus's own: nobody forges it */
        self->unauthorised++;
        snprintf(denied, sizeof(denied), "topic \"%.64s\" is reserved for the bus", c->topic);
        bus_zap_log_refusal(self->zap, BUS_ZAP_INPUT, f->user_id, "", denied);
        return 0;
    }
    if (!why && check_publisher(self, f, c->source, denied, sizeof(denied))) {
        self->unauthorised++;
        bus_zap_log_refusal(self->zap, BUS_ZAP_INPUT, f->user_id, "", denied);
        return 0;
    }
    if (why) {
        self->malformed++;
        ac_warn("dropped a message from the input (%zu frames, %zu bytes first): %s", f->n,
                f->n ? f->len[0] : 0, why);
        return 0;
    }
    return 1;
}

/* A relay's batch (ac_bus.h): each event is checked as if it came alone and forwarded as
 * [topic][envelope] (copied: the batch is one ZeroMQ buffer). A batch that is not whole
 * records is dropped whole, like any malformed message; one from a key that may not
 * publish is refused whole. */
static void input_batch(input_check_t *c, const ac_frames_t *f)
{
    bus_t *self = c->self;
    const bus_key_t *k = bus_keys_find(self->keys, f->user_id);
    const uint8_t *topic, *envelope;
    size_t off = 0, tlen, elen, n = 0;
    ac_frames_t ev;
    int rc;

    if (k == NULL || !k->is_service) {
        char denied[128];
        self->unauthorised++;
        snprintf(denied, sizeof(denied), "a batch from %s",
                 k ? "a key that is not a service key" : "no live key");
        bus_zap_log_refusal(self->zap, BUS_ZAP_INPUT, f->user_id, "", denied);
        return;
    }
    while ((rc = ac_bus_batch_next(f->data[1], f->len[1], &off, &topic, &tlen, &envelope, &elen)) ==
           1)
        n++;
    if (rc != 0 || n == 0) {
        self->malformed++;
        ac_warn("dropped a batch from the input (%zu bytes): %s", f->len[1],
                n == 0 && rc == 0 ? "no events" : "not whole records");
        return;
    }
    c->batch_events = n;
    memset(&ev, 0, offsetof(ac_frames_t, len));
    memcpy(ev.user_id, f->user_id, sizeof(ev.user_id));
    ev.n = 2;
    off = 0;
    while (ac_bus_batch_next(f->data[1], f->len[1], &off, &topic, &tlen, &envelope, &elen) == 1) {
        const void *data[2] = {topic, envelope};
        size_t lens[2] = {tlen, elen};
        ev.data[0] = (uint8_t *)(uintptr_t)topic; /* read only: ac_frames_t is not const */
        ev.len[0] = tlen;
        ev.data[1] = (uint8_t *)(uintptr_t)envelope;
        ev.len[1] = elen;
        if (!input_event_ok(c, &ev))
            continue;
        /* XPUB never blocks: a subscriber whose queue is full misses the event */
        if (ac_zsock_send(self->output, data, lens, 2) != 0)
            continue;
        self->forwarded++;
        if (self->on_forwarded)
            self->on_forwarded(self->forwarded_arg, c->source, c->sequence, c->topic);
    }
}

/* ac_zsock_forward()'s check: 1 forwards the message as it is (no copy), 0 drops it (a
 * batch: its events were forwarded one by one). */
static int input_check(const ac_frames_t *f, void *arg)
{
    input_check_t *c = arg;
    c->batch_events = 0;
    if (f->n == 2 && f->len[0] == strlen(AC_BUS_BATCH_TOPIC) &&
        memcmp(f->data[0], AC_BUS_BATCH_TOPIC, f->len[0]) == 0) {
        input_batch(c, f);
        return 0;
    }
    return input_event_ok(c, f);
}

static void on_input(ac_zsock_t *s, void *arg)
{
    bus_t *self = arg;
    input_check_t c;
    c.self = self;
    /* FORWARD_BATCH events (a batch message counts its events), then the loop's other
     * watchers (heartbeats, replay) get their turn */
    for (size_t done = 0; done < FORWARD_BATCH;) {
        int forwarded = 0, rc;
        c.batch_events = 0;
        /* XPUB never blocks: a subscriber whose queue is full misses the message */
        rc = ac_zsock_forward(s, self->output, input_check, &c, &forwarded, NULL);
        done += rc == 0 && c.batch_events > 0 ? c.batch_events : 1;
        if (rc == AC_ERR_AGAIN)
            break;
        if (rc != 0 || !forwarded)
            continue;
        self->forwarded++;
        if (self->on_forwarded)
            self->on_forwarded(self->forwarded_arg, c.source, c.sequence, c.topic);
    }
}

/* XPUB_MANUAL: (un)subscribes the peer that sent the last subscription message. */
static int output_filter(bus_t *self, int is_sub, const char *prefix)
{
    return is_sub ? ac_zsock_subscribe(self->output, prefix)
                  : ac_zsock_unsubscribe(self->output, prefix);
}

/* Applies a peer's (un)subscription to prefix intersected with what its key may see:
 * the prefix itself when an allowed prefix covers it, else each allowed prefix (and
 * bus.heartbeat) that the prefix covers. Returns the number of filters applied. */
static int apply_subscription(bus_t *self, const bus_key_t *k, int is_sub, const char *prefix)
{
    size_t plen = strlen(prefix);
    int applied = 0;
    if (bus_key_allows_topic(k, prefix) ||
        strncmp(prefix, HEARTBEAT_TOPIC, strlen(HEARTBEAT_TOPIC)) == 0)
        return output_filter(self, is_sub, prefix) == 0;
    for (size_t i = 0; i < k->ntopics; i++)
        if (strncmp(k->topics[i], prefix, plen) == 0)
            applied += output_filter(self, is_sub, k->topics[i]) == 0;
    if (strncmp(HEARTBEAT_TOPIC, prefix, plen) == 0)
        applied += output_filter(self, is_sub, HEARTBEAT_TOPIC) == 0;
    return applied;
}

static void on_output(ac_zsock_t *s, void *arg)
{
    bus_t *self = arg;
    for (int i = 0; i < FORWARD_BATCH; i++) {
        ac_frames_t f;
        if (ac_zsock_recv(s, &f) != 0)
            break;
        if (f.n == 1 && f.len[0] >= 1 && (f.data[0][0] == 0 || f.data[0][0] == 1)) {
            int is_sub = f.data[0][0] == 1;
            const char *prefix = (const char *)f.data[0] + 1;
            const bus_key_t *k;
            if (is_sub)
                self->subscribes++;
            else
                self->unsubscribes++;
            ac_debug("%s \"%.*s\" by %s", is_sub ? "subscribe" : "unsubscribe", (int)f.len[0] - 1,
                     prefix, f.user_id[0] ? f.user_id : "(gone)");
            if (f.user_id[0] == '\0') {
                /* libzmq's own unsubscription for a peer that went away: already applied */
            } else if (strlen(prefix) != f.len[0] - 1) {
                self->malformed++;
                ac_warn("output: key %s sent a subscription with a NUL byte; ignored", f.user_id);
            } else if ((k = bus_keys_find(self->keys, f.user_id)) == NULL) {
                /* revoked since it connected: the output is being re-created for it */
                if (is_sub)
                    self->topics_denied++;
            } else if (apply_subscription(self, k, is_sub, prefix) == 0 && is_sub) {
                self->topics_denied++;
                ac_info("output: key \"%s\" may not see \"%s\"; subscription refused", k->name,
                        prefix);
            }
        } else {
            self->malformed++;
            ac_debug("output: ignored a message that is not a subscription (%zu frames) from %s",
                     f.n, f.user_id[0] ? f.user_id : "(unknown)");
        }
        ac_frames_clear(&f);
    }
}

/* --- the output socket and who has been let into it -------------------------------------- */

static void seen_keys_clear(bus_t *self)
{
    for (size_t i = 0; i < self->noutput_keys; i++) {
        for (size_t j = 0; j < self->output_keys[i].ntopics; j++)
            free(self->output_keys[i].topics[j]);
        free(self->output_keys[i].topics);
    }
    free(self->output_keys);
    self->output_keys = NULL;
    self->noutput_keys = 0;
}

static void seen_key_every_topic(bus_seen_key_t *e)
{
    for (size_t j = 0; j < e->ntopics; j++)
        free(e->topics[j]);
    free(e->topics);
    e->topics = NULL;
    e->ntopics = 0;
}

/* Adds to e the topics of k it does not cover yet, so that e is the widest set the key
 * has had since the output was created: a key widened, subscribed, then narrowed back
 * has lost rights (its subscriptions were applied under the wider set). Out of memory:
 * every topic, so that any narrowing counts. */
static void seen_key_widen(bus_seen_key_t *e, const bus_key_t *k)
{
    if (e->ntopics == 0)
        return; /* every topic already */
    if (k->ntopics == 0) {
        seen_key_every_topic(e);
        return;
    }
    for (size_t i = 0; i < k->ntopics; i++) {
        int covered = 0;
        char **grown;
        for (size_t j = 0; j < e->ntopics && !covered; j++)
            covered = strncmp(k->topics[i], e->topics[j], strlen(e->topics[j])) == 0;
        if (covered)
            continue;
        grown = realloc(e->topics, (e->ntopics + 1) * sizeof(*grown));
        if (grown != NULL)
            e->topics = grown;
        if (grown == NULL || (e->topics[e->ntopics] = strdup(k->topics[i])) == NULL) {
            ac_error("out of memory: key %s now counts as seeing every topic", e->public_key);
            seen_key_every_topic(e);
            return;
        }
        e->ntopics++;
    }
}

void bus_output_key_seen(bus_t *self, const bus_key_t *k)
{
    bus_seen_key_t *grown, *e;
    for (size_t i = 0; i < self->noutput_keys; i++) {
        if (strcmp(self->output_keys[i].public_key, k->public_key) == 0) {
            seen_key_widen(&self->output_keys[i], k);
            return;
        }
    }
    grown = realloc(self->output_keys, (self->noutput_keys + 1) * sizeof(*grown));
    if (grown == NULL) {
        ac_error("out of memory: a later revocation of key %s may not cut it off", k->public_key);
        return;
    }
    self->output_keys = grown;
    e = &grown[self->noutput_keys++];
    memset(e, 0, sizeof(*e));
    snprintf(e->public_key, sizeof(e->public_key), "%s", k->public_key);
    if (k->ntopics == 0)
        return;
    char **topics = calloc(k->ntopics, sizeof(*topics));
    size_t n = 0;
    while (topics != NULL && n < k->ntopics && (topics[n] = strdup(k->topics[n])) != NULL)
        n++;
    if (topics != NULL && n == k->ntopics) {
        e->topics = topics;
        e->ntopics = n;
        return;
    }
    /* out of memory: remember it as seeing every topic, so that any narrowing counts */
    for (size_t j = 0; topics != NULL && j < n; j++)
        free(topics[j]);
    free(topics);
}

/* 1 when key seen then may now see less: revoked, or one of its old topics is no longer
 * covered by its new ones. */
static int seen_key_lost_rights(const bus_seen_key_t *seen, const bus_key_t *now)
{
    if (now == NULL)
        return 1;
    if (seen->ntopics == 0)
        return now->ntopics > 0;
    for (size_t i = 0; i < seen->ntopics; i++)
        if (!bus_key_allows_topic(now, seen->topics[i]))
            return 1;
    return 0;
}

static int output_open(bus_t *self)
{
    ac_zsock_t *s = ac_zsock_new(self->loop, AC_ZSOCK_XPUB);
    if (!s)
        return AC_ERR_IO;
    if (ac_zsock_set_affinity(s, BUS_IO_AFFINITY(self->cfg, BUS_DOMAIN_OUTPUT)) ||
        ac_zsock_set_hwm(s, (int)self->cfg->hwm, 1000) || ac_zsock_set_xpub_manual(s, 1) ||
        ac_zsock_set_curve_server(s, &self->curve, BUS_ZAP_OUTPUT) ||
        bus_conns_watch(&self->conns[BUS_DOMAIN_OUTPUT], self, BUS_ZAP_OUTPUT, s)) {
        ac_zsock_destroy(&s);
        return AC_ERR_IO;
    }
    ac_zsock_on_readable(s, on_output, self);
    self->output = s;
    return 0;
}

static void on_output_rebind(struct ev_loop *loop, ev_timer *w, int revents)
{
    bus_t *self = ac_container_of(w, bus_t, output_rebind);
    if (ac_zsock_bind(self->output, self->cfg->output_bind) != 0)
        return; /* logged; the timer repeats */
    ev_timer_stop(loop, w);
    ac_info("output %s open again", self->cfg->output_bind);
}

/* Closes the output, so every subscriber must authenticate again, and opens a new one.
 * Until the new one is bound (the old port may be busy for a moment) it has no peers, so
 * what is forwarded meanwhile reaches nobody; subscribers repair that gap by replay. */
static void output_recreate(bus_t *self, const char *why)
{
    ac_zsock_t *old = self->output;
    self->output = NULL;
    if (output_open(self) != 0) {
        ac_error("cannot re-create the output (%s); keeping the old one", why);
        self->output = old;
        return;
    }
    ac_zsock_destroy(&old);
    seen_keys_clear(self);
    self->output_recreated++;
    ac_warn("output re-created: %s; every subscriber reconnects and authenticates again", why);
    ev_timer_stop(self->loop, &self->output_rebind);
    ev_timer_set(&self->output_rebind, REBIND_S, REBIND_S); /* the old listener closes first */
    ev_timer_start(self->loop, &self->output_rebind);
}

/* The keys were reloaded: a key let into the output that has lost rights must go. */
static void on_keys_changed(void *arg)
{
    bus_t *self = arg;
    bus_zap_keys_loaded(self->zap);
    for (size_t i = 0; i < self->noutput_keys; i++) {
        const bus_seen_key_t *seen = &self->output_keys[i];
        const bus_key_t *now = bus_keys_find(self->keys, seen->public_key);
        if (seen_key_lost_rights(seen, now)) {
            char why[128];
            snprintf(why, sizeof(why), "key %s was %s", seen->public_key,
                     now == NULL ? "revoked" : "narrowed");
            output_recreate(self, why);
            return;
        }
    }
    /* nobody lost rights: remember widenings, so that narrowing back counts later */
    for (size_t i = 0; i < self->noutput_keys; i++) {
        const bus_key_t *now = bus_keys_find(self->keys, self->output_keys[i].public_key);
        if (now != NULL)
            seen_key_widen(&self->output_keys[i], now);
    }
}

static void on_stats(struct ev_loop *loop, ev_timer *w, int revents)
{
    bus_t *self = ac_container_of(w, bus_t, stats);
    ac_info("forwarded=%llu malformed=%llu subscribes=%llu unsubscribes=%llu",
            (unsigned long long)self->forwarded, (unsigned long long)self->malformed,
            (unsigned long long)self->subscribes, (unsigned long long)self->unsubscribes);
    ac_info("auth failures input=%llu output=%llu replay=%llu, unauthorised=%llu "
            "topics_denied=%llu output_recreated=%llu",
            (unsigned long long)self->auth_failures[BUS_DOMAIN_INPUT],
            (unsigned long long)self->auth_failures[BUS_DOMAIN_OUTPUT],
            (unsigned long long)self->auth_failures[BUS_DOMAIN_REPLAY],
            (unsigned long long)self->unauthorised, (unsigned long long)self->topics_denied,
            (unsigned long long)self->output_recreated);
    ac_info("connected now: input=%llu output (subscribers)=%llu replay=%llu",
            (unsigned long long)self->conns[BUS_DOMAIN_INPUT].connections,
            (unsigned long long)self->conns[BUS_DOMAIN_OUTPUT].connections,
            (unsigned long long)self->conns[BUS_DOMAIN_REPLAY].connections);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    ac_info("signal %d: stopping", w->signum);
    ev_break(loop, EVBREAK_ALL);
}

int bus_setup(bus_t *self, struct ev_loop *loop, const bus_config_t *cfg)
{
    memset(self, 0, sizeof(*self));
    self->loop = loop;
    self->cfg = cfg;
    ev_timer_init(&self->output_rebind, on_output_rebind, 0., REBIND_S);
    {
        char err[512];
        if (ac_curve_load(cfg->secret_key_file, NULL, &self->curve, err, sizeof(err)) != 0) {
            ac_error("%s", err);
            return AC_ERR_CONFIG;
        }
    }
    /* the ZAP handler first: a CURVE socket bound before it would let every key in */
    self->keys = bus_keys_new(loop, cfg->db, on_keys_changed, self);
    if (!self->keys || !(self->zap = bus_zap_new(self)))
        return AC_ERR_IO;
    self->input = ac_zsock_new(loop, AC_ZSOCK_XSUB);
    if (!self->input || output_open(self) != 0 ||
        bus_conns_watch(&self->conns[BUS_DOMAIN_INPUT], self, BUS_ZAP_INPUT, self->input))
        return AC_ERR_IO;
    if (ac_zsock_set_affinity(self->input, BUS_IO_AFFINITY(cfg, BUS_DOMAIN_INPUT)) ||
        ac_zsock_set_hwm(self->input, 1000, (int)cfg->hwm) ||
        ac_zsock_set_maxmsgsize(self->input, cfg->max_msg) ||
        ac_zsock_set_curve_server(self->input, &self->curve, BUS_ZAP_INPUT) ||
        ac_zsock_bind(self->input, cfg->input_bind) ||
        ac_zsock_bind(self->output, cfg->output_bind))
        return AC_ERR_IO;
    /* everything published reaches the bus; the output filters per subscriber */
    if (ac_zsock_subscribe(self->input, ""))
        return AC_ERR_IO;
    ac_zsock_on_readable(self->input, on_input, self);

    ev_signal_init(&self->sigint, on_signal, SIGINT);
    ev_signal_init(&self->sigterm, on_signal, SIGTERM);
    ev_signal_start(loop, &self->sigint);
    ev_signal_start(loop, &self->sigterm);
    ev_timer_init(&self->stats, on_stats, 60., 60.);
    ev_timer_start(loop, &self->stats);
    ac_info("bus input %s, output %s", cfg->input_bind, cfg->output_bind);
    return 0;
}

void bus_teardown(bus_t *self)
{
    ev_timer_stop(self->loop, &self->stats);
    ev_signal_stop(self->loop, &self->sigint);
    ev_signal_stop(self->loop, &self->sigterm);
    ev_timer_stop(self->loop, &self->output_rebind);
    ac_zsock_destroy(&self->output);
    ac_zsock_destroy(&self->input);
    for (int d = 0; d < BUS_DOMAINS; d++)
        bus_conns_clear(&self->conns[d]); /* after every socket (replay: history_teardown) */
    seen_keys_clear(self);
    bus_zap_destroy(&self->zap); /* after every CURVE socket */
    bus_keys_destroy(&self->keys);
}
