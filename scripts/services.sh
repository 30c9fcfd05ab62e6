#!/usr/bin/env bash
# Start (up) or stop (down) the services Dockyard needs: Redis, a Docker engine and a
# v2 registry. A service that already answers is used as it is and never stopped by us;
# what we start is recorded by a pidfile under $RUN_DIR, and only that is stopped.
# `up` writes $RUN_DIR/env, which the other scripts source.
source "$(dirname "$0")/lib.sh"

PRIVATE_SOCK="$RUN_DIR/docker.sock"

# A RESP command over bash's /dev/tcp, so Redis is probed even without redis-cli.
# redis_says [PASSWORD]: the reply to PING (after AUTH PASSWORD when given).
redis_says() {
  local reply=""
  { exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT"; } 2>/dev/null || return 1
  if [ -n "${1:-}" ]; then
    printf '*2\r\n$4\r\nAUTH\r\n$%s\r\n%s\r\n' "${#1}" "$1" >&3
    read -r -t 2 reply <&3 || true
  fi
  printf 'PING\r\n' >&3
  read -r -t 2 reply <&3 || true
  exec 3>&-
  printf '%s' "$reply"
}
redis_ping() { [[ "$(redis_says "$(redis_password)")" == +PONG* ]]; }
sock_ping() { curl -sf --max-time 3 --unix-socket "$1" http://d/_ping >/dev/null 2>&1; }
registry_ping() { curl -s --max-time 3 -o /dev/null "http://$REGISTRY_ADDR/v2/"; }
redis_password() { secret_file redis-password; }

up_redis() {
  REDIS_OPEN=0
  local reply
  if reply=$(redis_says); then
    if [[ "$reply" == +PONG* ]]; then
      # Somebody's Redis without a password on loopback: usable for local development only
      # (readyz accepts it because make run says so, and only on loopback).
      REDIS_OPEN=1
      log "redis: using the one on 127.0.0.1:$REDIS_PORT (it has no password: dev mode only)"
      return
    fi
    if redis_ping; then log "redis: using ours on 127.0.0.1:$REDIS_PORT"; return; fi
    if [ -z "${DOCKYARD_REDIS_PORT:-}" ] && [ "$REDIS_PORT" -lt 6399 ]; then
      # Somebody else's Redis (another checkout's, say): ours goes on the next port.
      log "redis on 127.0.0.1:$REDIS_PORT is somebody else's; trying $((REDIS_PORT + 1))"
      REDIS_PORT=$((REDIS_PORT + 1))
      up_redis
      return
    fi
    log "redis on 127.0.0.1:$REDIS_PORT wants a password that is not $STATE_DIR/redis-password;"
    log "stop it, or set DOCKYARD_REDIS_PORT to another port"
    exit 1
  fi
  mkdir -p "$STATE_DIR/redis"
  # AOF keeps queued jobs across a Redis restart; noeviction never drops a queued job.
  # The password comes on stdin (a config read from '-'), so no argument list shows it.
  redis-server - --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
    --dir "$STATE_DIR/redis" --appendonly yes --appendfsync everysec \
    --maxmemory-policy noeviction --save "" --daemonize yes \
    --pidfile "$RUN_DIR/redis.pid" --logfile "$LOG_DIR/redis.log" >>"$LOG_DIR/redis.log" 2>&1 <<CONF
requirepass "$(redis_password)"
CONF
  wait_for 15 redis_ping || { log "redis did not start; see $LOG_DIR/redis.log"; exit 1; }
  log "redis: started on 127.0.0.1:$REDIS_PORT (password in $STATE_DIR/redis-password)"
}

engine_url() {
  if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "unix://$PRIVATE_SOCK" ]; then
    if docker version >/dev/null 2>&1; then echo "$DOCKER_HOST"; return; fi
  fi
  if [ -S /var/run/docker.sock ] && sock_ping /var/run/docker.sock; then
    echo "unix:///var/run/docker.sock"; return
  fi
  return 1
}

up_engine() {
  local url
  if url=$(engine_url); then ENGINE_URL=$url; log "docker: using the engine at $url"; return; fi
  ENGINE_URL="unix://$PRIVATE_SOCK"
  if sock_ping "$PRIVATE_SOCK"; then log "docker: private engine already up"; return; fi
  mkdir -p "$STATE_DIR/docker" "$RUN_DIR/docker-exec"
  # A private engine: its own data-root, exec-root, pidfile and socket; system services
  # are left alone.
  setsid dockerd --data-root "$STATE_DIR/docker" --exec-root "$RUN_DIR/docker-exec" \
    --pidfile "$RUN_DIR/dockerd.pid" -H "unix://$PRIVATE_SOCK" \
    >"$LOG_DIR/dockerd.log" 2>&1 < /dev/null &
  wait_for 60 sock_ping "$PRIVATE_SOCK" || { log "dockerd did not start; see $LOG_DIR/dockerd.log"; exit 1; }
  log "docker: started a private engine at $ENGINE_URL"
}

up_registry() {
  if registry_ping; then log "registry: using the one on $REGISTRY_ADDR"; return; fi
  mkdir -p "$STATE_DIR/registry"
  cat > "$RUN_DIR/registry.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE_DIR/registry
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
YML
  setsid docker-registry serve "$RUN_DIR/registry.yml" >"$LOG_DIR/registry.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/registry.pid"
  wait_for 20 registry_ping || { log "registry did not start; see $LOG_DIR/registry.log"; exit 1; }
  log "registry: started on $REGISTRY_ADDR"
}

build_test_image() {
  # No public registry is reachable: the test image is scratch + a static busybox.
  local ctx="$RUN_DIR/busybox-ctx"
  if DOCKER_HOST="$ENGINE_URL" docker image inspect dockyard-test/busybox:latest >/dev/null 2>&1; then
    return
  fi
  mkdir -p "$ctx"
  cp /bin/busybox "$ctx/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["sh"]\n' > "$ctx/Dockerfile"
  DOCKER_HOST="$ENGINE_URL" DOCKER_BUILDKIT=0 docker build -q -t dockyard-test/busybox:latest "$ctx" >/dev/null 2>"$LOG_DIR/test-image.log"
  log "docker: built dockyard-test/busybox:latest"
}

admin_token_file() {  # the bootstrap admin token, kept whole (dy_…) in .state/admin-token
  local token
  token=$(secret_file admin-token)
  case "$token" in
    dy_*) ;;
    *) token="dy_$token"  # a file written before the token was kept whole
       (umask 077; printf '%s' "$token" > "$STATE_DIR/admin-token") ;;
  esac
  printf '%s' "$token"
}

