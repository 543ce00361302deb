/* assignment.c — who holds a ticket (issue 4, item 2): the assignment worker and the
 * assignment routes (docs/dispatch-api.md "## Assignment"; SQL in
 * migrations/003_assignment.sql; filters and score in score.h).
 *
 * The worker. Requests wait in dispatch.assign_queue (a new ticket, an accepted plan, a
 * decline, a re-dispatch). The worker keeps the ROSTER — every engineer's role, skills,
 * regions, availability, capacity, open jobs and parsed shift calendar — in memory. A
 * batch is one transaction:
 *   1. dispatch.assign_take(): up to BATCH_LIMIT due requests, locked FOR UPDATE SKIP
 *      LOCKED (several dispatch processes can share the queue), P1 first, then oldest;
 *   2. for each, in that order: dispatch_match() (score.h) over the roster; the pick is
 *      counted as pending for its engineer at once, so later requests see it;
 *   3. dispatch.assign_apply(decisions): each request gets the first of its (up to
 *      TOP_K) choices that still fits — same engineer version, available, open jobs <
 *      capacity, checked and counted up in one guarded UPDATE of the engineer's load row,
 *      so capacity holds against every concurrent transaction — stored with its score
 *      breakdown and "why", plus its ticket.assigned event; or, when nobody fits, the
 *      request stays queued and ONE assignment.unfilled alert is returned per queue entry;
 *   4. the events go into the outbox (ops.c), COMMIT.
 * One batch is chosen at a time; while it commits (up to MAX_COMMITTING), the next one is
 * taken and chosen. The commit does not wait for the disk (see batch_start()).
 *
 * The roster follows the database through NOTIFY dispatch_assign (triggers of 003):
 * 'engineer <id>' (created or changed: reloaded before the next batch) and 'load <id> <n>
 * <version>' (an engineer's open jobs after a committed change, with the load row's
 * version, so that a late notification never overwrites a newer count); '' means "the
 * queue has work". The worker's own batches send none (migration 017): it takes their
 * counts from assign_apply's answer and wakes the outbox relay itself. The filters and the score
 * see the database's count plus this worker's picks still pending. A (re)connected listener may
 * have missed notifications: the whole roster is read again, as it is every FULL_RELOAD_S anyway. A
 * stale roster cannot break a rule — the database re-checks every pick — at worst a score used an
 * old count.
 *
 * Unfilled requests are retried every 30 s (their next_try_at), and at once — in a
 * "retry pass" over the unfilled requests of the roles concerned, at most one pass per
 * RETRY_GAP_S — when an engineer of that role changes, frees capacity or comes on shift.
 *
 * On shift: the engineer's calendar says they work now (score.h). Each engineer's state is
 * re-evaluated when its next possible change is due: never for 24x7 shifts, at the next
 * UTC minute while working (shift edges are whole local minutes), at the start of the next
 * working interval while off. The timer (every TICK_S at most) re-evaluates those due, so
 * a shift that starts lets waiting requests in within TICK_S.
 *
 * Owns (struct dispatch_assigner): the roster and its calendars, the batches and the
 * roster read in flight, its timer. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_log.h"
#include "ac_time.h"
#include "ac_uuid.h"
#include "calendar.h"
#include "dispatch.h"
#include "ops.h"
#include "score.h"
#include "store.h"
#include "validate.h"

#define BATCH_LIMIT    100   /* requests per batch */
#define TOP_K          4     /* choices handed to the database per request */
#define TICK_S         5.0   /* longest sleep: due retries, shift changes */
#define RETRY_GAP_S    1.0   /* at most one retry pass per this long */
#define SOON_S         0.15  /* a request whose choices were all taken meanwhile */
#define ERROR_BACKOFF  1.0   /* after a failed batch or roster read */
#define FULL_RELOAD_S  600.0 /* the whole roster, also without a reason */
#define MAX_PENDING    512   /* engineers to reload one by one; beyond: the whole roster */
#define REASON_MAX     500   /* characters of a decline or assignment reason */
#define MAX_COMMITTING 2     /* batches committing while the next one is chosen */
#define ROLE_BIT(r)    (1u << (r))

/* --- a small string-keyed hash map (keys are borrowed from the values) ----------------- */

typedef struct strmap {
    size_t cap, n; /* cap: 0 or a power of two */
    const char **keys;
    void **vals;
} strmap_t;

static uint64_t str_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void *strmap_get(const strmap_t *m, const char *key)
{
    if (m->cap == 0)
        return NULL;
    for (size_t i = str_hash(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->keys[i])
            return NULL;
        if (strcmp(m->keys[i], key) == 0)
            return m->vals[i];
    }
}

