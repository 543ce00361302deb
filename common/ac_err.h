/* ac_err.h — error codes, ac_strerror(), and the small macros every module uses.
 * Functions return 0 or a negative AC_ERR_*; constructors return NULL (and log why). */
#ifndef AC_ERR_H
#define AC_ERR_H

#include <stddef.h>

#define AC_WUR              __attribute__((warn_unused_result))
#define AC_PRINTF(fmt, arg) __attribute__((format(printf, fmt, arg)))

/* Recover the owning struct from a pointer to one of its members (e.g. a watcher). */
#define ac_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

#define AC_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

enum {
    AC_OK = 0,
    AC_ERR_NOMEM = -1,       /* allocation failed */
    AC_ERR_INVALID = -2,     /* bad argument or input */
    AC_ERR_NOTFOUND = -3,    /* no such thing */
    AC_ERR_CONFLICT = -4,    /* state does not allow it */
    AC_ERR_UNAVAILABLE = -5, /* a dependency (database, bus) is down; retry later */
    AC_ERR_DB = -6,          /* the database reported an error */
    AC_ERR_IO = -7,          /* socket / file error (see errno in the log) */
    AC_ERR_PROTO = -8,       /* malformed message on the wire */
    AC_ERR_AGAIN = -9,       /* would block; try again when ready */
    AC_ERR_TOOBIG = -10,     /* over a size limit */
    AC_ERR_CONFIG = -11,     /* bad configuration */
    AC_ERR_AUTH = -12,       /* authentication / authorisation failed */
};

/* Static description of an AC_ERR_* code ("unknown error" for anything else). */
const char *ac_strerror(int err);

#endif
