/* Unit tests: time.c (RFC 3339, dates, backoff), config.c, uuid.c, err.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ac_config.h"
#include "ac_log.h"
#include "ac_time.h"
#include "ac_uuid.h"

static void test_rfc3339_round_trip(void **state)
{
    int64_t us;
    char buf[AC_TIME_STRLEN];
    assert_int_equal(ac_time_parse_rfc3339("2026-11-22T10:00:00Z", &us), 0);
    assert_int_equal(us, INT64_C(1795341600) * 1000000);
    assert_string_equal(ac_time_format_us(us, buf), "2026-11-22T10:00:00.000000Z");
    assert_int_equal(ac_time_parse_rfc3339("2026-11-22T11:30:00.5+01:30", &us), 0);
    assert_string_equal(ac_time_format_us(us, buf), "2026-11-22T10:00:00.500000Z");
    assert_int_equal(ac_time_parse_rfc3339("1969-12-31T23:59:59.999999Z", &us), 0);
    assert_int_equal(us, -1);
    assert_string_equal(ac_time_format_us(us, buf), "1969-12-31T23:59:59.999999Z");
    assert_int_equal(ac_time_parse_rfc3339("0001-01-01T00:00:00-01:00", &us), 0);
    assert_string_equal(ac_time_format_us(us, buf), "0001-01-01T01:00:00.000000Z");
}

static void test_rfc3339_rejects(void **state)
{
    static const char *const bad[] = {
        "",
        "2026-11-22",
        "2026-11-22T10:00:00",  /* no zone */
        "2026-11-22 10:00:00Z", /* space */
        "2026-02-30T10:00:00Z", /* no such day */
        "2026-13-01T10:00:00Z",
        "2026-11-22T24:00:00Z",
        "2026-11-22T10:60:00Z",
        "2026-11-22T10:00:60Z",
        "2026-11-22T10:00:00.Z",
        "2026-11-22T10:00:00+25:00",
        "2026-11-22T10:00:00Zjunk",
        "yesterday",
        "0001-01-01T00:00:00+01:00", /* year 0 in UTC */
    };
    int64_t us;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(ac_time_parse_rfc3339(bad[i], &us), AC_ERR_INVALID);
}

static void test_dates(void **state)
{
    int32_t d;
    char buf[11];
    assert_int_equal(ac_date_parse("1970-01-01", &d), 0);
    assert_int_equal(d, 0);
    assert_int_equal(ac_date_parse("2024-02-29", &d), 0); /* leap year */
    assert_string_equal(ac_date_format(d, buf), "2024-02-29");
    assert_int_equal(ac_date_parse("2023-02-29", &d), AC_ERR_INVALID);
    assert_int_equal(ac_date_parse("1900-02-29", &d), AC_ERR_INVALID);
    assert_int_equal(ac_date_parse("2000-02-29", &d), 0);
    assert_int_equal(ac_date_parse("2025-3-01", &d), AC_ERR_INVALID);
    assert_int_equal(ac_date_parse("2025-03-01x", &d), AC_ERR_INVALID);
}

static void test_backoff(void **state)
{
    ac_backoff_t b;
    ac_backoff_init(&b, 0.1, 1.0);
    double first = ac_backoff_next(&b);
    assert_true(first >= 0.08 && first <= 0.12);
    for (int i = 0; i < 10; i++)
        assert_true(ac_backoff_next(&b) <= 1.2);
    ac_backoff_reset(&b);
    assert_true(ac_backoff_next(&b) <= 0.12);
}

typedef struct test_cfg {
    char *name;
    long count;
    int port;
    int flag;
} test_cfg_t;

static const ac_cfg_key_t test_keys[] = {
    {"ACT_NAME", AC_CFG_STRING, offsetof(test_cfg_t, name), "dflt", 0, 0, "a name"},
    {"ACT_COUNT", AC_CFG_INT, offsetof(test_cfg_t, count), "4", 1, 10, "a count"},
    {"ACT_PORT", AC_CFG_PORT, offsetof(test_cfg_t, port), "8081", 0, 0, "a port"},
    {"ACT_FLAG", AC_CFG_BOOL, offsetof(test_cfg_t, flag), "false", 0, 0, "a flag"},
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

static void test_config(void **state)
{
    test_cfg_t cfg = {0};
    char err[256];
    unsetenv("ACT_NAME");
    setenv("ACT_COUNT", "7", 1);
    setenv("ACT_PORT", "9000", 1);
    setenv("ACT_FLAG", "yes", 1);
    assert_int_equal(ac_config_load(&cfg, test_keys, err, sizeof(err)), 0);
    assert_string_equal(cfg.name, "dflt");
    assert_int_equal(cfg.count, 7);
    assert_int_equal(cfg.port, 9000);
    assert_int_equal(cfg.flag, 1);
    ac_config_free(&cfg, test_keys);

    setenv("ACT_COUNT", "11", 1);
    assert_int_equal(ac_config_load(&cfg, test_keys, err, sizeof(err)), AC_ERR_CONFIG);
    assert_non_null(strstr(err, "ACT_COUNT"));
    ac_config_free(&cfg, test_keys);
    setenv("ACT_COUNT", "3", 1);
    setenv("ACT_PORT", "http", 1);
    assert_int_equal(ac_config_load(&cfg, test_keys, err, sizeof(err)), AC_ERR_CONFIG);
    assert_non_null(strstr(err, "ACT_PORT"));
    ac_config_free(&cfg, test_keys);
    setenv("ACT_PORT", "70000", 1);
    assert_int_equal(ac_config_load(&cfg, test_keys, err, sizeof(err)), AC_ERR_CONFIG);
    ac_config_free(&cfg, test_keys);
    setenv("ACT_PORT", "1", 1);
    setenv("ACT_FLAG", "maybe", 1);
    assert_int_equal(ac_config_load(&cfg, test_keys, err, sizeof(err)), AC_ERR_CONFIG);
    assert_non_null(strstr(err, "ACT_FLAG"));
    ac_config_free(&cfg, test_keys);
}

static void test_log_setup(void **state)
{
    char err[128];
    assert_int_equal(ac_log_setup("t", "loud", "text", err, sizeof(err)), AC_ERR_CONFIG);
    assert_non_null(strstr(err, "AC_LOG_LEVEL"));
    assert_int_equal(ac_log_setup("t", "info", "yaml", err, sizeof(err)), AC_ERR_CONFIG);
    assert_non_null(strstr(err, "AC_LOG_FORMAT"));
    assert_int_equal(ac_log_setup("t", "warn", "json", err, sizeof(err)), 0);
    assert_false(ac_log_enabled(AC_LOG_INFO));
    assert_true(ac_log_enabled(AC_LOG_ERROR));
}

static void test_uuid(void **state)
{
    char a[AC_UUID_STRLEN], b[AC_UUID_STRLEN];
    ac_uuid_new(a);
    ac_uuid_new(b);
    assert_true(ac_uuid_is_valid(a));
    assert_string_not_equal(a, b);
    assert_false(ac_uuid_is_valid("not-a-uuid"));
    assert_false(ac_uuid_is_valid("0000000000000000000000000000000000000"));
    assert_false(ac_uuid_is_valid("123e4567-e89b-12d3-a456-4266141740000"));
    assert_true(ac_uuid_is_valid("123e4567-e89b-12d3-a456-426614174000"));
    assert_false(ac_uuid_is_valid(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc3339_round_trip),
        cmocka_unit_test(test_rfc3339_rejects),
        cmocka_unit_test(test_dates),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_uuid),
        cmocka_unit_test(test_log_setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
