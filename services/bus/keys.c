/* keys.c — the bus key cache of keys.h.
 *
 * The cache is an array of bus_key_t sorted by public key and searched with
 * bsearch(). A load replaces the whole array at once, so a lookup never sees
 * half a table. Reloads asked for while a load is in flight are folded into one
 * more load after it; a failed load is retried after RETRY_S and leaves the
 * previous table in place (before the first success that table is empty:
 * everyone is refused). Like common/auth.c, this file reads PGresults and so
 * includes <libpq-fe.h>; its one statement is below. */
#include "keys.h"

#include <ev.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_bus.h"
#include "ac_db.h"
#include "ac_log.h"

#define RETRY_S        1.0
#define NOTIFY_CHANNEL "ac_bus_keys"

/* Topics come as one text with a newline between prefixes (a prefix cannot
 * contain a newline: aftercarectl refuses it, and such a row is skipped here);
 * cardinality() tells an empty array from an array holding one empty prefix. */
static const char SQL_LOAD_KEYS[] =
    "SELECT public_key, name, kind, coalesce(source, ''), cardinality(topics), "
    "array_to_string(topics, E'\\n') "
    "FROM auth.bus_keys WHERE revoked_at IS NULL";
enum { COL_PUBLIC_KEY, COL_NAME, COL_KIND, COL_SOURCE, COL_NTOPICS, COL_TOPICS, NCOLS };

static const char *const LISTEN[] = {NOTIFY_CHANNEL, NULL};

struct bus_keys {
    struct ev_loop *loop; /* borrowed */
    char *conninfo;       /* owned copy (the pool keeps pointers into db_cfg) */
    ac_db_config_t db_cfg;
    ac_db_t *db;     /* owned: one connection, LISTENing on ac_bus_keys */
    bus_key_t *keys; /* owned; sorted by public_key */
    size_t nkeys;
    int is_loaded;        /* a load has succeeded once */
    ac_db_txn_t *txn;     /* the load in flight, or NULL */
    int is_reload_wanted; /* a reload was asked for while txn was in flight */
    unsigned failures;    /* consecutive failed loads (the first is logged at warn) */
    ev_timer retry;       /* armed after a failed load */
    bus_keys_change_fn on_change;
    void *arg;
};

/* --- the table
 * -------------------------------------------------------------------------- */

static void key_clear(bus_key_t *k)
{
    for (size_t i = 0; i < k->ntopics; i++)
        free(k->topics[i]);
    free(k->topics);
    k->topics = NULL;
    k->ntopics = 0;
}

static void keys_free(bus_key_t *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        key_clear(&keys[i]);
    free(keys);
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(((const bus_key_t *)a)->public_key, ((const bus_key_t *)b)->public_key);
}

/* Splits text at newlines into k->topics; expects exactly n prefixes.
 * AC_ERR_INVALID when the count differs (a prefix held a newline),
 * AC_ERR_NOMEM. */
static int topics_parse(bus_key_t *k, const char *text, long n)
{
    if (n <= 0)
        return 0;
    k->topics = calloc((size_t)n, sizeof(*k->topics));
    if (k->topics == NULL)
        return AC_ERR_NOMEM;
    const char *p = text;
    for (long i = 0; i < n; i++) {
        size_t len = strcspn(p, "\n");
        if ((p[len] == '\n') != (i + 1 < n))
            return AC_ERR_INVALID;
        k->topics[i] = strndup(p, len);
        if (k->topics[i] == NULL)
            return AC_ERR_NOMEM;
        k->ntopics++;
        p += len + (p[len] == '\n');
    }
    return 0;
}

/* Builds a sorted table from the rows of SQL_LOAD_KEYS. A malformed row (a key
 * that is not Z85, a service without a source, a prefix with a newline) is
 * skipped with a warning: it lets nobody in. AC_ERR_NOMEM, or 0 with *out and
 * *n_out set. */
