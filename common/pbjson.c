/* pbjson.c — protobuf-c message <-> jansson JSON by walking the message descriptor.
 *
 * Message -> JSON (ac_pbjson_from_message):
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
 *
 * JSON -> message (ac_pbjson_to_message) accepts all of the above back, so that
 * from_message -> to_message -> pack gives the original bytes (but for uint64 above
 * INT64_MAX, which the real has already rounded). Ownership follows
 * protobuf_c_message_free_unpacked(), which the caller uses to free the result:
 * - it frees a singular string / bytes / sub-message unless it is the field's
 *   default_value, and every element of a repeated field: so everything we store is
 *   malloc'd, and an unset field keeps what protobuf_c_message_init() put there;
 * - it looks only at the oneof member that is the case: the case is set after its
 *   member, and a second member of the same oneof is refused before it is written (the
 *   members share a union);
 * - a repeated field's array is hung on the message before its elements are decoded,
 *   and n_ counts only the finished ones, so that an error part way frees what exists.
 * Hence, on any error, freeing the half-built message releases all of it.
 */
#include "ac_pbjson.h"

#include <assert.h>
#include <float.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_err.h"

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

/* --- JSON -> message --------------------------------------------------------------------- */

/* One ac_pbjson_to_message() call: where in the JSON we are, for the error message. */
typedef struct decoder {
    char path[256];  /* "plan.parts[2].quantity"; cut short (not overrun) when longer */
    size_t path_len; /* strlen(path) */
    char *err;       /* the caller's buffer; NULL or err_len 0: no message wanted */
    size_t err_len;
} decoder_t;

static int decode_message(decoder_t *d, const ProtobufCMessageDescriptor *desc, const json_t *json,
                          int depth, ProtobufCMessage **out);

/* Append n bytes of s to the path. Keys come from the input and end up in logs and HTTP
 * replies: control characters (and NULs inside keys) become '?'. */
