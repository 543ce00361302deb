/* ctl.h — aftercarectl, the operator's command line: the pieces its command modules share.
 *
 * main.c parses the global options and dispatches through a command table; each command
 * module (ticket.c, engineer.c, token.c, keys.c, events.c) parses its own options with getopt_long
 * and returns an exit status. http.c is the libcurl client for the services' JSON APIs, store.c the
 * tool's own libpq access to auth.tokens and auth.bus_keys, admin.c what the commands on
 * that database share.
 *
 * Exit statuses: 0 success, 1 the operation failed (HTTP error, connection refused,
 * database error), 2 usage error (unknown command or option, missing argument). */
#ifndef CTL_H
#define CTL_H

#include <stddef.h>

#include "ac_err.h"

struct json_t;

enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_FAIL = 1,
    CTL_EXIT_USAGE = 2,
};

#define CTL_DEFAULT_URL        "http://127.0.0.1:8081"
#define CTL_DEFAULT_BUS_OUTPUT "tcp://127.0.0.1:5571"

/* Options that every command may use; set from the environment, then the global
 * options before the command, then the command's own options (last one wins). */
typedef struct ctl_globals {
    const char *url;   /* intake base URL (AC_INTAKE_URL), borrowed from argv/environ */
    const char *token; /* bearer token (AC_TOKEN); NULL when none */
    const char *db;    /* admin conninfo (AC_ADMIN_DB); NULL when none */
} ctl_globals_t;

/* A command: `aftercarectl <group> <name> ...`; argv[0] is the command's name. */
typedef int (*ctl_command_fn)(ctl_globals_t *g, int argc, char **argv);

int ctl_ticket_create(ctl_globals_t *g, int argc, char **argv);
int ctl_ticket_show(ctl_globals_t *g, int argc, char **argv);
int ctl_ticket_list(ctl_globals_t *g, int argc, char **argv);
int ctl_engineer_create(ctl_globals_t *g, int argc, char **argv);
int ctl_engineer_show(ctl_globals_t *g, int argc, char **argv);
int ctl_engineer_list(ctl_globals_t *g, int argc, char **argv);
int ctl_engineer_update(ctl_globals_t *g, int argc, char **argv);
int ctl_token_create(ctl_globals_t *g, int argc, char **argv);
int ctl_token_list(ctl_globals_t *g, int argc, char **argv);
int ctl_token_revoke(ctl_globals_t *g, int argc, char **argv);
int ctl_keys_create(ctl_globals_t *g, int argc, char **argv);
int ctl_keys_allow(ctl_globals_t *g, int argc, char **argv);
int ctl_keys_revoke(ctl_globals_t *g, int argc, char **argv);
int ctl_keys_list(ctl_globals_t *g, int argc, char **argv);
int ctl_events_tail(ctl_globals_t *g, int argc, char **argv);
int ctl_events_stats(ctl_globals_t *g, int argc, char **argv);

/* "aftercarectl: <message>\n" on stderr. */
void ctl_err(const char *fmt, ...) AC_PRINTF(1, 2);
/* Usage error: the message, then "Try '<cmd> --help'." on stderr; returns CTL_EXIT_USAGE. */
int ctl_usage_error(const char *cmd, const char *fmt, ...) AC_PRINTF(2, 3);

/* After getopt_long returned '?' or ':' (optstring must start with ':'): prints what was
 * wrong and returns CTL_EXIT_USAGE. cmd is "ticket create " etc. (with a trailing space). */
int ctl_bad_option(const char *cmd, int c, char **argv);

/* --- http.c --------------------------------------------------------------------------- */
typedef struct ctl_response {
    long status;         /* HTTP status */
    struct json_t *body; /* owned; parsed JSON body, NULL if empty or not JSON */
    int is_replayed;     /* "Idempotent-Replayed: true" was present */
} ctl_response_t;

/* Sends method url+path with body (borrowed, may be NULL) and the bearer token, and
 * fills *resp. Returns 0 when an HTTP response arrived (whatever its status);
 * AC_ERR_UNAVAILABLE / AC_ERR_IO when none did (the reason is printed). */
int ctl_http(const ctl_globals_t *g, const char *method, const char *path,
             const struct json_t *body, const char *idempotency_key, ctl_response_t *resp) AC_WUR;
void ctl_response_clear(ctl_response_t *resp);
/* Prints the server's error ({"error": {"code", "message", "field"}}) to stderr. */
void ctl_print_http_error(const ctl_response_t *resp);
/* Percent-encodes s for a path segment or query value; malloc'ed, NULL on OOM. */
char *ctl_url_escape(const char *s);

