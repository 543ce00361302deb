/* engineer.c — `aftercarectl engineer create|show|list|update` over dispatch's HTTP API
 * (docs/dispatch-api.md). The base URL is AC_DISPATCH_URL (default CTL_DISPATCH_URL) or
 * the command's own --url; the global --url names intake and is not used here.
 *
 * Notes: as in ticket.c, the command line checks only its own shape (required options,
 * the form KIND:NAME:LEVEL of --skill, JSON of --shift); the values are the server's to
 * judge, and its error message and field are shown as they come. */
#include "ctl.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CTL_DISPATCH_URL "http://127.0.0.1:8082"
#define MAX_LIST_ARGS    64 /* --region / --skill given at most this often */

enum {
    OPT_URL = 'u',
    OPT_TOKEN = 't',
    OPT_HELP = 'h',
    OPT_JSON = 256,
    OPT_NAME,
    OPT_ROLE,
    OPT_CAPACITY,
    OPT_AVAILABILITY,
    OPT_REGION,
    OPT_SKILL,
    OPT_PHONE,
    OPT_EMAIL,
    OPT_SHIFT,
    OPT_EXPECTED_VERSION,
    OPT_LIMIT,
    OPT_CURSOR,
};

static const struct option options[] = {
    {"name", required_argument, NULL, OPT_NAME},
    {"role", required_argument, NULL, OPT_ROLE},
    {"capacity", required_argument, NULL, OPT_CAPACITY},
    {"availability", required_argument, NULL, OPT_AVAILABILITY},
    {"region", required_argument, NULL, OPT_REGION},
    {"skill", required_argument, NULL, OPT_SKILL},
    {"phone", required_argument, NULL, OPT_PHONE},
    {"email", required_argument, NULL, OPT_EMAIL},
    {"shift", required_argument, NULL, OPT_SHIFT},
    {"expected-version", required_argument, NULL, OPT_EXPECTED_VERSION},
    {"limit", required_argument, NULL, OPT_LIMIT},
    {"cursor", required_argument, NULL, OPT_CURSOR},
    {"url", required_argument, NULL, OPT_URL},
    {"token", required_argument, NULL, OPT_TOKEN},
    {"json", no_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

#define COMMON_HELP                                                                                \
    "      --json                 print the server's JSON (pretty)\n"                              \
    "  -u, --url URL              dispatch base URL (env AC_DISPATCH_URL, "                        \
    "default " CTL_DISPATCH_URL ")\n"                                                              \
    "  -t, --token TOKEN          bearer token (env AC_TOKEN)\n"                                   \
    "  -h, --help                 this help\n"

#define FIELD_HELP                                                                                 \
    "      --name NAME            the engineer's name\n"                                           \
    "      --role R               technical_support, field_engineer, depot_technician,\n"          \
    "                             supervisor, manager\n"                                           \
    "      --capacity N           open jobs at once (0 or more)\n"                                 \
    "      --availability A       available, away, on_leave\n"                                     \
    "      --region R             a region served (repeat; replaces the list)\n"                   \
    "      --skill KIND:NAME:LEVEL  product_line or category, level 1-5 (repeat; replaces)\n"      \
    "      --phone P / --email E  contact details (at least one)\n"                                \
    "      --shift JSON|@FILE     the shift calendar, e.g. '{\"time_zone\": \"UTC\",\n"            \
    "                             \"working_hours\": {\"mon\": [\"08:00-17:00\"]}}'\n"

/* What the options said; strings borrowed from argv. */
typedef struct engineer_opts {
    const char *name, *role, *capacity, *availability, *phone, *email, *shift;
    const char *regions[MAX_LIST_ARGS], *skills[MAX_LIST_ARGS];
    size_t n_regions, n_skills;
    const char *expected_version, *limit, *cursor;
    int is_json;
} engineer_opts_t;

/* Parses the options; returns -1 to go on, otherwise the exit status (help, usage). */
static int parse(ctl_globals_t *g, const char *cmd, const char *help, int argc, char **argv,
                 engineer_opts_t *o)
{
    int c;
    memset(o, 0, sizeof *o);
    const char *env_url = getenv("AC_DISPATCH_URL");
    g->url = env_url != NULL && env_url[0] != '\0' ? env_url : CTL_DISPATCH_URL;
    while ((c = getopt_long(argc, argv, ":u:t:h", options, NULL)) != -1) {
        switch (c) {
        case OPT_NAME:
            o->name = optarg;
            break;
        case OPT_ROLE:
            o->role = optarg;
            break;
        case OPT_CAPACITY:
            o->capacity = optarg;
            break;
        case OPT_AVAILABILITY:
            o->availability = optarg;
            break;
        case OPT_REGION:
        case OPT_SKILL:
            if ((c == OPT_REGION ? o->n_regions : o->n_skills) == MAX_LIST_ARGS)
                return ctl_usage_error(cmd, "at most %d of --region / --skill", MAX_LIST_ARGS);
            if (c == OPT_REGION)
                o->regions[o->n_regions++] = optarg;
            else
                o->skills[o->n_skills++] = optarg;
            break;
        case OPT_PHONE:
            o->phone = optarg;
            break;
        case OPT_EMAIL:
            o->email = optarg;
            break;
        case OPT_SHIFT:
            o->shift = optarg;
            break;
        case OPT_EXPECTED_VERSION:
            o->expected_version = optarg;
            break;
        case OPT_LIMIT:
            o->limit = optarg;
            break;
        case OPT_CURSOR:
            o->cursor = optarg;
            break;
        case OPT_JSON:
            o->is_json = 1;
            break;
        case OPT_URL:
            g->url = optarg;
            break;
        case OPT_TOKEN:
            g->token = optarg;
            break;
        case OPT_HELP:
            fputs(help, stdout);
            return CTL_EXIT_OK;
        default:
            return ctl_bad_option(cmd, c, argv);
        }
    }
    return -1;
}

/* A whole number, or a usage error (-1 printed). */
static int number(const char *cmd, const char *opt, const char *s, json_int_t *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!s[0] || *end) {
        ctl_usage_error(cmd, "%s must be a whole number, not '%s'", opt, s);
        return -1;
    }
    *out = (json_int_t)v;
    return 0;
}

/* The request body from the options given; NULL after a usage error (printed). */
static json_t *body_of(const char *cmd, const engineer_opts_t *o)
{
    json_t *body = json_object();
    json_int_t n;
    int is_bad = body == NULL;

    if (o->name)
        is_bad |= json_object_set_new(body, "name", json_string(o->name));
    if (o->role)
        is_bad |= json_object_set_new(body, "role", json_string(o->role));
    if (o->availability)
        is_bad |= json_object_set_new(body, "availability", json_string(o->availability));
    if (o->capacity) {
        if (number(cmd, "--capacity", o->capacity, &n) < 0)
            goto fail;
        is_bad |= json_object_set_new(body, "capacity", json_integer(n));
    }
    if (o->expected_version) {
        if (number(cmd, "--expected-version", o->expected_version, &n) < 0)
            goto fail;
        is_bad |= json_object_set_new(body, "expected_version", json_integer(n));
    }
    if (o->phone || o->email) {
        json_t *contact = json_object();
        if (o->phone)
            is_bad |= json_object_set_new(contact, "phone", json_string(o->phone));
        if (o->email)
            is_bad |= json_object_set_new(contact, "email", json_string(o->email));
        is_bad |= json_object_set_new(body, "contact", contact);
    }
    if (o->n_regions) {
        json_t *a = json_array();
        for (size_t i = 0; i < o->n_regions; i++)
            is_bad |= json_array_append_new(a, json_string(o->regions[i]));
        is_bad |= json_object_set_new(body, "regions", a);
    }
    if (o->n_skills) {
        json_t *a = json_array();
        for (size_t i = 0; i < o->n_skills; i++) {
            /* KIND:NAME:LEVEL, NAME may hold colons */
            const char *spec = o->skills[i];
            const char *c1 = strchr(spec, ':'), *c2 = strrchr(spec, ':');
            char *end = NULL;
            long level = c2 ? strtol(c2 + 1, &end, 10) : 0;
            if (!c1 || c1 == c2 || c1 == spec || c2 == c1 + 1 || !end || end == c2 + 1 ||
                *end != '\0') {
                json_decref(a);
                ctl_usage_error(cmd, "--skill must be KIND:NAME:LEVEL, not '%s'", spec);
                goto fail;
            }
            char kind[32], name[128];
            snprintf(kind, sizeof kind, "%.*s", (int)(c1 - spec), spec);
            snprintf(name, sizeof name, "%.*s", (int)(c2 - c1 - 1), c1 + 1);
            is_bad |= json_array_append_new(a, json_pack("{s:s,s:s,s:I}", "kind", kind, "name",
                                                         name, "level", (json_int_t)level));
        }
        is_bad |= json_object_set_new(body, "skills", a);
    }
    if (o->shift) {
        json_error_t jerr;
        json_t *shift = o->shift[0] == '@' ? json_load_file(o->shift + 1, 0, &jerr)
                                           : json_loads(o->shift, 0, &jerr);
        if (!shift) {
            ctl_usage_error(cmd, "--shift is not JSON: %s", jerr.text);
            goto fail;
        }
        is_bad |= json_object_set_new(body, "shift", shift);
    }
    if (is_bad) {
        ctl_err("option values must be valid UTF-8");
        goto fail;
    }
    return body;
fail:
    json_decref(body);
    return NULL;
}

static void print_engineer(const json_t *e)
{
    size_t i;
    const json_t *v;
    const json_t *contact = json_object_get(e, "contact");
    char *shift = json_dumps(json_object_get(e, "shift"), JSON_COMPACT | JSON_SORT_KEYS);

    printf("%s  %s  %s  %s  (version %lld)\n", json_string_value(json_object_get(e, "id")),
           json_string_value(json_object_get(e, "name")),
           json_string_value(json_object_get(e, "role")),
           json_string_value(json_object_get(e, "availability")),
           (long long)json_integer_value(json_object_get(e, "version")));
    printf("capacity:  %lld\n", (long long)json_integer_value(json_object_get(e, "capacity")));
    printf("regions:  ");
    json_array_foreach(json_object_get(e, "regions"), i, v) printf(" %s", json_string_value(v));
    printf("\nskills:   ");
    json_array_foreach(json_object_get(e, "skills"), i, v)
        printf(" %s:%s:%lld", json_string_value(json_object_get(v, "kind")),
               json_string_value(json_object_get(v, "name")),
               (long long)json_integer_value(json_object_get(v, "level")));
    printf("\ncontact:   %s, %s\n",
           json_string_value(json_object_get(contact, "phone"))
               ? json_string_value(json_object_get(contact, "phone"))
               : "-",
           json_string_value(json_object_get(contact, "email"))
               ? json_string_value(json_object_get(contact, "email"))
               : "-");
    printf("shift:     %s\n", shift ? shift : "?");
    free(shift);
}

/* Sends, prints the answer (JSON or text); the exit status. */
static int run(const ctl_globals_t *g, const char *method, const char *path, const json_t *body,
               int is_json, int is_list)
{
    ctl_response_t resp;
    int rc = CTL_EXIT_OK;
    if (ctl_http(g, method, path, body, NULL, &resp) != 0)
        return CTL_EXIT_FAIL;
    if (resp.status < 200 || resp.status > 299) {
        ctl_print_http_error(&resp);
        ctl_response_clear(&resp);
        return CTL_EXIT_FAIL;
    }
    if (is_json) {
        char *text = json_dumps(resp.body, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (text)
            puts(text);
        rc = text ? CTL_EXIT_OK : CTL_EXIT_FAIL;
        free(text);
    } else if (is_list) {
        size_t i;
        const json_t *e;
        json_array_foreach(json_object_get(resp.body, "items"), i, e) printf(
            "%s  %-20s  %-17s  %-9s  capacity %lld\n", json_string_value(json_object_get(e, "id")),
            json_string_value(json_object_get(e, "name")),
            json_string_value(json_object_get(e, "role")),
            json_string_value(json_object_get(e, "availability")),
            (long long)json_integer_value(json_object_get(e, "capacity")));
        const char *next = json_string_value(json_object_get(resp.body, "next_cursor"));
        if (next)
            printf("next page: --cursor %s\n", next);
    } else {
        print_engineer(resp.body);
    }
    ctl_response_clear(&resp);
    return rc;
}

/* "/v1/engineers/<escaped id>"; NULL when out of memory (printed). */
static char *id_path(const char *id)
{
    char *esc = ctl_url_escape(id);
    size_t len = esc ? strlen(esc) + sizeof "/v1/engineers/" : 0;
    char *path = esc ? malloc(len) : NULL;
    if (path)
        snprintf(path, len, "/v1/engineers/%s", esc);
    free(esc);
    if (!path)
        ctl_err("out of memory");
    return path;
}

static const char CREATE_HELP[] =
    "Usage: aftercarectl engineer create --name NAME --role R --capacity N --shift JSON\n"
    "                                    (--phone P | --email E) [OPTIONS]\n"
    "\n"
    "Creates an engineer (POST /v1/engineers; supervisor or admin token).\n"
    "\n" FIELD_HELP COMMON_HELP;

int ctl_engineer_create(ctl_globals_t *g, int argc, char **argv)
{
    const char *cmd = "engineer create ";
    engineer_opts_t o;
    int rc = parse(g, cmd, CREATE_HELP, argc, argv, &o);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return ctl_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    json_t *body = body_of(cmd, &o);
    if (!body)
        return CTL_EXIT_USAGE;
    rc = run(g, "POST", "/v1/engineers", body, o.is_json, 0);
    json_decref(body);
    return rc;
}

static const char UPDATE_HELP[] =
    "Usage: aftercarectl engineer update ID [--expected-version V] [FIELDS]\n"
    "\n"
    "Changes the fields given (PATCH /v1/engineers/ID; supervisor or admin token).\n"
    "\n"
    "      --expected-version V   refuse (409) unless the engineer is at version V\n" FIELD_HELP
        COMMON_HELP;

int ctl_engineer_update(ctl_globals_t *g, int argc, char **argv)
{
    const char *cmd = "engineer update ";
    engineer_opts_t o;
    int rc = parse(g, cmd, UPDATE_HELP, argc, argv, &o);
    if (rc >= 0)
        return rc;
    if (optind != argc - 1)
        return ctl_usage_error(cmd, "one engineer ID is required");
    json_t *body = body_of(cmd, &o);
    if (!body)
        return CTL_EXIT_USAGE;
    char *path = id_path(argv[optind]);
    rc = path ? run(g, "PATCH", path, body, o.is_json, 0) : CTL_EXIT_FAIL;
    free(path);
    json_decref(body);
    return rc;
}

static const char SHOW_HELP[] = "Usage: aftercarectl engineer show ID [OPTIONS]\n"
                                "\n"
                                "Shows an engineer (GET /v1/engineers/ID).\n"
                                "\n" COMMON_HELP;

int ctl_engineer_show(ctl_globals_t *g, int argc, char **argv)
{
    const char *cmd = "engineer show ";
    engineer_opts_t o;
    int rc = parse(g, cmd, SHOW_HELP, argc, argv, &o);
    if (rc >= 0)
        return rc;
    if (optind != argc - 1)
        return ctl_usage_error(cmd, "one engineer ID is required");
    char *path = id_path(argv[optind]);
    rc = path ? run(g, "GET", path, NULL, o.is_json, 0) : CTL_EXIT_FAIL;
    free(path);
    return rc;
}

static const char LIST_HELP[] =
    "Usage: aftercarectl engineer list [OPTIONS]\n"
    "\n"
    "Lists engineers, newest first (GET /v1/engineers), one page.\n"
    "\n"
    "      --role R / --availability A / --region R / --skill NAME   filters\n"
    "      --limit N              engineers per page, 1-200 (server default 50)\n"
    "      --cursor C             start at this page (next_cursor of an earlier "
    "page)\n" COMMON_HELP;

int ctl_engineer_list(ctl_globals_t *g, int argc, char **argv)
{
    const char *cmd = "engineer list ";
    engineer_opts_t o;
    char *esc[6] = {NULL};
    const char *keys[6] = {"role", "availability", "region", "skill", "limit", "cursor"};
    int rc = parse(g, cmd, LIST_HELP, argc, argv, &o);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return ctl_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (o.n_regions > 1 || o.n_skills > 1)
        return ctl_usage_error(cmd, "filter by one --region and one --skill at most");
    const char *vals[6] = {
        o.role,  o.availability, o.n_regions ? o.regions[0] : NULL, o.n_skills ? o.skills[0] : NULL,
        o.limit, o.cursor};
    char path[2048] = "/v1/engineers";
    rc = CTL_EXIT_OK;
    for (size_t i = 0; i < 6; i++) {
        if (!vals[i])
            continue;
        if (!(esc[i] = ctl_url_escape(vals[i]))) {
            ctl_err("out of memory");
            rc = CTL_EXIT_FAIL;
            break;
        }
        size_t len = strlen(path);
        int n = snprintf(path + len, sizeof path - len, "%s%s=%s", strchr(path, '?') ? "&" : "?",
                         keys[i], esc[i]);
        if (n < 0 || (size_t)n >= sizeof path - len) {
            rc = ctl_usage_error(cmd, "the filters are too long");
            break;
        }
    }
    if (rc == CTL_EXIT_OK)
        rc = run(g, "GET", path, NULL, o.is_json, 1);
    for (size_t i = 0; i < 6; i++)
        free(esc[i]);
    return rc;
}
