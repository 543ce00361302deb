/* events_bench.c — bench-events: the measuring end of tests/bench/events.sh (issue 3).
 *
 *   bench-events raw     --envelope HEX [--count N]
 *       Raw ZeroMQ PUB/SUB with CURVE on loopback, no bus: a forked publisher (XPUB, CURVE
 *       server, NODROP so that nothing is dropped) sends N copies of a real envelope to a
 *       SUB (CURVE client) in this process, which reads each sequence like the other modes.
 *       This is the baseline the relay is compared with.
 *   bench-events sub     --endpoint EP --key-file F --server-key K --from A --to B
 *       One CURVE subscriber on the bus output; ready (--ready-file) once a bus.heartbeat
 *       has arrived; ends when every sequence A..B of --source has arrived.
 *   bench-events replay  --endpoint EP --key-file F --server-key K --from A --to B
 *       One replay request on the bus's replay endpoint, read to its replay.end.
 *   bench-events pub     --endpoint EP --key-file F --server-key K --envelope HEX --source S
 *       A service's publisher (ac_bus_pub, as the outbox relay uses it) sending --count
 *       copies of the envelope, with source S and sequences 1.., straight into the bus
 *       input: the bus's forwarding rate without the database. Runs until SIGTERM.
 *   bench-events latency --db CONNINFO --envelope HEX --endpoint EP --key-file F --server-key K
 *       A writer thread commits one outbox row per transaction at --rate per second for
 *       --duration seconds (correlation_id "bench-lat-<run>-<k>"); a subscriber on the bus
 *       output records when each arrives. Latency = receipt - COMMIT acknowledged (and,
 *       for comparison, receipt - COMMIT sent).
 *
 * Each mode prints one line of key=value pairs on stdout (tests/bench/README.md).
 *
 * The raw mode includes <zmq.h> directly: ac_bus.h deliberately offers no blocking
 * sockets and no process of their own, and the baseline must be ZeroMQ alone (no libev, no
 * aftercare code in the path). Everything else goes through ac_bus.h and ac_db.h. */
#define _GNU_SOURCE
#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "aftercare/v1/bus.pb-c.h"
#include "aftercare/v1/envelope.pb-c.h"
#include "ac_bus.h"
#include "ac_db.h"
#include "ac_event.h"
#include "ac_log.h"
#include "ac_uuid.h"

#define MAX_ENVELOPE (1 << 20)

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("bench-events: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* --- options shared by the modes ------------------------------------------------------------ */

typedef struct opts {
    const char *envelope_file; /* hex of one outbox envelope (no sequence) */
    const char *topic;
    const char *endpoint;
    const char *replay_endpoint; /* sub: repair gaps from here, like a real consumer */
    const char *key_file;
    const char *server_key;
    const char *source;
    const char *prefix; /* replay topic prefix */
    const char *ready_file;
    const char *db;
    const char *schema;
    uint64_t from, to;
    long count;
    double rate, duration_s, timeout_s, warmup_s;
    int connections;
    int frames; /* raw: 2 (live layout) or 4 (replay layout) */
} opts_t;

enum {
    O_ENVELOPE = 1000,
    O_TOPIC,
    O_ENDPOINT,
    O_REPLAY_ENDPOINT,
    O_KEY_FILE,
    O_SERVER_KEY,
    O_SOURCE,
    O_PREFIX,
    O_READY_FILE,
    O_DB,
    O_SCHEMA,
    O_FROM,
    O_TO,
    O_COUNT,
    O_RATE,
    O_DURATION,
    O_TIMEOUT,
    O_WARMUP,
    O_CONNECTIONS,
    O_FRAMES,
};

static const struct option long_opts[] = {
    {"envelope", required_argument, NULL, O_ENVELOPE},
    {"topic", required_argument, NULL, O_TOPIC},
    {"endpoint", required_argument, NULL, O_ENDPOINT},
    {"replay-endpoint", required_argument, NULL, O_REPLAY_ENDPOINT},
    {"key-file", required_argument, NULL, O_KEY_FILE},
    {"server-key", required_argument, NULL, O_SERVER_KEY},
    {"source", required_argument, NULL, O_SOURCE},
    {"prefix", required_argument, NULL, O_PREFIX},
    {"ready-file", required_argument, NULL, O_READY_FILE},
    {"db", required_argument, NULL, O_DB},
    {"schema", required_argument, NULL, O_SCHEMA},
    {"from", required_argument, NULL, O_FROM},
    {"to", required_argument, NULL, O_TO},
    {"count", required_argument, NULL, O_COUNT},
    {"rate", required_argument, NULL, O_RATE},
    {"duration", required_argument, NULL, O_DURATION},
    {"timeout", required_argument, NULL, O_TIMEOUT},
    {"warmup", required_argument, NULL, O_WARMUP},
    {"connections", required_argument, NULL, O_CONNECTIONS},
    {"frames", required_argument, NULL, O_FRAMES},
    {NULL, 0, NULL, 0},
};

static const char USAGE[] =
    "usage: bench-events raw     --envelope HEXFILE [--topic T] [--count N] [--frames 2|4]\n"
    "       bench-events sub     --endpoint EP --key-file F --server-key K --from A --to B\n"
    "                            [--source S] [--ready-file F] [--timeout S]\n"
    "                            [--replay-endpoint EP]   (repair gaps by replay)\n"
    "       bench-events replay  --endpoint EP --key-file F --server-key K --from A --to B\n"
    "                            [--source S] [--prefix P] [--timeout S]\n"
    "       bench-events pub     --endpoint EP --key-file F --server-key K --envelope HEXFILE\n"
    "                            --source S [--count N] [--topic T]   (until SIGTERM)\n"
    "       bench-events latency --db CONNINFO --envelope HEXFILE --endpoint EP --key-file F\n"
    "                            --server-key K [--rate R] [--duration S] [--warmup S]\n"
    "                            [--connections N] [--schema S] [--topic T]\n";

static double num_arg(const char *s, const char *name)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || v < 0)
        die("--%s: not a number >= 0: %s", name, s);
    return v;
}