static void strmap_clear(strmap_t *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* Adds or replaces. 0 or AC_ERR_NOMEM. */
static int strmap_put(strmap_t *m, const char *key, void *val)
{
    if ((m->n + 1) * 2 > m->cap) {
        strmap_t bigger = {.cap = m->cap ? m->cap * 2 : 64};
        if (!(bigger.keys = calloc(bigger.cap, sizeof *bigger.keys)) ||
            !(bigger.vals = calloc(bigger.cap, sizeof *bigger.vals))) {
            strmap_clear(&bigger);
            return AC_ERR_NOMEM;
        }
        for (size_t i = 0; i < m->cap; i++)
            if (m->keys[i])
                (void)strmap_put(&bigger, m->keys[i], m->vals[i]); /* has room */
        strmap_clear(m);
        *m = bigger;
    }
    for (size_t i = str_hash(key) & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        if (!m->keys[i]) {
            m->keys[i] = key;
            m->vals[i] = val;
            m->n++;
            return 0;
        }
        if (strcmp(m->keys[i], key) == 0) {
            m->keys[i] = key;
            m->vals[i] = val;
            return 0;
        }
    }
}

/* --- the roster -------------------------------------------------------------------------- */

/* One parsed shift calendar, shared by the engineers with the same shift JSON. */
typedef struct shift_entry {
    char *key;                /* canonical JSON (sorted keys, compact) */
    dispatch_calendar_t *cal; /* NULL: unusable (logged once); never on shift */
    int refs;                 /* roster entries using it (for the sweep) */
} shift_entry_t;

/* e.open, what the filters and the score see, is open_db + pending. */
typedef struct roster_entry {
    dispatch_roster_engineer_t e; /* first: the roster array points here */
    shift_entry_t *shift;         /* shared */
    int is_seen;                  /* in the last full reload */
    int open_db;                  /* open jobs as of load_version */
    int64_t load_version;         /* dispatch.engineer_load.version of open_db */
    int pending;                  /* this worker's picks not answered by the database yet */
} roster_entry_t;

static roster_entry_t *entry_of(dispatch_roster_engineer_t *e)
{
    return ac_container_of(e, roster_entry_t, e);
}

/* A newer open-jobs count from the database (a newer load version, or is_forced: a full
 * read). Returns 1 when the count went down (capacity was freed). */
static int entry_set_load(roster_entry_t *r, int open, int64_t version, int is_forced)
{
    int was = r->open_db;
    if (!is_forced && version <= r->load_version)
        return 0; /* older news: notifications and answers cross */
    r->open_db = open;
    r->load_version = version;
    r->e.open = r->open_db + r->pending;
    return open < was;
}

static void entry_add_pending(roster_entry_t *r, int delta)
{
    r->pending += delta;
    if (r->pending < 0)
        r->pending = 0;
    r->e.open = r->open_db + r->pending;
}

typedef enum { W_IDLE, W_LOADING, W_TAKING, W_APPLYING } worker_state_t;

/* A pick counted up in memory before the database confirms it. */
typedef struct pick {
    json_int_t q;                  /* queue entry */
    dispatch_roster_engineer_t *e; /* counted up; NULL: none */
} pick_t;

/* One batch: taken, chosen and applied, then committing while the next one is chosen. */
typedef struct batch {
    struct dispatch_assigner *a;
    ac_db_txn_t *txn; /* owned; NULL: the slot is free */
    pick_t *picks;    /* owned until the database answered the decisions */
    size_t npicks;
    size_t ntaken;    /* requests in the batch */
    size_t nchoosing; /* of which had choices */
    size_t nassigned;
    int64_t t_start_us, t_taken_us, t_applied_us; /* monotonic, for the debug log */
} batch_t;

struct dispatch_assigner {
    dispatch_t *svc;
    dispatch_roster_engineer_t **roster; /* owned array; entries are roster_entry_t */
    size_t n, cap;
    strmap_t by_id;             /* engineer id -> roster_entry_t */
    strmap_t shifts;            /* canonical shift JSON -> shift_entry_t (owned) */
    shift_entry_t **shift_list; /* owned: every shift_entry_t, for freeing */
    size_t nshifts, cap_shifts;

    int is_loaded;                   /* the roster has been read once */
    int is_full_wanted;              /* read the whole roster before the next batch */
    char (*pending)[AC_UUID_STRLEN]; /* engineers to reload (changed) */
    size_t npending;
    size_t nloading; /* pending[0..nloading) are being read now */
    int is_loading_full;
    int64_t last_full_us; /* monotonic */

    worker_state_t state;                /* of the roster read or the batch being chosen */
    ac_db_txn_t *txn;                    /* owned: the roster read in flight */
    batch_t batches[1 + MAX_COMMITTING]; /* the one being chosen + those committing */
    int ncommitting;
    int is_again;         /* a wake-up came while busy */
    unsigned retry_roles; /* roles whose unfilled requests want a retry pass */
    unsigned pass_roles;  /* the retry pass running (0: none) */
    char pass_start[AC_TIME_STRLEN];
    int64_t last_pass_us; /* monotonic start of the last pass */

    ev_timer timer; /* the next wake-up */
};

static void kick(struct dispatch_assigner *a);

static void entry_free_fields(roster_entry_t *r)
{
    for (size_t i = 0; i < r->e.nregions; i++)
        free(r->e.regions[i]);
    free(r->e.regions);
    for (size_t i = 0; i < r->e.nskills; i++)
        free(r->e.skills[i].name);
    free(r->e.skills);
    r->e.regions = NULL;
    r->e.skills = NULL;
    r->e.nregions = r->e.nskills = 0;
}

static const char *tzdir(const struct dispatch_assigner *a)
{
    const char *d = a->svc->cfg->tzdir;
    return d && d[0] ? d : NULL;
}

/* The shared calendar of a shift (parsed once per distinct JSON). NULL on OOM. */
static shift_entry_t *shift_get(struct dispatch_assigner *a, const json_t *shift, const char *id)
{
    char *key = json_dumps(shift, JSON_COMPACT | JSON_SORT_KEYS);
    shift_entry_t *s;
    dispatch_cal_err_t cerr;

    if (!key)
        return NULL;
    if ((s = strmap_get(&a->shifts, key))) {
        free(key);
        return s;
    }
    if (a->nshifts == a->cap_shifts) {
        size_t cap = a->cap_shifts ? a->cap_shifts * 2 : 16;
        shift_entry_t **list = realloc(a->shift_list, cap * sizeof(shift_entry_t *));
        if (!list) {
            free(key);
            return NULL;
        }
        a->shift_list = list;
        a->cap_shifts = cap;
    }
    if (!(s = calloc(1, sizeof *s))) {
        free(key);
        return NULL;
    }
    s->key = key;
    int rc = dispatch_calendar_parse(shift, tzdir(a), &s->cal, &cerr);
    if (rc == AC_ERR_NOMEM) {
        free(key);
        free(s);
        return NULL;
    }
    if (rc < 0)
        ac_warn("assignment: engineer %s has an unusable shift (%s: %s); never on shift", id,
                cerr.field[0] ? cerr.field : "shift", rc == AC_ERR_INVALID ? cerr.message : "");
    if (strmap_put(&a->shifts, s->key, s) < 0) {
        dispatch_calendar_destroy(&s->cal);
        free(key);
        free(s);
        return NULL;
    }
    a->shift_list[a->nshifts++] = s;
    return s;
}

static int parse_role(const char *s)
{
    static const char *const names[] = {"technical_support", "field_engineer", "depot_technician",
                                        "supervisor", "manager"};
    for (size_t i = 0; s && i < AC_ARRAY_LEN(names); i++)
        if (strcmp(s, names[i]) == 0)
            return (int)i + 1;
    return DISPATCH_ROLE_ANY_WORKER;
}

static int parse_availability(const char *s)
{
    if (s && strcmp(s, "available") == 0)
        return DISPATCH_AVAIL_AVAILABLE;
    if (s && strcmp(s, "on_leave") == 0)
        return DISPATCH_AVAIL_ON_LEAVE;
    return DISPATCH_AVAIL_AWAY;
}

/* Fills r from a row of dispatch.assign_engineers(): [id, version, role, availability,
 * capacity, open, regions, skills, shift, load version]. 0, AC_ERR_PROTO or AC_ERR_NOMEM. */
static int entry_fill(struct dispatch_assigner *a, roster_entry_t *r, const json_t *row,
                      int is_full)
{
    const json_t *regions = json_array_get(row, 6), *skills = json_array_get(row, 7);
    const json_t *shift = json_array_get(row, 8);
    json_int_t version = json_integer_value(json_array_get(row, 1));
    size_t i;
    const json_t *v;

    if (!json_is_array(regions) || !json_is_array(skills) || !json_is_object(shift))
        return AC_ERR_PROTO;
    unsigned old_roles = r->e.role ? ROLE_BIT(r->e.role) : 0;
    (void)entry_set_load(r, (int)json_integer_value(json_array_get(row, 5)),
                         (int64_t)json_integer_value(json_array_get(row, 9)), is_full);
    if (r->e.version == version && r->shift)
        return 0; /* only the load can have changed */
    entry_free_fields(r);
    r->e.version = version;
    r->e.role = parse_role(json_string_value(json_array_get(row, 2)));
    r->e.availability = parse_availability(json_string_value(json_array_get(row, 3)));
    r->e.capacity = (int)json_integer_value(json_array_get(row, 4));
    if (json_array_size(regions) &&
        !(r->e.regions = calloc(json_array_size(regions), sizeof *r->e.regions)))
        return AC_ERR_NOMEM;
    json_array_foreach(regions, i, v)
    {
        if (!(r->e.regions[r->e.nregions] =
                  strdup(json_string_value(v) ? json_string_value(v) : "")))
            return AC_ERR_NOMEM;
        r->e.nregions++;
    }
    if (json_array_size(skills) &&
        !(r->e.skills = calloc(json_array_size(skills), sizeof *r->e.skills)))
        return AC_ERR_NOMEM;
    json_array_foreach(skills, i, v)
    {
        const char *kind = json_string_value(json_array_get(v, 0));
        const char *name = json_string_value(json_array_get(v, 1));
        dispatch_skill_t *s = &r->e.skills[r->e.nskills];
        s->is_product_line = kind && strcmp(kind, "product_line") == 0;
        s->level = (int)json_integer_value(json_array_get(v, 2));
        if (!(s->name = strdup(name ? name : "")))
            return AC_ERR_NOMEM;
        r->e.nskills++;
    }
    shift_entry_t *se = shift_get(a, shift, r->e.id);
    if (!se)
        return AC_ERR_NOMEM;
    r->shift = se;
    r->e.shift = se->cal;
    r->e.shift_check_s = 0; /* evaluate at the next match */
    r->e.is_on_shift = false;
    /* a changed engineer may fill requests waiting for its role (old and new) */
    a->retry_roles |= old_roles | ROLE_BIT(r->e.role);
    return 0;
}

static int roster_add(struct dispatch_assigner *a, roster_entry_t *r)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 256;
        dispatch_roster_engineer_t **roster =
            realloc(a->roster, cap * sizeof(dispatch_roster_engineer_t *));
        if (!roster)
            return AC_ERR_NOMEM;
        a->roster = roster;
        a->cap = cap;
    }
    if (strmap_put(&a->by_id, r->e.id, r) < 0)
        return AC_ERR_NOMEM;
    a->roster[a->n++] = &r->e;
    return 0;
}

