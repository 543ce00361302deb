/* Unit tests: event.c — envelope packing, the relay's sequence append, topic names,
 * payload lookup, and decoding of truncated / garbage envelopes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ac_event.h"

static uint8_t *pack_created(size_t *len, Aftercare__V1__Ticket *t)
{
    Aftercare__V1__Envelope env;
    Aftercare__V1__TicketCreated created = AFTERCARE__V1__TICKET_CREATED__INIT;
    ac_event_ids_t ids;
    uint8_t *buf = NULL;
    ac_event_init(&env, &ids, "intake", "ticket.created", "SV-20261122-000042", t->id, 1, "req-1");
    created.ticket = t;
    env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_CREATED;
    env.ticket_created = &created;
    assert_int_equal(ac_event_pack(&env, &buf, len), 0);
    return buf;
}

static void test_pack_and_sequence(void **state)
{
    Aftercare__V1__Ticket t = AFTERCARE__V1__TICKET__INIT;
    size_t len;
    t.id = (char *)"0b3e4c9a-1111-4222-8333-444455556666";
    t.number = (char *)"SV-20261122-000042";
    t.priority = AFTERCARE__V1__PRIORITY__PRIORITY_P2;
    uint8_t *buf = pack_created(&len, &t);

    static const uint64_t seqs[] = {1, 127, 128, 300, 1ull << 40, UINT64_MAX};
    for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
        uint8_t *out = malloc(len + 11);
        size_t n = ac_event_append_sequence(buf, len, seqs[i], out);
        Aftercare__V1__Envelope *env = aftercare__v1__envelope__unpack(NULL, n, out);
        assert_non_null(env);
        assert_int_equal(env->sequence, seqs[i]);
        assert_string_equal(env->source, "aftercare/intake");
        assert_string_equal(env->type, "aftercare.ticket.created.v1");
        assert_string_equal(env->subject, "SV-20261122-000042");
        assert_string_equal(env->spec_version, "1.0");
        assert_string_equal(env->correlation_id, "req-1");
        assert_int_equal(env->ticket_version, 1);
        const ProtobufCMessage *p = ac_event_payload(env);
        assert_non_null(p);
        assert_ptr_equal(p->descriptor, &aftercare__v1__ticket_created__descriptor);
        assert_string_equal(env->ticket_created->ticket->number, "SV-20261122-000042");
        assert_int_equal(env->ticket_created->ticket->priority,
                         AFTERCARE__V1__PRIORITY__PRIORITY_P2);
        aftercare__v1__envelope__free_unpacked(env, NULL);
        free(out);
    }
    free(buf);
}

static void test_truncated_and_garbage(void **state)
{
    Aftercare__V1__Ticket t = AFTERCARE__V1__TICKET__INIT;
    size_t len;
    t.id = (char *)"0b3e4c9a-1111-4222-8333-444455556666";
    t.description = (char *)"a description long enough to matter";
    uint8_t *buf = pack_created(&len, &t);
    int failures = 0;
    for (size_t cut = 1; cut < len; cut++) {
        Aftercare__V1__Envelope *env = aftercare__v1__envelope__unpack(NULL, cut, buf);
        if (!env)
            failures++;
        else
            aftercare__v1__envelope__free_unpacked(env, NULL);
    }
    assert_true(failures > 0); /* most cuts land inside a field and must not decode */
    uint8_t junk[64];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(0xff - i);
    assert_null(aftercare__v1__envelope__unpack(NULL, sizeof(junk), junk));
    free(buf);
}

static void test_topic_from_type(void **state)
{
    char out[AC_TOPIC_MAX];
    assert_int_equal(ac_event_topic_from_type("aftercare.ticket.created.v1", out, sizeof(out)), 0);
    assert_string_equal(out, "ticket.created");
    assert_int_equal(ac_event_topic_from_type("aftercare.sla.warning.v2", out, sizeof(out)), 0);
    assert_string_equal(out, "sla.warning");
    assert_int_equal(ac_event_topic_from_type("ticket.created", out, sizeof(out)), AC_ERR_INVALID);
    assert_int_equal(ac_event_topic_from_type("aftercare.v1", out, sizeof(out)), AC_ERR_INVALID);
    assert_int_equal(ac_event_topic_from_type("aftercare.ticket.created.x1", out, sizeof(out)),
                     AC_ERR_INVALID);
    assert_int_equal(ac_event_topic_from_type("aftercare.ticket.created.v1", out, 4),
                     AC_ERR_TOOBIG);
}

