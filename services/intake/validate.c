/* validate.c — see validate.h. Pure functions: no I/O, no clock, no database. */
#include "validate.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ac_time.h"
#include "ac_uuid.h"

const char *const intake_channel_names[INTAKE_CH__COUNT] = {
    NULL, "phone", "web", "email", "partner", "monitoring", "api",
};
const char *const intake_category_names[INTAKE_CAT__COUNT] = {
    NULL, "fault_repair", "consultation", "maintenance", "training", "complaint",
};
const char *const intake_urgency_names[INTAKE_URG__COUNT] = {NULL, "normal", "urgent", "critical"};
const char *const intake_priority_names[INTAKE_P__COUNT] = {NULL, "P1", "P2", "P3", "P4"};
const char *const intake_tier_names[INTAKE_TIER__COUNT] = {NULL, "standard", "vip"};
const char *const intake_status_names[INTAKE_ST__COUNT] = {
    NULL,
    "new",
    "needs_info",
    "diagnosing",
    "planned",
    "in_progress",
    "waiting_customer",
    "waiting_parts",
    "waiting_external",
    "resolved",
    "closed",
    "reopened",
    "cancelled",
};
static const char *const customer_kind_names[] = {NULL, "person", "company"};

#define MAX_FUTURE_US (INT64_C(5) * 60 * 1000000) /* occurred_at may run this far ahead */
#define US_PER_DAY    (INT64_C(86400) * 1000000)

int intake_enum_parse(const char *const *names, size_t n, const char *s)
{
    if (!s)
        return 0;
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i], s) == 0)
            return (int)i;
    return 0;
}

const char *intake_enum_name(const char *const *names, size_t n, int v)
{
    return v > 0 && (size_t)v < n ? names[v] : NULL;
}

/* --- field forms ------------------------------------------------------------------- */

size_t intake_utf8_len(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

int intake_phone_is_valid(const char *s)
{
    size_t len = strlen(s);
    int digits = 0;
    if (len < 7 || len > 20)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9')
            digits++;
        else if (c == '+' && i == 0)
            continue;
        else if (c != ' ' && c != '-' && c != '(' && c != ')')
            return 0;
    }
    return digits >= 7;
}

int intake_email_is_valid(const char *s)
{
    size_t len = strlen(s);
    const char *at = strchr(s, '@');
    if (len == 0 || len > 254 || !at || at == s || strchr(at + 1, '@'))
        return 0;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f)
            return 0;
    const char *domain = at + 1;
    const char *dot = strrchr(domain, '.');
    if (!dot || domain[0] == '.' || dot[1] == '\0' || strstr(domain, ".."))
        return 0;
    return 1;
}

int intake_idem_key_is_valid(const char *s)
{
    size_t len = strlen(s);
    if (len < 1 || len > 200)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] < 0x20 || s[i] > 0x7e)
            return 0;
    return 1;
}

int intake_cursor_parse(const char *s, int64_t *seq_out)
{
    int64_t v = 0;
    size_t len = strlen(s);
    if (len < 1 || len > 18)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v <= 0)
        return -1;
    *seq_out = v;
    return 0;
}

/* --- business rules ---------------------------------------------------------------- */

int intake_priority(int urgency, int category, int is_vip, int is_expedite)
{
    int p;
    if (urgency == INTAKE_URG_CRITICAL)
        p = INTAKE_P1;
    else if (urgency == INTAKE_URG_URGENT)
        p = INTAKE_P2;
    else if (category == INTAKE_CAT_CONSULTATION || category == INTAKE_CAT_TRAINING)
        p = INTAKE_P4;
    else
        p = INTAKE_P3;
    if (is_vip)
        p--;
    if (is_expedite)
        p--;
    return p < INTAKE_P1 ? INTAKE_P1 : p;
}

