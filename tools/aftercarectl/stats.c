/* stats.c — `aftercarectl events stats`: the bus's figures (GET /v1/stats on the bus's
 * HTTP port, role admin) as a table, or as the server's JSON with --json.
 *
 * Notes: the figures are the bus's own since it started (counters reset with the
 * process; bus_instance tells two processes apart). Rates are the bus's per-topic
 * averages over the last 10 and 60 seconds. */
#include "ctl.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CTL_DEFAULT_BUS_URL "http://127.0.0.1:8090"

enum {
    OPT_HELP = 'h',
    OPT_URL = 'u',
    OPT_TOKEN = 't',
    OPT_JSON = 256,
};

static const char STATS_HELP[] =
    "Usage: aftercarectl events stats [--json] [--url URL] [--token TOKEN]\n"
    "\n"
    "Shows the bus's figures: latest and oldest sequence and outbox lag per source, events\n"
    "forwarded and rates per topic, connected subscribers and subscriptions, connections\n"
    "per bus socket, replays, drops, authentication failures and failed handshakes\n"
    "(GET /v1/stats on the bus; needs an admin token).\n"
    "\n"
    "      --json             print the bus's JSON (pretty)\n"
    "  -u, --url URL          the bus's HTTP URL (env AC_BUS_URL, default " CTL_DEFAULT_BUS_URL
    ")\n"
    "  -t, --token TOKEN      admin bearer token (env AC_TOKEN)\n"
    "  -h, --help             this help\n";

static long long int_of(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : 0;
}

static double real_of(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : 0.;
}

static const char *str_of(const json_t *o, const char *key, const char *def)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : def;
}

/* "3d 4h", "12m 3s", "42s" */
static const char *duration_text(double s, char *buf, size_t len)
{
    long t = (long)s;
    if (t >= 86400)
        snprintf(buf, len, "%ldd %ldh", t / 86400, t % 86400 / 3600);
    else if (t >= 3600)
        snprintf(buf, len, "%ldh %ldm", t / 3600, t % 3600 / 60);
    else if (t >= 60)
        snprintf(buf, len, "%ldm %lds", t / 60, t % 60);
    else
        snprintf(buf, len, "%lds", t);
    return buf;
}

/* "NAME n, NAME n" of every member of an object of integers. */
static void print_counts(json_t *o)
{
    const char *key;
    const json_t *v;
    int first = 1;
    json_object_foreach(o, key, v)
    {
        printf("%s%s %lld", first ? "" : ", ", key,
               json_is_integer(v) ? (long long)json_integer_value(v) : 0);
        first = 0;
    }
    if (first)
        printf("-");
}

