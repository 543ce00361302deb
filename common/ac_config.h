/* ac_config.h — configuration from environment variables, described by a key table,
 * validated once at start-up. The filled struct is then passed down const. */
#ifndef AC_CONFIG_H
#define AC_CONFIG_H

#include <stddef.h>

#include "ac_err.h"

typedef enum {
    AC_CFG_STRING, /* char *: strdup'ed, freed by ac_config_free() */
    AC_CFG_INT,    /* long */
    AC_CFG_BOOL,   /* int: 1/0 from true/false/1/0/yes/no */
    AC_CFG_PORT,   /* int: 1..65535 */
    /* double, in seconds: a whole number with an optional unit, "90s", "15m", "12h", "30d"
     * (no unit: seconds); bounds min/max in seconds */
    AC_CFG_DURATION,
} ac_cfg_type_t;

typedef struct ac_cfg_key {
    const char *env; /* "AC_INTAKE_HTTP_PORT" */
    ac_cfg_type_t type;
    size_t offset;    /* offsetof(the config struct, field) */
    const char *def;  /* default as text; NULL means required */
    long min, max;    /* AC_CFG_INT/DURATION bounds (ignored when min == max == 0) */
    const char *help; /* one line, shown in errors */
} ac_cfg_key_t;

/* Fills *cfg from the environment. On the first bad or missing key, writes a message
 * naming the key to errbuf and returns AC_ERR_CONFIG. Table ends with env == NULL. */
int ac_config_load(void *cfg, const ac_cfg_key_t *table, char *errbuf, size_t errlen) AC_WUR;
/* "30d" -> 2592000 (see AC_CFG_DURATION). AC_ERR_INVALID when s is not a duration. */
int ac_config_parse_duration(const char *s, double *seconds_out) AC_WUR;
/* Frees the strings ac_config_load() allocated. */
void ac_config_free(void *cfg, const ac_cfg_key_t *table);

#endif