#define BIT(s) (1u << (s))
static const unsigned transitions[INTAKE_ST__COUNT] = {
    [INTAKE_ST_NEW] = BIT(INTAKE_ST_NEEDS_INFO) | BIT(INTAKE_ST_DIAGNOSING) |
                      BIT(INTAKE_ST_RESOLVED) | BIT(INTAKE_ST_CANCELLED),
    [INTAKE_ST_NEEDS_INFO] = BIT(INTAKE_ST_NEW) | BIT(INTAKE_ST_CANCELLED),
    [INTAKE_ST_DIAGNOSING] = BIT(INTAKE_ST_PLANNED) | BIT(INTAKE_ST_NEEDS_INFO) |
                             BIT(INTAKE_ST_WAITING_CUSTOMER) | BIT(INTAKE_ST_RESOLVED) |
                             BIT(INTAKE_ST_CANCELLED),
    [INTAKE_ST_PLANNED] = BIT(INTAKE_ST_IN_PROGRESS) | BIT(INTAKE_ST_DIAGNOSING) |
                          BIT(INTAKE_ST_WAITING_CUSTOMER) | BIT(INTAKE_ST_CANCELLED),
    [INTAKE_ST_IN_PROGRESS] = BIT(INTAKE_ST_WAITING_PARTS) | BIT(INTAKE_ST_WAITING_CUSTOMER) |
                              BIT(INTAKE_ST_WAITING_EXTERNAL) | BIT(INTAKE_ST_RESOLVED),
    [INTAKE_ST_WAITING_CUSTOMER] = BIT(INTAKE_ST_IN_PROGRESS),
    [INTAKE_ST_WAITING_PARTS] = BIT(INTAKE_ST_IN_PROGRESS),
    [INTAKE_ST_WAITING_EXTERNAL] = BIT(INTAKE_ST_IN_PROGRESS),
    [INTAKE_ST_RESOLVED] = BIT(INTAKE_ST_CLOSED) | BIT(INTAKE_ST_REOPENED),
    [INTAKE_ST_CLOSED] = BIT(INTAKE_ST_REOPENED),
    [INTAKE_ST_REOPENED] = BIT(INTAKE_ST_DIAGNOSING) | BIT(INTAKE_ST_IN_PROGRESS),
    [INTAKE_ST_CANCELLED] = 0,
};
#undef BIT

int intake_transition_allowed(int from, int to)
{
    if (from <= 0 || from >= INTAKE_ST__COUNT || to <= 0 || to >= INTAKE_ST__COUNT)
        return 0;
    return (transitions[from] >> to) & 1u;
}

int intake_category_needs_product(int category)
{
    return category == INTAKE_CAT_FAULT_REPAIR || category == INTAKE_CAT_MAINTENANCE;
}

/* --- error and field helpers ------------------------------------------------------- */

static int verr(intake_verr_t *err, int status, const char *code, const char *field,
                const char *fmt, ...) AC_PRINTF(5, 6);
static int verr(intake_verr_t *err, int status, const char *code, const char *field,
                const char *fmt, ...)
{
    va_list ap;
    err->status = status;
    err->code = code;
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return AC_ERR_INVALID;
}

static void join_path(char *out, size_t len, const char *prefix, const char *key)
{
    snprintf(out, len, "%s%s", prefix, key);
}

