/* bus.c — every ZeroMQ call of the project.
 *
 * libev integration: ZMQ_FD becomes readable when the socket's ZMQ_EVENTS may have
 * changed, and only then (it is edge-like). So the ev_io watcher is only a wake-up; an
 * ev_prepare watcher checks ZMQ_EVENTS before the loop blocks and, while the socket still
 * has work for a registered callback, keeps an ev_idle watcher running so that the loop
 * does not sleep on a socket that will never signal again. ZMQ_EVENTS costs two system calls
 * (libzmq polls its mailbox and checks getpid()), so the prepare watcher asks only when
 * the socket was used or woke up since it last asked (is_dirty): asking for every socket on
 * every loop iteration took a quarter of intake's main thread while its relay read large
 * results from PostgreSQL, many iterations each. Any call on the socket may consume its
 * ZMQ_FD edge, so every function here that touches one marks it. */
#include "ac_bus.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
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

int ac_bus_set_io_threads(int n)
{
    if (n < 1 || bus_ctx) /* (the context takes it only before its first socket) */
        return AC_ERR_INVALID;
    void *ctx = ctx_get();
    if (!ctx)
        return AC_ERR_NOMEM;
    return zmq_ctx_set(ctx, ZMQ_IO_THREADS, n) == 0 ? 0 : AC_ERR_INVALID;
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
    int is_dirty;             /* used or woken since the prepare watcher last checked */
    struct ac_zsock *monitor; /* owned PAIR reading this socket's events, or NULL */
    ac_zsock_event_fn on_event;
    void *event_arg;
};

static inline void touch(ac_zsock_t *s)
{
    s->is_dirty = 1;
}

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
    ac_zsock_t *s = ac_container_of(w, ac_zsock_t, io);
    touch(s);
    zsock_dispatch(s);
}

static void on_zsock_idle(struct ev_loop *loop, ev_idle *w, int revents)
{
    ac_zsock_t *s = ac_container_of(w, ac_zsock_t, idle);
    touch(s);
    zsock_dispatch(s);
}

static void on_zsock_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    ac_zsock_t *s = ac_container_of(w, ac_zsock_t, prepare);
    if (!s->is_dirty)
        return; /* nothing happened to it: its idle watcher is as it should be */
    s->is_dirty = 0;
    if (zsock_wants(s, zsock_events(s)))
        ev_idle_start(loop, &s->idle);
    else
        ev_idle_stop(loop, &s->idle);
}

static const int zmq_types[] = {
    [AC_ZSOCK_PUB] = ZMQ_PUB,   [AC_ZSOCK_SUB] = ZMQ_SUB,       [AC_ZSOCK_XPUB] = ZMQ_XPUB,
    [AC_ZSOCK_XSUB] = ZMQ_XSUB, [AC_ZSOCK_ROUTER] = ZMQ_ROUTER, [AC_ZSOCK_DEALER] = ZMQ_DEALER,
    [AC_ZSOCK_REP] = ZMQ_REP,   [AC_ZSOCK_PAIR] = ZMQ_PAIR,
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
    s->is_dirty = 1;
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
    if (s->monitor) {
        zmq_socket_monitor(s->zs, NULL, 0); /* closes libzmq's end */
        ac_zsock_destroy(&s->monitor);
    }
    zmq_close(s->zs);
    free(s);
    *self_p = NULL;
}

int ac_zsock_bind(ac_zsock_t *s, const char *endpoint)
{
    touch(s);
    if (zmq_bind(s->zs, endpoint) != 0) {
        ac_error("bus: bind %s: %s", endpoint, zmq_strerror(errno));
        return AC_ERR_IO;
    }
    return 0;
}

int ac_zsock_connect(ac_zsock_t *s, const char *endpoint)
{
    touch(s);
    if (zmq_connect(s->zs, endpoint) != 0) {
        ac_error("bus: connect %s: %s", endpoint, zmq_strerror(errno));
        return AC_ERR_IO;
    }
    return 0;
}

/* A fixed-size option (int, int64, uint64), logged by name when refused. */
static int set_opt(ac_zsock_t *s, int option, const void *value, size_t len, const char *name)
{
    touch(s);
    if (zmq_setsockopt(s->zs, option, value, len) != 0) {
        ac_error("bus: setsockopt %s: %s", name, zmq_strerror(errno));
        return AC_ERR_INVALID;
    }
    return 0;
}

