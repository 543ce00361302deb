/* bus.c — every ZeroMQ call of the project.
 *
 * libev integration: ZMQ_FD becomes readable when the socket's ZMQ_EVENTS may have
 * changed, and only then (it is edge-like). So the ev_io watcher is only a wake-up; an
 * ev_prepare watcher checks ZMQ_EVENTS before the loop blocks and, while the socket still
 * has work for a registered callback, keeps an ev_idle watcher running so that the loop
 * does not sleep on a socket that will never signal again. */
#include "ac_bus.h"

#include <errno.h>
#include <ev.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "ac_event.h"
#include "ac_log.h"
#include "ac_metrics.h"

#define RECV_BATCH 512 /* messages handled per wake-up before yielding to the loop */

static void *bus_ctx;

static void *ctx_get(void)
{
    if (!bus_ctx)
        bus_ctx = zmq_ctx_new();
    return bus_ctx;
}

void ac_bus_shutdown(void)
{
    if (bus_ctx) {
        zmq_ctx_term(bus_ctx);
        bus_ctx = NULL;
    }
}

/* --- raw sockets ------------------------------------------------------------------------ */

struct ac_zsock {
    struct ev_loop *loop; /* borrowed */
    void *zs;             /* owned ZeroMQ socket */
    ac_zsock_type_t type;
    ev_io io;           /* ZMQ_FD wake-ups */
    ev_prepare prepare; /* re-check ZMQ_EVENTS before blocking */
    ev_idle idle;       /* keeps the loop spinning while work remains */
    ac_zsock_fn on_read;
    void *read_arg;
    ac_zsock_fn on_write; /* one-shot */
    void *write_arg;
};

static int zsock_events(ac_zsock_t *s)
{
    int events = 0;
    size_t len = sizeof(events);
    if (zmq_getsockopt(s->zs, ZMQ_EVENTS, &events, &len) != 0)
        return 0;
    return events;
}

static int zsock_wants(ac_zsock_t *s, int events)
{
    return ((events & ZMQ_POLLIN) && s->on_read) || ((events & ZMQ_POLLOUT) && s->on_write);
}

static void zsock_dispatch(ac_zsock_t *s)
{
    int events = zsock_events(s);
    if ((events & ZMQ_POLLOUT) && s->on_write) {
        ac_zsock_fn cb = s->on_write;
        s->on_write = NULL;
        cb(s, s->write_arg);
    }
    if ((events & ZMQ_POLLIN) && s->on_read)
        s->on_read(s, s->read_arg);
}

static void on_zsock_io(struct ev_loop *loop, ev_io *w, int revents)
{
    zsock_dispatch(ac_container_of(w, ac_zsock_t, io));
}

static void on_zsock_idle(struct ev_loop *loop, ev_idle *w, int revents)
{
    zsock_dispatch(ac_container_of(w, ac_zsock_t, idle));
}

static void on_zsock_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    ac_zsock_t *s = ac_container_of(w, ac_zsock_t, prepare);
    if (zsock_wants(s, zsock_events(s)))
        ev_idle_start(loop, &s->idle);
    else
        ev_idle_stop(loop, &s->idle);
}

static const int zmq_types[] = {
    [AC_ZSOCK_PUB] = ZMQ_PUB,   [AC_ZSOCK_SUB] = ZMQ_SUB,       [AC_ZSOCK_XPUB] = ZMQ_XPUB,
    [AC_ZSOCK_XSUB] = ZMQ_XSUB, [AC_ZSOCK_ROUTER] = ZMQ_ROUTER, [AC_ZSOCK_DEALER] = ZMQ_DEALER,
};

