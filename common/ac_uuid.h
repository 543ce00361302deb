/* ac_uuid.h — random (v4) UUIDs as lowercase text, and validation of UUID text. */
#ifndef AC_UUID_H
#define AC_UUID_H

#define AC_UUID_STRLEN 37 /* 36 chars + NUL */

char *ac_uuid_new(char *buf);        /* buf[AC_UUID_STRLEN] */
int ac_uuid_is_valid(const char *s); /* 1 if s is canonical 8-4-4-4-12 hex */

#endif
