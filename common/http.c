/* http.c — ac_http.h on libmicrohttpd (external event loop, epoll) and libev.
 *
 * Driving MHD from the loop: MHD's epoll fd is one ev_io (EV_READ -> MHD_run()), and one
 * ev_timer is re-armed after every MHD_run() from MHD_get_timeout(). A handler that answers
 * later leaves its connection suspended; its reply resumes the connection and "kicks" the
 * timer to 0 s so that MHD_run() queues the response on the next loop iteration.
 *
 * Life of a request (ac_http_req_t):
 *   on_uri()      MHD saw the request line: allocate, keep the raw path (MHD hands the
 *                 access handler a path it has already percent-decoded, which would turn
 *                 %2F into a segment separator).
 *   on_access()   1st call: request id, route, token, role, Content-Length, Content-Type.
 *                 An error here is queued at once when a body is announced (MHD then
 *                 skips the body and closes), else on the next call (keeping keep-alive).
 *                 Body chunks: accumulated up to max_body_bytes, the excess discarded.
 *                 Last call: parse the JSON and call the handler; queue its reply if it
 *                 gave one, else suspend. After resume: queue the reply.
 *   on_completed() MHD is done with the connection (sent, failed, or client gone). The
 *                 request is freed unless its handler still owes a reply; then the reply
 *                 frees it (and is dropped). So a handler may reply after the client
 *                 vanished, or after ac_http_destroy(), without harm.
 */
#include "ac_http.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ev.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "ac_auth.h"
#include "ac_log.h"
#include "ac_metrics.h"
#include "ac_time.h"
#include "ac_uuid.h"

#define DEFAULT_BIND_ADDR       "127.0.0.1"
#define DEFAULT_MAX_BODY_BYTES  65536
#define DEFAULT_MAX_CONNECTIONS 1024
#define DEFAULT_TIMEOUT_S       30
#define MAX_SEGMENTS            32  /* path segments matched against a pattern */
#define MAX_REQUEST_ID_LEN      100 /* a client's X-Request-Id longer than this is replaced */
#define DISCARD_FACTOR          8 /* a chunked body this many times the limit: drop the connection */
#define DESTROY_FLUSH_ROUNDS    8 /* MHD_run() rounds to send the 503s at destroy */

#define JSON_CONTENT_TYPE    "application/json"
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define METRIC_REQUESTS      "http_requests_total"
#define METRIC_DURATION      "http_request_duration_seconds"

typedef enum {
    REQ_NEW,     /* request line seen; headers not looked at yet */
    REQ_BODY,    /* checks passed; receiving the body */
    REQ_HANDLER, /* inside the handler call */
    REQ_WAITING, /* connection suspended until the handler replies */
    REQ_QUEUED,  /* response handed to MHD */
} req_phase_t;

typedef struct reply_header {
    struct reply_header *next;
    char *name;  /* owned */
    char *value; /* owned */
} reply_header_t;

struct ac_http_req {
    ac_http_t *http;                 /* NULL once the server is destroyed */
    struct MHD_Connection *conn;     /* NULL once MHD is done with the request */
    struct ac_http_req *prev, *next; /* in http->reqs */
    req_phase_t phase;
    const ac_http_route_t *route;     /* NULL: no route matched */
    char *method;                     /* owned */
    char *path;                       /* owned; raw (not decoded), without the query */
    char *segments;                   /* owned; decoded path segments, NUL-separated */
    const char *params[MAX_SEGMENTS]; /* into segments: the {} matches */
    int nparams;
    char id[MAX_REQUEST_ID_LEN + 1];  /* X-Request-Id */
    int role;                         /* caller's role bit; 0 on public routes */
    char *principal;                  /* owned; token name, "" on public routes */
    char engineer_id[AC_UUID_STRLEN]; /* the engineer the token names, or "" */
    int is_body_method;               /* POST/PUT/PATCH: a JSON object body is required */
    char *body;                       /* owned; the upload so far */
    size_t body_len, body_cap;
    size_t body_seen; /* bytes uploaded, kept or not */
    int is_body_too_big;
    json_t *json;                  /* owned; parsed body */
    int64_t start_us;              /* monotonic arrival time */
    reply_header_t *headers;       /* owned; extra response headers, in order */
    struct MHD_Response *response; /* owned until queued; may stay NULL on OOM */
    int status;
    int is_response_ready; /* status/response are set: queue them */
    int is_handler_called;
    int has_replied;  /* the one reply has been made */
    int is_mhd_done;  /* on_completed() has run */
    int is_abandoned; /* answered 503 by ac_http_destroy(); the handler's reply is dropped */
};

