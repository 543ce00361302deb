/* test_plan_validate.c — the pure rules of service plans (services/dispatch/plan_validate.c,
 * included so its statics are in reach): the proposal body and its normalised form, the
 * decision, cancellation and link bodies, and the signed customer link — a known HMAC
 * value (computed independently with Python's hmac module), tampering with every part,
 * expiry, and malformed query values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "dispatch/plan_validate.c"

#define SECRET  "0123456789abcdef0123456789abcdef" /* 32 characters: the shortest allowed */
#define PLAN_ID "0956202f-e611-4f74-97c8-59b488655823"
#define NOW_S   INT64_C(1795334400) /* 2026-11-22T08:00:00Z */
/* python3: hmac.new(SECRET, b"aftercare.plan-link.v1\n" + PLAN_ID + b"\n2\n1795334400",
 * hashlib.sha256).hexdigest() */
#define KNOWN_SIG "5954de4d6bc33af98ea74f25000cbc83ca318560c5010029f87dfc7ea66bdf3f"

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, 0, &jerr);
    if (!v)
        fail_msg("bad test JSON: %s: %s", text, jerr.text);
    return v;
}

/* Validating `text` as a proposal fails with status/code/field. */
static void expect_plan_err(const char *text, int status, const char *code, const char *field)
{
    json_t *body = parse(text), *out = (json_t *)1;
    dispatch_verr_t err;
    memset(&err, 0, sizeof err);
    int rc = dispatch_validate_plan(body, &out, &err);
    if (rc != AC_ERR_INVALID || err.status != status || strcmp(err.code, code) != 0 ||
        strcmp(err.field, field) != 0)
        fail_msg("%s: got rc %d %d %s %s (%s), want %d %s %s", text, rc, err.status, err.code,
                 err.field, err.message, status, code, field);
    assert_null(out);
    assert_true(err.message[0] != '\0');
    json_decref(body);
}

static json_t *plan_ok(const char *text)
{
    json_t *body = parse(text), *out = NULL;
    dispatch_verr_t err;
    int rc = dispatch_validate_plan(body, &out, &err);
    if (rc != 0)
        fail_msg("%s: refused: %s %s %s", text, err.code, err.field, err.message);
    json_decref(body);
    return out;
}

#define BASE                                                                                       \
    "\"mode\":\"on_site\",\"work\":\"replace the pump "                                            \
    "seal\",\"eta\":\"2026-11-24T09:00:00+01:00\""

/* --- proposals ------------------------------------------------------------------------ */

static void test_plan_minimal_is_normalised(void **state)
{
    (void)state;
    json_t *doc = plan_ok("{" BASE "}");
    char *text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    /* eta in UTC with microseconds; parts default to []; nothing else invented */
    assert_string_equal(text, "{\"eta\":\"2026-11-24T08:00:00.000000Z\",\"mode\":\"on_site\","
                              "\"parts\":[],\"work\":\"replace the pump seal\"}");
    free(text);
    json_decref(doc);
}

static void test_plan_full(void **state)
{
    (void)state;
    json_t *doc =
        plan_ok("{" BASE ",\"parts\":[{\"part_number\":\"SEAL-9\",\"quantity\":2},"
                "{\"part_number\":\"PUMP-1\",\"description\":\"pump\",\"quantity\":1,"
                "\"unit_price_cents\":12900}],\"free_of_charge\":false,\"fee_cents\":25000,"
                "\"currency\":\"EUR\",\"warranty_exclusion\":\"water damage\"}");
    const json_t *p0 = json_array_get(json_object_get(doc, "parts"), 0);
    assert_string_equal(json_string_value(json_object_get(p0, "description")), "");
    assert_int_equal(json_integer_value(json_object_get(p0, "unit_price_cents")), 0);
    assert_int_equal(json_integer_value(json_object_get(p0, "quantity")), 2);
    assert_int_equal(json_integer_value(json_object_get(doc, "fee_cents")), 25000);
    assert_true(json_is_false(json_object_get(doc, "free_of_charge")));
    assert_string_equal(json_string_value(json_object_get(doc, "currency")), "EUR");
    assert_string_equal(json_string_value(json_object_get(doc, "warranty_exclusion")),
                        "water damage");
    json_decref(doc);

    /* null means "not given" */
    doc = plan_ok("{" BASE ",\"fee_cents\":null,\"currency\":null,\"parts\":null}");
    assert_null(json_object_get(doc, "fee_cents"));
    assert_null(json_object_get(doc, "currency"));
    assert_int_equal(json_array_size(json_object_get(doc, "parts")), 0);
    json_decref(doc);

    /* every mode */
    static const char *const modes[] = {"remote", "on_site", "depot_repair", "external_repair"};
    for (size_t i = 0; i < 4; i++) {
        char text[256];
        snprintf(text, sizeof text,
                 "{\"mode\":\"%s\",\"work\":\"w\",\"eta\":\"2026-11-24T09:00:00Z\"}", modes[i]);
        doc = plan_ok(text);
        assert_string_equal(json_string_value(json_object_get(doc, "mode")), modes[i]);
        json_decref(doc);
    }
}

