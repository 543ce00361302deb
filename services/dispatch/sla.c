/* sla.c — the SLA engine (issue 4; docs/dispatch-api.md, "The SLA engine"): SLA calendars
 * and policies over HTTP, GET /v1/tickets/{number}/sla, and the engine that turns clocks'
 * levels and vendor deadlines (migrations/004_sla.sql, 009_sla_levels.sql) into
 * escalations exactly once.
 *
 * The engine, one instance per dispatch process, on the service's loop. What it arms is a
 * clock (at its earliest pending level, keyed by the clock's id) or a vendor deadline row:
 *   load     at start-up (and after a failed attempt) it clears the change queue
 *            (dispatch.sla_start) and reads everything armed (view dispatch.sla_armed) in
 *            (due_at, id) pages of LOAD_PAGE binary rows straight into the deadline set
 *            (deadlines.c: append, then one O(n) heapify), then attaches the set's
 *            ev_periodic to the loop; nothing else arms before the load is done;
 *   propose  a new ticket's clocks are computed for the consumer's insert (see "clocks at
 *            apply", migration 019) and armed after its transaction;
 *   compute  NOTIFY dispatch_deadlines (at most one start per COMPUTE_GAP_S, so that new
 *            tickets come in batches; and a sweep every SWEEP_S) reads the clocks marked
 *            dirty by the hooks (dispatch.sla_dirty), computes their levels with slaclock.c
 *            (calendar.c) from the status history, merges them with the levels the clock
 *            had (levels_merge: fired ones stay fired), and writes each clock back
 *            (dispatch.sla_save), whose answer it arms or cancels;
 *   sync     NOTIFY dispatch_deadlines 'vendor' (and the sweep) takes the queue of changed
 *            vendor deadline ids (dispatch.sla_changes_take) and arms, moves or cancels
 *            them in the set;
 *   fire     when the earliest is due, the set hands the due ones over; batches of up to
 *            FIRE_BATCH go to dispatch.sla_fire (FIRES_IN_FLIGHT at most at a time, the
 *            rest wait here — that is the group commit under load): one transaction fires
 *            the due levels of each clock still at the armed version (or the vendor row
 *            still pending at it), and puts their sla.* events in the outbox (ops.c). A
 *            failed or doubtful batch is re-armed RETRY_S later; the conditional update
 *            makes the retry harmless.
 * Rows are the truth: a crash loses only the set, which the next start reads back, and a
 * deadline that passed meanwhile is due at once.
 *
 * Owns: the set, the parsed calendars, the load transaction, the batches waiting to fire,
 * the cached policies, the reserved clock ids and the proposed clocks waiting to be armed.
 * Calls through dispatch_run_sql() may finish after dispatch_sla_stop() (the pool fails
 * them while it is destroyed): the engine lives until the last one has returned. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_log.h"
#include "ac_time.h"
#include "calendar.h"
#include "deadlines.h"
#include "dispatch.h"
#include "ops.h"
#include "slaclock.h"
#include "slalevels.h"
#include "store.h"
#include "validate.h"

#define LOAD_PAGE       100000 /* armed deadlines per start-up round trip */
#define SYNC_PAGE       5000   /* queued changes per take */
#define DIRTY_PAGE      200    /* tickets per computation */
#define FIRE_BATCH      1000   /* deadlines per firing transaction */
#define FIRES_IN_FLIGHT 3      /* firing transactions at once (of the pool's 4) */
#define TICK_S          1.0    /* retries (load, failed sync or computation) */
#define SWEEP_S         30.0   /* sync and compute without a NOTIFY this often */
#define COMPUTE_GAP_S   0.05   /* NOTIFYs of dirty clocks start a computation this often */
#define RETRY_S         1.0    /* a failed firing is retried this much later */
#define LATENESS_RING   16384  /* recent firings kept for the lateness gauges */
#define US_PER_S        INT64_C(1000000)
#define POOL_LOW        192 /* clock ids reserved ahead for proposals: refill below this */
#define POOL_CHUNK      512 /* ... this many at a time */

static const char *const TARGETS[] = {"first_response", "arrival", "resolution", NULL};
static const char *const PRIORITIES[] = {"P1", "P2", "P3", "P4", NULL};
static const char *const TIERS[] = {"standard", "vip", NULL};
static const char *const CATEGORIES[] = {"fault_repair", "consultation", "maintenance",
                                         "training",     "complaint",    NULL};

typedef struct sla_cal {
    char id[40];              /* the calendar row's uuid */
    int64_t version;          /* the row's version it was parsed from */
    dispatch_calendar_t *cal; /* owned */
} sla_cal_t;

/* What one clock's computation needs from its policy. */
typedef struct clock_rule {
    const dispatch_calendar_t *cal;
    bool is_business;
    int64_t target_s; /* 0: the policy has no such target */
    int64_t grace_s;
    double fr[DISPATCH_SLA_MAX_FRACTIONS];
    size_t nfr;
} clock_rule_t;

/* An active policy as the consumer's proposals use it (dispatch.sla_policy_cache()). */
typedef struct sla_pol {
    char id[40];
    int64_t version;
    char priority[4], tier[16], category[24]; /* "": any */
    int64_t target_s[3];                      /* TARGETS' order; 0: none */
    clock_rule_t rule;                        /* is_business, grace_s, fractions */
    char cal_id[40];                          /* its calendar, at cal_version */
    int64_t cal_version;
} sla_pol_t;

typedef struct dispatch_sla {
    dispatch_t *svc;           /* borrowed: the service */
    dispatch_deadlines_t *set; /* owned: the armed deadlines */
    sla_cal_t *cals;           /* owned: parsed calendars */
    size_t n_cals;
    int refs;       /* dispatch_run_sql() calls that have not returned */
    int is_stopped; /* dispatch_sla_stop() ran: free when refs reaches 0 */
    ev_timer tick;
    double last_sweep;      /* ev_now() of the last unprompted sync/compute */
    ev_timer compute_timer; /* compute_soon(): the computation held back */
    double last_compute;    /* ev_now() of the last computation started */
    /* the start-up load */
    ac_db_txn_t *load_txn;     /* owned while a page is in flight */
    dispatch_deadline_t *page; /* owned: LOAD_PAGE rows */
    int is_loading, is_loaded;
    int is_first_page;    /* its round trip counts the armed rows first */
    int64_t after_due_us; /* keyset: the last row loaded */
    uint64_t after_id;
    size_t n_loaded;
    int64_t load_start_us; /* monotonic */
    double load_s;         /* how long the last load took */
    /* sync and compute: one call at a time each, once more when asked meanwhile */
    int is_syncing, is_sync_again;
    int is_computing, is_compute_again;
    int is_page_full; /* the computation in flight read a whole DIRTY_PAGE */
    /* firing: popped from the set, not yet sent */
    dispatch_deadline_t *due; /* owned: due[due_head .. n_due) wait */
    size_t due_head, n_due, cap_due;
    int n_firing;
    size_t batch_limit; /* FIRE_BATCH, less after a failed batch (see on_fired) */
    /* lateness of the recent firings (commit time - due time), microseconds */
    int64_t lateness_us[LATENESS_RING];
    uint64_t n_lateness; /* firings recorded in all */
    /* new tickets' clocks computed by the consumer (see "clocks at apply") */
    sla_pol_t *pols; /* owned: the active policies, most specific first */
    size_t n_pols;
    int is_pols_valid, is_pols_loading;
    double pols_loaded_at; /* ev_now() */
    int64_t *pool;         /* owned: clock ids reserved for proposals (dispatch.sla_reserve_ids) */
    size_t n_pool;
    int is_reserving;
    dispatch_deadline_t *proposed; /* owned: the proposals' clocks, armed after the batch */
    size_t n_proposed, cap_proposed;
} dispatch_sla_t;

typedef struct fire_batch {
    dispatch_sla_t *sla;
    size_t n;
    dispatch_deadline_t d[]; /* what was sent, for a retry */
} fire_batch_t;

static void sync_kick(dispatch_sla_t *sla);
static void compute_kick(dispatch_sla_t *sla);
static void compute_soon(dispatch_sla_t *sla);
static void fire_pump(dispatch_sla_t *sla);
static void load_start(dispatch_sla_t *sla);
static void pols_kick(dispatch_sla_t *sla);
static void proposed_arm(dispatch_sla_t *sla);
static void reserve_kick(dispatch_sla_t *sla);
static int proposed_add(dispatch_sla_t *sla, const dispatch_deadline_t *d, size_t n);

static const char *tzdir(const dispatch_t *svc)
{
    return svc->cfg->tzdir && svc->cfg->tzdir[0] ? svc->cfg->tzdir : NULL;
}

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

static int64_t now_us(void)
{
    return ac_time_now_us();
}

/* --- lifetime ----------------------------------------------------------------------------- */

static void sla_free(dispatch_sla_t *sla)
{
    dispatch_deadlines_destroy(&sla->set);
    for (size_t i = 0; i < sla->n_cals; i++)
        dispatch_calendar_destroy(&sla->cals[i].cal);
    free(sla->cals);
    free(sla->page);
    free(sla->due);
    free(sla->pols);
    free(sla->pool);
    free(sla->proposed);
    free(sla);
}

/* A dispatch_run_sql() on the engine's behalf; counted so that the engine outlives it. */
static int sla_call(dispatch_sla_t *sla, int stmt, const char *const *params,
                    dispatch_sql_done_fn done, void *arg)
{
    int rc = dispatch_run_sql(sla->svc, stmt, params, NULL, done, arg);
    if (rc == 0)
        sla->refs++;
    return rc;
}

/* First thing in every done callback: 1 when the engine has stopped (and maybe been freed
 * now): the callback only cleans up its own things. */
static int sla_returned(dispatch_sla_t *sla)
{
    sla->refs--;
    if (!sla->is_stopped)
        return 0;
    if (sla->refs == 0)
        sla_free(sla);
    return 1;
}

/* --- calendars ------------------------------------------------------------------------------ */

/* The parsed calendar `id` as `calendars` ({"<id>": {"version", "calendar"}}) has it; NULL
 * (logged) when it is missing or does not parse. Borrowed until the next call. */
