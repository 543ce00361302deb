/* zap.h — the bus's ZAP handler (RFC 27): who may connect to which bus socket.
 *
 * A REP socket bound at inproc://zeromq.zap.01 in the bus's ZeroMQ context, answered on
 * the bus loop. libzmq asks it about every CURVE handshake on a socket that has a ZAP
 * domain; the answer names the client by its Z85 public key (the User-Id every message
 * from it then carries). Domains:
 *   "aftercare.input"  live keys of kind service
 *   "aftercare.output" any live key
 *   "aftercare.replay" any live key
 * Anything else (another mechanism, another domain) is refused. Until the keys have been
 * loaded no request is answered: handshakes wait (libzmq clients never retry after a
 * refusal, so "not yet" must not be said as "no").
 * Every refusal is counted in bus_t.auth_failures and logged (repeats of the same key,
 * domain and reason at most every LOG_EVERY_S, with the number suppressed).
 *
 * Owns: its socket and the table of recently logged refusals. */
#ifndef BUS_ZAP_H
#define BUS_ZAP_H

#include "ac_err.h"

struct bus;
typedef struct bus_zap bus_zap_t;

/* Binds the handler; call it before any CURVE server socket is bound (libzmq 4.3 lets
 * every key in while no handler exists). NULL on failure (logged). */
bus_zap_t *bus_zap_new(struct bus *bus);
/* Safe on NULL; sets *self_p = NULL. */
void bus_zap_destroy(bus_zap_t **self_p);
/* The key cache has (re)loaded: answer the requests held meanwhile. */
void bus_zap_keys_loaded(bus_zap_t *self);
/* Logs a refusal (rate-limited as above); key may be "" (unknown), address may be "". */
void bus_zap_log_refusal(bus_zap_t *self, const char *domain, const char *key, const char *address,
                         const char *why);

#endif
