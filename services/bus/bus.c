/* bus.c — forwarding and checking (see bus.h). */
#include "bus.h"

#include <string.h>

#include "ac_event.h"
#include "ac_log.h"

#define FORWARD_BATCH 1024

/* A message is forwarded only when it is [topic][envelope] and the topic is the one the
 * envelope's type implies, so subscribers' prefix filters can be trusted. */
static const char *check_message(const ac_frames_t *f)
{
    char topic[AC_TOPIC_MAX];
    Aftercare__V1__Envelope *env;
    const char *why = NULL;

    if (f->n != 2)
        return "not two frames";
    if (f->len[0] == 0 || f->len[0] >= AC_TOPIC_MAX || strlen((char *)f->data[0]) != f->len[0])
        return "bad topic frame";
    env = aftercare__v1__envelope__unpack(NULL, f->len[1], f->data[1]);
    if (!env)
        return "envelope does not decode";
    if (ac_event_topic_from_type(env->type, topic, sizeof(topic)) != 0)
        why = "envelope type is not aftercare.<topic>.v<n>";
    else if (strcmp(topic, (const char *)f->data[0]) != 0)
        why = "topic does not match the envelope type";
    else if (env->sequence == 0 || env->source[0] == '\0')
        why = "envelope has no source or sequence";
    aftercare__v1__envelope__free_unpacked(env, NULL);
    return why;
}

static void on_input(ac_zsock_t *s, void *arg)
{
    bus_t *self = arg;
    for (int i = 0; i < FORWARD_BATCH; i++) {
        ac_frames_t f;
        const char *why;
        int rc = ac_zsock_recv(s, &f);
        if (rc == AC_ERR_AGAIN)
            break;
        if (rc != 0)
            continue;
        why = check_message(&f);
        if (why) {
            self->malformed++;
            ac_warn("dropped a message from the input (%zu frames, %zu bytes first): %s", f.n,
                    f.n ? f.len[0] : 0, why);
        } else {
            const void *data[2] = {f.data[0], f.data[1]};
            /* XPUB never blocks: a subscriber whose queue is full misses the message */
            if (ac_zsock_send(self->output, data, f.len, 2) == 0)
                self->forwarded++;
        }
        ac_frames_clear(&f);
    }
}

static void on_output(ac_zsock_t *s, void *arg)
{
    bus_t *self = arg;
    for (int i = 0; i < FORWARD_BATCH; i++) {
        ac_frames_t f;
        if (ac_zsock_recv(s, &f) != 0)
            break;
        if (f.n == 1 && f.len[0] >= 1 && (f.data[0][0] == 0 || f.data[0][0] == 1)) {
            int is_sub = f.data[0][0] == 1;
            if (is_sub)
                self->subscribes++;
            else
                self->unsubscribes++;
            ac_debug("%s \"%.*s\"", is_sub ? "subscribe" : "unsubscribe", (int)f.len[0] - 1,
                     (const char *)f.data[0] + 1);
        }
        ac_frames_clear(&f);
    }
}

static void on_stats(struct ev_loop *loop, ev_timer *w, int revents)
{
    bus_t *self = ac_container_of(w, bus_t, stats);
    ac_info("forwarded=%llu malformed=%llu subscribes=%llu unsubscribes=%llu",
            (unsigned long long)self->forwarded, (unsigned long long)self->malformed,
            (unsigned long long)self->subscribes, (unsigned long long)self->unsubscribes);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    ac_info("signal %d: stopping", w->signum);
    ev_break(loop, EVBREAK_ALL);
}

int bus_setup(bus_t *self, struct ev_loop *loop, const bus_config_t *cfg)
{
    memset(self, 0, sizeof(*self));
    self->loop = loop;
    self->cfg = cfg;
    self->input = ac_zsock_new(loop, AC_ZSOCK_XSUB);
    self->output = ac_zsock_new(loop, AC_ZSOCK_XPUB);
    if (!self->input || !self->output)
        return AC_ERR_IO;
    if (ac_zsock_set_hwm(self->input, 1000, (int)cfg->hwm) ||
        ac_zsock_set_maxmsgsize(self->input, cfg->max_msg) ||
        ac_zsock_set_hwm(self->output, (int)cfg->hwm, 1000) ||
        ac_zsock_bind(self->input, cfg->input_bind) ||
        ac_zsock_bind(self->output, cfg->output_bind))
        return AC_ERR_IO;
    /* everything published reaches the bus; the output filters per subscriber */
    if (ac_zsock_subscribe(self->input, ""))
        return AC_ERR_IO;
    ac_zsock_on_readable(self->input, on_input, self);
    ac_zsock_on_readable(self->output, on_output, self);

    ev_signal_init(&self->sigint, on_signal, SIGINT);
    ev_signal_init(&self->sigterm, on_signal, SIGTERM);
    ev_signal_start(loop, &self->sigint);
    ev_signal_start(loop, &self->sigterm);
    ev_timer_init(&self->stats, on_stats, 60., 60.);
    ev_timer_start(loop, &self->stats);
    ac_info("bus input %s, output %s", cfg->input_bind, cfg->output_bind);
    return 0;
}

void bus_teardown(bus_t *self)
{
    ev_timer_stop(self->loop, &self->stats);
    ev_signal_stop(self->loop, &self->sigint);
    ev_signal_stop(self->loop, &self->sigterm);
    ac_zsock_destroy(&self->output);
    ac_zsock_destroy(&self->input);
}
