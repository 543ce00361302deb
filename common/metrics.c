/* metrics.c — the Prometheus registry behind ac_metrics.h.
 *
 * Families live in an array sorted by name and each family's series in an array sorted by
 * label string, both searched with bsearch(): lookups are O(log n) on the request path,
 * inserts (first use of a series) shift pointers, and the render comes out in a stable,
 * sorted order without extra work. Histogram buckets are counted per bucket and made
 * cumulative only when rendered.
 */
#include "ac_metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ac_log.h"

/* Upper bounds of a kind of histogram's buckets; the implicit last bucket is +Inf (= the
 * series' count). */
#define NBUCKETS 13
typedef struct buckets {
    double bounds[NBUCKETS];
    const char *labels[NBUCKETS];
} buckets_t;

static const buckets_t SECONDS = {
    {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
    {"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
     "2.5", "5"}};
static const buckets_t SIZES = {
    {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096},
    {"1", "2", "4", "8", "16", "32", "64", "128", "256", "512", "1024", "2048", "4096"}};

typedef struct series {
    char *labels;               /* first: the sort key; label body without braces, "" if none */
    double value;               /* counter / gauge */
    double sum;                 /* histogram: sum of observations */
    uint64_t count;             /* histogram: observations (the +Inf bucket) */
    uint64_t buckets[NBUCKETS]; /* histogram: observations <= the i-th bound, per bucket */
} series_t;

typedef struct family {
    char *name; /* first: the sort key; without the prefix */
    char *help; /* "" until declared with one */
    ac_metric_type_t type;
    series_t **series; /* sorted by labels */
    size_t nseries, cap;
} family_t;

typedef struct hook {
    void (*fn)(ac_metrics_t *m, void *arg);
    void *arg;
} hook_t;

struct ac_metrics {
    char *prefix;        /* "aftercare_intake_" (with the underscore), or "" */
    family_t **families; /* sorted by name */
    size_t nfamilies, cap;
    hook_t *hooks; /* on_render callbacks, in registration order */
    size_t nhooks;
};

/* Prometheus' type of each kind, and the kind's name for messages. */
static const char *const TYPE_NAMES[] = {"counter", "gauge", "histogram", "histogram"};
static const char *const KIND_NAMES[] = {"counter", "gauge", "histogram", "histogram of sizes"};

static int is_histogram(ac_metric_type_t type)
{
    return type == AC_METRIC_HISTOGRAM || type == AC_METRIC_SIZES;
}

static const buckets_t *family_buckets(const family_t *f)
{
    return f->type == AC_METRIC_SIZES ? &SIZES : &SECONDS;
}

/* --- lifecycle -------------------------------------------------------------------------- */

ac_metrics_t *ac_metrics_new(const char *prefix)
{
    ac_metrics_t *m = calloc(1, sizeof(*m));
    if (m == NULL)
        goto oom;
    size_t len = prefix != NULL ? strlen(prefix) : 0;
    m->prefix = malloc(len + 2);
    if (m->prefix == NULL)
        goto oom;
    if (len > 0) {
        memcpy(m->prefix, prefix, len);
        m->prefix[len++] = '_';
    }
    m->prefix[len] = '\0';
    return m;
oom:
    ac_error("metrics: out of memory");
    free(m);
    return NULL;
}

static void family_free(family_t *f)
{
    for (size_t i = 0; i < f->nseries; i++) {
        free(f->series[i]->labels);
        free(f->series[i]);
    }
    free(f->series);
    free(f->name);
    free(f->help);
    free(f);
}

void ac_metrics_destroy(ac_metrics_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    ac_metrics_t *m = *self_p;
    for (size_t i = 0; i < m->nfamilies; i++)
        family_free(m->families[i]);
    free(m->families);
    free(m->hooks);
    free(m->prefix);
    free(m);
    *self_p = NULL;
}

/* --- lookup ----------------------------------------------------------------------------- */

/* Binary search over an array of pointers to structs whose first member is their char *
 * key (family_t.name, series_t.labels). Returns the insertion point; *found when equal. */
static size_t lower_bound(void *const *arr, size_t n, const char *key, int *found)
{
    size_t lo = 0, hi = n;
    *found = 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(*(char *const *)arr[mid], key);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* New capacity for an array of n elements that must hold one more, or 0 if it already can. */
static size_t grown_cap(size_t n, size_t cap)
{
    return n < cap ? 0 : (cap != 0 ? cap * 2 : 8);
}

static int is_valid_name(const char *s)
{
    if (s == NULL || *s == '\0' || (*s >= '0' && *s <= '9'))
        return 0;
    for (; *s != '\0'; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == ':'))
            return 0;
    }
    return 1;
}

static family_t *family_find(const ac_metrics_t *m, const char *name, size_t *pos_out)
{
    int found;
    size_t pos = lower_bound((void *const *)m->families, m->nfamilies, name, &found);
    if (pos_out != NULL)
        *pos_out = pos;
    return found ? m->families[pos] : NULL;
}

