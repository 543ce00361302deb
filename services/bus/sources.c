/* sources.c — source positions and topic rates (see sources.h). */
#include "sources.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_log.h"

#define REFRESH_S       2.0  /* outbox positions are read this often */
#define REFRESH_FIRST_S 0.25 /* ... and this often until each was read once */
#define SAMPLE_S        1.0  /* topic counts are sampled this often */
#define OTHER_TOPIC     "(other)"

struct bus_sources {
    struct ev_loop *loop; /* borrowed */
    bus_store_t *store;   /* borrowed between start and stop */
    bus_source_t sources[BUS_SOURCES_MAX];
    const char *schemas[BUS_SOURCES_MAX];
    size_t n;
    ev_timer refresh;         /* reads every outbox position */
    ev_timer sample;          /* samples the topic counts */
    bus_topic_stat_t *topics; /* owned, BUS_TOPICS_MAX + 1 ("(other)" last when used) */
    size_t ntopics;
    size_t last_topic; /* index of the last topic hit (events come in runs) */
    uint64_t ticks;    /* samples taken */
    ev_tstamp tick_at[BUS_RATE_SAMPLES];
};

/* --- parsing ---------------------------------------------------------------------------- */

static int source_name_is_valid(const char *s, size_t n)
{
    static const char prefix[] = "aftercare/";
    size_t p = sizeof(prefix) - 1;
    if (n <= p || n >= BUS_SOURCE_NAME_MAX || n - p > 32 || strncmp(s, prefix, p) != 0)
        return 0;
    if (!(s[p] >= 'a' && s[p] <= 'z'))
        return 0;
    for (size_t i = p + 1; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return 0;
    return 1;
}

static int schema_is_valid(const char *s, size_t n)
{
    if (n == 0 || n >= BUS_SCHEMA_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || s[i] == '_' || (i > 0 && s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

static int parse_spec(bus_sources_t *self, const char *spec, char *err, size_t errlen)
{
    const char *p = spec;
    while (*p) {
        const char *end = strchr(p, ',');
        const char *eq;
        size_t len = end ? (size_t)(end - p) : strlen(p);
        size_t nlen, slen;
        bus_source_t *s;

        while (len > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        eq = memchr(p, '=', len);
        if (!eq) {
            snprintf(err, errlen, "AC_BUS_SOURCES: \"%.*s\" is not source=schema", (int)len, p);
            return AC_ERR_CONFIG;
        }
        nlen = (size_t)(eq - p);
        slen = len - nlen - 1;
        if (!source_name_is_valid(p, nlen)) {
            snprintf(err, errlen,
                     "AC_BUS_SOURCES: \"%.*s\" is not a source name (aftercare/<service>, "
                     "lower case letters, digits and '-')",
                     (int)nlen, p);
            return AC_ERR_CONFIG;
        }
        if (!schema_is_valid(eq + 1, slen)) {
            snprintf(err, errlen,
                     "AC_BUS_SOURCES: \"%.*s\" is not a schema name (lower case letters, digits "
                     "and '_', at most %d characters)",
                     (int)slen, eq + 1, BUS_SCHEMA_MAX - 1);
            return AC_ERR_CONFIG;
        }
        if (self->n == BUS_SOURCES_MAX) {
            snprintf(err, errlen, "AC_BUS_SOURCES: more than %d sources", BUS_SOURCES_MAX);
            return AC_ERR_CONFIG;
        }
        s = &self->sources[self->n];
        memcpy(s->name, p, nlen);
        s->name[nlen] = '\0';
        memcpy(s->schema, eq + 1, slen);
        s->schema[slen] = '\0';
        for (size_t i = 0; i < self->n; i++) {
            if (strcmp(self->sources[i].name, s->name) == 0 ||
                strcmp(self->sources[i].schema, s->schema) == 0) {
                snprintf(err, errlen, "AC_BUS_SOURCES: \"%s=%s\" repeats a source or a schema",
                         s->name, s->schema);
                return AC_ERR_CONFIG;
            }
        }
        s->owner = self;
        self->schemas[self->n] = s->schema;
        self->n++;
        if (!end)
            break;
        p = end + 1;
    }
    if (self->n == 0) {
        snprintf(err, errlen, "AC_BUS_SOURCES is empty (source=schema,...)");
        return AC_ERR_CONFIG;
    }
    return 0;
}

/* --- refreshing positions -------------------------------------------------------------- */

static void on_position(bus_store_call_t *call, int err)
{
    bus_source_t *s = ac_container_of(call, bus_source_t, refresh);
    if (err != 0) {
        if (!s->is_failing) /* once per outage; the next refresh tries again */
            ac_warn("source %s: cannot read %s.outbox: %s", s->name, s->schema, call->error);
        s->is_failing = 1;
        return;
    }
    if (s->is_failing)
        ac_info("source %s: %s.outbox readable again", s->name, s->schema);
    s->is_failing = 0;
    s->position = call->position;
    if (!s->has_position) {
        s->has_position = 1;
        s->start_seq = call->position.last_seq;
        ac_info("source %s: outbox %s.outbox at sequence %llu (oldest %llu)", s->name, s->schema,
                (unsigned long long)s->position.last_seq,
                (unsigned long long)s->position.oldest_seq);
    }
}

static void on_refresh(struct ev_loop *loop, ev_timer *w, int revents)
{
    bus_sources_t *self = ac_container_of(w, bus_sources_t, refresh);
    int is_complete = 1;
    for (size_t i = 0; i < self->n; i++) {
        bus_source_t *s = &self->sources[i];
        is_complete &= s->has_position;
        if (s->refresh.txn)
            continue; /* still waiting for the previous one */
        s->refresh.done = on_position;
        if (bus_store_read_position(self->store, &s->refresh, i) != 0)
            break; /* the database is down: try again at the next tick */
    }
    /* until every position is known (the database may still be coming up), look often */
    w->repeat = is_complete ? REFRESH_S : REFRESH_FIRST_S;
    ev_timer_again(loop, w);
}

/* --- topic rates ------------------------------------------------------------------------- */

static void on_sample(struct ev_loop *loop, ev_timer *w, int revents)
{
    bus_sources_t *self = ac_container_of(w, bus_sources_t, sample);
    size_t slot = (size_t)(self->ticks % BUS_RATE_SAMPLES);
    for (size_t i = 0; i < self->ntopics; i++)
        self->topics[i].samples[slot] = self->topics[i].forwarded;
    self->tick_at[slot] = ev_now(loop);
    self->ticks++;
}

static bus_topic_stat_t *topic_get(bus_sources_t *self, const char *topic)
{
    bus_topic_stat_t *t;
    if (self->last_topic < self->ntopics &&
        strcmp(self->topics[self->last_topic].topic, topic) == 0)
        return &self->topics[self->last_topic];
    for (size_t i = 0; i < self->ntopics; i++) {
        if (strcmp(self->topics[i].topic, topic) == 0) {
            self->last_topic = i;
            return &self->topics[i];
        }
    }
    if (self->ntopics >= BUS_TOPICS_MAX) {
        /* so many topics means something is wrong; count the rest together */
        topic = OTHER_TOPIC;
        for (size_t i = 0; i < self->ntopics; i++)
            if (strcmp(self->topics[i].topic, topic) == 0)
                return &self->topics[i];
    }
    t = &self->topics[self->ntopics];
    memset(t, 0, sizeof(*t));
    snprintf(t->topic, sizeof(t->topic), "%s", topic);
    self->last_topic = self->ntopics++;
    return t;
}

void bus_sources_on_forwarded(bus_sources_t *self, const char *source, uint64_t sequence,
                              const char *topic)
{
    int i = bus_sources_find(self, source);
    if (i >= 0 && sequence > self->sources[i].forwarded_seq)
        self->sources[i].forwarded_seq = sequence;
    /* beyond the outbox position last read (bus_source_last_sequence() caps at it): read it
     * again soon rather than in up to REFRESH_S (at most once per REFRESH_FIRST_S) */
    if (i >= 0 && self->sources[i].has_position && sequence > self->sources[i].position.last_seq &&
        ev_is_active(&self->refresh) &&
        ev_timer_remaining(self->loop, &self->refresh) > REFRESH_FIRST_S) {
        self->refresh.repeat = REFRESH_FIRST_S;
        ev_timer_again(self->loop, &self->refresh);
    }
    topic_get(self, topic)->forwarded++;
}

double bus_sources_topic_rate(const bus_sources_t *self, const bus_topic_stat_t *t, int seconds)
{
    uint64_t newest, older;
    size_t slot;
    double dt;
    if (self->ticks == 0 || seconds < 1)
        return 0.;
    newest = self->ticks - 1;
    if (seconds > BUS_RATE_SAMPLES - 1)
        seconds = BUS_RATE_SAMPLES - 1;
    older = newest >= (uint64_t)seconds ? newest - (uint64_t)seconds : 0;
    slot = (size_t)(older % BUS_RATE_SAMPLES);
    dt = ev_now(self->loop) - self->tick_at[slot];
    if (dt < 0.5)
        return 0.;
    return (double)(t->forwarded - t->samples[slot]) / dt;
}

/* --- life cycle and queries -------------------------------------------------------------- */

bus_sources_t *bus_sources_new(struct ev_loop *loop, const char *spec, char *err, size_t errlen)
{
    bus_sources_t *self = calloc(1, sizeof(*self));
    if (!self || !(self->topics = calloc(BUS_TOPICS_MAX + 1, sizeof(*self->topics)))) {
        snprintf(err, errlen, "out of memory");
        free(self);
        return NULL;
    }
    self->loop = loop;
    if (parse_spec(self, spec, err, errlen) != 0) {
        bus_sources_destroy(&self);
        return NULL;
    }
    ev_timer_init(&self->refresh, on_refresh, 0., REFRESH_S);
    ev_timer_init(&self->sample, on_sample, SAMPLE_S, SAMPLE_S);
    return self;
}

void bus_sources_start(bus_sources_t *self, bus_store_t *store)
{
    self->store = store;
    ev_timer_start(self->loop, &self->refresh);
    ev_timer_start(self->loop, &self->sample);
    on_sample(self->loop, &self->sample, 0); /* a first sample at 0 */
}

void bus_sources_stop(bus_sources_t *self)
{
    if (!self)
        return;
    ev_timer_stop(self->loop, &self->refresh);
    ev_timer_stop(self->loop, &self->sample);
    for (size_t i = 0; i < self->n; i++)
        bus_store_cancel(&self->sources[i].refresh);
    self->store = NULL;
}

void bus_sources_destroy(bus_sources_t **self_p)
{
    bus_sources_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    bus_sources_stop(self);
    free(self->topics);
    free(self);
    *self_p = NULL;
}

size_t bus_sources_count(const bus_sources_t *self)
{
    return self->n;
}

bus_source_t *bus_sources_at(bus_sources_t *self, size_t i)
{
    return i < self->n ? &self->sources[i] : NULL;
}

int bus_sources_find(const bus_sources_t *self, const char *name)
{
    for (size_t i = 0; i < self->n; i++)
        if (strcmp(self->sources[i].name, name) == 0)
            return (int)i;
    return -1;
}

const char *const *bus_sources_schemas(const bus_sources_t *self)
{
    return self->schemas;
}

uint64_t bus_source_last_sequence(const bus_source_t *s)
{
    uint64_t last = s->forwarded_seq > s->start_seq ? s->forwarded_seq : s->start_seq;
    /* an envelope's sequence is the publisher's word: never report beyond what its outbox
     * has numbered (a bad one would make every consumer replay forever) */
    if (s->has_position && last > s->position.last_seq)
        last = s->position.last_seq;
    return last;
}

uint64_t bus_source_lag(const bus_source_t *s)
{
    uint64_t last = bus_source_last_sequence(s);
    if (!s->has_position)
        return 0;
    return s->position.unnumbered + (s->position.last_seq > last ? s->position.last_seq - last : 0);
}

size_t bus_sources_ntopics(const bus_sources_t *self)
{
    return self->ntopics;
}

const bus_topic_stat_t *bus_sources_topic(const bus_sources_t *self, size_t i)
{
    return i < self->ntopics ? &self->topics[i] : NULL;
}
