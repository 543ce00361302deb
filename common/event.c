/* event.c — envelope header, packing, topic names, the relay's sequence append. */
#include "ac_event.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENVELOPE_SEQUENCE_TAG ((6u << 3) | 0u) /* field 6, wire type varint */

void ac_event_init(Aftercare__V1__Envelope *env, ac_event_ids_t *ids, const char *service,
                   const char *topic, const char *subject, const char *partition_key,
                   int64_t ticket_version, const char *correlation_id)
{
    aftercare__v1__envelope__init(env);
    ac_uuid_new(ids->id);
    ac_time_format_us(ac_time_now_us(), ids->time);
    snprintf(ids->type, sizeof(ids->type), "aftercare.%s.v1", topic);
    snprintf(ids->source, sizeof(ids->source), "aftercare/%s", service);
    env->id = ids->id;
    env->source = ids->source;
    env->type = ids->type;
    env->subject = (char *)(uintptr_t)(subject ? subject : "");
    env->time = ids->time;
    env->partition_key = (char *)(uintptr_t)(partition_key ? partition_key : "");
    env->ticket_version = ticket_version;
    env->correlation_id = (char *)(uintptr_t)(correlation_id ? correlation_id : "");
    env->spec_version = (char *)(uintptr_t) "1.0";
}

int ac_event_pack(const Aftercare__V1__Envelope *env, uint8_t **buf_out, size_t *len_out)
{
    size_t len = aftercare__v1__envelope__get_packed_size(env);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return AC_ERR_NOMEM;
    *len_out = aftercare__v1__envelope__pack(env, buf);
    *buf_out = buf;
    return 0;
}

int ac_event_topic_from_type(const char *type, char *out, size_t len)
{
    static const char prefix[] = "aftercare.";
    size_t plen = sizeof(prefix) - 1;
    if (!type || strncmp(type, prefix, plen) != 0)
        return AC_ERR_INVALID;
    const char *start = type + plen;
    const char *dot = strrchr(start, '.');
    if (!dot || dot == start || dot[1] != 'v')
        return AC_ERR_INVALID;
    size_t n = (size_t)(dot - start);
    if (n + 1 > len)
        return AC_ERR_TOOBIG;
    memcpy(out, start, n);
    out[n] = '\0';
    return 0;
}

size_t ac_event_append_sequence(const uint8_t *bytes, size_t len, uint64_t sequence, uint8_t *out)
{
    size_t n = len;
    if (out != bytes)
        memcpy(out, bytes, len);
    out[n++] = ENVELOPE_SEQUENCE_TAG;
    do {
        uint8_t b = sequence & 0x7f;
        sequence >>= 7;
        out[n++] = sequence ? (uint8_t)(b | 0x80) : b;
    } while (sequence);
    return n;
}

const ProtobufCMessage *ac_event_payload(const Aftercare__V1__Envelope *env)
{
    const ProtobufCFieldDescriptor *f;
    if (env->payload_case == AFTERCARE__V1__ENVELOPE__PAYLOAD__NOT_SET)
        return NULL;
    f = protobuf_c_message_descriptor_get_field(env->base.descriptor, (unsigned)env->payload_case);
    if (!f || f->type != PROTOBUF_C_TYPE_MESSAGE)
        return NULL;
    return *(ProtobufCMessage *const *)(const void *)((const char *)env + f->offset);
}
