/* reqbody.h — the request rules of dispatch's table-driven routes (repairs.c, cases.c):
 * a body described by a table of fields — name, kind, required, bounds — is checked
 * (no unknown keys, required ones present, each value of its kind; a JSON null is an
 * absent field) and turned into the text parameters of one SQL statement.
 *
 * Pure: no I/O, so a refused request changes nothing. Owns nothing: the values point
 * into the body or into the caller's dispatch_body_values_t. */
#ifndef DISPATCH_REQBODY_H
#define DISPATCH_REQBODY_H

#include <jansson.h>

#include "ac_time.h"
#include "validate.h"

#define DISPATCH_BODY_MAX_FIELDS 8

typedef enum dispatch_field_kind {
    DISPATCH_F_TEXT,     /* a string of min..max characters, not only white space if min > 0 */
    DISPATCH_F_UUID,     /* an id */
    DISPATCH_F_TIME,     /* RFC 3339 with an offset; passed on as UTC */
    DISPATCH_F_RMA,      /* a vendor's RMA number: 3-40 of letters, digits, - _ / . */
    DISPATCH_F_TRACKING, /* a carrier's tracking number: 6-40 letters and digits */
    DISPATCH_F_INT,      /* an integer in min..max */
    DISPATCH_F_BOOL,     /* true or false */
    DISPATCH_F_ENUM,     /* one of values */
    DISPATCH_F_CONTACT,  /* {"name", "phone", "email"}, each optional; null removes it */
} dispatch_field_kind_t;

typedef struct dispatch_body_field {
    const char *name; /* NULL ends a table */
    dispatch_field_kind_t kind;
    int is_required;
    long min, max;             /* TEXT: characters; INT: values */
    const char *const *values; /* ENUM: NULL-terminated */
} dispatch_body_field_t;

/* The checked values, one per field in table order, as text parameters. */
typedef struct dispatch_body_values {
    const char *v[DISPATCH_BODY_MAX_FIELDS]; /* NULL: absent (SQL NULL); CONTACT: NULL */
    char buf[DISPATCH_BODY_MAX_FIELDS][AC_TIME_STRLEN + 24]; /* normalised times, numbers */
} dispatch_body_values_t;

/* 0 and out filled, or AC_ERR_INVALID and err (400 for a body that is no object, 422
 * naming the field otherwise). At most DISPATCH_BODY_MAX_FIELDS fields. */
int dispatch_check_body(const json_t *body, const dispatch_body_field_t *fields,
                        dispatch_body_values_t *out, dispatch_verr_t *err) AC_WUR;

#endif