static void join_names(char *out, size_t len, const char *const *names, size_t n)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 1; i < n && used < len; i++) {
        int w = snprintf(out + used, len - used, "%s%s", i > 1 ? ", " : "", names[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

/* Every key of obj must be in allowed (NULL-terminated). */
static int check_known(json_t *obj, const char *const *allowed, const char *prefix,
                       intake_verr_t *err)
{
    const char *key;
    json_t *value;
    json_object_foreach(obj, key, value)
    {
        size_t i;
        for (i = 0; allowed[i]; i++)
            if (strcmp(allowed[i], key) == 0)
                break;
        if (!allowed[i]) {
            char path[128];
            join_path(path, sizeof path, prefix, key);
            return verr(err, 422, "unknown_field", path, "unknown field %s", path);
        }
    }
    return 0;
}

/* The getters return 1 when the field is present, 0 when absent (or JSON null, which
 * counts as absent), AC_ERR_INVALID (err filled) when it is malformed. */
static int opt_string(json_t *obj, const char *prefix, const char *key, size_t min, size_t max,
                      const char **out, intake_verr_t *err)
{
    json_t *v = json_object_get(obj, key);
    char path[128];
    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    join_path(path, sizeof path, prefix, key);
    if (!json_is_string(v))
        return verr(err, 422, "invalid_field", path, "%s must be a string", path);
    const char *s = json_string_value(v);
    size_t n = intake_utf8_len(s);
    if (n < min || n > max) {
        if (min == 0)
            return verr(err, 422, "invalid_field", path, "%s must be at most %zu characters", path,
                        max);
        return verr(err, 422, "invalid_field", path, "%s must be %zu to %zu characters", path, min,
                    max);
    }
    *out = s;
    return 1;
}

static int missing(intake_verr_t *err, const char *prefix, const char *key)
{
    char path[128];
    join_path(path, sizeof path, prefix, key);
    return verr(err, 422, "missing_field", path, "%s is required", path);
}

static int req_string(json_t *obj, const char *prefix, const char *key, size_t min, size_t max,
                      const char **out, intake_verr_t *err)
{
    int rc = opt_string(obj, prefix, key, min, max, out, err);
    return rc == 0 ? missing(err, prefix, key) : rc;
}

static int opt_enum(json_t *obj, const char *prefix, const char *key, const char *const *names,
                    size_t n, int *out, intake_verr_t *err)
{
    const char *s;
    int rc = opt_string(obj, prefix, key, 0, 100000, &s, err);
    if (rc <= 0)
        return rc;
    *out = intake_enum_parse(names, n, s);
    if (!*out) {
        char path[128], list[256];
        join_path(path, sizeof path, prefix, key);
        join_names(list, sizeof list, names, n);
        return verr(err, 422, "invalid_field", path, "%s must be one of %s", path, list);
    }
    return 1;
}

static int req_enum(json_t *obj, const char *prefix, const char *key, const char *const *names,
                    size_t n, int *out, intake_verr_t *err)
{
    int rc = opt_enum(obj, prefix, key, names, n, out, err);
    return rc == 0 ? missing(err, prefix, key) : rc;
}

static int opt_phone(json_t *obj, const char *prefix, const char *key, const char **out,
                     intake_verr_t *err)
{
    int rc = opt_string(obj, prefix, key, 0, 100000, out, err);
    if (rc == 1 && !intake_phone_is_valid(*out)) {
        char path[128];
        join_path(path, sizeof path, prefix, key);
        return verr(err, 422, "invalid_field", path,
                    "%s must be a phone number: optional +, then 7 to 20 digits, spaces, "
                    "'-', '(' or ')', with at least 7 digits",
                    path);
    }
    return rc;
}

static int opt_email(json_t *obj, const char *prefix, const char *key, const char **out,
                     intake_verr_t *err)
{
    int rc = opt_string(obj, prefix, key, 0, 100000, out, err);
    if (rc == 1 && !intake_email_is_valid(*out)) {
        char path[128];
        join_path(path, sizeof path, prefix, key);
        return verr(err, 422, "invalid_field", path,
                    "%s must be an e-mail address like name@example.com (at most 254 "
                    "characters)",
                    path);
    }
    return rc;
}

static int opt_bool(json_t *obj, const char *key, int *out, intake_verr_t *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_boolean(v))
        return verr(err, 422, "invalid_field", key, "%s must be true or false", key);
    *out = json_is_true(v);
    return 1;
}

static int opt_int(json_t *obj, const char *key, json_int_t min, json_int_t max, json_int_t *out,
                   intake_verr_t *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max)
        return verr(err, 422, "invalid_field", key, "%s must be an integer from %lld to %lld", key,
                    (long long)min, (long long)max);
    *out = json_integer_value(v);
    return 1;
}

static int opt_uuid(json_t *obj, const char *key, const char **out, intake_verr_t *err)
{
    int rc = opt_string(obj, "", key, 0, 100000, out, err);
    if (rc == 1 && !ac_uuid_is_valid(*out))
        return verr(err, 422, "invalid_field", key, "%s must be a UUID", key);
    return rc;
}

static int req_uuid(json_t *obj, const char *key, const char **out, intake_verr_t *err)
{
    int rc = opt_uuid(obj, key, out, err);
    return rc == 0 ? missing(err, "", key) : rc;
}

static int expected_version(json_t *obj, int64_t *out, intake_verr_t *err)
{
    json_int_t v = 0;
    int rc = opt_int(obj, "expected_version", 1, INT64_MAX, &v, err);
    *out = rc == 1 ? (int64_t)v : 0;
    return rc;
}

static int set_str(json_t *obj, const char *key, const char *s)
{
    return json_object_set_new(obj, key, s ? json_string(s) : json_null());
}

static int nomem(intake_verr_t *err)
{
    verr(err, 503, "unavailable", NULL, "out of memory");
    return AC_ERR_NOMEM;
}

/* contact / contacts[i]: {name, phone, email[, role]}; normalised to the keys present. */
static int contact_object(json_t *v, const char *path, int is_customer_contact, json_t **out,
                          intake_verr_t *err)
{
    static const char *const ticket_fields[] = {"name", "phone", "email", NULL};
    static const char *const customer_fields[] = {"name", "phone", "email", "role", NULL};
    const char *name, *phone, *email, *role = NULL;
    char prefix[128];
    int rc;

    *out = NULL;
    if (!json_is_object(v))
        return verr(err, 422, "invalid_field", path, "%s must be an object", path);
    snprintf(prefix, sizeof prefix, "%s.", path);
    if ((rc = check_known(v, is_customer_contact ? customer_fields : ticket_fields, prefix, err)) <
        0)
        return rc;
    rc = is_customer_contact ? req_string(v, prefix, "name", 1, 200, &name, err)
                             : opt_string(v, prefix, "name", 1, 200, &name, err);
    if (rc < 0)
        return rc;
    if ((rc = opt_phone(v, prefix, "phone", &phone, err)) < 0)
        return rc;
    if ((rc = opt_email(v, prefix, "email", &email, err)) < 0)
        return rc;
    if (is_customer_contact && (rc = opt_string(v, prefix, "role", 0, 100, &role, err)) < 0)
        return rc;

    json_t *o = json_object();
    if (!o)
        return nomem(err);
    if ((name && set_str(o, "name", name)) || (phone && set_str(o, "phone", phone)) ||
        (email && set_str(o, "email", email)) || (role && set_str(o, "role", role))) {
        json_decref(o);
        return nomem(err);
    }
    *out = o;
    return 1;
}

/* --- customers --------------------------------------------------------------------- */

int intake_validate_customer(json_t *body, intake_customer_in_t *out, intake_verr_t *err)
{
    static const char *const fields[] = {"kind",  "name",     "tier", "phone",
                                         "email", "contacts", NULL};
    int rc, kind = 0, tier = INTAKE_TIER_STANDARD;

    memset(out, 0, sizeof *out);
    if ((rc = check_known(body, fields, "", err)) < 0)
        return rc;
    if ((rc = req_enum(body, "", "kind", customer_kind_names, AC_ARRAY_LEN(customer_kind_names),
                       &kind, err)) < 0)
        return rc;
    out->kind = customer_kind_names[kind];
    if ((rc = req_string(body, "", "name", 1, 200, &out->name, err)) < 0)
        return rc;
    if ((rc = opt_enum(body, "", "tier", intake_tier_names, AC_ARRAY_LEN(intake_tier_names), &tier,
                       err)) < 0)
        return rc;
    out->tier = intake_tier_names[tier];
    if ((rc = opt_phone(body, "", "phone", &out->phone, err)) < 0)
        return rc;
    if ((rc = opt_email(body, "", "email", &out->email, err)) < 0)
        return rc;
    if (!out->phone && !out->email)
        return verr(err, 422, "missing_field", "phone", "phone or email is required");

    json_t *contacts = json_object_get(body, "contacts");
    out->contacts = json_array();
    if (!out->contacts)
        return nomem(err);
    if (contacts && !json_is_null(contacts)) {
        size_t i;
        json_t *c;
        if (!json_is_array(contacts)) {
            rc = verr(err, 422, "invalid_field", "contacts", "contacts must be an array");
            goto fail;
        }
        if (json_array_size(contacts) > 20) {
            rc =
                verr(err, 422, "invalid_field", "contacts", "contacts may have at most 20 entries");
            goto fail;
        }
        json_array_foreach(contacts, i, c)
        {
            char path[64];
            json_t *norm;
            snprintf(path, sizeof path, "contacts[%zu]", i);
            if ((rc = contact_object(c, path, 1, &norm, err)) < 0)
                goto fail;
            if (json_array_append_new(out->contacts, norm) < 0) {
                rc = nomem(err);
                goto fail;
            }
        }
    }
    return 0;
fail:
    intake_customer_in_clear(out);
    return rc;
}

void intake_customer_in_clear(intake_customer_in_t *in)
{
    json_decref(in->contacts);
    in->contacts = NULL;
}

/* --- products ---------------------------------------------------------------------- */

int intake_validate_product(json_t *body, int32_t today_days, intake_product_in_t *out,
                            intake_verr_t *err)
{
    static const char *const fields[] = {
        "customer_id", "model", "serial_number", "purchase_date", "install_site", "region", NULL};
    int32_t days;
    int rc;

    memset(out, 0, sizeof *out);
    if ((rc = check_known(body, fields, "", err)) < 0)
        return rc;
    if ((rc = req_uuid(body, "customer_id", &out->customer_id, err)) < 0)
        return rc;
    if ((rc = req_string(body, "", "model", 1, 100, &out->model, err)) < 0)
        return rc;
    if ((rc = req_string(body, "", "serial_number", 1, 100, &out->serial_number, err)) < 0)
        return rc;
    if ((rc = req_string(body, "", "purchase_date", 0, 100, &out->purchase_date, err)) < 0)
        return rc;
    if (ac_date_parse(out->purchase_date, &days) < 0)
        return verr(err, 422, "invalid_field", "purchase_date",
                    "purchase_date must be a date YYYY-MM-DD");
    if (days > today_days)
        return verr(err, 422, "invalid_field", "purchase_date",
                    "purchase_date must not be in the future");
    if ((rc = opt_string(body, "", "install_site", 0, 200, &out->install_site, err)) < 0)
        return rc;
    if ((rc = req_string(body, "", "region", 1, 50, &out->region, err)) < 0)
        return rc;
    return 0;
}

/* --- warranty policies ------------------------------------------------------------- */

int intake_validate_policy(const char *model, json_t *body, intake_policy_in_t *out,
                           intake_verr_t *err)
{
    static const char *const fields[] = {"months", "description", NULL};
    json_int_t months = 0;
    size_t n = intake_utf8_len(model);
    int rc;

    memset(out, 0, sizeof *out);
    if (n < 1 || n > 100)
        return verr(err, 422, "invalid_field", "model", "model must be 1 to 100 characters");
    out->model = model;
    if ((rc = check_known(body, fields, "", err)) < 0)
        return rc;
    if ((rc = opt_int(body, "months", 1, 240, &months, err)) < 0)
        return rc;
    if (rc == 0)
        return missing(err, "", "months");
    out->months = (long)months;
    if ((rc = opt_string(body, "", "description", 0, 1000, &out->description, err)) < 0)
        return rc;
    if (!out->description)
        out->description = "";
    return 0;
}

/* --- tickets ----------------------------------------------------------------------- */

static int attachments_array(json_t *v, json_t **out, intake_verr_t *err)
{
    static const char *const fields[] = {"name", "url", "content_type", NULL};
    size_t i;
    json_t *a;

    *out = json_array();
    if (!*out)
        return nomem(err);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v))
        return verr(err, 422, "invalid_field", "attachments", "attachments must be an array");
    if (json_array_size(v) > 20)
        return verr(err, 422, "invalid_field", "attachments",
                    "attachments may have at most 20 entries");
    json_array_foreach(v, i, a)
    {
        char prefix[80], path[64];
        const char *name, *url, *content_type;
        int rc;
        snprintf(path, sizeof path, "attachments[%zu]", i);
        snprintf(prefix, sizeof prefix, "%s.", path);
        if (!json_is_object(a))
            return verr(err, 422, "invalid_field", path, "%s must be an object", path);
        if ((rc = check_known(a, fields, prefix, err)) < 0)
            return rc;
        if ((rc = req_string(a, prefix, "name", 1, 255, &name, err)) < 0)
            return rc;
        if ((rc = req_string(a, prefix, "url", 1, 2000, &url, err)) < 0)
            return rc;
        if ((rc = opt_string(a, prefix, "content_type", 0, 100, &content_type, err)) < 0)
            return rc;
        json_t *o = json_object();
        if (!o || set_str(o, "name", name) || set_str(o, "url", url) ||
            set_str(o, "content_type", content_type) || json_array_append_new(*out, o) < 0)
            return nomem(err);
    }
    return 0;
}