static void path_append(decoder_t *d, const char *s, size_t n)
{
    for (size_t i = 0; i < n && d->path_len + 1 < sizeof d->path; i++) {
        unsigned char c = (unsigned char)s[i];
        d->path[d->path_len++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    d->path[d->path_len] = '\0';
}

/* Enter the member key (key_len bytes) of the current object; returns the mark that
 * path_pop() needs to leave it again. */
static size_t path_push_key(decoder_t *d, const char *key, size_t key_len)
{
    size_t mark = d->path_len;
    if (d->path_len > 0)
        path_append(d, ".", 1);
    path_append(d, key, key_len);
    return mark;
}

/* Enter element i of the current array. */
static size_t path_push_index(decoder_t *d, size_t i)
{
    size_t mark = d->path_len;
    char buf[32];
    int n = snprintf(buf, sizeof buf, "[%zu]", i);
    path_append(d, buf, (size_t)n);
    return mark;
}

static void path_pop(decoder_t *d, size_t mark)
{
    d->path_len = mark;
    d->path[mark] = '\0';
}

/* Write "<path>: <message>" to the caller's buffer and return code. Only the innermost
 * failure writes; callers further out pass the code up untouched. */
static int fail(decoder_t *d, int code, const char *fmt, ...) AC_PRINTF(3, 4);
static int fail(decoder_t *d, int code, const char *fmt, ...)
{
    if (d->err == NULL || d->err_len == 0)
        return code;
    int n = 0;
    if (d->path_len > 0)
        n = snprintf(d->err, d->err_len, "%s: ", d->path);
    if (n >= 0 && (size_t)n < d->err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->err + n, d->err_len - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return code;
}

static int fail_nomem(decoder_t *d)
{
    return fail(d, AC_ERR_NOMEM, "out of memory");
}

/* "an integer", "null", ...: what we got instead, for "expected X, got Y". */
static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "an unknown JSON value";
}

/* A printable excerpt of input text (at most 48 bytes, controls as '?') into buf. */
static const char *excerpt(const char *s, size_t n, char buf[64])
{
    size_t o = 0;
    for (size_t i = 0; i < n && o < 48; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[o++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    if (o < n)
        memcpy(buf + o, "...", 4);
    else
        buf[o] = '\0';
    return buf;
}

/* Decimal digits only (at least one), no sign, space or '+'; 0 when not that or > 2^64-1. */
static int parse_digits(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        unsigned digit = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - digit) / 10)
            return 0;
        v = v * 10 + digit;
    }
    *out = v;
    return 1;
}

/* A signed integer in [min, max]: a JSON integer or, when allow_string (the 64-bit
 * types), a decimal string such as "-42" — the canonical proto3 JSON form, which
 * survives JavaScript. */
static int decode_int(decoder_t *d, const json_t *v, int64_t min, int64_t max, int allow_string,
                      const char *type_name, int64_t *out)
{
    int64_t x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (allow_string && json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        int neg = n > 0 && s[0] == '-';
        uint64_t u;
        if (!parse_digits(s + neg, n - (size_t)neg, &u) ||
            u > (uint64_t)INT64_MAX + (uint64_t)neg) {
            char buf[64];
            return fail(d, AC_ERR_INVALID, "\"%s\" is not a decimal %s", excerpt(s, n, buf),
                        type_name);
        }
        x = neg ? (int64_t)(0 - u) : (int64_t)u; /* two's complement: 0 - 2^63 is INT64_MIN */
    } else {
        return fail(d, AC_ERR_INVALID, "expected an integer%s, got %s",
                    allow_string ? " or a decimal string" : "", json_kind(v));
    }
    if (x < min || x > max)
        return fail(d, AC_ERR_INVALID, "%" PRId64 " is out of range for %s", x, type_name);
    *out = x;
    return 0;
}

/* uint64/fixed64: a JSON integer >= 0, a decimal string, or — what from_message writes
 * above INT64_MAX — an integral real in [2^63, 2^64], where 2^64 (the rounding of
 * everything near UINT64_MAX) means UINT64_MAX. */
static int decode_uint64(decoder_t *d, const json_t *v, uint64_t *out)
{
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x < 0)
            return fail(d, AC_ERR_INVALID, "%" JSON_INTEGER_FORMAT " is out of range for uint64",
                        x);
        *out = (uint64_t)x;
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        if (!parse_digits(s, n, out)) {
            char buf[64];
            return fail(d, AC_ERR_INVALID, "\"%s\" is not a decimal uint64", excerpt(s, n, buf));
        }
        return 0;
    }
    if (json_is_real(v)) {
        double x = json_real_value(v);
        if (x >= 9223372036854775808.0 && x <= 18446744073709551616.0 && x == floor(x)) {
            *out = x == 18446744073709551616.0 ? UINT64_MAX : (uint64_t)x;
            return 0;
        }
        return fail(d, AC_ERR_INVALID, "expected an integer or a decimal string, got %g", x);
    }
    return fail(d, AC_ERR_INVALID, "expected an integer or a decimal string, got %s", json_kind(v));
}

/* A JSON integer or real, or the strings from_message writes for NaN and infinities. */
static int decode_double(decoder_t *d, const json_t *v, double *out)
{
    if (json_is_integer(v)) {
        *out = (double)json_integer_value(v);
    } else if (json_is_real(v)) {
        *out = json_real_value(v);
    } else if (json_is_string(v) && strcmp(json_string_value(v), "NaN") == 0) {
        *out = NAN;
    } else if (json_is_string(v) && strcmp(json_string_value(v), "Infinity") == 0) {
        *out = INFINITY;
    } else if (json_is_string(v) && strcmp(json_string_value(v), "-Infinity") == 0) {
        *out = -INFINITY;
    } else {
        return fail(d, AC_ERR_INVALID, "expected a number, got %s", json_kind(v));
    }
    return 0;
}

/* By name, or by number: any int32, named or not (from_message writes unnamed values —
 * from a newer schema — as numbers, and proto3 enums are open). */
