"""Event windows as ``docker events`` takes them: pure helpers the API uses without docker-py."""

from __future__ import annotations

import re
from datetime import datetime

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
