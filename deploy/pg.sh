#!/usr/bin/env bash
# deploy/pg.sh — the embedded PostgreSQL of deploy/local.sh and of the test fixtures.
#
#   deploy/pg.sh init   DATADIR PORT ENVFILE   create (first time) or start a cluster
#   deploy/pg.sh start  DATADIR PORT           start it if it is not running
#   deploy/pg.sh stop   DATADIR                fast shutdown; quiet when not running
#   deploy/pg.sh status DATADIR                pg_ctl status (exit 0 running, 3 stopped,
#                                              4 no cluster there)
#
# init on an empty or missing DATADIR runs initdb, starts the server and applies
# deploy/pg-bootstrap.sql with fresh random passwords, then writes ENVFILE (mode 600) with
# one KEY="value" line each:
#
#   AC_PG_PORT="5439"
#   AC_PG_DATA="/abs/DATADIR"
#   AC_ADMIN_DB="host=127.0.0.1 port=5439 dbname=aftercare user=ac_admin password=<hex>"
#   AC_INTAKE_DB="host=127.0.0.1 port=5439 dbname=aftercare user=ac_intake password=<hex>"
#   AC_BUS_DB="host=127.0.0.1 port=5439 dbname=aftercare user=ac_bus password=<hex>"
#   AC_DISPATCH_DB="host=127.0.0.1 port=5439 dbname=aftercare user=ac_dispatch password=<hex>"
#   AC_SUPER_DB="host=/abs/DATADIR port=5439 dbname=aftercare user=postgres"
#
# init on an existing cluster reads the passwords back from ENVFILE (it fails when ENVFILE
# is missing), starts the server when it is not running, re-applies the bootstrap (it is
# idempotent) and rewrites ENVFILE, so a changed PORT takes effect everywhere.
#
# Services log in over TCP on 127.0.0.1 with a password (scram-sha-256). The superuser
# "postgres" has no password and is reached only through the Unix socket, which lives in
# DATADIR (mode 0700): only the cluster's owner and root can use it.
#
# When run as root, the cluster belongs to the "postgres" user (initdb and pg_ctl refuse
# to run as root) and every directory above DATADIR must let that user through: pg.sh adds
# o+x where it is missing and says so. Otherwise the cluster belongs to the caller.
#
# Environment: AC_PG_NOSYNC=1 (tests) runs initdb --no-sync and turns fsync,
# synchronous_commit and full_page_writes off — fast, and unsafe for real data.
# AC_PG_BIN overrides /usr/lib/postgresql/15/bin.
set -euo pipefail

PG_BIN=${AC_PG_BIN:-/usr/lib/postgresql/15/bin}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BOOTSTRAP_SQL=$HERE/pg-bootstrap.sql

