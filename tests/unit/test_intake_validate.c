/* test_intake_validate.c — intake's pure rules: field forms, the priority rule, the
 * transition table, and the validation of request bodies and query strings
 * (services/intake/validate.c, included so its statics are in reach). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "intake/validate.c"

#define NOW_US  INT64_C(1795334400000000) /* 2026-11-22T08:00:00Z */
#define TODAY   ((int32_t)(NOW_US / (INT64_C(86400) * 1000000)))
#define CUST_ID "0956202f-e611-4f74-97c8-59b488655823"
#define PROD_ID "53b9bb33-d964-4b16-b006-c4dfbac2d9ec"

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, 0, &jerr);
    if (!v)
        fail_msg("bad test JSON: %s: %s", text, jerr.text);
    return v;
}

/* Expects validation of `text` by fn to fail with code/field. */
#define EXPECT_ERR(call, want_code, want_field)                                                    \
    do {                                                                                           \
        intake_verr_t err_;                                                                        \
        memset(&err_, 0, sizeof err_);                                                             \
        int rc_ = (call);                                                                          \
        assert_int_equal(rc_, AC_ERR_INVALID);                                                     \
        assert_string_equal(err_.code, (want_code));                                               \
        assert_string_equal(err_.field, (want_field));                                             \
        assert_true(err_.message[0] != '\0');                                                      \
    } while (0)

/* --- field forms ------------------------------------------------------------------- */

static void test_utf8_len(void **state)
{
    (void)state;
    assert_int_equal(intake_utf8_len(""), 0);
    assert_int_equal(intake_utf8_len("abc"), 3);
    assert_int_equal(intake_utf8_len("\xc3\xa9t\xc3\xa9"), 3); /* été */
    assert_int_equal(intake_utf8_len("\xf0\x9f\x94\xa7"), 1);  /* one emoji, 4 bytes */
}

static void test_phone(void **state)
{
    (void)state;
    assert_true(intake_phone_is_valid("+49 30 1234567"));
    assert_true(intake_phone_is_valid("1234567"));
    assert_true(intake_phone_is_valid("(030) 123-4567"));
    assert_true(intake_phone_is_valid("+1 555 123 4567 8901"));   /* 20 characters */
    assert_false(intake_phone_is_valid("+1 555 123 4567 89012")); /* 21 */
    assert_false(intake_phone_is_valid("123456"));                /* too short */
    assert_false(intake_phone_is_valid("+ ( ) - 123456"));        /* 6 digits */
    assert_false(intake_phone_is_valid("12+34567"));              /* + only first */
    assert_false(intake_phone_is_valid("1234567x"));
    assert_false(intake_phone_is_valid(""));
}

static void test_email(void **state)
{
    (void)state;
    assert_true(intake_email_is_valid("ops@acme.example"));
    assert_true(intake_email_is_valid("a.b+c@sub.example.co"));
    assert_false(intake_email_is_valid("ops@acme"));      /* no dot in the domain */
    assert_false(intake_email_is_valid("@acme.example")); /* empty local part */
    assert_false(intake_email_is_valid("a@b@c.d"));       /* two @ */
    assert_false(intake_email_is_valid("a b@c.d"));       /* space */
    assert_false(intake_email_is_valid("a@c."));          /* empty tld */
    assert_false(intake_email_is_valid("a@.c"));          /* empty domain label */
    assert_false(intake_email_is_valid("a@c..d"));
    assert_false(intake_email_is_valid(""));
    char long_email[300];
    memset(long_email, 'a', sizeof long_email);
    memcpy(long_email + 250 - 6, "@b.com", 7); /* 249 characters: fine */
    assert_true(intake_email_is_valid(long_email));
    memset(long_email, 'a', sizeof long_email);
    memcpy(long_email + 255 - 6, "@b.com", 7); /* 254 + 1 */
    assert_false(intake_email_is_valid(long_email));
}

static void test_idem_key(void **state)
{
    char key[202];
    (void)state;
    assert_true(intake_idem_key_is_valid("k1"));
    assert_true(intake_idem_key_is_valid("~!@#$%^&*()"));
    assert_false(intake_idem_key_is_valid(""));
    assert_false(intake_idem_key_is_valid("tab\there"));
    assert_false(intake_idem_key_is_valid("caf\xc3\xa9"));
    memset(key, 'k', 200);
    key[200] = '\0';
    assert_true(intake_idem_key_is_valid(key));
    key[200] = 'k';
    key[201] = '\0';
    assert_false(intake_idem_key_is_valid(key));
}

