"""Containment on the engine: what a request refers to, and who may touch a container.

The API judges a request by its text (``app.security.policy``); only the worker can see what the text
names on the engine. Here, on the worker and just before the engine call:

- a network is resolved by the engine (name, id or prefix) and must be an allowed one;
- a named volume must be a private local one (``docker volume inspect``);
- ``volumes_from`` may only name managed containers in the caller's scope whose own
  configuration passes the policy;
- bind sources are walked on the engine's own machine (a kept helper container of an empty
  image that mounts the bind root read-only at the same path, never started, asked for
  ``stat`` of each path component): a symlink, socket or device anywhere below the root is
  refused;
- a container may be changed or looked into by a non-admin only if Dockyard manages it, it
  lies in the caller's scope and its live configuration passes the policy; Dockyard's own
  containers (``dockyard.system``) are out of everyone's reach for the actions that would
  expose them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import posixpath
import tarfile
from typing import Any

import docker
from docker.types import Mount

from app.core.errors import ForbiddenError, NotFoundError
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
HELPER_LABEL = "dockyard.helper"
HELPER_IMAGE = "dockyard/bind-check:1"
_MAX_LINK_HOPS = 40
# Go's os.FileMode bits as the engine reports them in a path stat.
_MODE_SYMLINK = 1 << 27
_MODE_DEVICE = 1 << 26
_MODE_NAMED_PIPE = 1 << 25
_MODE_SOCKET = 1 << 24
_MODE_CHAR_DEVICE = 1 << 21
_MODE_IRREGULAR = 1 << 19
_FORBIDDEN_MODES = {_MODE_SYMLINK: "a symlink", _MODE_SOCKET: "a socket",
                    _MODE_DEVICE: "a device", _MODE_CHAR_DEVICE: "a device",
                    _MODE_NAMED_PIPE: "a named pipe", _MODE_IRREGULAR: "an irregular file"}


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
        raise_for(_excused(policy, caller, resolve_binds(client, binds, policy)))


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


# -- bind sources, resolved on the engine's machine ---------------------------------------

def resolve_binds(client: docker.DockerClient, sources: list[str],
                  policy: Policy) -> list[Violation]:
    """Walk each bind source on the engine's own filesystem; refuse links out of the root.

    The engine's path stat of every component below the root, asked of the bind-check
    helper (``_BindHelper``), tells a directory from a symlink, socket or device. Any of
    those below the root is refused: a symlink planted inside an allowed root (``ln -s /``,
    or a tar through ``archive``) would make the engine mount whatever it points to.
    """
    found: list[Violation] = []
    for source in sources:
        found.extend(policy.bind_violations(source))
    if found:
        return found
    sources = [posixpath.normpath(s) for s in sources]
    if all(policy.root_of(s) in (s, None) for s in sources):
        return []  # the roots themselves: nothing below them to walk
    roots = tuple(sorted({policy.root_of(s) for s in sources} - {None}))
    helpers = _BindHelper(client, roots)
    for fresh in (False, True):
        helper = helpers.get(fresh=fresh)
        if helper is None:
            return []  # a root that does not exist: the create fails with the engine's answer
        try:
            for source in sources:
                found = _walk(client, helper, source, policy.root_of(source) or "/")
                if found:
                    return found
            return []
        except (_HelperGoneError, docker.errors.APIError):
            if fresh:
                raise
            # Removed meanwhile (a prune), or its mount fails (the root was replaced): the
            # walk starts over on a new helper.
            helpers.forget(helper)
    return []  # not reached: the second pass returns or raises


class _HelperGoneError(Exception):
    """The bind-check helper was removed while a walk asked it."""


class _BindHelper:
    """The bind-check helper of one engine and set of bind roots, kept between provisions.

    A stopped container that was never started, of a dedicated empty image
    (``HELPER_IMAGE``, imported once), that mounts each root read-only at its own path and
    carries ``dockyard.helper=bind-check`` and ``dockyard.system=true`` (so no token may
    exec, archive, commit, back up, update or remove it through Dockyard). Keeping it saves a
    create per provision; its image is its own, so it holds no image a user may want to
    remove. Each path stat is live (the engine mounts the roots for every request), so a
    kept helper answers what the path is now. One is found again by its labels and mounts
    (a container a provision made always carries ``dockyard.managed`` and never matches),
    kept per engine client in the process, and made again if it was removed.
    """

    def __init__(self, client: docker.DockerClient, roots: tuple[str, ...]) -> None:
        self.client = client
        self.roots = roots
        kept: dict[tuple[str, ...], str] = client.__dict__.setdefault("_dockyard_bind_helpers", {})
        self._kept = kept

    def get(self, fresh: bool = False) -> str | None:
        """The helper's id (None if a root does not exist); ``fresh``: not the kept one."""
        if not fresh and self.roots in self._kept:
            return self._kept[self.roots]
        helper = self._find() or self._create()
        if helper is not None:
            self._kept[self.roots] = helper
        return helper

    def forget(self, helper: str) -> None:
        """Drop a helper that failed a walk, and remove it if it is still there."""
        self._kept.pop(self.roots, None)
        # Already gone, or the engine refuses: a new one is made either way.
        with contextlib.suppress(docker.errors.APIError):
            self.client.api.remove_container(helper, force=True)

    def _find(self) -> str | None:
        rows = self.client.api.containers(all=True, filters={
            "label": [f"{HELPER_LABEL}=bind-check", f"{SYSTEM_LABEL}=true"],
            "status": ["created"]})
        for row in rows:
            labels = row.get("Labels") or {}
            mounts = sorted((m.get("Type"), m.get("Source"), m.get("Destination"), m.get("RW"))
                            for m in row.get("Mounts") or [])
            if MANAGED_LABEL not in labels and \
                    mounts == [("bind", root, root, False) for root in self.roots]:
                return row["Id"]
        return None

    def _create(self) -> str | None:
        """Create the helper, importing its image first if the engine lacks it."""
        api = self.client.api
        mounts = [Mount(target=root, source=root, type="bind", read_only=True)
                  for root in self.roots]
        kwargs = {"command": ["/dockyard-bind-check"], "entrypoint": [], "network_disabled": True,
                  "labels": {HELPER_LABEL: "bind-check", SYSTEM_LABEL: "true"},
                  "host_config": api.create_host_config(mounts=mounts, network_mode="none")}
        # Named after its roots, so that workers starting together make one; a name some
        # other container took only costs the helper its name.
        name = "dockyard-bind-check-" + hashlib.sha256("\n".join(self.roots).encode()).hexdigest()[:12]
        try:
            try:
                return api.create_container(HELPER_IMAGE, name=name, **kwargs)["Id"]
            except docker.errors.ImageNotFound:
                _import_helper_image(self.client)
                return api.create_container(HELPER_IMAGE, name=name, **kwargs)["Id"]
        except docker.errors.APIError as exc:
            if exc.status_code == 400 and "bind source path does not exist" in str(exc.explanation):
                return None
            if exc.status_code != 409:
                raise
        return self._find() or api.create_container(HELPER_IMAGE, **kwargs)["Id"]