/* Applies rows of dispatch.assign_engineers(). ids given (a partial reload): those of them
 * not in the rows are gone. Full: every engineer not in the rows is gone. */
static int roster_apply(struct dispatch_assigner *a, const json_t *rows, int is_full,
                        char (*ids)[AC_UUID_STRLEN], size_t nids)
{
    size_t i, k;
    const json_t *row;
    int rc = 0;

    for (k = 0; k < a->n; k++)
        ((roster_entry_t *)(void *)a->roster[k])->is_seen = !is_full;
    for (k = 0; k < nids; k++) {
        roster_entry_t *r = strmap_get(&a->by_id, ids[k]);
        if (r)
            r->is_seen = 0;
    }
    json_array_foreach(rows, i, row)
    {
        const char *id = json_string_value(json_array_get(row, 0));
        roster_entry_t *r;
        if (!id || strlen(id) >= AC_UUID_STRLEN)
            return AC_ERR_PROTO;
        if (!(r = strmap_get(&a->by_id, id))) {
            if (!(r = calloc(1, sizeof *r)))
                return AC_ERR_NOMEM;
            snprintf(r->e.id, sizeof r->e.id, "%s", id);
            if ((rc = roster_add(a, r)) < 0) {
                free(r);
                return rc;
            }
        }
        r->is_seen = 1;
        if ((rc = entry_fill(a, r, row, is_full)) < 0)
            return rc;
    }
    /* sweep the engineers that are gone (none are deleted today; kept for safety) */
    size_t kept = 0;
    int is_gone = 0;
    for (k = 0; k < a->n; k++) {
        roster_entry_t *r = (roster_entry_t *)(void *)a->roster[k];
        if (r->is_seen) {
            a->roster[kept++] = &r->e;
        } else {
            is_gone = 1;
            entry_free_fields(r);
            free(r);
        }
    }
    a->n = kept;
    if (is_gone) {
        strmap_clear(&a->by_id);
        for (k = 0; k < a->n; k++)
            if (strmap_put(&a->by_id, a->roster[k]->id, a->roster[k]) < 0)
                return AC_ERR_NOMEM;
    }
    if (is_full) { /* calendars nobody uses any more */
        for (k = 0; k < a->nshifts; k++)
            a->shift_list[k]->refs = 0;
        for (k = 0; k < a->n; k++)
            if (((roster_entry_t *)(void *)a->roster[k])->shift)
                ((roster_entry_t *)(void *)a->roster[k])->shift->refs++;
        size_t keep = 0;
        strmap_clear(&a->shifts);
        for (k = 0; k < a->nshifts; k++) {
            shift_entry_t *s = a->shift_list[k];
            if (s->refs == 0) {
                dispatch_calendar_destroy(&s->cal);
                free(s->key);
                free(s);
            } else {
                a->shift_list[keep++] = s;
                if (strmap_put(&a->shifts, s->key, s) < 0)
                    return AC_ERR_NOMEM;
            }
        }
        a->nshifts = keep;
    }
    return 0;
}

static void roster_free(struct dispatch_assigner *a)
{
    for (size_t k = 0; k < a->n; k++) {
        roster_entry_t *r = (roster_entry_t *)(void *)a->roster[k];
        entry_free_fields(r);
        free(r);
    }
    free(a->roster);
    a->roster = NULL;
    a->n = a->cap = 0;
    strmap_clear(&a->by_id);
    for (size_t k = 0; k < a->nshifts; k++) {
        dispatch_calendar_destroy(&a->shift_list[k]->cal);
        free(a->shift_list[k]->key);
        free(a->shift_list[k]);
    }
    free(a->shift_list);
    a->shift_list = NULL;
    a->nshifts = a->cap_shifts = 0;
    strmap_clear(&a->shifts);
}

