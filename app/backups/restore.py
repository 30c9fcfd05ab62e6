"""Restore: the provision spec (and image changes) a bundle describes."""

from __future__ import annotations

import json
import re
from typing import Any

_DOCKYARD_PREFIX = "dockyard."  # Dockyard's own labels are set anew, never carried over
_DEFAULT_NETWORKS = ("", "default", "bridge")


def image_changes(config: dict[str, Any]) -> list[str]:
    """``docker import --change`` lines restoring CMD, ENTRYPOINT, ENV, WORKDIR, USER, EXPOSE, LABEL."""
    cfg = config.get("Config") or {}
    changes = []
    for key, instruction in (("Entrypoint", "ENTRYPOINT"), ("Cmd", "CMD")):
        if cfg.get(key):
            changes.append(f"{instruction} {json.dumps(cfg[key])}")
    for item in cfg.get("Env") or []:
        name, _, value = item.partition("=")
        changes.append(f"ENV {name}={_dockerfile_quote(value)}")
    if cfg.get("WorkingDir"):
        changes.append(f"WORKDIR {cfg['WorkingDir']}")
    if cfg.get("User"):
        changes.append(f"USER {cfg['User']}")
    for port in sorted(cfg.get("ExposedPorts") or {}):
        changes.append(f"EXPOSE {port}")
    for name, value in sorted((cfg.get("Labels") or {}).items()):
        if not name.startswith(_DOCKYARD_PREFIX):
            changes.append(f"LABEL {_dockerfile_quote(name)}={_dockerfile_quote(value)}")
    return changes


def _dockerfile_quote(value: str) -> str:
    # Dockerfile ENV/LABEL values expand $VARS and split on spaces unless quoted and escaped.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def restore_spec(manifest: dict[str, Any], config: dict[str, Any], request: dict[str, Any],
                 image: str) -> dict[str, Any]:
    """The provision spec that recreates the backed-up container, with the request's overrides.

    Ports come from the saved bindings (``overrides.ports`` replace those with the same
    container port and protocol); mounts, labels, restart policy, limits and network mode
    from the saved HostConfig. The image is the imported filesystem, which carries the saved
    command and environment.
    """
    cfg, host_cfg = config.get("Config") or {}, config.get("HostConfig") or {}
    ports: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for key, bindings in sorted((host_cfg.get("PortBindings") or {}).items()):
        number, _, protocol = key.partition("/")
        for binding in bindings or [{}]:
            ports.setdefault((int(number), protocol or "tcp"), []).append({
                "container_port": int(number), "protocol": protocol or "tcp",
                "host_ip": binding.get("HostIp") or None,
                "host_port": int(binding["HostPort"]) if binding.get("HostPort") else None})
    overridden: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for port in (request.get("overrides") or {}).get("ports") or []:
        overridden.setdefault((port["container_port"], port["protocol"]), []).append(port)
    ports.update(overridden)
    restart = host_cfg.get("RestartPolicy") or {}
    network = host_cfg.get("NetworkMode") or ""
    spec: dict[str, Any] = {
        "image": image,
        "name": request.get("name") or manifest["container"]["name"],
        "labels": {k: v for k, v in (cfg.get("Labels") or {}).items()
                   if not k.startswith(_DOCKYARD_PREFIX)}
        | {"dockyard.restored-from": manifest["id"]},
        "ports": [p for key in sorted(ports) for p in ports[key]],
        "volumes": restore_mounts(manifest, config),
        "restart_policy": {"name": restart.get("Name") or "no",
                           "maximum_retry_count": restart.get("MaximumRetryCount") or 0},
        "memory": host_cfg.get("Memory") or None,
        "cpus": (host_cfg.get("NanoCpus") or 0) / 1e9 or None,
        "network": None if network in _DEFAULT_NETWORKS else network,
        "pull": "never", "wait_for": "running", "wait_timeout": 60,
        "replace": bool(request.get("replace")), "start": bool(request.get("start", True)),
    }
    for field, key in (("privileged", "Privileged"), ("cap_add", "CapAdd"),
                       ("devices", "Devices"), ("security_opt", "SecurityOpt"),
                       ("pid_mode", "PidMode"), ("ipc_mode", "IpcMode"), ("uts_mode", "UTSMode")):
        value = host_cfg.get(key)
        if value and value not in ("private", "shareable"):
            spec[field] = value  # asked for again, so the policy judges it again
    return spec


def restore_mounts(manifest: dict[str, Any], config: dict[str, Any]) -> list[dict[str, Any]]:
    """Volume and bind mounts as provision-spec entries (anonymous volumes get fresh ones)."""
    anonymous = {p.get("volume") for p in manifest["parts"] if p.get("anonymous")}
    mounts = []
    for mount in config.get("Mounts") or []:
        kind = mount.get("Type")
        if kind == "volume":
            name = mount.get("Name")
            mounts.append({"source": None if name in anonymous or _looks_anonymous(name) else name,
                           "target": mount["Destination"], "read_only": not mount.get("RW", True),
                           "type": "volume"})
        elif kind == "bind":
            mounts.append({"source": mount["Source"], "target": mount["Destination"],
                           "read_only": not mount.get("RW", True), "type": "bind"})
    return mounts


def _looks_anonymous(name: str | None) -> bool:
    return bool(name) and re.fullmatch(r"[0-9a-f]{64}", name or "") is not None


def default_image(manifest: dict[str, Any], repository: str | None) -> str:
    """Where the imported filesystem is tagged: ``REPO:backup-<id>``."""
    repo = repository or f"dockyard-restore/{manifest['container']['name'].lower()}"
    return f"{repo}:backup-{manifest['id'].lower()}"
