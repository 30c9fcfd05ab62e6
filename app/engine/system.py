"""Engine-wide reads: ping, version, info and disk usage (``docker version/info/system df``)."""

from __future__ import annotations

from typing import Any

import docker


def engine_version(client: docker.DockerClient) -> dict[str, Any]:
    """``docker version`` (server side)."""
    return client.version()


def engine_info(client: docker.DockerClient) -> dict[str, Any]:
    """``docker info``."""
    return client.info()


def host_summary(client: docker.DockerClient) -> dict[str, Any]:
    """A live ping with the engine version and container counts, in two engine calls."""
    info = client.info()
    version = client.version()
    return {
        "reachable": True,
        "engine_version": version.get("Version"),
        "api_version": version.get("ApiVersion"),
        "os": info.get("OperatingSystem"),
        "architecture": info.get("Architecture"),
        "containers": {"total": info.get("Containers", 0),
                       "running": info.get("ContainersRunning", 0),
                       "paused": info.get("ContainersPaused", 0),
                       "stopped": info.get("ContainersStopped", 0)},
        "images": info.get("Images", 0),
    }


def disk_usage(client: docker.DockerClient) -> dict[str, Any]:
    """``docker system df``: totals per type as the CLI computes them, plus the raw items."""
    df = client.df()
    images = df.get("Images") or []
    containers = df.get("Containers") or []
    volumes = df.get("Volumes") or []
    cache = df.get("BuildCache") or []
    image_size = sum(i.get("Size", 0) for i in images)
    # The CLI counts shared layers once: LayersSize is the de-duplicated figure.
    image_total = df.get("LayersSize", image_size)
    image_active = sum(1 for i in images if i.get("Containers", 0) > 0)
    image_reclaimable = image_total - sum(
        i.get("Size", 0) - i.get("SharedSize", 0) if i.get("SharedSize", -1) >= 0 else 0
        for i in images if i.get("Containers", 0) > 0)
    active_states = ("running", "paused", "restarting")
    volume_sizes = [v.get("UsageData", {}).get("Size", 0) for v in volumes]
    volume_active = sum(1 for v in volumes if v.get("UsageData", {}).get("RefCount", 0) > 0)
    return {
        "images": {"total": len(images), "active": image_active, "size": image_total,
                   "reclaimable": max(image_reclaimable, 0)},
        "containers": {"total": len(containers),
                       "active": sum(1 for c in containers if c.get("State") in active_states),
                       "size": sum(c.get("SizeRw", 0) for c in containers),
                       "reclaimable": sum(c.get("SizeRw", 0) for c in containers
                                          if c.get("State") not in active_states)},
        "volumes": {"total": len(volumes), "active": volume_active,
                    "size": sum(s for s in volume_sizes if s > 0),
                    "reclaimable": sum(s for v, s in zip(volumes, volume_sizes, strict=True)
                                       if s > 0 and v.get("UsageData", {}).get("RefCount", 0) == 0)},
        "build_cache": {"total": len(cache),
                        "active": sum(1 for c in cache if c.get("InUse")),
                        "size": sum(c.get("Size", 0) for c in cache if not c.get("Shared")),
                        "reclaimable": sum(c.get("Size", 0) for c in cache
                                           if not c.get("InUse") and not c.get("Shared"))},
    }
