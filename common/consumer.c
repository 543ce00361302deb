/* consumer.c — following sources' event streams exactly once (contract in ac_consumer.h).
 * This file is the consumer's store too: the checkpoint SQL lives here, built per schema.
 *
 * Notes:
 * - Every event, live or replayed, goes the same way: decoded, routed to its source,
 *   offered to the source's sequencer (which drops duplicates and holds early ones), and
 *   applied when the sequencer hands it out in order. pump() runs after every batch of
 *   socket messages, heartbeat, replay answer and commit: it applies what is ready and
 *   asks for the replays the sequencers want.
 * - Database mode applies one transaction at a time for the whole consumer (sources take
 *   turns), so handlers see one event at a time in a total order. The events of the
 *   transaction in flight have left the sequencer; when it fails they are offered back
 *   (ac_seq_rewind() to the batch's first event, then the same events again) and applied
 *   later. Between the checkpoint and that event lie only sequences passed over as
 *   filtered; a filtered source moves its checkpoint past them in an event-less
 *   transaction now and then (wants_checkpoint_only()).
 * - A replay that brought an event that could not be taken (undecodable, out of memory)
 *   claims nothing at its end and is asked for again; one ending short of the announced
 *   latest without events backs off, and after a few lowers the latest (no storm).
 * - Heartbeats (and live events) reset a silence timer; after silence_s without either,
 *   every source asks for a catch-up replay up to the bus's latest: a live connection
 *   that stalled or a re-created output is repaired without waiting for it.
 * - The replay socket is a DEALER with IMMEDIATE: a request goes only to a live
 *   connection (else AGAIN, retried with backoff). In database mode the consumer stops
 *   reading it while half a window of events waits to be applied: the bus then waits
 *   for the socket to drain (its ROUTER_MANDATORY send says AGAIN), which bounds memory.
 * - Request ids are "<name>-<counter>"; an answer to any other id (a request that timed
 *   out) is ignored, though its events are still offered: an event is an event. */
#include "ac_consumer.h"

#include <ev.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_bus.h"
#include "ac_db.h"
#include "ac_event.h"
#include "ac_log.h"
#include "ac_metrics.h"
#include "ac_sequencer.h"
#include "ac_time.h"

#define SCHEMA_MAX     48
#define SOURCE_MAX     64 /* bytes of a source name, with the NUL */
#define SQL_MAX        512
#define RECV_BATCH     512 /* messages per wake-up before yielding to the loop */
#define SOURCES_MAX    256 /* sources one consumer follows (is_follow_all is bounded too) */
#define REQUEST_ID_MAX 64

#define DEFAULT_WINDOW    16384
#define DEFAULT_BATCH     64
#define DEFAULT_RCVHWM    100000
#define DEFAULT_TIMEOUT_S 5.0
#define DEFAULT_SILENCE_S 3.0       /* three missed heartbeats */
#define SUB_MAX_MSG       (1 << 20) /* the bus refuses larger envelopes anyway */
#define DEALER_MAX_MSG    (2 << 20)

#define PRUNED_RETRY_S  60.0 /* PRUNED without is_skip_pruned: ask again this rarely */
#define REFUSED_RETRY_S 30.0 /* BAD_REQUEST, UNKNOWN_SOURCE, FORBIDDEN */
#define POISON_ATTEMPTS 3    /* tries of an event failing alone before it is dead-lettered */
/* This many events in a row dead-lettered for SQL errors look like a fault of the service
 * or its schema, not of the events: the consumer then holds the stream and retries. */
#define DEAD_IN_A_ROW_MAX    10
#define GARBAGE_LOG_WINDOW_S 10.0
#define GARBAGE_LOG_MAX      5 /* lines per window; the rest are counted */

/* SQLSTATE raised by consumer_advance() when the checkpoint is not where this consumer
 * last saw it (see CONSUMER_V1). */
#define SQLSTATE_CHECKPOINT_MOVED "AC409"

#define AC_BUS_HEARTBEAT_SOURCE "aftercare/bus"
#define IDLE_TRIES_MAX          3 /* replays ending short, empty: then the bus lacks them */

typedef struct cevent {
    uint64_t sequence;
    char *topic;  /* owned */
    uint8_t *raw; /* owned envelope bytes */
    size_t len;
    Aftercare__V1__Envelope *env; /* owned */
    int is_applied;               /* a handler took it in the batch in flight */
    int is_dead;                  /* dead-lettered in the batch in flight */
} cevent_t;

typedef struct csource {
    ac_consumer_t *owner;         /* borrowed back-pointer */
    char name[SOURCE_MAX];        /* "aftercare/intake" */
    char labels[SOURCE_MAX + 16]; /* source="aftercare/intake" */
    ac_seq_t *seq;                /* owned */
    int is_positioned;            /* next is known (checkpoint, start, live) */
    int is_from_live;             /* memory mode without a start position */
    uint64_t committed;           /* database mode: the checkpoint in the database */
    ev_tstamp committed_at;       /* when it last moved (or was read) */
    ac_db_txn_t *load_txn;        /* the checkpoint read in flight, or NULL */
    ev_timer load_retry;
    ac_backoff_t load_backoff;
    char request_id[REQUEST_ID_MAX];   /* the replay in flight, "" when none */
    uint64_t request_from, request_to; /* its range (to 0 = up to the latest) */
    uint64_t request_events;           /* its events received so far */
    uint64_t request_target;           /* the last sequence it should reach (latest if to 0) */
    int is_request_tainted; /* it brought an event that could not be taken: claim nothing */
    int tainted_tries;      /* replays from request_from in a row that were tainted */
    uint64_t tainted_from;
    int idle_tries;              /* replays in a row that ended short with no events */
    ac_seq_replay_t request_why; /* why it was asked for */
    uint64_t last_live;          /* the last sequence seen on the live stream */
    ev_timer replay_timer;       /* in flight: the timeout; else a retry delay */
    int is_replay_held;          /* waiting for replay_timer before asking again */
    ac_backoff_t replay_backoff;
    uint64_t solo_until; /* apply one event per transaction up to this */
    uint64_t poison_seq; /* the event that last failed alone; 0 none */
    int poison_attempts;
    int is_poison_dead; /* poison_seq goes to the dead letters */
    int dead_in_a_row;  /* events dead-lettered for SQL errors since the
                           last one applied */
    char poison_reason[256];
} csource_t;

struct ac_consumer {
    struct ev_loop *loop;            /* borrowed */
    const ac_consumer_config_t *cfg; /* borrowed */
    const char *name;                /* cfg->name or "consumer", for logs */
    ac_zsock_t *sub;                 /* owned SUB on the bus output */
    ac_zsock_t *dealer;              /* owned DEALER on the replay endpoint */
    csource_t *sources[SOURCES_MAX]; /* owned */
    size_t nsources;
    size_t turn;                          /* database mode: the source whose turn is next */
    int is_filtered;                      /* topic prefixes limit what is seen */
    char replay_prefix[AC_TOPIC_MAX + 1]; /* the one prefix, or "" (filtered here) */
    int is_dealer_paused;                 /* not reading the replay socket (flow control) */
    uint64_t requests;                    /* replay request counter, for ids */
    char id_prefix[24];                   /* request ids start with this */
    size_t window;
    int batch_max;
    double replay_timeout_s;
    ev_timer kick;           /* a pump() from the loop (after start, after a retry delay) */
    ev_timer silence;        /* checks that heartbeats (or events) keep coming */
    ev_tstamp last_heard_at; /* the last heartbeat or live event */
    double silence_s;        /* this long without one: catch up by replay */
    /* database mode */
    ac_db_txn_t *txn;      /* the batch in flight, or NULL */
    csource_t *txn_source; /* whose events it applies */
    cevent_t **batch;      /* its events, in order (batch_max slots) */
    size_t nbatch;
    uint64_t txn_last;    /* where it moves the checkpoint (past filtered ranges too) */
    ev_timer apply_retry; /* backoff after a failed batch */
    ac_backoff_t apply_backoff;
    int is_recheck_wanted; /* re-read the checkpoints before the next batch */
    char sql_advance[SQL_MAX], sql_load[SQL_MAX], sql_dead[SQL_MAX];
    /* malformed messages: counted always, logged a few per window */
    ev_tstamp garbage_window_at;
    unsigned garbage_logged, garbage_quiet;
    ac_consumer_stats_t stats;
};