/* --- the timer ----------------------------------------------------------------------------- */

/* Wakes the worker within delay_s (keeps an earlier wake-up). */
static void arm(struct dispatch_assigner *a, double delay_s)
{
    struct ev_loop *loop = a->svc->loop;
    if (ev_is_active(&a->timer) && ev_timer_remaining(loop, &a->timer) <= delay_s)
        return;
    ev_timer_stop(loop, &a->timer);
    ev_timer_set(&a->timer, delay_s < 0 ? 0 : delay_s, 0.);
    ev_timer_start(loop, &a->timer);
}

/* Re-evaluates the shifts that are due; an engineer coming on shift wants a retry pass of
 * its role. Returns seconds until the next one is due (capped at TICK_S). */
static double shifts_refresh(struct dispatch_assigner *a)
{
    int64_t now_s = ac_time_now_us() / 1000000;
    int64_t next = now_s + (int64_t)TICK_S;
    for (size_t k = 0; k < a->n; k++) {
        dispatch_roster_engineer_t *e = a->roster[k];
        if (dispatch_engineer_shift_refresh(e, now_s) &&
            e->availability == DISPATCH_AVAIL_AVAILABLE)
            a->retry_roles |= ROLE_BIT(e->role);
        if (e->shift_check_s < next)
            next = e->shift_check_s;
    }
    return next > now_s ? (double)(next - now_s) : 0.;
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct dispatch_assigner *a = ac_container_of(w, struct dispatch_assigner, timer);
    (void)loop;
    (void)revents;
    if (a->is_loaded && ac_time_mono_us() - a->last_full_us > (int64_t)(FULL_RELOAD_S * 1e6))
        a->is_full_wanted = 1;
    kick(a);
}

/* --- one batch ------------------------------------------------------------------------------ */

/* Frees batch b's slot; a failed batch gives its picks' counts back and backs off. */
static void batch_end(batch_t *b, int is_failed)
{
    struct dispatch_assigner *a = b->a;
    if (is_failed) /* the picks were not made */
        for (size_t i = 0; i < b->npicks; i++)
            if (b->picks[i].e)
                entry_add_pending(entry_of(b->picks[i].e), -1);
    free(b->picks);
    ac_db_txn_free(&b->txn);
    memset(b, 0, sizeof *b);
    b->a = a;
    if (is_failed) {
        a->is_again = 0;
        arm(a, ERROR_BACKOFF);
    }
}

static int role_from_json(const json_t *v)
{
    return json_is_string(v) ? parse_role(json_string_value(v)) : DISPATCH_ROLE_ANY_WORKER;
}

static int priority_from(const char *p)
{
    return p && p[0] == 'P' && p[1] >= '1' && p[1] <= '4' && !p[2] ? p[1] - '0' : 4;
}

static json_t *choice_json(const dispatch_need_t *need, const dispatch_funnel_t *funnel,
                           const dispatch_choice_t *top, size_t ntop, size_t i)
{
    char why[1024];
    json_t *terms = json_array(), *c;
    for (int k = 0; k < DISPATCH_SCORE_NTERMS; k++) {
        const dispatch_score_term_t *t = &top[i].score.terms[k];
        json_array_append_new(terms, json_pack("{s:s, s:f, s:f, s:s}", "name", t->name, "value",
                                               t->value, "weight", t->weight, "detail", t->detail));
    }
    dispatch_why(need, funnel, top, ntop, i, why, sizeof why);
    c = json_pack("{s:s, s:I, s:f, s:o, s:s}", "engineer_id", top[i].engineer->id, "version",
                  (json_int_t)top[i].engineer->version, "score", top[i].score.total, "breakdown",
                  terms, "why", why);
    return c;
}

/* The decision for one taken request (a new object), its pick counted up in memory. */
static json_t *decide(struct dispatch_assigner *a, const json_t *item, int64_t now_s, pick_t *pick)
{
    dispatch_choice_t top[TOP_K];
    dispatch_funnel_t f;
    const char *excluded[64];
    const json_t *ex = json_object_get(item, "excluded"), *v;
    const char *model = json_string_value(json_object_get(item, "model"));
    const json_t *slack = json_object_get(item, "slack");
    size_t i, nex = 0, ntop;
    char reason[512];

    json_array_foreach(ex, i, v)
    {
        if (nex < AC_ARRAY_LEN(excluded) && json_string_value(v))
            excluded[nex++] = json_string_value(v);
    }
    dispatch_need_t need = {
        .role = role_from_json(json_object_get(item, "role")),
        .region = json_string_value(json_object_get(item, "region")),
        .excluded = excluded,
        .nexcluded = nex,
        .ticket =
            {
                .priority = priority_from(json_string_value(json_object_get(item, "priority"))),
                .is_vip = json_is_true(json_object_get(item, "vip")),
                .has_slack = json_is_integer(slack),
                .slack_s = json_is_integer(slack) ? (int64_t)json_integer_value(slack) : 0,
                .is_product_line = model && model[0],
                .skill = model && model[0] ? model
                                           : json_string_value(json_object_get(item, "category")),
            },
    };
    ntop = dispatch_match(&need, a->roster, a->n, now_s, &f, top, TOP_K);
    pick->q = json_integer_value(json_object_get(item, "q"));
    pick->e = NULL;
    json_t *d = json_pack("{s:O, s:i, s:{s:i, s:i, s:i, s:i, s:i, s:i, s:i}, s:i}", "q",
                          json_object_get(item, "q"), "candidates", f.free_capacity, "funnel",
                          "role", f.role, "skill", f.skill, "region", f.region, "available",
                          f.available, "on_shift", f.on_shift, "not_declined", f.not_declined,
                          "free_capacity", f.free_capacity, "considered", f.role);
    json_t *choices = json_array();
    if (!d || !choices) {
        json_decref(d);
        json_decref(choices);
        return NULL;
    }
    for (i = 0; i < ntop; i++)
        json_array_append_new(choices, choice_json(&need, &f, top, ntop, i));
    json_object_set_new(d, "choices", choices);
    if (ntop == 0) {
        dispatch_unfilled_reason(&need, &f, reason, sizeof reason);
        json_object_set_new(d, "reason", json_string(reason));
        ac_log_at(AC_LOG_DEBUG, json_string_value(json_object_get(item, "number")), NULL,
                  "assignment: nobody fits the %s: %s",
                  json_string_value(json_object_get(item, "kind")), reason);
    } else {
        pick->e = top[0].engineer;
        entry_add_pending(entry_of(pick->e), 1); /* later requests see it */
    }
    return d;
}

