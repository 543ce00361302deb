/* token.c — `aftercarectl token create|list|revoke`: API bearer tokens in auth.tokens.
 *
 * Notes: a token is shown exactly once, on stdout, when it is created (scripts capture
 * it with $(...)); only its SHA-256 is stored. Services reload their token caches on the
 * table's NOTIFY, so create and revoke take effect without a restart. */
#include "ctl.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ac_auth.h"
#include "ac_uuid.h"

#define CTL_TOKEN_NAME_MAX 200

enum {
    OPT_HELP = 'h',
    OPT_DB = 256,
    OPT_ROLE,
    OPT_NAME,
    OPT_ENGINEER,
};

/* "agent, engineer, ..." into buf. */
static const char *role_list(char *buf, size_t len)
{
    size_t o = 0;
    buf[0] = '\0';
    for (int bit = 1; bit & AC_ROLE_ANY; bit <<= 1) {
        int n = snprintf(buf + o, len - o, "%s%s", o ? ", " : "", ac_role_name(bit));
        if (n < 0 || (size_t)n >= len - o)
            break;
        o += (size_t)n;
    }
    return buf;
}

static int is_valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CTL_TOKEN_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

/* --- token create ----------------------------------------------------------------------- */

static const char CREATE_HELP[] =
    "Usage: aftercarectl token create --role ROLE [--name NAME] [--engineer ID] [--db CONNINFO]\n"
    "\n"
    "Creates an API bearer token and prints it (only the token) on stdout; it is not shown\n"
    "again. Only its SHA-256 is stored.\n"
    "\n"
    "      --role ROLE        agent, engineer, supervisor, warehouse, admin, integration\n"
    "      --name NAME        a name to list and revoke it by (default: ROLE-<time>-<pid>);\n"
    "                         no two active tokens share a name\n"
    "      --engineer ID      role engineer only: the engineer (dispatch's id) the token\n"
    "                         belongs to; it may answer only that engineer's offers and work\n"
    "                         (records, plans, repairs, cases) only on tickets the engineer\n"
    "                         holds; an engineer token without one may do neither\n" CTL_DB_HELP;

int ctl_token_create(ctl_globals_t *g, int argc, char **argv)
{
    static const struct option options[] = {
        {"role", required_argument, NULL, OPT_ROLE},
        {"name", required_argument, NULL, OPT_NAME},
        {"engineer", required_argument, NULL, OPT_ENGINEER},
        {"db", required_argument, NULL, OPT_DB},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "token create ";
    const char *role = NULL, *name = NULL, *engineer = NULL;
    char roles[128], default_name[96];
    int c, rc;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (c) {
        case OPT_ROLE:
            role = optarg;
            break;
        case OPT_NAME:
            name = optarg;
            break;
        case OPT_ENGINEER:
            engineer = optarg;
            break;
        case OPT_DB:
            g->db = optarg;
            break;
        case OPT_HELP:
            fputs(CREATE_HELP, stdout);
            return CTL_EXIT_OK;
        default:
            return ctl_bad_option(cmd, c, argv);
        }
    }
    if (optind < argc)
        return ctl_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (role == NULL)
        return ctl_usage_error(cmd, "--role is required (one of: %s)",
                               role_list(roles, sizeof roles));
    if (ac_role_parse(role) == 0)
        return ctl_usage_error(cmd, "unknown role '%s'; valid roles: %s", role,
                               role_list(roles, sizeof roles));
    if (engineer != NULL && ac_role_parse(role) != AC_ROLE_ENGINEER)
        return ctl_usage_error(cmd, "--engineer is for role engineer only");
    if (engineer != NULL && !ac_uuid_is_valid(engineer))
        return ctl_usage_error(cmd, "--engineer must be an engineer's id (a UUID), not '%s'",
                               engineer);
    if (name == NULL) {
        time_t now = time(NULL);
        struct tm tm;
        char stamp[32];
        gmtime_r(&now, &tm);
        strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
        snprintf(default_name, sizeof default_name, "%s-%s-%ld", role, stamp, (long)getpid());
        name = default_name;
    }
    if (!is_valid_name(name))
        return ctl_usage_error(cmd, "--name must be 1-%d characters without control characters",
                               CTL_TOKEN_NAME_MAX);

    ctl_store_t *store = ctl_admin_open(g, cmd, &rc);
    if (store == NULL)
        return rc;

    char token[AC_TOKEN_LEN], hash[AC_TOKEN_HASH_LEN];
    if (ac_token_generate(token) != 0) {
        ctl_err("cannot generate a token: no randomness from the operating system");
        ctl_store_close(&store);
        return CTL_EXIT_FAIL;
    }
    ac_token_hash(token, hash);
    /* The canonical role name, whatever spelling ac_role_parse() accepted. */
    int err =
        ctl_store_token_insert(store, name, ac_role_name(ac_role_parse(role)), hash, engineer);
    ctl_store_close(&store);
    if (err == AC_ERR_CONFLICT) {
        ctl_err("an active token named '%s' already exists: choose another --name, or revoke "
                "it first",
                name);
        rc = CTL_EXIT_FAIL;
    } else if (err != 0) {
        rc = CTL_EXIT_FAIL;
    } else {
        printf("%s\n", token);
        if (isatty(STDERR_FILENO))
            fprintf(stderr, "created token '%s' with role %s; it is not shown again\n", name,
                    ac_role_name(ac_role_parse(role)));
        rc = CTL_EXIT_OK;
    }
    explicit_bzero(token, sizeof token);
    return rc;
}

