/* validate.h — dispatch's pure input rules for engineers: enums, field forms, the shift
 * calendar (calendar.h) and the query string of the engineer list.
 *
 * Nothing here touches the database, the network or the clock, so a rejected request
 * changes nothing. Lengths are counted in Unicode characters (jansson has already
 * rejected invalid UTF-8 and NUL bytes).
 *
 * Owns: nothing beyond the normalised JSON it hands back (the caller decrefs it). */
#ifndef DISPATCH_VALIDATE_H
#define DISPATCH_VALIDATE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "ac_err.h"

/* Enum values equal the proto enum numbers (proto/aftercare/v1/dispatch.proto); [0] is
 * NULL. */
extern const char *const dispatch_role_names[6];
extern const char *const dispatch_availability_names[4];
/* Value of name s in names[0..n) (1..n-1), or 0 when s is NULL or unknown. */
int dispatch_enum_parse(const char *const *names, size_t n, const char *s);

/* Why input was refused: an HTTP status, an error code, the culprit's path. */
typedef struct dispatch_verr {
    int status;        /* 400, 409 or 422 */
    char code[32];     /* "missing_field", "invalid_field", "unknown_field" */
    char field[64];    /* dotted path, "" for the body */
    char message[256]; /* a sentence naming the offending value */
} dispatch_verr_t;

/* Fills *err; returns AC_ERR_INVALID (so that a check can `return dispatch_verr(...)`). */
__attribute__((format(printf, 5, 6))) int dispatch_verr(dispatch_verr_t *err, int status,
                                                        const char *code, const char *field,
                                                        const char *fmt, ...);

/* Small forms shared by every module's input rules. */
size_t dispatch_utf8_len(const char *s);    /* characters of valid UTF-8 */
int dispatch_is_blank(const char *s);       /* only white space (or empty) */
int dispatch_phone_is_valid(const char *s); /* 7-20 of digits, spaces, - ( ), a leading + */
int dispatch_email_is_valid(const char *s); /* local@domain.tld, no spaces */

/* The editable fields of an engineer, all of them (a create, or a PATCH merged into the
 * current engineer): name, role, skills, regions, capacity, availability, contact, shift.
 * On success *out is the normalised document (defaults filled: skills [], regions [],
 * availability "available"). tzdir: zoneinfo directory, NULL for the system's. */
int dispatch_validate_engineer(const json_t *body, const char *tzdir, json_t **out,
                               dispatch_verr_t *err) AC_WUR;

/* A PATCH body: expected_version (optional, >= 1; 0 when absent) plus any editable
 * fields. *fields_out: a new object holding the editable fields given (checked when
 * merged: dispatch_engineer_merge() then dispatch_validate_engineer()). */
int dispatch_validate_engineer_patch(const json_t *body, int64_t *expected_version,
                                     json_t **fields_out, dispatch_verr_t *err) AC_WUR;

/* The editable fields of the current engineer document `doc` with `fields` laid over
 * them (contact merged key by key, a null contact part removes it). NULL when out of
 * memory. */
json_t *dispatch_engineer_merge(const json_t *doc, const json_t *fields);

/* The names of the editable fields whose values differ between a and b (editable views),
 * into changed[] (room for 8). */
size_t dispatch_engineer_changed(const json_t *a, const json_t *b, const char **changed);

typedef const char *(*dispatch_query_fn)(void *arg, const char *name);
typedef struct dispatch_list_in {
    const char *role, *region, *skill, *availability; /* borrowed from the query */
    int64_t cursor;
    long limit;
} dispatch_list_in_t;
int dispatch_validate_engineer_filter(dispatch_query_fn query, void *arg, dispatch_list_in_t *out,
                                      dispatch_verr_t *err) AC_WUR;

#endif
