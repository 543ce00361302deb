/* db.c — the PostgreSQL pool on the libev loop (contract in ac_db.h).
 *
 * Notes:
 * - Every connection runs in pipeline mode and keeps a FIFO of the results it expects:
 *   one entry per query sent and one per pipeline sync. That FIFO is how a result is
 *   matched to what caused it (a prepare, BEGIN, a user statement, COMMIT, ROLLBACK).
 * - API calls (flush, commit, free) never do network I/O: they change state and arm the
 *   zero-delay `kick` timer, whose callback (db_pump) sends. So no user callback can run
 *   inside an API call, and a send failure is only noted (is_broken) and handled there.
 * - User callbacks run from watchers only, and may destroy the pool. Watchers count their
 *   nesting in `depth`; ac_db_destroy() closes everything at once but the memory is
 *   released when the outermost watcher returns. After each user callback the code checks
 *   is_destroyed and unwinds.
 * - A transaction keeps its connection until freed. Whether the server has a transaction
 *   open on a connection is tracked in is_in_txn (BEGIN ran, neither COMMIT nor ROLLBACK
 *   did); a connection released in that state gets a ROLLBACK before it is reused.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ev.h>
#include <libpq-fe.h>

#include "ac_db.h"
#include "ac_log.h"
#include "ac_time.h"

#define DB_RECONNECT_MIN_S   0.1
#define DB_RECONNECT_MAX_S   5.0
#define DB_MAX_QUEUE         10000
#define DB_CONNECT_TIMEOUT_S 10.0  /* when conninfo sets no connect_timeout */
#define DB_MAX_PARAMS        65535 /* protocol limit */
#define DB_MIGRATE_RETRY_US  500000
#define DB_MSG_MAX           512 /* one log line of a libpq message */

typedef enum {
    CONN_WAITING,    /* not connected; timer = reconnect delay */
    CONN_CONNECTING, /* PQconnectPoll in progress; timer = connect timeout */
    CONN_SETUP,      /* prepares and LISTENs in flight; timer = connect timeout */
    CONN_READY,      /* usable */
} conn_state_t;

typedef enum {
    EXPECT_SETUP,    /* PQsendPrepare or LISTEN; index = statement, -1 for LISTEN */
    EXPECT_BEGIN,    /* of the holder */
    EXPECT_USER,     /* index = statement of the round trip */
    EXPECT_COMMIT,   /* of the holder */
    EXPECT_ROLLBACK, /* of a transaction released unfinished */
    EXPECT_SYNC,     /* index = sync_kind_t */
} expect_kind_t;

typedef enum { SYNC_SETUP, SYNC_TXN, SYNC_ROLLBACK } sync_kind_t;

typedef struct expect {
    expect_kind_t kind;
    int index;
    int has_result; /* the query's result came; the NULL that ends it is next */
} expect_t;

typedef struct db_conn {
    ac_db_t *db; /* owner */
    int index;   /* 0 LISTENs */
    conn_state_t state;
    PGconn *pg;           /* owned; NULL while CONN_WAITING */
    ev_io io;             /* the libpq socket */
    int io_events;        /* what io watches now (0 when stopped) */
    ev_timer timer;       /* reconnect delay or connect timeout, by state */
    ac_backoff_t backoff; /* reconnect delays */
    unsigned nfailures;   /* consecutive failed attempts (for logging) */
    ac_db_txn_t *txn;     /* the holder, NULL when free */
    expect_t *expect;     /* ring of expected results, owned */
    size_t expect_head, nexpect, expect_cap;
    int is_in_txn;       /* the server has a transaction block open */
    int is_broken;       /* a send failed: db_pump drops the connection */
    int is_setup_failed; /* a prepare or LISTEN failed */
} db_conn_t;

typedef struct txn_list {
    ac_db_txn_t *head, *tail;
    size_t len;
} txn_list_t;

struct ac_db {
    struct ev_loop *loop;      /* borrowed */
    const ac_db_config_t *cfg; /* borrowed; outlives the pool */
    const char *name;          /* for logs */
    size_t max_queue;
    double connect_timeout_s;
    db_conn_t *conns; /* owned, cfg->pool_size of them */
    int nconns;
    txn_list_t queue;  /* TXN_QUEUED: waiting for a connection, FIFO */
    txn_list_t firing; /* TXN_FIRING: about to get AC_ERR_UNAVAILABLE */
    ac_db_txn_t *all;  /* every live txn (to detach them on destroy) */
    ev_timer kick;     /* zero delay: run db_pump from the loop */
    ac_db_stats_t stats;
    int depth;        /* nesting of our watcher callbacks */
    int is_destroyed; /* ac_db_destroy() ran; free when depth drops to 0 */
};

/* One queued statement, in a single allocation. */
typedef struct db_call {
    int stmt; /* index in cfg->stmts, or -1 for sql */
    int nparams;
    int result_format; /* 0 text, 1 binary */
    const char *sql;   /* stmt == -1 */
    const char **values;
    int *lengths;
    int *formats;
} db_call_t;

typedef enum {
    TXN_NEW,     /* no connection, nothing requested */
    TXN_QUEUED,  /* in db->queue, waiting for a connection */
    TXN_FIRING,  /* in db->firing, its AC_ERR_UNAVAILABLE callback is next */
    TXN_PENDING, /* holds a connection, round trip requested, not sent yet */
    TXN_RUNNING, /* round trip in flight */
    TXN_HELD,    /* holds a connection, between round trips */
    TXN_DONE,    /* committed */
    TXN_FAILED,  /* only ac_db_txn_free() remains */
} txn_state_t;

struct ac_db_txn {
    ac_db_t *db; /* NULL once the pool is destroyed */
    int is_transaction;
    txn_state_t state;
    db_conn_t *conn;                  /* held connection or NULL */
    ac_db_txn_t *prev, *next;         /* in db->queue or db->firing */
    ac_db_txn_t *all_prev, *all_next; /* in db->all */
    db_call_t **calls;                /* statements not sent yet, owned */
    size_t ncalls, calls_cap;
    PGresult **results; /* of the last round trip, owned */
    int nresults;
    int is_commit;  /* the requested round trip ends with COMMIT */
    int has_begun;  /* BEGIN was sent */
    int has_run;    /* got a connection at least once */
    int is_counted; /* counted in stats.txns */
    int rt_err;     /* first error of the round trip in flight */
    int is_binary;  /* statements added from now on return binary results */
    int fail_err;   /* TXN_FAILED: why */
    char sqlstate[6];
    char *errmsg; /* owned, NULL when none */
    ac_db_cb_fn cb;
    void *cb_arg;
};

static int conn_lost(db_conn_t *c, const char *why);
static void db_free(ac_db_t *db);

/* --- small helpers --------------------------------------------------------------------- */