static void test_cursor(void **state)
{
    int64_t seq = 0;
    (void)state;
    assert_int_equal(intake_cursor_parse("42", &seq), 0);
    assert_int_equal(seq, 42);
    assert_int_equal(intake_cursor_parse("0", &seq), -1);
    assert_int_equal(intake_cursor_parse("-1", &seq), -1);
    assert_int_equal(intake_cursor_parse("1a", &seq), -1);
    assert_int_equal(intake_cursor_parse("", &seq), -1);
    assert_int_equal(intake_cursor_parse("9999999999999999999", &seq), -1);
}

static void test_enums(void **state)
{
    (void)state;
    assert_int_equal(INTAKE_ENUM_PARSE(intake_status_names, "new"), INTAKE_ST_NEW);
    assert_int_equal(INTAKE_ENUM_PARSE(intake_status_names, "cancelled"), INTAKE_ST_CANCELLED);
    assert_int_equal(INTAKE_ENUM_PARSE(intake_status_names, "NEW"), 0);
    assert_int_equal(INTAKE_ENUM_PARSE(intake_status_names, NULL), 0);
    assert_string_equal(INTAKE_ENUM_NAME(intake_priority_names, INTAKE_P4), "P4");
    assert_null(INTAKE_ENUM_NAME(intake_priority_names, 0));
    assert_null(INTAKE_ENUM_NAME(intake_priority_names, INTAKE_P__COUNT));
}

/* --- business rules ---------------------------------------------------------------- */

static void test_priority(void **state)
{
    (void)state;
    /* base levels */
    assert_int_equal(intake_priority(INTAKE_URG_CRITICAL, INTAKE_CAT_FAULT_REPAIR, 0, 0),
                     INTAKE_P1);
    assert_int_equal(intake_priority(INTAKE_URG_URGENT, INTAKE_CAT_FAULT_REPAIR, 0, 0), INTAKE_P2);
    assert_int_equal(intake_priority(INTAKE_URG_NORMAL, INTAKE_CAT_FAULT_REPAIR, 0, 0), INTAKE_P3);
    assert_int_equal(intake_priority(INTAKE_URG_NORMAL, INTAKE_CAT_COMPLAINT, 0, 0), INTAKE_P3);
    assert_int_equal(intake_priority(INTAKE_URG_NORMAL, INTAKE_CAT_CONSULTATION, 0, 0), INTAKE_P4);
    assert_int_equal(intake_priority(INTAKE_URG_NORMAL, INTAKE_CAT_TRAINING, 0, 0), INTAKE_P4);
    /* consultation only lowers "normal" */
    assert_int_equal(intake_priority(INTAKE_URG_URGENT, INTAKE_CAT_TRAINING, 0, 0), INTAKE_P2);
    /* VIP and expedite raise one level each */
    assert_int_equal(intake_priority(INTAKE_URG_NORMAL, INTAKE_CAT_TRAINING, 1, 0), INTAKE_P3);
    assert_int_equal(intake_priority(INTAKE_URG_NORMAL, INTAKE_CAT_TRAINING, 0, 1), INTAKE_P3);
    assert_int_equal(intake_priority(INTAKE_URG_NORMAL, INTAKE_CAT_TRAINING, 1, 1), INTAKE_P2);
    assert_int_equal(intake_priority(INTAKE_URG_URGENT, INTAKE_CAT_FAULT_REPAIR, 1, 0), INTAKE_P1);
    /* never above P1 */
    assert_int_equal(intake_priority(INTAKE_URG_URGENT, INTAKE_CAT_FAULT_REPAIR, 1, 1), INTAKE_P1);
    assert_int_equal(intake_priority(INTAKE_URG_CRITICAL, INTAKE_CAT_MAINTENANCE, 1, 1), INTAKE_P1);
}