static void pump(ac_consumer_t *c);
static void pump_soon(ac_consumer_t *c);

static int schema_is_valid(const char *schema)
{
    size_t n = schema ? strlen(schema) : 0;
    if (n == 0 || n >= SCHEMA_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((schema[i] >= 'a' && schema[i] <= 'z') || schema[i] == '_' ||
              (i > 0 && schema[i] >= '0' && schema[i] <= '9')))
            return 0;
    return 1;
}

/* Printable ASCII without quotes or backslashes (it goes into metric labels), 1..63. */
static int source_is_valid(const char *s, size_t len)
{
    if (len == 0 || len >= SOURCE_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] <= ' ' || s[i] > '~' || s[i] == '"' || s[i] == '\\')
            return 0;
    return 1;
}

/* --- migrations ------------------------------------------------------------------------ */

/* consumer_advance(source, prev, last) moves the checkpoint from prev to last, or raises
 * SQLSTATE AC409 (rolling back the handler's effects with it) when it is not at prev: a
 * second instance, or a commit whose outcome this one never learnt, got there first. */
static const char CONSUMER_V1[] =
    "CREATE TABLE %1$s.consumer_checkpoints ("
    " source text PRIMARY KEY,"
    " last_sequence bigint NOT NULL CHECK (last_sequence >= 0),"
    " updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE %1$s.consumer_dead_letters ("
    " id bigserial PRIMARY KEY,"
    " source text NOT NULL,"
    " sequence bigint NOT NULL,"
    " event_id text NOT NULL,"
    " topic text NOT NULL,"
    " envelope bytea NOT NULL,"
    " reason text NOT NULL,"
    " failed_at timestamptz NOT NULL DEFAULT now());"
    "CREATE FUNCTION %1$s.consumer_advance(p_source text, p_prev bigint, p_last bigint)"
    " RETURNS void LANGUAGE plpgsql AS $f$ BEGIN"
    "  UPDATE %1$s.consumer_checkpoints SET last_sequence = p_last, updated_at = now()"
    "   WHERE source = p_source AND last_sequence = p_prev;"
    "  IF FOUND THEN RETURN; END IF;"
    "  IF p_prev = 0 THEN"
    "   INSERT INTO %1$s.consumer_checkpoints (source, last_sequence) VALUES (p_source, p_last)"
    "    ON CONFLICT (source) DO NOTHING;"
    "   IF FOUND THEN RETURN; END IF;"
    "  END IF;"
    "  RAISE EXCEPTION 'the checkpoint of %% is not at %%', p_source, p_prev"
    "   USING ERRCODE = '" SQLSTATE_CHECKPOINT_MOVED "';"
    " END $f$;";

int ac_consumer_migrate(const char *conninfo, const char *schema, double wait_s)
{
    char v1[sizeof(CONSUMER_V1) + (size_t)16 * SCHEMA_MAX];
    if (!schema_is_valid(schema)) {
        ac_error("consumer: invalid schema name \"%s\"", schema ? schema : "");
        return AC_ERR_INVALID;
    }
    snprintf(v1, sizeof(v1), CONSUMER_V1, schema);
    const ac_migration_t migrations[] = {{1, "001_consumer", v1}, {0, NULL, NULL}};
    return ac_db_migrate(conninfo, schema, "consumer", migrations, wait_s);
}

static const char SQL_ADVANCE[] = "SELECT %s.consumer_advance($1, $2::bigint, $3::bigint)";
static const char SQL_LOAD[] =
    "SELECT last_sequence FROM %s.consumer_checkpoints WHERE source = $1";
static const char SQL_DEAD[] =
    "INSERT INTO %s.consumer_dead_letters (source, sequence, event_id, topic, envelope, reason)"
    " VALUES ($1, $2::bigint, $3, $4, $5, $6)";

/* --- events and sources ------------------------------------------------------------------ */

static void cevent_free(void *p)
{
    cevent_t *e = p;
    if (!e)
        return;
    free(e->topic);
    free(e->raw);
    if (e->env)
        aftercare__v1__envelope__free_unpacked(e->env, NULL);
    free(e);
}

static void count(ac_consumer_t *c, const char *name, const char *labels, double v)
{
    if (c->cfg->metrics)
        ac_metrics_add(c->cfg->metrics, name, labels, v);
}

static void garbage(ac_consumer_t *c, const char *where, const char *why, size_t nframes)
{
    ev_tstamp now = ev_now(c->loop);
    char labels[32];
    c->stats.garbage++;
    snprintf(labels, sizeof(labels), "socket=\"%s\"", where);
    count(c, "consumer_garbage_total", labels, 1);
    if (now - c->garbage_window_at > GARBAGE_LOG_WINDOW_S) {
        if (c->garbage_quiet > 0)
            ac_warn("consumer %s: %u more malformed messages were not logged", c->name,
                    c->garbage_quiet);
        c->garbage_window_at = now;
        c->garbage_logged = c->garbage_quiet = 0;
    }
    if (c->garbage_logged++ < GARBAGE_LOG_MAX)
        ac_warn("consumer %s: dropped a malformed message on the %s socket (%zu frames): %s",
                c->name, where, nframes, why);
    else
        c->garbage_quiet++;
}

static csource_t *source_find(const ac_consumer_t *c, const char *name)
{
    for (size_t i = 0; i < c->nsources; i++)
        if (strcmp(c->sources[i]->name, name) == 0)
            return c->sources[i];
    return NULL;
}

static void on_load_retry(struct ev_loop *loop, ev_timer *w, int revents);
static void on_replay_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void load_checkpoint(csource_t *s);

static const ac_consumer_start_t *start_of(const ac_consumer_t *c, const char *name)
{
    for (const ac_consumer_start_t *st = c->cfg->starts; st && st->source; st++)
        if (strcmp(st->source, name) == 0)
            return st;
    return NULL;
}

/* Adds a source to follow and sets its position (or starts reading it). NULL when the
 * name is bad, the table is full, or out of memory (logged). */