die() {
    echo "pg.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '3,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Absolute path, without requiring it to exist. Refuses characters that would need
# quoting in a libpq connection string or in ENVFILE.
abs_path() {
    local p
    p=$(realpath -m -- "$1")
    [[ "$p" =~ ^[A-Za-z0-9_./+:@,-]+$ ]] ||
        die "unsupported path '$p': use letters, digits and _ . / + : @ , - only"
    printf '%s\n' "$p"
}

check_port() {
    if ! [[ "$1" =~ ^[0-9]+$ ]] || (("$1" < 1024 || "$1" > 65535)); then
        die "bad port '$1' (1024..65535)"
    fi
}

# The user that owns (or will own) the cluster.
cluster_user() {
    if ((EUID != 0)); then
        id -un
    elif [[ -d "$1" ]] && [[ "$(stat -c %U "$1")" != root ]]; then
        stat -c %U "$1"
    else
        echo postgres
    fi
}

# Run a PostgreSQL program as the cluster's owner, from a directory it can enter.
as_owner() {
    local user=$1
    shift
    if ((EUID == 0)); then
        (cd / && runuser -u "$user" -- "$@")
    else
        (cd / && "$@")
    fi
}

# As root: make every ancestor of $1 traversable by $2.
ensure_traversable() {
    local dir=$1 user=$2 parent
    ((EUID == 0)) || return 0
    parent=$(dirname "$dir")
    while [[ "$parent" != / ]]; do
        if ! runuser -u "$user" -- test -x "$parent" 2>/dev/null; then
            echo "pg.sh: chmod o+x $parent (so that $user can reach $dir)" >&2
            chmod o+x "$parent"
        fi
        parent=$(dirname "$parent")
    done
}

is_running() { # DATADIR USER
    as_owner "$2" "$PG_BIN/pg_ctl" status -D "$1" >/dev/null 2>&1
}

# Port of the running postmaster (line 4 of postmaster.pid).
running_port() {
    sed -n 4p "$1/postmaster.pid" 2>/dev/null || true
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Settings we own, rewritten at every start; postgresql.conf includes this file last.
# (Use ALTER SYSTEM for local changes: postgresql.auto.conf overrides both.)
write_conf() { # DATADIR PORT USER
    local datadir=$1 port=$2 user=$3 tmp
    tmp=$(mktemp "$datadir/aftercare.conf.XXXXXX")
    {
        echo "# Written by deploy/pg.sh at every start; use ALTER SYSTEM for your own settings."
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$datadir'"
        echo "unix_socket_permissions = 0700"
        echo "max_connections = 200"
        echo "shared_buffers = 128MB"
        echo "password_encryption = scram-sha-256"
        echo "logging_collector = on"
        echo "log_directory = 'log'"
        echo "log_filename = 'postgresql-%a.log'"
        echo "log_truncate_on_rotation = on"
        echo "log_rotation_age = 1d"
        echo "log_rotation_size = 0"
        echo "log_line_prefix = '%m [%p] %q%u@%d '"
        if [[ "${AC_PG_NOSYNC:-0}" == 1 ]]; then
            echo "# AC_PG_NOSYNC=1: for tests only, a crash may lose or corrupt data"
            echo "fsync = off"
            echo "synchronous_commit = off"
            echo "full_page_writes = off"
        fi
    } >"$tmp"
    chmod 600 "$tmp"
    if ((EUID == 0)); then chown "$user:" "$tmp"; fi
    mv -f "$tmp" "$datadir/aftercare.conf"
    if ! grep -q "^include_if_exists = 'aftercare.conf'" "$datadir/postgresql.conf"; then
        printf "\n# aftercare (deploy/pg.sh)\ninclude_if_exists = 'aftercare.conf'\n" \
            >>"$datadir/postgresql.conf"
    fi
}

show_logs() {
    local datadir=$1 f
    # shellcheck disable=SC2012 # our own file names: no odd characters
    for f in "$datadir/pg_ctl.log" "$(ls -t "$datadir"/log/*.log 2>/dev/null | head -1)"; do
        [[ -n "$f" && -f "$f" ]] || continue
        echo "---- last lines of $f" >&2
        tail -n 20 "$f" >&2
    done
}

cmd_start() { # DATADIR PORT
    local datadir port user rport
    datadir=$(abs_path "$1")
    port=$2
    check_port "$port"
    [[ -f "$datadir/PG_VERSION" ]] || die "no cluster in $datadir (run: pg.sh init)"
    user=$(cluster_user "$datadir")
    if is_running "$datadir" "$user"; then
        rport=$(running_port "$datadir")
        [[ "$rport" == "$port" ]] ||
            die "the cluster in $datadir is running on port $rport, not $port: stop it first"
        return 0
    fi
    # Unix socket paths are limited to 107 bytes.
    ((${#datadir} + 10 + ${#port} <= 107)) ||
        die "$datadir is too long for a Unix socket path: use a shorter directory"
    if port_in_use "$port"; then
        die "port $port on 127.0.0.1 is already in use by another program"
    fi
    ensure_traversable "$datadir" "$user"
    write_conf "$datadir" "$port" "$user"
    if ! as_owner "$user" "$PG_BIN/pg_ctl" start -D "$datadir" -l "$datadir/pg_ctl.log" \
        -w -t 60 >/dev/null; then
        show_logs "$datadir"
        die "PostgreSQL in $datadir did not start"
    fi
}

cmd_stop() { # DATADIR
    local datadir user
    datadir=$(abs_path "$1")
    [[ -f "$datadir/PG_VERSION" ]] || return 0
    user=$(cluster_user "$datadir")
    is_running "$datadir" "$user" || return 0
    if ! as_owner "$user" "$PG_BIN/pg_ctl" stop -D "$datadir" -m fast -w -t 60 >/dev/null; then
        echo "pg.sh: fast shutdown timed out; shutting down immediately" >&2
        as_owner "$user" "$PG_BIN/pg_ctl" stop -D "$datadir" -m immediate -w -t 30 >/dev/null
    fi
}

cmd_status() { # DATADIR
    local datadir user
    datadir=$(abs_path "$1")
    if [[ ! -f "$datadir/PG_VERSION" ]]; then
        echo "pg.sh: no cluster in $datadir"
        return 4
    fi
    user=$(cluster_user "$datadir")
    as_owner "$user" "$PG_BIN/pg_ctl" status -D "$datadir"
}

random_password() {
    od -An -tx1 -N24 /dev/urandom | tr -d ' \n'
}

# Applies pg-bootstrap.sql through the Unix socket as the superuser. The passwords go
# in on stdin, never on a command line.
bootstrap() { # DATADIR PORT ADMIN_PW INTAKE_PW BUS_PW DISPATCH_PW
    local datadir=$1 port=$2
    {
        printf '\\set admin_password %s\n\\set intake_password %s\n\\set bus_password %s\n' \
            "$3" "$4" "$5"
        printf '\\set dispatch_password %s\n' "$6"
        cat "$BOOTSTRAP_SQL"
    } | PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
        -h "$datadir" -p "$port" -U postgres -d postgres -f - >/dev/null
}

write_envfile() { # ENVFILE DATADIR PORT ADMIN_PW INTAKE_PW BUS_PW DISPATCH_PW
    local envfile=$1 datadir=$2 port=$3 tmp
    local tcp="host=127.0.0.1 port=$port dbname=aftercare"
    mkdir -p "$(dirname "$envfile")"
    tmp=$(umask 077 && mktemp "$envfile.XXXXXX")
    {
        echo "AC_PG_PORT=\"$port\""
        echo "AC_PG_DATA=\"$datadir\""
        echo "AC_ADMIN_DB=\"$tcp user=ac_admin password=$4\""
        echo "AC_INTAKE_DB=\"$tcp user=ac_intake password=$5\""
        echo "AC_BUS_DB=\"$tcp user=ac_bus password=$6\""
        echo "AC_DISPATCH_DB=\"$tcp user=ac_dispatch password=$7\""
        echo "AC_SUPER_DB=\"host=$datadir port=$port dbname=aftercare user=postgres\""
    } >"$tmp"
    chmod 600 "$tmp"
    mv -f "$tmp" "$envfile"
}

# Password of ROLE from a DSN line of ENVFILE.
envfile_password() { # ENVFILE VAR
    local line
    line=$(grep -E "^$2=" "$1" | tail -1) || true
    [[ "$line" =~ password=([0-9A-Za-z]+) ]] || die "$1 has no password in $2"
    printf '%s\n' "${BASH_REMATCH[1]}"
}

# EXIT trap of a first init: remove the half-made cluster so that init can run again.
INIT_PENDING=
init_abandon() {
    if [[ -n "$INIT_PENDING" ]]; then
        cmd_stop "$INIT_PENDING" || true
        rm -rf -- "$INIT_PENDING"
    fi
}

cmd_init() { # DATADIR PORT ENVFILE
    local datadir port envfile user admin_pw intake_pw bus_pw dispatch_pw
    datadir=$(abs_path "$1")
    port=$2
    envfile=$(realpath -m -- "$3")
    check_port "$port"
    [[ -r "$BOOTSTRAP_SQL" ]] || die "missing $BOOTSTRAP_SQL"
    [[ -x "$PG_BIN/initdb" ]] ||
        die "no PostgreSQL 15 in $PG_BIN (run deploy/install-deps.sh)"

    if [[ -f "$datadir/PG_VERSION" ]]; then
        [[ -f "$envfile" ]] ||
            die "$datadir holds a cluster but $envfile (its passwords) is missing:" \
                "restore it, or remove $datadir to start afresh"
        admin_pw=$(envfile_password "$envfile" AC_ADMIN_DB)
        intake_pw=$(envfile_password "$envfile" AC_INTAKE_DB)
        bus_pw=$(envfile_password "$envfile" AC_BUS_DB)
        # an env file written before dispatch existed: its password is made now
        if grep -qE "^AC_DISPATCH_DB=" "$envfile"; then
            dispatch_pw=$(envfile_password "$envfile" AC_DISPATCH_DB)
        else
            dispatch_pw=$(random_password)
        fi
        cmd_start "$datadir" "$port"
        bootstrap "$datadir" "$port" "$admin_pw" "$intake_pw" "$bus_pw" "$dispatch_pw" ||
            die "bootstrap of $datadir failed"
        write_envfile "$envfile" "$datadir" "$port" "$admin_pw" "$intake_pw" "$bus_pw" "$dispatch_pw"
        return 0
    fi

    if [[ -d "$datadir" ]] && [[ -n "$(ls -A "$datadir")" ]]; then
        die "$datadir is not empty and holds no cluster: refusing to touch it"
    fi
    if port_in_use "$port"; then
        die "port $port on 127.0.0.1 is already in use by another program"
    fi
    user=$(cluster_user "$datadir")
    mkdir -p "$datadir"
    chmod 700 "$datadir"
    if ((EUID == 0)); then chown "$user:" "$datadir"; fi
    ensure_traversable "$datadir" "$user"

    # From here on, a failure removes the half-made cluster so that init can run again.
    INIT_PENDING=$datadir
    trap init_abandon EXIT

    local initdb_args=(-D "$datadir" -U postgres -E UTF8 --locale=C.UTF-8
        --auth-local=trust --auth-host=scram-sha-256 --no-instructions)
    if [[ "${AC_PG_NOSYNC:-0}" == 1 ]]; then initdb_args+=(--no-sync); fi
    local log
    if ! log=$(as_owner "$user" "$PG_BIN/initdb" "${initdb_args[@]}" 2>&1); then
        printf '%s\n' "$log" >&2
        die "initdb failed in $datadir"
    fi

    cmd_start "$datadir" "$port"
    admin_pw=$(random_password)
    intake_pw=$(random_password)
    bus_pw=$(random_password)
    dispatch_pw=$(random_password)
    bootstrap "$datadir" "$port" "$admin_pw" "$intake_pw" "$bus_pw" "$dispatch_pw" ||
        die "bootstrap of $datadir failed"
    write_envfile "$envfile" "$datadir" "$port" "$admin_pw" "$intake_pw" "$bus_pw" "$dispatch_pw"
    INIT_PENDING=
    trap - EXIT
}

(($# >= 1)) || usage
cmd=$1
shift
case "$cmd" in
init)
    (($# == 3)) || usage
    cmd_init "$@"
    ;;
start)
    (($# == 2)) || usage
    cmd_start "$@"
    ;;
stop)
    (($# == 1)) || usage
    cmd_stop "$@"
    ;;
status)
    (($# == 1)) || usage
    cmd_status "$@"
    ;;
-h | --help | help) usage ;;
*) usage ;;
esac