/* libpq messages end in a newline and may span lines: make them one log line. */
static const char *one_line(const char *msg, char *buf, size_t size)
{
    size_t n = 0;
    for (const char *p = msg ? msg : ""; *p && n + 1 < size; p++)
        buf[n++] = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : *p;
    while (n > 0 && buf[n - 1] == ' ')
        n--;
    buf[n] = '\0';
    return buf;
}

static int status_is_ok(ExecStatusType st)
{
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY;
}

/* FATAL or PANIC: the server ends the session after this message. */
static int result_is_fatal(const PGresult *r)
{
    const char *severity = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    return severity && (strcmp(severity, "FATAL") == 0 || strcmp(severity, "PANIC") == 0);
}

/* Server notices and warnings (and a FATAL that arrives while no query runs). */
static void on_notice(void *arg, const PGresult *r)
{
    const ac_db_t *db = arg;
    const char *name = db ? db->name : "migrate";
    const char *severity = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    char buf[DB_MSG_MAX];
    one_line(PQresultErrorMessage(r), buf, sizeof buf);
    if ((severity && strcmp(severity, "WARNING") == 0) || result_is_fatal(r))
        ac_warn("db %s: server: %s", name, buf);
    else
        ac_debug("db %s: server: %s", name, buf);
}

static void list_append(txn_list_t *l, ac_db_txn_t *t)
{
    t->next = NULL;
    t->prev = l->tail;
    if (l->tail)
        l->tail->next = t;
    else
        l->head = t;
    l->tail = t;
    l->len++;
}

static void list_remove(txn_list_t *l, ac_db_txn_t *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        l->head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        l->tail = t->prev;
    t->prev = t->next = NULL;
    l->len--;
}

static ac_db_txn_t *list_pop(txn_list_t *l)
{
    ac_db_txn_t *t = l->head;
    if (t)
        list_remove(l, t);
    return t;
}

static void all_add(ac_db_t *db, ac_db_txn_t *t)
{
    t->all_prev = NULL;
    t->all_next = db->all;
    if (db->all)
        db->all->all_prev = t;
    db->all = t;
}

static void all_remove(ac_db_t *db, ac_db_txn_t *t)
{
    if (t->all_prev)
        t->all_prev->all_next = t->all_next;
    else
        db->all = t->all_next;
    if (t->all_next)
        t->all_next->all_prev = t->all_prev;
    t->all_prev = t->all_next = NULL;
}

static int expect_reserve(db_conn_t *c, size_t more)
{
    if (c->nexpect + more <= c->expect_cap)
        return 0;
    size_t cap = c->expect_cap ? c->expect_cap : 16;
    while (cap < c->nexpect + more)
        cap *= 2;
    expect_t *e = malloc(cap * sizeof *e);
    if (!e)
        return AC_ERR_NOMEM;
    for (size_t i = 0; i < c->nexpect; i++)
        e[i] = c->expect[(c->expect_head + i) % c->expect_cap];
    free(c->expect);
    c->expect = e;
    c->expect_cap = cap;
    c->expect_head = 0;
    return 0;
}

/* Room was reserved with expect_reserve(). */
static void expect_push(db_conn_t *c, expect_kind_t kind, int index)
{
    assert(c->nexpect < c->expect_cap);
    c->expect[(c->expect_head + c->nexpect) % c->expect_cap] = (expect_t){kind, index, 0};
    c->nexpect++;
}

static expect_t *expect_front(db_conn_t *c)
{
    return c->nexpect ? &c->expect[c->expect_head] : NULL;
}

static void expect_pop(db_conn_t *c)
{
    assert(c->nexpect > 0);
    c->expect_head = (c->expect_head + 1) % c->expect_cap;
    c->nexpect--;
}

static int db_nready(const ac_db_t *db)
{
    int n = 0;
    for (int i = 0; i < db->nconns; i++)
        n += db->conns[i].state == CONN_READY;
    return n;
}

static void db_kick(ac_db_t *db)
{
    if (db->is_destroyed || ev_is_active(&db->kick))
        return;
    ev_timer_set(&db->kick, 0., 0.);
    ev_timer_start(db->loop, &db->kick);
}

static void db_enter(ac_db_t *db)
{
    db->depth++;
}

static void db_leave(ac_db_t *db)
{
    if (--db->depth == 0 && db->is_destroyed)
        db_free(db);
}

/* --- transactions: internal ------------------------------------------------------------ */

static void txn_clear_results(ac_db_txn_t *t)
{
    for (int i = 0; i < t->nresults; i++)
        PQclear(t->results[i]);
    free(t->results);
    t->results = NULL;
    t->nresults = 0;
}

static void txn_clear_calls(ac_db_txn_t *t)
{
    for (size_t i = 0; i < t->ncalls; i++)
        free(t->calls[i]);
    t->ncalls = 0;
}

static void txn_count(ac_db_txn_t *t)
{
    if (!t->is_counted && t->db) {
        t->is_counted = 1;
        t->db->stats.txns++;
    }
}

static void txn_record_error(ac_db_txn_t *t, const PGresult *r)
{
    if (t->rt_err)
        return;
    t->rt_err = AC_ERR_DB;
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    size_t n = state ? strnlen(state, sizeof t->sqlstate - 1) : 0;
    memcpy(t->sqlstate, state ? state : "", n);
    t->sqlstate[n] = '\0';
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    char buf[DB_MSG_MAX];
    one_line(msg ? msg : PQresultErrorMessage(r), buf, sizeof buf);
    free(t->errmsg);
    t->errmsg = strdup(buf); /* NULL on OOM reads as "" */
    ac_debug("db %s: statement failed: %s (SQLSTATE %s)", t->db->name, buf, t->sqlstate);
}

/* Calls the txn's callback once. -1 when the callback destroyed the pool. t may be freed. */
static int txn_fire(ac_db_t *db, ac_db_txn_t *t, int err)
{
    ac_db_cb_fn cb = t->cb;
    void *arg = t->cb_arg;
    t->cb = NULL;
    t->cb_arg = NULL;
    if (cb)
        cb(t, err, arg);
    return db->is_destroyed ? -1 : 0;
}

/* Fails every txn of db->firing with AC_ERR_UNAVAILABLE. -1 when the pool was destroyed. */
static int db_fire_unavailable(ac_db_t *db)
{
    ac_db_txn_t *t;
    while ((t = list_pop(&db->firing))) {
        t->state = TXN_FAILED;
        t->fail_err = AC_ERR_UNAVAILABLE;
        txn_count(t);
        if (txn_fire(db, t, AC_ERR_UNAVAILABLE) < 0)
            return -1;
    }
    return 0;
}