static csource_t *source_add(ac_consumer_t *c, const char *name)
{
    csource_t *s;
    const ac_consumer_start_t *st;
    if (!source_is_valid(name, strlen(name))) {
        ac_error("consumer %s: invalid source name \"%.64s\"", c->name, name);
        return NULL;
    }
    if (c->nsources == SOURCES_MAX) {
        ac_error("consumer %s: more than %d sources; not following %s", c->name, SOURCES_MAX, name);
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (!s || !(s->seq = ac_seq_new(c->window, cevent_free))) {
        ac_error("consumer %s: out of memory", c->name);
        free(s);
        return NULL;
    }
    s->owner = c;
    snprintf(s->name, sizeof(s->name), "%s", name);
    snprintf(s->labels, sizeof(s->labels), "source=\"%s\"", name);
    ac_seq_set_filtered(s->seq, c->is_filtered);
    ev_timer_init(&s->load_retry, on_load_retry, 1., 0.);
    ev_timer_init(&s->replay_timer, on_replay_timer, c->replay_timeout_s, 0.);
    ac_backoff_init(&s->load_backoff, 0.2, 5.);
    ac_backoff_init(&s->replay_backoff, 0.05, 5.);
    c->sources[c->nsources++] = s;
    if (c->cfg->db) {
        load_checkpoint(s);
    } else if ((st = start_of(c, name)) != NULL) {
        ac_seq_reset(s->seq, st->next_sequence > 0 ? st->next_sequence : 1);
        s->is_positioned = 1;
        ac_info("consumer %s: following %s from sequence %llu", c->name, name,
                (unsigned long long)ac_seq_next(s->seq));
    } else {
        s->is_from_live = 1;
    }
    return s;
}

/* The source named in a message: followed, added (is_follow_all), or NULL (ignored). */
static csource_t *source_for(ac_consumer_t *c, const char *name)
{
    csource_t *s = source_find(c, name);
    if (s || !c->cfg->is_follow_all || !source_is_valid(name, strlen(name)))
        return s;
    return source_add(c, name);
}

static void source_destroy(ac_consumer_t *c, csource_t *s)
{
    ev_timer_stop(c->loop, &s->load_retry);
    ev_timer_stop(c->loop, &s->replay_timer);
    ac_db_txn_free(&s->load_txn);
    ac_seq_destroy(&s->seq);
    free(s);
}

/* Memory-mode sources without a start take the live stream's position. */
static void position_from_live(csource_t *s, uint64_t next)
{
    ac_seq_reset(s->seq, next);
    ac_seq_mark_synced(s->seq);
    s->is_positioned = 1;
    ac_info("consumer %s: following %s from sequence %llu (live)", s->owner->name, s->name,
            (unsigned long long)next);
}

/* --- checkpoints (database mode) ----------------------------------------------------------- */

static void on_checkpoint_loaded(ac_db_txn_t *txn, int err, void *arg)
{
    csource_t *s = arg;
    ac_consumer_t *c = s->owner;
    PGresult *res = ac_db_txn_result(txn, 0);
    uint64_t cp = 0;

    s->load_txn = NULL;
    if (err != 0 || !res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (err == AC_ERR_DB)
            ac_error("consumer %s: cannot read the checkpoint of %s: %s %s", c->name, s->name,
                     ac_db_txn_sqlstate(txn), ac_db_txn_errmsg(txn));
        else
            ac_warn("consumer %s: cannot read the checkpoint of %s: %s (retrying)", c->name,
                    s->name, ac_strerror(err ? err : AC_ERR_DB));
        ac_db_txn_free(&txn);
        ev_timer_set(&s->load_retry, ac_backoff_next(&s->load_backoff), 0.);
        ev_timer_start(c->loop, &s->load_retry);
        return;
    }
    if (PQntuples(res) == 1)
        cp = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
    ac_db_txn_free(&txn);
    ac_backoff_reset(&s->load_backoff);
    s->committed = cp;
    s->committed_at = ev_now(c->loop);
    ac_seq_reset(s->seq, cp + 1);
    if (!s->is_positioned)
        ac_info("consumer %s: following %s from checkpoint %llu", c->name, s->name,
                (unsigned long long)cp);
    else
        ac_info("consumer %s: the checkpoint of %s is at %llu: going on from there", c->name,
                s->name, (unsigned long long)cp);
    s->is_positioned = 1;
    pump(c);
}

static void load_checkpoint(csource_t *s)
{
    ac_consumer_t *c = s->owner;
    const char *params[1] = {s->name};
    if (s->load_txn)
        return;
    s->load_txn = ac_db_txn_new(c->cfg->db, 0);
    if (!s->load_txn || ac_db_txn_add_sql(s->load_txn, c->sql_load, 1, params, NULL, NULL) != 0 ||
        ac_db_txn_flush(s->load_txn, on_checkpoint_loaded, s) != 0) {
        ac_db_txn_free(&s->load_txn);
        ev_timer_set(&s->load_retry, ac_backoff_next(&s->load_backoff), 0.);
        ev_timer_start(c->loop, &s->load_retry);
    }
}

static void on_load_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    load_checkpoint(ac_container_of(w, csource_t, load_retry));
}

/* --- applying ------------------------------------------------------------------------------ */

static int topic_is_wanted(const ac_consumer_t *c, const char *topic)
{
    if (!c->cfg->topics)
        return 1;
    for (const char *const *t = c->cfg->topics; *t; t++)
        if (strncmp(topic, *t, strlen(*t)) == 0)
            return 1;
    return 0;
}

static ac_consumer_fn handler_of(const ac_consumer_t *c, const cevent_t *e)
{
    const ProtobufCMessage *payload;
    if (!topic_is_wanted(c, e->topic))
        return NULL;
    payload = ac_event_payload(e->env);
    for (const ac_consumer_route_t *r = c->cfg->routes; payload && r && r->descriptor; r++)
        if (payload->descriptor == r->descriptor)
            return r->handler;
    return c->cfg->on_event;
}

static void event_view(const csource_t *s, const cevent_t *e, ac_consumer_event_t *ev)
{
    ev->env = e->env;
    ev->topic = e->topic;
    ev->source = s->name;
    ev->sequence = e->sequence;
    ev->envelope = e->raw;
    ev->envelope_len = e->len;
}

static void set_gauges(ac_consumer_t *c, const csource_t *s)
{
    if (!c->cfg->metrics)
        return;
    ac_metrics_set(c->cfg->metrics, "consumer_next_sequence", s->labels,
                   (double)ac_seq_next(s->seq));
    ac_metrics_set(c->cfg->metrics, "consumer_latest_sequence", s->labels,
                   (double)ac_seq_latest(s->seq));
}

/* Memory mode: every event that is ready, in order, at once. */
static void drain_memory(ac_consumer_t *c, csource_t *s)
{
    cevent_t *e;
    uint64_t seq;
    int n = 0;
    while ((e = ac_seq_pop(s->seq, &seq)) != NULL) {
        ac_consumer_fn fn = handler_of(c, e);
        n++;
        if (fn) {
            ac_consumer_event_t ev;
            int rc;
            event_view(s, e, &ev);
            rc = fn(&ev, NULL, c->cfg->arg);
            if (rc == 0) {
                c->stats.applied++;
                count(c, "consumer_events_applied_total", s->labels, 1);
            } else {
                c->stats.failed++;
                count(c, "consumer_events_failed_total", s->labels, 1);
                ac_log_at(AC_LOG_WARN, e->env->subject, e->env->id,
                          "consumer %s: handler for %s sequence %llu failed: %s", c->name, e->topic,
                          (unsigned long long)seq, ac_strerror(rc));
            }
        }
        cevent_free(e);
    }
    if (n > 0)
        set_gauges(c, s);
}

/* Printable ASCII copy of text (a peer's string may not be valid UTF-8, which the
 * database would refuse, and a dead letter must always be writable). */
static const char *printable(const char *text, char *buf, size_t size)
{
    size_t i = 0;
    for (; text && text[i] && i + 1 < size; i++)
        buf[i] = text[i] >= ' ' && text[i] <= '~' ? text[i] : '?';
    buf[i] = '\0';
    return buf;
}

static int add_dead_letter(ac_consumer_t *c, csource_t *s, cevent_t *e, ac_db_txn_t *txn,
                           const char *reason)
{
    char seq[24], id[80], topic[AC_TOPIC_MAX + 1], why[256];
    const char *values[6] = {s->name,
                             seq,
                             printable(e->env->id, id, sizeof(id)),
                             printable(e->topic, topic, sizeof(topic)),
                             (const char *)e->raw,
                             printable(reason, why, sizeof(why))};
    int lengths[6] = {0, 0, 0, 0, (int)e->len, 0};
    int formats[6] = {0, 0, 0, 0, 1, 0};
    snprintf(seq, sizeof(seq), "%llu", (unsigned long long)e->sequence);
    e->is_dead = 1;
    return ac_db_txn_add_sql(txn, c->sql_dead, 6, values, lengths, formats);
}

/* Events of the failed batch go back to their sequencer, to be applied again. */
static void batch_rewind(ac_consumer_t *c)
{
    csource_t *s = c->txn_source;
    if (!s)
        return;
    /* Back to the batch's first event, not to committed + 1: what lies between was passed
     * over as filtered, and rewinding further would push the batch's later events beyond
     * the window (refused, then skipped as filtered: lost). */
    if (c->nbatch > 0)
        ac_seq_rewind(s->seq, c->batch[0]->sequence);
    for (size_t i = 0; i < c->nbatch; i++) {
        cevent_t *e = c->batch[i];
        e->is_applied = e->is_dead = 0;
        if (ac_seq_offer(s->seq, e->sequence, e) != AC_SEQ_BUFFERED)
            cevent_free(e);
    }
    c->nbatch = 0;
    c->txn_source = NULL;
}

static void apply_later(ac_consumer_t *c)
{
    c->stats.db_retries++;
    count(c, "consumer_db_retries_total", NULL, 1);
    ev_timer_stop(c->loop, &c->apply_retry);
    ev_timer_set(&c->apply_retry, ac_backoff_next(&c->apply_backoff), 0.);
    ev_timer_start(c->loop, &c->apply_retry);
}

/* Serialization failures, deadlocks, lost connections, resource shortages, shutdowns:
 * worth retrying as they are. */
static int sqlstate_is_transient(const char *st)
{
    return strncmp(st, "40", 2) == 0 || strncmp(st, "08", 2) == 0 || strncmp(st, "53", 2) == 0 ||
           strncmp(st, "57", 2) == 0 || strcmp(st, "55P03") == 0;
}

