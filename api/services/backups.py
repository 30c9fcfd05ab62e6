"""Backups shared by views and chat: back a container up, restore a bundle, and who may see one."""

from __future__ import annotations

from typing import Any

from api.services import Call, host_record, operation, start_job
from app.backups.restore import default_image, restore_spec
from app.backups.storage import storage_for
from app.core.errors import ConflictError, ForbiddenError
from app.core.task_names import BACKUPS_CREATE, BACKUPS_RESTORE, CONTAINERS_EXISTS, CONTAINERS_INSPECT
from app.jobs.dispatch import run_query
from app.runtime import runtime
from app.security.policy import enforce_local_name, policy_from_settings


def storage():
    return storage_for(runtime().settings)


def visible_manifest(call: Call, backup_id: str) -> dict[str, Any]:
    """The manifest, if the caller's token may see the host it came from (404 otherwise)."""
    manifest = storage().manifest(backup_id)
    call.principal.require_host(manifest["host"])
    return manifest


def owned_manifest(call: Call, backup_id: str) -> dict[str, Any]:
    """The manifest, if the caller may also use the bundle's content (403 otherwise).

    A bundle holds the container's whole configuration and files: besides the host, a
    non-admin's scope must cover the scope of the container it was made from.
    """
    manifest = visible_manifest(call, backup_id)
    caller = call.principal
    if not caller.is_admin and not caller.within_scope(manifest.get("scope")):
        raise ForbiddenError(f"backup '{backup_id}' was made of a container outside the scope "
                             f"of token '{caller.name}'", rule="owner-scope")
    return manifest


@operation("operator")
def create(call: Call, *, host: str, ref: str, spec: dict[str, Any]) -> tuple[dict, int, dict]:
    """Back a container up into a bundle (job); the bundle's id is the job's id."""
    record = host_record(host)
    return start_job(call, BACKUPS_CREATE, host_record=record, target=ref,
                     args=[ref, spec, call.caller()],
                     precheck=lambda: run_query(CONTAINERS_INSPECT, record,
                                                [call.caller(), ref]))


@operation("operator")
def restore(call: Call, *, backup_id: str, body: dict[str, Any]) -> tuple[dict, int, dict]:
    """Recreate the container from a bundle (job), the policy applied to the restored spec."""
    manifest = owned_manifest(call, backup_id)
    target = body["host"] or manifest["host"]
    call.principal.require_host(target)
    record = host_record(target)
    config = storage().container_config(backup_id)
    spec = restore_spec(manifest, config, body,
                        default_image(manifest, body["image_repository"]))
    is_admin = call.is_admin
    policy = policy_from_settings(runtime().settings)
    # The bundle's filesystem is imported under spec["image"]: it never passes as an
    # image of an allowed registry.
    enforce_local_name(policy, spec["image"], False, is_admin, "restore")
    policy.enforce(spec, is_admin)

    def name_is_free() -> None:
        if not spec["replace"] and run_query(CONTAINERS_EXISTS, record, [spec["name"]]):
            raise ConflictError(f"container name '{spec['name']}' is already in use on host "
                                f"'{target}'; pass replace: true to replace it or pick "
                                "another name", name=spec["name"])

    return start_job(call, BACKUPS_RESTORE, host_record=record, target=spec["name"],
                     args=[backup_id, spec, call.caller()], precheck=name_is_free)
