#!/usr/bin/env bash
# `make compose-smoke`: build the images, bring docker-compose.yml up for real on the engine
# in $DOCKER_HOST, provision a container through the composed API, check it runs, check no
# secret shows in `docker inspect` of any container of the stack and that Redis wants its
# password and is on a network of its own, and tear everything down again (containers,
# networks, volumes, the images it built, the container it provisioned, the secret files).
# Exits non-zero on any failure. The base image is kept (it is a cache).
#
# It runs beside `make run`: its own compose project, the API on 127.0.0.1:18000, and no
# published Redis or registry ports. DOCKYARD_SMOKE_KEEP_IMAGES=1 keeps the built images.
source "$(dirname "$0")/lib.sh"

PROJECT="${DOCKYARD_SMOKE_PROJECT:-dockyard-smoke}"
API_ADDR="${DOCKYARD_SMOKE_API:-127.0.0.1:18000}"
TAG=smoke
TARGET_PYTHON=3.11.2   # Debian bookworm's python3, which the image runs
WORK="$STATE_DIR/compose-smoke"
SECRETS="$RUN_DIR/compose-secrets-$PROJECT"   # DOCKYARD_SECRETS_DIR of the stack
DOCKYARD_UID=10001                            # the service image's user (Dockerfile)
started=$SECONDS

[ -f "$RUN_DIR/env" ] && source "$RUN_DIR/env"
[ -n "${DOCKER_HOST:-}" ] || { log "DOCKER_HOST is not set (run make run or scripts/services.sh up)"; exit 1; }
docker version >/dev/null 2>&1 || { log "the engine at $DOCKER_HOST does not answer"; exit 1; }
socket="${DOCKER_HOST#unix://}"
[ "$socket" != "$DOCKER_HOST" ] && [ -S "$socket" ] \
  || { log "DOCKER_HOST must be a local unix socket (the workers mount it)"; exit 1; }

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  if ! command -v docker-compose >/dev/null; then
    log "installing docker-compose (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends docker-compose >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }
  fi
  COMPOSE=(docker-compose)
fi
rm -rf "$WORK"
mkdir -p "$WORK/binds"
# A clean environment: compose lets the caller's variables win over --env-file, and the
# shell that ran `make run` exports its own DOCKYARD_* values.
compose() {
  env -i PATH="$PATH" HOME="$HOME" DOCKER_HOST="$DOCKER_HOST" DOCKER_BUILDKIT=0 \
    COMPOSE_DOCKER_CLI_BUILD=0 "${COMPOSE[@]}" -p "$PROJECT" --env-file "$WORK/env" \
    -f "$ROOT/docker-compose.yml" "$@"
}