static void on_batch_done(ac_db_txn_t *txn, int err, void *arg)
{
    ac_consumer_t *c = arg;
    csource_t *s = c->txn_source;
    uint64_t first = c->nbatch ? c->batch[0]->sequence : 0;
    uint64_t last = c->txn_last;
    const char *state = ac_db_txn_sqlstate(txn);

    c->txn = NULL;
    if (c->cfg->on_batch_done)
        c->cfg->on_batch_done(err, c->cfg->arg);
    if (err == 0) {
        size_t applied = 0, dead = 0;
        for (size_t i = 0; i < c->nbatch; i++) {
            applied += c->batch[i]->is_applied;
            dead += c->batch[i]->is_dead;
            cevent_free(c->batch[i]);
        }
        c->nbatch = 0;
        c->txn_source = NULL;
        ac_db_txn_free(&txn);
        s->committed = last;
        s->committed_at = ev_now(c->loop);
        c->stats.applied += applied;
        c->stats.dead_letters += dead;
        count(c, "consumer_events_applied_total", s->labels, (double)applied);
        if (dead)
            count(c, "consumer_dead_letters_total", s->labels, (double)dead);
        if (applied > 0)
            s->dead_in_a_row = 0;
        else if (s->is_poison_dead && s->poison_seq >= first && s->poison_seq <= last &&
                 strncmp(s->poison_reason, "handler:", 8) != 0)
            s->dead_in_a_row++;
        if (s->poison_seq && s->poison_seq <= last) {
            s->poison_seq = 0;
            s->poison_attempts = 0;
            s->is_poison_dead = 0;
        }
        if (s->solo_until && s->solo_until <= last)
            s->solo_until = 0;
        ac_backoff_reset(&c->apply_backoff);
        set_gauges(c, s);
        pump(c);
        return;
    }

    if (err == AC_ERR_DB && strcmp(state, SQLSTATE_CHECKPOINT_MOVED) == 0) {
        ac_warn("consumer %s: the checkpoint of %s is no longer at %llu (another instance, or "
                "an earlier commit whose outcome was lost): re-reading it",
                c->name, s->name, (unsigned long long)s->committed);
        ac_db_txn_free(&txn);
        batch_rewind(c);
        load_checkpoint(s);
        return;
    }
    if (c->nbatch == 0) { /* moving the checkpoint past filtered sequences only */
        ac_warn("consumer %s: moving the checkpoint of %s to %llu failed: %s %s (retrying)",
                c->name, s->name, (unsigned long long)last, ac_strerror(err),
                err == AC_ERR_DB ? ac_db_txn_errmsg(txn) : "");
        ac_db_txn_free(&txn);
        c->txn_source = NULL;
        apply_later(c);
        return;
    }
    if (err == AC_ERR_DB && !sqlstate_is_transient(state)) {
        if (c->nbatch > 1) {
            ac_warn("consumer %s: a transaction of %zu events of %s (%llu..%llu) failed: %s %s; "
                    "applying them one at a time",
                    c->name, c->nbatch, s->name, (unsigned long long)first,
                    (unsigned long long)last, state, ac_db_txn_errmsg(txn));
            s->solo_until = last;
            ac_db_txn_free(&txn);
            batch_rewind(c);
            pump(c);
            return;
        }
        if (s->poison_seq != first) {
            s->poison_seq = first;
            s->poison_attempts = 0;
            s->is_poison_dead = 0;
        }
        s->poison_attempts++;
        if (!s->is_poison_dead && s->poison_attempts >= POISON_ATTEMPTS &&
            s->dead_in_a_row >= DEAD_IN_A_ROW_MAX) {
            ac_error("consumer %s: %d events of %s in a row could not be applied; this looks "
                     "like a fault of the service, not of the events: holding %s sequence %llu "
                     "and retrying (%s %s)",
                     c->name, s->dead_in_a_row, s->name, s->name, (unsigned long long)first, state,
                     ac_db_txn_errmsg(txn));
        } else if (!s->is_poison_dead && s->poison_attempts >= POISON_ATTEMPTS) {
            const cevent_t *e = c->batch[0];
            snprintf(s->poison_reason, sizeof(s->poison_reason), "%s %s", state,
                     ac_db_txn_errmsg(txn));
            ac_log_at(AC_LOG_ERROR, e->env->subject, e->env->id,
                      "consumer %s: %s sequence %llu (%s) failed %d times: %s; recording it in "
                      "%s.consumer_dead_letters and going on",
                      c->name, s->name, (unsigned long long)first, e->topic, s->poison_attempts,
                      s->poison_reason, c->cfg->schema);
            s->is_poison_dead = 1;
            ac_db_txn_free(&txn);
            batch_rewind(c);
            pump(c);
            return;
        } else {
            ac_warn("consumer %s: %s sequence %llu failed (attempt %d of %d): %s %s", c->name,
                    s->name, (unsigned long long)first, s->poison_attempts, POISON_ATTEMPTS, state,
                    ac_db_txn_errmsg(txn));
        }
    } else if (err == AC_ERR_DB) {
        ac_warn("consumer %s: applying %s %llu..%llu failed: %s %s (retrying)", c->name, s->name,
                (unsigned long long)first, (unsigned long long)last, state, ac_db_txn_errmsg(txn));
    } else {
        ac_warn("consumer %s: applying %s %llu..%llu: %s (retrying)", c->name, s->name,
                (unsigned long long)first, (unsigned long long)last, ac_strerror(err));
    }
    ac_db_txn_free(&txn);
    batch_rewind(c);
    apply_later(c);
}

/* Starts a transaction with the events of s that are ready; without any, one that only
 * moves the checkpoint past the filtered sequences before next. */
static void start_batch(ac_consumer_t *c, csource_t *s)
{
    size_t max = (size_t)c->batch_max;
    char prev[24], last[24];
    const char *params[3] = {s->name, prev, last};
    cevent_t *e;
    uint64_t seq;
    int rc = 0;

    if (s->solo_until >= ac_seq_next(s->seq))
        max = 1;
    c->txn = ac_db_txn_new(c->cfg->db, 1);
    if (!c->txn) {
        apply_later(c);
        return;
    }
    c->txn_source = s;
    c->nbatch = 0;
    if (c->cfg->is_commit_async)
        rc = ac_db_txn_add_sql(c->txn, "SELECT set_config('synchronous_commit', 'off', true)", 0,
                               NULL, NULL, NULL);
    if (c->cfg->on_batch_begin)
        c->cfg->on_batch_begin(c->cfg->arg);
    while (rc == 0 && c->nbatch < max && (e = ac_seq_pop(s->seq, &seq)) != NULL) {
        ac_consumer_fn fn;
        c->batch[c->nbatch++] = e;
        if (s->is_poison_dead && seq == s->poison_seq) {
            rc = add_dead_letter(c, s, e, c->txn, s->poison_reason);
            continue;
        }
        if (!(fn = handler_of(c, e)))
            continue; /* not for us: only the checkpoint moves past it */
        ac_consumer_event_t ev;
        event_view(s, e, &ev);
        rc = fn(&ev, c->txn, c->cfg->arg);
        if (rc == 0) {
            e->is_applied = 1;
        } else if (rc == AC_ERR_INVALID || rc == AC_ERR_PROTO) {
            /* it may have added statements already: start over without them */
            s->poison_seq = seq;
            s->is_poison_dead = 1;
            snprintf(s->poison_reason, sizeof(s->poison_reason), "handler: %s", ac_strerror(rc));
            ac_log_at(AC_LOG_ERROR, e->env->subject, e->env->id,
                      "consumer %s: the handler refused %s sequence %llu (%s): %s; recording it "
                      "in %s.consumer_dead_letters",
                      c->name, s->name, (unsigned long long)seq, e->topic, ac_strerror(rc),
                      c->cfg->schema);
            ac_db_txn_free(&c->txn);
            batch_rewind(c);
            pump_soon(c); /* not pump(): a run of refused events would recurse */
            return;
        } else {
            ac_log_at(AC_LOG_WARN, e->env->subject, e->env->id,
                      "consumer %s: the handler for %s sequence %llu failed: %s (retrying)",
                      c->name, e->topic, (unsigned long long)seq, ac_strerror(rc));
        }
    }
    if (rc == 0 && c->cfg->on_batch_end)
        rc = c->cfg->on_batch_end(c->txn, c->cfg->arg);
    c->txn_last = c->nbatch > 0 ? c->batch[c->nbatch - 1]->sequence : ac_seq_next(s->seq) - 1;
    if (rc == 0 && c->txn_last > s->committed) {
        snprintf(prev, sizeof(prev), "%llu", (unsigned long long)s->committed);
        snprintf(last, sizeof(last), "%llu", (unsigned long long)c->txn_last);
        rc = ac_db_txn_add_sql(c->txn, c->sql_advance, 3, params, NULL, NULL);
        if (rc == 0)
            rc = ac_db_txn_commit(c->txn, on_batch_done, c);
    } else if (rc == 0) {
        rc = -1; /* nothing to commit (cannot happen: pump_database checked) */
    }
    if (rc != 0) {
        ac_db_txn_free(&c->txn);
        batch_rewind(c);
        c->txn_source = NULL;
        apply_later(c);
    }
}

