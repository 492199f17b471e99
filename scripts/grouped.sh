#!/usr/bin/env bash
# Run a command (a server) in a process group of its own, and end that whole group with this script: on Ctrl-C
# (SIGINT), on SIGTERM (make passing one on, `timeout`, `kill`) and when the script ends any other way. `mlflow
# server` and `mlflow ui` ignore a SIGTERM to their main process and leave their job runner (and its huey
# consumers) up; their group goes down together. `make ui` runs `scripts/grouped.sh COMMAND [ARG...]`;
# scripts/server.sh sources this file for run_grouped and stop_grouped.

grouped_pid=

stop_grouped() {  # SIGTERM the group, SIGKILL what is left of it after 15 s
    [ -n "$grouped_pid" ] || return 0
    kill -TERM -- "-$grouped_pid" 2>/dev/null || { grouped_pid=; return 0; }
    for _ in $(seq 150); do
        kill -0 -- "-$grouped_pid" 2>/dev/null || { grouped_pid=; return 0; }
        sleep 0.1
    done
    kill -KILL -- "-$grouped_pid" 2>/dev/null || true
    grouped_pid=
}

run_grouped() {  # COMMAND [ARG...] in its own process group (job control), waited for; its exit code
    set -m
    "$@" &
    grouped_pid=$!
    set +m
    local code=0
    wait "$grouped_pid" || code=$?
    return "$code"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # executed, not sourced
    set -euo pipefail
    [ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG...]" >&2; exit 2; }
    trap stop_grouped EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    run_grouped "$@"
fi