static void test_transitions(void **state)
{
    /* The whole table of docs/api.md: every pair not listed is illegal. */
    static const struct {
        int from;
        int to[6];
    } allowed[] = {
        {INTAKE_ST_NEW,
         {INTAKE_ST_NEEDS_INFO, INTAKE_ST_DIAGNOSING, INTAKE_ST_RESOLVED, INTAKE_ST_CANCELLED}},
        {INTAKE_ST_NEEDS_INFO, {INTAKE_ST_NEW, INTAKE_ST_CANCELLED}},
        {INTAKE_ST_DIAGNOSING,
         {INTAKE_ST_PLANNED, INTAKE_ST_NEEDS_INFO, INTAKE_ST_WAITING_CUSTOMER, INTAKE_ST_RESOLVED,
          INTAKE_ST_CANCELLED}},
        {INTAKE_ST_PLANNED,
         {INTAKE_ST_IN_PROGRESS, INTAKE_ST_DIAGNOSING, INTAKE_ST_WAITING_CUSTOMER,
          INTAKE_ST_CANCELLED}},
        {INTAKE_ST_IN_PROGRESS,
         {INTAKE_ST_WAITING_PARTS, INTAKE_ST_WAITING_CUSTOMER, INTAKE_ST_WAITING_EXTERNAL,
          INTAKE_ST_RESOLVED}},
        {INTAKE_ST_WAITING_CUSTOMER, {INTAKE_ST_IN_PROGRESS}},
        {INTAKE_ST_WAITING_PARTS, {INTAKE_ST_IN_PROGRESS}},
        {INTAKE_ST_WAITING_EXTERNAL, {INTAKE_ST_IN_PROGRESS}},
        {INTAKE_ST_RESOLVED, {INTAKE_ST_CLOSED, INTAKE_ST_REOPENED}},
        {INTAKE_ST_CLOSED, {INTAKE_ST_REOPENED}},
        {INTAKE_ST_REOPENED, {INTAKE_ST_DIAGNOSING, INTAKE_ST_IN_PROGRESS}},
        {INTAKE_ST_CANCELLED, {0}},
    };
    int nlegal = 0;
    (void)state;
    for (size_t i = 0; i < AC_ARRAY_LEN(allowed); i++) {
        for (int to = 1; to < INTAKE_ST__COUNT; to++) {
            int want = 0;
            for (size_t k = 0; k < 6 && allowed[i].to[k]; k++)
                want |= allowed[i].to[k] == to;
            nlegal += want;
            if (intake_transition_allowed(allowed[i].from, to) != want)
                fail_msg("%s -> %s: want %s", intake_status_names[allowed[i].from],
                         intake_status_names[to], want ? "allowed" : "illegal");
        }
    }
    assert_int_equal(nlegal, 4 + 2 + 5 + 4 + 4 + 3 + 2 + 1 + 2);
    assert_false(intake_transition_allowed(0, INTAKE_ST_NEW));
    assert_false(intake_transition_allowed(INTAKE_ST_NEW, 0));
    assert_false(intake_transition_allowed(INTAKE_ST_NEW, INTAKE_ST__COUNT));
}

/* --- customers --------------------------------------------------------------------- */

static void test_customer_ok(void **state)
{
    intake_customer_in_t in;
    intake_verr_t err;
    json_t *body = parse("{\"kind\":\"company\",\"name\":\"Acme GmbH\",\"tier\":\"vip\","
                         "\"phone\":\"+49 30 1234567\",\"email\":\"ops@acme.example\","
                         "\"contacts\":[{\"name\":\"Jo\",\"phone\":\"+49 30 7654321\","
                         "\"email\":\"jo@acme.example\",\"role\":\"facility\"}]}");
    (void)state;
    assert_int_equal(intake_validate_customer(body, &in, &err), 0);
    assert_string_equal(in.kind, "company");
    assert_string_equal(in.tier, "vip");
    assert_string_equal(in.phone, "+49 30 1234567");
    assert_int_equal(json_array_size(in.contacts), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(in.contacts, 0), "role")),
                        "facility");
    intake_customer_in_clear(&in);
    json_decref(body);

    body = parse("{\"kind\":\"person\",\"name\":\"Bob\",\"email\":\"bob@x.example\"}");
    assert_int_equal(intake_validate_customer(body, &in, &err), 0);
    assert_string_equal(in.tier, "standard");
    assert_null(in.phone);
    assert_int_equal(json_array_size(in.contacts), 0);
    intake_customer_in_clear(&in);
    json_decref(body);
}