static db_call_t *call_new(int stmt, const char *sql, int nparams, const char *const *values,
                           const int *lengths, const int *formats, int result_format)
{
    size_t np = (size_t)nparams;
    size_t size = sizeof(db_call_t) + np * (sizeof(char *) + 2 * sizeof(int));
    size_t sql_len = sql ? strlen(sql) + 1 : 0;
    size += sql_len;
    for (size_t i = 0; i < np; i++) {
        if (!values[i])
            continue;
        if (formats && formats[i]) {
            if (!lengths || lengths[i] < 0)
                return NULL;
            size += (size_t)lengths[i];
        } else {
            size += strlen(values[i]) + 1;
        }
    }
    db_call_t *call = malloc(size);
    if (!call)
        return NULL;
    call->stmt = stmt;
    call->nparams = nparams;
    call->result_format = result_format;
    call->values = (const char **)(call + 1);
    call->lengths = (int *)(call->values + np);
    call->formats = call->lengths + np;
    char *data = (char *)(call->formats + np);
    call->sql = NULL;
    if (sql) {
        memcpy(data, sql, sql_len);
        call->sql = data;
        data += sql_len;
    }
    for (size_t i = 0; i < np; i++) {
        int is_binary = formats && formats[i];
        call->formats[i] = is_binary ? 1 : 0;
        call->lengths[i] = 0;
        call->values[i] = NULL;
        if (!values[i])
            continue;
        size_t len = is_binary ? (size_t)lengths[i] : strlen(values[i]) + 1;
        memcpy(data, values[i], len);
        call->values[i] = data;
        call->lengths[i] = is_binary ? lengths[i] : 0;
        data += len;
    }
    return call;
}

static int txn_push_call(ac_db_txn_t *t, int stmt, const char *sql, int nparams,
                         const char *const *values, const int *lengths, const int *formats)
{
    if (nparams < 0 || nparams > DB_MAX_PARAMS || (nparams > 0 && !values))
        return AC_ERR_INVALID;
    if (t->state == TXN_FAILED && t->fail_err == AC_ERR_UNAVAILABLE)
        return AC_ERR_UNAVAILABLE;
    if (t->state != TXN_NEW && t->state != TXN_HELD)
        return AC_ERR_CONFLICT;
    for (int i = 0; i < nparams; i++)
        if (values[i] && formats && formats[i] && (!lengths || lengths[i] < 0))
            return AC_ERR_INVALID;
    if (t->ncalls == t->calls_cap) {
        size_t cap = t->calls_cap ? t->calls_cap * 2 : 4;
        db_call_t **calls = realloc(t->calls, cap * sizeof(db_call_t *));
        if (!calls)
            return AC_ERR_NOMEM;
        t->calls = calls;
        t->calls_cap = cap;
    }
    db_call_t *call = call_new(stmt, sql, nparams, values, lengths, formats, t->is_binary);
    if (!call)
        return AC_ERR_NOMEM;
    t->calls[t->ncalls++] = call;
    return 0;
}

/* --- connections ----------------------------------------------------------------------- */

/* Watches the libpq socket for `events`; is_reset re-registers it even when nothing seems to
 * have changed (while connecting libpq may close the socket and get the same number back). */
static int conn_watch(db_conn_t *c, int events, int is_reset)
{
    int fd = PQsocket(c->pg);
    if (fd < 0)
        return -1;
    if (!is_reset && c->io_events == events && c->io.fd == fd && ev_is_active(&c->io))
        return 0;
    ev_io_stop(c->db->loop, &c->io);
    ev_io_set(&c->io, fd, events);
    ev_io_start(c->db->loop, &c->io);
    c->io_events = events;
    return 0;
}

/* Pushes buffered output; watches for writability while some remains. */
static int conn_flush(db_conn_t *c)
{
    int rc = PQflush(c->pg);
    if (rc < 0)
        return -1;
    return conn_watch(c, EV_READ | (rc ? EV_WRITE : 0), 0);
}

static void conn_close(db_conn_t *c)
{
    ev_io_stop(c->db->loop, &c->io);
    ev_timer_stop(c->db->loop, &c->timer);
    c->io_events = 0;
    if (c->pg) {
        PQfinish(c->pg);
        c->pg = NULL;
    }
    c->expect_head = 0;
    c->nexpect = 0;
    c->txn = NULL;
    c->is_in_txn = 0;
    c->is_broken = 0;
    c->is_setup_failed = 0;
}

/* A send failed outside a watcher that may call back: let db_pump drop the connection. */
static int conn_mark_broken(db_conn_t *c)
{
    c->is_broken = 1;
    db_kick(c->db);
    return -1;
}

static int conn_send_internal(db_conn_t *c, expect_kind_t kind, int index, const char *sql)
{
    if (!PQsendQueryParams(c->pg, sql, 0, NULL, NULL, NULL, NULL, 0))
        return -1;
    expect_push(c, kind, index);
    return 0;
}

static int conn_send_sync(db_conn_t *c, sync_kind_t kind)
{
    if (!PQpipelineSync(c->pg))
        return -1;
    expect_push(c, EXPECT_SYNC, (int)kind);
    return conn_flush(c);
}

/* Called by db_pump only. */
static void conn_send_rollback(db_conn_t *c)
{
    if (expect_reserve(c, 2) < 0 || conn_send_internal(c, EXPECT_ROLLBACK, 0, "ROLLBACK") < 0 ||
        conn_send_sync(c, SYNC_ROLLBACK) < 0)
        conn_mark_broken(c);
}

/* Called by db_pump only: sends the holder's requested round trip. */
static void conn_send_round_trip(db_conn_t *c, ac_db_txn_t *t)
{
    t->state = TXN_RUNNING;
    t->has_run = 1;
    t->rt_err = 0;
    if (expect_reserve(c, t->ncalls + 3) < 0)
        goto broken;
    if (t->is_transaction && !t->has_begun) {
        if (conn_send_internal(c, EXPECT_BEGIN, 0, "BEGIN") < 0)
            goto broken;
        t->has_begun = 1;
    }
    for (size_t i = 0; i < t->ncalls; i++) {
        const db_call_t *call = t->calls[i];
        int is_sent;
        if (call->stmt >= 0) {
            char name[16];
            snprintf(name, sizeof name, "s%d", call->stmt);
            assert((size_t)call->stmt < c->db->cfg->nstmts);
            is_sent = PQsendQueryPrepared(c->pg, name, call->nparams, call->values, call->lengths,
                                          call->formats, call->result_format);
        } else {
            is_sent = PQsendQueryParams(c->pg, call->sql, call->nparams, NULL, call->values,
                                        call->lengths, call->formats, call->result_format);
        }
        if (!is_sent)
            goto broken;
        expect_push(c, EXPECT_USER, (int)i);
    }
    txn_clear_calls(t);
    if (t->is_commit && t->is_transaction && conn_send_internal(c, EXPECT_COMMIT, 0, "COMMIT") < 0)
        goto broken;
    if (conn_send_sync(c, SYNC_TXN) < 0)
        goto broken;
    return;
broken:
    txn_clear_calls(t);
    conn_mark_broken(c);
}

