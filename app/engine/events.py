"""Engine events over a bounded window (``docker events --since --until``)."""

from __future__ import annotations

import time
from typing import Any

import docker

# Re-exported: the window helpers moved to a module without docker-py (the API uses them).
from app.engine.event_times import (  # noqa: F401
    DEFAULT_WINDOW_SECONDS,
    EVENT_LIMIT,
    MAX_WINDOW_SECONDS,
    parse_event_time,
)


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