static void test_plan_refusals(void **state)
{
    (void)state;
    expect_plan_err("[]", 400, "malformed_json", "");
    expect_plan_err("{\"work\":\"w\",\"eta\":\"2026-11-24T09:00:00Z\"}", 422, "missing_field",
                    "mode");
    expect_plan_err("{\"mode\":\"teleport\",\"work\":\"w\",\"eta\":\"2026-11-24T09:00:00Z\"}", 422,
                    "invalid_field", "mode");
    expect_plan_err("{\"mode\":2,\"work\":\"w\",\"eta\":\"2026-11-24T09:00:00Z\"}", 422,
                    "invalid_field", "mode");
    expect_plan_err("{\"mode\":\"remote\",\"eta\":\"2026-11-24T09:00:00Z\"}", 422, "missing_field",
                    "work");
    expect_plan_err("{\"mode\":\"remote\",\"work\":\"   \",\"eta\":\"2026-11-24T09:00:00Z\"}", 422,
                    "invalid_field", "work");
    expect_plan_err("{\"mode\":\"remote\",\"work\":\"w\"}", 422, "missing_field", "eta");
    expect_plan_err("{\"mode\":\"remote\",\"work\":\"w\",\"eta\":\"tomorrow\"}", 422,
                    "invalid_field", "eta");
    expect_plan_err("{\"mode\":\"remote\",\"work\":\"w\",\"eta\":\"2026-11-24 09:00\"}", 422,
                    "invalid_field", "eta");
    expect_plan_err("{\"mode\":\"remote\",\"work\":\"w\",\"eta\":\"2026-02-30T09:00:00Z\"}", 422,
                    "invalid_field", "eta");
    expect_plan_err("{" BASE ",\"price\":1}", 422, "unknown_field", "price");
    expect_plan_err("{" BASE ",\"state\":\"accepted\"}", 422, "unknown_field", "state");
    /* money */
    expect_plan_err("{" BASE ",\"fee_cents\":-1}", 422, "invalid_field", "fee_cents");
    expect_plan_err("{" BASE ",\"fee_cents\":12.5}", 422, "invalid_field", "fee_cents");
    expect_plan_err("{" BASE ",\"fee_cents\":\"100\"}", 422, "invalid_field", "fee_cents");
    expect_plan_err("{" BASE ",\"fee_cents\":1000000000001}", 422, "invalid_field", "fee_cents");
    expect_plan_err("{" BASE ",\"free_of_charge\":\"yes\"}", 422, "invalid_field",
                    "free_of_charge");
    expect_plan_err("{" BASE ",\"currency\":\"eur\"}", 422, "invalid_field", "currency");
    expect_plan_err("{" BASE ",\"currency\":\"EURO\"}", 422, "invalid_field", "currency");
    expect_plan_err("{" BASE ",\"currency\":\"E1R\"}", 422, "invalid_field", "currency");
    expect_plan_err("{" BASE ",\"currency\":\"\"}", 422, "invalid_field", "currency");
    expect_plan_err("{" BASE ",\"warranty_exclusion\":\"\"}", 422, "invalid_field",
                    "warranty_exclusion");
    /* parts */
    expect_plan_err("{" BASE ",\"parts\":{}}", 422, "invalid_field", "parts");
    expect_plan_err("{" BASE ",\"parts\":[1]}", 422, "invalid_field", "parts[0]");
    expect_plan_err("{" BASE ",\"parts\":[{\"quantity\":1}]}", 422, "missing_field",
                    "parts[0].part_number");
    expect_plan_err("{" BASE ",\"parts\":[{\"part_number\":\"A\"}]}", 422, "missing_field",
                    "parts[0].quantity");
    expect_plan_err("{" BASE ",\"parts\":[{\"part_number\":\"A\",\"quantity\":1},"
                    "{\"part_number\":\"B\",\"quantity\":-2}]}",
                    422, "invalid_field", "parts[1].quantity");
    expect_plan_err("{" BASE ",\"parts\":[{\"part_number\":\"A\",\"quantity\":0}]}", 422,
                    "invalid_field", "parts[0].quantity");
    expect_plan_err("{" BASE ",\"parts\":[{\"part_number\":\"A\",\"quantity\":1,"
                    "\"unit_price_cents\":-5}]}",
                    422, "invalid_field", "parts[0].unit_price_cents");
    expect_plan_err("{" BASE ",\"parts\":[{\"part_number\":\"A\",\"quantity\":1,\"sku\":1}]}", 422,
                    "unknown_field", "parts[0].sku");
    expect_plan_err("{" BASE ",\"parts\":[{\"part_number\":\"A\",\"quantity\":1},"
                    "{\"part_number\":\"A\",\"quantity\":3}]}",
                    422, "invalid_field", "parts[1].part_number");
}

