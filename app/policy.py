"""The server-side policy: what a container spec may ask of an engine."""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.errors import PolicyViolationError

ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
RULES = ("no-privileged", "no-host-network", "no-host-pid", "no-host-ipc", "no-host-uts",
         "no-cap-add", "no-devices", "no-sysctls", "no-security-opt", "bind-roots",
         "no-engine-socket", "allowed-registries")


@dataclass(frozen=True)
class Violation:
    rule: str
    detail: str


@dataclass(frozen=True)
class Policy:
    """Rules from settings.

    Attributes:
        bind_roots: host directories under which bind mounts may live.
        allowed_registries: registry hosts images may come from (empty: any).
        admin_exceptions: rules an admin token may break.
        engine_sockets: socket paths no container may mount, nor a folder above them.
    """

    bind_roots: tuple[str, ...]
    allowed_registries: tuple[str, ...] = ()
    admin_exceptions: frozenset[str] = frozenset()
    engine_sockets: tuple[str, ...] = ENGINE_SOCKETS

    def violations(self, spec: dict[str, Any], is_admin: bool = False) -> list[Violation]:
        """Every rule ``spec`` breaks, minus those an admin is excused from."""
        found = list(self._check(spec))
        if is_admin:
            found = [v for v in found if v.rule not in self.admin_exceptions]
        return found

    def enforce(self, spec: dict[str, Any], is_admin: bool = False) -> None:
        """Raise PolicyViolationError naming the first rule broken (and listing all)."""
        _raise_for(self.violations(spec, is_admin))

    def exec_violations(self, spec: dict[str, Any], is_admin: bool = False) -> list[Violation]:
        """Every rule an exec spec breaks (today only ``privileged``), minus admin exceptions."""
        found = [Violation("no-privileged", "privileged exec is not allowed")] \
            if spec.get("privileged") else []
        if is_admin:
            found = [v for v in found if v.rule not in self.admin_exceptions]
        return found

    def enforce_exec(self, spec: dict[str, Any], is_admin: bool = False) -> None:
        """Like ``enforce``, for ``docker exec``."""
        _raise_for(self.exec_violations(spec, is_admin))

    def _check(self, spec: dict[str, Any]) -> Iterable[Violation]:
        if spec.get("privileged"):
            yield Violation("no-privileged", "privileged containers are not allowed")
        network = spec.get("network") or ""
        if network == "host":
            yield Violation("no-host-network", "the host network namespace is not allowed")
        for field, rule in (("pid_mode", "no-host-pid"), ("ipc_mode", "no-host-ipc"),
                            ("uts_mode", "no-host-uts")):
            if spec.get(field) == "host":
                yield Violation(rule, f"{field} 'host' shares the host's namespace")
        if spec.get("cap_add"):
            yield Violation("no-cap-add", f"added capabilities are not allowed: {spec['cap_add']}")
        if spec.get("devices"):
            yield Violation("no-devices", "host devices are not allowed")
        if spec.get("sysctls"):
            yield Violation("no-sysctls", "sysctls are not allowed")
        if spec.get("security_opt"):
            yield Violation("no-security-opt", "security options are not allowed")
        for volume in spec.get("volumes") or []:
            if volume.get("type") == "bind":
                yield from self._check_bind(volume["source"])
        if self.allowed_registries:
            domain = image_registry(spec.get("image", ""))
            if domain not in self.allowed_registries:
                yield Violation("allowed-registries",
                                f"images from '{domain}' are not allowed; allowed: "
                                f"{', '.join(self.allowed_registries)}")

    def _check_bind(self, source: str) -> Iterable[Violation]:
        if ".." in source.split("/"):
            yield Violation("bind-roots", f"bind source '{source}' contains '..'")
            return
        lexical = posixpath.normpath(source)
        if self._touches_socket(lexical):
            yield Violation("no-engine-socket", f"bind source '{source}' exposes the engine socket")
            return
        if not self._under_roots(lexical):
            yield Violation("bind-roots", f"bind source '{source}' is outside the allowed roots "
                                          f"({', '.join(self.bind_roots) or 'none configured'})")

    def check_resolved_bind(self, source: str) -> list[Violation]:
        """Re-check a bind source on the engine's own filesystem, following symlinks.

        Only meaningful where the worker shares the engine's filesystem (a unix socket).
        """
        resolved = os.path.realpath(source)
        found = []
        if self._touches_socket(resolved) or _is_socket(resolved):
            found.append(Violation("no-engine-socket", f"bind source '{source}' resolves to a socket"))
        elif not self._under_roots(resolved):
            found.append(Violation("bind-roots", f"bind source '{source}' resolves to "
                                                 f"'{resolved}', outside the allowed roots"))
        return found

    def _under_roots(self, path: str) -> bool:
        return any(path == root or path.startswith(root.rstrip("/") + "/")
                   for root in (posixpath.normpath(r) for r in self.bind_roots))

    def _touches_socket(self, path: str) -> bool:
        # A bind of the socket itself, or of any folder above it, exposes the engine.
        for sock in self.engine_sockets:
            if path == sock or sock.startswith(path.rstrip("/") + "/") or path == "/":
                return True
        return path.endswith(".sock") and "docker" in posixpath.basename(path)