static const dispatch_calendar_t *calendar_for(dispatch_sla_t *sla, const json_t *calendars,
                                               const char *id)
{
    /* no id (a malformed answer) counts as missing, like an id not in `calendars` */
    const json_t *entry = id ? json_object_get(calendars, id) : NULL;
    json_int_t version = json_integer_value(json_object_get(entry, "version"));
    sla_cal_t *slot = NULL;
    dispatch_calendar_t *cal = NULL;
    dispatch_cal_err_t err;

    if (!entry) {
        ac_error("sla: calendar %s missing from the database's answer", id ? id : "(null)");
        return NULL;
    }
    for (size_t i = 0; i < sla->n_cals; i++)
        if (strcmp(sla->cals[i].id, id) == 0) {
            if (sla->cals[i].version == version)
                return sla->cals[i].cal;
            slot = &sla->cals[i];
        }
    int rc =
        dispatch_calendar_parse(json_object_get(entry, "calendar"), tzdir(sla->svc), &cal, &err);
    if (rc < 0) {
        ac_error("sla: calendar %s (version %lld) does not parse: %s: %s", id, (long long)version,
                 rc == AC_ERR_INVALID ? err.field : "",
                 rc == AC_ERR_INVALID ? err.message : ac_strerror(rc));
        return NULL;
    }
    if (!slot) {
        sla_cal_t *cals = realloc(sla->cals, (sla->n_cals + 1) * sizeof *cals);
        if (!cals) {
            dispatch_calendar_destroy(&cal);
            return NULL;
        }
        sla->cals = cals;
        slot = &sla->cals[sla->n_cals++];
        slot->cal = NULL;
        snprintf(slot->id, sizeof slot->id, "%s", id);
    }
    dispatch_calendar_destroy(&slot->cal);
    slot->cal = cal;
    slot->version = version;
    return cal;
}

/* --- one clock's computation (the engine and GET .../sla) --------------------------------- */

/* A ticket's status history as marks, and room for the pauses derived from it. */
typedef struct ticket_marks {
    dispatch_sla_mark_t *m;     /* owned */
    dispatch_sla_span_t *spans; /* owned: n entries */
    size_t n;
} ticket_marks_t;

static int marks_init(ticket_marks_t *tm, const json_t *history)
{
    size_t n = json_array_size(history), i;
    const json_t *h;
    memset(tm, 0, sizeof *tm);
    if (n == 0)
        return 0;
    tm->m = malloc(n * sizeof *tm->m);
    tm->spans = malloc(n * sizeof *tm->spans);
    if (!tm->m || !tm->spans)
        return AC_ERR_NOMEM;
    json_array_foreach(history, i, h)
    {
        tm->m[i].at_us = json_integer_value(json_array_get(h, 0));
        tm->m[i].phase = (uint8_t)json_integer_value(json_array_get(h, 1));
    }
    tm->n = n;
    return 0;
}

static void marks_fini(ticket_marks_t *tm)
{
    free(tm->m);
    free(tm->spans);
}

typedef struct clock_calc {
    dispatch_sla_planned_t lv[DISPATCH_SLA_MAX_FRACTIONS + 2]; /* the levels' deadlines */
    size_t n_lv;
    int64_t due_us;     /* the breach: DISPATCH_SLA_NEVER while paused, 0 without a target */
    int64_t elapsed_us; /* counted at `until` (the clock's stop, or now) */
    int64_t paused_us;
} clock_calc_t;

/* The policy of `clock` in `state` (sla_dirty's or sla_view's body: "policies" by id). */
static const json_t *policy_of(const json_t *state, const json_t *clock)
{
    const char *id = json_string_value(json_object_get(clock, "policy_id"));
    return id ? json_object_get(json_object_get(state, "policies"), id) : NULL;
}

/* Seconds of `target` in `pol`; 0 when it has none. */
static json_int_t target_s_of(const json_t *pol, const json_t *clock)
{
    const char *target = json_string_value(json_object_get(clock, "target"));
    return target ? json_integer_value(json_object_get(json_object_get(pol, "targets"), target))
                  : 0;
}

/* The levels of a clock of `rule` that started at started_us, with the pauses of `tm`
 * (is_resolution: the resolution clock's pauses), elapsed and paused time at until_us. */
static int clock_plan(const clock_rule_t *rule, ticket_marks_t *tm, int64_t started_us,
                      bool is_resolution, bool is_urgent, int64_t until_us, clock_calc_t *out)
{
    int rc;
    memset(out, 0, sizeof *out);
    dispatch_sla_clock_t c = {
        .cal = rule->cal,
        .is_business = rule->is_business,
        .started_at_us = started_us,
    };
    c.n_pauses = dispatch_sla_pauses(tm->m, tm->n, c.started_at_us, is_resolution, tm->spans);
    c.pauses = tm->spans;
    if (rule->target_s > 0) { /* none: the policy has no such target (the clock is cancelled) */
        dispatch_sla_targets_t t = {
            .target_s = rule->target_s,
            .grace_s = rule->grace_s,
            .fractions = rule->fr,
            .n_fractions = rule->nfr,
        };
        if ((rc = dispatch_sla_plan(&c, &t, is_urgent, out->lv, &out->n_lv)) < 0)
            return rc;
        for (size_t i = 0; i < out->n_lv; i++)
            if (out->lv[i].level == DISPATCH_SLA_BREACH)
                out->due_us = out->lv[i].due_us;
    }
    return dispatch_sla_elapsed(&c, until_us, &out->elapsed_us, &out->paused_us);
}

/* clock: one element of a ticket's "clocks" in dispatch.sla_state(); state: the body it
 * came in, with the "policies" and "calendars" it refers to. */
static int clock_compute(dispatch_sla_t *sla, const json_t *state, ticket_marks_t *tm,
                         bool is_urgent, const json_t *clock, int64_t at_us, clock_calc_t *out)
{
    const json_t *calendars = json_object_get(state, "calendars");
    const json_t *pol = policy_of(state, clock);
    const json_t *jfr = json_object_get(pol, "fractions");
    const char *target = json_string_value(json_object_get(clock, "target"));
    const json_t *stopped = json_object_get(clock, "stopped_at_us");
    clock_rule_t rule = {0};
    size_t i;
    const json_t *f;

    memset(out, 0, sizeof *out);
    rule.cal = calendar_for(sla, calendars, json_string_value(json_object_get(pol, "calendar_id")));
    if (!pol || !rule.cal || !target)
        return AC_ERR_INVALID;
    json_array_foreach(jfr, i, f)
    {
        if (rule.nfr < DISPATCH_SLA_MAX_FRACTIONS)
            rule.fr[rule.nfr++] = json_number_value(f);
    }
    rule.is_business = json_is_true(json_object_get(pol, "business_time"));
    rule.target_s = target_s_of(pol, clock);
    rule.grace_s = json_integer_value(json_object_get(pol, "grace_s"));
    return clock_plan(&rule, tm, json_integer_value(json_object_get(clock, "started_at_us")),
                      strcmp(target, "resolution") == 0, is_urgent,
                      json_is_integer(stopped) ? json_integer_value(stopped) : at_us, out);
}

static json_t *json_time(int64_t us)
{
    char buf[AC_TIME_STRLEN];
    if (us == DISPATCH_SLA_NEVER || us <= 0)
        return json_null();
    return json_string(ac_time_format_us(us, buf));
}

static json_t *json_us(int64_t us)
{
    return us == DISPATCH_SLA_NEVER ? json_null() : json_integer(us);
}

/* --- the start-up load ----------------------------------------------------------------- */

static void load_fail(dispatch_sla_t *sla, const char *what, int err)
{
    ac_warn("sla: loading the armed deadlines failed (%s: %s); retrying", what, ac_strerror(err));
    ac_db_txn_free(&sla->load_txn);
    sla->is_loading = 0;
    dispatch_deadlines_destroy(&sla->set); /* the next attempt starts from an empty set */
    sla->set = dispatch_deadlines_new();
}

static void load_done(dispatch_sla_t *sla);
static void load_page(dispatch_sla_t *sla, int is_first);

static void on_page(ac_db_txn_t *txn, int err, void *arg)
{
    dispatch_sla_t *sla = arg;
    size_t n = 0;
    int rc;

    if (err < 0) {
        load_fail(sla, "query", err);
        return;
    }
    int i = 0;
    if (sla->is_first_page) {
        /* the first page comes after the number of armed rows: room for all at once */
        json_t *count = NULL;
        if (dispatch_store_doc_result(txn, 0, &count) == 0 && json_is_integer(count)) {
            size_t n_all = (size_t)json_integer_value(count);
            rc = dispatch_deadlines_reserve(sla->set, n_all + n_all / 64 + 16);
            if (rc < 0) {
                json_decref(count);
                load_fail(sla, "reserve", rc);
                return;
            }
        }
        json_decref(count);
        sla->is_first_page = 0;
        i = 1;
    }
    if ((rc = dispatch_store_sla_armed_result(txn, i, sla->page, LOAD_PAGE, &n)) < 0) {
        load_fail(sla, "rows", rc);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        rc = dispatch_deadlines_append(sla->set, &sla->page[k]);
        if (rc < 0 && rc != AC_ERR_CONFLICT) {
            load_fail(sla, "append", rc);
            return;
        }
    }
    sla->n_loaded += n;
    ac_db_txn_free(&sla->load_txn);
    if (n < LOAD_PAGE) {
        load_done(sla);
        return;
    }
    sla->after_due_us = sla->page[n - 1].due_at_us;
    sla->after_id = sla->page[n - 1].id;
    load_page(sla, 0);
}

static void load_page(dispatch_sla_t *sla, int is_first)
{
    int rc = AC_ERR_NOMEM;
    if (!(sla->load_txn = ac_db_txn_new(sla->svc->db, 0)))
        goto fail;
    sla->is_first_page = is_first;
    rc = is_first ? dispatch_store_add_sla_armed_count(sla->load_txn) : 0;
    if (rc == 0)
        rc = dispatch_store_add_sla_armed(sla->load_txn, sla->after_due_us, sla->after_id,
                                          LOAD_PAGE);
    if (rc == 0)
        rc = ac_db_txn_commit(sla->load_txn, on_page, sla);
    if (rc == 0)
        return;
fail:
    load_fail(sla, "send", rc);
}

static void on_started(void *arg, int err, const json_t *result)
{
    dispatch_sla_t *sla = arg;
    if (sla_returned(sla))
        return;
    if (err < 0 || json_object_get(result, "error")) {
        sla->is_loading = 0;
        ac_warn("sla: start-up failed (%s); retrying", err < 0 ? ac_strerror(err) : "error");
        return;
    }
    if (!sla->set && !(sla->set = dispatch_deadlines_new())) {
        sla->is_loading = 0;
        return;
    }
    sla->after_due_us = INT64_MIN;
    sla->after_id = 0;
    sla->n_loaded = 0;
    load_page(sla, 1);
}