static void test_plan_limits(void **state)
{
    (void)state;
    /* work: 4000 characters (counted as characters, not bytes) pass, 4001 do not */
    char *text = malloc(4 * 4001 + 256);
    size_t n =
        (size_t)sprintf(text, "{\"mode\":\"remote\",\"eta\":\"2026-11-24T09:00:00Z\",\"work\":\"");
    for (int i = 0; i < 4000; i++)
        n += (size_t)sprintf(text + n, "\xc3\xa9"); /* é: 2 bytes */
    strcpy(text + n, "\"}");
    json_decref(plan_ok(text));
    strcpy(text + n, "x\"}");
    expect_plan_err(text, 422, "invalid_field", "work");

    /* 50 parts pass, 51 do not */
    n = (size_t)sprintf(text, "{" BASE ",\"parts\":[");
    for (int i = 0; i < 51; i++)
        n += (size_t)sprintf(text + n, "%s{\"part_number\":\"P%d\",\"quantity\":1}", i ? "," : "",
                             i);
    strcpy(text + n, "]}");
    expect_plan_err(text, 422, "invalid_field", "parts");
    free(text);
}

/* --- decisions, cancellations, links -------------------------------------------------- */

static void test_decisions(void **state)
{
    (void)state;
    dispatch_plan_decision_t d;
    dispatch_verr_t err;
    json_t *b;

    b = parse("{\"customer_name\":\"Jo Smith\",\"note\":\"by phone\"}");
    assert_int_equal(dispatch_validate_plan_decision(b, DISPATCH_PLAN_ACCEPT, 0, &d, &err), 0);
    assert_string_equal(d.customer_name, "Jo Smith");
    assert_string_equal(d.note, "by phone");
    json_decref(b);

    b = parse("{\"customer_name\":\"Jo Smith\"}");
    assert_int_equal(dispatch_validate_plan_decision(b, DISPATCH_PLAN_ACCEPT, 0, &d, &err), 0);
    assert_null(d.note);
    /* a dispute needs its reason */
    assert_int_equal(dispatch_validate_plan_decision(b, DISPATCH_PLAN_DISPUTE, 0, &d, &err),
                     AC_ERR_INVALID);
    assert_string_equal(err.code, "missing_field");
    assert_string_equal(err.field, "reason");
    json_decref(b);

    /* an agent must say who the customer was */
    b = parse("{\"note\":\"ok\"}");
    assert_int_equal(dispatch_validate_plan_decision(b, DISPATCH_PLAN_ACCEPT, 0, &d, &err),
                     AC_ERR_INVALID);
    assert_string_equal(err.field, "customer_name");
    /* ... the customer on the link need not */
    assert_int_equal(dispatch_validate_plan_decision(b, DISPATCH_PLAN_ACCEPT, 1, &d, &err), 0);
    assert_null(d.customer_name);
    json_decref(b);

    b = parse("{}");
    assert_int_equal(dispatch_validate_plan_decision(b, DISPATCH_PLAN_ACCEPT, 1, &d, &err), 0);
    assert_int_equal(dispatch_validate_plan_decision(b, DISPATCH_PLAN_DISPUTE, 1, &d, &err),
                     AC_ERR_INVALID);
    assert_string_equal(err.field, "reason");
    json_decref(b);

    /* the keys of the other channel are unknown */
    b = parse("{\"customer_name\":\"Jo\"}");
    assert_int_equal(dispatch_validate_plan_decision(b, DISPATCH_PLAN_ACCEPT, 1, &d, &err),
                     AC_ERR_INVALID);
    assert_string_equal(err.code, "unknown_field");
    json_decref(b);
    b = parse("{\"customer_name\":\"Jo\",\"reason\":\"too dear\",\"note\":\"x\"}");
    assert_int_equal(dispatch_validate_plan_decision(b, DISPATCH_PLAN_DISPUTE, 0, &d, &err),
                     AC_ERR_INVALID);
    assert_string_equal(err.field, "note");
    json_decref(b);
    b = parse("{\"customer_name\":\"Jo\",\"reason\":\" \"}");
    assert_int_equal(dispatch_validate_plan_decision(b, DISPATCH_PLAN_DISPUTE, 0, &d, &err),
                     AC_ERR_INVALID);
    assert_string_equal(err.field, "reason");
    json_decref(b);
}

