"""``docker run`` on one engine: a validated spec becomes a created, started and (if asked)
healthy container, adopted again when the same job is redelivered."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import docker
from docker.types import Healthcheck, LogConfig, Mount

from app.core.errors import ConflictError, EngineError, NotFoundError
from app.engine import guard
from app.engine.containers import (
    _NANO,
    JOB_LABEL,
    MANAGED_LABEL,
    describe_container,
)
from app.engine.images import ensure_image, pull_image
from app.security.auth import Principal
from app.security.policy import SCOPE_LABEL, Policy

logger = logging.getLogger(__name__)


class ProvisionFailedError(EngineError):
    """The container was created but did not reach the state asked for."""

    slug, title = "provision-failed", "The container did not start as asked"


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
                        auth: dict[str, str] | Callable[[], dict[str, str] | None] | None = None,
                        progress: ProgressFn | None = None,
                        checkpoint: Callable[[], None] = lambda: None,
                        redelivered: bool = True) -> dict[str, Any]:
    """``docker run -d``: pull as the policy says, create, start, wait; clean up on failure.

    ``auth`` (registry credentials, or a function answering them) is used only for a pull.

    What the spec refers to on the engine (network, named volumes, volumes_from, bind
    sources) is judged before the create, and the created container's own mounts and
    config before it starts (``app.engine.guard``), for ``caller`` under ``policy``.
    A redelivered job adopts the container its earlier delivery made, so a provision runs
    at most one container per job; only a redelivery (``redelivered``: the job was already
    running when this delivery took it) looks for one. ``checkpoint`` is called between
    steps and while waiting; it raises to abandon the provision (e.g. on cancel), which
    removes the container.

    Engine calls for a fresh named container: create (its 409 is the name check, its 404
    the image check of pull ``missing`` and ``never``: pulled then, and created again), the
    inspect the guard judges, start, the wait's inspects (the last one is the result); a
    bind mount's check adds a path stat per component below its root (asked of the kept
    bind-check helper, ``bind_check.resolve_binds``; its lookup or create once per process).

    Raises:
        ConflictError: the name is taken and ``replace`` is false.
        PolicyViolationError: the spec refers to something the policy refuses; nothing is left.
        ProvisionFailedError: the container did not start or become healthy; it was removed.
    """
    def step(message: str, done: int) -> None:
        if progress:
            progress(done, 4, "steps", message)

    def credentials() -> dict[str, str] | None:  # ``auth`` may be asked for only if pulling
        return auth() if callable(auth) else auth

    earlier = find_by_job(client, job_id) if redelivered else None
    if earlier is not None:
        logger.info("job %s adopts container %s", job_id, earlier["Id"][:12])
        try:
            guard.check_created(client, earlier["Id"], spec, caller, policy)
            return _finish(client, earlier["Id"], spec, adopted=True, checkpoint=checkpoint)
        except BaseException:
            _discard(client, earlier["Id"])
            raise

    pull = spec.get("pull", "missing")
    # A replaced container is set aside before the create: the image is made sure of
    # first, so that a missing one does not stop and restart it twice.
    if pull == "always" or spec.get("replace"):
        step("pulling image" if pull != "never" else "checking image", 0)
        ensure_image(client, spec["image"], pull, credentials(), progress)
    try:
        container_id, displaced = _create(client, spec, job_id, caller, policy, step, checkpoint)
    except docker.errors.ImageNotFound:
        if pull == "never":
            raise NotFoundError(f"image '{spec['image']}' is not on the host and pull "
                                "is 'never'") from None
        if pull != "missing":
            raise
        step("pulling image", 0)
        pull_image(client, spec["image"], credentials(), progress)
        container_id, displaced = _create(client, spec, job_id, caller, policy, step, checkpoint)
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


def _create(client: docker.DockerClient, spec: dict[str, Any], job_id: str, caller: Principal,
            policy: Policy, step: Callable[[str, int], None],
            checkpoint: Callable[[], None]) -> tuple[str, dict[str, Any] | None]:
    """Judge what the spec refers to, set aside the container it replaces, create.

    Answers the new container's id and the set-aside container (None unless replacing).

    Raises:
        docker.errors.ImageNotFound: the image is not on the host (nothing was changed).
        ConflictError: the name is taken and ``replace`` is false.
    """
    guard.check_references(client, spec, caller, policy)
    step("creating container", 1)
    checkpoint()
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
    return created["Id"], displaced


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
