"""Engine events watchers: each host's `docker events`, read on the worker side into `dy:events`.

Every worker that consumes a read lane runs a supervisor thread. For each host it serves,
the supervisor tries to take a Redis lock with a TTL; the holder runs one watcher thread
that reads the engine's events in short windows (``since`` = the last event seen,
``until`` = a few seconds ahead), renewing the lock between windows. So each host has one
watcher however many workers serve it, a dead worker's hosts are taken over when its locks
expire, and a new watcher resumes from the stored cursor without a gap.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from app.core.store import RELEASE_IF_OWNER, get_redis
from app.engine.events import event_view
from app.fleet.hosts import queues_for
from app.integrations.webhooks import WebhookStore, publish_engine_event
from app.jobs import outbox
from app.runtime import runtime
from app.security.agent_access import key_prefix
from tasks.base import client_for, engine_clients

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 5.0
LOCK_TTL_SECONDS = 30
SUPERVISE_SECONDS = 3.0
RETRY_SECONDS = 5.0

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_stop = threading.Event()
_watchers: dict[str, HostWatcher] = {}


def lock_key(host: str) -> str:
    return key_prefix(host) + "watch:lock"


def cursor_key(host: str) -> str:
    return key_prefix(host) + "watch:cursor"


class HostWatcher(threading.Thread):
    """Reads one host's engine events while it holds that host's lock."""

    def __init__(self, host: str, owner: str, since_ns: int | None = None) -> None:
        super().__init__(name=f"dockyard-watch-{host}", daemon=True)
        self.host = host
        self.owner = owner
        # Without a stored cursor, events from just before the lock was taken on are read:
        # whoever sees the lock held knows every later event will be published.
        self.since_ns = since_ns or time.time_ns()
        self.done = threading.Event()
        self.store = WebhookStore(get_redis())

    def renew(self) -> bool:
        return bool(get_redis().eval(_RENEW, 1, lock_key(self.host), self.owner,
                                     LOCK_TTL_SECONDS))

    def release(self) -> None:
        get_redis().eval(RELEASE_IF_OWNER, 1, lock_key(self.host), self.owner)

    def run(self) -> None:
        logger.info("watching engine events host=%s", self.host)
        failing = False
        try:
            while not _stop.is_set() and not self.done.is_set() and self.renew():
                started = time.monotonic()
                try:
                    self.read_window()
                    if failing:
                        logger.info("events watcher host=%s: engine reachable again", self.host)
                    failing = False
                    if time.monotonic() - started < 1:
                        _stop.wait(1)  # an engine clock behind ours ends windows at once
                except Exception as exc:
                    # An unreachable engine is retried quietly: one warning, not one per try.
                    log = logger.debug if failing else logger.warning
                    log("events watcher host=%s: %s; retrying every %ss", self.host,
                        type(exc).__name__, RETRY_SECONDS)
                    failing = True
                    engine_clients().forget(self.host)
                    _stop.wait(RETRY_SECONDS)
        finally:
            self.release()
            logger.info("stopped watching engine events host=%s", self.host)

    def read_window(self) -> None:
        raw_cursor = get_redis().get(cursor_key(self.host))
        cursor = int(raw_cursor) if raw_cursor else self.since_ns
        until = time.time() + WINDOW_SECONDS
        client = client_for(self.host)
        stream = client.api.events(since=_engine_time(cursor), until=f"{until:.9f}", decode=True)
        try:
            for raw in stream:
                event = event_view(raw)
                if not event["time_nano"] or event["time_nano"] <= cursor:
                    continue  # the engine's `since` is inclusive: seen in the last window
                if runtime().settings.agent_host:
                    # The relay appends it to dy:events and fans it out (app/jobs/outbox.py).
                    outbox.post(self.host, outbox.ENGINE_EVENT, event=event)
                else:
                    publish_engine_event(self.host, event, self.store)
                cursor = event["time_nano"]
                get_redis().set(cursor_key(self.host), cursor,
                                ex=runtime().settings.job_retention_seconds)
        finally:
            stream.close()
        if not raw_cursor:
            get_redis().set(cursor_key(self.host), cursor,
                            ex=runtime().settings.job_retention_seconds)


def _engine_time(nanos: int) -> str:
    return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"


def served_hosts(queues: set[str]) -> list[str]:
    """Hosts whose read lane is one of ``queues``."""
    agent = runtime().settings.agent_host
    if agent:  # an agent may read no other host's record
        return [agent] if f"host.{agent}.query" in queues else []
    return [r["name"] for r in runtime().hosts.list() if queues_for(r)[1] in queues]


def supervise(queues: set[str], owner: str) -> None:
    """Start a watcher for each served host whose lock this worker wins; stop orphans."""
    while not _stop.is_set():
        try:
            hosts = set(served_hosts(queues))
            for host, watcher in list(_watchers.items()):
                if not watcher.is_alive() or host not in hosts:
                    watcher.done.set()
                    _watchers.pop(host, None)
            for host in hosts - set(_watchers):
                since_ns = time.time_ns()
                if get_redis().set(lock_key(host), owner, nx=True, ex=LOCK_TTL_SECONDS):
                    watcher = HostWatcher(host, owner, since_ns)
                    _watchers[host] = watcher
                    watcher.start()
        except Exception:  # Redis may be briefly away; the next round retries
            logger.warning("events supervisor failed owner=%s", owner, exc_info=True)
        _stop.wait(SUPERVISE_SECONDS)


@worker_ready.connect
def start_watchers(sender: Any, **_: object) -> None:
    queues = {q for q in (sender.app.amqp.queues.consume_from or {}) if q.endswith(".query")}
    if not queues:
        return  # only read-lane workers (thread pools) watch: they hold no forked children
    threading.Thread(target=supervise, args=(queues, sender.hostname), daemon=True,
                     name="dockyard-watch-supervisor").start()
    logger.info("events supervisor started for lanes %s", ",".join(sorted(queues)))


@worker_shutdown.connect
def stop_watchers(sender: Any = None, **_: object) -> None:
    _stop.set()
    for watcher in list(_watchers.values()):
        try:
            watcher.release()
        except Exception:
            logger.warning("could not release watch lock host=%s", watcher.host)
