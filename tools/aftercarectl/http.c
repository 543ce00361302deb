/* http.c — the libcurl client for the services' JSON APIs.
 *
 * Notes: one easy handle per request (a command makes a handful at most); responses are
 * capped at CTL_HTTP_MAX_BODY; nothing is retried, so a POST never runs twice behind the
 * user's back (ticket create takes --idempotency-key for safe retries by scripts). */
#include "ctl.h"

#include <curl/curl.h>
#include <stdio.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CTL_HTTP_MAX_BODY          (16u << 20)
#define CTL_HTTP_TIMEOUT_S         30L
#define CTL_HTTP_CONNECT_TIMEOUT_S 5L

typedef struct body_buf {
    char *data;
    size_t len;
    size_t cap;
    int is_truncated;
} body_buf_t;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
    body_buf_t *b = arg;
    size_t n = size * nmemb;
    if (b->len + n > CTL_HTTP_MAX_BODY) {
        b->is_truncated = 1;
        return 0; /* aborts the transfer: CURLE_WRITE_ERROR */
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (p == NULL)
            return 0;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, ptr, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *arg)
{
    ctl_response_t *resp = arg;
    size_t n = size * nmemb;
    static const char name[] = "Idempotent-Replayed:";
    if (n >= sizeof name - 1 && strncasecmp(ptr, name, sizeof name - 1) == 0) {
        const char *v = ptr + sizeof name - 1;
        size_t vlen = n - (sizeof name - 1);
        while (vlen > 0 && (*v == ' ' || *v == '\t')) {
            v++;
            vlen--;
        }
        if (vlen >= 4 && strncasecmp(v, "true", 4) == 0)
            resp->is_replayed = 1;
    }
    return n;
}

static int curl_ready(void)
{
    static int is_initialised;
    if (!is_initialised) {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            ctl_err("cannot initialise libcurl");
            return AC_ERR_NOMEM;
        }
        is_initialised = 1;
        atexit(curl_global_cleanup);
    }
    return 0;
}

char *ctl_url_escape(const char *s)
{
    if (curl_ready() != 0)
        return NULL;
    char *e = curl_easy_escape(NULL, s, 0);
    if (e == NULL)
        return NULL;
    char *copy = strdup(e);
    curl_free(e);
    return copy;
}

static void report_transport_error(CURL *curl, const char *url, CURLcode rc, const char *errbuf)
{
    const char *why = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc);
    long os_errno = 0;
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
        curl_easy_getinfo(curl, CURLINFO_OS_ERRNO, &os_errno);
        ctl_err("cannot connect to %s: %s\n"
                "  Is the service running? Set the address with --url or AC_INTAKE_URL.",
                url, os_errno != 0 ? strerror((int)os_errno) : why);
        break;
    case CURLE_COULDNT_RESOLVE_HOST:
        ctl_err("cannot resolve the host in %s: %s", url, why);
        break;
    case CURLE_OPERATION_TIMEDOUT:
        ctl_err("no answer from %s: %s", url, why);
        break;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        ctl_err("bad URL %s: %s", url, why);
        break;
    default:
        ctl_err("request to %s failed: %s", url, why);
        break;
    }
}

int ctl_http(const ctl_globals_t *g, const char *method, const char *path, const json_t *body,
             const char *idempotency_key, ctl_response_t *resp)
{
    int rc = AC_ERR_IO;
    char *url = NULL, *payload = NULL, *auth = NULL, *idem = NULL;
    struct curl_slist *headers = NULL;
    body_buf_t buf = {0};
    char errbuf[CURL_ERROR_SIZE] = "";
    CURL *curl = NULL;

    memset(resp, 0, sizeof *resp);
    if (curl_ready() != 0)
        return AC_ERR_NOMEM;

    size_t base_len = strlen(g->url);
    while (base_len > 0 && g->url[base_len - 1] == '/')
        base_len--;
    size_t url_len = base_len + strlen(path) + 1;
    url = malloc(url_len);
    if (url == NULL) {
        rc = AC_ERR_NOMEM;
        goto out;
    }
    snprintf(url, url_len, "%.*s%s", (int)base_len, g->url, path);

    curl = curl_easy_init();
    if (curl == NULL) {
        ctl_err("cannot create a libcurl handle");
        rc = AC_ERR_NOMEM;
        goto out;
    }
    headers = curl_slist_append(headers, "Accept: application/json");
    if (g->token != NULL) {
        size_t n = strlen(g->token) + sizeof "Authorization: Bearer ";
        auth = malloc(n);
        if (auth == NULL) {
            rc = AC_ERR_NOMEM;
            goto out;
        }
        snprintf(auth, n, "Authorization: Bearer %s", g->token);
        headers = curl_slist_append(headers, auth);
    }
    if (idempotency_key != NULL) {
        size_t n = strlen(idempotency_key) + sizeof "Idempotency-Key: ";
        idem = malloc(n);
        if (idem == NULL) {
            rc = AC_ERR_NOMEM;
            goto out;
        }
        snprintf(idem, n, "Idempotency-Key: %s", idempotency_key);
        headers = curl_slist_append(headers, idem);
    }
    if (body != NULL) {
        payload = json_dumps(body, JSON_COMPACT);
        if (payload == NULL) {
            rc = AC_ERR_NOMEM;
            goto out;
        }
        headers = curl_slist_append(headers, "Content-Type: application/json");
        /* No "Expect: 100-continue" round trip for our small bodies. */
        headers = curl_slist_append(headers, "Expect:");
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, payload);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)strlen(payload));
    }
    if (headers == NULL) {
        rc = AC_ERR_NOMEM;
        goto out;
    }
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "aftercarectl/0.1");
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &buf);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, resp);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, CTL_HTTP_TIMEOUT_S);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, CTL_HTTP_CONNECT_TIMEOUT_S);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");

    CURLcode cc = curl_easy_perform(curl);
    if (cc != CURLE_OK) {
        if (buf.is_truncated)
            ctl_err("response from %s is larger than %u bytes", url, CTL_HTTP_MAX_BODY);
        else
            report_transport_error(curl, url, cc, errbuf);
        rc = cc == CURLE_COULDNT_CONNECT ? AC_ERR_UNAVAILABLE : AC_ERR_IO;
        goto out;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp->status);
    if (buf.len > 0)
        resp->body = json_loadb(buf.data, buf.len, 0, NULL);
    rc = 0;
out:
    if (curl != NULL)
        curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
    free(buf.data);
    free(payload);
    free(auth);
    free(idem);
    free(url);
    return rc;
}

void ctl_response_clear(ctl_response_t *resp)
{
    json_decref(resp->body);
    memset(resp, 0, sizeof *resp);
}

void ctl_print_http_error(const ctl_response_t *resp)
{
    const json_t *err = json_object_get(resp->body, "error");
    const char *code = json_string_value(json_object_get(err, "code"));
    const char *message = json_string_value(json_object_get(err, "message"));
    const char *field = json_string_value(json_object_get(err, "field"));

    if (message == NULL) {
        ctl_err("HTTP %ld%s", resp->status,
                resp->status == 401 ? " (set --token or AC_TOKEN)" : " with no error message");
        return;
    }
    if (field != NULL && field[0] != '\0')
        ctl_err("%s (field: %s) [HTTP %ld %s]", message, field, resp->status,
                code != NULL ? code : "error");
    else
        ctl_err("%s [HTTP %ld %s]", message, resp->status, code != NULL ? code : "error");
    if (resp->status == 401 && code != NULL)
        fputs("  Check --token or AC_TOKEN.\n", stderr);
}
