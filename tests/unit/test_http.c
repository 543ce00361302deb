/* test_http.c — the HTTP server end to end: a real ac_http on an ephemeral port, driven by
 * a private libev loop in the test thread, and plain-socket clients in a second thread.
 * Client threads only collect responses; every assertion runs in the test thread. */
#define _GNU_SOURCE /* asprintf */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <ev.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "ac_auth.h"
#include "ac_err.h"
#include "ac_http.h"
#include "ac_metrics.h"

#define MAX_BODY    1024
#define NCONCURRENT 50

/* --- server side ------------------------------------------------------------------------ */

typedef struct fixture {
    struct ev_loop *loop;
    ac_metrics_t *metrics;
    ac_http_t *http;
    int port;
    int is_unhealthy;
    int pending_async;     /* async requests waiting for their timer */
    int max_pending_async; /* the most at once */
    int async_replied;
    int header_rc_bad_name, header_rc_bad_value;
    ac_http_req_t *held; /* a /v1/hang request, never answered by its handler */
    ev_timer destroy_soon;
    ev_async client_done;
    ev_timer watchdog;
    int is_timed_out;
} fixture_t;

typedef struct async_reply {
    ev_timer timer;
    ac_http_req_t *req;
    fixture_t *fx;
} async_reply_t;

static void on_sync(ac_http_req_t *req, void *arg)
{
    fixture_t *fx = arg;
    json_t *body = json_pack("{s:s, s:s, s:s, s:i}", "method", ac_http_req_method(req), "path",
                             ac_http_req_path(req), "principal", ac_http_req_principal(req), "role",
                             ac_http_req_role(req));
    const char *q = ac_http_req_query(req, "q");
    if (q != NULL)
        json_object_set_new(body, "q", json_string(q));
    if (ac_http_req_engineer(req)[0] != '\0')
        json_object_set_new(body, "engineer", json_string(ac_http_req_engineer(req)));
    const char *custom = ac_http_req_header(req, "x-custom"); /* case-insensitive */
    if (custom != NULL)
        json_object_set_new(body, "custom", json_string(custom));
    assert_null(ac_http_req_json(req));
    assert_int_equal(ac_http_reply_header(req, "X-Handled-By", "sync"), 0);
    fx->header_rc_bad_name = ac_http_reply_header(req, "Bad Name", "x");
    fx->header_rc_bad_value = ac_http_reply_header(req, "X-Split", "a\r\nInjected: 1");
    ac_http_reply_json(req, 200, body);
    assert_int_equal(ac_http_reply_header(req, "X-Late", "x"), AC_ERR_CONFLICT);
}

static void on_echo(ac_http_req_t *req, void *arg)
{
    json_t *in = ac_http_req_json(req);
    assert_non_null(in);
    ac_http_reply_json(req, 201, json_pack("{s:O}", "echo", in));
}

static void on_params(ac_http_req_t *req, void *arg)
{
    assert_null(ac_http_req_param(req, 2));
    assert_null(ac_http_req_param(req, -1));
    ac_http_reply_json(
        req, 200,
        json_pack("{s:s, s:s}", "a", ac_http_req_param(req, 0), "b", ac_http_req_param(req, 1)));
}

static void on_async_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    async_reply_t *a = ac_container_of(w, async_reply_t, timer);
    a->fx->pending_async--;
    a->fx->async_replied++;
    ac_http_reply_json(a->req, 200,
                       json_pack("{s:b, s:s}", "async", 1, "id", ac_http_req_id(a->req)));
    free(a);
}

static void on_async(ac_http_req_t *req, void *arg)
{
    fixture_t *fx = arg;
    async_reply_t *a = calloc(1, sizeof(*a));
    assert_non_null(a);
    a->req = req;
    a->fx = fx;
    ev_timer_init(&a->timer, on_async_timer, 0.010, 0.);
    ev_timer_start(fx->loop, &a->timer);
    if (++fx->pending_async > fx->max_pending_async)
        fx->max_pending_async = fx->pending_async;
}

static void on_error(ac_http_req_t *req, void *arg)
{
    ac_http_reply_error(req, 422, "invalid_field", "urgency", "urgency must be one of %s",
                        "normal, urgent, critical");
}

static void on_destroy_soon(struct ev_loop *loop, ev_timer *w, int revents)
{
    fixture_t *fx = ac_container_of(w, fixture_t, destroy_soon);
    ac_http_destroy(&fx->http);
}

static void on_hang(ac_http_req_t *req, void *arg)
{
    fixture_t *fx = arg;
    fx->held = req;
    ev_timer_start(fx->loop, &fx->destroy_soon); /* destroy the server while req waits */
}

