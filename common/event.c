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

/* Reads a varint at *p (at most 10 bytes, within end); 0, or -1 when malformed. */
static int peek_varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 70 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        if (shift == 63 && b > 1)
            return -1; /* more than 64 bits */
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* The wire type a known top-level field of Envelope must have, or -1 (unknown: any). */
static int envelope_wire_type(uint64_t field)
{
    if (field == 6 || field == 8) /* sequence, ticket_version */
        return 0;
    if (field >= 1 && field <= 10) /* strings */
        return 2;
    if ((field >= 20 && field < 90) || field == 90) /* payload messages */
        return 2;
    return -1;
}

int ac_event_peek(const uint8_t *bytes, size_t len, ac_event_peek_t *out)
{
    const uint8_t *p = bytes, *end = bytes + len;
    memset(out, 0, sizeof(*out));
    while (p < end) {
        uint64_t key, field, v = 0;
        int wt;
        if (peek_varint(&p, end, &key) != 0)
            return AC_ERR_INVALID;
        field = key >> 3;
        wt = (int)(key & 7);
        if (field == 0 || field > 536870911u)
            return AC_ERR_INVALID;
        if (envelope_wire_type(field) >= 0 && envelope_wire_type(field) != wt)
            return AC_ERR_INVALID;
        switch (wt) {
        case 0:
            if (peek_varint(&p, end, &v) != 0)
                return AC_ERR_INVALID;
            if (field == 6)
                out->sequence = v;
            break;
        case 1:
        case 5:
            if ((size_t)(end - p) < (wt == 1 ? 8u : 4u))
                return AC_ERR_INVALID;
            p += wt == 1 ? 8 : 4;
            break;
        case 2:
            if (peek_varint(&p, end, &v) != 0 || v > (uint64_t)(end - p))
                return AC_ERR_INVALID;
            if (field == 2) {
                out->source = p;
                out->source_len = (size_t)v;
            } else if (field == 3) {
                out->type = p;
                out->type_len = (size_t)v;
            }
            p += v;
            break;
        default: /* groups (3, 4) are not used by proto3; 6 and 7 do not exist */
            return AC_ERR_INVALID;
        }
    }
    return 0;
}
