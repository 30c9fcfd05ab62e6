#!/usr/bin/env bash
# Start (up) or stop (down) Dockyard's own processes: Celery workers for the ops and
# query lanes, beat, and (with `up --api`) gunicorn in the background.
# Needs $RUN_DIR/env from services.sh (or DOCKYARD_ENV_FILE). Pidfiles live in $PROC_DIR
# (default $RUN_DIR); logs are $LOG_DIR/$LOG_PREFIX<name>.log (`make ha` runs two sets).
source "$(dirname "$0")/lib.sh"
source "${DOCKYARD_ENV_FILE:-$RUN_DIR/env}"
PROC_DIR="${PROC_DIR:-$RUN_DIR}"
LOG_PREFIX="${LOG_PREFIX:-}"
mkdir -p "$PROC_DIR"
# Celery's own command line minus its REPL (prompt_toolkit, ~8 MiB per process): app/celery_cli.py.
CELERY="$VENV/bin/python -m app.celery_cli -A app.celery_app:celery"
cd "$ROOT"

start_bg() {  # name, command...
  local name=$1; shift
  if pid_alive "$PROC_DIR/$name.pid"; then return; fi
  setsid "$@" >>"$LOG_DIR/$LOG_PREFIX$name.log" 2>&1 < /dev/null &
  echo $! > "$PROC_DIR/$name.pid"
}

up() {
  # Beat runs inside the ops worker (a child it forks, sharing what it loaded) unless
  # DOCKYARD_BEAT=separate; any number of beats may run, only the lease holder sends.
  local beat=() separate=
  case "${DOCKYARD_BEAT:-embedded}" in
    embedded) beat=(-B -s "$PROC_DIR/beat-schedule") ;;
    separate) separate=1 ;;
    *) echo "DOCKYARD_BEAT must be embedded or separate" >&2; exit 2 ;;
  esac
  # ops: prefork, one message per process at a time (acks_late + prefetch 1).
  start_bg worker-ops $CELERY worker -Q engine.ops -n "ops.$LOG_PREFIX$$@%h" -P prefork \
    -c "${DOCKYARD_OPS_CONCURRENCY:-2}" --prefetch-multiplier 1 -l INFO -E "${beat[@]}"
  # query: threads, so a read never waits for a process and clients are shared.
  # One engine connection per thread: the pool is sized to the lane's concurrency.
  start_bg worker-query env DOCKYARD_ENGINE_POOL_SIZE="${DOCKYARD_QUERY_CONCURRENCY:-8}" \
    $CELERY worker -Q engine.query -n "query.$LOG_PREFIX$$@%h" -P threads \
    -c "${DOCKYARD_QUERY_CONCURRENCY:-8}" -l INFO
  if [ -n "$separate" ]; then
    start_bg beat $CELERY beat -s "$PROC_DIR/beat-schedule" -l INFO
  fi
  if [ "${1:-}" = "--api" ]; then
    start_bg api "$VENV/bin/gunicorn" -c "$ROOT/gunicorn.conf.py" wsgi:app
  fi
}

down() {
  for name in api beat worker-query worker-ops; do
    stop_pidfile "$PROC_DIR/$name.pid" 30
  done
}

case "${1:-up}" in
  up) shift || true; up "$@" ;;
  down) down ;;
  *) echo "usage: $0 up [--api] | down" >&2; exit 2 ;;
esac
