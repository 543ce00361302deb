/* test_metrics.c — the Prometheus registry: exact exposition text for counters, gauges and
 * histograms, label handling, declaration rules and render hooks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ac_metrics.h"

static void assert_render(ac_metrics_t *m, const char *expected)
{
    char *text = ac_metrics_render(m);
    assert_non_null(text);
    assert_string_equal(text, expected);
    free(text);
}

static void test_empty_registry_renders_nothing(void **state)
{
    ac_metrics_t *m = ac_metrics_new("aftercare_test");
    assert_non_null(m);
    assert_render(m, "");
    ac_metrics_destroy(&m);
    assert_null(m);
    ac_metrics_destroy(&m); /* safe on NULL */
}

static void test_counter_with_and_without_labels(void **state)
{
    ac_metrics_t *m = ac_metrics_new("aftercare_test");
    assert_int_equal(ac_metrics_declare(m, "jobs_total", AC_METRIC_COUNTER, "Jobs done"), 0);
    ac_metrics_add(m, "jobs_total", "kind=\"b\"", 2);
    ac_metrics_add(m, "jobs_total", NULL, 1);
    ac_metrics_add(m, "jobs_total", "kind=\"a\"", 1);
    ac_metrics_add(m, "jobs_total", "kind=\"b\"", 3);
    assert_render(m, "# HELP aftercare_test_jobs_total Jobs done\n"
                     "# TYPE aftercare_test_jobs_total counter\n"
                     "aftercare_test_jobs_total 1\n"
                     "aftercare_test_jobs_total{kind=\"a\"} 1\n"
                     "aftercare_test_jobs_total{kind=\"b\"} 5\n");
    ac_metrics_destroy(&m);
}

static void test_counter_set_to_a_kept_count(void **state)
{
    ac_metrics_t *m = ac_metrics_new("q");
    assert_int_equal(ac_metrics_declare(m, "sent_total", AC_METRIC_COUNTER, "Sent"), 0);
    ac_metrics_set_counter(m, "sent_total", "to=\"a\"", 41);
    ac_metrics_set_counter(m, "sent_total", "to=\"a\"", 42); /* replaces, does not add */
    ac_metrics_set_counter(m, "sent_total", NULL, 3);
    ac_metrics_add(m, "sent_total", NULL, 1);
    assert_int_equal(ac_metrics_declare(m, "level", AC_METRIC_GAUGE, "A gauge"), 0);
    ac_metrics_set_counter(m, "level", NULL, 9); /* not a counter: dropped, logged */
    assert_render(m, "# HELP q_level A gauge\n"
                     "# TYPE q_level gauge\n"
                     "# HELP q_sent_total Sent\n"
                     "# TYPE q_sent_total counter\n"
                     "q_sent_total 4\n"
                     "q_sent_total{to=\"a\"} 42\n");
    ac_metrics_destroy(&m);
}

static void test_gauge_set_and_add(void **state)
{
    ac_metrics_t *m = ac_metrics_new("p");
    assert_int_equal(ac_metrics_declare(m, "in_flight", AC_METRIC_GAUGE, "Requests in flight"), 0);
    ac_metrics_set(m, "in_flight", NULL, 7);
    ac_metrics_add(m, "in_flight", NULL, -2);
    ac_metrics_set(m, "ratio", "x=\"1\"", 0.25); /* undeclared: implied gauge, empty help */
    assert_render(m, "# HELP p_in_flight Requests in flight\n"
                     "# TYPE p_in_flight gauge\n"
                     "p_in_flight 5\n"
                     "# HELP p_ratio \n"
                     "# TYPE p_ratio gauge\n"
                     "p_ratio{x=\"1\"} 0.25\n");
    ac_metrics_destroy(&m);
}