static void parse_opts(int argc, char **argv, opts_t *o)
{
    int c;
    memset(o, 0, sizeof(*o));
    o->topic = "ticket.created";
    o->source = "aftercare/intake";
    o->prefix = "";
    o->schema = "intake";
    o->count = 200000;
    o->rate = 1000;
    o->duration_s = 10;
    o->timeout_s = 60;
    o->warmup_s = 1;
    o->connections = 4;
    o->frames = 2;
    while ((c = getopt_long(argc, argv, "", long_opts, NULL)) != -1) {
        switch (c) {
        case O_ENVELOPE:
            o->envelope_file = optarg;
            break;
        case O_TOPIC:
            o->topic = optarg;
            break;
        case O_ENDPOINT:
            o->endpoint = optarg;
            break;
        case O_REPLAY_ENDPOINT:
            o->replay_endpoint = optarg;
            break;
        case O_KEY_FILE:
            o->key_file = optarg;
            break;
        case O_SERVER_KEY:
            o->server_key = optarg;
            break;
        case O_SOURCE:
            o->source = optarg;
            break;
        case O_PREFIX:
            o->prefix = optarg;
            break;
        case O_READY_FILE:
            o->ready_file = optarg;
            break;
        case O_DB:
            o->db = optarg;
            break;
        case O_SCHEMA:
            o->schema = optarg;
            break;
        case O_FROM:
            o->from = (uint64_t)num_arg(optarg, "from");
            break;
        case O_TO:
            o->to = (uint64_t)num_arg(optarg, "to");
            break;
        case O_COUNT:
            o->count = (long)num_arg(optarg, "count");
            break;
        case O_RATE:
            o->rate = num_arg(optarg, "rate");
            break;
        case O_DURATION:
            o->duration_s = num_arg(optarg, "duration");
            break;
        case O_TIMEOUT:
            o->timeout_s = num_arg(optarg, "timeout");
            break;
        case O_WARMUP:
            o->warmup_s = num_arg(optarg, "warmup");
            break;
        case O_CONNECTIONS:
            o->connections = (int)num_arg(optarg, "connections");
            break;
        case O_FRAMES:
            o->frames = (int)num_arg(optarg, "frames");
            break;
        default:
            fputs(USAGE, stderr);
            exit(2);
        }
    }
}

static void need(const char *value, const char *name)
{
    if (!value || !*value)
        die("--%s is required\n%s", name, USAGE);
}

