/* validate.h — intake's pure input rules: enums, field forms, the priority rule, the
 * status transition table and the validation of every request body / query string.
 *
 * Nothing here touches the database, the network or the clock (callers pass "now"), so
 * all of it is unit-tested (tests/unit/test_intake_validate.c). Validation runs before
 * any database work, so a rejected request changes nothing.
 *
 * Lengths are counted in Unicode characters (code points); jansson has already rejected
 * invalid UTF-8 and NUL bytes when it parsed the body.
 *
 * Owns: nothing beyond the normalised JSON it hands back in *_in_t structs (see each
 * *_clear() function). Strings in *_in_t are borrowed from the request body. */
#ifndef INTAKE_VALIDATE_H
#define INTAKE_VALIDATE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ac_err.h"

/* Enum values equal the proto enum numbers (proto/aftercare/v1/ticket.proto); 0 means
 * "not set / unknown". The name tables below are indexed by these values. */
enum intake_channel {
    INTAKE_CH_PHONE = 1,
    INTAKE_CH_WEB,
    INTAKE_CH_EMAIL,
    INTAKE_CH_PARTNER,
    INTAKE_CH_MONITORING,
    INTAKE_CH_API,
    INTAKE_CH__COUNT
};
enum intake_category {
    INTAKE_CAT_FAULT_REPAIR = 1,
    INTAKE_CAT_CONSULTATION,
    INTAKE_CAT_MAINTENANCE,
    INTAKE_CAT_TRAINING,
    INTAKE_CAT_COMPLAINT,
    INTAKE_CAT__COUNT
};
enum intake_urgency {
    INTAKE_URG_NORMAL = 1,
    INTAKE_URG_URGENT,
    INTAKE_URG_CRITICAL,
    INTAKE_URG__COUNT
};
enum intake_priority { INTAKE_P1 = 1, INTAKE_P2, INTAKE_P3, INTAKE_P4, INTAKE_P__COUNT };
enum intake_tier { INTAKE_TIER_STANDARD = 1, INTAKE_TIER_VIP, INTAKE_TIER__COUNT };
enum intake_status {
    INTAKE_ST_NEW = 1,
    INTAKE_ST_NEEDS_INFO,
    INTAKE_ST_DIAGNOSING,
    INTAKE_ST_PLANNED,
    INTAKE_ST_IN_PROGRESS,
    INTAKE_ST_WAITING_CUSTOMER,
    INTAKE_ST_WAITING_PARTS,
    INTAKE_ST_WAITING_EXTERNAL,
    INTAKE_ST_RESOLVED,
    INTAKE_ST_CLOSED,
    INTAKE_ST_REOPENED,
    INTAKE_ST_CANCELLED,
    INTAKE_ST__COUNT
};

/* Name tables: [0] is NULL, [v] the API name of value v. */
extern const char *const intake_channel_names[INTAKE_CH__COUNT];
extern const char *const intake_category_names[INTAKE_CAT__COUNT];
extern const char *const intake_urgency_names[INTAKE_URG__COUNT];
extern const char *const intake_priority_names[INTAKE_P__COUNT];
extern const char *const intake_tier_names[INTAKE_TIER__COUNT];
extern const char *const intake_status_names[INTAKE_ST__COUNT];

/* Value of name s in table names[0..n) (1..n-1), or 0 when s is NULL or unknown. */
int intake_enum_parse(const char *const *names, size_t n, const char *s);
#define INTAKE_ENUM_PARSE(table, s) intake_enum_parse((table), AC_ARRAY_LEN(table), (s))
/* Name of value v, or NULL when out of range. */
const char *intake_enum_name(const char *const *names, size_t n, int v);
#define INTAKE_ENUM_NAME(table, v) intake_enum_name((table), AC_ARRAY_LEN(table), (v))

/* --- field forms ------------------------------------------------------------------- */
size_t intake_utf8_len(const char *s);    /* code points of a valid UTF-8 string */
int intake_phone_is_valid(const char *s); /* "+" optional, digits/space/-/(/), 7..20, >= 7 digits */
int intake_email_is_valid(const char *s); /* local@domain.tld, no spaces, <= 254 */
int intake_idem_key_is_valid(const char *s);              /* 1..200 printable ASCII */
int intake_cursor_parse(const char *s, int64_t *seq_out); /* positive decimal; 0 or -1 */

/* --- business rules ---------------------------------------------------------------- */
/* critical -> P1, urgent -> P2, normal -> P3 (P4 for consultation/training); then VIP one
 * level up and expedite one more, never above P1. Returns INTAKE_P1..INTAKE_P4. */
int intake_priority(int urgency, int category, int is_vip, int is_expedite);
/* 1 when the move from -> to is in the transition table of docs/api.md. */
int intake_transition_allowed(int from, int to);
/* 1 when category needs a product (fault_repair, maintenance). */
int intake_category_needs_product(int category);

