/* Unit tests: config.c durations (AC_CFG_DURATION, ac_config_parse_duration()); the other
 * types are tested in test_time.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ac_config.h"

static void test_parse_duration(void **state)
{
    static const struct {
        const char *text;
        double seconds;
    } good[] = {
        {"0", 0},         {"90", 90},    {"90s", 90}, {"15m", 900},          {"12h", 43200},
        {"30d", 2592000}, {"1d", 86400}, {"007s", 7}, {"3650d", 315360000.},
    };
    static const char *const bad[] = {
        "",
        "d",
        "-1",
        "+5s",
        "1.5h",
        "10 s",
        " 10s",
        "10s ",
        "10S",
        "10w",
        "10ms",
        "1h30m",
        "99999999999999999999",
        "9223372036854775807d",
        "s10",
        "0x10",
    };
    double v;
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        v = -1;
        assert_int_equal(ac_config_parse_duration(good[i].text, &v), 0);
        assert_true(v == good[i].seconds);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = -1;
        assert_int_equal(ac_config_parse_duration(bad[i], &v), AC_ERR_INVALID);
        assert_true(v == -1); /* untouched on failure */
    }
    assert_int_equal(ac_config_parse_duration(NULL, &v), AC_ERR_INVALID);
}

typedef struct test_cfg {
    double retention_s;
    double grace_s;
} test_cfg_t;

static const ac_cfg_key_t test_keys[] = {
    {"ACT_RETENTION", AC_CFG_DURATION, offsetof(test_cfg_t, retention_s), "30d", 0, 0,
     "how long rows are kept"},
    {"ACT_GRACE", AC_CFG_DURATION, offsetof(test_cfg_t, grace_s), "5s", 1, 3600, "a grace"},
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

static void test_load_duration(void **state)
{
    test_cfg_t cfg = {0};
    char err[256];

    unsetenv("ACT_RETENTION");
    unsetenv("ACT_GRACE");
    assert_int_equal(ac_config_load(&cfg, test_keys, err, sizeof(err)), 0);
    assert_true(cfg.retention_s == 2592000.);
    assert_true(cfg.grace_s == 5.);

    setenv("ACT_RETENTION", "2s", 1);
    setenv("ACT_GRACE", "1h", 1);
    assert_int_equal(ac_config_load(&cfg, test_keys, err, sizeof(err)), 0);
    assert_true(cfg.retention_s == 2.);
    assert_true(cfg.grace_s == 3600.);

    setenv("ACT_RETENTION", "30 days", 1);
    assert_int_equal(ac_config_load(&cfg, test_keys, err, sizeof(err)), AC_ERR_CONFIG);
    assert_non_null(strstr(err, "ACT_RETENTION"));
    assert_non_null(strstr(err, "not a duration"));

    setenv("ACT_RETENTION", "1d", 1);
    setenv("ACT_GRACE", "2h", 1); /* above max = 3600 s */
    assert_int_equal(ac_config_load(&cfg, test_keys, err, sizeof(err)), AC_ERR_CONFIG);
    assert_non_null(strstr(err, "ACT_GRACE"));
    assert_non_null(strstr(err, "out of range"));
    setenv("ACT_GRACE", "0", 1); /* below min = 1 s */
    assert_int_equal(ac_config_load(&cfg, test_keys, err, sizeof(err)), AC_ERR_CONFIG);
    assert_non_null(strstr(err, "ACT_GRACE"));
    unsetenv("ACT_RETENTION");
    unsetenv("ACT_GRACE");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_load_duration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