static void test_histogram_buckets_are_cumulative(void **state)
{
    ac_metrics_t *m = ac_metrics_new("svc");
    assert_int_equal(ac_metrics_declare(m, "lat_seconds", AC_METRIC_HISTOGRAM, "Latency"), 0);
    ac_metrics_observe(m, "lat_seconds", "route=\"r\"", 0.0005); /* on the first bound */
    ac_metrics_observe(m, "lat_seconds", "route=\"r\"", 0.003);
    ac_metrics_observe(m, "lat_seconds", "route=\"r\"", 0.003);
    ac_metrics_observe(m, "lat_seconds", "route=\"r\"", 0.7);
    ac_metrics_observe(m, "lat_seconds", "route=\"r\"", 9); /* only in +Inf */
    assert_render(m, "# HELP svc_lat_seconds Latency\n"
                     "# TYPE svc_lat_seconds histogram\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"0.0005\"} 1\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"0.001\"} 1\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"0.0025\"} 1\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"0.005\"} 3\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"0.01\"} 3\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"0.025\"} 3\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"0.05\"} 3\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"0.1\"} 3\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"0.25\"} 3\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"0.5\"} 3\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"1\"} 4\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"2.5\"} 4\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"5\"} 4\n"
                     "svc_lat_seconds_bucket{route=\"r\",le=\"+Inf\"} 5\n"
                     "svc_lat_seconds_sum{route=\"r\"} 9.7065\n"
                     "svc_lat_seconds_count{route=\"r\"} 5\n");
    ac_metrics_destroy(&m);
}

static void test_histogram_without_labels(void **state)
{
    ac_metrics_t *m = ac_metrics_new("svc");
    ac_metrics_observe(m, "h", NULL, 2);
    char *text = ac_metrics_render(m);
    assert_non_null(text);
    assert_non_null(strstr(text, "# TYPE svc_h histogram\n"));
    assert_non_null(strstr(text, "svc_h_bucket{le=\"1\"} 0\n"));
    assert_non_null(strstr(text, "svc_h_bucket{le=\"2.5\"} 1\n"));
    assert_non_null(strstr(text, "svc_h_bucket{le=\"+Inf\"} 1\n"));
    assert_non_null(strstr(text, "svc_h_sum 2\nsvc_h_count 1\n"));
    free(text);
    ac_metrics_destroy(&m);
}

/* A histogram of sizes (rows per batch) gets power-of-two buckets, not seconds; a second
 * declaration as the other kind of histogram is refused. */
static void test_histogram_of_sizes(void **state)
{
    ac_metrics_t *m = ac_metrics_new("svc");
    assert_int_equal(ac_metrics_declare(m, "batch_size", AC_METRIC_SIZES, "Rows per batch"), 0);
    assert_int_equal(ac_metrics_declare(m, "batch_size", AC_METRIC_HISTOGRAM, NULL),
                     AC_ERR_CONFLICT);
    ac_metrics_observe(m, "batch_size", NULL, 1);
    ac_metrics_observe(m, "batch_size", NULL, 15);
    ac_metrics_observe(m, "batch_size", NULL, 16);
    ac_metrics_observe(m, "batch_size", NULL, 5000); /* only in +Inf */
    assert_render(m, "# HELP svc_batch_size Rows per batch\n"
                     "# TYPE svc_batch_size histogram\n"
                     "svc_batch_size_bucket{le=\"1\"} 1\n"
                     "svc_batch_size_bucket{le=\"2\"} 1\n"
                     "svc_batch_size_bucket{le=\"4\"} 1\n"
                     "svc_batch_size_bucket{le=\"8\"} 1\n"
                     "svc_batch_size_bucket{le=\"16\"} 3\n"
                     "svc_batch_size_bucket{le=\"32\"} 3\n"
                     "svc_batch_size_bucket{le=\"64\"} 3\n"
                     "svc_batch_size_bucket{le=\"128\"} 3\n"
                     "svc_batch_size_bucket{le=\"256\"} 3\n"
                     "svc_batch_size_bucket{le=\"512\"} 3\n"
                     "svc_batch_size_bucket{le=\"1024\"} 3\n"
                     "svc_batch_size_bucket{le=\"2048\"} 3\n"
                     "svc_batch_size_bucket{le=\"4096\"} 3\n"
                     "svc_batch_size_bucket{le=\"+Inf\"} 4\n"
                     "svc_batch_size_sum 5032\n"
                     "svc_batch_size_count 4\n");
    ac_metrics_destroy(&m);
}