static const ac_http_route_t ROUTES[] = {
    {"GET", "/v1/sync", AC_ROLE_ANY, on_sync, "sync"},
    {"POST", "/v1/echo", AC_ROLE_AGENT | AC_ROLE_SUPERVISOR, on_echo, "echo"},
    {"PATCH", "/v1/echo", AC_ROLE_AGENT, on_echo, "echo_patch"},
    {"GET", "/v1/async", AC_ROLE_ANY, on_async, "async"},
    {"GET", "/v1/items/{}/parts/{}", AC_ROLE_ANY, on_params, "params"},
    {"DELETE", "/v1/items/{}", AC_ROLE_SUPERVISOR, on_sync, "items_delete"},
    {"GET", "/v1/public", AC_ROLE_PUBLIC, on_sync, "public"},
    {"GET", "/v1/error", AC_ROLE_ANY, on_error, "error"},
    {"GET", "/v1/hang", AC_ROLE_ANY, on_hang, "hang"},
    {NULL, NULL, 0, NULL, NULL},
};

#define ENGINEER_ID "5d0c7a8e-1f42-4b9a-8c3e-6a1b2d4f9e07"

static int stub_authenticate(void *arg, const char *token, ac_principal_t *who_out)
{
    static const struct {
        const char *token;
        int role;
        const char *name, *engineer_id;
    } tokens[] = {
        {"agent-token", AC_ROLE_AGENT, "alice", ""},
        {"sup-token", AC_ROLE_SUPERVISOR, "sam", ""},
        {"admin-token", AC_ROLE_ADMIN, "root", ""},
        {"wh-token", AC_ROLE_WAREHOUSE, "walt", ""},
        {"eng-token", AC_ROLE_ENGINEER, "erin", ENGINEER_ID},
    };
    for (size_t i = 0; i < AC_ARRAY_LEN(tokens); i++) {
        if (strcmp(token, tokens[i].token) == 0) {
            *who_out = (ac_principal_t){tokens[i].name, tokens[i].engineer_id};
            return tokens[i].role;
        }
    }
    return 0;
}

static int stub_health(void *arg, json_t *checks)
{
    fixture_t *fx = arg;
    json_object_set_new(checks, "db", json_string(fx->is_unhealthy ? "down" : "up"));
    return fx->is_unhealthy ? AC_ERR_UNAVAILABLE : 0;
}

static void on_client_done(struct ev_loop *loop, ev_async *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
    fixture_t *fx = ac_container_of(w, fixture_t, watchdog);
    fx->is_timed_out = 1;
    ev_break(loop, EVBREAK_ALL);
}

static int setup(void **state)
{
    fixture_t *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    fx->loop = ev_loop_new(EVFLAG_AUTO);
    fx->metrics = ac_metrics_new("aftercare_test");
    ac_http_config_t cfg = {
        .bind_addr = "127.0.0.1",
        .port = 0,
        .max_body_bytes = MAX_BODY,
        .routes = ROUTES,
        .handler_arg = fx,
        .authenticate = stub_authenticate,
        .health = stub_health,
        .health_arg = fx,
        .metrics = fx->metrics,
    };
    fx->http = ac_http_new(fx->loop, &cfg);
    assert_non_null(fx->http);
    fx->port = ac_http_port(fx->http);
    assert_true(fx->port > 0);
    ev_timer_init(&fx->destroy_soon, on_destroy_soon, 0., 0.);
    ev_async_init(&fx->client_done, on_client_done);
    ev_async_start(fx->loop, &fx->client_done);
    ev_timer_init(&fx->watchdog, on_watchdog, 30., 0.);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *fx = *state;
    ac_http_destroy(&fx->http);
    assert_null(fx->http);
    ev_async_stop(fx->loop, &fx->client_done);
    ev_timer_stop(fx->loop, &fx->destroy_soon);
    ev_loop_destroy(fx->loop);
    ac_metrics_destroy(&fx->metrics);
    free(fx);
    return 0;
}

/* --- client side ------------------------------------------------------------------------ */

typedef struct response {
    int status; /* 0: no response (connection failed or closed early) */
    char head[4096];
    char *body; /* NUL-terminated */
    size_t body_len;
} response_t;

static void response_free(response_t *r)
{
    free(r->body);
    memset(r, 0, sizeof(*r));
}

