/* deadlines_bench.c — the SLA engine's in-memory deadline set (services/dispatch/deadlines.c)
 * at 1,000,000 armed deadlines: memory (RSS delta and bytes per deadline), arm / move /
 * cancel cost, the bulk load of the restart path, and firing lateness on a real libev loop
 * with a compressed schedule (F deadlines spread over S seconds among N armed ones).
 * Prints figures as key=value lines; asserts nothing (see tests/bench/README.md).
 *
 *   bench-deadlines [--count N] [--fire F] [--spread S] [--work-us W] [--seed X]
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ev.h>

#include "ac_time.h"
#include "deadlines.h"

static uint64_t rng_state = 1;

static uint64_t rng(void)
{
    uint64_t z = (rng_state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* Resident set size in bytes (VmRSS), 0 if unreadable. */
static long long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return 0;
    char line[256];
    long long kb = 0;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtoll(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb * 1024;
}

static double secs_since(int64_t mono_us)
{
    return (double)(ac_time_mono_us() - mono_us) / 1e6;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench-deadlines: %s: %d\n", what, rc);
    exit(1);
}

static dispatch_deadline_t far_deadline(uint64_t id, int64_t now_us)
{
    /* 1 hour .. 30 days ahead: armed, never due during the run */
    int64_t ahead_us = INT64_C(3600000000) + (int64_t)(rng() % UINT64_C(2592000000000));
    dispatch_deadline_t d = {.due_at_us = now_us + ahead_us,
                             .id = id,
                             .version = 1,
                             .kind = (uint8_t)(id % 3),
                             .level = (uint8_t)(id % 4)};
    return d;
}

typedef struct firing {
    struct ev_loop *loop;
    int64_t *late_us; /* wall clock when handled - due */
    int64_t *loop_us; /* loop time of the wake-up - due */
    size_t n, expect;
    size_t calls;
    long work_us; /* simulated per-deadline work (the engine's transaction) */
} firing_t;

