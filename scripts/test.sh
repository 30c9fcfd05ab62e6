#!/usr/bin/env bash
# `make test`: the same set-up as `make run`, then the whole suite (unit + integration).
# The suite starts its own API and workers on a separate Redis database.
source "$(dirname "$0")/lib.sh"

bash "$ROOT/scripts/bootstrap.sh"
bash "$ROOT/scripts/services.sh" up
source "$RUN_DIR/env"
cd "$ROOT"
"$VENV/bin/ruff" check --quiet .
exec "$VENV/bin/pytest" "$@"
