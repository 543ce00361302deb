/* ac_metrics.h — a small Prometheus registry: counters, gauges and histograms with
 * label sets, rendered in the text exposition format for /metrics. Single-threaded
 * (the loop's thread). Families are declared once; series are created on first use. */
#ifndef AC_METRICS_H
#define AC_METRICS_H

#include "ac_err.h"

typedef struct ac_metrics ac_metrics_t;

/* Histograms have buckets in seconds (0.5 ms .. 5 s) for durations; AC_METRIC_SIZES is a
 * histogram with power-of-two buckets (1 .. 4096) for counts, such as rows per batch. Both
 * render as Prometheus histograms and take ac_metrics_observe(). */
typedef enum {
    AC_METRIC_COUNTER,
    AC_METRIC_GAUGE,
    AC_METRIC_HISTOGRAM,
    AC_METRIC_SIZES
} ac_metric_type_t;

ac_metrics_t *ac_metrics_new(const char *prefix); /* prefix "aftercare_intake" */
void ac_metrics_destroy(ac_metrics_t **self_p);

/* Declare a family (name without prefix, e.g. "http_requests_total"). Idempotent. */
int ac_metrics_declare(ac_metrics_t *m, const char *name, ac_metric_type_t type, const char *help);
/* labels: NULL or a Prometheus label body such as `route="/v1/tickets",status="201"`.
 * Using an undeclared family declares it as the implied type with an empty help.
 * ac_metrics_add() also adds to a gauge (for up/down counts such as requests in flight). */
void ac_metrics_add(ac_metrics_t *m, const char *name, const char *labels, double v); /* counter */
void ac_metrics_set(ac_metrics_t *m, const char *name, const char *labels, double v); /* gauge */
/* A counter to an absolute value: for counts a module keeps itself and copies in an
 * on_render hook. The value must never decrease (Prometheus reads a drop as a restart). */
void ac_metrics_set_counter(ac_metrics_t *m, const char *name, const char *labels, double v);
void ac_metrics_observe(ac_metrics_t *m, const char *name, const char *labels,
                        double v); /* histogram */

/* Called at the start of every render, to refresh gauges computed on demand. */
void ac_metrics_on_render(ac_metrics_t *m, void (*fn)(ac_metrics_t *m, void *arg), void *arg);
/* Malloc'ed exposition text (caller frees); NULL on OOM. */
char *ac_metrics_render(ac_metrics_t *m);

#endif
