/* sla.c — (issue 4) placeholder: the sla worker and its routes come with
 * the module. */
#include "dispatch.h"

const ac_http_route_t dispatch_sla_routes[] = {
    {NULL, NULL, 0, NULL, NULL},
};

int dispatch_sla_start(dispatch_t *self)
{
    (void)self;
    return 0;
}

void dispatch_sla_stop(dispatch_t *self)
{
    (void)self;
}

void dispatch_sla_on_notify(dispatch_t *self, const char *payload)
{
    (void)self;
    (void)payload;
}