container=""
cleanup() {
  local status=$?
  set +e
  if [ $status -ne 0 ]; then
    log "FAILED; the stack's last log lines:"
    compose ps >&2
    compose logs --no-color --tail 30 >&2
  fi
  [ -n "$container" ] && docker rm -f "$container" >/dev/null 2>&1
  local rmi=(--rmi all)
  [ "${DOCKYARD_SMOKE_KEEP_IMAGES:-0}" = 1 ] && rmi=()
  compose down -v --remove-orphans "${rmi[@]}" >/dev/null 2>&1
  if [ "${DOCKYARD_SMOKE_KEEP_IMAGES:-0}" != 1 ]; then
    # The build stage (and any earlier smoke build) is left untagged by the classic builder.
    for stage in venv service; do
      docker image ls -q --filter "label=org.dockyard.build-stage=$stage" --filter dangling=true \
        | xargs -r docker rmi >/dev/null 2>&1
    done
  fi
  rm -rf "$WORK" "$SECRETS"
  log "torn down; $((SECONDS - started)) s in all"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "base image"
bash "$ROOT/scripts/debian-base.sh"

# The image installs from a wheelhouse: containers here cannot reach an index, the host can.
# Wheels are resolved for the image's Python, not the host's (markers such as redis's
# `python_full_version < "3.11.3"` differ, and pip evaluates them on the host).
log "wheelhouse for Python $TARGET_PYTHON"
platforms=()
for tag in manylinux_2_36 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_24 \
           manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
mkdir -p "$ROOT/wheels"
rm -f "$ROOT"/wheels/dockyard-*.whl
venv_pip wheel -q --no-deps "$ROOT" -w "$ROOT/wheels"
# The wheels of requirements.lock, each checked against its sha256. pip evaluates markers
# on the host, so the one that depends on the image's older patch release
# (`python_full_version < '3.11.3'`) is dropped here and judged by pip in the image.
sed "s/ ; python_full_version < '3.11.3'//" "$ROOT/requirements.lock" > "$WORK/wheels.lock"
venv_pip download -q --only-binary=:all: --python-version "$TARGET_PYTHON" \
  --implementation cp --abi cp311 "${platforms[@]}" --require-hashes --no-deps \
  -d "$ROOT/wheels" -r "$WORK/wheels.lock"
ls "$ROOT"/wheels/dockyard-*.whl >/dev/null

secret() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n'; }
# The stack's secrets are files (compose secrets), 0600 in a 0700 folder; nothing secret
# goes into the env file, which compose turns into container configuration.
token="dy_$(secret)"
redis_password=$(secret)
rm -rf "$SECRETS"
(umask 077
 mkdir -p "$SECRETS"
 secret > "$SECRETS/secret_key"
 printf '%s' "$token" > "$SECRETS/admin_token"
 printf '%s' "$redis_password" > "$SECRETS/redis_password"
 printf '%s' "$redis_password" > "$SECRETS/redis_server_password")
secret_values=("$(cat "$SECRETS/secret_key")" "$token" "$redis_password")
(umask 077; cat > "$WORK/env" <<ENV
DOCKYARD_SECRETS_DIR=$SECRETS
DOCKYARD_IMAGE=dockyard:$TAG
DOCKYARD_REDIS_IMAGE=dockyard-redis:$TAG
DOCKYARD_REGISTRY_IMAGE=dockyard-registry:$TAG
DOCKYARD_API_PUBLISH=$API_ADDR
DOCKYARD_API_WORKERS=4
DOCKYARD_ENGINE_SOCKET=$socket
DOCKYARD_ENGINE_SOCKET_GID=$(stat -c %g "$socket")
DOCKYARD_BIND_ROOTS=$WORK/binds
DOCKYARD_OPS_STOP_GRACE=30s
ENV
)

log "building the images (compose build)"
build_started=$SECONDS
compose build -q >&2
log "images built in $((SECONDS - build_started)) s: $(docker image ls --format '{{.Repository}}:{{.Tag}}={{.Size}}' \
  | grep ":$TAG=" | tr '\n' ' ')"

# Compose bind-mounts secret files as they are, so each belongs to the user that reads it.
redis_uid=$(docker run --rm --network none --entrypoint id "dockyard-redis:$TAG" -u)
chown "$DOCKYARD_UID:$DOCKYARD_UID" "$SECRETS/secret_key" "$SECRETS/admin_token" "$SECRETS/redis_password"
chown "$redis_uid:$redis_uid" "$SECRETS/redis_server_password"

log "starting the stack (project $PROJECT)"
up_started=$SECONDS
compose up -d >&2

# Every service with a health check must report healthy, and the API must be ready
# (Redis answers and both lanes have a live worker).
all_healthy() {
  local ids states
  ids=$(compose ps -q)
  [ "$(echo "$ids" | grep -c .)" -ge 6 ] || return 1
  # shellcheck disable=SC2086
  states=$(docker inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' $ids)
  echo "$states" > "$WORK/states"
  ! grep -vqE ' running healthy$' <<<"$states"
}
wait_for 240 all_healthy || { log "not healthy in time:"; cat "$WORK/states" >&2; exit 1; }
cat "$WORK/states" >&2
wait_for 60 curl -sf "http://$API_ADDR/readyz" || { log "the API is not ready"; exit 1; }
log "stack healthy in $((SECONDS - up_started)) s"

log "no secret in docker inspect of any container of the stack"
# shellcheck disable=SC2046
docker inspect $(compose ps -q) > "$WORK/inspect.json"
for value in "${secret_values[@]}"; do
  if grep -qF -- "$value" "$WORK/inspect.json"; then
    log "a secret shows in docker inspect of: $("$VENV/bin/python" -c '
import json, sys
print(" ".join(c["Name"] for c in json.load(open(sys.argv[1])) if sys.argv[2] in json.dumps(c)))' \
      "$WORK/inspect.json" "$value")"
    exit 1
  fi
done
grep -q '"DOCKYARD_SECRET_KEY_FILE=/run/secrets/secret_key"' "$WORK/inspect.json" \
  || { log "the services do not read DOCKYARD_SECRET_KEY_FILE"; exit 1; }

log "Redis wants its password and shares a network only with Dockyard's services"
answer=$(compose exec -T redis redis-cli ping 2>&1 || true)
grep -q NOAUTH <<<"$answer" || { log "redis answered without a password: $answer"; exit 1; }
networks_of() {
  docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}' \
    "$(compose ps -q "$1")"
}
! grep -qw "${PROJECT}_redis" <<<"$(networks_of registry)" \
  || { log "the registry is on the Redis network"; exit 1; }
[ "$(networks_of redis)" = "${PROJECT}_redis " ] \
  || { log "redis is on other networks: $(networks_of redis)"; exit 1; }

log "registering host 'local' inside the api container"
compose exec -T api dockyard-admin register-local >&2

if ! docker image inspect dockyard-test/busybox:latest >/dev/null 2>&1; then
  log "building dockyard-test/busybox:latest"
  [ -x /bin/busybox ] || { log "install busybox-static first"; exit 1; }
  mkdir -p "$WORK/busybox"
  cp /bin/busybox "$WORK/busybox/busybox"
  printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nCMD ["sh"]\n' \
    > "$WORK/busybox/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t dockyard-test/busybox:latest "$WORK/busybox" >/dev/null
fi

container="dockyard-smoke-$(secret | head -c 8 | tr 'A-Z' 'a-z')"
request_id="smoke-$(secret | head -c 12)"
log "provisioning $container through the composed API"
code=$(curl -s -o "$WORK/job.json" -w '%{http_code}' -X POST \
  "http://$API_ADDR/api/v1/hosts/local/containers?wait=60" \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -H "X-Request-ID: $request_id" \
  -d "{\"image\": \"dockyard-test/busybox:latest\", \"name\": \"$container\",
       \"command\": [\"sleep\", \"600\"], \"labels\": {\"smoke.project\": \"$PROJECT\"}}")
state=$("$VENV/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("state"))' \
  "$WORK/job.json" 2>/dev/null || true)
[ "$code" = 200 ] && [ "$state" = succeeded ] \
  || { log "provision answered $code: $(cat "$WORK/job.json")"; exit 1; }
[ "$(docker inspect -f '{{.State.Running}}' "$container")" = true ] \
  || { log "$container is not running"; exit 1; }
log "docker inspect: $container is running"

# Dockyard's own containers (labelled dockyard.system) are out of reach even of the admin
# token: no exec, and their environment is redacted in inspect.
api_id=$(compose ps -q api)
code=$(curl -s -o "$WORK/exec.json" -w '%{http_code}' -X POST \
  "http://$API_ADDR/api/v1/hosts/local/containers/$api_id/exec" \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -d '{"cmd": ["true"]}')
grep -q '"rule": *"dockyard-system"' "$WORK/exec.json" && [ "$code" = 403 ] \
  || { log "exec into the api container answered $code: $(cat "$WORK/exec.json")"; exit 1; }
curl -s "http://$API_ADDR/api/v1/hosts/local/containers/$api_id" \
  -H "Authorization: Bearer $token" > "$WORK/api-inspect.json"
if grep -q "$token" "$WORK/api-inspect.json"; then
  log "the api container's inspect shows the admin token"; exit 1
fi
log "OK: the api container is out of reach (exec 403 dockyard-system, inspect redacted)"

# The request id reached the worker's JSON log, and /metrics counted the job.
compose logs --no-color worker-ops > "$WORK/worker-ops.log"
grep -q "\"request_id\": \"$request_id\", \"job_id\": \"[0-9A-Z]*\"" "$WORK/worker-ops.log" \
  || { log "the worker log has no line with request id $request_id"; exit 1; }
curl -sf "http://$API_ADDR/metrics" > "$WORK/metrics"
grep -q '^dockyard_jobs_total{kind="containers.provision",state="succeeded"} 1.0$' "$WORK/metrics" \
  || { log "/metrics did not count the job"; grep '^dockyard_jobs' "$WORK/metrics" >&2; exit 1; }
grep -E '^dockyard_(lane_up|queue_depth)\{' "$WORK/metrics" >&2
log "OK: provisioned through the composed API in $((SECONDS - started)) s"