static int set_int(ac_zsock_t *s, int option, int value, const char *name)
{
    return set_opt(s, option, &value, sizeof(value), name);
}

int ac_zsock_set_hwm(ac_zsock_t *s, int sndhwm, int rcvhwm)
{
    int rc = set_int(s, ZMQ_SNDHWM, sndhwm, "SNDHWM");
    return rc ? rc : set_int(s, ZMQ_RCVHWM, rcvhwm, "RCVHWM");
}

int ac_zsock_set_affinity(ac_zsock_t *s, uint64_t threads)
{
    return set_opt(s, ZMQ_AFFINITY, &threads, sizeof(threads), "AFFINITY");
}

int ac_zsock_set_maxmsgsize(ac_zsock_t *s, int64_t bytes)
{
    return set_opt(s, ZMQ_MAXMSGSIZE, &bytes, sizeof(bytes), "MAXMSGSIZE");
}

int ac_zsock_set_immediate(ac_zsock_t *s, int on)
{
    return set_int(s, ZMQ_IMMEDIATE, on, "IMMEDIATE");
}

int ac_zsock_set_xpub_nodrop(ac_zsock_t *s, int on)
{
    return set_int(s, ZMQ_XPUB_NODROP, on, "XPUB_NODROP");
}

int ac_zsock_set_xpub_manual(ac_zsock_t *s, int on)
{
    return set_int(s, ZMQ_XPUB_MANUAL, on, "XPUB_MANUAL");
}

int ac_zsock_set_router_mandatory(ac_zsock_t *s, int on)
{
    return set_int(s, ZMQ_ROUTER_MANDATORY, on, "ROUTER_MANDATORY");
}

static int set_str(ac_zsock_t *s, int option, const char *value, const char *name)
{
    touch(s);
    if (zmq_setsockopt(s->zs, option, value, strlen(value)) != 0) {
        ac_error("bus: setsockopt %s: %s", name, zmq_strerror(errno));
        return AC_ERR_INVALID;
    }
    return 0;
}

int ac_zsock_set_curve_client(ac_zsock_t *s, const ac_curve_t *keys)
{
    if (!ac_curve_key_is_valid(keys->server_key) || !ac_curve_key_is_valid(keys->public_key) ||
        !ac_curve_key_is_valid(keys->secret_key)) {
        ac_error("bus: CURVE client keys are not 40 characters of Z85 each");
        return AC_ERR_CONFIG;
    }
    if (set_str(s, ZMQ_CURVE_SERVERKEY, keys->server_key, "CURVE_SERVERKEY") ||
        set_str(s, ZMQ_CURVE_PUBLICKEY, keys->public_key, "CURVE_PUBLICKEY") ||
        set_str(s, ZMQ_CURVE_SECRETKEY, keys->secret_key, "CURVE_SECRETKEY"))
        return AC_ERR_CONFIG;
    return 0;
}

int ac_zsock_set_curve_server(ac_zsock_t *s, const ac_curve_t *keys, const char *zap_domain)
{
    if (!ac_curve_key_is_valid(keys->secret_key)) {
        ac_error("bus: the CURVE server secret key is not 40 characters of Z85");
        return AC_ERR_CONFIG;
    }
    if (set_int(s, ZMQ_CURVE_SERVER, 1, "CURVE_SERVER") ||
        set_str(s, ZMQ_CURVE_SECRETKEY, keys->secret_key, "CURVE_SECRETKEY") ||
        set_str(s, ZMQ_ZAP_DOMAIN, zap_domain, "ZAP_DOMAIN"))
        return AC_ERR_CONFIG;
    /* Without a ZAP handler in the context, libzmq 4.3 lets every CURVE key in (the
     * option that would refuse instead, ZAP_ENFORCE_DOMAIN, is a draft API): the caller
     * must have its ZAP handler bound before it binds this socket. */
    return 0;
}