ac_zsock_t *ac_zsock_new(struct ev_loop *loop, ac_zsock_type_t type)
{
    ac_zsock_t *s = calloc(1, sizeof(*s));
    int fd;
    size_t fdlen = sizeof(fd);
    int linger = 0;
    void *ctx = ctx_get();

    if (!s || !ctx) {
        ac_error("bus: cannot allocate a socket");
        free(s);
        return NULL;
    }
    s->loop = loop;
    s->type = type;
    s->zs = zmq_socket(ctx, zmq_types[type]);
    if (!s->zs || zmq_getsockopt(s->zs, ZMQ_FD, &fd, &fdlen) != 0) {
        ac_error("bus: zmq_socket: %s", zmq_strerror(errno));
        if (s->zs)
            zmq_close(s->zs);
        free(s);
        return NULL;
    }
    /* publishers get a short linger so a clean stop still flushes what was queued */
    if (type == AC_ZSOCK_XPUB || type == AC_ZSOCK_PUB)
        linger = 2000;
    zmq_setsockopt(s->zs, ZMQ_LINGER, &linger, sizeof(linger));
    ev_io_init(&s->io, on_zsock_io, fd, EV_READ);
    ev_prepare_init(&s->prepare, on_zsock_prepare);
    ev_idle_init(&s->idle, on_zsock_idle);
    ev_io_start(loop, &s->io);
    ev_prepare_start(loop, &s->prepare);
    return s;
}

void ac_zsock_destroy(ac_zsock_t **self_p)
{
    ac_zsock_t *s = self_p ? *self_p : NULL;
    if (!s)
        return;
    ev_io_stop(s->loop, &s->io);
    ev_prepare_stop(s->loop, &s->prepare);
    ev_idle_stop(s->loop, &s->idle);
    zmq_close(s->zs);
    free(s);
    *self_p = NULL;
}

int ac_zsock_bind(ac_zsock_t *s, const char *endpoint)
{
    if (zmq_bind(s->zs, endpoint) != 0) {
        ac_error("bus: bind %s: %s", endpoint, zmq_strerror(errno));
        return AC_ERR_IO;
    }
    return 0;
}

int ac_zsock_connect(ac_zsock_t *s, const char *endpoint)
{
    if (zmq_connect(s->zs, endpoint) != 0) {
        ac_error("bus: connect %s: %s", endpoint, zmq_strerror(errno));
        return AC_ERR_IO;
    }
    return 0;
}

static int set_int(ac_zsock_t *s, int option, int value, const char *name)
{
    if (zmq_setsockopt(s->zs, option, &value, sizeof(value)) != 0) {
        ac_error("bus: setsockopt %s: %s", name, zmq_strerror(errno));
        return AC_ERR_INVALID;
    }
    return 0;
}

int ac_zsock_set_hwm(ac_zsock_t *s, int sndhwm, int rcvhwm)
{
    int rc = set_int(s, ZMQ_SNDHWM, sndhwm, "SNDHWM");
    return rc ? rc : set_int(s, ZMQ_RCVHWM, rcvhwm, "RCVHWM");
}

int ac_zsock_set_maxmsgsize(ac_zsock_t *s, int64_t bytes)
{
    if (zmq_setsockopt(s->zs, ZMQ_MAXMSGSIZE, &bytes, sizeof(bytes)) != 0) {
        ac_error("bus: setsockopt MAXMSGSIZE: %s", zmq_strerror(errno));
        return AC_ERR_INVALID;
    }
    return 0;
}

int ac_zsock_set_immediate(ac_zsock_t *s, int on)
{
    return set_int(s, ZMQ_IMMEDIATE, on, "IMMEDIATE");
}

int ac_zsock_set_xpub_nodrop(ac_zsock_t *s, int on)
{
    return set_int(s, ZMQ_XPUB_NODROP, on, "XPUB_NODROP");
}

