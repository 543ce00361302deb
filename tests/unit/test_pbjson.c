/* test_pbjson.c — protobuf-c messages as JSON: the envelope as `events tail --json` prints
 * it, repeated fields, enum names, oneofs, every scalar type, bytes, bad UTF-8. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>

#include "ac_pbjson.h"
#include "aftercare/v1/envelope.pb-c.h"

/* A ticket.created envelope as intake publishes it; everything lives in *fx. */
typedef struct fixture {
    Aftercare__V1__Envelope env;
    Aftercare__V1__TicketCreated created;
    Aftercare__V1__Ticket ticket;
    Aftercare__V1__CustomerRef customer;
    Aftercare__V1__ProductRef product;
    Aftercare__V1__Warranty warranty;
    Aftercare__V1__Contact contact;
} fixture_t;

static void fixture_init(fixture_t *fx)
{
    aftercare__v1__envelope__init(&fx->env);
    aftercare__v1__ticket_created__init(&fx->created);
    aftercare__v1__ticket__init(&fx->ticket);
    aftercare__v1__customer_ref__init(&fx->customer);
    aftercare__v1__product_ref__init(&fx->product);
    aftercare__v1__warranty__init(&fx->warranty);
    aftercare__v1__contact__init(&fx->contact);

    fx->env.id = "0b7e8f6a-3c1d-4e2f-9a8b-1c2d3e4f5a6b";
    fx->env.source = "aftercare/intake";
    fx->env.type = "aftercare.ticket.created.v1";
    fx->env.subject = "SV-20261122-000042";
    fx->env.time = "2026-11-22T10:00:00.123456Z";
    fx->env.sequence = 42;
    fx->env.partition_key = "7d1c4a52-8f0e-4b8e-a1c1-0d5e6f7a8b9c";
    fx->env.ticket_version = 1;
    fx->env.correlation_id = "req-1";
    fx->env.spec_version = "1.0";

    fx->customer.id = "c0ffee00-0000-4000-8000-000000000001";
    fx->customer.name = "Acme GmbH";
    fx->customer.kind = "company";
    fx->customer.tier = AFTERCARE__V1__CUSTOMER_TIER__CUSTOMER_TIER_VIP;

    fx->product.id = "c0ffee00-0000-4000-8000-000000000002";
    fx->product.model = "HX-200";
    fx->product.serial_number = "HX200-0001";
    fx->product.purchase_date = "2025-03-01";
    fx->product.region = "eu-central";

    fx->warranty.in_warranty = 1;
    fx->warranty.reason = "covered until 2027-03-01";
    fx->warranty.expires_on = "2027-03-01";

    fx->contact.name = "Jo";
    fx->contact.phone = "+49 30 7654321";

    fx->ticket.id = fx->env.partition_key;
    fx->ticket.number = "SV-20261122-000042";
    fx->ticket.customer = &fx->customer;
    fx->ticket.product = &fx->product;
    fx->ticket.category = AFTERCARE__V1__CATEGORY__CATEGORY_FAULT_REPAIR;
    fx->ticket.urgency = AFTERCARE__V1__URGENCY__URGENCY_URGENT;
    fx->ticket.expedite = 0;
    fx->ticket.priority = AFTERCARE__V1__PRIORITY__PRIORITY_P2;
    fx->ticket.status = AFTERCARE__V1__TICKET_STATUS__TICKET_STATUS_NEW;
    fx->ticket.warranty = &fx->warranty;
    fx->ticket.channel = AFTERCARE__V1__CHANNEL__CHANNEL_PHONE;
    fx->ticket.description = "Pump makes a grinding noise";
    fx->ticket.contact = &fx->contact;
    fx->ticket.occurred_at = "2026-11-22T08:30:00Z";
    fx->ticket.created_at = "2026-11-22T10:00:00.123456Z";
    fx->ticket.updated_at = "2026-11-22T10:00:00.123456Z";
    fx->ticket.version = 1;

    fx->created.ticket = &fx->ticket;
    fx->env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_CREATED;
    fx->env.ticket_created = &fx->created;
}

static const char *str_at(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    if (s == NULL)
        fail_msg("key %s is missing or not a string", key);
    return s;
}

static json_int_t int_at(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v))
        fail_msg("key %s is missing or not an integer", key);
    return json_integer_value(v);
}