/* The hex text of one envelope (as psql prints encode(envelope, 'hex')) -> bytes. */
static uint8_t *read_envelope(const char *path, size_t *len_out)
{
    FILE *f = fopen(path, "r");
    uint8_t *out;
    size_t n = 0;
    int hi = -1, ch;
    if (!f)
        die("%s: %s", path, strerror(errno));
    out = malloc(MAX_ENVELOPE);
    if (!out)
        die("out of memory");
    while ((ch = fgetc(f)) != EOF) {
        int v;
        if (ch >= '0' && ch <= '9')
            v = ch - '0';
        else if (ch >= 'a' && ch <= 'f')
            v = ch - 'a' + 10;
        else if (ch >= 'A' && ch <= 'F')
            v = ch - 'A' + 10;
        else if (ch == '\\' || ch == 'x' || ch == '\n' || ch == '\r' || ch == ' ')
            continue;
        else
            die("%s: not hex", path);
        if (hi < 0) {
            hi = v;
        } else {
            if (n >= MAX_ENVELOPE)
                die("%s: envelope too large", path);
            out[n++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    fclose(f);
    if (n == 0 || hi >= 0)
        die("%s: empty or odd number of hex digits", path);
    *len_out = n;
    return out;
}

static void load_curve(const opts_t *o, ac_curve_t *curve)
{
    char err[512];
    need(o->key_file, "key-file");
    need(o->server_key, "server-key");
    if (ac_curve_load(o->key_file, o->server_key, curve, err, sizeof(err)) != 0)
        die("%s", err);
}

/* --- reading envelopes cheaply ----------------------------------------------------------------
 * Every mode needs the source, the sequence and (latency) the correlation id of each
 * message. A full protobuf-c decode costs more than the transport at these rates, so this
 * walks the top-level fields only; the last occurrence of a field wins, as in protobuf. */
typedef struct env_view {
    uint64_t sequence;
    const uint8_t *source, *correlation;
    size_t source_len, correlation_len;
} env_view_t;

static int varint(const uint8_t **p, const uint8_t *end, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

static int env_scan(const uint8_t *p, size_t n, env_view_t *v)
{
    const uint8_t *end = p + n;
    memset(v, 0, sizeof(*v));
    while (p < end) {
        uint64_t key, val;
        if (varint(&p, end, &key) != 0)
            return -1;
        switch (key & 7) {
        case 0:
            if (varint(&p, end, &val) != 0)
                return -1;
            if ((key >> 3) == 6)
                v->sequence = val;
            break;
        case 1:
            if (end - p < 8)
                return -1;
            p += 8;
            break;
        case 5:
            if (end - p < 4)
                return -1;
            p += 4;
            break;
        case 2:
            if (varint(&p, end, &val) != 0 || val > (uint64_t)(end - p))
                return -1;
            if ((key >> 3) == 2) {
                v->source = p;
                v->source_len = (size_t)val;
            } else if ((key >> 3) == 9) {
                v->correlation = p;
                v->correlation_len = (size_t)val;
            }
            p += val;
            break;
        default:
            return -1;
        }
    }
    return 0;
}

static int view_source_is(const env_view_t *v, const char *source)
{
    size_t n = strlen(source);
    return v->source_len == n && memcmp(v->source, source, n) == 0;
}

/* A bitmap of the sequences from..to seen so far. */
typedef struct seen {
    uint64_t from, to;
    uint8_t *bits;
    uint64_t unique, duplicates, outside;
} seen_t;

static void seen_init(seen_t *s, uint64_t from, uint64_t to)
{
    memset(s, 0, sizeof(*s));
    s->from = from;
    s->to = to;
    s->bits = calloc((size_t)((to - from + 1) / 8 + 1), 1);
    if (!s->bits)
        die("out of memory");
}

static int seen_has(const seen_t *s, uint64_t seq)
{
    uint64_t i = seq - s->from;
    return seq >= s->from && seq <= s->to && (s->bits[i / 8] & (1u << (i % 8)));
}

/* 1 when seq is new and in range. */
static int seen_add(seen_t *s, uint64_t seq)
{
    uint64_t i;
    if (seq < s->from || seq > s->to) {
        s->outside++;
        return 0;
    }
    i = seq - s->from;
    if (s->bits[i / 8] & (1u << (i % 8))) {
        s->duplicates++;
        return 0;
    }
    s->bits[i / 8] |= (uint8_t)(1u << (i % 8));
    s->unique++;
    return 1;
}

/* --- raw: ZeroMQ PUB/SUB with CURVE, no bus ----------------------------------------------- */

static void zcheck(int rc, const char *what)
{
    if (rc != 0)
        die("%s: %s", what, zmq_strerror(errno));
}

/* The forked publisher: binds, reports its endpoint on fd, waits for the subscription,
 * sends count messages and waits (linger) until they are all written. A message is
 * [topic][envelope] like a live event, or with frames == 4 laid out like a replayed one:
 * ["replay.event"][request id][topic][envelope]. */
static void raw_publisher(int fd, const char *server_secret, const char *topic, const uint8_t *env,
                          size_t env_len, long count, int frames)
{
    static const char kind[] = "replay.event", request_id[] = "bench-raw-request";
    void *ctx = zmq_ctx_new();
    void *pub = zmq_socket(ctx, ZMQ_XPUB);
    int one = 1, hwm = 100000, linger = -1;
    char endpoint[256];
    size_t len = sizeof(endpoint);
    uint8_t sub[256];
    uint8_t *buf = malloc(env_len + 11);
    size_t topic_len = strlen(topic);

    if (!pub || !buf)
        die("raw publisher: cannot start");
    zcheck(zmq_setsockopt(pub, ZMQ_CURVE_SERVER, &one, sizeof(one)), "CURVE_SERVER");
    zcheck(zmq_setsockopt(pub, ZMQ_CURVE_SECRETKEY, server_secret, 40), "CURVE_SECRETKEY");
    zcheck(zmq_setsockopt(pub, ZMQ_XPUB_NODROP, &one, sizeof(one)), "XPUB_NODROP");
    zcheck(zmq_setsockopt(pub, ZMQ_SNDHWM, &hwm, sizeof(hwm)), "SNDHWM");
    zcheck(zmq_setsockopt(pub, ZMQ_LINGER, &linger, sizeof(linger)), "LINGER");
    zcheck(zmq_bind(pub, "tcp://127.0.0.1:*"), "bind");
    zcheck(zmq_getsockopt(pub, ZMQ_LAST_ENDPOINT, endpoint, &len), "LAST_ENDPOINT");
    if (write(fd, endpoint, strlen(endpoint) + 1) < 0)
        die("raw publisher: write: %s", strerror(errno));
    close(fd);
    if (zmq_recv(pub, sub, sizeof(sub), 0) < 0) /* the subscription */
        die("raw publisher: recv: %s", zmq_strerror(errno));
    for (long k = 1; k <= count; k++) {
        size_t n = ac_event_append_sequence(env, env_len, (uint64_t)k, buf);
        if (frames == 4 && (zmq_send(pub, kind, sizeof(kind) - 1, ZMQ_SNDMORE) < 0 ||
                            zmq_send(pub, request_id, sizeof(request_id) - 1, ZMQ_SNDMORE) < 0))
            die("raw publisher: send: %s", zmq_strerror(errno));
        if (zmq_send(pub, topic, topic_len, ZMQ_SNDMORE) < 0 || zmq_send(pub, buf, n, 0) < 0)
            die("raw publisher: send: %s", zmq_strerror(errno));
    }
    zmq_close(pub);
    zmq_ctx_term(ctx);
    free(buf);
    _exit(0);
}

static int mode_raw(const opts_t *o)
{
    size_t env_len;
    uint8_t *env;
    char server_public[41], server_secret[41], client_public[41], client_secret[41];
    char endpoint[256] = "";
    int fds[2], status = 0;
    pid_t pid;
    void *ctx, *sub;
    int zero = 0, timeout_ms = 1000;
    seen_t seen;
    int64_t first = 0, last = 0, started, idle_since;
    uint64_t bytes = 0;
    zmq_msg_t frame;

    need(o->envelope_file, "envelope");
    if (o->frames != 2 && o->frames != 4)
        die("--frames must be 2 (live layout) or 4 (replay layout)");
    env = read_envelope(o->envelope_file, &env_len);
    if (o->count < 1)
        die("--count must be >= 1");
    zcheck(zmq_curve_keypair(server_public, server_secret), "zmq_curve_keypair");
    zcheck(zmq_curve_keypair(client_public, client_secret), "zmq_curve_keypair");
    if (pipe(fds) != 0)
        die("pipe: %s", strerror(errno));
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(fds[0]);
        raw_publisher(fds[1], server_secret, o->topic, env, env_len, o->count, o->frames);
    }
    close(fds[1]);
    if (read(fds[0], endpoint, sizeof(endpoint) - 1) <= 0)
        die("the raw publisher did not start");
    close(fds[0]);

    ctx = zmq_ctx_new();
    sub = zmq_socket(ctx, ZMQ_SUB);
    zcheck(zmq_setsockopt(sub, ZMQ_RCVHWM, &zero, sizeof(zero)), "RCVHWM");
    zcheck(zmq_setsockopt(sub, ZMQ_RCVTIMEO, &timeout_ms, sizeof(timeout_ms)), "RCVTIMEO");
    zcheck(zmq_setsockopt(sub, ZMQ_CURVE_SERVERKEY, server_public, 40), "CURVE_SERVERKEY");
    zcheck(zmq_setsockopt(sub, ZMQ_CURVE_PUBLICKEY, client_public, 40), "CURVE_PUBLICKEY");
    zcheck(zmq_setsockopt(sub, ZMQ_CURVE_SECRETKEY, client_secret, 40), "CURVE_SECRETKEY");
    zcheck(zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0), "SUBSCRIBE");
    zcheck(zmq_connect(sub, endpoint), "connect");
    seen_init(&seen, 1, (uint64_t)o->count);
    zmq_msg_init(&frame);
    started = idle_since = now_ns();
    while (seen.unique < (uint64_t)o->count) {
        env_view_t v;
        int more = 1;
        if (zmq_msg_recv(&frame, sub, 0) < 0) {
            if (errno == EAGAIN && now_ns() - idle_since < (int64_t)(o->timeout_s * 1e9))
                continue;
            if (errno == EINTR)
                continue;
            break;
        }
        bytes += zmq_msg_size(&frame);
        while (more && zmq_msg_more(&frame)) { /* the envelope is the last frame */
            if (zmq_msg_recv(&frame, sub, 0) < 0)
                die("recv: %s", zmq_strerror(errno));
            bytes += zmq_msg_size(&frame);
        }
        idle_since = now_ns();
        if (!first)
            first = idle_since;
        last = idle_since;
        if (env_scan(zmq_msg_data(&frame), zmq_msg_size(&frame), &v) == 0)
            seen_add(&seen, v.sequence);
    }
    zmq_msg_close(&frame);
    zmq_close(sub);
    zmq_ctx_term(ctx);
    if (seen.unique < (uint64_t)o->count)
        kill(pid, SIGTERM);
    waitpid(pid, &status, 0);
    {
        double secs = (double)(last - first) / 1e9;
        double rate = secs > 0 ? (double)(seen.unique - 1) / secs : 0;
        printf("raw events=%ld frames=%d received=%" PRIu64 " missing=%" PRIu64
               " envelope_bytes=%zu seconds=%.3f rate=%.0f mb_s=%.1f setup_s=%.3f\n",
               o->count, o->frames, seen.unique, (uint64_t)o->count - seen.unique, env_len + 3,
               secs, rate, secs > 0 ? (double)bytes / secs / 1e6 : 0,
               (double)(first - started) / 1e9);
    }
    free(seen.bits);
    free(env);
    return seen.unique == (uint64_t)o->count ? 0 : 3;
}

/* Sends one replay request (ReplayRequest, see docs/events.md) on a DEALER. */
static int replay_request(ac_zsock_t *sock, const char *request_id, const char *source,
                          uint64_t from, uint64_t to, const char *prefix)
{
    Aftercare__V1__ReplayRequest req = AFTERCARE__V1__REPLAY_REQUEST__INIT;
    uint8_t buf[1024];
    const char *kind = "replay.request";
    const void *data[2] = {kind, buf};
    size_t lens[2] = {strlen(kind), 0};

    req.request_id = (char *)(uintptr_t)request_id;
    req.source = (char *)(uintptr_t)source;
    req.from_sequence = from;
    req.to_sequence = to;
    req.topic_prefix = (char *)(uintptr_t)prefix;
    if (aftercare__v1__replay_request__get_packed_size(&req) > sizeof(buf))
        die("request too large");
    lens[1] = aftercare__v1__replay_request__pack(&req, buf);
    return ac_zsock_send(sock, data, lens, 2);
}

/* --- sub: one subscriber on the bus output ------------------------------------------------- */

typedef struct subscriber {
    const opts_t *o;
    struct ev_loop *loop;
    ac_zsock_t *sock;
    seen_t seen;
    uint64_t received, garbage, heartbeats;
    double first, last, ready_at, started;
    int64_t idle_since;
    ev_timer tick;
    ev_signal sigint, sigterm;
    /* gap repair (--replay-endpoint): what a consumer of common/consumer.c does */
    ac_zsock_t *replay;
    int is_replaying;        /* a request is in flight */
    uint64_t low;            /* every sequence below this was seen */
    uint64_t top;            /* the highest sequence seen live */
    int64_t live_at;         /* when the last live event came */
    uint64_t live, repaired; /* unique events that came live / by replay */
    uint64_t replays, replay_errors;
    char request_id[48];
} subscriber_t;

static void sub_ready(subscriber_t *s, const char *why)
{
    if (s->ready_at > 0)
        return;
    s->ready_at = wall_s();
    if (s->o->ready_file) {
        FILE *f = fopen(s->o->ready_file, "w");
        if (!f || fprintf(f, "%s %.6f\n", why, s->ready_at) < 0 || fclose(f) != 0)
            die("%s: %s", s->o->ready_file, strerror(errno));
    }
}

/* A new event, live or replayed; ends the run once every sequence is in. */
static void sub_got(subscriber_t *s, uint64_t seq, int is_live)
{
    if (!seen_add(&s->seen, seq))
        return;
    double t = wall_s();
    if (s->first == 0)
        s->first = t;
    s->last = t;
    s->idle_since = now_ns();
    if (is_live)
        s->live++;
    else
        s->repaired++;
    if (s->seen.unique == s->seen.to - s->seen.from + 1)
        ev_break(s->loop, EVBREAK_ALL);
}

static void on_sub_readable(ac_zsock_t *sock, void *arg)
{
    subscriber_t *s = arg;
    for (int i = 0; i < 4096; i++) {
        ac_frames_t f;
        env_view_t v;
        if (ac_zsock_recv(sock, &f) != 0)
            break;
        if (f.n != 2 || env_scan(f.data[1], f.len[1], &v) != 0) {
            s->garbage++;
        } else if (strcmp((const char *)f.data[0], "bus.heartbeat") == 0) {
            s->heartbeats++;
            sub_ready(s, "heartbeat");
        } else if (view_source_is(&v, s->o->source)) {
            s->received++;
            s->live_at = now_ns();
            if (v.sequence > s->top)
                s->top = v.sequence;
            sub_got(s, v.sequence, 1);
        }
        ac_frames_clear(&f);
    }
}

static void on_sub_replay(ac_zsock_t *sock, void *arg)
{
    subscriber_t *s = arg;
    for (int i = 0; i < 4096; i++) {
        ac_frames_t f;
        env_view_t v;
        const char *kind;
        if (ac_zsock_recv(sock, &f) != 0)
            break;
        kind = f.n >= 1 ? (const char *)f.data[0] : "";
        if (strcmp(kind, "replay.event") == 0 && f.n == 4 &&
            env_scan(f.data[3], f.len[3], &v) == 0) {
            if (!seen_has(&s->seen, v.sequence))
                sub_got(s, v.sequence, 0);
        } else if (strcmp(kind, "replay.end") == 0) {
            s->is_replaying = 0;
        } else if (strcmp(kind, "replay.error") == 0) {
            s->is_replaying = 0;
            s->replay_errors++;
        } else {
            s->garbage++;
        }
        ac_frames_clear(&f);
    }
}

/* A hole below the highest live sequence, or nothing live for a while after the stream
 * began with sequences still missing (the tail was dropped): ask for that hole alone, one
 * request at a time (what a consumer does when a live event skips ahead). */
static void sub_repair(subscriber_t *s)
{
    uint64_t to;
    if (!s->replay || s->is_replaying || s->top == 0)
        return;
    while (s->low <= s->seen.to && seen_has(&s->seen, s->low))
        s->low++;
    if (s->low > s->seen.to)
        return;
    if (s->low < s->top) {
        to = s->low;
        while (to + 1 < s->top && !seen_has(&s->seen, to + 1))
            to++;
    } else if (now_ns() - s->live_at > 300 * 1000000LL) {
        to = s->seen.to;
    } else {
        return;
    }
    snprintf(s->request_id, sizeof(s->request_id), "bench-repair-%" PRIu64, s->replays);
    if (replay_request(s->replay, s->request_id, s->o->source, s->low, to, "") == 0) {
        s->is_replaying = 1;
        s->replays++;
    }
}

static void on_sub_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    subscriber_t *s = ac_container_of(w, subscriber_t, tick);
    if (s->ready_at == 0 && wall_s() - s->started > 5)
        sub_ready(s, "timeout"); /* no heartbeat (yet): the subscription is probably live */
    if (s->ready_at > 0)
        sub_repair(s);
    if (now_ns() - s->idle_since > (int64_t)(s->o->timeout_s * 1e9)) {
        fprintf(stderr, "bench-events sub: nothing new for %.0f s; giving up\n", s->o->timeout_s);
        ev_break(loop, EVBREAK_ALL);
    }
}

static void on_stop_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

static int mode_sub(const opts_t *o)
{
    subscriber_t s = {.o = o, .loop = EV_DEFAULT};
    ac_curve_t curve;
    uint64_t want;

    need(o->endpoint, "endpoint");
    if (o->from < 1 || o->to < o->from)
        die("--from and --to: 1 <= from <= to");
    load_curve(o, &curve);
    seen_init(&s.seen, o->from, o->to);
    s.low = o->from;
    s.sock = ac_zsock_new(s.loop, AC_ZSOCK_SUB);
    if (!s.sock || ac_zsock_set_hwm(s.sock, 1000, 0) || ac_zsock_set_curve_client(s.sock, &curve) ||
        ac_zsock_subscribe(s.sock, "") || ac_zsock_connect(s.sock, o->endpoint))
        die("cannot subscribe to %s", o->endpoint);
    ac_zsock_on_readable(s.sock, on_sub_readable, &s);
    if (o->replay_endpoint) {
        s.replay = ac_zsock_new(s.loop, AC_ZSOCK_DEALER);
        if (!s.replay || ac_zsock_set_hwm(s.replay, 1000, 0) ||
            ac_zsock_set_curve_client(s.replay, &curve) ||
            ac_zsock_connect(s.replay, o->replay_endpoint))
            die("cannot connect to %s", o->replay_endpoint);
        ac_zsock_on_readable(s.replay, on_sub_replay, &s);
    }
    s.started = wall_s();
    s.idle_since = s.live_at = now_ns();
    ev_timer_init(&s.tick, on_sub_tick, 0.02, 0.02);
    ev_timer_start(s.loop, &s.tick);
    ev_signal_init(&s.sigint, on_stop_signal, SIGINT);
    ev_signal_init(&s.sigterm, on_stop_signal, SIGTERM);
    ev_signal_start(s.loop, &s.sigint);
    ev_signal_start(s.loop, &s.sigterm);
    ev_run(s.loop, 0);
    want = o->to - o->from + 1;
    printf("sub expected=%" PRIu64 " unique=%" PRIu64 " missing=%" PRIu64 " duplicates=%" PRIu64
           " received=%" PRIu64 " heartbeats=%" PRIu64 " garbage=%" PRIu64 " live=%" PRIu64
           " repaired=%" PRIu64 " replays=%" PRIu64 " replay_errors=%" PRIu64
           " ready=%.6f first=%.6f last=%.6f\n",
           want, s.seen.unique, want - s.seen.unique, s.seen.duplicates, s.received, s.heartbeats,
           s.garbage, s.live, s.repaired, s.replays, s.replay_errors, s.ready_at, s.first, s.last);
    ac_zsock_destroy(&s.replay);
    ac_zsock_destroy(&s.sock);
    ac_bus_shutdown();
    free(s.seen.bits);
    return s.seen.unique == want ? 0 : 3;
}

/* --- replay: one request, read to its end ------------------------------------------------- */

typedef struct replayer {
    const opts_t *o;
    struct ev_loop *loop;
    ac_zsock_t *sock;
    char request_id[40];
    uint64_t events, next, out_of_order, end_last, end_events, garbage;
    int64_t sent_at, first_at, done_at;
    int is_done, is_error;
    char error[512];
    ev_timer tick;
} replayer_t;

static void on_replay_readable(ac_zsock_t *sock, void *arg)
{
    replayer_t *r = arg;
    for (int i = 0; i < 4096 && !r->is_done; i++) {
        ac_frames_t f;
        const char *kind;
        if (ac_zsock_recv(sock, &f) != 0)
            break;
        kind = f.n >= 1 ? (const char *)f.data[0] : "";
        if (strcmp(kind, "replay.event") == 0 && f.n == 4) {
            env_view_t v;
            if (strcmp((const char *)f.data[1], r->request_id) != 0 ||
                env_scan(f.data[3], f.len[3], &v) != 0) {
                r->garbage++;
            } else {
                if (!r->first_at)
                    r->first_at = now_ns();
                /* backwards is always wrong; a hole is wrong unless a prefix filters */
                if (v.sequence < r->next || (v.sequence > r->next && !*r->o->prefix))
                    r->out_of_order++;
                r->next = v.sequence + 1;
                r->events++;
            }
        } else if (strcmp(kind, "replay.end") == 0 && f.n == 2) {
            Aftercare__V1__ReplayEnd *end =
                aftercare__v1__replay_end__unpack(NULL, f.len[1], f.data[1]);
            if (end && strcmp(end->request_id, r->request_id) == 0) {
                r->end_last = end->last_sequence;
                r->end_events = end->events;
                r->is_done = 1;
                r->done_at = now_ns();
            } else {
                r->garbage++;
            }
            if (end)
                aftercare__v1__replay_end__free_unpacked(end, NULL);
        } else if (strcmp(kind, "replay.error") == 0 && f.n == 2) {
            Aftercare__V1__ReplayError *err =
                aftercare__v1__replay_error__unpack(NULL, f.len[1], f.data[1]);
            snprintf(r->error, sizeof(r->error), "code=%d message=%s oldest=%" PRIu64,
                     err ? (int)err->code : -1, err ? err->message : "(undecodable)",
                     err ? err->oldest_sequence : 0);
            if (err)
                aftercare__v1__replay_error__free_unpacked(err, NULL);
            r->is_done = r->is_error = 1;
            r->done_at = now_ns();
        } else {
            r->garbage++;
        }
        ac_frames_clear(&f);
    }
    if (r->is_done)
        ev_break(r->loop, EVBREAK_ALL);
}

static void on_replay_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    replayer_t *r = ac_container_of(w, replayer_t, tick);
    if (now_ns() - r->sent_at > (int64_t)(r->o->timeout_s * 1e9)) {
        snprintf(r->error, sizeof(r->error), "no replay.end within %.0f s", r->o->timeout_s);
        r->is_error = 1;
        ev_break(loop, EVBREAK_ALL);
    }
}