static void conn_schedule_reconnect(db_conn_t *c)
{
    c->state = CONN_WAITING;
    ev_timer_set(&c->timer, ac_backoff_next(&c->backoff), 0.);
    ev_timer_start(c->db->loop, &c->timer);
}

/* The connection failed or was lost: log once, close, schedule a reconnect, fail the txn in
 * flight (and the queue when no connection is left). -1 when a callback destroyed the pool;
 * the connection must not be used afterwards in either case. */
static int conn_lost(db_conn_t *c, const char *why)
{
    ac_db_t *db = c->db;
    char buf[DB_MSG_MAX];
    const char *msg = why ? why : one_line(c->pg ? PQerrorMessage(c->pg) : "", buf, sizeof buf);
    if (c->state == CONN_READY) {
        db->stats.disconnects++;
        c->nfailures = 0;
        ac_warn("db %s: connection %d lost: %s", db->name, c->index, msg);
    } else if (++c->nfailures == 1) {
        ac_warn("db %s: connection %d failed: %s (retrying)", db->name, c->index, msg);
    } else {
        ac_debug("db %s: connection %d failed again: %s", db->name, c->index, msg);
    }
    ac_db_txn_t *t = c->txn;
    conn_close(c);
    conn_schedule_reconnect(c);
    if (t) {
        t->conn = NULL;
        switch (t->state) {
        case TXN_PENDING:
        case TXN_RUNNING:
            txn_clear_results(t);
            t->state = TXN_FIRING;
            list_append(&db->firing, t);
            break;
        case TXN_HELD:
            /* Nothing requested. An open transaction is gone; a plain one may go on. */
            if (t->is_transaction) {
                t->state = TXN_FAILED;
                t->fail_err = AC_ERR_UNAVAILABLE;
                txn_count(t);
            } else {
                t->state = TXN_NEW;
            }
            break;
        default:
            break;
        }
    }
    if (db_nready(db) == 0) {
        ac_db_txn_t *q;
        while ((q = list_pop(&db->queue))) {
            q->state = TXN_FIRING;
            list_append(&db->firing, q);
        }
    }
    return db_fire_unavailable(db);
}

static void conn_start(db_conn_t *c)
{
    ac_db_t *db = c->db;
    /* TCP keepalives first, so that the service's conninfo (expanded in place of dbname)
     * can override them: a server that falls silent is noticed in about 25 s, not after
     * the kernel's two hours, and the requests waiting on it get 503. */
    static const char *const keys[] = {"keepalives",       "keepalives_idle", "keepalives_interval",
                                       "keepalives_count", "dbname",          NULL};
    const char *values[] = {"1", "10", "5", "3", db->cfg->conninfo, NULL};
    c->pg = PQconnectStartParams(keys, values, 1);
    if (!c->pg) {
        conn_lost(c, "out of memory");
        return;
    }
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        conn_lost(c, NULL);
        return;
    }
    c->state = CONN_CONNECTING;
    ev_timer_set(&c->timer, db->connect_timeout_s, 0.);
    ev_timer_start(db->loop, &c->timer);
    if (conn_watch(c, EV_WRITE, 1) < 0)
        conn_lost(c, NULL);
}

/* Connected: pipeline mode, prepare the statements, LISTEN (connection 0), sync. */
static void conn_setup(db_conn_t *c)
{
    ac_db_t *db = c->db;
    const ac_db_config_t *cfg = db->cfg;
    size_t nlisten = 0;
    if (c->index == 0 && cfg->listen)
        while (cfg->listen[nlisten])
            nlisten++;
    PQsetNoticeReceiver(c->pg, on_notice, db);
    if (PQsetnonblocking(c->pg, 1) != 0 || !PQenterPipelineMode(c->pg))
        goto lost;
    if (expect_reserve(c, cfg->nstmts + nlisten + 1) < 0) {
        conn_lost(c, "out of memory");
        return;
    }
    c->state = CONN_SETUP;
    for (size_t i = 0; i < cfg->nstmts; i++) {
        char name[16];
        snprintf(name, sizeof name, "s%d", (int)i);
        if (!PQsendPrepare(c->pg, name, cfg->stmts[i].sql, cfg->stmts[i].nparams, NULL))
            goto lost;
        expect_push(c, EXPECT_SETUP, (int)i);
    }
    for (size_t i = 0; i < nlisten; i++) {
        const char *channel = cfg->listen[i];
        char *id = PQescapeIdentifier(c->pg, channel, strlen(channel));
        if (!id)
            goto lost;
        size_t size = strlen(id) + sizeof "LISTEN ";
        char *sql = malloc(size);
        if (sql)
            snprintf(sql, size, "LISTEN %s", id);
        PQfreemem(id);
        if (!sql) {
            conn_lost(c, "out of memory");
            return;
        }
        int rc = conn_send_internal(c, EXPECT_SETUP, -1, sql);
        free(sql);
        if (rc < 0)
            goto lost;
    }
    if (conn_send_sync(c, SYNC_SETUP) < 0)
        goto lost;
    return;
lost:
    conn_lost(c, NULL);
}

static void conn_continue_connect(db_conn_t *c)
{
    switch (PQconnectPoll(c->pg)) {
    case PGRES_POLLING_READING:
        if (conn_watch(c, EV_READ, 1) < 0)
            conn_lost(c, NULL);
        break;
    case PGRES_POLLING_WRITING:
        if (conn_watch(c, EV_WRITE, 1) < 0)
            conn_lost(c, NULL);
        break;
    case PGRES_POLLING_OK:
        conn_setup(c);
        break;
    default:
        conn_lost(c, NULL);
        break;
    }
}

static int conn_on_sync(db_conn_t *c, sync_kind_t kind)
{
    ac_db_t *db = c->db;
    const ac_db_config_t *cfg = db->cfg;
    switch (kind) {
    case SYNC_SETUP:
        if (c->is_setup_failed) {
            conn_lost(c, "statement preparation failed");
            return -1;
        }
        ev_timer_stop(db->loop, &c->timer);
        c->state = CONN_READY;
        db->stats.reconnects++;
        ac_backoff_reset(&c->backoff);
        if (c->nfailures)
            ac_info("db %s: connection %d ready after %u failed attempts", db->name, c->index,
                    c->nfailures);
        else
            ac_info("db %s: connection %d ready", db->name, c->index);
        c->nfailures = 0;
        db_kick(db);
        if (c->index == 0 && cfg->on_notify) {
            cfg->on_notify(cfg->notify_arg, NULL, NULL);
            if (db->is_destroyed)
                return -1;
        }
        return 0;
    case SYNC_ROLLBACK:
        if (c->is_in_txn) {
            conn_lost(c, "ROLLBACK failed");
            return -1;
        }
        db_kick(db);
        return 0;
    case SYNC_TXN:
        break;
    }
    ac_db_txn_t *t = c->txn;
    if (!t) { /* freed while in flight: db_pump rolls back or reuses the connection */
        db_kick(db);
        return 0;
    }
    int err = t->rt_err;
    if (err) {
        t->state = TXN_FAILED;
        t->fail_err = err;
    } else {
        t->state = t->is_commit ? TXN_DONE : TXN_HELD;
    }
    if (t->state != TXN_HELD)
        txn_count(t);
    return txn_fire(db, t, err);
}

