#!/usr/bin/env bash
# `make run`: install what is missing, start the services and Dockyard, serve the API
# in the foreground. Ctrl-C (or `make stop`) stops what this started and nothing else.
source "$(dirname "$0")/lib.sh"

bash "$ROOT/scripts/bootstrap.sh"
bash "$ROOT/scripts/services.sh" up
source "$RUN_DIR/env"
"$VENV/bin/dockyard-admin" register-local >&2
bash "$ROOT/scripts/processes.sh" up --api

bind="${DOCKYARD_BIND:-127.0.0.1:8000}"
if ! wait_for 30 curl -sf "http://$bind/healthz"; then
  log "the API did not come up; see $LOG_DIR/api.log"
  bash "$ROOT/scripts/stop.sh"
  exit 1
fi
wait_for 20 curl -sf "http://$bind/readyz" || log "workers not ready yet; see $LOG_DIR/worker-*.log"

cat <<MSG

  Dockyard is up:   http://$bind/api/v1   (docs: http://$bind/api/docs)
  Admin token:      $DOCKYARD_ADMIN_TOKEN
                    (kept in $STATE_DIR/admin-token unless DOCKYARD_ADMIN_TOKEN is set)
  Try:              curl -H "Authorization: Bearer $DOCKYARD_ADMIN_TOKEN" http://$bind/api/v1/hosts/local/info
  Logs:             $LOG_DIR/
  Stop:             Ctrl-C here, or \`make stop\` from another shell

MSG

trap 'echo; bash "$ROOT/scripts/stop.sh"; exit 0' INT TERM
while pid_alive "$RUN_DIR/api.pid"; do sleep 1; done
log "the API process ended; stopping the rest"
bash "$ROOT/scripts/stop.sh"