int intake_validate_ticket(json_t *body, int64_t now_us, intake_ticket_in_t *out,
                           intake_verr_t *err)
{
    static const char *const fields[] = {
        "channel", "customer_id", "product_id", "category",    "description", "occurred_at",
        "urgency", "expedite",    "contact",    "attachments", NULL,
    };
    const char *occurred_at;
    json_t *contact;
    int rc;

    memset(out, 0, sizeof *out);
    out->urgency = INTAKE_URG_NORMAL;
    if ((rc = check_known(body, fields, "", err)) < 0)
        return rc;
    if ((rc = req_enum(body, "", "channel", intake_channel_names,
                       AC_ARRAY_LEN(intake_channel_names), &out->channel, err)) < 0)
        return rc;
    if ((rc = req_uuid(body, "customer_id", &out->customer_id, err)) < 0)
        return rc;
    if ((rc = opt_uuid(body, "product_id", &out->product_id, err)) < 0)
        return rc;
    if ((rc = req_enum(body, "", "category", intake_category_names,
                       AC_ARRAY_LEN(intake_category_names), &out->category, err)) < 0)
        return rc;
    if (!out->product_id && intake_category_needs_product(out->category))
        return verr(err, 422, "missing_field", "product_id", "product_id is required for %s",
                    intake_category_names[out->category]);
    if ((rc = req_string(body, "", "description", 1, 4000, &out->description, err)) < 0)
        return rc;
    if ((rc = opt_string(body, "", "occurred_at", 0, 100, &occurred_at, err)) < 0)
        return rc;
    if (rc == 1) {
        if (ac_time_parse_rfc3339(occurred_at, &out->occurred_at_us) < 0)
            return verr(err, 422, "invalid_field", "occurred_at",
                        "occurred_at must be an RFC 3339 time such as 2026-11-22T10:00:00Z");
        if (out->occurred_at_us > now_us + MAX_FUTURE_US)
            return verr(err, 422, "invalid_field", "occurred_at",
                        "occurred_at must not be more than 5 minutes in the future");
        out->has_occurred_at = 1;
    }
    if ((rc = opt_enum(body, "", "urgency", intake_urgency_names,
                       AC_ARRAY_LEN(intake_urgency_names), &out->urgency, err)) < 0)
        return rc;
    if ((rc = opt_bool(body, "expedite", &out->is_expedite, err)) < 0)
        return rc;
    contact = json_object_get(body, "contact");
    if (contact && !json_is_null(contact) &&
        (rc = contact_object(contact, "contact", 0, &out->contact, err)) < 0)
        goto fail;
    if ((rc = attachments_array(json_object_get(body, "attachments"), &out->attachments, err)) < 0)
        goto fail;
    return 0;
fail:
    intake_ticket_in_clear(out);
    return rc;
}

