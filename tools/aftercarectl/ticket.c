/* ticket.c — `aftercarectl ticket create|show|list` over intake's HTTP API.
 *
 * Notes: input is checked here only for the command line's own shape (required options,
 * numbers); the values themselves (category, urgency, dates, ...) are the server's to
 * judge, and its error message and field are shown as they come. */
#include "ctl.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    OPT_URL = 'u',
    OPT_TOKEN = 't',
    OPT_HELP = 'h',
    OPT_JSON = 256,
    OPT_CUSTOMER,
    OPT_PRODUCT,
    OPT_CATEGORY,
    OPT_CHANNEL,
    OPT_DESCRIPTION,
    OPT_URGENCY,
    OPT_EXPEDITE,
    OPT_OCCURRED_AT,
    OPT_IDEMPOTENCY_KEY,
    OPT_STATUS,
    OPT_PRIORITY,
    OPT_LIMIT,
    OPT_CURSOR,
    OPT_ALL,
    OPT_CREATED_FROM,
    OPT_CREATED_TO,
};

#define COMMON_OPTIONS                                                                             \
    {"url", required_argument, NULL, OPT_URL}, {"token", required_argument, NULL, OPT_TOKEN},      \
        {"json", no_argument, NULL, OPT_JSON},                                                     \
    {                                                                                              \
        "help", no_argument, NULL, OPT_HELP                                                        \
    }

#define COMMON_HELP                                                                                \
    "      --json             print the server's JSON (pretty)\n"                                  \
    "  -u, --url URL          intake base URL (env AC_INTAKE_URL, default " CTL_DEFAULT_URL ")\n"  \
    "  -t, --token TOKEN      bearer token (env AC_TOKEN)\n"                                       \
    "  -h, --help             this help\n"

/* A string that grows; on OOM is_failed is set and appends stop. */
typedef struct strbuf {
    char *s;
    size_t len, cap;
    int is_failed;
} strbuf_t;

static void sb_add(strbuf_t *b, const char *s)
{
    size_t n = strlen(s);
    if (b->is_failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->s, cap);
        if (p == NULL) {
            b->is_failed = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n + 1);
    b->len += n;
}

/* Appends "?key=value" or "&key=value" with value percent-encoded; skips NULL values. */
static void sb_add_query(strbuf_t *b, const char *key, const char *value)
{
    if (value == NULL)
        return;
    char *esc = ctl_url_escape(value);
    if (esc == NULL) {
        b->is_failed = 1;
        return;
    }
    sb_add(b, strchr(b->s != NULL ? b->s : "", '?') != NULL ? "&" : "?");
    sb_add(b, key);
    sb_add(b, "=");
    sb_add(b, esc);
    free(esc);
}

static const char *str_or(const json_t *obj, const char *key, const char *def)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s != NULL && s[0] != '\0' ? s : def;
}

static int print_json(const json_t *j)
{
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (text == NULL) {
        ctl_err("out of memory");
        return CTL_EXIT_FAIL;
    }
    puts(text);
    free(text);
    return CTL_EXIT_OK;
}

/* Parses a decimal integer in [min, max]; -1 if it is not one. */
static long parse_long(const char *s, long min, long max)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return -1;
    return v;
}

/* Sends the request; on a non-2xx status or no response prints why and returns 1. */
static int call(const ctl_globals_t *g, const char *method, const char *path, const json_t *body,
                const char *idempotency_key, ctl_response_t *resp)
{
    if (ctl_http(g, method, path, body, idempotency_key, resp) != 0)
        return CTL_EXIT_FAIL;
    if (resp->status < 200 || resp->status > 299) {
        ctl_print_http_error(resp);
        ctl_response_clear(resp);
        return CTL_EXIT_FAIL;
    }
    if (!json_is_object(resp->body)) {
        ctl_err("HTTP %ld but the body is not a JSON object", resp->status);
        ctl_response_clear(resp);
        return CTL_EXIT_FAIL;
    }
    return CTL_EXIT_OK;
}

/* --- ticket create ---------------------------------------------------------------------- */

