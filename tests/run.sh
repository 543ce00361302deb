#!/usr/bin/env bash
# tests/run.sh — every test of aftercare, on a fresh Debian machine or a developer's.
#
#   ./tests/run.sh
#
# Stages, in order (each is counted; nothing is silently skipped):
#   deps          deploy/install-deps.sh (apt-get when root, otherwise names the packages)
#   configure     cmake --preset dev (Debug, -Werror, ASan+UBSan)     failure = 1 failed
#   format-check  clang-format --dry-run over our sources              1 test
#   build         cmake --build --preset dev -j2 (keeps going after an error, so whatever
#                 compiles is still tested)                            failure = 1 failed
#   clang-tidy    cmake --build --preset dev --target tidy (.clang-tidy, warnings fail)
#                                                                      1 test
#   unit          a scratch PostgreSQL (deploy/pg.sh, port 5449, fsync off) with database
#                 actest cloned from aftercare, exported as AC_TEST_PG_DSN (superuser, Unix
#                 socket); then ctest --preset dev                     ctest's counts;
#                 skipped or disabled tests count as failed
#   system        /usr/bin/python3 -m pytest -q tests/system with AC_BIN_DIR=build/dev; the
#                 fixtures start their own PostgreSQL and daemons      pytest's counts;
#                 errors, skipped and xfailed count as failed
# A stage that cannot run or does not finish adds 1 failed. The last line of the output
# is exactly "N passed, N failed"; the exit status is 0 only when nothing failed.
#
# The whole run is kept under 15 minutes: each stage gets at most what is left of
# AC_TEST_BUDGET_S (default 870 s, counted after deps), and is interrupted past it.
# Temporary files and the scratch PostgreSQL are removed on every exit, Ctrl-C included.
set -uo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." || exit 1
ROOT=$PWD
PYTHON=/usr/bin/python3 # Debian's, with python3-pytest & co. (not a pyenv/venv one)

PASSED=0
FAILED=0
REPORT=() # one line per stage, printed at the end
WORK=
UNIT_PG=
FINISHED=0

note() { printf '\n==== %s\n' "$*"; }
record() { # STAGE PASSED FAILED [DETAIL]
    PASSED=$((PASSED + $2))
    FAILED=$((FAILED + $3))
    REPORT+=("$(printf '  %-13s %4d passed %4d failed  %s' "$1" "$2" "$3" "${4:-}")")
}

