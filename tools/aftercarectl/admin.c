/* admin.c — what the commands on the admin database (token.c, keys.c) share: the
 * connection, the commands that take only --db and --help (list, revoke), and how a
 * revoke is reported. */
#include "ctl.h"

#include <getopt.h>
#include <stdio.h>

enum {
    OPT_HELP = 'h',
    OPT_DB = 256,
};

ctl_store_t *ctl_admin_open(const ctl_globals_t *g, const char *cmd, int *rc)
{
    if (g->db == NULL) {
        *rc = ctl_usage_error(cmd, "no database: set --db or AC_ADMIN_DB");
        return NULL;
    }
    ctl_store_t *store = ctl_store_open(g->db);
    *rc = store != NULL ? CTL_EXIT_OK : CTL_EXIT_FAIL;
    return store;
}

int ctl_name_operand(const char *cmd, int argc, char **argv, const char *what, const char **name)
{
    if (optind >= argc)
        return ctl_usage_error(cmd, "a %s NAME is required", what);
    if (optind + 1 < argc)
        return ctl_usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);
    *name = argv[optind];
    return CTL_EXIT_OK;
}

ctl_store_t *ctl_admin_begin(ctl_globals_t *g, int argc, char **argv, const char *cmd,
                             const char *help, const char *what, const char **name, int *rc)
{
    static const struct option options[] = {
        {"db", required_argument, NULL, OPT_DB},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    int c;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        if (c == OPT_DB) {
            g->db = optarg;
            continue;
        }
        if (c == OPT_HELP) { /* --help: nothing else is done */
            fputs(help, stdout);
            *rc = CTL_EXIT_OK;
        } else {
            *rc = ctl_bad_option(cmd, c, argv);
        }
        return NULL;
    }
    if (what != NULL)
        *rc = ctl_name_operand(cmd, argc, argv, what, name);
    else if (optind < argc)
        *rc = ctl_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    else
        *rc = CTL_EXIT_OK;
    if (*rc != CTL_EXIT_OK)
        return NULL;
    return ctl_admin_open(g, cmd, rc);
}

int ctl_admin_revoked(int err, const char *what, const char *name, const char *note)
{
    switch (err) {
    case 0:
        fprintf(stderr, "revoked %s '%s'%s\n", what, name, note);
        return CTL_EXIT_OK;
    case AC_ERR_CONFLICT:
        fprintf(stderr, "%s '%s' was already revoked\n", what, name);
        return CTL_EXIT_OK;
    case AC_ERR_NOTFOUND:
        ctl_err("no %s named '%s'", what, name);
        return CTL_EXIT_FAIL;
    default:
        return CTL_EXIT_FAIL;
    }
}