static void load_start(dispatch_sla_t *sla)
{
    if (sla->is_loading || sla->is_loaded || sla->svc->is_closed)
        return;
    sla->is_loading = 1;
    sla->load_start_us = ac_time_mono_us();
    if (sla_call(sla, DISPATCH_STMT_SLA_START, NULL, on_started, sla) < 0)
        sla->is_loading = 0; /* the database is not up yet: the tick retries */
}

static void on_due(void *arg, const dispatch_deadline_t *due, size_t n, int64_t now);

static void load_done(dispatch_sla_t *sla)
{
    int rc = dispatch_deadlines_attach(sla->set, sla->svc->loop, FIRE_BATCH, on_due, sla);
    if (rc < 0) {
        load_fail(sla, "attach", rc);
        return;
    }
    sla->is_loading = 0;
    sla->is_loaded = 1;
    sla->load_s = (double)(ac_time_mono_us() - sla->load_start_us) / 1e6;
    ac_metrics_set(sla->svc->metrics, "sla_load_seconds", NULL, sla->load_s);
    ac_info("sla: %zu deadlines armed in %.3f s (%zu kB in memory)",
            dispatch_deadlines_count(sla->set), sla->load_s,
            dispatch_deadlines_memory_bytes(sla->set) / 1024);
    sync_kick(sla); /* what changed during the load */
    compute_kick(sla);
    pols_kick(sla);
    reserve_kick(sla);
    proposed_arm(sla); /* (what the load read is armed already: arming again replaces) */
}

/* --- sync: the change queue -> the set ------------------------------------------------------ */

static void arm(dispatch_sla_t *sla, uint64_t id, int64_t due_us, uint32_t version)
{
    dispatch_deadline_t d = {.id = id, .due_at_us = due_us, .version = version};
    int rc = dispatch_deadlines_arm(sla->set, &d);
    if (rc < 0 && rc != AC_ERR_CONFLICT)
        ac_error("sla: arming deadline %llu failed: %s", (unsigned long long)id, ac_strerror(rc));
}

/* items: [id, due_us (null: not armed any more), version] each. */
static void arm_items(dispatch_sla_t *sla, const json_t *items)
{
    const json_t *item;
    size_t i;
    json_array_foreach(items, i, item)
    {
        uint64_t id = (uint64_t)json_integer_value(json_array_get(item, 0));
        const json_t *due = json_array_get(item, 1);
        uint32_t version = (uint32_t)json_integer_value(json_array_get(item, 2));
        if (json_is_integer(due))
            arm(sla, id, json_integer_value(due), version);
        else if (dispatch_deadlines_cancel(sla->set, id, version) == AC_ERR_CONFLICT)
            ac_debug("sla: deadline %llu was re-armed since", (unsigned long long)id);
    }
}

static void on_synced(void *arg, int err, const json_t *result)
{
    dispatch_sla_t *sla = arg;
    const json_t *body = json_object_get(result, "body");

    if (sla_returned(sla))
        return;
    sla->is_syncing = 0;
    if (err < 0 || !body) {
        ac_warn("sla: taking the deadline changes failed (%s); retrying",
                err < 0 ? ac_strerror(err) : "no body");
        sla->is_sync_again = 1; /* the tick retries */
        return;
    }
    arm_items(sla, json_object_get(body, "items"));
    if (sla->is_sync_again || json_integer_value(json_object_get(body, "taken")) >= SYNC_PAGE) {
        sla->is_sync_again = 0;
        sync_kick(sla);
    }
}

static void sync_kick(dispatch_sla_t *sla)
{
    char limit[16];
    if (!sla->is_loaded)
        return; /* the load ends with a sync */
    if (sla->is_syncing) {
        sla->is_sync_again = 1;
        return;
    }
    snprintf(limit, sizeof limit, "%d", SYNC_PAGE);
    if (sla_call(sla, DISPATCH_STMT_SLA_CHANGES, (const char *[]){limit}, on_synced, sla) == 0)
        sla->is_syncing = 1;
    else
        sla->is_sync_again = 1;
}

/* --- compute: dirty clocks -> deadline rows ------------------------------------------------- */

/* The save entry of one clock (NULL when out of memory). */
static json_t *clock_entry(dispatch_sla_t *sla, const json_t *ticket, const json_t *batch,
                           ticket_marks_t *tm, const json_t *clock, int64_t at_us)
{
    const char *state = json_string_value(json_object_get(clock, "state"));
    bool is_urgent =
        strcmp(str_or_empty(json_string_value(json_object_get(ticket, "priority"))), "P1") == 0;
    clock_calc_t cc;
    int64_t next_us;
    json_t *e =
        json_pack("{s:O, s:O, s:O}", "ticket_id", json_object_get(ticket, "ticket_id"), "target",
                  json_object_get(clock, "target"), "gen", json_object_get(clock, "gen"));
    if (!e)
        return NULL;
    int rc = clock_compute(sla, batch, tm, is_urgent, clock, at_us, &cc);
    if (rc < 0) {
        ac_log_at(AC_LOG_ERROR, json_string_value(json_object_get(ticket, "number")), NULL,
                  "sla: the %s clock cannot be computed (%s); its deadlines stay as they are",
                  json_string_value(json_object_get(clock, "target")), ac_strerror(rc));
        json_object_set_new(e, "keep", json_true());
        return e;
    }
    bool is_open = state && (strcmp(state, "running") == 0 || strcmp(state, "paused") == 0);
    json_t *lv = dispatch_sla_levels_merge(
        json_integer_value(json_object_get(clock, "id")), json_object_get(clock, "levels"), cc.lv,
        cc.n_lv, is_open, &next_us, json_string_value(json_object_get(ticket, "number")),
        json_string_value(json_object_get(clock, "target")));
    if (!lv || json_object_set_new(e, "levels", lv) < 0 ||
        json_object_set_new(e, "next_due_us", json_us(next_us)) < 0 ||
        json_object_set_new(e, "due_at_us", cc.due_us ? json_us(cc.due_us) : json_null()) < 0) {
        json_decref(e);
        return NULL;
    }
    return e;
}

static void on_saved(void *arg, int err, const json_t *result)
{
    dispatch_sla_t *sla = arg;
    const json_t *body = json_object_get(result, "body");
    if (sla_returned(sla))
        return;
    sla->is_computing = 0;
    if (err < 0 || !body) {
        ac_warn("sla: saving computed deadlines failed (%s); retrying",
                err < 0 ? ac_strerror(err) : "error");
        sla->is_compute_again = 1;
        return;
    }
    json_int_t saved = json_integer_value(json_object_get(body, "saved"));
    json_int_t stale = json_integer_value(json_object_get(body, "stale"));
    arm_items(sla, json_object_get(body, "armed"));
    if (saved > 0)
        ac_metrics_add(sla->svc->metrics, "sla_clocks_computed_total", NULL, (double)saved);
    if (sla->is_page_full) { /* more are dirty: at once */
        sla->is_compute_again = 0;
        compute_kick(sla);
    } else if (sla->is_compute_again || stale > 0) { /* new ones (a NOTIFY), or skipped */
        sla->is_compute_again = 0;
        compute_soon(sla);
    }
}

static void on_dirty(void *arg, int err, const json_t *result)
{
    dispatch_sla_t *sla = arg;
    const json_t *body = json_object_get(result, "body");
    const json_t *ticket, *clock;
    json_t *clocks = NULL, *doc = NULL;
    char *text = NULL;
    size_t i, k;

    if (sla_returned(sla))
        return;
    if (err < 0 || !body) {
        ac_warn("sla: reading the clocks to compute failed (%s); retrying",
                err < 0 ? ac_strerror(err) : "error");
        sla->is_computing = 0;
        sla->is_compute_again = 1;
        return;
    }
    if (json_array_size(json_object_get(body, "tickets")) == 0) {
        sla->is_computing = 0;
        if (sla->is_compute_again) {
            sla->is_compute_again = 0;
            compute_soon(sla);
        }
        return;
    }
    sla->is_page_full = json_array_size(json_object_get(body, "tickets")) >= DIRTY_PAGE;
    int64_t at_us = now_us();
    if (!(clocks = json_array()))
        goto fail;
    json_array_foreach(json_object_get(body, "tickets"), i, ticket)
    {
        ticket_marks_t tm;
        if (marks_init(&tm, json_object_get(ticket, "history")) < 0) {
            marks_fini(&tm);
            goto fail;
        }
        json_array_foreach(json_object_get(ticket, "clocks"), k, clock)
        {
            json_t *e = clock_entry(sla, ticket, body, &tm, clock, at_us);
            if (!e || json_array_append_new(clocks, e) < 0) {
                marks_fini(&tm);
                goto fail;
            }
        }
        marks_fini(&tm);
    }
    if (!(doc = json_pack("{s:o}", "clocks", clocks))) {
        clocks = NULL;
        goto fail;
    }
    clocks = NULL;
    if (!(text = json_dumps(doc, JSON_COMPACT)))
        goto fail;
    if (sla_call(sla, DISPATCH_STMT_SLA_SAVE, (const char *[]){text}, on_saved, sla) < 0)
        goto fail;
    json_decref(doc);
    free(text);
    return;
fail:
    json_decref(clocks);
    json_decref(doc);
    free(text);
    sla->is_computing = 0;
    sla->is_compute_again = 1; /* the tick retries */
}

/* A NOTIFY of dirty clocks: computed at once, unless a computation started less than
 * COMPUTE_GAP_S ago — then when that much has passed, so that a stream of new tickets is
 * computed in batches of a few dozen rather than one or two a round trip. */
static void compute_soon(dispatch_sla_t *sla)
{
    double wait = sla->last_compute + COMPUTE_GAP_S - ev_now(sla->svc->loop);
    if (wait <= 0) {
        compute_kick(sla);
        return;
    }
    if (!ev_is_active(&sla->compute_timer)) {
        ev_timer_set(&sla->compute_timer, wait, 0.);
        ev_timer_start(sla->svc->loop, &sla->compute_timer);
    }
}

static void on_compute_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    compute_kick(ac_container_of(w, dispatch_sla_t, compute_timer));
}