static void test_envelope_ticket_created(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_init(&fx);

    json_t *j = ac_pbjson_from_message(&fx.env.base);
    assert_non_null(j);
    assert_string_equal(str_at(j, "id"), "0b7e8f6a-3c1d-4e2f-9a8b-1c2d3e4f5a6b");
    assert_string_equal(str_at(j, "source"), "aftercare/intake");
    assert_string_equal(str_at(j, "type"), "aftercare.ticket.created.v1");
    assert_string_equal(str_at(j, "subject"), "SV-20261122-000042");
    assert_string_equal(str_at(j, "time"), "2026-11-22T10:00:00.123456Z");
    assert_int_equal(int_at(j, "sequence"), 42);
    assert_int_equal(int_at(j, "ticket_version"), 1);
    assert_string_equal(str_at(j, "partition_key"), "7d1c4a52-8f0e-4b8e-a1c1-0d5e6f7a8b9c");
    assert_string_equal(str_at(j, "correlation_id"), "req-1");
    assert_string_equal(str_at(j, "spec_version"), "1.0");
    /* Only the member of the oneof that is set. */
    assert_null(json_object_get(j, "ticket_updated"));
    assert_null(json_object_get(j, "ticket_status_changed"));
    assert_null(json_object_get(j, "ticket_resolved"));

    json_t *t = json_object_get(json_object_get(j, "ticket_created"), "ticket");
    assert_true(json_is_object(t));
    assert_string_equal(str_at(t, "number"), "SV-20261122-000042");
    assert_string_equal(str_at(t, "status"), "TICKET_STATUS_NEW");
    assert_string_equal(str_at(t, "priority"), "PRIORITY_P2");
    assert_string_equal(str_at(t, "category"), "CATEGORY_FAULT_REPAIR");
    assert_string_equal(str_at(t, "urgency"), "URGENCY_URGENT");
    assert_string_equal(str_at(t, "channel"), "CHANNEL_PHONE");
    assert_string_equal(str_at(t, "description"), "Pump makes a grinding noise");
    assert_int_equal(int_at(t, "version"), 1);
    /* proto3 defaults are omitted: expedite false, resolved_at empty. */
    assert_null(json_object_get(t, "expedite"));
    assert_null(json_object_get(t, "resolved_at"));
    assert_null(json_object_get(t, "closed_at"));

    json_t *c = json_object_get(t, "customer");
    assert_string_equal(str_at(c, "name"), "Acme GmbH");
    assert_string_equal(str_at(c, "tier"), "CUSTOMER_TIER_VIP");
    json_t *w = json_object_get(t, "warranty");
    assert_true(json_is_true(json_object_get(w, "in_warranty")));
    assert_string_equal(str_at(w, "expires_on"), "2027-03-01");
    assert_string_equal(str_at(json_object_get(t, "product"), "model"), "HX-200");
    assert_null(json_object_get(json_object_get(t, "product"), "install_site"));
    assert_string_equal(str_at(json_object_get(t, "contact"), "phone"), "+49 30 7654321");

    char *text = json_dumps(j, JSON_COMPACT);
    assert_non_null(text);
    free(text);
    json_decref(j);
}

/* Decoding the packed bytes yields the same JSON: nothing depends on how the message
 * was built (static strings vs. protobuf-c's allocations and its empty-string default). */
static void test_roundtrip_through_wire(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_init(&fx);

    size_t len = aftercare__v1__envelope__get_packed_size(&fx.env);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    assert_int_equal(aftercare__v1__envelope__pack(&fx.env, buf), len);
    Aftercare__V1__Envelope *decoded = aftercare__v1__envelope__unpack(NULL, len, buf);
    assert_non_null(decoded);

    json_t *a = ac_pbjson_from_message(&fx.env.base);
    json_t *b = ac_pbjson_from_message(&decoded->base);
    assert_non_null(a);
    assert_non_null(b);
    assert_true(json_equal(a, b));

    json_decref(a);
    json_decref(b);
    aftercare__v1__envelope__free_unpacked(decoded, NULL);
    free(buf);
}

static void test_repeated_strings(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_init(&fx);
    Aftercare__V1__TicketUpdated updated;
    aftercare__v1__ticket_updated__init(&updated);
    char *fields[] = {"urgency", "description", "contact"};
    updated.ticket = &fx.ticket;
    updated.n_changed_fields = 3;
    updated.changed_fields = fields;
    fx.env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_UPDATED;
    fx.env.ticket_updated = &updated;

    json_t *j = ac_pbjson_from_message(&fx.env.base);
    assert_non_null(j);
    assert_null(json_object_get(j, "ticket_created"));
    json_t *arr = json_object_get(json_object_get(j, "ticket_updated"), "changed_fields");
    assert_true(json_is_array(arr));
    assert_int_equal(json_array_size(arr), 3);
    assert_string_equal(json_string_value(json_array_get(arr, 0)), "urgency");
    assert_string_equal(json_string_value(json_array_get(arr, 1)), "description");
    assert_string_equal(json_string_value(json_array_get(arr, 2)), "contact");
    json_decref(j);

    /* An empty repeated field is omitted like any other default. */
    updated.n_changed_fields = 0;
    updated.changed_fields = NULL;
    j = ac_pbjson_from_message(&fx.env.base);
    assert_non_null(j);
    assert_null(json_object_get(json_object_get(j, "ticket_updated"), "changed_fields"));
    assert_true(json_is_object(json_object_get(json_object_get(j, "ticket_updated"), "ticket")));
    json_decref(j);
}

