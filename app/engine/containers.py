"""Container operations on one engine (``docker run/ps/inspect/start/stop/rm/logs``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import docker
from docker.types import Healthcheck, LogConfig, Mount

from app.engine.images import ensure_image
from app.errors import ConflictError, EngineError, NotFoundError

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


def create_kwargs(spec: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Translate a validated spec into ``create_container`` arguments.

    Only fields named here reach the engine, so nothing in a request can be smuggled
    into the HostConfig.
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
                       ("ipc_mode", "ipc_mode"), ("uts_mode", "uts_mode")):
        if spec.get(field):
            host_config[arg] = spec[field]
    labels = {**(spec.get("labels") or {}), MANAGED_LABEL: "true", JOB_LABEL: job_id}
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
                        auth: dict[str, str] | None = None,
                        progress: ProgressFn | None = None,
                        checkpoint: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """``docker run -d``: pull as the policy says, create, start, wait; clean up on failure.

    A redelivered job adopts the container its earlier delivery made, so a provision runs
    at most one container per job. ``checkpoint`` is called between steps and while
    waiting; it raises to abandon the provision (e.g. on cancel), which removes the container.

    Raises:
        ConflictError: the name is taken and ``replace`` is false.
        ProvisionFailedError: the container did not start or become healthy; it was removed.
    """
    def step(message: str, done: int) -> None:
        if progress:
            progress(done, 4, "steps", message)

    earlier = find_by_job(client, job_id)
    if earlier is not None:
        logger.info("job %s adopts container %s", job_id, earlier["Id"][:12])
        try:
            return _finish(client, earlier["Id"], spec, adopted=True, checkpoint=checkpoint)
        except BaseException:
            _discard(client, earlier["Id"])
            raise

    step("pulling image" if spec.get("pull") != "never" else "checking image", 0)
    ensure_image(client, spec["image"], spec.get("pull", "missing"), auth, progress)
    checkpoint()
    step("creating container", 1)
    displaced = _displace(client, spec, job_id)
    try:
        created = client.api.create_container(**_with_host_config(client, create_kwargs(spec, job_id)))
    except BaseException:
        _restore(client, displaced, spec.get("name"))
        raise
    container_id = created["Id"]
    try:
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


def _displace(client: docker.DockerClient, spec: dict[str, Any], job_id: str) -> dict[str, Any] | None:
    """Make room for a named container: 409 if taken, or set the old one aside when replacing."""
    name = spec.get("name")
    if not name:
        return None
    try:
        old = client.api.inspect_container(name)
    except docker.errors.NotFound:
        return None
    if not spec.get("replace"):
        raise ConflictError(f"container name '{name}' is already in use", name=name)
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
    if spec.get("start", True):
        if step:
            step("starting container", 2)
        info = client.api.inspect_container(container_id)
        if not info["State"]["Running"]:
            client.api.start(container_id)
        wait_for = spec.get("wait_for", "running")
        if wait_for != "none":
            if step:
                step(f"waiting for {wait_for}", 3)
            _wait_for(client, container_id, wait_for, spec.get("wait_timeout", 60), checkpoint)
    return describe_container(client.api.inspect_container(container_id), adopted=adopted)


def _wait_for(client: docker.DockerClient, container_id: str, condition: str, timeout: float,
              checkpoint: Callable[[], None]) -> None:
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
            return
        if condition == "healthy":
            if health is None:
                raise ProvisionFailedError("wait_for 'healthy' needs a healthcheck in the spec or image")
            if health == "healthy":
                return
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
