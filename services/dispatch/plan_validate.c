/* plan_validate.c — see plan_validate.h. */
#include "plan_validate.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "ac_time.h"
#include "ac_uuid.h"

#define PART_NUMBER_MAX_CHARS 64
#define PART_DESC_MAX_CHARS   500
#define EXCLUSION_MAX_CHARS   500
#define LINK_DOMAIN           "aftercare.plan-link.v1"

const char *const dispatch_plan_mode_names[5] = {
    NULL, "remote", "on_site", "depot_repair", "external_repair",
};

static const char *const plan_keys[] = {
    "mode", "work", "parts", "free_of_charge", "fee_cents", "currency", "eta", "warranty_exclusion",
    NULL,
};

/* dispatch_verr() (validate.h), as an expression worth AC_ERR_INVALID: `return verr(...);`.
 * A macro so that the value is visible at each caller: clang's analyzer does not follow
 * calls into variadic functions, and would take a refusal of get_string() or get_int() for a
 * success that left *out unset. (Where the value is not used, call dispatch_verr().) */
#define verr(...) (dispatch_verr(__VA_ARGS__), AC_ERR_INVALID)

static int nomem(dispatch_verr_t *err)
{
    (void)dispatch_verr(err, 503, "unavailable", NULL, "out of memory; retry");
    return AC_ERR_NOMEM;
}

