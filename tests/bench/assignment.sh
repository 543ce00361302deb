#!/usr/bin/env bash
# tests/bench/assignment.sh — the assignment benchmark (issue 4, item 2).
#
#   tests/bench/assignment.sh        # 500 tickets/s for 20 s (+3 s warm-up), 1,000 engineers
#
# Target: ticket.created -> ticket.assigned, p99 under 50 ms at 500 tickets/s with 1,000
# engineers.
#
# Steps: build the release preset; start a private PostgreSQL (deploy/pg.sh, fsync and
# synchronous_commit on), CURVE keys, the bus, intake and dispatch on free ports
# (tests/bench/stack.sh); a customer with five products (models BX-1..BX-5, five regions);
# 1,000 engineers over dispatch's API (assignment_load.py engineers: 40 % technical
# support, 40 % field engineers, 20 % depot technicians, two models each at levels 1..5,
# one or two regions, 5 % away, every shift 24x7 so the figures do not depend on the
# clock); wait until dispatch's roster holds them all. Then a CURVE subscriber on the bus
# output (assignment_load.py measure) and five open-loop bench-loadgen runs, one per
# product, each at BENCH_RATE/5 tickets/s through intake's POST /v1/tickets, for
# BENCH_WARMUP + BENCH_SECONDS. Every ticket.created gets a diagnosis request; the
# assignment worker picks a technical-support engineer with the model's skill.
#
# Latency per ticket: from the subscriber's receipt of its ticket.created to its receipt of
# the ticket's ticket.assigned (p50_ms, p99_ms, max_ms: what dispatch adds — consumer
# transaction, queue, worker batch, outbox relay, bus), and from ticket.created's
# envelope time (stamped by intake) to that receipt (env_*: intake's relay and the bus
# hop included). Tickets created in the warm-up are not measured; `missing` counts
# measured tickets never assigned within 10 s after the load.
#
# Environment:
#   BENCH_SECONDS    measured seconds of load (default 20)
#   BENCH_WARMUP     seconds of load before (default 3)
#   BENCH_PRIME      seconds of load before that, then VACUUM ANALYZE (default 5; see
#                    "priming" below)
#   BENCH_PG_LOG_MS  log statements slower than this, with their plans (diagnosis)
#   BENCH_PG_STATS   1 = print the statements and functions taking the most database time
#   BENCH_RATE       tickets/s in all (default 500)
#   BENCH_ENGINEERS  engineers (default 1000)
#   BENCH_NO_BUILD   1 = use build/release as it is
#   BENCH_BUILD_DIR  another build tree (implies no build; figures from a Debug/sanitizer
#                    build mean nothing)
#   BENCH_KEEP       1 = keep the work directory (logs) for inspection
#   AC_PG_BIN        PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#
# Exit status: 0 target met, 3 the run completed but the target was missed, 1 the benchmark
# could not run. Bounded: about 1.5 minutes in all with the defaults. Not part of
# tests/run.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
# shellcheck source=tests/bench/stack.sh
. "$ROOT/tests/bench/stack.sh"
BENCH_NAME=assignment.sh

DUR=${BENCH_SECONDS:-20}
WARMUP=${BENCH_WARMUP:-3}
PRIME=${BENCH_PRIME:-5}
RATE=${BENCH_RATE:-500}
ENGINEERS=${BENCH_ENGINEERS:-1000}
TARGET_P99_MS=50
MODELS=BX-1,BX-2,BX-3,BX-4,BX-5
REGIONS=(north south east west central)

if ! [[ "$DUR" =~ ^[0-9]+$ ]] || ((DUR < 1 || DUR > 90)); then
    die "BENCH_SECONDS must be 1..90"
fi
if ! [[ "$WARMUP" =~ ^[0-9]+$ ]] || ((WARMUP > 30)); then
    die "BENCH_WARMUP must be 0..30"
fi
if ! [[ "$PRIME" =~ ^[0-9]+$ ]] || ((PRIME > 60)); then
    die "BENCH_PRIME must be 0..60"
