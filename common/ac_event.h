/* ac_event.h — building and packing event envelopes (proto/aftercare/v1/envelope.proto).
 *
 * A service builds an Envelope with ac_event_init(), sets one payload field of the oneof,
 * packs it with ac_event_pack() and inserts the bytes into its outbox in the same
 * transaction as the state change. The sequence is NOT set here: the outbox relay
 * assigns it at publish time by appending field 6 to the stored bytes
 * (ac_event_append_sequence()), which protobuf decoders read like any other field. */
#ifndef AC_EVENT_H
#define AC_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include "aftercare/v1/envelope.pb-c.h"
#include "ac_err.h"
#include "ac_time.h"
#include "ac_uuid.h"

#define AC_TOPIC_MAX 128

typedef struct ac_event_ids {
    char id[AC_UUID_STRLEN];
    char time[AC_TIME_STRLEN];
    char source[64];
    char type[AC_TOPIC_MAX + 20];
} ac_event_ids_t;

/* Initialises *env and fills the header: new UUID id, source "aftercare/<service>",
 * type "aftercare.<topic>.v1", time = now, spec_version "1.0". Strings are borrowed (the
 * generated ones live in *ids), so env must not outlive ids or the arguments. */
void ac_event_init(Aftercare__V1__Envelope *env, ac_event_ids_t *ids, const char *service,
                   const char *topic, const char *subject, const char *partition_key,
                   int64_t ticket_version, const char *correlation_id);
/* Malloc'ed wire bytes of env (caller frees). AC_ERR_NOMEM on failure. */
int ac_event_pack(const Aftercare__V1__Envelope *env, uint8_t **buf_out, size_t *len_out) AC_WUR;
/* "aftercare.ticket.created.v1" -> "ticket.created". AC_ERR_INVALID if not of that form. */
int ac_event_topic_from_type(const char *type, char *out, size_t len) AC_WUR;
/* Writes bytes + field 6 (sequence) into out (len + 11 bytes room); returns new length. */
size_t ac_event_append_sequence(const uint8_t *bytes, size_t len, uint64_t sequence, uint8_t *out);
/* The header fields the bus checks, read from an envelope's wire bytes without decoding
 * it (ac_event_peek()). Strings point into the bytes (not NUL-terminated); "last one
 * wins" for repeated fields, as in any protobuf decoder. */
typedef struct ac_event_peek {
    const uint8_t *source, *type;
    size_t source_len, type_len;
    uint64_t sequence;
} ac_event_peek_t;
/* Walks the top level of an Envelope's wire format: every field must be well-formed
 * (a valid tag, a varint of at most 10 bytes, a length within the bytes, no groups) and
 * the known header fields must have their declared wire types. Payload messages are
 * skipped, not decoded. 0 and *out filled, or AC_ERR_INVALID. */
int ac_event_peek(const uint8_t *bytes, size_t len, ac_event_peek_t *out) AC_WUR;
/* The payload message set in env's oneof (found through the descriptor, so new payload
 * types need no code here), or NULL if none. */
const ProtobufCMessage *ac_event_payload(const Aftercare__V1__Envelope *env);

#endif