/* A member that is present and not null; NULL otherwise. */
static const json_t *given(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

static int check_object(const json_t *body, const char *const *keys, dispatch_verr_t *err)
{
    const char *key;
    const json_t *v;
    if (!json_is_object(body))
        return verr(err, 400, "malformed_json", NULL, "the body must be a JSON object");
    json_object_foreach((json_t *)(uintptr_t)body, key, v)
    {
        size_t i;
        for (i = 0; keys[i] && strcmp(keys[i], key) != 0; i++)
            ;
        if (!keys[i])
            return verr(err, 422, "unknown_field", key, "unknown field %.60s", key);
    }
    return 0;
}

/* v must be a string of min..max characters (v NULL: missing when min > 0). */
static int get_string(const json_t *v, const char *path, size_t min, size_t max, const char **out,
                      dispatch_verr_t *err)
{
    if (!v)
        return verr(err, 422, "missing_field", path, "%s is required", path);
    if (!json_is_string(v))
        return verr(err, 422, "invalid_field", path, "%s must be a string", path);
    const char *s = json_string_value(v);
    size_t n = dispatch_utf8_len(s);
    if (n < min || n > max)
        return verr(err, 422, "invalid_field", path, "%s must be %zu to %zu characters", path, min,
                    max);
    *out = s;
    return 0;
}

/* Text that means something: not only white space. */
static int is_blank(const char *s)
{
    for (; *s; s++)
        if (!isspace((unsigned char)*s))
            return 0;
    return 1;
}

static int get_text(const json_t *v, const char *path, size_t max, const char **out,
                    dispatch_verr_t *err)
{
    if (get_string(v, path, 1, max, out, err) < 0)
        return AC_ERR_INVALID;
    if (is_blank(*out))
        return verr(err, 422, "invalid_field", path, "%s must not be blank", path);
    return 0;
}

static int get_int(const json_t *v, const char *path, json_int_t min, json_int_t max,
                   json_int_t *out, dispatch_verr_t *err)
{
    if (!v)
        return verr(err, 422, "missing_field", path, "%s is required", path);
    if (!json_is_integer(v))
        return verr(err, 422, "invalid_field", path, "%s must be an integer", path);
    json_int_t n = json_integer_value(v);
    if (n < min || n > max)
        return verr(err, 422, "invalid_field", path,
                    "%s must be from %" JSON_INTEGER_FORMAT " to %" JSON_INTEGER_FORMAT
                    " (not %" JSON_INTEGER_FORMAT ")",
                    path, min, max, n);
    *out = n;
    return 0;
}

static int check_parts(const json_t *parts, json_t **out, dispatch_verr_t *err)
{
    static const char *const keys[] = {"part_number", "description", "quantity", "unit_price_cents",
                                       NULL};
    size_t i;
    const json_t *p;

    if (!json_is_array(parts))
        return verr(err, 422, "invalid_field", "parts", "parts must be an array of objects");
    if (json_array_size(parts) > DISPATCH_PLAN_MAX_PARTS)
        return verr(err, 422, "invalid_field", "parts", "at most %d parts",
                    DISPATCH_PLAN_MAX_PARTS);
    if (!(*out = json_array()))
        return nomem(err);
    json_array_foreach(parts, i, p)
    {
        char path[32], f[64];
        const char *number, *desc = "";
        json_int_t quantity, price = 0;
        const json_t *v;
        const char *key;

        snprintf(path, sizeof path, "parts[%zu]", i);
        if (!json_is_object(p))
            return verr(err, 422, "invalid_field", path, "%s must be an object", path);
        json_object_foreach((json_t *)(uintptr_t)p, key, v)
        {
            size_t k;
            for (k = 0; keys[k] && strcmp(keys[k], key) != 0; k++)
                ;
            if (!keys[k]) {
                snprintf(f, sizeof f, "%s.%.20s", path, key);
                return verr(err, 422, "unknown_field", f, "unknown field %s", f);
            }
        }
        snprintf(f, sizeof f, "%s.part_number", path);
        if (get_text(json_object_get(p, "part_number"), f, PART_NUMBER_MAX_CHARS, &number, err) < 0)
            return AC_ERR_INVALID;
        for (size_t j = 0; j < i; j++)
            if (strcmp(json_string_value(json_object_get(json_array_get(*out, j), "part_number")),
                       number) == 0)
                return verr(err, 422, "invalid_field", f,
                            "%s: part %.64s is listed twice; give one line with the total quantity",
                            f, number);
        snprintf(f, sizeof f, "%s.description", path);
        if ((v = given(p, "description")) &&
            get_string(v, f, 0, PART_DESC_MAX_CHARS, &desc, err) < 0)
            return AC_ERR_INVALID;
        snprintf(f, sizeof f, "%s.quantity", path);
        if (get_int(given(p, "quantity"), f, 1, DISPATCH_PLAN_MAX_QUANTITY, &quantity, err) < 0)
            return AC_ERR_INVALID;
        snprintf(f, sizeof f, "%s.unit_price_cents", path);
        if ((v = given(p, "unit_price_cents")) &&
            get_int(v, f, 0, DISPATCH_PLAN_MAX_CENTS, &price, err) < 0)
            return AC_ERR_INVALID;
        if (json_array_append_new(*out,
                                  json_pack("{s:s,s:s,s:I,s:I}", "part_number", number,
                                            "description", desc, "quantity", (json_int_t)quantity,
                                            "unit_price_cents", (json_int_t)price)) < 0)
            return nomem(err);
    }
    return 0;
}

static int is_currency(const char *s)
{
    size_t i;
    for (i = 0; s[i]; i++)
        if (i >= 3 || s[i] < 'A' || s[i] > 'Z')
            return 0;
    return i == 3;
}

/* PlanMode value of s (1..4), 0 when s is NULL or no mode. */
static int parse_mode(const char *s)
{
    for (int i = 1; s && i < (int)AC_ARRAY_LEN(dispatch_plan_mode_names); i++)
        if (strcmp(s, dispatch_plan_mode_names[i]) == 0)
            return i;
    return 0;
}

int dispatch_validate_plan(const json_t *body, json_t **out, dispatch_verr_t *err)
{
    const json_t *v;
    const char *mode_s, *work, *eta_s, *s;
    json_t *doc = NULL, *parts = NULL;
    json_int_t fee;
    int64_t eta_us;
    char eta[AC_TIME_STRLEN];
    int mode, rc = AC_ERR_INVALID;

    *out = NULL;
    if (check_object(body, plan_keys, err) < 0)
        goto out;
    v = given(body, "mode");
    if (!v) {
        (void)dispatch_verr(err, 422, "missing_field", "mode", "mode is required");
        goto out;
    }
    mode_s = json_string_value(v);
    if (!(mode = parse_mode(mode_s))) {
        (void)dispatch_verr(
            err, 422, "invalid_field", "mode",
            "mode must be one of remote, on_site, depot_repair, external_repair%s%.40s%s",
            mode_s ? " (not \"" : "", mode_s ? mode_s : "", mode_s ? "\")" : "");
        goto out;
    }
    if (get_text(given(body, "work"), "work", DISPATCH_PLAN_WORK_MAX_CHARS, &work, err) < 0)
        goto out;
    if (get_string(given(body, "eta"), "eta", 1, 64, &eta_s, err) < 0)
        goto out;
    if (ac_time_parse_rfc3339(eta_s, &eta_us) < 0) {
        (void)dispatch_verr(
            err, 422, "invalid_field", "eta",
            "eta must be an RFC 3339 time such as 2026-11-24T09:00:00+01:00 (not \"%.40s\")",
            eta_s);
        goto out;
    }
    if (!(doc = json_object()))
        goto nomem;
    if (json_object_set_new(doc, "mode", json_string(dispatch_plan_mode_names[mode])) < 0 ||
        json_object_set_new(doc, "work", json_string(work)) < 0 ||
        json_object_set_new(doc, "eta", json_string(ac_time_format_us(eta_us, eta))) < 0)
        goto nomem;
    if ((v = given(body, "parts"))) {
        rc = check_parts(v, &parts, err);
        if (rc < 0)
            goto out;
        rc = AC_ERR_INVALID;
    } else if (!(parts = json_array())) {
        goto nomem;
    }
    if (json_object_set_new(doc, "parts", parts) < 0) {
        parts = NULL;
        goto nomem;
    }
    parts = NULL;
    if ((v = given(body, "free_of_charge"))) {
        if (!json_is_boolean(v)) {
            (void)dispatch_verr(err, 422, "invalid_field", "free_of_charge",
                                "free_of_charge must be true or false");
            goto out;
        }
        if (json_object_set(doc, "free_of_charge", (json_t *)(uintptr_t)v) < 0)
            goto nomem;
    }
    if ((v = given(body, "fee_cents"))) {
        if (get_int(v, "fee_cents", 0, DISPATCH_PLAN_MAX_CENTS, &fee, err) < 0)
            goto out;
        if (json_object_set_new(doc, "fee_cents", json_integer(fee)) < 0)
            goto nomem;
    }
    if ((v = given(body, "currency"))) {
        if (!json_is_string(v) || !is_currency(json_string_value(v))) {
            (void)dispatch_verr(
                err, 422, "invalid_field", "currency",
                "currency must be an ISO 4217 code of three capital letters, e.g. EUR");
            goto out;
        }
        if (json_object_set(doc, "currency", (json_t *)(uintptr_t)v) < 0)
            goto nomem;
    }
    if ((v = given(body, "warranty_exclusion"))) {
        if (get_text(v, "warranty_exclusion", EXCLUSION_MAX_CHARS, &s, err) < 0)
            goto out;
        if (json_object_set_new(doc, "warranty_exclusion", json_string(s)) < 0)
            goto nomem;
    }
    *out = doc;
    return 0;
nomem:
    rc = nomem(err);
out:
    json_decref(parts);
    json_decref(doc);
    return rc;
}

int dispatch_validate_plan_decision(const json_t *body, dispatch_plan_action_t action, int is_link,
                                    dispatch_plan_decision_t *out, dispatch_verr_t *err)
{
    static const char *const agent_accept[] = {"customer_name", "note", NULL};
    static const char *const agent_dispute[] = {"customer_name", "reason", NULL};
    static const char *const link_accept[] = {"name", "note", NULL};
    static const char *const link_dispute[] = {"name", "reason", NULL};
    const char *const *keys = is_link
                                  ? (action == DISPATCH_PLAN_ACCEPT ? link_accept : link_dispute)
                                  : (action == DISPATCH_PLAN_ACCEPT ? agent_accept : agent_dispute);
    const char *name_key = is_link ? "name" : "customer_name";
    const char *note_key = action == DISPATCH_PLAN_ACCEPT ? "note" : "reason";
    const json_t *v;

    out->customer_name = out->note = NULL;
    if (check_object(body, keys, err) < 0)
        return AC_ERR_INVALID;
    v = given(body, name_key);
    if (v || !is_link) {
        if (get_text(v, name_key, DISPATCH_PLAN_NAME_MAX_CHARS, &out->customer_name, err) < 0)
            return AC_ERR_INVALID;
    }
    v = given(body, note_key);
    if (v || action == DISPATCH_PLAN_DISPUTE) {
        if (get_text(v, note_key, DISPATCH_PLAN_NOTE_MAX_CHARS, &out->note, err) < 0)
            return AC_ERR_INVALID;
    }
    return 0;
}

int dispatch_validate_plan_cancel(const json_t *body, const char **reason, dispatch_verr_t *err)
{
    static const char *const keys[] = {"reason", NULL};
    *reason = NULL;
    if (check_object(body, keys, err) < 0)
        return AC_ERR_INVALID;
    return get_text(given(body, "reason"), "reason", DISPATCH_PLAN_NOTE_MAX_CHARS, reason, err);
}

int dispatch_validate_plan_link(const json_t *body, long *valid_hours, dispatch_verr_t *err)
{
    static const char *const keys[] = {"valid_hours", NULL};
    const json_t *v;
    json_int_t hours = DISPATCH_PLAN_LINK_DEF_HOURS;

    *valid_hours = DISPATCH_PLAN_LINK_DEF_HOURS;
    if (check_object(body, keys, err) < 0)
        return AC_ERR_INVALID;
    if ((v = given(body, "valid_hours")) &&
        get_int(v, "valid_hours", 1, DISPATCH_PLAN_LINK_MAX_HOURS, &hours, err) < 0)
        return AC_ERR_INVALID;
    *valid_hours = (long)hours;
    return 0;
}

/* --- the signed link ----------------------------------------------------------------- */

int dispatch_plan_link_is_enabled(const char *secret)
{
    return secret && strlen(secret) >= DISPATCH_PLAN_SECRET_MIN_LEN;
}

int dispatch_plan_link_sign(const char *secret, const char *plan_id, int revision,
                            int64_t expires_s, char *sig)
{
    static const char hex[] = "0123456789abcdef";
    char msg[160], id[AC_UUID_STRLEN];
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    size_t i;
    int n;

    sig[0] = '\0';
    if (!dispatch_plan_link_is_enabled(secret) || !plan_id || !ac_uuid_is_valid(plan_id) ||
        revision < 1 || expires_s < 0)
        return AC_ERR_INVALID;
    for (i = 0; plan_id[i] && i + 1 < sizeof id; i++)
        id[i] = (char)tolower((unsigned char)plan_id[i]);
    id[i] = '\0';
    n = snprintf(msg, sizeof msg, LINK_DOMAIN "\n%s\n%d\n%" PRId64, id, revision, expires_s);
    if (n < 0 || (size_t)n >= sizeof msg)
        return AC_ERR_INVALID;
    if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)msg, (size_t)n, mac,
              &mac_len) ||
        mac_len * 2 != DISPATCH_PLAN_SIG_HEXLEN)
        return AC_ERR_INVALID;
    for (i = 0; i < mac_len; i++) {
        sig[2 * i] = hex[mac[i] >> 4];
        sig[2 * i + 1] = hex[mac[i] & 0xf];
    }
    sig[2 * (size_t)mac_len] = '\0';
    return 0;
}

