#!/usr/bin/env bash
# Shared paths and helpers for Dockyard's local scripts (sourced, not run).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${DOCKYARD_STATE_DIR:-$ROOT/.state}"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
VENV="$ROOT/.venv"
REGISTRY_ADDR="${DOCKYARD_REGISTRY_ADDR:-127.0.0.1:5000}"
REDIS_PORT="${DOCKYARD_REDIS_PORT:-6379}"
mkdir -p "$RUN_DIR" "$LOG_DIR"

log() { printf '[dockyard] %s\n' "$*" >&2; }

# venv_pip ARGS...: the venv's pip, without the "Location ... is ignored" lines that a pip.conf
# naming absent local indexes adds; pip's own exit status is kept.
venv_pip() { "$VENV/bin/pip" "$@" 2> >(grep -v 'is ignored' >&2); }

# pid_alive FILE: the pid in FILE is a live process.
pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# wait_for SECONDS CMD...: retry CMD until it succeeds or time runs out.
wait_for() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $end ] && return 1
    sleep 0.2
  done
}

# stop_pidfile FILE [SECONDS]: TERM the process, KILL it if it lingers, remove FILE.
stop_pidfile() {
  local file=$1 grace=${2:-20}
  pid_alive "$file" || { rm -f "$file"; return 0; }
  local pid; pid=$(cat "$file")
  kill -TERM "$pid" 2>/dev/null || true
  local end=$((SECONDS + grace))
  while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$file"
}

# secret_file NAME: a random secret kept (0600) in the state folder, made once.
secret_file() {
  local file="$STATE_DIR/$1"
  if [ ! -s "$file" ]; then
    (umask 077; head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > "$file")
  fi
  cat "$file"
}
