/* validate.c — see validate.h. */
#include "validate.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calendar.h"

#define NAME_MAX_CHARS   200
#define REGION_MAX_CHARS 100
#define SKILL_MAX_CHARS  100
#define MAX_REGIONS      64
#define MAX_SKILLS       64
#define MAX_CAPACITY     1000

const char *const dispatch_role_names[6] = {
    NULL, "technical_support", "field_engineer", "depot_technician", "supervisor", "manager",
};
const char *const dispatch_availability_names[4] = {NULL, "available", "away", "on_leave"};
static const char *const skill_kind_names[] = {NULL, "product_line", "category"};

static const char *const editable[] = {
    "name", "role", "skills", "regions", "capacity", "availability", "contact", "shift", NULL,
};

int dispatch_enum_parse(const char *const *names, size_t n, const char *s)
{
    if (!s)
        return 0;
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i], s) == 0)
            return (int)i;
    return 0;
}

size_t dispatch_utf8_len(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

int dispatch_phone_is_valid(const char *s)
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

int dispatch_email_is_valid(const char *s)
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

int dispatch_verr(dispatch_verr_t *err, int status, const char *code, const char *field,
                  const char *fmt, ...)
{
    va_list ap;
    err->status = status;
    snprintf(err->code, sizeof err->code, "%s", code);
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return AC_ERR_INVALID;
}

int dispatch_is_blank(const char *s)
{
    for (; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != '\n' && *s != '\r')
            return 0;
    return 1;
}

static int nomem(dispatch_verr_t *err)
{
    dispatch_verr(err, 503, "unavailable", NULL, "out of memory; retry");
    return AC_ERR_NOMEM;
}

static int is_listed(const char *const *names, const char *key)
{
    for (size_t i = 0; names[i]; i++)
        if (strcmp(names[i], key) == 0)
            return 1;
    return 0;
}

/* Unknown keys of obj (names NULL-terminated) are refused. */
static int check_known(const json_t *obj, const char *const *names, const char *prefix,
                       dispatch_verr_t *err)
{
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)(uintptr_t)obj, key, v)
    {
        if (!is_listed(names, key)) {
            char path[64];
            snprintf(path, sizeof path, "%s%s", prefix, key);
            return dispatch_verr(err, 422, "unknown_field", path, "unknown field %.60s", path);
        }
    }
    return 0;
}

/* A string of min..max characters; *out borrowed from obj. */
static int get_string(const json_t *v, const char *path, size_t min, size_t max, const char **out,
                      dispatch_verr_t *err)
{
    if (!json_is_string(v))
        return dispatch_verr(err, 422, "invalid_field", path, "%s must be a string", path);
    const char *s = json_string_value(v);
    size_t n = dispatch_utf8_len(s);
    if (n < min || n > max)
        return dispatch_verr(err, 422, "invalid_field", path, "%s must be %zu to %zu characters",
                             path, min, max);
    *out = s;
    return 0;
}

static int get_enum(const json_t *v, const char *path, const char *const *names, size_t n, int *out,
                    dispatch_verr_t *err)
{
    const char *s = json_string_value(v);
    int e = dispatch_enum_parse(names, n, s);
    if (!e) {
        char list[160] = "";
        for (size_t i = 1; i < n; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i > 1 ? ", " : "",
                     names[i]);
        return dispatch_verr(err, 422, "invalid_field", path, "%s must be one of %s%s%.60s%s", path,
                             list, s ? " (not \"" : "", s ? s : "", s ? "\")" : "");
    }
    *out = e;
    return 0;
}