int ac_zsock_subscribe(ac_zsock_t *s, const char *prefix)
{
    size_t n = strlen(prefix);
    if (s->type == AC_ZSOCK_XSUB) {
        /* an XSUB subscribes by sending "\x01<prefix>" upstream */
        uint8_t buf[256];
        if (n + 1 > sizeof(buf))
            return AC_ERR_TOOBIG;
        buf[0] = 1;
        memcpy(buf + 1, prefix, n);
        if (zmq_send(s->zs, buf, n + 1, ZMQ_DONTWAIT) < 0) {
            ac_error("bus: subscribe: %s", zmq_strerror(errno));
            return AC_ERR_IO;
        }
        return 0;
    }
    if (zmq_setsockopt(s->zs, ZMQ_SUBSCRIBE, prefix, n) != 0) {
        ac_error("bus: subscribe: %s", zmq_strerror(errno));
        return AC_ERR_IO;
    }
    return 0;
}

void ac_zsock_on_readable(ac_zsock_t *s, ac_zsock_fn cb, void *arg)
{
    s->on_read = cb;
    s->read_arg = arg;
    if (cb)
        ev_idle_start(s->loop, &s->idle); /* messages may already be waiting */
}

void ac_zsock_on_writable(ac_zsock_t *s, ac_zsock_fn cb, void *arg)
{
    s->on_write = cb;
    s->write_arg = arg;
    if (cb)
        ev_idle_start(s->loop, &s->idle);
}

void ac_frames_clear(ac_frames_t *f)
{
    size_t kept = f->n < AC_FRAMES_MAX ? f->n : AC_FRAMES_MAX;
    for (size_t i = 0; i < kept; i++)
        free(f->data[i]);
    memset(f, 0, sizeof(*f));
}

int ac_zsock_recv(ac_zsock_t *s, ac_frames_t *out)
{
    int more = 1;
    memset(out, 0, sizeof(*out));
    while (more) {
        zmq_msg_t m;
        size_t mlen = sizeof(more);
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s->zs, ZMQ_DONTWAIT) < 0) {
            int err = errno;
            zmq_msg_close(&m);
            if (out->n == 0 && err == EAGAIN)
                return AC_ERR_AGAIN;
            ac_frames_clear(out);
            if (err == EAGAIN)
                return AC_ERR_AGAIN;
            ac_warn("bus: recv: %s", zmq_strerror(err));
            return AC_ERR_IO;
        }
        if (out->n < AC_FRAMES_MAX) {
            size_t len = zmq_msg_size(&m);
            uint8_t *copy = malloc(len + 1);
            if (!copy) {
                /* drop the rest of this message too, or its frames would start the next */
                for (zmq_getsockopt(s->zs, ZMQ_RCVMORE, &more, &mlen); more;
                     zmq_getsockopt(s->zs, ZMQ_RCVMORE, &more, &mlen)) {
                    zmq_msg_close(&m);
                    zmq_msg_init(&m);
                    if (zmq_msg_recv(&m, s->zs, ZMQ_DONTWAIT) < 0)
                        break;
                }
                zmq_msg_close(&m);
                ac_frames_clear(out);
                return AC_ERR_NOMEM;
            }
            memcpy(copy, zmq_msg_data(&m), len);
            copy[len] = '\0'; /* convenience for text frames; len excludes it */
            out->data[out->n] = copy;
            out->len[out->n] = len;
        }
        out->n++;
        zmq_getsockopt(s->zs, ZMQ_RCVMORE, &more, &mlen);
        zmq_msg_close(&m);
    }
    return 0;
}

int ac_zsock_send(ac_zsock_t *s, const void *const *data, const size_t *len, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int flags = ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0);
        if (zmq_send(s->zs, data[i], len[i], flags) < 0) {
            /* ZeroMQ only refuses the first frame of a message; later ones are queued */
            if (errno == EAGAIN)
                return AC_ERR_AGAIN;
            ac_warn("bus: send: %s", zmq_strerror(errno));
            return AC_ERR_IO;
        }
    }
    return 0;
}

/* --- publisher ---------------------------------------------------------------------------- */

#define PUB_SNDHWM  10000 /* events queued towards the bus before sends say AGAIN */
#define PUB_RETRY_S 0.02  /* how soon to try again after AGAIN */