static int keys_build(const PGresult *res, bus_key_t **out, size_t *n_out)
{
    int nrows = PQntuples(res);
    bus_key_t *keys = calloc(nrows > 0 ? (size_t)nrows : 1, sizeof(*keys));
    if (keys == NULL)
        return AC_ERR_NOMEM;
    size_t n = 0;
    for (int i = 0; i < nrows; i++) {
        const char *pk = PQgetvalue(res, i, COL_PUBLIC_KEY);
        const char *name = PQgetvalue(res, i, COL_NAME);
        const char *kind = PQgetvalue(res, i, COL_KIND);
        const char *source = PQgetvalue(res, i, COL_SOURCE);
        long ntopics = PQgetisnull(res, i, COL_NTOPICS)
                           ? 0
                           : strtol(PQgetvalue(res, i, COL_NTOPICS), NULL, 10);
        bus_key_t *k = &keys[n];
        if (!ac_curve_key_is_valid(pk)) {
            ac_warn("keys: key \"%s\" is not 40 characters of Z85; ignored", name);
            continue;
        }
        k->is_service = strcmp(kind, "service") == 0;
        if (k->is_service && (source[0] == '\0' || strlen(source) >= sizeof(k->source))) {
            ac_warn("keys: service key \"%s\" has no usable source; ignored", name);
            continue;
        }
        snprintf(k->public_key, sizeof(k->public_key), "%s", pk);
        snprintf(k->name, sizeof(k->name), "%s", name);
        snprintf(k->source, sizeof(k->source), "%s", k->is_service ? source : "");
        int rc = topics_parse(k, PQgetvalue(res, i, COL_TOPICS), ntopics);
        if (rc == AC_ERR_INVALID) {
            ac_warn("keys: key \"%s\" has a topic prefix with a newline; ignored", name);
            key_clear(k);
            continue;
        }
        if (rc < 0) {
            key_clear(k);
            keys_free(keys, n);
            return rc;
        }
        n++;
    }
    qsort(keys, n, sizeof(*keys), key_cmp);
    *out = keys;
    *n_out = n;
    return 0;
}

/* --- loading
 * ----------------------------------------------------------------------------
 */

static void load_start(bus_keys_t *self);

static void retry_later(bus_keys_t *self, const char *why)
{
    if (self->failures++ == 0)
        ac_warn("keys: loading failed (%s); retrying every %.0f s%s", why, RETRY_S,
                self->is_loaded ? "" : "; until then every key is refused");
    else
        ac_debug("keys: loading failed again (%s)", why);
    ev_timer_stop(self->loop, &self->retry);
    ev_timer_set(&self->retry, RETRY_S, 0.);
    ev_timer_start(self->loop, &self->retry);
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    load_start(ac_container_of(w, bus_keys_t, retry));
}

static void on_loaded(ac_db_txn_t *txn, int err, void *arg)
{
    bus_keys_t *self = arg;
    self->txn = NULL;
    if (err < 0) {
        char why[256];
        snprintf(why, sizeof(why), "%s%s%s", ac_strerror(err), err == AC_ERR_DB ? ": " : "",
                 err == AC_ERR_DB ? ac_db_txn_errmsg(txn) : "");
        ac_db_txn_free(&txn);
        retry_later(self, why);
        return;
    }
    const PGresult *res = ac_db_txn_result(txn, 0);
    bus_key_t *keys = NULL;
    size_t n = 0;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQnfields(res) != NCOLS) {
        ac_db_txn_free(&txn);
        retry_later(self, "unexpected result");
        return;
    }
    int rc = keys_build(res, &keys, &n);
    ac_db_txn_free(&txn);
    if (rc < 0) {
        retry_later(self, ac_strerror(rc));
        return;
    }
    keys_free(self->keys, self->nkeys);
    self->keys = keys;
    self->nkeys = n;
    size_t nservices = 0;
    for (size_t i = 0; i < n; i++)
        nservices += keys[i].is_service != 0;
    ac_info("keys: %s %zu live keys (%zu services, %zu subscribers)",
            self->is_loaded ? "reloaded" : "loaded", n, nservices, n - nservices);
    self->is_loaded = 1;
    self->failures = 0;
    if (self->on_change)
        self->on_change(self->arg);
    if (self->is_reload_wanted)
        load_start(self);
}

