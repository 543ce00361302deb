/* keys.c — `aftercarectl keys create|allow|revoke|list`: the CURVE public keys allowed on
 * the bus (auth.bus_keys).
 *
 * Notes: `create` makes a key pair, writes it to a key file (mode 0600, never over an
 * existing file) and registers the public key; `allow` registers a public key that an
 * integrator generated on their own machine (the secret key never travels). `--kind bus`
 * makes the bus's own pair, which is not registered: it is the server's key, and its
 * public half is what clients put in AC_BUS_SERVER_KEY. Every input is validated before
 * anything is written; on any failure nothing is left behind. The bus reloads its keys on
 * the table's NOTIFY, so allow and revoke take effect without a restart. */
#include "ctl.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ac_bus.h"

#define NAME_MAX_LEN   64 /* auth.bus_keys.name: [A-Za-z0-9][A-Za-z0-9._-]{0,63} */
#define SOURCE_MAX_LEN 42 /* "aftercare/" + [a-z][a-z0-9-]{0,31} */
#define TOPICS_MAX     32 /* prefixes per key */
#define TOPIC_MAX_LEN  100

enum {
    OPT_HELP = 'h',
    OPT_DB = 256,
    OPT_KIND,
    OPT_SOURCE,
    OPT_TOPICS,
    OPT_OUT,
    OPT_PUBLIC_KEY,
};

#define KEY_OPTIONS_HELP                                                                           \
    "      --kind KIND        service: publishes into the bus input (needs --source), and may\n"   \
    "                         subscribe; subscriber: may subscribe and replay, nothing else\n"     \
    "      --source SOURCE    services only: the one envelope source it may publish,\n"            \
    "                         aftercare/<name> (lowercase letters, digits, '-')\n"                 \
    "      --topics P1,P2     the topic prefixes it may see, live and replayed (e.g.\n"            \
    "                         ticket.,survey.); default: every topic\n"

/* What a key create/allow command was told, validated. */
typedef struct key_spec {
    const char *name;
    const char *kind;                   /* "service" | "subscriber" | "bus" (create only) */
    const char *source;                 /* NULL for subscribers */
    char *topics_buf;                   /* owned copy of --topics, split in place */
    const char *topics[TOPICS_MAX + 1]; /* NULL-terminated, pointing into topics_buf */
} key_spec_t;

/* --- validation ------------------------------------------------------------------------- */

static int is_valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int is_alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!is_alnum && (i == 0 || (c != '.' && c != '_' && c != '-')))
            return 0;
    }
    return 1;
}

static int is_valid_source(const char *s)
{
    static const char prefix[] = "aftercare/";
    size_t plen = sizeof(prefix) - 1;
    if (strncmp(s, prefix, plen) != 0 || strlen(s) > SOURCE_MAX_LEN)
        return 0;
    s += plen;
    if (!(*s >= 'a' && *s <= 'z'))
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '-'))
            return 0;
    return 1;
}

/* A topic prefix: segments of [a-z0-9_-] separated by single dots, optionally ending with
 * a dot ("ticket.", "ticket.created", "parts"). */
static int is_valid_topic_prefix(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > TOPIC_MAX_LEN || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '.') {
            if (s[i - 1] == '.')
                return 0;
        } else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

/* Splits and checks --topics into spec->topics. CTL_EXIT_OK or a usage error. */
static int parse_topics(const char *cmd, const char *text, key_spec_t *spec)
{
    size_t n = 0;
    spec->topics[0] = NULL;
    if (text == NULL)
        return CTL_EXIT_OK;
    spec->topics_buf = strdup(text);
    if (spec->topics_buf == NULL) {
        ctl_err("out of memory");
        return CTL_EXIT_FAIL;
    }
    for (char *save = NULL, *t = strtok_r(spec->topics_buf, ",", &save); t != NULL;
         t = strtok_r(NULL, ",", &save)) {
        if (!is_valid_topic_prefix(t))
            return ctl_usage_error(cmd,
                                   "--topics: '%s' is not a topic prefix (lowercase letters, "
                                   "digits, '_' and '-' in dot-separated parts, e.g. ticket.)",
                                   t);
        for (size_t i = 0; i < n; i++)
            if (strcmp(spec->topics[i], t) == 0)
                return ctl_usage_error(cmd, "--topics: '%s' is given twice", t);
        if (n == TOPICS_MAX)
            return ctl_usage_error(cmd, "--topics: at most %d prefixes", TOPICS_MAX);
        spec->topics[n++] = t;
        spec->topics[n] = NULL;
    }
    if (n == 0)
        return ctl_usage_error(cmd, "--topics is empty; leave it out to allow every topic");
    return CTL_EXIT_OK;
}

