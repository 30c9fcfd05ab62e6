"""Container operations on one engine (``docker run/ps/inspect/exec/top/stats/rm/…``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import docker
import requests
from docker.types import Healthcheck, LogConfig, Mount

from app.core.errors import ConflictError, EngineError, NotFoundError, QueryTimeoutError
from app.engine import guard
from app.engine.event_times import parse_event_time
from app.engine.images import ensure_image
from app.security.auth import Principal
from app.security.policy import SCOPE_LABEL, Policy

logger = logging.getLogger(__name__)

MANAGED_LABEL = "dockyard.managed"
JOB_LABEL = "dockyard.job"
_NANO = 1_000_000_000
_LOG_LIMIT_BYTES = 8 << 20


class ProvisionFailedError(EngineError):
    """The container was created but did not reach the state asked for."""

    slug, title = "provision-failed", "The container did not start as asked"


# -- reads ----------------------------------------------------------------------------------

def list_containers(client: docker.DockerClient, *, all: bool = False, limit: int | None = None,
                    latest: bool = False, name: str | None = None, labels: list[str] | None = None,
                    status: str | None = None, ancestor: str | None = None) -> list[dict[str, Any]]:
    """``docker ps``: one engine call, no per-container inspect."""
    filters: dict[str, Any] = {}
    if name:
        filters["name"] = f"^/{name}$"  # the engine matches names by regex; this is exact
    if labels:
        filters["label"] = labels
    if status:
        filters["status"] = status
    if ancestor:
        filters["ancestor"] = ancestor
    rows = client.api.containers(all=all or bool(status), limit=limit or -1, latest=latest,
                                 filters=filters or None)
    return [_summary(row) for row in rows]


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    names = [n.lstrip("/") for n in row.get("Names") or []]
    return {
        "id": row["Id"], "name": names[0] if names else "", "names": names,
        "image": row.get("Image", ""), "image_id": row.get("ImageID", ""),
        "command": row.get("Command", ""), "created": row.get("Created", 0),
        "state": row.get("State", ""), "status": row.get("Status", ""),
        "ports": [{"container_port": p.get("PrivatePort"), "protocol": p.get("Type"),
                   "host_ip": p.get("IP"), "host_port": p.get("PublicPort")}
                  for p in row.get("Ports") or []],
        "labels": row.get("Labels") or {},
    }


def inspect_container(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    """``docker inspect`` by id, unique id prefix or name."""
    return client.api.inspect_container(ref)


def container_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.api.inspect_container(name)
        return True
    except docker.errors.NotFound:
        return False


def container_logs(client: docker.DockerClient, ref: str, *, tail: str = "all",
                   since: str | None = None, until: str | None = None,
                   timestamps: bool = False) -> str:
    """``docker logs`` (stdout and stderr interleaved), bounded to the last 8 MiB."""
    client.api.inspect_container(ref)  # a clean 404 for an unknown container
    raw = client.api.logs(ref, stdout=True, stderr=True, timestamps=timestamps,
                          tail=tail if tail == "all" else int(tail),
                          since=time_arg(since), until=time_arg(until))
    return raw[-_LOG_LIMIT_BYTES:].decode("utf-8", errors="replace")


def time_arg(value: str | None) -> Any:
    """A docker time argument: Unix seconds or an RFC 3339 timestamp (None passes through)."""
    if value in (None, ""):
        return None
    try:
        return int(float(value))
    except ValueError:
        from datetime import datetime
        return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- lifecycle ------------------------------------------------------------------------------

def start_container(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    client.api.start(ref)
    return _state(client, ref)


def stop_container(client: docker.DockerClient, ref: str, timeout: int | None) -> dict[str, Any]:
    client.api.stop(ref, timeout=timeout)
    return _state(client, ref)


def restart_container(client: docker.DockerClient, ref: str, timeout: int | None) -> dict[str, Any]:
    client.api.restart(ref, timeout=timeout)
    return _state(client, ref)


def kill_container(client: docker.DockerClient, ref: str, signal: str) -> dict[str, Any]:
    client.api.kill(ref, signal=signal)
    return _state(client, ref)


def pause_container(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    client.api.pause(ref)
    return _state(client, ref)


def unpause_container(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    client.api.unpause(ref)
    return _state(client, ref)


def remove_container(client: docker.DockerClient, ref: str, force: bool, volumes: bool) -> dict[str, Any]:
    info = client.api.inspect_container(ref)
    client.api.remove_container(info["Id"], force=force, v=volumes)
    return {"id": info["Id"], "name": info["Name"].lstrip("/"), "removed": True}


def _state(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    info = client.api.inspect_container(ref)
    state = info["State"]
    return {"id": info["Id"], "name": info["Name"].lstrip("/"), "state": state["Status"],
            "exit_code": state.get("ExitCode"), "health": (state.get("Health") or {}).get("Status")}


# -- provision ------------------------------------------------------------------------------

ProgressFn = Callable[[int | None, int | None, str, str], None]


def create_kwargs(spec: dict[str, Any], job_id: str, scope: str = "*") -> dict[str, Any]:
    """Translate a validated spec into ``create_container`` arguments.

    Only fields named here reach the engine, so nothing in a request can be smuggled
    into the HostConfig. ``scope`` is the creating token's host scope, kept as a label so
    that later calls know whose container it is.
    """
    port_bindings: dict[str, list[tuple[str, int | None] | int | None]] = {}
    exposed = []
    for port in spec.get("ports") or []:
        key = f"{port['container_port']}/{port['protocol']}"
        exposed.append((port["container_port"], port["protocol"]))
        binding = (port["host_ip"] or "", port["host_port"] or "") if port["host_ip"] else \
            (port["host_port"] or None)
        port_bindings.setdefault(key, []).append(binding)
    mounts = [
        Mount(target=v["target"], source=v.get("source"), type=v["type"], read_only=v["read_only"])
        for v in spec.get("volumes") or []
    ]
    restart = spec.get("restart_policy")
    host_config: dict[str, Any] = {
        "port_bindings": port_bindings or None,
        "publish_all_ports": spec.get("publish_all", False),
        "mounts": mounts or None,
        "volumes_from": spec.get("volumes_from") or None,
        "restart_policy": {"Name": restart["name"],
                           "MaximumRetryCount": restart["maximum_retry_count"]} if restart else None,
        "mem_limit": spec.get("memory"),
        "nano_cpus": int(spec["cpus"] * _NANO) if spec.get("cpus") else None,
        "network_mode": spec.get("network"),
        "cap_drop": spec.get("cap_drop") or None,
        "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
    }
    # Fields the policy may allow (admin exceptions) are passed only when asked for.
    for field, arg in (("privileged", "privileged"), ("cap_add", "cap_add"),
                       ("devices", "devices"), ("sysctls", "sysctls"),
                       ("security_opt", "security_opt"), ("pid_mode", "pid_mode"),
                       ("ipc_mode", "ipc_mode"), ("uts_mode", "uts_mode"),
                       ("userns_mode", "userns_mode"), ("cgroupns", "cgroupns")):
        if spec.get(field):
            host_config[arg] = spec[field]
    labels = {**(spec.get("labels") or {}), MANAGED_LABEL: "true", JOB_LABEL: job_id,
              SCOPE_LABEL: scope}
    kwargs: dict[str, Any] = {
        "image": spec["image"], "name": spec.get("name"), "command": spec.get("command"),
        "entrypoint": spec.get("entrypoint"), "environment": spec.get("env") or None,
        "labels": labels, "ports": exposed or None, "hostname": spec.get("hostname"),
        "user": spec.get("user"), "working_dir": spec.get("workdir"), "detach": True,
        "healthcheck": _healthcheck(spec.get("healthcheck")),
        "host_config": {k: v for k, v in host_config.items() if v is not None},
    }
    return kwargs


def _healthcheck(spec: dict[str, Any] | None) -> Healthcheck | None:
    if not spec:
        return None
    test = spec["test"]
    if test and test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        test = ["CMD", *test]

    def nanos(seconds: float | None) -> int | None:
        return int(seconds * _NANO) if seconds is not None else None

    return Healthcheck(test=test, interval=nanos(spec.get("interval")),
                       timeout=nanos(spec.get("timeout")), retries=spec.get("retries"),
                       start_period=nanos(spec.get("start_period")))


def find_by_job(client: docker.DockerClient, job_id: str) -> dict[str, Any] | None:
    """The container an earlier delivery of this job created, if any."""
    rows = client.api.containers(all=True, filters={"label": f"{JOB_LABEL}={job_id}"})
    return rows[0] if rows else None


def provision_container(client: docker.DockerClient, spec: dict[str, Any], job_id: str, *,
                        caller: Principal, policy: Policy,
                        auth: dict[str, str] | None = None,
                        progress: ProgressFn | None = None,
                        checkpoint: Callable[[], None] = lambda: None,
                        redelivered: bool = True) -> dict[str, Any]:
    """``docker run -d``: pull as the policy says, create, start, wait; clean up on failure.

    What the spec refers to on the engine (network, named volumes, volumes_from, bind
    sources) is judged before the create, and the created container's own mounts and
    config before it starts (``app.engine.guard``), for ``caller`` under ``policy``.
    A redelivered job adopts the container its earlier delivery made, so a provision runs
    at most one container per job; only a redelivery (``redelivered``: the job was already
    running when this delivery took it) looks for one. ``checkpoint`` is called between
    steps and while waiting; it raises to abandon the provision (e.g. on cancel), which
    removes the container.

    Engine calls for a fresh named container: the image check, create (its 409 is the name
    check), the inspect the guard judges, start, the wait's inspects (the last one is the
    result).

    Raises:
        ConflictError: the name is taken and ``replace`` is false.
        PolicyViolationError: the spec refers to something the policy refuses; nothing is left.
        ProvisionFailedError: the container did not start or become healthy; it was removed.
    """
    def step(message: str, done: int) -> None:
        if progress:
            progress(done, 4, "steps", message)

    earlier = find_by_job(client, job_id) if redelivered else None
    if earlier is not None:
        logger.info("job %s adopts container %s", job_id, earlier["Id"][:12])
        try:
            guard.check_created(client, earlier["Id"], spec, caller, policy)
            return _finish(client, earlier["Id"], spec, adopted=True, checkpoint=checkpoint)
        except BaseException:
            _discard(client, earlier["Id"])
            raise

    step("pulling image" if spec.get("pull") != "never" else "checking image", 0)
    ensure_image(client, spec["image"], spec.get("pull", "missing"), auth, progress)
    checkpoint()
    guard.check_references(client, spec, caller, policy)
    step("creating container", 1)
    displaced = _displace(client, spec, job_id, caller, policy)
    try:
        created = client.api.create_container(**_with_host_config(
            client, create_kwargs(spec, job_id, caller.scope)))
    except docker.errors.APIError as exc:
        _restore(client, displaced, spec.get("name"))
        if exc.status_code == 409 and spec.get("name") and not displaced:
            raise name_taken(spec["name"]) from None
        raise
    except BaseException:
        _restore(client, displaced, spec.get("name"))
        raise
    container_id = created["Id"]
    try:
        guard.check_created(client, container_id, spec, caller, policy)
        result = _finish(client, container_id, spec, adopted=False, step=step,
                         checkpoint=checkpoint)
    except BaseException:
        _discard(client, container_id)
        _restore(client, displaced, spec.get("name"))
        raise
    if displaced:
        _discard(client, displaced["id"])
    return result


def _with_host_config(client: docker.DockerClient, kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(kwargs)
    kwargs["host_config"] = client.api.create_host_config(**kwargs["host_config"])
    kwargs.pop("detach", None)
    return kwargs


def name_taken(name: str) -> ConflictError:
    """The 409 of a provision whose name is taken (the API's own check says the same)."""
    return ConflictError(f"container name '{name}' is already in use; pass replace: true to "
                         f"replace it", name=name)


def _displace(client: docker.DockerClient, spec: dict[str, Any], job_id: str, caller: Principal,
              policy: Policy) -> dict[str, Any] | None:
    """Set aside the container holding the name when replacing.

    Without ``replace`` nothing is looked up: the create's own 409 is the name check.
    Replacing removes the old container, so the caller must be one who may remove it.
    """
    name = spec.get("name")
    if not name or not spec.get("replace"):
        return None
    try:
        old = client.api.inspect_container(name)
    except docker.errors.NotFound:
        return None
    guard.require_access(client, old["Id"], caller, "remove", policy)
    was_running = old["State"]["Running"]
    if was_running:
        client.api.stop(old["Id"], timeout=10)
    client.api.rename(old["Id"], f"{name}-replaced-{job_id[-8:].lower()}")
    return {"id": old["Id"], "was_running": was_running}


def _restore(client: docker.DockerClient, displaced: dict[str, Any] | None, name: str | None) -> None:
    """Put a replaced container back as it was after a failed replacement."""
    if not displaced or not name:
        return
    try:
        client.api.rename(displaced["id"], name)
        if displaced["was_running"]:
            client.api.start(displaced["id"])
    except docker.errors.APIError:
        logger.warning("could not restore replaced container %s", displaced["id"][:12], exc_info=True)


def _discard(client: docker.DockerClient, container_id: str) -> None:
    try:
        client.api.remove_container(container_id, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError:
        logger.warning("could not remove failed container %s", container_id[:12], exc_info=True)


def _finish(client: docker.DockerClient, container_id: str, spec: dict[str, Any], *,
            adopted: bool, step: Callable[[str, int], None] | None = None,
            checkpoint: Callable[[], None] = lambda: None) -> dict[str, Any]:
    info = None
    if spec.get("start", True):
        if step:
            step("starting container", 2)
        # A container this delivery created has never run; an adopted one may have.
        if not adopted or not client.api.inspect_container(container_id)["State"]["Running"]:
            client.api.start(container_id)
        wait_for = spec.get("wait_for", "running")
        if wait_for != "none":
            if step:
                step(f"waiting for {wait_for}", 3)
            info = _wait_for(client, container_id, wait_for, spec.get("wait_timeout", 60),
                             checkpoint)
    # The wait's last inspect already shows the container as it was found ready.
    return describe_container(info or client.api.inspect_container(container_id),
                              adopted=adopted)


def _wait_for(client: docker.DockerClient, container_id: str, condition: str, timeout: float,
              checkpoint: Callable[[], None]) -> dict[str, Any]:
    """Poll until ``condition`` holds; answers the inspect that found it holding."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        checkpoint()
        info = client.api.inspect_container(container_id)
        state = info["State"]
        if not state["Running"] and state["Status"] in ("exited", "dead"):
            raise ProvisionFailedError(
                f"container exited with code {state.get('ExitCode')}"
                + (f": {state['Error']}" if state.get("Error") else "")
                + _last_log_line(client, container_id))
        health = (state.get("Health") or {}).get("Status")
        if condition == "running" and state["Running"]:
            return info
        if condition == "healthy":
            if health is None:
                raise ProvisionFailedError("wait_for 'healthy' needs a healthcheck in the spec or image")
            if health == "healthy":
                return info
            if health == "unhealthy":
                raise ProvisionFailedError("container became unhealthy" + _last_health_output(state))
        if time.monotonic() >= deadline:
            raise ProvisionFailedError(f"container not {condition} after {timeout:g}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def _last_log_line(client: docker.DockerClient, container_id: str) -> str:
    try:
        tail = client.api.logs(container_id, tail=3).decode("utf-8", "replace").strip()
    except docker.errors.APIError:
        return ""
    return f"; last output: {tail[-500:]}" if tail else ""


def _last_health_output(state: dict[str, Any]) -> str:
    log = (state.get("Health") or {}).get("Log") or []
    return f"; last check: {log[-1].get('Output', '').strip()[-300:]}" if log else ""


def describe_container(info: dict[str, Any], adopted: bool = False) -> dict[str, Any]:
    """The provision result: id, name, state, the host ports actually bound and the mounts."""
    ports = []
    for key, bindings in sorted((info.get("NetworkSettings") or {}).get("Ports", {}).items()):
        number, _, protocol = key.partition("/")
        for binding in bindings or [{"HostIp": None, "HostPort": None}]:
            ports.append({"container_port": int(number), "protocol": protocol,
                          "host_ip": binding.get("HostIp") or None,
                          "host_port": int(binding["HostPort"]) if binding.get("HostPort") else None})
    mounts = [{"type": m.get("Type"), "source": m.get("Source"), "target": m.get("Destination"),
               "read_only": not m.get("RW", True), "name": m.get("Name")}
              for m in info.get("Mounts") or []]
    state = info["State"]
    return {"id": info["Id"], "name": info["Name"].lstrip("/"), "image": info["Config"]["Image"],
            "state": state["Status"], "health": (state.get("Health") or {}).get("Status"),
            "ports": ports, "mounts": mounts, "adopted": adopted}


def require_container(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    try:
        return client.api.inspect_container(ref)
    except docker.errors.NotFound:
        raise NotFoundError(f"no container '{ref}'") from None


# -- docker exec ----------------------------------------------------------------------------

EXEC_OUTPUT_LIMIT = 1 << 20
EXEC_MARKER_ENV = "DOCKYARD_EXEC_ID"
_FRAME_HEADER = 8
_POLL_SECONDS = 0.25


class ExecTimeoutError(QueryTimeoutError):
    """An exec did not finish within its time limit."""

    slug, title = "exec-timeout", "The command did not finish in time"


class WaitTimeoutError(QueryTimeoutError):
    """``docker wait`` gave up before its condition was met."""

    slug, title = "wait-timeout", "The wait condition was not met in time"


class ExecOutput:
    """Output of a non-tty exec: docker's multiplexed frames, kept up to ``limit`` bytes.

    Each frame is an 8-byte header (stream, 0, 0, 0, big-endian length) and a payload;
    stdout and stderr payloads are kept interleaved, as a terminal would show them.
    """

    def __init__(self, limit: int = EXEC_OUTPUT_LIMIT) -> None:
        self.limit = limit
        self.truncated = False
        self._pending = b""
        self._kept = bytearray()

    def feed(self, data: bytes) -> None:
        self._pending += data
        while len(self._pending) >= _FRAME_HEADER:
            size = int.from_bytes(self._pending[4:_FRAME_HEADER], "big")
            if len(self._pending) < _FRAME_HEADER + size:
                return
            self._keep(self._pending[_FRAME_HEADER:_FRAME_HEADER + size])
            self._pending = self._pending[_FRAME_HEADER + size:]

    def _keep(self, payload: bytes) -> None:
        room = self.limit - len(self._kept)
        if len(payload) > room:
            self.truncated = True
            payload = payload[:max(room, 0)]
        self._kept += payload

    @property
    def text(self) -> str:
        return self._kept.decode("utf-8", errors="replace")


def exec_in_container(client: docker.DockerClient, ref: str, spec: dict[str, Any], marker: str,
                      checkpoint: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """``docker exec`` (non-interactive): run ``spec['cmd']``, bounded in time and output.

    The engine has no API to kill an exec, so the process carries ``marker`` in its
    environment and, on timeout or cancel, a second exec kills every process that has it
    (which needs a POSIX ``sh`` in the image; otherwise the process is left running and the
    error says so).

    Raises:
        NotFoundError: no such container.
        ConflictError: the container is not running (or is paused).
        ExecTimeoutError: the command outlived ``spec['timeout']``; carries the output so far.
    """
    info = require_running(client, ref, "exec in")
    env = {**(spec.get("env") or {}), EXEC_MARKER_ENV: marker}
    created = client.api.exec_create(info["Id"], spec["cmd"], stdout=True, stderr=True,
                                     environment=env, workdir=spec.get("workdir"),
                                     user=spec.get("user") or "",
                                     privileged=bool(spec.get("privileged")))
    output = ExecOutput()
    sock = client.api.exec_start(created["Id"], socket=True)
    raw = getattr(sock, "_sock", sock)  # SocketIO is unusable after a timeout; its socket is not
    try:
        finished = _drain_exec(raw, output, time.monotonic() + spec["timeout"], checkpoint)
    except BaseException:  # cancelled, or the task's time limit
        kill_marked(client, info["Id"], marker)
        raise
    finally:
        raw.close()
    if not finished:
        kill_marked(client, info["Id"], marker)
        killed = exec_exit_code(client, created["Id"]) is not None
        raise ExecTimeoutError(
            f"the command did not finish within {spec['timeout']:g}s; "
            + ("it was killed" if killed else "it could not be killed and was left running"),
            killed=killed, output=output.text, truncated=output.truncated)
    return {"exit_code": exec_exit_code(client, created["Id"]), "output": output.text,
            "truncated": output.truncated}


def _drain_exec(raw: Any, output: ExecOutput, deadline: float,
                checkpoint: Callable[[], None]) -> bool:
    """Read an exec's stream into ``output``: True when it ended, False at ``deadline``."""
    raw.settimeout(_POLL_SECONDS)
    next_checkpoint = time.monotonic() + 1
    while True:
        try:
            data = raw.recv(1 << 16)
        except TimeoutError:
            data = None
        if data == b"":
            return True
        if data:
            output.feed(data)
        now = time.monotonic()
        if now >= deadline:
            return False
        if now >= next_checkpoint:
            next_checkpoint = now + 1
            checkpoint()


def exec_exit_code(client: docker.DockerClient, exec_id: str) -> int | None:
    """The exec's exit code, or None if it is still running a second later."""
    # The stream can end a moment before the engine records the exit code.
    for _ in range(20):
        state = client.api.exec_inspect(exec_id)
        if not state.get("Running"):
            return state.get("ExitCode")
        time.sleep(0.05)
    return None


def kill_marked(client: docker.DockerClient, container_id: str, marker: str) -> None:
    """Kill every process in the container whose environment carries ``marker`` (best effort)."""
    script = ('for d in /proc/[0-9]*; do '
              'if grep -q "$1" "$d/environ" 2>/dev/null; then kill -9 "${d#/proc/}"; fi; done')
    try:
        killer = client.api.exec_create(container_id, ["sh", "-c", script, "sh",
                                                        f"{EXEC_MARKER_ENV}={marker}"],
                                        stdout=True, stderr=True, user="0")
        client.api.exec_start(killer["Id"])
    except docker.errors.APIError:
        logger.warning("could not kill exec %s in %s", marker, container_id[:12], exc_info=True)


def require_running(client: docker.DockerClient, ref: str, doing: str) -> dict[str, Any]:
    """The container's inspect document, if it is running and not paused.

    Raises:
        NotFoundError: no such container.
        ConflictError: it is stopped or paused (what ``docker exec`` refuses too).
    """
    info = require_container(client, ref)
    state = info["State"]
    name = info["Name"].lstrip("/")
    if state.get("Paused"):
        raise ConflictError(f"cannot {doing} container '{name}': it is paused", state="paused")
    if not state.get("Running"):
        raise ConflictError(f"cannot {doing} container '{name}': it is not running",
                            state=state.get("Status"))
    return info


# -- docker top / stats / diff / port -------------------------------------------------------

def container_top(client: docker.DockerClient, ref: str, ps_args: str | None = None) -> dict[str, Any]:
    """``docker top [ps OPTIONS]``: the process table the engine reports (host PIDs)."""
    info = require_running(client, ref, "list processes of")
    top = client.api.top(info["Id"], ps_args=ps_args or None)
    return {"titles": top.get("Titles") or [], "processes": top.get("Processes") or []}


_DIFF_KINDS = {0: "C", 1: "A", 2: "D"}


def container_changes(client: docker.DockerClient, ref: str) -> list[dict[str, str]]:
    """``docker diff``: paths added (A), changed (C) or deleted (D) in the writable layer."""
    info = require_container(client, ref)
    return [{"path": row["Path"], "kind": _DIFF_KINDS.get(row["Kind"], "?")}
            for row in client.api.diff(info["Id"]) or []]


def container_ports(client: docker.DockerClient, ref: str) -> list[dict[str, Any]]:
    """``docker port``: the published mappings (container port → host address)."""
    info = require_container(client, ref)
    return [p for p in describe_container(info)["ports"] if p["host_port"] is not None]


def container_stats(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    """``docker stats --no-stream``: one sample, computed the way the CLI computes it."""
    info = require_container(client, ref)
    raw = client.api.stats(info["Id"], stream=False)
    return {"id": info["Id"], "name": info["Name"].lstrip("/"), **stats_figures(raw)}


def stats_figures(raw: dict[str, Any]) -> dict[str, Any]:
    """CPU %, memory without page cache, net and block I/O from an engine stats sample.

    Mirrors docker/cli ``stats_helpers.go``: CPU % is the container's share of the host's
    CPU time between the two samples the engine took, times the online CPUs.
    """
    cpu, precpu = raw.get("cpu_stats") or {}, raw.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - \
        (precpu.get("cpu_usage") or {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - precpu.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or [])
    cpu_percent = cpu_delta / system_delta * online * 100.0 \
        if system_delta > 0 and cpu_delta > 0 else 0.0
    memory = raw.get("memory_stats") or {}
    usage, limit = memory.get("usage", 0), memory.get("limit", 0)
    counters = memory.get("stats") or {}
    cache = counters.get("total_inactive_file", counters.get("inactive_file", 0))
    used = usage - cache if cache < usage else usage
    rx = sum(n.get("rx_bytes", 0) for n in (raw.get("networks") or {}).values())
    tx = sum(n.get("tx_bytes", 0) for n in (raw.get("networks") or {}).values())
    read = written = 0
    for entry in (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        op = (entry.get("op") or " ")[0].lower()
        if op == "r":
            read += entry.get("value", 0)
        elif op == "w":
            written += entry.get("value", 0)
    return {"cpu_percent": round(cpu_percent, 2), "online_cpus": online,
            "memory": {"usage": used, "limit": limit,
                       "percent": round(used / limit * 100.0, 2) if limit else 0.0},
            "network": {"rx_bytes": rx, "tx_bytes": tx},
            "block_io": {"read_bytes": read, "write_bytes": written},
            "pids": (raw.get("pids_stats") or {}).get("current", 0),
            "read_at": raw.get("read")}


# -- docker wait / rename / update ----------------------------------------------------------

def wait_container(client: docker.DockerClient, ref: str, condition: str,
                   timeout: float) -> dict[str, Any]:
    """``docker wait [--condition]``: block until the condition, answer the exit code.

    Raises:
        WaitTimeoutError: the condition was not met within ``timeout`` seconds.
    """
    info = require_container(client, ref)
    started = time.monotonic()
    try:
        answer = client.api.wait(info["Id"], timeout=timeout, condition=condition)
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
        if time.monotonic() - started < timeout:
            raise
        raise WaitTimeoutError(f"container '{ref}' did not reach condition '{condition}' "
                               f"within {timeout:g}s") from None
    error = (answer.get("Error") or {}).get("Message") or None
    return {"id": info["Id"], "status_code": answer.get("StatusCode"), "error": error}


def rename_container(client: docker.DockerClient, ref: str, name: str) -> dict[str, Any]:
    """``docker rename``.

    Raises:
        ConflictError: ``name`` is taken by another container.
    """
    info = require_container(client, ref)
    if info["Name"].lstrip("/") == name:
        return {"id": info["Id"], "name": name, "previous_name": name}
    client.api.rename(info["Id"], name)
    return {"id": info["Id"], "name": name, "previous_name": info["Name"].lstrip("/")}


def update_container(client: docker.DockerClient, ref: str, changes: dict[str, Any]) -> dict[str, Any]:
    """``docker update --memory --cpus --restart``; answers the resulting limits."""
    info = require_container(client, ref)
    body: dict[str, Any] = {}
    if changes.get("memory") is not None:
        body["Memory"] = changes["memory"]
    if changes.get("cpus") is not None:
        body["NanoCpus"] = int(changes["cpus"] * _NANO)
    restart = changes.get("restart_policy")
    if restart:
        body["RestartPolicy"] = {"Name": restart["name"],
                                 "MaximumRetryCount": restart["maximum_retry_count"]}
    # docker-py's update_container has no NanoCpus; the CLI's --cpus sets exactly that.
    api = client.api
    answer = api._result(api._post_json(api._url("/containers/{0}/update", info["Id"]), data=body),
                         True)
    host_config = client.api.inspect_container(info["Id"])["HostConfig"]
    restart_now = host_config.get("RestartPolicy") or {}
    return {"id": info["Id"], "name": info["Name"].lstrip("/"),
            "memory": host_config.get("Memory") or None,
            "cpus": (host_config.get("NanoCpus") or 0) / _NANO or None,
            "restart_policy": {"name": restart_now.get("Name") or "no",
                               "maximum_retry_count": restart_now.get("MaximumRetryCount", 0)},
            "warnings": (answer or {}).get("Warnings") or []}


# -- prune / bulk removal -------------------------------------------------------------------

def prune_containers(client: docker.DockerClient, labels: list[str], until: str | None,
                     managed_only: bool) -> dict[str, Any]:
    """``docker container prune --filter``; ``managed_only`` adds ``label=dockyard.managed=true``."""
    filters: dict[str, Any] = {}
    labels = list(labels) + ([f"{MANAGED_LABEL}=true"] if managed_only else [])
    if labels:
        filters["label"] = labels
    if until:
        filters["until"] = until
    answer = client.api.prune_containers(filters=filters or None)
    return {"deleted": answer.get("ContainersDeleted") or [],
            "space_reclaimed": answer.get("SpaceReclaimed") or 0}


def prune_one_by_one(client: docker.DockerClient, labels: list[str], until: str | None,
                     refused: Callable[[str], str | None],
                     checkpoint: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """``docker container prune`` for a caller who may remove only some containers.

    Stopped containers matching the filters are removed one by one when ``refused(id)``
    has no objection; ``until`` keeps those created after that time (as the engine does).
    """
    filters: dict[str, Any] = {"status": ["exited", "created", "dead"]}
    if labels:
        filters["label"] = list(labels)
    cutoff = parse_event_time(until, time.time(), naive_utc=True) if until else None
    deleted, reclaimed = [], 0
    for row in client.api.containers(all=True, filters=filters, size=True):
        checkpoint()
        if cutoff is not None and row.get("Created", 0) >= cutoff:
            continue
        if refused(row["Id"]) is not None:
            continue
        try:
            client.api.remove_container(row["Id"])
        except docker.errors.APIError:
            continue  # started again or removed meanwhile: prune leaves it
        deleted.append(row["Id"])
        reclaimed += row.get("SizeRw") or 0
    return {"deleted": deleted, "space_reclaimed": reclaimed}


def remove_matching(client: docker.DockerClient, match: dict[str, Any], *, force: bool,
                    volumes: bool, managed_only: bool,
                    checkpoint: Callable[[], None] = lambda: None,
                    removable: Callable[[str], str | None] | None = None) -> dict[str, Any]:
    """``docker rm [-f] [-v] $(docker ps -aq --filter …)`` with an outcome per container.

    Containers without ``dockyard.managed=true`` are skipped when ``managed_only``, and so
    are those ``removable(id)`` objects to (it answers the reason).
    """
    outcomes = []
    for row in list_containers(client, all=True, **match):
        checkpoint()
        entry = {"id": row["id"], "name": row["name"]}
        if managed_only and row["labels"].get(MANAGED_LABEL) != "true":
            outcomes.append({**entry, "outcome": "skipped",
                             "reason": "not managed by Dockyard (only admins may remove it, "
                                       "with managed_only=false)"})
            continue
        reason = removable(row["id"]) if removable else None
        if reason is not None:
            outcomes.append({**entry, "outcome": "skipped", "reason": reason})
            continue
        try:
            client.api.remove_container(row["id"], force=force, v=volumes)
            outcomes.append({**entry, "outcome": "removed"})
        except docker.errors.NotFound:
            outcomes.append({**entry, "outcome": "removed", "reason": "already gone"})
        except docker.errors.APIError as exc:
            outcomes.append({**entry, "outcome": "failed", "status": exc.status_code,
                             "reason": str(exc.explanation or exc)})
    counts = {kind: sum(1 for o in outcomes if o["outcome"] == kind)
              for kind in ("removed", "skipped", "failed")}
    return {"matched": len(outcomes), **counts, "containers": outcomes}


def commit_container(client: docker.DockerClient, ref: str, repository: str, tag: str, *,
                     message: str | None, author: str | None, changes: list[str],
                     pause: bool) -> dict[str, Any]:
    """``docker commit``: the container's filesystem and config as a new image."""
    info = client.api.inspect_container(ref)
    image = client.api.commit(info["Id"], repository=repository, tag=tag, message=message,
                              author=author, changes=changes or None, pause=pause)
    return {"image_id": image["Id"], "ref": f"{repository}:{tag}", "container": info["Id"]}