static void test_cancel_and_link_bodies(void **state)
{
    (void)state;
    dispatch_verr_t err;
    const char *reason;
    long hours;
    json_t *b;

    b = parse("{\"reason\":\"customer withdrew\"}");
    assert_int_equal(dispatch_validate_plan_cancel(b, &reason, &err), 0);
    assert_string_equal(reason, "customer withdrew");
    json_decref(b);
    b = parse("{}");
    assert_int_equal(dispatch_validate_plan_cancel(b, &reason, &err), AC_ERR_INVALID);
    assert_string_equal(err.field, "reason");
    assert_int_equal(dispatch_validate_plan_link(b, &hours, &err), 0);
    assert_int_equal(hours, DISPATCH_PLAN_LINK_DEF_HOURS);
    json_decref(b);
    b = parse("{\"valid_hours\":720}");
    assert_int_equal(dispatch_validate_plan_link(b, &hours, &err), 0);
    assert_int_equal(hours, 720);
    json_decref(b);
    static const char *const bad[] = {"{\"valid_hours\":0}", "{\"valid_hours\":721}",
                                      "{\"valid_hours\":-1}", "{\"valid_hours\":\"2\"}",
                                      "{\"valid_days\":2}"};
    for (size_t i = 0; i < AC_ARRAY_LEN(bad); i++) {
        b = parse(bad[i]);
        assert_int_equal(dispatch_validate_plan_link(b, &hours, &err), AC_ERR_INVALID);
        json_decref(b);
    }
}

/* --- the signed link ------------------------------------------------------------------- */

static void test_link_sign_known_value(void **state)
{
    (void)state;
    char sig[DISPATCH_PLAN_SIG_HEXLEN + 1];
    assert_int_equal(dispatch_plan_link_sign(SECRET, PLAN_ID, 2, NOW_S, sig), 0);
    assert_string_equal(sig, KNOWN_SIG);
    /* the id is signed in lowercase, whatever case the path had */
    assert_int_equal(
        dispatch_plan_link_sign(SECRET, "0956202F-E611-4F74-97C8-59B488655823", 2, NOW_S, sig), 0);
    assert_string_equal(sig, KNOWN_SIG);
    /* refused: short secret, no secret, bad id, revision 0 */
    assert_int_equal(dispatch_plan_link_sign("short", PLAN_ID, 2, NOW_S, sig), AC_ERR_INVALID);
    assert_int_equal(dispatch_plan_link_sign(NULL, PLAN_ID, 2, NOW_S, sig), AC_ERR_INVALID);
    assert_int_equal(dispatch_plan_link_sign(SECRET, "plan-1", 2, NOW_S, sig), AC_ERR_INVALID);
    assert_int_equal(dispatch_plan_link_sign(SECRET, PLAN_ID, 0, NOW_S, sig), AC_ERR_INVALID);
    assert_false(dispatch_plan_link_is_enabled(""));
    assert_false(dispatch_plan_link_is_enabled("0123456789abcdef0123456789abcde")); /* 31 */
    assert_true(dispatch_plan_link_is_enabled(SECRET));
}

