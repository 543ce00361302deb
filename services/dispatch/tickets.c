/* tickets.c — dispatch's view of tickets: the consumer of intake's ticket.* events.
 *
 * Every ticket event carries the whole ticket after the change (ticket.proto), so one
 * statement, dispatch.ticket_apply() (migrations/002_tickets.sql), keeps
 * dispatch.tickets and the status history current, ignoring a version it has already
 * seen, and calls the other modules' hooks (assignment, SLA) in the same transaction —
 * the consumer's, which also moves the checkpoint. Enum values are stored by their API
 * names ("waiting_customer", "vip", "P1").
 *
 * GET /v1/tickets/{number} shows that view (for people wondering whether dispatch has
 * heard of a ticket yet, and for tests). */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "ac_event.h"
#include "ac_log.h"
#include "dispatch.h"
#include "ops.h"
#include "store.h"

/* "TICKET_STATUS_WAITING_CUSTOMER" -> "waiting_customer" (prefix = the enum's values'
 * common prefix); "" for 0 or a value this build does not know. */
static void enum_api_name(const ProtobufCEnumDescriptor *d, int value, const char *prefix,
                          int is_upper, char *out, size_t len)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(d, value);
    size_t plen = strlen(prefix), i;
    out[0] = '\0';
    if (!v || value == 0 || strncmp(v->name, prefix, plen) != 0)
        return;
    for (i = 0; v->name[plen + i] && i + 1 < len; i++)
        out[i] = (char)(is_upper ? v->name[plen + i] : tolower((unsigned char)v->name[plen + i]));
    out[i] = '\0';
}

/* The Ticket inside any ticket.* payload: each has it as its field "ticket". */
static const Aftercare__V1__Ticket *payload_ticket(const Aftercare__V1__Envelope *env)
{
    const ProtobufCMessage *p = ac_event_payload(env);
    const ProtobufCFieldDescriptor *f;
    if (!p || !(f = protobuf_c_message_descriptor_get_field_by_name(p->descriptor, "ticket")) ||
        f->type != PROTOBUF_C_TYPE_MESSAGE || f->descriptor != &aftercare__v1__ticket__descriptor)
        return NULL;
    return *(const Aftercare__V1__Ticket *const *)(const void *)((const char *)p + f->offset);
}

static int on_ticket_event(const ac_consumer_event_t *ev, ac_db_txn_t *txn, void *arg)
{
    const Aftercare__V1__Ticket *t = payload_ticket(ev->env);
    char version[24], priority[8], category[32], tier[16], status[32];
    (void)arg;

    if (!t || !t->id || !t->id[0] || !t->number || !t->number[0] || t->version < 1) {
        ac_log_at(AC_LOG_WARN, NULL, ev->env->id, "%s without a usable ticket: skipped", ev->topic);
        return AC_ERR_INVALID; /* dead-lettered: an operator can look at it */
    }
    snprintf(version, sizeof version, "%lld", (long long)t->version);
    enum_api_name(&aftercare__v1__priority__descriptor, t->priority, "PRIORITY_", 1, priority,
                  sizeof priority);
    enum_api_name(&aftercare__v1__category__descriptor, t->category, "CATEGORY_", 0, category,
                  sizeof category);
    enum_api_name(&aftercare__v1__customer_tier__descriptor, t->customer ? t->customer->tier : 0,
                  "CUSTOMER_TIER_", 0, tier, sizeof tier);
    enum_api_name(&aftercare__v1__ticket_status__descriptor, t->status, "TICKET_STATUS_", 0, status,
                  sizeof status);
    if (!status[0] || !priority[0]) {
        ac_log_at(AC_LOG_WARN, t->number, ev->env->id, "%s with an unknown status or priority",
                  ev->topic);
        return AC_ERR_INVALID;
    }
    const char *values[] = {
        t->id,
        t->number,
        version,
        priority,
        category[0] ? category : "fault_repair",
        t->customer && t->customer->id && t->customer->id[0] ? t->customer->id : NULL,
        tier[0] ? tier : "standard",
        t->product && t->product->model ? t->product->model : "",
        t->product && t->product->region ? t->product->region : "",
        status,
        t->warranty && t->warranty->in_warranty ? "true" : "false",
        t->created_at && t->created_at[0] ? t->created_at : ev->env->time,
        t->updated_at && t->updated_at[0] ? t->updated_at : ev->env->time,
    };
    return ac_db_txn_add(txn, DISPATCH_STMT_TICKET_APPLY, values, NULL, NULL);
}

const ac_consumer_route_t dispatch_ticket_routes[] = {
    {&aftercare__v1__ticket_created__descriptor, on_ticket_event},
    {&aftercare__v1__ticket_updated__descriptor, on_ticket_event},
    {&aftercare__v1__ticket_status_changed__descriptor, on_ticket_event},
    {&aftercare__v1__ticket_resolved__descriptor, on_ticket_event},
    {&aftercare__v1__ticket_closed__descriptor, on_ticket_event},
    {&aftercare__v1__ticket_reopened__descriptor, on_ticket_event},
    {NULL, NULL},
};

/* A ticket number from the path: SV-YYYYMMDD-NNNNNN, or 404. */
static int is_ticket_number(const char *s)
{
    return s && strlen(s) <= 32 && strncmp(s, "SV-", 3) == 0;
}

static void on_ticket_get(ac_http_req_t *req, void *arg)
{
    dispatch_t *self = arg;
    const char *number = ac_http_req_param(req, 0);
    if (dispatch_is_refused(self, req))
        return;
    if (!is_ticket_number(number)) {
        ac_http_reply_error(req, 404, "not_found", NULL, "no ticket %.40s", number ? number : "");
        return;
    }
    dispatch_http_sql(self, req, 0, DISPATCH_STMT_TICKET_GET, (const char *[]){number});
}

const ac_http_route_t dispatch_ticket_http_routes[] = {
    {"GET", "/v1/tickets/{}",
     AC_ROLE_AGENT | AC_ROLE_ENGINEER | AC_ROLE_SUPERVISOR | AC_ROLE_INTEGRATION, on_ticket_get,
     "tickets_get"},
    {NULL, NULL, 0, NULL, NULL},
};