static void on_due(void *arg, const dispatch_deadline_t *due, size_t n, int64_t now_us)
{
    firing_t *f = arg;
    f->calls++;
    for (size_t i = 0; i < n; i++) {
        if (f->work_us > 0) { /* busy: nanosleep would add the kernel's timer slack */
            int64_t until = ac_time_mono_us() + f->work_us;
            while (ac_time_mono_us() < until) {
            }
        }
        if (due[i].id > (uint64_t)f->expect || f->n >= f->expect)
            continue; /* a far deadline: not possible within the run, counted nowhere */
        f->late_us[f->n] = ac_time_now_us() - due[i].due_at_us;
        f->loop_us[f->n] = now_us - due[i].due_at_us;
        f->n++;
    }
    if (f->n >= f->expect)
        ev_break(f->loop, EVBREAK_ALL);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_ms(const int64_t *sorted, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return (double)sorted[i] / 1000.0;
}

int main(int argc, char **argv)
{
    size_t count = 1000000, fire = 100000;
    double spread_s = 10.0;
    long work_us = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--count") == 0)
            count = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--fire") == 0)
            fire = strtoul(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--spread") == 0)
            spread_s = strtod(argv[i + 1], NULL);
        else if (strcmp(argv[i], "--work-us") == 0)
            work_us = strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--seed") == 0)
            rng_state = strtoull(argv[i + 1], NULL, 10);
        else {
            fprintf(stderr,
                    "usage: %s [--count N] [--fire F] [--spread S] [--work-us W] "
                    "[--seed X]\n",
                    argv[0]);
            return 2;
        }
    }
    if (fire > count || count == 0)
        die("--fire must be <= --count, --count > 0", 0);
    int64_t now_us = ac_time_now_us();

    /* 1. incremental arm of `count` random deadlines (ids in random order) */
    uint64_t *ids = malloc(count * sizeof(*ids));
    if (ids == NULL)
        die("malloc", 0);
    for (size_t i = 0; i < count; i++)
        ids[i] = i + 1;
    for (size_t i = count - 1; i > 0; i--) {
        size_t j = rng() % (i + 1);
        uint64_t t = ids[i];
        ids[i] = ids[j];
        ids[j] = t;
    }
    long long rss0 = rss_bytes();
    dispatch_deadlines_t *set = dispatch_deadlines_new();
    if (set == NULL)
        die("new", 0);
    int64_t t = ac_time_mono_us();
    for (size_t i = 0; i < count; i++) {
        dispatch_deadline_t d = far_deadline(ids[i], now_us);
        int rc = dispatch_deadlines_arm(set, &d);
        if (rc != 0)
            die("arm", rc);
    }
    double arm_s = secs_since(t);
    long long rss1 = rss_bytes();
    printf("count=%zu arm_s=%.3f arm_ns_per_op=%.0f rss_delta_mb=%.1f rss_bytes_per_deadline=%.1f "
           "set_bytes_per_deadline=%.1f\n",
           count, arm_s, arm_s * 1e9 / (double)count, (double)(rss1 - rss0) / 1048576.0,
           (double)(rss1 - rss0) / (double)count,
           (double)dispatch_deadlines_memory_bytes(set) / (double)count);

    /* moves (new due time, newer version) and cancels at full size */
    size_t moves = count < 1000000 ? count : 1000000;
    t = ac_time_mono_us();
    for (size_t i = 0; i < moves; i++) {
        dispatch_deadline_t d = far_deadline(ids[rng() % count], now_us);
        d.version = 2 + (uint32_t)i;
        int rc = dispatch_deadlines_arm(set, &d);
        if (rc != 0)
            die("move", rc);
    }
    double move_s = secs_since(t);
    size_t cancels = count / 10;
    t = ac_time_mono_us();
    size_t cancelled = 0;
    for (size_t i = 0; i < cancels; i++)
        cancelled += dispatch_deadlines_cancel(set, ids[i], UINT32_MAX / 2) == 0;
    double cancel_s = secs_since(t);
    if (cancelled != cancels)
        die("cancel", (int)(cancels - cancelled));
    printf("move_ns_per_op=%.0f cancel_ns_per_op=%.0f\n", move_s * 1e9 / (double)moves,
           cancel_s * 1e9 / (double)(cancels ? cancels : 1));
    dispatch_deadlines_destroy(&set);

    /* 2. the restart path: reserve + append + heapify; the first `fire` ids are due within
     * the compressed schedule (1 s from the end of the load, spread over spread_s) */
    now_us = ac_time_now_us();
    int64_t start_us = now_us + 1000000 + 2000000;             /* room for the load itself */
    dispatch_deadline_t *rows = malloc(count * sizeof(*rows)); /* what a query would return */
    if (rows == NULL)
        die("malloc", 0);
    for (size_t i = 0; i < count; i++) {
        uint64_t id = ids[i];
        rows[i] = far_deadline(id, now_us);
        if (id <= fire)
            rows[i].due_at_us =
                start_us + (int64_t)(rng() % (uint64_t)(spread_s * 1e6 > 1 ? spread_s * 1e6 : 1));
    }
    rss0 = rss_bytes(); /* the rows are the query's, not the set's */
    set = dispatch_deadlines_new();
    if (set == NULL)
        die("new", 0);
    t = ac_time_mono_us();
    int rc = dispatch_deadlines_reserve(set, count);
    if (rc != 0)
        die("reserve", rc);
    for (size_t i = 0; i < count; i++)
        if ((rc = dispatch_deadlines_append(set, &rows[i])) != 0)
            die("append", rc);
    double append_s = secs_since(t);
    int64_t th = ac_time_mono_us();
    dispatch_deadlines_heapify(set);
    double heapify_s = secs_since(th);
    double load_s = secs_since(t);
    rss1 = rss_bytes();
    free(rows);
    printf("bulk_load_s=%.3f append_s=%.3f heapify_s=%.3f rss_delta_mb=%.1f "
           "rss_bytes_per_deadline=%.1f set_bytes_per_deadline=%.1f\n",
           load_s, append_s, heapify_s, (double)(rss1 - rss0) / 1048576.0,
           (double)(rss1 - rss0) / (double)count,
           (double)dispatch_deadlines_memory_bytes(set) / (double)count);

    /* 3. compressed schedule on a real loop */
    firing_t f = {.expect = fire, .work_us = work_us};
    f.late_us = malloc((fire + 1) * sizeof(int64_t));
    f.loop_us = malloc((fire + 1) * sizeof(int64_t));
    f.loop = ev_loop_new(EVFLAG_AUTO);
    if (f.late_us == NULL || f.loop_us == NULL || f.loop == NULL)
        die("setup", 0);
    if ((rc = dispatch_deadlines_attach(set, f.loop, 0, on_due, &f)) != 0)
        die("attach", rc);
    if (start_us < ac_time_now_us())
        fprintf(stderr, "bench-deadlines: the load took longer than planned; early firings "
                        "include that wait\n");
    if (fire > 0)
        ev_run(f.loop, 0);
    qsort(f.late_us, f.n, sizeof(int64_t), cmp_i64);
    qsort(f.loop_us, f.n, sizeof(int64_t), cmp_i64);
    printf("fired=%zu of %zu spread_s=%.1f work_us=%ld wakeups=%zu armed_left=%zu "
           "late_p50_ms=%.3f late_p99_ms=%.3f late_max_ms=%.3f min_ms=%.3f "
           "loop_p99_ms=%.3f\n",
           f.n, fire, spread_s, work_us, f.calls, dispatch_deadlines_count(set),
           pct_ms(f.late_us, f.n, 0.5), pct_ms(f.late_us, f.n, 0.99), pct_ms(f.late_us, f.n, 1.0),
           pct_ms(f.late_us, f.n, 0.0), pct_ms(f.loop_us, f.n, 0.99));
    dispatch_deadlines_destroy(&set);
    ev_loop_destroy(f.loop);
    free(f.late_us);
    free(f.loop_us);
    free(ids);
    return 0;
}