void intake_ticket_in_clear(intake_ticket_in_t *in)
{
    json_decref(in->contact);
    json_decref(in->attachments);
    in->contact = in->attachments = NULL;
}

int intake_validate_patch(json_t *body, intake_patch_in_t *out, intake_verr_t *err)
{
    static const char *const fields[] = {"description", "category",         "urgency", "expedite",
                                         "contact",     "expected_version", NULL};
    const char *key;
    json_t *value;
    int rc;

    memset(out, 0, sizeof *out);
    json_object_foreach(body, key, value)
    {
        size_t i;
        for (i = 0; fields[i]; i++)
            if (strcmp(fields[i], key) == 0)
                break;
        if (fields[i])
            continue;
        if (strcmp(key, "status") == 0)
            return verr(err, 422, "unknown_field", "status",
                        "status cannot be patched; use POST /v1/tickets/{number}/transitions");
        return verr(err, 422, "unknown_field", key, "%s cannot be changed by PATCH", key);
    }
    if ((rc = opt_string(body, "", "description", 1, 4000, &out->description, err)) < 0)
        return rc;
    if (rc == 1)
        out->present |= INTAKE_PATCH_DESCRIPTION;
    if ((rc = opt_enum(body, "", "category", intake_category_names,
                       AC_ARRAY_LEN(intake_category_names), &out->category, err)) < 0)
        return rc;
    if (rc == 1)
        out->present |= INTAKE_PATCH_CATEGORY;
    if ((rc = opt_enum(body, "", "urgency", intake_urgency_names,
                       AC_ARRAY_LEN(intake_urgency_names), &out->urgency, err)) < 0)
        return rc;
    if (rc == 1)
        out->present |= INTAKE_PATCH_URGENCY;
    if ((rc = opt_bool(body, "expedite", &out->is_expedite, err)) < 0)
        return rc;
    if (rc == 1)
        out->present |= INTAKE_PATCH_EXPEDITE;
    if ((rc = expected_version(body, &out->expected_version, err)) < 0)
        return rc;
    value = json_object_get(body, "contact");
    if (value && !json_is_null(value)) {
        if ((rc = contact_object(value, "contact", 0, &out->contact, err)) < 0)
            return rc;
        out->present |= INTAKE_PATCH_CONTACT;
    }
    return 0;
}

