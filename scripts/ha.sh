#!/usr/bin/env bash
# `make ha` (up) / `make ha-stop` (down): the highly available topology on this machine, to
# try it and to test against: a Redis primary and a replica and three sentinels (one
# password for all), and two of each Dockyard process — API instances on two ports, workers
# per lane, beats (only the lease holder sends). Everything finds Redis through the
# sentinels. The engine and registry are `make run`'s (services.sh).
source "$(dirname "$0")/lib.sh"

HA_DIR="$STATE_DIR/ha"
PRIMARY_PORT="${DOCKYARD_HA_PRIMARY_PORT:-6401}"
REPLICA_PORT="${DOCKYARD_HA_REPLICA_PORT:-6402}"
SENTINEL_PORTS=(${DOCKYARD_HA_SENTINEL_PORTS:-26401 26402 26403})
API_PORTS=(${DOCKYARD_HA_API_PORTS:-8100 8101})
MASTER="${DOCKYARD_REDIS_MASTER:-dockyard}"

password() { secret_file ha-redis-password; }

redis_conf() {  # port [extra lines]
  cat <<CONF
port $1
bind 127.0.0.1
protected-mode yes
dir $HA_DIR
daemonize yes
pidfile $HA_DIR/redis-$1.pid
logfile $LOG_DIR/ha-redis-$1.log
requirepass "$(password)"
masterauth "$(password)"
appendonly yes
appendfilename "appendonly-$1.aof"
appenddirname "aof-$1"
appendfsync everysec
maxmemory-policy noeviction
save ""
${2:-}
CONF
}

sentinel_conf() {  # port
  cat <<CONF
port $1
bind 127.0.0.1
dir $HA_DIR
daemonize yes
pidfile $HA_DIR/sentinel-$1.pid
logfile $LOG_DIR/ha-sentinel-$1.log
requirepass "$(password)"
sentinel monitor $MASTER 127.0.0.1 $PRIMARY_PORT 2
sentinel auth-pass $MASTER "$(password)"
sentinel down-after-milliseconds $MASTER 2000
sentinel failover-timeout $MASTER 10000
CONF
}

ask() {  # port command...: a redis-cli answer with the password, empty when none
  REDISCLI_AUTH="$(password)" redis-cli -p "$1" "${@:2}" 2>/dev/null || true
}

up() {
  bash "$ROOT/scripts/bootstrap.sh"
  bash "$ROOT/scripts/services.sh" up   # the engine and the registry
  source "$RUN_DIR/env"
  mkdir -p "$HA_DIR"
  # Config files are written once: sentinels rewrite theirs with what they learn.
  [ -f "$HA_DIR/redis-$PRIMARY_PORT.conf" ] || redis_conf "$PRIMARY_PORT" > "$HA_DIR/redis-$PRIMARY_PORT.conf"
  [ -f "$HA_DIR/redis-$REPLICA_PORT.conf" ] || \
    redis_conf "$REPLICA_PORT" "replicaof 127.0.0.1 $PRIMARY_PORT" > "$HA_DIR/redis-$REPLICA_PORT.conf"
  for port in "$PRIMARY_PORT" "$REPLICA_PORT"; do
    pid_alive "$HA_DIR/redis-$port.pid" || redis-server "$HA_DIR/redis-$port.conf"
  done
  for port in "${SENTINEL_PORTS[@]}"; do
    [ -f "$HA_DIR/sentinel-$port.conf" ] || sentinel_conf "$port" > "$HA_DIR/sentinel-$port.conf"
    pid_alive "$HA_DIR/sentinel-$port.pid" || redis-server "$HA_DIR/sentinel-$port.conf" --sentinel
  done
  seen() { [ "$(ask "${SENTINEL_PORTS[0]}" sentinel master "$MASTER" | grep -A1 '^num-other-sentinels$' | tail -1)" = 2 ]; }
  wait_for 30 seen || { log "the sentinels did not find each other; see $LOG_DIR/ha-*.log"; exit 1; }
  log "redis: primary :$PRIMARY_PORT, replica :$REPLICA_PORT, sentinels :${SENTINEL_PORTS[*]} (master '$MASTER')"

  local sentinels
  sentinels=$(printf '127.0.0.1:%s,' "${SENTINEL_PORTS[@]}"); sentinels=${sentinels%,}
  (umask 077; {
    grep -v -e DOCKYARD_REDIS_URL -e DOCKYARD_REDIS_PASSWORD_FILE -e DOCKYARD_DEV_OPEN_REDIS "$RUN_DIR/env"
    echo "export DOCKYARD_REDIS_URL=\"redis://127.0.0.1/0\""
    echo "export DOCKYARD_REDIS_PASSWORD_FILE=\"$STATE_DIR/ha-redis-password\""
    echo "export DOCKYARD_REDIS_SENTINELS=\"$sentinels\""
    echo "export DOCKYARD_REDIS_MASTER=\"$MASTER\""
  } > "$HA_DIR/env")
  (source "$HA_DIR/env"; "$VENV/bin/dockyard-admin" register-local >&2)
  local set=0
  for port in "${API_PORTS[@]}"; do
    set=$((set + 1))
    DOCKYARD_ENV_FILE="$HA_DIR/env" PROC_DIR="$HA_DIR/set$set" LOG_PREFIX="ha$set-" \
      DOCKYARD_BIND="127.0.0.1:$port" bash "$ROOT/scripts/processes.sh" up --api
  done
  for port in "${API_PORTS[@]}"; do
    wait_for 60 curl -sf "http://127.0.0.1:$port/readyz" \
      || { log "the API on :$port is not ready; see $LOG_DIR/ha*-api.log"; exit 1; }
  done
  cat <<MSG

  Dockyard (HA) is up: http://127.0.0.1:${API_PORTS[0]}/api/v1 and http://127.0.0.1:${API_PORTS[1]}/api/v1
  Admin token:         $DOCKYARD_ADMIN_TOKEN
  Redis:               find the primary with
                       REDISCLI_AUTH=\$(cat $STATE_DIR/ha-redis-password) redis-cli -p ${SENTINEL_PORTS[0]} sentinel get-master-addr-by-name $MASTER
  Try a failover:      kill -9 the primary's redis-server; both APIs answer 503 + Retry-After
                       for a few seconds, then go on against the new primary
  Stop:                make ha-stop

MSG
}

down() {
  local set=0
  for _ in "${API_PORTS[@]}"; do
    set=$((set + 1))
    [ -f "$HA_DIR/env" ] && DOCKYARD_ENV_FILE="$HA_DIR/env" PROC_DIR="$HA_DIR/set$set" \
      bash "$ROOT/scripts/processes.sh" down
  done
  for pidfile in "$HA_DIR"/sentinel-*.pid "$HA_DIR"/redis-*.pid; do
    [ -f "$pidfile" ] && stop_pidfile "$pidfile" 20
  done
  log "HA topology stopped (the engine and registry of make run are left as they are)"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