static void compute_kick(dispatch_sla_t *sla)
{
    char limit[16];
    if (!sla->is_loaded)
        return; /* a save arms what it saved: the load ends with a computation */
    if (sla->is_computing) {
        sla->is_compute_again = 1;
        return;
    }
    snprintf(limit, sizeof limit, "%d", DIRTY_PAGE);
    sla->last_compute = ev_now(sla->svc->loop);
    if (sla_call(sla, DISPATCH_STMT_SLA_DIRTY, (const char *[]){limit}, on_dirty, sla) == 0)
        sla->is_computing = 1;
    else
        sla->is_compute_again = 1;
}

/* --- clocks at apply: a new ticket's clocks computed by the consumer --------------------- */

/* The consumer's transaction inserts a new ticket's clocks computed (migration 019) when
 * it brings a proposal that still holds: this module keeps the active policies (reloaded
 * every SWEEP_S, and at the next tick after a policy or calendar changes through the API)
 * and a pool of clock ids, and computes the proposal exactly as the engine would compute
 * the dirty clocks (one status in the history, no old levels). When the consumer's
 * transaction is over, committed or not, the proposed clocks are armed: one that was not
 * inserted (a rolled-back batch, a stale policy, a ticket dispatch knew already) arms
 * nothing that can fire, since dispatch.sla_fire() finds no clock at that id and version;
 * and its id is never used again. Until the deadlines are loaded, and while the policies
 * are not known or the pool is empty, there is no proposal: the clocks are inserted dirty,
 * as before, and the engine computes them. */

static int pol_specificity(const sla_pol_t *p)
{
    return (p->priority[0] != '\0') + (p->tier[0] != '\0') + (p->category[0] != '\0');
}

/* dispatch.sla_policy_for()'s order: the most specific first; among as specific ones,
 * those naming a priority, then a tier, then a category (and then by id: a tie the
 * database may break otherwise makes the proposal fail its check, nothing worse) */
static int pol_cmp(const void *a, const void *b)
{
    const sla_pol_t *x = a, *y = b;
    int d = pol_specificity(y) - pol_specificity(x);
    if (d)
        return d;
    if (!x->priority[0] != !y->priority[0])
        return x->priority[0] ? -1 : 1;
    if (!x->tier[0] != !y->tier[0])
        return x->tier[0] ? -1 : 1;
    if (!x->category[0] != !y->category[0])
        return x->category[0] ? -1 : 1;
    return strcmp(x->id, y->id);
}

static void copy_str(char *dst, size_t len, const json_t *v)
{
    snprintf(dst, len, "%s", json_is_string(v) ? json_string_value(v) : "");
}

static void on_pols(void *arg, int err, const json_t *result)
{
    dispatch_sla_t *sla = arg;
    const json_t *body = json_object_get(result, "body");
    const json_t *list = json_object_get(body, "policies");
    const json_t *calendars = json_object_get(body, "calendars");
    const json_t *p, *f;
    size_t i, k;

    if (sla_returned(sla))
        return;
    sla->is_pols_loading = 0;
    if (err < 0 || !json_is_array(list)) {
        ac_warn("sla: reading the policies failed (%s); new tickets' clocks are computed by "
                "the engine until they are read",
                err < 0 ? ac_strerror(err) : "no body");
        return; /* the tick tries again */
    }
    size_t cap = json_array_size(list) ? json_array_size(list) : 1;
    sla_pol_t *pols = calloc(cap, sizeof *pols);
    if (!pols)
        return; /* the tick tries again */
    size_t n = 0;
    json_array_foreach(list, i, p)
    {
        sla_pol_t *x = &pols[n];
        memset(x, 0, sizeof *x);
        const json_t *targets = json_object_get(p, "targets");
        const char *cal_id = json_string_value(json_object_get(p, "calendar_id"));
        copy_str(x->id, sizeof x->id, json_object_get(p, "id"));
        copy_str(x->priority, sizeof x->priority, json_object_get(p, "priority"));
        copy_str(x->tier, sizeof x->tier, json_object_get(p, "customer_tier"));
        copy_str(x->category, sizeof x->category, json_object_get(p, "category"));
        x->version = json_integer_value(json_object_get(p, "version"));
        for (k = 0; k < 3; k++)
            x->target_s[k] = json_integer_value(json_object_get(targets, TARGETS[k]));
        x->rule.is_business = json_is_true(json_object_get(p, "business_time"));
        x->rule.grace_s = json_integer_value(json_object_get(p, "grace_s"));
        json_array_foreach(json_object_get(p, "fractions"), k, f)
        {
            if (x->rule.nfr < DISPATCH_SLA_MAX_FRACTIONS)
                x->rule.fr[x->rule.nfr++] = json_number_value(f);
        }
        /* parsed (and kept by id and version) now; found again at each proposal, since
         * the engine replaces a calendar it meets at a newer version */
        if (!cal_id || !calendar_for(sla, calendars, cal_id))
            continue; /* logged: tickets of this policy get dirty clocks */
        snprintf(x->cal_id, sizeof x->cal_id, "%s", cal_id);
        x->cal_version =
            json_integer_value(json_object_get(json_object_get(calendars, cal_id), "version"));
        n++;
    }
    if (n > 1)
        qsort(pols, n, sizeof *pols, pol_cmp);
    free(sla->pols);
    sla->pols = pols;
    sla->n_pols = n;
    sla->is_pols_valid = 1;
    sla->pols_loaded_at = ev_now(sla->svc->loop);
}

static void pols_kick(dispatch_sla_t *sla)
{
    if (!sla->is_loaded || sla->is_pols_loading)
        return;
    if (sla_call(sla, DISPATCH_STMT_SLA_POLICY_CACHE, NULL, on_pols, sla) == 0)
        sla->is_pols_loading = 1;
}

static bool is_running_status(const char *s)
{
    static const char *const not_running[] = {"needs_info", "waiting_customer", "waiting_external",
                                              "resolved",   "closed",           "cancelled"};
    if (!s || !s[0])
        return false;
    for (size_t i = 0; i < AC_ARRAY_LEN(not_running); i++)
        if (strcmp(s, not_running[i]) == 0)
            return false;
    return true;
}

static bool selects(const char *want, const char *have)
{
    return !want[0] || (have && strcmp(want, have) == 0);
}

char *dispatch_sla_propose(dispatch_t *self, const char *number, const char *priority,
                           const char *tier, const char *category, const char *status,
                           const char *opened_at, const char *updated_at)
{
    dispatch_sla_t *sla = self->sla;
    const sla_pol_t *p = NULL;
    const dispatch_calendar_t *cal = NULL;
    int64_t opened_us, updated_us;
    size_t i;

    if (!sla || !sla->is_loaded || !sla->is_pols_valid || !is_running_status(status) ||
        !opened_at || !updated_at || ac_time_parse_rfc3339(opened_at, &opened_us) < 0 ||
        ac_time_parse_rfc3339(updated_at, &updated_us) < 0)
        return NULL;
    for (i = 0; i < sla->n_pols && !p; i++)
        if (selects(sla->pols[i].priority, priority) && selects(sla->pols[i].tier, tier) &&
            selects(sla->pols[i].category, category))
            p = &sla->pols[i];
    if (!p)
        return NULL; /* no policy: the insert says so */
    for (i = 0; i < sla->n_cals && !cal; i++)
        if (strcmp(sla->cals[i].id, p->cal_id) == 0 && sla->cals[i].version == p->cal_version)
            cal = sla->cals[i].cal;
    if (!cal) { /* the calendar changed since: read the policies again */
        sla->is_pols_valid = 0;
        return NULL;
    }

    size_t need = 0;
    for (int k = 0; k < 3; k++)
        need += p->target_s[k] > 0;
    if (sla->n_pool < need) {
        reserve_kick(sla);
        return NULL;
    }
    reserve_kick(sla); /* (when the pool runs low) */

    dispatch_deadline_t arms[3];
    size_t n_arms = 0;
    dispatch_sla_mark_t mark = {.at_us = updated_us, .phase = 0};
    dispatch_sla_span_t span;
    ticket_marks_t tm = {.m = &mark, .spans = &span, .n = 1};
    bool is_urgent = priority && strcmp(priority, "P1") == 0;
    json_t *clocks = json_object(), *doc = NULL, *none = json_array();
    char *text = NULL;
    if (!clocks || !none)
        goto done;
    for (int k = 0; k < 3; k++) {
        clock_rule_t rule = p->rule;
        clock_calc_t cc;
        int64_t next_us;
        if (p->target_s[k] <= 0)
            continue;
        rule.cal = cal;
        rule.target_s = p->target_s[k];
        if (clock_plan(&rule, &tm, opened_us, k == 2, is_urgent, opened_us, &cc) < 0)
            goto done; /* the engine will say why */
        int64_t id = sla->pool[--sla->n_pool];
        json_t *lv =
            dispatch_sla_levels_merge(id, none, cc.lv, cc.n_lv, true, &next_us, number, TARGETS[k]);
        json_t *c = lv ? json_pack("{s:I, s:o, s:o, s:o}", "id", (json_int_t)id, "due_us",
                                   cc.due_us ? json_us(cc.due_us) : json_null(), "next_us",
                                   json_us(next_us), "levels", lv)
                       : NULL;
        if (!c || json_object_set_new(clocks, TARGETS[k], c) < 0)
            goto done;
        if (next_us != DISPATCH_SLA_NEVER)
            arms[n_arms++] =
                (dispatch_deadline_t){.id = (uint64_t)id, .due_at_us = next_us, .version = 1};
    }
    doc = json_pack("{s:s, s:I, s:I, s:O}", "policy_id", p->id, "policy_version",
                    (json_int_t)p->version, "calendar_version", (json_int_t)p->cal_version,
                    "clocks", clocks);
    if (doc)
        text = json_dumps(doc, JSON_COMPACT);
    if (text && proposed_add(sla, arms, n_arms) < 0) {
        free(text); /* cannot remember to arm them: no proposal */
        text = NULL;
    }
    if (text)
        ac_metrics_add(sla->svc->metrics, "sla_clocks_proposed_total", NULL,
                       (double)json_object_size(clocks));
done:
    json_decref(doc);
    json_decref(clocks);
    json_decref(none);
    return text;
}

