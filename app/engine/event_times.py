"""Event windows as ``docker events`` takes them: pure helpers the API uses without docker-py."""

from __future__ import annotations

import re
from datetime import UTC, datetime

EVENT_LIMIT = 10_000
MAX_WINDOW_SECONDS = 24 * 3600
DEFAULT_WINDOW_SECONDS = 3600
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$")  # Go's: 10m, 1h30m
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def parse_event_time(value: str, now: float, naive_utc: bool = False) -> float:
    """A time as ``docker events`` (or a prune's ``until``) takes it: unix seconds, RFC 3339,
    or a duration ago (``10m``, ``1h30m``).

    ``naive_utc`` reads a time without a zone as UTC (a prune's ``until`` accepts one);
    otherwise such a time is refused.

    Raises:
        ValueError: none of those.
    """
    value = value.strip()
    if _DURATION.match(value):
        return now - sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(value))
    try:
        return float(value)
    except ValueError:
        pass
    moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T"))
    if moment.tzinfo is None:
        if not naive_utc:
            raise ValueError(f"'{value}' has no time zone")
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