struct ac_bus_pub {
    struct ev_loop *loop; /* borrowed */
    ac_zsock_t *sock;     /* owned XPUB connected to the bus input */
    int subscriptions;    /* subscriptions heard from the bus; ready when > 0 */
    uint64_t generation;  /* times the bus has (re)subscribed */
    ev_timer retry;       /* after AGAIN: XPUB with NODROP always looks writable */
    void (*on_ready)(void *arg);
    void *ready_arg;
};

static void notify_ready(ac_bus_pub_t *p)
{
    if (p->on_ready && p->subscriptions > 0)
        p->on_ready(p->ready_arg);
}

static void on_pub_subscription(ac_zsock_t *s, void *arg)
{
    ac_bus_pub_t *p = arg;
    int was_ready = p->subscriptions > 0;
    for (int i = 0; i < RECV_BATCH; i++) {
        ac_frames_t f;
        if (ac_zsock_recv(s, &f) != 0)
            break;
        if (f.n >= 1 && f.len[0] >= 1) {
            if (f.data[0][0] == 1)
                p->subscriptions++;
            else if (f.data[0][0] == 0 && p->subscriptions > 0)
                p->subscriptions--;
        }
        ac_frames_clear(&f);
    }
    if (!was_ready && p->subscriptions > 0) {
        p->generation++;
        ac_info("bus: the bus subscribed; publishing");
        notify_ready(p);
    } else if (was_ready && p->subscriptions == 0) {
        ac_warn("bus: the bus unsubscribed; holding events");
    }
}

static void on_pub_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    notify_ready(ac_container_of(w, ac_bus_pub_t, retry));
}

ac_bus_pub_t *ac_bus_pub_new(struct ev_loop *loop, const char *endpoint)
{
    ac_bus_pub_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->loop = loop;
    ev_timer_init(&p->retry, on_pub_retry, PUB_RETRY_S, 0.);
    p->sock = ac_zsock_new(loop, AC_ZSOCK_XPUB);
    /* IMMEDIATE: the pipe to the bus exists only while connected, so a lost connection
     * unsubscribes (the publisher holds events) and a new one subscribes again */
    if (!p->sock || ac_zsock_set_xpub_nodrop(p->sock, 1) || ac_zsock_set_immediate(p->sock, 1) ||
        ac_zsock_set_hwm(p->sock, PUB_SNDHWM, 1000) || ac_zsock_connect(p->sock, endpoint)) {
        ac_bus_pub_destroy(&p);
        return NULL;
    }
    ac_zsock_on_readable(p->sock, on_pub_subscription, p);
    return p;
}

void ac_bus_pub_destroy(ac_bus_pub_t **self_p)
{
    ac_bus_pub_t *p = self_p ? *self_p : NULL;
    if (!p)
        return;
    ev_timer_stop(p->loop, &p->retry);
    ac_zsock_destroy(&p->sock);
    free(p);
    *self_p = NULL;
}

int ac_bus_pub_is_ready(const ac_bus_pub_t *self)
{
    return self->subscriptions > 0;
}

int ac_bus_pub_send(ac_bus_pub_t *self, const char *topic, const void *body, size_t len)
{
    const void *data[2] = {topic, body};
    size_t lens[2] = {strlen(topic), len};
    int rc;
    if (self->subscriptions <= 0)
        return AC_ERR_AGAIN; /* on_ready follows the next subscription */
    rc = ac_zsock_send(self->sock, data, lens, 2);
    if (rc == AC_ERR_AGAIN && !ev_is_active(&self->retry))
        ev_timer_start(self->loop, &self->retry);
    return rc;
}

uint64_t ac_bus_pub_generation(const ac_bus_pub_t *self)
{
    return self->generation;
}

void ac_bus_pub_on_ready(ac_bus_pub_t *self, void (*cb)(void *arg), void *arg)
{
    self->on_ready = cb;
    self->ready_arg = arg;
}

/* --- subscriber --------------------------------------------------------------------------- */

struct ac_bus_sub {
    ac_zsock_t *sock;               /* owned SUB connected to the bus output */
    const ac_bus_sub_config_t *cfg; /* borrowed */
};

