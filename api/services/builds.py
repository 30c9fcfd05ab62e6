"""Builds shared by the view and chat: the spec, its policy checks and the build job."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from marshmallow import ValidationError

from api.services import Call, host_record, operation, replayed, start_job
from app.core.errors import BadRequestError, InvalidInputError, PolicyViolationError
from app.core.task_names import BUILDS_BUILD
from app.engine.references import resolve_in_registry, split_reference
from app.registry.registries import registry_address
from app.runtime import runtime
from app.security import crypto, dockerfiles
from app.security.dockerfiles import dockerfiles_in_context
from app.security.policy import enforce_image_source, enforce_local_name, policy_from_settings
from schemas.builds import BuildSpecSchema, context_errors


def load_spec(body: Any, uploaded: bool) -> dict[str, Any]:
    """The validated spec; unknown fields, bad names and a missing or double context are 422."""
    if not isinstance(body, dict):
        raise BadRequestError("the build spec must be a JSON object")
    try:
        spec = BuildSpecSchema().load(body)
    except ValidationError as exc:
        raise InvalidInputError("the request has invalid fields: " + ", ".join(
            sorted(exc.normalized_messages())), errors=exc.normalized_messages()) from None
    errors = context_errors(spec, uploaded)
    if errors:
        raise InvalidInputError("the build needs exactly one context: " + ", ".join(
            sorted(errors)), errors=errors)
    return spec


@operation("operator")
def submit_build(call: Call, *, spec: dict[str, Any], spool: Path | None) -> Any:
    """Check scope, host and registry, place the pushed tags, and enqueue the build job."""
    call.principal.require_host(spec["host"])
    record = host_record(spec["host"])
    push = None
    if spec["push"]:
        name = spec["push"]["registry"]
        address = registry_address(runtime().registries.get(name)["url"])
        push = {"registry": name,
                "targets": [split_reference(resolve_in_registry(tag, address))
                            for tag in spec["tags"]]}
    check_build_policy(call, spec, spool, [f"{repo}:{tag}" for repo, tag in
                                     (push["targets"] if push else [])])
    task_spec = {
        "tags": spec["tags"], "dockerfile_path": spec["dockerfile_path"],
        "build_args": {name: _sealed(arg) for name, arg in spec["build_args"].items()},
        "target": spec["target"], "labels": spec["labels"], "no_cache": spec["no_cache"],
        "pull": spec["pull"], "push": push,
    }
    if spool is not None:
        context = {"spool": str(spool)}
    elif spec.get("git") is not None:
        context = {"git": spec["git"]}
    else:
        context = {"dockerfile": spec["dockerfile"]}
    body = {**spec, "context": "upload" if spool else None}
    if spool is not None and replayed(call, body):
        spool.unlink(missing_ok=True)
    return start_job(call, BUILDS_BUILD, host_record=record,
                     target=spec["tags"][0] if spec["tags"] else None,
                     args=[task_spec, context], body=body, spool=spool)


def check_build_policy(call: Call, spec: dict[str, Any], spool: Path | None, pushed: list[str]) -> None:
    """Refuse what a build may not do, from its spec and Dockerfile, before the engine sees it.

    Raises:
        InvalidInputError: a git ``#ref`` or ``:subdir`` starting with ``-`` (422 ``git``).
        PolicyViolationError: ``git-allowed-hosts``, ``no-add-url`` (non-admins) or
            ``allowed-registries`` (a base image off the allow-list, or a name in an allowed
            registry's namespace for an image built on ``scratch``).
    """
    settings = runtime().settings
    policy = policy_from_settings(settings)
    is_admin = call.is_admin
    if spec.get("git") is not None:
        check_git_context(spec["git"], settings.git_allowed_hosts, is_admin)
        excused = is_admin and "allowed-registries" in policy.admin_exceptions
        if policy.allowed_registries and not excused:
            raise PolicyViolationError(
                "allowed-registries", "with an allow-list of registries, a git context cannot "
                "be built: its Dockerfile's FROM lines are not known before the engine fetches "
                "it; upload the context instead")
        return
    texts = [spec["dockerfile"]] if spool is None else \
        dockerfiles_in_context(spool, spec["dockerfile_path"])
    build_args = {name: arg["value"] for name, arg in spec["build_args"].items()}
    for text in texts:
        found = dockerfiles.instructions(text)
        remote = [] if is_admin else dockerfiles.remote_sources(found)
        if remote:
            instruction, source = remote[0]
            raise PolicyViolationError(
                "no-add-url", f"line {instruction.line}: ADD '{source}' makes the engine "
                "fetch a URL (or a variable that may hold one); use COPY from the context")
        bases = dockerfiles.base_images(found, build_args)
        for base in bases:
            if base.reference != "scratch":
                enforce_image_source(policy, base.reference, is_admin,
                                     f"line {base.line}: {base.instruction}")
        from_registries = all(base.reference != "scratch" for base in bases)
        for name in [*spec["tags"], *pushed]:
            enforce_local_name(policy, name, from_registries, is_admin, "a build from scratch")


def check_git_context(url: str, allowed_hosts: tuple[str, ...], is_admin: bool) -> None:
    """A git context's ``#ref:subdir`` never reads as an option; non-admins only fetch from
    ``DOCKYARD_GIT_ALLOWED_HOSTS`` (admins from any host)."""
    location, _, fragment = url.partition("#")
    ref, _, subdir = fragment.partition(":")
    if ref.startswith("-") or subdir.startswith("-"):
        raise InvalidInputError("a git ref or subdir may not start with '-'",
                                errors={"git": ["the #ref and :subdir may not start with '-'"]})
    if is_admin:
        return
    parts = urlsplit(location)
    allowed = {host.lower() for host in allowed_hosts}
    host = (parts.hostname or "").lower()
    if not host or (host not in allowed and parts.netloc.lower() not in allowed):
        raise PolicyViolationError(
            "git-allowed-hosts", f"git contexts from '{parts.netloc}' are not allowed; allowed: "
            f"{', '.join(allowed_hosts) or 'none (admins only)'}")


def _sealed(arg: dict[str, Any]) -> dict[str, str]:
    # A secret travels through the broker encrypted, so no queue, event or record shows it.
    if arg["secret"]:
        return {"sealed": crypto.seal(runtime().settings, {"value": arg["value"]})}
    return {"value": arg["value"]}