static void test_customer_errors(void **state)
{
    static const struct {
        const char *body, *code, *field;
    } cases[] = {
        {"{\"name\":\"A\",\"email\":\"a@b.cd\"}", "missing_field", "kind"},
        {"{\"kind\":\"robot\",\"name\":\"A\",\"email\":\"a@b.cd\"}", "invalid_field", "kind"},
        {"{\"kind\":\"person\",\"email\":\"a@b.cd\"}", "missing_field", "name"},
        {"{\"kind\":\"person\",\"name\":\"\",\"email\":\"a@b.cd\"}", "invalid_field", "name"},
        {"{\"kind\":\"person\",\"name\":7,\"email\":\"a@b.cd\"}", "invalid_field", "name"},
        {"{\"kind\":\"person\",\"name\":\"A\"}", "missing_field", "phone"},
        {"{\"kind\":\"person\",\"name\":\"A\",\"tier\":\"gold\",\"email\":\"a@b.cd\"}",
         "invalid_field", "tier"},
        {"{\"kind\":\"person\",\"name\":\"A\",\"email\":\"nope\"}", "invalid_field", "email"},
        {"{\"kind\":\"person\",\"name\":\"A\",\"phone\":\"12\"}", "invalid_field", "phone"},
        {"{\"kind\":\"person\",\"name\":\"A\",\"email\":\"a@b.cd\",\"nmae\":1}", "unknown_field",
         "nmae"},
        {"{\"kind\":\"person\",\"name\":\"A\",\"email\":\"a@b.cd\",\"contacts\":{}}",
         "invalid_field", "contacts"},
        {"{\"kind\":\"person\",\"name\":\"A\",\"email\":\"a@b.cd\",\"contacts\":[{}]}",
         "missing_field", "contacts[0].name"},
        {"{\"kind\":\"person\",\"name\":\"A\",\"email\":\"a@b.cd\",\"contacts\":[{\"name\":\"x\"},"
         "{\"name\":\"y\",\"email\":\"bad\"}]}",
         "invalid_field", "contacts[1].email"},
        {"{\"kind\":\"person\",\"name\":\"A\",\"email\":\"a@b.cd\",\"contacts\":[{\"name\":\"x\","
         "\"age\":3}]}",
         "unknown_field", "contacts[0].age"},
        {"{\"kind\":\"person\",\"name\":\"A\",\"email\":\"a@b.cd\",\"contacts\":[1]}",
         "invalid_field", "contacts[0]"},
    };
    (void)state;
    for (size_t i = 0; i < AC_ARRAY_LEN(cases); i++) {
        intake_customer_in_t in;
        json_t *body = parse(cases[i].body);
        EXPECT_ERR(intake_validate_customer(body, &in, &err_), cases[i].code, cases[i].field);
        assert_null(in.contacts); /* nothing left to free after a failure */
        json_decref(body);
    }
}

static void test_customer_lengths(void **state)
{
    char name[1024], text[1200];
    intake_customer_in_t in;
    intake_verr_t err;
    (void)state;
    /* 200 two-byte characters are 200 characters, not 400. */
    name[0] = '\0';
    for (int i = 0; i < 200; i++)
        strcat(name, "\xc3\xa9");
    snprintf(text, sizeof text, "{\"kind\":\"person\",\"name\":\"%s\",\"email\":\"a@b.cd\"}", name);
    json_t *body = parse(text);
    assert_int_equal(intake_validate_customer(body, &in, &err), 0);
    intake_customer_in_clear(&in);
    json_decref(body);

    strcat(name, "x");
    snprintf(text, sizeof text, "{\"kind\":\"person\",\"name\":\"%s\",\"email\":\"a@b.cd\"}", name);
    body = parse(text);
    EXPECT_ERR(intake_validate_customer(body, &in, &err_), "invalid_field", "name");
    json_decref(body);
}

/* --- products and policies ----------------------------------------------------------- */

static void test_product(void **state)
{
    intake_product_in_t in;
    intake_verr_t err;
    char text[512], today[11];
    (void)state;

    ac_date_format(TODAY, today);
    snprintf(text, sizeof text,
             "{\"customer_id\":\"" CUST_ID "\",\"model\":\"HX-200\",\"serial_number\":\"S1\","
             "\"purchase_date\":\"%s\",\"region\":\"eu\"}",
             today);
    json_t *body = parse(text);
    assert_int_equal(intake_validate_product(body, TODAY, &in, &err), 0);
    assert_null(in.install_site);
    /* tomorrow is in the future */
    EXPECT_ERR(intake_validate_product(body, TODAY - 1, &in, &err_), "invalid_field",
               "purchase_date");
    json_decref(body);

    static const struct {
        const char *body, *code, *field;
    } cases[] = {
        {"{\"customer_id\":\"nope\",\"model\":\"M\",\"serial_number\":\"S\","
         "\"purchase_date\":\"2025-03-01\",\"region\":\"eu\"}",
         "invalid_field", "customer_id"},
        {"{\"model\":\"M\",\"serial_number\":\"S\",\"purchase_date\":\"2025-03-01\","
         "\"region\":\"eu\"}",
         "missing_field", "customer_id"},
        {"{\"customer_id\":\"" CUST_ID "\",\"model\":\"M\",\"serial_number\":\"S\","
         "\"purchase_date\":\"2025-02-30\",\"region\":\"eu\"}",
         "invalid_field", "purchase_date"},
        {"{\"customer_id\":\"" CUST_ID "\",\"model\":\"M\",\"serial_number\":\"S\","
         "\"purchase_date\":\"2025-03-01\"}",
         "missing_field", "region"},
        {"{\"customer_id\":\"" CUST_ID "\",\"model\":\"\",\"serial_number\":\"S\","
         "\"purchase_date\":\"2025-03-01\",\"region\":\"eu\"}",
         "invalid_field", "model"},
        {"{\"customer_id\":\"" CUST_ID "\",\"model\":\"M\",\"serial_number\":\"S\","
         "\"purchase_date\":\"2025-03-01\",\"region\":\"eu\",\"owner\":\"x\"}",
         "unknown_field", "owner"},
    };
    for (size_t i = 0; i < AC_ARRAY_LEN(cases); i++) {
        body = parse(cases[i].body);
        EXPECT_ERR(intake_validate_product(body, TODAY, &in, &err_), cases[i].code, cases[i].field);
        json_decref(body);
    }
}

