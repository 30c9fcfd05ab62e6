"""Bind sources walked on the engine's own machine: what a bind mount would really reach.

A symlink planted inside an allowed root (``ln -s /``, or a tar through ``archive``) would
make the engine mount whatever it points to, and only the engine's machine can tell: the
worker may run elsewhere (``tcp://``, ``ssh://``, an agent). So each path component below
the root is stat-ed by the engine itself, through a helper container that is never started
(``_BindHelper``). ``app.engine.guard.check_references`` calls this before every create.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import posixpath
import tarfile
from typing import Any

import docker
from docker.types import Mount

from app.core.errors import EngineError
from app.security.policy import MANAGED_LABEL, SYSTEM_LABEL, Policy, Violation

HELPER_LABEL = "dockyard.helper"
HELPER_IMAGE = "dockyard/bind-check:1"
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
    helper = helpers.get()
    try:
        return _walk_all(client, helper, sources, policy)
    except (_HelperGoneError, docker.errors.APIError):
        # Removed meanwhile (a prune), or its mount fails (the root was replaced): once more,
        # on a new helper; a second failure is the job's.
        helpers.forget(helper)
    return _walk_all(client, helpers.get(fresh=True), sources, policy)


def _walk_all(client: docker.DockerClient, helper: str | None, sources: list[str],
              policy: Policy) -> list[Violation]:
    """The first source's violations found by ``_walk``; none if there is no helper (a root
    that does not exist: the create then fails with the engine's answer)."""
    if helper is None:
        return []
    for source in sources:
        found = _walk(client, helper, source, policy.root_of(source) or "/")
        if found:
            return found
    return []


def remove_helpers(client: docker.DockerClient, root: str) -> int:
    """Remove the kept helpers that mount ``root``, a root given up (a test's or a
    benchmark's own); answers how many went. A helper still needed is made again."""
    removed = 0
    for row in client.api.containers(all=True, filters={"label": f"{HELPER_LABEL}=bind-check"}):
        if any(m.get("Source") == root for m in row.get("Mounts") or []):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(row["Id"], force=True)
                removed += 1
    return removed


class _HelperGoneError(Exception):
    """The bind-check helper was removed while a walk asked it."""


class _BindHelper:
    """The bind-check helper of one engine and set of bind roots, kept between provisions.

    A stopped container that was never started, of a dedicated empty image
    (``HELPER_IMAGE``, imported once), that mounts each root read-only at its own path and
    carries ``dockyard.helper=bind-check`` and ``dockyard.system=true`` (so no token may
    exec, archive, commit, back up, update or remove it through Dockyard). Keeping it saves a
    create per provision. Its image is its own: it holds no image a user may want to
    remove, and no VOLUME of a user's image is mounted over the paths it stats (a helper
    is used only if the roots are its only mounts). Each path stat is live (the engine
    mounts the roots for every request), so a kept helper answers what the path is now.
    One is found again by its labels and mounts (a container a provision made always
    carries ``dockyard.managed`` and never matches), kept per engine client in the
    process, and made again if it was removed.
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
            if MANAGED_LABEL not in (row.get("Labels") or {}) and self._only_roots(row):
                return row["Id"]
        return None

    def _only_roots(self, container: dict[str, Any]) -> bool:
        """Whether ``container`` (a listing row or an inspect) mounts each root read-only at
        its own path and nothing else: a volume an image declares below a root would hide
        what the root holds there from the walk."""
        mounts = sorted((m.get("Type"), m.get("Source"), m.get("Destination"), m.get("RW"))
                        for m in container.get("Mounts") or [])
        return mounts == [("bind", root, root, False) for root in self.roots]

    def _create(self) -> str | None:
        """Create the helper, importing its image if the engine lacks it, or again if what
        the tag names now (someone tagged another image so) gives the helper other mounts
        than the roots.

        Raises:
            EngineError: the helper still has other mounts (none is left behind).
        """
        for _ in range(2):
            helper = self._create_once()
            if helper is None or self._only_roots(self.client.api.inspect_container(helper)):
                return helper
            self.forget(helper)
            _import_helper_image(self.client)
        raise EngineError(f"the bind-check helper made from '{HELPER_IMAGE}' mounts more than "
                          f"the bind roots; no bind source can be checked on this engine")

    def _create_once(self) -> str | None:
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