static void test_no_payload(void **state)
{
    Aftercare__V1__Envelope env;
    ac_event_ids_t ids;
    ac_event_init(&env, &ids, "intake", "ticket.created", NULL, NULL, 0, NULL);
    assert_null(ac_event_payload(&env));
    assert_string_equal(env.subject, "");
}

/* ac_event_peek() reads what the bus checks without decoding, and agrees with a full
 * decode on every truncation of a real envelope (a prefix cut inside a field fails both;
 * a prefix cut between fields decodes, and peek reads the same header). */
static void test_peek(void **state)
{
    Aftercare__V1__Ticket t = AFTERCARE__V1__TICKET__INIT;
    size_t len;
    ac_event_peek_t pk;
    t.id = (char *)"0b3e4c9a-1111-4222-8333-444455556666";
    t.number = (char *)"SV-20261122-000042";
    uint8_t *buf = pack_created(&len, &t);
    uint8_t *out = malloc(len + 11);
    size_t n = ac_event_append_sequence(buf, len, 300, out);

    assert_int_equal(ac_event_peek(out, n, &pk), 0);
    assert_int_equal(pk.sequence, 300);
    assert_int_equal(pk.source_len, strlen("aftercare/intake"));
    assert_memory_equal(pk.source, "aftercare/intake", pk.source_len);
    assert_int_equal(pk.type_len, strlen("aftercare.ticket.created.v1"));
    assert_memory_equal(pk.type, "aftercare.ticket.created.v1", pk.type_len);
    assert_int_equal(ac_event_peek(buf, len, &pk), 0); /* before the relay: no sequence */
    assert_int_equal(pk.sequence, 0);
    for (size_t cut = 0; cut < n; cut++) {
        Aftercare__V1__Envelope *env = aftercare__v1__envelope__unpack(NULL, cut, out);
        int rc = ac_event_peek(out, cut, &pk);
        if (env == NULL) {
            assert_int_not_equal(rc, 0);
        } else {
            assert_int_equal(rc, 0);
            assert_int_equal(pk.sequence, env->sequence);
            assert_int_equal(pk.source_len, strlen(env->source));
            assert_int_equal(pk.type_len, strlen(env->type));
            aftercare__v1__envelope__free_unpacked(env, NULL);
        }
    }
    {
        static const uint8_t wrong_type[] = {0x12, 0x01, 'a', 0x30, 0x05, 0x18, 0x07};
        static const uint8_t group[] = {0x0b, 0x0c};
        static const uint8_t field0[] = {0x02, 0x00};
        static const uint8_t long_varint[] = {0x30, 0xff, 0xff, 0xff, 0xff, 0xff,
                                              0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
        static const uint8_t unknown_ok[] = {0xf8, 0x07, 0x05, 0x22, 0x00, 0x30, 0x09};
        assert_int_not_equal(ac_event_peek(wrong_type, sizeof(wrong_type), &pk), 0);
        assert_int_not_equal(ac_event_peek(group, sizeof(group), &pk), 0);
        assert_int_not_equal(ac_event_peek(field0, sizeof(field0), &pk), 0);
        assert_int_not_equal(ac_event_peek(long_varint, sizeof(long_varint), &pk), 0);
        assert_int_equal(ac_event_peek(unknown_ok, sizeof(unknown_ok), &pk), 0);
        assert_int_equal(pk.sequence, 9);
        assert_int_equal(pk.source_len, 0);
    }
    free(out);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_and_sequence),
        cmocka_unit_test(test_truncated_and_garbage),
        cmocka_unit_test(test_topic_from_type),
        cmocka_unit_test(test_no_payload),
        cmocka_unit_test(test_peek),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
