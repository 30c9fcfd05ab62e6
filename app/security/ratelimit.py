"""Per-token rate limits by route class, shared by every API process through Redis."""

from __future__ import annotations

import math
import time
from typing import Any

import redis

from app.core.errors import DockyardError
from app.core.store import PREFIX


class RateLimitedError(DockyardError):
    status, slug, title = 429, "rate-limited", "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.retry_after = retry_after


def route_class(method: str) -> str:
    """The limit a request counts against: ``reads`` (GET, HEAD) or ``ops`` (the rest)."""
    return "reads" if method in ("GET", "HEAD") else "ops"


class RateLimiter:
    """A fixed one-second window per (token, class): one pipelined round trip per request."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def charge(self, principal: Any, method: str, settings: Any) -> None:
        """Count one request of ``principal`` (HTTP or chat) against its token's limit.

        Raises:
            RateLimitedError: past the token's limit (or the settings' default) this second.
        """
        kind = route_class(method)
        limit = (principal.rate_limit or {}).get(
            kind, settings.rate_limit_reads if kind == "reads" else settings.rate_limit_ops)
        self.hit(principal.token_id, kind, limit)

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