static void on_reserved(void *arg, int err, const json_t *result)
{
    dispatch_sla_t *sla = arg;
    const json_t *ids = json_object_get(json_object_get(result, "body"), "ids"), *v;
    size_t i;
    if (sla_returned(sla))
        return;
    sla->is_reserving = 0;
    if (err < 0 || !json_is_array(ids)) {
        ac_warn("sla: reserving clock ids failed (%s); new tickets' clocks are computed by the "
                "engine meanwhile",
                err < 0 ? ac_strerror(err) : "no body");
        return;
    }
    int64_t *pool = realloc(sla->pool, (sla->n_pool + json_array_size(ids)) * sizeof *pool);
    if (!pool)
        return;
    sla->pool = pool;
    json_array_foreach(ids, i, v)
    {
        if (json_is_integer(v))
            sla->pool[sla->n_pool++] = json_integer_value(v);
    }
}

static void reserve_kick(dispatch_sla_t *sla)
{
    char n[16];
    if (!sla->is_loaded || sla->is_reserving || sla->n_pool >= POOL_LOW)
        return;
    snprintf(n, sizeof n, "%d", POOL_CHUNK);
    if (sla_call(sla, DISPATCH_STMT_SLA_RESERVE_IDS, (const char *[]){n}, on_reserved, sla) == 0)
        sla->is_reserving = 1;
}

static int proposed_add(dispatch_sla_t *sla, const dispatch_deadline_t *d, size_t n)
{
    if (sla->n_proposed + n > sla->cap_proposed) {
        size_t cap = sla->cap_proposed ? 2 * sla->cap_proposed : 256;
        while (cap < sla->n_proposed + n)
            cap *= 2;
        dispatch_deadline_t *grown = realloc(sla->proposed, cap * sizeof *grown);
        if (!grown)
            return AC_ERR_NOMEM;
        sla->proposed = grown;
        sla->cap_proposed = cap;
    }
    memcpy(sla->proposed + sla->n_proposed, d, n * sizeof *d);
    sla->n_proposed += n;
    return 0;
}

/* Arms the clocks proposed so far (kept until the deadlines are loaded). */
static void proposed_arm(dispatch_sla_t *sla)
{
    if (!sla->is_loaded)
        return;
    for (size_t i = 0; i < sla->n_proposed; i++)
        arm(sla, sla->proposed[i].id, sla->proposed[i].due_at_us, sla->proposed[i].version);
    sla->n_proposed = 0;
}

void dispatch_sla_batch_done(int err, void *arg)
{
    dispatch_t *self = arg;
    (void)err;
    if (self->sla)
        proposed_arm(self->sla);
}

void dispatch_sla_policies_changed(dispatch_t *self)
{
    if (self->sla)
        self->sla->is_pols_valid = 0; /* read again at the next tick */
}

/* --- fire --------------------------------------------------------------------------------- */

/* Puts a batch back into the set, due RETRY_S from now. */
static void rearm_later(dispatch_sla_t *sla, const dispatch_deadline_t *d, size_t n)
{
    int64_t at = now_us() + (int64_t)(RETRY_S * 1e6);
    for (size_t i = 0; i < n; i++) {
        dispatch_deadline_t x = d[i];
        x.due_at_us = at;
        arm(sla, x.id, x.due_at_us, x.version);
    }
}

static void on_due(void *arg, const dispatch_deadline_t *due, size_t n, int64_t now)
{
    dispatch_sla_t *sla = arg;
    (void)now;
    if (sla->due_head > 0 && sla->due_head == sla->n_due)
        sla->due_head = sla->n_due = 0;
    if (sla->n_due + n > sla->cap_due) {
        if (sla->due_head > 0) { /* compact first */
            memmove(sla->due, sla->due + sla->due_head,
                    (sla->n_due - sla->due_head) * sizeof *sla->due);
            sla->n_due -= sla->due_head;
            sla->due_head = 0;
        }
        if (sla->n_due + n > sla->cap_due) {
            size_t cap = sla->cap_due ? sla->cap_due * 2 : 4096;
            while (cap < sla->n_due + n)
                cap *= 2;
            dispatch_deadline_t *grown = realloc(sla->due, cap * sizeof *grown);
            if (!grown) { /* try again in a moment */
                rearm_later(sla, due, n);
                return;
            }
            sla->due = grown;
            sla->cap_due = cap;
        }
    }
    memcpy(sla->due + sla->n_due, due, n * sizeof *due);
    sla->n_due += n;
    fire_pump(sla);
}

static void record_lateness(dispatch_sla_t *sla, int64_t late_us)
{
    sla->lateness_us[sla->n_lateness % LATENESS_RING] = late_us;
    sla->n_lateness++;
    ac_metrics_observe(sla->svc->metrics, "sla_fire_lateness_seconds", NULL, (double)late_us / 1e6);
}

static void on_fired(void *arg, int err, const json_t *result)
{
    fire_batch_t *b = arg;
    dispatch_sla_t *sla = b->sla;
    const json_t *body = json_object_get(result, "body");
    const json_t *x;
    size_t i;

    if (sla_returned(sla)) {
        free(b);
        return;
    }
    sla->n_firing--;
    if (err < 0 || !body) {
        /* An SQL error or an event that does not fit may be one deadline's doing: halve the
         * batches until it is alone, so that the others fire meanwhile. A lost connection
         * (or an unknown COMMIT) is everyone's: all wait. */
        int is_local = err != AC_ERR_UNAVAILABLE && err != AC_ERR_NOMEM;
        if (is_local && b->n > 1) {
            sla->batch_limit = b->n / 2;
            ac_warn("sla: firing %zu deadlines failed (%s); again in batches of %zu", b->n,
                    err < 0 ? ac_strerror(err) : "error", sla->batch_limit);
            for (i = 0; i < b->n; i++) /* due already: back at once */
                arm(sla, b->d[i].id, b->d[i].due_at_us, b->d[i].version);
        } else {
            if (b->n == 1)
                ac_error("sla: firing deadline %llu failed (%s); retrying in %.0f s",
                         (unsigned long long)b->d[0].id, err < 0 ? ac_strerror(err) : "error",
                         RETRY_S);
            else
                ac_warn("sla: firing %zu deadlines failed (%s); retrying in %.0f s", b->n,
                        ac_strerror(err), RETRY_S);
            rearm_later(sla, b->d, b->n);
        }
        free(b);
        fire_pump(sla);
        return;
    }
    if (sla->batch_limit < FIRE_BATCH)
        sla->batch_limit = sla->batch_limit * 2 < FIRE_BATCH ? sla->batch_limit * 2 : FIRE_BATCH;
    int64_t at = now_us();
    size_t n_fired = json_array_size(json_object_get(body, "fired"));
    json_array_foreach(json_object_get(body, "fired"), i, x)
        record_lateness(sla, at - json_integer_value(json_array_get(x, 1)));
    if (n_fired > 0)
        ac_metrics_add(sla->svc->metrics, "sla_fired_total", NULL, (double)n_fired);
    /* still pending: moved, or not due by the database's clock */
    json_array_foreach(json_object_get(body, "rearm"), i, x)
    {
        int64_t due = json_integer_value(json_array_get(x, 1));
        arm(sla, (uint64_t)json_integer_value(json_array_get(x, 0)),
            due > at ? due : at + (int64_t)(RETRY_S * 1e6),
            (uint32_t)json_integer_value(json_array_get(x, 2)));
    }
    ac_debug("sla: %zu of %zu due deadlines fired", n_fired, b->n);
    free(b);
    fire_pump(sla);
}

static void fire_pump(dispatch_sla_t *sla)
{
    while (sla->n_firing < FIRES_IN_FLIGHT && sla->due_head < sla->n_due) {
        size_t n = sla->n_due - sla->due_head;
        if (n > sla->batch_limit)
            n = sla->batch_limit;
        fire_batch_t *b = malloc(sizeof *b + n * sizeof b->d[0]);
        char *ids = malloc(n * 21 + 3), *versions = malloc(n * 11 + 3);
        if (!b || !ids || !versions) {
            free(b);
            free(ids);
            free(versions);
            return; /* the next firing or wake-up tries again */
        }
        b->sla = sla;
        b->n = n;
        memcpy(b->d, sla->due + sla->due_head, n * sizeof b->d[0]);
        sla->due_head += n;
        size_t li = 0, lv = 0;
        ids[li++] = '{';
        versions[lv++] = '{';
        for (size_t i = 0; i < n; i++) {
            li += (size_t)sprintf(ids + li, "%s%llu", i ? "," : "", (unsigned long long)b->d[i].id);
            lv += (size_t)sprintf(versions + lv, "%s%u", i ? "," : "", (unsigned)b->d[i].version);
        }
        ids[li++] = '}';
        ids[li] = '\0';
        versions[lv++] = '}';
        versions[lv] = '\0';
        int rc =
            sla_call(sla, DISPATCH_STMT_SLA_FIRE, (const char *[]){ids, versions}, on_fired, b);
        free(ids);
        free(versions);
        if (rc < 0) {
            ac_warn("sla: cannot fire %zu deadlines now (%s); retrying in %.0f s", n,
                    ac_strerror(rc), RETRY_S);
            rearm_later(sla, b->d, n);
            free(b);
            return;
        }
        sla->n_firing++;
    }
}

/* --- metrics, the tick -------------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void on_metrics_render(ac_metrics_t *m, void *arg)
{
    dispatch_t *svc = arg;
    dispatch_sla_t *sla = svc->sla;
    if (!sla)
        return;
    ac_metrics_set(m, "sla_deadlines_armed", NULL,
                   sla->is_loaded ? (double)dispatch_deadlines_count(sla->set) : 0);
    ac_metrics_set(m, "sla_deadlines_loaded", NULL, sla->is_loaded ? 1 : 0);
    ac_metrics_set(m, "sla_fire_backlog", NULL, (double)(sla->n_due - sla->due_head));
    size_t n = sla->n_lateness < LATENESS_RING ? (size_t)sla->n_lateness : LATENESS_RING;
    if (n == 0)
        return;
    int64_t *v = malloc(n * sizeof *v);
    if (!v)
        return;
    memcpy(v, sla->lateness_us, n * sizeof *v);
    qsort(v, n, sizeof *v, cmp_i64);
    size_t median = (n - 1) / 2; /* an element's index (the lower median), not a value */
    ac_metrics_set(m, "sla_fire_lateness_recent_seconds", "quantile=\"0.5\"",
                   (double)v[median] / 1e6);
    ac_metrics_set(m, "sla_fire_lateness_recent_seconds", "quantile=\"0.99\"",
                   (double)v[(size_t)((double)(n - 1) * 0.99 + 0.5)] / 1e6);
    ac_metrics_set(m, "sla_fire_lateness_recent_seconds", "quantile=\"1\"", (double)v[n - 1] / 1e6);
    ac_metrics_set(m, "sla_fire_lateness_recent_count", NULL, (double)n);
    free(v);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    dispatch_sla_t *sla = ac_container_of(w, dispatch_sla_t, tick);
    (void)revents;
    if (!sla->is_loaded) {
        load_start(sla);
        return;
    }
    if (!sla->is_pols_valid || ev_now(loop) - sla->pols_loaded_at >= SWEEP_S)
        pols_kick(sla);
    if (ev_now(loop) - sla->last_sweep >= SWEEP_S) {
        sla->last_sweep = ev_now(loop);
        sync_kick(sla);
        compute_kick(sla);
        return;
    }
    if (sla->is_sync_again && !sla->is_syncing) {
        sla->is_sync_again = 0;
        sync_kick(sla);
    }
    if (sla->is_compute_again && !sla->is_computing) {
        sla->is_compute_again = 0;
        compute_kick(sla);
    }
    fire_pump(sla);
}

