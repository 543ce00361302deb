/* assignment.c — (issue 4) placeholder: the assignment worker and its routes come with
 * the module. */
#include "dispatch.h"

const ac_http_route_t dispatch_assignment_routes[] = {
    {NULL, NULL, 0, NULL, NULL},
};

int dispatch_assignment_start(dispatch_t *self)
{
    (void)self;
    return 0;
}

void dispatch_assignment_stop(dispatch_t *self)
{
    (void)self;
}

void dispatch_assignment_on_notify(dispatch_t *self, const char *payload)
{
    (void)self;
    (void)payload;
}
