/* zap.c — the ZAP handler of zap.h.
 *
 * A ZAP request is [version "1.0"][request id][domain][address][routing id][mechanism]
 * [credentials...]; for CURVE the one credential is the client's 32-byte public key. The
 * reply is [version][request id][status code][status text][user id][metadata]. REP needs
 * a reply to every request before the next one can be read, so even a request that makes
 * no sense gets one (500).
 *
 * libzmq 4.3 clients never reconnect after a refusal (any ZAP status but 200 ends their
 * session for good), so a refusal must be meant. Until the keys have been loaded the
 * handler therefore reads no request at all: handshakes wait (fail closed) and complete as
 * soon as the keys are there; past the handshake timeout (30 s) clients reconnect. */
#include "zap.h"

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_bus.h"
#include "ac_log.h"
#include "bus.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_VERSION  "1.0"
#define ZAP_BATCH    256  /* requests answered per wake-up */
#define LOG_EVERY_S  10.0 /* a repeated refusal is logged at most this often */
#define LOG_SLOTS    64   /* (key, domain, reason) triples remembered for that */

typedef struct refusal_slot {
    char key[AC_KEY_Z85_LEN + 1];
    char domain[32];
    char why[96];
    ev_tstamp logged_at; /* 0: slot unused */
    unsigned long suppressed;
} refusal_slot_t;

struct bus_zap {
    bus_t *bus;       /* borrowed: the owner */
    ac_zsock_t *sock; /* owned REP */
    int is_holding;   /* requests are left waiting until the keys are loaded */
    refusal_slot_t slots[LOG_SLOTS];
};

static const char *const DOMAINS[BUS_DOMAINS] = {
    [BUS_DOMAIN_INPUT] = BUS_ZAP_INPUT,
    [BUS_DOMAIN_OUTPUT] = BUS_ZAP_OUTPUT,
    [BUS_DOMAIN_REPLAY] = BUS_ZAP_REPLAY,
};

/* --- logging refusals ------------------------------------------------------------------- */

static void log_suppressed(const refusal_slot_t *s)
{
    ac_warn("%lu more refusals of key %s on %s: %s", s->suppressed, s->key[0] ? s->key : "(none)",
            s->domain, s->why);
}

void bus_zap_log_refusal(bus_zap_t *self, const char *domain, const char *key, const char *address,
                         const char *why)
{
    ev_tstamp now = ev_now(self->bus->loop);
    refusal_slot_t *slot = NULL, *oldest = &self->slots[0];
    for (size_t i = 0; i < LOG_SLOTS; i++) {
        refusal_slot_t *s = &self->slots[i];
        if (s->logged_at > 0 && strcmp(s->key, key) == 0 && strcmp(s->domain, domain) == 0 &&
            strncmp(s->why, why, sizeof(s->why) - 1) == 0) {
            slot = s;
            break;
        }
        if (s->logged_at < oldest->logged_at)
            oldest = s;
    }
    if (slot != NULL && now - slot->logged_at < LOG_EVERY_S) {
        slot->suppressed++;
        return;
    }
    if (slot == NULL) {
        if (oldest->logged_at > 0 && oldest->suppressed > 0)
            log_suppressed(oldest);
        slot = oldest;
        snprintf(slot->key, sizeof(slot->key), "%s", key);
        snprintf(slot->domain, sizeof(slot->domain), "%s", domain);
        snprintf(slot->why, sizeof(slot->why), "%s", why);
    } else if (slot->suppressed > 0) {
        log_suppressed(slot);
    }
    slot->logged_at = now;
    slot->suppressed = 0;
    ac_warn("refused key %s on %s%s%s: %s", key[0] ? key : "(none)", domain,
            address[0] ? " from " : "", address, why);
}

/* --- requests --------------------------------------------------------------------------- */

static int frame_is(const ac_frames_t *f, size_t i, const char *text)
{
    return f->len[i] == strlen(text) && memcmp(f->data[i], text, f->len[i]) == 0;
}

/* Copies frame i as text into out (cut to fit; NUL bytes end it early). */
static void frame_text(const ac_frames_t *f, size_t i, char *out, size_t outlen)
{
    snprintf(out, outlen, "%.*s", (int)(f->len[i] < outlen ? f->len[i] : outlen - 1),
             (const char *)f->data[i]);
}

/* Decides one well-formed request: status "200", "300", "400"; *why on refusal, user_id
 * (the Z85 key) on success. */
