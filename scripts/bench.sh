#!/usr/bin/env bash
# `make bench`: the issue-3 benchmarks (see docs/benchmarks.md). Makes sure the services and
# the API are up, then runs provision, list and submit (or the ones named as arguments:
# `bash scripts/bench.sh submit`). Each prints a markdown table; all of them are also
# written to $STATE_DIR/bench/results-<UTC time>.md. Only loopback addresses are loaded.
# Knobs: BENCH_ROUNDS (provision/list rounds, default 20), BENCH_CONTAINERS (list, 200),
# BENCH_DURATION (closed loop s, 30), BENCH_RATE (open loop req/s, 500),
# BENCH_OPEN_DURATION (open loop s, 25).
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
out="$out_dir/results-$(date -u +%Y%m%dT%H%M%SZ).md"
benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(provision list submit)
rounds="${BENCH_ROUNDS:-20}"

cd "$ROOT"
status=0
for bench in "${benches[@]}"; do
  case "$bench" in
    provision) args=(--rounds "$rounds") ;;
    list) args=(--rounds "$rounds" --containers "${BENCH_CONTAINERS:-200}") ;;
    submit) args=(--duration "${BENCH_DURATION:-30}" --rate "${BENCH_RATE:-500}"
                  --open-duration "${BENCH_OPEN_DURATION:-25}") ;;
    *) log "unknown benchmark '$bench' (provision, list, submit)"; exit 2 ;;
  esac
  log "running bench/$bench.py ${args[*]}"
  "$VENV/bin/python" -m "bench.$bench" "${args[@]}" | tee -a "$out" || status=1
done
log "results written to $out"
exit $status
