"""Containment on the engine: what a request refers to, and who may touch a container.

The API judges a request by its text (``app.security.policy``); only the worker can see what the text
names on the engine. Here, on the worker and just before the engine call:

- a network is resolved by the engine (name, id or prefix) and must be an allowed one;
- a named volume must be a private local one (``docker volume inspect``);
- ``volumes_from`` may only name managed containers in the caller's scope whose own
  configuration passes the policy;
- bind sources are walked on the engine's own machine (``app.engine.bind_check``): a
  symlink, socket or device anywhere below the root is refused;
- a container may be changed or looked into by a non-admin only if Dockyard manages it, it
  lies in the caller's scope and its live configuration passes the policy; Dockyard's own
  containers (``dockyard.system``) are out of everyone's reach for the actions that would
  expose them.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

import docker

from app.core.errors import ForbiddenError, NotFoundError
from app.engine import bind_check
from app.security.auth import Principal
from app.security.policy import (
    BUILTIN_NETWORKS,
    MANAGED_LABEL,
    SCOPE_LABEL,
    SYSTEM_LABEL,
    Policy,
    Violation,
    raise_for,
    volume_names,
)

logger = logging.getLogger(__name__)

# What nobody, admins included, may do to Dockyard's own containers.
SYSTEM_REFUSED = frozenset({"exec", "archive", "commit", "backup", "remove", "update", "session"})


def _excused(policy: Policy, caller: Principal, found: list[Violation]) -> list[Violation]:
    return policy.excuse(found, caller.is_admin)


# -- who may touch a container ------------------------------------------------------------

def require_access(client: docker.DockerClient, ref: str, caller: Principal, action: str,
                   policy: Policy) -> dict[str, Any]:
    """The container's ``docker inspect`` if ``caller`` may do ``action`` to it.

    Raises:
        NotFoundError: no such container.
        ForbiddenError: a Dockyard system container, or (non-admins) a container Dockyard
            does not manage or that lies outside the caller's scope.
        PolicyViolationError: (non-admins) its live configuration breaks the policy.
    """
    try:
        info = client.api.inspect_container(ref)
    except docker.errors.NotFound:
        raise NotFoundError(f"no such container: {ref}") from None
    labels = (info.get("Config") or {}).get("Labels") or {}
    name = info["Name"].lstrip("/")
    if labels.get(SYSTEM_LABEL) == "true" and action in SYSTEM_REFUSED:
        raise ForbiddenError(f"container '{name}' is part of Dockyard itself; no token may "
                             f"{action} it", rule="dockyard-system")
    if caller.is_admin:
        return info
    _require_owned(labels, f"container '{name}'", caller,
                   "only admins may act on it (others see it in listings only)")
    raise_for(container_violations(client, info, caller, policy))
    return info


def _require_owned(labels: dict[str, str], what: str, caller: Principal, otherwise: str) -> None:
    """Non-admins: made by Dockyard (``dockyard.managed``) within the caller's scope."""
    if labels.get(MANAGED_LABEL) != "true":
        raise ForbiddenError(f"{what} was not made by Dockyard; {otherwise}",
                             rule="managed-only")
    if not caller.within_scope(labels.get(SCOPE_LABEL)):
        raise ForbiddenError(f"{what} was made outside the scope of token '{caller.name}'",
                             rule="owner-scope")


def container_violations(client: docker.DockerClient, info: dict[str, Any], caller: Principal,
                         policy: Policy) -> list[Violation]:
    """Every rule a container's live configuration breaks, its named volumes included."""
    found = policy.live_violations(info)
    for name in volume_names(info):
        found.extend(_volume_violations(client, name, policy))
    return _excused(policy, caller, found)


def _volume_violations(client: docker.DockerClient, name: str, policy: Policy) -> list[Violation]:
    try:
        volume = client.api.inspect_volume(name)
    except docker.errors.NotFound:
        return []  # the engine creates a plain local volume under that name
    return policy.volume_violations(volume)


def require_volume_access(client: docker.DockerClient, name: str, caller: Principal,
                          action: str) -> dict[str, Any]:
    """The volume's ``docker volume inspect`` if ``caller`` may ``action`` it.

    Dockyard's own volumes are nobody's to remove; non-admins remove only volumes Dockyard
    made within their scope.

    Raises:
        NotFoundError: no such volume.
        ForbiddenError: ``dockyard-system``, ``managed-only`` or ``owner-scope``.
    """
    try:
        volume = client.api.inspect_volume(name)
    except docker.errors.NotFound:
        raise NotFoundError(f"no such volume: {name}") from None
    labels = volume.get("Labels") or {}
    if labels.get(SYSTEM_LABEL) == "true":
        raise ForbiddenError(f"volume '{name}' is part of Dockyard itself; no token may "
                             f"{action} it", rule="dockyard-system")
    if not caller.is_admin:
        _require_owned(labels, f"volume '{name}'", caller, f"only admins may {action} it")
    return volume


