/* ac_log.h — one line per event on stderr, text or JSON lines (AC_LOG_FORMAT=json).
 * Lines below the configured level are skipped before any formatting. A line carries
 * the ticket number and event id when the caller has them (NULL otherwise). */
#ifndef AC_LOG_H
#define AC_LOG_H

#include "ac_err.h"

typedef enum { AC_LOG_DEBUG = 0, AC_LOG_INFO, AC_LOG_WARN, AC_LOG_ERROR } ac_log_level_t;

/* Set once at start-up (before the loop runs). name: service name in every line. */
void ac_log_init(const char *service, ac_log_level_t level, int is_json);
/* "debug|info|warn|error" -> level; -1 if unknown. */
int ac_log_level_parse(const char *s);
int ac_log_enabled(ac_log_level_t level);
/* ac_log_init() from the AC_LOG_LEVEL / AC_LOG_FORMAT texts every daemon reads. On a bad
 * value writes a message naming the variable to errbuf and returns AC_ERR_CONFIG. */
int ac_log_setup(const char *service, const char *level, const char *format, char *errbuf,
                 size_t errlen) AC_WUR;

void ac_log_write(ac_log_level_t level, const char *ticket, const char *event_id, const char *fmt,
                  ...) AC_PRINTF(4, 5);

#define ac_log_at(lvl, ticket, event, ...)                                                         \
    do {                                                                                           \
        if (ac_log_enabled(lvl))                                                                   \
            ac_log_write(lvl, ticket, event, __VA_ARGS__);                                         \
    } while (0)
#define ac_debug(...) ac_log_at(AC_LOG_DEBUG, NULL, NULL, __VA_ARGS__)
#define ac_info(...)  ac_log_at(AC_LOG_INFO, NULL, NULL, __VA_ARGS__)
#define ac_warn(...)  ac_log_at(AC_LOG_WARN, NULL, NULL, __VA_ARGS__)
#define ac_error(...) ac_log_at(AC_LOG_ERROR, NULL, NULL, __VA_ARGS__)

#endif