/* Value of header name in r (case-insensitive), or NULL; copied into a static buffer. */
static const char *header(const response_t *r, const char *name)
{
    static char value[512];
    size_t len = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p != NULL; p = strstr(p + 2, "\r\n")) {
        const char *line = p + 2;
        if (strncasecmp(line, name, len) == 0 && line[len] == ':') {
            line += len + 1;
            while (*line == ' ')
                line++;
            size_t n = strcspn(line, "\r");
            snprintf(value, sizeof(value), "%.*s", (int)n, line);
            return value;
        }
    }
    return NULL;
}

static int client_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads one response (by Content-Length, else to EOF). 0 or -1. */
static int read_response(int fd, response_t *r)
{
    char buf[8192];
    size_t len = 0;
    char *end = NULL;
    memset(r, 0, sizeof(*r));
    while (end == NULL) {
        if (len == sizeof(buf) - 1)
            return -1;
        ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (n <= 0)
            return -1;
        len += (size_t)n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    size_t head_len = (size_t)(end - buf);
    if (head_len >= sizeof(r->head) || strncmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ')
        return -1;
    r->status = (int)strtol(buf + 9, NULL, 10);
    memcpy(r->head, buf, head_len);
    r->head[head_len] = '\0';
    const char *clen = header(r, "Content-Length");
    long want = clen != NULL ? strtol(clen, NULL, 10) : -1;
    size_t have = len - head_len - 4;
    size_t cap = (want >= 0 ? (size_t)want : have) + 1;
    r->body = malloc(cap);
    memcpy(r->body, end + 4, have < cap - 1 ? have : cap - 1);
    r->body_len = have < cap - 1 ? have : cap - 1;
    while (want < 0 || r->body_len < (size_t)want) {
        if (r->body_len + 1 == cap) {
            cap *= 2;
            r->body = realloc(r->body, cap);
        }
        ssize_t n = recv(fd, r->body + r->body_len, cap - 1 - r->body_len, 0);
        if (n <= 0)
            break;
        r->body_len += (size_t)n;
    }
    r->body[r->body_len] = '\0';
    return want < 0 || r->body_len == (size_t)want ? 0 : -1;
}

/* One raw exchange on a new connection. */
static void exchange_raw(int port, const char *request, response_t *r)
{
    memset(r, 0, sizeof(*r));
    int fd = client_connect(port);
    if (fd < 0)
        return;
    if (send_all(fd, request, strlen(request)) == 0 && read_response(fd, r) < 0)
        r->status = -1;
    close(fd);
}

static char *format_request(const char *method, const char *path, const char *headers,
                            const char *body)
{
    char *req = NULL;
    if (body != NULL)
        assert_true(asprintf(&req,
                             "%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n%s"
                             "Content-Length: %zu\r\n\r\n%s",
                             method, path, headers != NULL ? headers : "", strlen(body), body) > 0);
    else
        assert_true(asprintf(&req, "%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n%s\r\n",
                             method, path, headers != NULL ? headers : "") > 0);
    return req;
}

/* Runs fn in a client thread while the loop runs here, until fn returns. */
typedef struct client {
    fixture_t *fx;
    void (*fn)(struct client *c);
    const char *raw;  /* request for run_one */
    response_t *resp; /* out */
    response_t *many; /* NCONCURRENT responses for run_concurrent */
} client_t;

static void *client_main(void *arg)
{
    client_t *c = arg;
    c->fn(c);
    ev_async_send(c->fx->loop, &c->fx->client_done);
    return NULL;
}

static void run_client(client_t *c)
{
    pthread_t th;
    ev_timer_start(c->fx->loop, &c->fx->watchdog);
    assert_int_equal(pthread_create(&th, NULL, client_main, c), 0);
    ev_run(c->fx->loop, 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    ev_timer_stop(c->fx->loop, &c->fx->watchdog);
    assert_false(c->fx->is_timed_out);
}

static void run_one(client_t *c)
{
    exchange_raw(c->fx->port, c->raw, c->resp);
}

static void fetch_raw(fixture_t *fx, const char *raw, response_t *r)
{
    client_t c = {.fx = fx, .fn = run_one, .raw = raw, .resp = r};
    run_client(&c);
}

static void fetch(fixture_t *fx, response_t *r, const char *method, const char *path,
                  const char *headers, const char *body)
{
    char *raw = format_request(method, path, headers, body);
    fetch_raw(fx, raw, r);
    free(raw);
}

#define AGENT "Authorization: Bearer agent-token\r\n"
#define SUP   "Authorization: Bearer sup-token\r\n"
#define ADMIN "Authorization: Bearer admin-token\r\n"
#define WH    "Authorization: Bearer wh-token\r\n"
#define JSON  "Content-Type: application/json\r\n"

/* The parsed body, which must be JSON; caller decrefs. */
static json_t *body_json(const response_t *r)
{
    json_error_t err;
    json_t *j = json_loads(r->body, 0, &err);
    if (j == NULL)
        fail_msg("response body is not JSON (%s): %s", err.text, r->body);
    return j;
}

/* Asserts r is the standard error body with this status and code. */
static void assert_error(const response_t *r, int status, const char *code)
{
    assert_int_equal(r->status, status);
    assert_string_equal(header(r, "Content-Type"), "application/json");
    json_t *j = body_json(r);
    json_t *err = json_object_get(j, "error");
    assert_true(json_is_object(err));
    assert_string_equal(json_string_value(json_object_get(err, "code")), code);
    assert_true(json_string_length(json_object_get(err, "message")) > 0);
    json_decref(j);
}

/* --- tests ------------------------------------------------------------------------------ */

static void test_sync_handler(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    fetch(fx, &r, "GET", "/v1/sync?q=a%20b&other=1", AGENT "X-Custom: hello\r\n", NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(header(&r, "Content-Type"), "application/json");
    assert_string_equal(header(&r, "X-Handled-By"), "sync");
    assert_null(header(&r, "X-Split"));
    assert_null(header(&r, "Injected"));
    assert_string_equal(r.body, "{\"method\":\"GET\",\"path\":\"/v1/sync\",\"principal\":"
                                "\"alice\",\"role\":1,\"q\":\"a b\",\"custom\":\"hello\"}");
    assert_int_equal(fx->header_rc_bad_name, AC_ERR_INVALID);
    assert_int_equal(fx->header_rc_bad_value, AC_ERR_INVALID);
    response_free(&r);
}

static void test_request_id(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    fetch(fx, &r, "GET", "/v1/sync", AGENT "X-Request-Id: req-42/abc\r\n", NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(header(&r, "X-Request-Id"), "req-42/abc");
    response_free(&r);

    fetch(fx, &r, "GET", "/nowhere", "X-Request-Id: on-error-too\r\n", NULL);
    assert_int_equal(r.status, 404);
    assert_string_equal(header(&r, "X-Request-Id"), "on-error-too");
    response_free(&r);

    /* None, too long, or with spaces: a fresh UUID, different each time. */
    char too_long[200];
    snprintf(too_long, sizeof(too_long), "X-Request-Id: %0101d\r\n", 7);
    const char *variants[] = {"", too_long, "X-Request-Id: has space\r\n"};
    char seen[3][64];
    for (int i = 0; i < 3; i++) {
        char headers[256];
        snprintf(headers, sizeof(headers), AGENT "%s", variants[i]);
        fetch(fx, &r, "GET", "/v1/sync", headers, NULL);
        assert_int_equal(r.status, 200);
        const char *id = header(&r, "X-Request-Id");
        assert_non_null(id);
        assert_int_equal(strlen(id), 36);
        assert_int_equal(id[8], '-');
        snprintf(seen[i], sizeof(seen[i]), "%s", id);
        response_free(&r);
    }
    assert_string_not_equal(seen[0], seen[1]);
    assert_string_not_equal(seen[1], seen[2]);
}

static void test_async_handler(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    fetch(fx, &r, "GET", "/v1/async", AGENT "X-Request-Id: async-1\r\n", NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"async\":true,\"id\":\"async-1\"}");
    assert_string_equal(header(&r, "X-Request-Id"), "async-1");
    assert_int_equal(fx->async_replied, 1);
    response_free(&r);
}

static void test_path_params_are_decoded(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    fetch(fx, &r, "GET", "/v1/items/a%20b/parts/c%2Fd%C3%A9", AGENT, NULL);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "a")), "a b");
    assert_string_equal(json_string_value(json_object_get(j, "b")), "c/d\xc3\xa9");
    json_decref(j);
    response_free(&r);

    const char *bad[] = {"/v1/items/%zz/parts/x", "/v1/items/%4/parts/x", "/v1/items/a%00/parts/x",
                         "/v1/items//parts/x",    "/v1/items/a/parts",    "/v1/items/a/parts/b/c",
                         "/v1/items/a/parts/b/"};
    for (size_t i = 0; i < AC_ARRAY_LEN(bad); i++) {
        fetch(fx, &r, "GET", bad[i], AGENT, NULL);
        assert_error(&r, 404, "not_found");
        response_free(&r);
    }
}

static void test_not_found_and_method_not_allowed(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    fetch(fx, &r, "GET", "/v2/nothing", NULL, NULL);
    assert_error(&r, 404, "not_found");
    response_free(&r);

    fetch(fx, &r, "POST", "/v1/sync", AGENT JSON, "{}");
    assert_error(&r, 405, "method_not_allowed");
    assert_string_equal(header(&r, "Allow"), "GET");
    response_free(&r);

    fetch(fx, &r, "GET", "/v1/echo", NULL, NULL);
    assert_error(&r, 405, "method_not_allowed");
    assert_string_equal(header(&r, "Allow"), "POST, PATCH");
    response_free(&r);
}

static void test_unauthorized(void **state)
{
    fixture_t *fx = *state;
    const char *bad[] = {"", "Authorization: Bearer nope\r\n", "Authorization: Basic YTpi\r\n",
                         "Authorization: Bearer\r\n", "Authorization: agent-token\r\n"};
    for (size_t i = 0; i < AC_ARRAY_LEN(bad); i++) {
        response_t r;
        fetch(fx, &r, "GET", "/v1/sync", bad[i], NULL);
        assert_error(&r, 401, "unauthorized");
        assert_string_equal(header(&r, "WWW-Authenticate"), "Bearer");
        response_free(&r);
    }
    response_t r;
    fetch(fx, &r, "GET", "/v1/sync", "Authorization: bearer   agent-token\r\n", NULL);
    assert_int_equal(r.status, 200);
    response_free(&r);

    /* A public route needs no token and reports no principal. */
    fetch(fx, &r, "GET", "/v1/public", NULL, NULL);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "principal")), "");
    assert_int_equal(json_integer_value(json_object_get(j, "role")), 0);
    json_decref(j);
    response_free(&r);
}

