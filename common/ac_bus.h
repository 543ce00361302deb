/* ac_bus.h — ZeroMQ, in one place: sockets on the libev loop, the service publisher that
 * feeds the bus input, and the subscriber that routes inbound events by a table of
 * protobuf descriptors. No other module includes <zmq.h>.
 *
 * Wire format: two frames, [topic][Envelope bytes]; topic is the event type without
 * prefix and version ("ticket.created"), so prefix subscriptions ("ticket.") work.
 *
 * Owns: one process-wide ZeroMQ context (created on first use, ended by
 * ac_bus_shutdown()), each object's socket and watchers. */
#ifndef AC_BUS_H
#define AC_BUS_H

#include <stddef.h>
#include <stdint.h>

#include "aftercare/v1/envelope.pb-c.h"
#include "ac_err.h"

struct ev_loop;
struct ac_metrics;

/* --- raw sockets on the loop (the bus daemon and tools use these) ----------------------- */
typedef struct ac_zsock ac_zsock_t;
typedef enum {
    AC_ZSOCK_PUB,
    AC_ZSOCK_SUB,
    AC_ZSOCK_XPUB,
    AC_ZSOCK_XSUB,
    AC_ZSOCK_ROUTER,
    AC_ZSOCK_DEALER,
    AC_ZSOCK_REP,
    AC_ZSOCK_PAIR,
} ac_zsock_type_t;

#define AC_FRAMES_MAX  8
#define AC_KEY_Z85_LEN 40 /* a CURVE key in Z85 text, without the terminating NUL */
/* A received multipart message. Frames beyond AC_FRAMES_MAX are counted but dropped. */
typedef struct ac_frames {
    size_t n; /* frames received (may exceed AC_FRAMES_MAX) */
    /* The sender's identity as the ZAP handler named it (the bus uses the Z85 public
     * key), "" when the socket has no authentication or the peer was not named. */
    char user_id[AC_KEY_Z85_LEN + 24];
    size_t len[AC_FRAMES_MAX];
    uint8_t *data[AC_FRAMES_MAX]; /* owned; freed by ac_frames_clear() */
} ac_frames_t;
void ac_frames_clear(ac_frames_t *f);

typedef void (*ac_zsock_fn)(ac_zsock_t *s, void *arg);

/* --- CURVE keys ---------------------------------------------------------------------------
 * Every bus socket is encrypted and authenticated with CURVE. A key file is text:
 *   # comment lines
 *   public-key = <40 characters of Z85>
 *   secret-key = <40 characters of Z85>
 * It must not be readable by group or others (like an ssh key). A client also needs the
 * bus's public key (AC_BUS_SERVER_KEY). */
typedef struct ac_curve {
    char public_key[AC_KEY_Z85_LEN + 1];
    char secret_key[AC_KEY_Z85_LEN + 1];
    char server_key[AC_KEY_Z85_LEN + 1]; /* clients: the bus's public key; "" for servers */
} ac_curve_t;

/* A fresh key pair (Z85). AC_ERR_IO when libzmq has no CURVE support. */
int ac_curve_keypair(char public_key[AC_KEY_Z85_LEN + 1],
                     char secret_key[AC_KEY_Z85_LEN + 1]) AC_WUR;
/* 1 when text is 40 characters of Z85 that decode to a 32-byte key. */
int ac_curve_key_is_valid(const char *text);
/* The Z85 text of a raw 32-byte key (as a ZAP request carries it). AC_ERR_INVALID when len
 * is not 32. */
int ac_curve_key_to_z85(const uint8_t *raw, size_t len, char out[AC_KEY_Z85_LEN + 1]) AC_WUR;
/* Reads key_file into out (checks the permissions, the syntax and that the public key
 * belongs to the secret key) and copies server_key (may be NULL) after validating it.
 * On failure returns AC_ERR_CONFIG/AC_ERR_IO and writes a message naming the file. */
int ac_curve_load(const char *key_file, const char *server_key, ac_curve_t *out, char *err,
                  size_t errlen) AC_WUR;
/* Writes a key file (mode 0600, refuses to overwrite). comment may be NULL. On failure
 * the file is removed if this call created it, and only then (an existing file is kept). */
