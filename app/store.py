"""Process-wide settings and the Redis connection every store shares."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from functools import lru_cache

import redis

from app.config import Settings

PREFIX = "dy:"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


_redis: redis.Redis | None = None


def get_redis() -> redis.Redis:
    """The process's Redis client (one pool per process; reset after fork)."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(
            get_settings().redis_url,
            decode_responses=True,
            socket_connect_timeout=2,
            health_check_interval=30,
            max_connections=256,
        )
    return _redis


_redis_bytes: redis.Redis | None = None


def get_redis_bytes() -> redis.Redis:
    """A client that returns bytes, for binary pipes (same server as get_redis)."""
    global _redis_bytes
    if _redis_bytes is None:
        _redis_bytes = redis.Redis.from_url(get_settings().redis_url, decode_responses=False,
                                            socket_connect_timeout=2, max_connections=256)
    return _redis_bytes


def redis_is_open(url: str) -> bool:
    """Whether the Redis at ``url`` answers a client that brings no credentials.

    Raises:
        redis.ConnectionError: it does not answer at all.
    """
    kwargs = redis.connection.parse_url(url)
    kwargs.pop("username", None)
    kwargs.pop("password", None)
    client = redis.Redis(**kwargs, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
        return True
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in str(exc):
            return False
        raise
    finally:
        client.close()


def is_loopback_url(url: str) -> bool:
    """A unix socket, or a TCP Redis on a loopback address."""
    kwargs = redis.connection.parse_url(url)
    host = kwargs.get("host")
    return "path" in kwargs or host in ("localhost", "::1") or str(host).startswith("127.")


def _reset_after_fork() -> None:
    global _redis, _redis_bytes
    _redis = None
    _redis_bytes = None


os.register_at_fork(after_in_child=_reset_after_fork)


def utcnow() -> str:
    """Now as an RFC 3339 UTC timestamp with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
