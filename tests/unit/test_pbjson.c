/* test_pbjson.c — protobuf-c messages as JSON: the envelope as `events tail --json` prints
 * it, repeated fields, enum names, oneofs, every scalar type, bytes, bad UTF-8; and back
 * (ac_pbjson_to_message): round trips to the same bytes, the other accepted forms, and
 * the errors with their field paths. Run under ASan/LSan, which checks that
 * protobuf_c_message_free_unpacked() releases every result, and every half-built message
 * on the error paths. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>

#include "ac_err.h"
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

/* --- JSON -> message ---------------------------------------------------------------------- */

/* Test JSON is written with ' for " to stay readable; there is no ' in any value. */
static json_t *json_from(const char *text)
{
    char *copy = strdup(text);
    assert_non_null(copy);
    for (char *c = copy; *c != '\0'; c++)
        if (*c == '\'')
            *c = '"';
    json_error_t jerr;
    json_t *j = json_loads(copy, JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    if (j == NULL)
        fail_msg("bad test JSON (%s): %s", jerr.text, copy);
    free(copy);
    return j;
}

/* ac_pbjson_to_message() on test JSON text. */
static int to_message(const ProtobufCMessageDescriptor *desc, const char *text,
                      ProtobufCMessage **out, char *err, size_t err_len)
{
    json_t *j = json_from(text);
    int rc = ac_pbjson_to_message(desc, j, out, err, err_len);
    json_decref(j);
    return rc;
}

/* to_message() that must succeed; the caller frees the result. */
static void *to_message_ok(const ProtobufCMessageDescriptor *desc, const char *text)
{
    ProtobufCMessage *msg = NULL;
    char err[256];
    int rc = to_message(desc, text, &msg, err, sizeof err);
    if (rc != 0)
        fail_msg("to_message(%s) = %d: %s", text, rc, err);
    assert_non_null(msg);
    assert_ptr_equal(msg->descriptor, desc);
    return msg;
}

static void assert_same_packing(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
    size_t len = protobuf_c_message_get_packed_size(a);
    assert_int_equal(protobuf_c_message_get_packed_size(b), len);
    uint8_t *pa = malloc(len + 1), *pb = malloc(len + 1);
    assert_non_null(pa);
    assert_non_null(pb);
    assert_int_equal(protobuf_c_message_pack(a, pa), len);
    assert_int_equal(protobuf_c_message_pack(b, pb), len);
    assert_memory_equal(pa, pb, len);
    free(pa);
    free(pb);
}

/* msg -> JSON -> a new message, which packs to msg's bytes and gives the same JSON. */
static void assert_roundtrip(const ProtobufCMessage *msg)
{
    json_t *j = ac_pbjson_from_message(msg);
    assert_non_null(j);
    ProtobufCMessage *back = NULL;
    char err[256];
    int rc = ac_pbjson_to_message(msg->descriptor, j, &back, err, sizeof err);
    if (rc != 0)
        fail_msg("to_message = %d: %s", rc, err);
    assert_same_packing(msg, back);
    json_t *again = ac_pbjson_from_message(back);
    assert_non_null(again);
    assert_true(json_equal(j, again));
    json_decref(again);
    json_decref(j);
    protobuf_c_message_free_unpacked(back, NULL);
}

static void test_to_message_roundtrip_envelopes(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_init(&fx);
    /* Big numbers that must come back exactly. */
    fx.env.sequence = INT64_MAX;
    fx.env.ticket_version = -5;
    assert_roundtrip(&fx.env.base);

    /* EngineerCreated: repeated messages, repeated strings, enums, a nested contact. */
    Aftercare__V1__EngineerSkill skills[3];
    Aftercare__V1__EngineerSkill *skill_ptrs[3];
    static const char *const kinds[] = {"product_line", "category", "category"};
    static const char *const names[] = {"HX-200", "fault_repair", "installation"};
    for (int i = 0; i < 3; i++) {
        aftercare__v1__engineer_skill__init(&skills[i]);
        skills[i].kind = (char *)(uintptr_t)kinds[i];
        skills[i].name = (char *)(uintptr_t)names[i];
        skills[i].level = i + 3;
        skill_ptrs[i] = &skills[i];
    }
    char *regions[] = {"eu-central", "eu-west"};
    Aftercare__V1__Engineer eng;
    aftercare__v1__engineer__init(&eng);
    eng.id = "e0000000-0000-4000-8000-000000000007";
    eng.name = "Kim Berger";
    eng.role = AFTERCARE__V1__ENGINEER_ROLE__ENGINEER_ROLE_FIELD_ENGINEER;
    eng.n_skills = 3;
    eng.skills = skill_ptrs;
    eng.n_regions = 2;
    eng.regions = regions;
    eng.capacity = 4;
    eng.availability = AFTERCARE__V1__ENGINEER_AVAILABILITY__ENGINEER_AVAILABILITY_AVAILABLE;
    eng.contact = &fx.contact;
    eng.shift_json = "{\"mon\":[\"08:00\",\"16:00\"]}";
    eng.version = 2;
    eng.created_at = "2026-11-20T09:00:00Z";
    Aftercare__V1__EngineerCreated created;
    aftercare__v1__engineer_created__init(&created);
    created.engineer = &eng;
    fx.env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_ENGINEER_CREATED;
    fx.env.engineer_created = &created;
    assert_roundtrip(&fx.env.base);

    /* A oneof member holding only defaults is still the case that is set. */
    Aftercare__V1__TicketClosed closed;
    aftercare__v1__ticket_closed__init(&closed);
    fx.env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_CLOSED;
    fx.env.ticket_closed = &closed;
    assert_roundtrip(&fx.env.base);

    /* And straight from JSON text, checking the fields themselves. */
    Aftercare__V1__Envelope *env = to_message_ok(
        &aftercare__v1__envelope__descriptor,
        "{'id': 'e1', 'engineer_created': {'engineer': {'name': 'Kim', 'regions': ['a', 'b'],"
        " 'skills': [{'kind': 'category', 'level': 5}, {}], 'contact': {'phone': '+49'}}}}");
    assert_string_equal(env->id, "e1");
    assert_string_equal(env->source, ""); /* unset: still the default */
    assert_int_equal(env->payload_case, AFTERCARE__V1__ENVELOPE__PAYLOAD_ENGINEER_CREATED);
    const Aftercare__V1__Engineer *e = env->engineer_created->engineer;
    assert_string_equal(e->name, "Kim");
    assert_int_equal(e->n_regions, 2);
    assert_string_equal(e->regions[1], "b");
    assert_int_equal(e->n_skills, 2);
    assert_string_equal(e->skills[0]->kind, "category");
    assert_int_equal(e->skills[0]->level, 5);
    assert_string_equal(e->skills[1]->kind, "");
    assert_string_equal(e->contact->phone, "+49");
    aftercare__v1__envelope__free_unpacked(env, NULL);
}

static void test_to_message_scalars_roundtrip(void **state)
{
    (void)state;
    int64_t nums[] = {-1, INT64_MAX, 0};
    uint8_t raw[] = {0xfb, 0xff, 0x00, 'M', 'a'};
    ProtobufCBinaryData blobs[] = {{1, raw + 3}, {2, raw + 3}, {0, NULL}};
    scalars_t m = {
        .base = PROTOBUF_C_MESSAGE_INIT(&scalars_descriptor),
        .i32 = INT32_MIN,
        .u32 = UINT32_MAX,
        .i64 = INT64_MIN,
        .u64 = UINT64_MAX, /* JSON real 2^64: read back as UINT64_MAX */
        .f = -1.5f,
        .d = 0.1,
        .b = 1,
        .bin = {sizeof raw, raw},
        .n_nums = 3,
        .nums = nums,
        .has_opt = 1,
        .opt = 0,
        .n_blobs = 3,
        .blobs = blobs,
    };
    /* scalars_descriptor has no message_init: the result starts all zeros. */
    assert_roundtrip(&m.base);

    /* NaN and the infinities travel as strings. */
    scalars_t *z = to_message_ok(&scalars_descriptor,
                                 "{'f': 'Infinity', 'd': 'NaN', 'u64': 9223372036854775808.0}");
    assert_true(isinf(z->f) && z->f > 0);
    assert_true(isnan(z->d));
    assert_true(z->u64 == 9223372036854775808ull);
    protobuf_c_message_free_unpacked(&z->base, NULL);
    z = to_message_ok(&scalars_descriptor, "{'d': '-Infinity', 'f': 3, 'i32': -7}");
    assert_true(isinf(z->d) && z->d < 0);
    assert_true(z->f == 3.0f);
    assert_int_equal(z->i32, -7);
    protobuf_c_message_free_unpacked(&z->base, NULL);
}

static void test_to_message_enums_by_name_and_number(void **state)
{
    (void)state;
    Aftercare__V1__Envelope *env = to_message_ok(
        &aftercare__v1__envelope__descriptor,
        "{'ticket_status_changed': {'from_status': 'TICKET_STATUS_NEW', 'to_status': 3,"
        " 'ticket': {'priority': 'PRIORITY_P2', 'channel': 99, 'urgency': -1}}}");
    const Aftercare__V1__TicketStatusChanged *sc = env->ticket_status_changed;
    assert_int_equal(env->payload_case, AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_STATUS_CHANGED);
    assert_int_equal(sc->from_status, AFTERCARE__V1__TICKET_STATUS__TICKET_STATUS_NEW);
    assert_int_equal(sc->to_status, 3);
    assert_int_equal(sc->ticket->priority, AFTERCARE__V1__PRIORITY__PRIORITY_P2);
    /* Numbers without a name (a newer schema's) are kept, as from_message writes them. */
    assert_int_equal(sc->ticket->channel, 99);
    assert_int_equal((int)sc->ticket->urgency, -1); /* the C enum may be unsigned */
    aftercare__v1__envelope__free_unpacked(env, NULL);
}

static void test_to_message_int64_forms(void **state)
{
    (void)state;
    Aftercare__V1__Envelope *env =
        to_message_ok(&aftercare__v1__envelope__descriptor,
                      "{'sequence': '18446744073709551615', 'ticket_version': "
                      "'-9223372036854775808'}");
    assert_true(env->sequence == UINT64_MAX);
    assert_true(env->ticket_version == INT64_MIN);
    aftercare__v1__envelope__free_unpacked(env, NULL);

    env = to_message_ok(&aftercare__v1__envelope__descriptor,
                        "{'sequence': 9223372036854775807, 'ticket_version': '0042'}");
    assert_true(env->sequence == INT64_MAX);
    assert_int_equal(env->ticket_version, 42);
    aftercare__v1__envelope__free_unpacked(env, NULL);

    /* The repeated int64 and sfixed64 of the hand-written message, too. */
    scalars_t *m = to_message_ok(&scalars_descriptor,
                                 "{'nums': ['-1', 2, '9223372036854775807'], 'i64': '-3'}");
    assert_int_equal(m->n_nums, 3);
    assert_int_equal(m->nums[0], -1);
    assert_int_equal(m->nums[1], 2);
    assert_true(m->nums[2] == INT64_MAX);
    assert_int_equal(m->i64, -3);
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

static void test_to_message_bytes_base64(void **state)
{
    (void)state;
    static const uint8_t raw[] = {0xfb, 0xff, 0x00, 'M', 'a'};
    /* Standard alphabet with padding; URL-safe without. */
    static const char *const forms[] = {"{'bin': '+/8ATWE='}", "{'bin': '-_8ATWE'}"};
    for (size_t i = 0; i < AC_ARRAY_LEN(forms); i++) {
        scalars_t *m = to_message_ok(&scalars_descriptor, forms[i]);
        assert_int_equal(m->bin.len, sizeof raw);
        assert_memory_equal(m->bin.data, raw, sizeof raw);
        protobuf_c_message_free_unpacked(&m->base, NULL);
    }
    scalars_t *m = to_message_ok(&scalars_descriptor, "{'blobs': ['TQ==', 'TWE', '', 'TWFu']}");
    assert_int_equal(m->n_blobs, 4);
    assert_int_equal(m->blobs[0].len, 1);
    assert_memory_equal(m->blobs[0].data, "M", 1);
    assert_int_equal(m->blobs[1].len, 2);
    assert_memory_equal(m->blobs[1].data, "Ma", 2);
    assert_int_equal(m->blobs[2].len, 0);
    assert_null(m->blobs[2].data);
    assert_int_equal(m->blobs[3].len, 3);
    assert_memory_equal(m->blobs[3].data, "Man", 3);
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

static void test_to_message_null_is_unset(void **state)
{
    (void)state;
    /* A null oneof member does not take the oneof: another member may be set. */
    Aftercare__V1__Envelope *env =
        to_message_ok(&aftercare__v1__envelope__descriptor,
                      "{'id': null, 'subject': 'S', 'sequence': null, 'ticket_created': null,"
                      " 'ticket_closed': {'ticket': null}, 'ticket_updated': null}");
    assert_string_equal(env->id, "");
    assert_string_equal(env->subject, "S");
    assert_int_equal(env->sequence, 0);
    assert_int_equal(env->payload_case, AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_CLOSED);
    assert_non_null(env->ticket_closed);
    assert_null(env->ticket_closed->ticket);
    aftercare__v1__envelope__free_unpacked(env, NULL);

    /* Optional scalar: null leaves has_ clear; a zero sets it. */
    scalars_t *m = to_message_ok(&scalars_descriptor, "{'opt': null, 'nums': null}");
    assert_false(m->has_opt);
    assert_int_equal(m->n_nums, 0);
    assert_null(m->nums);
    protobuf_c_message_free_unpacked(&m->base, NULL);
    m = to_message_ok(&scalars_descriptor, "{'opt': 0, 'nums': []}");
    assert_true(m->has_opt);
    assert_int_equal(m->opt, 0);
    assert_int_equal(m->n_nums, 0);
    protobuf_c_message_free_unpacked(&m->base, NULL);
}

/* A proto2-style message: a required int, an optional string with a default. */
typedef struct req {
    ProtobufCMessage base;
    int32_t need;
    char *name;
} req_t;

static const char REQ_NAME_DEFAULT[] = "anonymous";
static const ProtobufCMessageDescriptor req_descriptor;

static void req_init(ProtobufCMessage *m)
{
    req_t *r = (req_t *)(void *)m;
    *r = (req_t){.base = PROTOBUF_C_MESSAGE_INIT(&req_descriptor)};
    r->name = (char *)(uintptr_t)REQ_NAME_DEFAULT;
}

static const ProtobufCFieldDescriptor req_fields[] = {
    {"need", 1, PROTOBUF_C_LABEL_REQUIRED, PROTOBUF_C_TYPE_INT32, 0, offsetof(req_t, need), NULL,
     NULL, 0, 0, NULL, NULL},
    {"name", 2, PROTOBUF_C_LABEL_OPTIONAL, PROTOBUF_C_TYPE_STRING, 0, offsetof(req_t, name), NULL,
     REQ_NAME_DEFAULT, 0, 0, NULL, NULL},
};
static const ProtobufCMessageDescriptor req_descriptor = {
    .magic = PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
    .name = "test.Req",
    .short_name = "Req",
    .c_name = "Req",
    .package_name = "test",
    .sizeof_message = sizeof(req_t),
    .n_fields = AC_ARRAY_LEN(req_fields),
    .fields = req_fields,
    .message_init = req_init,
};

static void test_to_message_proto2_required_and_defaults(void **state)
{
    (void)state;
    /* The unset string keeps its default, which free_unpacked must not free (ASan). */
    req_t *r = to_message_ok(&req_descriptor, "{'need': 0}");
    assert_ptr_equal(r->name, REQ_NAME_DEFAULT);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = to_message_ok(&req_descriptor, "{'need': 1, 'name': 'anonymous'}");
    assert_ptr_not_equal(r->name, REQ_NAME_DEFAULT); /* our copy, present */
    assert_string_equal(r->name, "anonymous");
    protobuf_c_message_free_unpacked(&r->base, NULL);

    ProtobufCMessage *msg = NULL;
    char err[256];
    assert_int_equal(
        to_message(&req_descriptor, "{'name': 'x', 'need': null}", &msg, err, sizeof err),
        AC_ERR_INVALID);
    assert_null(msg);
    assert_string_equal(err, "need: missing, and required by test.Req");
}

#define ENV     (&aftercare__v1__envelope__descriptor)
#define SCALARS (&scalars_descriptor)

/* Each is AC_ERR_INVALID with exactly this message, leaves *out NULL and leaks nothing —
 * several fail after strings, arrays and sub-messages have been allocated. */
static const struct {
    const ProtobufCMessageDescriptor *desc;
    const char *json;
    const char *err;
} to_message_errors[] = {
    {ENV, "[]", "expected an object, got an array"},
    {ENV, "null", "expected an object, got null"},
    {ENV, "{'id': 'x', 'bogus': 1}", "bogus: unknown field of aftercare.v1.Envelope"},
    {ENV, "{'bo\\ngus': 1}", "bo?gus: unknown field of aftercare.v1.Envelope"},
    {ENV, "{'ticket_created': {'ticket': {'Number': 'x'}}}",
     "ticket_created.ticket.Number: unknown field of aftercare.v1.Ticket"},
    {ENV, "{'id': 5}", "id: expected a string, got an integer"},
    {ENV, "{'id': 'a\\u0000b'}", "id: a string cannot contain a NUL character"},
    {ENV, "{'time': true}", "time: expected a string, got a boolean"},
    {ENV, "{'engineer_created': {'engineer': {'capacity': '3'}}}",
     "engineer_created.engineer.capacity: expected an integer, got a string"},
    {ENV, "{'engineer_created': {'engineer': {'capacity': 2147483648}}}",
     "engineer_created.engineer.capacity: 2147483648 is out of range for int32"},
    {ENV, "{'engineer_created': {'engineer': {'capacity': -2147483649}}}",
     "engineer_created.engineer.capacity: -2147483649 is out of range for int32"},
    {ENV, "{'engineer_created': {'engineer': {'capacity': 1.0}}}",
     "engineer_created.engineer.capacity: expected an integer, got a real number"},
    {ENV, "{'ticket_created': {'ticket': {'status': 'TICKET_STATUS_BOGUS'}}}",
     "ticket_created.ticket.status: unknown value \"TICKET_STATUS_BOGUS\" of enum "
     "aftercare.v1.TicketStatus"},
    {ENV, "{'ticket_created': {'ticket': {'status': 'ticket_status_new'}}}",
     "ticket_created.ticket.status: unknown value \"ticket_status_new\" of enum "
     "aftercare.v1.TicketStatus"},
    {ENV, "{'ticket_created': {'ticket': {'status': 2147483648}}}",
     "ticket_created.ticket.status: 2147483648 is out of range for aftercare.v1.TicketStatus"},
    {ENV, "{'ticket_created': {'ticket': {'status': true}}}",
     "ticket_created.ticket.status: expected an enum name or number, got a boolean"},
    {ENV, "{'ticket_created': {'ticket': {'warranty': {'in_warranty': 1}}}}",
     "ticket_created.ticket.warranty.in_warranty: expected true or false, got an integer"},
    {ENV, "{'ticket_created': {'ticket': {'customer': []}}}",
     "ticket_created.ticket.customer: expected an object, got an array"},
    /* Two members of the payload oneof; the first is complete when the second comes
     * (jansson iterates in insertion order since 2.8). */
    {ENV, "{'ticket_created': {'ticket': {'number': 'SV-1'}}, 'ticket_closed': {}}",
     "ticket_closed: ticket_created is already set, and only one member of a oneof can be"},
    {ENV,
     "{'id': 'x', 'plan_changed': {'via': 'agent', 'plan': {'parts': [{'part_number': 'P1'},"
     " {'quantity': 1}, {'quantity': 'x'}]}}}",
     "plan_changed.plan.parts[2].quantity: expected an integer, got a string"},
    {ENV, "{'engineer_created': {'engineer': {'skills': {}}}}",
     "engineer_created.engineer.skills: expected an array, got an object"},
    {ENV, "{'engineer_created': {'engineer': {'id': 'e', 'regions': ['eu', null]}}}",
     "engineer_created.engineer.regions[1]: expected a string, got null"},
    {ENV,
     "{'engineer_created': {'engineer': {'skills': [{'kind': 'k', 'name': 'n'}, {'kind': 5}]}}}",
     "engineer_created.engineer.skills[1].kind: expected a string, got an integer"},
    {ENV, "{'engineer_created': {'engineer': {'skills': [{'level': 1}, 7]}}}",
     "engineer_created.engineer.skills[1]: expected an object, got an integer"},
    {ENV, "{'sequence': -1}", "sequence: -1 is out of range for uint64"},
    {ENV, "{'sequence': 1.5}", "sequence: expected an integer or a decimal string, got 1.5"},
    {ENV, "{'sequence': '-1'}", "sequence: \"-1\" is not a decimal uint64"},
    {ENV, "{'sequence': '18446744073709551616'}",
     "sequence: \"18446744073709551616\" is not a decimal uint64"},
    {ENV, "{'sequence': []}", "sequence: expected an integer or a decimal string, got an array"},
    {ENV, "{'ticket_version': '12a'}", "ticket_version: \"12a\" is not a decimal int64"},
    {ENV, "{'ticket_version': ' 1'}", "ticket_version: \" 1\" is not a decimal int64"},
    {ENV, "{'ticket_version': '+1'}", "ticket_version: \"+1\" is not a decimal int64"},
    {ENV, "{'ticket_version': ''}", "ticket_version: \"\" is not a decimal int64"},
    {ENV, "{'ticket_version': '-'}", "ticket_version: \"-\" is not a decimal int64"},
    {ENV, "{'ticket_version': '9223372036854775808'}",
     "ticket_version: \"9223372036854775808\" is not a decimal int64"},
    {ENV, "{'ticket_version': 1.0}",
     "ticket_version: expected an integer or a decimal string, got a real number"},
    {SCALARS, "{'u32': 4294967296}", "u32: 4294967296 is out of range for uint32"},
    {SCALARS, "{'u32': -1}", "u32: -1 is out of range for uint32"},
    {SCALARS, "{'i32': '1'}", "i32: expected an integer, got a string"},
    {SCALARS, "{'f': 1e39}", "f: 1e+39 is out of range for float"},
    {SCALARS, "{'d': 'nan'}", "d: expected a number, got a string"},
    {SCALARS, "{'b': 'true'}", "b: expected true or false, got a string"},
    {SCALARS, "{'bin': 'T'}", "bin: not valid base64 (bad length or padding)"},
    {SCALARS, "{'bin': 'TQ='}", "bin: not valid base64 (bad length or padding)"},
    {SCALARS, "{'bin': 'TWE=x'}", "bin: not valid base64 (bad length or padding)"},
    {SCALARS, "{'bin': 'TQ==='}", "bin: not valid base64 (bad length or padding)"},
    {SCALARS, "{'bin': 'TQ=A'}", "bin: not valid base64 (bad character at offset 2)"},
    {SCALARS, "{'blobs': ['TQ==', 'T*==']}",
     "blobs[1]: not valid base64 (bad character at offset 1)"},
    {SCALARS, "{'bin': 5}", "bin: expected a base64 string, got an integer"},
    {SCALARS, "{'nums': [1, '2', 3.5]}",
     "nums[2]: expected an integer or a decimal string, got a real number"},
};

static void test_to_message_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < AC_ARRAY_LEN(to_message_errors); i++) {
        ProtobufCMessage *msg = (ProtobufCMessage *)&msg; /* must be reset to NULL */
        char err[256];
        int rc =
            to_message(to_message_errors[i].desc, to_message_errors[i].json, &msg, err, sizeof err);
        if (rc != AC_ERR_INVALID || strcmp(err, to_message_errors[i].err) != 0)
            fail_msg("%s: rc %d, err \"%s\", want \"%s\"", to_message_errors[i].json, rc, err,
                     to_message_errors[i].err);
        assert_null(msg);
    }
}

static void test_to_message_err_buffer(void **state)
{
    (void)state;
    ProtobufCMessage *msg = NULL;
    /* No buffer at all. */
    assert_int_equal(to_message(ENV, "{'bogus': 1}", &msg, NULL, 0), AC_ERR_INVALID);
    assert_null(msg);
    /* A short one: truncated, still terminated. */
    char err[8];
    memset(err, 'x', sizeof err);
    assert_int_equal(to_message(ENV, "{'bogus': 1}", &msg, err, sizeof err), AC_ERR_INVALID);
    assert_string_equal(err, "bogus: ");
    /* Success clears it. */
    assert_int_equal(to_message(ENV, "{}", &msg, err, sizeof err), 0);
    assert_string_equal(err, "");
    assert_non_null(msg);
    protobuf_c_message_free_unpacked(msg, NULL);
    /* No JSON value (a json_object_get() that found nothing). */
    char err2[64];
    assert_int_equal(ac_pbjson_to_message(ENV, NULL, &msg, err2, sizeof err2), AC_ERR_INVALID);
    assert_string_equal(err2, "no JSON value");
    assert_null(msg);
    /* A key with a NUL (jansson's parser refuses them, json_object_setn() does not) is not
     * taken for the field its first part names. */
    json_t *j = json_object();
    assert_non_null(j);
    assert_int_equal(json_object_setn_new(j, "id\0x", 4, json_string("a")), 0);
    assert_int_equal(ac_pbjson_to_message(ENV, j, &msg, err2, sizeof err2), AC_ERR_INVALID);
    assert_string_equal(err2, "id?x: unknown field of aftercare.v1.Envelope");
    assert_null(msg);
    json_decref(j);
}

/* A message that can contain itself, to reach the depth limit. */
typedef struct node {
    ProtobufCMessage base;
    struct node *child;
} node_t;

static const ProtobufCMessageDescriptor node_descriptor;
static const ProtobufCFieldDescriptor node_fields[] = {
    {"child", 1, PROTOBUF_C_LABEL_NONE, PROTOBUF_C_TYPE_MESSAGE, 0, offsetof(node_t, child),
     &node_descriptor, NULL, 0, 0, NULL, NULL},
};
static const ProtobufCMessageDescriptor node_descriptor = {
    .magic = PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
    .name = "test.Node",
    .short_name = "Node",
    .c_name = "Node",
    .package_name = "test",
    .sizeof_message = sizeof(node_t),
    .n_fields = AC_ARRAY_LEN(node_fields),
    .fields = node_fields,
};

/* {"child": {"child": ... {}}}: n objects in all. */
static json_t *nested_nodes(int n)
{
    json_t *top = json_object();
    assert_non_null(top);
    json_t *cur = top;
    for (int i = 1; i < n; i++) {
        json_t *child = json_object();
        assert_non_null(child);
        assert_int_equal(json_object_set_new(cur, "child", child), 0);
        cur = child;
    }
    return top;
}

static void test_to_message_depth_limit(void **state)
{
    (void)state;
    ProtobufCMessage *msg = NULL;
    char err[1024];

    /* The top message and 64 levels below it are fine. */
    json_t *j = nested_nodes(65);
    assert_int_equal(ac_pbjson_to_message(&node_descriptor, j, &msg, err, sizeof err), 0);
    int levels = 0;
    for (const node_t *n = (const node_t *)(const void *)msg; n != NULL; n = n->child)
        levels++;
    assert_int_equal(levels, 65);
    protobuf_c_message_free_unpacked(msg, NULL);
    json_decref(j);

    /* One more is refused, and the 65 already built are freed. */
    j = nested_nodes(66);
    assert_int_equal(ac_pbjson_to_message(&node_descriptor, j, &msg, err, sizeof err),
                     AC_ERR_INVALID);
    assert_null(msg);
    assert_non_null(strstr(err, "child.child.child"));
    assert_non_null(strstr(err, ": messages nested deeper than 64"));
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
        cmocka_unit_test(test_to_message_roundtrip_envelopes),
        cmocka_unit_test(test_to_message_scalars_roundtrip),
        cmocka_unit_test(test_to_message_enums_by_name_and_number),
        cmocka_unit_test(test_to_message_int64_forms),
        cmocka_unit_test(test_to_message_bytes_base64),
        cmocka_unit_test(test_to_message_null_is_unset),
        cmocka_unit_test(test_to_message_proto2_required_and_defaults),
        cmocka_unit_test(test_to_message_errors),
        cmocka_unit_test(test_to_message_err_buffer),
        cmocka_unit_test(test_to_message_depth_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
