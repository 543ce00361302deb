/* uuid.c — v4 UUIDs via libuuid. */
#include "ac_uuid.h"

#include <ctype.h>
#include <uuid/uuid.h>

char *ac_uuid_new(char *buf)
{
    uuid_t u;
    uuid_generate_random(u);
    uuid_unparse_lower(u, buf);
    return buf;
}

int ac_uuid_is_valid(const char *s)
{
    if (!s)
        return 0;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!isxdigit((unsigned char)s[i])) {
            return 0;
        }
    }
    return s[36] == '\0';
}