static void test_enum_names_and_unknown_values(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_init(&fx);
    Aftercare__V1__TicketStatusChanged changed;
    aftercare__v1__ticket_status_changed__init(&changed);
    changed.ticket = &fx.ticket;
    changed.from_status = AFTERCARE__V1__TICKET_STATUS__TICKET_STATUS_NEW;
    changed.to_status = AFTERCARE__V1__TICKET_STATUS__TICKET_STATUS_WAITING_CUSTOMER;
    changed.reason = "asked for photos";
    changed.actor = "agent";
    fx.env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_STATUS_CHANGED;
    fx.env.ticket_status_changed = &changed;
    /* A value from a newer schema this build does not know. */
    fx.ticket.channel = (Aftercare__V1__Channel)99;

    json_t *j = ac_pbjson_from_message(&fx.env.base);
    assert_non_null(j);
    json_t *sc = json_object_get(j, "ticket_status_changed");
    assert_string_equal(str_at(sc, "from_status"), "TICKET_STATUS_NEW");
    assert_string_equal(str_at(sc, "to_status"), "TICKET_STATUS_WAITING_CUSTOMER");
    assert_string_equal(str_at(sc, "actor"), "agent");
    assert_int_equal(int_at(json_object_get(sc, "ticket"), "channel"), 99);
    json_decref(j);
}

static void test_unset_oneof_and_defaults_omitted(void **state)
{
    (void)state;
    Aftercare__V1__Envelope env;
    aftercare__v1__envelope__init(&env);
    env.id = "e1";

    json_t *j = ac_pbjson_from_message(&env.base);
    assert_non_null(j);
    /* Only "id": no payload member, no zero sequence, no empty strings. */
    assert_int_equal(json_object_size(j), 1);
    assert_string_equal(str_at(j, "id"), "e1");
    json_decref(j);

    /* A oneof member that is set is present even when it holds only defaults. */
    Aftercare__V1__TicketClosed closed;
    aftercare__v1__ticket_closed__init(&closed);
    env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_CLOSED;
    env.ticket_closed = &closed;
    j = ac_pbjson_from_message(&env.base);
    assert_non_null(j);
    json_t *c = json_object_get(j, "ticket_closed");
    assert_true(json_is_object(c));
    assert_int_equal(json_object_size(c), 0);
    assert_null(json_object_get(j, "ticket_created"));
    json_decref(j);
}

static void test_invalid_utf8_is_replaced(void **state)
{
    (void)state;
    Aftercare__V1__Envelope env;
    aftercare__v1__envelope__init(&env);
    char bad[] = "ab\xff"
                 "c\xc3";
    env.subject = bad;
    json_t *j = ac_pbjson_from_message(&env.base);
    assert_non_null(j);
    assert_string_equal(str_at(j, "subject"), "ab\xEF\xBF\xBD"
                                              "c\xEF\xBF\xBD");
    char *text = json_dumps(j, JSON_COMPACT);
    assert_non_null(text);
    free(text);
    json_decref(j);
}

/* A hand-written descriptor covering the types our .proto files do not use yet. */
typedef struct scalars {
    ProtobufCMessage base;
    int32_t i32;
    uint32_t u32;
    int64_t i64;
    uint64_t u64;
    float f;
    double d;
    protobuf_c_boolean b;
    ProtobufCBinaryData bin;
    size_t n_nums;
    int64_t *nums;
    protobuf_c_boolean has_opt;
    int32_t opt;
    size_t n_blobs;
    ProtobufCBinaryData *blobs;
} scalars_t;

#define FIELD(nm, num, lbl, typ, q, member)                                                        \
    {                                                                                              \
        nm, num, PROTOBUF_C_LABEL_##lbl, PROTOBUF_C_TYPE_##typ, q, offsetof(scalars_t, member),    \
            NULL, NULL, 0, 0, NULL, NULL                                                           \
    }