/* --- store.c: auth.tokens through libpq ----------------------------------------------- */
typedef struct ctl_store ctl_store_t;

typedef struct ctl_token_row {
    const char *name; /* borrowed: valid during the callback only */
    const char *role;
    const char *created_at;
    const char *revoked_at;  /* NULL when active */
    const char *engineer_id; /* NULL unless an engineer's token names one */
} ctl_token_row_t;

/* Connects (blocking). NULL on failure, with the reason printed. */
ctl_store_t *ctl_store_open(const char *conninfo);
void ctl_store_close(ctl_store_t **self_p);
/* 0, AC_ERR_CONFLICT (an active token has that name), AC_ERR_DB (printed). */
int ctl_store_token_insert(ctl_store_t *self, const char *name, const char *role,
                           const char *token_hash, const char *engineer_id) AC_WUR;
/* Calls fn for every token, oldest first. 0 or AC_ERR_DB (printed). */
int ctl_store_token_list(ctl_store_t *self, void (*fn)(const ctl_token_row_t *row, void *arg),
                         void *arg) AC_WUR;
/* Revokes every active token called name; *n_revoked says how many.
 * 0, AC_ERR_NOTFOUND (no such name), AC_ERR_CONFLICT (all already revoked), AC_ERR_DB. */
int ctl_store_token_revoke(ctl_store_t *self, const char *name, size_t *n_revoked) AC_WUR;

/* --- store.c: auth.bus_keys (CURVE public keys allowed on the bus) --------------------- */
typedef struct ctl_key_row {
    const char *public_key; /* borrowed: valid during the callback only */
    const char *name;
    const char *kind;   /* "service" | "subscriber" */
    const char *source; /* NULL for subscribers */
    const char *topics; /* comma-separated prefixes; "" = every topic */
    const char *created_at;
    const char *revoked_at; /* NULL when live */
} ctl_key_row_t;

/* topics: NULL-terminated prefixes (may be empty); source NULL for subscribers.
 * 0, AC_ERR_CONFLICT (a live key has that name), AC_ERR_INVALID (that public key is already
 * registered, live or revoked: *owner names it, borrowed until the next call), AC_ERR_DB. */
int ctl_store_key_insert(ctl_store_t *self, const char *public_key, const char *name,
                         const char *kind, const char *source, const char *const *topics,
                         char *owner, size_t owner_len) AC_WUR;
/* Calls fn for every key, oldest first. 0 or AC_ERR_DB (printed). */
int ctl_store_key_list(ctl_store_t *self, void (*fn)(const ctl_key_row_t *row, void *arg),
                       void *arg) AC_WUR;
/* Revokes the live key called name. 0, AC_ERR_NOTFOUND (no key ever had that name),
 * AC_ERR_CONFLICT (only revoked ones), AC_ERR_DB. */
int ctl_store_key_revoke(ctl_store_t *self, const char *name) AC_WUR;

/* --- admin.c: the commands on the admin database (token, keys) ------------------------ */
#define CTL_DB_HELP                                                                                \
    "      --db CONNINFO      libpq conninfo of the ac_admin role (env AC_ADMIN_DB)\n"             \
    "  -h, --help             this help\n"

/* Connects to g->db. NULL with *rc the exit status (usage error when there is no --db or
 * AC_ADMIN_DB, failure printed) or the store with *rc CTL_EXIT_OK. */
ctl_store_t *ctl_admin_open(const ctl_globals_t *g, const char *cmd, int *rc);
/* After the options: exactly one operand, the NAME of a `what` ("token", "key").
 * CTL_EXIT_OK with *name (borrowed from argv), or a usage error. */
int ctl_name_operand(const char *cmd, int argc, char **argv, const char *what, const char **name);
/* A command whose only options are --db and --help (help: its text): parses them, then
 * its operands (what NULL: none; otherwise one NAME, as ctl_name_operand()), then
 * connects. The store with *rc CTL_EXIT_OK to go on, or NULL with *rc the exit status to
 * return (help printed, usage error, no connection). */
ctl_store_t *ctl_admin_begin(ctl_globals_t *g, int argc, char **argv, const char *cmd,
                             const char *help, const char *what, const char **name, int *rc);
/* Reports a revoke's result (err from ctl_store_*_revoke()) of the `what` called name,
 * note appended on success ("" for none); returns the exit status: done or already
 * revoked CTL_EXIT_OK, no such name or a database error CTL_EXIT_FAIL. */
int ctl_admin_revoked(int err, const char *what, const char *name, const char *note);

#endif