/* One result from the pipeline. -1 when the connection was dropped or the pool destroyed. */
static int conn_on_result(db_conn_t *c, PGresult *r)
{
    ac_db_t *db = c->db;
    expect_t *e = expect_front(c);
    ExecStatusType st = PQresultStatus(r);
    if (!e || e->has_result || (st == PGRES_PIPELINE_SYNC) != (e->kind == EXPECT_SYNC)) {
        PQclear(r);
        conn_lost(c, "unexpected result from the server");
        return -1;
    }
    if (e->kind == EXPECT_SYNC) {
        sync_kind_t kind = (sync_kind_t)e->index;
        expect_pop(c);
        PQclear(r);
        return conn_on_sync(c, kind);
    }
    e->has_result = 1;
    int is_aborted = st == PGRES_PIPELINE_ABORTED;
    int is_error = !is_aborted && !status_is_ok(st);
    if (is_error && (PQstatus(c->pg) == CONNECTION_BAD || result_is_fatal(r))) {
        /* The server is ending the session (shutdown, pg_terminate_backend): not an SQL
         * error of the statement but a lost connection, with the server's reason. */
        char why[DB_MSG_MAX];
        one_line(PQresultErrorMessage(r), why, sizeof why);
        PQclear(r);
        conn_lost(c, why[0] ? why : NULL);
        return -1;
    }
    if (is_error)
        db->stats.errors++;
    ac_db_txn_t *t = c->txn;
    char buf[DB_MSG_MAX];
    switch (e->kind) {
    case EXPECT_SETUP:
        if (is_error) {
            /* A bad statement fails every attempt: say it loudly once per streak. */
            ac_log_level_t level = c->nfailures ? AC_LOG_DEBUG : AC_LOG_ERROR;
            one_line(PQresultErrorMessage(r), buf, sizeof buf);
            if (e->index >= 0)
                ac_log_at(level, NULL, NULL, "db %s: cannot prepare statement %d: %s", db->name,
                          e->index, buf);
            else
                ac_log_at(level, NULL, NULL, "db %s: LISTEN failed: %s", db->name, buf);
            c->is_setup_failed = 1;
        }
        break;
    case EXPECT_BEGIN:
        if (!is_error && !is_aborted)
            c->is_in_txn = 1;
        break;
    case EXPECT_COMMIT:
        if (!is_aborted) /* it ran: committed, or failed and rolled back */
            c->is_in_txn = 0;
        break;
    case EXPECT_ROLLBACK:
        if (is_error) {
            one_line(PQresultErrorMessage(r), buf, sizeof buf);
            ac_warn("db %s: ROLLBACK failed: %s", db->name, buf);
        } else if (!is_aborted) {
            c->is_in_txn = 0;
        }
        break;
    case EXPECT_USER:
        if (is_error && t)
            txn_record_error(t, r);
        if (t && !is_aborted && e->index < t->nresults) {
            t->results[e->index] = r;
            return 0;
        }
        break;
    case EXPECT_SYNC:
        break;
    }
    if (is_error && t && (e->kind == EXPECT_BEGIN || e->kind == EXPECT_COMMIT))
        txn_record_error(t, r);
    PQclear(r);
    return 0;
}

/* Takes every result libpq has parsed, then the notifications. */
static int conn_process(db_conn_t *c)
{
    ac_db_t *db = c->db;
    const ac_db_config_t *cfg = db->cfg;
    while (!PQisBusy(c->pg)) {
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            expect_t *e = expect_front(c);
            if (e && e->kind != EXPECT_SYNC && e->has_result) {
                expect_pop(c); /* the NULL that ends a query's results */
                continue;
            }
            break;
        }
        if (conn_on_result(c, r) < 0)
            return -1;
    }
    PGnotify *n;
    while ((n = PQnotifies(c->pg))) {
        if (cfg->on_notify)
            cfg->on_notify(cfg->notify_arg, n->relname, n->extra);
        PQfreemem(n);
        if (db->is_destroyed)
            return -1;
    }
    return 0;
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents)
{
    db_conn_t *c = ac_container_of(w, db_conn_t, io);
    ac_db_t *db = c->db;
    db_enter(db);
    if (c->state == CONN_CONNECTING) {
        conn_continue_connect(c);
        goto out;
    }
    if ((revents & EV_READ) && !PQconsumeInput(c->pg)) {
        conn_lost(c, NULL);
        goto out;
    }
    if ((c->io_events & EV_WRITE) && conn_flush(c) < 0) {
        conn_lost(c, NULL);
        goto out;
    }
    if (conn_process(c) < 0)
        goto out;
    if (PQstatus(c->pg) == CONNECTION_BAD)
        conn_lost(c, NULL);
out:
    db_leave(db);
}

static void on_conn_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    db_conn_t *c = ac_container_of(w, db_conn_t, timer);
    ac_db_t *db = c->db;
    db_enter(db);
    if (c->state == CONN_WAITING)
        conn_start(c);
    else
        conn_lost(c, "timed out connecting");
    db_leave(db);
}

/* Drops broken connections, rolls back released ones, sends requested round trips and hands
 * free connections to the queue, in order. */
static void db_pump(ac_db_t *db)
{
    for (int i = 0; i < db->nconns; i++) {
        db_conn_t *c = &db->conns[i];
        if (c->is_broken && conn_lost(c, NULL) < 0)
            return;
    }
    for (int i = 0; i < db->nconns; i++) {
        db_conn_t *c = &db->conns[i];
        if (c->state != CONN_READY || c->nexpect || c->is_broken)
            continue;
        if (c->txn && c->txn->state == TXN_PENDING)
            conn_send_round_trip(c, c->txn);
        else if (!c->txn && c->is_in_txn)
            conn_send_rollback(c);
    }
    for (int i = 0; i < db->nconns && db->queue.head; i++) {
        db_conn_t *c = &db->conns[i];
        if (c->state != CONN_READY || c->nexpect || c->is_broken || c->txn || c->is_in_txn)
            continue;
        ac_db_txn_t *t = list_pop(&db->queue);
        t->conn = c;
        c->txn = t;
        conn_send_round_trip(c, t);
    }
}

