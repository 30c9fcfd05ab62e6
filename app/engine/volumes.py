"""Volume operations on one engine (``docker volume ls/create/inspect/rm/prune``)."""

from __future__ import annotations

import logging
from typing import Any

import docker

from app.core.errors import ConflictError
from app.engine.containers import JOB_LABEL, MANAGED_LABEL

logger = logging.getLogger(__name__)


def list_volumes(client: docker.DockerClient, *, dangling: bool | None = None,
                 name: str | None = None, labels: list[str] | None = None) -> list[dict[str, Any]]:
    """``docker volume ls [-f dangling=…] [-f name=…] [-f label=…]``; ``name`` matches as docker's."""
    filters: dict[str, Any] = {}
    if dangling is not None:
        filters["dangling"] = dangling
    if name:
        filters["name"] = name
    if labels:
        filters["label"] = labels
    answer = client.api.volumes(filters=filters or None)
    return [describe_volume(row) for row in answer.get("Volumes") or []]


def describe_volume(row: dict[str, Any]) -> dict[str, Any]:
    return {"name": row["Name"], "driver": row.get("Driver", ""),
            "mountpoint": row.get("Mountpoint", ""), "scope": row.get("Scope", ""),
            "labels": row.get("Labels") or {}, "options": row.get("Options") or {},
            "created_at": row.get("CreatedAt")}


def inspect_volume(client: docker.DockerClient, name: str) -> dict[str, Any]:
    """``docker volume inspect``: the engine's document."""
    return client.api.inspect_volume(name)


def find_volume(client: docker.DockerClient, name: str) -> dict[str, Any] | None:
    """The volume called ``name``, or None."""
    try:
        return describe_volume(client.api.inspect_volume(name))
    except docker.errors.NotFound:
        return None


def create_volume(client: docker.DockerClient, name: str | None, driver: str,
                  labels: dict[str, str], job_id: str) -> dict[str, Any]:
    """``docker volume create [--driver D] [--label …] [NAME]``.

    As with docker, creating a name that exists with the same driver answers the existing
    volume. A nameless volume carries its job's label, so a redelivered job adopts the
    volume its first delivery made instead of making a second one.

    Raises:
        ConflictError: the name exists with another driver.
    """
    existing = find_volume(client, name) if name else _made_by_job(client, job_id)
    if existing is not None:
        if existing["driver"] != driver:
            raise ConflictError(f"volume '{existing['name']}' already exists with driver "
                                f"'{existing['driver']}', not '{driver}'", name=existing["name"])
        return {**existing, "created": False}
    made = client.api.create_volume(name=name, driver=driver,
                                    labels={**labels, MANAGED_LABEL: "true", JOB_LABEL: job_id})
    logger.info("job %s created volume %s", job_id, made["Name"])
    return {**describe_volume(made), "created": True}


def _made_by_job(client: docker.DockerClient, job_id: str) -> dict[str, Any] | None:
    rows = client.api.volumes(filters={"label": f"{JOB_LABEL}={job_id}"}).get("Volumes") or []
    return describe_volume(rows[0]) if rows else None


def remove_volume(client: docker.DockerClient, name: str, force: bool) -> dict[str, Any]:
    """``docker volume rm [-f] NAME``.

    Raises:
        docker.errors.APIError: 404 unknown volume (without ``force``), 409 in use.
    """
    client.api.remove_volume(name, force=force)
    return {"name": name, "removed": True}


def prune_volumes(client: docker.DockerClient,
                  filters: dict[str, Any] | None = None) -> dict[str, Any]:
    """``docker volume prune [--filter …]``: volumes no container uses."""
    answer = client.api.prune_volumes(filters=filters or None)
    return {"deleted": answer.get("VolumesDeleted") or [],
            "space_reclaimed": answer.get("SpaceReclaimed") or 0}
