#!/usr/bin/env bash
# deploy/local.sh — run aftercare on this machine, from a fresh Debian to a working API.
#
#   ./deploy/local.sh
#
# 1. installs the Debian packages that are missing (deploy/install-deps.sh);
# 2. builds the release preset into build/release;
# 3. starts the embedded PostgreSQL in var/pg (deploy/pg.sh; created on the first run,
#    with per-service roles and schemas, passwords in var/aftercare.env);
# 4. on the first run creates an admin API token, kept in var/admin.token, and the CURVE
#    keys of the bus (var/keys/: bus.key, the bus's own; intake.key and dispatch.key,
#    registered as the services aftercare/intake and aftercare/dispatch; admin.key, a
#    subscriber for `aftercarectl events tail`);
# 5. starts the bus, intake and dispatch (logs in var/log/), waits for their /healthz and prints
#    the endpoints, the token and example commands;
# 6. runs until Ctrl-C (or until a service dies), then stops the services and PostgreSQL
#    cleanly. A second run reuses var/: the same data, passwords and token.
#
# Environment (defaults in brackets): AC_PG_PORT [5439], AC_INTAKE_HTTP_ADDR [127.0.0.1],
# AC_INTAKE_HTTP_PORT [8081], AC_DISPATCH_HTTP_PORT [8082] (on the intake address),
# AC_BUS_INPUT_BIND [tcp://127.0.0.1:5570],
# AC_BUS_OUTPUT_BIND [tcp://127.0.0.1:5571], AC_BUS_REPLAY_BIND [tcp://127.0.0.1:5572],
# AC_BUS_INPUT [the input bind, as seen from here]; every other AC_* variable
# (AC_LOG_LEVEL, AC_INTAKE_DB_POOL, ...) is passed on.
set -euo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
ROOT=$PWD
VAR=$ROOT/var
BIN=$ROOT/build/release
ENVFILE=$VAR/aftercare.env
TOKEN_FILE=$VAR/admin.token
KEYS=$VAR/keys