static void on_kick(struct ev_loop *loop, ev_timer *w, int revents)
{
    ac_db_t *db = ac_container_of(w, ac_db_t, kick);
    db_enter(db);
    db_pump(db);
    db_leave(db);
}

/* --- pool ------------------------------------------------------------------------------ */

/* -1 when conninfo does not parse (not logged: the string may hold a password). */
static int conninfo_timeout_s(const char *conninfo, double *timeout_s)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    if (!opts) {
        PQfreemem(err);
        return -1;
    }
    *timeout_s = DB_CONNECT_TIMEOUT_S;
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        long v = o->val ? strtol(o->val, NULL, 10) : 0;
        if (strcmp(o->keyword, "connect_timeout") == 0 && v > 0)
            *timeout_s = v < 2 ? 2 : (int)(v > 3600 ? 3600 : v); /* libpq's own minimum */
    }
    PQconninfoFree(opts);
    return 0;
}

ac_db_t *ac_db_new(struct ev_loop *loop, const ac_db_config_t *cfg)
{
    if (!loop || !cfg || !cfg->conninfo || cfg->pool_size < 1 || (cfg->nstmts && !cfg->stmts)) {
        ac_error("db %s: invalid configuration", cfg && cfg->name ? cfg->name : "?");
        return NULL;
    }
    const char *name = cfg->name ? cfg->name : "db";
    for (size_t i = 0; i < cfg->nstmts; i++) {
        if (!cfg->stmts[i].sql || cfg->stmts[i].nparams < 0 ||
            cfg->stmts[i].nparams > DB_MAX_PARAMS) {
            ac_error("db %s: invalid statement %zu", name, i);
            return NULL;
        }
    }
    double connect_timeout_s;
    if (conninfo_timeout_s(cfg->conninfo, &connect_timeout_s) < 0) {
        ac_error("db %s: the connection string does not parse", name);
        return NULL;
    }
    ac_db_t *db = calloc(1, sizeof *db);
    if (!db || !(db->conns = calloc((size_t)cfg->pool_size, sizeof *db->conns))) {
        ac_error("db %s: out of memory", name);
        free(db);
        return NULL;
    }
    db->loop = loop;
    db->cfg = cfg;
    db->name = name;
    db->max_queue = cfg->max_queue ? cfg->max_queue : DB_MAX_QUEUE;
    db->connect_timeout_s = connect_timeout_s;
    db->nconns = cfg->pool_size;
    ev_timer_init(&db->kick, on_kick, 0., 0.);
    double min_s = cfg->reconnect_min_s > 0 ? cfg->reconnect_min_s : DB_RECONNECT_MIN_S;
    double max_s = cfg->reconnect_max_s > 0 ? cfg->reconnect_max_s : DB_RECONNECT_MAX_S;
    if (max_s < min_s)
        max_s = min_s;
    for (int i = 0; i < db->nconns; i++) {
        db_conn_t *c = &db->conns[i];
        c->db = db;
        c->index = i;
        c->state = CONN_WAITING;
        ev_io_init(&c->io, on_conn_io, -1, 0);
        ev_timer_init(&c->timer, on_conn_timer, 0., 0.);
        ac_backoff_init(&c->backoff, min_s, max_s);
    }
    for (int i = 0; i < db->nconns; i++)
        conn_start(&db->conns[i]); /* no txn exists yet: nothing can call back */
    return db;
}

static void db_free(ac_db_t *db)
{
    for (int i = 0; i < db->nconns; i++)
        free(db->conns[i].expect);
    free(db->conns);
    free(db);
}

void ac_db_destroy(ac_db_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ac_db_t *db = *self_p;
    *self_p = NULL;
    if (db->is_destroyed)
        return;
    db->is_destroyed = 1;
    db_enter(db);
    ev_timer_stop(db->loop, &db->kick);
    for (int i = 0; i < db->nconns; i++) {
        db_conn_t *c = &db->conns[i];
        ac_db_txn_t *t = c->txn;
        conn_close(c);
        c->state = CONN_WAITING;
        if (!t)
            continue;
        t->conn = NULL;
        if (t->state == TXN_PENDING || t->state == TXN_RUNNING) {
            txn_clear_results(t);
            t->state = TXN_FIRING;
            list_append(&db->firing, t);
        }
    }
    ac_db_txn_t *t;
    while ((t = list_pop(&db->queue))) {
        t->state = TXN_FIRING;
        list_append(&db->firing, t);
    }
    while ((t = list_pop(&db->firing))) {
        t->state = TXN_FAILED;
        t->fail_err = AC_ERR_UNAVAILABLE;
        txn_count(t);
        txn_fire(db, t, AC_ERR_UNAVAILABLE);
    }
    /* Transactions the caller still holds outlive the pool: detach them. */
    while ((t = db->all)) {
        all_remove(db, t);
        t->db = NULL;
        t->conn = NULL;
        if (t->state != TXN_DONE) {
            t->state = TXN_FAILED;
            t->fail_err = AC_ERR_UNAVAILABLE;
        }
    }
    db_leave(db);
}

int ac_db_is_up(const ac_db_t *self)
{
    return self && !self->is_destroyed && db_nready(self) > 0;
}

void ac_db_stats(const ac_db_t *self, ac_db_stats_t *out)
{
    memset(out, 0, sizeof *out);
    if (!self)
        return;
    *out = self->stats;
    out->ready = (uint32_t)db_nready(self);
    out->queued = (uint32_t)self->queue.len;
}

/* --- transactions: API ----------------------------------------------------------------- */

ac_db_txn_t *ac_db_txn_new(ac_db_t *db, int is_transaction)
{
    if (!db || db->is_destroyed)
        return NULL;
    ac_db_txn_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->db = db;
    t->is_transaction = is_transaction != 0;
    t->state = TXN_NEW;
    all_add(db, t);
    return t;
}

int ac_db_txn_add(ac_db_txn_t *t, int stmt, const char *const *values, const int *lengths,
                  const int *formats)
{
    if (!t)
        return AC_ERR_INVALID;
    if (!t->db)
        return AC_ERR_UNAVAILABLE;
    const ac_db_config_t *cfg = t->db->cfg;
    if (stmt < 0 || (size_t)stmt >= cfg->nstmts) {
        ac_error("db %s: no prepared statement %d", t->db->name, stmt);
        return AC_ERR_INVALID;
    }
    return txn_push_call(t, stmt, NULL, cfg->stmts[stmt].nparams, values, lengths, formats);
}

void ac_db_txn_set_binary_results(ac_db_txn_t *t, int on)
{
    if (t)
        t->is_binary = on ? 1 : 0;
}

int ac_db_txn_add_sql(ac_db_txn_t *t, const char *sql, int nparams, const char *const *values,
                      const int *lengths, const int *formats)
{
    if (!t || !sql)
        return AC_ERR_INVALID;
    if (!t->db)
        return AC_ERR_UNAVAILABLE;
    return txn_push_call(t, -1, sql, nparams, values, lengths, formats);
}

