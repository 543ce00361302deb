/* events.c — see events.h. Strings in the protobuf structs are borrowed from the JSON
 * document; protobuf-c wants char *, hence str() below (the packer never writes them). */
#include "events.h"

#include <stdint.h>
#include <string.h>

#include "ac_event.h"
#include "validate.h"

static const char *const topics[] = {
    [INTAKE_EV_CREATED] = "ticket.created",
    [INTAKE_EV_UPDATED] = "ticket.updated",
    [INTAKE_EV_STATUS_CHANGED] = "ticket.status_changed",
    [INTAKE_EV_RESOLVED] = "ticket.resolved",
    [INTAKE_EV_CLOSED] = "ticket.closed",
    [INTAKE_EV_REOPENED] = "ticket.reopened",
};

intake_event_kind_t intake_event_kind_for_status(int to)
{
    switch (to) {
    case INTAKE_ST_RESOLVED:
        return INTAKE_EV_RESOLVED;
    case INTAKE_ST_CLOSED:
        return INTAKE_EV_CLOSED;
    case INTAKE_ST_REOPENED:
        return INTAKE_EV_REOPENED;
    default:
        return INTAKE_EV_STATUS_CHANGED;
    }
}

const char *intake_event_topic(intake_event_kind_t kind)
{
    return topics[kind];
}

static char *str(const json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return (char *)(uintptr_t)(s ? s : "");
}

static int enum_of(const json_t *obj, const char *key, const char *const *names, size_t n)
{
    return intake_enum_parse(names, n, json_string_value(json_object_get(obj, key)));
}

/* Everything a Ticket snapshot points to, on the caller's stack. */
typedef struct ticket_pb {
    Aftercare__V1__Ticket ticket;
    Aftercare__V1__CustomerRef customer;
    Aftercare__V1__ProductRef product;
    Aftercare__V1__Warranty warranty;
    Aftercare__V1__Contact contact;
} ticket_pb_t;

static void ticket_from_doc(ticket_pb_t *pb, const json_t *doc)
{
    const json_t *customer = json_object_get(doc, "customer");
    const json_t *product = json_object_get(doc, "product");
    const json_t *warranty = json_object_get(doc, "warranty");
    const json_t *contact = json_object_get(doc, "contact");

    aftercare__v1__ticket__init(&pb->ticket);
    aftercare__v1__customer_ref__init(&pb->customer);
    aftercare__v1__product_ref__init(&pb->product);
    aftercare__v1__warranty__init(&pb->warranty);
    aftercare__v1__contact__init(&pb->contact);

    pb->customer.id = str(customer, "id");
    pb->customer.name = str(customer, "name");
    pb->customer.kind = str(customer, "kind");
    pb->customer.tier = (Aftercare__V1__CustomerTier)INTAKE_ENUM_PARSE(
        intake_tier_names, json_string_value(json_object_get(customer, "tier")));

    if (json_is_object(product)) { /* otherwise the empty ProductRef: "no product" */
        pb->product.id = str(product, "id");
        pb->product.model = str(product, "model");
        pb->product.serial_number = str(product, "serial_number");
        pb->product.purchase_date = str(product, "purchase_date");
        pb->product.install_site = str(product, "install_site");
        pb->product.region = str(product, "region");
    }

    pb->warranty.in_warranty = json_is_true(json_object_get(warranty, "in_warranty"));
    pb->warranty.reason = str(warranty, "reason");
    pb->warranty.expires_on = str(warranty, "expires_on");

    pb->contact.name = str(contact, "name");
    pb->contact.phone = str(contact, "phone");
    pb->contact.email = str(contact, "email");

    Aftercare__V1__Ticket *t = &pb->ticket;
    t->id = str(doc, "id");
    t->number = str(doc, "number");
    t->customer = &pb->customer;
    t->product = &pb->product;
    t->category = (Aftercare__V1__Category)enum_of(doc, "category", intake_category_names,
                                                   AC_ARRAY_LEN(intake_category_names));
    t->urgency = (Aftercare__V1__Urgency)enum_of(doc, "urgency", intake_urgency_names,
                                                 AC_ARRAY_LEN(intake_urgency_names));
    t->expedite = json_is_true(json_object_get(doc, "expedite"));
    t->priority = (Aftercare__V1__Priority)enum_of(doc, "priority", intake_priority_names,
                                                   AC_ARRAY_LEN(intake_priority_names));
    t->status = (Aftercare__V1__TicketStatus)enum_of(doc, "status", intake_status_names,
                                                     AC_ARRAY_LEN(intake_status_names));
    t->warranty = &pb->warranty;
    t->channel = (Aftercare__V1__Channel)enum_of(doc, "channel", intake_channel_names,
                                                 AC_ARRAY_LEN(intake_channel_names));
    t->description = str(doc, "description");
    t->contact = &pb->contact;
    t->occurred_at = str(doc, "occurred_at");
    t->created_at = str(doc, "created_at");
    t->updated_at = str(doc, "updated_at");
    t->resolved_at = str(doc, "resolved_at");
    t->closed_at = str(doc, "closed_at");
    t->version = (int64_t)json_integer_value(json_object_get(doc, "version"));
}

