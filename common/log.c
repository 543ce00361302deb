/* log.c — line-oriented logging to stderr (text or JSON lines). Process-wide settings are
 * written once by ac_log_init() before the loop starts and only read afterwards. */
#include "ac_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ac_time.h"

static struct {
    char service[32];
    ac_log_level_t level;
    int is_json;
} log_settings = {"aftercare", AC_LOG_INFO, 0};

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void ac_log_init(const char *service, ac_log_level_t level, int is_json)
{
    snprintf(log_settings.service, sizeof(log_settings.service), "%s", service ? service : "");
    log_settings.level = level;
    log_settings.is_json = is_json;
}

int ac_log_level_parse(const char *s)
{
    for (size_t i = 0; i < AC_ARRAY_LEN(level_names); i++)
        if (s && strcmp(s, level_names[i]) == 0)
            return (int)i;
    return -1;
}

int ac_log_setup(const char *service, const char *level, const char *format, char *errbuf,
                 size_t errlen)
{
    int lvl = ac_log_level_parse(level);
    if (lvl < 0) {
        snprintf(errbuf, errlen, "AC_LOG_LEVEL=\"%s\" must be debug, info, warn or error",
                 level ? level : "");
        return AC_ERR_CONFIG;
    }
    if (!format || (strcmp(format, "text") != 0 && strcmp(format, "json") != 0)) {
        snprintf(errbuf, errlen, "AC_LOG_FORMAT=\"%s\" must be text or json", format ? format : "");
        return AC_ERR_CONFIG;
    }
    ac_log_init(service, (ac_log_level_t)lvl, strcmp(format, "json") == 0);
    return 0;
}

int ac_log_enabled(ac_log_level_t level)
{
    return level >= log_settings.level;
}

/* Appends s to out as a JSON string body (without quotes), escaping as needed. */
static size_t json_escape(char *out, size_t room, const char *s)
{
    size_t n = 0;
    for (; *s && n + 7 < room; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, room - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return n;
}

void ac_log_write(ac_log_level_t level, const char *ticket, const char *event_id, const char *fmt,
                  ...)
{
    char msg[2048];
    char ts[AC_TIME_STRLEN];
    char line[4608];
    va_list ap;
    int n;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ac_time_format_us(ac_time_now_us(), ts);

    if (log_settings.is_json) {
        char esc[2 * sizeof(msg)];
        json_escape(esc, sizeof(esc), msg);
        n = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"service\":\"%s\"", ts,
                     level_names[level], log_settings.service);
        if (ticket && n < (int)sizeof(line))
            n += snprintf(line + n, sizeof(line) - (size_t)n, ",\"ticket\":\"%s\"", ticket);
        if (event_id && n < (int)sizeof(line))
            n += snprintf(line + n, sizeof(line) - (size_t)n, ",\"event_id\":\"%s\"", event_id);
        if (n < (int)sizeof(line))
            n += snprintf(line + n, sizeof(line) - (size_t)n, ",\"msg\":\"%s\"}\n", esc);
    } else {
        n = snprintf(line, sizeof(line), "%s %-5s %s:", ts, level_names[level],
                     log_settings.service);
        if (ticket && n < (int)sizeof(line))
            n += snprintf(line + n, sizeof(line) - (size_t)n, " ticket=%s", ticket);
        if (event_id && n < (int)sizeof(line))
            n += snprintf(line + n, sizeof(line) - (size_t)n, " event=%s", event_id);
        if (n < (int)sizeof(line))
            n += snprintf(line + n, sizeof(line) - (size_t)n, " %s\n", msg);
    }
    if (n >= (int)sizeof(line)) {
        n = (int)sizeof(line) - 1;
        line[n - 1] = '\n';
    }
    /* one write(2) per line so lines from several processes never interleave */
    if (write(STDERR_FILENO, line, (size_t)n) < 0) {
        /* nowhere left to report it */
    }
}