static int mode_replay(const opts_t *o)
{
    replayer_t r = {.o = o, .loop = EV_DEFAULT};
    ac_curve_t curve;
    double secs;

    need(o->endpoint, "endpoint");
    if (o->from < 1)
        die("--from must be >= 1");
    load_curve(o, &curve);
    snprintf(r.request_id, sizeof(r.request_id), "bench-%d", (int)getpid());
    r.next = o->from;

    r.sock = ac_zsock_new(r.loop, AC_ZSOCK_DEALER);
    if (!r.sock || ac_zsock_set_hwm(r.sock, 1000, 100000) ||
        ac_zsock_set_curve_client(r.sock, &curve) || ac_zsock_connect(r.sock, o->endpoint))
        die("cannot connect to %s", o->endpoint);
    ac_zsock_on_readable(r.sock, on_replay_readable, &r);
    r.sent_at = now_ns();
    if (replay_request(r.sock, r.request_id, o->source, o->from, o->to, o->prefix) != 0)
        die("cannot send the replay request");
    ev_timer_init(&r.tick, on_replay_tick, 0.5, 0.5);
    ev_timer_start(r.loop, &r.tick);
    ev_run(r.loop, 0);
    if (r.is_error && !r.done_at)
        r.done_at = now_ns();
    secs = (double)(r.done_at - r.sent_at) / 1e9;
    printf("replay events=%" PRIu64 " end_events=%" PRIu64 " last_sequence=%" PRIu64
           " out_of_order=%" PRIu64 " garbage=%" PRIu64 " seconds=%.3f rate=%.0f"
           " first_event_ms=%.1f error=%s\n",
           r.events, r.end_events, r.end_last, r.out_of_order, r.garbage, secs,
           secs > 0 ? (double)r.events / secs : 0,
           r.first_at ? (double)(r.first_at - r.sent_at) / 1e6 : -1.0, r.is_error ? "yes" : "no");
    if (r.is_error)
        fprintf(stderr, "bench-events replay: %s\n", r.error);
    ac_zsock_destroy(&r.sock);
    ac_bus_shutdown();
    return r.is_error || r.out_of_order ? 3 : 0;
}