void intake_patch_in_clear(intake_patch_in_t *in)
{
    json_decref(in->contact);
    in->contact = NULL;
}

int intake_validate_transition(json_t *body, intake_transition_in_t *out, intake_verr_t *err)
{
    static const char *const fields[] = {"to", "reason", "expected_version", NULL};
    int rc;

    memset(out, 0, sizeof *out);
    if ((rc = check_known(body, fields, "", err)) < 0)
        return rc;
    if ((rc = req_enum(body, "", "to", intake_status_names, AC_ARRAY_LEN(intake_status_names),
                       &out->to, err)) < 0)
        return rc;
    if ((rc = opt_string(body, "", "reason", 0, 1000, &out->reason, err)) < 0)
        return rc;
    if (!out->reason)
        out->reason = "";
    if (!out->reason[0] && (out->to == INTAKE_ST_CANCELLED || out->to == INTAKE_ST_REOPENED))
        return verr(err, 422, "missing_field", "reason", "reason is required for %s",
                    intake_status_names[out->to]);
    if ((rc = expected_version(body, &out->expected_version, err)) < 0)
        return rc;
    return 0;
}

/* --- query strings ----------------------------------------------------------------- */

/* A parameter given as "name=" counts as absent. */
static const char *query_get(intake_query_fn query, void *arg, const char *name)
{
    const char *s = query(arg, name);
    return s && s[0] ? s : NULL;
}

