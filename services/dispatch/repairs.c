/* repairs.c — (issue 4) placeholder: its routes come with the module. */
#include "dispatch.h"

const ac_http_route_t dispatch_repair_routes[] = {
    {NULL, NULL, 0, NULL, NULL},
};
