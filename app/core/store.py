"""Process-wide settings and the Redis connection every store shares."""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import quote

import redis
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.core.config import Settings

PREFIX = "dy:"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def no_retry() -> Retry:
    """Fail a command on the first connection error, as redis-py 5 did.

    redis-py 6+ retries every command up to 10 times with backoff by default: a Redis that is
    down would hold each request (and readyz) for seconds before its 503, and a write whose
    answer was lost would be sent twice.
    """
    return Retry(NoBackoff(), 0)


def redis_client(settings: Settings, *, decode_responses: bool = True,
                 **options: object) -> redis.Redis:
    """A client of Dockyard's Redis: the URL's server, or the primary the sentinels name.

    Through Sentinel the pool asks the sentinels for the primary again whenever a
    connection fails, so a failover needs no restart. Unless ``options`` say otherwise,
    reads wait as long as the command does (``socket_timeout=None``: BLPOP and XREAD with a
    block outlast redis-py 8's 5 s default) and nothing is retried (:func:`no_retry`).
    """
    options.setdefault("socket_timeout", None)
    options.setdefault("retry", no_retry())
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, decode_responses=decode_responses,
                                    **options)
    target = redis.connection.parse_url(settings.redis_url)
    sentinels = [(address.rpartition(":")[0], int(address.rpartition(":")[2]))
                 for address in settings.redis_sentinels]
    # Sentinels share the data password (requirepass on each, as `make ha` sets them up).
    auth = {"password": target["password"]} if target.get("password") else {}
    sentinel = redis.sentinel.Sentinel(
        sentinels, socket_timeout=2,
        sentinel_kwargs={**auth, "socket_timeout": 2, "socket_connect_timeout": 2,
                         "retry": no_retry()})
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


# One client per (URL, sentinels, master, decode): made under a lock, never replaced. A client
# built by a losing thread and dropped would close its pool when collected (redis-py 8 does
# on __del__), under whoever took a connection from it meanwhile.
_clients: dict[tuple, redis.Redis] = {}
_clients_lock = threading.Lock()
# Clients of a parent process: a forked child never uses them, and never collects them either
# (collecting would close sockets the parent still reads).
_parents_clients: list[redis.Redis] = []


def _shared_client(decode_responses: bool, **options: object) -> redis.Redis:
    settings = get_settings()
    key = (settings.redis_url, tuple(settings.redis_sentinels), settings.redis_master,
           decode_responses)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = redis_client(settings, decode_responses=decode_responses, **options)
                _clients[key] = client
    return client


def get_redis() -> redis.Redis:
    """The process's Redis client (one pool per process; reset after fork)."""
    return _shared_client(True, socket_connect_timeout=2, health_check_interval=30,
                          max_connections=256)


def get_redis_bytes() -> redis.Redis:
    """A client that returns bytes, for binary pipes (same server as get_redis)."""
    return _shared_client(False, socket_connect_timeout=2, max_connections=256)


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
    client = redis.Redis(**kwargs, socket_connect_timeout=2, socket_timeout=2, retry=no_retry())
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
    global _clients_lock
    _parents_clients.extend(_clients.values())
    _clients.clear()
    _clients_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def utcnow() -> str:
    """Now as an RFC 3339 UTC timestamp with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# Deletes a lock or lease only if ``ARGV[1]`` still holds it (KEYS[1]): 1 when deleted.
RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
