"""Per-token rate limits by route class, shared by every API process through Redis."""

from __future__ import annotations

import math
import time

import redis

from app.errors import DockyardError
from app.store import PREFIX


class RateLimitedError(DockyardError):
    status, slug, title = 429, "rate-limited", "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after


class RateLimiter:
    """A fixed one-second window per (token, class): one pipelined round trip per request."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def hit(self, token_id: str, route_class: str, limit: int) -> None:
        """Count a request; raise RateLimitedError past ``limit`` per second (0: unlimited)."""
        if limit <= 0:
            return
        now = time.time()
        window = int(now)
        key = f"{PREFIX}rl:{token_id}:{route_class}:{window}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 2)
        count = pipe.execute()[0]
        if count > limit:
            retry_after = max(1, math.ceil(window + 1 - now))
            raise RateLimitedError(f"more than {limit} {route_class} requests per second for "
                                   f"this token", retry_after)
