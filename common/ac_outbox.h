/* ac_outbox.h — the transactional outbox and its relay.
 *
 * Every service that publishes owns <schema>.outbox (created by ac_outbox_migrate()):
 *   id bigserial, event_id uuid unique, topic text, envelope bytea (packed Envelope
 *   without sequence), created_at
 * and, next to it, <schema>.outbox_pending_run (lo, hi: ids committed and not numbered
 * yet, one row per gap-free range of ids an INSERT wrote; the insert trigger fills it),
 * <schema>.outbox_run (first_seq, first_id, n: ids first_id.. carry sequences first_seq..,
 * the numbering, append-only), <schema>.outbox_state (last_seq: last number assigned;
 * published_seq: last number handed to the bus), the function
 * <schema>.outbox_span(from, to) (the id ranges of a sequence range) and the view
 * <schema>.outbox_sequenced (the outbox with its sequence, NULL while unnumbered). A
 * writer inserts into the outbox in the same transaction as its state change:
 *   INSERT INTO <schema>.outbox (event_id, topic, envelope) VALUES ($1, $2, $3)
 * ($3 binary). A statement trigger records the new ids as pending and sends NOTIFY
 * <schema>_outbox.
 *
 * The relay (one per service) is woken by that NOTIFY (and polls once a second as a
 * safety net). In one transaction it takes the oldest pending runs, numbers their ids
 * last_seq+1, last_seq+2, ... (gap-free from 1, kept across restarts) in outbox_run without
 * touching the outbox rows, commits, then publishes them in order to the bus input, several per
 * ZeroMQ message (ac_bus.h, batches); published_seq records what went out, lagging 2 s
 * behind so that what a killed process's socket still held counts as unsent. After a crash,
 * events after the recorded published_seq are published again first (at-least-once;
 * subscribers drop duplicates by sequence). Nothing is sent until the bus has subscribed,
 * so events are never dropped by ZeroMQ's publisher for want of a subscriber.
 *
 * Retention: rows stay in the outbox, where the bus's replay reads them, for
 * cfg->retention_s; a prune job deletes, oldest first and in bounded chunks, events (rows
 * and numbers) whose sequence is at most the recorded published_seq and that are older
 * than that. It never leaves a hole: it stops at the first row (in sequence order) that
 * must stay.
 * The outbox migrations GRANT SELECT on these tables to role ac_bus when it exists.
 *
 * Owns: its own two-connection ac_db pool (relay; prune and VACUUM), its bus publisher, its timers.
 */
#ifndef AC_OUTBOX_H
#define AC_OUTBOX_H

#include <stdint.h>
#include <stdio.h>

#include "ac_err.h"

struct ev_loop;
struct ac_db_txn;
struct ac_metrics;
struct ac_curve;

typedef struct ac_outbox ac_outbox_t;

typedef struct ac_outbox_config {
    const char *conninfo;         /* the service's own login */
    const char *schema;           /* "intake" */
    const char *source;           /* "aftercare/intake" */
    const char *bus_endpoint;     /* bus input, "tcp://127.0.0.1:5570" */
    const struct ac_curve *curve; /* client keys for the bus input (borrowed); NULL = none */
    int batch;                    /* rows per numbering transaction; default 500 when 0 */
    double retention_s;           /* keep published rows this long; 0 = for ever */
    struct ac_metrics *metrics;   /* borrowed, may be NULL */
} ac_outbox_config_t;

/* Blocking, start-up only: creates/updates the outbox tables of schema. */
int ac_outbox_migrate(const char *conninfo, const char *schema, double wait_s) AC_WUR;
/* The same, stopping after migration `version`: for tests of an upgrade with data. */
int ac_outbox_migrate_upto(const char *conninfo, const char *schema, int version,
                           double wait_s) AC_WUR;

ac_outbox_t *ac_outbox_new(struct ev_loop *loop, const ac_outbox_config_t *cfg);
void ac_outbox_destroy(ac_outbox_t **self_p);

/* Outbox rows (event id, topic, envelope) collected for one multi-row INSERT: a service's
 * batch of events written with one statement (one executor start, one run of the outbox's
 * statement trigger) instead of one each. */
typedef struct ac_outbox_rows {
    FILE *ids, *topics, *bodies; /* open_memstream()s over the buffers below */
    char *ids_buf, *topics_buf, *bodies_buf;
    size_t ids_len, topics_len, bodies_len;
    size_t n;
} ac_outbox_rows_t;
int ac_outbox_rows_init(ac_outbox_rows_t *r) AC_WUR;
int ac_outbox_rows_append(ac_outbox_rows_t *r, const char *event_id, const char *topic,
                          const uint8_t *envelope, size_t len) AC_WUR;
/* Queues the service's prepared statement `stmt`, which must be
 *   INSERT INTO <schema>.outbox (event_id, topic, envelope)
 *   SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[])
 * with every row appended so far (the envelopes as a binary bytea[]). */
int ac_outbox_rows_add(struct ac_db_txn *t, int stmt, ac_outbox_rows_t *r) AC_WUR;
void ac_outbox_rows_clear(ac_outbox_rows_t *r);

/* Queues, on t and before its outbox inserts, that this transaction's inserts send no
 * NOTIFY; the writer calls ac_outbox_wake() once the commit has succeeded (or its outcome
 * is unknown). For a busy writer in the relay's own process: a NOTIFY holds PostgreSQL's
 * database-wide NOTIFY lock until the commit is on disk, so every other notifying commit
 * waits behind a synchronous one. A wake that is lost (a crash right after COMMIT) costs
 * at most the relay's one-second poll. */
int ac_outbox_add_self_wake(struct ac_db_txn *t) AC_WUR;

/* Wakes the relay at once, as its NOTIFY would. NULL: nothing. */
void ac_outbox_wake(ac_outbox_t *self);
/* Last sequence handed to the bus socket (0 before the first). */
uint64_t ac_outbox_published_seq(const ac_outbox_t *self);

#endif
