/* Unit tests: CURVE key files (common/bus.c): a written pair loads back; every way a key
 * file can be wrong (missing, readable by others, garbage, no secret, a public key of
 * another pair, a bad server key) is refused with a message naming the file; Z85 checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "ac_bus.h"

typedef struct fixture {
    char dir[64];
    char path[128];
    ac_curve_t pair;  /* a fresh pair */
    ac_curve_t other; /* another one */
    char err[512];
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/ac-test-curve-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/k.key", f->dir);
    assert_int_equal(ac_curve_keypair(f->pair.public_key, f->pair.secret_key), 0);
    assert_int_equal(ac_curve_keypair(f->other.public_key, f->other.secret_key), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    ac_bus_shutdown();
    return 0;
}

/* Writes text to f->path with mode. */
static void write_file(fixture_t *f, const char *text, mode_t mode)
{
    unlink(f->path);
    FILE *out = fopen(f->path, "w");
    assert_non_null(out);
    fputs(text, out);
    fclose(out);
    assert_int_equal(chmod(f->path, mode), 0);
}

static int load(fixture_t *f, const char *server_key, ac_curve_t *out)
{
    f->err[0] = '\0';
    return ac_curve_load(f->path, server_key, out, f->err, sizeof(f->err));
}

static void test_write_then_load(void **state)
{
    fixture_t *f = *state;
    ac_curve_t got;
    struct stat st;
    assert_int_equal(ac_curve_write(f->path, &f->pair, "unit test", f->err, sizeof(f->err)), 0);
    assert_int_equal(stat(f->path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(load(f, f->other.public_key, &got), 0);
    assert_string_equal(got.public_key, f->pair.public_key);
    assert_string_equal(got.secret_key, f->pair.secret_key);
    assert_string_equal(got.server_key, f->other.public_key);
    /* no server key: a server's own file */
    assert_int_equal(load(f, NULL, &got), 0);
    assert_string_equal(got.server_key, "");
    /* never over an existing file */
    assert_int_equal(ac_curve_write(f->path, &f->other, NULL, f->err, sizeof(f->err)), AC_ERR_IO);
    assert_non_null(strstr(f->err, f->path));
    assert_int_equal(load(f, NULL, &got), 0);
    assert_string_equal(got.public_key, f->pair.public_key);
}

static void test_syntax_is_lenient_where_harmless(void **state)
{
    fixture_t *f = *state;
    char text[512];
    ac_curve_t got;
    /* comments, blank lines, spaces and tabs around '=', CRLF; public-key may be absent */
    snprintf(text, sizeof(text), "# a comment\n\n  secret-key\t=  %s\r\n", f->pair.secret_key);
    write_file(f, text, 0600);
    assert_int_equal(load(f, NULL, &got), 0);
    assert_string_equal(got.public_key, f->pair.public_key); /* derived from the secret */
    assert_string_equal(got.secret_key, f->pair.secret_key);
}

static void test_bad_files_are_refused(void **state)
{
    fixture_t *f = *state;
    char text[512];
    ac_curve_t got;

    /* missing */
    assert_int_equal(load(f, NULL, &got), AC_ERR_IO);
    assert_non_null(strstr(f->err, f->path));
    /* no file name at all */
    assert_int_equal(ac_curve_load(NULL, NULL, &got, f->err, sizeof(f->err)), AC_ERR_CONFIG);
    assert_int_equal(ac_curve_load("", NULL, &got, f->err, sizeof(f->err)), AC_ERR_CONFIG);

    /* readable by group or others, like an ssh key */
    snprintf(text, sizeof(text), "public-key = %s\nsecret-key = %s\n", f->pair.public_key,
             f->pair.secret_key);
    write_file(f, text, 0644);
    assert_int_equal(load(f, NULL, &got), AC_ERR_CONFIG);
    assert_non_null(strstr(f->err, "readable by others"));
    write_file(f, text, 0640);
    assert_int_equal(load(f, NULL, &got), AC_ERR_CONFIG);

    /* a line that is neither key, with its number */
    snprintf(text, sizeof(text), "public-key = %s\nsecret = %s\n", f->pair.public_key,
             f->pair.secret_key);
    write_file(f, text, 0600);
    assert_int_equal(load(f, NULL, &got), AC_ERR_CONFIG);
    assert_non_null(strstr(f->err, "line 2"));
    assert_non_null(strstr(f->err, f->path));

    /* a key of the wrong length */
    write_file(f, "secret-key = abc\n", 0600);
    assert_int_equal(load(f, NULL, &got), AC_ERR_CONFIG);

    /* no secret key */
    snprintf(text, sizeof(text), "public-key = %s\n", f->pair.public_key);
    write_file(f, text, 0600);
    assert_int_equal(load(f, NULL, &got), AC_ERR_CONFIG);
    assert_non_null(strstr(f->err, "secret-key"));

    /* 40 characters that are not Z85 */
    write_file(f,
               "secret-key = "
               "\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\n",
               0600);
    assert_int_equal(load(f, NULL, &got), AC_ERR_CONFIG);

    /* the public key of another pair */
    snprintf(text, sizeof(text), "public-key = %s\nsecret-key = %s\n", f->other.public_key,
             f->pair.secret_key);
    write_file(f, text, 0600);
    assert_int_equal(load(f, NULL, &got), AC_ERR_CONFIG);
    assert_non_null(strstr(f->err, "does not belong"));

    /* a good file, but a bad server key */
    snprintf(text, sizeof(text), "secret-key = %s\n", f->pair.secret_key);
    write_file(f, text, 0600);
    assert_int_equal(load(f, "not-a-key", &got), AC_ERR_CONFIG);
    assert_non_null(strstr(f->err, "AC_BUS_SERVER_KEY"));
}

static void test_z85(void **state)
{
    fixture_t *f = *state;
    uint8_t zeros[32] = {0};
    char text[AC_KEY_Z85_LEN + 1];
    char bad[AC_KEY_Z85_LEN + 2];

    assert_true(ac_curve_key_is_valid(f->pair.public_key));
    assert_false(ac_curve_key_is_valid(NULL));
    assert_false(ac_curve_key_is_valid(""));
    memcpy(bad, f->pair.public_key, AC_KEY_Z85_LEN + 1);
    bad[AC_KEY_Z85_LEN - 1] = '\0';
    assert_false(ac_curve_key_is_valid(bad)); /* 39 characters */
    memcpy(bad, f->pair.public_key, AC_KEY_Z85_LEN);
    bad[AC_KEY_Z85_LEN] = 'x';
    bad[AC_KEY_Z85_LEN + 1] = '\0';
    assert_false(ac_curve_key_is_valid(bad)); /* 41 */
    memcpy(bad, f->pair.public_key, AC_KEY_Z85_LEN + 1);
    bad[7] = '~'; /* not in the Z85 alphabet */
    assert_false(ac_curve_key_is_valid(bad));

    assert_int_equal(ac_curve_key_to_z85(zeros, sizeof(zeros), text), 0);
    assert_string_equal(text, "0000000000000000000000000000000000000000");
    assert_true(ac_curve_key_is_valid(text));
    assert_int_equal(ac_curve_key_to_z85(zeros, 31, text), AC_ERR_INVALID);
    assert_string_equal(text, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write_then_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_syntax_is_lenient_where_harmless, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_files_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_z85, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
