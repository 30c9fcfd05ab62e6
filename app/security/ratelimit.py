"""Per-token rate limits by route class, shared by every API process through Redis."""

from __future__ import annotations

import math
import time
from typing import Any

import redis

from app.core.errors import DockyardError
from app.core.store import PREFIX

WINDOW_TTL = 2  # seconds a one-second window's counter is kept


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

    @staticmethod
    def limit_for(principal: Any, method: str, settings: Any) -> tuple[str, int]:
        """(route class, limit per second; 0 for none) of a request by ``principal``."""
        kind = route_class(method)
        return kind, (principal.rate_limit or {}).get(
            kind, settings.rate_limit_reads if kind == "reads" else settings.rate_limit_ops)

    def charge(self, principal: Any, method: str, settings: Any) -> None:
        """Count one request of ``principal`` (HTTP or chat) against its token's limit.

        Raises:
            RateLimitedError: past the token's limit (or the settings' default) this second.
        """
        kind, limit = self.limit_for(principal, method, settings)
        self.hit(principal.token_id, kind, limit)

    @staticmethod
    def window(token_id: str, route_class: str) -> tuple[str, float]:
        """The counter key of this second's window, and the time it was taken at."""
        now = time.time()
        return f"{PREFIX}rl:{token_id}:{route_class}:{int(now)}", now

    @staticmethod
    def refusal(route_class: str, limit: int, now: float) -> RateLimitedError:
        """The error of a request counted past ``limit`` in the window of ``now``."""
        retry_after = max(1, math.ceil(int(now) + 1 - now))
        return RateLimitedError(f"more than {limit} {route_class} requests per second for "
                                f"this token", retry_after)

    def hit(self, token_id: str, route_class: str, limit: int) -> None:
        """Count a request; raise RateLimitedError past ``limit`` per second (0: unlimited).

        The job script (``JobStore.create``) makes the same count with the same key when a
        submission's charge is folded into it.
        """
        if limit <= 0:
            return
        key, now = self.window(token_id, route_class)
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, WINDOW_TTL)
        count = pipe.execute()[0]
        if count > limit:
            raise self.refusal(route_class, limit, now)
