#!/usr/bin/env bash
# `make ha-drill`: the failover drill of tests/integration/test_failover.py at full size —
# a burst of DOCKYARD_HA_DRILL_JOBS (default 500) real provisions while the Redis primary,
# an API instance and a whole ops worker are SIGKILLed. Its own sentinels, Redis servers,
# APIs and workers; the engine is `make run`'s. The summary is printed and appended to
# .state/test-drill/log/failover-drill.jsonl.
source "$(dirname "$0")/lib.sh"

bash "$ROOT/scripts/bootstrap.sh"
bash "$ROOT/scripts/services.sh" up
source "$RUN_DIR/env"
cd "$ROOT"
export DOCKYARD_HA_DRILL_JOBS="${DOCKYARD_HA_DRILL_JOBS:-500}"
export DOCKYARD_TEST_STATE_DIR="${DOCKYARD_TEST_STATE_DIR:-$STATE_DIR/test-drill}"
exec "$VENV/bin/pytest" -q -s "tests/integration/test_failover.py::test_a_burst_survives_killing_the_primary_an_ops_worker_and_an_api" "$@"
