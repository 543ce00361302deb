/* ac_pbjson.h — any protobuf-c message as JSON (jansson), by walking its descriptor:
 * field names as in the .proto, enums by name, bytes as base64, 64-bit ints as numbers.
 * Used by `aftercarectl events tail --json` and in logs. */
#ifndef AC_PBJSON_H
#define AC_PBJSON_H

#include <protobuf-c/protobuf-c.h>

struct json_t;

/* New reference; NULL on OOM. Unset proto3 scalars are omitted, except inside oneofs. */
struct json_t *ac_pbjson_from_message(const ProtobufCMessage *msg);

#endif