static int decode_enum(decoder_t *d, const ProtobufCEnumDescriptor *ed, const json_t *v, int *out)
{
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        const ProtobufCEnumValue *ev =
            strlen(s) == n ? protobuf_c_enum_descriptor_get_value_by_name(ed, s) : NULL;
        if (ev == NULL) {
            char buf[64];
            return fail(d, AC_ERR_INVALID, "unknown value \"%s\" of enum %s", excerpt(s, n, buf),
                        ed->name);
        }
        *out = ev->value;
        return 0;
    }
    if (json_is_integer(v)) {
        int64_t x = 0; /* written by decode_int() only on success */
        int rc = decode_int(d, v, INT32_MIN, INT32_MAX, 0, ed->name, &x);
        if (rc == 0)
            *out = (int)x;
        return rc;
    }
    return fail(d, AC_ERR_INVALID, "expected an enum name or number, got %s", json_kind(v));
}

/* A malloc'd, NUL-terminated copy (protobuf-c strings cannot hold a NUL). */
static int decode_string(decoder_t *d, const json_t *v, char **out)
{
    if (!json_is_string(v))
        return fail(d, AC_ERR_INVALID, "expected a string, got %s", json_kind(v));
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (memchr(s, '\0', n) != NULL)
        return fail(d, AC_ERR_INVALID, "a string cannot contain a NUL character");
    char *copy = malloc(n + 1);
    if (copy == NULL)
        return fail_nomem(d);
    memcpy(copy, s, n + 1);
    *out = copy;
    return 0;
}

/* 0..63 for a base64 digit of either alphabet (standard "+/", URL-safe "-_"), else -1. */
static int base64_digit(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+' || c == '-')
        return 62;
    if (c == '/' || c == '_')
        return 63;
    return -1;
}

/* Base64 -> malloc'd bytes ({0, NULL} when empty). Padding is optional, but when present
 * it must complete the last quantum. */
static int decode_bytes(decoder_t *d, const json_t *v, ProtobufCBinaryData *out)
{
    if (!json_is_string(v))
        return fail(d, AC_ERR_INVALID, "expected a base64 string, got %s", json_kind(v));
    const char *s = json_string_value(v);
    size_t n = json_string_length(v), pad = 0;
    while (n > 0 && pad < 2 && s[n - 1] == '=') {
        n--;
        pad++;
    }
    if (n % 4 == 1 || (pad > 0 && (n + pad) % 4 != 0))
        return fail(d, AC_ERR_INVALID, "not valid base64 (bad length or padding)");
    if (n == 0) { /* "": no bytes, nothing to allocate */
        out->len = 0;
        out->data = NULL;
        return 0;
    }
    /* n >= 2 here (n % 4 != 1), so len >= 1 */
    size_t len = n / 4 * 3 + (n % 4 == 0 ? 0 : n % 4 - 1);
    uint8_t *data = malloc(len);
    if (data == NULL)
        return fail_nomem(d);
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int digit = base64_digit(s[i]);
        if (digit < 0) {
            free(data);
            return fail(d, AC_ERR_INVALID, "not valid base64 (bad character at offset %zu)", i);
        }
        acc = (acc << 6 | (uint32_t)digit) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            data[o++] = (uint8_t)(acc >> bits);
        }
    }
    assert(o == len);
    out->len = len;
    out->data = data;
    return 0;
}

/* One value of f's type from v into slot (a field, or an element of a repeated field's
 * array). Writes slot only on success, so a failure leaves nothing half-owned there. */
