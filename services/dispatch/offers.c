/* offers.c — an automatic offer that nobody answers expires (AC_DISPATCH_OFFER_TIMEOUT,
 * migration 021).
 *
 * A timer on the loop runs dispatch.assign_expire(): one transaction declines the offers
 * made timeout or more seconds ago on their engineers' behalf (capacity freed, request
 * queued again without them, assignment.declined published through the outbox) and
 * answers how long until the next open offer expires; the timer is armed for then. With
 * no open offer it looks again a timeout later, since an offer made from now on expires no
 * sooner. The first sweep runs at start: offers that expired while dispatch was down are
 * declined at once. The rows decide, so a sweep that fails or is cut off is simply run
 * again (after a backoff), and an engineer who answers while the sweep runs wins (SKIP
 * LOCKED). Timeout 0: offers never expire, no timer.
 *
 * State: dispatch_t.offers (dispatch.h), which outlives the sweep in flight. */
#include <stdio.h>

#include "ac_log.h"
#include "dispatch.h"
#include "ops.h"
#include "store.h"

#define EXPIRE_BATCH 100 /* offers declined per transaction; a full batch goes on at once */
#define MIN_GAP_S    1.0 /* an offer skipped while it was being answered is looked at again */

static void sweep(dispatch_t *self);

static void arm(dispatch_t *self, double delay_s)
{
    dispatch_offers_t *o = &self->offers;
    ev_timer_stop(self->loop, &o->timer);
    ev_timer_set(&o->timer, delay_s > 0 ? delay_s : 0., 0.);
    ev_timer_start(self->loop, &o->timer);
}

static void on_swept(void *arg, int err, const json_t *result)
{
    dispatch_t *self = arg;
    dispatch_offers_t *o = &self->offers;
    const json_t *body = json_object_get(result, "body");
    const json_t *next = json_object_get(body, "next_in_s");
    json_int_t expired = json_integer_value(json_object_get(body, "expired"));

    o->is_sweeping = 0;
    if (self->is_closed)
        return;
    if (err < 0 || !json_is_object(body)) {
        double delay = ac_backoff_next(&o->backoff);
        ac_warn("offers: the expiry sweep failed (%s); again in %.1f s",
                err < 0 ? ac_strerror(err) : "an answer without a body", delay);
        arm(self, delay);
        return;
    }
    ac_backoff_reset(&o->backoff);
    if (expired > 0) {
        ac_info("offers: %lld offer(s) expired after %.0f s without an answer", (long long)expired,
                self->cfg->offer_timeout_s);
        ac_metrics_add(self->metrics, "assign_offers_expired_total", NULL, (double)expired);
    }
    if (expired >= EXPIRE_BATCH)
        sweep(self);
    else if (json_is_number(next))
        arm(self, json_number_value(next) < MIN_GAP_S ? MIN_GAP_S : json_number_value(next));
    else
        arm(self, self->cfg->offer_timeout_s);
}

static void sweep(dispatch_t *self)
{
    dispatch_offers_t *o = &self->offers;
    char timeout[24], limit[16];
    int rc;

    if (self->is_closed || o->is_sweeping)
        return;
    snprintf(timeout, sizeof timeout, "%.0f", self->cfg->offer_timeout_s);
    snprintf(limit, sizeof limit, "%d", EXPIRE_BATCH);
    rc = dispatch_run_sql(self, DISPATCH_STMT_ASSIGN_EXPIRE, (const char *[]){timeout, limit}, NULL,
                          on_swept, self);
    if (rc < 0) {
        arm(self, ac_backoff_next(&o->backoff));
        return;
    }
    o->is_sweeping = 1;
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    sweep(ac_container_of(w, dispatch_t, offers.timer));
}

void dispatch_offers_start(dispatch_t *self)
{
    dispatch_offers_t *o = &self->offers;
    (void)ac_metrics_declare(self->metrics, "assign_offers_expired_total", AC_METRIC_COUNTER,
                             "Automatic offers declined for want of an answer "
                             "(AC_DISPATCH_OFFER_TIMEOUT)");
    ac_backoff_init(&o->backoff, 1., 30.);
    ev_timer_init(&o->timer, on_timer, 0., 0.);
    if (self->cfg->offer_timeout_s > 0)
        ev_timer_start(self->loop, &o->timer); /* at once: what expired while down */
}

void dispatch_offers_stop(dispatch_t *self)
{
    if (self->loop)
        ev_timer_stop(self->loop, &self->offers.timer);
}
