#!/usr/bin/env bash
# `make bench`: every issue-17 figure in one run (see docs/benchmarks.md). Makes sure the
# services and the `make run` stack (API, both lanes, beat inside the ops lane) are up, then runs pss (idle
# memory, first, while the stack is idle), provision, list, submit and backup (or the ones
# named as arguments: `bash scripts/bench.sh submit`). Each prints markdown tables and
# records its figures; bench/summary.py then prints one table with a verdict per target and
# writes it, with the machine, the time and what else ran (uptime, top before and after),
# into docs/benchmarks.md. Everything is also kept in $STATE_DIR/bench/results-<UTC time>.md.
# Only loopback addresses are loaded. The stack is used as it runs: after changing the code,
# `make stop` first so that the benchmark measures it.
# Knobs: BENCH_ROUNDS (provision/list rounds, default 20), BENCH_CONTAINERS (list, 200),
# BENCH_DURATION (closed loop s, 30), BENCH_RATE (open loop req/s, 500),
# BENCH_OPEN_DURATION (open loop s, 25), BENCH_RETRIES (re-runs of an overlapped load run, 4),
# DOCKYARD_BENCH_BACKUP_MIB (1024),
# DOCKYARD_BENCH_BACKUP_ROUNDS (3), DOCKYARD_BENCH_QUIET_LIMIT (s to wait for other pytest
# runs before measuring anyway, overlap reported; 1800), BENCH_DOC=0 (leave docs/benchmarks.md).
source "$(dirname "$0")/lib.sh"

bash "$ROOT/scripts/bootstrap.sh"
bash "$ROOT/scripts/services.sh" up
source "$RUN_DIR/env"
bash "$ROOT/scripts/processes.sh" up --api

bind="${DOCKYARD_BIND:-127.0.0.1:8000}"
wait_for 30 curl -sf "http://$bind/readyz" || { log "the API is not ready; see $LOG_DIR/"; exit 1; }
auth="Authorization: Bearer $DOCKYARD_ADMIN_TOKEN"
if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "$auth" "http://$bind/api/v1/hosts/local")" = 404 ]; then
  "$VENV/bin/dockyard-admin" register-local >&2
fi

# hey drives the closed loop and cross-checks the open loop; without it the Python
# generator (bench/loadgen.py) does both.
if ! command -v hey >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  log "installing hey (Debian package) for the load tests"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey >/dev/null 2>&1; } \
    || log "hey is not installable here; bench/loadgen.py is used instead"
fi

export DOCKYARD_BENCH_API="http://$bind"
out_dir="$STATE_DIR/bench"
mkdir -p "$out_dir"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$out_dir/results-$stamp.md"
notes="$out_dir/notes-$stamp.txt"
export DOCKYARD_BENCH_FIGURES="$out_dir/figures-$stamp.jsonl"
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(pss provision list submit backup)
rounds="${BENCH_ROUNDS:-20}"

machine_load() {  # what else is running: load average and the busiest processes
  echo "== $1 ($(date -u '+%Y-%m-%d %H:%M:%S') UTC)"
  uptime
  top -bn1 -w 160 | sed -n '7,15p' | cut -c1-120
  echo "pytest runs: $(pgrep -fc '[b]in/pytest' || true)"
}

cd "$ROOT"
machine_load "before" > "$notes"
status=0
for bench in "${benches[@]}"; do
  case "$bench" in
    pss) args=() ;;
    backup) args=() ;;
    provision) args=(--rounds "$rounds") ;;
    list) args=(--rounds "$rounds" --containers "${BENCH_CONTAINERS:-200}") ;;
    submit) args=(--duration "${BENCH_DURATION:-30}" --rate "${BENCH_RATE:-500}"
                  --open-duration "${BENCH_OPEN_DURATION:-25}" --retries "${BENCH_RETRIES:-4}") ;;
    *) log "unknown benchmark '$bench' (pss, provision, list, submit, backup)"; exit 2 ;;
  esac
  log "running bench/$bench.py ${args[*]}"
  "$VENV/bin/python" -m "bench.$bench" ${args[@]+"${args[@]}"} | tee -a "$out" || status=1
  if [ "$bench" = provision ]; then  # the same without a bind mount: the bind check's share
    log "running bench/provision.py ${args[*]} --no-bind"
    "$VENV/bin/python" -m bench.provision "${args[@]}" --no-bind | tee -a "$out" || status=1
  fi
done
machine_load "after" >> "$notes"
summary=(--figures "$DOCKYARD_BENCH_FIGURES" --notes "$notes" --output "$out"
         --ran "$(IFS=,; echo "${benches[*]}")" --command "make bench${*:+ ($*)}")
[ "${BENCH_DOC:-1}" = 1 ] || summary+=(--no-doc)
"$VENV/bin/python" -m bench.summary "${summary[@]}" | tee -a "$out" || status=1
log "results written to $out"
exit $status
