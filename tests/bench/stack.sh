# tests/bench/stack.sh — sourced by the benchmark scripts (assignment.sh): the private
# stack a benchmark runs against, and the small shell helpers that go with it.
#
#   . "$ROOT/tests/bench/stack.sh"
#   bench_init NAME                 # WORK dir, EXIT/INT/TERM traps, tool checks
#   bench_build                     # release preset (or BENCH_BUILD_DIR / BENCH_NO_BUILD)
#   bench_start_pg                  # deploy/pg.sh init on a free port, fsync on; psql_super
#   bench_keys bus intake dispatch subscriber   # CURVE keys (aftercarectl keys create)
#   bench_start_bus; bench_start_intake; bench_start_dispatch
#   bench_token ROLE                # prints a new token of that role
#   bench_api URL TOKEN METHOD PATH JSON        # prints the body; dies on non-2xx
#
# Everything started is stopped (SIGTERM, then SIGKILL after 10 s) and WORK removed on exit,
# Ctrl-C included; BENCH_KEEP=1 keeps WORK. A script adds its own processes to BENCH_PIDS
# (stopped first, in reverse order). Variables it sets: WORK, BUILD, PG_BIN, PYTHON, CTL_BIN,
# the AC_*_DB conninfos (pg.env), BUS_PUBLIC, BUS_IN/BUS_OUT/BUS_REPLAY, INTAKE_URL,
# DISPATCH_URL, INTAKE_PID, DISPATCH_PID, BUS_PID.
# shellcheck shell=bash disable=SC2034 # variables are for the sourcing script

BENCH_NAME=bench
BENCH_PIDS=()
BENCH_CHILD= # the measurement running in the foreground (run_child)
BENCH_CLEANED=0
PG_BIN=${AC_PG_BIN:-/usr/lib/postgresql/15/bin}
PYTHON=/usr/bin/python3
WORK=
PG_DIR=

say() { printf '%s  %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    echo "$BENCH_NAME: $*" >&2
    exit 1
}

show_log() { # FILE
    [[ -f "$1" ]] || return 0
    echo "---- last lines of $1" >&2
    tail -n 20 "$1" >&2
}

# Stops a process we started: SIGTERM, then SIGKILL after 10 s.
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
        echo "$BENCH_NAME: $2 did not stop on SIGTERM; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317 # called by the EXIT trap
bench_cleanup() {
    local rc=$? i
    ((BENCH_CLEANED)) && return
    BENCH_CLEANED=1
    trap '' INT TERM
    stop_pid "$BENCH_CHILD" "the running measurement"
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${BENCH_PIDS[i]}" "process ${BENCH_PIDS[i]}"
    done
    stop_pid "${DISPATCH_PID:-}" aftercare-dispatch
    stop_pid "${INTAKE_PID:-}" aftercare-intake
    stop_pid "${BUS_PID:-}" aftercare-bus
    if [[ -n "$PG_DIR" ]]; then
        "$ROOT/deploy/pg.sh" stop "$PG_DIR" >/dev/null 2>&1 || true
    fi
    if [[ -n "$WORK" ]]; then
        if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
            echo "$BENCH_NAME: kept $WORK" >&2
        else
            rm -rf -- "$WORK"
        fi
    fi
    exit "$rc"
}

bench_init() { # NAME
    BENCH_NAME=$1
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    unset AC_PG_NOSYNC # commits must be durable, or the figures mean nothing
    for tool in curl "$PYTHON" "$PG_BIN/psql"; do
        command -v "$tool" >/dev/null || die "missing $tool (run deploy/install-deps.sh)"
    done
    WORK=$(mktemp -d "/tmp/ac-bench-$1.XXXXXX")
    chmod 755 "$WORK" # the postgres user must reach the cluster inside
}

# Runs a long command in the background and waits for it, so that Ctrl-C or SIGTERM runs
# the cleanup at once (bash defers traps while a foreground command runs).
run_child() {
    local rc=0
    "$@" &
    BENCH_CHILD=$!
    wait "$BENCH_CHILD" || rc=$?
    BENCH_CHILD=
    return "$rc"
}

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The value of KEY in a line of key=value pairs ("?" when absent).
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

bench_build() {
    BUILD=${BENCH_BUILD_DIR:-$ROOT/build/release}
    if [[ "${BENCH_NO_BUILD:-0}" != 1 && -z "${BENCH_BUILD_DIR:-}" ]]; then
        say "building the release preset"
        (
            cd "$ROOT"
            if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
                cmake --preset release >/dev/null || exit 1
            fi
            cmake --build --preset release -j"$(nproc)" >/dev/null
        ) || die "building the release preset failed"
    fi
    BUS_BIN=$BUILD/services/bus/aftercare-bus
    INTAKE_BIN=$BUILD/services/intake/aftercare-intake
    DISPATCH_BIN=$BUILD/services/dispatch/aftercare-dispatch
    CTL_BIN=$BUILD/tools/aftercarectl/aftercarectl
    LOADGEN=$BUILD/tests/bench/bench-loadgen
    for bin in "$BUS_BIN" "$INTAKE_BIN" "$DISPATCH_BIN" "$CTL_BIN" "$LOADGEN"; do
        [[ -x "$bin" ]] || die "missing $bin"
    done
}

