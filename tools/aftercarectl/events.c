/* events.c — `aftercarectl events tail`: follow the bus and print every event once, in
 * order per source.
 *
 * Notes: the tail is a consumer (ac_consumer.h) in memory mode: with --from SOURCE:SEQ it
 * replays that source from SEQ and then follows it live, and without it each source is
 * followed from the first event or heartbeat seen; either way a gap (a slow terminal whose
 * queue overflowed at the bus, a bus restart) is filled by replay, and a duplicate is not
 * printed. One line per event, flushed at once, so that a pipe reader (a test, jq, grep)
 * sees each event as it arrives. Malformed messages are skipped: the consumer logs them
 * on stderr, and the count is repeated when the tail ends. CURVE is mandatory: the client
 * key file (AC_CTL_KEY_FILE or --key-file) must be allowed on the bus (aftercarectl keys). */
#include "ctl.h"

#include <ev.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ac_bus.h"
#include "ac_consumer.h"
#include "ac_pbjson.h"

#define CTL_TAIL_MAX_TOPICS    32
#define CTL_TAIL_MAX_FROM      16
#define CTL_TAIL_SOURCE_MAX    64
#define CTL_DEFAULT_BUS_REPLAY "tcp://127.0.0.1:5572"

typedef struct tail {
    struct ev_loop *loop; /* borrowed */
    int is_json;          /* one JSON object per line instead of text */
    long count;           /* stop after this many events; 0 = never */
    long seen;            /* events printed */
    int is_output_broken; /* stdout went away (EPIPE): stop */
    ev_signal sigint;
    ev_signal sigterm;
    ev_io stdout_closed; /* stdout is a pipe: its reader went away (POLLERR) */
} tail_t;

static const char TAIL_HELP[] =
    "Usage: aftercarectl events tail [--from SOURCE:SEQ]... [--topic PREFIX]... [--json]\n"
    "                                [--count N] [--endpoint EP] [--replay EP] [--key-file F]\n"
    "\n"
    "Prints events from the bus, each once and in order per source, one line each:\n"
    "  seq=<sequence> <time> <source> <topic> <subject> id=<id>\n"
    "\n"
    "  -f, --from SOURCE:SEQ  first replay SOURCE from sequence SEQ (aftercare/intake:1 is all\n"
    "                         that retention kept), then follow it live; repeatable. Other\n"
    "                         sources are followed from the first event seen\n"
    "  -T, --topic PREFIX     only topics starting with PREFIX (\"ticket.\"); repeatable\n"
    "      --json             one JSON object per line: the whole envelope plus \"topic\"\n"
    "  -n, --count N          exit after N events\n"
    "  -e, --endpoint EP      bus output (env AC_BUS_OUTPUT, default " CTL_DEFAULT_BUS_OUTPUT ")\n"
    "  -r, --replay EP        bus replay (env AC_BUS_REPLAY, default " CTL_DEFAULT_BUS_REPLAY ")\n"
    "  -k, --key-file FILE    this client's CURVE key file (env AC_CTL_KEY_FILE); its public\n"
    "                         key must be allowed on the bus (aftercarectl keys create)\n"
    "  -h, --help             this help\n"
    "\n"
    "The bus's public key is read from AC_BUS_SERVER_KEY. Events missed on the way (a slow\n"
    "terminal, a bus restart) are replayed, so nothing is skipped. Ctrl-C stops it.\n";

static void print_text(const Aftercare__V1__Envelope *env, const char *topic)
{
    const char *time = env->time != NULL && env->time[0] ? env->time : "-";
    const char *source = env->source != NULL && env->source[0] ? env->source : "-";
    const char *subject = env->subject != NULL && env->subject[0] ? env->subject : "-";
    const char *id = env->id != NULL && env->id[0] ? env->id : "-";
    printf("seq=%" PRIu64 " %s %s %s %s id=%s\n", env->sequence, time, source, topic, subject, id);
}

static int print_json(const Aftercare__V1__Envelope *env, const char *topic)
{
    json_t *j = ac_pbjson_from_message(&env->base);
    if (j == NULL || json_object_set_new(j, "topic", json_string(topic)) != 0) {
        json_decref(j);
        return AC_ERR_NOMEM;
    }
    char *line = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (line == NULL)
        return AC_ERR_NOMEM;
    puts(line);
    free(line);
    return 0;
}

