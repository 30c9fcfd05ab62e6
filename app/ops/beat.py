"""Exactly one beat sends scheduled tasks, however many run: the holder of a Redis lease.

Every beat process runs this scheduler. Each tick it renews its lease (or takes it when
free); only the holder sends what is due. A holder that dies stops renewing, and another
beat takes the lease over within ``LEASE_SECONDS``. Scheduled work is idempotent besides
(backup schedules claim each minute once), so the short overlap a stalled holder could
cause runs nothing twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from typing import Any

import redis
from celery import signals
from celery.beat import PersistentScheduler

from app.core.store import PREFIX, RELEASE_IF_OWNER, get_redis
from app.jobs import handoff
from app.runtime import runtime

logger = logging.getLogger(__name__)

LEASE_KEY = PREFIX + "beat:leader"
LEASE_SECONDS = 15
RENEW_SECONDS = 5.0

# Renew our lease, or take a free one; 1 when we hold it afterwards.
_ACQUIRE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""


class Lease:
    """A named lease in Redis held by one owner at a time, renewed by the holder."""

    def __init__(self, client: redis.Redis, key: str = LEASE_KEY,
                 seconds: float = LEASE_SECONDS) -> None:
        self.client = client
        self.key = key
        self.millis = int(seconds * 1000)
        self.owner = uuid.uuid4().hex

    def hold(self) -> bool:
        """Renew or take the lease; whether this owner holds it now."""
        return bool(self.client.eval(_ACQUIRE, 1, self.key, self.owner, self.millis))

    def release(self) -> None:
        self.client.eval(RELEASE_IF_OWNER, 1, self.key, self.owner)


# The worker an embedded beat (``celery worker -B``) was forked from; None in a beat process.
_embedding_worker: int | None = None


def _embedded(**_: object) -> None:
    global _embedding_worker
    _embedding_worker = os.getppid()


signals.beat_embedded_init.connect(_embedded, weak=False, dispatch_uid="dockyard-beat-embedded")


class LeaderScheduler(PersistentScheduler):
    """Celery beat's persistent scheduler, sending only while it holds the lease.

    Embedded in a worker (``-B``, the default of ``make run``), it stops when that worker is
    gone (SIGKILLed: nothing else would stop it), releasing the lease for the next beat.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lease = Lease(get_redis())
        self.leading: bool | None = None  # unknown: the first tick logs which it is
        self._swept = float("-inf")
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if _embedding_worker is not None and os.getppid() != _embedding_worker:
            logger.warning("beat: the worker it was embedded in is gone; stopping")
            raise SystemExit(0)
        try:
            leading = self.lease.hold()
        except redis.RedisError as exc:
            # Redis away (a failover, say): send nothing until the lease can be checked.
            logger.warning("beat: cannot check the lease (%s); sending nothing", exc)
            leading = False
        if leading != self.leading:
            self.leading = leading
            logger.info("beat: %s", "leading: this beat sends scheduled tasks" if leading
                        else "standing by: another beat holds the lease")
        if not leading:
            return RENEW_SECONDS
        self._sweep_when_due()
        return min(super().tick(*args, **kwargs), RENEW_SECONDS, handoff.SWEEP_SECONDS)

    def _sweep_when_due(self) -> None:
        """The job sweeper (app/jobs/handoff.py) runs here, in the leading beat, not as a task:
        it must not wait behind the very jobs on a lane whose worker died."""
        now = time.monotonic()
        if now - self._swept < handoff.SWEEP_SECONDS:
            return
        self._swept = now
        try:
            done = handoff.sweep(get_redis(), runtime().jobs)
        except redis.RedisError as exc:
            logger.warning("beat: job sweep skipped (%s)", exc)
            return
        if any(done.values()):
            logger.warning("beat: job sweep %s", done)

    def close(self) -> None:
        if self.leading:
            with contextlib.suppress(redis.RedisError):  # else it expires by itself
                self.lease.release()
        super().close()
