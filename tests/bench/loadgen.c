/* loadgen.c — bench-loadgen: an HTTP/1.1 keep-alive load generator for POST endpoints.
 *
 * N client threads, each with its own connection and one request in flight. Every request
 * body (and header) has its placeholder replaced by a value unique in this run, so every
 * request is distinct (no idempotency replay, no duplicate-key shortcut).
 *
 * Modes:
 *   --duration S             closed loop: each client sends its next request as soon as
 *                            the previous answer is in; measures maximum throughput.
 *   --rate R --duration S    open loop: R requests/s in total, each client on a fixed
 *                            schedule; latency is measured from the *scheduled* send time,
 *                            so a stalled server is charged for the requests it delayed
 *                            (no coordinated omission). A client still behind at the end
 *                            counts its never-sent requests as "missed".
 *
 * Prints one line of key=value on stdout (see tests/bench/README.md); diagnostics on
 * stderr. Needs only libc, pthreads and libm: plain sockets, a minimal response parser
 * (status line, Content-Length, chunked, Connection: close). */
#define _GNU_SOURCE /* memmem */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LG_MAX_CLIENTS    1024
#define LG_MAX_HEADERS    16
#define LG_MAX_RESPONSE   (8u << 20)
#define LG_DEFAULT_URL    "http://127.0.0.1:8081/v1/tickets"
#define LG_DEFAULT_HOLDER "{{N}}"

typedef struct lg_config {
    char host[304];
    char port[16];
    char path[1024];
    const char *body;                    /* template; owned when read from a file */
    const char *placeholder;             /* replaced by a unique value in body and headers */
    const char *headers[LG_MAX_HEADERS]; /* extra "Name: value" templates */
    size_t nheaders;
    const char *token; /* bearer token, or NULL */
    int clients;
    double duration_s;
    double rate;           /* total requests/s; 0 = closed loop */
    int expect_status;     /* what counts as ok (201) */
    int timeout_ms;        /* per response */
    char run_id[32];       /* makes values unique across runs too */
    struct addrinfo *addr; /* resolved once */
} lg_config_t;

typedef struct strbuf {
    char *s;
    size_t len, cap;
} strbuf_t;

typedef struct client {
    int index;
    pthread_t thread;
    const lg_config_t *cfg;
    int fd;           /* -1 when not connected */
    uint64_t on_conn; /* requests answered on this connection */
    char *rbuf;       /* response bytes */
    size_t rlen, rcap;
    strbuf_t req, body;
    uint64_t seq;     /* next unique value */
    uint32_t *lat_us; /* one per completed request */
    size_t n_lat, cap_lat;
    uint64_t ok, errors, connects, missed;
    int64_t end_ns; /* when this client finished */
} client_t;