PG_PORT=${AC_PG_PORT:-5439}
HTTP_ADDR=${AC_INTAKE_HTTP_ADDR:-127.0.0.1}
HTTP_PORT=${AC_INTAKE_HTTP_PORT:-8081}
DISPATCH_PORT=${AC_DISPATCH_HTTP_PORT:-8082}
BUS_INPUT_BIND=${AC_BUS_INPUT_BIND:-tcp://127.0.0.1:5570}
BUS_OUTPUT_BIND=${AC_BUS_OUTPUT_BIND:-tcp://127.0.0.1:5571}
BUS_REPLAY_BIND=${AC_BUS_REPLAY_BIND:-tcp://127.0.0.1:5572}

# An endpoint as a client on this machine reaches it: tcp://*:5570 -> tcp://127.0.0.1:5570.
local_endpoint() {
    local e=${1/\*/127.0.0.1}
    printf '%s\n' "${e/0.0.0.0/127.0.0.1}"
}
BUS_INPUT=${AC_BUS_INPUT:-$(local_endpoint "$BUS_INPUT_BIND")}
BUS_OUTPUT=$(local_endpoint "$BUS_OUTPUT_BIND")
BUS_REPLAY=$(local_endpoint "$BUS_REPLAY_BIND")
HTTP_HOST=$HTTP_ADDR
if [[ "$HTTP_HOST" == 0.0.0.0 || "$HTTP_HOST" == '*' ]]; then HTTP_HOST=127.0.0.1; fi
INTAKE_URL=http://$HTTP_HOST:$HTTP_PORT
DISPATCH_URL=http://$HTTP_HOST:$DISPATCH_PORT

say() { printf 'local.sh: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

# ---- one instance at a time --------------------------------------------------------------
mkdir -p "$VAR/log"
chmod 755 "$VAR"
if [[ -f "$VAR/local.pid" ]]; then
    other=$(cat "$VAR/local.pid")
    if [[ "$other" =~ ^[0-9]+$ ]] && kill -0 "$other" 2>/dev/null &&
        grep -q local.sh "/proc/$other/cmdline" 2>/dev/null; then
        die "already running (pid $other); stop it with Ctrl-C (or kill $other) first"
    fi
fi
echo $$ >"$VAR/local.pid"

# ---- clean stop: services first (SIGTERM, then wait), then PostgreSQL -------------------
declare -A PIDS=() # service name -> pid
ORDER=()           # start order; stopped in reverse
STOPPING=0

stop_all() {
    local rc=$? i name pid waited
    ((STOPPING)) && return
    STOPPING=1
    trap '' INT TERM HUP
    trap - EXIT
    if ((${#ORDER[@]})); then say "stopping services"; fi
    for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do
        name=${ORDER[i]}
        pid=${PIDS[$name]}
        kill -TERM "$pid" 2>/dev/null || continue
        for ((waited = 0; waited < 100; waited++)); do # 10 s
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name did not stop within 10 s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [[ -f "$VAR/pg/PG_VERSION" ]]; then
        say "stopping PostgreSQL"
        "$ROOT/deploy/pg.sh" stop "$VAR/pg" || rc=1
    fi
    rm -f "$VAR/local.pid"
    exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---- dependencies and build ----------------------------------------------------------------
"$ROOT/deploy/install-deps.sh"
say "building (release preset)"
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)"

for exe in services/bus/aftercare-bus services/intake/aftercare-intake \
    services/dispatch/aftercare-dispatch tools/aftercarectl/aftercarectl; do
    [[ -x "$BIN/$exe" ]] || die "the build did not produce $BIN/$exe"
done

tcp_listening() { # tcp://HOST:PORT
    local hp=${1#tcp://}
    (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null
}

# Something else on our ports would answer our health checks: refuse to start instead.
for ep in "$BUS_INPUT" "$BUS_OUTPUT" "$BUS_REPLAY" "tcp://$HTTP_HOST:$HTTP_PORT" \
    "tcp://$HTTP_HOST:$DISPATCH_PORT"; do
    if tcp_listening "$ep"; then
        die "${ep#tcp://} is already in use (another aftercare?); free it or choose other ports"
    fi
done

# ---- PostgreSQL ----------------------------------------------------------------------------
first_run=0
[[ -f "$VAR/pg/PG_VERSION" ]] || first_run=1
say "starting PostgreSQL on 127.0.0.1:$PG_PORT (data in var/pg)"
"$ROOT/deploy/pg.sh" init "$VAR/pg" "$PG_PORT" "$ENVFILE"
# Plain assignments (not exported): each service gets only its own connection string.
# shellcheck source=/dev/null
. "$ENVFILE"

# ---- admin token -----------------------------------------------------------------------------
CTL=$BIN/tools/aftercarectl/aftercarectl
if ((first_run)) || [[ ! -s "$TOKEN_FILE" ]]; then
    if ((!first_run)); then
        # The token file is gone but the database is not: replace the lost token.
        AC_ADMIN_DB="$AC_ADMIN_DB" "$CTL" token revoke local-admin >/dev/null 2>&1 || true
    fi
    say "creating the admin token (var/admin.token)"
    out=$(AC_ADMIN_DB="$AC_ADMIN_DB" "$CTL" token create --role admin --name local-admin)
    token=$(grep -o 'act_[0-9a-f]\{64\}' <<<"$out" | head -1) ||
        die "aftercarectl token create printed no token: $out"
    (umask 077 && printf '%s\n' "$token" >"$TOKEN_FILE.new")
    mv -f "$TOKEN_FILE.new" "$TOKEN_FILE"
fi
ADMIN_TOKEN=$(cat "$TOKEN_FILE")

# ---- CURVE keys of the bus ---------------------------------------------------------------------
# Every bus socket is encrypted and authenticated (docs/events.md). A key file that is missing
# is made again; a client key whose file was lost is revoked and replaced. After a reset of
# var/pg (first run) the client keys that still exist are registered again.
mkdir -p "$KEYS"
chmod 700 "$KEYS"
key_public() { sed -n 's/^public-key *= *//p' "$1"; }
ensure_key() { # NAME FILE KEYS-ARGS...
    local name=$1 file=$2
    shift 2
    if [[ ! -s "$file" ]]; then
        rm -f "$file"
        if [[ "$1" != "--kind" || "$2" != bus ]]; then
            AC_ADMIN_DB="$AC_ADMIN_DB" "$CTL" keys revoke "$name" >/dev/null 2>&1 || true
        fi
        say "creating the CURVE key ${file#"$ROOT"/}"
        AC_ADMIN_DB="$AC_ADMIN_DB" "$CTL" keys create "$name" "$@" --out "$file" >/dev/null ||
            die "aftercarectl keys create $name failed"
    elif ((first_run)) && [[ "$1" != "--kind" || "$2" != bus ]]; then
        say "registering the existing key ${file#"$ROOT"/} in the new database"
        AC_ADMIN_DB="$AC_ADMIN_DB" "$CTL" keys allow "$name" --public-key "$(key_public "$file")" \
            "$@" >/dev/null || die "aftercarectl keys allow $name failed"
    fi
}
ensure_key bus "$KEYS/bus.key" --kind bus
ensure_key intake "$KEYS/intake.key" --kind service --source aftercare/intake
ensure_key dispatch "$KEYS/dispatch.key" --kind service --source aftercare/dispatch
ensure_key admin "$KEYS/admin.key" --kind subscriber
BUS_PUBLIC_KEY=$(key_public "$KEYS/bus.key")
[[ ${#BUS_PUBLIC_KEY} -eq 40 ]] || die "var/keys/bus.key has no public-key line"
# the secret that signs customers' plan links (dispatch), made once and kept
LINK_SECRET_FILE=$KEYS/link.secret
if [[ ! -s $LINK_SECRET_FILE ]]; then
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$LINK_SECRET_FILE")
fi

# ---- services --------------------------------------------------------------------------------
start_service() { # NAME ENV... -- ARGV...
    local name=$1 log=$VAR/log/$1.log
    shift
    local envs=()
    while [[ $1 != -- ]]; do
        envs+=("$1")
        shift
    done
    shift
    printf '==== %s starting %s\n' "$(date -u +%FT%TZ)" "$name" >>"$log"
    # A session of its own: Ctrl-C reaches only this script, which then stops the
    # services in reverse order (setsid does not fork here, so $! is the service).
    setsid env "${envs[@]}" "$@" >>"$log" 2>&1 </dev/null &
    PIDS[$name]=$!
    ORDER+=("$name")
}

check_alive() {
    local name
    for name in "${ORDER[@]}"; do
        if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
            say "$name exited during start-up; last lines of var/log/$name.log:"
            tail -n 30 "$VAR/log/$name.log" >&2
            exit 1
        fi
    done
}

say "starting aftercare-bus (input $BUS_INPUT_BIND, output $BUS_OUTPUT_BIND, replay $BUS_REPLAY_BIND)"
start_service bus \
    AC_BUS_INPUT_BIND="$BUS_INPUT_BIND" AC_BUS_OUTPUT_BIND="$BUS_OUTPUT_BIND" \
    AC_BUS_REPLAY_BIND="$BUS_REPLAY_BIND" AC_BUS_DB="$AC_BUS_DB" \
    AC_BUS_SECRET_KEY_FILE="$KEYS/bus.key" -- \
    "$BIN/services/bus/aftercare-bus"
for ((i = 0; i < 100; i++)); do # 10 s
    check_alive
    tcp_listening "$BUS_OUTPUT" && break
    sleep 0.1
done
tcp_listening "$BUS_OUTPUT" || die "aftercare-bus does not listen on $BUS_OUTPUT"

say "starting aftercare-intake ($INTAKE_URL)"
start_service intake \
    AC_INTAKE_DB="$AC_INTAKE_DB" AC_INTAKE_HTTP_ADDR="$HTTP_ADDR" \
    AC_INTAKE_HTTP_PORT="$HTTP_PORT" AC_BUS_INPUT="$BUS_INPUT" AC_BUS_OUTPUT="$BUS_OUTPUT" \
    AC_BUS_REPLAY="$BUS_REPLAY" AC_BUS_SERVER_KEY="$BUS_PUBLIC_KEY" \
    AC_INTAKE_KEY_FILE="$KEYS/intake.key" -- \
    "$BIN/services/intake/aftercare-intake"
healthy=0
for ((i = 0; i < 600; i++)); do # 60 s: the first start applies the migrations
    check_alive
    if curl -fsS -m 2 -o /dev/null "$INTAKE_URL/healthz" 2>/dev/null; then
        healthy=1
        break
    fi
    sleep 0.1
done
((healthy)) || die "intake did not become healthy within 60 s; see var/log/intake.log"

say "starting aftercare-dispatch ($DISPATCH_URL)"
start_service dispatch \
    AC_DISPATCH_DB="$AC_DISPATCH_DB" AC_DISPATCH_HTTP_ADDR="$HTTP_ADDR" \
    AC_DISPATCH_HTTP_PORT="$DISPATCH_PORT" AC_BUS_INPUT="$BUS_INPUT" \
    AC_BUS_OUTPUT="$BUS_OUTPUT" AC_BUS_REPLAY="$BUS_REPLAY" \
    AC_DISPATCH_LINK_SECRET="$(cat "$LINK_SECRET_FILE")" \
    AC_BUS_SERVER_KEY="$BUS_PUBLIC_KEY" AC_DISPATCH_KEY_FILE="$KEYS/dispatch.key" -- \
    "$BIN/services/dispatch/aftercare-dispatch"
healthy=0
for ((i = 0; i < 600; i++)); do # 60 s: the first start applies the migrations
    check_alive
    if curl -fsS -m 2 -o /dev/null "$DISPATCH_URL/healthz" 2>/dev/null; then
        healthy=1
        break
    fi
    sleep 0.1
done
((healthy)) || die "dispatch did not become healthy within 60 s; see var/log/dispatch.log"

cat <<EOF

aftercare is running. Ctrl-C stops everything.

  intake HTTP API   $INTAKE_URL   (/v1/..., /healthz, /metrics)
  dispatch HTTP API $DISPATCH_URL   (/v1/engineers, /v1/tickets/{n}/..., /healthz, /metrics)
  bus input         $BUS_INPUT   (services publish here; XSUB)
  bus output        $BUS_OUTPUT   (subscribe here; XPUB)
  bus replay        $BUS_REPLAY   (missed events by sequence; ROUTER)
  bus public key    $BUS_PUBLIC_KEY   (CURVE: AC_BUS_SERVER_KEY of every client)
  PostgreSQL        127.0.0.1:$AC_PG_PORT, database aftercare (data in var/pg,
                    connection strings in var/aftercare.env)
  logs              var/log/bus.log, var/log/intake.log, var/log/dispatch.log

  admin token       $ADMIN_TOKEN   (also in var/admin.token)
  bus keys          var/keys/ (bus.key, intake.key, dispatch.key, admin.key); ${CTL#"$ROOT"/} keys list

Try, in another terminal:

  export AC_TOKEN=\$(cat var/admin.token) AC_INTAKE_URL=$INTAKE_URL AC_BUS_OUTPUT=$BUS_OUTPUT
  export AC_DISPATCH_URL=$DISPATCH_URL
  export AC_BUS_REPLAY=$BUS_REPLAY AC_CTL_KEY_FILE=var/keys/admin.key
  export AC_BUS_SERVER_KEY='$BUS_PUBLIC_KEY'
  curl -s $INTAKE_URL/healthz
  curl -s -X POST $INTAKE_URL/v1/customers -H "Authorization: Bearer \$AC_TOKEN" \\
       -H 'Content-Type: application/json' \\
       -d '{"kind":"person","name":"Jo Smith","phone":"+49 30 1234567"}'
  curl -s "$INTAKE_URL/v1/tickets?limit=10" -H "Authorization: Bearer \$AC_TOKEN"
  ${CTL#"$ROOT"/} ticket list
  ${CTL#"$ROOT"/} engineer list
  ${CTL#"$ROOT"/} events tail --topic ticket. --json

EOF

# ---- run until Ctrl-C or until a service exits -------------------------------------------------
while true; do
    wait -n || true
    for name in "${ORDER[@]}"; do
        if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
            say "$name exited; last lines of var/log/$name.log:"
            tail -n 30 "$VAR/log/$name.log" >&2
            exit 1
        fi
    done
done
