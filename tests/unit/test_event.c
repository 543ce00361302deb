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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_and_sequence),
        cmocka_unit_test(test_truncated_and_garbage),
        cmocka_unit_test(test_topic_from_type),
        cmocka_unit_test(test_no_payload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