int ac_zsock_subscribe(ac_zsock_t *s, const char *prefix)
{
    size_t n = strlen(prefix);
    touch(s);
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
    /* SUB: a filter; XPUB with XPUB_MANUAL: a subscription for the last peer heard */
    if (zmq_setsockopt(s->zs, ZMQ_SUBSCRIBE, prefix, n) != 0) {
        ac_error("bus: subscribe: %s", zmq_strerror(errno));
        return AC_ERR_IO;
    }
    return 0;
}

int ac_zsock_unsubscribe(ac_zsock_t *s, const char *prefix)
{
    touch(s);
    if (s->type == AC_ZSOCK_XSUB)
        return AC_ERR_INVALID; /* the bus never unsubscribes upstream */
    if (zmq_setsockopt(s->zs, ZMQ_UNSUBSCRIBE, prefix, strlen(prefix)) != 0) {
        ac_error("bus: unsubscribe: %s", zmq_strerror(errno));
        return AC_ERR_IO;
    }
    return 0;
}

void ac_zsock_on_readable(ac_zsock_t *s, ac_zsock_fn cb, void *arg)
{
    touch(s);
    s->on_read = cb;
    s->read_arg = arg;
    if (cb)
        ev_idle_start(s->loop, &s->idle); /* messages may already be waiting */
}