static int txn_request(ac_db_txn_t *t, int is_commit, ac_db_cb_fn cb, void *arg)
{
    if (!t)
        return AC_ERR_INVALID;
    ac_db_t *db = t->db;
    if (!db || db->is_destroyed)
        return AC_ERR_UNAVAILABLE;
    switch (t->state) {
    case TXN_NEW:
        if (!ac_db_is_up(db) || db->queue.len >= db->max_queue)
            return AC_ERR_UNAVAILABLE;
        break;
    case TXN_HELD:
        break;
    case TXN_FAILED:
        return t->fail_err == AC_ERR_UNAVAILABLE ? AC_ERR_UNAVAILABLE : AC_ERR_CONFLICT;
    default:
        return AC_ERR_CONFLICT;
    }
    txn_clear_results(t);
    if (t->ncalls) {
        t->results = calloc(t->ncalls, sizeof(PGresult *));
        if (!t->results)
            return AC_ERR_NOMEM;
        t->nresults = (int)t->ncalls;
    }
    t->sqlstate[0] = '\0';
    free(t->errmsg);
    t->errmsg = NULL;
    t->is_commit = is_commit;
    t->cb = cb;
    t->cb_arg = arg;
    if (t->state == TXN_NEW) {
        t->state = TXN_QUEUED;
        list_append(&db->queue, t);
    } else {
        t->state = TXN_PENDING;
    }
    db_kick(db);
    return 0;
}

int ac_db_txn_flush(ac_db_txn_t *t, ac_db_cb_fn cb, void *arg)
{
    return txn_request(t, 0, cb, arg);
}

int ac_db_txn_commit(ac_db_txn_t *t, ac_db_cb_fn cb, void *arg)
{
    return txn_request(t, 1, cb, arg);
}

void ac_db_txn_free(ac_db_txn_t **t_p)
{
    if (!t_p || !*t_p)
        return;
    ac_db_txn_t *t = *t_p;
    *t_p = NULL;
    ac_db_t *db = t->db;
    if (db) {
        if (t->state == TXN_QUEUED)
            list_remove(&db->queue, t);
        else if (t->state == TXN_FIRING)
            list_remove(&db->firing, t);
        if (t->conn) {
            /* In flight: its results are dropped as they come. Then db_pump rolls back what
             * is unfinished and hands the connection on. */
            t->conn->txn = NULL;
            t->conn = NULL;
            db_kick(db);
        }
        if (t->has_run)
            txn_count(t);
        all_remove(db, t);
    }
    txn_clear_calls(t);
    free(t->calls);
    txn_clear_results(t);
    free(t->errmsg);
    free(t);
}

int ac_db_txn_nresults(const ac_db_txn_t *t)
{
    return t ? t->nresults : 0;
}

struct pg_result *ac_db_txn_result(const ac_db_txn_t *t, int i)
{
    if (!t || i < 0 || i >= t->nresults)
        return NULL;
    return t->results[i];
}

const char *ac_db_txn_sqlstate(const ac_db_txn_t *t)
{
    return t ? t->sqlstate : "";
}

const char *ac_db_txn_errmsg(const ac_db_txn_t *t)
{
    return t && t->errmsg ? t->errmsg : "";
}

/* --- binary results ------------------------------------------------------------------- */

uint64_t ac_db_cell_int8(const struct pg_result *res, int row, int col)
{
    const unsigned char *p = (const unsigned char *)PQgetvalue(res, row, col);
    uint64_t v = 0;
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
        return 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

typedef struct row_key {
    int64_t key;
    int row;
} row_key_t;

static int row_key_cmp(const void *a, const void *b)
{
    const row_key_t *x = a, *y = b;
    return x->key < y->key ? -1 : x->key > y->key;
}

int *ac_db_result_order(const struct pg_result *res, int col, int *err)
{
    int rows = PQntuples(res), r = 1;
    row_key_t *keys;
    int *order;

    *err = 0;
    while (r < rows &&
           (int64_t)ac_db_cell_int8(res, r, col) >= (int64_t)ac_db_cell_int8(res, r - 1, col))
        r++;
    if (r >= rows)
        return NULL;
    keys = malloc((size_t)rows * sizeof(*keys));
    order = malloc((size_t)rows * sizeof(*order));
    if (!keys || !order) {
        free(keys);
        free(order);
        *err = AC_ERR_NOMEM;
        return NULL;
    }
    for (r = 0; r < rows; r++)
        keys[r] = (row_key_t){(int64_t)ac_db_cell_int8(res, r, col), r};
    qsort(keys, (size_t)rows, sizeof(*keys), row_key_cmp);
    for (r = 0; r < rows; r++)
        order[r] = keys[r].row;
    free(keys);
    return order;
}

/* --- parameters ------------------------------------------------------------------------ */

char *ac_db_array_literal(const char *const *values, size_t n)
{
    size_t cap = 3; /* braces and NUL */
    for (size_t i = 0; i < n; i++)
        cap += 1 + (values[i] ? 2 + 2 * strlen(values[i]) : 4); /* comma, quotes, escapes */
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    char *w = buf;
    *w++ = '{';
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            *w++ = ',';
        if (!values[i]) {
            memcpy(w, "NULL", 4);
            w += 4;
            continue;
        }
        *w++ = '"';
        for (const char *p = values[i]; *p; p++) {
            if (*p == '"' || *p == '\\')
                *w++ = '\\';
            *w++ = *p;
        }
        *w++ = '"';
    }
    *w++ = '}';
    *w = '\0';
    return buf;
}

int ac_db_txn_add_columns(ac_db_txn_t *t, int stmt, const char *const *cells, size_t nrows,
                          size_t ncols)
{
    char **arrays = calloc(ncols ? ncols : 1, sizeof *arrays);
    const char **column = malloc((nrows ? nrows : 1) * sizeof *column);
    int rc = arrays && column ? 0 : AC_ERR_NOMEM;

    for (size_t j = 0; rc == 0 && j < ncols; j++) {
        for (size_t i = 0; i < nrows; i++)
            column[i] = cells[i * ncols + j];
        if (!(arrays[j] = ac_db_array_literal(column, nrows)))
            rc = AC_ERR_NOMEM;
    }
    if (rc == 0)
        rc = ac_db_txn_add(t, stmt, (const char *const *)arrays, NULL, NULL);
    for (size_t j = 0; arrays && j < ncols; j++)
        free(arrays[j]);
    free(arrays);
    free(column);
    return rc;
}

/* --- migrations ------------------------------------------------------------------------ */

