#!/usr/bin/env bash
# tests/bench/intake.sh — the intake benchmark (issue 2).
#
#   tests/bench/intake.sh            # BENCH_SECONDS=10 by default
#
# Drives POST /v1/tickets with 16 concurrent keep-alive clients for a fixed time and prints
# tickets/s, p50/p99 latency and the intake process's peak RSS, next to the ceiling of the
# same database measured in the same run: pgbench with 16 clients, each transaction one
# ticket-sized insert plus one outbox insert, synchronous_commit on (and fsync on).
#
# Target: intake sustains at least 1.0x that ceiling, with p99 under 20 ms at half that
# load, and intake's RSS under 50 MB.
#
# Steps: build the release preset; start a private PostgreSQL (deploy/pg.sh, fsync on), the
# bus and intake on free ports (tests/bench/stack.sh; intake follows no source); create
# tokens with aftercarectl and one customer, product and warranty policy with curl; then
#   (a) pgbench ceiling    pgbench -n -c 16 -j 2 -T $BENCH_SECONDS on a scratch schema
#   (b) closed loop        bench-loadgen --clients 16 --duration $BENCH_SECONDS
#   (c) half load          bench-loadgen --clients 16 --rate <ceiling/2> (open loop, latency
#                          from the scheduled send time)
#   (d) peak RSS           VmHWM of the intake process after the runs
# and print a summary. Everything it started is stopped and removed on exit (Ctrl-C too).
#
# Environment:
#   BENCH_SECONDS   length of each measured run (default 10)
#   BENCH_CLIENTS   concurrent clients for pgbench and the closed loop (default 16)
#   BENCH_WARMUP    seconds of unmeasured load on intake before (b) (default 2; 0 = none)
#   BENCH_NO_BUILD  1 = use build/release as it is
#   BENCH_BUILD_DIR another build tree (implies no build; a Debug/ASan build's figures
#                   mean nothing)
#   BENCH_PG_STATS  1 = print the statements and functions taking the most database time in (b)
#   BENCH_KEEP      1 = keep the work directory (logs, pgbench script) for inspection
#   AC_PG_BIN       PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#
# Exit status: 0 all three targets met, 3 the run completed but a target was missed,
# 1 the benchmark could not run. Not part of tests/run.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
# shellcheck source=tests/bench/stack.sh
. "$ROOT/tests/bench/stack.sh"
BENCH_NAME=intake.sh

DUR=${BENCH_SECONDS:-10}
CLIENTS=${BENCH_CLIENTS:-16}
WARMUP=${BENCH_WARMUP:-2}

# Targets (issue 2).
TARGET_RATIO=1.0
TARGET_HALF_P99_MS=20
TARGET_RSS_MB=50

if ! [[ "$DUR" =~ ^[0-9]+$ ]] || ((DUR < 1 || DUR > 3600)); then
    die "BENCH_SECONDS must be 1..3600"
fi
if ! [[ "$CLIENTS" =~ ^[0-9]+$ ]] || ((CLIENTS < 1 || CLIENTS > 256)); then
    die "BENCH_CLIENTS must be 1..256"