struct ac_http {
    struct ev_loop *loop;      /* borrowed */
    ac_http_config_t cfg;      /* copy with defaults applied; pointers borrowed */
    struct MHD_Daemon *daemon; /* owned */
    int port;                  /* bound port */
    ev_io epoll_io;            /* MHD's epoll fd readable -> MHD_run() */
    ev_timer mhd_timer;        /* MHD's next timeout, or 0 s after a resume */
    ac_http_req_t *reqs;       /* every request not yet freed */
    int is_in_mhd_run;
    int is_run_wanted; /* a connection was resumed: run MHD again soon */
    int is_stopping;   /* inside ac_http_destroy(): no more handlers */
};

static void on_healthz(ac_http_req_t *req, void *arg);
static void on_metrics(ac_http_req_t *req, void *arg);

static const ac_http_route_t BUILTIN_ROUTES[] = {
    {"GET", "/healthz", AC_ROLE_PUBLIC, on_healthz, "healthz"},
    {"GET", "/metrics", AC_ROLE_PUBLIC, on_metrics, "metrics"},
    {NULL, NULL, 0, NULL, NULL},
};

static int is_builtin(const ac_http_route_t *route)
{
    for (size_t i = 0; i < AC_ARRAY_LEN(BUILTIN_ROUTES); i++)
        if (route == &BUILTIN_ROUTES[i])
            return 1;
    return 0;
}

/* --- driving MHD from the loop ---------------------------------------------------------- */

static void arm_timer(ac_http_t *self)
{
    double after_s;
    if (self->is_run_wanted) {
        after_s = 0.;
    } else {
#if MHD_VERSION >= 0x00097701
        int64_t ms = MHD_get_timeout64s(self->daemon);
        if (ms < 0) {
            ev_timer_stop(self->loop, &self->mhd_timer);
            return;
        }
#else
        MHD_UNSIGNED_LONG_LONG ms;
        if (MHD_get_timeout(self->daemon, &ms) != MHD_YES) {
            ev_timer_stop(self->loop, &self->mhd_timer);
            return;
        }
#endif
        after_s = (double)ms / 1000.;
    }
    ev_timer_stop(self->loop, &self->mhd_timer);
    ev_timer_set(&self->mhd_timer, after_s, 0.);
    ev_timer_start(self->loop, &self->mhd_timer);
}

static void run_mhd(ac_http_t *self)
{
    self->is_in_mhd_run = 1;
    self->is_run_wanted = 0;
    MHD_run(self->daemon);
    self->is_in_mhd_run = 0;
    arm_timer(self);
}

/* A connection was resumed: make sure MHD_run() follows soon. */
static void kick(ac_http_t *self)
{
    self->is_run_wanted = 1;
    if (!self->is_in_mhd_run)
        arm_timer(self);
}

static void on_epoll_ready(struct ev_loop *loop, ev_io *w, int revents)
{
    run_mhd(ac_container_of(w, ac_http_t, epoll_io));
}

static void on_mhd_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    run_mhd(ac_container_of(w, ac_http_t, mhd_timer));
}

/* --- small helpers ---------------------------------------------------------------------- */

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A bounded, low-cardinality method label: the standard methods, else "other". */
static const char *method_label(const char *method)
{
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    for (size_t i = 0; method != NULL && i < AC_ARRAY_LEN(known); i++)
        if (strcmp(method, known[i]) == 0)
            return known[i];
    return "other";
}

/* Copies s into out as a Prometheus label value (escaping \, " and newline). */
static void label_escape(const char *s, char *out, size_t len)
{
    size_t n = 0;
    for (; *s != '\0' && n + 3 < len; s++) {
        if (*s == '\\' || *s == '"' || *s == '\n') {
            out[n++] = '\\';
            out[n++] = *s == '\n' ? 'n' : *s;
        } else {
            out[n++] = *s;
        }
    }
    out[n] = '\0';
}