static int decode_value(decoder_t *d, const ProtobufCFieldDescriptor *f, const json_t *v,
                        void *slot, int depth)
{
    int64_t x = 0;
    int rc;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        if ((rc = decode_int(d, v, INT32_MIN, INT32_MAX, 0, "int32", &x)) == 0)
            *(int32_t *)slot = (int32_t)x;
        return rc;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        if ((rc = decode_int(d, v, 0, UINT32_MAX, 0, "uint32", &x)) == 0)
            *(uint32_t *)slot = (uint32_t)x;
        return rc;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        if ((rc = decode_int(d, v, INT64_MIN, INT64_MAX, 1, "int64", &x)) == 0)
            *(int64_t *)slot = x;
        return rc;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return decode_uint64(d, v, slot);
    case PROTOBUF_C_TYPE_FLOAT: {
        double val;
        if ((rc = decode_double(d, v, &val)) != 0)
            return rc;
        if (isfinite(val) && fabs(val) > FLT_MAX) /* converting it would be undefined */
            return fail(d, AC_ERR_INVALID, "%g is out of range for float", val);
        *(float *)slot = (float)val;
        return 0;
    }
    case PROTOBUF_C_TYPE_DOUBLE:
        return decode_double(d, v, slot);
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(v))
            return fail(d, AC_ERR_INVALID, "expected true or false, got %s", json_kind(v));
        *(protobuf_c_boolean *)slot = json_is_true(v);
        return 0;
    case PROTOBUF_C_TYPE_ENUM:
        return decode_enum(d, f->descriptor, v, slot);
    case PROTOBUF_C_TYPE_STRING:
        /* Replaces the default (not owned, never freed) that message_init put there. */
        return decode_string(d, v, slot);
    case PROTOBUF_C_TYPE_BYTES:
        return decode_bytes(d, v, slot);
    case PROTOBUF_C_TYPE_MESSAGE:
        return decode_message(d, f->descriptor, v, depth + 1, slot);
    }
    return fail(d, AC_ERR_INVALID, "field type %d is not supported", (int)f->type);
}

/* A JSON array into f's array (n_ at quantifier_offset, the pointer at offset). */
static int decode_repeated(decoder_t *d, ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f,
                           const json_t *v, int depth)
{
    if (!json_is_array(v))
        return fail(d, AC_ERR_INVALID, "expected an array, got %s", json_kind(v));
    size_t n = json_array_size(v);
    if (n == 0)
        return 0; /* n_ 0, array NULL: as message_init left it */
    size_t size = type_size(f->type);
    char *elems = calloc(n, size);
    if (elems == NULL)
        return fail_nomem(d);
    char *base = (char *)msg;
    size_t *n_elems = (size_t *)(void *)(base + f->quantifier_offset);
    /* Owned by msg from here; *n_elems counts the elements decoded so far (see the top). */
    *(void **)(void *)(base + f->offset) = elems;
    *n_elems = 0;
    for (size_t i = 0; i < n; i++) {
        size_t mark = path_push_index(d, i);
        int rc = decode_value(d, f, json_array_get(v, i), elems + i * size, depth);
        if (rc != 0)
            return rc;
        *n_elems = i + 1;
        path_pop(d, mark);
    }
    return 0;
}

/* By name through protobuf-c's sorted index; hand-written descriptors may lack it. */
static const ProtobufCFieldDescriptor *field_by_name(const ProtobufCMessageDescriptor *desc,
                                                     const char *name)
{
    if (desc->fields_sorted_by_name != NULL)
        return protobuf_c_message_descriptor_get_field_by_name(desc, name);
    for (unsigned i = 0; i < desc->n_fields; i++)
        if (strcmp(desc->fields[i].name, name) == 0)
            return &desc->fields[i];
    return NULL;
}

static const ProtobufCFieldDescriptor *field_by_id(const ProtobufCMessageDescriptor *desc,
                                                   uint32_t id)
{
    for (unsigned i = 0; i < desc->n_fields; i++)
        if (desc->fields[i].id == id)
            return &desc->fields[i];
    return NULL;
}

/* The member key of a JSON object into msg (the path already names it). */
static int decode_field(decoder_t *d, ProtobufCMessage *msg, const char *key, size_t key_len,
                        const json_t *v, int depth)
{
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    const ProtobufCFieldDescriptor *f = strlen(key) == key_len ? field_by_name(desc, key) : NULL;
    if (f == NULL)
        return fail(d, AC_ERR_INVALID, "unknown field of %s", desc->name);
    if (json_is_null(v))
        return 0; /* unset: keep message_init's default */

    char *base = (char *)msg;
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return decode_repeated(d, msg, f, v, depth);

    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t *oneof_case = (uint32_t *)(void *)(base + f->quantifier_offset);
        if (*oneof_case != 0) {
            /* Its members share a union: writing this one would clobber the other. */
            const ProtobufCFieldDescriptor *other = field_by_id(desc, *oneof_case);
            return fail(d, AC_ERR_INVALID,
                        "%s is already set, and only one member of a oneof can be",
                        other != NULL ? other->name : "another member");
        }
        int rc = decode_value(d, f, v, base + f->offset, depth);
        if (rc == 0)
            *oneof_case = f->id;
        return rc;
    }

    int rc = decode_value(d, f, v, base + f->offset, depth);
    /* proto2 / proto3-optional scalars and bytes have a has_ flag; strings and messages
     * are present when their pointer is set (and not the default). */
    if (rc == 0 && f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
        f->type != PROTOBUF_C_TYPE_MESSAGE)
        *(protobuf_c_boolean *)(void *)(base + f->quantifier_offset) = 1;
    return rc;
}

