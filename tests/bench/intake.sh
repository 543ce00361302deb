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
# bus and intake on free ports; create tokens with aftercarectl and one customer, product
# and warranty policy with curl; then
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
#   BENCH_KEEP      1 = keep the work directory (logs, pgbench script) for inspection
#   AC_PG_BIN       PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#
# Exit status: 0 all three targets met, 3 the run completed but a target was missed,
# 1 the benchmark could not run. Not part of tests/run.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
DUR=${BENCH_SECONDS:-10}
CLIENTS=${BENCH_CLIENTS:-16}
WARMUP=${BENCH_WARMUP:-2}
PG_BIN=${AC_PG_BIN:-/usr/lib/postgresql/15/bin}
BUILD=$ROOT/build/release
PYTHON=/usr/bin/python3

# Targets (issue 2).
TARGET_RATIO=1.0
TARGET_HALF_P99_MS=20
TARGET_RSS_MB=50

if ! [[ "$DUR" =~ ^[0-9]+$ ]] || ((DUR < 1 || DUR > 3600)); then
    echo "intake.sh: BENCH_SECONDS must be 1..3600" >&2
    exit 1
fi
if ! [[ "$CLIENTS" =~ ^[0-9]+$ ]] || ((CLIENTS < 1 || CLIENTS > 256)); then
    echo "intake.sh: BENCH_CLIENTS must be 1..256" >&2
    exit 1
fi
[[ "$WARMUP" =~ ^[0-9]+$ ]] || {
    echo "intake.sh: BENCH_WARMUP must be a whole number of seconds" >&2
    exit 1
}

# The ceiling is only meaningful with durable commits.
unset AC_PG_NOSYNC

WORK=
PG_DIR=
BUS_PID=
INTAKE_PID=
CHILD_PID= # the pgbench or bench-loadgen running now
CLEANED=0

say() { printf '%s  %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    echo "intake.sh: $*" >&2
    exit 1
}