int dispatch_sla_start(dispatch_t *self)
{
    static const struct {
        const char *name;
        ac_metric_type_t type;
        const char *help;
    } families[] = {
        {"sla_deadlines_armed", AC_METRIC_GAUGE,
         "SLA deadlines armed in memory (running clocks at their next level, vendor deadlines)"},
        {"sla_deadlines_loaded", AC_METRIC_GAUGE,
         "1 once the armed deadlines have been loaded after the start"},
        {"sla_load_seconds", AC_METRIC_GAUGE, "how long loading the armed deadlines took"},
        {"sla_fire_backlog", AC_METRIC_GAUGE, "due deadlines waiting for a firing transaction"},
        {"sla_fired_total", AC_METRIC_COUNTER, "SLA deadlines fired (sla.* events)"},
        {"sla_clocks_computed_total", AC_METRIC_COUNTER, "SLA clocks computed and saved"},
        {"sla_clocks_proposed_total", AC_METRIC_COUNTER,
         "new tickets' SLA clocks computed for the consumer's insert (migration 019)"},
        {"sla_fire_lateness_seconds", AC_METRIC_HISTOGRAM,
         "from a deadline's due time to its firing transaction's commit"},
        {"sla_fire_lateness_recent_seconds", AC_METRIC_GAUGE,
         "lateness quantiles over the last 16384 firings"},
        {"sla_fire_lateness_recent_count", AC_METRIC_GAUGE,
         "firings the lateness quantiles are computed over"},
    };
    dispatch_sla_t *sla = calloc(1, sizeof *sla);
    if (!sla || !(sla->set = dispatch_deadlines_new()) ||
        !(sla->page = malloc(LOAD_PAGE * sizeof *sla->page))) {
        ac_error("sla: out of memory");
        if (sla)
            sla_free(sla);
        return -1;
    }
    sla->svc = self;
    sla->batch_limit = FIRE_BATCH;
    for (size_t i = 0; i < AC_ARRAY_LEN(families); i++)
        (void)ac_metrics_declare(self->metrics, families[i].name, families[i].type,
                                 families[i].help);
    ac_metrics_on_render(self->metrics, on_metrics_render, self);
    self->sla = sla;
    sla->last_sweep = ev_now(self->loop);
    ev_timer_init(&sla->tick, on_tick, TICK_S, TICK_S);
    ev_timer_start(self->loop, &sla->tick);
    ev_timer_init(&sla->compute_timer, on_compute_timer, COMPUTE_GAP_S, 0.);
    load_start(sla); /* fails while the pool connects; the NOTIFY connection or tick retries */
    return 0;
}

void dispatch_sla_stop(dispatch_t *self)
{
    dispatch_sla_t *sla = self->sla;
    if (!sla)
        return;
    self->sla = NULL;
    ev_timer_stop(self->loop, &sla->tick);
    ev_timer_stop(self->loop, &sla->compute_timer);
    if (sla->set)
        dispatch_deadlines_detach(sla->set);
    ac_db_txn_free(&sla->load_txn);
    sla->is_stopped = 1;
    if (sla->refs == 0)
        sla_free(sla);
}

void dispatch_sla_on_notify(dispatch_t *self, const char *payload)
{
    dispatch_sla_t *sla = self->sla;
    if (!sla)
        return;
    if (!sla->is_loaded) {
        load_start(sla);
        return;
    }
    /* 'vendor': the change queue has work (010_sla_notify.sql); anything else: clocks
     * were marked dirty; NULL (the listener reconnected): either may have been missed */
    int is_vendor = payload && strcmp(payload, "vendor") == 0;
    if (!payload || is_vendor)
        sync_kick(sla);
    if (!is_vendor)
        compute_soon(sla);
}

/* --- HTTP: input rules ------------------------------------------------------------------ */

__attribute__((format(printf, 5, 6))) static int
verr(dispatch_verr_t *err, int status, const char *code, const char *field, const char *fmt, ...)
{
    va_list ap;
    err->status = status;
    snprintf(err->code, sizeof err->code, "%s", code);
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return AC_ERR_INVALID;
}

static int is_listed(const char *const *names, const char *s)
{
    for (size_t i = 0; s && names[i]; i++)
        if (strcmp(names[i], s) == 0)
            return 1;
    return 0;
}

static int check_known(const json_t *obj, const char *const *names, const char *prefix,
                       dispatch_verr_t *err)
{
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)(uintptr_t)obj, key, v)
    {
        if (!is_listed(names, key)) {
            char path[64];
            snprintf(path, sizeof path, "%s%s", prefix, key);
            return verr(err, 422, "unknown_field", path, "unknown field %.60s", path);
        }
    }
    return 0;
}

static size_t utf8_len(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

static int is_calendar_name(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n < 1 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 (i > 0 && (c == '.' || c == '_' || c == '-'));
        if (!ok)
            return 0;
    }
    return 1;
}

static int is_uuid(const char *s)
{
    if (!s || strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return 0;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return 0;
    }
    return 1;
}

/* An integer lo..hi, or (is_nullable) null. */
static int check_int(const json_t *v, const char *path, json_int_t lo, json_int_t hi,
                     int is_nullable, dispatch_verr_t *err)
{
    if (is_nullable && json_is_null(v))
        return 0;
    if (!json_is_integer(v))
        return verr(err, 422, "invalid_field", path, "%s must be a whole number of seconds%s", path,
                    is_nullable ? " or null" : "");
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return verr(err, 422, "invalid_field", path, "%s must be %lld to %lld, not %lld", path,
                    (long long)lo, (long long)hi, (long long)x);
    return 0;
}

static int check_bool(const json_t *v, const char *path, dispatch_verr_t *err)
{
    return json_is_boolean(v)
               ? 0
               : verr(err, 422, "invalid_field", path, "%s must be true or false", path);
}

static const char *const POLICY_KEYS[] = {
    "name",
    "selector",
    "targets",
    "business_time",
    "calendar",
    "warning_fractions",
    "grace_seconds",
    "active",
    "expected_version",
    NULL,
};
static const char *const SELECTOR_KEYS[] = {"priority", "customer_tier", "category", NULL};

/* A policy body: every field of a create (defaults filled), or the fields a PATCH gives
 * (plus expected_version, 0 when absent). *out: the validated fields for SQL. */