/* --- pub: a service's publisher straight into the bus input (no database) ---------------- */

typedef struct publisher {
    const opts_t *o;
    struct ev_loop *loop;
    ac_bus_pub_t *pub;
    Aftercare__V1__Envelope *tmpl;
    uint8_t *buf; /* the template packed with the bench source, + room for the sequence */
    size_t len;
    uint8_t *msg;
    long next; /* sequence of the next event */
    int64_t first_ns, done_ns;
    long again; /* sends refused for a full queue */
    ev_signal sigint, sigterm;
} publisher_t;

static void on_pub_ready(void *arg)
{
    publisher_t *p = arg;
    while (p->next <= p->o->count) {
        size_t n = ac_event_append_sequence(p->buf, p->len, (uint64_t)p->next, p->msg);
        int rc = ac_bus_pub_send(p->pub, p->o->topic, p->msg, n);
        if (rc == AC_ERR_AGAIN) {
            p->again++;
            return; /* called again when there is room */
        }
        if (rc != 0)
            die("publish: %s", ac_strerror(rc));
        if (!p->first_ns)
            p->first_ns = now_ns();
        p->next++;
    }
    if (!p->done_ns) {
        p->done_ns = now_ns();
        fprintf(stderr, "bench-events pub: all %ld handed to the socket; waiting for SIGTERM\n",
                p->o->count);
    }
}