/* --- token list ------------------------------------------------------------------------- */

static const char LIST_HELP[] = "Usage: aftercarectl token list [--db CONNINFO]\n"
                                "\n"
                                "Lists API tokens (names, roles and the engineer an engineer's "
                                "token belongs to; never the tokens), oldest first.\n"
                                "\n" CTL_DB_HELP;

static void print_token_row(const ctl_token_row_t *row, void *arg)
{
    int *count = arg;
    if ((*count)++ == 0)
        printf("%-32s %-12s %-21s %-21s %s\n", "NAME", "ROLE", "CREATED", "REVOKED", "ENGINEER");
    printf("%-32s %-12s %-21s %-21s %s\n", row->name, row->role, row->created_at,
           row->revoked_at != NULL ? row->revoked_at : "-",
           row->engineer_id != NULL ? row->engineer_id : "-");
}

int ctl_token_list(ctl_globals_t *g, int argc, char **argv)
{
    int count = 0, rc;
    ctl_store_t *store = ctl_admin_begin(g, argc, argv, "token list ", LIST_HELP, NULL, NULL, &rc);
    if (store == NULL)
        return rc;
    rc = ctl_store_token_list(store, print_token_row, &count) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAIL;
    ctl_store_close(&store);
    if (rc == CTL_EXIT_OK && count == 0)
        fprintf(stderr, "(no tokens)\n");
    return rc;
}

/* --- token revoke ----------------------------------------------------------------------- */

static const char REVOKE_HELP[] = "Usage: aftercarectl token revoke NAME [--db CONNINFO]\n"
                                  "\n"
                                  "Revokes the active token called NAME; services stop "
                                  "accepting it within a moment.\n"
                                  "\n" CTL_DB_HELP;

int ctl_token_revoke(ctl_globals_t *g, int argc, char **argv)
{
    const char *name = NULL;
    size_t n = 0;
    int rc;
    ctl_store_t *store =
        ctl_admin_begin(g, argc, argv, "token revoke ", REVOKE_HELP, "token", &name, &rc);
    if (store == NULL)
        return rc;
    int err = ctl_store_token_revoke(store, name, &n);
    ctl_store_close(&store);
    return ctl_admin_revoked(err, "token", name, n > 1 ? " (several with that name)" : "");
}
