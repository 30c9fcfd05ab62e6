"""The server-side policy: allow-lists for what a container spec may ask of an engine.

Every rule is an allow-list applied to the normalized request: a value passes only if it is
one the policy knows to be private to the container (a namespace mode, a network, a volume
driver option) or under a configured root (a bind source). What a request *refers to* on the
engine (a network by id, a named volume, another container's mounts, a symlink under a bind
root) is judged again on the worker by ``app.engine.guard`` with the same rules.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.core.errors import PolicyViolationError

ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
# Networks every container may join: docker's default bridge ("default" is its alias) and none.
BUILTIN_NETWORKS = ("bridge", "default", "none")
# Namespace modes that keep the namespace private to the container (None: the engine default).
PRIVATE_MODES: dict[str, tuple[str | None, ...]] = {
    "pid_mode": (None, ""),
    "ipc_mode": (None, "", "private", "shareable", "none"),
    "uts_mode": (None, ""),
    "userns_mode": (None, ""),
    "cgroupns": (None, "", "private"),
}
_HOST_RULES = {"pid_mode": "no-host-pid", "ipc_mode": "no-host-ipc", "uts_mode": "no-host-uts",
               "userns_mode": "no-host-userns", "cgroupns": "no-host-cgroupns"}
# Options of the local volume driver that keep a volume a private directory or a tmpfs.
# Anything else (o=bind, device=/path, type=nfs/ext4/…) mounts something of the host's.
_SAFE_TMPFS_OPTIONS = frozenset({"type", "device", "o"})
SYSTEM_LABEL = "dockyard.system"
MANAGED_LABEL = "dockyard.managed"
SCOPE_LABEL = "dockyard.scope"
# Labels a request may set under the reserved prefix (Dockyard sets the others itself).
_SETTABLE_DOCKYARD_LABELS = frozenset({"dockyard.restored-from"})


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
        allowed_networks: networks besides bridge and none that containers may join.
        allowed_volumes: named volumes an admin vouched for although their driver or
            options would otherwise be refused.
    """

    bind_roots: tuple[str, ...]
    allowed_registries: tuple[str, ...] = ()
    admin_exceptions: frozenset[str] = frozenset()
    engine_sockets: tuple[str, ...] = ENGINE_SOCKETS
    allowed_networks: tuple[str, ...] = ()
    allowed_volumes: tuple[str, ...] = ()

    # -- the request ------------------------------------------------------------------------

    def violations(self, spec: dict[str, Any], is_admin: bool = False) -> list[Violation]:
        """Every rule ``spec`` breaks, minus those an admin is excused from."""
        return self.excuse(list(self._check(spec)), is_admin)

    def enforce(self, spec: dict[str, Any], is_admin: bool = False) -> None:
        """Raise PolicyViolationError naming the first rule broken (and listing all)."""
        raise_for(self.violations(spec, is_admin))

    def excuse(self, found: list[Violation], is_admin: bool) -> list[Violation]:
        """``found`` without the rules an admin may break (only for admins)."""
        if is_admin:
            return [v for v in found if v.rule not in self.admin_exceptions]
        return found

    def exec_violations(self, spec: dict[str, Any], is_admin: bool = False) -> list[Violation]:
        """Every rule an exec spec breaks (today only ``privileged``), minus admin exceptions."""
        found = [Violation("no-privileged", "privileged exec is not allowed")] \
            if spec.get("privileged") else []
        return self.excuse(found, is_admin)

    def enforce_exec(self, spec: dict[str, Any], is_admin: bool = False) -> None:
        """Like ``enforce``, for ``docker exec``."""
        raise_for(self.exec_violations(spec, is_admin))

    def _check(self, spec: dict[str, Any]) -> Iterable[Violation]:
        if spec.get("privileged"):
            yield Violation("no-privileged", "privileged containers are not allowed")
        yield from self.network_violations(spec.get("network"))
        for field in PRIVATE_MODES:
            yield from self._mode_violations(field, spec.get(field))
        if spec.get("cap_add"):
            yield Violation("no-cap-add", f"added capabilities are not allowed: {spec['cap_add']}")
        if spec.get("devices"):
            yield Violation("no-devices", "host devices are not allowed")
        if spec.get("sysctls"):
            yield Violation("no-sysctls", "sysctls are not allowed")
        if spec.get("security_opt"):
            yield Violation("no-security-opt", "security options are not allowed")
        yield from label_violations(spec.get("labels") or {})
        for volume in spec.get("volumes") or []:
            if volume.get("type") == "bind":
                yield from self.bind_violations(volume["source"])
        if self.allowed_registries:
            domain = image_registry(spec.get("image", ""))
            if domain not in self.allowed_registries:
                yield Violation("allowed-registries",
                                f"images from '{domain}' are not allowed; allowed: "
                                f"{', '.join(self.allowed_registries)}")

    def network_violations(self, network: str | None) -> Iterable[Violation]:
        """A network mode by its literal: bridge, none or a listed network; nothing else."""
        if network in (None, ""):
            return
        lowered = network.strip().lower()
        if lowered == "host":
            yield Violation("no-host-network", "the host network namespace is not allowed")
        elif lowered.startswith("container:"):
            yield Violation("no-container-namespace",
                            f"network '{network}' joins another container's network namespace")
        elif network not in BUILTIN_NETWORKS and network not in self.allowed_networks:
            yield Violation("allowed-networks",
                            f"network '{network}' is not allowed; allowed: "
                            f"{', '.join(('bridge', 'none', *self.allowed_networks))}")

    def _mode_violations(self, field: str, value: str | None) -> Iterable[Violation]:
        if value in PRIVATE_MODES[field]:
            return
        lowered = str(value).strip().lower()
        if lowered.startswith("container:"):
            yield Violation("no-container-namespace",
                            f"{field} '{value}' joins another container's namespace")
        elif lowered == "host":
            yield Violation(_HOST_RULES[field], f"{field} 'host' shares the host's namespace")
        else:
            allowed = [v for v in PRIVATE_MODES[field] if v]
            yield Violation("private-namespaces",
                            f"{field} '{value}' is not a private mode"
                            + (f"; allowed: {', '.join(allowed)}" if allowed else ""))

    # -- bind sources ----------------------------------------------------------------------

    def bind_violations(self, source: str) -> Iterable[Violation]:
        """A bind source by its text: absolute, no '..', under a root, not the engine socket."""
        if not source.startswith("/") or ".." in source.split("/"):
            yield Violation("bind-roots", f"bind source '{source}' is not a plain absolute path")
            return
        lexical = posixpath.normpath(source)
        if self._touches_socket(lexical):
            yield Violation("no-engine-socket", f"bind source '{source}' exposes the engine socket")
            return
        if not self.under_roots(lexical):
            yield Violation("bind-roots", f"bind source '{source}' is outside the allowed roots "
                                          f"({', '.join(self.bind_roots) or 'none configured'})")

    def root_of(self, path: str) -> str | None:
        """The configured root ``path`` lies under (normalized), if any."""
        for root in (posixpath.normpath(r) for r in self.bind_roots):
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return root
        return None

    def under_roots(self, path: str) -> bool:
        return self.root_of(path) is not None

    def _touches_socket(self, path: str) -> bool:
        # A bind of the socket itself, or of any folder above it, exposes the engine.
        for sock in self.engine_sockets:
            if path == sock or sock.startswith(path.rstrip("/") + "/") or path == "/":
                return True
        return path.endswith(".sock") and "docker" in posixpath.basename(path)

    # -- what exists on the engine ------------------------------------------------------------

    def volume_violations(self, volume: dict[str, Any]) -> list[Violation]:
        """A named volume by its ``docker volume inspect``: a private local directory only."""
        name = volume.get("Name", "")
        if name in self.allowed_volumes:
            return []
        labels = volume.get("Labels") or {}
        if labels.get(SYSTEM_LABEL) == "true":
            return [Violation("dockyard-system", f"volume '{name}' belongs to Dockyard itself")]
        driver = volume.get("Driver") or "local"
        if driver != "local":
            return [Violation("volume-drivers", f"volume '{name}' uses driver '{driver}'; only "
                                                "'local' volumes may be mounted")]
        options = volume.get("Options") or {}
        if options and not _is_plain_tmpfs(options):
            shown = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
            return [Violation("volume-options", f"volume '{name}' has driver options ({shown}) "
                                                "that mount something of the host's")]
        return []

    def live_violations(self, info: dict[str, Any]) -> list[Violation]:
        """Rules an existing container breaks, judged from its ``docker inspect``.

        Named volumes are judged by the caller (they need an engine call); their names are
        in ``volume_names(info)``.
        """
        host_config = info.get("HostConfig") or {}
        spec: dict[str, Any] = {
            "privileged": host_config.get("Privileged"),
            "network": None if host_config.get("NetworkMode") in (None, "", *BUILTIN_NETWORKS)
            else host_config.get("NetworkMode"),
            "pid_mode": host_config.get("PidMode") or None,
            "ipc_mode": host_config.get("IpcMode") or None,
            "uts_mode": host_config.get("UTSMode") or None,
            "userns_mode": host_config.get("UsernsMode") or None,
            # Not judged live: on cgroup v1 engines 'host' is the engine's own default for
            # every container (a request still may not ask for it).
            "cgroupns": None,
            "cap_add": host_config.get("CapAdd"),
            "devices": host_config.get("Devices"),
            "sysctls": host_config.get("Sysctls"),
            "security_opt": [o for o in host_config.get("SecurityOpt") or []
                             if not o.startswith("label=disable")] or None,
        }
        found = [v for v in self._check(spec) if v.rule != "allowed-registries"]
        for network in ((info.get("NetworkSettings") or {}).get("Networks") or {}):
            found.extend(self.network_violations(network))
        for mount in info.get("Mounts") or []:
            if mount.get("Type") == "bind":
                found.extend(self.bind_violations(mount.get("Source") or ""))
        return _unique(found)