static void on_committed(ac_db_txn_t *txn, int err, void *arg)
{
    batch_t *b = arg;
    struct dispatch_assigner *a = b->a;
    (void)txn;
    a->ncommitting--;
    /* its events: the batch's outbox insert sent no NOTIFY (batch_start()) */
    if (err == 0 || err == AC_ERR_UNAVAILABLE)
        ac_outbox_wake(a->svc->outbox);
    if (err < 0) {
        /* lost during COMMIT: in doubt; the open-jobs counts are read again, the requests
         * that were not assigned are still queued */
        ac_warn("assignment: a batch's COMMIT failed (%s); retrying", ac_strerror(err));
        a->is_full_wanted = 1;
        batch_end(b, 1);
        return;
    }
    ac_metrics_add(a->svc->metrics, "assign_batches_total", NULL, 1);
    ac_metrics_add(a->svc->metrics, "assignments_total", "method=\"auto\"", (double)b->nassigned);
    if (ac_log_enabled(AC_LOG_DEBUG)) {
        int64_t now = ac_time_mono_us();
        ac_debug("assignment: batch of %zu (%zu assigned): take %.1f ms, choose+apply %.1f ms, "
                 "commit %.1f ms",
                 b->ntaken, b->nassigned, (double)(b->t_taken_us - b->t_start_us) / 1e3,
                 (double)(b->t_applied_us - b->t_taken_us) / 1e3,
                 (double)(now - b->t_applied_us) / 1e3);
    }
    batch_end(b, 0);
    if (a->is_again)
        kick(a);
}

/* The database's answer to the picks: body.assigned [{q, engineer_id}] and body.loads
 * [[engineer_id, open_jobs, version]] (the counts after this batch). The picks are done
 * with: their engineers' counts are the database's now. */
static void picks_settle(batch_t *b, const json_t *body)
{
    struct dispatch_assigner *a = b->a;
    const json_t *loads = json_object_get(body, "loads"), *v;
    size_t i;
    b->nassigned = json_array_size(json_object_get(body, "assigned"));
    for (i = 0; i < b->npicks; i++)
        if (b->picks[i].e)
            entry_add_pending(entry_of(b->picks[i].e), -1);
    json_array_foreach(loads, i, v)
    {
        const char *id = json_string_value(json_array_get(v, 0));
        roster_entry_t *r = id ? strmap_get(&a->by_id, id) : NULL;
        if (r)
            (void)entry_set_load(r, (int)json_integer_value(json_array_get(v, 1)),
                                 (int64_t)json_integer_value(json_array_get(v, 2)), 0);
    }
    free(b->picks);
    b->picks = NULL;
    b->npicks = 0;
    if (b->nassigned < b->nchoosing)
        arm(a, SOON_S); /* some were taken by others meanwhile: again soon */
}

static void log_unfilled(struct dispatch_assigner *a, const json_t *events)
{
    size_t i;
    const json_t *ev;
    json_array_foreach(events, i, ev)
    {
        const char *topic = json_string_value(json_object_get(ev, "topic"));
        if (topic && strcmp(topic, "assignment.unfilled") == 0) {
            const json_t *u =
                json_object_get(json_object_get(ev, "payload"), "assignment_unfilled");
            ac_log_at(AC_LOG_WARN, json_string_value(json_object_get(ev, "subject")), NULL,
                      "assignment: nobody fits; the ticket waits in the queue: %s",
                      json_string_value(json_object_get(u, "reason")));
            ac_metrics_add(a->svc->metrics, "assign_unfilled_alerts_total", NULL, 1);
        }
    }
}

/* The decisions are stored: the batch commits (its events with it) while the worker goes
 * on with the next one. */
static void on_applied(ac_db_txn_t *txn, int err, void *arg)
{
    batch_t *b = arg;
    struct dispatch_assigner *a = b->a;
    json_t *result = NULL;
    int rc;

    a->state = W_IDLE;
    if (err < 0 || ac_db_doc_result(txn, 0, &result) < 0 || json_object_get(result, "error")) {
        ac_error("assignment: dispatch.assign_apply failed (%s%s%s); retrying",
                 err < 0 ? ac_strerror(err) : "bad answer", err == AC_ERR_DB ? ": " : "",
                 err == AC_ERR_DB ? ac_db_txn_errmsg(txn) : "");
        json_decref(result);
        batch_end(b, 1);
        return;
    }
    const json_t *events = json_object_get(result, "events");
    b->t_applied_us = ac_time_mono_us();
    log_unfilled(a, events);
    rc = dispatch_events_queue(a->svc, b->txn, events, NULL);
    if (rc == 0) {
        picks_settle(b, json_object_get(result, "body"));
        rc = ac_db_txn_commit(b->txn, on_committed, b);
    }
    json_decref(result);
    if (rc < 0) {
        ac_error("assignment: cannot commit a batch (%s); retrying", ac_strerror(rc));
        batch_end(b, 1);
        return;
    }
    a->ncommitting++;
    if (b->ntaken < BATCH_LIMIT)
        a->pass_roles = 0; /* the pass has tried every request of its roles */
    if (b->ntaken >= BATCH_LIMIT || a->is_again || a->retry_roles)
        kick(a);
}

static void on_taken(ac_db_txn_t *txn, int err, void *arg)
{
    batch_t *b = arg;
    struct dispatch_assigner *a = b->a;
    json_t *items = NULL, *decisions = NULL;
    char *text = NULL;
    size_t i;
    const json_t *item;
    int rc;

    if (err < 0 || ac_db_doc_result(txn, 1, &items) < 0 || !json_is_array(items)) {
        ac_error("assignment: dispatch.assign_take failed (%s%s%s); retrying",
                 err < 0 ? ac_strerror(err) : "bad answer", err == AC_ERR_DB ? ": " : "",
                 err == AC_ERR_DB ? ac_db_txn_errmsg(txn) : "");
        json_decref(items);
        a->state = W_IDLE;
        batch_end(b, 1);
        return;
    }
    b->ntaken = json_array_size(items);
    b->t_taken_us = ac_time_mono_us();
    if (b->ntaken == 0) {
        json_decref(items);
        a->state = W_IDLE;
        batch_end(b, 0); /* rolled back: nothing was locked */
        a->pass_roles = 0;
        if (a->is_again || a->retry_roles)
            kick(a);
        return;
    }
    int64_t now_s = ac_time_now_us() / 1000000;
    if (!(b->picks = calloc(b->ntaken, sizeof *b->picks)) || !(decisions = json_array()))
        goto nomem;
    json_array_foreach(items, i, item)
    {
        json_t *d = decide(a, item, now_s, &b->picks[b->npicks]);
        b->npicks++;
        if (!d || json_array_append_new(decisions, d) < 0)
            goto nomem;
        if (json_array_size(json_object_get(d, "choices")) > 0)
            b->nchoosing++;
    }
    if (!(text = json_dumps(decisions, JSON_COMPACT | JSON_REAL_PRECISION(10))))
        goto nomem;
    rc = ac_db_txn_add(b->txn, DISPATCH_STMT_ASSIGN_APPLY, (const char *[]){text}, NULL, NULL);
    if (rc == 0) {
        a->state = W_APPLYING;
        rc = ac_db_txn_flush(b->txn, on_applied, b);
    }
    free(text);
    json_decref(decisions);
    json_decref(items);
    if (rc < 0) {
        ac_error("assignment: cannot send the decisions (%s); retrying", ac_strerror(rc));
        a->state = W_IDLE;
        batch_end(b, 1);
    }
    return;
nomem:
    ac_error("assignment: out of memory in a batch; retrying");
    json_decref(decisions);
    json_decref(items);
    a->state = W_IDLE;
    batch_end(b, 1);
}