psql_super() {
    PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At \
        "$AC_SUPER_DB" "$@"
}

bench_start_pg() {
    local port
    port=$(free_port)
    PG_DIR=$WORK/pg
    say "starting PostgreSQL on port $port (fsync on)"
    "$ROOT/deploy/pg.sh" init "$PG_DIR" "$port" "$WORK/pg.env" >"$WORK/pg-init.log" 2>&1 || {
        show_log "$WORK/pg-init.log"
        die "deploy/pg.sh init failed"
    }
    # shellcheck disable=SC1091 # written by pg.sh
    . "$WORK/pg.env"
    PG_FSYNC=$(psql_super -c "SHOW fsync")
    PG_SYNC_COMMIT=$(psql_super -c "SHOW synchronous_commit")
    [[ "$PG_FSYNC" == on && "$PG_SYNC_COMMIT" == on ]] ||
        die "PostgreSQL runs with fsync=$PG_FSYNC synchronous_commit=$PG_SYNC_COMMIT; the benchmark needs both on"
    if [[ -n ${BENCH_PG_LOG_MS:-} ]]; then # diagnosis: log statements slower than this,
        # with the plans of those (nested ones included) in PostgreSQL's log;
        # BENCH_PG_LOG_ANALYZE=on: with actual rows and times
        psql_super -c "LOAD 'auto_explain'" \
            -c "ALTER SYSTEM SET log_min_duration_statement = ${BENCH_PG_LOG_MS}" \
            -c "ALTER SYSTEM SET session_preload_libraries = 'auto_explain'" \
            -c "ALTER SYSTEM SET auto_explain.log_min_duration = ${BENCH_PG_LOG_MS}" \
            -c "ALTER SYSTEM SET auto_explain.log_nested_statements = on" \
            -c "ALTER SYSTEM SET auto_explain.log_analyze = ${BENCH_PG_LOG_ANALYZE:-off}" \
            -c "SELECT pg_reload_conf()" >/dev/null
    fi
    if [[ ${BENCH_PG_STATS:-0} == 1 ]]; then # diagnosis: per-statement totals (bench_pg_stats)
        psql_super -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" >/dev/null
        { "$ROOT/deploy/pg.sh" stop "$PG_DIR" && "$ROOT/deploy/pg.sh" start "$PG_DIR" "$port"; } \
            >>"$WORK/pg-init.log" 2>&1 || die "PostgreSQL did not restart with pg_stat_statements"
        psql_super -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" \
            -c "ALTER SYSTEM SET pg_stat_statements.track = 'all'" \
            -c "ALTER SYSTEM SET track_functions = 'all'" -c "SELECT pg_reload_conf()" >/dev/null
    fi
}

# With BENCH_PG_STATS=1: the statements that took the most database time since the last
# reset, to stderr: those the clients sent (BENCH_PG_STATS_TOPLEVEL=false: the statements
# inside functions instead); then the SQL and PL/pgSQL functions by their own time (self_ms:
# without the functions they called; SQL functions that were inlined do not appear).
bench_pg_stats() {
    [[ ${BENCH_PG_STATS:-0} == 1 ]] || return 0
    psql_super -P pager=off -c "SELECT round(total_exec_time) AS ms, calls,
            round((total_exec_time / calls)::numeric, 3) AS ms_per_call, rows,
            left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query
          FROM pg_stat_statements WHERE toplevel = ${BENCH_PG_STATS_TOPLEVEL:-true}
         ORDER BY total_exec_time DESC LIMIT ${BENCH_PG_STATS_TOP:-25}" >&2
    psql_super -P pager=off -c "SELECT round(self_time) AS self_ms, round(total_time) AS total_ms,
            calls, round((self_time / nullif(calls, 0))::numeric, 3) AS self_ms_per_call,
            schemaname || '.' || funcname AS function
          FROM pg_stat_user_functions
         ORDER BY self_time DESC LIMIT ${BENCH_PG_STATS_TOP:-25}" >&2
}
bench_pg_stats_reset() {
    [[ ${BENCH_PG_STATS:-0} == 1 ]] || return 0
    psql_super -c "SELECT pg_stat_statements_reset()" -c "SELECT pg_stat_reset()" >/dev/null
}

ctl() { AC_ADMIN_DB=$AC_ADMIN_DB "$CTL_BIN" "$@"; }