void ac_zsock_on_writable(ac_zsock_t *s, ac_zsock_fn cb, void *arg)
{
    touch(s);
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
    char uid_buf[sizeof(out->user_id)] = "";
    touch(s);
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
        if (uid_buf[0] == '\0') {
            /* a ROUTER's first frame is its own routing id, without metadata: the peer's
             * frames that follow carry it */
            const char *uid = zmq_msg_gets(&m, "User-Id");
            if (uid)
                snprintf(uid_buf, sizeof(uid_buf), "%s", uid);
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
    memcpy(out->user_id, uid_buf, sizeof(uid_buf));
    return 0;
}

int ac_zsock_send(ac_zsock_t *s, const void *const *data, const size_t *len, size_t n)
{
    touch(s);
    for (size_t i = 0; i < n; i++) {
        int flags = ZMQ_DONTWAIT | (i + 1 < n ? ZMQ_SNDMORE : 0);
        if (zmq_send(s->zs, data[i], len[i], flags) < 0) {
            /* ZeroMQ only refuses the first frame of a message; later ones are queued */
            if (errno == EAGAIN)
                return AC_ERR_AGAIN;
            if (errno == EHOSTUNREACH) /* ROUTER_MANDATORY: that peer is gone */
                return AC_ERR_UNAVAILABLE;
            ac_warn("bus: send: %s", zmq_strerror(errno));
            return AC_ERR_IO;
        }
    }
    return 0;
}

int ac_zsock_forward(ac_zsock_t *from, ac_zsock_t *to, ac_zsock_check_fn check, void *arg,
                     int *forwarded, int *send_rc)
{
    zmq_msg_t m[AC_FRAMES_MAX];
    ac_frames_t f;
    size_t kept = 0;
    int more = 1, rc = 0;

    touch(from);
    touch(to);
    *forwarded = 0;
    if (send_rc)
        *send_rc = 0;
    memset(&f, 0, offsetof(ac_frames_t, len)); /* n and user_id; len/data set as filled */
    while (more) {
        zmq_msg_t extra, *mp = kept < AC_FRAMES_MAX ? &m[kept] : &extra;
        size_t mlen = sizeof(more);
        zmq_msg_init(mp);
        if (zmq_msg_recv(mp, from->zs, ZMQ_DONTWAIT) < 0) {
            int err = errno;
            zmq_msg_close(mp);
            for (size_t i = 0; i < kept; i++)
                zmq_msg_close(&m[i]);
            if (err == EAGAIN)
                return AC_ERR_AGAIN;
            ac_warn("bus: recv: %s", zmq_strerror(err));
            return AC_ERR_IO;
        }
        if (f.n == 0) {
            const char *uid = zmq_msg_gets(mp, "User-Id");
            if (uid)
                snprintf(f.user_id, sizeof(f.user_id), "%s", uid);
        }
        if (mp != &extra) {
            f.data[kept] = zmq_msg_data(mp);
            f.len[kept] = zmq_msg_size(mp);
            kept++;
        }
        f.n++;
        zmq_getsockopt(from->zs, ZMQ_RCVMORE, &more, &mlen);
        if (mp == &extra)
            zmq_msg_close(mp);
    }
    /* more frames than shown: check() sees n and refuses; they are never sent */
    if (check(&f, arg) && f.n == kept) {
        size_t i = 0;
        for (; i < kept; i++) {
            int flags = ZMQ_DONTWAIT | (i + 1 < kept ? ZMQ_SNDMORE : 0);
            if (zmq_msg_send(&m[i], to->zs, flags) < 0)
                break;
        }
        if (i == kept) {
            *forwarded = 1;
        } else {
            /* ZeroMQ only refuses the first frame of a message; later ones are queued */
            rc = errno == EAGAIN ? AC_ERR_AGAIN : AC_ERR_IO;
            if (rc == AC_ERR_IO)
                ac_warn("bus: send: %s", zmq_strerror(errno));
            if (send_rc)
                *send_rc = rc;
        }
    }
    for (size_t i = 0; i < kept; i++)
        zmq_msg_close(&m[i]); /* a sent message is empty: closing it is a no-op */
    return 0;
}

/* --- connection events --------------------------------------------------------------------- */

_Static_assert(AC_ZEVENT_ACCEPTED == ZMQ_EVENT_ACCEPTED &&
                   AC_ZEVENT_DISCONNECTED == ZMQ_EVENT_DISCONNECTED &&
                   AC_ZEVENT_HANDSHAKE_FAILED_NO_DETAIL == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL &&
                   AC_ZEVENT_HANDSHAKE_SUCCEEDED == ZMQ_EVENT_HANDSHAKE_SUCCEEDED &&
                   AC_ZEVENT_HANDSHAKE_FAILED_PROTOCOL == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
                   AC_ZEVENT_HANDSHAKE_FAILED_AUTH == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH,
               "AC_ZEVENT_* are libzmq's event numbers");
_Static_assert(AC_ZPROTO_ZMTP_CRYPTOGRAPHIC == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC &&
                   AC_ZPROTO_ZMTP_MECHANISM_MISMATCH ==
                       ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH &&
                   AC_ZPROTO_ZAP_FIRST == ZMQ_PROTOCOL_ERROR_ZAP_UNSPECIFIED,
               "AC_ZPROTO_* are libzmq's protocol error codes");

/* A monitor message is [event (16 bits) + value (32 bits), native order][endpoint]. */
static void on_monitor_readable(ac_zsock_t *m, void *arg)
{
    ac_zsock_t *s = arg;
    for (int i = 0; i < RECV_BATCH; i++) {
        ac_frames_t f;
        uint16_t event;
        uint32_t value;
        if (ac_zsock_recv(m, &f) != 0)
            break;
        if (f.n == 2 && f.len[0] == 6) {
            memcpy(&event, f.data[0], sizeof(event));
            memcpy(&value, f.data[0] + 2, sizeof(value));
            s->on_event(s->event_arg, event, value, (const char *)f.data[1]);
        }
        ac_frames_clear(&f);
    }
}

int ac_zsock_monitor(ac_zsock_t *s, int events, ac_zsock_event_fn cb, void *arg)
{
    static unsigned long next_id;
    char endpoint[64];
    if (s->monitor)
        return AC_ERR_INVALID;
    touch(s);
    /* a name of its own: a re-created socket is watched before the old one is closed */
    snprintf(endpoint, sizeof(endpoint), "inproc://ac-zsock-monitor-%lu", ++next_id);
    if (zmq_socket_monitor(s->zs, endpoint, events) != 0) {
        ac_error("bus: zmq_socket_monitor: %s", zmq_strerror(errno));
        return AC_ERR_IO;
    }
    s->monitor = ac_zsock_new(s->loop, AC_ZSOCK_PAIR);
    if (!s->monitor || ac_zsock_connect(s->monitor, endpoint) != 0) {
        zmq_socket_monitor(s->zs, NULL, 0);
        ac_zsock_destroy(&s->monitor);
        return AC_ERR_IO;
    }
    s->on_event = cb;
    s->event_arg = arg;
    ac_zsock_on_readable(s->monitor, on_monitor_readable, s);
    return 0;
}

/* --- CURVE keys ---------------------------------------------------------------------------- */

int ac_curve_keypair(char public_key[AC_KEY_Z85_LEN + 1], char secret_key[AC_KEY_Z85_LEN + 1])
{
    if (zmq_curve_keypair(public_key, secret_key) != 0) {
        ac_error("bus: zmq_curve_keypair: %s", zmq_strerror(errno));
        return AC_ERR_IO;
    }
    return 0;
}

int ac_curve_key_is_valid(const char *text)
{
    uint8_t raw[32];
    return text && strlen(text) == AC_KEY_Z85_LEN && zmq_z85_decode(raw, text) != NULL;
}

int ac_curve_key_to_z85(const uint8_t *raw, size_t len, char out[AC_KEY_Z85_LEN + 1])
{
    out[0] = '\0';
    if (len != 32 || zmq_z85_encode(out, raw, len) == NULL)
        return AC_ERR_INVALID;
    return 0;
}

/* "name = value" with optional spaces; 1 when line is that key's assignment. */
static int key_line(const char *line, const char *name, char out[AC_KEY_Z85_LEN + 1])
{
    size_t n = strlen(name);
    const char *v;
    size_t len;
    while (*line == ' ' || *line == '\t')
        line++;
    if (strncmp(line, name, n) != 0)
        return 0;
    v = line + n;
    while (*v == ' ' || *v == '\t')
        v++;
    if (*v++ != '=')
        return 0;
    while (*v == ' ' || *v == '\t')
        v++;
    len = strcspn(v, " \t\r\n");
    if (len != AC_KEY_Z85_LEN)
        return -1;
    memcpy(out, v, len);
    out[len] = '\0';
    return 1;
}

int ac_curve_load(const char *key_file, const char *server_key, ac_curve_t *out, char *err,
                  size_t errlen)
{
    struct stat st;
    char line[256], derived[AC_KEY_Z85_LEN + 1];
    FILE *f;
    int have_pub = 0, have_sec = 0, bad = 0, lineno = 0;

    memset(out, 0, sizeof(*out));
    if (!key_file || !*key_file) {
        snprintf(err, errlen, "no CURVE key file given");
        return AC_ERR_CONFIG;
    }
    f = fopen(key_file, "r");
    if (!f) {
        snprintf(err, errlen, "CURVE key file %s: %s", key_file, strerror(errno));
        return AC_ERR_IO;
    }
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 0077) != 0) {
        fclose(f);
        snprintf(err, errlen, "CURVE key file %s is readable by others (mode %03o): chmod 600 it",
                 key_file, (unsigned)(st.st_mode & 0777));
        return AC_ERR_CONFIG;
    }
    while (fgets(line, sizeof(line), f)) {
        int r;
        lineno++;
        if (line[0] == '#' || strspn(line, " \t\r\n") == strlen(line))
            continue;
        if ((r = key_line(line, "public-key", out->public_key)) != 0)
            have_pub = r > 0, bad |= r < 0;
        else if ((r = key_line(line, "secret-key", out->secret_key)) != 0)
            have_sec = r > 0, bad |= r < 0;
        else
            bad = 1;
        if (bad) {
            fclose(f);
            snprintf(err, errlen,
                     "CURVE key file %s, line %d: expected "
                     "'public-key = <40 Z85 characters>' or 'secret-key = ...'",
                     key_file, lineno);
            return AC_ERR_CONFIG;
        }
    }
    fclose(f);
    if (!have_sec || !ac_curve_key_is_valid(out->secret_key)) {
        snprintf(err, errlen, "CURVE key file %s has no valid secret-key", key_file);
        return AC_ERR_CONFIG;
    }
    if (zmq_curve_public(derived, out->secret_key) != 0) {
        snprintf(err, errlen, "CURVE key file %s: %s", key_file, zmq_strerror(errno));
        return AC_ERR_CONFIG;
    }
    if (have_pub && strcmp(derived, out->public_key) != 0) {
        snprintf(err, errlen, "CURVE key file %s: public-key does not belong to secret-key",
                 key_file);
        return AC_ERR_CONFIG;
    }
    memcpy(out->public_key, derived, sizeof(derived));
    if (server_key) {
        if (!ac_curve_key_is_valid(server_key)) {
            snprintf(err, errlen,
                     "the bus's public key (AC_BUS_SERVER_KEY) is not 40 "
                     "characters of Z85");
            return AC_ERR_CONFIG;
        }
        snprintf(out->server_key, sizeof(out->server_key), "%s", server_key);
    }
    return 0;
}