/* --- validation errors ------------------------------------------------------------- */
typedef struct intake_verr {
    int status;        /* HTTP status: 400 or 422 */
    const char *code;  /* "missing_field", "invalid_field", "unknown_field", ... */
    char field[128];   /* dotted path of the culprit ("contact.email"), "" when none */
    char message[256]; /* human-readable */
} intake_verr_t;

/* --- request bodies ---------------------------------------------------------------- */
typedef struct intake_customer_in {
    const char *kind; /* "person" | "company" */
    const char *name;
    const char *tier;  /* "standard" (default) | "vip" */
    const char *phone; /* NULL when absent */
    const char *email; /* NULL when absent */
    json_t *contacts;  /* owned: normalised array (possibly empty) */
} intake_customer_in_t;
int intake_validate_customer(json_t *body, intake_customer_in_t *out, intake_verr_t *err);
void intake_customer_in_clear(intake_customer_in_t *in);

typedef struct intake_product_in {
    const char *customer_id;
    const char *model;
    const char *serial_number;
    const char *purchase_date; /* YYYY-MM-DD */
    const char *install_site;  /* NULL when absent */
    const char *region;
} intake_product_in_t;
/* today_days: today's UTC date as days since 1970-01-01. */
int intake_validate_product(json_t *body, int32_t today_days, intake_product_in_t *out,
                            intake_verr_t *err);

typedef struct intake_policy_in {
    const char *model;       /* from the path */
    long months;             /* 1..240 */
    const char *description; /* "" when absent */
} intake_policy_in_t;
int intake_validate_policy(const char *model, json_t *body, intake_policy_in_t *out,
                           intake_verr_t *err);

typedef struct intake_ticket_in {
    int channel, category, urgency; /* enum values */
    int is_expedite;
    const char *customer_id;
    const char *product_id; /* NULL when absent */
    const char *description;
    int has_occurred_at;
    int64_t occurred_at_us; /* when has_occurred_at */
    json_t *contact;        /* owned: normalised {name?, phone?, email?}, NULL when absent */
    json_t *attachments;    /* owned: normalised array of {name, url, content_type} */
} intake_ticket_in_t;
/* now_us: the current wall-clock time (occurred_at may be at most 5 minutes ahead). */
int intake_validate_ticket(json_t *body, int64_t now_us, intake_ticket_in_t *out,
                           intake_verr_t *err);
void intake_ticket_in_clear(intake_ticket_in_t *in);

enum {
    INTAKE_PATCH_DESCRIPTION = 1 << 0,
    INTAKE_PATCH_CATEGORY = 1 << 1,
    INTAKE_PATCH_URGENCY = 1 << 2,
    INTAKE_PATCH_EXPEDITE = 1 << 3,
    INTAKE_PATCH_CONTACT = 1 << 4,
};
typedef struct intake_patch_in {
    unsigned present; /* INTAKE_PATCH_* bits of the fields given */
    const char *description;
    int category, urgency, is_expedite;
    json_t *contact;          /* owned: normalised, when INTAKE_PATCH_CONTACT */
    int64_t expected_version; /* 0 when absent */
} intake_patch_in_t;
int intake_validate_patch(json_t *body, intake_patch_in_t *out, intake_verr_t *err);
void intake_patch_in_clear(intake_patch_in_t *in);

typedef struct intake_transition_in {
    int to;                   /* enum intake_status */
    const char *reason;       /* "" when absent */
    int64_t expected_version; /* 0 when absent */
} intake_transition_in_t;
int intake_validate_transition(json_t *body, intake_transition_in_t *out, intake_verr_t *err);

/* --- query strings ----------------------------------------------------------------- */
/* Looks up a query parameter (NULL when absent); lets tests run without HTTP. */
typedef const char *(*intake_query_fn)(void *arg, const char *name);

typedef struct intake_page_in {
    long limit;     /* 1..200, default 50 */
    int64_t cursor; /* 0 when absent: the first page */
} intake_page_in_t;

typedef struct intake_ticket_filter {
    intake_page_in_t page;
    const char *status, *priority, *category, *customer_id; /* NULL when absent */
    char created_from[32], created_to[32]; /* normalised RFC 3339 UTC, "" when absent */
} intake_ticket_filter_t;
int intake_validate_ticket_filter(intake_query_fn query, void *arg, intake_ticket_filter_t *out,
                                  intake_verr_t *err);

typedef struct intake_list_filter {
    intake_page_in_t page;
    const char *tier;        /* customers: NULL when absent */
    const char *customer_id; /* products: NULL when absent */
} intake_list_filter_t;
int intake_validate_customer_filter(intake_query_fn query, void *arg, intake_list_filter_t *out,
                                    intake_verr_t *err);
int intake_validate_product_filter(intake_query_fn query, void *arg, intake_list_filter_t *out,
                                   intake_verr_t *err);

#endif