static void test_forbidden(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    fetch(fx, &r, "POST", "/v1/echo", WH JSON, "{\"a\":1}");
    assert_error(&r, 403, "forbidden");
    response_free(&r);
    fetch(fx, &r, "DELETE", "/v1/items/7", AGENT, NULL);
    assert_error(&r, 403, "forbidden");
    response_free(&r);

    fetch(fx, &r, "DELETE", "/v1/items/7", SUP, NULL);
    assert_int_equal(r.status, 200);
    response_free(&r);
    fetch(fx, &r, "DELETE", "/v1/items/7", ADMIN, NULL); /* admin passes every role check */
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "principal")), "root");
    assert_int_equal(json_integer_value(json_object_get(j, "role")), AC_ROLE_ADMIN);
    json_decref(j);
    response_free(&r);
}

/* An engineer's token names its engineer; handlers see it (and no other token does). */
static void test_engineer_principal(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    fetch(fx, &r, "GET", "/v1/sync", "Authorization: Bearer eng-token\r\n", NULL);
    assert_int_equal(r.status, 200);
    json_t *j = body_json(&r);
    assert_string_equal(json_string_value(json_object_get(j, "principal")), "erin");
    assert_string_equal(json_string_value(json_object_get(j, "engineer")), ENGINEER_ID);
    json_decref(j);
    response_free(&r);
    fetch(fx, &r, "GET", "/v1/sync", SUP, NULL);
    j = body_json(&r);
    assert_null(json_object_get(j, "engineer"));
    json_decref(j);
    response_free(&r);
}