static int check_skills(const json_t *skills, json_t **out, dispatch_verr_t *err)
{
    size_t i;
    const json_t *s;
    static const char *const keys[] = {"kind", "name", "level", NULL};

    if (!json_is_array(skills))
        return dispatch_verr(err, 422, "invalid_field", "skills", "skills must be an array");
    if (json_array_size(skills) > MAX_SKILLS)
        return dispatch_verr(err, 422, "invalid_field", "skills", "at most %d skills", MAX_SKILLS);
    if (!(*out = json_array()))
        return nomem(err);
    json_array_foreach(skills, i, s)
    {
        char path[32], p2[64];
        const char *name = "";
        int kind = 1;
        snprintf(path, sizeof path, "skills[%zu]", i % 1000);
        if (!json_is_object(s))
            return dispatch_verr(err, 422, "invalid_field", path, "%s must be an object", path);
        snprintf(p2, sizeof p2, "%s.", path);
        if (check_known(s, keys, p2, err) < 0)
            return AC_ERR_INVALID;
        snprintf(p2, sizeof p2, "%s.kind", path);
        if (!json_object_get(s, "kind"))
            return dispatch_verr(err, 422, "missing_field", p2, "%s is required", p2);
        if (get_enum(json_object_get(s, "kind"), p2, skill_kind_names, 3, &kind, err) < 0)
            return AC_ERR_INVALID;
        snprintf(p2, sizeof p2, "%s.name", path);
        if (!json_object_get(s, "name"))
            return dispatch_verr(err, 422, "missing_field", p2, "%s is required", p2);
        if (get_string(json_object_get(s, "name"), p2, 1, SKILL_MAX_CHARS, &name, err) < 0)
            return AC_ERR_INVALID;
        snprintf(p2, sizeof p2, "%s.level", path);
        const json_t *level = json_object_get(s, "level");
        if (!level)
            return dispatch_verr(err, 422, "missing_field", p2, "%s is required", p2);
        if (!json_is_integer(level) || json_integer_value(level) < 1 ||
            json_integer_value(level) > 5)
            return dispatch_verr(err, 422, "invalid_field", p2, "%s must be an integer from 1 to 5",
                                 p2);
        for (size_t j = 0; j < i; j++) {
            const json_t *o = json_array_get(skills, j);
            if (strcmp(json_string_value(json_object_get(o, "kind")), skill_kind_names[kind]) ==
                    0 &&
                strcmp(json_string_value(json_object_get(o, "name")), name) == 0)
                return dispatch_verr(err, 422, "invalid_field", path,
                                     "%s repeats the %s skill %.60s", path, skill_kind_names[kind],
                                     name);
        }
        if (json_array_append_new(*out,
                                  json_pack("{s:s,s:s,s:I}", "kind", skill_kind_names[kind], "name",
                                            name, "level", json_integer_value(level))) < 0)
            return nomem(err);
    }
    return 0;
}

static int check_regions(const json_t *regions, dispatch_verr_t *err)
{
    size_t i;
    const json_t *r;
    const char *s = "";
    if (!json_is_array(regions))
        return dispatch_verr(err, 422, "invalid_field", "regions",
                             "regions must be an array of strings");
    if (json_array_size(regions) > MAX_REGIONS)
        return dispatch_verr(err, 422, "invalid_field", "regions", "at most %d regions",
                             MAX_REGIONS);
    json_array_foreach(regions, i, r)
    {
        char path[64];
        snprintf(path, sizeof path, "regions[%zu]", i);
        if (get_string(r, path, 1, REGION_MAX_CHARS, &s, err) < 0)
            return AC_ERR_INVALID;
        for (size_t j = 0; j < i; j++)
            if (strcmp(json_string_value(json_array_get(regions, j)), s) == 0)
                return dispatch_verr(err, 422, "invalid_field", path, "%s repeats region %.60s",
                                     path, s);
    }
    return 0;
}

static int check_contact(const json_t *contact, json_t **out, dispatch_verr_t *err)
{
    static const char *const keys[] = {"phone", "email", NULL};
    const json_t *phone, *email;
    if (!json_is_object(contact))
        return dispatch_verr(err, 422, "invalid_field", "contact",
                             "contact must be an object with phone and/or email");
    if (check_known(contact, keys, "contact.", err) < 0)
        return AC_ERR_INVALID;
    phone = json_object_get(contact, "phone");
    email = json_object_get(contact, "email");
    if (json_is_null(phone))
        phone = NULL;
    if (json_is_null(email))
        email = NULL;
    if (!phone && !email)
        return dispatch_verr(err, 422, "missing_field", "contact",
                             "contact needs a phone or an email");
    if (phone && (!json_is_string(phone) || !dispatch_phone_is_valid(json_string_value(phone))))
        return dispatch_verr(
            err, 422, "invalid_field", "contact.phone",
            "contact.phone must be 7 to 20 characters: digits, spaces, - ( ) and a "
            "leading +");
    if (email && (!json_is_string(email) || !dispatch_email_is_valid(json_string_value(email))))
        return dispatch_verr(err, 422, "invalid_field", "contact.email",
                             "contact.email is not an email address");
    if (!(*out = json_object()))
        return nomem(err);
    if ((phone && json_object_set(*out, "phone", (json_t *)(uintptr_t)phone) < 0) ||
        (email && json_object_set(*out, "email", (json_t *)(uintptr_t)email) < 0))
        return nomem(err);
    return 0;
}

