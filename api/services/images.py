"""Image operations shared by views and chat: list, pull, and the registry/policy checks."""

from __future__ import annotations

from typing import Any

from api.services import Call, host_record, operation, start_job
from app.core.errors import InvalidInputError, NotFoundError
from app.core.task_names import IMAGES_LIST, IMAGES_PULL
from app.engine.references import resolve_in_registry
from app.jobs.dispatch import run_query
from app.registry.registries import registry_address, require_reference_in_registry
from app.runtime import runtime
from app.security.policy import Policy, enforce_image_source, policy_from_settings


def stored_registry(name: str) -> dict[str, Any]:
    """A stored registry's record; an unknown name is a bad field (422)."""
    try:
        return runtime().registries.get(name)
    except NotFoundError:
        raise InvalidInputError(f"no registry '{name}'",
                                errors={"registry": [f"no registry '{name}'"]}) from None


def stored_registry_address(name: str) -> str:
    """The ``host:port`` of a stored registry; an unknown name is a bad field (422)."""
    return registry_address(stored_registry(name)["url"])


def check_registry_credentials(reference: str, name: str | None) -> None:
    """Refuse (422 on ``registry``) naming a stored registry for an image that lives elsewhere:
    its credentials would be offered to that other registry."""
    if name:
        require_reference_in_registry(reference, stored_registry(name))


def caller_policy(call: Call) -> tuple[Policy, bool]:
    """The settings' policy and whether the caller is an admin."""
    return policy_from_settings(runtime().settings), call.is_admin


@operation("viewer")
def list_images(call: Call, *, host: str, args: dict[str, Any]) -> list:
    """`docker images`: one row per image, or the full ids with ``quiet``."""
    query = {"all": args["all"], "dangling": args["dangling"], "quiet": args["quiet"],
             "reference": args.get("reference"), "labels": args["label"] or None}
    return run_query(IMAGES_LIST, host_record(host), [query])


@operation("operator")
def pull(call: Call, *, host: str, spec: dict[str, Any]) -> tuple[dict, int, dict]:
    """`docker pull` (job), from the named stored registry or the one the reference names."""
    record = host_record(host)
    reference = spec["image"]
    if spec["registry"]:
        reference = resolve_in_registry(reference, stored_registry_address(spec["registry"]))
    policy, is_admin = caller_policy(call)
    enforce_image_source(policy, reference, is_admin, "pull")
    return start_job(call, IMAGES_PULL, host_record=record, target=reference,
                     args=[reference, spec["registry"]])
