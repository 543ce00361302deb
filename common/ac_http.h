/* ac_http.h — the HTTP/JSON server every service exposes, on the service's libev loop.
 *
 * Built on libmicrohttpd in external-event-loop mode (its epoll fd is an ev_io watcher)
 * with suspend/resume, so a handler can answer later — after a database round trip —
 * while other requests keep flowing. jansson builds and parses the JSON.
 *
 * What the module does before a handler runs, in this order:
 *   route lookup (404 not_found / 405 method_not_allowed), bearer token (401
 *   unauthorized), role (403 forbidden), Content-Length / body size (413
 *   payload_too_large), Content-Type for bodies (415 unsupported_media_type; requests with
 *   a body must be application/json), JSON parse (400 malformed_json).
 * Every error body is {"error":{"code":"...","message":"...","field":"..."}} ("field"
 * only when one field is to blame). Built-in routes: GET /healthz (no token) and
 * GET /metrics (no token; Prometheus text), plus request counters and latency histograms.
 *
 * Owns: the MHD daemon, its watchers, the requests in flight.
 */
#ifndef AC_HTTP_H
#define AC_HTTP_H

#include <stddef.h>

#include "ac_err.h"

struct ac_principal;

struct ev_loop;
struct json_t;
struct ac_metrics;

typedef struct ac_http ac_http_t;
typedef struct ac_http_req ac_http_req_t;

/* The handler must eventually answer with exactly one ac_http_reply*() call, now or
 * later from another callback; the request stays valid until then. */
typedef void (*ac_http_handler_fn)(ac_http_req_t *req, void *arg);

typedef struct ac_http_route {
    const char *method;  /* "GET", "POST", "PATCH", ... */
    const char *pattern; /* "/v1/tickets/{}/transitions": each {} matches one segment */
    int roles; /* AC_ROLE_* mask allowed (admin always allowed); AC_ROLE_PUBLIC: no token */
    ac_http_handler_fn handler;
    const char *name; /* metrics label, e.g. "tickets_create" */
} ac_http_route_t;

typedef struct ac_http_config {
    const char *bind_addr; /* "127.0.0.1" or "0.0.0.0" */
    int port;
    size_t max_body_bytes;         /* 413 above this; default 65536 when 0 */
    unsigned max_connections;      /* default 1024 when 0 */
    unsigned timeout_s;            /* idle connection timeout; default 30 when 0 */
    const ac_http_route_t *routes; /* terminated by { NULL } */
    void *handler_arg;             /* passed to every handler */
    /* Token -> role bit, and who it is (ac_auth.h); 0 for an unknown token (401);
     * negative when tokens cannot be checked yet, e.g. not loaded from the database (503
     * unavailable). */
    int (*authenticate)(void *arg, const char *token, struct ac_principal *who_out);
    void *auth_arg;
    /* /healthz: add one member per dependency to `checks` (e.g. "db": "up"), return 0 when
     * healthy (200 {"status":"ok",...}) or non-zero (503 {"status":"unavailable",...}). */
    int (*health)(void *arg, struct json_t *checks);
    void *health_arg;
    struct ac_metrics *metrics; /* borrowed; /metrics renders it */
} ac_http_config_t;

ac_http_t *ac_http_new(struct ev_loop *loop,
                       const ac_http_config_t *cfg); /* NULL on failure, logged */
/* Stops listening; requests still waiting for a handler's answer get 503. Such a handler
 * must still reply later (the reply is dropped and frees the request). Safe on NULL; sets
 * *self_p = NULL. Not from inside a handler. */
void ac_http_destroy(ac_http_t **self_p);
int ac_http_port(const ac_http_t *self); /* the bound port (useful with port 0) */

/* --- inside a handler ----------------------------------------------------------------- */
const char *ac_http_req_method(const ac_http_req_t *req);
const char *ac_http_req_path(const ac_http_req_t *req);
const char *ac_http_req_param(const ac_http_req_t *req, int i); /* i-th {} segment, decoded */
const char *ac_http_req_query(const ac_http_req_t *req, const char *name);  /* NULL if absent */
const char *ac_http_req_header(const ac_http_req_t *req, const char *name); /* NULL if absent */
/* Borrowed parsed body: always a JSON object for POST/PUT/PATCH (an empty body is 400
 * malformed_json), NULL for other methods. HEAD requests run the GET route. */
struct json_t *ac_http_req_json(const ac_http_req_t *req);
int ac_http_req_role(const ac_http_req_t *req); /* caller's role bit (0 for public routes) */
const char *ac_http_req_principal(const ac_http_req_t *req); /* token name, "" for public */
/* The engineer an engineer's token names (ac_auth.h), "" when none. */
const char *ac_http_req_engineer(const ac_http_req_t *req);
const char *ac_http_req_id(const ac_http_req_t *req); /* X-Request-Id, or a generated UUID */

/* Adds a response header (copied) to the coming reply. */
int ac_http_reply_header(ac_http_req_t *req, const char *name, const char *value);
/* Answer with JSON; takes ownership of body (may be NULL for an empty body). */
void ac_http_reply_json(ac_http_req_t *req, int status, struct json_t *body);
/* Answer with the standard error body. field may be NULL. */
void ac_http_reply_error(ac_http_req_t *req, int status, const char *code, const char *field,
                         const char *fmt, ...) AC_PRINTF(5, 6);

#endif