static int check_shift(const json_t *shift, const char *tzdir, dispatch_verr_t *err)
{
    dispatch_calendar_t *cal = NULL;
    dispatch_cal_err_t cerr;
    int rc;
    if (!json_is_object(shift))
        return dispatch_verr(err, 422, "invalid_field", "shift",
                             "shift must be a calendar object (time_zone, working_hours)");
    rc = dispatch_calendar_parse(shift, tzdir, &cal, &cerr);
    dispatch_calendar_destroy(&cal);
    if (rc == AC_ERR_INVALID) {
        char path[64];
        snprintf(path, sizeof path, "shift%s%.50s", cerr.field[0] ? "." : "", cerr.field);
        return dispatch_verr(err, 422, "invalid_field", path, "shift: %.200s", cerr.message);
    }
    if (rc == AC_ERR_NOMEM)
        return nomem(err);
    if (rc < 0)
        return dispatch_verr(err, 503, "unavailable", "shift",
                             "the time zone data cannot be read; retry");
    return 0;
}

int dispatch_validate_engineer(const json_t *body, const char *tzdir, json_t **out,
                               dispatch_verr_t *err)
{
    const char *name;
    int role, availability = 1;
    json_t *doc = NULL, *skills = NULL, *contact = NULL;
    const json_t *v;
    int rc = AC_ERR_INVALID;

    *out = NULL;
    if (!json_is_object(body)) {
        dispatch_verr(err, 400, "malformed_json", NULL, "the body must be a JSON object");
        goto out;
    }
    if (check_known(body, editable, "", err) < 0)
        goto out;
    for (size_t i = 0; editable[i]; i++) {
        const char *k = editable[i];
        int is_optional =
            strcmp(k, "skills") == 0 || strcmp(k, "regions") == 0 || strcmp(k, "availability") == 0;
        if (!is_optional && !json_object_get(body, k)) {
            dispatch_verr(err, 422, "missing_field", k, "%s is required", k);
            goto out;
        }
    }
    if (get_string(json_object_get(body, "name"), "name", 1, NAME_MAX_CHARS, &name, err) < 0 ||
        get_enum(json_object_get(body, "role"), "role", dispatch_role_names, 6, &role, err) < 0)
        goto out;
    if ((v = json_object_get(body, "availability")) &&
        get_enum(v, "availability", dispatch_availability_names, 4, &availability, err) < 0)
        goto out;
    v = json_object_get(body, "capacity");
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > MAX_CAPACITY) {
        dispatch_verr(err, 422, "invalid_field", "capacity",
                      "capacity must be an integer from 0 to %d (open jobs at once)", MAX_CAPACITY);
        goto out;
    }
    const json_t *skills_in = json_object_get(body, "skills");
    const json_t *regions = json_object_get(body, "regions");
    if (!skills_in) {
        if (!(skills = json_array())) {
            rc = nomem(err);
            goto out;
        }
    } else if ((rc = check_skills(skills_in, &skills, err)) < 0) {
        goto out;
    }
    if (regions && (rc = check_regions(regions, err)) < 0)
        goto out;
    if ((rc = check_contact(json_object_get(body, "contact"), &contact, err)) < 0)
        goto out;
    if ((rc = check_shift(json_object_get(body, "shift"), tzdir, err)) < 0)
        goto out;
    doc = json_pack("{s:s,s:s,s:o,s:o,s:O,s:s,s:o,s:O}", "name", name, "role",
                    dispatch_role_names[role], "skills", skills, "regions",
                    regions ? json_deep_copy(regions) : json_array(), "capacity", v, "availability",
                    dispatch_availability_names[availability], "contact", contact, "shift",
                    json_object_get(body, "shift"));
    skills = contact = NULL; /* taken by json_pack, even on failure */
    if (!doc) {
        rc = nomem(err);
        goto out;
    }
    *out = doc;
    rc = 0;
out:
    json_decref(skills);
    json_decref(contact);
    return rc < 0 ? rc : 0;
}

