/* config.c — environment variables described by a key table, validated once. */
#include "ac_config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int parse_long(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < AC_ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

int ac_config_parse_duration(const char *s, double *seconds_out)
{
    static const struct {
        char unit;
        long seconds;
    } units[] = {{'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}};
    long per = 1;
    long n = 0;
    size_t i = 0;

    if (!s || !(s[0] >= '0' && s[0] <= '9'))
        return AC_ERR_INVALID;
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        if (n > (LONG_MAX - 9) / 10)
            return AC_ERR_INVALID;
        n = n * 10 + (s[i] - '0');
    }
    if (s[i] != '\0') {
        per = 0;
        for (size_t u = 0; u < AC_ARRAY_LEN(units); u++)
            if (s[i] == units[u].unit && s[i + 1] == '\0')
                per = units[u].seconds;
        if (per == 0)
            return AC_ERR_INVALID;
    }
    if (n > LONG_MAX / per)
        return AC_ERR_INVALID;
    *seconds_out = (double)(n * per);
    return 0;
}

int ac_config_load(void *cfg, const ac_cfg_key_t *table, char *errbuf, size_t errlen)
{
    for (const ac_cfg_key_t *k = table; k->env; k++) {
        const char *v = getenv(k->env);
        char *field = (char *)cfg + k->offset;
        if (!v || !*v)
            v = k->def;
        if (!v) {
            snprintf(errbuf, errlen, "%s is required (%s)", k->env, k->help ? k->help : "");
            return AC_ERR_CONFIG;
        }
        switch (k->type) {
        case AC_CFG_STRING: {
            char *copy = strdup(v);
            if (!copy) {
                snprintf(errbuf, errlen, "%s: out of memory", k->env);
                return AC_ERR_CONFIG;
            }
            memcpy(field, &copy, sizeof(copy));
            break;
        }
        case AC_CFG_INT:
        case AC_CFG_PORT: {
            long n;
            long lo = k->type == AC_CFG_PORT ? 1 : k->min;
            long hi = k->type == AC_CFG_PORT ? 65535 : k->max;
            if (parse_long(v, &n)) {
                snprintf(errbuf, errlen, "%s=\"%s\" is not an integer (%s)", k->env, v,
                         k->help ? k->help : "");
                return AC_ERR_CONFIG;
            }
            if ((lo != 0 || hi != 0) && (n < lo || n > hi)) {
                snprintf(errbuf, errlen, "%s=%ld is out of range %ld..%ld (%s)", k->env, n, lo, hi,
                         k->help ? k->help : "");
                return AC_ERR_CONFIG;
            }
            if (k->type == AC_CFG_PORT) {
                int port = (int)n;
                memcpy(field, &port, sizeof(port));
            } else {
                memcpy(field, &n, sizeof(n));
            }
            break;
        }
        case AC_CFG_DURATION: {
            double secs;
            if (ac_config_parse_duration(v, &secs) != 0) {
                snprintf(errbuf, errlen,
                         "%s=\"%s\" is not a duration (a whole number and s, m, h or d, e.g. "
                         "\"30d\") (%s)",
                         k->env, v, k->help ? k->help : "");
                return AC_ERR_CONFIG;
            }
            if ((k->min != 0 || k->max != 0) && (secs < (double)k->min || secs > (double)k->max)) {
                snprintf(errbuf, errlen, "%s=%s is out of range %lds..%lds (%s)", k->env, v, k->min,
                         k->max, k->help ? k->help : "");
                return AC_ERR_CONFIG;
            }
            memcpy(field, &secs, sizeof(secs));
            break;
        }
        case AC_CFG_BOOL: {
            int b;
            if (parse_bool(v, &b)) {
                snprintf(errbuf, errlen, "%s=\"%s\" is not a boolean (true/false)", k->env, v);
                return AC_ERR_CONFIG;
            }
            memcpy(field, &b, sizeof(b));
            break;
        }
        }
    }
    return 0;
}

void ac_config_free(void *cfg, const ac_cfg_key_t *table)
{
    for (const ac_cfg_key_t *k = table; k->env; k++) {
        if (k->type == AC_CFG_STRING) {
            char *p;
            memcpy(&p, (char *)cfg + k->offset, sizeof(p));
            free(p);
            p = NULL;
            memcpy((char *)cfg + k->offset, &p, sizeof(p));
        }
    }
}