static const char CREATE_HELP[] =
    "Usage: aftercarectl ticket create --customer ID --category C --channel CH\n"
    "                                  --description TEXT [OPTIONS]\n"
    "\n"
    "Reports a problem (POST /v1/tickets) and prints \"<number> <priority> <status>\".\n"
    "\n"
    "      --customer ID          the customer's id (required)\n"
    "      --product ID           the product's id (required for fault_repair, maintenance)\n"
    "      --category C           fault_repair, consultation, maintenance, training, complaint\n"
    "      --channel CH           phone, web, email, partner, monitoring, api\n"
    "      --description TEXT     what is wrong, 1-4000 characters\n"
    "      --urgency U            normal (default), urgent, critical\n"
    "      --expedite             raise the priority one level\n"
    "      --occurred-at T        RFC 3339 time the problem occurred (default: now)\n"
    "      --idempotency-key K    retrying with the same key never creates a second "
    "ticket\n" COMMON_HELP;

int ctl_ticket_create(ctl_globals_t *g, int argc, char **argv)
{
    static const struct option options[] = {
        {"customer", required_argument, NULL, OPT_CUSTOMER},
        {"product", required_argument, NULL, OPT_PRODUCT},
        {"category", required_argument, NULL, OPT_CATEGORY},
        {"channel", required_argument, NULL, OPT_CHANNEL},
        {"description", required_argument, NULL, OPT_DESCRIPTION},
        {"urgency", required_argument, NULL, OPT_URGENCY},
        {"expedite", no_argument, NULL, OPT_EXPEDITE},
        {"occurred-at", required_argument, NULL, OPT_OCCURRED_AT},
        {"idempotency-key", required_argument, NULL, OPT_IDEMPOTENCY_KEY},
        COMMON_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "ticket create ";
    const char *customer = NULL, *product = NULL, *category = NULL, *channel = NULL;
    const char *description = NULL, *urgency = NULL, *occurred_at = NULL, *idem = NULL;
    int is_expedite = 0, is_json = 0, c;

    while ((c = getopt_long(argc, argv, ":u:t:h", options, NULL)) != -1) {
        switch (c) {
        case OPT_CUSTOMER:
            customer = optarg;
            break;
        case OPT_PRODUCT:
            product = optarg;
            break;
        case OPT_CATEGORY:
            category = optarg;
            break;
        case OPT_CHANNEL:
            channel = optarg;
            break;
        case OPT_DESCRIPTION:
            description = optarg;
            break;
        case OPT_URGENCY:
            urgency = optarg;
            break;
        case OPT_EXPEDITE:
            is_expedite = 1;
            break;
        case OPT_OCCURRED_AT:
            occurred_at = optarg;
            break;
        case OPT_IDEMPOTENCY_KEY:
            idem = optarg;
            break;
        case OPT_JSON:
            is_json = 1;
            break;
        case OPT_URL:
            g->url = optarg;
            break;
        case OPT_TOKEN:
            g->token = optarg;
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
    if (customer == NULL)
        return ctl_usage_error(cmd, "--customer is required");
    if (category == NULL)
        return ctl_usage_error(cmd, "--category is required");
    if (channel == NULL)
        return ctl_usage_error(cmd, "--channel is required");
    if (description == NULL)
        return ctl_usage_error(cmd, "--description is required");

    json_t *body = json_pack("{s:s, s:s, s:s, s:s}", "channel", channel, "customer_id", customer,
                             "category", category, "description", description);
    if (body == NULL) {
        ctl_err("option values must be valid UTF-8");
        return CTL_EXIT_USAGE;
    }
    int is_bad = 0;
    if (product != NULL)
        is_bad |= json_object_set_new(body, "product_id", json_string(product));
    if (urgency != NULL)
        is_bad |= json_object_set_new(body, "urgency", json_string(urgency));
    if (occurred_at != NULL)
        is_bad |= json_object_set_new(body, "occurred_at", json_string(occurred_at));
    if (is_expedite)
        is_bad |= json_object_set_new(body, "expedite", json_true());
    if (is_bad) {
        json_decref(body);
        ctl_err("option values must be valid UTF-8");
        return CTL_EXIT_USAGE;
    }

    ctl_response_t resp;
    int rc = call(g, "POST", "/v1/tickets", body, idem, &resp);
    json_decref(body);
    if (rc != CTL_EXIT_OK)
        return rc;
    if (resp.is_replayed)
        ctl_err("note: idempotency key already used; this is the ticket it created");
    if (is_json) {
        rc = print_json(resp.body);
    } else {
        printf("%s %s %s\n", str_or(resp.body, "number", "?"), str_or(resp.body, "priority", "?"),
               str_or(resp.body, "status", "?"));
    }
    ctl_response_clear(&resp);
    return rc;
}

/* --- ticket show ------------------------------------------------------------------------ */

static const char SHOW_HELP[] = "Usage: aftercarectl ticket show NUMBER [OPTIONS]\n"
                                "\n"
                                "Shows a ticket (GET /v1/tickets/NUMBER) and its history.\n"
                                "\n" COMMON_HELP;

static void print_ticket(const json_t *t)
{
    const json_t *cust = json_object_get(t, "customer");
    const json_t *prod = json_object_get(t, "product");
    const json_t *war = json_object_get(t, "warranty");
    const json_t *contact = json_object_get(t, "contact");

    printf("%s  %s  %s  (version %lld)\n", str_or(t, "number", "?"), str_or(t, "priority", "?"),
           str_or(t, "status", "?"), (long long)json_integer_value(json_object_get(t, "version")));
    printf("category:     %s\n", str_or(t, "category", "-"));
    printf("channel:      %s\n", str_or(t, "channel", "-"));
    printf("urgency:      %s%s\n", str_or(t, "urgency", "-"),
           json_is_true(json_object_get(t, "expedite")) ? " (expedite)" : "");
    printf("customer:     %s (%s, %s) %s\n", str_or(cust, "name", "-"), str_or(cust, "kind", "-"),
           str_or(cust, "tier", "-"), str_or(cust, "id", ""));
    if (json_is_object(prod))
        printf("product:      %s %s, purchased %s, %s %s\n", str_or(prod, "model", "-"),
               str_or(prod, "serial_number", "-"), str_or(prod, "purchase_date", "-"),
               str_or(prod, "region", "-"), str_or(prod, "id", ""));
    else
        printf("product:      -\n");
    if (json_is_object(war))
        printf("warranty:     %s (%s)\n",
               json_is_true(json_object_get(war, "in_warranty")) ? "in" : "out",
               str_or(war, "reason", "-"));
    if (json_is_object(contact))
        printf("contact:      %s, %s, %s\n", str_or(contact, "name", "-"),
               str_or(contact, "phone", "-"), str_or(contact, "email", "-"));
    printf("occurred_at:  %s\n", str_or(t, "occurred_at", "-"));
    printf("created_at:   %s\n", str_or(t, "created_at", "-"));
    printf("updated_at:   %s\n", str_or(t, "updated_at", "-"));
    printf("resolved_at:  %s\n", str_or(t, "resolved_at", "-"));
    printf("closed_at:    %s\n", str_or(t, "closed_at", "-"));
    printf("description:\n  %s\n", str_or(t, "description", ""));

    const json_t *atts = json_object_get(t, "attachments");
    if (json_array_size(atts) > 0) {
        size_t i;
        const json_t *a;
        printf("attachments:\n");
        json_array_foreach(atts, i, a)
        {
            printf("  %s  %s  %s\n", str_or(a, "name", "?"), str_or(a, "content_type", "-"),
                   str_or(a, "url", "-"));
        }
    }
    const json_t *hist = json_object_get(t, "history");
    if (json_array_size(hist) > 0) {
        size_t i;
        const json_t *h;
        printf("history:\n");
        json_array_foreach(hist, i, h)
        {
            const char *reason = str_or(h, "reason", NULL);
            printf("  %s  %s -> %s  by %s%s%s\n", str_or(h, "at", "?"), str_or(h, "from", "-"),
                   str_or(h, "to", "?"), str_or(h, "actor", "?"), reason ? ": " : "",
                   reason ? reason : "");
        }
    }
}

int ctl_ticket_show(ctl_globals_t *g, int argc, char **argv)
{
    static const struct option options[] = {COMMON_OPTIONS, {NULL, 0, NULL, 0}};
    const char *cmd = "ticket show ";
    int is_json = 0, c;

    while ((c = getopt_long(argc, argv, ":u:t:h", options, NULL)) != -1) {
        switch (c) {
        case OPT_JSON:
            is_json = 1;
            break;
        case OPT_URL:
            g->url = optarg;
            break;
        case OPT_TOKEN:
            g->token = optarg;
            break;
        case OPT_HELP:
            fputs(SHOW_HELP, stdout);
            return CTL_EXIT_OK;
        default:
            return ctl_bad_option(cmd, c, argv);
        }
    }
    if (optind >= argc)
        return ctl_usage_error(cmd, "a ticket NUMBER is required");
    if (optind + 1 < argc)
        return ctl_usage_error(cmd, "unexpected argument '%s'", argv[optind + 1]);

    strbuf_t path = {0};
    char *number = ctl_url_escape(argv[optind]);
    sb_add(&path, "/v1/tickets/");
    sb_add(&path, number != NULL ? number : "");
    free(number);
    if (number == NULL || path.is_failed) {
        free(path.s);
        ctl_err("out of memory");
        return CTL_EXIT_FAIL;
    }
    ctl_response_t resp;
    int rc = call(g, "GET", path.s, NULL, NULL, &resp);
    free(path.s);
    if (rc != CTL_EXIT_OK)
        return rc;
    if (is_json)
        rc = print_json(resp.body);
    else
        print_ticket(resp.body);
    ctl_response_clear(&resp);
    return rc;
}

/* --- ticket list ------------------------------------------------------------------------ */

static const char LIST_HELP[] =
    "Usage: aftercarectl ticket list [OPTIONS]\n"
    "\n"
    "Lists tickets, newest first (GET /v1/tickets).\n"
    "\n"
    "      --status S             new, needs_info, diagnosing, ..., closed, cancelled\n"
    "      --priority P           P1..P4\n"
    "      --category C           fault_repair, consultation, maintenance, training, complaint\n"
    "      --customer ID          one customer's tickets\n"
    "      --created-from T       created at or after T (RFC 3339)\n"
    "      --created-to T         created before T (RFC 3339)\n"
    "      --limit N              tickets per page, 1-200 (server default 50)\n"
    "      --cursor C             start at this page (next_cursor of an earlier page)\n"
    "      --all                  follow next_cursor to the last page\n" COMMON_HELP;

/* Copies at most max_chars characters of s into out (UTF-8 aware), '~' marks a cut. */
static void clip(const char *s, size_t max_chars, char *out, size_t out_len)
{
    size_t o = 0, chars = 0;
    for (size_t i = 0; s[i] != '\0'; i++) {
        int is_lead = ((unsigned char)s[i] & 0xC0) != 0x80;
        if (is_lead && ++chars > max_chars) {
            if (o > 0 && ((unsigned char)s[i - 1] & 0x80) == 0)
                out[o - 1] = '~';
            break;
        }
        if (o + 1 >= out_len)
            break;
        out[o++] = s[i];
    }
    out[o] = '\0';
}

/* Characters (not bytes) in a UTF-8 string. */
static size_t utf8_width(const char *s)
{
    size_t n = 0;
    for (; *s != '\0'; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

static void print_row(const json_t *t)
{
    const json_t *cust = json_object_get(t, "customer");
    char customer[128];
    clip(str_or(cust, "name", str_or(cust, "id", str_or(t, "customer_id", "-"))), 28, customer,
         sizeof customer);
    size_t pad = 28 - utf8_width(customer);
    printf("%-20s %-4s %-16s %-13s %s%*s %s\n", str_or(t, "number", "?"),
           str_or(t, "priority", "-"), str_or(t, "status", "-"), str_or(t, "category", "-"),
           customer, (int)pad, "", str_or(t, "created_at", "-"));
}

int ctl_ticket_list(ctl_globals_t *g, int argc, char **argv)
{
    static const struct option options[] = {
        {"status", required_argument, NULL, OPT_STATUS},
        {"priority", required_argument, NULL, OPT_PRIORITY},
        {"category", required_argument, NULL, OPT_CATEGORY},
        {"customer", required_argument, NULL, OPT_CUSTOMER},
        {"created-from", required_argument, NULL, OPT_CREATED_FROM},
        {"created-to", required_argument, NULL, OPT_CREATED_TO},
        {"limit", required_argument, NULL, OPT_LIMIT},
        {"cursor", required_argument, NULL, OPT_CURSOR},
        {"all", no_argument, NULL, OPT_ALL},
        COMMON_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "ticket list ";
    const char *status = NULL, *priority = NULL, *category = NULL, *customer = NULL;
    const char *created_from = NULL, *created_to = NULL, *limit = NULL, *first_cursor = NULL;
    int is_all = 0, is_json = 0, c;

    while ((c = getopt_long(argc, argv, ":u:t:h", options, NULL)) != -1) {
        switch (c) {
        case OPT_STATUS:
            status = optarg;
            break;
        case OPT_PRIORITY:
            priority = optarg;
            break;
        case OPT_CATEGORY:
            category = optarg;
            break;
        case OPT_CUSTOMER:
            customer = optarg;
            break;
        case OPT_CREATED_FROM:
            created_from = optarg;
            break;
        case OPT_CREATED_TO:
            created_to = optarg;
            break;
        case OPT_LIMIT:
            limit = optarg;
            break;
        case OPT_CURSOR:
            first_cursor = optarg;
            break;
        case OPT_ALL:
            is_all = 1;
            break;
        case OPT_JSON:
            is_json = 1;
            break;
        case OPT_URL:
            g->url = optarg;
            break;
        case OPT_TOKEN:
            g->token = optarg;
            break;
        case OPT_HELP:
            fputs(LIST_HELP, stdout);
            return CTL_EXIT_OK;
        default:
            return ctl_bad_option(cmd, c, argv);
        }
    }
    if (optind < argc)
        return ctl_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (limit != NULL && parse_long(limit, 1, 200) < 0)
        return ctl_usage_error(cmd, "--limit must be a number from 1 to 200, not '%s'", limit);

    json_t *all_items = is_json ? json_array() : NULL;
    char *cursor = first_cursor != NULL ? strdup(first_cursor) : NULL;
    int rc = CTL_EXIT_OK, is_header_printed = 0;
    size_t rows = 0;
    if ((is_json && all_items == NULL) || (first_cursor != NULL && cursor == NULL)) {
        ctl_err("out of memory");
        rc = CTL_EXIT_FAIL;
        goto out;
    }
    for (;;) {
        strbuf_t path = {0};
        sb_add(&path, "/v1/tickets");
        sb_add_query(&path, "status", status);
        sb_add_query(&path, "priority", priority);
        sb_add_query(&path, "category", category);
        sb_add_query(&path, "customer_id", customer);
        sb_add_query(&path, "created_from", created_from);
        sb_add_query(&path, "created_to", created_to);
        sb_add_query(&path, "limit", limit);
        sb_add_query(&path, "cursor", cursor);
        if (path.is_failed) {
            free(path.s);
            ctl_err("out of memory");
            rc = CTL_EXIT_FAIL;
            goto out;
        }
        ctl_response_t resp;
        rc = call(g, "GET", path.s, NULL, NULL, &resp);
        free(path.s);
        if (rc != CTL_EXIT_OK)
            goto out;

        const json_t *items = json_object_get(resp.body, "items");
        size_t i;
        json_t *t;
        json_array_foreach(items, i, t)
        {
            if (is_json) {
                json_array_append(all_items, t);
                continue;
            }
            if (!is_header_printed) {
                printf("%-20s %-4s %-16s %-13s %-28s %s\n", "NUMBER", "PRIO", "STATUS", "CATEGORY",
                       "CUSTOMER", "CREATED_AT");
                is_header_printed = 1;
            }
            print_row(t);
            rows++;
        }
        const char *next = json_string_value(json_object_get(resp.body, "next_cursor"));
        int is_same = next != NULL && cursor != NULL && strcmp(next, cursor) == 0;
        free(cursor);
        cursor = next != NULL && next[0] != '\0' ? strdup(next) : NULL;
        ctl_response_clear(&resp);
        if (cursor == NULL || is_same)
            break;
        if (!is_all) {
            if (!is_json)
                fprintf(stderr, "(more: --all, or --cursor '%s')\n", cursor);
            break;
        }
        fflush(stdout);
    }
    if (is_json) {
        json_t *out =
            json_pack("{s:O, s:s?}", "items", all_items, "next_cursor", is_all ? NULL : cursor);
        rc = out != NULL ? print_json(out) : CTL_EXIT_FAIL;
        json_decref(out);
    } else if (rows == 0) {
        fprintf(stderr, "(no tickets)\n");
    }
out:
    free(cursor);
    json_decref(all_items);
    return rc;
}
