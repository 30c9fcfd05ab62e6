"""Backup schedules: a five-field cron parser, the schedule store and retention."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from app.backups.storage import BackupStorage
from app.core.errors import InvalidInputError, NotFoundError
from app.core.ids import new_id
from app.core.store import PREFIX, utcnow

logger = logging.getLogger(__name__)


_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
           ("day of week", 0, 7))
_NAMES = {3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
          4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]}


@dataclass(frozen=True)
class CronExpression:
    """A five-field cron expression (minute hour day-of-month month day-of-week), Vixie rules:
    ``*``, lists, ranges, steps and month/day names; when both day fields are restricted a
    day matches either."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_any: bool
    weekdays_any: bool

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """Raises: ValueError naming what is wrong."""
        parts = text.split()
        if len(parts) != 5:
            raise ValueError(f"a cron expression has 5 fields, not {len(parts)}")
        sets = [_parse_field(part, index) for index, part in enumerate(parts)]
        weekdays = frozenset(0 if d == 7 else d for d in sets[4])
        return cls(sets[0], sets[1], sets[2], sets[3], weekdays,
                   days_any=parts[2] == "*", weekdays_any=parts[4] == "*")

    def matches(self, when: datetime) -> bool:
        if when.minute not in self.minutes or when.hour not in self.hours \
                or when.month not in self.months:
            return False
        day_ok = when.day in self.days
        weekday_ok = (when.isoweekday() % 7) in self.weekdays
        if self.days_any or self.weekdays_any:
            return day_ok and weekday_ok
        return day_ok or weekday_ok


def _parse_field(text: str, index: int) -> frozenset[int]:
    name, low, high = _FIELDS[index]
    values: set[int] = set()
    for item in text.split(","):
        body, _, step_text = item.partition("/")
        step = _number(step_text, index) if step_text else 1
        if step < 1:
            raise ValueError(f"{name}: step must be at least 1")
        if body == "*":
            start, stop = low, high
        elif "-" in body:
            first, _, last = body.partition("-")
            start, stop = _number(first, index), _number(last, index)
        else:
            start = _number(body, index)
            stop = high if step_text else start
        if not (low <= start <= high and low <= stop <= high) or start > stop:
            raise ValueError(f"{name}: '{item}' is outside {low}-{high}")
        values.update(range(start, stop + 1, step))
    return frozenset(values)


def _number(text: str, index: int) -> int:
    lowered = text.lower()
    if index in _NAMES and lowered in _NAMES[index]:
        return _NAMES[index].index(lowered) + (1 if index == 3 else 0)
    if not text.isdigit():
        raise ValueError(f"{_FIELDS[index][0]}: '{text}' is not a number")
    return int(text)


def validate_cron(text: str) -> None:
    """Raises: InvalidInputError (422) naming the problem."""
    try:
        CronExpression.parse(text)
    except ValueError as exc:
        raise InvalidInputError(f"invalid cron expression: {exc}",
                                errors={"cron": [str(exc)]}) from None


_SCHEDULES = PREFIX + "backup-schedules"


class BackupScheduleStore:
    """Schedules in one Redis hash; each run is claimed once per minute across beats."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def create(self, spec: dict[str, Any], created_by: str) -> dict[str, Any]:
        record = {"id": new_id(), **spec, "created_at": utcnow(), "created_by": created_by,
                  "last_run_at": None, "last_job_id": None}
        self.redis.hset(_SCHEDULES, record["id"], json.dumps(record))
        return record

    def list(self) -> list[dict[str, Any]]:
        return sorted((json.loads(raw) for raw in self.redis.hvals(_SCHEDULES)),
                      key=lambda r: r["id"])

    def get(self, schedule_id: str) -> dict[str, Any]:
        raw = self.redis.hget(_SCHEDULES, schedule_id)
        if raw is None:
            raise NotFoundError(f"no backup schedule '{schedule_id}'")
        return json.loads(raw)

    def delete(self, schedule_id: str) -> None:
        if not self.redis.hdel(_SCHEDULES, schedule_id):
            raise NotFoundError(f"no backup schedule '{schedule_id}'")

    def claim_run(self, schedule_id: str, minute: datetime) -> bool:
        """True once per schedule and minute, whichever beat or worker asks first."""
        key = f"{_SCHEDULES}:{schedule_id}:{minute:%Y%m%d%H%M}"
        return bool(self.redis.set(key, "1", nx=True, ex=3 * 3600))

    def record_run(self, schedule_id: str, job_id: str) -> None:
        raw = self.redis.hget(_SCHEDULES, schedule_id)
        if raw is None:
            return
        record = json.loads(raw)
        record.update(last_run_at=utcnow(), last_job_id=job_id)
        self.redis.hset(_SCHEDULES, schedule_id, json.dumps(record))


def due_minutes(expression: str, now: datetime, window: int = 2) -> list[datetime]:
    """The minutes of the last ``window`` (this one included) at which the schedule fires.

    Beat ticks can drift past a minute boundary; looking one minute back (with runs claimed
    per minute) means a drifting tick neither skips nor repeats a run.
    """
    cron = CronExpression.parse(expression)
    base = now.astimezone(UTC).replace(second=0, microsecond=0)
    minutes = [datetime.fromtimestamp(base.timestamp() - 60 * back, UTC) for back in range(window)]
    return [m for m in minutes if cron.matches(m)]


def apply_retention(storage: BackupStorage, schedule_id: str, keep: int,
                    catalog: list[dict[str, Any]] | None = None) -> list[str]:
    """Delete all but the newest ``keep`` bundles a schedule made; returns the ids deleted.

    ``catalog`` (newest first) saves re-reading every manifest when many schedules are pruned.
    """
    made = [m for m in (storage.catalog() if catalog is None else catalog)
            if m.get("schedule_id") == schedule_id]
    doomed = [m["id"] for m in made[keep:]]
    for backup_id in doomed:
        try:
            storage.delete(backup_id)
        except (NotFoundError, OSError):
            logger.warning("retention could not delete backup %s", backup_id, exc_info=True)
    return doomed