static family_t *family_insert(ac_metrics_t *m, size_t pos, const char *name, ac_metric_type_t type,
                               const char *help)
{
    size_t ncap = grown_cap(m->nfamilies, m->cap);
    if (ncap != 0) {
        family_t **families = realloc(m->families, ncap * sizeof(family_t *));
        if (families == NULL)
            return NULL;
        m->families = families;
        m->cap = ncap;
    }
    family_t *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->name = strdup(name);
    f->help = strdup(help != NULL ? help : "");
    f->type = type;
    if (f->name == NULL || f->help == NULL) {
        family_free(f);
        return NULL;
    }
    memmove(&m->families[pos + 1], &m->families[pos], (m->nfamilies - pos) * sizeof(family_t *));
    m->families[pos] = f;
    m->nfamilies++;
    return f;
}

static series_t *series_get(family_t *f, const char *labels)
{
    if (labels == NULL)
        labels = "";
    int found;
    size_t pos = lower_bound((void *const *)f->series, f->nseries, labels, &found);
    if (found && pos < f->nseries)
        return f->series[pos];
    size_t ncap = grown_cap(f->nseries, f->cap);
    if (ncap != 0) {
        series_t **series = realloc(f->series, ncap * sizeof(series_t *));
        if (series == NULL)
            return NULL;
        f->series = series;
        f->cap = ncap;
    }
    series_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->labels = strdup(labels);
    if (s->labels == NULL) {
        free(s);
        return NULL;
    }
    memmove(&f->series[pos + 1], &f->series[pos], (f->nseries - pos) * sizeof(series_t *));
    f->series[pos] = s;
    f->nseries++;
    return s;
}

int ac_metrics_declare(ac_metrics_t *m, const char *name, ac_metric_type_t type, const char *help)
{
    if (!is_valid_name(name) || (unsigned)type >= AC_ARRAY_LEN(TYPE_NAMES)) {
        ac_error("metrics: invalid family name or type: %s", name != NULL ? name : "(null)");
        return AC_ERR_INVALID;
    }
    size_t pos;
    family_t *f = family_find(m, name, &pos);
    if (f != NULL) {
        if (f->type != type) {
            ac_error("metrics: %s declared as %s, already a %s", name, KIND_NAMES[type],
                     KIND_NAMES[f->type]);
            return AC_ERR_CONFLICT;
        }
        if (help != NULL && *help != '\0' && strcmp(f->help, help) != 0) {
            char *copy = strdup(help);
            if (copy == NULL)
                return AC_ERR_NOMEM;
            free(f->help);
            f->help = copy;
        }
        return 0;
    }
    if (family_insert(m, pos, name, type, help) == NULL) {
        ac_error("metrics: out of memory declaring %s", name);
        return AC_ERR_NOMEM;
    }
    return 0;
}

/* The series to update, declaring the family as `type` on first use (its family in
 * *f_out when f_out is not NULL). NULL (logged) on a type mismatch, an invalid name or OOM;
 * the update is then dropped. */
static series_t *lookup(ac_metrics_t *m, const char *name, const char *labels,
                        ac_metric_type_t type, int is_gauge_ok, const family_t **f_out)
{
    size_t pos;
    family_t *f = family_find(m, name, &pos);
    if (f == NULL) {
        if (!is_valid_name(name)) {
            ac_warn("metrics: invalid family name %s", name != NULL ? name : "(null)");
            return NULL;
        }
        f = family_insert(m, pos, name, type, NULL);
    } else if (f->type != type && !(is_gauge_ok && f->type == AC_METRIC_GAUGE) &&
               !(is_histogram(type) && is_histogram(f->type))) {
        ac_warn("metrics: %s is a %s, not a %s; update dropped", name, KIND_NAMES[f->type],
                KIND_NAMES[type]);
        return NULL;
    }
    series_t *s = f != NULL ? series_get(f, labels) : NULL;
    if (s == NULL && f != NULL)
        ac_warn("metrics: out of memory updating %s", name);
    if (f_out != NULL)
        *f_out = f;
    return s;
}

void ac_metrics_add(ac_metrics_t *m, const char *name, const char *labels, double v)
{
    series_t *s = lookup(m, name, labels, AC_METRIC_COUNTER, 1, NULL);
    if (s != NULL)
        s->value += v;
}

void ac_metrics_set_counter(ac_metrics_t *m, const char *name, const char *labels, double v)
{
    series_t *s = lookup(m, name, labels, AC_METRIC_COUNTER, 0, NULL);
    if (s != NULL)
        s->value = v;
}

void ac_metrics_set(ac_metrics_t *m, const char *name, const char *labels, double v)
{
    series_t *s = lookup(m, name, labels, AC_METRIC_GAUGE, 0, NULL);
    if (s != NULL)
        s->value = v;
}