/* A JSON object into the freshly initialised msg. On error msg may be half filled — but
 * always in a state that protobuf_c_message_free_unpacked() releases completely. */
static int decode_fields(decoder_t *d, ProtobufCMessage *msg, const json_t *json, int depth)
{
    /* jansson's iterator functions take non-const; they do not modify the object. */
    json_t *obj = (json_t *)(uintptr_t)json;
    for (void *it = json_object_iter(obj); it != NULL; it = json_object_iter_next(obj, it)) {
        const char *key = json_object_iter_key(it);
        size_t key_len = json_object_iter_key_len(it);
        size_t mark = path_push_key(d, key, key_len);
        int rc = decode_field(d, msg, key, key_len, json_object_iter_value(it), depth);
        if (rc != 0)
            return rc;
        path_pop(d, mark);
    }

    /* proto2 required fields without a default, as protobuf-c's unpack insists. */
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (f->label != PROTOBUF_C_LABEL_REQUIRED || f->default_value != NULL)
            continue;
        const json_t *v = json_object_get(json, f->name);
        if (v == NULL || json_is_null(v)) {
            path_push_key(d, f->name, strlen(f->name));
            return fail(d, AC_ERR_INVALID, "missing, and required by %s", desc->name);
        }
    }
    return 0;
}

/* A JSON object -> a new message of type desc in *out (written only on success). */
static int decode_message(decoder_t *d, const ProtobufCMessageDescriptor *desc, const json_t *json,
                          int depth, ProtobufCMessage **out)
{
    if (!json_is_object(json))
        return fail(d, AC_ERR_INVALID, "expected an object, got %s", json_kind(json));
    if (depth > PBJSON_MAX_DEPTH)
        return fail(d, AC_ERR_INVALID, "messages nested deeper than %d", PBJSON_MAX_DEPTH);
    ProtobufCMessage *msg = calloc(1, desc->sizeof_message);
    if (msg == NULL)
        return fail_nomem(d);
    /* Defaults: empty-string pointers, enum defaults, oneof cases 0. A hand-written
     * descriptor without message_init gets all zeros, as PROTOBUF_C_MESSAGE_INIT would. */
    if (desc->message_init != NULL)
        protobuf_c_message_init(desc, msg);
    else
        msg->descriptor = desc;
    int rc = decode_fields(d, msg, json, depth);
    if (rc != 0) {
        /* This frees msg too. clang's analyzer assumes that a function declared in a system
         * header (protobuf-c.h) frees nothing it is given unless it also gets a callback (the
         * allocator; NULL here means malloc/free), so it would report msg as leaked. */
        protobuf_c_message_free_unpacked(msg, NULL);
        return rc; /* NOLINT(clang-analyzer-unix.Malloc): msg was freed just above */
    }
    *out = msg;
    return 0;
}

int ac_pbjson_to_message(const ProtobufCMessageDescriptor *desc, const json_t *json,
                         ProtobufCMessage **out, char *err, size_t err_len)
{
    decoder_t d = {.path = "", .path_len = 0, .err = err, .err_len = err_len};
    assert(desc != NULL && desc->magic == PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC);
    assert(out != NULL);
    *out = NULL;
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    if (json == NULL)
        return fail(&d, AC_ERR_INVALID, "no JSON value");
    return decode_message(&d, desc, json, 0, out);
}