static void test_policy(void **state)
{
    intake_policy_in_t in;
    intake_verr_t err;
    (void)state;
    json_t *body = parse("{\"months\":24,\"description\":\"standard\"}");
    assert_int_equal(intake_validate_policy("HX-200", body, &in, &err), 0);
    assert_int_equal(in.months, 24);
    EXPECT_ERR(intake_validate_policy("", body, &in, &err_), "invalid_field", "model");
    json_decref(body);

    body = parse("{\"months\":241}");
    EXPECT_ERR(intake_validate_policy("M", body, &in, &err_), "invalid_field", "months");
    json_decref(body);
    body = parse("{\"months\":1.5}");
    EXPECT_ERR(intake_validate_policy("M", body, &in, &err_), "invalid_field", "months");
    json_decref(body);
    body = parse("{\"description\":\"x\"}");
    EXPECT_ERR(intake_validate_policy("M", body, &in, &err_), "missing_field", "months");
    json_decref(body);
}

/* --- tickets ----------------------------------------------------------------------- */

static void test_ticket_full(void **state)
{
    intake_ticket_in_t in;
    intake_verr_t err;
    (void)state;
    json_t *body = parse(
        "{\"channel\":\"phone\",\"customer_id\":\"" CUST_ID "\",\"product_id\":\"" PROD_ID "\","
        "\"category\":\"fault_repair\",\"description\":\"Pump makes a grinding noise\","
        "\"occurred_at\":\"2026-11-22T09:30:00+02:00\",\"urgency\":\"urgent\",\"expedite\":true,"
        "\"contact\":{\"name\":\"Jo\",\"phone\":\"+49 30 7654321\"},"
        "\"attachments\":[{\"name\":\"noise.mp4\",\"url\":\"https://f.example/n.mp4\","
        "\"content_type\":\"video/mp4\"},{\"name\":\"b\",\"url\":\"u\"}]}");
    assert_int_equal(intake_validate_ticket(body, NOW_US, &in, &err), 0);
    assert_int_equal(in.channel, INTAKE_CH_PHONE);
    assert_int_equal(in.category, INTAKE_CAT_FAULT_REPAIR);
    assert_int_equal(in.urgency, INTAKE_URG_URGENT);
    assert_true(in.is_expedite);
    assert_string_equal(in.product_id, PROD_ID);
    assert_true(in.has_occurred_at);
    assert_true(in.occurred_at_us == NOW_US - INT64_C(30) * 60 * 1000000); /* 07:30Z */
    assert_int_equal(json_object_size(in.contact), 2);
    assert_int_equal(json_array_size(in.attachments), 2);
    /* a missing content_type is normalised to null */
    assert_true(json_is_null(json_object_get(json_array_get(in.attachments, 1), "content_type")));
    intake_ticket_in_clear(&in);
    json_decref(body);
}

static void test_ticket_defaults(void **state)
{
    intake_ticket_in_t in;
    intake_verr_t err;
    (void)state;
    json_t *body = parse("{\"channel\":\"web\",\"customer_id\":\"" CUST_ID "\","
                         "\"category\":\"consultation\",\"description\":\"How do I?\","
                         "\"product_id\":null}");
    assert_int_equal(intake_validate_ticket(body, NOW_US, &in, &err), 0);
    assert_int_equal(in.urgency, INTAKE_URG_NORMAL);
    assert_false(in.is_expedite);
    assert_null(in.product_id);
    assert_false(in.has_occurred_at);
    assert_null(in.contact);
    assert_int_equal(json_array_size(in.attachments), 0);
    intake_ticket_in_clear(&in);
    json_decref(body);
}