static PGconn *migrate_connect(const char *conninfo, double wait_s)
{
    int64_t deadline_us = ac_time_mono_us() + (int64_t)(wait_s * 1e6);
    int is_logged = 0;
    for (;;) {
        PGconn *pg = PQconnectdb(conninfo);
        if (pg && PQstatus(pg) == CONNECTION_OK)
            return pg;
        char buf[DB_MSG_MAX];
        one_line(pg ? PQerrorMessage(pg) : "out of memory", buf, sizeof buf);
        PQfinish(pg);
        if (ac_time_mono_us() >= deadline_us) {
            ac_error("db migrate: cannot connect: %s", buf);
            return NULL;
        }
        if (!is_logged) {
            ac_info("db migrate: waiting for the database: %s", buf);
            is_logged = 1;
        }
        struct timespec ts = {0, DB_MIGRATE_RETRY_US * 1000L};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
        }
    }
}

/* Runs sql (no parameters when nparams == 0); keeps the result when r_out is given.
 * Logs `what` with the server's message on failure. */
static int migrate_exec(PGconn *pg, const char *what, const char *sql, int nparams,
                        const char *const *values, PGresult **r_out)
{
    PGresult *r =
        nparams ? PQexecParams(pg, sql, nparams, NULL, values, NULL, NULL, 0) : PQexec(pg, sql);
    if (!r || !status_is_ok(PQresultStatus(r))) {
        char buf[DB_MSG_MAX];
        one_line(r ? PQresultErrorMessage(r) : PQerrorMessage(pg), buf, sizeof buf);
        ac_error("db migrate: %s failed: %s", what, buf);
        PQclear(r);
        return AC_ERR_DB;
    }
    if (r_out)
        *r_out = r;
    else
        PQclear(r);
    return 0;
}

/* head + qschema + tail, malloc'd. */
static char *migrate_sql(const char *head, const char *qschema, const char *tail)
{
    size_t size = strlen(head) + strlen(qschema) + strlen(tail) + 1;
    char *sql = malloc(size);
    if (sql)
        snprintf(sql, size, "%s%s%s", head, qschema, tail);
    return sql;
}

static int migrate_apply(PGconn *pg, const char *qschema, const char *component,
                         const ac_migration_t *m)
{
    char what[256];
    snprintf(what, sizeof what, "migration %s/%s", component, m->name);
    char *insert = migrate_sql("INSERT INTO ", qschema,
                               ".schema_migrations (component, version, name) "
                               "VALUES ($1, $2, $3)");
    if (!insert)
        return AC_ERR_NOMEM;
    char version[16];
    snprintf(version, sizeof version, "%d", m->version);
    const char *params[3] = {component, version, m->name};
    int rc = migrate_exec(pg, "BEGIN", "BEGIN", 0, NULL, NULL);
    if (rc == 0)
        rc = migrate_exec(pg, what, m->sql, 0, NULL, NULL);
    if (rc == 0)
        rc = migrate_exec(pg, what, insert, 3, params, NULL);
    if (rc == 0)
        rc = migrate_exec(pg, what, "COMMIT", 0, NULL, NULL);
    if (rc < 0)
        PQclear(PQexec(pg, "ROLLBACK"));
    else
        ac_info("db migrate: applied %s/%s", component, m->name);
    free(insert);
    return rc;
}

int ac_db_migrate(const char *conninfo, const char *schema, const char *component,
                  const ac_migration_t *migrations, double wait_s)
{
    if (!conninfo || !schema || !*schema || !component || !migrations)
        return AC_ERR_INVALID;
    int last = 0;
    for (const ac_migration_t *m = migrations; m->name; m++) {
        if (m->version <= last || !m->sql) {
            ac_error("db migrate: %s/%s: versions must increase from 1", component, m->name);
            return AC_ERR_INVALID;
        }
        last = m->version;
    }
    double unused_s;
    if (conninfo_timeout_s(conninfo, &unused_s) < 0) {
        ac_error("db migrate: the connection string does not parse");
        return AC_ERR_CONFIG;
    }
    PGconn *pg = migrate_connect(conninfo, wait_s);
    if (!pg)
        return AC_ERR_UNAVAILABLE;
    PQsetNoticeReceiver(pg, on_notice, NULL);
    int rc = AC_ERR_NOMEM;
    PGresult *r = NULL;
    char *create_schema = NULL, *create_table = NULL, *select_max = NULL;
    char *qschema = PQescapeIdentifier(pg, schema, strlen(schema));
    if (!qschema)
        goto out;
    create_schema = migrate_sql("CREATE SCHEMA IF NOT EXISTS ", qschema, "");
    create_table = migrate_sql("CREATE TABLE IF NOT EXISTS ", qschema,
                               ".schema_migrations ("
                               "component text NOT NULL, version int NOT NULL, name text NOT NULL, "
                               "applied_at timestamptz NOT NULL DEFAULT now(), "
                               "PRIMARY KEY (component, version))");
    select_max = migrate_sql("SELECT coalesce(max(version), 0) FROM ", qschema,
                             ".schema_migrations WHERE component = $1");
    if (!create_schema || !create_table || !select_max)
        goto out;
    /* Two processes starting at once: the second waits here, then finds nothing to do. */
    const char *lock_params[2] = {schema, component};
    rc = migrate_exec(pg, "lock", "SELECT pg_advisory_lock(hashtext($1::text || $2::text))", 2,
                      lock_params, NULL);
    if (rc < 0)
        goto out;
    /* CREATE SCHEMA needs CREATE on the database even when the schema exists: ask first. */
    rc = migrate_exec(pg, "schema lookup", "SELECT 1 FROM pg_namespace WHERE nspname = $1", 1,
                      &schema, &r);
    if (rc < 0)
        goto out;
    int has_schema = PQntuples(r) > 0;
    PQclear(r);
    r = NULL;
    if (!has_schema && (rc = migrate_exec(pg, "create schema", create_schema, 0, NULL, NULL)) < 0)
        goto out;
    if ((rc = migrate_exec(pg, "create schema_migrations", create_table, 0, NULL, NULL)) < 0)
        goto out;
    if ((rc = migrate_exec(pg, "read schema_migrations", select_max, 1, &component, &r)) < 0)
        goto out;
    int current = (int)strtol(PQgetvalue(r, 0, 0), NULL, 10);
    int napplied = 0;
    for (const ac_migration_t *m = migrations; m->name; m++) {
        if (m->version <= current)
            continue;
        if ((rc = migrate_apply(pg, qschema, component, m)) < 0)
            goto out;
        napplied++;
    }
    if (napplied == 0)
        ac_debug("db migrate: %s is up to date (version %d)", component, current);
    rc = 0;
out:
    if (rc == AC_ERR_NOMEM)
        ac_error("db migrate: out of memory");
    PQclear(r);
    free(create_schema);
    free(create_table);
    free(select_max);
    PQfreemem(qschema);
    PQfinish(pg); /* also releases the advisory lock */
    return rc;
}