static int mode_pub(const opts_t *o)
{
    publisher_t p = {.o = o, .loop = EV_DEFAULT, .next = 1};
    ac_curve_t curve;
    size_t env_len;
    uint8_t *env;

    need(o->endpoint, "endpoint");
    need(o->envelope_file, "envelope");
    if (o->count < 1)
        die("--count must be >= 1");
    load_curve(o, &curve);
    env = read_envelope(o->envelope_file, &env_len);
    p.tmpl = aftercare__v1__envelope__unpack(NULL, env_len, env);
    if (!p.tmpl)
        die("%s: not an Envelope", o->envelope_file);
    {
        char *orig = p.tmpl->source;
        p.tmpl->source = (char *)(uintptr_t)o->source; /* the key's source */
        p.tmpl->sequence = 0;
        p.len = aftercare__v1__envelope__get_packed_size(p.tmpl);
        p.buf = malloc(p.len);
        p.msg = malloc(p.len + 11);
        if (!p.buf || !p.msg)
            die("out of memory");
        aftercare__v1__envelope__pack(p.tmpl, p.buf);
        p.tmpl->source = orig;
    }
    p.pub = ac_bus_pub_new(p.loop, o->endpoint, &curve);
    if (!p.pub)
        die("cannot connect to %s", o->endpoint);
    ac_bus_pub_on_ready(p.pub, on_pub_ready, &p);
    ev_signal_init(&p.sigint, on_stop_signal, SIGINT);
    ev_signal_init(&p.sigterm, on_stop_signal, SIGTERM);
    ev_signal_start(p.loop, &p.sigint);
    ev_signal_start(p.loop, &p.sigterm);
    ev_run(p.loop, 0);
    printf("pub events=%ld sent=%ld again=%ld handed_seconds=%.3f\n", o->count, p.next - 1, p.again,
           p.done_ns ? (double)(p.done_ns - p.first_ns) / 1e9 : -1.0);
    ac_bus_pub_destroy(&p.pub);
    ac_bus_shutdown();
    aftercare__v1__envelope__free_unpacked(p.tmpl, NULL);
    free(p.buf);
    free(p.msg);
    free(env);
    return p.next > o->count ? 0 : 3;
}

/* --- latency: commit one row per transaction at a fixed rate, time its arrival ------------- */