static dispatch_link_check_t check(const char *id, const char *rev, const char *expires,
                                   const char *sig, int64_t now_s)
{
    int revision = -1;
    dispatch_link_check_t c =
        dispatch_plan_link_check(SECRET, id, rev, expires, sig, now_s, &revision);
    if (c == DISPATCH_LINK_INVALID)
        assert_int_equal(revision, 0);
    else
        assert_int_equal(revision, atoi(rev));
    return c;
}

static void test_link_check(void **state)
{
    (void)state;
    const char *other_id = "53b9bb33-d964-4b16-b006-c4dfbac2d9ec";
    char upper[] = KNOWN_SIG, flipped[] = KNOWN_SIG;
    for (char *p = upper; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    flipped[10] = flipped[10] == '0' ? '1' : '0';

    /* genuine, before its expiry; hex in either case */
    assert_int_equal(check(PLAN_ID, "2", "1795334400", KNOWN_SIG, NOW_S - 1), DISPATCH_LINK_OK);
    assert_int_equal(check(PLAN_ID, "2", "1795334400", upper, NOW_S - 1), DISPATCH_LINK_OK);
    /* genuine but expired: at and after the instant */
    assert_int_equal(check(PLAN_ID, "2", "1795334400", KNOWN_SIG, NOW_S), DISPATCH_LINK_EXPIRED);
    assert_int_equal(check(PLAN_ID, "2", "1795334400", KNOWN_SIG, NOW_S + 86400),
                     DISPATCH_LINK_EXPIRED);
    /* tampering with any part */
    assert_int_equal(check(PLAN_ID, "2", "1795334400", flipped, NOW_S - 1), DISPATCH_LINK_INVALID);
    assert_int_equal(check(other_id, "2", "1795334400", KNOWN_SIG, NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "3", "1795334400", KNOWN_SIG, NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "2", "1795334401", KNOWN_SIG, NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    /* an expired link made to look valid by moving the expiry is not genuine */
    assert_int_equal(check(PLAN_ID, "2", "1895334400", KNOWN_SIG, NOW_S + 10),
                     DISPATCH_LINK_INVALID);
    /* other spellings of the same numbers are refused (one value, one spelling) */
    assert_int_equal(check(PLAN_ID, "02", "1795334400", KNOWN_SIG, NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "2", "+1795334400", KNOWN_SIG, NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "2", "1795334400 ", KNOWN_SIG, NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    /* missing or malformed parts */
    assert_int_equal(check(NULL, "2", "1795334400", KNOWN_SIG, NOW_S - 1), DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, NULL, "1795334400", KNOWN_SIG, NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "2", NULL, KNOWN_SIG, NOW_S - 1), DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "2", "1795334400", NULL, NOW_S - 1), DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "2", "1795334400", "", NOW_S - 1), DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "2", "1795334400", "5954de4d", NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "2", "1795334400", KNOWN_SIG "00", NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "0", "1795334400", KNOWN_SIG, NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "-2", "1795334400", KNOWN_SIG, NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "99999999999", "1795334400", KNOWN_SIG, NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    assert_int_equal(check(PLAN_ID, "2", "17953344000000000", KNOWN_SIG, NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    assert_int_equal(check("not-a-plan", "2", "1795334400", KNOWN_SIG, NOW_S - 1),
                     DISPATCH_LINK_INVALID);
    /* with another secret nothing is genuine; without one, nothing is */
    int revision;
    assert_int_equal(dispatch_plan_link_check("another secret of at least 32 chars!", PLAN_ID, "2",
                                              "1795334400", KNOWN_SIG, NOW_S - 1, &revision),
                     DISPATCH_LINK_INVALID);
    assert_int_equal(
        dispatch_plan_link_check("", PLAN_ID, "2", "1795334400", KNOWN_SIG, NOW_S - 1, &revision),
        DISPATCH_LINK_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_minimal_is_normalised),
        cmocka_unit_test(test_plan_full),
        cmocka_unit_test(test_plan_refusals),
        cmocka_unit_test(test_plan_limits),
        cmocka_unit_test(test_decisions),
        cmocka_unit_test(test_cancel_and_link_bodies),
        cmocka_unit_test(test_link_sign_known_value),
        cmocka_unit_test(test_link_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