void ac_metrics_observe(ac_metrics_t *m, const char *name, const char *labels, double v)
{
    const family_t *f = NULL;
    series_t *s = lookup(m, name, labels, AC_METRIC_HISTOGRAM, 0, &f);
    if (s == NULL)
        return;
    const buckets_t *bk = family_buckets(f);
    for (size_t i = 0; i < NBUCKETS; i++) {
        if (v <= bk->bounds[i]) {
            s->buckets[i]++;
            break;
        }
    }
    s->count++;
    s->sum += v;
}

void ac_metrics_on_render(ac_metrics_t *m, void (*fn)(ac_metrics_t *m, void *arg), void *arg)
{
    hook_t *hooks = realloc(m->hooks, (m->nhooks + 1) * sizeof(*hooks));
    if (hooks == NULL) {
        ac_error("metrics: out of memory registering a render hook");
        return;
    }
    m->hooks = hooks;
    m->hooks[m->nhooks++] = (hook_t){fn, arg};
}

/* --- rendering -------------------------------------------------------------------------- */

typedef struct buf {
    char *data;
    size_t len, cap;
    int is_oom;
} buf_t;

static void buf_printf(buf_t *b, const char *fmt, ...) AC_PRINTF(2, 3);

static void buf_printf(buf_t *b, const char *fmt, ...)
{
    if (b->is_oom)
        return;
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    /* NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized): va_start'ed above (false positive) */
    int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    if (n >= 0 && (size_t)n >= b->cap - b->len) { /* did not fit: grow, then once more */
        size_t need = b->len + (size_t)n + 1;
        size_t ncap = b->cap * 2 > need ? b->cap * 2 : need;
        char *data = realloc(b->data, ncap);
        if (data != NULL) {
            b->data = data;
            b->cap = ncap;
            n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, again);
        } else {
            n = -1;
        }
    }
    va_end(again);
    va_end(ap);
    if (n < 0)
        b->is_oom = 1;
    else
        b->len += (size_t)n;
}

/* Shortest of %.15g / %.17g that reads back as v; Prometheus spellings for the specials. */
static void format_value(double v, char out[32])
{
    if (isnan(v)) {
        snprintf(out, 32, "NaN");
    } else if (isinf(v)) {
        snprintf(out, 32, "%s", v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(out, 32, "%.15g", v);
        if (strtod(out, NULL) != v)
            snprintf(out, 32, "%.17g", v);
    }
}

/* HELP text escapes backslash and newline. */
static void render_help(buf_t *b, const ac_metrics_t *m, const family_t *f)
{
    buf_printf(b, "# HELP %s%s ", m->prefix, f->name);
    for (const char *p = f->help; *p != '\0'; p++) {
        if (*p == '\\')
            buf_printf(b, "\\\\");
        else if (*p == '\n')
            buf_printf(b, "\\n");
        else
            buf_printf(b, "%c", *p);
    }
    buf_printf(b, "\n# TYPE %s%s %s\n", m->prefix, f->name, TYPE_NAMES[f->type]);
}

static void render_family(buf_t *b, const ac_metrics_t *m, const family_t *f)
{
    char num[32];
    render_help(b, m, f);
    for (size_t i = 0; i < f->nseries; i++) {
        const series_t *s = f->series[i];
        const char *open = *s->labels != '\0' ? "{" : "";
        const char *close = *s->labels != '\0' ? "}" : "";
        if (!is_histogram(f->type)) {
            format_value(s->value, num);
            buf_printf(b, "%s%s%s%s%s %s\n", m->prefix, f->name, open, s->labels, close, num);
            continue;
        }
        const char *sep = *s->labels != '\0' ? "," : "";
        uint64_t cumulative = 0;
        for (size_t k = 0; k < NBUCKETS; k++) {
            cumulative += s->buckets[k];
            buf_printf(b, "%s%s_bucket{%s%sle=\"%s\"} %llu\n", m->prefix, f->name, s->labels, sep,
                       family_buckets(f)->labels[k], (unsigned long long)cumulative);
        }
        buf_printf(b, "%s%s_bucket{%s%sle=\"+Inf\"} %llu\n", m->prefix, f->name, s->labels, sep,
                   (unsigned long long)s->count);
        format_value(s->sum, num);
        buf_printf(b, "%s%s_sum%s%s%s %s\n", m->prefix, f->name, open, s->labels, close, num);
        buf_printf(b, "%s%s_count%s%s%s %llu\n", m->prefix, f->name, open, s->labels, close,
                   (unsigned long long)s->count);
    }
}

char *ac_metrics_render(ac_metrics_t *m)
{
    for (size_t i = 0; i < m->nhooks; i++)
        m->hooks[i].fn(m, m->hooks[i].arg);

    buf_t b = {.cap = 4096};
    b.data = malloc(b.cap);
    if (b.data == NULL)
        return NULL;
    b.data[0] = '\0';
    for (size_t i = 0; i < m->nfamilies; i++)
        render_family(&b, m, m->families[i]);
    if (b.is_oom) {
        free(b.data);
        return NULL;
    }
    return b.data;
}