static void batch_start(struct dispatch_assigner *a)
{
    static const char *const role_names[] = {
        "", "technical_support", "field_engineer", "depot_technician", "supervisor", "manager"};
    char limit[16], roles[160] = "";
    int64_t now_mono = ac_time_mono_us();
    batch_t *b;
    int rc;

    arm(a, shifts_refresh(a));
    if (!a->pass_roles && a->retry_roles) {
        double since = (double)(now_mono - a->last_pass_us) / 1e6;
        if (a->last_pass_us == 0 || since >= RETRY_GAP_S) {
            a->pass_roles = a->retry_roles;
            a->retry_roles = 0;
            a->last_pass_us = now_mono;
            ac_time_format_us(ac_time_now_us(), a->pass_start);
        } else {
            arm(a, RETRY_GAP_S - since);
        }
    }
    if (a->pass_roles) {
        size_t len = 0;
        roles[len++] = '{';
        for (int r = 0; r < (int)AC_ARRAY_LEN(role_names); r++)
            if (a->pass_roles & ROLE_BIT(r))
                len += (size_t)snprintf(roles + len, sizeof roles - len, "%s\"%s\"",
                                        len > 1 ? "," : "", role_names[r]);
        snprintf(roles + len, sizeof roles - len, "}");
    }
    snprintf(limit, sizeof limit, "%d", BATCH_LIMIT);
    for (b = a->batches; b < a->batches + AC_ARRAY_LEN(a->batches) && b->txn; b++)
        ;
    if (b == a->batches + AC_ARRAY_LEN(a->batches)) { /* cannot happen: kick() counts */
        a->is_again = 1;
        return;
    }
    if (!(b->txn = ac_db_txn_new(a->svc->db, 1))) {
        arm(a, ERROR_BACKOFF);
        return;
    }
    const char *params[] = {limit, a->pass_roles ? roles : NULL,
                            a->pass_roles ? a->pass_start : NULL};
    /* The batch commits without waiting for its WAL to reach the disk. What it commits is
     * redone if it is lost — a PostgreSQL crash within the WAL writer's delay loses the
     * assignments with their events, and the requests are still queued — and nothing of it
     * is published before it is durable: the relay's own (synchronous) commit that numbers
     * the events flushes the WAL up to and past this one. */
    rc = ac_db_txn_add(b->txn, DISPATCH_STMT_ASSIGN_ASYNC_COMMIT, NULL, NULL, NULL);
    if (rc == 0)
        rc = ac_db_txn_add(b->txn, DISPATCH_STMT_ASSIGN_TAKE, params, NULL, NULL);
    if (rc == 0) /* (after the take, whose answer stays result 1; on_committed() wakes) */
        rc = ac_outbox_add_self_wake(b->txn);
    if (rc == 0)
        rc = ac_db_txn_flush(b->txn, on_taken, b);
    if (rc < 0) {
        ac_db_txn_free(&b->txn);
        if (rc != AC_ERR_UNAVAILABLE)
            ac_error("assignment: cannot start a batch (%s)", ac_strerror(rc));
        arm(a, ERROR_BACKOFF);
        return;
    }
    b->a = a;
    a->state = W_TAKING;
    b->t_start_us = ac_time_mono_us();
}

/* --- reading the roster ---------------------------------------------------------------------- */

static void on_roster(ac_db_txn_t *txn, int err, void *arg)
{
    struct dispatch_assigner *a = arg;
    json_t *rows = NULL;
    int is_full = a->is_loading_full;
    int rc = err;

    if (rc == 0 && (rc = ac_db_doc_result(txn, 0, &rows)) == 0 && !json_is_array(rows))
        rc = AC_ERR_PROTO;
    if (rc == 0)
        rc = roster_apply(a, rows, is_full, is_full ? NULL : a->pending, a->nloading);
    json_decref(rows);
    ac_db_txn_free(&a->txn);
    a->state = W_IDLE;
    if (rc < 0) {
        if (rc != AC_ERR_UNAVAILABLE)
            ac_error("assignment: cannot read the engineers (%s)", ac_strerror(rc));
        a->is_full_wanted = 1; /* whatever was half applied is read again whole */
        a->nloading = 0;
        arm(a, ERROR_BACKOFF);
        return;
    }
    /* engineers that changed while this read ran are read again */
    memmove(a->pending, a->pending + a->nloading, (a->npending - a->nloading) * sizeof *a->pending);
    a->npending -= a->nloading;
    a->nloading = 0;
    if (is_full) {
        a->is_loaded = 1;
        a->last_full_us = ac_time_mono_us();
        ac_debug("assignment: roster of %zu engineers, %zu distinct shifts", a->n, a->nshifts);
    }
    ac_metrics_set(a->svc->metrics, "assign_roster_engineers", NULL, (double)a->n);
    kick(a);
}

