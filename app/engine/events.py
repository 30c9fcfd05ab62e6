"""Engine events over a bounded window (``docker events --since --until``)."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import docker

EVENT_LIMIT = 10_000
MAX_WINDOW_SECONDS = 24 * 3600
DEFAULT_WINDOW_SECONDS = 3600
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def parse_event_time(value: str, now: float) -> float:
    """A time as ``docker events`` takes it: unix seconds, RFC 3339, or a duration ago (``10m``).

    Raises:
        ValueError: none of those.
    """
    value = value.strip()
    match = _DURATION.match(value)
    if match:
        return now - float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"'{value}' has no time zone")
    return moment.timestamp()


def event_view(raw: dict[str, Any]) -> dict[str, Any]:
    """One engine event in Dockyard's shape (the engine's legacy fields dropped)."""
    actor = raw.get("Actor") or {}
    nanos = raw.get("timeNano") or int(raw.get("time", 0)) * 1_000_000_000
    return {"type": raw.get("Type") or raw.get("type"),
            "action": raw.get("Action") or raw.get("status"),
            "actor": {"id": actor.get("ID") or raw.get("id"),
                      "attributes": actor.get("Attributes") or {}},
            "scope": raw.get("scope"), "time": raw.get("time"), "time_nano": nanos}


def list_events(client: docker.DockerClient, since: float, until: float,
                filters: dict[str, list[str]], limit: int = EVENT_LIMIT) -> dict[str, Any]:
    """Events between ``since`` and ``until`` (both in the past), at most ``limit`` of them.

    ``until`` is clamped to now: with a future ``until`` the engine would hold the stream
    open until then. The engine keeps only its most recent events in memory (256 on
    current releases), so an old window may come back partly empty.
    """
    until = min(until, time.time())
    stream = client.api.events(since=_engine_time(since), until=_engine_time(until),
                               filters=filters or None, decode=True)
    events: list[dict[str, Any]] = []
    truncated = False
    try:
        for raw in stream:
            if len(events) >= limit:
                truncated = True
                break
            events.append(event_view(raw))
    finally:
        stream.close()
    return {"events": events, "truncated": truncated}


def _engine_time(seconds: float) -> str:
    # The engine takes "seconds.nanoseconds"; docker-py would truncate floats to ints.
    return f"{seconds:.9f}"