# Stops a process we started: SIGTERM, then SIGKILL after 10 s.
# shellcheck disable=SC2317 # called from the EXIT trap
stop_pid() { # PID NAME
    local pid=$1 i
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "intake.sh: $2 did not stop on SIGTERM; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local rc=$?
    ((CLEANED)) && return
    CLEANED=1
    trap '' INT TERM
    stop_pid "$CHILD_PID" "the running measurement"
    stop_pid "$INTAKE_PID" aftercare-intake
    stop_pid "$BUS_PID" aftercare-bus
    if [[ -n "$PG_DIR" ]]; then
        "$ROOT/deploy/pg.sh" stop "$PG_DIR" >/dev/null 2>&1 || true
    fi
    if [[ -n "$WORK" ]]; then
        if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
            echo "intake.sh: kept $WORK" >&2
        else
            rm -rf -- "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a long command in the background and waits for it, so that Ctrl-C or SIGTERM runs
# the cleanup at once instead of after the command (bash defers traps while a foreground
# command runs). Returns the command's status.
run_child() {
    local rc=0
    "$@" &
    CHILD_PID=$!
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=
    return "$rc"
}

# A TCP port on 127.0.0.1 that nobody listens on now.
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The value of KEY in a line of key=value pairs.
kv() { # LINE KEY
    local pair
    for pair in $1; do
        if [[ "$pair" == "$2="* ]]; then
            printf '%s\n' "${pair#*=}"
            return 0
        fi
    done
    echo "?"
}

json_field() { # FIELD  (JSON on stdin)
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

show_log() { # FILE
    [[ -f "$1" ]] || return 0
    echo "---- last lines of $1" >&2
    tail -n 20 "$1" >&2
}

# ---- build -----------------------------------------------------------------------------------
for tool in curl "$PYTHON" "$PG_BIN/pgbench" "$PG_BIN/psql"; do
    command -v "$tool" >/dev/null || die "missing $tool (run deploy/install-deps.sh)"
done
if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
    say "building the release preset"
    cd "$ROOT"
    if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
        cmake --preset release >/dev/null || die "cmake --preset release failed"
    fi
    cmake --build --preset release -j"$(nproc)" >/dev/null || die "cmake --build --preset release failed"
fi
BUS_BIN=$BUILD/services/bus/aftercare-bus
INTAKE_BIN=$BUILD/services/intake/aftercare-intake
CTL_BIN=$BUILD/tools/aftercarectl/aftercarectl
LOADGEN=$BUILD/tests/bench/bench-loadgen
for bin in "$BUS_BIN" "$INTAKE_BIN" "$CTL_BIN" "$LOADGEN"; do
    [[ -x "$bin" ]] || die "missing $bin"
done

WORK=$(mktemp -d /tmp/ac-bench.XXXXXX)
chmod 755 "$WORK" # the postgres user must reach the cluster inside

# ---- PostgreSQL, bus, intake --------------------------------------------------------------------
PG_PORT=$(free_port)
HTTP_PORT=$(free_port)
BUS_IN=$(free_port)
BUS_OUT=$(free_port)
BUS_REPLAY=$(free_port)
BUS_HTTP_PORT=$(free_port)
PG_DIR=$WORK/pg

say "starting PostgreSQL on port $PG_PORT (fsync on)"
"$ROOT/deploy/pg.sh" init "$PG_DIR" "$PG_PORT" "$WORK/pg.env" >"$WORK/pg-init.log" 2>&1 || {
    show_log "$WORK/pg-init.log"
    die "deploy/pg.sh init failed"
}
# shellcheck disable=SC1091 # written by pg.sh
. "$WORK/pg.env"
psql_super() {
    PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At \
        "$AC_SUPER_DB" "$@"
}
PG_FSYNC=$(psql_super -c "SHOW fsync")
PG_SYNC_COMMIT=$(psql_super -c "SHOW synchronous_commit")
[[ "$PG_FSYNC" == on && "$PG_SYNC_COMMIT" == on ]] ||
    die "PostgreSQL runs with fsync=$PG_FSYNC synchronous_commit=$PG_SYNC_COMMIT; the benchmark needs both on"

say "making CURVE keys with aftercarectl keys create"
BUS_PUBLIC=$(AC_ADMIN_DB=$AC_ADMIN_DB "$CTL_BIN" keys create bench-bus --kind bus \
    --out "$WORK/bus.key" 2>"$WORK/keys.log") || {
    show_log "$WORK/keys.log"
    die "aftercarectl keys create --kind bus failed"
}
AC_ADMIN_DB=$AC_ADMIN_DB "$CTL_BIN" keys create bench-intake --kind service \
    --source aftercare/intake --out "$WORK/intake.key" >/dev/null 2>>"$WORK/keys.log" || {
    show_log "$WORK/keys.log"
    die "aftercarectl keys create (intake) failed"
}

say "starting aftercare-bus (input $BUS_IN, output $BUS_OUT)"
AC_BUS_DB=$AC_BUS_DB AC_BUS_SECRET_KEY_FILE=$WORK/bus.key \
    AC_BUS_INPUT_BIND=tcp://127.0.0.1:$BUS_IN AC_BUS_OUTPUT_BIND=tcp://127.0.0.1:$BUS_OUT \
    AC_BUS_REPLAY_BIND=tcp://127.0.0.1:$BUS_REPLAY AC_BUS_HTTP_PORT=$BUS_HTTP_PORT \
    AC_BUS_SOURCES=aftercare/intake=intake AC_LOG_LEVEL=warn "$BUS_BIN" 2>"$WORK/bus.log" &
BUS_PID=$!

say "starting aftercare-intake on port $HTTP_PORT"
AC_INTAKE_DB=$AC_INTAKE_DB AC_INTAKE_HTTP_PORT=$HTTP_PORT AC_BUS_INPUT=tcp://127.0.0.1:$BUS_IN \
    AC_BUS_SERVER_KEY=$BUS_PUBLIC AC_INTAKE_KEY_FILE=$WORK/intake.key \
    AC_LOG_LEVEL=warn "$INTAKE_BIN" 2>"$WORK/intake.log" &
INTAKE_PID=$!
URL=http://127.0.0.1:$HTTP_PORT

for ((i = 0; ; i++)); do
    kill -0 "$INTAKE_PID" 2>/dev/null || {
        show_log "$WORK/intake.log"
        die "aftercare-intake exited during start-up"
    }
    kill -0 "$BUS_PID" 2>/dev/null || {
        show_log "$WORK/bus.log"
        die "aftercare-bus exited during start-up"
    }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/healthz" || true)
    [[ "$code" == 200 ]] && break
    ((i < 300)) || {
        show_log "$WORK/intake.log"
        die "intake's /healthz did not answer 200 within 30 s (last: $code)"
    }
    sleep 0.1
done

# ---- tokens and reference data ----------------------------------------------------------------
AGENT_TOKEN=$(AC_ADMIN_DB=$AC_ADMIN_DB "$CTL_BIN" token create --role agent --name bench-agent) ||
    die "aftercarectl token create --role agent failed"
ADMIN_TOKEN=$(AC_ADMIN_DB=$AC_ADMIN_DB "$CTL_BIN" token create --role admin --name bench-admin) ||
    die "aftercarectl token create --role admin failed"

# POST/PUT with the admin token; prints the body, fails on a non-2xx status.
api() { # METHOD PATH JSON
    local out code
    out=$(curl -s -S --max-time 10 -X "$1" -H "Authorization: Bearer $ADMIN_TOKEN" \
        -H 'Content-Type: application/json' -d "$3" -w '\n%{http_code}' "$URL$2") ||
        die "curl $1 $2 failed"
    code=${out##*$'\n'}
    out=${out%$'\n'*}
    [[ "$code" == 2* ]] || die "$1 $2 answered $code: $out"
    printf '%s\n' "$out"
}

# Tokens reach intake's cache through NOTIFY: wait until both are accepted.
for ((i = 0; ; i++)); do
    a=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "Authorization: Bearer $AGENT_TOKEN" \
        "$URL/v1/tickets?limit=1" || true)
    b=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 -H "Authorization: Bearer $ADMIN_TOKEN" \
        "$URL/v1/tickets?limit=1" || true)
    [[ "$a" == 200 && "$b" == 200 ]] && break
    ((i < 100)) || die "intake did not accept the new tokens within 10 s ($a, $b)"
    sleep 0.1
done

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
loadgen "$WORK/closed.log" --duration "$DUR"
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
