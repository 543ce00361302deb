/* store.h — the bus's database access: one small pool (login ac_bus, AC_BUS_DB) and every
 * statement the bus runs against the services' outboxes (<schema>.outbox and
 * <schema>.outbox_state, SELECT granted to ac_bus by the services' outbox migrations).
 *
 * Statement texts are made per source from the schema names of AC_BUS_SOURCES, which
 * sources.c has validated; nothing else ever reaches SQL text. The pool also LISTENs on
 * channel ac_auth and hands notifications to on_notify (the HTTP token cache).
 *
 * A query is a bus_store_call_t embedded in its owner: the owner fills `done`, starts
 * the query, and gets done(call, err) later from the loop (never from inside the start
 * call). bus_store_cancel() drops a query in flight: done() is then not called.
 *
 * Owns: the pool, the statement texts. */
#ifndef BUS_STORE_H
#define BUS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "ac_err.h"

struct ev_loop;
struct ac_db;
struct ac_db_txn;

typedef struct bus_store bus_store_t;

/* Where one outbox stands. */
typedef struct bus_position {
    uint64_t last_seq;      /* outbox_state.last_seq: the last sequence assigned */
    uint64_t published_seq; /* outbox_state.published_seq: recorded as handed to the bus */
    uint64_t oldest_seq;    /* the lowest sequence still in the outbox; 0 when none */
    uint64_t unnumbered;    /* committed rows the relay has not numbered yet */
} bus_position_t;

typedef struct bus_batch_row {
    uint64_t sequence;
    const char *topic;       /* NUL-terminated, inside the batch */
    const uint8_t *envelope; /* the Envelope as the relay published it (sequence appended) */
    size_t len;
} bus_batch_row_t;

/* The rows of one replay query, copied out of the result in one allocation. */
typedef struct bus_batch {
    uint64_t last_seq;   /* the source's last_seq in the query's snapshot */
    uint64_t oldest_seq; /* the lowest sequence in the outbox in that snapshot; 0: none */
    size_t n;            /* rows, in sequence order */
    bus_batch_row_t *rows;
} bus_batch_t;
void bus_batch_free(bus_batch_t **batch_p); /* safe on NULL; sets *batch_p = NULL */

typedef struct bus_store_call {
    struct ac_db_txn *txn; /* the query in flight, or NULL */
    /* err: 0, AC_ERR_DB, AC_ERR_UNAVAILABLE (connection lost), AC_ERR_NOMEM; the store
     * logs nothing: the caller logs `error` as often as it sees fit. */
    void (*done)(struct bus_store_call *call, int err);
    char error[256];         /* done() with err != 0: why, with the SQLSTATE and message */
    bus_position_t position; /* bus_store_read_position(): valid in done() when err == 0 */
    bus_batch_t *batch;      /* bus_store_read_batch(): the caller's in done() when err == 0 */
} bus_store_call_t;

/* One replay query: the rows of `source` with from_seq <= sequence <= min(to_seq, the
 * last_seq of the query's own snapshot) whose topic starts with prefix and, unless
 * ntopics is 0, with one of topics, in sequence order. The window to_seq - from_seq + 1
 * bounds the rows (and the work): sequences are contiguous. */
typedef struct bus_batch_query {
    size_t source;             /* index in the schema list given to bus_store_new() */
    uint64_t from_seq;         /* >= 1 */
    uint64_t to_seq;           /* >= from_seq - 1 */
    const char *prefix;        /* "" = every topic */
    const char *const *topics; /* the client key's allowed prefixes */
    size_t ntopics;
} bus_batch_query_t;

/* schemas[i] is the outbox schema of source i (validated; copied). on_notify may be NULL.
 * Connects asynchronously. NULL on failure (logged). */
bus_store_t *bus_store_new(struct ev_loop *loop, const char *conninfo, const char *const *schemas,
                           size_t nschemas,
                           void (*on_notify)(void *arg, const char *channel, const char *payload),
                           void *notify_arg);
void bus_store_destroy(bus_store_t **self_p);  /* safe on NULL; sets *self_p = NULL */
struct ac_db *bus_store_db(bus_store_t *self); /* borrowed: for the token cache */
int bus_store_is_up(const bus_store_t *self);

/* Start a query. 0, or AC_ERR_UNAVAILABLE (no connection), AC_ERR_CONFLICT (call busy),
 * AC_ERR_INVALID, AC_ERR_NOMEM, with no done() following. */
int bus_store_read_position(bus_store_t *self, bus_store_call_t *call, size_t source) AC_WUR;
int bus_store_read_batch(bus_store_t *self, bus_store_call_t *call,
                         const bus_batch_query_t *q) AC_WUR;
void bus_store_cancel(bus_store_call_t *call); /* no-op when nothing is in flight */

#endif