# Keys: bus (server), intake and dispatch (services), subscriber; written to $WORK/NAME.key.
bench_keys() {
    local name
    say "making CURVE keys with aftercarectl keys create"
    for name in "$@"; do
        case $name in
        bus) BUS_PUBLIC=$(ctl keys create "bench-bus" --kind bus --out "$WORK/bus.key" \
            2>>"$WORK/keys.log") ;;
        intake | dispatch) ctl keys create "bench-$name" --kind service \
            --source "aftercare/$name" --out "$WORK/$name.key" >/dev/null 2>>"$WORK/keys.log" ;;
        *) ctl keys create "bench-$name" --kind subscriber --out "$WORK/$name.key" \
            >/dev/null 2>>"$WORK/keys.log" ;;
        esac || {
            show_log "$WORK/keys.log"
            die "aftercarectl keys create $name failed"
        }
    done
}

bench_start_bus() {
    BUS_IN=tcp://127.0.0.1:$(free_port)
    BUS_OUT=tcp://127.0.0.1:$(free_port)
    BUS_REPLAY=tcp://127.0.0.1:$(free_port)
    say "starting aftercare-bus (input $BUS_IN, output $BUS_OUT)"
    AC_BUS_DB=$AC_BUS_DB AC_BUS_SECRET_KEY_FILE=$WORK/bus.key AC_BUS_INPUT_BIND=$BUS_IN \
        AC_BUS_OUTPUT_BIND=$BUS_OUT AC_BUS_REPLAY_BIND=$BUS_REPLAY \
        AC_BUS_HTTP_PORT="$(free_port)" AC_LOG_LEVEL=warn "$BUS_BIN" 2>"$WORK/bus.log" &
    BUS_PID=$!
}

# Waits for URL/healthz to answer 200 while PID lives.
wait_healthz() { # URL PID NAME LOG
    local i code
    for ((i = 0; ; i++)); do
        kill -0 "$2" 2>/dev/null || {
            show_log "$4"
            die "$3 exited during start-up"
        }
        kill -0 "$BUS_PID" 2>/dev/null || {
            show_log "$WORK/bus.log"
            die "aftercare-bus exited during start-up"
        }
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1/healthz" || true)
        [[ "$code" == 200 ]] && return 0
        ((i < 300)) || {
            show_log "$4"
            die "$3's /healthz did not answer 200 within 30 s (last: $code)"
        }
        sleep 0.1
    done
}

bench_start_intake() {
    local port
    port=$(free_port)
    INTAKE_URL=http://127.0.0.1:$port
    say "starting aftercare-intake on port $port"
    AC_INTAKE_DB=$AC_INTAKE_DB AC_INTAKE_HTTP_PORT=$port AC_BUS_INPUT=$BUS_IN \
        AC_BUS_OUTPUT=$BUS_OUT AC_BUS_REPLAY=$BUS_REPLAY AC_BUS_SERVER_KEY=$BUS_PUBLIC \
        AC_INTAKE_KEY_FILE=$WORK/intake.key AC_LOG_LEVEL=warn "$INTAKE_BIN" \
        2>"$WORK/intake.log" &
    INTAKE_PID=$!
    wait_healthz "$INTAKE_URL" "$INTAKE_PID" aftercare-intake "$WORK/intake.log"
}

bench_start_dispatch() {
    local port
    port=$(free_port)
    DISPATCH_URL=http://127.0.0.1:$port
    say "starting aftercare-dispatch on port $port"
    AC_DISPATCH_DB=$AC_DISPATCH_DB AC_DISPATCH_HTTP_PORT=$port AC_BUS_INPUT=$BUS_IN \
        AC_BUS_OUTPUT=$BUS_OUT AC_BUS_REPLAY=$BUS_REPLAY AC_BUS_SERVER_KEY=$BUS_PUBLIC \
        AC_DISPATCH_KEY_FILE=$WORK/dispatch.key AC_DISPATCH_DB_POOL="${BENCH_DISPATCH_POOL:-4}" \
        AC_LOG_LEVEL="${BENCH_DISPATCH_LOG_LEVEL:-warn}" "$DISPATCH_BIN" 2>"$WORK/dispatch.log" &
    DISPATCH_PID=$!
    wait_healthz "$DISPATCH_URL" "$DISPATCH_PID" aftercare-dispatch "$WORK/dispatch.log"
}

bench_token() { # ROLE
    ctl token create --role "$1" --name "bench-$1-$RANDOM" || die "aftercarectl token create --role $1 failed"
}

# Waits until URL accepts TOKEN (tokens reach the services' caches through NOTIFY).
wait_token() { # URL PATH TOKEN
    local i code
    for ((i = 0; ; i++)); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
            -H "Authorization: Bearer $3" "$1$2" || true)
        [[ "$code" == 200 ]] && return 0
        ((i < 100)) || die "$1 did not accept a new token within 10 s ($code)"
        sleep 0.1
    done
}

bench_api() { # URL TOKEN METHOD PATH JSON
    local out code
    out=$(curl -s -S --max-time 10 -X "$3" -H "Authorization: Bearer $2" \
        -H 'Content-Type: application/json' -d "$5" -w '\n%{http_code}' "$1$4") ||
        die "curl $3 $4 failed"
    code=${out##*$'\n'}
    out=${out%$'\n'*}
    [[ "$code" == 2* ]] || die "$3 $4 answered $code: $out"
    printf '%s\n' "$out"
}
