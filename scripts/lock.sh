#!/usr/bin/env bash
# `make lock`: resolve pyproject.toml's dependencies to exact versions with their sha256 and
# write requirements.lock (the service: the image installs it) and requirements-test.lock
# (service + test tools: `make run`, `make test` and CI install it). Run it after changing
# pyproject.toml's dependencies, and commit both files. uv resolves for every platform and
# Python >= 3.11 at once (markers such as redis's `python_full_version < '3.11.3'` are kept),
# so the lock serves this host and the image's Debian python3 alike.
source "$(dirname "$0")/lib.sh"

UV_VERSION=0.13.9
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
if [ "$("$VENV/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  log "installing uv $UV_VERSION into $VENV"
  venv_pip install -q "uv==$UV_VERSION"
fi
cd "$ROOT"
common=(--universal --python-version 3.11 --generate-hashes --quiet --custom-compile-command "make lock")
# --upgrade: a lock made today takes today's releases within pyproject.toml's ranges.
"$VENV/bin/uv" pip compile "${common[@]}" --upgrade pyproject.toml -o requirements.lock
# The test lock is resolved with the service lock as constraints: both agree on every
# package they share, so what the suite tests is what the image runs.
"$VENV/bin/uv" pip compile "${common[@]}" --upgrade --extra test -c requirements.lock \
  pyproject.toml -o requirements-test.lock
log "requirements.lock: $(grep -c '^[a-z0-9]' requirements.lock) packages;" \
    "requirements-test.lock: $(grep -c '^[a-z0-9]' requirements-test.lock)"