/* A JSON string for text that may not be valid UTF-8 (bytes >= 0x80 become '?' then). */
static json_t *json_text(const char *s)
{
    json_t *j = json_string(s);
    if (j != NULL)
        return j;
    char *copy = strdup(s);
    if (copy == NULL)
        return NULL;
    for (char *p = copy; *p != '\0'; p++)
        if ((unsigned char)*p >= 0x80 || (unsigned char)*p < 0x20)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

static int is_token_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int is_header_name(const char *s)
{
    if (s == NULL || *s == '\0')
        return 0;
    for (; *s != '\0'; s++)
        if (!is_token_char(*s))
            return 0;
    return 1;
}

static int is_header_value(const char *s)
{
    if (s == NULL)
        return 0;
    for (; *s != '\0'; s++)
        if (((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f)
            return 0;
    return 1;
}

/* "application/json", optionally followed by parameters ("; charset=utf-8"). */
static int is_json_content_type(const char *ct)
{
    static const char json[] = JSON_CONTENT_TYPE;
    if (ct == NULL)
        return 0;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    if (strncasecmp(ct, json, sizeof(json) - 1) != 0)
        return 0;
    ct += sizeof(json) - 1;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return *ct == '\0' || *ct == ';';
}

/* The token of "Bearer <token>" (scheme case-insensitive), or NULL. */
static const char *bearer_token(const char *authz)
{
    if (authz == NULL)
        return NULL;
    while (*authz == ' ' || *authz == '\t')
        authz++;
    if (strncasecmp(authz, "Bearer", 6) != 0 || (authz[6] != ' ' && authz[6] != '\t'))
        return NULL;
    authz += 6;
    while (*authz == ' ' || *authz == '\t')
        authz++;
    return *authz != '\0' ? authz : NULL;
}

/* --- requests --------------------------------------------------------------------------- */

static ac_http_req_t *req_new(ac_http_t *http, const char *uri)
{
    ac_http_req_t *req = calloc(1, sizeof(*req));
    if (req == NULL)
        return NULL;
    req->path = strndup(uri, strcspn(uri, "?"));
    if (req->path == NULL) {
        free(req);
        return NULL;
    }
    req->http = http;
    req->start_us = ac_time_mono_us();
    req->next = http->reqs;
    if (http->reqs != NULL)
        http->reqs->prev = req;
    http->reqs = req;
    return req;
}

static void req_unlink(ac_http_req_t *req)
{
    if (req->http == NULL)
        return;
    if (req->prev != NULL)
        req->prev->next = req->next;
    else
        req->http->reqs = req->next;
    if (req->next != NULL)
        req->next->prev = req->prev;
    req->prev = req->next = NULL;
    req->http = NULL;
}

static void req_free(ac_http_req_t *req)
{
    req_unlink(req);
    while (req->headers != NULL) {
        reply_header_t *h = req->headers;
        req->headers = h->next;
        free(h->name);
        free(h->value);
        free(h);
    }
    if (req->response != NULL)
        MHD_destroy_response(req->response);
    json_decref(req->json);
    free(req->body);
    free(req->principal);
    free(req->segments);
    free(req->path);
    free(req->method);
    free(req);
}

/* Freed once MHD is done with it and no handler owes it a reply. */
static void req_maybe_free(ac_http_req_t *req)
{
    if (req->is_mhd_done && (!req->is_handler_called || req->has_replied))
        req_free(req);
}

static void req_record(ac_http_req_t *req)
{
    double elapsed_s = (double)(ac_time_mono_us() - req->start_us) / 1e6;
    const char *route = "unmatched";
    if (req->route != NULL)
        route = req->route->name != NULL ? req->route->name : req->route->pattern;
    const char *method = req->method != NULL ? req->method : "?";

    ac_metrics_t *m = req->http->cfg.metrics;
    if (m != NULL) {
        char route_label[128], labels[256];
        label_escape(route, route_label, sizeof(route_label));
        snprintf(labels, sizeof(labels), "route=\"%s\",method=\"%s\",status=\"%d\"", route_label,
                 method_label(req->method), req->status);
        ac_metrics_add(m, METRIC_REQUESTS, labels, 1);
        snprintf(labels, sizeof(labels), "route=\"%s\"", route_label);
        ac_metrics_observe(m, METRIC_DURATION, labels, elapsed_s);
    }
    ac_log_level_t level =
        req->status >= 500 && !is_builtin(req->route) ? AC_LOG_WARN : AC_LOG_DEBUG;
    ac_log_at(level, NULL, NULL, "http: %s %s -> %d in %.3f ms (route %s, id %s, principal %s)",
              method, req->path, req->status, elapsed_s * 1e3, route, req->id,
              req->principal != NULL && *req->principal != '\0' ? req->principal : "-");
}

/* Builds the response (taking body, malloc'd or NULL) and records the request. On OOM the
 * response stays NULL and the connection is dropped when it would be queued. */
static void req_respond(ac_http_req_t *req, int status, char *body, size_t len,
                        const char *content_type)
{
    struct MHD_Response *r;
    if (body != NULL) {
        r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
        if (r == NULL)
            free(body);
    } else {
        r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
    }
    int ok = r != NULL;
    if (ok && content_type != NULL)
        ok = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) == MHD_YES;
    if (ok)
        ok = MHD_add_response_header(r, "X-Request-Id", req->id) == MHD_YES;
    for (const reply_header_t *h = req->headers; ok && h != NULL; h = h->next)
        ok = MHD_add_response_header(r, h->name, h->value) == MHD_YES;
    if (!ok && r != NULL) {
        MHD_destroy_response(r);
        r = NULL;
    }
    if (r == NULL)
        ac_warn("http: cannot build the %d response for %s %s (id %s); dropping the connection",
                status, req->method != NULL ? req->method : "?", req->path, req->id);
    req->response = r;
    req->status = status;
    req->is_response_ready = 1;
    req_record(req);
}

/* The one exit for every answer. Takes body (malloc'd or NULL). */
static void req_reply(ac_http_req_t *req, int status, char *body, size_t len,
                      const char *content_type)
{
    assert(!req->has_replied && "exactly one reply per request");
    if (req->has_replied) {
        ac_warn("http: second reply to request %s ignored", req->id);
        free(body);
        return;
    }
    req->has_replied = 1;
    if (req->is_mhd_done || req->is_abandoned) {
        /* The client is gone or ac_http_destroy() has answered: nobody to send it to. */
        free(body);
        req_maybe_free(req);
        return;
    }
    req_respond(req, status, body, len, content_type);
    if (req->phase == REQ_WAITING) {
        MHD_resume_connection(req->conn);
        kick(req->http);
    }
}

/* JSON text for body (taken), or a fallback 500 body when it cannot be serialised. */
static char *json_serialise(json_t *body, int *status)
{
    char *text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(body);
    if (text == NULL) {
        ac_error("http: cannot serialise a %d response body", *status);
        *status = 500;
        text = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"internal error\"}}");
    }
    return text;
}

static json_t *error_body(const char *code, const char *field, const char *message)
{
    json_t *err = json_object();
    if (err == NULL)
        return NULL;
    json_object_set_new(err, "code", json_text(code));
    json_object_set_new(err, "message", json_text(message));
    if (field != NULL)
        json_object_set_new(err, "field", json_text(field));
    json_t *body = json_object();
    if (body != NULL)
        json_object_set_new(body, "error", err);
    else
        json_decref(err);
    return body;
}

/* An error answer made here (not by a handler). */
static void reply_error(ac_http_req_t *req, int status, const char *code, const char *fmt, ...)
    AC_PRINTF(4, 5);

static void reply_error(ac_http_req_t *req, int status, const char *code, const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    ac_http_reply_json(req, status, error_body(code, NULL, message));
}

/* 1 when s is well-formed UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF): path parameters reach SQL as text, which must be valid UTF-8. */
static int is_utf8(const unsigned char *s)
{
    while (*s) {
        unsigned c = *s++;
        int n;
        unsigned cp, min;
        if (c < 0x80)
            continue;
        if ((c & 0xe0) == 0xc0) {
            n = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        for (int i = 0; i < n; i++, s++) {
            if ((*s & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (*s & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
    }
    return 1;
}

/* Splits and percent-decodes req->path into req->segments; segs[] point into it. The
 * number of segments, -1 when the path is malformed (bad escape, %00, not UTF-8) or too
 * deep, AC_ERR_NOMEM on OOM. */
static int split_path(ac_http_req_t *req, const char **segs)
{
    const char *p = req->path;
    if (*p != '/')
        return -1;
    char *out = req->segments = malloc(strlen(p) + 1);
    if (out == NULL)
        return AC_ERR_NOMEM;
    int n = 0;
    while (*p == '/') {
        p++;
        if (n == MAX_SEGMENTS)
            return -1;
        segs[n++] = out;
        while (*p != '\0' && *p != '/') {
            if (*p != '%') {
                *out++ = *p++;
                continue;
            }
            int hi = hex_value(p[1]);
            int lo = hi >= 0 ? hex_value(p[2]) : -1;
            if (lo < 0 || (hi | lo) == 0) /* bad escape, or %00 */
                return -1;
            *out++ = (char)(hi << 4 | lo);
            p += 3;
        }
        *out++ = '\0';
        if (!is_utf8((const unsigned char *)segs[n - 1]))
            return -1;
    }
    return n;
}

/* 1 when pattern matches segs; the {} segments go to params. */
static int pattern_match(const char *pattern, const char *const *segs, int nsegs,
                         const char **params, int *nparams)
{
    const char *p = pattern;
    int i = 0, np = 0;
    if (*p != '/')
        return 0;
    while (*p == '/') {
        p++;
        size_t len = strcspn(p, "/");
        if (i >= nsegs)
            return 0;
        if (len == 2 && p[0] == '{' && p[1] == '}') {
            if (*segs[i] == '\0')
                return 0;
            params[np++] = segs[i];
        } else if (strlen(segs[i]) != len || memcmp(segs[i], p, len) != 0) {
            return 0;
        }
        i++;
        p += len;
    }
    if (i != nsegs)
        return 0;
    *nparams = np;
    return 1;
}

/* Appends method to the comma-separated list in allow unless it is there already. */
static void allow_add(char *allow, size_t len, const char *method)
{
    size_t mlen = strlen(method);
    for (const char *a = allow; *a != '\0';) {
        size_t n = strcspn(a, ",");
        if (n == mlen && memcmp(a, method, n) == 0)
            return;
        a += n;
        while (*a == ',' || *a == ' ')
            a++;
    }
    size_t used = strlen(allow);
    if (used + mlen + 3 <= len)
        snprintf(allow + used, len - used, "%s%s", used != 0 ? ", " : "", method);
}

/* Finds the route for method and req->path (built-ins first; HEAD runs the GET route and
 * MHD drops the body). NULL when none: allow then lists the methods the path has ("" when
 * the path is unknown or malformed). */
static const ac_http_route_t *route_find(ac_http_t *http, ac_http_req_t *req, const char *method,
                                         char *allow, size_t allow_len)
{
    const char *segs[MAX_SEGMENTS];
    const char *params[MAX_SEGMENTS];
    int nparams = 0;
    allow[0] = '\0';
    int nsegs = split_path(req, segs);
    if (nsegs < 0)
        return NULL;
    const ac_http_route_t *tables[] = {BUILTIN_ROUTES, http->cfg.routes};
    for (size_t t = 0; t < AC_ARRAY_LEN(tables); t++) {
        for (const ac_http_route_t *r = tables[t]; r != NULL && r->method != NULL; r++) {
            if (!pattern_match(r->pattern, segs, nsegs, params, &nparams))
                continue;
            if (strcmp(r->method, method) == 0 ||
                (strcmp(method, "HEAD") == 0 && strcmp(r->method, "GET") == 0)) {
                memcpy(req->params, params, (size_t)nparams * sizeof(params[0]));
                req->nparams = nparams;
                return r;
            }
            allow_add(allow, allow_len, r->method);
        }
    }
    return NULL;
}

/* X-Request-Id from the client when sane (1..100 printable, no spaces), else a new UUID. */
static void req_set_id(ac_http_req_t *req)
{
    const char *id = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Request-Id");
    size_t len = id != NULL ? strlen(id) : 0;
    int is_ok = len > 0 && len <= MAX_REQUEST_ID_LEN;
    for (size_t i = 0; is_ok && i < len; i++)
        is_ok = id[i] > 0x20 && id[i] < 0x7f;
    if (is_ok)
        memcpy(req->id, id, len + 1);
    else
        ac_uuid_new(req->id);
}

/* Everything decided from the request line and headers. May answer (an error). */
static void req_begin(ac_http_t *http, ac_http_req_t *req, const char *method)
{
    req_set_id(req);
    req->method = strdup(method);
    if (req->method == NULL) {
        reply_error(req, 500, "internal", "out of memory");
        return;
    }
    if (http->is_stopping) {
        reply_error(req, 503, "unavailable", "the server is shutting down");
        return;
    }

    char allow[128];
    req->route = route_find(http, req, method, allow, sizeof(allow));
    if (req->route == NULL) {
        if (allow[0] == '\0') {
            reply_error(req, 404, "not_found", "no such resource: %s", req->path);
        } else {
            (void)ac_http_reply_header(req, "Allow", allow);
            reply_error(req, 405, "method_not_allowed", "%s is not allowed here; allowed: %s",
                        method, allow);
        }
        return;
    }

    if (req->route->roles != AC_ROLE_PUBLIC) {
        const char *authz =
            MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        const char *token = bearer_token(authz);
        ac_principal_t who = {NULL, NULL};
        int role = 0;
        if (token != NULL && http->cfg.authenticate != NULL)
            role = http->cfg.authenticate(http->cfg.auth_arg, token, &who);
        if (role < 0) {
            reply_error(req, 503, "unavailable", "%s",
                        "tokens are not loaded yet (database unavailable); retry shortly");
            return;
        }
        if (role == 0) {
            (void)ac_http_reply_header(req, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
            reply_error(req, 401, "unauthorized", "%s",
                        token == NULL ? "missing bearer token (Authorization: Bearer <token>)"
                                      : "unknown or revoked token");
            return;
        }
        req->role = role;
        req->principal = strdup(who.name != NULL ? who.name : "");
        snprintf(req->engineer_id, sizeof(req->engineer_id), "%s",
                 who.engineer_id != NULL ? who.engineer_id : "");
        if (req->principal == NULL) {
            reply_error(req, 500, "internal", "out of memory");
            return;
        }
        if ((role & AC_ROLE_ADMIN) == 0 && (role & req->route->roles) == 0) {
            reply_error(req, 403, "forbidden", "role %s may not call %s %s", ac_role_name(role),
                        method, req->route->pattern);
            return;
        }
    }

    req->is_body_method =
        strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0;
    if (!req->is_body_method)
        return;
    size_t max = http->cfg.max_body_bytes;
    const char *clen =
        MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (clen != NULL) {
        unsigned long long n = strtoull(clen, NULL, 10);
        if (n > max) {
            reply_error(req, 413, "payload_too_large", "request body of %llu bytes exceeds %zu", n,
                        max);
            return;
        }
        if (n > 0) {
            req->body = malloc((size_t)n);
            req->body_cap = req->body != NULL ? (size_t)n : 0;
        }
    }
    const char *ctype =
        MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!is_json_content_type(ctype))
        reply_error(req, 415, "unsupported_media_type",
                    "Content-Type must be application/json, not %s",
                    ctype != NULL ? ctype : "(none)");
}

/* One chunk of the body. MHD_NO drops the connection (a runaway chunked upload). */
static enum MHD_Result req_consume(ac_http_t *http, ac_http_req_t *req, const char *data,
                                   size_t len)
{
    size_t max = http->cfg.max_body_bytes;
    req->body_seen += len;
    if (!req->is_body_method)
        return MHD_YES; /* a body on GET/DELETE/...: ignored */
    if (req->is_body_too_big || req->body_len + len > max) {
        req->is_body_too_big = 1;
        if (req->body_seen / DISCARD_FACTOR > max) {
            ac_warn("http: %s %s (id %s): body keeps coming past %zu bytes; dropping it",
                    req->method, req->path, req->id, max);
            return MHD_NO;
        }
        return MHD_YES;
    }
    if (req->body_len + len > req->body_cap) {
        size_t cap = req->body_cap ? req->body_cap : 1024;
        while (cap < req->body_len + len)
            cap *= 2;
        if (cap > max)
            cap = max;
        char *body = realloc(req->body, cap);
        if (body == NULL) {
            ac_error("http: out of memory receiving a request body");
            return MHD_NO;
        }
        req->body = body;
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, len);
    req->body_len += len;
    return MHD_YES;
}

/* The whole request is in: parse the body and call the handler. */
static void req_run(ac_http_t *http, ac_http_req_t *req)
{
    if (http->is_stopping) {
        reply_error(req, 503, "unavailable", "the server is shutting down");
        return;
    }
    if (req->is_body_method) {
        if (req->is_body_too_big) {
            reply_error(req, 413, "payload_too_large", "request body exceeds %zu bytes",
                        http->cfg.max_body_bytes);
            return;
        }
        if (req->body_len == 0) {
            reply_error(req, 400, "malformed_json", "the request body must be a JSON object");
            return;
        }
        json_error_t jerr;
        req->json = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
        free(req->body);
        req->body = NULL;
        req->body_len = req->body_cap = 0;
        if (req->json == NULL) {
            reply_error(req, 400, "malformed_json", "malformed JSON: %s (line %d, column %d)",
                        jerr.text, jerr.line, jerr.column);
            return;
        }
        if (!json_is_object(req->json)) {
            reply_error(req, 400, "malformed_json", "the request body must be a JSON object");
            return;
        }
    }
    req->phase = REQ_HANDLER;
    req->is_handler_called = 1;
    req->route->handler(req, http->cfg.handler_arg);
}

/* Whether the request announces a body (an error can then be sent before reading it). */
static int has_body(struct MHD_Connection *conn)
{
    const char *clen =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    return (clen != NULL && strtoull(clen, NULL, 10) > 0) ||
           MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING) !=
               NULL;
}

/* Hands the ready response to MHD. */
static enum MHD_Result req_queue(ac_http_req_t *req)
{
    req->phase = REQ_QUEUED;
    if (req->response == NULL)
        return MHD_NO;
    enum MHD_Result rc = MHD_queue_response(req->conn, (unsigned)req->status, req->response);
    MHD_destroy_response(req->response);
    req->response = NULL;
    if (rc != MHD_YES)
        ac_warn("http: cannot queue the %d response for %s %s (id %s)", req->status, req->method,
                req->path, req->id);
    return rc;
}

/* --- MHD callbacks ---------------------------------------------------------------------- */

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    return req_new(cls, uri);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    ac_http_t *http = cls;
    ac_http_req_t *req = *con_cls;
    if (req == NULL) { /* on_uri() ran out of memory */
        ac_error("http: out of memory accepting a request");
        return MHD_NO;
    }
    switch (req->phase) {
    case REQ_NEW:
        req->conn = conn;
        req_begin(http, req, method);
        if (req->is_response_ready && has_body(conn))
            return req_queue(req); /* early: MHD skips the body and closes the connection */
        req->phase = REQ_BODY;     /* without a body, the last call follows at once */
        return MHD_YES;
    case REQ_BODY:
        if (*upload_data_size != 0) {
            enum MHD_Result rc = MHD_YES;
            if (!req->is_response_ready)
                rc = req_consume(http, req, upload_data, *upload_data_size);
            *upload_data_size = 0;
            return rc;
        }
        if (!req->is_response_ready)
            req_run(http, req);
        if (req->is_response_ready)
            return req_queue(req);
        req->phase = REQ_WAITING;
        MHD_suspend_connection(conn);
        return MHD_YES;
    case REQ_WAITING:
        *upload_data_size = 0;
        if (req->is_response_ready)
            return req_queue(req);
        MHD_suspend_connection(conn); /* not resumed by us; wait on */
        return MHD_YES;
    case REQ_HANDLER:
    case REQ_QUEUED:
        *upload_data_size = 0;
        return MHD_YES;
    }
    return MHD_NO;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    ac_http_req_t *req = *con_cls;
    *con_cls = NULL;
    if (req == NULL)
        return;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        ac_debug("http: %s %s (id %s) ended before completion (code %d)",
                 req->method != NULL ? req->method : "?", req->path, req->id, (int)toe);
    req->conn = NULL;
    req->is_mhd_done = 1;
    req_maybe_free(req);
}

/* What MHD says about misbehaving or departed clients is logged at debug, the rest at warn. */
static const char *const MHD_CLIENT_NOISE[] = {
    "remote side",      "disconnected",        "timed out",
    "socket is closed", "Failed to send data", "Error processing request",
};

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == '\r'))
        msg[--len] = '\0';
    ac_log_level_t level = AC_LOG_WARN;
    for (size_t i = 0; i < AC_ARRAY_LEN(MHD_CLIENT_NOISE); i++)
        if (strstr(msg, MHD_CLIENT_NOISE[i]) != NULL)
            level = AC_LOG_DEBUG;
    ac_log_at(level, NULL, NULL, "http: libmicrohttpd: %s", msg);
}
#pragma GCC diagnostic pop

/* --- built-in routes -------------------------------------------------------------------- */

static void on_healthz(ac_http_req_t *req, void *arg)
{
    const ac_http_config_t *cfg = &req->http->cfg;
    json_t *body = json_object();
    int rc;
    if (body == NULL) {
        reply_error(req, 500, "internal", "out of memory");
        return;
    }
    rc = cfg->health != NULL ? cfg->health(cfg->health_arg, body) : 0;
    json_object_set_new(body, "status", json_string(rc == 0 ? "ok" : "unavailable"));
    ac_http_reply_json(req, rc == 0 ? 200 : 503, body);
}

static void on_metrics(ac_http_req_t *req, void *arg)
{
    ac_metrics_t *m = req->http->cfg.metrics;
    char *text = m != NULL ? ac_metrics_render(m) : strdup("");
    if (text == NULL) {
        reply_error(req, 500, "internal", "out of memory rendering metrics");
        return;
    }
    req_reply(req, 200, text, strlen(text), METRICS_CONTENT_TYPE);
}

/* --- public ----------------------------------------------------------------------------- */

ac_http_t *ac_http_new(struct ev_loop *loop, const ac_http_config_t *cfg)
{
    ac_http_t *self = calloc(1, sizeof(*self));
    if (self == NULL) {
        ac_error("http: out of memory");
        return NULL;
    }
    self->loop = loop;
    self->cfg = *cfg;
    if (self->cfg.bind_addr == NULL)
        self->cfg.bind_addr = DEFAULT_BIND_ADDR;
    if (self->cfg.max_body_bytes == 0)
        self->cfg.max_body_bytes = DEFAULT_MAX_BODY_BYTES;
    if (self->cfg.max_connections == 0)
        self->cfg.max_connections = DEFAULT_MAX_CONNECTIONS;
    if (self->cfg.timeout_s == 0)
        self->cfg.timeout_s = DEFAULT_TIMEOUT_S;

    struct sockaddr_in sin = {.sin_family = AF_INET};
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
    struct sockaddr *sa = NULL;
    unsigned int flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (cfg->port < 0 || cfg->port > 65535) {
        ac_error("http: invalid port %d", cfg->port);
        goto fail;
    }
    if (inet_pton(AF_INET, self->cfg.bind_addr, &sin.sin_addr) == 1) {
        sin.sin_port = htons((uint16_t)cfg->port);
        sa = (struct sockaddr *)&sin;
    } else if (inet_pton(AF_INET6, self->cfg.bind_addr, &sin6.sin6_addr) == 1) {
        sin6.sin6_port = htons((uint16_t)cfg->port);
        sa = (struct sockaddr *)&sin6;
        flags |= MHD_USE_IPv6;
    } else {
        ac_error("http: invalid bind address %s (an IPv4 or IPv6 address)", self->cfg.bind_addr);
        goto fail;
    }

    self->daemon = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, on_access, self, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, self, MHD_OPTION_SOCK_ADDR, sa, MHD_OPTION_CONNECTION_LIMIT,
        self->cfg.max_connections, MHD_OPTION_CONNECTION_TIMEOUT, self->cfg.timeout_s,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, self, MHD_OPTION_URI_LOG_CALLBACK, on_uri, self,
        MHD_OPTION_END);
    if (self->daemon == NULL) {
        ac_error("http: cannot listen on %s port %d (see the libmicrohttpd message above)",
                 self->cfg.bind_addr, cfg->port);
        goto fail;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(self->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    if (info == NULL) {
        ac_error("http: libmicrohttpd has no epoll fd");
        goto fail;
    }
    ev_io_init(&self->epoll_io, on_epoll_ready, info->epoll_fd, EV_READ);
    info = MHD_get_daemon_info(self->daemon, MHD_DAEMON_INFO_BIND_PORT);
    self->port = info != NULL ? info->port : cfg->port;

    if (self->cfg.metrics != NULL &&
        (ac_metrics_declare(self->cfg.metrics, METRIC_REQUESTS, AC_METRIC_COUNTER,
                            "HTTP requests answered, by route, method and status") < 0 ||
         ac_metrics_declare(self->cfg.metrics, METRIC_DURATION, AC_METRIC_HISTOGRAM,
                            "Seconds from a request's arrival to its response, by route") < 0))
        goto fail;

    ev_io_start(loop, &self->epoll_io);
    ev_init(&self->mhd_timer, on_mhd_timer);
    arm_timer(self);
    ac_info("http: listening on %s port %d", self->cfg.bind_addr, self->port);
    return self;
fail:
    if (self->daemon != NULL)
        MHD_stop_daemon(self->daemon);
    free(self);
    return NULL;
}

void ac_http_destroy(ac_http_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    ac_http_t *self = *self_p;
    assert(!self->is_in_mhd_run && "ac_http_destroy() from inside a handler");
    self->is_stopping = 1;
    ev_io_stop(self->loop, &self->epoll_io);
    ev_timer_stop(self->loop, &self->mhd_timer);

    /* Requests still waiting for their handler get 503 now; their handler's reply, when it
     * comes, is dropped. MHD must resume every suspended connection before it stops. */
    int nwaiting = 0;
    for (ac_http_req_t *req = self->reqs; req != NULL; req = req->next) {
        if (req->phase != REQ_WAITING || req->is_response_ready)
            continue;
        json_t *body = error_body("unavailable", NULL, "the server is shutting down");
        int status = 503;
        char *text = json_serialise(body, &status);
        req->is_abandoned = 1;
        req_respond(req, status, text, text != NULL ? strlen(text) : 0, JSON_CONTENT_TYPE);
        MHD_resume_connection(req->conn);
        nwaiting++;
    }
    if (nwaiting > 0)
        ac_info("http: answering %d waiting requests with 503", nwaiting);
    for (int i = 0; i < DESTROY_FLUSH_ROUNDS; i++)
        MHD_run(self->daemon);
    MHD_stop_daemon(self->daemon); /* completes every connection: on_completed() */

    /* MHD has completed what it knew about; anything left it has forgotten. Requests whose
     * handler still owes a reply stay until that reply, which frees them. */
    while (self->reqs != NULL) {
        ac_http_req_t *req = self->reqs;
        req_unlink(req);
        req->conn = NULL;
        req->is_mhd_done = 1;
        req_maybe_free(req);
    }
    free(self);
    *self_p = NULL;
}

int ac_http_port(const ac_http_t *self)
{
    return self->port;
}

/* --- inside a handler ------------------------------------------------------------------- */

const char *ac_http_req_method(const ac_http_req_t *req)
{
    return req->method;
}

const char *ac_http_req_path(const ac_http_req_t *req)
{
    return req->path;
}

const char *ac_http_req_param(const ac_http_req_t *req, int i)
{
    return i >= 0 && i < req->nparams ? req->params[i] : NULL;
}

const char *ac_http_req_query(const ac_http_req_t *req, const char *name)
{
    if (req->conn == NULL)
        return NULL;
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *ac_http_req_header(const ac_http_req_t *req, const char *name)
{
    if (req->conn == NULL)
        return NULL;
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

struct json_t *ac_http_req_json(const ac_http_req_t *req)
{
    return req->json;
}

int ac_http_req_role(const ac_http_req_t *req)
{
    return req->role;
}

const char *ac_http_req_principal(const ac_http_req_t *req)
{
    return req->principal != NULL ? req->principal : "";
}

const char *ac_http_req_engineer(const ac_http_req_t *req)
{
    return req->engineer_id;
}

const char *ac_http_req_id(const ac_http_req_t *req)
{
    return req->id;
}

int ac_http_reply_header(ac_http_req_t *req, const char *name, const char *value)
{
    if (req->has_replied)
        return AC_ERR_CONFLICT;
    if (!is_header_name(name) || !is_header_value(value)) {
        ac_warn("http: invalid response header %s ignored", name != NULL ? name : "(null)");
        return AC_ERR_INVALID;
    }
    reply_header_t *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return AC_ERR_NOMEM;
    h->name = strdup(name);
    h->value = strdup(value);
    if (h->name == NULL || h->value == NULL) {
        free(h->name);
        free(h->value);
        free(h);
        return AC_ERR_NOMEM;
    }
    reply_header_t **tail = &req->headers;
    while (*tail != NULL)
        tail = &(*tail)->next;
    *tail = h;
    return 0;
}

void ac_http_reply_json(ac_http_req_t *req, int status, struct json_t *body)
{
    char *text = NULL;
    if (body != NULL && !req->has_replied && !req->is_mhd_done && !req->is_abandoned)
        text = json_serialise(body, &status);
    else
        json_decref(body);
    req_reply(req, status, text, text != NULL ? strlen(text) : 0,
              text != NULL ? JSON_CONTENT_TYPE : NULL);
}

void ac_http_reply_error(ac_http_req_t *req, int status, const char *code, const char *field,
                         const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    ac_http_reply_json(req, status, error_body(code, field, message));
}
