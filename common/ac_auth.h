/* ac_auth.h — roles, bearer tokens and the token cache.
 *
 * Tokens are random strings "act_<64 hex>"; only their SHA-256 (hex) is stored, in
 * auth.tokens (created by deploy/pg-bootstrap.sql; every service may SELECT it).
 * ac_auth_t keeps the table in memory on the service's loop and reloads it whenever
 * PostgreSQL sends NOTIFY on channel "ac_auth" (a trigger on auth.tokens does so), and
 * after the listening connection reconnects, so a revoked token stops working without a
 * restart. */
#ifndef AC_AUTH_H
#define AC_AUTH_H

#include <stddef.h>

#include "ac_err.h"

struct ac_db;
struct ev_loop;

enum {
    AC_ROLE_AGENT = 1 << 0,
    AC_ROLE_ENGINEER = 1 << 1,
    AC_ROLE_SUPERVISOR = 1 << 2,
    AC_ROLE_WAREHOUSE = 1 << 3,
    AC_ROLE_ADMIN = 1 << 4,
    AC_ROLE_INTEGRATION = 1 << 5,
    AC_ROLE_ANY = (1 << 6) - 1,
    AC_ROLE_PUBLIC = 0, /* a route with this mask needs no token */
};

int ac_role_parse(const char *name); /* role bit, or 0 when unknown */
const char *ac_role_name(int role);  /* "agent", ...; "?" when not a single role bit */

#define AC_TOKEN_HASH_LEN 65 /* 64 hex + NUL */
#define AC_TOKEN_LEN      69 /* "act_" + 64 hex + NUL */
void ac_token_hash(const char *token, char out[AC_TOKEN_HASH_LEN]);
int ac_token_generate(char out[AC_TOKEN_LEN]) AC_WUR; /* from the OS's CSPRNG */

typedef struct ac_auth ac_auth_t;

/* db: a pool whose config LISTENs on "ac_auth" and forwards notifications to
 * ac_auth_on_notify(). Starts the first load at once; a failed load is retried every
 * second on `loop` (the db's loop). NULL on failure (logged). */
ac_auth_t *ac_auth_new(struct ev_loop *loop, struct ac_db *db);
/* Safe on NULL; sets *self_p = NULL. Call it before destroying the db. */
void ac_auth_destroy(ac_auth_t **self_p);
/* Forward ac_db's on_notify here (it ignores other channels). */
void ac_auth_on_notify(ac_auth_t *self, const char *channel, const char *payload);
/* Who a token is: its name (for logs and as the actor of changes) and, for an engineer's
 * token that names one, the engineer's id ("" otherwise). Borrowed from the table until it
 * next reloads. */
typedef struct ac_principal {
    const char *name;
    const char *engineer_id;
} ac_principal_t;
/* Role bit of a valid, unrevoked token; 0 when unknown. *who_out (who_out may be NULL)
 * is set for a known token, else to NULLs. */
int ac_auth_lookup(const ac_auth_t *self, const char *token, ac_principal_t *who_out);
/* 1 once the table has been loaded at least once. */
int ac_auth_is_loaded(const ac_auth_t *self);

#endif
