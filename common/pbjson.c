/* pbjson.c — protobuf-c message -> jansson JSON by walking the message descriptor.
 *
 * Notes:
 * - Presence follows protobuf-c's own packing rules: proto3 (LABEL_NONE) fields are
 *   emitted when they differ from their zero value, proto2/proto3-optional fields when
 *   their has_ flag (or pointer) says so, oneof members only when they are the case that
 *   is set — and then even when they hold the zero value.
 * - Empty repeated fields are omitted, as in the canonical proto3 JSON mapping.
 * - uint64 above INT64_MAX cannot be a json_int_t; it becomes a real (a number, as the
 *   header promises, though the low bits may round). NaN/Infinity become the strings
 *   "NaN", "Infinity", "-Infinity" (JSON has no such numbers).
 * - Strings that are not valid UTF-8 (protobuf-c does not check) have each bad byte
 *   replaced by U+FFFD, so the result always serialises.
 * - An enum value without a name (from a newer schema) is emitted as its number.
 */
#include "ac_pbjson.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static json_t *message_to_json(const ProtobufCMessage *msg, int depth);

/* Deeper nesting than this is a malformed (or hostile) message; protobuf-c's own
 * decoder bounds it much lower in practice. */
#define PBJSON_MAX_DEPTH 64

static const char BASE64_ALPHABET[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static json_t *bytes_to_json(const ProtobufCBinaryData *bin)
{
    size_t out_len = 4 * ((bin->len + 2) / 3);
    char *out = malloc(out_len + 1);
    if (out == NULL)
        return NULL;
    size_t i = 0, o = 0;
    for (; i + 2 < bin->len; i += 3) {
        uint32_t v =
            (uint32_t)bin->data[i] << 16 | (uint32_t)bin->data[i + 1] << 8 | bin->data[i + 2];
        out[o++] = BASE64_ALPHABET[(v >> 18) & 63];
        out[o++] = BASE64_ALPHABET[(v >> 12) & 63];
        out[o++] = BASE64_ALPHABET[(v >> 6) & 63];
        out[o++] = BASE64_ALPHABET[v & 63];
    }
    if (i < bin->len) {
        uint32_t v = (uint32_t)bin->data[i] << 16;
        if (i + 1 < bin->len)
            v |= (uint32_t)bin->data[i + 1] << 8;
        out[o++] = BASE64_ALPHABET[(v >> 18) & 63];
        out[o++] = BASE64_ALPHABET[(v >> 12) & 63];
        out[o++] = i + 1 < bin->len ? BASE64_ALPHABET[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    json_t *j = json_stringn_nocheck(out, o);
    free(out);
    return j;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 if it is not one. */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return c == 0 ? 0 : 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[k] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

static json_t *string_to_json(const char *s)
{
    json_t *j = json_string(s);
    if (j != NULL)
        return j;
    /* Not valid UTF-8 (or OOM): replace every bad byte by U+FFFD (3 bytes). */
    size_t n = strlen(s);
    char *out = malloc(n * 3 + 1);
    if (out == NULL)
        return NULL;
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t len = utf8_seq_len(u + i, n - i);
        if (len == 0) {
            out[o++] = (char)0xEF; /* U+FFFD */
            out[o++] = (char)0xBF;
            out[o++] = (char)0xBD;
            i++;
        } else {
            memcpy(out + o, u + i, len);
            o += len;
            i += len;
        }
    }
    j = json_stringn_nocheck(out, o);
    free(out);
    return j;
}

static json_t *double_to_json(double d)
{
    if (isnan(d))
        return json_string("NaN");
    if (isinf(d))
        return json_string(d > 0 ? "Infinity" : "-Infinity");
    return json_real(d);
}

static json_t *enum_to_json(const ProtobufCEnumDescriptor *desc, int value)
{
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(desc, value);
    if (ev != NULL)
        return json_string(ev->name);
    return json_integer(value);
}

/* One value of the field's type stored at p. */
static json_t *value_to_json(const ProtobufCFieldDescriptor *f, const void *p, int depth)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return json_integer(*(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t v = *(const uint64_t *)p;
        if (v <= (uint64_t)INT64_MAX)
            return json_integer((json_int_t)v);
        return json_real((double)v);
    }
    case PROTOBUF_C_TYPE_FLOAT:
        return double_to_json(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return double_to_json(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM:
        return enum_to_json(f->descriptor, *(const int *)p);
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return string_to_json(s != NULL ? s : "");
    }
    case PROTOBUF_C_TYPE_BYTES:
        return bytes_to_json(p);
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
        if (sub == NULL)
            return json_object();
        return message_to_json(sub, depth + 1);
    }
    }
    return json_null();
}

static size_t type_size(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_ENUM:
        return sizeof(int);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    }
    return 0;
}

/* 1 when a proto3 (LABEL_NONE) value at p differs from its type's zero value. */
static int is_nonzero(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return s != NULL && s[0] != '\0';
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(void *const *)p != NULL;
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len > 0;
    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *)p != 0.0f;
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)p != 0.0;
    default: {
        /* Integers, bools and enums: any set byte means non-zero. */
        const unsigned char *b = p;
        for (size_t i = 0; i < type_size(f->type); i++)
            if (b[i] != 0)
                return 1;
        return 0;
    }
    }
}