static void sub_garbage(ac_bus_sub_t *sub, const ac_frames_t *f, const char *why)
{
    if (sub->cfg->metrics)
        ac_metrics_add(sub->cfg->metrics, "bus_events_malformed_total", NULL, 1);
    ac_warn("bus: dropped a malformed message (%zu frames): %s", f->n, why);
    if (sub->cfg->on_garbage)
        sub->cfg->on_garbage(f, why, sub->cfg->arg);
}

static void sub_handle(ac_bus_sub_t *sub, const ac_frames_t *f)
{
    const ac_bus_sub_config_t *cfg = sub->cfg;
    Aftercare__V1__Envelope *env;
    const ProtobufCMessage *payload;
    ac_event_handler_fn handler = cfg->on_event;
    const char *topic;

    if (f->n != 2) {
        sub_garbage(sub, f, "not two frames");
        return;
    }
    topic = (const char *)f->data[0];
    if (f->len[0] == 0 || strlen(topic) != f->len[0]) {
        sub_garbage(sub, f, "bad topic frame");
        return;
    }
    env = aftercare__v1__envelope__unpack(NULL, f->len[1], f->data[1]);
    if (!env) {
        sub_garbage(sub, f, "envelope does not decode");
        return;
    }
    payload = ac_event_payload(env);
    for (const ac_route_t *r = cfg->routes; r && r->descriptor; r++) {
        if (payload && payload->descriptor == r->descriptor) {
            handler = r->handler;
            break;
        }
    }
    if (cfg->metrics)
        ac_metrics_add(cfg->metrics, "bus_events_received_total", NULL, 1);
    if (handler) {
        int rc = handler(env, topic, cfg->arg);
        if (rc != 0 && cfg->metrics)
            ac_metrics_add(cfg->metrics, "bus_events_failed_total", NULL, 1);
        if (rc != 0)
            ac_log_at(AC_LOG_WARN, env->subject, env->id, "bus: handler for %s failed: %s", topic,
                      ac_strerror(rc));
    }
    aftercare__v1__envelope__free_unpacked(env, NULL);
}

static void on_sub_readable(ac_zsock_t *s, void *arg)
{
    ac_bus_sub_t *sub = arg;
    for (int i = 0; i < RECV_BATCH; i++) {
        ac_frames_t f;
        int rc = ac_zsock_recv(s, &f);
        if (rc == AC_ERR_AGAIN)
            break;
        if (rc != 0)
            continue;
        sub_handle(sub, &f);
        ac_frames_clear(&f);
    }
}

ac_bus_sub_t *ac_bus_sub_new(struct ev_loop *loop, const ac_bus_sub_config_t *cfg)
{
    ac_bus_sub_t *sub = calloc(1, sizeof(*sub));
    if (!sub)
        return NULL;
    sub->cfg = cfg;
    sub->sock = ac_zsock_new(loop, AC_ZSOCK_SUB);
    if (!sub->sock || ac_zsock_set_hwm(sub->sock, 1000, 100000) ||
        ac_zsock_set_maxmsgsize(sub->sock, 1 << 20))
        goto fail;
    if (!cfg->topics) {
        if (ac_zsock_subscribe(sub->sock, ""))
            goto fail;
    } else {
        for (const char *const *t = cfg->topics; *t; t++)
            if (ac_zsock_subscribe(sub->sock, *t))
                goto fail;
    }
    if (ac_zsock_connect(sub->sock, cfg->endpoint))
        goto fail;
    ac_zsock_on_readable(sub->sock, on_sub_readable, sub);
    return sub;
fail:
    ac_bus_sub_destroy(&sub);
    return NULL;
}

void ac_bus_sub_destroy(ac_bus_sub_t **self_p)
{
    ac_bus_sub_t *sub = self_p ? *self_p : NULL;
    if (!sub)
        return;
    ac_zsock_destroy(&sub->sock);
    free(sub);
    *self_p = NULL;
}