write_env() {
  local secret token
  secret=${DOCKYARD_SECRET_KEY:-$(secret_file secret-key)}
  token=${DOCKYARD_ADMIN_TOKEN:-$(admin_token_file)}
  (umask 077; cat > "$RUN_DIR/env" <<ENV
export DOCKYARD_STATE_DIR="$STATE_DIR"
export DOCKYARD_REDIS_URL="${DOCKYARD_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}"
$(if [ "$REDIS_OPEN" = 1 ]; then echo 'export DOCKYARD_DEV_OPEN_REDIS=1'; \
  else echo "export DOCKYARD_REDIS_PASSWORD_FILE=\"$STATE_DIR/redis-password\""; fi)
export DOCKYARD_SECRET_KEY="$secret"
export DOCKYARD_ADMIN_TOKEN="$token"
export DOCKYARD_LOCAL_ENGINE="$ENGINE_URL"
export DOCKYARD_LOCAL_REGISTRY="http://$REGISTRY_ADDR"
export DOCKER_HOST="$ENGINE_URL"
ENV
  )
}

down() {
  stop_pidfile "$RUN_DIR/registry.pid" 10
  if pid_alive "$RUN_DIR/dockerd.pid"; then
    # Containers of the private engine stop with it; give them its shutdown grace.
    stop_pidfile "$RUN_DIR/dockerd.pid" 40
    log "docker: private engine stopped"
  fi
  if pid_alive "$RUN_DIR/redis.pid"; then
    # TERM makes Redis flush its AOF and exit cleanly.
    stop_pidfile "$RUN_DIR/redis.pid" 20
    log "redis: stopped"
  fi
}

case "${1:-up}" in
  up) up_redis; up_engine; up_registry; build_test_image; write_env ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