# shellcheck disable=SC2317 # called by the EXIT trap
finish() {
    local rc=$?
    ((FINISHED)) && return
    FINISHED=1
    trap '' INT TERM
    if [[ -n "$UNIT_PG" ]]; then
        "$ROOT/deploy/pg.sh" stop "$UNIT_PG" >/dev/null 2>&1 || true
    fi
    if [[ -n "$WORK" ]]; then rm -rf -- "$WORK"; fi
    if ((rc >= 128)); then
        record interrupted 0 1 "signal $((rc - 128))"
    fi
    note "summary"
    printf '%s\n' "${REPORT[@]}"
    printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
    if ((FAILED > 0 || PASSED == 0)); then exit 1; fi
    exit 0
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- deps ----------------------------------------------------------------------------------
note "deps"
if ! "$ROOT/deploy/install-deps.sh"; then
    record deps 0 1 "deploy/install-deps.sh failed: nothing else can run"
    exit 1
fi

BUDGET_S=${AC_TEST_BUDGET_S:-870}
DEADLINE=$((SECONDS + BUDGET_S))
remaining() { echo $((DEADLINE - SECONDS)); }

# Runs "$@" with at most CAP seconds (and never past the deadline), output shown and kept
# in LOG. Returns the command's status; 124 when it was interrupted for time.
run_timed() { # CAP LOG CMD...
    local cap=$1 log=$2 left
    shift 2
    left=$(remaining)
    ((left < cap)) && cap=$left
    if ((cap <= 0)); then
        echo "out of time: not started" | tee "$log"
        return 124
    fi
    # --foreground keeps the command in our process group, so Ctrl-C reaches it directly;
    # SIGINT lets pytest run its fixtures' teardown.
    timeout --foreground -s INT -k 30 "$cap" "$@" 2>&1 | tee "$log"
    return "${PIPESTATUS[0]}"
}

WORK=$(mktemp -d /tmp/ac-tests.XXXXXX)
chmod 755 "$WORK" # the postgres user must reach the scratch cluster inside

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export AC_PG_NOSYNC=1 # every cluster started here or by the fixtures: fast, disposable

# ---- configure, format-check, build ----------------------------------------------------------
note "configure (cmake --preset dev)"
if ! run_timed 300 "$WORK/configure.log" cmake --preset dev; then
    record configure 0 1 "cmake --preset dev failed: nothing else can run"
    record format-check 0 1 "not run"
    record clang-tidy 0 1 "not run"
    record unit 0 1 "not run"
    record system 0 1 "not run"
    exit 1
fi

note "format-check"
if run_timed 120 "$WORK/format.log" cmake --build --preset dev --target format-check; then
    record format-check 1 0
else
    record format-check 0 1 "run: cmake --build --preset dev --target format"
fi

note "build (cmake --build --preset dev -j2)"
keep_going=()
case "$(sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' build/dev/CMakeCache.txt)" in
Ninja*) keep_going=(-- -k 0) ;;
*Makefiles) keep_going=(-- -k) ;;
esac
daemons_built=1
if run_timed 900 "$WORK/build.log" cmake --build --preset dev -j2 "${keep_going[@]}"; then
    record build 0 0 "ok"
else
    record build 0 1 "compile or link errors above (everything that compiled is tested)"
    # The system tests need only the daemons and aftercarectl.
    if ! run_timed 300 "$WORK/build-daemons.log" cmake --build --preset dev -j2 --target \
        aftercare-bus aftercare-intake aftercarectl >/dev/null; then
        daemons_built=0
    fi
fi

note "clang-tidy"
if run_timed 400 "$WORK/tidy.log" cmake --build --preset dev --target tidy; then
    record clang-tidy 1 0
else
    grep -E "(warning|error):" "$WORK/tidy.log" | head -20 >&2
    record clang-tidy 0 1 "run: cmake --build --preset dev --target tidy"
fi

# ---- unit tests: a scratch PostgreSQL, then ctest ------------------------------------------------
note "unit tests (ctest --preset dev)"
pg_port=${AC_TEST_PG_PORT:-5449}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for ((p = pg_port; p > pg_port - 10; p--)); do
    if ! port_busy "$p"; then
        pg_port=$p
        break
    fi
done
unset AC_TEST_PG_DSN
UNIT_PG=$WORK/pg
if "$ROOT/deploy/pg.sh" init "$UNIT_PG" "$pg_port" "$WORK/pg.env" >"$WORK/pg.log" 2>&1 &&
    /usr/lib/postgresql/15/bin/psql -X -q -v ON_ERROR_STOP=1 \
        "host=$UNIT_PG port=$pg_port dbname=postgres user=postgres" \
        -c 'CREATE DATABASE actest TEMPLATE aftercare' >>"$WORK/pg.log" 2>&1; then
    # The bootstrap's roles, and schemas auth (with auth.tokens) and intake, are there too.
    export AC_TEST_PG_DSN="host=$UNIT_PG port=$pg_port dbname=actest user=postgres"
    echo "AC_TEST_PG_DSN=$AC_TEST_PG_DSN"
else
    cat "$WORK/pg.log"
    record unit-pg 0 1 "the scratch PostgreSQL did not start; database tests will fail"
fi

run_timed 480 "$WORK/ctest.log" ctest --preset dev
ctest_rc=$?
summary=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' \
    "$WORK/ctest.log" | tail -1)
