#!/usr/bin/env bash
# deploy/install-deps.sh — install the Debian packages aftercare needs to build, run and
# test, and nothing else. Idempotent: when everything is present it only asks dpkg and
# returns (well under a second); apt-get update runs only when something is missing.
#
# As root it installs with apt-get; otherwise it prints the apt-get command that would
# install the missing packages and exits 1.
set -euo pipefail

packages=(
    # build
    build-essential cmake pkg-config
    libzmq3-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
    libev-dev libpq-dev libmicrohttpd-dev libjansson-dev uuid-dev libssl-dev
    libcurl4-openssl-dev clang-format clang-tidy
    # unit tests
    libcmocka-dev
    # embedded PostgreSQL (deploy/pg.sh) and the system tests
    postgresql-15 postgresql-contrib
    python3-pytest python3-zmq python3-protobuf python3-psycopg2 python3-requests
    # deploy/local.sh waits for /healthz with curl; the image's healthchecks use it too
    curl
)

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    # "ii " = installed; anything else (absent, half-configured, removed) is missing.
    if [[ "$status" != ii* ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    exit 0
fi

if ((EUID != 0)); then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: as root, run:" >&2
    echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