/* A filtered source passes over long ranges that are not for it: its checkpoint follows
 * (without events) when it is far behind or has not moved for a while, so that a restart
 * does not replay them again (or find them pruned). */
#define CHECKPOINT_SKIP_S 5.0
static int wants_checkpoint_only(const ac_consumer_t *c, const csource_t *s)
{
    uint64_t passed = ac_seq_next(s->seq) - 1;
    if (passed <= s->committed)
        return 0;
    return passed - s->committed >= c->window ||
           ev_now(c->loop) - s->committed_at >= CHECKPOINT_SKIP_S;
}

static void pump_database(ac_consumer_t *c)
{
    if (c->txn || ev_is_active(&c->apply_retry) || c->nsources == 0)
        return;
    if (c->is_recheck_wanted) { /* ac_consumer_recheck(): each source goes on from its row */
        c->is_recheck_wanted = 0;
        for (size_t k = 0; k < c->nsources; k++)
            if (c->sources[k]->is_positioned)
                load_checkpoint(c->sources[k]);
    }
    for (size_t k = 0; k < c->nsources; k++) {
        csource_t *s = c->sources[(c->turn + k) % c->nsources];
        if (!s->is_positioned || s->load_txn)
            continue;
        ac_seq_skip_filtered(s->seq);
        if (ac_seq_ready(s->seq, 1) == 0 && !wants_checkpoint_only(c, s))
            continue;
        c->turn = (c->turn + k + 1) % c->nsources;
        start_batch(c, s);
        return;
    }
}

static void on_apply_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    pump(ac_container_of(w, ac_consumer_t, apply_retry));
}

/* --- replay requests ------------------------------------------------------------------------ */

static void on_dealer_readable(ac_zsock_t *sock, void *arg);

static void replay_hold(csource_t *s, double delay_s)
{
    ac_consumer_t *c = s->owner;
    s->is_replay_held = 1;
    ev_timer_stop(c->loop, &s->replay_timer);
    ev_timer_set(&s->replay_timer, delay_s, 0.);
    ev_timer_start(c->loop, &s->replay_timer);
}

/* The replay in flight is over (answered, refused or timed out). */
static void replay_forget(csource_t *s)
{
    s->request_id[0] = '\0';
    ev_timer_stop(s->owner->loop, &s->replay_timer);
}

static void replay_request(csource_t *s)
{
    ac_consumer_t *c = s->owner;
    Aftercare__V1__ReplayRequest req = AFTERCARE__V1__REPLAY_REQUEST__INIT;
    uint64_t from, to;
    ac_seq_replay_t why;
    uint8_t *buf;
    size_t len;
    int rc;

    if (!s->is_positioned || s->request_id[0] || s->is_replay_held || !c->dealer ||
        (why = ac_seq_want_replay(s->seq, &from, &to)) == AC_SEQ_REPLAY_NONE)
        return;
    snprintf(s->request_id, sizeof(s->request_id), "%s-%llu", c->id_prefix,
             (unsigned long long)++c->requests);
    req.request_id = s->request_id;
    req.source = s->name;
    req.from_sequence = from;
    req.to_sequence = to;
    req.topic_prefix = c->replay_prefix;
    len = aftercare__v1__replay_request__get_packed_size(&req);
    buf = malloc(len ? len : 1);
    if (!buf) {
        s->request_id[0] = '\0';
        replay_hold(s, 1.);
        return;
    }
    aftercare__v1__replay_request__pack(&req, buf);
    {
        static const char kind[] = "replay.request";
        const void *data[2] = {kind, buf};
        size_t lens[2] = {sizeof(kind) - 1, len};
        rc = ac_zsock_send(c->dealer, data, lens, 2);
    }
    free(buf);
    if (rc != 0) {
        /* AGAIN: not connected to the bus (IMMEDIATE) or its queue is full */
        s->request_id[0] = '\0';
        ac_debug("consumer %s: replay request for %s not sent: %s", c->name, s->name,
                 ac_strerror(rc));
        replay_hold(s, ac_backoff_next(&s->replay_backoff));
        return;
    }
    if (why == AC_SEQ_REPLAY_GAP) {
        c->stats.gaps++;
        count(c, "consumer_gaps_total", s->labels, 1);
        ac_info("consumer %s: gap in %s: sequences %llu..%llu are missing (next %llu): "
                "replaying them",
                c->name, s->name, (unsigned long long)from,
                (unsigned long long)(to ? to : ac_seq_latest(s->seq)),
                (unsigned long long)ac_seq_next(s->seq));
    } else if (why == AC_SEQ_REPLAY_CATCHUP) {
        ac_info("consumer %s: nothing heard from the bus for %.1f s: asking for %s from %llu",
                c->name, c->silence_s, s->name, (unsigned long long)from);
    } else {
        ac_info("consumer %s: replaying %s from sequence %llu", c->name, s->name,
                (unsigned long long)from);
    }
    s->request_why = why;
    c->stats.replays++;
    count(c, "consumer_replays_total", s->labels, 1);
    ac_seq_replay_begin(s->seq, from, to);
    s->request_from = from;
    s->request_to = to;
    s->request_events = 0;
    s->request_target = to ? to : ac_seq_latest(s->seq);
    s->is_request_tainted = 0;
    ev_timer_stop(c->loop, &s->replay_timer);
    ev_timer_set(&s->replay_timer, c->replay_timeout_s, 0.);
    ev_timer_start(c->loop, &s->replay_timer);
}

static void on_replay_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    csource_t *s = ac_container_of(w, csource_t, replay_timer);
    ac_consumer_t *c = s->owner;
    if (s->request_id[0]) {
        if (c->is_dealer_paused) { /* our own flow control, not the bus's silence */
            ev_timer_set(w, c->replay_timeout_s, 0.);
            ev_timer_start(loop, w);
            return;
        }
        ac_warn("consumer %s: replay %s of %s got no answer in %.1f s; asking again", c->name,
                s->request_id, s->name, c->replay_timeout_s);
        c->stats.replay_errors++;
        {
            char labels[SOURCE_MAX + 32];
            snprintf(labels, sizeof(labels), "%s,code=\"timeout\"", s->labels);
            count(c, "consumer_replay_errors_total", labels, 1);
        }
        ac_seq_replay_abort(s->seq);
        replay_forget(s);
        replay_hold(s, ac_backoff_next(&s->replay_backoff));
        return;
    }
    s->is_replay_held = 0;
    pump(c);
}

/* In database mode, stop reading replayed events while half a window waits. */
static void dealer_flow(ac_consumer_t *c)
{
    size_t ready = 0, high = c->window / 2, low = c->window / 4;
    if (!c->cfg->db || !c->dealer)
        return;
    for (size_t i = 0; i < c->nsources && ready < high; i++)
        ready += ac_seq_ready(c->sources[i]->seq, high - ready);
    if (!c->is_dealer_paused && ready >= high) {
        c->is_dealer_paused = 1;
        ac_zsock_on_readable(c->dealer, NULL, NULL);
        ac_debug("consumer %s: %zu events wait: pausing replays", c->name, ready);
    } else if (c->is_dealer_paused && ready < low) {
        c->is_dealer_paused = 0;
        ac_zsock_on_readable(c->dealer, on_dealer_readable, c);
    }
}