/* A decimal number of 1..max_digits digits, no sign, no leading zero (so that one value
 * has one spelling). -1 when it is not. */
static int64_t parse_decimal(const char *s, size_t max_digits)
{
    int64_t v = 0;
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > max_digits || (s[0] == '0' && n > 1))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

dispatch_link_check_t dispatch_plan_link_check(const char *secret, const char *plan_id,
                                               const char *rev, const char *expires,
                                               const char *sig, int64_t now_s, int *revision_out)
{
    char want[DISPATCH_PLAN_SIG_HEXLEN + 1], got[DISPATCH_PLAN_SIG_HEXLEN];
    int64_t revision = parse_decimal(rev, 9);
    int64_t expires_s = parse_decimal(expires, 12);

    *revision_out = 0;
    if (!plan_id || !sig || revision < 1 || expires_s < 0 ||
        strlen(sig) != DISPATCH_PLAN_SIG_HEXLEN ||
        dispatch_plan_link_sign(secret, plan_id, (int)revision, expires_s, want) < 0)
        return DISPATCH_LINK_INVALID;
    for (size_t i = 0; i < DISPATCH_PLAN_SIG_HEXLEN; i++)
        got[i] = (char)tolower((unsigned char)sig[i]);
    if (CRYPTO_memcmp(want, got, DISPATCH_PLAN_SIG_HEXLEN) != 0)
        return DISPATCH_LINK_INVALID;
    *revision_out = (int)revision;
    return expires_s <= now_s ? DISPATCH_LINK_EXPIRED : DISPATCH_LINK_OK;
}