static int on_event(const ac_consumer_event_t *ev, struct ac_db_txn *txn, void *arg)
{
    tail_t *self = arg;
    const Aftercare__V1__Envelope *env = ev->env;
    const char *topic = ev->topic;
    (void)txn;
    /* The subscriber may hand over a whole batch before the loop stops. */
    if (self->is_output_broken || (self->count > 0 && self->seen >= self->count))
        return 0;
    if (self->is_json) {
        if (print_json(env, topic) != 0)
            ctl_err("out of memory printing event %s", env->id != NULL ? env->id : "?");
    } else {
        print_text(env, topic);
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        self->is_output_broken = 1;
        ev_break(self->loop, EVBREAK_ALL);
        return 0;
    }
    self->seen++;
    if (self->count > 0 && self->seen >= self->count)
        ev_break(self->loop, EVBREAK_ALL);
    return 0;
}

/* A pipe's write end reports an error once the reader has closed it: stop then, rather
 * than at the next event, which may be hours away (`events tail | head -1`). */
static void on_stdout_closed(struct ev_loop *loop, ev_io *w, int revents)
{
    tail_t *self = ac_container_of(w, tail_t, stdout_closed);
    struct pollfd pfd = {.fd = STDOUT_FILENO, .events = POLLOUT};
    (void)revents;
    if (poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLERR | POLLHUP))) {
        self->is_output_broken = 1;
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    ev_io_stop(loop, w); /* not an error after all: never spin on it */
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

/* "aftercare/intake:120" -> source (copied into buf) and 120. 0 or -1 when malformed. */
static int parse_from(const char *arg, char *buf, size_t buflen, ac_consumer_start_t *out)
{
    const char *colon = strrchr(arg, ':');
    char *end;
    unsigned long long seq;
    if (colon == NULL || colon == arg || (size_t)(colon - arg) >= buflen || colon[1] == '\0' ||
        colon[1] == '-')
        return -1;
    seq = strtoull(colon + 1, &end, 10);
    if (*end != '\0' || seq == 0)
        return -1;
    memcpy(buf, arg, (size_t)(colon - arg));
    buf[colon - arg] = '\0';
    out->source = buf;
    out->next_sequence = seq;
    return 0;
}

/* The client's CURVE keys from --key-file / AC_CTL_KEY_FILE and AC_BUS_SERVER_KEY. */
static int load_keys(const char *cmd, const char *key_file, ac_curve_t *curve)
{
    const char *server_key = getenv("AC_BUS_SERVER_KEY");
    char err[512];
    if (key_file == NULL || key_file[0] == '\0')
        return ctl_usage_error(cmd, "no CURVE key file: set AC_CTL_KEY_FILE or pass --key-file "
                                    "(aftercarectl keys create NAME --out FILE makes one)");
    if (server_key == NULL || server_key[0] == '\0')
        return ctl_usage_error(cmd, "AC_BUS_SERVER_KEY is not set: it is the bus's public key "
                                    "(40 characters of Z85)");
    if (ac_curve_load(key_file, server_key, curve, err, sizeof(err)) != 0) {
        ctl_err("%s", err);
        return CTL_EXIT_FAIL;
    }
    return CTL_EXIT_OK;
}

int ctl_events_tail(ctl_globals_t *g, int argc, char **argv)
{
    enum { OPT_JSON = 256 };
    static const struct option options[] = {
        {"topic", required_argument, NULL, 'T'},
        {"json", no_argument, NULL, OPT_JSON},
        {"endpoint", required_argument, NULL, 'e'},
        {"count", required_argument, NULL, 'n'},
        {"from", required_argument, NULL, 'f'},
        {"replay", required_argument, NULL, 'r'},
        {"key-file", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "events tail ";
    const char *topics[CTL_TAIL_MAX_TOPICS + 1] = {NULL};
    size_t ntopics = 0;
    ac_consumer_start_t starts[CTL_TAIL_MAX_FROM + 1] = {{NULL, 0}};
    char start_sources[CTL_TAIL_MAX_FROM][CTL_TAIL_SOURCE_MAX];
    size_t nstarts = 0;
    const char *endpoint = getenv("AC_BUS_OUTPUT");
    const char *replay = getenv("AC_BUS_REPLAY");
    const char *key_file = getenv("AC_CTL_KEY_FILE");
    ac_curve_t curve;
    ac_consumer_stats_t stats;
    tail_t self = {0};
    ev_io_init(&self.stdout_closed, on_stdout_closed, -1, 0); /* stopped unless a pipe */
    int c, rc;

    (void)g;
    if (endpoint == NULL || endpoint[0] == '\0')
        endpoint = CTL_DEFAULT_BUS_OUTPUT;
    if (replay == NULL || replay[0] == '\0')
        replay = CTL_DEFAULT_BUS_REPLAY;
    while ((c = getopt_long(argc, argv, ":T:e:n:f:r:k:h", options, NULL)) != -1) {
        switch (c) {
        case 'T':
            if (ntopics == CTL_TAIL_MAX_TOPICS)
                return ctl_usage_error(cmd, "at most %d --topic options", CTL_TAIL_MAX_TOPICS);
            topics[ntopics++] = optarg;
            break;
        case OPT_JSON:
            self.is_json = 1;
            break;
        case 'e':
            endpoint = optarg;
            break;
        case 'r':
            replay = optarg;
            break;
        case 'k':
            key_file = optarg;
            break;
        case 'f':
            if (nstarts == CTL_TAIL_MAX_FROM)
                return ctl_usage_error(cmd, "at most %d --from options", CTL_TAIL_MAX_FROM);
            if (parse_from(optarg, start_sources[nstarts], CTL_TAIL_SOURCE_MAX, &starts[nstarts]))
                return ctl_usage_error(cmd,
                                       "--from must be SOURCE:SEQ with SEQ >= 1 "
                                       "(aftercare/intake:1), not '%s'",
                                       optarg);
            nstarts++;
            break;
        case 'n': {
            char *end;
            self.count = strtol(optarg, &end, 10);
            if (end == optarg || *end != '\0' || self.count <= 0)
                return ctl_usage_error(cmd, "--count must be a positive number, not '%s'", optarg);
            break;
        }
        case 'h':
            fputs(TAIL_HELP, stdout);
            return CTL_EXIT_OK;
        default:
            return ctl_bad_option(cmd, c, argv);
        }
    }
    if (optind < argc)
        return ctl_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if ((rc = load_keys(cmd, key_file, &curve)) != CTL_EXIT_OK)
        return rc;

    /* A reader on a pipe must see every event the moment it is printed. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    self.loop = ev_default_loop(EVFLAG_AUTO);
    if (self.loop == NULL) {
        ctl_err("cannot initialise the event loop");
        return CTL_EXIT_FAIL;
    }
    ac_consumer_config_t cfg = {
        .name = "tail",
        .output_endpoint = endpoint,
        .replay_endpoint = replay,
        .curve = &curve,
        .is_follow_all = 1,
        .topics = ntopics > 0 ? topics : NULL,
        .on_event = on_event,
        .arg = &self,
        .starts = starts,
        /* a person watching wants what is still there, with a loud note of what is not */
        .is_skip_pruned = 1,
    };
    ac_consumer_t *consumer = ac_consumer_new(self.loop, &cfg);
    if (consumer == NULL) {
        ctl_err("cannot follow the bus at %s (replay %s)", endpoint, replay);
        ac_bus_shutdown();
        return CTL_EXIT_FAIL;
    }
    /* A shell starts background jobs with SIGINT ignored; libev's signalfd would then
     * never see it. Ctrl-C and `kill -INT` must stop a tail wherever it runs. */
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    ev_signal_init(&self.sigint, on_signal, SIGINT);
    ev_signal_start(self.loop, &self.sigint);
    ev_signal_init(&self.sigterm, on_signal, SIGTERM);
    ev_signal_start(self.loop, &self.sigterm);
    /* Closing our end of a pipe must end the loop, not kill the process mid-write. */
    signal(SIGPIPE, SIG_IGN);

    struct stat st;
    if (fstat(STDOUT_FILENO, &st) == 0 && S_ISFIFO(st.st_mode)) {
        ev_io_init(&self.stdout_closed, on_stdout_closed, STDOUT_FILENO, EV_READ);
        ev_io_start(self.loop, &self.stdout_closed);
    }

    ev_run(self.loop, 0);

    ev_io_stop(self.loop, &self.stdout_closed);

    ev_signal_stop(self.loop, &self.sigint);
    ev_signal_stop(self.loop, &self.sigterm);
    ac_consumer_stats(consumer, &stats);
    ac_consumer_destroy(&consumer);
    ac_bus_shutdown();
    if (stats.garbage > 0)
        ctl_err("skipped %llu malformed message%s", (unsigned long long)stats.garbage,
                stats.garbage == 1 ? "" : "s");
    if (self.is_output_broken)
        return CTL_EXIT_FAIL;
    return CTL_EXIT_OK;
}
