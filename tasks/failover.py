"""Job bookkeeping that outlives a Redis failover.

While Sentinel promotes a replica (seconds), writes fail with a connection error, or a
read-only one from the old primary. A worker that gave up then would leave a job it
finished recorded as running; it retries instead, for as long as a failover takes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

logger = logging.getLogger(__name__)

T = TypeVar("T")

FAILOVER_SECONDS = 60.0
TRANSIENT_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError,
              redis.BusyLoadingError)


def through_failover(call: Callable[[], T], what: str,
                     budget: float = FAILOVER_SECONDS) -> T:
    """``call()``, retried with backoff while Redis is away, up to ``budget`` seconds."""
    deadline = time.monotonic() + budget
    delay = 0.2
    while True:
        try:
            return call()
        except TRANSIENT_REDIS_ERRORS as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("%s: Redis unavailable (%s); retrying in %.1fs", what,
                           type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 3.0)