static int page_parse(intake_query_fn query, void *arg, intake_page_in_t *out, intake_verr_t *err)
{
    const char *s;
    out->limit = 50;
    out->cursor = 0;
    if ((s = query_get(query, arg, "limit"))) {
        long v = 0;
        size_t len = strlen(s);
        int ok = len >= 1 && len <= 3;
        for (size_t i = 0; ok && i < len; i++) {
            ok = s[i] >= '0' && s[i] <= '9';
            v = v * 10 + (s[i] - '0');
        }
        if (!ok || v < 1 || v > 200)
            return verr(err, 422, "invalid_field", "limit",
                        "limit must be an integer from 1 to 200");
        out->limit = v;
    }
    if ((s = query_get(query, arg, "cursor")) && intake_cursor_parse(s, &out->cursor) < 0)
        return verr(err, 422, "invalid_field", "cursor",
                    "cursor is not valid; pass next_cursor from the previous page");
    return 0;
}

static int query_enum(intake_query_fn query, void *arg, const char *name, const char *const *names,
                      size_t n, const char **out, intake_verr_t *err)
{
    const char *s = query_get(query, arg, name);
    *out = NULL;
    if (!s)
        return 0;
    int v = intake_enum_parse(names, n, s);
    if (!v) {
        char list[256];
        join_names(list, sizeof list, names, n);
        return verr(err, 422, "invalid_field", name, "%s must be one of %s", name, list);
    }
    *out = names[v];
    return 1;
}