fi
if ! [[ "$RATE" =~ ^[0-9]+$ ]] || ((RATE < 5 || RATE > 5000)); then
    die "BENCH_RATE must be 5..5000"
fi
if ! [[ "$ENGINEERS" =~ ^[0-9]+$ ]] || ((ENGINEERS < 10 || ENGINEERS > 20000)); then
    die "BENCH_ENGINEERS must be 10..20000"
fi

bench_init assignment.sh
command -v protoc >/dev/null || die "missing protoc (run deploy/install-deps.sh)"
bench_build
bench_start_pg
bench_keys bus intake dispatch subscriber
bench_start_bus
bench_start_intake
bench_start_dispatch

AGENT_TOKEN=$(bench_token agent)
ADMIN_TOKEN=$(bench_token admin)
wait_token "$INTAKE_URL" "/v1/tickets?limit=1" "$ADMIN_TOKEN"
wait_token "$INTAKE_URL" "/v1/tickets?limit=1" "$AGENT_TOKEN"
wait_token "$DISPATCH_URL" "/v1/engineers?limit=1" "$ADMIN_TOKEN"

# ---- reference data -----------------------------------------------------------------------------
say "creating a customer and five products"
CUSTOMER_ID=$(bench_api "$INTAKE_URL" "$ADMIN_TOKEN" POST /v1/customers \
    '{"kind":"company","name":"Bench Pumps GmbH","tier":"standard","phone":"+49 30 1234567","email":"ops@bench.example"}' |
    json_field id)
