/* plan_validate.h — the pure rules of service plans (plans.c): the shape of a proposal,
 * of a customer's decision, of a cancellation and of a link request, and the signed
 * customer link (HMAC-SHA256 over the plan id, its revision and the link's expiry).
 *
 * Nothing here touches the database, the network or the clock (the caller passes the
 * time), so a rejected request changes nothing. Rules that need the ticket or the time —
 * the warranty fee rule, an ETA in the past, the order of steps — are the SQL functions'
 * (migrations/005_plans.sql). Lengths are counted in Unicode characters.
 *
 * Owns: nothing beyond the normalised JSON it hands back (the caller decrefs it). */
#ifndef DISPATCH_PLAN_VALIDATE_H
#define DISPATCH_PLAN_VALIDATE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ac_err.h"
#include "validate.h"

/* API names of PlanMode (dispatch.proto), [0] NULL. */
extern const char *const dispatch_plan_mode_names[5];

#define DISPATCH_PLAN_MAX_PARTS      50
#define DISPATCH_PLAN_MAX_CENTS      1000000000000LL /* 10^12: ten billion in a 2-decimal unit */
#define DISPATCH_PLAN_MAX_QUANTITY   100000
#define DISPATCH_PLAN_WORK_MAX_CHARS 4000
#define DISPATCH_PLAN_NOTE_MAX_CHARS 1000
#define DISPATCH_PLAN_NAME_MAX_CHARS 200
#define DISPATCH_PLAN_LINK_MAX_HOURS 720 /* 30 days */
#define DISPATCH_PLAN_LINK_DEF_HOURS 72
#define DISPATCH_PLAN_SECRET_MIN_LEN 32
#define DISPATCH_PLAN_SIG_HEXLEN     64

/* A proposal (POST /v1/tickets/{number}/plans): mode, work, eta required; parts,
 * free_of_charge, fee_cents, currency, warranty_exclusion optional. On success *out is the
 * normalised document for dispatch.plan_propose(): the optional keys only when given (a
 * JSON null counts as not given), parts completed with description "" and
 * unit_price_cents 0, eta in UTC ("...Z", microseconds). */
int dispatch_validate_plan(const json_t *body, json_t **out, dispatch_verr_t *err) AC_WUR;

typedef enum { DISPATCH_PLAN_ACCEPT, DISPATCH_PLAN_DISPUTE } dispatch_plan_action_t;

/* What the customer said, borrowed from the body. */
typedef struct dispatch_plan_decision {
    const char *customer_name; /* who the customer was; NULL when not given (link) */
    const char *note;          /* acceptance note or dispute reason; NULL when not given */
} dispatch_plan_decision_t;

/* The body of an accept or dispute. Through an agent (is_link 0): customer_name required,
 * note optional (accept) / reason required (dispute). Through the signed link: name
 * optional, note optional (accept) / reason required (dispute). */
int dispatch_validate_plan_decision(const json_t *body, dispatch_plan_action_t action, int is_link,
                                    dispatch_plan_decision_t *out, dispatch_verr_t *err) AC_WUR;

/* {"reason": "..."} (required); *reason borrowed from body. */
int dispatch_validate_plan_cancel(const json_t *body, const char **reason,
                                  dispatch_verr_t *err) AC_WUR;

/* {"valid_hours": 1..720} (optional, default 72). */
int dispatch_validate_plan_link(const json_t *body, long *valid_hours, dispatch_verr_t *err) AC_WUR;

/* --- the signed customer link -------------------------------------------------------- */

/* 1 when secret can sign links: at least DISPATCH_PLAN_SECRET_MIN_LEN bytes. */
int dispatch_plan_link_is_enabled(const char *secret);

/* Lowercase hex HMAC-SHA256, keyed with secret, of
 *   "aftercare.plan-link.v1\n<plan id, lowercase>\n<revision>\n<expires, unix seconds>"
 * into sig[DISPATCH_PLAN_SIG_HEXLEN + 1]. 0, or AC_ERR_INVALID (bad arguments). */
int dispatch_plan_link_sign(const char *secret, const char *plan_id, int revision,
                            int64_t expires_s, char *sig) AC_WUR;

typedef enum {
    DISPATCH_LINK_OK = 0,
    DISPATCH_LINK_INVALID, /* missing or malformed parts, or the signature does not match */
    DISPATCH_LINK_EXPIRED, /* genuine, but expires_s <= now_s */
} dispatch_link_check_t;

/* Checks a link's parts as they came in the URL (any may be NULL): plan_id (path), rev,
 * expires and sig (query). The signature is compared in constant time, and before the
 * expiry is looked at. *revision_out: the revision the link is for (when not INVALID). */
dispatch_link_check_t dispatch_plan_link_check(const char *secret, const char *plan_id,
                                               const char *rev, const char *expires,
                                               const char *sig, int64_t now_s, int *revision_out);

#endif
