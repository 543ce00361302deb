/* main.c — aftercarectl: global options, the command table, dispatch. */
#include "ctl.h"

#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_log.h"

#ifndef AC_VERSION
#define AC_VERSION "0.1.0"
#endif

typedef struct ctl_command {
    const char *group; /* "ticket" */
    const char *name;  /* "create" */
    ctl_command_fn fn;
    const char *summary; /* one line for the overview */
} ctl_command_t;

static const ctl_command_t ctl_commands[] = {
    {"ticket", "create", ctl_ticket_create, "report a problem (POST /v1/tickets)"},
    {"ticket", "show", ctl_ticket_show, "show one ticket and its history"},
    {"ticket", "list", ctl_ticket_list, "list tickets, newest first, with filters"},
    {"engineer", "create", ctl_engineer_create, "add an engineer (dispatch, POST /v1/engineers)"},
    {"engineer", "show", ctl_engineer_show, "show one engineer"},
    {"engineer", "list", ctl_engineer_list, "list engineers, newest first, with filters"},
    {"engineer", "update", ctl_engineer_update, "change an engineer's fields (PATCH)"},
    {"token", "create", ctl_token_create, "create an API token and print it"},
    {"token", "list", ctl_token_list, "list API tokens (never the tokens themselves)"},
    {"token", "revoke", ctl_token_revoke, "revoke an API token by name"},
    {"keys", "create", ctl_keys_create, "make a CURVE key pair and allow it on the bus"},
    {"keys", "allow", ctl_keys_allow, "allow on the bus a public key made elsewhere"},
    {"keys", "revoke", ctl_keys_revoke, "revoke a bus key by name (no bus restart)"},
    {"keys", "list", ctl_keys_list, "list bus keys, live and revoked"},
    {"events", "tail", ctl_events_tail, "print events from the bus as they happen"},
    {"events", "stats", ctl_events_stats, "the bus's figures: sequences, rates, replays, drops"},
    {NULL, NULL, NULL, NULL},
};

void ctl_err(const char *fmt, ...)
{
    va_list ap;
    fputs("aftercarectl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int ctl_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fputs("aftercarectl: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'aftercarectl %s--help'.\n", cmd);
    return CTL_EXIT_USAGE;
}

int ctl_bad_option(const char *cmd, int c, char **argv)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "?";
    if (c == ':') {
        return ctl_usage_error(cmd, "option '%s' needs an argument", arg);
    }
    if (optopt != 0 && (arg[0] != '-' || arg[1] != '-'))
        return ctl_usage_error(cmd, "unknown option '-%c'", optopt);
    return ctl_usage_error(cmd, "unknown option '%s'", arg);
}

static void print_usage(FILE *out)
{
    fputs("Usage: aftercarectl [--url URL] [--token TOKEN] [--db CONNINFO] COMMAND [ARGS]\n"
          "\n"
          "The operator's command line for aftercare.\n"
          "\n"
          "Commands:\n",
          out);
    for (const ctl_command_t *c = ctl_commands; c->group != NULL; c++) {
        char both[64];
        snprintf(both, sizeof both, "%s %s", c->group, c->name);
        fprintf(out, "  %-16s %s\n", both, c->summary);
    }
    fputs("\n"
          "Global options (also accepted after the command):\n"
          "  -u, --url URL        intake base URL (env AC_INTAKE_URL, default " CTL_DEFAULT_URL
          ")\n"
          "  -t, --token TOKEN    bearer token for the HTTP APIs (env AC_TOKEN)\n"
          "      --db CONNINFO    libpq conninfo for token and keys commands (env AC_ADMIN_DB)\n"
          "  -h, --help           this help; 'aftercarectl COMMAND --help' for a command\n"
          "  -V, --version        print the version\n"
          "\n"
          "Exit status: 0 success, 1 the operation failed, 2 usage error.\n",
          out);
}

static void print_group_usage(FILE *out, const char *group)
{
    fprintf(out, "Usage: aftercarectl %s COMMAND [OPTIONS]\n\nCommands:\n", group);
    for (const ctl_command_t *c = ctl_commands; c->group != NULL; c++)
        if (strcmp(c->group, group) == 0)
            fprintf(out, "  %-8s %s\n", c->name, c->summary);
    fprintf(out, "\nRun 'aftercarectl %s COMMAND --help' for a command's options.\n", group);
}

static int is_group(const char *group)
{
    for (const ctl_command_t *c = ctl_commands; c->group != NULL; c++)
        if (strcmp(c->group, group) == 0)
            return 1;
    return 0;
}

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : def;
}

int main(int argc, char **argv)
{
    enum { OPT_DB = 256 };
    static const struct option long_options[] = {
        {"url", required_argument, NULL, 'u'},   {"token", required_argument, NULL, 't'},
        {"db", required_argument, NULL, OPT_DB}, {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},     {NULL, 0, NULL, 0},
    };
    ctl_globals_t g = {
        .url = env_or("AC_INTAKE_URL", CTL_DEFAULT_URL),
        .token = env_or("AC_TOKEN", NULL),
        .db = env_or("AC_ADMIN_DB", NULL),
    };

    /* Common modules log to stderr; only their warnings matter to a command-line user. */
    ac_log_init("aftercarectl", AC_LOG_WARN, 0);

    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+:u:t:hV", long_options, NULL)) != -1) {
        switch (c) {
        case 'u':
            g.url = optarg;
            break;
        case 't':
            g.token = optarg;
            break;
        case OPT_DB:
            g.db = optarg;
            break;
        case 'h':
            print_usage(stdout);
            return CTL_EXIT_OK;
        case 'V':
            printf("aftercarectl %s\n", AC_VERSION);
            return CTL_EXIT_OK;
        default:
            return ctl_bad_option("", c, argv);
        }
    }
    if (optind >= argc) {
        print_usage(stderr);
        return CTL_EXIT_USAGE;
    }
    const char *group = argv[optind];
    if (strcmp(group, "help") == 0) {
        print_usage(stdout);
        return CTL_EXIT_OK;
    }
    if (!is_group(group))
        return ctl_usage_error("", "unknown command '%s'", group);
    if (optind + 1 >= argc) {
        print_group_usage(stderr, group);
        return CTL_EXIT_USAGE;
    }
    const char *name = argv[optind + 1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0) {
        print_group_usage(stdout, group);
        return CTL_EXIT_OK;
    }
    for (const ctl_command_t *cmd = ctl_commands; cmd->group != NULL; cmd++) {
        if (strcmp(cmd->group, group) == 0 && strcmp(cmd->name, name) == 0) {
            int first = optind + 1;
            optind = 0; /* glibc: full re-initialisation for the command's own getopt_long */
            return cmd->fn(&g, argc - first, argv + first);
        }
    }
    char cmdname[64];
    snprintf(cmdname, sizeof cmdname, "%s ", group);
    return ctl_usage_error(cmdname, "unknown %s command '%s'", group, name);
}