static void roster_start(struct dispatch_assigner *a)
{
    int is_full = a->is_full_wanted || !a->is_loaded;
    char *ids = NULL;
    int rc;

    a->is_loading_full = is_full;
    a->nloading = a->npending;
    if (is_full)
        a->is_full_wanted = 0; /* a wish made while this read runs is another read */

    if (!is_full) { /* "{id,id,...}" */
        size_t len = 2 + a->npending * AC_UUID_STRLEN;
        if (!(ids = malloc(len + 1)))
            goto fail;
        size_t at = 0;
        ids[at++] = '{';
        for (size_t i = 0; i < a->npending; i++)
            at += (size_t)snprintf(ids + at, len + 1 - at, "%s%s", i ? "," : "", a->pending[i]);
        snprintf(ids + at, len + 1 - at, "}");
    }
    if (!(a->txn = ac_db_txn_new(a->svc->db, 0))) {
        free(ids);
        goto fail;
    }
    rc = ac_db_txn_add(a->txn, DISPATCH_STMT_ASSIGN_ENGINEERS, (const char *[]){ids}, NULL, NULL);
    free(ids);
    if (rc == 0)
        rc = ac_db_txn_commit(a->txn, on_roster, a);
    if (rc < 0) {
        ac_db_txn_free(&a->txn);
        goto fail;
    }
    a->state = W_LOADING;
    return;
fail:
    a->is_full_wanted |= is_full;
    a->nloading = 0;
    arm(a, ERROR_BACKOFF);
}

/* The next thing to do, if the worker is idle. */
static void kick(struct dispatch_assigner *a)
{
    if (!a || a->svc->is_closed)
        return;
    if (a->state != W_IDLE || a->ncommitting >= MAX_COMMITTING) {
        a->is_again = 1;
        return;
    }
    a->is_again = 0;
    if (!ac_db_is_up(a->svc->db)) {
        arm(a, ERROR_BACKOFF);
        return;
    }
    if (!a->is_loaded || a->is_full_wanted || a->npending)
        roster_start(a);
    else
        batch_start(a);
}

/* --- notifications ------------------------------------------------------------------------------
 */

/* "load <engineer id> <open jobs> <load version>"; a malformed notice is ignored. */
static void on_load_notice(struct dispatch_assigner *a, const char *rest)
{
    static const char space[] = " \t\n\v\f\r"; /* isspace(), as strtol() skips it */
    char id[AC_UUID_STRLEN];
    size_t id_len;
    long open;
    long long version;
    char *end;

    rest += strspn(rest, space);
    id_len = strcspn(rest, space);
    if (id_len == 0 || id_len >= sizeof id)
        return;
    memcpy(id, rest, id_len);
    id[id_len] = '\0';
    rest += id_len;
    errno = 0;
    open = strtol(rest, &end, 10);
    if (end == rest || errno != 0 || open < INT_MIN || open > INT_MAX)
        return;
    rest = end;
    errno = 0;
    version = strtoll(rest, &end, 10);
    if (end == rest || errno != 0)
        return;
    roster_entry_t *r = strmap_get(&a->by_id, id);
    if (!r)
        return; /* not read yet: it will come with its engineer */
    if (entry_set_load(r, (int)open, (int64_t)version, 0)) { /* capacity was freed */
        a->retry_roles |= ROLE_BIT(r->e.role);
        kick(a);
    }
}

static void on_engineer_notice(struct dispatch_assigner *a, const char *id)
{
    if (!ac_uuid_is_valid(id))
        return;
    for (size_t i = a->nloading; i < a->npending; i++) /* not those being read: maybe older */
        if (strcmp(a->pending[i], id) == 0)
            goto out;
    if (a->npending >= MAX_PENDING) {
        a->is_full_wanted = 1;
        goto out;
    }
    snprintf(a->pending[a->npending++], AC_UUID_STRLEN, "%s", id);
out:
    kick(a);
}

void dispatch_assignment_on_notify(dispatch_t *self, const char *payload)
{
    struct dispatch_assigner *a = self->assigner;
    if (!a)
        return;
    if (!payload) { /* the listener (re)connected: anything may have been missed */
        a->is_full_wanted = 1;
        a->retry_roles = ~0u;
        kick(a);
    } else if (strncmp(payload, "load ", 5) == 0) {
        on_load_notice(a, payload + 5);
    } else if (strncmp(payload, "engineer ", 9) == 0) {
        on_engineer_notice(a, payload + 9);
    } else {
        kick(a);
    }
}

int dispatch_assignment_start(dispatch_t *self)
{
    static const struct {
        const char *name;
        ac_metric_type_t type;
        const char *help;
    } families[] = {
        {"assignments_total", AC_METRIC_COUNTER, "Assignments made, by method"},
        {"assign_unfilled_alerts_total", AC_METRIC_COUNTER,
         "assignment.unfilled alerts: requests nobody fits"},
        {"assign_batches_total", AC_METRIC_COUNTER, "Assignment worker batches committed"},
        {"assign_roster_engineers", AC_METRIC_GAUGE, "Engineers in the worker's roster"},
    };
    struct dispatch_assigner *a = calloc(1, sizeof *a);
    if (!a || !(a->pending = calloc(MAX_PENDING, sizeof *a->pending))) {
        free(a);
        ac_error("assignment: out of memory");
        return -1;
    }
    a->svc = self;
    a->retry_roles = ~0u; /* after a restart: retry what waits */
    for (size_t i = 0; i < AC_ARRAY_LEN(families); i++)
        (void)ac_metrics_declare(self->metrics, families[i].name, families[i].type,
                                 families[i].help);
    ev_timer_init(&a->timer, on_timer, 0., 0.);
    self->assigner = a;
    arm(a, 0.); /* the roster, then whatever waits */
    return 0;
}

void dispatch_assignment_stop(dispatch_t *self)
{
    struct dispatch_assigner *a = self->assigner;
    if (!a)
        return;
    if (self->loop)
        ev_timer_stop(self->loop, &a->timer);
    ac_db_txn_free(&a->txn); /* rolled back: the requests stay queued */
    for (size_t i = 0; i < AC_ARRAY_LEN(a->batches); i++) {
        ac_db_txn_free(&a->batches[i].txn);
        free(a->batches[i].picks);
    }
    roster_free(a);
    free(a->pending);
    free(a);
    self->assigner = NULL;
}

/* --- HTTP ---------------------------------------------------------------------------------------
 */

/* 0, or answered 422 (and -1). names: the fields allowed. */
static int check_fields(ac_http_req_t *req, const char *const *names)
{
    for (void *it = json_object_iter(ac_http_req_json(req)); it;
         it = json_object_iter_next(ac_http_req_json(req), it)) {
        const char *key = json_object_iter_key(it);
        size_t i;
        for (i = 0; names[i]; i++)
            if (strcmp(key, names[i]) == 0)
                break;
        if (!names[i]) {
            ac_http_reply_error(req, 422, "unknown_field", key, "unknown field %.64s", key);
            return -1;
        }
    }
    return 0;
}

