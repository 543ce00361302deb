/* ac_consumer.h — following other sources' event streams without losing or repeating an
 * event: the pattern every service uses, and the one docs/events.md describes for outside
 * subscribers.
 *
 * Per source the consumer keeps the next sequence it expects (ac_sequencer.h decides):
 *   1. It subscribes first (SUB on the bus output: the topic prefixes and
 *      "bus.heartbeat"), then asks the replay endpoint (DEALER) for everything from its
 *      position (checkpoint + 1) on, and holds live events meanwhile.
 *   2. A live or replayed event below the expected sequence is a duplicate and dropped;
 *      the expected one is applied; a later one waits and the missing range is replayed.
 *   3. A heartbeat whose last_sequence is beyond what was received means events were
 *      missed (a slow subscriber's queue overflowed, the bus restarted): replayed too.
 *   4. No heartbeat at all for silence_s (the live connection stalled or the bus's output
 *      was re-created): a catch-up replay from the first missing sequence to the latest.
 * At most one replay runs per source. Replay errors: BUSY and UNAVAILABLE are retried with
 * backoff, as is a replay that gets no answer within replay_timeout_s; PRUNED (the events
 * are gone from the outbox) is logged as an error with the oldest sequence still there
 * and retried every minute, unless is_skip_pruned, which moves on to the oldest one;
 * BAD_REQUEST, UNKNOWN_SOURCE and FORBIDDEN are logged as errors and retried every 30 s
 * (a person must act; the consumer keeps its place meanwhile). Events beyond the window
 * of a source are not kept (replayed again later), so memory stays bounded. Malformed
 * messages on either socket are counted and logged, never fatal.
 *
 * Database mode (db set): the position of each source is <schema>.consumer_checkpoints
 * (created by ac_consumer_migrate()). Events are applied in transactions of up to
 * batch_max consecutive events of one source: the handler adds its statements to the
 * transaction it is given, the consumer adds the checkpoint update — conditional on the
 * checkpoint still being where this consumer last saw it, so an event delivered twice, or
 * seen by a second instance of the service, is applied once — and commits. Outcomes:
 *   - committed: the checkpoint moved; the next batch follows.
 *   - the checkpoint was not where expected (another instance moved it): re-read, go on
 *     from there (what it applied is dropped as duplicate).
 *   - AC_ERR_UNAVAILABLE, or a transient SQL error (serialization failure, deadlock,
 *     class 08/53/57): retried with backoff, nothing lost.
 *   - any other SQL error: the batch is retried one event at a time to find the event
 *     that fails; that event is tried POISON_ATTEMPTS (3) times in all, then recorded in
 *     <schema>.consumer_dead_letters (envelope, error) in the same transaction as the
 *     checkpoint moving past it, logged as an error and counted. A poison event so costs
 *     a few seconds, never the stream; an operator can re-apply it from the table. But
 *     after 10 events of a source in a row went that way, the fault is taken to be the
 *     service's (a missing column, a revoked grant), not the events': the stream is held
 *     and the failing event retried with backoff until a person fixes it.
 * A handler that returns AC_ERR_INVALID or AC_ERR_PROTO (the event cannot be used) gets
 * the same dead-letter record at once; any other error retries the batch with backoff.
 * With topic filters, the checkpoint also moves past ranges of other topics without any
 * event (every few seconds, or at once when a window's worth was passed over).
 * Limitation: a checkpoint row is keyed by source only, not by consumer. One schema holds
 * the position of ONE consumer per source: two different consumers (other topics, other
 * handlers) of the same source must use different schemas, or they would share (and
 * fight over) one checkpoint. Two instances of the same consumer sharing it is intended.
 *
 * Memory mode (db NULL): positions come from `starts` (source -> next sequence) and live
 * in memory; the handler runs with txn == NULL as each event comes in order; its errors
 * are logged and counted. Used by `aftercarectl events tail --from`.
 *
 * Owns: its SUB and DEALER sockets, one sequencer per source, the events held, its
 * timers and the transaction in flight. Borrows the loop, the db pool, the metrics. */
#ifndef AC_CONSUMER_H
#define AC_CONSUMER_H

#include <stddef.h>
#include <stdint.h>

#include "aftercare/v1/envelope.pb-c.h"
#include "ac_err.h"

struct ev_loop;
struct ac_metrics;
struct ac_curve;
struct ac_db;
struct ac_db_txn;

typedef struct ac_consumer ac_consumer_t;

/* One event handed to a handler; everything is borrowed for the call. */
typedef struct ac_consumer_event {
    const Aftercare__V1__Envelope *env; /* decoded */
    const char *topic;                  /* "ticket.created" */
    const char *source;                 /* env->source */
    uint64_t sequence;                  /* env->sequence */
    const uint8_t *envelope;            /* the envelope bytes as received */
    size_t envelope_len;
} ac_consumer_event_t;

/* Database mode: add the event's effects to txn (statements only; they run at commit).
 * 0 applied; AC_ERR_INVALID / AC_ERR_PROTO: unusable, dead-lettered and skipped; other
 * errors: the batch is retried later. Memory mode: txn is NULL. */
typedef int (*ac_consumer_fn)(const ac_consumer_event_t *ev, struct ac_db_txn *txn, void *arg);