static void pump(ac_consumer_t *c)
{
    if (c->cfg->db) {
        pump_database(c);
    } else {
        for (size_t i = 0; i < c->nsources; i++)
            if (c->sources[i]->is_positioned)
                drain_memory(c, c->sources[i]);
    }
    for (size_t i = 0; i < c->nsources; i++)
        replay_request(c->sources[i]);
    dealer_flow(c);
}

/* Heartbeats come every second: silence means the live stream is stuck or gone (a bus
 * restart, a re-created output, a connection that stalled). Ask replay what was missed. */
static void on_silence(struct ev_loop *loop, ev_timer *w, int revents)
{
    ac_consumer_t *c = ac_container_of(w, ac_consumer_t, silence);
    if (ev_now(loop) - c->last_heard_at < c->silence_s)
        return;
    c->last_heard_at = ev_now(loop);
    for (size_t i = 0; i < c->nsources; i++)
        if (c->sources[i]->is_positioned)
            ac_seq_request_catchup(c->sources[i]->seq);
    pump(c);
}

static void on_kick(struct ev_loop *loop, ev_timer *w, int revents)
{
    pump(ac_container_of(w, ac_consumer_t, kick));
}

/* pump() from the loop, after the current callback. */
static void pump_soon(ac_consumer_t *c)
{
    if (!ev_is_active(&c->kick)) {
        ev_timer_set(&c->kick, 0., 0.);
        ev_timer_start(c->loop, &c->kick);
    }
}

/* --- receiving ----------------------------------------------------------------------------- */

/* One event (live or replayed): topic and the envelope bytes, which it takes. 1 when it
 * was a well-formed event (for us or not), 0 when it was garbage. */
static int take_event(ac_consumer_t *c, const char *where, const uint8_t *topic, size_t topic_len,
                      uint8_t **raw_p, size_t len, int is_replayed, csource_t *replay_of)
{
    Aftercare__V1__Envelope *env;
    csource_t *s;
    cevent_t *e;

    if (topic_len == 0 || topic_len > AC_TOPIC_MAX || strlen((const char *)topic) != topic_len) {
        garbage(c, where, "bad topic frame", is_replayed ? 4 : 2);
        return 0;
    }
    env = aftercare__v1__envelope__unpack(NULL, len, *raw_p);
    if (!env || !env->source || !source_is_valid(env->source, strlen(env->source)) ||
        env->sequence == 0) {
        garbage(c, where,
                env ? "an event without a valid source or sequence"
                    : "the envelope does not decode",
                is_replayed ? 4 : 2);
        if (env)
            aftercare__v1__envelope__free_unpacked(env, NULL);
        /* its sequence is unknown: the replay's end must not claim it as filtered */
        if (replay_of)
            replay_of->is_request_tainted = 1;
        return 0;
    }
    s = source_for(c, env->source);
    if (!s) {
        aftercare__v1__envelope__free_unpacked(env, NULL);
        return 1; /* a source this consumer does not follow */
    }
    if (!s->is_positioned) {
        if (!s->is_from_live || is_replayed) {
            aftercare__v1__envelope__free_unpacked(env, NULL);
            return 1; /* the initial replay, once the checkpoint is read, covers it */
        }
        position_from_live(s, env->sequence);
    }
    e = calloc(1, sizeof(*e));
    if (!e || !(e->topic = strdup((const char *)topic))) {
        ac_error("consumer %s: out of memory; %s sequence %llu is fetched again later", c->name,
                 s->name, (unsigned long long)env->sequence);
        ac_seq_note_latest(s->seq, env->sequence);
        if (replay_of)
            replay_of->is_request_tainted = 1;
        free(e);
        aftercare__v1__envelope__free_unpacked(env, NULL);
        return 1;
    }
    if (!is_replayed) {
        /* one connection delivers in order: a jump is what the bus dropped for us (or a
         * topic filter hid); a step back is a publisher resending after a restart */
        if (s->last_live && env->sequence > s->last_live + 1) {
            c->stats.live_missed += env->sequence - s->last_live - 1;
            count(c, "consumer_live_missed_total", s->labels,
                  (double)(env->sequence - s->last_live - 1));
        }
        s->last_live = env->sequence;
    }
    e->sequence = env->sequence;
    e->env = env;
    e->raw = *raw_p;
    e->len = len;
    *raw_p = NULL;
    switch (ac_seq_offer(s->seq, e->sequence, e)) {
    case AC_SEQ_BUFFERED:
        break;
    case AC_SEQ_DUPLICATE:
        c->stats.duplicates++;
        count(c, "consumer_duplicates_total", s->labels, 1);
        cevent_free(e);
        break;
    case AC_SEQ_DROPPED:
        count(c, "consumer_events_dropped_total", s->labels, 1);
        cevent_free(e);
        break;
    }
    return 1;
}

/* Only the bus's own heartbeat counts: sequence 0, source "aftercare/bus" (the bus refuses
 * "bus." topics from services, and a forged one must not make us replay or position). */
static void take_heartbeat(ac_consumer_t *c, ac_frames_t *f)
{
    Aftercare__V1__Envelope *env = aftercare__v1__envelope__unpack(NULL, f->len[1], f->data[1]);
    if (!env || env->payload_case != AFTERCARE__V1__ENVELOPE__PAYLOAD_BUS_HEARTBEAT ||
        !env->bus_heartbeat) {
        garbage(c, "output", "a heartbeat without a BusHeartbeat", f->n);
        if (env)
            aftercare__v1__envelope__free_unpacked(env, NULL);
        return;
    }
    if (env->sequence != 0 || !env->source || strcmp(env->source, AC_BUS_HEARTBEAT_SOURCE) != 0) {
        garbage(c, "output", "a heartbeat that is not the bus's (source or sequence)", f->n);
        aftercare__v1__envelope__free_unpacked(env, NULL);
        return;
    }
    c->last_heard_at = ev_now(c->loop);
    for (size_t i = 0; i < env->bus_heartbeat->n_sources; i++) {
        const Aftercare__V1__SourcePosition *p = env->bus_heartbeat->sources[i];
        csource_t *s = p && p->source ? source_for(c, p->source) : NULL;
        if (!s)
            continue;
        if (!s->is_positioned && s->is_from_live)
            position_from_live(s, p->last_sequence + 1);
        ac_seq_note_latest(s->seq, p->last_sequence);
    }
    aftercare__v1__envelope__free_unpacked(env, NULL);
}

static void on_sub_readable(ac_zsock_t *sock, void *arg)
{
    ac_consumer_t *c = arg;
    static const char hb[] = "bus.heartbeat";
    for (int i = 0; i < RECV_BATCH; i++) {
        ac_frames_t f;
        int rc = ac_zsock_recv(sock, &f);
        if (rc == AC_ERR_AGAIN)
            break;
        if (rc != 0)
            continue;
        if (f.n != 2)
            garbage(c, "output", "not two frames", f.n);
        else if (f.len[0] == sizeof(hb) - 1 && memcmp(f.data[0], hb, sizeof(hb) - 1) == 0)
            take_heartbeat(c, &f);
        else if (take_event(c, "output", f.data[0], f.len[0], &f.data[1], f.len[1], 0, NULL))
            c->last_heard_at = ev_now(c->loop); /* the live stream flows */
        ac_frames_clear(&f);
    }
    pump(c);
}

static csource_t *source_of_request(const ac_consumer_t *c, const char *request_id)
{
    if (!request_id || !*request_id)
        return NULL;
    for (size_t i = 0; i < c->nsources; i++)
        if (strcmp(c->sources[i]->request_id, request_id) == 0)
            return c->sources[i];
    return NULL;
}

static int frame_is(const ac_frames_t *f, size_t i, const char *text)
{
    size_t n = strlen(text);
    return f->len[i] == n && memcmp(f->data[i], text, n) == 0;
}

/* The answer to s's replay ended at last: claim what it covered, or (an event in it could
 * not be taken) nothing; back off when it brought nothing and stopped short. */