/* A reason: a string of 1..REASON_MAX characters, not only blanks. */
static const char *get_reason(ac_http_req_t *req, const json_t *body)
{
    const json_t *v = json_object_get(body, "reason");
    const char *s;
    if (!v) {
        ac_http_reply_error(req, 422, "missing_field", "reason", "reason is required");
        return NULL;
    }
    if (!json_is_string(v)) {
        ac_http_reply_error(req, 422, "invalid_field", "reason", "reason must be a string");
        return NULL;
    }
    s = json_string_value(v);
    if (strspn(s, " \t\r\n") == strlen(s) || dispatch_utf8_len(s) > REASON_MAX) {
        ac_http_reply_error(req, 422, "invalid_field", "reason",
                            "reason must have 1 to %d characters", REASON_MAX);
        return NULL;
    }
    return s;
}

/* The assignment id of the path, or NULL (answered 404). */
static const char *path_assignment(ac_http_req_t *req)
{
    const char *id = ac_http_req_param(req, 0);
    if (!id || !ac_uuid_is_valid(id)) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no assignment %.64s", id ? id : "");
        return NULL;
    }
    return id;
}

static const char *path_ticket(ac_http_req_t *req)
{
    const char *n = ac_http_req_param(req, 0);
    if (!n || strlen(n) > 32 || strncmp(n, "SV-", 3) != 0) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no ticket %.40s", n ? n : "");
        return NULL;
    }
    return n;
}

static void on_accept(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    static const char *const fields[] = {NULL};
    const char *id;
    if (dispatch_is_refused(self, req) || !(id = path_assignment(req)) ||
        check_fields(req, fields) < 0)
        return;
    dispatch_http_sql(
        self, req, 1, DISPATCH_STMT_ASSIGNMENT_ACCEPT,
        (const char *[]){id, ac_http_req_principal(req), dispatch_engineer_scope(req)});
}

static void on_decline(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    static const char *const fields[] = {"reason", NULL};
    const json_t *body = ac_http_req_json(req);
    const char *id, *reason;
    if (dispatch_is_refused(self, req) || !(id = path_assignment(req)) ||
        check_fields(req, fields) < 0 || !(reason = get_reason(req, body)))
        return;
    dispatch_http_sql(self, req, 1, DISPATCH_STMT_ASSIGNMENT_DECLINE,
                      (const char *[]){id, ac_http_req_principal(req), reason, ac_http_req_id(req),
                                       dispatch_engineer_scope(req)});
}

static void on_assign(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    static const char *const fields[] = {"engineer_id", "reason", "kind", "override", NULL};
    const json_t *body = ac_http_req_json(req);
    const json_t *eng = json_object_get(body, "engineer_id");
    const json_t *kind = json_object_get(body, "kind");
    const json_t *override = json_object_get(body, "override");
    const char *number, *reason;

    if (dispatch_is_refused(self, req) || !(number = path_ticket(req)) ||
        check_fields(req, fields) < 0)
        return;
    if (!eng) {
        ac_http_reply_error(req, 422, "missing_field", "engineer_id", "engineer_id is required");
        return;
    }
    if (!json_is_string(eng) || !ac_uuid_is_valid(json_string_value(eng))) {
        ac_http_reply_error(req, 422, "invalid_field", "engineer_id",
                            "engineer_id must be an engineer's id (a UUID)");
        return;
    }
    if (!(reason = get_reason(req, body)))
        return;
    if (kind && !json_is_null(kind) &&
        (!json_is_string(kind) || (strcmp(json_string_value(kind), "diagnosis") != 0 &&
                                   strcmp(json_string_value(kind), "work") != 0))) {
        ac_http_reply_error(req, 422, "invalid_field", "kind", "kind must be diagnosis or work");
        return;
    }
    if (override && !json_is_boolean(override)) {
        ac_http_reply_error(req, 422, "invalid_field", "override", "override must be a boolean");
        return;
    }
    dispatch_http_sql(self, req, 1, DISPATCH_STMT_TICKET_ASSIGN,
                      (const char *[]){number, json_string_value(eng), json_string_value(kind),
                                       reason, json_is_true(override) ? "true" : "false",
                                       ac_http_req_principal(req), ac_http_req_id(req)});
}

static void on_get(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *id;
    if (dispatch_is_refused(self, req) || !(id = path_assignment(req)))
        return;
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_ASSIGNMENT_GET, (const char *[]){id});
}

static void on_ticket_assignments(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *number;
    if (dispatch_is_refused(self, req) || !(number = path_ticket(req)))
        return;
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_TICKET_ASSIGNMENTS, (const char *[]){number});
}

static void on_queue(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *kind = ac_http_req_query(req, "kind");
    const char *unfilled = ac_http_req_query(req, "unfilled");
    const char *limit_s = ac_http_req_query(req, "limit");
    char limit[16] = "50";

    if (dispatch_is_refused(self, req))
        return;
    if (kind && strcmp(kind, "diagnosis") != 0 && strcmp(kind, "work") != 0) {
        ac_http_reply_error(req, 422, "invalid_field", "kind", "kind must be diagnosis or work");
        return;
    }
    if (unfilled && strcmp(unfilled, "true") != 0 && strcmp(unfilled, "false") != 0) {
        ac_http_reply_error(req, 422, "invalid_field", "unfilled",
                            "unfilled must be true or false");
        return;
    }
    if (limit_s) {
        char *end;
        long n = strtol(limit_s, &end, 10);
        if (!limit_s[0] || *end || n < 1 || n > 200) {
            ac_http_reply_error(req, 422, "invalid_field", "limit", "limit must be 1..200");
            return;
        }
        snprintf(limit, sizeof limit, "%ld", n);
    }
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_ASSIGN_QUEUE_LIST,
                      (const char *[]){kind, unfilled, limit});
}

#define READERS (AC_ROLE_AGENT | AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR | AC_ROLE_INTEGRATION)

const ac_http_route_t dispatch_assignment_routes[] = {
    /* before /v1/assignments/{}: the first matching pattern wins */
    {"GET", "/v1/assignments/queue", READERS, on_queue, "assignments_queue"},
    {"GET", "/v1/assignments/{}", READERS, on_get, "assignments_get"},
    {"POST", "/v1/assignments/{}/accept", AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR, on_accept,
     "assignments_accept"},
    {"POST", "/v1/assignments/{}/decline", AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR, on_decline,
     "assignments_decline"},
    {"GET", "/v1/tickets/{}/assignments", READERS, on_ticket_assignments, "tickets_assignments"},
    {"POST", "/v1/tickets/{}/assign", AC_ROLE_SUPERVISOR, on_assign, "tickets_assign"},
    {NULL, NULL, 0, NULL, NULL},
};