int intake_event_pack(const intake_event_t *ev, char event_id_out[AC_UUID_STRLEN],
                      uint8_t **buf_out, size_t *len_out)
{
    Aftercare__V1__Envelope env;
    ac_event_ids_t ids;
    ticket_pb_t pb;
    Aftercare__V1__TicketCreated created;
    Aftercare__V1__TicketUpdated updated;
    Aftercare__V1__TicketStatusChanged changed;
    Aftercare__V1__TicketResolved resolved;
    Aftercare__V1__TicketClosed closed;
    Aftercare__V1__TicketReopened reopened;
    char *reason = (char *)(uintptr_t)(ev->reason ? ev->reason : "");
    const char *number = json_string_value(json_object_get(ev->ticket, "number"));
    const char *id = json_string_value(json_object_get(ev->ticket, "id"));
    int rc;

    *buf_out = NULL;
    *len_out = 0;
    if (!number || !id)
        return AC_ERR_INVALID;
    ticket_from_doc(&pb, ev->ticket);
    ac_event_init(&env, &ids, "intake", topics[ev->kind], number, id, pb.ticket.version,
                  ev->correlation_id);

    switch (ev->kind) {
    case INTAKE_EV_CREATED:
        aftercare__v1__ticket_created__init(&created);
        created.ticket = &pb.ticket;
        env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_CREATED;
        env.ticket_created = &created;
        break;
    case INTAKE_EV_UPDATED:
        aftercare__v1__ticket_updated__init(&updated);
        updated.ticket = &pb.ticket;
        updated.n_changed_fields = ev->n_changed_fields;
        updated.changed_fields = (char **)(uintptr_t)ev->changed_fields;
        env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_UPDATED;
        env.ticket_updated = &updated;
        break;
    case INTAKE_EV_STATUS_CHANGED:
        aftercare__v1__ticket_status_changed__init(&changed);
        changed.ticket = &pb.ticket;
        changed.from_status = (Aftercare__V1__TicketStatus)ev->from_status;
        changed.to_status = (Aftercare__V1__TicketStatus)ev->to_status;
        changed.reason = reason;
        changed.actor = (char *)(uintptr_t)(ev->actor ? ev->actor : "");
        env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_STATUS_CHANGED;
        env.ticket_status_changed = &changed;
        break;
    case INTAKE_EV_RESOLVED:
        aftercare__v1__ticket_resolved__init(&resolved);
        resolved.ticket = &pb.ticket;
        resolved.from_status = (Aftercare__V1__TicketStatus)ev->from_status;
        resolved.reason = reason;
        resolved.first_contact = ev->from_status == INTAKE_ST_NEW;
        env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_RESOLVED;
        env.ticket_resolved = &resolved;
        break;
    case INTAKE_EV_CLOSED:
        aftercare__v1__ticket_closed__init(&closed);
        closed.ticket = &pb.ticket;
        closed.from_status = (Aftercare__V1__TicketStatus)ev->from_status;
        closed.reason = reason;
        env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_CLOSED;
        env.ticket_closed = &closed;
        break;
    case INTAKE_EV_REOPENED:
        aftercare__v1__ticket_reopened__init(&reopened);
        reopened.ticket = &pb.ticket;
        reopened.from_status = (Aftercare__V1__TicketStatus)ev->from_status;
        reopened.reason = reason;
        env.payload_case = AFTERCARE__V1__ENVELOPE__PAYLOAD_TICKET_REOPENED;
        env.ticket_reopened = &reopened;
        break;
    }

    if ((rc = ac_event_pack(&env, buf_out, len_out)) < 0)
        return rc;
    memcpy(event_id_out, ids.id, AC_UUID_STRLEN);
    return 0;
}