int ac_curve_write(const char *key_file, const ac_curve_t *keys, const char *comment, char *err,
                   size_t errlen) AC_WUR;

ac_zsock_t *ac_zsock_new(struct ev_loop *loop, ac_zsock_type_t type); /* NULL on failure */
void ac_zsock_destroy(ac_zsock_t **self_p);
int ac_zsock_bind(ac_zsock_t *s, const char *endpoint) AC_WUR;
int ac_zsock_connect(ac_zsock_t *s, const char *endpoint) AC_WUR;
int ac_zsock_set_hwm(ac_zsock_t *s, int sndhwm, int rcvhwm) AC_WUR;
int ac_zsock_set_maxmsgsize(ac_zsock_t *s, int64_t bytes) AC_WUR;
/* Before bind or connect: the I/O threads that serve this socket's connections (bit i:
 * thread i of ac_bus_set_io_threads(); 0: any). ZeroMQ spreads a socket's connections over
 * every I/O thread otherwise, and its monitor then reports the events of different
 * connections in no particular order. */
int ac_zsock_set_affinity(ac_zsock_t *s, uint64_t threads) AC_WUR;
int ac_zsock_set_xpub_nodrop(ac_zsock_t *s, int on) AC_WUR;
int ac_zsock_set_immediate(ac_zsock_t *s, int on) AC_WUR; /* queue only to live connections */
int ac_zsock_subscribe(ac_zsock_t *s, const char *prefix) AC_WUR; /* SUB: filter; XSUB: sends it */
/* SUB: drops a filter; XPUB with XPUB_MANUAL: drops it for the last peer heard. */
int ac_zsock_unsubscribe(ac_zsock_t *s, const char *prefix) AC_WUR;
/* XPUB_MANUAL: subscription messages are passed up and only take effect through
 * ac_zsock_subscribe() on the XPUB, which applies to the peer that sent the last one. */
int ac_zsock_set_xpub_manual(ac_zsock_t *s, int on) AC_WUR;
/* ROUTER_MANDATORY: a send to a peer whose queue is full returns AC_ERR_AGAIN and a send
 * to an unknown (gone) peer returns AC_ERR_UNAVAILABLE instead of dropping silently. */
int ac_zsock_set_router_mandatory(ac_zsock_t *s, int on) AC_WUR;
/* Before connect: encrypt and authenticate to the server whose key is keys->server_key. */
int ac_zsock_set_curve_client(ac_zsock_t *s, const ac_curve_t *keys) AC_WUR;
/* Before bind: be a CURVE server; the ZAP handler sees zap_domain in each request. */
int ac_zsock_set_curve_server(ac_zsock_t *s, const ac_curve_t *keys, const char *zap_domain) AC_WUR;
/* on_readable runs whenever at least one message can be received (level-triggered:
 * it is called again while messages remain). */
void ac_zsock_on_readable(ac_zsock_t *s, ac_zsock_fn cb, void *arg);
/* on_writable runs once when a send that returned AC_ERR_AGAIN may now succeed. */
void ac_zsock_on_writable(ac_zsock_t *s, ac_zsock_fn cb, void *arg);
/* Non-blocking. 0, AC_ERR_AGAIN (nothing there), AC_ERR_IO. Clears *out first. */
int ac_zsock_recv(ac_zsock_t *s, ac_frames_t *out) AC_WUR;
/* Non-blocking multipart send. 0, AC_ERR_AGAIN (HWM reached), AC_ERR_IO. */
int ac_zsock_send(ac_zsock_t *s, const void *const *data, const size_t *len, size_t n) AC_WUR;

/* Zero-copy forwarding of one message from `from` to `to`. check() sees the message in *f,
 * whose data point into ZeroMQ's own buffers (borrowed: valid during the call only, not
 * NUL-terminated; never pass f to ac_frames_clear()); it returns 1 to send exactly those
 * frames on `to`, 0 to drop them. Frames beyond AC_FRAMES_MAX are counted in f->n but not
 * shown, and such a message is never sent. Returns AC_ERR_AGAIN when nothing was waiting,
 * AC_ERR_IO on a receive error, else 0 with *forwarded = 1 when `to` took the message
 * (a PUB/XPUB takes everything; a subscriber whose queue is full misses it) and 0 when
 * check() or the send refused it; then *send_rc (may be NULL) holds the send's
 * AC_ERR_AGAIN/AC_ERR_IO, or 0 when check() refused. */