int ac_curve_write(const char *key_file, const ac_curve_t *keys, const char *comment, char *err,
                   size_t errlen)
{
    int fd = open(key_file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    FILE *f;
    int rc = 0;
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", key_file, strerror(errno));
        return AC_ERR_IO;
    }
    f = fdopen(fd, "w");
    if (!f) {
        snprintf(err, errlen, "cannot write %s: %s", key_file, strerror(errno));
        close(fd);
        unlink(key_file);
        return AC_ERR_IO;
    }
    fprintf(f, "# aftercare CURVE key%s%s. Keep this file secret.\n", comment ? ": " : "",
            comment ? comment : "");
    fprintf(f, "public-key = %s\nsecret-key = %s\n", keys->public_key, keys->secret_key);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        rc = AC_ERR_IO;
    if (fclose(f) != 0)
        rc = AC_ERR_IO;
    if (rc) {
        snprintf(err, errlen, "cannot write %s: %s", key_file, strerror(errno));
        unlink(key_file); /* created above (O_EXCL): a half-written key must not stay */
    }
    return rc;
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

ac_bus_pub_t *ac_bus_pub_new(struct ev_loop *loop, const char *endpoint, const ac_curve_t *curve)
{
    return ac_bus_pub_new_hwm(loop, endpoint, curve, PUB_SNDHWM);
}

ac_bus_pub_t *ac_bus_pub_new_hwm(struct ev_loop *loop, const char *endpoint,
                                 const ac_curve_t *curve, int sndhwm)
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
        ac_zsock_set_hwm(p->sock, sndhwm > 0 ? sndhwm : PUB_SNDHWM, 1000) ||
        (curve && ac_zsock_set_curve_client(p->sock, curve)) ||
        ac_zsock_connect(p->sock, endpoint)) {
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

/* --- batches ------------------------------------------------------------------------------ */

size_t ac_bus_batch_record_size(size_t topic_len, size_t envelope_len)
{
    if (topic_len == 0 || topic_len > 255 || envelope_len > UINT32_MAX)
        return 0;
    return 1 + topic_len + 4 + envelope_len;
}

size_t ac_bus_batch_record_put(uint8_t *out, const char *topic, size_t topic_len,
                               const uint8_t *envelope, size_t envelope_len)
{
    uint8_t *p = out;
    *p++ = (uint8_t)topic_len;
    memcpy(p, topic, topic_len);
    p += topic_len;
    *p++ = (uint8_t)(envelope_len >> 24);
    *p++ = (uint8_t)(envelope_len >> 16);
    *p++ = (uint8_t)(envelope_len >> 8);
    *p++ = (uint8_t)envelope_len;
    if (envelope != NULL && envelope_len > 0)
        memcpy(p, envelope, envelope_len);
    return (size_t)(p - out) + envelope_len;
}

int ac_bus_batch_next(const uint8_t *batch, size_t len, size_t *off, const uint8_t **topic,
                      size_t *topic_len, const uint8_t **envelope, size_t *envelope_len)
{
    size_t at = *off, tlen, elen;
    if (at >= len)
        return 0;
    tlen = batch[at];
    if (tlen == 0 || len - at < 1 + tlen + 4)
        return AC_ERR_INVALID;
    at += 1 + tlen;
    elen = (size_t)batch[at] << 24 | (size_t)batch[at + 1] << 16 | (size_t)batch[at + 2] << 8 |
           batch[at + 3];
    at += 4;
    if (elen > len - at)
        return AC_ERR_INVALID;
    *topic = batch + *off + 1;
    *topic_len = tlen;
    *envelope = batch + at;
    *envelope_len = elen;
    *off = at + elen;
    return 1;
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
        ac_zsock_set_maxmsgsize(sub->sock, 1 << 20) ||
        (cfg->curve && ac_zsock_set_curve_client(sub->sock, cfg->curve)))
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