static int64_t g_start_ns; /* set before the barrier releases the clients */
static int64_t g_deadline_ns;
static pthread_barrier_t g_barrier;
static pthread_mutex_t g_report_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_reported_status; /* first unexpected status already shown */
static int g_reported_io;     /* first transport error already shown */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_until_ns(int64_t t)
{
    struct timespec ts = {.tv_sec = t / 1000000000, .tv_nsec = t % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("bench-loadgen: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static void report_io_once(const char *what, int err)
{
    pthread_mutex_lock(&g_report_lock);
    if (!g_reported_io) {
        g_reported_io = 1;
        fprintf(stderr, "bench-loadgen: first transport error: %s: %s\n", what,
                err ? strerror(err) : "connection closed");
    }
    pthread_mutex_unlock(&g_report_lock);
}

/* --- strings ---------------------------------------------------------------------------- */

static void sb_reserve(strbuf_t *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->s, cap);
    if (p == NULL)
        die("out of memory");
    b->s = p;
    b->cap = cap;
}

static void sb_addn(strbuf_t *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_add(strbuf_t *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}

/* Appends tmpl with every occurrence of holder replaced by value. */
static void sb_expand(strbuf_t *b, const char *tmpl, const char *holder, const char *value)
{
    size_t hl = strlen(holder);
    const char *p = tmpl, *hit;
    while (hl > 0 && (hit = strstr(p, holder)) != NULL) {
        sb_addn(b, p, (size_t)(hit - p));
        sb_add(b, value);
        p = hit + hl;
    }
    sb_add(b, p);
}

/* --- connection ------------------------------------------------------------------------- */

static void conn_close(client_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->rlen = 0;
    c->on_conn = 0;
}

static int conn_open(client_t *c)
{
    const lg_config_t *cfg = c->cfg;
    int last_err = 0;
    for (const struct addrinfo *ai = cfg->addr; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_err = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
            last_err = errno;
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct timeval tv = {.tv_sec = cfg->timeout_ms / 1000,
                             .tv_usec = (suseconds_t)(cfg->timeout_ms % 1000) * 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        c->fd = fd;
        c->rlen = 0;
        c->on_conn = 0;
        c->connects++;
        return 0;
    }
    report_io_once("connect", last_err);
    return -1;
}

static int send_all(client_t *c, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads more bytes into rbuf. 1 read, 0 EOF, -1 error (errno). */
static int read_more(client_t *c)
{
    if (c->rlen + 4096 + 1 > c->rcap) {
        size_t cap = c->rcap ? c->rcap * 2 : 16384;
        if (cap > LG_MAX_RESPONSE) {
            errno = EMSGSIZE;
            return -1;
        }
        char *p = realloc(c->rbuf, cap);
        if (p == NULL)
            die("out of memory");
        c->rbuf = p;
        c->rcap = cap;
    }
    for (;;) {
        ssize_t n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen - 1, 0);
        if (n > 0) {
            c->rlen += (size_t)n;
            c->rbuf[c->rlen] = '\0';
            return 1;
        }
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

static int ensure(client_t *c, size_t need)
{
    while (c->rlen < need) {
        int r = read_more(c);
        if (r <= 0)
            return -1;
    }
    return 0;
}

/* Offset just past the next CRLF at or after off, reading more as needed; 0 on failure. */
static size_t next_line(client_t *c, size_t off, size_t *line_end)
{
    for (;;) {
        const char *crlf = c->rlen > off ? memmem(c->rbuf + off, c->rlen - off, "\r\n", 2) : NULL;
        if (crlf != NULL) {
            *line_end = (size_t)(crlf - c->rbuf);
            return *line_end + 2;
        }
        if (read_more(c) <= 0)
            return 0;
    }
}

enum { RESP_OK = 0, RESP_ERR = -1, RESP_EMPTY_EOF = -2 };

/* Reads one response. *status, *keep_alive out; consumed bytes are dropped from rbuf. */
static int read_response(client_t *c, int *status, int *keep_alive)
{
    size_t hdr_end;
    const char *end;
    for (;;) {
        end = c->rlen > 0 ? memmem(c->rbuf, c->rlen, "\r\n\r\n", 4) : NULL;
        if (end != NULL)
            break;
        int r = read_more(c);
        if (r == 0 && c->rlen == 0)
            return RESP_EMPTY_EOF;
        if (r <= 0) {
            report_io_once("reading the response", r == 0 ? 0 : errno);
            return RESP_ERR;
        }
    }
    hdr_end = (size_t)(end - c->rbuf) + 4;

    /* "HTTP/1.x SSS ..." */
    if (hdr_end < 12 || memcmp(c->rbuf, "HTTP/1.", 7) != 0 || c->rbuf[8] != ' ' ||
        !isdigit((unsigned char)c->rbuf[9]) || !isdigit((unsigned char)c->rbuf[10]) ||
        !isdigit((unsigned char)c->rbuf[11])) {
        report_io_once("malformed status line", 0);
        return RESP_ERR;
    }
    *status = (c->rbuf[9] - '0') * 100 + (c->rbuf[10] - '0') * 10 + (c->rbuf[11] - '0');
    *keep_alive = c->rbuf[7] != '0';
    long long content_length = -1;
    int is_chunked = 0;
    const char *line = (const char *)memchr(c->rbuf, '\n', hdr_end) + 1;
    while (line < c->rbuf + hdr_end - 2) {
        const char *eol = memchr(line, '\n', (size_t)(c->rbuf + hdr_end - line));
        if (eol == NULL)
            break;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon != NULL) {
            size_t nlen = (size_t)(colon - line);
            const char *v = colon + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            if (nlen == 14 && strncasecmp(line, "Content-Length", 14) == 0)
                content_length = strtoll(v, NULL, 10);
            else if (nlen == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0)
                is_chunked = strncasecmp(v, "chunked", 7) == 0;
            else if (nlen == 10 && strncasecmp(line, "Connection", 10) == 0) {
                if (strncasecmp(v, "close", 5) == 0)
                    *keep_alive = 0;
                else if (strncasecmp(v, "keep-alive", 10) == 0)
                    *keep_alive = 1;
            }
        }
        line = eol + 1;
    }

    size_t consumed;
    if (is_chunked) {
        size_t off = hdr_end, eol;
        for (;;) {
            size_t next = next_line(c, off, &eol);
            if (next == 0)
                goto io_error;
            unsigned long long size = strtoull(c->rbuf + off, NULL, 16);
            off = next;
            if (size == 0) {
                /* Trailers until an empty line. */
                for (;;) {
                    next = next_line(c, off, &eol);
                    if (next == 0)
                        goto io_error;
                    if (eol == off) {
                        off = next;
                        break;
                    }
                    off = next;
                }
                break;
            }
            if (size > LG_MAX_RESPONSE || ensure(c, off + size + 2) != 0)
                goto io_error;
            off += size + 2;
        }
        consumed = off;
    } else if (content_length >= 0) {
        if ((unsigned long long)content_length > LG_MAX_RESPONSE ||
            ensure(c, hdr_end + (size_t)content_length) != 0)
            goto io_error;
        consumed = hdr_end + (size_t)content_length;
    } else if ((*status >= 100 && *status < 200) || *status == 204 || *status == 304) {
        consumed = hdr_end;
    } else {
        /* Body runs to the end of the connection. */
        int r;
        while ((r = read_more(c)) > 0)
            ;
        if (r < 0)
            goto io_error;
        consumed = c->rlen;
        *keep_alive = 0;
    }

    if (*status != c->cfg->expect_status) {
        pthread_mutex_lock(&g_report_lock);
        if (!g_reported_status) {
            g_reported_status = 1;
            size_t blen = consumed - hdr_end;
            fprintf(stderr, "bench-loadgen: first unexpected response: HTTP %d: %.*s\n", *status,
                    (int)(blen > 400 ? 400 : blen), c->rbuf + hdr_end);
        }
        pthread_mutex_unlock(&g_report_lock);
    }
    memmove(c->rbuf, c->rbuf + consumed, c->rlen - consumed);
    c->rlen -= consumed;
    return RESP_OK;

io_error:
    report_io_once("reading the response body", errno);
    return RESP_ERR;
}

/* --- one request ------------------------------------------------------------------------ */

static void build_request(client_t *c)
{
    const lg_config_t *cfg = c->cfg;
    char value[64];
    snprintf(value, sizeof value, "%s-%d-%" PRIu64, cfg->run_id, c->index, c->seq++);

    c->body.len = 0;
    sb_add(&c->body, "");
    sb_expand(&c->body, cfg->body, cfg->placeholder, value);

    strbuf_t *r = &c->req;
    r->len = 0;
    sb_add(r, "POST ");
    sb_add(r, cfg->path);
    sb_add(r, " HTTP/1.1\r\nHost: ");
    sb_add(r, cfg->host);
    sb_add(r, ":");
    sb_add(r, cfg->port);
    sb_add(r, "\r\nUser-Agent: bench-loadgen\r\nContent-Type: application/json\r\n");
    if (cfg->token != NULL) {
        sb_add(r, "Authorization: Bearer ");
        sb_add(r, cfg->token);
        sb_add(r, "\r\n");
    }
    for (size_t i = 0; i < cfg->nheaders; i++) {
        sb_expand(r, cfg->headers[i], cfg->placeholder, value);
        sb_add(r, "\r\n");
    }
    char cl[64];
    snprintf(cl, sizeof cl, "Content-Length: %zu\r\n\r\n", c->body.len);
    sb_add(r, cl);
    sb_addn(r, c->body.s, c->body.len);
}

static void record(client_t *c, int64_t start_ns, int64_t end_ns)
{
    if (c->n_lat == c->cap_lat) {
        size_t cap = c->cap_lat ? c->cap_lat * 2 : 4096;
        uint32_t *p = realloc(c->lat_us, cap * sizeof *p);
        if (p == NULL)
            die("out of memory");
        c->lat_us = p;
        c->cap_lat = cap;
    }
    int64_t us = (end_ns - start_ns) / 1000;
    c->lat_us[c->n_lat++] = us < 0 ? 0 : us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* Sends one request and reads its answer; latency counts from start_ns. 0 when an answer
 * came (whatever its status), -1 when none did. A request on a reused connection that the
 * server had already closed (EOF before any byte, or a failed send) is retried once on a
 * new connection, as HTTP clients do. */
static int do_request(client_t *c, int64_t start_ns)
{
    build_request(c);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (c->fd < 0) {
            if (conn_open(c) != 0)
                break;
        }
        int is_reused = c->on_conn > 0;
        if (send_all(c, c->req.s, c->req.len) != 0) {
            int err = errno;
            conn_close(c);
            if (is_reused)
                continue;
            report_io_once("send", err);
            break;
        }
        int status = 0, keep_alive = 0;
        int r = read_response(c, &status, &keep_alive);
        if (r == RESP_EMPTY_EOF && is_reused) {
            conn_close(c);
            continue;
        }
        if (r != RESP_OK) {
            if (r == RESP_EMPTY_EOF)
                report_io_once("reading the response", 0);
            conn_close(c);
            break;
        }
        c->on_conn++;
        if (!keep_alive)
            conn_close(c);
        record(c, start_ns, now_ns());
        if (status == c->cfg->expect_status)
            c->ok++;
        else
            c->errors++;
        return 0;
    }
    /* No answer: an error, and its latency counts too (up to the failure). */
    record(c, start_ns, now_ns());
    c->errors++;
    return -1;
}

static void *client_main(void *arg)
{
    client_t *c = arg;
    const lg_config_t *cfg = c->cfg;

    (void)conn_open(c); /* before the clock starts; failures are retried per request */
    pthread_barrier_wait(&g_barrier);

    if (cfg->rate > 0) {
        double interval_ns = 1e9 * cfg->clients / cfg->rate;
        int64_t first = g_start_ns + (int64_t)(1e9 * c->index / cfg->rate);
        for (uint64_t k = 0;; k++) {
            int64_t sched = first + (int64_t)(interval_ns * (double)k);
            if (sched >= g_deadline_ns)
                break;
            int64_t now = now_ns();
            if (now >= g_deadline_ns) {
                /* Still behind at the end: these were never sent. */
                c->missed += (uint64_t)ceil((double)(g_deadline_ns - sched) / interval_ns);
                break;
            }
            if (sched > now)
                sleep_until_ns(sched);
            (void)do_request(c, sched); /* failures are counted inside */
        }
    } else {
        while (now_ns() < g_deadline_ns) {
            if (do_request(c, now_ns()) != 0)
                usleep(10000); /* no answer (e.g. connection refused): do not spin */
        }
    }
    c->end_ns = now_ns();
    conn_close(c);
    return NULL;
}

/* --- set-up and report ------------------------------------------------------------------ */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(const uint32_t *sorted, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)ceil(p * (double)n);
    if (i > 0)
        i--;
    if (i >= n)
        i = n - 1;
    return sorted[i] / 1000.0;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        die("cannot open %s: %s", path, strerror(errno));
    strbuf_t b = {0};
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        sb_addn(&b, chunk, n);
    if (ferror(f))
        die("cannot read %s", path);
    fclose(f);
    if (b.s == NULL)
        sb_add(&b, "");
    /* A trailing newline from an editor is not part of the JSON. */
    while (b.len > 0 && (b.s[b.len - 1] == '\n' || b.s[b.len - 1] == '\r'))
        b.s[--b.len] = '\0';
    return b.s;
}

static void parse_url(lg_config_t *cfg, const char *url)
{
    const char *p = url;
    if (strncmp(p, "http://", 7) != 0)
        die("only http:// URLs are supported: %s", url);
    p += 7;
    const char *slash = strchr(p, '/');
    size_t hostport_len = slash ? (size_t)(slash - p) : strlen(p);
    char hostport[300];
    if (hostport_len == 0 || hostport_len >= sizeof hostport)
        die("bad URL %s", url);
    memcpy(hostport, p, hostport_len);
    hostport[hostport_len] = '\0';
    snprintf(cfg->path, sizeof cfg->path, "%s", slash ? slash : "/");
    char *colon = strrchr(hostport, ':');
    if (hostport[0] == '[') { /* [v6]:port */
        char *close_br = strchr(hostport, ']');
        if (close_br == NULL)
            die("bad URL %s", url);
        *close_br = '\0';
        snprintf(cfg->host, sizeof cfg->host, "%s", hostport + 1);
        colon = close_br[1] == ':' ? close_br + 1 : NULL;
    } else {
        if (colon != NULL)
            *colon = '\0';
        snprintf(cfg->host, sizeof cfg->host, "%s", hostport);
    }
    snprintf(cfg->port, sizeof cfg->port, "%s", colon ? colon + 1 : "80");
}

static void usage(FILE *out)
{
    fputs(
        "Usage: bench-loadgen [OPTIONS] (--body JSON | --body-file FILE)\n"
        "\n"
        "  --url URL            target (default " LG_DEFAULT_URL ")\n"
        "  --body JSON          request body template\n"
        "  --body-file FILE     request body template from a file\n"
        "  --placeholder TEXT   replaced by a unique value per request (default " LG_DEFAULT_HOLDER
        ")\n"
        "  --header 'N: V'      extra header (placeholder expanded too); repeatable\n"
        "  --token TOKEN        Authorization: Bearer TOKEN (env AC_TOKEN)\n"
        "  --clients N          concurrent connections, one request in flight each (16)\n"
        "  --duration S         seconds to run (10)\n"
        "  --rate R             open loop at R requests/s in total (default: closed loop)\n"
        "  --expect STATUS      status that counts as ok (201)\n"
        "  --timeout-ms MS      per-response timeout (10000)\n"
        "\n"
        "Output: one line of key=value: requests ok errors seconds rps ok_rps p50_ms p90_ms\n"
        "p99_ms max_ms mode clients target_rps missed reconnects.\n",
        out);
}

static double parse_positive(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v > 0) || !isfinite(v))
        die("%s needs a positive number, not '%s'", opt, s);
    return v;
}

int main(int argc, char **argv)
{
    enum {
        OPT_URL = 256,
        OPT_BODY,
        OPT_BODY_FILE,
        OPT_PLACEHOLDER,
        OPT_HEADER,
        OPT_TOKEN,
        OPT_CLIENTS,
        OPT_DURATION,
        OPT_RATE,
        OPT_EXPECT,
        OPT_TIMEOUT,
    };
    static const struct option options[] = {
        {"url", required_argument, NULL, OPT_URL},
        {"body", required_argument, NULL, OPT_BODY},
        {"body-file", required_argument, NULL, OPT_BODY_FILE},
        {"placeholder", required_argument, NULL, OPT_PLACEHOLDER},
        {"header", required_argument, NULL, OPT_HEADER},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"clients", required_argument, NULL, OPT_CLIENTS},
        {"duration", required_argument, NULL, OPT_DURATION},
        {"rate", required_argument, NULL, OPT_RATE},
        {"expect", required_argument, NULL, OPT_EXPECT},
        {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static lg_config_t cfg;
    const char *url = LG_DEFAULT_URL;
    char *body_owned = NULL;
    int c;

    cfg.placeholder = LG_DEFAULT_HOLDER;
    cfg.clients = 16;
    cfg.duration_s = 10;
    cfg.expect_status = 201;
    cfg.timeout_ms = 10000;
    cfg.token = getenv("AC_TOKEN");
    while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (c) {
        case OPT_URL:
            url = optarg;
            break;
        case OPT_BODY:
            cfg.body = optarg;
            break;
        case OPT_BODY_FILE:
            free(body_owned);
            body_owned = read_file(optarg);
            cfg.body = body_owned;
            break;
        case OPT_PLACEHOLDER:
            cfg.placeholder = optarg;
            break;
        case OPT_HEADER:
            if (cfg.nheaders == LG_MAX_HEADERS)
                die("at most %d --header options", LG_MAX_HEADERS);
            if (strchr(optarg, ':') == NULL || strpbrk(optarg, "\r\n") != NULL)
                die("--header needs 'Name: value' on one line");
            cfg.headers[cfg.nheaders++] = optarg;
            break;
        case OPT_TOKEN:
            cfg.token = optarg;
            break;
        case OPT_CLIENTS:
            cfg.clients = (int)parse_positive("--clients", optarg);
            if (cfg.clients < 1 || cfg.clients > LG_MAX_CLIENTS)
                die("--clients must be 1..%d", LG_MAX_CLIENTS);
            break;
        case OPT_DURATION:
            cfg.duration_s = parse_positive("--duration", optarg);
            break;
        case OPT_RATE:
            cfg.rate = parse_positive("--rate", optarg);
            break;
        case OPT_EXPECT:
            cfg.expect_status = (int)parse_positive("--expect", optarg);
            break;
        case OPT_TIMEOUT:
            cfg.timeout_ms = (int)parse_positive("--timeout-ms", optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "bench-loadgen: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (cfg.body == NULL) {
        fprintf(stderr, "bench-loadgen: --body or --body-file is required\n");
        usage(stderr);
        return 2;
    }
    if (cfg.token != NULL && (cfg.token[0] == '\0' || strpbrk(cfg.token, "\r\n") != NULL))
        cfg.token = NULL;
    parse_url(&cfg, url);
    snprintf(cfg.run_id, sizeof cfg.run_id, "%lx%x", (unsigned long)time(NULL), (unsigned)getpid());

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int gai = getaddrinfo(cfg.host, cfg.port, &hints, &cfg.addr);
    if (gai != 0)
        die("cannot resolve %s:%s: %s", cfg.host, cfg.port, gai_strerror(gai));

    client_t *clients = calloc((size_t)cfg.clients, sizeof *clients);
    if (clients == NULL)
        die("out of memory");
    if (pthread_barrier_init(&g_barrier, NULL, (unsigned)cfg.clients + 1) != 0)
        die("pthread_barrier_init failed");
    for (int i = 0; i < cfg.clients; i++) {
        clients[i].index = i;
        clients[i].cfg = &cfg;
        clients[i].fd = -1;
        if (pthread_create(&clients[i].thread, NULL, client_main, &clients[i]) != 0)
            die("pthread_create failed");
    }
    /* Every client has tried to connect; start the clock for all at once. */
    g_start_ns = now_ns() + 1000000;
    g_deadline_ns = g_start_ns + (int64_t)(cfg.duration_s * 1e9);
    pthread_barrier_wait(&g_barrier);

    uint64_t ok = 0, errors = 0, reconnects = 0, missed = 0;
    size_t n_lat = 0;
    int64_t end_ns = g_start_ns;
    for (int i = 0; i < cfg.clients; i++) {
        pthread_join(clients[i].thread, NULL);
        ok += clients[i].ok;
        errors += clients[i].errors;
        reconnects += clients[i].connects > 1 ? clients[i].connects - 1 : 0;
        missed += clients[i].missed;
        n_lat += clients[i].n_lat;
        if (clients[i].end_ns > end_ns)
            end_ns = clients[i].end_ns;
    }
    uint32_t *lat = malloc((n_lat ? n_lat : 1) * sizeof *lat);
    if (lat == NULL)
        die("out of memory");
    size_t k = 0;
    for (int i = 0; i < cfg.clients; i++) {
        if (clients[i].n_lat > 0)
            memcpy(lat + k, clients[i].lat_us, clients[i].n_lat * sizeof *lat);
        k += clients[i].n_lat;
        free(clients[i].lat_us);
        free(clients[i].rbuf);
        free(clients[i].req.s);
        free(clients[i].body.s);
    }
    qsort(lat, n_lat, sizeof *lat, cmp_u32);

    double seconds = (double)(end_ns - g_start_ns) / 1e9;
    if (seconds <= 0)
        seconds = 1e-9;
    uint64_t requests = ok + errors;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                   (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    printf("requests=%" PRIu64 " ok=%" PRIu64 " errors=%" PRIu64 " seconds=%.3f rps=%.1f"
           " ok_rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f mode=%s clients=%d"
           " target_rps=%.1f missed=%" PRIu64 " reconnects=%" PRIu64 " cpu_s=%.2f\n",
           requests, ok, errors, seconds, (double)requests / seconds, (double)ok / seconds,
           pct_ms(lat, n_lat, 0.50), pct_ms(lat, n_lat, 0.90), pct_ms(lat, n_lat, 0.99),
           n_lat ? lat[n_lat - 1] / 1000.0 : 0.0, cfg.rate > 0 ? "rate" : "closed", cfg.clients,
           cfg.rate, missed, reconnects, cpu_s);

    free(lat);
    free(clients);
    free(body_owned);
    freeaddrinfo(cfg.addr);
    pthread_barrier_destroy(&g_barrier);
    return 0;
}
