#!/usr/bin/env bash
# A private PostgreSQL cluster for `make server BACKEND=postgres` and the tests.
#   scripts/postgres.sh start DIR PORT [DB ...]   create the cluster in DIR on first use, start it on 127.0.0.1:PORT,
#                                                  create the databases (default: mlflow); prints the first one's URI
#   scripts/postgres.sh stop DIR
# It listens on 127.0.0.1 only (no Unix socket) and takes password logins (scram-sha-256) for the user `mlflow`.
# The password is random, written once to DIR/pgpass, libpq's password file: clients set PGPASSFILE=DIR/pgpass,
# so it never appears on a command line or in a URI. DIR also holds data/ and postgres.log.
# PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user, who then owns DIR.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

# The server binaries: on PATH (postgres, initdb, pg_ctl), else the newest Debian/Ubuntu install.
find_bin() {
    local postgres
    postgres=$(command -v postgres || ls -d /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -n 1)
    [ -n "$postgres" ] || die "PostgreSQL is not installed (no postgres on PATH or in" \
        "/usr/lib/postgresql/*/bin); on Debian/Ubuntu: apt-get install postgresql"
    dirname "$(readlink -f "$postgres")"
}

# Run a command as the cluster's owner: the `postgres` user when we are root, else ourselves.
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
    local dir=$1 port=$2 bin; shift 2
    local databases=("${@:-mlflow}")
    bin=$(find_bin)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "as root, PostgreSQL runs as the 'postgres' user, and there is none"
        chown postgres: "$dir"
    fi
    chmod 700 "$dir"
    as_owner test -x "$dir" \
        || die "the postgres user cannot reach $dir (a parent folder is closed to it); pick another (PGDIR=...)"
    export PGPASSFILE="$dir/pgpass"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        local password
        password=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
        (umask 077 && printf '%s\n' "$password" >"$dir/password" \
            && printf '127.0.0.1:*:*:mlflow:%s\n' "$password" >"$PGPASSFILE")
        [ "$(id -u)" != 0 ] || chown postgres: "$dir/password"
        as_owner "$bin/initdb" -D "$dir/data" -U mlflow --pwfile="$dir/password" --auth-host=scram-sha-256 \
            --auth-local=scram-sha-256 --no-locale -E UTF8 >"$dir/initdb.log" 2>&1 \
            || die "initdb failed; see $dir/initdb.log"
        rm -f "$dir/password"
        printf "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n" \
            | as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
    fi
    if as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        port=$(sed -n 4p "$dir/data/postmaster.pid")  # already running: keep its port
    else
        as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "-p $port" -w -t 60 start >/dev/null \
            || die "PostgreSQL did not start on 127.0.0.1:$port; see $dir/postgres.log"
    fi
    local db
    for db in "${databases[@]}"; do
        [[ $db =~ ^[a-z_][a-z0-9_]*$ ]] || die "database name $db: use lower-case letters, digits and _"
        local found
        found=$("$bin/psql" -h 127.0.0.1 -p "$port" -U mlflow -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '$db'")
        if [ -z "$found" ]; then
            "$bin/createdb" -h 127.0.0.1 -p "$port" -U mlflow "$db"
        fi
    done
    echo "postgresql://mlflow@127.0.0.1:$port/${databases[0]}"
}

stop() {
    local dir=$1 bin
    bin=$(find_bin)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
}

case "${1:-}" in
    start) [ $# -ge 3 ] || die "usage: $0 start DIR PORT [DB ...]"; start "$(realpath -m "$2")" "${@:3}" ;;
    stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$(realpath -m "$2")" ;;
    *) die "usage: $0 start DIR PORT [DB ...] | stop DIR" ;;
esac