typedef struct lat_event {
    int64_t sent_ns, ack_ns; /* written by the writer thread */
    int64_t recv_ns;         /* written by the subscriber (main) thread */
    int is_failed;
} lat_event_t;

typedef struct latency {
    const opts_t *o;
    long n;          /* events to write */
    lat_event_t *ev; /* n of them */
    char run[16];    /* makes correlation ids unique to this run */
    /* writer (its own thread and loop) */
    struct ev_loop *wloop;
    ac_db_t *db;
    ac_db_config_t dbcfg;
    ac_db_stmt_t stmt;
    char sql[256];
    Aftercare__V1__Envelope *tmpl;
    int64_t t0_ns; /* when event 0 is due */
    long next;     /* next event to write */
    long acked, failed, in_flight, max_in_flight;
    ev_timer wtick;
    atomic_int writer_done;
    /* subscriber (main thread) */
    struct ev_loop *loop;
    ac_zsock_t *sock;
    long received, duplicates, strangers;
    int64_t writer_done_ns;
    ev_timer tick;
} latency_t;

typedef struct lat_txn {
    latency_t *self;
    long k;
} lat_txn_t;

static void on_lat_committed(ac_db_txn_t *txn, int err, void *arg)
{
    lat_txn_t *t = arg;
    latency_t *self = t->self;
    if (err == 0) {
        self->ev[t->k].ack_ns = now_ns();
        self->acked++;
    } else {
        self->ev[t->k].is_failed = 1;
        self->failed++;
        if (self->failed <= 3)
            fprintf(stderr, "bench-events latency: insert %ld failed: %s %s\n", t->k,
                    ac_db_txn_sqlstate(txn), ac_db_txn_errmsg(txn));
    }
    self->in_flight--;
    ac_db_txn_free(&txn);
    free(t);
    if (self->next >= self->n && self->in_flight == 0)
        ev_break(self->wloop, EVBREAK_ALL);
}

static void lat_write(latency_t *self, long k)
{
    char id[AC_UUID_STRLEN], corr[64];
    uint8_t buf[65536];
    size_t len;
    const char *values[3];
    int lengths[3] = {0, 0, 0}, formats[3] = {0, 0, 1};
    ac_db_txn_t *txn;
    lat_txn_t *t = malloc(sizeof(*t));

    ac_uuid_new(id);
    snprintf(corr, sizeof(corr), "bench-lat-%s-%ld", self->run, k);
    self->tmpl->id = id;
    self->tmpl->correlation_id = corr;
    if (aftercare__v1__envelope__get_packed_size(self->tmpl) > sizeof(buf))
        die("envelope too large");
    len = aftercare__v1__envelope__pack(self->tmpl, buf);
    values[0] = id;
    values[1] = self->o->topic;
    values[2] = (const char *)buf;
    lengths[2] = (int)len;
    txn = ac_db_txn_new(self->db, 1);
    if (!t || !txn || ac_db_txn_add(txn, 0, values, lengths, formats) != 0)
        die("cannot queue insert %ld", k);
    t->self = self;
    t->k = k;
    self->ev[k].sent_ns = now_ns();
    if (ac_db_txn_commit(txn, on_lat_committed, t) != 0) {
        self->ev[k].is_failed = 1;
        self->failed++;
        ac_db_txn_free(&txn);
        free(t);
        return;
    }
    if (++self->in_flight > self->max_in_flight)
        self->max_in_flight = self->in_flight;
}

static void on_lat_wtick(struct ev_loop *loop, ev_timer *w, int revents)
{
    latency_t *self = ac_container_of(w, latency_t, wtick);
    int64_t now = now_ns();
    if (self->t0_ns == 0) {
        if (!ac_db_is_up(self->db))
            return;
        self->t0_ns = now;
    }
    /* every event whose scheduled time has come (open loop: a slow commit does not delay
     * the next ones) */
    while (self->next < self->n &&
           self->t0_ns + (int64_t)((double)self->next * 1e9 / self->o->rate) <= now)
        lat_write(self, self->next++);
    if (self->next >= self->n) {
        ev_timer_stop(loop, w);
        if (self->in_flight == 0)
            ev_break(loop, EVBREAK_ALL);
    }
}

static void *lat_writer(void *arg)
{
    latency_t *self = arg;
    ev_timer_init(&self->wtick, on_lat_wtick, 0., 0.0005);
    ev_timer_start(self->wloop, &self->wtick);
    ev_run(self->wloop, 0);
    atomic_store(&self->writer_done, 1);
    return NULL;
}

static void on_lat_readable(ac_zsock_t *sock, void *arg)
{
    latency_t *self = arg;
    char prefix[40];
    size_t plen = (size_t)snprintf(prefix, sizeof(prefix), "bench-lat-%s-", self->run);
    for (int i = 0; i < 4096; i++) {
        ac_frames_t f;
        env_view_t v;
        int64_t at;
        if (ac_zsock_recv(sock, &f) != 0)
            break;
        at = now_ns();
        if (f.n == 2 && env_scan(f.data[1], f.len[1], &v) == 0 && v.correlation_len > plen &&
            v.correlation_len < 40 && memcmp(v.correlation, prefix, plen) == 0) {
            char num[24];
            long k;
            memcpy(num, v.correlation + plen, v.correlation_len - plen);
            num[v.correlation_len - plen] = '\0';
            k = strtol(num, NULL, 10);
            if (k >= 0 && k < self->n && self->ev[k].recv_ns == 0) {
                self->ev[k].recv_ns = at;
                self->received++;
            } else {
                self->duplicates++;
            }
        } else {
            self->strangers++;
        }
        ac_frames_clear(&f);
    }
}

static void on_lat_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    latency_t *self = ac_container_of(w, latency_t, tick);
    if (!atomic_load(&self->writer_done))
        return;
    if (!self->writer_done_ns)
        self->writer_done_ns = now_ns();
    if (self->received >= self->acked || now_ns() - self->writer_done_ns > 10 * 1000000000LL)
        ev_break(loop, EVBREAK_ALL);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(const int64_t *sorted, long n, double p)
{
    long i;
    if (n == 0)
        return -1;
    i = (long)(p * (double)(n - 1) + 0.5);
    return (double)sorted[i] / 1e6;
}