static void test_body_size_limits(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    /* Declared too big: answered before any body is sent. */
    fetch_raw(fx,
              "POST /v1/echo HTTP/1.1\r\nHost: t\r\n" AGENT JSON "Content-Length: 100000\r\n\r\n",
              &r);
    assert_error(&r, 413, "payload_too_large");
    response_free(&r);

    /* Chunked, too big once it arrives. */
    char chunk[2 * MAX_BODY + 1];
    memset(chunk, ' ', sizeof(chunk) - 1);
    chunk[sizeof(chunk) - 1] = '\0';
    char *raw = NULL;
    assert_true(asprintf(&raw,
                         "POST /v1/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" AGENT JSON
                         "Transfer-Encoding: chunked\r\n\r\n%zx\r\n%s\r\n0\r\n\r\n",
                         strlen(chunk), chunk) > 0);
    fetch_raw(fx, raw, &r);
    free(raw);
    assert_error(&r, 413, "payload_too_large");
    response_free(&r);

    /* Exactly at the limit: accepted. */
    char body[MAX_BODY + 1];
    memset(body, ' ', MAX_BODY);
    memcpy(body, "{\"k\":\"v\"}", 9);
    body[MAX_BODY] = '\0';
    fetch(fx, &r, "POST", "/v1/echo", AGENT JSON, body);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, "{\"echo\":{\"k\":\"v\"}}");
    response_free(&r);

    /* Chunked within the limit: accepted. */
    fetch_raw(fx,
              "POST /v1/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" AGENT JSON
              "Transfer-Encoding: chunked\r\n\r\n4\r\n{\"x\"\r\n4\r\n:[]}\r\n0\r\n\r\n",
              &r);
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, "{\"echo\":{\"x\":[]}}");
    response_free(&r);
}