if [[ "$summary" =~ ([0-9]+)\ tests?\ failed\ out\ of\ ([0-9]+) ]]; then
    u_failed=${BASH_REMATCH[1]}
    u_total=${BASH_REMATCH[2]}
    # Listed under "The following tests did not run:". ctest counts a skipped test as
    # passed and leaves a disabled one out of the total; both count as failed here.
    u_skipped=$(grep -cE '^[[:space:]]+[0-9]+ - .* \(Skipped\)$' "$WORK/ctest.log")
    u_disabled=$(grep -cE '^[[:space:]]+[0-9]+ - .* \(Disabled\)$' "$WORK/ctest.log")
    u_passed=$((u_total - u_failed - u_skipped))
    detail=""
    if ((u_skipped + u_disabled > 0)); then
        detail="$((u_skipped + u_disabled)) skipped or disabled (counted as failed)"
    fi
    if ((u_total + u_disabled == 0)); then
        record unit 0 1 "no unit tests were found"
    else
        record unit "$u_passed" $((u_failed + u_skipped + u_disabled)) "$detail"
    fi
elif grep -q 'No tests were found' "$WORK/ctest.log"; then
    record unit 0 1 "no unit tests were found"
else
    # Interrupted (time) or crashed: count what finished, plus 1 for the stage.
    u_passed=$(grep -cE '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .* Passed' "$WORK/ctest.log")
    u_failed=$(grep -cE '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .*(\*\*\*|Not Run|Failed|Timeout)' \
        "$WORK/ctest.log")
    record unit "$u_passed" $((u_failed + 1)) "ctest did not finish (exit $ctest_rc)"
fi

"$ROOT/deploy/pg.sh" stop "$UNIT_PG" >/dev/null 2>&1 || true
UNIT_PG=
unset AC_TEST_PG_DSN

# ---- system tests: pytest against the real daemons ---------------------------------------------
note "system tests (pytest tests/system)"
if ((!daemons_built)); then
    record system 0 1 "not run: aftercare-bus, aftercare-intake or aftercarectl did not build"
    exit 1
fi
AC_BIN_DIR=$ROOT/build/dev run_timed 100000 "$WORK/pytest.log" \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/system
py_rc=$?
# The closing line, e.g. "3 failed, 40 passed, 1 skipped, 2 errors in 81.20s (0:01:21)".
summary=$(grep -E '(passed|failed|errors?|skipped|xfailed|xpassed|no tests ran).* in [0-9.]+s' \
    "$WORK/pytest.log" | tail -1)
count() { # WORD...: sum of "N WORD" in $summary
    local n=0 w
    for w in "$@"; do
        if [[ "$summary" =~ ([0-9]+)\ $w([ ,]|$) ]]; then n=$((n + BASH_REMATCH[1])); fi
    done
    echo "$n"
}
s_passed=$(count passed xpassed)
s_failed=$(count failed error errors)
s_skipped=$(count skipped xfailed)
detail=""
((s_skipped > 0)) && detail="$s_skipped skipped/xfailed (counted as failed)"
s_failed=$((s_failed + s_skipped))
case $py_rc in
0 | 1)
    if [[ -z "$summary" ]]; then
        s_failed=$((s_failed + 1))
        detail="no pytest summary line (exit $py_rc)"
    elif ((py_rc == 1 && s_failed == 0)); then
        s_failed=1
        detail="pytest reported failure (exit 1)"
    fi
    ;;
5)
    s_failed=$((s_failed + 1))
    detail="no system tests were collected"
    ;;
124 | 130)
    s_failed=$((s_failed + 1))
    detail="interrupted: out of time"
    ;;
*)
    s_failed=$((s_failed + 1))
    detail="pytest could not run to the end (exit $py_rc)"
    ;;
esac
record system "$s_passed" "$s_failed" "$detail"
exit 0