typedef int (*ac_zsock_check_fn)(const ac_frames_t *f, void *arg);
int ac_zsock_forward(ac_zsock_t *from, ac_zsock_t *to, ac_zsock_check_fn check, void *arg,
                     int *forwarded, int *send_rc) AC_WUR;

/* --- connection events (a ZeroMQ socket monitor) ------------------------------------------
 * libzmq's own event numbers (checked against <zmq.h> in bus.c). value is, per event:
 * ACCEPTED, DISCONNECTED: the connection's file descriptor (a name only: it may be closed
 * and reused by the time the event is read); HANDSHAKE_FAILED_NO_DETAIL: an errno (the peer
 * left or the handshake timed out); HANDSHAKE_FAILED_PROTOCOL: an AC_ZPROTO_* code;
 * HANDSHAKE_FAILED_AUTH: the ZAP status (300, 400, 500); HANDSHAKE_SUCCEEDED: nothing. */
#define AC_ZEVENT_ACCEPTED                   0x0020
#define AC_ZEVENT_DISCONNECTED               0x0200
#define AC_ZEVENT_HANDSHAKE_FAILED_NO_DETAIL 0x0800
#define AC_ZEVENT_HANDSHAKE_SUCCEEDED        0x1000
#define AC_ZEVENT_HANDSHAKE_FAILED_PROTOCOL  0x2000
#define AC_ZEVENT_HANDSHAKE_FAILED_AUTH      0x4000
/* HANDSHAKE_FAILED_PROTOCOL values (a few of libzmq's ZMQ_PROTOCOL_ERROR_*) */
#define AC_ZPROTO_ZMTP_CRYPTOGRAPHIC      0x11000001u /* a CURVE box did not open: wrong keys */
#define AC_ZPROTO_ZMTP_MECHANISM_MISMATCH 0x11000002u /* the peer is not CURVE */
#define AC_ZPROTO_ZAP_FIRST               0x20000000u /* 0x2000000x: the ZAP handler's answer */

typedef void (*ac_zsock_event_fn)(void *arg, int event, uint32_t value, const char *endpoint);
/* Watches s's connections: cb runs on the loop for each event in the mask events (an OR of
 * AC_ZEVENT_*), in the order libzmq emitted them. The monitor (an inproc PAIR with a name
 * of its own) belongs to s and ends with ac_zsock_destroy(s); cb must not destroy s. One
 * monitor per socket. AC_ERR_IO on failure (logged). */
int ac_zsock_monitor(ac_zsock_t *s, int events, ac_zsock_event_fn cb, void *arg) AC_WUR;

/* --- publisher: a service's connection to the bus input ------------------------------- */
typedef struct ac_bus_pub ac_bus_pub_t;

/* An XPUB that connects to the bus input (with CURVE when curve is not NULL; curve is
 * copied) and only reports ready once the bus has
 * subscribed, so nothing is dropped for want of a subscriber; sends never drop (they
 * return AC_ERR_AGAIN when the queue is full or the bus is away). */
ac_bus_pub_t *ac_bus_pub_new(struct ev_loop *loop, const char *endpoint, const ac_curve_t *curve);
void ac_bus_pub_destroy(ac_bus_pub_t **self_p);
int ac_bus_pub_is_ready(const ac_bus_pub_t *self);
/* Increases each time the bus (re)subscribes. A change after the first means the
 * connection was lost meanwhile, and what was queued towards the old one may be gone. */
uint64_t ac_bus_pub_generation(const ac_bus_pub_t *self);
int ac_bus_pub_send(ac_bus_pub_t *self, const char *topic, const void *body, size_t len) AC_WUR;
/* cb runs when the bus (re)subscribes, and 20 ms after a send returned AC_ERR_AGAIN on a
 * full queue (an XPUB with NODROP gives no usable writable signal). */
void ac_bus_pub_on_ready(ac_bus_pub_t *self, void (*cb)(void *arg), void *arg);