static void load_start(bus_keys_t *self)
{
    if (self->txn != NULL) {
        self->is_reload_wanted = 1; /* on_loaded() starts another load */
        return;
    }
    self->is_reload_wanted = 0;
    ev_timer_stop(self->loop, &self->retry);
    ac_db_txn_t *txn = ac_db_txn_new(self->db, 0);
    if (txn == NULL) {
        retry_later(self, ac_strerror(AC_ERR_NOMEM));
        return;
    }
    int rc = ac_db_txn_add_sql(txn, SQL_LOAD_KEYS, 0, NULL, NULL, NULL);
    if (rc == 0)
        rc = ac_db_txn_commit(txn, on_loaded, self);
    if (rc < 0) {
        ac_db_txn_free(&txn);
        retry_later(self, ac_strerror(rc));
        return;
    }
    self->txn = txn;
}

/* channel NULL: the listening connection (re)connected and may have missed a
 * NOTIFY */
static void on_notify(void *arg, const char *channel, const char *payload)
{
    bus_keys_t *self = arg;
    if (channel != NULL && strcmp(channel, NOTIFY_CHANNEL) != 0)
        return;
    ac_debug("keys: %s; reloading", channel != NULL ? "keys changed" : "connected");
    load_start(self);
}

/* --- public
 * -----------------------------------------------------------------------------
 */

bus_keys_t *bus_keys_new(struct ev_loop *loop, const char *conninfo, bus_keys_change_fn on_change,
                         void *arg)
{
    bus_keys_t *self = calloc(1, sizeof(*self));
    if (self == NULL || (self->conninfo = strdup(conninfo)) == NULL) {
        ac_error("keys: out of memory");
        free(self);
        return NULL;
    }
    self->loop = loop;
    self->on_change = on_change;
    self->arg = arg;
    ev_timer_init(&self->retry, on_retry, RETRY_S, 0.);
    self->db_cfg = (ac_db_config_t){
        .conninfo = self->conninfo,
        .pool_size = 1,
        .listen = LISTEN,
        .on_notify = on_notify,
        .notify_arg = self,
        .name = "bus-keys",
    };
    /* the first load starts when the connection is up (on_notify with channel
     * NULL) */
    self->db = ac_db_new(loop, &self->db_cfg);
    if (self->db == NULL) {
        free(self->conninfo);
        free(self);
        return NULL;
    }
    return self;
}

void bus_keys_destroy(bus_keys_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    bus_keys_t *self = *self_p;
    ev_timer_stop(self->loop, &self->retry);
    if (self->txn != NULL)
        ac_db_txn_free(&self->txn); /* an unfinished load: no callback follows */
    ac_db_destroy(&self->db);
    keys_free(self->keys, self->nkeys);
    free(self->conninfo);
    free(self);
    *self_p = NULL;
}

int bus_keys_is_loaded(const bus_keys_t *keys)
{
    return keys != NULL && keys->is_loaded;
}

size_t bus_keys_count(const bus_keys_t *keys)
{
    return keys != NULL ? keys->nkeys : 0;
}

const bus_key_t *bus_keys_find(const bus_keys_t *keys, const char *public_key)
{
    if (keys == NULL || public_key == NULL || keys->nkeys == 0 ||
        strlen(public_key) != AC_KEY_Z85_LEN)
        return NULL;
    bus_key_t probe;
    memcpy(probe.public_key, public_key, AC_KEY_Z85_LEN + 1);
    return bsearch(&probe, keys->keys, keys->nkeys, sizeof(probe), key_cmp);
}

int bus_key_allows_topic(const bus_key_t *k, const char *topic)
{
    if (k == NULL)
        return 0;
    if (k->ntopics == 0)
        return 1;
    for (size_t i = 0; i < k->ntopics; i++)
        if (strncmp(topic, k->topics[i], strlen(k->topics[i])) == 0)
            return 1;
    return 0;
}