/* Checks name, kind, source and topics together. CTL_EXIT_OK or a usage error. */
static int check_spec(const char *cmd, key_spec_t *spec, const char *topics, int may_be_bus)
{
    if (!is_valid_name(spec->name))
        return ctl_usage_error(cmd,
                               "'%s' is not a key name: 1-%d letters, digits, '.', '_' or '-', "
                               "starting with a letter or digit",
                               spec->name, NAME_MAX_LEN);
    if (spec->kind == NULL)
        return ctl_usage_error(cmd, "--kind is required (service or subscriber%s)",
                               may_be_bus ? ", or bus for the bus's own key" : "");
    if (strcmp(spec->kind, "bus") == 0 && may_be_bus) {
        if (spec->source != NULL || topics != NULL)
            return ctl_usage_error(cmd, "--kind bus takes no --source or --topics");
        return CTL_EXIT_OK;
    }
    if (strcmp(spec->kind, "service") != 0 && strcmp(spec->kind, "subscriber") != 0)
        return ctl_usage_error(cmd, "unknown --kind '%s' (service or subscriber%s)", spec->kind,
                               may_be_bus ? ", or bus" : "");
    if (strcmp(spec->kind, "service") == 0) {
        if (spec->source == NULL)
            return ctl_usage_error(cmd, "a service key needs --source aftercare/<service>");
        if (!is_valid_source(spec->source))
            return ctl_usage_error(cmd,
                                   "--source '%s' is not aftercare/<name> (a lowercase letter, "
                                   "then up to 31 lowercase letters, digits or '-')",
                                   spec->source);
    } else if (spec->source != NULL) {
        return ctl_usage_error(cmd, "only service keys have a --source");
    }
    return parse_topics(cmd, topics, spec);
}

/* Registers spec's public key; prints why not. CTL_EXIT_OK or CTL_EXIT_FAIL. */
static int register_key(ctl_store_t *store, const key_spec_t *spec, const char *public_key)
{
    char owner[128] = "";
    int err = ctl_store_key_insert(store, public_key, spec->name, spec->kind, spec->source,
                                   spec->topics, owner, sizeof(owner));
    switch (err) {
    case 0:
        return CTL_EXIT_OK;
    case AC_ERR_CONFLICT:
        ctl_err("a live key named '%s' already exists: choose another name, or revoke it first",
                spec->name);
        return CTL_EXIT_FAIL;
    case AC_ERR_INVALID:
        ctl_err("this public key is already registered as '%s'; a revoked key cannot be allowed "
                "again: generate a new pair",
                owner);
        return CTL_EXIT_FAIL;
    default:
        return CTL_EXIT_FAIL;
    }
}

static void describe(const key_spec_t *spec, const char *public_key, const char *file)
{
    if (!isatty(STDERR_FILENO))
        return;
    fprintf(stderr, "%s %s key '%s'", file ? "created" : "allowed", spec->kind, spec->name);
    if (spec->source != NULL)
        fprintf(stderr, " for source %s", spec->source);
    if (spec->topics[0] != NULL) {
        fputs(", topics", stderr);
        for (size_t i = 0; spec->topics[i] != NULL; i++)
            fprintf(stderr, "%s%s", i ? "," : " ", spec->topics[i]);
    }
    if (file != NULL)
        fprintf(stderr, "; key file %s (keep it secret)", file);
    fprintf(stderr, "\npublic key: %s\n", public_key);
}

/* --- keys create ------------------------------------------------------------------------ */