static void print_table(const json_t *st)
{
    const json_t *sources = json_object_get(st, "sources");
    const json_t *topics = json_object_get(st, "topics");
    const json_t *replay = json_object_get(st, "replay");
    const json_t *conns;
    json_t *item;
    const char *sock;
    size_t i;
    long long total = 0;
    double total10 = 0, total60 = 0;
    char up[32];

    printf("bus %s, up %s, database %s, %lld keys, heartbeat #%lld every %lld ms\n",
           str_of(st, "bus_instance", "?"), duration_text(real_of(st, "uptime_s"), up, sizeof up),
           str_of(st, "db", "?"), int_of(st, "keys"), int_of(st, "heartbeat_beat"),
           int_of(st, "heartbeat_ms"));

    printf("\n%-24s %12s %12s %10s %12s\n", "SOURCE", "LATEST SEQ", "OLDEST SEQ", "LAG",
           "UNNUMBERED");
    json_array_foreach(sources, i, item)
    {
        const json_t *oldest = json_object_get(item, "oldest_sequence");
        char oldest_text[24];
        if (json_is_integer(oldest))
            snprintf(oldest_text, sizeof oldest_text, "%lld",
                     (long long)json_integer_value(oldest));
        else
            snprintf(oldest_text, sizeof oldest_text, "?");
        printf("%-24s %12lld %12s %10lld %12lld\n", str_of(item, "source", "?"),
               int_of(item, "last_sequence"), oldest_text, int_of(item, "outbox_lag"),
               int_of(item, "outbox_unnumbered"));
    }

    printf("\n%-32s %12s %10s %10s\n", "TOPIC", "FORWARDED", "/s (10s)", "/s (60s)");
    json_array_foreach(topics, i, item)
    {
        total += int_of(item, "forwarded");
        total10 += real_of(item, "rate_10s");
        total60 += real_of(item, "rate_60s");
        printf("%-32s %12lld %10.1f %10.1f\n", str_of(item, "topic", "?"),
               int_of(item, "forwarded"), real_of(item, "rate_10s"), real_of(item, "rate_60s"));
    }
    printf("%-32s %12lld %10.1f %10.1f\n", "(all)", total, total10, total60);

    conns = json_object_get(st, "connections");
    printf("\nsubscribers %lld, with %lld subscriptions (subscribes %lld, unsubscribes %lld)\n",
           int_of(st, "subscribers"), int_of(st, "subscriptions"), int_of(st, "subscribes"),
           int_of(st, "unsubscribes"));
    printf("connections: input %lld, output %lld, replay %lld\n", int_of(conns, "input"),
           int_of(conns, "output"), int_of(conns, "replay"));
    printf("dropped: malformed %lld, unauthorised %lld, subscriptions refused %lld\n",
           int_of(st, "malformed"), int_of(st, "unauthorised"), int_of(st, "topics_denied"));
    printf("authentication failures: ");
    print_counts(json_object_get(st, "auth_failures"));
    printf("\nfailed handshakes:");
    json_object_foreach(json_object_get(st, "handshake_failures"), sock, item)
    {
        printf("\n  %-8s ", sock);
        print_counts(item);
    }
    printf("\nreplay: %lld requests (%lld malformed), %lld active, %lld completed, %lld events, "
           "%lld clients gone\n",
           int_of(replay, "requests"), int_of(replay, "malformed"), int_of(replay, "active"),
           int_of(replay, "completed"), int_of(replay, "events"), int_of(replay, "peers_gone"));
    printf("replay errors: ");
    print_counts(json_object_get(replay, "errors"));
    printf("\n");
}

int ctl_events_stats(ctl_globals_t *g, int argc, char **argv)
{
    static const struct option options[] = {
        {"json", no_argument, NULL, OPT_JSON},
        {"url", required_argument, NULL, OPT_URL},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "events stats ";
    const char *env_url = getenv("AC_BUS_URL");
    ctl_globals_t bus = *g;
    ctl_response_t resp;
    int is_json = 0, c, rc;

    bus.url = env_url && env_url[0] ? env_url : CTL_DEFAULT_BUS_URL;
    while ((c = getopt_long(argc, argv, ":u:t:h", options, NULL)) != -1) {
        switch (c) {
        case OPT_JSON:
            is_json = 1;
            break;
        case OPT_URL:
            bus.url = optarg;
            break;
        case OPT_TOKEN:
            bus.token = optarg;
            break;
        case OPT_HELP:
            fputs(STATS_HELP, stdout);
            return CTL_EXIT_OK;
        default:
            return ctl_bad_option(cmd, c, argv);
        }
    }
    if (optind < argc)
        return ctl_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (bus.token == NULL)
        return ctl_usage_error(cmd, "an admin token is required: --token or AC_TOKEN");

    if (ctl_http(&bus, "GET", "/v1/stats", NULL, NULL, &resp) != 0) {
        ctl_err("(the bus's HTTP address is set with --url or AC_BUS_URL; now %s)", bus.url);
        return CTL_EXIT_FAIL;
    }
    if (resp.status != 200) {
        ctl_print_http_error(&resp);
        ctl_response_clear(&resp);
        return CTL_EXIT_FAIL;
    }
    if (!json_is_object(resp.body)) {
        ctl_err("HTTP %ld but the body is not a JSON object", resp.status);
        ctl_response_clear(&resp);
        return CTL_EXIT_FAIL;
    }
    rc = CTL_EXIT_OK;
    if (is_json) {
        char *text = json_dumps(resp.body, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (text) {
            puts(text);
            free(text);
        } else {
            ctl_err("out of memory");
            rc = CTL_EXIT_FAIL;
        }
    } else {
        print_table(resp.body);
    }
    ctl_response_clear(&resp);
    return rc;
}