/* Whether field f of msg is present, following protobuf-c's packing rules. */
static int is_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
    const char *base = (const char *)msg;
    const void *p = base + f->offset;

    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t oneof_case = *(const uint32_t *)(const void *)(base + f->quantifier_offset);
        if (oneof_case != f->id)
            return 0;
        if (f->type == PROTOBUF_C_TYPE_MESSAGE || f->type == PROTOBUF_C_TYPE_STRING)
            return *(void *const *)p != NULL;
        return 1;
    }
    switch (f->label) {
    case PROTOBUF_C_LABEL_REQUIRED:
        return 1;
    case PROTOBUF_C_LABEL_NONE:
        return is_nonzero(f, p);
    case PROTOBUF_C_LABEL_OPTIONAL:
        if (f->type == PROTOBUF_C_TYPE_MESSAGE)
            return *(void *const *)p != NULL;
        if (f->type == PROTOBUF_C_TYPE_STRING) {
            const void *s = *(void *const *)p;
            return s != NULL && s != f->default_value;
        }
        return *(const protobuf_c_boolean *)(const void *)(base + f->quantifier_offset);
    case PROTOBUF_C_LABEL_REPEATED:
        return *(const size_t *)(const void *)(base + f->quantifier_offset) > 0;
    }
    return 0;
}

static json_t *repeated_to_json(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
                                int depth)
{
    const char *base = (const char *)msg;
    size_t n = *(const size_t *)(const void *)(base + f->quantifier_offset);
    const char *elems = *(char *const *)(const void *)(base + f->offset);
    size_t size = type_size(f->type);
    json_t *arr = json_array();
    if (arr == NULL)
        return NULL;
    for (size_t i = 0; i < n && elems != NULL; i++) {
        json_t *v = value_to_json(f, elems + i * size, depth);
        if (v == NULL || json_array_append_new(arr, v) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static json_t *message_to_json(const ProtobufCMessage *msg, int depth)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    json_t *obj = json_object();
    if (obj == NULL)
        return NULL;
    if (depth > PBJSON_MAX_DEPTH)
        return obj;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (!is_present(msg, f))
            continue;
        json_t *v;
        if (f->label == PROTOBUF_C_LABEL_REPEATED)
            v = repeated_to_json(msg, f, depth);
        else
            v = value_to_json(f, (const char *)msg + f->offset, depth);
        if (v == NULL || json_object_set_new(obj, f->name, v) != 0) {
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

json_t *ac_pbjson_from_message(const ProtobufCMessage *msg)
{
    if (msg == NULL)
        return json_null();
    return message_to_json(msg, 0);
}