static int validate_policy(const json_t *body, int is_create, json_t **out, int64_t *expected,
                           dispatch_verr_t *err)
{
    json_t *v;
    int rc;
    json_t *doc = json_object();

    *out = NULL;
    *expected = 0;
    if (!doc)
        return verr(err, 503, "unavailable", NULL, "out of memory; retry");
    if ((rc = check_known(body, POLICY_KEYS, "", err)) < 0)
        goto fail;
    if (is_create && json_object_get(body, "expected_version")) {
        rc = verr(err, 422, "unknown_field", "expected_version",
                  "expected_version belongs to a PATCH");
        goto fail;
    }
    if ((v = json_object_get(body, "expected_version"))) {
        if ((rc = check_int(v, "expected_version", 1, INT64_MAX, 0, err)) < 0)
            goto fail;
        *expected = json_integer_value(v);
    }

    if ((v = json_object_get(body, "name"))) {
        if (!json_is_string(v) || utf8_len(json_string_value(v)) < 1 ||
            utf8_len(json_string_value(v)) > 100) {
            rc = verr(err, 422, "invalid_field", "name",
                      "name must be a string of 1 to 100 characters");
            goto fail;
        }
        json_object_set(doc, "name", v);
    } else if (is_create) {
        rc = verr(err, 422, "missing_field", "name", "name is required");
        goto fail;
    }

    if ((v = json_object_get(body, "selector"))) {
        static const char *const *const allowed[] = {PRIORITIES, TIERS, CATEGORIES};
        json_t *sel = json_object();
        if (!json_is_object(v)) {
            json_decref(sel);
            rc = verr(err, 422, "invalid_field", "selector",
                      "selector must be an object with priority, customer_tier, category");
            goto fail;
        }
        if ((rc = check_known(v, SELECTOR_KEYS, "selector.", err)) < 0) {
            json_decref(sel);
            goto fail;
        }
        for (int i = 0; i < 3; i++) {
            json_t *x = json_object_get(v, SELECTOR_KEYS[i]);
            char path[48];
            snprintf(path, sizeof path, "selector.%s", SELECTOR_KEYS[i]);
            if (!x) {
                if (is_create)
                    json_object_set_new(sel, SELECTOR_KEYS[i], json_null());
                continue;
            }
            if (!json_is_null(x) && !is_listed(allowed[i], json_string_value(x))) {
                json_decref(sel);
                rc = verr(err, 422, "invalid_field", path,
                          "%s must be null (any) or one of the known values, not %.40s", path,
                          json_is_string(x) ? json_string_value(x) : "that");
                goto fail;
            }
            json_object_set(sel, SELECTOR_KEYS[i], x);
        }
        json_object_set_new(doc, "selector", sel);
    } else if (is_create) {
        json_object_set_new(doc, "selector",
                            json_pack("{s:n, s:n, s:n}", "priority", "customer_tier", "category"));
    }

    if ((v = json_object_get(body, "targets"))) {
        json_t *tg = json_object();
        int n_set = 0;
        if (!json_is_object(v)) {
            json_decref(tg);
            rc = verr(err, 422, "invalid_field", "targets",
                      "targets must be an object with first_response, arrival, resolution");
            goto fail;
        }
        if ((rc = check_known(v, TARGETS, "targets.", err)) < 0) {
            json_decref(tg);
            goto fail;
        }
        for (int i = 0; i < 3; i++) {
            json_t *x = json_object_get(v, TARGETS[i]);
            char path[48];
            snprintf(path, sizeof path, "targets.%s", TARGETS[i]);
            if (!x) {
                if (is_create)
                    json_object_set_new(tg, TARGETS[i], json_null());
                continue;
            }
            if ((rc = check_int(x, path, 1, DISPATCH_SLA_MAX_TARGET_S, 1, err)) < 0) {
                json_decref(tg);
                goto fail;
            }
            n_set += !json_is_null(x);
            json_object_set(tg, TARGETS[i], x);
        }
        if (is_create && n_set == 0) {
            json_decref(tg);
            rc = verr(err, 422, "invalid_field", "targets", "a policy needs at least one target");
            goto fail;
        }
        json_object_set_new(doc, "targets", tg);
    } else if (is_create) {
        rc = verr(err, 422, "missing_field", "targets", "targets is required");
        goto fail;
    }

    if ((v = json_object_get(body, "business_time"))) {
        if ((rc = check_bool(v, "business_time", err)) < 0)
            goto fail;
        json_object_set(doc, "business_time", v);
    } else if (is_create)
        json_object_set_new(doc, "business_time", json_false());

    if ((v = json_object_get(body, "calendar"))) {
        if (!is_calendar_name(json_string_value(v))) {
            rc = verr(err, 422, "invalid_field", "calendar", "calendar must be a calendar's name");
            goto fail;
        }
        json_object_set(doc, "calendar", v);
    } else if (is_create)
        json_object_set_new(doc, "calendar", json_string("24x7"));

    if ((v = json_object_get(body, "warning_fractions"))) {
        size_t i, k;
        json_t *x;
        if (!json_is_array(v) || json_array_size(v) > DISPATCH_SLA_MAX_FRACTIONS) {
            rc = verr(err, 422, "invalid_field", "warning_fractions",
                      "warning_fractions must be a list of at most %d numbers",
                      DISPATCH_SLA_MAX_FRACTIONS);
            goto fail;
        }
        json_array_foreach(v, i, x)
        {
            char path[48];
            double f = json_number_value(x);
            snprintf(path, sizeof path, "warning_fractions[%zu]", i);
            if (!json_is_number(x) || !isfinite(f) || f <= 0 || f >= 1) {
                rc = verr(err, 422, "invalid_field", path,
                          "%s must be a number between 0 and 1 (both excluded)", path);
                goto fail;
            }
            for (k = 0; k < i; k++)
                if (json_number_value(json_array_get(v, k)) == f) {
                    rc = verr(err, 422, "invalid_field", path, "%s repeats %g", path, f);
                    goto fail;
                }
        }
        json_object_set(doc, "warning_fractions", v);
    } else if (is_create)
        json_object_set_new(doc, "warning_fractions", json_pack("[f, f]", 0.5, 0.75));

    if ((v = json_object_get(body, "grace_seconds"))) {
        if ((rc = check_int(v, "grace_seconds", 0, DISPATCH_SLA_MAX_TARGET_S, 0, err)) < 0)
            goto fail;
        json_object_set(doc, "grace_seconds", v);
    } else if (is_create)
        json_object_set_new(doc, "grace_seconds", json_integer(3600));

    if ((v = json_object_get(body, "active"))) {
        if ((rc = check_bool(v, "active", err)) < 0)
            goto fail;
        json_object_set(doc, "active", v);
    } else if (is_create)
        json_object_set_new(doc, "active", json_true());

    *out = doc;
    return 0;
fail:
    json_decref(doc);
    return rc;
}

/* --- HTTP: handlers ------------------------------------------------------------------------ */

static void reply_verr(ac_http_req_t *req, const dispatch_verr_t *err)
{
    ac_http_reply_error(req, err->status, err->code, err->field[0] ? err->field : NULL, "%s",
                        err->message);
}

/* Runs a write statement whose first parameter is `doc` dumped as JSON. */
static void http_sql_doc(dispatch_t *self, ac_http_req_t *req, int stmt, const char *first,
                         const json_t *doc, const char *last)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    if (!text) {
        ac_http_reply_error(req, 503, "unavailable", NULL, "out of memory; retry");
        return;
    }
    if (first)
        dispatch_http_sql(self, req, 1, stmt, (const char *[]){first, text, last});
    else
        dispatch_http_sql(self, req, 1, stmt, (const char *[]){text, last});
    free(text);
    dispatch_sla_policies_changed(self); /* (a policy or a calendar) */
}

static void on_policy_create(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    dispatch_verr_t err;
    json_t *doc = NULL;
    int64_t expected = 0;
    if (dispatch_is_refused(self, req))
        return;
    if (validate_policy(ac_http_req_json(req), 1, &doc, &expected, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    http_sql_doc(self, req, DISPATCH_STMT_SLA_POLICY_CREATE, NULL, doc, NULL);
    json_decref(doc);
}

static void on_policy_patch(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *id = ac_http_req_param(req, 0);
    dispatch_verr_t err;
    json_t *doc = NULL;
    int64_t expected = 0;
    char version[24];
    if (dispatch_is_refused(self, req))
        return;
    if (!is_uuid(id)) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no policy %.40s", id ? id : "");
        return;
    }
    if (validate_policy(ac_http_req_json(req), 0, &doc, &expected, &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    snprintf(version, sizeof version, "%lld", (long long)expected);
    http_sql_doc(self, req, DISPATCH_STMT_SLA_POLICY_PATCH, id, doc, expected ? version : NULL);
    json_decref(doc);
}

static void on_policy_get(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *id = ac_http_req_param(req, 0);
    if (dispatch_is_refused(self, req))
        return;
    if (!is_uuid(id)) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no policy %.40s", id ? id : "");
        return;
    }
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_SLA_POLICY_GET, (const char *[]){id});
}

static void on_policy_list(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    if (dispatch_is_refused(self, req))
        return;
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_SLA_POLICY_LIST, NULL);
}

/* A calendar object as calendar.h takes it: 0, or an error naming calendar.<field>. */
static int validate_calendar(dispatch_t *self, const json_t *v, dispatch_verr_t *err)
{
    dispatch_calendar_t *cal = NULL;
    dispatch_cal_err_t cerr;
    if (!v)
        return verr(err, 422, "missing_field", "calendar", "calendar is required");
    if (!json_is_object(v))
        return verr(err, 422, "invalid_field", "calendar", "calendar must be an object");
    int rc = dispatch_calendar_parse(v, tzdir(self), &cal, &cerr);
    dispatch_calendar_destroy(&cal);
    if (rc == AC_ERR_INVALID) {
        char path[80];
        snprintf(path, sizeof path, "calendar%s%s", cerr.field[0] ? "." : "", cerr.field);
        return verr(err, 422, "invalid_field", path, "%s", cerr.message);
    }
    if (rc < 0)
        return verr(err, 503, "unavailable", NULL, "the calendar cannot be checked now (%s)",
                    ac_strerror(rc));
    return 0;
}

static void on_calendar_create(ac_http_req_t *req, void *arg)
{
    static const char *const keys[] = {"name", "calendar", NULL};
    dispatch_t *self = arg;
    const json_t *body = ac_http_req_json(req);
    const char *name = json_string_value(json_object_get(body, "name"));
    dispatch_verr_t err;
    if (dispatch_is_refused(self, req))
        return;
    if (check_known(body, keys, "", &err) < 0 ||
        validate_calendar(self, json_object_get(body, "calendar"), &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    if (!json_object_get(body, "name")) {
        ac_http_reply_error(req, 422, "missing_field", "name", "name is required");
        return;
    }
    if (!is_calendar_name(name)) {
        ac_http_reply_error(req, 422, "invalid_field", "name",
                            "name must be 1 to 64 letters, digits, '.', '_' or '-', starting "
                            "with a letter or digit");
        return;
    }
    http_sql_doc(self, req, DISPATCH_STMT_SLA_CALENDAR_CREATE, name,
                 json_object_get(body, "calendar"), NULL);
}

static void on_calendar_patch(ac_http_req_t *req, void *arg)
{
    static const char *const keys[] = {"calendar", "expected_version", NULL};
    dispatch_t *self = arg;
    const char *name = ac_http_req_param(req, 0);
    const json_t *body = ac_http_req_json(req);
    const json_t *ev = json_object_get(body, "expected_version");
    dispatch_verr_t err;
    char version[24];
    if (dispatch_is_refused(self, req))
        return;
    if (!is_calendar_name(name)) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no calendar %.64s", name ? name : "");
        return;
    }
    if (check_known(body, keys, "", &err) < 0 ||
        (ev && check_int(ev, "expected_version", 1, INT64_MAX, 0, &err) < 0) ||
        validate_calendar(self, json_object_get(body, "calendar"), &err) < 0) {
        reply_verr(req, &err);
        return;
    }
    snprintf(version, sizeof version, "%lld", (long long)json_integer_value(ev));
    http_sql_doc(self, req, DISPATCH_STMT_SLA_CALENDAR_PATCH, name,
                 json_object_get(body, "calendar"), ev ? version : NULL);
}

static void on_calendar_get(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *name = ac_http_req_param(req, 0);
    if (dispatch_is_refused(self, req))
        return;
    if (!is_calendar_name(name)) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no calendar %.64s", name ? name : "");
        return;
    }
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_SLA_CALENDAR_GET, (const char *[]){name});
}

static void on_calendar_list(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    if (dispatch_is_refused(self, req))
        return;
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_SLA_CALENDAR_LIST, NULL);
}

/* GET /v1/tickets/{number}/sla: the clocks, computed here at the database's now. */
typedef struct view_call {
    dispatch_op_t op; /* first */
    dispatch_sla_t *sla;
} view_call_t;

typedef struct level_ref {
    const json_t *l;
} level_ref_t;

static int level_cmp(const void *a, const void *b)
{
    const json_t *x = ((const level_ref_t *)a)->l, *y = ((const level_ref_t *)b)->l;
    const json_t *dx = json_object_get(x, "due_us"), *dy = json_object_get(y, "due_us");
    if (json_is_integer(dx) != json_is_integer(dy))
        return json_is_integer(dx) ? -1 : 1; /* pending-while-paused last */
    if (json_is_integer(dx) && json_integer_value(dx) != json_integer_value(dy))
        return json_integer_value(dx) < json_integer_value(dy) ? -1 : 1;
    json_int_t ix = json_integer_value(json_object_get(x, "id"));
    json_int_t iy = json_integer_value(json_object_get(y, "id"));
    return ix < iy ? -1 : ix > iy;
}

