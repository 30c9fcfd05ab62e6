"""Looking into a container on one engine: ``docker top``, ``stats``, ``diff`` and ``port``."""

from __future__ import annotations

from typing import Any

import docker

from app.engine.containers import describe_container, require_container, require_running

# -- docker top / stats / diff / port -------------------------------------------------------


def container_top(client: docker.DockerClient, ref: str, ps_args: str | None = None) -> dict[str, Any]:
    """``docker top [ps OPTIONS]``: the process table the engine reports (host PIDs)."""
    info = require_running(client, ref, "list processes of")
    top = client.api.top(info["Id"], ps_args=ps_args or None)
    return {"titles": top.get("Titles") or [], "processes": top.get("Processes") or []}


_DIFF_KINDS = {0: "C", 1: "A", 2: "D"}


def container_changes(client: docker.DockerClient, ref: str) -> list[dict[str, str]]:
    """``docker diff``: paths added (A), changed (C) or deleted (D) in the writable layer."""
    info = require_container(client, ref)
    return [{"path": row["Path"], "kind": _DIFF_KINDS.get(row["Kind"], "?")}
            for row in client.api.diff(info["Id"]) or []]


def container_ports(client: docker.DockerClient, ref: str) -> list[dict[str, Any]]:
    """``docker port``: the published mappings (container port → host address)."""
    info = require_container(client, ref)
    return [p for p in describe_container(info)["ports"] if p["host_port"] is not None]


def container_stats(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    """``docker stats --no-stream``: one sample, computed the way the CLI computes it."""
    info = require_container(client, ref)
    raw = client.api.stats(info["Id"], stream=False)
    return {"id": info["Id"], "name": info["Name"].lstrip("/"), **stats_figures(raw)}


def stats_figures(raw: dict[str, Any]) -> dict[str, Any]:
    """CPU %, memory without page cache, net and block I/O from an engine stats sample.

    Mirrors docker/cli ``stats_helpers.go``: CPU % is the container's share of the host's
    CPU time between the two samples the engine took, times the online CPUs.
    """
    cpu, precpu = raw.get("cpu_stats") or {}, raw.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - \
        (precpu.get("cpu_usage") or {}).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - precpu.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or [])
    cpu_percent = cpu_delta / system_delta * online * 100.0 \
        if system_delta > 0 and cpu_delta > 0 else 0.0
    memory = raw.get("memory_stats") or {}
    usage, limit = memory.get("usage", 0), memory.get("limit", 0)
    counters = memory.get("stats") or {}
    cache = counters.get("total_inactive_file", counters.get("inactive_file", 0))
    used = usage - cache if cache < usage else usage
    rx = sum(n.get("rx_bytes", 0) for n in (raw.get("networks") or {}).values())
    tx = sum(n.get("tx_bytes", 0) for n in (raw.get("networks") or {}).values())
    read = written = 0
    for entry in (raw.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        op = (entry.get("op") or " ")[0].lower()
        if op == "r":
            read += entry.get("value", 0)
        elif op == "w":
            written += entry.get("value", 0)
    return {"cpu_percent": round(cpu_percent, 2), "online_cpus": online,
            "memory": {"usage": used, "limit": limit,
                       "percent": round(used / limit * 100.0, 2) if limit else 0.0},
            "network": {"rx_bytes": rx, "tx_bytes": tx},
            "block_io": {"read_bytes": read, "write_bytes": written},
            "pids": (raw.get("pids_stats") or {}).get("current", 0),
            "read_at": raw.get("read")}