def _raise_for(found: list[Violation]) -> None:
    if found:
        raise PolicyViolationError(
            found[0].rule, found[0].detail,
            violations=[{"rule": v.rule, "detail": v.detail} for v in found])


def image_registry(reference: str) -> str:
    """The registry host of an image reference, as docker resolves it."""
    first, sep, _rest = reference.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def policy_from_settings(settings: Any, engine_socket: str | None = None) -> Policy:
    sockets = ENGINE_SOCKETS + ((engine_socket,) if engine_socket else ())
    return Policy(bind_roots=tuple(settings.bind_roots),
                  allowed_registries=tuple(settings.allowed_registries),
                  admin_exceptions=frozenset(settings.admin_policy_exceptions),
                  engine_sockets=sockets)


# -- where images come from, and which local names look as if they came from there ---------

_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")


def registry_host(address: str) -> str:
    """A registry address compared the way docker resolves it: lower case, Hub aliases merged."""
    address = address.lower()
    return "docker.io" if address in _DOCKER_HUB_ALIASES else address


def _bound(policy: Policy, rule: str, is_admin: bool) -> bool:
    return not (is_admin and rule in policy.admin_exceptions)


def image_allowed(policy: Policy, reference: str) -> bool:
    """True when the allow-list is empty or names the registry ``reference`` lives in."""
    if not policy.allowed_registries:
        return True
    allowed = {registry_host(r) for r in policy.allowed_registries}
    return registry_host(image_registry(reference)) in allowed


def enforce_image_source(policy: Policy, reference: str, is_admin: bool, doing: str) -> None:
    """Refuse (403 ``allowed-registries``) an image from a registry off the allow-list.

    Args:
        doing: what the image is for, for the message (``pull``, ``FROM`` …).
    """
    if image_allowed(policy, reference) or not _bound(policy, "allowed-registries", is_admin):
        return
    _raise_for([Violation("allowed-registries",
                          f"{doing} '{reference}': images from "
                          f"'{registry_host(image_registry(reference))}' are not allowed; "
                          f"allowed: {', '.join(policy.allowed_registries)}")])


def enforce_local_name(policy: Policy, target: str, source_allowed: bool, is_admin: bool,
                       doing: str) -> None:
    """Refuse to give an image a local name in an allowed registry's namespace unless the
    image itself comes from an allowed registry (403 ``allowed-registries``).

    With an allow-list, provision runs a local image by name (``pull: never``/``missing``);
    a name such as ``allowed:5000/team/web`` made by tag, load, import, commit or a build from
    ``scratch`` would let any filesystem pass as an allowed image.
    """
    if not policy.allowed_registries or source_allowed or not image_allowed(policy, target) \
            or not _bound(policy, "allowed-registries", is_admin):
        return
    _raise_for([Violation("allowed-registries",
                          f"{doing} may not name '{target}': that is the namespace of allowed "
                          f"registry '{registry_host(image_registry(target))}', and the image "
                          "does not come from an allowed registry")])