/* A clock whose status history moved after the engine's last computation (its row is
 * dirty until the engine saves it, COMPUTE_GAP_S or so later): its deadlines as the
 * engine will save them — merged with the stored ones as dispatch_sla_levels_merge() does
 * — in the view's shape (sla_state's "deadlines": ordered by due time, then id). NULL when
 * out of memory. */
static json_t *deadlines_now(const json_t *ticket, const json_t *clock, const clock_calc_t *cc)
{
    const char *state = json_string_value(json_object_get(clock, "state"));
    bool is_open = state && (strcmp(state, "running") == 0 || strcmp(state, "paused") == 0);
    int64_t next_us;
    json_t *levels = dispatch_sla_levels_merge(
        json_integer_value(json_object_get(clock, "id")), json_object_get(clock, "levels"), cc->lv,
        cc->n_lv, is_open, &next_us, json_string_value(json_object_get(ticket, "number")),
        json_string_value(json_object_get(clock, "target")));
    size_t n = json_array_size(levels), i;
    level_ref_t *order = calloc(n ? n : 1, sizeof(level_ref_t));
    json_t *out = json_array();
    if (!levels || !order || !out)
        goto fail;
    for (i = 0; i < n; i++)
        order[i].l = json_array_get(levels, i);
    qsort(order, n, sizeof(level_ref_t), level_cmp);
    for (i = 0; i < n; i++) {
        const json_t *l = order[i].l, *due = json_object_get(l, "due_us");
        const json_t *fired = json_object_get(l, "fired_us");
        char id[24];
        snprintf(id, sizeof id, "%" JSON_INTEGER_FORMAT,
                 json_integer_value(json_object_get(l, "id")));
        json_t *d = json_pack(
            "{s:s, s:O?, s:O?, s:O?, s:o, s:o}", "id", id, "level", json_object_get(l, "level"),
            "fraction", json_object_get(l, "fraction"), "state", json_object_get(l, "state"),
            "due_at", json_is_integer(due) ? json_time(json_integer_value(due)) : json_null(),
            "fired_at",
            json_is_integer(fired) ? json_time(json_integer_value(fired)) : json_null());
        if (!d || json_array_append_new(out, d) < 0)
            goto fail;
    }
    free(order);
    json_decref(levels);
    return out;
fail:
    free(order);
    json_decref(levels);
    json_decref(out);
    return NULL;
}

static bool is_in(const json_t *array, const char *s)
{
    const json_t *v;
    size_t i;
    json_array_foreach(array, i, v)
    {
        if (s && json_is_string(v) && strcmp(json_string_value(v), s) == 0)
            return true;
    }
    return false;
}

static json_t *render_clock(dispatch_sla_t *sla, const json_t *ticket, const json_t *view,
                            ticket_marks_t *tm, const json_t *clock, int64_t at_us)
{
    const json_t *pol = policy_of(view, clock);
    const char *state = json_string_value(json_object_get(clock, "state"));
    const json_t *d, *next = NULL;
    json_t *deadlines = NULL, *out;
    bool is_urgent =
        strcmp(str_or_empty(json_string_value(json_object_get(ticket, "priority"))), "P1") == 0;
    clock_calc_t cc;
    size_t i;

    if (clock_compute(sla, view, tm, is_urgent, clock, at_us, &cc) < 0)
        return NULL;
    if (is_in(json_object_get(view, "dirty"),
              json_string_value(json_object_get(clock, "target")))) {
        if (!(deadlines = deadlines_now(ticket, clock, &cc)))
            return NULL;
    } else {
        deadlines = json_incref(json_object_get(clock, "deadlines"));
    }
    json_array_foreach(deadlines, i, d)
    {
        if (strcmp(str_or_empty(json_string_value(json_object_get(d, "state"))), "pending") == 0 &&
            json_is_string(json_object_get(d, "due_at"))) {
            next = d;
            break; /* ordered by due time */
        }
    }
    bool is_open =
        strcmp(str_or_empty(state), "running") == 0 || strcmp(str_or_empty(state), "paused") == 0;
    out = json_pack(
        "{s:O?, s:{s:O?, s:O?}, s:O?, s:O?, s:O?, s:s, s:b, s:O?, s:O?, s:I, s:I, s:o, s:o, s:O?}",
        "target", json_object_get(clock, "target"), "policy", "id", json_object_get(pol, "id"),
        "name", json_object_get(pol, "name"), "target_seconds",
        json_object_get(json_object_get(pol, "targets"),
                        str_or_empty(json_string_value(json_object_get(clock, "target")))),
        "business_time", json_object_get(pol, "business_time"), "calendar",
        json_object_get(pol, "calendar"), "state", str_or_empty(state), "breached",
        !json_is_null(json_object_get(clock, "breached_at")), "met_at",
        json_object_get(clock, "met_at"), "breached_at", json_object_get(clock, "breached_at"),
        "elapsed_seconds", (json_int_t)(cc.elapsed_us / US_PER_S), "paused_seconds",
        (json_int_t)(cc.paused_us / US_PER_S), "due_at",
        is_open && cc.due_us ? json_time(cc.due_us) : json_null(), "next_deadline",
        next ? json_pack("{s:O?, s:O?, s:O?}", "level", json_object_get(next, "level"), "fraction",
                         json_object_get(next, "fraction"), "due_at",
                         json_object_get(next, "due_at"))
             : json_null(),
        "deadlines", deadlines);
    json_decref(deadlines);
    return out;
}

static void on_view(void *arg, int err, const json_t *result)
{
    view_call_t *v = arg;
    dispatch_sla_t *sla = v->sla;
    ac_http_req_t *req = v->op.req;
    const json_t *body = json_object_get(result, "body");
    const json_t *ticket = json_object_get(body, "ticket"), *clock, *e;
    json_t *clocks = NULL, *out = NULL;
    size_t i;

    dispatch_op_detach(sla->svc, &v->op);
    free(v);
    if (sla_returned(sla)) {
        if (req)
            ac_http_reply_error(req, 503, "unavailable", NULL, "the server is shutting down");
        return;
    }
    if (!req)
        return; /* answered already (shutdown) */
    if (err < 0) {
        dispatch_reply_db_error(req, err == AC_ERR_DB ? AC_ERR_UNAVAILABLE : err, NULL);
        return;
    }
    if ((e = json_object_get(result, "error"))) {
        ac_http_reply_error(req, (int)json_integer_value(json_object_get(e, "status")),
                            json_string_value(json_object_get(e, "code")), NULL, "%s",
                            json_string_value(json_object_get(e, "message")));
        return;
    }
    ticket_marks_t tm;
    int64_t at_us = json_integer_value(json_object_get(body, "now_us"));
    if (marks_init(&tm, json_object_get(ticket, "history")) < 0 || !(clocks = json_array()))
        goto fail;
    json_array_foreach(json_object_get(ticket, "clocks"), i, clock)
    {
        json_t *c = render_clock(sla, ticket, body, &tm, clock, at_us);
        if (!c || json_array_append_new(clocks, c) < 0)
            goto fail;
    }
    out =
        json_pack("{s:O?, s:O?, s:O?, s:o, s:o, s:O?}", "ticket", json_object_get(ticket, "number"),
                  "priority", json_object_get(ticket, "priority"), "status",
                  json_object_get(ticket, "status"), "now", json_time(at_us), "clocks", clocks,
                  "vendor_deadlines", json_object_get(body, "references"));
    clocks = NULL;
    if (!out)
        goto fail;
    marks_fini(&tm);
    ac_http_reply_json(req, 200, out);
    return;
fail:
    marks_fini(&tm);
    json_decref(clocks);
    ac_http_reply_error(req, 500, "internal", NULL, "the SLA clocks could not be computed");
}

static void on_ticket_sla(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *number = ac_http_req_param(req, 0);
    if (dispatch_is_refused(self, req))
        return;
    if (!number || strlen(number) > 32 || strncmp(number, "SV-", 3) != 0) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no ticket %.40s", number ? number : "");
        return;
    }
    if (!self->sla) {
        ac_http_reply_error(req, 503, "unavailable", NULL, "the SLA engine is not running");
        return;
    }
    view_call_t *v = calloc(1, sizeof *v);
    if (!v) {
        ac_http_reply_error(req, 503, "unavailable", NULL, "out of memory; retry");
        return;
    }
    v->sla = self->sla;
    dispatch_op_attach(self, &v->op, req);
    int rc = sla_call(v->sla, DISPATCH_STMT_SLA_VIEW, (const char *[]){number}, on_view, v);
    if (rc < 0) {
        dispatch_op_detach(self, &v->op);
        free(v);
        dispatch_reply_db_error(req, rc == AC_ERR_NOMEM ? rc : AC_ERR_UNAVAILABLE, NULL);
    }
}

#define READERS (AC_ROLE_AGENT | AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR | AC_ROLE_INTEGRATION)

const ac_http_route_t dispatch_sla_routes[] = {
    {"GET", "/v1/tickets/{}/sla", READERS, on_ticket_sla, "tickets_sla"},
    {"GET", "/v1/sla/policies", READERS, on_policy_list, "sla_policies_list"},
    {"POST", "/v1/sla/policies", AC_ROLE_SUPERVISOR, on_policy_create, "sla_policies_create"},
    {"GET", "/v1/sla/policies/{}", READERS, on_policy_get, "sla_policies_get"},
    {"PATCH", "/v1/sla/policies/{}", AC_ROLE_SUPERVISOR, on_policy_patch, "sla_policies_patch"},
    {"GET", "/v1/sla/calendars", READERS, on_calendar_list, "sla_calendars_list"},
    {"POST", "/v1/sla/calendars", AC_ROLE_SUPERVISOR, on_calendar_create, "sla_calendars_create"},
    {"GET", "/v1/sla/calendars/{}", READERS, on_calendar_get, "sla_calendars_get"},
    {"PATCH", "/v1/sla/calendars/{}", AC_ROLE_SUPERVISOR, on_calendar_patch, "sla_calendars_patch"},
    {NULL, NULL, 0, NULL, NULL},
};