static void replay_ended(ac_consumer_t *c, csource_t *s, uint64_t last, uint64_t events)
{
    int is_short = last < s->request_target && events == 0 && s->request_events == 0;
    if (s->is_request_tainted) {
        if (s->tainted_from != s->request_from) {
            s->tainted_from = s->request_from;
            s->tainted_tries = 0;
        }
        if (++s->tainted_tries < POISON_ATTEMPTS) {
            ac_warn("consumer %s: replay %s of %s from %llu brought an event that could not be "
                    "taken: asking for it again",
                    c->name, s->request_id, s->name, (unsigned long long)s->request_from);
            ac_seq_replay_abort(s->seq);
            replay_forget(s);
            replay_hold(s, ac_backoff_next(&s->replay_backoff));
            return;
        }
        c->stats.dead_letters++;
        count(c, "consumer_dead_letters_total", s->labels, 1);
        ac_error("consumer %s: replays of %s %llu..%llu brought an undecodable event %d times: "
                 "giving it up (it is passed over as filtered; see the outbox)",
                 c->name, s->name, (unsigned long long)s->request_from, (unsigned long long)last,
                 s->tainted_tries);
        s->tainted_tries = 0;
        s->tainted_from = 0;
    }
    ac_seq_replay_end(s->seq, last);
    replay_forget(s);
    if (!is_short) {
        s->idle_tries = 0;
        ac_backoff_reset(&s->replay_backoff);
        return;
    }
    /* the bus has nothing beyond last (yet): asking again at once would be a storm */
    if (++s->idle_tries >= IDLE_TRIES_MAX) {
        ac_warn("consumer %s: %s sequences up to %llu were announced but replays end at %llu: "
                "not asking for them until they are announced again",
                c->name, s->name, (unsigned long long)s->request_target, (unsigned long long)last);
        ac_seq_lower_latest(s->seq, last);
        s->idle_tries = 0;
    }
    replay_hold(s, ac_backoff_next(&s->replay_backoff));
}

static void take_replay_end(ac_consumer_t *c, ac_frames_t *f)
{
    Aftercare__V1__ReplayEnd *end = aftercare__v1__replay_end__unpack(NULL, f->len[1], f->data[1]);
    csource_t *s;
    if (!end) {
        garbage(c, "replay", "a ReplayEnd that does not decode", f->n);
        return;
    }
    s = source_of_request(c, end->request_id);
    if (!s) {
        ac_debug("consumer %s: ignoring the end of replay %s (no longer waited for)", c->name,
                 end->request_id ? end->request_id : "");
    } else if (strcmp(end->source, s->name) != 0 || (end->last_sequence + 1 < s->request_from) ||
               (s->request_to && end->last_sequence > s->request_to)) {
        garbage(c, "replay", "a ReplayEnd that does not match its request", f->n);
    } else {
        ac_debug("consumer %s: replay %s of %s %llu..%llu: %llu events", c->name, s->request_id,
                 s->name, (unsigned long long)s->request_from,
                 (unsigned long long)end->last_sequence, (unsigned long long)end->events);
        if (s->request_why == AC_SEQ_REPLAY_CATCHUP && s->request_events > 0) {
            c->stats.gaps++;
            count(c, "consumer_gaps_total", s->labels, 1);
            ac_info("consumer %s: gap in %s: the catch-up replay from %llu brought %llu events "
                    "the live stream had not",
                    c->name, s->name, (unsigned long long)s->request_from,
                    (unsigned long long)s->request_events);
        }
        replay_ended(c, s, end->last_sequence, end->events);
    }
    aftercare__v1__replay_end__free_unpacked(end, NULL);
}

static void take_replay_error(ac_consumer_t *c, ac_frames_t *f)
{
    Aftercare__V1__ReplayError *re =
        aftercare__v1__replay_error__unpack(NULL, f->len[1], f->data[1]);
    const ProtobufCEnumValue *code;
    char labels[SOURCE_MAX + 48];
    csource_t *s;
    double delay_s;

    if (!re) {
        garbage(c, "replay", "a ReplayError that does not decode", f->n);
        return;
    }
    s = source_of_request(c, re->request_id);
    if (!s) {
        ac_warn("consumer %s: replay error for request \"%s\" (no longer waited for): %s", c->name,
                re->request_id ? re->request_id : "", re->message);
        aftercare__v1__replay_error__free_unpacked(re, NULL);
        return;
    }
    code = protobuf_c_enum_descriptor_get_value(&aftercare__v1__replay_error__code__descriptor,
                                                (int)re->code);
    c->stats.replay_errors++;
    snprintf(labels, sizeof(labels), "%s,code=\"%s\"", s->labels, code ? code->name : "unknown");
    count(c, "consumer_replay_errors_total", labels, 1);
    ac_seq_replay_abort(s->seq);
    replay_forget(s);
    switch (re->code) {
    case AFTERCARE__V1__REPLAY_ERROR__CODE__BUSY:
    case AFTERCARE__V1__REPLAY_ERROR__CODE__UNAVAILABLE:
        delay_s = ac_backoff_next(&s->replay_backoff);
        ac_info("consumer %s: replay of %s refused for now (%s): asking again in %.1f s", c->name,
                s->name, code ? code->name : "?", delay_s);
        break;
    case AFTERCARE__V1__REPLAY_ERROR__CODE__PRUNED:
        if (c->cfg->is_skip_pruned && re->oldest_sequence > ac_seq_next(s->seq)) {
            ac_error("consumer %s: %s sequences %llu..%llu were pruned from the outbox and are "
                     "lost to this consumer: going on from %llu (is_skip_pruned)",
                     c->name, s->name, (unsigned long long)ac_seq_next(s->seq),
                     (unsigned long long)re->oldest_sequence - 1,
                     (unsigned long long)re->oldest_sequence);
            ac_seq_reset(s->seq, re->oldest_sequence);
            delay_s = 0.;
        } else {
            ac_error("consumer %s: %s cannot be replayed from %llu: pruned from the outbox, "
                     "the oldest still there is %llu (%s). Not skipping; asking again in %.0f s",
                     c->name, s->name, (unsigned long long)s->request_from,
                     (unsigned long long)re->oldest_sequence, re->message, PRUNED_RETRY_S);
            delay_s = PRUNED_RETRY_S;
        }
        break;
    default:
        ac_error("consumer %s: replay of %s %llu..%llu refused (%s): %s; asking again in %.0f s",
                 c->name, s->name, (unsigned long long)s->request_from,
                 (unsigned long long)s->request_to, code ? code->name : "unknown code", re->message,
                 REFUSED_RETRY_S);
        delay_s = REFUSED_RETRY_S;
        break;
    }
    if (delay_s > 0.)
        replay_hold(s, delay_s);
    aftercare__v1__replay_error__free_unpacked(re, NULL);
}

static void on_dealer_readable(ac_zsock_t *sock, void *arg)
{
    ac_consumer_t *c = arg;
    for (int i = 0; i < RECV_BATCH && !c->is_dealer_paused; i++) {
        ac_frames_t f;
        int rc = ac_zsock_recv(sock, &f);
        if (rc == AC_ERR_AGAIN)
            break;
        if (rc != 0)
            continue;
        if (f.n == 4 && frame_is(&f, 0, "replay.event")) {
            csource_t *s = source_of_request(c, (const char *)f.data[1]);
            if (s) { /* still answering: not timed out */
                s->request_events++;
                ev_timer_stop(c->loop, &s->replay_timer);
                ev_timer_set(&s->replay_timer, c->replay_timeout_s, 0.);
                ev_timer_start(c->loop, &s->replay_timer);
            }
            take_event(c, "replay", f.data[2], f.len[2], &f.data[3], f.len[3], 1, s);
        } else if (f.n == 2 && frame_is(&f, 0, "replay.end")) {
            take_replay_end(c, &f);
        } else if (f.n == 2 && frame_is(&f, 0, "replay.error")) {
            take_replay_error(c, &f);
        } else {
            garbage(c, "replay", "not a replay answer", f.n);
        }
        ac_frames_clear(&f);
        if ((i & 63) == 63)
            dealer_flow(c); /* in database mode, events pile up until pump() */
    }
    pump(c);
}

/* --- lifecycle ------------------------------------------------------------------------------ */

