/* auth.c — roles, token hashing and generation, and the token cache of ac_auth.h.
 *
 * The cache is an array of (sha256 hex, role, name) sorted by hash and searched with
 * bsearch(). A load replaces the whole array at once, so a lookup never sees half a table.
 * Reload requests that arrive while a load is in flight are folded into one more load after
 * it; a failed load is retried after RETRY_S. This file reads PGresults, so it includes
 * <libpq-fe.h> (the one exception outside db.c and the services' store.c files).
 */
#include "ac_auth.h"

#include <ev.h>
#include <libpq-fe.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_db.h"
#include "ac_log.h"
#include "ac_uuid.h"

#define RETRY_S        1.0
#define TOKEN_PREFIX   "act_"
#define TOKEN_RAND_LEN 32 /* bytes; 64 hex characters */
#define NOTIFY_CHANNEL "ac_auth"

static const char SQL_LOAD_TOKENS[] =
    "SELECT token_sha256, role, name, engineer_id FROM auth.tokens WHERE revoked_at IS NULL";

/* Index i is the role bit 1 << i. */
static const char *const ROLE_NAMES[] = {"agent",     "engineer", "supervisor",
                                         "warehouse", "admin",    "integration"};

typedef struct token_entry {
    char hash[AC_TOKEN_HASH_LEN];     /* lowercase hex */
    int role;                         /* one AC_ROLE_* bit */
    char *name;                       /* owned; "" when the row has none */
    char engineer_id[AC_UUID_STRLEN]; /* the engineer an engineer's token names, or "" */
} token_entry_t;

struct ac_auth {
    struct ev_loop *loop;  /* borrowed */
    ac_db_t *db;           /* borrowed; outlives self */
    token_entry_t *tokens; /* owned; sorted by hash */
    size_t ntokens;
    int is_loaded;        /* a load has succeeded once */
    ac_db_txn_t *txn;     /* the load in flight, or NULL */
    int is_reload_wanted; /* a reload was asked for while txn was in flight */
    unsigned failures;    /* consecutive failed loads (the first is logged at warn) */
    ev_timer retry;       /* armed after a failed load */
};

/* --- roles and tokens ------------------------------------------------------------------- */

int ac_role_parse(const char *name)
{
    if (name == NULL)
        return 0;
    for (size_t i = 0; i < AC_ARRAY_LEN(ROLE_NAMES); i++)
        if (strcmp(name, ROLE_NAMES[i]) == 0)
            return 1 << i;
    return 0;
}

const char *ac_role_name(int role)
{
    for (size_t i = 0; i < AC_ARRAY_LEN(ROLE_NAMES); i++)
        if (role == 1 << i)
            return ROLE_NAMES[i];
    return "?";
}

static void hex_encode(const unsigned char *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0xf];
    }
    out[2 * len] = '\0';
}

void ac_token_hash(const char *token, char out[AC_TOKEN_HASH_LEN])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(token, strlen(token), md, &len, EVP_sha256(), NULL) != 1 || len != 32) {
        ac_error("auth: SHA-256 failed");
        out[0] = '\0'; /* matches no stored hash */
        return;
    }
    hex_encode(md, len, out);
}

int ac_token_generate(char out[AC_TOKEN_LEN])
{
    unsigned char rnd[TOKEN_RAND_LEN];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        ac_error("auth: RAND_bytes failed");
        return AC_ERR_IO;
    }
    char hex[2 * TOKEN_RAND_LEN + 1];
    hex_encode(rnd, sizeof(rnd), hex);
    snprintf(out, AC_TOKEN_LEN, TOKEN_PREFIX "%s", hex);
    OPENSSL_cleanse(rnd, sizeof(rnd));
    OPENSSL_cleanse(hex, sizeof(hex));
    return 0;
}

/* --- the table -------------------------------------------------------------------------- */

static void tokens_free(token_entry_t *tokens, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(tokens[i].name);
    free(tokens);
}

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const token_entry_t *)a)->hash, ((const token_entry_t *)b)->hash);
}

/* Copies a stored hash into out, lowercased; 0 unless it is 64 hex digits. */
static int parse_hash(const char *s, char out[AC_TOKEN_HASH_LEN])
{
    size_t i = 0;
    for (; i < AC_TOKEN_HASH_LEN - 1 && s[i] != '\0'; i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'F')
            c = (char)(c - 'A' + 'a');
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
        out[i] = c;
    }
    out[i] = '\0';
    return i == AC_TOKEN_HASH_LEN - 1 && s[i] == '\0';
}

/* Builds a sorted table from the rows of SQL_LOAD_TOKENS. Rows with a malformed hash or an
 * unknown role are skipped with a warning. AC_ERR_NOMEM, or 0 with *out and *n_out set. */
