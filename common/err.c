/* err.c — descriptions of AC_ERR_* codes. */
#include "ac_err.h"

const char *ac_strerror(int err)
{
    switch (err) {
    case AC_OK:
        return "success";
    case AC_ERR_NOMEM:
        return "out of memory";
    case AC_ERR_INVALID:
        return "invalid argument or input";
    case AC_ERR_NOTFOUND:
        return "not found";
    case AC_ERR_CONFLICT:
        return "conflict with current state";
    case AC_ERR_UNAVAILABLE:
        return "dependency unavailable";
    case AC_ERR_DB:
        return "database error";
    case AC_ERR_IO:
        return "I/O error";
    case AC_ERR_PROTO:
        return "malformed message";
    case AC_ERR_AGAIN:
        return "try again";
    case AC_ERR_TOOBIG:
        return "over a size limit";
    case AC_ERR_CONFIG:
        return "bad configuration";
    case AC_ERR_AUTH:
        return "authentication failed";
    default:
        return "unknown error";
    }
}