static int mode_latency(const opts_t *o)
{
    latency_t self = {.o = o, .loop = EV_DEFAULT};
    ac_curve_t curve;
    size_t env_len;
    uint8_t *env;
    pthread_t writer;
    long warm, nlat = 0;
    int64_t *from_ack, *from_sent;
    int64_t last_sent = 0, first_sent = 0;
    char *tmpl_id, *tmpl_corr;

    need(o->db, "db");
    need(o->endpoint, "endpoint");
    need(o->envelope_file, "envelope");
    if (o->rate <= 0 || o->duration_s <= 0)
        die("--rate and --duration must be > 0");
    load_curve(o, &curve);
    env = read_envelope(o->envelope_file, &env_len);
    self.tmpl = aftercare__v1__envelope__unpack(NULL, env_len, env);
    if (!self.tmpl)
        die("%s: not an Envelope", o->envelope_file);
    self.tmpl->sequence = 0; /* the relay numbers it */
    tmpl_id = self.tmpl->id;
    tmpl_corr = self.tmpl->correlation_id;
    self.n = (long)(o->rate * (o->duration_s + o->warmup_s));
    warm = (long)(o->rate * o->warmup_s);
    self.ev = calloc((size_t)self.n, sizeof(*self.ev));
    if (!self.ev)
        die("out of memory");
    snprintf(self.run, sizeof(self.run), "%x", (unsigned)(getpid() ^ (unsigned)time(NULL)));

    /* subscriber first, on the main loop */
    self.sock = ac_zsock_new(self.loop, AC_ZSOCK_SUB);
    if (!self.sock || ac_zsock_set_hwm(self.sock, 1000, 0) ||
        ac_zsock_set_curve_client(self.sock, &curve) || ac_zsock_subscribe(self.sock, o->topic) ||
        ac_zsock_connect(self.sock, o->endpoint))
        die("cannot subscribe to %s", o->endpoint);
    ac_zsock_on_readable(self.sock, on_lat_readable, &self);

    /* the writer: its own loop and connection pool in its own thread */
    snprintf(self.sql, sizeof(self.sql),
             "INSERT INTO %s.outbox (event_id, topic, envelope) VALUES ($1::uuid, $2, $3)",
             o->schema);
    self.stmt.sql = self.sql;
    self.stmt.nparams = 3;
    self.dbcfg.conninfo = o->db;
    self.dbcfg.pool_size = o->connections > 0 ? o->connections : 4;
    self.dbcfg.stmts = &self.stmt;
    self.dbcfg.nstmts = 1;
    self.dbcfg.name = "bench-writer";
    self.wloop = ev_loop_new(EVFLAG_AUTO);
    if (!self.wloop || !(self.db = ac_db_new(self.wloop, &self.dbcfg)))
        die("cannot create the database pool");

    /* give the subscription a moment to reach the bus: the warm-up events absorb the rest */
    for (int64_t until = now_ns() + 500000000LL; now_ns() < until;) {
        ev_run(self.loop, EVRUN_NOWAIT);
        usleep(1000);
    }
    if (pthread_create(&writer, NULL, lat_writer, &self) != 0)
        die("pthread_create failed");
    ev_timer_init(&self.tick, on_lat_tick, 0.05, 0.05);
    ev_timer_start(self.loop, &self.tick);
    ev_run(self.loop, 0);
    pthread_join(writer, NULL);

    from_ack = calloc((size_t)self.n, sizeof(*from_ack));
    from_sent = calloc((size_t)self.n, sizeof(*from_sent));
    if (!from_ack || !from_sent)
        die("out of memory");
    long missing = 0;
    for (long k = warm; k < self.n; k++) {
        lat_event_t *e = &self.ev[k];
        if (e->is_failed || !e->ack_ns)
            continue;
        if (!e->recv_ns) {
            missing++;
            continue;
        }
        from_ack[nlat] = e->recv_ns - e->ack_ns;
        from_sent[nlat] = e->recv_ns - e->sent_ns;
        nlat++;
        if (!first_sent)
            first_sent = e->sent_ns;
        last_sent = e->sent_ns;
    }
    qsort(from_ack, (size_t)nlat, sizeof(*from_ack), cmp_i64);
    qsort(from_sent, (size_t)nlat, sizeof(*from_sent), cmp_i64);
    printf("latency events=%ld measured=%ld warmup=%ld missing=%ld failed=%ld duplicates=%ld "
           "rate_target=%.0f rate_actual=%.0f max_in_flight=%ld "
           "p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f "
           "sent_p50_ms=%.3f sent_p99_ms=%.3f sent_max_ms=%.3f\n",
           self.n, nlat, warm, missing, self.failed, self.duplicates, o->rate,
           last_sent > first_sent ? (double)(nlat - 1) * 1e9 / (double)(last_sent - first_sent) : 0,
           self.max_in_flight, pct_ms(from_ack, nlat, 0.50), pct_ms(from_ack, nlat, 0.90),
           pct_ms(from_ack, nlat, 0.99), pct_ms(from_ack, nlat, 1.0), pct_ms(from_sent, nlat, 0.50),
           pct_ms(from_sent, nlat, 0.99), pct_ms(from_sent, nlat, 1.0));
    ac_db_destroy(&self.db);
    ev_loop_destroy(self.wloop);
    ac_zsock_destroy(&self.sock);
    ac_bus_shutdown();
    self.tmpl->id = tmpl_id; /* lat_write pointed them at its stack */
    self.tmpl->correlation_id = tmpl_corr;
    aftercare__v1__envelope__free_unpacked(self.tmpl, NULL);
    free(from_ack);
    free(from_sent);
    free(self.ev);
    free(env);
    return missing == 0 && self.failed == 0 ? 0 : 3;
}

int main(int argc, char **argv)
{
    opts_t o;
    const char *mode;
    if (argc < 2 || argv[1][0] == '-') {
        fputs(USAGE, stderr);
        return 2;
    }
    mode = argv[1];
    parse_opts(argc - 1, argv + 1, &o);
    ac_log_init("bench-events", AC_LOG_WARN, 0);
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(mode, "raw") == 0)
        return mode_raw(&o);
    if (strcmp(mode, "sub") == 0)
        return mode_sub(&o);
    if (strcmp(mode, "replay") == 0)
        return mode_replay(&o);
    if (strcmp(mode, "latency") == 0)
        return mode_latency(&o);
    if (strcmp(mode, "pub") == 0)
        return mode_pub(&o);
    fputs(USAGE, stderr);
    return 2;
}
