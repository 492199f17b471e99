#!/usr/bin/env bash
# `make server`: an MLflow tracking server on HOST:PORT (127.0.0.1:5000) with its artifacts in STORE_DIR/mlartifacts.
#   BACKEND=sqlite (default)  runs and metrics in STORE_DIR/mlflow.db
#   BACKEND=postgres          in a private PostgreSQL cluster in PGDIR on 127.0.0.1:PGPORT (scripts/postgres.sh),
#                             started with the server and stopped with it; its database `optuna` is for tune's
#                             studies (-P storage=postgresql+psycopg2://mlflow@HOST:PGPORT/optuna)
#   AUTH=true                 MLflow's basic-auth app: every request needs a user and password; users live in
#                             STORE_DIR/mlflow-auth.db. The first start creates the admin user
#                             (MLFLOW_AUTH_ADMIN_USERNAME, default admin) with the password in
#                             MLFLOW_AUTH_ADMIN_PASSWORD, which it then needs.
# Arguments go on to `mlflow server` (e.g. --workers 1). STORE_DIR defaults to the repository.
set -euo pipefail

die() { echo "error: $*" >&2; exit 2; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-5000}
BACKEND=${BACKEND:-sqlite}
AUTH=${AUTH:-false}
STORE_DIR=$(realpath -m "${STORE_DIR:-$REPO}")
PGDIR=$(realpath -m "${PGDIR:-$STORE_DIR/pgdata}")
PGPORT=${PGPORT:-5433}

mkdir -p "$STORE_DIR"
args=(--host "$HOST" --port "$PORT" --artifacts-destination "$STORE_DIR/mlartifacts")

case "$AUTH" in
    true)
        auth_db="$STORE_DIR/mlflow-auth.db"
        password=${MLFLOW_AUTH_ADMIN_PASSWORD:-}
        if [ ! -f "$auth_db" ] && [ -z "$password" ]; then
            die "AUTH=true: set MLFLOW_AUTH_ADMIN_PASSWORD (12 characters or more) for the admin user" \
                "this first start creates"
        fi
        if [ -n "$password" ] && { [ ${#password} -lt 12 ] || [ "$password" = password1234 ]; }; then
            die "MLFLOW_AUTH_ADMIN_PASSWORD: use 12 characters or more, and not MLflow's old default password1234"
        fi
        if [ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" ]; then  # ours; the password stays in the environment, not on disk
            export MLFLOW_AUTH_CONFIG_PATH="$STORE_DIR/mlflow-auth.ini"
            printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///%s\nadmin_username = %s\n' \
                "$auth_db" "${MLFLOW_AUTH_ADMIN_USERNAME:-admin}" >"$MLFLOW_AUTH_CONFIG_PATH"
        fi
        # The UI's forms need a CSRF key shared by the workers; a fresh one per start is enough for them.
        MLFLOW_FLASK_SERVER_SECRET_KEY=${MLFLOW_FLASK_SERVER_SECRET_KEY:-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}
        export MLFLOW_FLASK_SERVER_SECRET_KEY
        args+=(--app-name basic-auth) ;;
    false) ;;
    *) die "AUTH=$AUTH: use true or false" ;;
esac

# The server runs in a process group of its own (scripts/grouped.sh), which goes down with this script: on
# Ctrl-C, on SIGTERM (make passes one on; `timeout` sends one) and on any other end, then PostgreSQL stops.
source "$REPO/scripts/grouped.sh"
postgres_up=false
cleanup() {
    stop_grouped
    if $postgres_up && [ -f "$PGDIR/data/postmaster.pid" ]; then "$REPO/scripts/postgres.sh" stop "$PGDIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

case "$BACKEND" in
    sqlite)
        run_grouped "$PYTHON" -m mlflow server "${args[@]}" --backend-store-uri "sqlite:///$STORE_DIR/mlflow.db" "$@" ;;
    postgres)
        postgres_up=true  # set first: a start interrupted half-way is stopped too
        uri=$("$REPO/scripts/postgres.sh" start "$PGDIR" "$PGPORT" mlflow optuna)  # optuna: tune's study storage
        uri="postgresql+psycopg2://${uri#postgresql://}"  # SQLAlchemy 2.1 would pick psycopg 3; we ship psycopg2
        export PGPASSFILE="$PGDIR/pgpass"  # libpq (psycopg2) reads the password from here
        echo "PostgreSQL: $uri (data in $PGDIR; psql needs PGPASSFILE=$PGPASSFILE)"
        echo "tune's study storage: -P storage=${uri%/mlflow}/optuna (with PGPASSFILE=$PGPASSFILE)"
        run_grouped "$PYTHON" -m mlflow server "${args[@]}" --backend-store-uri "$uri" "$@" ;;
    *) die "BACKEND=$BACKEND: use sqlite or postgres" ;;
esac