PURCHASE=$(date -u -d '-180 days' +%Y-%m-%d)
IFS=, read -r -a MODEL_LIST <<<"$MODELS"
BODIES=()
for ((i = 0; i < ${#MODEL_LIST[@]}; i++)); do
    model=${MODEL_LIST[i]}
    product_id=$(bench_api "$INTAKE_URL" "$ADMIN_TOKEN" POST /v1/products \
        "{\"customer_id\":\"$CUSTOMER_ID\",\"model\":\"$model\",\"serial_number\":\"$model-BENCH-1\",\"purchase_date\":\"$PURCHASE\",\"install_site\":\"plant $i\",\"region\":\"${REGIONS[i]}\"}" |
        json_field id)
    body=$WORK/ticket-$model.json
    cat >"$body" <<EOF
{"channel":"phone","customer_id":"$CUSTOMER_ID","product_id":"$product_id","category":"fault_repair","description":"Bench ticket {{N}}: the pump makes a grinding noise at start-up and the pressure drops below 2 bar after ten minutes.","urgency":"urgent","expedite":false,"contact":{"name":"Jo Bench","phone":"+49 30 7654321","email":"jo@bench.example"}}
EOF
    BODIES+=("$body")
done

say "creating $ENGINEERS engineers (24x7 shifts)"
ENG_LINE=$("$PYTHON" "$ROOT/tests/bench/assignment_load.py" engineers --url "$DISPATCH_URL" \
    --token "$ADMIN_TOKEN" --count "$ENGINEERS" --models "$MODELS" \
    --regions "$(
        IFS=,
        echo "${REGIONS[*]}"
    )") || die "creating the engineers failed"
say "    $ENG_LINE"
roster() {
    curl -s --max-time 2 "$DISPATCH_URL/metrics" |
        awk '/^aftercare_dispatch_assign_roster_engineers / {print $2}'
}
for ((i = 0; ; i++)); do
    n=$(roster || true)
    [[ -n "$n" && "${n%.*}" -ge "$ENGINEERS" ]] && break
    ((i < 300)) || die "dispatch's roster holds ${n:-?} engineers, not $ENGINEERS, after 30 s"
    sleep 0.1
done

# ---- priming --------------------------------------------------------------------------------------
# A fresh database has no planner statistics: until autovacuum first analyzes the tables
# that grow from empty during the run (tickets, SLA clocks and deadlines, assignments),
# PostgreSQL may plan their lookups as scans. A system that has been running has them, so,
# as pgbench does before it measures, load for BENCH_PRIME seconds, let dispatch drain,
# then VACUUM ANALYZE.
PER_RATE=$(awk -v r="$RATE" -v n="${#BODIES[@]}" 'BEGIN { printf "%.1f", r / n }')
if ((PRIME > 0)); then
    say "priming: $RATE tickets/s for ${PRIME}s, then VACUUM ANALYZE"
    PRIME_PIDS=()
    for ((i = 0; i < ${#BODIES[@]}; i++)); do
        AC_TOKEN=$AGENT_TOKEN timeout -k 10 $((PRIME + 60)) "$LOADGEN" \
            --url "$INTAKE_URL/v1/tickets" --body-file "${BODIES[i]}" --clients 8 \
            --rate "$PER_RATE" --duration "$PRIME" >"$WORK/prime-$i.out" 2>"$WORK/prime-$i.err" &
        PRIME_PIDS+=($!)
        BENCH_PIDS+=($!)
    done
    for pid in "${PRIME_PIDS[@]}"; do
        wait "$pid" || die "bench-loadgen (priming) failed"
    done
    for ((i = 0; ; i++)); do # the queue empty, the SLA clocks computed
        n=$(psql_super -c "SELECT (SELECT count(*) FROM dispatch.assign_queue)
                                + (SELECT count(*) FROM dispatch.sla_clocks WHERE gen <> computed_gen)")
        [[ "$n" == 0 ]] && break
        ((i < 600)) || die "dispatch still had $n requests or clocks to do 60 s after priming"
        sleep 0.1
    done
    psql_super -c "VACUUM ANALYZE" >/dev/null
    bench_pg_stats_reset
fi

# ---- measurement ----------------------------------------------------------------------------------
mkdir -p "$WORK/gen"
(cd "$ROOT" && protoc --python_out="$WORK/gen" -I proto proto/aftercare/v1/ticket.proto \
    proto/aftercare/v1/bus.proto proto/aftercare/v1/dispatch.proto \
    proto/aftercare/v1/envelope.proto) || die "protoc failed"
touch "$WORK/gen/aftercare/__init__.py" "$WORK/gen/aftercare/v1/__init__.py"

say "subscribing to the bus output"
"$PYTHON" "$ROOT/tests/bench/assignment_load.py" measure --endpoint "$BUS_OUT" \
    --key-file "$WORK/subscriber.key" --server-key="$BUS_PUBLIC" --proto-dir "$WORK/gen" \
    --ready-file "$WORK/measure.ready" --warmup "$WARMUP" --grace 10 \
    >"$WORK/measure.out" 2>"$WORK/measure.err" &
MEASURE_PID=$!
BENCH_PIDS+=("$MEASURE_PID")
for ((i = 0; ; i++)); do
    [[ -f "$WORK/measure.ready" ]] && break
    kill -0 "$MEASURE_PID" 2>/dev/null || {
        show_log "$WORK/measure.err"
        die "the subscriber exited"
    }
    ((i < 300)) || die "the subscriber saw no bus.heartbeat within 30 s"
    sleep 0.1
done
psql_super -c "CHECKPOINT"

say "load: ${#BODIES[@]} x $PER_RATE tickets/s = $RATE/s for ${WARMUP}s warm-up + ${DUR}s"
LOAD_PIDS=()
for ((i = 0; i < ${#BODIES[@]}; i++)); do
    AC_TOKEN=$AGENT_TOKEN timeout -k 10 $((DUR + WARMUP + 60)) "$LOADGEN" \
        --url "$INTAKE_URL/v1/tickets" --body-file "${BODIES[i]}" --clients 8 \
        --rate "$PER_RATE" --duration $((DUR + WARMUP)) >"$WORK/load-$i.out" 2>"$WORK/load-$i.err" &
    LOAD_PIDS+=($!)
    BENCH_PIDS+=($!)
done
LOAD_FAILED=0
for pid in "${LOAD_PIDS[@]}"; do
    wait "$pid" || LOAD_FAILED=1
done
((LOAD_FAILED == 0)) || {
    cat "$WORK"/load-*.err >&2
    die "bench-loadgen failed"
}
HTTP_OK=0 HTTP_ERRORS=0 HTTP_MISSED=0 HTTP_P99=0
for ((i = 0; i < ${#BODIES[@]}; i++)); do
    line=$(tail -n 1 "$WORK/load-$i.out")
    HTTP_OK=$((HTTP_OK + $(kv "$line" ok)))
    HTTP_ERRORS=$((HTTP_ERRORS + $(kv "$line" errors)))
    HTTP_MISSED=$((HTTP_MISSED + $(kv "$line" missed)))
    HTTP_P99=$(awk -v a="$HTTP_P99" -v b="$(kv "$line" p99_ms)" 'BEGIN { print (b > a ? b : a) }')
done
# what the background work still had to do when the load stopped: intake's follow
# applier (ticket.assigned -> diagnosing), the SLA engine (new clocks to compute)
FOLLOW_BACKLOG=$(psql_super -c "SELECT count(*) FROM intake.follow_inbox")
SLA_BACKLOG=$(psql_super -c "SELECT count(*) FROM dispatch.sla_clocks WHERE gen <> computed_gen")
say "load done: $HTTP_OK tickets created (errors $HTTP_ERRORS, missed $HTTP_MISSED); waiting for the last assignments"
kill -USR1 "$MEASURE_PID"
wait "$MEASURE_PID" || {
    show_log "$WORK/measure.err"
    die "the subscriber failed"
}
RESULT=$(tail -n 1 "$WORK/measure.out")
STAGES=$(grep -E '^(stage|slow) ' "$WORK/measure.err" || true)
bench_pg_stats

# ---- summary --------------------------------------------------------------------------------------
kill -0 "$DISPATCH_PID" 2>/dev/null || {
    show_log "$WORK/dispatch.log"
    die "aftercare-dispatch died during the benchmark"
}
METRICS=$(curl -s --max-time 5 "$DISPATCH_URL/metrics")
metric() { awk -v m="aftercare_dispatch_$1" '$1 == m {print $2; exit}' <<<"$METRICS"; }
ASSIGNED=$(awk '/^aftercare_dispatch_assignments_total\{method="auto"\}/ {print $2}' <<<"$METRICS")
BATCHES=$(metric assign_batches_total)
UNFILLED=$(metric assign_unfilled_alerts_total)
QUEUED=$(psql_super -c "SELECT count(*) FROM dispatch.assign_queue")
DISPATCH_RSS_MB=$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$DISPATCH_PID/status")
P99=$(kv "$RESULT" p99_ms)
MISSING=$(kv "$RESULT" missing)
VERDICT=FAIL
if awk -v p="$P99" -v t="$TARGET_P99_MS" -v m="$MISSING" 'BEGIN { exit !(p < t && m == 0) }'; then
    VERDICT=PASS
fi

cat <<EOF

==== assignment benchmark (issue 4): $ENGINEERS engineers, $RATE tickets/s for ${DUR}s (+${WARMUP}s warm-up), fsync=$PG_FSYNC synchronous_commit=$PG_SYNC_COMMIT, $(nproc) CPUs
$RESULT
$STAGES
http_created=$HTTP_OK http_errors=$HTTP_ERRORS http_missed=$HTTP_MISSED http_p99_ms=$HTTP_P99 (intake's POST /v1/tickets, open loop)
backlog at the end of the load: intake_follow=$FOLLOW_BACKLOG (dispatch events not yet applied to intake's tickets) sla_clocks=$SLA_BACKLOG (clocks not yet computed)
dispatch: assignments=${ASSIGNED:-?} batches=${BATCHES:-?} unfilled_alerts=${UNFILLED:-0} still_queued=$QUEUED peak_rss_mb=$DISPATCH_RSS_MB
target ticket.created -> ticket.assigned p99 < ${TARGET_P99_MS} ms at ${RATE}/s (nothing missing): $VERDICT
EOF
[[ "$VERDICT" == PASS ]] && exit 0
exit 3