static void test_content_type(void **state)
{
    fixture_t *fx = *state;
    const char *bad[] = {"Content-Type: text/plain\r\n", "", "Content-Type: application/jsonx\r\n",
                         "Content-Type: application/x-www-form-urlencoded\r\n"};
    for (size_t i = 0; i < AC_ARRAY_LEN(bad); i++) {
        char headers[256];
        snprintf(headers, sizeof(headers), AGENT "%s", bad[i]);
        response_t r;
        fetch(fx, &r, "POST", "/v1/echo", headers, "{\"a\":1}");
        assert_error(&r, 415, "unsupported_media_type");
        response_free(&r);
    }
    const char *good[] = {"Content-Type: application/json; charset=utf-8\r\n",
                          "Content-Type: Application/JSON\r\n"};
    for (size_t i = 0; i < AC_ARRAY_LEN(good); i++) {
        char headers[256];
        snprintf(headers, sizeof(headers), AGENT "%s", good[i]);
        response_t r;
        fetch(fx, &r, "POST", "/v1/echo", headers, "{\"a\":1}");
        assert_int_equal(r.status, 201);
        response_free(&r);
    }
}

static void test_malformed_json(void **state)
{
    fixture_t *fx = *state;
    const char *bad[] = {"{\"a\":",
                         "[1,2]",
                         "\"text\"",
                         "{\"a\":1,\"a\":2}",
                         "{\"a\":1} x",
                         "",
                         "{\"a\":\"\\u0000\"}",
                         "{\"a\":\"\xff\"}"};
    for (size_t i = 0; i < AC_ARRAY_LEN(bad); i++) {
        response_t r;
        fetch(fx, &r, "POST", "/v1/echo", AGENT JSON, bad[i]);
        assert_error(&r, 400, "malformed_json");
        response_free(&r);
    }
    response_t r;
    fetch(fx, &r, "POST", "/v1/echo", AGENT JSON, "{\"a\":");
    json_t *j = body_json(&r);
    const char *msg = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    assert_non_null(strstr(msg, "line 1"));
    json_decref(j);
    response_free(&r);

    /* PATCH needs a body too; a good one goes through. */
    fetch(fx, &r, "PATCH", "/v1/echo", AGENT JSON, NULL);
    assert_error(&r, 400, "malformed_json");
    response_free(&r);
    fetch(fx, &r, "PATCH", "/v1/echo", AGENT JSON, "{\"name\":\"J\xc3\xbcrgen\",\"n\":[1,{}]}");
    assert_int_equal(r.status, 201);
    assert_string_equal(r.body, "{\"echo\":{\"name\":\"J\xc3\xbcrgen\",\"n\":[1,{}]}}");
    response_free(&r);
}

static void test_handler_error_body(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    fetch(fx, &r, "GET", "/v1/error", AGENT, NULL);
    assert_int_equal(r.status, 422);
    assert_string_equal(r.body,
                        "{\"error\":{\"code\":\"invalid_field\",\"message\":\"urgency "
                        "must be one of normal, urgent, critical\",\"field\":\"urgency\"}}");
    response_free(&r);
}

static void test_healthz(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    fetch(fx, &r, "GET", "/healthz", NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"db\":\"up\",\"status\":\"ok\"}");
    response_free(&r);

    fx->is_unhealthy = 1;
    fetch(fx, &r, "GET", "/healthz", NULL, NULL);
    assert_int_equal(r.status, 503);
    assert_string_equal(r.body, "{\"db\":\"down\",\"status\":\"unavailable\"}");
    response_free(&r);
}

static void run_head(client_t *c)
{
    int fd = client_connect(c->fx->port);
    const char *raw = "HEAD /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    if (fd < 0 || send_all(fd, raw, strlen(raw)) < 0)
        return;
    size_t len = 0;
    ssize_t n;
    while (len < sizeof(c->resp->head) - 1 &&
           (n = recv(fd, c->resp->head + len, sizeof(c->resp->head) - 1 - len, 0)) > 0)
        len += (size_t)n;
    c->resp->head[len] = '\0';
    close(fd);
}

static void test_head_and_builtin_methods(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    memset(&r, 0, sizeof(r));
    client_t c = {.fx = fx, .fn = run_head, .resp = &r};
    run_client(&c);
    assert_memory_equal(r.head, "HTTP/1.1 200", 12);
    const char *end = strstr(r.head, "\r\n\r\n");
    assert_non_null(end);
    assert_string_equal(end, "\r\n\r\n"); /* headers only */

    fetch(fx, &r, "POST", "/healthz", JSON, "{}");
    assert_error(&r, 405, "method_not_allowed");
    assert_string_equal(header(&r, "Allow"), "GET");
    response_free(&r);
}