static void test_ticket_errors(void **state)
{
#define BASE "\"channel\":\"phone\",\"customer_id\":\"" CUST_ID "\",\"category\":\"training\","
    static const struct {
        const char *body, *code, *field;
    } cases[] = {
        {"{\"customer_id\":\"" CUST_ID "\",\"category\":\"training\",\"description\":\"d\"}",
         "missing_field", "channel"},
        {"{" BASE "\"description\":\"d\",\"channel\":\"fax\"}", "invalid_field", "channel"},
        {"{\"channel\":\"phone\",\"category\":\"training\",\"description\":\"d\"}", "missing_field",
         "customer_id"},
        {"{\"channel\":\"phone\",\"customer_id\":\"12\",\"category\":\"training\","
         "\"description\":\"d\"}",
         "invalid_field", "customer_id"},
        {"{\"channel\":\"phone\",\"customer_id\":\"" CUST_ID "\",\"category\":\"fault_repair\","
         "\"description\":\"d\"}",
         "missing_field", "product_id"},
        {"{\"channel\":\"phone\",\"customer_id\":\"" CUST_ID "\",\"category\":\"maintenance\","
         "\"description\":\"d\"}",
         "missing_field", "product_id"},
        {"{" BASE "\"description\":\"d\",\"product_id\":\"x\"}", "invalid_field", "product_id"},
        {"{\"channel\":\"phone\",\"customer_id\":\"" CUST_ID "\",\"description\":\"d\"}",
         "missing_field", "category"},
        {"{" BASE "\"description\":\"\"}", "invalid_field", "description"},
        {"{" BASE "\"description\":null}", "missing_field", "description"},
        {"{" BASE "\"description\":\"d\",\"urgency\":\"high\"}", "invalid_field", "urgency"},
        {"{" BASE "\"description\":\"d\",\"expedite\":1}", "invalid_field", "expedite"},
        {"{" BASE "\"description\":\"d\",\"occurred_at\":\"2026-11-22\"}", "invalid_field",
         "occurred_at"},
        {"{" BASE "\"description\":\"d\",\"occurred_at\":\"2026-11-22T08:05:01Z\"}",
         "invalid_field", "occurred_at"},
        {"{" BASE "\"description\":\"d\",\"prio\":\"P1\"}", "unknown_field", "prio"},
        {"{" BASE "\"description\":\"d\",\"contact\":\"Jo\"}", "invalid_field", "contact"},
        {"{" BASE "\"description\":\"d\",\"contact\":{\"email\":\"jo@\"}}", "invalid_field",
         "contact.email"},
        {"{" BASE "\"description\":\"d\",\"contact\":{\"phone\":\"phone\"}}", "invalid_field",
         "contact.phone"},
        {"{" BASE "\"description\":\"d\",\"contact\":{\"role\":\"x\"}}", "unknown_field",
         "contact.role"},
        {"{" BASE "\"description\":\"d\",\"attachments\":{}}", "invalid_field", "attachments"},
        {"{" BASE "\"description\":\"d\",\"attachments\":[{\"url\":\"u\"}]}", "missing_field",
         "attachments[0].name"},
        {"{" BASE "\"description\":\"d\",\"attachments\":[{\"name\":\"n\",\"url\":\"u\"},"
         "{\"name\":\"n\",\"url\":\"\"}]}",
         "invalid_field", "attachments[1].url"},
        {"{" BASE "\"description\":\"d\",\"attachments\":[{\"name\":\"n\",\"url\":\"u\","
         "\"size\":1}]}",
         "unknown_field", "attachments[0].size"},
    };
#undef BASE
    (void)state;
    for (size_t i = 0; i < AC_ARRAY_LEN(cases); i++) {
        intake_ticket_in_t in;
        json_t *body = parse(cases[i].body);
        EXPECT_ERR(intake_validate_ticket(body, NOW_US, &in, &err_), cases[i].code, cases[i].field);
        assert_null(in.contact);
        assert_null(in.attachments);
        json_decref(body);
    }
}

static void test_ticket_limits(void **state)
{
    intake_ticket_in_t in;
    intake_verr_t err;
    char text[20000];
    int n;
    (void)state;

    /* occurred_at exactly 5 minutes ahead is fine */
    json_t *body = parse("{\"channel\":\"api\",\"customer_id\":\"" CUST_ID "\","
                         "\"category\":\"complaint\",\"description\":\"d\","
                         "\"occurred_at\":\"2026-11-22T08:05:00Z\"}");
    assert_int_equal(intake_validate_ticket(body, NOW_US, &in, &err), 0);
    intake_ticket_in_clear(&in);
    json_decref(body);

    /* 21 attachments */
    n = snprintf(text, sizeof text,
                 "{\"channel\":\"api\",\"customer_id\":\"" CUST_ID "\",\"category\":"
                 "\"complaint\",\"description\":\"d\",\"attachments\":[");
    for (int i = 0; i < 21; i++)
        n += snprintf(text + n, sizeof text - (size_t)n, "%s{\"name\":\"a\",\"url\":\"u\"}",
                      i ? "," : "");
    snprintf(text + n, sizeof text - (size_t)n, "]}");
    body = parse(text);
    EXPECT_ERR(intake_validate_ticket(body, NOW_US, &in, &err_), "invalid_field", "attachments");
    json_decref(body);

    /* description of 4000 characters passes, 4001 does not */
    n = snprintf(text, sizeof text,
                 "{\"channel\":\"api\",\"customer_id\":\"" CUST_ID "\",\"category\":"
                 "\"complaint\",\"description\":\"");
    memset(text + n, 'd', 4000);
    snprintf(text + n + 4000, sizeof text - (size_t)n - 4000, "\"}");
    body = parse(text);
    assert_int_equal(intake_validate_ticket(body, NOW_US, &in, &err), 0);
    intake_ticket_in_clear(&in);
    json_decref(body);
    memset(text + n, 'd', 4001);
    snprintf(text + n + 4001, sizeof text - (size_t)n - 4001, "\"}");
    body = parse(text);
    EXPECT_ERR(intake_validate_ticket(body, NOW_US, &in, &err_), "invalid_field", "description");
    json_decref(body);
}