fi
[[ "$WARMUP" =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be a whole number of seconds"

# ---- build; PostgreSQL, bus, intake -----------------------------------------------------------
bench_init intake.sh
command -v "$PG_BIN/pgbench" >/dev/null || die "missing $PG_BIN/pgbench (run deploy/install-deps.sh)"
bench_build
bench_start_pg
bench_keys bus intake
AC_BUS_SOURCES=aftercare/intake=intake bench_start_bus
AC_INTAKE_FOLLOW=none bench_start_intake
URL=$INTAKE_URL

# ---- tokens and reference data ----------------------------------------------------------------
AGENT_TOKEN=$(bench_token agent)
ADMIN_TOKEN=$(bench_token admin)
# Tokens reach intake's cache through NOTIFY: wait until both are accepted.
wait_token "$URL" "/v1/tickets?limit=1" "$AGENT_TOKEN"
wait_token "$URL" "/v1/tickets?limit=1" "$ADMIN_TOKEN"
# POST/PUT with the admin token; prints the body, dies on a non-2xx status.
api() { bench_api "$URL" "$ADMIN_TOKEN" "$@"; } # METHOD PATH JSON

say "creating a customer, a warranty policy and a product"
CUSTOMER_ID=$(api POST /v1/customers \
    '{"kind":"company","name":"Bench Pumps GmbH","tier":"standard","phone":"+49 30 1234567","email":"ops@bench.example"}' |
    json_field id)
api PUT /v1/warranty-policies/HX-200 '{"months":24,"description":"standard pump warranty"}' >/dev/null
PURCHASE=$(date -u -d '-180 days' +%Y-%m-%d)
PRODUCT_ID=$(api POST /v1/products \
    "{\"customer_id\":\"$CUSTOMER_ID\",\"model\":\"HX-200\",\"serial_number\":\"HX200-BENCH-1\",\"purchase_date\":\"$PURCHASE\",\"install_site\":\"Berlin plant 2\",\"region\":\"eu-central\"}" |
    json_field id)

# A ticket-sized request; {{N}} makes every description distinct.
BODY=$WORK/ticket.json
cat >"$BODY" <<EOF
{"channel":"phone","customer_id":"$CUSTOMER_ID","product_id":"$PRODUCT_ID","category":"fault_repair","description":"Bench ticket {{N}}: the pump makes a grinding noise at start-up and the pressure drops below 2 bar after ten minutes of operation; the customer already checked the inlet filter and the power supply.","urgency":"urgent","expedite":false,"contact":{"name":"Jo Bench","phone":"+49 30 7654321","email":"jo@bench.example"}}
EOF

# One run of bench-loadgen; its key=value line is the last line of LOG. (Not in a command
# substitution: a subshell would hide the child from the cleanup.)
loadgen() { # LOG ARGS...
    local log=$1
    shift
    AC_TOKEN=$AGENT_TOKEN run_child timeout -k 10 $((DUR + WARMUP + 60)) "$LOADGEN" \
        --url "$URL/v1/tickets" --body-file "$BODY" --clients "$CLIENTS" "$@" \
        >"$log" 2>"$log.err" || {
        cat "$log.err" >&2
        die "bench-loadgen $* failed"
    }
    if [[ -s "$log.err" ]]; then sed 's/^/    /' "$log.err" >&2; fi
}

# ---- (a) pgbench ceiling ------------------------------------------------------------------------
say "(a) pgbench ceiling: $CLIENTS clients, ${DUR}s, one ticket-sized + one outbox insert per transaction"
psql_super <<'SQL'
DROP SCHEMA IF EXISTS bench_ceiling CASCADE;
CREATE SCHEMA bench_ceiling;
-- Shaped like intake.tickets (no foreign keys: the ceiling is two plain inserts).
CREATE TABLE bench_ceiling.tickets (
    id               uuid PRIMARY KEY,
    seq              bigserial NOT NULL UNIQUE,
    number           text NOT NULL UNIQUE,
    customer_id      uuid NOT NULL,
    product_id       uuid,
    channel          text NOT NULL,
    category         text NOT NULL,
    description      text NOT NULL,
    occurred_at      timestamptz NOT NULL,
    urgency          text NOT NULL,
    expedite         boolean NOT NULL DEFAULT false,
    priority         text NOT NULL,
    status           text NOT NULL DEFAULT 'new',
    warranty_in      boolean NOT NULL,
    warranty_reason  text NOT NULL,
    warranty_expires date,
    contact          jsonb NOT NULL,
    attachments      jsonb NOT NULL DEFAULT '[]',
    version          bigint NOT NULL DEFAULT 1,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL
);
CREATE INDEX ON bench_ceiling.tickets (customer_id, seq);
CREATE INDEX ON bench_ceiling.tickets (status, seq);
-- Shaped like <schema>.outbox (common/ac_outbox.h).
CREATE TABLE bench_ceiling.outbox (
    id         bigserial PRIMARY KEY,
    event_id   uuid NOT NULL UNIQUE,
    topic      text NOT NULL,
    envelope   bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sequence   bigint UNIQUE
);
CREATE SEQUENCE bench_ceiling.numbers;
SQL
# ~400 bytes of text per ticket (description 320 + the rest), ~600 bytes of envelope.
cat >"$WORK/ceiling.sql" <<'SQL'
\set n random(1, 2000000000)
BEGIN;
INSERT INTO bench_ceiling.tickets (id, number, customer_id, product_id, channel, category,
    description, occurred_at, urgency, priority, warranty_in, warranty_reason,
    warranty_expires, contact, created_at, updated_at)
VALUES (gen_random_uuid(),
    'SV-' || to_char(now(), 'YYYYMMDD') || '-' || lpad(nextval('bench_ceiling.numbers')::text, 9, '0'),
    '6f1c2a4e-0d2b-4c43-9a57-3d1c0f7b9e21', '0a8d7f3e-5b64-4b0e-8c21-6e2f9d4c1a77',
    'phone', 'fault_repair', repeat(md5(:n::text), 10), now(), 'urgent', 'P2', true,
    'covered until 2027-03-01', '2027-03-01',
    '{"name": "Jo Bench", "phone": "+49 30 7654321", "email": "jo@bench.example"}',
    now(), now());
INSERT INTO bench_ceiling.outbox (event_id, topic, envelope)
VALUES (gen_random_uuid(), 'ticket.created', decode(repeat(md5(:n::text), 38), 'hex'));
END;
SQL
psql_super -c "CHECKPOINT"
run_child timeout -k 10 $((DUR + 60)) "$PG_BIN/pgbench" -n -c "$CLIENTS" -j 2 -T "$DUR" \
    -f "$WORK/ceiling.sql" "$AC_SUPER_DB" >"$WORK/pgbench.log" 2>&1 || {
    show_log "$WORK/pgbench.log"
    die "pgbench failed"
}
CEILING_TPS=$(awk '/^tps = .*without initial connection/ {print $3}' "$WORK/pgbench.log")
PGBENCH_LAT_MS=$(awk '/^latency average = / {print $4}' "$WORK/pgbench.log")
[[ -n "$CEILING_TPS" ]] || {
    show_log "$WORK/pgbench.log"
    die "no tps in pgbench's output"
}
CEILING_TPS=$(printf '%.1f' "$CEILING_TPS")
psql_super -c "DROP SCHEMA bench_ceiling CASCADE"
say "    pgbench: tps=$CEILING_TPS latency_avg_ms=$PGBENCH_LAT_MS"

# ---- (b) intake, closed loop --------------------------------------------------------------------
if ((WARMUP > 0)); then
    say "    warm-up: ${WARMUP}s of closed-loop load on intake (not measured)"
    loadgen "$WORK/warmup.log" --duration "$WARMUP"
fi
psql_super -c "CHECKPOINT"
say "(b) intake closed loop: $CLIENTS clients, ${DUR}s"
bench_pg_stats_reset
loadgen "$WORK/closed.log" --duration "$DUR"
bench_pg_stats
CLOSED=$(tail -n 1 "$WORK/closed.log")
say "    $CLOSED"
INTAKE_TPS=$(kv "$CLOSED" ok_rps)
CLOSED_P50=$(kv "$CLOSED" p50_ms)
CLOSED_P99=$(kv "$CLOSED" p99_ms)
CLOSED_ERRORS=$(kv "$CLOSED" errors)
CLOSED_CPU=$(kv "$CLOSED" cpu_s)

# ---- (c) intake at half the ceiling -------------------------------------------------------------
HALF_RATE=$(awk -v t="$CEILING_TPS" 'BEGIN { printf "%.1f", t / 2 }')
psql_super -c "CHECKPOINT"
say "(c) intake open loop at half the ceiling: $HALF_RATE req/s, ${DUR}s"
loadgen "$WORK/half.log" --duration "$DUR" --rate "$HALF_RATE"
HALF=$(tail -n 1 "$WORK/half.log")
say "    $HALF"
HALF_P50=$(kv "$HALF" p50_ms)
HALF_P99=$(kv "$HALF" p99_ms)
HALF_ERRORS=$(kv "$HALF" errors)
HALF_MISSED=$(kv "$HALF" missed)
HALF_RPS=$(kv "$HALF" ok_rps)

# ---- (d) peak RSS -------------------------------------------------------------------------------
kill -0 "$INTAKE_PID" 2>/dev/null || {
    show_log "$WORK/intake.log"
    die "aftercare-intake died during the benchmark"
}
HWM_KB=$(awk '/^VmHWM:/ {print $2}' "/proc/$INTAKE_PID/status")
RSS_MB=$(awk -v k="$HWM_KB" 'BEGIN { printf "%.1f", k / 1024 }')
TICKETS_IN_DB=$(psql_super -c "SELECT count(*) FROM intake.tickets" 2>/dev/null || echo "?")

# ---- summary ------------------------------------------------------------------------------------
RATIO=$(awk -v a="$INTAKE_TPS" -v b="$CEILING_TPS" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
verdict() { # CONDITION-AS-AWK
    if awk "BEGIN { exit !($1) }"; then echo PASS; else echo FAIL; fi
}
V_RATIO=$(verdict "$RATIO >= $TARGET_RATIO")
V_HALF=$(verdict "$HALF_P99 < $TARGET_HALF_P99_MS && $HALF_ERRORS == 0 && $HALF_MISSED == 0")
V_RSS=$(verdict "$RSS_MB < $TARGET_RSS_MB")

cat <<EOF

==== intake benchmark (issue 2): ${CLIENTS} clients, ${DUR}s per run, fsync=$PG_FSYNC synchronous_commit=$PG_SYNC_COMMIT, $(nproc) CPUs
pgbench_ceiling_tps=$CEILING_TPS pgbench_latency_avg_ms=$PGBENCH_LAT_MS
intake_tps=$INTAKE_TPS ratio=${RATIO}x p50_ms=$CLOSED_P50 p99_ms=$CLOSED_P99 errors=$CLOSED_ERRORS loadgen_cpu_s=$CLOSED_CPU (closed loop)
half_load_rate=$HALF_RATE half_load_tps=$HALF_RPS half_load_p50_ms=$HALF_P50 half_load_p99_ms=$HALF_P99 errors=$HALF_ERRORS missed=$HALF_MISSED (open loop)
intake_peak_rss_mb=$RSS_MB tickets_in_db=$TICKETS_IN_DB
target ratio >= ${TARGET_RATIO}x: $V_RATIO
target half-load p99 < ${TARGET_HALF_P99_MS} ms: $V_HALF
target intake RSS < ${TARGET_RSS_MB} MB: $V_RSS
EOF

if [[ "$V_RATIO$V_HALF$V_RSS" == PASSPASSPASS ]]; then
    exit 0
fi
exit 3