static void test_metrics_endpoint(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    fetch(fx, &r, "GET", "/v1/sync", AGENT, NULL);
    response_free(&r);
    fetch(fx, &r, "GET", "/v1/sync", AGENT, NULL);
    response_free(&r);
    fetch(fx, &r, "GET", "/v1/async", AGENT, NULL);
    response_free(&r);
    fetch(fx, &r, "BREW", "/coffee", NULL, NULL);
    response_free(&r);
    fetch(fx, &r, "GET", "/v1/sync", NULL, NULL);
    response_free(&r);

    fetch(fx, &r, "GET", "/metrics", NULL, NULL);
    assert_int_equal(r.status, 200);
    assert_string_equal(header(&r, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
    const char *expect[] = {
        "# HELP aftercare_test_http_requests_total HTTP requests",
        "# TYPE aftercare_test_http_requests_total counter\n",
        "aftercare_test_http_requests_total{route=\"sync\",method=\"GET\",status=\"200\"} 2\n",
        "aftercare_test_http_requests_total{route=\"sync\",method=\"GET\",status=\"401\"} 1\n",
        "aftercare_test_http_requests_total{route=\"async\",method=\"GET\",status=\"200\"} 1\n",
        ("aftercare_test_http_requests_total{route=\"unmatched\",method=\"other\","
         "status=\"404\"} 1\n"),
        "# TYPE aftercare_test_http_request_duration_seconds histogram\n",
        "aftercare_test_http_request_duration_seconds_count{route=\"sync\"} 3\n",
        "aftercare_test_http_request_duration_seconds_bucket{route=\"async\",le=\"0.005\"} 0\n",
        "aftercare_test_http_request_duration_seconds_bucket{route=\"async\",le=\"+Inf\"} 1\n",
    };
    for (size_t i = 0; i < AC_ARRAY_LEN(expect); i++)
        if (strstr(r.body, expect[i]) == NULL)
            fail_msg("/metrics lacks \"%s\":\n%s", expect[i], r.body);
    response_free(&r);
}

static void run_concurrent(client_t *c)
{
    int fds[NCONCURRENT];
    for (int i = 0; i < NCONCURRENT; i++) {
        char raw[256];
        snprintf(raw, sizeof(raw),
                 "GET /v1/async HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" AGENT
                 "X-Request-Id: conc-%d\r\n\r\n",
                 i);
        fds[i] = client_connect(c->fx->port);
        if (fds[i] >= 0 && send_all(fds[i], raw, strlen(raw)) < 0) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
    for (int i = 0; i < NCONCURRENT; i++) {
        if (fds[i] < 0)
            continue;
        if (read_response(fds[i], &c->many[i]) < 0)
            c->many[i].status = -1;
        close(fds[i]);
    }
}

static void test_concurrent_async_requests(void **state)
{
    fixture_t *fx = *state;
    response_t many[NCONCURRENT];
    memset(many, 0, sizeof(many));
    client_t c = {.fx = fx, .fn = run_concurrent, .many = many};
    run_client(&c);
    for (int i = 0; i < NCONCURRENT; i++) {
        char id[32], body[64];
        snprintf(id, sizeof(id), "conc-%d", i);
        snprintf(body, sizeof(body), "{\"async\":true,\"id\":\"%s\"}", id);
        assert_int_equal(many[i].status, 200);
        assert_string_equal(header(&many[i], "X-Request-Id"), id);
        assert_string_equal(many[i].body, body);
        response_free(&many[i]);
    }
    assert_int_equal(fx->async_replied, NCONCURRENT);
    assert_int_equal(fx->pending_async, 0);
    assert_true(fx->max_pending_async > 1); /* they really were in flight together */
}

static void run_keep_alive(client_t *c)
{
    int fd = client_connect(c->fx->port);
    if (fd < 0)
        return;
    const char *reqs[] = {
        "GET /v1/nothing HTTP/1.1\r\nHost: t\r\n" AGENT "\r\n",
        "GET /v1/async HTTP/1.1\r\nHost: t\r\n" AGENT "\r\n",
        "POST /v1/echo HTTP/1.1\r\nHost: t\r\n" AGENT JSON "Content-Length: 7\r\n\r\n{\"n\":2}",
        "GET /v1/sync HTTP/1.1\r\nHost: t\r\n" AGENT "\r\n",
    };
    for (size_t i = 0; i < AC_ARRAY_LEN(reqs); i++) {
        if (send_all(fd, reqs[i], strlen(reqs[i])) < 0 || read_response(fd, &c->many[i]) < 0)
            break;
    }
    close(fd);
}

static void test_keep_alive_connection(void **state)
{
    fixture_t *fx = *state;
    response_t many[4];
    memset(many, 0, sizeof(many));
    client_t c = {.fx = fx, .fn = run_keep_alive, .many = many};
    run_client(&c);
    assert_int_equal(many[0].status, 404);
    assert_int_equal(many[1].status, 200);
    assert_int_equal(many[2].status, 201);
    assert_string_equal(many[2].body, "{\"echo\":{\"n\":2}}");
    assert_int_equal(many[3].status, 200);
    for (int i = 0; i < 4; i++)
        response_free(&many[i]);
}

static void run_vanishing(client_t *c)
{
    /* Ask for an async answer and hang up before it comes; then check the server is fine. */
    int fd = client_connect(c->fx->port);
    const char *raw = "GET /v1/async HTTP/1.1\r\nHost: t\r\n" AGENT "\r\n";
    if (fd >= 0) {
        send_all(fd, raw, strlen(raw));
        usleep(2000);
        close(fd);
    }
    /* Half a request, then gone; and a malformed request line. */
    fd = client_connect(c->fx->port);
    if (fd >= 0) {
        send_all(fd, "GET /v1/sync HTTP/1.1\r\nHo", 25);
        close(fd);
    }
    exchange_raw(c->fx->port, "NONSENSE\r\n\r\n", &c->many[1]);
    usleep(50000);
    exchange_raw(c->fx->port,
                 "GET /v1/sync HTTP/1.1\r\nHost: t\r\nConnection: close\r\n" AGENT "\r\n",
                 &c->many[0]);
}

static void test_client_vanishes(void **state)
{
    fixture_t *fx = *state;
    response_t many[2];
    memset(many, 0, sizeof(many));
    client_t c = {.fx = fx, .fn = run_vanishing, .many = many};
    run_client(&c);
    assert_int_equal(fx->async_replied, 1); /* replied into the void, without harm */
    assert_int_equal(many[0].status, 200);
    assert_true(many[1].status == 400 || many[1].status <= 0); /* MHD's own rejection */
    response_free(&many[0]);
    response_free(&many[1]);
}

static void test_destroy_answers_waiting_requests(void **state)
{
    fixture_t *fx = *state;
    response_t r;
    fetch(fx, &r, "GET", "/v1/hang", AGENT "X-Request-Id: hang-1\r\n", NULL);
    assert_null(fx->http); /* destroyed while the request waited */
    assert_non_null(fx->held);
    assert_error(&r, 503, "unavailable");
    assert_string_equal(header(&r, "X-Request-Id"), "hang-1");
    response_free(&r);
    /* The handler's late reply is dropped and frees the request (ASan checks both). */
    assert_string_equal(ac_http_req_id(fx->held), "hang-1");
    ac_http_reply_json(fx->held, 200, json_object());
    fx->held = NULL;
}

static void test_bad_config(void **state)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    ac_http_route_t none[] = {{NULL, NULL, 0, NULL, NULL}};
    ac_http_config_t cfg = {.bind_addr = "not an address", .routes = none};
    assert_null(ac_http_new(loop, &cfg));
    cfg.bind_addr = "127.0.0.1";
    cfg.port = 70000;
    assert_null(ac_http_new(loop, &cfg));
    /* Without metrics, /metrics is empty and requests still work (IPv6 loopback). */
    cfg.bind_addr = "::1";
    cfg.port = 0;
    ac_http_t *http = ac_http_new(loop, &cfg);
    if (http != NULL) /* hosts without IPv6 cannot bind ::1 */
        assert_true(ac_http_port(http) > 0);
    ac_http_destroy(&http);
    ac_http_destroy(&http);
    ev_loop_destroy(loop);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_sync_handler),
        T(test_request_id),
        T(test_async_handler),
        T(test_path_params_are_decoded),
        T(test_not_found_and_method_not_allowed),
        T(test_unauthorized),
        T(test_forbidden),
        T(test_engineer_principal),
        T(test_body_size_limits),
        T(test_content_type),
        T(test_malformed_json),
        T(test_handler_error_body),
        T(test_healthz),
        T(test_head_and_builtin_methods),
        T(test_metrics_endpoint),
        T(test_concurrent_async_requests),
        T(test_keep_alive_connection),
        T(test_client_vanishes),
        T(test_destroy_answers_waiting_requests),
        cmocka_unit_test(test_bad_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
