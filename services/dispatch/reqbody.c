/* reqbody.c — see reqbody.h. */
#include "reqbody.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ac_uuid.h"

#define MAX_TIME_US 253402300800000000LL /* 10000-01-01: times are 1970..9999 */

static int is_alnum(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* RMA numbers: 3-40 characters, letters, digits and - _ / . , starting with a letter or a
 * digit (vendors' forms vary: "RMA-2026-0042", "R12345/7"). */
static int rma_is_valid(const char *s)
{
    size_t len = strlen(s);
    if (len < 3 || len > 40 || !is_alnum(s[0]))
        return 0;
    for (size_t i = 1; i < len; i++)
        if (!is_alnum(s[i]) && s[i] != '-' && s[i] != '_' && s[i] != '/' && s[i] != '.')
            return 0;
    return 1;
}

/* Tracking numbers: 6-40 letters and digits (UPS 1Z..., DHL, FedEx, postal services). */
static int tracking_is_valid(const char *s)
{
    size_t len = strlen(s);
    if (len < 6 || len > 40)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!is_alnum(s[i]))
            return 0;
    return 1;
}

static int check_contact(const json_t *v, const char *name, dispatch_verr_t *err)
{
    const char *key;
    const json_t *part;
    char path[64];

    if (!json_is_object(v))
        return dispatch_verr(err, 422, "invalid_field", name, "%s must be an object", name);
    json_object_foreach((json_t *)(uintptr_t)v, key, part)
    {
        snprintf(path, sizeof path, "%s.%.40s", name, key);
        if (strcmp(key, "name") != 0 && strcmp(key, "phone") != 0 && strcmp(key, "email") != 0)
            return dispatch_verr(err, 422, "unknown_field", path, "unknown field %s", path);
        if (json_is_null(part))
            continue;
        if (!json_is_string(part))
            return dispatch_verr(err, 422, "invalid_field", path, "%s must be a string", path);
        const char *s = json_string_value(part);
        if (strcmp(key, "name") == 0 &&
            (dispatch_utf8_len(s) < 1 || dispatch_utf8_len(s) > 200 || dispatch_is_blank(s)))
            return dispatch_verr(err, 422, "invalid_field", path, "%s must be 1 to 200 characters",
                                 path);
        if (strcmp(key, "phone") == 0 && !dispatch_phone_is_valid(s))
            return dispatch_verr(
                err, 422, "invalid_field", path,
                "%s must be 7-20 characters of digits, spaces, - ( ) and a leading +", path);
        if (strcmp(key, "email") == 0 && !dispatch_email_is_valid(s))
            return dispatch_verr(err, 422, "invalid_field", path, "%s is not an email address",
                                 path);
    }
    return 0;
}

static int check_field(const dispatch_body_field_t *f, const json_t *v, char *buf, size_t buflen,
                       const char **out, dispatch_verr_t *err)
{
    const char *s = json_string_value(v);
    int64_t us;

    switch (f->kind) {
    case DISPATCH_F_INT:
        if (!json_is_integer(v) || json_integer_value(v) < f->min || json_integer_value(v) > f->max)
            return dispatch_verr(err, 422, "invalid_field", f->name,
                                 "%s must be an integer from %ld to %ld", f->name, f->min, f->max);
        snprintf(buf, buflen, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        *out = buf;
        return 0;
    case DISPATCH_F_BOOL:
        if (!json_is_boolean(v))
            return dispatch_verr(err, 422, "invalid_field", f->name, "%s must be true or false",
                                 f->name);
        *out = json_is_true(v) ? "true" : "false";
        return 0;
    case DISPATCH_F_CONTACT:
        *out = NULL; /* passed within the document */
        return check_contact(v, f->name, err);
    default:
        break;
    }
    if (!s)
        return dispatch_verr(err, 422, "invalid_field", f->name, "%s must be a string", f->name);
    switch (f->kind) {
    case DISPATCH_F_TEXT:
        if (dispatch_utf8_len(s) < (size_t)f->min || dispatch_utf8_len(s) > (size_t)f->max ||
            (f->min > 0 && dispatch_is_blank(s)))
            return dispatch_verr(err, 422, "invalid_field", f->name,
                                 "%s must be %ld to %ld characters", f->name, f->min, f->max);
        break;
    case DISPATCH_F_UUID:
        if (!ac_uuid_is_valid(s))
            return dispatch_verr(err, 422, "invalid_field", f->name,
                                 "%s must be an id (a UUID), not %.40s", f->name, s);
        break;
    case DISPATCH_F_TIME:
        if (ac_time_parse_rfc3339(s, &us) < 0 || us < 0 || us >= MAX_TIME_US)
            return dispatch_verr(err, 422, "invalid_field", f->name,
                                 "%s must be an RFC 3339 time with an offset, e.g. "
                                 "2026-11-23T10:00:00Z, not %.40s",
                                 f->name, s);
        ac_time_format_us(us, buf);
        s = buf;
        break;
    case DISPATCH_F_RMA:
        if (!rma_is_valid(s))
            return dispatch_verr(
                err, 422, "invalid_field", f->name,
                "%s must be 3-40 letters, digits, - _ / . starting with a letter or "
                "digit, not %.40s",
                f->name, s);
        break;
    case DISPATCH_F_TRACKING:
        if (!tracking_is_valid(s))
            return dispatch_verr(err, 422, "invalid_field", f->name,
                                 "%s must be 6-40 letters and digits, not %.40s", f->name, s);
        break;
    case DISPATCH_F_ENUM: {
        size_t i;
        for (i = 0; f->values[i] && strcmp(f->values[i], s) != 0; i++)
            ;
        if (!f->values[i])
            return dispatch_verr(err, 422, "invalid_field", f->name,
                                 "%s must be %s or %s, not %.40s", f->name, f->values[0],
                                 f->values[1], s);
        break;
    }
    default:
        break;
    }
    *out = s;
    return 0;
}

/* Checks body against fields (NULL-name terminated): no unknown keys, required fields
 * present, each value of its kind. A JSON null is an absent field. */
int dispatch_check_body(const json_t *body, const dispatch_body_field_t *fields,
                        dispatch_body_values_t *out, dispatch_verr_t *err)
{
    const char *key;
    const json_t *v;
    size_t i;

    if (!json_is_object(body))
        return dispatch_verr(err, 400, "malformed_json", NULL, "the body must be a JSON object");
    json_object_foreach((json_t *)(uintptr_t)body, key, v)
    {
        for (i = 0; fields[i].name && strcmp(fields[i].name, key) != 0; i++)
            ;
        if (!fields[i].name)
            return dispatch_verr(err, 422, "unknown_field", key, "unknown field %.60s", key);
    }
    for (i = 0; fields[i].name; i++) {
        const dispatch_body_field_t *f = &fields[i];
        out->v[i] = NULL;
        v = json_object_get(body, f->name);
        if (!v || json_is_null(v)) {
            if (f->is_required)
                return dispatch_verr(err, 422, "missing_field", f->name, "%s is required", f->name);
            continue;
        }
        if (check_field(f, v, out->buf[i], sizeof out->buf[i], &out->v[i], err) < 0)
            return AC_ERR_INVALID;
    }
    return 0;
}