static const ProtobufCFieldDescriptor scalars_fields[] = {
    FIELD("i32", 1, NONE, SINT32, 0, i32),
    FIELD("u32", 2, NONE, FIXED32, 0, u32),
    FIELD("i64", 3, NONE, SFIXED64, 0, i64),
    FIELD("u64", 4, NONE, UINT64, 0, u64),
    FIELD("f", 5, NONE, FLOAT, 0, f),
    FIELD("d", 6, NONE, DOUBLE, 0, d),
    FIELD("b", 7, NONE, BOOL, 0, b),
    FIELD("bin", 8, NONE, BYTES, 0, bin),
    FIELD("nums", 9, REPEATED, INT64, offsetof(scalars_t, n_nums), nums),
    FIELD("opt", 10, OPTIONAL, INT32, offsetof(scalars_t, has_opt), opt),
    FIELD("blobs", 11, REPEATED, BYTES, offsetof(scalars_t, n_blobs), blobs),
};
static const ProtobufCMessageDescriptor scalars_descriptor = {
    .magic = PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
    .name = "test.Scalars",
    .short_name = "Scalars",
    .c_name = "Scalars",
    .package_name = "test",
    .sizeof_message = sizeof(scalars_t),
    .n_fields = sizeof(scalars_fields) / sizeof(scalars_fields[0]),
    .fields = scalars_fields,
};

static void test_all_scalar_types(void **state)
{
    (void)state;
    int64_t nums[] = {-1, INT64_MAX, 0};
    uint8_t raw[] = {0xfb, 0xff, 0x00, 'M', 'a'};
    ProtobufCBinaryData blobs[] = {{1, raw + 3}, {2, raw + 3}, {0, NULL}};
    scalars_t m = {
        .base = PROTOBUF_C_MESSAGE_INIT(&scalars_descriptor),
        .i32 = -7,
        .u32 = 4000000000u,
        .i64 = INT64_MIN,
        .u64 = UINT64_MAX,
        .f = 1.5f,
        .d = -0.25,
        .b = 1,
        .bin = {sizeof raw, raw},
        .n_nums = 3,
        .nums = nums,
        .has_opt = 1,
        .opt = 0,
        .n_blobs = 3,
        .blobs = blobs,
    };
    json_t *j = ac_pbjson_from_message(&m.base);
    assert_non_null(j);
    assert_int_equal(int_at(j, "i32"), -7);
    assert_int_equal(int_at(j, "u32"), 4000000000LL);
    assert_true(int_at(j, "i64") == INT64_MIN);
    assert_true(json_is_real(json_object_get(j, "u64")));
    assert_true(json_real_value(json_object_get(j, "u64")) == 18446744073709551615.0);
    assert_true(json_real_value(json_object_get(j, "f")) == 1.5);
    assert_true(json_real_value(json_object_get(j, "d")) == -0.25);
    assert_true(json_is_true(json_object_get(j, "b")));
    assert_string_equal(str_at(j, "bin"), "+/8ATWE=");
    json_t *arr = json_object_get(j, "nums");
    assert_int_equal(json_array_size(arr), 3);
    assert_int_equal(json_integer_value(json_array_get(arr, 0)), -1);
    assert_true(json_integer_value(json_array_get(arr, 1)) == INT64_MAX);
    assert_int_equal(json_integer_value(json_array_get(arr, 2)), 0);
    /* has_opt set: present although zero. */
    assert_int_equal(int_at(j, "opt"), 0);
    json_t *b = json_object_get(j, "blobs");
    assert_string_equal(json_string_value(json_array_get(b, 0)), "TQ==");
    assert_string_equal(json_string_value(json_array_get(b, 1)), "TWE=");
    assert_string_equal(json_string_value(json_array_get(b, 2)), "");
    json_decref(j);

    /* Zero values and an unset optional disappear; NaN/Inf become strings. */
    scalars_t z = {.base = PROTOBUF_C_MESSAGE_INIT(&scalars_descriptor), .d = NAN};
    j = ac_pbjson_from_message(&z.base);
    assert_non_null(j);
    assert_int_equal(json_object_size(j), 1);
    assert_string_equal(str_at(j, "d"), "NaN");
    json_decref(j);
    z.d = -INFINITY;
    z.f = INFINITY;
    j = ac_pbjson_from_message(&z.base);
    assert_string_equal(str_at(j, "d"), "-Infinity");
    assert_string_equal(str_at(j, "f"), "Infinity");
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_envelope_ticket_created),
        cmocka_unit_test(test_roundtrip_through_wire),
        cmocka_unit_test(test_repeated_strings),
        cmocka_unit_test(test_enum_names_and_unknown_values),
        cmocka_unit_test(test_unset_oneof_and_defaults_omitted),
        cmocka_unit_test(test_invalid_utf8_is_replaced),
        cmocka_unit_test(test_all_scalar_types),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