static void test_patch(void **state)
{
    intake_patch_in_t in;
    intake_verr_t err;
    (void)state;
    json_t *body = parse("{\"urgency\":\"critical\",\"expedite\":false,\"expected_version\":3,"
                         "\"contact\":{\"phone\":\"+1 555 1234567\"}}");
    assert_int_equal(intake_validate_patch(body, &in, &err), 0);
    assert_int_equal(in.present,
                     INTAKE_PATCH_URGENCY | INTAKE_PATCH_EXPEDITE | INTAKE_PATCH_CONTACT);
    assert_int_equal(in.urgency, INTAKE_URG_CRITICAL);
    assert_false(in.is_expedite);
    assert_true(in.expected_version == 3);
    intake_patch_in_clear(&in);
    json_decref(body);

    body = parse("{}");
    assert_int_equal(intake_validate_patch(body, &in, &err), 0);
    assert_int_equal(in.present, 0);
    assert_true(in.expected_version == 0);
    json_decref(body);

    static const struct {
        const char *body, *code, *field;
    } cases[] = {
        {"{\"status\":\"closed\"}", "unknown_field", "status"},
        {"{\"channel\":\"web\"}", "unknown_field", "channel"},
        {"{\"priority\":\"P1\"}", "unknown_field", "priority"},
        {"{\"description\":\"\"}", "invalid_field", "description"},
        {"{\"category\":\"other\"}", "invalid_field", "category"},
        {"{\"expected_version\":0}", "invalid_field", "expected_version"},
        {"{\"expected_version\":\"3\"}", "invalid_field", "expected_version"},
        {"{\"contact\":{\"email\":\"x\"}}", "invalid_field", "contact.email"},
    };
    for (size_t i = 0; i < AC_ARRAY_LEN(cases); i++) {
        body = parse(cases[i].body);
        EXPECT_ERR(intake_validate_patch(body, &in, &err_), cases[i].code, cases[i].field);
        intake_patch_in_clear(&in);
        json_decref(body);
    }
}

static void test_transition(void **state)
{
    intake_transition_in_t in;
    intake_verr_t err;
    (void)state;
    json_t *body = parse("{\"to\":\"diagnosing\",\"reason\":\"look\",\"expected_version\":3}");
    assert_int_equal(intake_validate_transition(body, &in, &err), 0);
    assert_int_equal(in.to, INTAKE_ST_DIAGNOSING);
    assert_string_equal(in.reason, "look");
    assert_true(in.expected_version == 3);
    json_decref(body);

    body = parse("{\"to\":\"resolved\"}");
    assert_int_equal(intake_validate_transition(body, &in, &err), 0);
    assert_string_equal(in.reason, "");
    json_decref(body);

    static const struct {
        const char *body, *code, *field;
    } cases[] = {
        {"{}", "missing_field", "to"},
        {"{\"to\":\"done\"}", "invalid_field", "to"},
        {"{\"to\":\"cancelled\"}", "missing_field", "reason"},
        {"{\"to\":\"reopened\",\"reason\":\"\"}", "missing_field", "reason"},
        {"{\"to\":\"new\",\"why\":\"x\"}", "unknown_field", "why"},
        {"{\"to\":\"new\",\"reason\":5}", "invalid_field", "reason"},
    };
    for (size_t i = 0; i < AC_ARRAY_LEN(cases); i++) {
        body = parse(cases[i].body);
        EXPECT_ERR(intake_validate_transition(body, &in, &err_), cases[i].code, cases[i].field);
        json_decref(body);
    }
    char reason[1100];
    memset(reason, 'r', 1001);
    reason[1001] = '\0';
    body = json_pack("{s:s,s:s}", "to", "cancelled", "reason", reason);
    EXPECT_ERR(intake_validate_transition(body, &in, &err_), "invalid_field", "reason");
    json_decref(body);
}

/* --- query strings ----------------------------------------------------------------- */

/* The query string handed to fake_query() (which never writes it). */
static void *qarg(const char *query)
{
    return (void *)(uintptr_t)query;
}

