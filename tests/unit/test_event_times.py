"""Times as ``docker events`` and a prune's ``until`` take them."""

from __future__ import annotations

import pytest

from app.engine.event_times import parse_event_time

NOW = 1_800_000_000.0


@pytest.mark.parametrize("value, expected", [
    ("10m", NOW - 600), ("1h30m", NOW - 5400), ("1.5s", NOW - 1.5), ("250ms", NOW - 0.25),
    ("1700000000", 1_700_000_000.0), ("2026-01-01T00:00:00Z", 1_767_225_600.0),
])
def test_durations_ago_unix_seconds_and_rfc3339(value, expected):
    assert parse_event_time(value, NOW) == pytest.approx(expected)


def test_a_time_without_zone_is_refused_unless_read_as_utc():
    with pytest.raises(ValueError, match="no time zone"):
        parse_event_time("2026-01-01T00:00:00", NOW)
    assert parse_event_time("2026-01-01 00:00:00", NOW, naive_utc=True) == 1_767_225_600.0
