/* keys.h — the bus's cache of CURVE public keys (auth.bus_keys).
 *
 * The ZAP handler, the input check, the output's subscription filter and replay ask it
 * who a key is and what it may see. The cache is loaded with its own one-connection
 * database pool that LISTENs on channel ac_bus_keys and reloads the whole table on every
 * notification and after every reconnect (a notification may have been missed). Until
 * the first load has succeeded the cache is empty, so the bus refuses everyone.
 *
 * Owns: its database pool, the loaded keys. */
#ifndef BUS_KEYS_H
#define BUS_KEYS_H

#include <stddef.h>

#include "ac_err.h"

struct ev_loop;

typedef struct bus_keys bus_keys_t; /* loaded from auth.bus_keys, reloaded on NOTIFY */

typedef struct bus_key {
    char public_key[41];
    char name[65];
    int is_service;  /* kind = 'service' */
    char source[64]; /* services: the only envelope source it may publish */
    char **topics;   /* allowed prefixes; ntopics == 0 means every topic */
    size_t ntopics;
} bus_key_t;

/* Called after each successful reload (not after a failed one), from the loop. */
typedef void (*bus_keys_change_fn)(void *arg);

/* Starts loading at once (asynchronously). conninfo is copied. NULL on failure (logged). */
bus_keys_t *bus_keys_new(struct ev_loop *loop, const char *conninfo, bus_keys_change_fn on_change,
                         void *arg);
/* Safe on NULL; sets *self_p = NULL. */
void bus_keys_destroy(bus_keys_t **self_p);
/* 1 once a load has succeeded (before that every key is refused). */
int bus_keys_is_loaded(const bus_keys_t *keys);
/* Live keys in the cache now. */
size_t bus_keys_count(const bus_keys_t *keys);

/* The live (not revoked) key with this Z85 public key, or NULL. Valid until the next
 * reload: do not keep the pointer across loop iterations; keep the public key. */
const bus_key_t *bus_keys_find(const bus_keys_t *keys, const char *public_key);
/* 1 when k may see topic (a prefix of topic is in k->topics, or k->ntopics == 0). */
int bus_key_allows_topic(const bus_key_t *k, const char *topic);

#endif