typedef struct ac_consumer_route {
    const ProtobufCMessageDescriptor *descriptor; /* payload type; NULL ends the table */
    ac_consumer_fn handler;
} ac_consumer_route_t;

typedef struct ac_consumer_start {
    const char *source;     /* NULL ends the table */
    uint64_t next_sequence; /* >= 1: the first sequence to deliver */
} ac_consumer_start_t;

typedef struct ac_consumer_config {
    const char *name;                  /* for logs and request ids: "intake" */
    const char *output_endpoint;       /* bus output, "tcp://127.0.0.1:5571" */
    const char *replay_endpoint;       /* bus replay, "tcp://127.0.0.1:5572" */
    const struct ac_curve *curve;      /* client keys (borrowed); NULL = no CURVE (tests only) */
    const char *const *sources;        /* NULL-terminated sources to follow; may be NULL */
    int is_follow_all;                 /* also every source a heartbeat or an event names */
    const char *const *topics;         /* NULL-terminated topic prefixes; NULL = every topic */
    const ac_consumer_route_t *routes; /* by payload type; may be NULL */
    ac_consumer_fn on_event;           /* events without a route; NULL = skipped */
    void *arg;                         /* for the handlers */

    /* database mode */
    struct ac_db *db;   /* borrowed pool; NULL = memory mode */
    const char *schema; /* where consumer_checkpoints lives: "intake" */
    int batch_max;      /* events per transaction; default 64 */
    /* optional, for handlers that apply a transaction's events with one statement: called
     * before the first event of a transaction is handed over (forget what a batch that
     * did not commit left), and after the last one, before the checkpoint moves (add the
     * statement; non-zero: the batch is retried later, as for a handler's error) */
    void (*on_batch_begin)(void *arg);
    int (*on_batch_end)(struct ac_db_txn *txn, void *arg);
    /* optional: the transaction's COMMIT came back (err 0: committed; otherwise it failed
     * or its outcome is unknown, and its events will be applied again) */
    void (*on_batch_done)(int err, void *arg);
    /* 1: the transactions commit without waiting for their WAL to reach the disk. For a
     * service whose handlers' effects reach the outside only through its outbox relay,
     * whose numbering commit is synchronous: PostgreSQL's WAL is written in order, so that
     * commit makes every earlier one durable too, and a crash before it loses the last
     * transactions together with their checkpoint — their events are applied again. */
    int is_commit_async;

    /* memory mode: where each source starts; a followed source without an entry starts
     * at the first live event or heartbeat seen (no initial replay) */
    const ac_consumer_start_t *starts;

    int is_skip_pruned;         /* PRUNED: go on from the oldest sequence still there */
    int rcvhwm;                 /* SUB receive queue in messages; default 100000 */
    size_t window;              /* events held per source; default 16384 */
    double replay_timeout_s;    /* no answer to a replay for this long: ask again; default 5 */
    double silence_s;           /* no heartbeat for this long: catch up by replay; default 3 */
    struct ac_metrics *metrics; /* borrowed, may be NULL */
} ac_consumer_config_t;

typedef struct ac_consumer_stats {
    uint64_t applied;       /* events handed to a handler and committed (memory: handled) */
    uint64_t duplicates;    /* events dropped as already applied or held */
    uint64_t gaps;          /* replays started because events were found missing */
    uint64_t replays;       /* replay requests sent (the initial ones included) */
    uint64_t live_missed;   /* sequences the live stream skipped (the bus dropped them for
                               this subscriber, or a topic filter hid them) */
    uint64_t replay_errors; /* ReplayError answers and timeouts */
    uint64_t garbage;       /* malformed messages on either socket */
    uint64_t dead_letters;  /* events recorded in consumer_dead_letters */
    uint64_t failed;        /* memory mode: handler errors */
    uint64_t db_retries;    /* transactions retried */
} ac_consumer_stats_t;

/* Blocking, start-up only: creates/updates <schema>.consumer_checkpoints and
 * <schema>.consumer_dead_letters (component "consumer" in schema_migrations). */
int ac_consumer_migrate(const char *conninfo, const char *schema, double wait_s) AC_WUR;

/* Connects and starts following (asynchronously). cfg and everything it points to must
 * outlive the consumer. NULL on failure (logged). */
ac_consumer_t *ac_consumer_new(struct ev_loop *loop, const ac_consumer_config_t *cfg);
/* Rolls back the transaction in flight (its events come again after a restart). */
void ac_consumer_destroy(ac_consumer_t **self_p);
/* The database may have lost recent commits (it restarted: call this when the service's
 * listening connection reconnects). A commit that was acknowledged without waiting for
 * the disk (is_commit_async) can be gone, and with it the checkpoint the consumer goes on
 * from. Once no batch is in flight, every source's checkpoint is read again and the
 * consumer goes on from there (replaying what was lost). Database mode only; safe on NULL. */
void ac_consumer_recheck(ac_consumer_t *self);
void ac_consumer_stats(const ac_consumer_t *self, ac_consumer_stats_t *out);
/* The next sequence expected from source (checkpoint + 1 once known); 0 if not followed
 * or not positioned yet. */
uint64_t ac_consumer_next(const ac_consumer_t *self, const char *source);

#endif