def label_violations(labels: dict[str, str]) -> list[Violation]:
    """Labels under Dockyard's reserved prefix that a request may not set (containers and
    volumes alike)."""
    return [Violation("reserved-labels", f"label '{key}' is reserved for Dockyard")
            for key in labels
            if key.startswith("dockyard.") and key not in _SETTABLE_DOCKYARD_LABELS]


def volume_names(info: dict[str, Any]) -> list[str]:
    """The named volumes a container mounts, from its ``docker inspect``."""
    return [m["Name"] for m in info.get("Mounts") or [] if m.get("Type") == "volume" and m.get("Name")]


def _is_plain_tmpfs(options: dict[str, str]) -> bool:
    return set(options) <= _SAFE_TMPFS_OPTIONS and options.get("type") == "tmpfs" \
        and options.get("device", "tmpfs") == "tmpfs" \
        and "bind" not in (options.get("o") or "").split(",")


def _unique(found: list[Violation]) -> list[Violation]:
    seen, out = set(), []
    for violation in found:
        if violation not in seen:
            seen.add(violation)
            out.append(violation)
    return out


def raise_for(found: list[Violation]) -> None:
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


def policy_from_settings(settings: Any, engine_socket: str | None = None) -> Policy:
    sockets = ENGINE_SOCKETS + ((engine_socket,) if engine_socket else ())
    return Policy(bind_roots=tuple(settings.bind_roots),
                  allowed_registries=tuple(settings.allowed_registries),
                  admin_exceptions=frozenset(settings.admin_policy_exceptions),
                  engine_sockets=sockets,
                  allowed_networks=tuple(settings.allowed_networks),
                  allowed_volumes=tuple(settings.allowed_volumes))


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
    raise_for([Violation("allowed-registries",
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
    raise_for([Violation("allowed-registries",
                          f"{doing} may not name '{target}': that is the namespace of allowed "
                          f"registry '{registry_host(image_registry(target))}', and the image "
                          "does not come from an allowed registry")])
