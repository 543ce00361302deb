/* events.c — `aftercarectl events tail`: subscribe to the bus output and print every event.
 *
 * Notes: one line per event, flushed at once, so that a pipe reader (a test, jq, grep)
 * sees each event as it arrives. Malformed messages are skipped: the bus module logs each
 * on stderr, and the count is repeated when the tail ends.
 * Like any ZeroMQ subscriber this sees only events published after it has connected. */
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
#include "ac_pbjson.h"

#define CTL_TAIL_MAX_TOPICS 32

typedef struct tail {
    struct ev_loop *loop; /* borrowed */
    int is_json;          /* one JSON object per line instead of text */
    long count;           /* stop after this many events; 0 = never */
    long seen;            /* events printed */
    long garbage;         /* malformed messages skipped */
    int is_output_broken; /* stdout went away (EPIPE): stop */
    ev_signal sigint;
    ev_signal sigterm;
    ev_io stdout_closed; /* stdout is a pipe: its reader went away (POLLERR) */
} tail_t;

static const char TAIL_HELP[] =
    "Usage: aftercarectl events tail [--topic PREFIX]... [--json] [--endpoint ENDPOINT]\n"
    "                                [--count N]\n"
    "\n"
    "Prints events from the bus as they are published, one line each:\n"
    "  seq=<sequence> <time> <source> <topic> <subject> id=<id>\n"
    "\n"
    "  -T, --topic PREFIX     only topics starting with PREFIX (\"ticket.\"); repeatable\n"
    "      --json             one JSON object per line: the whole envelope plus \"topic\"\n"
    "  -e, --endpoint EP      bus output (env AC_BUS_OUTPUT, default " CTL_DEFAULT_BUS_OUTPUT ")\n"
    "  -n, --count N          exit after N events\n"
    "  -h, --help             this help\n"
    "\n"
    "Ctrl-C stops it.\n";

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

static int on_event(const Aftercare__V1__Envelope *env, const char *topic, void *arg)
{
    tail_t *self = arg;
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

/* The bus module already logs each one (a warning on stderr); count them for the summary. */
static void on_garbage(const ac_frames_t *frames, const char *why, void *arg)
{
    tail_t *self = arg;
    (void)frames;
    (void)why;
    self->garbage++;
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

int ctl_events_tail(ctl_globals_t *g, int argc, char **argv)
{
    enum { OPT_JSON = 256 };
    static const struct option options[] = {
        {"topic", required_argument, NULL, 'T'},    {"json", no_argument, NULL, OPT_JSON},
        {"endpoint", required_argument, NULL, 'e'}, {"count", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    const char *cmd = "events tail ";
    const char *topics[CTL_TAIL_MAX_TOPICS + 1] = {NULL};
    size_t ntopics = 0;
    const char *endpoint = getenv("AC_BUS_OUTPUT");
    tail_t self = {0};
    ev_io_init(&self.stdout_closed, on_stdout_closed, -1, 0); /* stopped unless a pipe */
    int c;

    (void)g;
    if (endpoint == NULL || endpoint[0] == '\0')
        endpoint = CTL_DEFAULT_BUS_OUTPUT;
    while ((c = getopt_long(argc, argv, ":T:e:n:h", options, NULL)) != -1) {
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

    /* A reader on a pipe must see every event the moment it is printed. */
    setvbuf(stdout, NULL, _IOLBF, 0);

    self.loop = ev_default_loop(EVFLAG_AUTO);
    if (self.loop == NULL) {
        ctl_err("cannot initialise the event loop");
        return CTL_EXIT_FAIL;
    }
    ac_bus_sub_config_t cfg = {
        .endpoint = endpoint,
        .topics = ntopics > 0 ? topics : NULL,
        .routes = NULL,
        .on_event = on_event,
        .on_garbage = on_garbage,
        .arg = &self,
        .metrics = NULL,
    };
    ac_bus_sub_t *sub = ac_bus_sub_new(self.loop, &cfg);
    if (sub == NULL) {
        ctl_err("cannot subscribe to %s", endpoint);
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
    ac_bus_sub_destroy(&sub);
    ac_bus_shutdown();
    if (self.garbage > 0)
        ctl_err("skipped %ld malformed message%s", self.garbage, self.garbage == 1 ? "" : "s");
    if (self.is_output_broken)
        return CTL_EXIT_FAIL;
    return CTL_EXIT_OK;
}
