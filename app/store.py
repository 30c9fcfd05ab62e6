"""Process-wide settings and the Redis connection every store shares."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import quote

import redis
import redis.sentinel

from app.config import Settings

PREFIX = "dy:"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


_redis: redis.Redis | None = None


def redis_client(settings: Settings, *, decode_responses: bool = True,
                 **options: object) -> redis.Redis:
    """A client of Dockyard's Redis: the URL's server, or the primary the sentinels name.

    Through Sentinel the pool asks the sentinels for the primary again whenever a
    connection fails, so a failover needs no restart.
    """
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, decode_responses=decode_responses,
                                    **options)
    target = redis.connection.parse_url(settings.redis_url)
    sentinels = [(address.rpartition(":")[0], int(address.rpartition(":")[2]))
                 for address in settings.redis_sentinels]
    # Sentinels share the data password (requirepass on each, as `make ha` sets them up).
    auth = {"password": target["password"]} if target.get("password") else {}
    sentinel = redis.sentinel.Sentinel(sentinels, socket_timeout=2, sentinel_kwargs=auth)
    options.pop("health_check_interval", None)
    return sentinel.master_for(settings.redis_master, db=int(target.get("db") or 0),
                               decode_responses=decode_responses, **auth, **options)


def broker_url_and_options(settings: Settings) -> tuple[str, dict[str, object]]:
    """Celery's broker URL and transport options: the Redis URL, or kombu's ``sentinel://``
    transport naming every sentinel and the master."""
    if not settings.redis_sentinels:
        return settings.redis_url, {}
    target = redis.connection.parse_url(settings.redis_url)
    password = target.get("password")
    auth = f":{quote(password, safe='')}@" if password else ""
    db = int(target.get("db") or 0)
    url = ";".join(f"sentinel://{auth}{address}/{db}" for address in settings.redis_sentinels)
    options: dict[str, object] = {"master_name": settings.redis_master}
    if password:
        options["sentinel_kwargs"] = {"password": password}
    return url, options


def get_redis() -> redis.Redis:
    """The process's Redis client (one pool per process; reset after fork)."""
    global _redis
    if _redis is None:
        _redis = redis_client(get_settings(), decode_responses=True, socket_connect_timeout=2,
                              health_check_interval=30, max_connections=256)
    return _redis


_redis_bytes: redis.Redis | None = None


def get_redis_bytes() -> redis.Redis:
    """A client that returns bytes, for binary pipes (same server as get_redis)."""
    global _redis_bytes
    if _redis_bytes is None:
        _redis_bytes = redis_client(get_settings(), decode_responses=False,
                                    socket_connect_timeout=2, max_connections=256)
    return _redis_bytes


def redis_is_open(client: redis.Redis) -> bool:
    """Whether the server ``client`` talks to answers a client that brings no credentials.

    Raises:
        redis.ConnectionError: it does not answer at all.
    """
    connection = client.connection_pool.get_connection("PING")
    try:
        connection.connect()
        host, port = connection.host, connection.port
        path = getattr(connection, "path", None)
    finally:
        client.connection_pool.release(connection)
    kwargs = {"unix_socket_path": path} if path else {"host": host, "port": port}
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
