/* events.h — the engineer events dispatch publishes (proto/aftercare/v1/dispatch.proto),
 * built from the engineer's API document after the change and packed into an Envelope
 * ready for dispatch.outbox. Subject and partition key: the engineer id; ticket_version:
 * the engineer's version.
 *
 * Owns: nothing; the packed bytes go to the caller. */
#ifndef DISPATCH_EVENTS_H
#define DISPATCH_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ac_err.h"
#include "ac_uuid.h"

typedef enum {
    DISPATCH_EV_ENGINEER_CREATED, /* engineer.created */
    DISPATCH_EV_ENGINEER_UPDATED, /* engineer.updated */
} dispatch_event_kind_t;

const char *dispatch_event_topic(dispatch_event_kind_t kind);

/* *buf_out is malloc'ed (caller frees); event_id_out receives the new event id.
 * AC_ERR_INVALID when the document lacks an id. changed: engineer.updated only. */
int dispatch_event_pack_engineer(dispatch_event_kind_t kind, const json_t *engineer,
                                 const char *correlation_id, const char *const *changed,
                                 size_t n_changed, char event_id_out[AC_UUID_STRLEN],
                                 uint8_t **buf_out, size_t *len_out) AC_WUR;

#endif