static const char CREATE_HELP[] =
    "Usage: aftercarectl keys create NAME --kind KIND [--source SOURCE] [--topics P1,P2]\n"
    "                                --out FILE [--db CONNINFO]\n"
    "\n"
    "Generates a CURVE key pair, writes it to FILE (mode 0600; an existing file is never\n"
    "overwritten) and allows its public key on the bus. Prints the public key on stdout.\n"
    "With --kind bus it makes the bus's own key pair (AC_BUS_SECRET_KEY_FILE) and registers\n"
    "nothing; its public key is the AC_BUS_SERVER_KEY of every client.\n"
    "\n" KEY_OPTIONS_HELP "      --out FILE         the key file to write\n" CTL_DB_HELP;

int ctl_keys_create(ctl_globals_t *g, int argc, char **argv)
{
    static const struct option options[] = {
        {"kind", required_argument, NULL, OPT_KIND},
        {"source", required_argument, NULL, OPT_SOURCE},
        {"topics", required_argument, NULL, OPT_TOPICS},
        {"out", required_argument, NULL, OPT_OUT},
        {"db", required_argument, NULL, OPT_DB},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "keys create ";
    const char *topics = NULL, *out = NULL;
    key_spec_t spec = {0};
    ctl_store_t *store = NULL;
    ac_curve_t pair;
    char err[512], comment[160];
    int c, rc, is_bus;

    memset(&pair, 0, sizeof(pair));

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (c) {
        case OPT_KIND:
            spec.kind = optarg;
            break;
        case OPT_SOURCE:
            spec.source = optarg;
            break;
        case OPT_TOPICS:
            topics = optarg;
            break;
        case OPT_OUT:
            out = optarg;
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
    if ((rc = ctl_name_operand(cmd, argc, argv, "key", &spec.name)) != CTL_EXIT_OK)
        return rc;
    rc = check_spec(cmd, &spec, topics, 1);
    if (rc != CTL_EXIT_OK)
        goto out;
    if (out == NULL) {
        rc = ctl_usage_error(cmd, "--out FILE is required (where the key pair is written)");
        goto out;
    }
    if (access(out, F_OK) == 0) {
        ctl_err("%s exists already: a key file is never overwritten", out);
        rc = CTL_EXIT_FAIL;
        goto out;
    }
    is_bus = strcmp(spec.kind, "bus") == 0;
    if (!is_bus && (store = ctl_admin_open(g, cmd, &rc)) == NULL)
        goto out;
    if (ac_curve_keypair(pair.public_key, pair.secret_key) != 0) {
        ctl_err("cannot generate a key pair (libzmq without CURVE?)");
        rc = CTL_EXIT_FAIL;
        goto out;
    }
    snprintf(comment, sizeof(comment), "%s %s", spec.name,
             is_bus ? "(the bus's own key)" : spec.kind);
    if (ac_curve_write(out, &pair, comment, err, sizeof(err)) != 0) {
        ctl_err("%s", err); /* ac_curve_write() removed what it created, nothing else */
        rc = CTL_EXIT_FAIL;
        goto out;
    }
    if (!is_bus && (rc = register_key(store, &spec, pair.public_key)) != CTL_EXIT_OK) {
        unlink(out); /* nothing changed */
        goto out;
    }
    printf("%s\n", pair.public_key);
    describe(&spec, pair.public_key, out);
    rc = CTL_EXIT_OK;
out:
    explicit_bzero(pair.secret_key, sizeof(pair.secret_key));
    ctl_store_close(&store);
    free(spec.topics_buf);
    return rc;
}

/* --- keys allow ------------------------------------------------------------------------- */

static const char ALLOW_HELP[] =
    "Usage: aftercarectl keys allow NAME --public-key Z85 --kind KIND [--source SOURCE]\n"
    "                               [--topics P1,P2] [--db CONNINFO]\n"
    "\n"
    "Allows on the bus a public key generated elsewhere (e.g. by an integrator with\n"
    "pyzmq's zmq.curve_keypair(); the secret key stays with them).\n"
    "\n"
    "      --public-key Z85   the 40-character Z85 public key\n" KEY_OPTIONS_HELP CTL_DB_HELP;

int ctl_keys_allow(ctl_globals_t *g, int argc, char **argv)
{
    static const struct option options[] = {
        {"public-key", required_argument, NULL, OPT_PUBLIC_KEY},
        {"kind", required_argument, NULL, OPT_KIND},
        {"source", required_argument, NULL, OPT_SOURCE},
        {"topics", required_argument, NULL, OPT_TOPICS},
        {"db", required_argument, NULL, OPT_DB},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "keys allow ";
    const char *topics = NULL, *public_key = NULL;
    key_spec_t spec = {0};
    ctl_store_t *store = NULL;
    int c, rc;

    while ((c = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (c) {
        case OPT_PUBLIC_KEY:
            public_key = optarg;
            break;
        case OPT_KIND:
            spec.kind = optarg;
            break;
        case OPT_SOURCE:
            spec.source = optarg;
            break;
        case OPT_TOPICS:
            topics = optarg;
            break;
        case OPT_DB:
            g->db = optarg;
            break;
        case OPT_HELP:
            fputs(ALLOW_HELP, stdout);
            return CTL_EXIT_OK;
        default:
            return ctl_bad_option(cmd, c, argv);
        }
    }
    if ((rc = ctl_name_operand(cmd, argc, argv, "key", &spec.name)) != CTL_EXIT_OK)
        return rc;
    rc = check_spec(cmd, &spec, topics, 0);
    if (rc != CTL_EXIT_OK)
        goto out;
    if (public_key == NULL) {
        rc = ctl_usage_error(cmd, "--public-key Z85 is required");
        goto out;
    }
    if (!ac_curve_key_is_valid(public_key)) {
        rc = ctl_usage_error(cmd,
                             "--public-key is not a CURVE public key: expected 40 characters of "
                             "Z85 (got %zu characters%s)",
                             strlen(public_key),
                             strlen(public_key) == AC_KEY_Z85_LEN ? ", not all Z85" : "");
        goto out;
    }
    if ((store = ctl_admin_open(g, cmd, &rc)) == NULL)
        goto out;
    rc = register_key(store, &spec, public_key);
    if (rc == CTL_EXIT_OK)
        describe(&spec, public_key, NULL);
out:
    ctl_store_close(&store);
    free(spec.topics_buf);
    return rc;
}

/* --- keys revoke ------------------------------------------------------------------------ */

static const char REVOKE_HELP[] = "Usage: aftercarectl keys revoke NAME [--db CONNINFO]\n"
                                  "\n"
                                  "Revokes the live key called NAME. The bus refuses it within a "
                                  "moment, without a restart,\n"
                                  "and cuts off its open connections.\n"
                                  "\n" CTL_DB_HELP;

int ctl_keys_revoke(ctl_globals_t *g, int argc, char **argv)
{
    const char *name = NULL;
    int rc;
    ctl_store_t *store =
        ctl_admin_begin(g, argc, argv, "keys revoke ", REVOKE_HELP, "key", &name, &rc);
    if (store == NULL)
        return rc;
    int err = ctl_store_key_revoke(store, name);
    ctl_store_close(&store);
    return ctl_admin_revoked(err, "key", name, "");
}

/* --- keys list -------------------------------------------------------------------------- */

static const char LIST_HELP[] = "Usage: aftercarectl keys list [--db CONNINFO]\n"
                                "\n"
                                "Lists the bus keys, live and revoked, oldest first.\n"
                                "\n" CTL_DB_HELP;

static void print_key_row(const ctl_key_row_t *row, void *arg)
{
    int *count = arg;
    if ((*count)++ == 0)
        printf("%-24s %-10s %-20s %-24s %-40s %-20s %s\n", "NAME", "KIND", "SOURCE", "TOPICS",
               "PUBLIC KEY", "CREATED", "REVOKED");
    printf("%-24s %-10s %-20s %-24s %-40s %-20s %s\n", row->name, row->kind,
           row->source != NULL ? row->source : "-", row->topics[0] ? row->topics : "*",
           row->public_key, row->created_at, row->revoked_at != NULL ? row->revoked_at : "-");
}

int ctl_keys_list(ctl_globals_t *g, int argc, char **argv)
{
    int count = 0, rc;
    ctl_store_t *store = ctl_admin_begin(g, argc, argv, "keys list ", LIST_HELP, NULL, NULL, &rc);
    if (store == NULL)
        return rc;
    rc = ctl_store_key_list(store, print_key_row, &count) == 0 ? CTL_EXIT_OK : CTL_EXIT_FAIL;
    ctl_store_close(&store);
    if (rc == CTL_EXIT_OK && count == 0)
        fprintf(stderr, "(no keys)\n");
    return rc;
}