static int tokens_build(const PGresult *res, token_entry_t **out, size_t *n_out)
{
    int nrows = PQntuples(res);
    token_entry_t *tokens = calloc(nrows > 0 ? (size_t)nrows : 1, sizeof(*tokens));
    if (tokens == NULL)
        return AC_ERR_NOMEM;
    size_t n = 0;
    for (int i = 0; i < nrows; i++) {
        const char *name = PQgetisnull(res, i, 2) ? "" : PQgetvalue(res, i, 2);
        const char *role_name = PQgetvalue(res, i, 1);
        token_entry_t *e = &tokens[n];
        if (!parse_hash(PQgetvalue(res, i, 0), e->hash)) {
            ac_warn("auth: token \"%s\" has a malformed token_sha256; ignored", name);
            continue;
        }
        e->role = ac_role_parse(role_name);
        if (e->role == 0) {
            ac_warn("auth: token \"%s\" has unknown role \"%s\"; ignored", name, role_name);
            continue;
        }
        if (!PQgetisnull(res, i, 3))
            snprintf(e->engineer_id, sizeof(e->engineer_id), "%s", PQgetvalue(res, i, 3));
        e->name = strdup(name);
        if (e->name == NULL) {
            tokens_free(tokens, n);
            return AC_ERR_NOMEM;
        }
        n++;
    }
    qsort(tokens, n, sizeof(*tokens), entry_cmp);
    *out = tokens;
    *n_out = n;
    return 0;
}

/* --- loading ---------------------------------------------------------------------------- */

static void load_start(ac_auth_t *self);

static void retry_later(ac_auth_t *self, const char *why)
{
    if (self->failures++ == 0)
        ac_warn("auth: loading tokens failed (%s); retrying every %.0f s", why, RETRY_S);
    else
        ac_debug("auth: loading tokens failed again (%s)", why);
    ev_timer_stop(self->loop, &self->retry);
    ev_timer_set(&self->retry, RETRY_S, 0.);
    ev_timer_start(self->loop, &self->retry);
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    ac_auth_t *self = ac_container_of(w, ac_auth_t, retry);
    load_start(self);
}

static void on_loaded(ac_db_txn_t *txn, int err, void *arg)
{
    ac_auth_t *self = arg;
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
    token_entry_t *tokens = NULL;
    size_t n = 0;
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK || PQnfields(res) != 4) {
        ac_db_txn_free(&txn);
        retry_later(self, "unexpected result");
        return;
    }
    int rc = tokens_build(res, &tokens, &n);
    ac_db_txn_free(&txn);
    if (rc < 0) {
        retry_later(self, ac_strerror(rc));
        return;
    }
    tokens_free(self->tokens, self->ntokens);
    self->tokens = tokens;
    self->ntokens = n;
    if (!self->is_loaded || self->failures > 0)
        ac_info("auth: %zu tokens loaded", n);
    else
        ac_debug("auth: %zu tokens reloaded", n);
    self->is_loaded = 1;
    self->failures = 0;
    if (self->is_reload_wanted)
        load_start(self);
}

static void load_start(ac_auth_t *self)
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
    int rc = ac_db_txn_add_sql(txn, SQL_LOAD_TOKENS, 0, NULL, NULL, NULL);
    if (rc == 0)
        rc = ac_db_txn_commit(txn, on_loaded, self);
    if (rc < 0) {
        ac_db_txn_free(&txn);
        retry_later(self, ac_strerror(rc));
        return;
    }
    self->txn = txn;
}

/* --- public ----------------------------------------------------------------------------- */

ac_auth_t *ac_auth_new(struct ev_loop *loop, struct ac_db *db)
{
    ac_auth_t *self = calloc(1, sizeof(*self));
    if (self == NULL) {
        ac_error("auth: out of memory");
        return NULL;
    }
    self->loop = loop;
    self->db = db;
    ev_timer_init(&self->retry, on_retry, RETRY_S, 0.);
    load_start(self);
    return self;
}

void ac_auth_destroy(ac_auth_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    ac_auth_t *self = *self_p;
    ev_timer_stop(self->loop, &self->retry);
    if (self->txn != NULL)
        ac_db_txn_free(&self->txn); /* an unfinished load: no callback follows */
    tokens_free(self->tokens, self->ntokens);
    free(self);
    *self_p = NULL;
}

void ac_auth_on_notify(ac_auth_t *self, const char *channel, const char *payload)
{
    if (channel != NULL && strcmp(channel, NOTIFY_CHANNEL) != 0)
        return;
    ac_debug("auth: %s; reloading tokens", channel != NULL ? "tokens changed" : "reconnected");
    load_start(self);
}

int ac_auth_lookup(const ac_auth_t *self, const char *token, ac_principal_t *who_out)
{
    if (who_out != NULL)
        *who_out = (ac_principal_t){NULL, NULL};
    if (token == NULL || *token == '\0' || self->ntokens == 0)
        return 0;
    token_entry_t key = {.role = 0};
    ac_token_hash(token, key.hash);
    const token_entry_t *e = bsearch(&key, self->tokens, self->ntokens, sizeof(key), entry_cmp);
    if (e == NULL)
        return 0;
    if (who_out != NULL)
        *who_out = (ac_principal_t){e->name, e->engineer_id};
    return e->role;
}

int ac_auth_is_loaded(const ac_auth_t *self)
{
    return self->is_loaded;
}
