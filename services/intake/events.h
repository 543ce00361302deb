/* events.h — the ticket events intake publishes (proto/aftercare/v1/ticket.proto),
 * built from the ticket's API document after the change and packed into an Envelope
 * ready for intake.outbox.
 *
 * Owns: nothing; the packed bytes go to the caller. */
#ifndef INTAKE_EVENTS_H
#define INTAKE_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ac_err.h"
#include "ac_uuid.h"

typedef enum {
    INTAKE_EV_CREATED,        /* ticket.created */
    INTAKE_EV_UPDATED,        /* ticket.updated */
    INTAKE_EV_STATUS_CHANGED, /* ticket.status_changed */
    INTAKE_EV_RESOLVED,       /* ticket.resolved */
    INTAKE_EV_CLOSED,         /* ticket.closed */
    INTAKE_EV_REOPENED,       /* ticket.reopened */
} intake_event_kind_t;

typedef struct intake_event {
    intake_event_kind_t kind;
    const json_t *ticket;              /* the ticket document after the change (API JSON) */
    const char *correlation_id;        /* the request's X-Request-Id */
    int from_status, to_status;        /* enum intake_status; transitions only */
    const char *reason;                /* transitions; "" when none */
    const char *actor;                 /* role name of the caller */
    const char *const *changed_fields; /* INTAKE_EV_UPDATED: JSON field names */
    size_t n_changed_fields;
} intake_event_t;

/* The topic of a transition to status `to` (ticket.resolved/closed/reopened, else
 * ticket.status_changed). */
intake_event_kind_t intake_event_kind_for_status(int to);
const char *intake_event_topic(intake_event_kind_t kind); /* "ticket.created", ... */

/* Builds and packs the Envelope: subject = ticket number, partition_key = ticket id,
 * ticket_version = ticket version. *buf_out is malloc'ed (caller frees); event_id_out
 * receives the new event id. AC_ERR_INVALID when the document lacks id/number. */
int intake_event_pack(const intake_event_t *ev, char event_id_out[AC_UUID_STRLEN],
                      uint8_t **buf_out, size_t *len_out) AC_WUR;

#endif