static const char *decide(bus_zap_t *self, int domain, const char *key, const char **why)
{
    bus_t *bus = self->bus;
    const bus_key_t *k;
    if (!bus_keys_is_loaded(bus->keys)) {
        *why = "the bus has not loaded its keys yet";
        return "300";
    }
    k = bus_keys_find(bus->keys, key);
    if (k == NULL) {
        *why = "unknown or revoked key";
        return "400";
    }
    if (domain == BUS_DOMAIN_INPUT && !k->is_service) {
        *why = "not a service key: only services may publish";
        return "400";
    }
    if (domain == BUS_DOMAIN_OUTPUT)
        bus_output_key_seen(bus, k);
    return "200";
}

static void handle(bus_zap_t *self, const ac_frames_t *f)
{
    static const char empty[] = "";
    char domain_text[64] = "", address[64] = "", key[AC_KEY_Z85_LEN + 1] = "";
    const char *status = "500", *why = "malformed ZAP request";
    const char *user_id = empty;
    int domain = -1;

    if (f->n >= 6 && f->n <= AC_FRAMES_MAX && frame_is(f, 0, ZAP_VERSION)) {
        frame_text(f, 2, domain_text, sizeof(domain_text));
        frame_text(f, 3, address, sizeof(address));
        for (int d = 0; d < BUS_DOMAINS; d++)
            if (frame_is(f, 2, DOMAINS[d]))
                domain = d;
        if (domain < 0) {
            status = "400";
            why = "unknown ZAP domain";
        } else if (!frame_is(f, 5, "CURVE")) {
            status = "400";
            why = "not CURVE: every bus socket needs CURVE";
        } else if (f->n != 7 || ac_curve_key_to_z85(f->data[6], f->len[6], key) != 0) {
            status = "500";
            why = "CURVE request without a 32-byte key";
        } else {
            status = decide(self, domain, key, &why);
        }
    }
    if (strcmp(status, "200") == 0) {
        user_id = key;
        why = "OK";
        ac_debug("key %s let into %s from %s", key, domain_text, address);
    } else {
        if (domain >= 0)
            self->bus->auth_failures[domain]++;
        bus_zap_log_refusal(self, domain_text[0] ? domain_text : "(no domain)", key, address, why);
    }

    /* the request id is echoed as is; a request too short to have one gets an empty one */
    const void *data[6] = {
        ZAP_VERSION, f->n >= 2 ? (const void *)f->data[1] : empty, status, why, user_id, empty};
    size_t len[6] = {strlen(ZAP_VERSION), f->n >= 2 ? f->len[1] : 0, strlen(status),
                     strlen(why),         strlen(user_id),           0};
    if (ac_zsock_send(self->sock, data, len, 6) != 0)
        ac_error("cannot answer a ZAP request (%s on %s)", key[0] ? key : "(no key)", domain_text);
}

static void on_request(ac_zsock_t *s, void *arg)
{
    bus_zap_t *self = arg;
    if (!bus_keys_is_loaded(self->bus->keys)) {
        if (!self->is_holding)
            ac_info("holding CURVE handshakes until the bus keys are loaded");
        self->is_holding = 1;
        ac_zsock_on_readable(s, NULL, NULL); /* bus_zap_keys_loaded() resumes */
        return;
    }
    for (int i = 0; i < ZAP_BATCH; i++) {
        ac_frames_t f;
        if (ac_zsock_recv(s, &f) != 0)
            break;
        handle(self, &f);
        ac_frames_clear(&f);
    }
}

/* --- public ----------------------------------------------------------------------------- */

bus_zap_t *bus_zap_new(bus_t *bus)
{
    bus_zap_t *self = calloc(1, sizeof(*self));
    if (self == NULL) {
        ac_error("out of memory");
        return NULL;
    }
    self->bus = bus;
    self->sock = ac_zsock_new(bus->loop, AC_ZSOCK_REP);
    if (self->sock == NULL || ac_zsock_bind(self->sock, ZAP_ENDPOINT) != 0) {
        ac_error("cannot start the ZAP handler: every bus socket would let anyone in");
        ac_zsock_destroy(&self->sock);
        free(self);
        return NULL;
    }
    ac_zsock_on_readable(self->sock, on_request, self);
    return self;
}

void bus_zap_keys_loaded(bus_zap_t *self)
{
    if (self == NULL || !self->is_holding)
        return;
    self->is_holding = 0;
    ac_info("keys loaded: answering CURVE handshakes");
    ac_zsock_on_readable(self->sock, on_request, self);
}

void bus_zap_destroy(bus_zap_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    bus_zap_t *self = *self_p;
    for (size_t i = 0; i < LOG_SLOTS; i++)
        if (self->slots[i].logged_at > 0 && self->slots[i].suppressed > 0)
            log_suppressed(&self->slots[i]);
    ac_zsock_destroy(&self->sock);
    free(self);
    *self_p = NULL;
}