static void test_families_sorted_and_no_prefix(void **state)
{
    ac_metrics_t *m = ac_metrics_new(NULL);
    ac_metrics_add(m, "zeta_total", NULL, 1);
    ac_metrics_add(m, "alpha_total", NULL, 1e20);
    ac_metrics_set(m, "mid", NULL, 0.1);
    assert_render(m, "# HELP alpha_total \n# TYPE alpha_total counter\nalpha_total 1e+20\n"
                     "# HELP mid \n# TYPE mid gauge\nmid 0.1\n"
                     "# HELP zeta_total \n# TYPE zeta_total counter\nzeta_total 1\n");
    ac_metrics_destroy(&m);
}

static void test_declare_rules(void **state)
{
    ac_metrics_t *m = ac_metrics_new("p");
    assert_int_equal(ac_metrics_declare(m, "a_total", AC_METRIC_COUNTER, "first"), 0);
    assert_int_equal(ac_metrics_declare(m, "a_total", AC_METRIC_COUNTER, "second"), 0);
    assert_int_equal(ac_metrics_declare(m, "a_total", AC_METRIC_GAUGE, "x"), AC_ERR_CONFLICT);
    assert_int_equal(ac_metrics_declare(m, "9bad", AC_METRIC_GAUGE, "x"), AC_ERR_INVALID);
    assert_int_equal(ac_metrics_declare(m, "bad name", AC_METRIC_GAUGE, "x"), AC_ERR_INVALID);
    assert_int_equal(ac_metrics_declare(m, "", AC_METRIC_GAUGE, "x"), AC_ERR_INVALID);
    /* A family used before it was declared takes the help text of the later declaration. */
    ac_metrics_set(m, "b", NULL, 1);
    assert_int_equal(ac_metrics_declare(m, "b", AC_METRIC_GAUGE, "Multi\nline \\ help"), 0);
    /* Wrong-type updates are dropped, not applied. */
    ac_metrics_set(m, "a_total", NULL, 100);
    ac_metrics_observe(m, "a_total", NULL, 1);
    ac_metrics_add(m, "a_total", NULL, 1);
    assert_render(m, "# HELP p_a_total second\n# TYPE p_a_total counter\np_a_total 1\n"
                     "# HELP p_b Multi\\nline \\\\ help\n# TYPE p_b gauge\np_b 1\n");
    ac_metrics_destroy(&m);
}

static void test_many_series_stay_distinct(void **state)
{
    ac_metrics_t *m = ac_metrics_new("p");
    char labels[64];
    for (int round = 0; round < 3; round++) {
        for (int i = 299; i >= 0; i--) {
            snprintf(labels, sizeof(labels), "n=\"%03d\"", i);
            ac_metrics_add(m, "c_total", labels, i);
        }
    }
    char *text = ac_metrics_render(m);
    assert_non_null(text);
    assert_non_null(strstr(text, "p_c_total{n=\"000\"} 0\np_c_total{n=\"001\"} 3\n"));
    assert_non_null(strstr(text, "p_c_total{n=\"299\"} 897\n"));
    int lines = 0;
    for (const char *p = text; *p != '\0'; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 300 + 2);
    free(text);
    ac_metrics_destroy(&m);
}

static void on_render_hook(ac_metrics_t *m, void *arg)
{
    int *calls = arg;
    (*calls)++;
    ac_metrics_set(m, "renders", NULL, *calls);
}

static void test_on_render_runs_before_rendering(void **state)
{
    ac_metrics_t *m = ac_metrics_new("p");
    int calls = 0;
    ac_metrics_on_render(m, on_render_hook, &calls);
    assert_render(m, "# HELP p_renders \n# TYPE p_renders gauge\np_renders 1\n");
    assert_render(m, "# HELP p_renders \n# TYPE p_renders gauge\np_renders 2\n");
    assert_int_equal(calls, 2);
    ac_metrics_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_registry_renders_nothing),
        cmocka_unit_test(test_counter_with_and_without_labels),
        cmocka_unit_test(test_counter_set_to_a_kept_count),
        cmocka_unit_test(test_gauge_set_and_add),
        cmocka_unit_test(test_histogram_buckets_are_cumulative),
        cmocka_unit_test(test_histogram_without_labels),
        cmocka_unit_test(test_histogram_of_sizes),
        cmocka_unit_test(test_families_sorted_and_no_prefix),
        cmocka_unit_test(test_declare_rules),
        cmocka_unit_test(test_many_series_stay_distinct),
        cmocka_unit_test(test_on_render_runs_before_rendering),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