static int query_uuid(intake_query_fn query, void *arg, const char *name, const char **out,
                      intake_verr_t *err)
{
    *out = query_get(query, arg, name);
    if (*out && !ac_uuid_is_valid(*out))
        return verr(err, 422, "invalid_field", name, "%s must be a UUID", name);
    return 0;
}

/* RFC 3339 into out[32] as UTC; a '+' that arrived as a space (form encoding) is accepted. */
static int query_time(intake_query_fn query, void *arg, const char *name, char *out,
                      intake_verr_t *err)
{
    const char *s = query_get(query, arg, name);
    char buf[64];
    int64_t us;
    out[0] = '\0';
    if (!s)
        return 0;
    snprintf(buf, sizeof buf, "%s", s);
    for (char *p = buf; *p; p++)
        if (*p == ' ')
            *p = '+';
    if (strlen(s) >= sizeof buf || ac_time_parse_rfc3339(buf, &us) < 0)
        return verr(err, 422, "invalid_field", name,
                    "%s must be an RFC 3339 time such as 2026-11-22T10:00:00Z", name);
    ac_time_format_us(us, out);
    return 1;
}

int intake_validate_ticket_filter(intake_query_fn query, void *arg, intake_ticket_filter_t *out,
                                  intake_verr_t *err)
{
    int rc;
    memset(out, 0, sizeof *out);
    if ((rc = query_enum(query, arg, "status", intake_status_names,
                         AC_ARRAY_LEN(intake_status_names), &out->status, err)) < 0 ||
        (rc = query_enum(query, arg, "priority", intake_priority_names,
                         AC_ARRAY_LEN(intake_priority_names), &out->priority, err)) < 0 ||
        (rc = query_enum(query, arg, "category", intake_category_names,
                         AC_ARRAY_LEN(intake_category_names), &out->category, err)) < 0 ||
        (rc = query_uuid(query, arg, "customer_id", &out->customer_id, err)) < 0 ||
        (rc = query_time(query, arg, "created_from", out->created_from, err)) < 0 ||
        (rc = query_time(query, arg, "created_to", out->created_to, err)) < 0 ||
        (rc = page_parse(query, arg, &out->page, err)) < 0)
        return rc;
    return 0;
}

int intake_validate_customer_filter(intake_query_fn query, void *arg, intake_list_filter_t *out,
                                    intake_verr_t *err)
{
    int rc;
    memset(out, 0, sizeof *out);
    if ((rc = query_enum(query, arg, "tier", intake_tier_names, AC_ARRAY_LEN(intake_tier_names),
                         &out->tier, err)) < 0 ||
        (rc = page_parse(query, arg, &out->page, err)) < 0)
        return rc;
    return 0;
}

int intake_validate_product_filter(intake_query_fn query, void *arg, intake_list_filter_t *out,
                                   intake_verr_t *err)
{
    int rc;
    memset(out, 0, sizeof *out);
    if ((rc = query_uuid(query, arg, "customer_id", &out->customer_id, err)) < 0 ||
        (rc = page_parse(query, arg, &out->page, err)) < 0)
        return rc;
    return 0;
}