/* "a=1&b=2" as a query function. */
static const char *fake_query(void *arg, const char *name)
{
    static char value[256];
    const char *q = arg;
    size_t len = strlen(name);
    while (q && *q) {
        const char *end = strchr(q, '&');
        size_t seg = end ? (size_t)(end - q) : strlen(q);
        if (seg > len && strncmp(q, name, len) == 0 && q[len] == '=') {
            snprintf(value, sizeof value, "%.*s", (int)(seg - len - 1), q + len + 1);
            return value;
        }
        q = end ? end + 1 : NULL;
    }
    return NULL;
}

static void test_ticket_filter(void **state)
{
    intake_ticket_filter_t f;
    intake_verr_t err;
    (void)state;
    assert_int_equal(intake_validate_ticket_filter(fake_query, qarg(""), &f, &err), 0);
    assert_int_equal(f.page.limit, 50);
    assert_true(f.page.cursor == 0);
    assert_null(f.status);
    assert_string_equal(f.created_from, "");

    assert_int_equal(intake_validate_ticket_filter(
                         fake_query,
                         qarg("status=new&priority=P1&category=training&limit=200&cursor=17"
                              "&customer_id=" CUST_ID "&created_from=2026-11-22T10:00:00+02:00"),
                         &f, &err),
                     0);
    assert_string_equal(f.status, "new");
    assert_string_equal(f.priority, "P1");
    assert_int_equal(f.page.limit, 200);
    assert_true(f.page.cursor == 17);
    assert_string_equal(f.created_from, "2026-11-22T08:00:00.000000Z");

    /* a '+' that became a space in a query string is still an offset */
    assert_int_equal(intake_validate_ticket_filter(
                         fake_query, qarg("created_to=2026-11-22T10:00:00 02:00"), &f, &err),
                     0);
    assert_string_equal(f.created_to, "2026-11-22T08:00:00.000000Z");
    /* empty values count as absent */
    assert_int_equal(intake_validate_ticket_filter(fake_query, qarg("status=&limit="), &f, &err),
                     0);
    assert_null(f.status);
    assert_int_equal(f.page.limit, 50);

    static const struct {
        const char *query, *field;
    } cases[] = {
        {"limit=0", "limit"},
        {"limit=201", "limit"},
        {"limit=1x", "limit"},
        {"limit=-1", "limit"},
        {"cursor=x", "cursor"},
        {"cursor=0", "cursor"},
        {"status=open", "status"},
        {"priority=P0", "priority"},
        {"category=x", "category"},
        {"customer_id=1", "customer_id"},
        {"created_from=2026-11-22", "created_from"},
        {"created_to=tomorrow", "created_to"},
    };
    for (size_t i = 0; i < AC_ARRAY_LEN(cases); i++)
        EXPECT_ERR(intake_validate_ticket_filter(fake_query, qarg(cases[i].query), &f, &err_),
                   "invalid_field", cases[i].field);
}

static void test_list_filters(void **state)
{
    intake_list_filter_t f;
    intake_verr_t err;
    (void)state;
    assert_int_equal(
        intake_validate_customer_filter(fake_query, qarg("tier=vip&limit=5"), &f, &err), 0);
    assert_string_equal(f.tier, "vip");
    assert_int_equal(f.page.limit, 5);
    EXPECT_ERR(intake_validate_customer_filter(fake_query, qarg("tier=gold"), &f, &err_),
               "invalid_field", "tier");
    assert_int_equal(
        intake_validate_product_filter(fake_query, qarg("customer_id=" CUST_ID), &f, &err), 0);
    assert_string_equal(f.customer_id, CUST_ID);
    EXPECT_ERR(intake_validate_product_filter(fake_query, qarg("customer_id=x"), &f, &err_),
               "invalid_field", "customer_id");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_len),
        cmocka_unit_test(test_phone),
        cmocka_unit_test(test_email),
        cmocka_unit_test(test_idem_key),
        cmocka_unit_test(test_cursor),
        cmocka_unit_test(test_enums),
        cmocka_unit_test(test_priority),
        cmocka_unit_test(test_transitions),
        cmocka_unit_test(test_customer_ok),
        cmocka_unit_test(test_customer_errors),
        cmocka_unit_test(test_customer_lengths),
        cmocka_unit_test(test_product),
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_ticket_full),
        cmocka_unit_test(test_ticket_defaults),
        cmocka_unit_test(test_ticket_errors),
        cmocka_unit_test(test_ticket_limits),
        cmocka_unit_test(test_patch),
        cmocka_unit_test(test_transition),
        cmocka_unit_test(test_ticket_filter),
        cmocka_unit_test(test_list_filters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