/* --- batches: several events in one message into the bus input ---------------------------
 * CURVE encrypts and authenticates every frame of every message on its own, so a message
 * per event costs the relay and the bus more than the events' bytes do. A service's relay
 * may therefore send [AC_BUS_BATCH_TOPIC][records] to the bus input, where the records are
 * events one after the other, each:
 *   topic length (1 byte, 1..255), topic, envelope length (4 bytes, big-endian), envelope.
 * The bus checks each event as if it came alone (the same publisher, topic and envelope
 * checks) and forwards it as the documented [topic][envelope]: subscribers never see a
 * batch. "bus." topics are the bus's own, so no event can be mistaken for a batch. */
#define AC_BUS_BATCH_TOPIC     "bus.batch"
#define AC_BUS_BATCH_BYTES_MAX 65536 /* what a relay puts in one batch (AC_BUS_MAX_MSG above) */
#define AC_BUS_BATCH_EVENTS    64    /* events per batch message at most */
/* The bytes of one record; 0 when the topic is empty or longer than 255 bytes. */
size_t ac_bus_batch_record_size(size_t topic_len, size_t envelope_len);
/* Writes one record at out (ac_bus_batch_record_size() bytes); returns its size. envelope
 * NULL: the envelope is already in place (at out + 1 + topic_len + 4). */
size_t ac_bus_batch_record_put(uint8_t *out, const char *topic, size_t topic_len,
                               const uint8_t *envelope, size_t envelope_len);
/* Reads the record at *off of a batch of len bytes and moves *off past it: 1 with the
 * record in *topic and *envelope (pointing into batch), 0 at the end, AC_ERR_INVALID when the
 * rest is not a whole record. */
int ac_bus_batch_next(const uint8_t *batch, size_t len, size_t *off, const uint8_t **topic,
                      size_t *topic_len, const uint8_t **envelope, size_t *envelope_len);
/* ac_bus_pub_new() whose queue holds at most sndhwm messages (ac_bus_pub_new: 10,000): a
 * batching publisher keeps its queue in events about the same. */
ac_bus_pub_t *ac_bus_pub_new_hwm(struct ev_loop *loop, const char *endpoint,
                                 const ac_curve_t *curve, int sndhwm);

/* --- subscriber: routing inbound events by payload type ------------------------------- */
typedef struct ac_bus_sub ac_bus_sub_t;

/* Handler result: 0 applied; anything else is logged and counted (bus_events_failed_total)
 * and the event is not delivered again by this subscriber. A consumer that must apply
 * every event re-reads what it missed by sequence from its checkpoint (replay: not built
 * yet, see DESIGN.md §4). */
typedef int (*ac_event_handler_fn)(const Aftercare__V1__Envelope *env, const char *topic,
                                   void *arg);
typedef struct ac_route {
    const ProtobufCMessageDescriptor *descriptor; /* payload type; NULL ends the table */
    ac_event_handler_fn handler;
} ac_route_t;

typedef struct ac_bus_sub_config {
    const char *endpoint;      /* bus output, "tcp://127.0.0.1:5571" */
    const ac_curve_t *curve;   /* client keys (borrowed); NULL = no CURVE (tests only) */
    const char *const *topics; /* NULL-terminated prefixes; NULL = everything */
    const ac_route_t *routes;  /* may be NULL when on_event is set */
    /* Called for every decoded envelope whose payload has no route (e.g. a tail tool). */
    ac_event_handler_fn on_event;
    /* Called for every message that is not two frames or whose envelope fails to decode. */
    void (*on_garbage)(const ac_frames_t *frames, const char *why, void *arg);
    void *arg;
    struct ac_metrics *metrics; /* borrowed, may be NULL */
} ac_bus_sub_config_t;

ac_bus_sub_t *ac_bus_sub_new(struct ev_loop *loop, const ac_bus_sub_config_t *cfg);
void ac_bus_sub_destroy(ac_bus_sub_t **self_p);

/* The number of ZeroMQ I/O threads of the process-wide context (default 1): where CURVE
 * encrypts and decrypts, and where each connection's frames are read and written. Only
 * before the first socket of the process; AC_ERR_INVALID afterwards or for n < 1. */
int ac_bus_set_io_threads(int n);

/* Ends the process-wide context (after every socket is destroyed). */
void ac_bus_shutdown(void);

#endif
