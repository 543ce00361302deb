/* tickets.c — dispatch's view of tickets: the consumer of intake's ticket.* events.
 *
 * Every ticket event carries the whole ticket after the change (ticket.proto), so
 * dispatch.ticket_apply() (migrations/002_tickets.sql) keeps dispatch.tickets and the
 * status history current, ignoring a version it has already seen, and calls the other
 * modules' hooks (assignment, SLA) in the same transaction — the consumer's, which also
 * moves the checkpoint. The handler only collects each event's values; at the end of the
 * consumer's batch one statement, dispatch.tickets_apply() (migrations/012), applies them
 * all: the common kinds set-based, the others through ticket_apply() in stream order.
 * Enum values are stored by their API names ("waiting_customer", "vip", "P1").
 *
 * GET /v1/tickets/{number} shows that view (for people wondering whether dispatch has
 * heard of a ticket yet, and for tests). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
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

/* The ticket events of the consumer's transaction in flight, DISPATCH_TICKET_NARGS values
 * each (owned copies), in stream order. */
struct dispatch_ticket_batch {
    char **cells;
    size_t n, cap; /* events */
};

static void batch_clear(struct dispatch_ticket_batch *b)
{
    for (size_t i = 0; i < b->n * DISPATCH_TICKET_NARGS; i++)
        free(b->cells[i]);
    b->n = 0;
}

static int batch_push(dispatch_t *self, const char *const *values)
{
    struct dispatch_ticket_batch *b = self->ticket_batch;
    if (!b && !(b = self->ticket_batch = calloc(1, sizeof *b)))
        return AC_ERR_NOMEM;
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        char **cells = realloc(b->cells, cap * DISPATCH_TICKET_NARGS * sizeof *cells);
        if (!cells)
            return AC_ERR_NOMEM;
        b->cells = cells;
        b->cap = cap;
    }
    char **row = &b->cells[b->n * DISPATCH_TICKET_NARGS];
    for (size_t j = 0; j < DISPATCH_TICKET_NARGS; j++) {
        row[j] = values[j] ? strdup(values[j]) : NULL;
        if (values[j] && !row[j]) {
            for (size_t k = 0; k < j; k++)
                free(row[k]);
            return AC_ERR_NOMEM;
        }
    }
    b->n++;
    return 0;
}

void dispatch_tickets_batch_begin(void *arg)
{
    dispatch_t *self = arg;
    if (self->ticket_batch)
        batch_clear(self->ticket_batch);
}

int dispatch_tickets_batch_end(ac_db_txn_t *txn, void *arg)
{
    dispatch_t *self = arg;
    struct dispatch_ticket_batch *b = self->ticket_batch;
    if (!b || b->n == 0)
        return 0;
    int rc = dispatch_store_add_tickets_apply(txn, (const char *const *)b->cells, b->n);
    batch_clear(b);
    return rc;
}

void dispatch_tickets_stop(dispatch_t *self)
{
    if (!self->ticket_batch)
        return;
    batch_clear(self->ticket_batch);
    free(self->ticket_batch->cells);
    free(self->ticket_batch);
    self->ticket_batch = NULL;
}

static int on_ticket_event(const ac_consumer_event_t *ev, ac_db_txn_t *txn, void *arg)
{
    const Aftercare__V1__Ticket *t = payload_ticket(ev->env);
    char version[24], priority[8], category[32], tier[16], status[32];

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
    const char *values[DISPATCH_TICKET_NARGS] = {
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
        NULL,
    };
    /* a new ticket's clocks, computed here (used only if the ticket is new to dispatch) */
    char *sla = strcmp(ev->topic, "ticket.created") == 0
                    ? dispatch_sla_propose(arg, t->number, values[3], values[6], values[4], status,
                                           values[11], values[12])
                    : NULL;
    values[DISPATCH_TICKET_ARG_SLA] = sla;
    (void)txn; /* the statement comes at the end of the batch */
    int rc = batch_push(arg, values);
    free(sla);
    return rc;
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