def _import_helper_image(client: docker.DockerClient) -> None:
    """``docker import`` of an empty tar as ``HELPER_IMAGE``: no files, no size."""
    repository, tag = HELPER_IMAGE.rsplit(":", 1)
    client.api.import_image_from_data(
        bytes(2 * tarfile.BLOCKSIZE), repository=repository, tag=tag,
        changes=[f"LABEL {HELPER_LABEL}=bind-check {SYSTEM_LABEL}=true"])


def _walk(client: docker.DockerClient, helper: str, source: str, root: str) -> list[Violation]:
    """Stat each component of ``source`` below ``root``; the first bad one is the answer.

    Raises:
        _HelperGoneError: a stat answered 404 because the helper itself is gone (the engine's
            HEAD answers carry no body to tell that from a missing path).
    """
    below = [part for part in source[len(root):].split("/") if part]
    path = root
    for part in below:
        path = posixpath.join(path, part)
        stat = _path_stat(client, helper, path)
        if stat is None:
            try:  # ids are never reused: the helper there now was there at the stat
                client.api.inspect_container(helper)
            except docker.errors.NotFound:
                raise _HelperGoneError(helper) from None
            return []  # does not exist (yet): the engine refuses a missing bind source
        for bit, what in _FORBIDDEN_MODES.items():
            if stat.get("mode", 0) & bit:
                target = f" to '{stat.get('linkTarget')}'" if bit == _MODE_SYMLINK else ""
                rule = "no-engine-socket" if bit == _MODE_SOCKET else "bind-roots"
                return [Violation(rule, f"bind source '{source}': '{path}' is {what}{target} "
                                        "on the engine's host; bind sources must be plain "
                                        "directories or files under the allowed roots")]
    return []


def _path_stat(client: docker.DockerClient, container: str, path: str) -> dict[str, Any] | None:
    """``HEAD /containers/{id}/archive?path=``: the engine's lstat of ``path``, or None."""
    api = client.api
    response = api.head(api._url("/containers/{0}/archive", container), params={"path": path},
                        timeout=api.timeout)
    if response.status_code == 404:
        return None
    api._raise_for_status(response)
    header = response.headers.get("X-Docker-Container-Path-Stat")
    return json.loads(base64.b64decode(header)) if header else None

