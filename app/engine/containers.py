"""Container operations on one engine (``docker run/ps/inspect/exec/top/stats/rm/…``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import docker
import requests

from app.core.errors import ConflictError, NotFoundError, QueryTimeoutError
from app.engine.event_times import parse_event_time

MANAGED_LABEL = "dockyard.managed"
JOB_LABEL = "dockyard.job"
_NANO = 1_000_000_000
_LOG_LIMIT_BYTES = 8 << 20


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


class WaitTimeoutError(QueryTimeoutError):
    """``docker wait`` gave up before its condition was met."""

    slug, title = "wait-timeout", "The wait condition was not met in time"


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