int dispatch_validate_engineer_patch(const json_t *body, int64_t *expected_version,
                                     json_t **fields_out, dispatch_verr_t *err)
{
    static const char *const keys[] = {
        "expected_version", "name",         "role",    "skills", "regions",
        "capacity",         "availability", "contact", "shift",  NULL,
    };
    const char *key;
    json_t *v;

    *fields_out = NULL;
    *expected_version = 0;
    if (!json_is_object(body))
        return dispatch_verr(err, 400, "malformed_json", NULL, "the body must be a JSON object");
    if (check_known(body, keys, "", err) < 0)
        return AC_ERR_INVALID;
    if ((v = json_object_get(body, "expected_version"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return dispatch_verr(err, 422, "invalid_field", "expected_version",
                                 "expected_version must be a positive integer");
        *expected_version = (int64_t)json_integer_value(v);
    }
    if (!(*fields_out = json_object()))
        return nomem(err);
    json_object_foreach((json_t *)(uintptr_t)body, key, v)
    {
        if (strcmp(key, "expected_version") == 0)
            continue;
        if (json_is_null(v) && strcmp(key, "contact") != 0) {
            json_decref(*fields_out);
            *fields_out = NULL;
            return dispatch_verr(err, 422, "invalid_field", key, "%s cannot be null", key);
        }
        if (json_object_set(*fields_out, key, v) < 0) {
            json_decref(*fields_out);
            *fields_out = NULL;
            return nomem(err);
        }
    }
    return 0;
}

json_t *dispatch_engineer_merge(const json_t *doc, const json_t *fields)
{
    json_t *out = json_object();
    const char *key;
    json_t *v;
    if (!out)
        return NULL;
    for (size_t i = 0; editable[i]; i++)
        if ((v = json_object_get(doc, editable[i])) && json_object_set(out, editable[i], v) < 0)
            goto nomem;
    json_object_foreach((json_t *)(uintptr_t)fields, key, v)
    {
        if (strcmp(key, "contact") == 0 && json_is_object(v)) {
            json_t *contact = json_deep_copy(json_object_get(doc, "contact"));
            const char *k2;
            json_t *v2;
            if (!json_is_object(contact)) {
                json_decref(contact);
                contact = json_object();
            }
            if (!contact)
                goto nomem;
            json_object_foreach(v, k2, v2)
            {
                int rc = json_is_null(v2) ? (json_object_del(contact, k2), 0)
                                          : json_object_set(contact, k2, v2);
                if (rc < 0) {
                    json_decref(contact);
                    goto nomem;
                }
            }
            if (json_object_set_new(out, key, contact) < 0)
                goto nomem;
        } else if (json_object_set(out, key, v) < 0) {
            goto nomem;
        }
    }
    return out;
nomem:
    json_decref(out);
    return NULL;
}

size_t dispatch_engineer_changed(const json_t *a, const json_t *b, const char **changed)
{
    size_t n = 0;
    for (size_t i = 0; editable[i]; i++)
        if (!json_equal(json_object_get(a, editable[i]), json_object_get(b, editable[i])))
            changed[n++] = editable[i];
    return n;
}

static int cursor_parse(const char *s, int64_t *seq_out)
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

static int query_string(dispatch_query_fn query, void *arg, const char *name, const char **out,
                        dispatch_verr_t *err)
{
    const char *s = query(arg, name);
    *out = NULL;
    if (!s)
        return 0;
    if (s[0] == '\0' || dispatch_utf8_len(s) > 100)
        return dispatch_verr(err, 422, "invalid_field", name, "%s must be 1 to 100 characters",
                             name);
    *out = s;
    return 0;
}

int dispatch_validate_engineer_filter(dispatch_query_fn query, void *arg, dispatch_list_in_t *out,
                                      dispatch_verr_t *err)
{
    const char *s;
    int e;
    memset(out, 0, sizeof *out);
    out->limit = 50;
    if ((s = query(arg, "limit"))) {
        char *end;
        long v = strtol(s, &end, 10);
        if (!s[0] || *end || v < 1 || v > 200)
            return dispatch_verr(err, 422, "invalid_field", "limit",
                                 "limit must be an integer from 1 to 200");
        out->limit = v;
    }
    if ((s = query(arg, "cursor")) && cursor_parse(s, &out->cursor) < 0)
        return dispatch_verr(err, 422, "invalid_field", "cursor",
                             "cursor is not valid; pass next_cursor from the previous page");
    if ((s = query(arg, "role"))) {
        json_t *j = json_string(s);
        int rc = get_enum(j, "role", dispatch_role_names, 6, &e, err);
        json_decref(j);
        if (rc < 0)
            return rc;
        out->role = dispatch_role_names[e];
    }
    if ((s = query(arg, "availability"))) {
        json_t *j = json_string(s);
        int rc = get_enum(j, "availability", dispatch_availability_names, 4, &e, err);
        json_decref(j);
        if (rc < 0)
            return rc;
        out->availability = dispatch_availability_names[e];
    }
    if (query_string(query, arg, "region", &out->region, err) < 0 ||
        query_string(query, arg, "skill", &out->skill, err) < 0)
        return AC_ERR_INVALID;
    return 0;
}
