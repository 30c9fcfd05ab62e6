#!/usr/bin/env bash
# `make stop`: stop Dockyard's processes and the services Dockyard itself started.
source "$(dirname "$0")/lib.sh"
[ -f "$RUN_DIR/env" ] && bash "$ROOT/scripts/processes.sh" down
bash "$ROOT/scripts/services.sh" down
log "stopped"
