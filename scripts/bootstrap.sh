#!/usr/bin/env bash
# Install what is missing: Debian packages for services that do not already answer,
# and the project into .venv. Safe to re-run; does nothing when all is in place.
source "$(dirname "$0")/lib.sh"

need=()
redis_answers() { (exec 3<>/dev/tcp/127.0.0.1/"$REDIS_PORT") 2>/dev/null; }
engine_answers() {
  [ -n "${DOCKER_HOST:-}" ] && docker version >/dev/null 2>&1 && return 0
  [ -S /var/run/docker.sock ] && curl -sf --max-time 3 --unix-socket /var/run/docker.sock http://d/_ping >/dev/null
}
registry_answers() { curl -s --max-time 3 -o /dev/null "http://$REGISTRY_ADDR/v2/"; }

command -v redis-server >/dev/null || redis_answers || need+=(redis-server)
command -v dockerd >/dev/null || engine_answers || need+=(docker.io)
command -v docker-registry >/dev/null || registry_answers || need+=(docker-registry)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx httpd || need+=(busybox-static)
command -v curl >/dev/null || need+=(curl)
command -v htpasswd >/dev/null || need+=(apache2-utils)
# sshd for the ssh:// host tests (each runs its own, inside a network namespace).
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v git >/dev/null || need+=(git)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# Headless Chromium and its driver for the browser console test (selenium).
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)

if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Python packages come from the lock (exact versions and their sha256, made by `make lock`),
# so a clean clone installs what CI tested; the project itself goes in editable, no deps.
lock="$ROOT/requirements-test.lock"
stamp="$VENV/.dockyard-installed"
digest=$(cat "$lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
  log "installing Dockyard and its test tools into $VENV (from ${lock##*/})"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  venv_pip install -q --require-hashes -r "$lock"
  venv_pip install -q --no-deps -e "$ROOT"
  venv_pip check >/dev/null || { venv_pip check >&2; exit 1; }
  echo "$digest" > "$stamp"
fi