static void declare_metrics(ac_metrics_t *m)
{
    static const struct {
        const char *name;
        ac_metric_type_t type;
        const char *help;
    } families[] = {
        {"consumer_events_applied_total", AC_METRIC_COUNTER, "Events applied, per source"},
        {"consumer_duplicates_total", AC_METRIC_COUNTER, "Events dropped as duplicates"},
        {"consumer_gaps_total", AC_METRIC_COUNTER, "Replays started for missing events"},
        {"consumer_replays_total", AC_METRIC_COUNTER, "Replay requests sent"},
        {"consumer_replay_errors_total", AC_METRIC_COUNTER, "Replay errors and timeouts"},
        {"consumer_garbage_total", AC_METRIC_COUNTER, "Malformed messages dropped"},
        {"consumer_dead_letters_total", AC_METRIC_COUNTER, "Events given up on"},
        {"consumer_events_failed_total", AC_METRIC_COUNTER, "Handler errors (memory mode)"},
        {"consumer_live_missed_total", AC_METRIC_COUNTER,
         "Sequences the live stream skipped (dropped by the bus for this subscriber, or "
         "hidden by a topic filter)"},
        {"consumer_events_dropped_total", AC_METRIC_COUNTER,
         "Events beyond the window, fetched again later"},
        {"consumer_db_retries_total", AC_METRIC_COUNTER, "Transactions retried"},
        {"consumer_next_sequence", AC_METRIC_GAUGE, "Next sequence expected, per source"},
        {"consumer_latest_sequence", AC_METRIC_GAUGE, "Latest sequence known, per source"},
    };
    for (size_t i = 0; i < AC_ARRAY_LEN(families); i++)
        ac_metrics_declare(m, families[i].name, families[i].type, families[i].help);
}

static int setup_sockets(ac_consumer_t *c)
{
    const ac_consumer_config_t *cfg = c->cfg;
    int rcvhwm = cfg->rcvhwm > 0 ? cfg->rcvhwm : DEFAULT_RCVHWM;
    size_t dealer_rcvhwm = c->window / 2 < 100     ? 100
                           : c->window / 2 > 10000 ? 10000
                                                   : c->window / 2;

    c->sub = ac_zsock_new(c->loop, AC_ZSOCK_SUB);
    if (!c->sub || ac_zsock_set_hwm(c->sub, 1000, rcvhwm) ||
        ac_zsock_set_maxmsgsize(c->sub, SUB_MAX_MSG) ||
        (cfg->curve && ac_zsock_set_curve_client(c->sub, cfg->curve)))
        return -1;
    if (!c->is_filtered) {
        if (ac_zsock_subscribe(c->sub, ""))
            return -1;
    } else {
        for (const char *const *t = cfg->topics; *t; t++)
            if (ac_zsock_subscribe(c->sub, *t))
                return -1;
        if (ac_zsock_subscribe(c->sub, "bus.heartbeat"))
            return -1;
    }
    /* subscribe first: the replay must start after live events are being caught */
    if (ac_zsock_connect(c->sub, cfg->output_endpoint))
        return -1;
    ac_zsock_on_readable(c->sub, on_sub_readable, c);

    c->dealer = ac_zsock_new(c->loop, AC_ZSOCK_DEALER);
    /* what waits in the socket while replays are paused should fit the window */
    if (!c->dealer || ac_zsock_set_hwm(c->dealer, 100, (int)dealer_rcvhwm) ||
        ac_zsock_set_maxmsgsize(c->dealer, DEALER_MAX_MSG) ||
        ac_zsock_set_immediate(c->dealer, 1) ||
        (cfg->curve && ac_zsock_set_curve_client(c->dealer, cfg->curve)) ||
        ac_zsock_connect(c->dealer, cfg->replay_endpoint))
        return -1;
    ac_zsock_on_readable(c->dealer, on_dealer_readable, c);
    return 0;
}

ac_consumer_t *ac_consumer_new(struct ev_loop *loop, const ac_consumer_config_t *cfg)
{
    ac_consumer_t *c;
    const char *name = cfg->name && *cfg->name ? cfg->name : "consumer";
    size_t ntopics = 0;

    if (!cfg->output_endpoint || !cfg->replay_endpoint) {
        ac_error("consumer %s: the bus output and replay endpoints are required", name);
        return NULL;
    }
    if (cfg->db && !schema_is_valid(cfg->schema)) {
        ac_error("consumer %s: invalid schema name \"%s\"", name, cfg->schema ? cfg->schema : "");
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->loop = loop;
    c->cfg = cfg;
    c->name = name;
    c->window = cfg->window > 0 ? cfg->window : DEFAULT_WINDOW;
    c->batch_max = cfg->batch_max > 0 ? cfg->batch_max : DEFAULT_BATCH;
    c->replay_timeout_s = cfg->replay_timeout_s > 0 ? cfg->replay_timeout_s : DEFAULT_TIMEOUT_S;
    c->silence_s = cfg->silence_s > 0 ? cfg->silence_s : DEFAULT_SILENCE_S;
    for (const char *const *t = cfg->topics; t && *t; t++) {
        if (strlen(*t) > AC_TOPIC_MAX) {
            ac_error("consumer %s: topic prefix \"%.32s...\" is too long", name, *t);
            free(c);
            return NULL;
        }
        if (**t == '\0') { /* "" is every topic */
            ntopics = 0;
            break;
        }
        ntopics++;
    }
    c->is_filtered = ntopics > 0;
    snprintf(c->replay_prefix, sizeof(c->replay_prefix), "%s", ntopics == 1 ? cfg->topics[0] : "");
    /* request ids: printable, without the characters a source name may not have */
    snprintf(c->id_prefix, sizeof(c->id_prefix), "%s", name);
    for (char *p = c->id_prefix; *p; p++)
        if (*p <= ' ' || *p > '~')
            *p = '_';
    ev_timer_init(&c->kick, on_kick, 0., 0.);
    ev_timer_init(&c->silence, on_silence, c->silence_s / 2, c->silence_s / 2);
    c->last_heard_at = ev_now(loop);
    ev_timer_init(&c->apply_retry, on_apply_retry, 1., 0.);
    ac_backoff_init(&c->apply_backoff, 0.1, 5.);
    if (cfg->db) {
        snprintf(c->sql_advance, SQL_MAX, SQL_ADVANCE, cfg->schema);
        snprintf(c->sql_load, SQL_MAX, SQL_LOAD, cfg->schema);
        snprintf(c->sql_dead, SQL_MAX, SQL_DEAD, cfg->schema);
        c->batch = calloc((size_t)c->batch_max, sizeof(cevent_t *));
        if (!c->batch)
            goto fail;
    }
    if (cfg->metrics)
        declare_metrics(cfg->metrics);
    if (setup_sockets(c) != 0)
        goto fail;
    for (const char *const *src = cfg->sources; src && *src; src++)
        if (!source_find(c, *src) && !source_add(c, *src))
            goto fail;
    for (const ac_consumer_start_t *st = cfg->db ? NULL : cfg->starts; st && st->source; st++)
        if (!source_find(c, st->source) && !source_add(c, st->source))
            goto fail;
    ev_timer_start(loop, &c->kick); /* the first replays go out from the loop */
    ev_timer_start(loop, &c->silence);
    return c;
fail:
    ac_error("consumer %s: cannot start", name);
    ac_consumer_destroy(&c);
    return NULL;
}

void ac_consumer_destroy(ac_consumer_t **self_p)
{
    ac_consumer_t *c = self_p ? *self_p : NULL;
    if (!c)
        return;
    ev_timer_stop(c->loop, &c->kick);
    ev_timer_stop(c->loop, &c->silence);
    ev_timer_stop(c->loop, &c->apply_retry);
    ac_db_txn_free(&c->txn); /* rolled back: its events come again after a restart */
    for (size_t i = 0; i < c->nbatch; i++)
        cevent_free(c->batch[i]);
    free(c->batch);
    for (size_t i = 0; i < c->nsources; i++)
        source_destroy(c, c->sources[i]);
    ac_zsock_destroy(&c->sub);
    ac_zsock_destroy(&c->dealer);
    free(c);
    *self_p = NULL;
}

void ac_consumer_recheck(ac_consumer_t *self)
{
    if (self == NULL || self->cfg->db == NULL)
        return;
    self->is_recheck_wanted = 1;
    pump(self);
}

void ac_consumer_stats(const ac_consumer_t *self, ac_consumer_stats_t *out)
{
    *out = self->stats;
}

uint64_t ac_consumer_next(const ac_consumer_t *self, const char *source)
{
    const csource_t *s = source_find(self, source);
    return s && s->is_positioned ? ac_seq_next(s->seq) : 0;
}
