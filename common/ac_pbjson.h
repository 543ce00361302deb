/* ac_pbjson.h — any protobuf-c message as JSON (jansson) and back, by walking its
 * descriptor: field names as in the .proto, enums by name, bytes as base64, 64-bit ints as
 * numbers. Used by `aftercarectl events tail --json` and in logs (message -> JSON), and by
 * dispatch to turn the events its SQL functions return into Envelopes (JSON -> message). */
#ifndef AC_PBJSON_H
#define AC_PBJSON_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "ac_err.h"

struct json_t;

/* New reference; NULL on OOM. Unset proto3 scalars are omitted, except inside oneofs. */
struct json_t *ac_pbjson_from_message(const ProtobufCMessage *msg);

/* JSON (the shape ac_pbjson_from_message() produces) -> a new message of type desc.
 *
 * Accepts: an object whose keys are field names as in the .proto; enums by name or by
 * number (any int32, named or not); 32-bit integers as JSON integers; 64-bit integers as
 * JSON integers or decimal strings ("-42"; uint64 above INT64_MAX also as the integral
 * real from_message writes for it, where 2^64 means UINT64_MAX); float/double from a JSON
 * integer or real, or "NaN", "Infinity", "-Infinity"; bool from true/false; strings
 * without NUL characters; bytes as base64 (standard or URL-safe alphabet, padding
 * optional); nested messages as objects; repeated fields as arrays. A oneof member sets
 * the oneof's case; two members of one oneof in one object is an error. JSON null means
 * "unset", except at the top and inside arrays. Unknown keys, wrong types, out-of-range
 * numbers, unknown enum names, missing proto2 required fields and nesting deeper than 64
 * messages are errors.
 *
 * Returns 0 with *out set, or AC_ERR_INVALID (bad input) or AC_ERR_NOMEM with *out NULL
 * and err (if err_len > 0) holding a message that names the field path, e.g.
 * "plan.parts[2].quantity: expected an integer, got a string" (truncated to err_len).
 *
 * Owns: the caller owns *out. Every string, bytes buffer, array and sub-message in it is
 * malloc'd (protobuf-c's default allocator) and unset fields keep the defaults of
 * protobuf_c_message_init(), so protobuf_c_message_free_unpacked(*out, NULL) (or the
 * generated <type>__free_unpacked(m, NULL)) releases all of it. json is only borrowed. */
int ac_pbjson_to_message(const ProtobufCMessageDescriptor *desc, const struct json_t *json,
                         ProtobufCMessage **out, char *err, size_t err_len) AC_WUR;

#endif