def prune_filters(filters: dict[str, Any], caller: Principal) -> dict[str, Any]:
    """Volume prune filters that never reach Dockyard's own volumes, nor (for non-admins)
    volumes Dockyard did not make in exactly the caller's scope."""
    out = {key: list(value) for key, value in filters.items()}
    out.setdefault("label!", []).append(f"{SYSTEM_LABEL}=true")
    if not caller.is_admin:
        out.setdefault("label", []).append(f"{MANAGED_LABEL}=true")
        if caller.hosts is not None:
            out["label"].append(f"{SCOPE_LABEL}={caller.scope}")
    return out


# -- what a provision spec refers to ------------------------------------------------------

def check_references(client: docker.DockerClient, spec: dict[str, Any], caller: Principal,
                     policy: Policy) -> None:
    """Judge what ``spec`` names on the engine: network, named volumes, volumes_from, binds.

    Raises:
        PolicyViolationError: naming the first rule broken.
    """
    found = _network_violations(client, spec.get("network"), policy)
    found.extend(_named_volume_violations(client, spec, policy))
    for entry in spec.get("volumes_from") or []:
        found.extend(_volumes_from_violations(client, entry.split(":")[0], caller, policy))
    raise_for(_excused(policy, caller, found))
    binds = [v["source"] for v in spec.get("volumes") or [] if v["type"] == "bind"]
    if binds:
        raise_for(_excused(policy, caller, bind_check.resolve_binds(client, binds, policy)))


def check_named_volumes(client: docker.DockerClient, spec: dict[str, Any], caller: Principal,
                        policy: Policy) -> None:
    """Judge only the named volumes ``spec`` mounts (before anything is written into them)."""
    raise_for(_excused(policy, caller, _named_volume_violations(client, spec, policy)))


def _named_volume_violations(client: docker.DockerClient, spec: dict[str, Any],
                             policy: Policy) -> list[Violation]:
    found: list[Violation] = []
    for volume in spec.get("volumes") or []:
        if volume["type"] == "volume" and volume.get("source"):
            found.extend(_volume_violations(client, volume["source"], policy))
    return found


def _network_violations(client: docker.DockerClient, network: str | None,
                        policy: Policy) -> list[Violation]:
    found = list(policy.network_violations(network))
    if found or network in (None, "", *BUILTIN_NETWORKS):
        return found
    # The engine resolves a name, an id or an id prefix: judge what it resolves to.
    try:
        resolved = client.api.inspect_network(network)
    except docker.errors.NotFound:
        return []  # create fails with the engine's own 404
    if resolved.get("Name") not in policy.allowed_networks or resolved.get("Driver") == "host":
        return [Violation("allowed-networks",
                          f"network '{network}' resolves to '{resolved.get('Name')}' "
                          f"(driver {resolved.get('Driver')}), which is not an allowed network")]
    return []


def _volumes_from_violations(client: docker.DockerClient, ref: str, caller: Principal,
                             policy: Policy) -> list[Violation]:
    try:
        info = client.api.inspect_container(ref)
    except docker.errors.NotFound:
        return [Violation("volumes-from", f"volumes_from names no container '{ref}'")]
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(SYSTEM_LABEL) == "true":
        return [Violation("dockyard-system", f"volumes_from '{ref}' is part of Dockyard itself")]
    if not caller.is_admin:
        if labels.get(MANAGED_LABEL) != "true":
            return [Violation("volumes-from", f"volumes_from '{ref}': only containers managed "
                                              "by Dockyard may lend their volumes")]
        if not caller.within_scope(labels.get(SCOPE_LABEL)):
            return [Violation("volumes-from", f"volumes_from '{ref}' lies outside the scope of "
                                              f"token '{caller.name}'")]
    return [Violation(v.rule, f"volumes_from '{ref}': {v.detail}")
            for v in container_violations(client, info, caller, policy)]


def check_created(client: docker.DockerClient, container_id: str, spec: dict[str, Any],
                  caller: Principal, policy: Policy) -> None:
    """Judge the created (not yet started) container by its own ``Mounts`` and config.

    Whatever the create turned the spec into (mounts inherited through volumes_from, a
    volume the engine made) must pass the policy too.
    """
    info = client.api.inspect_container(container_id)
    found = container_violations(client, info, caller, policy)
    asked = {posixpath.normpath(v["source"]) for v in spec.get("volumes") or []
             if v["type"] == "bind"}
    lent = set()
    for ref in (e.split(":")[0] for e in spec.get("volumes_from") or []):
        lent |= {posixpath.normpath(m.get("Source") or "")
                 for m in client.api.inspect_container(ref).get("Mounts") or []
                 if m.get("Type") == "bind"}
    for mount in info.get("Mounts") or []:
        if mount.get("Type") == "bind" and posixpath.normpath(mount.get("Source") or "") \
                not in asked | lent:
            found.append(Violation("bind-roots", f"the created container mounts "
                                                 f"'{mount.get('Source')}', which was not asked for"))
    raise_for(_excused(policy, caller, found))
